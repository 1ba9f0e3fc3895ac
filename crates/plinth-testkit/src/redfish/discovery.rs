//! What BMC discovery (issue 21, `plinth bmc scan`) reads of the emulator: the system's NICs
//! (`EthernetInterfaces`, with their MACs) when the test gives some, and an emulator on an
//! address of the test's choice (127.0.0.x), so that a scan can be shown to reach only the
//! addresses of its CIDR (every emulator counts the requests it gets).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Bmc, RedfishEmulator, Shared, error, gate};

const NICS: &str = "/redfish/v1/Systems/1/EthernetInterfaces";

pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route(NICS, get(nics))
        .route("/redfish/v1/Systems/1/EthernetInterfaces/{id}", get(nic))
}

/// The NICs' link on the ComputerSystem, when it has NICs.
pub(super) fn decorate_system(b: &Bmc, body: &mut Value) {
    if !b.nics.is_empty() {
        body["EthernetInterfaces"] = json!({ "@odata.id": NICS });
    }
}

impl RedfishEmulator {
    /// An emulator listening on `listen` (e.g. `127.0.0.2:0`), sessions offered.
    pub async fn start_at(user: &str, password: &str, listen: &str) -> anyhow::Result<Self> {
        RedfishEmulator::start_inner(user, password, None, listen).await
    }

    /// The system's NICs, by MAC (`52:54:00:..`).
    pub fn set_nics(&self, macs: &[&str]) {
        self.state.lock().expect("emulator state").nics =
            macs.iter().map(|m| (*m).to_owned()).collect();
    }
}

async fn nics(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET EthernetInterfaces", true).await {
        return r;
    }
    let n = s.lock().expect("emulator state").nics.len();
    let members: Vec<Value> = (1..=n)
        .map(|i| json!({ "@odata.id": format!("{NICS}/{i}") }))
        .collect();
    axum::Json(json!({ "Members": members, "Members@odata.count": n })).into_response()
}

async fn nic(State(s): State<Shared>, h: HeaderMap, Path(id): Path<usize>) -> Response {
    if let Some(r) = gate(&s, &h, "GET EthernetInterface", true).await {
        return r;
    }
    let b = s.lock().expect("emulator state");
    let Some(mac) = id.checked_sub(1).and_then(|i| b.nics.get(i)) else {
        return error(StatusCode::NOT_FOUND, "No such interface.");
    };
    axum::Json(json!({
        "@odata.id": format!("{NICS}/{id}"), "Id": id.to_string(),
        "MACAddress": mac, "PermanentMACAddress": mac
    }))
    .into_response()
}
