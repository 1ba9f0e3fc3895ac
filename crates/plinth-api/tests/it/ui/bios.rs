//! The machine page's BIOS section (issue 21): shown to an operator with its form; the form
//! needs the session's token, and queues a `bios_apply` job with the typed values.

use plinth_types::api::{BmcProtocol, BmcSpec, MachineCreate, NicSpec};

use super::*;

#[tokio::test]
async fn the_bios_form_queues_a_checked_change() {
    let ui = Ui::start().await;
    let (mut jar, csrf) = ui.login().await;
    let admin = Principal::system();
    let m = ui
        .app
        .enroll_machine(
            &admin,
            MachineCreate {
                hostname: Some("bios-ui".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: plinth_testkit::mac(7),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: Some(BmcSpec {
                    protocol: BmcProtocol::Redfish,
                    address: "10.1.0.77".into(),
                    username: "root".into(),
                    password: "bmc-secret".into(),
                    verify_tls: Some(false),
                    plain_http: None,
                }),
            },
        )
        .await
        .unwrap();
    let path = format!("/machines/{}", m.id);
    let (status, _, page) = ui.get(&mut jar, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"bios-form\""), "{page}");
    assert!(page.contains("Not read yet"), "{page}");

    let form_path = format!("{path}/bios");
    let change = "BootMode=Bios\r\nNumCores=4\r\n# a comment\r\n";
    // Without the session's token: refused, nothing queued.
    let (status, _, _) = ui
        .post(&mut jar, &form_path, &[("attributes", change)], None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A line that is no assignment: the message, nothing queued.
    let (status, _, _) = ui
        .post(
            &mut jar,
            &form_path,
            &[("_csrf", &csrf), ("attributes", "BootMode")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, page) = ui.get(&mut jar, &path).await;
    assert!(page.contains("NAME=VALUE or NAME:=JSON"), "{page}");
    let jobs = |ui: &Ui| {
        let app = ui.app.clone();
        let id = m.id;
        async move {
            app.jobs(
                &Principal::system(),
                plinth_core::jobs::JobQuery {
                    machine: Some(id),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .jobs
            .into_iter()
            .filter(|j| j.kind == "bios_apply")
            .collect::<Vec<_>>()
        }
    };
    assert!(jobs(&ui).await.is_empty());

    let (status, headers, _) = ui
        .post(
            &mut jar,
            &form_path,
            &[("_csrf", &csrf), ("attributes", change)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION].to_str().unwrap(), path);
    let (_, _, page) = ui.get(&mut jar, &path).await;
    assert!(page.contains("BIOS change: queued as BMC job"), "{page}");
    assert!(page.contains("id=\"bios-last\""), "{page}");
    let queued = jobs(&ui).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].params["attributes"],
        serde_json::json!({"BootMode": "Bios", "NumCores": 4})
    );
}
