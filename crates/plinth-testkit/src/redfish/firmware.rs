//! The emulated BMC's firmware (issue 21): an UpdateService with a FirmwareInventory (a BMC,
//! a BIOS, a NIC and a drive), `SimpleUpdate` (the image downloaded from its `ImageURI` with
//! reqwest, as a real BMC does), a `MultipartHttpPushUri`, and Tasks that run for a few polls
//! behind a task monitor (DSP0266: `202 Accepted` + `Location`).
//!
//! An image is verified like a real BMC does, on its content: it must start with the line
//! [`image`] writes (`PLINTH-FW <component> <version>`), naming a component the update's
//! target is. Knobs ([`RedfishEmulator::firmware`]): the update fails, it reports success and
//! keeps the old version, or it needs a reset (the version changes at the next reset).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{RedfishEmulator, Shared, error, gate};

/// How the next updates end; all clear by default (an update that applies).
#[derive(Debug, Clone, Default)]
pub struct FirmwareKnobs {
    /// The task ends in `Exception` ("Flash write failed").
    pub fail: bool,
    /// The task completes OK and the version stays.
    pub keep_old_version: bool,
    /// The task completes with `ResetRequired`; the version changes at the next reset.
    pub needs_reset: bool,
    /// Polls a task answers Running (3 unless set).
    pub task_polls: Option<u32>,
    /// No MultipartHttpPushUri (SimpleUpdate only).
    pub no_multipart: bool,
}

#[derive(Debug, Clone)]
struct Item {
    id: &'static str,
    name: &'static str,
    related: &'static str,
    component: &'static str,
    version: String,
}

#[derive(Debug, Clone)]
struct Task {
    /// Polls so far.
    polls: u32,
    /// Set when the image is in (downloaded or pushed): Ok(content) or why not.
    image: Option<Result<Vec<u8>, String>>,
    targets: Vec<String>,
    knobs: FirmwareKnobs,
    /// The final state once decided: (TaskState, TaskStatus, messages).
    end: Option<(&'static str, &'static str, Vec<Value>)>,
}

#[derive(Debug, Clone)]
pub(super) struct FirmwareState {
    pub(super) knobs: FirmwareKnobs,
    items: Vec<Item>,
    tasks: Vec<Task>,
    /// (item id, version) applied at the next reset.
    pending: Vec<(String, String)>,
    /// The images received: (how: the URL or `multipart`, bytes).
    received: Vec<(String, Vec<u8>)>,
}

impl Default for FirmwareState {
    fn default() -> Self {
        let item = |id, name, related, component| Item {
            id,
            name,
            related,
            component,
            version: "1.0.0".into(),
        };
        FirmwareState {
            knobs: FirmwareKnobs::default(),
            items: vec![
                item("BMC", "BMC Firmware", "/redfish/v1/Managers/1", "bmc"),
                item("BIOS", "System BIOS", "/redfish/v1/Systems/1/Bios", "bios"),
                item(
                    "NIC.1",
                    "Ethernet Adapter 1",
                    "/redfish/v1/Chassis/1/NetworkAdapters/1",
                    "nic",
                ),
                item(
                    "Disk.0",
                    "SSD 0",
                    "/redfish/v1/Systems/1/Storage/1/Drives/0",
                    "drive",
                ),
            ],
            tasks: Vec::new(),
            pending: Vec::new(),
            received: Vec::new(),
        }
    }
}

const INVENTORY: &str = "/redfish/v1/UpdateService/FirmwareInventory";
const PUSH: &str = "/redfish/v1/UpdateService/upload";

/// A firmware image this BMC accepts for `component` (`bmc`, `bios`, `nic`, `drive`) that
/// installs `version`, `size` bytes long (at least its header line).
pub fn image(component: &str, version: &str, size: usize) -> Vec<u8> {
    let mut v = format!("PLINTH-FW {component} {version}\n").into_bytes();
    while v.len() < size {
        v.push((v.len() % 251) as u8);
    }
    v
}

impl RedfishEmulator {
    /// Changes how the next updates end.
    pub fn firmware(&self, f: impl FnOnce(&mut FirmwareKnobs)) {
        f(&mut self.state.lock().expect("emulator state").firmware.knobs);
    }

    /// The version of inventory item `id` (`BMC`, `BIOS`, `NIC.1`, `Disk.0`) now.
    pub fn firmware_version(&self, id: &str) -> Option<String> {
        let b = self.state.lock().expect("emulator state");
        b.firmware
            .items
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.version.clone())
    }

    /// The images received so far: (the URL fetched, or `multipart`; the bytes).
    pub fn firmware_received(&self) -> Vec<(String, Vec<u8>)> {
        self.state
            .lock()
            .expect("emulator state")
            .firmware
            .received
            .clone()
    }
}

pub(super) fn decorate_root(v: &mut Value) {
    v["UpdateService"] = json!({ "@odata.id": "/redfish/v1/UpdateService" });
}

/// A reset that starts the machine: pending versions take effect.
pub(super) fn on_reset(s: &Shared, body: &Value) {
    let starts = matches!(
        body.get("ResetType").and_then(Value::as_str),
        Some("On" | "ForceOn" | "ForceRestart" | "GracefulRestart" | "PowerCycle")
    );
    if !starts {
        return;
    }
    let mut b = s.lock().expect("emulator state");
    let fw = &mut b.firmware;
    for (id, v) in std::mem::take(&mut fw.pending) {
        if let Some(i) = fw.items.iter_mut().find(|i| i.id == id) {
            i.version = v;
        }
    }
}

pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route("/redfish/v1/UpdateService", get(service))
        .route(INVENTORY, get(inventory))
        .route(
            "/redfish/v1/UpdateService/FirmwareInventory/{id}",
            get(item),
        )
        .route(
            "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
            post(simple_update),
        )
        .route(
            PUSH,
            post(multipart).layer(DefaultBodyLimit::max(256 << 20)),
        )
        .route("/redfish/v1/TaskService/Tasks/{n}", get(task))
        .route("/redfish/v1/TaskMonitors/{n}", get(monitor))
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn service(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET /redfish/v1/UpdateService", true).await {
        return r;
    }
    let no_multipart = s
        .lock()
        .expect("emulator state")
        .firmware
        .knobs
        .no_multipart;
    let mut v = json!({
        "@odata.id": "/redfish/v1/UpdateService", "Id": "UpdateService", "Name": "Update Service",
        "ServiceEnabled": true,
        "FirmwareInventory": { "@odata.id": INVENTORY },
        "Actions": { "#UpdateService.SimpleUpdate": {
            "target": "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
            "TransferProtocol@Redfish.AllowableValues": ["HTTP", "HTTPS"]
        }}
    });
    if !no_multipart {
        v["MultipartHttpPushUri"] = json!(PUSH);
    }
    ok(v)
}

async fn inventory(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET FirmwareInventory", true).await {
        return r;
    }
    let b = s.lock().expect("emulator state");
    let members: Vec<Value> = b
        .firmware
        .items
        .iter()
        .map(|i| json!({ "@odata.id": format!("{INVENTORY}/{}", i.id) }))
        .collect();
    ok(json!({ "@odata.id": INVENTORY, "Members@odata.count": members.len(), "Members": members }))
}

async fn item(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = gate(&s, &h, "GET FirmwareInventory item", true).await {
        return r;
    }
    let b = s.lock().expect("emulator state");
    let Some(i) = b.firmware.items.iter().find(|i| i.id == id) else {
        return error(StatusCode::NOT_FOUND, "The resource does not exist.");
    };
    ok(json!({
        "@odata.id": format!("{INVENTORY}/{}", i.id), "Id": i.id, "Name": i.name,
        "Version": i.version, "Updateable": true, "SoftwareId": format!("plinth-{}", i.component),
        "RelatedItem": [{ "@odata.id": i.related }],
        "Status": { "State": "Enabled", "Health": "OK" }
    }))
}

/// Checks the targets and starts a task; returns its number.
fn start(s: &Shared, targets: Vec<String>) -> Result<usize, Box<Response>> {
    let mut b = s.lock().expect("emulator state");
    let fw = &mut b.firmware;
    for t in &targets {
        if !fw
            .items
            .iter()
            .any(|i| format!("{INVENTORY}/{}", i.id) == *t)
        {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The value {t} for the property Targets is not in the list of acceptable values."
                ),
            )));
        }
    }
    fw.tasks.push(Task {
        polls: 0,
        image: None,
        targets,
        knobs: fw.knobs.clone(),
        end: None,
    });
    Ok(fw.tasks.len())
}

fn accepted(n: usize) -> Response {
    (
        StatusCode::ACCEPTED,
        [("location", format!("/redfish/v1/TaskMonitors/{n}"))],
        axum::Json(json!({
            "@odata.id": format!("/redfish/v1/TaskService/Tasks/{n}"), "Id": n.to_string(),
            "TaskState": "New", "TaskStatus": "OK",
            "TaskMonitor": format!("/redfish/v1/TaskMonitors/{n}")
        })),
    )
        .into_response()
}

fn targets_of(v: &Value) -> Vec<String> {
    v.get("Targets")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

async fn simple_update(
    State(s): State<Shared>,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &h, "POST SimpleUpdate", true).await {
        return r;
    }
    let Some(url) = body
        .get("ImageURI")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error(StatusCode::BAD_REQUEST, "ImageURI is required.");
    };
    let n = match start(&s, targets_of(&body)) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    // The BMC fetches the image on its own, while the client follows the task.
    let s2 = s.clone();
    tokio::spawn(async move {
        let got = async {
            let resp = reqwest::get(&url).await.map_err(|e| format!("{e}"))?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status().as_u16()));
            }
            resp.bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| format!("{e}"))
        }
        .await;
        let mut b = s2.lock().expect("emulator state");
        if let Ok(bytes) = &got {
            b.firmware.received.push((url.clone(), bytes.clone()));
        }
        b.firmware.tasks[n - 1].image =
            Some(got.map_err(|e| format!("Could not download the image from {url}: {e}")));
    });
    accepted(n)
}

/// The parts of a multipart/form-data body: (name, content).
fn parts(content_type: &str, body: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut out = Vec::new();
    let mut at = find(body, &delim, 0)? + delim.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(out);
        }
        let head_end = find(body, b"\r\n\r\n", at)?;
        let head = std::str::from_utf8(&body[at..head_end]).ok()?;
        let name = head
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("name="))?
            .split(['\r', '\n'])
            .next()?
            .trim_matches('"')
            .to_owned();
        let start = head_end + 4;
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(&delim);
        let end = find(body, &end_delim, start)?;
        out.push((name, body[start..end].to_vec()));
        at = end + end_delim.len();
    }
}

async fn multipart(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&s, &h, "POST multipart push", true).await {
        return r;
    }
    if s.lock()
        .expect("emulator state")
        .firmware
        .knobs
        .no_multipart
    {
        return error(StatusCode::NOT_FOUND, "The resource does not exist.");
    }
    let ct = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(parts) = parts(ct, &body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The request is not multipart/form-data.",
        );
    };
    let params = parts
        .iter()
        .find(|(n, _)| n == "UpdateParameters")
        .and_then(|(_, v)| serde_json::from_slice::<Value>(v).ok());
    let file = parts.iter().find(|(n, _)| n == "UpdateFile");
    let (Some(params), Some((_, file))) = (params, file) else {
        return error(
            StatusCode::BAD_REQUEST,
            "UpdateParameters and UpdateFile are required.",
        );
    };
    let n = match start(&s, targets_of(&params)) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let mut b = s.lock().expect("emulator state");
    b.firmware.received.push(("multipart".into(), file.clone()));
    b.firmware.tasks[n - 1].image = Some(Ok(file.clone()));
    accepted(n)
}

/// One poll of task `n`: it runs until its image is in and its polls are done, then ends
/// (once: the versions change when it ends).
fn poll(s: &Shared, n: usize) -> Option<Value> {
    let mut b = s.lock().expect("emulator state");
    let fw = &mut b.firmware;
    let t = fw.tasks.get_mut(n.checked_sub(1)?)?;
    t.polls += 1;
    let polls = t.knobs.task_polls.unwrap_or(3);
    if t.end.is_none() && t.polls > polls {
        match t.image.clone() {
            None => {}
            Some(Err(why)) => {
                t.end = Some((
                    "Exception",
                    "Critical",
                    vec![json!({ "MessageId": "Update.1.0.TransferFailed", "Message": why })],
                ));
            }
            Some(Ok(bytes)) => {
                let header = bytes
                    .split(|c| *c == b'\n')
                    .next()
                    .and_then(|l| std::str::from_utf8(l).ok())
                    .unwrap_or("");
                let mut words = header.split(' ');
                let (magic, component, version) = (words.next(), words.next(), words.next());
                let targets: Vec<(String, &'static str)> = fw
                    .items
                    .iter()
                    .filter(|i| {
                        t.targets.is_empty() || t.targets.contains(&format!("{INVENTORY}/{}", i.id))
                    })
                    .filter(|i| Some(i.component) == component)
                    .map(|i| (i.id.to_owned(), i.component))
                    .collect();
                if magic != Some("PLINTH-FW") || version.is_none() || targets.is_empty() {
                    t.end = Some((
                        "Exception",
                        "Critical",
                        vec![
                            json!({ "MessageId": "Update.1.0.VerificationFailed", "Message": "Image verification failed: not an image for the target." }),
                        ],
                    ));
                } else if t.knobs.fail {
                    t.end = Some((
                        "Exception",
                        "Critical",
                        vec![
                            json!({ "MessageId": "Update.1.0.ApplyFailed", "Message": "Flash write failed." }),
                        ],
                    ));
                } else {
                    let version = version.unwrap_or_default().to_owned();
                    let mut messages = vec![
                        json!({ "MessageId": "Update.1.0.UpdateSuccessful", "Message": "The update completed successfully." }),
                    ];
                    if t.knobs.keep_old_version {
                    } else if t.knobs.needs_reset {
                        messages.push(json!({ "MessageId": "Base.1.8.ResetRequired", "Message": "A reset is required to activate the image." }));
                        fw.pending
                            .extend(targets.iter().map(|(id, _)| (id.clone(), version.clone())));
                    } else {
                        for (id, _) in &targets {
                            if let Some(i) = fw.items.iter_mut().find(|i| i.id == id) {
                                i.version = version.clone();
                            }
                        }
                    }
                    t.end = Some(("Completed", "OK", messages));
                }
            }
        }
    }
    let t = &fw.tasks[n - 1];
    let body = match &t.end {
        Some((state, status, messages)) => json!({
            "TaskState": state, "TaskStatus": status, "PercentComplete": 100, "Messages": messages
        }),
        None => json!({
            "TaskState": "Running", "TaskStatus": "OK",
            "PercentComplete": (t.polls * 100 / (polls + 1)).min(99),
            "Messages": [{ "MessageId": "Update.1.0.TransferringToComponent", "Message": "Transferring the image." }]
        }),
    };
    let mut body = body;
    body["@odata.id"] = json!(format!("/redfish/v1/TaskService/Tasks/{n}"));
    body["Id"] = json!(n.to_string());
    body["TaskMonitor"] = json!(format!("/redfish/v1/TaskMonitors/{n}"));
    Some(body)
}

async fn task(State(s): State<Shared>, h: HeaderMap, Path(n): Path<usize>) -> Response {
    if let Some(r) = gate(&s, &h, "GET task", true).await {
        return r;
    }
    match poll(&s, n) {
        Some(v) => ok(v),
        None => error(StatusCode::NOT_FOUND, "The resource does not exist."),
    }
}

async fn monitor(State(s): State<Shared>, h: HeaderMap, Path(n): Path<usize>) -> Response {
    if let Some(r) = gate(&s, &h, "GET task monitor", true).await {
        return r;
    }
    match poll(&s, n) {
        Some(v) if v["TaskState"] == "Running" => (
            StatusCode::ACCEPTED,
            [("location", format!("/redfish/v1/TaskMonitors/{n}"))],
            axum::Json(v),
        )
            .into_response(),
        Some(v) => ok(v),
        None => error(StatusCode::NOT_FOUND, "The resource does not exist."),
    }
}
