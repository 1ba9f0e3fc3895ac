//! The IPMI driver against OpenIPMI's `ipmi_sim` (cipher suite 3), with `ipmitool -I lanplus
//! -C 3` as the reference client on the same simulator (plinth_testkit::ipmi_sim): power, every
//! boot override read back by plinth's rule and by ipmitool, the GUID's byte order against
//! `ipmitool mc guid`, and identity from FRU data against `ipmitool fru print`.

use std::time::{Duration, Instant};

use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};
use plinth_bmc::{
    Bmc, BmcError, BootDevice, BootMode, Confirmed, PowerAction, PowerState, set_boot_verified,
};
use plinth_testkit::ipmi::Fru;
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, USER};

fn driver(sim: &IpmiSim, password: &str) -> Ipmi {
    Ipmi::new(IpmiConfig {
        addr: sim.addr(),
        username: USER.into(),
        password: password.into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: CipherSuite::Three,
    })
}

/// `ipmitool`'s "Key : value" line.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn power_and_boot_against_ipmi_sim() {
    let sim = IpmiSim::start(None).unwrap();
    let bmc = driver(&sim, PASSWORD);
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(sim.power(), "1");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    assert!(
        sim.ipmitool(&["chassis", "power", "status"])
            .unwrap()
            .contains("Chassis Power is on"),
        "the reference client sees the same"
    );
    // A cycle: off, then on a second later (ipmi_sim's own timer).
    bmc.power(PowerAction::Cycle).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.power() != "1" || !sim.script_calls().iter().any(|c| c == "0x20 set power 0") {
        assert!(Instant::now() < deadline, "{:?}", sim.script_calls());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bmc.power(PowerAction::Off { force: true }).await.unwrap();
    assert_eq!(sim.power(), "0");

    // Every device, once and persistent, BIOS and UEFI: ipmi_sim keeps the device only and
    // answers it with the valid bit clear, which plinth's rule takes as the device confirmed.
    for (device, script, ipmitool_says) in [
        (BootDevice::Pxe, "pxe", "Force PXE"),
        (
            BootDevice::Disk,
            "default",
            "Force Boot from default Hard-Drive",
        ),
        (BootDevice::BiosSetup, "bios", "Force Boot into BIOS Setup"),
        (BootDevice::Cdrom, "cdrom", "Force Boot from CD/DVD"),
    ] {
        for persistent in [false, true] {
            for mode in [None, Some(BootMode::Bios), Some(BootMode::Uefi)] {
                let (got, confirmed) = set_boot_verified(&bmc, device, persistent, mode)
                    .await
                    .unwrap_or_else(|e| panic!("{device:?} {persistent} {mode:?}: {e}"));
                assert_eq!(confirmed, Confirmed::DeviceOnly);
                assert_eq!((got.device, got.unconfirmed), (None, Some(device)));
                assert_eq!(sim.boot(), script);
                let p5 = sim.ipmitool(&["chassis", "bootparam", "get", "5"]).unwrap();
                assert!(p5.contains(ipmitool_says), "{device:?}: {p5}");
                assert!(
                    p5.contains("Boot Flag Invalid"),
                    "ipmi_sim's own answer: {p5}"
                );
            }
        }
    }
    // Parameter 3 went first each time: ipmi_sim takes it (and ignores it); none failed.
    assert!(
        sim.log().is_empty() || !sim.log().contains("rror"),
        "{}",
        sim.log()
    );
}

#[tokio::test]
async fn identity_matches_ipmitool() {
    let fru = Fru::new("Plinth Test Systems", "RS-2000", "SN-4711");
    let sim = IpmiSim::start(Some(&fru)).unwrap();
    let id = driver(&sim, PASSWORD).identity().await.unwrap();

    // The GUID: ipmitool decodes ipmi_sim's bytes as the "IPMI" encoding (least significant
    // byte first), and plinth reads the same UUID.
    let guid = sim.ipmitool(&["mc", "guid"]).unwrap();
    assert_eq!(
        field(&guid, "GUID Encoding").as_deref(),
        Some("IPMI"),
        "{guid}"
    );
    assert_eq!(
        id.uuid.map(|u| u.to_string()),
        field(&guid, "System GUID"),
        "{guid}"
    );
    assert_eq!(
        id.uuid.map(|u| u.to_string()).as_deref(),
        Some("ffeeddcc-bbaa-4977-8866-554433221100")
    );
    // A BMC that sends SMBIOS order (ipmitool warns of it): the same UUID as ipmitool again.
    let smbios = IpmiSim::start_with(None, "00112233445566477788aabbccddeeff").unwrap();
    let guid = smbios.ipmitool(&["mc", "guid"]).unwrap();
    assert!(
        field(&guid, "GUID Encoding").is_some_and(|e| e.starts_with("SMBIOS")),
        "{guid}"
    );
    let other = driver(&smbios, PASSWORD).identity().await.unwrap();
    assert_eq!(
        other.uuid.map(|u| u.to_string()),
        field(&guid, "System GUID")
    );

    // FRU: the product area's manufacturer, name and serial, as ipmitool prints them.
    let printed = sim.ipmitool(&["fru", "print", "0"]).unwrap();
    assert_eq!(id.manufacturer, field(&printed, "Product Manufacturer"));
    assert_eq!(id.model, field(&printed, "Product Name"));
    assert_eq!(id.serial, field(&printed, "Product Serial"));
    assert_eq!(
        (
            id.manufacturer.as_deref(),
            id.model.as_deref(),
            id.serial.as_deref()
        ),
        (
            Some("Plinth Test Systems"),
            Some("RS-2000"),
            Some("SN-4711")
        )
    );
    // The other areas' serials are there too, and not the ones taken.
    assert_eq!(
        field(&printed, "Chassis Serial").as_deref(),
        Some("CH-SN-4711")
    );
    assert_eq!(
        field(&printed, "Board Serial").as_deref(),
        Some("BRD-SN-4711")
    );

    // A BMC without FRU data still has its GUID.
    let bare = IpmiSim::start(None).unwrap();
    let id = driver(&bare, PASSWORD).identity().await.unwrap();
    assert!(
        id.uuid.is_some() && id.serial.is_none() && id.manufacturer.is_none(),
        "{id:?}"
    );
}

/// What plinth's workers use: suite 17 first. ipmi_sim has no SHA-256 and says so in Open
/// Session; the driver falls back to suite 3 and keeps it.
#[tokio::test]
async fn the_strongest_suite_falls_back_to_3_on_ipmi_sim() {
    let sim = IpmiSim::start(None).unwrap();
    let bmc = Ipmi::strongest(IpmiConfig {
        addr: sim.addr(),
        username: USER.into(),
        password: PASSWORD.into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: CipherSuite::Seventeen,
    });
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(bmc.cipher_suite().await, CipherSuite::Three);
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(sim.power(), "1");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let sim = IpmiSim::start(None).unwrap();
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
