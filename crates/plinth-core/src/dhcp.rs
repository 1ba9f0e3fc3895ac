//! DHCP decisions for plinth-dhcp: which address a client gets (one database call per batch
//! of packets, see `plinth_db::leases::decide_batch`) and what it boots ([`boot_decision`], a pure
//! function of the machine's lifecycle state (its `NetBoot` in plinth-types' behaviour table)
//! and the client's kind (its RFC 4578 architecture, `plinth_types::netboot`)). Unknown PXE
//! clients are recorded as `discovered` machines.

use std::net::Ipv4Addr;

use plinth_types::behaviour::NetBoot;
use plinth_types::netboot::{self, Loader, PxeArch, ScriptQuery};
use plinth_types::{Error, MacAddr, MachineState, Verb};
use uuid::Uuid;

use crate::{App, DbResult, Result};

mod view;
pub(crate) use view::ClientView;

/// What to do with PXE clients that are in no inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Record them as `discovered` and network-boot them (into the inspection image).
    Boot,
    /// Record them as `discovered`, give them an address, but no boot file.
    Record,
}

/// Boot files and URLs, from the `[dhcp]` configuration. Which architecture gets which loader
/// is the `loader` column of `plinth_types::netboot::PXE_ARCHES`. The file gives the binaries
/// and the policy; the URLs come from the listeners.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootConfig {
    /// For BIOS PXE (`Loader::Bios`: arch 0, or none sent).
    pub bios_binary: String,
    /// For x86-64 UEFI PXE and UEFI HTTP boot (`Loader::Efi`): `ipxe.efi` or `snponly.efi`.
    pub efi_binary: String,
    /// For ARM64 UEFI (`Loader::Arm64`), when one is configured.
    pub arm64_binary: Option<String>,
    /// Base of the HTTP boot URLs, e.g. `http://10.0.0.2:8080`; default `http://<boot server>:<http_port>`.
    #[serde(skip)]
    pub http_base: Option<String>,
    #[serde(skip)]
    pub http_port: u16,
    pub unknown_machines: UnknownPolicy,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            bios_binary: "undionly.kpxe".into(),
            efi_binary: "ipxe.efi".into(),
            arm64_binary: None,
            http_base: None,
            http_port: 80,
            unknown_machines: UnknownPolicy::Boot,
        }
    }
}

/// What the client told us about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Option 93 (RFC 4578 client system architecture).
    pub arch: Option<u16>,
    /// Option 60 starts with `PXEClient`.
    pub pxe: bool,
    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    pub http_client: bool,
    /// iPXE (option 77 `iPXE` or option 175).
    pub ipxe: bool,
    /// Option 97.
    pub uuid: Option<Uuid>,
}

impl ClientInfo {
    pub fn wants_boot(&self) -> bool {
        self.pxe || self.http_client || self.ipxe
    }

    /// The machine architecture the firmware implies.
    pub fn machine_arch(&self) -> Option<&'static str> {
        self.arch.and_then(PxeArch::cpu).map(|a| a.as_str())
    }
}

/// What a network-booting client is handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    /// No boot file: the firmware moves on to its next boot device.
    None,
    /// A file on plinth's TFTP server.
    Tftp { file: String },
    /// A URL (iPXE, UEFI HTTP boot).
    Http { url: String },
}

/// Whether plinth network-boots a machine in `state`: only where it boots a ramdisk (it has
/// work for the machine to do there). In every other state the firmware gets no boot file and
/// falls through to its local disk; the script would only say so.
fn netboots(state: MachineState, unknown: UnknownPolicy) -> bool {
    match state.behaviour().netboot {
        NetBoot::Ramdisk(_) => true,
        NetBoot::Discovery => unknown == UnknownPolicy::Boot,
        NetBoot::Idle | NetBoot::LocalDisk | NetBoot::Nothing(_) => false,
    }
}

/// The boot decision, as a pure function. `state` is `None` for a MAC in no inventory.
pub fn boot_decision(
    state: Option<MachineState>,
    client: &ClientInfo,
    override_file: Option<&str>,
    cfg: &BootConfig,
    boot_server: Ipv4Addr,
) -> BootAction {
    if !client.wants_boot()
        || !netboots(
            state.unwrap_or(Verb::Discover.target()),
            cfg.unknown_machines,
        )
    {
        return BootAction::None;
    }
    let base = cfg
        .http_base
        .clone()
        .unwrap_or_else(|| format!("http://{boot_server}:{}", cfg.http_port));
    if client.ipxe {
        // iPXE already runs: hand it its script, never the binary again, so the chain cannot loop.
        return BootAction::Http {
            url: netboot::script_url(&base, ScriptQuery::Decision),
        };
    }
    let is_url = |f: &str| f.starts_with("http://") || f.starts_with("https://");
    if let Some(f) = override_file {
        return if is_url(f) {
            BootAction::Http { url: f.to_owned() }
        } else {
            BootAction::Tftp { file: f.to_owned() }
        };
    }
    let binary = match PxeArch::loader(client.arch) {
        Some(Loader::Bios) => Some(cfg.bios_binary.clone()),
        Some(Loader::Efi) => Some(cfg.efi_binary.clone()),
        Some(Loader::Arm64) => cfg.arm64_binary.clone(),
        None => None,
    };
    let Some(binary) = binary else {
        return BootAction::None;
    };
    if client.http_client {
        BootAction::Http {
            url: netboot::file_url(&base, &binary),
        }
    } else {
        BootAction::Tftp { file: binary }
    }
}

/// The DHCP exchange step a packet asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    Discover {
        requested: Option<Ipv4Addr>,
    },
    /// REQUEST in SELECTING, naming this server.
    Select {
        requested: Ipv4Addr,
    },
    /// REQUEST in SELECTING, naming another server.
    SelectOther,
    InitReboot {
        requested: Ipv4Addr,
    },
    /// RENEWING or REBINDING.
    Renew {
        ciaddr: Ipv4Addr,
    },
    Release {
        ciaddr: Ipv4Addr,
    },
    Decline {
        requested: Ipv4Addr,
    },
    Inform,
}

impl LeaseOp {
    fn parts(self) -> (&'static str, Option<Ipv4Addr>) {
        match self {
            LeaseOp::Discover { requested } => ("discover", requested),
            LeaseOp::Select { requested } => ("select", Some(requested)),
            LeaseOp::SelectOther => ("select_other", None),
            LeaseOp::InitReboot { requested } => ("init_reboot", Some(requested)),
            LeaseOp::Renew { ciaddr } => ("renew", Some(ciaddr)),
            LeaseOp::Release { ciaddr } => ("release", Some(ciaddr)),
            LeaseOp::Decline { requested } => ("decline", Some(requested)),
            LeaseOp::Inform => ("inform", None),
        }
    }
}

/// One request, as plinth-dhcp hands it over.
#[derive(Debug, Clone)]
pub struct DhcpRequest<'a> {
    pub op: LeaseOp,
    /// giaddr for relayed requests, else the receiving interface's address.
    pub match_addr: Ipv4Addr,
    pub relayed: bool,
    pub mac: MacAddr,
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a str>,
    pub client: ClientInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Offer,
    Ack,
    Nak,
    /// Send nothing.
    Ignore,
}

/// Network settings for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// None for INFORM.
    pub address: Option<Ipv4Addr>,
    pub lease_secs: Option<u32>,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpDecision {
    pub outcome: Outcome,
    pub lease: Option<LeaseInfo>,
    pub boot: BootAction,
    /// The subnet's boot server, if it names one.
    pub boot_server: Option<Ipv4Addr>,
    /// Why a NAK or an Ignore (for the log and option 56).
    pub reason: Option<String>,
    /// The inventory machine, if the MAC belongs to one (a new `discovered` one included).
    pub machine_id: Option<Uuid>,
}

/// Timers of the lease engine.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseTimers {
    /// How long an OFFER holds its address.
    #[serde(rename = "offer_timeout")]
    pub offer_secs: u32,
    /// How long a DECLINEd address stays out of the pool.
    #[serde(rename = "decline_quarantine")]
    pub quarantine_secs: u32,
}

impl Default for LeaseTimers {
    fn default() -> Self {
        LeaseTimers {
            offer_secs: 60,
            quarantine_secs: 3600,
        }
    }
}

/// The offers this instance made from memory (see `dhcp_lease_batch`): the table does not
/// hold them, so the instance remembers each, by client, until the client binds it (or is
/// refused, or goes elsewhere) or the offer lapses. A client asking again is offered the same
/// address; the newest [`OfferBook::SKIP`] open offers are passed to each batch as addresses to
/// offer nobody else (the database checks candidates against them through a hash). Another
/// instance's offers are not seen: two instances may offer one address to two clients; then the
/// first REQUEST binds it and the other client is refused (NAK) and starts over.
#[derive(Debug, Default)]
pub(crate) struct OfferBook {
    inner: std::sync::Mutex<Offers>,
}

#[derive(Debug, Default)]
struct Offers {
    /// By client: the address and when the offer lapses.
    open: std::collections::HashMap<MacAddr, (Ipv4Addr, std::time::Instant)>,
    /// The newest offers, oldest first: the ones whose REQUESTs are on their way.
    recent: std::collections::VecDeque<(MacAddr, Ipv4Addr)>,
    /// `open` by address.
    by_addr: std::collections::HashMap<Ipv4Addr, MacAddr>,
    /// The offers in the order they lapse (all last `offer_timeout`): lapsed ones leave `open`
    /// from the front, a few at a time, never by a scan of the whole book. An entry whose
    /// client was offered again or closed meanwhile is stale and skipped.
    lapsing: std::collections::VecDeque<(MacAddr, Ipv4Addr, std::time::Instant)>,
}

impl Offers {
    fn live(&self, mac: &MacAddr, now: std::time::Instant) -> Option<Ipv4Addr> {
        self.open
            .get(mac)
            .filter(|(_, until)| *until > now)
            .map(|(a, _)| *a)
    }

    fn close(&mut self, mac: &MacAddr) {
        if let Some((a, _)) = self.open.remove(mac)
            && self.by_addr.get(&a) == Some(mac)
        {
            self.by_addr.remove(&a);
        }
    }

    /// Closes the offers that lapsed by `now`.
    fn lapse(&mut self, now: std::time::Instant) {
        while let Some(&(mac, a, until)) = self.lapsing.front() {
            if until > now {
                break;
            }
            self.lapsing.pop_front();
            if self.open.get(&mac) == Some(&(a, until)) {
                self.close(&mac);
            }
        }
        // Stale entries (clients offered again) are dropped once they outnumber the book: a
        // pass over at most twice the book, after at least as many offers.
        if self.lapsing.len() > 2 * OfferBook::MAX {
            let open = &self.open;
            self.lapsing
                .retain(|(m, a, until)| open.get(m) == Some(&(*a, *until)));
        }
    }
}

impl OfferBook {
    /// At most this many open offers are remembered by client: a flood of DISCOVERs from
    /// made-up MACs (or a storm whose clients never REQUEST) must not grow it.
    const MAX: usize = 4096;
    /// The newest offers that every batch skips: all that are open at 8,000 DORA/s with 100 ms
    /// from OFFER to REQUEST. Each batch sends them and each statement hashes them, so the
    /// list is bounded: past saturation, when the latency grows with the queue, an unbounded
    /// list made every batch dearer as the batches fell behind (docs/benchmarks.md, "DHCP,
    /// step 3"). An older open offer's address may then be offered to another client too; the
    /// first REQUEST binds it and the other client is refused (NAK) and starts over, as when
    /// two instances meet on one address.
    const SKIP: usize = 1024;

    fn lock(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the calls of a batch: each client's open offer, and the addresses to skip.
    fn snapshot(
        &self,
        macs: impl Iterator<Item = MacAddr>,
    ) -> (Vec<Option<Ipv4Addr>>, Vec<Ipv4Addr>) {
        let now = std::time::Instant::now();
        let book = self.lock();
        let live = |m: &MacAddr| book.open.get(m).filter(|(_, until)| *until > now);
        let held = macs.map(|m| live(&m).map(|(a, _)| *a)).collect();
        let skip = book
            .recent
            .iter()
            .filter(|(m, a)| live(m).is_some_and(|(x, _)| x == a))
            .map(|(_, a)| *a)
            .collect();
        (held, skip)
    }

    /// Whether `mac` holds an open offer of this instance's.
    fn has_open(&self, mac: MacAddr) -> bool {
        self.lock().live(&mac, std::time::Instant::now()).is_some()
    }

    /// Whether this instance offered `a` to a client whose offer is still open.
    fn is_offered(&self, a: Ipv4Addr) -> bool {
        let book = self.lock();
        book.by_addr
            .get(&a)
            .is_some_and(|m| book.live(m, std::time::Instant::now()) == Some(a))
    }

    /// Takes in what the database (or the client view) decided for `mac`.
    fn note(&self, mac: MacAddr, d: &plinth_db::leases::LeaseDecision, offer_secs: u32) {
        let now = std::time::Instant::now();
        let mut book = self.lock();
        match (d.from_memory, d.address) {
            (true, Some(a)) => {
                book.lapse(now);
                if book.open.len() < Self::MAX || book.open.contains_key(&mac) {
                    let until = now + std::time::Duration::from_secs(u64::from(offer_secs));
                    book.close(&mac);
                    book.open.insert(mac, (a, until));
                    book.by_addr.insert(a, mac);
                    book.lapsing.push_back((mac, a, until));
                }
                if book.recent.len() >= Self::SKIP {
                    book.recent.pop_front();
                }
                book.recent.push_back((mac, a));
            }
            (true, None) => {}
            // Bound, refused, released, declined, or an offer the table holds.
            (false, _) => {
                book.close(&mac);
            }
        }
    }
}

/// Whether a failed batch is worth retrying item by item: it hit a constraint or a deadlock
/// because another batch (of this or another instance) was answering the same client.
fn batch_conflict(e: &plinth_db::Error) -> bool {
    e.constraint() == Some("leases_client_key")
        || e.is_retryable()
        || matches!(
            e,
            plinth_db::Error::Violation {
                kind: plinth_db::Violation::Unique,
                ..
            }
        )
}

/// What the database said about one item of a batch.
#[derive(Debug, Clone)]
enum Decided {
    Lease(Box<plinth_db::leases::LeaseDecision>),
    /// Another instance is answering this client at this moment: let it.
    Race,
    Failed(Error),
}

impl From<plinth_db::Error> for Decided {
    fn from(e: plinth_db::Error) -> Self {
        if e.constraint() == Some("leases_client_key") {
            Decided::Race
        } else {
            Decided::Failed(plinth_db::classify(e))
        }
    }
}

/// What `dhcp_lease_batch` answers for a relayed request whose relay no subnet accepts.
const REFUSED: &str = "refused";

/// Warns of requests from relays no subnet accepts, at most once every 10 s: forged giaddrs
/// must not flood the log either.
fn refused_relays_warning(reqs: &[DhcpRequest<'_>], decided: &[Decided]) {
    let refused =
        |d: &Decided| matches!(d, Decided::Lease(d) if d.outcome.as_deref() == Some(REFUSED));
    let mut giaddrs = reqs
        .iter()
        .zip(decided)
        .filter(|(_, d)| refused(d))
        .map(|(r, _)| r.match_addr);
    let Some(first) = giaddrs.next() else {
        return;
    };
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(giaddr = %first, refused = 1 + giaddrs.count(), "DHCP packets from relays no subnet accepts: not answered (see relay_addresses)");
    }
}

fn answered_elsewhere() -> DhcpDecision {
    DhcpDecision {
        outcome: Outcome::Ignore,
        lease: None,
        boot: BootAction::None,
        boot_server: None,
        reason: Some("answered by another instance".into()),
        machine_id: None,
    }
}

impl App {
    /// Decides one DHCP request: the lease change is committed before this returns. For tests
    /// (feature `testing`): the DHCP server decides in batches.
    #[cfg(feature = "testing")]
    pub async fn dhcp_decide(
        &self,
        req: &DhcpRequest<'_>,
        timers: LeaseTimers,
        boot: &BootConfig,
        default_boot_server: Ipv4Addr,
    ) -> Result<DhcpDecision> {
        self.dhcp_decide_batch(std::slice::from_ref(req), timers, boot, default_boot_server)
            .await
            .pop()
            .unwrap_or_else(|| Err(crate::missing("dhcp_decide")()))
    }

    /// The DHCP client view (tests): whether it answers, the DISCOVERs it answered, its loads,
    /// and the addresses left in `subnet`'s reservoir.
    #[cfg(feature = "testing")]
    pub fn dhcp_view_status(&self, subnet: Option<Uuid>) -> (bool, u64, u64, usize) {
        self.view.status(subnet)
    }

    /// Loads the DHCP client view if it is not, and fills `subnet`'s reservoir (tests); false
    /// if the view did not load within `wait`.
    #[cfg(feature = "testing")]
    pub async fn dhcp_view_fill(&self, subnet: Uuid, wait: std::time::Duration) -> bool {
        self.view.fill(self.pool(), subnet, wait).await
    }

    /// The free addresses of `subnet`'s reservoir in the DHCP client view, in the order they
    /// are offered (tests).
    #[cfg(feature = "testing")]
    pub fn dhcp_view_reservoir(&self, subnet: Uuid) -> Vec<Ipv4Addr> {
        self.view.reservoir(subnet)
    }

    /// The same application with its DHCP client view switched off (`dhcp.client_view =
    /// false`, and tests of the database's own decisions): every DISCOVER goes to the database,
    /// and the view's listener connection is never opened.
    pub fn without_dhcp_view(self) -> Self {
        self.view.switch_off();
        self
    }

    /// Whether the DHCP client view knows `mac` (tests).
    #[cfg(feature = "testing")]
    pub fn dhcp_view_knows(&self, mac: MacAddr) -> bool {
        self.view.knows(mac)
    }

    /// Decides a batch of DHCP requests: new clients' DISCOVERs from the client view where it
    /// can (`dhcp::view`), the rest in one database round trip and one transaction, committed
    /// before this returns. Answers are in the order of `reqs`, each exactly what
    /// `App::dhcp_decide` would have answered for it had the requests come one after the other.
    /// A relayed request is served only through a relay some subnet accepts (a giaddr is
    /// trivially forged): the database answers the others "refused", writes nothing for them,
    /// and they are not answered.
    pub async fn dhcp_decide_batch(
        &self,
        reqs: &[DhcpRequest<'_>],
        timers: LeaseTimers,
        boot: &BootConfig,
        default_boot_server: Ipv4Addr,
    ) -> Vec<Result<DhcpDecision>> {
        if reqs.is_empty() {
            return Vec::new();
        }
        // New clients' DISCOVERs from the client view, where it can; the rest from the database.
        self.view.start(self.pool());
        let mut fast: Vec<Option<plinth_db::leases::LeaseDecision>> =
            Vec::with_capacity(reqs.len());
        for r in reqs {
            let (d, refill) = match self.view.offer(r, &self.offers) {
                view::Offered::Yes(d, refill) => {
                    self.offers.note(r.mac, &d, timers.offer_secs);
                    (Some(*d), refill)
                }
                view::Offered::No(refill) => (None, refill),
            };
            if let Some((subnet, generation)) = refill {
                tokio::spawn(
                    self.view
                        .clone()
                        .refill(self.pool().clone(), subnet, generation),
                );
            }
            fast.push(d);
        }
        let slow: Vec<&DhcpRequest<'_>> = reqs
            .iter()
            .zip(&fast)
            .filter(|(_, d)| d.is_none())
            .map(|(r, _)| r)
            .collect();
        let calls: Vec<plinth_db::leases::LeaseCall<'_>> = slow
            .iter()
            .map(|r| plinth_db::leases::LeaseCall {
                op: r.op.parts().0,
                match_addr: r.match_addr,
                relayed: r.relayed,
                mac: r.mac,
                addr: r.op.parts().1,
                client_id: r.client_id,
                hostname: r.hostname,
                held: None,
            })
            .collect();
        let offer_secs = i32::try_from(timers.offer_secs).unwrap_or(i32::MAX);
        let quarantine_secs = i32::try_from(timers.quarantine_secs).unwrap_or(i32::MAX);
        // Another batch (of this or another instance) answering one of these clients at this
        // moment fails the whole batch: then they are decided one by one, so that only that
        // client is left to the other batch.
        // The book of offers made from memory is read before each call and takes in its
        // answers at once, so that the one-by-one calls after a failed batch see each other's.
        let pool = self.pool();
        let calls = &calls;
        let book = &self.offers;
        let view = &self.view;
        let decided: Vec<Decided> = if calls.is_empty() {
            Vec::new() // (every one answered from the view)
        } else {
            crate::batch::all_or_each(
            calls.len(),
            |some| async move {
                let some = &calls[some];
                let (held, skip) = book.snapshot(some.iter().map(|c| c.mac));
                let some: Vec<plinth_db::leases::LeaseCall<'_>> = some
                    .iter()
                    .zip(held)
                    .map(|(c, held)| plinth_db::leases::LeaseCall { held, ..*c })
                    .collect();
                let mut conn = plinth_db::acquire(pool).await?;
                let decided = plinth_db::leases::decide_batch(
                    &mut conn,
                    &some,
                    &skip,
                    offer_secs,
                    quarantine_secs,
                )
                .await?;
                for (c, d) in some.iter().zip(&decided) {
                    // (A refused relay's packet, its MAC perhaps forged, changes nothing.)
                    if d.outcome.as_deref() != Some(REFUSED) {
                        book.note(c.mac, d, timers.offer_secs);
                    }
                    match d.outcome.as_deref() {
                        Some("ack") => view.learn(c.mac, d.address),
                        Some("offer") if !d.from_memory => view.learn(c.mac, d.address),
                        Some("nak") => view.learn(c.mac, None),
                        _ => {}
                    }
                }
                Ok(decided)
            },
            |e| {
                let conflict = batch_conflict(e);
                if conflict {
                    tracing::debug!(error = %e, items = calls.len(), "lease batch conflict; deciding one by one");
                }
                conflict
            },
            Decided::from,
            Decided::Failed(Error::internal()),
        )
        .await
        .into_iter()
        .map(|d| d.map_or_else(|d| d, |d| Decided::Lease(Box::new(d))))
        .collect()
        };
        let mut decided = decided.into_iter();
        let decided: Vec<Decided> = fast
            .into_iter()
            .map(|f| match f {
                Some(d) => Decided::Lease(Box::new(d)),
                // (`unwrap_or_else`: `missing` logs an internal error when it is called, so
                // only when an answer is really missing)
                None => decided
                    .next()
                    .unwrap_or_else(|| Decided::Failed(crate::missing("dhcp_decide_batch")())),
            })
            .collect();

        refused_relays_warning(reqs, &decided);
        let mut answers = Vec::with_capacity(reqs.len());
        let mut notes = Vec::new();
        let mut discovered: std::collections::HashMap<MacAddr, Uuid> = Default::default();
        for (req, d) in reqs.iter().zip(decided) {
            let d = match d {
                Decided::Lease(d) => d,
                Decided::Race => {
                    tracing::debug!(mac = %req.mac, "lease race with another instance; not answering");
                    answers.push(Ok(answered_elsewhere()));
                    continue;
                }
                Decided::Failed(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            answers.push(
                self.finish_decision(
                    req,
                    *d,
                    boot,
                    default_boot_server,
                    &mut notes,
                    &mut discovered,
                )
                .await,
            );
        }
        if !notes.is_empty() {
            let noted = match self.conn().await {
                Ok(mut conn) => plinth_db::machines::note_pxe_clients(&mut conn, &notes)
                    .await
                    .db(),
                Err(e) => Err(e),
            };
            if let Err(e) = noted {
                // Only a record of what the firmware said; the answers stand.
                tracing::warn!(error = %e.message, "cannot record PXE client details");
            }
        }
        answers
    }

    /// Turns one lease decision into the answer: network settings, the boot action, and the
    /// machine (recording an unknown network-booting MAC as `discovered`).
    async fn finish_decision(
        &self,
        req: &DhcpRequest<'_>,
        d: plinth_db::leases::LeaseDecision,
        boot: &BootConfig,
        default_boot_server: Ipv4Addr,
        notes: &mut Vec<(Uuid, Option<i32>, Option<Uuid>)>,
        discovered: &mut std::collections::HashMap<MacAddr, Uuid>,
    ) -> Result<DhcpDecision> {
        let outcome = match d.outcome.as_deref() {
            Some("offer") => Outcome::Offer,
            Some("ack") => Outcome::Ack,
            Some("nak") => Outcome::Nak,
            _ => Outcome::Ignore,
        };
        let mut reason = d.reason.clone();
        if d.outcome.as_deref() == Some("exhausted") {
            // (a line per packet would let anyone with made-up MACs fill the log)
            static EXHAUSTED: plinth_types::logthrottle::LogThrottle =
                plinth_types::logthrottle::LogThrottle::new(10, std::time::Duration::from_secs(10));
            if let Some(suppressed) = EXHAUSTED.check() {
                tracing::warn!(mac = %req.mac, subnet = ?d.cidr, suppressed, "address pool exhausted");
            }
        }
        let boot_server = d.boot_server;
        let mut machine_id = d.machine_id;
        let mut state = d.machine_state;
        if matches!(outcome, Outcome::Offer | Outcome::Ack) && req.client.wants_boot() {
            match machine_id {
                Some(id) => {
                    notes.push((id, req.client.arch.map(i32::from), req.client.uuid));
                }
                None => {
                    if let Some(id) = discovered.get(&req.mac) {
                        machine_id = Some(*id);
                        state = Some(Verb::Discover.target());
                    } else {
                        match self
                            .discover_machine(&req.mac, &req.client, d.subnet_id)
                            .await
                        {
                            Ok(Some(id)) => {
                                discovered.insert(req.mac, id);
                                machine_id = Some(id);
                                state = Some(Verb::Discover.target());
                            }
                            Ok(None) => {
                                reason.get_or_insert_with(|| "MAC enrolled meanwhile".into());
                            }
                            // Too many new machines this minute: not answered now (the offer
                            // lapses); the client asks again.
                            Err(e) if e.kind == plinth_types::ErrorKind::TooMany => {
                                return Ok(DhcpDecision {
                                    outcome: Outcome::Ignore,
                                    lease: None,
                                    boot: BootAction::None,
                                    boot_server: None,
                                    reason: Some(e.message),
                                    machine_id: None,
                                });
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        let lease = match (outcome, d.prefix_len) {
            (Outcome::Offer | Outcome::Ack, Some(prefix_len)) => Some(LeaseInfo {
                address: d.address,
                lease_secs: d.lease_secs.map(|s| s as u32),
                prefix_len,
                router: d.router,
                dns_servers: d.dns_servers.clone(),
                domain: d.domain.clone(),
            }),
            _ => None,
        };
        let boot_action =
            if matches!(outcome, Outcome::Offer | Outcome::Ack) && req.op != LeaseOp::Inform {
                boot_decision(
                    state,
                    &req.client,
                    d.boot_file.as_deref(),
                    boot,
                    boot_server.unwrap_or(default_boot_server),
                )
            } else {
                BootAction::None
            };
        Ok(DhcpDecision {
            outcome,
            lease,
            boot: boot_action,
            boot_server,
            reason,
            machine_id,
        })
    }

    /// ProxyDHCP: boot information only; another server owns the addresses.
    pub async fn dhcp_proxy_boot(
        &self,
        mac: MacAddr,
        client: &ClientInfo,
        boot: &BootConfig,
        boot_server: Ipv4Addr,
    ) -> Result<BootAction> {
        if !client.wants_boot() {
            return Ok(BootAction::None);
        }
        let mut conn = self.conn().await?;
        let found = plinth_db::machines::boot_info_by_mac(&mut conn, &mac.to_string())
            .await
            .db()?;
        drop(conn);
        let (state, file) = match found {
            Some((id, state, file)) => {
                let mut conn = self.conn().await?;
                plinth_db::machines::note_pxe_clients(
                    &mut conn,
                    &[(id, client.arch.map(i32::from), client.uuid)],
                )
                .await
                .db()?;
                (
                    Some(
                        state
                            .parse::<MachineState>()
                            .map_err(crate::internal("dhcp_proxy_boot"))?,
                    ),
                    file,
                )
            }
            None => {
                self.discover_machine(&mac, client, None).await?;
                (Some(Verb::Discover.target()), None)
            }
        };
        Ok(boot_decision(
            state,
            client,
            file.as_deref(),
            boot,
            boot_server,
        ))
    }

    /// Records an unknown network-booting MAC as a `discovered` machine, once per MAC; at most
    /// [`App::with_discovery_limit`] a minute on this instance (anyone on the provisioning
    /// network can make up MACs), beyond which it is `TooMany` and the machine is recorded when
    /// it asks again.
    pub async fn discover_machine(
        &self,
        mac: &MacAddr,
        client: &ClientInfo,
        subnet_id: Option<Uuid>,
    ) -> Result<Option<Uuid>> {
        self.discoveries.take()?;
        let mut tx = self.begin().await?;
        let inserted = plinth_db::machines::insert_discovered(
            &mut tx,
            *mac,
            client.machine_arch(),
            client.arch.map(i32::from),
            client.uuid,
            subnet_id,
        )
        .await;
        let id = match inserted {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(None),
            // Another instance recorded the same MAC at the same moment.
            Err(e) if e.constraint() == Some("nics_mac_key") => {
                return Ok(None);
            }
            Err(e) => return Err(plinth_db::classify(e)),
        };
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: "system",
                machine_id: Some(id),
                kind: Verb::Discover.as_str(),
                from_state: None,
                to_state: Some(Verb::Discover.target().as_str()),
                details: serde_json::json!({ "mac": mac.to_string(), "pxe_arch": client.arch, "subnet_id": subnet_id }),
            },
        )
        .await
        .db()?;
        tx.commit().await.db()?;
        tracing::info!(%mac, machine_id = %id, "unknown network-booting machine discovered");
        Ok(Some(id))
    }
}

/// New `discovered` machines a minute (0: no limit).
#[derive(Debug, Default)]
pub(crate) struct DiscoveryLimit {
    pub(crate) per_minute: u32,
    window: std::sync::Mutex<Option<(std::time::Instant, u32)>>,
}

impl DiscoveryLimit {
    pub(crate) fn new(per_minute: u32) -> DiscoveryLimit {
        DiscoveryLimit {
            per_minute,
            window: Default::default(),
        }
    }

    fn take(&self) -> Result<()> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = w.get_or_insert((now, 0));
        if now.duration_since(*start) >= std::time::Duration::from_secs(60) {
            (*start, *n) = (now, 0);
        }
        if *n >= self.per_minute {
            if *n == self.per_minute {
                tracing::warn!(
                    per_minute = self.per_minute,
                    "more unknown machines are network-booting than discovery records a minute (boot.discover_per_minute); the rest wait"
                );
            }
            *n = n.saturating_add(1);
            return Err(Error::new(
                plinth_types::ErrorKind::TooMany,
                "discovery_throttled",
                format!(
                    "more than {} unknown machines a minute are network-booting: this one is recorded when it asks again",
                    self.per_minute
                ),
            ));
        }
        *n += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(unknown: UnknownPolicy) -> BootConfig {
        BootConfig {
            bios_binary: "undionly.kpxe".into(),
            efi_binary: "ipxe.efi".into(),
            arm64_binary: None,
            http_base: None,
            http_port: 8080,
            unknown_machines: unknown,
        }
    }

    const SRV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn memory_offer(a: Ipv4Addr) -> plinth_db::leases::LeaseDecision {
        plinth_db::leases::LeaseDecision {
            outcome: Some("offer".into()),
            address: Some(a),
            lease_secs: Some(600),
            subnet_id: None,
            cidr: None,
            prefix_len: Some(16),
            router: None,
            dns_servers: Vec::new(),
            domain: None,
            boot_server: None,
            machine_id: None,
            machine_state: None,
            boot_file: None,
            reason: None,
            from_memory: true,
        }
    }

    /// The book of offers stays bounded, and lapsed offers leave it without a scan of the
    /// whole book per offer (a storm past saturation keeps it full).
    #[test]
    fn the_offer_book_is_bounded_and_lapses_in_order() {
        let addr = |n: u32| Ipv4Addr::from(0x0a00_0000 + n);
        let mac = |n: u32| MacAddr([0x52, 0x54, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        let book = OfferBook::default();
        for n in 0..5000 {
            book.note(mac(n), &memory_offer(addr(n)), 60);
        }
        {
            let b = book.lock();
            assert_eq!(
                (b.open.len(), b.by_addr.len()),
                (OfferBook::MAX, OfferBook::MAX)
            );
        }
        assert!(book.has_open(mac(0)) && book.is_offered(addr(0)));
        assert!(!book.has_open(mac(4999)), "past the bound: not remembered");
        // offered again, another address: the first is no longer this client's
        book.note(mac(1), &memory_offer(addr(9999)), 60);
        assert!(!book.is_offered(addr(1)) && book.is_offered(addr(9999)));
        // bound: closed
        let mut bound = memory_offer(addr(9999));
        bound.from_memory = false;
        book.note(mac(1), &bound, 60);
        assert!(!book.has_open(mac(1)) && !book.is_offered(addr(9999)));

        // Three clients offered again and again: the queue of lapsing offers (stale entries
        // included) stays within its bound.
        let book = OfferBook::default();
        for n in 0..20_000 {
            book.note(mac(n % 3), &memory_offer(addr(n)), 60);
        }
        {
            let b = book.lock();
            assert_eq!((b.open.len(), b.by_addr.len()), (3, 3));
            assert!(
                b.lapsing.len() <= 2 * OfferBook::MAX + 1,
                "{}",
                b.lapsing.len()
            );
        }
        // Offers that lapse at once leave the book with the next offer.
        let book = OfferBook::default();
        for n in 0..5000 {
            book.note(mac(n), &memory_offer(addr(n)), 0);
        }
        let b = book.lock();
        assert!(
            b.open.len() <= 1 && b.lapsing.len() <= 1,
            "{}",
            b.open.len()
        );
        assert_eq!(b.by_addr.len(), b.open.len());
    }

    fn pxe(arch: u16) -> ClientInfo {
        ClientInfo {
            arch: Some(arch),
            pxe: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_boot_table() {
        use MachineState as S;
        let tftp = |f: &str| BootAction::Tftp { file: f.into() };
        let http = |u: &str| BootAction::Http { url: u.into() };
        let ipxe = ClientInfo {
            arch: Some(0),
            pxe: true,
            ipxe: true,
            ..Default::default()
        };
        let httpc = ClientInfo {
            arch: Some(16),
            http_client: true,
            ..Default::default()
        };
        let arm = pxe(11);
        let plain = ClientInfo::default();
        let script = http("http://10.0.0.2:8080/boot/ipxe?mac=${net0/mac}&platform=${platform}");
        let boot = cfg(UnknownPolicy::Boot);
        #[rustfmt::skip]
        let table: Vec<(Option<S>, ClientInfo, Option<&str>, BootAction)> = vec![
            (Some(S::Inspecting), pxe(0), None, tftp("undionly.kpxe")),
            (Some(S::Inspecting), pxe(7), None, tftp("ipxe.efi")),
            (Some(S::Cleaning), pxe(9), None, tftp("ipxe.efi")),
            (Some(S::Decommissioning), pxe(0), None, tftp("undionly.kpxe")),
            (Some(S::Deploying), ipxe.clone(), None, script.clone()),
            (Some(S::Inspecting), httpc.clone(), None, http("http://10.0.0.2:8080/boot/ipxe.efi")),
            (Some(S::Inspecting), arm.clone(), None, BootAction::None),
            (Some(S::Inspecting), pxe(6), None, BootAction::None),
            (Some(S::Inspecting), plain.clone(), None, BootAction::None),
            (Some(S::Inspecting), pxe(0), Some("custom.kpxe"), tftp("custom.kpxe")),
            (Some(S::Inspecting), pxe(7), Some("http://x/y.efi"), http("http://x/y.efi")),
            (Some(S::Inspecting), ipxe.clone(), Some("custom.kpxe"), script.clone()),
            (Some(S::Ready), pxe(0), None, BootAction::None),
            (Some(S::Deployed), ipxe.clone(), None, BootAction::None),
            (Some(S::Enrolled), pxe(0), None, BootAction::None),
            (Some(S::Decommissioned), pxe(0), None, BootAction::None),
            (Some(S::Discovered), pxe(0), None, tftp("undionly.kpxe")),
            (None, pxe(7), None, tftp("ipxe.efi")),
        ];
        for (state, client, over, want) in table {
            assert_eq!(
                boot_decision(state, &client, over, &boot, SRV),
                want,
                "{state:?} {client:?} {over:?}"
            );
        }
        let record = cfg(UnknownPolicy::Record);
        assert_eq!(
            boot_decision(None, &pxe(0), None, &record, SRV),
            BootAction::None
        );
        assert_eq!(
            boot_decision(Some(S::Discovered), &pxe(0), None, &record, SRV),
            BootAction::None
        );
        let mut arm_cfg = cfg(UnknownPolicy::Boot);
        arm_cfg.arm64_binary = Some("arm64/ipxe.efi".into());
        arm_cfg.efi_binary = "snponly.efi".into();
        assert_eq!(
            boot_decision(None, &arm, None, &arm_cfg, SRV),
            tftp("arm64/ipxe.efi")
        );
        assert_eq!(
            boot_decision(None, &pxe(7), None, &arm_cfg, SRV),
            tftp("snponly.efi")
        );
    }
}
