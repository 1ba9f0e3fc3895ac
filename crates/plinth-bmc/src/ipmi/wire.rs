//! IPMI 2.0 over LAN (RMCP+, "lanplus"), sans-IO: the bytes of RMCP packets, IPMI 1.5
//! session-less messages (Get Channel Authentication Capabilities), RMCP+ session packets and
//! their payloads (Open Session, RAKP 1-4, IPMI messages), the RAKP key exchange and the
//! per-packet integrity and confidentiality of cipher suites 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96,
//! AES-CBC-128) and 17 (RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128). No sockets, no
//! clock: the session layer ([`super::lan`]) drives it.
//! References: IPMI v2.0 rev 1.1 with its errata, sections 13.6-13.33 and 22.13.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// RMCP header for IPMI: version 6, reserved, sequence 0xff (no RMCP ACK), class IPMI.
pub const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
/// The BMC's and our (remote console software ID 0x81) IPMB addresses.
pub const BMC_ADDR: u8 = 0x20;
pub const CONSOLE_ADDR: u8 = 0x81;

/// RMCP+ payload types (13.27.3); bit 7 encrypted, bit 6 authenticated.
pub mod payload {
    pub const IPMI: u8 = 0x00;
    /// Serial over LAN (chapter 15), once activated with Activate Payload.
    pub const SOL: u8 = 0x01;
    pub const OPEN_SESSION_REQUEST: u8 = 0x10;
    pub const OPEN_SESSION_RESPONSE: u8 = 0x11;
    pub const RAKP1: u8 = 0x12;
    pub const RAKP2: u8 = 0x13;
    pub const RAKP3: u8 = 0x14;
    pub const RAKP4: u8 = 0x15;
    pub const ENCRYPTED: u8 = 0x80;
    pub const AUTHENTICATED: u8 = 0x40;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet too short")]
    Short,
    #[error("not an RMCP IPMI packet")]
    NotIpmi,
    #[error("unsupported session authentication type {0:#04x}")]
    AuthType(u8),
    #[error("bad IPMI message checksum")]
    Checksum,
    #[error("the packet's integrity code does not match")]
    Integrity,
    #[error("bad confidentiality padding")]
    Padding,
}

/// The two's-complement checksum of IPMB messages.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// An IPMI request message (LAN format: rsAddr, netFn/rsLUN, chk1, rqAddr, rqSeq/rqLUN, cmd,
/// data, chk2).
pub fn request(netfn: u8, rq_seq: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![BMC_ADDR, netfn << 2];
    m.push(checksum(&m));
    let body_start = m.len();
    m.extend_from_slice(&[CONSOLE_ADDR, rq_seq << 2, cmd]);
    m.extend_from_slice(data);
    let c = checksum(&m[body_start..]);
    m.push(c);
    m
}

/// An IPMI response message, checksums verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response netFn (request netFn + 1).
    pub netfn: u8,
    pub rq_seq: u8,
    pub cmd: u8,
    pub completion: u8,
    pub data: Vec<u8>,
}

pub fn parse_response(m: &[u8]) -> Result<Response, WireError> {
    if m.len() < 8 {
        return Err(WireError::Short);
    }
    if checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return Err(WireError::Checksum);
    }
    Ok(Response {
        netfn: m[1] >> 2,
        rq_seq: m[4] >> 2,
        cmd: m[5],
        completion: m[6],
        data: m[7..m.len() - 1].to_vec(),
    })
}

/// An IPMI 1.5 session-less packet (authentication type none), for Get Channel Authentication
/// Capabilities before any session exists.
pub fn v15_packet(message: &[u8]) -> Vec<u8> {
    let mut p = RMCP_HEADER.to_vec();
    p.push(0x00); // auth type none
    p.extend_from_slice(&[0; 8]); // session sequence, session id
    p.push(u8::try_from(message.len()).unwrap_or(u8::MAX));
    p.extend_from_slice(message);
    p
}

/// A parsed RMCP packet carrying IPMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// IPMI 1.5, session-less.
    V15 { message: Vec<u8> },
    /// RMCP+ (IPMI 2.0). `payload` is as on the wire (encrypted when the type says so).
    Plus {
        payload_type: u8,
        session_id: u32,
        seq: u32,
        payload: Vec<u8>,
    },
}

pub fn parse(p: &[u8]) -> Result<Packet, WireError> {
    if p.len() < 5 {
        return Err(WireError::Short);
    }
    // RMCP version 6, class IPMI (the sequence number is whatever the sender chose).
    if p[0] != 0x06 || p[3] & 0x1f != 0x07 {
        return Err(WireError::NotIpmi);
    }
    match p[4] {
        0x00 => {
            if p.len() < 14 {
                return Err(WireError::Short);
            }
            let len = usize::from(p[13]);
            let message = p.get(14..14 + len).ok_or(WireError::Short)?.to_vec();
            Ok(Packet::V15 { message })
        }
        0x06 => {
            if p.len() < 16 {
                return Err(WireError::Short);
            }
            let payload_type = p[5];
            let session_id = u32::from_le_bytes(p[6..10].try_into().expect("4 bytes"));
            let seq = u32::from_le_bytes(p[10..14].try_into().expect("4 bytes"));
            let len = usize::from(u16::from_le_bytes([p[14], p[15]]));
            let payload = p.get(16..16 + len).ok_or(WireError::Short)?.to_vec();
            Ok(Packet::Plus {
                payload_type,
                session_id,
                seq,
                payload,
            })
        }
        other => Err(WireError::AuthType(other)),
    }
}

/// An RMCP+ packet without integrity (the session set-up payloads).
pub fn plus_packet(payload_type: u8, session_id: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = RMCP_HEADER.to_vec();
    p.push(0x06);
    p.push(payload_type);
    p.extend_from_slice(&session_id.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(
        &u16::try_from(payload.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    p.extend_from_slice(payload);
    p
}

fn mac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// An RMCP+ cipher suite (22.15.2, table 22-20): the authentication, integrity and
/// confidentiality algorithms of a session. Both use AES-CBC-128; they differ in the hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128. The default: every IPMI 2.0 BMC offers it,
    /// and many older ones offer nothing stronger.
    #[default]
    Three,
    /// RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128 (added by the IPMI 2.0 errata): what
    /// newer BMCs recommend, and some of them the only suite they allow.
    Seventeen,
}

impl CipherSuite {
    /// The cipher suite ID, as `ipmitool -C` takes it.
    pub fn id(self) -> u8 {
        match self {
            CipherSuite::Three => 3,
            CipherSuite::Seventeen => 17,
        }
    }

    /// The algorithm numbers of Open Session (13.28): authentication, integrity,
    /// confidentiality.
    pub fn algorithms(self) -> (u8, u8, u8) {
        match self {
            CipherSuite::Three => (0x01, 0x01, 0x01),
            CipherSuite::Seventeen => (0x03, 0x04, 0x01),
        }
    }

    /// The three algorithm payloads of an Open Session request (13.17), which the BMC
    /// repeats in its response when it accepts them.
    pub fn open_session_payloads(self) -> [u8; 24] {
        let (a, i, c) = self.algorithms();
        [
            0x00, 0, 0, 8, a, 0, 0, 0, //
            0x01, 0, 0, 8, i, 0, 0, 0, //
            0x02, 0, 0, 8, c, 0, 0, 0,
        ]
    }

    /// The length of the suite's HMAC, and so of the RAKP 2 and RAKP 3 codes.
    pub fn hmac_len(self) -> usize {
        match self {
            CipherSuite::Three => 20,
            CipherSuite::Seventeen => 32,
        }
    }

    /// How much of the RAKP 4 HMAC is sent: 12 bytes (SHA1-96) or 16 (SHA256-128).
    pub fn rakp4_icv_len(self) -> usize {
        match self {
            CipherSuite::Three => 12,
            CipherSuite::Seventeen => 16,
        }
    }

    /// The length of the AuthCode that ends every session packet.
    pub fn auth_code_len(self) -> usize {
        match self {
            CipherSuite::Three => 12,
            CipherSuite::Seventeen => 16,
        }
    }

    /// The suite's HMAC: the whole digest (20 or 32 bytes). RAKP and integrity use the same
    /// hash in both suites.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            CipherSuite::Three => mac::<Hmac<Sha1>>(key, parts),
            CipherSuite::Seventeen => mac::<Hmac<Sha256>>(key, parts),
        }
    }
}

impl TryFrom<u8> for CipherSuite {
    type Error = u8;
    /// From the cipher suite ID; the ID back when plinth does not speak that suite.
    fn try_from(id: u8) -> Result<CipherSuite, u8> {
        match id {
            3 => Ok(CipherSuite::Three),
            17 => Ok(CipherSuite::Seventeen),
            other => Err(other),
        }
    }
}

impl std::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cipher suite {}", self.id())
    }
}

/// What both sides of a RAKP exchange put into its codes (13.31, 13.32).
#[derive(Debug, Clone)]
pub struct Rakp<'a> {
    pub suite: CipherSuite,
    /// Our (remote console) session id, and the BMC's.
    pub console_sid: u32,
    pub bmc_sid: u32,
    /// Our random number (RAKP 1) and the BMC's (RAKP 2).
    pub rm: [u8; 16],
    pub rc: [u8; 16],
    pub bmc_guid: [u8; 16],
    /// Requested role byte of RAKP 1 (privilege level, plus 0x10 for name-only lookup).
    pub role: u8,
    pub username: &'a [u8],
    /// The user's password (Kuid), at most 20 bytes.
    pub password: &'a [u8],
}

impl Rakp<'_> {
    /// The key exchange authentication code the BMC sends in RAKP 2 (the whole HMAC: 20
    /// bytes with suite 3, 32 with suite 17).
    pub fn rakp2_code(&self) -> Vec<u8> {
        self.suite.hmac(
            self.password,
            &[
                &self.console_sid.to_le_bytes(),
                &self.bmc_sid.to_le_bytes(),
                &self.rm,
                &self.rc,
                &self.bmc_guid,
                &[self.role, self.username.len() as u8],
                self.username,
            ],
        )
    }

    /// The code we send in RAKP 3 (the whole HMAC).
    pub fn rakp3_code(&self) -> Vec<u8> {
        self.suite.hmac(
            self.password,
            &[
                &self.rc,
                &self.console_sid.to_le_bytes(),
                &[self.role, self.username.len() as u8],
                self.username,
            ],
        )
    }

    /// The session integrity key (no BMC key Kg: the user password stands in).
    pub fn sik(&self) -> Vec<u8> {
        self.suite.hmac(
            self.password,
            &[
                &self.rm,
                &self.rc,
                &[self.role, self.username.len() as u8],
                self.username,
            ],
        )
    }

    /// The integrity check value the BMC sends in RAKP 4: the HMAC of the SIK truncated to
    /// 12 bytes (SHA1-96) or 16 (SHA256-128).
    pub fn rakp4_icv(&self) -> Vec<u8> {
        let mut full = self.suite.hmac(
            &self.sik(),
            &[&self.rm, &self.bmc_sid.to_le_bytes(), &self.bmc_guid],
        );
        full.truncate(self.suite.rakp4_icv_len());
        full
    }

    pub fn keys(&self) -> SessionKeys {
        let sik = self.sik();
        // The constants are 20 bytes whatever the hash (13.32); K1 keeps the whole digest.
        let k1 = self.suite.hmac(&sik, &[&[0x01; 20]]);
        let k2 = self.suite.hmac(&sik, &[&[0x02; 20]]);
        SessionKeys {
            suite: self.suite,
            k1,
            aes: k2[..16].try_into().expect("16 bytes"),
        }
    }
}

/// The keys of an established session.
#[derive(Clone)]
pub struct SessionKeys {
    pub suite: CipherSuite,
    /// Integrity (HMAC-SHA1-96 or HMAC-SHA256-128): 20 or 32 bytes.
    pub k1: Vec<u8>,
    /// Confidentiality (AES-CBC-128): the first 16 bytes of K2.
    pub aes: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({}, <redacted>)", self.suite.id())
    }
}

type Enc = cbc::Encryptor<aes::Aes128>;
type Dec = cbc::Decryptor<aes::Aes128>;

impl SessionKeys {
    /// An encrypted, authenticated IPMI message packet, with `iv` (fresh random bytes per
    /// packet; given here so that the codec stays deterministic and testable).
    pub fn seal(&self, session_id: u32, seq: u32, message: &[u8], iv: [u8; 16]) -> Vec<u8> {
        self.seal_payload(payload::IPMI, session_id, seq, message, iv)
    }

    /// An encrypted, authenticated packet of any payload type ([`payload::IPMI`],
    /// [`payload::SOL`]): both are sealed alike (13.28-13.29).
    pub fn seal_payload(
        &self,
        payload_type: u8,
        session_id: u32,
        seq: u32,
        message: &[u8],
        iv: [u8; 16],
    ) -> Vec<u8> {
        // Confidentiality trailer: pad bytes 1, 2, 3... then the pad length, to 16 bytes.
        let mut plain = message.to_vec();
        let pad = (16 - (plain.len() + 1) % 16) % 16;
        plain.extend((1..=pad as u8).collect::<Vec<_>>());
        plain.push(pad as u8);
        let len = plain.len();
        let enc = Enc::new(&self.aes.into(), &iv.into());
        let ct = enc
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .expect("a whole number of blocks")
            .to_vec();
        let mut payload = iv.to_vec();
        payload.extend_from_slice(&ct);
        let mut p = plus_packet(
            payload_type | payload::ENCRYPTED | payload::AUTHENTICATED,
            session_id,
            seq,
            &payload,
        );
        // Integrity pad: 0xff until the authenticated part (from the auth type byte) plus the
        // pad length and next header bytes is a multiple of four.
        let covered = p.len() - 4 + 2;
        let ipad = (4 - covered % 4) % 4;
        p.extend(std::iter::repeat_n(0xff, ipad));
        p.push(ipad as u8);
        p.push(0x07);
        let code = self.suite.hmac(&self.k1, &[&p[4..]]);
        p.extend_from_slice(&code[..self.suite.auth_code_len()]);
        p
    }

    /// The IPMI message of an encrypted, authenticated packet, integrity checked first.
    pub fn open(&self, p: &[u8]) -> Result<Vec<u8>, WireError> {
        match self.open_payload(p)? {
            (payload::IPMI, m) => Ok(m),
            _ => Err(WireError::NotIpmi),
        }
    }

    /// The payload type (without the encrypted and authenticated bits) and the clear payload
    /// of an authenticated session packet, integrity checked first.
    pub fn open_payload(&self, p: &[u8]) -> Result<(u8, Vec<u8>), WireError> {
        let n = self.suite.auth_code_len();
        if p.len() < 16 + n {
            return Err(WireError::Short);
        }
        let (covered, code) = p.split_at(p.len() - n);
        let want = self.suite.hmac(&self.k1, &[&covered[4..]]);
        if want[..n] != *code {
            return Err(WireError::Integrity);
        }
        let Packet::Plus {
            payload_type,
            payload,
            ..
        } = parse(p)?
        else {
            return Err(WireError::NotIpmi);
        };
        let kind = payload_type & 0x3f;
        if payload_type & payload::ENCRYPTED == 0 {
            return Ok((kind, payload));
        }
        if payload.len() < 32 || payload.len() % 16 != 0 {
            return Err(WireError::Padding);
        }
        let (iv, ct) = payload.split_at(16);
        let mut buf = ct.to_vec();
        let iv: [u8; 16] = iv.try_into().expect("16 bytes");
        let plain = Dec::new(&self.aes.into(), &iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| WireError::Padding)?;
        let pad = usize::from(*plain.last().ok_or(WireError::Padding)?);
        if pad >= 16 || pad + 1 > plain.len() {
            return Err(WireError::Padding);
        }
        Ok((kind, plain[..plain.len() - 1 - pad].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packets of one real session: ipmitool -C 3 against ipmi_sim, user admin/password.
    fn capture() -> Vec<(char, Vec<u8>)> {
        packets(include_str!("testdata-c3-power-status.txt"))
    }

    /// Direction ('C' to the BMC, 'S' from it) and bytes of each captured packet.
    fn packets(text: &str) -> Vec<(char, Vec<u8>)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (dir, hex) = l.split_once(' ').unwrap();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (dir.chars().next().unwrap(), bytes)
            })
            .collect()
    }

    fn plus(p: &[u8]) -> (u8, u32, u32, Vec<u8>) {
        match parse(p).unwrap() {
            Packet::Plus {
                payload_type,
                session_id,
                seq,
                payload,
            } => (payload_type, session_id, seq, payload),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_channel_auth_caps_round_trips() {
        let c = capture();
        // Get Channel Authentication Capabilities: channel E (this one), IPMI v2.0 bit, admin.
        let req = request(0x06, 0, 0x38, &[0x8e, 0x04]);
        assert_eq!(v15_packet(&req), c[0].1);
        let Packet::V15 { message } = parse(&c[1].1).unwrap() else {
            panic!()
        };
        let r = parse_response(&message).unwrap();
        assert_eq!((r.netfn, r.cmd, r.completion), (0x07, 0x38, 0x00));
        assert_eq!(r.data[0], 0x01, "channel 1");
        assert_ne!(r.data[1] & 0x80, 0, "IPMI v2.0 extended capabilities");
        let mut bad = message.clone();
        bad[7] ^= 1;
        assert_eq!(parse_response(&bad), Err(WireError::Checksum));
    }

    #[test]
    fn the_rakp_exchange_of_a_real_session() {
        let c = capture();
        // Open Session request and response: suite 3 algorithms, the two session ids.
        let (t, _, _, open) = plus(&c[2].1);
        assert_eq!(t, payload::OPEN_SESSION_REQUEST);
        assert_eq!(
            &open[8..],
            &[
                0, 0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0, 2, 0, 0, 8, 1, 0, 0, 0
            ]
        );
        let console_sid = u32::from_le_bytes(open[4..8].try_into().unwrap());
        let (t, _, _, resp) = plus(&c[3].1);
        assert_eq!(
            (t, resp[1]),
            (payload::OPEN_SESSION_RESPONSE, 0),
            "status 0"
        );
        let bmc_sid = u32::from_le_bytes(resp[8..12].try_into().unwrap());
        // RAKP 1 (ours) and 2 (the BMC's).
        let (t, _, _, r1) = plus(&c[4].1);
        assert_eq!(t, payload::RAKP1);
        let (t, _, _, r2) = plus(&c[5].1);
        assert_eq!((t, r2[1]), (payload::RAKP2, 0));
        let username = &r1[28..28 + usize::from(r1[27])];
        assert_eq!(username, b"admin");
        let rakp = Rakp {
            suite: CipherSuite::Three,
            console_sid,
            bmc_sid,
            rm: r1[8..24].try_into().unwrap(),
            rc: r2[8..24].try_into().unwrap(),
            bmc_guid: r2[24..40].try_into().unwrap(),
            role: r1[24],
            username,
            password: b"password",
        };
        assert_eq!(
            rakp.rakp2_code()[..],
            r2[40..60],
            "the BMC proves it knows the password"
        );
        let (t, _, _, r3) = plus(&c[6].1);
        assert_eq!(t, payload::RAKP3);
        assert_eq!(rakp.rakp3_code()[..], r3[8..28]);
        let (t, _, _, r4) = plus(&c[7].1);
        assert_eq!((t, r4[1]), (payload::RAKP4, 0));
        assert_eq!(
            rakp.rakp4_icv()[..],
            r4[8..20],
            "both sides derived the same SIK"
        );
        let wrong = Rakp {
            password: b"wrong",
            ..rakp.clone()
        };
        assert_ne!(wrong.rakp2_code()[..], r2[40..60]);

        // Every session packet after RAKP 4 checks and decrypts with the derived keys.
        let keys = rakp.keys();
        let mut messages = Vec::new();
        for (dir, p) in &c[8..] {
            let m = keys.open(p).unwrap();
            messages.push((*dir, m));
        }
        // Set Session Privilege Level (App 0x3b) to administrator, first.
        let (_, first) = &messages[0];
        assert_eq!((first[1] >> 2, first[5], first[6]), (0x06, 0x3b, 0x04));
        // Get Chassis Status (Chassis 0x01) answers power off (bit 0 of byte 1 clear).
        let status = messages
            .iter()
            .filter(|(d, _)| *d == 'S')
            .map(|(_, m)| parse_response(m).unwrap())
            .find(|r| r.netfn == 0x01 && r.cmd == 0x01)
            .expect("a chassis status response");
        assert_eq!(status.completion, 0);
        assert_eq!(status.data[0] & 0x01, 0, "power is off");
        // A flipped bit anywhere fails the integrity check.
        let mut bad = c[8].1.clone();
        bad[20] ^= 0x01;
        assert_eq!(keys.open(&bad), Err(WireError::Integrity));

        // Our own sealing, with the captured IV, reproduces ipmitool's packet byte for byte.
        let (_, sid, seq, payload) = plus(&c[8].1);
        let iv: [u8; 16] = payload[..16].try_into().unwrap();
        assert_eq!(keys.seal(sid, seq, first, iv), c[8].1);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn cipher_suites_by_id() {
        assert_eq!(CipherSuite::default(), CipherSuite::Three);
        for (id, suite, algorithms) in [
            (3, CipherSuite::Three, (1, 1, 1)),
            (17, CipherSuite::Seventeen, (3, 4, 1)),
        ] {
            assert_eq!(CipherSuite::try_from(id), Ok(suite));
            assert_eq!(suite.id(), id);
            assert_eq!(suite.algorithms(), algorithms);
            assert_eq!(suite.to_string(), format!("cipher suite {id}"));
        }
        assert_eq!(CipherSuite::try_from(1), Err(1));
        // What ipmitool proposes in Open Session for each suite.
        let c3 = capture();
        assert_eq!(
            plus(&c3[2].1).3[8..],
            CipherSuite::Three.open_session_payloads()
        );
        let c17 = packets(include_str!("testdata-c17-power-status.txt"));
        assert_eq!(
            plus(&c17[2].1).3[8..],
            CipherSuite::Seventeen.open_session_payloads()
        );
    }

    /// Suite 17 arithmetic on fixed inputs, against values computed independently (Python's
    /// hmac and hashlib following IPMI 2.0 13.31-13.32: SHA-256 codes, SIK, RAKP 4 ICV
    /// truncated to 16 bytes, K1 and K2 from 20-byte constants).
    #[test]
    fn suite_17_key_exchange_against_known_answers() {
        let rm: [u8; 16] = core::array::from_fn(|i| i as u8);
        let rc: [u8; 16] = core::array::from_fn(|i| 16 + i as u8);
        let bmc_guid: [u8; 16] = core::array::from_fn(|i| 0xa0 + i as u8);
        let rakp = Rakp {
            suite: CipherSuite::Seventeen,
            console_sid: 0x0a0b_0c0d,
            bmc_sid: 0x0102_0304,
            rm,
            rc,
            bmc_guid,
            role: 0x14,
            username: b"admin",
            password: b"password",
        };
        assert_eq!(
            rakp.rakp2_code(),
            hex("f2b51e1f899740ef4eb4bb19fb19f6580ef10f065e0adff2e974366045cbd3e7")
        );
        assert_eq!(
            rakp.rakp3_code(),
            hex("f692d9350f377f6cecb3256331025972cb433cebf70d55d1638cd82048bd4bdc")
        );
        assert_eq!(
            rakp.sik(),
            hex("e5935f7199865ad961063477b0662684e2ce9b1da8f2b8d41c5ce127d37e9bcf")
        );
        assert_eq!(rakp.rakp4_icv(), hex("75daeba0c931ed6ba5389c271e9421ba"));
        let keys = rakp.keys();
        assert_eq!(
            keys.k1,
            hex("dc4fe73d075306f6897115dd63257385e845c10404fa1d73991790c6a101bec2")
        );
        assert_eq!(keys.aes[..], hex("2a4f969ea6dfa83066f36674fdc2fea2"));
        // The same inputs under suite 3 give other (20-byte) codes and a 12-byte ICV.
        let three = Rakp {
            suite: CipherSuite::Three,
            ..rakp.clone()
        };
        assert_eq!(three.rakp2_code().len(), 20);
        assert_eq!(three.rakp4_icv().len(), 12);
        assert_ne!(three.sik()[..], rakp.sik()[..20]);

        // Sealed packets end in a 16-byte AuthCode that covers everything from the auth type.
        let m = request(0x00, 5, 0x01, &[]);
        let sealed = keys.seal(0x0102_0304, 9, &m, [7; 16]);
        let covered = sealed.len() - 16;
        assert_eq!((covered - 4) % 4, 0, "integrity pad to four bytes");
        assert_eq!(sealed[covered - 1], 0x07, "next header");
        assert_eq!(keys.open(&sealed), Ok(m));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 0x80;
        assert_eq!(keys.open(&bad), Err(WireError::Integrity));
        assert_eq!(three.keys().open(&sealed), Err(WireError::Integrity));
    }

    #[test]
    fn the_rakp_exchange_of_a_suite_17_session_with_ipmitool() {
        let c = packets(include_str!("testdata-c17-power-status.txt"));
        let (_, _, _, open) = plus(&c[2].1);
        let console_sid = u32::from_le_bytes(open[4..8].try_into().unwrap());
        let (_, _, _, resp) = plus(&c[3].1);
        assert_eq!(resp[1], 0, "status 0");
        let bmc_sid = u32::from_le_bytes(resp[8..12].try_into().unwrap());
        let (t, _, _, r1) = plus(&c[4].1);
        assert_eq!(t, payload::RAKP1);
        let (t, _, _, r2) = plus(&c[5].1);
        assert_eq!((t, r2.len()), (payload::RAKP2, 40 + 32), "a 32-byte code");
        let username = &r1[28..28 + usize::from(r1[27])];
        let rakp = Rakp {
            suite: CipherSuite::Seventeen,
            console_sid,
            bmc_sid,
            rm: r1[8..24].try_into().unwrap(),
            rc: r2[8..24].try_into().unwrap(),
            bmc_guid: r2[24..40].try_into().unwrap(),
            role: r1[24],
            username,
            password: b"password",
        };
        assert_eq!(rakp.rakp2_code()[..], r2[40..]);
        // ipmitool's own proof of the password, computed by its HMAC-SHA256.
        let (t, _, _, r3) = plus(&c[6].1);
        assert_eq!(t, payload::RAKP3);
        assert_eq!(rakp.rakp3_code()[..], r3[8..]);
        let (t, _, _, r4) = plus(&c[7].1);
        assert_eq!((t, r4[1]), (payload::RAKP4, 0));
        assert_eq!(rakp.rakp4_icv()[..], r4[8..], "16 bytes of HMAC-SHA256");

        // ipmitool's sealed requests check (HMAC-SHA256-128 under K1) and decrypt (K2).
        let keys = rakp.keys();
        let mut requests = Vec::new();
        for (dir, p) in &c[8..] {
            let m = keys.open(p).unwrap();
            if *dir == 'C' {
                requests.push((p.clone(), m));
            }
        }
        let (first_packet, first) = &requests[0];
        assert_eq!((first[1] >> 2, first[5], first[6]), (0x06, 0x3b, 0x04));
        assert!(
            requests
                .iter()
                .any(|(_, m)| (m[1] >> 2, m[5]) == (0x00, 0x01)),
            "a Get Chassis Status request"
        );
        // Our sealing, with ipmitool's IV, reproduces its packet byte for byte.
        let (_, sid, seq, payload) = plus(first_packet);
        let iv: [u8; 16] = payload[..16].try_into().unwrap();
        assert_eq!(keys.seal(sid, seq, first, iv), *first_packet);
        let wrong = Rakp {
            password: b"wrong",
            ..rakp.clone()
        };
        assert_ne!(wrong.rakp2_code()[..], r2[40..]);
        assert_eq!(wrong.keys().open(first_packet), Err(WireError::Integrity));
    }
}
