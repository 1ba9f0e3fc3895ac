//! High availability on a real Patroni cluster (plinth-testkit's `patroni`: etcd, three
//! PostgreSQL nodes, synchronous mode): two `plinth serve` instances on one provisioning
//! segment (network namespaces joined by a bridge), one database cluster. Both serve DHCP at
//! once without handing an address out twice; a client keeps its address through the other
//! instance; the primary is killed (SIGKILL) in the middle of a DHCP storm and both instances
//! carry on, without a restart, on the promoted replica, with no committed lease lost. And
//! 500 BMC jobs run by two instances through a failover each run exactly once; an instance
//! killed mid-transition hands its jobs to the other; a VM whose instance dies while its
//! inspection ramdisk starts reaches `ready` through the other (a shared boot address moved
//! as keepalived would); an instance cut off from the database answers no new DHCP client. `bench_failover` and `bench_scale_out` are the benchmarks of
//! scripts/bench-ha.sh.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_core::App;
use plinth_testkit::dhcp_clients::{self, Client, Options};
use plinth_testkit::netns::{Lab, Ns, Proc};
use plinth_testkit::patroni::Cluster;
use plinth_types::api::*;

use crate::support::env::{leases_on, subnet_on};
use crate::support::serve::{Serve, serve_dhcp_in_ns};

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `plinth serve` with DHCP on `iface` inside `ns`, on the cluster.
fn plinth(lab: &mut Lab, ns: &Ns, iface: &str, db_url: &str, boot_server: &str) -> Proc {
    plinth_with(
        lab,
        ns,
        iface,
        db_url,
        boot_server,
        "plinth_dhcp=debug,plinth_db=info,info",
        &[],
    )
}

/// [`plinth`] with its log filter and more settings.
fn plinth_with(
    lab: &mut Lab,
    ns: &Ns,
    iface: &str,
    db_url: &str,
    boot_server: &str,
    log: &str,
    more: &[(&str, &str)],
) -> Proc {
    let mut env = vec![("PLINTH_LOG__LEVEL", log)];
    env.extend_from_slice(more);
    // On every address of its namespace: the benchmarks' wrk reaches it across the bridge.
    serve_dhcp_in_ns(lab, ns, db_url, "0.0.0.0:8080", iface, boot_server, &env)
}

/// perfdhcp in `ns` as a relay at `from` against `server`: `[rate, clients, secs]`: `rate`
/// DORAs a second for `secs` seconds, at most `clients` distinct MACs from `base`.
fn perfdhcp(lab: &mut Lab, ns: &Ns, from: &str, server: &str, base: &str, load: [u32; 3]) -> Proc {
    let [rate, clients, secs] = load;
    let (rate, clients, secs) = (rate.to_string(), clients.to_string(), secs.to_string());
    let args = ["-r", &rate, "-R", &clients, "-p", &secs, "-b", base, server];
    let cmd = dhcp_clients::perfdhcp_command(lab, from, &args);
    lab.spawn_named(ns, "perfdhcp", cmd).unwrap()
}

/// Two instances' namespaces and a client's on one bridge: `<net>.0.2` (`srv1`, its end `a`),
/// `<net>.0.3` (`srv2`, `b`), `<net>.0.9` and `.10` (`cli`, `c`: perfdhcp relays from them),
/// all in `<net>.0.0/16`, the subnet [`subnet_for`] makes.
struct Segment {
    srv1: Ns,
    a: String,
    srv2: Ns,
    b: String,
    cli: Ns,
    c: String,
}

fn segment(lab: &mut Lab, rt: &tokio::runtime::Runtime, app: &App, net: &str) -> Segment {
    subnet_for(rt, app, net);
    let sw = lab.namespace("sw").unwrap();
    let srv1 = lab.namespace("srv1").unwrap();
    let srv2 = lab.namespace("srv2").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (a, sw_a) = lab.link(&srv1, &sw).unwrap();
    let (b, sw_b) = lab.link(&srv2, &sw).unwrap();
    let (c, sw_c) = lab.link(&cli, &sw).unwrap();
    lab.bridge(&sw, &[&sw_a, &sw_b, &sw_c]).unwrap();
    lab.addr(&srv1, &a, &format!("{net}.0.2/16")).unwrap();
    lab.addr(&srv2, &b, &format!("{net}.0.3/16")).unwrap();
    lab.addr(&cli, &c, &format!("{net}.0.9/16")).unwrap();
    lab.addr(&cli, &c, &format!("{net}.0.10/16")).unwrap();
    Segment {
        srv1,
        a,
        srv2,
        b,
        cli,
        c,
    }
}

/// A Patroni cluster, and the test's own way into it: a runtime, a pool through the
/// multi-host URL (it follows failovers like plinth's), the schema, and plinth-core's `App`
/// with the BMC key `key` (the instances get it too).
struct Ha {
    cluster: Cluster,
    key: String,
    rt: tokio::runtime::Runtime,
    pool: plinth_db::PgPool,
    app: App,
}

/// `None` (the test says it is skipped) when not root: PostgreSQL runs as the postgres user
/// and the labs need network namespaces. The test command runs as root.
fn ha() -> Option<Ha> {
    if !is_root() {
        eprintln!("SKIPPED: needs root (network namespaces; PostgreSQL as the postgres user)");
        return None;
    }
    let cluster = Cluster::start(3).unwrap();
    let key = plinth_core::BmcKey::generate_base64();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(plinth_db::connect(&cluster.url(), 8)).unwrap();
    rt.block_on(plinth_db::migrate(&pool)).unwrap();
    let app = App::new(
        pool.clone(),
        plinth_core::BmcKey::from_base64(&key).unwrap(),
    );
    Some(Ha {
        cluster,
        key,
        rt,
        pool,
        app,
    })
}

/// The subnet `<net>.0.0/16`, addresses `<net>.1.0` to `<net>.250.255` (64,000), any relay
/// inside it (perfdhcp relays from the client's addresses).
fn subnet_for(rt: &tokio::runtime::Runtime, app: &App, net: &str) {
    subnet_on(
        rt,
        app,
        &format!("{net}.0.0/16"),
        &format!("{net}.1.0"),
        &format!("{net}.250.255"),
        Some(&format!("{net}.0.1")),
        &["any"],
    );
}

/// Bound leases: no client holds two, no address is held twice.
fn check_unique(leases: &[Lease]) -> Vec<&Lease> {
    let bound: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .collect();
    let macs: HashSet<_> = bound.iter().map(|l| l.mac).collect();
    let addrs: HashSet<_> = bound.iter().map(|l| l.address).collect();
    assert_eq!(macs.len(), bound.len(), "one lease per client");
    assert_eq!(addrs.len(), bound.len(), "one client per address");
    bound
}

#[test]
fn two_instances_share_a_patroni_cluster_and_ride_out_its_primary_dying() {
    let Some(Ha {
        cluster,
        key: _,
        rt,
        pool,
        app,
    }) = ha()
    else {
        return;
    };

    let mut lab = Lab::new().unwrap();
    let Segment {
        srv1,
        a,
        srv2,
        b,
        cli,
        c,
    } = segment(&mut lab, &rt, &app, "10.68");
    let url = cluster.socket_url();
    let mut p1 = plinth(&mut lab, &srv1, &a, &url, "10.68.0.2");
    let mut p2 = plinth(&mut lab, &srv2, &b, &url, "10.68.0.3");

    // 1. Both instances at once, 100 clients each: distinct addresses, both serve.
    let runs = [
        perfdhcp(
            &mut lab,
            &cli,
            "10.68.0.9",
            "10.68.0.2",
            "mac=02:00:00:01:00:00",
            [50, 100, 4],
        ),
        perfdhcp(
            &mut lab,
            &cli,
            "10.68.0.10",
            "10.68.0.3",
            "mac=02:00:00:02:00:00",
            [50, 100, 4],
        ),
    ];
    for run in &runs {
        run.wait_timeout(Duration::from_secs(30))
            .expect("perfdhcp finished");
        let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
        assert_eq!(r.request_ack.non_unique_addresses, 0, "{}", r.output);
        assert!(r.request_ack.received > 0, "{}", r.output);
    }
    let before = leases_on(&rt, &app);
    let bound = check_unique(&before);
    assert!(
        bound.len() >= 150,
        "most of the 200 clients are bound: {}",
        bound.len()
    );

    // 2. A client keeps its address through the other instance: it gets a lease from one,
    // that one dies, and its INIT-REBOOT request (dhclient started again on its lease file)
    // is answered by the other with the same address.
    let opts = Options {
        mac: Some("52:54:00:68:00:01".into()),
        ..Default::default()
    };
    let first = dhcp_clients::obtain_with(&mut lab, &cli, &c, Client::Dhclient, &opts).unwrap();
    let (gone, other) = if first.server_id == Some("10.68.0.2".parse().unwrap()) {
        (&mut p1, "10.68.0.3")
    } else {
        (&mut p2, "10.68.0.2")
    };
    gone.kill();
    let again = dhcp_clients::renew(&mut lab, &cli, &c, Client::Dhclient, &first).unwrap();
    assert_eq!(
        again.server_id,
        Some(other.parse().unwrap()),
        "the other instance answered"
    );
    assert_eq!(again.ip, first.ip, "the client keeps its address");
    let (mut p1, mut p2) = if other == "10.68.0.3" {
        (plinth(&mut lab, &srv1, &a, &url, "10.68.0.2"), p2)
    } else {
        (p1, plinth(&mut lab, &srv2, &b, &url, "10.68.0.3"))
    };

    // 3. A storm against both; the primary dies in the middle of it.
    let storm = [
        perfdhcp(
            &mut lab,
            &cli,
            "10.68.0.9",
            "10.68.0.2",
            "mac=02:00:00:03:00:00",
            [100, 1000, 25],
        ),
        perfdhcp(
            &mut lab,
            &cli,
            "10.68.0.10",
            "10.68.0.3",
            "mac=02:00:00:04:00:00",
            [100, 1000, 25],
        ),
    ];
    std::thread::sleep(Duration::from_secs(5));
    let old = cluster.kill_primary().unwrap();
    let killed_at = Instant::now();
    let new = cluster
        .wait_for_primary(old, Duration::from_secs(60))
        .unwrap();
    eprintln!(
        "node {new} is the primary {:?} after node {old} died",
        killed_at.elapsed()
    );
    for run in &storm {
        run.wait_timeout(Duration::from_secs(60))
            .expect("perfdhcp finished");
        let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
        assert_eq!(r.request_ack.non_unique_addresses, 0, "{}", r.output);
    }
    assert!(
        p1.is_running() && p2.is_running(),
        "no instance needed a restart"
    );
    for p in [&p1, &p2] {
        assert!(
            p.log_text().contains("the database primary moved"),
            "each instance followed the failover:\n{}",
            p.log_text()
        );
    }

    // Nothing committed before is lost; nothing is held twice.
    let after = leases_on(&rt, &app);
    check_unique(&after);
    let held: HashSet<_> = after
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .map(|l| (l.mac, l.address))
        .collect();
    for l in &bound {
        assert!(
            held.contains(&(l.mac, l.address)),
            "lease lost in the failover: {l:?}"
        );
    }

    // Both instances hand out addresses on the new primary: a short run against each.
    for (from, server, base) in [
        ("10.68.0.9", "10.68.0.2", "mac=02:00:00:05:00:00"),
        ("10.68.0.10", "10.68.0.3", "mac=02:00:00:06:00:00"),
    ] {
        let run = perfdhcp(&mut lab, &cli, from, server, base, [20, 20, 3]);
        run.wait_timeout(Duration::from_secs(30))
            .expect("perfdhcp finished");
        let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
        assert!(
            r.request_ack.received > 0,
            "{server} serves after the failover: {}",
            r.output
        );
    }
    check_unique(&leases_on(&rt, &app));
    p1.kill();
    p2.kill();
    rt.block_on(pool.close());
}

/// 500 queued BMC jobs on 25 Redfish BMCs, run by two instances; the primary is killed while
/// they run. Every job succeeds, and every BMC received each of its power actions exactly
/// once: no job lost, none run twice (an outcome whose commit was cut off is recorded again,
/// or found already recorded; a claim cut off comes back when its lease runs out).
#[test]
fn bmc_jobs_run_exactly_once_through_a_failover() {
    use plinth_core::Principal;
    use plinth_core::jobs::JobQuery;
    use plinth_testkit::redfish::RedfishEmulator;

    const MACHINES: usize = 25;
    const JOBS_EACH: usize = 20;
    const RESET: &str = "POST reset";
    let Some(Ha {
        cluster,
        key,
        rt,
        pool,
        app,
    }) = ha()
    else {
        return;
    };
    let who = Principal::system();

    let bmcs: Vec<RedfishEmulator> = (0..MACHINES)
        .map(|_| {
            rt.block_on(RedfishEmulator::start("admin", "ha-secret"))
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for (n, bmc) in bmcs.iter().enumerate() {
        // Slow enough that the jobs are still running when the primary dies.
        bmc.knobs(|k| k.delay = Duration::from_millis(100));
        let m = rt
            .block_on(app.enroll_machine(
                &who,
                MachineCreate {
                    hostname: Some(format!("ha-{n}")),
                    rack: None,
                    rack_unit: None,
                    size_u: None,
                    pool: None,
                    tags: None,
                    arch: None,
                    nics: vec![NicSpec {
                        mac: format!("52:54:00:69:00:{n:02x}").parse().unwrap(),
                        ipv4: None,
                        pxe: None,
                    }],
                    bmc: Some(BmcSpec {
                        protocol: BmcProtocol::Redfish,
                        address: bmc.url(),
                        username: "admin".into(),
                        password: "ha-secret".into(),
                        verify_tls: None,
                        plain_http: Some(true),
                    }),
                },
            ))
            .unwrap();
        ids.push(m.id);
    }
    // On, off, on, off ...: each job changes the power state, so each sends one reset.
    let mut queued = Vec::new();
    for id in &ids {
        for k in 0..JOBS_EACH {
            let req = PowerRequest {
                action: if k % 2 == 0 {
                    PowerOp::On
                } else {
                    PowerOp::Off
                },
                force: (k % 2 == 1).then_some(true),
            };
            queued.push(rt.block_on(app.request_power(&who, *id, req)).unwrap().id);
        }
    }

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A job's lease must outlast a failover (about 9 s here): a worker whose renewal or
    // outcome waits out the failover then still owns its job (plinth's default is 30 s).
    let env = [
        ("PLINTH_BMC__SECRET_KEY", key.as_str()),
        // Fewer slots than BMCs on each: neither instance can take all the work.
        ("PLINTH_BMC__CONCURRENCY", "12"),
        ("NO_COLOR", "1"),
        ("PLINTH_BMC__LEASE_SECS", "20"),
        ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
        ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
        ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
        ("PLINTH_LOG__LEVEL", "plinth_core=info,plinth_db=info,warn"),
    ];
    let url = cluster.url();
    let mut serves: Vec<Serve> = dirs
        .iter()
        .map(|d| Serve::start_with(d.path(), Some(&url), &env))
        .collect();
    // Power jobs in `state`; the test's own pool follows the failover too, and waits (or
    // fails) while there is no primary: asked again until it answers.
    let power_jobs = |state: JobState| -> usize {
        loop {
            let page = rt.block_on(app.jobs(
                &who,
                JobQuery {
                    machine: None,
                    state: Some(state),
                    limit: Some(1000),
                    cursor: None,
                },
            ));
            match page {
                Ok(page) => return page.jobs.iter().filter(|j| j.kind == "power").count(),
                Err(e) => {
                    eprintln!("listing jobs: {e:?}; again");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while power_jobs(JobState::Succeeded) < 50 {
        assert!(Instant::now() < deadline, "the jobs never got going");
        std::thread::sleep(Duration::from_millis(100));
    }
    let done_at_kill = power_jobs(JobState::Succeeded);
    let old = cluster.kill_primary().unwrap();
    cluster
        .wait_for_primary(old, Duration::from_secs(60))
        .unwrap();
    assert!(
        done_at_kill < queued.len(),
        "the jobs were still running when the primary died"
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let finished = [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
            .into_iter()
            .map(&power_jobs)
            .sum::<usize>();
        if finished == queued.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{finished} of {} jobs finished:\n{}",
            queued.len(),
            serves
                .iter()
                .map(Serve::log_text)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        power_jobs(JobState::Succeeded),
        queued.len(),
        "every job succeeded"
    );
    for (n, bmc) in bmcs.iter().enumerate() {
        let resets = bmc
            .requests()
            .iter()
            .filter(|r| r.starts_with(RESET))
            .count();
        assert_eq!(resets, JOBS_EACH, "BMC {n} got each power action once");
    }
    for s in &serves {
        assert!(
            s.log_text().contains("job succeeded"),
            "both instances ran jobs:\n{}",
            s.log_text()
        );
    }
    // The figures of docs/benchmarks.md ("Failover on Patroni"; scripts/bench-ha.sh runs this
    // test too): the longest time without a job finishing, and the jobs run more than once.
    let jobs = rt
        .block_on(app.jobs(
            &who,
            JobQuery {
                machine: None,
                state: Some(JobState::Succeeded),
                limit: Some(1000),
                cursor: None,
            },
        ))
        .unwrap()
        .jobs;
    let mut finished: Vec<_> = jobs
        .iter()
        .filter(|j| j.kind == "power")
        .filter_map(|j| j.finished_at)
        .collect();
    finished.sort();
    let gap = finished
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .max()
        .unwrap_or_default();
    let resets: usize = bmcs
        .iter()
        .map(|b| b.requests().iter().filter(|r| r.starts_with(RESET)).count())
        .sum();
    println!(
        "BENCH jobs through failover: {} queued, {done_at_kill} done when the primary died, {} succeeded, {} lost, {} BMC actions sent twice, {} jobs with more than one attempt; {:.1} s without a job finishing",
        queued.len(),
        finished.len(),
        queued.len() - finished.len(),
        resets - queued.len(),
        jobs.iter().filter(|j| j.attempts > 1).count(),
        gap as f64 / 1000.0
    );
    for s in &mut serves {
        s.stop();
    }
    rt.block_on(pool.close());
}

/// An instance cut off from the database (its connections killed, its way to the database
/// gone) hands out no address it cannot record: new clients get no answer from it, and no
/// lease; the other instance serves them. Given its database back, it serves again.
#[test]
fn a_partitioned_instance_answers_no_new_client() {
    let Some(Ha {
        cluster,
        key: _,
        rt,
        pool,
        app,
    }) = ha()
    else {
        return;
    };
    let mut lab = Lab::new().unwrap();
    let Segment {
        srv1,
        a,
        srv2,
        b,
        cli,
        ..
    } = segment(&mut lab, &rt, &app, "10.69");

    // Instance 1 reaches the nodes' sockets through links in a folder of its own: removing
    // them (and ending its connections) cuts it off, as a network partition would.
    let links = lab.path("db-links");
    std::fs::create_dir_all(&links).unwrap();
    let ports: Vec<String> = (0..3).map(|i| cluster.pg_port(i).to_string()).collect();
    let connect = || {
        for (i, port) in ports.iter().enumerate() {
            std::os::unix::fs::symlink(cluster.socket(i), links.join(format!(".s.PGSQL.{port}")))
                .unwrap();
        }
    };
    connect();
    let dir = links.display().to_string();
    let url1 = format!(
        "postgres://plinth@localhost/plinth?host={dir},{dir},{dir}&port={}&target_session_attrs=read-write&application_name=plinth-cut",
        ports.join(",")
    );
    let p1 = plinth(&mut lab, &srv1, &a, &url1, "10.69.0.2");
    let p2 = plinth(&mut lab, &srv2, &b, &cluster.socket_url(), "10.69.0.3");
    let acked = |lab: &mut Lab, from: &str, server: &str, base: &str| {
        let run = perfdhcp(lab, &cli, from, server, base, [20, 20, 3]);
        run.wait_timeout(Duration::from_secs(60))
            .expect("perfdhcp finished");
        dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap()
    };
    let r = acked(&mut lab, "10.69.0.9", "10.69.0.2", "mac=02:00:00:07:00:00");
    assert!(
        r.request_ack.received > 0,
        "instance 1 serves: {}",
        r.output
    );

    // The cut.
    for port in &ports {
        std::fs::remove_file(links.join(format!(".s.PGSQL.{port}"))).unwrap();
    }
    let primary = cluster.primary().unwrap();
    cluster
        .psql(
            primary,
            "postgres",
            &["select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = 'plinth-cut'"],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p1.log_text().contains("no database primary reachable") {
        assert!(
            Instant::now() < deadline,
            "instance 1 never noticed the cut:\n{}",
            p1.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let cut = acked(&mut lab, "10.69.0.9", "10.69.0.2", "mac=02:00:00:08:00:00");
    assert_eq!(
        (cut.discover_offer.received, cut.request_ack.received),
        (0, 0),
        "a cut-off instance answers nothing: {}",
        cut.output
    );
    let other = acked(&mut lab, "10.69.0.10", "10.69.0.3", "mac=02:00:00:09:00:00");
    assert!(
        other.request_ack.received > 0,
        "the other instance serves: {}",
        other.output
    );
    let leases = leases_on(&rt, &app);
    check_unique(&leases);
    assert!(
        !leases.iter().any(|l| l
            .mac
            .is_some_and(|m| m.to_string().starts_with("02:00:00:08"))),
        "no lease for the clients the cut-off instance heard"
    );

    // Healed: it serves again, without a restart.
    connect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut base = 0x10;
    loop {
        let r = acked(
            &mut lab,
            "10.69.0.9",
            "10.69.0.2",
            &format!("mac=02:00:00:{base:02x}:00:00"),
        );
        if r.request_ack.received > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance 1 never came back:\n{}",
            p1.log_text()
        );
        base += 1;
    }
    assert!(p1.is_running() && p2.is_running());
    rt.block_on(pool.close());
}

/// The failover benchmark (scripts/bench-ha.sh). Two instances under a steady DHCP load
/// (perfdhcp, `RATE` DORA/s against each, a fresh client each time) and `/healthz` probes (a
/// database round trip, every 100 ms on each instance); the primary is killed (SIGKILL) after
/// `KILL_AT` seconds. From the committed leases' bind times and the probes' answers: seconds
/// without a lease committed and without an API answer, and the DHCP rate before, while and
/// after the primary is replaced. Prints `BENCH` lines.
#[test]
#[ignore = "benchmark: run by scripts/bench-ha.sh"]
fn bench_failover() {
    const RATE: u32 = 150;
    const SECS: u32 = 45;
    const KILL_AT: f64 = 15.0;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let Some(Ha {
        cluster,
        key: _,
        rt,
        pool,
        app,
    }) = ha()
    else {
        return;
    };
    let mut lab = Lab::new().unwrap();
    let Segment {
        srv1,
        a,
        srv2,
        b,
        cli,
        ..
    } = segment(&mut lab, &rt, &app, "10.70");
    let url = cluster.socket_url();
    let mut p1 = plinth_with(&mut lab, &srv1, &a, &url, "10.70.0.2", "info", &[]);
    let mut p2 = plinth_with(&mut lab, &srv2, &b, &url, "10.70.0.3", "info", &[]);
    let probe = |lab: &mut Lab, ns: &Ns| {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "while :; do t=$(date +%s.%N); \
             c=$(curl -s -o /dev/null -m 1 -w '%{http_code}' http://127.0.0.1:8080/healthz); \
             echo \"$t $c\"; sleep 0.1; done",
        ]);
        lab.spawn_named(ns, "probe", cmd).unwrap()
    };
    let mut probes = [probe(&mut lab, &srv1), probe(&mut lab, &srv2)];
    let t0 = now();
    let runs = [
        perfdhcp(
            &mut lab,
            &cli,
            "10.70.0.9",
            "10.70.0.2",
            "mac=02:00:00:0a:00:00",
            [RATE, RATE * SECS, SECS],
        ),
        perfdhcp(
            &mut lab,
            &cli,
            "10.70.0.10",
            "10.70.0.3",
            "mac=02:00:00:0b:00:00",
            [RATE, RATE * SECS, SECS],
        ),
    ];
    std::thread::sleep(Duration::from_secs_f64(KILL_AT));
    let killed_at = now();
    let old = cluster.kill_primary().unwrap();
    cluster
        .wait_for_primary(old, Duration::from_secs(60))
        .unwrap();
    let promoted_at = now();
    let (mut acks, mut non_unique) = (0, 0);
    for run in &runs {
        run.wait_timeout(Duration::from_secs(SECS as u64 + 60))
            .expect("perfdhcp finished");
        let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
        acks += r.request_ack.received;
        non_unique += r.request_ack.non_unique_addresses;
    }
    let end = now();
    for p in &mut probes {
        p.kill();
    }

    // Bind times of the load's leases (a lease's expiry is its bind time plus the subnet's 600 s).
    let leases = leases_on(&rt, &app);
    check_unique(&leases);
    let mut binds: Vec<f64> = leases
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .filter(|l| l.mac.is_some_and(|m| [0x0a, 0x0b].contains(&m.octets()[3])))
        .map(|l| l.expires_at.timestamp_micros() as f64 / 1e6 - 600.0)
        .collect();
    binds.sort_by(f64::total_cmp);
    // The longest stretch around the kill with nothing committed, and when it ended.
    let gap = |times: &[f64]| -> (f64, f64) {
        times
            .windows(2)
            .filter(|w| w[1] >= killed_at && w[0] <= killed_at + 60.0)
            .map(|w| (w[1] - w[0], w[1]))
            .fold(
                (0.0, killed_at),
                |best, g| if g.0 > best.0 { g } else { best },
            )
    };
    let (dhcp_gap, dhcp_back) = gap(&binds);
    let rate = |from: f64, to: f64| {
        binds.iter().filter(|t| **t >= from && **t < to).count() as f64 / (to - from).max(0.001)
    };
    println!(
        "BENCH failover: primary killed {:.1} s into the load, a new primary took writes {:.1} s later",
        killed_at - t0,
        promoted_at - killed_at
    );
    println!(
        "BENCH dhcp: {:.1} s without a lease committed; {:.0} leases/s before, {:.0} while the primary was replaced, {:.0} after (offered {} DORA/s); {} ACKs, {} bound, {} addresses given twice",
        dhcp_gap,
        rate(t0 + 2.0, killed_at),
        rate(killed_at, dhcp_back),
        rate(dhcp_back, end - 2.0),
        2 * RATE,
        acks,
        binds.len(),
        non_unique
    );
    for (name, p) in [("plinth 1", &probes[0]), ("plinth 2", &probes[1])] {
        let ok: Vec<f64> = p
            .log_text()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, code)| *code == "200")
            .filter_map(|(t, _)| t.parse().ok())
            .collect();
        let (api_gap, _) = gap(&ok);
        println!("BENCH api {name}: {api_gap:.1} s without an answer from /healthz");
    }
    assert_eq!(non_unique, 0);
    p1.kill();
    p2.kill();
    rt.block_on(pool.close());
}

/// CPU seconds a process has used so far (user and system), from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The whole machine's busy CPU seconds so far (every state but idle and iowait), from /proc.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (cpu.iter().sum::<f64>() - cpu[3] - cpu[4]) / 100.0
}

/// The scale-out benchmark (scripts/bench-ha.sh): 1, 2 and 3 instances on the one Patroni
/// cluster, each offered `OFFER` DORA/s by its own perfdhcp for `SECS` seconds. Prints the
/// DORAs per second they sustained together, the CPU each instance used per DORA, and the
/// whole machine's (PostgreSQL, perfdhcp and all) per DORA. On this 2-core machine the
/// ceiling is shared, so CPU per DORA is the figure that says how far more machines go.
#[test]
#[ignore = "benchmark: run by scripts/bench-ha.sh"]
fn bench_scale_out() {
    const OFFER: u32 = 2000;
    const SECS: u32 = 10;
    let Some(Ha {
        cluster,
        key: _,
        rt,
        pool,
        app,
    }) = ha()
    else {
        return;
    };
    let mut lab = Lab::new().unwrap();
    let sw = lab.namespace("sw").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (c, sw_c) = lab.link(&cli, &sw).unwrap();
    let mut members = vec![sw_c];
    let mut servers = Vec::new();
    for i in 1..=3 {
        let ns = lab.namespace(&format!("srv{i}")).unwrap();
        let (end, sw_end) = lab.link(&ns, &sw).unwrap();
        lab.addr(&ns, &end, &format!("10.71.0.{}/16", i + 1))
            .unwrap();
        lab.addr(&cli, &c, &format!("10.71.0.{}/16", i + 10))
            .unwrap();
        members.push(sw_end);
        servers.push((ns, end));
    }
    lab.bridge(&sw, &members.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    subnet_for(&rt, &app, "10.71");
    // 2,000 machines for the script endpoint: even ones ready (a local-boot script), odd ones
    // inspecting (the ramdisk's script, with a fresh agent token each time).
    let primary = cluster.primary().unwrap();
    cluster
        .psql(
            primary,
            "plinth",
            &["with m as (insert into machines (hostname, state) \
               select 'bench-' || i, case when i % 2 = 0 then 'ready' else 'inspecting' end \
               from generate_series(1, 2000) i returning id, hostname) \
               insert into nics (machine_id, mac, pxe) \
               select id, ('52:54:00:' || lpad(to_hex((n >> 16) & 255), 2, '0') || ':' \
               || lpad(to_hex((n >> 8) & 255), 2, '0') || ':' || lpad(to_hex(n & 255), 2, '0'))::macaddr, true \
               from (select id, substr(hostname, 7)::int as n from m) x",
              "analyze"],
        )
        .unwrap();
    let lua = lab.path("ipxe.lua");
    std::fs::write(
        &lua,
        r#"math.randomseed(os.time())
request = function()
  local n = math.random(1, 2000)
  local mac = string.format("52:54:00:%02x:%02x:%02x", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("GET", "/boot/ipxe?mac=" .. mac .. "&platform=pcbios&buildarch=x86_64")
end
response = function(status, headers, body)
  if status ~= 200 then io.write("answered " .. status .. ": " .. body .. "\n") end
end
"#,
    )
    .unwrap();
    let url = cluster.socket_url();
    let mut round = 0u8;
    for n in 1..=3usize {
        let mut instances: Vec<Proc> = servers[..n]
            .iter()
            .enumerate()
            .map(|(i, (ns, end))| {
                // No cap on new clients a second (the flood guard's default is 1,000).
                plinth_with(
                    &mut lab,
                    ns,
                    end,
                    &url,
                    &format!("10.71.0.{}", i + 2),
                    "plinth_dhcp=info,warn",
                    &[("PLINTH_DHCP__NEW_CLIENT_RATE", "0")],
                )
            })
            .collect();
        let cpu0: Vec<f64> = instances.iter().map(|p| cpu_secs(p.pid)).collect();
        let busy0 = machine_busy_secs();
        let runs: Vec<Proc> = (0..n)
            .map(|i| {
                round += 1;
                perfdhcp(
                    &mut lab,
                    &cli,
                    &format!("10.71.0.{}", i + 11),
                    &format!("10.71.0.{}", i + 2),
                    &format!("mac=02:00:{round:02x}:00:00:00"),
                    [OFFER, OFFER * SECS, SECS],
                )
            })
            .collect();
        let mut doras = 0.0;
        let mut served = Vec::new();
        for run in &runs {
            run.wait_timeout(Duration::from_secs(SECS as u64 + 60))
                .expect("perfdhcp finished");
            let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
            assert_eq!(r.request_ack.non_unique_addresses, 0);
            doras += r.rate.unwrap_or(0.0);
            served.push(r.request_ack.received as f64);
        }
        let busy = machine_busy_secs() - busy0;
        let per_instance: Vec<String> = instances
            .iter()
            .zip(&cpu0)
            .zip(&served)
            .map(|((p, c0), acks)| {
                format!("{:.0} µs", (cpu_secs(p.pid) - c0) / acks.max(1.0) * 1e6)
            })
            .collect();
        let total: f64 = served.iter().sum();
        println!(
            "BENCH scale-out {n} instance(s): {doras:.0} DORA/s together (offered {} DORA/s); CPU per DORA: plinth {}, the whole machine {:.0} µs",
            OFFER as usize * n,
            per_instance.join(" / "),
            busy / total.max(1.0) * 1e6
        );

        // The iPXE script endpoint: a wrk against each instance at once, 16 connections each.
        let cpu0: Vec<f64> = instances.iter().map(|p| cpu_secs(p.pid)).collect();
        let wrks: Vec<Proc> = (0..n)
            .map(|i| {
                let mut cmd = Command::new("wrk");
                cmd.args(["-t1", "-c16", "-d10s", "-s"])
                    .arg(&lua)
                    .arg(format!("http://10.71.0.{}:8080", i + 2));
                lab.spawn_named(&cli, "wrk", cmd).unwrap()
            })
            .collect();
        let mut scripts = Vec::new();
        for w in &wrks {
            w.wait_timeout(Duration::from_secs(60))
                .expect("wrk finished");
            let out = w.log_text();
            assert!(!out.contains("Non-2xx"), "{out}");
            let rps: f64 = out
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .unwrap_or_else(|| panic!("{out}"))
                .trim()
                .parse()
                .unwrap();
            scripts.push(rps);
        }
        let per_script: Vec<String> = instances
            .iter()
            .zip(&cpu0)
            .zip(&scripts)
            .map(|((p, c0), rps)| {
                format!(
                    "{:.0} µs",
                    (cpu_secs(p.pid) - c0) / (rps * 10.0).max(1.0) * 1e6
                )
            })
            .collect();
        println!(
            "BENCH scale-out {n} instance(s): {:.0} iPXE scripts/s together; CPU per script: plinth {}",
            scripts.iter().sum::<f64>(),
            per_script.join(" / ")
        );
        for p in &mut instances {
            p.kill();
        }
        // The next round starts with the pool empty again (60,000 addresses, 20,000 clients
        // per perfdhcp run).
        let primary = cluster.primary().unwrap();
        cluster
            .psql(
                primary,
                "plinth",
                &["update leases set state = 'free', expires_at = null where state in ('offered', 'bound')"],
            )
            .unwrap();
    }
    rt.block_on(pool.close());
}

/// An instance dies (SIGKILL) in the middle of a lifecycle transition's BMC jobs, its call to
/// the BMC unanswered: the other instance takes the job over once its lease runs out and
/// finishes the chain (boot from the network once, power on), so the machine's inspection
/// goes on. The call the dead instance made is made again: at least once, as docs/ha.md says.
#[test]
fn an_instance_killed_mid_transition_hands_its_jobs_to_the_other() {
    use plinth_core::Principal;
    use plinth_core::jobs::JobQuery;
    use plinth_core::lifecycle::Action;
    use plinth_testkit::redfish::RedfishEmulator;
    use plinth_types::Verb;

    let Some(Ha {
        cluster,
        key,
        rt,
        pool,
        app,
    }) = ha()
    else {
        return;
    };
    let who = Principal::system();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", "ha-secret"))
        .unwrap();
    let id = rt
        .block_on(app.enroll_machine(
            &who,
            MachineCreate {
                hostname: Some("ha-inspect".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: Some(Arch::X86_64),
                nics: vec![NicSpec {
                    mac: "52:54:00:6a:00:01".parse().unwrap(),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: Some(BmcSpec {
                    protocol: BmcProtocol::Redfish,
                    address: bmc.url(),
                    username: "admin".into(),
                    password: "ha-secret".into(),
                    verify_tls: None,
                    plain_http: Some(true),
                }),
            },
        ))
        .unwrap()
        .id;
    let jobs = || {
        rt.block_on(app.jobs(
            &who,
            JobQuery {
                machine: Some(id),
                state: None,
                limit: Some(100),
                cursor: None,
            },
        ))
        .map(|p| p.jobs)
        .unwrap_or_default()
    };
    let finished = |j: &Job| {
        matches!(
            j.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    };
    let env = [
        ("PLINTH_BMC__SECRET_KEY", key.as_str()),
        ("PLINTH_BMC__LEASE_SECS", "3"),
        ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
        ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
        ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
        ("NO_COLOR", "1"),
    ];
    let url = cluster.url();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Instance 1 alone: it checks the BMC, then takes the inspection's first job, whose call
    // the BMC never answers.
    let mut first = Serve::start_with(dirs[0].path(), Some(&url), &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !jobs().iter().all(finished) || jobs().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the BMC check never finished: {:#?}",
            jobs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    bmc.knobs(|k| k.delay = Duration::from_secs(3600));
    rt.block_on(app.act(
        &who,
        id,
        Action {
            verb: Verb::Inspect,
            expected_version: None,
            reason: None,
        },
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !jobs().iter().any(|j| j.state == JobState::Running) {
        assert!(Instant::now() < deadline, "no job started: {:#?}", jobs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let chain: Vec<Job> = jobs().into_iter().filter(|j| !finished(j)).collect();
    assert!(
        chain.len() >= 2,
        "the inspection queued its chain: {chain:#?}"
    );

    // Instance 2 starts; instance 1 dies mid-call; the BMC answers again.
    let second = Serve::start_with(dirs[1].path(), Some(&url), &env);
    first.kill();
    bmc.knobs(|k| k.delay = Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !jobs().iter().all(finished) {
        assert!(
            Instant::now() < deadline,
            "the other instance never finished the chain: {:#?}\n{}",
            jobs(),
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let done = jobs();
    for j in done.iter().filter(|j| chain.iter().any(|c| c.id == j.id)) {
        assert_eq!(j.state, JobState::Succeeded, "{j:#?}");
    }
    assert!(
        done.iter().any(|j| j.attempts == 2),
        "the interrupted job ran a second time: {done:#?}"
    );
    assert!(
        second.log_text().contains("job succeeded"),
        "instance 2 ran them:\n{}",
        second.log_text()
    );
    // The chain: boot from the network once (consumed by the power-on that follows), power on.
    let kinds: Vec<&str> = chain.iter().map(|j| j.kind.as_str()).collect();
    assert!(
        kinds.contains(&"boot_device") && kinds.contains(&"power"),
        "{kinds:?}"
    );
    assert_eq!(bmc.power(), "On");
    let m = rt.block_on(app.get_machine(&who, id)).unwrap();
    assert_eq!(m.state, plinth_types::MachineState::Inspecting);
    rt.block_on(pool.close());
}

impl crate::support::rack::Drives for Ha {
    fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
    fn app(&self) -> &App {
        &self.app
    }
}

/// A VM inspected through two instances that share one address for booting machines (a
/// virtual address, as keepalived would move it): instance 1 holds it and serves the VM's
/// script, kernel and initrd; it dies (SIGKILL) while the ramdisk starts; the address moves
/// to instance 2, which answers the ramdisk's DHCP, takes the agent's report and powers the
/// VM off: the machine reaches `ready` with its facts.
#[test]
fn a_vm_being_inspected_reaches_ready_when_its_instance_dies() {
    use crate::support::lab::images_for;
    use crate::support::machine;
    use crate::support::rack::{
        PASSWORD, VmDef, act, enroll, events, lifecycle_settings, machine, until_console,
        vbmc_listening, wait_state,
    };
    use plinth_testkit::rack::{BmcProtocol, ServeSpec, start_plinth};
    use plinth_testkit::vm::{Firmware, Nic};
    use plinth_types::{MachineState, Verb};

    let _vm = machine::vm();
    let Some(h) = ha() else {
        return;
    };
    const VIP: &str = "10.88.0.1";
    let mut lab = Lab::new().unwrap();
    subnet_on(
        &h.rt,
        &h.app,
        "10.88.0.0/24",
        "10.88.0.100",
        "10.88.0.200",
        None,
        &[],
    );
    // The rack's bridge joins the VM's tap, both instances and the BMC's network.
    let srv1 = lab.namespace("srv1").unwrap();
    let srv2 = lab.namespace("srv2").unwrap();
    let bmcs = lab.namespace("bmcs").unwrap();
    let rack = lab.namespace("rack").unwrap();
    let (a, rack_a) = lab.link(&srv1, &rack).unwrap();
    let (b, rack_b) = lab.link(&srv2, &rack).unwrap();
    let (m, rack_m) = lab.link(&bmcs, &rack).unwrap();
    let tap = lab.tap(&rack).unwrap();
    lab.bridge(&rack, &[&rack_a, &rack_b, &rack_m, &tap])
        .unwrap();
    lab.addr(&srv1, &a, "10.88.0.2/24").unwrap();
    lab.addr(&srv1, &a, &format!("{VIP}/24")).unwrap();
    lab.addr(&srv2, &b, "10.88.0.3/24").unwrap();
    lab.addr(&bmcs, &m, "10.88.0.5/24").unwrap();
    // Instance 2 listens for TFTP on the address before it holds it, as behind keepalived.
    lab.sysctl(&srv2, "net.ipv4.ip_nonlocal_bind", "1").unwrap();

    let vm = VmDef {
        name: "ha-vm".into(),
        protocol: BmcProtocol::Redfish,
        firmware: Firmware::Bios,
        nic: Nic::E1000,
        mac: "52:54:00:88:00:01".into(),
        memory_mib: 512,
        disks: &[8],
        nvme_disks: &[],
        sata_disks: &[],
    };
    let bmc = vbmc_listening(&mut lab, &bmcs, &rack, &tap, &vm, Some("10.88.0.5:0"));
    let root = images_for(&lab);
    // Unix sockets: the cluster's TCP ports are on the host's loopback, not the namespaces'.
    let url = h.cluster.socket_url();
    let mut env: Vec<(String, String)> = lifecycle_settings(&h.key)
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(
        [
            ("PLINTH_LOG__LEVEL", "plinth_api=debug,info"),
            ("PLINTH_BMC__LEASE_SECS", "5"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut serve = |ns: &Ns, iface: &str, state: &str| {
        let state = lab.path(state);
        start_plinth(
            &mut lab,
            ns,
            &ServeSpec {
                bin: std::path::Path::new(crate::support::BIN),
                iface,
                server_ip: VIP,
                images_root: &root,
                state_dir: &state,
                database_url: Some(&url),
                env: env.clone(),
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let first = serve(&srv1, &a, "state1");
    let second = serve(&srv2, &b, "state2");

    let id = enroll(&h, &vm, &bmc.address, PASSWORD);
    act(&h, id, Verb::Inspect);
    // The VM boots through instance 1 (the address's holder): script, kernel, initrd. Once its
    // ramdisk starts, instance 1 dies and the address moves.
    until_console(
        &bmc.dir,
        "ramdisk init starting",
        Instant::now(),
        Duration::from_secs(300),
    );
    assert!(
        events(&h, id).iter().any(|e| e.kind == "boot"),
        "instance 1 served the VM's script: {:#?}",
        events(&h, id)
    );
    assert_eq!(machine(&h, id).state, MachineState::Inspecting);
    first.signal("KILL").unwrap();
    assert!(first.wait_timeout(Duration::from_secs(10)).is_some());
    let moved = lab
        .run(
            &srv1,
            "ip",
            &["addr", "del", &format!("{VIP}/24"), "dev", &a],
        )
        .unwrap();
    assert!(moved.status.success(), "{moved:?}");
    lab.addr(&srv2, &b, &format!("{VIP}/24")).unwrap();

    wait_state(
        &h,
        &[id],
        MachineState::Ready,
        Duration::from_secs(300),
        &second,
        &[bmc.dir.as_path()],
    );
    assert!(
        second
            .log_text()
            .contains("inspection reported by the agent"),
        "instance 2 took the report:\n{}",
        second.log_text()
    );
    assert!(
        !first
            .log_text()
            .contains("inspection reported by the agent")
    );
    let m = machine(&h, id);
    let facts = serde_json::to_string(&m.facts).unwrap();
    assert!(facts.contains("52:54:00:88:00:01"), "{facts}");
    // Inspection ends with the VM powered off, by instance 2 through the BMC.
    assert_eq!(
        m.bmc.as_ref().unwrap().power_state.as_deref(),
        Some("off"),
        "powered off after inspection"
    );
    h.rt.block_on(h.pool.close());
}
