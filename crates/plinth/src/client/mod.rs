//! The command-line client: every subcommand here is one or two REST calls through
//! plinth-client's typed [`Client`]. Tables for people, `-o json` for scripts; an API error
//! prints its message and exits non-zero.
//!
//! This file holds what every subcommand shares (the global options, the connection to the
//! API, the dispatch); each group of subcommands has a file of its own, named after what it
//! manages: `racks`, `machines`, `allocations`, `subnets`, `leases`, `images`, `jobs`,
//! `pools`, `tokens`, `events`, and `console` (`plinth machine console`'s terminal). `output` renders tables; `sys` restores SIGPIPE. A subcommand file owns its clap
//! arguments, its calls and its table, so adding a command touches one file and this dispatch.

use anyhow::Context;
use clap::{Args, Subcommand};
use plinth_client::Client;
use serde::Serialize;
use uuid::Uuid;

mod allocations;
mod bios;
mod console;
mod credentials;
mod events;
mod firmware;
mod images;
mod jobs;
mod leases;
mod machines;
mod output;
mod pools;
mod racks;
mod subnets;
mod sys;
mod tokens;
mod webhooks;

use output::Output;
pub use sys::default_sigpipe;

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

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Racks.
    Rack {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: racks::RackCommand,
    },
    /// Machines.
    Machine {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: machines::MachineCommand,
    },
    /// Allocate ready machines.
    Allocate {
        #[command(flatten)]
        global: Global,
        #[command(flatten)]
        args: allocations::AllocateArgs,
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
        command: subnets::SubnetCommand,
    },
    /// DHCP leases.
    Lease {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: leases::LeaseCommand,
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
    /// The audit log; `plinth events watch` follows it live.
    #[command(args_conflicts_with_subcommands = true)]
    Events {
        #[command(flatten)]
        global: Global,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[command(subcommand)]
        command: Option<events::EventsCommand>,
    },
    /// BIOS profiles: named sets of attributes a pool's machines get on their way to ready.
    BiosProfile {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: bios::BiosProfileCommand,
    },
    /// Firmware (issue 21): describe images, fleet rollouts (a machine's inventory and
    /// updates: `plinth machine firmware`).
    Firmware {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: firmware::FirmwareCommand,
    },
    /// BMC networks (admins): `plinth bmc scan CIDR` finds the BMCs on one.
    Bmc {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: credentials::BmcCommand,
    },
    /// Webhooks (admins): add, list, remove, and a webhook's deliveries.
    Webhook {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: webhooks::WebhookCommand,
    },
}

/// The API as the subcommands see it: a typed client and the output format asked for.
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

pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Rack { global, command } => racks::run(&Api::new(&global)?, command).await,
        ClientCommand::Machine { global, command } => {
            machines::run(&Api::new(&global)?, command).await
        }
        ClientCommand::Allocate { global, args } => {
            allocations::allocate(&Api::new(&global)?, args).await
        }
        ClientCommand::Release { global, allocation } => {
            allocations::release(&Api::new(&global)?, allocation).await
        }
        ClientCommand::Allocations { global, all } => {
            allocations::list(&Api::new(&global)?, all).await
        }
        ClientCommand::Subnet { global, command } => {
            subnets::run(&Api::new(&global)?, command).await
        }
        ClientCommand::Lease { global, command } => leases::run(&Api::new(&global)?, command).await,
        ClientCommand::Image { global, command } => images::run(&Api::new(&global)?, command).await,
        ClientCommand::Job { global, command } => jobs::run(&Api::new(&global)?, command).await,
        ClientCommand::Pool { global, command } => pools::run(&Api::new(&global)?, command).await,
        ClientCommand::BiosProfile { global, command } => {
            bios::profile(&Api::new(&global)?, command).await
        }
        ClientCommand::Token { global, command } => tokens::run(&Api::new(&global)?, command).await,
        ClientCommand::Bmc { global, command } => {
            credentials::run(&Api::new(&global)?, command).await
        }
        ClientCommand::Events {
            global,
            command: Some(command),
            ..
        } => events::run(&Api::new(&global)?, command).await,
        ClientCommand::Events {
            global,
            since,
            limit,
            command: None,
        } => events::list(&Api::new(&global)?, since, limit).await,
        ClientCommand::Webhook { global, command } => {
            webhooks::run(&Api::new(&global)?, command).await
        }
        ClientCommand::Firmware { global, command } => {
            firmware::run(&Api::new(&global)?, command).await
        }
    }
}
