//! The one thing std does not offer the agent: asking the kernel to re-read a disk's partition
//! table (the BLKRRPART ioctl, what `blockdev --rereadpt` and `partprobe` do), so that the
//! partitions of the image just written, and the seed partition, show up as block devices.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IO(0x12, 95)` from linux/fs.h.
const BLKRRPART: libc::c_ulong = 0x125f;

/// Re-reads the partition table of the block device `disk` is open on. Fails with ENOTTY on a
/// plain file and EBUSY when a partition of the disk is in use.
pub fn reread_partitions(disk: &File) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument; the fd is open for as long as `disk` lives.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART as _) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
