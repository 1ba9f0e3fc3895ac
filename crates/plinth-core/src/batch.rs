//! One batching primitive for the paths that write for every request (DHCP lease decisions,
//! iPXE script requests): requests wait in a queue while one database call is under way, and
//! the next call takes everything that waited, up to a maximum. At 10 requests a second each is
//! its own batch with no added delay; in a boot storm one round trip and one commit carry
//! dozens (docs/benchmarks.md). One batch is in flight per queue unless [`Queue::with_overlap`]
//! allows more: measured on two cores, one costs the least CPU per request, because larger
//! batches share more and one database backend contends with nobody; a second batch for a
//! backlog trades some of that CPU for fewer drops and less latency past saturation (DHCP's
//! `dhcp.batches_in_flight`).
//!
//! [`queue`] makes the two halves: the [`Batcher`] that requests are submitted to (cheap to
//! clone), and the [`Queue`] that one worker runs ([`Queue::run`]), a task of `plinth serve`
//! under its cancellation token like every other. Cancelled, the worker takes no new requests,
//! hands what is already queued to the handler (which decides whether it is still worth
//! answering), and returns. A request that waits for its answer is a [`Call`]. A batch that
//! fails as a whole because of one item (a deadlock or a conflict with another instance's
//! batch) is tried again item by item by [`all_or_each`], so that one cannot fail the others.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A queue of requests for one batch worker: at most `capacity` waiting, at most `max_batch`
/// handed over at a time.
pub fn queue<T>(capacity: usize, max_batch: usize) -> (Batcher<T>, Queue<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Batcher { tx },
        Queue {
            rx,
            max_batch: max_batch.max(1),
            window: Duration::ZERO,
            overlap: 1,
            overlap_from: max_batch.max(1),
            stats: Stats::default(),
        },
    )
}

/// What a [`Queue`] handed over: its batches, and those of them that started while another was
/// under way (a backlog that [`Queue::with_overlap`] let in beside it). Cheap to clone: every
/// clone reads the same counts, for the worker's metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    overlapped: AtomicU64,
}

impl Stats {
    /// Batches handed to the handler.
    pub fn batches(&self) -> u64 {
        self.0.batches.load(Ordering::Relaxed)
    }

    /// Batches handed over while another was under way.
    pub fn overlapped(&self) -> u64 {
        self.0.overlapped.load(Ordering::Relaxed)
    }

    fn started(&self, overlapped: bool) {
        self.0.batches.fetch_add(1, Ordering::Relaxed);
        if overlapped {
            self.0.overlapped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where requests are submitted.
#[derive(Debug)]
pub struct Batcher<T> {
    tx: mpsc::Sender<T>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<T> Batcher<T> {
    /// Queues `item`, or hands it back at once when the queue is full or its worker stopped
    /// (a caller that sheds load rather than waits).
    pub fn try_submit(&self, item: T) -> Result<(), T> {
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(t) | mpsc::error::TrySendError::Closed(t) => t,
        })
    }

    /// Queues `item`, waiting for room; hands it back when the worker has stopped.
    pub async fn submit(&self, item: T) -> Result<(), T> {
        self.tx
            .send(item)
            .await
            .map_err(|mpsc::error::SendError(t)| t)
    }
}

/// A request and where its answer goes.
#[derive(Debug)]
pub struct Call<Req, Resp> {
    pub req: Req,
    pub reply: oneshot::Sender<Resp>,
}

/// Why a [`Batcher::call`] has no answer.
#[derive(Debug)]
pub enum CallError<Req> {
    /// The worker has stopped (or never ran on this runtime): the request is handed back,
    /// untouched, for the caller to do on its own.
    Stopped(Req),
    /// The request was taken but dropped unanswered: its outcome is unknown.
    Dropped,
}

impl<Req, Resp> Batcher<Call<Req, Resp>> {
    /// Submits `req` and waits for its answer.
    pub async fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
        let (reply, answer) = oneshot::channel();
        match self.submit(Call { req, reply }).await {
            Ok(()) => answer.await.map_err(|_| CallError::Dropped),
            Err(call) => Err(CallError::Stopped(call.req)),
        }
    }
}

/// The worker's end of the queue.
#[derive(Debug)]
pub struct Queue<T> {
    rx: mpsc::Receiver<T>,
    max_batch: usize,
    window: Duration,
    overlap: usize,
    overlap_from: usize,
    stats: Stats,
}

impl<T> Queue<T> {
    /// Batches start at least `window` apart: a request that arrives sooner after the previous
    /// batch started waits for the rest of the window (or until `max_batch` are waiting), so
    /// that a steady stream goes in fewer, larger batches. Each batch costs the database a
    /// fixed share (a round trip, a transaction, a commit, each statement's start-up) beside
    /// its per-request work, and at a few thousand requests a second that share dominates
    /// (docs/benchmarks.md, "DHCP, step 2"). A request that arrives after a quiet window is
    /// taken at once: the delay is paid only under load, and it is at most `window`.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Up to `most` batches in the database at once, a second (and later) one started only
    /// when `from_items` requests wait for it: a backlog then goes to another connection while
    /// a batch commits, and below that each batch still takes everything that waited. (1, the
    /// default: one batch at a time.)
    pub fn with_overlap(mut self, most: usize, from_items: usize) -> Self {
        self.overlap = most.max(1);
        self.overlap_from = from_items.clamp(1, self.max_batch);
        self
    }

    /// Counts this queue's batches into `stats` (a worker's metrics hold them).
    pub fn with_stats(mut self, stats: Stats) -> Self {
        self.stats = stats;
        self
    }

    /// Hands the queued requests to `handle` in batches of at most `max_batch`, one batch at a
    /// time unless [`Queue::with_overlap`] allows more, until `cancel` (or until every
    /// [`Batcher`] is gone); then waits for the batches under way, hands over what is still
    /// queued and returns.
    pub async fn run<F, Fut>(mut self, cancel: CancellationToken, mut handle: F)
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut running = FuturesUnordered::new();
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut started: Option<tokio::time::Instant> = None;
        let mut closed = false;
        'run: loop {
            if running.len() >= self.overlap {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = running.next() => continue,
                }
            }
            if !running.is_empty() {
                // Another batch while one is under way: only for a backlog.
                let room = self.max_batch - batch.len();
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = running.next() => continue,
                    n = self.rx.recv_many(&mut batch, room), if room > 0 => if n == 0 {
                        closed = true;
                        break;
                    },
                }
                if batch.len() >= self.overlap_from {
                    // (A batch that finished meanwhile is not one this one overlaps.)
                    while let Some(Some(())) = running.next().now_or_never() {}
                    self.stats.started(!running.is_empty());
                    running.push(handle(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(self.max_batch),
                    )));
                }
                continue;
            }
            let room = self.max_batch - batch.len();
            if batch.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    n = self.rx.recv_many(&mut batch, room) => if n == 0 {
                        closed = true;
                        break;
                    },
                }
            } else {
                // (what gathered while the last batch was under way, and what came since)
                while batch.len() < self.max_batch {
                    match self.rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
            }
            if let Some(due) = started.map(|t| t + self.window) {
                while batch.len() < self.max_batch && tokio::time::Instant::now() < due {
                    let room = self.max_batch - batch.len();
                    tokio::select! {
                        _ = cancel.cancelled() => break 'run,
                        _ = tokio::time::sleep_until(due) => break,
                        n = self.rx.recv_many(&mut batch, room) => if n == 0 {
                            break;
                        },
                    }
                }
            }
            if !self.window.is_zero() {
                started = Some(tokio::time::Instant::now());
            }
            self.stats.started(false);
            running.push(handle(std::mem::replace(
                &mut batch,
                Vec::with_capacity(self.max_batch),
            )));
        }
        // The batches under way finish first.
        while running.next().await.is_some() {}
        if closed && batch.is_empty() {
            return;
        }
        // (A batch gathering in its window when the token fired is handed over first.)
        self.rx.close();
        loop {
            let room = self.max_batch - batch.len();
            self.rx.recv_many(&mut batch, room).await;
            if batch.is_empty() {
                break;
            }
            self.stats.started(false);
            handle(std::mem::take(&mut batch)).await;
        }
    }
}

/// The answers to `n` items from one `call` on all of them (`0..n`); when that fails with an
/// error that `split` says may be one item's fault, from one `call` per item (`i..i + 1`, in
/// order), so that one item cannot fail the others. Otherwise every item gets the batch's error
/// through `fail`; an item a call left unanswered gets `unanswered`.
pub async fn all_or_each<T, E, X, Fut>(
    n: usize,
    mut call: impl FnMut(Range<usize>) -> Fut,
    split: impl FnOnce(&E) -> bool,
    fail: impl Fn(E) -> X,
    unanswered: X,
) -> Vec<Result<T, X>>
where
    Fut: Future<Output = Result<Vec<T>, E>>,
    X: Clone,
{
    match call(0..n).await {
        Ok(all) => {
            let mut answers: Vec<Result<T, X>> = all.into_iter().take(n).map(Ok).collect();
            answers.resize_with(n, || Err(unanswered.clone()));
            answers
        }
        Err(e) if n > 1 && split(&e) => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match call(i..i + 1).await {
                    Ok(one) => one.into_iter().next().ok_or_else(|| unanswered.clone()),
                    Err(e) => Err(fail(e)),
                });
            }
            out
        }
        Err(e) => {
            let x = fail(e);
            (0..n).map(|_| Err(x.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn requests_that_wait_together_are_one_batch_and_each_gets_its_answer() {
        let (batcher, queue) = queue::<Call<u32, u32>>(64, 8);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let worker = {
            let sizes = sizes.clone();
            tokio::spawn(queue.run(cancel.clone(), move |batch| {
                sizes.lock().unwrap().push(batch.len());
                async move {
                    // A slow database call: the next requests gather meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    for c in batch {
                        c.reply.send(c.req * 10).ok();
                    }
                }
            }))
        };
        // One request alone is handled at once, as its own batch.
        assert_eq!(batcher.call(1).await.unwrap(), 10);
        let calls: Vec<_> = (0..20)
            .map(|n| {
                let b = batcher.clone();
                tokio::spawn(async move { (n, b.call(n).await.unwrap()) })
            })
            .collect();
        for c in calls {
            let (n, answer) = c.await.unwrap();
            assert_eq!(answer, n * 10);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes[0], 1);
        assert_eq!(sizes.iter().sum::<usize>(), 21);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
        assert!(sizes.len() <= 6, "the 20 went in few batches: {sizes:?}");
        cancel.cancel();
        worker.await.unwrap();
        // Stopped: a request is handed back to do on its own.
        assert!(matches!(batcher.call(7).await, Err(CallError::Stopped(7))));
        assert_eq!(
            batcher
                .try_submit(Call {
                    req: 8,
                    reply: oneshot::channel().0
                })
                .map_err(|c| c.req),
            Err(8)
        );
    }

    /// A full queue: a call waits for room (the script requests' path) and is answered once
    /// the worker makes room, while `try_submit` (DHCP's path) hands its item back at once.
    /// Nothing queued or waiting is lost.
    #[tokio::test]
    async fn a_full_queue_makes_a_call_wait_and_try_submit_hand_back() {
        let (batcher, queue) = queue::<Call<u32, u32>>(2, 2);
        let call = |n: u32| {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(n).await.unwrap() })
        };
        let queued = [call(1), call(2)];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = call(3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (reply, _answer) = oneshot::channel();
        let refused = batcher.try_submit(Call { req: 4, reply });
        assert_eq!(refused.map_err(|c| c.req), Err(4), "the queue is full");
        assert!(!waiting.is_finished(), "a call waits for room");
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(queue.run(cancel.clone(), |batch| async move {
            for c in batch {
                c.reply.send(c.req * 10).ok();
            }
        }));
        for (n, c) in [1, 2, 3]
            .into_iter()
            .zip(queued.into_iter().chain([waiting]))
        {
            let answer = tokio::time::timeout(Duration::from_secs(5), c)
                .await
                .expect("answered once the worker runs")
                .unwrap();
            assert_eq!(answer, n * 10);
        }
        cancel.cancel();
        worker.await.unwrap();
    }

    /// With an overlap of two from three items: while a batch is under way, a second starts
    /// only once three requests wait, never a third, and a cancelled worker lets both finish.
    #[tokio::test]
    async fn with_an_overlap_a_backlog_starts_a_second_batch_while_the_first_is_under_way() {
        let (batcher, queue) = queue::<u32>(64, 8);
        let stats = Stats::default();
        let queue = queue.with_overlap(2, 3).with_stats(stats.clone());
        let counts = |s: &Stats| (s.batches(), s.overlapped());
        let cancel = CancellationToken::new();
        let (started_tx, mut started) = mpsc::unbounded_channel::<Vec<u32>>();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let worker = {
            let (gate, finished) = (gate.clone(), finished.clone());
            tokio::spawn(queue.run(cancel.clone(), move |batch: Vec<u32>| {
                started_tx.send(batch.clone()).unwrap();
                let (gate, finished) = (gate.clone(), finished.clone());
                async move {
                    // A database call that ends when the test says so.
                    gate.acquire().await.unwrap().forget();
                    finished.lock().unwrap().push(batch);
                }
            }))
        };
        batcher.try_submit(1).unwrap();
        assert_eq!(started.recv().await.unwrap(), vec![1]);
        // Two waiting: not yet a second batch.
        batcher.try_submit(2).unwrap();
        batcher.try_submit(3).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(started.try_recv().is_err(), "two waiting start no batch");
        // The third starts one, while the first is still under way.
        batcher.try_submit(4).unwrap();
        assert_eq!(started.recv().await.unwrap(), vec![2, 3, 4]);
        assert!(finished.lock().unwrap().is_empty());
        assert_eq!(
            counts(&stats),
            (2, 1),
            "the second batch overlapped the first"
        );
        // Two under way: however many wait, no third.
        for n in 5..12 {
            batcher.try_submit(n).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(started.try_recv().is_err(), "at most two under way");
        // One finishes: the backlog goes at once, up to the batch's size.
        gate.add_permits(1);
        assert_eq!(started.recv().await.unwrap(), (5..12).collect::<Vec<_>>());
        assert_eq!(counts(&stats), (3, 2), "beside the second, still under way");
        // Cancelled: the batches under way finish, then the worker returns.
        batcher.try_submit(12).unwrap();
        cancel.cancel();
        gate.add_permits(3);
        worker.await.unwrap();
        let mut done = finished.lock().unwrap().concat();
        done.sort_unstable();
        assert_eq!(done, (1..13).collect::<Vec<_>>());
        // (What was queued at the cancel went alone, after the others.)
        assert_eq!(counts(&stats), (4, 2));
    }

    /// A batch that is done when the next one starts does not count as overlapped by it, even
    /// before the worker has seen it finish (the handler here is done at its first poll).
    #[tokio::test]
    async fn batches_done_at_once_never_count_as_overlapped() {
        let (batcher, queue) = queue::<u32>(1024, 4);
        let stats = Stats::default();
        let queue = queue.with_overlap(2, 1).with_stats(stats.clone());
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(queue.run(cancel.clone(), |_batch: Vec<u32>| async {}));
        for n in 0..1000 {
            batcher.try_submit(n).unwrap();
            if n % 50 == 49 {
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
        worker.await.unwrap();
        assert_eq!(stats.batches(), 260, "50 at a time in batches of 4");
        assert_eq!(stats.overlapped(), 0);
    }

    #[tokio::test]
    async fn cancelled_the_worker_hands_over_what_is_queued_then_stops() {
        let (batcher, queue) = queue::<u32>(64, 4);
        for n in 0..10 {
            batcher.try_submit(n).unwrap();
        }
        let cancel = CancellationToken::new();
        cancel.cancel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        queue
            .run(cancel, move |batch| {
                s.lock().unwrap().push(batch);
                async {}
            })
            .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.concat(), (0..10).collect::<Vec<_>>());
        assert!(seen.iter().all(|b| b.len() <= 4), "{seen:?}");
        assert!(
            batcher.try_submit(11).is_err(),
            "no new requests after the stop"
        );
    }

    /// The batches a queue's worker is handed, with when (ms after the start).
    type Seen = Arc<Mutex<Vec<(u128, Vec<u32>)>>>;

    /// Runs `queue` with a worker that records each batch it is handed and when.
    fn record(
        queue: Queue<u32>,
    ) -> (
        tokio::time::Instant,
        Seen,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let t0 = tokio::time::Instant::now();
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let worker = {
            let seen = seen.clone();
            tokio::spawn(queue.run(cancel.clone(), move |batch| {
                seen.lock().unwrap().push((t0.elapsed().as_millis(), batch));
                async {}
            }))
        };
        (t0, seen, cancel, worker)
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_window_requests_under_load_wait_for_it_and_one_after_a_quiet_moment_does_not() {
        let (batcher, windowed) = queue::<u32>(64, 4);
        let (t0, seen, cancel, worker) = record(windowed.with_window(Duration::from_millis(100)));
        let at = |ms: u64| tokio::time::sleep_until(t0 + Duration::from_millis(ms));
        // The first request is taken at once.
        batcher.try_submit(1).unwrap();
        // Those that come within the window after it wait for its end, and go together.
        at(10).await;
        batcher.try_submit(2).unwrap();
        batcher.try_submit(3).unwrap();
        at(30).await;
        batcher.try_submit(4).unwrap();
        // A batch that fills up goes without waiting for the window to end.
        at(110).await;
        batcher.try_submit(5).unwrap();
        at(130).await;
        for n in 6..9 {
            batcher.try_submit(n).unwrap();
        }
        // After a quiet moment, a request is taken at once.
        at(1000).await;
        batcher.try_submit(9).unwrap();
        // Stopped while a request waits in the window: it is handed over, not lost.
        at(1050).await;
        batcher.try_submit(10).unwrap();
        at(1060).await;
        cancel.cancel();
        worker.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (0, vec![1]),
                (100, vec![2, 3, 4]),
                (130, vec![5, 6, 7, 8]),
                (1000, vec![9]),
                (1060, vec![10]),
            ]
        );
        // Without a window (the default), the same requests are taken as they come.
        let (batcher, plain) = queue::<u32>(64, 4);
        let (t0, seen, cancel, worker) = record(plain);
        let at = |ms: u64| tokio::time::sleep_until(t0 + Duration::from_millis(ms));
        batcher.try_submit(1).unwrap();
        at(10).await;
        batcher.try_submit(2).unwrap();
        at(20).await;
        cancel.cancel();
        worker.await.unwrap();
        assert_eq!(
            seen.lock().unwrap().clone(),
            vec![(0, vec![1]), (10, vec![2])]
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_tried_item_by_item_when_the_failure_may_be_one_item_s() {
        // Item 3 makes any batch holding it fail.
        let items = [1u32, 2, 3, 4];
        let calls = Mutex::new(Vec::new());
        let answer = |items: &'static [u32]| {
            let calls = &calls;
            move |r: Range<usize>| async move {
                let some = &items[r];
                calls.lock().unwrap().push(some.to_vec());
                if some.contains(&3) {
                    Err(format!("{} items, 3 among them", some.len()))
                } else {
                    Ok(some.iter().map(|n| n + 100).collect::<Vec<u32>>())
                }
            }
        };
        let got = all_or_each(4, answer(&[1, 2, 3, 4]), |_| true, |e| e, "none".to_owned()).await;
        assert_eq!(
            got,
            vec![
                Ok(101),
                Ok(102),
                Err("1 items, 3 among them".into()),
                Ok(104)
            ]
        );
        assert_eq!(calls.lock().unwrap().len(), 5, "the batch, then each item");
        // A failure that is not one item's: every item gets it, nothing is tried again.
        calls.lock().unwrap().clear();
        let got = all_or_each(2, answer(&[3, 4]), |_| false, |e| e, "none".to_owned()).await;
        let whole = "2 items, 3 among them".to_owned();
        assert_eq!(got, vec![Err(whole.clone()), Err(whole)]);
        assert_eq!(calls.lock().unwrap().len(), 1);
        // A call that answers fewer items than it was given leaves the rest unanswered.
        let short = |r: Range<usize>| {
            let first = items[r.start];
            async move { Ok::<_, String>(vec![first]) }
        };
        let got = all_or_each(2, short, |_| true, |e| e, "none".to_owned()).await;
        assert_eq!(got, vec![Ok(1), Err("none".into())]);
    }
}
