//! The workers that talk to BMCs: the job runner and the power-sync reconciler.
//!
//! Both follow DESIGN.md: claim rows with `FOR UPDATE SKIP LOCKED` and commit, call the BMC
//! with no transaction open, record the outcome in a new transaction. At most one job per BMC
//! runs at a time (the claim query and a unique index see to it, across instances), at most
//! `concurrency` per instance (a semaphore), and every BMC call has its own timeout, so one
//! BMC that never answers holds one slot for one timeout and delays nobody else.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plinth_bmc::{Bmc, BmcError, BootDevice, BootMode, PowerAction, PowerState, ipmi, redfish};
use plinth_db::jobs::Claimed;
use plinth_types::Error;
use plinth_types::api::{BmcProtocol, BootTarget, FirmwareMode, PowerOp};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::jobs::JobSpec;
use crate::{App, DbResult, Result};

/// How to reach one machine's BMC, with its password decrypted for the call.
#[derive(Clone)]
pub struct BmcTarget {
    pub machine_id: Uuid,
    pub protocol: BmcProtocol,
    pub address: String,
    pub username: String,
    pub password: String,
    pub verify_tls: bool,
    /// The BMC's opt-in to plain http:// Redfish.
    pub plain_http: bool,
}

impl std::fmt::Debug for BmcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcTarget")
            .field("machine_id", &self.machine_id)
            .field("protocol", &self.protocol)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Makes a driver for a BMC. [`Drivers`] makes the real ones; tests substitute their own.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(
        &'a self,
        target: &'a BmcTarget,
    ) -> BoxFuture<'a, std::result::Result<Arc<dyn Bmc>, BmcError>>;
}

/// The Redfish and IPMI drivers.
#[derive(Debug, Clone)]
pub struct Drivers {
    /// Per HTTP request (Redfish) or per datagram attempt (IPMI).
    pub timeout: Duration,
    /// IPMI datagrams are sent `ipmi_retries + 1` times before the BMC counts as unreachable.
    pub ipmi_retries: u32,
    /// PEM CA certificates trusted for Redfish BMCs whose certificate is verified.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for Drivers {
    fn default() -> Self {
        Drivers {
            timeout: Duration::from_secs(30),
            ipmi_retries: 3,
            ca_pem: None,
        }
    }
}

/// The Redfish base URL of a BMC address: `host[:port]` means HTTPS; a full `http(s)://` URL
/// is taken as it is.
pub fn redfish_base_url(address: &str) -> String {
    if address.starts_with("https://") || address.starts_with("http://") {
        address.trim_end_matches('/').to_owned()
    } else {
        format!("https://{address}")
    }
}

impl Connector for Drivers {
    fn connect<'a>(
        &'a self,
        t: &'a BmcTarget,
    ) -> BoxFuture<'a, std::result::Result<Arc<dyn Bmc>, BmcError>> {
        Box::pin(async move {
            match t.protocol {
                BmcProtocol::Redfish => {
                    let r = redfish::Redfish::new(redfish::RedfishConfig {
                        base_url: redfish_base_url(&t.address),
                        username: t.username.clone(),
                        password: t.password.clone(),
                        verify_tls: t.verify_tls,
                        allow_plain_http: t.plain_http,
                        ca_pem: self.ca_pem.clone(),
                        system: None,
                        timeout: self.timeout,
                    })?;
                    Ok(Arc::new(r) as Arc<dyn Bmc>)
                }
                BmcProtocol::Ipmi => {
                    let hostport = if t.address.starts_with('[') {
                        if t.address.contains("]:") {
                            t.address.clone()
                        } else {
                            format!("{}:623", t.address)
                        }
                    } else if t.address.contains(':') {
                        t.address.clone()
                    } else {
                        format!("{}:623", t.address)
                    };
                    let addr = tokio::net::lookup_host(&hostport)
                        .await
                        .map_err(|e| {
                            BmcError::Unreachable(format!("cannot resolve {}: {e}", t.address))
                        })?
                        .next()
                        .ok_or_else(|| {
                            BmcError::Unreachable(format!("{} has no address", t.address))
                        })?;
                    let i = ipmi::Ipmi::strongest(ipmi::lan::IpmiConfig {
                        addr,
                        username: t.username.clone(),
                        password: t.password.clone(),
                        timeout: self.timeout.min(Duration::from_secs(2)),
                        retries: self.ipmi_retries,
                        // 17 where the BMC offers it, else 3
                        cipher_suite: ipmi::CipherSuite::Seventeen,
                    });
                    Ok(Arc::new(i) as Arc<dyn Bmc>)
                }
            }
        })
    }
}

/// How the job runner behaves.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs running at once on this instance (each on a different BMC).
    pub concurrency: usize,
    /// Jobs running at once across every instance sharing the database; `None`: no cap beyond
    /// each instance's `concurrency`.
    pub cluster_concurrency: Option<usize>,
    /// The longest one BMC call may take before it counts as a timeout.
    pub call_timeout: Duration,
    /// How long a power change may take to show in the BMC's power state.
    pub power_wait: Duration,
    /// How often the power state is read while waiting.
    pub power_poll: Duration,
    /// A running job's lease; renewed every third of it while the worker lives.
    pub lease: Duration,
    /// Backoff after a transient failure: `backoff_base * 2^(attempt-1)`, at most `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often to look for due jobs without a NOTIFY (retries come due silently).
    pub idle_poll: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            concurrency: 64,
            cluster_concurrency: None,
            call_timeout: Duration::from_secs(60),
            power_wait: Duration::from_secs(180),
            power_poll: Duration::from_secs(2),
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            idle_poll: Duration::from_secs(2),
        }
    }
}

/// Why a job attempt failed: retried when transient.
#[derive(Debug, Clone)]
struct Failure {
    transient: bool,
    /// `auth`, `unreachable`, `timeout`, `rejected`, `busy`, `unsupported`, `protocol`,
    /// `reverted`, `config`, `power_wait`.
    kind: &'static str,
    message: String,
}

impl From<BmcError> for Failure {
    fn from(e: BmcError) -> Failure {
        let kind = match &e {
            BmcError::Unreachable(_) => "unreachable",
            BmcError::Timeout => "timeout",
            BmcError::Auth => "auth",
            BmcError::Rejected(_) => "rejected",
            BmcError::Busy(_) => "busy",
            BmcError::Unsupported(_) => "unsupported",
            BmcError::Protocol(_) => "protocol",
            BmcError::Reverted { .. } => "reverted",
        };
        Failure {
            transient: e.is_transient(),
            kind,
            message: e.to_string(),
        }
    }
}

fn final_failure(kind: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        transient: false,
        kind,
        message: message.into(),
    }
}

/// One BMC call under the per-call timeout.
async fn call<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = plinth_bmc::Result<T>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let mut f = Failure::from(e);
            f.message = format!("{what}: {}", f.message);
            Err(f)
        }
        Err(_) => Err(Failure {
            transient: true,
            kind: "timeout",
            message: format!("{what}: no answer within {} s", limit.as_secs_f64()),
        }),
    }
}

fn power_str(p: PowerState) -> &'static str {
    match p {
        PowerState::On => "on",
        PowerState::Off => "off",
        PowerState::PoweringOn => "powering_on",
        PowerState::PoweringOff => "powering_off",
    }
}

/// Polls the power state until it is `want`; returns the last state read.
async fn wait_power(
    bmc: &dyn Bmc,
    s: &JobSettings,
    want: PowerState,
) -> std::result::Result<PowerState, Failure> {
    let deadline = tokio::time::Instant::now() + s.power_wait;
    loop {
        let now = call(s.call_timeout, "read power state", bmc.power_state()).await?;
        if now == want {
            return Ok(now);
        }
        if tokio::time::Instant::now() + s.power_poll > deadline {
            return Err(Failure {
                transient: false,
                kind: "power_wait",
                message: format!(
                    "the machine is still {} {} s after asking for {}",
                    power_str(now),
                    s.power_wait.as_secs(),
                    power_str(want)
                ),
            });
        }
        tokio::time::sleep(s.power_poll).await;
    }
}

/// What a successful attempt learned, recorded with the job.
#[derive(Clone)]
struct Done {
    result: serde_json::Value,
    power: Option<PowerState>,
    identity: Option<serde_json::Value>,
}

/// Forgets a retired machine's BMC (its credentials above all), with an event.
async fn scrub_bmc(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
    job: Uuid,
    powered_off: bool,
) -> Result<()> {
    plinth_db::bmcs::delete(tx, machine_id).await.db()?;
    event(
        tx,
        machine_id,
        "bmc_scrubbed",
        json!({ "job": job, "powered_off": powered_off }),
    )
    .await?;
    tracing::info!(%machine_id, powered_off, "BMC credentials of a decommissioned machine scrubbed");
    Ok(())
}

async fn execute(
    bmc: &dyn Bmc,
    spec: JobSpec,
    s: &JobSettings,
) -> std::result::Result<Done, Failure> {
    let t = s.call_timeout;
    match spec {
        JobSpec::Power { .. } | JobSpec::Retire => {
            let (op, force) = match spec {
                JobSpec::Power { op, force } => (op, force),
                // Powering off for good is a forced off; the scrub follows when it is recorded.
                _ => (PowerOp::Off, true),
            };
            let before = call(t, "read power state", bmc.power_state()).await?;
            let off = matches!(before, PowerState::Off | PowerState::PoweringOff);
            let (action, want) = match op {
                PowerOp::On if !off => (None, PowerState::On),
                PowerOp::On => (Some(PowerAction::On), PowerState::On),
                PowerOp::Off if before == PowerState::Off => (None, PowerState::Off),
                PowerOp::Off => (Some(PowerAction::Off { force }), PowerState::Off),
                // A cycle or reset of a machine that is off starts it.
                PowerOp::Cycle | PowerOp::Reset if off => (Some(PowerAction::On), PowerState::On),
                PowerOp::Cycle => (Some(PowerAction::Cycle), PowerState::On),
                PowerOp::Reset => (Some(PowerAction::Reset), PowerState::On),
            };
            if let Some(a) = action {
                call(t, &format!("power {}", action_name(a)), bmc.power(a)).await?;
            }
            let after = wait_power(bmc, s, want).await?;
            Ok(Done {
                result: json!({
                    "before": power_str(before),
                    "after": power_str(after),
                    "sent": action.map(action_name),
                }),
                power: Some(after),
                identity: None,
            })
        }
        JobSpec::BootDevice {
            device,
            persistent,
            mode,
        } => {
            let device = match device {
                BootTarget::Pxe => BootDevice::Pxe,
                BootTarget::Disk => BootDevice::Disk,
                BootTarget::BiosSetup => BootDevice::BiosSetup,
                BootTarget::Cdrom => BootDevice::Cdrom,
            };
            let mode = mode.map(|m| match m {
                FirmwareMode::Bios => BootMode::Bios,
                FirmwareMode::Uefi => BootMode::Uefi,
            });
            // The read-back of set_boot_verified is the result: what the BMC reports, and
            // how much of the override that confirms (plinth_bmc::check_readback).
            let (got, confirmed) = call(
                t.saturating_mul(3),
                "set boot device",
                plinth_bmc::set_boot_verified(bmc, device, persistent, mode),
            )
            .await?;
            Ok(Done {
                result: json!({ "boot_override": got, "confirmed": confirmed }),
                power: None,
                identity: None,
            })
        }
        JobSpec::Identify => {
            let identity = call(t, "read identity", bmc.identity()).await?;
            let power = call(t, "read power state", bmc.power_state()).await?;
            let identity = serde_json::to_value(&identity).unwrap_or_default();
            Ok(Done {
                result: json!({ "identity": identity, "power": power_str(power) }),
                power: Some(power),
                identity: Some(identity),
            })
        }
    }
}

fn action_name(a: PowerAction) -> &'static str {
    match a {
        PowerAction::On => "on",
        PowerAction::Off { force: true } => "off (forced)",
        PowerAction::Off { force: false } => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
    }
}

/// The event kind of a failed job: a distinct one for the two things a technician fixes.
fn failure_event(kind: &str) -> &'static str {
    match kind {
        "auth" => "bmc_auth_failed",
        "unreachable" | "timeout" => "bmc_unreachable",
        _ => "bmc_job_failed",
    }
}

impl App {
    /// The decrypted target of a claimed job, or why there is none.
    fn target_of(&self, j: &Claimed) -> std::result::Result<BmcTarget, Failure> {
        let (Some(protocol), Some(address), Some(username), Some(nonce), Some(ct)) = (
            j.protocol,
            j.address.clone(),
            j.username.clone(),
            j.password_nonce.as_deref(),
            j.password_ciphertext.as_deref(),
        ) else {
            return Err(final_failure("config", "the machine has no BMC any more"));
        };
        let password = self
            .bmc_key
            .decrypt(j.machine_id, nonce, ct)
            .map_err(|e| final_failure("config", e.to_string()))?;
        Ok(BmcTarget {
            machine_id: j.machine_id,
            protocol,
            address,
            username,
            password,
            verify_tls: j.verify_tls.unwrap_or(true),
            plain_http: j.plain_http.unwrap_or(false),
        })
    }
}

/// Takes jobs from the database and runs them against BMCs.
pub struct JobRunner {
    app: App,
    connector: Arc<dyn Connector>,
    settings: JobSettings,
    worker: String,
    slots: Arc<Semaphore>,
    /// The jobs this runner has running, for lease renewal.
    running: Arc<Mutex<HashSet<Uuid>>>,
}

/// A name for this worker in `jobs.worker`: host, process and a random suffix.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let tag: u32 = rand::random();
    format!("{host}:{}:{tag:08x}", std::process::id())
}

impl JobRunner {
    pub fn new(app: App, connector: Arc<dyn Connector>, settings: JobSettings) -> Arc<JobRunner> {
        Arc::new(JobRunner {
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            app,
            connector,
            settings,
            worker: worker_name(),
            running: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Claims up to `limit` jobs and commits the claim.
    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.app.begin().await?;
        let mut limit = limit as i64;
        if let Some(cap) = self.settings.cluster_concurrency {
            let running = plinth_db::jobs::lock_and_count_running(&mut tx)
                .await
                .db()?;
            limit = limit.min(cap as i64 - running);
            if limit <= 0 {
                return Ok(Vec::new());
            }
        }
        let claimed = plinth_db::jobs::claim(
            &mut tx,
            &self.worker,
            limit,
            self.settings.lease.as_secs_f64(),
        )
        .await;
        let claimed = match claimed {
            Ok(c) => plinth_db::commit(tx).await.map(|()| c),
            Err(e) => Err(e),
        };
        match claimed {
            Ok(c) => Ok(c),
            // Two instances raced for one machine: the unique index said no; try again later.
            Err(e) if e.constraint() == Some("jobs_one_running_per_machine") => Ok(Vec::new()),
            Err(e) => Err(plinth_db::classify(e)),
        }
    }

    /// Runs one claimed job to its recorded outcome. Never fails. When the database is away
    /// as the outcome is to be recorded (a failover, a restart), recording is tried again for
    /// up to twice the lease while the job stays this worker's (its lease is renewed as soon
    /// as the database answers): running the BMC action again would do it twice. Past that,
    /// or when another worker took the job meanwhile, the lease decides.
    async fn run_job(self: Arc<Self>, j: Claimed) {
        use tracing::Instrument;
        let span = tracing::info_span!("job", job_id = %j.id, machine_id = %j.machine_id, kind = %j.kind, attempt = j.attempts);
        async {
            self.running_set().insert(j.id);
            let outcome = self.attempt(&j).await;
            let give_up = tokio::time::Instant::now() + self.settings.lease * 2;
            let mut wait = Duration::from_millis(250);
            loop {
                match self.record(&j, outcome.clone()).await {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() + wait < give_up => {
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "recording the job's outcome failed; trying again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "recording the job's outcome failed; its lease will bring it back");
                        break;
                    }
                }
            }
            self.running_set().remove(&j.id);
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, j: &Claimed) -> std::result::Result<Done, Failure> {
        let spec = JobSpec::parse(&j.kind, &j.params).map_err(|e| final_failure("config", e))?;
        let target = self.app.target_of(j)?;
        let bmc = self
            .connector
            .connect(&target)
            .await
            .map_err(Failure::from)?;
        let res = execute(bmc.as_ref(), spec, &self.settings).await;
        let _ = tokio::time::timeout(self.settings.call_timeout, bmc.close()).await;
        res
    }

    fn backoff(&self, attempt: i32) -> Duration {
        let exp = 2u32.saturating_pow(attempt.saturating_sub(1).clamp(0, 20) as u32);
        let d = self.settings.backoff_base.saturating_mul(exp);
        let d = d.min(self.settings.backoff_max);
        // ±20 % so retries of many machines do not come due together
        d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }

    async fn record(&self, j: &Claimed, outcome: std::result::Result<Done, Failure>) -> Result<()> {
        let mut tx = self.app.begin().await?;
        match outcome {
            Ok(done) => {
                if !plinth_db::jobs::succeed(&mut tx, j.id, j.attempts, &done.result)
                    .await
                    .db()?
                {
                    tracing::warn!(job_id = %j.id, "the job was taken from this worker (lease ran out); its result is dropped");
                    return Ok(());
                }
                if let Some(identity) = &done.identity {
                    plinth_db::bmcs::set_identity(&mut tx, j.machine_id, identity)
                        .await
                        .db()?;
                    check_identity_macs(&mut tx, j.machine_id, identity).await?;
                }
                let old =
                    plinth_db::bmcs::record_ok(&mut tx, j.machine_id, done.power.map(power_str))
                        .await
                        .db()?;
                if let Some((_, Some(false))) = old {
                    event(
                        &mut tx,
                        j.machine_id,
                        "bmc_reachable",
                        json!({ "job": j.id }),
                    )
                    .await?;
                }
                if j.kind == "retire" {
                    scrub_bmc(&mut tx, j.machine_id, j.id, true).await?;
                }
                event(
                    &mut tx,
                    j.machine_id,
                    "bmc_job_succeeded",
                    json!({ "job": j.id, "kind": j.kind, "params": j.params, "attempts": j.attempts, "result": done.result }),
                )
                .await?;
                tracing::info!(job_id = %j.id, machine_id = %j.machine_id, kind = %j.kind, result = %done.result, "job succeeded");
            }
            Err(f) if f.transient && j.attempts < j.max_attempts => {
                let delay = self.backoff(j.attempts);
                plinth_db::jobs::retry_later(
                    &mut tx,
                    j.id,
                    j.attempts,
                    &f.message,
                    delay.as_secs_f64(),
                )
                .await
                .db()?;
                tracing::warn!(job_id = %j.id, machine_id = %j.machine_id, attempt = j.attempts, error = %f.message, retry_in_s = delay.as_secs_f64(), "job attempt failed; retrying");
            }
            Err(f) => {
                let Some(cancelled) = plinth_db::jobs::fail(&mut tx, j.id, j.attempts, &f.message)
                    .await
                    .db()?
                else {
                    return Ok(());
                };
                event(
                    &mut tx,
                    j.machine_id,
                    failure_event(f.kind),
                    json!({
                        "job": j.id, "kind": j.kind, "params": j.params, "attempts": j.attempts,
                        "error_kind": f.kind, "error": f.message, "cancelled": cancelled,
                    }),
                )
                .await?;
                if j.kind == "retire" {
                    // The machine is gone from plinth's care all the same: its credentials go.
                    scrub_bmc(&mut tx, j.machine_id, j.id, false).await?;
                }
                tracing::warn!(job_id = %j.id, machine_id = %j.machine_id, error = %f.message, cancelled = cancelled.len(), "job failed");
            }
        }
        tx.commit().await.db()?;
        Ok(())
    }

    /// The jobs this runner is running (the set holds ids only: a poisoned lock is still good).
    fn running_set(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs claimed jobs in `set`, each holding one of this runner's slots.
    async fn spawn_all(self: &Arc<Self>, jobs: Vec<Claimed>, set: &mut JoinSet<()>) -> Result<()> {
        for j in jobs {
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::internal())?;
            let me = self.clone();
            set.spawn(async move {
                me.run_job(j).await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// Claims what is runnable now, runs it, and waits for all of it: for tests (feature
    /// `testing`). Returns the number of jobs run.
    #[cfg(feature = "testing")]
    pub async fn run_once(self: &Arc<Self>) -> Result<usize> {
        let free = self.slots.available_permits();
        let jobs = self.claim(free).await?;
        let n = jobs.len();
        let mut set = JoinSet::new();
        self.spawn_all(jobs, &mut set).await?;
        while set.join_next().await.is_some() {}
        Ok(n)
    }

    /// [`Self::run_once`] until nothing is runnable.
    #[cfg(feature = "testing")]
    pub async fn drain(self: &Arc<Self>) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.run_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Queues again the jobs whose worker died (lease passed), or with `mine`, this runner's.
    pub async fn requeue_stale(&self, mine: bool) -> Result<usize> {
        let mut tx = self.app.begin().await?;
        let stale = plinth_db::jobs::requeue_stale(&mut tx, mine.then_some(self.worker.as_str()))
            .await
            .db()?;
        for s in &stale {
            let msg = format!(
                "the worker running it stopped ({})",
                s.worker.as_deref().unwrap_or("?")
            );
            if s.state == plinth_types::api::JobState::Failed {
                let cancelled = match s.chain {
                    Some(c) => plinth_db::jobs::cancel_chain(&mut tx, c, &msg).await.db()?,
                    None => Vec::new(),
                };
                event(
                    &mut tx,
                    s.machine_id,
                    "bmc_job_failed",
                    json!({ "job": s.id, "kind": s.kind, "error_kind": "worker_lost", "error": msg, "cancelled": cancelled }),
                )
                .await?;
            }
            tracing::warn!(job_id = %s.id, machine_id = %s.machine_id, now = s.state.as_str(), "{msg}");
        }
        tx.commit().await.db()?;
        Ok(stale.len())
    }

    async fn renew(&self) -> Result<()> {
        let ids: Vec<Uuid> = self.running_set().iter().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.app.conn().await?;
        plinth_db::jobs::renew(
            &mut conn,
            &self.worker,
            &ids,
            self.settings.lease.as_secs_f64(),
        )
        .await
        .db()?;
        Ok(())
    }

    /// The worker loop: wakes on NOTIFY jobs, on a finished job and on a timer; renews its
    /// leases; requeues jobs of dead workers. On cancellation it stops its BMC calls and hands
    /// its running jobs back to the queue.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = {
            let (pool, wake, cancel) = (self.app.pool().clone(), wake.clone(), cancel.clone());
            tokio::spawn(async move { listen(pool, wake, cancel).await })
        };
        let mut tasks = JoinSet::new();
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        let mut stale = tokio::time::interval(self.settings.lease);
        tracing::info!(worker = %self.worker, concurrency = self.settings.concurrency, "job runner started");
        loop {
            let free = self.slots.available_permits();
            match self.claim(free).await {
                Ok(jobs) => self.spawn_all(jobs, &mut tasks).await?,
                Err(e) => tracing::warn!(error = %e, "claiming jobs failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                Some(_) = tasks.join_next() => {}
                _ = tokio::time::sleep(self.settings.idle_poll) => {}
                _ = renew.tick() => {
                    if let Err(e) = self.renew().await {
                        tracing::warn!(error = %e, "renewing job leases failed");
                    }
                }
                _ = stale.tick() => {
                    // This worker's own jobs are alive: their leases first, so that after a
                    // database outage longer than a lease they are not taken for a dead
                    // worker's.
                    if let Err(e) = self.renew().await {
                        tracing::warn!(error = %e, "renewing job leases failed");
                    }
                    if let Err(e) = self.requeue_stale(false).await {
                        tracing::warn!(error = %e, "requeueing stale jobs failed");
                    }
                }
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        listener.abort();
        match self.requeue_stale(true).await {
            Ok(n) if n > 0 => tracing::info!(jobs = n, "handed running jobs back to the queue"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "handing running jobs back failed; their leases will")
            }
        }
        Ok(())
    }
}

/// A BMC that reports NICs none of which is enrolled for the machine is probably another
/// machine's (a swapped address or cable): worth an event before anything is powered.
async fn check_identity_macs(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
    identity: &serde_json::Value,
) -> Result<()> {
    let reported: Vec<String> = identity["macs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if reported.is_empty() {
        return Ok(());
    }
    let enrolled: Vec<String> = plinth_db::nics::for_machines(tx, &[machine_id])
        .await
        .db()?
        .into_iter()
        .map(|n| n.mac.to_string())
        .collect();
    if enrolled.is_empty() || enrolled.iter().any(|m| reported.contains(m)) {
        return Ok(());
    }
    tracing::warn!(%machine_id, ?reported, ?enrolled, "the BMC reports none of the machine's enrolled MACs");
    event(
        tx,
        machine_id,
        "bmc_identity_mismatch",
        json!({
            "bmc_macs": reported, "enrolled_macs": enrolled,
            "hint": "the BMC at this address reports none of the machine's enrolled NICs: is it this machine's BMC?",
        }),
    )
    .await
}

/// LISTEN jobs: each NOTIFY wakes the runner. Reconnects after errors.
async fn listen(pool: plinth_db::PgPool, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let res: plinth_db::Result<()> = async {
            let mut l = plinth_db::Listener::connect(&pool, "jobs").await?;
            loop {
                l.recv().await?;
                wake.notify_one();
            }
        }
        .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "LISTEN jobs: reconnecting");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn event(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
    kind: &str,
    details: serde_json::Value,
) -> Result<()> {
    crate::record_event_as(tx, "system", Some(machine_id), kind, details).await
}

/// How the power-sync reconciler behaves.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Each BMC is polled about this often (jittered by ±`jitter`).
    pub interval: Duration,
    pub jitter: f64,
    /// Consecutive failures before a BMC is marked unreachable.
    pub failures_before_unreachable: i32,
    /// Polls in flight at once on this instance.
    pub concurrency: usize,
    pub call_timeout: Duration,
    /// How often the loop looks for due BMCs.
    pub tick: Duration,
    /// After wrong credentials, the next poll waits this long (unless the credentials change).
    pub auth_hold: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            interval: Duration::from_secs(60),
            jitter: 0.2,
            failures_before_unreachable: 3,
            concurrency: 32,
            call_timeout: Duration::from_secs(30),
            tick: Duration::from_secs(1),
            auth_hold: Duration::from_secs(3600),
        }
    }
}

/// What one pass of the power sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub polled: usize,
    pub changed: usize,
    pub failed: usize,
    pub marked_unreachable: usize,
}

/// Polls every BMC's power state on a jittered interval; records changes as events; marks a
/// BMC unreachable after repeated failures and reachable again when it answers.
pub struct PowerSync {
    app: App,
    connector: Arc<dyn Connector>,
    settings: SyncSettings,
    slots: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct PollOutcome {
    changed: bool,
    failed: bool,
    marked_unreachable: bool,
}

impl PowerSync {
    pub fn new(app: App, connector: Arc<dyn Connector>, settings: SyncSettings) -> Arc<PowerSync> {
        Arc::new(PowerSync {
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            app,
            connector,
            settings,
        })
    }

    async fn claim(&self, limit: usize) -> Result<Vec<plinth_db::bmcs::DueBmc>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.app.conn().await?;
        plinth_db::bmcs::claim_due(
            &mut conn,
            limit as i64,
            self.settings.interval.as_secs_f64(),
            self.settings.jitter.clamp(0.0, 0.9),
        )
        .await
        .db()
    }

    async fn poll(&self, b: plinth_db::bmcs::DueBmc) -> PollOutcome {
        let res = async {
            let password = self
                .app
                .bmc_key
                .decrypt(b.machine_id, &b.password_nonce, &b.password_ciphertext)
                .map_err(|e| final_failure("config", e.to_string()))?;
            let target = BmcTarget {
                machine_id: b.machine_id,
                protocol: b.protocol,
                address: b.address.clone(),
                username: b.username.clone(),
                password,
                verify_tls: b.verify_tls,
                plain_http: b.plain_http,
            };
            let bmc = self
                .connector
                .connect(&target)
                .await
                .map_err(Failure::from)?;
            let p = call(
                self.settings.call_timeout,
                "read power state",
                bmc.power_state(),
            )
            .await;
            let _ = tokio::time::timeout(self.settings.call_timeout, bmc.close()).await;
            p
        }
        .await;
        match self.record(&b, res).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(machine_id = %b.machine_id, error = %e, "recording a power poll failed");
                PollOutcome {
                    failed: true,
                    ..Default::default()
                }
            }
        }
    }

    async fn record(
        &self,
        b: &plinth_db::bmcs::DueBmc,
        res: std::result::Result<PowerState, Failure>,
    ) -> Result<PollOutcome> {
        let mut out = PollOutcome::default();
        let mut tx = self.app.begin().await?;
        match res {
            Ok(p) => {
                let now = power_str(p);
                let old = plinth_db::bmcs::record_ok(&mut tx, b.machine_id, Some(now))
                    .await
                    .db()?;
                if let Some((old_power, old_reachable)) = old {
                    if old_reachable == Some(false) {
                        event(
                            &mut tx,
                            b.machine_id,
                            "bmc_reachable",
                            json!({ "power": now }),
                        )
                        .await?;
                    }
                    if let Some(old_power) = old_power
                        && old_power != now
                    {
                        out.changed = true;
                        event(
                            &mut tx,
                            b.machine_id,
                            "power_changed",
                            json!({ "from": old_power, "to": now }),
                        )
                        .await?;
                        tracing::info!(machine_id = %b.machine_id, from = %old_power, to = now, "power state changed");
                    }
                }
            }
            Err(f) => {
                out.failed = true;
                // Wrong credentials: not again every interval (BMCs lock the account after a
                // few failures); a change of credentials makes the BMC due at once.
                let hold = (f.kind == "auth").then_some(self.settings.auth_hold.as_secs_f64());
                let marked = plinth_db::bmcs::record_failure(
                    &mut tx,
                    b.machine_id,
                    &f.message,
                    self.settings.failures_before_unreachable,
                    hold,
                )
                .await
                .db()?;
                if marked {
                    out.marked_unreachable = true;
                    event(
                        &mut tx,
                        b.machine_id,
                        "bmc_unreachable",
                        json!({
                            "error_kind": f.kind, "error": f.message,
                            "failures": b.consecutive_failures + 1,
                        }),
                    )
                    .await?;
                    tracing::warn!(machine_id = %b.machine_id, error = %f.message, "BMC marked unreachable");
                }
            }
        }
        tx.commit().await.db()?;
        Ok(out)
    }

    /// Polls every due BMC and waits for all the polls: for tests (feature `testing`).
    #[cfg(feature = "testing")]
    pub async fn run_once(self: &Arc<Self>) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut set = JoinSet::new();
        loop {
            let due = self.claim(self.settings.concurrency.max(1)).await?;
            if due.is_empty() {
                break;
            }
            for b in due {
                let permit = self
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::internal())?;
                let me = self.clone();
                set.spawn(async move {
                    let o = me.poll(b).await;
                    drop(permit);
                    o
                });
            }
        }
        while let Some(o) = set.join_next().await {
            let o = o.map_err(|_| Error::internal())?;
            report.polled += 1;
            report.changed += usize::from(o.changed);
            report.failed += usize::from(o.failed);
            report.marked_unreachable += usize::from(o.marked_unreachable);
        }
        Ok(report)
    }

    /// The reconciler loop: every tick, polls the due BMCs it has slots for, without waiting
    /// for slow ones before the next tick.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(self.settings.tick);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                Some(_) = tasks.join_next() => continue,
            }
            match self.claim(self.slots.available_permits()).await {
                Ok(due) => {
                    for b in due {
                        let Ok(permit) = self.slots.clone().acquire_owned().await else {
                            break;
                        };
                        let me = self.clone();
                        tasks.spawn(async move {
                            me.poll(b).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "power sync: claiming due BMCs failed"),
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

impl App {
    /// Makes the machine's BMC due for a power poll now (or every BMC's, with `None`). For
    /// tests (feature `testing`).
    #[cfg(feature = "testing")]
    pub async fn poll_bmc_now(&self, machine_id: Option<Uuid>) -> Result<()> {
        let mut conn = self.conn().await?;
        plinth_db::bmcs::poll_now(&mut conn, machine_id)
            .await
            .db()?;
        Ok(())
    }
}
