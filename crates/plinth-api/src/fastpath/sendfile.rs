//! Image files with sendfile(2). hyper can only send a body it has in memory, so every byte of
//! a kernel or disk image would be copied from the page cache into user space and back out
//! (measured: twice nginx's CPU per byte). The listener gives each plain connection of a
//! `/boot/` listener to [`connection`] first, which reads the request line: a `GET`/`HEAD` of a
//! file under `/boot/` is answered on this connection with the same headers the axum handler
//! would send (the same `file_plan::plan_file`, the same resolver) and a sendfile body; a
//! `GET` of the iPXE script is answered here too (the `/boot/ipxe` handler, called without the
//! router: [`super::ScriptHandler`]; its small body written here), because iPXE asks for its script and then the kernel and initrd
//! on the same kept-alive connection, and a connection handed to axum stays there (measured by
//! the boot storm: 1,000 machines' kernels through axum's stream took 250 MiB and twice the
//! CPU). Anything else, and any later request on that connection, is handed to axum with the
//! bytes already read put back in front.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Buf, BytesMut};
use plinth_core::App;
use plinth_types::netboot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Conn, ConnGuard, Io, ListenerCounters};
use crate::file_plan::{plan_file, refusal_parts};

/// The longest request head read here; longer ones go to axum, which answers them.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, or to take more of a body.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest script body answered here (a script is a few hundred bytes).
const MAX_SCRIPT: usize = 1024 * 1024;

/// What a connection on the fast path works with.
pub(super) struct On {
    pub app: App,
    /// The script endpoint's handler.
    pub script: super::ScriptHandler,
    pub counters: std::sync::Arc<ListenerCounters>,
    pub handoff: mpsc::Sender<(Conn, SocketAddr)>,
}

/// A request line that is a `GET` of the iPXE script (`/boot/ipxe`, any query).
pub(crate) fn script_request(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(b"GET"), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    path.strip_prefix(netboot::BOOT_PREFIX.as_bytes()) == Some(netboot::SCRIPT_NAME.as_bytes())
}

/// A request line that is a file under `/boot/` (not the script endpoint): (is HEAD, path).
pub(crate) fn file_request(line: &[u8]) -> Option<(bool, &[u8])> {
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let head = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return None,
    };
    let path = target.split(|&b| b == b'?').next()?;
    let rest = path.strip_prefix(netboot::BOOT_PREFIX.as_bytes())?;
    // The virtual-media ISOs are made per boot: the router's handler answers them.
    (rest != netboot::SCRIPT_NAME.as_bytes() && !rest.starts_with(netboot::VMEDIA_DIR.as_bytes()))
        .then_some((head, rest))
}

/// `%xx` decoding, as axum's Path extractor does; `None` for bad escapes or non-UTF-8.
pub(crate) fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> std::io::Result<usize> {
    buf.reserve(4096);
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Gives the connection to axum, the bytes already read in front.
async fn hand_off(
    to: &mpsc::Sender<(Conn, SocketAddr)>,
    read: BytesMut,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
) {
    let conn = Conn {
        io: Io::Plain {
            prefix: read.freeze(),
            stream,
        },
        _guard: guard,
    };
    // Fails only when the server is shutting down: the connection is dropped.
    to.send((conn, peer)).await.ok();
}

/// One client connection: file requests served here until one is not.
pub(super) async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    head_timeout: Duration,
    on: On,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let handoff = &on.handoff;
    let hand_off = |read, stream, guard| {
        on.counters.handed_off.fetch_add(1, Relaxed);
        hand_off(handoff, read, stream, peer, guard)
    };
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // The whole head within the head timeout of starting to wait for it, however it
        // trickles.
        let deadline = tokio::time::Instant::now() + head_timeout;
        // Enough to see the request line.
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break Some(i);
            }
            if buf.len() >= MAX_HEAD {
                break None;
            }
            match read_more(&mut stream, &mut buf, deadline).await {
                Ok(0) | Err(_) if buf.is_empty() => return,
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            }
        };
        let is_file = line_end.and_then(|i| file_request(&buf[..i])).is_some();
        let is_script = line_end.is_some_and(|i| script_request(&buf[..i]));
        if !is_file && !is_script {
            hand_off(buf, stream, guard).await;
            return;
        }
        // The whole head.
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i + 4);
            }
            if buf.len() >= MAX_HEAD {
                break None;
            }
            match read_more(&mut stream, &mut buf, deadline).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let Some(head_len) = head_len else {
            // Too long for here: axum answers it (431).
            hand_off(buf, stream, guard).await;
            return;
        };
        let head = &buf[..head_len];
        let served = if is_script {
            serve_script(&mut stream, peer, &on.script, head)
                .instrument(tracing::info_span!("http", %peer))
                .await
        } else {
            serve_one(&mut stream, peer, &on.app, head)
                .instrument(tracing::info_span!("http", %peer))
                .await
        };
        if matches!(served, Ok(Next::KeepAlive | Next::Close)) {
            let counter = if is_script {
                &on.counters.scripts
            } else {
                &on.counters.files
            };
            counter.fetch_add(1, Relaxed);
        }
        match served {
            Ok(Next::KeepAlive) => buf.advance(head_len),
            Ok(Next::HandOff) => {
                hand_off(buf, stream, guard).await;
                return;
            }
            Ok(Next::Close) => {
                stream.shutdown().await.ok();
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "boot file connection ended");
                return;
            }
        }
    }
}

enum Next {
    KeepAlive,
    Close,
    /// Not a request this path answers after all (a body, an odd version): axum's.
    HandOff,
}

/// A request head this path answers: method, target, HTTP/1.x minor version, headers and
/// whether the connection stays open after the answer. `None` for what axum should have: an
/// unparsable head, or a request with a body (unusual for GET; axum reads and ignores it).
struct Head {
    method: String,
    target: String,
    headers: HeaderMap,
    keep_alive: bool,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let mut raw_headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut raw_headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
        return None;
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return None;
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(n, v);
        }
    }
    if headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        return None;
    }
    let connection = headers
        .get(axum::http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let keep_alive = if version == 1 {
        !connection.contains("close")
    } else {
        connection.contains("keep-alive")
    };
    Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        keep_alive,
    })
}

/// The iPXE script from the handler axum would run (for the client's address), its whole
/// body written here.
async fn serve_script(
    stream: &mut TcpStream,
    peer: SocketAddr,
    script: &super::ScriptHandler,
    head: &[u8],
) -> std::io::Result<Next> {
    let Some(Head {
        method,
        target,
        headers,
        keep_alive,
        ..
    }) = parse_head(head)
    else {
        return Ok(Next::HandOff);
    };
    if !script_request(format!("{method} {target}").as_bytes()) {
        return Ok(Next::HandOff);
    }
    let Ok(uri) = target.parse::<axum::http::Uri>() else {
        // A target the URI parser refuses: axum answers it.
        return Ok(Next::HandOff);
    };
    let response = script(super::ScriptCall { peer, uri, headers }).await;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_SCRIPT)
        .await
        .map_err(std::io::Error::other)?;
    let mut out_headers = parts.headers;
    out_headers.remove(axum::http::header::TRANSFER_ENCODING);
    out_headers.insert(
        axum::http::header::CONTENT_LENGTH,
        HeaderValue::from(body.len()),
    );
    write_response(stream, parts.status, &out_headers, keep_alive, &body).await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

async fn serve_one(
    stream: &mut TcpStream,
    peer: SocketAddr,
    app: &App,
    head: &[u8],
) -> std::io::Result<Next> {
    let Some(Head {
        method,
        target,
        headers,
        keep_alive,
        ..
    }) = parse_head(head)
    else {
        return Ok(Next::HandOff);
    };
    let Some((is_head, raw_path)) =
        file_request(format!("{method} {target}").as_bytes()).map(|(h, p)| (h, p.to_vec()))
    else {
        return Ok(Next::HandOff);
    };
    let started = Instant::now();

    let Some(path) = percent_decode(&raw_path) else {
        let text = "the path is not valid percent-encoded UTF-8\n";
        write_response(
            stream,
            StatusCode::BAD_REQUEST,
            &text_headers(text.len()),
            keep_alive,
            text.as_bytes(),
        )
        .await?;
        return Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        });
    };
    let root = &app.boot_env().settings.images_root;
    let opened = plinth_core::files::resolve(root, &path).and_then(|real| {
        let f = std::fs::File::open(&real).map_err(|_| plinth_core::files::Refusal::Unreadable)?;
        let meta = f
            .metadata()
            .map_err(|_| plinth_core::files::Refusal::Unreadable)?;
        Ok((f, meta))
    });
    let (file, meta) = match opened {
        Ok(x) => x,
        Err(r) => {
            let (status, text) = refusal_parts(&path, Some(peer), &r);
            let body = if is_head { &b""[..] } else { text.as_bytes() };
            write_response(stream, status, &text_headers(text.len()), keep_alive, body).await?;
            return Ok(if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            });
        }
    };
    let plan = plan_file(&meta, &headers)?;
    write_response(stream, plan.status, &plan.headers, keep_alive, b"").await?;
    let mut sent = 0;
    if let (Some((start, count)), false) = (plan.body, is_head) {
        // What the machine last fetched, for its timeouts: in memory, at the start and end
        // (plinth-core's `sightings`). The offset reached in the file; complete when the
        // body was sent whole and ends at the file's end.
        let size = meta.len();
        let note = |reached, complete| {
            app.fetch_log().record(
                peer.ip(),
                plinth_core::sightings::Protocol::Http,
                &path,
                reached,
                size,
                complete,
            )
        };
        note(start, false);
        let r = send_file(stream, &file, start, count, &mut sent).await;
        note(start + sent, r.is_ok() && start + count == size);
        r?;
    }
    tracing::debug!(method, path = %target, status = plan.status.as_u16(), bytes = sent, duration_ms = started.elapsed().as_millis() as u64, "boot file sent");
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

fn text_headers(len: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(len));
    h
}

/// The response head for `status` and `headers`, with a `date` and, when the connection is
/// not kept, `connection: close`.
fn head_bytes(status: StatusCode, headers: &HeaderMap, keep_alive: bool, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + extra);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The head and `body` in one write: one segment for a small answer (a script, a refusal), not
/// one for the head and one for the body, each through the whole network stack on both ends
/// (docs/benchmarks.md, "The script endpoint, step 4"). A file's body follows by sendfile.
async fn write_response(
    stream: &mut TcpStream,
    status: StatusCode,
    headers: &HeaderMap,
    keep_alive: bool,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = head_bytes(status, headers, keep_alive, body.len());
    out.extend_from_slice(body);
    match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// `count` bytes of `file` from `start`, page cache to socket, counting them in `sent`; an
/// error if the file shrank (the connection is then closed: the client sees the short body).
async fn send_file(
    stream: &mut TcpStream,
    file: &std::fs::File,
    start: u64,
    count: u64,
    sent: &mut u64,
) -> std::io::Result<()> {
    let mut off = start;
    let end = start + count;
    while off < end {
        *sent = off - start;
        match tokio::time::timeout(IO_TIMEOUT, stream.writable()).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        let want = usize::try_from((end - off).min(1 << 30)).unwrap_or(1 << 30);
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            crate::sys::sendfile(stream.as_fd(), file.as_fd(), &mut off, want)
        }) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    *sent = count;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_are_files() {
        assert_eq!(
            file_request(b"GET /boot/plinth/vmlinuz HTTP/1.1"),
            Some((false, &b"plinth/vmlinuz"[..]))
        );
        assert_eq!(
            file_request(b"HEAD /boot/ipxe.efi?x=1 HTTP/1.1"),
            Some((true, &b"ipxe.efi"[..]))
        );
        assert_eq!(file_request(b"GET /boot/ipxe?mac=x HTTP/1.1"), None);
        assert_eq!(file_request(b"GET /boot/ipxe HTTP/1.1"), None);
        assert_eq!(file_request(b"GET /boot/vmedia/x.iso HTTP/1.1"), None);
        assert_eq!(file_request(b"POST /boot/x HTTP/1.1"), None);
        assert_eq!(file_request(b"GET /api/v1/machines HTTP/1.1"), None);
        assert_eq!(file_request(b"GET"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%2e%2E/b").as_deref(), Some("a../b"));
        assert_eq!(percent_decode(b"x%00").as_deref(), Some("x\0"));
        assert_eq!(percent_decode(b"bad%2"), None);
        assert_eq!(percent_decode(b"bad%zz"), None);
        assert_eq!(percent_decode(b"%ff"), None);
    }

    /// The head as the axum handler's would read: status line, the headers, a valid HTTP date,
    /// `connection: close` only when the connection ends; the body follows the blank line.
    #[test]
    fn a_head_is_one_block_with_its_date() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::CONTENT_LENGTH,
            HeaderValue::from_static("5"),
        );
        let kept = String::from_utf8(head_bytes(StatusCode::OK, &h, true, 5)).unwrap();
        let lines: Vec<&str> = kept.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert_eq!(lines[1], "content-length: 5");
        let date = lines[2].strip_prefix("date: ").expect(&kept);
        let when = httpdate::parse_http_date(date).expect(date);
        let age = std::time::SystemTime::now().duration_since(when).unwrap();
        assert!(age < Duration::from_secs(5), "{date}");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
        assert_eq!(&lines[3..], ["", ""], "{kept:?}");
        let closed = String::from_utf8(head_bytes(StatusCode::NOT_FOUND, &h, false, 0)).unwrap();
        assert!(closed.starts_with("HTTP/1.1 404 Not Found\r\n"), "{closed}");
        assert!(
            closed.ends_with("\r\nconnection: close\r\n\r\n"),
            "{closed}"
        );
    }
}
