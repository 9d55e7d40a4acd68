//! Sessions, cookies, CSRF tokens and sign-in throttling.
//!
//! A session is a random 256-bit id in an `HttpOnly; SameSite=Strict` cookie
//! (`Secure` over TLS) mapped, in memory, to the account and a synchronizer
//! CSRF token that every state-changing form must echo. Sessions end on sign
//! out, after `session_ttl` without a request, or when the account is removed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::users::Role;

pub const SESSION_COOKIE: &str = "custos_session";
/// Double-submit token for the sign-in form, which has no session yet.
pub const LOGIN_COOKIE: &str = "custos_login";

/// A signed-in reviewer.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Bare JIDs linked to the account (self-review prevention).
    pub jids: Vec<String>,
    pub csrf: String,
    last_seen: Instant,
}

/// 32 random bytes, hex.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Compares without an early exit, so a token is not guessable byte by byte from timing.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The live sessions.
pub struct Sessions {
    ttl: Duration,
    map: HashMap<String, Session>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            map: HashMap::new(),
        }
    }

    /// Starts a session; returns its id.
    pub fn create(
        &mut self,
        user: &str,
        role: Role,
        jids: Vec<String>,
    ) -> Result<String, getrandom::Error> {
        let now = Instant::now();
        let ttl = self.ttl;
        self.map
            .retain(|_, s| now.duration_since(s.last_seen) < ttl);
        let id = random_token()?;
        let csrf = random_token()?;
        self.map.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                role,
                jids,
                csrf,
                last_seen: now,
            },
        );
        Ok(id)
    }

    /// The session for `id` if it has not expired; refreshes its idle timer.
    pub fn touch(&mut self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let ttl = self.ttl;
        let s = self.map.get_mut(id)?;
        if now.duration_since(s.last_seen) >= ttl {
            self.map.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn end(&mut self, id: &str) {
        self.map.remove(id);
    }

    /// Ends every session of `user` (account removed).
    pub fn end_user(&mut self, user: &str) {
        self.map.retain(|_, s| s.user != user);
    }
}

/// Value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value; `max_age` 0 deletes.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The throttle's key for a client address: an IPv6 client is its /64, which one host
/// commonly holds whole, so it cannot take a fresh address for every guess.
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(String::new, |v4| v4.to_string()),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Failures allowed before a key is locked out.
const FREE_FAILURES: u32 = 5;
/// A client address's failures are forgotten after this long without another: longer
/// than the longest lock, so an address that keeps guessing stays at the longest lock
/// instead of starting over.
const FAILURE_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);
/// An account name's failures are forgotten sooner: anyone can fail in its name, and a
/// day's memory would let one client keep the account's owner out for good.
const NAME_FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Bounds memory under a spray of distinct names or addresses.
const MAX_TRACKED: usize = 10_000;

struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Sign-in throttling, keyed both by account name and by client address so
/// neither guessing one password nor spraying many names is cheap. After five
/// failures a key is locked for 1 s, doubling per further failure up to 15 min.
pub struct Throttle {
    keys: HashMap<String, Failures>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle {
            keys: HashMap::new(),
        }
    }

    /// How long until any of `keys` may try again, if locked.
    pub fn locked(&self, keys: &[String], now: Instant) -> Option<Duration> {
        keys.iter()
            .filter_map(|k| self.keys.get(k)?.locked_until)
            .filter(|&t| t > now)
            .map(|t| t - now)
            .max()
    }

    pub fn fail(&mut self, keys: &[String], now: Instant) {
        if self.keys.len() >= MAX_TRACKED {
            self.keys
                .retain(|_, f| now.duration_since(f.last) < FAILURE_MEMORY);
        }
        if self.keys.len() >= MAX_TRACKED {
            // A spray of names or addresses: keep the keys it has locked, and those that
            // failed in the last quarter hour.
            self.keys.retain(|_, f| {
                f.locked_until.is_some_and(|t| t > now) || now.duration_since(f.last) < MAX_LOCK
            });
        }
        for k in keys {
            let f = self.keys.entry(k.clone()).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            let memory = if k.starts_with("user:") {
                NAME_FAILURE_MEMORY
            } else {
                FAILURE_MEMORY
            };
            if now.duration_since(f.last) >= memory {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if f.count >= FREE_FAILURES {
                let exp = (f.count - FREE_FAILURES).min(20);
                let lock = Duration::from_secs(1u64 << exp).min(MAX_LOCK);
                f.locked_until = Some(now + lock);
            }
        }
    }

    pub fn succeed(&mut self, keys: &[String]) {
        for k in keys {
            self.keys.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn throttle_locks_after_five_and_doubles() {
        let mut t = Throttle::new();
        let k = vec!["user:a".to_string(), "ip:127.0.0.1".to_string()];
        let now = Instant::now();
        for _ in 0..4 {
            t.fail(&k, now);
        }
        assert_eq!(t.locked(&k, now), None);
        t.fail(&k, now);
        assert_eq!(t.locked(&k, now), Some(Duration::from_secs(1)));
        t.fail(&k, now);
        assert_eq!(t.locked(&k, now), Some(Duration::from_secs(2)));
        // Another name from the same address is locked too.
        assert!(t
            .locked(&["user:b".into(), "ip:127.0.0.1".into()], now)
            .is_some());
        assert_eq!(t.locked(&k, now + Duration::from_secs(3)), None);
        t.succeed(&k);
        assert_eq!(t.locked(&k, now), None);
    }

    /// An address that goes on failing at the longest lock stays locked for the longest
    /// lock: its failures are not forgotten when each lock ends. An account name's are,
    /// so no one client keeps its owner out for good. An IPv6 client is its /64.
    #[test]
    fn a_key_failing_at_the_longest_lock_stays_there() {
        let mut t = Throttle::new();
        let name = vec!["user:a".to_string()];
        let start = Instant::now();
        for _ in 0..20 {
            t.fail(&name, start);
        }
        assert_eq!(t.locked(&name, start), Some(MAX_LOCK));
        let after = start + MAX_LOCK + Duration::from_secs(1);
        t.fail(&name, after);
        assert_eq!(t.locked(&name, after), None, "an account name starts over");
        let k = vec!["ip:192.0.2.7".to_string()];
        let mut now = Instant::now();
        for _ in 0..40 {
            t.fail(&k, now);
            let wait = t.locked(&k, now).unwrap_or_default();
            now += wait + Duration::from_secs(1);
        }
        t.fail(&k, now);
        assert_eq!(t.locked(&k, now), Some(MAX_LOCK));
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        assert_eq!(client_key(a), client_key(b));
        assert_eq!(client_key(a), "2001:db8:1:2::/64");
        let v4: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(a);
        assert_eq!(client_key(v4), "192.0.2.7");
    }

    #[test]
    fn sessions_expire_when_idle_and_end() {
        let mut s = Sessions::new(Duration::from_millis(50));
        let id = s.create("olivia", Role::Officer, vec![]).unwrap();
        let got = s.touch(&id).unwrap();
        assert_eq!(got.user, "olivia");
        assert_eq!(got.csrf.len(), 64);
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.touch(&id).is_none());
        let id = s.create("olivia", Role::Officer, vec![]).unwrap();
        s.end_user("olivia");
        assert!(s.touch(&id).is_none());
    }

    #[test]
    fn cookie_parsing_and_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; custos_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, None);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(SESSION_COOKIE, "v", false, Some(0)).contains("Secure"));
        assert!(same_token("abcd", "abcd"));
        assert!(!same_token("abcd", "abce"));
        assert!(!same_token("abc", "abcd"));
    }
}
