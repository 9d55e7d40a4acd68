//! A small blocking S3 client: the calls the archive makes on an Object Lock bucket,
//! signed with SigV4 and sent with `ureq`. Blocking on purpose: every caller is a
//! thread of the archive (uploader, readers, verify), never the proxy's runtime.

use std::time::Duration;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::sigv4::{self, Credentials};
use crate::time::Timestamp;

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://127.0.0.1:9000` or `https://s3.eu-west-1.amazonaws.com`.
    pub url: String,
    pub bucket: String,
    pub region: String,
    /// `https://host/bucket/key` (true) or `https://bucket.host/key`.
    pub path_style: bool,
}

/// Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody, the account root included, can delete the version or shorten its
    /// retention before the date.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl LockMode {
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }

    fn from_s3(s: &str) -> Option<LockMode> {
        match s {
            "COMPLIANCE" => Some(LockMode::Compliance),
            "GOVERNANCE" => Some(LockMode::Governance),
            _ => None,
        }
    }
}

/// How many times a read is sent at most when the server answers with an error it asks
/// to be tried again (see `S3Client::call`).
const READ_ATTEMPTS: u32 = 3;

/// Why an S3 call failed. Never carries a credential or a body.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{op} {key}: the server answered {status} {code}: {message}")]
    Refused {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{op} {key}: {detail}")]
    Transport {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("{op} {key}: the answer is not what S3 sends: {detail}")]
    Malformed {
        op: &'static str,
        key: String,
        detail: String,
    },
}

impl S3Error {
    /// The S3 error code (`AccessDenied`, `NoSuchKey`…), if the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What a PUT of a new version should carry.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub lock: Option<(LockMode, Timestamp)>,
    pub legal_hold: bool,
}

/// A stored object version as HEAD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub version_id: Option<String>,
    pub len: u64,
    /// Base64 SHA-256 the server computed at upload (`x-amz-checksum-sha256`), when
    /// the upload asked for one.
    pub checksum_sha256: Option<String>,
    pub lock_mode: Option<LockMode>,
    pub retain_until: Option<Timestamp>,
    pub legal_hold: bool,
}

/// One entry of a version listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub size: u64,
}

/// The bucket's Object Lock configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfiguration {
    pub enabled: bool,
    /// Default retention for new versions: mode and days (years are given as days).
    pub default_retention: Option<(LockMode, u64)>,
}

/// The client. Cheap to clone (the agent shares its connection pool).
#[derive(Clone)]
pub struct S3Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
    creds: Credentials,
    scheme: String,
    authority: String,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("endpoint", &self.endpoint)
            .field("creds", &self.creds)
            .finish()
    }
}

/// Most bytes read from one answer: a segment is at most a few hundred MiB.
const MAX_BODY: u64 = 1 << 31;

struct Answer {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl S3Client {
    /// Fails if the endpoint URL is not `http://` or `https://` with a host.
    pub fn new(endpoint: Endpoint, creds: Credentials) -> Result<S3Client, String> {
        let (scheme, rest) = endpoint
            .url
            .split_once("://")
            .ok_or_else(|| format!("endpoint {:?}: not a URL", endpoint.url))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "endpoint {:?}: the scheme must be http or https",
                endpoint.url
            ));
        }
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "endpoint {:?}: give the host (and port) only, without a path",
                endpoint.url
            ));
        }
        if endpoint.bucket.is_empty() {
            return Err("the bucket name is empty".into());
        }
        let authority = if endpoint.path_style {
            host.to_string()
        } else {
            format!("{}.{host}", endpoint.bucket)
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Ok(S3Client {
            agent,
            scheme: scheme.to_string(),
            authority,
            endpoint,
            creds,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn path(&self, key: &str) -> String {
        let key = sigv4::uri_encode(key, true);
        if self.endpoint.path_style {
            if key.is_empty() {
                format!("/{}", sigv4::uri_encode(&self.endpoint.bucket, false))
            } else {
                format!("/{}/{key}", sigv4::uri_encode(&self.endpoint.bucket, false))
            }
        } else {
            format!("/{key}")
        }
    }

    /// Sends one request. A read (`GET`, `HEAD`) that meets a server error (`500`,
    /// `502`, `503`, `504`: S3's `InternalError` and `SlowDown` ask the client to try
    /// again) or a broken connection is tried again, up to [`READ_ATTEMPTS`] times in
    /// all, after 0.1 s and then 0.4 s; a write never is, as a second `PUT` of a segment
    /// would leave a second version of it in a versioned bucket.
    fn call(
        &self,
        op: &'static str,
        method: &str,
        key: &str,
        query: &[(String, String)],
        extra: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, S3Error> {
        let mut attempt = 1;
        loop {
            let answer = self.call_once(op, method, key, query, extra, body);
            let again = match &answer {
                Ok(_) => false,
                Err(S3Error::Transport { .. }) => true,
                Err(e) => matches!(e.status(), Some(500 | 502 | 503 | 504)),
            };
            if !again || attempt >= READ_ATTEMPTS || !matches!(method, "GET" | "HEAD") {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(100 << (2 * (attempt - 1))));
            attempt += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_once(
        &self,
        op: &'static str,
        method: &str,
        key: &str,
        query: &[(String, String)],
        extra: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, S3Error> {
        let transport = |detail: String| S3Error::Transport {
            op,
            key: key.to_string(),
            detail,
        };
        let path = self.path(key);
        let payload = sigv4::sha256_hex(body);
        let date = sigv4::amz_date(&Timestamp::now().to_string());
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), self.authority.clone()),
            ("x-amz-content-sha256".into(), payload.clone()),
            ("x-amz-date".into(), date.clone()),
        ];
        headers.extend(extra.iter().cloned());
        let auth = sigv4::authorization(
            &self.creds,
            &self.endpoint.region,
            &date,
            &sigv4::Request {
                method,
                path: &path,
                query,
                headers: &headers,
                payload_sha256: &payload,
            },
        );
        let qs = sigv4::canonical_query(query);
        let url = if qs.is_empty() {
            format!("{}://{}{path}", self.scheme, self.authority)
        } else {
            format!("{}://{}{path}?{qs}", self.scheme, self.authority)
        };
        // `host` is sent by ureq from the URL; the rest as signed.
        let send: Vec<&(String, String)> = headers.iter().filter(|(k, _)| k != "host").collect();
        let result = match method {
            "GET" | "HEAD" | "DELETE" => {
                let mut rb = match method {
                    "GET" => self.agent.get(&url),
                    "HEAD" => self.agent.head(&url),
                    _ => self.agent.delete(&url),
                };
                for (k, v) in &send {
                    rb = rb.header(k.as_str(), v.as_str());
                }
                rb.header("authorization", &auth).call()
            }
            _ => {
                let mut rb = match method {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                for (k, v) in &send {
                    rb = rb.header(k.as_str(), v.as_str());
                }
                rb.header("authorization", &auth).send(body)
            }
        };
        let resp = result.map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            resp.into_body()
                .into_with_config()
                .limit(MAX_BODY)
                .read_to_vec()
                .map_err(|e| transport(e.to_string()))?
        };
        let answer = Answer { headers, body };
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            let (code, message) = error_of(&answer.body);
            Err(S3Error::Refused {
                op,
                key: key.to_string(),
                status,
                code: if code.is_empty() && status == 404 {
                    "NotFound".into()
                } else {
                    code
                },
                message,
            })
        }
    }

    /// Uploads a new version of `key`; the server checks the body against its MD5 and
    /// SHA-256 and keeps the SHA-256 for HEAD. Returns the version id.
    pub fn put_object(
        &self,
        key: &str,
        body: &[u8],
        opts: &PutOptions,
    ) -> Result<Option<String>, S3Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut extra = vec![
            ("content-md5".to_string(), b64.encode(Md5::digest(body))),
            (
                "x-amz-checksum-sha256".to_string(),
                b64.encode(<Sha256 as sha2::Digest>::digest(body)),
            ),
            ("x-amz-sdk-checksum-algorithm".to_string(), "SHA256".into()),
        ];
        if let Some((mode, until)) = opts.lock {
            extra.push(("x-amz-object-lock-mode".into(), mode.as_s3().into()));
            extra.push((
                "x-amz-object-lock-retain-until-date".into(),
                until.to_string(),
            ));
        }
        if opts.legal_hold {
            extra.push(("x-amz-object-lock-legal-hold".into(), "ON".into()));
        }
        let a = self.call("PutObject", "PUT", key, &[], &extra, body)?;
        Ok(a.header("x-amz-version-id").map(str::to_string))
    }

    /// The newest version (or `version`) of `key`; `None` if there is none.
    pub fn head_object(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<ObjectHead>, S3Error> {
        let query: Vec<(String, String)> = version
            .map(|v| vec![("versionId".to_string(), v.to_string())])
            .unwrap_or_default();
        let extra = [("x-amz-checksum-mode".to_string(), "ENABLED".to_string())];
        let a = match self.call("HeadObject", "HEAD", key, &query, &extra, &[]) {
            Ok(a) => a,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let malformed = |detail: String| S3Error::Malformed {
            op: "HeadObject",
            key: key.to_string(),
            detail,
        };
        let len = a
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| malformed("no content-length".into()))?;
        let retain_until = match a.header("x-amz-object-lock-retain-until-date") {
            Some(v) => {
                Some(Timestamp::parse(v).map_err(|_| malformed(format!("retain-until {v:?}")))?)
            }
            None => None,
        };
        Ok(Some(ObjectHead {
            version_id: a.header("x-amz-version-id").map(str::to_string),
            len,
            checksum_sha256: a.header("x-amz-checksum-sha256").map(str::to_string),
            lock_mode: a
                .header("x-amz-object-lock-mode")
                .and_then(LockMode::from_s3),
            retain_until,
            legal_hold: a.header("x-amz-object-lock-legal-hold") == Some("ON"),
        }))
    }

    /// The bytes of the newest version (or `version`) of `key`; `None` if there is none.
    pub fn get_object(&self, key: &str, version: Option<&str>) -> Result<Option<Vec<u8>>, S3Error> {
        let query: Vec<(String, String)> = version
            .map(|v| vec![("versionId".to_string(), v.to_string())])
            .unwrap_or_default();
        match self.call("GetObject", "GET", key, &query, &[], &[]) {
            Ok(a) => Ok(Some(a.body)),
            Err(e) if matches!(e.code(), Some("NoSuchKey" | "NoSuchVersion" | "NotFound")) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every key under `prefix` with its size (current versions only).
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token".into(), t.clone()));
            }
            let a = self.call("ListObjectsV2", "GET", "", &query, &[], &[])?;
            let doc = Xml::parse(&a.body).map_err(|detail| S3Error::Malformed {
                op: "ListObjectsV2",
                key: prefix.to_string(),
                detail,
            })?;
            for c in doc.children("Contents") {
                let size = c.text("Size").parse().unwrap_or(0);
                out.push((c.text("Key").to_string(), size));
            }
            if doc.text("IsTruncated") == "true" {
                let next = doc.text("NextContinuationToken");
                if next.is_empty() {
                    break;
                }
                token = Some(next.to_string());
            } else {
                break;
            }
        }
        Ok(out)
    }

    /// The "folders" directly under `prefix`: the common prefixes of a listing with
    /// delimiter `/`, each ending in `/`.
    pub fn list_folders(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), prefix.to_string()),
                ("delimiter".to_string(), "/".to_string()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token".into(), t.clone()));
            }
            let a = self.call("ListObjectsV2", "GET", "", &query, &[], &[])?;
            let doc = Xml::parse(&a.body).map_err(|detail| S3Error::Malformed {
                op: "ListObjectsV2",
                key: prefix.to_string(),
                detail,
            })?;
            for c in doc.children("CommonPrefixes") {
                out.push(c.text("Prefix").to_string());
            }
            let next = doc.text("NextContinuationToken");
            if doc.text("IsTruncated") != "true" || next.is_empty() {
                break;
            }
            token = Some(next.to_string());
        }
        Ok(out)
    }

    /// Every version and delete marker under `prefix`.
    pub fn list_versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, S3Error> {
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("versions".to_string(), String::new()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some((k, v)) = &marker {
                query.push(("key-marker".into(), k.clone()));
                query.push(("version-id-marker".into(), v.clone()));
            }
            let a = self.call("ListObjectVersions", "GET", "", &query, &[], &[])?;
            let doc = Xml::parse(&a.body).map_err(|detail| S3Error::Malformed {
                op: "ListObjectVersions",
                key: prefix.to_string(),
                detail,
            })?;
            for node in &doc.children {
                let delete_marker = match &*node.name {
                    "Version" => false,
                    "DeleteMarker" => true,
                    _ => continue,
                };
                out.push(VersionEntry {
                    key: node.text("Key").to_string(),
                    version_id: node.text("VersionId").to_string(),
                    is_latest: node.text("IsLatest") == "true",
                    delete_marker,
                    size: node.text("Size").parse().unwrap_or(0),
                });
            }
            if doc.text("IsTruncated") == "true" {
                marker = Some((
                    doc.text("NextKeyMarker").to_string(),
                    doc.text("NextVersionIdMarker").to_string(),
                ));
            } else {
                break;
            }
        }
        Ok(out)
    }

    /// Deletes one version for good (refused by the server while it is locked).
    /// Without a version, S3 only adds a delete marker.
    pub fn delete_object(
        &self,
        key: &str,
        version: Option<&str>,
        bypass_governance: bool,
    ) -> Result<(), S3Error> {
        let query: Vec<(String, String)> = version
            .map(|v| vec![("versionId".to_string(), v.to_string())])
            .unwrap_or_default();
        let extra: Vec<(String, String)> = if bypass_governance {
            vec![("x-amz-bypass-governance-retention".into(), "true".into())]
        } else {
            Vec::new()
        };
        self.call("DeleteObject", "DELETE", key, &query, &extra, &[])
            .map(|_| ())
    }

    /// Sets or clears the legal hold of one version.
    pub fn put_legal_hold(
        &self,
        key: &str,
        version: Option<&str>,
        on: bool,
    ) -> Result<(), S3Error> {
        let mut query = vec![("legal-hold".to_string(), String::new())];
        if let Some(v) = version {
            query.push(("versionId".into(), v.into()));
        }
        let body = format!(
            "<LegalHold xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{}</Status></LegalHold>",
            if on { "ON" } else { "OFF" }
        );
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body.as_bytes()));
        let extra = [("content-md5".to_string(), md5)];
        self.call(
            "PutObjectLegalHold",
            "PUT",
            key,
            &query,
            &extra,
            body.as_bytes(),
        )
        .map(|_| ())
    }

    /// Sets the retention of one version (S3 refuses to shorten a compliance one).
    pub fn put_retention(
        &self,
        key: &str,
        version: Option<&str>,
        mode: LockMode,
        until: Timestamp,
    ) -> Result<(), S3Error> {
        let mut query = vec![("retention".to_string(), String::new())];
        if let Some(v) = version {
            query.push(("versionId".into(), v.into()));
        }
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>",
            mode.as_s3()
        );
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body.as_bytes()));
        let extra = [("content-md5".to_string(), md5)];
        self.call(
            "PutObjectRetention",
            "PUT",
            key,
            &query,
            &extra,
            body.as_bytes(),
        )
        .map(|_| ())
    }

    /// The bucket's Object Lock configuration (`enabled: false` if it has none).
    pub fn lock_configuration(&self) -> Result<LockConfiguration, S3Error> {
        let query = [("object-lock".to_string(), String::new())];
        let a = match self.call("GetObjectLockConfiguration", "GET", "", &query, &[], &[]) {
            Ok(a) => a,
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => {
                return Ok(LockConfiguration {
                    enabled: false,
                    default_retention: None,
                })
            }
            Err(e) => return Err(e),
        };
        let doc = Xml::parse(&a.body).map_err(|detail| S3Error::Malformed {
            op: "GetObjectLockConfiguration",
            key: String::new(),
            detail,
        })?;
        let enabled = doc.text("ObjectLockEnabled") == "Enabled";
        let default_retention = doc
            .children("Rule")
            .next()
            .and_then(|r| r.children("DefaultRetention").next())
            .and_then(|d| {
                let mode = LockMode::from_s3(d.text("Mode"))?;
                let days: u64 = d.text("Days").parse().ok().or_else(|| {
                    d.text("Years")
                        .parse::<u64>()
                        .ok()
                        .map(|y| y.saturating_mul(365))
                })?;
                Some((mode, days))
            });
        Ok(LockConfiguration {
            enabled,
            default_retention,
        })
    }

    /// Whether versioning is enabled on the bucket.
    pub fn versioning_enabled(&self) -> Result<bool, S3Error> {
        let query = [("versioning".to_string(), String::new())];
        let a = self.call("GetBucketVersioning", "GET", "", &query, &[], &[])?;
        let doc = Xml::parse(&a.body).map_err(|detail| S3Error::Malformed {
            op: "GetBucketVersioning",
            key: String::new(),
            detail,
        })?;
        Ok(doc.text("Status") == "Enabled")
    }

    /// Creates the bucket with Object Lock enabled (which turns versioning on).
    pub fn create_bucket_with_lock(&self) -> Result<(), S3Error> {
        let mut extra = vec![(
            "x-amz-bucket-object-lock-enabled".to_string(),
            "true".to_string(),
        )];
        let body = if self.endpoint.region != "us-east-1" {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.endpoint.region
            )
        } else {
            String::new()
        };
        if !body.is_empty() {
            extra.push(("content-type".into(), "application/xml".into()));
        }
        self.call("CreateBucket", "PUT", "", &[], &extra, body.as_bytes())
            .map(|_| ())
    }
}

fn error_of(body: &[u8]) -> (String, String) {
    match Xml::parse(body) {
        Ok(doc) => (
            doc.text("Code").to_string(),
            doc.text("Message").to_string(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

/// A parsed XML element: local name, text, children. S3 answers are small and
/// shallow, so a tree is the plainest way to read them.
#[derive(Debug, Default)]
struct Xml {
    name: String,
    text: String,
    children: Vec<Xml>,
}

impl Xml {
    fn parse(bytes: &[u8]) -> Result<Xml, String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_reader(bytes);
        let mut stack: Vec<Xml> = vec![Xml::default()];
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(Event::Start(e)) => stack.push(Xml {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Xml::default()
                }),
                Ok(Event::Empty(e)) => {
                    let node = Xml {
                        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                        ..Xml::default()
                    };
                    if let Some(top) = stack.last_mut() {
                        top.children.push(node);
                    }
                }
                Ok(Event::Text(t)) => {
                    let s = t.decode().map_err(|e| e.to_string())?;
                    let s = quick_xml::escape::unescape(&s).map_err(|e| e.to_string())?;
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&s);
                    }
                }
                Ok(Event::GeneralRef(r)) => {
                    let name = r.decode().map_err(|e| e.to_string())?;
                    let s = quick_xml::escape::unescape(&format!("&{name};"))
                        .map_err(|e| e.to_string())?
                        .into_owned();
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&s);
                    }
                }
                Ok(Event::End(_)) => {
                    let node = stack.pop().ok_or("unbalanced XML")?;
                    match stack.last_mut() {
                        Some(top) => top.children.push(node),
                        None => return Err("unbalanced XML".into()),
                    }
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("at byte {}: {e}", reader.buffer_position())),
            }
            buf.clear();
        }
        let mut doc = stack.pop().ok_or("empty XML")?;
        if !stack.is_empty() {
            return Err("unclosed XML element".into());
        }
        // The document element is the one child of the synthetic root.
        Ok(if doc.children.len() == 1 {
            doc.children.remove(0)
        } else {
            doc
        })
    }

    fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Xml> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`, or "".
    fn text(&self, name: &str) -> &str {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.text.as_str())
            .unwrap_or("")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A server that answers its first `failures` requests with `500 InternalError` and
    /// every later one with `200` and an empty version listing; with the count of
    /// requests it read.
    fn flaky_server(failures: usize) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut out) = conn else { return };
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(out.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if r.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                            let lower = header.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                            return;
                        }
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = if n < failures {
                            (
                                "500 Internal Server Error",
                                "<Error><Code>InternalError</Code><Message>try again</Message></Error>",
                            )
                        } else {
                            (
                                "200 OK",
                                "<ListVersionsResult><IsTruncated>false</IsTruncated></ListVersionsResult>",
                            )
                        };
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if out.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    /// A client of bucket `b` at `url`, path style, with made-up credentials.
    pub(crate) fn client(url: String) -> S3Client {
        S3Client::new(
            Endpoint {
                url,
                bucket: "b".into(),
                region: "us-east-1".into(),
                path_style: true,
            },
            Credentials {
                access_key: "a".into(),
                secret_key: zeroize::Zeroizing::new("s".into()),
            },
        )
        .unwrap()
    }

    /// S3 answers `500 InternalError` or `503 SlowDown` now and then and asks clients to
    /// try again: a read is tried again, a few times; a write is not (a second PUT of a
    /// segment would leave a second version of it in a versioned bucket).
    #[test]
    fn a_read_is_tried_again_after_a_server_error_and_a_write_is_not() {
        let (url, seen) = flaky_server(2);
        let listed = client(url).list_versions("p/").unwrap();
        assert!(listed.is_empty());
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        let (url, seen) = flaky_server(READ_ATTEMPTS as usize);
        let err = client(url).list_versions("p/").unwrap_err();
        assert_eq!(err.status(), Some(500), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), READ_ATTEMPTS as usize);

        let (url, seen) = flaky_server(1);
        let err = client(url)
            .put_object("p/a", b"x", &PutOptions::default())
            .unwrap_err();
        assert_eq!(err.status(), Some(500), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reads_a_version_listing() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>p/</Prefix><IsTruncated>false</IsTruncated>
  <Version><Key>p/a&amp;b</Key><VersionId>v1</VersionId><IsLatest>true</IsLatest><Size>12</Size></Version>
  <DeleteMarker><Key>p/c</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest></DeleteMarker>
</ListVersionsResult>"#;
        let doc = Xml::parse(body).expect("parses");
        assert_eq!(doc.name, "ListVersionsResult");
        assert_eq!(doc.text("IsTruncated"), "false");
        let v: Vec<&Xml> = doc.children("Version").collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].text("Key"), "p/a&b");
        assert_eq!(v[0].text("Size"), "12");
        assert_eq!(doc.children("DeleteMarker").count(), 1);
    }

    #[test]
    fn reads_an_error() {
        let body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        assert_eq!(
            error_of(body),
            ("AccessDenied".to_string(), "Access Denied".to_string())
        );
        assert_eq!(error_of(b"not xml <<"), (String::new(), String::new()));
    }

    #[test]
    fn refuses_bad_endpoints() {
        let creds = Credentials {
            access_key: "a".into(),
            secret_key: zeroize::Zeroizing::new("s".into()),
        };
        let ep = |url: &str| Endpoint {
            url: url.into(),
            bucket: "b".into(),
            region: "us-east-1".into(),
            path_style: true,
        };
        assert!(S3Client::new(ep("ftp://x"), creds.clone()).is_err());
        assert!(S3Client::new(ep("http://x/path"), creds.clone()).is_err());
        assert!(S3Client::new(ep("127.0.0.1:9000"), creds.clone()).is_err());
        let c = S3Client::new(ep("http://127.0.0.1:9000/"), creds).expect("valid");
        assert_eq!(c.path("segments/seg 1"), "/b/segments/seg%201");
    }
}
