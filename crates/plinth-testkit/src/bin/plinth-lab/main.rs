//! plinth-lab: the test kit's virtual rack as a program.
//!
//! - `plinth-lab demo --images DIR`: the README's demo. `plinth serve` with its embedded
//!   database, three QEMU machines behind virtual BMCs (Redfish and IPMI), all in network
//!   namespaces; the machines are enrolled into a rack and inspected through plinth's CLI, and
//!   the API is reachable from this machine at `--listen` until Ctrl-C, which removes it all.
//! - `plinth-lab vbmc --spec JSON`: one virtual BMC (what the demo and the rack tests start in
//!   a namespace; see `plinth_testkit::rack`).
//! - `plinth-lab forward --unix PATH --to ADDR`: passes connections on a Unix socket to a TCP
//!   address (the demo runs it in the server namespace, so that plinth's API is reachable
//!   from this machine without giving the namespace an address on the host).
//! - `plinth-lab storm --iface IF --machines N`: the boot storm (see `plinth_testkit::storm`),
//!   run inside a client namespace; prints its report as JSON.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "plinth-lab",
    about = "plinth's virtual rack: the demo and its parts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A virtual rack of three VMs, enrolled and inspected by plinth; runs until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Serve one virtual BMC (a VM's power and boot device) until killed.
    Vbmc {
        /// The VM and BMC (plinth_testkit::rack::VirtualBmcSpec as JSON).
        #[arg(long)]
        spec: String,
    },
    /// Pass each connection on the Unix socket PATH to the TCP address ADDR.
    Forward {
        #[arg(long)]
        unix: PathBuf,
        #[arg(long)]
        to: String,
    },
    /// N simulated machines PXE-booting at once (DHCP, TFTP, iPXE, HTTP, the agent's report);
    /// prints the storm's report as JSON.
    Storm(plinth_testkit::storm::StormArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Vbmc { spec } => vbmc(&spec),
        Command::Forward { unix, to } => forward(unix, to),
        Command::Storm(args) => plinth_testkit::storm::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plinth-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn vbmc(spec: &str) -> anyhow::Result<()> {
    let spec: plinth_testkit::rack::VirtualBmcSpec =
        serde_json::from_str(spec).map_err(|e| anyhow::anyhow!("--spec: {e}"))?;
    tokio::runtime::Runtime::new()?.block_on(plinth_testkit::rack::serve_virtual_bmc(spec))
}

fn forward(unix: PathBuf, to: String) -> anyhow::Result<()> {
    use anyhow::Context;
    tokio::runtime::Runtime::new()?.block_on(async move {
        match std::fs::remove_file(&unix) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", unix.display()));
            }
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&unix)
            .with_context(|| format!("listening on {}", unix.display()))?;
        println!("forwarding {} to {to}", unix.display());
        loop {
            let (mut inbound, _) = listener.accept().await?;
            let to = to.clone();
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect(&to).await {
                    Ok(mut out) => {
                        tokio::io::copy_bidirectional(&mut inbound, &mut out)
                            .await
                            .ok();
                    }
                    Err(e) => eprintln!("connecting to {to}: {e}"),
                }
            });
        }
    })
}
