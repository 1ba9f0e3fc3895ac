//! BIOS settings end to end (issue 21): the real `plinth serve` runs the BIOS jobs against the
//! test kit's Redfish BMC, driven through the CLI as a technician does: a change applied at
//! the reboot and read back, a BMC that silently drops one attribute (the command fails naming
//! it), and the profiles.

use plinth_testkit::redfish::RedfishEmulator;

use crate::support::serve::{BMC_PASSWORD as PASSWORD, Serve, create_token, enroll_with_bmc, json};

const FAST: &[(&str, &str)] = &[
    ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
    ("PLINTH_BMC__BACKOFF_MAX_SECS", "2"),
    ("PLINTH_BMC__LEASE_SECS", "5"),
];

#[test]
fn bios_through_the_cli_against_the_test_kits_bmc() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let bmc = rt
        .block_on(RedfishEmulator::start("admin", PASSWORD))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), Some(&db.url), FAST);
    let token = create_token(dir.path(), Some(&db.url), "tech", "admin");
    let id = enroll_with_bmc(
        &serve,
        &token,
        "bios-1",
        "52:54:00:b1:05:01",
        "redfish",
        &bmc.url(),
        PASSWORD,
    );

    // A change, waited for: set, boot, read back.
    let out = serve.cli_ok(
        &token,
        &[
            "machine",
            "bios",
            &id,
            "--set",
            "BootMode=Bios",
            "--set",
            "NumCores=4",
            "--wait",
            "-o",
            "json",
        ],
    );
    let job = json(&out);
    assert_eq!(job["state"], "succeeded", "{out}");
    assert_eq!(bmc.bios()["BootMode"], "Bios");
    assert_eq!(bmc.bios()["NumCores"], 4, "sent as an integer");
    assert_eq!(bmc.power(), "Off", "off again, as it was");
    let shown = json(&serve.cli_ok(&token, &["machine", "bios", &id, "-o", "json"]));
    assert_eq!(shown["attributes"]["BootMode"], "Bios");
    assert_eq!(shown["registry"], true);
    let table = serve.cli_ok(&token, &["machine", "bios", &id]);
    assert!(
        table.contains("NumCores") && table.contains("last change"),
        "{table}"
    );

    // The BMC drops one attribute: the command fails and names it.
    bmc.bios_knobs(|k| k.drops = Some("SriovGlobalEnable".into()));
    let out = serve.cli(
        &token,
        &[
            "machine",
            "bios",
            &id,
            "--set",
            "SriovGlobalEnable=Enabled",
            "--set",
            "ProcTurboMode=Disabled",
            "--wait",
        ],
    );
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SriovGlobalEnable: asked Enabled, reads Disabled"),
        "{text}"
    );
    // Refused before the BMC is asked: an attribute its registry lacks.
    let out = serve.cli(&token, &["machine", "bios", &id, "--set", "BootMod=Bios"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("BootMod: the BMC's attribute registry has no such attribute"),
        "{out:?}"
    );

    // Profiles.
    serve.cli_ok(
        &token,
        &[
            "bios-profile",
            "add",
            "hpc",
            "--set",
            "ProcTurboMode=Enabled",
        ],
    );
    serve.cli_ok(&token, &["bios-profile", "assign", "default", "hpc"]);
    let list = serve.cli_ok(&token, &["bios-profile", "list"]);
    assert!(
        list.contains("hpc") && list.contains("ProcTurboMode=Enabled") && list.contains("default"),
        "{list}"
    );
    let out = serve.cli(&token, &["bios-profile", "remove", "hpc"]);
    assert!(!out.status.success(), "in use");
    serve.cli_ok(&token, &["bios-profile", "assign", "default", "--none"]);
    serve.cli_ok(&token, &["bios-profile", "remove", "hpc"]);
    let all = json(&serve.cli_ok(&token, &["bios-profile", "list", "-o", "json"]));
    assert_eq!(all, serde_json::json!([]));
}
