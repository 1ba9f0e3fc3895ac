//! Recording script requests. Requests arriving together are recorded together (the batching
//! primitive of [`crate::batch`], as DHCP's lease decisions are): one worker per instance takes
//! whatever is queued (up to [`MAX_BATCH`]) and records it with one `boot_request_batch` call,
//! one round trip and one transaction: the lookup by MAC, the `boot` event, the agent token's
//! hash, the boot-loop count. While a batch is in the database, another starts beside it when
//! a full batch waits, up to `boot.batches_in_flight` at once (one MAC's requests in two of
//! them take turns on the MAC's advisory lock, as two instances' do). `plinth serve` runs the
//! worker ([`App::boot_batches`]) with its other tasks; it stops with them, after recording
//! what was queued.

use std::sync::Arc;

use plinth_db::boot::{BatchItem, BatchParams, BootRow};
use plinth_types::Error;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Batcher, Call, CallError};
use crate::{App, BootEnv, Result};

/// The most requests one batch records. Measured with 256 connections on two cores
/// (docs/benchmarks.md, "The script endpoint, step 7"): 128 and 256 served 18-41 % more
/// scripts than 64, with 20-30 % less PostgreSQL CPU per request, and did not differ beyond
/// the runs' spread; the smaller keeps each transaction's row locks fewer.
pub const MAX_BATCH: usize = 128;

/// A script request waiting to be recorded, with where its row goes.
type Record = Call<BatchItem, Result<Option<BootRow>>>;

/// Where this instance's script requests are queued (see [`App::boot_batches`]).
#[derive(Debug)]
pub struct BootQueue {
    batcher: Batcher<Record>,
}

/// The batch worker of the script requests.
#[derive(Debug)]
pub struct BootBatches {
    queue: batch::Queue<Record>,
    pool: plinth_db::PgPool,
    env: Arc<BootEnv>,
}

impl BootBatches {
    /// The queue of `app`'s script requests and its worker. The queue allows the overlap
    /// `boot.batches_in_flight` sets: another batch only for a full batch's backlog, so that
    /// batches stay as large as they were (a smaller one costs the database more per request,
    /// docs/benchmarks.md "The script endpoint, step 7").
    fn new(app: &App) -> (BootQueue, Self) {
        let (batcher, queue) = batch::queue(4 * MAX_BATCH, MAX_BATCH);
        let queue = queue
            .with_overlap(app.boot.settings.batches_in_flight, MAX_BATCH)
            .with_stats(app.metrics.boot_queue());
        let worker = BootBatches {
            queue,
            pool: app.pool.clone(),
            env: app.boot.clone(),
        };
        (BootQueue { batcher }, worker)
    }

    /// Records batches until `cancel`, then what is still queued.
    pub async fn run(self, cancel: CancellationToken) {
        let (pool, env) = (self.pool, self.env);
        self.queue
            .run(cancel, move |mut batch: Vec<Record>| {
                let (pool, env) = (pool.clone(), env.clone());
                async move {
                    // One lock order for every instance's batches: by MAC.
                    batch.sort_by_key(|a| a.req.mac);
                    let (items, replies): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|c| (c.req, c.reply)).unzip();
                    let results = record_batch(&pool, &env, &items).await;
                    for (reply, r) in replies.into_iter().zip(results) {
                        reply.send(r).ok();
                    }
                }
            })
            .await
    }
}

fn batch_params(env: &BootEnv) -> BatchParams<'_> {
    BatchParams {
        table: &env.table,
        token_secs: env.settings.agent_token_ttl.as_secs_f64(),
        loop_max: i32::try_from(env.settings.loop_max).unwrap_or(i32::MAX - 1),
        loop_window_secs: env.settings.loop_window.as_secs_f64(),
    }
}

/// Records a batch; if the batch as a whole fails (a deadlock with another instance, say), each
/// request is recorded on its own so that one cannot fail the others.
async fn record_batch(
    pool: &plinth_db::PgPool,
    env: &BootEnv,
    items: &[BatchItem],
) -> Vec<Result<Option<BootRow>>> {
    batch::all_or_each(
        items.len(),
        |some| async move {
            let mut conn = pool.acquire().await?;
            plinth_db::boot::request_batch(&mut conn, &items[some], batch_params(env)).await
        },
        |e| {
            tracing::warn!(error = %e, n = items.len(), "a boot batch failed; recording its requests one by one");
            true
        },
        |e| plinth_db::classify(e),
        Error::internal(),
    )
    .await
}

impl App {
    /// The batch worker of this instance's script requests, for `plinth serve` to run with its
    /// other tasks. `None` when there is one already (a request came first: see
    /// [`App::boot_record`]).
    pub fn boot_batches(&self) -> Option<BootBatches> {
        let (queue, worker) = BootBatches::new(self);
        self.boot.queue.set(queue).ok()?;
        Some(worker)
    }

    /// Records one script request through the batch worker. An application used without
    /// `plinth serve` (tests, tools) starts one on first use, on the caller's runtime; once the
    /// worker has stopped (shutdown, or that runtime is gone), a request is recorded on its own.
    pub(super) async fn boot_record(&self, item: BatchItem) -> Result<Option<BootRow>> {
        let queue = self.boot.queue.get_or_init(|| {
            let (queue, worker) = BootBatches::new(self);
            tokio::spawn(worker.run(CancellationToken::new()));
            queue
        });
        match queue.batcher.call(item).await {
            Ok(recorded) => recorded,
            Err(CallError::Stopped(item)) => {
                record_batch(&self.pool, &self.boot, std::slice::from_ref(&item))
                    .await
                    .pop()
                    .unwrap_or(Ok(None))
            }
            Err(CallError::Dropped) => Err(crate::missing("the boot batch worker's answer")()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plinth_types::MacAddr;

    use super::*;
    use crate::BmcKey;
    use crate::dhcp::ClientInfo;

    fn request(mac: &MacAddr, n: u8) -> BatchItem {
        BatchItem {
            mac: *mac,
            remote: None,
            actor: "ipxe".into(),
            details: "{}".into(),
            // Each request mints its own token.
            token_sha256: vec![n; 32],
        }
    }

    /// Queues `n` requests for `mac`, each with its own token, and waits until they are in the
    /// worker's queue.
    async fn queue_requests(
        app: &App,
        mac: MacAddr,
        n: u32,
    ) -> Vec<tokio::task::JoinHandle<Result<Option<BootRow>>>> {
        let tasks = (0..n)
            .map(|k| {
                let app = app.clone();
                let mut token = [mac.octets().as_slice(), &k.to_be_bytes()].concat();
                token.resize(32, 0);
                let item = BatchItem {
                    token_sha256: token,
                    ..request(&mac, 0)
                };
                tokio::spawn(async move { app.boot_record(item).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tasks
    }

    /// Waits for queued requests' answers (at most 30 s each): each recorded, for `machine`.
    async fn recorded(
        tasks: impl IntoIterator<Item = tokio::task::JoinHandle<Result<Option<BootRow>>>>,
        machine: uuid::Uuid,
        what: &str,
    ) {
        for t in tasks {
            let row = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap_or_else(|_| panic!("{what}"))
                .unwrap()
                .unwrap()
                .expect("the machine's row");
            assert_eq!(row.machine_id, machine, "{what}");
        }
    }

    /// With two batches in flight (the default), a full batch's backlog starts a second batch
    /// while the first waits in the database: here the first waits on its MAC's advisory lock,
    /// which the test holds, and the second, another machine's, is recorded meanwhile. A third
    /// batch for the first machine takes its turn behind the first, and every request of both
    /// is counted once.
    #[tokio::test]
    async fn a_backlog_is_recorded_beside_a_batch_that_waits_and_one_mac_takes_turns() {
        let db = plinth_testkit::TestDb::new().await.unwrap();
        let app = App::new(
            db.pool.clone(),
            BmcKey::from_base64(&BmcKey::generate_base64()).unwrap(),
        );
        assert_eq!(app.boot.settings.batches_in_flight, 2);
        let worker = app.boot_batches().expect("the first worker");
        let [a, b]: [MacAddr; 2] =
            ["52:54:00:aa:00:01", "52:54:00:aa:00:02"].map(|m| m.parse().unwrap());
        let mut ids = Vec::new();
        for mac in [a, b] {
            ids.push(
                app.discover_machine(&mac, &ClientInfo::default(), None)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        // The lock every batch takes for a's requests, held by another session.
        let mut holder = db.pool.acquire().await.unwrap();
        sqlx::query("select pg_advisory_lock(1651470196, hashtext($1::macaddr::text))")
            .bind(a.to_string())
            .execute(&mut *holder)
            .await
            .unwrap();
        let full = MAX_BATCH as u32;
        let first = queue_requests(&app, a, full).await;
        let second = queue_requests(&app, b, full).await;
        let cancel = CancellationToken::new();
        let running = tokio::spawn(worker.run(cancel.clone()));
        recorded(second, ids[1], "b's batch is recorded while a's waits").await;
        assert!(
            first.iter().all(|t| !t.is_finished()),
            "a's batch waits on the lock"
        );
        // A second batch for a while the first is under way: it waits behind the first.
        let third = queue_requests(&app, a, full).await;
        assert!(third.iter().all(|t| !t.is_finished()));
        sqlx::query("select pg_advisory_unlock_all()")
            .execute(&mut *holder)
            .await
            .unwrap();
        let a_batches = first.into_iter().chain(third);
        recorded(
            a_batches,
            ids[0],
            "a's batches are recorded once the lock is free",
        )
        .await;
        for (id, n) in ids.iter().zip([2 * full, full]) {
            let counted: i32 =
                sqlx::query_scalar("select requests from boot_windows where machine_id = $1")
                    .bind(id)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(
                counted, n as i32,
                "every request counted once in the boot-loop window"
            );
        }
        let metrics = app.metrics_text(None).await.unwrap();
        assert!(metrics.contains("plinth_boot_batches_total 3"), "{metrics}");
        assert!(
            metrics.contains("plinth_boot_batches_overlapped_total 2"),
            "{metrics}"
        );
        cancel.cancel();
        running.await.unwrap();
    }

    /// The worker as `plinth serve` runs it: what is queued when it is stopped is still
    /// recorded, and a request after the stop is recorded on its own.
    #[tokio::test]
    async fn stopped_the_worker_records_what_was_queued_then_requests_go_alone() {
        let db = plinth_testkit::TestDb::new().await.unwrap();
        let app = App::new(
            db.pool.clone(),
            BmcKey::from_base64(&BmcKey::generate_base64()).unwrap(),
        );
        let worker = app.boot_batches().expect("the first worker");
        assert!(app.boot_batches().is_none(), "one worker per application");
        let mac: MacAddr = "52:54:00:aa:00:01".parse().unwrap();
        let id = app
            .discover_machine(&mac, &ClientInfo::default(), None)
            .await
            .unwrap()
            .unwrap();
        // Three requests wait in the queue: the worker is not running yet.
        let waiting: Vec<_> = (0..3)
            .map(|n| {
                let (app, item) = (app.clone(), request(&mac, n));
                tokio::spawn(async move { app.boot_record(item).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiting.iter().all(|w| !w.is_finished()));
        let cancel = CancellationToken::new();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), worker.run(cancel))
            .await
            .expect("a stopped worker returns once the queue is recorded");
        for w in waiting {
            let row = w.await.unwrap().unwrap().expect("the machine's row");
            assert_eq!(row.machine_id, id);
        }
        let row = app.boot_record(request(&mac, 3)).await.unwrap();
        assert_eq!(row.map(|r| r.machine_id), Some(id));
        let boots: i64 = sqlx::query_scalar(
            "select count(*) from events where kind = 'boot' and machine_id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(boots, 4, "every request recorded once");
    }
}
