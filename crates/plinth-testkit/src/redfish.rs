//! A Redfish BMC that misbehaves on purpose, for the driver's and the job system's tests: a
//! ComputerSystem with power and a boot override, a SessionService whose sessions can be
//! expired at will, and knobs to require If-Match, revert boot overrides, answer slowly, or
//! answer 503 with an ExtendedInfo message; and a hostile mode ([`Hostile`]): the lies of a
//! compromised BMC that tries to make plinth read without end or send its credentials to
//! another host ([`Collector`] is that other host); virtual media that download their image
//! and fill the VM's CD drive ([`MediaKnobs`], `redfish/vmedia.rs`). Served by axum on 127.0.0.1.

mod accounts;
mod bios;
mod discovery;
mod firmware;
mod health;
mod vmedia;

pub use bios::BiosKnobs;
pub use firmware::{FirmwareKnobs, image as firmware_image};
pub use health::Faults;
pub use vmedia::{ImageServer, MediaKnobs};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

/// What the emulated BMC controls when it is not only two fields in memory: a machine (a QEMU
/// process, see [`crate::vm`]). The emulator asks it for the power state and tells it to power
/// on, off or reset, booting the device of the boot override in effect (`Pxe`, `Hdd`, `Cd`,
/// `BiosSetup`, or `None` for the machine's own order). Calls are made without the emulator's
/// lock held; they may take a moment (starting a process).
pub trait Host: Send + Sync + 'static {
    fn is_on(&self) -> bool;
    fn power_on(&self, boot: &str);
    fn power_off(&self);
    fn reset(&self, boot: &str);
    /// Puts an image (an ISO's bytes) in the machine's CD drive, replacing what it held; it
    /// stays there across power cycles until ejected.
    fn insert_cd(&self, _iso: &[u8]) -> Result<(), String> {
        Err("this machine has no CD drive".into())
    }
    /// Empties the machine's CD drive.
    fn eject_cd(&self) -> Result<(), String> {
        Ok(())
    }
}

/// How the emulator behaves; change it through [`RedfishEmulator::knobs`].
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// PATCH without a matching If-Match gets 428 (none) or 412 (stale).
    pub require_if_match: bool,
    /// Accept boot override PATCHes (200) and keep the old override.
    pub revert_boot: bool,
    /// Every request waits this long.
    pub delay: Duration,
    /// The next this-many requests get 503 with an ExtendedInfo message.
    pub fail_next: u32,
    /// Offer a SessionService (else HTTP Basic only).
    pub sessions: bool,
    /// The status of the injected failures (`fail_next`): 503 unless set.
    pub fail_status: Option<u16>,
    /// Accept connections and never answer.
    pub hang: bool,
    /// How a compromised BMC lies.
    pub hostile: Hostile,
    /// Where the virtual media are and how they misbehave.
    pub vmedia: MediaKnobs,
    /// The system powers itself off just before the next reset request is acted on (an OS
    /// that shut down between the client's read of the power state and its reset).
    pub off_before_reset: bool,
}

/// The lies of a compromised BMC (issue 17): each one a way to make its client read without
/// end, or follow a link or a redirect to another host with its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Hostile {
    #[default]
    No,
    /// The ComputerSystem's body is this many bytes (valid JSON, padded).
    HugeBody(usize),
    /// The Systems collection's member is this `@odata.id` (another host's URL, `//host/x`,
    /// `/x@host/y`, ...).
    MemberId(String),
    /// The ComputerSystem answers `302 Found` with this `Location`.
    Redirect(String),
    /// The ComputerSystem's body is not JSON.
    MalformedJson,
    /// The reset action's `target` is this.
    ResetTarget(String),
    /// A new session's `Location` is this.
    SessionLocation(String),
}

#[derive(Debug)]
struct Bmc {
    knobs: Knobs,
    user: String,
    password: String,
    tokens: Vec<String>,
    power: &'static str,
    target: String,
    enabled: String,
    /// BootSourceOverrideMode: `UEFI` or `Legacy`.
    mode: String,
    version: u64,
    /// Requests seen, for assertions (method and path).
    log: Vec<String>,
    logins: u32,
    /// Session id → token, for logout.
    sessions: Vec<(u32, String)>,
    logouts: u32,
    in_flight: u32,
    max_in_flight: u32,
    host: Option<std::sync::Arc<dyn Host>>,
    health: health::HealthState,
    vmedia: vmedia::MediaState,
    bios: bios::BiosState,
    firmware: firmware::FirmwareState,
    accounts: accounts::AccountsState,
    /// The system's NIC MACs (discovery, issue 21).
    nics: Vec<String>,
}

impl std::fmt::Debug for dyn Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

type Shared = Arc<Mutex<Bmc>>;

pub struct RedfishEmulator {
    pub addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RedfishEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedfishEmulator {
    /// Starts one on an ephemeral port of 127.0.0.1, with sessions offered.
    pub async fn start(user: &str, password: &str) -> anyhow::Result<RedfishEmulator> {
        RedfishEmulator::start_inner(user, password, None, "127.0.0.1:0").await
    }

    /// A BMC of `host` (a VM), listening on `listen` (e.g. an address in a lab namespace's
    /// reach, or 127.0.0.1:0).
    pub async fn start_for(
        user: &str,
        password: &str,
        host: std::sync::Arc<dyn Host>,
        listen: &str,
    ) -> anyhow::Result<RedfishEmulator> {
        RedfishEmulator::start_inner(user, password, Some(host), listen).await
    }

    async fn start_inner(
        user: &str,
        password: &str,
        host: Option<std::sync::Arc<dyn Host>>,
        listen: &str,
    ) -> anyhow::Result<RedfishEmulator> {
        let state = Arc::new(Mutex::new(Bmc {
            knobs: Knobs {
                sessions: true,
                ..Knobs::default()
            },
            user: user.into(),
            password: password.into(),
            tokens: Vec::new(),
            power: "Off",
            target: "None".into(),
            enabled: "Disabled".into(),
            mode: "UEFI".into(),
            version: 1,
            log: Vec::new(),
            logins: 0,
            sessions: Vec::new(),
            logouts: 0,
            in_flight: 0,
            max_in_flight: 0,
            host,
            health: health::HealthState::default(),
            vmedia: vmedia::MediaState::default(),
            bios: bios::BiosState::default(),
            firmware: firmware::FirmwareState::default(),
            accounts: accounts::AccountsState::default(),
            nics: Vec::new(),
        }));
        let app = Router::new()
            .route("/redfish/v1", get(root))
            .route("/redfish/v1/Systems", get(systems))
            .route("/redfish/v1/Systems/1", get(system).patch(patch_system))
            .route(
                "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                post(reset),
            )
            .route("/redfish/v1/SessionService/Sessions", post(login))
            .merge(health::routes(Router::new()))
            .merge(vmedia::routes(Router::new()))
            .merge(bios::routes(Router::new()))
            .merge(firmware::routes(Router::new()))
            .merge(accounts::routes(Router::new()))
            .merge(discovery::routes(Router::new()))
            .route(
                "/redfish/v1/SessionService/Sessions/{id}",
                axum::routing::delete(logout),
            )
            .layer(axum::middleware::from_fn_with_state(state.clone(), track))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Ok(RedfishEmulator { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.state.lock().expect("emulator state").knobs);
    }

    /// Forgets every session (as a BMC does when sessions time out).
    pub fn expire_sessions(&self) {
        self.state.lock().expect("emulator state").tokens.clear();
    }

    pub fn power(&self) -> &'static str {
        let host = self.state.lock().expect("emulator state").host.clone();
        match host {
            Some(h) => {
                if h.is_on() {
                    "On"
                } else {
                    "Off"
                }
            }
            None => self.state.lock().expect("emulator state").power,
        }
    }

    /// (BootSourceOverrideTarget, BootSourceOverrideEnabled).
    pub fn boot(&self) -> (String, String) {
        let s = self.state.lock().expect("emulator state");
        (s.target.clone(), s.enabled.clone())
    }

    /// "METHOD path" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("emulator state").log.clone()
    }

    pub fn logins(&self) -> u32 {
        self.state.lock().expect("emulator state").logins
    }

    /// Sessions deleted by their client.
    pub fn logouts(&self) -> u32 {
        self.state.lock().expect("emulator state").logouts
    }

    /// The most requests this BMC has had in flight at once.
    pub fn max_in_flight(&self) -> u32 {
        self.state.lock().expect("emulator state").max_in_flight
    }
}

/// Counts requests in flight (and the most at once); a hanging BMC never answers.
async fn track(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let hang = {
        let mut b = s.lock().expect("emulator state");
        b.in_flight += 1;
        b.max_in_flight = b.max_in_flight.max(b.in_flight);
        b.knobs.hang
    };
    struct Done(Shared);
    impl Drop for Done {
        fn drop(&mut self) {
            if let Ok(mut b) = self.0.lock() {
                b.in_flight -= 1;
            }
        }
    }
    let _done = Done(s.clone());
    if hang {
        std::future::pending::<()>().await;
    }
    next.run(req).await
}

async fn logout(
    State(s): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<u32>,
    h: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &h, "DELETE session", true).await {
        return r;
    }
    let mut b = s.lock().expect("emulator state");
    let Some(i) = b.sessions.iter().position(|(n, _)| *n == id) else {
        return error(StatusCode::NOT_FOUND, "No such session.");
    };
    let (_, token) = b.sessions.remove(i);
    b.tokens.retain(|t| *t != token);
    b.logouts += 1;
    StatusCode::NO_CONTENT.into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": {
            "code": "Base.1.8.GeneralError",
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [{ "MessageId": "Base.1.8.InternalError", "Message": message }]
        }})),
    )
        .into_response()
}

/// Logging, delay, injected failures and authentication, before every handler.
async fn gate(s: &Shared, headers: &HeaderMap, what: &str, auth: bool) -> Option<Response> {
    let delay = {
        let mut b = s.lock().expect("emulator state");
        b.log.push(what.to_owned());
        b.knobs.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut b = s.lock().expect("emulator state");
    if b.knobs.fail_next > 0 {
        b.knobs.fail_next -= 1;
        let status = b
            .knobs
            .fail_status
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Some(error(status, "The service is temporarily unavailable."));
    }
    if !auth {
        return None;
    }
    let token_ok = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| b.tokens.iter().any(|k| k == t));
    let basic_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| {
            v == base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", b.user, b.password))
        });
    (!(token_ok || basic_ok))
        .then(|| error(StatusCode::UNAUTHORIZED, "Authentication is required."))
}

async fn root(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET /redfish/v1", false).await {
        return r;
    }
    let sessions = s.lock().expect("emulator state").knobs.sessions;
    let mut v = json!({ "@odata.id": "/redfish/v1", "Id": "RootService", "RedfishVersion": "1.11.0",
        "Systems": { "@odata.id": "/redfish/v1/Systems" }, "Oem": { "Plinth": { "Misbehaves": true } },
        "AccountService": { "@odata.id": "/redfish/v1/AccountService" } });
    bios::decorate_root(&mut v);
    if sessions {
        v["SessionService"] = json!({ "@odata.id": "/redfish/v1/SessionService" });
    }
    firmware::decorate_root(&mut v);
    axum::Json(v).into_response()
}

async fn systems(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET /redfish/v1/Systems", true).await {
        return r;
    }
    let member = match &s.lock().expect("emulator state").knobs.hostile {
        Hostile::MemberId(id) => id.clone(),
        _ => "/redfish/v1/Systems/1".to_owned(),
    };
    axum::Json(json!({ "Members": [{ "@odata.id": member }], "Members@odata.count": 1 }))
        .into_response()
}

fn etag(b: &Bmc) -> String {
    format!("W/\"{}\"", b.version)
}

async fn system(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET /redfish/v1/Systems/1", true).await {
        return r;
    }
    let host = s.lock().expect("emulator state").host.clone();
    let host_power = host.map(|h| if h.is_on() { "On" } else { "Off" });
    let b = s.lock().expect("emulator state");
    match &b.knobs.hostile {
        Hostile::Redirect(to) => {
            return (StatusCode::FOUND, [("location", to.clone())]).into_response();
        }
        Hostile::MalformedJson => {
            return (
                [("content-type", "application/json")],
                "{\"PowerState\": \"On\", ",
            )
                .into_response();
        }
        _ => {}
    }
    let reset_target = match &b.knobs.hostile {
        Hostile::ResetTarget(t) => t.clone(),
        _ => "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset".to_owned(),
    };
    let mut body: Value = json!({
        "@odata.id": "/redfish/v1/Systems/1",
        "@odata.etag": etag(&b),
        "Id": "1",
        "Manufacturer": "Plinth Labs",
        "Model": "Misbehaving BMC",
        "SerialNumber": "PL-0001",
        "UUID": "0a0b0c0d-0000-4000-8000-000000000001",
        "PowerState": host_power.unwrap_or(b.power),
        "Boot": {
            "BootSourceOverrideTarget": b.target,
            "BootSourceOverrideEnabled": b.enabled,
            "BootSourceOverrideMode": b.mode,
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd", "BiosSetup", "UefiHttp"]
        },
        "Actions": { "#ComputerSystem.Reset": {
            "target": reset_target,
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "Nmi"]
        }}
    });
    health::decorate_system(&b.health, &mut body);
    vmedia::decorate_system(&b.knobs.vmedia, &mut body);
    bios::decorate_system(&b.bios, &mut body);
    discovery::decorate_system(&b, &mut body);
    if let Hostile::HugeBody(n) = b.knobs.hostile {
        body["Oem"] = json!({ "Padding": "x".repeat(n) });
    }
    ([("etag", etag(&b))], axum::Json(body)).into_response()
}

async fn patch_system(
    State(s): State<Shared>,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &h, "PATCH /redfish/v1/Systems/1", true).await {
        return r;
    }
    let mut b = s.lock().expect("emulator state");
    if b.knobs.require_if_match {
        match h.get("if-match").and_then(|v| v.to_str().ok()) {
            None => {
                return error(StatusCode::PRECONDITION_REQUIRED, "If-Match is required.");
            }
            Some(e) if e != etag(&b) => {
                return error(StatusCode::PRECONDITION_FAILED, "The ETag does not match.");
            }
            Some(_) => {}
        }
    }
    let Some(boot) = body.get("Boot") else {
        return error(StatusCode::BAD_REQUEST, "Only Boot can be changed.");
    };
    let target = boot.get("BootSourceOverrideTarget").and_then(Value::as_str);
    if let Some(t) = target
        && !["None", "Pxe", "Hdd", "Cd", "BiosSetup", "UefiHttp"].contains(&t)
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "The value {t} for the property BootSourceOverrideTarget is not in the list of acceptable values."
            ),
        );
    }
    if !b.knobs.revert_boot {
        if let Some(t) = target {
            b.target = t.to_owned();
        }
        if let Some(e) = boot
            .get("BootSourceOverrideEnabled")
            .and_then(Value::as_str)
        {
            b.enabled = e.to_owned();
        }
        match boot.get("BootSourceOverrideMode").and_then(Value::as_str) {
            Some(m @ ("UEFI" | "Legacy")) => b.mode = m.to_owned(),
            Some(other) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "The value {other} for the property BootSourceOverrideMode is not in the list of acceptable values."
                    ),
                );
            }
            None => {}
        }
    }
    b.version += 1;
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(
    State(s): State<Shared>,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &h, "POST reset", true).await {
        return r;
    }
    firmware::on_reset(&s, &body);
    let (host, off_first) = {
        let mut b = s.lock().expect("emulator state");
        let off_first = std::mem::take(&mut b.knobs.off_before_reset);
        if off_first && b.host.is_none() {
            b.power = "Off";
        }
        (b.host.clone(), off_first)
    };
    if off_first && let Some(h) = &host {
        h.power_off();
    }
    if let Some(h) = host {
        let on = h.is_on();
        let kind = body.get("ResetType").and_then(Value::as_str);
        // Whether this reset starts a boot; one the machine's state does not allow is refused
        // before anything changes (a one-time override stays for the boot that comes).
        let boots = match kind {
            Some("On" | "ForceOn") => !on,
            Some("ForceOff" | "GracefulShutdown") => false,
            Some("ForceRestart" | "PowerCycle") if on => true,
            Some(other) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("The ResetType {other} is not supported in the current state."),
                );
            }
            None => return error(StatusCode::BAD_REQUEST, "ResetType is required."),
        };
        if !boots {
            if matches!(kind, Some("ForceOff" | "GracefulShutdown")) {
                h.power_off();
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        // The override in effect for the boot this reset starts; a one-time one is used up.
        let boot = {
            let mut b = s.lock().expect("emulator state");
            let target = if b.enabled == "Disabled" {
                "None".to_owned()
            } else {
                b.target.clone()
            };
            bios::on_boot(&mut b);
            if b.enabled == "Once" {
                b.enabled = "Disabled".into();
                b.target = "None".into();
            }
            target
        };
        if on {
            h.reset(&boot);
        } else {
            h.power_on(&boot);
        }
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut b = s.lock().expect("emulator state");
    let was_on = b.power == "On";
    match body.get("ResetType").and_then(Value::as_str) {
        Some("On") => b.power = "On",
        Some("ForceOff" | "GracefulShutdown") => b.power = "Off",
        Some("ForceRestart") if b.power == "On" => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("The ResetType {other} is not supported in the current state."),
            );
        }
        None => return error(StatusCode::BAD_REQUEST, "ResetType is required."),
    }
    // A boot starts when the machine comes on or is restarted; only a boot uses a one-time
    // override (an On of a machine that is on changes nothing).
    if b.power == "On" && (!was_on || body.get("ResetType") == Some(&json!("ForceRestart"))) {
        bios::on_boot(&mut b);
        if b.enabled == "Once" {
            b.enabled = "Disabled".into();
            b.target = "None".into();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn login(
    State(s): State<Shared>,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &h, "POST sessions", false).await {
        return r;
    }
    let mut b = s.lock().expect("emulator state");
    if !b.knobs.sessions {
        return StatusCode::NOT_FOUND.into_response();
    }
    let ok = body.get("UserName").and_then(Value::as_str) == Some(&b.user)
        && body.get("Password").and_then(Value::as_str) == Some(&b.password);
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "Invalid username or password.");
    }
    b.logins += 1;
    let token = format!("token-{}-{}", b.logins, uuid::Uuid::new_v4());
    b.tokens.push(token.clone());
    let id = b.logins;
    b.sessions.push((id, token.clone()));
    let location = match &b.knobs.hostile {
        Hostile::SessionLocation(l) => l.clone(),
        _ => format!("/redfish/v1/SessionService/Sessions/{}", b.logins),
    };
    (
        StatusCode::CREATED,
        [("x-auth-token", token), ("location", location)],
        axum::Json(json!({ "Id": b.logins.to_string(), "UserName": b.user })),
    )
        .into_response()
}

/// Another host on the network, where a hostile BMC tries to send plinth: it records every
/// request that reaches it (method, path, and whether it carried credentials) and answers
/// like a Redfish system, to lure a client on.
pub struct Collector {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start() -> anyhow::Result<Collector> {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let keep = seen.clone();
        let app = Router::new().fallback(move |req: axum::extract::Request| {
            let keep = keep.clone();
            async move {
                let h = req.headers();
                let creds = h.contains_key("authorization") || h.contains_key("x-auth-token");
                keep.lock().expect("collector").push(format!(
                    "{} {} credentials={creds}",
                    req.method(),
                    req.uri()
                ));
                axum::Json(json!({ "PowerState": "On", "Members": [] }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Ok(Collector { addr, seen, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request that reached this host.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("collector").clone()
    }
}
