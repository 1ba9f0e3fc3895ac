//! The TFTP server's content: files under the images root, through plinth-core's resolver
//! (the same confinement the HTTP boot endpoint uses), and `boot.ipxe`, a first-stage iPXE
//! script generated on request that chains to the HTTP boot script.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use plinth_core::App;
use plinth_core::files::{self, Refusal as Why};
use plinth_tftp::packet::ErrorCode;
use plinth_tftp::server::{Content, Refusal, Source};
use plinth_types::netboot::{self, ScriptQuery};

/// The generated first-stage script's name.
pub const CHAIN_SCRIPT: &str = "boot.ipxe";

pub struct ImagesSource {
    pub app: App,
    pub root: PathBuf,
    /// Base URL of the HTTP boot script, if plinth knows how machines reach it.
    pub http_base: Option<String>,
}

#[derive(serde::Serialize)]
struct ChainContext<'a> {
    script_url: &'a str,
    retry_secs: u32,
}

/// Some firmware asks for `/name`; the root is the only place plinth serves from, so a single
/// leading slash means the same file (`..` and the rest are still refused).
fn strip_root(name: &str) -> &str {
    name.strip_prefix('/')
        .filter(|n| !n.starts_with('/'))
        .unwrap_or(name)
}

impl Source for ImagesSource {
    fn transferred(&self, name: &str, peer: SocketAddr, sent: u64, size: u64, complete: bool) {
        // What the machine last fetched, for its timeouts (plinth-core's `sightings`). A
        // transfer with nothing acknowledged proves nothing of its address (a forged request,
        // or UEFI firmware asking only for the size): not noted.
        if sent == 0 && !complete {
            return;
        }
        self.app.fetch_log().record(
            peer.ip(),
            plinth_core::sightings::Protocol::Tftp,
            strip_root(name),
            sent,
            size,
            complete,
        );
    }

    async fn open(&self, name: &str, peer: SocketAddr) -> Result<Content, Refusal> {
        let name = strip_root(name);
        if name == CHAIN_SCRIPT {
            let Some(base) = &self.http_base else {
                return Err(Refusal::new(
                    ErrorCode::FileNotFound,
                    "boot.ipxe needs boot.public_url (or dhcp.boot_server) to be configured",
                ));
            };
            let url = netboot::script_url(base, ScriptQuery::Full);
            let env = self.app.boot_env();
            let ctx = ChainContext {
                script_url: &url,
                retry_secs: env.settings.retry_secs,
            };
            return match env.templates.render("chain.ipxe", &ctx) {
                Ok(text) => Ok(Content::Bytes(text.into_bytes())),
                Err(e) => {
                    tracing::error!(%peer, template = %e.template, message = %e.message, "a boot template failed to render");
                    Err(Refusal::new(
                        ErrorCode::NotDefined,
                        "boot script unavailable",
                    ))
                }
            };
        }
        let root = self.root.clone();
        let owned = name.to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            let path = files::resolve(&root, &owned)?;
            let file = std::fs::File::open(&path).map_err(|_| Why::Unreadable)?;
            let size = file.metadata().map_err(|_| Why::Unreadable)?.len();
            Ok::<_, Why>(Content::File { file, size })
        })
        .await
        .map_err(|_| Refusal::new(ErrorCode::NotDefined, "internal error"))?;
        opened.map_err(|why| {
            let code = match why {
                Why::NotFound | Why::NotAFile | Why::Empty => ErrorCode::FileNotFound,
                Why::Unreadable => ErrorCode::AccessViolation,
                _ => ErrorCode::AccessViolation,
            };
            if why.is_hostile() {
                Refusal::hostile(code, why.to_string())
            } else {
                Refusal::new(code, why.to_string())
            }
        })
    }
}

pub fn source(app: App, root: PathBuf, http_base: Option<String>) -> Arc<ImagesSource> {
    Arc::new(ImagesSource {
        app,
        root,
        http_base,
    })
}

/// plinth-tftp's counters in `/metrics`.
pub struct TftpMetrics(pub std::sync::Arc<plinth_tftp::Counters>);

impl plinth_core::metrics::Source for TftpMetrics {
    fn render(&self, out: &mut plinth_core::metrics::Exposition) {
        let s = self.0.snapshot();
        for (outcome, v) in [("completed", s.completed), ("failed", s.failed)] {
            out.counter(
                "plinth_tftp_transfers_total",
                "TFTP transfers that ended, by outcome.",
                &[("outcome", outcome)],
                v,
            );
        }
        for (reason, v) in [
            ("refused", s.refused),
            ("busy", s.busy),
            ("unanswered", s.unanswered),
        ] {
            out.counter(
                "plinth_tftp_requests_not_served_total",
                "TFTP read requests not served: refused (a missing file, a write, a bad request), busy (an address with too many transfers), unanswered (the wait queue full or a repeat).",
                &[("reason", reason)],
                v,
            );
        }
        out.counter(
            "plinth_tftp_requests_waited_total",
            "TFTP requests that found every transfer slot taken and waited for one.",
            &[],
            s.waited,
        );
        out.counter(
            "plinth_tftp_sent_bytes_total",
            "Payload bytes of completed TFTP transfers.",
            &[],
            s.bytes,
        );
        out.counter(
            "plinth_tftp_retransmissions_total",
            "TFTP DATA and OACK packets sent again after a timeout.",
            &[],
            s.retransmits,
        );
        out.gauge(
            "plinth_tftp_transfers_active",
            "TFTP transfers in progress.",
            &[],
            s.active as f64,
        );
    }
}
