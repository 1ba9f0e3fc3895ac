//! plinth-core: the application. Every operation the API, the CLI and (later) the DHCP
//! server and workers perform on the inventory lives here: validation, authorization,
//! lifecycle transitions with their events, allocations, BMC secret handling.
//!
//! It decides; plinth-db executes SQL. It opens no protocol sockets and knows nothing of
//! HTTP: it returns [`plinth_types::Error`], which plinth-api maps to a status.

pub mod agent;
pub mod allocations;
pub mod auth;
pub mod batch;
pub mod bios;
pub mod boot;
pub mod clean;
pub mod console;
mod convert;
pub mod credentials;
pub mod deploy;
pub mod dhcp;
pub mod events;
pub mod files;
pub mod firmware;
pub mod images;
pub mod inventory;
pub mod jobs;
pub mod lifecycle;
pub mod machines;
pub mod metrics;
pub mod racks;
pub mod reconcile;
pub mod scan;
pub mod secrets;
pub mod sightings;
pub mod stream;
pub mod subnets;
pub mod tokens;
pub mod users;
pub mod validate;
pub mod vmedia;
pub mod webhooks;
pub mod workers;

use plinth_db::PgPool;
use plinth_types::Error;

pub use auth::Principal;
pub use secrets::BmcKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The default of [`App::with_discovery_limit`].
pub const DEFAULT_DISCOVER_PER_MINUTE: u32 = 600;

/// The application: a handle to the inventory database and the BMC secret key. Cheap to
/// clone; every plinth task shares one.
#[derive(Clone)]
pub struct App {
    pool: PgPool,
    bmc_key: BmcKey,
    boot: std::sync::Arc<BootEnv>,
    /// Web UI login attempts per source address.
    logins: std::sync::Arc<users::LoginThrottle>,
    /// New discovered machines a minute.
    discoveries: std::sync::Arc<dhcp::DiscoveryLimit>,
    /// What `/metrics` renders besides the database's counts.
    metrics: metrics::Registry,
    /// The serial consoles this instance has open.
    consoles: console::Consoles,
    /// The event streams' wake-ups and limits.
    hub: std::sync::Arc<stream::Hub>,
    /// The file fetches this instance served, not yet written (issue 22).
    fetches: std::sync::Arc<sightings::FetchLog>,
    /// The DHCP offers this instance made from memory and still holds open.
    offers: std::sync::Arc<dhcp::OfferBook>,
    /// What this instance knows of its DHCP clients, to answer new ones without the database.
    view: std::sync::Arc<dhcp::ClientView>,
    /// The capped events the database last refused (a flood of refused tokens skips it).
    capped: std::sync::Arc<events::CapMemo>,
}

/// The boot chain's settings and templates, fixed at start.
#[derive(Debug)]
pub struct BootEnv {
    pub settings: boot::BootSettings,
    pub templates: boot::Templates,
    /// [`boot::script_decision`] for every state, as the database's `boot_request` takes it.
    pub table: plinth_db::boot::StateTable,
    /// The queue of the script requests' batch worker (see [`App::boot_batches`]).
    queue: std::sync::OnceLock<boot::BootQueue>,
}

impl BootEnv {
    fn new(settings: boot::BootSettings, templates: boot::Templates) -> BootEnv {
        let table = boot::state_table(&settings);
        BootEnv {
            settings,
            templates,
            table,
            queue: std::sync::OnceLock::new(),
        }
    }
}

impl App {
    /// An application with the default boot settings (images under `./images`).
    pub fn new(pool: PgPool, bmc_key: BmcKey) -> Self {
        let templates = boot::Templates::load(None).expect("the shipped boot templates parse");
        let app = App {
            pool,
            bmc_key,
            boot: std::sync::Arc::new(BootEnv::new(
                boot::BootSettings::with_root("images".into()),
                templates,
            )),
            logins: Default::default(),
            discoveries: std::sync::Arc::new(dhcp::DiscoveryLimit::new(
                DEFAULT_DISCOVER_PER_MINUTE,
            )),
            metrics: Default::default(),
            consoles: console::Consoles::new(
                std::sync::Arc::new(plinth_bmc::Drivers::default()),
                console::ConsoleSettings::default(),
            ),
            hub: std::sync::Arc::new(stream::Hub::new(Default::default())),
            fetches: Default::default(),
            offers: Default::default(),
            view: Default::default(),
            capped: Default::default(),
        };
        app.metrics.register(app.fetches.clone());
        app.metrics.register(app.view.clone());
        app
    }

    /// The same application with these event stream settings.
    pub fn with_stream_settings(mut self, settings: stream::StreamSettings) -> Self {
        self.hub = std::sync::Arc::new(stream::Hub::new(settings));
        self
    }

    /// At most `per_minute` new `discovered` machines a minute on this instance (0: no limit).
    pub fn with_discovery_limit(mut self, per_minute: u32) -> Self {
        self.discoveries = std::sync::Arc::new(dhcp::DiscoveryLimit::new(per_minute));
        self
    }

    /// The same application with these boot settings and templates.
    pub fn with_boot(mut self, settings: boot::BootSettings, templates: boot::Templates) -> Self {
        self.boot = std::sync::Arc::new(BootEnv::new(settings, templates));
        self
    }

    pub fn boot_env(&self) -> &BootEnv {
        &self.boot
    }

    /// For health checks: can we reach the database?
    pub async fn ping(&self) -> Result<()> {
        plinth_db::ping(&self.pool).await.db()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn conn(&self) -> Result<plinth_db::PoolConnection<plinth_db::Postgres>> {
        plinth_db::acquire(&self.pool).await.db()
    }

    async fn begin(&self) -> Result<plinth_db::Transaction<'static, plinth_db::Postgres>> {
        plinth_db::begin(&self.pool).await.db()
    }
}

/// Records a change that concerns no single machine (racks, subnets, tokens) in the audit log.
pub(crate) async fn record_event(
    tx: &mut plinth_db::PgConnection,
    who: &Principal,
    kind: &str,
    details: serde_json::Value,
) -> Result<()> {
    record_event_as(tx, &who.name, None, kind, details).await
}

/// Records something that happened, without a state change: to one machine, or (None) to
/// plinth as a whole.
pub(crate) async fn record_event_as(
    tx: &mut plinth_db::PgConnection,
    actor: &str,
    machine_id: Option<uuid::Uuid>,
    kind: &str,
    details: serde_json::Value,
) -> Result<()> {
    plinth_db::events::insert(
        tx,
        plinth_db::events::NewEvent {
            actor,
            machine_id,
            kind,
            from_state: None,
            to_state: None,
            details,
        },
    )
    .await
    .db()?;
    Ok(())
}

/// An internal error: its cause is logged here, once, with the operation and the caller's place
/// in the code; the client hears only "internal error". For what should not fail (a join, a
/// conversion of a value the code made itself).
#[track_caller]
pub(crate) fn internal<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> Error {
    let at = std::panic::Location::caller();
    move |e| {
        tracing::error!(op, error = %e, %at, "internal error");
        Error::internal()
    }
}

/// An internal error for a row that was there a moment ago in the same transaction (or a value
/// the code itself guarantees): logged with the operation and place, like [`internal`].
#[track_caller]
pub(crate) fn missing(op: &'static str) -> impl FnOnce() -> Error {
    let at = std::panic::Location::caller();
    move || {
        tracing::error!(op, %at, "internal error: an expected value is missing");
        Error::internal()
    }
}

/// `.map_err(plinth_db::classify)`, keeping the caller's place in the code for the log line
/// of an internal error (so the operation that failed is named once, where it becomes a 500).
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T>;
}

impl<T, E: Into<plinth_db::Error>> DbResult<T> for std::result::Result<T, E> {
    #[track_caller]
    fn db(self) -> Result<T> {
        match self {
            Ok(v) => Ok(v),
            Err(e) => Err(plinth_db::classify(e)),
        }
    }
}
