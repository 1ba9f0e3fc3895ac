//! What the tests with VMs and `plinth serve` in namespaces share: the images root that
//! `images/build.sh` builds (with the agent the workspace's test build made) and a launcher
//! for plinth with DHCP and TFTP on a lab interface.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use plinth_testkit::netns::{Lab, Ns, Proc};

use super::{BIN, repo};

/// The images root built by `images/build.sh` once per test run (it is idempotent and skips
/// what is up to date), copied per test so that tests can add files of their own.
pub fn built_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
        // The agent the workspace's test build made, next to this package's binary (building
        // it here would wait on the lock cargo holds while tests run).
        let agent = std::env::var_os("PLINTH_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(BIN).with_file_name("plinth-agent"));
        assert!(
            agent.exists(),
            "{} missing: build it first (cargo build -p plinth-agent; scripts/test.sh does) or set PLINTH_AGENT_BIN",
            agent.display()
        );
        let out = Command::new("bash")
            .arg(repo().join("images/build.sh"))
            .arg(&dir)
            .env("PLINTH_AGENT_BIN", &agent)
            .output()
            .expect("running images/build.sh");
        assert!(
            out.status.success(),
            "images/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn images_for(lab: &Lab) -> PathBuf {
    let root = lab.path("images");
    let out = Command::new("cp")
        .arg("-a")
        .arg(built_images())
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    root
}

pub fn plinth(
    lab: &mut Lab,
    ns: &Ns,
    iface: &str,
    db_url: &str,
    server_ip: &str,
    root: &Path,
    extra: &[(&str, &str)],
) -> Proc {
    let state = lab.path("state");
    let mut env = vec![(
        "PLINTH_LOG__LEVEL".to_owned(),
        "plinth_tftp=debug,plinth_api=debug,info".to_owned(),
    )];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    plinth_testkit::rack::start_plinth(
        lab,
        ns,
        &plinth_testkit::rack::ServeSpec {
            bin: Path::new(BIN),
            iface,
            server_ip,
            images_root: root,
            state_dir: &state,
            database_url: Some(db_url),
            env,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `plinth serve` in `ns` with neither DHCP nor TFTP (a network where plinth hands out no
/// address: virtual-media boots), its API on 0.0.0.0:8080, started when `/healthz` answers
/// at `server_ip`.
pub fn plinth_without_dhcp(
    lab: &mut Lab,
    ns: &Ns,
    db_url: &str,
    server_ip: &str,
    root: &Path,
    extra: &[(&str, &str)],
) -> Proc {
    let state = lab.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "0.0.0.0:8080",
        "--database-url",
        db_url,
    ])
    .env("PLINTH_STATE_DIR", &state)
    .env("PLINTH_IMAGES__ROOT", root)
    .env("PLINTH_DHCP__ENABLED", "false")
    .env("PLINTH_TFTP__ENABLED", "false")
    .env("PLINTH_LOG__LEVEL", "plinth_api=debug,info")
    .env("NO_COLOR", "1")
    .envs(extra.iter().copied());
    let proc = lab.spawn_named(ns, "plinth", cmd).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = lab
            .run(
                ns,
                "curl",
                &["-sf", &format!("http://{server_ip}:8080/healthz")],
            )
            .unwrap();
        if out.status.success() {
            return proc;
        }
        assert!(
            proc.is_running(),
            "plinth serve exited:\n{}",
            proc.log_text()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "plinth serve did not answer:\n{}",
            proc.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
