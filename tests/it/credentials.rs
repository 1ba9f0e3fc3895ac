//! BMC credential rotation end to end (issue 21, part 4): the real `plinth serve` with
//! `bmc.rotate_on_enroll`, the test kit's Redfish BMC, and `plinth machine bmc-rotate` from the
//! CLI. The BMC's password changes to one only plinth knows, later jobs use it, and no password
//! shows in the CLI's output, the API's answers or the server's log.

use std::time::{Duration, Instant};

use plinth_testkit::redfish::RedfishEmulator;

use crate::support::serve::{BMC_PASSWORD as PASSWORD, Serve, create_token, enroll_with_bmc, json};

const SETTINGS: &[(&str, &str)] = &[
    ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
    ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
    ("PLINTH_BMC__LEASE_SECS", "3"),
    ("PLINTH_BMC__ROTATE_ON_ENROLL", "true"),
];

/// The machine's jobs, oldest first, once every one has finished and there are `n`.
fn finished_jobs(serve: &Serve, token: &str, id: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = json(&serve.cli_ok(token, &["job", "list", "--machine", id, "-o", "json"]));
        let mut jobs = page["jobs"].as_array().unwrap().clone();
        jobs.reverse();
        let done = jobs.len() == n
            && jobs.iter().all(|j| {
                ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap())
            });
        if done {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs of {id}: {jobs:#?}\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rotation_on_enroll_and_from_the_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", PASSWORD))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), SETTINGS);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let id = enroll_with_bmc(
        &serve,
        &token,
        "rot-1",
        "52:54:00:cc:00:01",
        "redfish",
        &bmc.url(),
        PASSWORD,
    );
    // rotate_on_enroll: the identify, then the rotation.
    let jobs = finished_jobs(&serve, &token, &id, 2);
    let kinds: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j["kind"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("identify", "succeeded"),
            ("rotate_credentials", "succeeded")
        ],
        "{jobs:#?}"
    );
    assert!(jobs[1]["result"]["rotated_at"].is_string(), "{jobs:#?}");
    let first = bmc.password();
    assert_ne!(first, PASSWORD, "the factory password is gone");

    // From the CLI, waiting for the job.
    let out = serve.cli_ok(&token, &["machine", "bmc-rotate", &id]);
    assert!(out.contains("succeeded"), "{out}");
    let second = bmc.password();
    assert_ne!(second, first);
    assert_eq!(bmc.password_changes(), 2);
    // A later job logs in with the new password.
    let out = serve.cli_ok(&token, &["machine", "power", &id, "on", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(bmc.power(), "On");
    // --no-wait returns with the job queued; a viewer may not rotate.
    let out = serve.cli_ok(
        &token,
        &["machine", "bmc-rotate", &id, "--no-wait", "-o", "json"],
    );
    let job = json(&out);
    assert_eq!(job["kind"], "rotate_credentials");
    let viewer = create_token(dir.path(), Some(&db.url), "look", "viewer");
    let refused = serve.cli(&viewer, &["machine", "bmc-rotate", &id]);
    assert!(!refused.status.success());
    let jobs = finished_jobs(&serve, &token, &id, 5);
    assert_eq!(jobs[4]["state"], "succeeded", "{jobs:#?}");
    let third = bmc.password();

    // No password anywhere a person or a log shipper can read.
    let shown = [
        serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]),
        serve.cli_ok(&token, &["machine", "events", &id, "-o", "json"]),
        serve.cli_ok(&token, &["job", "list", "--machine", &id, "-o", "json"]),
        out,
        serve.log_text(),
    ]
    .join("\n");
    assert!(shown.contains("bmc_credentials_rotated"));
    for p in [PASSWORD, &first, &second, &third] {
        assert!(!shown.contains(p), "a BMC password was shown");
    }
}

#[test]
fn bmc_scan_from_the_cli_contacts_only_its_cidr() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let inside = rt
        .block_on(RedfishEmulator::start_at("admin", PASSWORD, "127.0.0.1:0"))
        .unwrap();
    let outside = rt
        .block_on(RedfishEmulator::start_at("admin", PASSWORD, "127.0.0.3:0"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), SETTINGS);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let ports = [
        inside.addr.port().to_string(),
        outside.addr.port().to_string(),
    ];
    let args = [
        "bmc",
        "scan",
        "127.0.0.1/32",
        "--redfish-port",
        &ports[0],
        "--redfish-port",
        &ports[1],
        "--ipmi-port",
        "9",
        "-o",
        "json",
    ];
    let scan = json(&serve.cli_ok(&token, &args));
    assert_eq!(scan["state"], "done", "{scan:#}");
    let results = scan["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{scan:#}");
    assert_eq!(results[0]["address"], inside.url());
    assert_eq!(results[0]["protocol"], "redfish");
    assert!(
        results[0]["credential"].is_null(),
        "no factory credentials configured"
    );
    assert!(outside.requests().is_empty(), "{:?}", outside.requests());
    // The table, and the refusals: too wide a network, a role other than admin.
    let out = serve.cli_ok(&token, &["bmc", "show-scan", scan["id"].as_str().unwrap()]);
    assert!(
        out.contains("redfish") && out.contains(&inside.url()),
        "{out}"
    );
    let wide = serve.cli(&token, &["bmc", "scan", "10.0.0.0/16"]);
    assert!(!wide.status.success());
    assert!(
        String::from_utf8_lossy(&wide.stderr).contains("1024"),
        "{wide:?}"
    );
    let operator = create_token(dir.path(), Some(&db.url), "op", "operator");
    assert!(
        !serve
            .cli(&operator, &["bmc", "scan", "127.0.0.1/32"])
            .status
            .success()
    );
}
