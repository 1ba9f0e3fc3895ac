//! Changing the password of plinth's own account (issue 21, rotation): against the test kit's
//! Redfish BMC (the policy read from its AccountService, the PATCH with If-Match, the new
//! password proved by a new session, the old one refused, the other account untouched), the
//! test kit's IPMI BMC (Set User Password in the 20- and 16-byte forms, checked with
//! ipmitool's own `user set password`) and OpenIPMI's ipmi_sim (ipmitool logs in with what
//! plinth set, plinth with what ipmitool set).

use std::time::Duration;

use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};
use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, PasswordPolicy, credentials};
use plinth_testkit::ipmi::{IpmiEmulator, IpmiEmulatorConfig};
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, PASSWORD2, USER, USER2};
use plinth_testkit::redfish::RedfishEmulator;

fn driver(emu: &RedfishEmulator, user: &str, password: &str) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: emu.url(),
        username: user.into(),
        password: password.into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(5),
        allow_plain_http: true,
    })
    .unwrap()
}

#[tokio::test]
async fn redfish_password_change() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(&emu, "root", "calvin");
    bmc.power_state().await.unwrap();
    let policy = bmc.password_policy().await.unwrap();
    assert_eq!(
        policy,
        PasswordPolicy {
            min_len: 8,
            max_len: 20
        }
    );
    let new = credentials::generate(policy.length().unwrap());
    bmc.set_password(&new).await.unwrap();
    assert_eq!(emu.password(), new);
    assert_eq!(emu.password_changes(), 1);
    assert_eq!(
        emu.operator_password(),
        "operator-pw",
        "only plinth's account"
    );
    assert!(emu.sessions_ended() >= 1, "the BMC ended the old session");
    let patches: Vec<String> = emu
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .collect();
    assert_eq!(patches, vec!["PATCH account"], "one PATCH, with If-Match");
    // Nothing more goes out on the ended session: close does not log out with it.
    let before = emu.requests().len();
    bmc.close().await;
    assert_eq!(emu.requests().len(), before);
    // The new password opens a session; the old one is refused.
    let proved = driver(&emu, "root", &new);
    proved.power_state().await.unwrap();
    let old = driver(&emu, "root", "calvin");
    assert_eq!(old.power_state().await.unwrap_err(), BmcError::Auth);
    // A password outside the policy is refused, and the refusal does not quote it.
    let e = proved.set_password("short").await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) if !m.contains("short")),
        "{e:?}"
    );
    assert_eq!(emu.password(), new);
    // An account that is not on the BMC: a clear refusal, nothing changed.
    let ghost = driver(&emu, "ghost", &new);
    assert!(ghost.set_password("Abcdefgh1234").await.is_err());
    assert_eq!(emu.password_changes(), 1);
}

fn ipmi(addr: std::net::SocketAddr, user: &str, password: &str, suite: CipherSuite) -> Ipmi {
    Ipmi::new(IpmiConfig {
        addr,
        username: user.into(),
        password: password.into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: suite,
    })
}

/// `ipmitool -I lanplus` against the test kit's BMC as `admin` with `password` (a process
/// the test awaits: the emulator answers on the test's own runtime).
async fn ipmitool(emu: &IpmiEmulator, password: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("ipmitool")
        .args(["-I", "lanplus", "-C", "17", "-H", "127.0.0.1", "-p"])
        .arg(emu.port().to_string())
        .args(["-U", "admin", "-E", "-N", "1", "-R", "2"])
        .args(args)
        .env("IPMI_PASSWORD", password)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn ipmi_password_change_against_the_test_kit_s_bmc() {
    let emu = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", "factory-pw"))
        .await
        .unwrap();
    for suite in [CipherSuite::Three, CipherSuite::Seventeen] {
        let old = emu.password();
        let bmc = ipmi(emu.addr(), "admin", &old, suite);
        let policy = bmc.password_policy().await.unwrap();
        assert_eq!(policy.max_len, 20, "{suite}: the 20-byte form");
        let new = credentials::generate(policy.length().unwrap());
        assert_eq!(new.len(), 20);
        bmc.set_password(&new).await.unwrap();
        bmc.close().await;
        assert_eq!(emu.password(), new, "{suite}");
        assert_eq!(emu.password_changes().last(), Some(&(2, true)));
        ipmi(emu.addr(), "admin", &new, suite)
            .power_state()
            .await
            .unwrap();
        let refused = ipmi(emu.addr(), "admin", &old, suite).power_state().await;
        assert_eq!(refused.unwrap_err(), BmcError::Auth, "{suite}: the old one");
    }
    // A BMC with the 16-byte form only: the policy says so and the password fits.
    emu.set_password_16_only(true);
    let bmc = ipmi(emu.addr(), "admin", &emu.password(), CipherSuite::Seventeen);
    let policy = bmc.password_policy().await.unwrap();
    assert_eq!(policy.max_len, 16);
    let new = credentials::generate(policy.length().unwrap());
    bmc.set_password(&new).await.unwrap();
    assert_eq!(emu.password(), new);
    assert_eq!(emu.password_changes().last(), Some(&(2, false)));
    assert!(
        bmc.set_password(&"A1b".repeat(6)).await.is_err(),
        "18 bytes do not fit the 16-byte form"
    );
    emu.set_password_16_only(false);
    // ipmitool's own `user set password` (20-byte form) lands the same password the
    // emulator's login then checks: the format is IPMI's, not only plinth's.
    let out = ipmitool(
        &emu,
        &new,
        &["user", "set", "password", "2", "Ipmitool-Set-20bytes", "20"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(emu.password(), "Ipmitool-Set-20bytes");
    let out = ipmitool(
        &emu,
        "Ipmitool-Set-20bytes",
        &["chassis", "power", "status"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    // A user this driver does not log in as is not found: nothing changed.
    let ghost = ipmi(emu.addr(), "ghost", "whatever", CipherSuite::Seventeen);
    assert!(ghost.set_password("Abcdefgh1234").await.is_err());
    assert_eq!(emu.password(), "Ipmitool-Set-20bytes");
}

#[tokio::test]
async fn ipmi_password_change_against_ipmi_sim() {
    let sim = IpmiSim::start(None).unwrap();
    let bmc = ipmi(sim.addr(), USER2, PASSWORD2, CipherSuite::Three);
    // ipmi_sim passes every "test password": the 20-byte form is not trusted.
    let policy = bmc.password_policy().await.unwrap();
    assert_eq!(policy.max_len, 16);
    let new = credentials::generate(policy.length().unwrap());
    assert_eq!(new.len(), 16);
    bmc.set_password(&new).await.unwrap();
    bmc.close().await;
    // ipmitool logs in with the new password, and not with the old one; the other user is
    // untouched.
    let status = |user: &str, pw: &str| {
        sim.ipmitool_command(&["-U", user, "chassis", "power", "status"])
            .env("IPMI_PASSWORD", pw)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(status(USER2, &new));
    assert!(!status(USER2, PASSWORD2));
    assert!(status(USER, PASSWORD));
    ipmi(sim.addr(), USER2, &new, CipherSuite::Three)
        .power_state()
        .await
        .unwrap();
    // And the other way: ipmitool sets one, plinth logs in with it.
    let out = sim
        .ipmitool(&["user", "set", "password", "3", "Set-By-Ipmitool"])
        .unwrap();
    assert!(out.contains("successful"), "{out}");
    ipmi(sim.addr(), USER2, "Set-By-Ipmitool", CipherSuite::Three)
        .power_state()
        .await
        .unwrap();
}
