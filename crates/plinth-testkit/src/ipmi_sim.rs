//! OpenIPMI's `ipmi_sim`, the simulator the IPMI world tests against, as a child process on
//! 127.0.0.1, with `ipmitool -I lanplus -C 3` as the reference client on the same simulator.
//!
//! Its chassis control calls a script of this module (`SCRIPT 0x20 get|set power|boot|reset|
//! shutdown [value]`), which keeps the power state and the boot device in files; a soft
//! shutdown turns the machine off at once, as an OS that obeys ACPI does. How ipmi_sim treats
//! boot flags is its own (OpenIPMI lanserv/bmc_chassis.c): Set System Boot Options parameter 5
//! hands only the device selector to the script ("pxe", "default" for the disk, "cdrom",
//! "bios"); the persistent, EFI and valid bits are not kept, and Get answers them as zero with
//! the script's device (`0004000000` after PXE). Parameter 3 is taken and ignored; Get of it and
//! parameter 0 answer 0xcc. Power cycle is off, then on one second later. FRU device 0 holds
//! what [`IpmiSim::start`] is given; the system GUID is [`GUID_HEX`], sent as written.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ipmi::Fru;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "Sim-Pa55w0rd-9d2c";
/// The GUID in lan.conf, 16 bytes as ipmi_sim sends them: in IPMI order (least significant byte
/// first) a version 4 UUID, `ffeeddcc-bbaa-4977-8866-554433221100`, which `ipmitool mc guid`
/// prints with "GUID Encoding : IPMI". No two bytes alike, so a byte order mistake shows.
pub const GUID_HEX: &str = "00112233445566887749aabbccddeeff";

pub struct IpmiSim {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for IpmiSim {
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

/// A free UDP port below the ephemeral range (LAB.md: a port an outgoing connection just used
/// makes a bind there fail now and then).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = 20_000 + (rand::random::<u16>() % 10_000);
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free UDP port in 20000-29999")
}

impl IpmiSim {
    /// Starts ipmi_sim with one administrator ([`USER`], [`PASSWORD`]), the machine off, no
    /// boot device, [`GUID_HEX`], and `fru` as FRU device 0 (none when `None`).
    pub fn start(fru: Option<&Fru>) -> anyhow::Result<IpmiSim> {
        IpmiSim::start_with(fru, GUID_HEX)
    }

    /// With another GUID (32 hex digits, the bytes as ipmi_sim is to send them).
    pub fn start_with(fru: Option<&Fru>, guid_hex: &str) -> anyhow::Result<IpmiSim> {
        anyhow::ensure!(
            guid_hex.len() == 32 && guid_hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "a GUID is 32 hex digits: {guid_hex:?}"
        );
        if !(which("ipmi_sim") && which("ipmitool")) {
            bail!("ipmi_sim or ipmitool missing: the test command installs openipmi and ipmitool");
        }
        let mut last = None;
        // Another process may take the port between the check and ipmi_sim's bind: try again.
        for _ in 0..3 {
            match IpmiSim::start_on(free_port()?, fru, guid_hex) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("ipmi_sim did not start")))
    }

    fn start_on(port: u16, fru: Option<&Fru>, guid_hex: &str) -> anyhow::Result<IpmiSim> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("power"), "0\n")?;
        let script = d.join("chassis.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 # called as: SCRIPT <mc> get|set <item> [value]\n\
                 echo \"$*\" >> {d}/calls\n\
                 case \"$2 $3\" in\n\
                   \"get power\") echo \"power:$(cat {d}/power)\";;\n\
                   \"set power\") echo \"$4\" > {d}/power;;\n\
                   \"get boot\") echo \"boot:$(cat {d}/boot 2>/dev/null || echo none)\";;\n\
                   \"set boot\") echo \"$4\" > {d}/boot;;\n\
                   \"set shutdown\") echo 0 > {d}/power;;\n\
                 esac\n",
                d = d.display()
            ),
        )?;
        let ok = Command::new("chmod").arg("+x").arg(&script).status()?;
        anyhow::ensure!(ok.success(), "chmod +x {}", script.display());
        let auths = "none md2 md5 straight";
        std::fs::write(
            d.join("lan.conf"),
            format!(
                "name \"bmc\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
                 allowed_auths_callback {auths}\n    allowed_auths_user {auths}\n\
                 allowed_auths_operator {auths}\n    allowed_auths_admin {auths}\n\
                 guid {guid_hex}\n  endlan\n  chassis_control \"{} 0x20\"\n\
                 user 2 true \"{USER}\" \"{PASSWORD}\" admin 10 {auths}\n",
                script.display()
            ),
        )?;
        // Device support 0x9f: chassis, event receiver, FRU inventory, SEL, SDR, sensors.
        let mut emu = String::from(
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n",
        );
        if let Some(f) = fru {
            let bytes = f.to_bytes();
            let data: Vec<String> = bytes.iter().map(|b| format!("{b:#04x}")).collect();
            emu.push_str(&format!(
                "mc_add_fru_data 0x20 0 {} data {}\n",
                bytes.len(),
                data.join(" ")
            ));
        }
        emu.push_str("mc_enable 0x20\n");
        std::fs::write(d.join("bmc.emu"), emu)?;
        std::fs::create_dir_all(d.join("state"))?;
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
            .stderr(std::fs::File::create(d.join("sim.log"))?)
            .spawn()
            .context("starting ipmi_sim")?;
        let mut sim = IpmiSim { child, port, dir };
        // Ready when ipmitool gets an answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        while sim.ipmitool(&["chassis", "power", "status"]).is_err() {
            if let Some(status) = sim.child.try_wait()? {
                bail!("ipmi_sim exited ({status}): {}", sim.log());
            }
            if Instant::now() > deadline {
                bail!("ipmi_sim did not answer within 20 s: {}", sim.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(sim)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `ipmitool -I lanplus -C 3` against the simulator: its output, or an error with it.
    pub fn ipmitool(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", USER, "-E", "-N", "1", "-R", "2"])
            .args(args)
            .env("IPMI_PASSWORD", PASSWORD)
            .output()
            .context("running ipmitool")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "ipmitool {args:?}: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// The power state the chassis script keeps: "1" on, "0" off.
    pub fn power(&self) -> String {
        file(self.dir.path(), "power")
    }

    /// The boot device ipmi_sim last handed the chassis script ("pxe", "default", "bios",
    /// "cdrom"; "" before any).
    pub fn boot(&self) -> String {
        file(self.dir.path(), "boot")
    }

    /// Every call of the chassis script, oldest first ("0x20 set power 1").
    pub fn script_calls(&self) -> Vec<String> {
        file(self.dir.path(), "calls")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn log(&self) -> String {
        file(self.dir.path(), "sim.log")
    }
}

fn file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
