//! Machines' serial consoles: IPMI Serial over LAN, one session per machine shared by every
//! viewer, and the bounded recording kept while a machine works through a ramdisk.
//!
//! The [`Consoles`] hub of an instance holds at most one SOL session per machine (a BMC
//! allows one): a task per machine opens it, hands its output to every attached viewer (a
//! broadcast, and the last [`BACKLOG`] bytes for a viewer who arrives, starting from the
//! recording's tail when the session opens, so that a reloaded page is not blank), writes what any
//! viewer types, sends breaks, opens the session again when it drops, and closes it when
//! nobody watches and no recording is due. Across instances the session belongs to the
//! instance holding the machine's row in `console_leases`, renewed while the session is open;
//! a viewer on another instance follows the recording from the database, read-only (see
//! docs/decisions.md).
//!
//! Recording: while a machine is in one of [`RECORDED_STATES`], the `console recording`
//! reconciler pass ([`App::record_consoles`]) keeps its console open whether or not anyone
//! watches, and its output (from the session's backlog on, when a viewer's session was open
//! before the pass came by) is appended to `console_chunks` every
//! [`ConsoleSettings::flush`], trimmed to the last [`ConsoleSettings::max_log_bytes`]. The
//! recording stays with the machine until it is released; the stuck-machine pass quotes its
//! last lines ([`App::console_last_lines`]).
//!
//! No database transaction is held across a BMC call: the lease, the target and the chunks are
//! short statements of their own.

pub mod text;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use plinth_bmc::{BmcTarget, Connector};
use plinth_types::api::BmcProtocol;
use plinth_types::{Error, MachineState};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result};

/// While a machine is in one of these states plinth records its console.
pub const RECORDED_STATES: [MachineState; 4] = [
    MachineState::Inspecting,
    MachineState::Cleaning,
    MachineState::Deploying,
    MachineState::Decommissioning,
];

/// The output a viewer who attaches is given first.
pub const BACKLOG: usize = 64 * 1024;
/// The most one input message may carry.
pub const MAX_INPUT: usize = 4096;
/// Input allowed per viewer: this many bytes a second, in bursts of [`INPUT_BURST`].
pub const INPUT_RATE: f64 = 8192.0;
pub const INPUT_BURST: f64 = 32768.0;

/// `[console]` of the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// The recording of each machine keeps its last this many bytes.
    pub max_log_bytes: u64,
    /// How often recorded output is written to the database.
    #[serde(rename = "flush_secs", deserialize_with = "plinth_types::de::secs")]
    pub flush: Duration,
    /// The console lease: an instance that stops renewing loses the session to another after
    /// this long.
    #[serde(rename = "lease_secs", deserialize_with = "plinth_types::de::secs")]
    pub lease: Duration,
    /// How long to wait before opening a session again after it failed or dropped.
    #[serde(rename = "reconnect_secs", deserialize_with = "plinth_types::de::secs")]
    pub reconnect: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            max_log_bytes: 4 * 1024 * 1024,
            flush: Duration::from_secs(1),
            lease: Duration::from_secs(15),
            reconnect: Duration::from_secs(2),
        }
    }
}

/// Where a console is, as its viewers are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Status {
    /// Opening the session.
    Connecting,
    /// The session is open: what is typed reaches the machine.
    Open,
    /// The session failed or dropped; plinth tries again.
    Reconnecting(String),
    /// plinth cannot open this console (no BMC, a Redfish BMC without an IPMI endpoint, ...).
    Unavailable(String),
    /// Another plinth instance holds the session: the recording is followed, input is dropped.
    Elsewhere(String),
}

/// What a viewer sends to the machine.
#[derive(Debug)]
enum Input {
    Data(Vec<u8>),
    Break,
}

/// One machine's console on this instance.
struct Shared {
    out: broadcast::Sender<Arc<[u8]>>,
    input: mpsc::Sender<Input>,
    /// Attached viewers: (attachment id, principal name). Changed under the hub's lock.
    viewers: watch::Sender<Vec<(u64, String)>>,
    status: watch::Sender<Status>,
    recording: AtomicBool,
    /// Recording has just started: what the session already printed (the backlog, which a
    /// viewer's session gathered before the recording pass came by) goes into the recording
    /// first, so that the recording does not begin seconds into the machine's busy state.
    seed: AtomicBool,
    /// Input messages sent and not yet written to the session (or dropped): the session stays
    /// open until they are, so that what a viewer typed just before leaving still arrives.
    queued: Arc<AtomicUsize>,
    backlog: StdMutex<VecDeque<u8>>,
    /// Wakes the machine's task when a viewer leaves or recording stops.
    changed: Notify,
}

impl Shared {
    fn push_output(&self, data: &[u8]) {
        {
            let mut b = self
                .backlog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            b.extend(data);
            let over = b.len().saturating_sub(BACKLOG);
            b.drain(..over);
        }
        self.out.send(Arc::from(data)).ok();
    }

    /// The backlog, when recording has just started (see `seed`).
    fn take_seed(&self) -> Option<Vec<u8>> {
        if !self.recording.load(Ordering::SeqCst) || !self.seed.swap(false, Ordering::SeqCst) {
            return None;
        }
        let b = self
            .backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(b.iter().copied().collect())
    }

    fn wanted(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
            || !self.viewers.borrow().is_empty()
            || self.queued.load(Ordering::SeqCst) > 0
    }
}

struct Hub {
    instance: Uuid,
    connector: Arc<dyn Connector>,
    settings: ConsoleSettings,
    machines: StdMutex<HashMap<Uuid, Arc<Shared>>>,
    next_id: AtomicU64,
}

/// The consoles of this instance; cheap to clone.
#[derive(Clone)]
pub struct Consoles(Arc<Hub>);

impl std::fmt::Debug for Consoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consoles")
            .field("instance", &self.0.instance)
            .field("settings", &self.0.settings)
            .finish()
    }
}

impl Consoles {
    /// A hub that reaches BMCs through `connector`.
    pub fn new(connector: Arc<dyn Connector>, settings: ConsoleSettings) -> Consoles {
        Consoles(Arc::new(Hub {
            instance: Uuid::new_v4(),
            connector,
            settings,
            machines: StdMutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn settings(&self) -> &ConsoleSettings {
        &self.0.settings
    }

    /// This instance's id in `console_leases`.
    pub fn instance(&self) -> Uuid {
        self.0.instance
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Shared>>> {
        self.0
            .machines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The machine's console, started when it was not running; `f` runs under the hub's lock
    /// (so that the machine's task cannot end between the lookup and `f`).
    fn with_console<T>(&self, app: &App, id: Uuid, f: impl FnOnce(&Arc<Shared>) -> T) -> T {
        let mut map = self.lock();
        if let Some(s) = map.get(&id) {
            return f(s);
        }
        let (out, _) = broadcast::channel(1024);
        let (input, input_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            out,
            input,
            viewers: watch::Sender::new(Vec::new()),
            status: watch::Sender::new(Status::Connecting),
            recording: AtomicBool::new(false),
            seed: AtomicBool::new(false),
            queued: Arc::new(AtomicUsize::new(0)),
            backlog: StdMutex::new(VecDeque::new()),
            changed: Notify::new(),
        });
        map.insert(id, shared.clone());
        let r = f(&shared);
        tokio::spawn(run(app.clone(), self.clone(), id, shared, input_rx));
        r
    }

    /// Ends the machine's task when nobody wants the console any more: true when it did.
    fn retire(&self, id: Uuid, shared: &Arc<Shared>) -> bool {
        let mut map = self.lock();
        if shared.wanted() {
            return false;
        }
        if map.get(&id).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            map.remove(&id);
        }
        true
    }

    /// Machines whose console this instance has open or is opening, and their status.
    pub fn open(&self) -> Vec<(Uuid, Status)> {
        self.lock()
            .iter()
            .map(|(id, s)| (*id, s.status.borrow().clone()))
            .collect()
    }

    /// The names of the viewers attached to the machine's console on this instance.
    pub fn viewers(&self, id: Uuid) -> Vec<String> {
        self.lock()
            .get(&id)
            .map(|s| s.viewers.borrow().iter().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default()
    }
}

/// A viewer attached to a machine's console. Dropping it detaches (the event is written in
/// the background); [`Attachment::detach`] does it in order.
pub struct Attachment {
    pub machine_id: Uuid,
    id: u64,
    who: String,
    /// What the console printed before the viewer attached (up to [`BACKLOG`] bytes).
    pub backlog: Vec<u8>,
    output: broadcast::Receiver<Arc<[u8]>>,
    status: watch::Receiver<Status>,
    viewers: watch::Receiver<Vec<(u64, String)>>,
    input: mpsc::Sender<Input>,
    queued: Arc<AtomicUsize>,
    app: App,
    detached: bool,
    tokens: f64,
    refilled: tokio::time::Instant,
}

/// What an attached viewer is told next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Output(Arc<[u8]>),
    /// The viewer fell behind and this many chunks of output were skipped.
    Lagged(u64),
    Status(Status),
    /// The names of the viewers attached now (on this instance), one per attachment.
    Viewers(Vec<String>),
}

impl Attachment {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn viewers(&self) -> Vec<String> {
        self.viewers
            .borrow()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The next thing to tell the viewer (output, a status change, who is attached).
    pub async fn next(&mut self) -> Update {
        tokio::select! {
            biased;
            r = self.status.changed() => match r {
                Ok(()) => Update::Status(self.status.borrow_and_update().clone()),
                Err(_) => std::future::pending().await,
            },
            r = self.viewers.changed() => match r {
                Ok(()) => Update::Viewers(self.viewers.borrow_and_update().iter().map(|(_, n)| n.clone()).collect()),
                Err(_) => std::future::pending().await,
            },
            r = self.output.recv() => match r {
                Ok(b) => Update::Output(b),
                Err(broadcast::error::RecvError::Lagged(n)) => Update::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
        }
    }

    fn take_tokens(&mut self, n: usize) -> Result<()> {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * INPUT_RATE)
            .min(INPUT_BURST);
        self.refilled = now;
        if n > MAX_INPUT {
            return Err(Error::invalid(
                "console_input_too_large",
                format!("console input is sent in messages of at most {MAX_INPUT} bytes"),
            ));
        }
        if (n as f64) > self.tokens {
            return Err(Error::invalid(
                "console_input_too_fast",
                format!("console input is limited to {INPUT_RATE} bytes a second"),
            ));
        }
        self.tokens -= n as f64;
        Ok(())
    }

    /// Sends what the viewer typed to the machine (dropped while the session is not open).
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.take_tokens(data.len())?;
        self.queue(Input::Data(data.to_vec())).await
    }

    async fn queue(&self, input: Input) -> Result<()> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.input.send(input).await.map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            Error::unavailable("the console is closed")
        })
    }

    /// Sends a break to the machine's serial port.
    pub async fn send_break(&mut self) -> Result<()> {
        self.take_tokens(1)?;
        self.queue(Input::Break).await
    }

    fn leave(&mut self) -> bool {
        if self.detached {
            return false;
        }
        self.detached = true;
        let consoles = self.app.consoles();
        let map = consoles.lock();
        if let Some(s) = map.get(&self.machine_id) {
            s.viewers.send_modify(|v| v.retain(|(i, _)| *i != self.id));
            s.changed.notify_one();
        }
        true
    }

    /// Detaches, and records the `console_detached` event.
    /// The event is written before the viewer leaves the list, so that the others see it
    /// leave only once it is recorded.
    pub async fn detach(mut self) -> Result<()> {
        if self.detached {
            return Ok(());
        }
        let recorded = detached_event(&self.app, self.machine_id, &self.who).await;
        self.leave();
        recorded
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.leave()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (app, id, who) = (self.app.clone(), self.machine_id, self.who.clone());
            rt.spawn(async move {
                if let Err(e) = detached_event(&app, id, &who).await {
                    tracing::warn!(machine_id = %id, error = %e.message, "console_detached not recorded");
                }
            });
        }
    }
}

async fn detached_event(app: &App, id: Uuid, who: &str) -> Result<()> {
    let mut conn = app.conn().await?;
    crate::record_event_as(
        &mut conn,
        who,
        Some(id),
        "console_detached",
        serde_json::json!({}),
    )
    .await
}

/// Appends the console's last lines to a failure reason: `; console: "…" / "…"` (at most
/// three lines, 300 characters). A recording that cannot be read leaves the reason as it is.
pub(crate) async fn quote_last_lines(app: &App, id: Uuid, reason: &mut String) {
    match app.console_last_lines(id, 3, 300).await {
        Ok(lines) if !lines.is_empty() => {
            let quoted: Vec<String> = lines.iter().map(|l| format!("{l:?}")).collect();
            reason.push_str("; console: ");
            reason.push_str(&quoted.join(" / "));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(machine_id = %id, error = %e.message, "console recording not read")
        }
    }
}

/// The console of a machine as plinth can reach it, or why it cannot.
pub(crate) enum Reach {
    Target(Box<BmcTarget>),
    Unavailable(String),
}

impl App {
    pub fn consoles(&self) -> &Consoles {
        &self.consoles
    }

    /// The same application with its consoles reached through `connector`.
    pub fn with_consoles(
        mut self,
        connector: Arc<dyn Connector>,
        settings: ConsoleSettings,
    ) -> Self {
        self.consoles = Consoles::new(connector, settings);
        self
    }

    /// Attaches `who` to the machine's console: operators and admins, a client to the
    /// machines of its allocations. The attachment is an event.
    pub async fn attach_console(&self, who: &Principal, id: Uuid) -> Result<Attachment> {
        who.require(Permission::AttachConsole)?;
        let mut conn = self.conn().await?;
        let row = self.visible_row(&mut conn, who, id).await?;
        if row.state == MachineState::Decommissioned {
            return Err(Error::conflict(
                "decommissioned",
                "a decommissioned machine has no console plinth may open",
            ));
        }
        crate::record_event_as(
            &mut conn,
            &who.name,
            Some(id),
            "console_attached",
            serde_json::json!({}),
        )
        .await?;
        drop(conn);
        let consoles = self.consoles().clone();
        let attach_id = consoles.0.next_id.fetch_add(1, Ordering::Relaxed);
        let att = consoles.with_console(self, id, |s| {
            s.viewers
                .send_modify(|v| v.push((attach_id, who.name.clone())));
            let backlog: Vec<u8> = s
                .backlog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .copied()
                .collect();
            let mut status = s.status.subscribe();
            status.mark_changed();
            Attachment {
                machine_id: id,
                id: attach_id,
                who: who.name.clone(),
                backlog,
                output: s.out.subscribe(),
                status,
                viewers: s.viewers.subscribe(),
                input: s.input.clone(),
                queued: s.queued.clone(),
                app: self.clone(),
                detached: false,
                tokens: INPUT_BURST,
                refilled: tokio::time::Instant::now(),
            }
        });
        tracing::info!(machine_id = %id, who = %who.name, "console attached");
        Ok(att)
    }

    /// The machine's console recording, its last `max_bytes` at most: operators, admins and
    /// viewers; a client for its own machines.
    pub async fn console_log(&self, who: &Principal, id: Uuid, max_bytes: u64) -> Result<Vec<u8>> {
        who.require(Permission::ReadConsoleLog)?;
        let mut conn = self.conn().await?;
        self.visible_row(&mut conn, who, id).await?;
        let bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let mut log = plinth_db::console::tail(&mut conn, id, bytes).await.db()?;
        let over = log
            .len()
            .saturating_sub(usize::try_from(max_bytes).unwrap_or(usize::MAX));
        log.drain(..over);
        Ok(log)
    }

    /// Why the machine's console cannot be opened, or `None` when it can (for showing before
    /// anyone attaches).
    pub async fn console_unavailable(&self, who: &Principal, id: Uuid) -> Result<Option<String>> {
        let mut conn = self.conn().await?;
        self.visible_row(&mut conn, who, id).await?;
        drop(conn);
        Ok(match self.console_reach(id).await? {
            Reach::Target(_) => None,
            Reach::Unavailable(why) => Some(why),
        })
    }

    /// Records (or with `None` removes) the IPMI console endpoint of the machine's Redfish BMC.
    pub async fn set_console_endpoint(
        &self,
        who: &Principal,
        id: Uuid,
        e: Option<plinth_types::api::ConsoleEndpoint>,
    ) -> Result<plinth_types::api::ConsoleInfo> {
        who.require(Permission::ManageMachines)?;
        if let Some(e) = &e {
            crate::validate::bmc_address(&e.address)?;
            // Either may be the BMC's own (the other one given).
            crate::validate::bmc_credentials(
                e.username.as_deref().unwrap_or("-"),
                e.password.as_deref().unwrap_or("-"),
            )?;
        }
        let mut tx = self.begin().await?;
        let row = self.visible_row(&mut tx, who, id).await?;
        if row.state == MachineState::Decommissioned {
            return Err(Error::conflict(
                "decommissioned",
                "a decommissioned machine has no BMC plinth may use",
            ));
        }
        let Some(t) = plinth_db::console::target(&mut tx, id).await.db()? else {
            return Err(Error::conflict(
                "no_bmc",
                "the machine has no BMC: enroll its BMC first",
            ));
        };
        if t.protocol == BmcProtocol::Ipmi && e.is_some() {
            return Err(Error::conflict(
                "ipmi_bmc",
                "an IPMI BMC's console is the BMC itself: a console endpoint is for Redfish BMCs",
            ));
        }
        let sealed = e
            .as_ref()
            .and_then(|e| e.password.as_ref())
            .map(|p| self.bmc_key.encrypt(id, p));
        let new = e.as_ref().map(|e| plinth_db::console::NewEndpoint {
            address: &e.address,
            username: e.username.as_deref(),
            password: sealed.as_ref().map(|(n, c)| (n.as_slice(), c.as_slice())),
        });
        plinth_db::console::set_endpoint(&mut tx, id, new.as_ref())
            .await
            .db()?;
        crate::record_event_as(
            &mut tx,
            &who.name,
            Some(id),
            "console_endpoint_set",
            serde_json::json!({ "address": e.as_ref().map(|e| e.address.clone()) }),
        )
        .await?;
        tx.commit().await.db()?;
        self.console_info(who, id).await
    }

    /// The machine's console: where plinth reaches it, or why it cannot; who is attached here;
    /// the size of its recording.
    pub async fn console_info(
        &self,
        who: &Principal,
        id: Uuid,
    ) -> Result<plinth_types::api::ConsoleInfo> {
        who.require(Permission::ReadConsoleLog)?;
        let (endpoint, log_bytes) = {
            let mut conn = self.conn().await?;
            self.visible_row(&mut conn, who, id).await?;
            let t = plinth_db::console::target(&mut conn, id).await.db()?;
            let size = plinth_db::console::size(&mut conn, id).await.db()?;
            let endpoint = t.and_then(|t| match (t.protocol, t.console_address) {
                (_, Some(a)) => Some(a),
                (BmcProtocol::Ipmi, None) => Some(t.address),
                (BmcProtocol::Redfish, None) => None,
            });
            (endpoint, size)
        };
        let unavailable = match self.console_reach(id).await? {
            Reach::Target(_) => None,
            Reach::Unavailable(why) => Some(why),
        };
        Ok(plinth_types::api::ConsoleInfo {
            endpoint: endpoint.filter(|_| who.owner_scope().is_none()),
            unavailable,
            viewers: self.consoles().viewers(id),
            log_bytes,
        })
    }

    /// The last lines of the machine's recording, readable (escape sequences and control
    /// characters removed): at most `lines` lines and `max_chars` characters.
    pub async fn console_last_lines(
        &self,
        id: Uuid,
        lines: usize,
        max_chars: usize,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let tail = plinth_db::console::tail(&mut conn, id, 8192).await.db()?;
        Ok(text::last_lines(&tail, lines, max_chars))
    }

    /// How to reach the machine's console: its IPMI BMC, or the IPMI endpoint recorded for its
    /// Redfish BMC (with the BMC's credentials unless the endpoint has its own).
    pub(crate) async fn console_reach(&self, id: Uuid) -> Result<Reach> {
        let t = {
            let mut conn = self.conn().await?;
            plinth_db::console::target(&mut conn, id).await.db()?
        };
        let Some(t) = t else {
            return Ok(Reach::Unavailable("the machine has no BMC".into()));
        };
        let (address, username, nonce, ct) = match (t.protocol, t.console_address) {
            (_, Some(addr)) => match (
                t.console_username,
                t.console_password_nonce,
                t.console_password_ciphertext,
            ) {
                (u, Some(n), Some(c)) => (addr, u.unwrap_or(t.username), n, c),
                (u, _, _) => (
                    addr,
                    u.unwrap_or(t.username),
                    t.password_nonce,
                    t.password_ciphertext,
                ),
            },
            (BmcProtocol::Ipmi, None) => (
                t.address,
                t.username,
                t.password_nonce,
                t.password_ciphertext,
            ),
            (BmcProtocol::Redfish, None) => {
                return Ok(Reach::Unavailable(
                    "the machine's BMC speaks Redfish and no IPMI console endpoint is recorded for it (set the BMC's console address)".into(),
                ));
            }
        };
        let password = match self.bmc_key.decrypt(id, &nonce, &ct) {
            Ok(p) => p,
            Err(e) => return Ok(Reach::Unavailable(e.to_string())),
        };
        Ok(Reach::Target(Box::new(BmcTarget {
            machine_id: id,
            protocol: BmcProtocol::Ipmi,
            address,
            username,
            password,
            verify_tls: true,
            plain_http: false,
        })))
    }

    /// The `console recording` pass: keeps open the console of every machine in one of
    /// [`RECORDED_STATES`] that plinth can reach, and lets go of those that left them.
    /// Returns how many are recorded.
    pub async fn record_consoles(&self) -> Result<usize> {
        let states: Vec<&str> = RECORDED_STATES.iter().map(|s| s.as_str()).collect();
        let due: HashSet<Uuid> = {
            let mut conn = self.conn().await?;
            plinth_db::console::recordable(&mut conn, &states)
                .await
                .db()?
                .into_iter()
                .collect()
        };
        let consoles = self.consoles().clone();
        let running: Vec<(Uuid, Arc<Shared>)> = consoles
            .lock()
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        for (id, s) in running {
            if !due.contains(&id) && s.recording.swap(false, Ordering::SeqCst) {
                s.changed.notify_one();
            }
        }
        for id in &due {
            consoles.with_console(self, *id, |s| {
                if !s.recording.swap(true, Ordering::SeqCst) {
                    s.seed.store(true, Ordering::SeqCst);
                }
            });
        }
        Ok(due.len())
    }
}

/// The task of one machine's console on this instance: lease, session, pump; again after a
/// failure; until nobody wants it.
async fn run(
    app: App,
    consoles: Consoles,
    id: Uuid,
    shared: Arc<Shared>,
    input_rx: mpsc::Receiver<Input>,
) {
    let settings = consoles.0.settings.clone();
    let me = consoles.0.instance;
    let (writer_tx, writer_rx) = watch::channel(None);
    let input = tokio::spawn(forward_input(input_rx, writer_rx, shared.queued.clone()));
    let mut follow_from: Option<i64> = None;
    // Whether the viewers have the recording's tail (a page reloaded when the machine changed
    // state, or a viewer who arrives after the session closed, sees what the machine printed
    // last instead of an empty terminal).
    let mut seeded = false;
    loop {
        if consoles.retire(id, &shared) {
            break;
        }
        let held = async {
            let mut conn = app.conn().await?;
            plinth_db::console::take_lease(&mut conn, id, me, settings.lease.as_secs_f64())
                .await
                .db()
        }
        .await;
        match held {
            Ok(true) => {
                follow_from = None;
                if !seeded {
                    seeded = seed(&app, id, &shared).await;
                }
            }
            Ok(false) => {
                seeded = true;
                shared.status.send_replace(Status::Elsewhere(
                    "another plinth instance holds this console: its recording is shown, input is not sent".into(),
                ));
                follow_from = follow(&app, id, &shared, follow_from).await;
                wait(&shared, settings.flush).await;
                continue;
            }
            Err(e) => {
                shared
                    .status
                    .send_replace(Status::Reconnecting(e.message.clone()));
                wait(&shared, settings.reconnect).await;
                continue;
            }
        }
        let target = match app.console_reach(id).await {
            Ok(Reach::Target(t)) => t,
            Ok(Reach::Unavailable(why)) => {
                shared.status.send_replace(Status::Unavailable(why));
                release(&app, id, me).await;
                wait(&shared, settings.reconnect * 5).await;
                continue;
            }
            Err(e) => {
                shared
                    .status
                    .send_replace(Status::Reconnecting(e.message.clone()));
                wait(&shared, settings.reconnect).await;
                continue;
            }
        };
        if !matches!(*shared.status.borrow(), Status::Reconnecting(_)) {
            shared.status.send_replace(Status::Connecting);
        }
        let session = match consoles.0.connector.sol(&target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(machine_id = %id, error = %e, "console: SOL not opened");
                shared
                    .status
                    .send_replace(Status::Reconnecting(format!("the BMC: {e}")));
                release(&app, id, me).await;
                wait(&shared, settings.reconnect).await;
                continue;
            }
        };
        tracing::info!(machine_id = %id, "console: SOL session open");
        writer_tx.send_replace(Some(session.writer()));
        shared.status.send_replace(Status::Open);
        let why = pump(&app, &consoles, id, &shared, session).await;
        writer_tx.send_replace(None);
        match why {
            None => {}
            Some(why) => {
                tracing::info!(machine_id = %id, %why, "console: SOL session ended");
                shared.status.send_replace(Status::Reconnecting(why));
                release(&app, id, me).await;
                wait(&shared, settings.reconnect).await;
            }
        }
    }
    release(&app, id, me).await;
    input.abort();
    tracing::debug!(machine_id = %id, "console: closed");
}

/// Sleeps `d`, or less when the console is no longer wanted.
async fn wait(shared: &Shared, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shared.changed.notified() => {}
    }
}

async fn release(app: &App, id: Uuid, me: Uuid) {
    if let Ok(mut conn) = app.conn().await {
        plinth_db::console::release_lease(&mut conn, id, me)
            .await
            .ok();
    }
}

/// Another instance holds the session: the recording's new chunks go to the viewers. Returns
/// where to continue.
async fn follow(app: &App, id: Uuid, shared: &Shared, from: Option<i64>) -> Option<i64> {
    let mut conn = app.conn().await.ok()?;
    let first = from.is_none();
    let chunks = plinth_db::console::chunks_after(&mut conn, id, from.unwrap_or(0))
        .await
        .ok()?;
    let last = chunks.last().map(|(s, _)| *s).or(from).unwrap_or(0);
    let mut data: Vec<u8> = chunks.into_iter().flat_map(|(_, d)| d).collect();
    if first {
        // A new follower starts with the backlog's worth, not the whole recording.
        let over = data.len().saturating_sub(BACKLOG);
        data.drain(..over);
    }
    if !data.is_empty() {
        shared.push_output(&data);
    }
    Some(last)
}

/// This instance holds the session and nothing has been printed yet: the recording's last
/// [`BACKLOG`] bytes go to the viewers first. False when the recording could not be read.
async fn seed(app: &App, id: Uuid, shared: &Shared) -> bool {
    let fresh = shared
        .backlog
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty();
    if !fresh {
        return true;
    }
    let Ok(mut conn) = app.conn().await else {
        return false;
    };
    let Ok(mut data) = plinth_db::console::tail(&mut conn, id, BACKLOG as i64).await else {
        return false;
    };
    let over = data.len().saturating_sub(BACKLOG);
    data.drain(..over);
    if !data.is_empty() {
        shared.push_output(&data);
    }
    true
}

/// Writes viewers' input to the session open now (dropped while none is).
async fn forward_input(
    mut rx: mpsc::Receiver<Input>,
    writer: watch::Receiver<Option<plinth_bmc::ipmi::sol::SolWriter>>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(i) = rx.recv().await {
        let w = writer.borrow().clone();
        if let Some(w) = w {
            let r = match i {
                Input::Data(d) => w.write(&d).await,
                Input::Break => w.send_break().await,
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "console input not delivered");
            }
        }
        queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Moves output from the session to the viewers and the recording, renews the lease, until
/// the session ends (`Some(why)`) or nobody wants it (`None`, the session closed).
async fn pump(
    app: &App,
    consoles: &Consoles,
    id: Uuid,
    shared: &Shared,
    mut session: plinth_bmc::ipmi::sol::SolSession,
) -> Option<String> {
    let settings = &consoles.0.settings;
    let me = consoles.0.instance;
    let max_log = i64::try_from(settings.max_log_bytes).unwrap_or(i64::MAX);
    let mut pending: Vec<u8> = Vec::new();
    let mut flush = tokio::time::interval(settings.flush.max(Duration::from_millis(10)));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew = tokio::time::interval((settings.lease / 3).max(Duration::from_millis(100)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.reset();
    let why = loop {
        tokio::select! {
            chunk = session.read() => match chunk {
                Some(c) => {
                    // (the backlog before this chunk: the chunk follows it)
                    if let Some(seed) = shared.take_seed() {
                        pending.extend_from_slice(&seed);
                    }
                    shared.push_output(&c);
                    if shared.recording.load(Ordering::SeqCst) {
                        pending.extend_from_slice(&c);
                    }
                }
                None => {
                    break Some(session.ended().map(|e| e.to_string()).unwrap_or_else(|| "the SOL session ended".into()));
                }
            },
            _ = flush.tick() => {
                if let Some(seed) = shared.take_seed() {
                    pending.extend_from_slice(&seed);
                }
                if !pending.is_empty() {
                    match app.conn().await {
                        Ok(mut conn) => match plinth_db::console::append(&mut conn, id, &pending, max_log).await {
                            Ok(()) => pending.clear(),
                            Err(e) => tracing::warn!(machine_id = %id, error = %e, "console recording not written; kept for the next flush"),
                        },
                        Err(e) => tracing::warn!(machine_id = %id, error = %e.message, "console recording not written; kept for the next flush"),
                    }
                    // Bounded even while the database is away.
                    let over = pending.len().saturating_sub(settings.max_log_bytes as usize);
                    pending.drain(..over);
                }
                if !shared.wanted() {
                    break None;
                }
            }
            _ = renew.tick() => {
                let held = match app.conn().await {
                    Ok(mut conn) => plinth_db::console::take_lease(&mut conn, id, me, settings.lease.as_secs_f64()).await.ok(),
                    Err(_) => None,
                };
                if held == Some(false) {
                    break Some("another plinth instance took the console over".into());
                }
            }
            _ = shared.changed.notified() => {
                if !shared.wanted() {
                    break None;
                }
            }
        }
    };
    if !pending.is_empty()
        && let Ok(mut conn) = app.conn().await
    {
        plinth_db::console::append(&mut conn, id, &pending, max_log)
            .await
            .ok();
    }
    if why.is_none() {
        session.close().await.ok();
    }
    why
}
