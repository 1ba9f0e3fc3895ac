//! `plinth image add|list|show|rm`: the boot image catalog.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use plinth_client::query::ImageUpload;
use plinth_types::api::{Image, ImageKind, ImageRegister};
use sha2::Digest;

use super::Api;
use super::output::{Output, table};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Add an image: register a file already under the images root (--path), or upload one
    /// (--file; streamed, checked against its SHA-256 on the server). A qcow2 disk image is
    /// uploaded as it is and converted to raw on the server (stored as `<path>.raw`).
    Add {
        name: String,
        /// ipxe, kernel, initrd, rootfs, disk-image or firmware (then `plinth firmware
        /// describe` says what it installs).
        #[arg(long)]
        kind: String,
        /// x86_64 (default), aarch64 or any.
        #[arg(long)]
        arch: Option<String>,
        /// A path relative to the server's images root (register), or with --file, where to
        /// put the upload (default `uploads/<name>`).
        #[arg(long)]
        path: Option<String>,
        /// A local file to upload.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The expected SHA-256; with --file it is computed when not given.
        #[arg(long)]
        sha256: Option<String>,
        /// A disk image's firmware: bios, uefi or both.
        #[arg(long)]
        firmware: Option<String>,
    },
    /// List images.
    List,
    /// Show one image.
    Show { name: String },
    /// Delete an image nothing boots (an uploaded image's file goes with it).
    Rm { name: String },
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress line on stderr (only when it is a terminal), at most five times a second.
struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            start: now,
            last: now - Duration::from_secs(1),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.tty && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let rate = self.done as f64 / self.start.elapsed().as_secs_f64().max(0.001);
        let width = 30;
        let filled = ((pct / 100.0) * width as f64) as usize;
        eprint!(
            "\r{:<9} [{}{}] {pct:5.1}%  {} / {}  {}/s   ",
            self.what,
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            human(self.done),
            human(self.total),
            human(rate as u64)
        );
        std::io::stderr().flush().ok();
    }

    fn finish(&self) {
        if self.tty {
            self.draw();
            eprintln!();
        }
    }
}

async fn sha256_of(path: &Path, size: u64) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut p = Progress::new("hashing", size);
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        p.add(n as u64);
    }
    p.finish();
    Ok(hex::encode(h.finalize()))
}

fn print_image(api: &Api, i: &Image) -> anyhow::Result<()> {
    if api.output == Output::Json {
        return api.print_json(i);
    }
    let kv = |k: &str, v: String| println!("{k:<11} {v}");
    kv("name", i.name.clone());
    kv("kind", i.kind.as_str().into());
    kv("arch", i.arch.clone());
    kv("path", i.path.clone());
    kv("size", format!("{} ({} bytes)", human(i.size), i.size));
    kv("sha256", i.sha256.clone());
    kv("source", i.source.clone());
    if let Some(f) = &i.firmware {
        kv("firmware", f.clone());
    }
    if let Some(r) = i.raw_size {
        kv("written size", format!("{} ({r} bytes)", human(r)));
    }
    if let Some(h) = &i.raw_sha256 {
        kv("written sha256", h.clone());
    }
    kv(
        "created",
        format!(
            "{} by {}",
            i.created_at.format("%Y-%m-%d %H:%M:%S"),
            i.created_by
        ),
    );
    Ok(())
}

pub async fn run(api: &Api, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Add {
            name,
            kind,
            arch,
            path,
            file,
            sha256,
            firmware,
        } => {
            let kind: ImageKind = kind.parse().map_err(anyhow::Error::msg)?;
            let image: Image = match file {
                None => {
                    let Some(path) = path else {
                        bail!(
                            "give --path (a file under the images root) or --file (a file to upload)"
                        );
                    };
                    let req = ImageRegister {
                        name,
                        kind,
                        arch,
                        path,
                        sha256,
                        firmware,
                    };
                    api.client.register_image(&req).await?
                }
                Some(file) => upload(api, &name, kind, arch, path, &file, sha256, firmware).await?,
            };
            print_image(api, &image)
        }
        ImageCommand::List => {
            let list = api.client.list_images().await?;
            if api.output == Output::Json {
                return api.print_json(&list);
            }
            table(
                &["NAME", "KIND", "ARCH", "SIZE", "SHA256", "PATH"],
                list.iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.kind.as_str().into(),
                            i.arch.clone(),
                            human(i.size),
                            i.sha256[..12].to_owned(),
                            i.path.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        ImageCommand::Show { name } => {
            let i = api.client.get_image(&name).await?;
            print_image(api, &i)
        }
        ImageCommand::Rm { name } => {
            let i = api.client.delete_image(&name).await?;
            if api.output == Output::Json {
                return api.print_json(&i);
            }
            println!("image {} deleted", i.name);
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    api: &Api,
    name: &str,
    kind: ImageKind,
    arch: Option<String>,
    path: Option<String>,
    file: &Path,
    sha256: Option<String>,
    firmware: Option<String>,
) -> anyhow::Result<Image> {
    use futures::StreamExt;
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", file.display());
    }
    let size = meta.len();
    let sha256 = match sha256 {
        Some(s) => s,
        None => sha256_of(file, size).await?,
    };
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new("uploading", size)));
    let p = progress.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
        if let Ok(c) = chunk
            && let Ok(mut p) = p.lock()
        {
            p.add(c.len() as u64);
        }
    });
    let upload = ImageUpload {
        kind,
        arch,
        path,
        sha256,
        firmware,
    };
    let res = api
        .client
        .upload_image(name, &upload, reqwest::Body::wrap_stream(stream), size)
        .await;
    if let Ok(p) = progress.lock() {
        p.finish();
    }
    Ok(res?)
}
