//! How plinth answers a request for a file under the images root, whoever sends the bytes:
//! [`plan_file`] turns the file's metadata and the request's headers into the status, the
//! headers (ETag, Last-Modified, Content-Range, ...) and the byte range to send, and
//! [`refusal_parts`] answers a path the resolver refused.
//!
//! Two senders use it: the listener's sendfile path (`fastpath::sendfile`), which answers
//! almost every file request on its own connection, and the axum handler (`boot::file`), which
//! answers the few it is handed. Both must answer alike (a client cannot tell which one it
//! reached), so the answer is decided here, once.
//!
//! The dependencies go one way: `fastpath` and `boot` use this module, which uses neither;
//! `boot` also uses `fastpath` (for `ClientAddr`, what the listener records about each
//! connection), never the reverse: the listener sits below the router and knows no handler.
//! (They used to import each other: the plan lived in `boot` and `ClientAddr` in `fastpath`.)

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use plinth_core::files::Refusal;

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
        // (anyone can send these: a line per request would let a flood fill the log)
        static HOSTILE: plinth_types::logthrottle::LogThrottle =
            plinth_types::logthrottle::LogThrottle::new(10, std::time::Duration::from_secs(10));
        if let Some(suppressed) = HOSTILE.check() {
            tracing::warn!(peer = ?peer, path = %path.escape_debug(), reason = %r, suppressed, "refused a boot file request");
        }
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
    Ok(plan(len, mtime, &etag, headers))
}

/// The answer for a representation of `len` bytes with this time and strong ETag (quoted):
/// a file, or a document made per request (the virtual-media ISOs).
pub(crate) fn plan(
    len: u64,
    mtime: std::time::SystemTime,
    etag: &str,
    headers: &HeaderMap,
) -> FilePlan {
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
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("ascii"));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&last_modified).expect("ascii"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if not_modified {
        return FilePlan {
            status: StatusCode::NOT_MODIFIED,
            headers: h,
            body: None,
        };
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
            return FilePlan {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers: h,
                body: None,
            };
        }
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    FilePlan {
        status,
        headers: h,
        body: Some((start, count)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of hostile file requests is answered in full but logs a few lines a window, not
    /// one per request.
    #[test]
    fn hostile_refusals_are_answered_and_their_log_lines_throttled() {
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let (statuses, lines) = plinth_testkit::logs::warnings(|| {
            (0..100)
                .map(|_| refusal_parts("../etc/shadow", Some(peer), &Refusal::Traversal).0)
                .collect::<Vec<_>>()
        });
        assert!(statuses.iter().all(|s| *s == StatusCode::FORBIDDEN));
        let logged = lines
            .iter()
            .filter(|l| l.contains("refused a boot file request"))
            .count();
        assert!(
            (1..=10).contains(&logged),
            "{logged} lines for 100 refusals:\n{}",
            lines.join("\n")
        );
    }

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
