//! `plinth-lab demo`: a virtual rack that plinth enrolls and inspects, for a person to watch.
//!
//! Everything lives in one lab (`plinth_testkit::netns::Lab`): a server namespace with
//! `plinth serve` (embedded PostgreSQL, DHCP, TFTP, HTTP) and the virtual BMCs, and a rack
//! namespace with the VMs on a bridge. Nothing is added to the host's network: the API reaches
//! this machine through a Unix socket (`plinth-lab forward` in the server namespace) and a TCP
//! listener of this process on `--listen`. The steps go through plinth's CLI, printed as they
//! run, so that they can be repeated by hand. Ctrl-C (or SIGTERM) stops plinth, the VMs and
//! their BMCs and deletes the namespaces and the lab's directory.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use plinth_testkit::netns::Lab;
use plinth_testkit::rack::{
    BmcProtocol, ServeSpec, VirtualBmcSpec, rack_network, start_plinth, start_virtual_bmc,
};
use plinth_testkit::vm::{Firmware, Nic, VmSpec};
use serde_json::Value;

/// The rack network (inside the lab's namespaces only).
const PREFIX: &str = "10.42.0";
const RACK: &str = "demo-r1";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The images root that images/build.sh filled (iPXE, the ramdisk kernel and initrd).
    #[arg(long)]
    images: PathBuf,
    /// The plinth binary [default: `plinth` next to plinth-lab].
    #[arg(long)]
    plinth: Option<PathBuf>,
    /// Where plinth's API (and web UI) is reachable from this machine.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

struct DemoVm {
    name: &'static str,
    firmware: Firmware,
    nic: Nic,
    protocol: BmcProtocol,
    mac: &'static str,
    memory_mib: u32,
    disks: &'static [u64],
    rack_unit: u32,
    size_u: u32,
}

/// Three machines that differ where the facts will show it.
const VMS: [DemoVm; 3] = [
    DemoVm {
        name: "node-01",
        firmware: Firmware::Bios,
        nic: Nic::E1000,
        protocol: BmcProtocol::Redfish,
        mac: "52:54:00:42:00:01",
        memory_mib: 512,
        disks: &[64],
        rack_unit: 10,
        size_u: 1,
    },
    DemoVm {
        name: "node-02",
        firmware: Firmware::Uefi,
        nic: Nic::VirtioNet,
        protocol: BmcProtocol::Ipmi,
        mac: "52:54:00:42:00:02",
        memory_mib: 768,
        disks: &[32, 48],
        rack_unit: 12,
        size_u: 2,
    },
    DemoVm {
        name: "node-03",
        firmware: Firmware::Uefi,
        nic: Nic::VirtioNet,
        protocol: BmcProtocol::Redfish,
        mac: "52:54:00:42:00:03",
        memory_mib: 640,
        disks: &[96],
        rack_unit: 15,
        size_u: 1,
    },
];

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    // Before any child exists: Ctrl-C and SIGTERM end the watch, then everything is removed.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let mut term = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })?;
        rt.spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let plinth = match &args.plinth {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("plinth"),
    };
    ensure!(
        plinth.is_file(),
        "{} not found: build plinth (cargo build --release -p plinth) or pass --plinth",
        plinth.display()
    );
    for file in [
        "undionly.kpxe",
        "ipxe.efi",
        "plinth/vmlinuz",
        "plinth/initrd.img",
    ] {
        ensure!(
            args.images.join(file).is_file(),
            "{} has no {file}: fill it with images/build.sh {}",
            args.images.display(),
            args.images.display()
        );
    }
    let images = std::fs::canonicalize(&args.images)?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| {
            format!(
                "cannot listen on {} (is a plinth already serving there? --listen picks another address)",
                args.listen
            )
        })?;

    let mut lab = Lab::new()?;
    let result = demo(&rt, &mut lab, &plinth, &images, &args, listener, &stop);
    if let Err(e) = &result {
        eprintln!("\nplinth-lab demo: {e:#}");
    }
    say("stopping plinth, the VMs and their BMCs; removing the namespaces");
    let namespaces = lab.namespaces().to_vec();
    drop(lab);
    drop(rt);
    say(&format!("removed {}; bye", namespaces.join(", ")));
    result
}

fn say(line: &str) {
    println!("plinth-lab: {line}");
}

fn demo(
    rt: &tokio::runtime::Runtime,
    lab: &mut Lab,
    plinth: &Path,
    images: &Path,
    args: &DemoArgs,
    listener: tokio::net::TcpListener,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let dir = lab.dir().to_path_buf();
    say(&format!(
        "lab directory {} (plinth's log and state, the VM consoles)",
        dir.display()
    ));
    let net = rack_network(lab, PREFIX, VMS.len())?;
    say(&format!(
        "namespaces {} (plinth, BMCs) and {} (the VMs on a bridge), network {PREFIX}.0/24",
        net.srv.name, net.rack.name
    ));

    // The virtual BMCs, each driving its VM's QEMU process.
    let exe = std::env::current_exe()?;
    let password = format!("demo-{:08x}", rand::random::<u32>());
    let mut bmcs = Vec::new();
    for (vm, tap) in VMS.iter().zip(&net.taps) {
        let mut spec = VmSpec::new(vm.name, vm.firmware, vm.nic, vm.mac);
        spec.memory_mib = vm.memory_mib;
        spec.disks = vm.disks.to_vec();
        let bmc = start_virtual_bmc(
            lab,
            &net.srv,
            &exe,
            &VirtualBmcSpec {
                vm: spec,
                protocol: vm.protocol,
                username: "admin".into(),
                password: password.clone(),
                ns: net.rack.name.clone(),
                tap: tap.clone(),
                dir: dir.join(vm.name),
                listen: None,
            },
        )?;
        say(&format!(
            "{}: {}, {} MiB, disks {:?} MiB, {} NIC {}; {} BMC at {}",
            vm.name,
            serde_name(vm.firmware),
            vm.memory_mib,
            vm.disks,
            serde_name(vm.nic),
            vm.mac,
            vm.protocol.as_str(),
            bmc.address
        ));
        bmcs.push(bmc);
    }
    check_stop(stop)?;

    // plinth, with its embedded database.
    let state = dir.join("state");
    let mut env: Vec<(String, String)> = [
        ("PLINTH_BMC__SYNC_INTERVAL_SECS", "10"),
        ("PLINTH_BMC__BACKOFF_BASE_SECS", "1"),
        ("PLINTH_BMC__BACKOFF_MAX_SECS", "5"),
        ("PLINTH_LOG__LEVEL", "info"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    env.extend(
        foreign_plinth_vars()
            .into_iter()
            .map(|k| (k, String::new())),
    );
    say("starting plinth serve (embedded PostgreSQL; DHCP, TFTP and HTTP on the rack network)");
    let server = start_plinth(
        lab,
        &net.srv,
        &ServeSpec {
            bin: plinth,
            iface: &net.srv_iface,
            server_ip: &format!("{PREFIX}.2"),
            images_root: images,
            state_dir: &state,
            database_url: None,
            env,
        },
    )?;
    say(&format!("plinth's log: {}", server.log.display()));

    // Its API, here.
    let sock = dir.join("api.sock");
    let mut fwd = Command::new(&exe);
    fwd.arg("forward")
        .arg("--unix")
        .arg(&sock)
        .args(["--to", "127.0.0.1:8080"]);
    let fwd = lab.spawn_named(&net.srv, "forward", fwd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fwd.log_text().contains("forwarding") {
        ensure!(
            fwd.is_running() && Instant::now() < deadline,
            "the API forwarder did not start: {}",
            fwd.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.spawn(proxy(listener, sock));
    let url = format!("http://{}", args.listen);

    let token = {
        let mut cmd = Command::new(plinth);
        clean_env(&mut cmd);
        let out = cmd
            .args(["admin", "create-token", "--name", "demo", "--role", "admin"])
            .env("PLINTH_STATE_DIR", &state)
            .output()?;
        ensure!(
            out.status.success(),
            "plinth admin create-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)?.trim().to_owned()
    };
    // A person for the web UI.
    let ui_password = format!("demo-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    {
        let mut cmd = Command::new(plinth);
        clean_env(&mut cmd);
        let out = cmd
            .args([
                "admin",
                "create-user",
                "--username",
                "demo",
                "--role",
                "admin",
            ])
            .env("PLINTH_STATE_DIR", &state)
            .env("PLINTH_USER_PASSWORD", &ui_password)
            .output()?;
        ensure!(
            out.status.success(),
            "plinth admin create-user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    say(&format!(
        "web UI: {url}/ (user demo, password {ui_password})"
    ));
    let cli = PlinthCli {
        bin: plinth.to_owned(),
        url: url.clone(),
        token: token.clone(),
    };
    println!();
    say("the steps, through plinth's CLI:");
    println!("  export PLINTH_API_URL={url} PLINTH_TOKEN={token}");
    cli.run(
        &[
            "subnet",
            "add",
            &format!("{PREFIX}.0/24"),
            "--range",
            &format!("{PREFIX}.100-{PREFIX}.199"),
        ],
        None,
    )?;
    cli.run(
        &[
            "rack",
            "add",
            RACK,
            "--height-u",
            "42",
            "--site",
            "demo",
            "--room",
            "lab",
            "--row",
            "1",
        ],
        None,
    )?;
    let mut names = BTreeMap::new();
    for (vm, bmc) in VMS.iter().zip(&bmcs) {
        let (unit, size) = (vm.rack_unit.to_string(), vm.size_u.to_string());
        let mut args = vec![
            "machine",
            "enroll",
            "--hostname",
            vm.name,
            "--nic",
            vm.mac,
            "--rack",
            RACK,
            "--rack-unit",
            &unit,
            "--size-u",
            &size,
            "--bmc-protocol",
            vm.protocol.as_str(),
            "--bmc-address",
            &bmc.address,
            "--bmc-username",
            "admin",
            "--bmc-insecure",
        ];
        // The virtual Redfish BMCs answer plain HTTP on the demo's own network.
        if bmc.address.starts_with("http://") {
            args.push("--bmc-plain-http");
        }
        args.extend(["-o", "json"]);
        let out = cli.run(&args, Some(&password))?;
        let m: Value = serde_json::from_str(&out).context("plinth machine enroll -o json")?;
        let id = m["id"]
            .as_str()
            .context("an enrolled machine's id")?
            .to_owned();
        names.insert(id, vm.name);
    }
    // What happened so far (enrollment) was printed by the CLI; the watch shows the rest.
    let seen = event_ids(&cli)?;
    for (id, name) in &names {
        let out = cli.run(
            &[
                "machine", "action", id, "inspect", "--reason", "demo", "-o", "json",
            ],
            None,
        )?;
        let m: Value = serde_json::from_str(&out).context("plinth machine action -o json")?;
        println!("    {name}: {}", m["state"].as_str().unwrap_or("?"));
    }
    println!();
    hints(
        &cli,
        &dir,
        &server.log,
        names.keys().next().map(String::as_str),
    );
    say("watching: BMC jobs, boots and state changes as plinth records them (Ctrl-C stops)");
    watch(&cli, &names, seen, stop)
}

/// What an enum is called in JSON (`bios`, `virtio-net`).
fn serde_name(v: impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The caller's `PLINTH_*` variables: the demo's plinth and CLI calls must not see them (a
/// configured database, token or API URL would point them elsewhere).
fn foreign_plinth_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("PLINTH_"))
        .collect()
}

fn clean_env(cmd: &mut Command) {
    for k in foreign_plinth_vars() {
        cmd.env_remove(k);
    }
}

/// Passes each connection on `listener` to the API socket in the server namespace.
async fn proxy(listener: tokio::net::TcpListener, sock: PathBuf) {
    loop {
        let mut inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::UnixStream::connect(&sock).await {
                tokio::io::copy_bidirectional(&mut inbound, &mut out)
                    .await
                    .ok();
            }
        });
    }
}

struct PlinthCli {
    bin: PathBuf,
    url: String,
    token: String,
}

impl PlinthCli {
    /// Runs `plinth ARGS` against the demo's API; with `password`, as the BMC password. Shown
    /// first (without `-o json`) unless it is one of the watch's quiet calls.
    fn run(&self, args: &[&str], password: Option<&str>) -> anyhow::Result<String> {
        let shown: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| *a != "-o" && *a != "json")
            .collect();
        let prefix = if password.is_some() {
            "PLINTH_BMC_PASSWORD=... "
        } else {
            ""
        };
        println!("  $ {prefix}plinth {}", shown.join(" "));
        let out = self.quiet(args, password)?;
        if !args.contains(&"json") {
            for line in out.lines() {
                println!("    {line}");
            }
        }
        Ok(out)
    }

    fn quiet(&self, args: &[&str], password: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd);
        cmd.args(args)
            .env("PLINTH_API_URL", &self.url)
            .env("PLINTH_TOKEN", &self.token);
        if let Some(p) = password {
            cmd.env("PLINTH_BMC_PASSWORD", p);
        }
        let out = cmd.output().context("running plinth")?;
        ensure!(
            out.status.success(),
            "plinth {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn hints(cli: &PlinthCli, dir: &Path, log: &Path, id: Option<&str>) {
    let id = id.unwrap_or("ID");
    let plinth = cli.bin.display();
    println!(
        "What to watch, from another terminal (the API is at {url}):\n\
         \x20 export PATH={bindir}:$PATH PLINTH_API_URL={url} PLINTH_TOKEN={token}\n\
         \x20 plinth machine list                  states; facts once inspected (-o json)\n\
         \x20 plinth rack show {RACK}             the rack and its machines\n\
         \x20 plinth machine show {id}\n\
         \x20 plinth machine events {id}\n\
         \x20 plinth job list                      the BMC jobs (PXE once, power cycle, power off)\n\
         \x20 plinth lease list                    the DHCP leases the VMs took\n\
         \x20 curl -H \"Authorization: Bearer $PLINTH_TOKEN\" {url}/api/v1/machines\n\
         \x20 {url}/                       the web UI: the rack, the machines, their timelines\n\
         \x20 curl {url}/api/v1/openapi.json      the API's description\n\
         \x20 tail -f {dir}/node-01/console.log   a VM's serial console (node-02, node-03 likewise)\n\
         \x20 less {log}\n\
         Then try: plinth allocate --count 1, plinth release ALLOCATION (the machine is wiped by\n\
         the clean agent and comes back ready), plinth machine action {id} decommission.",
        url = cli.url,
        token = cli.token,
        bindir = Path::new(&plinth.to_string())
            .parent()
            .unwrap_or(Path::new("."))
            .display(),
        dir = dir.display(),
        log = log.display(),
    );
}

/// Prints every new event of the demo's machines (state changes, BMC calls, boots, reports)
/// until `stop`, and a summary of their facts when all are ready.
fn watch(
    cli: &PlinthCli,
    names: &BTreeMap<String, &str>,
    mut seen: HashSet<i64>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut all_ready = false;
    let mut summarized = false;
    // Ready in the previous poll too: the summary waits one poll, so that the events of the
    // last transitions (committed between the events poll and the list poll) are printed
    // before it.
    let mut ready_before = false;
    // The time of the newest event printed: each poll asks from LOOKBACK before it. An event's
    // time is its transaction's start, so one that commits after a later-stamped event was
    // printed would be missed by asking from that instant on (it was: a machine's last
    // transition went unprinted); `seen` drops the repeats.
    const LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
    let mut since: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    while !stop.load(Ordering::SeqCst) {
        let from = since.map(|t| (t - LOOKBACK).to_rfc3339());
        match recent_events(cli, from.as_deref()) {
            Ok(events) => {
                for e in events {
                    if let Some(at) = e["at"]
                        .as_str()
                        .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                    {
                        since = Some(since.map_or(at, |s| s.max(at)));
                    }
                    let Some(id) = e["id"].as_i64() else { continue };
                    let Some(name) = e["machine_id"].as_str().and_then(|m| names.get(m)) else {
                        continue;
                    };
                    if seen.insert(id) {
                        let t = t0.elapsed().as_secs_f64();
                        println!("[{t:6.1}s] {}", describe(name, &e));
                    }
                }
            }
            Err(e) => say(&format!("{e:#}")),
        }
        if let Ok(out) = cli.quiet(&["machine", "list", "--rack", RACK, "-o", "json"], None) {
            let list: Value = serde_json::from_str(&out).unwrap_or_default();
            let mut machines = list["machines"].as_array().cloned().unwrap_or_default();
            machines.sort_by_key(|m| m["hostname"].as_str().map(str::to_owned));
            let ready = !machines.is_empty() && machines.iter().all(|m| m["state"] == "ready");
            let settled = ready && ready_before;
            ready_before = ready;
            if settled && !all_ready && !summarized {
                println!();
                say(&format!(
                    "all {} machines are ready, {:.0} s after inspect; what the agent found:",
                    machines.len(),
                    t0.elapsed().as_secs_f64()
                ));
                for m in &machines {
                    println!("  {}", summary(m));
                }
                println!();
                say("plinth keeps serving until Ctrl-C");
                summarized = true;
            } else if settled && !all_ready {
                say(&format!("all {} machines are ready again", machines.len()));
            }
            if !ready {
                all_ready = false;
            } else if settled {
                all_ready = true;
            }
        }
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!();
    Ok(())
}

/// Events of plinth's audit log from `since` (RFC 3339) on, oldest first.
fn recent_events(cli: &PlinthCli, since: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["events", "--limit", "1000", "-o", "json"];
    if let Some(since) = since {
        args.extend(["--since", since]);
    }
    let out = cli.quiet(&args, None)?;
    let page: Value = serde_json::from_str(&out).context("plinth events -o json")?;
    let mut events = page["events"].as_array().cloned().unwrap_or_default();
    events.sort_by_key(|e| e["id"].as_i64());
    Ok(events)
}

fn event_ids(cli: &PlinthCli) -> anyhow::Result<HashSet<i64>> {
    Ok(recent_events(cli, None)?
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect())
}

fn describe(name: &str, e: &Value) -> String {
    let kind = e["kind"].as_str().unwrap_or("?");
    let d = &e["details"];
    if let (Some(from), Some(to)) = (e["from_state"].as_str(), e["to_state"].as_str()) {
        let actor = e["actor"].as_str().unwrap_or("?");
        return format!("{name:8} {from} → {to} ({kind}, by {actor})");
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let line = match kind {
        "bmc_job_succeeded" | "bmc_job_failed" | "bmc_job_cancelled" => {
            let params: Vec<String> = d["params"]
                .as_object()
                .map(|p| {
                    p.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| format!(" {k}={}", text(v)))
                        .collect()
                })
                .unwrap_or_default();
            let outcome = match kind {
                "bmc_job_succeeded" => "done".to_owned(),
                "bmc_job_cancelled" => "cancelled".to_owned(),
                _ => format!("FAILED: {}", text(&d["error"])),
            };
            format!("BMC {}{}: {outcome}", text(&d["kind"]), params.concat())
        }
        "boot" => format!(
            "network boot ({}): {}",
            text(&d["firmware"]),
            text(&d["message"])
        ),
        _ => {
            let mut details = d.to_string();
            if details == "{}" || details == "null" {
                details.clear();
            }
            format!("{kind} {details}")
        }
    };
    let mut line = format!("{name:8} {line}");
    if line.chars().count() > 120 {
        line = line.chars().take(119).collect::<String>() + "…";
    }
    line
}

fn summary(m: &Value) -> String {
    let f = &m["facts"];
    let disks: Vec<String> = f["disks"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| {
                    format!(
                        "{} {} MiB",
                        d["name"].as_str().unwrap_or("?"),
                        d["size_bytes"].as_u64().unwrap_or(0) >> 20
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let nics: Vec<String> = f["nics"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|n| {
                    format!(
                        "{} {}",
                        n["name"].as_str().unwrap_or("?"),
                        n["mac"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{:8} U{:<2} {:4} {} × {}, {} MiB, disks [{}], NICs [{}], {} {}, power {}",
        m["hostname"].as_str().unwrap_or("?"),
        m["rack_unit"].as_i64().unwrap_or(0),
        f["firmware"].as_str().unwrap_or("?"),
        f["cpu"]["threads"].as_u64().unwrap_or(0),
        f["cpu"]["model"].as_str().unwrap_or("?"),
        f["memory_mib"].as_u64().unwrap_or(0),
        disks.join(", "),
        nics.join(", "),
        f["system"]["vendor"].as_str().unwrap_or("?"),
        f["system"]["product"].as_str().unwrap_or("?"),
        m["bmc"]["power_state"].as_str().unwrap_or("?"),
    )
}
