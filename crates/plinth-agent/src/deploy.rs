//! Writing a disk image: the HTTP body is decompressed on the fly (gzip, zstd) on one thread
//! and written to the disk on another, through a few 1 MiB buffers: the image is never held in
//! memory or on the ramdisk. After an fsync the disk is read back, past the page cache, and its
//! SHA-256 must be the catalog's for the written image. (For catalog entries that predate that
//! hash, the body is hashed as it arrives, against the catalog's hash of the file as served, and
//! as it is written, for the read-back.) Then the seed partition goes after the image.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plinth_client::path;
use plinth_types::api::{
    CleanResult, Compression, DeployManifest, DeployProgress, DeployReport, SEED_PARTITION_BYTES,
    SEED_RESERVE_BYTES,
};
use sha2::{Digest, Sha256};

use crate::cmdline::Params;
use crate::partition::{self, Partition};
use crate::{Args, Failure, api, call, netdiag, say, seed, sys, why};

const CHUNK: usize = 1024 * 1024;
/// Buffers in flight between the decompressing and the writing thread.
const DEPTH: usize = 8;

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Bytes written to the disk (the image decompressed).
    pub bytes: u64,
    /// Bytes received: the file as plinth served it.
    pub served_bytes: u64,
    /// SHA-256 of the bytes received and of those written, when asked for (they are the same
    /// for an uncompressed image, hashed once).
    pub hashes: Option<Hashes>,
    /// Seconds from the first byte asked for to the fsync's end.
    pub secs: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    pub served: String,
    pub written: String,
}

/// Why a write failed: the class decides whether another attempt may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Reading the image from the network failed: worth another try.
    Download(String),
    /// The image is not valid gzip or zstd.
    Decompress(String),
    /// The disk refused a write (or the image does not fit it).
    Disk(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Download(e) => write!(f, "downloading the image failed: {e}"),
            WriteError::Decompress(e) => write!(f, "the image does not decompress: {e}"),
            WriteError::Disk(e) => write!(f, "writing the disk failed: {e}"),
        }
    }
}

/// Counts (and hashes, if it has a hasher) what is read through it, and remembers whether the
/// error it passed on was its own source's (the network's) rather than the decoder's.
struct Tee<R> {
    inner: R,
    hash: Option<Sha256>,
    bytes: u64,
    failed: bool,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(h) = &mut self.hash {
                    h.update(&buf[..n]);
                }
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns how much it holds.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes the image read from `src` to `disk` from its first byte, decompressing it as
/// `compression` says, hashing what it receives and writes if `hash` says so (SHA-256 costs
/// more CPU than the rest: when the catalog knows the written image's hash, reading the disk
/// back is the check, and the write does not hash). `written` follows the bytes on the disk,
/// for progress reports.
pub fn write_image(
    src: impl Read + Send,
    compression: Compression,
    hash: bool,
    disk: &File,
    disk_name: &str,
    written: &AtomicU64,
) -> Result<Written, WriteError> {
    let started = Instant::now();
    (&*disk)
        .seek(SeekFrom::Start(0))
        .map_err(|e| WriteError::Disk(format!("{disk_name}: {e}")))?;
    written.store(0, Ordering::Relaxed);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
    let (decoded, wrote) = std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<(u64, Option<String>), WriteError> {
            let mut tee = Tee {
                inner: src,
                hash: hash.then(Sha256::new),
                bytes: 0,
                failed: false,
            };
            let classify = |tee: &Tee<_>, e: io::Error| {
                if tee.failed {
                    WriteError::Download(e.to_string())
                } else {
                    WriteError::Decompress(e.to_string())
                }
            };
            {
                let mut decoder: Box<dyn Read + '_> = match compression {
                    Compression::None => Box::new(&mut tee),
                    Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                        io::BufReader::with_capacity(CHUNK, &mut tee),
                    )),
                    Compression::Zstd => Box::new(
                        zstd::stream::read::Decoder::new(&mut tee)
                            .map_err(|e| WriteError::Decompress(e.to_string()))?,
                    ),
                };
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    let n = match fill(&mut decoder, &mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            drop(decoder);
                            return Err(classify(&tee, e));
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    if tx.send(buf).is_err() {
                        // The writer stopped; its error is the one to report.
                        break;
                    }
                }
            }
            drop(tx);
            Ok((tee.bytes, tee.hash.map(|h| hex::encode(h.finalize()))))
        });
        // (`move`: the receiver goes with the closure, so that a write error ends the reader's
        // sends instead of leaving it blocked on a full channel)
        // (an uncompressed image is hashed once, as it arrives)
        let mut hasher = (hash && compression != Compression::None).then(Sha256::new);
        let wrote = (move || -> Result<(u64, Option<String>), WriteError> {
            let mut out = disk;
            let mut bytes = 0u64;
            for buf in rx.iter() {
                out.write_all(&buf)
                    .map_err(|e| WriteError::Disk(format!("{disk_name} at byte {bytes}: {e}")))?;
                if let Some(h) = &mut hasher {
                    h.update(&buf);
                }
                bytes += buf.len() as u64;
                written.store(bytes, Ordering::Relaxed);
            }
            Ok((bytes, hasher.map(|h| hex::encode(h.finalize()))))
        })();
        let decoded = reader
            .join()
            .unwrap_or_else(|_| Err(WriteError::Decompress("the decoder panicked".into())));
        (decoded, wrote)
    });
    // A write error explains a reader that stopped early, not the other way round.
    let (bytes, written_hash) = wrote?;
    let (served_bytes, served_hash) = decoded?;
    disk.sync_all()
        .map_err(|e| WriteError::Disk(format!("{disk_name}: flushing: {e}")))?;
    let hashes = served_hash.map(|served| Hashes {
        written: written_hash.unwrap_or_else(|| served.clone()),
        served,
    });
    Ok(Written {
        bytes,
        served_bytes,
        hashes,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Drops clean pages from the page cache (`/proc/sys/vm/drop_caches` under `root`), so that
/// reading the disk back reads the disk. Best effort: a read from cache still checks the
/// path from the network to the kernel.
pub fn drop_caches(root: &Path) -> io::Result<()> {
    std::fs::write(root.join("proc/sys/vm/drop_caches"), "1\n")
}

/// SHA-256 of the first `len` bytes of `disk`.
pub fn sha256_of(disk: &File, len: u64) -> io::Result<String> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 4 * CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        disk.read_exact_at(&mut buf[..n], at)?;
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

/// How often progress goes to plinth while writing.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Attempts at downloading the image when the network fails part-way.
const ATTEMPTS: u32 = 3;

/// Deploy mode: fetch the manifest, write the image and the seed, report the outcome.
pub fn run(a: &Args, p: &Params) -> Result<(), String> {
    let m = match call(&a.root, p, &path::deploy_manifest(&p.machine), |api| {
        api.deploy_manifest(&p.machine)
    }) {
        Ok(m) => m,
        Err(Failure::Refused(e)) => return Err(format!("plinth refused the manifest: {e}")),
        Err(Failure::GaveUp(e)) => return Err(format!("could not fetch the manifest: {e}")),
    };
    say(format!(
        "deploying {} ({} bytes as served, {:?}{}) to /dev/{}",
        m.image,
        m.size,
        m.compression,
        m.raw_size
            .map(|n| format!(", {n} bytes written"))
            .unwrap_or_default(),
        m.root_device
    ));
    let outcome = deploy(a, p, &m);
    let report = match &outcome {
        Ok((bytes, sha256)) => DeployReport {
            result: CleanResult::Complete,
            reason: None,
            bytes_written: Some(*bytes),
            sha256: Some(sha256.clone()),
        },
        Err(e) => {
            say(format!("FAILED: {e}"));
            DeployReport {
                result: CleanResult::Failed,
                // plinth takes at most 1024 bytes of reason.
                reason: Some(e.chars().take(1000).collect()),
                bytes_written: None,
                sha256: None,
            }
        }
    };
    // (before the report: plinth power-cycles the machine as soon as it has it)
    say(format!("peak memory {} KiB", crate::peak_kib()));
    say("reporting to plinth");
    match call(&a.root, p, &path::deploy_report(&p.machine), |api| {
        api.report_deploy(&p.machine, &report)
    }) {
        Ok(m) => say(format!(
            "plinth took the report: the machine is {}",
            m.state
        )),
        Err(Failure::Refused(e)) => return Err(format!("plinth refused the report: {e}")),
        Err(Failure::GaveUp(e)) => return Err(format!("could not report: {e}")),
    }
    outcome
        .map(|_| ())
        .map_err(|e| format!("deploy failed: {e}"))
}

/// Everything between the manifest and the report: the bytes written and their SHA-256 as
/// read back from the disk.
fn deploy(a: &Args, p: &Params, m: &DeployManifest) -> Result<(u64, String), String> {
    let name = &m.root_device;
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!("root device {name:?} is not a disk name"));
    }
    let path = a.dev.join(name);
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let disk_size = (&disk)
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(raw) = m.raw_size
        && raw + SEED_RESERVE_BYTES > disk_size
    {
        return Err(format!(
            "/dev/{name} has {disk_size} bytes: too small for the image ({raw} bytes) and its seed"
        ));
    }

    // What the disk must hold: the catalog's hash of the written image when it has one (then
    // the write itself hashes nothing), else what the write hashed as it went.
    let hash_while_writing = m.raw_sha256.is_none();
    let written = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let w = std::thread::scope(|s| {
        s.spawn(|| report_progress(p, m.raw_size, &written, &done));
        let res = download(&a.root, p, m, &disk, hash_while_writing, &written);
        done.store(true, Ordering::Relaxed);
        res
    })?;
    say(format!(
        "wrote {} bytes to /dev/{name} in {:.1} s ({:.1} MiB/s; {} bytes downloaded)",
        w.bytes,
        w.secs,
        w.bytes as f64 / w.secs.max(0.001) / (1024.0 * 1024.0),
        w.served_bytes
    ));
    let mismatch = |what: &str, got: &str, want: &str| {
        format!(
            "sha256 mismatch: {what} has sha256 {got}, the catalog says {want} for image {}: its file changed after it was registered, or the disk does not keep what it is given",
            m.image
        )
    };
    let want = match (&m.raw_sha256, &w.hashes) {
        (Some(raw), _) => raw.clone(),
        (None, Some(h)) => {
            if h.served != m.sha256 {
                return Err(mismatch(
                    &format!("the file plinth served ({} bytes)", w.served_bytes),
                    &h.served,
                    &m.sha256,
                ));
            }
            h.written.clone()
        }
        (None, None) => return Err("nothing to check the written image against".into()),
    };

    // Read back what the disk holds, from the disk rather than the page cache.
    let t = Instant::now();
    if let Err(e) = drop_caches(&a.root) {
        say(format!(
            "could not drop the page cache ({e}): reading back through it"
        ));
    }
    let back = sha256_of(&disk, w.bytes).map_err(|e| format!("reading /dev/{name} back: {e}"))?;
    if back != want {
        return Err(mismatch(
            &format!(
                "what /dev/{name} holds (the {} bytes written, read back)",
                w.bytes
            ),
            &back,
            &want,
        ));
    }
    say(format!(
        "verified: /dev/{name} holds sha256 {back} (read back in {:.1} s)",
        t.elapsed().as_secs_f64()
    ));

    reread(&disk, a, name, None)?;
    let seed = write_seed(&mut disk, disk_size, w.bytes, m)?;
    reread(&disk, a, name, Some(seed.number))?;
    say(format!(
        "cloud-init seed (cidata) in partition {} of /dev/{name}: {} bytes at {}",
        seed.number, seed.len, seed.start
    ));
    Ok((w.bytes, back))
}

/// Downloads and writes the image, trying again when the network fails part-way. A download
/// that does not start names the step that failed (netdiag.rs), reading the network under
/// `root`.
fn download(
    root: &std::path::Path,
    p: &Params,
    m: &DeployManifest,
    disk: &File,
    hash: bool,
    written: &AtomicU64,
) -> Result<Written, String> {
    // Streamed: connecting may take 10 s, and each read 60 s, however long the whole takes.
    let api = api(p);
    let url = api.url(&m.url_path);
    let mut attempt = 1;
    loop {
        let res = match api.download(&m.url_path) {
            Ok(body) => write_image(body, m.compression, hash, disk, &m.root_device, written),
            Err(e) if !e.is_transient() => {
                return Err(format!("downloading {url}: {}", why(&e)));
            }
            Err(e) => Err(WriteError::Download(format!(
                "{url}: {}",
                netdiag::diagnose(root, &url, &netdiag::Attempt::of(&e))
            ))),
        };
        match res {
            Err(WriteError::Download(e)) if attempt < ATTEMPTS => {
                say(format!(
                    "attempt {attempt}: downloading failed ({e}); starting again in 5 s"
                ));
                std::thread::sleep(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

/// Posts the bytes written every few seconds until `done`; a report that does not go through
/// is only logged (the write goes on, and plinth's deploy timeout watches for a silent agent).
fn report_progress(p: &Params, total: Option<u64>, written: &AtomicU64, done: &AtomicBool) {
    let api = api(p);
    let (mut last, mut at) = (0u64, Instant::now());
    let mut next = Instant::now();
    while !done.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let now = written.load(Ordering::Relaxed);
            let rate =
                (now.saturating_sub(last) as f64 / at.elapsed().as_secs_f64().max(0.001)) as u64;
            (last, at) = (now, Instant::now());
            let body = DeployProgress {
                bytes_written: now,
                total_bytes: total,
                bytes_per_sec: rate,
            };
            say(format!(
                "{} of {} MiB written, {:.1} MiB/s",
                now / (1024 * 1024),
                total.map_or("?".into(), |t| (t / (1024 * 1024)).to_string()),
                rate as f64 / (1024.0 * 1024.0)
            ));
            // (one attempt, with a 10 s timeout: the next report comes soon enough)
            if let Err(e) = api.report_deploy_progress(&p.machine, &body) {
                say(format!("progress report not taken: {}", why(&e)));
            }
            next = Instant::now() + PROGRESS_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Adds the seed partition after the image's last one and writes the NoCloud files into it
/// as a FAT file system labelled `cidata`.
fn write_seed(
    disk: &mut File,
    disk_size: u64,
    image_end: u64,
    m: &DeployManifest,
) -> Result<Partition, String> {
    let name = &m.root_device;
    match partition::read(disk)
        .map_err(|e| format!("reading /dev/{name}'s partition table: {e}"))?
    {
        Some(_) => {}
        None => {
            return Err(format!(
                "the image {} has no MBR or GPT partition table on /dev/{name}: there is nowhere to put the cloud-init seed",
                m.image
            ));
        }
    }
    let part = partition::add_partition(disk, disk_size, image_end, SEED_PARTITION_BYTES, "cidata")
        .map_err(|e| format!("adding the seed partition to /dev/{name}: {e}"))?;
    let mut files: Vec<(&str, &[u8])> = vec![
        ("meta-data", m.seed.meta_data.as_bytes()),
        ("user-data", m.seed.user_data.as_bytes()),
    ];
    if let Some(n) = &m.seed.network_config {
        files.push(("network-config", n.as_bytes()));
    }
    let id = Sha256::digest(m.seed.meta_data.as_bytes());
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    let fat = seed::fat_image("cidata", volume_id, &files, part.len)
        .map_err(|e| format!("the cloud-init seed: {e}"))?;
    disk.write_all_at(&fat, part.start)
        .and_then(|()| disk.sync_all())
        .map_err(|e| format!("writing the seed to /dev/{name}: {e}"))?;
    Ok(part)
}

/// Has the kernel re-read `disk`'s partition table (block devices only: the tests write
/// files) and, when `expect` names a partition, checks the kernel now knows it.
fn reread(disk: &File, a: &Args, name: &str, expect: Option<u32>) -> Result<(), String> {
    let is_block = disk
        .metadata()
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if !is_block {
        return Ok(());
    }
    sys::reread_partitions(disk)
        .map_err(|e| format!("re-reading /dev/{name}'s partition table: {e}"))?;
    let Some(n) = expect else { return Ok(()) };
    // nvme0n1 → nvme0n1p3, vda → vda3
    let sep = if name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    let part = format!("{name}{sep}{n}");
    let sysfs = a.root.join("sys/class/block").join(&part);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sysfs.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "the kernel does not show /dev/{part} after re-reading /dev/{name}'s partition table"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image with some structure: compressible runs and noise.
    fn image(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|i| {
                if (i / 4096) % 3 == 0 {
                    0
                } else {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }
            })
            .collect()
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn disk(dir: &Path, len: u64) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("vda"))
            .unwrap();
        f.set_len(len).unwrap();
        f
    }

    fn write(served: &[u8], c: Compression, d: &File) -> Result<Written, WriteError> {
        let n = AtomicU64::new(0);
        let w = write_image(served, c, true, d, "vda", &n);
        if let Ok(w) = &w {
            assert_eq!(n.load(Ordering::Relaxed), w.bytes);
        }
        w
    }

    #[test]
    fn raw_gzip_and_zstd_land_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let raw = image(5 * CHUNK + 777);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&raw[..], 3).unwrap();
        for (served, c) in [
            (&raw, Compression::None),
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
        ] {
            let d = disk(dir.path(), 16 * CHUNK as u64);
            let w = write(served, c, &d).unwrap();
            assert_eq!(w.bytes, raw.len() as u64, "{c:?}");
            let h = w.hashes.clone().unwrap();
            assert_eq!(h.written, sha(&raw));
            assert_eq!(w.served_bytes, served.len() as u64);
            assert_eq!(h.served, sha(served));
            assert_eq!(sha256_of(&d, w.bytes).unwrap(), sha(&raw));
            let on_disk = std::fs::read(dir.path().join("vda")).unwrap();
            assert_eq!(&on_disk[..raw.len()], &raw[..]);
            assert!(on_disk[raw.len()..].iter().all(|b| *b == 0));
            // Without hashing: the same bytes, no hashes.
            let d = disk(dir.path(), 16 * CHUNK as u64);
            let n = AtomicU64::new(0);
            let w = write_image(&served[..], c, false, &d, "vda", &n).unwrap();
            assert_eq!((w.bytes, w.hashes), (raw.len() as u64, None));
            assert_eq!(sha256_of(&d, w.bytes).unwrap(), sha(&raw));
        }
    }

    #[test]
    fn a_corrupt_image_is_a_decompress_error() {
        let dir = tempfile::tempdir().unwrap();
        let raw = image(3 * CHUNK);
        let mut zst = zstd::encode_all(&raw[..], 3).unwrap();
        let mid = zst.len() / 2;
        zst[mid..mid + 64].fill(0xff);
        let d = disk(dir.path(), 8 * CHUNK as u64);
        let e = write(&zst, Compression::Zstd, &d).unwrap_err();
        assert!(matches!(e, WriteError::Decompress(_)), "{e:?}");
        let e = write(&raw, Compression::Gzip, &d).unwrap_err();
        assert!(e.to_string().contains("does not decompress"), "{e}");
    }

    /// A source that fails half-way, as a dropped connection does.
    struct Broken(Vec<u8>, usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() / 2 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset",
                ));
            }
            let n = buf.len().min(self.0.len() / 2 - self.1).min(4096);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn a_dropped_download_is_a_download_error_even_when_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = image(3 * CHUNK);
        let d = disk(dir.path(), 8 * CHUNK as u64);
        let n = AtomicU64::new(0);
        let e = write_image(
            Broken(raw.clone(), 0),
            Compression::None,
            true,
            &d,
            "vda",
            &n,
        )
        .unwrap_err();
        assert!(matches!(e, WriteError::Download(_)), "{e:?}");
        let zst = zstd::encode_all(&raw[..], 1).unwrap();
        let e = write_image(Broken(zst, 0), Compression::Zstd, false, &d, "vda", &n).unwrap_err();
        assert!(matches!(e, WriteError::Download(_)), "{e:?}");
    }

    #[test]
    fn an_image_larger_than_the_disk_is_a_disk_error() {
        // /dev/full refuses every write with ENOSPC, as a full block device does.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let n = AtomicU64::new(0);
        // More buffers than the channel holds: the reader must not wait forever for a writer
        // that gave up.
        let e = write_image(
            &image(4 * DEPTH * CHUNK)[..],
            Compression::None,
            false,
            &full,
            "full",
            &n,
        )
        .unwrap_err();
        assert!(matches!(e, WriteError::Disk(_)), "{e:?}");
        assert!(e.to_string().contains("full at byte 0"), "{e}");
    }
}
