//! The hardware matrix (issue 22): plinth's inspection ramdisk, network-booted through each
//! VM's virtual BMC, in QEMU VMs made of every NIC model and disk controller QEMU emulates that
//! servers have (e1000, e1000e, rtl8139, virtio-net, vmxnet3, pcnet; IDE, AHCI, virtio-blk,
//! virtio-scsi, NVMe, LSI MegaRAID SAS 2108, LSI 53C895A), under SeaBIOS and OVMF:
//! each VM's agent must report every NIC (MAC, link) and every disk (size, serial) to plinth.
//! Four VMs at once, several models each: every NIC model under both firmwares (and a PXE
//! boot through the option ROM of three of them: rtl8139 and vmxnet3 under SeaBIOS, vmxnet3 and
//! e1000e under OVMF; pcnet's iPXE driver takes minutes for the ramdisk under emulation), every
//! disk controller under both (IDE only under SeaBIOS: q35 has none). Every NIC is on the
//! rack's bridge, so any of them may carry the ramdisk's lease. Not QEMU's LSI SAS 1068
//! (`mptsas1068`): Debian 12's kernel finds no disk behind QEMU 7.2's.
//!
//! And a ramdisk that cannot get on the network says why and powers off: a VM whose only
//! cabled NIC gets no DHCP answer and whose other NIC's drivers are blacklisted prints the
//! unclaimed PCI device, retries DHCP for `plinth.dhcp_timeout`, and powers off; a VM that
//! PXE-boots through a NIC the ramdisk has no driver for powers off, and plinth fails its
//! inspection at once, naming what it last saw of it.

use std::path::Path;
use std::time::{Duration, Instant};

use plinth_testkit::netns::Lab;
use plinth_testkit::rack::{
    BmcProtocol, VirtualBmcSpec, plinth_lab_beside, rack_network, start_virtual_bmc,
};
use plinth_testkit::vm::{
    DirectBoot, ExtraNic, Firmware, Hba, HbaDisk, Nic, VirtualMachine, VmSpec,
};
use plinth_types::api::{Arch, BmcSpec, MachineCreate, NicSpec};
use plinth_types::{MachineState, Verb};

use crate::support::BIN;
use crate::support::lab::{built_images, images_for, plinth};
use crate::support::machine;
use crate::support::rack::*;

const PREFIX: &str = "10.93.0";

/// One VM of the matrix.
struct Def {
    name: &'static str,
    firmware: Firmware,
    /// The NIC it network-boots from (its option ROM), then the others.
    nics: &'static [Nic],
    virtio: &'static [u64],
    nvme: &'static [u64],
    /// On the machine's own controller: IDE on SeaBIOS (`pc`), AHCI on OVMF (`q35`).
    ata: &'static [u64],
    hba: &'static [(Hba, u64)],
}

const MATRIX: [Def; 4] = [
    Def {
        name: "hw-bios-a",
        firmware: Firmware::Bios,
        nics: &[Nic::Rtl8139, Nic::E1000, Nic::Pcnet],
        virtio: &[20],
        nvme: &[],
        ata: &[21],
        hba: &[(Hba::MegaSas, 22), (Hba::VirtioScsi, 23)],
    },
    Def {
        name: "hw-uefi-b",
        firmware: Firmware::Uefi,
        nics: &[Nic::Vmxnet3, Nic::E1000e, Nic::VirtioNet],
        virtio: &[],
        nvme: &[24],
        ata: &[25],
        hba: &[(Hba::MegaSas, 26), (Hba::Lsi53c895a, 27)],
    },
    Def {
        name: "hw-bios-c",
        firmware: Firmware::Bios,
        nics: &[Nic::Vmxnet3, Nic::E1000e, Nic::Pcnet, Nic::VirtioNet],
        virtio: &[],
        nvme: &[28],
        ata: &[],
        hba: &[
            (Hba::Ahci, 29),
            (Hba::Lsi53c895a, 30),
            (Hba::VirtioScsi, 31),
        ],
    },
    Def {
        name: "hw-uefi-d",
        firmware: Firmware::Uefi,
        nics: &[Nic::E1000e, Nic::Rtl8139, Nic::Pcnet, Nic::E1000],
        virtio: &[32],
        nvme: &[],
        ata: &[],
        hba: &[(Hba::Ahci, 33), (Hba::VirtioScsi, 34)],
    },
];

fn mac(vm: usize, nic: usize) -> String {
    format!("52:54:00:93:{:02x}:{:02x}", vm + 1, nic + 1)
}

/// The disks a VM has, as (size in bytes, serial), from its definition and the test kit's
/// serial scheme (plinth_testkit::vm).
fn expected_disks(d: &Def) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (i, mib) in d.virtio.iter().enumerate() {
        out.push((mib << 20, format!("plinth-disk-{i}")));
    }
    for (i, mib) in d.nvme.iter().enumerate() {
        out.push((mib << 20, format!("plinth-nvme-{i}")));
    }
    for (i, mib) in d.ata.iter().enumerate() {
        out.push((mib << 20, format!("plinth-sata-{i}")));
    }
    for (j, (hba, mib)) in d.hba.iter().enumerate() {
        let k = d.hba[..j].iter().filter(|(h, _)| h == hba).count();
        out.push((mib << 20, format!("plinth-{}-{k}", hba.name())));
    }
    out
}

#[test]
fn the_ramdisk_reports_every_nic_and_disk_of_a_hardware_matrix() {
    // Four VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    let (env, key) = keyed_env(PREFIX);
    let mut lab = Lab::new().unwrap();
    let taps_needed: usize = MATRIX.iter().map(|d| d.nics.len()).sum();
    let net = rack_network(&mut lab, PREFIX, taps_needed).unwrap();
    let (srv, s, cli, mut taps) = (net.srv, net.srv_iface, net.rack, net.taps.into_iter());
    let root = images_for(&lab);

    let mut bmcs = Vec::new();
    for (v, d) in MATRIX.iter().enumerate() {
        let mut spec = VmSpec::new(d.name, d.firmware, d.nics[0], &mac(v, 0));
        // The ramdisk unpacked (every driver) and the agent's work need more than the default.
        spec.memory_mib = 768;
        spec.disks = d.virtio.to_vec();
        spec.nvme_disks = d.nvme.to_vec();
        spec.sata_disks = d.ata.to_vec();
        spec.hba_disks = d
            .hba
            .iter()
            .map(|(hba, mib)| HbaDisk {
                hba: *hba,
                mib: *mib,
            })
            .collect();
        let first_tap = taps.next().unwrap();
        spec.extra_nics = d.nics[1..]
            .iter()
            .enumerate()
            .map(|(k, nic)| ExtraNic {
                nic: *nic,
                mac: mac(v, k + 1),
                tap: taps.next().unwrap(),
            })
            .collect();
        let vb = VirtualBmcSpec {
            vm: spec,
            protocol: BmcProtocol::Redfish,
            username: "admin".into(),
            password: PASSWORD.into(),
            ns: cli.name.clone(),
            tap: first_tap,
            dir: lab.path(d.name),
            listen: None,
        };
        bmcs.push(
            start_virtual_bmc(&mut lab, &srv, &plinth_lab_beside(Path::new(BIN)), &vb)
                .unwrap_or_else(|e| panic!("{e:#}")),
        );
    }
    let server = plinth(
        &mut lab,
        &srv,
        &s,
        &env.db.url,
        &format!("{PREFIX}.2"),
        &root,
        &lifecycle_settings(&key),
    );
    let dirs: Vec<&Path> = bmcs.iter().map(|b| b.dir.as_path()).collect();

    // Enrolled with all their NICs (the first boots from the network), inspected at once.
    let ids: Vec<uuid::Uuid> = MATRIX
        .iter()
        .enumerate()
        .map(|(v, d)| {
            let req = MachineCreate {
                hostname: Some(d.name.into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: Some(Arch::X86_64),
                nics: (0..d.nics.len())
                    .map(|k| NicSpec {
                        mac: mac(v, k).parse().unwrap(),
                        ipv4: None,
                        pxe: Some(k == 0),
                    })
                    .collect(),
                bmc: Some(BmcSpec {
                    protocol: BmcProtocol::Redfish,
                    address: bmcs[v].address.clone(),
                    username: "admin".into(),
                    password: PASSWORD.into(),
                    verify_tls: Some(false),
                    plain_http: Some(true),
                }),
            };
            env.rt
                .block_on(env.app.enroll_machine(&admin(), req))
                .unwrap()
                .id
        })
        .collect();
    let t0 = Instant::now();
    for id in &ids {
        act(&env, *id, Verb::Inspect);
    }
    wait_state(
        &env,
        &ids,
        MachineState::Ready,
        Duration::from_secs(900),
        &server,
        &dirs,
    );
    eprintln!(
        "hardware matrix: {} VMs inspect → ready in {:.1} s",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );

    let mut problems = Vec::new();
    for (v, (d, id)) in MATRIX.iter().zip(&ids).enumerate() {
        let facts = machine(&env, *id).facts;
        let want_fw = match d.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        if facts["firmware"] != want_fw {
            problems.push(format!(
                "{}: firmware {} (want {want_fw})",
                d.name, facts["firmware"]
            ));
        }
        let nics = facts["nics"].as_array().cloned().unwrap_or_default();
        for (k, model) in d.nics.iter().enumerate() {
            let m = mac(v, k);
            match nics.iter().find(|n| n["mac"] == m.as_str()) {
                None => problems.push(format!(
                    "{}: {} NIC {m} not reported ({} NICs reported)",
                    d.name,
                    model.device(),
                    nics.len()
                )),
                Some(n) if n["link"] != true => problems.push(format!(
                    "{}: {} NIC {m} reported without link: {n}",
                    d.name,
                    model.device()
                )),
                Some(_) => {}
            }
        }
        if nics.len() != d.nics.len() {
            problems.push(format!(
                "{}: {} NICs reported, the VM has {}: {nics:?}",
                d.name,
                nics.len(),
                d.nics.len()
            ));
        }
        let disks = facts["disks"].as_array().cloned().unwrap_or_default();
        for (size, serial) in expected_disks(d) {
            match disks.iter().find(|x| x["serial"] == serial.as_str()) {
                None => problems.push(format!(
                    "{}: no disk with serial {serial} ({size} bytes) reported",
                    d.name
                )),
                Some(x) if x["size_bytes"] != size => problems.push(format!(
                    "{}: disk {serial} reported with {} bytes, has {size}",
                    d.name, x["size_bytes"]
                )),
                Some(_) => {}
            }
        }
        if disks.len() != expected_disks(d).len() {
            problems.push(format!(
                "{}: {} disks reported, the VM has {}: {disks:?}",
                d.name,
                disks.len(),
                expected_disks(d).len()
            ));
        }
    }
    let consoles = || {
        bmcs.iter()
            .map(|b| {
                let log = std::fs::read(b.dir.join("console.log")).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(6000)..];
                format!("== {}:\n{}", b.dir.display(), String::from_utf8_lossy(tail))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        problems.is_empty(),
        "the agents' reports miss hardware:\n{}\n{}",
        problems.join("\n"),
        consoles()
    );
}

#[test]
fn a_ramdisk_without_network_names_the_unclaimed_nic_retries_dhcp_and_powers_off() {
    let _machine = machine::vm();
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("nonet").unwrap();
    // Two NICs: an RTL8139 whose drivers are blacklisted (as if the ramdisk had none for it)
    // and an e1000 on a tap where nothing answers DHCP.
    let (t1, t2) = (lab.tap(&ns).unwrap(), lab.tap(&ns).unwrap());
    let images = built_images();
    let mut spec = VmSpec::new("nonet", Firmware::Bios, Nic::Rtl8139, "52:54:00:93:99:01");
    spec.memory_mib = 768;
    spec.ipxe_rom = false;
    spec.extra_nics = vec![ExtraNic {
        nic: Nic::E1000,
        mac: "52:54:00:93:99:02".into(),
        tap: t2,
    }];
    spec.direct_boot = Some(DirectBoot {
        kernel: images.join("plinth/vmlinuz"),
        initrd: images.join("plinth/initrd.img"),
        append: "console=ttyS0,115200n8 plinth.mode=inspect plinth.api=http://10.93.99.1:8080/ \
                 plinth.dhcp_timeout=12 modprobe.blacklist=8139too,8139cp"
            .into(),
    });
    let vm = VirtualMachine::new(&ns.name, &t1, spec, &lab.path("nonet")).unwrap();
    vm.try_power_on("None").unwrap();
    // It powers itself off: QEMU exits.
    let deadline = Instant::now() + Duration::from_secs(300);
    while vm.qemu_pid().is_some() {
        assert!(
            Instant::now() < deadline,
            "the VM is still on after 300 s; its console:\n{}",
            vm.boot_console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = vm.console();
    for want in [
        "modules never loaded (modprobe.blacklist=): 8139too 8139cp",
        "PCI network and storage devices no driver claimed:",
        "10ec:8139 class 020000 (network), drivers here: 8139cp 8139too (not bound",
        "DHCP on eth0 (52:54:00:93:99:02)",
        "no DHCP lease yet (round 1,",
        "plinth: FAILED: no DHCP lease on any interface after ",
        "eth0(52:54:00:93:99:02)=link; unclaimed PCI devices listed above",
        "PLINTH-RAMDISK mode=inspect machine=unknown api=http://10.93.99.1:8080/ healthz=fail agent=skipped",
        "reboot: Power down",
    ] {
        assert!(
            console.contains(want),
            "no {want:?} on the console:\n{console}"
        );
    }
}

/// The issue's own story: a BIOS machine network-boots the inspection ramdisk through its NIC's
/// PXE ROM, but the ramdisk's kernel has no driver for that NIC (here: its driver blacklisted
/// through plinth's `boot.kernel_args`). The ramdisk names the unclaimed NIC and powers the
/// machine off; plinth notices the power-off at once (not at the inspection timeout) and fails
/// the inspection with a reason naming what it last saw: the lease, the script request and the
/// initrd fetched in full.
#[test]
fn a_ramdisk_without_its_nics_driver_powers_off_and_plinth_says_what_it_last_saw() {
    let _machine = machine::vm();
    let (env, key) = keyed_env("10.94.0");
    let mut lab = Lab::new().unwrap();
    let net = rack_network(&mut lab, "10.94.0", 1).unwrap();
    let (srv, s, cli, taps) = (net.srv, net.srv_iface, net.rack, net.taps);
    let root = images_for(&lab);
    let vm = VmDef {
        name: "nodriver".into(),
        protocol: BmcProtocol::Redfish,
        firmware: Firmware::Bios,
        nic: Nic::E1000,
        mac: "52:54:00:94:00:01".into(),
        memory_mib: 768,
        disks: &[16],
        nvme_disks: &[],
        sata_disks: &[],
    };
    let bmc = vbmc(&mut lab, &srv, &cli, &taps[0], &vm);
    let mut settings: Vec<(&str, &str)> = lifecycle_settings(&key).to_vec();
    settings.push((
        "PLINTH_BOOT__KERNEL_ARGS",
        "loglevel=4 modprobe.blacklist=e1000",
    ));
    let server = plinth(
        &mut lab,
        &srv,
        &s,
        &env.db.url,
        "10.94.0.2",
        &root,
        &settings,
    );
    let id = enroll(&env, &vm, &bmc.address, PASSWORD);
    act(&env, id, Verb::Inspect);
    // Failed long before the inspection timeout (30 min by default).
    let deadline = Instant::now() + Duration::from_secs(600);
    let m = loop {
        let m = crate::support::rack::machine(&env, id);
        if m.state != MachineState::Inspecting {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "still inspecting after 600 s; console:\n{}\nplinth:\n{}",
            std::fs::read_to_string(bmc.dir.join("console.log")).unwrap_or_default(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let console = std::fs::read_to_string(bmc.dir.join("console.log")).unwrap_or_default();
    assert_eq!(m.state, MachineState::InspectFailed, "{console}");
    let reason = m.state_reason.clone().unwrap_or_default();
    for want in [
        "the machine powered off without reporting",
        "lease 10.94.0.",
        "script request",
        "plinth/initrd.img",
        "complete",
    ] {
        assert!(reason.contains(want), "no {want:?} in the reason: {reason}");
    }
    for want in [
        "8086:100e class 020000 (network), drivers here: e1000 (not bound",
        "plinth: FAILED: no network interface: no driver in this ramdisk claimed a NIC",
        "reboot: Power down",
    ] {
        assert!(
            console.contains(want),
            "no {want:?} on the console:\n{console}"
        );
    }
    eprintln!("nodriver: {reason}");
}
