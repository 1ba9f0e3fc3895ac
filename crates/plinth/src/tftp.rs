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

impl Source for ImagesSource {
    async fn open(&self, name: &str, peer: SocketAddr) -> Result<Content, Refusal> {
        // Some firmware asks for `/name`; the root is the only place plinth serves from, so a
        // single leading slash means the same file (`..` and the rest are still refused).
        let name = name
            .strip_prefix('/')
            .filter(|n| !n.starts_with('/'))
            .unwrap_or(name);
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
