//! Wiping a disk: zeros over its first and last MiB (where partition tables, their GPT backup,
//! RAID, LVM and filesystem signatures live), or over all of it. Written through the page
//! cache and flushed with fsync before the disk counts as wiped.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use plinth_types::api::WipedDisk;

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 4 * MIB as usize;

/// Zeros `len` bytes at `offset`.
fn zero(f: &mut std::fs::File, offset: u64, len: u64, buf: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Wipes the device (or file) at `path`; `progress` hears (done, total) bytes now and then.
pub fn wipe(name: &str, path: &Path, full: bool, mut progress: impl FnMut(u64, u64)) -> WipedDisk {
    let mut out = WipedDisk {
        name: name.to_owned(),
        size_bytes: 0,
        zeroed_bytes: 0,
        full: false,
        error: None,
    };
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).open(path)?;
        let size = f.seek(SeekFrom::End(0))?;
        out.size_bytes = size;
        let buf = vec![0u8; CHUNK];
        if full {
            let started = Instant::now();
            let mut done = 0;
            let mut last_report = Instant::now();
            while done < size {
                let n = (size - done).min(CHUNK as u64);
                zero(&mut f, done, n, &buf)?;
                done += n;
                out.zeroed_bytes = done;
                if last_report.elapsed().as_secs() >= 5 || done == size {
                    progress(done, size);
                    last_report = Instant::now();
                }
            }
            out.full = true;
            let _ = started;
        } else {
            let head = size.min(MIB);
            zero(&mut f, 0, head, &buf)?;
            let tail_start = size.saturating_sub(MIB).max(head);
            zero(&mut f, tail_start, size - tail_start, &buf)?;
            out.zeroed_bytes = head + (size - tail_start);
            progress(out.zeroed_bytes, out.zeroed_bytes);
        }
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        out.error = Some(format!("{}: {e}", path.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0xa5u8; size as usize]).unwrap();
        p
    }

    #[test]
    fn ends_only_and_full() {
        let dir = tempfile::tempdir().unwrap();
        let p = disk(dir.path(), "vda", 5 * MIB + 512);
        let w = wipe("vda", &p, false, |_, _| {});
        assert_eq!(w.error, None);
        assert_eq!(
            (w.size_bytes, w.zeroed_bytes, w.full),
            (5 * MIB + 512, 2 * MIB, false)
        );
        let data = std::fs::read(&p).unwrap();
        assert!(data[..MIB as usize].iter().all(|b| *b == 0));
        assert!(data[data.len() - MIB as usize..].iter().all(|b| *b == 0));
        assert_eq!(data[2 * MIB as usize], 0xa5, "the middle stays");

        let w = wipe("vda", &p, true, |_, _| {});
        assert_eq!((w.zeroed_bytes, w.full), (5 * MIB + 512, true));
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));

        // A disk smaller than 2 MiB: zeroed once, not twice.
        let small = disk(dir.path(), "tiny", MIB + 100);
        let w = wipe("tiny", &small, false, |_, _| {});
        assert_eq!(w.zeroed_bytes, MIB + 100);
        assert!(std::fs::read(&small).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn a_disk_that_cannot_be_opened_is_an_error_not_a_panic() {
        let w = wipe("sdz", Path::new("/nonexistent/sdz"), false, |_, _| {});
        assert!(w.error.unwrap().contains("/nonexistent/sdz"));
        assert_eq!(w.zeroed_bytes, 0);
    }
}
