//! Serial over LAN against the test kit's IPMI BMC (its SOL written from the specification and
//! checked with ipmitool), with cipher suites 17 and 3, its serial port a stream the test
//! holds: characters both ways, a break, refused and partly accepted packets, datagrams lost
//! both ways, a second activation refused, deactivation by another session and by closing
//! the session, and `ipmitool -I lanplus sol activate` as the reference client on the same BMC.

use std::process::Stdio;
use std::time::Duration;

use plinth_bmc::BmcError;
use plinth_bmc::ipmi::sol::SolSession;
use plinth_bmc::ipmi::{CipherSuite, IpmiConfig};
use plinth_testkit::ipmi::{IpmiEmulator, IpmiEmulatorConfig, Loss, Serial};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const WITHIN: Duration = Duration::from_secs(10);

fn config(emu: &IpmiEmulator, suite: CipherSuite) -> IpmiConfig {
    IpmiConfig {
        addr: emu.addr(),
        username: "admin".into(),
        password: "password".into(),
        timeout: Duration::from_millis(300),
        retries: 4,
        cipher_suite: suite,
    }
}

/// The machine's side of the serial port.
struct Machine {
    port: DuplexStream,
    received: Vec<u8>,
}

impl Machine {
    async fn write(&mut self, b: &[u8]) {
        self.port.write_all(b).await.unwrap();
    }

    /// Reads until `want` came; everything received so far stays in `received`.
    async fn expect(&mut self, want: &[u8]) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        let mut buf = [0u8; 4096];
        while !self.received.windows(want.len()).any(|w| w == want) {
            match tokio::time::timeout_at(deadline, self.port.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.received.extend_from_slice(&buf[..n]),
                other => panic!(
                    "no {:?} at the serial port ({other:?}); got {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&self.received)
                ),
            }
        }
    }
}

async fn bmc() -> (IpmiEmulator, Machine) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let emu = IpmiEmulator::start_with_serial(
        IpmiEmulatorConfig::new("admin", "password"),
        Serial::Stream(Box::new(theirs)),
    )
    .await
    .unwrap();
    let machine = Machine {
        port: ours,
        received: Vec::new(),
    };
    (emu, machine)
}

async fn read_until(sol: &mut SolSession, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !got.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout_at(deadline, sol.read()).await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => panic!("the SOL session ended: {:?}; got {got:?}", sol.ended()),
            Err(_) => panic!(
                "no {:?} on the console within {WITHIN:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

fn ipmitool(emu: &IpmiEmulator, suite: CipherSuite, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ipmitool");
    c.args(["-I", "lanplus", "-H", "127.0.0.1", "-p"])
        .arg(emu.port().to_string())
        .args(["-U", "admin", "-E", "-C"])
        .arg(suite.id().to_string())
        .args(["-N", "1", "-R", "2"])
        .args(args)
        .env("IPMI_PASSWORD", "password")
        .kill_on_drop(true);
    c
}

async fn ipmitool_output(emu: &IpmiEmulator, suite: CipherSuite, args: &[&str]) -> (bool, String) {
    let out = ipmitool(emu, suite, args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("ipmitool is missing: the test command installs it");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn plinth_console(suite: CipherSuite) {
    let (emu, mut machine) = bmc().await;
    let cfg = config(&emu, suite);
    let mut sol = SolSession::activate(&cfg).await.unwrap();
    assert!(emu.sol_active());
    assert_eq!(sol.info().inbound_payload, 104);
    assert_eq!(sol.info().outbound_payload, 204);
    assert_eq!(sol.info().port, emu.port());

    // The machine's output reaches the console in order, once, also in bursts of many packets.
    let burst: Vec<u8> = (0..5000u32)
        .map(|i| b"0123456789abcdef\n"[(i % 17) as usize])
        .collect();
    machine.write(&burst).await;
    machine.write(b"<end>").await;
    let got = read_until(&mut sol, b"<end>").await;
    assert_eq!(
        &got[..got.len() - 5],
        &burst[..],
        "every character once, in order"
    );

    // What the console writes reaches the machine: every byte value, more than a packet's 100,
    // from two writers at once.
    let mut binary: Vec<u8> = vec![0xff; 100];
    binary.extend(0u8..=254);
    binary.extend_from_slice(b"<done>");
    let w = sol.writer();
    let (a, b) = tokio::join!(w.write(&binary[..150]), sol.write(&binary[150..]));
    a.unwrap();
    b.unwrap();
    machine.expect(b"<done>").await;
    assert_eq!(machine.received, binary);

    // A break: recorded once, before the characters written after it.
    sol.send_break().await.unwrap();
    sol.write(b"<after-break>").await.unwrap();
    machine.expect(b"<after-break>").await;
    assert_eq!(emu.sol_stats().breaks, vec![binary.len() as u64]);

    // Packets the BMC refuses (NACK) or takes only in part are offered again: nothing lost,
    // nothing twice.
    emu.sol_nack_next(2);
    sol.write(b"<nacked twice>").await.unwrap();
    machine.expect(b"<nacked twice>").await;
    assert_eq!(emu.sol_stats().nacks, 2);
    emu.set_sol_accept_at_most(Some(3));
    sol.write(b"<three at a time>").await.unwrap();
    machine.expect(b"<three at a time>").await;
    emu.set_sol_accept_at_most(None);
    let tail = b"<after-break><nacked twice><three at a time>";
    assert!(
        machine.received.ends_with(tail),
        "{:?}",
        String::from_utf8_lossy(&machine.received)
    );

    // Datagrams lost both ways: the BMC sends its characters again until acknowledged, and
    // takes a console packet it already has (its acknowledgement was lost) only once.
    emu.set_loss(Loss::Spread { drop: 1, of: 4 });
    emu.set_loss_on_replies(true);
    let lines: Vec<u8> = (0..40u32)
        .flat_map(|i| format!("line {i:02} of the machine\n").into_bytes())
        .collect();
    machine.write(&lines).await;
    machine.write(b"<lossy end>").await;
    let got = read_until(&mut sol, b"<lossy end>").await;
    assert_eq!(&got[..got.len() - 11], &lines[..]);
    let before = machine.received.len();
    for i in 0..10 {
        sol.write(format!("typed {i};").as_bytes()).await.unwrap();
    }
    machine.expect(b"typed 9;").await;
    let typed: String = (0..10).map(|i| format!("typed {i};")).collect();
    assert_eq!(&machine.received[before..], typed.as_bytes());
    let stats = emu.sol_stats();
    assert!(stats.retransmissions > 0, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    emu.set_loss(Loss::None);
    emu.set_loss_on_replies(false);

    // A second activation, plinth's or ipmitool's, is refused while this one lives.
    match SolSession::activate(&cfg).await {
        Err(BmcError::Rejected(m)) => assert_eq!(
            m,
            "SOL is already active in another session (completion code 0x80)"
        ),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second SOL session was activated"),
    }
    let (ok, out) = ipmitool_output(&emu, suite, &["sol", "activate"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("SOL payload already active on another session"),
        "{out}"
    );
    machine.write(b"still here").await;
    read_until(&mut sol, b"still here").await;

    // Deactivated by plinth: the payload is free again.
    sol.close().await.unwrap();
    assert!(!emu.sol_active());
    assert_eq!(emu.sol_stats().deactivations, 1);

    // Deactivated by another session (ipmitool): the BMC says so, and plinth's session ends.
    let mut sol = SolSession::activate(&cfg).await.unwrap();
    machine.write(b"again").await;
    read_until(&mut sol, b"again").await;
    let (ok, out) = ipmitool_output(&emu, suite, &["sol", "deactivate"]).await;
    assert!(ok, "{out}");
    let ended = tokio::time::timeout(WITHIN, async { while sol.read().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the console did not end");
    assert_eq!(
        sol.ended(),
        Some(BmcError::Rejected("the BMC deactivated SOL".into()))
    );
    sol.close().await.unwrap();
    assert!(!emu.sol_active());

    // SOL activated by a session that then closes without deactivating (ipmitool's raw
    // Activate Payload, then its Close Session): the payload goes with the session.
    let (ok, out) = ipmitool_output(
        &emu,
        suite,
        &["raw", "0x06", "0x48", "0x01", "0x01", "0xc6", "0", "0", "0"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(!emu.sol_active(), "{:?}", emu.sol_stats());
    assert_eq!(emu.sol_stats().activations, 3);
    assert_eq!(emu.active_sessions(), 0);
}

#[tokio::test]
async fn plinth_console_with_suite_17() {
    plinth_console(CipherSuite::Seventeen).await;
}

#[tokio::test]
async fn plinth_console_with_suite_3() {
    plinth_console(CipherSuite::Three).await;
}

/// ipmitool's `sol info` reads the configuration parameters; `sol set enabled false` turns
/// SOL off (plinth is told why), and on again.
#[tokio::test]
async fn configuration_parameters_with_ipmitool() {
    let (emu, _machine) = bmc().await;
    let (ok, info) = ipmitool_output(&emu, CipherSuite::Seventeen, &["sol", "info", "1"]).await;
    assert!(ok, "{info}");
    for line in [
        "Enabled                         : true",
        "Force Encryption                : true",
        "Force Authentication            : true",
        "Privilege Level                 : USER",
        "Retry Count                     : 7",
        "Volatile Bit Rate (kbps)        : 115.2",
        "Payload Channel                 : 1 (0x01)",
    ] {
        assert!(info.contains(line), "{line:?} missing from {info}");
    }
    assert!(
        info.contains(&format!("Payload Port                    : {}", emu.port())),
        "{info}"
    );
    let (ok, out) = ipmitool_output(
        &emu,
        CipherSuite::Seventeen,
        &["sol", "set", "enabled", "false", "1", "noguard"],
    )
    .await;
    assert!(ok, "{out}");
    match SolSession::activate(&config(&emu, CipherSuite::Seventeen)).await {
        Err(BmcError::Rejected(m)) => {
            assert_eq!(m, "SOL is disabled on the BMC (completion code 0x81)")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("SOL activated while disabled"),
    }
    emu.set_sol_enabled(true);
    let sol = SolSession::activate(&config(&emu, CipherSuite::Three))
        .await
        .unwrap();
    sol.close().await.unwrap();
}

#[tokio::test]
async fn ipmitool_sol_activate_with_suite_17() {
    ipmitool_console(CipherSuite::Seventeen).await;
}

#[tokio::test]
async fn ipmitool_sol_activate_with_suite_3() {
    ipmitool_console(CipherSuite::Three).await;
}

/// ipmitool as the console: it shows what the machine writes, what is typed in it reaches
/// the machine, its `~B` is a break, and `~.` deactivates.
async fn ipmitool_console(suite: CipherSuite) {
    let (emu, mut machine) = bmc().await;
    let mut tool = ipmitool(&emu, suite, &["sol", "activate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tool.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WITHIN;
    // What the machine writes before activation is thrown away: write until it shows.
    while !seen.windows(12).any(|w| w == b"from-machine") {
        if emu.sol_active() {
            machine.write(b"from-machine\r\n").await;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), out.read(&mut buf)).await
        {
            assert!(n > 0, "ipmitool ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ipmitool saw {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    let mut stdin = tool.stdin.take().unwrap();
    stdin.write_all(b"typed-in-ipmitool").await.unwrap();
    machine.expect(b"typed-in-ipmitool").await;
    // ipmitool's escapes come after a newline: ~B sends a break, ~. ends the session.
    let at = machine.received.len() as u64;
    stdin.write_all(b"\r~B").await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while emu.sol_stats().breaks.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no break");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ipmitool sends the break at once and the characters it read with the escape (the \r)
    // after it.
    assert_eq!(emu.sol_stats().breaks, vec![at]);
    machine.expect(b"typed-in-ipmitool\r").await;
    stdin.write_all(b"\r~.").await.unwrap();
    let status = tokio::time::timeout(WITHIN, tool.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!emu.sol_active());
    assert_eq!(emu.active_sessions(), 0, "ipmitool closed its session");
    assert_eq!(emu.sol_stats().deactivations, 1);
}
