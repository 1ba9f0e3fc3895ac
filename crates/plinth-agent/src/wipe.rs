//! Wiping a disk: zeros over its first and last MiB (where partition tables, their GPT backup,
//! RAID, LVM and filesystem signatures live) and over the first and last MiB of every partition
//! (filesystems, a cloud-init seed, LVM and RAID superblocks sit there, and would survive the
//! table's loss), or over all of it. Written through the page cache and flushed with fsync
//! before the disk counts as wiped.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use plinth_types::api::WipedDisk;

use crate::partition;

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

/// Sorts byte ranges and merges those that overlap or touch, so each byte counts once.
fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The head and tail MiB of `start..end` (all of it when it is at most 2 MiB long).
fn ends(start: u64, end: u64) -> [Range<u64>; 2] {
    [
        start..end.min(start + MIB),
        end.saturating_sub(MIB).max(start)..end,
    ]
}

/// The ranges a quick wipe zeros on a disk of `size` bytes: the ends of every partition, then
/// (last, so that an interrupted wipe still finds the table next time) the ends of the disk.
fn quick_ranges(size: u64, parts: &[partition::Partition]) -> (Vec<Range<u64>>, Vec<Range<u64>>) {
    let disk = merge(ends(0, size).to_vec());
    let inner: Vec<Range<u64>> = parts
        .iter()
        .flat_map(|p| ends(p.start.min(size), p.start.saturating_add(p.len).min(size)))
        .collect();
    let inner = merge(inner);
    // Whatever overlaps the disk's ends is zeroed with them.
    let (first, last): (Vec<_>, Vec<_>) = merge(inner.into_iter().chain(disk.clone()).collect())
        .into_iter()
        .partition(|r| !disk.iter().any(|d| d.start < r.end && r.start < d.end));
    (first, last)
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
        let mut f = OpenOptions::new().read(true).write(true).open(path)?;
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
            let parts = partition::read(&mut f)?.map(|(_, p)| p).unwrap_or_default();
            let (inner, disk_ends) = quick_ranges(size, &parts);
            for r in inner.iter().chain(&disk_ends) {
                zero(&mut f, r.start, r.end - r.start, &buf)?;
                out.zeroed_bytes += r.end - r.start;
            }
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
    fn quick_ranges_cover_partition_ends_once() {
        use partition::Partition;
        let p = |number, start, len| Partition { number, start, len };
        // A 1.5 MiB partition is zeroed whole; one reaching past the disk's end is clamped; the
        // disk's head merges with the first partition's head.
        let parts = [
            p(1, MIB, 10 * MIB),
            p(2, 20 * MIB, MIB + MIB / 2),
            p(3, 60 * MIB, 90 * MIB),
        ];
        let (inner, disk) = quick_ranges(100 * MIB, &parts);
        assert_eq!(
            inner,
            [
                10 * MIB..11 * MIB,
                20 * MIB..21 * MIB + MIB / 2,
                60 * MIB..61 * MIB
            ]
        );
        assert_eq!(disk, [0..2 * MIB, 99 * MIB..100 * MIB]);
        // Nothing but the disk's ends without partitions; a tiny disk once.
        assert_eq!(
            quick_ranges(10 * MIB, &[]),
            (vec![], vec![0..MIB, 9 * MIB..10 * MIB])
        );
        let (inner, disk) = quick_ranges(MIB / 2, &parts);
        assert!(inner.is_empty());
        assert_eq!((disk.len(), &disk[0]), (1, &(0..MIB / 2)));
    }

    #[test]
    fn partition_contents_are_wiped_too() {
        use crate::seed::tools::{blkid, run};
        let dir = tempfile::tempdir().unwrap();
        let p = disk(dir.path(), "sda", 96 * MIB);
        let ps = p.to_str().unwrap();
        partition::tests::sfdisk(
            &p,
            "label: gpt\nstart=2048, size=40MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        );
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let seed = partition::add_partition(&mut f, 96 * MIB, 0, 4 * MIB, "cidata").unwrap();
        assert_eq!((seed.start, seed.len), (41 * MIB, 4 * MIB));
        let img =
            crate::seed::fat_image("cidata", 9, &[("meta-data", b"id: 1\n")], 4 * MIB).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &img, seed.start).unwrap();
        drop(f);
        let found = String::from_utf8_lossy(&blkid(ps, seed.start).stdout).into_owned();
        assert!(
            found.contains("LABEL=cidata"),
            "the fixture has a seed: {found}"
        );
        let before = std::fs::read(&p).unwrap();

        let w = wipe("sda", &p, false, |_, _| {});
        assert_eq!(w.error, None);
        // Disk head + partition 1's head, partition 1's tail + the seed's head, the seed's tail,
        // the disk's tail.
        let zeroed = [
            0..2 * MIB,
            40 * MIB..42 * MIB,
            44 * MIB..45 * MIB,
            95 * MIB..96 * MIB,
        ];
        assert_eq!(w.zeroed_bytes, 6 * MIB);
        let after = std::fs::read(&p).unwrap();
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            let i = i as u64;
            if zeroed.iter().any(|r| r.contains(&i)) {
                assert_eq!(*a, 0, "byte {i} is zeroed");
            } else {
                assert_eq!(a, b, "byte {i} is untouched");
            }
        }
        let probe = blkid(ps, seed.start);
        assert_eq!(
            probe.status.code(),
            Some(2),
            "blkid finds nothing: {probe:?}"
        );
        let sfdisk = run("sfdisk", "fdisk", &["--json", ps]);
        assert!(!sfdisk.status.success(), "no table left: {sfdisk:?}");
        let mut f = std::fs::File::open(&p).unwrap();
        assert_eq!(partition::read(&mut f).unwrap(), None);
    }

    #[test]
    fn a_disk_that_cannot_be_opened_is_an_error_not_a_panic() {
        let w = wipe("sdz", Path::new("/nonexistent/sdz"), false, |_, _| {});
        assert!(w.error.unwrap().contains("/nonexistent/sdz"));
        assert_eq!(w.zeroed_bytes, 0);
    }
}
