//! The emulated BMC's BIOS settings (issue 21): `Systems/1/Bios` with its current attributes,
//! `Bios/Settings` (the `@Redfish.Settings` object) holding what the next boot applies, an
//! ETag on both (If-Match required with the emulator's `require_if_match`), and an attribute
//! registry under `Registries` that PATCHes are checked against, as real BMCs do. Pending
//! values are applied when the emulated machine starts (a reset that boots it). Knobs
//! ([`RedfishEmulator::bios_knobs`]): a boot that silently drops one named attribute, a BMC
//! without a settings object (changes PATCHed at `Bios` itself), none at all.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Bmc, RedfishEmulator, Shared, error, gate};

const BIOS: &str = "/redfish/v1/Systems/1/Bios";
const SETTINGS: &str = "/redfish/v1/Systems/1/Bios/Settings";
const REGISTRIES: &str = "/redfish/v1/Registries";
const REGISTRY_FILE: &str = "/redfish/v1/Registries/BiosAttributeRegistry.v1_0_0";
const REGISTRY: &str = "/redfish/v1/Registries/BiosAttributeRegistry.v1_0_0/Registry";
const REGISTRY_NAME: &str = "BiosAttributeRegistryPL1.v1_0_0";

/// How the BIOS misbehaves; all off by default.
#[derive(Debug, Clone, Default)]
pub struct BiosKnobs {
    /// A boot applies every pending attribute but this one, and forgets it: the BMC took the
    /// change and silently did not make it.
    pub drops: Option<String>,
    /// No `@Redfish.Settings`: changes are PATCHed at `Bios` and applied at the next boot.
    pub no_settings_object: bool,
    /// No `Bios` link on the system (a BMC without BIOS settings).
    pub absent: bool,
}

#[derive(Debug, Clone)]
pub(super) struct BiosState {
    knobs: BiosKnobs,
    current: BTreeMap<String, Value>,
    pending: BTreeMap<String, Value>,
    version: u64,
}

impl Default for BiosState {
    fn default() -> Self {
        BiosState {
            knobs: BiosKnobs::default(),
            current: [
                ("BootMode", json!("Uefi")),
                ("ProcTurboMode", json!("Enabled")),
                ("SriovGlobalEnable", json!("Disabled")),
                ("NumCores", json!(8)),
                ("PxeEnabled", json!(true)),
                ("AssetTag", json!("")),
                ("SerialNumber", json!("PL-0001")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            pending: BTreeMap::new(),
            version: 1,
        }
    }
}

/// (name, type, values, read-only, bounds)
fn registry_entries() -> Value {
    json!([
        { "AttributeName": "BootMode", "Type": "Enumeration", "ReadOnly": false,
          "Value": [{ "ValueName": "Uefi" }, { "ValueName": "Bios" }] },
        { "AttributeName": "ProcTurboMode", "Type": "Enumeration", "ReadOnly": false,
          "Value": [{ "ValueName": "Enabled" }, { "ValueName": "Disabled" }] },
        { "AttributeName": "SriovGlobalEnable", "Type": "Enumeration", "ReadOnly": false,
          "Value": [{ "ValueName": "Enabled" }, { "ValueName": "Disabled" }] },
        { "AttributeName": "NumCores", "Type": "Integer", "ReadOnly": false,
          "LowerBound": 1, "UpperBound": 64 },
        { "AttributeName": "PxeEnabled", "Type": "Boolean", "ReadOnly": false },
        { "AttributeName": "AssetTag", "Type": "String", "ReadOnly": false },
        { "AttributeName": "SerialNumber", "Type": "String", "ReadOnly": true }
    ])
}

/// Why the registry refuses `name = value`, if it does.
fn refuse(name: &str, value: &Value) -> Option<String> {
    let entries = registry_entries();
    let Some(e) = entries
        .as_array()?
        .iter()
        .find(|e| e["AttributeName"] == name)
    else {
        return Some(format!(
            "The property {name} is not in the list of valid properties for the resource."
        ));
    };
    if e["ReadOnly"] == true {
        return Some(format!(
            "The property {name} is a read only property and cannot be assigned a value."
        ));
    }
    let ok = match e["Type"].as_str() {
        Some("Enumeration") => value.as_str().is_some_and(|v| {
            e["Value"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["ValueName"] == v))
        }),
        Some("Integer") => value.as_i64().is_some_and(|v| {
            e["LowerBound"].as_i64().is_none_or(|l| v >= l)
                && e["UpperBound"].as_i64().is_none_or(|u| v <= u)
        }),
        Some("Boolean") => value.is_boolean(),
        _ => value.is_string(),
    };
    (!ok).then(|| format!("The value {value} for the property {name} is not valid."))
}

impl RedfishEmulator {
    /// Changes the BIOS knobs.
    pub fn bios_knobs(&self, f: impl FnOnce(&mut BiosKnobs)) {
        f(&mut self.state.lock().expect("emulator state").bios.knobs);
    }

    /// The BIOS attributes in effect.
    pub fn bios(&self) -> BTreeMap<String, Value> {
        self.state
            .lock()
            .expect("emulator state")
            .bios
            .current
            .clone()
    }

    /// The attributes waiting for the next boot.
    pub fn bios_pending(&self) -> BTreeMap<String, Value> {
        self.state
            .lock()
            .expect("emulator state")
            .bios
            .pending
            .clone()
    }
}

fn etag(b: &BiosState) -> String {
    format!("W/\"bios-{}\"", b.version)
}

/// The emulated machine starts: the firmware applies the pending settings.
pub(super) fn on_boot(b: &mut Bmc) {
    let bios = &mut b.bios;
    let pending = std::mem::take(&mut bios.pending);
    if pending.is_empty() {
        return;
    }
    for (k, v) in pending {
        if bios.knobs.drops.as_deref() != Some(k.as_str()) {
            bios.current.insert(k, v);
        }
    }
    bios.version += 1;
}

/// The system's `Bios` link.
pub(super) fn decorate_system(b: &BiosState, body: &mut Value) {
    if !b.knobs.absent {
        body["Bios"] = json!({ "@odata.id": BIOS });
    }
}

/// The service root's `Registries` link.
pub(super) fn decorate_root(body: &mut Value) {
    body["Registries"] = json!({ "@odata.id": REGISTRIES });
}

pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route(BIOS, get(bios).patch(patch_bios))
        .route(SETTINGS, get(settings).patch(patch_settings))
        .route(REGISTRIES, get(registries))
        .route(REGISTRY_FILE, get(registry_file))
        .route(REGISTRY, get(registry))
}

async fn bios(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET bios", true).await {
        return r;
    }
    let b = s.lock().expect("emulator state");
    if b.bios.knobs.absent {
        return error(StatusCode::NOT_FOUND, "No BIOS resource.");
    }
    let mut body = json!({
        "@odata.id": BIOS,
        "@odata.type": "#Bios.v1_1_0.Bios",
        "@odata.etag": etag(&b.bios),
        "Id": "Bios",
        "AttributeRegistry": REGISTRY_NAME,
        "Attributes": b.bios.current,
    });
    if !b.bios.knobs.no_settings_object {
        body["@Redfish.Settings"] = json!({
            "@odata.type": "#Settings.v1_3_0.Settings",
            "SettingsObject": { "@odata.id": SETTINGS },
        });
    }
    ([("etag", etag(&b.bios))], axum::Json(body)).into_response()
}

async fn settings(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET bios settings", true).await {
        return r;
    }
    let b = s.lock().expect("emulator state");
    if b.bios.knobs.absent || b.bios.knobs.no_settings_object {
        return error(StatusCode::NOT_FOUND, "No BIOS settings resource.");
    }
    let body = json!({
        "@odata.id": SETTINGS,
        "@odata.etag": etag(&b.bios),
        "Id": "Settings",
        "Attributes": b.bios.pending,
    });
    ([("etag", etag(&b.bios))], axum::Json(body)).into_response()
}

async fn patch_settings(s: State<Shared>, h: HeaderMap, body: axum::Json<Value>) -> Response {
    patch(s, h, body, true).await
}

async fn patch_bios(s: State<Shared>, h: HeaderMap, body: axum::Json<Value>) -> Response {
    patch(s, h, body, false).await
}

async fn patch(
    State(s): State<Shared>,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
    at_settings: bool,
) -> Response {
    let what = if at_settings {
        "PATCH bios settings"
    } else {
        "PATCH bios"
    };
    if let Some(r) = gate(&s, &h, what, true).await {
        return r;
    }
    let mut b = s.lock().expect("emulator state");
    if b.bios.knobs.absent {
        return error(StatusCode::NOT_FOUND, "No BIOS resource.");
    }
    // Like real BMCs: the settings object takes changes; `Bios` itself only when there is none.
    if at_settings == b.bios.knobs.no_settings_object {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "The resource does not allow PATCH.",
        );
    }
    if b.knobs.require_if_match {
        match h.get("if-match").and_then(|v| v.to_str().ok()) {
            None => return error(StatusCode::PRECONDITION_REQUIRED, "If-Match is required."),
            Some(e) if e != etag(&b.bios) => {
                return error(StatusCode::PRECONDITION_FAILED, "The ETag does not match.");
            }
            Some(_) => {}
        }
    }
    let Some(attrs) = body.get("Attributes").and_then(Value::as_object) else {
        return error(StatusCode::BAD_REQUEST, "Attributes is required.");
    };
    let refused: Vec<String> = attrs.iter().filter_map(|(k, v)| refuse(k, v)).collect();
    if !refused.is_empty() {
        return error(StatusCode::BAD_REQUEST, &refused.join(" "));
    }
    for (k, v) in attrs {
        b.bios.pending.insert(k.clone(), v.clone());
    }
    b.bios.version += 1;
    StatusCode::NO_CONTENT.into_response()
}

async fn registries(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET registries", true).await {
        return r;
    }
    axum::Json(
        json!({ "@odata.id": REGISTRIES, "Members": [{ "@odata.id": REGISTRY_FILE }],
        "Members@odata.count": 1 }),
    )
    .into_response()
}

async fn registry_file(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET registry file", true).await {
        return r;
    }
    axum::Json(json!({
        "@odata.id": REGISTRY_FILE, "Id": "BiosAttributeRegistry.v1_0_0",
        "Registry": REGISTRY_NAME, "Languages": ["en"],
        "Location": [{ "Language": "en", "Uri": REGISTRY }]
    }))
    .into_response()
}

async fn registry(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET registry", true).await {
        return r;
    }
    axum::Json(json!({
        "@odata.id": REGISTRY, "Id": REGISTRY_NAME, "RegistryVersion": "1.0.0",
        "RegistryEntries": { "Attributes": registry_entries() }
    }))
    .into_response()
}
