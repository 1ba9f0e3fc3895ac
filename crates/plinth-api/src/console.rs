//! A machine's serial console over a WebSocket, and its recording (docs/api.md, "Consoles").
//!
//! `GET /api/v1/machines/{id}/console` upgrades to a WebSocket. An API client authenticates
//! with its bearer token; the web UI's page with its session cookie, and then the handshake
//! must carry an Origin of this host: a WebSocket is not covered by CORS, so without that
//! check any site a signed-in operator visits could type into a machine's console.
//!
//! Binary messages carry console bytes both ways. Text messages are small JSON objects:
//! from plinth `{"type":"status","state":…,"reason":…}`, `{"type":"viewers","viewers":[…]}`,
//! `{"type":"lagged","skipped":n}` and `{"type":"error","code":…,"message":…}` (input
//! refused); from the client `{"type":"break"}`.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_core::console::{Attachment, MAX_INPUT, Update};
use plinth_core::{App, Principal};
use plinth_types::Error;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Caller, MaybeCaller};
use crate::error::{ApiError, Path, Query};

/// The most a client may send in one WebSocket message (console input is at most
/// [`MAX_INPUT`] bytes; a control message is small).
const MAX_MESSAGE: usize = 2 * MAX_INPUT;

/// Who opens the console: the bearer token's caller, or else the web UI's session, which must
/// come from this origin.
async fn caller(
    app: &App,
    token: Option<Principal>,
    headers: &HeaderMap,
) -> Result<Principal, Error> {
    if let Some(p) = token {
        return Ok(p);
    }
    let secret = crate::ui::cookie(headers, crate::ui::SESSION_COOKIE)
        .ok_or_else(|| Error::unauthorized("missing Authorization: Bearer <token> header"))?;
    // A browser always sends Origin with a WebSocket handshake: one naming another site (or
    // none at all, with a cookie) is refused.
    match crate::ui::origin(headers) {
        Some((_, true)) => {}
        Some((origin, false)) => {
            return Err(Error::forbidden(format!(
                "a console opened from {origin} may not use plinth's session"
            )));
        }
        None => {
            return Err(Error::forbidden(
                "a console opened with the session cookie must come from plinth's own page",
            ));
        }
    }
    Ok(app.ui_session(&secret).await?.principal)
}

/// Not in the OpenAPI document (a WebSocket is not a REST call): docs/api.md describes it.
pub async fn console(
    State(app): State<App>,
    MaybeCaller(token): MaybeCaller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let who = caller(&app, token, &headers).await?;
    tracing::Span::current().record("actor", who.name.as_str());
    let att = app.attach_console(&who, id).await?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, att)))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Break,
}

fn text(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

fn status_message(s: &plinth_core::console::Status) -> Message {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), "status".into());
    }
    text(v)
}

fn error_message(e: &Error) -> Message {
    text(serde_json::json!({ "type": "error", "code": e.code, "message": e.message }))
}

async fn serve(mut socket: WebSocket, mut att: Attachment) {
    let mut hello = vec![
        status_message(&att.status()),
        text(serde_json::json!({ "type": "viewers", "viewers": att.viewers() })),
    ];
    if !att.backlog.is_empty() {
        hello.push(Message::Binary(std::mem::take(&mut att.backlog).into()));
    }
    for m in hello {
        if socket.send(m).await.is_err() {
            att.detach().await.ok();
            return;
        }
    }
    loop {
        tokio::select! {
            update = att.next() => {
                let m = match update {
                    Update::Output(b) => Message::Binary(b.to_vec().into()),
                    Update::Status(s) => status_message(&s),
                    Update::Viewers(v) => text(serde_json::json!({ "type": "viewers", "viewers": v })),
                    Update::Lagged(n) => text(serde_json::json!({ "type": "lagged", "skipped": n })),
                };
                if socket.send(m).await.is_err() {
                    break;
                }
            }
            m = socket.recv() => {
                let reply = match m {
                    Some(Ok(Message::Binary(b))) => att.send(&b).await.err(),
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Control>(&t) {
                        Ok(Control::Break) => att.send_break().await.err(),
                        Err(_) => Some(Error::invalid(
                            "invalid_console_message",
                            "a text message is a JSON control message: {\"type\":\"break\"}",
                        )),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => None, // ping/pong: answered by the WebSocket layer
                };
                if let Some(e) = reply
                    && socket.send(error_message(&e)).await.is_err()
                {
                    break;
                }
            }
        }
    }
    let id = att.machine_id;
    if let Err(e) = att.detach().await {
        tracing::warn!(machine_id = %id, error = %e.message, "console_detached not recorded");
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// At most this many of the last bytes (default and most: 4 MiB).
    #[param(minimum = 0, maximum = 4194304)]
    max_bytes: Option<u32>,
}

const MAX_LOG: u64 = 4 * 1024 * 1024;

#[utoipa::path(get, path = "/api/v1/machines/{id}/console/log", tag = "machines", params(("id" = Uuid, Path), LogParams),
    responses((status = 200, content_type = "application/octet-stream", description = "the console recording's last bytes, as the console printed them")))]
pub async fn console_log(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Query(p): Query<LogParams>,
) -> Result<Response, ApiError> {
    let n = p.max_bytes.map_or(MAX_LOG, u64::from);
    if n > MAX_LOG {
        return Err(ApiError(Error::invalid(
            "invalid_max_bytes",
            format!("max_bytes is at most {MAX_LOG}"),
        )));
    }
    let log = app.console_log(&who, id, n).await?;
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        log,
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/console/status", tag = "machines", params(("id" = Uuid, Path)),
    responses((status = 200, body = plinth_types::api::ConsoleInfo)))]
pub async fn console_status(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<plinth_types::api::ConsoleInfo>, ApiError> {
    Ok(axum::Json(app.console_info(&who, id).await?))
}

#[utoipa::path(put, path = "/api/v1/machines/{id}/bmc/console", tag = "machines", params(("id" = Uuid, Path)),
    request_body = plinth_types::api::ConsoleEndpoint,
    responses((status = 200, body = plinth_types::api::ConsoleInfo),
              (status = 409, body = plinth_types::api::ErrorBody, description = "`no_bmc`, `ipmi_bmc` (an IPMI BMC's console is the BMC), `decommissioned`")))]
pub async fn set_console_endpoint(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    crate::error::Json(e): crate::error::Json<plinth_types::api::ConsoleEndpoint>,
) -> Result<axum::Json<plinth_types::api::ConsoleInfo>, ApiError> {
    Ok(axum::Json(
        app.set_console_endpoint(&who, id, Some(e)).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/machines/{id}/bmc/console", tag = "machines", params(("id" = Uuid, Path)),
    responses((status = 200, body = plinth_types::api::ConsoleInfo),
              (status = 409, body = plinth_types::api::ErrorBody, description = "`no_bmc`, `decommissioned`")))]
pub async fn delete_console_endpoint(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<plinth_types::api::ConsoleInfo>, ApiError> {
    Ok(axum::Json(app.set_console_endpoint(&who, id, None).await?))
}
