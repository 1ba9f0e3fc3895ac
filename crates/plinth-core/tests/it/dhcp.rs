//! The lease engine and discovery against a real PostgreSQL, through the same calls the DHCP
//! server makes (`App::dhcp_decide`).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use plinth_core::dhcp::*;
use plinth_core::{App, Principal};
use plinth_testkit::{TestDb, mac};
use plinth_types::api::*;
use plinth_types::{MacAddr, MachineState};

const SRV: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 2);
const TIMERS: LeaseTimers = LeaseTimers {
    offer_secs: 30,
    quarantine_secs: 600,
};

fn boot() -> BootConfig {
    BootConfig {
        bios_binary: "undionly.kpxe".into(),
        efi_binary: "ipxe.efi".into(),
        arm64_binary: None,
        http_base: None,
        http_port: 8080,
        unknown_machines: UnknownPolicy::Boot,
    }
}

fn admin() -> Principal {
    Principal::system()
}

async fn setup(first: u8, last: u8) -> (App, TestDb) {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    app.create_subnet(
        &admin(),
        SubnetCreate {
            cidr: "10.30.0.0/24".into(),
            ranges: vec![AddressRange {
                start: Ipv4Addr::new(10, 30, 0, first),
                end: Ipv4Addr::new(10, 30, 0, last),
            }],
            router: Some(Ipv4Addr::new(10, 30, 0, 1)),
            dns_servers: Some(vec![Ipv4Addr::new(10, 30, 0, 53)]),
            domain: Some("lab.example".into()),
            lease_time: Some(600),
            boot_server: None,
            relay_addresses: Some(vec![Ipv4Addr::new(192, 168, 77, 1)]),
            relay_any_in_cidr: None,
        },
    )
    .await
    .unwrap();
    (app, db)
}

fn req(op: LeaseOp, m: MacAddr) -> DhcpRequest<'static> {
    DhcpRequest {
        op,
        match_addr: SRV,
        relayed: false,
        mac: m,
        client_id: None,
        hostname: None,
        client: ClientInfo::default(),
    }
}

async fn dora(app: &App, m: MacAddr) -> Ipv4Addr {
    let offer = app
        .dhcp_decide(
            &req(LeaseOp::Discover { requested: None }, m),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(offer.outcome, Outcome::Offer, "{offer:?}");
    let ip = offer.lease.unwrap().address.unwrap();
    let ack = app
        .dhcp_decide(
            &req(LeaseOp::Select { requested: ip }, m),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
    ip
}

#[tokio::test]
async fn full_exchange_renew_release_decline() {
    let (app, _db) = setup(100, 110).await;
    let m = mac(1);
    let offer = app
        .dhcp_decide(
            &req(LeaseOp::Discover { requested: None }, m),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    let lease = offer.lease.clone().unwrap();
    let offered = lease.address.unwrap();
    assert!(
        (100..=110).contains(&offered.octets()[3]) && offered.octets()[..3] == [10, 30, 0],
        "{offered}"
    );
    assert_eq!(
        (lease.lease_secs, lease.prefix_len, lease.router),
        (Some(600), 24, Some(Ipv4Addr::new(10, 30, 0, 1)))
    );
    assert_eq!(
        (lease.dns_servers.clone(), lease.domain.as_deref()),
        (vec![Ipv4Addr::new(10, 30, 0, 53)], Some("lab.example"))
    );
    assert_eq!(offer.boot, BootAction::None, "not a network-booting client");
    let ip = dora(&app, m).await;
    assert_eq!(ip, offered, "a client keeps its address");
    let leases = app.list_leases(&admin(), None, Some(m)).await.unwrap();
    assert_eq!((leases.len(), leases[0].state), (1, LeaseState::Bound));

    let renew = app
        .dhcp_decide(&req(LeaseOp::Renew { ciaddr: ip }, m), TIMERS, &boot(), SRV)
        .await
        .unwrap();
    assert_eq!(renew.outcome, Outcome::Ack);
    // Someone else asking for that address is refused.
    let other = app
        .dhcp_decide(
            &req(LeaseOp::Select { requested: ip }, mac(2)),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(other.outcome, Outcome::Nak);
    let wrong_net = app
        .dhcp_decide(
            &req(
                LeaseOp::InitReboot {
                    requested: Ipv4Addr::new(10, 99, 0, 5),
                },
                m,
            ),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(wrong_net.outcome, Outcome::Nak);
    let unknown = app
        .dhcp_decide(
            &req(
                LeaseOp::InitReboot {
                    requested: Ipv4Addr::new(10, 30, 0, 20),
                },
                mac(9),
            ),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(
        unknown.outcome,
        Outcome::Ignore,
        "no record of the client: stay silent"
    );

    app.dhcp_decide(
        &req(LeaseOp::Release { ciaddr: ip }, m),
        TIMERS,
        &boot(),
        SRV,
    )
    .await
    .unwrap();
    assert!(
        app.list_leases(&admin(), None, Some(m))
            .await
            .unwrap()
            .is_empty()
    );

    // DECLINE quarantines the address: the next client gets another one.
    let ip2 = dora(&app, mac(3)).await;
    app.dhcp_decide(
        &req(LeaseOp::Decline { requested: ip2 }, mac(3)),
        TIMERS,
        &boot(),
        SRV,
    )
    .await
    .unwrap();
    let ip3 = dora(&app, mac(3)).await;
    assert_ne!(ip2, ip3);
    let declined = app.list_leases(&admin(), None, None).await.unwrap();
    assert!(
        declined
            .iter()
            .any(|l| l.address == ip2 && l.state == LeaseState::Declined)
    );

    let inform = app
        .dhcp_decide(&req(LeaseOp::Inform, mac(4)), TIMERS, &boot(), SRV)
        .await
        .unwrap();
    assert_eq!(
        (inform.outcome, inform.lease.unwrap().address),
        (Outcome::Ack, None)
    );

    // A relayed request is matched by giaddr (here a configured relay address).
    let mut relayed = req(LeaseOp::Discover { requested: None }, mac(5));
    relayed.match_addr = Ipv4Addr::new(192, 168, 77, 1);
    relayed.relayed = true;
    assert_eq!(
        app.dhcp_decide(&relayed, TIMERS, &boot(), SRV)
            .await
            .unwrap()
            .outcome,
        Outcome::Offer
    );
    relayed.match_addr = Ipv4Addr::new(172, 16, 0, 1);
    assert_eq!(
        app.dhcp_decide(&relayed, TIMERS, &boot(), SRV)
            .await
            .unwrap()
            .outcome,
        Outcome::Ignore,
        "no subnet"
    );
    // A giaddr inside the subnet but not a listed relay (anyone on a segment can forge one):
    // not answered, nothing written; once the subnet allows relays inside it, served.
    relayed.match_addr = Ipv4Addr::new(10, 30, 0, 77);
    let d = app
        .dhcp_decide(&relayed, TIMERS, &boot(), SRV)
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Ignore);
    assert!(
        d.reason
            .as_deref()
            .unwrap_or("")
            .contains("relay 10.30.0.77"),
        "{d:?}"
    );
    let held = app.list_leases(&admin(), None, Some(mac(5))).await.unwrap();
    assert_eq!(
        held.len(),
        1,
        "only the lease through the listed relay: {held:?}"
    );
    // Refused and accepted requests in one batch are each answered as on their own.
    let mut inside = req(LeaseOp::Discover { requested: None }, mac(6));
    inside.match_addr = Ipv4Addr::new(10, 30, 0, 77);
    inside.relayed = true;
    let direct = req(LeaseOp::Discover { requested: None }, mac(7));
    let both = app
        .dhcp_decide_batch(&[inside.clone(), direct], TIMERS, &boot(), SRV)
        .await;
    assert_eq!(both[0].as_ref().unwrap().outcome, Outcome::Ignore);
    assert_eq!(both[1].as_ref().unwrap().outcome, Outcome::Offer);
    let subnet = app.list_subnets(&admin()).await.unwrap()[0].clone();
    assert!(!subnet.relay_any_in_cidr, "not by default");
    app.update_subnet(
        &admin(),
        subnet.id,
        SubnetPatch {
            relay_any_in_cidr: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        app.dhcp_decide(&inside, TIMERS, &boot(), SRV)
            .await
            .unwrap()
            .outcome,
        Outcome::Offer
    );
}

/// A full pool answers no new client, and says so in the log a few times a window, not once
/// per packet (anyone can send DISCOVERs with made-up MACs).
#[tokio::test]
async fn an_exhausted_pool_is_logged_a_few_times_a_window() {
    let (app, _db) = setup(100, 100).await;
    assert_eq!(dora(&app, mac(1)).await, Ipv4Addr::new(10, 30, 0, 100));
    let (outcomes, lines) = plinth_testkit::logs::warnings_async(async {
        let mut outcomes = Vec::new();
        for k in 2..60 {
            let discover = req(LeaseOp::Discover { requested: None }, mac(k));
            let d = app.dhcp_decide(&discover, TIMERS, &boot(), SRV).await;
            outcomes.push(d.unwrap().outcome);
        }
        outcomes
    })
    .await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ignore),
        "{outcomes:?}"
    );
    let logged = lines
        .iter()
        .filter(|l| l.contains("address pool exhausted"))
        .count();
    assert!(
        (1..=10).contains(&logged),
        "{logged} lines for 58 DISCOVERs:\n{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn reservations_win_and_are_never_given_away() {
    let (app, _db) = setup(100, 101).await;
    let reserved = Ipv4Addr::new(10, 30, 0, 100);
    let owner = app
        .enroll_machine(
            &admin(),
            MachineCreate {
                hostname: Some("res".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: mac(10),
                    ipv4: Some(reserved),
                    pxe: None,
                }],
                bmc: None,
            },
        )
        .await
        .unwrap();
    // Two other clients exhaust the rest of the pool but never get the reserved address.
    assert_eq!(dora(&app, mac(11)).await, Ipv4Addr::new(10, 30, 0, 101));
    let third = app
        .dhcp_decide(
            &req(
                LeaseOp::Discover {
                    requested: Some(reserved),
                },
                mac(12),
            ),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(third.outcome, Outcome::Ignore, "pool exhausted: {third:?}");
    let steal = app
        .dhcp_decide(
            &req(
                LeaseOp::Select {
                    requested: reserved,
                },
                mac(12),
            ),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(steal.outcome, Outcome::Nak);
    // The owner always gets exactly its address, even asking for another.
    let offer = app
        .dhcp_decide(
            &req(
                LeaseOp::Discover {
                    requested: Some(Ipv4Addr::new(10, 30, 0, 101)),
                },
                mac(10),
            ),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(offer.lease.unwrap().address, Some(reserved));
    assert_eq!(offer.machine_id, Some(owner.id));
    assert_eq!(dora(&app, mac(10)).await, reserved);
    let wrong = app
        .dhcp_decide(
            &req(
                LeaseOp::Select {
                    requested: Ipv4Addr::new(10, 30, 0, 101),
                },
                mac(10),
            ),
            TIMERS,
            &boot(),
            SRV,
        )
        .await
        .unwrap();
    assert_eq!(wrong.outcome, Outcome::Nak);
}

fn addr(d: &DhcpDecision) -> Option<Ipv4Addr> {
    d.lease.as_ref().and_then(|l| l.address)
}

async fn decide_all(app: &App, reqs: &[DhcpRequest<'_>]) -> Vec<DhcpDecision> {
    app.dhcp_decide_batch(reqs, TIMERS, &boot(), SRV)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// A batch is answered as if its requests had come one after the other: new clients get
/// distinct addresses, a client sending twice gets one address, offers are acknowledged, and
/// the requests that take the one-by-one path (a reservation, someone else's address, the pool
/// running dry in mid-batch, INFORM, an unknown network) get their usual answers in the same batch.
#[tokio::test]
async fn batches_answer_like_single_requests() {
    let (app, _db) = setup(100, 109).await;
    let reserved = Ipv4Addr::new(10, 30, 0, 200);
    app.enroll_machine(
        &admin(),
        MachineCreate {
            hostname: Some("res".into()),
            rack: None,
            rack_unit: None,
            size_u: None,
            pool: None,
            tags: None,
            arch: None,
            nics: vec![NicSpec {
                mac: mac(50),
                ipv4: Some(reserved),
                pxe: None,
            }],
            bmc: None,
        },
    )
    .await
    .unwrap();
    let discover = |m| req(LeaseOp::Discover { requested: None }, m);
    let pool = |a: Option<Ipv4Addr>| a.is_some_and(|a| (100..=109).contains(&a.octets()[3]));

    let mut first: Vec<DhcpRequest> = (1..=8).map(|n| discover(mac(n))).collect();
    first.push(discover(mac(1)));
    first.push(discover(mac(50)));
    first.push(req(LeaseOp::Inform, mac(60)));
    let mut elsewhere = discover(mac(61));
    elsewhere.match_addr = Ipv4Addr::new(10, 99, 0, 1);
    first.push(elsewhere);
    let d = decide_all(&app, &first).await;
    assert!(d[..10].iter().all(|d| d.outcome == Outcome::Offer), "{d:?}");
    let offers: Vec<Ipv4Addr> = d[..8].iter().map(|d| addr(d).unwrap()).collect();
    assert!(offers.iter().all(|a| pool(Some(*a))), "{offers:?}");
    assert_eq!(offers.iter().collect::<HashSet<_>>().len(), 8, "{offers:?}");
    assert_eq!(
        addr(&d[8]),
        Some(offers[0]),
        "a client sending twice gets one address"
    );
    assert_eq!(addr(&d[9]), Some(reserved));
    assert_eq!(d[10].outcome, Outcome::Ack, "INFORM: {:?}", d[10]);
    assert_eq!(addr(&d[10]), None);
    assert_eq!(
        d[11].outcome,
        Outcome::Ignore,
        "unknown network: {:?}",
        d[11]
    );

    // The eight take their offers; three newcomers share the two addresses left; a ninth
    // client asks for an address already offered to another; the reserved client binds.
    let mut second: Vec<DhcpRequest> = (1..=8)
        .map(|n| {
            req(
                LeaseOp::Select {
                    requested: offers[n as usize - 1],
                },
                mac(n),
            )
        })
        .collect();
    second.extend((20..23).map(|n| discover(mac(n))));
    second.push(req(
        LeaseOp::Select {
            requested: offers[1],
        },
        mac(9),
    ));
    second.push(req(
        LeaseOp::Select {
            requested: reserved,
        },
        mac(50),
    ));
    let d = decide_all(&app, &second).await;
    for (n, d) in d[..8].iter().enumerate() {
        assert_eq!(d.outcome, Outcome::Ack, "{d:?}");
        assert_eq!(addr(d), Some(offers[n]));
        assert_eq!(d.lease.as_ref().unwrap().lease_secs, Some(600));
    }
    let late: Vec<&DhcpDecision> = d[8..11].iter().collect();
    let late_offers: HashSet<Ipv4Addr> = late.iter().filter_map(|d| addr(d)).collect();
    assert_eq!(late_offers.len(), 2, "{late:?}");
    assert!(
        late_offers
            .iter()
            .all(|a| pool(Some(*a)) && !offers.contains(a))
    );
    assert_eq!(
        late.iter().filter(|d| d.outcome == Outcome::Ignore).count(),
        1,
        "the pool ran dry for one of them: {late:?}"
    );
    assert_eq!(d[11].outcome, Outcome::Nak, "{:?}", d[11]);
    assert_eq!(d[12].outcome, Outcome::Ack);
    assert_eq!(addr(&d[12]), Some(reserved));

    // The bound clients come back: each is offered its address again and renews it.
    let third: Vec<DhcpRequest> = (1..=8)
        .map(|n| discover(mac(n)))
        .chain((1..=8).map(|n| {
            req(
                LeaseOp::Renew {
                    ciaddr: offers[n as usize - 1],
                },
                mac(n),
            )
        }))
        .collect();
    let d = decide_all(&app, &third).await;
    for (n, d) in d.iter().enumerate() {
        assert_eq!(addr(d), Some(offers[n % 8]), "{d:?}");
    }
    assert!(d[8..].iter().all(|d| d.outcome == Outcome::Ack));
    let leases = app.list_leases(&admin(), None, None).await.unwrap();
    let bound = leases
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .count();
    assert_eq!(bound, 9, "{leases:?}");
}

/// Two instances deciding batches for the same clients at the same moment: every client ends
/// with at most one address, no address goes to two clients, and nothing fails.
#[tokio::test]
async fn concurrent_batches_for_the_same_clients() {
    let (app, db) = setup(10, 250).await;
    let other = db.app();
    for round in 0..4u32 {
        let batch = |app: App| {
            tokio::spawn(async move {
                let reqs: Vec<DhcpRequest> = (0..50)
                    .map(|n| req(LeaseOp::Discover { requested: None }, mac(round * 1000 + n)))
                    .collect();
                decide_all(&app, &reqs).await
            })
        };
        let (a, b) = (batch(app.clone()), batch(other.clone()));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        for (x, y) in a.iter().zip(&b) {
            // Each client is offered one address, or one instance stays silent for it.
            match (addr(x), addr(y)) {
                (Some(p), Some(q)) => assert_eq!(p, q, "{x:?} {y:?}"),
                (None, None) => panic!("nobody answered: {x:?} {y:?}"),
                _ => {}
            }
        }
    }
    let leases = app.list_leases(&admin(), None, None).await.unwrap();
    let addrs: HashSet<_> = leases.iter().map(|l| l.address).collect();
    let macs: HashSet<_> = leases.iter().map(|l| l.mac).collect();
    assert_eq!(leases.len(), 200, "{leases:?}");
    assert_eq!(addrs.len(), 200);
    assert_eq!(macs.len(), 200);
}

#[tokio::test]
async fn two_instances_never_share_an_address() {
    let (app, db) = setup(10, 250).await;
    let other = db.app();
    let apps = [app.clone(), other];
    let tasks = (0..200u32).map(|n| {
        let app = apps[n as usize % 2].clone();
        tokio::spawn(async move { dora(&app, mac(1000 + n)).await })
    });
    let ips: Vec<Ipv4Addr> = futures_join(tasks).await;
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), 200);
    assert_eq!(
        app.list_leases(&admin(), None, None).await.unwrap().len(),
        200
    );
}

/// Two instances on one segment hear the same broadcast exchange: both offer the client's one
/// lease row; its REQUEST names one of them, and the other (seeing a REQUEST for another
/// server) must not free the offer before the named one binds it, or a third client could take
/// the address in between and the client would be refused.
#[tokio::test]
async fn the_instance_not_chosen_leaves_the_shared_offer_alone() {
    let (a, db) = setup(100, 101).await;
    let b = db.app();
    let client = mac(40);
    let decide = |app: App, op: LeaseOp, m: MacAddr| async move {
        app.dhcp_decide(&req(op, m), TIMERS, &boot(), SRV)
            .await
            .unwrap()
    };
    let offer_a = decide(a.clone(), LeaseOp::Discover { requested: None }, client).await;
    let offer_b = decide(b.clone(), LeaseOp::Discover { requested: None }, client).await;
    let ip = addr(&offer_a).unwrap();
    assert_eq!(
        addr(&offer_b),
        Some(ip),
        "both offer the client's one lease"
    );
    // B processes the REQUEST naming A first.
    let other = decide(b.clone(), LeaseOp::SelectOther, client).await;
    assert_eq!(other.outcome, Outcome::Ignore);
    // Meanwhile another client asks: it must not get the offered address.
    let third = decide(b.clone(), LeaseOp::Discover { requested: None }, mac(41)).await;
    assert_ne!(addr(&third), Some(ip), "the offer is still the client's");
    let ack = decide(a.clone(), LeaseOp::Select { requested: ip }, client).await;
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
}

/// A subnet whose pool (10.30.0.10 - 10.30.7.250, 2,033 addresses) is large enough for
/// offers from memory. With `free`, only those addresses are left free: the others are
/// declined for an hour.
async fn setup_large(free: Option<&[Ipv4Addr]>) -> (App, TestDb) {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    pool_subnet(
        &app,
        "10.30.0.0/21",
        &[(Ipv4Addr::new(10, 30, 0, 10), Ipv4Addr::new(10, 30, 7, 250))],
        Some(Ipv4Addr::new(10, 30, 0, 1)),
    )
    .await;
    if let Some(free) = free {
        let free: Vec<std::net::IpAddr> = free.iter().map(|a| (*a).into()).collect();
        sqlx::query(
            "update leases set state = 'declined', expires_at = now() + interval '1 hour'
             where not (address = any($1))",
        )
        .bind(&free)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    (app, db)
}

/// A subnet with these ranges as its pool, a 600-s lease time, and nothing else set.
async fn pool_subnet(
    app: &App,
    cidr: &str,
    ranges: &[(Ipv4Addr, Ipv4Addr)],
    router: Option<Ipv4Addr>,
) {
    app.create_subnet(
        &admin(),
        SubnetCreate {
            cidr: cidr.into(),
            ranges: ranges
                .iter()
                .map(|&(start, end)| AddressRange { start, end })
                .collect(),
            router,
            dns_servers: None,
            domain: None,
            lease_time: Some(600),
            boot_server: None,
            relay_addresses: None,
            relay_any_in_cidr: None,
        },
    )
    .await
    .unwrap();
}

async fn decide(app: &App, op: LeaseOp, m: MacAddr) -> DhcpDecision {
    app.dhcp_decide(&req(op, m), TIMERS, &boot(), SRV)
        .await
        .unwrap()
}

/// The rows the table holds for a client (live: offered, bound, declined).
async fn rows_of(app: &App, m: MacAddr) -> Vec<(Ipv4Addr, LeaseState)> {
    app.list_leases(&admin(), None, Some(m))
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.address, l.state))
        .collect()
}

/// In a large pool a DISCOVER writes nothing: the offer is the instance's to remember. The
/// client asking again gets the same address, no other client gets it, and its REQUEST commits
/// it. A client sending twice in one batch gets one address; with the rest of the pool out on
/// offers from memory, the next client gets none.
#[tokio::test]
async fn a_large_pool_offers_from_memory_and_commits_at_request() {
    let (a, b) = (Ipv4Addr::new(10, 30, 0, 100), Ipv4Addr::new(10, 30, 5, 17));
    let (app, db) = setup_large(Some(&[a, b])).await;
    let discover = |m| req(LeaseOp::Discover { requested: None }, m);
    let d = decide_all(&app, &[discover(mac(1)), discover(mac(1))]).await;
    assert_eq!(d[0].outcome, Outcome::Offer, "{d:?}");
    let x = addr(&d[0]).unwrap();
    assert!(x == a || x == b, "{x}");
    assert_eq!(
        addr(&d[1]),
        Some(x),
        "a client sending twice gets one address"
    );
    assert!(rows_of(&app, mac(1)).await.is_empty(), "nothing written");

    let again = decide(&app, LeaseOp::Discover { requested: None }, mac(1)).await;
    assert_eq!(addr(&again), Some(x), "asking again: the same offer");
    let y = addr(&decide(&app, LeaseOp::Discover { requested: None }, mac(2)).await).unwrap();
    assert_eq!(
        y,
        if x == a { b } else { a },
        "the other client gets the other address"
    );
    let none = decide(&app, LeaseOp::Discover { requested: None }, mac(3)).await;
    assert_eq!(
        none.outcome,
        Outcome::Ignore,
        "both free addresses are out on offers: {none:?}"
    );

    // Both REQUESTs in one batch, with a renewal of nothing and a request of a declined address.
    let d = decide_all(
        &app,
        &[
            req(LeaseOp::Select { requested: x }, mac(1)),
            req(LeaseOp::Select { requested: y }, mac(2)),
            req(
                LeaseOp::Select {
                    requested: Ipv4Addr::new(10, 30, 2, 2),
                },
                mac(3),
            ),
        ],
    )
    .await;
    assert_eq!((d[0].outcome, addr(&d[0])), (Outcome::Ack, Some(x)));
    assert_eq!((d[1].outcome, addr(&d[1])), (Outcome::Ack, Some(y)));
    assert_eq!(d[2].outcome, Outcome::Nak, "{:?}", d[2]);
    assert_eq!(rows_of(&app, mac(1)).await, vec![(x, LeaseState::Bound)]);
    assert_eq!(rows_of(&app, mac(2)).await, vec![(y, LeaseState::Bound)]);
    // The bind records when (what "last seen" shows), and a renewal moves it on.
    let bound_at = |ip: Ipv4Addr| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<f64>>(
                "select extract(epoch from bound_at)::float8 from leases where address = $1",
            )
            .bind(std::net::IpAddr::from(ip))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let first = bound_at(x).await.expect("bound_at set by the bind");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let renew = decide_all(&app, &[req(LeaseOp::Renew { ciaddr: x }, mac(1))]).await;
    assert_eq!(renew[0].outcome, Outcome::Ack, "{renew:?}");
    let later = bound_at(x).await.unwrap();
    assert!(later > first, "{first} then {later}");
    // A bound client coming back is offered its address, which stays bound.
    let back = decide(&app, LeaseOp::Discover { requested: None }, mac(1)).await;
    assert_eq!(addr(&back), Some(x));
    assert_eq!(rows_of(&app, mac(1)).await, vec![(x, LeaseState::Bound)]);
}

/// Relayed packets from a relay no subnet accepts are refused inside the batch and change
/// nothing: not the table, and not the offer from memory that the
/// client whose MAC it names (forged, perhaps) is about to REQUEST.
#[tokio::test]
async fn a_refused_relay_leaves_a_clients_offer_from_memory_alone() {
    let (a, b) = (Ipv4Addr::new(10, 30, 0, 100), Ipv4Addr::new(10, 30, 5, 17));
    let (app, _db) = setup_large(Some(&[a, b])).await;
    let discover = |m| req(LeaseOp::Discover { requested: None }, m);
    let x = addr(&decide(&app, LeaseOp::Discover { requested: None }, mac(1)).await).unwrap();
    let mut forged = discover(mac(1));
    forged.match_addr = Ipv4Addr::new(10, 99, 0, 1);
    forged.relayed = true;
    let mut release = req(LeaseOp::Release { ciaddr: x }, mac(1));
    release.match_addr = forged.match_addr;
    release.relayed = true;
    let d = decide_all(&app, &[forged, release]).await;
    for refused in &d {
        assert_eq!(refused.outcome, Outcome::Ignore, "{refused:?}");
        assert!(
            refused
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("relay 10.99.0.1 is not one of a subnet's relay_addresses"),
            "{refused:?}"
        );
    }
    assert!(rows_of(&app, mac(1)).await.is_empty(), "nothing written");
    // The offer still counts: the next client gets the other free address, and a third none.
    let y = addr(&decide(&app, LeaseOp::Discover { requested: None }, mac(2)).await).unwrap();
    assert_ne!(x, y, "the offer from memory is still skipped for others");
    let none = decide(&app, LeaseOp::Discover { requested: None }, mac(3)).await;
    assert_eq!(
        none.outcome,
        Outcome::Ignore,
        "both addresses are out on offers: {none:?}"
    );
    let again = decide(&app, LeaseOp::Discover { requested: None }, mac(1)).await;
    assert_eq!(addr(&again), Some(x), "the client's offer is unchanged");
    let ack = decide(&app, LeaseOp::Select { requested: x }, mac(1)).await;
    assert_eq!((ack.outcome, addr(&ack)), (Outcome::Ack, Some(x)));
}

/// One instance with many offers from memory open at once (a storm whose REQUESTs lag, 900
/// clients in a pool of 2,033): each batch skips every open offer, so no two clients are
/// offered one address, and every REQUEST binds.
#[tokio::test]
async fn many_open_offers_from_memory_are_never_offered_twice() {
    let (app, _db) = setup_large(None).await;
    let clients: Vec<MacAddr> = (0..900u32).map(|n| mac(20_000 + n)).collect();
    let mut offered = Vec::new();
    for chunk in clients.chunks(100) {
        let reqs: Vec<_> = chunk
            .iter()
            .map(|m| req(LeaseOp::Discover { requested: None }, *m))
            .collect();
        for d in decide_all(&app, &reqs).await {
            assert_eq!(d.outcome, Outcome::Offer, "{d:?}");
            offered.push(addr(&d).unwrap());
        }
    }
    let unique: HashSet<_> = offered.iter().collect();
    assert_eq!(unique.len(), clients.len(), "one address per open offer");
    let reqs: Vec<_> = clients
        .iter()
        .zip(&offered)
        .map(|(m, a)| req(LeaseOp::Select { requested: *a }, *m))
        .collect();
    for chunk in reqs.chunks(128) {
        for d in decide_all(&app, chunk).await {
            assert_eq!(d.outcome, Outcome::Ack, "{d:?}");
        }
    }
}

/// A client whose REQUEST for its offer from memory and whose next DISCOVER land in one batch
/// (perfdhcp's random MACs do this; so does a client that restarts at once): the REQUEST binds,
/// and the DISCOVER and a second REQUEST, which take the one-by-one path as the client's later
/// items, get the same address although the batch skips it as an open offer.
#[tokio::test]
async fn a_request_and_a_discover_of_one_client_in_one_batch_both_get_its_address() {
    let (app, _db) = setup_large(None).await;
    let m = mac(31_000);
    let offer = decide(&app, LeaseOp::Discover { requested: None }, m).await;
    let a = addr(&offer).unwrap();
    let d = decide_all(
        &app,
        &[
            req(LeaseOp::Select { requested: a }, m),
            req(LeaseOp::Discover { requested: None }, m),
            req(LeaseOp::Select { requested: a }, m),
        ],
    )
    .await;
    assert_eq!(
        (d[0].outcome, addr(&d[0])),
        (Outcome::Ack, Some(a)),
        "{d:?}"
    );
    assert_eq!(
        (d[1].outcome, addr(&d[1])),
        (Outcome::Offer, Some(a)),
        "{d:?}"
    );
    assert_eq!(
        (d[2].outcome, addr(&d[2])),
        (Outcome::Ack, Some(a)),
        "{d:?}"
    );
    assert_eq!(rows_of(&app, m).await, vec![(a, LeaseState::Bound)]);
}

/// The collision path: two instances, not seeing each other's offers from memory, offer the one
/// free address to two clients. The first REQUEST binds it; the second client is refused, starts
/// over, and is offered an address that came free meanwhile.
#[tokio::test]
async fn two_instances_offering_one_free_address_bind_it_once_and_refuse_the_other() {
    let (only, later) = (Ipv4Addr::new(10, 30, 3, 3), Ipv4Addr::new(10, 30, 6, 6));
    let (one, db) = setup_large(Some(&[only])).await;
    let two = db.app();
    let (c1, c2) = (mac(11), mac(12));
    let o1 = decide(&one, LeaseOp::Discover { requested: None }, c1).await;
    let o2 = decide(&two, LeaseOp::Discover { requested: None }, c2).await;
    assert_eq!((addr(&o1), addr(&o2)), (Some(only), Some(only)));
    let ack = decide(&two, LeaseOp::Select { requested: only }, c2).await;
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
    let nak = decide(&one, LeaseOp::Select { requested: only }, c1).await;
    assert_eq!(nak.outcome, Outcome::Nak, "{nak:?}");
    assert_eq!(
        nak.reason.as_deref(),
        Some("address leased to another client")
    );
    assert!(rows_of(&one, c1).await.is_empty());

    sqlx::query("update leases set state = 'free', expires_at = null where address = $1")
        .bind(std::net::IpAddr::from(later))
        .execute(&db.pool)
        .await
        .unwrap();
    let o1 = decide(&one, LeaseOp::Discover { requested: None }, c1).await;
    assert_eq!(addr(&o1), Some(later), "{o1:?}");
    let ack = decide(&one, LeaseOp::Select { requested: later }, c1).await;
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
    assert_eq!(rows_of(&one, c1).await, vec![(later, LeaseState::Bound)]);
    assert_eq!(rows_of(&one, c2).await, vec![(only, LeaseState::Bound)]);
}

/// Many clients at once through two instances sharing a large pool, each client starting over
/// when refused (as a DHCP client does after a NAK): every client ends with one address, and
/// no address is bound twice.
#[tokio::test]
async fn many_clients_through_two_instances_on_a_large_pool_bind_one_address_each() {
    let (app, db) = setup_large(None).await;
    let apps = [app.clone(), db.app()];
    let tasks = (0..300u32).map(|n| {
        let apps = apps.clone();
        tokio::spawn(async move {
            let m = mac(5000 + n);
            for attempt in 0..5u32 {
                // Both instances hear the DISCOVER; the client takes one offer, and the other
                // instance hears a REQUEST for another server.
                let chosen = &apps[((n + attempt) % 2) as usize];
                let other = &apps[((n + attempt + 1) % 2) as usize];
                let offer = decide(other, LeaseOp::Discover { requested: None }, m).await;
                assert_eq!(offer.outcome, Outcome::Offer, "{offer:?}");
                let offer = decide(chosen, LeaseOp::Discover { requested: None }, m).await;
                let ip = addr(&offer).unwrap();
                let _ = decide(other, LeaseOp::SelectOther, m).await;
                let ack = decide(chosen, LeaseOp::Select { requested: ip }, m).await;
                match ack.outcome {
                    Outcome::Ack => return (ip, attempt),
                    Outcome::Nak => continue,
                    o => panic!("{o:?}: {ack:?}"),
                }
            }
            panic!("{m}: refused five times");
        })
    });
    let got: Vec<(Ipv4Addr, u32)> = futures_join(tasks).await;
    let unique: HashSet<_> = got.iter().map(|(ip, _)| ip).collect();
    assert_eq!(unique.len(), 300);
    let leases = app.list_leases(&admin(), None, None).await.unwrap();
    assert_eq!(leases.len(), 300, "{leases:?}");
    assert!(leases.iter().all(|l| l.state == LeaseState::Bound));
    let refused: u32 = got.iter().map(|(_, n)| n).sum();
    eprintln!("300 clients through two instances: {refused} refused once at least");
}

/// A pool that is a small part of its subnet (2,048 addresses of a /16) is entered at random
/// points of the pool, not always at its first free address: each DISCOVER's walk starts
/// somewhere in the pool's ranges (weighted by their size), so that offers from memory, which
/// the table does not show, rarely meet once the newest few are no longer skipped. (The
/// database's walk, for the DISCOVERs the client view leaves to it: the view is off. The
/// view's reservoirs are read from the same random points, `dhcp_view_free`.)
#[tokio::test]
async fn offers_in_a_small_pool_of_a_large_subnet_start_anywhere_in_the_pool() {
    let db = TestDb::new().await.unwrap();
    let app = db.app().without_dhcp_view();
    let ranges = [
        (
            Ipv4Addr::new(10, 31, 200, 0),
            Ipv4Addr::new(10, 31, 203, 255),
        ),
        (
            Ipv4Addr::new(10, 31, 240, 0),
            Ipv4Addr::new(10, 31, 243, 255),
        ),
    ];
    pool_subnet(&app, "10.31.0.0/16", &ranges, None).await;
    // Heard on an interface of the subnet.
    let at = |m: MacAddr| DhcpRequest {
        match_addr: Ipv4Addr::new(10, 31, 0, 2),
        ..req(LeaseOp::Discover { requested: None }, m)
    };
    let mut offered = Vec::new();
    for n in 0..40u32 {
        let d = app
            .dhcp_decide(&at(mac(9000 + n)), TIMERS, &boot(), SRV)
            .await
            .unwrap();
        offered.push(addr(&d).unwrap_or_else(|| panic!("{d:?}")));
    }
    let in_range = |a: &Ipv4Addr, (s, e): (Ipv4Addr, Ipv4Addr)| s <= *a && *a <= e;
    assert!(
        offered
            .iter()
            .all(|a| ranges.iter().any(|r| in_range(a, *r))),
        "{offered:?}"
    );
    let unique: HashSet<_> = offered.iter().collect();
    assert_eq!(unique.len(), offered.len(), "{offered:?}");
    // Switched off (as `dhcp.client_view = false` does): it answered nothing, and it never
    // loaded (its listener was not started).
    let (ready, answered, loads, _) = app.dhcp_view_status(None);
    assert_eq!((ready, answered, loads), (false, 0, 0));
    // Both ranges are entered, and the first range's offers are not its first addresses.
    for r in ranges {
        assert!(offered.iter().any(|a| in_range(a, r)), "{r:?}: {offered:?}");
    }
    let lowest_first = offered
        .iter()
        .filter(|a| **a < Ipv4Addr::new(10, 31, 200, 64))
        .count();
    assert!(lowest_first < 10, "{offered:?}");
}

/// During a rolling upgrade the previous release's instances call `dhcp_lease_batch` with its
/// old arguments (docs/ha.md): it still answers, writing its offers as that release expects,
/// and a client of it binds through this release's instance.
#[tokio::test]
async fn the_previous_releases_call_still_decides_and_writes_its_offers() {
    let (app, db) = setup_large(None).await;
    let m = mac(70);
    let (outcome, ip): (String, std::net::IpAddr) = sqlx::query_as(
        "select outcome, address from dhcp_lease_batch(array['discover'], array['10.30.0.2']::inet[],
             array[false], array[$1::text::macaddr], array[null]::inet[], array[null]::bytea[],
             array[null]::text[], 30, 600)",
    )
    .bind(m.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let std::net::IpAddr::V4(ip) = ip else {
        panic!("{ip}")
    };
    assert_eq!(outcome, "offer");
    assert_eq!(rows_of(&app, m).await, vec![(ip, LeaseState::Offered)]);
    let again = decide(&app, LeaseOp::Discover { requested: None }, m).await;
    assert_eq!(addr(&again), Some(ip), "the written offer, again");
    let ack = decide(&app, LeaseOp::Select { requested: ip }, m).await;
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
    assert_eq!(rows_of(&app, m).await, vec![(ip, LeaseState::Bound)]);
}

async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn unknown_pxe_clients_are_discovered_once() {
    let (app, _db) = setup(100, 150).await;
    let m = mac(77);
    let mut r = req(LeaseOp::Discover { requested: None }, m);
    r.client = ClientInfo {
        arch: Some(7),
        pxe: true,
        uuid: Some(uuid::Uuid::from_u128(0xabc)),
        ..Default::default()
    };
    let tasks = (0..8).map(|_| {
        let (app, r) = (app.clone(), r.clone());
        tokio::spawn(async move { app.dhcp_decide(&r, TIMERS, &boot(), SRV).await.unwrap() })
    });
    let decisions = futures_join(tasks).await;
    assert!(decisions.iter().any(|d| d.boot
        == BootAction::Tftp {
            file: "ipxe.efi".into()
        }));
    let page = app
        .list_machines(
            &admin(),
            plinth_core::machines::MachineQuery {
                q: Some(m.to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.machines.len(), 1, "one record per MAC");
    let found = &page.machines[0];
    assert_eq!(found.state, MachineState::Discovered);
    assert_eq!(
        (found.pxe_arch, found.pxe_uuid),
        (Some(7), Some(uuid::Uuid::from_u128(0xabc)))
    );
    assert_eq!(found.arch, Some(Arch::X86_64));
    // A decommissioned machine's MAC gets an address but no boot file, and no new record.
    app.act(
        &admin(),
        found.id,
        plinth_core::lifecycle::Action {
            verb: plinth_types::Verb::Decommission,
            expected_version: None,
            reason: None,
        },
    )
    .await
    .unwrap();
    app.force_outcome(
        &admin(),
        found.id,
        plinth_core::lifecycle::Action {
            verb: plinth_types::Verb::DecommissionComplete,
            expected_version: None,
            reason: Some("test: no agent".into()),
        },
    )
    .await
    .unwrap();
    let d = app.dhcp_decide(&r, TIMERS, &boot(), SRV).await.unwrap();
    assert_eq!(
        (d.outcome, d.boot.clone(), d.machine_id),
        (Outcome::Offer, BootAction::None, Some(found.id))
    );
    let all = app
        .list_machines(&admin(), Default::default())
        .await
        .unwrap()
        .machines;
    assert_eq!(all.len(), 1, "no second discovery of a decommissioned MAC");
    assert_eq!(
        app.dhcp_proxy_boot(m, &r.client, &boot(), SRV)
            .await
            .unwrap(),
        BootAction::None,
        "nor in proxy mode"
    );
    let mut r2 = r.clone();
    r2.mac = mac(78);
    let enrolled = app
        .enroll_machine(
            &admin(),
            MachineCreate {
                hostname: None,
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: mac(78),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: None,
            },
        )
        .await
        .unwrap();
    let d = app.dhcp_decide(&r2, TIMERS, &boot(), SRV).await.unwrap();
    assert_eq!(
        (d.outcome, d.boot.clone(), d.machine_id),
        (Outcome::Offer, BootAction::None, Some(enrolled.id)),
        "enrolled: nothing to boot"
    );
    let mut rec = boot();
    rec.unknown_machines = UnknownPolicy::Record;
    let mut r3 = r.clone();
    r3.mac = mac(79);
    let d = app.dhcp_decide(&r3, TIMERS, &rec, SRV).await.unwrap();
    assert_eq!(
        (d.outcome, d.boot.clone()),
        (Outcome::Offer, BootAction::None),
        "record only"
    );
    assert!(d.machine_id.is_some(), "but recorded");
}

#[tokio::test]
async fn subnet_rules_and_reclaim() {
    let (app, db) = setup(100, 101).await;
    let mk = |cidr: &str, a: [u8; 4], b: [u8; 4]| SubnetCreate {
        cidr: cidr.into(),
        ranges: vec![AddressRange {
            start: Ipv4Addr::from(a),
            end: Ipv4Addr::from(b),
        }],
        router: None,
        dns_servers: None,
        domain: None,
        lease_time: None,
        boot_server: None,
        relay_addresses: None,
        relay_any_in_cidr: None,
    };
    let e = app
        .create_subnet(
            &admin(),
            mk("10.30.0.128/25", [10, 30, 0, 130], [10, 30, 0, 140]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "subnet_overlap");
    let e = app
        .create_subnet(&admin(), mk("10.31.0.0/24", [10, 31, 1, 1], [10, 31, 1, 5]))
        .await
        .unwrap_err();
    assert_eq!(e.code, "range_outside_subnet");
    let e = app
        .create_subnet(&admin(), mk("10.31.0.1/24", [10, 31, 0, 1], [10, 31, 0, 5]))
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_cidr");
    let ok = app
        .create_subnet(
            &admin(),
            mk("10.31.0.0/24", [10, 31, 0, 10], [10, 31, 0, 19]),
        )
        .await
        .unwrap();
    assert_eq!(ok.pool_size, 10);

    let ip = dora(&app, mac(1)).await;
    sqlx::query(
        "update leases set expires_at = now() - interval '1 second' where address = $1::text::inet",
    )
    .bind(ip.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(
        app.list_leases(&admin(), None, None)
            .await
            .unwrap()
            .is_empty(),
        "expired leases are not shown"
    );
    assert_eq!(app.reclaim_leases().await.unwrap(), 1);
    assert_eq!(app.reclaim_leases().await.unwrap(), 0, "idempotent");
    let subnets = app.list_subnets(&admin()).await.unwrap();
    let first = subnets.iter().find(|s| s.cidr == "10.30.0.0/24").unwrap();
    assert_eq!(first.active_leases, 0);
    // Shrinking the pool and deleting.
    let patched = app
        .update_subnet(
            &admin(),
            first.id,
            SubnetPatch {
                ranges: Some(vec![AddressRange {
                    start: Ipv4Addr::new(10, 30, 0, 100),
                    end: Ipv4Addr::new(10, 30, 0, 100),
                }]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.pool_size, 1);
    dora(&app, mac(2)).await;
    assert_eq!(
        app.delete_subnet(&admin(), first.id)
            .await
            .unwrap_err()
            .code,
        "subnet_in_use"
    );
    app.delete_subnet(&admin(), ok.id).await.unwrap();
}

#[tokio::test]
async fn discovery_is_bounded_per_minute() {
    let (app, _db) = setup(100, 150).await;
    let app = app.with_discovery_limit(3);
    let pxe = |n: u32| {
        let mut r = req(LeaseOp::Discover { requested: None }, mac(200 + n));
        r.client = ClientInfo {
            arch: Some(7),
            pxe: true,
            ..Default::default()
        };
        r
    };
    let mut answered = 0;
    for n in 0..5 {
        let d = app
            .dhcp_decide(&pxe(n), TIMERS, &boot(), SRV)
            .await
            .unwrap();
        if n < 3 {
            assert_eq!(d.outcome, Outcome::Offer, "{n}: {d:?}");
            assert!(d.machine_id.is_some());
            answered += 1;
        } else {
            // Made-up MACs beyond the limit: no answer now, no record.
            assert_eq!(d.outcome, Outcome::Ignore, "{n}: {d:?}");
            assert!(
                d.reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("unknown machines a minute"),
                "{d:?}"
            );
        }
    }
    assert_eq!(answered, 3);
    let all = app
        .list_machines(&admin(), Default::default())
        .await
        .unwrap()
        .machines;
    assert_eq!(all.len(), 3, "three discovered, no more");
    // The script endpoint is bounded by the same count.
    let e = app
        .boot_script(
            &plinth_core::boot::BootRequest {
                mac: Some(mac(299).to_string()),
                request_base: Some("http://10.30.0.2:8080".into()),
                ..Default::default()
            },
            &plinth_core::boot::BootSettings::with_root("images".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "discovery_throttled", "{e:?}");
    // A known machine is not held up by it.
    let d = app
        .dhcp_decide(&pxe(0), TIMERS, &boot(), SRV)
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Offer);
}

// The client view (`dhcp::view`): DISCOVERs of new clients answered without the database.

/// The addresses of [`setup_large`]'s pool.
const POOL: usize = 2033;

const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn subnet_id(db: &TestDb) -> uuid::Uuid {
    sqlx::query_scalar("select id from subnets")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits (up to [`VIEW_WAIT`]) until `app`'s view has heard of `m`.
async fn until_known(app: &App, m: MacAddr) {
    let until = std::time::Instant::now() + VIEW_WAIT;
    while !app.dhcp_view_knows(m) {
        assert!(
            std::time::Instant::now() < until,
            "the view never heard of {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Two instances on [`setup_large`]'s database; the first one's view loaded and its
/// reservoir filled.
async fn two_instances_with_a_view() -> (App, App, TestDb, uuid::Uuid) {
    let (one, db) = setup_large(None).await;
    let two = db.app();
    let subnet = subnet_id(&db).await;
    assert!(
        one.dhcp_view_fill(subnet, VIEW_WAIT).await,
        "the view loads"
    );
    (one, two, db, subnet)
}

/// Fills `app`'s reservoir of `subnet` until it holds `n` addresses (a fill reads from a random
/// point up to the pool's end: near the end, another fill adds more); returns them in order.
async fn fill_at_least(app: &App, subnet: uuid::Uuid, n: usize) -> Vec<Ipv4Addr> {
    for _ in 0..50 {
        assert!(
            app.dhcp_view_fill(subnet, VIEW_WAIT).await,
            "the view loads"
        );
        let reservoir = app.dhcp_view_reservoir(subnet);
        if reservoir.len() >= n {
            return reservoir;
        }
    }
    panic!("the reservoir never held {n} addresses");
}

fn answered(app: &App) -> u64 {
    app.dhcp_view_status(None).1
}

/// New clients' DISCOVERs are answered from the view: distinct free addresses, nothing
/// written, every REQUEST binds. A client the database then knows (bound) is decided by the
/// database again: offered its address. A booting client, and one asking for an address, go
/// to the database too.
#[tokio::test]
async fn new_clients_are_offered_from_the_view_and_bind_at_request() {
    let (app, db) = setup_large(None).await;
    let subnet = subnet_id(&db).await;
    fill_at_least(&app, subnet, 100).await;
    let (ready, before, _, _) = app.dhcp_view_status(Some(subnet));
    assert!(ready);

    let clients: Vec<MacAddr> = (0..100u32).map(|n| mac(40_000 + n)).collect();
    let discovers: Vec<_> = clients
        .iter()
        .map(|m| req(LeaseOp::Discover { requested: None }, *m))
        .collect();
    let offers = decide_all(&app, &discovers).await;
    assert_eq!(answered(&app), before + 100, "all from the view");
    let offered: Vec<Ipv4Addr> = offers
        .iter()
        .map(|d| {
            assert_eq!(d.outcome, Outcome::Offer, "{d:?}");
            let l = d.lease.as_ref().unwrap();
            assert_eq!(
                (l.lease_secs, l.prefix_len, l.router),
                (Some(600), 21, Some(Ipv4Addr::new(10, 30, 0, 1)))
            );
            addr(d).unwrap()
        })
        .collect();
    assert_eq!(offered.iter().collect::<HashSet<_>>().len(), 100);
    assert!(
        rows_of(&app, clients[0]).await.is_empty(),
        "nothing written"
    );
    // asking again: the same offer (from the instance's book, through the database)
    let again = decide(&app, LeaseOp::Discover { requested: None }, clients[0]).await;
    assert_eq!(addr(&again), Some(offered[0]));

    let requests: Vec<_> = clients
        .iter()
        .zip(&offered)
        .map(|(m, a)| req(LeaseOp::Select { requested: *a }, *m))
        .collect();
    for d in decide_all(&app, &requests).await {
        assert_eq!(d.outcome, Outcome::Ack, "{d:?}");
    }
    assert_eq!(
        rows_of(&app, clients[5]).await,
        vec![(offered[5], LeaseState::Bound)]
    );
    let n = answered(&app);
    let back = decide(&app, LeaseOp::Discover { requested: None }, clients[5]).await;
    assert_eq!(addr(&back), Some(offered[5]), "a bound client: its address");
    assert_eq!(answered(&app), n, "from the database");

    let mut pxe = req(LeaseOp::Discover { requested: None }, mac(41_000));
    pxe.client = ClientInfo {
        arch: Some(7),
        pxe: true,
        ..Default::default()
    };
    let booted = decide_all(&app, &[pxe]).await;
    assert!(booted[0].machine_id.is_some(), "recorded as discovered");
    // (an address of the pool that nobody holds: the offers start at a random point)
    let held: HashSet<Ipv4Addr> = offered.iter().copied().chain(addr(&booted[0])).collect();
    let wanted = (10..)
        .map(|n| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 30, 0, 0)) + n))
        .find(|a| !held.contains(a))
        .unwrap();
    let asks = decide(
        &app,
        LeaseOp::Discover {
            requested: Some(wanted),
        },
        mac(41_001),
    )
    .await;
    assert_eq!(addr(&asks), Some(wanted));
    assert_eq!(answered(&app), n, "both from the database");
}

/// What another instance writes reaches the view before the next DISCOVER: a client it bound
/// is offered its address, a NIC's MAC its reservation; and the addresses it bound or reserved
/// leave the reservoir, so that the whole rest of the pool, offered from the view, binds
/// without one refusal.
#[tokio::test]
async fn another_instances_leases_and_nics_reach_the_view() {
    let (one, two, _db, subnet) = two_instances_with_a_view().await;
    // The other instance binds 100 clients on the first addresses this view would offer (a
    // REQUEST for a free address binds it), and enrolls a machine reserving the next one.
    let reservoir = fill_at_least(&one, subnet, 102).await;
    let theirs: Vec<MacAddr> = (0..100u32).map(|n| mac(50_000 + n)).collect();
    let mut taken = HashSet::new();
    for (m, a) in theirs.iter().zip(&reservoir) {
        let ack = decide(&two, LeaseOp::Select { requested: *a }, *m).await;
        assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
        taken.insert(*a);
    }
    let reserved = reservoir[100];
    let nic = mac(50_500);
    two.enroll_machine(
        &admin(),
        MachineCreate {
            hostname: Some("reserved".into()),
            rack: None,
            rack_unit: None,
            size_u: None,
            pool: None,
            tags: None,
            arch: None,
            nics: vec![NicSpec {
                mac: nic,
                ipv4: Some(reserved),
                pxe: None,
            }],
            bmc: None,
        },
    )
    .await
    .unwrap();
    until_known(&one, theirs[99]).await;
    until_known(&one, nic).await;

    let n = answered(&one);
    let back = decide(&one, LeaseOp::Discover { requested: None }, theirs[7]).await;
    let had = rows_of(&one, theirs[7]).await[0].0;
    assert_eq!(
        addr(&back),
        Some(had),
        "the other instance's client: its address"
    );
    let res = decide(&one, LeaseOp::Discover { requested: None }, nic).await;
    assert_eq!(addr(&res), Some(reserved), "a NIC's reservation");
    assert_eq!(answered(&one), n, "both from the database");

    // Every other free address, offered to new clients from this instance's view: each binds.
    let free = POOL - taken.len() - 1;
    let clients: Vec<MacAddr> = (0..free as u32).map(|n| mac(60_000 + n)).collect();
    let mut offered = HashSet::new();
    for chunk in clients.chunks(128) {
        let reqs: Vec<_> = chunk
            .iter()
            .map(|m| req(LeaseOp::Discover { requested: None }, *m))
            .collect();
        let offers = decide_all(&one, &reqs).await;
        let reqs: Vec<_> = chunk
            .iter()
            .zip(&offers)
            .map(|(m, d)| {
                assert_eq!(d.outcome, Outcome::Offer, "{d:?}");
                let a = addr(d).unwrap();
                assert!(!taken.contains(&a) && a != reserved, "{a} is taken");
                assert!(offered.insert(a), "{a} offered twice");
                req(LeaseOp::Select { requested: a }, *m)
            })
            .collect();
        for d in decide_all(&one, &reqs).await {
            assert_eq!(d.outcome, Outcome::Ack, "{d:?}");
        }
    }
    assert!(
        answered(&one) - n > free as u64 / 2,
        "mostly from the view: {} of {free}",
        answered(&one) - n
    );
    let none = decide(&one, LeaseOp::Discover { requested: None }, mac(90_000)).await;
    assert_eq!(
        none.outcome,
        Outcome::Ignore,
        "the pool is used up: {none:?}"
    );
}

/// `app` binds each of `macs` to the free address beside it in `addrs` (a REQUEST for it), all
/// in one batch, so in one statement.
async fn bind_in_one_batch(app: &App, macs: &[MacAddr], addrs: &[Ipv4Addr]) {
    assert!(addrs.len() >= macs.len(), "an address for each client");
    let reqs: Vec<_> = macs
        .iter()
        .zip(addrs)
        .map(|(m, a)| req(LeaseOp::Select { requested: *a }, *m))
        .collect();
    for d in decide_all(app, &reqs).await {
        assert_eq!(d.outcome, Outcome::Ack, "{d:?}");
    }
}

/// One lease batch that writes more rows than one notification lists (200) reaches the other
/// instance's view as several lists, with no reload: a reload reads every MAC the database
/// knows, and a saturated server, most of whose batches bound over 200 leases, reloaded after
/// most of them. Past 1,000 rows in one statement, the views load again.
#[tokio::test]
async fn a_batch_of_many_leases_reaches_the_view_in_lists_and_only_a_huge_one_reloads_it() {
    let (one, two, _db, subnet) = two_instances_with_a_view().await;
    let loads = one.dhcp_view_status(None).2;

    // The other instance binds 300 free addresses of this view's reservoir in one batch.
    let reservoir = fill_at_least(&one, subnet, 300).await;
    let theirs: Vec<MacAddr> = (0..300u32).map(|n| mac(70_000 + n)).collect();
    bind_in_one_batch(&two, &theirs, &reservoir).await;
    for m in &theirs {
        until_known(&one, *m).await;
    }
    let taken: HashSet<Ipv4Addr> = reservoir[..300].iter().copied().collect();
    assert!(
        one.dhcp_view_reservoir(subnet)
            .iter()
            .all(|a| !taken.contains(a)),
        "the bound addresses left the reservoir"
    );
    let (ready, _, after, _) = one.dhcp_view_status(None);
    assert!(ready);
    assert_eq!(after, loads, "no reload for 300 leases in one statement");

    // 1,001 in one statement: the views load again (and know them all).
    let reservoir = fill_at_least(&one, subnet, 1001).await;
    let more: Vec<MacAddr> = (0..1001u32).map(|n| mac(71_000 + n)).collect();
    bind_in_one_batch(&two, &more, &reservoir).await;
    let until = std::time::Instant::now() + VIEW_WAIT;
    while one.dhcp_view_status(None).2 == loads {
        assert!(
            std::time::Instant::now() < until,
            "1,001 leases in one statement did not reload the view"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    until_known(&one, more[1000]).await;
}

/// An offer from the view whose address another instance bound meanwhile: the REQUEST is
/// refused, and the client's next DISCOVER goes to the database, which offers a free address.
#[tokio::test]
async fn an_offer_from_the_view_lost_to_another_instance_is_refused_and_the_client_starts_over() {
    let (one, two, _db, _) = two_instances_with_a_view().await;
    let n = answered(&one);
    let c = mac(70_000);
    let x = addr(&decide(&one, LeaseOp::Discover { requested: None }, c).await).unwrap();
    assert_eq!(answered(&one), n + 1);
    // Another client asks the other instance for that very address (it is free in the table).
    let other = decide(&two, LeaseOp::Select { requested: x }, mac(70_001)).await;
    assert_eq!(other.outcome, Outcome::Ack, "{other:?}");
    let nak = decide(&one, LeaseOp::Select { requested: x }, c).await;
    assert_eq!(nak.outcome, Outcome::Nak, "{nak:?}");
    let o = decide(&one, LeaseOp::Discover { requested: None }, c).await;
    assert_eq!(answered(&one), n + 1, "after a NAK: from the database");
    let y = addr(&o).unwrap();
    assert_ne!(x, y);
    let ack = decide(&one, LeaseOp::Select { requested: y }, c).await;
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
}

/// The view loads again when its listener's connection is lost, and when a subnet changes;
/// changes after the reconnect still reach it.
#[tokio::test]
async fn the_view_loads_again_after_losing_its_listener_and_after_a_subnet_change() {
    let (one, two, db, subnet) = two_instances_with_a_view().await;
    let loads = one.dhcp_view_status(None).2;
    let until_loaded = |after: u64| {
        let one = one.clone();
        async move {
            let until = std::time::Instant::now() + VIEW_WAIT;
            loop {
                let (ready, _, loads, _) = one.dhcp_view_status(None);
                if ready && loads > after {
                    return loads;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "the view did not load again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };

    let killed: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
         where datname = current_database() and query ilike 'listen%dhcp_view%'
           and pid <> pg_backend_pid()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // (both instances' listeners, if the second one has started its own)
    assert!(killed >= 1, "a listener to end");
    let loads = until_loaded(loads).await;
    let m = mac(80_000);
    let had = dora(&two, m).await;
    until_known(&one, m).await;
    assert_eq!(
        addr(&decide(&one, LeaseOp::Discover { requested: None }, m).await),
        Some(had)
    );

    one.update_subnet(
        &admin(),
        subnet,
        SubnetPatch {
            lease_time: Some(900),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    until_loaded(loads).await;
    assert!(one.dhcp_view_fill(subnet, VIEW_WAIT).await);
    let n = answered(&one);
    let o = decide(&one, LeaseOp::Discover { requested: None }, mac(80_001)).await;
    assert_eq!(answered(&one), n + 1);
    assert_eq!(
        o.lease.unwrap().lease_secs,
        Some(900),
        "the subnet as it is now"
    );
}
