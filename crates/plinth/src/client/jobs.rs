//! `plinth machine power|boot-device` and `plinth job list|show`: BMC jobs.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use plinth_client::query::JobFilter;
use plinth_types::api::{
    BootDeviceRequest, BootTarget, FirmwareMode, Job, JobState, PowerOp, PowerRequest,
};
use uuid::Uuid;

use super::Api;
use super::output::{Output, dash, table};

#[derive(Subcommand)]
pub enum JobCommand {
    /// List jobs, newest first.
    List {
        /// Only this machine's jobs.
        #[arg(long)]
        machine: Option<Uuid>,
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Cancel a queued job (and the later jobs of its action); a running job ends on its own.
    Cancel { id: Uuid },
    /// Show one job.
    Show {
        id: Uuid,
        /// Wait until it has finished; exit 1 when it failed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PowerArg {
    On,
    Off,
    Cycle,
    Reset,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Pxe,
    Disk,
    BiosSetup,
    Cdrom,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Bios,
    Uefi,
}

pub fn power_request(action: PowerArg, force: bool) -> PowerRequest {
    PowerRequest {
        action: match action {
            PowerArg::On => PowerOp::On,
            PowerArg::Off => PowerOp::Off,
            PowerArg::Cycle => PowerOp::Cycle,
            PowerArg::Reset => PowerOp::Reset,
        },
        force: force.then_some(true),
    }
}

pub fn boot_request(
    device: DeviceArg,
    persistent: bool,
    mode: Option<ModeArg>,
) -> BootDeviceRequest {
    BootDeviceRequest {
        device: match device {
            DeviceArg::Pxe => BootTarget::Pxe,
            DeviceArg::Disk => BootTarget::Disk,
            DeviceArg::BiosSetup => BootTarget::BiosSetup,
            DeviceArg::Cdrom => BootTarget::Cdrom,
        },
        persistent: persistent.then_some(true),
        mode: mode.map(|m| match m {
            ModeArg::Bios => FirmwareMode::Bios,
            ModeArg::Uefi => FirmwareMode::Uefi,
        }),
    }
}

/// Shows a job just queued, or with `wait` follows it to its end.
pub async fn submit(api: &Api, job: Job, wait: Option<Duration>) -> anyhow::Result<()> {
    match wait {
        Some(limit) => follow(api, job, limit).await,
        None => {
            if api.output == Output::Json {
                return api.print_json(&job);
            }
            print_job(&job);
            eprintln!("queued; follow it with: plinth job show {} --wait", job.id);
            Ok(())
        }
    }
}

async fn follow(api: &Api, mut job: Job, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = (job.state, job.attempts);
    while !job.state.is_finished() {
        if start.elapsed() > limit {
            bail!(
                "job {} is still {} after {} s (attempt {}{})",
                job.id,
                job.state.as_str(),
                limit.as_secs(),
                job.attempts,
                job.last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        job = api.client.get_job(job.id).await?;
        if (job.state, job.attempts) != last && api.output == Output::Table {
            eprintln!(
                "{} attempt {}{}",
                job.state.as_str(),
                job.attempts,
                job.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            last = (job.state, job.attempts);
        }
    }
    if api.output == Output::Json {
        api.print_json(&job)?;
    } else {
        print_job(&job);
    }
    match job.state {
        JobState::Succeeded => Ok(()),
        s => bail!(
            "job {} {}: {}",
            job.id,
            s.as_str(),
            job.last_error.as_deref().unwrap_or("no reason recorded")
        ),
    }
}

fn what(j: &Job) -> String {
    match j.kind.as_str() {
        "power" => {
            let force = j.params["force"].as_bool() == Some(true);
            format!(
                "power {}{}",
                j.params["action"].as_str().unwrap_or("?"),
                if force { " (forced)" } else { "" }
            )
        }
        "boot_device" => format!(
            "boot {}{}{}",
            j.params["device"].as_str().unwrap_or("?"),
            if j.params["persistent"].as_bool() == Some(true) {
                " persistent"
            } else {
                " once"
            },
            j.params["mode"]
                .as_str()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        ),
        other => other.to_owned(),
    }
}

fn print_job(j: &Job) {
    let kv = |k: &str, v: String| println!("{k:<14} {v}");
    kv("id", j.id.to_string());
    kv("machine", j.machine_id.to_string());
    kv("job", what(j));
    kv("state", j.state.as_str().into());
    kv("attempts", format!("{} of {}", j.attempts, j.max_attempts));
    kv("requested by", j.requested_by.clone());
    kv("created", j.created_at.to_rfc3339());
    if let Some(t) = j.started_at {
        kv("started", t.to_rfc3339());
    }
    if let Some(t) = j.finished_at {
        kv("finished", t.to_rfc3339());
    } else if j.state == JobState::Queued && j.attempts > 0 {
        kv("next attempt", j.not_before.to_rfc3339());
    }
    if let Some(e) = &j.last_error {
        kv("last error", e.clone());
    }
    if let Some(r) = &j.result {
        kv("result", r.to_string());
    }
}

pub async fn run(api: &Api, cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::List {
            machine,
            state,
            limit,
        } => {
            let state = state
                .map(|s| s.parse::<JobState>().map_err(anyhow::Error::msg))
                .transpose()?;
            let page = api
                .client
                .list_jobs(&JobFilter {
                    machine,
                    state,
                    limit,
                    cursor: None,
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&page);
            }
            table(
                &[
                    "ID",
                    "MACHINE",
                    "JOB",
                    "STATE",
                    "ATTEMPTS",
                    "CREATED",
                    "LAST ERROR",
                ],
                page.jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.to_string(),
                            j.machine_id.to_string(),
                            what(j),
                            j.state.as_str().into(),
                            j.attempts.to_string(),
                            j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            dash(j.last_error.as_ref()),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        JobCommand::Cancel { id } => {
            let job = api.client.cancel_job(id).await?;
            if api.output == Output::Json {
                return api.print_json(&job);
            }
            print_job(&job);
            Ok(())
        }
        JobCommand::Show { id, wait, timeout } => {
            let job = api.client.get_job(id).await?;
            if wait {
                return follow(api, job, Duration::from_secs(timeout)).await;
            }
            if api.output == Output::Json {
                return api.print_json(&job);
            }
            print_job(&job);
            Ok(())
        }
    }
}
