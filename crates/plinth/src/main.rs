//! `plinth`: the service (`plinth serve`), its database tools (`migrate`, `admin`) and a
//! command-line client for the REST API. Configuration and wiring only: the business logic
//! lives in plinth-core.

mod client;
mod config;
mod serve;
mod tftp;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The service allocates and frees per packet and per request on many threads; glibc's malloc
// was about a fifth of plinth's CPU in the script endpoint's profile (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "plinth",
    version,
    about = "Bare-metal provisioning: inventory, lifecycle, network boot, BMC control"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the service's own commands find their configuration.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The TOML configuration file.
    #[arg(long, short = 'c', env = "PLINTH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Shortcut for database.url.
    #[arg(long, global = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: REST API, boot endpoints, DHCP and TFTP (as configured).
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        /// Shortcut for http.listen.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Administration straight on the database (no API token needed).
    Admin {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    #[command(flatten)]
    Client(Box<client::ClientCommand>),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an API token and print its secret (once) on stdout.
    CreateToken {
        #[arg(long)]
        name: String,
        /// admin, operator, client or viewer.
        #[arg(long)]
        role: plinth_types::Role,
    },
    /// Create a web UI user, or set the role and password of an existing one (which ends its
    /// sessions). Without --password it is asked for (twice) on the terminal, or read as one
    /// line from standard input when that is not a terminal.
    CreateUser {
        #[arg(long)]
        username: String,
        /// admin, operator, client or viewer.
        #[arg(long)]
        role: plinth_types::Role,
        /// The password (visible to other users of this machine while plinth runs; prefer the
        /// prompt or the environment variable).
        #[arg(long, env = "PLINTH_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Revoke an API token.
    RevokeToken {
        #[arg(long)]
        name: String,
    },
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Client(_)) {
        // A client whose reader went away ends quietly (`plinth machine list | head`).
        client::default_sigpipe();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve { server, listen } => serve::serve(&server, listen).await,
            Command::Migrate { server } => serve::migrate_only(&server).await,
            Command::Admin { server, command } => match command {
                AdminCommand::CreateToken { name, role } => {
                    serve::create_token(&server, &name, role).await
                }
                AdminCommand::CreateUser {
                    username,
                    role,
                    password,
                } => serve::create_user(&server, &username, role, password).await,
                AdminCommand::RevokeToken { name } => serve::revoke_token(&server, &name).await,
            },
            Command::Client(c) => client::run(*c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
