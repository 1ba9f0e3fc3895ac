//! The Redfish driver (DSP0266): reqwest with rustls, plinth's own serde views of the few
//! resources it touches (ServiceRoot, the Systems collection, ComputerSystem, its
//! EthernetInterfaces, SessionService), each tolerant of unknown fields and of enum values a
//! vendor adds (kept as strings, mapped where plinth understands them). See docs/decisions.md.
//!
//! - The ComputerSystem is the configured one, or the first member of `Systems`.
//! - Authentication: a session (`POST SessionService/Sessions`, `X-Auth-Token`) when the service
//!   has one, HTTP Basic otherwise; a 401 on a session logs in again once.
//! - Reset: the first ResetType plinth would use for the action that the BMC advertises in
//!   `ResetType@Redfish.AllowableValues` (or all of them, when it advertises none).
//! - Boot override: a PATCH of `Boot`, with `If-Match` when the resource has an ETag (one retry
//!   on 412), read back by the caller ([`crate::set_boot_verified`]).
//! - Virtual media: the system's or its managers' `VirtualMedia` slots, InsertMedia/EjectMedia
//!   or a PATCH (`redfish/vmedia.rs`), read back by the caller ([`crate::insert_media_verified`]).
//! - Errors carry the BMC's `error.@Message.ExtendedInfo` messages, never credentials.
//!
//! A BMC is not trusted (a compromised one answers plinth's requests): response bodies are read
//! up to [`MAX_BODY`], redirects are not followed, and every path the BMC hands back
//! (`@odata.id` links, action targets, a session's `Location`) must be a path on the BMC's own
//! origin ([`Redfish::bmc_url`]), so that plinth never sends its credentials or a session
//! token anywhere else. Plain `http://` needs the BMC's own opt-in
//! ([`RedfishConfig::allow_plain_http`]): the password would cross the network in clear.

mod accounts;
mod bios;
mod firmware;
mod health;
mod vmedia;

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{
    Bmc, BmcError, BootDevice, BootMode, BootOverride, Identity, PowerAction, PowerState, Result,
};

/// How to reach one BMC.
#[derive(Clone)]
pub struct RedfishConfig {
    /// `https://10.1.0.21` (or with a port; `http://` for emulators).
    pub base_url: String,
    pub username: String,
    pub password: String,
    /// Verify the BMC's certificate (self-signed BMC certificates are the norm: plinth's
    /// per-BMC switch turns this off).
    pub verify_tls: bool,
    /// PEM CA certificates to trust for this BMC, besides the system's (when verifying).
    pub ca_pem: Option<Vec<u8>>,
    /// The ComputerSystem, e.g. `/redfish/v1/Systems/1`; default: the first in `Systems`.
    pub system: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// Whether a `http://` base URL is allowed (emulators, or a BMC network the operator
    /// accepts cleartext on); refused otherwise.
    pub allow_plain_http: bool,
}

/// The most of a response body plinth reads from a BMC; Redfish resources are a few KiB.
pub const MAX_BODY: usize = 4 << 20;

impl std::fmt::Debug for RedfishConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishConfig")
            .field("base_url", &self.base_url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("verify_tls", &self.verify_tls)
            .field("system", &self.system)
            .finish()
    }
}

#[derive(Debug, Clone)]
enum Auth {
    /// Not decided yet: try a session first.
    Unknown,
    /// The token, and the session's URI (to log out) when the service said it.
    Session(String, Option<String>),
    Basic,
}

pub struct Redfish {
    http: reqwest::Client,
    cfg: RedfishConfig,
    /// The parsed base URL; every request goes to its origin.
    base: reqwest::Url,
    auth: Mutex<Auth>,
    system: Mutex<Option<String>>,
}

#[derive(Debug, Deserialize)]
struct Link {
    #[serde(rename = "@odata.id")]
    id: String,
}

#[derive(Debug, Deserialize)]
struct ServiceRoot {
    #[serde(rename = "Systems")]
    systems: Option<Link>,
}

#[derive(Debug, Deserialize)]
struct Collection {
    #[serde(rename = "Members", default)]
    members: Vec<Link>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct System {
    power_state: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    serial_number: Option<String>,
    #[serde(rename = "UUID")]
    uuid: Option<String>,
    boot: Option<Boot>,
    actions: Option<Actions>,
    ethernet_interfaces: Option<Link>,
    #[serde(rename = "@odata.etag")]
    etag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Boot {
    #[serde(rename = "BootSourceOverrideTarget")]
    target: Option<String>,
    #[serde(rename = "BootSourceOverrideEnabled")]
    enabled: Option<String>,
    #[serde(rename = "BootSourceOverrideMode")]
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Actions {
    #[serde(rename = "#ComputerSystem.Reset")]
    reset: Option<ResetAction>,
}

#[derive(Debug, Default, Deserialize)]
struct ResetAction {
    target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues", default)]
    allowed: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EthernetInterface {
    #[serde(rename = "MACAddress")]
    mac: Option<String>,
    #[serde(rename = "PermanentMACAddress")]
    permanent_mac: Option<String>,
}

/// The messages of a Redfish error body (`error.message` and `@Message.ExtendedInfo`).
fn error_message(body: &Value) -> Option<String> {
    let e = body.get("error")?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(infos) = e.get("@Message.ExtendedInfo").and_then(Value::as_array) {
        for i in infos {
            if let Some(m) = i.get("Message").and_then(Value::as_str) {
                parts.push(m.to_owned());
            }
        }
    }
    if parts.is_empty()
        && let Some(m) = e.get("message").and_then(Value::as_str)
    {
        parts.push(m.to_owned());
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn status_error(status: StatusCode, body: &Value) -> BmcError {
    let msg = error_message(body).unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    match status.as_u16() {
        401 | 403 => BmcError::Auth,
        500..=599 => BmcError::Busy(format!("HTTP {}: {msg}", status.as_u16())),
        _ => BmcError::Rejected(format!("HTTP {}: {msg}", status.as_u16())),
    }
}

/// A response's body, up to [`MAX_BODY`]: a BMC that sends more is refused, not read.
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BmcError::Protocol(format!(
            "the BMC answered with a body of {} bytes (plinth reads at most {MAX_BODY})",
            resp.content_length().unwrap_or(0)
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(BmcError::Protocol(format!(
                "the BMC answered with a body over {MAX_BODY} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn transport_error(e: reqwest::Error) -> BmcError {
    if e.is_timeout() {
        BmcError::Timeout
    } else if e.is_connect() {
        BmcError::Unreachable("connection failed".into())
    } else {
        BmcError::Unreachable("the request failed".into())
    }
}

/// ResetTypes for an action, in plinth's order of preference.
fn reset_preferences(action: PowerAction, power: Option<PowerState>) -> &'static [&'static str] {
    match action {
        PowerAction::On => &["On", "ForceOn"],
        PowerAction::Off { force: false } => &["GracefulShutdown", "ForceOff"],
        PowerAction::Off { force: true } => &["ForceOff"],
        PowerAction::Cycle if power == Some(PowerState::Off) => &["On", "ForceOn"],
        PowerAction::Cycle => &["PowerCycle", "ForceRestart", "GracefulRestart"],
        PowerAction::Reset => &["ForceRestart", "GracefulRestart", "PowerCycle"],
    }
}

/// The first preferred ResetType the BMC allows (any, when it lists none).
fn choose_reset(prefs: &[&'static str], allowed: &[String]) -> Option<&'static str> {
    if allowed.is_empty() {
        return prefs.first().copied();
    }
    prefs
        .iter()
        .find(|p| allowed.iter().any(|a| a == *p))
        .copied()
}

fn target_name(d: BootDevice) -> &'static str {
    match d {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::BiosSetup => "BiosSetup",
        BootDevice::Cdrom => "Cd",
    }
}

fn parse_override(b: &Boot) -> BootOverride {
    let enabled = b.enabled.as_deref().unwrap_or("Disabled");
    let device = match (enabled, b.target.as_deref()) {
        ("Disabled", _) => None,
        (_, Some("Pxe")) => Some(BootDevice::Pxe),
        (_, Some("Hdd")) => Some(BootDevice::Disk),
        (_, Some("BiosSetup")) => Some(BootDevice::BiosSetup),
        (_, Some("Cd")) => Some(BootDevice::Cdrom),
        // None, or a target plinth never sets (Usb, Floppy, an OEM value).
        _ => None,
    };
    BootOverride {
        device,
        persistent: enabled == "Continuous",
        mode: match b.mode.as_deref() {
            Some("UEFI") => Some(BootMode::Uefi),
            Some("Legacy") => Some(BootMode::Bios),
            _ => None,
        },
        unconfirmed: None,
    }
}

fn parse_power(s: &str) -> Result<PowerState> {
    match s {
        "On" => Ok(PowerState::On),
        "Off" => Ok(PowerState::Off),
        "PoweringOn" => Ok(PowerState::PoweringOn),
        "PoweringOff" => Ok(PowerState::PoweringOff),
        other => Err(BmcError::Protocol(format!("unknown PowerState {other:?}"))),
    }
}

impl Redfish {
    pub fn new(cfg: RedfishConfig) -> Result<Redfish> {
        let base = reqwest::Url::parse(cfg.base_url.trim_end_matches('/'))
            .map_err(|e| BmcError::Protocol(format!("the BMC address is not a URL: {e}")))?;
        match base.scheme() {
            "https" => {}
            "http" if cfg.allow_plain_http => {}
            "http" => {
                return Err(BmcError::Unsupported(
                    "plain http:// Redfish without the BMC's plain_http opt-in (its password would cross the network in clear)".into(),
                ));
            }
            other => {
                return Err(BmcError::Protocol(format!(
                    "the BMC address has the scheme {other:?}, not https"
                )));
            }
        }
        if !base.username().is_empty() || base.password().is_some() || base.host().is_none() {
            return Err(BmcError::Protocol(
                "the BMC address must be scheme://host[:port] without user information".into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            // A redirect could take plinth's credentials (and the X-Auth-Token, which reqwest
            // would not strip) to another host: a 3xx is an answer, not a detour.
            .redirect(reqwest::redirect::Policy::none());
        if !cfg.verify_tls {
            b = b.danger_accept_invalid_certs(true);
        } else if let Some(pem) = &cfg.ca_pem {
            // A bundle may hold several CAs.
            let cas = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| BmcError::Protocol("the configured CA is not PEM".into()))?;
            if cas.is_empty() {
                return Err(BmcError::Protocol(
                    "the configured CA file holds no certificate".into(),
                ));
            }
            for ca in cas {
                b = b.add_root_certificate(ca);
            }
        }
        let http = b
            .build()
            .map_err(|_| BmcError::Protocol("cannot build an HTTP client".into()))?;
        Ok(Redfish {
            system: Mutex::new(cfg.system.clone()),
            http,
            cfg,
            base,
            auth: Mutex::new(Auth::Unknown),
        })
    }

    /// Logs out of the session, if there is one (BMCs allow only a few at a time). Best
    /// effort: a session that cannot be deleted expires on the BMC.
    pub async fn logout(&self) {
        let auth = std::mem::replace(&mut *self.auth.lock().await, Auth::Unknown);
        if let Auth::Session(token, Some(uri)) = auth {
            // The session's URI came from the BMC: only ever its own origin.
            let url = match self.bmc_url(&uri) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(bmc = %self.base, error = %e, "not logging out at a session URI off the BMC");
                    return;
                }
            };
            let res = self
                .http
                .delete(url)
                .header("X-Auth-Token", token)
                .timeout(self.cfg.timeout.min(Duration::from_secs(5)))
                .send()
                .await;
            if let Err(e) = res {
                tracing::debug!(error = %transport_error(e), "Redfish logout failed");
            }
        }
    }

    /// A URL on the BMC for `path`, a path the BMC supplied (or an absolute URL of its own
    /// origin, which some BMCs give as a session's `Location`). Refused: anything that could
    /// name another host or confuse a parser (`//`, `@`, `\`, a scheme, control characters,
    /// whitespace), and anything that does not resolve to the BMC's own scheme, host and port.
    pub fn bmc_url(&self, path: &str) -> Result<reqwest::Url> {
        let refuse = |why: &str| {
            // Shown without whatever stands before an @ (user information, a password).
            let shown = match path.rsplit_once('@') {
                Some((_, tail)) => format!("…@{tail}"),
                None => path.to_owned(),
            };
            BmcError::Protocol(format!(
                "the BMC gave a path plinth does not follow ({why}): {:?}",
                shown.chars().take(100).collect::<String>()
            ))
        };
        if path.len() > 2048 {
            return Err(refuse("too long"));
        }
        if path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return Err(refuse("control characters, whitespace or a backslash"));
        }
        let url = if path.starts_with('/') {
            if path.starts_with("//") {
                return Err(refuse("a network path"));
            }
            if path.contains('@') {
                return Err(refuse("an @"));
            }
            self.base.join(path).map_err(|_| refuse("not a path"))?
        } else {
            let u = reqwest::Url::parse(path).map_err(|_| refuse("neither a path nor a URL"))?;
            if !u.username().is_empty() || u.password().is_some() {
                return Err(refuse("user information"));
            }
            u
        };
        if url.origin() != self.base.origin() {
            return Err(refuse("another origin than the BMC's"));
        }
        Ok(url)
    }

    fn url(&self, path: &str) -> Result<reqwest::Url> {
        self.bmc_url(path)
    }

    /// Logs in with a session when the service offers one; Basic otherwise.
    async fn login(&self) -> Result<Auth> {
        let resp = self
            .http
            .post(self.url("/redfish/v1/SessionService/Sessions")?)
            .json(&json!({ "UserName": self.cfg.username, "Password": self.cfg.password }))
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if status.is_success()
            && let Some(token) = resp
                .headers()
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok())
        {
            let token = token.to_owned();
            let uri = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let uri = match uri {
                Some(u) => Some(u),
                None => read_limited(resp)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| v["@odata.id"].as_str().map(str::to_owned)),
            };
            // (checked against the BMC's origin before plinth ever uses it: see logout)
            return Ok(Auth::Session(token, uri));
        }
        // No session service (404, 405, 501, a 2xx without a token, or a 401 from a service
        // that wants Basic even to create sessions): HTTP Basic, which then succeeds or is
        // refused on its own.
        tracing::debug!(
            status = status.as_u16(),
            "no Redfish session: using HTTP Basic"
        );
        Ok(Auth::Basic)
    }

    /// One request, authenticated; a 401 with a session logs in again once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
        for attempt in 0..2 {
            let auth = {
                let mut a = self.auth.lock().await;
                if matches!(*a, Auth::Unknown) || attempt == 1 {
                    *a = self.login().await?;
                }
                a.clone()
            };
            let mut req = self.http.request(method.clone(), self.url(path)?);
            req = match &auth {
                Auth::Session(t, _) => req.header("X-Auth-Token", t),
                _ => req.basic_auth(&self.cfg.username, Some(&self.cfg.password)),
            };
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(e) = if_match {
                req = req.header("If-Match", e);
            }
            let resp = req.send().await.map_err(transport_error)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = read_limited(resp).await?;
            let value: Value = if bytes.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    // An error status is explained by its code alone.
                    Err(_) if !status.is_success() => Value::Null,
                    Err(e) => {
                        return Err(BmcError::Protocol(format!(
                            "the BMC's answer to {method} {path} is not JSON: {e}"
                        )));
                    }
                }
            };
            if status == StatusCode::UNAUTHORIZED
                && attempt == 0
                && matches!(auth, Auth::Session(..))
            {
                continue; // the session expired: log in again
            }
            return Ok((status, headers, value));
        }
        Err(BmcError::Auth)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<(T, Option<String>)> {
        let (status, headers, body) = self.call(Method::GET, path, None, None).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let etag = headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let v =
            serde_json::from_value(body).map_err(|e| BmcError::Protocol(format!("{path}: {e}")))?;
        Ok((v, etag))
    }

    /// The ComputerSystem's path: configured, or found from the service root.
    async fn system_path(&self) -> Result<String> {
        if let Some(p) = self.system.lock().await.clone() {
            return Ok(p);
        }
        let (root, _) = self.get::<ServiceRoot>("/redfish/v1").await?;
        let systems = root
            .systems
            .ok_or_else(|| BmcError::Unsupported("a Systems collection".into()))?;
        let (c, _) = self.get::<Collection>(&systems.id).await?;
        let first = c
            .members
            .into_iter()
            .next()
            .ok_or_else(|| BmcError::Protocol("the Systems collection is empty".into()))?;
        *self.system.lock().await = Some(first.id.clone());
        Ok(first.id)
    }

    async fn system(&self) -> Result<(String, System, Option<String>)> {
        let path = self.system_path().await?;
        let (s, etag) = self.get::<System>(&path).await?;
        let etag = s.etag.clone().or(etag);
        Ok((path, s, etag))
    }

    async fn do_power(&self, action: PowerAction) -> Result<()> {
        let mut again = true;
        loop {
            match self.power_once(action).await? {
                None => return Ok(()),
                // A cycle refused because the machine went off between the read of its power
                // state and the reset (an OS that shut down, a deployed image powering itself
                // off): read it again, once; off now, the cycle powers it on.
                Some((power, BmcError::Rejected(_)))
                    if again
                        && matches!(action, PowerAction::Cycle)
                        && power != Some(PowerState::Off) =>
                {
                    again = false;
                }
                Some((_, e)) => return Err(e),
            }
        }
    }

    /// One reset chosen from the power state read now: `None` when the BMC took it, else the
    /// power state it was chosen from and the BMC's refusal.
    async fn power_once(
        &self,
        action: PowerAction,
    ) -> Result<Option<(Option<PowerState>, BmcError)>> {
        let (path, s, _) = self.system().await?;
        let power = s
            .power_state
            .as_deref()
            .map(parse_power)
            .transpose()
            .ok()
            .flatten();
        let reset = s.actions.and_then(|a| a.reset).unwrap_or_default();
        let prefs = reset_preferences(action, power);
        let kind = choose_reset(prefs, &reset.allowed).ok_or_else(|| {
            BmcError::Unsupported(format!(
                "{} (it allows {})",
                prefs.join(" or "),
                reset.allowed.join(", ")
            ))
        })?;
        let target = reset
            .target
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        let (status, _, body) = self
            .call(
                Method::POST,
                &target,
                Some(&json!({ "ResetType": kind })),
                None,
            )
            .await?;
        if status.is_success() {
            Ok(None)
        } else {
            Ok(Some((power, status_error(status, &body))))
        }
    }

    async fn do_set_boot(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    ) -> Result<()> {
        let mut boot = json!({
            "BootSourceOverrideTarget": target_name(device),
            "BootSourceOverrideEnabled": if persistent { "Continuous" } else { "Once" },
        });
        if let Some(m) = mode {
            boot["BootSourceOverrideMode"] = json!(match m {
                BootMode::Uefi => "UEFI",
                BootMode::Bios => "Legacy",
            });
        }
        let body = json!({ "Boot": boot });
        for attempt in 0..2 {
            let (path, _, etag) = self.system().await?;
            let (status, _, resp) = self
                .call(Method::PATCH, &path, Some(&body), etag.as_deref())
                .await?;
            if status.is_success() {
                return Ok(());
            }
            // The resource changed between our GET and PATCH (or the BMC wants If-Match and
            // gave no ETag with the GET): read it again, once.
            if (status == StatusCode::PRECONDITION_FAILED
                || status == StatusCode::PRECONDITION_REQUIRED)
                && attempt == 0
            {
                continue;
            }
            return Err(status_error(status, &resp));
        }
        Err(BmcError::Busy(
            "the boot override kept changing under plinth".into(),
        ))
    }

    async fn do_identity(&self) -> Result<Identity> {
        let (_, s, _) = self.system().await?;
        let mut macs = Vec::new();
        if let Some(link) = &s.ethernet_interfaces
            && let Ok((c, _)) = self.get::<Collection>(&link.id).await
        {
            for m in c.members {
                if let Ok((nic, _)) = self.get::<EthernetInterface>(&m.id).await
                    && let Some(mac) = nic.permanent_mac.or(nic.mac)
                    && let Ok(mac) = mac.parse()
                {
                    macs.push(mac);
                }
            }
        }
        Ok(Identity {
            manufacturer: s.manufacturer,
            model: s.model,
            serial: s.serial_number,
            uuid: s.uuid.as_deref().and_then(|u| u.parse().ok()),
            macs,
        })
    }
}

impl Bmc for Redfish {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState>> {
        Box::pin(async move {
            let (_, s, _) = self.system().await?;
            parse_power(
                s.power_state
                    .as_deref()
                    .ok_or_else(|| BmcError::Protocol("no PowerState".into()))?,
            )
        })
    }

    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_power(action))
    }

    fn set_boot(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_set_boot(device, persistent, mode))
    }

    fn boot_override(&self) -> BoxFuture<'_, Result<BootOverride>> {
        Box::pin(async move {
            let (_, s, _) = self.system().await?;
            Ok(parse_override(&s.boot.unwrap_or_default()))
        })
    }

    fn identity(&self) -> BoxFuture<'_, Result<Identity>> {
        Box::pin(self.do_identity())
    }

    fn health(&self) -> BoxFuture<'_, Result<crate::Health>> {
        Box::pin(self.do_health())
    }

    fn log_entries<'a>(
        &'a self,
        cursor: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<crate::LogBatch>> {
        Box::pin(self.do_log_entries(cursor, max))
    }

    fn media_slots(&self) -> BoxFuture<'_, Result<Vec<crate::MediaSlot>>> {
        Box::pin(self.do_media_slots())
    }

    fn insert_media<'a>(&'a self, slot: &'a str, url: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_insert_media(slot, url))
    }

    fn eject_media<'a>(&'a self, slot: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_eject_media(slot))
    }

    // --- BIOS ---
    fn bios_attributes(&self) -> BoxFuture<'_, Result<crate::BiosAttributes>> {
        Box::pin(self.do_bios_attributes())
    }

    fn bios_pending(&self) -> BoxFuture<'_, Result<Option<crate::BiosAttributes>>> {
        Box::pin(self.do_bios_pending())
    }

    fn set_bios_pending<'a>(
        &'a self,
        attrs: &'a crate::BiosAttributes,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_set_bios_pending(attrs))
    }

    fn bios_registry(&self) -> BoxFuture<'_, Result<Option<crate::bios::Registry>>> {
        Box::pin(self.do_bios_registry())
    }

    // --- firmware ---
    fn firmware_inventory(&self) -> BoxFuture<'_, Result<Vec<crate::firmware::FirmwareItem>>> {
        Box::pin(self.do_firmware_inventory())
    }

    fn update_capabilities(&self) -> BoxFuture<'_, Result<crate::firmware::UpdateCapabilities>> {
        Box::pin(self.do_update_capabilities())
    }

    fn simple_update<'a>(
        &'a self,
        image_url: &'a str,
        targets: &'a [String],
    ) -> BoxFuture<'a, Result<crate::firmware::UpdateTask>> {
        Box::pin(self.do_simple_update(image_url, targets))
    }

    fn multipart_update<'a>(
        &'a self,
        image: Vec<u8>,
        targets: &'a [String],
    ) -> BoxFuture<'a, Result<crate::firmware::UpdateTask>> {
        Box::pin(self.do_multipart_update(image, targets))
    }

    fn task_status<'a>(
        &'a self,
        task: &'a crate::firmware::UpdateTask,
    ) -> BoxFuture<'a, Result<crate::firmware::TaskStatus>> {
        Box::pin(self.do_task_status(task))
    }

    fn password_policy(&self) -> BoxFuture<'_, Result<crate::PasswordPolicy>> {
        Box::pin(self.do_password_policy())
    }

    fn set_password<'a>(&'a self, new: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_set_password(new))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.logout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_real_bmcs_parse() {
        // Trimmed from an iDRAC-style ComputerSystem: OEM fields, values plinth has no enum for.
        let s: System = serde_json::from_value(json!({
            "@odata.id": "/redfish/v1/Systems/System.Embedded.1",
            "@odata.etag": "W/\"abc\"",
            "Id": "System.Embedded.1",
            "PowerState": "On",
            "Manufacturer": "Dell Inc.",
            "SerialNumber": "CN123",
            "UUID": "4c4c4544-0047-3010-8030-b4c04f4e4a32",
            "Boot": {
                "BootSourceOverrideTarget": "UefiHttp",
                "BootSourceOverrideEnabled": "Once",
                "BootSourceOverrideMode": "UEFI",
                "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd"]
            },
            "Actions": { "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "PushPowerButton", "Nmi"]
            }},
            "Oem": { "Dell": { "DellSystem": { "BIOSReleaseDate": "x" } } }
        }))
        .unwrap();
        assert_eq!(s.etag.as_deref(), Some("W/\"abc\""));
        assert_eq!(
            parse_override(s.boot.as_ref().unwrap()),
            BootOverride {
                device: None,
                persistent: false,
                mode: Some(BootMode::Uefi),
                unconfirmed: None,
            },
            "an override plinth does not set reads as none"
        );
        let allowed = s.actions.unwrap().reset.unwrap().allowed;
        // No PowerCycle nor ForceRestart advertised: a cycle of a running machine is refused
        // clearly rather than sent as a ResetType the BMC rejects.
        assert_eq!(
            choose_reset(
                reset_preferences(PowerAction::Cycle, Some(PowerState::On)),
                &allowed
            ),
            None
        );
        assert_eq!(
            choose_reset(
                reset_preferences(PowerAction::Off { force: false }, None),
                &allowed
            ),
            Some("GracefulShutdown")
        );
        assert_eq!(
            choose_reset(
                reset_preferences(PowerAction::Cycle, Some(PowerState::Off)),
                &allowed
            ),
            Some("On")
        );
        assert_eq!(choose_reset(&["On"], &[]), Some("On"));
    }

    #[test]
    fn error_bodies_become_messages() {
        let body = json!({ "error": {
            "code": "Base.1.8.GeneralError",
            "message": "A general error has occurred.",
            "@Message.ExtendedInfo": [
                { "MessageId": "Base.1.8.PropertyValueNotInList", "Message": "The value Floppy for the property BootSourceOverrideTarget is not in the list of acceptable values." },
                { "Message": "Retry the operation." }
            ]
        }});
        let e = status_error(StatusCode::BAD_REQUEST, &body);
        assert!(
            matches!(&e, BmcError::Rejected(m) if m.contains("Floppy") && m.contains("Retry")),
            "{e:?}"
        );
        assert!(status_error(StatusCode::SERVICE_UNAVAILABLE, &Value::Null).is_transient());
        assert_eq!(
            status_error(StatusCode::UNAUTHORIZED, &Value::Null),
            BmcError::Auth
        );
        let cfg = RedfishConfig {
            base_url: "https://bmc".into(),
            username: "root".into(),
            password: "calvin".into(),
            verify_tls: false,
            ca_pem: None,
            system: None,
            timeout: Duration::from_secs(30),
            allow_plain_http: false,
        };
        assert!(!format!("{cfg:?}").contains("calvin"));
    }
}

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::*;

    /// Reads `bytes` as every Redfish body plinth reads, derives what plinth derives from
    /// them, and follows every link through [`Redfish::bmc_url`] of `bmc`, checking that what
    /// it accepts stays on the BMC's origin without user information.
    pub fn bodies(bmc: &Redfish, bytes: &[u8]) {
        let mut links: Vec<String> = Vec::new();
        if let Ok(r) = serde_json::from_slice::<ServiceRoot>(bytes) {
            links.extend(r.systems.map(|l| l.id));
        }
        if let Ok(c) = serde_json::from_slice::<Collection>(bytes) {
            links.extend(c.members.into_iter().map(|l| l.id));
        }
        if let Ok(s) = serde_json::from_slice::<System>(bytes) {
            if let Some(p) = &s.power_state {
                let _ = parse_power(p);
            }
            if let Some(b) = &s.boot {
                let _ = parse_override(b);
            }
            links.extend(s.ethernet_interfaces.map(|l| l.id));
            links.extend(s.actions.and_then(|a| a.reset).and_then(|r| r.target));
        }
        let _ = serde_json::from_slice::<EthernetInterface>(bytes);
        links.extend(vmedia::fuzz_links(bytes));
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            let _ = error_message(&v);
            // BIOS: the attributes, the registry, and the links a Bios resource hands out.
            let _ = bios::parse_registry(&v);
            links.extend(bios::links(&v));
        }
        if let Ok(s) = std::str::from_utf8(bytes) {
            links.push(s.to_owned());
        }
        for l in links {
            if let Ok(url) = bmc.bmc_url(&l) {
                assert_eq!(
                    url.origin(),
                    bmc.base.origin(),
                    "{l:?} left the BMC's origin"
                );
                assert!(
                    url.username().is_empty() && url.password().is_none(),
                    "{l:?}"
                );
            }
        }
    }
}
