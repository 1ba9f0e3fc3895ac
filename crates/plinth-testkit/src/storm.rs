//! The boot storm (`plinth-lab storm`): N simulated machines booting at once, each doing what a
//! PXE ROM, iPXE and plinth's ramdisk agent do, against whatever serves the network the
//! interface is on (plinth, or dnsmasq and nginx in the benchmark). Run it inside the client
//! namespace; the interface needs a route to the server (an address of its own outside the
//! pool will do).
//!
//! One machine, in order (the phases of the report):
//! 1. `dhcp`: DORA as a PXE ROM (option 60 `PXEClient:Arch:...`, 93 BIOS or x86-64 UEFI, 94, 97
//!    the machine's GUID, the broadcast flag so that every answer is broadcast), retransmitted
//!    after 4, 8, 16 and 32 s as the PXE specification has it;
//! 2. `address`: the leased address is added to the interface (`/32`, by `ip -batch`, the
//!    requests of many machines in one call);
//! 3. `tftp`: the boot file of the answer (`file` or option 67, from option 66 or `siaddr`),
//!    from the leased address: RRQ with `blksize` and `tsize`, each block acknowledged,
//!    retransmitted on timeout; an ERROR ends the machine's boot, as it ends PXE firmware's
//!    (refusals such as "server busy" counted apart);
//! 4. `ipxe_dhcp`: DORA again as iPXE (option 77 `iPXE`, 175, 61, 50 the address it has);
//! 5. `script`: the script URL of the answer, `${...}` settings expanded as iPXE does, fetched
//!    over HTTP from the leased address; its `kernel` line gives the kernel URL and the agent's
//!    command line (`plinth.api`, `plinth.machine`, `plinth.token`), its `initrd` line the initrd;
//! 6. `kernel`, `initrd`: both downloaded to nowhere, their length checked against
//!    Content-Length;
//! 7. `report`: the inspection report POSTed as plinth-agent posts it (the same path, body type
//!    and bearer token, from the leased address), retried like the agent on transport errors and
//!    5xx (1 s doubling to 30 s); a 4xx is a failure.
//!
//! The sockets: one UDP socket on port 68 of the interface receives every DHCP answer and hands
//! each to the machine whose xid and chaddr it carries; TFTP and HTTP go from each machine's own
//! address. The result is one JSON object ([`Report`]) on stdout; progress goes to stderr.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dhcproto::v4::{
    Architecture, Decodable, DhcpOption, Encodable, Flags, Message, MessageType, OptionCode,
};
use plinth_types::MacAddr;
use plinth_types::api::{
    Arch, CpuFacts, DiskFacts, Firmware, InspectionReport, NicFacts, SystemFacts,
};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// `plinth-lab storm`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// The interface (in this namespace) to boot on: DHCP is broadcast on it and the leased
    /// addresses are added to it. It needs a route to the servers.
    #[arg(long)]
    pub iface: String,
    /// How many machines boot.
    #[arg(long, default_value_t = 1000)]
    pub machines: u32,
    /// The first machine's MAC; machine i has this MAC plus i.
    #[arg(long, default_value = "52:54:00:00:00:01")]
    pub mac_base: MacAddr,
    /// Percent of the machines that boot as x86-64 UEFI (option 93 = 7, `ipxe.efi`); the rest
    /// boot as BIOS (93 = 0, `undionly.kpxe`). Every (100 / share)th machine is UEFI.
    #[arg(long, default_value_t = 0)]
    pub uefi_percent: u32,
    /// Spread the machines' starts evenly over this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub ramp_secs: f64,
    /// A machine that has not reported after this many seconds has failed.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// The TFTP block size asked for.
    #[arg(long, default_value_t = 1468)]
    pub blksize: u16,
    /// Leave the leased addresses on the interface afterwards.
    #[arg(long)]
    pub keep_addresses: bool,
}

/// What a storm did: `plinth-lab storm`'s output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machines: u32,
    /// Machines whose report was accepted.
    pub finished: u32,
    pub failed: u32,
    /// From the first machine's start to the last machine's end (finished or failed).
    pub wall_secs: f64,
    /// Finished machines per minute of wall time.
    pub machines_per_minute: f64,
    /// Per phase (and `total`, a machine's start to its accepted report), over the finished
    /// machines: seconds.
    pub phases: BTreeMap<String, PhaseStats>,
    pub slowest: Option<Slowest>,
    pub failures: Vec<MachineFailure>,
    pub retransmissions: Retransmissions,
    /// Bytes received by TFTP and over HTTP (kernel and initrd), all machines.
    pub tftp_bytes: u64,
    pub http_bytes: u64,
    /// Machines whose second DHCP (iPXE's) gave another address than the first.
    pub address_changes: u64,
    /// Leased addresses that another machine held already (a server handing one out twice).
    pub duplicate_addresses: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slowest {
    pub mac: String,
    pub total_secs: f64,
    /// Its phases: seconds.
    pub phases: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineFailure {
    pub mac: String,
    /// The phase it failed in.
    pub phase: String,
    pub reason: String,
    /// Seconds after its start.
    pub after_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Retransmissions {
    /// DHCP requests sent again for want of an answer (PXE ROM and iPXE exchanges).
    pub dhcp: u64,
    /// TFTP read requests and acknowledgements sent again for want of an answer.
    pub tftp: u64,
    /// TFTP read requests answered with an error ("server busy", or code 0) before any data:
    /// the machine fails there, as PXE firmware (edk2's MTFTP, PXE ROMs) gives up its network
    /// boot on an ERROR.
    pub tftp_refused: u64,
    /// Machines refused so (one refusal each: it ends the machine).
    pub tftp_refused_machines: u64,
    /// Inspection reports posted again after a transport error or a 5xx.
    pub report: u64,
}

/// Runs a storm and prints its [`Report`] as JSON on stdout.
pub fn run(args: StormArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(storm(args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The phases in order, as the report names them.
const PHASES: &[&str] = &[
    "dhcp",
    "address",
    "tftp",
    "ipxe_dhcp",
    "script",
    "kernel",
    "initrd",
    "report",
];

/// A PXE ROM's DHCP timeouts (PXE 2.1: 4, 8, 16, 32 s).
const PXE_SCHEDULE: &[u64] = &[4, 8, 16, 32];
/// iPXE's: 1 s doubling, at most 10 s, for about a minute.
const IPXE_SCHEDULE: &[u64] = &[1, 2, 4, 8, 10, 10, 10, 10];

/// Runs a storm: the machines, then the addresses they added removed (unless kept).
pub async fn storm(args: StormArgs) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::new(&args)?);
    tokio::spawn(receive_dhcp(shared.clone()));
    let (addr_tx, addr_rx) = mpsc::unbounded_channel();
    tokio::spawn(add_addresses(args.iface.clone(), addr_rx));

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let n = args.machines.max(1);
    for i in 0..args.machines {
        let delay = Duration::from_secs_f64(args.ramp_secs.max(0.0) * f64::from(i) / f64::from(n));
        let m = Machine::new(&args, i, shared.clone(), addr_tx.clone());
        let timeout = Duration::from_secs(args.timeout_secs);
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            m.boot(timeout).await
        });
    }
    drop(addr_tx);
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "storm: {:.0} s: {} finished, {} failed",
                    start.elapsed().as_secs_f64(),
                    shared.finished.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                );
            }
        })
    };
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r.context("a machine's task panicked")?);
    }
    let wall = start.elapsed();
    progress.abort();

    let leased: Vec<Ipv4Addr> = outcomes.iter().flat_map(|o| o.addresses.clone()).collect();
    if !args.keep_addresses {
        let lines: Vec<String> = leased
            .iter()
            .map(|a| format!("addr del {a}/32 dev {}", args.iface))
            .collect();
        ip_batch(&lines).await.ok();
    }
    Ok(summarize(&args, &shared, outcomes, wall))
}

fn summarize(args: &StormArgs, shared: &Shared, outcomes: Vec<Outcome>, wall: Duration) -> Report {
    let mut per_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut slowest: Option<Slowest> = None;
    let mut finished = 0;
    for o in outcomes {
        match o.failure {
            Some(f) => failures.push(f),
            None => {
                finished += 1;
                for (p, s) in &o.phases {
                    per_phase.entry(p.clone()).or_default().push(*s);
                }
                per_phase.entry("total".into()).or_default().push(o.total);
                if slowest.as_ref().is_none_or(|s| s.total_secs < o.total) {
                    slowest = Some(Slowest {
                        mac: o.mac.clone(),
                        total_secs: o.total,
                        phases: o.phases.clone(),
                    });
                }
            }
        }
    }
    failures.sort_by(|a, b| a.mac.cmp(&b.mac));
    let phases = per_phase
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_by(f64::total_cmp);
            let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
            let stats = PhaseStats {
                p50: rank(0.5),
                p95: rank(0.95),
                max: v[v.len() - 1],
            };
            (p, stats)
        })
        .collect();
    let wall_secs = wall.as_secs_f64();
    let c = &shared.counters;
    Report {
        machines: args.machines,
        finished,
        failed: failures.len() as u32,
        wall_secs,
        machines_per_minute: f64::from(finished) * 60.0 / wall_secs.max(1e-9),
        phases,
        slowest,
        failures,
        retransmissions: Retransmissions {
            dhcp: c.dhcp_retx.load(Ordering::Relaxed),
            tftp: c.tftp_retx.load(Ordering::Relaxed),
            tftp_refused: c.tftp_refused.load(Ordering::Relaxed),
            tftp_refused_machines: c.tftp_refused_machines.load(Ordering::Relaxed),
            report: c.report_retx.load(Ordering::Relaxed),
        },
        tftp_bytes: c.tftp_bytes.load(Ordering::Relaxed),
        http_bytes: c.http_bytes.load(Ordering::Relaxed),
        address_changes: c.address_changes.load(Ordering::Relaxed),
        duplicate_addresses: c.duplicates.load(Ordering::Relaxed),
    }
}

// ------------------------------------------------------------------------------------ shared

#[derive(Default)]
struct Counters {
    dhcp_retx: AtomicU64,
    tftp_retx: AtomicU64,
    tftp_refused: AtomicU64,
    tftp_refused_machines: AtomicU64,
    report_retx: AtomicU64,
    tftp_bytes: AtomicU64,
    http_bytes: AtomicU64,
    address_changes: AtomicU64,
    duplicates: AtomicU64,
    /// DHCP answers for no exchange in progress (late duplicates).
    stray: AtomicU64,
}

type Waiter = ([u8; 6], mpsc::UnboundedSender<Message>);

/// What the machines share: the DHCP socket and who waits for which xid, the addresses
/// handed out, the counters.
struct Shared {
    dhcp: UdpSocket,
    /// xid → the machine (MAC) waiting for its answers, and where they go.
    waiting: Mutex<HashMap<u32, Waiter>>,
    /// Address → the machine (MAC) it was leased to.
    leased: Mutex<HashMap<Ipv4Addr, [u8; 6]>>,
    counters: Counters,
    finished: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn new(args: &StormArgs) -> anyhow::Result<Shared> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(args.iface.as_bytes()))
            .with_context(|| format!("binding to interface {}", args.iface))?;
        // Room for a storm's worth of answers arriving together.
        s.set_recv_buffer_size(8 << 20).ok();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
            .context("binding UDP port 68")?;
        s.set_nonblocking(true)?;
        let dhcp = UdpSocket::from_std(s.into())?;
        Ok(Shared {
            dhcp,
            waiting: Mutex::new(HashMap::new()),
            leased: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// A fresh xid whose answers go to `tx`, until the returned guard is dropped.
    fn register(self: &Arc<Self>, mac: [u8; 6], tx: mpsc::UnboundedSender<Message>) -> Xid {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let xid = rand::random::<u32>();
            if let std::collections::hash_map::Entry::Vacant(e) = w.entry(xid) {
                e.insert((mac, tx));
                return Xid {
                    xid,
                    shared: self.clone(),
                };
            }
        }
    }
}

/// An xid registered with [`Shared::register`]; unregistered on drop.
struct Xid {
    xid: u32,
    shared: Arc<Shared>,
}

impl Drop for Xid {
    fn drop(&mut self) {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.xid);
    }
}

/// Hands each DHCP answer on port 68 to the machine waiting for its xid and chaddr.
async fn receive_dhcp(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, _)) = shared.dhcp.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // dhcproto's decoder can panic on malformed input (see plinth-dhcp's wire module);
        // answers come from the server under test, but a panic must not end the storm.
        let bytes = &buf[..n];
        let Ok(Ok(msg)) = std::panic::catch_unwind(|| Message::from_bytes(bytes)) else {
            continue;
        };
        let to = {
            let w = shared.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.get(&msg.xid())
                .filter(|(mac, _)| msg.chaddr().get(..6) == Some(&mac[..]))
                .map(|(_, tx)| tx.clone())
        };
        match to {
            Some(tx) => {
                tx.send(msg).ok();
            }
            None => {
                shared.counters.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One address to add to the interface, and where to say whether it worked.
type AddRequest = (Ipv4Addr, oneshot::Sender<Result<(), String>>);

/// Adds the addresses the machines ask for to `iface`, as many as are waiting in one
/// `ip -batch` call (1,000 `ip addr add` processes would cost more than the boots).
async fn add_addresses(iface: String, mut rx: mpsc::UnboundedReceiver<AddRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let lines: Vec<String> = batch
            .iter()
            .map(|(a, _)| format!("addr add {a}/32 dev {iface}"))
            .collect();
        let result = ip_batch(&lines).await;
        for (i, (_, tx)) in batch.into_iter().enumerate() {
            let r = match &result {
                Ok(failed) => match failed.get(&(i + 1)) {
                    Some(why) => Err(why.clone()),
                    None => Ok(()),
                },
                Err(e) => Err(format!("{e:#}")),
            };
            tx.send(r).ok();
        }
    }
}

/// Runs `ip -force -batch -` with `lines`; the lines that failed (1-based) with ip's message.
async fn ip_batch(lines: &[String]) -> anyhow::Result<HashMap<usize, String>> {
    use tokio::io::AsyncWriteExt;
    if lines.is_empty() {
        return Ok(HashMap::new());
    }
    let mut child = tokio::process::Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip (iproute2)")?;
    let mut stdin = child.stdin.take().context("ip's stdin")?;
    stdin
        .write_all((lines.join("\n") + "\n").as_bytes())
        .await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    // ip prints the error, then "Command failed -:LINE".
    let text = String::from_utf8_lossy(&out.stderr);
    let mut failed = HashMap::new();
    let mut last = String::new();
    for l in text.lines() {
        match l.strip_prefix("Command failed -:") {
            Some(n) => {
                if let Ok(n) = n.trim().parse() {
                    failed.insert(n, std::mem::take(&mut last));
                }
            }
            None => last = l.trim().to_owned(),
        }
    }
    if !out.status.success() && failed.is_empty() {
        bail!("ip -batch failed: {text}");
    }
    Ok(failed)
}

// ------------------------------------------------------------------------------------ machine

/// What became of one machine.
struct Outcome {
    mac: String,
    phases: BTreeMap<String, f64>,
    total: f64,
    failure: Option<MachineFailure>,
    addresses: Vec<Ipv4Addr>,
}

struct Machine {
    mac: [u8; 6],
    uefi: bool,
    uuid: uuid::Uuid,
    shared: Arc<Shared>,
    addr_tx: mpsc::UnboundedSender<AddRequest>,
    blksize: u16,
    started: Instant,
    phase: &'static str,
    phase_started: Instant,
    phases: BTreeMap<String, f64>,
    addresses: Vec<Ipv4Addr>,
}

/// A DHCP lease as the client sees it.
struct Lease {
    ip: Ipv4Addr,
    server_id: Ipv4Addr,
    siaddr: Ipv4Addr,
    file: Option<String>,
    tftp_server: Option<String>,
}

/// What a ramdisk script says to boot.
#[derive(Debug, PartialEq)]
struct RamdiskScript {
    kernel: String,
    initrd: String,
    /// The kernel's command line.
    args: Vec<String>,
}

impl Machine {
    fn new(
        args: &StormArgs,
        i: u32,
        shared: Arc<Shared>,
        addr_tx: mpsc::UnboundedSender<AddRequest>,
    ) -> Machine {
        let base = args.mac_base.0;
        let mut n = [0u8; 8];
        n[2..].copy_from_slice(&base);
        let v = u64::from_be_bytes(n).wrapping_add(u64::from(i));
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&v.to_be_bytes()[2..]);
        let every = match args.uefi_percent.min(100) {
            0 => u32::MAX,
            p => (100 / p).max(1),
        };
        let uefi = every != u32::MAX && i % every == every - 1;
        let mut u = [0u8; 16];
        u[..5].copy_from_slice(b"STORM");
        u[10..].copy_from_slice(&mac);
        let now = Instant::now();
        Machine {
            mac,
            uefi,
            uuid: uuid::Uuid::from_bytes(u),
            shared,
            addr_tx,
            blksize: args.blksize,
            started: now,
            phase: "start",
            phase_started: now,
            phases: BTreeMap::new(),
            addresses: Vec::new(),
        }
    }

    fn mac_text(&self) -> String {
        MacAddr(self.mac).to_string()
    }

    /// Ends the current phase (recording its time) and starts `next`.
    fn enter(&mut self, next: &'static str) {
        let now = Instant::now();
        if self.phase != "start" {
            self.phases.insert(
                self.phase.to_owned(),
                (now - self.phase_started).as_secs_f64(),
            );
        }
        self.phase = next;
        self.phase_started = now;
    }

    async fn boot(mut self, timeout: Duration) -> Outcome {
        self.started = Instant::now();
        self.phase_started = self.started;
        let result = match tokio::time::timeout(timeout, self.steps()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no report after {} s", timeout.as_secs())),
        };
        let total = self.started.elapsed().as_secs_f64();
        let failure = match result {
            Ok(()) => {
                self.shared.finished.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(reason) => {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                Some(MachineFailure {
                    mac: self.mac_text(),
                    phase: self.phase.to_owned(),
                    reason,
                    after_secs: total,
                })
            }
        };
        Outcome {
            mac: self.mac_text(),
            phases: self.phases,
            total,
            failure,
            addresses: self.addresses,
        }
    }

    async fn steps(&mut self) -> Result<(), String> {
        self.enter(PHASES[0]);
        let pxe = self.dora(false, None).await?;
        let file = pxe
            .file
            .clone()
            .filter(|f| !f.is_empty())
            .ok_or("the PXE answer names no boot file")?;
        self.enter("address");
        self.add_address(pxe.ip).await?;
        self.enter("tftp");
        let server = match &pxe.tftp_server {
            Some(s) => s
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("option 66 {s:?} is not an address"))?,
            None if !pxe.siaddr.is_unspecified() => pxe.siaddr,
            None => pxe.server_id,
        };
        let got = self.tftp(pxe.ip, server, &file).await?;
        self.shared
            .counters
            .tftp_bytes
            .fetch_add(got, Ordering::Relaxed);

        self.enter("ipxe_dhcp");
        let ipxe = self.dora(true, Some(pxe.ip)).await?;
        if ipxe.ip != pxe.ip {
            self.shared
                .counters
                .address_changes
                .fetch_add(1, Ordering::Relaxed);
            self.add_address(ipxe.ip).await?;
        }
        let url = ipxe
            .file
            .clone()
            .filter(|f| f.starts_with("http://") || f.starts_with("https://"))
            .ok_or_else(|| format!("iPXE's answer names no script URL ({:?})", ipxe.file))?;
        let url = self.expand(&url);

        self.enter("script");
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(ipxe.ip))
            .no_proxy()
            .tls_built_in_root_certs(false)
            .connect_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let resp = http.get(&url).send().await.map_err(|e| http_error(&e))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let text = resp.text().await.map_err(|e| http_error(&e))?;
        let script = parse_script(&text)?;
        let base = reqwest::Url::parse(&url).map_err(|e| format!("{url}: {e}"))?;
        let join = |u: &str| {
            base.join(u)
                .map(|u| u.to_string())
                .map_err(|e| format!("{u}: {e}"))
        };
        let (kernel, initrd) = (join(&script.kernel)?, join(&script.initrd)?);
        let arg = |k: &str| {
            script
                .args
                .iter()
                .find_map(|a| a.strip_prefix(k)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("the kernel command line has no {k}="))
        };
        let (api, machine, token) = (
            arg("plinth.api")?,
            arg("plinth.machine")?,
            arg("plinth.token")?,
        );
        let mode = arg("plinth.mode")?;
        if mode != "inspect" {
            return Err(format!("the ramdisk is to {mode}, not inspect"));
        }

        self.enter("kernel");
        self.download(&http, &kernel).await?;
        self.enter("initrd");
        self.download(&http, &initrd).await?;

        self.enter("report");
        self.report(&http, &api, &machine, &token).await?;
        self.enter("done");
        Ok(())
    }

    /// iPXE's expansion of the settings a script URL names (`${net0/mac}`, `${platform}`,
    /// `${buildarch}`, `${uuid}`, `${serial:uristring}`); an unset setting is empty.
    fn expand(&self, url: &str) -> String {
        let mut out = String::new();
        let mut rest = url;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find('}') else {
                out.push_str(&rest[i..]);
                return out;
            };
            let name = &rest[i + 2..i + j];
            let name = name.split(':').next().unwrap_or(name);
            out.push_str(&match name {
                "net0/mac" | "mac" => self.mac_text(),
                "platform" => (if self.uefi { "efi" } else { "pcbios" }).to_owned(),
                "buildarch" => (if self.uefi { "x86_64" } else { "i386" }).to_owned(),
                "uuid" => self.uuid.to_string(),
                _ => String::new(),
            });
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        out
    }

    // -------------------------------------------------------------------------------- DHCP

    fn dhcp_message(&self, xid: u32, ipxe: bool, kind: MessageType) -> Message {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        m.set_flags(Flags::default().set_broadcast());
        let secs = self.started.elapsed().as_secs().min(u64::from(u16::MAX)) as u16;
        m.set_secs(secs);
        let (arch, class) = if self.uefi {
            (7, "PXEClient:Arch:00007:UNDI:003016")
        } else {
            (0, "PXEClient:Arch:00000:UNDI:002001")
        };
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::MaxMessageSize(if ipxe { 1472 } else { 1260 }));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
        o.insert(DhcpOption::ClientNetworkInterface(1, 3, 16));
        let mut guid = vec![0u8];
        guid.extend_from_slice(&self.uuid.to_bytes_le());
        o.insert(DhcpOption::ClientMachineIdentifier(guid));
        o.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        let mut prl: Vec<OptionCode> = [1u8, 3, 6, 12, 15, 17, 43, 60, 66, 67, 119, 128]
            .into_iter()
            .map(OptionCode::from)
            .collect();
        if ipxe {
            prl.push(OptionCode::from(175));
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            // iPXE's encapsulated options: its build's features (HTTP, PXE extensions).
            o.insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                OptionCode::from(175),
                vec![0x13, 1, 1, 0x10, 1, 2],
            )));
            let mut id = vec![1u8];
            id.extend_from_slice(&self.mac);
            o.insert(DhcpOption::ClientIdentifier(id));
        }
        o.insert(DhcpOption::ParameterRequestList(prl));
        m
    }

    /// DISCOVER → OFFER → REQUEST → ACK, as a PXE ROM (`ipxe` false) or iPXE.
    async fn dora(&mut self, ipxe: bool, previous: Option<Ipv4Addr>) -> Result<Lease, String> {
        let schedule = if ipxe { IPXE_SCHEDULE } else { PXE_SCHEDULE };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let xid = self.shared.register(self.mac, tx);
        let mut discover = self.dhcp_message(xid.xid, ipxe, MessageType::Discover);
        if let Some(p) = previous {
            discover
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(p));
        }
        let offer = self
            .exchange(&discover, &mut rx, schedule, |m| {
                m.opts().msg_type() == Some(MessageType::Offer) && !m.yiaddr().is_unspecified()
            })
            .await
            .map_err(|e| format!("DISCOVER: {e}"))?;
        let server_id = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return Err("the OFFER has no server identifier".into()),
        };
        let mut request = self.dhcp_message(xid.xid, ipxe, MessageType::Request);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(server_id));
        let ack = self
            .exchange(&request, &mut rx, schedule, |m| {
                matches!(
                    m.opts().msg_type(),
                    Some(MessageType::Ack | MessageType::Nak)
                ) && matches!(m.opts().get(OptionCode::ServerIdentifier),
                    Some(DhcpOption::ServerIdentifier(s)) if *s == server_id)
            })
            .await
            .map_err(|e| format!("REQUEST: {e}"))?;
        if ack.opts().msg_type() == Some(MessageType::Nak) {
            let why = match ack.opts().get(OptionCode::Message) {
                Some(DhcpOption::Message(m)) => m.clone(),
                _ => String::new(),
            };
            return Err(format!("NAK {why}"));
        }
        if ack.yiaddr() != offer.yiaddr() {
            return Err(format!(
                "offered {} but acknowledged {}",
                offer.yiaddr(),
                ack.yiaddr()
            ));
        }
        let text = |code| match ack.opts().get(code) {
            Some(DhcpOption::BootfileName(b) | DhcpOption::TFTPServerName(b)) => {
                Some(String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
            }
            _ => None,
        };
        let file = text(OptionCode::BootfileName).or_else(|| {
            ack.fname_str()
                .and_then(Result::ok)
                .map(|s| s.trim_end_matches('\0').to_owned())
                .filter(|s| !s.is_empty())
        });
        Ok(Lease {
            ip: ack.yiaddr(),
            server_id,
            siaddr: ack.siaddr(),
            file,
            tftp_server: text(OptionCode::TFTPServerName),
        })
    }

    /// Sends `msg` (again after each timeout of `schedule`) until an answer passes `want`.
    async fn exchange(
        &self,
        msg: &Message,
        rx: &mut mpsc::UnboundedReceiver<Message>,
        schedule: &[u64],
        want: impl Fn(&Message) -> bool,
    ) -> Result<Message, String> {
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
        for (i, secs) in schedule.iter().enumerate() {
            if i > 0 {
                self.shared
                    .counters
                    .dhcp_retx
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.shared
                .dhcp
                .send_to(&bytes, to)
                .await
                .map_err(|e| format!("sending: {e}"))?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(*secs);
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) if want(&m) => return Ok(m),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err("the receiver stopped".into()),
                    Err(_) => break,
                }
            }
        }
        Err(format!(
            "no answer after {} tries ({} s)",
            schedule.len(),
            schedule.iter().sum::<u64>()
        ))
    }

    async fn add_address(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        {
            let mut leased = self.shared.leased.lock().unwrap_or_else(|e| e.into_inner());
            match leased.get(&ip) {
                Some(other) if *other != self.mac => {
                    self.shared
                        .counters
                        .duplicates
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(format!("{ip} was leased to {} already", MacAddr(*other)));
                }
                Some(_) => return Ok(()),
                None => {
                    leased.insert(ip, self.mac);
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.addr_tx
            .send((ip, tx))
            .map_err(|_| "the address task stopped".to_owned())?;
        rx.await
            .map_err(|_| "the address task stopped".to_owned())?
            .map_err(|e| format!("adding {ip}: {e}"))?;
        self.addresses.push(ip);
        Ok(())
    }

    // -------------------------------------------------------------------------------- TFTP

    /// Reads `file` from `server` by TFTP from `local`: the bytes received.
    async fn tftp(&self, local: Ipv4Addr, server: Ipv4Addr, file: &str) -> Result<u64, String> {
        const TIMEOUT: Duration = Duration::from_secs(2);
        const TRIES: u32 = 6;
        let mut rrq = vec![0, 1];
        for part in [
            file,
            "octet",
            "blksize",
            &self.blksize.to_string(),
            "tsize",
            "0",
        ] {
            rrq.extend_from_slice(part.as_bytes());
            rrq.push(0);
        }
        let mut buf = vec![0u8; usize::from(self.blksize.max(512)) + 4];
        let sock = UdpSocket::bind(SocketAddrV4::new(local, 0))
            .await
            .map_err(|e| format!("binding {local}: {e}"))?;
        let to = SocketAddr::from((server, 69));
        let mut last = rrq.clone();
        let mut last_to = to;
        let mut peer: Option<SocketAddr> = None;
        let mut blksize = 512usize;
        let mut tsize: Option<u64> = None;
        let mut expected: u16 = 1;
        let mut received: u64 = 0;
        let mut tries = 0;
        sock.send_to(&last, last_to)
            .await
            .map_err(|e| format!("sending the read request: {e}"))?;
        loop {
            let (n, from) = match tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf)).await {
                Ok(r) => r.map_err(|e| format!("receiving: {e}"))?,
                Err(_) => {
                    tries += 1;
                    if tries > TRIES {
                        return Err(format!(
                            "{file}: no answer after {TRIES} retransmissions (block {expected})"
                        ));
                    }
                    self.shared
                        .counters
                        .tftp_retx
                        .fetch_add(1, Ordering::Relaxed);
                    sock.send_to(&last, last_to)
                        .await
                        .map_err(|e| format!("sending: {e}"))?;
                    continue;
                }
            };
            if from.ip() != IpAddr::V4(server) || peer.is_some_and(|p| p != from) || n < 4 {
                continue;
            }
            let pkt = &buf[..n];
            let op = u16::from_be_bytes([pkt[0], pkt[1]]);
            match op {
                // OACK
                6 if peer.is_none() => {
                    peer = Some(from);
                    let fields: Vec<&[u8]> = pkt[2..].split(|b| *b == 0).collect();
                    for kv in fields.chunks(2) {
                        if let [k, v] = kv {
                            let (k, v) = (
                                String::from_utf8_lossy(k).to_ascii_lowercase(),
                                String::from_utf8_lossy(v),
                            );
                            match k.as_str() {
                                "blksize" => blksize = v.parse().unwrap_or(512),
                                "tsize" => tsize = v.parse().ok(),
                                _ => {}
                            }
                        }
                    }
                    last = vec![0, 4, 0, 0];
                    last_to = from;
                    tries = 0;
                    sock.send_to(&last, last_to)
                        .await
                        .map_err(|e| format!("sending: {e}"))?;
                }
                // DATA
                3 => {
                    peer.get_or_insert(from);
                    let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                    let data = n - 4;
                    if block == expected {
                        received += data as u64;
                        last = [[0u8, 4], block.to_be_bytes()].concat();
                        last_to = from;
                        tries = 0;
                        sock.send_to(&last, last_to)
                            .await
                            .map_err(|e| format!("sending: {e}"))?;
                        if data < blksize {
                            if let Some(t) = tsize
                                && t != received
                            {
                                return Err(format!(
                                    "{file}: {received} bytes received, tsize said {t}"
                                ));
                            }
                            return Ok(received);
                        }
                        expected = expected.wrapping_add(1);
                    } else if block == expected.wrapping_sub(1) {
                        // Our ACK was lost or late: say it again.
                        sock.send_to(&last, last_to)
                            .await
                            .map_err(|e| format!("sending: {e}"))?;
                    }
                }
                // ERROR
                5 => {
                    let code = u16::from_be_bytes([pkt[2], pkt[3]]);
                    let msg = String::from_utf8_lossy(&pkt[4..])
                        .trim_end_matches('\0')
                        .to_owned();
                    if received == 0 && (code == 0 || msg.contains("busy")) {
                        // A server at its limit. PXE firmware (a PXE ROM, edk2's MTFTP)
                        // takes any ERROR as the end of its network boot: so does the
                        // machine here, counted apart.
                        let c = &self.shared.counters;
                        c.tftp_refused.fetch_add(1, Ordering::Relaxed);
                        c.tftp_refused_machines.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(format!("{file}: TFTP error {code}: {msg}"));
                }
                _ => {}
            }
        }
    }

    // -------------------------------------------------------------------------------- HTTP

    /// GETs `url` to nowhere, checking its length: the bytes received.
    async fn download(&self, http: &reqwest::Client, url: &str) -> Result<u64, String> {
        let mut resp = http.get(url).send().await.map_err(|e| http_error(&e))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let want = resp.content_length();
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| http_error(&e))? {
            got += chunk.len() as u64;
        }
        self.shared
            .counters
            .http_bytes
            .fetch_add(got, Ordering::Relaxed);
        match want {
            Some(w) if w != got => Err(format!("GET {url}: {got} bytes of {w}")),
            None => Err(format!("GET {url}: no Content-Length")),
            _ if got == 0 => Err(format!("GET {url}: empty")),
            _ => Ok(got),
        }
    }

    fn inspection_report(&self) -> InspectionReport {
        let mac = MacAddr(self.mac);
        let serial = format!("STORM-{}", hex_mac(&self.mac));
        InspectionReport {
            cpu: CpuFacts {
                model: "Storm Virtual CPU @ 2.40GHz".into(),
                cores: 16,
                threads: 32,
            },
            memory_mib: 131_072,
            disks: vec![DiskFacts {
                name: "nvme0n1".into(),
                size_bytes: 960_197_124_096,
                model: Some("STORM NVMe 960GB".into()),
                serial: Some(format!("{serial}-D0")),
                rotational: Some(false),
            }],
            nics: vec![NicFacts {
                name: "eno1".into(),
                mac,
                speed_mbps: Some(25_000),
                link: Some(true),
            }],
            system: SystemFacts {
                vendor: "plinth".into(),
                product: "storm".into(),
                serial,
                uuid: self.uuid.to_string(),
            },
            firmware: if self.uefi {
                Firmware::Uefi
            } else {
                Firmware::Bios
            },
            arch: Arch::X86_64,
        }
    }

    /// POSTs the inspection report as plinth-agent does: its path, body and bearer token;
    /// transport errors and 5xx are retried (1 s doubling to 30 s), a 4xx is a failure.
    async fn report(
        &self,
        http: &reqwest::Client,
        api: &str,
        machine: &str,
        token: &str,
    ) -> Result<(), String> {
        let url = format!(
            "{}{}",
            api.trim_end_matches('/'),
            plinth_client::path::inspection(machine)
        );
        let body = self.inspection_report();
        let mut wait = Duration::from_secs(1);
        loop {
            let why = match http.post(&url).bearer_auth(token).json(&body).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(format!(
                        "POST {url}: HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    ));
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => http_error(&e),
            };
            eprintln!(
                "storm: {}: reporting failed ({why}); again in {} s",
                self.mac_text(),
                wait.as_secs()
            );
            self.shared
                .counters
                .report_retx
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

fn hex_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02X}")).collect()
}

/// A reqwest error with its causes (reqwest's Display leaves out why a connection failed).
fn http_error(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The `kernel` and `initrd` lines of an iPXE script (their URLs, the kernel's arguments); a
/// script without them (plinth's `wait.ipxe`, say) is an error quoting its first comment.
fn parse_script(text: &str) -> Result<RamdiskScript, String> {
    if !text.starts_with("#!ipxe") {
        return Err(format!(
            "not an iPXE script: {:?}",
            text.chars().take(80).collect::<String>()
        ));
    }
    let (mut kernel, mut initrd) = (None, None);
    for line in text.lines() {
        let line = line.split("||").next().unwrap_or("").trim();
        let mut words = line.split_ascii_whitespace();
        let cmd = words.next();
        // Options (`--name x`, `-n x`) before the URL.
        let mut rest: Vec<&str> = Vec::new();
        let mut url = None;
        let mut skip = false;
        for w in words {
            if url.is_none() {
                if skip {
                    skip = false;
                    continue;
                }
                if w.starts_with('-') {
                    skip = !w.contains('=');
                    continue;
                }
                url = Some(w);
            } else {
                rest.push(w);
            }
        }
        match (cmd, url) {
            (Some("kernel" | "chain" | "imgexec"), Some(u)) => {
                kernel = Some((u.to_owned(), rest.iter().map(|s| (*s).to_owned()).collect()));
            }
            (Some("initrd" | "module"), Some(u)) => initrd = Some(u.to_owned()),
            _ => {}
        }
    }
    match (kernel, initrd) {
        (Some((kernel, args)), Some(initrd)) => Ok(RamdiskScript {
            kernel,
            initrd,
            args,
        }),
        _ => {
            let said = text
                .lines()
                .find(|l| l.starts_with("# ") || l.starts_with("echo "))
                .unwrap_or("");
            Err(format!("the script boots no ramdisk: {said}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plinths_ramdisk_script() {
        let s = "#!ipxe\n# plinth: m1 is inspecting\necho plinth: booting\n\
            kernel http://10.0.0.2:8080/boot/plinth/vmlinuz initrd=initrd.img console=ttyS0 plinth.mode=inspect plinth.api=http://10.0.0.2:8080 plinth.machine=abc plinth.token=t0k || goto failed\n\
            initrd http://10.0.0.2:8080/boot/plinth/initrd.img || goto failed\nboot || goto failed\n";
        let r = parse_script(s).unwrap();
        assert_eq!(r.kernel, "http://10.0.0.2:8080/boot/plinth/vmlinuz");
        assert_eq!(r.initrd, "http://10.0.0.2:8080/boot/plinth/initrd.img");
        assert!(r.args.contains(&"plinth.token=t0k".to_owned()));
        assert!(!r.args.iter().any(|a| a.contains("goto")));
        let r = parse_script("#!ipxe\nkernel --name k /k a=1\ninitrd -n i.img /i\n").unwrap();
        assert_eq!((r.kernel.as_str(), r.initrd.as_str()), ("/k", "/i"));
        assert_eq!(r.args, vec!["a=1".to_owned()]);
    }

    #[test]
    fn a_wait_script_is_an_error_that_says_why() {
        let e =
            parse_script("#!ipxe\n# plinth: no network boot: busy\nsleep 60\nexit\n").unwrap_err();
        assert!(e.contains("no network boot: busy"), "{e}");
        assert!(parse_script("<html>").is_err());
    }
}
