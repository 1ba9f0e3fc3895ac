//! The job runner: claims runnable jobs (`FOR UPDATE SKIP LOCKED`, committed before any BMC
//! call), runs each in a task holding one of `concurrency` slots, records its outcome
//! (`record`), renews the leases of the jobs it runs, and on shutdown hands them back.
//! Requeueing the jobs of runners that died is a reconciler pass ([`JobRunner::stale_pass`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_bmc::{BmcTarget, Connector};
use plinth_db::jobs::Claimed;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::call::{Failure, final_failure};
use super::execute::{Done, execute};
use super::{event, wakeups};
use crate::jobs::JobSpec;
use crate::reconcile::Pass;
use crate::{App, DbResult, Result};

/// How the job runner behaves; `[bmc]`'s job keys deserialize into this.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Jobs running at once on this instance (each on a different BMC).
    pub concurrency: usize,
    /// Jobs running at once across every instance sharing the database; `None` (0 in the
    /// file): no cap beyond each instance's `concurrency`.
    #[serde(deserialize_with = "plinth_types::de::zero_is_none")]
    pub cluster_concurrency: Option<usize>,
    /// The longest one BMC call may take before it counts as a timeout.
    #[serde(
        rename = "call_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub call_timeout: Duration,
    /// How long a power change may take to show in the BMC's power state.
    #[serde(
        rename = "power_wait_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub power_wait: Duration,
    /// How often the power state is read while waiting.
    #[serde(skip)]
    pub power_poll: Duration,
    /// A running job's lease; renewed every third of it while the worker lives.
    #[serde(rename = "lease_secs", deserialize_with = "plinth_types::de::secs")]
    pub lease: Duration,
    /// Backoff after a transient failure: `backoff_base * 2^(attempt-1)`, at most `backoff_max`.
    #[serde(
        rename = "backoff_base_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub backoff_base: Duration,
    #[serde(
        rename = "backoff_max_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub backoff_max: Duration,
    /// How often to look for due jobs without a NOTIFY (retries come due silently).
    #[serde(skip)]
    pub idle_poll: Duration,
    /// Rotate the BMC password of a machine after its first successful identify (issue 21).
    pub rotate_on_enroll: bool,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            concurrency: 64,
            cluster_concurrency: None,
            call_timeout: plinth_bmc::DEFAULT_CALL_TIMEOUT,
            power_wait: Duration::from_secs(180),
            power_poll: Duration::from_secs(2),
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            idle_poll: Duration::from_secs(2),
            rotate_on_enroll: false,
        }
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

/// Why the ISO of a virtual-media boot could not be made: the database or plinth being away
/// is worth another attempt; a machine that left the state, or a setting or file missing, is
/// not.
fn media_failure(e: plinth_types::Error) -> Failure {
    use plinth_types::ErrorKind;
    let transient = matches!(e.kind, ErrorKind::Internal | ErrorKind::Unavailable);
    Failure {
        transient,
        kind: "config",
        message: format!("preparing the virtual-media ISO: {}", e.message),
    }
}

/// Takes jobs from the database and runs them against BMCs.
pub struct JobRunner {
    pub(super) app: App,
    pub(super) connector: Arc<dyn Connector>,
    pub(super) settings: JobSettings,
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
            self.running_set().insert(j.id.uuid());
            let started = std::time::Instant::now();
            let outcome = self.attempt(&j).await;
            let label = match &outcome {
                Ok(_) => "succeeded",
                Err(f) if f.transient && j.attempts < j.max_attempts => "retried",
                Err(_) => "failed",
            };
            self.app
                .metrics()
                .jobs
                .observe(&j.kind, label, started.elapsed().as_secs_f64());
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
            self.running_set().remove(&j.id.uuid());
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, j: &Claimed) -> std::result::Result<Done, Failure> {
        let spec = JobSpec::parse(&j.kind, &j.params).map_err(|e| final_failure("config", e))?;
        if spec == JobSpec::RotateCredentials {
            return self.rotate(j).await;
        }
        let target = self.app.target_of(j)?;
        // A virtual-media boot's ISO, with its agent token, is made for this attempt: a retry
        // makes a new one (and so revokes the last one's token).
        let media = match spec {
            JobSpec::VmediaBoot { agent, .. } => Some(
                self.app
                    .prepare_vmedia_boot(j.machine_id, agent)
                    .await
                    .map_err(media_failure)?
                    .url,
            ),
            _ => None,
        };
        let bmc = self
            .connector
            .connect(&target)
            .await
            .map_err(Failure::from)?;
        let res = match spec {
            JobSpec::FirmwareUpdate { .. } | JobSpec::FirmwareRead => {
                super::firmware::execute(&self.app, j, bmc.as_ref(), spec, &self.settings).await
            }
            _ => execute(bmc.as_ref(), spec, &self.settings, media.as_deref()).await,
        };
        let _ = tokio::time::timeout(self.settings.call_timeout, bmc.close()).await;
        res
    }

    pub(super) fn backoff(&self, attempt: i32) -> Duration {
        super::backoff(
            self.settings.backoff_base,
            self.settings.backoff_max,
            attempt,
        )
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
                .map_err(crate::internal("spawn_all"))?;
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

    /// The reconciler pass that queues again the jobs of runners that died (their lease
    /// passed), every lease. This runner's own leases are renewed first, so that after a
    /// database outage longer than a lease its live jobs are not taken for a dead runner's.
    pub fn stale_pass(self: &Arc<Self>) -> Pass {
        let me = self.clone();
        Pass::new("stale jobs", self.settings.lease, move |_| {
            let me = me.clone();
            async move {
                if let Err(e) = me.renew().await {
                    tracing::warn!(error = %e, "renewing job leases failed");
                }
                me.requeue_stale(false).await.map(drop)
            }
        })
    }

    /// The worker loop: wakes on NOTIFY jobs, on a finished job and on a timer; renews its
    /// leases. On cancellation it stops its BMC calls and hands its running jobs back to the
    /// queue.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = {
            let (pool, wake, cancel) = (self.app.pool().clone(), wake.clone(), cancel.clone());
            tokio::spawn(async move { wakeups::listen(pool, wake, cancel).await })
        };
        let mut tasks = JoinSet::new();
        let mut renew = tokio::time::interval(self.settings.lease / 3);
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
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        listener.abort();
        listener.await.ok();
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
