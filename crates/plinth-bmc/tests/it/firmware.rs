//! Firmware inventory and updates (issue 21) through the Redfish driver, against the test
//! kit's BMC (an inventory of four components; SimpleUpdate fetching the image from a web
//! server of the test; a multipart push; tasks that run for a few polls and end as the knobs
//! say) and against sushy-tools (its UpdateService; it serves no inventory, so the driver
//! reads the system's BiosVersion).

use std::time::Duration;

use plinth_bmc::firmware::{ComponentKind, TaskPhase, TaskStatus, UpdateTask};
use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, BmcError, PowerAction};
use plinth_testkit::redfish::{ImageServer, RedfishEmulator, firmware_image};

fn driver(url: String) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url: url,
        username: "root".into(),
        password: "calvin".into(),
        verify_tls: true,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(10),
        allow_plain_http: true,
    })
    .unwrap()
}

/// Polls the task until it ends (at most 50 polls); returns the statuses seen.
async fn follow(bmc: &Redfish, t: &UpdateTask) -> Vec<TaskStatus> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let s = bmc.task_status(t).await.unwrap();
        let end = s.phase != TaskPhase::Running;
        seen.push(s);
        if end {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the task never ended: {seen:?}");
}

async fn bios_uri(bmc: &Redfish) -> String {
    let inv = bmc.firmware_inventory().await.unwrap();
    inv.iter()
        .find(|i| i.kind == ComponentKind::Bios)
        .unwrap()
        .uri
        .clone()
}

#[tokio::test]
async fn inventory_and_capabilities() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(emu.url());
    let inv = bmc.firmware_inventory().await.unwrap();
    let kinds: Vec<(ComponentKind, &str, Option<&str>)> = inv
        .iter()
        .map(|i| (i.kind, i.id.as_str(), i.version.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ComponentKind::Bmc, "BMC", Some("1.0.0")),
            (ComponentKind::Bios, "BIOS", Some("1.0.0")),
            (ComponentKind::Nic, "NIC.1", Some("1.0.0")),
            (ComponentKind::Drive, "Disk.0", Some("1.0.0")),
        ]
    );
    assert!(inv.iter().all(|i| i.updateable));
    assert_eq!(inv[1].software_id.as_deref(), Some("plinth-bios"));
    let caps = bmc.update_capabilities().await.unwrap();
    assert_eq!(caps.transfer_protocols, vec!["HTTP", "HTTPS"]);
    assert!(caps.simple_update.is_some() && caps.multipart_push_uri.is_some());
    // A protocol the BMC does not list is refused before anything is sent.
    let e = bmc
        .simple_update("ftp://10.0.0.1/fw.bin", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BmcError::Unsupported(m) if m.contains("FTP")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_simple_update_is_fetched_followed_and_applied() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let img = firmware_image("bios", "1.1.0", 100_000);
    let web = ImageServer::start_bytes(img.clone(), "fw.bin")
        .await
        .unwrap();
    let bmc = driver(emu.url());
    let target = bios_uri(&bmc).await;
    let t = bmc
        .simple_update(&web.url(), std::slice::from_ref(&target))
        .await
        .unwrap();
    assert!(t.monitor.is_some() && t.task.is_some(), "{t:?}");
    let seen = follow(&bmc, &t).await;
    assert!(seen.len() > 1, "the task ran for a few polls: {seen:?}");
    assert!(seen[0].percent.is_some_and(|p| p < 100));
    let end = seen.last().unwrap();
    assert_eq!(end.phase, TaskPhase::Completed, "{end:?}");
    assert!(!end.needs_reboot);
    assert_eq!(web.hits(), 1, "the BMC fetched the image once");
    assert_eq!(emu.firmware_received()[0].1, img);
    assert_eq!(emu.firmware_version("BIOS").as_deref(), Some("1.1.0"));
    assert_eq!(emu.firmware_version("BMC").as_deref(), Some("1.0.0"));
    let inv = bmc.firmware_inventory().await.unwrap();
    assert_eq!(inv[1].version.as_deref(), Some("1.1.0"));

    // The monitor alone tells the same: 202 while it runs, the Task when done.
    let t = bmc
        .simple_update(&web.url(), std::slice::from_ref(&target))
        .await
        .unwrap();
    let monitor_only = UpdateTask {
        monitor: t.monitor.clone(),
        task: None,
        immediate: false,
    };
    let seen = follow(&bmc, &monitor_only).await;
    assert_eq!(seen.last().unwrap().phase, TaskPhase::Completed);
    assert_eq!(seen[0].phase, TaskPhase::Running);
}

#[tokio::test]
async fn failures_wrong_images_and_unreachable_urls_end_the_task() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(emu.url());
    let target = vec![bios_uri(&bmc).await];

    // The BMC's flash fails.
    emu.firmware(|k| k.fail = true);
    let web = ImageServer::start_bytes(firmware_image("bios", "1.1.0", 1000), "fw.bin")
        .await
        .unwrap();
    let t = bmc.simple_update(&web.url(), &target).await.unwrap();
    let end = follow(&bmc, &t).await.pop().unwrap();
    assert_eq!(end.phase, TaskPhase::Failed);
    assert_eq!(end.messages, vec!["Flash write failed."]);
    emu.firmware(|k| k.fail = false);

    // An image for another component.
    let nic = ImageServer::start_bytes(firmware_image("nic", "2.0", 1000), "fw.bin")
        .await
        .unwrap();
    let t = bmc.simple_update(&nic.url(), &target).await.unwrap();
    let end = follow(&bmc, &t).await.pop().unwrap();
    assert_eq!(end.phase, TaskPhase::Failed);
    assert!(end.messages[0].contains("verification"), "{end:?}");

    // A URL the BMC cannot fetch.
    let t = bmc
        .simple_update(&format!("http://{}/nope.bin", web.addr), &target)
        .await
        .unwrap();
    let end = follow(&bmc, &t).await.pop().unwrap();
    assert_eq!(end.phase, TaskPhase::Failed);
    assert!(end.messages[0].contains("HTTP 404"), "{end:?}");

    // A target that is not in the inventory: refused at once.
    let e = bmc
        .simple_update(&web.url(), &["/redfish/v1/Nope".to_owned()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BmcError::Rejected(m) if m.contains("Targets")),
        "{e:?}"
    );
    assert_eq!(emu.firmware_version("BIOS").as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn success_that_keeps_the_old_version_and_a_reset_that_activates() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(emu.url());
    let target = vec![bios_uri(&bmc).await];
    let web = ImageServer::start_bytes(firmware_image("bios", "1.1.0", 1000), "fw.bin")
        .await
        .unwrap();

    // The BMC says Completed/OK and changes nothing: only a read-back shows it.
    emu.firmware(|k| k.keep_old_version = true);
    let t = bmc.simple_update(&web.url(), &target).await.unwrap();
    let end = follow(&bmc, &t).await.pop().unwrap();
    assert_eq!((end.phase, end.needs_reboot), (TaskPhase::Completed, false));
    let inv = bmc.firmware_inventory().await.unwrap();
    assert_eq!(inv[1].version.as_deref(), Some("1.0.0"));

    // An update that needs a reset: the version changes only after one.
    emu.firmware(|k| {
        k.keep_old_version = false;
        k.needs_reset = true;
    });
    let t = bmc.simple_update(&web.url(), &target).await.unwrap();
    let end = follow(&bmc, &t).await.pop().unwrap();
    assert_eq!((end.phase, end.needs_reboot), (TaskPhase::Completed, true));
    assert_eq!(emu.firmware_version("BIOS").as_deref(), Some("1.0.0"));
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(
        bmc.firmware_inventory().await.unwrap()[1]
            .version
            .as_deref(),
        Some("1.1.0")
    );
}

#[tokio::test]
async fn a_multipart_push_carries_the_image_and_its_targets() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = driver(emu.url());
    let inv = bmc.firmware_inventory().await.unwrap();
    let nic = inv.iter().find(|i| i.kind == ComponentKind::Nic).unwrap();
    // Bytes that look like a boundary and CRLFs inside the image must survive.
    let mut img = firmware_image("nic", "2.0.1", 10);
    img.extend_from_slice(b"\r\n--plinth-\r\n\r\n");
    img.extend(std::iter::repeat_n(0xa5u8, 3 << 20));
    let t = bmc
        .multipart_update(img.clone(), std::slice::from_ref(&nic.uri))
        .await
        .unwrap();
    let end = follow(&bmc, &t).await.pop().unwrap();
    assert_eq!(end.phase, TaskPhase::Completed, "{end:?}");
    assert_eq!(emu.firmware_received()[0], ("multipart".to_owned(), img));
    assert_eq!(emu.firmware_version("NIC.1").as_deref(), Some("2.0.1"));

    // A BMC without a multipart push: a clear refusal.
    emu.firmware(|k| k.no_multipart = true);
    let e = bmc.multipart_update(vec![1], &[]).await.unwrap_err();
    assert!(matches!(e, BmcError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn sushy_serves_an_update_service() {
    let s = plinth_testkit::sushy::Sushy::start(Some(("root", "calvin"))).unwrap();
    let bmc = driver(format!("http://127.0.0.1:{}", s.port));
    let caps = bmc.update_capabilities().await.unwrap();
    assert_eq!(caps.transfer_protocols, vec!["HTTP", "HTTPS"]);
    assert!(caps.simple_update.is_some());
    assert!(caps.multipart_push_uri.is_none());
    // sushy advertises a FirmwareInventory it does not serve: the driver falls back to the
    // system's BiosVersion, which sushy's fake driver does not have either: an empty inventory.
    let inv = bmc.firmware_inventory().await.unwrap();
    assert!(inv.is_empty(), "{inv:?}");
    // Its fake driver cannot update: an error with sushy's message, not a task.
    let sys = format!("/redfish/v1/Systems/{}", plinth_testkit::sushy::UUID);
    let e = bmc
        .simple_update("http://127.0.0.1:9/fw.bin", &[sys])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BmcError::Busy(m) if m.contains("Failed fetching BIOS information")),
        "{e:?}"
    );
}
