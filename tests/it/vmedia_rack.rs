//! The whole lifecycle by virtual media on a network where nothing hands out addresses: a
//! BIOS VM and a UEFI VM, each behind a Redfish virtual BMC (`plinth-lab vbmc`: the test kit's
//! BMC, its VirtualMedia downloading the ISO and putting it in the VM's CD drive over QMP),
//! and `plinth serve` with neither DHCP nor TFTP. Each machine boots by virtual media
//! (`boot_method`); its NIC's reserved address is the static network the ramdisk configures.
//! plinth prepares a per-boot ISO, inserts it, boots the CD once and power-cycles; the agent
//! reports from the static address; plinth ejects the ISO. Inspected, deployed (booted from
//! the disk afterwards) and cleaned on release, asserted on plinth's App, the VMs' consoles
//! and the virtual BMCs' CD drives.

use std::path::Path;
use std::time::{Duration, Instant};

use plinth_testkit::netns::Lab;
use plinth_testkit::rack::{BmcProtocol, rack_network};
use plinth_testkit::vm::{Firmware, Nic};
use plinth_types::MachineState;
use plinth_types::api::{BootMethod, DeployRequest, JobState, MachinePatch};

use crate::support::lab::{images_for, plinth_without_dhcp};
use crate::support::machine;
use crate::support::rack::*;

const PREFIX: &str = "10.92.0";

/// The kinds of a machine's lifecycle jobs, oldest first, with their states.
fn job_kinds(env: &crate::support::env::Env, id: uuid::Uuid) -> Vec<(String, JobState)> {
    let mut jobs = env
        .rt
        .block_on(env.app.jobs(
            &admin(),
            plinth_core::jobs::JobQuery {
                machine: Some(id),
                ..Default::default()
            },
        ))
        .unwrap()
        .jobs;
    jobs.reverse();
    // The inventory reads after an inspection (BIOS, firmware) run beside the lifecycle's.
    jobs.into_iter()
        .filter(|j| !j.kind.ends_with("_read"))
        .map(|j| (j.kind, j.state))
        .collect()
}

#[test]
fn bios_and_uefi_vms_are_inspected_deployed_and_cleaned_by_virtual_media_without_dhcp() {
    // Two VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    let (mut env, key) = keyed_env(PREFIX);
    let mut lab = Lab::new().unwrap();
    let vms = [
        VmDef {
            name: "vmbios".into(),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Bios,
            nic: Nic::E1000,
            mac: "52:54:00:92:00:01".into(),
            memory_mib: 512,
            disks: &[64],
            nvme_disks: &[],
            sata_disks: &[],
        },
        VmDef {
            name: "vmuefi".into(),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Uefi,
            nic: Nic::VirtioNet,
            mac: "52:54:00:92:00:02".into(),
            memory_mib: 768,
            disks: &[64],
            nvme_disks: &[],
            sata_disks: &[],
        },
    ];
    let net = rack_network(&mut lab, PREFIX, vms.len()).unwrap();
    let (srv, cli, taps) = (net.srv, net.rack, net.taps);
    let root = images_for(&lab);
    with_images(&mut env, &root);
    let bmcs = vbmcs(&mut lab, &srv, &cli, &taps, &vms);
    let public = format!("http://{PREFIX}.2:8080");
    let mut settings = lifecycle_settings(&key).to_vec();
    settings.push(("PLINTH_BOOT__PUBLIC_URL", &public));
    let server = plinth_without_dhcp(
        &mut lab,
        &srv,
        &env.db.url,
        &format!("{PREFIX}.2"),
        &root,
        &settings,
    );
    let dirs: Vec<&Path> = bmcs.iter().map(|b| b.dir.as_path()).collect();

    let addrs = [format!("{PREFIX}.51"), format!("{PREFIX}.52")];
    let ids: Vec<uuid::Uuid> = vms
        .iter()
        .zip(&bmcs)
        .zip(&addrs)
        .map(|((vm, bmc), addr)| enroll_reserved(&env, vm, &bmc.address, PASSWORD, addr))
        .collect();
    for id in &ids {
        env.rt
            .block_on(env.app.update_machine(
                &admin(),
                *id,
                MachinePatch {
                    boot_method: Some(Some(BootMethod::VirtualMedia)),
                    ..Default::default()
                },
            ))
            .unwrap();
        act(&env, *id, plinth_types::Verb::Inspect);
    }
    let long = Duration::from_secs(900);
    wait_state(&env, &ids, MachineState::Ready, long, &server, &dirs);

    for (i, id) in ids.iter().enumerate() {
        // The ramdisk came from the CD and configured the reserved address itself.
        let console = std::fs::read_to_string(dirs[i].join("console.log")).unwrap();
        assert!(
            console.contains("static network on") && console.contains(&addrs[i]),
            "the ramdisk's static network:\n{console}"
        );
        let kinds = job_kinds(&env, *id);
        let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["identify", "vmedia_boot", "power", "vmedia_eject", "power"],
            "{kinds:?}"
        );
        assert!(
            kinds.iter().all(|(_, s)| *s == JobState::Succeeded),
            "{kinds:?}"
        );
        // The ISO was fetched by the BMC, and is out of the drive again.
        let ev = events(&env, *id);
        assert!(ev.iter().any(|e| e.kind == "vmedia_prepared"), "{ev:?}");
        assert!(
            !dirs[i].join("cd.iso").exists(),
            "the ISO was ejected from {}",
            dirs[i].display()
        );
        let m = machine(&env, *id);
        assert!(
            m.facts.to_string().contains(&vms[i].mac),
            "the NIC is in the facts: {}",
            m.facts
        );
    }
    // Nothing on this network handed out an address.
    let leases = env
        .rt
        .block_on(env.app.list_leases(&admin(), None, None))
        .unwrap();
    assert!(leases.is_empty(), "{leases:?}");

    // allocate → deploy by virtual media → the disk boots the image.
    let bios = register(&env, "vm-bios", "disks/test-disk-bios.raw.zst", "bios");
    let uefi = register(&env, "vm-uefi", "disks/test-disk-uefi.raw.zst", "uefi");
    let (alloc, got) = allocate(&env, 2);
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    let hosts = ["vm-web-01", "vm-web-02"];
    for ((id, img), host) in ids.iter().zip([&bios, &uefi]).zip(hosts) {
        deploy(
            &env,
            *id,
            DeployRequest {
                image: img.name.clone(),
                hostname: Some(host.into()),
                ..Default::default()
            },
        );
    }
    wait_state(&env, &ids, MachineState::Deployed, long, &server, &dirs);
    let t0 = Instant::now();
    for (dir, host) in dirs.iter().zip(hosts) {
        until_console(
            dir,
            &format!("PLINTH-DEPLOYED hostname={host}"),
            t0,
            Duration::from_secs(600),
        );
        assert!(!dir.join("cd.iso").exists());
    }
    for id in &ids {
        let kinds = job_kinds(&env, *id);
        let tail: Vec<&str> = kinds[5..].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            tail,
            [
                "vmedia_boot",
                "power",
                "vmedia_eject",
                "boot_device",
                "power"
            ],
            "{kinds:?}"
        );
    }

    // release → cleaning by virtual media → ready.
    release(&env, alloc);
    wait_state(&env, &ids, MachineState::Ready, long, &server, &dirs);
    for (i, id) in ids.iter().enumerate() {
        let kinds = job_kinds(&env, *id);
        assert!(
            kinds.iter().all(|(_, s)| *s == JobState::Succeeded),
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|(k, _)| k == "vmedia_boot").count(),
            3,
            "inspect, deploy, clean: {kinds:?}"
        );
        assert!(!dirs[i].join("cd.iso").exists());
    }
}
