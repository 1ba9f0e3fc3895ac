//! `/boot`: what network-booting machines fetch, without authentication (firmware has no
//! credentials). `/boot/ipxe` renders the machine's iPXE script; `/boot/<path>` serves files
//! from the images root with Content-Length, ETag, Last-Modified, conditional requests and
//! single byte ranges (iPXE and UEFI HTTP boot fetch kernels and initrds in ranges).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_core::App;
use plinth_core::boot::{BootRequest, refusal_context};
use plinth_core::files::{self, Refusal};
use plinth_types::ErrorKind;
use serde::Deserialize;

use crate::error::ApiError;

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
                .get::<ConnectInfo<crate::fastpath::ClientAddr>>()
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
    let env = app.boot_env();
    let params = query.map(|q| q.0);
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
        Err(e) if is_ipxe(&headers) => {
            if e.kind == ErrorKind::Internal || e.kind == ErrorKind::Unavailable {
                tracing::error!(code = e.code, "boot script request failed");
            } else {
                tracing::warn!(peer = ?peer, code = e.code, message = %e.message, "bad boot script request");
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
    match serve_file(&real, &headers).await {
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

/// Status and body for a refused file request; logged (as a warning when hostile).
pub(crate) fn refusal_parts(
    path: &str,
    peer: Option<SocketAddr>,
    r: &Refusal,
) -> (StatusCode, String) {
    let status = match r {
        Refusal::NotFound | Refusal::NotAFile => StatusCode::NOT_FOUND,
        Refusal::Unreadable => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::FORBIDDEN,
    };
    if r.is_hostile() {
        tracing::warn!(peer = ?peer, path = %path.escape_debug(), reason = %r, "refused a boot file request");
    } else {
        tracing::debug!(peer = ?peer, path = %path.escape_debug(), reason = %r, "boot file not served");
    }
    (status, format!("{r}\n"))
}

/// A byte range of a file of `len` bytes, as asked in a Range header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    /// No (usable) Range header: the whole file.
    Whole,
    /// Inclusive start and end.
    Part(u64, u64),
    /// A range outside the file.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n`. Several ranges, or a header that is not a byte
/// range, are answered with the whole file (RFC 9110 allows ignoring Range).
pub(crate) fn parse_range(h: &str, len: u64) -> RangeAsk {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeAsk::Whole,
        (true, false) => match parse(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) if len > 0 => RangeAsk::Part(len.saturating_sub(n), len - 1),
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeAsk::Whole;
            };
            let end = if b.is_empty() {
                Some(len.saturating_sub(1))
            } else {
                parse(b)
            };
            match end {
                None => RangeAsk::Whole,
                Some(_) if start >= len => RangeAsk::Unsatisfiable,
                Some(end) if end < start => RangeAsk::Whole,
                Some(end) => RangeAsk::Part(start, end.min(len - 1)),
            }
        }
    }
}

fn http_date(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn parse_http_date(s: &str) -> Option<std::time::SystemTime> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%a, %d %b %Y %H:%M:%S GMT")
        .ok()
        .map(|t| t.and_utc().into())
}

/// Seconds since the epoch, the precision of HTTP dates.
fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The answer to a request for a file with this metadata: status, headers and the byte range
/// to send (none for 304, 416). Shared by the axum handler and the sendfile path.
pub(crate) struct FilePlan {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// (start, count) of the body.
    pub body: Option<(u64, u64)>,
}

pub(crate) fn plan_file(
    meta: &std::fs::Metadata,
    headers: &HeaderMap,
) -> std::io::Result<FilePlan> {
    use std::os::unix::fs::MetadataExt;
    let len = meta.len();
    let mtime = meta.modified()?;
    // Strong validator: changes when the file is replaced or rewritten.
    let etag = format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.ino(),
        len,
        meta.mtime_nsec() as u64 ^ (meta.mtime() as u64).rotate_left(32)
    );
    let last_modified = http_date(mtime);
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());

    let not_modified = match get(header::IF_NONE_MATCH) {
        Some(inm) => inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        }),
        None => get(header::IF_MODIFIED_SINCE)
            .and_then(parse_http_date)
            .is_some_and(|since| secs(mtime) <= secs(since)),
    };
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&last_modified).expect("ascii"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if not_modified {
        return Ok(FilePlan {
            status: StatusCode::NOT_MODIFIED,
            headers: h,
            body: None,
        });
    }
    // If-Range: the range applies only to the representation the client already has.
    let range_applies = match get(header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) => parse_http_date(v).is_some_and(|d| secs(d) == secs(mtime)),
    };
    let ask = match get(header::RANGE) {
        Some(r) if range_applies => parse_range(r, len),
        _ => RangeAsk::Whole,
    };
    let (status, start, count) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part(a, b) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")).expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        RangeAsk::Unsatisfiable => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            return Ok(FilePlan {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers: h,
                body: None,
            });
        }
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    Ok(FilePlan {
        status,
        headers: h,
        body: Some((start, count)),
    })
}

/// The axum path for files: only requests the listener's sendfile path hands over (a request
/// with a body, odd framing) come here, so a plain stream is enough.
async fn serve_file(path: &std::path::Path, headers: &HeaderMap) -> std::io::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let meta = f.metadata().await?;
    let plan = plan_file(&meta, headers)?;
    let body = match plan.body {
        Some((start, count)) => {
            f.seek(std::io::SeekFrom::Start(start)).await?;
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                f.take(count),
                256 * 1024,
            ))
        }
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = plan.status;
    *resp.headers_mut() = plan.headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), Part(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(parse_range("bytes=500-5000", 1000), Part(500, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=1000-1001", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Whole);
        assert_eq!(parse_range("items=0-1", 1000), Whole);
        assert_eq!(parse_range("bytes=x-1", 1000), Whole);
    }

    #[test]
    fn http_dates_round_trip_to_the_second() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let s = http_date(t);
        assert!(s.ends_with(" GMT"), "{s}");
        assert_eq!(parse_http_date(&s), Some(t));
    }
}
