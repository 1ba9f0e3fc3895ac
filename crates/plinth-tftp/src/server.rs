//! The UDP side: a listening socket that takes read requests, and one task per transfer with
//! its own socket (a fresh ephemeral port connected to the client: the TFTP transfer id),
//! driving a [`Transfer`] with real packets and a real clock.
//!
//! Requests that cannot be served (writes, netascii, malformed requests, a full server) are
//! answered with an ERROR from the listening socket; a refusal by the [`Source`] is answered
//! from the transfer's socket, as the transfer has begun by then.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use plinth_types::logthrottle::LogThrottle;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::packet::{self, ErrorCode, Limits, MAX_BLKSIZE, Mode, Options, Packet, ParseError};
use crate::transfer::{Emit, Failure, Params, Step, Transfer, wire_block};

/// Bytes read from a file at once: four windows, within these bounds (and at least one block).
/// Reads stay few and large, a lock-step transfer holds 32 KiB, and none holds more than
/// 128 KiB (or one block) whatever its window, so 512 transfers of 64 blocks of 65,464 bytes
/// cannot take gigabytes.
const READ_AHEAD: std::ops::RangeInclusive<usize> = 32 * 1024..=128 * 1024;

/// The send buffer asked for on each transfer socket, so a window leaves in one go.
const SEND_BUFFER: usize = 1024 * 1024;

/// The largest request accepted: RFC 2347 keeps requests within 512 bytes, with some slack
/// for clients that do not.
const MAX_REQUEST: usize = 1500;

/// How long a request waits for a transfer slot before it is dropped unanswered (its client
/// has sent it again meanwhile, and the repeat waits in its place).
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// The window of the throttled log lines a client can cause per request
/// (`plinth_types::logthrottle`).
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The TFTP server's settings; `[tftp]` in plinth's configuration deserializes into this,
/// with these defaults for what it leaves out.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// The largest block size granted (RFC 2348 allows up to 65,464).
    pub max_blksize: u16,
    /// The largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Transfers at once; beyond this, requests wait for a slot (see `max_waiting`).
    pub max_transfers: usize,
    /// Requests waiting for a transfer slot, first come first served, each for at most
    /// [`WAIT_LIMIT`]. A request beyond this, or one that waited that long, gets no answer:
    /// the client sends it again. Never an ERROR: PXE firmware takes an ERROR as the end of
    /// its network boot (a storm of machines would lose those whose request met a full
    /// server), where a lost request is only retransmitted.
    pub max_waiting: usize,
    /// Transfers at once to one address; beyond this, its requests are answered "busy".
    pub max_transfers_per_peer: usize,
    /// The longest retransmit timeout a client may ask for (RFC 2349 `timeout`, seconds).
    pub max_client_timeout: u8,
    /// Timeouts in a row before a transfer is abandoned.
    pub retries: u32,
    /// The first retransmit timeout when the client sets none (it doubles on each retry).
    #[serde(rename = "timeout_ms", deserialize_with = "plinth_types::de::millis")]
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 69),
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_transfers: 512,
            max_waiting: 4096,
            max_transfers_per_peer: 8,
            max_client_timeout: packet::MAX_CLIENT_TIMEOUT,
            retries: 5,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Where the served content comes from: a directory through plinth-core's resolver, or
/// content generated per client.
pub trait Source: Send + Sync + 'static {
    /// The content of `name` for `peer`, or why it is not served.
    fn open(
        &self,
        name: &str,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Content, Refusal>> + Send;

    /// A transfer of `name` (as [`Source::open`] served it) to `peer` ended: `sent` of `size`
    /// bytes acknowledged, `complete` when all of them were. Called once per transfer, at its
    /// end, on its task: it must not block (plinth notes it in memory). Not at its start: a
    /// read request's source address is trivially forged, an acknowledgement of the transfer's
    /// DATA (sent to that address) is not.
    fn transferred(&self, name: &str, peer: SocketAddr, sent: u64, size: u64, complete: bool) {
        let _ = (name, peer, sent, size, complete);
    }
}

/// What a transfer sends.
#[derive(Debug)]
pub enum Content {
    /// A file, read where it lies; `size` is what is sent (and announced as tsize).
    File { file: std::fs::File, size: u64 },
    /// Content generated for this client (a first-stage iPXE script, say).
    Bytes(Vec<u8>),
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::File { size, .. } => *size,
            Content::Bytes(b) => b.len() as u64,
        }
    }
}

/// Why a name is not served: the ERROR sent to the client, and whether the request looks like
/// an attack (logged as a warning rather than as a miss).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrorCode,
    /// Sent to the client: say nothing about the server's file system.
    pub message: String,
    pub hostile: bool,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            hostile: false,
        }
    }

    pub fn hostile(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            hostile: true,
            ..Refusal::new(code, message)
        }
    }
}

/// Counters, kept in one place so a /metrics endpoint can expose them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams on the listening socket.
    pub requests: AtomicU64,
    /// Transfers that began sending (after the source opened the file).
    pub started: AtomicU64,
    /// Transfers whose last block was acknowledged.
    pub completed: AtomicU64,
    /// Transfers that began and ended otherwise (timeout, client error, I/O error, shutdown).
    pub failed: AtomicU64,
    /// Requests refused: write, netascii, malformed, or refused by the source.
    pub refused: AtomicU64,
    /// The subset of `refused` that looked hostile (traversal, over-long names).
    pub refused_hostile: AtomicU64,
    /// Requests answered "server busy" (an address with `max_transfers_per_peer` already).
    pub busy: AtomicU64,
    /// Requests that found every transfer slot taken and waited for one.
    pub waited: AtomicU64,
    /// Requests left unanswered: the wait queue full, a repeat of a request already waiting,
    /// or a wait past [`WAIT_LIMIT`] (the client sends its request again).
    pub unanswered: AtomicU64,
    /// Datagrams on the listening socket that are not requests.
    pub stray: AtomicU64,
    /// Payload bytes of completed transfers.
    pub bytes: AtomicU64,
    /// DATA and OACK packets sent again after a timeout.
    pub retransmits: AtomicU64,
    /// Transfers in progress (a gauge: permits taken).
    pub active: AtomicU64,
    /// The most transfers in progress at once so far.
    pub peak_active: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub refused: u64,
    pub refused_hostile: u64,
    pub busy: u64,
    pub waited: u64,
    pub unanswered: u64,
    pub stray: u64,
    pub bytes: u64,
    pub retransmits: u64,
    pub active: u64,
    pub peak_active: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            requests: g(&self.requests),
            started: g(&self.started),
            completed: g(&self.completed),
            failed: g(&self.failed),
            refused: g(&self.refused),
            refused_hostile: g(&self.refused_hostile),
            busy: g(&self.busy),
            waited: g(&self.waited),
            unanswered: g(&self.unanswered),
            stray: g(&self.stray),
            bytes: g(&self.bytes),
            retransmits: g(&self.retransmits),
            active: g(&self.active),
            peak_active: g(&self.peak_active),
        }
    }
}

fn bump(c: &AtomicU64) {
    add(c, 1);
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Transfers in progress per client address.
type PerPeer = Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>;

/// One of an address's places among the transfers in progress; given back when dropped.
struct PeerSlot {
    per_peer: PerPeer,
    ip: IpAddr,
}

impl PeerSlot {
    /// A place for `ip`, unless it already has `max` transfers.
    fn take(per_peer: &PerPeer, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            per_peer: per_peer.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Runs one transfer in its slot (`permit`, and the address's `slot`).
async fn run_transfer<S: Source>(
    shared: &Shared<S>,
    permit: OwnedSemaphorePermit,
    slot: PeerSlot,
    peer: SocketAddr,
    filename: String,
    options: Options,
    cancel: &CancellationToken,
) {
    let counters = &shared.counters;
    let active = counters.active.fetch_add(1, Ordering::Relaxed) + 1;
    counters.peak_active.fetch_max(active, Ordering::Relaxed);
    let permit = Permit {
        _permit: permit,
        _peer: slot,
        counters: counters.clone(),
    };
    let span = tracing::info_span!(
        "tftp",
        %peer,
        file = %filename,
        blksize = tracing::field::Empty,
        windowsize = tracing::field::Empty,
    );
    transfer(shared, peer, &filename, &options, cancel)
        .instrument(span)
        .await;
    drop(permit);
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A transfer's slot and its address's; gives them back (and lowers the gauge) when the
/// transfer task ends, whichever way.
struct Permit {
    _permit: OwnedSemaphorePermit,
    _peer: PeerSlot,
    counters: Arc<Counters>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared<S> {
    cfg: Config,
    source: Arc<S>,
    counters: Arc<Counters>,
    permits: Arc<Semaphore>,
    per_peer: PerPeer,
    /// The clients (address and port) whose request waits for a slot.
    waiting: std::sync::Mutex<std::collections::HashSet<SocketAddr>>,
}

/// A bound server: [`Server::local_addr`] tells where (tests bind port 0), [`Server::serve`]
/// runs it.
pub struct Server<S> {
    socket: UdpSocket,
    shared: Arc<Shared<S>>,
}

/// Binds `cfg.listen` and serves until `cancel` fires; returns bind errors.
pub async fn run<S: Source>(
    cfg: Config,
    source: Arc<S>,
    cancel: CancellationToken,
) -> io::Result<()> {
    Server::bind(cfg, source).await?.serve(cancel).await
}

impl<S: Source> Server<S> {
    pub async fn bind(cfg: Config, source: Arc<S>) -> io::Result<Server<S>> {
        let socket = UdpSocket::bind(cfg.listen).await?;
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(cfg.max_transfers)),
            per_peer: Default::default(),
            waiting: Default::default(),
            cfg,
            source,
            counters: Arc::new(Counters::default()),
        });
        Ok(Server { socket, shared })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Serves until `cancel` fires, then ends the transfers in progress and waits for them.
    pub async fn serve(self, cancel: CancellationToken) -> io::Result<()> {
        let addr = self.local_addr()?;
        info!(%addr, max_transfers = self.shared.cfg.max_transfers, "TFTP listening");
        let tracker = TaskTracker::new();
        let mut buf = vec![0u8; MAX_REQUEST];
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((n, peer)) => self.request(&buf[..n], peer, &tracker, &cancel).await,
                // ICMP errors from earlier replies, or a transient error: keep listening.
                Err(e) => debug!(error = %e, "TFTP receive failed"),
            }
        }
        tracker.close();
        tracker.wait().await;
        info!(%addr, "TFTP stopped");
        Ok(())
    }

    async fn request(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let counters = &self.shared.counters;
        bump(&counters.requests);
        let is_request = matches!(datagram, [0, 1 | 2, ..]);
        let packet = match packet::parse(datagram) {
            Ok(p) => p,
            Err(e) if is_request => {
                let (code, hostile) = match e {
                    ParseError::FilenameTooLong => (ErrorCode::AccessViolation, true),
                    ParseError::OptionValue { .. }
                    | ParseError::OptionWithoutValue(_)
                    | ParseError::DuplicateOption(_) => (ErrorCode::OptionsRefused, false),
                    _ => (ErrorCode::IllegalOperation, false),
                };
                let refusal = Refusal {
                    code,
                    message: e.to_string(),
                    hostile,
                };
                return self.refuse(peer, None, &refusal).await;
            }
            Err(e) => {
                bump(&counters.stray);
                debug!(%peer, error = %e, "TFTP: unreadable datagram on the listening port");
                return;
            }
        };
        let (filename, options) = match packet {
            Packet::Rrq {
                filename,
                mode: Mode::Octet,
                options,
            } => (filename, options),
            Packet::Rrq { filename, mode, .. } => {
                let refusal = Refusal::new(
                    ErrorCode::IllegalOperation,
                    format!("{mode} mode is not served, only octet"),
                );
                return self.refuse(peer, Some(&filename), &refusal).await;
            }
            Packet::Wrq { filename, .. } => {
                // Nobody has a reason to write to a boot server.
                let refusal = Refusal::hostile(ErrorCode::AccessViolation, "read-only server");
                return self.refuse(peer, Some(&filename), &refusal).await;
            }
            other => {
                // DATA/ACK/ERROR/OACK belong on a transfer's port (RFC 1350: ignore them here).
                bump(&counters.stray);
                debug!(%peer, packet = ?kind(&other), "TFTP: not a request on the listening port");
                return;
            }
        };
        let ip = peer.ip().to_canonical();
        let Some(slot) = PeerSlot::take(
            &self.shared.per_peer,
            ip,
            self.shared.cfg.max_transfers_per_peer,
        ) else {
            static BUSY: LogThrottle = LogThrottle::new(10, LOG_WINDOW);
            if let Some(suppressed) = BUSY.check() {
                warn!(%peer, file = %filename, suppressed, "TFTP: too many transfers to this address, answering busy");
            }
            return self
                .busy(peer, "server busy: too many transfers to your address")
                .await;
        };
        let shared = self.shared.clone();
        let cancel = cancel.clone();
        match self.shared.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(async move {
                    run_transfer(&shared, permit, slot, peer, filename, options, &cancel).await;
                });
            }
            Err(_) => {
                // Every slot is taken: wait for one, first come first served, rather than
                // answer an ERROR (see `Config::max_waiting`).
                {
                    let mut waiting = lock(&shared.waiting);
                    if waiting.contains(&peer) {
                        bump(&counters.unanswered);
                        debug!(%peer, file = %filename, "TFTP: a repeat of a request that waits for a slot");
                        return;
                    }
                    if waiting.len() >= shared.cfg.max_waiting {
                        bump(&counters.unanswered);
                        static FULL: LogThrottle = LogThrottle::new(10, LOG_WINDOW);
                        if let Some(suppressed) = FULL.check() {
                            warn!(%peer, file = %filename, suppressed, "TFTP: every transfer slot taken and the wait queue full, leaving the request unanswered (the client sends it again)");
                        }
                        return;
                    }
                    waiting.insert(peer);
                }
                bump(&counters.waited);
                debug!(%peer, file = %filename, "TFTP: every transfer slot taken, the request waits for one");
                tracker.spawn(async move {
                    let permit = tokio::select! {
                        _ = cancel.cancelled() => None,
                        p = tokio::time::timeout(WAIT_LIMIT, shared.permits.clone().acquire_owned()) => p.ok().and_then(Result::ok),
                    };
                    lock(&shared.waiting).remove(&peer);
                    match permit {
                        Some(permit) => {
                            run_transfer(&shared, permit, slot, peer, filename, options, &cancel)
                                .await
                        }
                        None => bump(&shared.counters.unanswered),
                    }
                });
            }
        }
    }

    /// Answers "busy" from the listening socket (the client tries again later).
    async fn busy(&self, peer: SocketAddr, message: &str) {
        bump(&self.shared.counters.busy);
        let p = Packet::Error {
            code: ErrorCode::NotDefined,
            message: message.into(),
        };
        self.socket.send_to(&p.encode(), peer).await.ok();
    }

    /// Answers a request that is not served, from the listening socket.
    async fn refuse(&self, peer: SocketAddr, file: Option<&str>, refusal: &Refusal) {
        log_refusal(&self.shared.counters, peer, file, refusal);
        let p = Packet::Error {
            code: refusal.code,
            message: refusal.message.clone(),
        };
        self.socket.send_to(&p.encode(), peer).await.ok();
    }
}

fn log_refusal(counters: &Counters, peer: SocketAddr, file: Option<&str>, refusal: &Refusal) {
    bump(&counters.refused);
    let file = file.unwrap_or("");
    // (one line per request would let a flood of bad requests fill the log: throttled, the
    // counters count them all)
    static HOSTILE: LogThrottle = LogThrottle::new(10, LOG_WINDOW);
    static REFUSED: LogThrottle = LogThrottle::new(20, LOG_WINDOW);
    if refusal.hostile {
        bump(&counters.refused_hostile);
        if let Some(suppressed) = HOSTILE.check() {
            warn!(%peer, file, code = ?refusal.code, reason = %refusal.message, suppressed, "TFTP request refused");
        }
    } else if let Some(suppressed) = REFUSED.check() {
        info!(%peer, file, code = ?refusal.code, reason = %refusal.message, suppressed, "TFTP request refused");
    }
}

fn kind(p: &Packet) -> &'static str {
    match p {
        Packet::Rrq { .. } => "RRQ",
        Packet::Wrq { .. } => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack { .. } => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack { .. } => "OACK",
    }
}

/// A fresh UDP socket on an ephemeral port of the listening address, connected to the client:
/// the kernel then drops datagrams from anyone else, and reports the client's port closing
/// (ICMP port unreachable) as an error on receive.
fn transfer_socket(listen: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps it at net.core.wmem_max.
    socket.set_send_buffer_size(SEND_BUFFER).ok();
    let local = match (listen, peer) {
        (IpAddr::V4(_), SocketAddr::V6(_)) => IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
        (IpAddr::V6(_), SocketAddr::V4(_)) => IpAddr::from(Ipv4Addr::UNSPECIFIED),
        (ip, _) => ip,
    };
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect(&peer.into())?;
    UdpSocket::from_std(socket.into())
}

/// Why a transfer that had begun ended without success.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error(transparent)]
    Protocol(#[from] Failure),
    #[error("the client's port is closed (ICMP port unreachable)")]
    Unreachable,
    #[error("the server is shutting down")]
    Shutdown,
    #[error("reading the file")]
    Read(#[source] io::Error),
    #[error("socket error")]
    Socket(#[source] io::Error),
}

async fn transfer<S: Source>(
    shared: &Shared<S>,
    peer: SocketAddr,
    filename: &str,
    options: &Options,
    cancel: &CancellationToken,
) {
    let counters = &shared.counters;
    let socket = match transfer_socket(shared.cfg.listen.ip(), peer) {
        Ok(s) => s,
        Err(e) => {
            // Out of file descriptors or ports, most likely: the client will retry.
            bump(&counters.failed);
            warn!(error = %e, "TFTP: cannot open a transfer socket");
            return;
        }
    };
    let content = match shared.source.open(filename, peer).await {
        Ok(c) => c,
        Err(refusal) => {
            log_refusal(counters, peer, Some(filename), &refusal);
            let p = Packet::Error {
                code: refusal.code,
                message: refusal.message,
            };
            socket.send(&p.encode()).await.ok();
            return;
        }
    };
    let size = content.size();
    let limits = Limits {
        max_blksize: shared.cfg.max_blksize,
        max_windowsize: shared.cfg.max_windowsize,
        max_timeout: shared.cfg.max_client_timeout,
    };
    let n = packet::negotiate(options, limits, size);
    let span = tracing::Span::current();
    span.record("blksize", n.blksize);
    span.record("windowsize", n.windowsize);
    let timeout = n
        .timeout
        .map_or(shared.cfg.timeout, |s| Duration::from_secs(s.into()));
    let mut t = Transfer::new(Params {
        size,
        blksize: n.blksize,
        windowsize: n.windowsize,
        oack: n.oack,
        timeout,
        retries: shared.cfg.retries,
    });
    bump(&counters.started);
    debug!(size, ?options, "TFTP transfer starting");
    let began = Instant::now();
    let mut data = Data::new(content, usize::from(n.blksize), usize::from(n.windowsize));
    let result = drive(&mut t, &socket, &mut data, cancel).await;
    add(&counters.retransmits, t.retransmits());
    let ms = began.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => shared.source.transferred(filename, peer, size, size, true),
        Err(_) => shared
            .source
            .transferred(filename, peer, t.bytes_acked(), size, false),
    }
    match result {
        Ok(()) => {
            bump(&counters.completed);
            add(&counters.bytes, size);
            info!(
                bytes = size,
                duration_ms = ms,
                retransmits = t.retransmits(),
                "TFTP transfer complete"
            );
        }
        Err(err) => {
            bump(&counters.failed);
            let acked = t.bytes_acked();
            match &err {
                // A client that only wanted the size (UEFI firmware), or changed its mind.
                Ended::Protocol(Failure::ClientError { .. }) | Ended::Shutdown => {
                    info!(error = %err, bytes_acked = acked, duration_ms = ms, "TFTP transfer ended");
                }
                _ => {
                    warn!(error = %err, bytes_acked = acked, duration_ms = ms, "TFTP transfer abandoned");
                }
            }
            // Tell the client, when it is still there to hear it.
            let message = match err {
                Ended::Read(_) => "read error",
                Ended::Shutdown => "server shutting down",
                _ => return,
            };
            let p = Packet::Error {
                code: ErrorCode::NotDefined,
                message: message.into(),
            };
            socket.send(&p.encode()).await.ok();
        }
    }
}

/// Runs the state machine until it is over.
async fn drive(
    t: &mut Transfer,
    socket: &UdpSocket,
    data: &mut Data,
    cancel: &CancellationToken,
) -> Result<(), Ended> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut out = Out::new(socket, t.params().blksize, t.params().windowsize);
    // One timer, moved on each send (rather than a new one per packet).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut step = t.start();
    loop {
        match step {
            Step::Send { send, timeout } => {
                send_step(t, socket, data, &send, &mut out).await?;
                timer.as_mut().reset(Instant::now() + timeout);
            }
            Step::Wait => {}
            Step::Done => return Ok(()),
            Step::Failed(f) => return Err(f.into()),
        }
        step = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Ended::Shutdown),
            r = socket.recv(&mut buf) => match r {
                Ok(n) => match packet::parse(&buf[..n]) {
                    Ok(p) => t.on_packet(&p),
                    Err(e) => {
                        debug!(error = %e, "TFTP: unreadable datagram from the client");
                        Step::Wait
                    }
                },
                Err(e) => return Err(socket_error(e)),
            },
            () = &mut timer => t.on_timeout(),
        };
    }
}

fn socket_error(e: io::Error) -> Ended {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        Ended::Unreachable
    } else {
        Ended::Socket(e)
    }
}

/// How DATA leaves: one datagram per send, or — for windows of small blocks, where the kernel
/// supports UDP segmentation offload — up to a window of DATA packets laid end to end in one
/// buffer and one send, which the kernel cuts into datagrams of one packet each (every DATA
/// packet but a file's last has the same size, 4 + blksize).
struct Out {
    buf: Vec<u8>,
    /// The segment size set on the socket, while segmentation works.
    gso: Option<usize>,
}

/// Bytes of DATA one segmented send may carry (a UDP datagram's limit, with room to spare).
const GSO_BYTES: usize = 63 * 1024;
/// The kernel's limit on segments per send.
const GSO_SEGMENTS: usize = 64;

impl Out {
    fn new(socket: &UdpSocket, blksize: u16, windowsize: u16) -> Out {
        let seg = 4 + usize::from(blksize);
        // Only for windows (lock-step sends one packet at a time anyway) of packets that fit an
        // Ethernet frame (a larger segment than the path MTU is refused by the kernel), and of
        // at least the default block size: the option applies to every send on the socket, and
        // an OACK or ERROR longer than one segment would be cut into pieces (ours are far
        // shorter than 516 bytes).
        let gso = (windowsize > 1 && (516..=1472).contains(&seg))
            .then(|| {
                use std::os::fd::AsFd;
                crate::sys::set_udp_segment(socket.as_fd(), u16::try_from(seg).ok()?).ok()?;
                Some(seg)
            })
            .flatten();
        Out {
            buf: Vec::with_capacity(if gso.is_some() { GSO_BYTES } else { seg }),
            gso,
        }
    }
}

async fn send_step(
    t: &Transfer,
    socket: &UdpSocket,
    data: &mut Data,
    send: &Emit,
    out: &mut Out,
) -> Result<(), Ended> {
    match send {
        Emit::Oack(options) => {
            let p = Packet::Oack {
                options: options.clone(),
            };
            socket.send(&p.encode()).await.map_err(socket_error)?;
        }
        Emit::Blocks { first, count } => {
            let end = *first + *count;
            let mut index = *first;
            while index < end {
                let batch_start = index;
                out.buf.clear();
                let per_send = out
                    .gso
                    .map_or(1, |seg| (GSO_BYTES / seg).clamp(1, GSO_SEGMENTS));
                let mut n = 0;
                while index < end && n < per_send {
                    // Usually already read: one read serves many blocks.
                    data.load(t.block_range(index)).await.map_err(Ended::Read)?;
                    let block = data.get(t.block_range(index));
                    out.buf.extend_from_slice(&[0, 3]);
                    out.buf.extend_from_slice(&wire_block(index).to_be_bytes());
                    out.buf.extend_from_slice(block);
                    index += 1;
                    n += 1;
                    // A short block ends the file, and must be the last segment of a send.
                    if Some(4 + block.len()) != out.gso {
                        break;
                    }
                }
                match socket.send(&out.buf).await {
                    Ok(_) => {}
                    // Segmentation refused on this path (a device or MTU that cannot take it):
                    // send these blocks again one by one, and no longer segment.
                    Err(e)
                        if out.gso.is_some()
                            && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) =>
                    {
                        debug!(error = %e, "TFTP: UDP segmentation refused; sending one datagram per block");
                        out.gso = None;
                        {
                            use std::os::fd::AsFd;
                            crate::sys::set_udp_segment(socket.as_fd(), 0).ok();
                        }
                        index = batch_start;
                    }
                    Err(e) => return Err(socket_error(e)),
                }
            }
        }
    }
    Ok(())
}

/// The content being sent, with a read-ahead buffer for files.
enum Data {
    File {
        file: Arc<std::fs::File>,
        /// Bytes of the file from `start`.
        buf: Vec<u8>,
        start: u64,
        chunk: usize,
    },
    Bytes(Vec<u8>),
}

impl Data {
    fn new(content: Content, blksize: usize, windowsize: usize) -> Data {
        match content {
            Content::File { file, .. } => Data::File {
                file: Arc::new(file),
                buf: Vec::new(),
                start: 0,
                chunk: (4 * blksize * windowsize)
                    .clamp(*READ_AHEAD.start(), *READ_AHEAD.end())
                    .max(blksize),
            },
            Content::Bytes(b) => Data::Bytes(b),
        }
    }

    /// Makes `range` available to [`Data::get`]; reads ahead from its start if it is not.
    async fn load(&mut self, range: Range<u64>) -> io::Result<()> {
        let Data::File {
            file,
            buf,
            start,
            chunk,
        } = self
        else {
            return Ok(());
        };
        if range.start >= *start && range.end <= *start + buf.len() as u64 {
            return Ok(());
        }
        let len = (range.end - range.start).max(*chunk as u64) as usize;
        let mut b = std::mem::take(buf);
        let file = file.clone();
        let at = range.start;
        let need = (range.end - range.start) as usize;
        let (b, result) = tokio::task::spawn_blocking(move || {
            b.resize(len, 0);
            let mut filled = 0;
            let result = loop {
                match file.read_at(&mut b[filled..], at + filled as u64) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == len {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            b.truncate(filled);
            (b, result)
        })
        .await
        .map_err(io::Error::other)?;
        result?;
        let got = b.len();
        *buf = b;
        *start = at;
        if got < need {
            // The file shrank since it was opened.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn get(&self, range: Range<u64>) -> &[u8] {
        match self {
            Data::File { buf, start, .. } => {
                &buf[(range.start - start) as usize..(range.end - start) as usize]
            }
            Data::Bytes(b) => &b[range.start as usize..range.end as usize],
        }
    }
}
