//! The test disk images that images/build-disks.sh makes (ROOT/disks/test-disk-{bios,uefi}.raw.zst),
//! booted in QEMU (TCG) the way a deployed machine boots: from its first disk, with a NoCloud
//! seed (a FAT file system labelled CIDATA holding meta-data and user-data) on the second. The
//! image's /init (images/disk/init) prints `PLINTH-DEPLOYED hostname=<local-hostname>`, calls
//! back when user-data has a `plinth_callback:` URL, and powers the VM off.
//!
//! The images root is built once per test run by images/build.sh (tests/it/support/lab.rs), which
//! calls images/build-disks.sh.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_testkit::dhcp_clients;
use plinth_testkit::netns::{Lab, Ns, which};
use plinth_testkit::vm::{Firmware, Nic, VirtualMachine, VmSpec};

use crate::support::lab::built_images;
use crate::support::machine;

const MIB: u64 = 1 << 20;
/// Size of the seed disk.
const SEED_MIB: u64 = 8;
/// From power-on to the PLINTH-DEPLOYED line (about 8 s for BIOS, 11 s for UEFI under TCG).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// From the last line waited for to QEMU's exit after `poweroff -f`.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// A tiny HTTP server: appends "PATH BODY" of every POST to FILE, answers "thanks".
const CALLBACK_SERVER: &str = r#"
import http.server, sys
out, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(out, "ab") as f:
            f.write(self.path.encode() + b" " + body + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"thanks\n")
server = http.server.HTTPServer((addr, port), Handler)
print("listening", flush=True)
server.serve_forever()
"#;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| panic!("{name} not found (images/build-disks.sh installs it)"))
}

fn disks_dir() -> PathBuf {
    built_images().join("disks")
}

/// The uncompressed size of `test-disk-KIND.raw`, from its `.raw.size` file.
fn raw_size(kind: &str) -> u64 {
    let path = disks_dir().join(format!("test-disk-{kind}.raw.size"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim().parse().unwrap()
}

/// The VM's disks, written into `dir` before [`VirtualMachine::new`] (which keeps existing
/// files): `disk0.raw` the image, `disk1.raw` a CIDATA seed when `seed` is given as
/// (meta-data, user-data). Returns their sizes in MiB, for [`VmSpec::disks`].
fn write_disks(dir: &Path, kind: &str, seed: Option<(&str, &str)>) -> Vec<u64> {
    fs::create_dir_all(dir).unwrap();
    let zst = disks_dir().join(format!("test-disk-{kind}.raw.zst"));
    let disk0 = dir.join("disk0.raw");
    run(Command::new(tool("zstd"))
        .args(["-d", "-q", "-f", "-o"])
        .arg(&disk0)
        .arg(&zst));
    let size = raw_size(kind);
    assert_eq!(
        fs::metadata(&disk0).unwrap().len(),
        size,
        "{}",
        zst.display()
    );
    assert_eq!(size % MIB, 0, "the image is a whole number of MiB");
    let mut sizes = vec![size / MIB];
    if let Some((meta_data, user_data)) = seed {
        let files = dir.join("seed");
        fs::create_dir_all(&files).unwrap();
        fs::write(files.join("meta-data"), meta_data).unwrap();
        fs::write(files.join("user-data"), user_data).unwrap();
        let disk1 = dir.join("disk1.raw");
        fs::File::create(&disk1)
            .unwrap()
            .set_len(SEED_MIB * MIB)
            .unwrap();
        run(Command::new(tool("mkfs.vfat"))
            .args(["-n", "CIDATA"])
            .arg(&disk1));
        run(Command::new(tool("mcopy"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&disk1)
            .arg(files.join("meta-data"))
            .arg(files.join("user-data"))
            .arg("::"));
        sizes.push(SEED_MIB);
    }
    sizes
}

fn meta_data(hostname: &str) -> String {
    format!("instance-id: iid-{hostname}\nlocal-hostname: {hostname}\n")
}

/// Creates the VM on `tap` in `ns` with the image of `kind` and the seed, and powers it on
/// from its disk. Returns it and when it was powered on.
fn boot(
    lab: &Lab,
    ns: &Ns,
    tap: &str,
    spec: VmSpec,
    kind: &str,
    seed: Option<(&str, &str)>,
) -> (Arc<VirtualMachine>, Instant) {
    let dir = lab.path(&spec.name);
    let mut spec = spec;
    spec.disks = write_disks(&dir, kind, seed);
    let vm = VirtualMachine::new(&ns.name, tap, spec, &dir).unwrap_or_else(|e| panic!("{e:#}"));
    let powered_on = Instant::now();
    vm.try_power_on("Hdd").unwrap_or_else(|e| panic!("{e:#}"));
    (vm, powered_on)
}

/// Waits for a console line that is exactly `line`; prints how long it took since `since`.
fn wait_line(vm: &VirtualMachine, line: &str, since: Instant) {
    let console = vm
        .wait_console(line, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let took = since.elapsed();
    assert!(
        console.lines().any(|l| l.trim_end() == line),
        "{line:?} is not a line of its own:\n{console}"
    );
    eprintln!("vm {}: {line:?} after {took:.1?}", vm.spec().name);
}

/// The guest powers itself off: QEMU exits.
fn wait_poweroff(vm: &VirtualMachine) {
    let deadline = Instant::now() + POWEROFF_TIMEOUT;
    while vm.qemu_pid().is_some() {
        assert!(
            Instant::now() < deadline,
            "vm {} still runs {POWEROFF_TIMEOUT:?} after its last line:\n{}",
            vm.spec().name,
            vm.boot_console()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Boots the image of `kind` on `firmware` with a seed naming `hostname`, no callback.
fn deploys(kind: &str, firmware: Firmware, nic: Nic, mac: &str, hostname: &str) {
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("disk").unwrap();
    let tap = lab.tap(&ns).unwrap();
    let user_data = "#cloud-config\n";
    let (vm, started) = boot(
        &lab,
        &ns,
        &tap,
        VmSpec::new(&format!("disk-{kind}"), firmware, nic, mac),
        kind,
        Some((&meta_data(hostname), user_data)),
    );
    wait_line(
        &vm,
        &format!("PLINTH-DEPLOYED hostname={hostname}"),
        started,
    );
    wait_poweroff(&vm);
    assert!(
        !vm.boot_console().contains("PLINTH-CALLBACK"),
        "no callback without plinth_callback:\n{}",
        vm.boot_console()
    );
}

#[test]
fn images_come_with_checksums_and_sizes() {
    let dir = disks_dir();
    for kind in ["bios", "uefi"] {
        let name = format!("test-disk-{kind}.raw.zst");
        run(Command::new("sha256sum")
            .args(["-c", "--quiet", &format!("{name}.sha256")])
            .current_dir(&dir));
        let size = raw_size(kind);
        assert!(
            size > 0 && size <= 64 * MIB,
            "{name}: raw size {size} bytes"
        );
    }
}

#[test]
fn bios_image_boots_from_disk_and_reads_its_seed() {
    let _vm = machine::vm();
    deploys(
        "bios",
        Firmware::Bios,
        Nic::E1000,
        "52:54:00:d1:00:01",
        "node-bios-1",
    );
}

#[test]
fn uefi_image_boots_from_disk_and_reads_its_seed() {
    let _vm = machine::vm();
    deploys(
        "uefi",
        Firmware::Uefi,
        Nic::VirtioNet,
        "52:54:00:d1:00:02",
        "node-uefi-2",
    );
}

#[test]
fn without_a_seed_the_image_says_so() {
    let _vm = machine::vm();
    let mut lab = Lab::new().unwrap();
    let ns = lab.namespace("disk").unwrap();
    let tap = lab.tap(&ns).unwrap();
    let (vm, started) = boot(
        &lab,
        &ns,
        &tap,
        VmSpec::new(
            "disk-noseed",
            Firmware::Bios,
            Nic::E1000,
            "52:54:00:d1:00:03",
        ),
        "bios",
        None,
    );
    wait_line(&vm, "PLINTH-DEPLOYED hostname=none seed=missing", started);
    wait_poweroff(&vm);
}

/// user-data with `plinth_callback:`: the image gets an address from dnsmasq and POSTs its
/// hostname to an HTTP server on the VM's network.
#[test]
fn the_deployed_image_calls_back() {
    let _vm = machine::vm();
    let hostname = "node-cb-4";
    let mac = "52:54:00:d1:00:04";
    let mut lab = Lab::new().unwrap();
    let srv = lab.namespace("srv").unwrap();
    let net = lab.namespace("net").unwrap();
    let (srv_if, net_if) = lab.link(&srv, &net).unwrap();
    let tap = lab.tap(&net).unwrap();
    lab.bridge(&net, &[&net_if, &tap]).unwrap();
    lab.addr(&srv, &srv_if, "10.81.0.1/24").unwrap();
    let dnsmasq = dhcp_clients::dnsmasq(
        &mut lab,
        &srv,
        &srv_if,
        Ipv4Addr::new(10, 81, 0, 100),
        Ipv4Addr::new(10, 81, 0, 149),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let received = lab.path("callbacks");
    let mut cmd = Command::new(tool("python3"));
    cmd.args(["-c", CALLBACK_SERVER])
        .arg(&received)
        .args(["10.81.0.1", "8080"]);
    let http = lab.spawn_named(&srv, "http", cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http.log_text().contains("listening") {
        assert!(
            http.is_running() && Instant::now() < deadline,
            "the HTTP server did not start:\n{}",
            http.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let user_data = "#cloud-config\nplinth_callback: http://10.81.0.1:8080/callback\n";
    let (vm, started) = boot(
        &lab,
        &net,
        &tap,
        VmSpec::new("disk-callback", Firmware::Bios, Nic::VirtioNet, mac),
        "bios",
        Some((&meta_data(hostname), user_data)),
    );
    wait_line(
        &vm,
        &format!("PLINTH-DEPLOYED hostname={hostname}"),
        started,
    );
    let fail = || {
        format!(
            "console:\n{}\n--- dnsmasq:\n{}\n--- http:\n{}",
            vm.boot_console(),
            dnsmasq.log_text(),
            http.log_text()
        )
    };
    let console = vm
        .wait_console("PLINTH-CALLBACK ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", fail()));
    assert!(
        console
            .lines()
            .any(|l| l.trim_end() == "PLINTH-CALLBACK ok"),
        "{}",
        fail()
    );
    eprintln!(
        "vm disk-callback: PLINTH-CALLBACK ok after {:.1?}",
        started.elapsed()
    );
    let got = fs::read_to_string(&received).unwrap_or_default();
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        [format!("/callback hostname={hostname}")],
        "{}",
        fail()
    );
    let leases = dhcp_clients::dnsmasq_leases(&dnsmasq);
    assert!(
        leases
            .iter()
            .any(|l| l.mac == mac && l.hostname.as_deref() == Some(hostname)),
        "the image asked for its address under its hostname: {leases:?}"
    );
    wait_poweroff(&vm);
}
