//! Loopback ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago, never handed out before in this
/// process.
///
/// It is taken from below the kernel's ephemeral range (`ip_local_port_range`), which
/// outgoing connections draw their local ports from: a port picked there could be taken
/// by any client's connection before the server binds it. Another process may still
/// bind it first; a server that fails to bind reports it at start.
pub fn free_port() -> io::Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    // A small xorshift seeded by time and pid: spread across processes and runs.
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
        | 1;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let span = u64::from(high - low);
        let port = low + u16::try_from(x % span).unwrap_or(0);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    // Everything below the ephemeral range is busy: fall back to the kernel's choice.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    given.insert(port);
    Ok(port)
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
    http_request(addr, "GET", path, &[], None).map(|r| (r.status, r.body))
}

/// An HTTP answer as [`http_request`] read it.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header lines, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy) and as the bytes sent.
    pub body: String,
    pub bytes: Vec<u8>,
}

impl HttpAnswer {
    /// The `name=value` part of the cookie `name` the answer sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(h, _)| h == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next())
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }
}

/// One plain HTTP/1.1 request on loopback (`Connection: close`) with the given extra
/// headers and, for a form, an `application/x-www-form-urlencoded` body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(f) = form {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{f}",
            f.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("{method} {path}: no end of headers")))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let bytes = all.split_off(split + 4);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{method} {path}: no status in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // A chunked body is not expected from these servers; say so rather than misread it.
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        return Err(io::Error::other(format!("{method} {path}: chunked answer")));
    }
    Ok(HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
    })
}

/// Signs in to the review web UI at `addr` through its form, as a browser would; returns
/// the session cookie (`name=value`).
pub fn web_sign_in(addr: SocketAddr, user: &str, password: &str) -> io::Result<String> {
    let form = http_request(addr, "GET", "/login", &[], None)?;
    let login = form
        .cookie("custos_login")
        .ok_or_else(|| io::Error::other("GET /login set no custos_login cookie"))?;
    let marker = "name=\"csrf\" value=\"";
    let csrf = form
        .body
        .split_once(marker)
        .and_then(|(_, rest)| rest.split('"').next())
        .ok_or_else(|| io::Error::other("GET /login: no CSRF field"))?;
    let answer = http_request(
        addr,
        "POST",
        "/login",
        &[("Cookie", &login)],
        Some(&format!(
            "user={}&password={}&csrf={}",
            url_encode(user),
            url_encode(password),
            url_encode(csrf)
        )),
    )?;
    answer.cookie("custos_session").ok_or_else(|| {
        io::Error::other(format!(
            "sign-in of {user} answered {} without a session",
            answer.status
        ))
    })
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
        // On a busy machine another process may take the port between its choice and
        // the check; a port that stayed free is what the check needs.
        let port = (0..5)
            .map(|_| free_port())
            .collect::<io::Result<Vec<u16>>>()?
            .into_iter()
            .find(|&p| !wait_for_port(p, Duration::from_millis(50)))
            .expect("five free ports in a row were taken before they could be checked");
        assert_ne!(port, 0);
        let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        assert!(wait_for_port(port, Duration::from_secs(1)));
        Ok(())
    }
}
