//! plinth-bench: measures a running `plinth serve` over HTTP, the way clients use it.
//! Run by `scripts/bench.sh`, which also seeds the inventory and measures the peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::seq::SliceRandom;

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

async fn latency(
    http: &reqwest::Client,
    token: &str,
    urls: &[String],
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(urls.len());
    for url in urls {
        let t = Instant::now();
        let resp = http.get(url).bearer_auth(token).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        times.push(t.elapsed());
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
        }
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()?;
    let base = a.api_url.trim_end_matches('/');

    // Machine ids to fetch one by one: the first pages of the ready list.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    while ids.len() < 5000 {
        let page: serde_json::Value = http
            .get(format!(
                "{base}/api/v1/machines?state=ready&limit=1000{cursor}"
            ))
            .bearer_auth(&a.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let ms = page["machines"].as_array().context("machines")?;
        ids.extend(
            ms.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    if ids.is_empty() {
        bail!("no ready machines: seed the inventory first");
    }
    ids.shuffle(&mut rand::thread_rng());

    let list_url = format!("{base}/api/v1/machines?state=ready&limit=100");
    let warm: Vec<String> = (0..100).map(|_| list_url.clone()).collect();
    latency(&http, &a.token, &warm).await?;
    let (list_p50, list_p99) = latency(&http, &a.token, &vec![list_url.clone(); a.samples]).await?;
    let get_urls: Vec<String> = ids
        .iter()
        .cycle()
        .take(a.samples)
        .map(|id| format!("{base}/api/v1/machines/{id}"))
        .collect();
    let (get_p50, get_p99) = latency(&http, &a.token, &get_urls).await?;

    let done = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers = (0..a.concurrency).map(|_| {
        let (http, token, done, refused) =
            (http.clone(), a.token.clone(), done.clone(), refused.clone());
        let url = format!("{base}/api/v1/allocations");
        let total = a.allocations;
        async move {
            while done.fetch_add(1, Ordering::Relaxed) < total {
                let resp = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "count": 1 }))
                    .send()
                    .await?;
                let status = resp.status();
                resp.bytes().await?;
                if status.as_u16() != 201 {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
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
