//! Files are records too: a message that shares a file by address (XEP-0363 HTTP upload,
//! XEP-0066 out-of-band data, XEP-0447 stateless file sharing) carries only the URL through
//! Custos, while the file travels straight to the upload service. When the URL is on one
//! of the firm's own upload services (`[files] sources`), Custos fetches the file before
//! the message goes on and archives it with the message, so the record holds what the
//! recipient can download.
//!
//! Only addresses under a configured source are fetched (scheme, host, port and path
//! prefix), never a redirect, at most [`FilesConfig::max_bytes`] and within
//! [`FilesConfig::timeout`]: a message cannot make Custos reach anywhere else. Each copy of
//! a message carries the same URL; the bytes are stored once, with the first copy, and
//! later copies name them by SHA-256 (a fetch within [`REMEMBER`] is not repeated).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custos_archive::SharedFile;
pub use reqwest::Url;
use sha2::{Digest, Sha256};
use tracing::warn;

/// How long a fetched address is remembered, so the other copies of its message do not
/// fetch it again.
pub const REMEMBER: Duration = Duration::from_secs(600);
/// Addresses remembered at most.
const REMEMBERED: usize = 10_000;
/// Files fetched per message at most; further addresses are recorded as not fetched.
pub const MAX_PER_MESSAGE: usize = 8;
/// Longest name and media type kept.
const MAX_LABEL: usize = 255;

#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// URL prefixes of the firm's own upload services, e.g.
    /// `https://upload.example.com/file_share/`.
    pub sources: Vec<Url>,
    pub max_bytes: u64,
    pub timeout: Duration,
    /// An extra trust anchor for the upload service's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// Refuse a message whose file could not be archived, instead of delivering it with
    /// the failure on its record.
    pub block_on_failure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesSetupError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("file fetch client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct Files {
    client: reqwest::Client,
    config: FilesConfig,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    by_url: HashMap<String, (Instant, SharedFile)>,
    order: VecDeque<(String, Instant)>,
}

impl Recent {
    fn get(&mut self, url: &str, now: Instant) -> Option<SharedFile> {
        self.expire(now);
        self.by_url.get(url).map(|(_, f)| f.clone())
    }

    fn put(&mut self, url: &str, file: SharedFile, now: Instant) {
        self.expire(now);
        while self.by_url.len() >= REMEMBERED {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.by_url.get(&old).is_some_and(|(t, _)| *t == at) {
                self.by_url.remove(&old);
            }
        }
        self.by_url.insert(url.to_owned(), (now, file));
        self.order.push_back((url.to_owned(), now));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((url, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < REMEMBER {
                break;
            }
            if self.by_url.get(url).is_some_and(|(t, _)| t == at) {
                self.by_url.remove(url);
            }
            self.order.pop_front();
        }
    }
}

/// Whether `url` lies under `source`: same scheme, host and port, and a path that starts
/// with the source's path. Addresses with credentials, a query trick or encoded path
/// separators and dots are refused: the upload service, not Custos, would resolve them.
pub fn under(source: &Url, url: &Url) -> bool {
    let path = url.path();
    let lower = path.to_ascii_lowercase();
    let sneaky = lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c");
    url.scheme() == source.scheme()
        && url.host_str() == source.host_str()
        && url.port_or_known_default() == source.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none()
        && !sneaky
        && path.starts_with(source.path())
}

/// The name a file goes by: its address's last path segment, percent-decoded.
pub fn name_of(url: &Url) -> String {
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default();
    let decoded = percent_decode(last);
    clip(&decoded)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits make one byte: h * 16 + l < 256.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL)
        .collect()
}

impl Files {
    pub fn new(config: FilesConfig) -> Result<Files, FilesSetupError> {
        let tls = crate::tls::upstream_config(config.ca.as_deref(), false)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .build()?;
        Ok(Files {
            client,
            config,
            recent: Mutex::new(Recent::default()),
        })
    }

    pub fn block_on_failure(&self) -> bool {
        self.config.block_on_failure
    }

    /// The addresses among `candidates` that lie under a configured source, each once.
    pub fn wanted<'a>(&self, candidates: impl Iterator<Item = &'a str>) -> Vec<Url> {
        let mut out: Vec<Url> = Vec::new();
        for c in candidates {
            let Ok(url) = Url::parse(c.trim()) else {
                continue;
            };
            if self.config.sources.iter().any(|s| under(s, &url)) && !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }

    /// Fetches each address (or recalls one fetched a moment ago for another copy).
    pub async fn fetch_all(&self, urls: &[Url]) -> Vec<SharedFile> {
        let mut files = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            if i >= MAX_PER_MESSAGE {
                files.push(SharedFile {
                    url: url.to_string(),
                    name: name_of(url),
                    error: Some(format!(
                        "more than {MAX_PER_MESSAGE} files in one message: not fetched"
                    )),
                    ..SharedFile::default()
                });
                continue;
            }
            files.push(self.fetch(url).await);
        }
        files
    }

    async fn fetch(&self, url: &Url) -> SharedFile {
        let key = url.as_str();
        let remembered = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key, Instant::now());
        if let Some(f) = remembered {
            return f;
        }
        let mut file = SharedFile {
            url: url.to_string(),
            name: name_of(url),
            ..SharedFile::default()
        };
        match self.download(url).await {
            Ok((media_type, bytes)) => {
                file.media_type = media_type;
                file.size = bytes.len() as u64;
                file.sha256 = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                // Later copies name the stored bytes by their hash.
                let recalled = SharedFile {
                    content: None,
                    ..file.clone()
                };
                self.recent.lock().unwrap_or_else(|p| p.into_inner()).put(
                    key,
                    recalled,
                    Instant::now(),
                );
                file.content = Some(bytes);
            }
            Err(e) => {
                warn!(url = %url, cause = %e, "a shared file could not be archived");
                metrics::counter!("custos_file_fetch_failures_total").increment(1);
                file.error = Some(e);
            }
        }
        file
    }

    async fn download(&self, url: &Url) -> Result<(String, Vec<u8>), String> {
        let max = self.config.max_bytes;
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("the upload service answered {status}"));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(format!("larger than the {max}-byte limit"));
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(clip)
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(format!("larger than the {max}-byte limit"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((media_type, body))
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the upload service did not answer in time".into()
    } else if e.is_connect() {
        "the upload service could not be reached".into()
    } else {
        format!("fetching failed: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL parses")
    }

    #[test]
    fn only_addresses_under_a_source_are_fetched() {
        let source = url("https://upload.example.test/file_share/");
        let yes = |s: &str| under(&source, &url(s));
        assert!(yes("https://upload.example.test/file_share/abc/report.pdf"));
        assert!(yes("https://UPLOAD.example.test:443/file_share/abc/x"));
        assert!(
            !yes("http://upload.example.test/file_share/abc/x"),
            "scheme"
        );
        assert!(
            !yes("https://upload.example.test:8443/file_share/x"),
            "port"
        );
        assert!(!yes("https://upload.example.test/other/x"), "path");
        assert!(
            !yes("https://upload.example.test.evil.org/file_share/x"),
            "host"
        );
        assert!(
            !yes("https://a:b@upload.example.test/file_share/x"),
            "credentials"
        );
        assert!(
            !yes("https://upload.example.test/file_share/%2e%2e/admin"),
            "encoded dots"
        );
        assert!(
            !yes("https://upload.example.test/file_share/a%2Fb"),
            "encoded slash"
        );
        // Plain dot segments are resolved by the parser before the comparison.
        assert!(!yes("https://upload.example.test/file_share/../admin"));
    }

    #[test]
    fn names_are_decoded_and_clipped() {
        assert_eq!(
            name_of(&url("https://u.example/f/abc/Q3%20report%20%E2%9C%93.pdf")),
            "Q3 report ✓.pdf"
        );
        assert_eq!(name_of(&url("https://u.example/f/abc/%0d%0aX")), "X");
        assert_eq!(
            name_of(&url(&format!("https://u.example/f/{}", "a".repeat(400)))).len(),
            255
        );
    }

    #[test]
    fn remembered_addresses_expire_and_are_bounded() {
        let mut r = Recent::default();
        let t = Instant::now();
        r.put("u1", SharedFile::default(), t);
        assert!(r.get("u1", t + Duration::from_secs(1)).is_some());
        assert!(r.get("u1", t + REMEMBER).is_none());
        for i in 0..REMEMBERED + 5 {
            r.put(&format!("k{i}"), SharedFile::default(), t);
        }
        assert!(r.by_url.len() <= REMEMBERED);
    }
}
