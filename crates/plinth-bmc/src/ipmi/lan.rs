//! The RMCP+ session over UDP: open (Get Channel Authentication Capabilities, Open Session,
//! RAKP 1-4, Set Session Privilege Level to administrator), commands with sequence numbers and
//! retransmission, completion codes as errors, Close Session. Cipher suite 3 or 17, as
//! configured.

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngCore;
use tokio::net::UdpSocket;

use super::wire::{self, CipherSuite, Rakp, SessionKeys, payload};
use crate::{BmcError, Result};

/// How to reach one BMC over IPMI.
#[derive(Clone)]
pub struct IpmiConfig {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
    /// Per attempt; a request is sent `retries + 1` times before the BMC counts as unreachable.
    pub timeout: Duration,
    pub retries: u32,
    /// The RMCP+ cipher suite. [`CipherSuite::Three`] by default (`CipherSuite::default()`),
    /// since every IPMI 2.0 BMC has it; choose [`CipherSuite::Seventeen`] (SHA-256) for BMCs
    /// that offer it or allow nothing else. plinth does not negotiate: a BMC without the
    /// suite makes the session fail with [`BmcError::Unsupported`].
    pub cipher_suite: CipherSuite,
}

impl std::fmt::Debug for IpmiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiConfig")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("cipher_suite", &self.cipher_suite.id())
            .finish()
    }
}

/// An established session.
/// Its parts are open to [`super::sol`], whose loop shares the socket, the keys and the
/// sequence numbers while a SOL payload is active.
pub struct Session {
    pub(super) sock: UdpSocket,
    pub(super) bmc_sid: u32,
    pub(super) keys: SessionKeys,
    /// The last session sequence number sent (each packet takes the next one).
    pub(super) seq: u32,
    pub(super) rq_seq: u8,
    pub(super) cfg: IpmiConfig,
}

/// Role byte: administrator, name-only lookup.
const ROLE_ADMIN: u8 = 0x14;

pub(super) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

pub(crate) fn completion_error(cc: u8) -> BmcError {
    let what = match cc {
        0xc0 => return BmcError::Busy("node busy (completion code 0xc0)".into()),
        0xc3 => return BmcError::Busy("timeout in the BMC (completion code 0xc3)".into()),
        0xc1 => "invalid command",
        0xc7 | 0xc8 => "request data length invalid",
        0xc9 => "parameter out of range",
        0xcc => "invalid data field",
        0xd4 => "insufficient privilege level",
        0xd5 => "command not supported in this state",
        0x80 => "parameter not supported",
        0x81 => "set already in progress",
        _ => "error",
    };
    BmcError::Rejected(format!("{what} (completion code {cc:#04x})"))
}

/// RMCP+ status codes of the session set-up messages (13.24).
fn status_error(step: &str, status: u8, suite: CipherSuite) -> BmcError {
    match status {
        // Unauthorized name or GUID; an integrity check value that does not match (the
        // password).
        0x0d..=0x0f => BmcError::Auth,
        0x09..=0x0b => BmcError::Rejected(format!(
            "{step}: the user may not have the administrator role (RMCP+ status {status:#04x})"
        )),
        // Invalid authentication, integrity or confidentiality algorithm; no matching suite.
        0x04 | 0x05 | 0x10 | 0x11 => {
            BmcError::Unsupported(format!("{suite} (RMCP+ status {status:#04x})"))
        }
        _ => BmcError::Rejected(format!("{step} refused (RMCP+ status {status:#04x})")),
    }
}

/// Sends `packet` and returns the first answer `accept` takes, retransmitting on timeout.
async fn exchange<T: Send>(
    sock: &UdpSocket,
    cfg: &IpmiConfig,
    packet: &mut (dyn FnMut() -> Vec<u8> + Send),
    accept: &mut (dyn FnMut(&[u8]) -> Option<Result<T>> + Send),
) -> Result<T> {
    let mut buf = vec![0u8; 1024];
    for _ in 0..=cfg.retries {
        sock.send(&packet())
            .await
            .map_err(|_| BmcError::Unreachable("cannot send to the BMC".into()))?;
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break, // retransmit
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(BmcError::Unreachable("the BMC's port is closed".into()));
                }
                Ok(Err(_)) => {
                    return Err(BmcError::Unreachable("receiving from the BMC".into()));
                }
                Ok(Ok(n)) => {
                    if let Some(r) = accept(&buf[..n]) {
                        return r;
                    }
                    // Not ours (a late answer to an earlier try): keep waiting.
                }
            }
        }
    }
    Err(BmcError::Timeout)
}

impl Session {
    pub async fn open(cfg: &IpmiConfig) -> Result<Session> {
        let bind = if cfg.addr.is_ipv4() {
            SocketAddr::from(([0u8; 4], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|_| BmcError::Unreachable("no local UDP socket".into()))?;
        sock.connect(cfg.addr)
            .await
            .map_err(|_| BmcError::Unreachable("no route to the BMC".into()))?;

        // Get Channel Authentication Capabilities: is RMCP+ there at all?
        let caps = wire::request(0x06, 0, 0x38, &[0x8e, 0x04]);
        exchange(
            &sock,
            cfg,
            &mut || wire::v15_packet(&caps),
            &mut |p| match wire::parse(p) {
                Ok(wire::Packet::V15 { message }) => match wire::parse_response(&message) {
                    Ok(r) if r.cmd == 0x38 && r.completion == 0 => {
                        Some(if r.data.get(1).is_some_and(|b| b & 0x80 != 0) {
                            Ok(())
                        } else {
                            Err(BmcError::Unsupported("IPMI 2.0 (RMCP+)".into()))
                        })
                    }
                    Ok(r) if r.cmd == 0x38 => Some(Err(completion_error(r.completion))),
                    _ => None,
                },
                _ => None,
            },
        )
        .await?;

        // Open Session with the configured suite.
        let suite = cfg.cipher_suite;
        let console_sid = u32::from_le_bytes(random::<4>()) | 1;
        // The message tag matches an answer to this request even where a BMC leaves the
        // console session ID out of an error answer (ipmi_sim does, refusing suite 17).
        let tag = random::<1>()[0] | 1;
        let mut open = vec![tag, 0x04, 0, 0];
        open.extend_from_slice(&console_sid.to_le_bytes());
        let algorithms = suite.open_session_payloads();
        open.extend_from_slice(&algorithms);
        let bmc_sid = exchange(
            &sock,
            cfg,
            &mut || wire::plus_packet(payload::OPEN_SESSION_REQUEST, 0, 0, &open),
            &mut |p| open_session_answer(p, console_sid, tag, suite),
        )
        .await?;

        // RAKP 1 and 2.
        let rm = random::<16>();
        let user = cfg.username.as_bytes();
        let mut r1 = vec![0x00, 0, 0, 0];
        r1.extend_from_slice(&bmc_sid.to_le_bytes());
        r1.extend_from_slice(&rm);
        r1.extend_from_slice(&[ROLE_ADMIN, 0, 0, user.len() as u8]);
        r1.extend_from_slice(user);
        let (rc, guid, code) = exchange(
            &sock,
            cfg,
            &mut || wire::plus_packet(payload::RAKP1, 0, 0, &r1),
            &mut |p| rakp2_answer(p, suite),
        )
        .await?;
        let rakp = Rakp {
            suite,
            console_sid,
            bmc_sid,
            rm,
            rc,
            bmc_guid: guid,
            role: ROLE_ADMIN,
            username: user,
            password: cfg.password.as_bytes(),
        };
        if rakp.rakp2_code()[..] != code[..] {
            // The BMC's proof does not match our password: the password is wrong.
            return Err(BmcError::Auth);
        }

        // RAKP 3 and 4.
        let mut r3 = vec![0x00, 0x00, 0, 0];
        r3.extend_from_slice(&bmc_sid.to_le_bytes());
        r3.extend_from_slice(&rakp.rakp3_code());
        let icv = rakp.rakp4_icv();
        exchange(
            &sock,
            cfg,
            &mut || wire::plus_packet(payload::RAKP3, 0, 0, &r3),
            &mut |p| match wire::parse(p) {
                Ok(wire::Packet::Plus {
                    payload_type: payload::RAKP4,
                    payload: r,
                    ..
                }) if r.len() >= 8 => Some(if r[1] != 0 {
                    Err(status_error("RAKP 3", r[1], suite))
                } else if r.get(8..8 + icv.len()) != Some(&icv[..]) {
                    Err(BmcError::Protocol("RAKP 4 integrity check failed".into()))
                } else {
                    Ok(())
                }),
                _ => None,
            },
        )
        .await?;

        let mut s = Session {
            sock,
            bmc_sid,
            keys: rakp.keys(),
            seq: 0,
            rq_seq: 0,
            cfg: cfg.clone(),
        };
        // Without this, commands fail with 0xd4 (insufficient privilege).
        s.command(0x06, 0x3b, &[0x04]).await?;
        Ok(s)
    }

    /// One command in the session; its response data (after the completion code).
    pub async fn command(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>> {
        self.rq_seq = (self.rq_seq + 1) % 64;
        let rq_seq = self.rq_seq;
        let message = wire::request(netfn, rq_seq, cmd, data);
        let keys = self.keys.clone();
        let bmc_sid = self.bmc_sid;
        let mut seq = self.seq;
        let r = exchange(
            &self.sock,
            &self.cfg,
            &mut || {
                seq = seq.wrapping_add(1).max(1);
                keys.seal(bmc_sid, seq, &message, random::<16>())
            },
            &mut |p| {
                let m = keys.open(p).ok()?;
                let r = wire::parse_response(&m).ok()?;
                (r.rq_seq == rq_seq && r.cmd == cmd).then_some(Ok(r))
            },
        )
        .await;
        self.seq = seq;
        let r = r?;
        if r.completion != 0 {
            return Err(completion_error(r.completion));
        }
        Ok(r.data)
    }

    /// Close Session (best effort).
    pub async fn close(mut self) {
        let sid = self.bmc_sid.to_le_bytes();
        self.command(0x06, 0x3c, &sid).await.ok();
    }
}

/// Whether `p` answers our Open Session request (our session ID `console_sid`, or an error
/// carrying our message `tag`): the BMC's session ID, or why it refused. `None`: not an
/// answer to it (ignored).
pub fn open_session_answer(
    p: &[u8],
    console_sid: u32,
    tag: u8,
    suite: CipherSuite,
) -> Option<Result<u32>> {
    let algorithms = suite.open_session_payloads();
    match wire::parse(p) {
        Ok(wire::Packet::Plus {
            payload_type: payload::OPEN_SESSION_RESPONSE,
            payload: r,
            ..
        }) if r.get(4..8) == Some(&console_sid.to_le_bytes()[..])
            || (r.len() >= 2 && r[0] == tag && r[1] != 0) =>
        {
            Some(match (r[1], r.get(8..12), r.get(12..36)) {
                (0, Some(sid), Some(chosen)) if chosen == algorithms => {
                    Ok(u32::from_le_bytes([sid[0], sid[1], sid[2], sid[3]]))
                }
                // A BMC must take the algorithms as proposed or refuse them.
                (0, Some(_), Some(_)) => Err(BmcError::Protocol(format!(
                    "the BMC answered Open Session for {suite} with other algorithms"
                ))),
                (0, _, _) => Err(BmcError::Protocol("short Open Session response".into())),
                (status, _, _) => Err(status_error("Open Session", status, suite)),
            })
        }
        _ => None,
    }
}

/// Whether `p` is a RAKP 2 message: the BMC's random number, its GUID and its key exchange
/// code, or why it refused. `None`: not a RAKP 2 (ignored).
#[allow(clippy::type_complexity)]
pub fn rakp2_answer(p: &[u8], suite: CipherSuite) -> Option<Result<([u8; 16], [u8; 16], Vec<u8>)>> {
    match wire::parse(p) {
        Ok(wire::Packet::Plus {
            payload_type: payload::RAKP2,
            payload: r,
            ..
        }) if r.len() >= 8 => Some(if r[1] != 0 {
            Err(status_error("RAKP 1", r[1], suite))
        } else {
            match (
                r.get(8..24).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                r.get(24..40).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                r.get(40..40 + suite.hmac_len()),
            ) {
                (Some(rc), Some(guid), Some(code)) => Ok((rc, guid, code.to_vec())),
                _ => Err(BmcError::Protocol("short RAKP 2".into())),
            }
        }),
        _ => None,
    }
}
