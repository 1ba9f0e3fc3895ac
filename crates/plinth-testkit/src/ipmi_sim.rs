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
//!
//! Serial over LAN ([`IpmiSim::start_with_sol`]): ipmi_sim's `sol "tcp:HOST:PORT"` makes it
//! connect to a TCP port at start and treat the connection as the machine's serial port; the
//! test's side of it is a [`SerialPort`]. Not `telnet:`: in telnet mode ipmi_sim doubles
//! 0xff into its 32-byte buffer but acknowledges the characters it had no room for as
//! accepted (lanserv/sol.c keeps the packet's length), so they are lost. In tcp mode a break
//! still arrives as the two bytes IAC BRK (0xff 0xf3), which [`SerialPort`] takes as a break:
//! a test must not send that pair as characters. ipmi_sim drops what the serial side sends
//! while no SOL session is active, takes at most 32 characters at a time from the remote
//! console (its Activate Payload answer says so), and retransmits its own packets once a
//! second, adding whatever came from the serial side meanwhile.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ipmi::Fru;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "Sim-Pa55w0rd-9d2c";
/// A second administrator, whose password fits the 16 bytes ipmi_sim's Set User Password
/// keeps (it copies 16 and leaves the rest of a longer one): for password changes (issue 21).
pub const USER2: &str = "plinth";
pub const PASSWORD2: &str = "Sim2-Pa55w0rd-16";
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

    /// With SOL enabled, its serial port the returned [`SerialPort`].
    pub async fn start_with_sol(fru: Option<&Fru>) -> anyhow::Result<(IpmiSim, SerialPort)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let sol_port = listener.local_addr()?.port();
        let sim = IpmiSim::start_inner(fru, GUID_HEX, Some(sol_port))?;
        // ipmi_sim connects while it starts (and every 10 s after a failure): by the time it
        // answers ipmitool the connection waits in the backlog.
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .map_err(|_| {
                anyhow::anyhow!("ipmi_sim did not connect its SOL port: {}", sim.log())
            })??;
        Ok((
            sim,
            SerialPort {
                stream,
                received: Vec::new(),
                breaks: Vec::new(),
                iac: false,
            },
        ))
    }

    /// With SOL enabled, its serial port a VM's ([`crate::vm::VirtualMachine::serial_socket`],
    /// joined by [`crate::vm::relay_serial`] for as long as the simulator runs).
    pub async fn start_with_vm_serial(
        fru: Option<&Fru>,
        vm_serial: &Path,
    ) -> anyhow::Result<IpmiSim> {
        let (sim, port) = IpmiSim::start_with_sol(fru).await?;
        tokio::spawn(crate::vm::relay_serial(
            vm_serial.to_path_buf(),
            port.stream,
        ));
        Ok(sim)
    }

    /// With another GUID (32 hex digits, the bytes as ipmi_sim is to send them).
    pub fn start_with(fru: Option<&Fru>, guid_hex: &str) -> anyhow::Result<IpmiSim> {
        IpmiSim::start_inner(fru, guid_hex, None)
    }

    fn start_inner(
        fru: Option<&Fru>,
        guid_hex: &str,
        sol_port: Option<u16>,
    ) -> anyhow::Result<IpmiSim> {
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
            match IpmiSim::start_on(free_port()?, fru, guid_hex, sol_port) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("ipmi_sim did not start")))
    }

    fn start_on(
        port: u16,
        fru: Option<&Fru>,
        guid_hex: &str,
        sol_port: Option<u16>,
    ) -> anyhow::Result<IpmiSim> {
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
        let sol = sol_port
            .map(|p| format!("  sol \"tcp:127.0.0.1:{p}\" 115200\n"))
            .unwrap_or_default();
        std::fs::write(
            d.join("lan.conf"),
            format!(
                "name \"bmc\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
                 allowed_auths_callback {auths}\n    allowed_auths_user {auths}\n\
                 allowed_auths_operator {auths}\n    allowed_auths_admin {auths}\n\
                 guid {guid_hex}\n  endlan\n  chassis_control \"{} 0x20\"\n{sol}\
                 user 2 true \"{USER}\" \"{PASSWORD}\" admin 10 {auths}\n\
                 user 3 true \"{USER2}\" \"{PASSWORD2}\" admin 10 {auths}\n",
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

    /// Stops the simulator now (a BMC that goes away).
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `ipmitool -I lanplus -C 3` against the simulator: its output, or an error with it.
    pub fn ipmitool(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .ipmitool_command(args)
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

    /// The `ipmitool -I lanplus -C 3` command line, to run as the test likes (`sol activate`
    /// reads its standard input and runs until it reads `~.` there).
    pub fn ipmitool_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ipmitool");
        c.args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", USER, "-E", "-N", "1", "-R", "2"])
            .args(args)
            .env("IPMI_PASSWORD", PASSWORD);
        c
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

const IAC: u8 = 255;
const BRK: u8 = 243;

/// The machine's side of ipmi_sim's SOL serial port: what the remote console typed arrives
/// here, what is written here goes to the remote console.
pub struct SerialPort {
    stream: tokio::net::TcpStream,
    received: Vec<u8>,
    /// Where in `received` each break came.
    breaks: Vec<usize>,
    /// The last byte read was 0xff (IAC): a break if 0xf3 (BRK) follows.
    iac: bool,
}

impl SerialPort {
    /// Sends characters as the machine's serial port would.
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(data).await?;
        Ok(())
    }

    /// Everything received so far, breaks taken out.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// The offsets in [`SerialPort::received`] at which breaks came.
    pub fn breaks(&self) -> &[usize] {
        &self.breaks
    }

    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match (std::mem::take(&mut self.iac), b) {
                (true, BRK) => self.breaks.push(self.received.len()),
                (true, IAC) => {
                    self.received.push(IAC);
                    self.iac = true;
                }
                (true, b) => self.received.extend_from_slice(&[IAC, b]),
                (false, IAC) => self.iac = true,
                (false, b) => self.received.push(b),
            }
        }
    }

    /// Reads until `done` holds for what was received (and the breaks), or fails after
    /// `within` saying what came.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        done: impl Fn(&[u8], &[usize]) -> bool,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 4096];
        while !done(&self.received, &self.breaks) {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => bail!(
                    "the serial port did not get what was expected within {within:?}: received {:?}, breaks at {:?}",
                    String::from_utf8_lossy(&self.received),
                    self.breaks
                ),
                Ok(Ok(0)) => bail!("ipmi_sim closed the serial port"),
                Ok(Ok(n)) => self.take(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads until `want` was received (anywhere in what came so far).
    pub async fn expect(&mut self, want: &[u8], within: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(!want.is_empty(), "expecting nothing");
        self.wait_for(within, |r, _| r.windows(want.len()).any(|w| w == want))
            .await
    }
}
