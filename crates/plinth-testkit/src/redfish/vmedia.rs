//! The emulated BMC's virtual media (issue 21): a `VirtualMedia` collection with a CD drive
//! (`CD1`, MediaTypes CD and DVD) and a USB stick (`USB1`), under `Managers/1` (the classic
//! place) or, with [`MediaKnobs::under_systems`], under `Systems/1` (where Redfish 2021.1 and
//! sushy-tools put it). `#VirtualMedia.InsertMedia` and `#VirtualMedia.EjectMedia` actions and
//! a PATCH of `Image`/`Inserted` on each slot.
//!
//! Insert works as a real BMC's does: the BMC downloads the image from its URL (HTTP GET; a
//! URL that fails is a Redfish 400 and nothing is inserted), and, when the BMC has a machine
//! ([`super::Host`]), puts it in the machine's CD drive (`CD1` only; the USB stick is kept
//! in the BMC). A slot that holds an image refuses another until it is ejected (as iDRAC
//! does). Strict like a fussy BMC: an InsertMedia parameter it does not know is a 400.
//!
//! Quirks ([`MediaKnobs`]): only a USB stick, no actions (PATCH only), and a BMC that
//! answers 204 to InsertMedia and EjectMedia and keeps the slot as it was.
//!
//! [`ImageServer`] is the other side: a small HTTP server that serves one file at an
//! unguessable path, and counts the downloads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Shared, error, etag, gate};

/// The most the emulator downloads for one image.
pub const MAX_IMAGE: u64 = 512 << 20;

const MANAGERS: &str = "/redfish/v1/Managers/1/VirtualMedia";
const SYSTEMS: &str = "/redfish/v1/Systems/1/VirtualMedia";

/// How the BMC's virtual media behave; all off by default.
#[derive(Debug, Clone, Default)]
pub struct MediaKnobs {
    /// The collection is under `Systems/1` (linked from the ComputerSystem), not `Managers/1`.
    pub under_systems: bool,
    /// The BMC offers only its USB stick.
    pub usb_only: bool,
    /// InsertMedia and EjectMedia (and the PATCH) answer 204 and change nothing.
    pub keeps_old_image: bool,
    /// The slots have no actions: only a PATCH of `Image` and `Inserted` works.
    pub no_actions: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    id: &'static str,
    types: &'static [&'static str],
    image: Option<String>,
    inserted: bool,
    write_protected: bool,
}

/// The slots' state.
#[derive(Debug, Clone)]
pub(super) struct MediaState {
    slots: Vec<Slot>,
    /// Images downloaded (successfully) so far.
    downloads: u32,
}

impl Default for MediaState {
    fn default() -> MediaState {
        let slot = |id, types| Slot {
            id,
            types,
            image: None,
            inserted: false,
            write_protected: true,
        };
        MediaState {
            slots: vec![slot("CD1", &["CD", "DVD"]), slot("USB1", &["USBStick"])],
            downloads: 0,
        }
    }
}

impl Slot {
    fn is_cd(&self) -> bool {
        self.types.contains(&"CD")
    }
}

impl super::RedfishEmulator {
    /// Changes the virtual media knobs.
    pub fn media_knobs(&self, f: impl FnOnce(&mut MediaKnobs)) {
        f(&mut self.state.lock().expect("emulator state").knobs.vmedia);
    }

    /// (slot id, image, inserted) of every slot, visible or not.
    pub fn media(&self) -> Vec<(String, Option<String>, bool)> {
        let b = self.state.lock().expect("emulator state");
        b.vmedia
            .slots
            .iter()
            .map(|s| (s.id.to_owned(), s.image.clone(), s.inserted))
            .collect()
    }

    /// Images the BMC downloaded so far.
    pub fn media_downloads(&self) -> u32 {
        self.state.lock().expect("emulator state").vmedia.downloads
    }
}

/// The ComputerSystem's link to the collection, when it lives there.
pub(super) fn decorate_system(k: &MediaKnobs, body: &mut Value) {
    if k.under_systems {
        body["VirtualMedia"] = json!({ "@odata.id": SYSTEMS });
    }
}

/// The manager's link to the collection, when it lives there.
pub(super) fn decorate_manager(s: &Shared, body: &mut Value) {
    if !s.lock().expect("emulator state").knobs.vmedia.under_systems {
        body["VirtualMedia"] = json!({ "@odata.id": MANAGERS });
    }
}

pub(super) fn routes(mut r: Router<Shared>) -> Router<Shared> {
    for base in [MANAGERS, SYSTEMS] {
        r = r
            .route(base, get(collection))
            .route(&format!("{base}/{{slot}}"), get(resource).patch(patch))
            .route(
                &format!("{base}/{{slot}}/Actions/VirtualMedia.InsertMedia"),
                post(insert),
            )
            .route(
                &format!("{base}/{{slot}}/Actions/VirtualMedia.EjectMedia"),
                post(eject),
            );
    }
    r
}

/// The collection's path for these knobs.
fn base(k: &MediaKnobs) -> &'static str {
    if k.under_systems { SYSTEMS } else { MANAGERS }
}

/// Gate, then the slot's index when `uri` is where the knobs put the collection and the slot
/// is offered.
async fn open(s: &Shared, h: &HeaderMap, uri: &Uri, what: &str) -> Result<Option<usize>, Response> {
    if let Some(r) = gate(s, h, &format!("{what} {}", uri.path()), true).await {
        return Err(r);
    }
    let b = s.lock().expect("emulator state");
    let base = base(&b.knobs.vmedia);
    let Some(rest) = uri.path().strip_prefix(base) else {
        return Err(error(StatusCode::NOT_FOUND, "No such resource."));
    };
    let id = rest.trim_start_matches('/').split('/').next().unwrap_or("");
    if id.is_empty() {
        return Ok(None);
    }
    let usb_only = b.knobs.vmedia.usb_only;
    match b
        .vmedia
        .slots
        .iter()
        .position(|sl| sl.id == id && (!usb_only || !sl.is_cd()))
    {
        Some(i) => Ok(Some(i)),
        None => Err(error(StatusCode::NOT_FOUND, "No such virtual media slot.")),
    }
}

async fn collection(State(s): State<Shared>, h: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = open(&s, &h, &uri, "GET").await {
        return r;
    }
    let b = s.lock().expect("emulator state");
    let base = base(&b.knobs.vmedia);
    let members: Vec<Value> = b
        .vmedia
        .slots
        .iter()
        .filter(|sl| !b.knobs.vmedia.usb_only || !sl.is_cd())
        .map(|sl| json!({ "@odata.id": format!("{base}/{}", sl.id) }))
        .collect();
    axum::Json(json!({
        "@odata.id": base, "Name": "Virtual Media Services",
        "Members@odata.count": members.len(), "Members": members
    }))
    .into_response()
}

async fn resource(State(s): State<Shared>, h: HeaderMap, uri: Uri) -> Response {
    let i = match open(&s, &h, &uri, "GET").await {
        Ok(Some(i)) => i,
        Ok(None) => return error(StatusCode::NOT_FOUND, "No such resource."),
        Err(r) => return r,
    };
    let b = s.lock().expect("emulator state");
    let sl = &b.vmedia.slots[i];
    let path = format!("{}/{}", base(&b.knobs.vmedia), sl.id);
    let mut v = json!({
        "@odata.id": path,
        "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia",
        "@odata.etag": etag(&b),
        "Id": sl.id,
        "Name": if sl.is_cd() { "Virtual CD" } else { "Virtual USB stick" },
        "MediaTypes": sl.types,
        "Image": sl.image,
        "ImageName": sl.image.as_deref().and_then(|u| u.rsplit('/').next()),
        "Inserted": sl.inserted,
        "WriteProtected": sl.write_protected,
        "ConnectedVia": if sl.inserted { "URI" } else { "NotConnected" },
        "TransferMethod": "Stream",
    });
    if !b.knobs.vmedia.no_actions {
        v["Actions"] = json!({
            "#VirtualMedia.InsertMedia": {
                "target": format!("{path}/Actions/VirtualMedia.InsertMedia"),
                "TransferMethod@Redfish.AllowableValues": ["Stream", "Upload"]
            },
            "#VirtualMedia.EjectMedia": {
                "target": format!("{path}/Actions/VirtualMedia.EjectMedia")
            }
        });
    }
    ([("etag", etag(&b))], axum::Json(v)).into_response()
}

const INSERT_PARAMETERS: &[&str] = &[
    "Image",
    "Inserted",
    "WriteProtected",
    "TransferMethod",
    "TransferProtocolType",
    "UserName",
    "Password",
];

async fn insert(
    State(s): State<Shared>,
    h: HeaderMap,
    uri: Uri,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let i = match open(&s, &h, &uri, "POST").await {
        Ok(Some(i)) => i,
        Ok(None) => return error(StatusCode::NOT_FOUND, "No such resource."),
        Err(r) => return r,
    };
    if s.lock().expect("emulator state").knobs.vmedia.no_actions {
        return error(StatusCode::NOT_FOUND, "No such action.");
    }
    if let Some(o) = body.as_object()
        && let Some(k) = o.keys().find(|k| !INSERT_PARAMETERS.contains(&k.as_str()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("The parameter {k} is not supported by the action InsertMedia."),
        );
    }
    if let Some(t) = body.get("TransferMethod")
        && !matches!(t.as_str(), Some("Stream" | "Upload"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "The value {t} for the parameter TransferMethod is not in the list of acceptable values."
            ),
        );
    }
    let Some(url) = body.get("Image").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The action InsertMedia requires the parameter Image.",
        );
    };
    if body.get("Inserted").and_then(Value::as_bool) == Some(false) {
        return error(
            StatusCode::BAD_REQUEST,
            "Inserted false is not supported: eject the medium.",
        );
    }
    let wp = body
        .get("WriteProtected")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    load(&s, i, url, wp).await
}

async fn eject(State(s): State<Shared>, h: HeaderMap, uri: Uri) -> Response {
    let i = match open(&s, &h, &uri, "POST").await {
        Ok(Some(i)) => i,
        Ok(None) => return error(StatusCode::NOT_FOUND, "No such resource."),
        Err(r) => return r,
    };
    if s.lock().expect("emulator state").knobs.vmedia.no_actions {
        return error(StatusCode::NOT_FOUND, "No such action.");
    }
    unload(&s, i).await
}

async fn patch(
    State(s): State<Shared>,
    h: HeaderMap,
    uri: Uri,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let i = match open(&s, &h, &uri, "PATCH").await {
        Ok(Some(i)) => i,
        Ok(None) => return error(StatusCode::NOT_FOUND, "No such resource."),
        Err(r) => return r,
    };
    {
        let b = s.lock().expect("emulator state");
        if b.knobs.require_if_match
            && h.get("if-match").and_then(|v| v.to_str().ok()) != Some(etag(&b).as_str())
        {
            return error(StatusCode::PRECONDITION_FAILED, "The ETag does not match.");
        }
    }
    let image = body.get("Image");
    let inserted = body.get("Inserted").and_then(Value::as_bool);
    match (image, inserted) {
        (Some(Value::String(url)), None | Some(true)) => {
            let wp = body
                .get("WriteProtected")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            load(&s, i, url, wp).await
        }
        (Some(Value::Null) | None, Some(false)) | (Some(Value::Null), None) => unload(&s, i).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            "Only Image with Inserted true, or Image null with Inserted false, can be changed.",
        ),
    }
}

/// Downloads `url` and puts it in slot `i` (and the machine's CD drive).
async fn load(s: &Shared, i: usize, url: &str, wp: bool) -> Response {
    let host = {
        let b = s.lock().expect("emulator state");
        if b.knobs.vmedia.keeps_old_image {
            return StatusCode::NO_CONTENT.into_response();
        }
        if b.vmedia.slots[i].inserted {
            return error(
                StatusCode::BAD_REQUEST,
                "The virtual media slot is in use: eject its medium first.",
            );
        }
        b.host.clone().filter(|_| b.vmedia.slots[i].is_cd())
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return error(
            StatusCode::BAD_REQUEST,
            "The value for the parameter Image is not an http(s) URL.",
        );
    }
    let bytes = match download(url).await {
        Ok(b) => b,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("The image cannot be downloaded: {why}."),
            );
        }
    };
    if let Some(h) = host {
        let put = tokio::task::spawn_blocking(move || h.insert_cd(&bytes)).await;
        match put {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("The medium cannot be attached: {why}"),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The medium cannot be attached.",
                );
            }
        }
    }
    let mut b = s.lock().expect("emulator state");
    b.vmedia.downloads += 1;
    b.version += 1;
    let sl = &mut b.vmedia.slots[i];
    sl.image = Some(url.to_owned());
    sl.inserted = true;
    sl.write_protected = wp;
    StatusCode::NO_CONTENT.into_response()
}

/// Empties slot `i` (and the machine's CD drive).
async fn unload(s: &Shared, i: usize) -> Response {
    let host = {
        let b = s.lock().expect("emulator state");
        if b.knobs.vmedia.keeps_old_image {
            return StatusCode::NO_CONTENT.into_response();
        }
        b.host
            .clone()
            .filter(|_| b.vmedia.slots[i].is_cd() && b.vmedia.slots[i].inserted)
    };
    if let Some(h) = host {
        match tokio::task::spawn_blocking(move || h.eject_cd()).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("The medium cannot be ejected: {why}"),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The medium cannot be ejected.",
                );
            }
        }
    }
    let mut b = s.lock().expect("emulator state");
    b.version += 1;
    let sl = &mut b.vmedia.slots[i];
    sl.image = None;
    sl.inserted = false;
    StatusCode::NO_CONTENT.into_response()
}

/// An HTTP GET of the whole image, at most [`MAX_IMAGE`] bytes.
async fn download(url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("the request failed ({e})"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("the transfer failed ({e})"))?
    {
        if out.len() as u64 + chunk.len() as u64 > MAX_IMAGE {
            return Err(format!("larger than {MAX_IMAGE} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// What an [`ImageServer`] serves.
enum Content {
    File(PathBuf),
    Bytes(axum::body::Bytes),
}

/// A small HTTP server for one image (an ISO for virtual media, a firmware image), at `/vmedia/<random>/<file name>` (any other path is a
/// 404), counting the requests that got it.
pub struct ImageServer {
    pub addr: std::net::SocketAddr,
    path: String,
    hits: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImageServer {
    /// Serves `file` on `listen` (e.g. `127.0.0.1:0`); the file is read at every request.
    pub async fn start(file: &Path, listen: &str) -> anyhow::Result<ImageServer> {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image.iso")
            .to_owned();
        ImageServer::serve(Content::File(file.to_owned()), &name, listen).await
    }

    /// Serves `content` as `name` on 127.0.0.1 (a firmware image a test made, say).
    pub async fn start_bytes(content: Vec<u8>, name: &str) -> anyhow::Result<ImageServer> {
        ImageServer::serve(Content::Bytes(content.into()), name, "127.0.0.1:0").await
    }

    async fn serve(content: Content, name: &str, listen: &str) -> anyhow::Result<ImageServer> {
        let path = format!("/vmedia/{}/{name}", uuid::Uuid::new_v4().simple());
        let hits: Arc<Mutex<u32>> = Arc::default();
        let (want, count) = (path.clone(), hits.clone());
        let content = Arc::new(content);
        let app = Router::new().fallback(move |uri: Uri| {
            let (content, want, count) = (content.clone(), want.clone(), count.clone());
            async move {
                if uri.path() != want {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let bytes = match &*content {
                    Content::File(file) => match tokio::fs::read(file).await {
                        Ok(b) => axum::body::Bytes::from(b),
                        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    },
                    Content::Bytes(b) => b.clone(),
                };
                *count.lock().expect("image server") += 1;
                ([("content-type", "application/octet-stream")], bytes).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Ok(ImageServer {
            addr,
            path,
            hits,
            task,
        })
    }

    /// The image's URL.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    /// A URL on this server that is not the image (a 404).
    pub fn missing_url(&self) -> String {
        format!("http://{}/vmedia/nothing-here.iso", self.addr)
    }

    /// Requests that got the image.
    pub fn hits(&self) -> u32 {
        *self.hits.lock().expect("image server")
    }
}
