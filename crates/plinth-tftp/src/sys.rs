//! The one socket option std and socket2 do not offer: UDP generic segmentation offload.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

/// `UDP_SEGMENT` (linux/udp.h): sends larger than this are split by the kernel into datagrams
/// of this size, the last one shorter. One system call then sends a whole TFTP window.
const UDP_SEGMENT: libc::c_int = 103;

pub fn set_udp_segment(socket: BorrowedFd<'_>, size: u16) -> std::io::Result<()> {
    let value = libc::c_int::from(size);
    // SAFETY: the descriptor is borrowed (open for the call); the option value is a c_int
    // that outlives the call, and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
