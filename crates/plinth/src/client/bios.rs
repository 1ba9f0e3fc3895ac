//! `plinth machine bios ID [--set K=V ...]` and `plinth bios-profile add|list|show|remove|assign`:
//! BIOS settings (issue 21). A value given as `K=V` is sent as a boolean (`true`, `false`) or
//! an integer when it reads as one, else as a string; `K:=JSON` sends it as written (a string
//! that looks like a number: `AssetTag:='"42"'`).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use plinth_types::api::{BiosProfile, BiosProfileCreate, BiosRequest, PoolBiosProfile};
use serde_json::Value;
use uuid::Uuid;

use super::Api;
use super::jobs;
use super::output::{Output, dash, table};

#[derive(Args)]
pub struct MachineBiosArgs {
    id: Uuid,
    /// An attribute to set at the next boot: NAME=VALUE or NAME:=JSON (repeatable). Without
    /// any, shows the BIOS as last read.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Also when the machine is in use (allocated, deployed): the change reboots it.
    #[arg(long)]
    force: bool,
    /// Wait for the job to finish; exit 1 when it failed (naming what did not stick).
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
pub enum BiosProfileCommand {
    /// Every profile and the pools that use it.
    List,
    Show {
        name: String,
    },
    /// Add a profile: a name and its attributes (NAME=VALUE or NAME:=JSON, repeatable).
    Add {
        name: String,
        #[arg(long = "set", required = true)]
        set: Vec<String>,
    },
    Remove {
        name: String,
    },
    /// Give a pool's machines this profile on their way to ready (`--none`: no profile).
    Assign {
        pool: String,
        #[arg(required_unless_present = "none")]
        profile: Option<String>,
        #[arg(long, conflicts_with = "profile")]
        none: bool,
    },
}

/// The `--set` values (see [`plinth_types::api::parse_bios_assignment`]).
pub(super) fn parse_sets(sets: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
    plinth_types::api::parse_bios_assignments(sets.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--set {e}"))
}

fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn machine(api: &Api, a: MachineBiosArgs) -> anyhow::Result<()> {
    if !a.set.is_empty() {
        let req = BiosRequest {
            attributes: parse_sets(&a.set)?,
            force: a.force,
        };
        let job = api.client.set_bios(a.id, &req).await?;
        return jobs::submit(api, job, a.wait.then_some(Duration::from_secs(1800))).await;
    }
    let b = api.client.machine_bios(a.id).await?;
    if api.output == Output::Json {
        return api.print_json(&b);
    }
    let Some(attrs) = &b.attributes else {
        println!("no BIOS read yet (a Redfish BMC's BIOS is read after inspection)");
        return Ok(());
    };
    let pending = b.pending.clone().unwrap_or_default();
    table(
        &["ATTRIBUTE", "VALUE", "PENDING"],
        attrs
            .iter()
            .map(|(k, v)| {
                vec![
                    k.clone(),
                    show_value(v),
                    dash(pending.get(k).filter(|p| *p != v).map(show_value)),
                ]
            })
            .collect(),
    );
    println!(
        "read {}; profile {}",
        dash(b.read_at.map(|t| t.to_rfc3339())),
        dash(b.profile)
    );
    if let Some(j) = b.last_apply {
        println!(
            "last change: job {} {}{}",
            j.id,
            j.state.as_str(),
            j.last_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

fn rows(ps: &[BiosProfile]) -> Vec<Vec<String>> {
    ps.iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={}", show_value(v)))
                    .collect::<Vec<_>>()
                    .join(" "),
                if p.pools.is_empty() {
                    "-".into()
                } else {
                    p.pools.join(",")
                },
            ]
        })
        .collect()
}

const HEADERS: &[&str] = &["PROFILE", "ATTRIBUTES", "POOLS"];

pub async fn profile(api: &Api, cmd: BiosProfileCommand) -> anyhow::Result<()> {
    let shown = match cmd {
        BiosProfileCommand::List => api.client.list_bios_profiles().await?,
        BiosProfileCommand::Show { name } => vec![api.client.get_bios_profile(&name).await?],
        BiosProfileCommand::Add { name, set } => {
            let req = BiosProfileCreate {
                name,
                attributes: parse_sets(&set)?,
            };
            vec![api.client.create_bios_profile(&req).await?]
        }
        BiosProfileCommand::Remove { name } => {
            api.client.delete_bios_profile(&name).await?;
            eprintln!("removed {name}");
            return Ok(());
        }
        BiosProfileCommand::Assign { pool, profile, .. } => {
            let p = api
                .client
                .set_pool_bios_profile(&pool, &PoolBiosProfile { profile })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&p);
            }
            println!("pool {pool}: BIOS profile {}", dash(p.profile));
            return Ok(());
        }
    };
    if api.output == Output::Json {
        return api.print_json(&shown);
    }
    table(HEADERS, rows(&shown));
    Ok(())
}
