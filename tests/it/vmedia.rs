//! Virtual-media boots with real firmware: `plinth serve` in a namespace with no DHCP server
//! at all, a machine whose NIC has a reserved address in a subnet plinth knows, the ISO of its
//! inspection boot fetched with curl from `/boot/vmedia/{id}.iso`, and a QEMU VM (SeaBIOS,
//! then OVMF) booting that ISO as its CD-ROM (no BMC here: attaching it through Redfish
//! VirtualMedia is the BMC side's test). GRUB on the ISO boots the ramdisk, whose /init
//! configures the static network of `plinth.net=` and whose agent reports the inspection from
//! that address: the machine is `ready`, its token was bound to the static address.

use std::process::Command;
use std::time::{Duration, Instant};

use plinth_core::Principal;
use plinth_core::boot::{BootSettings, Templates};
use plinth_testkit::netns::{Lab, Ns, Proc};
use plinth_types::api::*;
use plinth_types::{AgentMode, MachineState};

use crate::support::env::Env;
use crate::support::lab::{images_for, plinth_without_dhcp};
use crate::support::machine;

const PREFIX: &str = "10.83.0";
const MAC: &str = "52:54:00:83:00:20";

#[derive(Clone, Copy)]
enum Firmware {
    Bios,
    Uefi,
}

/// A VM booting `iso` as its CD-ROM, its NIC (no option ROM: nothing network-boots) on `tap`.
fn vm(lab: &mut Lab, ns: &Ns, tap: &str, iso: &std::path::Path, fw: Firmware) -> Proc {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nographic", "-m", "512", "-no-reboot"])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ])
        .args([
            "-drive",
            &format!(
                "file={},media=cdrom,if=none,id=cd0,readonly=on",
                iso.display()
            ),
        ]);
    match fw {
        Firmware::Bios => {
            qemu.args(["-machine", "pc,accel=tcg", "-boot", "d"])
                .args(["-device", "ide-cd,drive=cd0,bootindex=0"])
                .args(["-device", &format!("e1000,netdev=n0,mac={MAC},romfile=")]);
        }
        Firmware::Uefi => {
            let vars = lab.path("OVMF_VARS.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
            qemu.args(["-machine", "q35,accel=tcg"])
                .args([
                    "-drive",
                    "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ])
                .args(["-device", "ide-cd,drive=cd0,bootindex=0"])
                .args([
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
                ]);
        }
    }
    let name = match fw {
        Firmware::Bios => "qemu-bios",
        Firmware::Uefi => "qemu-uefi",
    };
    lab.spawn_named(ns, name, qemu).unwrap()
}

/// The ramdisk's `PLINTH-RAMDISK ...` line.
fn ramdisk_line(vm: &Proc, server: &Proc, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = vm.log_text();
        if let Some(line) = log.lines().find(|l| l.starts_with("PLINTH-RAMDISK ")) {
            return line.trim().to_owned();
        }
        assert!(
            vm.is_running(),
            "the VM stopped:\n{log}\n--- plinth:\n{}",
            server.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "no ramdisk line in {timeout:?}:\n{log}\n--- plinth:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Prepares the machine's inspection boot and fetches its ISO with curl inside `ns`.
fn fetch_iso(
    env: &Env,
    app: &plinth_core::App,
    lab: &Lab,
    ns: &Ns,
    id: uuid::Uuid,
    name: &str,
) -> std::path::PathBuf {
    let boot = env
        .rt
        .block_on(app.prepare_vmedia_boot(id, AgentMode::Inspect))
        .unwrap();
    let net = boot.static_network.as_ref().expect("a static network");
    assert_eq!(net.address.to_string(), format!("{PREFIX}.20"));
    let iso = lab.path(name);
    let out = lab
        .run(
            ns,
            "curl",
            &["-sSf", "-o", iso.to_str().unwrap(), &boot.url],
        )
        .unwrap();
    assert!(out.status.success(), "curl {}: {out:?}", boot.url);
    iso
}

#[test]
fn a_vm_boots_its_iso_with_a_static_network_and_no_dhcp() {
    let _vm = machine::vm();
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s, c) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s, &format!("{PREFIX}.2/24")).unwrap();
    let tap = lab.tap(&cli).unwrap();
    lab.bridge(&cli, &[&c, &tap]).unwrap();
    // The subnet plinth knows (its router is also its DNS server); plinth runs no DHCP on it.
    env.subnet(
        &format!("{PREFIX}.0/24"),
        &format!("{PREFIX}.100"),
        &format!("{PREFIX}.149"),
        Some(&format!("{PREFIX}.1")),
        &[],
    );
    let root = images_for(&lab);
    let req: MachineCreate = serde_json::from_value(serde_json::json!({
        "nics": [{ "mac": MAC, "ipv4": format!("{PREFIX}.20"), "pxe": true }],
    }))
    .unwrap();
    let m = env
        .rt
        .block_on(env.app.enroll_machine(&Principal::system(), req))
        .unwrap();
    let inspect = || {
        let action = plinth_core::lifecycle::Action {
            verb: "inspect".parse().unwrap(),
            expected_version: None,
            reason: None,
        };
        env.rt
            .block_on(env.app.act(&Principal::system(), m.id, action))
            .unwrap()
    };
    assert_eq!(inspect().state, MachineState::Inspecting);
    // The core call the lifecycle makes, with plinth's public URL.
    let mut settings = BootSettings::with_root(root.clone());
    settings.public_url = Some(format!("http://{PREFIX}.2:8080"));
    let app = env
        .app
        .clone()
        .with_boot(settings, Templates::load(None).unwrap());
    let public = format!("http://{PREFIX}.2:8080");
    let server = plinth_without_dhcp(
        &mut lab,
        &srv,
        &env.db.url,
        &format!("{PREFIX}.2"),
        &root,
        &[("PLINTH_BOOT__PUBLIC_URL", &public)],
    );

    for (round, fw) in [(1, Firmware::Bios), (2, Firmware::Uefi)] {
        let iso = fetch_iso(&env, &app, &lab, &srv, m.id, &format!("boot{round}.iso"));
        let mut vm = vm(&mut lab, &cli, &tap, &iso, fw);
        let line = ramdisk_line(&vm, &server, Duration::from_secs(300));
        let log = vm.log_text();
        assert!(line.contains("mode=inspect"), "{line}");
        assert!(line.contains(&format!("machine={}", m.id)), "{line}");
        assert!(line.contains("healthz=ok"), "{line}\n{log}");
        assert!(line.contains("agent=ok"), "{line}\n{log}");
        assert!(
            log.contains("plinth: static network on ")
                && log.contains(&format!(
                    "({MAC}): {PREFIX}.20/24 gateway {PREFIX}.1 dns {PREFIX}.1"
                )),
            "{log}"
        );
        assert!(!log.contains("DHCP on "), "no DHCP was tried:\n{log}");
        assert!(
            !log.contains("plinth.token=plinth_"),
            "the token stays off the console"
        );
        let now = env
            .rt
            .block_on(env.app.get_machine(&Principal::system(), m.id))
            .unwrap();
        assert_eq!(now.state, MachineState::Ready, "round {round}");
        // The report came from the static address the token was bound to.
        let q = plinth_core::events::EventQuery::default();
        let events = env
            .rt
            .block_on(env.app.events(&Principal::system(), Some(m.id), q))
            .unwrap()
            .events;
        let done: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "inspect_complete")
            .collect();
        assert_eq!(done.len(), round, "{events:#?}");
        assert_eq!(done[0].actor, "agent:inspect");
        assert_eq!(
            events.iter().filter(|e| e.kind == "vmedia_fetched").count(),
            round
        );
        vm.kill();
        if round == 1 {
            assert_eq!(inspect().state, MachineState::Inspecting);
        }
    }
}
