//! The IPMI driver against the test kit's IPMI emulator (cross-checked with ipmitool in its own
//! tests), with cipher suites 3 and 17: power, boot overrides read back and checked in the
//! emulator's state, identity, credentials, a suite the BMC does not offer, lost datagrams
//! (a deterministic pattern, so the tests cannot flake), total loss, and duplicated datagrams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};
use plinth_bmc::{
    Bmc, BmcError, BootDevice, BootMode, BootOverride, PowerAction, PowerState, set_boot_verified,
};
use plinth_testkit::ipmi::{BootSelector, Fru, IpmiEmulator, IpmiEmulatorConfig, Loss};
use tokio::net::UdpSocket;

const SUITES: [CipherSuite; 2] = [CipherSuite::Three, CipherSuite::Seventeen];

fn config(
    addr: SocketAddr,
    suite: CipherSuite,
    user: &str,
    password: &str,
    timeout: Duration,
    retries: u32,
) -> IpmiConfig {
    IpmiConfig {
        addr,
        username: user.into(),
        password: password.into(),
        timeout,
        retries,
        cipher_suite: suite,
    }
}

fn driver(emu: &IpmiEmulator, suite: CipherSuite) -> Ipmi {
    Ipmi::new(config(
        emu.addr(),
        suite,
        "admin",
        "password",
        Duration::from_millis(500),
        2,
    ))
}

async fn emulator() -> (IpmiEmulator, uuid::Uuid) {
    let mut cfg = IpmiEmulatorConfig::new("admin", "password");
    cfg.fru = Some(Fru::new("Emulated Co", "EM-1", "E-123").to_bytes());
    let guid = cfg.guid;
    (IpmiEmulator::start(cfg).await.unwrap(), guid)
}

async fn power_boot_and_identity(suite: CipherSuite) {
    let (emu, guid) = emulator().await;
    let bmc = driver(&emu, suite);
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.power(PowerAction::On).await.unwrap();
    assert!(emu.power());
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    bmc.power(PowerAction::Cycle).await.unwrap();
    bmc.power(PowerAction::Reset).await.unwrap();
    assert!(emu.power());
    assert_eq!(emu.boots().len(), 3, "power on, cycle, reset");
    bmc.power(PowerAction::Off { force: false }).await.unwrap();
    assert!(!emu.power(), "soft off (the emulated OS obeys)");
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    // A reset of a machine that is off: completion code 0xd5 comes back as a refusal.
    assert!(matches!(
        bmc.power(PowerAction::Reset).await,
        Err(BmcError::Rejected(m)) if m.contains("0xd5")
    ));
    // A cycle of a machine that is off powers it on.
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert!(emu.power());
    assert_eq!(emu.boots().len(), 4);

    for (device, persistent, mode, selector) in [
        (
            BootDevice::Pxe,
            false,
            Some(BootMode::Uefi),
            BootSelector::Pxe,
        ),
        (
            BootDevice::Disk,
            true,
            Some(BootMode::Bios),
            BootSelector::Disk,
        ),
        (BootDevice::BiosSetup, false, None, BootSelector::BiosSetup),
        (
            BootDevice::Pxe,
            true,
            Some(BootMode::Uefi),
            BootSelector::Pxe,
        ),
        (
            BootDevice::Cdrom,
            false,
            Some(BootMode::Bios),
            BootSelector::Cdrom,
        ),
    ] {
        bmc.set_boot(device, persistent, mode).await.unwrap();
        let flags = emu.boot_flags();
        assert!(flags.valid(), "{device:?}: {flags:?}");
        assert_eq!(flags.selector(), selector);
        assert_eq!(flags.persistent(), persistent);
        assert_eq!(flags.efi(), mode == Some(BootMode::Uefi));
        assert_eq!(
            bmc.boot_override().await.unwrap(),
            BootOverride {
                device: Some(device),
                persistent,
                // No mode asked for is legacy (the efi bit clear), and reads back as BIOS.
                mode: Some(mode.unwrap_or(BootMode::Bios)),
                unconfirmed: None,
            }
        );
    }
    // Boot flags are written inside "set in progress", which is left complete.
    let sets: Vec<Vec<u8>> = emu
        .commands()
        .into_iter()
        .filter(|c| (c.netfn, c.cmd) == (0x00, 0x08))
        .map(|c| c.data)
        .collect();
    // The 60-s valid-bit clearing is turned off first (parameter 3, bit 3), once: later
    // overrides find it off already.
    assert_eq!(sets[0], [0x03, 0x08]);
    assert_eq!(sets[1], [0x00, 0x01]);
    assert_eq!(sets[2][0], 0x05);
    assert_eq!(sets[3], [0x00, 0x00]);
    assert_eq!(
        sets.iter().filter(|s| s[0] == 0x03).count(),
        1,
        "{sets:02x?}"
    );
    assert_eq!(emu.valid_bit_clearing(), 0x08);
    let in_progress = emu
        .commands()
        .iter()
        .filter(|c| c.netfn == 0x00 && c.completion != 0)
        .count();
    assert_eq!(
        in_progress, 1,
        "only the reset of a machine that was off failed"
    );

    // A one-time override is used by the next boot, and then reads back as none.
    set_boot_verified(&bmc, BootDevice::Pxe, false, Some(BootMode::Uefi))
        .await
        .unwrap();
    bmc.power(PowerAction::Reset).await.unwrap();
    let last = *emu.boots().last().unwrap();
    assert_eq!((last.selector(), last.efi()), (BootSelector::Pxe, true));
    assert_eq!(bmc.boot_override().await.unwrap().device, None);

    let id = bmc.identity().await.unwrap();
    assert_eq!(
        id.uuid,
        Some(guid),
        "the system GUID, read least significant byte first"
    );
    // FRU data, read 32 bytes at a time: the product area's names and serial.
    assert_eq!(
        (
            id.manufacturer.as_deref(),
            id.model.as_deref(),
            id.serial.as_deref()
        ),
        (Some("Emulated Co"), Some("EM-1"), Some("E-123"))
    );

    // One session served all of that; closing it ends it on the BMC.
    let s = emu.stats();
    assert_eq!(
        (s.sessions_opened, s.rejected, s.dropped),
        (1, 0, 0),
        "{s:?}"
    );
    assert_eq!(emu.active_sessions(), 1);
    bmc.close().await;
    assert_eq!(emu.active_sessions(), 0);
    assert_eq!(emu.stats().sessions_closed, 1);
}

#[tokio::test]
async fn power_boot_and_identity_with_suite_3() {
    power_boot_and_identity(CipherSuite::Three).await;
}

#[tokio::test]
async fn power_boot_and_identity_with_suite_17() {
    power_boot_and_identity(CipherSuite::Seventeen).await;
}

#[tokio::test]
async fn wrong_credentials_are_auth_errors() {
    let (emu, _) = emulator().await;
    for suite in SUITES {
        for (user, password) in [("admin", "wrong"), ("nobody", "password"), ("admin", "")] {
            let bmc = Ipmi::new(config(
                emu.addr(),
                suite,
                user,
                password,
                Duration::from_millis(500),
                1,
            ));
            assert_eq!(
                bmc.power_state().await.unwrap_err(),
                BmcError::Auth,
                "{suite} {user}/{password:?}"
            );
        }
        assert_eq!(
            driver(&emu, suite).power_state().await.unwrap(),
            PowerState::Off
        );
    }
    assert_eq!(emu.stats().sessions_opened, 2, "only the right credentials");
}

#[tokio::test]
async fn a_bmc_without_suite_17_is_unsupported() {
    let mut cfg = IpmiEmulatorConfig::new("admin", "password");
    cfg.cipher_suites = vec![3];
    let emu = IpmiEmulator::start(cfg).await.unwrap();
    let e = driver(&emu, CipherSuite::Seventeen)
        .power_state()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BmcError::Unsupported(m) if m.contains("cipher suite 17") && m.contains("0x11")),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert_eq!(
        driver(&emu, CipherSuite::Three)
            .power_state()
            .await
            .unwrap(),
        PowerState::Off
    );
    // What plinth uses when no suite is configured: 17 where offered, else 3, remembered.
    let auto = Ipmi::strongest(config(
        emu.addr(),
        CipherSuite::Three,
        "admin",
        "password",
        Duration::from_millis(500),
        2,
    ));
    assert_eq!(auto.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(auto.cipher_suite().await, CipherSuite::Three);
    auto.close().await;
    assert_eq!(auto.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(auto.cipher_suite().await, CipherSuite::Three);
    let both = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", "password"))
        .await
        .unwrap();
    let auto = Ipmi::strongest(config(
        both.addr(),
        CipherSuite::Three,
        "admin",
        "password",
        Duration::from_millis(500),
        2,
    ));
    assert_eq!(auto.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(auto.cipher_suite().await, CipherSuite::Seventeen);
}

/// The specification's 60-s timer: flags set without parameter 3 lose their valid bit when no
/// Chassis Control command follows within 60 s; plinth's overrides keep it, whatever parameter
/// 3's other bits were; a BMC that refuses parameter 3 still gets the override.
#[tokio::test]
async fn overrides_outlive_the_60_second_timer() {
    let (emu, _) = emulator().await;
    let bmc = driver(&emu, CipherSuite::Seventeen);
    // What any client that sets only parameter 5 gets (ipmitool's `chassis bootdev` does):
    // after 60 s without a power action, no override.
    emu.set_boot_flags([0x80, 0x04, 0, 0, 0]);
    emu.advance(Duration::from_secs(59));
    assert!(emu.boot_flags().valid());
    emu.advance(Duration::from_secs(2));
    assert!(!emu.boot_flags().valid(), "cleared at 60 s");
    assert_eq!(bmc.boot_override().await.unwrap().device, None);
    // A power action restarts the countdown.
    emu.set_boot_flags([0xc0, 0x04, 0, 0, 0]);
    emu.advance(Duration::from_secs(50));
    bmc.power(PowerAction::On).await.unwrap();
    emu.advance(Duration::from_secs(50));
    assert!(emu.boot_flags().valid(), "50 s after the power action");

    // plinth: parameter 3 bit 3 first, keeping a bit another tool set (bit 0).
    emu.set_boot_flags([0; 5]);
    let set3 = |emu: &IpmiEmulator| {
        emu.commands()
            .iter()
            .filter(|c| (c.netfn, c.cmd) == (0x00, 0x08) && c.data.first() == Some(&0x03))
            .count()
    };
    let before = set3(&emu);
    // Parameter 3 = 0x01 (don't clear on a power-button start), as a vendor tool left it.
    emu.set_valid_bit_clearing(0x01);
    let (got, confirmed) = set_boot_verified(&bmc, BootDevice::Pxe, false, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(confirmed, plinth_bmc::Confirmed::Override);
    assert_eq!(got.device, Some(BootDevice::Pxe));
    assert_eq!(set3(&emu), before + 1);
    assert_eq!(emu.valid_bit_clearing(), 0x09, "bit 3 added, bit 0 kept");
    emu.advance(Duration::from_secs(600));
    assert!(emu.boot_flags().valid(), "kept past 60 s");
    bmc.power(PowerAction::Cycle).await.unwrap();
    let last = *emu.boots().last().unwrap();
    assert_eq!((last.selector(), last.efi()), (BootSelector::Pxe, true));
    assert!(
        !emu.boot_flags().valid(),
        "a one-time override is used by the boot"
    );

    // A BMC without parameter 3: the override is set all the same, no error.
    let (emu, _) = emulator().await;
    emu.set_refuse_valid_bit_clearing(true);
    let bmc = driver(&emu, CipherSuite::Three);
    for device in [BootDevice::Pxe, BootDevice::Disk] {
        let (got, _) = set_boot_verified(&bmc, device, true, None).await.unwrap();
        assert_eq!(got.device, Some(device));
    }
    let refused = emu
        .commands()
        .iter()
        .filter(|c| c.data.first() == Some(&0x03) && c.completion == 0x80)
        .count();
    assert!(refused >= 2, "asked each time, refused each time");
    assert_eq!(emu.boot_flags().selector(), BootSelector::Disk);
}

/// A session's worth of commands, through whatever the network does.
async fn workload(bmc: &Ipmi, emu: &IpmiEmulator) {
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    bmc.set_boot(BootDevice::Pxe, true, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(
        bmc.boot_override().await.unwrap(),
        BootOverride {
            device: Some(BootDevice::Pxe),
            persistent: true,
            mode: Some(BootMode::Uefi),
            unconfirmed: None,
        }
    );
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert!(bmc.identity().await.unwrap().uuid.is_some());
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(!emu.power());
    let flags = emu.boot_flags();
    assert!(flags.valid() && flags.persistent() && flags.efi());
    assert_eq!(flags.selector(), BootSelector::Pxe);
}

#[tokio::test]
async fn commands_complete_through_30_percent_request_loss() {
    for suite in SUITES {
        let (emu, _) = emulator().await;
        // Three of every ten datagrams that reach the BMC are lost, never two in a row: each
        // request gets through by its second try.
        emu.set_loss(Loss::Spread { drop: 3, of: 10 });
        let bmc = Ipmi::new(config(
            emu.addr(),
            suite,
            "admin",
            "password",
            Duration::from_millis(150),
            3,
        ));
        workload(&bmc, &emu).await;
        workload(&bmc, &emu).await;
        let s = emu.stats();
        assert_eq!(s.dropped, s.received * 3 / 10, "{suite}: {s:?}");
        assert!(s.dropped >= 10, "{suite}: {s:?}");
        assert_eq!(
            s.sessions_opened, 1,
            "retransmission, not new sessions: {s:?}"
        );
    }
}

#[tokio::test]
async fn commands_complete_when_requests_and_replies_are_lost() {
    for suite in SUITES {
        let (emu, _) = emulator().await;
        // The same share, counted over requests and replies together: some commands are
        // carried out by the BMC and their answer lost, so the driver sends them again.
        emu.set_loss(Loss::Spread { drop: 3, of: 10 });
        emu.set_loss_on_replies(true);
        let bmc = Ipmi::new(config(
            emu.addr(),
            suite,
            "admin",
            "password",
            Duration::from_millis(150),
            4,
        ));
        workload(&bmc, &emu).await;
        let s = emu.stats();
        assert!(
            s.dropped > 0 && s.replies_dropped > 0,
            "{suite}: both directions lost some: {s:?}"
        );
        assert!(s.commands > 12, "{s:?}");
    }
}

#[tokio::test]
async fn total_loss_is_a_timeout_within_the_configured_time() {
    let (emu, _) = emulator().await;
    let (timeout, retries) = (Duration::from_millis(100), 2);
    // One exchange: three tries of 100 ms.
    let budget = timeout * (retries + 1);
    for suite in SUITES {
        emu.set_loss(Loss::Percent(100));
        let bmc = Ipmi::new(config(
            emu.addr(),
            suite,
            "admin",
            "password",
            timeout,
            retries,
        ));
        let t = Instant::now();
        let e = bmc.power_state().await.unwrap_err();
        assert_eq!(e, BmcError::Timeout);
        assert!(e.is_transient());
        let took = t.elapsed();
        assert!(
            took >= budget && took < budget + Duration::from_secs(1),
            "{took:?}"
        );

        // With a session open, the command times out, and so does the new session the driver
        // tries once: two exchanges' worth.
        emu.set_loss(Loss::None);
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        emu.set_loss(Loss::Spread { drop: 1, of: 1 });
        let t = Instant::now();
        assert_eq!(bmc.power_state().await.unwrap_err(), BmcError::Timeout);
        let took = t.elapsed();
        assert!(
            took >= budget * 2 && took < budget * 2 + Duration::from_secs(1),
            "{took:?}"
        );
        // And it recovers when the network does.
        emu.set_loss(Loss::None);
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    }
}

/// A UDP relay that sends every datagram from the client to the BMC twice.
async fn duplicating_relay(bmc: SocketAddr) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(bmc).await.unwrap();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, c) = (front.clone(), back.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            b.send(&buf[..n]).await.ok();
            b.send(&buf[..n]).await.ok();
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                front.send_to(&buf[..n], to).await.ok();
            }
        }
    });
    addr
}

#[tokio::test]
async fn duplicated_datagrams_are_answered_once() {
    for suite in SUITES {
        let (emu, _) = emulator().await;
        let relay = duplicating_relay(emu.addr()).await;
        let bmc = Ipmi::new(config(
            relay,
            suite,
            "admin",
            "password",
            Duration::from_millis(500),
            2,
        ));
        workload(&bmc, &emu).await;
        let s = emu.stats();
        // Every sealed request came twice; the BMC's sequence number window let each in once.
        assert_eq!(s.rejected, s.commands, "{suite}: {s:?}");
        assert_eq!(s.sessions_opened, 1, "{s:?}");
        assert_eq!(emu.boots().len(), 2, "power on and one cycle, not two");
    }
}
