//! Hardware health and the BMC's event log (issue 20), as the drivers read them: [`Health`] is
//! an overall status with the components that are not OK; [`LogEntry`] one entry of the BMC's
//! event log (Redfish LogServices, the IPMI SEL). The decoding here is sans-IO: Redfish
//! resources as JSON values, SEL records as bytes.
//!
//! Both are read tolerantly: a resource a BMC lacks (no Thermal, no LogServices, a SEL command
//! it refuses) makes the answer less complete, never an error (the power sync must not fail
//! because a BMC cannot tell its fan speeds).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use plinth_types::health::{HealthComponent, HealthStatus};

/// What the BMC says about the machine's health now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The worst of the components and of what the BMC says of the system as a whole.
    pub status: HealthStatus,
    /// The components that are not OK, worst first.
    pub components: Vec<HealthComponent>,
}

impl Health {
    pub fn unknown() -> Health {
        Health {
            status: HealthStatus::Unknown,
            components: Vec::new(),
        }
    }

    /// From what the BMC says of the whole (`overall`, Unknown when it says nothing) and the
    /// components: the worst of them; OK components are dropped; worst first.
    pub fn from_parts(overall: HealthStatus, mut components: Vec<HealthComponent>) -> Health {
        components.retain(|c| c.status > HealthStatus::Ok);
        components.sort_by_key(|c| std::cmp::Reverse(c.status));
        let worst = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Unknown);
        Health {
            status: overall.max(worst),
            components,
        }
    }
}

/// One entry of the BMC's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The BMC's id for it (a Redfish LogEntry `Id`, a SEL record id in hex).
    pub id: String,
    /// When the BMC says it happened.
    pub time: Option<DateTime<Utc>>,
    /// `Ok` for an informational entry; `Unknown` when the BMC does not say.
    pub severity: HealthStatus,
    pub message: String,
    /// Which log it came from (a Redfish LogService path, `sel`).
    pub source: String,
}

/// New log entries and the cursor after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    pub entries: Vec<LogEntry>,
    pub cursor: String,
}

/// At most this many characters of a message or name the BMC sends are kept.
pub const MAX_TEXT: usize = 300;

pub(crate) fn clip(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect();
    s.trim().to_owned()
}

// ------------------------------------------------------------------ Redfish

fn status_of(v: &Value) -> (HealthStatus, Option<&str>) {
    let st = &v["Status"];
    let state = st["State"].as_str();
    let h = st["Health"]
        .as_str()
        .map(HealthStatus::from_redfish)
        .unwrap_or(HealthStatus::Unknown);
    (h, state)
}

fn name_of(v: &Value, fallback: &str) -> String {
    v["Name"]
        .as_str()
        .or_else(|| v["FanName"].as_str())
        .or_else(|| v["MemberId"].as_str())
        .or_else(|| v["Id"].as_str())
        .map(clip)
        .unwrap_or_else(|| fallback.to_owned())
}

fn component(kind: &str, name: String, status: HealthStatus, reason: String) -> HealthComponent {
    HealthComponent {
        kind: kind.to_owned(),
        name,
        status,
        reason,
    }
}

/// A component whose `State` is `Absent` or `Disabled` is not judged (an empty PSU bay).
fn present(state: Option<&str>) -> bool {
    !matches!(state, Some("Absent" | "Disabled" | "UnavailableOffline"))
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v[k].as_f64()
}

/// A reading against its thresholds, in words, with the status they give (for a BMC that
/// reports a reading past a threshold without setting Health).
fn threshold_reason(v: &Value, reading_key: &str, unit: &str) -> Option<(HealthStatus, String)> {
    let r = num(v, reading_key)?;
    let upper = [
        ("UpperThresholdFatal", HealthStatus::Critical),
        ("UpperThresholdCritical", HealthStatus::Critical),
        ("UpperThresholdNonCritical", HealthStatus::Warning),
    ];
    for (k, s) in upper {
        if let Some(t) = num(v, k)
            && r >= t
        {
            return Some((s, format!("{r}{unit}, at or above {t}{unit}")));
        }
    }
    let lower = [
        ("LowerThresholdFatal", HealthStatus::Critical),
        ("LowerThresholdCritical", HealthStatus::Critical),
        ("LowerThresholdNonCritical", HealthStatus::Warning),
    ];
    for (k, s) in lower {
        // (A fan at 0 RPM against a fatal threshold of 0 is stopped: it counts.)
        if let Some(t) = num(v, k)
            && r <= t
        {
            return Some((s, format!("{r}{unit}, at or below {t}{unit}")));
        }
    }
    None
}

/// The components of a list (Temperatures, Fans, PowerSupplies, Voltages) that are not OK.
fn judge_list(
    out: &mut Vec<HealthComponent>,
    items: &Value,
    kind: &str,
    reading: &str,
    unit: &str,
) {
    let Some(items) = items.as_array() else {
        return;
    };
    for (i, it) in items.iter().enumerate().take(256) {
        let (h, state) = status_of(it);
        if !present(state) {
            continue;
        }
        let name = name_of(it, &format!("{kind} {i}"));
        let by_reading = threshold_reason(it, reading, unit);
        let status = h.max(by_reading.as_ref().map_or(HealthStatus::Unknown, |r| r.0));
        if status <= HealthStatus::Ok {
            continue;
        }
        let reason = match (&by_reading, h) {
            (Some((_, why)), _) => why.clone(),
            (None, h) => format!("the BMC reports it {}", h.as_str()),
        };
        out.push(component(kind, name, status, reason));
    }
}

/// The components of a Redfish `Thermal` resource that are not OK.
pub fn judge_thermal(v: &Value) -> Vec<HealthComponent> {
    let mut out = Vec::new();
    judge_list(
        &mut out,
        &v["Temperatures"],
        "temperature",
        "ReadingCelsius",
        " °C",
    );
    judge_list(&mut out, &v["Fans"], "fan", "Reading", " RPM");
    out
}

/// The components of a Redfish `Power` resource that are not OK.
pub fn judge_power(v: &Value) -> Vec<HealthComponent> {
    let mut out = Vec::new();
    judge_list(&mut out, &v["PowerSupplies"], "power_supply", "", "");
    judge_list(&mut out, &v["Voltages"], "voltage", "ReadingVolts", " V");
    out
}

/// One member of the newer `Sensors` collection (Sensor.v1): OK or a component.
pub fn judge_sensor(v: &Value) -> Option<HealthComponent> {
    let (h, state) = status_of(v);
    if !present(state) {
        return None;
    }
    let kind = match v["ReadingType"].as_str() {
        Some("Temperature") => "temperature",
        Some("Rotational") => "fan",
        Some("Voltage") => "voltage",
        Some("Power") | Some("Current") => "power_supply",
        _ => "sensor",
    };
    let unit = v["ReadingUnits"]
        .as_str()
        .map(|u| format!(" {}", clip(u)))
        .unwrap_or_default();
    // Sensor.v1 thresholds are objects: {"UpperCritical": {"Reading": 90}}.
    let mut flat = serde_json::json!({ "Reading": v["Reading"].clone() });
    for (k, flat_k) in [
        ("UpperFatal", "UpperThresholdFatal"),
        ("UpperCritical", "UpperThresholdCritical"),
        ("UpperCaution", "UpperThresholdNonCritical"),
        ("LowerFatal", "LowerThresholdFatal"),
        ("LowerCritical", "LowerThresholdCritical"),
        ("LowerCaution", "LowerThresholdNonCritical"),
    ] {
        if let Some(r) = v["Thresholds"][k]["Reading"].as_f64() {
            flat[flat_k] = r.into();
        }
    }
    let by_reading = threshold_reason(&flat, "Reading", &unit);
    let status = h.max(by_reading.as_ref().map_or(HealthStatus::Unknown, |r| r.0));
    if status <= HealthStatus::Ok {
        return None;
    }
    let reason = match by_reading {
        Some((_, why)) => why,
        None => format!("the BMC reports it {}", h.as_str()),
    };
    Some(component(kind, name_of(v, "sensor"), status, reason))
}

/// What a resource (a ComputerSystem, a Chassis) says of itself: `Health` (the resource) and
/// `HealthRollup` (it and what it contains), the worse of the two; a component when not OK.
pub fn judge_status(
    v: &Value,
    kind: &str,
    fallback: &str,
) -> (HealthStatus, Option<HealthComponent>) {
    let st = &v["Status"];
    let h = st["Health"].as_str().map(HealthStatus::from_redfish);
    let roll = st["HealthRollup"].as_str().map(HealthStatus::from_redfish);
    let worst = h
        .unwrap_or(HealthStatus::Unknown)
        .max(roll.unwrap_or(HealthStatus::Unknown));
    let c = (worst > HealthStatus::Ok).then(|| {
        let reason = match (h, roll) {
            (Some(h), Some(r)) if r > h => {
                format!("the BMC reports it {h}, and something in it {r}")
            }
            _ => format!("the BMC reports it {worst}"),
        };
        component(kind, name_of(v, fallback), worst, reason)
    });
    (worst, c)
}

/// A Redfish LogEntry, or `None` when it has no id.
pub fn parse_log_entry(v: &Value, source: &str) -> Option<LogEntry> {
    let id = v["Id"].as_str().map(clip).filter(|s| !s.is_empty())?;
    let time = v["Created"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let severity = v["Severity"]
        .as_str()
        .map(HealthStatus::from_redfish)
        .unwrap_or(HealthStatus::Unknown);
    let message = v["Message"]
        .as_str()
        .map(clip)
        .filter(|m| !m.is_empty())
        .or_else(|| v["MessageId"].as_str().map(clip))
        .unwrap_or_else(|| "(no message)".to_owned());
    Some(LogEntry {
        id,
        time,
        severity,
        message,
        source: source.to_owned(),
    })
}

// ------------------------------------------------------------------ IPMI

/// Chassis faults from Get Chassis Status (IPMI 2.0 §28.2): byte 1 (current power state) and
/// byte 3 (misc chassis state).
pub fn judge_chassis_status(d: &[u8]) -> Health {
    let b1 = d.first().copied().unwrap_or(0);
    let b3 = d.get(2).copied().unwrap_or(0);
    let mut c = Vec::new();
    let mut add = |kind: &str, name: &str, s: HealthStatus, why: &str| {
        c.push(component(kind, name.to_owned(), s, why.to_owned()));
    };
    if b1 & 0x08 != 0 {
        add("power", "Power", HealthStatus::Critical, "main power fault");
    }
    if b1 & 0x10 != 0 {
        add(
            "power",
            "Power control",
            HealthStatus::Critical,
            "power control fault",
        );
    }
    if b1 & 0x02 != 0 {
        add("power", "Power", HealthStatus::Critical, "power overload");
    }
    if b3 & 0x08 != 0 {
        add(
            "cooling",
            "Cooling",
            HealthStatus::Critical,
            "cooling/fan fault",
        );
    }
    if b3 & 0x04 != 0 {
        add("drive", "Drive", HealthStatus::Warning, "drive fault");
    }
    // Chassis status answers for the whole chassis: without a fault, OK.
    Health::from_parts(HealthStatus::Ok, c)
}

fn sensor_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "Temperature",
        0x02 => "Voltage",
        0x03 => "Current",
        0x04 => "Fan",
        0x05 => "Physical security",
        0x07 => "Processor",
        0x08 => "Power supply",
        0x09 => "Power unit",
        0x0c => "Memory",
        0x0d => "Drive slot",
        0x0f => "System firmware progress",
        0x10 => "Event logging",
        0x12 => "System event",
        0x13 => "Critical interrupt",
        0x14 => "Button/switch",
        0x1d => "System boot",
        0x20 => "OS stop/shutdown",
        0x23 => "Watchdog",
        _ => "Sensor",
    }
}

/// Threshold event offsets (event type 0x01), IPMI 2.0 table 42-2.
fn threshold_event(offset: u8) -> (&'static str, HealthStatus) {
    use HealthStatus::*;
    match offset {
        0x00 => ("lower non-critical going low", Warning),
        0x01 => ("lower non-critical going high", Warning),
        0x02 => ("lower critical going low", Critical),
        0x03 => ("lower critical going high", Critical),
        0x04 => ("lower non-recoverable going low", Critical),
        0x05 => ("lower non-recoverable going high", Critical),
        0x06 => ("upper non-critical going low", Warning),
        0x07 => ("upper non-critical going high", Warning),
        0x08 => ("upper critical going low", Critical),
        0x09 => ("upper critical going high", Critical),
        0x0a => ("upper non-recoverable going low", Critical),
        0x0b => ("upper non-recoverable going high", Critical),
        _ => ("threshold event", Warning),
    }
}

/// Sensor-specific offsets (event type 0x6f), IPMI 2.0 table 42-3, for the sensor types a
/// datacenter cares about; others are named by their offset.
fn specific_event(sensor_type: u8, offset: u8) -> (String, HealthStatus) {
    use HealthStatus::*;
    let (s, h) = match (sensor_type, offset) {
        (0x05, 0x00) => ("general chassis intrusion", Warning),
        (0x07, 0x00) => ("IERR", Critical),
        (0x07, 0x01) => ("thermal trip", Critical),
        (0x07, 0x07) => ("presence detected", Ok),
        (0x07, 0x08) => ("disabled", Warning),
        (0x08, 0x00) => ("presence detected", Ok),
        (0x08, 0x01) => ("failure detected", Critical),
        (0x08, 0x02) => ("predictive failure", Warning),
        (0x08, 0x03) => ("input lost (AC/DC)", Critical),
        (0x09, 0x00) => ("power off/down", Ok),
        (0x09, 0x04) => ("AC lost", Critical),
        (0x09, 0x05) => ("soft power control failure", Critical),
        (0x09, 0x06) => ("failure detected", Critical),
        (0x0c, 0x00) => ("correctable ECC", Warning),
        (0x0c, 0x01) => ("uncorrectable ECC", Critical),
        (0x0c, 0x05) => ("correctable ECC logging limit reached", Warning),
        (0x0d, 0x00) => ("drive present", Ok),
        (0x0d, 0x01) => ("drive fault", Critical),
        (0x0d, 0x02) => ("predictive failure", Warning),
        (0x10, 0x01) => ("event type logging disabled", Warning),
        (0x10, 0x02) => ("log area reset/cleared", Ok),
        (0x10, 0x04) => ("SEL full", Warning),
        (0x10, 0x05) => ("SEL almost full", Warning),
        (0x12, 0x00) => ("system reconfigured", Ok),
        (0x12, 0x01) => ("OEM system boot event", Ok),
        (0x13, 0x00) => ("front panel NMI", Warning),
        (0x13, 0x04) => ("PCI PERR", Critical),
        (0x13, 0x05) => ("PCI SERR", Critical),
        (0x13, 0x07) => ("bus correctable error", Warning),
        (0x13, 0x08) => ("bus uncorrectable error", Critical),
        (0x13, 0x09) => ("fatal NMI", Critical),
        (0x14, 0x00) => ("power button pressed", Ok),
        (0x1d, 0x00) => ("initiated by power up", Ok),
        (0x20, 0x01) => ("run-time critical stop", Critical),
        (0x23, 0x01) => ("hard reset", Warning),
        (0x23, 0x02) => ("power down", Warning),
        (0x23, 0x03) => ("power cycle", Warning),
        _ => return (format!("event offset {offset:#04x}"), Unknown),
    };
    (s.to_owned(), h)
}

/// A SEL record (Get SEL Entry's 16 record bytes): the entry, or `None` when too short.
/// Standard records (type 0x02) are decoded to words; OEM records are named by their type.
pub fn decode_sel_record(r: &[u8]) -> Option<LogEntry> {
    if r.len() < 16 {
        return None;
    }
    let id = u16::from_le_bytes([r[0], r[1]]);
    let rtype = r[2];
    let ts = u32::from_le_bytes([r[3], r[4], r[5], r[6]]);
    // Timestamps below 0x20000000 count from the BMC's initialization, not 1970 (§37.1).
    let stamp = |t: u32| {
        (t >= 0x2000_0000)
            .then(|| DateTime::from_timestamp(i64::from(t), 0))
            .flatten()
    };
    let (message, severity, time) = if rtype == 0x02 {
        let sensor_type = r[10];
        let sensor = r[11];
        let deassert = r[12] & 0x80 != 0;
        let event_type = r[12] & 0x7f;
        let offset = r[13] & 0x0f;
        let (what, sev) = match event_type {
            0x01 => {
                let (s, h) = threshold_event(offset);
                (s.to_owned(), h)
            }
            0x6f => specific_event(sensor_type, offset),
            0x02..=0x0c => (
                format!("generic event {event_type:#04x} offset {offset:#04x}"),
                HealthStatus::Unknown,
            ),
            _ => (
                format!("event type {event_type:#04x} offset {offset:#04x}"),
                HealthStatus::Unknown,
            ),
        };
        // The end of a condition is good news.
        let sev = if deassert && sev > HealthStatus::Ok {
            HealthStatus::Ok
        } else {
            sev
        };
        let dir = if deassert { "deasserted" } else { "asserted" };
        (
            format!(
                "{} #{sensor:#04x}: {what} ({dir})",
                sensor_type_name(sensor_type)
            ),
            sev,
            stamp(ts),
        )
    } else if (0xc0..=0xdf).contains(&rtype) {
        (
            format!("OEM record type {rtype:#04x}"),
            HealthStatus::Unknown,
            stamp(ts),
        )
    } else {
        (
            format!("OEM record type {rtype:#04x}"),
            HealthStatus::Unknown,
            None,
        )
    };
    Some(LogEntry {
        id: format!("{id:04x}"),
        time,
        severity,
        message,
        source: "sel".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thermal_and_power_resources_are_judged() {
        let t = json!({
            "Temperatures": [
                { "Name": "CPU Temp", "Status": {"State": "Enabled", "Health": "OK"},
                  "ReadingCelsius": 41, "UpperThresholdNonCritical": 42, "UpperThresholdCritical": 45 },
                { "Name": "Inlet", "Status": {"State": "Enabled", "Health": "OK"},
                  "ReadingCelsius": 46, "UpperThresholdCritical": 45 },
            ],
            "Fans": [
                { "Name": "Fan 1", "Status": {"State": "Enabled", "Health": "Critical"}, "Reading": 0,
                  "LowerThresholdFatal": 0 },
                { "Name": "Fan 2", "Status": {"State": "Enabled", "Health": "OK"}, "Reading": 2100,
                  "LowerThresholdFatal": 0 },
                { "Name": "Fan 3", "Status": {"State": "Absent", "Health": "Critical"} },
            ]
        });
        let c = judge_thermal(&t);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            (c[0].name.as_str(), c[0].status),
            ("Inlet", HealthStatus::Critical)
        );
        assert!(c[0].reason.contains("46"), "{}", c[0].reason);
        assert_eq!(
            (c[1].kind.as_str(), c[1].status),
            ("fan", HealthStatus::Critical)
        );
        let p = json!({ "PowerSupplies": [
            { "Name": "PSU 1", "Status": {"State": "Enabled", "Health": "OK"} },
            { "Name": "PSU 2", "Status": {"State": "Enabled", "Health": "Warning"} },
        ]});
        let c = judge_power(&p);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].kind.as_str(), c[0].status),
            ("power_supply", HealthStatus::Warning)
        );
        let h = Health::from_parts(HealthStatus::Ok, c);
        assert_eq!(h.status, HealthStatus::Warning);
        assert_eq!(
            Health::from_parts(HealthStatus::Unknown, vec![]).status,
            HealthStatus::Unknown
        );
    }

    #[test]
    fn sensors_and_rollups() {
        let s = json!({ "Name": "CPU0 Temp", "ReadingType": "Temperature", "Reading": 101.0,
            "ReadingUnits": "Cel", "Status": {"State": "Enabled", "Health": "OK"},
            "Thresholds": { "UpperCritical": {"Reading": 95.0}, "UpperCaution": {"Reading": 85.0} } });
        let c = judge_sensor(&s).unwrap();
        assert_eq!(
            (c.kind.as_str(), c.status),
            ("temperature", HealthStatus::Critical)
        );
        assert!(judge_sensor(&json!({ "Reading": 20, "Status": {"Health": "OK"} })).is_none());
        let sys = json!({ "Name": "Server", "Status": {"State": "Enabled", "Health": "OK", "HealthRollup": "Warning"} });
        let (h, c) = judge_status(&sys, "system", "system");
        assert_eq!(h, HealthStatus::Warning);
        assert!(c.unwrap().reason.contains("something in it warning"));
    }

    #[test]
    fn log_entries_parse_and_clip() {
        let e = parse_log_entry(
            &json!({ "Id": "7", "Created": "2026-12-01T10:00:00+01:00", "Severity": "Critical",
                     "Message": format!("PSU 2 failed\u{7}{}", "x".repeat(1000)) }),
            "/redfish/v1/Managers/1/LogServices/Log/Entries",
        )
        .unwrap();
        assert_eq!(e.severity, HealthStatus::Critical);
        assert_eq!(e.time.unwrap().to_rfc3339(), "2026-12-01T09:00:00+00:00");
        assert_eq!(e.message.chars().count(), MAX_TEXT);
        assert!(!e.message.contains('\u{7}'));
        assert!(parse_log_entry(&json!({ "Message": "no id" }), "x").is_none());
    }

    #[test]
    fn chassis_faults() {
        assert_eq!(
            judge_chassis_status(&[0x01, 0x10, 0x00, 0x00]).status,
            HealthStatus::Ok
        );
        let h = judge_chassis_status(&[0x09, 0x00, 0x0c, 0x00]);
        assert_eq!(h.status, HealthStatus::Critical);
        let kinds: Vec<_> = h.components.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, ["power", "cooling", "drive"]);
    }

    #[test]
    fn sel_records_decode() {
        // Record 0x0012, standard, 2026-12-01, generator 0x20, sensor type power supply (0x08)
        // number 0x31, sensor-specific (0x6f) assertion, offset 1: failure detected.
        let t = 1_796_000_000u32.to_le_bytes();
        let r = [
            0x12, 0x00, 0x02, t[0], t[1], t[2], t[3], 0x20, 0x00, 0x04, 0x08, 0x31, 0x6f, 0x01,
            0xff, 0xff,
        ];
        let e = decode_sel_record(&r).unwrap();
        assert_eq!(e.id, "0012");
        assert_eq!(e.severity, HealthStatus::Critical);
        assert_eq!(e.message, "Power supply #0x31: failure detected (asserted)");
        assert_eq!(e.time.unwrap().timestamp(), 1_796_000_000);
        // The same, deasserted: OK. A threshold event on a temperature.
        let mut d = r;
        d[12] = 0xef;
        assert_eq!(decode_sel_record(&d).unwrap().severity, HealthStatus::Ok);
        let mut th = r;
        th[10] = 0x01;
        th[12] = 0x01;
        th[13] = 0x59; // offset 9 (upper critical going high), with trigger bytes flagged
        let e = decode_sel_record(&th).unwrap();
        assert_eq!(
            e.message,
            "Temperature #0x31: upper critical going high (asserted)"
        );
        assert_eq!(e.severity, HealthStatus::Critical);
        // Pre-init timestamps are not dates; short records are refused.
        let mut early = r;
        early[3..7].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(decode_sel_record(&early).unwrap().time, None);
        assert!(decode_sel_record(&r[..10]).is_none());
    }
}
