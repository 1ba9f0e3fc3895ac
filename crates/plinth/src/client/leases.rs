//! `plinth lease list`: the DHCP leases that are live now.

use clap::Subcommand;
use plinth_client::query::LeaseFilter;
use plinth_types::MacAddr;

use super::Api;
use super::output::{Output, dash, table};
use super::subnets::subnet_id;

#[derive(Subcommand)]
pub enum LeaseCommand {
    /// Live leases.
    List {
        /// Subnet id or CIDR.
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        mac: Option<String>,
    },
}

pub async fn run(api: &Api, cmd: LeaseCommand) -> anyhow::Result<()> {
    match cmd {
        LeaseCommand::List { subnet, mac } => {
            let subnet = match subnet {
                Some(s) => Some(subnet_id(api, &s).await?),
                None => None,
            };
            let mac = mac
                .map(|m| {
                    m.parse::<MacAddr>()
                        .map_err(|e| anyhow::anyhow!("--mac {m}: {e}"))
                })
                .transpose()?;
            let leases = api.client.list_leases(&LeaseFilter { subnet, mac }).await?;
            if api.output == Output::Json {
                return api.print_json(&leases);
            }
            table(
                &["ADDRESS", "STATE", "MAC", "HOSTNAME", "EXPIRES", "MACHINE"],
                leases
                    .iter()
                    .map(|l| {
                        vec![
                            l.address.to_string(),
                            format!("{:?}", l.state).to_lowercase(),
                            dash(l.mac),
                            dash(l.hostname.as_ref()),
                            l.expires_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            dash(l.machine_id),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
    }
}
