//! The Redfish driver against sushy-tools' Redfish emulator (fake driver), with and without an
//! htpasswd file. The test command installs sushy-tools into a venv (`PLINTH_SUSHY_EMULATOR`
//! names its `sushy-emulator`). sushy applies power changes after a delay, so the test polls.

use std::time::{Duration, Instant};

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, BootDevice, BootMode, PowerAction, PowerState, set_boot_verified};

use plinth_testkit::sushy::{MAC, Sushy, TestCa, UUID};

fn start(auth: Option<(&str, &str)>) -> Sushy {
    Sushy::start(auth).unwrap()
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
        allow_plain_http: true,
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

#[tokio::test]
async fn tls_verification_and_a_custom_ca() {
    let ca = TestCa::new().unwrap();
    let s = Sushy::start_with(Some(("admin", "s3cret")), Some(&ca)).unwrap();
    let with = |verify_tls: bool, ca_pem: Option<Vec<u8>>| {
        Redfish::new(RedfishConfig {
            base_url: s.url(),
            username: "admin".into(),
            password: "s3cret".into(),
            verify_tls,
            ca_pem,
            system: None,
            timeout: Duration::from_secs(30),
            allow_plain_http: false,
        })
        .unwrap()
    };
    assert!(s.url().starts_with("https://"));
    // Verifying against the system's CAs only: the BMC's certificate is refused.
    let e = with(true, None).power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Unreachable(_)), "{e:?}");
    // With the CA that signed it: trusted.
    assert_eq!(
        with(true, Some(ca.ca_pem.clone()))
            .power_state()
            .await
            .unwrap(),
        PowerState::Off
    );
    // Verification off (the per-BMC switch for self-signed certificates), CA or not.
    assert_eq!(
        with(false, None).power_state().await.unwrap(),
        PowerState::Off
    );
    // A CA file that is not PEM is a clear error, before any request.
    let e = Redfish::new(RedfishConfig {
        base_url: s.url(),
        username: "admin".into(),
        password: "s3cret".into(),
        verify_tls: true,
        ca_pem: Some(b"not a certificate".to_vec()),
        system: None,
        timeout: Duration::from_secs(5),
        allow_plain_http: false,
    })
    .err()
    .unwrap();
    assert!(matches!(e, BmcError::Protocol(m) if m.contains("CA")));
}
