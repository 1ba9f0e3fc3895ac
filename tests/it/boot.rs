//! The boot chain with real clients and real firmware, in network namespaces this test creates
//! and removes: `plinth serve` (DHCP, TFTP, HTTP) in a server namespace; tftp-hpa, atftp and
//! curl, or QEMU virtual machines (SeaBIOS + iPXE ROM, OVMF + iPXE ROM, OVMF's own PXE client)
//! on the other side. The VMs boot the kernel and ramdisk that `images/build.sh` builds and
//! plinth chooses for their lifecycle state; the ramdisk's /init runs the agent and prints a
//! `PLINTH-RAMDISK mode=... machine=... agent=...` line on the serial console, which the tests
//! read next to what the agent reported to plinth.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_core::Principal;
use plinth_testkit::netns::{Lab, Ns, Proc};
use plinth_types::MachineState;
use plinth_types::api::*;

use crate::support::env::Env;
use crate::support::machine;

use crate::support::lab::{built_images, images_for, plinth};

/// What these tests add to the shared Env.
trait BootEnv {
    fn subnet24(&self, prefix: &str);
    fn enroll(&self, mac: &str) -> Machine;
    fn act(&self, id: uuid::Uuid, verb: &str) -> Machine;
    fn machine_by_mac(&self, mac: &str) -> Option<Machine>;
    fn events(&self, id: uuid::Uuid, kind: &str) -> Vec<Event>;
}

impl BootEnv for Env {
    fn subnet24(&self, prefix: &str) {
        self.subnet(
            &format!("{prefix}.0/24"),
            &format!("{prefix}.100"),
            &format!("{prefix}.149"),
            None,
            &[],
        );
    }

    fn enroll(&self, mac: &str) -> Machine {
        let req: MachineCreate = serde_json::from_value(serde_json::json!({
            "nics": [{ "mac": mac }],
        }))
        .unwrap();
        self.rt
            .block_on(self.app.enroll_machine(&Principal::system(), req))
            .unwrap()
    }

    fn act(&self, id: uuid::Uuid, verb: &str) -> Machine {
        let action = plinth_core::lifecycle::Action {
            verb: verb.parse().unwrap(),
            expected_version: None,
            reason: None,
        };
        self.rt
            .block_on(self.app.act(&Principal::system(), id, action))
            .unwrap()
    }

    fn machine_by_mac(&self, mac: &str) -> Option<Machine> {
        self.machines(mac).into_iter().next()
    }

    fn events(&self, id: uuid::Uuid, kind: &str) -> Vec<Event> {
        let q = plinth_core::events::EventQuery::default();
        self.rt
            .block_on(self.app.events(&Principal::system(), Some(id), q))
            .unwrap()
            .events
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }
}

/// `plinth serve` in `ns` with DHCP on `iface`, TFTP and HTTP on the namespace's addresses.
/// A server namespace and a client namespace joined by a veth pair; with `vm`, the client end
/// is bridged to a tap for a VM. Returns (srv, server iface, cli, client iface or tap).
fn network(lab: &mut Lab, prefix: &str, vm: bool) -> (Ns, String, Ns, String) {
    let srv = lab.namespace("srv").unwrap();
    let cli = lab.namespace("cli").unwrap();
    let (s, c) = lab.link(&srv, &cli).unwrap();
    lab.addr(&srv, &s, &format!("{prefix}.2/24")).unwrap();
    if vm {
        let tap = lab.tap(&cli).unwrap();
        lab.bridge(&cli, &[&c, &tap]).unwrap();
        (srv, s, cli, tap)
    } else {
        lab.addr(&cli, &c, &format!("{prefix}.50/24")).unwrap();
        (srv, s, cli, c)
    }
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn tftp_and_http_clients_get_byte_identical_files() {
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, _) = network(&mut lab, "10.81.0", false);
    let root = lab.path("root");
    let big = random_file(&root.join("plinth/big.img"), 3 * 1024 * 1024 + 123, 1);
    let block = random_file(&root.join("exact-512"), 512, 2);
    let empty = random_file(&root.join("empty"), 0, 3);
    // The real iPXE binaries, as images/build.sh puts them in place.
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        std::fs::copy(built_images().join(f), root.join(f)).unwrap();
    }
    std::fs::write(lab.dir().join("outside-secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(lab.dir().join("outside-secret"), root.join("escape")).unwrap();
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.81.0.2", &root, &[]);
    let out = lab.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let outs = out.to_str().unwrap();

    // A client in the client namespace: (succeeded, stdout and stderr).
    let run = |program: &str, args: &[&str]| {
        let o = lab
            .run_timeout(&cli, program, args, Duration::from_secs(60))
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let tftp = |mode: &str, verb: &str, name: &str, dest: &str| {
        run("tftp", &["10.81.0.2", "-m", mode, "-c", verb, name, dest])
    };
    let same = |dest: &str, data: &[u8]| std::fs::read(dest).unwrap() == data;

    // tftp-hpa, lock-step with 512-byte blocks.
    for (name, data) in [
        ("plinth/big.img", &big),
        ("exact-512", &block),
        ("empty", &empty),
    ] {
        let dest = format!("{outs}/hpa-{}", name.replace('/', "_"));
        let (ok, text) = tftp("binary", "get", name, &dest);
        assert!(ok, "tftp get {name}: {text}\n{}", server.log_text());
        assert!(same(&dest, data), "tftp-hpa: {name} differs");
    }
    // atftp with options: blksize, tsize, windowsize; and the BIOS loader as PXE firmware
    // fetches it.
    let kpxe = std::fs::read(root.join("undionly.kpxe")).unwrap();
    for (opts, name, data) in [
        ("blksize 1468,tsize 0", "plinth/big.img", &big),
        ("blksize 1468,windowsize 32,tsize 0", "plinth/big.img", &big),
        ("blksize 65464,windowsize 8", "plinth/big.img", &big),
        ("tsize 0,blksize 1468", "undionly.kpxe", &kpxe),
    ] {
        let dest = format!("{outs}/atftp");
        let mut args = Vec::new();
        for o in opts.split(',') {
            args.extend(["--option", o]);
        }
        args.extend(["-g", "-r", name, "-l", &dest, "10.81.0.2"]);
        let (ok, text) = run("atftp", &args);
        assert!(ok, "atftp {opts}: {text}\n{}", server.log_text());
        assert!(same(&dest, data), "atftp {opts}: {name} differs");
    }
    // Refused: traversal, absolute paths, a symlink out of the root, writes, netascii.
    for name in [
        "../outside-secret",
        "plinth/../../outside-secret",
        "/etc/passwd",
        "escape",
        "missing",
    ] {
        let dest = format!("{outs}/refused");
        let (_, text) = tftp("binary", "get", name, &dest);
        assert!(text.contains("Error code"), "{name}: {text}");
        let got = std::fs::read(&dest).unwrap_or_default();
        assert!(got.is_empty() || got != b"secret", "{name} leaked");
        std::fs::remove_file(&dest).ok();
    }
    let log = server.log_text();
    assert!(
        log.contains("WARN") && log.contains("outside-secret"),
        "hostile names are logged:\n{log}"
    );
    let upload = lab.path("upload");
    std::fs::write(&upload, b"x").unwrap();
    let (_, text) = tftp("binary", "put", upload.to_str().unwrap(), "new");
    assert!(text.contains("Error code 2"), "writes are refused: {text}");
    assert!(!root.join("new").exists());
    let (_, text) = tftp("ascii", "get", "exact-512", &format!("{outs}/ascii"));
    assert!(text.contains("Error code"), "netascii is refused: {text}");

    // The generated first-stage script chains to the HTTP script.
    let dest = format!("{outs}/boot.ipxe");
    let (ok, text) = tftp("binary", "get", "boot.ipxe", &dest);
    assert!(ok, "{text}");
    let script = std::fs::read_to_string(&dest).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("chain http://10.81.0.2:8080/boot/ipxe?mac=${net0/mac}"),
        "{script}"
    );

    // curl over HTTP: whole, a range, the UEFI HTTP boot binary, and a traversal.
    let big_url = "http://10.81.0.2:8080/boot/plinth/big.img";
    let dest = format!("{outs}/curl");
    let (ok, text) = run("curl", &["-sSf", "-o", &dest, big_url]);
    assert!(ok && same(&dest, &big), "{text}");
    let (ok, text) = run("curl", &["-sSf", "-r", "1000-1999", "-o", &dest, big_url]);
    assert!(ok && same(&dest, &big[1000..2000]), "{text}");
    let efi = std::fs::read(root.join("ipxe.efi")).unwrap();
    let (ok, text) = run(
        "curl",
        &["-sSf", "-o", &dest, "http://10.81.0.2:8080/boot/ipxe.efi"],
    );
    assert!(ok && same(&dest, &efi), "{text}");
    let (_, code) = run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            "http://10.81.0.2:8080/boot/../escape",
        ],
    );
    assert_eq!(code, "403");
}

/// Waits for the VM's serial console to show the ramdisk's line, and returns it.
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

enum Firmware {
    /// SeaBIOS; QEMU's iPXE ROM on an e1000.
    Bios,
    /// OVMF; QEMU's iPXE EFI ROM on a virtio-net.
    UefiIpxe,
    /// OVMF's own PXE client (no option ROM): snponly.efi by TFTP first.
    UefiPxe,
}

fn vm(lab: &mut Lab, ns: &Ns, tap: &str, mac: &str, fw: Firmware) -> Proc {
    vm_with_disk(lab, ns, tap, mac, fw, None)
}

/// With `disk`, a raw virtio disk from that file.
fn vm_with_disk(
    lab: &mut Lab,
    ns: &Ns,
    tap: &str,
    mac: &str,
    fw: Firmware,
    disk: Option<&Path>,
) -> Proc {
    assert!(
        plinth_testkit::netns::which("qemu-system-x86_64").is_some(),
        "qemu-system-x86_64 not found: the test command installs qemu-system-x86 and ipxe-qemu"
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nographic", "-m", "512", "-no-reboot"]).args([
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
    ]);
    match fw {
        Firmware::Bios => {
            qemu.args(["-machine", "pc,accel=tcg", "-boot", "n"])
                .args(["-device", &format!("e1000,netdev=n0,mac={mac}")]);
        }
        Firmware::UefiIpxe | Firmware::UefiPxe => {
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
                ]);
            let rom = if matches!(fw, Firmware::UefiPxe) {
                ",romfile="
            } else {
                ""
            };
            qemu.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1{rom}"),
            ]);
        }
    }
    if let Some(d) = disk {
        qemu.args([
            "-drive",
            &format!("file={},format=raw,if=none,id=d0", d.display()),
            "-device",
            "virtio-blk-pci,drive=d0,serial=plinth-disk-0",
        ]);
    }
    lab.spawn_named(ns, "qemu", qemu).unwrap()
}

/// A raw disk of `mib` MiB filled with 0xa5.
fn disk(lab: &Lab, name: &str, mib: usize) -> PathBuf {
    let p = lab.path(name);
    std::fs::write(&p, vec![0xa5u8; mib << 20]).unwrap();
    p
}

/// Parses `PLINTH-RAMDISK mode=inspect machine=<id> api=<url> healthz=ok`.
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// SeaBIOS + iPXE: an enrolled machine asked to inspect boots the inspection ramdisk, which
/// reaches plinth's API.
#[test]
fn a_bios_vm_boots_the_inspection_ramdisk() {
    let _vm = machine::vm();
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, tap) = network(&mut lab, "10.82.0", true);
    env.subnet24("10.82.0");
    let root = images_for(&lab);
    let mac = "52:54:00:82:00:10";
    let m = env.enroll(mac);
    let m = env.act(m.id, "inspect");
    assert_eq!(m.state, MachineState::Inspecting);
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.82.0.2", &root, &[]);
    let d = disk(&lab, "vda.raw", 24);
    let vm = vm_with_disk(&mut lab, &cli, &tap, mac, Firmware::Bios, Some(&d));
    let line = ramdisk_line(&vm, &server, Duration::from_secs(240));
    let f = fields(&line);
    assert_eq!(f["mode"], "inspect", "{line}");
    assert_eq!(f["machine"], m.id.to_string(), "{line}");
    assert_eq!(f["api"], "http://10.82.0.2:8080", "{line}");
    assert_eq!(
        f["healthz"], "ok",
        "the ramdisk reached plinth's API: {line}"
    );
    let boots = env.events(m.id, "boot");
    assert!(!boots.is_empty());
    assert_eq!(boots[0].details["message"], "booted inspection image");
    assert_eq!(boots[0].details["firmware"], "bios");
    let log = vm.log_text();
    assert!(
        !log.contains("plinth.token=plinth_"),
        "the token stays off the console"
    );
    // The agent reported what it found: the machine is ready with the VM's facts.
    assert_eq!(f["agent"], "ok", "{line}\n{log}");
    let m = env.machine_by_mac(mac).unwrap();
    assert_eq!(m.state, MachineState::Ready);
    let facts = &m.facts;
    assert_eq!(facts["firmware"], "bios");
    let mem = facts["memory_mib"].as_u64().unwrap();
    assert!((448..=512).contains(&mem), "-m 512: {mem} MiB");
    assert_eq!(facts["disks"][0]["size_bytes"], 24u64 << 20, "{facts}");
    assert_eq!(facts["disks"][0]["serial"], "plinth-disk-0");
    assert!(
        facts["nics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["mac"] == mac && n["link"] == true),
        "{facts}"
    );
    assert_eq!(
        env.events(m.id, "inspect_complete")[0].actor,
        "agent:inspect"
    );
}

/// OVMF + iPXE EFI ROM: an unknown machine is discovered by DHCP and sent to inspection.
#[test]
fn a_uefi_vm_is_discovered_and_inspected() {
    let _vm = machine::vm();
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, tap) = network(&mut lab, "10.83.0", true);
    env.subnet24("10.83.0");
    let root = images_for(&lab);
    let mac = "52:54:00:83:00:10";
    let server = plinth(&mut lab, &srv, &sif, &env.db.url, "10.83.0.2", &root, &[]);
    let vm = vm(&mut lab, &cli, &tap, mac, Firmware::UefiIpxe);
    let line = ramdisk_line(&vm, &server, Duration::from_secs(300));
    let m = env.machine_by_mac(mac).expect("the VM was discovered");
    assert_eq!(m.state, MachineState::Discovered);
    let f = fields(&line);
    assert_eq!(
        (f["mode"].as_str(), f["machine"].clone()),
        ("inspect", m.id.to_string()),
        "{line}"
    );
    assert_eq!(f["healthz"], "ok", "{line}");
    let boots = env.events(m.id, "boot");
    assert_eq!(boots[0].details["firmware"], "efi");
    // The agent's facts wait with the machine for a technician to adopt it.
    assert_eq!(f["agent"], "ok", "{line}");
    let m = env.machine_by_mac(mac).unwrap();
    assert_eq!(m.state, MachineState::Discovered);
    assert_eq!(m.facts["firmware"], "uefi");
    assert_eq!(env.events(m.id, "discovered_inspected").len(), 1);
}

/// OVMF's own PXE client: DHCP hands it snponly.efi, which it fetches by TFTP (with tsize,
/// blksize and windowsize); iPXE then asks for its script, and a machine being cleaned boots
/// the ramdisk in clean mode.
#[test]
fn uefi_firmware_pxe_fetches_snponly_by_tftp_then_cleans() {
    let _vm = machine::vm();
    let env = Env::new();
    let mut lab = Lab::new().unwrap();
    let (srv, sif, cli, tap) = network(&mut lab, "10.84.0", true);
    env.subnet24("10.84.0");
    let root = images_for(&lab);
    let mac = "52:54:00:84:00:10";
    // enrolled → inspecting → ready (a report) → allocated → released: cleaning.
    let m = env.enroll(mac);
    env.act(m.id, "inspect");
    let report: InspectionReport = serde_json::from_value(serde_json::json!({
        "cpu": { "model": "QEMU", "cores": 1, "threads": 1 },
        "memory_mib": 512,
        // The VM's one disk, as the clean report must account for it (16 MiB, below).
        "disks": [{ "name": "vda", "size_bytes": 16u64 << 20 }],
        "nics": [{ "name": "eth0", "mac": mac }],
        "system": { "vendor": "QEMU", "product": "q35", "serial": "S1", "uuid": "4c4c4544-0000-0000-0000-000000000001" },
        "firmware": "uefi",
        "arch": "x86_64"
    }))
    .unwrap();
    env.rt
        .block_on(
            env.app
                .submit_inspection(&Principal::system(), m.id, report),
        )
        .unwrap();
    let alloc = env
        .rt
        .block_on(
            env.app
                .allocate(&Principal::system(), AllocationRequest::default()),
        )
        .unwrap();
    env.rt
        .block_on(env.app.release_allocation(&Principal::system(), alloc.id))
        .unwrap();
    let server = plinth(
        &mut lab,
        &srv,
        &sif,
        &env.db.url,
        "10.84.0.2",
        &root,
        &[("PLINTH_DHCP__EFI_BINARY", "snponly.efi")],
    );
    let d = disk(&lab, "vda.raw", 16);
    let vm = vm_with_disk(&mut lab, &cli, &tap, mac, Firmware::UefiPxe, Some(&d));
    let line = ramdisk_line(&vm, &server, Duration::from_secs(300));
    let f = fields(&line);
    assert_eq!(
        (f["mode"].as_str(), f["machine"].clone()),
        ("clean", m.id.to_string()),
        "{line}"
    );
    // The agent wiped the disk's ends and reported: ready again.
    assert_eq!(f["agent"], "ok", "{line}\n{}", vm.log_text());
    let data = std::fs::read(&d).unwrap();
    assert!(data[..1 << 20].iter().all(|b| *b == 0), "first MiB zeroed");
    assert!(
        data[data.len() - (1 << 20)..].iter().all(|b| *b == 0),
        "last MiB zeroed"
    );
    assert_eq!(data[8 << 20], 0xa5, "a quick wipe leaves the middle");
    let after = env.machine_by_mac(mac).unwrap();
    assert_eq!(after.state, MachineState::Ready);
    assert_eq!(env.events(m.id, "clean_complete")[0].actor, "agent:clean");
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("snponly.efi") && l.contains("TFTP transfer complete")),
        "snponly.efi went out by TFTP:\n{log}"
    );
    assert_eq!(
        env.events(m.id, "boot")[0].details["message"],
        "booted cleaning image"
    );
}
