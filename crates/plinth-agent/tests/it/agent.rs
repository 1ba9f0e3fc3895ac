//! The agent binary against a real plinth API (in process, on a real PostgreSQL), with a machine
//! laid out as files: `--root` holds its /proc and /sys, `--dev` its disks (regular files).
//! The token comes from the boot script plinth serves the machine, as in the ramdisk.

use std::path::Path;
use std::process::Command;

use plinth_core::boot::{BootSettings, Templates};
use plinth_testkit::TestDb;
use plinth_testkit::api::TestApi;
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_plinth-agent");
const MIB: usize = 1024 * 1024;

struct Api {
    base: String,
    admin: String,
    http: reqwest::Client,
    db: TestDb,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(None).await
    }

    /// With `images` as the images root (boot files, disk images), when given.
    async fn start_with(images: Option<&Path>) -> Api {
        let t = TestApi::start_with(|app| match images {
            Some(root) => app.with_boot(
                BootSettings::with_root(root.to_owned()),
                Templates::load(None).unwrap(),
            ),
            None => app,
        })
        .await;
        Api {
            base: t.base,
            admin: t.admin,
            http: reqwest::Client::new(),
            db: t.db,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// A machine enrolled with one NIC and sent to inspection: its id.
    async fn inspecting(&self, hostname: &str, mac: &str) -> String {
        let m = self
            .call(
                reqwest::Method::POST,
                "/api/v1/machines",
                Some(json!({ "hostname": hostname, "nics": [{ "mac": mac }] })),
            )
            .await;
        let id = m["id"].as_str().unwrap().to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/actions/inspect"),
            Some(json!({})),
        )
        .await;
        id
    }

    async fn machine(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}"),
            None,
        )
        .await
    }

    /// The ramdisk command line of the machine's next boot (with a fresh token).
    async fn cmdline(&self, mac: &str) -> String {
        let script = self
            .http
            .get(format!("{}/boot/ipxe?mac={mac}", self.base))
            .header("user-agent", "iPXE/1.21.1")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = script
            .lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_else(|| panic!("no kernel line: {script}"));
        // (the caller appends its own plinth.api=: the last one counts)
        line.trim_start_matches("kernel ")
            .split(" || ")
            .next()
            .unwrap()
            .to_owned()
    }
}

/// A machine's files: (the temporary directory, its `--root`, its `--dev`).
fn machine_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (root, dev) = (dir.path().join("root"), dir.path().join("dev"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&dev).unwrap();
    (dir, root, dev)
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A two-disk (8 and 3 MiB), one-NIC machine; its disks full of 0xa5.
fn machine(root: &Path, dev: &Path, mac: &str) {
    machine_with(root, dev, mac, &[("vda", 8), ("vdb", 3)]);
}

/// A one-NIC machine with these disks (name, MiB), full of 0xa5.
fn machine_with(root: &Path, dev: &Path, mac: &str, disks: &[(&str, usize)]) {
    write(
        root,
        "proc/cpuinfo",
        "processor : 0\nmodel name : QEMU Virtual CPU\nphysical id : 0\ncore id : 0\n\n\
         processor : 1\nmodel name : QEMU Virtual CPU\nphysical id : 0\ncore id : 1\n\n",
    );
    write(root, "proc/meminfo", "MemTotal: 1999000 kB\n");
    for &(name, mib) in disks {
        write(
            root,
            &format!("sys/block/{name}/size"),
            &format!("{}\n", mib * 2048),
        );
        write(
            root,
            &format!("sys/block/{name}/serial"),
            &format!("serial-{name}\n"),
        );
        std::fs::write(dev.join(name), vec![0xa5u8; mib * MIB]).unwrap();
    }
    write(root, "sys/class/net/ens3/address", &format!("{mac}\n"));
    write(root, "sys/class/net/ens3/carrier", "1\n");
    write(root, "sys/class/net/ens3/device/vendor", "0x1af4\n");
    write(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
    write(
        root,
        "sys/class/dmi/id/product_name",
        "Standard PC (Q35 + ICH9, 2009)\n",
    );
    write(root, "sys/class/dmi/id/product_serial", "VM-0001\n");
    write(
        root,
        "sys/class/dmi/id/product_uuid",
        "0a0b0c0d-0000-4000-8000-000000000001\n",
    );
    write(root, "sys/firmware/efi/fw_platform_size", "64\n");
}

fn run_agent(root: &Path, dev: &Path, cmdline: &str) -> (bool, String) {
    let file = root.join("cmdline");
    std::fs::write(&file, cmdline).unwrap();
    let out = Command::new(AGENT)
        .arg("--root")
        .arg(root)
        .arg("--dev")
        .arg(dev)
        .arg("--cmdline")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_then_clean_through_the_real_api() {
    let api = Api::start().await;
    let mac = "52:54:00:0a:00:01";
    let id = api.inspecting("vm1", mac).await;
    let (_dir, root, dev) = machine_dirs();
    machine(&root, &dev, mac);

    let cmdline = format!("{} plinth.api={}", api.cmdline(mac).await, api.base);
    assert!(cmdline.contains("plinth.mode=inspect"), "{cmdline}");
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(ok, "{out}");
    assert!(
        out.contains("PLINTH-AGENT mode=inspect result=ok peak_kib="),
        "{out}"
    );
    let peak: u64 = out
        .split("peak_kib=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        peak > 0 && peak < 64 * 1024,
        "the agent's peak memory: {peak} KiB"
    );
    let token = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("plinth.token="))
        .unwrap();
    assert!(!out.contains(token), "the agent never prints its token");
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "ready", "{m}");
    let f = &m["facts"];
    assert_eq!(
        (f["cpu"]["cores"].as_u64(), f["cpu"]["threads"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(f["memory_mib"], 1952);
    assert_eq!(f["disks"][0]["size_bytes"], 8 * MIB);
    assert_eq!(f["disks"][1]["serial"], "serial-vdb");
    assert_eq!(f["nics"][0]["mac"], mac);
    assert_eq!(f["nics"][0]["link"], true);
    assert_eq!(f["firmware"], "uefi");
    assert_eq!(f["system"]["serial"], "VM-0001");

    // The same command line again (a replayed token): refused, a non-zero exit, an event.
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(!ok);
    assert!(
        out.contains("already used") && out.contains("result=failed"),
        "{out}"
    );

    // Release → cleaning: the clean ramdisk wipes both disks and reports.
    allocate_and_release(&api).await;
    let cmdline = format!("{} plinth.api={}", api.cmdline(mac).await, api.base);
    assert!(cmdline.contains("plinth.mode=clean"), "{cmdline}");
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(ok, "{out}");
    for name in ["vda", "vdb"] {
        let data = std::fs::read(dev.join(name)).unwrap();
        assert!(data[..MIB].iter().all(|b| *b == 0), "{name}: first MiB");
        assert!(
            data[data.len() - MIB..].iter().all(|b| *b == 0),
            "{name}: last MiB"
        );
    }
    assert_eq!(std::fs::read(dev.join("vda")).unwrap()[4 * MIB], 0xa5);
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "ready", "{m}");
    let ev = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}/events"),
            None,
        )
        .await;
    let events = ev["events"].as_array().unwrap();
    let done = events
        .iter()
        .find(|e| e["kind"] == "clean_complete")
        .unwrap();
    assert_eq!(done["actor"], "agent:clean");
    assert_eq!(done["details"]["disks"][0]["zeroed_bytes"], 2 * MIB);
    assert!(events.iter().any(|e| e["kind"] == "agent_token_refused"));

    // A disk that cannot be written: the machine goes to clean_failed with the reason.
    allocate_and_release(&api).await;
    std::fs::remove_file(dev.join("vdb")).unwrap();
    let cmdline = format!("{} plinth.api={}", api.cmdline(mac).await, api.base);
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(!ok, "{out}");
    assert!(out.contains("vdb: FAILED"), "{out}");
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "clean_failed", "{m}");
    assert!(m["state_reason"].as_str().unwrap().contains("vdb"), "{m}");
}

/// Allocates the one ready machine and releases it again: it goes to cleaning.
async fn allocate_and_release(api: &Api) {
    let alloc = api
        .call(
            reqwest::Method::POST,
            "/api/v1/allocations",
            Some(json!({ "count": 1 })),
        )
        .await;
    api.call(
        reqwest::Method::DELETE,
        &format!("/api/v1/allocations/{}", alloc["id"].as_str().unwrap()),
        None,
    )
    .await;
}

/// The pool's wipe method reaches the agent through its clean plan, and the report says what
/// was done; a disk the ramdisk does not see (pulled, or hidden by a hostile ramdisk) cannot be
/// skipped: the machine goes to clean_failed naming it.
#[tokio::test(flavor = "multi_thread")]
async fn the_pools_wipe_method_and_a_disk_left_out() {
    let api = Api::start().await;
    let mac = "52:54:00:0a:00:02";
    let id = api.inspecting("vm2", mac).await;
    let (_dir, root, dev) = machine_dirs();
    machine(&root, &dev, mac);
    let cmdline = format!("{} plinth.api={}", api.cmdline(mac).await, api.base);
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(ok, "{out}");
    // Its pool ("default") is wiped in full.
    let pool = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/pools/default",
            Some(json!({ "wipe_method": "full" })),
        )
        .await;
    assert_eq!(pool["effective_wipe_method"], "full", "{pool}");
    allocate_and_release(&api).await;
    let cmdline = format!("{} plinth.api={}", api.cmdline(mac).await, api.base);
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(ok, "{out}");
    assert!(out.contains("method full"), "{out}");
    for name in ["vda", "vdb"] {
        let data = std::fs::read(dev.join(name)).unwrap();
        assert!(data.iter().all(|b| *b == 0), "{name} is zero throughout");
    }
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "ready", "{m}");
    let ev = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}/events"),
            None,
        )
        .await;
    let done = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "clean_complete")
        .unwrap()
        .clone();
    assert_eq!(done["details"]["method_required"], "full");
    for d in done["details"]["disks"].as_array().unwrap() {
        assert_eq!(d["method"], "full", "{d}");
        assert_eq!(d["zeroed_bytes"], d["size_bytes"], "{d}");
        assert!(
            d["verification"].as_str().unwrap().contains("all zero"),
            "{d}"
        );
        assert!(d["serial"].as_str().unwrap().starts_with("serial-"), "{d}");
    }

    // vdb vanishes from the ramdisk's view: the agent wipes what it sees and says complete,
    // plinth knows better.
    std::fs::write(dev.join("vda"), vec![0xa5u8; 8 * MIB]).unwrap();
    std::fs::remove_dir_all(root.join("sys/block/vdb")).unwrap();
    allocate_and_release(&api).await;
    let cmdline = format!("{} plinth.api={}", api.cmdline(mac).await, api.base);
    let (_, out) = run_agent(&root, &dev, &cmdline);
    assert!(
        out.contains("disk vdb") && out.contains("is not here"),
        "{out}"
    );
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "clean_failed", "{m}");
    let reason = m["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("vdb") && reason.contains("missing"),
        "{reason}"
    );

    // Back to the default for the pool: quick.
    let pool = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/pools/default",
            Some(json!({ "wipe_method": null })),
        )
        .await;
    assert_eq!(pool["effective_wipe_method"], "quick", "{pool}");
    assert!(pool["wipe_method"].is_null(), "{pool}");
}

#[test]
fn an_unreachable_api_is_retried_then_given_up() {
    let (_dir, root, dev) = machine_dirs();
    machine(&root, &dev, "52:54:00:0a:00:02");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cmdline = format!(
        "plinth.mode=inspect plinth.api=http://127.0.0.1:{port} plinth.machine=m \
         plinth.token=plinth_x plinth.api_timeout=4"
    );
    let (ok, out) = run_agent(&root, &dev, &cmdline);
    assert!(!ok);
    assert!(out.contains("trying again in 1 s"), "{out}");
    assert!(out.contains("gave up after 3 attempts"), "{out}");
    // Each attempt, and the last line, name the step that failed with its evidence.
    let refused = format!("TCP failed: 127.0.0.1:{port} refused the connection");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(&refused) && l.contains("attempt"))
            .count(),
        3,
        "{out}"
    );
    let last = out
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default();
    assert!(last.contains(&refused) && last.contains("gave up"), "{out}");
    assert!(
        !out.contains("plinth_x"),
        "the token is never printed: {out}"
    );
    let (ok, out) = run_agent(&root, &dev, "plinth.mode=inspect");
    assert!(!ok);
    assert!(out.contains("no plinth.api="), "{out}");
}

fn tool(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (Debian packages fdisk, mtools, util-linux)"))
}

/// A disk image: an MBR with one partition from 1 MiB to its end, holding a pattern.
fn os_image(path: &Path, mib: usize) -> Vec<u8> {
    let mut data = vec![0u8; mib * MIB];
    for (i, b) in data.iter_mut().enumerate().skip(MIB) {
        *b = (i / 4096 % 251) as u8;
    }
    std::fs::write(path, &data).unwrap();
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (Debian package fdisk)");
    use std::io::Write;
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83, bootable\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_writes_image_and_seed_clean_wipes_them_and_a_changed_image_fails() {
    let images = tempfile::tempdir().unwrap();
    let raw = os_image(&images.path().join("os.raw"), 8);
    std::fs::write(
        images.path().join("os.raw.zst"),
        zstd::encode_all(&raw[..], 3).unwrap(),
    )
    .unwrap();
    std::fs::write(images.path().join("changed.raw"), &raw).unwrap();
    let api = Api::start_with(Some(images.path())).await;
    for (name, path) in [("os", "os.raw.zst"), ("changed", "changed.raw")] {
        api.call(
            reqwest::Method::POST,
            "/api/v1/images",
            Some(json!({ "name": name, "kind": "disk-image", "path": path, "firmware": "both" })),
        )
        .await;
    }

    let mac = "52:54:00:0a:00:03";
    let id = api.inspecting("vm3", mac).await;
    let (_dir, root, dev) = machine_dirs();
    machine_with(&root, &dev, mac, &[("vda", 24), ("vdb", 3)]);
    let agent = |cmdline: String| {
        let cmdline = format!("{cmdline} plinth.api={}", api.base);
        run_agent(&root, &dev, &cmdline)
    };
    let (ok, out) = agent(api.cmdline(mac).await);
    assert!(ok, "{out}");

    // allocate → deploy: the agent writes the image and the seed, reads back, reports.
    let alloc = api
        .call(
            reqwest::Method::POST,
            "/api/v1/allocations",
            Some(json!({ "count": 1 })),
        )
        .await;
    let user_data = "#cloud-config\nruncmd: [echo deployed]\n";
    let network = "version: 2\nethernets:\n  ens3:\n    dhcp4: true\n";
    api.call(
        reqwest::Method::POST,
        &format!("/api/v1/machines/{id}/actions/deploy"),
        Some(json!({
            "image": "os", "hostname": "db-01", "user_data": user_data,
            "network_config": network,
        })),
    )
    .await;
    let cmdline = api.cmdline(mac).await;
    assert!(cmdline.contains("plinth.mode=deploy"), "{cmdline}");
    let (ok, out) = agent(cmdline);
    assert!(ok, "{out}");
    assert!(out.contains("PLINTH-AGENT mode=deploy result=ok"), "{out}");
    assert!(out.contains("verified: /dev/vda holds sha256"), "{out}");
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "deployed", "{m}");
    let vda = dev.join("vda");
    let disk = std::fs::read(&vda).unwrap();
    // The image, byte for byte, but for the MBR's partition table, which gained the seed.
    assert_eq!(&disk[..446], &raw[..446]);
    assert_eq!(&disk[512..raw.len()], &raw[512..], "the image");
    assert!(
        std::fs::read(dev.join("vdb"))
            .unwrap()
            .iter()
            .all(|b| *b == 0xa5),
        "the other disk is left alone"
    );
    let out = tool(Command::new("sfdisk").arg("--json").arg(&vda));
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{table}");
    assert_eq!(parts[0]["bootable"], true, "the image's table is kept");
    assert_eq!(parts[1]["type"], "c");
    let seed = parts[1]["start"].as_u64().unwrap() * 512;
    assert_eq!(seed, 8 * MIB as u64, "right after the image");
    let read = |name: &str| {
        let out = tool(
            Command::new("mtype")
                .arg("-i")
                .arg(format!("{}@@{seed}", vda.display()))
                .arg(format!("::{name}")),
        );
        assert!(out.status.success(), "{name}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let meta = read("meta-data");
    assert!(meta.contains("local-hostname: \"db-01\""), "{meta}");
    assert!(meta.contains("instance-id: "), "{meta}");
    assert_eq!(read("user-data"), user_data);
    assert_eq!(read("network-config"), network);
    let probe = |offset: u64| {
        let out = tool(
            Command::new("blkid")
                .args(["-p", "-o", "export", "--offset", &offset.to_string()])
                .arg(&vda),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(probe(seed).contains("LABEL=cidata"), "{}", probe(seed));
    let ev = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}/events"),
            None,
        )
        .await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"deploy_progress"), "{kinds:?}");
    assert!(kinds.contains(&"deploy_complete"), "{kinds:?}");

    // release → cleaning: the clean agent wipes the table, the image's partition and the seed.
    api.call(
        reqwest::Method::DELETE,
        &format!("/api/v1/allocations/{}", alloc["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (ok, out) = agent(api.cmdline(mac).await);
    assert!(ok, "{out}");
    let disk = std::fs::read(&vda).unwrap();
    assert!(
        disk[..2 * MIB].iter().all(|b| *b == 0),
        "the start and the first partition's"
    );
    assert!(
        disk[seed as usize..seed as usize + MIB]
            .iter()
            .all(|b| *b == 0),
        "the seed"
    );
    assert_eq!(probe(seed), "");
    let m = api.machine(&id).await;
    assert_eq!(m["state"], "ready", "{m}");

    // An image whose file changed after it was registered: written, then refused by its
    // checksum → deploy_failed, with the reason; the machine can be released. Once with the
    // catalog's hash of the written image (the read-back fails), once as an entry from before
    // plinth recorded it (the download's hash fails).
    let mut changed = raw.clone();
    changed[5 * MIB] ^= 0xff;
    std::fs::write(images.path().join("changed.raw"), &changed).unwrap();
    let catalog = api
        .call(reqwest::Method::GET, "/api/v1/images/changed", None)
        .await;
    let want = catalog["sha256"].as_str().unwrap().to_owned();
    for (legacy, what) in [
        (
            false,
            "what /dev/vda holds (the 8388608 bytes written, read back)",
        ),
        (true, "the file plinth served (8388608 bytes)"),
    ] {
        if legacy {
            sqlx::query("update images set raw_sha256 = null where name = 'changed'")
                .execute(&api.db.pool)
                .await
                .unwrap();
        }
        let alloc = api
            .call(
                reqwest::Method::POST,
                "/api/v1/allocations",
                Some(json!({ "count": 1 })),
            )
            .await;
        api.call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/actions/deploy"),
            Some(json!({ "image": "changed" })),
        )
        .await;
        let (ok, out) = agent(api.cmdline(mac).await);
        assert!(!ok, "{out}");
        assert!(out.contains("sha256 mismatch"), "{out}");
        let m = api.machine(&id).await;
        assert_eq!(m["state"], "deploy_failed", "{m}");
        let reason = m["state_reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("sha256 mismatch: {what}"))
                && reason.contains(&format!("the catalog says {want}")),
            "{reason}"
        );
        api.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/allocations/{}", alloc["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(api.machine(&id).await["state"], "cleaning");
        let (ok, out) = agent(api.cmdline(mac).await);
        assert!(ok, "{out}");
        assert_eq!(api.machine(&id).await["state"], "ready");
    }
}

/// A real plinth whose database went away answers 503: each attempt and the final line say
/// that the HTTP step failed, with plinth's own message, and never the token.
#[tokio::test(flavor = "multi_thread")]
async fn plinth_answering_503_is_named() {
    let api = Api::start().await;
    let mac = "52:54:00:0a:00:03";
    api.inspecting("vm503", mac).await;
    let (_dir, root, dev) = machine_dirs();
    machine(&root, &dev, mac);
    let cmdline = format!(
        "{} plinth.api={} plinth.api_timeout=2",
        api.cmdline(mac).await,
        api.base
    );
    let token = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("plinth.token="))
        .unwrap_or_else(|| panic!("no token: {cmdline}"))
        .to_owned();
    api.db.pool.close().await;
    let (ok, out) = tokio::task::spawn_blocking(move || run_agent(&root, &dev, &cmdline))
        .await
        .unwrap();
    assert!(!ok, "{out}");
    let named = "HTTP failed: plinth answered HTTP 503: the database is unavailable (unavailable)";
    assert!(
        out.lines()
            .any(|l| l.contains(named) && l.contains("attempt 1 failed")),
        "{out}"
    );
    let last = out
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default();
    assert!(last.contains(named) && last.contains("gave up"), "{out}");
    assert!(!out.contains(&token), "the token is never printed: {out}");
}
