//! A machine's serial console over the API's WebSocket (`GET /api/v1/machines/{id}/console`,
//! docs/api.md "Consoles"): [`Client::console`](crate::Client::console) opens it, [`Console`]
//! sends bytes and breaks and gives what plinth says as [`ConsoleMessage`]s.
//!
//! The socket is opened here rather than through reqwest (which does not upgrade): plain TCP,
//! or rustls on ring with the same trust as the client's HTTP calls (the built-in roots and the
//! client's extra CAs), then tungstenite's handshake with the bearer token. A refused handshake
//! becomes the same [`Error`] as any other call (the API's error body when there is one).

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{Error, decode};

/// The most console input one message may carry (the API's limit).
pub const MAX_INPUT: usize = 4096;
/// The console input the API accepts per viewer, in bytes a second; more is refused with an
/// `error` message (bursts of 32 KiB are allowed).
pub const INPUT_RATE: usize = 8192;

/// What plinth says on a console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMessage {
    /// Bytes the machine's console printed, as printed.
    Output(Vec<u8>),
    /// The session's state (`connecting`, `open`, `reconnecting`, `unavailable`, `elsewhere`)
    /// and why, when plinth says.
    Status {
        state: String,
        reason: Option<String>,
    },
    /// Who is attached now (on every change).
    Viewers(Vec<String>),
    /// This viewer fell behind: this many chunks of output were skipped.
    Lagged(u64),
    /// Input that plinth refused (too much at once, too fast, the console closed).
    Error { code: String, message: String },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Text {
    Status {
        state: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Viewers {
        viewers: Vec<String>,
    },
    Lagged {
        skipped: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

/// Whether a text message is of a kind [`Text`] knows.
fn known(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        r#type: String,
    }
    serde_json::from_str::<Kind>(text)
        .is_ok_and(|k| matches!(k.r#type.as_str(), "status" | "viewers" | "lagged" | "error"))
}

/// The socket under the WebSocket: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An attached console. Dropping it closes the socket (which detaches); [`Console::close`]
/// says goodbye first.
pub struct Console {
    ws: WebSocketStream<Box<dyn Io>>,
    url: String,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("url", &self.url).finish()
    }
}

/// The connection's parameters, taken from the client.
pub(crate) struct Dial<'a> {
    pub base: &'a str,
    pub token: Option<&'a str>,
    pub roots: &'a [CertificateDer<'static>],
    pub connect_timeout: Duration,
}

impl Console {
    /// Opens the console at `path` (under the client's base URL).
    pub(crate) async fn open(dial: Dial<'_>, path: &str) -> Result<Console, Error> {
        let transport = |source: Box<dyn std::error::Error + Send + Sync>| Error::Transport {
            base: dial.base.to_owned(),
            source,
        };
        let url = format!("{}{path}", dial.base);
        let (ws_url, tls) = if let Some(rest) = url.strip_prefix("https://") {
            (format!("wss://{rest}"), true)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (format!("ws://{rest}"), false)
        } else {
            return Err(Error::Config(format!(
                "{}: the API URL must start with http:// or https://",
                dial.base
            )));
        };
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Config(format!("{url}: {e}")))?;
        if let Some(t) = dial.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        let host = req
            .uri()
            .host()
            .ok_or_else(|| Error::Config(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = req.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::time::timeout(
            dial.connect_timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| transport("connecting timed out".into()))?
        .map_err(|e| transport(Box::new(e)))?;
        tcp.set_nodelay(true).ok();
        let stream: Box<dyn Io> = if tls {
            let config = tls_config(dial.roots)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| Error::Config(format!("{url}: {e}")))?;
            let tls = tokio::time::timeout(
                dial.connect_timeout,
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
            )
            .await
            .map_err(|_| transport("the TLS handshake timed out".into()))?
            .map_err(|e| transport(Box::new(e)))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(Console { ws, url }),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let body = resp.body().as_deref().unwrap_or_default();
                Err(decode::<()>(
                    status.as_u16(),
                    status.canonical_reason().unwrap_or(""),
                    body,
                    &url,
                )
                .err()
                .unwrap_or_else(|| {
                    Error::Config(format!("{url}: unexpected answer {status} to the upgrade"))
                }))
            }
            Err(e) => Err(transport(Box::new(e))),
        }
    }

    /// Sends console input, in messages of at most [`MAX_INPUT`] bytes. The caller paces it
    /// (at most [`INPUT_RATE`] bytes a second): what comes faster is refused by plinth with a
    /// [`ConsoleMessage::Error`], not queued.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        for chunk in bytes.chunks(MAX_INPUT) {
            self.ws
                .send(Message::Binary(chunk.to_vec().into()))
                .await
                .map_err(|e| self.broken(e))?;
        }
        Ok(())
    }

    /// Sends a serial break.
    pub async fn send_break(&mut self) -> Result<(), Error> {
        self.ws
            .send(Message::Text(r#"{"type":"break"}"#.into()))
            .await
            .map_err(|e| self.broken(e))
    }

    /// The next thing plinth says; `None` once plinth closed the console. Cancel-safe (a
    /// `select!` branch loses nothing).
    pub async fn next(&mut self) -> Result<Option<ConsoleMessage>, Error> {
        loop {
            let m = match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.broken(e)),
                Some(Ok(m)) => m,
            };
            match m {
                Message::Binary(b) => return Ok(Some(ConsoleMessage::Output(b.to_vec()))),
                Message::Text(t) => {
                    let t: Text = match serde_json::from_str(&t) {
                        Ok(t) => t,
                        // a kind of message this client does not know yet (a newer plinth)
                        Err(_) if !known(&t) => continue,
                        Err(source) => {
                            return Err(Error::Decode {
                                url: self.url.clone(),
                                source,
                            });
                        }
                    };
                    return Ok(Some(match t {
                        Text::Status { state, reason } => ConsoleMessage::Status { state, reason },
                        Text::Viewers { viewers } => ConsoleMessage::Viewers(viewers),
                        Text::Lagged { skipped } => ConsoleMessage::Lagged(skipped),
                        Text::Error { code, message } => ConsoleMessage::Error { code, message },
                    }));
                }
                Message::Close(_) => return Ok(None),
                // pings are answered by tungstenite
                _ => {}
            }
        }
    }

    /// Leaves: a close message, then the socket is dropped.
    pub async fn close(mut self) {
        self.ws.close(None).await.ok();
    }

    fn broken(&self, e: tungstenite::Error) -> Error {
        Error::Body {
            url: self.url.clone(),
            source: Box::new(e),
        }
    }
}

/// rustls on ring (the workspace's provider), trusting the built-in roots and `extra`.
fn tls_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| Error::Config(format!("a CA certificate: {e}")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates of a PEM bundle, for [`tls_config`].
pub(crate) fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("a PEM certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plinths_text_messages_decode() {
        let t: Text =
            serde_json::from_str(r#"{"type":"status","state":"unavailable","reason":"no SOL"}"#)
                .unwrap();
        assert!(
            matches!(t, Text::Status { state, reason } if state == "unavailable" && reason.as_deref() == Some("no SOL"))
        );
        let t: Text = serde_json::from_str(r#"{"type":"status","state":"open"}"#).unwrap();
        assert!(matches!(t, Text::Status { reason: None, .. }));
        let t: Text =
            serde_json::from_str(r#"{"type":"viewers","viewers":["ops","ui:tech"]}"#).unwrap();
        assert!(matches!(t, Text::Viewers { viewers } if viewers == ["ops", "ui:tech"]));
        let t: Text = serde_json::from_str(r#"{"type":"lagged","skipped":3}"#).unwrap();
        assert!(matches!(t, Text::Lagged { skipped: 3 }));
        let t: Text =
            serde_json::from_str(r#"{"type":"error","code":"input_rate","message":"slow"}"#)
                .unwrap();
        assert!(matches!(t, Text::Error { code, .. } if code == "input_rate"));
        assert!(serde_json::from_str::<Text>(r#"{"type":"other"}"#).is_err());
        assert!(!known(r#"{"type":"other"}"#));
        assert!(known(r#"{"type":"lagged","skipped":"x"}"#));
    }

    #[test]
    fn a_pem_bundle_gives_its_certificates_and_garbage_none() {
        assert!(pem_certs(b"not a pem").unwrap().is_empty());
        let e = pem_certs(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        assert!(e.is_err());
    }
}
