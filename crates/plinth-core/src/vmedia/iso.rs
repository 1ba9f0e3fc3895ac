//! A bootable ISO 9660 image with El Torito boot entries for BIOS and UEFI, written without I/O
//! as a list of extents: bytes held in memory (the volume descriptors, path tables,
//! directories, boot catalog, `grub.cfg` and the BIOS boot image with its boot-info table) and
//! ranges of files of the images root (the ESP image, the kernel, the initrd) that are read
//! only when a client asks for those bytes. So an HTTP handler answers any byte range of a
//! 50 MB ISO with a few KiB in memory and nothing written to disk, and every ISO of every boot
//! shares the kernel and initrd on disk.
//!
//! Why a writer of its own rather than xorriso at run time: the ISO differs per boot only by
//! its `grub.cfg` (the agent token is in it), a process per boot writing 50 MB to a temporary
//! file is what this avoids, and the subset needed (two directories, three files, a boot
//! catalog with two entries) is small enough to check entirely against `xorriso` and
//! `isoinfo` in the tests.
//!
//! The layout (2048-byte sectors):
//!
//! | sector | content |
//! |---|---|
//! | 0-15 | system area (zeros) |
//! | 16 | primary volume descriptor |
//! | 17 | boot record (El Torito), pointing at the boot catalog |
//! | 18 | volume descriptor set terminator |
//! | 19 | L path table (little-endian) |
//! | 20 | M path table (big-endian) |
//! | 21 | root directory (`plinth`) |
//! | 22 | `/plinth` directory (`grub.cfg`, `initrd`, `vmlinuz`) |
//! | 23 | boot catalog: validation entry, BIOS no-emulation entry (load size 4), EFI section (platform 0xEF) |
//! | 24- | `grub.cfg`, BIOS image, ESP image, kernel, initrd, each from a sector boundary |
//! | last 150 | zeros (as mkisofs pads: GRUB on SeaBIOS misreads the end of the last file without) |
//!
//! File names are plain ISO 9660 records, lower case and without a `;1` version: GRUB's
//! iso9660 driver and Linux read them as they are, so no Rock Ridge or Joliet is needed.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};

pub const SECTOR: u64 = 2048;
const PVD_LBA: u32 = 16;
const BOOT_RECORD_LBA: u32 = 17;
const TERMINATOR_LBA: u32 = 18;
const L_PATH_LBA: u32 = 19;
const M_PATH_LBA: u32 = 20;
const ROOT_LBA: u32 = 21;
const PLINTH_LBA: u32 = 22;
const CATALOG_LBA: u32 = 23;
const FIRST_FILE_LBA: u32 = 24;
/// The BIOS entry loads this many 512-byte sectors: GRUB's cdboot.img loads the rest itself
/// (with the boot-info table's length).
const BIOS_LOAD_SECTORS: u16 = 4;
/// Zero sectors after the last file, inside the volume (as mkisofs pads by default): GRUB on
/// SeaBIOS reads the tail of the last file wrong without them (the initrd's last bytes came in
/// corrupt and the kernel's unpacking failed).
const PAD_SECTORS: u64 = 150;
/// The largest file an ISO 9660 directory record describes in one extent.
const MAX_FILE: u64 = u32::MAX as u64;

/// A file of the images root, by path and size (as stat-ed by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub path: PathBuf,
    pub len: u64,
}

/// What goes into one ISO.
#[derive(Debug, Clone)]
pub struct IsoInput {
    /// The volume label (upper-cased, at most 32 d-characters).
    pub volume_id: String,
    /// When the volume was made (its descriptors' and directories' dates).
    pub created: DateTime<Utc>,
    /// `/plinth/grub.cfg`.
    pub grub_cfg: Vec<u8>,
    /// The El Torito BIOS image (GRUB's cdboot + core), whole: its boot-info table is patched.
    pub bios_image: Vec<u8>,
    /// The UEFI ESP image (a FAT file system with EFI/BOOT/BOOTX64.EFI).
    pub efi_image: FileRef,
    pub kernel: FileRef,
    pub initrd: FileRef,
}

/// Why an ISO cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    #[error("the BIOS boot image is {0} bytes: too small for an El Torito boot-info table")]
    BiosImageTooSmall(usize),
    #[error("{0} is larger than an ISO 9660 file may be (4 GiB)")]
    TooLarge(String),
}

/// Where one extent's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
    /// A file of the images root, from `offset`.
    File { path: PathBuf, offset: u64 },
    /// Zeros (padding to a sector boundary).
    Zeros,
}

/// One extent of the image: `len` bytes at `start`.
#[derive(Debug, Clone)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub source: Source,
}

/// A part of a requested range: what to send, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slice<'a> {
    Bytes(&'a [u8]),
    /// `len` bytes of `path` from `offset`.
    File {
        path: &'a std::path::Path,
        offset: u64,
        len: u64,
    },
    Zeros(u64),
}

/// A whole ISO as extents that cover `0..len` without gaps.
#[derive(Debug, Clone)]
pub struct IsoImage {
    extents: Vec<Extent>,
    len: u64,
}

impl IsoImage {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The slices that make up `range` (clamped to the image), in order.
    pub fn slices(&self, range: Range<u64>) -> Vec<Slice<'_>> {
        let end = range.end.min(self.len);
        let mut out = Vec::new();
        let mut pos = range.start;
        // Extents are sorted by start and contiguous: find the first one holding `pos`.
        let first = self.extents.partition_point(|e| e.start + e.len <= pos);
        for e in &self.extents[first..] {
            if pos >= end {
                break;
            }
            let within = pos - e.start;
            let n = (e.len - within).min(end - pos);
            out.push(match &e.source {
                Source::Bytes(b) => Slice::Bytes(&b[within as usize..(within + n) as usize]),
                Source::File { path, offset } => Slice::File {
                    path,
                    offset: offset + within,
                    len: n,
                },
                Source::Zeros => Slice::Zeros(n),
            });
            pos += n;
        }
        out
    }
}

/// The bytes of sector `n` in the in-memory head.
fn sector(n: u32) -> Range<usize> {
    let s = n as usize * SECTOR as usize;
    s..s + SECTOR as usize
}

fn sectors(len: u64) -> u64 {
    len.div_ceil(SECTOR)
}

fn both_u32(b: &mut [u8], v: u32) {
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..8].copy_from_slice(&v.to_be_bytes());
}

fn both_u16(b: &mut [u8], v: u16) {
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..4].copy_from_slice(&v.to_be_bytes());
}

/// A 7-byte directory record date.
fn dir_date(t: &DateTime<Utc>) -> [u8; 7] {
    [
        (t.year() - 1900).clamp(0, 255) as u8,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        0, // GMT offset in 15-minute units
    ]
}

/// A 17-byte volume descriptor date ("YYYYMMDDHHMMSScc" and the GMT offset).
fn vd_date(t: Option<&DateTime<Utc>>) -> [u8; 17] {
    let mut out = [b'0'; 17];
    out[16] = 0;
    if let Some(t) = t {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            t.year().clamp(0, 9999),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        out[..16].copy_from_slice(s.as_bytes());
    }
    out
}

/// A directory record: `name` is `\0` for ".", `\x01` for "..".
fn dir_record(name: &[u8], lba: u32, len: u32, dir: bool, t: &DateTime<Utc>) -> Vec<u8> {
    let mut n = 33 + name.len();
    n += n % 2;
    let mut r = vec![0u8; n];
    r[0] = n as u8;
    both_u32(&mut r[2..10], lba);
    both_u32(&mut r[10..18], len);
    r[18..25].copy_from_slice(&dir_date(t));
    r[25] = if dir { 2 } else { 0 };
    both_u16(&mut r[28..32], 1);
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    r
}

fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = text.bytes().take(len).collect();
    v.resize(len, b' ');
    v
}

/// The volume label as d-characters (A-Z, 0-9, _), at most 32.
fn volume_label(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| c.to_ascii_uppercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    if v.is_empty() { "PLINTH".to_owned() } else { v }
}

/// The checksum of the boot-info table: the sum of the image's 32-bit little-endian words
/// from byte 64 on (a short last word zero-padded).
pub fn boot_info_checksum(image: &[u8]) -> u32 {
    image
        .get(64..)
        .unwrap_or_default()
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .fold(0u32, u32::wrapping_add)
}

/// Writes the ISO's layout for `input`.
pub fn build(input: IsoInput) -> Result<IsoImage, IsoError> {
    if input.bios_image.len() < 64 {
        return Err(IsoError::BiosImageTooSmall(input.bios_image.len()));
    }
    for (name, len) in [
        ("the ESP image", input.efi_image.len),
        ("the kernel", input.kernel.len),
        ("the initrd", input.initrd.len),
        ("the BIOS image", input.bios_image.len() as u64),
        ("grub.cfg", input.grub_cfg.len() as u64),
    ] {
        if len > MAX_FILE {
            return Err(IsoError::TooLarge(name.to_owned()));
        }
    }
    let t = &input.created;
    // File positions, each from a sector boundary.
    let cfg_lba = FIRST_FILE_LBA as u64;
    let bios_lba = cfg_lba + sectors(input.grub_cfg.len() as u64).max(1);
    let efi_lba = bios_lba + sectors(input.bios_image.len() as u64);
    let kernel_lba = efi_lba + sectors(input.efi_image.len).max(1);
    let initrd_lba = kernel_lba + sectors(input.kernel.len).max(1);
    let pad_lba = initrd_lba + sectors(input.initrd.len).max(1);
    let total_sectors = pad_lba + PAD_SECTORS;
    let too_large = |_| IsoError::TooLarge("the image".to_owned());
    let total_sectors_u32: u32 = total_sectors.try_into().map_err(too_large)?;
    let lba = |x: u64| x as u32; // all below total_sectors, checked above

    // Everything up to the end of the BIOS image is held in memory.
    let head_len = (efi_lba * SECTOR) as usize;
    let mut head = vec![0u8; head_len];

    // Directories.
    let mut root = Vec::new();
    root.extend(dir_record(&[0], ROOT_LBA, SECTOR as u32, true, t));
    root.extend(dir_record(&[1], ROOT_LBA, SECTOR as u32, true, t));
    root.extend(dir_record(b"plinth", PLINTH_LBA, SECTOR as u32, true, t));
    let mut plinth = Vec::new();
    plinth.extend(dir_record(&[0], PLINTH_LBA, SECTOR as u32, true, t));
    plinth.extend(dir_record(&[1], ROOT_LBA, SECTOR as u32, true, t));
    // Sorted by name, as ISO 9660 wants.
    plinth.extend(dir_record(
        b"grub.cfg",
        lba(cfg_lba),
        input.grub_cfg.len() as u32,
        false,
        t,
    ));
    plinth.extend(dir_record(
        b"initrd",
        lba(initrd_lba),
        input.initrd.len as u32,
        false,
        t,
    ));
    plinth.extend(dir_record(
        b"vmlinuz",
        lba(kernel_lba),
        input.kernel.len as u32,
        false,
        t,
    ));
    let r = sector(ROOT_LBA);
    head[r.start..r.start + root.len()].copy_from_slice(&root);
    let r = sector(PLINTH_LBA);
    head[r.start..r.start + plinth.len()].copy_from_slice(&plinth);

    // Path tables: the root (number 1) and /plinth (number 2, parent 1).
    let path_table = |big: bool| -> Vec<u8> {
        let mut v = Vec::new();
        for (name, at, parent) in [(&[0u8][..], ROOT_LBA, 1u16), (b"plinth", PLINTH_LBA, 1)] {
            v.push(name.len() as u8);
            v.push(0);
            if big {
                v.extend(at.to_be_bytes());
                v.extend(parent.to_be_bytes());
            } else {
                v.extend(at.to_le_bytes());
                v.extend(parent.to_le_bytes());
            }
            v.extend(name);
            if name.len() % 2 == 1 {
                v.push(0);
            }
        }
        v
    };
    let l_path = path_table(false);
    let m_path = path_table(true);
    let r = sector(L_PATH_LBA);
    head[r.start..r.start + l_path.len()].copy_from_slice(&l_path);
    let r = sector(M_PATH_LBA);
    head[r.start..r.start + m_path.len()].copy_from_slice(&m_path);

    // Primary volume descriptor.
    let r = sector(PVD_LBA);
    let pvd = &mut head[r];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&padded("", 32));
    pvd[40..72].copy_from_slice(&padded(&volume_label(&input.volume_id), 32));
    both_u32(&mut pvd[80..88], total_sectors_u32);
    both_u16(&mut pvd[120..124], 1);
    both_u16(&mut pvd[124..128], 1);
    both_u16(&mut pvd[128..132], SECTOR as u16);
    both_u32(&mut pvd[132..140], l_path.len() as u32);
    pvd[140..144].copy_from_slice(&L_PATH_LBA.to_le_bytes());
    pvd[148..152].copy_from_slice(&M_PATH_LBA.to_be_bytes());
    pvd[156..190].copy_from_slice(&root[..34]);
    pvd[190..318].copy_from_slice(&padded("", 128));
    pvd[318..446].copy_from_slice(&padded("", 128));
    pvd[446..574].copy_from_slice(&padded("PLINTH", 128));
    pvd[574..702].copy_from_slice(&padded("PLINTH VIRTUAL MEDIA BOOT", 128));
    pvd[702..813].copy_from_slice(&padded("", 111));
    pvd[813..830].copy_from_slice(&vd_date(Some(t)));
    pvd[830..847].copy_from_slice(&vd_date(Some(t)));
    pvd[847..864].copy_from_slice(&vd_date(None));
    pvd[864..881].copy_from_slice(&vd_date(None));
    pvd[881] = 1;

    // Boot record: El Torito, pointing at the catalog.
    let r = sector(BOOT_RECORD_LBA);
    let br = &mut head[r];
    br[1..6].copy_from_slice(b"CD001");
    br[6] = 1;
    br[7..7 + 23].copy_from_slice(b"EL TORITO SPECIFICATION");
    br[71..75].copy_from_slice(&CATALOG_LBA.to_le_bytes());

    // Terminator.
    let r = sector(TERMINATOR_LBA);
    let term = &mut head[r];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;

    // Boot catalog.
    let r = sector(CATALOG_LBA);
    let cat = &mut head[r];
    // Validation entry: header 1, platform x86, checksum making the 16-bit words sum to 0.
    cat[0] = 1;
    cat[30] = 0x55;
    cat[31] = 0xAA;
    let sum = cat[..32]
        .chunks(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .fold(0u16, u16::wrapping_add);
    cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    // Initial (BIOS) entry: bootable, no emulation, default segment, 4 sectors.
    let e = &mut cat[32..64];
    e[0] = 0x88;
    e[6..8].copy_from_slice(&BIOS_LOAD_SECTORS.to_le_bytes());
    e[8..12].copy_from_slice(&lba(bios_lba).to_le_bytes());
    // The final section header: UEFI, one entry.
    let h = &mut cat[64..96];
    h[0] = 0x91;
    h[1] = 0xEF;
    h[2..4].copy_from_slice(&1u16.to_le_bytes());
    // Its entry: the ESP image, its size in 512-byte sectors (0 when it does not fit 16 bits:
    // firmware then takes the FAT file system's own size).
    let e = &mut cat[96..128];
    e[0] = 0x88;
    let esp_sectors = u16::try_from(input.efi_image.len.div_ceil(512)).unwrap_or(0);
    e[6..8].copy_from_slice(&esp_sectors.to_le_bytes());
    e[8..12].copy_from_slice(&lba(efi_lba).to_le_bytes());

    // grub.cfg.
    let at = (cfg_lba * SECTOR) as usize;
    head[at..at + input.grub_cfg.len()].copy_from_slice(&input.grub_cfg);
    // The BIOS image with its boot-info table (GRUB's cdboot reads its own length from it).
    let mut bios = input.bios_image;
    bios[8..12].copy_from_slice(&PVD_LBA.to_le_bytes());
    bios[12..16].copy_from_slice(&lba(bios_lba).to_le_bytes());
    let bios_len = bios.len() as u32;
    bios[16..20].copy_from_slice(&bios_len.to_le_bytes());
    bios[20..64].fill(0);
    let sum = boot_info_checksum(&bios);
    bios[20..24].copy_from_slice(&sum.to_le_bytes());
    let at = (bios_lba * SECTOR) as usize;
    head[at..at + bios.len()].copy_from_slice(&bios);

    let mut extents = vec![Extent {
        start: 0,
        len: head.len() as u64,
        source: Source::Bytes(head.into()),
    }];
    let mut push_file = |f: &FileRef, from: u64| {
        let used = if f.len > 0 {
            extents.push(Extent {
                start: from * SECTOR,
                len: f.len,
                source: Source::File {
                    path: f.path.clone(),
                    offset: 0,
                },
            });
            f.len
        } else {
            0
        };
        let pad = sectors(f.len).max(1) * SECTOR - used;
        extents.push(Extent {
            start: from * SECTOR + used,
            len: pad,
            source: Source::Zeros,
        });
    };
    push_file(&input.efi_image, efi_lba);
    push_file(&input.kernel, kernel_lba);
    push_file(&input.initrd, initrd_lba);
    extents.push(Extent {
        start: pad_lba * SECTOR,
        len: PAD_SECTORS * SECTOR,
        source: Source::Zeros,
    });
    extents.retain(|e| e.len > 0);
    Ok(IsoImage {
        extents,
        len: total_sectors * SECTOR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    /// The image's bytes, as a client reading every slice would get them.
    fn materialize(img: &IsoImage, range: Range<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in img.slices(range) {
            match s {
                Slice::Bytes(b) => out.extend_from_slice(b),
                Slice::Zeros(n) => out.resize(out.len() + n as usize, 0),
                Slice::File { path, offset, len } => {
                    let mut f = std::fs::File::open(path).unwrap();
                    f.seek(SeekFrom::Start(offset)).unwrap();
                    let mut b = vec![0; len as usize];
                    f.read_exact(&mut b).unwrap();
                    out.extend(b);
                }
            }
        }
        out
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        input: IsoInput,
    }

    fn file(dir: &std::path::Path, name: &str, len: usize, seed: u8) -> FileRef {
        let path = dir.join(name);
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        std::fs::write(&path, bytes).unwrap();
        FileRef {
            path,
            len: len as u64,
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bios: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let input = IsoInput {
            volume_id: "plinth-test".into(),
            created: "2026-12-06T02:00:00Z".parse().unwrap(),
            grub_cfg: b"set timeout=0\nlinux /plinth/vmlinuz plinth.mode=inspect\ninitrd /plinth/initrd\nboot\n".to_vec(),
            bios_image: bios,
            efi_image: file(dir.path(), "efi.img", 3 * 2048 + 5, 1),
            kernel: file(dir.path(), "vmlinuz", 100_001, 2),
            initrd: file(dir.path(), "initrd.img", 2048 * 7, 3),
        };
        Fixture { _dir: dir, input }
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// A directory's records as (name, lba, len, is_dir), read back from the image.
    fn read_dir(iso: &[u8], lba: u32, len: u32) -> Vec<(Vec<u8>, u32, u32, bool)> {
        let d = &iso[lba as usize * 2048..][..len as usize];
        let mut out = Vec::new();
        let mut at = 0;
        while at < d.len() && d[at] != 0 {
            let r = &d[at..at + d[at] as usize];
            assert_eq!(le32(r, 2), be32(r, 6), "both-endian extent");
            assert_eq!(le32(r, 10), be32(r, 14), "both-endian length");
            let name = r[33..33 + r[32] as usize].to_vec();
            out.push((name, le32(r, 2), le32(r, 10), r[25] & 2 != 0));
            at += r.len();
        }
        out
    }

    /// A file's content by path, walking the directories from the PVD's root record.
    fn lookup(iso: &[u8], path: &str) -> Vec<u8> {
        let pvd = &iso[16 * 2048..17 * 2048];
        let (mut lba, mut len) = (le32(pvd, 156 + 2), le32(pvd, 156 + 10));
        for part in path.trim_start_matches('/').split('/') {
            let e = read_dir(iso, lba, len)
                .into_iter()
                .find(|e| e.0 == part.as_bytes())
                .unwrap_or_else(|| panic!("{part} not found"));
            (lba, len) = (e.1, e.2);
        }
        iso[lba as usize * 2048..][..len as usize].to_vec()
    }

    #[test]
    fn written_iso_reads_back() {
        let f = fixture();
        let input = f.input.clone();
        let img = build(f.input).unwrap();
        assert_eq!(img.len() % SECTOR, 0);
        let iso = materialize(&img, 0..img.len());
        assert_eq!(iso.len() as u64, img.len());
        // Volume descriptors.
        let pvd = &iso[16 * 2048..17 * 2048];
        assert_eq!(&pvd[..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..51], b"PLINTH_TEST");
        assert_eq!(le32(pvd, 80) as u64 * 2048, img.len());
        assert_eq!(be32(pvd, 84) as u64 * 2048, img.len());
        let br = &iso[17 * 2048..18 * 2048];
        assert_eq!(&br[..7], b"\x00CD001\x01");
        assert_eq!(&br[7..30], b"EL TORITO SPECIFICATION");
        assert_eq!(&iso[18 * 2048..18 * 2048 + 7], b"\xffCD001\x01");
        // Path tables: L and M say the same.
        let pt_len = le32(pvd, 132) as usize;
        let l = &iso[le32(pvd, 140) as usize * 2048..][..pt_len];
        let m = &iso[be32(pvd, 148) as usize * 2048..][..pt_len];
        assert_eq!(l[0], 1);
        assert_eq!(le32(l, 2), le32(pvd, 158));
        assert_eq!(be32(m, 2), le32(pvd, 158));
        assert_eq!(&l[18..24], b"plinth");
        assert_eq!(le32(l, 12), be32(m, 12));
        // Files.
        assert_eq!(lookup(&iso, "/plinth/grub.cfg"), input.grub_cfg);
        assert_eq!(
            lookup(&iso, "/plinth/vmlinuz"),
            std::fs::read(&input.kernel.path).unwrap()
        );
        assert_eq!(
            lookup(&iso, "/plinth/initrd"),
            std::fs::read(&input.initrd.path).unwrap()
        );
        // Boot catalog.
        let cat = &iso[le32(br, 71) as usize * 2048..][..2048];
        let sum = cat[..32]
            .chunks(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]]))
            .fold(0u16, u16::wrapping_add);
        assert_eq!((cat[0], sum, cat[30], cat[31]), (1, 0, 0x55, 0xAA));
        let bios = &cat[32..64];
        assert_eq!((bios[0], bios[1], &bios[6..8]), (0x88, 0, &[4u8, 0][..]));
        let bios_lba = le32(bios, 8);
        assert_eq!((cat[64], cat[65], cat[66]), (0x91, 0xEF, 1));
        let efi = &cat[96..128];
        assert_eq!(efi[0], 0x88);
        assert_eq!(
            u16::from_le_bytes([efi[6], efi[7]]) as u64,
            input.efi_image.len.div_ceil(512)
        );
        let efi_at = le32(efi, 8) as usize * 2048;
        assert_eq!(
            iso[efi_at..efi_at + input.efi_image.len as usize],
            std::fs::read(&input.efi_image.path).unwrap()[..]
        );
        // The BIOS image with its boot-info table.
        let b = &iso[bios_lba as usize * 2048..][..input.bios_image.len()];
        assert_eq!(le32(b, 8), 16);
        assert_eq!(le32(b, 12), bios_lba);
        assert_eq!(le32(b, 16) as usize, input.bios_image.len());
        assert_eq!(le32(b, 20), boot_info_checksum(b));
        assert_eq!(&b[..8], &input.bios_image[..8]);
        assert_eq!(&b[64..], &input.bios_image[64..]);
    }

    #[test]
    fn any_range_is_the_same_bytes() {
        let f = fixture();
        let img = build(f.input).unwrap();
        let whole = materialize(&img, 0..img.len());
        let n = img.len();
        for (a, b) in [
            (0, 1),
            (2047, 2049),
            (24 * 2048 - 3, 40 * 2048 + 17),
            (n - 5, n),
            (n - 5, n + 100),
            (1000, 1000),
            (123_457, 123_457 + 65_536),
        ] {
            assert_eq!(
                materialize(&img, a..b),
                whole[a as usize..b.min(n) as usize],
                "{a}..{b}"
            );
        }
        // Extents cover the image without gaps or overlaps.
        let mut at = 0;
        for e in img.extents() {
            assert_eq!(e.start, at);
            at += e.len;
        }
        assert_eq!(at, n);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut f = fixture();
        f.input.bios_image.truncate(10);
        assert_eq!(
            build(f.input.clone()).unwrap_err(),
            IsoError::BiosImageTooSmall(10)
        );
        let mut f = fixture();
        f.input.kernel.len = 5 << 30;
        assert!(matches!(build(f.input), Err(IsoError::TooLarge(_))));
    }

    /// The image as xorriso and isoinfo (packages xorriso, genisoimage) read it.
    #[test]
    fn xorriso_and_isoinfo_read_it() {
        let f = fixture();
        let input = f.input.clone();
        let img = build(f.input).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.iso");
        std::fs::write(&path, materialize(&img, 0..img.len())).unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd
                .output()
                .expect("xorriso/isoinfo installed (crates/plinth-testkit/PACKAGES)");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        };
        let found = run(std::process::Command::new("xorriso")
            .args(["-indev"])
            .arg(&path)
            .args(["-find", "/", "-exec", "lsdl"]));
        for name in ["/plinth/grub.cfg", "/plinth/vmlinuz", "/plinth/initrd"] {
            assert!(found.contains(name), "{name} not in:\n{found}");
        }
        assert!(
            found.contains(&format!(" {} ", input.kernel.len)),
            "{found}"
        );
        let report = run(std::process::Command::new("xorriso")
            .args(["-indev"])
            .arg(&path)
            .args(["-report_el_torito", "plain"]));
        assert!(
            report.contains("BIOS") && report.contains("UEFI"),
            "{report}"
        );
        let info = run(std::process::Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&path));
        assert!(info.contains("Volume id: PLINTH_TEST"), "{info}");
        assert!(info.contains("El Torito VD version 1 found"), "{info}");
        assert!(
            info.contains(&format!("Volume size is: {}", img.len() / 2048)),
            "{info}"
        );
        let cfg = run(std::process::Command::new("isoinfo")
            .args(["-x", "/plinth/grub.cfg", "-i"])
            .arg(&path));
        assert_eq!(cfg.as_bytes(), &input.grub_cfg[..]);
    }
}
