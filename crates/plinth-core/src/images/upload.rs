//! Uploads: the body streamed to a temporary file beside its destination, hashed as it goes,
//! and linked into place only once its checksum holds (a qcow2 disk image converted first).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use plinth_types::Error;
use plinth_types::api::{Image, ImageKind};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, files};

use super::*;

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

/// Bytes free to an unprivileged writer on the file system holding `dir` (`stat -f`: std has
/// no statvfs, and this crate makes no system calls of its own).
pub(crate) async fn free_space(dir: &Path) -> Result<u64> {
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

/// A temporary file beside an image's destination, removed when dropped: after an error,
/// a refusal, or the request going away alike (once linked into place, only its temporary
/// name goes).
pub(crate) struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// Links a finished upload to its name, never replacing: a file that appeared meanwhile wins,
/// and this upload fails.
pub(crate) async fn place(tmp: &Path, dest: &Path, rel: &str) -> Result<()> {
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

pub(crate) fn mismatch(expected: &str, got: &str) -> Error {
    Error::invalid(
        "checksum_mismatch",
        format!("sha256 mismatch: expected {expected}, the file has {got}"),
    )
}

impl App {
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
        let dir = dest
            .parent()
            .ok_or_else(crate::missing("upload_image"))?
            .to_owned();
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
        let mut dest = real_dir.join(
            dest.file_name()
                .ok_or_else(crate::missing("upload_image"))?,
        );
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
                dest = real_dir.join(
                    Path::new(&rel)
                        .file_name()
                        .ok_or_else(crate::missing("upload_image"))?,
                );
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
    pub(super) async fn disk_info(
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
}
