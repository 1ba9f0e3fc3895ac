//! The two things std and socket2 do not offer: reading an interface's IPv4 address
//! (getifaddrs) and writing an ARP entry (SIOCSARP), so that a reply can be unicast to a client
//! that has no address yet and so cannot answer ARP. dnsmasq and ISC dhcpd do the same.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;

use plinth_types::MacAddr;

/// The first IPv4 address and prefix length of interface `name`.
pub fn interface_ipv4(name: &str) -> io::Result<Option<(Ipv4Addr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we own and must free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of family sa_family.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if ifname.to_bytes() != name.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET, ifa_addr and ifa_netmask point to sockaddr_in.
        let addr = unsafe { *(ifa.ifa_addr as *const libc::sockaddr_in) };
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: as above.
            let mask = unsafe { *(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        found = Some((Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), prefix));
        break;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// Adds (or replaces) the ARP entry `ip` → `mac` on interface `ifname`.
pub fn set_arp(fd: std::os::fd::RawFd, ifname: &str, ip: Ipv4Addr, mac: MacAddr) -> io::Result<()> {
    // SAFETY: arpreq is plain old data; all-zero is a valid starting value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes); we copy its bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            &sin as *const libc::sockaddr_in as *const u8,
            &mut req.arp_pa as *mut libc::sockaddr as *mut u8,
            std::mem::size_of::<libc::sockaddr_in>(),
        );
    }
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (i, b) in mac.octets().iter().enumerate() {
        req.arp_ha.sa_data[i] = *b as libc::c_char;
    }
    req.arp_flags = libc::ATF_COM;
    let name = ifname.as_bytes();
    if name.len() >= req.arp_dev.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (i, b) in name.iter().enumerate() {
        req.arp_dev[i] = *b as libc::c_char;
    }
    // SAFETY: fd is an open socket; req is a valid arpreq for SIOCSARP.
    if unsafe { libc::ioctl(fd, libc::SIOCSARP, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_MEMINFO` (asm-generic/socket.h, Linux 4.12; the libc crate does not name it).
const SO_MEMINFO: libc::c_int = 55;

/// Datagrams the kernel dropped on this socket since it was opened because its receive buffer
/// was full (`SK_MEMINFO_DROPS`, a 32-bit count that wraps).
pub fn socket_drops(fd: std::os::fd::RawFd) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: fd is an open socket; info is writable for len bytes, and the kernel writes at
    // most len and stores the length it wrote.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let drops = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (drops + 1) * std::mem::size_of::<u32>() {
        return Err(io::Error::other("SO_MEMINFO returned no drop count"));
    }
    Ok(info[drops])
}

/// Sets a socket's receive buffer to `bytes`, past `net.core.rmem_max` when the process may
/// (CAP_NET_ADMIN: SO_RCVBUFFORCE), else as far as that limit allows. A boot storm arrives in
/// bursts; the default buffer (about 200 KiB, some 150 packets) overflows while the server
/// is busy for a few milliseconds.
pub fn set_receive_buffer(fd: std::os::fd::RawFd, bytes: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: fd is an open socket; the option value is a c_int of the given length.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                len,
            )
        };
        if r == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// The kernel's own count: a socket with a small buffer that nobody reads drops what
    /// does not fit, and `socket_drops` reports exactly those.
    #[test]
    fn socket_drops_counts_what_a_full_buffer_refused() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = rx.as_raw_fd();
        assert_eq!(super::socket_drops(fd).unwrap(), 0);
        let small: libc::c_int = 4096;
        // SAFETY: fd is an open socket; the value is a c_int of its length.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &small as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 200u32;
        for _ in 0..sent {
            tx.send_to(&[0u8; 300], rx.local_addr().unwrap()).unwrap();
        }
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let mut queued = 0u32;
        while rx.recv_from(&mut buf).is_ok() {
            queued += 1;
        }
        let dropped = super::socket_drops(fd).unwrap();
        assert!(
            queued > 0 && dropped > 0,
            "{queued} queued, {dropped} dropped"
        );
        assert_eq!(queued + dropped, sent);
    }
}
