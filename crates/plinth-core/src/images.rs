//! The image catalog: boot images known by name, each a file under the images root.
//! Registering hashes a file already there; uploading streams the body to a temporary file
//! beside its destination, hashing as it goes, and renames it into place only once the
//! checksum holds, so a failed upload leaves nothing behind.
//!
//! Disk images are served as they will be written: raw, or raw compressed with gzip or zstd.
//! A qcow2 upload is converted to raw once, by `qemu-img`, after checks that it reads no file
//! but itself (no backing or external data file) and fits on the images root; a qcow2 file is
//! never registered in place.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use plinth_types::Error;
use plinth_types::api::{Image, ImageKind, ImageRegister};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, files};

/// What an upload is registered as.
#[derive(Debug, Clone)]
pub struct UploadMeta {
    pub name: String,
    pub kind: ImageKind,
    pub arch: Option<String>,
    /// Relative to the images root; default `uploads/<name>`. A qcow2 disk image is stored
    /// converted, as this path with `.raw` instead of `.qcow2` (or `.raw` added).
    pub path: Option<String>,
    pub sha256: Option<String>,
    /// For a disk image: `bios`, `uefi` or `both`.
    pub firmware: Option<String>,
    /// The body's length, when the client said (Content-Length): checked before writing.
    pub declared_size: Option<u64>,
}

fn image(r: plinth_db::images::ImageRow) -> Result<Image> {
    Ok(Image {
        id: r.id,
        kind: r.kind.parse().map_err(|_| Error::internal())?,
        name: r.name,
        arch: r.arch,
        path: r.path,
        size: u64::try_from(r.size).map_err(|_| Error::internal())?,
        sha256: r.sha256,
        source: r.source,
        created_by: r.created_by,
        created_at: r.created_at,
        firmware: r.firmware,
        raw_size: r.raw_size.and_then(|n| u64::try_from(n).ok()),
        raw_sha256: r.raw_sha256,
    })
}

fn check_firmware(kind: ImageKind, fw: Option<&str>) -> Result<Option<String>> {
    match fw {
        None => Ok(None),
        Some(f) if kind != ImageKind::DiskImage => Err(Error::invalid(
            "invalid_firmware",
            format!("firmware {f:?} is for disk images only"),
        )),
        Some(f @ ("bios" | "uefi" | "both")) => Ok(Some(f.to_owned())),
        Some(f) => Err(Error::invalid(
            "invalid_firmware",
            format!("firmware {f:?}: bios, uefi or both"),
        )),
    }
}

/// A disk image as written, its size and SHA-256 (hex): for an uncompressed image, the file
/// itself (`sha` and `size`, already known: not read again); a compressed one (gzip, zstd) is
/// decompressed once, counting and hashing. An image that does not decompress is refused.
async fn raw_info(path: PathBuf, sha: &str, size: u64, max_raw: u64) -> Result<(u64, String)> {
    let name = path.to_string_lossy();
    let gzip = name.ends_with(".gz");
    let zstd = name.ends_with(".zst") || name.ends_with(".zstd");
    if !gzip && !zstd {
        return Ok((size, sha.to_owned()));
    }
    tokio::task::spawn_blocking(move || -> Result<(u64, String)> {
        let bad = |e: std::io::Error| {
            Error::invalid(
                "corrupt_image",
                format!("the image does not decompress: {e}"),
            )
        };
        let file = std::fs::File::open(&path).map_err(|e| {
            tracing::error!(error = %e, "opening an image");
            Error::internal()
        })?;
        let file = std::io::BufReader::new(file);
        let mut h = Sha256::new();
        // Read one byte past the bound: a decompression bomb stops there.
        let n = if gzip {
            let mut d = std::io::Read::take(
                flate2::read::MultiGzDecoder::new(file),
                max_raw.saturating_add(1),
            );
            std::io::copy(&mut d, &mut h).map_err(bad)?
        } else {
            let d = zstd::stream::read::Decoder::new(file).map_err(bad)?;
            std::io::copy(
                &mut std::io::Read::take(d, max_raw.saturating_add(1)),
                &mut h,
            )
            .map_err(bad)?
        };
        if n > max_raw {
            return Err(Error::invalid(
                "image_too_large",
                format!(
                    "the image decompresses to more than {max_raw} bytes (images.max_raw_bytes)"
                ),
            ));
        }
        Ok((n, hex::encode(h.finalize())))
    })
    .await
    .map_err(|_| Error::internal())?
}

/// The first bytes of every qcow2 file.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// How long `qemu-img info` may take (it reads headers and tables only).
const QEMU_INFO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `qemu-img convert` may take (it writes the whole disk).
const QEMU_CONVERT_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

fn is_qcow2_name(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".qcow2")
}

/// Where a converted qcow2 goes: `.qcow2` becomes `.raw`, any other name gets `.raw` added
/// (unless it has it already).
fn raw_path(path: &str) -> String {
    let stem = if is_qcow2_name(path) {
        &path[..path.len() - ".qcow2".len()]
    } else {
        path
    };
    if stem.ends_with(".raw") {
        stem.to_owned()
    } else {
        format!("{stem}.raw")
    }
}

/// Whether a file starts with the qcow2 magic (unreadable: no; hashing reports that).
async fn has_qcow2_magic(path: &Path) -> bool {
    let mut head = [0u8; 4];
    match tokio::fs::File::open(path).await {
        Ok(mut f) => f.read_exact(&mut head).await.is_ok() && head == QCOW2_MAGIC,
        Err(_) => false,
    }
}

/// The `qemu-img` to run: `$PLINTH_QEMU_IMG`, or `qemu-img` on the PATH.
fn qemu_img_program() -> std::ffi::OsString {
    std::env::var_os("PLINTH_QEMU_IMG").unwrap_or_else(|| "qemu-img".into())
}

/// What one qemu-img run may use: seconds of CPU and bytes of address space (a crafted qcow2
/// must not make it spin or swell; `prlimit` from util-linux sets them before qemu-img runs).
#[derive(Debug, Clone, Copy)]
struct RunLimits {
    cpu_secs: u64,
    memory: u64,
}

const INFO_LIMITS: RunLimits = RunLimits {
    cpu_secs: 30,
    memory: 1 << 30,
};
const CONVERT_LIMITS: RunLimits = RunLimits {
    cpu_secs: 7200,
    memory: 2 << 30,
};

/// `program` as found on the PATH (or as given, when it names a path), if it exists.
fn find_program(program: &OsStr) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|c| c.is_file())
    })
}

/// Runs `program` (qemu-img) with `args` (no shell, no stdin) under `limits`, killed if it
/// outlives `timeout` or the request goes away. Its complaint goes to the client with the
/// server's paths replaced by `names`. Returns its standard output.
async fn qemu_img(
    program: &OsStr,
    args: &[&OsStr],
    timeout: Duration,
    limits: RunLimits,
    names: &[(&Path, &str)],
) -> Result<Vec<u8>> {
    let Some(found) = find_program(program) else {
        return Err(Error::unavailable(format!(
            "qemu-img ({}) is not installed, and qcow2 images need it: install qemu-utils \
             (or set PLINTH_QEMU_IMG to its path)",
            program.to_string_lossy()
        )));
    };
    // prlimit sets the limits on itself and then executes the program in its place.
    let child = tokio::process::Command::new("prlimit")
        .arg(format!("--cpu={}", limits.cpu_secs))
        .arg(format!("--as={}", limits.memory))
        .arg("--")
        .arg(&found)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::unavailable(
                    "prlimit is not installed, and qemu-img runs under it: install util-linux",
                )
            } else {
                tracing::error!(error = %e, program = %program.to_string_lossy(), "running qemu-img");
                Error::internal()
            }
        })?;
    // On timeout the child is dropped, and so killed.
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            tracing::warn!(?args, "qemu-img timed out");
            Error::unavailable(format!(
                "qemu-img did not finish within {} s; the image was not added",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "waiting for qemu-img");
            Error::internal()
        })?;
    {
        use std::os::unix::process::ExitStatusExt;
        // SIGXCPU at the CPU limit (SIGKILL past its hard limit).
        if matches!(out.status.signal(), Some(24 | 9)) {
            tracing::warn!(?args, status = %out.status, "qemu-img stopped at its CPU limit");
            return Err(Error::invalid(
                "image_limits_exceeded",
                format!(
                    "qemu-img used more than its {} s of CPU time on this image; it was not added",
                    limits.cpu_secs
                ),
            ));
        }
    }
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        for (path, name) in names {
            msg = msg.replace(&*path.to_string_lossy(), name);
        }
        tracing::warn!(status = %out.status, stderr = %msg, "qemu-img failed");
        return Err(Error::invalid(
            "corrupt_image",
            format!("qemu-img cannot read the qcow2 image: {msg}"),
        ));
    }
    Ok(out.stdout)
}

/// Checks what `qemu-img info --output=json` says of a qcow2 image: self-contained (no backing
/// file, which could name any file on this server, and no external data file), not encrypted,
/// not marked corrupt. Returns its virtual size.
fn check_qcow2_info(info: &serde_json::Value) -> Result<u64> {
    let unsupported = |what: &str| {
        Error::invalid(
            "unsupported_image",
            format!(
                "the qcow2 image {what}; only self-contained, unencrypted qcow2 images are converted"
            ),
        )
    };
    let data = info.pointer("/format-specific/data");
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(unsupported("has a backing file"));
    }
    if data.and_then(|d| d.get("data-file")).is_some() {
        return Err(unsupported("has an external data file"));
    }
    if info.get("encrypted").and_then(|v| v.as_bool()) == Some(true)
        || data.and_then(|d| d.get("encrypt")).is_some()
    {
        return Err(unsupported("is encrypted"));
    }
    if data
        .and_then(|d| d.get("corrupt"))
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        return Err(Error::invalid(
            "corrupt_image",
            "the qcow2 image is marked corrupt",
        ));
    }
    info.get("virtual-size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| {
            tracing::warn!(%info, "qemu-img info without a virtual size");
            Error::invalid("corrupt_image", "qemu-img reports no virtual size")
        })
}

/// Bytes free to an unprivileged writer on the file system holding `dir` (`stat -f`: std has
/// no statvfs, and this crate makes no system calls of its own).
async fn free_space(dir: &Path) -> Result<u64> {
    let fail = |what: String| {
        tracing::error!(dir = %dir.display(), "measuring free space: {what}");
        Error::internal()
    };
    let out = tokio::process::Command::new("stat")
        .args([
            OsStr::new("-f"),
            OsStr::new("-c"),
            OsStr::new("%a %S"),
            OsStr::new("--"),
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .map_err(|_| fail("stat -f timed out".into()))?
        .map_err(|e| fail(format!("stat -f: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (out.status.success(), it.next(), it.next()) {
        (true, Some(Ok(blocks)), Some(Ok(bsize))) => Ok(blocks.saturating_mul(bsize)),
        _ => Err(fail(format!(
            "stat -f: {} {text:?} {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

/// Converts the qcow2 image `src` to a new raw file `dest` in `dir` once it passes
/// [`check_qcow2_info`] and its virtual size fits the free space there. The format is always
/// given (`-f qcow2`): qemu-img never guesses. Returns the virtual size.
async fn qcow2_to_raw(src: &Path, dest: &Path, dir: &Path, label: &str) -> Result<u64> {
    let program = qemu_img_program();
    let names = [(src, label), (dest, label)];
    let out = qemu_img(
        &program,
        &[
            OsStr::new("info"),
            OsStr::new("--output=json"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            src.as_os_str(),
        ],
        QEMU_INFO_TIMEOUT,
        INFO_LIMITS,
        &names,
    )
    .await?;
    let info: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        tracing::error!(error = %e, "parsing qemu-img info");
        Error::internal()
    })?;
    let virtual_size = check_qcow2_info(&info)?;
    let free = free_space(dir).await?;
    if virtual_size > free {
        return Err(Error::invalid(
            "image_too_large",
            format!(
                "the qcow2 image's disk is {virtual_size} bytes once raw; the images root has {free} bytes free"
            ),
        ));
    }
    qemu_img(
        &program,
        &[
            OsStr::new("convert"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            OsStr::new("-O"),
            OsStr::new("raw"),
            src.as_os_str(),
            dest.as_os_str(),
        ],
        QEMU_CONVERT_TIMEOUT,
        CONVERT_LIMITS,
        &names,
    )
    .await?;
    Ok(virtual_size)
}

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    /// What `qemu-img info --output=json` might say, checked as an upload's would be: the
    /// virtual size when the image is acceptable.
    pub fn qcow2_info(bytes: &[u8]) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        super::check_qcow2_info(&v).ok()
    }
}

/// A temporary file beside an image's destination, removed when dropped: after an error,
/// a refusal, or the request going away alike (once linked into place, only its temporary
/// name goes).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_image_name",
            "an image name is 1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit",
        ))
    }
}

fn check_arch(arch: Option<&str>) -> Result<&'static str> {
    match arch.unwrap_or("x86_64") {
        "x86_64" => Ok("x86_64"),
        "aarch64" => Ok("aarch64"),
        "any" => Ok("any"),
        other => Err(Error::invalid(
            "invalid_arch",
            format!("arch {other:?} is not x86_64, aarch64 or any"),
        )),
    }
}

fn check_sha(sha: Option<&str>) -> Result<Option<String>> {
    match sha {
        None => Ok(None),
        Some(s) => {
            let s = s.trim().to_ascii_lowercase();
            if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(Some(s))
            } else {
                Err(Error::invalid(
                    "invalid_sha256",
                    "sha256 must be 64 hexadecimal digits",
                ))
            }
        }
    }
}

fn path_error(path: &str, r: files::Refusal) -> Error {
    match r {
        files::Refusal::NotFound => Error::invalid(
            "image_file_missing",
            format!("{path:?} does not exist under the images root"),
        ),
        other => Error::invalid("invalid_image_path", format!("{path:?}: {other}")),
    }
}

/// SHA-256 (hex) and size of a file, read in a blocking thread.
async fn hash_file(path: PathBuf) -> Result<(String, u64)> {
    tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        Ok((hex::encode(h.finalize()), n))
    })
    .await
    .map_err(|_| Error::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "hashing an image file");
        Error::invalid("image_file_unreadable", "the image file cannot be read")
    })
}

/// Links a finished upload to its name, never replacing: a file that appeared meanwhile wins,
/// and this upload fails.
async fn place(tmp: &Path, dest: &Path, rel: &str) -> Result<()> {
    tokio::fs::hard_link(tmp, dest).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::conflict(
                "image_file_exists",
                format!("{rel:?} already exists under the images root"),
            )
        } else {
            tracing::error!(error = %e, "moving the upload into place");
            Error::unavailable("the images root cannot be written (moving the upload into place)")
        }
    })
}

fn mismatch(expected: &str, got: &str) -> Error {
    Error::invalid(
        "checksum_mismatch",
        format!("sha256 mismatch: expected {expected}, the file has {got}"),
    )
}

impl App {
    fn images_root(&self) -> &Path {
        &self.boot.settings.images_root
    }

    pub async fn list_images(&self, who: &Principal) -> Result<Vec<Image>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::images::list(&mut conn)
            .await
            .db()?
            .into_iter()
            .map(image)
            .collect()
    }

    pub async fn get_image(&self, who: &Principal, name: &str) -> Result<Image> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        image(
            plinth_db::images::get(&mut conn, name)
                .await
                .db()?
                .ok_or_else(|| Error::not_found(format!("no image named {name:?}")))?,
        )
    }

    /// Registers a file already under the images root, hashing it (and checking the hash
    /// when one is given). A qcow2 disk image is refused: files are never converted in place.
    pub async fn register_image(&self, who: &Principal, req: ImageRegister) -> Result<Image> {
        who.require(Permission::ManageImages)?;
        check_name(&req.name)?;
        let arch = check_arch(req.arch.as_deref())?;
        let expected = check_sha(req.sha256.as_deref())?;
        let firmware = check_firmware(req.kind, req.firmware.as_deref())?;
        let real =
            files::resolve(self.images_root(), &req.path).map_err(|r| path_error(&req.path, r))?;
        if req.kind == ImageKind::DiskImage
            && (is_qcow2_name(&req.path) || has_qcow2_magic(&real).await)
        {
            return Err(Error::invalid(
                "unsupported_image",
                format!(
                    "{:?} is a qcow2 image, and disk images are served raw (or gzip/zstd-compressed raw): \
                     upload it instead (PUT /api/v1/images/{{name}}, `plinth image add --file`), which \
                     converts it to raw once, or convert it yourself with \
                     `qemu-img convert -f qcow2 -O raw` and register the result",
                    req.path
                ),
            ));
        }
        let (sha, size) = hash_file(real.clone()).await?;
        if let Some(e) = &expected
            && *e != sha
        {
            return Err(mismatch(e, &sha));
        }
        let raw = if req.kind == ImageKind::DiskImage {
            Some(raw_info(real, &sha, size, self.boot.settings.max_raw_bytes).await?)
        } else {
            None
        };
        let img = self
            .insert_image(
                who,
                &req.name,
                req.kind,
                arch,
                &req.path,
                size,
                &sha,
                "registered",
            )
            .await?;
        self.disk_info(img, firmware, raw).await
    }

    /// Streams `body` into the images root and registers it. The body is never held whole
    /// in memory; the file appears under its name only when complete and verified. A qcow2
    /// disk image (by its magic or its `.qcow2` name) is checked as uploaded, then converted
    /// to raw and registered as that.
    pub async fn upload_image(
        &self,
        who: &Principal,
        meta: UploadMeta,
        mut body: impl AsyncRead + Unpin + Send,
    ) -> Result<Image> {
        who.require(Permission::ManageImages)?;
        check_name(&meta.name)?;
        let arch = check_arch(meta.arch.as_deref())?;
        let expected = check_sha(meta.sha256.as_deref())?;
        let firmware = check_firmware(meta.kind, meta.firmware.as_deref())?;
        let mut rel = meta
            .path
            .clone()
            .unwrap_or_else(|| format!("uploads/{}", meta.name));
        files::check_name(&rel).map_err(|r| path_error(&rel, r))?;
        let named_qcow2 = meta.kind == ImageKind::DiskImage && is_qcow2_name(&rel);
        if named_qcow2 {
            rel = raw_path(&rel);
            files::check_name(&rel).map_err(|r| path_error(&rel, r))?;
        }
        let dest = self.images_root().join(&rel);
        if tokio::fs::symlink_metadata(&dest).await.is_ok() {
            return Err(Error::conflict(
                "image_file_exists",
                format!("{rel:?} already exists under the images root"),
            ));
        }
        {
            let mut conn = self.conn().await?;
            if plinth_db::images::get(&mut conn, &meta.name)
                .await
                .db()?
                .is_some()
            {
                return Err(Error::conflict(
                    "duplicate_image",
                    "an image with this name already exists",
                ));
            }
        }
        let dir = dest.parent().ok_or_else(Error::internal)?.to_owned();
        let io_err = |what: &'static str| {
            move |e: std::io::Error| {
                tracing::error!(error = %e, "{what}");
                Error::unavailable(format!("the images root cannot be written ({what})"))
            }
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err("creating the image's directory"))?;
        // The directory must still be inside the root (a symlinked directory could lead out).
        let root = self
            .images_root()
            .canonicalize()
            .map_err(io_err("resolving the images root"))?;
        let real_dir = dir
            .canonicalize()
            .map_err(io_err("resolving the image's directory"))?;
        if !real_dir.starts_with(&root) {
            return Err(path_error(&rel, files::Refusal::OutsideRoot));
        }
        // Room for it: the limit, and the free space now (an upload that would fill the
        // disk stops before it does).
        let max_upload = self.boot.settings.max_upload_bytes;
        let free = free_space(&real_dir).await?;
        let room = max_upload.min(free);
        let too_large = |n: u64| {
            Error::invalid(
                "image_too_large",
                if n > max_upload {
                    format!("the upload is more than {max_upload} bytes (images.max_upload_bytes)")
                } else {
                    format!("the upload is more than the {free} bytes free on the images root")
                },
            )
        };
        if let Some(n) = meta.declared_size
            && n > room
        {
            return Err(too_large(n));
        }
        let mut dest = real_dir.join(dest.file_name().ok_or_else(Error::internal)?);
        let tmp = Scratch(real_dir.join(format!(".{}.{}.part", meta.name, uuid::Uuid::new_v4())));
        let mut f = tokio::fs::File::create(&tmp.0)
            .await
            .map_err(io_err("creating the upload file"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        let mut head = Vec::with_capacity(QCOW2_MAGIC.len());
        loop {
            let n = body.read(&mut buf).await.map_err(|e| {
                tracing::warn!(error = %e, "upload body");
                Error::invalid("upload_interrupted", "the upload ended early or failed")
            })?;
            if n == 0 {
                break;
            }
            if size + n as u64 > room {
                return Err(too_large(size + n as u64));
            }
            let want = QCOW2_MAGIC.len().saturating_sub(head.len()).min(n);
            head.extend_from_slice(&buf[..want]);
            h.update(&buf[..n]);
            f.write_all(&buf[..n])
                .await
                .map_err(io_err("writing the upload"))?;
            size += n as u64;
        }
        f.sync_all().await.map_err(io_err("syncing the upload"))?;
        drop(f);
        let mut sha = hex::encode(h.finalize());
        // The given checksum is of the file as uploaded (a qcow2 before conversion).
        if let Some(e) = &expected
            && *e != sha
        {
            return Err(mismatch(e, &sha));
        }
        let mut raw = None;
        if meta.kind == ImageKind::DiskImage && (named_qcow2 || head[..] == QCOW2_MAGIC[..]) {
            if !named_qcow2 {
                rel = raw_path(&rel);
                files::check_name(&rel).map_err(|r| path_error(&rel, r))?;
                dest = real_dir.join(Path::new(&rel).file_name().ok_or_else(Error::internal)?);
                // Before the work of converting (placing it checks again, without a race).
                if tokio::fs::symlink_metadata(&dest).await.is_ok() {
                    return Err(Error::conflict(
                        "image_file_exists",
                        format!("{rel:?} already exists under the images root"),
                    ));
                }
            }
            let converted =
                Scratch(real_dir.join(format!(".{}.{}.raw.part", meta.name, uuid::Uuid::new_v4())));
            let virtual_size = qcow2_to_raw(&tmp.0, &converted.0, &real_dir, &meta.name).await?;
            // The qcow2 has served its purpose: its space is free before the raw is read.
            drop(tmp);
            tokio::fs::File::open(&converted.0)
                .await
                .map_err(io_err("opening the converted image"))?
                .sync_all()
                .await
                .map_err(io_err("syncing the converted image"))?;
            (sha, size) = hash_file(converted.0.clone()).await?;
            raw = Some((size, sha.clone()));
            tracing::info!(image = %meta.name, path = %rel, virtual_size, "qcow2 upload converted to raw");
            place(&converted.0, &dest, &rel).await?;
        } else {
            place(&tmp.0, &dest, &rel).await?;
        }
        let added = async {
            let raw = match raw {
                Some(r) => Some(r),
                None if meta.kind == ImageKind::DiskImage => Some(
                    raw_info(dest.clone(), &sha, size, self.boot.settings.max_raw_bytes).await?,
                ),
                None => None,
            };
            let img = self
                .insert_image(
                    who, &meta.name, meta.kind, arch, &rel, size, &sha, "uploaded",
                )
                .await?;
            self.disk_info(img, firmware, raw).await
        }
        .await;
        if added.is_err() {
            // A failed upload leaves nothing behind (an entry inserted before a failure of
            // disk_info goes too).
            let mut conn = self.conn().await?;
            plinth_db::images::delete(&mut conn, &meta.name).await.ok();
            tokio::fs::remove_file(&dest).await.ok();
        }
        added
    }

    /// Records a disk image's firmware, uncompressed size and SHA-256 on its new entry.
    async fn disk_info(
        &self,
        img: Image,
        firmware: Option<String>,
        raw: Option<(u64, String)>,
    ) -> Result<Image> {
        if img.kind != ImageKind::DiskImage {
            return Ok(img);
        }
        let mut conn = self.conn().await?;
        let row = plinth_db::images::set_disk_info(
            &mut conn,
            img.id,
            firmware.as_deref(),
            raw.as_ref()
                .map(|(n, _)| i64::try_from(*n).unwrap_or(i64::MAX)),
            raw.as_ref().map(|(_, h)| h.as_str()),
        )
        .await
        .db()?;
        image(row)
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_image(
        &self,
        who: &Principal,
        name: &str,
        kind: ImageKind,
        arch: &str,
        path: &str,
        size: u64,
        sha: &str,
        source: &str,
    ) -> Result<Image> {
        let mut tx = self.begin().await?;
        let row = plinth_db::images::insert(
            &mut tx,
            plinth_db::images::NewImage {
                name,
                kind: kind.as_str(),
                arch,
                path,
                size: i64::try_from(size).map_err(|_| Error::internal())?,
                sha256: sha,
                source,
                created_by: &who.name,
            },
        )
        .await
        .db()?;
        crate::record_event(
            &mut tx,
            who,
            "image_added",
            serde_json::json!({ "image": name, "kind": kind.as_str(), "path": path, "size": size, "sha256": sha, "source": source }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(image = name, path, size, source, actor = %who.name, "image added");
        image(row)
    }

    /// Deletes an image that nothing boots; an uploaded image's file goes with it.
    pub async fn delete_image(&self, who: &Principal, name: &str) -> Result<Image> {
        who.require(Permission::ManageImages)?;
        let s = &self.boot.settings;
        let mut tx = self.begin().await?;
        let row = plinth_db::images::delete(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no image named {name:?}")))?;
        if row.path == s.kernel || row.path == s.initrd || s.in_use.contains(&row.path) {
            return Err(Error::conflict(
                "image_in_use",
                format!(
                    "image {name:?} ({}) is what plinth boots; change the [boot]/[dhcp] configuration first",
                    row.path
                ),
            ));
        }
        crate::record_event(
            &mut tx,
            who,
            "image_deleted",
            serde_json::json!({ "image": name, "path": row.path, "source": row.source }),
        )
        .await?;
        tx.commit().await.db()?;
        if row.source == "uploaded" {
            match files::resolve(self.images_root(), &row.path) {
                Ok(p) => {
                    if let Err(e) = tokio::fs::remove_file(&p).await {
                        tracing::warn!(error = %e, path = %row.path, "removing a deleted image's file");
                    }
                }
                Err(r) => {
                    tracing::warn!(path = %row.path, reason = %r, "a deleted image's file was not removed")
                }
            }
        }
        tracing::info!(image = name, actor = %who.name, "image deleted");
        image(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_qcow2_paths() {
        assert_eq!(raw_path("uploads/debian"), "uploads/debian.raw");
        assert_eq!(raw_path("uploads/debian.qcow2"), "uploads/debian.raw");
        assert_eq!(raw_path("d/Debian.QCOW2"), "d/Debian.raw");
        assert_eq!(raw_path("d/debian.raw"), "d/debian.raw");
        assert_eq!(raw_path("d/debian.raw.qcow2"), "d/debian.raw");
    }

    #[test]
    fn qcow2_info_checks() {
        let ok = serde_json::json!({
            "virtual-size": 1048576, "format": "qcow2",
            "format-specific": { "type": "qcow2", "data": { "corrupt": false } }
        });
        assert_eq!(check_qcow2_info(&ok).ok(), Some(1048576));
        for (bad, code) in [
            (
                serde_json::json!({ "virtual-size": 1, "backing-filename": "/etc/shadow" }),
                "unsupported_image",
            ),
            (
                serde_json::json!({ "virtual-size": 1, "full-backing-filename": "/etc/shadow" }),
                "unsupported_image",
            ),
            (
                serde_json::json!({ "virtual-size": 1, "format-specific": { "data": { "data-file": "/dev/sda" } } }),
                "unsupported_image",
            ),
            (
                serde_json::json!({ "virtual-size": 1, "encrypted": true }),
                "unsupported_image",
            ),
            (
                serde_json::json!({ "virtual-size": 1, "format-specific": { "data": { "encrypt": {} } } }),
                "unsupported_image",
            ),
            (
                serde_json::json!({ "virtual-size": 1, "format-specific": { "data": { "corrupt": true } } }),
                "corrupt_image",
            ),
            (serde_json::json!({ "format": "qcow2" }), "corrupt_image"),
        ] {
            assert_eq!(
                check_qcow2_info(&bad).map_err(|e| e.code),
                Err(code),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_qemu_img_says_what_to_install() {
        let e = qemu_img(
            OsStr::new("/nonexistent/qemu-img"),
            &[OsStr::new("info")],
            Duration::from_secs(5),
            INFO_LIMITS,
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, plinth_types::ErrorKind::Unavailable);
        assert!(e.message.contains("install qemu-utils"), "{e}");
    }

    #[tokio::test]
    async fn a_qemu_img_that_hangs_is_stopped() {
        let start = std::time::Instant::now();
        let e = qemu_img(
            OsStr::new("sleep"),
            &[OsStr::new("30")],
            Duration::from_millis(200),
            INFO_LIMITS,
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, plinth_types::ErrorKind::Unavailable);
        assert!(e.message.contains("did not finish"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_qemu_img_that_spins_is_stopped_at_its_cpu_limit() {
        // A busy loop with one second of CPU: stopped by the kernel (SIGXCPU), long before
        // the wall-clock timeout.
        let e = qemu_img(
            OsStr::new("sh"),
            &[OsStr::new("-c"), OsStr::new("while :; do :; done")],
            Duration::from_secs(60),
            RunLimits {
                cpu_secs: 1,
                memory: 1 << 30,
            },
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "image_limits_exceeded", "{e}");
        // And its memory is bounded: a 512 MiB allocation under a 256 MiB limit fails.
        let e = qemu_img(
            OsStr::new("python3"),
            &[OsStr::new("-c"), OsStr::new("b = bytearray(512 << 20)")],
            Duration::from_secs(60),
            RunLimits {
                cpu_secs: 10,
                memory: 256 << 20,
            },
            &[],
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("MemoryError"), "{e}");
    }
}
