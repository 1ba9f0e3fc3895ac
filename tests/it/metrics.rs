//! `GET /metrics` of a real `plinth serve` with DHCP and TFTP on a namespace's link: a real
//! DHCP client's exchange and a TFTP fetch show in the counters, the database's counts
//! (machines by state, leases) in the gauges, and Prometheus' own `promtool check metrics`
//! accepts the text. A scrape needs a token that reads the inventory or an address of
//! `http.metrics_allow`.

use std::process::{Command, Stdio};

use plinth_core::Principal;
use plinth_testkit::dhcp_clients::{self, Client};
use plinth_testkit::netns::{Lab, Ns};
use plinth_types::api::*;

use crate::support::env::Env;
use crate::support::serve::{create_token, serve_in_ns};

/// `curl` in `ns`: (HTTP status, body).
fn get(lab: &Lab, ns: &Ns, url: &str, token: Option<&str>) -> (u16, String) {
    let mut args = vec!["-sS", "-w", "\n%{http_code}", url];
    let header;
    if let Some(t) = token {
        header = format!("Authorization: Bearer {t}");
        args.extend(["-H", &header]);
    }
    let out = lab.run(ns, "curl", &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

/// The value of the sample `series` (its name and labels exactly as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_happened_and_promtool_accepts_them() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s, c) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s, "10.67.0.2/24").unwrap();
    env.subnet("10.67.0.0/24", "10.67.0.100", "10.67.0.149", None, &[]);
    let machine = env
        .rt
        .block_on(env.app.enroll_machine(
            &Principal::system(),
            MachineCreate {
                hostname: Some("scraped".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: "52:54:00:67:00:01".parse().unwrap(),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: None,
            },
        ))
        .unwrap()
        .id;
    let root = lab.path("images");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.bin"), vec![7u8; 3000]).unwrap();
    let interfaces = format!("[\"{s}\"]");
    let root_s = root.display().to_string();
    let server = serve_in_ns(
        &mut lab,
        &srv,
        &env.db.url,
        "0.0.0.0:8080",
        &[
            ("PLINTH_DHCP__ENABLED", "true"),
            ("PLINTH_DHCP__INTERFACES", &interfaces),
            ("PLINTH_DHCP__BOOT_SERVER", "10.67.0.2"),
            ("PLINTH_TFTP__ENABLED", "true"),
            ("PLINTH_TFTP__LISTEN", "10.67.0.2:69"),
            ("PLINTH_IMAGES__ROOT", &root_s),
            ("PLINTH_HTTP__METRICS_ALLOW", "[\"10.67.0.2/32\"]"),
        ],
        "TFTP is serving",
    );

    let lease = dhcp_clients::obtain(&mut lab, &cli, &c, Client::Udhcpc).unwrap();
    let fetched = lab.path("hello.out");
    let out = lab
        .run(
            &cli,
            "curl",
            &[
                "-sS",
                "tftp://10.67.0.2/hello.bin",
                "-o",
                fetched.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&fetched).unwrap().len(), 3000);
    // Its boot script (an enrolled machine: wait), and a request that is refused.
    let (code, script) = get(
        &lab,
        &cli,
        "http://10.67.0.2:8080/boot/ipxe?mac=52:54:00:67:00:01&platform=pcbios",
        None,
    );
    assert_eq!(code, 200, "{script}");
    assert!(script.starts_with("#!ipxe"), "{script}");
    let (code, refused) = get(&lab, &cli, "http://10.67.0.2:8080/boot/ipxe?mac=zz", None);
    assert_eq!(code, 400, "{refused}");

    // Who may scrape: the allowed address without a token; others with a token that reads
    // the inventory, not a client's.
    let url = "http://10.67.0.2:8080/metrics";
    // serve_in_ns's state directory: tokens are made against the same database.
    let state = lab.path("state");
    let viewer = create_token(&state, Some(&env.db.url), "prometheus", "viewer");
    let client = create_token(&state, Some(&env.db.url), "tenant", "client");
    assert_eq!(get(&lab, &cli, url, None).0, 401, "{}", lease.ip);
    assert_eq!(get(&lab, &cli, url, Some(&client)).0, 403);
    // A transition and an inspection report through this instance's API, and one refused
    // (before the first scrape that reads the database: scrapes within 10 s share its counts).
    let operator = create_token(&state, Some(&env.db.url), "tech", "operator");
    let post = |path: &str, body: &str, token: &str| {
        let out = lab
            .run(
                &cli,
                "curl",
                &[
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    "-H",
                    "content-type: application/json",
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    "-d",
                    body,
                    &format!("http://10.67.0.2:8080/api/v1/machines/{machine}/{path}"),
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(post("actions/inspect", "{}", &operator), "200");
    let report = r#"{"cpu":{"model":"Xeon","cores":4,"threads":8},"memory_mib":4096,"disks":[{"name":"sda","size_bytes":8000000000}],"nics":[{"name":"eth0","mac":"52:54:00:67:00:01"}],"system":{"vendor":"QEMU","product":"Standard PC","serial":"S1","uuid":"4c4c4544-0000-0000-0000-000000000001"},"firmware":"bios","arch":"x86_64"}"#;
    assert_eq!(post("inspection", report, "not-a-token"), "401");
    assert_eq!(post("inspection", report, &operator), "200");
    let (code, text) = get(&lab, &cli, url, Some(&viewer));
    assert_eq!(code, 200, "{text}");
    let (code, allowed) = get(&lab, &srv, url, None);
    assert_eq!(code, 200, "{allowed}");

    // What happened is in it.
    for (series, at_least) in [
        ("plinth_dhcp_replies_total{type=\"offer\"}", 1.0),
        ("plinth_dhcp_replies_total{type=\"ack\"}", 1.0),
        ("plinth_dhcp_packets_received_total", 2.0),
        ("plinth_tftp_transfers_total{outcome=\"completed\"}", 1.0),
        ("plinth_tftp_sent_bytes_total", 3000.0),
        (
            "plinth_dhcp_leases{subnet=\"10.67.0.0/24\",state=\"bound\"}",
            1.0,
        ),
        (
            "plinth_machines{state=\"ready\",maintenance=\"false\"}",
            1.0,
        ),
        ("plinth_db_up", 1.0),
        ("plinth_db_errors_total{kind=\"unavailable\"}", 0.0),
        ("plinth_dhcp_batch_size_count", 2.0),
        (
            "plinth_transitions_total{verb=\"inspect\",to=\"inspecting\"}",
            1.0,
        ),
        (
            "plinth_agent_reports_total{kind=\"inspection\",outcome=\"accepted\"}",
            1.0,
        ),
        (
            "plinth_agent_reports_total{kind=\"inspection\",outcome=\"refused\"}",
            1.0,
        ),
        ("plinth_dhcp_pool_addresses{subnet=\"10.67.0.0/24\"}", 50.0),
        ("plinth_boot_scripts_total{script=\"refused\"}", 1.0),
        (
            "plinth_dhcp_decision_duration_seconds_bucket{le=\"+Inf\"}",
            2.0,
        ),
    ] {
        let v = value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(
            v >= at_least,
            "{series} = {v}, expected at least {at_least}"
        );
    }
    assert_eq!(
        value(
            &text,
            "plinth_dhcp_leases{subnet=\"10.67.0.0/24\",state=\"bound\"}"
        ),
        Some(1.0)
    );
    // The one script answered is counted once, whichever path answered it; the listener
    // answered both requests (the script and the refusal) itself.
    let scripts: f64 = ["ramdisk", "localboot", "poweroff", "wait"]
        .iter()
        .map(|s| {
            value(
                &text,
                &format!("plinth_boot_scripts_total{{script=\"{s}\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(scripts, 1.0, "{text}");
    assert_eq!(
        value(
            &text,
            "plinth_http_ipxe_scripts_total{listener=\"0.0.0.0:8080\"}"
        ),
        Some(2.0),
        "{text}"
    );

    // Prometheus' own linter accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    drop(server);
}

/// Every `plinth_...` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("plinth_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // A histogram's series belong to its family.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        // (Not the bare prefix of a sentence about names.)
        if !family.ends_with('_') {
            out.insert(family.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// The alerting rules and the Grafana dashboard shipped in docs/prometheus: promtool checks
/// the rules and runs their unit tests (each alert fires on the series it is about, with its
/// labels and text); every dashboard query is valid PromQL (checked by promtool as a
/// recording rule); and every metric they use is one docs/api.md lists, each of which plinth
/// emits (its name is in the sources that render metrics).
#[test]
fn the_alerts_and_the_dashboard_are_valid_and_use_real_metrics() {
    use crate::support::repo;
    let dir = repo().join("docs/prometheus");
    let promtool = |args: &[&str]| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().replace("$instance", ".*"))
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let tmp = tempfile::tempdir().unwrap();
    let rules = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard_query_{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect::<String>();
    let file = tmp.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);

    let used = metric_names(
        &(exprs.join("\n") + &std::fs::read_to_string(dir.join("alerts.yml")).unwrap()),
    );
    let api = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    let section = &api[api.find("## Metrics").unwrap()..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let documented = metric_names(section);
    let not_documented: Vec<_> = used.difference(&documented).collect();
    assert!(
        not_documented.is_empty(),
        "used but not in docs/api.md: {not_documented:?}"
    );
    let sources = [
        "crates/plinth-core/src/metrics.rs",
        "crates/plinth-dhcp/src/server.rs",
        "crates/plinth/src/tftp.rs",
        "crates/plinth-api/src/fastpath/mod.rs",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(repo().join(f)).unwrap())
    .collect::<String>();
    for name in &documented {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "docs/api.md lists {name}, which no source renders"
        );
    }
}
