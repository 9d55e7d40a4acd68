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

/// A plain HTTP/1.1 GET on loopback: the status and the body (the servers the tests
/// talk to answer with a length or close the connection).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("GET {path}: no end of headers")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("GET {path}: no status in {head:?}")))?;
    // A chunked body is not expected from these servers; say so rather than misread it.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(io::Error::other(format!("GET {path}: chunked answer")));
    }
    Ok((status, body.to_string()))
}

/// `s` with everything but unreserved characters percent-encoded (a query value).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
