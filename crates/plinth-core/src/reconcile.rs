//! The reconciler: one loop for everything that happens because time passed (DESIGN.md, "Time
//! is a reconciler's job"): leases that expired, machines stuck past their state's deadline,
//! agent tokens long dead, jobs whose runner died, BMCs due for a power poll.
//!
//! A [`Pass`] is a name, an interval and an idempotent action that is safe on every instance at
//! once (each row it changes is claimed with `SKIP LOCKED`, pinned to a version, or changed by a
//! statement that is its own guard). [`Reconciler::run`] runs every pass on its own interval,
//! the first time at start; a pass is never run twice at once, and a slow one delays no other.
//! A failed pass is logged with its name and tried again at its next interval. Cancellation
//! stops the loop: the passes under way finish (each is a short database call), and the work
//! they left in the [`Background`] (power polls of slow BMCs) is cancelled and waited for.
//!
//! Tests drive the passes with [`Reconciler::run_once`] rather than by sleeping.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Result;

type Action = dyn Fn(&Background) -> BoxFuture<'static, Result<()>> + Send + Sync;

/// One periodic pass: its name (in logs and spans), how often it runs, and what it does.
pub struct Pass {
    name: &'static str,
    every: Duration,
    action: Box<Action>,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("name", &self.name)
            .field("every", &self.every)
            .finish()
    }
}

/// No pass runs more often than this (an interval of zero would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl Pass {
    pub fn new<F, Fut>(name: &'static str, every: Duration, action: F) -> Pass
    where
        F: Fn(&Background) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        Pass {
            name,
            every: every.max(MIN_INTERVAL),
            action: Box::new(move |bg| Box::pin(action(bg))),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// One run, in a span naming the pass.
    fn start(&self, background: &Background) -> impl Future<Output = Result<()>> + use<> {
        (self.action)(background).instrument(tracing::info_span!("reconcile", pass = self.name))
    }
}

/// Work a pass starts and does not wait for (a poll of a BMC that may be slow): it runs beside
/// the loop, and stops with it.
#[derive(Debug, Clone)]
pub struct Background {
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Background {
    fn new() -> Background {
        Background {
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Runs `work` until it ends or the reconciler stops.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// Waits until the work started so far has ended.
    async fn finish(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// Cancels the work under way and waits for it to stop.
    async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The passes, run by one loop.
#[derive(Debug, Default)]
pub struct Reconciler {
    passes: Vec<Pass>,
}

impl Reconciler {
    pub fn new() -> Reconciler {
        Reconciler::default()
    }

    /// The reconciler with one more pass.
    pub fn with(mut self, pass: Pass) -> Reconciler {
        self.passes.push(pass);
        self
    }

    pub fn passes(&self) -> &[Pass] {
        &self.passes
    }

    /// Every pass once, in order, and then the work they started: for tests and tools.
    pub async fn run_once(&self) -> Vec<(&'static str, Result<()>)> {
        let background = Background::new();
        let mut out = Vec::with_capacity(self.passes.len());
        for p in &self.passes {
            out.push((p.name, p.start(&background).await));
        }
        background.finish().await;
        out
    }

    /// Runs every pass on its interval until `cancel`; then lets the passes under way finish,
    /// stops their background work and returns.
    pub async fn run(self, cancel: CancellationToken) {
        let n = self.passes.len();
        let background = Background::new();
        let mut next = vec![Instant::now(); n];
        let mut busy = vec![false; n];
        let mut running = FuturesUnordered::new();
        let start = |i: usize| {
            let run = self.passes[i].start(&background);
            async move { (i, run.await) }
        };
        let names: Vec<&str> = self.passes.iter().map(|p| p.name).collect();
        tracing::info!(passes = ?names, "reconciler started");
        loop {
            let due = (0..n).filter(|&i| !busy[i]).map(|i| next[i]).min();
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some((i, res)) = running.next() => {
                    busy[i] = false;
                    self.report(i, res);
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let now = Instant::now();
                    for i in 0..n {
                        if !busy[i] && next[i] <= now {
                            busy[i] = true;
                            // On the beat; a pass that overran its interval runs again as soon
                            // as it is done, once.
                            next[i] = (next[i] + self.passes[i].every).max(now);
                            running.push(start(i));
                        }
                    }
                }
            }
        }
        while let Some((i, res)) = running.next().await {
            self.report(i, res);
        }
        background.stop().await;
        tracing::info!("reconciler stopped");
    }

    fn report(&self, i: usize, res: Result<()>) {
        if let Err(e) = res {
            tracing::warn!(pass = self.passes[i].name, error = %e, "reconciler pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use plinth_types::Error;

    use super::*;

    fn counting(name: &'static str, every: Duration, fail: bool) -> (Pass, Arc<AtomicU32>) {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let pass = Pass::new(name, every, move |_| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                if fail { Err(Error::internal()) } else { Ok(()) }
            }
        });
        (pass, runs)
    }

    #[tokio::test]
    async fn passes_run_on_their_intervals_until_cancelled() {
        let (fast, fast_runs) = counting("fast", Duration::from_millis(20), true);
        let (slow, slow_runs) = counting("slow", Duration::from_secs(3600), false);
        // A pass that never ends delays no other, and is never started twice.
        let (stuck, stuck_runs) = {
            let runs = Arc::new(AtomicU32::new(0));
            let r = runs.clone();
            let pass = Pass::new("stuck", Duration::from_millis(10), move |_| {
                r.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok(())
                }
            });
            (pass, runs)
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            Reconciler::new()
                .with(fast)
                .with(slow)
                .with(stuck)
                .run(cancel.clone()),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The failing pass keeps its beat; the hourly one ran once, at start.
        let f = fast_runs.load(Ordering::SeqCst);
        assert!((4..=25).contains(&f), "fast ran {f} times");
        assert_eq!(slow_runs.load(Ordering::SeqCst), 1);
        assert_eq!(stuck_runs.load(Ordering::SeqCst), 1);
        let stopping = Instant::now();
        cancel.cancel();
        task.await.unwrap();
        // The pass under way was let finish.
        assert!(stopping.elapsed() >= Duration::from_millis(100));
        let after = fast_runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            fast_runs.load(Ordering::SeqCst),
            after,
            "nothing runs after the stop"
        );
    }

    #[tokio::test]
    async fn background_work_stops_with_the_loop_and_run_once_waits_for_it() {
        let finished = Arc::new(AtomicU32::new(0));
        let f = finished.clone();
        let pass = Pass::new("spawner", Duration::from_secs(3600), move |bg| {
            let (f, f2) = (f.clone(), f.clone());
            bg.spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                f.fetch_add(1, Ordering::SeqCst);
            });
            bg.spawn(async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                f2.fetch_add(100, Ordering::SeqCst);
            });
            async { Ok(()) }
        });
        let r = Reconciler::new().with(pass);
        let cancel = CancellationToken::new();
        let stopped_after = {
            let started = Instant::now();
            let task = tokio::spawn(r.run(cancel.clone()));
            tokio::time::sleep(Duration::from_millis(150)).await;
            cancel.cancel();
            task.await.unwrap();
            started.elapsed()
        };
        assert!(
            stopped_after < Duration::from_secs(5),
            "the hour-long work was cancelled"
        );
        assert_eq!(finished.load(Ordering::SeqCst), 1);

        let done = Arc::new(AtomicU32::new(0));
        let d = done.clone();
        let short = Reconciler::new().with(Pass::new("short", Duration::from_secs(1), move |bg| {
            let d = d.clone();
            bg.spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                d.fetch_add(1, Ordering::SeqCst);
            });
            async { Err(Error::internal()) }
        }));
        let results = short.run_once().await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0, "short");
        assert!(results[0].1.is_err());
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "run_once waited for the work"
        );
    }
}
