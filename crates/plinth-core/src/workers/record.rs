//! Recording a job's outcome, in one transaction after the BMC call: success with what it
//! learned (power, identity, reachability), a transient failure queued again after a backoff,
//! or a final failure with its event and the rest of its chain cancelled. A retired machine's
//! BMC is forgotten either way.

use plinth_db::jobs::Claimed;
use serde_json::json;
use uuid::Uuid;

use super::JobRunner;
use super::call::{Failure, power_str};
use super::event;
use super::execute::Done;
use crate::{DbResult, Result};

/// The event kind of a failed job: a distinct one for the two things a technician fixes.
fn failure_event(kind: &str) -> &'static str {
    match kind {
        "auth" => "bmc_auth_failed",
        "unreachable" | "timeout" => "bmc_unreachable",
        _ => "bmc_job_failed",
    }
}

impl JobRunner {
    pub(super) async fn record(
        &self,
        j: &Claimed,
        outcome: std::result::Result<Done, Failure>,
    ) -> Result<()> {
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
                    if self.settings.rotate_on_enroll {
                        super::rotate::after_identify(&mut tx, j.machine_id).await?;
                    }
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
                    scrub_bmc(&mut tx, j.machine_id, j.id.uuid(), true).await?;
                }
                super::bios::record_done(&mut tx, j, &done.result).await?;
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
                    scrub_bmc(&mut tx, j.machine_id, j.id.uuid(), false).await?;
                }
                super::bios::record_failed(&mut tx, j, &f).await?;
                tracing::warn!(job_id = %j.id, machine_id = %j.machine_id, error = %f.message, cancelled = cancelled.len(), "job failed");
            }
        }
        tx.commit().await.db()?;
        Ok(())
    }
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
