//! The workers that talk to BMCs: the job runner and the power sync.
//!
//! Both follow DESIGN.md: claim rows with `FOR UPDATE SKIP LOCKED` and commit, call the BMC
//! with no transaction open, record the outcome in a new transaction. At most one job per BMC
//! runs at a time (the claim query and a unique index see to it, across instances), at most
//! `concurrency` per instance (a semaphore), and every BMC call has its own timeout, so one
//! BMC that never answers holds one slot for one timeout and delays nobody else. The driver
//! for a BMC comes from a `plinth_bmc::Connector` (`plinth_bmc::Drivers` in the product).
//!
//! The parts:
//! - `runner`: [`JobRunner`], claiming and running jobs, renewing their leases, handing them
//!   back at shutdown; its reconciler pass requeues the jobs of runners that died;
//! - `wakeups`: `LISTEN jobs`, the runner's wake-up hint;
//! - `execute`: what each kind of job does on the BMC (`vmedia`: the virtual-media boot and
//!   eject);
//! - `call`: one BMC call under its timeout, and the transient/final `Failure` split;
//! - `record`: a job's outcome written back, with its events;
//! - `bios`: the BIOS jobs (set pending, boot, read back and compare; read), and what their
//!   outcome writes to `machine_bios`;
//! - `firmware`: firmware updates and inventory reads (issue 21), which record their
//!   progress in the job row as they go;
//! - `rotate`: the `rotate_credentials` job (stage, set, prove, promote; resolved after a
//!   crash) and the `credential recovery` pass;
//! - `power_sync`: [`PowerSync`], the reconciler pass that reads every BMC's power state;
//! - `webhooks`: [`WebhookWorker`], delivering events to webhooks from their durable queue
//!   (the same claim, lease and backoff pattern, with an HTTP receiver instead of a BMC).

mod bios;
mod call;
mod execute;
mod firmware;
mod health_sync;
mod power_sync;
mod record;
mod rotate;
mod runner;
mod vmedia;
mod wakeups;
mod webhooks;

pub(crate) use firmware::Params as FirmwareParams;
pub use power_sync::{PowerSync, SyncReport, SyncSettings};
pub use runner::{JobRunner, JobSettings};
pub use webhooks::{WebhookSettings, WebhookWorker, signature};

use std::time::Duration;

use uuid::Uuid;

use crate::Result;

/// The wait before retry `attempt` (1 for the first): `base * 2^(attempt-1)`, at most `max`,
/// ±20 % so that the retries of many machines or queues do not come due together. The job
/// runner's and the webhook worker's.
fn backoff(base: Duration, max: Duration, attempt: i32) -> Duration {
    let exp = 2u32.saturating_pow(attempt.saturating_sub(1).clamp(0, 20) as u32);
    let d = base.saturating_mul(exp).min(max);
    d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// An event the workers record on a machine, as `system`.
async fn event(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
    kind: &str,
    details: serde_json::Value,
) -> Result<()> {
    crate::record_event_as(tx, "system", Some(machine_id), kind, details).await
}
