//! A QEMU virtual machine that a BMC emulator can drive: it implements [`crate::redfish::Host`].
//!
//! Powered off means no QEMU process. Powering on starts
//! `ip netns exec NS qemu-system-x86_64 -nographic -machine pc|q35,accel=tcg ...` on a tap of a
//! lab namespace (see [`crate::netns::Lab::tap`]), with the boot order of that boot; powering off
//! asks QEMU to quit over QMP (and kills it if it does not). A guest reboot stays on (no
//! `-no-reboot`); a guest that powers itself off ends the process, and the machine is off.
//!
//! Everything lives in the VM's directory: the raw disks (`disk0.raw`, ...), the UEFI variable
//! store (`OVMF_VARS.fd`, a per-VM copy), the QMP socket (`qmp.sock`), the serial console
//! (`console.log`, appended across power cycles with a [`SEPARATOR`] line per power-on, reset
//! and power-off, each placed between the output of the boots it separates) and QEMU's own
//! messages (`qemu.err`).
//!
//! The serial port is a QEMU chardev socket (`serial.sock`, [`VirtualMachine::serial_socket`],
//! `server=on,wait=off`) that logs to `console.log` itself: everything the guest writes lands
//! in the log whether or not a client is connected, and one client at a time (a virtual BMC's
//! Serial over LAN, see [`crate::ipmi::Serial`]) reads the same output and types into the
//! guest. The socket exists while QEMU runs; a client connects again after each power-on.
//!
//! The API is synchronous: [`crate::redfish::Host`]'s methods are, and each call takes at most a
//! few seconds (starting a process and waiting for its QMP socket, or waiting for it to exit).
//! The process is reaped on every call that looks at it and when the VM is dropped (which kills
//! it), so a guest that powered itself off is a zombie only until the next look.
//!
//! Boot order per Redfish `BootSourceOverrideTarget` (see [`BootOrder::for_target`]): `Pxe`
//! boots the network first; `Cd` the CD drive, then the disks, then the network; `Hdd`,
//! `None` (the machine's own order) and `BiosSetup` (neither SeaBIOS nor OVMF can be told to
//! enter setup from the command line) boot the disks first and then the network, as a
//! server's own order usually does. A boot order is `bootindex` properties, so it holds for
//! the process: a guest's own reboot keeps it until the BMC's next power-on or reset.
//!
//! The CD drive (issue 21): every machine has one (`ide-cd` with the id `cd0`: on the IDE
//! bus of `pc`, on port 2 of q35's AHCI), empty unless an image was put in it
//! ([`VirtualMachine::insert_cd`], a BMC's virtual media), and in the boot order only for a
//! `Cd` boot. The image (`cd.iso` in the VM's directory) stays across power cycles: QMP
//! `blockdev-change-medium` puts it in a running machine, the command line in a starting
//! one; QMP `eject` takes it out.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

/// Every line the VM (not the guest) writes to the console log starts with this.
pub const SEPARATOR: &str = "===== plinth-testkit vm ";

/// OVMF's code (read-only, shared) and the variable store template copied per VM.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How long QEMU gets to open its QMP socket after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long QEMU gets to exit after a QMP `quit` before it is killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read/write timeout of one QMP exchange.
const QMP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS on `-machine pc`.
    Bios,
    /// OVMF on `-machine q35`.
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nic {
    E1000,
    VirtioNet,
    /// Intel 82574L (`e1000e`).
    E1000e,
    /// Realtek RTL8139 (`8139too`, `8139cp`).
    Rtl8139,
    /// VMware's paravirtual NIC (`vmxnet3`).
    Vmxnet3,
    /// AMD PCnet-PCI II (`pcnet32`).
    Pcnet,
}

impl Nic {
    /// QEMU's device name.
    pub fn device(self) -> &'static str {
        match self {
            Nic::E1000 => "e1000",
            Nic::VirtioNet => "virtio-net-pci",
            Nic::E1000e => "e1000e",
            Nic::Rtl8139 => "rtl8139",
            Nic::Vmxnet3 => "vmxnet3",
            Nic::Pcnet => "pcnet",
        }
    }
}

/// One more NIC of a VM (see [`VmSpec::extra_nics`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExtraNic {
    pub nic: Nic,
    pub mac: String,
    /// A tap in the VM's namespace, its own (see [`crate::netns::Lab::tap`]).
    pub tap: String,
}

/// A disk controller QEMU emulates beyond the machine's own (see [`VmSpec::hba_disks`]). Not
/// QEMU's `mptsas1068`: Debian 12's kernel (mptsas) finds no disk behind QEMU 7.2's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hba {
    /// virtio-scsi (`virtio_scsi`), disks `scsi-hd`.
    VirtioScsi,
    /// LSI MegaRAID SAS 2108 (`megasas-gen2`: `megaraid_sas`), disks `scsi-hd`.
    MegaSas,
    /// LSI 53C895A parallel SCSI (`lsi53c895a`: `sym53c8xx`), disks `scsi-hd`.
    Lsi53c895a,
    /// An Intel ICH9 AHCI controller of its own (`ich9-ahci`: `ahci`), disks `ide-hd`: SATA on
    /// a `pc` machine, whose own controller is IDE.
    Ahci,
}

impl Hba {
    /// QEMU's device name.
    pub fn device(self) -> &'static str {
        match self {
            Hba::VirtioScsi => "virtio-scsi-pci",
            Hba::MegaSas => "megasas-gen2",
            Hba::Lsi53c895a => "lsi53c895a",
            Hba::Ahci => "ich9-ahci",
        }
    }

    /// A short name: the controller's id and, in `plinth-NAME-K`, its disks' serials.
    pub fn name(self) -> &'static str {
        match self {
            Hba::VirtioScsi => "vscsi",
            Hba::MegaSas => "megasas",
            Hba::Lsi53c895a => "lsi",
            Hba::Ahci => "ahci",
        }
    }
}

/// A disk behind a [`Hba`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HbaDisk {
    pub hba: Hba,
    pub mib: u64,
}

/// What the machine is made of.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    /// For `-name` and the console's separator lines.
    pub name: String,
    pub firmware: Firmware,
    pub nic: Nic,
    /// The NIC's MAC address, `52:54:00:..`.
    pub mac: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Raw virtio disks, sizes in MiB; serials `plinth-disk-0`, `plinth-disk-1`, ...
    pub disks: Vec<u64>,
    /// Raw NVMe disks (QEMU's `nvme` controller, one namespace each), sizes in MiB, after the
    /// virtio disks; files `nvme0.raw`, ...; serials `plinth-nvme-0`, ...
    #[serde(default)]
    pub nvme_disks: Vec<u64>,
    /// Raw ATA disks on the machine's own controller (AHCI on q35, IDE on pc; two at most),
    /// after the NVMe disks; files `sata0.raw`, ...; serials `plinth-sata-0`, ...
    #[serde(default)]
    pub sata_disks: Vec<u64>,
    /// Disks behind controllers of their own (one controller of each kind used), after the
    /// ATA disks, not in the boot order; files `hba0.raw`, ...; serials `plinth-NAME-K`, K
    /// counting the disks of that kind (see [`Hba::name`]).
    #[serde(default)]
    pub hba_disks: Vec<HbaDisk>,
    /// More NICs, after the first, each on its own tap: no option ROM, not in the boot order.
    #[serde(default)]
    pub extra_nics: Vec<ExtraNic>,
    /// The NIC carries QEMU's iPXE option ROM (the default). Off (`romfile=`), a UEFI machine
    /// network-boots with EDK2's own PXE client; a BIOS machine cannot network-boot at all.
    pub ipxe_rom: bool,
    /// Boot this kernel and initrd at every power-on (QEMU's `-kernel`, `-initrd`, `-append`)
    /// instead of the firmware's boot order: a machine that is up in seconds.
    #[serde(default)]
    pub direct_boot: Option<DirectBoot>,
}

/// A kernel QEMU loads itself (see [`VmSpec::direct_boot`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
}

impl VmSpec {
    /// One CPU, 256 MiB, no disks, the iPXE ROM on the NIC.
    pub fn new(name: &str, firmware: Firmware, nic: Nic, mac: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            firmware,
            nic,
            mac: mac.into(),
            memory_mib: 256,
            cpus: 1,
            disks: Vec::new(),
            nvme_disks: Vec::new(),
            sata_disks: Vec::new(),
            hba_disks: Vec::new(),
            extra_nics: Vec::new(),
            ipxe_rom: true,
            direct_boot: None,
        }
    }
}

/// The device order a boot uses, expressed as `bootindex` properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOrder {
    /// The NIC (`bootindex=1`), then the disks.
    NetworkFirst,
    /// The disks in order (`bootindex=1..`), then the NIC.
    DiskFirst,
    /// The CD drive (`bootindex=1`), then the disks, then the NIC.
    CdFirst,
}

impl BootOrder {
    /// The order for a Redfish `BootSourceOverrideTarget` (see the module docs).
    pub fn for_target(target: &str) -> BootOrder {
        match target {
            "Pxe" | "UefiHttp" => BootOrder::NetworkFirst,
            "Cd" => BootOrder::CdFirst,
            // "Hdd", "None", "BiosSetup" and anything else: the machine's own order.
            _ => BootOrder::DiskFirst,
        }
    }
}

/// A QEMU machine; see the module docs.
pub struct VirtualMachine {
    ns: String,
    tap: String,
    spec: VmSpec,
    dir: PathBuf,
    disks: Vec<PathBuf>,
    vars: Option<PathBuf>,
    console: PathBuf,
    qemu_err: PathBuf,
    qmp: PathBuf,
    serial: PathBuf,
    qemu: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for VirtualMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualMachine")
            .field("name", &self.spec.name)
            .field("ns", &self.ns)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The running QEMU (`ip netns exec` execs it, so this is QEMU itself).
    child: Option<Child>,
    /// The boot order it was started with.
    order: Option<BootOrder>,
    /// Power-ons and resets so far, for the separator lines.
    events: u32,
    /// The image in the CD drive.
    cd: Option<PathBuf>,
}

impl VirtualMachine {
    /// Creates the VM's files in `dir` (created if missing): the raw disks (sparse; an existing
    /// file is kept, and grown if it is smaller) and a fresh copy of the OVMF variable store.
    /// Does not start QEMU. `ns` is a lab namespace's name and `tap` a tap in it.
    pub fn new(
        ns: &str,
        tap: &str,
        spec: VmSpec,
        dir: &Path,
    ) -> anyhow::Result<Arc<VirtualMachine>> {
        let qemu = crate::netns::which("qemu-system-x86_64").context(
            "qemu-system-x86_64 not found: apt-get install qemu-system-x86 ipxe-qemu (and ovmf)",
        )?;
        for tap in std::iter::once(tap).chain(spec.extra_nics.iter().map(|n| n.tap.as_str())) {
            let out = Command::new("ip")
                .args(["-n", ns, "link", "show", "dev", tap])
                .stdin(Stdio::null())
                .output()
                .context("running ip")?;
            ensure!(
                out.status.success(),
                "no interface {tap} in namespace {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let qmp = dir.join("qmp.sock");
        let serial = dir.join("serial.sock");
        // sun_path holds 108 bytes with the terminating NUL.
        for socket in [&qmp, &serial] {
            ensure!(
                socket.as_os_str().len() < 108,
                "{} is too long for a unix socket path",
                socket.display()
            );
        }
        let mut disks = Vec::new();
        let files = spec
            .disks
            .iter()
            .enumerate()
            .map(|(i, mib)| (format!("disk{i}.raw"), mib))
            .chain(
                spec.nvme_disks
                    .iter()
                    .enumerate()
                    .map(|(i, mib)| (format!("nvme{i}.raw"), mib)),
            )
            .chain(
                spec.sata_disks
                    .iter()
                    .enumerate()
                    .map(|(i, mib)| (format!("sata{i}.raw"), mib)),
            )
            .chain(
                spec.hba_disks
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("hba{i}.raw"), &d.mib)),
            );
        for (name, mib) in files {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let size = mib << 20;
            if file.metadata()?.len() < size {
                file.set_len(size)?;
            }
            disks.push(path);
        }
        let vars = match spec.firmware {
            Firmware::Bios => None,
            Firmware::Uefi => {
                ensure!(
                    Path::new(OVMF_CODE).is_file(),
                    "{OVMF_CODE} not found: apt-get install ovmf"
                );
                let vars = dir.join("OVMF_VARS.fd");
                fs::copy(OVMF_VARS, &vars)
                    .with_context(|| format!("copying {OVMF_VARS} (apt-get install ovmf)"))?;
                Some(vars)
            }
        };
        Ok(Arc::new(VirtualMachine {
            ns: ns.into(),
            tap: tap.into(),
            spec,
            dir: dir.to_path_buf(),
            disks,
            vars,
            console: dir.join("console.log"),
            qemu_err: dir.join("qemu.err"),
            qmp,
            serial,
            qemu,
            state: Mutex::new(State::default()),
        }))
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The raw disk files, in the order of [`VmSpec::disks`], then [`VmSpec::nvme_disks`],
    /// [`VmSpec::sata_disks`] and [`VmSpec::hba_disks`].
    pub fn disks(&self) -> &[PathBuf] {
        &self.disks
    }

    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// The serial port's Unix socket (there while QEMU runs): a client reads what the guest
    /// writes and types into it. One client at a time; `console.log` has everything anyway.
    pub fn serial_socket(&self) -> &Path {
        &self.serial
    }

    /// The whole serial console since the VM was created, all boots.
    pub fn console(&self) -> String {
        read_lossy(&self.console)
    }

    /// The console since the last power-on or reset (after the last [`SEPARATOR`] line).
    pub fn boot_console(&self) -> String {
        let all = self.console();
        match all.rfind(SEPARATOR) {
            Some(i) => {
                let rest = &all[i..];
                rest.find('\n')
                    .map_or(String::new(), |n| rest[n + 1..].to_owned())
            }
            None => all,
        }
    }

    /// Polls [`VirtualMachine::boot_console`], as plain text
    /// ([`plinth_types::terminal::plain`]), until it contains `needle`; returns that text.
    /// Blocks.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.console_check(needle, timeout, deadline) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`VirtualMachine::wait_console`] for async tests: sleeps without blocking the runtime
    /// (which may be serving what the guest boots from).
    pub async fn wait_console_async(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.console_check(needle, timeout, deadline) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One look for `needle`: the plain text when it is there, an error (with this boot's
    /// console and what QEMU said) past `deadline`, `None` to look again.
    fn console_check(
        &self,
        needle: &str,
        timeout: Duration,
        deadline: Instant,
    ) -> Option<anyhow::Result<String>> {
        let text = plinth_types::terminal::plain(&self.boot_console());
        if text.contains(needle) {
            return Some(Ok(text));
        }
        (Instant::now() >= deadline).then(|| {
            Err(anyhow::anyhow!(
                "vm {}: {needle:?} not on the console within {timeout:?}; this boot printed:\n{text}\nQEMU said:\n{}",
                self.spec.name,
                self.qemu_stderr()
            ))
        })
    }

    /// What QEMU itself printed on stderr (all runs).
    pub fn qemu_stderr(&self) -> String {
        read_lossy(&self.qemu_err)
    }

    /// The running QEMU's pid.
    pub fn qemu_pid(&self) -> Option<u32> {
        let mut s = self.lock();
        reap(&mut s);
        s.child.as_ref().map(Child::id)
    }

    /// The boot order of the running QEMU.
    pub fn boot_order(&self) -> Option<BootOrder> {
        let mut s = self.lock();
        reap(&mut s);
        s.order
    }

    /// QMP `query-status`'s `status` ("running", "paused", "shutdown", ...), or `None` when off.
    pub fn run_status(&self) -> anyhow::Result<Option<String>> {
        let mut s = self.lock();
        reap(&mut s);
        if s.child.is_none() {
            return Ok(None);
        }
        let v = Qmp::connect(&self.qmp)?.execute("query-status")?;
        Ok(v.get("status").and_then(Value::as_str).map(str::to_owned))
    }

    /// Starts QEMU booting in the order for `boot` (a Redfish BootSourceOverrideTarget), and
    /// waits for its QMP socket. Nothing happens if it is already on.
    pub fn try_power_on(&self, boot: &str) -> anyhow::Result<()> {
        let mut s = self.lock();
        reap(&mut s);
        if s.child.is_some() {
            return Ok(());
        }
        self.start(&mut s, boot)
    }

    /// QMP `quit`, or a kill if QEMU does not exit in time; waits until it is gone.
    pub fn try_power_off(&self) -> anyhow::Result<()> {
        let mut s = self.lock();
        self.stop(&mut s)
    }

    /// A reset booting in the order for `boot`: QMP `system_reset` when the running order is
    /// that one, else a power cycle (a new process). Powers on a machine that is off.
    pub fn try_reset(&self, boot: &str) -> anyhow::Result<()> {
        let mut s = self.lock();
        reap(&mut s);
        let order = BootOrder::for_target(boot);
        if s.child.is_none() {
            return self.start(&mut s, boot);
        }
        if s.order != Some(order) {
            self.stop(&mut s)?;
            return self.start(&mut s, boot);
        }
        s.events += 1;
        let what = format!("reset #{} boot={boot} order={order:?}", s.events);
        // Paused around the separator, so that the guest's output lands on the right side.
        let reset = Qmp::connect(&self.qmp).and_then(|mut q| {
            q.execute("stop")?;
            let written = self.separator(&what);
            q.execute("system_reset")?;
            q.execute("cont")?;
            written
        });
        if let Err(err) = reset {
            eprintln!(
                "plinth-testkit vm {}: system_reset failed ({err:#}); power cycling",
                self.spec.name
            );
            self.stop(&mut s)?;
            return self.start(&mut s, boot);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is still fine to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a line of ours to the console log.
    fn separator(&self, what: &str) -> anyhow::Result<()> {
        let mut f = append(&self.console)?;
        writeln!(f, "\n{SEPARATOR}{}: {what} =====", self.spec.name)?;
        Ok(())
    }

    /// The serial port as the VM runs it: a socket for a BMC's Serial over LAN, logged to
    /// `console.log` whether or not a client is there (see the module docs); no monitor on
    /// stdio.
    fn serial_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                self.serial.display(),
                self.console.display()
            ),
            "-serial".into(),
            "chardev:serial0".into(),
            "-monitor".into(),
            "none".into(),
        ]
    }

    /// The QEMU arguments for a boot in `order`, the serial console on stdio (`-nographic`):
    /// for a test that runs this machine's QEMU itself. The VM's own power-on adds the serial
    /// socket (see the module docs).
    pub fn qemu_args(&self, order: BootOrder) -> Vec<String> {
        self.qemu_args_with(order, None)
    }

    /// The image in the CD drive now.
    pub fn cd(&self) -> Option<PathBuf> {
        self.lock().cd.clone()
    }

    /// Puts `iso` in the CD drive (written to `cd.iso` in the VM's directory), replacing what
    /// it held: by QMP when QEMU runs, at the next start otherwise.
    pub fn insert_cd(&self, iso: &[u8]) -> anyhow::Result<()> {
        let mut s = self.lock();
        reap(&mut s);
        let path = self.dir.join("cd.iso");
        // A new file under the old name: a running QEMU keeps reading the old one until the
        // medium changes.
        let tmp = self.dir.join("cd.iso.tmp");
        fs::write(&tmp, iso).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path)?;
        if s.child.is_some() {
            Qmp::connect(&self.qmp)?.execute_with(
                "blockdev-change-medium",
                json!({ "id": "cd0", "filename": path, "format": "raw",
                        "read-only-mode": "read-only" }),
            )?;
        }
        s.cd = Some(path);
        Ok(())
    }

    /// The file in the running QEMU's CD drive, as QMP `query-block` says (`None`: empty, or
    /// QEMU not running).
    pub fn cd_in_qemu(&self) -> anyhow::Result<Option<String>> {
        let mut s = self.lock();
        reap(&mut s);
        if s.child.is_none() {
            return Ok(None);
        }
        let blocks = Qmp::connect(&self.qmp)?.execute("query-block")?;
        let cd = blocks
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["device"] == "cd0-drive")
            .context("no cd0-drive in query-block")?;
        Ok(cd["inserted"]["file"].as_str().map(str::to_owned))
    }

    /// Empties the CD drive (QMP `eject` when QEMU runs).
    pub fn eject_cd(&self) -> anyhow::Result<()> {
        let mut s = self.lock();
        reap(&mut s);
        if s.child.is_some() {
            Qmp::connect(&self.qmp)?
                .execute_with("eject", json!({ "id": "cd0", "force": true }))?;
        }
        if let Some(p) = s.cd.take() {
            fs::remove_file(p).ok();
        }
        Ok(())
    }

    fn qemu_args_with(&self, order: BootOrder, cd: Option<&Path>) -> Vec<String> {
        let spec = &self.spec;
        let machine = match spec.firmware {
            Firmware::Bios => "pc,accel=tcg",
            Firmware::Uefi => "q35,accel=tcg",
        };
        let mut a: Vec<String> = [
            "-name",
            &spec.name,
            "-nographic",
            "-machine",
            machine,
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            &spec.cpus.max(1).to_string(),
            "-qmp",
            &format!("unix:{},server=on,wait=off", self.qmp.display()),
        ]
        .map(str::to_owned)
        .into();
        if let Some(vars) = &self.vars {
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ));
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        let (nic_index, first_disk_index) = match order {
            BootOrder::NetworkFirst => (1, 2),
            BootOrder::DiskFirst => (self.disks.len() + 1, 1),
            BootOrder::CdFirst => (self.disks.len() + 2, 2),
        };
        // The CD drive: where QEMU's default one would be (which it replaces), beside the
        // machine's own ATA disks (sata_disks: ide.0 and ide.1).
        let file = cd.map_or(String::new(), |p| {
            format!(",file={},format=raw,readonly=on", p.display())
        });
        let bus = match spec.firmware {
            Firmware::Bios => "ide.1",
            Firmware::Uefi => "ide.2",
        };
        let cd_boot = if order == BootOrder::CdFirst {
            ",bootindex=1"
        } else {
            ""
        };
        let cdrom = [
            "-drive".to_owned(),
            format!("if=none,id=cd0-drive,media=cdrom{file}"),
            "-device".to_owned(),
            format!("ide-cd,drive=cd0-drive,id=cd0,bus={bus}{cd_boot}"),
        ];
        let rom = if spec.ipxe_rom { "" } else { ",romfile=" };
        let mut nic = vec![
            "-netdev".to_owned(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
            "-device".to_owned(),
            format!(
                "{},netdev=n0,mac={},bootindex={nic_index}{rom}",
                spec.nic.device(),
                spec.mac
            ),
        ];
        for (k, x) in spec.extra_nics.iter().enumerate() {
            let id = k + 1;
            nic.extend([
                "-netdev".to_owned(),
                format!("tap,id=n{id},ifname={},script=no,downscript=no", x.tap),
                "-device".to_owned(),
                format!("{},netdev=n{id},mac={},romfile=", x.nic.device(), x.mac),
            ]);
        }
        let mut disks = Vec::new();
        let virtio = spec.disks.len();
        let nvme = virtio + spec.nvme_disks.len();
        let sata = nvme + spec.sata_disks.len();
        let mut hba_args = Vec::new();
        let mut hbas: Vec<Hba> = Vec::new();
        for (i, d) in self.disks.iter().enumerate().skip(sata) {
            let hba = spec.hba_disks[i - sata].hba;
            if !hbas.contains(&hba) {
                hbas.push(hba);
                hba_args.push("-device".to_owned());
                hba_args.push(format!("{},id={}", hba.device(), hba.name()));
            }
            let k = spec.hba_disks[..i - sata]
                .iter()
                .filter(|x| x.hba == hba)
                .count();
            hba_args.push("-drive".to_owned());
            hba_args.push(format!(
                "file={},format=raw,if=none,id=d{i},discard=unmap",
                d.display()
            ));
            hba_args.push("-device".to_owned());
            hba_args.push(match hba {
                Hba::Ahci => format!(
                    "ide-hd,drive=d{i},bus={}.{k},serial=plinth-{}-{k}",
                    hba.name(),
                    hba.name()
                ),
                _ => format!(
                    "scsi-hd,drive=d{i},bus={}.0,serial=plinth-{}-{k}",
                    hba.name(),
                    hba.name()
                ),
            });
        }
        for (i, d) in self.disks.iter().enumerate().take(sata) {
            disks.push("-drive".to_owned());
            // discard=unmap: a discard reaches the file (the clean agent's discard method).
            disks.push(format!(
                "file={},format=raw,if=none,id=d{i},discard=unmap",
                d.display()
            ));
            disks.push("-device".to_owned());
            disks.push(if i < virtio {
                format!(
                    "virtio-blk-pci,drive=d{i},serial=plinth-disk-{i},bootindex={}",
                    first_disk_index + i
                )
            } else if i < nvme {
                format!(
                    "nvme,drive=d{i},serial=plinth-nvme-{},bootindex={}",
                    i - virtio,
                    first_disk_index + i
                )
            } else {
                format!(
                    "ide-hd,drive=d{i},bus=ide.{k},serial=plinth-sata-{k},bootindex={}",
                    first_disk_index + i,
                    k = i - nvme
                )
            });
        }
        disks.extend(hba_args);
        if let Some(k) = &spec.direct_boot {
            a.extend([
                "-kernel".to_owned(),
                k.kernel.display().to_string(),
                "-initrd".to_owned(),
                k.initrd.display().to_string(),
                "-append".to_owned(),
                k.append.clone(),
            ]);
        }
        // Devices in boot order on the command line too, which makes it easy to read.
        match order {
            BootOrder::NetworkFirst => {
                a.extend(nic);
                a.extend(disks);
            }
            BootOrder::DiskFirst => {
                a.extend(disks);
                a.extend(nic);
            }
            BootOrder::CdFirst => {
                a.extend(disks);
                a.extend(nic);
            }
        }
        // Last on the line whatever the order (its bootindex places it), so that it takes the
        // IDE unit after the disks'.
        a.extend(cdrom);
        a
    }

    fn start(&self, s: &mut State, boot: &str) -> anyhow::Result<()> {
        let order = BootOrder::for_target(boot);
        // A socket left by a QEMU that was killed would accept nothing.
        fs::remove_file(&self.qmp).ok();
        fs::remove_file(&self.serial).ok();
        s.events += 1;
        self.separator(&format!(
            "power on #{} boot={boot} order={order:?}",
            s.events
        ))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.qemu)
            .args(self.qemu_args_with(order, s.cd.as_deref()))
            .args(self.serial_args())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            // The serial port logs to console.log itself (see qemu_args).
            .stdout(append(&self.qemu_err)?)
            .stderr(append(&self.qemu_err)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting QEMU for vm {}", self.spec.name))?;
        s.child = Some(child);
        s.order = Some(order);
        // Wait for QMP, so that what follows (a reset, a power-off) can use it, and so that a
        // QEMU that fails at once (a busy tap, a bad argument) is an error here.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                s.child = None;
                s.order = None;
                bail!(
                    "QEMU for vm {} exited at once ({status}); it said:\n{}",
                    self.spec.name,
                    tail(&self.qemu_stderr(), 2000)
                );
            }
            match Qmp::connect(&self.qmp) {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    self.kill(s);
                    return Err(err.context(format!(
                        "QEMU for vm {} did not open its QMP socket within {START_TIMEOUT:?}",
                        self.spec.name
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn stop(&self, s: &mut State) -> anyhow::Result<()> {
        reap(s);
        let Some(child) = s.child.as_mut() else {
            return Ok(());
        };
        let quit = Qmp::connect(&self.qmp).and_then(|mut q| q.execute("quit"));
        if let Err(err) = quit {
            eprintln!(
                "plinth-testkit vm {}: QMP quit failed ({err:#}); killing QEMU",
                self.spec.name
            );
        } else {
            let deadline = Instant::now() + QUIT_TIMEOUT;
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    s.child = None;
                    s.order = None;
                    // Written once QEMU is gone, after the last of its output.
                    return self.separator("power off");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill(s);
        self.separator("power off (killed)")
    }

    /// SIGKILL and reap.
    fn kill(&self, s: &mut State) {
        if let Some(mut child) = s.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        s.order = None;
    }
}

impl crate::redfish::Host for VirtualMachine {
    /// The process is alive and QMP does not say the guest has shut down (QEMU exits right
    /// after). A QMP socket that does not answer counts as on: the process is there.
    fn is_on(&self) -> bool {
        let mut s = self.lock();
        reap(&mut s);
        if s.child.is_none() {
            return false;
        }
        let status = Qmp::connect(&self.qmp).and_then(|mut q| q.execute("query-status"));
        !matches!(status, Ok(v) if v.get("status").and_then(Value::as_str) == Some("shutdown"))
    }

    fn power_on(&self, boot: &str) {
        if let Err(err) = self.try_power_on(boot) {
            eprintln!("plinth-testkit vm {}: power on: {err:#}", self.spec.name);
        }
    }

    fn power_off(&self) {
        if let Err(err) = self.try_power_off() {
            eprintln!("plinth-testkit vm {}: power off: {err:#}", self.spec.name);
        }
    }

    fn reset(&self, boot: &str) {
        if let Err(err) = self.try_reset(boot) {
            eprintln!("plinth-testkit vm {}: reset: {err:#}", self.spec.name);
        }
    }

    fn insert_cd(&self, iso: &[u8]) -> Result<(), String> {
        VirtualMachine::insert_cd(self, iso).map_err(|e| format!("{e:#}"))
    }

    fn eject_cd(&self) -> Result<(), String> {
        VirtualMachine::eject_cd(self).map_err(|e| format!("{e:#}"))
    }
}

impl Drop for VirtualMachine {
    fn drop(&mut self) {
        let mut s = self.lock();
        self.kill(&mut s);
    }
}

/// Joins `stream` (another BMC's serial port, e.g. ipmi_sim's SOL connection) to the VM serial
/// socket at `socket` ([`VirtualMachine::serial_socket`]) until `stream` ends: connected
/// whenever the socket is there, and again after each power-on. What `stream` sends while the
/// machine is off is lost, as on a real serial line.
pub async fn relay_serial<S>(socket: PathBuf, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sr, mut sw) = tokio::io::split(stream);
    let mut from_bmc = vec![0u8; 4096];
    let mut from_vm = vec![0u8; 4096];
    loop {
        let Ok(vm) = tokio::net::UnixStream::connect(&socket).await else {
            // Off: drain what the BMC sends for a moment, then look again.
            match tokio::time::timeout(Duration::from_millis(50), sr.read(&mut from_bmc)).await {
                Ok(Ok(0) | Err(_)) => return,
                _ => continue,
            }
        };
        let (mut vr, mut vw) = vm.into_split();
        loop {
            tokio::select! {
                n = sr.read(&mut from_bmc) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if vw.write_all(&from_bmc[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                n = vr.read(&mut from_vm) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sw.write_all(&from_vm[..n]).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
    }
}

/// Forgets (and reaps) a QEMU that has exited by itself.
fn reap(s: &mut State) {
    if let Some(child) = s.child.as_mut()
        && !matches!(child.try_wait(), Ok(None))
    {
        s.child = None;
        s.order = None;
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A QMP client: one connection per use, capabilities negotiated, JSON lines.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> anyhow::Result<Qmp> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP at {}", path.display()))?;
        stream.set_read_timeout(Some(QMP_TIMEOUT))?;
        stream.set_write_timeout(Some(QMP_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?.context("QMP closed before its greeting")?;
        ensure!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// The next message, `None` at end of stream.
    fn read(&mut self) -> anyhow::Result<Option<Value>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&line).with_context(|| format!("bad QMP message {line:?}"))?,
        ))
    }

    /// Runs a command and returns its `return` value. Events in between are skipped. For
    /// `quit`, QEMU closing the connection counts as done.
    fn execute(&mut self, command: &str) -> anyhow::Result<Value> {
        self.execute_with(command, Value::Null)
    }

    /// [`Qmp::execute`] with `arguments` (none when null).
    fn execute_with(&mut self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        let mut msg = if arguments.is_null() {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": arguments })
        }
        .to_string();
        msg.push('\n');
        self.writer.write_all(msg.as_bytes())?;
        loop {
            let Some(v) = self.read().with_context(|| format!("QMP {command}"))? else {
                if command == "quit" {
                    return Ok(Value::Null);
                }
                bail!("QMP closed during {command}");
            };
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {command}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redfish_targets_map_to_boot_orders() {
        assert_eq!(BootOrder::for_target("Pxe"), BootOrder::NetworkFirst);
        assert_eq!(BootOrder::for_target("Cd"), BootOrder::CdFirst);
        for t in ["Hdd", "None", "BiosSetup"] {
            assert_eq!(BootOrder::for_target(t), BootOrder::DiskFirst, "{t}");
        }
    }

    #[test]
    fn tails_cut_on_character_boundaries() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("aé", 1), "");
    }
}
