//! What plinth last saw of a machine (issue 22), with real clients against a running
//! `plinth serve` in a lab namespace: dhclient takes a lease, curl asks for the iPXE script,
//! tftp-hpa fetches the loader and curl a part of the kernel; then the inspection times out
//! (judged by another instance on the same database, as with several instances) and its
//! reason names the lease, the script request and the file cut short. And a machine whose
//! ramdisk powers it off (its Redfish BMC, the test kit's, reads off) fails at once.

use std::time::{Duration, Instant};

use plinth_core::Principal;
use plinth_testkit::dhcp_clients::{self, Client, Options};
use plinth_testkit::netns::Lab;
use plinth_types::MachineState;
use plinth_types::api::*;

use crate::support::env::Env;
use crate::support::lab::plinth;
use crate::support::serve::{BMC_PASSWORD, Serve, create_token, enroll_with_bmc, json};

#[test]
fn an_inspection_timeout_names_the_lease_the_script_and_the_file() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (sif, cif) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &sif, "10.84.0.2/24").unwrap();
    env.subnet("10.84.0.0/24", "10.84.0.100", "10.84.0.149", None, &[]);
    let root = lab.path("root");
    std::fs::create_dir_all(root.join("plinth")).unwrap();
    std::fs::write(root.join("undionly.kpxe"), vec![7u8; 70_000]).unwrap();
    std::fs::write(root.join("plinth/vmlinuz"), vec![9u8; 300_000]).unwrap();
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.84.0.2", &root, &[]);

    let mac = "52:54:00:84:00:01";
    let req: MachineCreate =
        serde_json::from_value(serde_json::json!({ "nics": [{ "mac": mac }] })).unwrap();
    let m = env
        .rt
        .block_on(env.app.enroll_machine(&Principal::system(), req))
        .unwrap();
    let action = plinth_core::lifecycle::Action {
        verb: "inspect".parse().unwrap(),
        expected_version: None,
        reason: None,
    };
    env.rt
        .block_on(env.app.act(&Principal::system(), m.id, action))
        .unwrap();

    let opts = Options {
        mac: Some(mac.into()),
        ..Default::default()
    };
    let lease = dhcp_clients::obtain_with(&mut lab, &cli, &cif, Client::Dhclient, &opts)
        .unwrap_or_else(|e| panic!("dhclient: {e:#}\n{}", server.log_text()));
    let ip = lease.ip.to_string();
    let run = |program: &str, args: &[&str]| {
        let o = lab
            .run_timeout(&cli, program, args, Duration::from_secs(30))
            .unwrap();
        assert!(
            o.status.success(),
            "{program} {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            server.log_text()
        );
    };
    let url = format!("http://10.84.0.2:8080/boot/ipxe?mac={mac}");
    run("curl", &["-sSf", "-o", "/dev/null", &url]);
    let out = lab.path("out");
    run(
        "tftp",
        &[
            "10.84.0.2",
            "-m",
            "binary",
            "-c",
            "get",
            "undionly.kpxe",
            out.to_str().unwrap(),
        ],
    );
    // A kernel cut short: the first 1000 bytes of it.
    run(
        "curl",
        &[
            "-sSf",
            "-r",
            "0-999",
            "-o",
            "/dev/null",
            "http://10.84.0.2:8080/boot/plinth/vmlinuz",
        ],
    );

    // The server writes its fetches every few seconds; this instance reads them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = env.rt.block_on(env.app.last_seen(m.id)).unwrap().unwrap();
        if seen.seen.fetches.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fetches not written: {:?}",
            seen.seen.fetches
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = plinth_core::lifecycle::StuckTimeouts {
        inspect: Duration::from_secs(1),
        clean: Duration::from_secs(3600),
        deploy: Duration::from_secs(3600),
    };
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(env.rt.block_on(env.app.fail_stuck(&t)).unwrap(), 1);
    let m = env
        .rt
        .block_on(env.app.get_machine(&Principal::system(), m.id))
        .unwrap();
    assert_eq!(m.state, MachineState::InspectFailed);
    let reason = m.state_reason.unwrap();
    for part in [
        "no inspection report within 1 s".to_owned(),
        format!("last seen: lease {ip} bound at "),
        "; script request (".to_owned(),
        "; file http plinth/vmlinuz, 1000 of 300000 bytes, incomplete at ".to_owned(),
        "; no BMC".to_owned(),
    ] {
        assert!(reason.contains(&part), "{part:?} in {reason}");
    }
    assert!(!reason.contains("before inspecting began"), "{reason}");
    let events = env
        .rt
        .block_on(env.app.events(
            &Principal::system(),
            Some(m.id),
            plinth_core::events::EventQuery::default(),
        ))
        .unwrap()
        .events;
    let fail = events.iter().find(|e| e.kind == "inspect_fail").unwrap();
    let files = fail.details["last_seen"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[1]["protocol"], "tftp");
    assert_eq!(files[1]["path"], "undionly.kpxe");
    assert_eq!(files[1]["complete"], true);
    assert_eq!(files[1]["bytes_sent"], 70_000);
    assert_eq!(files[1]["address"], ip);
}

#[test]
fn a_ramdisk_that_powers_the_machine_off_fails_it_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(plinth_testkit::redfish::RedfishEmulator::start(
            "admin",
            BMC_PASSWORD,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(
        dir.path(),
        Some(&db.url),
        &[
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "1"),
            ("PLINTH_BMC__CALL_TIMEOUT_SECS", "2"),
            ("PLINTH_BMC__LEASE_SECS", "3"),
        ],
    );
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let id = enroll_with_bmc(
        &serve,
        &token,
        "off-1",
        "52:54:00:84:01:01",
        "redfish",
        &bmc.url(),
        BMC_PASSWORD,
    );
    let show = || json(&serve.cli_ok(&token, &["machine", "show", &id, "-o", "json"]));
    let jobs_done = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = json(&serve.cli_ok(&token, &["job", "list", "--machine", &id, "-o", "json"]));
            let jobs = j["jobs"].as_array().unwrap().clone();
            if jobs.len() >= n && jobs.iter().all(|j| j["state"] == "succeeded") {
                return;
            }
            assert!(Instant::now() < deadline, "{j:#}\n{}", serve.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    jobs_done(1);
    serve.cli_ok(&token, &["machine", "action", &id, "inspect"]);
    // PXE once, power on: the machine boots its ramdisk.
    jobs_done(3);
    assert_eq!(bmc.power(), "On");
    // Past the grace (the call timeout) after plinth's power-on, the ramdisk finds no network
    // and powers the machine off.
    std::thread::sleep(Duration::from_secs(3));
    let off = std::process::Command::new("curl")
        .args([
            "-sf",
            "-u",
            &format!("admin:{BMC_PASSWORD}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"ResetType": "ForceOff"}"#,
            &format!(
                "{}/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                bmc.url()
            ),
        ])
        .output()
        .unwrap();
    assert!(off.status.success(), "{off:?}");
    let off_at = Instant::now();
    let deadline = off_at + Duration::from_secs(30);
    let m = loop {
        let m = show();
        if m["state"] != "inspecting" {
            break m;
        }
        assert!(Instant::now() < deadline, "{m:#}\n{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(m["state"], "inspect_failed", "{m:#}");
    let reason = m["state_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the machine powered off without reporting"),
        "{reason}"
    );
    for part in [
        "no DHCP lease since inspecting began",
        "; power off, read at ",
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    eprintln!(
        "lastseen: failed {:.1} s after the power-off: {reason}",
        off_at.elapsed().as_secs_f64()
    );
}
