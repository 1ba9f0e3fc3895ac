//! The emulated BMC's hardware health and event log (issue 20): a chassis with Thermal (a CPU
//! temperature, two fans) and Power (two supplies), or only the newer `Sensors` collection;
//! a manager with one LogService whose entries are served newest first, a few per page
//! (`Members@odata.nextLink`), so that a client must page and order them itself. Faults are
//! injected through [`RedfishEmulator::faults`], entries appended with
//! [`RedfishEmulator::push_log`].

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{RedfishEmulator, Shared, gate};

/// Injected faults; all clear by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The ComputerSystem's own `Status.Health` (`OK` unless set).
    pub system_health: Option<String>,
    /// Fan 1 stops (0 RPM, Health Critical).
    pub fan_failed: bool,
    /// The CPU temperature in °C (45 unless set; its critical threshold is 90), with Health
    /// left `OK`: the client must compare the reading with the threshold itself.
    pub cpu_temp: Option<f64>,
    /// PSU 2 reports Critical.
    pub psu_failed: bool,
    /// The chassis has a `Sensors` collection and no Thermal or Power.
    pub sensors_only: bool,
    /// No chassis, managers or log services at all (an old or minimal BMC).
    pub bare: bool,
}

/// The emulator's health state.
#[derive(Debug, Clone, Default)]
pub(super) struct HealthState {
    pub(super) faults: Faults,
    /// (id, created, severity, message), oldest first.
    log: Vec<(u32, String, String, String)>,
    /// Entries per page of the log.
    page_size: usize,
}

const CHASSIS: &str = "/redfish/v1/Chassis/1";
const MANAGER: &str = "/redfish/v1/Managers/1";
const ENTRIES: &str = "/redfish/v1/Managers/1/LogServices/Log/Entries";

impl RedfishEmulator {
    /// Changes the injected faults.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().expect("emulator state").health.faults);
    }

    /// Appends an entry to the manager's log (`severity`: `OK`, `Warning`, `Critical`), created
    /// now; returns its id.
    pub fn push_log(&self, severity: &str, message: &str) -> String {
        let mut b = self.state.lock().expect("emulator state");
        let id = b.health.log.len() as u32 + 1;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        b.health
            .log
            .push((id, created, severity.to_owned(), message.to_owned()));
        id.to_string()
    }

    /// Entries per page of the log (default 2).
    pub fn set_log_page_size(&self, n: usize) {
        self.state.lock().expect("emulator state").health.page_size = n;
    }
}

/// What the ComputerSystem adds: its Status and its links to the chassis, the manager.
pub(super) fn decorate_system(h: &HealthState, body: &mut Value) {
    body["Status"] = json!({
        "State": "Enabled",
        "Health": h.faults.system_health.as_deref().unwrap_or("OK"),
    });
    if !h.faults.bare {
        body["Links"] = json!({
            "Chassis": [{ "@odata.id": CHASSIS }],
            "ManagedBy": [{ "@odata.id": MANAGER }],
        });
    }
}

pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route(CHASSIS, get(chassis))
        .route("/redfish/v1/Chassis/1/Thermal", get(thermal))
        .route("/redfish/v1/Chassis/1/Power", get(power))
        .route("/redfish/v1/Chassis/1/Sensors", get(sensors))
        .route(MANAGER, get(manager))
        .route("/redfish/v1/Managers/1/LogServices", get(log_services))
        .route("/redfish/v1/Managers/1/LogServices/Log", get(log_service))
        .route(ENTRIES, get(entries))
}

/// The gate, then the health state (404 when the BMC is bare).
async fn open(s: &Shared, h: &HeaderMap, what: &str) -> Result<HealthState, Response> {
    if let Some(r) = gate(s, h, what, true).await {
        return Err(r);
    }
    let st = s.lock().expect("emulator state").health.clone();
    if st.faults.bare {
        return Err(super::error(
            axum::http::StatusCode::NOT_FOUND,
            "The resource does not exist.",
        ));
    }
    Ok(st)
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn chassis(State(s): State<Shared>, h: HeaderMap) -> Response {
    let st = match open(&s, &h, "GET /redfish/v1/Chassis/1").await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let worst = if st.faults.fan_failed || st.faults.psu_failed {
        "Critical"
    } else {
        "OK"
    };
    let mut v = json!({ "@odata.id": CHASSIS, "Id": "1", "Name": "Chassis",
        "Status": { "State": "Enabled", "Health": "OK", "HealthRollup": worst } });
    if st.faults.sensors_only {
        v["Sensors"] = json!({ "@odata.id": "/redfish/v1/Chassis/1/Sensors" });
    } else {
        v["Thermal"] = json!({ "@odata.id": "/redfish/v1/Chassis/1/Thermal" });
        v["Power"] = json!({ "@odata.id": "/redfish/v1/Chassis/1/Power" });
    }
    ok(v)
}

fn fan1(f: &Faults) -> (u32, &'static str) {
    if f.fan_failed {
        (0, "Critical")
    } else {
        (4200, "OK")
    }
}

async fn thermal(State(s): State<Shared>, h: HeaderMap) -> Response {
    let st = match open(&s, &h, "GET /redfish/v1/Chassis/1/Thermal").await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let (rpm, fan_health) = fan1(&st.faults);
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/Thermal",
        "Temperatures": [{
            "Name": "CPU1 Temp", "Status": { "State": "Enabled", "Health": "OK" },
            "ReadingCelsius": st.faults.cpu_temp.unwrap_or(45.0),
            "UpperThresholdNonCritical": 80, "UpperThresholdCritical": 90
        }],
        "Fans": [
            { "Name": "Fan 1", "Status": { "State": "Enabled", "Health": fan_health },
              "Reading": rpm, "ReadingUnits": "RPM", "LowerThresholdCritical": 500 },
            { "Name": "Fan 2", "Status": { "State": "Enabled", "Health": "OK" },
              "Reading": 4100, "ReadingUnits": "RPM", "LowerThresholdCritical": 500 }
        ]
    }))
}

async fn power(State(s): State<Shared>, h: HeaderMap) -> Response {
    let st = match open(&s, &h, "GET /redfish/v1/Chassis/1/Power").await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let psu2 = if st.faults.psu_failed {
        "Critical"
    } else {
        "OK"
    };
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/Power",
        "PowerSupplies": [
            { "Name": "PSU 1", "Status": { "State": "Enabled", "Health": "OK" } },
            { "Name": "PSU 2", "Status": { "State": "Enabled", "Health": psu2 } },
            { "Name": "PSU 3", "Status": { "State": "Absent" } }
        ]
    }))
}

async fn sensors(State(s): State<Shared>, h: HeaderMap) -> Response {
    let st = match open(&s, &h, "GET /redfish/v1/Chassis/1/Sensors").await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let (rpm, fan_health) = fan1(&st.faults);
    // Expanded members, as `$expand` would give them.
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/Sensors",
        "Members": [
            { "@odata.id": "/redfish/v1/Chassis/1/Sensors/CPU1Temp", "Name": "CPU1 Temp",
              "ReadingType": "Temperature", "ReadingUnits": "Cel",
              "Reading": st.faults.cpu_temp.unwrap_or(45.0),
              "Status": { "State": "Enabled", "Health": "OK" },
              "Thresholds": { "UpperCritical": { "Reading": 90 }, "UpperCaution": { "Reading": 80 } } },
            { "@odata.id": "/redfish/v1/Chassis/1/Sensors/Fan1", "Name": "Fan 1",
              "ReadingType": "Rotational", "ReadingUnits": "RPM", "Reading": rpm,
              "Status": { "State": "Enabled", "Health": fan_health } }
        ]
    }))
}

async fn manager(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = open(&s, &h, "GET /redfish/v1/Managers/1").await {
        return r;
    }
    let mut v = json!({ "@odata.id": MANAGER, "Id": "1", "Name": "BMC",
        "LogServices": { "@odata.id": "/redfish/v1/Managers/1/LogServices" } });
    super::vmedia::decorate_manager(&s, &mut v);
    ok(v)
}

async fn log_services(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = open(&s, &h, "GET /redfish/v1/Managers/1/LogServices").await {
        return r;
    }
    ok(json!({ "Members": [{ "@odata.id": "/redfish/v1/Managers/1/LogServices/Log" }] }))
}

async fn log_service(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = open(&s, &h, "GET /redfish/v1/Managers/1/LogServices/Log").await {
        return r;
    }
    ok(
        json!({ "@odata.id": "/redfish/v1/Managers/1/LogServices/Log", "Id": "Log",
        "Entries": { "@odata.id": ENTRIES } }),
    )
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(rename = "$skip", default)]
    skip: usize,
}

async fn entries(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Page>) -> Response {
    let st = match open(&s, &h, "GET /redfish/v1/Managers/1/LogServices/Log/Entries").await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let size = if st.page_size == 0 { 2 } else { st.page_size };
    // Newest first, as many BMCs serve them.
    let all: Vec<_> = st.log.iter().rev().collect();
    let members: Vec<Value> = all
        .iter()
        .skip(p.skip)
        .take(size)
        .map(|(id, created, sev, msg)| {
            json!({ "@odata.id": format!("{ENTRIES}/{id}"), "Id": id.to_string(),
                "Created": created, "Severity": sev, "Message": msg, "EntryType": "Event" })
        })
        .collect();
    let mut v =
        json!({ "@odata.id": ENTRIES, "Members@odata.count": all.len(), "Members": members });
    if p.skip + size < all.len() {
        v["Members@odata.nextLink"] = json!(format!("{ENTRIES}?$skip={}", p.skip + size));
    }
    ok(v)
}
