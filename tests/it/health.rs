//! Hardware health end to end (issue 20): the real `plinth serve` polls the test kit's Redfish
//! BMC; a fault injected there becomes the machine's health, a `health_changed` event and a
//! `?health=` match, a new log entry a `bmc_log` event (the log's history none), all read
//! through the CLI; recovery comes back the same way.

use std::time::{Duration, Instant};

use plinth_testkit::redfish::RedfishEmulator;

use crate::support::serve::{BMC_PASSWORD as PASSWORD, Serve, create_token, enroll_with_bmc, json};

const FAST: &[(&str, &str)] = &[
    ("PLINTH_BMC__SYNC_INTERVAL_SECS", "1"),
    ("PLINTH_BMC__HEALTH_INTERVAL_SECS", "1"),
];

fn show(serve: &Serve, token: &str, id: &str) -> serde_json::Value {
    json(&serve.cli_ok(token, &["machine", "show", id, "-o", "json"]))
}

fn events(serve: &Serve, token: &str, id: &str) -> Vec<serde_json::Value> {
    let ev = json(&serve.cli_ok(token, &["machine", "events", id, "-o", "json"]));
    ev["events"].as_array().unwrap().clone()
}

/// Waits (a minute at most) until `ok` holds for the machine's events.
fn wait_events(
    serve: &Serve,
    token: &str,
    id: &str,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = events(serve, token, id);
        if ok(&ev) {
            return ev;
        }
        assert!(Instant::now() < deadline, "{ev:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn health_changes<'a>(ev: &'a [serde_json::Value], to: &'a str) -> usize {
    ev.iter()
        .filter(|e| e["kind"] == "health_changed" && e["details"]["to"] == to)
        .count()
}

#[test]
fn a_fault_on_the_bmc_becomes_the_machines_health_and_events() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", PASSWORD))
        .unwrap();
    bmc.push_log("Critical", "an old fault, repaired long ago");
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let id = enroll_with_bmc(
        &serve,
        &token,
        "health-1",
        "52:54:00:cc:00:01",
        "redfish",
        &bmc.url(),
        PASSWORD,
    );
    // The first read: ok, and no event for it or for the log's history.
    let deadline = Instant::now() + Duration::from_secs(60);
    while show(&serve, &token, &id)["bmc"]["health"]["status"] != "ok" {
        assert!(Instant::now() < deadline, "{:#}", show(&serve, &token, &id));
        std::thread::sleep(Duration::from_millis(300));
    }

    bmc.faults(|f| f.fan_failed = true);
    bmc.push_log("Critical", "Fan 1 stopped");
    let ev = wait_events(&serve, &token, &id, |ev| {
        health_changes(ev, "critical") == 1 && ev.iter().any(|e| e["kind"] == "bmc_log")
    });
    let m = show(&serve, &token, &id);
    assert_eq!(m["bmc"]["health"]["status"], "critical");
    let names: Vec<_> = m["bmc"]["health"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"Fan 1".to_owned()), "{m:#}");
    let logged: Vec<_> = ev
        .iter()
        .filter(|e| e["kind"] == "bmc_log")
        .map(|e| e["details"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(logged, ["Fan 1 stopped"], "the history is not replayed");

    // The list filter, in JSON and in the CLI's table.
    let listed = json(&serve.cli_ok(
        &token,
        &["machine", "list", "--health", "critical", "-o", "json"],
    ));
    assert_eq!(listed["machines"][0]["id"], id.as_str());
    let none = json(&serve.cli_ok(&token, &["machine", "list", "--health", "ok", "-o", "json"]));
    assert!(none["machines"].as_array().unwrap().is_empty());
    let text = serve.cli_ok(&token, &["machine", "show", &id]);
    assert!(text.contains("critical fan Fan 1"), "{text}");

    // Polls go on: the entry is not recorded twice; the fan is replaced.
    std::thread::sleep(Duration::from_secs(3));
    bmc.faults(|f| f.fan_failed = false);
    let ev = wait_events(&serve, &token, &id, |ev| health_changes(ev, "ok") == 1);
    assert_eq!(
        ev.iter().filter(|e| e["kind"] == "bmc_log").count(),
        1,
        "{ev:#?}"
    );
    assert_eq!(health_changes(&ev, "critical"), 1);
}
