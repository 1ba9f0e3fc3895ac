//! plinth-agent: runs in plinth's ramdisk (started by its /init once the network is up). It
//! reads its mode, plinth's API URL, the machine and its one-time token from the kernel command
//! line; in inspect mode it reports the machine's hardware, in clean mode it wipes every disk
//! and reports the outcome, in deploy mode it writes the machine's OS image and its cloud-init
//! seed to its root disk (see deploy.rs) and reports the outcome. It prints what it does on the
//! console, retries the API with backoff, and exits 0 when plinth took its report (the /init
//! then powers off or waits).
//!
//!   plinth-agent [--root DIR] [--dev DIR] [--cmdline FILE]
//!   plinth-agent --wipe DEVICE --method quick|discard|secure|full [--fallback full|fail]
//!   plinth-agent [--root DIR] --diagnose URL
//!
//! `--root` (default /) is where /proc and /sys are read, `--dev` (default /dev) where disks
//! are opened, `--cmdline` (default /proc/cmdline): for tests. `--wipe` wipes one device as
//! the clean mode would, without plinth, and prints the disk's report as JSON (a technician in
//! the ramdisk's shell, and scripts/bench-wipe.sh). When a call to the API fails, the console
//! line names the step that failed (link, address, route, DNS, TCP, TLS, HTTP: see netdiag.rs);
//! `--diagnose URL` makes one GET of URL and prints that line (or that it answered), for a
//! technician in the ramdisk's shell and for the tests.

mod ata;
mod cmdline;
mod deploy;
mod facts;
mod netdiag;
mod partition;
mod seed;
mod sys;
mod wipe;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmdline::{Mode, Params};
use plinth_client::{Error, blocking, path};
use plinth_types::api::{CleanReport, CleanResult, WipeFallback, WipeMethod};

fn say(msg: impl AsRef<str>) {
    println!("plinth-agent: {}", msg.as_ref());
}

struct Args {
    root: PathBuf,
    dev: PathBuf,
    cmdline: PathBuf,
    /// `--wipe DEVICE`: wipe that device only, as `plan` says.
    wipe: Option<(PathBuf, wipe::Plan)>,
    /// `--diagnose URL`: one GET of URL, and which step failed.
    diagnose: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        root: "/".into(),
        dev: "/dev".into(),
        cmdline: "/proc/cmdline".into(),
        wipe: None,
        diagnose: None,
    };
    let (mut device, mut method, mut fallback) = (None, None, WipeFallback::Full);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--root" => a.root = value()?.into(),
            "--dev" => a.dev = value()?.into(),
            "--cmdline" => a.cmdline = value()?.into(),
            "--wipe" => device = Some(PathBuf::from(value()?)),
            "--diagnose" => a.diagnose = Some(value()?),
            "--method" => method = Some(value()?.parse::<WipeMethod>()?),
            "--fallback" => {
                fallback = match value()?.as_str() {
                    "full" => WipeFallback::Full,
                    "fail" => WipeFallback::Fail,
                    other => return Err(format!("--fallback {other}: want full or fail")),
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: plinth-agent [--root DIR] [--dev DIR] [--cmdline FILE]\n       \
                     plinth-agent --wipe DEVICE --method quick|discard|secure|full [--fallback full|fail]\n       \
                     plinth-agent [--root DIR] --diagnose URL"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    match (device, method) {
        (Some(d), Some(method)) => a.wipe = Some((d, wipe::Plan { method, fallback })),
        (Some(_), None) => return Err("--wipe needs --method".into()),
        (None, Some(_)) => return Err("--method goes with --wipe".into()),
        (None, None) => {}
    }
    Ok(a)
}

/// Why a report did not go through.
enum Failure {
    /// plinth said no (4xx): trying again will not help.
    Refused(String),
    /// plinth could not be reached, or failed (5xx), until the deadline.
    GaveUp(String),
}

/// plinth's API with the machine's one-time token (plinth-client's blocking transport: the
/// same paths and bodies as the server's, on ureq).
fn api(p: &Params) -> blocking::Client {
    blocking::Client::new(&p.api, &p.token)
}

/// What went wrong with a call, for the console: the API's message, or the cause.
fn why(e: &Error) -> String {
    match e {
        Error::Api(a) => a.to_string(),
        Error::Status { status, .. } => format!("HTTP {status}"),
        Error::Transport { source, .. } | Error::Body { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Runs `call` (one API call, to `path`) until it succeeds, plinth refuses (4xx), or
/// `p.api_timeout_secs` have passed; transport errors and 5xx are retried with backoff (1 s
/// doubling to 30 s). Each failed attempt names the step that failed (netdiag.rs), reading
/// the machine's network under `root`.
fn call<T>(
    root: &Path,
    p: &Params,
    path: &str,
    call: impl Fn(&blocking::Client) -> Result<T, Error>,
) -> Result<T, Failure> {
    let api = api(p);
    let url = api.url(path);
    let deadline = Instant::now() + Duration::from_secs(p.api_timeout_secs);
    let mut wait = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        let why = match call(&api) {
            Ok(v) => return Ok(v),
            Err(Error::Api(a)) if !(500..).contains(&a.status) => {
                return Err(Failure::Refused(format!(
                    "HTTP {}: {}",
                    a.status,
                    a.message()
                )));
            }
            Err(Error::Status { status, .. }) if status < 500 => {
                return Err(Failure::Refused(format!("HTTP {status}: no message")));
            }
            Err(Error::Decode { source, .. }) => {
                return Err(Failure::GaveUp(format!(
                    "{url}: HTTP failed: unreadable answer: {source}"
                )));
            }
            Err(e) if !e.is_transient() => return Err(Failure::GaveUp(why(&e))),
            Err(e) => netdiag::diagnose(root, &url, &netdiag::Attempt::of(&e)).to_string(),
        };
        if Instant::now() + wait > deadline {
            return Err(Failure::GaveUp(format!(
                "{url}: {why} (gave up after {attempt} attempts)"
            )));
        }
        say(format!(
            "{url}: {why}; attempt {attempt} failed, trying again in {} s",
            wait.as_secs()
        ));
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(30));
        attempt += 1;
    }
}

fn inspect(a: &Args, p: &Params) -> Result<(), String> {
    say("collecting hardware facts");
    let report = facts::collect(&a.root)?;
    say(format!(
        "cpu: {} ({} cores, {} threads); memory: {} MiB; firmware: {:?}; {} {} serial {}",
        report.cpu.model,
        report.cpu.cores,
        report.cpu.threads,
        report.memory_mib,
        report.firmware,
        report.system.vendor,
        report.system.product,
        report.system.serial
    ));
    for d in &report.disks {
        say(format!(
            "disk {}: {} bytes{}{}",
            d.name,
            d.size_bytes,
            d.model
                .as_deref()
                .map(|m| format!(", {m}"))
                .unwrap_or_default(),
            d.serial
                .as_deref()
                .map(|s| format!(", serial {s}"))
                .unwrap_or_default()
        ));
    }
    for n in &report.nics {
        say(format!(
            "nic {}: {} link {}",
            n.name,
            n.mac,
            if n.link == Some(true) { "up" } else { "down" }
        ));
    }
    // (before the report: plinth may power the machine off as soon as it has it)
    say(format!("peak memory {} KiB", peak_kib()));
    say("reporting to plinth");
    match call(&a.root, p, &path::inspection(&p.machine), |api| {
        api.report_inspection(&p.machine, &report)
    }) {
        Ok(m) => {
            say(format!(
                "plinth took the report: the machine is {}",
                m.state
            ));
            Ok(())
        }
        Err(Failure::Refused(e)) => Err(format!("plinth refused the report: {e}")),
        Err(Failure::GaveUp(e)) => Err(format!("could not report: {e}")),
    }
}

fn clean(a: &Args, p: &Params) -> Result<(), String> {
    // How to wipe: plinth's plan for this machine (its pool's method), raised to the kernel
    // command line's floor.
    let plan = match call(&a.root, p, &path::clean_plan(&p.machine), |api| {
        api.clean_plan(&p.machine)
    }) {
        Ok(plan) => plan,
        Err(Failure::Refused(e)) => return Err(format!("plinth refused the clean plan: {e}")),
        Err(Failure::GaveUp(e)) => return Err(format!("could not get the clean plan: {e}")),
    };
    let method = match p.wipe_floor {
        Some(floor) if floor.strength() > plan.method.strength() => floor,
        _ => plan.method,
    };
    let wipe_plan = wipe::Plan {
        method,
        fallback: plan.fallback,
    };
    let found = facts::disks(&a.root);
    say(format!(
        "cleaning {} disk(s), method {method} (fallback {:?}): {}",
        found.len(),
        plan.fallback,
        found
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    for expected in &plan.disks {
        let seen = found.iter().any(|d| match (&expected.serial, &d.serial) {
            (Some(e), Some(s)) => e == s,
            _ => d.name == expected.name && d.size_bytes == expected.size_bytes,
        });
        if !seen {
            say(format!(
                "WARNING: disk {} ({} bytes{}) of the machine's facts is not here",
                expected.name,
                expected.size_bytes,
                expected
                    .serial
                    .as_deref()
                    .map(|s| format!(", serial {s}"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut disks = Vec::new();
    for d in &found {
        let name = &d.name;
        let path = a.dev.join(name);
        say(format!("wiping {} ({method})", path.display()));
        let w = wipe::wipe(
            name,
            d.serial.as_deref(),
            &path,
            wipe_plan,
            |done, total| {
                say(format!(
                    "{name}: {} of {} MiB erased",
                    done / (1024 * 1024),
                    total / (1024 * 1024)
                ))
            },
        );
        match &w.error {
            Some(e) => say(format!("{name}: FAILED: {e}")),
            None => say(format!(
                "{name}: done, {} ({} bytes erased): {}",
                w.method.map_or("?", |m| m.as_str()),
                w.zeroed_bytes,
                w.verification.as_deref().unwrap_or("")
            )),
        }
        disks.push(w);
    }
    let failed: Vec<String> = disks
        .iter()
        .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.name)))
        .collect();
    let report = CleanReport {
        result: if failed.is_empty() {
            CleanResult::Complete
        } else {
            CleanResult::Failed
        },
        reason: (!failed.is_empty()).then(|| failed.join("; ")),
        disks,
    };
    // (before the report: plinth may power the machine off as soon as it has it)
    say(format!("peak memory {} KiB", peak_kib()));
    say("reporting to plinth");
    match call(&a.root, p, &path::clean_report(&p.machine), |api| {
        api.report_clean(&p.machine, &report)
    }) {
        Ok(m) => {
            say(format!(
                "plinth took the report: the machine is {}",
                m.state
            ));
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!("cleaning failed: {}", failed.join("; ")))
            }
        }
        Err(Failure::Refused(e)) => Err(format!("plinth refused the report: {e}")),
        Err(Failure::GaveUp(e)) => Err(format!("could not report: {e}")),
    }
}

/// `--wipe DEVICE`: one device wiped as the clean mode would; the report as JSON on stdout.
fn wipe_one(device: &std::path::Path, plan: wipe::Plan) -> ! {
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let started = Instant::now();
    let w = wipe::wipe(&name, None, device, plan, |done, total| {
        eprintln!(
            "plinth-agent: {name}: {} of {} MiB erased",
            done >> 20,
            total >> 20
        )
    });
    let secs = started.elapsed().as_secs_f64();
    let mut v = serde_json::to_value(&w).unwrap_or_default();
    v["seconds"] = serde_json::json!(secs);
    println!("{v}");
    std::process::exit(if w.error.is_none() { 0 } else { 1 });
}

/// `--diagnose URL`: one GET of `url` (no token), then the answer or the step that failed.
fn diagnose_one(root: &Path, url: &str) -> ! {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(plinth_client::DEFAULT_CONNECT_TIMEOUT)
        .timeout(plinth_client::DEFAULT_TIMEOUT)
        .build();
    let attempt = match agent.get(url).call() {
        Ok(resp) => {
            say(format!("{url}: answered HTTP {}", resp.status()));
            std::process::exit(0);
        }
        Err(e) => netdiag::Attempt::of_ureq(&e),
    };
    say(format!("{url}: {}", netdiag::diagnose(root, url, &attempt)));
    std::process::exit(1);
}

fn run() -> Result<Mode, (Option<Mode>, String)> {
    let a = args().map_err(|e| (None, e))?;
    if let Some((device, plan)) = &a.wipe {
        wipe_one(device, *plan);
    }
    if let Some(url) = &a.diagnose {
        diagnose_one(&a.root, url);
    }
    let text = std::fs::read_to_string(&a.cmdline)
        .map_err(|e| (None, format!("{}: {e}", a.cmdline.display())))?;
    let p = cmdline::parse(&text).map_err(|e| (None, e))?;
    say(format!(
        "mode {}, machine {}, api {}",
        p.mode.as_str(),
        p.machine,
        p.api
    ));
    let res = match p.mode {
        Mode::Inspect => inspect(&a, &p),
        Mode::Clean => clean(&a, &p),
        Mode::Deploy => deploy::run(&a, &p),
    };
    res.map(|()| p.mode).map_err(|e| (Some(p.mode), e))
}

/// The most memory this process has used (VmHWM), in KiB: what the ramdisk must leave free.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    match run() {
        Ok(mode) => {
            println!(
                "PLINTH-AGENT mode={} result=ok peak_kib={}",
                mode.as_str(),
                peak_kib()
            );
        }
        Err((mode, e)) => {
            say(format!("ERROR: {e}"));
            println!(
                "PLINTH-AGENT mode={} result=failed peak_kib={}",
                mode.map_or("unknown", |m| m.as_str()),
                peak_kib()
            );
            std::process::exit(1);
        }
    }
}
