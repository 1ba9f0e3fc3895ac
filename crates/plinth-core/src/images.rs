//! The image catalog: boot images known by name, each a file under the images root.
//! Registering hashes a file already there; uploading streams the body to a temporary file
//! beside its destination, hashing as it goes, and renames it into place only once the
//! checksum holds, so a failed upload leaves nothing behind.

use std::path::{Path, PathBuf};

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
    /// Relative to the images root; default `uploads/<name>`.
    pub path: Option<String>,
    pub sha256: Option<String>,
    /// For a disk image: `bios`, `uefi` or `both`.
    pub firmware: Option<String>,
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
        raw_sha256: None,
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

/// The size of a disk image once written: its own size, or what it decompresses to
/// (gzip, zstd), read through once. An image that does not decompress is refused.
async fn raw_size(path: PathBuf) -> Result<u64> {
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let name = path.to_string_lossy().into_owned();
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
        if name.ends_with(".gz") {
            std::io::copy(
                &mut flate2::read::MultiGzDecoder::new(file),
                &mut std::io::sink(),
            )
            .map_err(bad)
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            let mut d = zstd::stream::read::Decoder::new(file).map_err(bad)?;
            std::io::copy(&mut d, &mut std::io::sink()).map_err(bad)
        } else {
            Ok(std::fs::metadata(&path)
                .map_err(|_| Error::internal())?
                .len())
        }
    })
    .await
    .map_err(|_| Error::internal())?
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
    /// when one is given).
    pub async fn register_image(&self, who: &Principal, req: ImageRegister) -> Result<Image> {
        who.require(Permission::ManageImages)?;
        check_name(&req.name)?;
        let arch = check_arch(req.arch.as_deref())?;
        let expected = check_sha(req.sha256.as_deref())?;
        let firmware = check_firmware(req.kind, req.firmware.as_deref())?;
        let real =
            files::resolve(self.images_root(), &req.path).map_err(|r| path_error(&req.path, r))?;
        let (sha, size) = hash_file(real.clone()).await?;
        if let Some(e) = &expected
            && *e != sha
        {
            return Err(mismatch(e, &sha));
        }
        let raw = if req.kind == ImageKind::DiskImage {
            Some(raw_size(real).await?)
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
    /// in memory; the file appears under its name only when complete and verified.
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
        let rel = meta
            .path
            .clone()
            .unwrap_or_else(|| format!("uploads/{}", meta.name));
        files::check_name(&rel).map_err(|r| path_error(&rel, r))?;
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
        let dest = real_dir.join(dest.file_name().ok_or_else(Error::internal)?);
        let tmp = real_dir.join(format!(".{}.{}.part", meta.name, uuid::Uuid::new_v4()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(io_err("creating the upload file"))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = body.read(&mut buf).await.map_err(|e| {
                    tracing::warn!(error = %e, "upload body");
                    Error::invalid("upload_interrupted", "the upload ended early or failed")
                })?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n])
                    .await
                    .map_err(io_err("writing the upload"))?;
                size += n as u64;
            }
            f.sync_all().await.map_err(io_err("syncing the upload"))?;
            let sha = hex::encode(h.finalize());
            if let Some(e) = &expected
                && *e != sha
            {
                return Err(mismatch(e, &sha));
            }
            // No replace: a file that appeared meanwhile wins, and this upload fails.
            tokio::fs::hard_link(&tmp, &dest).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::conflict(
                        "image_file_exists",
                        format!("{rel:?} already exists under the images root"),
                    )
                } else {
                    io_err("moving the upload into place")(e)
                }
            })?;
            Ok((sha, size))
        }
        .await;
        tokio::fs::remove_file(&tmp).await.ok();
        let (sha, size) = result?;
        let added = async {
            let raw = if meta.kind == ImageKind::DiskImage {
                Some(raw_size(dest.clone()).await?)
            } else {
                None
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

    /// Records a disk image's firmware and uncompressed size on its new entry.
    async fn disk_info(
        &self,
        img: Image,
        firmware: Option<String>,
        raw: Option<u64>,
    ) -> Result<Image> {
        if img.kind != ImageKind::DiskImage {
            return Ok(img);
        }
        let mut conn = self.conn().await?;
        let row = plinth_db::images::set_disk_info(
            &mut conn,
            img.id,
            firmware.as_deref(),
            raw.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
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
