//! The listeners of `plinth serve` (issue 17 part 1): the management and provisioning
//! surfaces split apart, TLS on the management listener (HSTS, Secure cookies, the CLI's CA
//! file, a certificate read again on SIGHUP) and on a provisioning HTTPS listener. The real
//! binary, curl and openssl's certificates, all on loopback.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::serve::{Serve, create_token, free_port, free_ports, json, serve_in_ns};

/// `curl -i` with `args`: (status, lower-cased head, body, curl's stderr); status 0 when curl
/// got no HTTP answer (a refused handshake).
fn curl(args: &[&str]) -> (u16, String, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        head.to_ascii_lowercase(),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn images_root(dir: &Path) -> String {
    let root = dir.join("images");
    std::fs::create_dir_all(root.join("plinth")).unwrap();
    std::fs::write(root.join("plinth/hello.txt"), "hello boot\n").unwrap();
    root.display().to_string()
}

const MAC: &str = "52:54:00:aa:17:01";

#[test]
fn split_listeners_serve_only_their_own_routes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let [mgmt, boot] = free_ports();
    let (m, b) = (
        format!("http://127.0.0.1:{mgmt}"),
        format!("http://127.0.0.1:{boot}"),
    );
    let images = images_root(state);
    let serve = Serve::start_on(
        state,
        Some(&db.url),
        &format!("127.0.0.1:{mgmt}"),
        &[
            ("PLINTH_BOOT__LISTEN", &format!("127.0.0.1:{boot}")),
            ("PLINTH_IMAGES__ROOT", &images),
            (
                "PLINTH_HTTP__TRUSTED_PROXIES",
                "[\"10.1.2.3\", \"fd00::/64\"]",
            ),
        ],
        &m,
    );
    let admin = create_token(state, Some(&db.url), "ops", "admin");
    let auth = format!("Authorization: Bearer {admin}");
    let machine = json(&serve.cli_ok(
        &admin,
        &[
            "machine",
            "enroll",
            "--hostname",
            "split-1",
            "--nic",
            MAC,
            "-o",
            "json",
        ],
    ));
    let id = machine["id"].as_str().unwrap();
    let inspection = format!("/api/v1/machines/{id}/inspection");

    // The provisioning routes are not on the management listener.
    for path in [
        format!("/boot/ipxe?mac={MAC}"),
        "/boot/plinth/hello.txt".to_owned(),
        "/metadata/i-1/meta-data".to_owned(),
    ] {
        let (status, _, _, _) = curl(&[&format!("{m}{path}")]);
        assert_eq!(status, 404, "{path} on the management listener");
    }
    let (status, _, body, _) = curl(&["-X", "POST", "-d", "{}", &format!("{m}{inspection}")]);
    assert_eq!(status, 404, "the agent's endpoint on management: {body}");
    let (status, _, _, _) = curl(&["-H", &auth, &format!("{m}/api/v1/machines")]);
    assert_eq!(status, 200);
    let (status, _, _, _) = curl(&[&format!("{m}/login")]);
    assert_eq!(status, 200);

    // The management API and UI are not on the provisioning listener.
    for path in [
        "/api/v1/machines",
        "/api/v1/openapi.json",
        "/login",
        "/",
        "/racks",
    ] {
        let (status, _, _, _) = curl(&["-H", &auth, &format!("{b}{path}")]);
        assert_eq!(status, 404, "{path} on the provisioning listener");
    }
    let (status, _, _, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-d",
        "{}",
        &format!("{b}/api/v1/machines/{id}/actions/inspect"),
    ]);
    assert_eq!(
        status, 404,
        "a lifecycle action on the provisioning listener"
    );
    // ... which serves its own: boot files (the sendfile path), scripts, the agent's endpoints.
    let (status, _, body, _) = curl(&[&format!("{b}/boot/plinth/hello.txt")]);
    assert_eq!((status, body.as_str()), (200, "hello boot\n"));
    let (status, _, body, _) = curl(&[&format!("{b}/boot/ipxe?mac={MAC}")]);
    assert_eq!(status, 200);
    assert!(body.starts_with("#!ipxe"), "{body}");
    let (status, _, body, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &format!("{b}{inspection}"),
    ]);
    assert_eq!(
        status, 401,
        "served, and refused without an agent token: {body}"
    );
    for base in [&m, &b] {
        let (status, _, _, _) = curl(&[&format!("{base}/healthz")]);
        assert_eq!(status, 200);
    }

    // A forwarded https from a peer that is not a trusted proxy changes nothing.
    let (status, head, _, _) = curl(&[
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "Forwarded: for=1.2.3.4;proto=https",
        &format!("{m}/login"),
    ]);
    assert_eq!(status, 200);
    assert!(head.contains("set-cookie"), "{head}");
    assert!(
        !head.contains("secure"),
        "no Secure cookie over plain HTTP: {head}"
    );
    assert!(!head.contains("strict-transport-security"), "{head}");
    assert!(
        !serve.log_text().contains("plain HTTP on a network address"),
        "loopback is not warned about"
    );
}

#[test]
fn management_over_tls_and_its_certificate_read_again_on_sighup() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let ca = plinth_testkit::sushy::TestCa::new().unwrap();
    let ca_file = ca.ca_file().display().to_string();
    // The files plinth reads, replaced later by a renewal.
    let (cert, key) = (state.join("mgmt.pem"), state.join("mgmt.key"));
    std::fs::copy(&ca.cert, &cert).unwrap();
    std::fs::copy(&ca.key, &key).unwrap();
    let [mgmt, boot, boot_tls] = free_ports();
    let images = images_root(state);
    let mut serve = Serve::start_on(
        state,
        Some(&db.url),
        &format!("127.0.0.1:{mgmt}"),
        &[
            ("PLINTH_HTTP__TLS_CERT", &cert.display().to_string()),
            ("PLINTH_HTTP__TLS_KEY", &key.display().to_string()),
            ("PLINTH_BOOT__LISTEN", &format!("127.0.0.1:{boot}")),
            ("PLINTH_BOOT__TLS_LISTEN", &format!("127.0.0.1:{boot_tls}")),
            ("PLINTH_BOOT__TLS_CERT", &ca.cert.display().to_string()),
            ("PLINTH_BOOT__TLS_KEY", &ca.key.display().to_string()),
            ("PLINTH_IMAGES__ROOT", &images),
        ],
        &format!("http://127.0.0.1:{boot}"),
    );
    let m = format!("https://127.0.0.1:{mgmt}");
    serve.url = m.clone();
    let admin = create_token(state, Some(&db.url), "ops", "admin");

    // HTTPS, checked against the CA: HSTS, and the cookies are Secure.
    let (status, head, _, err) = curl(&["-v", "--cacert", &ca_file, &format!("{m}/login")]);
    assert_eq!(status, 200, "{err}");
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    assert!(head.contains("; secure"), "{head}");
    assert!(err.contains("CN=127.0.0.1"), "{err}");
    // Not without the CA, and not in plain HTTP.
    let (status, _, _, err) = curl(&[&format!("{m}/healthz")]);
    assert_eq!(status, 0, "an unknown issuer is refused by curl: {err}");
    let (status, _, _, _) = curl(&[&format!("http://127.0.0.1:{mgmt}/healthz")]);
    assert_eq!(status, 0, "no plain HTTP on the TLS listener");
    // The plain provisioning listener sends no HSTS, whatever a client forwards.
    let (status, head, _, _) = curl(&[
        "-H",
        "X-Forwarded-Proto: https",
        &format!("http://127.0.0.1:{boot}/healthz"),
    ]);
    assert_eq!(status, 200);
    assert!(!head.contains("strict-transport-security"), "{head}");

    // The CLI: refused without the CA, fine with PLINTH_CA_FILE or --ca-file.
    let out = serve.cli(&admin, &["machine", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("issuer"),
        "{err}"
    );
    let out = serve.cli_env(
        &admin,
        &["machine", "list", "-o", "json"],
        &[("PLINTH_CA_FILE", &ca_file)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serve.cli_ok(&admin, &["rack", "list", "--ca-file", &ca_file]);
    let junk = state.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let out = serve.cli(
        &admin,
        &["rack", "list", "--ca-file", &junk.display().to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.pem") && err.contains("no PEM certificate"),
        "{err}"
    );

    // The provisioning HTTPS listener: boot files and scripts, not the management API.
    let bt = format!("https://127.0.0.1:{boot_tls}");
    let (status, _, body, err) =
        curl(&["--cacert", &ca_file, &format!("{bt}/boot/plinth/hello.txt")]);
    assert_eq!((status, body.as_str()), (200, "hello boot\n"), "{err}");
    let (status, _, body, _) = curl(&["--cacert", &ca_file, &format!("{bt}/boot/ipxe?mac={MAC}")]);
    assert_eq!(status, 200);
    assert!(body.starts_with("#!ipxe"), "{body}");
    let (status, _, _, _) = curl(&[
        "--cacert",
        &ca_file,
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{bt}/api/v1/machines"),
    ]);
    assert_eq!(status, 404);

    // A renewed certificate, read again on SIGHUP, without a restart.
    let (new_cert, new_key) = ca.leaf("renewed", "plinth renewed").unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    serve.signal("HUP");
    let subject = || curl(&["-v", "--cacert", &ca_file, &format!("{m}/healthz")]).3;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subject().contains("CN=plinth renewed") {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served:\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file is refused on SIGHUP and the certificate in use stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    serve.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !serve.log_text().contains("not read again") {
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, _, err) = curl(&["-v", "--cacert", &ca_file, &format!("{m}/healthz")]);
    assert_eq!(status, 200, "{err}");
    assert!(err.contains("CN=plinth renewed"), "{err}");
    serve.stop();
}

#[test]
fn tls_without_a_provisioning_listener_of_its_own_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = plinth_testkit::sushy::TestCa::new().unwrap();
    let out = Command::new(crate::support::BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("PLINTH_STATE_DIR", dir.path())
        .env("PLINTH_DATABASE__URL", "postgres://nobody@127.0.0.1:1/none")
        .env("PLINTH_HTTP__TLS_CERT", &ca.cert)
        .env("PLINTH_HTTP__TLS_KEY", &ca.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("boot.listen"), "{err}");
}

/// The management API in plain HTTP on a network address (here the address of a namespace's
/// interface, nothing on this machine's own network) is warned about at start.
#[test]
fn plain_http_management_on_a_network_address_is_warned_about() {
    use plinth_testkit::netns::Lab;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let mut lab = Lab::new().unwrap();
    let a = lab.namespace("a").unwrap();
    let b = lab.namespace("b").unwrap();
    let (a_if, _) = lab.link(&a, &b).unwrap();
    lab.addr(&a, &a_if, "10.69.0.2/24").unwrap();
    let proc = serve_in_ns(
        &mut lab,
        &a,
        &db.url,
        "10.69.0.2:8080",
        &[("PLINTH_BOOT__LISTEN", "127.0.0.1:8081")],
        "plinth is serving",
    );
    let log = proc.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plain HTTP on a network address"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("10.69.0.2:8080"), "{}", warned[0]);
    // The provisioning listener, and a loopback one, are not what the warning is about.
    assert!(!warned[0].contains("8081"));
}
