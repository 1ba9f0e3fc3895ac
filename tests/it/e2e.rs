//! Cross-process end-to-end tests: the real `plinth` binary, its CLI, and its embedded
//! PostgreSQL, the way an operator runs them.

use std::path::Path;
use std::process::Command;

use crate::support::serve::{Serve, create_token, json};

fn postmaster_running(state_dir: &Path) -> bool {
    let pid_file = state_dir.join("postgres/data/postmaster.pid");
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let pid = text.lines().next().unwrap_or_default().trim().to_owned();
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn embedded_database_starts_from_nothing_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut serve = Serve::start(state, None);
    assert!(
        postmaster_running(state),
        "the embedded cluster runs under the state dir"
    );
    let token = create_token(state, None, "tech", "operator");
    let m = json(&serve.cli_ok(
        &token,
        &[
            "machine",
            "enroll",
            "--hostname",
            "keep-me",
            "--nic",
            "52:54:00:12:00:01",
            "-o",
            "json",
        ],
    ));
    assert_eq!(m["state"], "enrolled");
    serve.stop();
    assert!(
        !postmaster_running(state),
        "plinth serve stops its embedded database on shutdown"
    );

    let serve = Serve::start(state, None);
    let list = json(&serve.cli_ok(&token, &["machine", "list", "-o", "json"]));
    assert_eq!(
        list["machines"][0]["hostname"], "keep-me",
        "data and tokens survive the restart"
    );
    // The cluster listens on no TCP port: only a Unix socket in the state dir.
    let conf = std::fs::read_to_string(state.join("postgres/data/postmaster.pid")).unwrap();
    assert!(
        conf.contains(&state.join("postgres/run").display().to_string()),
        "{conf}"
    );
}

#[test]
fn cli_tour_against_a_real_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let serve = Serve::start(state, Some(&db.url));
    let admin = create_token(state, Some(&db.url), "ops-lead", "admin");

    let out = serve.cli_ok(
        &admin,
        &["rack", "add", "r7", "--height-u", "42", "--site", "fra2"],
    );
    assert!(out.contains("r7") && out.contains("0/42U"), "{out}");
    let out = serve.cli_ok(
        &admin,
        &["rack", "edit", "r7", "--room", "b2", "-o", "json"],
    );
    assert_eq!(
        (json(&out)["room"].as_str(), json(&out)["site"].as_str()),
        (Some("b2"), Some("fra2"))
    );
    let m = json(&serve.cli_ok(
        &admin,
        &[
            "machine",
            "enroll",
            "--hostname",
            "db-01",
            "--nic",
            "52:54:00:77:00:01,ipv4=10.7.0.1",
            "--rack",
            "r7",
            "--rack-unit",
            "5",
            "--size-u",
            "2",
            "--tag",
            "ssd",
            "-o",
            "json",
        ],
    ));
    let id = m["id"].as_str().unwrap().to_owned();
    // The boot method: the rack's, the machine's own, then the rack's again.
    let r = serve.cli_ok(
        &admin,
        &[
            "rack",
            "edit",
            "r7",
            "--boot-method",
            "virtual_media",
            "-o",
            "json",
        ],
    );
    assert_eq!(json(&r)["boot_method"], "virtual_media");
    let m = json(&serve.cli_ok(
        &admin,
        &[
            "machine",
            "edit",
            &id,
            "--boot-method",
            "network",
            "-o",
            "json",
        ],
    ));
    assert_eq!(
        (&m["boot_method"], &m["boot_method_setting"]),
        (&serde_json::json!("network"), &serde_json::json!("network"))
    );
    let m = json(&serve.cli_ok(
        &admin,
        &["machine", "edit", &id, "--rack-boot-method", "-o", "json"],
    ));
    assert_eq!(
        (&m["boot_method"], &m["boot_method_setting"]),
        (
            &serde_json::json!("virtual_media"),
            &serde_json::Value::Null
        )
    );
    let out = serve.cli(&admin, &["machine", "edit", &id, "--boot-method", "usb"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown boot method"));
    let table = serve.cli_ok(&admin, &["machine", "list"]);
    assert!(
        table.lines().next().unwrap().starts_with("ID")
            && table.contains("db-01")
            && table.contains("r7/U5"),
        "{table}"
    );

    // A refused transition: the API's message, non-zero exit.
    let out = serve.cli(&admin, &["machine", "action", &id, "deploy"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot deploy a machine that is enrolled")
            && err.contains("invalid_transition"),
        "{err}"
    );

    // A slot clash is refused with the API's message.
    let out = serve.cli(
        &admin,
        &[
            "machine",
            "enroll",
            "--nic",
            "52:54:00:77:00:02",
            "--rack",
            "r7",
            "--rack-unit",
            "6",
        ],
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("rack_slot_taken")
    );

    serve.cli_ok(
        &admin,
        &[
            "machine",
            "action",
            &id,
            "inspect",
            "--reason",
            "new hardware",
            "--if-version",
            "1",
        ],
    );
    let report = r#"{"cpu":{"model":"Xeon","cores":16,"threads":32},"memory_mib":131072,
        "disks":[{"name":"sda","size_bytes":1000000000000}],"nics":[{"name":"eno1","mac":"52:54:00:77:00:01"}],
        "system":{"vendor":"Acme","product":"S1","serial":"ACME-0001","uuid":"00000000-0000-0000-0000-000000000001"},
        "firmware":"bios","arch":"x86_64"}"#;
    let st = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {admin}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "-d",
            report,
            &format!("{}/api/v1/machines/{id}/inspection", serve.url),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let shown = serve.cli_ok(
        &admin,
        &["machine", "list", "--q", "ACME-0001", "-o", "json"],
    );
    assert_eq!(json(&shown)["machines"][0]["state"], "ready");

    let client = create_token(state, Some(&db.url), "ci-runner", "client");
    let a = json(&serve.cli_ok(
        &client,
        &["allocate", "--min-cpus", "16", "--tag", "ssd", "-o", "json"],
    ));
    assert_eq!(a["machines"][0]["hostname"], "db-01");
    let out = serve.cli(&client, &["allocate"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("insufficient_capacity")
    );
    let out = serve.cli_ok(&client, &["release", a["id"].as_str().unwrap()]);
    assert!(out.contains("released"), "{out}");
    let shown = json(&serve.cli_ok(&admin, &["machine", "show", &id, "-o", "json"]));
    assert_eq!(shown["state"], "cleaning");

    let events = serve.cli_ok(&admin, &["machine", "events", &id]);
    for kind in [
        "enroll",
        "inspect",
        "inspect_complete",
        "allocate",
        "release",
    ] {
        assert!(events.contains(kind), "{kind} missing from\n{events}");
    }
    assert!(
        events.contains("ci-runner") && events.contains("ops-lead"),
        "actors are token names:\n{events}"
    );

    let out = serve.cli("not-a-token", &["rack", "list"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unauthorized"));

    // A reader that went away (`plinth machine events ID | head -1` after head exits) ends
    // the client by SIGPIPE at its first write, quietly, as any Unix tool: no panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(crate::support::BIN)
        .args(["machine", "events", &id])
        .env("PLINTH_API_URL", &serve.url)
        .env("PLINTH_TOKEN", &admin)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn image_catalog_from_the_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let root = state.join("images");
    std::fs::create_dir_all(root.join("plinth")).unwrap();
    std::fs::write(root.join("plinth/vmlinuz"), b"a kernel").unwrap();
    let serve = Serve::start(state, Some(&db.url));
    let admin = create_token(state, Some(&db.url), "ops", "admin");

    let k = json(&serve.cli_ok(
        &admin,
        &[
            "image",
            "add",
            "kern",
            "--kind",
            "kernel",
            "--path",
            "plinth/vmlinuz",
            "-o",
            "json",
        ],
    ));
    assert_eq!(k["size"], 8);
    assert_eq!(k["source"], "registered");

    // An upload of a few MiB, streamed; the CLI hashes it first and the server checks.
    let local = state.join("disk.raw");
    let data: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let d = json(&serve.cli_ok(
        &admin,
        &[
            "image",
            "add",
            "disk",
            "--kind",
            "disk-image",
            "--arch",
            "any",
            "--file",
            local.to_str().unwrap(),
            "-o",
            "json",
        ],
    ));
    assert_eq!(d["path"], "uploads/disk");
    assert!(std::fs::read(root.join("uploads/disk")).unwrap() == data);
    let bad = serve.cli(
        &admin,
        &[
            "image",
            "add",
            "disk2",
            "--kind",
            "disk-image",
            "--file",
            local.to_str().unwrap(),
            "--sha256",
            &"0".repeat(64),
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("checksum_mismatch"),
        "{bad:?}"
    );
    assert!(!root.join("uploads/disk2").exists());

    let list = serve.cli_ok(&admin, &["image", "list"]);
    assert!(
        list.contains("kern") && list.contains("disk") && list.contains("3.0 MiB"),
        "{list}"
    );
    let show = serve.cli_ok(&admin, &["image", "show", "disk"]);
    assert!(
        show.contains("disk-image") && show.contains("uploaded"),
        "{show}"
    );
    serve.cli_ok(&admin, &["image", "rm", "disk"]);
    assert!(!root.join("uploads/disk").exists());
    let gone = serve.cli(&admin, &["image", "show", "disk"]);
    assert!(!gone.status.success());
}

#[test]
fn tokens_are_made_listed_and_revoked_from_the_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let serve = Serve::start(state, Some(&db.url));
    let admin = create_token(state, Some(&db.url), "root", "admin");
    let out = serve.cli(
        &admin,
        &[
            "token",
            "create",
            "nightly",
            "--role",
            "viewer",
            "--expires-in",
            "30d",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(secret.lines().count(), 1, "only the secret on stdout");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("nightly") && note.contains("expires"),
        "{note}"
    );
    // The new token works, as a viewer.
    serve.cli_ok(&secret, &["machine", "list"]);
    let out = serve.cli(&secret, &["rack", "add", "r1", "--height-u", "42"]);
    assert!(!out.status.success());

    let list = serve.cli_ok(&admin, &["token", "list"]);
    let row = list.lines().find(|l| l.starts_with("nightly")).unwrap();
    assert!(row.contains("viewer") && row.contains("live"), "{row}");
    assert!(!row.trim_end().ends_with('-'), "an expiry is shown: {row}");
    let json_list = json(&serve.cli_ok(&admin, &["token", "list", "-o", "json"]));
    let t = json_list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "nightly")
        .unwrap();
    assert!(t["expires_at"].is_string(), "{t}");

    let out = serve.cli(
        &admin,
        &[
            "token",
            "create",
            "x",
            "--role",
            "viewer",
            "--expires-in",
            "30",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit"));

    let out = serve.cli_ok(&admin, &["token", "revoke", "nightly"]);
    assert!(out.contains("revoked"), "{out}");
    let out = serve.cli(&secret, &["machine", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
