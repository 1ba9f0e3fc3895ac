//! What std does not offer the agent, as ioctls on a disk's file descriptor: re-reading a
//! partition table (BLKRRPART), discarding a device's blocks (BLKDISCARD, BLKSECDISCARD),
//! dropping its buffered pages (BLKFLSBUF), NVMe admin commands through the kernel's
//! passthrough (NVME_IOCTL_ID, NVME_IOCTL_ADMIN_CMD): Identify and Format NVM, and SCSI
//! commands (SG_IO) carrying ATA ones (ATA PASS-THROUGH, see ata.rs).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IO(0x12, 95)` from linux/fs.h.
const BLKRRPART: libc::c_ulong = 0x125f;
/// `_IO(0x12, 97)`: write back and drop the device's buffered pages.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// `_IO(0x12, 119)`, `_IO(0x12, 125)`: discard (securely) a byte range, `u64[2]` {start, len}.
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKSECDISCARD: libc::c_ulong = 0x127d;
/// `_IO('N', 0x40)`: the namespace id of an NVMe namespace's block device.
const NVME_IOCTL_ID: libc::c_ulong = 0x4e40;
/// `_IOWR('N', 0x41, struct nvme_passthru_cmd)` (72 bytes) from linux/nvme_ioctl.h.
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong = 0xc048_4e41;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Re-reads the partition table of the block device `disk` is open on. Fails with ENOTTY on a
/// plain file and EBUSY when a partition of the disk is in use.
pub fn reread_partitions(disk: &File) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument; the fd is open for as long as `disk` lives.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART as _) }).map(|_| ())
}

/// Writes back and drops the block device's cached pages, so that reads see the device.
pub fn flush_buffers(disk: &File) -> io::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), BLKFLSBUF as _) }).map(|_| ())
}

/// Drops a file's clean cached pages (posix_fadvise DONTNEED), best effort: for a plain file,
/// where BLKFLSBUF does not apply.
pub fn drop_cached_pages(f: &File) {
    // SAFETY: posix_fadvise only reads its arguments; the fd is open for as long as `f` lives.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Discards `len` bytes at `start` (both multiples of the logical block size); `secure`: the
/// device must also erase them from where they were stored (BLKSECDISCARD). EOPNOTSUPP when
/// the device cannot, ENOTTY on a plain file.
pub fn discard(disk: &File, start: u64, len: u64, secure: bool) -> io::Result<()> {
    let range: [u64; 2] = [start, len];
    let req = if secure { BLKSECDISCARD } else { BLKDISCARD };
    // SAFETY: both ioctls read a `u64[2]` that lives across the call.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), req as _, range.as_ptr()) }).map(|_| ())
}

/// The namespace id of the NVMe namespace `disk` is open on (ENOTTY: not an NVMe namespace).
pub fn nvme_namespace_id(disk: &File) -> io::Result<u32> {
    // SAFETY: NVME_IOCTL_ID takes no argument and returns the id.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), NVME_IOCTL_ID as _) }).map(|id| id as u32)
}

/// `struct nvme_passthru_cmd` (linux/nvme_ioctl.h).
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<PassthruCmd>() == 72);

/// An NVMe admin command: Ok with the command's result dword, or an error carrying the NVMe
/// status code the controller answered.
#[derive(Debug, Clone, Copy)]
pub struct AdminCmd {
    pub opcode: u8,
    pub nsid: u32,
    pub cdw10: u32,
    pub cdw11: u32,
    pub timeout_ms: u32,
}

pub fn nvme_admin(disk: &File, c: AdminCmd, data: Option<&mut [u8]>) -> io::Result<u32> {
    let (addr, data_len) = match data {
        Some(d) => (
            d.as_mut_ptr() as u64,
            u32::try_from(d.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        ),
        None => (0, 0),
    };
    let mut cmd = PassthruCmd {
        opcode: c.opcode,
        nsid: c.nsid,
        addr,
        data_len,
        cdw10: c.cdw10,
        cdw11: c.cdw11,
        timeout_ms: c.timeout_ms,
        ..PassthruCmd::default()
    };
    // SAFETY: the command struct and the data buffer it points to live across the call; the
    // kernel writes at most `data_len` bytes into the buffer.
    let status = check(unsafe {
        libc::ioctl(
            disk.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD as _,
            &mut cmd as *mut PassthruCmd,
        )
    })?;
    if status != 0 {
        return Err(io::Error::other(format!(
            "NVMe status {status:#06x} for admin command {:#04x}",
            c.opcode
        )));
    }
    Ok(cmd.result)
}

/// `SG_IO` from scsi/sg.h.
const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;

/// `struct sg_io_hdr` (scsi/sg.h).
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut u8,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: libc::c_int,
    usr_ptr: *mut u8,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: libc::c_int,
    duration: u32,
    info: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 88);

/// Sends a 16-byte SCSI command block with `data` going out (`to_device`), coming in, or none
/// (empty). ENOTTY or EINVAL: the device takes no SG_IO (virtio-blk, a file); a SCSI or ATA
/// error is an error naming its status and the first sense bytes.
pub fn sg_io(
    disk: &File,
    cdb: &[u8; 16],
    data: &mut [u8],
    to_device: bool,
    timeout_ms: u32,
) -> io::Result<()> {
    let mut sense = [0u8; 32];
    let mut hdr = SgIoHdr {
        interface_id: b'S' as libc::c_int,
        dxfer_direction: match (data.is_empty(), to_device) {
            (true, _) => SG_DXFER_NONE,
            (false, true) => SG_DXFER_TO_DEV,
            (false, false) => SG_DXFER_FROM_DEV,
        },
        cmd_len: 16,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: u32::try_from(data.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        dxferp: if data.is_empty() {
            std::ptr::null_mut()
        } else {
            data.as_mut_ptr()
        },
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: the header and every buffer it points to (command, data, sense) live across the
    // call; the kernel writes at most dxfer_len and mx_sb_len bytes into them.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), SG_IO as _, &mut hdr as *mut SgIoHdr) })?;
    if hdr.status != 0 || hdr.host_status != 0 || hdr.driver_status & 0x0f != 0 {
        let n = usize::from(hdr.sb_len_wr).min(sense.len());
        return Err(io::Error::other(format!(
            "SCSI status {:#04x}, host {:#06x}, driver {:#06x}, sense {:02x?}",
            hdr.status,
            hdr.host_status,
            hdr.driver_status,
            &sense[..n.min(18)]
        )));
    }
    Ok(())
}
