//! The IPMI driver against OpenIPMI's `ipmi_sim` (cipher suite 3), with `ipmitool -I lanplus
//! -C 3` as the reference client on the same simulator. The simulator's chassis control calls
//! a script of this test, which keeps the power state and the last boot device in files.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};
use plinth_bmc::{Bmc, BmcError, BootDevice, BootMode, PowerAction, PowerState};

struct Sim {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn which(p: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {p}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start() -> Sim {
    assert!(
        which("ipmi_sim") && which("ipmitool"),
        "ipmi_sim or ipmitool missing: the test command installs openipmi and ipmitool"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(d.join("power"), "0\n").unwrap();
    let script = d.join("chassis.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # called as: SCRIPT <mc> get|set <item> [value]\n\
             case \"$2 $3\" in\n\
               \"get power\") echo \"power:$(cat {d}/power)\";;\n\
               \"set power\") echo \"$4\" > {d}/power;;\n\
               \"set boot\") echo \"$4\" > {d}/boot;;\n\
             esac\n",
            d = d.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    std::fs::write(
        d.join("lan.conf"),
        format!(
            "name \"bmc\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
             allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
             allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
             guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{} 0x20\"\n\
             user 2 true \"admin\" \"password\" admin 10 none md2 md5 straight\n",
            script.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("bmc.emu"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
         sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    let child = Command::new("ipmi_sim")
        .arg("-c")
        .arg(d.join("lan.conf"))
        .arg("-f")
        .arg(d.join("bmc.emu"))
        .arg("-s")
        .arg(d.join("state"))
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("sim.log")).unwrap())
        .spawn()
        .unwrap();
    let sim = Sim { child, port, dir };
    // Ready when ipmitool gets an answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ipmitool(&sim, &["chassis", "power", "status"]).is_none() {
        assert!(Instant::now() < deadline, "ipmi_sim did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    sim
}

fn ipmitool(sim: &Sim, args: &[&str]) -> Option<String> {
    let out = Command::new("ipmitool")
        .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
        .arg(sim.port.to_string())
        .args(["-U", "admin", "-P", "password", "-N", "1", "-R", "1"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn driver(sim: &Sim, password: &str) -> Ipmi {
    Ipmi::new(IpmiConfig {
        addr: format!("127.0.0.1:{}", sim.port).parse().unwrap(),
        username: "admin".into(),
        password: password.into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: CipherSuite::Three,
    })
}

fn file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn power_and_boot_against_ipmi_sim() {
    let sim = start();
    let bmc = driver(&sim, "password");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(file(sim.dir.path(), "power"), "1");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    assert!(
        ipmitool(&sim, &["chassis", "power", "status"])
            .unwrap()
            .contains("on"),
        "the reference client sees the same"
    );
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    assert_eq!(file(sim.dir.path(), "power"), "0");
    bmc.set_boot(BootDevice::Pxe, false, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(file(sim.dir.path(), "boot"), "pxe");
    let id = bmc.identity().await.unwrap();
    assert!(id.uuid.is_some(), "{id:?}");
}

/// What plinth's workers use: suite 17 first. ipmi_sim has no SHA-256 and says so in Open
/// Session; the driver falls back to suite 3 and keeps it.
#[tokio::test]
async fn the_strongest_suite_falls_back_to_3_on_ipmi_sim() {
    let sim = start();
    let bmc = Ipmi::strongest(IpmiConfig {
        addr: format!("127.0.0.1:{}", sim.port).parse().unwrap(),
        username: "admin".into(),
        password: "password".into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: CipherSuite::Seventeen,
    });
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(bmc.cipher_suite().await, CipherSuite::Three);
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(file(sim.dir.path(), "power"), "1");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let sim = start();
    let e = driver(&sim, "nope").power_state().await.unwrap_err();
    assert_eq!(e, BmcError::Auth);
}

#[tokio::test]
async fn a_silent_or_closed_bmc_is_transient() {
    // Nothing listens on this port: the kernel answers port unreachable.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bmc = Ipmi::new(IpmiConfig {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        username: "admin".into(),
        password: "password".into(),
        timeout: Duration::from_millis(200),
        retries: 1,
        cipher_suite: CipherSuite::Three,
    });
    let e = bmc.power_state().await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    // A socket that takes packets and never answers: a timeout after the retries.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let bmc = Ipmi::new(IpmiConfig {
        addr: silent.local_addr().unwrap(),
        username: "admin".into(),
        password: "password".into(),
        timeout: Duration::from_millis(200),
        retries: 1,
        cipher_suite: CipherSuite::Three,
    });
    let t = Instant::now();
    assert_eq!(bmc.power_state().await.unwrap_err(), BmcError::Timeout);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "two tries of 200 ms"
    );
}
