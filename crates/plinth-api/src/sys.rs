//! The one system call plinth-api makes itself: sendfile(2), so that image files go from the
//! page cache to the socket without passing through user space.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

/// Sends up to `count` bytes of `file` from `*offset` to `socket` (non-blocking), advancing
/// `offset`. Returns the bytes sent (0: end of file); `WouldBlock` when the socket is full.
pub fn sendfile(
    socket: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut u64,
    count: usize,
) -> std::io::Result<usize> {
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: both descriptors are borrowed, so open for the duration of the call; `off` is a
    // valid, exclusively borrowed off_t for the kernel to read and update.
    let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    *offset = u64::try_from(off).unwrap_or(*offset);
    Ok(n as usize)
}
