//! `plinth subnet add|list|show|edit|delete`: the DHCP subnets plinth answers on and their
//! address ranges. A subnet is named by its id or its CIDR.

use std::net::Ipv4Addr;

use anyhow::Context;
use clap::Subcommand;
use plinth_types::api::{AddressRange, Subnet, SubnetCreate, SubnetPatch};
use uuid::Uuid;

use super::Api;
use super::output::{Output, dash, table};

#[derive(Subcommand)]
pub enum SubnetCommand {
    /// Add a subnet: `plinth subnet add 10.20.0.0/24 --range 10.20.0.100-10.20.0.199 --router 10.20.0.1`.
    Add {
        cidr: String,
        /// START-END (repeatable).
        #[arg(long = "range", required = true)]
        ranges: Vec<String>,
        #[arg(long)]
        router: Option<Ipv4Addr>,
        /// Repeatable.
        #[arg(long = "dns")]
        dns_servers: Vec<Ipv4Addr>,
        #[arg(long)]
        domain: Option<String>,
        /// Seconds.
        #[arg(long)]
        lease_time: Option<u32>,
        #[arg(long)]
        boot_server: Option<Ipv4Addr>,
        /// A relay agent address (giaddr) serving this subnet (repeatable). Packets relayed
        /// from any other giaddr are not answered.
        #[arg(long = "relay")]
        relay_addresses: Vec<Ipv4Addr>,
        /// Also answer packets relayed from any giaddr inside the subnet (a giaddr can be
        /// forged by anyone on a segment: prefer --relay).
        #[arg(long)]
        relay_any_in_cidr: bool,
    },
    List,
    /// Show a subnet (by id or CIDR).
    Show {
        subnet: String,
    },
    /// Change a subnet (by id or CIDR); given lists replace the old ones.
    Edit {
        subnet: String,
        #[arg(long = "range")]
        ranges: Vec<String>,
        #[arg(long)]
        router: Option<Ipv4Addr>,
        #[arg(long = "dns")]
        dns_servers: Vec<Ipv4Addr>,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        lease_time: Option<u32>,
        #[arg(long)]
        boot_server: Option<Ipv4Addr>,
        #[arg(long = "relay")]
        relay_addresses: Vec<Ipv4Addr>,
        /// true or false: answer packets relayed from any giaddr inside the subnet.
        #[arg(long)]
        relay_any_in_cidr: Option<bool>,
    },
    /// Delete a subnet (by id or CIDR); refused while it has live leases.
    Delete {
        subnet: String,
    },
}

fn parse_range(s: &str) -> anyhow::Result<AddressRange> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--range {s}: expected START-END"))?;
    Ok(AddressRange {
        start: a
            .trim()
            .parse()
            .with_context(|| format!("--range {s}: invalid start address"))?,
        end: b
            .trim()
            .parse()
            .with_context(|| format!("--range {s}: invalid end address"))?,
    })
}

/// A subnet named by id or by CIDR.
pub(super) async fn subnet_id(api: &Api, s: &str) -> anyhow::Result<Uuid> {
    if let Ok(id) = s.parse::<Uuid>() {
        return Ok(id);
    }
    let all = api.client.list_subnets().await?;
    all.iter()
        .find(|n| n.cidr == s)
        .map(|n| n.id)
        .with_context(|| format!("no subnet {s}"))
}

fn subnet_rows(ns: &[Subnet]) -> Vec<Vec<String>> {
    ns.iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.cidr.clone(),
                n.ranges
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect::<Vec<_>>()
                    .join(","),
                dash(n.router),
                format!("{}/{}", n.active_leases, n.pool_size),
                n.lease_time.to_string(),
            ]
        })
        .collect()
}

const SUBNET_HEADERS: &[&str] = &["ID", "CIDR", "RANGES", "ROUTER", "LEASES", "LEASE_TIME"];

pub async fn run(api: &Api, cmd: SubnetCommand) -> anyhow::Result<()> {
    let show = |n: Subnet| -> anyhow::Result<()> {
        if api.output == Output::Json {
            return api.print_json(&n);
        }
        table(SUBNET_HEADERS, subnet_rows(&[n]));
        Ok(())
    };
    match cmd {
        SubnetCommand::Add {
            cidr,
            ranges,
            router,
            dns_servers,
            domain,
            lease_time,
            boot_server,
            relay_addresses,
            relay_any_in_cidr,
        } => {
            let req = SubnetCreate {
                cidr,
                ranges: ranges
                    .iter()
                    .map(|r| parse_range(r))
                    .collect::<anyhow::Result<_>>()?,
                router,
                dns_servers: (!dns_servers.is_empty()).then_some(dns_servers),
                domain,
                lease_time,
                boot_server,
                relay_addresses: (!relay_addresses.is_empty()).then_some(relay_addresses),
                relay_any_in_cidr: relay_any_in_cidr.then_some(true),
            };
            show(api.client.create_subnet(&req).await?)
        }
        SubnetCommand::List => {
            let all = api.client.list_subnets().await?;
            if api.output == Output::Json {
                return api.print_json(&all);
            }
            table(SUBNET_HEADERS, subnet_rows(&all));
            Ok(())
        }
        SubnetCommand::Show { subnet } => {
            let id = subnet_id(api, &subnet).await?;
            show(api.client.get_subnet(id).await?)
        }
        SubnetCommand::Edit {
            subnet,
            ranges,
            router,
            dns_servers,
            domain,
            lease_time,
            boot_server,
            relay_addresses,
            relay_any_in_cidr,
        } => {
            let id = subnet_id(api, &subnet).await?;
            let patch = SubnetPatch {
                ranges: if ranges.is_empty() {
                    None
                } else {
                    Some(
                        ranges
                            .iter()
                            .map(|r| parse_range(r))
                            .collect::<anyhow::Result<_>>()?,
                    )
                },
                router: router.map(Some),
                dns_servers: (!dns_servers.is_empty()).then_some(dns_servers),
                domain: domain.map(Some),
                lease_time,
                boot_server: boot_server.map(Some),
                relay_addresses: (!relay_addresses.is_empty()).then_some(relay_addresses),
                relay_any_in_cidr,
            };
            show(api.client.update_subnet(id, &patch).await?)
        }
        SubnetCommand::Delete { subnet } => {
            let id = subnet_id(api, &subnet).await?;
            api.client.delete_subnet(id).await?;
            eprintln!("subnet {subnet} deleted");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = parse_range("10.20.0.100 - 10.20.0.199").unwrap();
        assert_eq!(r.start, Ipv4Addr::new(10, 20, 0, 100));
        assert_eq!(r.end, Ipv4Addr::new(10, 20, 0, 199));
        let err = |s: &str| format!("{:#}", parse_range(s).unwrap_err());
        assert!(err("10.20.0.100").contains("expected START-END"));
        assert!(err("10.20.0-10.20.0.9").contains("invalid start address"));
        assert!(err("10.20.0.1-x").contains("invalid end address"));
    }
}
