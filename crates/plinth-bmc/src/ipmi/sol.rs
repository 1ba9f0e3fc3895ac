//! Serial over LAN (IPMI 2.0 chapters 15 and 24): a machine's serial console carried in the
//! RMCP+ session, payload type 1, sealed like IPMI messages (integrity and AES-CBC-128 under
//! cipher suites 3 and 17).
//!
//! Three layers, as the rest of the driver: [`SolPacket`] is the payload's bytes; [`Link`] is
//! the sans-IO protocol (sequence numbers 1-15, 0 for a packet that only acknowledges;
//! acknowledgement with the count of characters accepted; retransmission of what was not
//! acknowledged; partial acceptance and NACK; break; character accumulation; duplicates);
//! [`SolSession`] owns one RMCP+ session of its own and a task that drives the link over its
//! socket, answers the BMC's packets and keeps the session alive.
//!
//! Choices (see docs/decisions.md):
//! - One packet of ours is in flight at a time, as the specification has it; whatever is
//!   written while it flies accumulates and leaves in the next packet, up to the BMC's
//!   inbound payload size less the four header bytes (and at most 255, the most an
//!   acknowledgement can count).
//! - A break leaves at once in a packet of its own with no characters and is never sent
//!   again: a break repeated is a second break (on Linux, a SysRq). It does not hold up
//!   characters.
//! - A BMC that retransmits a packet may have added characters to it (OpenIPMI does, and
//!   ipmitool expects it): only the characters past those already delivered are new.
//! - A console reader that falls behind is not given more: the BMC's packet goes
//!   unacknowledged, and the BMC sends it again later (backpressure, no unbounded buffer).
//! - The BMC closes sessions that are idle; the task sends Get Device ID when nothing was
//!   sent for [`KEEPALIVE`] (ipmitool's 15 s), and ends the session when the BMC stops
//!   answering.
//! - SOL on a UDP port other than the session's is not supported (ipmitool does not support
//!   it either); a BMC that asks for it is refused with [`BmcError::Unsupported`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::lan::{self, IpmiConfig};
use super::wire::{self, WireError, payload};
use crate::{BmcError, Result};

/// Bits of the operation/status byte (15.9, table 15-2).
pub mod status {
    /// Both directions: the packet's characters were not (all) accepted; try again later.
    pub const NACK: u8 = 0x40;
    /// Console to BMC: generate a break on the serial line.
    pub const BREAK: u8 = 0x10;
    /// BMC to console: characters cannot be transferred now.
    pub const UNAVAILABLE: u8 = 0x20;
    /// BMC to console: the BMC is deactivating SOL.
    pub const DEACTIVATING: u8 = 0x10;
    /// BMC to console: the BMC dropped characters from the serial port.
    pub const OVERRUN: u8 = 0x08;
    /// BMC to console: a break came from the serial port.
    pub const BREAK_DETECTED: u8 = 0x04;
}

/// The last packet sequence number this process used with each BMC. OpenIPMI's simulator
/// keeps the last number it accepted across SOL sessions and takes a new session's packet
/// carrying it again for a retransmission: the characters are acknowledged and dropped. A
/// session that starts numbering after its predecessor's last number is not hit by that
/// (a BMC that starts afresh at each activation does not care where the numbers start).
static LAST_SEQ: LazyLock<StdMutex<HashMap<SocketAddr, u8>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

/// Send Get Device ID when nothing was sent to the BMC for this long.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a NACK pauses our characters before they are offered again.
pub const NACK_PAUSE: Duration = Duration::from_millis(100);

const NETFN_APP: u8 = 0x06;
const ACTIVATE_PAYLOAD: u8 = 0x48;
const DEACTIVATE_PAYLOAD: u8 = 0x49;
const GET_DEVICE_ID: u8 = 0x01;
const INSTANCE: u8 = 1;
/// Activate Payload's auxiliary byte for SOL (24.1): encrypted (bit 7) and authenticated
/// (bit 6), as both supported suites allow; serial alerts deferred while SOL is active
/// (bits 3:2 = 01b); the BMC handles CTS and DCD/DSR as usual (bit 1 clear).
const AUX_ENCRYPTED_AUTHENTICATED: u8 = 0xc0 | 0x04;

/// One SOL payload (15.9): packet sequence number (0: acknowledgement only), the sequence
/// number acknowledged (0: none), the count of its characters accepted, operation/status
/// bits ([`status`]), characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolPacket {
    pub seq: u8,
    pub ack: u8,
    pub accepted: u8,
    pub status: u8,
    pub data: Vec<u8>,
}

impl SolPacket {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![self.seq & 0x0f, self.ack & 0x0f, self.accepted, self.status];
        b.extend_from_slice(&self.data);
        b
    }

    pub fn decode(b: &[u8]) -> Result<SolPacket, WireError> {
        if b.len() < 4 {
            return Err(WireError::Short);
        }
        Ok(SolPacket {
            seq: b[0] & 0x0f,
            ack: b[1] & 0x0f,
            accepted: b[2],
            status: b[3],
            data: b[4..].to_vec(),
        })
    }

    fn ack_only(seq: u8, count: usize) -> SolPacket {
        SolPacket {
            seq: 0,
            ack: seq,
            accepted: u8::try_from(count).unwrap_or(u8::MAX),
            status: 0,
            data: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u8,
    len: usize,
    sent_at: Instant,
    tries: u32,
}

/// What one packet from the BMC brought.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// New console characters, in order (none for a duplicate).
    pub console: Vec<u8>,
    /// The acknowledgement to send back at once.
    pub ack: Option<SolPacket>,
    /// The BMC is ending SOL.
    pub deactivating: bool,
    /// A break came from the machine's serial port.
    pub break_detected: bool,
}

/// The SOL protocol of one console, without I/O or clock: the caller passes the time, sends
/// what [`Link::poll_transmit`] and [`Link::on_packet`] return, and wakes it at
/// [`Link::deadline`].
#[derive(Debug)]
pub struct Link {
    max_data: usize,
    timeout: Duration,
    retries: u32,
    /// Characters not yet accepted by the BMC; the in-flight packet carries the first ones.
    queue: VecDeque<u8>,
    in_flight: Option<InFlight>,
    last_seq: u8,
    accepted: u64,
    /// After a NACK: when to offer the characters again.
    resume_at: Option<Instant>,
    /// The BMC's last packet: its sequence number and how many of its characters were
    /// delivered.
    last_rx: Option<(u8, usize)>,
    break_pending: bool,
}

impl Link {
    /// `max_data`: characters per packet; `timeout`: how long to wait for an
    /// acknowledgement; `retries`: how often a packet is sent again before the BMC counts as
    /// gone.
    pub fn new(max_data: usize, timeout: Duration, retries: u32) -> Link {
        Link {
            max_data: max_data.clamp(1, 255),
            timeout,
            retries,
            queue: VecDeque::new(),
            in_flight: None,
            last_seq: 0,
            accepted: 0,
            resume_at: None,
            last_rx: None,
            break_pending: false,
        }
    }

    /// Queues characters for the machine.
    pub fn write(&mut self, data: &[u8]) {
        self.queue.extend(data);
    }

    /// Asks for a break, sent by the next [`Link::poll_transmit`].
    pub fn send_break(&mut self) {
        self.break_pending = true;
    }

    /// Characters the BMC accepted since the link began.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Characters written and not yet accepted.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Numbers this link's packets after `seq` (see [`LAST_SEQ`]).
    pub fn continue_after(&mut self, seq: u8) {
        self.last_seq = seq % 16;
    }

    /// The sequence number of the last packet sent (0 before any).
    pub fn last_seq(&self) -> u8 {
        self.last_seq
    }

    fn next_seq(&mut self) -> u8 {
        self.last_seq = self.last_seq % 15 + 1;
        self.last_seq
    }

    fn data_packet(&self, f: &InFlight) -> SolPacket {
        SolPacket {
            seq: f.seq,
            ack: 0,
            accepted: 0,
            status: 0,
            data: self.queue.iter().take(f.len).copied().collect(),
        }
    }

    /// The next packet to send now, if any; [`BmcError::Timeout`] when a packet went
    /// unacknowledged `retries + 1` times. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<SolPacket>> {
        if self.break_pending {
            self.break_pending = false;
            return Ok(Some(SolPacket {
                seq: self.next_seq(),
                ack: 0,
                accepted: 0,
                status: status::BREAK,
                data: Vec::new(),
            }));
        }
        if let Some(mut f) = self.in_flight {
            if now < f.sent_at + self.timeout {
                return Ok(None);
            }
            if f.tries >= self.retries {
                return Err(BmcError::Timeout);
            }
            f.tries += 1;
            f.sent_at = now;
            self.in_flight = Some(f);
            return Ok(Some(self.data_packet(&f)));
        }
        if self.queue.is_empty() || self.resume_at.is_some_and(|t| now < t) {
            return Ok(None);
        }
        self.resume_at = None;
        let f = InFlight {
            seq: self.next_seq(),
            len: self.queue.len().min(self.max_data),
            sent_at: now,
            tries: 0,
        };
        self.in_flight = Some(f);
        Ok(Some(self.data_packet(&f)))
    }

    /// When [`Link::poll_transmit`] next has something to do (a retransmission, the end of a
    /// NACK's pause), if anything waits.
    pub fn deadline(&self) -> Option<Instant> {
        match self.in_flight {
            Some(f) => Some(f.sent_at + self.timeout),
            None if !self.queue.is_empty() => self.resume_at,
            None => None,
        }
    }

    /// A packet from the BMC. With `take_data` false (the console's reader is full) its
    /// characters are neither delivered nor acknowledged, so that the BMC sends them again
    /// later; its acknowledgement of ours is taken all the same.
    pub fn on_packet(&mut self, p: &SolPacket, now: Instant, take_data: bool) -> Received {
        let mut r = Received {
            deactivating: p.status & status::DEACTIVATING != 0,
            break_detected: p.status & status::BREAK_DETECTED != 0,
            ..Received::default()
        };
        if p.ack != 0
            && let Some(f) = self.in_flight.filter(|f| f.seq == p.ack)
        {
            let n = usize::from(p.accepted).min(f.len);
            self.queue.drain(..n);
            self.accepted += n as u64;
            self.in_flight = None;
            // A NACK, or a BMC that cannot take characters now: the rest waits a little. A
            // partial ACK: the rest leaves at once in a new packet.
            if p.status & (status::NACK | status::UNAVAILABLE) != 0 {
                self.resume_at = Some(now + NACK_PAUSE);
            }
        }
        if p.seq != 0 && take_data {
            let seen = match self.last_rx {
                Some((seq, n)) if seq == p.seq => n,
                _ => 0,
            };
            r.console = p.data.get(seen..).unwrap_or_default().to_vec();
            self.last_rx = Some((p.seq, seen.max(p.data.len())));
            r.ack = Some(SolPacket::ack_only(p.seq, p.data.len()));
        }
        r
    }
}

/// What Activate Payload answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolInfo {
    /// The most the BMC takes from us in one payload, header included.
    pub inbound_payload: u16,
    /// The most the BMC sends in one payload.
    pub outbound_payload: u16,
    /// The UDP port of the SOL payload (the session's).
    pub port: u16,
}

/// The completion codes of Activate Payload (24.1), named.
fn activation_error(e: BmcError) -> BmcError {
    let what = match super::completion_of(&e) {
        Some(0x80) => "SOL is already active in another session",
        Some(0x81) => "SOL is disabled on the BMC",
        Some(0x82) => "the BMC's limit of active SOL sessions is reached",
        Some(0x83) => "the BMC cannot activate SOL with encryption",
        Some(0x84) => "the BMC cannot activate SOL without encryption",
        _ => return e,
    };
    let cc = super::completion_of(&e).unwrap_or_default();
    BmcError::Rejected(format!("{what} (completion code {cc:#04x})"))
}

/// Activate Payload's answer: auxiliary data (4), inbound and outbound payload sizes, the
/// port, the VLAN (all little-endian).
pub fn decode_activation(d: &[u8], session_port: u16) -> Result<SolInfo> {
    let word = |i: usize| d.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(inbound), Some(outbound), Some(port)) = (word(4), word(6), word(8)) else {
        return Err(BmcError::Protocol("short Activate Payload response".into()));
    };
    if inbound <= 4 {
        return Err(BmcError::Protocol(format!(
            "the BMC takes SOL payloads of {inbound} bytes"
        )));
    }
    // Some BMCs send the port big-endian (ipmitool accepts it byte-swapped too).
    let port = if port == session_port || port.swap_bytes() == session_port {
        session_port
    } else {
        return Err(BmcError::Unsupported(format!(
            "SOL on another UDP port ({port}) than the session's ({session_port})"
        )));
    };
    Ok(SolInfo {
        inbound_payload: inbound,
        outbound_payload: outbound,
        port,
    })
}

enum Request {
    Write(Vec<u8>, oneshot::Sender<Result<()>>),
    Break,
    Close(oneshot::Sender<Result<()>>),
}

/// Writes to a [`SolSession`]; cloned for each writer.
#[derive(Clone)]
pub struct SolWriter {
    tx: mpsc::Sender<Request>,
    ended: Arc<StdMutex<Option<BmcError>>>,
}

impl SolWriter {
    fn gone(&self) -> BmcError {
        self.ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| BmcError::Rejected("the SOL session is closed".into()))
    }

    /// Sends characters to the machine's serial port; done when the BMC accepted all of them.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Write(data.to_vec(), tx))
            .await
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Sends a break to the machine's serial port (once: see the module's notes).
    pub async fn send_break(&self) -> Result<()> {
        self.tx.send(Request::Break).await.map_err(|_| self.gone())
    }
}

/// An active SOL payload in a BMC session of its own. [`SolSession::close`] deactivates it;
/// so does dropping the session and every [`SolWriter`] taken from it (in the background).
pub struct SolSession {
    writer: SolWriter,
    console: mpsc::Receiver<Vec<u8>>,
    info: SolInfo,
}

/// How many chunks of console output wait for the reader before the BMC is made to wait.
const CONSOLE_CHUNKS: usize = 256;

impl SolSession {
    /// Opens a session with `cfg` (its cipher suite) and activates SOL instance 1 in it,
    /// encrypted and authenticated. A BMC that refuses says why: SOL disabled (completion
    /// code 0x81), already active in another session (0x80), ...
    pub async fn activate(cfg: &IpmiConfig) -> Result<SolSession> {
        SolSession::activate_in(lan::Session::open(cfg).await?).await
    }

    /// Activates SOL in `s`, a session opened for it; the SOL session owns it from now on.
    pub(super) async fn activate_in(mut s: lan::Session) -> Result<SolSession> {
        let cfg = s.cfg.clone();
        let answer = s
            .command(
                NETFN_APP,
                ACTIVATE_PAYLOAD,
                &[payload::SOL, INSTANCE, AUX_ENCRYPTED_AUTHENTICATED, 0, 0, 0],
            )
            .await
            .map_err(activation_error)
            .and_then(|d| decode_activation(&d, cfg.addr.port()));
        let info = match answer {
            Ok(i) => i,
            Err(e) => {
                if !matches!(e, BmcError::Rejected(_)) {
                    // Activated, but not usable: leave the payload as it was.
                    s.command(
                        NETFN_APP,
                        DEACTIVATE_PAYLOAD,
                        &[payload::SOL, INSTANCE, 0, 0, 0, 0],
                    )
                    .await
                    .ok();
                }
                s.close().await;
                return Err(e);
            }
        };
        tracing::debug!(bmc = %cfg.addr, ?info, "SOL activated");
        let (tx, rx) = mpsc::channel(16);
        let (console_tx, console) = mpsc::channel(CONSOLE_CHUNKS);
        let ended = Arc::new(StdMutex::new(None));
        let mut link = Link::new(
            usize::from(info.inbound_payload - 4),
            cfg.timeout,
            cfg.retries,
        );
        if let Some(seq) = LAST_SEQ
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&cfg.addr)
        {
            link.continue_after(*seq);
        }
        let driver = Driver {
            link,
            s,
            requests: rx,
            console: console_tx,
            waiters: VecDeque::new(),
            written: 0,
            last_sent: Instant::now(),
            keepalive: None,
            ended: ended.clone(),
        };
        tokio::spawn(driver.run());
        Ok(SolSession {
            writer: SolWriter { tx, ended },
            console,
            info,
        })
    }

    pub fn info(&self) -> SolInfo {
        self.info
    }

    /// A writer to share (the session keeps its own).
    pub fn writer(&self) -> SolWriter {
        self.writer.clone()
    }

    /// Console output, as it comes; `None` once the session ended ([`SolSession::ended`]
    /// says why, when it was not closed by us).
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.console.recv().await
    }

    /// Why the session ended on its own (the BMC stopped answering, deactivated SOL).
    pub fn ended(&self) -> Option<BmcError> {
        self.writer
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub async fn write(&self, data: &[u8]) -> Result<()> {
        self.writer.write(data).await
    }

    pub async fn send_break(&self) -> Result<()> {
        self.writer.send_break().await
    }

    /// Deactivate Payload, then Close Session. Characters not yet accepted are dropped.
    pub async fn close(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.writer.tx.send(Request::Close(tx)).await.is_err() {
            // The task ended on its own and deactivated what it could.
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

struct Driver {
    s: lan::Session,
    link: Link,
    requests: mpsc::Receiver<Request>,
    console: mpsc::Sender<Vec<u8>>,
    /// Writes waiting for their last character to be accepted: (end offset, caller).
    waiters: VecDeque<(u64, oneshot::Sender<Result<()>>)>,
    written: u64,
    last_sent: Instant,
    /// A Get Device ID in flight: its rqSeq, when it was sent, how often.
    keepalive: Option<(u8, Instant, u32)>,
    ended: Arc<StdMutex<Option<BmcError>>>,
}

enum Exit {
    Closed(Option<oneshot::Sender<Result<()>>>),
    Failed(BmcError),
}

impl Driver {
    async fn send(&mut self, payload_type: u8, message: &[u8]) -> Result<()> {
        self.s.seq = self.s.seq.wrapping_add(1).max(1);
        let p = self.s.keys.seal_payload(
            payload_type,
            self.s.bmc_sid,
            self.s.seq,
            message,
            lan::random::<16>(),
        );
        self.last_sent = Instant::now();
        self.s
            .sock
            .send(&p)
            .await
            .map(|_| ())
            .map_err(|_| BmcError::Unreachable("cannot send to the BMC".into()))
    }

    async fn send_keepalive(&mut self, tries: u32) -> Result<()> {
        self.s.rq_seq = (self.s.rq_seq + 1) % 64;
        let rq_seq = self.s.rq_seq;
        let m = wire::request(NETFN_APP, rq_seq, GET_DEVICE_ID, &[]);
        self.keepalive = Some((rq_seq, Instant::now(), tries));
        self.send(payload::IPMI, &m).await
    }

    fn settle_waiters(&mut self) {
        let done = self.link.accepted();
        while self.waiters.front().is_some_and(|(end, _)| *end <= done) {
            if let Some((_, w)) = self.waiters.pop_front() {
                w.send(Ok(())).ok();
            }
        }
    }

    async fn run(mut self) {
        let exit = self.serve().await;
        LAST_SEQ
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.s.cfg.addr, self.link.last_seq());
        let why = match &exit {
            Exit::Failed(e) => Some(e.clone()),
            Exit::Closed(_) => None,
        };
        if let Some(e) = &why {
            tracing::info!(bmc = %self.s.cfg.addr, error = %e, "SOL session ended");
            *self
                .ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.clone());
        }
        let failed = why.unwrap_or_else(|| BmcError::Rejected("the SOL session is closed".into()));
        for (_, w) in self.waiters.drain(..) {
            w.send(Err(failed.clone())).ok();
        }
        // Deactivate, then close the session; a BMC that already deactivated answers 0x80.
        let deactivated = match self
            .s
            .command(
                NETFN_APP,
                DEACTIVATE_PAYLOAD,
                &[payload::SOL, INSTANCE, 0, 0, 0, 0],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if super::completion_of(&e) == Some(0x80) => Ok(()),
            Err(e) => Err(e),
        };
        self.s.close().await;
        if let Exit::Closed(Some(tx)) = exit {
            tx.send(deactivated).ok();
        }
    }

    async fn serve(&mut self) -> Exit {
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            loop {
                match self.link.poll_transmit(now) {
                    Ok(Some(p)) => {
                        if let Err(e) = self.send(payload::SOL, &p.encode()).await {
                            return Exit::Failed(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Exit::Failed(e),
                }
            }
            let keepalive_at = match self.keepalive {
                Some((_, sent, _)) => sent + self.s.cfg.timeout,
                None => self.last_sent + KEEPALIVE,
            };
            let wake = self
                .link
                .deadline()
                .map_or(keepalive_at, |d| d.min(keepalive_at));
            tokio::select! {
                r = self.s.sock.recv(&mut buf) => match r {
                    Ok(n) => {
                        let packet = buf[..n].to_vec();
                        if let Some(exit) = self.on_datagram(&packet).await {
                            return exit;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Exit::Failed(BmcError::Unreachable("the BMC's port is closed".into()));
                    }
                    Err(_) => return Exit::Failed(BmcError::Unreachable("receiving from the BMC".into())),
                },
                req = self.requests.recv() => match req {
                    None => return Exit::Closed(None),
                    Some(Request::Close(tx)) => return Exit::Closed(Some(tx)),
                    Some(Request::Break) => self.link.send_break(),
                    Some(Request::Write(data, tx)) => {
                        self.link.write(&data);
                        self.written += data.len() as u64;
                        self.waiters.push_back((self.written, tx));
                        self.settle_waiters();
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= keepalive_at {
                        let tries = match self.keepalive {
                            Some((_, _, t)) if t >= self.s.cfg.retries => {
                                return Exit::Failed(BmcError::Timeout);
                            }
                            Some((_, _, t)) => t + 1,
                            None => 0,
                        };
                        if let Err(e) = self.send_keepalive(tries).await {
                            return Exit::Failed(e);
                        }
                    }
                }
            }
        }
    }

    /// One datagram from the BMC: a SOL packet, or the answer to a keepalive.
    async fn on_datagram(&mut self, p: &[u8]) -> Option<Exit> {
        let Ok((kind, body)) = self.s.keys.open_payload(p) else {
            tracing::debug!(bmc = %self.s.cfg.addr, "ignoring a packet that does not check");
            return None;
        };
        match kind {
            payload::SOL => {
                let Ok(sol) = SolPacket::decode(&body) else {
                    return None;
                };
                let room = self.console.is_closed() || self.console.capacity() > 0;
                let r = self.link.on_packet(&sol, Instant::now(), room);
                if !r.console.is_empty() {
                    // Full was checked above; closed: nobody reads, the characters go.
                    self.console.try_send(r.console).ok();
                }
                if let Some(ack) = r.ack
                    && let Err(e) = self.send(payload::SOL, &ack.encode()).await
                {
                    return Some(Exit::Failed(e));
                }
                self.settle_waiters();
                if r.deactivating {
                    return Some(Exit::Failed(BmcError::Rejected(
                        "the BMC deactivated SOL".into(),
                    )));
                }
            }
            payload::IPMI => {
                if let Ok(r) = wire::parse_response(&body)
                    && self
                        .keepalive
                        .is_some_and(|(rq, _, _)| rq == r.rq_seq && r.cmd == GET_DEVICE_ID)
                {
                    self.keepalive = None;
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(500);

    fn data(seq: u8, bytes: &[u8]) -> SolPacket {
        SolPacket {
            seq,
            ack: 0,
            accepted: 0,
            status: 0,
            data: bytes.to_vec(),
        }
    }

    fn ack(seq: u8, accepted: u8, status: u8) -> SolPacket {
        SolPacket {
            seq: 0,
            ack: seq,
            accepted,
            status,
            data: vec![],
        }
    }

    #[test]
    fn packets_round_trip() {
        let p = SolPacket {
            seq: 3,
            ack: 15,
            accepted: 200,
            status: status::BREAK,
            data: b"hi".to_vec(),
        };
        assert_eq!(p.encode(), [3, 15, 200, 0x10, b'h', b'i']);
        assert_eq!(SolPacket::decode(&p.encode()), Ok(p));
        // Reserved high nibbles are not sequence numbers.
        assert_eq!(SolPacket::decode(&[0xf1, 0xe2, 0, 0]).unwrap().seq, 1);
        assert_eq!(SolPacket::decode(&[1, 0, 0]), Err(WireError::Short));
    }

    #[test]
    fn characters_accumulate_while_a_packet_flies_and_sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut l = Link::new(28, T, 2);
        l.write(b"a");
        assert_eq!(l.poll_transmit(t0), Ok(Some(data(1, b"a"))));
        assert_eq!(l.poll_transmit(t0), Ok(None), "one packet in flight");
        l.write(b"bc");
        l.write(b"d");
        assert_eq!(l.on_packet(&ack(1, 1, 0), t0, true), Received::default());
        assert_eq!(l.accepted(), 1);
        assert_eq!(
            l.poll_transmit(t0),
            Ok(Some(data(2, b"bcd"))),
            "what accumulated"
        );
        l.on_packet(&ack(2, 3, 0), t0, true);
        // At most max_data characters per packet; sequence numbers run 1..=15 and skip 0.
        l.write(&[b'x'; 60]);
        let mut seqs = vec![];
        while seqs.len() < 16 {
            let Some(p) = l.poll_transmit(t0).unwrap() else {
                l.write(&[b'y'; 28]);
                continue;
            };
            assert!(p.data.len() <= 28);
            seqs.push(p.seq);
            l.on_packet(&ack(p.seq, p.data.len() as u8, 0), t0, true);
        }
        assert_eq!(
            &seqs[..15],
            &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2]
        );
        assert!(!seqs.contains(&0));
    }

    #[test]
    fn a_link_may_number_after_another() {
        let t0 = Instant::now();
        let mut l = Link::new(28, T, 2);
        l.continue_after(15);
        l.write(b"a");
        assert_eq!(l.poll_transmit(t0), Ok(Some(data(1, b"a"))));
        let mut l = Link::new(28, T, 2);
        l.continue_after(4);
        l.write(b"a");
        assert_eq!(l.poll_transmit(t0), Ok(Some(data(5, b"a"))));
        assert_eq!(l.last_seq(), 5);
    }

    #[test]
    fn unacknowledged_packets_are_sent_again_then_the_bmc_counts_as_gone() {
        let t0 = Instant::now();
        let mut l = Link::new(28, T, 2);
        l.write(b"abc");
        let first = l.poll_transmit(t0).unwrap().unwrap();
        assert_eq!(l.deadline(), Some(t0 + T));
        assert_eq!(l.poll_transmit(t0 + T / 2), Ok(None));
        // The same packet, same sequence number, twice more.
        assert_eq!(l.poll_transmit(t0 + T), Ok(Some(first.clone())));
        assert_eq!(l.poll_transmit(t0 + 2 * T), Ok(Some(first.clone())));
        assert_eq!(l.poll_transmit(t0 + 3 * T), Err(BmcError::Timeout));
        // An acknowledgement of another sequence number is not ours.
        let mut l = Link::new(28, T, 2);
        l.write(b"abc");
        l.poll_transmit(t0).unwrap();
        l.on_packet(&ack(9, 3, 0), t0, true);
        assert_eq!(l.accepted(), 0);
        assert_eq!(l.poll_transmit(t0 + T), Ok(Some(data(1, b"abc"))));
    }

    #[test]
    fn partial_acceptance_and_nack() {
        let t0 = Instant::now();
        let mut l = Link::new(28, T, 2);
        l.write(b"abcdef");
        l.poll_transmit(t0).unwrap();
        // Four accepted: the other two leave at once, in a new packet.
        l.on_packet(&ack(1, 4, 0), t0, true);
        assert_eq!((l.accepted(), l.queued()), (4, 2));
        assert_eq!(l.poll_transmit(t0), Ok(Some(data(2, b"ef"))));
        // NACKed with one accepted (the BMC's buffer is full): the rest waits a pause.
        l.on_packet(&ack(2, 1, status::NACK), t0, true);
        assert_eq!((l.accepted(), l.queued()), (5, 1));
        assert_eq!(l.poll_transmit(t0), Ok(None));
        assert_eq!(l.deadline(), Some(t0 + NACK_PAUSE));
        assert_eq!(l.poll_transmit(t0 + NACK_PAUSE), Ok(Some(data(3, b"f"))));
        // An acknowledgement counting more than was sent counts what was sent.
        l.on_packet(&ack(3, 200, 0), t0, true);
        assert_eq!((l.accepted(), l.queued()), (6, 0));
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn the_bmcs_packets_are_acknowledged_and_duplicates_ignored() {
        let t0 = Instant::now();
        let mut l = Link::new(28, T, 2);
        let r = l.on_packet(&data(1, b"boot"), t0, true);
        assert_eq!(r.console, b"boot");
        assert_eq!(r.ack, Some(ack(1, 4, 0)));
        // Sent again (our ACK was lost): acknowledged again, nothing new.
        let r = l.on_packet(&data(1, b"boot"), t0, true);
        assert_eq!(
            (r.console.as_slice(), r.ack),
            (&b""[..], Some(ack(1, 4, 0)))
        );
        // Sent again with more characters (OpenIPMI appends): only those are new.
        let r = l.on_packet(&data(1, b"booting"), t0, true);
        assert_eq!(
            (r.console.as_slice(), r.ack),
            (&b"ing"[..], Some(ack(1, 7, 0)))
        );
        let r = l.on_packet(&data(2, b"!"), t0, true);
        assert_eq!(r.console, b"!");
        // A reader that is full: not delivered, not acknowledged; delivered when sent again.
        let r = l.on_packet(&data(3, b"x"), t0, false);
        assert_eq!(r, Received::default());
        let r = l.on_packet(&data(3, b"x"), t0, true);
        assert_eq!(
            (r.console.as_slice(), r.ack),
            (&b"x"[..], Some(ack(3, 1, 0)))
        );
        // An ACK-only packet from the BMC carries nothing to acknowledge.
        assert_eq!(l.on_packet(&ack(5, 0, 0), t0, true), Received::default());
        let r = l.on_packet(
            &SolPacket {
                status: status::DEACTIVATING | status::BREAK_DETECTED,
                ..ack(0, 0, 0)
            },
            t0,
            true,
        );
        assert!(r.deactivating && r.break_detected);
    }

    #[test]
    fn a_break_leaves_once_in_its_own_packet_without_holding_up_characters() {
        let t0 = Instant::now();
        let mut l = Link::new(28, T, 2);
        l.write(b"ab");
        assert_eq!(l.poll_transmit(t0), Ok(Some(data(1, b"ab"))));
        l.send_break();
        let b = l.poll_transmit(t0).unwrap().unwrap();
        assert_eq!((b.seq, b.status, b.data.len()), (2, status::BREAK, 0));
        assert_eq!(l.poll_transmit(t0), Ok(None));
        // Never sent again; the characters in flight are, with their own number.
        assert_eq!(l.poll_transmit(t0 + T), Ok(Some(data(1, b"ab"))));
        l.on_packet(&ack(1, 2, 0), t0 + T, true);
        l.write(b"c");
        assert_eq!(l.poll_transmit(t0 + T), Ok(Some(data(3, b"c"))));
    }

    /// SOL payloads are sealed as IPMI messages are, under both suites: the type byte says
    /// SOL, encrypted and authenticated; a flipped bit fails the check; the IPMI message
    /// reader does not take them.
    #[test]
    fn sol_packets_are_sealed_under_both_suites() {
        for suite in [wire::CipherSuite::Three, wire::CipherSuite::Seventeen] {
            let keys = wire::Rakp {
                suite,
                console_sid: 0x0a0b_0c0d,
                bmc_sid: 0x0102_0304,
                rm: [1; 16],
                rc: [2; 16],
                bmc_guid: [3; 16],
                role: 0x14,
                username: b"admin",
                password: b"password",
            }
            .keys();
            let p = data(3, b"console bytes").encode();
            let sealed = keys.seal_payload(payload::SOL, 0x0102_0304, 7, &p, [9; 16]);
            assert_eq!(sealed[5], 0xc1, "{suite}");
            assert_eq!(keys.open_payload(&sealed), Ok((payload::SOL, p.clone())));
            assert_eq!(keys.open(&sealed), Err(WireError::NotIpmi));
            let mut bad = sealed.clone();
            bad[24] ^= 1;
            assert_eq!(keys.open_payload(&bad), Err(WireError::Integrity));
        }
    }

    #[test]
    fn activation_answers() {
        // ipmi_sim: inbound 32, outbound 16384, the session's port, no VLAN.
        let d = [0, 0, 0, 0, 32, 0, 0, 0x40, 0x6f, 0x02, 0xff, 0xff];
        assert_eq!(
            decode_activation(&d, 623),
            Ok(SolInfo {
                inbound_payload: 32,
                outbound_payload: 16384,
                port: 623
            })
        );
        // Port sent big-endian.
        let d = [0, 0, 0, 0, 32, 0, 0, 1, 0x02, 0x6f, 0xff, 0xff];
        assert_eq!(decode_activation(&d, 623).unwrap().port, 623);
        let d = [0, 0, 0, 0, 32, 0, 0, 1, 0x70, 0x02, 0xff, 0xff];
        assert!(matches!(
            decode_activation(&d, 623),
            Err(BmcError::Unsupported(m)) if m.contains("624")
        ));
        assert!(matches!(
            decode_activation(&d[..8], 623),
            Err(BmcError::Protocol(_))
        ));
        let e = activation_error(lan::completion_error(0x80));
        assert_eq!(
            e.to_string(),
            "the BMC refused the request: SOL is already active in another session (completion code 0x80)"
        );
        assert_eq!(super::super::completion_of(&e), Some(0x80));
        assert!(
            activation_error(lan::completion_error(0x81))
                .to_string()
                .contains("SOL is disabled")
        );
    }
}
