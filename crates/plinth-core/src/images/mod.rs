//! The image catalog: boot images known by name, each a file under the images root.
//! Registering hashes a file already there; uploading streams the body to a temporary file
//! beside its destination, hashing as it goes, and renames it into place only once the
//! checksum holds, so a failed upload leaves nothing behind.
//!
//! Disk images are served as they will be written: raw, or raw compressed with gzip or zstd.
//! A qcow2 upload is converted to raw once, by `qemu-img`, after checks that it reads no file
//! but itself (no backing or external data file) and fits on the images root; a qcow2 file is
//! never registered in place.

mod qcow2;
mod upload;

use qcow2::*;
pub use upload::UploadMeta;
use upload::*;

use std::path::{Path, PathBuf};

use plinth_types::Error;
use plinth_types::api::{Image, ImageKind, ImageRegister};
use sha2::{Digest, Sha256};

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, files};

pub(crate) fn image(r: plinth_db::images::ImageRow) -> Result<Image> {
    Ok(Image {
        id: r.id,
        kind: r.kind,
        name: r.name,
        arch: r.arch,
        path: r.path,
        size: u64::try_from(r.size).map_err(crate::internal("image"))?,
        sha256: r.sha256,
        source: r.source,
        created_by: r.created_by,
        created_at: r.created_at,
        firmware: r.firmware,
        raw_size: r.raw_size.and_then(|n| u64::try_from(n).ok()),
        raw_sha256: r.raw_sha256,
    })
}

pub(crate) fn check_firmware(kind: ImageKind, fw: Option<&str>) -> Result<Option<String>> {
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
pub(crate) async fn raw_info(
    path: PathBuf,
    sha: &str,
    size: u64,
    max_raw: u64,
) -> Result<(u64, String)> {
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
    .map_err(crate::internal("raw_info"))?
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

pub(crate) fn check_name(name: &str) -> Result<()> {
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

pub(crate) fn check_arch(arch: Option<&str>) -> Result<&'static str> {
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

pub(crate) fn check_sha(sha: Option<&str>) -> Result<Option<String>> {
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

pub(crate) fn path_error(path: &str, r: files::Refusal) -> Error {
    match r {
        files::Refusal::NotFound => Error::invalid(
            "image_file_missing",
            format!("{path:?} does not exist under the images root"),
        ),
        other => Error::invalid("invalid_image_path", format!("{path:?}: {other}")),
    }
}

/// SHA-256 (hex) and size of a file, read in a blocking thread.
pub(crate) async fn hash_file(path: PathBuf) -> Result<(String, u64)> {
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
    .map_err(crate::internal("hash_file"))?
    .map_err(|e| {
        tracing::error!(error = %e, "hashing an image file");
        Error::invalid("image_file_unreadable", "the image file cannot be read")
    })
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
                kind,
                arch,
                path,
                size: i64::try_from(size).map_err(crate::internal("insert_image"))?,
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
