//! The power sync: every BMC's power state read about once a `interval` (jittered), a change
//! recorded as a `power_changed` event, a BMC that stops answering marked unreachable after
//! `failures_before_unreachable` failures and reachable again when it answers. It is a pass
//! of the reconciler ([`PowerSync::pass`]): each tick claims the due BMCs it has free slots
//! for and polls them in the background, so a slow BMC holds one slot for one call timeout and
//! the next tick never waits for it.

use std::sync::Arc;
use std::time::Duration;

use plinth_bmc::{BmcTarget, Connector, PowerState};
use serde_json::json;
use tokio::sync::Semaphore;
#[cfg(feature = "testing")]
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
#[cfg(feature = "testing")]
use uuid::Uuid;

use super::call::{Failure, call, final_failure, power_str};
use super::event;
use crate::reconcile::{Background, Pass, Reconciler};
use crate::{App, DbResult, Result};

/// How the power-sync reconciler behaves; `[bmc]`'s power-sync keys deserialize into this.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Each BMC is polled about this often (jittered by ±`jitter`); zero: the sync is off.
    #[serde(
        rename = "sync_interval_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub interval: Duration,
    #[serde(skip)]
    pub jitter: f64,
    /// Consecutive failures before a BMC is marked unreachable.
    #[serde(rename = "unreachable_after")]
    pub failures_before_unreachable: i32,
    /// Polls in flight at once on this instance.
    #[serde(rename = "sync_concurrency")]
    pub concurrency: usize,
    #[serde(
        rename = "call_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub call_timeout: Duration,
    /// How often the loop looks for due BMCs.
    #[serde(skip)]
    pub tick: Duration,
    /// After wrong credentials, the next poll waits this long (unless the credentials change).
    #[serde(skip)]
    pub auth_hold: Duration,
    /// Each BMC's health and event log are read about this often, by a power poll that
    /// reaches it (see `health_sync`); zero: never.
    #[serde(
        rename = "health_interval_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub health_interval: Duration,
    /// New event-log entries recorded per read, at most (the rest come at the next).
    pub log_entries_per_poll: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            interval: Duration::from_secs(60),
            jitter: 0.2,
            failures_before_unreachable: 3,
            concurrency: 32,
            call_timeout: plinth_bmc::DEFAULT_CALL_TIMEOUT,
            tick: Duration::from_secs(1),
            auth_hold: Duration::from_secs(3600),
            health_interval: Duration::from_secs(300),
            log_entries_per_poll: 50,
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
    pub(super) app: App,
    connector: Arc<dyn Connector>,
    pub(super) settings: SyncSettings,
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
            // Health only from a BMC that answered, in the same session.
            let h = match &p {
                Ok(_) => self.read_health(b.machine_id, &*bmc).await,
                Err(_) => None,
            };
            let _ = tokio::time::timeout(self.settings.call_timeout, bmc.close()).await;
            p.map(|p| (p, h))
        }
        .await;
        let (res, health) = match res {
            Ok((p, h)) => (Ok(p), h),
            Err(f) => (Err(f), None),
        };
        if let Some(h) = health
            && let Err(e) = self.record_health(b.machine_id, h).await
        {
            tracing::warn!(machine_id = %b.machine_id, error = %e, "recording a health read failed");
        }
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
                let permit = self.slot("run_once").await?;
                let me = self.clone();
                set.spawn(async move {
                    let o = me.poll(b).await;
                    drop(permit);
                    o
                });
            }
        }
        while let Some(o) = set.join_next().await {
            let o = o.map_err(crate::internal("run_once"))?;
            report.polled += 1;
            report.changed += usize::from(o.changed);
            report.failed += usize::from(o.failed);
            report.marked_unreachable += usize::from(o.marked_unreachable);
        }
        Ok(report)
    }

    /// One of this instance's poll slots, waited for.
    async fn slot(&self, op: &'static str) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(crate::internal(op))
    }

    /// The reconciler pass: every `tick`, polls the due BMCs it has slots for, in the
    /// background.
    pub fn pass(self: &Arc<Self>) -> Pass {
        let me = self.clone();
        Pass::new("power sync", self.settings.tick, move |background| {
            let (me, background) = (me.clone(), background.clone());
            async move { me.start_due(&background).await }
        })
    }

    /// Claims the due BMCs this instance has free slots for and starts their polls.
    async fn start_due(self: &Arc<Self>, background: &Background) -> Result<()> {
        let due = self.claim(self.slots.available_permits()).await?;
        for b in due {
            let permit = self.slot("start_due").await?;
            let me = self.clone();
            background.spawn(async move {
                me.poll(b).await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// The power sync on its own, as a reconciler of one pass (plinth serve runs the pass with
    /// the others).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        Reconciler::new().with(self.pass()).run(cancel).await;
        Ok(())
    }
}

impl App {
    /// Makes the machine's BMC (or every BMC, with `None`) due for a power poll and a health
    /// read now. For tests (feature `testing`).
    #[cfg(feature = "testing")]
    pub async fn poll_health_now(&self, machine_id: Option<Uuid>) -> Result<()> {
        let mut conn = self.conn().await?;
        plinth_db::health::due_now(&mut conn, machine_id)
            .await
            .db()?;
        plinth_db::bmcs::poll_now(&mut conn, machine_id)
            .await
            .db()?;
        Ok(())
    }

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
