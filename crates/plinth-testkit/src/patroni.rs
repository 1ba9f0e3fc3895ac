//! A real Patroni-managed PostgreSQL cluster on 127.0.0.1, for plinth's failover tests: one etcd
//! member and `n` Patroni nodes, each running Debian's PostgreSQL (the newest
//! `/usr/lib/postgresql/N/bin`), with streaming replication in synchronous mode. The test
//! command installs Debian's `patroni` and `etcd-server` (../PACKAGES).
//!
//! Patroni talks to etcd's v3 API (`etcd3:`; Patroni 3.0.2 has its own client for etcd's JSON
//! gateway, so etcd 3.4 needs no `--enable-v2`). Everything of one cluster lives in one temp
//! dir: the etcd data, each node's Patroni config, data directory, Unix socket and log
//! (`nodeI/patroni.log`, where PostgreSQL's own log lines land too). As root, etcd, Patroni
//! and so PostgreSQL run as the `postgres` user; otherwise as the caller.
//!
//! Failover takes about [`TTL`] seconds plus a promotion: the primary's leader key in etcd
//! must expire before a replica may take it. Synchronous mode (not strict) means a commit
//! returns only once the synchronous standby has flushed it, and only that standby may be
//! promoted, so a failover loses no committed transaction; with no standby left the primary
//! goes on alone.
//!
//! The calls block (processes, HTTP to Patroni's REST API, `psql`); from a tokio test call
//! them inside `tokio::task::block_in_place` (multi-threaded runtime). Dropping the cluster
//! kills every process and removes the dir, also when a test panics. PostgreSQL's postmaster
//! is not Patroni's child (Patroni detaches it so that it outlives a Patroni restart), so it is
//! found by its `postmaster.pid` and killed with its children by pid.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Seconds before a dead primary's leader key expires in etcd. Patroni 3.0.2 enforces no
/// minimum (newer versions document 20). Patroni's rule: `LOOP_WAIT + 2 * RETRY_TIMEOUT <=
/// TTL`.
pub const TTL: u32 = 8;
/// Seconds between two runs of Patroni's loop (its minimum, 1).
pub const LOOP_WAIT: u32 = 1;
/// Seconds Patroni retries etcd and PostgreSQL calls before giving up (newer Patroni's
/// documented minimum, 3).
pub const RETRY_TIMEOUT: u32 = 3;
/// The password of the database user `plinth`, owner of the database `plinth`.
pub const PASSWORD: &str = "plinth-ha-Pa55";
/// PostgreSQL's superuser, `postgres`, and its password (pg_rewind and the harness use it).
pub const SUPERUSER_PASSWORD: &str = "postgres-ha-Pa55";
const REPLICATION_USER: &str = "replicator";
const REPLICATION_PASSWORD: &str = "replicator-ha-Pa55";
/// `max_connections` on every node: room for several plinth instances' pools.
pub const MAX_CONNECTIONS: u32 = 300;

/// How long [`Cluster::start`] waits for a leader and its replicas.
const START_TIMEOUT: Duration = Duration::from_secs(120);

struct Node {
    name: String,
    dir: PathBuf,
    pg_port: u16,
    rest_port: u16,
    /// The running Patroni, `None` once killed.
    patroni: Mutex<Option<Child>>,
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }
}

/// A running cluster; see the module's doc.
pub struct Cluster {
    nodes: Vec<Node>,
    etcd: Mutex<Child>,
    etcd_port: u16,
    run_as: Option<(u32, u32)>,
    // Last, so that it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

/// A member of Patroni's `GET /cluster`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Member {
    pub name: String,
    /// `leader`, `sync_standby` or `replica`.
    pub role: String,
    /// `running`, `starting`, `stopped`, `crashed`, ...
    pub state: String,
    #[serde(default)]
    pub timeline: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ClusterView {
    members: Vec<Member>,
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid, without unsafe libc calls.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn find_program(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .with_context(|| {
            format!("{name} is not installed: the test command installs Debian's {package}")
        })
}

/// A free TCP port on 127.0.0.1 below the ephemeral range (an outgoing connection's local
/// port there can make a later bind fail), not one of `taken`.
fn free_port(taken: &mut HashSet<u16>) -> anyhow::Result<u16> {
    for _ in 0..500 {
        let port = 20_000 + (rand::random::<u16>() % 10_000);
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    bail!("no free TCP port in 20000-29999")
}

/// The last `lines` lines of a log, without Patroni's once-a-second "no action" lines.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("INFO: no action. I am"))
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// The pids of `root`'s descendants, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// Sends a signal (`kill`'s `-STOP`, `-CONT`, `-KILL`) to every pid at once.
fn signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .ok();
}

/// Runs `cmd`, killing it after `timeout`: its stdout, or an error with its stderr.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{}", stderr.trim());
    }
    // psql prints a cancelled wait for synchronous replication as a warning and succeeds.
    if stderr.contains("WARNING") {
        bail!("{}", stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn http_get_json<T: serde::de::DeserializeOwned>(url: &str) -> anyhow::Result<T> {
    Ok(ureq::get(url)
        .timeout(Duration::from_secs(2))
        .call()?
        .into_json()?)
}

impl Cluster {
    /// Starts etcd and `n` Patroni nodes and waits until there is a leader with `n - 1`
    /// streaming replicas, one of them synchronous, and the database `plinth` owned by the
    /// user `plinth` ([`PASSWORD`]).
    pub fn start(n: usize) -> anyhow::Result<Cluster> {
        anyhow::ensure!(n >= 1, "a cluster has at least one node");
        let patroni = find_program("patroni", "patroni")?;
        let etcd = find_program("etcd", "etcd-server")?;
        let bindir = plinth_db::embedded::find_bindir()
            .context("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")?;
        let run_as =
            if is_root() {
                Some(postgres_user().context(
                    "running as root but there is no 'postgres' user to run PostgreSQL as",
                )?)
            } else {
                None
            };
        let dir = tempfile::Builder::new()
            .prefix("plinth-patroni-")
            .tempdir()?;
        let mut taken = HashSet::new();
        let etcd_port = free_port(&mut taken)?;
        let etcd_peer_port = free_port(&mut taken)?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let node = Node {
                name: format!("node{i}"),
                dir: dir.path().join(format!("node{i}")),
                pg_port: free_port(&mut taken)?,
                rest_port: free_port(&mut taken)?,
                patroni: Mutex::new(None),
            };
            std::fs::create_dir(&node.dir)?;
            std::fs::write(node.config(), patroni_config(&node, etcd_port, &bindir))?;
            nodes.push(node);
        }
        std::fs::create_dir(dir.path().join("etcd"))?;
        if let Some((uid, gid)) = run_as {
            for entry in walk(dir.path())? {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", entry.display()))?;
            }
        }
        let etcd_child = {
            let mut cmd = Command::new(etcd);
            let peer = format!("http://127.0.0.1:{etcd_peer_port}");
            let client = format!("http://127.0.0.1:{etcd_port}");
            cmd.arg("--name=etcd0")
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join("etcd/data").display()
                ))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=etcd0={peer}"))
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("etcd/etcd.log"))?)
                .current_dir(dir.path().join("etcd"));
            if let Some((uid, gid)) = run_as {
                cmd.uid(uid).gid(gid);
            }
            cmd.spawn().context("starting etcd")?
        };
        let cluster = Cluster {
            nodes,
            etcd: Mutex::new(etcd_child),
            etcd_port,
            run_as,
            dir,
        };
        cluster.wait_for_etcd(Duration::from_secs(30))?;
        for i in 0..n {
            cluster.spawn_patroni(i, &patroni)?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let leader = cluster.wait_healthy(n, deadline)?;
        cluster
            .psql(
                leader,
                "postgres",
                &[
                    &format!("create role plinth login password '{PASSWORD}'"),
                    "create database plinth owner plinth",
                ],
            )
            .with_context(|| {
                format!(
                    "creating the user and database plinth\n{}",
                    cluster.log_tails()
                )
            })?;
        Ok(cluster)
    }

    fn wait_for_etcd(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/health", self.etcd_port);
        loop {
            if let Ok(v) = http_get_json::<serde_json::Value>(&url)
                && v["health"] == "true"
            {
                return Ok(());
            }
            if let Some(status) = self.etcd.lock().unwrap().try_wait()? {
                bail!("etcd exited ({status}):\n{}", self.etcd_log());
            }
            if Instant::now() > deadline {
                bail!("etcd not healthy within {timeout:?}:\n{}", self.etcd_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn_patroni(&self, i: usize, program: &Path) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log())?;
        let mut cmd = Command::new(program);
        cmd.arg(node.config())
            .env("HOME", &node.dir)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting patroni for {}", node.name))?;
        *node.patroni.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Patroni's view of the cluster, from the first node whose REST API answers.
    pub fn members(&self) -> Option<Vec<Member>> {
        self.nodes.iter().find_map(|node| {
            http_get_json::<ClusterView>(&format!("http://127.0.0.1:{}/cluster", node.rest_port))
                .ok()
                .map(|v| v.members)
        })
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until Patroni reports `n` running members: a leader and `n - 1` replicas, one of
    /// them the synchronous standby, which the leader's `pg_stat_replication` confirms. The
    /// leader's index.
    fn wait_healthy(&self, n: usize, deadline: Instant) -> anyhow::Result<usize> {
        loop {
            let last = match self.healthy(n) {
                Ok(leader) => return Ok(leader),
                Err(e) => e,
            };
            for node in &self.nodes {
                if let Some(child) = node.patroni.lock().unwrap().as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "patroni of {} exited ({status})\n{}",
                        node.name,
                        self.log_tails()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster did not become healthy: {last:#}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn healthy(&self, n: usize) -> anyhow::Result<usize> {
        let members = self.members().context("no Patroni REST API answered")?;
        let running: Vec<&Member> = members.iter().filter(|m| m.state == "running").collect();
        let leader = running
            .iter()
            .find(|m| m.role == "leader")
            .context("no running leader yet")?;
        let sync = running.iter().filter(|m| m.role == "sync_standby").count();
        anyhow::ensure!(
            running.len() == n,
            "{} of {n} members running: {members:?}",
            running.len()
        );
        anyhow::ensure!(
            n == 1 || sync == 1,
            "no synchronous standby yet: {members:?}"
        );
        let leader = self.index_of(&leader.name).context("an unknown leader")?;
        let rows = self.psql(
            leader,
            "postgres",
            &["select state || ' ' || sync_state from pg_stat_replication"],
        )?;
        let streaming = rows.lines().filter(|l| l.starts_with("streaming")).count();
        let synchronous = rows.lines().filter(|l| *l == "streaming sync").count();
        anyhow::ensure!(
            streaming == n - 1 && (n == 1 || synchronous == 1),
            "the leader's pg_stat_replication: {rows:?}"
        );
        Ok(leader)
    }

    /// Runs SQL statements (each in its own transaction) with psql as the superuser on node
    /// `i`, with a 10 s limit; what psql printed (unaligned, tuples only).
    pub fn psql(&self, i: usize, database: &str, statements: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(crate::pg_tool("psql")?);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "postgres://postgres@127.0.0.1:{}/{database}?connect_timeout=3",
                self.nodes[i].pg_port
            ))
            .env("PGPASSWORD", SUPERUSER_PASSWORD);
        for s in statements {
            cmd.arg("-c").arg(s);
        }
        run_with_timeout(cmd, Duration::from_secs(10))
            .with_context(|| format!("psql on {}", self.nodes[i].name))
    }

    /// The libpq multi-host URL of the database `plinth` that connects to whichever node
    /// accepts writes (`target_session_attrs=read-write`). sqlx does not understand it.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        format!(
            "postgres://plinth:{PASSWORD}@{}/plinth?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// The same over the nodes' Unix sockets (libpq's `?host=/a,/b&port=1,2` form), for
    /// plinth instances in network namespaces of their own, which cannot reach this
    /// namespace's loopback but share its file system.
    pub fn socket_url(&self) -> String {
        let dirs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.dir.display().to_string())
            .collect();
        let ports: Vec<String> = self.nodes.iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "postgres://plinth@localhost/plinth?host={}&port={}&target_session_attrs=read-write",
            dirs.join(","),
            ports.join(",")
        )
    }

    /// Node `i`'s Unix socket (`.s.PGSQL.<port>` in its dir).
    pub fn socket(&self, i: usize) -> PathBuf {
        self.nodes[i]
            .dir
            .join(format!(".s.PGSQL.{}", self.nodes[i].pg_port))
    }

    /// Each node's own URL of the database `plinth`, in node order.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "postgres://plinth:{PASSWORD}@127.0.0.1:{}/plinth",
                    n.pg_port
                )
            })
            .collect()
    }

    /// Node `i`'s PostgreSQL port.
    pub fn pg_port(&self, i: usize) -> u16 {
        self.nodes[i].pg_port
    }

    /// The index of the node Patroni says is the running leader.
    pub fn primary(&self) -> Option<usize> {
        let members = self.members()?;
        let leader = members
            .iter()
            .find(|m| m.role == "leader" && m.state == "running")?;
        self.index_of(&leader.name)
    }

    /// The index of the node Patroni made the synchronous standby.
    pub fn sync_standby(&self) -> Option<usize> {
        let members = self.members()?;
        let standby = members
            .iter()
            .find(|m| m.role == "sync_standby" && m.state == "running")?;
        self.index_of(&standby.name)
    }

    /// Node `i`'s processes: its Patroni, its postmaster and their descendants.
    fn pids(&self, i: usize, patroni: Option<&Child>) -> Vec<u32> {
        let mut pids = vec![];
        if let Some(child) = patroni {
            pids.push(child.id());
            pids.extend(descendants(child.id()));
        }
        if let Some(pm) = self.postmaster(i) {
            pids.push(pm);
            pids.extend(descendants(pm));
        }
        pids
    }

    /// Stops (SIGSTOP) every process of node `i`, as a machine that hangs: its connections
    /// stay open and nothing answers on them. [`Cluster::thaw_node`] resumes it.
    pub fn freeze_node(&self, i: usize) {
        let patroni = self.nodes[i].patroni.lock().unwrap();
        signal(&self.pids(i, patroni.as_ref()), "-STOP");
    }

    /// Resumes (SIGCONT) the processes of a frozen node.
    pub fn thaw_node(&self, i: usize) {
        let patroni = self.nodes[i].patroni.lock().unwrap();
        signal(&self.pids(i, patroni.as_ref()), "-CONT");
    }

    /// Kills the primary as if its machine died: its Patroni, its postmaster and every child
    /// of either, stopped together and then killed (SIGKILL), so that nothing restarts it and
    /// its leader key must expire. The killed node's index.
    pub fn kill_primary(&self) -> anyhow::Result<usize> {
        let i = self
            .primary()
            .with_context(|| format!("no primary to kill\n{}", self.log_tails()))?;
        self.kill_node(i);
        Ok(i)
    }

    /// Kills node `i` (Patroni, PostgreSQL and their children) with SIGKILL.
    pub fn kill_node(&self, i: usize) {
        let node = &self.nodes[i];
        let mut patroni = node.patroni.lock().unwrap_or_else(|e| e.into_inner());
        let pids = self.pids(i, patroni.as_ref());
        // Stopped first, so that none of them sees another die.
        signal(&pids, "-STOP");
        signal(&pids, "-KILL");
        if let Some(mut child) = patroni.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Node `i`'s postmaster pid, if its `postmaster.pid` names a live postgres of this data
    /// directory.
    fn postmaster(&self, i: usize) -> Option<u32> {
        let data = self.nodes[i].data_dir();
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("postgres") && cmdline.contains(data.to_str()?)).then_some(pid)
    }

    /// Waits until a node other than `not` is the leader and commits a write; its index.
    pub fn wait_for_primary(&self, not: usize, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no leader yet");
        loop {
            if let Some(i) = self.primary().filter(|&i| i != not) {
                match self.probe_write(i) {
                    Ok(()) => return Ok(i),
                    Err(e) => last = format!("{} is leader but: {e:#}", self.nodes[i].name),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no new primary within {timeout:?}: {last}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A committed insert on node `i` (in the database `postgres`, not plinth's).
    fn probe_write(&self, i: usize) -> anyhow::Result<()> {
        self.psql(
            i,
            "postgres",
            &[
                "create table if not exists harness_probe (at timestamptz not null default now())",
                "insert into harness_probe default values",
            ],
        )?;
        Ok(())
    }

    /// Starts a killed node's Patroni again and waits until it is back as a streaming
    /// replica (pg_rewind, or a fresh copy, when it had diverged), with all `n` members
    /// running and a synchronous standby.
    pub fn restart_node(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.nodes[i].patroni.lock().unwrap().is_none(),
            "{} is running",
            self.nodes[i].name
        );
        self.spawn_patroni(i, &find_program("patroni", "patroni")?)?;
        let leader = self.wait_healthy(self.nodes.len(), Instant::now() + timeout)?;
        anyhow::ensure!(
            leader != i,
            "{} came back as the leader",
            self.nodes[i].name
        );
        Ok(())
    }

    /// The temp dir holding everything (logs in `nodeI/patroni.log` and `etcd/etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn etcd_log(&self) -> String {
        tail(&self.dir.path().join("etcd/etcd.log"), 20)
    }

    /// The end of every node's log and of etcd's, for error messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "--- {} ({}):\n{}\n",
                node.name,
                node.log().display(),
                tail(&node.log(), 25)
            ));
        }
        out.push_str(&format!("--- etcd:\n{}\n", self.etcd_log()));
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        let mut etcd = self.etcd.lock().unwrap_or_else(|e| e.into_inner());
        etcd.kill().ok();
        etcd.wait().ok();
    }
}

/// Every path under `root`, `root` included.
fn walk(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            for e in std::fs::read_dir(&out[i])? {
                out.push(e?.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Node `node`'s Patroni configuration.
fn patroni_config(node: &Node, etcd_port: u16, bindir: &Path) -> String {
    let dir = node.dir.display();
    let bindir = bindir.display();
    let (name, pg, rest) = (&node.name, node.pg_port, node.rest_port);
    format!(
        r#"scope: plinth
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
watchdog:
  mode: off
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_mode_strict: false
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      parameters:
        max_connections: {MAX_CONNECTIONS}
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
  initdb:
    - encoding: UTF8
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bindir}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    replication:
      username: {REPLICATION_USER}
      password: {REPLICATION_PASSWORD}
  parameters:
    unix_socket_directories: '{dir}'
  basebackup:
    - checkpoint: fast
  pg_hba:
    - local all all trust
    - host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
"#
    )
}
