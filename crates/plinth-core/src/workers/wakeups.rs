//! The wake-ups of the job runner: `LISTEN jobs`, so that a job inserted by any instance
//! starts at once. A hint only (DESIGN.md): the runner also polls on a timer, and the listener
//! connects again after an error.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// LISTEN jobs: each NOTIFY wakes the runner. Reconnects after errors.
pub(super) async fn listen(pool: plinth_db::PgPool, wake: Arc<Notify>, cancel: CancellationToken) {
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
