//! A standalone read-only TFTP server over a directory, for the client tests and the benchmark.
//!
//!     tftpd ROOT LISTEN [MAX_BLKSIZE [MAX_WINDOWSIZE]]
//!
//! Names are resolved under ROOT by plinth-core's resolver (the one `plinth serve` uses), and
//! `boot.ipxe` is generated per request (`Content::Bytes`): a first-stage iPXE script chaining
//! to `http://<LISTEN's address>/boot/ipxe`. Logs go to stderr (`RUST_LOG`, default info); on
//! SIGTERM or SIGINT it stops and prints its counters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use plinth_core::files;
use plinth_tftp::packet::ErrorCode;
use plinth_tftp::{Config, Content, Refusal, Server, Source};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

struct Dir {
    root: PathBuf,
    /// The host of the generated script's URL.
    http: String,
}

fn refusal(r: files::Refusal) -> Refusal {
    let code = match r {
        files::Refusal::NotFound | files::Refusal::NotAFile => ErrorCode::FileNotFound,
        _ => ErrorCode::AccessViolation,
    };
    Refusal {
        code,
        // Its Display is written to be safe to send to the client.
        message: r.to_string(),
        hostile: r.is_hostile(),
    }
}

impl Source for Dir {
    async fn open(&self, name: &str, _peer: SocketAddr) -> Result<Content, Refusal> {
        if name == "boot.ipxe" {
            let script = format!(
                "#!ipxe\nchain http://{}/boot/ipxe?mac=${{net0/mac}}\n",
                self.http
            );
            return Ok(Content::Bytes(script.into_bytes()));
        }
        let root = self.root.clone();
        let name = name.to_owned();
        // The resolver and open(2) touch the file system: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            let path = files::resolve(&root, &name).map_err(refusal)?;
            let unreadable = |_| refusal(files::Refusal::Unreadable);
            let file = std::fs::File::open(&path).map_err(unreadable)?;
            let size = file.metadata().map_err(unreadable)?.len();
            Ok(Content::File { file, size })
        })
        .await
        .map_err(|_| Refusal::new(ErrorCode::NotDefined, "internal error"))?
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 4 {
        bail!("usage: tftpd ROOT LISTEN [MAX_BLKSIZE [MAX_WINDOWSIZE]]");
    }
    let root = PathBuf::from(&args[0]);
    let listen: SocketAddr = args[1].parse().context("LISTEN: an address and port")?;
    let mut cfg = Config {
        listen,
        ..Config::default()
    };
    if let Some(b) = args.get(2) {
        cfg.max_blksize = b.parse().context("MAX_BLKSIZE")?;
    }
    if let Some(w) = args.get(3) {
        cfg.max_windowsize = w.parse().context("MAX_WINDOWSIZE")?;
    }
    let source = Arc::new(Dir {
        root,
        http: listen.ip().to_string(),
    });
    tokio::runtime::Runtime::new()?.block_on(async move {
        let server = Server::bind(cfg, source)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let counters = server.counters();
        let cancel = CancellationToken::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        });
        server.serve(cancel).await?;
        eprintln!("counters: {:?}", counters.snapshot());
        Ok(())
    })
}
