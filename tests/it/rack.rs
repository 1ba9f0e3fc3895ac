//! A virtual rack: QEMU VMs, each behind a virtual BMC (the test kit's Redfish BMC driving the
//! VM's QEMU process: power, reset, boot device), and `plinth serve` with DHCP, TFTP and HTTP on
//! their network, all in namespaces this test creates and removes. plinth powers the VMs through
//! their BMCs; they PXE-boot its ramdisk; the agent inspects, cleans and wipes them; every step
//! is asserted on plinth's API (state, facts, jobs, events), never on sleeps.
//!
//! Each virtual BMC runs in the server namespace (next to plinth, like a management network),
//! as a `plinth-lab vbmc` process (plinth_testkit::rack): Redfish for two VMs, IPMI (RMCP+, the
//! test kit's IPMI BMC) for the UEFI one.

use std::path::Path;
use std::time::{Duration, Instant};

use plinth_testkit::netns::Lab;
use plinth_testkit::rack::{BmcProtocol, rack_network};
use plinth_testkit::vm::{Firmware, Nic};
use plinth_types::api::{AllocationRequest, PoolUpdate, WipeMethod};
use plinth_types::{MachineState, Verb};

use crate::support::lab::{images_for, plinth};
use crate::support::machine;
use crate::support::rack::*;

#[test]
fn a_virtual_rack_from_power_on_to_decommissioned() {
    // Several VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    let (env, key) = keyed_env("10.86.0");
    let mut lab = Lab::new().unwrap();
    let vms = [
        VmDef {
            name: "bios1".into(),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Bios,
            nic: Nic::E1000,
            mac: "52:54:00:86:00:01".into(),
            memory_mib: 512,
            disks: &[32],
            nvme_disks: &[],
            sata_disks: &[],
        },
        VmDef {
            name: "uefi2".into(),
            protocol: BmcProtocol::Ipmi,
            firmware: Firmware::Uefi,
            nic: Nic::VirtioNet,
            mac: "52:54:00:86:00:02".into(),
            memory_mib: 768,
            disks: &[16, 24],
            nvme_disks: &[16],
            sata_disks: &[16],
        },
        VmDef {
            name: "badcreds3".into(),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Bios,
            nic: Nic::E1000,
            mac: "52:54:00:86:00:03".into(),
            memory_mib: 256,
            disks: &[8],
            nvme_disks: &[],
            sata_disks: &[],
        },
    ];
    let net = rack_network(&mut lab, "10.86.0", vms.len()).unwrap();
    let (srv, s, cli, taps) = (net.srv, net.srv_iface, net.rack, net.taps);
    let root = images_for(&lab);
    let bmcs = vbmcs(&mut lab, &srv, &cli, &taps, &vms);
    let server = plinth(
        &mut lab,
        &srv,
        &s,
        &env.db.url,
        "10.86.0.2",
        &root,
        &lifecycle_settings(&key),
    );
    let dirs: Vec<&Path> = bmcs.iter().map(|b| b.dir.as_path()).collect();
    // The disks start full of 0xa5 with a marker in the middle, so the wipes show.
    let disk_files = |i: usize| -> Vec<std::path::PathBuf> {
        let vm = &vms[i];
        (0..vm.disks.len())
            .map(|k| bmcs[i].dir.join(format!("disk{k}.raw")))
            .chain((0..vm.nvme_disks.len()).map(|k| bmcs[i].dir.join(format!("nvme{k}.raw"))))
            .chain((0..vm.sata_disks.len()).map(|k| bmcs[i].dir.join(format!("sata{k}.raw"))))
            .collect()
    };
    for i in 0..vms.len() {
        for f in disk_files(i) {
            fill(&f);
            mark_middle(&f);
        }
    }

    // Enroll: the BMC check reads each VM's BMC; the third has the wrong password. The second
    // is in a pool whose disks are wiped with the drives' own erase (NVMe Format), falling back
    // to a full overwrite where there is none (its virtio disks).
    env.rt
        .block_on(env.app.update_pool(
            &admin(),
            "secure-wipe",
            PoolUpdate {
                wipe_method: Some(WipeMethod::Secure),
            },
        ))
        .unwrap();
    let a = enroll(&env, &vms[0], &bmcs[0].address, PASSWORD);
    let b = enroll_in(&env, &vms[1], &bmcs[1].address, PASSWORD, "secure-wipe");
    let bad = enroll(&env, &vms[2], &bmcs[2].address, "not-the-password");

    // inspect → PXE once + power on through the BMCs → the agent reports → ready, powered off.
    for id in [a, b, bad] {
        act(&env, id, Verb::Inspect);
    }
    wait_state(
        &env,
        &[a, b],
        MachineState::Ready,
        Duration::from_secs(600),
        &server,
        &dirs,
    );
    let fa = machine(&env, a).facts;
    assert_eq!(fa["firmware"], "bios");
    let mem = fa["memory_mib"].as_u64().unwrap();
    assert!((448..=512).contains(&mem), "{fa}");
    assert_eq!(fa["disks"][0]["size_bytes"], 32u64 << 20);
    assert_eq!(fa["nics"][0]["mac"], vms[0].mac);
    let fb = machine(&env, b).facts;
    assert_eq!(fb["firmware"], "uefi");
    let mem = fb["memory_mib"].as_u64().unwrap();
    assert!((704..=768).contains(&mem), "{fb}");
    let mut sizes: Vec<(String, u64)> = fb["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["size_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    sizes.sort();
    assert_eq!(
        sizes,
        [
            ("nvme0n1".to_owned(), 16 << 20),
            ("sda".to_owned(), 16 << 20),
            ("vda".to_owned(), 16 << 20),
            ("vdb".to_owned(), 24 << 20)
        ]
    );
    for id in [a, b] {
        let m = machine(&env, id);
        assert_eq!(
            m.bmc.as_ref().unwrap().power_state.as_deref(),
            Some("off"),
            "powered off after inspection"
        );
    }
    // The wrong password: clear events, no boot, the machine waits in inspecting.
    let bad_events = events(&env, bad);
    assert!(
        bad_events
            .iter()
            .filter(|e| e.kind == "bmc_auth_failed")
            .count()
            >= 2,
        "the enrollment check and the inspect job: {bad_events:?}"
    );
    assert_eq!(machine(&env, bad).state, MachineState::Inspecting);
    assert!(!bad_events.iter().any(|e| e.kind == "boot"));

    // allocate → release → cleaning: the clean agent wipes every disk's ends → ready.
    let alloc = env
        .rt
        .block_on(env.app.allocate(
            &admin(),
            AllocationRequest {
                count: Some(2),
                ..Default::default()
            },
        ))
        .unwrap();
    env.rt
        .block_on(env.app.release_allocation(&admin(), alloc.id))
        .unwrap();
    wait_state(
        &env,
        &[a, b],
        MachineState::Ready,
        Duration::from_secs(600),
        &server,
        &dirs,
    );
    // The first (pool default, quick): its disk's ends are zero, the marker in its middle
    // is still there.
    for f in disk_files(0) {
        assert!(ends_zeroed(&f), "{}", f.display());
        assert!(
            has_marker(&f),
            "a quick wipe leaves the middle: {}",
            f.display()
        );
    }
    // The second (pool secure-wipe): every disk zero throughout, the markers gone: the NVMe
    // disk by NVMe Format, the ATA and virtio disks by the fallback's overwrite.
    for f in disk_files(1) {
        let data = std::fs::read(&f).unwrap();
        assert!(data.iter().all(|b| *b == 0), "{} is zero", f.display());
    }
    for id in [a, b] {
        assert!(events(&env, id).iter().any(|e| e.kind == "clean_complete"));
    }
    let done = events(&env, b)
        .into_iter()
        .find(|e| e.kind == "clean_complete")
        .unwrap();
    assert_eq!(done.details["method_required"], "secure");
    for d in done.details["disks"].as_array().unwrap() {
        let v = d["verification"].as_str().unwrap();
        if d["name"] == "nvme0n1" {
            assert_eq!(d["method"], "secure", "{d}");
            assert!(
                v.contains("NVMe Format NVM") && v.contains("all zero"),
                "{v}"
            );
        } else if d["name"] == "sda" {
            // QEMU's ATA disk answers IDENTIFY through SG_IO (ATA PASS-THROUGH) and has no
            // security feature set: the fallback, saying why.
            assert_eq!(d["method"], "full", "{d}");
            assert!(
                v.contains("does not have the ATA security feature set"),
                "{v}"
            );
        } else {
            assert_eq!(d["method"], "full", "{d}");
            assert!(
                v.contains("overwritten instead") && v.contains("all zero"),
                "{v}"
            );
        }
    }

    // decommission → wiped again → decommissioned, powered off for good, BMC scrubbed.
    for id in [a, b] {
        act(&env, id, Verb::Decommission);
    }
    wait_state(
        &env,
        &[a, b],
        MachineState::Decommissioned,
        Duration::from_secs(600),
        &server,
        &dirs,
    );
    for id in [a, b] {
        let m = machine(&env, id);
        assert!(m.bmc.is_none(), "credentials scrubbed");
        assert!(m.nics.is_empty(), "MACs freed");
        let ev = events(&env, id);
        assert!(
            ev.iter()
                .any(|e| e.kind == "bmc_scrubbed" && e.details["powered_off"] == true)
        );
    }
}

/// The benchmark of docs/benchmarks.md (scripts/bench-rack.sh): seconds from `inspect` to
/// `ready` for one VM, and for `PLINTH_BENCH_VMS` (default 8) at once; next to the boot chain
/// alone with dnsmasq serving the same files (DHCP and TFTP) to the same VM, in the same run.
#[test]
#[ignore = "benchmark: run by scripts/bench-rack.sh"]
fn bench_inspect_to_ready() {
    // Several VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    use plinth_testkit::redfish::Host;
    use plinth_testkit::vm::{Firmware, Nic, VirtualMachine, VmSpec};
    let n: usize = std::env::var("PLINTH_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let marker = "lease of"; // udhcpc in the ramdisk: the boot chain is done

    // The peer: dnsmasq (DHCP + TFTP) hands the same VM the same iPXE, kernel and ramdisk.
    let peer = {
        let mut lab = Lab::new().unwrap();
        let net = rack_network(&mut lab, "10.87.0", 1).unwrap();
        let (srv, s, cli, taps) = (net.srv, net.srv_iface, net.rack, net.taps);
        let tap = &taps[0];
        let root = images_for(&lab);
        std::fs::write(
            root.join("boot.ipxe"),
            "#!ipxe\nkernel tftp://10.87.0.2/plinth/vmlinuz initrd=initrd.img console=ttyS0,115200n8 \
             plinth.mode=inspect plinth.api=http://10.87.0.2:9 plinth.machine=peer plinth.token=none loglevel=4\n\
             initrd tftp://10.87.0.2/plinth/initrd.img\nboot\n",
        )
        .unwrap();
        let _dnsmasq = plinth_testkit::dhcp_clients::dnsmasq(
            &mut lab,
            &srv,
            &s,
            "10.87.0.100".parse().unwrap(),
            "10.87.0.200".parse().unwrap(),
            &[
                "--enable-tftp",
                &format!("--tftp-root={}", root.display()),
                "--dhcp-match=set:ipxe,175",
                "--dhcp-boot=tag:!ipxe,undionly.kpxe",
                "--dhcp-boot=tag:ipxe,boot.ipxe",
            ],
        )
        .unwrap();
        let mut spec = VmSpec::new("peer", Firmware::Bios, Nic::E1000, "52:54:00:87:00:01");
        spec.memory_mib = 512;
        let vm = VirtualMachine::new(&cli.name, tap, spec, &lab.path("peer")).unwrap();
        let t0 = Instant::now();
        vm.power_on("Pxe");
        let kernel = until_console(
            vm.dir(),
            "ramdisk init starting",
            t0,
            Duration::from_secs(300),
        );
        let lease = until_console(vm.dir(), marker, t0, Duration::from_secs(300));
        vm.power_off();
        (kernel, lease)
    };

    // plinth: the same VM spec, inspected through its virtual BMC.
    let (env, key) = keyed_env("10.88.0");
    let mut lab = Lab::new().unwrap();
    let net = rack_network(&mut lab, "10.88.0", n + 1).unwrap();
    let (srv, s, cli, taps) = (net.srv, net.srv_iface, net.rack, net.taps);
    let root = images_for(&lab);
    let initrd_bytes = std::fs::metadata(root.join("plinth/initrd.img"))
        .unwrap()
        .len();
    let defs: Vec<VmDef> = (0..=n)
        .map(|i| VmDef {
            name: format!("vm{i}"),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Bios,
            nic: Nic::E1000,
            mac: format!("52:54:00:88:00:{:02x}", i + 1),
            memory_mib: if i == 0 { 512 } else { 384 },
            disks: &[8],
            nvme_disks: &[],
            sata_disks: &[],
        })
        .collect();
    let bmcs = vbmcs(&mut lab, &srv, &cli, &taps, &defs);
    let server = plinth(
        &mut lab,
        &srv,
        &s,
        &env.db.url,
        "10.88.0.2",
        &root,
        &[
            ("PLINTH_BMC__SECRET_KEY", &key),
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
            ("PLINTH_LOG__LEVEL", "info"),
        ],
    );
    let ids: Vec<uuid::Uuid> = defs
        .iter()
        .zip(&bmcs)
        .map(|(d, b)| enroll(&env, d, &b.address, PASSWORD))
        .collect();
    let dirs: Vec<&Path> = bmcs.iter().map(|b| b.dir.as_path()).collect();
    // Let the enrollment checks finish first: they are not what is measured.
    wait_state(
        &env,
        &ids,
        MachineState::Enrolled,
        Duration::from_secs(60),
        &server,
        &dirs,
    );

    // One VM.
    let t0 = Instant::now();
    act(&env, ids[0], Verb::Inspect);
    let kernel = until_console(
        bmcs[0].dir.as_path(),
        "ramdisk init starting",
        t0,
        Duration::from_secs(300),
    );
    let chain = until_console(bmcs[0].dir.as_path(), marker, t0, Duration::from_secs(300));
    wait_state(
        &env,
        &ids[..1],
        MachineState::Ready,
        Duration::from_secs(300),
        &server,
        &dirs,
    );
    let one = t0.elapsed().as_secs_f64();
    let console = std::fs::read_to_string(bmcs[0].dir.join("console.log")).unwrap();
    let peak_kib = console
        .split("peak memory ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();

    // n VMs at once.
    let t0 = Instant::now();
    for id in &ids[1..] {
        act(&env, *id, Verb::Inspect);
    }
    let mut each = Vec::new();
    let mut left: Vec<usize> = (1..=n).collect();
    while !left.is_empty() {
        left.retain(|&i| {
            if machine(&env, ids[i]).state == MachineState::Ready {
                each.push(t0.elapsed().as_secs_f64());
                false
            } else {
                true
            }
        });
        assert!(
            t0.elapsed() < Duration::from_secs(1200),
            "{} VMs not ready",
            left.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    each.sort_by(f64::total_cmp);
    println!(
        "BENCH power on → ramdisk init: dnsmasq {:.1} s, plinth {kernel:.1} s (after inspect); \
         → ramdisk DHCP lease: dnsmasq {:.1} s, plinth {chain:.1} s; \
         inspect → ready, 1 VM: {one:.1} s; {n} VMs at once: first {:.1} s, median {:.1} s, last {:.1} s; \
         agent peak memory {peak_kib} KiB; initrd {:.1} MiB",
        peer.0,
        peer.1,
        each[0],
        each[each.len() / 2],
        each[each.len() - 1],
        initrd_bytes as f64 / (1 << 20) as f64
    );
}
