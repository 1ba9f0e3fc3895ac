//! The HTTP listener: it accepts TCP connections up to its limits (in all, and per peer
//! address), does TLS handshakes beside the accept loop, and yields connections to the HTTP
//! server (hyper, with axum's router) in lib.rs. On plain connections of a listener that
//! serves `/boot/`, it first gives each connection to [`sendfile`], which answers requests for
//! image files itself and hands the rest back here for the HTTP server.
//!
//! The listener sits below the router: it and `sendfile` use `file_plan` (how a file request
//! is answered, shared with the axum handler in `boot`) and no handler module. `boot` and
//! lib.rs use its `ClientAddr`, the `ConnectInfo` each connection carries.

pub(crate) mod sendfile;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use plinth_core::App;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a client may take to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request head, counted from when plinth starts waiting
/// for it and not restarted by each byte: a slow client cannot hold a connection open by
/// dribbling, and a kept-alive connection with nothing to ask is closed after as long.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(20);

/// A script request as the listener hands it to [`ScriptHandler`].
pub struct ScriptCall {
    pub peer: SocketAddr,
    pub uri: axum::http::Uri,
    pub headers: axum::http::HeaderMap,
}

/// How the listener answers an iPXE script request on its own path: the `/boot/ipxe`
/// handler's answer, called directly rather than through the router (lib.rs supplies `boot`'s,
/// so that the listener needs no handler module). The router's layers add nothing to a script
/// on a plain connection (no TLS, no forwarded scheme) and cost a fifth of the path's CPU.
pub type ScriptHandler = std::sync::Arc<
    dyn Fn(
            ScriptCall,
        ) -> Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>
        + Send
        + Sync,
>;

/// The client's address and whether its connection is TLS, as the handlers' `ConnectInfo`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// What a listener's own HTTP path did, for the operator (and the tests that check which path
/// answered).
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Boot files sent with sendfile(2) by the listener itself.
    pub files: std::sync::atomic::AtomicU64,
    /// iPXE scripts answered by the listener itself (the script handler), so that the files
    /// iPXE asks for next on the same connection still go out with sendfile.
    pub scripts: std::sync::atomic::AtomicU64,
    /// Connections handed to the HTTP server for a request the listener does not answer.
    pub handed_off: std::sync::atomic::AtomicU64,
}

/// A listener's counters in `/metrics`, labelled with its address.
pub(crate) struct ListenerMetrics {
    pub listener: String,
    pub counters: std::sync::Arc<ListenerCounters>,
}

impl plinth_core::metrics::Source for ListenerMetrics {
    fn render(&self, out: &mut plinth_core::metrics::Exposition) {
        use std::sync::atomic::Ordering::Relaxed;
        let l = [("listener", self.listener.as_str())];
        out.counter(
            "plinth_http_boot_files_sent_total",
            "Boot files sent with sendfile by the listener itself.",
            &l,
            self.counters.files.load(Relaxed),
        );
        out.counter(
            "plinth_http_ipxe_scripts_total",
            "iPXE scripts answered by the listener itself.",
            &l,
            self.counters.scripts.load(Relaxed),
        );
        out.counter(
            "plinth_http_connections_handed_off_total",
            "Connections the listener handed to the HTTP server for other requests.",
            &l,
            self.counters.handed_off.load(Relaxed),
        );
    }
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
    /// Plain connections of a listener serving `/boot/`: files sent with sendfile here, and
    /// iPXE scripts answered by this handler.
    fast_path: Option<ScriptHandler>,
    counters: std::sync::Arc<ListenerCounters>,
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
        fast_path: Option<ScriptHandler>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: ConnLimits,
        head_timeout: Duration,
        counters: std::sync::Arc<ListenerCounters>,
    ) -> BootListener {
        let (tx, rx) = mpsc::channel(256);
        BootListener {
            tcp,
            app,
            fast_path: fast_path.filter(|_| tls.is_none()),
            counters,
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
                        } else if let Some(script) = &self.fast_path {
                            let on = sendfile::On {
                                app: self.app.clone(),
                                script: script.clone(),
                                counters: self.counters.clone(),
                                handoff: self.tx.clone(),
                            };
                            tokio::spawn(sendfile::connection(stream, peer, guard, self.head_timeout, on));
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
