//! BIOS settings (issue 21): the Redfish driver against the test kit's BMC (current and
//! pending attributes, If-Match, the registry, pending values applied by a boot, a boot that
//! drops one attribute, a BMC without a settings object, one without BIOS settings) and
//! against sushy-tools, whose fake driver has no BIOS.

use std::time::Duration;

use plinth_bmc::bios::{AttributeType, BiosAttributes, mismatches};
use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, PowerAction};
use plinth_testkit::redfish::RedfishEmulator;
use plinth_testkit::sushy::Sushy;
use serde_json::json;

fn redfish(base_url: String) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url,
        username: "root".into(),
        password: "calvin".into(),
        verify_tls: false,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(30),
        allow_plain_http: true,
    })
    .unwrap()
}

fn attrs(v: serde_json::Value) -> BiosAttributes {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn pending_settings_apply_at_the_next_boot() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    emu.knobs(|k| k.require_if_match = true);
    let bmc = redfish(emu.url());
    let cur = bmc.bios_attributes().await.unwrap();
    assert_eq!(cur["BootMode"], json!("Uefi"));
    assert_eq!(cur["NumCores"], json!(8));
    assert_eq!(cur["PxeEnabled"], json!(true));
    assert_eq!(
        bmc.bios_pending().await.unwrap(),
        Some(BiosAttributes::new())
    );

    let reg = bmc.bios_registry().await.unwrap().expect("a registry");
    assert_eq!(reg["BootMode"].kind, AttributeType::Enumeration);
    assert_eq!(reg["BootMode"].values, ["Uefi", "Bios"]);
    assert_eq!(reg["NumCores"].max, Some(64));
    assert!(reg["SerialNumber"].read_only);

    let ask = attrs(json!({"BootMode": "Bios", "NumCores": 4, "PxeEnabled": false}));
    // With If-Match required: the driver sends the settings object's ETag.
    bmc.set_bios_pending(&ask).await.unwrap();
    assert!(emu.requests().iter().any(|r| r == "PATCH bios settings"));
    assert_eq!(bmc.bios_pending().await.unwrap(), Some(ask.clone()));
    assert_eq!(
        bmc.bios_attributes().await.unwrap()["BootMode"],
        json!("Uefi"),
        "nothing applies before a boot"
    );
    bmc.power(PowerAction::On).await.unwrap();
    let after = bmc.bios_attributes().await.unwrap();
    assert!(mismatches(&ask, &after).is_empty(), "{after:?}");
    assert_eq!(
        bmc.bios_pending().await.unwrap(),
        Some(BiosAttributes::new())
    );

    // The quirk: the boot silently keeps one attribute as it was.
    emu.bios_knobs(|k| k.drops = Some("SriovGlobalEnable".into()));
    let ask = attrs(json!({"SriovGlobalEnable": "Enabled", "ProcTurboMode": "Disabled"}));
    bmc.set_bios_pending(&ask).await.unwrap();
    bmc.power(PowerAction::Reset).await.unwrap();
    let m = mismatches(&ask, &bmc.bios_attributes().await.unwrap());
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].to_string(),
        "SriovGlobalEnable: asked Enabled, reads Disabled"
    );

    // The BMC's own refusal (an attribute its registry lacks) comes back with its message.
    let e = bmc
        .set_bios_pending(&attrs(json!({"NoSuchThing": "x"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) if m.contains("NoSuchThing")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_bmc_without_a_settings_object_or_without_bios() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    emu.bios_knobs(|k| k.no_settings_object = true);
    let bmc = redfish(emu.url());
    let ask = attrs(json!({"ProcTurboMode": "Disabled"}));
    bmc.set_bios_pending(&ask).await.unwrap();
    assert!(emu.requests().iter().any(|r| r == "PATCH bios"));
    assert_eq!(emu.bios_pending(), ask, "taken at Bios itself");
    assert_eq!(
        bmc.bios_pending().await.unwrap(),
        None,
        "nothing to show without a settings object"
    );
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(emu.bios()["ProcTurboMode"], json!("Disabled"));

    emu.bios_knobs(|k| k.absent = true);
    let e = bmc.bios_attributes().await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Unsupported(m) if m.contains("no Bios resource")),
        "{e:?}"
    );
    assert!(!e.is_transient());
}

#[tokio::test]
async fn sushy_fake_driver_has_no_bios() {
    let s = Sushy::start(None).unwrap();
    let bmc = redfish(s.url());
    for e in [
        bmc.bios_attributes().await.unwrap_err(),
        bmc.set_bios_pending(&attrs(json!({"BootMode": "Uefi"})))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, BmcError::Unsupported(_)), "{e:?}");
    }
}
