//! BMC credentials and discovery (issue 21, part 4): `plinth machine bmc-rotate ID`, a new BMC
//! password only plinth knows (the job followed to its end unless `--no-wait`; nothing printed
//! holds the password), and `plinth bmc scan CIDR`, the BMCs of a network (the scan followed
//! to its end, then listed).

use std::time::Duration;

use uuid::Uuid;

use super::{Api, jobs};

/// How long `bmc-rotate` waits for its job: a few BMC calls, each under the call timeout.
const WAIT: Duration = Duration::from_secs(600);

pub async fn rotate(api: &Api, id: Uuid, no_wait: bool) -> anyhow::Result<()> {
    let job = api.client.rotate_bmc_password(id).await?;
    jobs::submit(api, job, (!no_wait).then_some(WAIT)).await
}

#[derive(clap::Subcommand)]
pub enum BmcCommand {
    /// Find the Redfish and IPMI BMCs at the addresses of CIDR (at most 1024), trying the
    /// configured factory credentials on each; a BMC reporting the MAC of a discovered machine
    /// is attached to it and the machine enrolled. Nothing outside CIDR is contacted.
    Scan {
        cidr: String,
        /// A TCP port to probe for Redfish (repeatable; default 443).
        #[arg(long = "redfish-port")]
        redfish_ports: Vec<u16>,
        /// A UDP port to probe for IPMI (repeatable; default 623).
        #[arg(long = "ipmi-port")]
        ipmi_ports: Vec<u16>,
        /// Addresses started per second, at most (default 50).
        #[arg(long)]
        rate: Option<u32>,
        /// Queue the scan and return (by default the command waits for it and lists what it
        /// found).
        #[arg(long)]
        no_wait: bool,
    },
    /// A scan and what it found.
    ShowScan { id: Uuid },
}

pub async fn run(api: &Api, cmd: BmcCommand) -> anyhow::Result<()> {
    match cmd {
        BmcCommand::Scan {
            cidr,
            redfish_ports,
            ipmi_ports,
            rate,
            no_wait,
        } => {
            let req = plinth_types::scan::BmcScanRequest {
                cidr,
                redfish_ports: (!redfish_ports.is_empty()).then_some(redfish_ports),
                ipmi_ports: (!ipmi_ports.is_empty()).then_some(ipmi_ports),
                rate,
            };
            let mut scan = api.client.create_bmc_scan(&req).await?;
            let deadline = std::time::Instant::now() + WAIT;
            while !no_wait && matches!(scan.state.as_str(), "queued" | "running") {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "scan {} still {} after {} s",
                    scan.id,
                    scan.state,
                    WAIT.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                scan = api.client.get_bmc_scan(scan.id).await?;
            }
            show_scan(api, &scan)
        }
        BmcCommand::ShowScan { id } => show_scan(api, &api.client.get_bmc_scan(id).await?),
    }
}

fn show_scan(api: &Api, s: &plinth_types::scan::BmcScan) -> anyhow::Result<()> {
    use super::output::{Output, dash, table};
    if api.output == Output::Json {
        return api.print_json(s);
    }
    println!(
        "scan {} of {} ({} addresses): {}{}",
        s.id,
        s.cidr,
        s.addresses,
        s.state,
        s.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let rows = s
        .results
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.protocol.clone(),
                dash(r.vendor.as_deref()),
                dash(r.serial.as_deref()),
                if r.macs.is_empty() {
                    "-".into()
                } else {
                    r.macs.join(",")
                },
                dash(r.credential.as_deref()),
                dash(r.machine_id),
            ]
        })
        .collect();
    table(
        &[
            "ADDRESS",
            "PROTOCOL",
            "VENDOR",
            "SERIAL",
            "MACS",
            "CREDENTIAL",
            "ENROLLED",
        ],
        rows,
    );
    Ok(())
}
