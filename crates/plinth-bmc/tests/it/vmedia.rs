//! Virtual media through the Redfish driver (issue 21), against sushy-tools (its slots under
//! Systems, a Floppy slot that is a USB stick, a download of the image) and against the test
//! kit's BMC (its slots under Managers or Systems, strict InsertMedia, PATCH only, a USB stick
//! only, and a BMC that says yes and keeps the old image). The image is Debian's iPXE ISO,
//! served by the test's own HTTP server; the BMCs download it.

use std::path::Path;
use std::time::Duration;

use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{
    Bmc, BmcError, MediaType, choose_slot, choose_slot_for_image, eject_media_verified,
    insert_media_verified,
};
use plinth_testkit::redfish::{ImageServer, RedfishEmulator};
use plinth_testkit::sushy::{Sushy, UUID};

pub const IPXE_ISO: &str = "/usr/lib/ipxe/ipxe.iso";

fn driver(url: String, user: &str, pw: &str) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: url,
        username: user.into(),
        password: pw.into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(60),
        allow_plain_http: true,
    })
    .unwrap()
}

async fn image() -> ImageServer {
    ImageServer::start(Path::new(IPXE_ISO), "127.0.0.1:0")
        .await
        .unwrap()
}

#[tokio::test]
async fn virtual_media_against_sushy() {
    let s = Sushy::start(Some(("admin", "s3cret"))).unwrap();
    let bmc = driver(s.url(), "admin", "s3cret");
    let iso = image().await;

    let slots = bmc.media_slots().await.unwrap();
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert!(
        slots.iter().all(|sl| sl
            .id
            .starts_with(&format!("/redfish/v1/Systems/{UUID}/VirtualMedia/"))),
        "sushy's slots are under the system: {slots:?}"
    );
    assert!(slots.iter().all(|sl| !sl.is_occupied()));
    let cd = choose_slot(&slots, MediaType::Cd).unwrap().id.clone();
    assert!(cd.ends_with("/Cd"), "{cd}");
    // sushy's "Floppy" slot lists USBStick: a USB image goes there.
    assert!(
        choose_slot(&slots, MediaType::Usb)
            .unwrap()
            .id
            .ends_with("/Floppy")
    );

    let got = insert_media_verified(&bmc, &cd, &iso.url()).await.unwrap();
    assert!(got.inserted && got.image.as_deref() == Some(iso.url().as_str()));
    assert_eq!(got.write_protected, Some(true));
    assert_eq!(iso.hits(), 1, "sushy downloaded the image");
    // Again: the same image is left in place, not downloaded again.
    insert_media_verified(&bmc, &cd, &iso.url()).await.unwrap();
    assert_eq!(iso.hits(), 1);
    let slots = bmc.media_slots().await.unwrap();
    assert_eq!(
        choose_slot_for_image(&slots, MediaType::Cd, &iso.url()).map(|sl| sl.id.as_str()),
        Some(cd.as_str()),
        "a retry lands in the same slot"
    );

    // The boot override for a virtual media boot.
    plinth_bmc::set_boot_verified(&bmc, plinth_bmc::BootDevice::Cdrom, false, None)
        .await
        .unwrap();

    let empty = eject_media_verified(&bmc, &cd).await.unwrap();
    assert!(!empty.is_occupied(), "{empty:?}");
    // Ejecting an empty slot is fine.
    eject_media_verified(&bmc, &cd).await.unwrap();

    // A URL that does not serve the image: the BMC says so, nothing is inserted.
    let e = bmc.insert_media(&cd, &iso.missing_url()).await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) | BmcError::Busy(m) if m.contains("404")),
        "{e:?}"
    );
    let slots = bmc.media_slots().await.unwrap();
    assert!(slots.iter().all(|sl| !sl.is_occupied()), "{slots:?}");
    // Not a URL plinth hands out: refused before the BMC sees it.
    assert!(matches!(
        bmc.insert_media(&cd, "file:///etc/shadow").await,
        Err(BmcError::Unsupported(_))
    ));
}

async fn emulator() -> RedfishEmulator {
    RedfishEmulator::start("admin", "pw").await.unwrap()
}

#[tokio::test]
async fn virtual_media_under_managers_and_systems() {
    let iso = image().await;
    for under_systems in [false, true] {
        let emu = emulator().await;
        emu.media_knobs(|k| k.under_systems = under_systems);
        let bmc = driver(emu.url(), "admin", "pw");
        let slots = bmc.media_slots().await.unwrap();
        let base = if under_systems {
            "/redfish/v1/Systems/1/VirtualMedia/"
        } else {
            "/redfish/v1/Managers/1/VirtualMedia/"
        };
        assert_eq!(
            slots.iter().map(|sl| sl.id.as_str()).collect::<Vec<_>>(),
            [format!("{base}CD1"), format!("{base}USB1")]
        );
        let cd = choose_slot(&slots, MediaType::Cd).unwrap().id.clone();
        assert_eq!(cd, format!("{base}CD1"));
        insert_media_verified(&bmc, &cd, &iso.url()).await.unwrap();
        assert_eq!(emu.media()[0].1.as_deref(), Some(iso.url().as_str()));
        // The driver sent TransferMethod (the BMC allows Stream): the strict BMC took it.
        assert!(
            emu.requests()
                .iter()
                .any(|r| r == &format!("POST {cd}/Actions/VirtualMedia.InsertMedia")),
            "{:?}",
            emu.requests()
        );
        eject_media_verified(&bmc, &cd).await.unwrap();
        assert_eq!(emu.media()[0], ("CD1".to_owned(), None, false));
    }
}

#[tokio::test]
async fn another_image_is_ejected_first_and_a_failed_download_inserts_nothing() {
    let iso = image().await;
    let other = image().await;
    let emu = emulator().await;
    let bmc = driver(emu.url(), "admin", "pw");
    let cd = "/redfish/v1/Managers/1/VirtualMedia/CD1";
    insert_media_verified(&bmc, cd, &other.url()).await.unwrap();
    // The BMC refuses an insert into a busy slot: the driver ejects the old image first.
    insert_media_verified(&bmc, cd, &iso.url()).await.unwrap();
    let reqs = emu.requests();
    let eject = reqs
        .iter()
        .rposition(|r| r.ends_with("VirtualMedia.EjectMedia"))
        .expect("an eject");
    let insert = reqs
        .iter()
        .rposition(|r| r.ends_with("VirtualMedia.InsertMedia"))
        .unwrap();
    assert!(eject < insert, "{reqs:?}");
    assert_eq!((other.hits(), iso.hits()), (1, 1));

    // A URL that fails: a clear refusal, and the slot as it was after an eject.
    let e = bmc.insert_media(cd, &iso.missing_url()).await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) if m.contains("cannot be downloaded") && m.contains("404")),
        "{e:?}"
    );
    assert_eq!(emu.media()[0].1, None, "nothing inserted");
    assert_eq!(emu.media_downloads(), 2);
}

#[tokio::test]
async fn a_usb_only_bmc_gets_the_iso_on_its_stick() {
    let iso = image().await;
    let emu = emulator().await;
    emu.media_knobs(|k| k.usb_only = true);
    let bmc = driver(emu.url(), "admin", "pw");
    let slots = bmc.media_slots().await.unwrap();
    assert_eq!(slots.len(), 1);
    let slot = choose_slot(&slots, MediaType::Cd).expect("the stick takes an ISO");
    assert_eq!(slot.id, "/redfish/v1/Managers/1/VirtualMedia/USB1");
    assert_eq!(slot.media_types, vec![MediaType::Usb]);
    insert_media_verified(&bmc, &slot.id, &iso.url())
        .await
        .unwrap();
    assert_eq!(emu.media()[1].1.as_deref(), Some(iso.url().as_str()));
}

#[tokio::test]
async fn a_bmc_that_keeps_its_old_image_is_caught() {
    let iso = image().await;
    let old = image().await;
    let emu = emulator().await;
    let bmc = driver(emu.url(), "admin", "pw");
    let cd = "/redfish/v1/Managers/1/VirtualMedia/CD1";
    insert_media_verified(&bmc, cd, &old.url()).await.unwrap();
    emu.media_knobs(|k| k.keeps_old_image = true);
    let e = insert_media_verified(&bmc, cd, &iso.url())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        BmcError::MediaNotInserted {
            slot: cd.into(),
            wanted: iso.url(),
            got: Some(old.url()),
        }
    );
    assert!(e.is_transient());
    let msg = e.to_string();
    assert!(
        !msg.contains("/vmedia/"),
        "URLs shown by origin only: {msg}"
    );
    // Its eject does not stick either.
    assert!(matches!(
        eject_media_verified(&bmc, cd).await,
        Err(BmcError::MediaNotEjected { .. })
    ));
    // Empty and still saying yes: caught as well.
    emu.media_knobs(|k| k.keeps_old_image = false);
    eject_media_verified(&bmc, cd).await.unwrap();
    emu.media_knobs(|k| k.keeps_old_image = true);
    assert!(matches!(
        insert_media_verified(&bmc, cd, &iso.url()).await,
        Err(BmcError::MediaNotInserted { got: None, .. })
    ));
}

#[tokio::test]
async fn a_bmc_without_actions_is_patched() {
    let iso = image().await;
    let emu = emulator().await;
    emu.media_knobs(|k| k.no_actions = true);
    emu.knobs(|k| k.require_if_match = true);
    let bmc = driver(emu.url(), "admin", "pw");
    let cd = "/redfish/v1/Managers/1/VirtualMedia/CD1";
    insert_media_verified(&bmc, cd, &iso.url()).await.unwrap();
    eject_media_verified(&bmc, cd).await.unwrap();
    let reqs = emu.requests();
    assert!(
        reqs.iter().filter(|r| *r == &format!("PATCH {cd}")).count() == 2
            && !reqs.iter().any(|r| r.contains("Actions/VirtualMedia")),
        "{reqs:?}"
    );
}
