//! Serial over LAN against OpenIPMI's `ipmi_sim`, its serial port a TCP connection the test
//! holds (plinth_testkit::ipmi_sim::SerialPort), with `ipmitool -I lanplus sol activate` as
//! the reference client on the same simulator.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use plinth_bmc::BmcError;
use plinth_bmc::ipmi::sol::SolSession;
use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, SerialPort, USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

const WITHIN: Duration = Duration::from_secs(10);

fn config(sim: &IpmiSim, suite: CipherSuite) -> IpmiConfig {
    IpmiConfig {
        addr: sim.addr(),
        username: USER.into(),
        password: PASSWORD.into(),
        timeout: Duration::from_millis(500),
        retries: 3,
        cipher_suite: suite,
    }
}

/// Reads console output until `want` came; everything read.
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

/// ipmi_sim drops what its serial port sends while no SOL session is active, and activation
/// is not instant on its side: write until the console shows it.
async fn handshake(sol: &mut SolSession, serial: &mut SerialPort, line: &[u8]) {
    serial.write(line).await.unwrap();
    read_until(sol, line).await;
}

#[tokio::test]
async fn sol_against_ipmi_sim() {
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    // As plinth's workers make the driver: suite 17 first, which ipmi_sim does not have.
    let driver = Ipmi::strongest(config(&sim, CipherSuite::Seventeen));
    let mut sol = driver.activate_sol().await.unwrap();
    assert_eq!(driver.cipher_suite().await, CipherSuite::Three);
    // ipmi_sim takes 32 bytes at a time from the console, the session's own port.
    assert_eq!(sol.info().inbound_payload, 32);
    assert_eq!(sol.info().port, sim.port);

    // The machine's output reaches the console, in order, also in bursts larger than a
    // packet (ipmi_sim sends at most 255 characters in one).
    handshake(&mut sol, &mut serial, b"login: ").await;
    let burst: Vec<u8> = (0..5000u32)
        .map(|i| b"0123456789abcdef\n"[(i % 17) as usize])
        .collect();
    serial.write(&burst).await.unwrap();
    serial.write(b"<end>").await.unwrap();
    let got = read_until(&mut sol, b"<end>").await;
    assert_eq!(
        &got[..got.len() - 5],
        &burst[..],
        "every character once, in order"
    );

    // What the console writes reaches the serial port: characters of every value, more than
    // a packet's 28 (ipmi_sim's 32 less the header).
    sol.write(b"root\r\n").await.unwrap();
    serial.expect(b"root\r\n", WITHIN).await.unwrap();
    let mut binary: Vec<u8> = vec![0xff; 100];
    binary.extend(0u8..=254);
    binary.extend_from_slice(b"<done>");
    let before = serial.received().len();
    // Several writers at once: their characters accumulate into shared packets.
    let w = sol.writer();
    let (a, b) = tokio::join!(w.write(&binary[..150]), sol.write(&binary[150..]));
    a.unwrap();
    b.unwrap();
    serial.expect(b"<done>", WITHIN).await.unwrap();
    assert_eq!(&serial.received()[before..], &binary[..]);

    // A break, then characters: the break comes before them, once. (ipmi_sim passes a break
    // on to its serial port with the next characters it writes there.)
    sol.send_break().await.unwrap();
    let at = serial.received().len();
    sol.write(b"<after-break>").await.unwrap();
    serial.expect(b"<after-break>", WITHIN).await.unwrap();
    assert_eq!(&serial.received()[at..], b"<after-break>");
    assert_eq!(serial.breaks(), &[at]);

    // A second activation, ours or ipmitool's, is refused while this one lives.
    let again = SolSession::activate(&config(&sim, CipherSuite::Three)).await;
    match again {
        Err(BmcError::Rejected(m)) => assert_eq!(
            m,
            "SOL is already active in another session (completion code 0x80)"
        ),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second SOL session was activated"),
    }
    let refused = sim.ipmitool(&["sol", "activate"]).unwrap_err().to_string();
    assert!(
        refused.contains("SOL payload already active on another session"),
        "{refused}"
    );
    // Still alive after those.
    handshake(&mut sol, &mut serial, b"still here").await;

    // Deactivated: a new session may activate it (and is refused no more). Its packets are
    // numbered after the last one's (see LAST_SEQ in sol.rs): ipmi_sim would take a first
    // packet that repeats the last number for a retransmission and drop its characters.
    sol.close().await.unwrap();
    let mut sol = driver.activate_sol().await.unwrap();
    handshake(&mut sol, &mut serial, b"welcome back").await;
    sol.write(b"<again>").await.unwrap();
    serial.expect(b"<again>", WITHIN).await.unwrap();
    sol.close().await.unwrap();
}

/// ipmitool first, then plinth, on one simulator's console: ipmitool sees what the machine
/// writes and what is typed in it reaches the machine; after its `~.` plinth does the same.
///
/// ipmi_sim keeps the last sequence number it accepted across SOL sessions, and takes a new
/// session's first packet for a duplicate when it carries that number again (both clients
/// start at 1): ipmitool's session here sends two packets, so that plinth's first is not
/// taken for one.
#[tokio::test]
async fn ipmitool_then_plinth_on_one_console() {
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let mut ipmitool = tokio::process::Command::from(sim.ipmitool_command(&["sol", "activate"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = ipmitool.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut buf = [0u8; 1024];
    while !seen.windows(9).any(|w| w == b"from-sim\n") {
        // Written again until ipmitool's session is active (ipmi_sim drops it before).
        serial.write(b"from-sim\n").await.unwrap();
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
    // While ipmitool holds the console, plinth is refused.
    let driver = Ipmi::new(config(&sim, CipherSuite::Three));
    match driver.activate_sol().await {
        Err(BmcError::Rejected(m)) => assert!(m.contains("completion code 0x80"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("plinth activated SOL while ipmitool had it"),
    }
    let mut stdin = ipmitool.stdin.take().unwrap();
    for typed in [&b"typed-in-ipmitool"[..], b"<second>"] {
        stdin.write_all(typed).await.unwrap();
        serial.expect(typed, WITHIN).await.unwrap();
    }
    // ipmitool's escape: a newline, then ~. ends its session and deactivates.
    stdin.write_all(b"\r~.").await.unwrap();
    let status = tokio::time::timeout(WITHIN, ipmitool.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    let mut sol = driver.activate_sol().await.unwrap();
    handshake(&mut sol, &mut serial, b"plinth's turn").await;
    sol.write(b"typed-in-plinth").await.unwrap();
    serial.expect(b"typed-in-plinth", WITHIN).await.unwrap();
    sol.close().await.unwrap();
}

/// What plinth says when SOL is disabled, and what becomes of a session whose payload another
/// client deactivates, or whose BMC goes away: writes fail, the reader ends, and the session
/// says why.
#[tokio::test]
async fn refusals_and_sessions_that_end() {
    let (mut sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let driver = Ipmi::new(config(&sim, CipherSuite::Three));
    sim.ipmitool(&["sol", "set", "enabled", "false", "1", "noguard"])
        .unwrap();
    match driver.activate_sol().await {
        Err(BmcError::Rejected(m)) => {
            assert_eq!(m, "SOL is disabled on the BMC (completion code 0x81)")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("SOL activated while disabled"),
    }
    sim.ipmitool(&["sol", "set", "enabled", "true", "1", "noguard"])
        .unwrap();

    // Another client deactivates our payload: ipmi_sim drops our packets from then on.
    let mut sol = driver.activate_sol().await.unwrap();
    handshake(&mut sol, &mut serial, b"up").await;
    sim.ipmitool(&["sol", "deactivate"]).unwrap();
    let e = sol.write(b"lost").await.unwrap_err();
    assert_eq!(e, BmcError::Timeout);
    assert_eq!(sol.ended(), Some(BmcError::Timeout));
    assert_eq!(
        tokio::time::timeout(WITHIN, sol.read()).await.unwrap(),
        None
    );
    assert!(!serial.received().ends_with(b"lost"));
    sol.close().await.unwrap();

    // The BMC goes away under an active session.
    let mut sol = driver.activate_sol().await.unwrap();
    handshake(&mut sol, &mut serial, b"up again").await;
    sim.kill();
    let e = sol.write(b"into the void").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(sol.ended(), Some(e));
    assert_eq!(
        tokio::time::timeout(WITHIN, sol.read()).await.unwrap(),
        None
    );
}

/// ipmi_sim closes a session that is idle for 30 s (an ipmitool shell left alone for 35 s
/// finds its session gone): a console nobody types into and whose machine is silent stays
/// open through the session's keepalive.
#[tokio::test]
async fn an_idle_console_stays_open() {
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let driver = Ipmi::new(config(&sim, CipherSuite::Three));
    let mut sol = driver.activate_sol().await.unwrap();
    handshake(&mut sol, &mut serial, b"before").await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(sol.ended(), None);
    serial.write(b"after the silence").await.unwrap();
    read_until(&mut sol, b"after the silence").await;
    sol.write(b"still typing").await.unwrap();
    serial.expect(b"still typing", WITHIN).await.unwrap();
    sol.close().await.unwrap();
}

/// A UDP relay between plinth and the simulator that drops every `every`-th datagram in each
/// direction while its budget of drops lasts (none at first). It listens on 127.0.0.2 at the
/// simulator's port, so that the port ipmi_sim names for SOL is the one plinth talks to.
struct LossyRelay {
    addr: std::net::SocketAddr,
    budget: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl LossyRelay {
    async fn start(bmc: std::net::SocketAddr, every: usize) -> LossyRelay {
        let front = UdpSocket::bind(("127.0.0.2", bmc.port())).await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(bmc).await.unwrap();
        let budget = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let relay = LossyRelay {
            addr: front.local_addr().unwrap(),
            budget: budget.clone(),
            dropped: dropped.clone(),
        };
        let drop_one = move |count: &mut usize| {
            *count += 1;
            let take = count.is_multiple_of(every)
                && budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_ok();
            if take {
                dropped.fetch_add(1, Ordering::SeqCst);
            }
            take
        };
        tokio::spawn(async move {
            let (mut up, mut down) = (0usize, 0usize);
            let mut client = None;
            let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if !drop_one(&mut up) {
                            back.send(&a[..n]).await.ok();
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { continue };
                        if let Some(c) = client.filter(|_| !drop_one(&mut down)) {
                            front.send_to(&b[..n], c).await.ok();
                        }
                    }
                }
            }
        });
        relay
    }

    /// Drops up to `n` more datagrams; how many were dropped so far.
    fn lose(&self, n: usize) -> usize {
        self.budget.store(n, Ordering::SeqCst);
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Lost datagrams lose no character. Typing with a quarter of the datagrams lost each way:
/// plinth retransmits what was not acknowledged (ipmi_sim acknowledges a repeated packet
/// again without taking its characters twice). The machine's output with a few lost:
/// ipmi_sim retransmits, and plinth acknowledges again and takes only the characters a
/// retransmission added. (ipmi_sim drops what it was sending after five retransmissions
/// without an answer in one busy stretch, counted across packets, so its side is given a
/// few losses only.)
#[tokio::test]
async fn lost_datagrams_lose_no_character() {
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let relay = LossyRelay::start(sim.addr(), 4).await;
    let mut cfg = config(&sim, CipherSuite::Three);
    cfg.addr = relay.addr;
    cfg.retries = 8;
    let mut sol = SolSession::activate(&cfg).await.unwrap();
    handshake(&mut sol, &mut serial, b"ready").await;

    relay.lose(usize::MAX);
    let typed: Vec<u8> = (0..600u32)
        .map(|i| b"0123456789"[(i % 10) as usize])
        .collect();
    let at = serial.received().len();
    for chunk in typed.chunks(50) {
        sol.write(chunk).await.unwrap();
    }
    // Every write returned when all its characters were accepted: they are there by now,
    // or on their way from ipmi_sim's buffer.
    let want = at + typed.len();
    serial
        .wait_for(WITHIN, |r, _| r.len() >= want)
        .await
        .unwrap();
    assert_eq!(&serial.received()[at..], &typed[..]);
    let lost_typing = relay.lose(0);
    assert!(lost_typing >= 10, "{lost_typing} datagrams lost");

    relay.lose(3);
    let from_machine: Vec<u8> = (0..3000u32)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\r\n"[(i % 28) as usize])
        .collect();
    for chunk in from_machine.chunks(300) {
        serial.write(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serial.write(b"<eof>").await.unwrap();
    let got = read_until(&mut sol, b"<eof>").await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&[&from_machine[..], b"<eof>"].concat()),
        "every character once, in order"
    );
    assert_eq!(relay.lose(0) - lost_typing, 3);
    sol.close().await.unwrap();
}
