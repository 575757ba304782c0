//! The one network call the agent makes itself: bringing a new network
//! namespace's loopback up (what the CNI `loopback` plugin does, without
//! starting a process for it).

use std::os::fd::AsRawFd;

/// Sets `lo` of the calling thread's network namespace up (IFF_UP).
pub fn loopback_up() -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
        // A new namespace's loopback is down: no address to bind yet. Any
        // AF_INET datagram socket serves for the ioctl.
        std::net::UdpSocket::bind("0.0.0.0:0")
    })?;
    let fd = sock.as_raw_fd();
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`
    // into its union; `req` lives across the call and `fd` is an open socket.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union holds the flags SIOCGIFFLAGS just wrote.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 1: it fits the short the flags are.
    let up = libc::c_short::try_from(libc::IFF_UP).map_err(std::io::Error::other)?;
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: SIOCSIFFLAGS reads `req` (name and flags); same lifetimes as above.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
