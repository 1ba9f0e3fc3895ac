//! BMC control end to end: the real `plinth serve` runs jobs and the power sync against the
//! reference BMCs (sushy-tools' Redfish emulator, OpenIPMI's ipmi_sim) and against the test
//! kit's misbehaving ones; everything is driven through the CLI and the HTTP API, and asserted
//! on jobs, events and the BMCs' own view (sushy's Redfish resources, ipmitool on ipmi_sim).

use std::time::{Duration, Instant};

use plinth_testkit::ipmi::{Fru, IpmiEmulator, IpmiEmulatorConfig};
use plinth_testkit::ipmi_sim::{self, IpmiSim};
use plinth_testkit::redfish::RedfishEmulator;
use plinth_testkit::sushy::{self, Sushy};

use crate::support::serve::{BMC_PASSWORD as PASSWORD, Serve, create_token, enroll_with_bmc, json};

/// Fast retries and a quick power sync, so the test does not wait on production timings.
const FAST: &[(&str, &str)] = &[
    ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
    ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
    ("PLINTH_BMC__SYNC_INTERVAL_SECS", "2"),
    ("PLINTH_BMC__LEASE_SECS", "3"),
];

fn enroll(serve: &Serve, token: &str, n: u8, address: &str, password: &str) -> String {
    enroll_mac(
        serve,
        token,
        n,
        &format!("52:54:00:aa:00:{n:02x}"),
        address,
        password,
    )
}

fn enroll_mac(
    serve: &Serve,
    token: &str,
    n: u8,
    mac: &str,
    address: &str,
    password: &str,
) -> String {
    enroll_as(serve, token, n, mac, "redfish", address, password)
}

fn enroll_as(
    serve: &Serve,
    token: &str,
    n: u8,
    mac: &str,
    protocol: &str,
    address: &str,
    password: &str,
) -> String {
    let hostname = format!("bmc-test-{n}");
    enroll_with_bmc(serve, token, &hostname, mac, protocol, address, password)
}

/// The machine's jobs, oldest first, once `done` says so (or panics after a minute).
fn wait_jobs(
    serve: &Serve,
    token: &str,
    id: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = json(&serve.cli_ok(token, &["job", "list", "--machine", id, "-o", "json"]));
        let mut jobs = page["jobs"].as_array().unwrap().clone();
        jobs.reverse();
        if done(&jobs) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs of {id} never got there: {jobs:#?}\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn all_finished(jobs: &[serde_json::Value]) -> bool {
    !jobs.is_empty()
        && jobs
            .iter()
            .all(|j| ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()))
}

/// `curl` a JSON request: (status, headers and body as one text).
fn curl(serve: &Serve, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &format!("{}{path}", serve.url),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn power_and_boot_device_through_plinth_against_sushy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = Sushy::start(Some(("admin", PASSWORD))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");

    // Enrollment checks the BMC and reads what it says about the machine.
    let id = enroll_mac(&serve, &token, 1, sushy::MAC, &bmc.url(), PASSWORD);
    let jobs = wait_jobs(&serve, &token, &id, all_finished);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0]["kind"].as_str(), jobs[0]["state"].as_str()),
        (Some("identify"), Some("succeeded")),
        "{jobs:#?}"
    );
    let m = json(&serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]));
    assert_eq!(m["bmc"]["identity"]["uuid"], sushy::UUID);
    assert_eq!(m["bmc"]["identity"]["macs"][0], sushy::MAC);
    assert_eq!(m["bmc"]["reachable"], true);
    assert_eq!(m["bmc"]["power_state"], "off");
    // Its NIC is the one enrolled: no mismatch. A machine enrolled with another NIC behind the
    // same BMC gets the warning.
    let other = enroll(&serve, &token, 3, &bmc.url(), PASSWORD);
    wait_jobs(&serve, &token, &other, all_finished);
    let kinds = |id: &str| -> Vec<String> {
        let ev = json(&serve.cli_ok(&token, &["machine", "events", id, "-o", "json"]));
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!kinds(&id).contains(&"bmc_identity_mismatch".to_owned()));
    assert!(kinds(&other).contains(&"bmc_identity_mismatch".to_owned()));

    // The job path as sushy itself sees it: its Redfish resource read after each job.
    let view = || {
        let out = std::process::Command::new("curl")
            .args(["-sf", "-u", &format!("admin:{PASSWORD}")])
            .arg(format!("{}/redfish/v1/Systems/{}", bmc.url(), sushy::UUID))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        json(&String::from_utf8_lossy(&out.stdout))
    };
    for (op, after) in [("on", "On"), ("cycle", "On"), ("off", "Off")] {
        let job = power_job(&serve, &token, &id, op);
        assert_eq!(view()["PowerState"], after, "{op}: {job:#}");
    }
    for (device, persistent, mode) in BOOT_MATRIX {
        let job = boot_job(&serve, &token, &id, device, *persistent, mode);
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert_eq!(job["result"]["confirmed"], "override", "{job:#}");
        let boot = view()["Boot"].clone();
        let target = match *device {
            "pxe" => "Pxe",
            "disk" => "Hdd",
            _ => "BiosSetup",
        };
        assert_eq!(boot["BootSourceOverrideTarget"], target, "{boot:#}");
        assert_eq!(
            boot["BootSourceOverrideMode"],
            if *mode == "uefi" { "UEFI" } else { "Legacy" },
            "{boot:#}"
        );
        // sushy keeps every override for every boot (Continuous), which plinth's rule accepts
        // for a one-time request, and reports as such.
        assert_eq!(boot["BootSourceOverrideEnabled"], "Continuous", "{boot:#}");
        assert_eq!(
            job["result"]["boot_override"]["persistent"], true,
            "{job:#}"
        );
    }

    // Boot device and power from the CLI, waiting for the jobs.
    let out = serve.cli_ok(
        &token,
        &[
            "machine",
            "boot-device",
            &id,
            "pxe",
            "--mode",
            "uefi",
            "--wait",
        ],
    );
    assert!(
        out.contains("succeeded") && out.contains("boot pxe once uefi"),
        "{out}"
    );
    let out = serve.cli_ok(&token, &["machine", "power", &id, "on", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    let m = json(&serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]));
    assert_eq!(m["bmc"]["power_state"], "on");

    // The API: 202 with the job at Location, refusals before anything is queued.
    let (status, text) = curl(
        &serve,
        &token,
        "POST",
        &format!("/api/v1/machines/{id}/power"),
        r#"{"action": "off", "force": true}"#,
    );
    assert_eq!(status, 202, "{text}");
    let job_id = text.rsplit("\r\n\r\n").next().map(json).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("location: /api/v1/jobs/{job_id}")),
        "{text}"
    );
    let out = serve.cli_ok(&token, &["job", "show", &job_id, "--wait"]);
    assert!(out.contains("power off (forced)"), "{out}");
    for (body, code) in [
        (r#"{"action": "explode"}"#, "400"),
        (r#"{"action": "on", "force": true}"#, "force_needs_off"),
        (r#"{"action": "on", "extra": 1}"#, "400"),
    ] {
        let (status, text) = curl(
            &serve,
            &token,
            "POST",
            &format!("/api/v1/machines/{id}/power"),
            body,
        );
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(code) || code == "400", "{text}");
    }
    let (status, text) = curl(
        &serve,
        &token,
        "POST",
        &format!("/api/v1/machines/{id}/boot-device"),
        r#"{"device": "floppy"}"#,
    );
    assert_eq!(status, 400, "{text}");

    // The lifecycle: inspect sets PXE once and powers the (off) machine on: two more jobs
    // after those above.
    let done = wait_jobs(&serve, &token, &id, all_finished).len();
    serve.cli_ok(&token, &["machine", "action", &id, "inspect"]);
    let jobs = wait_jobs(&serve, &token, &id, |j| {
        j.len() == done + 2 && all_finished(j)
    });
    let tail: Vec<_> = jobs[done..]
        .iter()
        .map(|j| (j["kind"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(tail, [("boot_device", "succeeded"), ("power", "succeeded")]);
    assert_eq!(jobs[done]["chain"], jobs[done + 1]["chain"]);
    assert_eq!(jobs[done + 1]["result"]["after"], "on");

    // The power sync notices a change plinth did not make (the power button).
    let direct = std::process::Command::new("curl")
        .args([
            "-sf",
            "-u",
            &format!("admin:{PASSWORD}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"ResetType": "ForceOff"}"#,
            &format!(
                "{}/redfish/v1/Systems/{}/Actions/ComputerSystem.Reset",
                bmc.url(),
                sushy::UUID
            ),
        ])
        .output()
        .unwrap();
    assert!(direct.status.success(), "{direct:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = json(&serve.cli_ok(&token, &["machine", "events", &id, "-o", "json"]));
        let seen = ev["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "power_changed"
                && e["details"]["from"] == "on"
                && e["details"]["to"] == "off"
        });
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "no power_changed event: {ev:#}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Wrong credentials: a clear event at enrollment, a clear error on request, no retries.
    let bad = enroll(&serve, &token, 2, &bmc.url(), "not-the-password");
    let jobs = wait_jobs(&serve, &token, &bad, all_finished);
    assert_eq!(jobs[0]["state"], "failed");
    assert_eq!(jobs[0]["attempts"], 1);
    let ev = json(&serve.cli_ok(&token, &["machine", "events", &bad, "-o", "json"]));
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "bmc_auth_failed"),
        "{ev:#}"
    );
    let out = serve.cli(&token, &["machine", "power", &bad, "on", "--wait"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the credentials"), "{err}");

    // The passwords went to plinth and never came back out.
    let mut everything = serve.log_text();
    for args in [
        vec!["machine", "show", &id, "-o", "json"],
        vec!["machine", "show", &bad, "-o", "json"],
        vec!["machine", "events", &id, "-o", "json"],
        vec!["machine", "events", &bad, "-o", "json"],
        vec!["job", "list", "-o", "json"],
        vec!["events", "-o", "json"],
    ] {
        everything.push_str(&serve.cli_ok(&token, &args));
    }
    assert!(everything.contains(&id));
    for secret in [PASSWORD, "not-the-password"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[test]
fn a_job_running_when_plinth_dies_is_run_again_after_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", PASSWORD))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let id = enroll(&serve, &token, 1, &bmc.url(), PASSWORD);
    wait_jobs(&serve, &token, &id, all_finished);

    // The BMC becomes very slow; plinth dies (SIGKILL) while the power job is in its call.
    bmc.knobs(|k| k.delay = Duration::from_secs(3600));
    let job = json(&serve.cli_ok(&token, &["machine", "power", &id, "on", "-o", "json"]));
    let job_id = job["id"].as_str().unwrap().to_owned();
    wait_jobs(&serve, &token, &id, |j| {
        j.last().is_some_and(|j| j["state"] == "running")
    });
    // A running job is not cancelled half-way.
    let out = serve.cli(&token, &["job", "cancel", &job_id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("job_running"),
        "{out:?}"
    );
    serve.kill();
    bmc.knobs(|k| k.delay = Duration::ZERO);
    assert_eq!(bmc.power(), "Off");

    // A new plinth takes the job over once its lease has run out, and finishes it.
    let serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let out = serve.cli_ok(&token, &["job", "show", &job_id, "--wait", "-o", "json"]);
    let job = json(&out);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempts"], 2);
    assert_eq!(bmc.power(), "On");
    assert!(
        serve.log_text().contains("the worker running it stopped"),
        "{}",
        serve.log_text()
    );
}

/// The boot overrides every BMC job path is tried with: each device plinth sets in its
/// lifecycle (PXE, disk, BIOS setup), once and persistent, BIOS and UEFI.
const BOOT_MATRIX: &[(&str, bool, &str)] = &[
    ("pxe", false, "bios"),
    ("pxe", false, "uefi"),
    ("pxe", true, "uefi"),
    ("disk", false, "bios"),
    ("disk", true, "bios"),
    ("disk", true, "uefi"),
    ("bios-setup", false, "uefi"),
    ("bios-setup", true, "bios"),
];

/// Runs `plinth machine boot-device` and waits: the finished job.
fn boot_job(
    serve: &Serve,
    token: &str,
    id: &str,
    device: &str,
    persistent: bool,
    mode: &str,
) -> serde_json::Value {
    let mut args = vec!["machine", "boot-device", id, device, "--mode", mode];
    if persistent {
        args.push("--persistent");
    }
    args.extend(["--wait", "-o", "json"]);
    let out = serve.cli(token, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        serve.log_text()
    );
    json(&text)
}

/// Runs `plinth machine power` and waits: the finished job.
fn power_job(serve: &Serve, token: &str, id: &str, op: &str) -> serde_json::Value {
    let out = serve.cli_ok(token, &["machine", "power", id, op, "--wait", "-o", "json"]);
    let job = json(&out);
    assert_eq!(job["state"], "succeeded", "power {op}: {job:#}");
    job
}

fn events_of(serve: &Serve, token: &str, id: &str) -> Vec<serde_json::Value> {
    let ev = json(&serve.cli_ok(token, &["machine", "events", id, "-o", "json"]));
    ev["events"].as_array().unwrap().clone()
}

/// Waits for the power sync's `power_changed` event `from` → `to`.
fn wait_power_changed(serve: &Serve, token: &str, id: &str, from: &str, to: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = events_of(serve, token, id).iter().any(|e| {
            e["kind"] == "power_changed" && e["details"]["from"] == from && e["details"]["to"] == to
        });
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no power_changed {from} -> {to}: {:#?}",
            events_of(serve, token, id)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `ipmitool`'s "Key : value" line.
fn ipmitool_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// The whole IPMI job path against OpenIPMI's ipmi_sim, with ipmitool checking the simulator
/// after each job: identity (GUID, FRU), power on, cycle and off, every boot override of the
/// matrix, and the power sync noticing a change made with ipmitool.
#[test]
fn the_job_path_against_ipmi_sim() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let sim = IpmiSim::start(Some(&Fru::new("Plinth Test Systems", "RS-2000", "SN-4711"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");

    let id = enroll_as(
        &serve,
        &token,
        1,
        "52:54:00:bb:00:01",
        "ipmi",
        &sim.addr().to_string(),
        ipmi_sim::PASSWORD,
    );
    let jobs = wait_jobs(&serve, &token, &id, all_finished);
    assert_eq!(
        (jobs[0]["kind"].as_str(), jobs[0]["state"].as_str()),
        (Some("identify"), Some("succeeded")),
        "{jobs:#?}\n{}",
        serve.log_text()
    );
    let m = json(&serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]));
    let identity = &m["bmc"]["identity"];
    let guid = sim.ipmitool(&["mc", "guid"]).unwrap();
    assert_eq!(
        identity["uuid"].as_str().map(str::to_owned),
        ipmitool_field(&guid, "System GUID"),
        "{guid}"
    );
    let fru = sim.ipmitool(&["fru", "print", "0"]).unwrap();
    for (ours, theirs) in [
        ("manufacturer", "Product Manufacturer"),
        ("model", "Product Name"),
        ("serial", "Product Serial"),
    ] {
        assert_eq!(
            identity[ours].as_str().map(str::to_owned),
            ipmitool_field(&fru, theirs),
            "{ours}: {identity:#}\n{fru}"
        );
    }
    assert_eq!(identity["serial"], "SN-4711");
    assert_eq!(m["bmc"]["power_state"], "off");

    let status = || sim.ipmitool(&["chassis", "power", "status"]).unwrap();
    let job = power_job(&serve, &token, &id, "on");
    assert_eq!(job["result"]["after"], "on");
    assert!(status().contains("Chassis Power is on"));
    // A cycle: ipmi_sim turns the machine off, and on a second later.
    let calls_before = sim.script_calls().len();
    power_job(&serve, &token, &id, "cycle");
    let calls: Vec<String> = sim.script_calls()[calls_before..].to_vec();
    assert!(
        calls.iter().any(|c| c == "0x20 set power 0"),
        "the cycle went through ipmi_sim: {calls:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status().contains("Chassis Power is on") {
        assert!(Instant::now() < deadline, "not back on after the cycle");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every override: the job succeeds on the device ipmi_sim reports (its valid bit is
    // always clear), and ipmitool reads the same device from the simulator.
    for (device, persistent, mode) in BOOT_MATRIX {
        let job = boot_job(&serve, &token, &id, device, *persistent, mode);
        assert_eq!(
            job["state"], "succeeded",
            "{device} {persistent} {mode}: {job:#}"
        );
        assert_eq!(job["attempts"], 1, "{job:#}");
        assert_eq!(job["result"]["confirmed"], "device_only", "{job:#}");
        let want = device.replace('-', "_");
        assert_eq!(
            job["result"]["boot_override"]["unconfirmed"],
            want.as_str(),
            "{job:#}"
        );
        let (script, says) = match *device {
            "pxe" => ("pxe", "Force PXE"),
            "disk" => ("default", "Force Boot from default Hard-Drive"),
            _ => ("bios", "Force Boot into BIOS Setup"),
        };
        assert_eq!(sim.boot(), script);
        let p5 = sim.ipmitool(&["chassis", "bootparam", "get", "5"]).unwrap();
        assert!(p5.contains(says), "{device}: {p5}");
    }

    power_job(&serve, &token, &id, "off");
    assert!(status().contains("Chassis Power is off"));
    // The power sync notices a change plinth did not make.
    sim.ipmitool(&["chassis", "power", "on"]).unwrap();
    wait_power_changed(&serve, &token, &id, "off", "on");
    let m = json(&serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]));
    assert_eq!(m["bmc"]["power_state"], "on");
    assert!(!serve.log_text().contains(ipmi_sim::PASSWORD));
}

/// The test kit's IPMI BMC keeps the valid bit: the same matrix is confirmed as a whole
/// override. One without System Boot Options parameter 3 gets its overrides all the same, and
/// plinth says so once in its log, not at every job.
#[test]
fn the_job_path_against_the_test_kits_ipmi_bmc() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let (keeps, refuses) = rt.block_on(async {
        let keeps = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", PASSWORD))
            .await
            .unwrap();
        let refuses = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", PASSWORD))
            .await
            .unwrap();
        refuses.set_refuse_valid_bit_clearing(true);
        (keeps, refuses)
    });
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let a = enroll_as(
        &serve,
        &token,
        1,
        "52:54:00:bb:01:01",
        "ipmi",
        &keeps.addr().to_string(),
        PASSWORD,
    );
    let b = enroll_as(
        &serve,
        &token,
        2,
        "52:54:00:bb:01:02",
        "ipmi",
        &refuses.addr().to_string(),
        PASSWORD,
    );
    wait_jobs(&serve, &token, &a, all_finished);
    wait_jobs(&serve, &token, &b, all_finished);

    for (device, persistent, mode) in BOOT_MATRIX {
        let job = boot_job(&serve, &token, &a, device, *persistent, mode);
        assert_eq!(job["result"]["confirmed"], "override", "{job:#}");
        let flags = keeps.boot_flags();
        assert!(flags.valid(), "{flags:?}");
        assert_eq!(flags.persistent(), *persistent);
        assert_eq!(flags.efi(), *mode == "uefi");
        assert_eq!(keeps.valid_bit_clearing() & 0x08, 0x08);
    }
    for (device, persistent, mode) in &BOOT_MATRIX[..3] {
        let job = boot_job(&serve, &token, &b, device, *persistent, mode);
        assert_eq!(job["result"]["confirmed"], "override", "{job:#}");
        assert!(refuses.boot_flags().valid());
    }
    let log = serve.log_text();
    let note = "refuses to keep boot overrides past 60 s";
    assert_eq!(log.matches(note).count(), 1, "noted once: {log}");
}
