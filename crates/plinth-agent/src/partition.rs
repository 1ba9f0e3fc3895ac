//! Reading a disk's partition table (MBR or GPT) and appending one partition to it, for the
//! config drive that follows a deployed image. Sectors are 512 bytes. Formats:
//! - MBR: the partition table at byte 446 of sector 0, four 16-byte entries, 0x55AA at 510
//!   (UEFI 2.x §5.2.1, "Legacy MBR").
//! - GPT: a protective MBR with one type-0xEE entry (§5.2.3), the primary header at LBA 1 and
//!   its entry array after it, a backup entry array and header in the disk's last sectors
//!   (§5.3.2 header, §5.3.3 entries). All integers are little-endian.
//!
//! Offsets and lengths of [`Partition`] are in bytes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MBR_PROTECTIVE: u8 = 0xee;
/// MBR types of extended partitions (containers of logical ones), which [`read`] skips.
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
/// The MBR type of the added partition: 0x0C, "FAT32 with LBA addressing". Linux and cloud-init
/// look at the filesystem, not this byte, so any FAT type works; 0x0C is what `parted mkpart
/// fat32` writes and what OpenStack Ironic's config-drive partition uses, and unlike 0x01 (FAT12)
/// it does not claim CHS addressing within the first 32 MiB.
const MBR_TYPE_FAT: u8 = 0x0c;
/// Microsoft basic data partition, EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, as stored on disk: the
/// first three fields little-endian, the last two as written (UEFI 2.x Appendix A, §5.3.3).
const GPT_TYPE_BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers it: the MBR slot or the GPT entry index, plus one.
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
}

/// One MBR entry (UEFI 2.x Table 5-2): boot indicator, CHS start, type, CHS end, LBA, sectors.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    kind: u8,
    lba: u32,
    sectors: u32,
}

/// Whether a table's CRC matches. Fuzz builds (`--cfg fuzzing`) take every CRC as right, so
/// that the fuzzer reaches the code behind the checks instead of guessing checksums.
fn crc_ok(computed: u32, stored: u32) -> bool {
    cfg!(fuzzing) || computed == stored
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads `len` bytes at `offset`; `None` if the disk ends before that.
fn read_at(f: &File, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len];
    match f.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The four primary entries, or `None` without the 0x55AA signature or with a boot indicator
/// other than 0x00/0x80 (then sector 0 is something else, e.g. a filesystem's boot sector).
fn mbr_entries(sector0: &[u8]) -> Option<[MbrEntry; 4]> {
    if sector0[510..512] != [0x55, 0xaa] {
        return None;
    }
    let mut out = [MbrEntry {
        status: 0,
        kind: 0,
        lba: 0,
        sectors: 0,
    }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let at = 446 + 16 * i;
        *e = MbrEntry {
            status: sector0[at],
            kind: sector0[at + 4],
            lba: le32(sector0, at + 8),
            sectors: le32(sector0, at + 12),
        };
        if e.status & 0x7f != 0 {
            return None;
        }
    }
    Some(out)
}

/// A GPT header (UEFI 2.x Table 5-5), the fields this module uses.
#[derive(Debug, Clone)]
struct GptHeader {
    raw: Vec<u8>,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
}

impl GptHeader {
    fn entries_bytes(&self) -> usize {
        self.entry_count as usize * self.entry_size as usize
    }
    /// Writes the mutable fields back into `raw` and recomputes the header CRC (over HeaderSize
    /// bytes with the CRC field zeroed, §5.3.2).
    fn encode(&mut self, my_lba: u64, entries_crc: u32) -> Vec<u8> {
        let r = &mut self.raw;
        r[24..32].copy_from_slice(&my_lba.to_le_bytes());
        r[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        r[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        r[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        r[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        r[16..20].fill(0);
        let crc = crc32fast::hash(&r[..le32(r, 12) as usize]);
        r[16..20].copy_from_slice(&crc.to_le_bytes());
        r.clone()
    }
}

/// The primary GPT header at LBA 1 and its entry array, if both are valid: signature, header
/// CRC, MyLBA = 1, sane sizes and the entry array's CRC (§5.3.2 "GPT Header validity").
fn read_gpt(f: &File) -> io::Result<Option<(GptHeader, Vec<u8>)>> {
    let Some(raw) = read_at(f, SECTOR, SECTOR as usize)? else {
        return Ok(None);
    };
    let size = le32(&raw, 12) as usize;
    if &raw[..8] != GPT_SIGNATURE || !(92..=SECTOR as usize).contains(&size) {
        return Ok(None);
    }
    let mut zeroed = raw[..size].to_vec();
    zeroed[16..20].fill(0);
    if !crc_ok(crc32fast::hash(&zeroed), le32(&raw, 16)) || le64(&raw, 24) != 1 {
        return Ok(None);
    }
    let h = GptHeader {
        alternate_lba: le64(&raw, 32),
        first_usable: le64(&raw, 40),
        last_usable: le64(&raw, 48),
        entries_lba: le64(&raw, 72),
        entry_count: le32(&raw, 80),
        entry_size: le32(&raw, 84),
        raw,
    };
    // Entries are 128 * 2^n bytes; more than 1 MiB of them is not a table anyone wrote.
    if h.entry_size < 128
        || !h.entry_size.is_power_of_two()
        || h.entries_bytes() > MIB as usize
        || h.entries_lba < 2
    {
        return Ok(None);
    }
    // Every number in a table is the disk's (a tenant's image's) to choose: checked.
    let Some(at) = h.entries_lba.checked_mul(SECTOR) else {
        return Ok(None);
    };
    let Some(entries) = read_at(f, at, h.entries_bytes())? else {
        return Ok(None);
    };
    if !crc_ok(crc32fast::hash(&entries), le32(&h.raw, 88)) {
        return Ok(None);
    }
    Ok(Some((h, entries)))
}

/// The used GPT entries as partitions (an entry is unused when its type GUID is all zeros).
/// An entry whose LBAs no disk has (bytes past 2^64) is left out.
fn gpt_partitions(h: &GptHeader, entries: &[u8]) -> Vec<Partition> {
    entries
        .chunks_exact(h.entry_size as usize)
        .enumerate()
        .filter(|(_, e)| e[..16] != [0; 16])
        .filter_map(|(i, e)| {
            let (first, last) = (le64(e, 32), le64(e, 40));
            Some(Partition {
                number: i as u32 + 1,
                start: first.checked_mul(SECTOR)?,
                len: last
                    .checked_add(1)?
                    .saturating_sub(first)
                    .checked_mul(SECTOR)?,
            })
        })
        .collect()
}

/// The disk's partitions, or `None` if it has no valid table. GPT when sector 0 is a protective
/// MBR and LBA 1 a valid GPT header; a protective MBR without a valid GPT is no table. Otherwise
/// the MBR's primary partitions; extended partitions and their logical ones are left out.
pub fn read(f: &mut File) -> io::Result<Option<(Scheme, Vec<Partition>)>> {
    let Some(sector0) = read_at(f, 0, SECTOR as usize)? else {
        return Ok(None);
    };
    let Some(mbr) = mbr_entries(&sector0) else {
        return Ok(None);
    };
    if mbr.iter().any(|e| e.kind == MBR_PROTECTIVE) {
        return Ok(read_gpt(f)?.map(|(h, e)| (Scheme::Gpt, gpt_partitions(&h, &e))));
    }
    let parts = mbr
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind != 0 && e.sectors != 0 && !MBR_EXTENDED.contains(&e.kind))
        .map(|(i, e)| Partition {
            number: i as u32 + 1,
            start: e.lba as u64 * SECTOR,
            len: e.sectors as u64 * SECTOR,
        })
        .collect();
    Ok(Some((Scheme::Mbr, parts)))
}

/// Appends a partition of `len` bytes named `name` (GPT only) after the last one and no
/// earlier than byte `after` (the end of an image just written, whose last bytes need not be in
/// a partition), its start aligned up to 1 MiB, on a disk of `disk_size` bytes, and fsyncs. With GPT the backup table is
/// moved to the disk's end first: an image written to a bigger disk leaves it at the image's end.
/// Errors say what was wrong; the caller, who knows the disk's name, prefixes it.
pub fn add_partition(
    f: &mut File,
    disk_size: u64,
    after: u64,
    len: u64,
    name: &str,
) -> Result<Partition, String> {
    if len == 0 || !len.is_multiple_of(SECTOR) {
        return Err(format!(
            "new partition of {len} bytes: must be a positive multiple of {SECTOR}"
        ));
    }
    let sector0 = read_at(f, 0, SECTOR as usize)
        .map_err(io("reading the MBR"))?
        .ok_or("the disk is smaller than one sector")?;
    let mbr = mbr_entries(&sector0).ok_or("the disk has no partition table")?;
    let part = if mbr.iter().any(|e| e.kind == MBR_PROTECTIVE) {
        let (h, entries) = read_gpt(f)
            .map_err(io("reading the GPT"))?
            .ok_or("the disk has a protective MBR but no valid GPT header at LBA 1")?;
        add_gpt(
            f,
            sector0,
            h,
            entries,
            Place {
                disk_size,
                after,
                len,
            },
            name,
        )?
    } else {
        add_mbr(
            f,
            sector0,
            &mbr,
            Place {
                disk_size,
                after,
                len,
            },
        )?
    };
    f.sync_all().map_err(io("fsync"))?;
    Ok(part)
}

/// Where a new partition goes: `len` bytes, no earlier than `after`, on a `disk_size` disk.
#[derive(Debug, Clone, Copy)]
struct Place {
    disk_size: u64,
    after: u64,
    len: u64,
}

/// Turns an I/O error into this module's error string, saying what was being done.
fn io(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to).saturating_mul(to)
}

/// CHS address of `lba` in the 255-head, 63-sector geometry every tool assumes today, or
/// 1023/254/63 (bytes FE FF FF) beyond cylinder 1023, the convention for "use the LBA fields".
fn chs(lba: u64) -> [u8; 3] {
    let c = lba / (255 * 63);
    if c > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let h = (lba / 63) % 255;
    let s = lba % 63 + 1;
    [h as u8, (s as u8) | ((c >> 2) as u8 & 0xc0), c as u8]
}

fn add_mbr(
    f: &File,
    mut sector0: Vec<u8>,
    mbr: &[MbrEntry; 4],
    Place {
        disk_size,
        after,
        len,
    }: Place,
) -> Result<Partition, String> {
    let slot = mbr
        .iter()
        .position(|e| e.kind == 0)
        .ok_or("all four primary MBR partition slots are in use")?;
    // After every used entry, extended containers included: logical partitions live inside them.
    let end = mbr
        .iter()
        .filter(|e| e.kind != 0)
        .map(|e| (e.lba as u64 + e.sectors as u64) * SECTOR)
        .max()
        .unwrap_or(0);
    let start = align_up(end.max(MIB).max(after), MIB);
    if start + len > disk_size {
        return Err(format!(
            "a {len}-byte partition at byte {start} does not fit on the {disk_size}-byte disk"
        ));
    }
    let (lba, sectors) = (start / SECTOR, len / SECTOR);
    let (Ok(lba32), Ok(sectors32)) = (u32::try_from(lba), u32::try_from(sectors)) else {
        return Err(format!(
            "a partition at byte {start} of {len} bytes is beyond MBR's 2 TiB limit"
        ));
    };
    let e = &mut sector0[446 + 16 * slot..446 + 16 * (slot + 1)];
    e[0] = 0; // not bootable
    e[1..4].copy_from_slice(&chs(lba));
    e[4] = MBR_TYPE_FAT;
    e[5..8].copy_from_slice(&chs(lba + sectors - 1));
    e[8..12].copy_from_slice(&lba32.to_le_bytes());
    e[12..16].copy_from_slice(&sectors32.to_le_bytes());
    f.write_all_at(&sector0, 0)
        .map_err(|e| format!("writing the MBR: {e}"))?;
    Ok(Partition {
        number: slot as u32 + 1,
        start,
        len,
    })
}

/// A random (version 4) GUID as stored on disk: Data3, little-endian at bytes 6..8, holds the
/// version in its top nibble; byte 8 holds the RFC 4122 variant (UEFI 2.x Appendix A).
fn random_guid() -> Result<[u8; 16], String> {
    let mut g = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut g))
        .map_err(|e| format!("reading /dev/urandom for a partition GUID: {e}"))?;
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(g)
}

fn add_gpt(
    f: &File,
    mut sector0: Vec<u8>,
    mut h: GptHeader,
    mut entries: Vec<u8>,
    Place {
        disk_size,
        after,
        len,
    }: Place,
    name: &str,
) -> Result<Partition, String> {
    let disk_sectors = disk_size / SECTOR;
    let entries_sectors = (h.entries_bytes() as u64).div_ceil(SECTOR);
    // The backup header in the last sector, its entry array just before it (§5.3.1).
    let new_alternate = disk_sectors
        .checked_sub(1)
        .filter(|a| *a >= h.alternate_lba && *a > entries_sectors)
        .ok_or_else(|| {
            format!(
                "the {disk_size}-byte disk is smaller than its GPT says (backup header at LBA {})",
                h.alternate_lba
            )
        })?;
    let backup_entries_lba = new_alternate - entries_sectors;
    let last_usable = backup_entries_lba - 1;

    let esz = h.entry_size as usize;
    let used: Vec<Partition> = gpt_partitions(&h, &entries);
    let slot = entries
        .chunks_exact(esz)
        .position(|e| e[..16] == [0; 16])
        .ok_or_else(|| format!("all {} GPT entries are in use", h.entry_count))?;
    let end = used
        .iter()
        .map(|p| p.start.saturating_add(p.len))
        .max()
        .unwrap_or(0)
        .max(h.first_usable.saturating_mul(SECTOR))
        .max(after);
    let start = align_up(end, MIB);
    let (first_lba, last_lba) = (start / SECTOR, start.saturating_add(len) / SECTOR - 1);
    if last_lba > last_usable || start.checked_add(len).is_none() {
        return Err(format!(
            "a {len}-byte partition at byte {start} does not fit on the {disk_size}-byte disk \
             (last usable byte {})",
            (last_usable + 1) * SECTOR
        ));
    }
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > 36 {
        return Err(format!(
            "partition name {name:?} is longer than GPT's 36 UTF-16 units"
        ));
    }

    // The new entry (§5.3.3 Table 5-6): type, unique GUID, first and last LBA (inclusive),
    // attributes (none), name in UTF-16LE padded with zeros.
    let e = &mut entries[slot * esz..(slot + 1) * esz];
    e.fill(0);
    e[..16].copy_from_slice(&GPT_TYPE_BASIC_DATA);
    e[16..32].copy_from_slice(&random_guid()?);
    e[32..40].copy_from_slice(&first_lba.to_le_bytes());
    e[40..48].copy_from_slice(&last_lba.to_le_bytes());
    for (i, u) in units.iter().enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);

    let old_alternate = h.alternate_lba;
    h.alternate_lba = new_alternate;
    h.last_usable = last_usable;
    let primary_entries_lba = h.entries_lba;

    // Backup first, then the primary: a crash in between leaves a valid primary that still
    // describes the old layout (and a backup tools can rebuild).
    let mut backup = h.clone();
    backup.alternate_lba = 1;
    backup.entries_lba = backup_entries_lba;
    let backup_raw = backup.encode(new_alternate, entries_crc);
    f.write_all_at(&entries, backup_entries_lba * SECTOR)
        .map_err(io("writing the backup GPT entries"))?;
    f.write_all_at(&backup_raw, new_alternate * SECTOR)
        .map_err(io("writing the backup GPT header"))?;
    f.sync_data().map_err(io("fsync"))?;
    let primary_raw = h.encode(1, entries_crc);
    f.write_all_at(&entries, primary_entries_lba * SECTOR)
        .map_err(io("writing the GPT entries"))?;
    f.write_all_at(&primary_raw, SECTOR)
        .map_err(io("writing the GPT header"))?;

    // The stale backup header at the image's end: zeroed so that nothing finds two backups,
    // unless it lies inside a partition (then it is that partition's data, not ours to touch).
    let new = Partition {
        number: slot as u32 + 1,
        start,
        len,
    };
    let stale = old_alternate * SECTOR;
    let inside = |p: &Partition| (p.start..p.start.saturating_add(p.len)).contains(&stale);
    if old_alternate != new_alternate && old_alternate > 1 && !used.iter().chain([&new]).any(inside)
    {
        f.write_all_at(&[0u8; SECTOR as usize], stale)
            .map_err(io("zeroing the old backup GPT header"))?;
    }

    // The protective MBR's entry covers the whole disk, capped at what 32 bits hold (§5.2.3).
    let size = (disk_sectors - 1).min(u32::MAX as u64) as u32;
    for i in 0..4 {
        let at = 446 + 16 * i;
        if sector0[at + 4] == MBR_PROTECTIVE {
            sector0[at + 5..at + 8].copy_from_slice(&chs(disk_sectors - 1));
            sector0[at + 12..at + 16].copy_from_slice(&size.to_le_bytes());
        }
    }
    f.write_all_at(&sector0, 0)
        .map_err(io("writing the protective MBR"))?;
    Ok(new)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Found by the `partitions` fuzz target: LBAs no disk has overflowed byte offsets (a
    /// panic in debug builds, a wrapped offset in release ones). Such entries are left out.
    #[test]
    fn entries_with_impossible_lbas_are_left_out() {
        let h = GptHeader {
            raw: vec![0; 92],
            alternate_lba: 2047,
            first_usable: 34,
            last_usable: 2014,
            entries_lba: 2,
            entry_count: 3,
            entry_size: 128,
        };
        let mut entries = vec![0u8; 3 * 128];
        let mut put = |i: usize, first: u64, last: u64| {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&GPT_TYPE_BASIC_DATA);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        };
        put(0, 2048, 4095);
        put(1, u64::MAX / 2, u64::MAX / 2 + 10);
        put(2, 100, u64::MAX);
        let parts = gpt_partitions(&h, &entries);
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert_eq!(
            (parts[0].start, parts[0].len),
            (2048 * SECTOR, 2048 * SECTOR)
        );
        assert_eq!(
            align_up(u64::MAX - 5, MIB),
            u64::MAX,
            "saturates (and then fits nowhere)"
        );
    }
    use crate::seed::tools::{blkid, ok, run};
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// A disk image of `size` bytes partitioned by `sfdisk` from `script`.
    pub(crate) fn sfdisk_disk(path: &Path, size: u64, script: &str) {
        File::create(path).unwrap().set_len(size).unwrap();
        sfdisk(path, script);
    }

    /// Partitions the existing disk image at `path` with `sfdisk` from `script`.
    pub(crate) fn sfdisk(path: &Path, script: &str) {
        let mut child = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run sfdisk ({e}): install the Debian package fdisk")
            });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sfdisk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn gpt_image(path: &Path) {
        sfdisk_disk(
            path,
            32 * MIB,
            "label: gpt\nstart=2048, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n\
             start=22528, size=42974, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n",
        );
    }

    fn sfdisk_json(path: &str) -> serde_json::Value {
        serde_json::from_str(&ok("sfdisk", "fdisk", &["--json", path])).unwrap()
    }

    /// (number, start, len) of each partition sfdisk lists, in bytes.
    fn sfdisk_parts(path: &str) -> Vec<Partition> {
        let j = sfdisk_json(path);
        j["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let node = p["node"].as_str().unwrap();
                let number = node.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap();
                Partition {
                    number: number.parse().unwrap(),
                    start: p["start"].as_u64().unwrap() * SECTOR,
                    len: p["size"].as_u64().unwrap() * SECTOR,
                }
            })
            .collect()
    }

    fn open(p: &Path) -> File {
        File::options().read(true).write(true).open(p).unwrap()
    }

    fn seed() -> Vec<u8> {
        let files: [(&str, &[u8]); 2] = [("meta-data", b"instance-id: x\n"), ("user-data", b"")];
        crate::seed::fat_image("cidata", 42, &files, 2 * MIB).unwrap()
    }

    fn assert_seed_at(path: &str, start: u64) {
        let out = blkid(path, start);
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.lines().any(|l| l == "LABEL=cidata"), "{out}");
        assert!(out.lines().any(|l| l == "TYPE=vfat"), "{out}");
    }

    #[test]
    fn gpt_grows_to_the_disk_and_gets_a_seed_partition() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gpt.img");
        let ps = p.to_str().unwrap();
        gpt_image(&p);
        let mut f = open(&p);
        f.set_len(96 * MIB).unwrap();
        let before = read(&mut f).unwrap().unwrap();
        assert_eq!(before.0, Scheme::Gpt);
        assert_eq!(before.1.len(), 2);

        let part = add_partition(&mut f, 96 * MIB, 0, 2 * MIB, "cidata").unwrap();
        // The image's last partition ends at its last usable LBA, 32 MiB - 34 sectors (the
        // fixture fills the image, as cloud images' root partitions do).
        assert_eq!(
            part,
            Partition {
                number: 3,
                start: 32 * MIB,
                len: 2 * MIB
            }
        );
        let (scheme, parts) = read(&mut f).unwrap().unwrap();
        assert_eq!(scheme, Scheme::Gpt);
        assert_eq!(parts, sfdisk_parts(ps));
        assert_eq!(parts[2], part);

        let j = sfdisk_json(ps);
        let t = &j["partitiontable"];
        assert_eq!(t["lastlba"], 96 * MIB / SECTOR - 34, "{j}");
        let new = &t["partitions"][2];
        assert_eq!(new["type"], "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "{j}");
        assert_eq!(new["name"], "cidata", "{j}");
        let uuid = new["uuid"].as_str().unwrap();
        assert_eq!(&uuid[14..15], "4", "a version 4 GUID: {uuid}");

        let verify = ok("sgdisk", "gdisk", &["-v", ps]);
        assert!(verify.contains("No problems found"), "{verify}");
        let verify = ok("sfdisk", "fdisk", &["--verify", ps]);
        assert!(verify.contains("No errors detected"), "{verify}");
        let out = run("sfdisk", "fdisk", &["--verify", ps]);
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The protective MBR now spans the disk.
        let mut mbr = vec![0u8; 512];
        f.read_exact_at(&mut mbr, 0).unwrap();
        assert_eq!(le32(&mbr, 446 + 12) as u64, 96 * MIB / SECTOR - 1);
        // The stale backup header at the image's end is gone.
        let mut old = vec![0u8; 512];
        f.read_exact_at(&mut old, 32 * MIB - SECTOR).unwrap();
        assert!(old.iter().all(|b| *b == 0));

        f.write_all_at(&seed(), part.start).unwrap();
        assert_seed_at(ps, part.start);

        // A second one goes after the first, on the next MiB; a third does not fit.
        let second = add_partition(&mut f, 96 * MIB, 0, 10 * MIB, "more").unwrap();
        assert_eq!(second.start, 34 * MIB);
        assert!(ok("sgdisk", "gdisk", &["-v", ps]).contains("No problems found"));
        let err = add_partition(&mut f, 96 * MIB, 0, 60 * MIB, "big").unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn mbr_gets_a_seed_partition() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mbr.img");
        let ps = p.to_str().unwrap();
        sfdisk_disk(
            &p,
            32 * MIB,
            "label: dos\nstart=2048, size=63488, type=83, bootable\n",
        );
        let mut f = open(&p);
        f.set_len(96 * MIB).unwrap();
        assert_eq!(
            read(&mut f).unwrap().unwrap(),
            (
                Scheme::Mbr,
                vec![Partition {
                    number: 1,
                    start: MIB,
                    len: 31 * MIB
                }]
            )
        );
        let part = add_partition(&mut f, 96 * MIB, 0, 2 * MIB, "cidata").unwrap();
        assert_eq!(
            part,
            Partition {
                number: 2,
                start: 32 * MIB,
                len: 2 * MIB
            }
        );
        let (_, parts) = read(&mut f).unwrap().unwrap();
        assert_eq!(parts, sfdisk_parts(ps));
        let j = sfdisk_json(ps);
        assert_eq!(j["partitiontable"]["partitions"][1]["type"], "c", "{j}");
        assert_eq!(
            j["partitiontable"]["partitions"][0]["bootable"], true,
            "{j}"
        );
        let out = run("sfdisk", "fdisk", &["--verify", ps]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No errors detected"),
            "{text}"
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        f.write_all_at(&seed(), part.start).unwrap();
        assert_seed_at(ps, part.start);

        let err = add_partition(&mut f, 96 * MIB, 0, 80 * MIB, "cidata").unwrap_err();
        assert!(err.contains("does not fit"), "{err}");

        // An image whose last bytes lie past its last partition: the new one starts after them.
        let third = add_partition(&mut f, 96 * MIB, 40 * MIB + 1, MIB, "more").unwrap();
        assert_eq!((third.number, third.start), (3, 41 * MIB));
        assert_eq!(read(&mut f).unwrap().unwrap().1, sfdisk_parts(ps));
    }

    #[test]
    fn full_mbr_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("full.img");
        sfdisk_disk(
            &p,
            32 * MIB,
            "label: dos\nsize=4MiB, type=83\nsize=4MiB, type=83\nsize=4MiB, type=5\nsize=4MiB, type=83\n",
        );
        let mut f = open(&p);
        // The extended partition is skipped, not misread.
        let (_, parts) = read(&mut f).unwrap().unwrap();
        assert_eq!(
            parts.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        let err = add_partition(&mut f, 32 * MIB, 0, MIB, "cidata").unwrap_err();
        assert!(err.contains("all four primary"), "{err}");
    }

    #[test]
    fn no_table_and_corrupt_gpt_are_not_tables() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blank.img");
        File::create(&p).unwrap().set_len(8 * MIB).unwrap();
        let mut f = open(&p);
        assert_eq!(read(&mut f).unwrap(), None);
        let err = add_partition(&mut f, 8 * MIB, 0, MIB, "cidata").unwrap_err();
        assert!(err.contains("no partition table"), "{err}");
        // Tiny files are not an error either.
        let tiny = dir.path().join("tiny.img");
        std::fs::write(&tiny, b"abc").unwrap();
        assert_eq!(read(&mut open(&tiny)).unwrap(), None);

        let g = dir.path().join("gpt.img");
        gpt_image(&g);
        let mut f = open(&g);
        // Flip one byte of the header's disk GUID: the header CRC no longer matches.
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, SECTOR + 60).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], SECTOR + 60).unwrap();
        assert_eq!(read(&mut f).unwrap(), None);
        let err = add_partition(&mut f, 32 * MIB, 0, MIB, "cidata").unwrap_err();
        assert!(err.contains("no valid GPT"), "{err}");
    }

    #[test]
    fn chs_matches_sfdisk() {
        // sfdisk wrote 20 21 00 for LBA 2048 (see the MBR test's fixture).
        assert_eq!(chs(2048), [0x20, 0x21, 0x00]);
        assert_eq!(chs(20 * 1024 * 1024 * 2), [0xfe, 0xff, 0xff]);
    }
}
