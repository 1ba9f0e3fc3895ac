//! `plinth firmware describe|rollout ...` and `plinth machine firmware ID [--update IMAGE]`
//! (issue 21): firmware images, a machine's inventory and updates, fleet rollouts.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use plinth_types::firmware::{
    FirmwareImageDescribe, FirmwareUpdateRequest, Rollout, RolloutRequest, UpdateMethod,
};
use uuid::Uuid;

use super::Api;
use super::jobs;
use super::output::{Output, dash, table};

#[derive(Subcommand)]
pub enum FirmwareCommand {
    /// Say what a catalog image of kind firmware installs (`plinth image add --kind firmware`
    /// first).
    Describe {
        image: String,
        /// bmc, bios, nic, drive or other.
        #[arg(long)]
        component: String,
        /// The version the BMC reports once it is installed.
        #[arg(long)]
        version: String,
    },
    /// Fleet rollouts: one image to many machines, a few per rack at a time.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout to the machines named, a rack's or a pool's.
    Create {
        image: String,
        /// A machine (repeat for several).
        #[arg(long = "machine", conflicts_with_all = ["rack", "pool"])]
        machines: Vec<Uuid>,
        #[arg(long, conflicts_with = "pool")]
        rack: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        /// Machines updating at once per rack.
        #[arg(long, default_value_t = 1)]
        max_per_rack: u32,
    },
    /// The latest rollouts.
    List,
    /// One rollout, machine by machine.
    Show { id: Uuid },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    Auto,
    Simple,
    Push,
}

fn print_rollout(api: &Api, r: &Rollout) -> anyhow::Result<()> {
    if api.output == Output::Json {
        return api.print_json(r);
    }
    println!(
        "rollout {} of {}: {} (at most {} per rack){}",
        r.id,
        r.image,
        r.state,
        r.max_per_rack,
        r.reason
            .as_deref()
            .map(|x| format!(": {x}"))
            .unwrap_or_default()
    );
    table(
        &["MACHINE", "HOSTNAME", "STATE", "JOB", "ERROR"],
        r.machines
            .iter()
            .map(|m| {
                vec![
                    m.machine_id.to_string(),
                    dash(m.hostname.clone()),
                    m.state.clone(),
                    dash(m.job_id),
                    dash(m.error.clone()),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub async fn run(api: &Api, cmd: FirmwareCommand) -> anyhow::Result<()> {
    match cmd {
        FirmwareCommand::Describe {
            image,
            component,
            version,
        } => {
            let img = api
                .client
                .describe_firmware_image(&image, &FirmwareImageDescribe { component, version })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&img);
            }
            println!(
                "{} installs {} {} ({} bytes, sha256 {})",
                img.name, img.component, img.version, img.size, img.sha256
            );
        }
        FirmwareCommand::Rollout { command } => match command {
            RolloutCommand::Create {
                image,
                machines,
                rack,
                pool,
                max_per_rack,
            } => {
                let r = api
                    .client
                    .create_rollout(&RolloutRequest {
                        image,
                        machines: (!machines.is_empty()).then_some(machines),
                        rack,
                        pool,
                        max_per_rack: Some(max_per_rack),
                    })
                    .await?;
                print_rollout(api, &r)?;
            }
            RolloutCommand::List => {
                let rs = api.client.list_rollouts().await?;
                if api.output == Output::Json {
                    return api.print_json(&rs);
                }
                table(
                    &["ID", "IMAGE", "STATE", "MACHINES", "DONE", "CREATED_BY"],
                    rs.iter()
                        .map(|r| {
                            vec![
                                r.id.to_string(),
                                r.image.clone(),
                                r.state.clone(),
                                r.machines.len().to_string(),
                                r.machines
                                    .iter()
                                    .filter(|m| m.state == "succeeded")
                                    .count()
                                    .to_string(),
                                r.created_by.clone(),
                            ]
                        })
                        .collect(),
                );
            }
            RolloutCommand::Show { id } => {
                let r = api.client.get_rollout(id).await?;
                print_rollout(api, &r)?;
            }
        },
    }
    Ok(())
}

/// `plinth machine firmware ID [--update IMAGE [--method M] [--wait]] [--read]`.
pub async fn machine(
    api: &Api,
    id: Uuid,
    update: Option<String>,
    method: Option<MethodArg>,
    read: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let wait = wait.then_some(Duration::from_secs(7200));
    if let Some(image) = update {
        let job = api
            .client
            .update_firmware(
                id,
                &FirmwareUpdateRequest {
                    image,
                    method: method.map(|m| match m {
                        MethodArg::Auto => UpdateMethod::Auto,
                        MethodArg::Simple => UpdateMethod::Simple,
                        MethodArg::Push => UpdateMethod::Push,
                    }),
                },
            )
            .await?;
        return jobs::submit(api, job, wait).await;
    }
    if read {
        let job = api.client.read_firmware(id).await?;
        return jobs::submit(api, job, wait).await;
    }
    let inv = api.client.machine_firmware(id).await?;
    if api.output == Output::Json {
        return api.print_json(&inv);
    }
    match inv.read_at {
        Some(at) => println!("read from the BMC at {at}"),
        None => println!("not read yet: `plinth machine firmware {id} --read`"),
    }
    table(
        &["KIND", "ID", "NAME", "VERSION", "UPDATEABLE"],
        inv.items
            .iter()
            .map(|i| {
                vec![
                    i.kind.clone(),
                    i.id.clone(),
                    i.name.clone(),
                    dash(i.version.clone()),
                    if i.updateable { "yes" } else { "no" }.into(),
                ]
            })
            .collect(),
    );
    Ok(())
}
