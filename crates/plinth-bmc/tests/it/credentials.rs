//! Changing the password of plinth's own account (issue 21, rotation) against the test kit's
//! Redfish BMC: the policy read from its AccountService, the PATCH with If-Match, the new
//! password proved by a new session, the old one refused, the other account untouched.

use std::time::Duration;

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, PasswordPolicy, credentials};
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
