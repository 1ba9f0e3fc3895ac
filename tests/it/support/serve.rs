//! The real `plinth serve` as a child process (on this machine, or inside a lab namespace), its
//! CLI, admin tokens, and machines enrolled with a BMC through the CLI: shared by the
//! cross-process tests.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plinth_testkit::netns::{Lab, Ns, Proc};

use super::BIN;

/// The BMC password the tests enroll their emulated BMCs with.
pub const BMC_PASSWORD: &str = "Bmc-Pa55w0rd-7f3e";

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: each listener is held until all are chosen (ports taken one at a
/// time can repeat, as the kernel may hand a just-closed port out again: the full test command
/// once started plinth with its provisioning TLS listener on its management port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A running `plinth serve`; SIGTERM and wait on drop.
pub struct Serve {
    child: Option<Child>,
    pub url: String,
    pub log: std::path::PathBuf,
}

impl Serve {
    pub fn start(state_dir: &Path, database_url: Option<&str>) -> Serve {
        Serve::start_with(state_dir, database_url, &[])
    }

    /// With extra environment variables (`PLINTH_BMC__LEASE_SECS`, ...).
    pub fn start_with(state_dir: &Path, database_url: Option<&str>, env: &[(&str, &str)]) -> Serve {
        let port = free_port();
        Serve::start_on(
            state_dir,
            database_url,
            &format!("127.0.0.1:{port}"),
            env,
            &format!("http://127.0.0.1:{port}"),
        )
    }

    /// `http.listen` given, and the plain HTTP URL whose `/healthz` says it is up (`url`).
    pub fn start_on(
        state_dir: &Path,
        database_url: Option<&str>,
        listen: &str,
        env: &[(&str, &str)],
        url: &str,
    ) -> Serve {
        let log = state_dir.join(format!("serve-{}.log", listen.replace(':', "-")));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--listen").arg(listen);
        if let Some(u) = database_url {
            cmd.arg("--database-url").arg(u);
        }
        cmd.env("PLINTH_STATE_DIR", state_dir)
            .env_remove("PLINTH_DATABASE__URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let s = Serve {
            child: Some(child),
            url: url.to_owned(),
            log,
        };
        s.wait_healthy();
        s
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(out) = Command::new("curl")
                .args(["-sf", &format!("{}/healthz", self.url)])
                .output()
                && out.status.success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "plinth serve did not become healthy:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "plinth serve exited with {st}:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "plinth serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        self.cli_env(token, args, &[])
    }

    pub fn cli_env(&self, token: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PLINTH_API_URL", &self.url)
            .env("PLINTH_TOKEN", token)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(
            out.status.success(),
            "plinth {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Serve {
    /// SIGKILL: the process dies with whatever it had in flight.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Sends a signal (`HUP`, ...) to the running server.
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("running");
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .ok();
            c.wait().ok();
        }
    }
}

pub fn create_token(
    state_dir: &Path,
    database_url: Option<&str>,
    name: &str,
    role: &str,
) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["admin", "create-token", "--name", name, "--role", role])
        .env("PLINTH_STATE_DIR", state_dir);
    if let Some(u) = database_url {
        cmd.arg("--database-url").arg(u);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "create-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap();
    assert_eq!(secret.lines().count(), 1, "only the secret goes to stdout");
    secret.trim().to_owned()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// `plinth serve` inside `ns` (its state under the lab's `state`), on the database `db_url`, its
/// API on `listen`, with `env` (`PLINTH_...` settings) added; waits up to 30 s for `ready` in
/// its log ("DHCP listening", "plinth is serving").
pub fn serve_in_ns(
    lab: &mut Lab,
    ns: &Ns,
    db_url: &str,
    listen: &str,
    env: &[(&str, &str)],
    ready: &str,
) -> Proc {
    let state = lab.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cmd = Command::new(super::serve_bin());
    cmd.args(["serve", "--database-url", db_url, "--listen", listen])
        .env("PLINTH_STATE_DIR", &state)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied());
    let proc = lab.spawn_named(ns, "plinth", cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proc.log_text().contains(ready) {
        assert!(
            proc.is_running(),
            "plinth serve exited:\n{}",
            proc.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "plinth serve did not log {ready:?} within 30 s:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

/// [`serve_in_ns`] with its DHCP server on `iface` (handing out `boot_server` as the next
/// server) and `more` settings; waits until DHCP listens.
pub fn serve_dhcp_in_ns(
    lab: &mut Lab,
    ns: &Ns,
    db_url: &str,
    listen: &str,
    iface: &str,
    boot_server: &str,
    more: &[(&str, &str)],
) -> Proc {
    let interfaces = format!("[\"{iface}\"]");
    let mut env = vec![
        ("PLINTH_DHCP__ENABLED", "true"),
        ("PLINTH_DHCP__INTERFACES", interfaces.as_str()),
        ("PLINTH_DHCP__BOOT_SERVER", boot_server),
    ];
    env.extend_from_slice(more);
    serve_in_ns(lab, ns, db_url, listen, &env, "DHCP listening")
}

/// Enrolls a machine through the CLI: `hostname`, one NIC `mac`, and a BMC of `protocol`
/// (`redfish`, `ipmi`) at `address` with the user `admin` and `password` (an `http://` address
/// with the plain-HTTP opt-in, as the emulators answer). Its id.
pub fn enroll_with_bmc(
    serve: &Serve,
    token: &str,
    hostname: &str,
    mac: &str,
    protocol: &str,
    address: &str,
    password: &str,
) -> String {
    let mut args = vec![
        "machine",
        "enroll",
        "--hostname",
        hostname,
        "--nic",
        mac,
        "--bmc-protocol",
        protocol,
        "--bmc-address",
        address,
        "--bmc-username",
        "admin",
        "-o",
        "json",
    ];
    if address.starts_with("http://") {
        args.push("--bmc-plain-http");
    }
    let out = serve.cli_env(token, &args, &[("PLINTH_BMC_PASSWORD", password)]);
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&String::from_utf8(out.stdout).unwrap())["id"]
        .as_str()
        .unwrap()
        .to_owned()
}
