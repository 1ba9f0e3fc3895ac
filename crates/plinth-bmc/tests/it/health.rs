//! Hardware health and the BMC's event log (issue 20): the Redfish driver against the test
//! kit's Redfish BMC with injected faults (a stopped fan, a CPU past its critical threshold, a
//! failed PSU, a chassis with only `Sensors`) and a log served newest first over several pages;
//! the IPMI driver against the test kit's IPMI BMC (chassis faults, SEL records appended at
//! run time, a cleared SEL, a BMC that wants a reservation); and against sushy-tools, which
//! has Thermal but no Power and no LogServices.

use std::time::Duration;

use plinth_bmc::health::HealthStatus;
use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};
use plinth_bmc::redfish::{Redfish, RedfishConfig};
use plinth_bmc::{Bmc, LogBatch};
use plinth_testkit::ipmi::{ChassisFaults, IpmiEmulator, IpmiEmulatorConfig};
use plinth_testkit::redfish::RedfishEmulator;

fn redfish(base_url: String, user: &str, password: &str) -> Redfish {
    Redfish::new(RedfishConfig {
        base_url,
        username: user.into(),
        password: password.into(),
        verify_tls: false,
        ca_pem: None,
        system: None,
        timeout: Duration::from_secs(30),
        allow_plain_http: true,
    })
    .unwrap()
}

fn messages(b: &LogBatch) -> Vec<&str> {
    b.entries.iter().map(|e| e.message.as_str()).collect()
}

#[tokio::test]
async fn redfish_faults_become_health() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    let bmc = redfish(emu.url(), "root", "calvin");
    let h = bmc.health().await.unwrap();
    assert_eq!(h.status, HealthStatus::Ok, "{h:?}");
    assert!(h.components.is_empty());

    emu.faults(|f| f.fan_failed = true);
    let h = bmc.health().await.unwrap();
    assert_eq!(h.status, HealthStatus::Critical);
    let names: Vec<_> = h
        .components
        .iter()
        .map(|c| (c.kind.as_str(), c.name.as_str()))
        .collect();
    // The fan, and the chassis whose rollup says so.
    assert!(names.contains(&("fan", "Fan 1")), "{names:?}");
    assert!(names.contains(&("chassis", "Chassis")), "{names:?}");

    // A reading past its threshold with Health left OK: plinth compares.
    emu.faults(|f| {
        f.fan_failed = false;
        f.cpu_temp = Some(95.0);
    });
    let h = bmc.health().await.unwrap();
    assert_eq!(h.status, HealthStatus::Critical);
    assert_eq!(h.components.len(), 1, "{h:?}");
    assert_eq!(h.components[0].kind, "temperature");
    assert!(h.components[0].reason.contains("95"), "{h:?}");

    emu.faults(|f| {
        f.cpu_temp = Some(85.0);
        f.psu_failed = true;
    });
    let h = bmc.health().await.unwrap();
    let kinds: Vec<_> = h
        .components
        .iter()
        .map(|c| (c.kind.as_str(), c.status))
        .collect();
    assert!(
        kinds.contains(&("power_supply", HealthStatus::Critical)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("temperature", HealthStatus::Warning)),
        "{kinds:?}"
    );
    assert_eq!(
        h.components[0].status,
        HealthStatus::Critical,
        "worst first"
    );

    // Only the newer Sensors collection.
    emu.faults(|f| {
        f.psu_failed = false;
        f.sensors_only = true;
        f.cpu_temp = Some(85.0);
    });
    let h = bmc.health().await.unwrap();
    assert_eq!(h.status, HealthStatus::Warning, "{h:?}");
    assert_eq!(h.components[0].name, "CPU1 Temp");
    assert!(emu.requests().iter().any(|r| r.ends_with("/Sensors")));

    // The system's own status, and a BMC with nothing but the system.
    emu.faults(|f| {
        *f = Default::default();
        f.system_health = Some("Warning".into());
        f.bare = true;
    });
    let h = bmc.health().await.unwrap();
    assert_eq!(h.status, HealthStatus::Warning);
    assert_eq!(h.components[0].kind, "system");
    let first = bmc.log_entries(None, 10).await.unwrap();
    assert!(first.entries.is_empty());
    let again = bmc.log_entries(Some(&first.cursor), 10).await.unwrap();
    assert!(
        again.entries.is_empty(),
        "no LogServices: no entries, no error"
    );
}

#[tokio::test]
async fn redfish_log_entries_come_once_each_in_order() {
    let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
    emu.push_log("OK", "old entry 1");
    emu.push_log("Critical", "old entry 2");
    let bmc = redfish(emu.url(), "root", "calvin");
    // The first read replays nothing.
    let first = bmc.log_entries(None, 10).await.unwrap();
    assert!(first.entries.is_empty(), "{first:?}");

    // Five new ones over three pages, served newest first.
    for i in 1..=5 {
        emu.push_log(
            if i == 3 { "Critical" } else { "Warning" },
            &format!("new {i}"),
        );
    }
    let pages = || {
        emu.requests()
            .iter()
            .filter(|r| r.contains("/Entries"))
            .count()
    };
    let before = pages();
    let b = bmc.log_entries(Some(&first.cursor), 10).await.unwrap();
    assert_eq!(messages(&b), ["new 1", "new 2", "new 3", "new 4", "new 5"]);
    assert_eq!(b.entries[2].severity, HealthStatus::Critical);
    assert!(b.entries[0].time.is_some());
    assert_eq!(pages() - before, 4, "seven entries, two a page");
    let none = bmc.log_entries(Some(&b.cursor), 10).await.unwrap();
    assert!(none.entries.is_empty(), "{none:?}");

    // Bounded per read: the rest come at the next.
    for i in 6..=8 {
        emu.push_log("OK", &format!("new {i}"));
    }
    let two = bmc.log_entries(Some(&none.cursor), 2).await.unwrap();
    assert_eq!(messages(&two), ["new 6", "new 7"]);
    let one = bmc.log_entries(Some(&two.cursor), 2).await.unwrap();
    assert_eq!(messages(&one), ["new 8"]);
}

fn ipmi(emu: &IpmiEmulator) -> Ipmi {
    Ipmi::new(IpmiConfig {
        addr: emu.addr(),
        username: "admin".into(),
        password: "password".into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: CipherSuite::Seventeen,
    })
}

#[tokio::test]
async fn ipmi_chassis_faults_and_the_sel() {
    let emu = IpmiEmulator::start(IpmiEmulatorConfig::new("admin", "password"))
        .await
        .unwrap();
    let bmc = ipmi(&emu);
    assert_eq!(bmc.health().await.unwrap().status, HealthStatus::Ok);
    emu.set_chassis_faults(ChassisFaults {
        power_fault: true,
        cooling_fault: true,
        ..Default::default()
    });
    let h = bmc.health().await.unwrap();
    assert_eq!(h.status, HealthStatus::Critical);
    let kinds: Vec<_> = h.components.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["power", "cooling"]);
    emu.set_chassis_faults(ChassisFaults::default());
    assert_eq!(bmc.health().await.unwrap().status, HealthStatus::Ok);

    // An empty SEL, then one with history: the first read replays nothing.
    emu.add_sel(0x12, 0x01, 0x6f, 0x00, false);
    let first = bmc.log_entries(None, 10).await.unwrap();
    assert!(first.entries.is_empty());
    let none = bmc.log_entries(Some(&first.cursor), 10).await.unwrap();
    assert!(none.entries.is_empty(), "{none:?}");

    emu.add_sel(0x08, 0x31, 0x6f, 0x01, false); // PSU failure
    emu.add_sel(0x01, 0x02, 0x01, 0x09, false); // temperature upper critical going high
    emu.add_sel(0x08, 0x31, 0x6f, 0x01, true); // PSU failure, deasserted
    let b = bmc.log_entries(Some(&none.cursor), 2).await.unwrap();
    assert_eq!(
        messages(&b),
        [
            "Power supply #0x31: failure detected (asserted)",
            "Temperature #0x02: upper critical going high (asserted)"
        ]
    );
    assert_eq!(b.entries[0].severity, HealthStatus::Critical);
    assert_eq!(b.entries[0].source, "sel");
    let c = bmc.log_entries(Some(&b.cursor), 2).await.unwrap();
    assert_eq!(
        messages(&c),
        ["Power supply #0x31: failure detected (deasserted)"]
    );
    assert_eq!(c.entries[0].severity, HealthStatus::Ok);
    assert!(
        bmc.log_entries(Some(&c.cursor), 2)
            .await
            .unwrap()
            .entries
            .is_empty()
    );

    // Cleared, then one more, from a BMC that wants a reservation: only the new one.
    emu.clear_sel();
    emu.set_sel_requires_reservation(true);
    emu.add_sel(0x0c, 0x05, 0x6f, 0x01, false);
    let d = bmc.log_entries(Some(&c.cursor), 10).await.unwrap();
    assert_eq!(messages(&d), ["Memory #0x05: uncorrectable ECC (asserted)"]);
}

#[tokio::test]
async fn sushy_reports_ok_and_has_no_log() {
    let sushy = plinth_testkit::sushy::Sushy::start(None).unwrap();
    let bmc = redfish(format!("http://127.0.0.1:{}", sushy.port), "", "");
    let h = bmc.health().await.unwrap();
    // sushy's system and its Thermal (CPU 41 °C of 45, fans at 2100 RPM) are all OK.
    assert_eq!(h.status, HealthStatus::Ok, "{h:?}");
    assert!(h.components.is_empty());
    let first = bmc.log_entries(None, 10).await.unwrap();
    let again = bmc.log_entries(Some(&first.cursor), 10).await.unwrap();
    assert!(again.entries.is_empty());
}

/// OpenIPMI's ipmi_sim keeps a real SEL (it has no Platform Event Message, so `ipmitool event`
/// fails there): records are added with Add SEL Entry through `ipmitool raw`.
#[tokio::test]
async fn ipmi_sim_sel_entries_arrive_once() {
    use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, USER};
    let sim = IpmiSim::start(None).unwrap();
    let bmc = Ipmi::new(IpmiConfig {
        addr: sim.addr(),
        username: USER.into(),
        password: PASSWORD.into(),
        timeout: Duration::from_millis(500),
        retries: 2,
        cipher_suite: CipherSuite::Three,
    });
    assert_eq!(bmc.health().await.unwrap().status, HealthStatus::Ok);
    // A standard record: sensor type, sensor number, event type, event data 1.
    let add = |sensor_type: &str, sensor: &str, event_type: &str, data1: &str| {
        sim.ipmitool(&[
            "raw",
            "0x0a",
            "0x44",
            "0x00",
            "0x00",
            "0x02",
            "0x00",
            "0x00",
            "0x00",
            "0x00",
            "0x20",
            "0x00",
            "0x04",
            sensor_type,
            sensor,
            event_type,
            data1,
            "0xff",
            "0xff",
        ])
        .unwrap();
    };
    add("0x01", "0x30", "0x01", "0x59"); // temperature, upper critical going high
    let first = bmc.log_entries(None, 10).await.unwrap();
    assert!(first.entries.is_empty(), "history is not replayed");
    add("0x01", "0x30", "0x01", "0x59");
    add("0x0c", "0x40", "0x6f", "0x00"); // memory, correctable ECC
    let b = bmc.log_entries(Some(&first.cursor), 10).await.unwrap();
    let m = messages(&b);
    assert_eq!(m.len(), 2, "{b:?}");
    assert!(
        m[0].starts_with("Temperature") && m[0].contains("upper critical going high"),
        "{m:?}"
    );
    assert_eq!(b.entries[0].severity, HealthStatus::Critical);
    assert!(
        m[1].starts_with("Memory") && m[1].contains("correctable ECC"),
        "{m:?}"
    );
    let listed = sim.ipmitool(&["sel", "list"]).unwrap();
    assert!(
        listed.lines().count() >= 3,
        "ipmitool sees them too: {listed}"
    );
    let again = bmc.log_entries(Some(&b.cursor), 10).await.unwrap();
    assert!(again.entries.is_empty(), "{again:?}");
}
