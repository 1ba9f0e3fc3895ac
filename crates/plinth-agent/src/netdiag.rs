//! Which step failed when a call to plinth's API got no good answer: the console line a
//! technician reads in front of a machine that cannot report. After a failed call (never
//! before: it costs nothing while the API answers), the steps a call needs are checked in
//! order, and the first that fails is named with its evidence:
//!
//! 1. link: a network interface with a device behind it (`/sys/class/net/*/device`; every
//!    interface but lo when none has one: a container, a test namespace) has carrier;
//! 2. address: the machine has an IPv4 address (the kernel's local routes in
//!    `/proc/net/fib_trie`, which hold only the addresses of interfaces that are up);
//! 3. route: `/proc/net/route` has a route to the API's address (the longest prefix, a
//!    default route last), on an interface with carrier;
//! 4. DNS: the API's host name resolves (the nameservers of `/etc/resolv.conf` are named);
//! 5. TCP: a connection to the address opens (refused, timed out or unreachable is said);
//! 6. TLS (https) or HTTP: the handshake, or the answer: its status and plinth's message.
//!
//! An answer (any HTTP status) proves every step up to HTTP, so it is named at once without
//! looking further. Steps 1-4 are pure functions of a [`Snapshot`] read under the agent's
//! `--root`, so the tests lay out a machine's files; only the DNS and TCP probes touch the
//! network, each under a short timeout. A step whose evidence cannot be read (no
//! `/proc/net/route`) is passed over rather than blamed. Nothing here sees the agent's token.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// How long the DNS probe waits for the resolver (glibc's own timeouts are 5 s per server
/// and try).
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the TCP probe waits for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How many of a name's addresses the TCP probe tries.
const MAX_ADDRESSES: usize = 3;

/// The longest evidence printed, in characters.
const MAX_EVIDENCE: usize = 1000;

/// The steps of a call, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Link,
    Address,
    Route,
    Dns,
    Tcp,
    Tls,
    Http,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Link => "link",
            Step::Address => "address",
            Step::Route => "route",
            Step::Dns => "DNS",
            Step::Tcp => "TCP",
            Step::Tls => "TLS",
            Step::Http => "HTTP",
        }
    }
}

/// The step that failed and why: `TCP failed: 10.0.0.1:8080 refused the connection (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub step: Step,
    pub evidence: String,
}

impl Finding {
    /// The evidence holds what others wrote (a DHCP server's nameservers, any server's reason
    /// phrase): control characters become `?` so that nothing steers the console, and it is
    /// cut at [`MAX_EVIDENCE`] characters.
    fn new(step: Step, evidence: impl Into<String>) -> Finding {
        let evidence: String = evidence.into();
        let mut clean: String = evidence
            .chars()
            .take(MAX_EVIDENCE)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if evidence.chars().nth(MAX_EVIDENCE).is_some() {
            clean.push_str("...");
        }
        Finding {
            step,
            evidence: clean,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step.as_str(), self.evidence)
    }
}

/// What the failed call itself says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// An answer came back: every step up to HTTP works.
    Answered(String),
    /// No answer: the client's error, and whether it broke in the TLS handshake.
    Unanswered { tls: bool, error: String },
}

impl Attempt {
    /// From plinth-client's error.
    pub fn of(e: &plinth_client::Error) -> Attempt {
        use plinth_client::Error;
        match e {
            Error::Api(a) => Attempt::Answered(format!(
                "plinth answered HTTP {}: {} ({})",
                a.status,
                a.message(),
                a.code()
            )),
            Error::Status { status, reason, .. } => Attempt::Answered(status_line(*status, reason)),
            Error::Decode { source, .. } => {
                Attempt::Answered(format!("the answer is not what plinth sends: {source}"))
            }
            Error::Transport { source, .. } => match source.downcast_ref::<ureq::Transport>() {
                Some(t) => Attempt::of_transport(t),
                None => Attempt::Unanswered {
                    tls: false,
                    error: source.to_string(),
                },
            },
            Error::Body { source, .. } => Attempt::Unanswered {
                tls: false,
                error: format!("the answer broke off: {source}"),
            },
            other => Attempt::Unanswered {
                tls: false,
                error: other.to_string(),
            },
        }
    }

    /// From ureq's error (`--diagnose`'s own request).
    pub fn of_ureq(e: &ureq::Error) -> Attempt {
        match e {
            ureq::Error::Status(status, resp) => {
                Attempt::Answered(status_line(*status, resp.status_text()))
            }
            ureq::Error::Transport(t) => Attempt::of_transport(t),
        }
    }

    fn of_transport(t: &ureq::Transport) -> Attempt {
        // ureq's rustls connector says so when the handshake (or setting it up) failed.
        let tls = t.message().is_some_and(|m| m.starts_with("tls connection"));
        let mut error = t.kind().to_string();
        if let Some(m) = t.message() {
            error = format!("{error}: {m}");
        }
        if let Some(source) = std::error::Error::source(t) {
            error = format!("{error}: {source}");
        }
        Attempt::Unanswered { tls, error }
    }
}

/// An answer without plinth's error body.
fn status_line(status: u16, reason: &str) -> String {
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    };
    format!(
        "the server answered HTTP {status}{reason}, without plinth's error body (a proxy, or not plinth?)"
    )
}

/// A network interface other than lo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    /// It has a device behind it (a NIC), not a bridge, veth or tunnel.
    pub physical: bool,
    /// Administratively up (IFF_UP in `flags`); `true` when unknown.
    pub up: bool,
    /// `carrier`: `None` when unreadable (the kernel refuses it while the interface is down).
    pub carrier: Option<bool>,
    pub operstate: Option<String>,
}

impl Iface {
    fn describe(&self) -> String {
        let carrier = match self.carrier {
            Some(true) => "1",
            Some(false) => "0",
            None => "unknown",
        };
        format!(
            "{} (carrier {carrier}, operstate {}{})",
            self.name,
            self.operstate.as_deref().unwrap_or("unknown"),
            if self.up { "" } else { ", set down" }
        )
    }
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub metric: u32,
    /// An unreachable or prohibit route: it matches, and refuses.
    pub reject: bool,
}

impl Route {
    fn prefix(&self) -> u32 {
        u32::from(self.mask).count_ones()
    }

    fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & u32::from(self.mask) == u32::from(self.dest) & u32::from(self.mask)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix() == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.dest, self.prefix())?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev {}", self.iface)?;
        if self.reject {
            f.write_str(" (reject)")?;
        }
        Ok(())
    }
}

/// What the kernel says about the machine's network, read from files. `None`: the file could
/// not be read, so that step is passed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `/sys/class/net`, but lo.
    pub ifaces: Option<Vec<Iface>>,
    /// The machine's own IPv4 addresses but loopback's (`/proc/net/fib_trie`).
    pub addresses: Option<Vec<Ipv4Addr>>,
    /// `/proc/net/route`.
    pub routes: Option<Vec<Route>>,
    /// The `nameserver` lines of `/etc/resolv.conf`.
    pub nameservers: Option<Vec<String>>,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The snapshot of the machine whose files are under `root` (`/` in the ramdisk).
pub fn snapshot(root: &Path) -> Snapshot {
    let net = root.join("sys/class/net");
    let ifaces = std::fs::read_dir(&net).ok().map(|rd| {
        let mut v: Vec<Iface> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .map(|name| {
                let p = net.join(&name);
                let get = |f: &str| read(&p.join(f)).map(|s| s.trim().to_owned());
                let flags = get("flags")
                    .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok());
                Iface {
                    physical: p.join("device").exists(),
                    up: flags.is_none_or(|f| f & 1 != 0),
                    carrier: get("carrier").and_then(|c| match c.as_str() {
                        "1" => Some(true),
                        "0" => Some(false),
                        _ => None,
                    }),
                    operstate: get("operstate"),
                    name,
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    });
    Snapshot {
        ifaces,
        addresses: read(&root.join("proc/net/fib_trie")).map(|t| parse_fib_trie(&t)),
        routes: read(&root.join("proc/net/route")).map(|t| parse_routes(&t)),
        nameservers: read(&root.join("etc/resolv.conf")).map(|t| parse_resolv_conf(&t)),
    }
}

/// The local addresses of `/proc/net/fib_trie`: each leaf (`|-- 10.0.0.5`) followed by a
/// `/32 host LOCAL` line; loopback's left out.
pub fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut leaf = None;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("|-- ") {
            leaf = a.trim().parse::<Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(a) = leaf.filter(|a| !a.is_loopback()) {
                out.push(a);
            }
        } else if !line.starts_with('/') {
            leaf = None;
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `/proc/net/route`: addresses are the kernel's u32 in network order, printed as a number
/// in the machine's byte order.
pub fn parse_routes(text: &str) -> Vec<Route> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    const RTF_REJECT: u32 = 0x200;
    let addr = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            (flags & RTF_UP != 0).then_some(())?;
            Some(Route {
                iface: f[0].to_owned(),
                dest: addr(f[1])?,
                gateway: (flags & RTF_GATEWAY != 0).then(|| addr(f[2])).flatten(),
                metric: f[6].parse().ok()?,
                mask: addr(f[7])?,
                reject: flags & RTF_REJECT != 0,
            })
        })
        .collect()
}

pub fn parse_resolv_conf(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .map(str::to_owned)
        })
        .collect()
}

impl Snapshot {
    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || matches!(ip, IpAddr::V4(a) if self.addresses.as_ref().is_some_and(|l| l.contains(&a)))
    }

    fn iface(&self, name: &str) -> Option<&Iface> {
        self.ifaces.as_ref()?.iter().find(|i| i.name == name)
    }

    /// Step 1: a NIC with carrier.
    pub fn link(&self) -> Result<(), Finding> {
        let Some(all) = &self.ifaces else {
            return Ok(());
        };
        let physical: Vec<&Iface> = all.iter().filter(|i| i.physical).collect();
        let candidates = if physical.is_empty() {
            all.iter().collect()
        } else {
            physical
        };
        if candidates.is_empty() {
            return Err(Finding::new(
                Step::Link,
                "no network interface but lo (no driver for the NIC?)",
            ));
        }
        if candidates.iter().any(|i| i.carrier == Some(true)) {
            return Ok(());
        }
        Err(Finding::new(
            Step::Link,
            format!(
                "no network interface has carrier (cable, switch port): {}",
                candidates
                    .iter()
                    .map(|i| i.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Step 2: an IPv4 address on an interface that is up.
    pub fn address(&self) -> Result<(), Finding> {
        match &self.addresses {
            Some(a) if a.is_empty() => {
                let up: Vec<String> = self
                    .ifaces
                    .iter()
                    .flatten()
                    .filter(|i| i.up)
                    .map(Iface::describe)
                    .collect();
                Err(Finding::new(
                    Step::Address,
                    format!(
                        "no IPv4 address on an interface that is up (no DHCP lease?); {}",
                        if up.is_empty() {
                            "no interface is up".to_owned()
                        } else {
                            format!("up: {}", up.join(", "))
                        }
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Step 3: the route `dest` takes (`None` when the table cannot be read, or `dest` is
    /// the machine's own).
    pub fn route(&self, dest: Ipv4Addr) -> Result<Option<&Route>, Finding> {
        if self.is_local(IpAddr::V4(dest)) {
            return Ok(None);
        }
        let Some(routes) = &self.routes else {
            return Ok(None);
        };
        let best = routes
            .iter()
            .filter(|r| r.contains(dest))
            .max_by(|a, b| a.prefix().cmp(&b.prefix()).then(b.metric.cmp(&a.metric)));
        let Some(r) = best else {
            let table = if routes.is_empty() {
                "the routing table is empty".to_owned()
            } else {
                format!(
                    "the routes are: {}",
                    routes
                        .iter()
                        .map(Route::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(Finding::new(
                Step::Route,
                format!("no route to {dest} and no default route; {table}"),
            ));
        };
        if r.reject {
            return Err(Finding::new(
                Step::Route,
                format!("the route to {dest} refuses it: {r}"),
            ));
        }
        if let Some(i) = self.iface(&r.iface).filter(|i| i.carrier == Some(false)) {
            return Err(Finding::new(
                Step::Route,
                format!(
                    "the route to {dest} ({r}) goes out {}, which has no carrier",
                    i.describe()
                ),
            ));
        }
        Ok(Some(r))
    }

    /// The steps before DNS, for an API at `host` (a name, or an address).
    pub fn before_dns(&self, host: Option<IpAddr>) -> Result<(), Finding> {
        if host.is_some_and(|h| self.is_local(h)) {
            return Ok(()); // the API on this machine: no network needed
        }
        self.link()?;
        if !matches!(host, Some(IpAddr::V6(_))) {
            self.address()?;
        }
        if let Some(IpAddr::V4(a)) = host {
            self.route(a)?;
        }
        Ok(())
    }

    /// Step 4's finding: `host` did not resolve, and the nameservers it would have asked.
    pub fn dns_failed(&self, host: &str, why: &str) -> Finding {
        let servers = match &self.nameservers {
            None => "there is no /etc/resolv.conf".to_owned(),
            Some(s) if s.is_empty() => "/etc/resolv.conf lists no nameserver".to_owned(),
            Some(s) => format!(
                "/etc/resolv.conf lists nameserver {}",
                s.iter()
                    .map(|n| match n.parse::<Ipv4Addr>().map(|a| self.route(a)) {
                        Ok(Ok(Some(r))) => format!("{n} (route {r})"),
                        Ok(Err(f)) => format!("{n} ({})", f.evidence),
                        _ => n.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Finding::new(
            Step::Dns,
            format!("{host} does not resolve ({why}); {servers}"),
        )
    }
}

/// Step 5's finding for one address.
pub fn tcp_failed(a: SocketAddr, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!(
            "{a} refused the connection (nothing listens on port {}, or a firewall rejects it)",
            a.port()
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
            "no answer from {a} within {} s (the host is down, or a firewall drops the packets)",
            CONNECT_TIMEOUT.as_secs()
        ),
        io::ErrorKind::HostUnreachable => format!(
            "{a} is unreachable (host unreachable: nothing answered ARP for it or its gateway, \
             or a router said so)"
        ),
        io::ErrorKind::NetworkUnreachable => format!("{a}: network unreachable (no route)"),
        _ => format!("connecting to {a}: {e}"),
    }
}

/// The scheme, host and port of an http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Option<Target> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit('@').next()?;
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if https => 443,
            None => 80,
        };
        (!host.is_empty()).then(|| Target {
            https,
            host: host.to_owned(),
            port,
        })
    }
}

/// Resolves `host` as the HTTP client does (getaddrinfo), for at most [`DNS_TIMEOUT`].
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let (tx, rx) = mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("dns-probe".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>());
            tx.send(r).ok();
        })
        .map_err(|e| format!("cannot start the lookup: {e}"))?;
    match rx.recv_timeout(DNS_TIMEOUT) {
        Ok(Ok(a)) if a.is_empty() => Err("no address".into()),
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", DNS_TIMEOUT.as_secs())),
    }
}

/// Which step of a call to `url` failed, for a machine whose files are under `root`: the
/// snapshot's steps, then the live DNS and TCP probes, then what the call itself said.
pub fn diagnose(root: &Path, url: &str, attempt: &Attempt) -> Finding {
    let (tls, error) = match attempt {
        Attempt::Answered(what) => return Finding::new(Step::Http, what.clone()),
        Attempt::Unanswered { tls, error } => (*tls, error),
    };
    let Some(t) = Target::parse(url) else {
        return Finding::new(Step::Http, format!("{url} is not an http(s) URL: {error}"));
    };
    let snap = snapshot(root);
    let literal = t.host.parse::<IpAddr>().ok();
    if let Err(f) = snap.before_dns(literal) {
        return f;
    }
    let addrs = match literal {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => match resolve(&t.host, t.port) {
            Ok(a) => a,
            Err(why) => return snap.dns_failed(&t.host, &why),
        },
    };
    if literal.is_none() {
        // The route to what the name resolved to.
        if let Some(IpAddr::V4(a)) = addrs.iter().map(SocketAddr::ip).find(IpAddr::is_ipv4)
            && let Err(f) = snap.route(a)
        {
            return Finding::new(f.step, format!("{} is {a}: {}", t.host, f.evidence));
        }
    }
    let mut failures = Vec::new();
    for a in addrs.iter().take(MAX_ADDRESSES) {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(_) if tls && t.https => {
                return Finding::new(
                    Step::Tls,
                    format!("{a} accepts connections, but the TLS handshake failed: {error}"),
                );
            }
            Ok(_) => {
                return Finding::new(
                    Step::Http,
                    format!("{a} accepts connections, but the call got no answer: {error}"),
                );
            }
            Err(e) => failures.push(tcp_failed(*a, &e)),
        }
    }
    Finding::new(Step::Tcp, failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::fixture::write;

    /// `/proc/net/route`'s form of an address.
    fn hex(a: &str) -> String {
        format!(
            "{:08X}",
            u32::from_ne_bytes(a.parse::<Ipv4Addr>().unwrap().octets())
        )
    }

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    fn route_line(
        iface: &str,
        dest: &str,
        gw: &str,
        flags: u32,
        metric: u32,
        mask: &str,
    ) -> String {
        format!(
            "{iface}\t{}\t{}\t{flags:04X}\t0\t0\t{metric}\t{}\t0\t0\t0\n",
            hex(dest),
            hex(gw),
            hex(mask)
        )
    }

    /// A fib_trie as Linux 6.1 prints it, with `addr` (if any) on a /24 beside loopback.
    fn fib_trie(addr: Option<&str>) -> String {
        let mut t = String::from(
            "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
             +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              \
             /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n        \
             |-- 127.255.255.255\n           /32 link BROADCAST\n",
        );
        if let Some(a) = addr {
            t.push_str(&format!(
                "     +-- 10.0.0.0/24 2 0 2\n        |-- 10.0.0.0\n           /24 link UNICAST\n        \
                 |-- {a}\n           /32 host LOCAL\n        |-- 10.0.0.255\n           /32 link BROADCAST\n"
            ));
        }
        let local = t.replacen("Main:", "Local:", 1);
        t + &local
    }

    /// A machine on 10.0.0.0/24 with its default route through 10.0.0.1: eno1 (a NIC with
    /// carrier, 10.0.0.5) and eno2 (a NIC without), a bridge, lo.
    fn machine(root: &Path) {
        for (name, carrier, oper, device) in [
            ("eno1", "1", "up", true),
            ("eno2", "0", "down", true),
            ("br0", "1", "up", false),
        ] {
            let d = format!("sys/class/net/{name}");
            write(root, &format!("{d}/carrier"), &format!("{carrier}\n"));
            write(root, &format!("{d}/operstate"), &format!("{oper}\n"));
            write(root, &format!("{d}/flags"), "0x1003\n");
            if device {
                write(root, &format!("{d}/device/vendor"), "0x8086\n");
            }
        }
        write(root, "sys/class/net/lo/flags", "0x9\n");
        write(root, "proc/net/fib_trie", &fib_trie(Some("10.0.0.5")));
        write(
            root,
            "proc/net/route",
            &(HEADER.to_owned()
                + &route_line("eno1", "0.0.0.0", "10.0.0.1", 0x3, 100, "0.0.0.0")
                + &route_line("eno1", "10.0.0.0", "0.0.0.0", 0x1, 0, "255.255.255.0")),
        );
        write(
            root,
            "etc/resolv.conf",
            "# from udhcpc\nsearch lab\nnameserver 10.0.0.53\nnameserver 192.0.2.53\n",
        );
    }

    fn fresh() -> (tempfile::TempDir, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        machine(dir.path());
        let s = snapshot(dir.path());
        (dir, s)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_machine_on_the_network_passes_every_step_before_dns() {
        let (_dir, s) = fresh();
        assert_eq!(s.addresses, Some(vec!["10.0.0.5".parse().unwrap()]));
        assert_eq!(
            s.nameservers,
            Some(vec!["10.0.0.53".to_owned(), "192.0.2.53".to_owned()])
        );
        assert_eq!(s.before_dns(ip("10.0.0.9")), Ok(()), "on link");
        assert_eq!(
            s.before_dns(ip("203.0.113.7")),
            Ok(()),
            "through the gateway"
        );
        assert_eq!(s.before_dns(None), Ok(()), "a name");
        let r = s.route("10.0.0.9".parse().unwrap()).unwrap().unwrap();
        assert_eq!(r.to_string(), "10.0.0.0/24 dev eno1", "the longest prefix");
        let r = s.route("203.0.113.7".parse().unwrap()).unwrap().unwrap();
        assert_eq!(r.to_string(), "default via 10.0.0.1 dev eno1");
    }

    #[test]
    fn link_down() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        machine(root);
        write(root, "sys/class/net/eno1/carrier", "0\n");
        write(root, "sys/class/net/eno1/operstate", "down\n");
        write(root, "sys/class/net/eno2/flags", "0x1002\n");
        let f = snapshot(root).before_dns(ip("10.0.0.9")).unwrap_err();
        assert_eq!(f.step, Step::Link);
        assert_eq!(
            f.to_string(),
            "link failed: no network interface has carrier (cable, switch port): \
             eno1 (carrier 0, operstate down), eno2 (carrier 0, operstate down, set down)",
            "the bridge with carrier does not count: it has no device"
        );
        // An interface set down: the kernel gives no carrier reading.
        std::fs::remove_file(root.join("sys/class/net/eno1/carrier")).unwrap();
        let f = snapshot(root).link().unwrap_err();
        assert!(
            f.evidence
                .contains("eno1 (carrier unknown, operstate down)"),
            "{f}"
        );
        // No NIC at all (no driver).
        for n in ["eno1", "eno2", "br0"] {
            std::fs::remove_dir_all(root.join("sys/class/net").join(n)).unwrap();
        }
        let f = snapshot(root).link().unwrap_err();
        assert_eq!(
            f.evidence,
            "no network interface but lo (no driver for the NIC?)"
        );
    }

    #[test]
    fn without_a_nic_virtual_interfaces_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "sys/class/net/veth0/carrier", "1\n");
        write(root, "sys/class/net/lo/carrier", "1\n");
        assert_eq!(snapshot(root).link(), Ok(()));
        write(root, "sys/class/net/veth0/carrier", "0\n");
        let f = snapshot(root).link().unwrap_err();
        assert!(f.evidence.contains("veth0 (carrier 0"), "{f}");
        assert!(!f.evidence.contains("lo"), "{f}");
    }

    #[test]
    fn no_address() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        machine(root);
        write(root, "proc/net/fib_trie", &fib_trie(None));
        let s = snapshot(root);
        assert_eq!(s.addresses, Some(vec![]), "loopback's do not count");
        let f = s.before_dns(ip("10.0.0.9")).unwrap_err();
        assert_eq!(f.step, Step::Address);
        assert_eq!(
            f.evidence,
            "no IPv4 address on an interface that is up (no DHCP lease?); up: \
             br0 (carrier 1, operstate up), eno1 (carrier 1, operstate up), \
             eno2 (carrier 0, operstate down)"
        );
        assert_eq!(
            s.before_dns(None).unwrap_err().step,
            Step::Address,
            "a name"
        );
        assert_eq!(s.before_dns(ip("127.0.0.1")), Ok(()), "the API on loopback");
    }

    #[test]
    fn no_route() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        machine(root);
        write(
            root,
            "proc/net/route",
            &(HEADER.to_owned()
                + &route_line("eno1", "10.0.0.0", "0.0.0.0", 0x1, 0, "255.255.255.0")
                // a route that is not up is no route
                + &route_line("eno1", "0.0.0.0", "10.0.0.1", 0x2, 0, "0.0.0.0")),
        );
        let s = snapshot(root);
        let f = s.before_dns(ip("10.1.0.9")).unwrap_err();
        assert_eq!(
            f.to_string(),
            "route failed: no route to 10.1.0.9 and no default route; \
             the routes are: 10.0.0.0/24 dev eno1"
        );
        assert_eq!(s.before_dns(ip("10.0.0.77")), Ok(()));
        assert_eq!(s.before_dns(ip("10.0.0.5")), Ok(()), "its own address");
        write(root, "proc/net/route", HEADER);
        let f = snapshot(root)
            .route("10.0.0.9".parse().unwrap())
            .unwrap_err();
        assert!(f.evidence.ends_with("the routing table is empty"), "{f}");
    }

    #[test]
    fn a_route_through_a_nic_without_carrier_or_a_reject_route() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        machine(root);
        write(
            root,
            "proc/net/route",
            &(HEADER.to_owned()
                + &route_line("eno1", "0.0.0.0", "10.0.0.1", 0x3, 0, "0.0.0.0")
                + &route_line("eno2", "10.2.0.0", "0.0.0.0", 0x1, 0, "255.255.0.0")
                + &route_line("eno1", "10.3.0.0", "0.0.0.0", 0x201, 0, "255.255.0.0")
                // the lower metric wins between equal prefixes
                + &route_line("eno2", "10.4.0.0", "0.0.0.0", 0x1, 200, "255.255.0.0")
                + &route_line("eno1", "10.4.0.0", "10.0.0.2", 0x3, 100, "255.255.0.0")),
        );
        let s = snapshot(root);
        let f = s.before_dns(ip("10.2.3.4")).unwrap_err();
        assert_eq!(
            f.evidence,
            "the route to 10.2.3.4 (10.2.0.0/16 dev eno2) goes out eno2 (carrier 0, operstate down), \
             which has no carrier"
        );
        let f = s.before_dns(ip("10.3.3.4")).unwrap_err();
        assert_eq!(
            f.evidence,
            "the route to 10.3.3.4 refuses it: 10.3.0.0/16 dev eno1 (reject)"
        );
        assert_eq!(
            s.route("10.4.0.1".parse().unwrap())
                .unwrap()
                .unwrap()
                .to_string(),
            "10.4.0.0/16 via 10.0.0.2 dev eno1"
        );
    }

    #[test]
    fn what_cannot_be_read_is_not_blamed() {
        let dir = tempfile::tempdir().unwrap();
        let s = snapshot(dir.path());
        assert_eq!(s, Snapshot::default());
        assert_eq!(s.before_dns(ip("10.0.0.1")), Ok(()));
        assert_eq!(
            s.dns_failed("plinth.lab", "Name or service not known")
                .evidence,
            "plinth.lab does not resolve (Name or service not known); there is no /etc/resolv.conf"
        );
    }

    #[test]
    fn dns_names_the_nameservers_and_their_routes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        machine(root);
        write(
            root,
            "proc/net/route",
            &(HEADER.to_owned()
                + &route_line("eno1", "10.0.0.0", "0.0.0.0", 0x1, 0, "255.255.255.0")),
        );
        let f = snapshot(root).dns_failed("plinth.lab", "Name or service not known");
        assert_eq!(f.step, Step::Dns);
        assert_eq!(
            f.evidence,
            "plinth.lab does not resolve (Name or service not known); /etc/resolv.conf lists \
             nameserver 10.0.0.53 (route 10.0.0.0/24 dev eno1), 192.0.2.53 (no route to \
             192.0.2.53 and no default route; the routes are: 10.0.0.0/24 dev eno1)"
        );
        write(root, "etc/resolv.conf", "search lab\n");
        assert!(
            snapshot(root)
                .dns_failed("plinth.lab", "x")
                .evidence
                .ends_with("/etc/resolv.conf lists no nameserver")
        );
    }

    #[test]
    fn what_others_wrote_cannot_steer_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // (a rogue DHCP server's "nameserver", written by a careless hook)
        write(root, "etc/resolv.conf", "nameserver 10.0.0.53\x1b[2J\x07\n");
        let f = snapshot(root).dns_failed("plinth.lab", "x");
        assert!(f.evidence.ends_with("nameserver 10.0.0.53?[2J?"), "{f}");
        let f = Finding::new(Step::Http, "y".repeat(5000));
        assert_eq!(f.evidence.len(), MAX_EVIDENCE + 3);
        assert!(f.evidence.ends_with("y..."));
    }

    #[test]
    fn urls() {
        let t = |u: &str| Target::parse(u).map(|t| (t.https, t.host, t.port));
        assert_eq!(
            t("http://10.0.0.1:8080/api/v1/x"),
            Some((false, "10.0.0.1".into(), 8080))
        );
        assert_eq!(
            t("https://plinth.lab"),
            Some((true, "plinth.lab".into(), 443))
        );
        assert_eq!(
            t("http://plinth.lab/x?y"),
            Some((false, "plinth.lab".into(), 80))
        );
        assert_eq!(
            t("http://[fd00::1]:81/x"),
            Some((false, "fd00::1".into(), 81))
        );
        assert_eq!(t("ftp://plinth.lab/"), None);
        assert_eq!(t("http://:80/"), None);
        assert_eq!(t("http://plinth.lab:http/"), None);
    }

    #[test]
    fn an_answer_is_named_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // (link down: an answer proves it works all the same)
        write(dir.path(), "sys/class/net/eno1/carrier", "0\n");
        write(dir.path(), "sys/class/net/eno1/device/vendor", "0x8086\n");
        let e = plinth_client::Error::Api(plinth_client::ApiError {
            status: 503,
            detail: plinth_types::api::ErrorDetail {
                code: "unavailable".into(),
                message: "the database is unavailable".into(),
                current_state: None,
                current_version: None,
            },
        });
        let f = diagnose(dir.path(), "http://10.0.0.1:8080/x", &Attempt::of(&e));
        assert_eq!(
            f.to_string(),
            "HTTP failed: plinth answered HTTP 503: the database is unavailable (unavailable)"
        );
        let e = plinth_client::Error::Status {
            status: 502,
            reason: "Bad Gateway".into(),
            url: "http://10.0.0.1:8080/x".into(),
        };
        assert!(
            diagnose(dir.path(), "http://10.0.0.1:8080/x", &Attempt::of(&e))
                .evidence
                .starts_with(
                    "the server answered HTTP 502 Bad Gateway, without plinth's error body"
                )
        );
    }

    #[test]
    fn tcp_refused_on_loopback() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let attempt = Attempt::Unanswered {
            tls: false,
            error: "Connection Failed".into(),
        };
        let f = diagnose(dir.path(), &format!("http://127.0.0.1:{port}/x"), &attempt);
        assert_eq!(f.step, Step::Tcp);
        assert_eq!(
            f.evidence,
            format!(
                "127.0.0.1:{port} refused the connection (nothing listens on port {port}, or a \
                 firewall rejects it)"
            )
        );
        // Something listens: the connection opens, so the call failed later.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = diagnose(dir.path(), &format!("http://127.0.0.1:{port}/x"), &attempt);
        assert_eq!(f.step, Step::Http, "{f}");
        let tls = Attempt::Unanswered {
            tls: true,
            error: "Connection Failed: tls connection init failed".into(),
        };
        let f = diagnose(dir.path(), &format!("https://127.0.0.1:{port}/x"), &tls);
        assert_eq!(f.step, Step::Tls, "{f}");
        assert!(
            f.evidence
                .contains("TLS handshake failed: Connection Failed"),
            "{f}"
        );
    }
}
