//! A boot by virtual media, end to end on a real QEMU machine (issue 21): plinth's Redfish
//! driver picks the test kit's BMC's CD slot, inserts Debian's iPXE ISO (served by the test,
//! downloaded by the BMC, put in the VM's CD drive over QMP or on its command line), sets a
//! one-time `Cd` boot and power-cycles; the serial console shows the firmware booting the CD
//! and iPXE's banner from it, under SeaBIOS and under OVMF. The NIC has no iPXE ROM, so
//! that iPXE can only come from the CD. Then eject, read back empty, and (SeaBIOS) the next
//! CD boot finds no medium.
//!
//! Needs root (a network namespace and a tap), qemu-system-x86, ovmf and ipxe.

use std::path::Path;
use std::time::Duration;

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{
    Bmc, BootDevice, MediaType, PowerAction, choose_slot, eject_media_verified,
    insert_media_verified, set_boot_verified,
};
use plinth_testkit::netns::Lab;
use plinth_testkit::redfish::{ImageServer, RedfishEmulator};
use plinth_testkit::vm::{Firmware, Nic, VirtualMachine, VmSpec};

use crate::vmedia::IPXE_ISO;

/// TCG is slow, and other builds share the machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// iPXE's banner, as the ISO's iPXE prints it.
const IPXE_BANNER: &str = "Open Source Network Boot Firmware";

fn driver(emu: &RedfishEmulator) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: emu.url(),
        username: "admin".into(),
        password: "pw".into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(60),
        allow_plain_http: true,
    })
    .unwrap()
}

/// The boot's console, as plain text ([`plinth_types::terminal::plain`]: ISOLINUX moves
/// the cursor inside "iPXE ISO boot image"), once it shows `needle`.
async fn wait_console(vm: &VirtualMachine, needle: &str) -> String {
    vm.wait_console_async(needle, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

struct Rig {
    _lab: Lab,
    vm: std::sync::Arc<VirtualMachine>,
    emu: RedfishEmulator,
    bmc: Redfish,
    iso: ImageServer,
}

async fn rig(name: &str, firmware: Firmware, nic: Nic, mac: &str) -> Rig {
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace(name).unwrap();
    let tap = lab.tap(&ns).unwrap();
    let mut spec = VmSpec::new(name, firmware, nic, mac);
    spec.ipxe_rom = false;
    let vm = VirtualMachine::new(&ns.name, &tap, spec, &lab.dir().join("vm")).unwrap();
    let emu = RedfishEmulator::start_for("admin", "pw", vm.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let bmc = driver(&emu);
    let iso = ImageServer::start(Path::new(IPXE_ISO), "127.0.0.1:0")
        .await
        .unwrap();
    Rig {
        _lab: lab,
        vm,
        emu,
        bmc,
        iso,
    }
}

/// The CD slot, chosen by plinth's rule.
async fn cd_slot(bmc: &Redfish) -> String {
    let slots = bmc.media_slots().await.unwrap();
    let slot = choose_slot(&slots, MediaType::Cd).unwrap();
    assert_eq!(slot.id, "/redfish/v1/Managers/1/VirtualMedia/CD1");
    slot.id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bios_vm_boots_an_iso_by_virtual_media() {
    let r = rig(
        "vmedia-bios",
        Firmware::Bios,
        Nic::E1000,
        "52:54:00:7c:00:01",
    )
    .await;
    // On, with nothing to boot: SeaBIOS finds no bootable device.
    r.bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(r.vm.cd_in_qemu().unwrap(), None, "the drive starts empty");

    // Inserted while the machine runs: QMP puts the downloaded image in its drive.
    let slot = cd_slot(&r.bmc).await;
    insert_media_verified(&r.bmc, &slot, &r.iso.url())
        .await
        .unwrap();
    assert_eq!(r.iso.hits(), 1, "the BMC downloaded the image");
    let cd = r.vm.cd().expect("the VM holds the image");
    assert_eq!(
        std::fs::read(&cd).unwrap(),
        std::fs::read(IPXE_ISO).unwrap()
    );
    assert_eq!(
        r.vm.cd_in_qemu().unwrap().as_deref(),
        Some(cd.to_str().unwrap())
    );

    // Cd once, power cycle: SeaBIOS boots the CD first, and iPXE comes from it.
    set_boot_verified(&r.bmc, BootDevice::Cdrom, false, None)
        .await
        .unwrap();
    r.bmc.power(PowerAction::Cycle).await.unwrap();
    let pid = r.vm.qemu_pid().unwrap();
    assert!(
        cmdline(pid)
            .iter()
            .any(|a| a.starts_with("ide-cd,") && a.ends_with(",bootindex=1")),
        "{:?}",
        cmdline(pid)
    );
    let console = wait_console(&r.vm, IPXE_BANNER).await;
    eprintln!("SeaBIOS boot by virtual media:\n{console}");
    assert!(
        console.contains("Booting from DVD/CD") && console.contains("iPXE ISO boot image"),
        "{console}"
    );
    assert_eq!(
        r.bmc.boot_override().await.unwrap().device,
        None,
        "the one-time override was used"
    );

    // Eject while running: read back empty, and the drive is empty.
    let empty = eject_media_verified(&r.bmc, &slot).await.unwrap();
    assert!(!empty.is_occupied());
    assert_eq!(r.vm.cd_in_qemu().unwrap(), None);
    assert_eq!(r.vm.cd(), None);

    // A CD boot now finds no medium.
    set_boot_verified(&r.bmc, BootDevice::Cdrom, false, None)
        .await
        .unwrap();
    r.bmc.power(PowerAction::Cycle).await.unwrap();
    let console = wait_console(&r.vm, "Could not read from CDROM").await;
    assert!(!console.contains(IPXE_BANNER), "{console}");
    r.bmc.power(PowerAction::Off { force: true }).await.unwrap();
    drop(r.emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_vm_boots_an_iso_by_virtual_media() {
    let r = rig(
        "vmedia-uefi",
        Firmware::Uefi,
        Nic::VirtioNet,
        "52:54:00:7c:00:02",
    )
    .await;
    // Inserted while the machine is off: on its command line at power-on.
    let slot = cd_slot(&r.bmc).await;
    insert_media_verified(&r.bmc, &slot, &r.iso.url())
        .await
        .unwrap();
    set_boot_verified(&r.bmc, BootDevice::Cdrom, false, None)
        .await
        .unwrap();
    r.bmc.power(PowerAction::Cycle).await.unwrap();
    let console = wait_console(&r.vm, IPXE_BANNER).await;
    eprintln!("OVMF boot by virtual media:\n{console}");
    assert!(console.contains("DVD-ROM"), "OVMF boots the CD: {console}");
    assert!(r.vm.cd_in_qemu().unwrap().is_some());

    let empty = eject_media_verified(&r.bmc, &slot).await.unwrap();
    assert!(!empty.is_occupied());
    assert_eq!(r.vm.cd_in_qemu().unwrap(), None);
    r.bmc.power(PowerAction::Off { force: true }).await.unwrap();
    drop(r.emu);
}
