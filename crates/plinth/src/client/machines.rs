//! `plinth machine enroll|list|show|edit|action|deploy|events|power|boot-device`: machines,
//! their lifecycle verbs and their BMC actions (the job side of power and boot-device is in
//! `jobs`). Also the machine table and page other commands show (racks, allocations).

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use clap::Subcommand;
use plinth_client::query::{EventFilter, MachineFilter};
use plinth_types::api::{
    ActionRequest, Arch, BmcSpec, DeployRequest, DiskSize, Machine, MachineCreate, MachinePage,
    MachinePatch, NicSpec, RootDeviceHint,
};
use plinth_types::{MacAddr, MachineState};
use uuid::Uuid;

use super::Api;
use super::events::print_events;
use super::jobs;
use super::output::{Output, dash, table};

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
        /// ok, warning, critical or unknown (the BMC's hardware health).
        #[arg(long)]
        health: Option<String>,
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
        /// How the machine boots the ramdisk: network or virtual_media.
        #[arg(long)]
        boot_method: Option<plinth_types::api::BootMethod>,
        /// Boot the way the machine's rack says (forget its own boot method).
        #[arg(long, conflicts_with = "boot_method")]
        rack_boot_method: bool,
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
    /// A machine's serial console: attaches this terminal to it (`~.` leaves, `~B` sends a
    /// break, `~?` lists the escapes); `--log` prints its recording instead (what plinth
    /// recorded while the machine was inspecting, cleaning, deploying or decommissioning).
    Console {
        id: Uuid,
        /// Print the recording instead of attaching.
        #[arg(long)]
        log: bool,
        /// With --log: at most this many of the last bytes (default 4 MiB).
        #[arg(long)]
        max_bytes: Option<u32>,
    },
    /// A machine's events.
    Events { id: Uuid },
    /// A machine's firmware inventory; with --update, install a catalog firmware image
    /// (ready or in maintenance only); with --read, read the inventory again.
    Firmware {
        id: Uuid,
        #[arg(long, value_name = "IMAGE")]
        update: Option<String>,
        #[arg(long, value_enum, requires = "update")]
        method: Option<super::firmware::MethodArg>,
        #[arg(long, conflicts_with = "update")]
        read: bool,
        /// Wait for the job to finish; exit 1 when it failed.
        #[arg(long)]
        wait: bool,
    },
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
    /// A machine's BIOS as last read, or (--set) a change applied at its next boot and read
    /// back (a job).
    Bios {
        #[command(flatten)]
        args: super::bios::MachineBiosArgs,
    },
    /// Give the machine's BMC a new random password that only plinth knows (a job: set on
    /// the BMC, proved by a new login, then stored; never printed).
    BmcRotate {
        id: Uuid,
        /// Queue the job and return (by default the command waits for it; exit 1 when it failed).
        #[arg(long)]
        no_wait: bool,
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

pub(super) fn machine_rows(ms: &[Machine]) -> Vec<Vec<String>> {
    ms.iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                dash(m.hostname.as_ref()),
                format!("{}{}", m.state, if m.maintenance { " (maint)" } else { "" }),
                m.bmc
                    .as_ref()
                    .and_then(|b| b.health.as_ref())
                    .map_or("-".into(), |h| h.status.to_string()),
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

pub(super) const MACHINE_HEADERS: &[&str] = &[
    "ID", "HOSTNAME", "STATE", "HEALTH", "RACK", "POOL", "MAC", "TAGS",
];

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
        if let Some(h) = &b.health {
            kv(
                "health",
                format!(
                    "{} (read {})",
                    h.status,
                    h.checked_at.format("%Y-%m-%d %H:%M:%S")
                ),
            );
            for c in &h.components {
                kv(
                    "",
                    format!("{} {} {}: {}", c.status, c.kind, c.name, c.reason),
                );
            }
        }
        if let Some(i) = &b.identity {
            kv("bmc identity", i.to_string());
        }
    }
    if m.facts.as_object().is_some_and(|o| !o.is_empty()) {
        kv("facts", m.facts.to_string());
    }
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

pub async fn run(api: &Api, cmd: MachineCommand) -> anyhow::Result<()> {
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
            health,
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
                        health: health.clone(),
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
            boot_method,
            rack_boot_method,
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
                boot_method: if rack_boot_method {
                    Some(None)
                } else {
                    boot_method.map(Some)
                },
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
        MachineCommand::Bios { args } => super::bios::machine(api, args).await,
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
        MachineCommand::Firmware {
            id,
            update,
            method,
            read,
            wait,
        } => super::firmware::machine(api, id, update, method, read, wait).await,
        MachineCommand::BmcRotate { id, no_wait } => {
            super::credentials::rotate(api, id, no_wait).await
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
        MachineCommand::Console { id, log, max_bytes } => {
            if !log {
                anyhow::ensure!(max_bytes.is_none(), "--max-bytes goes with --log");
                return super::console::attach(api, id).await;
            }
            let bytes = api.client.console_log(id, max_bytes).await?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
            Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics() {
        let n = parse_nic("52:54:00:12:34:56").unwrap();
        assert_eq!(n.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!((n.ipv4, n.pxe), (None, None));
        let n = parse_nic("52:54:00:12:34:56,ipv4=10.0.0.7,pxe").unwrap();
        assert_eq!(n.ipv4, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(n.pxe, Some(true));
        let err = |s: &str| format!("{:#}", parse_nic(s).unwrap_err());
        assert!(
            err("nonsense").starts_with("--nic nonsense:"),
            "{}",
            err("nonsense")
        );
        assert!(err("52:54:00:12:34:56,ipv4=10.0.0").contains("invalid IPv4 10.0.0"));
        assert!(err("52:54:00:12:34:56,boot").contains("expected MAC[,ipv4=ADDR][,pxe]"));
    }

    #[test]
    fn root_devices() {
        let h = parse_root_device("name=sda, size=largest").unwrap();
        assert_eq!(h.name.as_deref(), Some("sda"));
        assert_eq!(h.serial, None);
        assert_eq!(h.size, Some(DiskSize::Largest));
        let h = parse_root_device("serial=S123,size=smallest,").unwrap();
        assert_eq!(h.serial.as_deref(), Some("S123"));
        assert_eq!(h.size, Some(DiskSize::Smallest));
        assert!(parse_root_device("size=medium").is_err());
        assert!(parse_root_device("sda").is_err());
    }
}
