//! The boot storm's simulator (`plinth-lab storm`, `plinth_testkit::storm`) against a real
//! `plinth serve` in namespaces, small enough for the test command: twenty machines that plinth
//! is inspecting, half BIOS and half UEFI, PXE-boot at once, fetch their loaders by TFTP and
//! their scripts, kernel and initrd over HTTP, and report; a twenty-first, enrolled but not
//! inspecting, is given no boot file and is counted as failed. scripts/bench-storm.sh runs the same simulator with
//! 1,000 machines against plinth and against dnsmasq + nginx.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use plinth_testkit::netns::Lab;
use plinth_testkit::rack::plinth_lab_beside;
use plinth_testkit::storm::Report;
use plinth_types::MachineState;
use plinth_types::api::*;

use crate::support::BIN;
use crate::support::env::Env;
use crate::support::lab::{images_for, plinth};

const MACHINES: u32 = 20;

fn mac(i: u32) -> String {
    format!("52:54:00:91:00:{:02x}", i + 1)
}

#[test]
fn twenty_machines_booting_at_once_are_all_inspected() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (sif, cif) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &sif, "10.91.0.2/24").unwrap();
    // The client end's own address (outside the pool) routes the subnet; the simulator adds
    // each leased address beside it.
    lab.addr(&cli, &cif, "10.91.0.3/24").unwrap();
    env.subnet("10.91.0.0/24", "10.91.0.100", "10.91.0.199", None, &[]);

    let enroll = |mac: &str| {
        let req: MachineCreate =
            serde_json::from_value(serde_json::json!({ "nics": [{ "mac": mac }] })).unwrap();
        env.rt
            .block_on(
                env.app
                    .enroll_machine(&plinth_core::Principal::system(), req),
            )
            .unwrap()
    };
    let mut ids = Vec::new();
    for i in 0..MACHINES {
        let m = enroll(&mac(i));
        let action = plinth_core::lifecycle::Action {
            verb: "inspect".parse().unwrap(),
            expected_version: None,
            reason: None,
        };
        let m = env
            .rt
            .block_on(env.app.act(&plinth_core::Principal::system(), m.id, action))
            .unwrap();
        assert_eq!(m.state, MachineState::Inspecting);
        ids.push(m.id);
    }
    // Enrolled, not inspecting: plinth gives it no boot file, and the storm says so.
    let idle = enroll(&mac(MACHINES));

    let root = images_for(&lab);
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.91.0.2", &root, &[]);
    let exe = plinth_lab_beside(Path::new(BIN));
    assert!(
        exe.is_file(),
        "{} missing: cargo build -p plinth-testkit",
        exe.display()
    );
    let n = (MACHINES + 1).to_string();
    let out = lab
        .run_timeout(
            &cli,
            exe.to_str().unwrap(),
            &[
                "storm",
                "--iface",
                &cif,
                "--machines",
                &n,
                "--mac-base",
                &mac(0),
                "--uefi-percent",
                "50",
                "--timeout-secs",
                "90",
            ],
            Duration::from_secs(150),
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "plinth-lab storm: {stderr}\n{}",
        server.log_text()
    );
    let report: Report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let summary = serde_json::to_string_pretty(&report).unwrap();

    // The storm's own account: every inspecting machine finished, the idle one failed at its
    // first DHCP answer, which named nothing to boot.
    assert_eq!(
        report.finished,
        MACHINES,
        "{summary}\n{}",
        server.log_text()
    );
    assert_eq!(report.failed, 1, "{summary}");
    let f = &report.failures[0];
    assert_eq!(f.mac, mac(MACHINES), "{summary}");
    assert_eq!(f.phase, "dhcp", "{summary}");
    assert!(f.reason.contains("no boot file"), "{summary}");
    assert_eq!(report.duplicate_addresses, 0, "{summary}");
    for phase in [
        "dhcp",
        "address",
        "tftp",
        "ipxe_dhcp",
        "script",
        "kernel",
        "initrd",
        "report",
        "total",
    ] {
        assert!(report.phases.contains_key(phase), "{phase}: {summary}");
    }
    // Each finished machine fetched a loader (undionly.kpxe or ipxe.efi), then the kernel and
    // initrd in full.
    let size = |p: &str| std::fs::metadata(root.join(p)).unwrap().len();
    let ramdisk = size("plinth/vmlinuz") + size("plinth/initrd.img");
    assert_eq!(
        report.http_bytes,
        u64::from(MACHINES) * ramdisk,
        "{summary}"
    );
    assert_eq!(
        report.tftp_bytes,
        10 * size("undionly.kpxe") + 10 * size("ipxe.efi"),
        "{summary}"
    );

    // plinth's account: every report arrived, from the agent's token, with the storm's facts.
    for (i, id) in ids.iter().enumerate() {
        let m = env
            .rt
            .block_on(env.app.get_machine(&plinth_core::Principal::system(), *id))
            .unwrap();
        assert_eq!(m.state, MachineState::Ready, "{}: {m:?}", mac(i as u32));
        assert_eq!(m.facts["system"]["product"], "storm", "{:?}", m.facts);
        assert_eq!(m.facts["nics"][0]["mac"], mac(i as u32));
        let uefi = i % 2 == 1;
        assert_eq!(m.facts["firmware"], if uefi { "uefi" } else { "bios" });
        assert_eq!(m.pxe_arch, Some(if uefi { 7 } else { 0 }));
    }
    let idle = env
        .rt
        .block_on(
            env.app
                .get_machine(&plinth_core::Principal::system(), idle.id),
        )
        .unwrap();
    assert_eq!(idle.state, MachineState::Enrolled);
    // One lease per machine, no address twice.
    let leases: Vec<Lease> = env
        .leases()
        .into_iter()
        .filter(|l| l.state == LeaseState::Bound)
        .collect();
    assert_eq!(leases.len(), MACHINES as usize + 1, "{leases:?}");
    let addresses: HashSet<_> = leases.iter().map(|l| l.address).collect();
    assert_eq!(addresses.len(), leases.len());
    // The simulator took its addresses off the interface again.
    let left = lab
        .run(&cli, "ip", &["-4", "-o", "addr", "show", "dev", &cif])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).lines().count(),
        1,
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}
