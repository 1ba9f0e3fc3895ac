//! The network-namespace lab against the real programs: ping over veth, dnsmasq serving
//! dhclient, udhcpc and dhcpcd, a relayed lease through dhcrelay, perfdhcp, and clean-up
//! (also after a panic). Needs root and the packages in ../PACKAGES.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_testkit::dhcp_clients::{
    self, Client, DhcpRange, Options, dnsmasq, dnsmasq_leases, dnsmasq_with, obtain, obtain_with,
    perfdhcp, relay, release, renew,
};
use plinth_testkit::netns::{Lab, Ns};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(lab: &Lab, from: &Ns, to: &str) -> bool {
    let out = lab
        .run_timeout(from, "ping", &["-c1", "-W1", to], Duration::from_secs(5))
        .unwrap();
    out.status.success()
}

#[test]
fn veth_pair_pings_and_everything_is_removed_on_drop() {
    let mut lab = Lab::new().unwrap();
    let a = lab.namespace("a").unwrap();
    let b = lab.namespace("b").unwrap();
    assert!(a.name.len() <= 15 && b.name.len() <= 15);
    assert_ne!(a.name, b.name);
    let (ia, ib) = lab.link(&a, &b).unwrap();
    assert!(ia.len() <= 15 && ib.len() <= 15);
    lab.addr(&a, &ia, "10.99.0.1/24").unwrap();
    lab.addr(&b, &ib, "10.99.0.2/24").unwrap();
    assert!(ping(&lab, &a, "10.99.0.2"));
    assert!(ping(&lab, &b, "10.99.0.1"));

    // A bridge with the veth end and a tap (the VM topology), a route, a sysctl.
    let tap = lab.tap(&b).unwrap();
    let br = lab.bridge(&b, &[&ib, &tap]).unwrap();
    lab.run(&b, "ip", &["addr", "flush", "dev", &ib]).unwrap();
    lab.addr(&b, &br, "10.99.0.2/24").unwrap();
    lab.route(&b, &["10.99.5.0/24", "via", "10.99.0.1"])
        .unwrap();
    lab.sysctl(&a, "net.ipv4.ip_forward", "1").unwrap();
    let fwd = lab
        .run(&a, "cat", &["/proc/sys/net/ipv4/ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    assert!(lab.sysctl(&a, "kernel.hostname", "x").is_err());
    eventually("ping over the bridge", Duration::from_secs(5), || {
        ping(&lab, &a, "10.99.0.2")
    });

    // A namespace that is not the lab's is refused.
    let stranger = Ns {
        name: "not-ours".into(),
    };
    assert!(lab.run(&stranger, "true", &[]).is_err());

    // A long-running process, killed on drop with everything else.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("600");
    let proc = lab.spawn(&a, sleeper).unwrap();
    assert!(proc.is_running());

    let names: Vec<String> = lab.namespaces().to_vec();
    let pid = proc.pid;
    drop(lab);
    let list = netns_list();
    for name in &names {
        assert!(!list.contains(name.as_str()), "{name} left in:\n{list}");
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn dropping_the_lab_while_panicking_still_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let mut lab = Lab::new().unwrap();
        let srv = lab.namespace("srv").unwrap();
        let cli = lab.namespace("cli").unwrap();
        let (s, _c) = lab.link(&srv, &cli).unwrap();
        lab.addr(&srv, &s, "10.99.0.1/24").unwrap();
        let server = dnsmasq(
            &mut lab,
            &srv,
            &s,
            Ipv4Addr::new(10, 99, 0, 100),
            Ipv4Addr::new(10, 99, 0, 150),
            &[],
        )
        .unwrap();
        // A process the lab did not start, found through `ip netns pids`.
        lab.run(&cli, "sh", &["-c", "sleep 600 >/dev/null 2>&1 &"])
            .unwrap();
        tx.send((
            lab.namespaces().to_vec(),
            server.pid,
            lab.dir().to_path_buf(),
        ))
        .unwrap();
        panic!("a test failing half-way");
    })
    .join();
    assert!(joined.is_err());
    let (names, pid, dir) = rx.recv().unwrap();
    let list = netns_list();
    for name in &names {
        assert!(!list.contains(name.as_str()), "{name} left in:\n{list}");
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    // The logs are kept after a panic; this one was on purpose.
    assert!(dir.exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// A server namespace running dnsmasq on 10.99.0.0/24 and a client namespace, one veth apart.
struct Segment {
    lab: Lab,
    cli: Ns,
    iface: String,
    server: plinth_testkit::netns::Proc,
}

fn segment() -> Segment {
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s, c) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s, "10.99.0.1/24").unwrap();
    let server = dnsmasq_with(
        &mut lab,
        &srv,
        &s,
        &DhcpRange {
            start: Ipv4Addr::new(10, 99, 0, 100),
            end: Ipv4Addr::new(10, 99, 0, 199),
            prefix: None,
            lease_secs: 600,
        },
        &[
            "--dhcp-option=option:router,10.99.0.1",
            "--dhcp-option=option:dns-server,10.99.0.53",
            "--dhcp-option=option:domain-name,lab.test",
            "--dhcp-boot=undionly.kpxe,,10.99.0.1",
        ],
    )
    .unwrap();
    Segment {
        lab,
        cli,
        iface: c,
        server,
    }
}

fn lifecycle(client: Client) {
    let Segment {
        mut lab,
        cli,
        iface,
        server,
    } = segment();
    let mac = "02:00:00:99:00:42";
    let opts = Options {
        mac: Some(mac.into()),
        ..Options::default()
    };
    let t = Instant::now();
    let lease = obtain_with(&mut lab, &cli, &iface, client, &opts).unwrap();
    eprintln!("{client}: lease in {:?}: {lease:?}", t.elapsed());
    assert_eq!(lab.mac(&cli, &iface).unwrap(), mac);
    assert!((100..200).contains(&lease.ip.octets()[3]), "{lease:?}");
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.router, Some(SERVER));
    assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 99, 0, 53)]);
    assert_eq!(lease.domain.as_deref(), Some("lab.test"));
    assert_eq!(lease.server_id, Some(SERVER));
    assert_eq!(lease.lease_secs, Some(600));
    assert_eq!(lease.boot_file.as_deref(), Some("undionly.kpxe"));
    if client != Client::Dhcpcd {
        assert_eq!(lease.next_server, Some(SERVER));
    }
    // The address is on the interface, and the server agrees.
    assert!(ping(&lab, &cli, "10.99.0.1"));
    eventually("dnsmasq's lease", Duration::from_secs(3), || {
        dnsmasq_leases(&server)
            .iter()
            .any(|l| l.ip == lease.ip && l.mac == mac)
    });

    let t = Instant::now();
    let renewed = renew(&mut lab, &cli, &iface, client, &lease).unwrap();
    eprintln!("{client}: renewed in {:?}", t.elapsed());
    assert_eq!(renewed.ip, lease.ip);
    assert_eq!(renewed.server_id, Some(SERVER));
    assert!(
        server.log_text().matches("DHCPACK").count() >= 2,
        "{}",
        server.log_text()
    );

    let t = Instant::now();
    release(&mut lab, &cli, &iface, client, &renewed).unwrap();
    eprintln!("{client}: released in {:?}", t.elapsed());
    eventually("dnsmasq to drop the lease", Duration::from_secs(3), || {
        !dnsmasq_leases(&server).iter().any(|l| l.ip == lease.ip)
    });
    assert!(server.log_text().contains("DHCPRELEASE"));
    let events = dhcp_clients::events(&lab, &cli, &iface, client);
    assert!(!events.is_empty());
}

#[test]
fn dhclient_obtains_renews_and_releases() {
    lifecycle(Client::Dhclient);
}

#[test]
fn udhcpc_obtains_renews_and_releases() {
    lifecycle(Client::Udhcpc);
}

#[test]
fn dhcpcd_obtains_renews_and_releases() {
    lifecycle(Client::Dhcpcd);
    // Its state lived in the lab, not on the host.
    let host_state: Vec<_> = std::fs::read_dir("/var/lib/dhcpcd")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        host_state
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("tk")),
        "{host_state:?}"
    );
}

#[test]
fn no_server_times_out_with_the_client_log() {
    let mut lab = Lab::new().unwrap();
    let a = lab.namespace("a").unwrap();
    let b = lab.namespace("b").unwrap();
    let (_, ib) = lab.link(&a, &b).unwrap();
    let opts = Options {
        timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let t = Instant::now();
    let err = obtain_with(&mut lab, &b, &ib, Client::Udhcpc, &opts).unwrap_err();
    let text = format!("{err:#}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(text.contains("timed out"), "{text}");
    assert!(text.contains("broadcasting discover"), "{text}");
}

#[test]
fn relayed_client_gets_a_lease_from_the_remote_subnet() {
    // cli --(10.99.2.0/24)-- relay --(10.99.1.0/24)-- srv
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let rel = lab.namespace("relay").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s_up, r_up) = lab.link(&srv, &rel).unwrap();
    let (r_down, c) = lab.link(&rel, &cli).unwrap();
    lab.addr(&srv, &s_up, "10.99.1.1/24").unwrap();
    lab.addr(&rel, &r_up, "10.99.1.2/24").unwrap();
    lab.addr(&rel, &r_down, "10.99.2.1/24").unwrap();
    lab.route(&srv, &["10.99.2.0/24", "via", "10.99.1.2"])
        .unwrap();
    let server = dnsmasq(
        &mut lab,
        &srv,
        &s_up,
        Ipv4Addr::new(10, 99, 2, 100),
        Ipv4Addr::new(10, 99, 2, 150),
        &["--dhcp-option=option:router,10.99.2.1"],
    )
    .unwrap();
    let relay = relay(&mut lab, &rel, &r_down, &r_up, Ipv4Addr::new(10, 99, 1, 1)).unwrap();

    let lease = obtain(&mut lab, &cli, &c, Client::Dhclient).unwrap();
    assert_eq!(&lease.ip.octets()[..3], &[10, 99, 2], "{lease:?}");
    assert!((100..=150).contains(&lease.ip.octets()[3]), "{lease:?}");
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.router, Some(Ipv4Addr::new(10, 99, 2, 1)));
    assert_eq!(lease.server_id, Some(Ipv4Addr::new(10, 99, 1, 1)));
    assert!(relay.log_text().contains("Forwarded BOOTREPLY"));
    assert!(
        dnsmasq_leases(&server).iter().any(|l| l.ip == lease.ip),
        "{}",
        server.log_text()
    );
}

#[test]
fn perfdhcp_measures_dnsmasq() {
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("perf").unwrap();
    let (s, c) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s, "10.99.0.1/24").unwrap();
    lab.addr(&cli, &c, "10.99.0.2/24").unwrap();
    let _server = dnsmasq(
        &mut lab,
        &srv,
        &s,
        Ipv4Addr::new(10, 99, 0, 100),
        Ipv4Addr::new(10, 99, 0, 250),
        &[],
    )
    .unwrap();
    let r = perfdhcp(&lab, &cli, &c, SERVER, 20, 30, 2).unwrap();
    eprintln!("{r:?}");
    assert!(r.rate.is_some_and(|x| x > 0.0), "{}", r.output);
    assert!(r.discover_offer.sent > 0, "{}", r.output);
    assert!(r.discover_offer.received > 0, "{}", r.output);
    assert!(r.request_ack.sent > 0, "{}", r.output);
    assert!(r.request_ack.received > 0, "{}", r.output);
    assert!(r.request_ack.avg_delay_ms.is_some_and(|d| d > 0.0));
}

#[test]
fn namespaces_left_by_a_killed_test_process_are_swept() {
    // What a test process killed without unwinding leaves: a registered namespace, with a
    // process in it, whose owner is gone (no pid reaches 4194304, the kernel's pid_max cap).
    let name = format!(
        "{}zz{}",
        plinth_testkit::netns::PREFIX,
        std::process::id() % 100_000
    );
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "600"])
        .spawn()
        .unwrap();
    // Registered only once the process is inside: a sweep in between would miss it.
    eventually(
        "the orphan to enter the namespace",
        Duration::from_secs(5),
        || {
            let out = Command::new("ip")
                .args(["netns", "pids", &name])
                .output()
                .unwrap();
            !out.stdout.is_empty()
        },
    );
    let registry = Path::new(plinth_testkit::netns::REGISTRY);
    std::fs::create_dir_all(registry).unwrap();
    let tmp = registry.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, "4194304 1\n").unwrap();
    std::fs::rename(&tmp, registry.join(&name)).unwrap();

    let _lab = Lab::new().unwrap();
    eventually("the orphan to be killed", Duration::from_secs(5), || {
        orphan.try_wait().unwrap().is_some()
    });
    assert!(!netns_list().contains(&name));
    assert!(!registry.join(&name).exists());
}
