//! The Redfish driver against sushy-tools' Redfish emulator (fake driver), with and without an
//! htpasswd file. The test command installs sushy-tools into a venv (`PLINTH_SUSHY_EMULATOR`
//! names its `sushy-emulator`). sushy applies power changes after a delay, so the test polls.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, BootDevice, BootMode, PowerAction, PowerState, set_boot_verified};

const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
const MAC: &str = "52:54:00:12:34:56";

fn emulator() -> PathBuf {
    let p = std::env::var_os("PLINTH_SUSHY_EMULATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/plinth-venv/bin/sushy-emulator"));
    assert!(
        p.exists(),
        "{} not found: the test command installs sushy-tools into a venv",
        p.display()
    );
    p
}

struct Sushy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A python helper for the bcrypt htpasswd entry, from the same venv.
fn bcrypt_hash(password: &str) -> String {
    let python = emulator().with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())",
            password,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn start(auth: Option<(&str, &str)>) -> Sushy {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut conf = format!(
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
         SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'vm1', 'power_state': 'Off', \
         'nics': [{{'mac': '{MAC}', 'ip': '10.0.0.5'}}]}}]\n\
         SUSHY_EMULATOR_STATE_DIR = '{}'\n\
         SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
         SUSHY_EMULATOR_LISTEN_PORT = {port}\n",
        dir.path().join("state").display()
    );
    if let Some((user, pw)) = auth {
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, format!("{user}:{}\n", bcrypt_hash(pw))).unwrap();
        conf.push_str(&format!(
            "SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
            file.display()
        ));
    }
    let conf_file = dir.path().join("conf.py");
    std::fs::write(&conf_file, conf).unwrap();
    let child = Command::new(emulator())
        .arg("--config")
        .arg(&conf_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let s = Sushy {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sushy-emulator did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

fn driver(port: u16, user: &str, pw: &str) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        username: user.into(),
        password: pw.into(),
        verify_tls: false,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(30),
    })
    .unwrap()
}

async fn wait_power(bmc: &Redfish, want: PowerState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = bmc.power_state().await.unwrap();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "power stayed {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn power_boot_and_identity_against_sushy() {
    let s = start(Some(("admin", "s3cret")));
    let bmc = driver(s.port, "admin", "s3cret");

    let id = bmc.identity().await.unwrap();
    assert_eq!(id.uuid.map(|u| u.to_string()).as_deref(), Some(UUID));
    assert!(id.macs.iter().any(|m| m.to_string() == MAC), "{id:?}");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

    set_boot_verified(&bmc, BootDevice::Pxe, false, Some(BootMode::Uefi))
        .await
        .unwrap();
    let o = bmc.boot_override().await.unwrap();
    assert_eq!(o.device, Some(BootDevice::Pxe));
    set_boot_verified(&bmc, BootDevice::Disk, true, None)
        .await
        .unwrap();
    assert_eq!(
        bmc.boot_override().await.unwrap().device,
        Some(BootDevice::Disk)
    );

    bmc.power(PowerAction::On).await.unwrap();
    wait_power(&bmc, PowerState::On).await;
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    wait_power(&bmc, PowerState::Off).await;
    // A cycle of a machine that is off powers it on.
    bmc.power(PowerAction::Cycle).await.unwrap();
    wait_power(&bmc, PowerState::On).await;

    // Wrong credentials: a clear error, and it carries no password.
    let bad = driver(s.port, "admin", "wrong");
    let e = bad.power_state().await.unwrap_err();
    assert_eq!(e, BmcError::Auth);
    assert!(!e.to_string().contains("wrong"));
}

#[tokio::test]
async fn an_unreachable_bmc_is_a_transient_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = driver(port, "a", "b").power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Unreachable(_)), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn without_authentication() {
    let s = start(None);
    let bmc = driver(s.port, "anyone", "anything");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}
