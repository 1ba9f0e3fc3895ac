//! A cloud-init NoCloud seed ("config drive"): a small FAT filesystem built in memory, because
//! the ramdisk has neither mkfs.fat nor mount. Everything below follows the Microsoft FAT
//! specification ("Microsoft Extensible Firmware Initiative FAT32 File System Specification",
//! version 1.03, 2000; cited as "FAT spec §n").
//!
//! Layout of the image (512-byte sectors, one reserved sector, two FATs):
//!
//! ```text
//! | boot sector + BPB | FAT 1 | FAT 2 | root directory (512 entries) | data clusters 2.. |
//! ```
//!
//! The files go in the root directory, each as VFAT long-name entries followed by an 8.3 alias;
//! their data is allocated in consecutive clusters. The volume label is in the BPB and also in a
//! volume-label entry in the root directory, which is where blkid (and so cloud-init's
//! `LABEL=cidata` lookup) reads it from.

const SECTOR: usize = 512;
/// Root directory entries; a multiple of 16 so the directory fills whole sectors (FAT spec §3.5).
const ROOT_ENTRIES: usize = 512;
const DIR_ENTRY: usize = 32;
const RESERVED_SECTORS: usize = 1;
const NUM_FATS: usize = 2;
/// "Fixed disk" media descriptor, repeated in the low byte of FAT[0] (FAT spec §3.1, §4).
const MEDIA: u8 = 0xf8;
/// FAT type is decided by the cluster count alone, nothing else (FAT spec §3.5).
const FAT12_MAX_CLUSTERS: usize = 4084;
const FAT16_MAX_CLUSTERS: usize = 65524;
/// 1980-01-01 00:00, the DOS epoch, as a FAT date: images are reproducible (FAT spec §6.1).
const DOS_DATE: u16 = (1 << 5) | 1;

const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0f;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
}

/// The geometry chosen for an image of a given size.
#[derive(Debug, Clone, Copy)]
struct Layout {
    fat: FatType,
    sectors_per_cluster: usize,
    fat_sectors: usize,
    clusters: usize,
    total_sectors: usize,
}

impl Layout {
    fn cluster_bytes(&self) -> usize {
        self.sectors_per_cluster * SECTOR
    }
    fn root_offset(&self) -> usize {
        (RESERVED_SECTORS + NUM_FATS * self.fat_sectors) * SECTOR
    }
    fn data_offset(&self) -> usize {
        self.root_offset() + ROOT_ENTRIES * DIR_ENTRY
    }
    fn cluster_offset(&self, cluster: usize) -> usize {
        self.data_offset() + (cluster - 2) * self.cluster_bytes()
    }
}

/// Sizes the FAT for `total_sectors`: the FAT must hold an entry for every data cluster plus the
/// two reserved entries, and the FAT itself eats into the data area, so iterate to a fixed point.
fn layout_for(fat: FatType, total_sectors: usize, sectors_per_cluster: usize) -> Option<Layout> {
    let root_sectors = ROOT_ENTRIES * DIR_ENTRY / SECTOR;
    let bits = match fat {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
    };
    let mut fat_sectors = 1;
    loop {
        let meta = RESERVED_SECTORS + NUM_FATS * fat_sectors + root_sectors;
        let data_sectors = total_sectors.checked_sub(meta)?;
        let clusters = data_sectors / sectors_per_cluster;
        let needed = ((clusters + 2) * bits).div_ceil(8).div_ceil(SECTOR);
        if needed <= fat_sectors {
            return (clusters > 0).then_some(Layout {
                fat,
                sectors_per_cluster,
                fat_sectors,
                clusters,
                total_sectors,
            });
        }
        fat_sectors = needed;
    }
}

/// FAT12 when the cluster count allows it with clusters of at most 4 KiB (images up to about
/// 16 MiB, as mkfs.fat would), else FAT16; the smallest clusters that work.
fn choose_layout(total_sectors: usize) -> Option<Layout> {
    let spcs = [1, 2, 4, 8, 16, 32, 64];
    let fat12 = spcs[..4].iter().find_map(|&spc| {
        layout_for(FatType::Fat12, total_sectors, spc).filter(|l| l.clusters <= FAT12_MAX_CLUSTERS)
    });
    fat12.or_else(|| {
        spcs.iter().find_map(|&spc| {
            layout_for(FatType::Fat16, total_sectors, spc)
                .filter(|l| (FAT12_MAX_CLUSTERS + 1..=FAT16_MAX_CLUSTERS).contains(&l.clusters))
        })
    })
}

/// Sets FAT entry `n` in one FAT (FAT spec §4: FAT12 entries are 1.5 bytes, packed).
fn set_fat(fat: &mut [u8], kind: FatType, n: usize, value: u16) {
    match kind {
        FatType::Fat12 => {
            let o = n + n / 2;
            if n.is_multiple_of(2) {
                fat[o] = value as u8;
                fat[o + 1] = (fat[o + 1] & 0xf0) | ((value >> 8) as u8 & 0x0f);
            } else {
                fat[o] = (fat[o] & 0x0f) | ((value << 4) as u8 & 0xf0);
                fat[o + 1] = (value >> 4) as u8;
            }
        }
        FatType::Fat16 => fat[2 * n..2 * n + 2].copy_from_slice(&value.to_le_bytes()),
    }
}

/// Characters never allowed in a long name (FAT spec §7).
fn valid_long_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.encode_utf16().count() <= 255
        && !name
            .chars()
            .any(|c| c < ' ' || "\"*/:<>?\\|".contains(c) || c == '\u{7f}')
        && !name.ends_with(['.', ' '])
}

/// An 8.3 alias with a numeric tail, as Windows makes it (FAT spec §7, "basis-name generation"):
/// upper case, characters not allowed in short names replaced by '_', at most six characters of
/// the base then `~n`, at most three of the extension. "meta-data" -> `META-D~1`.
fn short_alias(name: &str, tail: usize) -> [u8; 11] {
    fn clean(s: &str) -> Vec<u8> {
        s.chars()
            .filter(|c| *c != ' ' && *c != '.')
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_alphanumeric() || "$%'-_@~`!(){}^#&".contains(c) {
                    c as u8
                } else {
                    b'_'
                }
            })
            .collect()
    }
    let name = name.trim_start_matches('.');
    let (base, ext) = match name.rfind('.') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    let tail = format!("~{tail}");
    let mut base = clean(base);
    base.truncate(8 - tail.len());
    base.extend_from_slice(tail.as_bytes());
    let mut ext = clean(ext);
    ext.truncate(3);
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(&base);
    out[8..8 + ext.len()].copy_from_slice(&ext);
    out
}

/// The checksum of an 8.3 name stored in each of its long-name entries (FAT spec §7).
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

/// The long-name entries for `name`, in on-disk order (last part first), 13 UTF-16 units each:
/// the name is NUL-terminated if it does not fill the last entry, then padded with 0xFFFF.
fn lfn_entries(name: &str, checksum: u8) -> Vec<[u8; DIR_ENTRY]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let count = units.len().div_ceil(13);
    let mut entries = Vec::with_capacity(count);
    for seq in (1..=count).rev() {
        let mut e = [0u8; DIR_ENTRY];
        e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
        e[11] = ATTR_LONG_NAME;
        e[13] = checksum;
        // The 13 characters of this entry sit at bytes 1..11, 14..26 and 28..32.
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (i, at) in slots.enumerate() {
            let idx = (seq - 1) * 13 + i;
            let unit = match idx.cmp(&units.len()) {
                std::cmp::Ordering::Less => units[idx],
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Greater => 0xffff,
            };
            e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        entries.push(e);
    }
    entries
}

/// A short (8.3) directory entry (FAT spec §6).
fn short_entry(name: &[u8; 11], attr: u8, cluster: u16, size: u32) -> [u8; DIR_ENTRY] {
    let mut e = [0u8; DIR_ENTRY];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    if attr != ATTR_VOLUME_ID {
        e[16..18].copy_from_slice(&DOS_DATE.to_le_bytes()); // creation date
        e[18..20].copy_from_slice(&DOS_DATE.to_le_bytes()); // last access date
    }
    e[24..26].copy_from_slice(&DOS_DATE.to_le_bytes()); // write date (time stays 00:00)
    e[26..28].copy_from_slice(&cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Builds a FAT12 (or, if the size needs it, FAT16) filesystem of exactly `size` bytes holding
/// `files` in its root directory, labelled `label` (at most 11 ASCII characters, kept as given:
/// cloud-init looks for `cidata`) with serial number `volume_id`.
pub fn fat_image(
    label: &str,
    volume_id: u32,
    files: &[(&str, &[u8])],
    size: u64,
) -> Result<Vec<u8>, String> {
    if label.is_empty()
        || label.len() > 11
        || !label
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"*+,./:;<=>?[\\]|".contains(&b))
    {
        return Err(format!(
            "seed: volume label {label:?} must be 1 to 11 ASCII letters, digits or -_"
        ));
    }
    if !size.is_multiple_of(SECTOR as u64) {
        return Err(format!(
            "seed: image size {size} is not a multiple of {SECTOR}-byte sectors"
        ));
    }
    let total_sectors = usize::try_from(size / SECTOR as u64)
        .map_err(|_| format!("seed: image size {size} is too large"))?;
    let layout = choose_layout(total_sectors).ok_or_else(|| {
        format!("seed: no FAT12/FAT16 layout fits {size} bytes (use 64 KiB to 2 GiB)")
    })?;

    // The root directory: the volume label, then each file's long-name entries and alias.
    let mut dir: Vec<[u8; DIR_ENTRY]> = Vec::new();
    let mut padded_label = [b' '; 11];
    padded_label[..label.len()].copy_from_slice(label.as_bytes());
    dir.push(short_entry(&padded_label, ATTR_VOLUME_ID, 0, 0));
    let mut aliases: Vec<[u8; 11]> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut next_cluster = 2usize;
    let mut placed: Vec<(usize, &[u8])> = Vec::new(); // (first cluster, data)
    for (name, data) in files {
        if !valid_long_name(name) {
            return Err(format!("seed: {name:?} is not a valid FAT long file name"));
        }
        if seen.contains(&name.to_lowercase()) {
            return Err(format!(
                "seed: {name:?} given twice (FAT names ignore case)"
            ));
        }
        seen.push(name.to_lowercase());
        let alias = (1..=999_999)
            .map(|n| short_alias(name, n))
            .find(|a| !aliases.contains(a))
            .ok_or_else(|| format!("seed: too many files resembling {name:?}"))?;
        aliases.push(alias);
        let file_size = u32::try_from(data.len())
            .map_err(|_| format!("seed: {name} is larger than FAT's 4 GiB file limit"))?;
        let clusters = data.len().div_ceil(layout.cluster_bytes());
        let first = if clusters == 0 { 0 } else { next_cluster };
        next_cluster += clusters;
        if next_cluster - 2 > layout.clusters {
            let needed: usize = files
                .iter()
                .map(|(_, d)| d.len().div_ceil(layout.cluster_bytes()))
                .sum();
            return Err(format!(
                "seed: the files need {needed} clusters of {} bytes but a {size}-byte image holds \
                 only {}",
                layout.cluster_bytes(),
                layout.clusters
            ));
        }
        placed.push((first, data));
        dir.extend(lfn_entries(name, lfn_checksum(&alias)));
        // Cluster numbers fit in 16 bits: FAT16 has at most 65524 clusters.
        dir.push(short_entry(&alias, ATTR_ARCHIVE, first as u16, file_size));
    }
    if dir.len() > ROOT_ENTRIES {
        return Err(format!(
            "seed: the names need {} root directory entries, the root holds {ROOT_ENTRIES}",
            dir.len()
        ));
    }

    let mut img = vec![0u8; size as usize];
    write_boot_sector(&mut img[..SECTOR], &layout, label, volume_id);

    // The FAT: entries 0 and 1 are reserved (media byte, end-of-chain), then one chain per file.
    let eoc = match layout.fat {
        FatType::Fat12 => 0x0fff,
        FatType::Fat16 => 0xffff,
    };
    let fat_bytes = layout.fat_sectors * SECTOR;
    let mut fat = vec![0u8; fat_bytes];
    set_fat(&mut fat, layout.fat, 0, 0xff00 | MEDIA as u16);
    set_fat(&mut fat, layout.fat, 1, eoc);
    for (first, data) in &placed {
        let n = data.len().div_ceil(layout.cluster_bytes());
        for c in *first..*first + n {
            let next = if c + 1 == first + n {
                eoc
            } else {
                (c + 1) as u16
            };
            set_fat(&mut fat, layout.fat, c, next);
        }
        if n > 0 {
            let at = layout.cluster_offset(*first);
            img[at..at + data.len()].copy_from_slice(data);
        }
    }
    for i in 0..NUM_FATS {
        let at = (RESERVED_SECTORS + i * layout.fat_sectors) * SECTOR;
        img[at..at + fat_bytes].copy_from_slice(&fat);
    }
    let root = layout.root_offset();
    for (i, e) in dir.iter().enumerate() {
        img[root + i * DIR_ENTRY..root + (i + 1) * DIR_ENTRY].copy_from_slice(e);
    }
    Ok(img)
}

/// The boot sector with the BIOS Parameter Block of FAT12/16 (FAT spec §3.1, §3.2).
fn write_boot_sector(bs: &mut [u8], l: &Layout, label: &str, volume_id: u32) {
    bs[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]); // jmp short 0x3e; nop
    bs[3..11].copy_from_slice(b"PLINTH  "); // OEM name
    bs[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    bs[13] = l.sectors_per_cluster as u8;
    bs[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    bs[16] = NUM_FATS as u8;
    bs[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    // Total sectors: the 16-bit field if it fits, else the 32-bit one (the other stays 0).
    match u16::try_from(l.total_sectors) {
        Ok(n) => bs[19..21].copy_from_slice(&n.to_le_bytes()),
        Err(_) => bs[32..36].copy_from_slice(&(l.total_sectors as u32).to_le_bytes()),
    }
    bs[21] = MEDIA;
    bs[22..24].copy_from_slice(&(l.fat_sectors as u16).to_le_bytes());
    bs[24..26].copy_from_slice(&63u16.to_le_bytes()); // sectors per track (LBA-era convention)
    bs[26..28].copy_from_slice(&255u16.to_le_bytes()); // heads
    // Hidden sectors (28..32) stay 0: Linux ignores it and the partition offset is not known here.
    bs[36] = 0x80; // drive number: first hard disk
    bs[38] = 0x29; // extended boot signature: the next three fields are present
    bs[39..43].copy_from_slice(&volume_id.to_le_bytes());
    bs[43..54].fill(b' ');
    bs[43..43 + label.len()].copy_from_slice(label.as_bytes());
    bs[54..62].copy_from_slice(match l.fat {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
    });
    // Boot code at 0x3e: not bootable, so just halt forever (cli; hlt; jmp hlt).
    bs[0x3e..0x42].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
    bs[510] = 0x55;
    bs[511] = 0xaa;
}

/// Test helpers shared with partition.rs and wipe.rs: running the real tools.
#[cfg(test)]
pub(crate) mod tools {
    use std::process::{Command, Output};

    /// Runs `cmd args`, failing the test with the Debian package to install if it is missing.
    pub fn run(cmd: &str, package: &str, args: &[&str]) -> Output {
        Command::new(cmd).args(args).output().unwrap_or_else(|e| {
            panic!("cannot run {cmd} ({e}): install the Debian package {package}")
        })
    }

    /// Like [`run`], failing unless the tool exits 0; returns its stdout.
    pub fn ok(cmd: &str, package: &str, args: &[&str]) -> String {
        let out = run(cmd, package, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `blkid -p -o export` (low-level probe, no cache) at a byte offset.
    pub fn blkid(path: &str, offset: u64) -> Output {
        let offset = offset.to_string();
        run(
            "blkid",
            "util-linux",
            &["-p", "-o", "export", "--offset", &offset, path],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::tools::{blkid, ok, run};
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn user_data() -> Vec<u8> {
        // Several KiB, so the file spans many 512-byte clusters; not a repeating pattern that
        // would hide a wrong chain.
        let mut s = String::from("#cloud-config\nwrite_files:\n");
        for i in 0..300 {
            s.push_str(&format!(
                "  - path: /etc/plinth/{i}\n    content: line {i}\n"
            ));
        }
        s.into_bytes()
    }

    fn write(dir: &std::path::Path, img: &[u8]) -> String {
        let p = dir.join("seed.img");
        std::fs::write(&p, img).unwrap();
        p.to_str().unwrap().to_owned()
    }

    #[test]
    fn real_tools_read_the_seed() {
        let meta = b"instance-id: m-1\nlocal-hostname: node1\n";
        let user = user_data();
        assert!(user.len() > 8 * 1024);
        let files: [(&str, &[u8]); 4] = [
            ("meta-data", meta),
            ("user-data", &user),
            ("network-config", b""),
            ("vendor-data.yaml", b"#cloud-config\n{}\n"),
        ];
        let img = fat_image("cidata", 0x1234_abcd, &files, 2 * MIB).unwrap();
        assert_eq!(img.len() as u64, 2 * MIB);
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &img);

        let fsck = ok("fsck.fat", "dosfstools", &["-n", "-V", &p]);
        assert!(!fsck.contains("differ"), "{fsck}");
        assert!(fsck.contains("files"), "{fsck}");
        let fsck_err = run("fsck.fat", "dosfstools", &["-n", "-V", &p]);
        assert!(
            fsck_err.stderr.is_empty(),
            "fsck.fat complained: {}",
            String::from_utf8_lossy(&fsck_err.stderr)
        );

        let mdir = ok("mdir", "mtools", &["-i", &p, "::"]);
        for name in [
            "meta-data",
            "user-data",
            "network-config",
            "vendor-data.yaml",
        ] {
            assert!(mdir.contains(name), "{name} missing from\n{mdir}");
        }
        for alias in ["META-D~1", "USER-D~1", "NETWOR~1", "VENDOR~1 YAM"] {
            assert!(mdir.contains(alias), "{alias} missing from\n{mdir}");
        }
        assert_eq!(
            ok("mtype", "mtools", &["-i", &p, "::meta-data"]).as_bytes(),
            meta
        );
        assert_eq!(
            ok("mtype", "mtools", &["-i", &p, "::user-data"]).as_bytes(),
            user
        );
        assert_eq!(ok("mtype", "mtools", &["-i", &p, "::network-config"]), "");

        let probe = blkid(&p, 0);
        assert!(probe.status.success(), "{probe:?}");
        let probe = String::from_utf8_lossy(&probe.stdout);
        assert!(probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");
        assert!(probe.lines().any(|l| l == "TYPE=vfat"), "{probe}");
        assert!(probe.lines().any(|l| l == "VERSION=FAT12"), "{probe}");
        assert!(probe.lines().any(|l| l == "UUID=1234-ABCD"), "{probe}");
    }

    #[test]
    fn large_images_are_fat16() {
        let img = fat_image("cidata", 7, &[("meta-data", b"x")], 64 * MIB).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &img);
        ok("fsck.fat", "dosfstools", &["-n", &p]);
        let probe = String::from_utf8_lossy(&blkid(&p, 0).stdout).into_owned();
        assert!(probe.contains("VERSION=FAT16"), "{probe}");
        assert_eq!(ok("mtype", "mtools", &["-i", &p, "::meta-data"]), "x");
    }

    #[test]
    fn checksum_and_alias_match_the_spec() {
        let alias = short_alias("meta-data", 1);
        assert_eq!(&alias, b"META-D~1   ");
        assert_eq!(&short_alias("network-config", 2), b"NETWOR~2   ");
        assert_eq!(&short_alias("a b.tar.gz", 1), b"ABTAR~1 GZ ");
        // Worked by hand from the FAT spec's ChkSum routine.
        let mut sum = 0u8;
        for b in alias {
            sum = (if sum & 1 == 1 { 0x80 } else { 0 } + (sum >> 1)).wrapping_add(b);
        }
        assert_eq!(lfn_checksum(&alias), sum);
        // 13 characters exactly: one entry, no terminator, no padding.
        let e = lfn_entries("abcdefghijklm", 0);
        assert_eq!(e.len(), 1);
        assert_eq!(&e[0][30..32], &[b'm', 0]);
    }

    #[test]
    fn too_much_content_is_an_error_not_a_panic() {
        let big = vec![7u8; 3 * MIB as usize];
        let err = fat_image("cidata", 1, &[("user-data", &big)], 2 * MIB).unwrap_err();
        assert!(err.contains("clusters"), "{err}");
        let many: Vec<String> = (0..200).map(|i| format!("a-long-file-name-{i}")).collect();
        let files: Vec<(&str, &[u8])> = many.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let err = fat_image("cidata", 1, &files, 2 * MIB).unwrap_err();
        assert!(err.contains("root directory"), "{err}");
        assert!(fat_image("cidata", 1, &[], 4096).is_err());
        assert!(fat_image("cidata", 1, &[], 2 * MIB + 1).is_err());
        assert!(fat_image("much-too-long-label", 1, &[], 2 * MIB).is_err());
        assert!(fat_image("cidata", 1, &[("a/b", b"")], 2 * MIB).is_err());
        assert!(fat_image("cidata", 1, &[("x", b""), ("X", b"")], 2 * MIB).is_err());
    }
}
