//! What the cross-process tests share: a fresh database and an `App` on it, driven from plain
//! (non-async) tests through one runtime.

use plinth_core::{App, Principal};
use plinth_testkit::TestDb;
use plinth_types::api::*;

pub struct Env {
    pub rt: tokio::runtime::Runtime,
    pub db: TestDb,
    pub app: App,
}

impl Env {
    pub fn new() -> Env {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let db = rt.block_on(TestDb::new()).unwrap();
        let app = db.app();
        Env { rt, db, app }
    }

    /// A subnet with one range; with a router, that router is also its DNS server. `relays`
    /// are its relay addresses; `"any"` among them allows any relay inside it.
    pub fn subnet(
        &self,
        cidr: &str,
        first: &str,
        last: &str,
        router: Option<&str>,
        relays: &[&str],
    ) -> Subnet {
        subnet_on(&self.rt, &self.app, cidr, first, last, router, relays)
    }

    pub fn leases(&self) -> Vec<Lease> {
        leases_on(&self.rt, &self.app)
    }

    /// Machines matching `q` (hostname, MAC or serial).
    pub fn machines(&self, q: &str) -> Vec<Machine> {
        let query = plinth_core::machines::MachineQuery {
            q: Some(q.into()),
            ..Default::default()
        };
        self.rt
            .block_on(self.app.list_machines(&Principal::system(), query))
            .unwrap()
            .machines
    }
}

/// [`Env::subnet`] on any `App` (the HA tests' is on a Patroni cluster).
pub fn subnet_on(
    rt: &tokio::runtime::Runtime,
    app: &App,
    cidr: &str,
    first: &str,
    last: &str,
    router: Option<&str>,
    relays: &[&str],
) -> Subnet {
    let router = router.map(|r| r.parse().unwrap());
    let req = SubnetCreate {
        cidr: cidr.into(),
        ranges: vec![AddressRange {
            start: first.parse().unwrap(),
            end: last.parse().unwrap(),
        }],
        router,
        dns_servers: router.map(|r| vec![r]),
        domain: router.map(|_| "lab.example".into()),
        lease_time: Some(600),
        boot_server: None,
        relay_addresses: relays.iter().any(|r| *r != "any").then(|| {
            relays
                .iter()
                .filter(|r| **r != "any")
                .map(|r| r.parse().unwrap())
                .collect()
        }),
        // perfdhcp sends as a relay from an address inside the subnet.
        relay_any_in_cidr: Some(relays.contains(&"any")),
    };
    rt.block_on(app.create_subnet(&Principal::system(), req))
        .unwrap()
}

/// Every lease, on any `App`.
pub fn leases_on(rt: &tokio::runtime::Runtime, app: &App) -> Vec<Lease> {
    rt.block_on(app.list_leases(&Principal::system(), None, None))
        .unwrap()
}
