//! Wiping a disk, by the method plinth asks for (its machine's pool, or the default):
//!
//! - `quick`: zeros over the disk's first and last MiB (where partition tables, their GPT
//!   backup, RAID, LVM and filesystem signatures live) and over the first and last MiB of every
//!   partition (filesystems, a cloud-init seed, LVM and RAID superblocks sit there, and would
//!   survive the table's loss). Fast, and it leaves the data between in place: enough between
//!   the tenants of one owner, not against someone with the disk.
//! - `discard`: the whole disk discarded (BLKSECDISCARD where the device takes it, else
//!   BLKDISCARD), then read back: only a device whose discarded blocks read as zeros passes.
//! - `secure`: the drive's own erase: NVMe Format NVM with "user data erase" (SES=1), or ATA
//!   Security Erase (see ata.rs) where the drive has the feature set and it is not frozen.
//!   Disks without one (virtio, most SATA drives after a BIOS froze them) get the configured
//!   fallback: `full`, or failing.
//! - `full`: every byte overwritten with zeros.
//!
//! Every method except quick is verified by reading back samples (the first and last MiB and
//! 64 blocks of 64 KiB spread over the disk) past the page cache; a disk that does not read back
//! as zeros is not wiped. Writes go through the page cache and are flushed with fsync before the
//! disk counts as wiped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use plinth_types::api::{WipeFallback, WipeMethod, WipedDisk};

use crate::{ata, partition, sys};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 4 * MIB as usize;
/// Samples read back after a whole-disk method, besides the disk's first and last MiB.
const SAMPLES: u64 = 64;
const SAMPLE_LEN: u64 = 64 * 1024;
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

/// What plinth asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub method: WipeMethod,
    pub fallback: WipeFallback,
}

/// Why a method cannot be used on this disk (its fallback applies), or an I/O failure.
enum Trouble {
    Unsupported(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Trouble {
    fn from(e: std::io::Error) -> Trouble {
        Trouble::Io(e)
    }
}

/// Wipes the device (or file) at `path` as `plan` says; `progress` hears (done, total) bytes
/// now and then. The report names the method that was used and how it was verified.
pub fn wipe(
    name: &str,
    serial: Option<&str>,
    path: &Path,
    plan: Plan,
    mut progress: impl FnMut(u64, u64),
) -> WipedDisk {
    let mut out = WipedDisk {
        name: name.to_owned(),
        serial: serial.map(str::to_owned),
        size_bytes: 0,
        zeroed_bytes: 0,
        full: false,
        method: Some(plan.method),
        verification: None,
        error: None,
    };
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().read(true).write(true).open(path)?;
        let size = f.seek(SeekFrom::End(0))?;
        out.size_bytes = size;
        let tried = match plan.method {
            WipeMethod::Quick => {
                quick(&mut f, size, &mut out)?;
                progress(out.zeroed_bytes, out.zeroed_bytes);
                return Ok(());
            }
            WipeMethod::Full => {
                full(&mut f, size, &mut out, &mut progress)?;
                out.verification = Some(verify(path, &f, size)?);
                return Ok(());
            }
            WipeMethod::Discard => discard(&f, path, size),
            WipeMethod::Secure => secure(name, &f, path, size),
        };
        match tried {
            Ok(verified) => {
                out.zeroed_bytes = size;
                out.full = true;
                out.verification = Some(verified);
                progress(size, size);
                Ok(())
            }
            Err(Trouble::Io(e)) => Err(e),
            Err(Trouble::Unsupported(why)) => match plan.fallback {
                WipeFallback::Fail => Err(std::io::Error::other(format!(
                    "{why}, and the fallback is to fail"
                ))),
                WipeFallback::Full => {
                    out.method = Some(WipeMethod::Full);
                    full(&mut f, size, &mut out, &mut progress)?;
                    out.verification = Some(format!(
                        "{why}: overwritten instead; {}",
                        verify(path, &f, size)?
                    ));
                    Ok(())
                }
            },
        }
    })();
    if let Err(e) = res {
        out.error = Some(format!("{}: {e}", path.display()));
    }
    out
}

/// The quick wipe: partition ends, then the disk's ends (see [`quick_ranges`]).
fn quick(f: &mut File, size: u64, out: &mut WipedDisk) -> std::io::Result<()> {
    let buf = vec![0u8; CHUNK];
    let parts = partition::read(f)?.map(|(_, p)| p).unwrap_or_default();
    let (inner, disk_ends) = quick_ranges(size, &parts);
    for r in inner.iter().chain(&disk_ends) {
        zero(f, r.start, r.end - r.start, &buf)?;
        out.zeroed_bytes += r.end - r.start;
    }
    f.sync_all()?;
    out.verification = Some(format!(
        "{} MiB at the disk's and its partitions' ends zeroed; the rest left as it was",
        out.zeroed_bytes.div_ceil(MIB)
    ));
    Ok(())
}

/// Every byte overwritten with zeros.
fn full(
    f: &mut File,
    size: u64,
    out: &mut WipedDisk,
    progress: &mut impl FnMut(u64, u64),
) -> std::io::Result<()> {
    let buf = vec![0u8; CHUNK];
    let mut done = 0;
    let mut last_report = Instant::now();
    while done < size {
        let n = (size - done).min(CHUNK as u64);
        zero(f, done, n, &buf)?;
        done += n;
        if last_report.elapsed().as_secs() >= 5 || done == size {
            progress(done, size);
            last_report = Instant::now();
        }
    }
    f.sync_all()?;
    out.zeroed_bytes = size;
    out.full = true;
    Ok(())
}

fn discard(f: &File, path: &Path, size: u64) -> Result<String, Trouble> {
    let unsupported = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
        )
    };
    let how = match sys::discard(f, 0, size, true) {
        Ok(()) => "secure discard (BLKSECDISCARD)",
        Err(e) if unsupported(&e) => match sys::discard(f, 0, size, false) {
            Ok(()) => "discard (BLKDISCARD)",
            Err(e) if unsupported(&e) => {
                return Err(Trouble::Unsupported(format!(
                    "the device does not take discards ({e})"
                )));
            }
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    match verify(path, f, size) {
        Ok(v) => Ok(format!("{how}; {v}")),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Trouble::Unsupported(
            format!("after a {how} the device does not read back zeros ({e})"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The drive's own erase: NVMe Format NVM for an NVMe namespace, ATA Security Erase for a
/// drive that answers ATA PASS-THROUGH; anything else has none.
fn secure(name: &str, f: &File, path: &Path, size: u64) -> Result<String, Trouble> {
    if name.starts_with("nvme") {
        nvme_format(name, f, path, size)
    } else {
        ata_erase(name, f, path, size)
    }
}

/// One ATA command through SG_IO; the 512-byte data block, when the command has one.
fn ata(f: &File, c: ata::Command, data: &mut [u8], timeout_ms: u32) -> std::io::Result<()> {
    let data = match c.direction() {
        ata::Direction::None => &mut data[..0],
        _ => data,
    };
    sys::sg_io(
        f,
        &c.cdb(),
        data,
        c.direction() == ata::Direction::Out,
        timeout_ms,
    )
}

/// ATA Security Erase (normal), as ata.rs lays out.
fn ata_erase(name: &str, f: &File, path: &Path, size: u64) -> Result<String, Trouble> {
    let mut id = [0u8; 512];
    if let Err(e) = ata(f, ata::Command::Identify, &mut id, 10_000) {
        return Err(Trouble::Unsupported(format!(
            "{name} is neither an NVMe namespace nor an ATA drive that answers IDENTIFY ({e})"
        )));
    }
    let sec = ata::security(&id)
        .ok_or_else(|| Trouble::Unsupported(format!("{name}: IDENTIFY DEVICE data too short")))?;
    if let Some(why) = ata::refusal(&sec) {
        return Err(Trouble::Unsupported(format!("{name}: {why}")));
    }
    let password = format!("plinth-{:016x}", rand_u64());
    let mut block = ata::password_block(password.as_bytes());
    ata(f, ata::Command::SetPassword, &mut block, 10_000).map_err(|e| {
        Trouble::Unsupported(format!("{name}: SECURITY SET PASSWORD refused ({e})"))
    })?;
    // From here on the drive has a password: whatever fails, take it off again.
    let minutes = sec.erase_minutes.unwrap_or(0).max(60);
    let started = Instant::now();
    let erased = ata(f, ata::Command::ErasePrepare, &mut [], 10_000).and_then(|()| {
        let mut block = ata::password_block(password.as_bytes());
        ata(
            f,
            ata::Command::EraseUnit,
            &mut block,
            minutes.saturating_mul(2 * 60_000),
        )
    });
    if let Err(e) = erased {
        let mut block = ata::password_block(password.as_bytes());
        return Err(Trouble::Io(std::io::Error::other(
            match ata(f, ata::Command::DisablePassword, &mut block, 10_000) {
                Ok(()) => format!(
                    "ATA SECURITY ERASE UNIT failed ({e}); the password was taken off again"
                ),
                Err(d) => format!(
                    "ATA SECURITY ERASE UNIT failed ({e}) and taking the password off failed too ({d}): the drive's user password is {password}"
                ),
            },
        )));
    }
    let took = started.elapsed().as_secs_f64();
    sys::flush_buffers(f).ok();
    let v = verify(path, f, size).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Trouble::Io(std::io::Error::other(format!(
                "after ATA Security Erase the drive does not read back zeros ({e})"
            )))
        } else {
            e.into()
        }
    })?;
    Ok(format!(
        "ATA SECURITY ERASE UNIT (normal) in {took:.1} s (the drive's estimate {} min); {v}",
        sec.erase_minutes
            .map_or("none".to_owned(), |m| m.to_string())
    ))
}

/// A random number for a one-time ATA password.
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// NVMe Format NVM with user data erase on the namespace `f` is open on.
fn nvme_format(name: &str, f: &File, path: &Path, size: u64) -> Result<String, Trouble> {
    let nsid = sys::nvme_namespace_id(f)
        .map_err(|e| Trouble::Unsupported(format!("{name} is not an NVMe namespace ({e})")))?;
    let mut ctrl = vec![0u8; 4096];
    sys::nvme_admin(
        f,
        sys::AdminCmd {
            opcode: 0x06,
            nsid: 0,
            cdw10: 1,
            cdw11: 0,
            timeout_ms: 0,
        },
        Some(&mut ctrl),
    )
    .map_err(|e| Trouble::Unsupported(format!("Identify Controller failed ({e})")))?;
    // OACS (bytes 256-257) bit 1: Format NVM supported.
    let oacs = u16::from_le_bytes([ctrl[256], ctrl[257]]);
    if oacs & 0x02 == 0 {
        return Err(Trouble::Unsupported(format!(
            "{name}'s controller does not support Format NVM"
        )));
    }
    // FNA (byte 524) bit 0: a format applies to every namespace of the controller.
    let all = ctrl[524] & 0x01 != 0;
    let mut ns = vec![0u8; 4096];
    sys::nvme_admin(
        f,
        sys::AdminCmd {
            opcode: 0x06,
            nsid,
            cdw10: 0,
            cdw11: 0,
            timeout_ms: 0,
        },
        Some(&mut ns),
    )
    .map_err(|e| Trouble::Unsupported(format!("Identify Namespace failed ({e})")))?;
    // FLBAS (byte 26): the LBA format in use (bits 3:0, and 6:5 above 16 formats), kept.
    let flbas = ns[26];
    let lbaf = u32::from(flbas & 0x0f) | (u32::from((flbas >> 5) & 0x03) << 4);
    // CDW10: LBAF bits 3:0 (and 13:12 for the upper bits), SES (bits 11:9) = 1, user data erase.
    let cdw10 = (lbaf & 0x0f) | ((lbaf >> 4) << 12) | (1 << 9);
    let started = Instant::now();
    sys::nvme_admin(
        f,
        sys::AdminCmd {
            opcode: 0x80,
            nsid: if all { 0xffff_ffff } else { nsid },
            cdw10,
            cdw11: 0,
            // A format of a large drive takes minutes.
            timeout_ms: 4 * 3600 * 1000,
        },
        None,
    )
    .map_err(|e| Trouble::Unsupported(format!("Format NVM refused ({e})")))?;
    let took = started.elapsed().as_secs_f64();
    sys::flush_buffers(f).ok();
    let v = verify(path, f, size).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Trouble::Io(std::io::Error::other(format!(
                "after Format NVM the namespace does not read back zeros ({e})"
            )))
        } else {
            e.into()
        }
    })?;
    Ok(format!(
        "NVMe Format NVM, user data erase (SES=1), namespace {nsid}{} in {took:.1} s; {v}",
        if all {
            " (the controller formats all)"
        } else {
            ""
        }
    ))
}

/// The byte ranges read back after a whole-disk method: the first and last MiB, and
/// [`SAMPLES`] blocks spread over the rest at offsets that differ from run to run.
fn sample_ranges(size: u64, seed: u64) -> Vec<Range<u64>> {
    let mut out = ends(0, size).to_vec();
    if size > 2 * MIB + SAMPLE_LEN {
        let span = size - 2 * MIB - SAMPLE_LEN;
        let mut x = seed | 1;
        for k in 0..SAMPLES {
            // xorshift: a spread that is not the same on every disk and run
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = span / SAMPLES;
            let at = MIB + k * slot + x % slot.max(1);
            let at = at - at % 4096;
            out.push(at..at + SAMPLE_LEN);
        }
    }
    merge(out)
}

/// Reads the sample ranges back from the device, past the page cache (O_DIRECT where the file
/// takes it, else after dropping its cached pages); InvalidData names the first range that is
/// not all zeros.
fn verify(path: &Path, f: &File, size: u64) -> std::io::Result<String> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9);
    let ranges = sample_ranges(size, seed);
    let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let mut aligned = AlignedBuf::new(MIB as usize);
    for r in &ranges {
        let mut at = r.start;
        while at < r.end {
            let n = ((r.end - at) as usize).min(aligned.len());
            let got = match &direct {
                Ok(d) if at.is_multiple_of(4096) && n.is_multiple_of(4096) => {
                    d.read_at(&mut aligned.as_mut()[..n], at)
                }
                _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            };
            let chunk: Vec<u8> = match got {
                Ok(k) if k == n => aligned.as_mut()[..n].to_vec(),
                _ => {
                    // No O_DIRECT here (a file on tmpfs, an unaligned tail): drop the cached
                    // pages and read through the cache.
                    drop_cached(f);
                    let mut v = vec![0u8; n];
                    let mut r = f.try_clone()?;
                    r.seek(SeekFrom::Start(at))?;
                    r.read_exact(&mut v)?;
                    v
                }
            };
            if let Some(off) = chunk.iter().position(|b| *b != 0) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("byte {} is {:#04x}, not zero", at + off as u64, chunk[off]),
                ));
            }
            at += n as u64;
        }
    }
    Ok(format!(
        "{} samples ({} KiB) read back past the page cache: all zero",
        ranges.len(),
        bytes / 1024
    ))
}

fn drop_cached(f: &File) {
    if sys::flush_buffers(f).is_err() {
        sys::drop_cached_pages(f);
    }
}

/// A buffer aligned to 4 KiB, as O_DIRECT reads need.
struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + 4096];
        let off = (4096 - (v.as_ptr() as usize % 4096)) % 4096;
        AlignedBuf { v, off, len }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0xa5u8; size as usize]).unwrap();
        p
    }

    fn plan(method: WipeMethod, fallback: WipeFallback) -> Plan {
        Plan { method, fallback }
    }

    #[test]
    fn quick_then_full() {
        let dir = tempfile::tempdir().unwrap();
        let p = disk(dir.path(), "vda", 5 * MIB + 512);
        let quick = plan(WipeMethod::Quick, WipeFallback::Fail);
        let w = wipe("vda", Some("S1"), &p, quick, |_, _| {});
        assert_eq!(w.error, None);
        assert_eq!(
            (w.size_bytes, w.zeroed_bytes, w.full, w.method),
            (5 * MIB + 512, 2 * MIB, false, Some(WipeMethod::Quick))
        );
        assert_eq!(w.serial.as_deref(), Some("S1"));
        assert!(w.verification.unwrap().contains("the rest left as it was"));
        let data = std::fs::read(&p).unwrap();
        assert!(data[..MIB as usize].iter().all(|b| *b == 0));
        assert!(data[data.len() - MIB as usize..].iter().all(|b| *b == 0));
        assert_eq!(data[2 * MIB as usize], 0xa5, "the middle stays");

        let w = wipe(
            "vda",
            None,
            &p,
            plan(WipeMethod::Full, WipeFallback::Fail),
            |_, _| {},
        );
        assert_eq!(w.error, None);
        assert_eq!((w.zeroed_bytes, w.full), (5 * MIB + 512, true));
        assert!(w.verification.unwrap().contains("all zero"));
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));

        // A disk smaller than 2 MiB: zeroed once, not twice.
        let small = disk(dir.path(), "tiny", MIB + 100);
        let w = wipe("tiny", None, &small, quick, |_, _| {});
        assert_eq!(w.zeroed_bytes, MIB + 100);
        assert!(std::fs::read(&small).unwrap().iter().all(|b| *b == 0));
    }

    /// A plain file takes no discard and is no NVMe namespace: the fallback decides.
    #[test]
    fn discard_and_secure_fall_back_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        for method in [WipeMethod::Discard, WipeMethod::Secure] {
            let p = disk(dir.path(), "sda", 8 * MIB);
            let w = wipe("sda", None, &p, plan(method, WipeFallback::Full), |_, _| {});
            assert_eq!(w.error, None, "{method}");
            assert_eq!(w.method, Some(WipeMethod::Full), "{method}");
            let v = w.verification.unwrap();
            assert!(
                v.contains("overwritten instead") && v.contains("all zero"),
                "{v}"
            );
            assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));

            let p = disk(dir.path(), "sdb", 8 * MIB);
            let w = wipe("sdb", None, &p, plan(method, WipeFallback::Fail), |_, _| {});
            assert!(
                w.error
                    .as_deref()
                    .unwrap()
                    .contains("the fallback is to fail"),
                "{w:?}"
            );
            assert_eq!(
                std::fs::read(&p).unwrap()[4 * MIB as usize],
                0xa5,
                "untouched"
            );
        }
    }

    /// A loop device over a file, detached when dropped.
    struct Loop {
        dev: String,
    }

    impl Loop {
        fn new(file: &Path) -> Loop {
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .arg(file)
                .output()
                .expect("losetup (util-linux) is needed");
            assert!(
                out.status.success(),
                "losetup failed (the tests run as root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Loop {
                dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            }
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            std::process::Command::new("losetup")
                .args(["-d", &self.dev])
                .status()
                .ok();
        }
    }

    /// A real block device (a loop device): discard punches the blocks out of its file and the
    /// device reads back zeros, so a marker in the middle is gone; full overwrites and reads
    /// back past the page cache (O_DIRECT).
    #[test]
    fn discard_and_full_on_a_block_device() {
        let dir = tempfile::tempdir().unwrap();
        for method in [WipeMethod::Discard, WipeMethod::Full] {
            let p = disk(dir.path(), "backing", 32 * MIB);
            let marker = b"PLINTH-MARKER-IN-THE-MIDDLE";
            let mut data = std::fs::read(&p).unwrap();
            data[16 * MIB as usize..16 * MIB as usize + marker.len()].copy_from_slice(marker);
            std::fs::write(&p, &data).unwrap();
            let l = Loop::new(&p);
            let w = wipe(
                "loop",
                None,
                Path::new(&l.dev),
                plan(method, WipeFallback::Fail),
                |_, _| {},
            );
            assert_eq!(w.error, None, "{method}");
            assert_eq!(w.method, Some(method));
            assert_eq!((w.zeroed_bytes, w.full), (32 * MIB, true));
            let v = w.verification.unwrap();
            assert!(v.contains("all zero"), "{v}");
            if method == WipeMethod::Discard {
                assert!(v.contains("discard"), "{v}");
            }
            drop(l);
            let after = std::fs::read(&p).unwrap();
            assert!(
                after.iter().all(|b| *b == 0),
                "{method}: the file is zero, marker gone"
            );
        }
    }

    /// The read-back finds what a wipe left.
    #[test]
    fn verification_finds_a_byte_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, vec![0u8; 16 * MIB as usize]).unwrap();
        let f = File::open(&p).unwrap();
        assert!(verify(&p, &f, 16 * MIB).is_ok());
        // A byte in the last MiB is always read back.
        let mut data = vec![0u8; 16 * MIB as usize];
        data[16 * MIB as usize - 10] = 7;
        std::fs::write(&p, &data).unwrap();
        let e = verify(&p, &f, 16 * MIB).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("is 0x07"), "{e}");
        // The samples cover the first and last MiB and 64 blocks, aligned, inside the disk.
        let r = sample_ranges(1 << 34, 42);
        assert!(r.len() >= 60 && r[0].start == 0 && r.last().unwrap().end == 1 << 34);
        assert!(r.iter().all(|x| x.start % 4096 == 0 && x.end <= 1 << 34));
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

        let w = wipe(
            "sda",
            None,
            &p,
            plan(WipeMethod::Quick, WipeFallback::Fail),
            |_, _| {},
        );
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
        let quick = plan(WipeMethod::Quick, WipeFallback::Fail);
        let w = wipe("sdz", None, Path::new("/nonexistent/sdz"), quick, |_, _| {});
        assert!(w.error.unwrap().contains("/nonexistent/sdz"));
        assert_eq!(w.zeroed_bytes, 0);
    }
}
