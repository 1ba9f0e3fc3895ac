//! `plinth pool list|set`: pools and their settings (the wipe method their machines are
//! cleaned with).

use clap::Subcommand;
use plinth_types::api::{Pool, PoolUpdate, WipeMethod};

use super::Api;
use super::output::{Output, table};

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Every pool: those machines are in and those with settings.
    List,
    /// Set a pool's wipe method: quick, discard, secure, full, or default (`clean.method`).
    Set {
        name: String,
        #[arg(long)]
        wipe_method: String,
    },
}

fn rows(ps: &[Pool]) -> Vec<Vec<String>> {
    ps.iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.effective_wipe_method.to_string(),
                match p.wipe_method {
                    Some(_) => "pool".to_owned(),
                    None => "default".to_owned(),
                },
                p.machines.to_string(),
            ]
        })
        .collect()
}

const HEADERS: &[&str] = &["POOL", "WIPE_METHOD", "FROM", "MACHINES"];

pub async fn run(api: &Api, cmd: PoolCommand) -> anyhow::Result<()> {
    match cmd {
        PoolCommand::List => {
            let all = api.client.list_pools().await?;
            if api.output == Output::Json {
                return api.print_json(&all);
            }
            table(HEADERS, rows(&all));
        }
        PoolCommand::Set { name, wipe_method } => {
            let wipe_method = match wipe_method.as_str() {
                "default" => None,
                m => Some(m.parse::<WipeMethod>().map_err(anyhow::Error::msg)?),
            };
            let p = api
                .client
                .update_pool(&name, &PoolUpdate { wipe_method })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&p);
            }
            table(HEADERS, rows(&[p]));
        }
    }
    Ok(())
}
