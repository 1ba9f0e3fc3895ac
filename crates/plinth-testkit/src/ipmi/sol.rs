//! Serial over LAN for the test kit's IPMI BMC (IPMI v2.0 chapters 15, 24 and 26), written
//! from the specification and checked with `ipmitool -I lanplus sol activate`, not with
//! plinth's own SOL code:
//!
//! - Activate Payload (SOL, instance 1; encrypted and authenticated, as both suites seal every
//!   packet: a request for less is refused with 0x84), a second activation refused with 0x80,
//!   Deactivate Payload (from any session: the active console is told with the
//!   "SOL deactivating" status), Get Payload Activation Status, Get Payload Instance Info;
//!   Close Session deactivates what the session had;
//! - Get/Set SOL Configuration Parameters 0-8 (set in progress, enable, authentication,
//!   accumulate interval, retry count and interval, the two bit rates, payload channel, port);
//! - SOL packets: sequence numbers 1-15, acknowledgements with the count of characters
//!   accepted, a duplicate (a packet whose acknowledgement was lost) acknowledged again and not
//!   written twice, a break passed on once; the BMC's own characters one packet at a time,
//!   sent again after the retry interval and given up after the retry count (26.7, parameter
//!   4: "the packet is dropped"), characters that arrive meanwhile waiting for the next packet.
//!   Knobs make it refuse (NACK) packets or accept only part of them.
//!
//! The serial side is a byte stream ([`Serial`]): a VM's serial port (QEMU's chardev socket,
//! connected again whenever the VM powers on) or a stream the test holds. What the serial port
//! sends while no console has SOL active is thrown away, as a BMC's UART does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{Bmc, IpmiEmulator, PRIV_ADMIN, PRIV_USER, Request, Stage, cc, lock, seal_as};

/// The most a console may send in one SOL payload, header included (Activate Payload's
/// answer): 100 characters.
pub const INBOUND_PAYLOAD: u16 = 104;
/// The most the BMC sends in one SOL payload, header included: 200 characters.
pub const OUTBOUND_PAYLOAD: u16 = 204;
/// Serial characters kept for the console while its packets are on their way; more are lost
/// (the next packet says so with the overrun bit).
const QUEUE_LIMIT: usize = 64 * 1024;
/// How often a VM's serial socket is tried again while it is missing (the VM is off).
const RECONNECT: Duration = Duration::from_millis(50);

/// Operation/status bits (15.9).
mod bits {
    /// Both ways: the packet's characters were not accepted.
    pub const NACK: u8 = 0x40;
    /// Console to BMC: generate a break. BMC to console: SOL is being deactivated.
    pub const BREAK: u8 = 0x10;
    pub const DEACTIVATING: u8 = 0x10;
    /// BMC to console: serial characters were lost.
    pub const OVERRUN: u8 = 0x08;
    /// Console to BMC: flush the BMC's outbound characters.
    pub const FLUSH_OUTBOUND: u8 = 0x01;
}

/// A byte stream that can be a BMC's serial port.
pub trait SerialStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> SerialStream for T {}

/// Where the BMC's serial port is wired.
pub enum Serial {
    /// A Unix socket, connected whenever it is there and again after it closes: a VM's
    /// serial port (`-chardev socket,server=on`, [`crate::vm::VirtualMachine::serial_socket`]),
    /// gone while the VM is off.
    Unix(PathBuf),
    /// One end of a stream the test holds the other end of (`tokio::io::duplex`).
    Stream(Box<dyn SerialStream>),
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Serial::Unix(p) => f.debug_tuple("Unix").field(p).finish(),
            Serial::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// What SOL did since the BMC started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SolStats {
    pub activations: u64,
    pub deactivations: u64,
    /// Characters from consoles written to the serial port.
    pub to_serial: u64,
    /// Where each break came: the count of characters written to the serial port before it.
    pub breaks: Vec<u64>,
    /// Characters from the serial port taken for the active console.
    pub from_serial: u64,
    /// Characters from the serial port while no console was active (thrown away).
    pub discarded: u64,
    /// Packets of the BMC sent again for want of an acknowledgement.
    pub retransmissions: u64,
    /// Characters given up after the retries, or lost to a full queue.
    pub dropped: u64,
    /// Console packets seen a second time (acknowledged again, not written again).
    pub duplicates: u64,
    /// Console packets refused with a NACK ([`IpmiEmulator::sol_nack_next`]).
    pub nacks: u64,
}

enum ToSerial {
    Bytes(Vec<u8>),
    Break,
}

/// SOL configuration parameters (26.3 table 26-4).
#[derive(Debug, Clone)]
struct Config {
    in_progress: u8,
    enabled: bool,
    /// Bit 7 force encryption, bit 6 force authentication, bits 3:0 privilege.
    auth: u8,
    /// Character accumulate interval (5 ms units), send threshold.
    accumulate: [u8; 2],
    /// Retry count (bits 2:0), retry interval (10 ms units).
    retry: [u8; 2],
    nv_rate: u8,
    v_rate: u8,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            in_progress: 0,
            enabled: true,
            auth: 0xc0 | PRIV_USER,
            accumulate: [12, 96],
            retry: [7, 20],
            // 115.2 kbit/s.
            nv_rate: 0x0a,
            v_rate: 0x0a,
        }
    }
}

impl Config {
    fn retries(&self) -> u32 {
        u32::from(self.retry[0] & 0x07)
    }
    fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.retry[1].max(1)) * 10)
    }
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    seq: u8,
    len: usize,
    sent_at: Instant,
    tries: u32,
}

/// SOL active in one session.
struct Active {
    sid: u32,
    peer: SocketAddr,
    /// The console's last packet: its number and how many of its characters were taken.
    last_in: Option<(u8, usize)>,
    /// Serial characters not yet acknowledged; the packet in flight carries the first ones.
    queue: VecDeque<u8>,
    in_flight: Option<Flight>,
    last_seq: u8,
    overrun: bool,
    /// After a NACK from the console: when to offer the characters again.
    paused_until: Option<Instant>,
}

/// The BMC's SOL state (a field of the BMC).
#[derive(Default)]
pub(super) struct Sol {
    cfg: Config,
    /// The BMC's UDP port (Activate Payload's answer).
    port: u16,
    to_serial: Option<mpsc::UnboundedSender<ToSerial>>,
    /// Where the datagram being handled came from.
    peer: Option<SocketAddr>,
    active: Option<Active>,
    /// Packets to send outside of a reply: (session, console's address, SOL payload).
    notices: Vec<(u32, SocketAddr, Vec<u8>)>,
    nack_next: u32,
    accept_at_most: Option<u8>,
    stats: SolStats,
}

impl Sol {
    /// Wires the serial port; the receiver gets what the serial port sends.
    pub(super) fn attach(
        &mut self,
        port: u16,
        serial: Option<Serial>,
    ) -> mpsc::UnboundedReceiver<Vec<u8>> {
        self.port = port;
        let (to_bmc, from_serial) = mpsc::unbounded_channel();
        if let Some(serial) = serial {
            let (tx, rx) = mpsc::unbounded_channel();
            self.to_serial = Some(tx);
            tokio::spawn(bridge(serial, to_bmc, rx));
        }
        from_serial
    }

    fn deadline(&self) -> Option<Instant> {
        let a = self.active.as_ref()?;
        match a.in_flight {
            Some(f) => Some(f.sent_at + self.cfg.interval()),
            None if !a.queue.is_empty() => a.paused_until,
            None => None,
        }
    }
}

/// The BMC's loop: datagrams, serial characters, and the SOL retransmission timer.
pub(super) async fn serve(
    sock: UdpSocket,
    state: Arc<Mutex<Bmc>>,
    mut from_serial: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut buf = vec![0u8; 2048];
    let mut serial_open = true;
    loop {
        let wake = lock(&state).sol.deadline();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, peer)) = r else {
                    continue;
                };
                let mut b = lock(&state);
                b.sol.peer = Some(peer);
                let mut out: Vec<_> = b.datagram(&buf[..n]).map(|r| (peer, r)).into_iter().collect();
                out.extend(b.sol_transmit());
                out
            }
            bytes = from_serial.recv(), if serial_open => {
                let Some(bytes) = bytes else {
                    serial_open = false;
                    continue;
                };
                let mut b = lock(&state);
                b.sol_from_serial(&bytes);
                b.sol_transmit()
            }
            () = sleep => lock(&state).sol_transmit(),
        };
        for (to, p) in out {
            sock.send_to(&p, to).await.ok();
        }
    }
}

/// Moves bytes between the serial port and the BMC until the BMC is gone.
async fn bridge(
    serial: Serial,
    to_bmc: mpsc::UnboundedSender<Vec<u8>>,
    mut from_bmc: mpsc::UnboundedReceiver<ToSerial>,
) {
    match serial {
        Serial::Stream(s) => {
            if pump(s, &to_bmc, &mut from_bmc).await {
                return;
            }
            // The test closed its end: what the console types goes nowhere.
            while from_bmc.recv().await.is_some() {}
        }
        Serial::Unix(path) => loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => {
                    if pump(s, &to_bmc, &mut from_bmc).await {
                        return;
                    }
                }
                Err(_) => {
                    // The machine is off: what the console types is lost, as on a real one.
                    loop {
                        match from_bmc.try_recv() {
                            Ok(_) => {}
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                        }
                    }
                    tokio::time::sleep(RECONNECT).await;
                }
            }
        },
    }
}

/// One connection of the serial port; true when the BMC is gone, false when the stream ended.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    to_bmc: &mpsc::UnboundedSender<Vec<u8>>,
    from_bmc: &mut mpsc::UnboundedReceiver<ToSerial>,
) -> bool {
    let (mut r, mut w) = tokio::io::split(s);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    if to_bmc.send(buf[..n].to_vec()).is_err() {
                        return true;
                    }
                }
            },
            m = from_bmc.recv() => match m {
                None => return true,
                Some(ToSerial::Bytes(b)) => {
                    if w.write_all(&b).await.is_err() {
                        return false;
                    }
                }
                // A byte stream has no break condition: the BMC's counters record it.
                Some(ToSerial::Break) => {}
            },
        }
    }
}

/// A SOL payload: packet sequence number, acknowledged number, accepted count, status,
/// characters.
fn packet(seq: u8, ack: u8, accepted: u8, status: u8, data: &[u8]) -> Vec<u8> {
    let mut p = vec![seq, ack, accepted, status];
    p.extend_from_slice(data);
    p
}

impl Bmc {
    /// The SOL commands, or `None` for any other command.
    pub(super) fn sol_command(
        &mut self,
        rq: &Request,
        privilege: u8,
        sid: u32,
    ) -> Option<(u8, Vec<u8>, super::After)> {
        let d = &rq.data[..];
        let answer = |c: u8, data: Vec<u8>| Some((c, data, super::After::Nothing));
        let sol_privilege = self.sol.cfg.auth & 0x0f;
        match (rq.netfn, rq.cmd) {
            // Activate Payload.
            (0x06, 0x48) => {
                let [kind, instance, aux, ..] = d[..] else {
                    return answer(cc::LENGTH, vec![]);
                };
                if d.len() != 6 {
                    return answer(cc::LENGTH, vec![]);
                }
                if kind & 0x3f != 0x01 || instance & 0x0f != 1 {
                    return answer(cc::INVALID_DATA, vec![]);
                }
                if privilege < sol_privilege {
                    return answer(cc::PRIVILEGE, vec![]);
                }
                if !self.sol.cfg.enabled {
                    return answer(0x81, vec![]);
                }
                if self.sol.active.is_some() {
                    return answer(0x80, vec![]);
                }
                // Both suites seal every packet: SOL without encryption or authentication
                // cannot be had.
                if aux & 0xc0 != 0xc0 {
                    return answer(0x84, vec![]);
                }
                let peer = self.sol.peer?;
                self.sol.active = Some(Active {
                    sid,
                    peer,
                    last_in: None,
                    queue: VecDeque::new(),
                    in_flight: None,
                    last_seq: 0,
                    overrun: false,
                    paused_until: None,
                });
                self.sol.stats.activations += 1;
                let mut out = vec![0, 0, 0, 0];
                out.extend_from_slice(&INBOUND_PAYLOAD.to_le_bytes());
                out.extend_from_slice(&OUTBOUND_PAYLOAD.to_le_bytes());
                out.extend_from_slice(&self.sol.port.to_le_bytes());
                // No VLAN.
                out.extend_from_slice(&[0xff, 0xff]);
                answer(cc::OK, out)
            }
            // Deactivate Payload.
            (0x06, 0x49) => {
                let [kind, instance, ..] = d[..] else {
                    return answer(cc::LENGTH, vec![]);
                };
                if kind & 0x3f != 0x01 || instance & 0x0f != 1 {
                    return answer(cc::INVALID_DATA, vec![]);
                }
                if privilege < sol_privilege {
                    return answer(cc::PRIVILEGE, vec![]);
                }
                if self.sol.active.is_none() {
                    return answer(0x80, vec![]);
                }
                self.sol_deactivate(sid);
                answer(cc::OK, vec![])
            }
            // Get Payload Activation Status: capacity 1, the instances active.
            (0x06, 0x4a) => match d {
                [kind] if kind & 0x3f == 0x01 => {
                    answer(cc::OK, vec![1, u8::from(self.sol.active.is_some()), 0])
                }
                [_] => answer(cc::INVALID_DATA, vec![]),
                _ => answer(cc::LENGTH, vec![]),
            },
            // Get Payload Instance Info: the session that has it, then the port number.
            (0x06, 0x4b) => match d {
                [kind, 1] if kind & 0x3f == 0x01 => {
                    let holder = self.sol.active.as_ref().map_or(0, |a| a.sid);
                    let mut out = holder.to_le_bytes().to_vec();
                    out.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
                    answer(cc::OK, out)
                }
                [_, _] => answer(cc::INVALID_DATA, vec![]),
                _ => answer(cc::LENGTH, vec![]),
            },
            // Set SOL Configuration Parameters.
            (0x0c, 0x21) => {
                if privilege < PRIV_ADMIN {
                    return answer(cc::PRIVILEGE, vec![]);
                }
                let (c, out) = match self.set_sol_parameter(d) {
                    Ok(()) => (cc::OK, vec![]),
                    Err(c) => (c, vec![]),
                };
                answer(c, out)
            }
            // Get SOL Configuration Parameters.
            (0x0c, 0x22) => match self.get_sol_parameter(d) {
                Ok(out) => answer(cc::OK, out),
                Err(c) => answer(c, vec![]),
            },
            _ => None,
        }
    }

    fn get_sol_parameter(&self, d: &[u8]) -> Result<Vec<u8>, u8> {
        let [channel, param, _set, _block] = d[..] else {
            return Err(cc::LENGTH);
        };
        if !matches!(channel & 0x0f, 0x01 | 0x0e) {
            return Err(cc::INVALID_DATA);
        }
        // Parameter revision 1.1.
        let mut out = vec![0x11];
        if channel & 0x80 != 0 {
            return Ok(out);
        }
        let c = &self.sol.cfg;
        match param {
            0 => out.push(c.in_progress),
            1 => out.push(u8::from(c.enabled)),
            2 => out.push(c.auth),
            3 => out.extend_from_slice(&c.accumulate),
            4 => out.extend_from_slice(&c.retry),
            5 => out.push(c.nv_rate),
            6 => out.push(c.v_rate),
            7 => out.push(0x01),
            8 => out.extend_from_slice(&self.sol.port.to_le_bytes()),
            _ => return Err(cc::PARAMETER_NOT_SUPPORTED),
        }
        Ok(out)
    }

    fn set_sol_parameter(&mut self, d: &[u8]) -> Result<(), u8> {
        let [channel, param, ref value @ ..] = d[..] else {
            return Err(cc::LENGTH);
        };
        if !matches!(channel & 0x0f, 0x01 | 0x0e) {
            return Err(cc::INVALID_DATA);
        }
        let want = |n: usize| {
            if value.len() == n {
                Ok(())
            } else {
                Err(cc::LENGTH)
            }
        };
        let rate = |v: u8| match v & 0x0f {
            0 | 6..=0x0a => Ok(v & 0x0f),
            _ => Err(cc::INVALID_DATA),
        };
        let c = &mut self.sol.cfg;
        match param {
            0 => {
                want(1)?;
                match value[0] & 0x03 {
                    0 => c.in_progress = 0,
                    1 if c.in_progress == 1 => return Err(0x81),
                    1 => c.in_progress = 1,
                    2 => {}
                    _ => return Err(cc::INVALID_DATA),
                }
            }
            1 => {
                want(1)?;
                c.enabled = value[0] & 0x01 != 0;
            }
            2 => {
                want(1)?;
                if !(PRIV_USER..=PRIV_ADMIN + 1).contains(&(value[0] & 0x0f)) {
                    return Err(cc::INVALID_DATA);
                }
                c.auth = value[0] & 0xcf;
            }
            3 => {
                want(2)?;
                if value[0] == 0 {
                    return Err(cc::INVALID_DATA);
                }
                c.accumulate = [value[0], value[1]];
            }
            4 => {
                want(2)?;
                c.retry = [value[0] & 0x07, value[1]];
            }
            5 => {
                want(1)?;
                c.nv_rate = rate(value[0])?;
            }
            6 => {
                want(1)?;
                c.v_rate = rate(value[0])?;
            }
            // Payload channel and port: read only here.
            7 | 8 => return Err(0x82),
            _ => return Err(cc::PARAMETER_NOT_SUPPORTED),
        }
        Ok(())
    }

    /// Ends SOL. Asked by another session than the console's (or by the BMC itself, `by` 0),
    /// the console is told with the deactivating status.
    fn sol_deactivate(&mut self, by: u32) {
        let Some(a) = self.sol.active.take() else {
            return;
        };
        self.sol.stats.deactivations += 1;
        self.sol.stats.dropped += a.queue.len() as u64;
        if a.sid != by {
            self.sol
                .notices
                .push((a.sid, a.peer, packet(0, 0, 0, bits::DEACTIVATING, &[])));
        }
    }

    /// A session closed: its SOL ends with it.
    pub(super) fn sol_session_closed(&mut self, sid: u32) {
        if self.sol.active.as_ref().is_some_and(|a| a.sid == sid) {
            self.sol_deactivate(sid);
        }
    }

    /// A sealed SOL payload (type 1) in the session `sid`.
    fn sol_seal(&mut self, sid: u32, message: &[u8]) -> Option<Vec<u8>> {
        let session = self.sessions.get_mut(&sid)?;
        let console_sid = session.console_sid;
        let Stage::Active { keys, outbound, .. } = &mut session.stage else {
            return None;
        };
        *outbound = outbound.wrapping_add(1).max(1);
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        Some(seal_as(0x01, keys, console_sid, *outbound, message, iv))
    }

    /// A SOL packet from a console; the acknowledgement to send back, if any.
    pub(super) fn sol_packet(&mut self, p: &[u8], payload_type: u8, sid: u32) -> Option<Vec<u8>> {
        let Some((m, _, _)) = self.unseal(p, payload_type, sid) else {
            self.stats.rejected += 1;
            return None;
        };
        if m.len() < 4 {
            return None;
        }
        let (seq, ack, accepted, op, data) = (m[0] & 0x0f, m[1] & 0x0f, m[2], m[3], &m[4..]);
        let now = Instant::now();
        let interval = self.sol.cfg.interval();
        // SOL not active in this session: dropped, as a BMC that deactivated does.
        let a = self.sol.active.as_mut().filter(|a| a.sid == sid)?;
        if let Some(peer) = self.sol.peer {
            a.peer = peer;
        }
        if ack != 0
            && let Some(f) = a.in_flight.filter(|f| f.seq == ack)
        {
            let n = usize::from(accepted).min(f.len);
            a.queue.drain(..n);
            a.in_flight = None;
            if op & bits::NACK != 0 {
                a.paused_until = Some(now + interval);
            }
        }
        if op & bits::FLUSH_OUTBOUND != 0 && a.in_flight.is_none() {
            self.sol.stats.dropped += a.queue.len() as u64;
            a.queue.clear();
        }
        if seq == 0 {
            return None;
        }
        let seen = match a.last_in {
            Some((s, n)) if s == seq => {
                self.sol.stats.duplicates += 1;
                Some(n)
            }
            _ => None,
        };
        let reply = if seen.is_none() && self.sol.nack_next > 0 {
            self.sol.nack_next -= 1;
            self.sol.stats.nacks += 1;
            packet(0, seq, 0, bits::NACK, &[])
        } else {
            let take = self
                .sol
                .accept_at_most
                .map_or(data.len(), |k| data.len().min(usize::from(k)));
            let already = seen.unwrap_or(0);
            if seen.is_none() && op & bits::BREAK != 0 {
                self.sol.stats.breaks.push(self.sol.stats.to_serial);
                if let Some(tx) = &self.sol.to_serial {
                    tx.send(ToSerial::Break).ok();
                }
            }
            if take > already {
                let new = &data[already..take];
                self.sol.stats.to_serial += new.len() as u64;
                if let Some(tx) = &self.sol.to_serial {
                    tx.send(ToSerial::Bytes(new.to_vec())).ok();
                }
            }
            if let Some(a) = self.sol.active.as_mut() {
                a.last_in = Some((seq, take.max(already)));
            }
            packet(0, seq, take.max(already) as u8, 0, &[])
        };
        self.sol_seal(sid, &reply)
    }

    /// Characters from the serial port.
    fn sol_from_serial(&mut self, bytes: &[u8]) {
        let Some(a) = self.sol.active.as_mut() else {
            self.sol.stats.discarded += bytes.len() as u64;
            return;
        };
        self.sol.stats.from_serial += bytes.len() as u64;
        let room = QUEUE_LIMIT.saturating_sub(a.queue.len());
        if bytes.len() > room {
            a.overrun = true;
            self.sol.stats.dropped += (bytes.len() - room) as u64;
        }
        a.queue.extend(&bytes[..bytes.len().min(room)]);
    }

    /// What SOL sends now: notices, a retransmission, or the next packet of characters.
    fn sol_transmit(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let now = Instant::now();
        let mut out: Vec<(u32, SocketAddr, Vec<u8>)> = std::mem::take(&mut self.sol.notices);
        let (retries, interval) = (self.sol.cfg.retries(), self.sol.cfg.interval());
        if let Some(a) = self.sol.active.as_mut() {
            if let Some(mut f) = a.in_flight
                && now >= f.sent_at + interval
            {
                if f.tries >= retries {
                    // 26.7: no acknowledgement after the retries, the packet is dropped.
                    a.queue.drain(..f.len);
                    self.sol.stats.dropped += f.len as u64;
                    a.in_flight = None;
                } else {
                    f.tries += 1;
                    f.sent_at = now;
                    a.in_flight = Some(f);
                    self.sol.stats.retransmissions += 1;
                    let data: Vec<u8> = a.queue.iter().take(f.len).copied().collect();
                    out.push((a.sid, a.peer, packet(f.seq, 0, 0, 0, &data)));
                }
            }
            if a.in_flight.is_none()
                && !a.queue.is_empty()
                && a.paused_until.is_none_or(|t| now >= t)
            {
                a.paused_until = None;
                a.last_seq = a.last_seq % 15 + 1;
                let len = a.queue.len().min(usize::from(OUTBOUND_PAYLOAD - 4));
                let f = Flight {
                    seq: a.last_seq,
                    len,
                    sent_at: now,
                    tries: 0,
                };
                a.in_flight = Some(f);
                let status = if std::mem::take(&mut a.overrun) {
                    bits::OVERRUN
                } else {
                    0
                };
                let data: Vec<u8> = a.queue.iter().take(len).copied().collect();
                out.push((a.sid, a.peer, packet(f.seq, 0, 0, status, &data)));
            }
        }
        let mut sealed = Vec::new();
        for (sid, peer, p) in out {
            let Some(s) = self.sol_seal(sid, &p) else {
                continue;
            };
            if self.loss_on_replies && self.lose() {
                self.stats.replies_dropped += 1;
                continue;
            }
            self.stats.sent += 1;
            sealed.push((peer, s));
        }
        sealed
    }
}

impl IpmiEmulator {
    pub fn sol_stats(&self) -> SolStats {
        lock(&self.state).sol.stats.clone()
    }

    /// Whether a console has SOL active.
    pub fn sol_active(&self) -> bool {
        lock(&self.state).sol.active.is_some()
    }

    /// SOL configuration parameter 1, as `ipmitool sol set enabled` sets it.
    pub fn set_sol_enabled(&self, on: bool) {
        lock(&self.state).sol.cfg.enabled = on;
    }

    /// Refuses the console's next `n` packets of characters with a NACK.
    pub fn sol_nack_next(&self, n: u32) {
        lock(&self.state).sol.nack_next = n;
    }

    /// Accepts at most `k` characters of each console packet (a partial acknowledgement), or
    /// all of them (`None`).
    pub fn set_sol_accept_at_most(&self, k: Option<u8>) {
        lock(&self.state).sol.accept_at_most = k;
    }

    /// Deactivates SOL as the BMC's own interface would; the console is told.
    pub fn sol_deactivate(&self) {
        lock(&self.state).sol_deactivate(0);
    }
}
