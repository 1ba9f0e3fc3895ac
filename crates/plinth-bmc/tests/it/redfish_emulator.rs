//! The Redfish driver against plinth's own misbehaving emulator (plinth-testkit): sessions that
//! expire, a BMC that requires If-Match, one that accepts a boot override and keeps the old
//! one, 503s with ExtendedInfo messages, slowness, and ResetTypes chosen from what the BMC
//! allows.

use std::time::Duration;

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, BootDevice, BootMode, PowerAction, PowerState, set_boot_verified};
use plinth_testkit::redfish::RedfishEmulator;

fn driver(emu: &RedfishEmulator, password: &str, timeout: Duration) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: emu.url(),
        username: "root".into(),
        password: password.into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout,
        allow_plain_http: true,
    })
    .unwrap()
}

#[tokio::test]
async fn sessions_are_renewed_when_they_expire() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(&emu, "calvin", Duration::from_secs(5));
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(emu.logins(), 1);
    bmc.power_state().await.unwrap();
    assert_eq!(emu.logins(), 1, "the session is reused");
    emu.expire_sessions();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(emu.logins(), 2, "a 401 on the session logs in again");
    let id = bmc.identity().await.unwrap();
    assert_eq!(
        (id.manufacturer.as_deref(), id.serial.as_deref()),
        (Some("Plinth Labs"), Some("PL-0001"))
    );
    // Closing logs out (BMCs allow only a few sessions); the next call logs in again.
    bmc.close().await;
    assert_eq!(emu.logouts(), 1);
    bmc.power_state().await.unwrap();
    assert_eq!(emu.logins(), 3);
    // Wrong password: refused at login and with Basic alike.
    let bad = driver(&emu, "wrong", Duration::from_secs(5));
    assert_eq!(bad.power_state().await.unwrap_err(), BmcError::Auth);
}

#[tokio::test]
async fn boot_overrides_honour_if_match_and_reverts_are_caught() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    emu.knobs(|k| k.require_if_match = true);
    let bmc = driver(&emu, "calvin", Duration::from_secs(5));
    set_boot_verified(&bmc, BootDevice::Pxe, false, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(emu.boot(), ("Pxe".to_owned(), "Once".to_owned()));
    // The one-time override is used up by the next boot.
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(emu.boot().1, "Disabled");
    // The mode goes with the override (Legacy for BIOS), and is read back.
    set_boot_verified(&bmc, BootDevice::Pxe, false, Some(BootMode::Bios))
        .await
        .unwrap();
    assert_eq!(
        bmc.boot_override().await.unwrap().mode,
        Some(BootMode::Bios)
    );

    emu.knobs(|k| k.revert_boot = true);
    let e = set_boot_verified(&bmc, BootDevice::Disk, true, None)
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Reverted { .. }), "{e:?}");
    assert!(e.is_transient(), "worth another try");
}

#[tokio::test]
async fn reset_types_come_from_what_the_bmc_allows() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(&emu, "calvin", Duration::from_secs(5));
    // A cycle of a machine that is off: On.
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(emu.power(), "On");
    // Of a running one: the emulator offers ForceRestart, not PowerCycle.
    bmc.power(PowerAction::Cycle).await.unwrap();
    bmc.power(PowerAction::Off { force: false }).await.unwrap();
    assert_eq!(emu.power(), "Off");
    // It does not offer PowerCycle nor GracefulRestart for a reset of a machine that is off:
    // ForceRestart is sent, and the BMC's own message comes back.
    let e = bmc.power(PowerAction::Reset).await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) if m.contains("not supported in the current state")),
        "{e:?}"
    );
}

/// A machine that powers itself off between the driver's read of its state and the reset (the
/// deployed test image does, right after it reports; a release's clean then cycles it): the
/// BMC refuses ForceRestart for a machine that is off, and the driver reads the state again
/// and powers it on, once. A reset of a machine that is off stays refused.
#[tokio::test]
async fn a_cycle_of_a_machine_that_just_went_off_powers_it_on() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(&emu, "calvin", Duration::from_secs(5));
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(emu.power(), "On");
    emu.knobs(|k| k.off_before_reset = true);
    let before = emu.requests().len();
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(emu.power(), "On");
    let resets = emu.requests()[before..]
        .iter()
        .filter(|r| r.as_str() == "POST reset")
        .count();
    assert_eq!(resets, 2, "refused, then On: {:?}", emu.requests());
    // Reset has no such meaning for a machine that is off.
    emu.knobs(|k| k.off_before_reset = true);
    let e = bmc.power(PowerAction::Reset).await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) if m.contains("not supported in the current state")),
        "{e:?}"
    );
    assert_eq!(emu.power(), "Off");
}

/// A machine for the emulator that records each boot's override target (the emulator tells
/// its host which device a boot starts from).
#[derive(Default)]
struct Recorder {
    on: std::sync::atomic::AtomicBool,
    boots: std::sync::Mutex<Vec<String>>,
}

impl plinth_testkit::redfish::Host for Recorder {
    fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn power_on(&self, boot: &str) {
        self.on.store(true, std::sync::atomic::Ordering::SeqCst);
        self.boots.lock().unwrap().push(boot.to_owned());
    }
    fn power_off(&self) {
        self.on.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    fn reset(&self, boot: &str) {
        self.boots.lock().unwrap().push(boot.to_owned());
    }
}

/// A one-time boot override is used by a boot, not by a reset the BMC refuses nor by an On of
/// a machine that is on: the machine that went off before its cycle still boots the network.
#[tokio::test]
async fn a_refused_reset_leaves_the_one_time_override_for_the_next_boot() {
    let host = std::sync::Arc::new(Recorder::default());
    let emu = RedfishEmulator::start_for("root", "calvin", host.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let bmc = driver(&emu, "calvin", Duration::from_secs(5));
    bmc.power(PowerAction::On).await.unwrap();
    set_boot_verified(&bmc, BootDevice::Pxe, false, None)
        .await
        .unwrap();
    // An On of a machine that is on starts no boot.
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(emu.boot(), ("Pxe".to_owned(), "Once".to_owned()));
    // Off just before the cycle: ForceRestart is refused, then On boots, with the override.
    emu.knobs(|k| k.off_before_reset = true);
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(
        *host.boots.lock().unwrap(),
        ["None", "Pxe"],
        "{:?}",
        emu.requests()
    );
    assert_eq!(emu.boot().1, "Disabled", "used up by that boot");
    // The next boot follows the machine's own order.
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(*host.boots.lock().unwrap(), ["None", "Pxe", "None"]);
}

#[tokio::test]
async fn failing_and_slow_bmcs() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(&emu, "calvin", Duration::from_millis(500));
    bmc.power_state().await.unwrap();
    emu.knobs(|k| k.fail_next = 1);
    let e = bmc.power_state().await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Busy(m) if m.contains("503") && m.contains("temporarily unavailable")),
        "{e:?}"
    );
    assert!(e.is_transient());
    emu.knobs(|k| k.fail_status = Some(500));
    emu.knobs(|k| k.fail_next = 1);
    let e = bmc.power_state().await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Busy(m) if m.contains("500")),
        "{e:?}"
    );
    emu.knobs(|k| k.delay = Duration::from_secs(2));
    assert_eq!(bmc.power_state().await.unwrap_err(), BmcError::Timeout);
    // A BMC that takes the connection and never answers: the same timeout.
    emu.knobs(|k| {
        k.delay = Duration::ZERO;
        k.hang = true;
    });
    assert_eq!(bmc.power_state().await.unwrap_err(), BmcError::Timeout);
}

#[tokio::test]
async fn basic_auth_when_there_is_no_session_service() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    emu.knobs(|k| k.sessions = false);
    let bmc = driver(&emu, "calvin", Duration::from_secs(5));
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(emu.logins(), 0);
    assert!(emu.requests().iter().any(|r| r == "POST sessions"));
}

/// A compromised BMC's lies: a body without end, links and redirects to another host, a reset
/// target and a session URI elsewhere, a body that is not JSON. Each is a clear error (or, for
/// the session URI, a logout plinth does not send), and the other host sees nothing, least of
/// all plinth's credentials.
#[tokio::test]
async fn a_hostile_bmc_cannot_hurt_plinth() {
    use plinth_testkit::redfish::{Collector, Hostile};
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let other = Collector::start().await.unwrap();
    let (o, port) = (other.url(), other.addr.port());
    let cases: Vec<(Hostile, &str)> = vec![
        (Hostile::HugeBody(16 << 20), "body"),
        (
            Hostile::MemberId(format!("{o}/redfish/v1/Systems/1")),
            "another origin",
        ),
        (
            Hostile::MemberId(format!("//127.0.0.1:{port}/redfish/v1/Systems/1")),
            "a network path",
        ),
        (
            Hostile::MemberId(format!("/redfish/v1@127.0.0.1:{port}/Systems/1")),
            "an @",
        ),
        (
            Hostile::MemberId(format!("http://root:calvin@127.0.0.1:{port}/x")),
            "user information",
        ),
        (
            Hostile::MemberId("/redfish/v1/Systems/1\r\nX: y".into()),
            "control",
        ),
        (
            Hostile::Redirect(format!("{o}/redfish/v1/Systems/1")),
            "302",
        ),
        (Hostile::MalformedJson, "not JSON"),
    ];
    for (hostile, says) in cases {
        emu.knobs(|k| k.hostile = hostile.clone());
        let bmc = driver(&emu, "calvin", Duration::from_secs(10));
        let e = bmc.power_state().await.unwrap_err();
        assert!(e.to_string().contains(says), "{hostile:?}: {e}");
        assert!(!e.to_string().contains("calvin"), "{e}");
        bmc.close().await;
    }
    // A reset target on another host: the action is refused, not sent.
    emu.knobs(|k| k.hostile = Hostile::ResetTarget(format!("{o}/reset")));
    let bmc = driver(&emu, "calvin", Duration::from_secs(10));
    let e = bmc.power(PowerAction::On).await.unwrap_err();
    assert!(e.to_string().contains("another origin"), "{e}");
    assert_eq!(emu.power(), "Off");
    // A session whose URI is on another host: everything works, and the logout (which would
    // carry the session's token) is not sent there.
    emu.knobs(|k| {
        k.hostile = Hostile::SessionLocation(format!("{o}/redfish/v1/SessionService/Sessions/1"))
    });
    let bmc = driver(&emu, "calvin", Duration::from_secs(10));
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    let logouts = emu.logouts();
    bmc.close().await;
    assert_eq!(emu.logouts(), logouts, "no logout sent anywhere");
    assert!(other.requests().is_empty(), "{:?}", other.requests());

    // The BMC is fine again: so is plinth.
    emu.knobs(|k| k.hostile = Hostile::No);
    let bmc = driver(&emu, "calvin", Duration::from_secs(10));
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(emu.power(), "On");
}

/// Plain http:// only with the BMC's opt-in; other schemes and user information never.
#[tokio::test]
async fn plain_http_needs_the_opt_in() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let cfg = |base_url: String, allow_plain_http: bool| RedfishConfig {
        base_url,
        username: "root".into(),
        password: "calvin".into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(5),
        allow_plain_http,
    };
    let e = Redfish::new(cfg(emu.url(), false)).err().unwrap();
    assert!(
        matches!(&e, BmcError::Unsupported(m) if m.contains("plain")),
        "{e:?}"
    );
    assert!(Redfish::new(cfg(emu.url(), true)).is_ok());
    for bad in ["ftp://10.0.0.1", "https://root:pw@10.0.0.1", "not a url"] {
        assert!(Redfish::new(cfg(bad.into(), true)).is_err(), "{bad}");
    }
}
