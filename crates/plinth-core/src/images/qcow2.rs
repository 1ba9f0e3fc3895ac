//! qcow2 disk images: recognised by name or magic, checked with `qemu-img info` (no backing or
//! external data file, no encryption, a virtual size that fits), and converted to raw once,
//! with `qemu-img` run under time and CPU limits.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use plinth_types::Error;
use tokio::io::AsyncReadExt;

use crate::Result;

use super::*;

/// The first bytes of every qcow2 file.
pub(crate) const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// How long `qemu-img info` may take (it reads headers and tables only).
pub(crate) const QEMU_INFO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `qemu-img convert` may take (it writes the whole disk).
pub(crate) const QEMU_CONVERT_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

pub(crate) fn is_qcow2_name(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".qcow2")
}

/// Where a converted qcow2 goes: `.qcow2` becomes `.raw`, any other name gets `.raw` added
/// (unless it has it already).
pub(crate) fn raw_path(path: &str) -> String {
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
pub(crate) async fn has_qcow2_magic(path: &Path) -> bool {
    let mut head = [0u8; 4];
    match tokio::fs::File::open(path).await {
        Ok(mut f) => f.read_exact(&mut head).await.is_ok() && head == QCOW2_MAGIC,
        Err(_) => false,
    }
}

/// The `qemu-img` to run: `$PLINTH_QEMU_IMG`, or `qemu-img` on the PATH.
pub(crate) fn qemu_img_program() -> std::ffi::OsString {
    std::env::var_os("PLINTH_QEMU_IMG").unwrap_or_else(|| "qemu-img".into())
}

/// What one qemu-img run may use: seconds of CPU and bytes of address space (a crafted qcow2
/// must not make it spin or swell; `prlimit` from util-linux sets them before qemu-img runs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunLimits {
    cpu_secs: u64,
    memory: u64,
}

pub(crate) const INFO_LIMITS: RunLimits = RunLimits {
    cpu_secs: 30,
    memory: 1 << 30,
};

pub(crate) const CONVERT_LIMITS: RunLimits = RunLimits {
    cpu_secs: 7200,
    memory: 2 << 30,
};

/// `program` as found on the PATH (or as given, when it names a path), if it exists.
pub(crate) fn find_program(program: &OsStr) -> Option<PathBuf> {
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
pub(crate) async fn qemu_img(
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
pub(crate) fn check_qcow2_info(info: &serde_json::Value) -> Result<u64> {
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

/// Converts the qcow2 image `src` to a new raw file `dest` in `dir` once it passes
/// [`check_qcow2_info`] and its virtual size fits the free space there. The format is always
/// given (`-f qcow2`): qemu-img never guesses. Returns the virtual size.
pub(crate) async fn qcow2_to_raw(src: &Path, dest: &Path, dir: &Path, label: &str) -> Result<u64> {
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
