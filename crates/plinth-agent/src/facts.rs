//! Hardware facts from the kernel's view of the machine: /proc/cpuinfo, memory blocks (or
//! /proc/meminfo), /sys/block, /sys/class/net, /sys/class/dmi/id, /sys/firmware/efi. Every path
//! is under `root` so the tests can lay out a machine in a temporary directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plinth_types::api::{
    Arch, CpuFacts, DiskFacts, Firmware, InspectionReport, NicFacts, SystemFacts,
};

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn cpu(root: &Path) -> Result<CpuFacts, String> {
    let text = std::fs::read_to_string(root.join("proc/cpuinfo"))
        .map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    let (mut model, mut threads) = (None, 0u32);
    let mut cores = BTreeSet::new();
    let (mut phys, mut core) = (None::<String>, None::<String>);
    let mut flush = |phys: &mut Option<String>, core: &mut Option<String>| {
        if let Some(c) = core.take() {
            cores.insert((phys.take().unwrap_or_default(), c));
        }
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            if line.trim().is_empty() {
                flush(&mut phys, &mut core);
            }
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "model name" | "Model" if model.is_none() => model = Some(v.to_owned()),
            "physical id" => phys = Some(v.to_owned()),
            "core id" => core = Some(v.to_owned()),
            _ => {}
        }
    }
    flush(&mut phys, &mut core);
    if threads == 0 {
        return Err("/proc/cpuinfo lists no processor".into());
    }
    let cores = if cores.is_empty() {
        threads
    } else {
        (cores.len() as u32).min(threads)
    };
    Ok(CpuFacts {
        model: model.unwrap_or_else(|| "unknown".into()),
        cores,
        threads,
    })
}

/// Installed memory: the online memory blocks (what the firmware gave the OS, in whole
/// blocks), else MemTotal (which lacks what the kernel reserved).
pub fn memory_mib(root: &Path) -> Result<u64, String> {
    let mem = root.join("sys/devices/system/memory");
    if let Some(block) = read(&mem.join("block_size_bytes"))
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        let online = entries(&mem)
            .into_iter()
            .filter(|(n, p)| {
                n.starts_with("memory") && read(&p.join("online")).as_deref() == Some("1")
            })
            .count() as u64;
        if online > 0 {
            return Ok(online * block / (1024 * 1024));
        }
    }
    let info = std::fs::read_to_string(root.join("proc/meminfo"))
        .map_err(|e| format!("/proc/meminfo: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .ok_or_else(|| "no MemTotal in /proc/meminfo".into())
}

/// Block devices that are disks: not loop, RAM, device-mapper, md, optical or floppy.
pub fn disk_names(root: &Path) -> Vec<String> {
    entries(&root.join("sys/block"))
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| {
            !["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect()
}

pub fn disks(root: &Path) -> Vec<DiskFacts> {
    disk_names(root)
        .into_iter()
        .filter_map(|name| {
            let b = root.join("sys/block").join(&name);
            let sectors: u64 = read(&b.join("size"))?.parse().ok()?;
            if sectors == 0 {
                return None; // an empty card reader slot
            }
            let nonempty = |s: Option<String>| s.filter(|v| !v.is_empty());
            Some(DiskFacts {
                size_bytes: sectors * 512,
                model: nonempty(read(&b.join("device/model"))),
                serial: serial(&b),
                rotational: read(&b.join("queue/rotational")).map(|r| r == "1"),
                name,
            })
        })
        .collect()
}

/// A disk's serial number, from the first of these that has one:
/// - `device/serial` (NVMe, some SCSI drivers) or `serial` (virtio-blk);
/// - the SCSI Unit Serial Number VPD page, `device/vpd_pg80`: what sd disks have (libata's
///   SATA disks, SAS HBAs, virtio-scsi with a serial, megaraid's pass-through disks);
/// - `device/wwid`, only in the one form that holds the drive's serial as it is: libata's T10
///   vendor id (`t10.ATA     ` + 40 characters of model + 20 of serial), which an old
///   kernel without `vpd_pg80` shows for a SATA disk without a world-wide name. The other
///   forms (`naa.`, `eui.`, another vendor's `t10.`) name the logical unit, not the drive: a
///   RAID volume's id changes when the volume is made again and is on no label, so they are
///   not taken for a serial.
fn serial(block: &Path) -> Option<String> {
    let nonempty = |s: Option<String>| s.filter(|v| !v.is_empty());
    nonempty(read(&block.join("device/serial")))
        .or_else(|| nonempty(read(&block.join("serial"))))
        .or_else(|| {
            std::fs::read(block.join("device/vpd_pg80"))
                .ok()
                .and_then(|page| vpd_pg80_serial(&page))
        })
        .or_else(|| {
            std::fs::read(block.join("device/wwid"))
                .ok()
                .and_then(|id| wwid_serial(&id))
        })
}

/// The serial of a Unit Serial Number VPD page (SPC: byte 1 is the page code 0x80, bytes
/// 2..4 the big-endian length of the serial that follows). `None` for a page that is not
/// that, is cut short, or holds no printable serial; spaces and NULs around it are dropped
/// (libata right-justifies ATA serials with spaces).
pub fn vpd_pg80_serial(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, rest @ ..] = page else {
        return None;
    };
    let serial = rest.get(..usize::from(u16::from_be_bytes([*hi, *lo])))?;
    printable(serial)
}

/// The drive's serial in libata's T10 vendor-id `wwid` (see [`serial`]), else `None`.
pub fn wwid_serial(id: &[u8]) -> Option<String> {
    const VENDOR: &[u8] = b"ATA     ";
    const MODEL: usize = 40;
    const SERIAL: usize = 20;
    let id = id.strip_suffix(b"\n").unwrap_or(id).strip_prefix(b"t10.")?;
    if id.len() != VENDOR.len() + MODEL + SERIAL || !id.starts_with(VENDOR) {
        return None;
    }
    printable(&id[VENDOR.len() + MODEL..])
}

/// `bytes` without the spaces and NULs around them, if what is left is non-empty printable
/// ASCII.
fn printable(bytes: &[u8]) -> Option<String> {
    let pad = |b: &u8| *b == b' ' || *b == 0;
    let start = bytes.iter().position(|b| !pad(b))?;
    let end = bytes.iter().rposition(|b| !pad(b))? + 1;
    let s = &bytes[start..end];
    s.iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ')
        .then(|| String::from_utf8_lossy(s).into_owned())
}

/// Physical NICs (those with a device behind them), with MAC, speed and carrier.
pub fn nics(root: &Path) -> Vec<NicFacts> {
    entries(&root.join("sys/class/net"))
        .into_iter()
        .filter(|(name, p)| name != "lo" && p.join("device").exists())
        .filter_map(|(name, p)| {
            let mac = read(&p.join("address"))?.parse().ok()?;
            let speed_mbps = read(&p.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|s| *s > 0)
                .map(|s| s as u32);
            Some(NicFacts {
                name,
                mac,
                speed_mbps,
                link: Some(read(&p.join("carrier")).as_deref() == Some("1")),
            })
        })
        .collect()
}

pub fn system(root: &Path) -> SystemFacts {
    let dmi = root.join("sys/class/dmi/id");
    let get = |f: &str| read(&dmi.join(f)).unwrap_or_default();
    SystemFacts {
        vendor: get("sys_vendor"),
        product: get("product_name"),
        serial: get("product_serial"),
        uuid: get("product_uuid"),
    }
}

pub fn firmware(root: &Path) -> Firmware {
    if root.join("sys/firmware/efi").exists() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

pub fn arch() -> Result<Arch, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(Arch::X86_64),
        "aarch64" => Ok(Arch::Aarch64),
        other => Err(format!("unsupported architecture {other}")),
    }
}

pub fn collect(root: &Path) -> Result<InspectionReport, String> {
    Ok(InspectionReport {
        cpu: cpu(root)?,
        memory_mib: memory_mib(root)?,
        disks: disks(root),
        nics: nics(root),
        system: system(root),
        firmware: firmware(root),
        arch: arch()?,
    })
}

#[cfg(test)]
pub mod fixture {
    //! A machine laid out as files, for the tests.
    use std::path::Path;

    pub fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::write;
    use super::*;

    fn machine(root: &Path) {
        // Two sockets of two cores with two threads each: 8 threads, 4 cores.
        let mut cpuinfo = String::new();
        let mut n = 0;
        for phys in 0..2 {
            for core in 0..2 {
                for _ in 0..2 {
                    cpuinfo.push_str(&format!(
                        "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n\
                         physical id\t: {phys}\ncore id\t\t: {core}\n\n"
                    ));
                    n += 1;
                }
            }
        }
        write(root, "proc/cpuinfo", &cpuinfo);
        write(
            root,
            "proc/meminfo",
            "MemTotal:        8000000 kB\nMemFree: 1 kB\n",
        );
        write(
            root,
            "sys/devices/system/memory/block_size_bytes",
            "8000000\n",
        );
        for i in 0..8 {
            write(
                root,
                &format!("sys/devices/system/memory/memory{i}/online"),
                "1\n",
            );
        }
        write(root, "sys/devices/system/memory/memory8/online", "0\n");
        write(root, "sys/block/sda/size", "937703088\n");
        write(root, "sys/block/sda/device/model", "SAMSUNG MZ7LH480  \n");
        write(root, "sys/block/sda/device/serial", "S45NNE0M\n");
        write(root, "sys/block/sda/queue/rotational", "0\n");
        write(root, "sys/block/vdb/size", "2097152\n");
        write(root, "sys/block/vdb/serial", "disk-b\n");
        write(root, "sys/block/vdb/queue/rotational", "1\n");
        write(root, "sys/block/loop0/size", "100\n");
        write(root, "sys/block/sr0/size", "100\n");
        write(root, "sys/block/mmcblk0/size", "0\n");
        write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write(root, "sys/class/net/eno1/address", "52:54:00:12:34:56\n");
        write(root, "sys/class/net/eno1/speed", "10000\n");
        write(root, "sys/class/net/eno1/carrier", "1\n");
        write(root, "sys/class/net/eno1/device/vendor", "0x8086\n");
        write(root, "sys/class/net/eno2/address", "52:54:00:12:34:57\n");
        write(root, "sys/class/net/eno2/speed", "-1\n");
        write(root, "sys/class/net/eno2/carrier", "0\n");
        write(root, "sys/class/net/eno2/device/vendor", "0x8086\n");
        write(root, "sys/class/net/br0/address", "52:54:00:00:00:01\n");
        write(root, "sys/class/dmi/id/sys_vendor", "Dell Inc.\n");
        write(root, "sys/class/dmi/id/product_name", "PowerEdge R640\n");
        write(root, "sys/class/dmi/id/product_serial", "7XJ2K53\n");
        write(
            root,
            "sys/class/dmi/id/product_uuid",
            "4c4c4544-0058-4a10-8032-b7c04f4b3533\n",
        );
    }

    #[test]
    fn a_machine_read_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        machine(dir.path());
        let r = collect(dir.path()).unwrap();
        assert_eq!(
            r.cpu,
            CpuFacts {
                model: "Intel(R) Xeon(R) Gold 6230".into(),
                cores: 4,
                threads: 8
            }
        );
        assert_eq!(r.memory_mib, 8 * 128, "eight online 128 MiB blocks");
        assert_eq!(
            r.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["sda", "vdb"],
            "no loop, optical or empty devices"
        );
        assert_eq!(r.disks[0].size_bytes, 937703088 * 512);
        assert_eq!(r.disks[0].model.as_deref(), Some("SAMSUNG MZ7LH480"));
        assert_eq!(r.disks[0].serial.as_deref(), Some("S45NNE0M"));
        assert_eq!(r.disks[0].rotational, Some(false));
        assert_eq!(
            r.disks[1].serial.as_deref(),
            Some("disk-b"),
            "virtio's serial"
        );
        assert_eq!(r.disks[1].rotational, Some(true));
        assert_eq!(r.nics.len(), 2, "no loopback, no bridge: {:?}", r.nics);
        assert_eq!(r.nics[0].mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(
            (r.nics[0].speed_mbps, r.nics[0].link),
            (Some(10000), Some(true))
        );
        assert_eq!((r.nics[1].speed_mbps, r.nics[1].link), (None, Some(false)));
        assert_eq!(r.system.vendor, "Dell Inc.");
        assert_eq!(r.system.serial, "7XJ2K53");
        assert_eq!(r.firmware, Firmware::Bios);
        write(dir.path(), "sys/firmware/efi/fw_platform_size", "64\n");
        assert_eq!(firmware(dir.path()), Firmware::Uefi);
    }

    /// A Unit Serial Number VPD page: device type 0 (disk), page 0x80, the length, `serial`.
    fn pg80(serial: &[u8]) -> Vec<u8> {
        let mut page = vec![0, 0x80];
        page.extend((serial.len() as u16).to_be_bytes());
        page.extend(serial);
        page
    }

    fn write_bytes(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn scsi_and_sata_disks_serials_from_their_vpd_page() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // libata: the ATA serial right-justified in 20 characters.
        write(root, "sys/block/sda/size", "2048\n");
        write_bytes(
            root,
            "sys/block/sda/device/vpd_pg80",
            &pg80(b"      S45NNE0M123456"),
        );
        // A SAS disk: the serial as it is, padded with a NUL.
        write(root, "sys/block/sdb/size", "2048\n");
        write_bytes(root, "sys/block/sdb/device/vpd_pg80", &pg80(b"ZA1B2C3D\0"));
        // device/serial wins over the page.
        write(root, "sys/block/sdc/size", "2048\n");
        write(root, "sys/block/sdc/device/serial", "from-sysfs\n");
        write_bytes(root, "sys/block/sdc/device/vpd_pg80", &pg80(b"from-vpd"));
        // A RAID volume: no serial page, a world-wide name that is not a serial.
        write(root, "sys/block/sdd/size", "2048\n");
        write(
            root,
            "sys/block/sdd/device/wwid",
            "naa.600508b1001c5ae0d2b3c0d7a4f1e2c3\n",
        );
        // An old kernel's SATA disk: libata's T10 vendor id holds the serial.
        write(root, "sys/block/sde/size", "2048\n");
        write(
            root,
            "sys/block/sde/device/wwid",
            &format!("t10.ATA     {:<40}{:>20}\n", "QEMU HARDDISK", "QM00005"),
        );
        let serials: Vec<(String, Option<String>)> = disks(root)
            .into_iter()
            .map(|d| (d.name, d.serial))
            .collect();
        let want = |n: &str, s: Option<&str>| (n.to_owned(), s.map(str::to_owned));
        assert_eq!(
            serials,
            [
                want("sda", Some("S45NNE0M123456")),
                want("sdb", Some("ZA1B2C3D")),
                want("sdc", Some("from-sysfs")),
                want("sdd", None),
                want("sde", Some("QM00005")),
            ]
        );
    }

    #[test]
    fn malformed_serial_pages_are_ignored() {
        assert_eq!(vpd_pg80_serial(&pg80(b"ABC123")).as_deref(), Some("ABC123"));
        assert_eq!(
            vpd_pg80_serial(&pg80(b" \0 AB C \0")).as_deref(),
            Some("AB C"),
            "inner spaces stay"
        );
        // Extra bytes after the declared length are not part of the serial.
        let mut long = pg80(b"ABC");
        long.extend(b"XYZ");
        assert_eq!(vpd_pg80_serial(&long).as_deref(), Some("ABC"));
        let mut wrong_page = pg80(b"ABC123");
        wrong_page[1] = 0x83;
        let mut cut_short = pg80(b"ABC123");
        cut_short.truncate(7);
        for (what, page) in [
            ("empty", vec![]),
            ("header only, cut", vec![0, 0x80, 0]),
            ("another page", wrong_page),
            ("shorter than its length", cut_short),
            ("blank", pg80(b"    \0\0")),
            ("zero length", pg80(b"")),
            ("not printable", pg80(b"AB\x01CD")),
            ("not ASCII", pg80("S\u{e9}rie".as_bytes())),
        ] {
            assert_eq!(vpd_pg80_serial(&page), None, "{what}: {page:?}");
        }
        // A disk whose page is malformed has no serial rather than a wrong one.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/block/sda/size", "2048\n");
        write_bytes(
            dir.path(),
            "sys/block/sda/device/vpd_pg80",
            &[0, 0x80, 0, 40, b'A'],
        );
        assert_eq!(disks(dir.path())[0].serial, None);

        let t10 = |vendor: &str, model: &str, serial: &str| {
            format!("t10.{vendor:<8}{model:<40}{serial:>20}").into_bytes()
        };
        assert_eq!(
            wwid_serial(&t10("ATA", "SAMSUNG MZ7LH480HAHQ-00005", "S45NNE0M123456")).as_deref(),
            Some("S45NNE0M123456")
        );
        for (what, id) in [
            ("another vendor", t10("HITACHI", "HUS72604", "K7GA1234")),
            ("no serial", t10("ATA", "QEMU HARDDISK", "")),
            ("too short", b"t10.ATA     QEMU HARDDISK QM00005".to_vec()),
            ("naa", b"naa.5000c500a1b2c3d4\n".to_vec()),
            ("eui", b"eui.0025388b71b0e1a1\n".to_vec()),
        ] {
            assert_eq!(wwid_serial(&id), None, "{what}");
        }
    }

    #[test]
    fn fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A VM: one core, no topology lines; no memory blocks: MemTotal.
        write(
            root,
            "proc/cpuinfo",
            "processor : 0\nmodel name : QEMU Virtual CPU version 2.5+\n\n",
        );
        write(root, "proc/meminfo", "MemTotal:        1015808 kB\n");
        let r = collect(root).unwrap();
        assert_eq!((r.cpu.cores, r.cpu.threads), (1, 1));
        assert_eq!(r.memory_mib, 992);
        assert!(r.disks.is_empty() && r.nics.is_empty());
        assert_eq!(r.system.vendor, "");
        write(root, "proc/cpuinfo", "");
        assert!(collect(root).unwrap_err().contains("no processor"));
    }
}
