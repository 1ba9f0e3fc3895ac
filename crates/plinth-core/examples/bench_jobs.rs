//! The BMC job benchmark of docs/benchmarks.md (run by scripts/bench-bmc.sh).
//!
//! N machines (default 1,000), each with its own Redfish BMC of the test kit (one HTTP server
//! per BMC on 127.0.0.1), one of which accepts connections and never answers. Every machine
//! gets `inspect`: one transaction queueing "boot PXE once" then "power cycle". plinth's job
//! runner (the one `plinth serve` runs, woken by NOTIFY) works them off with the real Redfish
//! driver. Reported: seconds from the first `inspect` to the last job of the answering
//! machines finished, the most requests any one BMC had in flight at once (the per-BMC limit
//! says 1), and where the silent BMC's jobs are at that moment.
//!
//! The peer, in the same run on fresh BMCs: the same calls straight through the driver
//! (`set_boot_verified` + `power(Cycle)` + reading the power state back), with the same
//! concurrency and no database: what the job system costs on top of the BMC calls.
//!
//!   cargo run --release -p plinth-core --example bench_jobs -- [N] [CONCURRENCY]

use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BootDevice, Drivers, PowerAction, PowerState};
use plinth_core::lifecycle::Action;
use plinth_core::workers::{JobRunner, JobSettings};
use plinth_core::{App, BmcKey, Principal};
use plinth_testkit::TestDb;
use plinth_testkit::redfish::RedfishEmulator;
use plinth_types::Verb;
use plinth_types::api::*;

const PASSWORD: &str = "bench-password";

async fn bmcs(n: usize) -> anyhow::Result<Vec<RedfishEmulator>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(RedfishEmulator::start("admin", PASSWORD).await?);
    }
    Ok(v)
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "bench".into(),
        role: plinth_types::Role::Admin,
    }
}

async fn count(app: &App, state: &str, silent: uuid::Uuid) -> anyhow::Result<i64> {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from jobs where state = $1 and machine_id <> $2 and kind <> 'identify'",
    )
    .bind(state)
    .bind(silent)
    .fetch_one(app.pool())
    .await?;
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let concurrency: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let call_timeout = Duration::from_secs(10);

    let db = TestDb::new().await?;
    let app = App::new(
        db.pool.clone(),
        BmcKey::from_base64(&BmcKey::generate_base64())?,
    );
    eprintln!("starting {n} BMCs");
    let emulators = bmcs(n).await?;
    emulators[0].knobs(|k| k.hang = true);

    let mut ids = Vec::with_capacity(n);
    for (i, e) in emulators.iter().enumerate() {
        let b = (i as u32).to_be_bytes();
        let m = app
            .enroll_machine(
                &admin(),
                MachineCreate {
                    hostname: Some(format!("bench-{i:04}")),
                    rack: None,
                    rack_unit: None,
                    size_u: None,
                    pool: None,
                    tags: None,
                    arch: Some(Arch::X86_64),
                    nics: vec![NicSpec {
                        mac: plinth_types::MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]]),
                        ipv4: None,
                        pxe: None,
                    }],
                    bmc: Some(BmcSpec {
                        protocol: BmcProtocol::Redfish,
                        address: e.url(),
                        username: "admin".into(),
                        password: PASSWORD.into(),
                        verify_tls: Some(false),
                        plain_http: Some(true),
                    }),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        ids.push(m.id);
    }
    let silent = ids[0];
    // The enrollment checks are not what is measured.
    sqlx::query("update jobs set state = 'cancelled', finished_at = now() where state = 'queued'")
        .execute(app.pool())
        .await?;

    let settings = JobSettings {
        concurrency,
        cluster_concurrency: None,
        call_timeout,
        power_wait: Duration::from_secs(30),
        power_poll: Duration::from_millis(500),
        lease: Duration::from_secs(30),
        backoff_base: Duration::from_secs(5),
        backoff_max: Duration::from_secs(60),
        idle_poll: Duration::from_secs(2),
        rotate_on_enroll: false,
    };
    let runner = JobRunner::new(
        app.clone(),
        Arc::new(Drivers {
            timeout: call_timeout,
            ipmi_retries: 3,
            ca_pem: None,
        }),
        settings,
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(runner.clone().run(cancel.clone()));

    let cpu0 = cpu_seconds();
    let start = Instant::now();
    for id in &ids {
        app.act(
            &admin(),
            *id,
            Action {
                verb: Verb::Inspect,
                expected_version: None,
                reason: None,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    let queued = start.elapsed();
    let want = 2 * (n as i64 - 1);
    loop {
        let done = count(&app, "succeeded", silent).await?;
        let failed =
            count(&app, "failed", silent).await? + count(&app, "cancelled", silent).await?;
        if failed > 0 {
            anyhow::bail!("{failed} jobs of answering BMCs failed");
        }
        if done == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let silent_jobs: Vec<(String, String, i32)> = sqlx::query_as(
        "select kind, state, attempts from jobs where machine_id = $1 and state <> 'cancelled' order by seq",
    )
    .bind(silent)
    .fetch_all(app.pool())
    .await?;
    cancel.cancel();
    task.await?.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let max_in_flight = emulators
        .iter()
        .map(|e| e.max_in_flight())
        .max()
        .unwrap_or(0);
    let powered = emulators[1..].iter().filter(|e| e.power() == "On").count();
    // Every answering BMC got its boot override before the power action.
    let in_order = emulators[1..]
        .iter()
        .filter(|e| {
            let log = e.requests();
            let patch = log.iter().position(|r| r.starts_with("PATCH"));
            let reset = log.iter().position(|r| r == "POST reset");
            matches!((patch, reset), (Some(p), Some(r)) if p < r)
        })
        .count();
    println!(
        "plinth jobs: {} machines x (boot PXE once + power cycle), concurrency {concurrency}: \
         {:.2} s end to end (queueing {:.2} s), {:.1} machines/s, process CPU {:.2} s; \
         powered on {powered}/{}, boot override before power {in_order}; \
         max requests in flight on one BMC: {max_in_flight}; \
         silent BMC's jobs then: {silent_jobs:?}",
        n - 1,
        elapsed.as_secs_f64(),
        queued.as_secs_f64(),
        (n - 1) as f64 / elapsed.as_secs_f64(),
        cpu,
        n - 1,
    );
    drop(emulators);

    // The peer: the same BMC calls, straight through the driver, no database.
    let peers = bmcs(n - 1).await?;
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for e in &peers {
        let url = e.url();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let bmc = Redfish::new(RedfishConfig {
                base_url: url,
                username: "admin".into(),
                password: PASSWORD.into(),
                verify_tls: false,
                ca_pem: None,
                system: None,
                timeout: call_timeout,
                allow_plain_http: true,
            })?;
            plinth_bmc::set_boot_verified(&bmc, BootDevice::Pxe, false, None).await?;
            let on = bmc.power_state().await? == PowerState::On;
            bmc.power(if on {
                PowerAction::Cycle
            } else {
                PowerAction::On
            })
            .await?;
            while bmc.power_state().await? != PowerState::On {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            bmc.close().await;
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "peer (driver only, no jobs, no database): {} machines, concurrency {concurrency}: \
         {:.2} s, {:.1} machines/s, process CPU {:.2} s",
        n - 1,
        elapsed.as_secs_f64(),
        (n - 1) as f64 / elapsed.as_secs_f64(),
        cpu
    );
    Ok(())
}

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0;
    let u: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let s: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    (u + s) / tick
}
