//! plinth-bench: measures a running `plinth serve` over HTTP, the way clients use it: through
//! plinth-client, so each figure includes decoding the typed answer, as a client's does.
//! Run by `scripts/bench.sh`, which also seeds the inventory and measures the peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use plinth_client::Client;
use plinth_client::query::MachineFilter;
use plinth_types::MachineState;
use plinth_types::api::AllocationRequest;
use rand::seq::SliceRandom;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    api_url: String,
    #[arg(long, env = "PLINTH_TOKEN")]
    token: String,
    /// Sequential requests per latency measurement.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Allocations in the throughput measurement.
    #[arg(long, default_value_t = 2000)]
    allocations: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Median and p99 of `n` sequential calls of `call(i)`.
async fn latency<F, Fut, T>(n: usize, call: F) -> anyhow::Result<(Duration, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, plinth_client::Error>>,
{
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        call(i).await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let api = Client::builder(a.api_url.as_str())
        .token(a.token.as_str())
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()?;
    let ready = |limit, cursor| MachineFilter {
        state: Some(MachineState::Ready),
        limit: Some(limit),
        cursor,
        ..Default::default()
    };

    // Machine ids to fetch one by one: the first pages of the ready list.
    let mut ids: Vec<Uuid> = Vec::new();
    let mut cursor = None;
    while ids.len() < 5000 {
        let page = api.list_machines(&ready(1000, cursor)).await?;
        ids.extend(page.machines.iter().map(|m| m.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if ids.is_empty() {
        bail!("no ready machines: seed the inventory first");
    }
    ids.shuffle(&mut rand::thread_rng());

    let list = ready(100, None);
    latency(100, |_| api.list_machines(&list)).await?;
    let (list_p50, list_p99) = latency(a.samples, |_| api.list_machines(&list)).await?;
    let (get_p50, get_p99) = latency(a.samples, |i| api.get_machine(ids[i % ids.len()])).await?;

    let done = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let one = AllocationRequest {
        count: Some(1),
        ..Default::default()
    };
    let workers = (0..a.concurrency).map(|_| {
        let (api, one, done, refused) = (api.clone(), one.clone(), done.clone(), refused.clone());
        let total = a.allocations;
        async move {
            while done.fetch_add(1, Ordering::Relaxed) < total {
                match api.allocate(&one).await {
                    Ok(_) => {}
                    // Any answer but 201 (no ready machine left): counted; the run fails below.
                    Err(e) if e.status().is_some() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    let elapsed = start.elapsed();
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        bail!("{refused} allocations were refused: seed more ready machines");
    }
    println!(
        "| GET /api/v1/machines?state=ready&limit=100 | {} | {} |",
        ms(list_p50),
        ms(list_p99)
    );
    println!(
        "| GET /api/v1/machines/{{id}} | {} | {} |",
        ms(get_p50),
        ms(get_p99)
    );
    println!(
        "| POST /api/v1/allocations (count 1), {} clients | {:.0} allocations/s | {} allocations in {:.2} s |",
        a.concurrency,
        a.allocations as f64 / elapsed.as_secs_f64(),
        a.allocations,
        elapsed.as_secs_f64()
    );
    Ok(())
}
