//! `plinth-agent --diagnose URL` inside network namespaces of a lab, where `ip netns exec`
//! gives it the namespace's own /sys/class/net, /proc/net and /etc/resolv.conf: each step is
//! broken for real (a peer set down, an address flushed, a route missing, a name nobody
//! resolves, a port nobody listens on) and the agent must name it. Nothing leaves the lab:
//! the client namespace's only link is a veth to the server namespace, and its resolv.conf
//! names an address there where nothing listens (`/etc/netns/NS/resolv.conf`, removed after).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_testkit::netns::{Lab, Ns};

const AGENT: &str = env!("CARGO_BIN_EXE_plinth-agent");

/// `plinth-agent --diagnose URL` in `ns`: (it answered, what it printed).
fn diagnose(lab: &Lab, ns: &Ns, url: &str) -> (bool, String) {
    let out = lab
        .run_timeout(ns, AGENT, &["--diagnose", url], Duration::from_secs(40))
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn ip(lab: &Lab, ns: &Ns, args: &[&str]) {
    let out = lab.run(ns, "ip", args).unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files `ip netns exec` mounts over /etc for one namespace; removed on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn new(ns: &Ns, files: &[(&str, &str)]) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        NetnsEtc(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
        // (only when empty: another test's namespace may have its own)
        std::fs::remove_dir("/etc/netns").ok();
    }
}

#[test]
fn each_step_is_named_in_a_lab() {
    let mut lab = Lab::new().unwrap();
    let cli = lab.namespace("cli").unwrap();
    let srv = lab.namespace("srv").unwrap();
    let (vc, vs) = lab.link(&cli, &srv).unwrap();
    lab.addr(&cli, &vc, "10.99.0.2/24").unwrap();
    lab.addr(&srv, &vs, "10.99.0.1/24").unwrap();
    let _etc = NetnsEtc::new(
        &cli,
        &[
            ("resolv.conf", "nameserver 10.99.0.1\n"),
            ("hosts", "127.0.0.1 localhost\n10.99.0.1 plinth-api.lab\n"),
        ],
    );

    // TCP: nothing listens yet.
    let (ok, out) = diagnose(&lab, &cli, "http://10.99.0.1:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains("TCP failed: 10.99.0.1:8080 refused the connection"),
        "{out}"
    );

    // HTTP: a real web server answers, 200 for / and 404 for what it does not have.
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut py = Command::new("python3");
    py.args([
        "-m",
        "http.server",
        "8080",
        "--bind",
        "10.99.0.1",
        "--directory",
    ])
    .arg(&www);
    let server = lab.spawn(&srv, py).unwrap();
    let started = Instant::now();
    let out = loop {
        let (ok, out) = diagnose(&lab, &cli, "http://10.99.0.1:8080/");
        if ok || started.elapsed() > Duration::from_secs(20) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.contains("answered HTTP 200"),
        "{out}\n{}",
        server.log_text()
    );
    let (ok, out) = diagnose(&lab, &cli, "http://10.99.0.1:8080/no-such-file");
    assert!(!ok, "{out}");
    assert!(
        out.contains("HTTP failed: the server answered HTTP 404 File not found"),
        "{out}"
    );
    // TLS: https to a server that speaks plain HTTP.
    let (ok, out) = diagnose(&lab, &cli, "https://10.99.0.1:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "TLS failed: 10.99.0.1:8080 accepts connections, but the TLS handshake failed"
        ),
        "{out}"
    );
    // A name from /etc/hosts resolves: every step passes.
    let (ok, out) = diagnose(&lab, &cli, "http://plinth-api.lab:8080/");
    assert!(ok, "{out}");

    // DNS: the namespace's nameserver is 10.99.0.1, where nothing listens on port 53.
    let (ok, out) = diagnose(&lab, &cli, "http://plinth-api.example.test:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains("DNS failed: plinth-api.example.test does not resolve ("),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "/etc/resolv.conf lists nameserver 10.99.0.1 (route 10.99.0.0/24 dev {vc})"
        )),
        "{out}"
    );

    // Route: no route to another network, and no default route.
    let (ok, out) = diagnose(&lab, &cli, "http://10.98.0.1:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "route failed: no route to 10.98.0.1 and no default route; the routes are: \
             10.99.0.0/24 dev {vc}"
        )),
        "{out}"
    );
    // With a default route the route step passes; the server does not forward, so the
    // connection gets no answer.
    lab.route(&cli, &["default", "via", "10.99.0.1"]).unwrap();
    let (ok, out) = diagnose(&lab, &cli, "http://10.98.0.1:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains("TCP failed: no answer from 10.98.0.1:8080 within 3 s")
            || out.contains("TCP failed: 10.98.0.1:8080 is unreachable"),
        "{out}"
    );

    // Link: the other end of the cable is down.
    ip(&lab, &srv, &["link", "set", &vs, "down"]);
    let (ok, out) = diagnose(&lab, &cli, "http://10.99.0.1:8080/");
    assert!(!ok, "{out}");
    // (the operstate follows the carrier a moment later: not asserted)
    assert!(
        out.contains(&format!(
            "link failed: no network interface has carrier (cable, switch port): \
             {vc} (carrier 0, operstate "
        )),
        "{out}"
    );
    ip(&lab, &srv, &["link", "set", &vs, "up"]);
    let started = Instant::now();
    while !String::from_utf8_lossy(
        &lab.run(&cli, "ip", &["-o", "link", "show", &vc])
            .unwrap()
            .stdout,
    )
    .contains("state UP")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{vc} stays down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Address: the lease is gone.
    ip(&lab, &cli, &["addr", "flush", "dev", &vc]);
    let (ok, out) = diagnose(&lab, &cli, "http://10.99.0.1:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "address failed: no IPv4 address on an interface that is up (no DHCP lease?); \
             up: {vc} (carrier 1, operstate up)"
        )),
        "{out}"
    );

    // Link again: our own interface set down.
    ip(&lab, &cli, &["link", "set", &vc, "down"]);
    let (ok, out) = diagnose(&lab, &cli, "http://10.99.0.1:8080/");
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "link failed: no network interface has carrier (cable, switch port): \
             {vc} (carrier unknown, operstate "
        )) && out.contains(", set down)"),
        "{out}"
    );
}

/// The agent itself, in inspect mode (its facts are this machine's, read-only) inside a
/// namespace with no route to plinth: every attempt and the final line name the route step,
/// and the token never shows.
#[test]
fn the_agent_names_the_step_on_every_attempt() {
    let mut lab = Lab::new().unwrap();
    let cli = lab.namespace("cli").unwrap();
    let srv = lab.namespace("srv").unwrap();
    let (vc, vs) = lab.link(&cli, &srv).unwrap();
    lab.addr(&cli, &vc, "10.99.0.2/24").unwrap();
    lab.addr(&srv, &vs, "10.99.0.1/24").unwrap();
    let token = "plinth_agentdiag_secret";
    let cmdline = lab.path("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "plinth.mode=inspect plinth.api=http://10.98.0.1:8080 plinth.machine=m \
             plinth.token={token} plinth.api_timeout=2"
        ),
    )
    .unwrap();
    let out = lab
        .run_timeout(
            &cli,
            AGENT,
            &["--cmdline", cmdline.to_str().unwrap()],
            Duration::from_secs(60),
        )
        .unwrap();
    let out =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "route failed: no route to 10.98.0.1 and no default route; the routes are: \
         10.99.0.0/24 dev {vc}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(&want) && l.contains("failed, trying again"))
            .count(),
        1,
        "{out}"
    );
    let last = out
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default();
    assert!(
        last.contains(&want) && last.contains("gave up after 2 attempts"),
        "{out}"
    );
    assert!(out.contains("result=failed"), "{out}");
    assert!(!out.contains(token), "the token is never printed: {out}");
}
