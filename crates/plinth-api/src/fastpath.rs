//! Image files with sendfile(2). hyper can only send a body it has in memory, so every byte of
//! a kernel or disk image would be copied from the page cache into user space and back out
//! (measured: twice nginx's CPU per byte). The listener here reads each connection's first
//! request line: a `GET`/`HEAD` of a file under `/boot/` is answered on this connection with
//! the same headers the axum handler would send (the same `plan_file`, the same resolver) and
//! a sendfile body; anything else — and any later request on a keep-alive connection that is
//! not a file — is handed to axum with the bytes already read put back in front.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use plinth_core::App;
use plinth_types::netboot;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::boot::{plan_file, refusal_parts};

/// The longest request head read here; longer ones go to axum, which answers them.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, or to take more of a body.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a client may take to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request head, counted from when plinth starts waiting
/// for it and not restarted by each byte: a slow client cannot hold a connection open by
/// dribbling, and a kept-alive connection with nothing to ask is closed after as long.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The client's address and whether its connection is TLS, as the handlers' `ConnectInfo`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Open connections allowed on one listener, and from one peer address on it.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub total: usize,
    pub per_peer: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            total: 4096,
            per_peer: 256,
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_peer: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// One admitted connection; dropping it (the connection closed) frees its place.
pub struct ConnGuard {
    open: std::sync::Arc<std::sync::Mutex<Open>>,
    peer: std::net::IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                o.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A connection handed to the HTTP server: the bytes already read, then the socket; or a TLS
/// stream. It holds its place among the listener's open connections.
pub struct Conn {
    io: Io,
    _guard: ConnGuard,
}

enum Io {
    Plain { prefix: Bytes, stream: TcpStream },
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain { prefix, stream } => {
                if !prefix.is_empty() {
                    let n = prefix.len().min(buf.remaining());
                    buf.put_slice(&prefix[..n]);
                    prefix.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(stream).poll_read(cx, buf)
            }
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain { stream, .. } => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain { stream, .. } => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain { stream, .. } => stream.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain { stream, .. } => Pin::new(stream).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts TCP connections up to its limits (TLS handshakes off the accept loop), serves
/// file requests itself where this listener has the fast path, and yields the rest to the
/// HTTP server.
pub struct BootListener {
    tcp: TcpListener,
    app: App,
    /// Plain connections of a listener serving `/boot/`: files sent with sendfile here.
    fast_path: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnLimits,
    head_timeout: Duration,
    open: std::sync::Arc<std::sync::Mutex<Open>>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
}

impl BootListener {
    pub fn new(
        tcp: TcpListener,
        app: App,
        fast_path: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: ConnLimits,
        head_timeout: Duration,
    ) -> BootListener {
        let (tx, rx) = mpsc::channel(256);
        BootListener {
            tcp,
            app,
            fast_path: fast_path && tls.is_none(),
            tls,
            limits,
            head_timeout,
            open: Default::default(),
            tx,
            rx,
        }
    }

    /// A place for a connection from `peer`, or None when the listener or the peer is full.
    fn admit(&self, peer: std::net::IpAddr) -> Option<ConnGuard> {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = o.per_peer.get(&peer).copied().unwrap_or(0);
        if o.total >= self.limits.total || mine >= self.limits.per_peer {
            return None;
        }
        o.total += 1;
        *o.per_peer.entry(peer).or_insert(0) += 1;
        Some(ConnGuard {
            open: self.open.clone(),
            peer,
        })
    }

    /// The next connection for the HTTP server.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            tokio::select! {
                Some(handed) = self.rx.recv() => return handed,
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        stream.set_nodelay(true).ok();
                        let Some(guard) = self.admit(peer.ip().to_canonical()) else {
                            refuse_busy(stream, peer, self.tls.is_none());
                            continue;
                        };
                        if let Some(acceptor) = &self.tls {
                            tokio::spawn(handshake(acceptor.clone(), stream, peer, guard, self.tx.clone()));
                        } else if self.fast_path {
                            tokio::spawn(connection(stream, peer, guard, self.head_timeout, self.app.clone(), self.tx.clone()));
                        } else {
                            let io = Io::Plain { prefix: Bytes::new(), stream };
                            return (Conn { io, _guard: guard }, peer);
                        }
                    }
                    Err(e) => {
                        // Per-connection errors are the client's; anything else (EMFILE) gets
                        // a pause rather than a spin.
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::ConnectionReset
                        ) {
                            tracing::error!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                },
            }
        }
    }
}

/// A connection over the limits: closed at once, with a 503 on a plain listener (written
/// without waiting: a client that does not read it just loses it).
fn refuse_busy(stream: TcpStream, peer: SocketAddr, plain: bool) {
    tracing::debug!(%peer, "connection refused: too many open connections");
    if plain {
        const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
            content-length: 35\r\nconnection: close\r\nretry-after: 1\r\n\r\n\
            too many connections: retry later\n";
        stream.try_write(BUSY).ok();
    }
}

/// One TLS handshake, bounded in time, beside the accept loop (a slow client holds up no one).
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    to: mpsc::Sender<(Conn, SocketAddr)>,
) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let conn = Conn {
                io: Io::Tls(Box::new(tls)),
                _guard: guard,
            };
            to.send((conn, peer)).await.ok();
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
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
    (rest != netboot::SCRIPT_NAME.as_bytes()).then_some((head, rest))
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
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    head_timeout: Duration,
    app: App,
    handoff: mpsc::Sender<(Conn, SocketAddr)>,
) {
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
        if !is_file {
            hand_off(&handoff, buf, stream, peer, guard).await;
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
            hand_off(&handoff, buf, stream, peer, guard).await;
            return;
        };
        let served = serve_one(&mut stream, peer, &app, &buf[..head_len])
            .instrument(tracing::info_span!("http", %peer))
            .await;
        match served {
            Ok(Next::KeepAlive) => buf.advance(head_len),
            Ok(Next::HandOff) => {
                hand_off(&handoff, buf, stream, peer, guard).await;
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

async fn serve_one(
    stream: &mut TcpStream,
    peer: SocketAddr,
    app: &App,
    head: &[u8],
) -> std::io::Result<Next> {
    let mut raw_headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut raw_headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
        return Ok(Next::HandOff);
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Ok(Next::HandOff);
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
    // A request with a body is unusual for GET; axum knows how to read (and ignore) it.
    if headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        return Ok(Next::HandOff);
    }
    let Some((is_head, raw_path)) =
        file_request(format!("{method} {target}").as_bytes()).map(|(h, p)| (h, p.to_vec()))
    else {
        return Ok(Next::HandOff);
    };
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
    let started = Instant::now();

    let Some(path) = percent_decode(&raw_path) else {
        let text = "the path is not valid percent-encoded UTF-8\n";
        write_head(
            stream,
            StatusCode::BAD_REQUEST,
            &text_headers(text.len()),
            keep_alive,
        )
        .await?;
        stream.write_all(text.as_bytes()).await?;
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
            write_head(stream, status, &text_headers(text.len()), keep_alive).await?;
            if !is_head {
                stream.write_all(text.as_bytes()).await?;
            }
            return Ok(if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            });
        }
    };
    let plan = plan_file(&meta, &headers)?;
    write_head(stream, plan.status, &plan.headers, keep_alive).await?;
    let mut sent = 0;
    if let (Some((start, count)), false) = (plan.body, is_head) {
        sent = send_file(stream, &file, start, count).await?;
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

async fn write_head(
    stream: &mut TcpStream,
    status: StatusCode,
    headers: &HeaderMap,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    out.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// `count` bytes of `file` from `start`, page cache to socket. Returns the bytes sent; an
/// error if the file shrank (the connection is then closed: the client sees the short body).
async fn send_file(
    stream: &mut TcpStream,
    file: &std::fs::File,
    start: u64,
    count: u64,
) -> std::io::Result<u64> {
    let mut off = start;
    let end = start + count;
    while off < end {
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
    Ok(count)
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
}
