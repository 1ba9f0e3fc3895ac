//! BMC discovery (issue 21, part 4): `POST /bmc/scans` queues a scan of one CIDR; the
//! [`Scanner`] (a reconciler pass of every instance, one scan claimed at a time with a lease)
//! probes each address of it, and nothing else, on the listed ports (plinth-bmc's `discover`:
//! Redfish's unauthenticated service root, then the factory credentials; IPMI sessions with
//! them), at most `rate` addresses started a second and `scan_concurrency` at once, each probe
//! under `scan_timeout_secs`. What answered is recorded with its serial, UUID and MACs and the
//! user name of the credential that worked (never a password). A BMC reporting a MAC of a
//! `discovered` machine without a BMC is attached to it (with that credential) and the machine
//! adopted into `enrolled`, in one transaction with its event and an identify job.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use plinth_bmc::discover::{self, FactoryCredential, Found};
use plinth_db::scans::{ResultRow, ScanRow};
use plinth_types::api::{BmcProtocol, BmcSpec};
use plinth_types::scan::{BmcScan, BmcScanRequest, BmcScanResult};
use plinth_types::{Error, Verb};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Permission;
use crate::reconcile::Pass;
use crate::{App, DbResult, Principal, Result};

/// The most addresses one scan may cover (a /22 of IPv4).
pub const MAX_ADDRESSES: usize = 1024;
/// Ports per protocol, at most.
pub const MAX_PORTS: usize = 8;
pub const DEFAULT_RATE: u32 = 50;
const LEASE: Duration = Duration::from_secs(30);

/// `[bmc]`'s discovery keys.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanSettings {
    /// Tried in order on every BMC found (`[[bmc.factory_credentials]]`).
    pub factory_credentials: Vec<FactoryCredential>,
    /// Probes (addresses) at once, per scan.
    pub scan_concurrency: usize,
    /// The longest one probe's connection or answer may take.
    #[serde(
        rename = "scan_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub scan_timeout: Duration,
}

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            factory_credentials: Vec::new(),
            scan_concurrency: 16,
            scan_timeout: Duration::from_secs(2),
        }
    }
}

/// The addresses of `cidr` a scan probes: every address of a /31, /32 (or IPv6 /127, /128),
/// else the hosts (no network or broadcast address).
pub fn addresses(cidr: &str) -> Result<Vec<IpAddr>> {
    let net: IpNet = cidr.trim().parse().map_err(|_| {
        Error::invalid(
            "invalid_cidr",
            format!("{cidr:?} is not a CIDR (e.g. 10.1.0.0/24)"),
        )
    })?;
    if net.network() != net.addr() {
        return Err(Error::invalid(
            "invalid_cidr",
            format!("{cidr} has host bits set: did you mean {}?", net.trunc()),
        ));
    }
    let size_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if size_bits > 10 {
        return Err(Error::invalid(
            "cidr_too_large",
            format!(
                "{cidr} holds more than {MAX_ADDRESSES} addresses: scan it in parts of /22 or smaller"
            ),
        ));
    }
    Ok(net.hosts().take(MAX_ADDRESSES).collect())
}

fn ports(given: Option<&[u16]>, default: u16, what: &str) -> Result<Vec<i32>> {
    let p: Vec<u16> = given.map_or_else(|| vec![default], <[u16]>::to_vec);
    if p.len() > MAX_PORTS || p.contains(&0) {
        return Err(Error::invalid(
            "invalid_ports",
            format!("{what}: 0 to {MAX_PORTS} ports, each 1-65535"),
        ));
    }
    let mut v: Vec<i32> = p.into_iter().map(i32::from).collect();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn to_api(s: ScanRow, results: Vec<ResultRow>) -> BmcScan {
    let u = |v: Vec<i32>| {
        v.into_iter()
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    };
    BmcScan {
        id: s.id,
        cidr: s.cidr,
        redfish_ports: u(s.redfish_ports),
        ipmi_ports: u(s.ipmi_ports),
        rate: s.rate.max(0) as u32,
        addresses: s.addresses.max(0) as u32,
        state: s.state,
        requested_by: s.requested_by,
        error: s.error,
        created_at: s.created_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        results: results
            .into_iter()
            .map(|r| BmcScanResult {
                address: r.address,
                protocol: r.protocol,
                vendor: r.vendor,
                serial: r.serial,
                uuid: r.uuid,
                macs: r.macs,
                credential: r.credential_username,
                machine_id: r.machine_id,
            })
            .collect(),
    }
}

impl App {
    /// `POST /bmc/scans` (admins): queues a scan; 202 with it.
    pub async fn request_bmc_scan(&self, who: &Principal, req: BmcScanRequest) -> Result<BmcScan> {
        who.require(Permission::ScanBmcNetwork)?;
        let addrs = addresses(&req.cidr)?;
        let redfish = ports(req.redfish_ports.as_deref(), 443, "redfish_ports")?;
        let ipmi = ports(req.ipmi_ports.as_deref(), 623, "ipmi_ports")?;
        if redfish.is_empty() && ipmi.is_empty() {
            return Err(Error::invalid("invalid_ports", "no port to probe"));
        }
        let rate = req.rate.unwrap_or(DEFAULT_RATE);
        if !(1..=1000).contains(&rate) {
            return Err(Error::invalid(
                "invalid_rate",
                "rate is addresses a second, 1 to 1000",
            ));
        }
        let cidr = req.cidr.trim().to_owned();
        let mut conn = self.conn().await?;
        let id = plinth_db::scans::insert(
            &mut conn,
            &plinth_db::scans::NewScan {
                cidr: &cidr,
                redfish_ports: &redfish,
                ipmi_ports: &ipmi,
                rate: rate as i32,
                addresses: addrs.len() as i32,
                requested_by: &who.name,
            },
        )
        .await
        .db()?;
        tracing::info!(scan_id = %id, %cidr, addresses = addrs.len(), actor = %who.name, "BMC scan queued");
        self.bmc_scan(who, id).await
    }

    /// `GET /bmc/scans/{id}`: the scan and what it found so far.
    pub async fn bmc_scan(&self, who: &Principal, id: Uuid) -> Result<BmcScan> {
        who.require(Permission::ScanBmcNetwork)?;
        let mut conn = self.conn().await?;
        let s = plinth_db::scans::get(&mut conn, id)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no BMC scan {id}")))?;
        let r = plinth_db::scans::results(&mut conn, id).await.db()?;
        Ok(to_api(s, r))
    }

    /// `GET /bmc/scans`: the latest 100, without their results.
    pub async fn bmc_scans(&self, who: &Principal) -> Result<Vec<BmcScan>> {
        who.require(Permission::ScanBmcNetwork)?;
        let mut conn = self.conn().await?;
        let rows = plinth_db::scans::list(&mut conn, 100).await.db()?;
        Ok(rows.into_iter().map(|s| to_api(s, Vec::new())).collect())
    }
}

/// Runs queued scans, one at a time per instance.
pub struct Scanner {
    app: App,
    settings: ScanSettings,
    worker: String,
}

impl Scanner {
    pub fn new(app: App, settings: ScanSettings) -> Arc<Scanner> {
        let tag: u32 = rand::random();
        Arc::new(Scanner {
            app,
            settings,
            worker: format!("scanner:{}:{tag:08x}", std::process::id()),
        })
    }

    /// The reconciler pass: every second, the next queued scan, if any.
    pub fn pass(self: &Arc<Self>) -> Pass {
        let me = self.clone();
        Pass::new("bmc scans", Duration::from_secs(1), move |_| {
            let me = me.clone();
            async move { me.run_once().await.map(drop) }
        })
    }

    /// Claims one scan and runs it to its end; the scan's id, if there was one.
    pub async fn run_once(&self) -> Result<Option<Uuid>> {
        let claimed = {
            let mut conn = self.app.conn().await?;
            plinth_db::scans::claim(&mut conn, &self.worker, LEASE.as_secs_f64())
                .await
                .db()?
        };
        let Some(scan) = claimed else {
            return Ok(None);
        };
        let id = scan.id;
        let outcome = self.run(&scan).await;
        let mut conn = self.app.conn().await?;
        let err = outcome.err().map(|e| e.message);
        plinth_db::scans::finish(&mut conn, id, &self.worker, err.as_deref())
            .await
            .db()?;
        tracing::info!(scan_id = %id, error = ?err, "BMC scan finished");
        Ok(Some(id))
    }

    async fn run(&self, scan: &ScanRow) -> Result<()> {
        let addrs = addresses(&scan.cidr)?;
        let redfish: Vec<u16> = scan
            .redfish_ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
        let ipmi: Vec<u16> = scan
            .ipmi_ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
        let every = Duration::from_secs(1) / scan.rate.clamp(1, 1000) as u32;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.settings.scan_concurrency.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut renewed = tokio::time::Instant::now();
        for ip in addrs {
            tick.tick().await;
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(crate::internal("scan"))?;
            let (redfish, ipmi) = (redfish.clone(), ipmi.clone());
            let creds = self.settings.factory_credentials.clone();
            let t = self.settings.scan_timeout;
            tasks.spawn(async move {
                let mut found = Vec::new();
                for p in redfish {
                    found.extend(discover::redfish(ip, p, &creds, t).await);
                }
                for p in ipmi {
                    found.extend(discover::ipmi(ip, p, &creds, t).await);
                }
                drop(permit);
                found
            });
            while let Some(done) = tasks.try_join_next() {
                self.record(scan.id, done.unwrap_or_default()).await?;
            }
            if renewed.elapsed() > LEASE / 3 {
                let mut conn = self.app.conn().await?;
                plinth_db::scans::renew(&mut conn, scan.id, &self.worker, LEASE.as_secs_f64())
                    .await
                    .db()?;
                renewed = tokio::time::Instant::now();
            }
        }
        while let Some(done) = tasks.join_next().await {
            self.record(scan.id, done.unwrap_or_default()).await?;
        }
        Ok(())
    }

    /// Records what one address answered; adopts the discovered machine a MAC names.
    async fn record(&self, scan_id: Uuid, found: Vec<Found>) -> Result<()> {
        for f in found {
            let id = f.identity.clone().unwrap_or_default();
            let macs: Vec<String> = id.macs.iter().map(|m| m.to_string()).collect();
            let cred = f
                .credential
                .and_then(|i| self.settings.factory_credentials.get(i));
            let mut tx = self.app.begin().await?;
            let mut machine = None;
            if let Some(c) = cred
                && !macs.is_empty()
                && let Some(m) = plinth_db::scans::discovered_by_macs(&mut tx, &macs)
                    .await
                    .db()?
            {
                self.adopt(&mut tx, m, &f, c, scan_id).await?;
                machine = Some(m);
            }
            plinth_db::scans::add_result(
                &mut tx,
                scan_id,
                &ResultRow {
                    address: f.address.clone(),
                    protocol: f.protocol.to_owned(),
                    vendor: f.vendor.clone().or(id.manufacturer.clone()),
                    serial: id.serial.clone(),
                    uuid: id.uuid,
                    macs,
                    credential_username: cred.map(|c| c.username.clone()),
                    machine_id: machine,
                },
            )
            .await
            .db()?;
            tx.commit().await.db()?;
        }
        Ok(())
    }

    /// A discovered machine gets the BMC found with one of its MACs: its credentials stored,
    /// the machine adopted into `enrolled` (event), an identify job queued.
    async fn adopt(
        &self,
        tx: &mut plinth_db::PgConnection,
        machine: Uuid,
        f: &Found,
        c: &FactoryCredential,
        scan_id: Uuid,
    ) -> Result<()> {
        let plain = f.address.starts_with("http://");
        let spec = BmcSpec {
            protocol: if f.protocol == "ipmi" {
                BmcProtocol::Ipmi
            } else {
                BmcProtocol::Redfish
            },
            address: f.address.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
            verify_tls: Some(false),
            plain_http: Some(plain),
        };
        self.app.store_bmc(tx, machine, &spec).await?;
        let who = Principal::system();
        self.app
            .apply(
                tx,
                &who,
                machine,
                Verb::Adopt,
                None,
                Some("its BMC was found by a scan"),
                None,
                json!({ "scan": scan_id, "bmc": f.address, "protocol": f.protocol, "credential": c.username }),
            )
            .await?;
        crate::jobs::queue(tx, machine, &[crate::jobs::JobSpec::Identify], "system").await?;
        tracing::info!(%machine, bmc = %f.address, %scan_id, "discovered machine adopted with the BMC a scan found");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cidr_s_addresses_and_never_too_many() {
        let a = addresses("10.1.0.0/30").unwrap();
        assert_eq!(a.len(), 2, "hosts only: {a:?}");
        assert_eq!(a[0].to_string(), "10.1.0.1");
        assert_eq!(addresses("127.0.0.5/32").unwrap().len(), 1);
        assert_eq!(addresses("10.1.0.0/22").unwrap().len(), 1022);
        let e = addresses("10.1.0.0/21").unwrap_err();
        assert_eq!(e.code, "cidr_too_large");
        assert_eq!(addresses("10.1.0.7/24").unwrap_err().code, "invalid_cidr");
        assert_eq!(addresses("bmc-net").unwrap_err().code, "invalid_cidr");
        assert_eq!(addresses("fd00::/118").unwrap().len(), 1024);
        assert!(addresses("fd00::/117").is_err());
        assert_eq!(ports(None, 623, "x").unwrap(), vec![623]);
        assert!(ports(Some(&[0]), 623, "x").is_err());
        assert!(ports(Some(&[1; 9]), 623, "x").is_err());
    }
}
