//! BMC discovery (issue 21, part 4): a scan of a CIDR against the test kit's Redfish and IPMI
//! BMCs on loopback addresses. Only the CIDR's addresses are contacted (a BMC just outside it
//! counts no request), what answered is listed with its serial, MACs and the factory
//! credential's user name (never a password), and a BMC reporting the MAC of a discovered
//! machine is attached to it and the machine adopted into `enrolled`.

use std::time::Duration;

use plinth_bmc::discover::FactoryCredential;
use plinth_core::Principal;
use plinth_core::scan::{ScanSettings, Scanner};
use plinth_testkit::ipmi::{Fru, IpmiEmulator, IpmiEmulatorConfig};
use plinth_testkit::redfish::RedfishEmulator;
use plinth_testkit::{TestDb, mac};
use plinth_types::scan::BmcScanRequest;
use plinth_types::{ErrorKind, MachineState, Role};

const FACTORY: (&str, &str) = ("root", "factory-calvin");

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "tech-anna".into(),
        role: Role::Admin,
    }
}

fn settings() -> ScanSettings {
    ScanSettings {
        factory_credentials: vec![
            FactoryCredential {
                username: "ADMIN".into(),
                password: "ADMIN".into(),
            },
            FactoryCredential {
                username: FACTORY.0.into(),
                password: FACTORY.1.into(),
            },
        ],
        scan_concurrency: 4,
        scan_timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn a_scan_finds_the_bmcs_of_its_cidr_only_and_adopts_a_discovered_machine() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let inside = RedfishEmulator::start_at(FACTORY.0, FACTORY.1, "127.0.0.1:0")
        .await
        .unwrap();
    let nic = mac(30);
    inside.set_nics(&[&nic.to_string()]);
    // Just outside the CIDR, on a port the scan probes.
    let outside = RedfishEmulator::start_at(FACTORY.0, FACTORY.1, "127.0.0.2:0")
        .await
        .unwrap();
    let fru = Fru::new("Acme", "X1", "IPMI-SN-7");
    let ipmi = IpmiEmulator::start(IpmiEmulatorConfig {
        fru: Some(fru.to_bytes()),
        ..IpmiEmulatorConfig::new(FACTORY.0, FACTORY.1)
    })
    .await
    .unwrap();
    // A machine that PXE-booted and is known by its MAC only.
    let discovered = {
        let mut conn = app.pool().acquire().await.unwrap();
        plinth_db::machines::insert_discovered(&mut conn, nic, None, None, None, None)
            .await
            .unwrap()
            .unwrap()
    };

    let scan = app
        .request_bmc_scan(
            &admin(),
            BmcScanRequest {
                cidr: "127.0.0.1/32".into(),
                redfish_ports: Some(vec![inside.addr.port(), outside.addr.port()]),
                ipmi_ports: Some(vec![ipmi.port()]),
                rate: Some(100),
            },
        )
        .await
        .unwrap();
    assert_eq!(scan.state, "queued");
    assert_eq!(scan.addresses, 1);
    let scanner = Scanner::new(app.clone(), settings());
    assert_eq!(scanner.run_once().await.unwrap(), Some(scan.id));
    assert_eq!(
        scanner.run_once().await.unwrap(),
        None,
        "nothing else queued"
    );
    let done = app.bmc_scan(&admin(), scan.id).await.unwrap();
    assert_eq!(done.state, "done", "{done:?}");
    assert!(
        outside.requests().is_empty(),
        "127.0.0.2 is outside the CIDR: {:?}",
        outside.requests()
    );
    let redfish: Vec<_> = done
        .results
        .iter()
        .filter(|r| r.protocol == "redfish")
        .collect();
    assert_eq!(redfish.len(), 1, "{done:#?}");
    let r = redfish[0];
    assert_eq!(r.address, inside.url());
    assert_eq!(r.serial.as_deref(), Some("PL-0001"));
    assert_eq!(r.macs, vec![nic.to_string()]);
    assert_eq!(
        r.credential.as_deref(),
        Some(FACTORY.0),
        "the second credential"
    );
    assert_eq!(r.machine_id, Some(discovered));
    let i: Vec<_> = done
        .results
        .iter()
        .filter(|r| r.protocol == "ipmi")
        .collect();
    assert_eq!(i.len(), 1, "{done:#?}");
    assert_eq!(i[0].address, ipmi.addr().to_string());
    assert_eq!(i[0].credential.as_deref(), Some(FACTORY.0));
    assert_eq!(i[0].serial.as_deref(), Some("IPMI-SN-7"));
    assert_eq!(i[0].machine_id, None, "no MAC to match");
    // The discovered machine was adopted with the BMC and the credential that worked.
    let m = app.get_machine(&admin(), discovered).await.unwrap();
    assert_eq!(m.state, MachineState::Enrolled);
    assert_eq!(
        app.bmc_password(discovered).await.unwrap().as_deref(),
        Some(FACTORY.1)
    );
    // No password in what the API answers.
    let text = format!("{done:?}");
    assert!(!text.contains(FACTORY.1) && !text.contains("ADMIN\""));

    // The /30 around it: 127.0.0.1 and .2 both answer now.
    let wide = app
        .request_bmc_scan(
            &admin(),
            BmcScanRequest {
                cidr: "127.0.0.0/30".into(),
                redfish_ports: Some(vec![inside.addr.port(), outside.addr.port()]),
                ipmi_ports: Some(vec![]),
                rate: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(wide.addresses, 2);
    scanner.run_once().await.unwrap();
    let wide = app.bmc_scan(&admin(), wide.id).await.unwrap();
    assert_eq!(wide.results.len(), 2, "{wide:#?}");
    assert!(!outside.requests().is_empty());
}

#[tokio::test]
async fn scans_are_bounded_and_for_admins() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let req = |cidr: &str| BmcScanRequest {
        cidr: cidr.into(),
        redfish_ports: None,
        ipmi_ports: None,
        rate: None,
    };
    let e = app
        .request_bmc_scan(&admin(), req("10.0.0.0/16"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code),
        (ErrorKind::InvalidInput, "cidr_too_large")
    );
    let e = app
        .request_bmc_scan(&admin(), req("10.0.0.9/24"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_cidr");
    let e = app
        .request_bmc_scan(
            &admin(),
            BmcScanRequest {
                rate: Some(0),
                ..req("10.0.0.0/24")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_rate");
    let operator = Principal {
        role: Role::Operator,
        ..admin()
    };
    let e = app
        .request_bmc_scan(&operator, req("10.0.0.0/24"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(
        app.bmc_scans(&admin()).await.unwrap().is_empty(),
        "nothing queued"
    );
}
