//! `/boot`: what network-booting machines fetch, without authentication (firmware has no
//! credentials). `/boot/ipxe` renders the machine's iPXE script; `/boot/<path>` serves files
//! from the images root with Content-Length, ETag, Last-Modified, conditional requests and
//! single byte ranges (iPXE and UEFI HTTP boot fetch kernels and initrds in ranges).
//!
//! Most file requests never reach the file handler here: the listener's sendfile path
//! (`fastpath::sendfile`) answers them itself and hands axum only the odd ones. Both answer
//! from `file_plan::plan_file`, so how a file is answered lives in `file_plan`, not here. This
//! module uses `fastpath` only for `ClientAddr` (the [`Peer`] extractor reads what the listener
//! recorded about the connection) and the script handler's types (lib.rs gives the listener
//! [`script_handler`], which answers as [`ipxe_script`] does); `fastpath` never uses this module.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_core::App;
use plinth_core::boot::{BootRequest, refusal_context};
use plinth_core::files::{self, Refusal};
use plinth_types::ErrorKind;
use serde::Deserialize;

use crate::error::ApiError;
use crate::fastpath::{ClientAddr, ScriptCall, ScriptHandler};
use crate::file_plan::{plan_file, refusal_parts};

/// The iPXE variables a script request may carry; others are ignored (operators' DHCP
/// configurations pass what they like).
#[derive(Debug, Default, Deserialize)]
pub struct BootParams {
    mac: Option<String>,
    uuid: Option<String>,
    arch: Option<String>,
    buildarch: Option<String>,
    platform: Option<String>,
    serial: Option<String>,
}

/// The client's address, when the server was started with connect info (tests that call the
/// router directly have none).
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<ClientAddr>>()
                .map(|c| c.0.addr),
        ))
    }
}

fn is_ipxe(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.contains("iPXE"))
}

fn script_response(text: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// `GET /boot/ipxe?mac=...&uuid=...&platform=...&buildarch=...&serial=...`
pub async fn ipxe_script(
    State(app): State<App>,
    Peer(peer): Peer,
    headers: HeaderMap,
    query: Result<Query<BootParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    ipxe_answer(&app, peer, &headers, query.map(|q| q.0).map_err(|_| ())).await
}

/// The listener's own path to [`ipxe_script`] (`fastpath` answers script requests on plain
/// connections without the router): the same answer, from the same parameters.
pub(crate) fn script_handler(app: App) -> ScriptHandler {
    let app = std::sync::Arc::new(app);
    std::sync::Arc::new(move |call: ScriptCall| {
        let app = app.clone();
        Box::pin(async move {
            let params = Query::<BootParams>::try_from_uri(&call.uri)
                .map(|q| q.0)
                .map_err(|_| ());
            ipxe_answer(&app, Some(call.peer), &call.headers, params).await
        })
    })
}

async fn ipxe_answer(
    app: &App,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    params: Result<BootParams, ()>,
) -> Response {
    let env = app.boot_env();
    let request_base = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255 && !h.contains(['/', ' ', '\\']))
        .map(|h| format!("http://{h}"));
    let result = match params {
        Ok(p) => {
            let req = BootRequest {
                mac: p.mac,
                uuid: p.uuid,
                arch: p.buildarch.or(p.arch),
                platform: p.platform,
                serial: p.serial,
                remote: peer.map(|p| p.ip()),
                request_base,
            };
            app.boot_script(&req, &env.settings).await
        }
        Err(_) => Err(plinth_types::Error::invalid(
            "bad_boot_parameters",
            "the query string cannot be read",
        )),
    };
    match result {
        Ok(script) => match env.templates.render(script.template, &script.context) {
            Ok(text) => script_response(text),
            Err(e) => template_failure(&e),
        },
        // iPXE would retry at once on an HTTP error: tell it why and make it wait. Other
        // clients (curl, tests, monitoring) get the plain error.
        Err(e) if is_ipxe(headers) => {
            if e.kind == ErrorKind::Internal || e.kind == ErrorKind::Unavailable {
                tracing::error!(code = e.code, "boot script request failed");
            } else {
                // (anyone can send these: a line per request would let a flood fill the log)
                static BAD: plinth_types::logthrottle::LogThrottle =
                    plinth_types::logthrottle::LogThrottle::new(
                        10,
                        std::time::Duration::from_secs(10),
                    );
                if let Some(suppressed) = BAD.check() {
                    tracing::warn!(peer = ?peer, code = e.code, message = %e.message, suppressed, "bad boot script request");
                }
            }
            let reason = match e.kind {
                ErrorKind::Internal | ErrorKind::Unavailable => {
                    "plinth cannot answer right now".to_owned()
                }
                _ => e.message.clone(),
            };
            let ctx = refusal_context(&reason, &env.settings);
            match env.templates.render("wait.ipxe", &ctx) {
                Ok(text) => script_response(text),
                Err(te) => template_failure(&te),
            }
        }
        Err(e) => ApiError(e).into_response(),
    }
}

fn template_failure(e: &plinth_core::boot::TemplateError) -> Response {
    tracing::error!(template = %e.template, message = %e.message, "a boot template failed to render");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{e}\n"),
    )
        .into_response()
}

/// `GET|HEAD /boot/<path>`: a file under the images root.
pub async fn file(
    State(app): State<App>,
    Peer(peer): Peer,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let root = &app.boot_env().settings.images_root;
    let real = match files::resolve(root, &path) {
        Ok(p) => p,
        Err(r) => return refusal(&path, peer, r),
    };
    let note = peer.map(|p| FetchNote {
        app: app.clone(),
        peer: p.ip(),
        path: path.clone(),
    });
    match serve_file_noted(&real, &headers, note).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, path, "serving an image file");
            refusal(&path, peer, Refusal::Unreadable)
        }
    }
}

fn refusal(path: &str, peer: Option<SocketAddr>, r: Refusal) -> Response {
    let (status, text) = refusal_parts(path, peer, &r);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Who fetches a file, so that plinth notes the machine's last fetch (plinth-core's
/// `sightings`: in memory, no database write per request).
pub(crate) struct FetchNote {
    pub(crate) app: App,
    pub(crate) peer: std::net::IpAddr,
    /// The path under the images root, as requested.
    pub(crate) path: String,
}

impl FetchNote {
    /// `reached`: the offset in the file the body got to; `complete`: the body was sent whole
    /// and ends at the file's end.
    pub(crate) fn record(&self, reached: u64, size: u64, complete: bool) {
        self.app.fetch_log().record(
            self.peer,
            plinth_core::sightings::Protocol::Http,
            &self.path,
            reached,
            size,
            complete,
        );
    }
}

/// Notes a body's progress when it is dropped: sent to the end, or cut short.
struct BodyNote {
    note: FetchNote,
    start: u64,
    count: u64,
    size: u64,
    sent: u64,
}

impl Drop for BodyNote {
    fn drop(&mut self) {
        let complete = self.sent == self.count && self.start + self.count == self.size;
        self.note
            .record(self.start + self.sent, self.size, complete);
    }
}

/// The axum path for files: only requests the listener's sendfile path hands over (a request
/// with a body, odd framing) come here, so a plain stream is enough.
pub(crate) async fn serve_file(
    path: &std::path::Path,
    headers: &HeaderMap,
) -> std::io::Result<Response> {
    serve_file_noted(path, headers, None).await
}

/// [`serve_file`], noting the fetch's start and end under `note`.
pub(crate) async fn serve_file_noted(
    path: &std::path::Path,
    headers: &HeaderMap,
    note: Option<FetchNote>,
) -> std::io::Result<Response> {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let meta = f.metadata().await?;
    let plan = plan_file(&meta, headers)?;
    let body = match plan.body {
        Some((start, count)) => {
            f.seek(std::io::SeekFrom::Start(start)).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(f.take(count), 256 * 1024);
            match note {
                Some(note) => {
                    note.record(start, meta.len(), false);
                    let mut progress = BodyNote {
                        note,
                        start,
                        count,
                        size: meta.len(),
                        sent: 0,
                    };
                    Body::from_stream(stream.map(move |chunk| {
                        // The whole note moves into the stream (not only its `sent`): it
                        // records when the stream is dropped.
                        let progress = &mut progress;
                        if let Ok(b) = &chunk {
                            progress.sent += b.len() as u64;
                        }
                        chunk
                    }))
                }
                None => Body::from_stream(stream),
            }
        }
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = plan.status;
    *resp.headers_mut() = plan.headers;
    Ok(resp)
}
