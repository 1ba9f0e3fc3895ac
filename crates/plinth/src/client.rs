//! The command-line client: every subcommand here is one or two REST calls through
//! plinth-client's typed [`Client`]. Tables for people, `-o json` for scripts; an API error
//! prints its message and exits non-zero.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use plinth_client::Client;
use plinth_client::query::{EventFilter, LeaseFilter, MachineFilter};
use plinth_types::api::*;
use plinth_types::{MacAddr, MachineState};
use serde::Serialize;
use uuid::Uuid;

mod images;
mod jobs;
mod pools;
mod tokens;

#[derive(Args, Clone)]
pub struct Global {
    /// The plinth API.
    #[arg(
        long,
        env = "PLINTH_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api_url: String,
    /// An API token (see `plinth admin create-token`).
    #[arg(long, env = "PLINTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// PEM CA certificates to trust for an https:// API URL, besides the built-in roots (a
    /// plinth whose certificate comes from your own CA).
    #[arg(long, env = "PLINTH_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Racks.
    Rack {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: RackCommand,
    },
    /// Machines.
    Machine {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: MachineCommand,
    },
    /// Allocate ready machines.
    Allocate {
        #[command(flatten)]
        global: Global,
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
    },
    /// Release an allocation: its machines go to cleaning.
    Release {
        #[command(flatten)]
        global: Global,
        allocation: Uuid,
    },
    /// List allocations.
    Allocations {
        #[command(flatten)]
        global: Global,
        /// Include released allocations.
        #[arg(long)]
        all: bool,
    },
    /// DHCP subnets and their address pools.
    Subnet {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: SubnetCommand,
    },
    /// DHCP leases.
    Lease {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Boot images: the catalog of files plinth serves to booting machines.
    Image {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: images::ImageCommand,
    },
    /// API tokens (admins): list, create (optionally expiring), revoke.
    Token {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
    /// Pools: their machines' wipe method.
    Pool {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: pools::PoolCommand,
    },
    /// BMC jobs: power and boot device changes, BMC checks.
    Job {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: jobs::JobCommand,
    },
    /// The audit log.
    Events {
        #[command(flatten)]
        global: Global,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum RackCommand {
    Add {
        name: String,
        #[arg(long)]
        height_u: i32,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        row: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    /// Change a rack's site, room, row or height.
    Edit {
        name: String,
        #[arg(long)]
        height_u: Option<i32>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        row: Option<String>,
    },
    Delete {
        name: String,
    },
}

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

#[derive(Subcommand)]
pub enum MachineCommand {
    /// Enroll a machine.
    Enroll {
        #[arg(long)]
        hostname: Option<String>,
        /// A NIC: MAC[,ipv4=ADDR][,pxe] (repeatable; the first is the PXE NIC unless one says pxe).
        #[arg(long = "nic", required = true)]
        nics: Vec<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        rack_unit: Option<i32>,
        #[arg(long)]
        size_u: Option<i32>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        arch: Option<String>,
        /// redfish or ipmi.
        #[arg(long, requires_all = ["bmc_address", "bmc_username"])]
        bmc_protocol: Option<String>,
        #[arg(long)]
        bmc_address: Option<String>,
        #[arg(long)]
        bmc_username: Option<String>,
        /// The BMC password (prefer the environment variable: it stays out of shell history).
        #[arg(long, env = "PLINTH_BMC_PASSWORD", hide_env_values = true)]
        bmc_password: Option<String>,
        #[arg(long)]
        bmc_insecure: bool,
        /// A Redfish BMC at an http:// address: its password crosses the network in clear.
        #[arg(long)]
        bmc_plain_http: bool,
    },
    /// List machines.
    List {
        #[arg(long)]
        state: Option<MachineStateArg>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Hostname, MAC or serial.
        #[arg(long)]
        q: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Follow next_cursor until the end.
        #[arg(long)]
        all: bool,
    },
    /// Show one machine.
    Show { id: Uuid },
    /// Change a machine's hostname, tags, pool or rack position.
    Edit {
        id: Uuid,
        #[arg(long)]
        hostname: Option<String>,
        /// Replace the tags (repeatable).
        #[arg(long = "tag")]
        tags: Option<Vec<String>>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        rack_unit: Option<i32>,
        #[arg(long)]
        size_u: Option<i32>,
        /// Take the machine out of its rack.
        #[arg(long, conflicts_with_all = ["rack", "rack_unit"])]
        unrack: bool,
        /// Boot file for this machine's PXE firmware (TFTP path or http:// URL).
        #[arg(long)]
        boot_file: Option<String>,
        /// Go back to the default boot file for the machine's architecture.
        #[arg(long, conflicts_with = "boot_file")]
        default_boot_file: bool,
    },
    /// Run a lifecycle verb (inspect, deploy, release, decommission, maintenance_on, ...).
    Action {
        id: Uuid,
        verb: String,
        #[arg(long)]
        reason: Option<String>,
        /// Admins only, with --reason: run an agent outcome (inspect_complete, clean_complete,
        /// deploy_complete, decommission_complete) without the agent's report. Recorded.
        #[arg(long)]
        force: bool,
        /// Only if the machine is still at this state_version.
        #[arg(long)]
        if_version: Option<i64>,
    },
    /// Deploy an allocated machine: write IMAGE (a disk-image of the catalog) to one of its
    /// disks, with its cloud-init data, and boot it from that disk.
    Deploy {
        id: Uuid,
        #[arg(long)]
        image: String,
        /// Which disk: name=sda, serial=S123, size=smallest|largest (comma-separated to combine).
        #[arg(long)]
        root_device: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        /// A file with the cloud-init user data.
        #[arg(long)]
        user_data: Option<std::path::PathBuf>,
        /// A file of SSH public keys, one per line (repeatable).
        #[arg(long = "ssh-keys")]
        ssh_keys: Vec<std::path::PathBuf>,
        /// A file with the cloud-init network-config.
        #[arg(long)]
        network_config: Option<std::path::PathBuf>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        if_version: Option<i64>,
    },
    /// A machine's events.
    Events { id: Uuid },
    /// Power a machine on, off, cycle or reset it through its BMC (a job; see `plinth job`).
    Power {
        id: Uuid,
        #[arg(value_enum)]
        action: jobs::PowerArg,
        /// With off: cut the power instead of asking the OS to shut down.
        #[arg(long)]
        force: bool,
        /// Wait for the job to finish; exit 1 when it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Set the device a machine boots from next (or always, with --persistent).
    BootDevice {
        id: Uuid,
        #[arg(value_enum)]
        device: jobs::DeviceArg,
        #[arg(long)]
        persistent: bool,
        #[arg(long, value_enum)]
        mode: Option<jobs::ModeArg>,
        /// Wait for the job to finish; exit 1 when it failed.
        #[arg(long)]
        wait: bool,
    },
}

/// `MachineState` for clap.
#[derive(Clone, Copy, Debug)]
pub struct MachineStateArg(MachineState);

impl std::str::FromStr for MachineStateArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(MachineStateArg)
    }
}

struct Api {
    client: Client,
    output: Output,
}

impl Api {
    fn new(g: &Global) -> anyhow::Result<Api> {
        let mut builder = Client::builder(g.api_url.as_str()).token_opt(g.token.clone());
        if let Some(path) = &g.ca_file {
            let pem =
                std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
            builder = builder
                .ca_pem(&pem)
                .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        }
        Ok(Api {
            client: builder.build()?,
            output: g.output,
        })
    }

    fn print_json(&self, v: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

fn machine_rows(ms: &[Machine]) -> Vec<Vec<String>> {
    ms.iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                dash(m.hostname.as_ref()),
                format!("{}{}", m.state, if m.maintenance { " (maint)" } else { "" }),
                m.rack.as_ref().map_or("-".into(), |r| {
                    format!("{r}/U{}", m.rack_unit.unwrap_or_default())
                }),
                m.pool.clone(),
                m.nics.first().map_or("-".into(), |n| n.mac.to_string()),
                m.tags.join(","),
            ]
        })
        .collect()
}

const MACHINE_HEADERS: &[&str] = &["ID", "HOSTNAME", "STATE", "RACK", "POOL", "MAC", "TAGS"];

fn print_machine(m: &Machine) {
    let kv = |k: &str, v: String| println!("{k:<18} {v}");
    kv("id", m.id.to_string());
    kv("hostname", dash(m.hostname.as_ref()));
    kv(
        "state",
        format!(
            "{} (version {}, since {})",
            m.state,
            m.state_version,
            m.state_changed_at.to_rfc3339()
        ),
    );
    if let Some(r) = &m.state_reason {
        kv("state reason", r.clone());
    }
    kv(
        "maintenance",
        if m.maintenance {
            format!("yes: {}", dash(m.maintenance_reason.as_ref()))
        } else {
            "no".into()
        },
    );
    kv(
        "rack",
        m.rack.as_ref().map_or("-".into(), |r| {
            format!("{r} U{} ({}U)", m.rack_unit.unwrap_or_default(), m.size_u)
        }),
    );
    kv("pool", m.pool.clone());
    kv("tags", m.tags.join(", "));
    kv("arch", dash(m.arch.map(|a| a.as_str())));
    kv("allocation", dash(m.allocation_id));
    for n in &m.nics {
        kv(
            "nic",
            format!(
                "{}{}{}",
                n.mac,
                n.ipv4.map(|i| format!(" {i}")).unwrap_or_default(),
                if n.pxe { " pxe" } else { "" }
            ),
        );
    }
    if let Some(b) = &m.bmc {
        kv(
            "bmc",
            format!(
                "{} {} user {}{}",
                b.protocol.as_str(),
                b.address,
                b.username,
                if b.plain_http {
                    " (plain HTTP: the password crosses the network in clear)"
                } else if b.verify_tls {
                    ""
                } else {
                    " (TLS not verified)"
                }
            ),
        );
        kv(
            "power",
            format!(
                "{}{}",
                dash(b.power_state.as_ref()),
                b.power_checked_at
                    .map(|t| format!(" (read {})", t.format("%Y-%m-%d %H:%M:%S")))
                    .unwrap_or_default()
            ),
        );
        kv(
            "bmc reachable",
            match (b.reachable, &b.last_error) {
                (None, _) => "not checked yet".into(),
                (Some(true), _) => "yes".into(),
                (Some(false), e) => format!("no: {}", dash(e.as_ref())),
            },
        );
        if let Some(i) = &b.identity {
            kv("bmc identity", i.to_string());
        }
    }
    if m.facts.as_object().is_some_and(|o| !o.is_empty()) {
        kv("facts", m.facts.to_string());
    }
}

fn print_events(events: &[Event]) {
    table(
        &["ID", "AT", "ACTOR", "MACHINE", "KIND", "FROM", "TO"],
        events
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.actor.clone(),
                    dash(e.machine_id),
                    e.kind.clone(),
                    dash(e.from_state),
                    dash(e.to_state),
                ]
            })
            .collect(),
    );
}

fn parse_nic(s: &str) -> anyhow::Result<NicSpec> {
    let mut parts = s.split(',');
    let mac: MacAddr = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| anyhow::anyhow!("--nic {s}: {e}"))?;
    let mut nic = NicSpec {
        mac,
        ipv4: None,
        pxe: None,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("ipv4", ip)) => {
                nic.ipv4 = Some(
                    ip.parse::<Ipv4Addr>()
                        .with_context(|| format!("--nic {s}: invalid IPv4 {ip}"))?,
                )
            }
            None if p == "pxe" => nic.pxe = Some(true),
            _ => bail!("--nic {s}: expected MAC[,ipv4=ADDR][,pxe]"),
        }
    }
    Ok(nic)
}

pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Rack { global, command } => rack(&Api::new(&global)?, command).await,
        ClientCommand::Machine { global, command } => machine(&Api::new(&global)?, command).await,
        ClientCommand::Allocate {
            global,
            count,
            arch,
            min_cpus,
            min_memory_mib,
            min_disk_gib,
            tags,
            pool,
            rack,
        } => {
            let api = Api::new(&global)?;
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
            };
            let a = api.client.allocate(&req).await?;
            if api.output == Output::Json {
                return api.print_json(&a);
            }
            println!("allocation {}", a.id);
            table(MACHINE_HEADERS, machine_rows(&a.machines));
            Ok(())
        }
        ClientCommand::Release { global, allocation } => {
            let api = Api::new(&global)?;
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
        ClientCommand::Allocations { global, all } => {
            let api = Api::new(&global)?;
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
        ClientCommand::Subnet { global, command } => subnet(&Api::new(&global)?, command).await,
        ClientCommand::Lease { global, command } => lease(&Api::new(&global)?, command).await,
        ClientCommand::Image { global, command } => images::run(&Api::new(&global)?, command).await,
        ClientCommand::Job { global, command } => jobs::run(&Api::new(&global)?, command).await,
        ClientCommand::Pool { global, command } => pools::run(&Api::new(&global)?, command).await,
        ClientCommand::Token { global, command } => tokens::run(&Api::new(&global)?, command).await,
        ClientCommand::Events {
            global,
            since,
            limit,
        } => {
            let api = Api::new(&global)?;
            let since = since
                .map(|s| {
                    s.parse::<chrono::DateTime<chrono::Utc>>()
                        .with_context(|| format!("--since {s}: not an RFC 3339 time"))
                })
                .transpose()?;
            let page = api
                .client
                .list_events(&EventFilter {
                    since,
                    after: None,
                    limit,
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&page);
            }
            print_events(&page.events);
            Ok(())
        }
    }
}

async fn rack(api: &Api, cmd: RackCommand) -> anyhow::Result<()> {
    let rack_rows = |rs: &[Rack]| -> Vec<Vec<String>> {
        rs.iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    dash(r.site.as_ref()),
                    dash(r.room.as_ref()),
                    dash(r.row.as_ref()),
                    format!("{}/{}U", r.used_u, r.height_u),
                    r.machine_count.to_string(),
                ]
            })
            .collect()
    };
    const H: &[&str] = &["NAME", "SITE", "ROOM", "ROW", "USED", "MACHINES"];
    match cmd {
        RackCommand::Add {
            name,
            height_u,
            site,
            room,
            row,
        } => {
            let r = api
                .client
                .create_rack(&RackCreate {
                    name,
                    site,
                    room,
                    row,
                    height_u,
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&r);
            }
            table(H, rack_rows(&[r]));
        }
        RackCommand::List => {
            let rs = api.client.list_racks().await?;
            if api.output == Output::Json {
                return api.print_json(&rs);
            }
            table(H, rack_rows(&rs));
        }
        RackCommand::Show { name } => {
            let r = api.client.get_rack(&name).await?;
            let ms = api
                .client
                .list_machines(&MachineFilter {
                    rack: Some(name),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&serde_json::json!({ "rack": r, "machines": ms.machines }));
            }
            table(H, rack_rows(&[r]));
            println!();
            table(MACHINE_HEADERS, machine_rows(&ms.machines));
        }
        RackCommand::Edit {
            name,
            height_u,
            site,
            room,
            row,
        } => {
            let patch = RackPatch {
                site: site.map(Some),
                room: room.map(Some),
                row: row.map(Some),
                height_u,
            };
            let r = api.client.update_rack(&name, &patch).await?;
            if api.output == Output::Json {
                return api.print_json(&r);
            }
            table(H, rack_rows(&[r]));
        }
        RackCommand::Delete { name } => {
            api.client.delete_rack(&name).await?;
            eprintln!("rack {name} deleted");
        }
    }
    Ok(())
}

async fn machine(api: &Api, cmd: MachineCommand) -> anyhow::Result<()> {
    let show = |m: &Machine| -> anyhow::Result<()> {
        if api.output == Output::Json {
            api.print_json(m)
        } else {
            print_machine(m);
            Ok(())
        }
    };
    match cmd {
        MachineCommand::Enroll {
            hostname,
            nics,
            rack,
            rack_unit,
            size_u,
            pool,
            tags,
            arch,
            bmc_protocol,
            bmc_address,
            bmc_username,
            bmc_password,
            bmc_insecure,
            bmc_plain_http,
        } => {
            let nics = nics
                .iter()
                .map(|n| parse_nic(n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let arch = arch
                .map(|a| a.parse::<Arch>().map_err(anyhow::Error::msg))
                .transpose()?;
            let bmc = match bmc_protocol {
                Some(p) => Some(BmcSpec {
                    protocol: p.parse().map_err(anyhow::Error::msg)?,
                    address: bmc_address.unwrap_or_default(),
                    username: bmc_username.unwrap_or_default(),
                    password: bmc_password.context(
                        "--bmc-password or PLINTH_BMC_PASSWORD is required with --bmc-protocol",
                    )?,
                    verify_tls: Some(!bmc_insecure),
                    plain_http: bmc_plain_http.then_some(true),
                }),
                None => None,
            };
            let req = MachineCreate {
                hostname,
                rack,
                rack_unit,
                size_u,
                pool,
                tags: (!tags.is_empty()).then_some(tags),
                arch,
                nics,
                bmc,
            };
            let m = api.client.enroll_machine(&req).await?;
            show(&m)
        }
        MachineCommand::List {
            state,
            rack,
            pool,
            tag,
            q,
            limit,
            all,
        } => {
            let mut cursor: Option<String> = None;
            let mut out = Vec::new();
            loop {
                let page = api
                    .client
                    .list_machines(&MachineFilter {
                        state: state.map(|s| s.0),
                        rack: rack.clone(),
                        pool: pool.clone(),
                        tag: tag.clone(),
                        q: q.clone(),
                        limit,
                        cursor: cursor.clone(),
                    })
                    .await?;
                out.extend(page.machines);
                cursor = page.next_cursor;
                if !all || cursor.is_none() {
                    break;
                }
            }
            if api.output == Output::Json {
                return api.print_json(&MachinePage {
                    machines: out,
                    next_cursor: cursor,
                });
            }
            table(MACHINE_HEADERS, machine_rows(&out));
            if let Some(c) = cursor {
                eprintln!("(more: --all, or the API's cursor={c})");
            }
            Ok(())
        }
        MachineCommand::Show { id } => show(&api.client.get_machine(id).await?),
        MachineCommand::Edit {
            id,
            hostname,
            tags,
            pool,
            rack,
            rack_unit,
            size_u,
            unrack,
            boot_file,
            default_boot_file,
        } => {
            let patch = MachinePatch {
                boot_file: if default_boot_file {
                    Some(None)
                } else {
                    boot_file.map(Some)
                },
                hostname: hostname.map(Some),
                tags,
                pool,
                rack: if unrack { Some(None) } else { rack.map(Some) },
                rack_unit,
                size_u,
                arch: None,
                bmc: None,
            };
            show(&api.client.update_machine(id, &patch).await?)
        }
        MachineCommand::Action {
            id,
            verb,
            reason,
            force,
            if_version,
        } => {
            let body = ActionRequest { reason, force };
            show(
                &api.client
                    .machine_action(id, &verb, &body, if_version)
                    .await?,
            )
        }
        MachineCommand::Deploy {
            id,
            image,
            root_device,
            hostname,
            user_data,
            ssh_keys,
            network_config,
            reason,
            if_version,
        } => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let mut keys = Vec::new();
            for f in &ssh_keys {
                keys.extend(
                    read(f)?
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                );
            }
            let body = DeployRequest {
                image,
                root_device: root_device.as_deref().map(parse_root_device).transpose()?,
                hostname,
                user_data: user_data.as_deref().map(read).transpose()?,
                ssh_authorized_keys: (!ssh_keys.is_empty()).then_some(keys),
                network_config: network_config.as_deref().map(read).transpose()?,
                reason,
            };
            show(&api.client.deploy_machine(id, &body, if_version).await?)
        }
        MachineCommand::Power {
            id,
            action,
            force,
            wait,
        } => {
            let job = api
                .client
                .power(id, &jobs::power_request(action, force))
                .await?;
            let wait = wait.then_some(std::time::Duration::from_secs(600));
            jobs::submit(api, job, wait).await
        }
        MachineCommand::BootDevice {
            id,
            device,
            persistent,
            mode,
            wait,
        } => {
            let job = api
                .client
                .set_boot_device(id, &jobs::boot_request(device, persistent, mode))
                .await?;
            let wait = wait.then_some(std::time::Duration::from_secs(600));
            jobs::submit(api, job, wait).await
        }
        MachineCommand::Events { id } => {
            let page = api
                .client
                .machine_events(id, &EventFilter::default())
                .await?;
            if api.output == Output::Json {
                return api.print_json(&page);
            }
            print_events(&page.events);
            Ok(())
        }
    }
}

/// `name=sda,serial=S1,size=largest` (any of them).
fn parse_root_device(s: &str) -> anyhow::Result<RootDeviceHint> {
    let mut h = RootDeviceHint::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("name", v)) => h.name = Some(v.to_owned()),
            Some(("serial", v)) => h.serial = Some(v.to_owned()),
            Some(("size", "smallest")) => h.size = Some(DiskSize::Smallest),
            Some(("size", "largest")) => h.size = Some(DiskSize::Largest),
            _ => anyhow::bail!(
                "--root-device {part:?}: use name=DISK, serial=SERIAL, size=smallest or size=largest"
            ),
        }
    }
    Ok(h)
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
async fn subnet_id(api: &Api, s: &str) -> anyhow::Result<Uuid> {
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

async fn subnet(api: &Api, cmd: SubnetCommand) -> anyhow::Result<()> {
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

async fn lease(api: &Api, cmd: LeaseCommand) -> anyhow::Result<()> {
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
