//! An IPMI 2.0 BMC on UDP, for the IPMI driver's tests and for ipmitool: RMCP presence ping,
//! IPMI 1.5 session-less Get Channel Authentication Capabilities, RMCP+ Open Session and
//! RAKP 1-4 with cipher suites 3 (SHA-1) and 17 (SHA-256), one user, then sealed commands with
//! privilege levels and a sequence number window: Set Session Privilege Level, Get Device ID,
//! Get System GUID, Get Chassis Status, Chassis Control, Set/Get System Boot Options
//! (parameters 0, 3, 4 and 5), Get FRU Inventory Area Info, Read FRU Data and Close Session;
//! and Serial over LAN ([`sol`]: payload activation, the SOL configuration parameters, SOL
//! packets), its serial port a VM's or a stream the test holds ([`Serial`]).
//!
//! Boot flags behave as the specification has them (28.12, 28.13): the valid bit is cleared
//! by a boot that uses a one-time override, and 60 s after the flags were set when no Chassis
//! Control command came in the meantime, unless parameter 3 bit 3 says not to. The emulator's
//! clock can be moved on ([`IpmiEmulator::advance`]) so that a test sees the 60 s pass at once.
//!
//! Written from the specification (IPMI v2.0 rev 1.1 with errata, sections 13 and 22) and
//! checked against ipmitool, not against plinth's own codec, so that a mistake shared by both
//! cannot hide. Knobs: datagram loss (random with a fixed seed, or an even deterministic
//! spread), a power hook that reports every accepted chassis control command (so that a test
//! can drive a VM with it), and counters.

mod health;
pub mod users;

pub use health::ChassisFaults;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha1::Sha1;
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

pub mod sol;
pub use sol::{Serial, SolStats};

/// The emulated BMC: its one user, its cipher suites, and how it starts.
#[derive(Debug, Clone)]
pub struct IpmiEmulatorConfig {
    pub username: String,
    /// At most 20 bytes (IPMI 2.0 passwords).
    pub password: String,
    /// The cipher suites offered, by ID; of these only 3 and 17 are known. Open Session with
    /// any other suite is refused with RMCP+ status 0x11 (no cipher suite match).
    pub cipher_suites: Vec<u8>,
    /// The system GUID (Get System GUID) and the BMC GUID of RAKP.
    pub guid: uuid::Uuid,
    /// The power state at start.
    pub power_on: bool,
    /// Every accepted Chassis Control command is sent here, after the emulator has applied it
    /// (or not, see `apply_power`). A test that maps power to a VM takes the commands from here.
    pub power_hook: Option<mpsc::UnboundedSender<ChassisControl>>,
    /// Whether Chassis Control changes the emulator's power state itself. Off when something
    /// else (a VM behind `power_hook`) owns the state and reports it with
    /// [`IpmiEmulator::set_power`].
    pub apply_power: bool,
    /// Seed of [`Loss::Percent`]: the same traffic loses the same datagrams on every run.
    pub loss_seed: u64,
    /// FRU device 0's contents (see [`Fru`]); `None`: the BMC has no FRU data.
    pub fru: Option<Vec<u8>>,
}

/// How long boot flags stay valid without a Chassis Control command, unless parameter 3 bit 3
/// is set.
pub const VALID_BIT_TIMEOUT: Duration = Duration::from_secs(60);

/// FRU inventory data that names a machine, written as the FRU specification lays it out:
/// common header, chassis, board and product info areas of 8-bit ASCII fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fru {
    pub manufacturer: String,
    pub product: String,
    pub serial: String,
}

impl Fru {
    pub fn new(manufacturer: &str, product: &str, serial: &str) -> Fru {
        Fru {
            manufacturer: manufacturer.into(),
            product: product.into(),
            serial: serial.into(),
        }
    }

    /// The chassis area carries the serial with a `CH-` prefix and the board area with `BRD-`,
    /// so that a reader that takes the wrong area's serial is caught.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn area(fixed: &[u8], fields: &[&str]) -> Vec<u8> {
            let mut a = vec![0x01, 0x00];
            a.extend_from_slice(fixed);
            for f in fields {
                let f = &f.as_bytes()[..f.len().min(63)];
                a.push(0xc0 | f.len() as u8);
                a.extend_from_slice(f);
            }
            a.push(0xc1);
            while (a.len() + 1) % 8 != 0 {
                a.push(0);
            }
            a[1] = ((a.len() + 1) / 8) as u8;
            a.push(checksum(&a));
            a
        }
        let chassis_serial = format!("CH-{}", self.serial);
        let board_serial = format!("BRD-{}", self.serial);
        let board_product = format!("{} board", self.product);
        // Chassis type 0x17: rack mount chassis.
        let chassis = area(&[0x17], &["CH-PART", &chassis_serial]);
        // Language 0 (English), manufacturing date unspecified.
        let board = area(
            &[0x00, 0x00, 0x00, 0x00],
            &[
                &self.manufacturer,
                &board_product,
                &board_serial,
                "BRD-PART",
                "",
            ],
        );
        let product = area(
            &[0x00],
            &[
                &self.manufacturer,
                &self.product,
                "PART-1",
                "1.0",
                &self.serial,
                "",
                "",
            ],
        );
        let mut header = vec![0x01, 0x00, 0x01];
        header.push(1 + (chassis.len() / 8) as u8);
        header.push(1 + ((chassis.len() + board.len()) / 8) as u8);
        header.extend_from_slice(&[0x00, 0x00]);
        header.push(checksum(&header));
        [header, chassis, board, product].concat()
    }
}

impl IpmiEmulatorConfig {
    /// A BMC with one administrator, suites 3 and 17, a random GUID, powered off.
    pub fn new(username: &str, password: &str) -> IpmiEmulatorConfig {
        IpmiEmulatorConfig {
            username: username.into(),
            password: password.into(),
            cipher_suites: vec![3, 17],
            guid: uuid::Uuid::new_v4(),
            power_on: false,
            power_hook: None,
            apply_power: true,
            loss_seed: 0x1f_2e_3d_4c,
            fru: None,
        }
    }
}

/// A Chassis Control command (IPMI 28.3), as reported to the power hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChassisControl {
    PowerDown,
    PowerUp,
    PowerCycle,
    HardReset,
    DiagnosticInterrupt,
    /// Soft shutdown through ACPI: the emulator behaves as an OS that obeys at once.
    SoftShutdown,
}

/// Which datagrams the emulator loses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Loss {
    #[default]
    None,
    /// Each datagram with this probability, in percent (seeded: see
    /// [`IpmiEmulatorConfig::loss_seed`]). 100 loses everything.
    Percent(u8),
    /// `drop` of every `of` datagrams, spread evenly: `{ drop: 3, of: 10 }` loses the 4th, 7th
    /// and 10th of every ten; `{ drop: 1, of: n }` every nth.
    Spread { drop: u32, of: u32 },
}

/// The boot flags (System Boot Options parameter 5, five bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootFlags {
    pub raw: [u8; 5],
}

/// The boot device selector of the boot flags (byte 2, bits 5:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootSelector {
    NoOverride,
    Pxe,
    Disk,
    DiskSafeMode,
    Diagnostic,
    Cdrom,
    BiosSetup,
    RemoteFloppy,
    RemoteCdrom,
    RemoteMedia,
    RemoteDisk,
    Floppy,
    Reserved(u8),
}

impl BootFlags {
    /// Bit 7 of byte 1: the flags are valid (an override is set).
    pub fn valid(&self) -> bool {
        self.raw[0] & 0x80 != 0
    }
    /// Bit 6: for all future boots, rather than the next one.
    pub fn persistent(&self) -> bool {
        self.raw[0] & 0x40 != 0
    }
    /// Bit 5: EFI boot, rather than PC compatible (legacy).
    pub fn efi(&self) -> bool {
        self.raw[0] & 0x20 != 0
    }
    pub fn selector(&self) -> BootSelector {
        match (self.raw[1] >> 2) & 0x0f {
            0x0 => BootSelector::NoOverride,
            0x1 => BootSelector::Pxe,
            0x2 => BootSelector::Disk,
            0x3 => BootSelector::DiskSafeMode,
            0x4 => BootSelector::Diagnostic,
            0x5 => BootSelector::Cdrom,
            0x6 => BootSelector::BiosSetup,
            0x7 => BootSelector::RemoteFloppy,
            0x8 => BootSelector::RemoteCdrom,
            0x9 => BootSelector::RemoteMedia,
            0xb => BootSelector::RemoteDisk,
            0xf => BootSelector::Floppy,
            other => BootSelector::Reserved(other),
        }
    }
}

/// What the emulator counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpmiStats {
    /// Datagrams that arrived, lost ones included.
    pub received: u64,
    /// Of those, lost to [`Loss`].
    pub dropped: u64,
    /// Datagrams sent, and replies lost to [`Loss`] when it applies to replies.
    pub sent: u64,
    pub replies_dropped: u64,
    /// Sessions that completed RAKP 4, and sessions closed with Close Session.
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    /// Session set-ups refused for the user's name or proof (RAKP 2 or 4 with an error status,
    /// or a RAKP 3 carrying the client's own error status).
    pub auth_failures: u64,
    /// Session packets thrown away: unknown session, failed integrity check, sequence number
    /// outside the window or seen before.
    pub rejected: u64,
    /// IPMI commands answered inside sessions.
    pub commands: u64,
}

/// One IPMI command answered inside a session, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCommand {
    pub netfn: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
    pub completion: u8,
}

/// A running emulator on an ephemeral port of 127.0.0.1; stops when dropped.
pub struct IpmiEmulator {
    addr: SocketAddr,
    state: Arc<Mutex<Bmc>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IpmiEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IpmiEmulator {
    pub async fn start(cfg: IpmiEmulatorConfig) -> anyhow::Result<IpmiEmulator> {
        IpmiEmulator::launch(cfg, None).await
    }

    /// A BMC whose Serial over LAN carries `serial` (see [`sol`]).
    pub async fn start_with_serial(
        cfg: IpmiEmulatorConfig,
        serial: Serial,
    ) -> anyhow::Result<IpmiEmulator> {
        IpmiEmulator::launch(cfg, Some(serial)).await
    }

    async fn launch(
        cfg: IpmiEmulatorConfig,
        serial: Option<Serial>,
    ) -> anyhow::Result<IpmiEmulator> {
        anyhow::ensure!(
            cfg.password.len() <= 20,
            "IPMI 2.0 passwords are 20 bytes at most"
        );
        anyhow::ensure!(
            cfg.username.len() <= 16,
            "IPMI user names are 16 bytes at most"
        );
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let mut bmc = Bmc::new(cfg);
        let from_serial = bmc.sol.attach(addr.port(), serial);
        let state = Arc::new(Mutex::new(bmc));
        let task = tokio::spawn(sol::serve(sock, state.clone(), from_serial));
        Ok(IpmiEmulator { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether the chassis is powered on.
    pub fn power(&self) -> bool {
        lock(&self.state).power
    }

    /// Sets the power state (as the machine behind the BMC reports it).
    pub fn set_power(&self, on: bool) {
        lock(&self.state).power = on;
    }

    pub fn boot_flags(&self) -> BootFlags {
        BootFlags {
            raw: lock(&self.state).boot.flags,
        }
    }

    /// Sets the boot flags as a BMC's own console would: valid ones start the 60-s countdown.
    pub fn set_boot_flags(&self, raw: [u8; 5]) {
        let mut b = lock(&self.state);
        let now = b.now();
        b.boot.flags = raw;
        b.boot.armed_at = (raw[0] & 0x80 != 0).then_some(now);
    }

    /// Parameter 3 ("BMC boot flag valid bit clearing") as it stands.
    pub fn valid_bit_clearing(&self) -> u8 {
        lock(&self.state).boot.valid_bit_clearing
    }

    /// Sets parameter 3, as another tool would have left it.
    pub fn set_valid_bit_clearing(&self, value: u8) {
        lock(&self.state).boot.valid_bit_clearing = value & 0x1f;
    }

    /// Moves the BMC's clock on by `d` (the 60-s valid-bit timer sees it pass).
    pub fn advance(&self, d: Duration) {
        let mut b = lock(&self.state);
        b.skew += d;
        b.expire_boot_flags();
    }

    /// Refuse parameter 3 (Get and Set answer 0x80, "parameter not supported"), as BMCs that
    /// lack it do.
    pub fn set_refuse_valid_bit_clearing(&self, yes: bool) {
        lock(&self.state).refuse_param3 = yes;
    }

    /// The boot flags each boot (power up, power cycle, hard reset) found, oldest first. A boot
    /// consumes a valid one-time override: the valid bit is cleared after it.
    pub fn boots(&self) -> Vec<BootFlags> {
        lock(&self.state).boots.clone()
    }

    pub fn set_loss(&self, loss: Loss) {
        lock(&self.state).loss = loss;
    }

    /// Shorthand for `set_loss(Loss::Percent(percent))`.
    pub fn set_drop_percent(&self, percent: u8) {
        self.set_loss(Loss::Percent(percent));
    }

    /// Whether [`Loss`] applies to the emulator's replies too (by default only datagrams that
    /// arrive are lost). Lost replies make clients retransmit requests the BMC already acted on.
    pub fn set_loss_on_replies(&self, on: bool) {
        lock(&self.state).loss_on_replies = on;
    }

    pub fn stats(&self) -> IpmiStats {
        lock(&self.state).stats
    }

    pub fn commands(&self) -> Vec<LoggedCommand> {
        lock(&self.state).log.clone()
    }

    /// Sessions that completed RAKP 4 and are not closed.
    pub fn active_sessions(&self) -> usize {
        lock(&self.state)
            .sessions
            .values()
            .filter(|s| matches!(s.stage, Stage::Active { .. }))
            .count()
    }
}

fn lock(m: &Mutex<Bmc>) -> MutexGuard<'_, Bmc> {
    // A panic while holding the lock leaves the state as consistent as between two datagrams.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Cryptography of the two suites.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    /// RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
    Three,
    /// RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Seventeen,
}

fn hmac_with<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

impl Suite {
    fn from_algorithms(auth: u8, integrity: u8, confidentiality: u8) -> Option<Suite> {
        match (auth, integrity, confidentiality) {
            (0x01, 0x01, 0x01) => Some(Suite::Three),
            (0x03, 0x04, 0x01) => Some(Suite::Seventeen),
            _ => None,
        }
    }
    fn id(self) -> u8 {
        match self {
            Suite::Three => 3,
            Suite::Seventeen => 17,
        }
    }
    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Suite::Three => hmac_with::<Hmac<Sha1>>(key, parts),
            Suite::Seventeen => hmac_with::<Hmac<Sha256>>(key, parts),
        }
    }
    /// Bytes of the RAKP 4 ICV and of the session packets' AuthCode.
    fn truncated(self) -> usize {
        match self {
            Suite::Three => 12,
            Suite::Seventeen => 16,
        }
    }
}

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

#[derive(Clone)]
struct Keys {
    suite: Suite,
    k1: Vec<u8>,
    k2: [u8; 16],
}

// ---------------------------------------------------------------------------------------
// IPMI messages and RMCP framing.

const BMC_ADDR: u8 = 0x20;
const RMCP_IPMI: [u8; 4] = [0x06, 0x00, 0xff, 0x07];

const PRIV_USER: u8 = 2;
const PRIV_OPERATOR: u8 = 3;
const PRIV_ADMIN: u8 = 4;

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)).wrapping_neg()
}

/// An IPMI request as it arrives over LAN.
struct Request {
    rq_addr: u8,
    netfn: u8,
    rs_lun: u8,
    rq_seq: u8,
    rq_lun: u8,
    cmd: u8,
    data: Vec<u8>,
}

fn parse_request(m: &[u8]) -> Option<Request> {
    if m.len() < 7 || checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return None;
    }
    Some(Request {
        netfn: m[1] >> 2,
        rs_lun: m[1] & 0x03,
        rq_addr: m[3],
        rq_seq: m[4] >> 2,
        rq_lun: m[4] & 0x03,
        cmd: m[5],
        data: m[6..m.len() - 1].to_vec(),
    })
}

fn response(rq: &Request, completion: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![rq.rq_addr, ((rq.netfn | 1) << 2) | rq.rq_lun];
    m.push(checksum(&m));
    let body = m.len();
    m.extend_from_slice(&[BMC_ADDR, (rq.rq_seq << 2) | rq.rs_lun, rq.cmd, completion]);
    m.extend_from_slice(data);
    m.push(checksum(&m[body..]));
    m
}

fn rmcp_plus(payload_type: u8, sid: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = RMCP_IPMI.to_vec();
    p.push(0x06);
    p.push(payload_type);
    p.extend_from_slice(&sid.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn array16(b: &[u8], at: usize) -> Option<[u8; 16]> {
    b.get(at..at + 16)?.try_into().ok()
}

// ---------------------------------------------------------------------------------------
// Sessions.

/// Inbound session sequence numbers: a packet is taken when its number is at most 32 ahead of
/// the highest taken so far, or up to 15 behind it and not taken before (a window like the
/// specification's, 6.12.13); zero never.
#[derive(Debug, Clone, Copy, Default)]
struct SeqWindow {
    highest: u32,
    /// Bit i: `highest - i` was taken.
    seen: u32,
}

impl SeqWindow {
    fn accept(&mut self, seq: u32) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let ahead = seq - self.highest;
            if ahead > 32 {
                return false;
            }
            self.seen = if ahead >= 32 { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.highest = seq;
            true
        } else {
            let behind = self.highest - seq;
            if behind >= 16 || self.seen & (1 << behind) != 0 {
                return false;
            }
            self.seen |= 1 << behind;
            true
        }
    }
}

#[derive(Clone)]
enum Stage {
    /// Open Session answered; waiting for RAKP 1.
    Opened,
    /// RAKP 2 sent.
    Rakp2 {
        rm: [u8; 16],
        rc: [u8; 16],
        role: u8,
    },
    Active {
        keys: Keys,
        rm: [u8; 16],
        rc: [u8; 16],
        role: u8,
        privilege: u8,
        inbound: SeqWindow,
        outbound: u32,
    },
}

struct Session {
    /// Order of creation, to evict the oldest unfinished set-up when the table is full.
    born: u64,
    console_sid: u32,
    suite: Suite,
    /// Requested in Open Session (0: the highest the user may have).
    max_privilege: u8,
    stage: Stage,
}

/// Sessions at once. When the table is full, the oldest set-up that never finished (a client
/// that found the password wrong in RAKP 2 just leaves) makes room; active sessions never do.
const MAX_SESSIONS: usize = 64;

/// RMCP+ status codes (13.24).
mod status {
    pub const INSUFFICIENT_RESOURCES: u8 = 0x01;
    pub const INVALID_SESSION_ID: u8 = 0x02;
    pub const INVALID_ROLE: u8 = 0x09;
    pub const UNAUTHORIZED_ROLE: u8 = 0x0a;
    pub const INVALID_NAME_LENGTH: u8 = 0x0c;
    pub const UNAUTHORIZED_NAME: u8 = 0x0d;
    pub const INVALID_INTEGRITY_CHECK_VALUE: u8 = 0x0f;
    pub const NO_CIPHER_SUITE_MATCH: u8 = 0x11;
    pub const ILLEGAL_PARAMETER: u8 = 0x12;
}

/// Completion codes.
mod cc {
    pub const OK: u8 = 0x00;
    pub const PARAMETER_NOT_SUPPORTED: u8 = 0x80;
    /// Set System Boot Options: "set in progress" while already in progress.
    pub const SET_IN_PROGRESS: u8 = 0x81;
    /// Set Session Privilege Level: above the session's (RAKP 1) or the user's limit.
    pub const ABOVE_PRIVILEGE_LIMIT: u8 = 0x81;
    pub const INVALID_SESSION: u8 = 0x87;
    pub const INVALID_COMMAND: u8 = 0xc1;
    pub const LENGTH: u8 = 0xc7;
    pub const PARAMETER_OUT_OF_RANGE: u8 = 0xc9;
    pub const CANNOT_RETURN: u8 = 0xca;
    pub const NOT_PRESENT: u8 = 0xcb;
    pub const INVALID_DATA: u8 = 0xcc;
    pub const PRIVILEGE: u8 = 0xd4;
    pub const NOT_IN_THIS_STATE: u8 = 0xd5;
}

#[derive(Debug, Default)]
struct BootOptions {
    /// Parameter 0: 0 set complete, 1 set in progress.
    in_progress: u8,
    /// Parameter 3: BMC boot flag valid bit clearing.
    valid_bit_clearing: u8,
    /// Parameter 4: boot info acknowledge data.
    acknowledge: u8,
    /// Parameter 5.
    flags: [u8; 5],
    /// When the valid flags were set, or the last Chassis Control command since (the 60-s
    /// countdown's start), on the emulator's clock.
    armed_at: Option<Instant>,
}

struct Bmc {
    username: Vec<u8>,
    password: Vec<u8>,
    suites: Vec<u8>,
    guid: uuid::Uuid,
    power_hook: Option<mpsc::UnboundedSender<ChassisControl>>,
    apply_power: bool,
    power: bool,
    boot: BootOptions,
    boots: Vec<BootFlags>,
    /// How far [`IpmiEmulator::advance`] moved the clock.
    skew: Duration,
    refuse_param3: bool,
    fru: Option<Vec<u8>>,
    sessions: HashMap<u32, Session>,
    born: u64,
    loss: Loss,
    loss_on_replies: bool,
    loss_counter: u64,
    loss_rng: StdRng,
    stats: IpmiStats,
    log: Vec<LoggedCommand>,
    sol: sol::Sol,
    /// Chassis faults and the SEL (issue 20).
    sel: health::SelState,
    /// The user table's commands (issue 21).
    users: users::Users,
}

impl Bmc {
    fn new(cfg: IpmiEmulatorConfig) -> Bmc {
        Bmc {
            username: cfg.username.into_bytes(),
            password: cfg.password.into_bytes(),
            suites: cfg.cipher_suites,
            guid: cfg.guid,
            power_hook: cfg.power_hook,
            apply_power: cfg.apply_power,
            power: cfg.power_on,
            boot: BootOptions::default(),
            boots: Vec::new(),
            skew: Duration::ZERO,
            refuse_param3: false,
            fru: cfg.fru,
            sessions: HashMap::new(),
            born: 0,
            loss: Loss::None,
            loss_on_replies: false,
            loss_counter: 0,
            loss_rng: StdRng::seed_from_u64(cfg.loss_seed),
            stats: IpmiStats::default(),
            log: Vec::new(),
            sol: sol::Sol::default(),
            sel: health::SelState::default(),
            users: users::Users::default(),
        }
    }

    fn now(&self) -> Instant {
        Instant::now() + self.skew
    }

    /// The 60-s timer: valid flags with no Chassis Control command for [`VALID_BIT_TIMEOUT`]
    /// lose their valid bit, unless parameter 3 bit 3 keeps it.
    fn expire_boot_flags(&mut self) {
        if self.boot.valid_bit_clearing & 0x08 != 0 {
            return;
        }
        let now = self.now();
        if self
            .boot
            .armed_at
            .is_some_and(|t| now.duration_since(t) >= VALID_BIT_TIMEOUT)
        {
            self.boot.flags[0] &= !0x80;
            self.boot.armed_at = None;
        }
    }

    /// Whether the next datagram (in or, when configured, out) is lost.
    fn lose(&mut self) -> bool {
        self.loss_counter += 1;
        let n = self.loss_counter;
        match self.loss {
            Loss::None => false,
            Loss::Percent(p) => self.loss_rng.gen_range(0..100u8) < p,
            Loss::Spread { drop, of } => {
                let (d, o) = (u64::from(drop), u64::from(of.max(1)));
                n * d / o != (n - 1) * d / o
            }
        }
    }

    /// One datagram in, at most one out.
    fn datagram(&mut self, p: &[u8]) -> Option<Vec<u8>> {
        self.stats.received += 1;
        if self.lose() {
            self.stats.dropped += 1;
            return None;
        }
        let reply = self.handle(p)?;
        if self.loss_on_replies && self.lose() {
            self.stats.replies_dropped += 1;
            return None;
        }
        self.stats.sent += 1;
        Some(reply)
    }

    fn handle(&mut self, p: &[u8]) -> Option<Vec<u8>> {
        if p.len() < 5 || p[0] != 0x06 {
            return None;
        }
        match p[3] & 0x1f {
            0x06 => asf_pong(p),
            0x07 => match p[4] {
                0x00 => self.v15(p),
                0x06 => self.rmcp_plus(p),
                _ => None, // IPMI 1.5 sessions (MD5, straight password) are not offered
            },
            _ => None,
        }
    }

    /// IPMI 1.5 session-less: Get Channel Authentication Capabilities only.
    fn v15(&mut self, p: &[u8]) -> Option<Vec<u8>> {
        if p.len() < 14 || u32_at(p, 9)? != 0 {
            return None;
        }
        let len = usize::from(p[13]);
        let rq = parse_request(p.get(14..14 + len)?)?;
        let m = if (rq.netfn, rq.cmd) == (0x06, 0x38) {
            let (completion, data) = auth_caps(&rq.data);
            response(&rq, completion, &data)
        } else {
            response(&rq, cc::PRIVILEGE, &[])
        };
        let mut out = RMCP_IPMI.to_vec();
        out.push(0x00);
        out.extend_from_slice(&[0; 8]);
        out.push(m.len() as u8);
        out.extend_from_slice(&m);
        Some(out)
    }

    fn rmcp_plus(&mut self, p: &[u8]) -> Option<Vec<u8>> {
        if p.len() < 16 {
            return None;
        }
        let payload_type = p[5];
        let sid = u32_at(p, 6)?;
        let len = usize::from(u16::from_le_bytes([p[14], p[15]]));
        let payload = p.get(16..16 + len)?;
        match payload_type & 0x3f {
            0x10 if sid == 0 => Some(self.open_session(payload)),
            0x12 if sid == 0 => self.rakp1(payload),
            0x14 if sid == 0 => self.rakp3(payload),
            0x01 => self.sol_packet(p, payload_type, sid),
            0x00 => {
                let r = self.session_packet(p, payload_type, sid);
                if r.is_none() {
                    self.stats.rejected += 1;
                }
                r
            }
            _ => None,
        }
    }

    fn open_session(&mut self, r: &[u8]) -> Vec<u8> {
        let tag = r.first().copied().unwrap_or(0);
        let console_sid = u32_at(r, 4).unwrap_or(0);
        let refuse = |code: u8| {
            let mut out = vec![tag, code, 0, 0];
            out.extend_from_slice(&console_sid.to_le_bytes());
            rmcp_plus(0x11, 0, 0, &out)
        };
        if r.len() < 32 || console_sid == 0 {
            return refuse(status::ILLEGAL_PARAMETER);
        }
        // Three algorithm payloads: type 0/1/2, length 8, the algorithm in the fifth byte.
        if r[8] != 0x00 || r[16] != 0x01 || r[24] != 0x02 {
            return refuse(status::ILLEGAL_PARAMETER);
        }
        let max_privilege = r[1] & 0x0f;
        if max_privilege > 5 {
            return refuse(status::INVALID_ROLE);
        }
        let Some(suite) = Suite::from_algorithms(r[12] & 0x3f, r[20] & 0x3f, r[28] & 0x3f)
            .filter(|s| self.suites.contains(&s.id()))
        else {
            return refuse(status::NO_CIPHER_SUITE_MATCH);
        };
        if self.sessions.len() >= MAX_SESSIONS {
            let stale = self
                .sessions
                .iter()
                .filter(|(_, s)| !matches!(s.stage, Stage::Active { .. }))
                .min_by_key(|(_, s)| s.born)
                .map(|(id, _)| *id);
            match stale {
                Some(id) => {
                    self.sessions.remove(&id);
                }
                None => return refuse(status::INSUFFICIENT_RESOURCES),
            }
        }
        self.born += 1;
        let bmc_sid = loop {
            let id = rand::thread_rng().next_u32();
            if id != 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.sessions.insert(
            bmc_sid,
            Session {
                born: self.born,
                console_sid,
                suite,
                max_privilege,
                stage: Stage::Opened,
            },
        );
        let mut out = vec![tag, 0, PRIV_ADMIN, 0];
        out.extend_from_slice(&console_sid.to_le_bytes());
        out.extend_from_slice(&bmc_sid.to_le_bytes());
        out.extend_from_slice(&r[8..32]);
        rmcp_plus(0x11, 0, 0, &out)
    }

    /// The role byte (requested privilege, name-only lookup bit) and user name are the same in
    /// every code of the exchange.
    fn role_and_name(&self, role: u8) -> Vec<u8> {
        let mut v = vec![role, self.username.len() as u8];
        v.extend_from_slice(&self.username);
        v
    }

    fn rakp1(&mut self, r: &[u8]) -> Option<Vec<u8>> {
        let tag = *r.first()?;
        let bmc_sid = u32_at(r, 4)?;
        let Some(session) = self.sessions.get(&bmc_sid) else {
            // The console's session id is unknown here: answer with zero.
            return Some(rmcp_plus(
                0x13,
                0,
                0,
                &[tag, status::INVALID_SESSION_ID, 0, 0, 0, 0, 0, 0],
            ));
        };
        let (console_sid, suite, max_privilege) =
            (session.console_sid, session.suite, session.max_privilege);
        let refuse = |code: u8| {
            let mut out = vec![tag, code, 0, 0];
            out.extend_from_slice(&console_sid.to_le_bytes());
            rmcp_plus(0x13, 0, 0, &out)
        };
        let (Some(rm), Some(&role), Some(&name_len)) = (array16(r, 8), r.get(24), r.get(27)) else {
            return Some(refuse(status::ILLEGAL_PARAMETER));
        };
        let name = r.get(28..28 + usize::from(name_len));
        let privilege = role & 0x0f;
        let refusal = if name_len > 16 || name.is_none() {
            Some(status::INVALID_NAME_LENGTH)
        } else if role & 0xe0 != 0 || privilege == 0 || privilege > 5 {
            Some(status::INVALID_ROLE)
        } else if name != Some(&self.username[..]) || self.username.is_empty() {
            Some(status::UNAUTHORIZED_NAME)
        } else if privilege > PRIV_ADMIN || (max_privilege != 0 && privilege > max_privilege) {
            Some(status::UNAUTHORIZED_ROLE)
        } else {
            None
        };
        if let Some(code) = refusal {
            if code == status::UNAUTHORIZED_NAME {
                self.stats.auth_failures += 1;
            }
            self.sessions.remove(&bmc_sid);
            return Some(refuse(code));
        }
        // A retransmitted RAKP 1 (our RAKP 2 was lost) gets the same random number again.
        let rc = match &self.sessions[&bmc_sid].stage {
            Stage::Rakp2 { rm: old, rc, .. } if *old == rm => *rc,
            Stage::Opened | Stage::Rakp2 { .. } => {
                let mut rc = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut rc);
                rc
            }
            Stage::Active { .. } => return Some(refuse(status::INVALID_SESSION_ID)),
        };
        if let Some(s) = self.sessions.get_mut(&bmc_sid) {
            s.stage = Stage::Rakp2 { rm, rc, role };
        }
        let guid = *self.guid.as_bytes();
        let code = suite.hmac(
            &self.password,
            &[
                &console_sid.to_le_bytes(),
                &bmc_sid.to_le_bytes(),
                &rm,
                &rc,
                &guid,
                &self.role_and_name(role),
            ],
        );
        let mut out = vec![tag, 0, 0, 0];
        out.extend_from_slice(&console_sid.to_le_bytes());
        out.extend_from_slice(&rc);
        out.extend_from_slice(&guid);
        out.extend_from_slice(&code);
        Some(rmcp_plus(0x13, 0, 0, &out))
    }

    fn rakp3(&mut self, r: &[u8]) -> Option<Vec<u8>> {
        let tag = *r.first()?;
        let client_status = *r.get(1)?;
        let bmc_sid = u32_at(r, 4)?;
        let session = self.sessions.get(&bmc_sid)?;
        let (console_sid, suite) = (session.console_sid, session.suite);
        let refuse = |code: u8| {
            let mut out = vec![tag, code, 0, 0];
            out.extend_from_slice(&console_sid.to_le_bytes());
            rmcp_plus(0x15, 0, 0, &out)
        };
        let (rm, rc, role) = match &session.stage {
            Stage::Rakp2 { rm, rc, role } | Stage::Active { rm, rc, role, .. } => (*rm, *rc, *role),
            Stage::Opened => return Some(refuse(status::INVALID_SESSION_ID)),
        };
        if client_status != 0 {
            // The console gives up (it found our RAKP 2 wrong: its password differs). No answer
            // is expected; the session is gone.
            self.stats.auth_failures += 1;
            self.sessions.remove(&bmc_sid);
            return None;
        }
        let rn = self.role_and_name(role);
        let want = suite.hmac(&self.password, &[&rc, &console_sid.to_le_bytes(), &rn]);
        if r.get(8..) != Some(&want[..]) {
            self.stats.auth_failures += 1;
            self.sessions.remove(&bmc_sid);
            return Some(refuse(status::INVALID_INTEGRITY_CHECK_VALUE));
        }
        let sik = suite.hmac(&self.password, &[&rm, &rc, &rn]);
        let keys = Keys {
            suite,
            k1: suite.hmac(&sik, &[&[0x01; 20]]),
            k2: suite.hmac(&sik, &[&[0x02; 20]])[..16]
                .try_into()
                .expect("16 bytes"),
        };
        let guid = *self.guid.as_bytes();
        let icv = suite.hmac(&sik, &[&rm, &bmc_sid.to_le_bytes(), &guid]);
        let session = self.sessions.get_mut(&bmc_sid)?;
        // A retransmitted RAKP 3 (our RAKP 4 was lost) gets RAKP 4 again, session untouched.
        if !matches!(session.stage, Stage::Active { .. }) {
            session.stage = Stage::Active {
                keys,
                rm,
                rc,
                role,
                privilege: PRIV_USER,
                inbound: SeqWindow::default(),
                outbound: 0,
            };
            self.stats.sessions_opened += 1;
        }
        let mut out = vec![tag, 0, 0, 0];
        out.extend_from_slice(&console_sid.to_le_bytes());
        out.extend_from_slice(&icv[..suite.truncated()]);
        Some(rmcp_plus(0x15, 0, 0, &out))
    }

    /// A sealed payload of an active session: integrity, sequence number, decryption. The
    /// message with the session's keys and the console's session id.
    fn unseal(&mut self, p: &[u8], payload_type: u8, sid: u32) -> Option<(Vec<u8>, Keys, u32)> {
        let session = self.sessions.get_mut(&sid)?;
        let console_sid = session.console_sid;
        let Stage::Active { keys, inbound, .. } = &mut session.stage else {
            return None;
        };
        // Both suites require integrity and confidentiality on every packet.
        if payload_type & 0xc0 != 0xc0 {
            return None;
        }
        let n = keys.suite.truncated();
        if p.len() < 16 + n + 2 {
            return None;
        }
        let (covered, code) = p.split_at(p.len() - n);
        if keys.suite.hmac(&keys.k1, &[&covered[4..]])[..n] != *code {
            return None;
        }
        // The integrity pad ends with its length and the next header (0x07).
        if covered[covered.len() - 1] != 0x07 {
            return None;
        }
        if !inbound.accept(u32_at(p, 10)?) {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([p[14], p[15]]));
        let message = decrypt(&keys.k2, p.get(16..16 + len)?)?;
        Some((message, keys.clone(), console_sid))
    }

    /// A sealed IPMI message in an active session: [`Bmc::unseal`], the command, the sealed
    /// response.
    fn session_packet(&mut self, p: &[u8], payload_type: u8, sid: u32) -> Option<Vec<u8>> {
        let (message, keys, console_sid) = self.unseal(p, payload_type, sid)?;
        let Stage::Active {
            privilege, role, ..
        } = &self.sessions.get(&sid)?.stage
        else {
            return None;
        };
        let max = *role & 0x0f;
        let current = *privilege;
        let rq = parse_request(&message)?;
        let (completion, data, after) = match self.sol_command(&rq, current, sid) {
            Some(answer) => answer,
            None => self.command(&rq, current, max),
        };
        self.stats.commands += 1;
        self.log.push(LoggedCommand {
            netfn: rq.netfn,
            cmd: rq.cmd,
            data: rq.data.clone(),
            completion,
        });
        let session = self.sessions.get_mut(&sid)?;
        let Stage::Active {
            outbound,
            privilege,
            ..
        } = &mut session.stage
        else {
            return None;
        };
        *outbound = outbound.wrapping_add(1).max(1);
        let seq = *outbound;
        match after {
            After::Nothing => {}
            After::Privilege(level) => *privilege = level,
            After::Close(id) => {
                self.sessions.remove(&id);
                self.stats.sessions_closed += 1;
                self.sol_session_closed(id);
            }
        }
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        Some(seal(
            &keys,
            console_sid,
            seq,
            &response(&rq, completion, &data),
            iv,
        ))
    }

    /// One command: (completion code, response data, what changes after the response).
    fn command(&mut self, rq: &Request, privilege: u8, max: u8) -> (u8, Vec<u8>, After) {
        let need = match (rq.netfn, rq.cmd) {
            (0x00, 0x02) | (0x00, 0x08) | (0x00, 0x09) => PRIV_OPERATOR,
            _ => PRIV_USER,
        };
        if privilege < need {
            return (cc::PRIVILEGE, vec![], After::Nothing);
        }
        self.expire_boot_flags();
        let d = &rq.data;
        if let Some(r) = self.sel.command(rq.netfn, rq.cmd, d, self.power) {
            return r;
        }
        if let Some(r) = users::command(self, rq.netfn, rq.cmd, d, privilege) {
            return r;
        }
        let ok = |data: Vec<u8>| (cc::OK, data, After::Nothing);
        let fail = |code: u8| (code, vec![], After::Nothing);
        match (rq.netfn, rq.cmd) {
            // Get Device ID: device 0x20, revision 1, firmware 1.00, IPMI 2.0, chassis
            // device, manufacturer 0 (unspecified), product 1.
            (0x06, 0x01) => ok(vec![
                0x20, 0x01, 0x01, 0x00, 0x02, 0x80, 0x00, 0x00, 0x00, 0x01, 0x00,
            ]),
            // Get System GUID, least significant byte first.
            (0x06, 0x37) => {
                let mut g = *self.guid.as_bytes();
                g.reverse();
                ok(g.to_vec())
            }
            (0x06, 0x38) => {
                let (c, data) = auth_caps(d);
                (c, data, After::Nothing)
            }
            // Set Session Privilege Level.
            (0x06, 0x3b) => {
                let Some(&want) = d.first() else {
                    return fail(cc::LENGTH);
                };
                match want & 0x0f {
                    0 => ok(vec![privilege]),
                    1 | 5.. => fail(cc::INVALID_DATA),
                    level if level > max => fail(cc::ABOVE_PRIVILEGE_LIMIT),
                    level => (cc::OK, vec![level], After::Privilege(level)),
                }
            }
            // Close Session.
            (0x06, 0x3c) => match u32_at(d, 0) {
                Some(id) if self.sessions.contains_key(&id) => (cc::OK, vec![], After::Close(id)),
                Some(_) => fail(cc::INVALID_SESSION),
                None => fail(cc::LENGTH),
            },
            // Get Chassis Status: power, last power event (by command), misc, front panel.
            (0x00, 0x01) => ok(vec![u8::from(self.power), 0x10, 0x00, 0x00]),
            (0x00, 0x02) => {
                if d.len() != 1 {
                    return fail(cc::LENGTH);
                }
                match self.chassis_control(d[0] & 0x0f) {
                    Ok(()) => ok(vec![]),
                    Err(code) => fail(code),
                }
            }
            (0x00, 0x08) => match self.set_boot_option(d) {
                Ok(()) => ok(vec![]),
                Err(code) => fail(code),
            },
            (0x00, 0x09) => match self.get_boot_option(d) {
                Ok(data) => ok(data),
                Err(code) => fail(code),
            },
            // Get FRU Inventory Area Info: size, byte access.
            (0x0a, 0x10) => match (&self.fru, d.first()) {
                (_, None) => fail(cc::LENGTH),
                (Some(f), Some(0)) => {
                    let [lo, hi] = (f.len() as u16).to_le_bytes();
                    ok(vec![lo, hi, 0x00])
                }
                _ => fail(cc::NOT_PRESENT),
            },
            // Read FRU Data: at most 32 bytes a read, as small BMCs allow.
            (0x0a, 0x11) => {
                let [id, lo, hi, count] = d[..] else {
                    return fail(cc::LENGTH);
                };
                let (Some(f), 0) = (&self.fru, id) else {
                    return fail(cc::NOT_PRESENT);
                };
                if count > 32 {
                    return fail(cc::CANNOT_RETURN);
                }
                let at = usize::from(u16::from_le_bytes([lo, hi]));
                if at >= f.len() {
                    return fail(cc::PARAMETER_OUT_OF_RANGE);
                }
                let bytes = &f[at..(at + usize::from(count)).min(f.len())];
                let mut out = vec![bytes.len() as u8];
                out.extend_from_slice(bytes);
                ok(out)
            }
            _ => fail(cc::INVALID_COMMAND),
        }
    }

    fn chassis_control(&mut self, code: u8) -> Result<(), u8> {
        let action = match code {
            0 => ChassisControl::PowerDown,
            1 => ChassisControl::PowerUp,
            2 => ChassisControl::PowerCycle,
            3 => ChassisControl::HardReset,
            4 => ChassisControl::DiagnosticInterrupt,
            5 => ChassisControl::SoftShutdown,
            _ => return Err(cc::INVALID_DATA),
        };
        // A cycle or reset of a machine that is off does nothing; the specification suggests
        // completion code 0xd5 for it.
        if matches!(
            action,
            ChassisControl::PowerCycle | ChassisControl::HardReset
        ) && !self.power
        {
            return Err(cc::NOT_IN_THIS_STATE);
        }
        if self.apply_power {
            match action {
                ChassisControl::PowerDown | ChassisControl::SoftShutdown => self.power = false,
                ChassisControl::PowerUp => {
                    if !self.power {
                        self.power = true;
                        self.boot();
                    }
                }
                ChassisControl::PowerCycle | ChassisControl::HardReset => self.boot(),
                ChassisControl::DiagnosticInterrupt => {}
            }
        }
        // A Chassis Control command restarts the 60-s countdown of valid flags.
        if self.boot.armed_at.is_some() {
            self.boot.armed_at = Some(self.now());
        }
        if let Some(hook) = &self.power_hook {
            hook.send(action).ok();
        }
        Ok(())
    }

    /// The machine boots: it sees the boot flags, and a one-time override is used up.
    fn boot(&mut self) {
        let flags = BootFlags {
            raw: self.boot.flags,
        };
        self.boots.push(flags);
        if flags.valid() && !flags.persistent() {
            self.boot.flags[0] &= !0x80;
            self.boot.armed_at = None;
        }
    }

    fn set_boot_option(&mut self, d: &[u8]) -> Result<(), u8> {
        let (&param, value) = d.split_first().ok_or(cc::LENGTH)?;
        let want = |n: usize| {
            if value.len() == n {
                Ok(())
            } else {
                Err(cc::LENGTH)
            }
        };
        match param & 0x7f {
            0 => {
                want(1)?;
                match value[0] & 0x03 {
                    0 => self.boot.in_progress = 0,
                    1 if self.boot.in_progress == 1 => return Err(cc::SET_IN_PROGRESS),
                    1 => self.boot.in_progress = 1,
                    // Commit write: everything is written at once already.
                    2 => {}
                    _ => return Err(cc::INVALID_DATA),
                }
            }
            3 if self.refuse_param3 => return Err(cc::PARAMETER_NOT_SUPPORTED),
            3 => {
                want(1)?;
                self.boot.valid_bit_clearing = value[0] & 0x1f;
            }
            4 => {
                want(2)?;
                let mask = value[0];
                self.boot.acknowledge = (self.boot.acknowledge & !mask) | (value[1] & mask);
            }
            5 => {
                want(5)?;
                self.boot.flags.copy_from_slice(value);
                self.boot.armed_at = (value[0] & 0x80 != 0).then(|| self.now());
            }
            _ => return Err(cc::PARAMETER_NOT_SUPPORTED),
        }
        Ok(())
    }

    fn get_boot_option(&self, d: &[u8]) -> Result<Vec<u8>, u8> {
        if d.len() != 3 {
            return Err(cc::LENGTH);
        }
        let param = d[0] & 0x7f;
        // Parameter version 1, then the parameter number (bit 7 clear: valid, unlocked).
        let mut out = vec![0x01, param];
        match param {
            0 => out.push(self.boot.in_progress),
            3 if self.refuse_param3 => return Err(cc::PARAMETER_NOT_SUPPORTED),
            3 => out.push(self.boot.valid_bit_clearing),
            4 => out.extend_from_slice(&[0x00, self.boot.acknowledge]),
            5 => out.extend_from_slice(&self.boot.flags),
            _ => return Err(cc::PARAMETER_NOT_SUPPORTED),
        }
        Ok(out)
    }
}

enum After {
    Nothing,
    Privilege(u8),
    Close(u32),
}

/// Get Channel Authentication Capabilities: channel 1, IPMI 2.0 extended data, non-null user
/// names, no IPMI 1.5 authentication types, Kg at its default (so the password keys the SIK).
fn auth_caps(d: &[u8]) -> (u8, Vec<u8>) {
    match d {
        [channel, privilege, ..] if (channel & 0x0f == 0x0e || channel & 0x0f == 1) => {
            if privilege & 0x0f == 0 || privilege & 0x0f > 5 {
                return (cc::INVALID_DATA, vec![]);
            }
            (cc::OK, vec![0x01, 0x80, 0x04, 0x02, 0, 0, 0, 0])
        }
        [_, _, ..] => (cc::INVALID_DATA, vec![]),
        _ => (cc::LENGTH, vec![]),
    }
}

/// RMCP presence ping (ASF, IANA 4542, type 0x80) → pong (0x40): IPMI supported.
fn asf_pong(p: &[u8]) -> Option<Vec<u8>> {
    if p.len() < 12 || p[4..8] != [0x00, 0x00, 0x11, 0xbe] || p[8] != 0x80 {
        return None;
    }
    let mut out = vec![
        0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x40, p[9], 0x00, 0x10,
    ];
    out.extend_from_slice(&[0x00, 0x00, 0x11, 0xbe, 0, 0, 0, 0, 0x81, 0x00]);
    out.extend_from_slice(&[0; 6]);
    Some(out)
}

/// The IPMI message in an AES-CBC-128 payload (IV, then the encrypted message with its
/// confidentiality trailer: pad bytes 1, 2, 3... and the pad length).
fn decrypt(k2: &[u8; 16], payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < 32 || !payload.len().is_multiple_of(16) {
        return None;
    }
    let (iv, ct) = payload.split_at(16);
    let mut buf = ct.to_vec();
    let iv: [u8; 16] = iv.try_into().ok()?;
    let plain = Aes128CbcDec::new(k2.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .ok()?;
    let pad = usize::from(*plain.last()?);
    if pad > 15 || pad + 1 > plain.len() {
        return None;
    }
    let body = plain.len() - 1 - pad;
    if plain[body..plain.len() - 1]
        .iter()
        .enumerate()
        .any(|(i, b)| usize::from(*b) != i + 1)
    {
        return None;
    }
    Some(plain[..body].to_vec())
}

/// An encrypted, authenticated IPMI payload packet from the BMC (session id: the console's).
fn seal(keys: &Keys, console_sid: u32, seq: u32, message: &[u8], iv: [u8; 16]) -> Vec<u8> {
    seal_as(0xc0, keys, console_sid, seq, message, iv)
}

/// [`seal`] for any payload type (its low six bits; encrypted and authenticated).
fn seal_as(
    payload_type: u8,
    keys: &Keys,
    console_sid: u32,
    seq: u32,
    message: &[u8],
    iv: [u8; 16],
) -> Vec<u8> {
    let mut plain = message.to_vec();
    let pad = (16 - (plain.len() + 1) % 16) % 16;
    plain.extend(1..=pad as u8);
    plain.push(pad as u8);
    let len = plain.len();
    let ct = Aes128CbcEnc::new(&keys.k2.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut plain, len)
        .expect("whole blocks")
        .to_vec();
    let mut payload = iv.to_vec();
    payload.extend_from_slice(&ct);
    let mut p = rmcp_plus(0xc0 | (payload_type & 0x3f), console_sid, seq, &payload);
    // Integrity pad: from the auth type byte through pad length and next header, a multiple
    // of four bytes.
    let ipad = (4 - (p.len() - 4 + 2) % 4) % 4;
    p.extend(std::iter::repeat_n(0xff, ipad));
    p.push(ipad as u8);
    p.push(0x07);
    let code = keys.suite.hmac(&keys.k1, &[&p[4..]]);
    p.extend_from_slice(&code[..keys.suite.truncated()]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_sequence_window_takes_each_number_once() {
        let mut w = SeqWindow::default();
        assert!(!w.accept(0), "zero is never valid");
        assert!(w.accept(3));
        assert!(!w.accept(3), "a duplicate");
        assert!(w.accept(5));
        assert!(w.accept(4), "late, inside the window, not seen");
        assert!(!w.accept(4));
        assert!(w.accept(5 + 32), "32 ahead");
        assert!(!w.accept(5 + 32 + 33), "too far ahead");
        assert!(!w.accept(37 - 16), "too far behind");
        assert!(w.accept(37 - 15));
    }

    #[test]
    fn an_even_spread_loses_exactly_its_share() {
        let mut b = Bmc::new(IpmiEmulatorConfig::new("admin", "password"));
        b.loss = Loss::Spread { drop: 3, of: 10 };
        let lost: Vec<u64> = (1..=20).filter(|_| b.lose()).collect();
        assert_eq!(lost, vec![4, 7, 10, 14, 17, 20]);
        b.loss = Loss::Percent(30);
        let n = (0..10_000).filter(|_| b.lose()).count();
        assert!((2_700..3_300).contains(&n), "{n}");
        b.loss = Loss::Percent(100);
        assert!((0..100).all(|_| b.lose()));
    }

    #[tokio::test]
    async fn answers_a_presence_ping() {
        let emu = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", "password"))
            .await
            .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(emu.addr()).await.unwrap();
        let ping = [
            0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x80, 0x2a, 0x00, 0x00,
        ];
        sock.send(&ping).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let pong = &buf[..n];
        assert_eq!(pong[8], 0x40, "pong");
        assert_eq!(pong[9], 0x2a, "the ping's tag");
        assert_eq!(pong[20], 0x81, "IPMI supported");
    }

    /// ipmitool, the reference client: `-I lanplus` with the given suite; (success, output).
    async fn ipmitool(
        emu: &IpmiEmulator,
        suite: u8,
        user: &str,
        password: &str,
        args: &[&str],
    ) -> (bool, String) {
        let out = tokio::process::Command::new("ipmitool")
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p"])
            .arg(emu.port().to_string())
            .args(["-U", user, "-E", "-C"])
            .arg(suite.to_string())
            .args(["-N", "1", "-R", "2"])
            .args(args)
            .env("IPMI_PASSWORD", password)
            .output()
            .await
            .expect("ipmitool is missing: the test command installs it (Debian package ipmitool)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    async fn ipmitool_ok(emu: &IpmiEmulator, suite: u8, args: &[&str]) -> String {
        let (ok, out) = ipmitool(emu, suite, "admin", "password", args).await;
        assert!(ok, "ipmitool -C {suite} {args:?} failed: {out}");
        out
    }

    async fn power_and_boot_with_ipmitool(suite: u8) {
        let emu = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", "password"))
            .await
            .unwrap();
        let status = ["chassis", "power", "status"];
        assert!(
            ipmitool_ok(&emu, suite, &status)
                .await
                .contains("Chassis Power is off")
        );
        ipmitool_ok(&emu, suite, &["chassis", "power", "on"]).await;
        assert!(emu.power());
        assert!(
            ipmitool_ok(&emu, suite, &status)
                .await
                .contains("Chassis Power is on")
        );
        ipmitool_ok(&emu, suite, &["chassis", "power", "cycle"]).await;
        assert!(emu.power());
        assert_eq!(emu.boots().len(), 2, "power on, then the cycle");
        ipmitool_ok(&emu, suite, &["chassis", "power", "reset"]).await;
        assert_eq!(emu.boots().len(), 3);
        ipmitool_ok(&emu, suite, &["chassis", "power", "off"]).await;
        assert!(!emu.power());
        assert!(
            ipmitool_ok(&emu, suite, &status)
                .await
                .contains("Chassis Power is off")
        );
        let (ok, out) = ipmitool(
            &emu,
            suite,
            "admin",
            "password",
            &["chassis", "power", "cycle"],
        )
        .await;
        assert!(!ok, "a cycle of a machine that is off is refused: {out}");

        let set = ["chassis", "bootdev", "pxe", "options=efiboot,persistent"];
        ipmitool_ok(&emu, suite, &set).await;
        let flags = emu.boot_flags();
        assert!(
            flags.valid() && flags.persistent() && flags.efi(),
            "{flags:?}"
        );
        assert_eq!(flags.selector(), BootSelector::Pxe);
        let got = ipmitool_ok(&emu, suite, &["chassis", "bootparam", "get", "5"]).await;
        for line in [
            "Boot parameter data: e004000000",
            "Boot Flag Valid",
            "Options apply to all future boots",
            "BIOS EFI boot",
            "Force PXE",
        ] {
            assert!(got.contains(line), "{line:?} missing from {got}");
        }
        // A one-time override (no options) to disk is used up by the next boot.
        ipmitool_ok(&emu, suite, &["chassis", "bootdev", "disk"]).await;
        let flags = emu.boot_flags();
        assert!(
            flags.valid() && !flags.persistent() && !flags.efi(),
            "{flags:?}"
        );
        assert_eq!(flags.selector(), BootSelector::Disk);
        ipmitool_ok(&emu, suite, &["chassis", "power", "on"]).await;
        assert_eq!(emu.boots().last().unwrap().selector(), BootSelector::Disk);
        assert!(
            !emu.boot_flags().valid(),
            "the one-time override is used up"
        );
        let got = ipmitool_ok(&emu, suite, &["chassis", "bootparam", "get", "5"]).await;
        assert!(got.contains("Force Boot from default Hard-Drive"), "{got}");
        assert!(!got.contains("Boot Flag Valid"), "{got}");

        let s = emu.stats();
        assert_eq!(s.sessions_opened, 13, "one session per ipmitool run: {s:?}");
        assert_eq!(s.sessions_closed, 13, "ipmitool closes its sessions: {s:?}");
        assert_eq!((s.dropped, s.rejected, s.auth_failures), (0, 0, 0), "{s:?}");
        assert_eq!(emu.active_sessions(), 0);
    }

    #[tokio::test]
    async fn ipmitool_with_cipher_suite_3() {
        power_and_boot_with_ipmitool(3).await;
    }

    #[tokio::test]
    async fn ipmitool_with_cipher_suite_17() {
        power_and_boot_with_ipmitool(17).await;
    }

    #[tokio::test]
    async fn ipmitool_fails_cleanly_on_wrong_credentials_and_suites() {
        let mut cfg = IpmiEmulatorConfig::new("admin", "password");
        cfg.cipher_suites = vec![3];
        let emu = IpmiEmulator::start(cfg).await.unwrap();
        let status = ["chassis", "power", "status"];
        for suite in [3, 17] {
            // Wrong password: the BMC's RAKP 2 proof does not match ipmitool's, which gives up.
            let (ok, out) = ipmitool(&emu, suite, "admin", "wrong", &status).await;
            assert!(!ok, "{out}");
            assert!(
                out.contains("Unable to establish IPMI v2 / RMCP+ session"),
                "{out}"
            );
            // Unknown user: RAKP 2 with status 0x0d, unauthorized name.
            let (ok, out) = ipmitool(&emu, suite, "nobody", "password", &status).await;
            assert!(!ok, "{out}");
        }
        // Suite 17 is not offered by this BMC: Open Session is refused with status 0x11;
        // neither is suite 1 (no integrity) offered by any.
        let (ok, out) = ipmitool(&emu, 17, "admin", "password", &status).await;
        assert!(!ok && out.contains("no matching cipher suite"), "{out}");
        let (ok, out) = ipmitool(&emu, 1, "admin", "password", &status).await;
        assert!(!ok, "{out}");
        assert_eq!(emu.stats().sessions_opened, 0);
        assert!(emu.stats().auth_failures >= 1, "{:?}", emu.stats());
        // The right ones still work.
        assert!(ipmitool_ok(&emu, 3, &status).await.contains("off"));
        assert!(!emu.power());
    }

    #[tokio::test]
    async fn the_power_hook_sees_every_accepted_command() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cfg = IpmiEmulatorConfig::new("admin", "password");
        cfg.power_hook = Some(tx);
        cfg.apply_power = false;
        let emu = IpmiEmulator::start(cfg).await.unwrap();
        ipmitool_ok(&emu, 17, &["chassis", "power", "on"]).await;
        assert_eq!(rx.try_recv(), Ok(ChassisControl::PowerUp));
        assert!(!emu.power(), "the hook's owner decides the power state");
        emu.set_power(true);
        ipmitool_ok(&emu, 17, &["chassis", "power", "soft"]).await;
        assert_eq!(rx.try_recv(), Ok(ChassisControl::SoftShutdown));
        assert!(emu.power());
        assert!(rx.try_recv().is_err());
    }
}
