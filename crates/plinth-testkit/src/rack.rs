//! The virtual rack: QEMU machines on a bridge in one namespace, each behind a virtual BMC that
//! plinth drives from another, and `plinth serve` with DHCP and TFTP on the link between them.
//! The rack tests and the demo (`plinth-lab demo`) are built from these parts.
//!
//! ```text
//!  server namespace                        rack namespace
//!  plinth serve ── PREFIX.2 ══ veth ══ bridge ── tap ── QEMU (VM 1)
//!  virtual BMC 1 (127.0.0.1:port)                 └─ tap ── QEMU (VM 2) ...
//!  virtual BMC 2 ...
//! ```
//!
//! A virtual BMC is its own process, `plinth-lab vbmc --spec JSON` ([`VirtualBmcSpec`]), started
//! in the server namespace (next to plinth, like a management network) by
//! [`start_virtual_bmc`]: Redfish (the test kit's [`crate::redfish`] BMC) or IPMI (the test
//! kit's [`crate::ipmi`] BMC), either one playing power and boot device on the VM's QEMU
//! process through [`crate::vm::VirtualMachine`]. Either one serves the VM's serial console
//! over IPMI Serial over LAN ([`VirtualBmc::sol_address`]): the IPMI BMC itself, and for a
//! Redfish BMC an IPMI BMC beside it (same user, same machine), as real Redfish BMCs offer
//! the console over IPMI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

pub use plinth_types::api::BmcProtocol;

use crate::netns::{Lab, Ns, Proc};
use crate::vm::{VirtualMachine, VmSpec};

/// The line a virtual BMC prints once it listens, followed by its address (what plinth
/// enrolls: `http://127.0.0.1:PORT` for Redfish, `127.0.0.1:PORT` for IPMI).
pub const LISTENING: &str = "VBMC-LISTENING ";

/// The line a virtual BMC prints (before [`LISTENING`]) with the address of the IPMI BMC
/// that serves the VM's serial console (`127.0.0.1:PORT`).
pub const SOL_LISTENING: &str = "VBMC-SOL ";

/// How long a virtual BMC or `plinth serve` gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One VM and its virtual BMC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VirtualBmcSpec {
    pub vm: VmSpec,
    pub protocol: BmcProtocol,
    pub username: String,
    pub password: String,
    /// The namespace and tap the VM's NIC sits on.
    pub ns: String,
    pub tap: String,
    /// The VM's directory: disks, console.log, qmp.sock.
    pub dir: PathBuf,
    /// Where a Redfish BMC listens (`ADDR:0` for any port); `None`: `127.0.0.1:0`. An address
    /// on a network that several plinth instances reach (the HA tests) instead of loopback.
    #[serde(default)]
    pub listen: Option<String>,
}

/// A running virtual BMC process.
#[derive(Debug)]
pub struct VirtualBmc {
    /// What to enroll as the BMC's address.
    pub address: String,
    pub proc: Proc,
    /// The VM's directory.
    pub dir: PathBuf,
    /// The IPMI endpoint (`127.0.0.1:PORT`, in the BMC's namespace) serving Serial over LAN
    /// bridged to the VM's serial port, with the BMC's user and password: the BMC itself for
    /// IPMI, an IPMI BMC beside it for Redfish.
    pub sol_address: Option<String>,
}

/// The `plinth-lab` binary next to `beside` (a binary of the same cargo target directory).
pub fn plinth_lab_beside(beside: &Path) -> PathBuf {
    beside.with_file_name("plinth-lab")
}

/// Starts `plinth-lab vbmc` (the program `exe`) for `spec` in `ns` and waits until it listens.
pub fn start_virtual_bmc(
    lab: &mut Lab,
    ns: &Ns,
    exe: &Path,
    spec: &VirtualBmcSpec,
) -> anyhow::Result<VirtualBmc> {
    ensure!(
        exe.is_file(),
        "{} not found: build it first (cargo build -p plinth-testkit)",
        exe.display()
    );
    let mut cmd = Command::new(exe);
    cmd.arg("vbmc")
        .arg("--spec")
        .arg(serde_json::to_string(spec)?);
    let proc = lab.spawn_named(ns, &format!("vbmc-{}", spec.vm.name), cmd)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let log = proc.log_text();
        let line = |prefix: &str| {
            log.lines()
                .find_map(|l| l.split_once(prefix).map(|(_, a)| a.trim().to_owned()))
        };
        if let Some(address) = line(LISTENING) {
            return Ok(VirtualBmc {
                address,
                sol_address: line(SOL_LISTENING),
                proc,
                dir: spec.dir.clone(),
            });
        }
        if !proc.is_running() || Instant::now() > deadline {
            bail!(
                "the virtual BMC of {} did not start:\n{}",
                spec.vm.name,
                proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `plinth-lab vbmc`: serves the BMC of `spec` until the process is killed.
pub async fn serve_virtual_bmc(spec: VirtualBmcSpec) -> anyhow::Result<()> {
    use crate::ipmi::{IpmiEmulator, IpmiEmulatorConfig, Serial};
    let machine = VirtualMachine::new(&spec.ns, &spec.tap, spec.vm.clone(), &spec.dir)?;
    // The IPMI BMC: the BMC itself, or the console of a Redfish one. Its SOL is the VM's
    // serial port.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cfg = IpmiEmulatorConfig::new(&spec.username, &spec.password);
    cfg.power_hook = Some(tx);
    let ipmi = Arc::new(
        IpmiEmulator::start_with_serial(cfg, Serial::Unix(machine.serial_socket().to_path_buf()))
            .await?,
    );
    println!("{SOL_LISTENING}{}", ipmi.addr());
    // Kept until the process ends.
    let _redfish = match spec.protocol {
        BmcProtocol::Redfish => {
            let listen = spec.listen.as_deref().unwrap_or("127.0.0.1:0");
            let bmc = crate::redfish::RedfishEmulator::start_for(
                &spec.username,
                &spec.password,
                machine.clone(),
                listen,
            )
            .await?;
            println!("{LISTENING}{}", bmc.url());
            Some(bmc)
        }
        BmcProtocol::Ipmi => {
            ensure!(
                spec.listen.is_none(),
                "the test kit's IPMI BMC listens on loopback only (listen = {:?})",
                spec.listen
            );
            println!("{LISTENING}{}", ipmi.addr());
            None
        }
    };
    ipmi_bmc(machine, ipmi, rx).await
}

/// The test kit's IPMI BMC in front of the VM: each accepted Chassis Control is played on the
/// VM, booting the device of the boot flags that boot saw; the power state it reports follows
/// the VM (looked at every second and after every command).
async fn ipmi_bmc(
    machine: Arc<VirtualMachine>,
    emu: Arc<crate::ipmi::IpmiEmulator>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::ipmi::ChassisControl>,
) -> anyhow::Result<()> {
    use crate::ipmi::{BootSelector, ChassisControl, IpmiEmulator};
    use crate::redfish::Host;
    let target = |emu: &IpmiEmulator| {
        let flags = emu.boots().last().copied().unwrap_or_default();
        match (flags.valid(), flags.selector()) {
            (true, BootSelector::Pxe) => "Pxe",
            (true, BootSelector::Disk) => "Hdd",
            _ => "None",
        }
    };
    loop {
        tokio::select! {
            Some(action) = rx.recv() => {
                let (vm, emu) = (machine.clone(), emu.clone());
                tokio::task::spawn_blocking(move || match action {
                    ChassisControl::PowerUp if !vm.is_on() => vm.power_on(target(&emu)),
                    ChassisControl::PowerDown | ChassisControl::SoftShutdown => vm.power_off(),
                    ChassisControl::PowerCycle | ChassisControl::HardReset => vm.reset(target(&emu)),
                    _ => {}
                })
                .await?;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let vm = machine.clone();
        emu.set_power(tokio::task::spawn_blocking(move || vm.is_on()).await?);
    }
}

/// A rack's network: the server namespace (with `PREFIX.2/24` on its end of the link) and the
/// rack namespace, whose bridge joins the link and one tap per VM.
#[derive(Debug)]
pub struct RackNetwork {
    pub srv: Ns,
    /// The server's interface: where plinth serves DHCP.
    pub srv_iface: String,
    pub rack: Ns,
    pub taps: Vec<String>,
}

/// Creates a [`RackNetwork`] on `prefix` (three octets, e.g. `"10.86.0"`) with `taps` taps.
pub fn rack_network(lab: &mut Lab, prefix: &str, taps: usize) -> anyhow::Result<RackNetwork> {
    let srv = lab.namespace("srv")?;
    let rack = lab.namespace("rack")?;
    let (s, r) = lab.link(&srv, &rack)?;
    lab.addr(&srv, &s, &format!("{prefix}.2/24"))?;
    let taps = (0..taps)
        .map(|_| lab.tap(&rack))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut members: Vec<&str> = vec![&r];
    members.extend(taps.iter().map(String::as_str));
    lab.bridge(&rack, &members)?;
    Ok(RackNetwork {
        srv,
        srv_iface: s,
        rack,
        taps,
    })
}

/// How to start `plinth serve` on a rack network.
#[derive(Debug, Clone)]
pub struct ServeSpec<'a> {
    /// The `plinth` binary.
    pub bin: &'a Path,
    /// The interface DHCP serves and the server's address on it.
    pub iface: &'a str,
    pub server_ip: &'a str,
    pub images_root: &'a Path,
    pub state_dir: &'a Path,
    /// None: the embedded database under `state_dir`.
    pub database_url: Option<&'a str>,
    /// More environment (`PLINTH_...` settings).
    pub env: Vec<(String, String)>,
}

/// Starts `plinth serve` (API on 0.0.0.0:8080, DHCP on the interface, TFTP on the server's
/// address) in `ns` and waits until DHCP and TFTP serve.
pub fn start_plinth(lab: &mut Lab, ns: &Ns, spec: &ServeSpec<'_>) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(spec.state_dir)
        .with_context(|| format!("creating {}", spec.state_dir.display()))?;
    let mut cmd = Command::new(spec.bin);
    cmd.args(["serve", "--listen", "0.0.0.0:8080"]);
    if let Some(url) = spec.database_url {
        cmd.args(["--database-url", url]);
    }
    cmd.env("PLINTH_STATE_DIR", spec.state_dir)
        .env("PLINTH_IMAGES__ROOT", spec.images_root)
        .env("PLINTH_DHCP__ENABLED", "true")
        .env("PLINTH_DHCP__INTERFACES", format!("[\"{}\"]", spec.iface))
        .env("PLINTH_DHCP__BOOT_SERVER", spec.server_ip)
        .env("PLINTH_TFTP__ENABLED", "true")
        .env("PLINTH_TFTP__LISTEN", format!("{}:69", spec.server_ip))
        .env("NO_COLOR", "1");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let proc = lab.spawn_named(ns, "plinth", cmd)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let log = proc.log_text();
        if log.contains("DHCP listening") && log.contains("TFTP is serving") {
            return Ok(proc);
        }
        if !proc.is_running() {
            bail!("plinth serve exited:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("plinth serve did not start within {START_TIMEOUT:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
