//! Loopback ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago: bind port 0, read the
/// port the kernel picked, close.
///
/// Another process may take the port before the caller binds it; the kernel
/// hands out ephemeral ports round-robin, so that race is rare in practice,
/// and a server that fails to bind reports it at start.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `127.0.0.1:port` accepts a TCP connection, polling every
/// 20 ms, for at most `limit`. Returns whether it did.
pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + limit;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_wait_sees_listener() -> io::Result<()> {
        let port = free_port()?;
        assert_ne!(port, 0);
        assert!(!wait_for_port(port, Duration::from_millis(50)));
        let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        assert!(wait_for_port(port, Duration::from_secs(1)));
        Ok(())
    }
}
