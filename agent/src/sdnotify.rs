//! systemd's notification protocol (sd_notify(3)): one datagram per state to
//! `$NOTIFY_SOCKET`. Sent without blocking: a notification that cannot be
//! queued at once is dropped, so a slow or absent reader never stalls the agent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`); a no-op without `NOTIFY_SOCKET`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        }
        None => sock.send_to(state.as_bytes(), std::path::Path::new(&path)),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, state, "systemd notification not sent");
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or this process (libsystemd's rule).
pub fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let ours = std::env::var("WATCHDOG_PID").map_or(true, |p| p.parse() == Ok(std::process::id()));
    (usec > 0 && ours).then_some(usec)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_socket_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // Only notify() reads the variable in this test binary.
        std::env::set_var("NOTIFY_SOCKET", &path);
        for _ in 0..1000 {
            super::notify("WATCHDOG=1"); // the queue fills after a few; the rest are dropped
        }
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
    }
}
