//! The Redfish driver against a virtual BMC of a real QEMU machine (plinth-testkit's Redfish
//! emulator in front of a `VirtualMachine`): power and boot overrides reach the VM's process,
//! and its serial console shows the firmware booting the device the override asked for.
//!
//! The test kit's IPMI BMC with its Serial over LAN on the VM's serial port: the console
//! reaches iPXE's command line and follows the VM through a power cycle.
//!
//! Needs root (a network namespace and a tap), qemu-system-x86, ipxe-qemu and ovmf.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BootDevice, PowerAction, PowerState, set_boot_verified};
use plinth_testkit::netns::Lab;
use plinth_testkit::redfish::RedfishEmulator;
use plinth_testkit::vm::{Firmware, Nic, VirtualMachine, VmSpec};

/// TCG is slow, and other builds share the machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn driver(emu: &RedfishEmulator) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: emu.url(),
        username: "admin".into(),
        password: "pw".into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(30),
        allow_plain_http: true,
    })
    .unwrap()
}

/// The console of the VM's current boot, as plain text, once it contains `needle`.
async fn wait_console(vm: &VirtualMachine, needle: &str) -> String {
    vm.wait_console_async(needle, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// SeaBIOS's first "Booting from X..." of a boot.
fn first_boot_device(console: &str) -> Option<&str> {
    let at = console.find("Booting from ")? + "Booting from ".len();
    let rest = &console[at..];
    Some(&rest[..rest.find("...")?])
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The `-device` argument that boots first.
fn first_boot_entry(args: &[String]) -> String {
    args.iter()
        .find(|a| a.split(',').any(|p| p == "bootindex=1"))
        .cloned()
        .unwrap_or_else(|| panic!("no bootindex=1 in {args:?}"))
}

fn gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bios_vm_follows_its_redfish_bmc() {
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("vbmc").unwrap();
    let tap = lab.tap(&ns).unwrap();
    let mac = "52:54:00:7b:00:01";
    let mut spec = VmSpec::new("vbmc-bios", Firmware::Bios, Nic::E1000, mac);
    spec.memory_mib = 256;
    spec.disks = vec![16];
    let vm = VirtualMachine::new(&ns.name, &tap, spec, &lab.dir().join("vm")).unwrap();
    assert_eq!(
        std::fs::metadata(&vm.disks()[0]).unwrap().len(),
        16 << 20,
        "the disk is created at its size"
    );
    let emu = RedfishEmulator::start_for("admin", "pw", vm.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let bmc = driver(&emu);

    // Off: no process.
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(vm.qemu_pid(), None);

    // PXE once, on: SeaBIOS boots the NIC's iPXE ROM, which asks for an address with our MAC.
    let t = Instant::now();
    set_boot_verified(&bmc, BootDevice::Pxe, false, None)
        .await
        .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    let pid1 = vm.qemu_pid().expect("QEMU runs after power on");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    let console = wait_console(&vm, &format!("Configuring (net0 {mac})")).await;
    eprintln!(
        "BIOS: power on to iPXE configuring its NIC: {:?}",
        t.elapsed()
    );
    assert_eq!(first_boot_device(&console), Some("ROM"), "{console}");
    assert!(
        console.contains("iPXE (PCI 00:03.0) starting execution"),
        "{console}"
    );
    assert!(first_boot_entry(&cmdline(pid1)).starts_with("e1000,"));
    let boot = bmc.boot_override().await.unwrap();
    assert_eq!(boot.device, None, "the one-time override is used up");

    // Forced off: the process is gone (and reaped).
    let t = Instant::now();
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    assert_eq!(vm.qemu_pid(), None);
    assert!(gone(pid1), "QEMU {pid1} is gone, not a zombie");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    eprintln!("BIOS: power off: {:?}", t.elapsed());

    // Disk, persistent: the disk boots first (and, blank, fails over to the network).
    set_boot_verified(&bmc, BootDevice::Disk, true, None)
        .await
        .unwrap();
    let t = Instant::now();
    bmc.power(PowerAction::On).await.unwrap();
    let pid2 = vm.qemu_pid().expect("QEMU runs after power on");
    assert_ne!(pid2, pid1);
    let args = cmdline(pid2);
    let first = first_boot_entry(&args);
    assert!(first.starts_with("virtio-blk-pci,drive=d0,"), "{args:?}");
    let disk_at = args.iter().position(|a| a.starts_with("virtio-blk-pci"));
    let nic_at = args.iter().position(|a| a.starts_with("e1000,"));
    assert!(disk_at < nic_at, "the disk comes first: {args:?}");
    let console = wait_console(&vm, "Booting from Hard Disk...").await;
    eprintln!("BIOS: power on to booting the disk: {:?}", t.elapsed());
    assert_eq!(first_boot_device(&console), Some("Hard Disk"), "{console}");
    let boot = bmc.boot_override().await.unwrap();
    assert_eq!(
        (boot.device, boot.persistent),
        (Some(BootDevice::Disk), true),
        "a persistent override stays"
    );

    // PXE once and a power cycle: the order changes, so a new process boots the network.
    set_boot_verified(&bmc, BootDevice::Pxe, false, None)
        .await
        .unwrap();
    let t = Instant::now();
    bmc.power(PowerAction::Cycle).await.unwrap();
    let pid3 = vm.qemu_pid().expect("QEMU runs after the cycle");
    assert_ne!(pid3, pid2, "a different boot order means a new process");
    assert!(gone(pid2));
    let console = wait_console(&vm, &format!("Configuring (net0 {mac})")).await;
    eprintln!("BIOS: cycle to iPXE configuring its NIC: {:?}", t.elapsed());
    assert_eq!(first_boot_device(&console), Some("ROM"), "{console}");
    assert!(first_boot_entry(&cmdline(pid3)).starts_with("e1000,"));
    assert_eq!(bmc.boot_override().await.unwrap().device, None);

    // PXE once again and a reset: the same order, so the same process resets (QMP).
    set_boot_verified(&bmc, BootDevice::Pxe, false, None)
        .await
        .unwrap();
    bmc.power(PowerAction::Reset).await.unwrap();
    assert_eq!(vm.qemu_pid(), Some(pid3), "a reset in the same order");
    let console = wait_console(&vm, &format!("Configuring (net0 {mac})")).await;
    assert_eq!(
        console.matches("SeaBIOS (version").count(),
        1,
        "this boot's console is this boot's only: {console}"
    );
    assert_eq!(first_boot_device(&console), Some("ROM"), "{console}");
    let whole = vm.console();
    assert_eq!(
        whole.matches("SeaBIOS (version").count(),
        4,
        "the console keeps every boot"
    );

    // A QEMU that exits by itself (as when the guest powers off) is a machine that is off.
    let out = std::process::Command::new("kill")
        .args(["-s", "KILL", &pid3.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while bmc.power_state().await.unwrap() != PowerState::Off {
        assert!(Instant::now() < deadline, "still On after QEMU died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(vm.qemu_pid(), None);
    assert!(gone(pid3), "reaped");
    drop(emu);
    drop(vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_vm_network_boots_on_a_pxe_override() {
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("vbmcuefi").unwrap();
    let tap = lab.tap(&ns).unwrap();
    let mac = "52:54:00:7b:00:02";
    let mut spec = VmSpec::new("vbmc-uefi", Firmware::Uefi, Nic::VirtioNet, mac);
    spec.disks = vec![16];
    let vm = VirtualMachine::new(&ns.name, &tap, spec, &lab.dir().join("vm")).unwrap();
    let emu = RedfishEmulator::start_for("admin", "pw", vm.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let bmc: Arc<dyn Bmc> = Arc::new(driver(&emu));

    set_boot_verified(bmc.as_ref(), BootDevice::Pxe, false, None)
        .await
        .unwrap();
    let t = Instant::now();
    bmc.power(PowerAction::On).await.unwrap();
    let pid = vm.qemu_pid().expect("QEMU runs after power on");
    let args = cmdline(pid);
    assert!(
        first_boot_entry(&args).starts_with("virtio-net-pci,"),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a.contains("OVMF_CODE")), "{args:?}");
    let console = wait_console(&vm, &format!("Configuring (net0 {mac})")).await;
    eprintln!(
        "UEFI: power on to iPXE configuring its NIC: {:?}",
        t.elapsed()
    );
    assert!(
        console.contains("Open Source Network Boot Firmware"),
        "{console}"
    );
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(gone(pid));
}

/// Reads the SOL console into `seen` until it contains `needle`, typing `key` every 200 ms
/// meanwhile (if any).
async fn sol_until(
    sol: &mut plinth_bmc::ipmi::sol::SolSession,
    seen: &mut Vec<u8>,
    needle: &str,
    key: Option<&[u8]>,
) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not on the SOL console within {BOOT_TIMEOUT:?}; it showed:\n{}",
            String::from_utf8_lossy(seen)
        );
        match tokio::time::timeout(Duration::from_millis(200), sol.read()).await {
            Ok(Some(chunk)) => seen.extend_from_slice(&chunk),
            Ok(None) => panic!("the SOL session ended: {:?}", sol.ended()),
            Err(_) => {
                if let Some(k) = key {
                    sol.write(k).await.unwrap();
                }
            }
        }
    }
}

/// Types `line` and Enter at iPXE's prompt until `answer` shows on the SOL console: once in a
/// while under load the tail of a typed line (its Enter) does not reach iPXE (the same loss as
/// the console browser test's, closing note of stop 29), so a line unanswered after 15 s is
/// cleared with Ctrl-U and typed again, at most three times. The answer must still come from
/// the VM. Typed a few characters at a time, as a person types: under the full test command a
/// whole line written at once lost characters from its middle three times running (stop 32:
/// iPXE saw "echo ${platformol"), while plinth's SOL link reported every packet acknowledged.
async fn type_until(
    sol: &mut plinth_bmc::ipmi::sol::SolSession,
    seen: &mut Vec<u8>,
    line: &[u8],
    answer: &str,
) {
    for attempt in 1..=3 {
        if attempt > 1 {
            sol.write(b"\x15").await.unwrap();
        }
        for chunk in line.chunks(4) {
            sol.write(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        sol.write(b"\r").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if String::from_utf8_lossy(seen).contains(answer) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), sol.read()).await {
                Ok(Some(chunk)) => seen.extend_from_slice(&chunk),
                Ok(None) => panic!("the SOL session ended: {:?}", sol.ended()),
                Err(_) => {}
            }
        }
    }
    panic!(
        "{answer:?} not on the SOL console after typing {:?} three times; it showed:\n{}",
        String::from_utf8_lossy(line),
        String::from_utf8_lossy(seen)
    );
}

/// The test kit's IPMI BMC with its SOL on a VM's serial port (the VM's `serial.sock`): the
/// console shows the firmware booting, what is typed reaches iPXE's command line (Ctrl-B) and
/// is acted on, the bridge follows the VM through a power cycle (a new QEMU, a new socket),
/// and console.log keeps every boot with its separators all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipmi_bmc_bridges_sol_to_its_vms_serial_port() {
    use plinth_bmc::ipmi::sol::SolSession;
    use plinth_bmc::ipmi::{CipherSuite, IpmiConfig};
    use plinth_testkit::ipmi::{IpmiEmulator, IpmiEmulatorConfig, Serial};

    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("vbmcsol").unwrap();
    let tap = lab.tap(&ns).unwrap();
    let spec = VmSpec::new("vbmc-sol", Firmware::Bios, Nic::E1000, "52:54:00:7b:00:03");
    let vm = VirtualMachine::new(&ns.name, &tap, spec, &lab.dir().join("vm")).unwrap();
    let emu = IpmiEmulator::start_with_serial(
        IpmiEmulatorConfig::new("admin", "password"),
        Serial::Unix(vm.serial_socket().to_path_buf()),
    )
    .await
    .unwrap();
    // Activated while the machine is off: the console waits for it.
    let mut sol = SolSession::activate(&IpmiConfig {
        addr: emu.addr(),
        username: "admin".into(),
        password: "password".into(),
        timeout: Duration::from_millis(500),
        retries: 4,
        cipher_suite: CipherSuite::Seventeen,
    })
    .await
    .unwrap();
    let on = |vm: &Arc<VirtualMachine>| {
        let vm = vm.clone();
        tokio::task::spawn_blocking(move || vm.try_power_on("Pxe"))
    };
    on(&vm).await.unwrap().unwrap();
    let mut seen = Vec::new();
    // Ctrl-B until iPXE's command line prompts (its banner offers it for two seconds).
    sol_until(&mut sol, &mut seen, "iPXE>", Some(b"\x02")).await;
    // ${platform} is expanded by iPXE: the answer is not an echo of what was typed.
    type_until(
        &mut sol,
        &mut seen,
        b"echo ${platform}-typed-over-sol",
        "pcbios-typed-over-sol",
    )
    .await;
    // The same on the serial log, written by QEMU while the BMC held the socket.
    vm.wait_console("pcbios-typed-over-sol", BOOT_TIMEOUT)
        .unwrap();
    let pid1 = vm.qemu_pid().unwrap();

    // Powered off and on: a new QEMU and a new socket; the same SOL session shows the new boot.
    let off = vm.clone();
    tokio::task::spawn_blocking(move || off.try_power_off())
        .await
        .unwrap()
        .unwrap();
    seen.clear();
    on(&vm).await.unwrap().unwrap();
    assert_ne!(vm.qemu_pid(), Some(pid1));
    // The first boot's last prompt may still come in after the clear: wait for this boot's
    // firmware before looking for iPXE's prompt.
    sol_until(&mut sol, &mut seen, "SeaBIOS", None).await;
    let from = seen.windows(7).rposition(|w| w == b"SeaBIOS").unwrap_or(0);
    seen.drain(..from);
    sol_until(&mut sol, &mut seen, "iPXE>", Some(b"\x02")).await;
    type_until(
        &mut sol,
        &mut seen,
        b"echo second-${platform}",
        "second-pcbios",
    )
    .await;
    let this_boot = vm.wait_console("second-pcbios", BOOT_TIMEOUT).unwrap();
    assert!(!this_boot.contains("pcbios-typed-over-sol"), "{this_boot}");
    let whole = vm.console();
    assert_eq!(
        whole.matches(plinth_testkit::vm::SEPARATOR).count(),
        3,
        "{whole}"
    );
    assert!(whole.contains("pcbios-typed-over-sol"), "{whole}");
    let stats = emu.sol_stats();
    assert!(stats.from_serial > 0 && stats.to_serial > 0, "{stats:?}");
    sol.close().await.unwrap();
    let off = vm.clone();
    tokio::task::spawn_blocking(move || off.try_power_off())
        .await
        .unwrap()
        .unwrap();
}
