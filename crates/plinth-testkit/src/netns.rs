//! A network-namespace lab: namespaces, veth pairs, bridges and taps that exist only while a
//! [`Lab`] lives, and the processes started inside them.
//!
//! Nothing here touches the machine's own interfaces: every `ip` call names one of the lab's
//! namespaces (`ip -n NS ...`, `ip netns exec NS ...`), veth ends are created directly inside
//! their namespaces, and every method refuses an [`Ns`] that this lab did not create.
//!
//! Dropping the lab (also while a test panics) stops every process it started (SIGTERM, then
//! SIGKILL), kills whatever else is still inside its namespaces (`ip netns pids`), and deletes
//! the namespaces. A test process that dies without unwinding (SIGKILL, abort) leaves its
//! namespaces behind; every namespace is registered under [`REGISTRY`] with its owner's pid, and
//! the next [`Lab::new`] on the machine removes the ones whose owner is gone.
//!
//! Names are unique per lab (a random tag) so tests run in parallel, and fit in 15 characters.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// Where each live lab namespace is registered with the pid (and start time) of its owner, so a
/// later lab can remove namespaces that a killed test process left behind. Lives on /run, a
/// tmpfs that, like the namespaces themselves, does not survive a reboot.
pub const REGISTRY: &str = "/run/plinth-testkit/netns";

/// Every lab namespace name starts with this, which keeps them apart from anyone else's.
pub const PREFIX: &str = "ptk";

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Timeout for the `ip` plumbing calls (they take milliseconds).
const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// A network namespace created by a [`Lab`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ns {
    pub name: String,
}

/// A long-running process started with [`Lab::spawn`]. The lab keeps a handle too, and stops it
/// when dropped if nobody did before.
pub struct Proc {
    pub pid: u32,
    /// Its stdout and stderr, together.
    pub log: PathBuf,
    child: Arc<Mutex<Child>>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.pid)
            .field("log", &self.log)
            .finish()
    }
}

impl Proc {
    /// What it has printed so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal by name (`"TERM"`, `"USR1"`, ...). Refused once it has exited, so a reused
    /// pid is never signalled: the pid stays ours until the lab reaps it.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let child = lock(&self.child);
        signal_child(child, self.pid, signal)
    }

    /// SIGTERM, then SIGKILL after a grace period; waits for it to exit. Idempotent.
    pub fn kill(&mut self) {
        stop_all(std::slice::from_ref(&self.child), GRACE);
    }
}

fn lock(child: &Mutex<Child>) -> std::sync::MutexGuard<'_, Child> {
    // A panic while holding the lock leaves a Child that is still fine to wait on.
    child
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn signal_child(
    mut child: std::sync::MutexGuard<'_, Child>,
    pid: u32,
    signal: &str,
) -> anyhow::Result<()> {
    if let Some(status) = child.try_wait()? {
        bail!("process {pid} already exited ({status})");
    }
    let out = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running kill")?;
    ensure!(
        out.status.success(),
        "kill -s {signal} {pid}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Stops processes together: SIGTERM to all, a shared grace period, then SIGKILL.
fn stop_all(children: &[Arc<Mutex<Child>>], grace: Duration) {
    for child in children {
        let guard = lock(child);
        let pid = guard.id();
        if signal_child(guard, pid, "TERM").is_err() {
            // Already exited, or kill(1) failed: the SIGKILL below covers the latter.
        }
    }
    let deadline = Instant::now() + grace;
    for child in children {
        let mut guard = lock(child);
        loop {
            match guard.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    guard.kill().ok();
                    guard.wait().ok();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Namespaces, links and processes for one test. See the module docs.
pub struct Lab {
    dir: Option<tempfile::TempDir>,
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Arc<Mutex<Child>>>,
    /// Long-running helpers that other modules look up again by key (a DHCP client per
    /// interface, say).
    kept: HashMap<String, Proc>,
    links: u32,
    files: AtomicU32,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("dir", &self.dir())
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// An empty lab with a fresh temp dir. Fails if not root or `ip` (iproute2) is missing.
    pub fn new() -> anyhow::Result<Lab> {
        ensure!(
            effective_uid()? == 0,
            "the network-namespace lab needs root (creating namespaces and veth pairs)"
        );
        let ip = which("ip").context("`ip` not found: apt-get install iproute2")?;
        let out = Command::new(&ip)
            .args(["netns", "list"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", ip.display()))?;
        ensure!(
            out.status.success(),
            "`ip netns list` failed (no network-namespace support?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix("plinth-lab-")
            .tempdir()
            .context("creating the lab's temp dir")?;
        Ok(Lab {
            dir: Some(dir),
            tag: fresh_tag(),
            namespaces: Vec::new(),
            children: Vec::new(),
            kept: HashMap::new(),
            links: 0,
            files: AtomicU32::new(0),
        })
    }

    /// The lab's temp dir: logs, configs, lease files. Removed on drop, except after a panic,
    /// when it is kept (and its path printed) so the logs can be read.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| Path::new("/nonexistent"), |d| d.path())
    }

    /// The namespaces created so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Creates a namespace (name: [`PREFIX`], the lab's tag, a counter, then `label` cut to fit
    /// 15 characters) with `lo` up.
    pub fn namespace(&mut self, label: &str) -> anyhow::Result<Ns> {
        let label: String = label
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut name = format!(
            "{PREFIX}{}{}{label}",
            self.tag,
            base36(self.namespaces.len() as u64)
        );
        name.truncate(15);
        ensure!(
            !Path::new("/run/netns").join(&name).exists(),
            "namespace {name} already exists"
        );
        // Registered before it exists, so a crash in between leaves nothing unaccounted for.
        register(&name).with_context(|| format!("registering namespace {name}"))?;
        if let Err(err) = ip(&["netns", "add", &name]) {
            unregister(&name);
            return Err(err);
        }
        self.namespaces.push(name.clone());
        let ns = Ns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn check(&self, ns: &Ns) -> anyhow::Result<()> {
        ensure!(
            self.namespaces.contains(&ns.name),
            "namespace {} does not belong to this lab",
            ns.name
        );
        Ok(())
    }

    fn next_iface(&mut self, kind: &str) -> String {
        self.links += 1;
        // "tk" + 5-char tag + kind (1-2) + counter: at most 12 characters.
        format!("tk{}{kind}{}", self.tag, base36(u64::from(self.links)))
    }

    /// A veth pair between two namespaces (or two ends in one), both ends up. Returns the
    /// interface names (the `a` end, the `b` end).
    pub fn link(&mut self, a: &Ns, b: &Ns) -> anyhow::Result<(String, String)> {
        self.check(a)?;
        self.check(b)?;
        let base = self.next_iface("v");
        let (ia, ib) = (format!("{base}a"), format!("{base}b"));
        // Both ends are created inside their namespaces: nothing appears on the host.
        ip(&[
            "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns",
            &b.name,
        ])?;
        ip(&["-n", &a.name, "link", "set", &ia, "up"])?;
        ip(&["-n", &b.name, "link", "set", &ib, "up"])?;
        Ok((ia, ib))
    }

    /// `ip addr add CIDR dev IFACE` in `ns`, e.g. `"10.99.0.1/24"`.
    pub fn addr(&self, ns: &Ns, iface: &str, cidr: &str) -> anyhow::Result<()> {
        self.check(ns)?;
        ip(&["-n", &ns.name, "addr", "add", cidr, "dev", iface])
    }

    /// `ip route add ARGS...` in `ns`, e.g. `&["10.99.2.0/24", "via", "10.99.1.2"]`.
    pub fn route(&self, ns: &Ns, args: &[&str]) -> anyhow::Result<()> {
        self.check(ns)?;
        let mut all = vec!["-n", ns.name.as_str(), "route", "add"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a MAC address (`ip link set dev IFACE address MAC`).
    pub fn set_mac(&self, ns: &Ns, iface: &str, mac: &str) -> anyhow::Result<()> {
        self.check(ns)?;
        ip(&["-n", &ns.name, "link", "set", "dev", iface, "address", mac])
    }

    /// The interface's MAC address.
    pub fn mac(&self, ns: &Ns, iface: &str) -> anyhow::Result<String> {
        self.check(ns)?;
        let out = self.run_timeout(
            ns,
            "cat",
            &[&format!("/sys/class/net/{iface}/address")],
            IP_TIMEOUT,
        )?;
        ensure!(out.status.success(), "no interface {iface} in {}", ns.name);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `sysctl -w KEY=VALUE` inside `ns`. Only `net.` keys: the others are not per-namespace,
    /// and setting them here would change the host.
    pub fn sysctl(&self, ns: &Ns, key: &str, value: &str) -> anyhow::Result<()> {
        self.check(ns)?;
        ensure!(
            key.starts_with("net."),
            "sysctl {key}: only net.* keys are per network namespace"
        );
        let kv = format!("{key}={value}");
        let out = self.run_timeout(ns, "sysctl", &["-q", "-w", &kv], IP_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "sysctl -w {kv} in {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// A bridge in `ns` (forward_delay 0, STP off, so ports forward at once) with `members`
    /// enslaved; everything up. Returns the bridge's name.
    pub fn bridge(&mut self, ns: &Ns, members: &[&str]) -> anyhow::Result<String> {
        self.check(ns)?;
        let br = self.next_iface("br");
        let n = ns.name.as_str();
        ip(&[
            "-n",
            n,
            "link",
            "add",
            &br,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        for m in members {
            ip(&["-n", n, "link", "set", m, "master", &br])?;
            ip(&["-n", n, "link", "set", m, "up"])?;
        }
        ip(&["-n", n, "link", "set", &br, "up"])?;
        Ok(br)
    }

    /// A tap device in `ns` (for a VM's NIC), up. Returns its name.
    pub fn tap(&mut self, ns: &Ns) -> anyhow::Result<String> {
        self.check(ns)?;
        let tap = self.next_iface("tp");
        ip(&["-n", &ns.name, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["-n", &ns.name, "link", "set", &tap, "up"])?;
        Ok(tap)
    }

    /// Runs `program args...` to completion inside `ns` and returns its output whatever its
    /// exit status (like [`Command::output`]). No time limit: see [`Lab::run_timeout`].
    pub fn run(&self, ns: &Ns, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.run_inner(ns, program, args, None)
    }

    /// [`Lab::run`], killing it and failing after `timeout`.
    pub fn run_timeout(
        &self,
        ns: &Ns,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        self.run_inner(ns, program, args, Some(timeout))
    }

    fn run_inner(
        &self,
        ns: &Ns,
        program: &str,
        args: &[&str],
        timeout: Option<Duration>,
    ) -> anyhow::Result<Output> {
        self.check(ns)?;
        // Output goes to files rather than pipes: a daemon that forks and keeps our stdout
        // cannot make us wait for it.
        let base = self.path(&format!("run-{program}"));
        let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
        let mut cmd = netns_exec(&ns.name);
        cmd.arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?);
        let what = format!("{program} {} (in {})", args.join(" "), ns.name);
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "{what} did not finish within {:?}; it printed:\n{}{}",
                    timeout.unwrap_or_default(),
                    read_lossy(&out_path),
                    read_lossy(&err_path)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Output {
            status,
            stdout: fs::read(&out_path).unwrap_or_default(),
            stderr: fs::read(&err_path).unwrap_or_default(),
        })
    }

    /// Starts `cmd` (its program, arguments, environment changes and working dir are kept;
    /// stdio is replaced) inside `ns` as a tracked process. stdout and stderr go to
    /// `dir()/N-PROGRAM.log`.
    pub fn spawn(&mut self, ns: &Ns, cmd: Command) -> anyhow::Result<Proc> {
        let name = file_stem(&cmd.get_program().to_string_lossy());
        self.spawn_named(ns, &name, cmd)
    }

    /// [`Lab::spawn`] with the log named `dir()/N-NAME.log`.
    pub fn spawn_named(&mut self, ns: &Ns, name: &str, cmd: Command) -> anyhow::Result<Proc> {
        let log = self.path(name).with_extension("log");
        self.spawn_logged(ns, log, cmd)
    }

    /// A fresh path in [`Lab::dir`]: `dir()/N-NAME` (N counts up), for configs, pid files and
    /// logs that must not collide.
    pub fn path(&self, name: &str) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir().join(format!("{n}-{}", file_stem(name)))
    }

    /// [`Lab::spawn`] with stdout and stderr going to `log`.
    pub fn spawn_logged(&mut self, ns: &Ns, log: PathBuf, cmd: Command) -> anyhow::Result<Proc> {
        self.check(ns)?;
        let name = file_stem(&cmd.get_program().to_string_lossy());
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // `ip netns exec` execs the program, so the pid we get is the program's own.
        let mut wrapped = netns_exec(&ns.name);
        wrapped.arg(cmd.get_program()).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(cwd) = cmd.get_current_dir() {
            wrapped.current_dir(cwd);
        }
        wrapped
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = wrapped
            .spawn()
            .with_context(|| format!("starting {name} in {}", ns.name))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        self.children.push(child.clone());
        Ok(Proc { pid, log, child })
    }

    /// Keeps a process under a key, for helpers that find it again later.
    pub(crate) fn keep(&mut self, key: String, proc: Proc) {
        self.kept.insert(key, proc);
    }

    pub(crate) fn kept(&self, key: &str) -> Option<&Proc> {
        self.kept.get(key)
    }

    pub(crate) fn take_kept(&mut self, key: &str) -> Option<Proc> {
        self.kept.remove(key)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (they may want to say goodbye over the links), then whatever is still
        // in the namespaces, then the namespaces.
        stop_all(&self.children, GRACE);
        for name in self.namespaces.drain(..).rev() {
            if let Err(err) = delete_namespace(&name) {
                eprintln!("plinth-testkit lab: {err:#}");
            }
        }
        // Otherwise the TempDir field removes the directory.
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!(
                "plinth-testkit lab: kept {} for the logs after a panic",
                path.display()
            );
        }
    }
}

/// Kills everything in the namespace, deletes it and its registry entry.
fn delete_namespace(name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + GRACE;
    loop {
        let pids = netns_pids(name);
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("plinth-testkit lab: pids {pids:?} still in {name} after SIGKILL");
            break;
        }
        let mut kill = Command::new("kill");
        kill.args(["-s", "KILL"])
            .args(pids.iter().map(u32::to_string));
        kill.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kill.status().ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = if Path::new("/run/netns").join(name).exists() {
        ip(&["netns", "del", name])
    } else {
        Ok(())
    };
    unregister(name);
    result
}

fn netns_pids(name: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `ip netns exec NAME`, to which the program and its arguments are appended.
fn netns_exec(name: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name]);
    cmd
}

/// Runs `ip ARGS` on the host (the args name the namespace) and checks it worked.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (apt-get install iproute2)")?;
    let deadline = Instant::now() + IP_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            bail!("ip {} hung for {IP_TIMEOUT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn file_stem(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "proc".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Finds a program in PATH, or in the sbin directories a non-login root shell may lack.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn effective_uid() -> anyhow::Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .context("no effective uid in /proc/self/status")
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Five random base-36 characters (60 million values): std's randomly keyed hasher over the
/// pid, a counter and the time.
fn fresh_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let mut tag = base36(h.finish() % 36u64.pow(5));
    while tag.len() < 5 {
        tag.insert(0, '0');
    }
    tag
}

/// "PID STARTTIME" of a process, which tells it apart from a later one with the same pid.
fn process_identity(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start at field 3; starttime is 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

fn register(name: &str) -> anyhow::Result<()> {
    let dir = Path::new(REGISTRY);
    fs::create_dir_all(dir)?;
    let me = process_identity(std::process::id()).context("reading our own /proc/self/stat")?;
    // Written aside and renamed into place: a sweep reading a half-written entry would
    // take its owner for dead and delete a namespace in use.
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, format!("{me}\n"))?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn unregister(name: &str) {
    fs::remove_file(Path::new(REGISTRY).join(name)).ok();
}

/// Deletes registered namespaces whose owner process is gone.
fn sweep_stale() {
    let Ok(entries) = fs::read_dir(REGISTRY) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let owner = fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(pid) = owner.split_whitespace().next().and_then(|p| p.parse().ok()) else {
            // Unreadable or being written by hand: not ours to judge.
            continue;
        };
        let alive = process_identity(pid).is_some_and(|id| id == owner.trim());
        if !alive && let Err(err) = delete_namespace(&name) {
            eprintln!("plinth-testkit lab: removing stale {name}: {err:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        let tag = fresh_tag();
        assert_eq!(tag.len(), 5);
        assert!(tag.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(fresh_tag(), fresh_tag());
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn identifies_our_own_process() {
        let me = process_identity(std::process::id()).unwrap();
        assert!(me.starts_with(&format!("{} ", std::process::id())));
        assert_eq!(process_identity(std::process::id()).unwrap(), me);
    }
}
