//! `plinth allocate|release|allocations`: taking ready machines for a tenant and giving them
//! back (released machines go to cleaning).

use clap::Args;
use plinth_types::api::{AllocationRequest, Arch, HealthRequirement};
use uuid::Uuid;

use super::Api;
use super::machines::{MACHINE_HEADERS, machine_rows};
use super::output::{Output, dash, table};

// No doc comment here: on a flattened struct it would replace the `allocate` command's own.
#[derive(Args)]
pub struct AllocateArgs {
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[arg(long)]
    arch: Option<String>,
    #[arg(long)]
    min_cpus: Option<u32>,
    #[arg(long)]
    min_memory_mib: Option<u64>,
    #[arg(long)]
    min_disk_gib: Option<u64>,
    /// Required tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    pool: Option<String>,
    #[arg(long)]
    rack: Option<String>,
    /// Which hardware health is acceptable: not-critical (the default), ok, or any.
    #[arg(long)]
    health: Option<String>,
}

/// `plinth allocate`: prints the allocation and its machines.
pub async fn allocate(api: &Api, args: AllocateArgs) -> anyhow::Result<()> {
    let AllocateArgs {
        count,
        arch,
        min_cpus,
        min_memory_mib,
        min_disk_gib,
        tags,
        pool,
        rack,
        health,
    } = args;
    let health = health
        .map(|h| match h.as_str() {
            "not-critical" | "not_critical" => Ok(HealthRequirement::NotCritical),
            "ok" => Ok(HealthRequirement::Ok),
            "any" => Ok(HealthRequirement::Any),
            other => Err(anyhow::anyhow!(
                "--health {other:?}: not-critical, ok or any"
            )),
        })
        .transpose()?;
    let arch = arch
        .map(|a| a.parse::<Arch>().map_err(anyhow::Error::msg))
        .transpose()?;
    let req = AllocationRequest {
        count: Some(count),
        arch,
        min_cpus,
        min_memory_mib,
        min_disk_gib,
        tags: (!tags.is_empty()).then_some(tags),
        pool,
        rack,
        health,
    };
    let a = api.client.allocate(&req).await?;
    if api.output == Output::Json {
        return api.print_json(&a);
    }
    println!("allocation {}", a.id);
    table(MACHINE_HEADERS, machine_rows(&a.machines));
    Ok(())
}

/// `plinth release ALLOCATION`.
pub async fn release(api: &Api, allocation: Uuid) -> anyhow::Result<()> {
    let a = api.client.release_allocation(allocation).await?;
    if api.output == Output::Json {
        return api.print_json(&a);
    }
    println!(
        "allocation {} released; {} machine(s) cleaning",
        a.id,
        a.machines.len()
    );
    Ok(())
}

/// `plinth allocations [--all]`.
pub async fn list(api: &Api, all: bool) -> anyhow::Result<()> {
    let list = api.client.list_allocations(all).await?;
    if api.output == Output::Json {
        return api.print_json(&list);
    }
    table(
        &["ID", "OWNER", "CREATED", "RELEASED", "MACHINES"],
        list.iter()
            .map(|a| {
                vec![
                    a.id.to_string(),
                    a.owner.clone(),
                    a.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    dash(
                        a.released_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    ),
                    a.machines
                        .iter()
                        .map(|m| m.hostname.clone().unwrap_or_else(|| m.id.to_string()))
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect(),
    );
    Ok(())
}
