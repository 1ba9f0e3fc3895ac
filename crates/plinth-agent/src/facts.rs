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
                serial: nonempty(read(&b.join("device/serial")))
                    .or_else(|| nonempty(read(&b.join("serial")))),
                rotational: read(&b.join("queue/rotational")).map(|r| r == "1"),
                name,
            })
        })
        .collect()
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
