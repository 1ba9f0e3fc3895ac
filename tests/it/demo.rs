//! The README's demo (`scripts/run.sh` runs `plinth-lab demo`): plinth with its embedded
//! database, three VMs behind virtual BMCs (two Redfish, one IPMI), enrolled into a rack and
//! inspected through the CLI until ready; plinth's API reachable from this machine; Ctrl-C
//! removes the namespaces, the processes and the lab's files. Bad input fails before anything
//! is created.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_testkit::rack::plinth_lab_beside;

use crate::support::BIN;
use crate::support::lab::built_images;
use crate::support::machine;

fn plinth_lab() -> PathBuf {
    plinth_lab_beside(Path::new(BIN))
}

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The demo process; interrupted (as by Ctrl-C) and waited for when dropped, so that a failing
/// test still removes what the demo made.
struct Demo {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("demo.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(plinth_lab())
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Demo {
            child,
            log,
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap()).into_owned()
    }

    /// The text after `key` up to the next blank (from the first line holding it).
    fn value(&self, key: &str) -> String {
        let text = self.text();
        let rest = text
            .split_once(key)
            .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
            .1;
        rest.split_whitespace().next().unwrap().to_owned()
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.text().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the demo exited ({status}):\n{}", self.text());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn interrupt(&self) {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
            if self.wait_exit(Duration::from_secs(60)).is_none() {
                self.child.kill().ok();
                self.child.wait().ok();
            }
        }
    }
}

fn cli(addr: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("PLINTH_API_URL", format!("http://{addr}"))
        .env("PLINTH_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plinth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Pids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

#[test]
fn the_demo_inspects_a_virtual_rack_and_ctrl_c_removes_it() {
    // Several VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    let images = built_images();
    let addr = free_addr();
    let mut demo = Demo::start(&[
        "--images",
        images.to_str().unwrap(),
        "--plinth",
        BIN,
        "--listen",
        &addr,
    ]);
    demo.wait_for("machines are ready", Duration::from_secs(900));
    let text = demo.text();
    assert!(text.contains("all 3 machines are ready"), "{text}");
    // The watch printed the lifecycle as plinth recorded it.
    for name in ["node-01", "node-02", "node-03"] {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains("inspecting → ready")),
            "{name}:\n{text}"
        );
    }
    let token = demo.value("PLINTH_TOKEN=");
    let lab_dir = demo.value("lab directory ");
    let namespaces = [demo.value("namespaces "), demo.value(") and ")];
    for ns in &namespaces {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns}");
    }

    // The API is here, on this machine, and says what the VMs are made of.
    let list: serde_json::Value = serde_json::from_str(&cli(
        &addr,
        &token,
        &["machine", "list", "--rack", "demo-r1", "-o", "json"],
    ))
    .unwrap();
    let mut machines = list["machines"].as_array().unwrap().clone();
    machines.sort_by_key(|m| m["hostname"].as_str().unwrap().to_owned());
    let want = [
        ("node-01", 10, "bios", 512, vec![64]),
        ("node-02", 12, "uefi", 768, vec![32, 48]),
        ("node-03", 15, "uefi", 640, vec![96]),
    ];
    assert_eq!(machines.len(), 3, "{list}");
    for (m, (name, unit, firmware, mem, disks)) in machines.iter().zip(want) {
        assert_eq!(m["hostname"], name);
        assert_eq!(m["state"], "ready", "{m}");
        assert_eq!(m["rack_unit"], unit);
        let f = &m["facts"];
        assert_eq!(f["firmware"], firmware, "{m}");
        let got = f["memory_mib"].as_u64().unwrap();
        assert!(
            (mem - 96..=mem).contains(&got),
            "{name}: {got} MiB of {mem}"
        );
        let sizes: Vec<u64> = f["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["size_bytes"].as_u64().unwrap() >> 20)
            .collect();
        assert_eq!(sizes, disks, "{name}");
        assert_eq!(m["bmc"]["reachable"], true, "{m}");
    }
    // The web UI is there too, with the user the demo printed.
    let ui_password = demo.value("password ").trim_end_matches(')').to_owned();
    assert!(ui_password.starts_with("demo-"), "{ui_password}");
    let login = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{addr}/login"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&login.stdout), "200");
    let rack = cli(&addr, &token, &["rack", "show", "demo-r1"]);
    assert!(rack.contains("node-02"), "{rack}");
    assert!(!processes_mentioning(&lab_dir).is_empty());

    // Ctrl-C: everything goes.
    demo.interrupt();
    let status = demo
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the demo did not stop on SIGINT:\n{}", demo.text()));
    let text = demo.text();
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.trim_end().ends_with("bye"), "{text}");
    for ns in &namespaces {
        assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} left");
    }
    assert!(!Path::new(&lab_dir).exists(), "{lab_dir} left");
    let left = processes_mentioning(&lab_dir);
    assert!(left.is_empty(), "{left:?}");
    TcpListener::bind(&addr).expect("the API address is free again");
}

#[test]
fn the_demo_refuses_bad_input_before_it_creates_anything() {
    let empty = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(&["--images", empty.path().to_str().unwrap(), "--plinth", BIN]);
    let status = demo.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    let text = demo.text();
    assert!(
        text.contains("has no undionly.kpxe: fill it with images/build.sh"),
        "{text}"
    );
    assert!(!text.contains("lab directory"), "no lab made:\n{text}");

    // The API address is taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut demo = Demo::start(&[
        "--images",
        built_images().to_str().unwrap(),
        "--plinth",
        BIN,
        "--listen",
        &addr,
    ]);
    let status = demo.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    let text = demo.text();
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
    assert!(!text.contains("lab directory"), "no lab made:\n{text}");
}
