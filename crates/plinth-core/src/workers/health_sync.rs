//! The power sync's health pass (issue 20): on its own cadence (`bmc.health_interval_secs`),
//! a power poll that reached the BMC also reads the machine's hardware health and the new
//! entries of the BMC's event log, in the same session. A health change becomes a
//! `health_changed` event, each new log entry a `bmc_log` event (at most
//! `bmc.log_entries_per_poll` a poll; the rest come at the next). The first read of a BMC's log
//! records where it ends and replays nothing (docs/decisions.md). A BMC that cannot tell its
//! health or has no log changes nothing, and never fails the power poll.

use plinth_bmc::{Bmc, Health, LogBatch};
use plinth_types::health::{HealthStatus, summarize};
use serde_json::json;
use uuid::Uuid;

use super::call::call;
use super::event;
use super::power_sync::PowerSync;
use crate::{DbResult, Result};

/// What one health read found.
pub(super) struct HealthRead {
    health: Option<Health>,
    log: Option<LogBatch>,
}

impl PowerSync {
    /// Reads health and the log when this BMC's health read is due (claimed here, so another
    /// instance does not read it too). `None`: not due, or the sync of health is off.
    pub(super) async fn read_health(&self, machine_id: Uuid, bmc: &dyn Bmc) -> Option<HealthRead> {
        let s = &self.settings;
        if s.health_interval.is_zero() {
            return None;
        }
        let claimed = async {
            let mut conn = self.app.conn().await?;
            plinth_db::health::claim_due(&mut conn, machine_id, s.health_interval.as_secs_f64())
                .await
                .db()
        }
        .await;
        let cursor = match claimed {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%machine_id, error = %e, "claiming a health read failed");
                return None;
            }
        };
        let health = match call(s.call_timeout, "read health", bmc.health()).await {
            Ok(h) => Some(h),
            Err(f) => {
                tracing::warn!(%machine_id, error = %f.message, "reading the BMC's health failed");
                None
            }
        };
        let max = s.log_entries_per_poll.max(1);
        let log = match call(
            s.call_timeout,
            "read the event log",
            bmc.log_entries(cursor.as_deref(), max),
        )
        .await
        {
            Ok(b) => Some(b),
            Err(f) => {
                tracing::warn!(%machine_id, error = %f.message, "reading the BMC's event log failed");
                None
            }
        };
        Some(HealthRead { health, log })
    }

    /// Stores what a health read found, with its events, in one transaction.
    pub(super) async fn record_health(&self, machine_id: Uuid, r: HealthRead) -> Result<()> {
        let mut tx = self.app.begin().await?;
        if let Some(h) = r.health {
            let now = h.status;
            let components =
                serde_json::to_value(&h.components).map_err(crate::internal("health"))?;
            let old = plinth_db::health::record(&mut tx, machine_id, now.as_str(), &components)
                .await
                .db()?;
            if let Some(old) = old {
                let from = old
                    .as_deref()
                    .and_then(HealthStatus::parse)
                    .unwrap_or(HealthStatus::Unknown);
                // The first read of a healthy (or silent) machine is no news.
                let first_and_fine = old.is_none() && now <= HealthStatus::Ok;
                if from != now && !first_and_fine {
                    let reason = summarize(&h.components);
                    event(
                        &mut tx,
                        machine_id,
                        "health_changed",
                        json!({
                            "from": from, "to": now, "reason": reason,
                            "components": components,
                        }),
                    )
                    .await?;
                    tracing::info!(%machine_id, %from, to = %now, %reason, "health changed");
                }
            }
        }
        if let Some(log) = r.log {
            for e in &log.entries {
                event(
                    &mut tx,
                    machine_id,
                    "bmc_log",
                    json!({
                        "id": e.id, "time": e.time, "severity": e.severity,
                        "message": e.message, "source": e.source,
                    }),
                )
                .await?;
            }
            if log.cursor.len() <= MAX_CURSOR {
                plinth_db::health::set_log_cursor(&mut tx, machine_id, &log.cursor)
                    .await
                    .db()?;
            } else {
                tracing::warn!(%machine_id, len = log.cursor.len(), "the BMC's log cursor is too long to keep");
            }
        }
        tx.commit().await.db()?;
        Ok(())
    }
}

/// The longest cursor stored (the column's check).
const MAX_CURSOR: usize = 262_144;
