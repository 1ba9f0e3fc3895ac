//! The DHCP server: one UDP socket per configured interface (SO_BINDTODEVICE, so a request
//! is matched to the interface it arrived on), packets parsed as they arrive, lease decisions
//! taken in batches (one database round trip and commit for all the packets that arrived
//! meanwhile), requests in flight bounded by a semaphore, and the reply sent as RFC 2131 §4.1
//! says. Decisions come from plinth-core; bytes from `wire`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plinth_core::App;
use plinth_core::batch;
use plinth_core::dhcp::{
    BootAction, BootConfig, ClientInfo, DhcpDecision, DhcpRequest, LeaseOp, LeaseTimers, Outcome,
};
use plinth_types::MacAddr;
use plinth_types::logthrottle::LogThrottle;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::sys;
use crate::wire::{
    self, BootParams, Destination, LeaseParams, MessageType, ReplyKind, ReplyPlan, Request,
};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PROXY_PORT: u16 = 4011;

/// Receive buffer of each socket: a burst of some 3,000 requests.
const RECEIVE_BUFFER: usize = 4 << 20;
/// Replies sent back to back at most; a larger batch's replies are spaced out.
const BURST: usize = 32;
/// With `batches_in_flight` past 1: the packets that must wait before another batch starts
/// while one is under way, a full batch (so that the overlap never makes batches smaller).
pub const OVERLAP_FROM: usize = MAX_BATCH;
/// The most packets decided in one batch (one transaction). Measured on two cores at and past
/// saturation (docs/benchmarks.md, "DHCP, step 7"): 256 took 5-10 % less CPU per DORA than
/// 128, and 64 or 96 more; 512 a little less again, but a batch holds an advisory lock per
/// client in PostgreSQL's shared lock table (docs/decisions.md, "DHCP batches of 256"), and
/// several instances with several batches in flight each must fit in it.
const MAX_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Hand out addresses and boot information.
    Server,
    /// ProxyDHCP: boot information only, beside another server that owns the addresses.
    Proxy,
}

/// The server's settings. `[dhcp]` in plinth's configuration deserializes into this (its
/// lease timers and boot files into `timers` and `boot`, which are plinth-core's), with these
/// defaults for what it leaves out.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The interfaces served, by name; no other.
    pub interfaces: Vec<String>,
    pub mode: Mode,
    /// Where clients fetch boot files, unless their subnet names another; unspecified
    /// (0.0.0.0) until configured.
    pub boot_server: Ipv4Addr,
    #[serde(skip)]
    pub timers: LeaseTimers,
    #[serde(skip)]
    pub boot: BootConfig,
    /// Packets handled at once; beyond this, new packets are dropped (and counted).
    #[serde(skip)]
    pub max_in_flight: usize,
    /// Packets accepted per client MAC per second; beyond this they are dropped.
    #[serde(rename = "client_rate_limit")]
    pub per_client_rate: u32,
    /// New clients (MACs not heard in the last [`NEW_CLIENT_MEMORY`]) accepted per second
    /// across all of them; 0: no limit. A flood of made-up MACs cannot then take the pools
    /// and the lease table faster than this.
    pub new_client_rate: u32,
    /// Lease batches start at least this many milliseconds apart (`plinth_core::batch`'s
    /// window): under load, fewer and larger transactions, less CPU per lease and more
    /// latency; a packet after a quiet moment is decided at once. 0 (the default): each batch
    /// starts as soon as the previous one is decided. See docs/decisions.md for the trade.
    pub batch_window_ms: u64,
    /// Lease batches in the database at once, 1 to 4. Past 1, another batch starts while one
    /// is under way only when [`OVERLAP_FROM`] packets wait for it: a backlog past saturation
    /// then goes to another connection rather than waiting, for fewer drops and less latency
    /// at more CPU per lease (smaller batches; docs/benchmarks.md, "DHCP, step 6"). 1 (the
    /// default): one batch at a time.
    pub batches_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: Vec::new(),
            mode: Mode::Server,
            boot_server: Ipv4Addr::UNSPECIFIED,
            timers: LeaseTimers::default(),
            boot: BootConfig::default(),
            max_in_flight: 1024,
            per_client_rate: 50,
            new_client_rate: 1000,
            batch_window_ms: 0,
            batches_in_flight: 1,
        }
    }
}

/// How long a client counts as known after its last packet.
pub const NEW_CLIENT_MEMORY: Duration = Duration::from_secs(600);
/// The most clients remembered; past it, the oldest are forgotten.
const KNOWN_CLIENTS: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("DHCP socket on {iface}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// The lease batches' histograms.
#[derive(Debug)]
pub struct BatchHistograms {
    /// Requests per batch.
    pub size: plinth_core::metrics::Histogram,
    /// From a request's arrival to its batch's decision (the reply leaves then).
    pub decision_seconds: plinth_core::metrics::Histogram,
}

impl Default for BatchHistograms {
    fn default() -> Self {
        BatchHistograms {
            size: plinth_core::metrics::Histogram::new(plinth_core::metrics::SIZES),
            decision_seconds: plinth_core::metrics::Histogram::new(plinth_core::metrics::SECONDS),
        }
    }
}

/// Counters, kept in one place so a /metrics endpoint can expose them.
#[derive(Debug, Default)]
pub struct Counters {
    pub batches: BatchHistograms,
    pub received: AtomicU64,
    pub replies: AtomicU64,
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_rate_limited: AtomicU64,
    /// Packets of new clients beyond `new_client_rate`.
    pub dropped_new_clients: AtomicU64,
    pub dropped_overload: AtomicU64,
    /// Datagrams the kernel dropped because a socket's receive buffer was full: while
    /// `max_in_flight` packets are in flight, the server stops reading and the rest wait there.
    pub dropped_receive_buffer: AtomicU64,
    pub dropped_ignored: AtomicU64,
    pub errors: AtomicU64,
    /// The lease batch queue's counts (batches that started while another was under way).
    pub queue: batch::Stats,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl plinth_core::metrics::Source for Counters {
    fn render(&self, out: &mut plinth_core::metrics::Exposition) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.counter(
            "plinth_dhcp_packets_received_total",
            "DHCP packets received on the listening interfaces.",
            &[],
            g(&self.received),
        );
        for (kind, c) in [
            ("offer", &self.offers),
            ("ack", &self.acks),
            ("nak", &self.naks),
        ] {
            out.counter(
                "plinth_dhcp_replies_total",
                "DHCP replies sent, by message type.",
                &[("type", kind)],
                g(c),
            );
        }
        out.counter(
            "plinth_dhcp_replies_sent_total",
            "DHCP replies sent, of every type.",
            &[],
            g(&self.replies),
        );
        for (reason, c) in [
            ("malformed", &self.dropped_malformed),
            ("rate_limited", &self.dropped_rate_limited),
            ("new_client_rate", &self.dropped_new_clients),
            ("overload", &self.dropped_overload),
            ("receive_buffer_full", &self.dropped_receive_buffer),
            ("ignored", &self.dropped_ignored),
        ] {
            out.counter(
                "plinth_dhcp_packets_dropped_total",
                "DHCP packets dropped without a reply, by reason.",
                &[("reason", reason)],
                g(c),
            );
        }
        out.histogram(
            "plinth_dhcp_batch_size",
            "Lease requests decided together in one database call.",
            &[],
            &self.batches.size,
        );
        out.histogram(
            "plinth_dhcp_decision_duration_seconds",
            "From a request's arrival to its lease decision (its reply leaves then).",
            &[],
            &self.batches.decision_seconds,
        );
        out.counter(
            "plinth_dhcp_batches_overlapped_total",
            "Lease batches that started while another was in the database (dhcp.batches_in_flight).",
            &[],
            self.queue.overlapped(),
        );
        out.counter(
            "plinth_dhcp_errors_total",
            "DHCP packets that met an error (the database, a send).",
            &[],
            g(&self.errors),
        );
    }
}

/// A listening interface.
struct Iface {
    name: String,
    addr: Ipv4Addr,
    socket: Arc<UdpSocket>,
    port: u16,
}

fn bind(iface: &str, port: u16) -> Result<UdpSocket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| Error::Socket {
        iface: iface.to_owned(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    if let Err(e) = sys::set_receive_buffer(s.as_raw_fd(), RECEIVE_BUFFER) {
        warn!(interface = %iface, error = %e, "cannot enlarge the DHCP receive buffer");
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Per-MAC token bucket against floods from one client.
struct RateLimiter {
    per_sec: u32,
    seen: Mutex<HashMap<MacAddr, (Instant, u32)>>,
}

impl RateLimiter {
    fn allow(&self, mac: MacAddr) -> bool {
        let now = Instant::now();
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        if seen.len() > 100_000 {
            seen.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        let e = seen.entry(mac).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.per_sec
    }
}

/// The global rate of new clients: a MAC is new when it has not been heard for
/// [`NEW_CLIENT_MEMORY`]; new ones are admitted at `per_sec` (a bucket refilled each second).
struct NewClients {
    per_sec: u32,
    state: Mutex<NewClientState>,
}

struct NewClientState {
    known: HashMap<MacAddr, Instant>,
    second: Instant,
    admitted: u32,
}

impl NewClients {
    fn new(per_sec: u32) -> NewClients {
        NewClients {
            per_sec,
            state: Mutex::new(NewClientState {
                known: HashMap::new(),
                second: Instant::now(),
                admitted: 0,
            }),
        }
    }

    fn allow(&self, mac: MacAddr) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return true;
        };
        if let Some(seen) = st.known.get_mut(&mac)
            && now.duration_since(*seen) < NEW_CLIENT_MEMORY
        {
            *seen = now;
            return true;
        }
        if now.duration_since(st.second) >= Duration::from_secs(1) {
            st.second = now;
            st.admitted = 0;
        }
        if st.admitted >= self.per_sec {
            return false;
        }
        st.admitted += 1;
        if st.known.len() >= KNOWN_CLIENTS {
            st.known
                .retain(|_, t| now.duration_since(*t) < NEW_CLIENT_MEMORY);
            if st.known.len() >= KNOWN_CLIENTS {
                // All recent: forget the older half rather than grow without bound.
                let mut times: Vec<Instant> = st.known.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                st.known.retain(|_, t| *t > cut);
            }
        }
        st.known.insert(mac, now);
        true
    }
}

struct Shared {
    app: App,
    cfg: Config,
    counters: Arc<Counters>,
    limiter: RateLimiter,
    new_clients: NewClients,
    in_flight: Arc<Semaphore>,
    /// Requests waiting for their lease decision (see [`decide_batches`]).
    pending: batch::Batcher<Pending>,
    /// Rate limit for debug logs of bad packets.
    last_bad_log: Mutex<Option<Instant>>,
}

/// A request waiting for its lease decision: the packet, where it came from, and what to ask.
struct Pending {
    req: Request,
    iface: Arc<Iface>,
    from: SocketAddr,
    op: LeaseOp,
    client: ClientInfo,
    received: Instant,
    /// The permit of [`Shared::in_flight`] this request holds until its reply is sent.
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    fn request(&self) -> DhcpRequest<'_> {
        let relayed = self.req.giaddr != Ipv4Addr::UNSPECIFIED;
        DhcpRequest {
            op: self.op,
            match_addr: if relayed {
                self.req.giaddr
            } else {
                self.iface.addr
            },
            relayed,
            mac: self.req.chaddr,
            client_id: self.req.client_id.as_deref(),
            hostname: self.req.hostname.as_deref(),
            client: self.client.clone(),
        }
    }
}

/// Decides the lease requests in batches (`plinth_core::batch`): everything that waited while
/// the previous batch was in the database, up to [`MAX_BATCH`], in one round trip; the replies
/// go out from a task of their own (in `replies`) while the next batch gathers. One batch in the
/// database at a time per instance: under load each round trip and commit then carries many
/// packets (measured on two cores, one batch in flight beat two and three at every rate).
async fn decide_batches(
    shared: Arc<Shared>,
    queue: batch::Queue<Pending>,
    replies: TaskTracker,
    cancel: CancellationToken,
) {
    let stopping = cancel.clone();
    queue
        .run(cancel, move |batch: Vec<Pending>| {
            let (shared, replies, stopping) = (shared.clone(), replies.clone(), stopping.clone());
            async move {
                // Shutting down: what is still queued is dropped unanswered; the clients ask
                // again (of another instance, maybe).
                if stopping.is_cancelled() {
                    return;
                }
                decide_batch(&shared, &replies, batch).await;
            }
        })
        .await
}

/// Decides one batch and starts sending its replies.
async fn decide_batch(shared: &Arc<Shared>, replies: &TaskTracker, batch: Vec<Pending>) {
    let reqs: Vec<DhcpRequest<'_>> = batch.iter().map(Pending::request).collect();
    let answers = shared
        .app
        .dhcp_decide_batch(
            &reqs,
            shared.cfg.timers,
            &shared.cfg.boot,
            shared.cfg.boot_server,
        )
        .await;
    drop(reqs);
    debug!(size = batch.len(), "lease batch decided");
    let decided: Vec<(Pending, plinth_core::Result<DhcpDecision>)> =
        batch.into_iter().zip(answers).collect();
    let shared = shared.clone();
    let done = Instant::now();
    let h = &shared.counters.batches;
    h.size.observe(decided.len() as f64);
    for (p, _) in &decided {
        h.decision_seconds
            .observe(done.saturating_duration_since(p.received).as_secs_f64());
    }
    replies.spawn(async move {
        // The replies of a large batch leave spaced as their requests came in, not all at
        // once: such a burst overflows the receive buffer of a relay (or of perfdhcp) that
        // is busy for a moment. The last one leaves no later than the next batch is decided.
        let first = decided
            .first()
            .filter(|_| decided.len() > BURST)
            .map(|(p, _)| p.received);
        for (p, answer) in decided {
            if let Some(first) = first {
                let due = done + p.received.saturating_duration_since(first);
                if due > Instant::now() + READ_PAUSE {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let span = transaction_span(&p.req);
            let plan = {
                let _e = span.enter();
                server_reply(&shared, &p, answer)
            };
            match plan {
                Some(plan) => {
                    send(&shared, &p.iface, &p.req, &plan, p.from)
                        .instrument(span)
                        .await
                }
                None => bump(&shared.counters.dropped_ignored),
            }
        }
    });
}

/// Runs until `cancel` fires. Fails at start if an interface cannot be opened.
pub async fn run(
    app: App,
    cfg: Config,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut ifaces = Vec::new();
    for name in &cfg.interfaces {
        let (addr, _) = sys::interface_ipv4(name)
            .map_err(|source| Error::Socket {
                iface: name.clone(),
                source,
            })?
            .ok_or_else(|| Error::NoAddress(name.clone()))?;
        ifaces.push(Iface {
            name: name.clone(),
            addr,
            socket: Arc::new(bind(name, SERVER_PORT)?),
            port: SERVER_PORT,
        });
        if cfg.mode == Mode::Proxy {
            ifaces.push(Iface {
                name: name.clone(),
                addr,
                socket: Arc::new(bind(name, PROXY_PORT)?),
                port: PROXY_PORT,
            });
        }
        info!(interface = %name, %addr, mode = ?cfg.mode, "DHCP listening");
    }
    let (pending, queue) = batch::queue(cfg.max_in_flight.max(1), MAX_BATCH);
    let queue = queue.with_window(Duration::from_millis(cfg.batch_window_ms));
    let queue = queue
        .with_overlap(cfg.batches_in_flight, OVERLAP_FROM)
        .with_stats(counters.queue.clone());
    let shared = Arc::new(Shared {
        limiter: RateLimiter {
            per_sec: cfg.per_client_rate,
            seen: Mutex::new(HashMap::new()),
        },
        in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
        new_clients: NewClients::new(cfg.new_client_rate),
        pending,
        app,
        cfg,
        counters,
        last_bad_log: Mutex::new(None),
    });
    let replies = TaskTracker::new();
    let mut set = tokio::task::JoinSet::new();
    set.spawn(decide_batches(
        shared.clone(),
        queue,
        replies.clone(),
        cancel.clone(),
    ));
    for iface in ifaces {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        set.spawn(async move { listen(shared, Arc::new(iface), cancel).await });
    }
    while set.join_next().await.is_some() {}
    // The replies of the last batches are sent before the server counts as stopped.
    replies.close();
    replies.wait().await;
    Ok(())
}

/// Under a stream of packets the socket is read in bursts, at most once per this pause: a read
/// that comes sooner than this after the previous one waits for the rest of it, then takes every
/// packet that arrived meanwhile. A batch's paced replies leave in groups of the same span. One
/// wake-up per burst instead of one per packet: each wake-up is a context switch, and on two
/// cores (a virtual machine's, where an idle core's wake-up is dearer still) they were most of
/// plinth's own CPU per DORA (docs/benchmarks.md, "DHCP, step 2"). The packets wait in the
/// socket's buffer ([`RECEIVE_BUFFER`]), and a batch under load takes longer than the pause.
/// Below a packet per pause, each is read as it comes.
const READ_PAUSE: Duration = Duration::from_millis(2);
/// The most packets taken in one burst before the server looks at its other work.
const READ_BURST: usize = 256;

/// How often, at most, a listener reads its socket's drop count into the counters (while
/// packets arrive; no packet arrives, none is dropped).
const DROPS_READ_EVERY: Duration = Duration::from_secs(1);

/// A socket's kernel drop count, carried into [`Counters::dropped_receive_buffer`].
struct SocketDrops {
    seen: u32,
    read_at: Instant,
}

impl SocketDrops {
    fn new(iface: &Iface) -> Self {
        SocketDrops {
            seen: sys::socket_drops(iface.socket.as_raw_fd()).unwrap_or(0),
            read_at: Instant::now(),
        }
    }

    /// Adds the drops since the last read to the counters, at most every [`DROPS_READ_EVERY`].
    fn update(&mut self, iface: &Iface, counters: &Counters) {
        if self.read_at.elapsed() < DROPS_READ_EVERY {
            return;
        }
        self.read_at = Instant::now();
        match sys::socket_drops(iface.socket.as_raw_fd()) {
            Ok(now) => {
                let new = now.wrapping_sub(self.seen);
                self.seen = now;
                if new > 0 {
                    counters
                        .dropped_receive_buffer
                        .fetch_add(u64::from(new), Ordering::Relaxed);
                }
            }
            Err(e) => debug!(interface = %iface.name, error = %e, "socket drop count unreadable"),
        }
    }
}

/// Reads one interface's socket. Each packet is read with a permit of [`Shared::in_flight`]:
/// while `max_in_flight` packets are being decided, the listener stops reading, and what
/// arrives waits in the socket's buffer ([`RECEIVE_BUFFER`], some thousands of packets) rather
/// than being read only to be dropped. A stall of the database (an fsync of a few tens of
/// milliseconds) is then absorbed; under overload that lasts, the kernel drops what the buffer
/// cannot hold, counted as `receive_buffer_full`.
async fn listen(shared: Arc<Shared>, iface: Arc<Iface>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    let mut last_read: Option<Instant> = None;
    let mut drops = SocketDrops::new(&iface);
    loop {
        if let Some(due) = last_read
            .map(|t| t + READ_PAUSE)
            .filter(|d| *d > Instant::now())
        {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = shared.in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // the semaphore is never closed
            },
        };
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = iface.socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(interface = %iface.name, error = %e, "DHCP receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        last_read = Some(Instant::now());
        take(&shared, &iface, &buf[..n], from, permit);
        // Then what else is already waiting, without waiting for more, while permits last.
        for _ in 1..READ_BURST {
            let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
                break;
            };
            match iface.socket.try_recv_from(&mut buf) {
                Ok((n, from)) => take(&shared, &iface, &buf[..n], from, permit),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(interface = %iface.name, error = %e, "DHCP receive failed");
                    break;
                }
            }
        }
        drops.update(&iface, &shared.counters);
    }
}

/// Counts one received packet and takes it in. Its permit travels with the request and is
/// returned when its reply is sent or it is dropped, however that ends.
fn take(
    shared: &Arc<Shared>,
    iface: &Arc<Iface>,
    packet: &[u8],
    from: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    bump(&shared.counters.received);
    accept(shared, iface, packet, from, permit);
}

/// The span of one DHCP transaction (DESIGN.md: xid and MAC on every line about it).
fn transaction_span(req: &Request) -> tracing::Span {
    tracing::debug_span!("dhcp", xid = format_args!("{:08x}", req.xid), mac = %req.chaddr, msg = ?req.msg_type)
}

/// Takes one packet in: a lease request joins the batch queue, a ProxyDHCP request gets a task.
fn accept(
    shared: &Arc<Shared>,
    iface: &Arc<Iface>,
    packet: &[u8],
    from: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let req = match wire::parse(packet) {
        Ok(r) => r,
        Err(e) => return shared.bad_packet(&e, from),
    };
    if !req.chaddr.is_unicast() {
        return shared.bad_packet(
            &format_args!("client hardware address {} is not a NIC's", req.chaddr),
            from,
        );
    }
    if !shared.limiter.allow(req.chaddr) {
        bump(&shared.counters.dropped_rate_limited);
        return;
    }
    if !shared.new_clients.allow(req.chaddr) {
        bump(&shared.counters.dropped_new_clients);
        return;
    }
    match shared.cfg.mode {
        Mode::Server => {
            let op = (iface.port == SERVER_PORT)
                .then(|| lease_op(&req, iface.addr))
                .flatten();
            let Some(op) = op else {
                bump(&shared.counters.dropped_ignored);
                return;
            };
            let pending = Pending {
                received: Instant::now(),
                client: client_info(&req),
                req,
                iface: iface.clone(),
                from,
                op,
                _permit: permit,
            };
            if shared.pending.try_submit(pending).is_err() {
                bump(&shared.counters.dropped_overload);
            }
        }
        Mode::Proxy => {
            let (shared, iface) = (shared.clone(), iface.clone());
            tokio::spawn(async move {
                let span = transaction_span(&req);
                async {
                    match proxy_reply(&shared, &iface, &req).await {
                        Some(plan) => send(&shared, &iface, &req, &plan, from).await,
                        None => bump(&shared.counters.dropped_ignored),
                    }
                }
                .instrument(span)
                .await;
                drop(permit);
            });
        }
    }
}

impl Shared {
    fn bad_packet(&self, why: &dyn std::fmt::Display, from: SocketAddr) {
        bump(&self.counters.dropped_malformed);
        let Ok(mut last) = self.last_bad_log.lock() else {
            return;
        };
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            *last = Some(Instant::now());
            debug!(%from, reason = %why, dropped = self.counters.dropped_malformed.load(Ordering::Relaxed), "malformed DHCP packet dropped");
        }
    }
}

fn client_info(req: &Request) -> ClientInfo {
    ClientInfo {
        arch: req.client_arch,
        pxe: req.is_pxe(),
        http_client: req.is_http_client(),
        ipxe: req.is_ipxe(),
        // Firmware sends the SMBIOS UUID with its first three fields little-endian; read it so
        // that it matches what dmidecode and the BMC report.
        uuid: req.client_uuid.map(uuid::Uuid::from_bytes_le),
    }
}

/// Which lease operation a request asks for (RFC 2131 §4.3.2 tells the REQUEST states apart).
fn lease_op(req: &Request, server: Ipv4Addr) -> Option<LeaseOp> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    Some(match req.msg_type {
        MessageType::Discover => LeaseOp::Discover {
            requested: req.requested_ip,
        },
        MessageType::Request => match (req.server_id, req.requested_ip) {
            (Some(id), Some(requested)) if id == server => LeaseOp::Select { requested },
            (Some(id), _) if id != server => LeaseOp::SelectOther,
            (None, Some(requested)) if req.ciaddr == unspecified => {
                LeaseOp::InitReboot { requested }
            }
            (None, _) if req.ciaddr != unspecified => LeaseOp::Renew { ciaddr: req.ciaddr },
            _ => return None,
        },
        MessageType::Release if req.server_id.is_none_or(|id| id == server) => {
            LeaseOp::Release { ciaddr: req.ciaddr }
        }
        MessageType::Decline if req.server_id.is_none_or(|id| id == server) => LeaseOp::Decline {
            requested: req.requested_ip?,
        },
        MessageType::Inform => LeaseOp::Inform,
        _ => return None,
    })
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    })
}

fn boot_params(action: &BootAction, req: &Request, next_server: Ipv4Addr) -> Option<BootParams> {
    match action {
        BootAction::None => None,
        BootAction::Tftp { file } => Some(BootParams {
            next_server,
            file: file.clone(),
            vendor_class: req.is_pxe().then(|| "PXEClient".to_owned()),
            pxe_discovery_control: req.is_pxe(),
        }),
        BootAction::Http { url } => Some(BootParams {
            next_server,
            file: url.clone(),
            vendor_class: if req.is_http_client() {
                Some("HTTPClient".to_owned())
            } else {
                req.is_pxe().then(|| "PXEClient".to_owned())
            },
            pxe_discovery_control: req.is_pxe() && !req.is_ipxe(),
        }),
    }
}

/// The reply to a lease request, from its decision.
fn server_reply(
    shared: &Shared,
    p: &Pending,
    decided: plinth_core::Result<DhcpDecision>,
) -> Option<ReplyPlan> {
    let d = match decided {
        Ok(d) => d,
        Err(e) => {
            bump(&shared.counters.errors);
            // (per packet: a database outage under a storm must not write a line for each)
            static FAILED: LogThrottle = LogThrottle::new(10, Duration::from_secs(10));
            if let Some(suppressed) = FAILED.check() {
                warn!(error = %e, suppressed, "DHCP decision failed; no reply");
            }
            return None;
        }
    };
    debug!(outcome = ?d.outcome, lease = ?d.lease, boot = ?d.boot, reason = ?d.reason, "decided");
    let req = &p.req;
    let kind = match d.outcome {
        Outcome::Offer => ReplyKind::Offer,
        Outcome::Ack => ReplyKind::Ack,
        Outcome::Nak => ReplyKind::Nak,
        Outcome::Ignore => return None,
    };
    let lease = d.lease.as_ref().map(|l| {
        let yiaddr = l.address.unwrap_or(Ipv4Addr::UNSPECIFIED);
        LeaseParams {
            yiaddr,
            lease_secs: l.lease_secs,
            subnet_mask: mask(l.prefix_len),
            routers: l.router.into_iter().collect(),
            dns_servers: l.dns_servers.clone(),
            domain: l.domain.clone(),
            broadcast_addr: l
                .address
                .map(|a| Ipv4Addr::from(u32::from(a) | !u32::from(mask(l.prefix_len)))),
        }
    });
    let next_server = d.boot_server.unwrap_or(shared.cfg.boot_server);
    Some(ReplyPlan {
        kind,
        server_id: p.iface.addr,
        lease,
        boot: boot_params(&d.boot, req, next_server),
        message: if kind == ReplyKind::Nak {
            d.reason.clone()
        } else {
            None
        },
    })
}

/// ProxyDHCP (PXE spec §2.2.3): answer PXE clients' DISCOVER on port 67 with a boot-only OFFER,
/// and their REQUEST to port 4011 with a boot-only ACK. Never hand out an address.
async fn proxy_reply(shared: &Shared, iface: &Iface, req: &Request) -> Option<ReplyPlan> {
    let kind = match (req.msg_type, iface.port) {
        (MessageType::Discover, SERVER_PORT) => ReplyKind::Offer,
        (MessageType::Request, PROXY_PORT) => ReplyKind::Ack,
        _ => return None,
    };
    let client = client_info(req);
    if !(client.pxe || client.http_client) {
        return None;
    }
    let action = match shared
        .app
        .dhcp_proxy_boot(
            req.chaddr,
            &client,
            &shared.cfg.boot,
            shared.cfg.boot_server,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            bump(&shared.counters.errors);
            static PROXY_FAILED: LogThrottle = LogThrottle::new(10, Duration::from_secs(10));
            if let Some(suppressed) = PROXY_FAILED.check() {
                warn!(error = %e, suppressed, "ProxyDHCP decision failed; no reply");
            }
            return None;
        }
    };
    debug!(boot = ?action, "decided (proxy)");
    let boot = boot_params(&action, req, shared.cfg.boot_server)?;
    Some(ReplyPlan {
        kind,
        server_id: iface.addr,
        lease: None,
        boot: Some(boot),
        message: None,
    })
}

async fn send(shared: &Shared, iface: &Iface, req: &Request, plan: &ReplyPlan, from: SocketAddr) {
    let bytes = wire::build_reply(req, plan);
    let to = if iface.port == PROXY_PORT {
        // A client talking to port 4011 has an address: answer where it asked from.
        from
    } else {
        match wire::destination(req, plan) {
            Destination::Relay(ip) => SocketAddrV4::new(ip, SERVER_PORT).into(),
            Destination::Unicast(ip) => SocketAddrV4::new(ip, CLIENT_PORT).into(),
            Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT).into(),
            Destination::Hardware { ip, mac } => {
                // The client cannot answer ARP yet: tell the kernel its MAC, or else broadcast.
                match sys::set_arp(iface.socket.as_raw_fd(), &iface.name, ip, mac) {
                    Ok(()) => SocketAddrV4::new(ip, CLIENT_PORT).into(),
                    Err(e) => {
                        debug!(error = %e, "cannot add an ARP entry; broadcasting the reply");
                        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT).into()
                    }
                }
            }
        }
    };
    match iface.socket.send_to(&bytes, to).await {
        Ok(_) => {
            bump(&shared.counters.replies);
            match plan.kind {
                ReplyKind::Offer => bump(&shared.counters.offers),
                ReplyKind::Ack => bump(&shared.counters.acks),
                ReplyKind::Nak => bump(&shared.counters.naks),
            }
            debug!(%to, kind = ?plan.kind, "reply sent");
        }
        Err(e) => {
            bump(&shared.counters.errors);
            static SEND_FAILED: LogThrottle = LogThrottle::new(10, Duration::from_secs(10));
            if let Some(suppressed) = SEND_FAILED.check() {
                warn!(%to, error = %e, suppressed, "DHCP send failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        format!("52:54:00:00:01:{n:02x}").parse().unwrap()
    }

    #[test]
    fn new_clients_are_admitted_at_a_rate_known_ones_always() {
        let nc = NewClients::new(3);
        for n in 0..3 {
            assert!(nc.allow(mac(n)), "new client {n}");
        }
        assert!(!nc.allow(mac(3)), "a fourth new client in the same second");
        for n in 0..3 {
            assert!(nc.allow(mac(n)), "a known client is never held up");
        }
        std::thread::sleep(Duration::from_millis(1100));
        assert!(nc.allow(mac(3)), "the next second admits more");
        let off = NewClients::new(0);
        assert!((0..100).all(|n| off.allow(mac(n))), "0: no limit");
    }
}
