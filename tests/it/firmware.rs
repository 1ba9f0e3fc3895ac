//! Firmware end to end (issue 21): the real `plinth serve` (its job runner, its reconciler)
//! and the test kit's Redfish BMC, driven through the CLI: an image uploaded and described,
//! an update the BMC fetches from plinth's per-job URL and that plinth reads back, the
//! inventory shown, and a rollout that stops when the BMC says done and keeps its version.

use std::time::{Duration, Instant};

use plinth_testkit::redfish::{RedfishEmulator, firmware_image};

use crate::support::serve::{
    BMC_PASSWORD as PASSWORD, Serve, create_token, enroll_with_bmc, free_port, json,
};

#[test]
fn an_update_and_a_rollout_through_the_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", PASSWORD))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let serve = Serve::start_on(
        dir.path(),
        Some(&db.url),
        &listen,
        &[
            ("PLINTH_BOOT__PUBLIC_URL", url.as_str()),
            // A BMC that keeps its old version is judged after this long.
            ("PLINTH_BMC__POWER_WAIT_SECS", "5"),
        ],
        &url,
    );
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let id = enroll_with_bmc(
        &serve,
        &token,
        "fw-1",
        "52:54:00:f1:00:01",
        "redfish",
        &bmc.url(),
        PASSWORD,
    );
    // Firmware is updated in ready or in maintenance.
    serve.cli_ok(
        &token,
        &[
            "machine",
            "action",
            &id,
            "maintenance_on",
            "--reason",
            "firmware",
        ],
    );
    for (name, version) in [("bios-1.1.0", "1.1.0"), ("bios-1.2.0", "1.2.0")] {
        let file = dir.path().join(format!("{name}.bin"));
        std::fs::write(&file, firmware_image("bios", version, 100_000)).unwrap();
        serve.cli_ok(
            &token,
            &[
                "image",
                "add",
                name,
                "--kind",
                "firmware",
                "--arch",
                "any",
                "--file",
                file.to_str().unwrap(),
            ],
        );
        let out = serve.cli_ok(
            &token,
            &[
                "firmware",
                "describe",
                name,
                "--component",
                "bios",
                "--version",
                version,
            ],
        );
        assert!(out.contains(&format!("installs bios {version}")), "{out}");
    }

    serve.cli_ok(
        &token,
        &[
            "machine",
            "firmware",
            &id,
            "--update",
            "bios-1.1.0",
            "--wait",
        ],
    );
    let got = bmc.firmware_received();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].0.starts_with(&format!("{url}/firmware/")),
        "{}",
        got[0].0
    );
    let inv = json(&serve.cli_ok(&token, &["machine", "firmware", &id, "-o", "json"]));
    let bios = inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "bios")
        .unwrap()
        .clone();
    assert_eq!(bios["version"], "1.1.0");
    let table = serve.cli_ok(&token, &["machine", "firmware", &id]);
    assert!(
        table.contains("System BIOS") && table.contains("1.1.0"),
        "{table}"
    );

    // A rollout of 1.2.0 to a BMC that says done and keeps 1.1.0: it fails, with the reason.
    bmc.firmware(|k| k.keep_old_version = true);
    let r = json(&serve.cli_ok(
        &token,
        &[
            "firmware",
            "rollout",
            "create",
            "bios-1.2.0",
            "--machine",
            &id,
            "-o",
            "json",
        ],
    ));
    let rid = r["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(150);
    let r = loop {
        let r = json(&serve.cli_ok(&token, &["firmware", "rollout", "show", &rid, "-o", "json"]));
        if r["state"] != "running" {
            break r;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(r["state"], "failed", "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("BMC reported success but BIOS still reads 1.1.0 (expected 1.2.0)"),
        "{r:#}"
    );
    let list = serve.cli_ok(&token, &["firmware", "rollout", "list"]);
    assert!(list.contains(&rid) && list.contains("failed"), "{list}");
}
