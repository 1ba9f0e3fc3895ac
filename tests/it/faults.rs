//! Faults survived, nothing lost (issue 17 part 5): the real `plinth serve` while its database
//! restarts under 200 BMC jobs, while it is itself killed with SIGKILL in the middle of a burst
//! of lifecycle transitions, and while a BMC stops answering and comes back. Each test prints
//! its figures (requests sent, lost, duplicated, seconds to recover); docs/benchmarks.md keeps
//! those of a recorded run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_testkit::redfish::RedfishEmulator;

use crate::support::repo;
use crate::support::serve::{
    BMC_PASSWORD, Serve, create_token, enroll_with_bmc, json, serve_dhcp_in_ns,
};

/// A PostgreSQL cluster of this test's own (it is restarted), durable across a crash of the
/// server process: every commit reaches the operating system before it is acknowledged.
struct OwnPg {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnPg {
    fn start() -> OwnPg {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let url = OwnPg::up(dir.path());
        OwnPg { dir, url }
    }

    fn up(dir: &Path) -> String {
        let out = Command::new(repo().join("scripts/pg-scratch.sh"))
            .arg(dir)
            .env("PG_SCRATCH_OPTS", "-c synchronous_commit=on -c fsync=off")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-scratch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// An immediate stop (as a crash: no checkpoint, connections cut).
    fn stop(&self) {
        let st = Command::new(repo().join("scripts/pg-scratch.sh"))
            .arg(self.dir.path())
            .arg("stop")
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn start_again(&self) {
        OwnPg::up(self.dir.path());
    }

    fn sql(&self, q: &str) -> String {
        sql(&self.url, q)
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sql(url: &str, q: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", q])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {q}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `GET url` → the HTTP status (0: no answer).
fn status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

/// `POST url` with a JSON body and a bearer token → the HTTP status.
fn post(url: &str, token: &str, body: &str) -> u16 {
    call("POST", url, token, Some(body)).0
}

fn enroll(serve: &Serve, token: &str, n: u32, bmc: &str) -> String {
    let hostname = format!("fault-{n}");
    let mac = format!("52:54:00:fa:{:02x}:{:02x}", n / 256, n % 256);
    enroll_with_bmc(serve, token, &hostname, &mac, "redfish", bmc, BMC_PASSWORD)
}

/// A runtime whose two threads keep the in-process BMC emulators answering while the test
/// thread waits.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn resets(bmc: &RedfishEmulator) -> usize {
    bmc.requests().iter().filter(|r| *r == "POST reset").count()
}

/// Waits for `cond`, up to `secs`, polling every 100 ms; false if it never held.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

#[test]
fn a_database_restart_under_200_bmc_jobs_loses_none_and_runs_none_twice() {
    let rt = runtime();
    let pg = OwnPg::start();
    let bmcs: Vec<RedfishEmulator> = (0..20)
        .map(|_| {
            let b = rt
                .block_on(RedfishEmulator::start("admin", BMC_PASSWORD))
                .unwrap();
            // A BMC that takes its time: the jobs are still running when the database goes.
            b.knobs(|k| k.delay = Duration::from_millis(150));
            b
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let serve = Serve::start_with(
        state,
        Some(&pg.url),
        &[
            ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
            ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
            ("PLINTH_BMC__LEASE_SECS", "10"),
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
            ("PLINTH_DATABASE__MAX_CONNECTIONS", "8"),
        ],
    );
    let token = create_token(state, Some(&pg.url), "ops", "admin");
    let ids: Vec<String> = bmcs
        .iter()
        .enumerate()
        .map(|(n, b)| enroll(&serve, &token, n as u32, &b.url()))
        .collect();

    // 200 jobs: ten resets for each of twenty machines (one runs at a time per machine).
    for _ in 0..10 {
        for id in &ids {
            let st = post(
                &format!("{}/api/v1/machines/{id}/power", serve.url),
                &token,
                r#"{"action":"reset"}"#,
            );
            assert_eq!(st, 202, "queueing a job");
        }
    }
    assert_eq!(
        pg.sql("select count(*) from jobs where kind = 'power'"),
        "200"
    );
    // The database goes away while they run, for three seconds.
    assert!(
        wait_for(30, || pg
            .sql("select count(*) from jobs where kind = 'power' and state = 'succeeded'")
            .parse::<u32>()
            .unwrap()
            >= 20),
        "jobs started"
    );
    let healthz = format!("{}/healthz", serve.url);
    assert_eq!(status(&healthz), 200);
    pg.stop();
    let down = Instant::now();
    let mut seen_503 = false;
    while down.elapsed() < Duration::from_secs(3) {
        seen_503 |= status(&healthz) == 503;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen_503, "/healthz says 503 while the database is away");
    pg.start_again();
    let back = Instant::now();
    assert!(
        wait_for(60, || status(&healthz) == 200),
        "/healthz recovers without a restart:\n{}",
        serve.log_text()
    );
    let recovered = back.elapsed();

    // Every job finishes, once, and each did its reset once.
    assert!(
        wait_for(120, || pg.sql(
            "select count(*) from jobs where state in ('queued', 'running')"
        ) == "0"),
        "jobs still pending:\n{}\n{}",
        pg.sql("select state, count(*) from jobs group by 1"),
        serve.log_text()
    );
    let states =
        pg.sql("select state || ':' || count(*) from jobs where kind = 'power' group by state");
    assert_eq!(states, "succeeded:200", "{}", serve.log_text());
    let done = pg.sql(
        "select count(*) from events where kind = 'bmc_job_succeeded' and details ->> 'kind' = 'power'",
    );
    let sent: usize = bmcs.iter().map(resets).sum();
    let duplicated = sent.saturating_sub(200);
    eprintln!(
        "faults: database restart: jobs 200, succeeded 200, lost 0, resets sent {sent}, \
         duplicated {duplicated}, job-finished events {done}, /healthz back {:.1} s after \
         the database",
        recovered.as_secs_f64()
    );
    assert_eq!(done, "200", "one success event per job");
    for (b, id) in bmcs.iter().zip(&ids) {
        assert_eq!(resets(b), 10, "machine {id}: every reset once, none twice");
    }
    assert!(
        serve.log_text().contains("plinth is serving")
            && !serve.log_text().contains("a task failed; shutting down"),
        "plinth kept running:\n{}",
        serve.log_text()
    );
    drop(serve);
}

#[test]
fn plinth_killed_in_a_burst_of_transitions_leaves_each_whole_or_absent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut serve = Serve::start_with(
        state,
        Some(&db.url),
        &[("PLINTH_BMC__SYNC_INTERVAL_SECS", "0")],
    );
    let token = create_token(state, Some(&db.url), "ops", "admin");
    // BMCs nobody answers at (their jobs fail and retry: what matters is that they exist).
    let ids: Vec<String> = (0..100)
        .map(|n| {
            enroll(
                &serve,
                &token,
                1000 + n,
                &format!("http://127.0.0.1:{}", 40000 + n),
            )
        })
        .collect();
    // Enrollment queued an identify job per machine: only what the transitions add counts.
    let jobs_before: std::collections::HashMap<String, u64> = sql(
        &db.url,
        "select machine_id || ' ' || count(*) from jobs group by machine_id",
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(id, n)| (id.to_owned(), n.parse().unwrap()))
    .collect();
    let base = serve.url.clone();
    let burst: Vec<_> = ids
        .iter()
        .map(|id| {
            let (url, token) = (
                format!("{base}/api/v1/machines/{id}/actions/inspect"),
                token.clone(),
            );
            std::thread::spawn(move || post(&url, &token, "{}"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    serve.kill();
    let answered = burst
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|s| *s == 200)
        .count();
    // Started again on the same database.
    let serve = Serve::start_with(
        state,
        Some(&db.url),
        &[("PLINTH_BMC__SYNC_INTERVAL_SECS", "0")],
    );
    let (mut whole, mut absent, mut partial) = (0, 0, Vec::new());
    for id in &ids {
        let st = sql(
            &db.url,
            &format!("select state from machines where id = '{id}'"),
        );
        let moved = sql(
            &db.url,
            &format!("select count(*) from events where machine_id = '{id}' and kind = 'inspect'"),
        );
        let jobs: u64 = sql(
            &db.url,
            &format!("select count(*) from jobs where machine_id = '{id}'"),
        )
        .parse()
        .unwrap();
        let added = jobs - jobs_before.get(id).copied().unwrap_or(0);
        match (st.as_str(), moved.as_str(), added > 0) {
            ("inspecting", "1", true) => whole += 1,
            ("enrolled", "0", false) => absent += 1,
            other => partial.push((id.clone(), other.0.to_owned(), moved, added)),
        }
    }
    eprintln!(
        "faults: SIGKILL in a burst: transitions requested 100, answered 200 before the kill \
         {answered}, complete with their jobs {whole}, absent {absent}, partial {}",
        partial.len()
    );
    assert!(partial.is_empty(), "half-done transitions: {partial:?}");
    assert!(whole >= answered, "every answered transition is complete");
    drop(serve);
}

#[test]
fn a_bmc_that_stops_answering_loses_no_job_and_repeats_no_action() {
    let rt = runtime();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", BMC_PASSWORD))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let serve = Serve::start_with(
        state,
        Some(&db.url),
        &[
            ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
            ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
            ("PLINTH_BMC__CALL_TIMEOUT_SECS", "2"),
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "1"),
            ("PLINTH_BMC__UNREACHABLE_AFTER", "2"),
            ("PLINTH_BMC__LEASE_SECS", "5"),
        ],
    );
    let token = create_token(state, Some(&db.url), "ops", "admin");
    let id = enroll(&serve, &token, 1, &bmc.url());
    let reachable = || {
        json(&serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]))["bmc"]["reachable"]
            .as_bool()
    };
    assert!(
        wait_for(30, || reachable() == Some(true)),
        "the power sync reaches it"
    );

    // It stops answering (connections accepted, nothing said), with five resets queued.
    bmc.knobs(|k| k.hang = true);
    let went = Instant::now();
    for _ in 0..5 {
        let st = post(
            &format!("{}/api/v1/machines/{id}/power", serve.url),
            &token,
            r#"{"action":"reset"}"#,
        );
        assert_eq!(st, 202);
    }
    assert!(
        wait_for(30, || reachable() == Some(false)),
        "the machine is marked unreachable:\n{}",
        serve.log_text()
    );
    let noticed = went.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(resets(&bmc), 0, "nothing reached it meanwhile");
    // It answers again.
    bmc.knobs(|k| k.hang = false);
    let back = Instant::now();
    assert!(
        wait_for(30, || reachable() == Some(true)),
        "reachable again"
    );
    let recovered = back.elapsed();
    let finished = || {
        sql(
            &db.url,
            &format!(
                "select count(*) from jobs where machine_id = '{id}' and kind = 'power' \
                 and state = 'succeeded'"
            ),
        )
    };
    assert!(
        wait_for(60, || finished() == "5"),
        "jobs: {}\n{}",
        sql(
            &db.url,
            &format!("select state, last_error from jobs where machine_id = '{id}'")
        ),
        serve.log_text()
    );
    let sent = resets(&bmc);
    eprintln!(
        "faults: BMC flap: jobs 5, succeeded 5, lost 0, resets sent {sent}, duplicated {}, \
         unreachable noticed after {:.1} s, reachable again {:.1} s after it answered",
        sent.saturating_sub(5),
        noticed.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert_eq!(sent, 5, "each reset once");
    drop(serve);
}

#[test]
fn a_database_restart_in_a_dhcp_storm_hands_no_address_to_two_clients() {
    use plinth_core::{App, BmcKey, Principal};
    use plinth_testkit::dhcp_clients;
    use plinth_testkit::netns::Lab;
    use plinth_types::api::{AddressRange, SubnetCreate};
    let pg = OwnPg::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = plinth_db::connect(&pg.url, 2).await.unwrap();
        plinth_db::migrate(&pool).await.unwrap();
        let app = App::new(
            pool.clone(),
            BmcKey::from_base64(&BmcKey::generate_base64()).unwrap(),
        );
        app.create_subnet(
            &Principal::system(),
            SubnetCreate {
                cidr: "10.68.0.0/16".into(),
                ranges: vec![AddressRange {
                    start: "10.68.1.0".parse().unwrap(),
                    end: "10.68.40.255".parse().unwrap(),
                }],
                router: Some("10.68.0.1".parse().unwrap()),
                dns_servers: None,
                domain: None,
                lease_time: Some(3600),
                boot_server: None,
                // perfdhcp sends as a relay from its interface's address.
                relay_addresses: Some(vec!["10.68.0.9".parse().unwrap()]),
                relay_any_in_cidr: None,
            },
        )
        .await
        .unwrap();
        pool.close().await;
    });
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s_if, c_if) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s_if, "10.68.0.2/16").unwrap();
    lab.addr(&cli, &c_if, "10.68.0.9/16").unwrap();
    let proc = serve_dhcp_in_ns(
        &mut lab,
        &srv,
        &pg.url,
        "127.0.0.1:8080",
        &s_if,
        "10.68.0.2",
        &[
            ("PLINTH_DHCP__CLIENT_RATE_LIMIT", "1000"),
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
        ],
    );
    let server = "10.68.0.2".parse().unwrap();

    // 12 s of full DORA at 300 a second from 4,000 clients; the database is away from 4 s to
    // 7 s (a crash: immediate stop, then start).
    let result = std::thread::scope(|s| {
        let storm = s.spawn(|| dhcp_clients::perfdhcp(&lab, &cli, &c_if, server, 300, 4000, 12));
        std::thread::sleep(Duration::from_secs(4));
        pg.stop();
        std::thread::sleep(Duration::from_secs(3));
        pg.start_again();
        storm.join().unwrap().unwrap()
    });
    let ra = &result.request_ack;
    assert_eq!(ra.non_unique_addresses, 0, "{}", result.output);
    assert!(
        proc.is_running(),
        "plinth kept running:\n{}",
        proc.log_text()
    );
    // After the storm: every ACKed lease is in the database, no address twice, no client twice.
    let bound = pg.sql(
        "select count(*) || ' ' || count(distinct address) || ' ' || count(distinct mac) \
         from leases where state = 'bound' and expires_at > now()",
    );
    let n: Vec<u64> = bound.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(
        (n[0], n[0]),
        (n[1], n[2]),
        "one address per client, one client per address"
    );
    assert!(
        n[0] >= ra.received,
        "{} ACKs but {} bound leases: a lease the client was given was lost\n{}",
        ra.received,
        n[0],
        result.output
    );
    // And it answers at full rate again.
    let after = dhcp_clients::perfdhcp(&lab, &cli, &c_if, server, 100, 200, 2).unwrap();
    if after.request_ack.received == 0 {
        std::fs::write("/tmp/faults-dhcp.log", proc.log_text()).ok();
        std::fs::copy(pg.dir.path().join("server.log"), "/tmp/faults-pg.log").ok();
    }
    assert!(
        after.request_ack.received > 0,
        "{}\n(plinth's log: /tmp/faults-dhcp.log)",
        after.output,
    );
    eprintln!(
        "faults: database restart in a DHCP storm: DISCOVERs sent {}, OFFERs {}, REQUESTs {}, \
         ACKs {}, unanswered (while the database was away) {}, addresses given twice 0, ACKed \
         leases lost {}, ACKs in a 2 s run right after {}",
        result.discover_offer.sent,
        result.discover_offer.received,
        ra.sent,
        ra.received,
        result.discover_offer.drops + ra.drops,
        ra.received.saturating_sub(n[0]),
        after.request_ack.received
    );
    drop(proc);
}

/// `curl` with a method, a bearer token and a JSON body: (status, body as JSON or a string).
fn call(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut args = vec![
        "-s".to_owned(),
        "-w".into(),
        "\n%{http_code}".into(),
        "--max-time".into(),
        "10".into(),
        "-X".into(),
        method.into(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
    ];
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "-d".into(),
            b.into(),
        ]);
    }
    args.push(url.into());
    let out = Command::new("curl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned())),
    )
}

#[test]
fn an_agent_killed_mid_deploy_or_mid_clean_fails_its_machine_with_a_reason() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let images = state.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("disk.raw"), vec![0u8; 1 << 20]).unwrap();
    let serve = Serve::start_with(
        state,
        Some(&db.url),
        &[
            ("PLINTH_IMAGES__ROOT", images.to_str().unwrap()),
            ("PLINTH_BOOT__DEPLOY_TIMEOUT_SECS", "60"),
            ("PLINTH_BOOT__CLEAN_TIMEOUT_SECS", "60"),
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
        ],
    );
    let token = create_token(state, Some(&db.url), "ops", "admin");
    let api = format!("{}/api/v1", serve.url);
    let (st, _) = call(
        "POST",
        &format!("{api}/images"),
        &token,
        Some(r#"{"name": "disk", "kind": "disk-image", "path": "disk.raw"}"#),
    );
    assert_eq!(st, 201);
    // Two ready machines (inspection reported by an operator: no agent needed for that part).
    let ready = |n: u32| {
        let mac = format!("52:54:00:fb:00:{n:02x}");
        let (st, m) = call(
            "POST",
            &format!("{api}/machines"),
            &token,
            Some(&format!(
                r#"{{"hostname": "agent-{n}", "nics": [{{"mac": "{mac}"}}]}}"#
            )),
        );
        assert_eq!(st, 201, "{m}");
        let id = m["id"].as_str().unwrap().to_owned();
        let (st, _) = call(
            "POST",
            &format!("{api}/machines/{id}/actions/inspect"),
            &token,
            Some("{}"),
        );
        assert_eq!(st, 200);
        let report = serde_json::json!({
            "cpu": { "model": "EPYC", "cores": 8, "threads": 16 },
            "memory_mib": 65536,
            "disks": [{ "name": "sda", "size_bytes": 64u64 << 30, "rotational": false }],
            "nics": [{ "name": "eno1", "mac": mac, "speed_mbps": 10000 }],
            "system": { "vendor": "Acme", "product": "X1", "serial": format!("SN{n}"), "uuid": "4c4c4544-0000-0000-0000-000000000000" },
            "firmware": "uefi",
            "arch": "x86_64"
        });
        let (st, m) = call(
            "POST",
            &format!("{api}/machines/{id}/inspection"),
            &token,
            Some(&report.to_string()),
        );
        assert_eq!((st, m["state"].as_str()), (200, Some("ready")), "{m}");
        (id, mac)
    };
    let (deploy_id, deploy_mac) = ready(1);
    let (clean_id, clean_mac) = ready(2);
    let allocate = |id: &str| {
        let (st, a) = call("POST", &format!("{api}/allocations"), &token, Some("{}"));
        assert_eq!(st, 201, "{a}");
        assert_eq!(a["machines"][0]["id"], id, "{a}");
        a["id"].as_str().unwrap().to_owned()
    };
    // The agent: its token from the boot script, then a first call, then it dies.
    let agent_token = |mac: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-H",
                "User-Agent: iPXE/1.21",
                &format!("{}/boot/ipxe?mac={mac}", serve.url),
            ])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout).into_owned();
        let at = script
            .find("plinth.token=")
            .unwrap_or_else(|| panic!("no token: {script}"));
        script[at + "plinth.token=".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };

    allocate(&deploy_id);
    let (st, m) = call(
        "POST",
        &format!("{api}/machines/{deploy_id}/actions/deploy"),
        &token,
        Some(r#"{"image": "disk"}"#),
    );
    assert_eq!((st, m["state"].as_str()), (200, Some("deploying")), "{m}");
    let t = agent_token(&deploy_mac);
    let (st, _) = call(
        "GET",
        &format!("{api}/machines/{deploy_id}/deployment/manifest"),
        &t,
        None,
    );
    assert_eq!(st, 200);
    let (st, _) = call(
        "POST",
        &format!("{api}/machines/{deploy_id}/deploy-progress"),
        &t,
        Some(r#"{"bytes_written": 65536, "total_bytes": 1048576, "bytes_per_sec": 65536}"#),
    );
    assert_eq!(st, 204, "progress is taken");
    let deploy_died = Instant::now();

    let allocation = allocate(&clean_id);
    let (st, _) = call(
        "DELETE",
        &format!("{api}/allocations/{allocation}"),
        &token,
        None,
    );
    assert_eq!(st, 200);
    let t = agent_token(&clean_mac);
    let (st, _) = call(
        "GET",
        &format!("{api}/machines/{clean_id}/clean-plan"),
        &t,
        None,
    );
    assert_eq!(st, 200);
    let clean_died = Instant::now();

    // Within the configured 60 s and a reconciler pass (30 s), each fails with a reason.
    let state_of = |id: &str| {
        let (_, m) = call("GET", &format!("{api}/machines/{id}"), &token, None);
        (
            m["state"].as_str().unwrap_or("").to_owned(),
            m["state_reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    let mut took = Vec::new();
    for (id, want, died) in [
        (&deploy_id, "deploy_failed", deploy_died),
        (&clean_id, "clean_failed", clean_died),
    ] {
        assert!(
            wait_for(150, || state_of(id).0 == want),
            "{id} is {:?}, not {want}:\n{}",
            state_of(id),
            serve.log_text()
        );
        let (_, reason) = state_of(id);
        assert!(!reason.is_empty(), "{want} says why");
        took.push(died.elapsed().as_secs_f64());
        eprintln!(
            "faults: agent killed: {want} after {:.0} s: {reason}",
            died.elapsed().as_secs_f64()
        );
    }
    assert!(
        took.iter().all(|s| *s <= 100.0),
        "within the timeout and a pass: {took:?}"
    );
}
