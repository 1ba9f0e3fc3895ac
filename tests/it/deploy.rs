//! OS deployment on the virtual rack: a BIOS VM (Redfish) and a UEFI VM (IPMI) go from
//! enrolled through inspection and allocation to `deployed` with the test disk images of
//! images/build-disks.sh, and boot them from their disks (the image's init prints
//! `PLINTH-DEPLOYED hostname=<h>` from the cloud-init seed the agent wrote). Release wipes them
//! back to `ready`. An image whose file changed after it was registered ends in
//! `deploy_failed` with the checksum named, and the machine can be released.
//!
//! Everything is asserted on plinth's API, the VMs' consoles and their disk files, read with
//! util-linux's sfdisk and blkid and with mtools.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_testkit::netns::Lab;
use plinth_testkit::rack::{BmcProtocol, rack_network};
use plinth_testkit::vm::{Firmware, Nic};
use plinth_types::MachineState;
use plinth_types::api::DeployRequest;

use crate::support::env::Env;
use crate::support::lab::{images_for, plinth};
use crate::support::machine;
use crate::support::rack::*;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (util-linux, mtools)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A disk's partitions as sfdisk reads them: (start, size) in bytes, and the GPT name or MBR
/// type.
fn partitions(disk: &Path) -> Vec<(u64, u64, String)> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new(); // no partition table
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
                p["name"]
                    .as_str()
                    .or(p["type"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// A file of the FAT file system at `offset` of `disk` (mtools).
fn seed_file(disk: &Path, offset: u64, name: &str) -> String {
    run(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{offset}", disk.display()))
        .arg(format!("::{name}")))
}

/// What blkid finds at `offset` of `disk`: `LABEL=...`, `TYPE=...` lines, or nothing.
fn probe(disk: &Path, offset: u64) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "--offset", &offset.to_string()])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn zstd_decoded(path: &Path) -> Vec<u8> {
    let out = Command::new("zstd")
        .args(["-q", "-d", "-c"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn bios_and_uefi_vms_are_deployed_booted_from_disk_and_released() {
    // Several VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    let (mut env, key) = keyed_env("10.89.0");
    let mut lab = Lab::new().unwrap();
    let vms = [
        VmDef {
            name: "dbios".into(),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Bios,
            nic: Nic::E1000,
            mac: "52:54:00:89:00:01".into(),
            memory_mib: 512,
            disks: &[64],
            nvme_disks: &[],
            sata_disks: &[],
        },
        VmDef {
            name: "duefi".into(),
            protocol: BmcProtocol::Ipmi,
            firmware: Firmware::Uefi,
            nic: Nic::VirtioNet,
            mac: "52:54:00:89:00:02".into(),
            memory_mib: 768,
            disks: &[64],
            nvme_disks: &[],
            sata_disks: &[],
        },
    ];
    let net = rack_network(&mut lab, "10.89.0", vms.len()).unwrap();
    let (srv, s, cli, taps) = (net.srv, net.srv_iface, net.rack, net.taps);
    let root = images_for(&lab);
    with_images(&mut env, &root);
    // An image whose file will change after it is registered (same size, one byte).
    let bad = root.join("disks/changed.raw");
    run(Command::new("zstd")
        .args(["-q", "-d", "-f", "-o"])
        .arg(&bad)
        .arg(root.join("disks/test-disk-bios.raw.zst")));
    let bmcs = vbmcs(&mut lab, &srv, &cli, &taps, &vms);
    let server = plinth(
        &mut lab,
        &srv,
        &s,
        &env.db.url,
        "10.89.0.2",
        &root,
        &lifecycle_settings(&key),
    );
    let dirs: Vec<&Path> = bmcs.iter().map(|b| b.dir.as_path()).collect();
    let disks: Vec<_> = bmcs.iter().map(|b| b.dir.join("disk0.raw")).collect();
    for d in &disks {
        fill(d);
    }

    let a = enroll(&env, &vms[0], &bmcs[0].address, PASSWORD);
    let b = enroll(&env, &vms[1], &bmcs[1].address, PASSWORD);
    for id in [a, b] {
        act(&env, id, plinth_types::Verb::Inspect);
    }
    let long = Duration::from_secs(900);
    wait_state(&env, &[a, b], MachineState::Ready, long, &server, &dirs);

    let bios = register(&env, "test-bios", "disks/test-disk-bios.raw.zst", "bios");
    let uefi = register(&env, "test-uefi", "disks/test-disk-uefi.raw.zst", "uefi");
    let changed = register(&env, "changed", "disks/changed.raw", "both");
    for img in [&bios, &uefi, &changed] {
        assert!(img.raw_size.is_some(), "{img:?}");
    }

    // allocate → deploy, each with the image of its firmware.
    let (alloc, got) = allocate(&env, 2);
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(got, want);
    let user_data = |h: &str| format!("#cloud-config\n# plinth deploy test\nfqdn: {h}.example\n");
    let reqs = [
        (a, &bios, "web-bios-01", None),
        (
            b,
            &uefi,
            "web-uefi-02",
            Some("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_owned()),
        ),
    ];
    for (id, img, host, net) in &reqs {
        deploy(
            &env,
            *id,
            DeployRequest {
                image: img.name.clone(),
                hostname: Some((*host).into()),
                user_data: Some(user_data(host)),
                ssh_authorized_keys: Some(vec![
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcF7uK0Tn0ZA6vJ6pQVgKwd+3V8V8VdKCu2U5uB2Q6f test@plinth".into(),
                ]),
                network_config: net.clone(),
                ..Default::default()
            },
        );
    }
    wait_state(&env, &[a, b], MachineState::Deployed, long, &server, &dirs);

    // plinth made each disk boot first and power-cycled the VM: the image's own init finds the
    // seed and prints the hostname plinth gave it.
    let t0 = Instant::now();
    for ((_, img, host, net), (dir, disk)) in reqs.iter().zip(dirs.iter().zip(&disks)) {
        until_console(
            dir,
            &format!("PLINTH-DEPLOYED hostname={host}"),
            t0,
            Duration::from_secs(600),
        );
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
        assert!(
            console.contains("plinth-agent: verified: /dev/vda holds sha256"),
            "the agent read the disk back:\n{console}"
        );
        // The disk: the image (its partitions byte for byte: the tables gained the seed
        // partition), then the seed partition with the NoCloud files.
        let raw = img.raw_size.unwrap();
        let image = zstd_decoded(&root.join(&img.path));
        let on_disk = std::fs::read(disk).unwrap();
        assert!(
            on_disk[MIB..raw as usize - MIB] == image[MIB..raw as usize - MIB],
            "the image's partitions"
        );
        let parts = partitions(disk);
        let (start, size, name) = parts.last().unwrap().clone();
        assert!(start >= raw, "the seed comes after the image: {parts:?}");
        assert!(name == "cidata" || name == "c", "{parts:?}");
        assert!(start + size <= 64 << 20);
        assert!(
            probe(disk, start).contains("LABEL=cidata"),
            "{}",
            probe(disk, start)
        );
        let meta = seed_file(disk, start, "meta-data");
        assert!(
            meta.contains(&format!("local-hostname: \"{host}\"")),
            "{meta}"
        );
        assert!(meta.contains("ssh-ed25519 AAAAC3"), "{meta}");
        assert_eq!(seed_file(disk, start, "user-data"), user_data(host));
        match net {
            Some(n) => assert_eq!(&seed_file(disk, start, "network-config"), n),
            None => {
                let out = Command::new("mtype")
                    .arg("-i")
                    .arg(format!("{}@@{start}", disk.display()))
                    .arg("::network-config")
                    .output()
                    .unwrap();
                assert!(
                    !out.status.success(),
                    "no network-config when none is given"
                );
            }
        }
    }
    for id in [a, b] {
        let ev = events(&env, id);
        assert!(ev.iter().any(|e| e.kind == "deploy_progress"), "{ev:?}");
        assert!(ev.iter().any(|e| e.kind == "deploy_complete"), "{ev:?}");
    }

    // release → cleaning: the agent wipes the disk's ends and the seed → ready; the deployment,
    // user data and keys are gone.
    let seeds: Vec<u64> = disks
        .iter()
        .map(|d| partitions(d).last().unwrap().0)
        .collect();
    release(&env, alloc);
    wait_state(&env, &[a, b], MachineState::Ready, long, &server, &dirs);
    for (disk, seed) in disks.iter().zip(&seeds) {
        let data = std::fs::read(disk).unwrap();
        assert!(
            data[..MIB].iter().all(|b| *b == 0),
            "the disk's start is zeroed"
        );
        assert!(
            data[*seed as usize..*seed as usize + MIB]
                .iter()
                .all(|b| *b == 0),
            "the seed is wiped"
        );
        assert!(partitions(disk).is_empty(), "no partition table left");
        assert_eq!(probe(disk, *seed), "", "nothing to find where the seed was");
    }
    for id in [a, b] {
        let d = env.rt.block_on(env.app.deployment(&admin(), id)).unwrap();
        assert!(d.is_none(), "{d:?}");
    }

    // The changed file: the agent writes it, the checksum does not match → deploy_failed,
    // with both checksums named; the machine can be released.
    let mut data = std::fs::read(&bad).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&bad, &data).unwrap();
    let (alloc, c) = allocate(&env, 1);
    let c = c[0];
    deploy(
        &env,
        c,
        DeployRequest {
            image: "changed".into(),
            ..Default::default()
        },
    );
    wait_state(&env, &[c], MachineState::DeployFailed, long, &server, &dirs);
    let m = machine(&env, c);
    let reason = m.state_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("sha256 mismatch") && reason.contains(&changed.sha256),
        "{reason}"
    );
    release(&env, alloc);
    wait_state(&env, &[c], MachineState::Ready, long, &server, &dirs);
}

/// Seconds from `t0` until each machine is `deployed` (polled every 250 ms).
fn deployed_after(env: &Env, ids: &[uuid::Uuid], t0: Instant, timeout: Duration) -> Vec<f64> {
    let mut each = vec![0.0; ids.len()];
    let mut left: Vec<usize> = (0..ids.len()).collect();
    while !left.is_empty() {
        left.retain(|&i| match machine(env, ids[i]).state {
            MachineState::Deployed => {
                each[i] = t0.elapsed().as_secs_f64();
                false
            }
            MachineState::Deploying => true,
            other => panic!(
                "{} is {other}: {:?}",
                ids[i],
                machine(env, ids[i]).state_reason
            ),
        });
        assert!(t0.elapsed() < timeout, "{} VMs not deployed", left.len());
        std::thread::sleep(Duration::from_millis(250));
    }
    each
}

/// The agent's own figure from the console of its last deploy: (bytes, seconds).
fn agent_write(dir: &Path) -> (f64, f64) {
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains("plinth-agent: wrote "))
        .unwrap_or_else(|| panic!("no write figure in {}", dir.display()));
    // "plinth-agent: wrote N bytes to /dev/vda in X s (...)"
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "wrote").unwrap();
    let bytes: f64 = words[at + 1].parse().unwrap();
    let secs: f64 = words[at + 6].parse().unwrap();
    (bytes, secs)
}

/// The benchmark of docs/benchmarks.md (scripts/bench-deploy.sh). A 256 MiB disk image of
/// real binaries (one MBR partition, /usr/bin's files), raw, gzip and zstd:
/// - the agent's write throughput in a VM for each, against busybox `wget | [gunzip |] dd` of
///   the same file from the same plinth HTTP server in a VM of the same spec (booted into the
///   ramdisk with a shell on its serial console);
/// - seconds from `deploy` to `deployed`, one VM alone and four at once.
#[test]
#[ignore = "benchmark: run by scripts/bench-deploy.sh"]
fn bench_deploy() {
    // Several VMs at once: no other VM test beside this one (support::machine).
    let _machine = machine::whole_machine();
    use plinth_testkit::vm::{BootOrder, VirtualMachine, VmSpec};
    use std::io::Write;
    const N: usize = 4;
    let (mut env, key) = keyed_env("10.90.0");
    let mut lab = Lab::new().unwrap();
    let net = rack_network(&mut lab, "10.90.0", N + 1).unwrap();
    let (srv, s, cli, taps) = (net.srv, net.srv_iface, net.rack, net.taps);
    let root = images_for(&lab);
    with_images(&mut env, &root);

    // The image: an MBR with one partition holding /usr/bin's binaries, 256 MiB.
    let size: u64 = 256 << 20;
    let img = root.join("disks/bench.raw");
    {
        let mut f = std::fs::File::create(&img).unwrap();
        let mut left = size - MIB as u64;
        f.write_all(&vec![0u8; MIB]).unwrap();
        let mut names: Vec<_> = std::fs::read_dir("/usr/bin")
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in names.iter().cycle() {
            let Ok(data) = std::fs::read(p) else { continue };
            let n = (data.len() as u64).min(left) as usize;
            f.write_all(&data[..n]).unwrap();
            left -= n as u64;
            if left == 0 {
                break;
            }
        }
    }
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    run(Command::new("gzip").args(["-k", "-f"]).arg(&img));
    run(Command::new("zstd").args(["-q", "-f", "-T0"]).arg(&img));

    let defs: Vec<VmDef> = (0..N)
        .map(|i| VmDef {
            name: format!("vm{i}"),
            protocol: BmcProtocol::Redfish,
            firmware: Firmware::Bios,
            nic: Nic::E1000,
            mac: format!("52:54:00:90:00:{:02x}", i + 1),
            memory_mib: 512,
            disks: &[320],
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
        "10.90.0.2",
        &root,
        &[
            ("PLINTH_BMC__SECRET_KEY", &key),
            ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
            ("PLINTH_LOG__LEVEL", "info"),
        ],
    );
    // The peer: a VM of the same spec on its own tap, booted straight into plinth's ramdisk
    // with a shell on the console; busybox wget | [gunzip |] dd of the same files.
    let mut spec = VmSpec::new("peer", Firmware::Bios, Nic::E1000, "52:54:00:90:00:99");
    spec.memory_mib = 512;
    spec.disks = vec![320];
    let vm = VirtualMachine::new(&cli.name, &taps[N], spec, &lab.path("peer")).unwrap();
    let console = lab.path("peer/peer-console.log");
    let mut args = vm.qemu_args(BootOrder::DiskFirst);
    args.extend(
        [
            "-kernel",
            &root.join("plinth/vmlinuz").display().to_string(),
            "-initrd",
            &root.join("plinth/initrd.img").display().to_string(),
            "-append",
            "console=ttyS0,115200n8 plinth.mode=inspect plinth.api=http://10.90.0.2:8080 \
             plinth.machine=peer plinth.token=none plinth.api_timeout=1 plinth.shell=1",
        ]
        .map(str::to_owned),
    );
    let mut qemu = Command::new("ip")
        .args(["netns", "exec", &cli.name, "qemu-system-x86_64"])
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let wait = |needle: &str| {
        loop {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "no {needle:?} on the peer's console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("starting a shell on the console");
    std::thread::sleep(Duration::from_secs(2));
    let mut stdin = qemu.stdin.take().unwrap();
    let url = "http://10.90.0.2:8080/boot/disks/bench.raw";
    let mut peer = Vec::new();
    for (tag, pipe) in [
        ("RAW", format!("wget -q -O - {url}")),
        ("GZ", format!("wget -q -O - {url}.gz | gunzip")),
    ] {
        writeln!(
            stdin,
            "read a x </proc/uptime; {pipe} | dd of=/dev/vda bs=1M conv=fsync 2>/dev/null; \
             read b x </proc/uptime; echo \"PEER\" \"{tag}=$a:$b\""
        )
        .unwrap();
        stdin.flush().unwrap();
        // (the console echoes the command too: the result line is the one with numbers)
        let prefix = format!("PEER {tag}=");
        let result = |text: &str| {
            text.lines().rev().find_map(|l| {
                let (a, b) = l.trim().strip_prefix(&prefix)?.split_once(':')?;
                Some((a.parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?))
            })
        };
        let w = loop {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if let Some(w) = result(&text) {
                break w;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "no {prefix} result on the peer's console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let w = [w.0, w.1];
        peer.push(size as f64 / (w[1] - w[0]) / MIB as f64);
    }
    qemu.kill().ok();
    qemu.wait().ok();

    let dirs: Vec<&Path> = bmcs.iter().map(|b| b.dir.as_path()).collect();
    let ids: Vec<uuid::Uuid> = defs
        .iter()
        .zip(&bmcs)
        .map(|(d, b)| enroll(&env, d, &b.address, PASSWORD))
        .collect();
    for id in &ids {
        act(&env, *id, plinth_types::Verb::Inspect);
    }
    let long = Duration::from_secs(1800);
    wait_state(&env, &ids, MachineState::Ready, long, &server, &dirs);
    for (name, file) in [
        ("bench-raw", "disks/bench.raw"),
        ("bench-gz", "disks/bench.raw.gz"),
        ("bench-zst", "disks/bench.raw.zst"),
    ] {
        register(&env, name, file, "both");
    }
    let served = |f: &str| std::fs::metadata(root.join(f)).unwrap().len() as f64 / MIB as f64;

    // One VM alone, each format: deploy → deployed, and the agent's write figure.
    let mut alone = Vec::new();
    for image in ["bench-raw", "bench-gz", "bench-zst"] {
        let (alloc, got) = allocate(&env, 1);
        let id = got[0];
        let i = ids.iter().position(|x| *x == id).unwrap();
        let t0 = Instant::now();
        deploy(
            &env,
            id,
            DeployRequest {
                image: image.into(),
                ..Default::default()
            },
        );
        let secs = deployed_after(&env, &[id], t0, long)[0];
        let (bytes, write_secs) = agent_write(dirs[i]);
        alone.push((image, secs, bytes / write_secs / MIB as f64));
        release(&env, alloc);
        wait_state(&env, &ids, MachineState::Ready, long, &server, &dirs);
    }

    // Four at once, zstd.
    let (alloc, got) = allocate(&env, N as u32);
    let t0 = Instant::now();
    for id in &got {
        deploy(
            &env,
            *id,
            DeployRequest {
                image: "bench-zst".into(),
                ..Default::default()
            },
        );
    }
    let mut four = deployed_after(&env, &got, t0, long);
    four.sort_by(f64::total_cmp);
    let four_rates: Vec<f64> = dirs
        .iter()
        .map(|d| {
            let (b, s) = agent_write(d);
            b / s / MIB as f64
        })
        .collect();
    release(&env, alloc);
    wait_state(&env, &ids, MachineState::Ready, long, &server, &dirs);

    let rate = |name: &str| alone.iter().find(|a| a.0 == name).unwrap().2;
    println!(
        "BENCH image {} MiB raw, {:.1} MiB gzip, {:.1} MiB zstd; agent write: raw {:.1} MiB/s (peer wget|dd {:.1} MiB/s, {:.0}%), \
         gzip {:.1} MiB/s (peer wget|gunzip|dd {:.1} MiB/s, {:.0}%), zstd {:.1} MiB/s; \
         deploy → deployed, 1 VM: raw {:.1} s, gzip {:.1} s, zstd {:.1} s; {N} VMs at once (zstd): {:.1} / {:.1} / {:.1} / {:.1} s, agent write {:?} MiB/s",
        size >> 20,
        served("disks/bench.raw.gz"),
        served("disks/bench.raw.zst"),
        rate("bench-raw"),
        peer[0],
        100.0 * rate("bench-raw") / peer[0],
        rate("bench-gz"),
        peer[1],
        100.0 * rate("bench-gz") / peer[1],
        rate("bench-zst"),
        alone[0].1,
        alone[1].1,
        alone[2].1,
        four[0],
        four[1],
        four[2],
        four[3],
        four_rates
            .iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
}
