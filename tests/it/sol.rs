//! Serial over LAN to a real machine: a QEMU VM that boots plinth's ramdisk straight from its
//! kernel (`console=ttyS0`, a shell on the console at the end), its serial port behind
//! - OpenIPMI's `ipmi_sim` (cipher suite 3; its SOL connection joined to the VM's serial
//!   socket), with plinth's `SolSession` and `ipmitool -I lanplus sol activate` as consoles;
//! - the test kit's IPMI BMC in a virtual BMC process (`plinth-lab vbmc`, cipher suite 17), with
//!   ipmitool powering the VM on and reading its console; and a Redfish virtual BMC's console
//!   endpoint beside it.
//!
//! Each reads the kernel's own lines and types a line that the shell on the console acts on
//! (`$((6*7))` comes back as 42, which the echo of the typed text does not contain).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_bmc::ipmi::sol::SolSession;
use plinth_bmc::ipmi::{CipherSuite, IpmiConfig};
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, USER};
use plinth_testkit::netns::Lab;
use plinth_testkit::rack::{BmcProtocol, VirtualBmcSpec, plinth_lab_beside, start_virtual_bmc};
use plinth_testkit::vm::{DirectBoot, Firmware, Nic, VirtualMachine, VmSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::BIN;
use crate::support::lab::built_images;

/// TCG is slow, and another VM test may run beside.
const BOOT: Duration = Duration::from_secs(90);
/// The ramdisk's last words before its shell reads the console.
const SHELL: &str = "starting a shell on the console";

/// A BIOS VM that boots the ramdisk straight from its kernel, with no `plinth.mode`: the init
/// says so and starts its shell on the console at once.
fn ramdisk_vm(name: &str, mac: &str) -> VmSpec {
    let images = built_images();
    let mut spec = VmSpec::new(name, Firmware::Bios, Nic::E1000, mac);
    spec.direct_boot = Some(DirectBoot {
        kernel: images.join("plinth/vmlinuz"),
        initrd: images.join("plinth/initrd.img"),
        append: "console=ttyS0,115200n8 plinth.shell=1".into(),
    });
    spec
}

/// A console being read: plinth's SOL session, or ipmitool's output.
enum Console<'a> {
    Plinth(&'a mut SolSession),
    Ipmitool(&'a mut tokio::process::ChildStdout),
}

impl Console<'_> {
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Console::Plinth(sol) => sol.read().await,
            Console::Ipmitool(out) => {
                let mut buf = vec![0u8; 4096];
                let n = out.read(&mut buf).await.ok()?;
                (n > 0).then(|| buf[..n].to_vec())
            }
        }
    }

    /// Reads into `seen` until it holds every one of `needles`.
    async fn until(&mut self, seen: &mut Vec<u8>, needles: &[&str]) {
        let deadline = Instant::now() + BOOT;
        loop {
            let text = String::from_utf8_lossy(seen).into_owned();
            if needles.iter().all(|n| text.contains(n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{needles:?} not on the console within {BOOT:?}; it showed:\n{text}"
            );
            match tokio::time::timeout(Duration::from_millis(500), self.next()).await {
                Ok(Some(chunk)) => seen.extend_from_slice(&chunk),
                Ok(None) => panic!("the console ended; it showed:\n{text}"),
                Err(_) => {}
            }
        }
    }
}

fn power_on(vm: &Arc<VirtualMachine>) {
    vm.try_power_on("None").unwrap();
}

/// Runs `body` on a runtime of its own while holding the VM guard (one VM at a time).
fn with_vm<F: std::future::Future<Output = ()>>(body: F) {
    let _vm = crate::support::machine::vm();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body);
}

#[test]
fn ipmi_sim_serves_a_vms_console_to_plinth_and_ipmitool() {
    with_vm(ipmi_sim_console());
}

async fn ipmi_sim_console() {
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("sol").unwrap();
    let tap = lab.tap(&ns).unwrap();
    let vm = VirtualMachine::new(
        &ns.name,
        &tap,
        ramdisk_vm("sol-sim", "52:54:00:5e:00:01"),
        &lab.path("vm"),
    )
    .unwrap();
    let sim = IpmiSim::start_with_vm_serial(None, vm.serial_socket())
        .await
        .unwrap();

    // plinth's console first, active before the machine starts: it sees the whole boot.
    let mut sol = SolSession::activate(&IpmiConfig {
        addr: sim.addr(),
        username: USER.into(),
        password: PASSWORD.into(),
        timeout: Duration::from_millis(500),
        retries: 4,
        cipher_suite: CipherSuite::Three,
    })
    .await
    .unwrap();
    let on = vm.clone();
    let t = Instant::now();
    tokio::task::spawn_blocking(move || power_on(&on))
        .await
        .unwrap();
    let mut seen = Vec::new();
    Console::Plinth(&mut sol)
        .until(&mut seen, &["Linux version", SHELL])
        .await;
    eprintln!(
        "power on to the ramdisk's shell over SOL: {:?}",
        t.elapsed()
    );
    let line = b"echo $((6*7))-typed-over-plinth\r";
    sol.write(line).await.unwrap();
    Console::Plinth(&mut sol)
        .until(&mut seen, &["42-typed-over-plinth"])
        .await;
    // console.log has it too: QEMU logs what the guest writes while the BMC holds the socket.
    let log = vm.wait_console("42-typed-over-plinth", BOOT).unwrap();
    assert!(log.contains("Linux version"), "{log}");
    sol.close().await.unwrap();

    // ipmitool next, on the same console: the kernel's lines from its ring buffer, and what
    // it types acted on.
    let mut tool = tokio::process::Command::from(sim.ipmitool_command(&["sol", "activate"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tool.stdout.take().unwrap();
    let mut stdin = tool.stdin.take().unwrap();
    let mut seen = Vec::new();
    // (What is typed waits in the pipe until ipmitool's SOL is up and it reads; its own
    // "SOL Session operational" line waits in its stdout buffer until the console prints.)
    // "Linux.version" typed, "Linux version" printed: the kernel's own line.
    stdin
        .write_all(b"dmesg | grep -m1 Linux.version; echo $((6*7))-typed-in-ipmitool\r")
        .await
        .unwrap();
    Console::Ipmitool(&mut out)
        .until(&mut seen, &["] Linux version", "42-typed-in-ipmitool"])
        .await;
    stdin.write_all(b"\r~.").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), tool.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let off = vm.clone();
    tokio::task::spawn_blocking(move || off.try_power_off())
        .await
        .unwrap()
        .unwrap();
}

/// `ipmitool -I lanplus -C 17 ...` run in `ns` against `addr` (`127.0.0.1:PORT`).
fn ipmitool_in(ns: &str, addr: &str, args: &[&str]) -> tokio::process::Command {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut c = tokio::process::Command::new("ip");
    c.args([
        "netns", "exec", ns, "ipmitool", "-I", "lanplus", "-H", host, "-p", port,
    ])
    .args(["-U", "admin", "-E", "-C", "17", "-N", "1", "-R", "3"])
    .args(args)
    .env("IPMI_PASSWORD", "sol-pa55")
    .kill_on_drop(true);
    c
}

async fn ipmitool_ok(ns: &str, addr: &str, args: &[&str]) -> String {
    let out = ipmitool_in(ns, addr, args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ipmitool {args:?}: {text}");
    text
}

#[test]
fn virtual_bmcs_serve_their_vms_console() {
    with_vm(vbmc_consoles());
}

async fn vbmc_consoles() {
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let rack = lab.namespace("rack").unwrap();
    let taps = [lab.tap(&rack).unwrap(), lab.tap(&rack).unwrap()];
    let exe = plinth_lab_beside(Path::new(BIN));
    let spec = |name: &str, mac: &str, protocol, tap: &str, lab: &Lab| VirtualBmcSpec {
        vm: ramdisk_vm(name, mac),
        protocol,
        username: "admin".into(),
        password: "sol-pa55".into(),
        ns: rack.name.clone(),
        tap: tap.into(),
        dir: lab.path(name),
        listen: None,
    };
    let s = spec(
        "sol-ipmi",
        "52:54:00:5e:00:02",
        BmcProtocol::Ipmi,
        &taps[0],
        &lab,
    );
    let ipmi = start_virtual_bmc(&mut lab, &srv, &exe, &s).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ipmi.sol_address.as_deref(), Some(ipmi.address.as_str()));
    let s = spec(
        "sol-redfish",
        "52:54:00:5e:00:03",
        BmcProtocol::Redfish,
        &taps[1],
        &lab,
    );
    let redfish = start_virtual_bmc(&mut lab, &srv, &exe, &s).unwrap_or_else(|e| panic!("{e:#}"));
    // A Redfish BMC's console is an IPMI endpoint beside it, with the same user.
    let sol = redfish
        .sol_address
        .clone()
        .expect("a Redfish vbmc serves SOL");
    assert!(
        redfish.address.starts_with("http://"),
        "{}",
        redfish.address
    );
    let info = ipmitool_ok(&srv.name, &sol, &["sol", "info", "1"]).await;
    assert!(
        info.contains("Enabled                         : true"),
        "{info}"
    );

    // The IPMI one: ipmitool powers the VM on and reads its console.
    let addr = ipmi.address.clone();
    let mut tool = ipmitool_in(&srv.name, &addr, &["sol", "activate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tool.stdout.take().unwrap();
    let mut stdin = tool.stdin.take().unwrap();
    let mut seen = Vec::new();
    // Active before the machine starts (Get Payload Activation Status: instance 1 active), so
    // that the console shows the whole boot.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ipmitool_ok(&srv.name, &addr, &["raw", "0x06", "0x4a", "0x01"])
        .await
        .contains("01 01 00")
    {
        assert!(Instant::now() < deadline, "ipmitool's SOL did not activate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ipmitool_ok(&srv.name, &addr, &["chassis", "power", "on"]).await;
    Console::Ipmitool(&mut out)
        .until(&mut seen, &["Linux version", SHELL])
        .await;
    stdin
        .write_all(b"echo $((6*7))-typed-through-the-vbmc\r")
        .await
        .unwrap();
    Console::Ipmitool(&mut out)
        .until(&mut seen, &["42-typed-through-the-vbmc"])
        .await;
    let log = std::fs::read_to_string(ipmi.dir.join("console.log")).unwrap();
    assert!(log.contains("42-typed-through-the-vbmc"), "{log}");
    stdin.write_all(b"\r~.").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), tool.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    ipmitool_ok(&srv.name, &addr, &["chassis", "power", "off"]).await;
}
