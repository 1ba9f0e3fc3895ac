//! The DHCP server with real clients, in network namespaces this test creates and removes:
//! `plinth serve` runs in a server namespace on one end of a veth pair, dhclient, udhcpc and
//! dhcpcd (and dhcrelay, dnsmasq, perfdhcp) on the other. PXE firmware is imitated by
//! replaying packets captured from QEMU's iPXE and OVMF (tests/it/support/dhcp_probe.py).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use std::process::Command;
use std::time::{Duration, Instant};

use plinth_core::Principal;
use plinth_testkit::dhcp_clients::{self, Client, Options};
use plinth_testkit::netns::{Lab, Ns, Proc};
use plinth_types::api::*;
use serde_json::Value;

use crate::support::env::Env;
use crate::support::machine;
use crate::support::repo;
use crate::support::serve::serve_dhcp_in_ns;

/// Starts `plinth serve` with DHCP on `iface` inside `ns`, and waits until it listens.
fn plinth(
    lab: &mut Lab,
    ns: &Ns,
    iface: &str,
    db_url: &str,
    boot_server: &str,
    mode: &str,
) -> Proc {
    plinth_with(lab, ns, iface, db_url, boot_server, mode, &[])
}

/// [`plinth`] with more settings (`PLINTH_...` variables).
fn plinth_with(
    lab: &mut Lab,
    ns: &Ns,
    iface: &str,
    db_url: &str,
    boot_server: &str,
    mode: &str,
    more: &[(&str, &str)],
) -> Proc {
    let mut env = vec![
        ("PLINTH_DHCP__MODE", mode),
        ("PLINTH_LOG__LEVEL", "plinth_dhcp=debug,info"),
    ];
    env.extend_from_slice(more);
    serve_dhcp_in_ns(lab, ns, db_url, "127.0.0.1:8080", iface, boot_server, &env)
}

/// Two namespaces joined by a veth pair; the server end has `server_cidr`.
fn pair(lab: &mut Lab, server_cidr: &str) -> (Ns, String, Ns, String) {
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s, c) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s, server_cidr).unwrap();
    (srv, s, cli, c)
}

#[test]
fn real_clients_obtain_renew_and_release() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.61.0.2/24");
    env.subnet(
        "10.61.0.0/24",
        "10.61.0.100",
        "10.61.0.149",
        Some("10.61.0.1"),
        &[],
    );
    let _server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.61.0.2", "server");
    for (n, client) in Client::ALL.into_iter().enumerate() {
        let mac = format!("52:54:00:61:00:{:02x}", n + 1);
        let opts = Options {
            mac: Some(mac.clone()),
            ..Default::default()
        };
        let lease = dhcp_clients::obtain_with(&mut lab, &cli, &cif, client, &opts)
            .unwrap_or_else(|e| panic!("{client}: {e:#}\n{}", _server.log_text()));
        let octets = lease.ip.octets();
        assert!(
            octets[..3] == [10, 61, 0] && (100..=149).contains(&octets[3]),
            "{client}: {lease:?}"
        );
        assert_eq!(lease.prefix, 24, "{client}");
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 61, 0, 1)), "{client}");
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 61, 0, 1)], "{client}");
        assert_eq!(
            lease.server_id,
            Some(Ipv4Addr::new(10, 61, 0, 2)),
            "{client}"
        );
        assert_eq!(lease.lease_secs, Some(600), "{client}");
        let held: Vec<Lease> = env
            .leases()
            .into_iter()
            .filter(|l| l.mac.map(|m| m.to_string()) == Some(mac.clone()))
            .collect();
        assert_eq!(
            (held.len(), held[0].address, held[0].state),
            (1, lease.ip, LeaseState::Bound),
            "{client}"
        );
        let first_expiry = held[0].expires_at;
        std::thread::sleep(Duration::from_millis(1100));

        let renewed = dhcp_clients::renew(&mut lab, &cli, &cif, client, &lease).unwrap();
        assert_eq!(renewed.ip, lease.ip, "{client} keeps its address on renew");
        let held: Vec<Lease> = env
            .leases()
            .into_iter()
            .filter(|l| l.address == lease.ip)
            .collect();
        assert!(
            held[0].expires_at > first_expiry,
            "{client}: the renewal extended the lease"
        );

        dhcp_clients::release(&mut lab, &cli, &cif, client, &renewed).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while env.leases().iter().any(|l| l.address == lease.ip) {
            assert!(
                Instant::now() < deadline,
                "{client}: RELEASE did not free {}",
                lease.ip
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Flush the address the harness configured so the next client starts clean.
        lab.run(&cli, "ip", &["addr", "flush", "dev", &cif])
            .unwrap();
    }
    // Every exchange was a plain success: nothing in plinth's log is an error (a decision
    // path once logged a false "internal error" for every request the database decided).
    let log = _server.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_reservation_is_honoured() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.63.0.2/24");
    env.subnet(
        "10.63.0.0/24",
        "10.63.0.100",
        "10.63.0.101",
        Some("10.63.0.1"),
        &[],
    );
    let machine = env
        .rt
        .block_on(env.app.enroll_machine(
            &Principal::system(),
            MachineCreate {
                hostname: Some("reserved".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: "52:54:00:63:00:07".parse().unwrap(),
                    ipv4: Some("10.63.0.7".parse().unwrap()),
                    pxe: None,
                }],
                bmc: None,
            },
        ))
        .unwrap();
    let _server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.63.0.2", "server");
    let opts = Options {
        mac: Some("52:54:00:63:00:07".into()),
        ..Default::default()
    };
    let lease = dhcp_clients::obtain_with(&mut lab, &cli, &cif, Client::Udhcpc, &opts).unwrap();
    assert_eq!(
        lease.ip,
        Ipv4Addr::new(10, 63, 0, 7),
        "the reserved address, outside the pool"
    );
    let held = env.leases();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].machine_id, held[0].state),
        (Some(machine.id), LeaseState::Bound)
    );
}

#[test]
fn a_relayed_request_lands_in_the_relay_subnet() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let rly = lab.namespace("rly").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s_up, r_up) = lab.link(&srv, &rly).unwrap();
    let (r_down, c_if) = lab.link(&rly, &cli).unwrap();
    lab.addr(&srv, &s_up, "10.64.0.2/24").unwrap();
    lab.addr(&rly, &r_up, "10.64.0.1/24").unwrap();
    lab.addr(&rly, &r_down, "10.64.9.1/24").unwrap();
    lab.sysctl(&rly, "net.ipv4.ip_forward", "1").unwrap();
    lab.route(&srv, &["10.64.9.0/24", "via", "10.64.0.1"])
        .unwrap();
    env.subnet(
        "10.64.0.0/24",
        "10.64.0.100",
        "10.64.0.149",
        Some("10.64.0.1"),
        &[],
    );
    // The relay's address on the client side is the giaddr; the subnet names it.
    env.subnet(
        "10.64.9.0/24",
        "10.64.9.100",
        "10.64.9.149",
        Some("10.64.9.1"),
        &["10.64.9.1"],
    );
    let _server = plinth(&mut lab, &srv, &s_up, &env.db.url, "10.64.0.2", "server");
    let _relay =
        dhcp_clients::relay(&mut lab, &rly, &r_down, &r_up, Ipv4Addr::new(10, 64, 0, 2)).unwrap();
    let lease = dhcp_clients::obtain(&mut lab, &cli, &c_if, Client::Dhclient).unwrap();
    assert_eq!(&lease.ip.octets()[..3], &[10, 64, 9], "{lease:?}");
    assert_eq!(lease.router, Some(Ipv4Addr::new(10, 64, 9, 1)));
    assert_eq!(lease.server_id, Some(Ipv4Addr::new(10, 64, 0, 2)));
    assert!(
        _server.log_text().contains("to=10.64.9.1:67"),
        "replies go to the relay:\n{}",
        _server.log_text()
    );
}

/// Runs dhcp_probe.py in `ns`; returns the replies.
fn probe(lab: &Lab, ns: &Ns, iface: &str, capture: &str, mac: &str, extra: &[&str]) -> Vec<Value> {
    let script = repo().join("tests/it/support/dhcp_probe.py");
    let capture = repo()
        .join("crates/plinth-dhcp/tests/captures")
        .join(capture);
    let mut args = vec![
        script.to_str().unwrap(),
        "--iface",
        iface,
        "--capture",
        capture.to_str().unwrap(),
        "--mac",
        mac,
    ];
    args.extend_from_slice(extra);
    let out = lab
        .run_timeout(ns, "python3", &args, Duration::from_secs(20))
        .unwrap();
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text_option(reply: &Value, code: &str) -> Option<String> {
    let hex = reply["options"][code].as_str()?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Some(
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_owned(),
    )
}

#[test]
fn unknown_pxe_clients_are_discovered_and_booted() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.65.0.2/24");
    lab.addr(&cli, &cif, "0.0.0.0/0").ok();
    env.subnet(
        "10.65.0.0/24",
        "10.65.0.100",
        "10.65.0.149",
        Some("10.65.0.1"),
        &[],
    );
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.65.0.2", "server");
    let cases = [
        (
            "seabios_ipxe_discover.hex",
            "52:54:00:65:00:01",
            "http://10.65.0.2:8080/boot/ipxe?mac=${net0/mac}&platform=${platform}",
            Some("PXEClient"),
        ),
        (
            "ovmf_edk2_pxe_discover.hex",
            "52:54:00:65:00:02",
            "ipxe.efi",
            Some("PXEClient"),
        ),
        (
            "ovmf_edk2_http_discover.hex",
            "52:54:00:65:00:03",
            "http://10.65.0.2:8080/boot/ipxe.efi",
            Some("HTTPClient"),
        ),
    ];
    for (capture, mac, file, vendor) in cases {
        let replies = probe(&lab, &cli, &cif, capture, mac, &["--wait", "2"]);
        assert_eq!(
            replies.len(),
            1,
            "{capture}: {replies:?}\n{}",
            server.log_text()
        );
        let offer = &replies[0];
        assert_eq!(offer["options"]["53"], "02", "{capture}: an OFFER");
        assert!(
            offer["yiaddr"].as_str().unwrap().starts_with("10.65.0."),
            "{capture}: {offer}"
        );
        assert_eq!(
            text_option(offer, "67").as_deref(),
            Some(file),
            "{capture}: {offer}"
        );
        assert_eq!(offer["siaddr"], "10.65.0.2");
        assert!(offer["len"].as_u64().unwrap() >= 300);
        assert_eq!(text_option(offer, "60").as_deref(), vendor, "{capture}");
        let found = env.machines(mac);
        assert_eq!(found.len(), 1, "{capture}: one discovered machine");
        assert_eq!(found[0].state, plinth_types::MachineState::Discovered);
        assert!(found[0].pxe_arch.is_some(), "{capture}: option 93 recorded");
    }
    // Repeated packets from the same MAC make no second record.
    probe(
        &lab,
        &cli,
        &cif,
        "ovmf_edk2_pxe_discover.hex",
        "52:54:00:65:00:02",
        &["--wait", "1"],
    );
    assert_eq!(env.machines("52:54:00:65:00:02").len(), 1);
    // A plain client (udhcpc) on the same network gets an address and no boot file, and no record.
    let opts = Options {
        mac: Some("52:54:00:65:00:09".into()),
        ..Default::default()
    };
    let lease = dhcp_clients::obtain_with(&mut lab, &cli, &cif, Client::Udhcpc, &opts).unwrap();
    assert_eq!(lease.boot_file, None);
    assert!(env.machines("52:54:00:65:00:09").is_empty());
}

#[test]
fn proxy_dhcp_beside_dnsmasq() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    // One segment: a switch namespace bridging dnsmasq's, plinth's and the client's links.
    let sw = lab.namespace("sw").unwrap();
    let dns = lab.namespace("dnsm").unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (d_if, sw_d) = lab.link(&dns, &sw).unwrap();
    let (s_if, sw_s) = lab.link(&srv, &sw).unwrap();
    let (c_if, sw_c) = lab.link(&cli, &sw).unwrap();
    lab.bridge(&sw, &[&sw_d, &sw_s, &sw_c]).unwrap();
    lab.addr(&dns, &d_if, "10.66.0.1/24").unwrap();
    lab.addr(&srv, &s_if, "10.66.0.2/24").unwrap();
    let _dnsmasq = dhcp_clients::dnsmasq(
        &mut lab,
        &dns,
        &d_if,
        "10.66.0.100".parse().unwrap(),
        "10.66.0.149".parse().unwrap(),
        &[],
    )
    .unwrap();
    let server = plinth(&mut lab, &srv, &s_if, &env.db.url, "10.66.0.2", "proxy");

    // A BIOS PXE client: dnsmasq offers an address, plinth only boot information.
    let mac = "52:54:00:66:00:01";
    let replies = probe(
        &lab,
        &cli,
        &c_if,
        "ovmf_edk2_pxe_discover.hex",
        mac,
        &["--wait", "2"],
    );
    let from = |ip: &str| {
        replies
            .iter()
            .find(|r| r["from"].as_str().unwrap().starts_with(ip))
            .cloned()
    };
    let address =
        from("10.66.0.1:").unwrap_or_else(|| panic!("no offer from dnsmasq: {replies:?}"));
    let proxy = from("10.66.0.2:")
        .unwrap_or_else(|| panic!("no ProxyDHCP offer: {replies:?}\n{}", server.log_text()));
    assert!(
        address["yiaddr"].as_str().unwrap().starts_with("10.66.0.1"),
        "{address}"
    );
    assert_eq!(
        proxy["yiaddr"], "0.0.0.0",
        "ProxyDHCP never hands out an address"
    );
    assert_eq!(text_option(&proxy, "60").as_deref(), Some("PXEClient"));
    assert_eq!(text_option(&proxy, "67").as_deref(), Some("ipxe.efi"));
    assert_eq!(
        proxy["options"]["43"], "060108ff",
        "PXE discovery control: boot from the file given"
    );
    assert_eq!(proxy["siaddr"], "10.66.0.2");
    assert!(
        proxy["options"].get("51").is_none(),
        "no lease time from a proxy"
    );

    // Then, holding dnsmasq's address, it asks plinth on port 4011.
    let ip = address["yiaddr"].as_str().unwrap().to_owned();
    lab.addr(&cli, &c_if, &format!("{ip}/24")).unwrap();
    let acks = probe(
        &lab,
        &cli,
        &c_if,
        "ovmf_edk2_pxe_discover.hex",
        mac,
        &[
            "--msg-type",
            "3",
            "--to",
            "10.66.0.2",
            "--port",
            "4011",
            "--ciaddr",
            &ip,
            "--bind",
            &ip,
            "--wait",
            "2",
        ],
    );
    assert_eq!(acks.len(), 1, "{acks:?}\n{}", server.log_text());
    assert_eq!(acks[0]["options"]["53"], "05");
    assert_eq!(text_option(&acks[0], "67").as_deref(), Some("ipxe.efi"));
    assert!(
        env.leases().is_empty(),
        "plinth holds no lease in proxy mode"
    );
    assert_eq!(
        env.machines(mac).len(),
        1,
        "the unknown PXE client is recorded"
    );
}

#[test]
fn two_instances_on_one_database_hand_out_distinct_addresses() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let sw = lab.namespace("sw").unwrap();
    let srv1 = lab.namespace("srv1").unwrap();
    let srv2 = lab.namespace("srv2").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (a, sw_a) = lab.link(&srv1, &sw).unwrap();
    let (b, sw_b) = lab.link(&srv2, &sw).unwrap();
    let (c, sw_c) = lab.link(&cli, &sw).unwrap();
    lab.bridge(&sw, &[&sw_a, &sw_b, &sw_c]).unwrap();
    lab.addr(&srv1, &a, "10.67.0.2/16").unwrap();
    lab.addr(&srv2, &b, "10.67.0.3/16").unwrap();
    lab.addr(&cli, &c, "10.67.0.9/16").unwrap();
    env.subnet(
        "10.67.0.0/16",
        "10.67.1.0",
        "10.67.2.255",
        Some("10.67.0.1"),
        &["any"],
    );
    let p1 = plinth(&mut lab, &srv1, &a, &env.db.url, "10.67.0.2", "server");
    let p2 = plinth(&mut lab, &srv2, &b, &env.db.url, "10.67.0.3", "server");
    // Two perfdhcp runs at once, one against each instance (perfdhcp sends as a relay from the
    // address it is given), 100 distinct clients each, all from one pool in one database.
    lab.addr(&cli, &c, "10.67.0.10/16").unwrap();
    let perf = |lab: &mut Lab, from: &str, server: &str, base: &str| {
        let args = ["-r", "50", "-R", "100", "-p", "4", "-b", base, server];
        let cmd = dhcp_clients::perfdhcp_command(lab, from, &args);
        lab.spawn_named(&cli, "perfdhcp", cmd).unwrap()
    };
    let runs = [
        perf(&mut lab, "10.67.0.9", "10.67.0.2", "mac=02:00:00:01:00:00"),
        perf(&mut lab, "10.67.0.10", "10.67.0.3", "mac=02:00:00:02:00:00"),
    ];
    let mut acked = 0;
    for run in &runs {
        run.wait_timeout(Duration::from_secs(30))
            .expect("perfdhcp finished");
        let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
        assert_eq!(r.request_ack.non_unique_addresses, 0, "{}", r.output);
        assert!(r.request_ack.received > 0, "{}", r.output);
        acked += r.request_ack.received;
    }
    let leases = env.leases();
    let bound: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .collect();
    let macs: HashSet<_> = bound.iter().map(|l| l.mac).collect();
    let addrs: HashSet<_> = bound.iter().map(|l| l.address).collect();
    assert!(
        bound.len() >= 150,
        "most of the 200 clients are bound: {} of them ({acked} ACKs)",
        bound.len()
    );
    assert_eq!(macs.len(), bound.len(), "one lease per client");
    assert_eq!(addrs.len(), bound.len(), "one client per address");
    let acks = |p: &Proc| p.log_text().matches("kind=Ack").count();
    assert!(
        acks(&p1) > 0 && acks(&p2) > 0,
        "both instances served: {} and {}",
        acks(&p1),
        acks(&p2)
    );
}

/// While the database stalls (a lock held on the lease table, as a slow fsync or a vacuum's
/// lock would), more requests arrive than `max_in_flight` (1,024) packets: the server stops
/// reading at that limit and the rest wait in its socket's buffer, so that every client is
/// answered once the database is back, and nothing is counted as dropped. With
/// `dhcp.batches_in_flight` at 2, the backlog starts a second batch beside the stalled one.
#[test]
fn a_database_stall_is_absorbed_by_the_socket_buffer() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.69.0.2/16");
    lab.addr(&cli, &cif, "10.69.0.9/16").unwrap();
    env.subnet(
        "10.69.0.0/16",
        "10.69.1.0",
        "10.69.8.255",
        Some("10.69.0.1"),
        &["any"],
    );
    let _server = plinth_with(
        &mut lab,
        &srv,
        &sif,
        &env.db.url,
        "10.69.0.2",
        "server",
        &[
            // 1,500 new clients within a second and a half: the new-client limit is not
            // what this test is about.
            ("PLINTH_DHCP__NEW_CLIENT_RATE", "0"),
            ("PLINTH_HTTP__METRICS_ALLOW", "[\"127.0.0.1/32\"]"),
            // Two batches in the database at once: the backlog of the stall starts a second
            // batch while the first waits on the lock.
            ("PLINTH_DHCP__BATCHES_IN_FLIGHT", "2"),
        ],
    );
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args([env.db.url.as_str(), "-qAtc", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The stall: a lock on the lease table for four seconds.
    let mut stall = Command::new("psql")
        .args([
            env.db.url.as_str(),
            "-qc",
            "begin; lock table leases in access exclusive mode; select pg_sleep(4); commit;",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locked = Instant::now();
    while psql(
        "select count(*) from pg_locks where relation = 'leases'::regclass \
         and mode = 'AccessExclusiveLock' and granted",
    ) != "1"
    {
        assert!(
            locked.elapsed() < Duration::from_secs(10),
            "the lock is taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 1,500 clients in a second and a half (perfdhcp as a relay), each DISCOVER waiting on the
    // lock; a request counts as lost only after 20 s.
    let mut args = vec![
        "-r", "1000", "-R", "1500", "-n", "1500", "-d", "20", "-d", "20",
    ];
    args.extend(["-W", "10000000", "10.69.0.2"]);
    let cmd = dhcp_clients::perfdhcp_command(&lab, "10.69.0.9", &args);
    let run = lab.spawn_named(&cli, "perfdhcp", cmd).unwrap();
    run.wait_timeout(Duration::from_secs(60))
        .expect("perfdhcp finished");
    assert!(
        stall.wait().unwrap().success(),
        "the stall's transaction ended"
    );
    let r = dhcp_clients::parse_perfdhcp(&run.log_text()).unwrap();
    // perfdhcp is done once its last OFFER or ACK arrives or times out; the server may still be
    // working through what waits in its socket (about a thousand REQUESTs when the test suite
    // loads the machine). Its counters are read once it has read every packet perfdhcp sent and
    // answered each, or after a minute (the assertions below then say what is missing).
    let series = |metrics: &str, name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let sent = 1500 + r.request_ack.sent;
    let settled = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let out = lab
            .run(&srv, "curl", &["-sS", "http://127.0.0.1:8080/metrics"])
            .unwrap();
        let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
        let received = series(&metrics, "plinth_dhcp_packets_received_total");
        let answered: u64 = ["offer", "ack", "nak"]
            .iter()
            .filter_map(|t| {
                series(
                    &metrics,
                    &format!("plinth_dhcp_replies_total{{type=\"{t}\"}}"),
                )
            })
            .sum();
        if (received == Some(sent) && answered == sent) || Instant::now() > settled {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let count = |name: &str| -> u64 {
        series(&metrics, name).unwrap_or_else(|| panic!("{name} in:\n{metrics}"))
    };
    let dropped = |reason: &str| {
        count(&format!(
            "plinth_dhcp_packets_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    let replies = |kind: &str| count(&format!("plinth_dhcp_replies_total{{type=\"{kind}\"}}"));
    let report = format!("{}\n{metrics}", r.output);
    assert_eq!(r.discover_offer.sent, 1500, "{report}");
    // The server's own counters: it read every packet and answered each; nothing was dropped,
    // neither by it nor by its socket. (perfdhcp's socket, at the system's default size, may
    // miss some of the burst of answers once the lock goes: that is the client's.)
    assert_eq!(dropped("overload"), 0, "{report}");
    assert!(
        count("plinth_dhcp_batches_overlapped_total") > 0,
        "a second batch started while the first waited on the lock: {report}"
    );
    assert_eq!(dropped("receive_buffer_full"), 0, "{report}");
    // Every DISCOVER offered once the database is back. (While the counters were read as soon
    // as perfdhcp ended, one run in thirty counted fewer than 1,500 OFFERs with nothing dropped;
    // a run of the whole suite then showed why: 1,499 OFFERs and 346 of 1,379 ACKs, the server
    // still deciding the rest.)
    assert_eq!(replies("offer"), 1500, "every DISCOVER answered: {report}");
    assert_eq!(
        count("plinth_dhcp_packets_received_total"),
        sent,
        "{report}"
    );
    // Every REQUEST answered. (The 1,500 offers made from memory after the stall are open at
    // once; each batch skips the newest 1,024, so an older one's address may be offered again
    // and that REQUEST refused: plinth-core's dhcp suite covers the skipping.)
    assert!(r.request_ack.sent > 1000, "{report}");
    assert_eq!(
        replies("ack") + replies("nak"),
        r.request_ack.sent,
        "{report}"
    );
    assert_eq!(r.request_ack.non_unique_addresses, 0, "{report}");
    assert_eq!(
        psql("select count(*) from leases where state = 'bound'"),
        replies("ack").to_string()
    );
    assert_eq!(
        psql("select count(distinct mac) from leases where state = 'bound'"),
        replies("ack").to_string()
    );
}

#[test]
fn hostile_packets_never_break_the_server() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.68.0.2/24");
    env.subnet(
        "10.68.0.0/24",
        "10.68.0.100",
        "10.68.0.199",
        Some("10.68.0.1"),
        &[],
    );
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.68.0.2", "server");
    let script = repo().join("tests/it/support/dhcp_fuzz.py");
    let capture = repo().join("crates/plinth-dhcp/tests/captures/seabios_ipxe_discover.hex");
    let out = lab
        .run_timeout(
            &cli,
            "python3",
            &[
                script.to_str().unwrap(),
                "--iface",
                &cif,
                "--capture",
                capture.to_str().unwrap(),
                "--count",
                "3000",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server.is_running(),
        "the server survived:\n{}",
        server.log_text()
    );
    // It still serves a real client, promptly, and gave nobody else's address away.
    let opts = Options {
        mac: Some("52:54:00:68:00:01".into()),
        ..Default::default()
    };
    let lease = dhcp_clients::obtain_with(&mut lab, &cli, &cif, Client::Udhcpc, &opts).unwrap();
    assert_eq!(&lease.ip.octets()[..3], &[10, 68, 0]);
    let leases = env.leases();
    let addrs: HashSet<_> = leases.iter().map(|l| l.address).collect();
    assert_eq!(addrs.len(), leases.len());
    assert!(leases.iter().all(|l| l.mac.is_some()));
    assert!(
        server.log_text().contains("malformed DHCP packet dropped"),
        "bad packets are counted and logged"
    );
}

#[test]
fn leases_survive_a_restart() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.69.0.2/24");
    env.subnet(
        "10.69.0.0/24",
        "10.69.0.100",
        "10.69.0.199",
        Some("10.69.0.1"),
        &[],
    );
    let mut first = plinth(&mut lab, &srv, &sif, &env.db.url, "10.69.0.2", "server");
    let opts = Options {
        mac: Some("52:54:00:69:00:01".into()),
        ..Default::default()
    };
    let lease = dhcp_clients::obtain_with(&mut lab, &cli, &cif, Client::Udhcpc, &opts).unwrap();
    first.kill();
    let _second = plinth(&mut lab, &srv, &sif, &env.db.url, "10.69.0.2", "server");
    let renewed = dhcp_clients::renew(&mut lab, &cli, &cif, Client::Udhcpc, &lease).unwrap();
    assert_eq!(renewed.ip, lease.ip, "the restarted server knows the lease");
    let held = env.leases();
    assert_eq!(
        (held.len(), held[0].address, held[0].state),
        (1, lease.ip, LeaseState::Bound)
    );
}

/// A QEMU virtual machine with SeaBIOS and its iPXE ROM (under TCG), booting from the network
/// through `tap` in `ns`.
fn bios_vm(lab: &mut Lab, ns: &Ns, tap: &str, mac: &str) -> Proc {
    assert!(
        plinth_testkit::netns::which("qemu-system-x86_64").is_some(),
        "qemu-system-x86_64 not found: the test command installs qemu-system-x86 and ipxe-qemu"
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-nographic",
        "-machine",
        "pc,accel=tcg",
        "-m",
        "256",
        "-boot",
        "n",
        "-no-reboot",
    ])
    .args([
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
    ])
    .args(["-device", &format!("e1000,netdev=n0,mac={mac}")]);
    lab.spawn_named(ns, "qemu", qemu).unwrap()
}

/// Real firmware: a QEMU virtual machine (SeaBIOS and its iPXE network ROM, under TCG) boots
/// from the network through plinth. iPXE sends no broadcast flag, so this also proves the
/// unicast reply to a client without an address.
#[test]
fn a_bios_ipxe_vm_is_discovered_and_handed_its_script() {
    let _vm = machine::vm();
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, cif) = pair(&mut lab, "10.72.0.2/24");
    let tap = lab.tap(&cli).unwrap();
    lab.bridge(&cli, &[&cif, &tap]).unwrap();
    env.subnet(
        "10.72.0.0/24",
        "10.72.0.100",
        "10.72.0.149",
        Some("10.72.0.1"),
        &[],
    );
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.72.0.2", "server");
    let mac = "52:54:00:72:00:10";
    let vm = bios_vm(&mut lab, &cli, &tap, mac);
    let deadline = Instant::now() + Duration::from_secs(90);
    let bound = loop {
        let leases = env.leases();
        if let Some(l) = leases.iter().find(|l| {
            l.mac.map(|m| m.to_string()).as_deref() == Some(mac) && l.state == LeaseState::Bound
        }) {
            break l.clone();
        }
        assert!(vm.is_running(), "the VM stopped:\n{}", vm.log_text());
        assert!(
            Instant::now() < deadline,
            "the VM got no lease in 90 s:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(&bound.address.octets()[..3], &[10, 72, 0]);
    let found = env.machines(mac);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].state, found[0].pxe_arch),
        (plinth_types::MachineState::Discovered, Some(0))
    );
    assert_eq!(bound.machine_id, Some(found[0].id));
    let log = server.log_text();
    assert!(
        log.contains("boot=Http { url: \"http://10.72.0.2:8080/boot/ipxe?mac=${net0/mac}&platform=${platform}\" }"),
        "{log}"
    );
    assert!(
        log.contains(&format!("to={}:68", bound.address)),
        "unicast to the offered address:\n{log}"
    );
}

/// ProxyDHCP with real firmware: dnsmasq owns the addresses, plinth only says what to boot, and
/// the VM's iPXE takes its address from one and its boot instructions from the other.
#[test]
fn a_vm_boots_through_proxy_dhcp_beside_dnsmasq() {
    let _vm = machine::vm();
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let sw = lab.namespace("sw").unwrap();
    let dns = lab.namespace("dnsm").unwrap();
    let srv = lab.namespace("srv").unwrap();
    let (d_if, sw_d) = lab.link(&dns, &sw).unwrap();
    let (s_if, sw_s) = lab.link(&srv, &sw).unwrap();
    let tap = lab.tap(&sw).unwrap();
    lab.bridge(&sw, &[&sw_d, &sw_s, &tap]).unwrap();
    lab.addr(&dns, &d_if, "10.73.0.1/24").unwrap();
    lab.addr(&srv, &s_if, "10.73.0.2/24").unwrap();
    let dnsmasq = dhcp_clients::dnsmasq(
        &mut lab,
        &dns,
        &d_if,
        "10.73.0.100".parse().unwrap(),
        "10.73.0.149".parse().unwrap(),
        &[],
    )
    .unwrap();
    let server = plinth(&mut lab, &srv, &s_if, &env.db.url, "10.73.0.2", "proxy");
    let mac = "52:54:00:73:00:10";
    let vm = bios_vm(&mut lab, &sw, &tap, mac);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let leased = dhcp_clients::dnsmasq_leases(&dnsmasq)
            .iter()
            .any(|l| format!("{:?}", l).to_lowercase().contains(mac));
        let answered = server.log_text().contains("kind=Offer");
        if leased && answered {
            break;
        }
        assert!(vm.is_running(), "the VM stopped:\n{}", vm.log_text());
        assert!(
            Instant::now() < deadline,
            "no proxy boot in 90 s:\n{}\n{}",
            server.log_text(),
            dnsmasq.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        env.leases().is_empty(),
        "plinth hands out no address in proxy mode"
    );
    let found = env.machines(mac);
    assert_eq!(
        (found.len(), found[0].pxe_arch),
        (1, Some(0)),
        "the VM is discovered"
    );
    assert!(
        server
            .log_text()
            .contains("/boot/ipxe?mac=${net0/mac}&platform=${platform}"),
        "{}",
        server.log_text()
    );
}
