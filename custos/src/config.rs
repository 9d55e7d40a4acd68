//! Configuration, in two stages: [`RawConfig`] is what serde reads from the TOML file
//! (unknown keys are errors), [`Config`] is what the rest of the program gets — addresses
//! parsed, files checked, TLS configurations built. Every error names the file, the line
//! and the key: `FILE:LINE: key: reason`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custos_archive::retention::{RetentionPolicy, Span};
use custos_proxy::negotiation::UpstreamTls;
use custos_proxy::{Limits, ListenerConfig, ListenerMode, ProxyConfig, UpstreamConfig};
use serde::Deserialize;
use toml::Spanned;

/// A configuration problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.key,
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    pub upstream: Option<Spanned<RawUpstream>>,
    pub archive: Option<Spanned<RawArchive>>,
    pub policy: Option<Spanned<RawPolicy>>,
    pub web: Option<Spanned<RawWeb>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub journal: Option<Spanned<RawJournal>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub retention: Option<Spanned<RawRetention>>,
    pub files: Option<Spanned<RawFiles>>,
    /// `[lexicons]`: named lists of search terms, used in queries as `@name`.
    pub lexicons: Option<Spanned<std::collections::BTreeMap<String, Spanned<Vec<String>>>>>,
}

/// `[files]`: archive the files messages share from the firm's own upload services.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    /// URL prefixes of the upload services, e.g. `https://upload.example.com/file_share/`.
    pub sources: Spanned<Vec<String>>,
    /// Largest file archived (default 16 MiB, at most 48 MiB).
    pub max_bytes: Option<Spanned<i64>>,
    /// Seconds a fetch may take (default 10).
    pub timeout_secs: Option<Spanned<i64>>,
    /// Extra trust anchor (PEM) for the upload service's certificate.
    pub ca: Option<Spanned<PathBuf>>,
    /// `"deliver"` (default: the message goes on, its record flagged) or `"block"`.
    pub on_failure: Option<Spanned<String>>,
}

/// A duration: `"90d"`, `"6y"`, `"forever"`, or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSpan {
    Secs(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub default: Spanned<RawSpan>,
    #[serde(default)]
    pub classes: std::collections::BTreeMap<String, Spanned<RawSpan>>,
    /// How often `serve` runs expiry (default one hour).
    pub run_every: Option<Spanned<RawSpan>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `"xmpp"` (default) or `"websocket"`.
    pub protocol: Option<Spanned<String>>,
    pub bind: Spanned<String>,
    pub tls: Spanned<String>,
    pub cert: Option<Spanned<PathBuf>>,
    pub key: Option<Spanned<PathBuf>>,
    /// WebSocket only: the endpoint's HTTP path (default `/xmpp-websocket`).
    pub path: Option<Spanned<String>>,
    /// WebSocket only: the page origins allowed to open it.
    pub origins: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub address: Spanned<String>,
    pub tls: Spanned<String>,
    pub ca: Option<Spanned<PathBuf>>,
    pub server_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub dir: Spanned<PathBuf>,
    pub master_key: Option<Spanned<PathBuf>>,
    pub signing_key: Spanned<PathBuf>,
    pub on_failure: Option<Spanned<String>>,
    /// Seal the active segment past this size (default 64 MiB).
    pub segment_max_bytes: Option<Spanned<i64>>,
    /// A directory outside `dir` where every signed checkpoint is also written.
    pub witness: Option<Spanned<PathBuf>>,
    /// The witness directory is shared with the other nodes of this archive's bucket.
    pub witness_shared: Option<Spanned<bool>>,
    /// Seal the active segment when its time window ends (default one day).
    pub segment_max_age: Option<Spanned<RawSpan>>,
    /// Sealed segments in an S3 bucket under Object Lock.
    pub object_store: Option<Spanned<RawObjectStore>>,
    /// This node's name when several nodes share one bucket.
    pub node: Option<Spanned<String>>,
    /// How many `nice` steps below the relay index building runs (default 10).
    pub index_niceness: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjectStore {
    pub endpoint: Spanned<String>,
    pub bucket: Spanned<String>,
    pub region: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub path_style: Option<bool>,
    pub lock_mode: Option<Spanned<String>>,
    /// A TOML file with `access_key` and `secret_key`; without it the environment's
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials: Option<Spanned<PathBuf>>,
    pub keep_local: Option<bool>,
    pub cache_mb: Option<Spanned<i64>>,
    pub upload_every: Option<Spanned<RawSpan>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub rules: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    /// `host:port` of the archiver's SMTP endpoint; or `dir` for a directory drop.
    pub smtp: Option<Spanned<String>>,
    pub dir: Option<Spanned<PathBuf>>,
    /// Upgrade the SMTP connection with STARTTLS (default true).
    pub starttls: Option<bool>,
    /// Extra trust anchor (PEM) for the SMTP server's certificate.
    pub ca: Option<Spanned<PathBuf>>,
    pub username: Option<Spanned<String>>,
    /// A file holding the SMTP password (outside the archive directory).
    pub password_file: Option<Spanned<PathBuf>>,
    pub from: Spanned<String>,
    pub to: Spanned<Vec<String>>,
    /// One journal message per conversation per this long (default 1 h).
    pub period: Option<Spanned<RawSpan>>,
    /// Seconds between delivery runs (default 60).
    pub every: Option<Spanned<i64>>,
    /// The durable cursor file (outside the archive directory).
    pub state: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP; keep it on
    /// loopback or a management network).
    pub bind: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub bind: Spanned<String>,
    /// Accounts file; default `users.json` next to the config file.
    pub users: Option<Spanned<PathBuf>>,
    /// Fraction of unflagged messages drawn for sampling review (0.0–1.0, default 0.01).
    pub sample_rate: Option<Spanned<f64>>,
    /// Idle minutes before a reviewer's session expires (default 30).
    pub session_minutes: Option<Spanned<i64>>,
    /// Serve HTTPS with this certificate chain and key (PEM); both or neither.
    pub cert: Option<Spanned<PathBuf>>,
    pub key: Option<Spanned<PathBuf>>,
    /// Mark session cookies `Secure`: on by default with `cert`; set it when a TLS
    /// proxy in front serves the UI over HTTPS.
    pub secure_cookies: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_stanza_bytes: Option<Spanned<i64>>,
    pub handshake_timeout_secs: Option<Spanned<i64>>,
    pub auth_timeout_secs: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub drain_timeout_secs: Option<Spanned<i64>>,
}

/// What happens to a message when the archive cannot write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Refuse the message with an error to its sender (the default: fail closed).
    Block,
    /// Deliver it unarchived, loudly logged. An explicit per-deployment choice.
    Deliver,
}

#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub dir: PathBuf,
    /// `None`: the master key comes from `CUSTOS_MASTER_KEY`.
    pub master_key: Option<PathBuf>,
    pub signing_key: PathBuf,
    pub on_failure: OnFailure,
    pub segment_max_bytes: Option<u64>,
    pub segment_max_age: Option<std::time::Duration>,
    pub witness: Option<PathBuf>,
    /// `[archive] witness_shared`: the nodes of one bucket keep their witness files in
    /// the same directory, so a new chain may start its own beside theirs.
    pub witness_shared: bool,
    pub object_store: Option<ObjectStoreSettings>,
    /// This node's name (`[archive] node`): its chain's place in a shared bucket and
    /// the name its records are shown under.
    pub node: Option<String>,
    /// `[archive] index_niceness`, checked to be 0 to 19.
    pub index_niceness: Option<i32>,
    /// `[lexicons]`: saved term lists that searches, exports and holds name as `@name`.
    pub lexicons: custos_archive::query::Lexicons,
}

/// `[archive.object_store]`, validated; credentials are read when connecting.
#[derive(Debug, Clone)]
pub struct ObjectStoreSettings {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub path_style: bool,
    pub lock_mode: custos_archive::bucket::LockMode,
    pub credentials: Option<PathBuf>,
    pub keep_local: bool,
    pub cache_bytes: u64,
    pub upload_every: std::time::Duration,
}

/// `[retention]`: the classes and how often `serve` runs expiry.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub policy: RetentionPolicy,
    pub run_every: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub rules: PathBuf,
}

#[derive(Debug, Clone)]
pub struct WebSettings {
    pub bind: SocketAddr,
    pub users: PathBuf,
    pub sample_rate: Option<f64>,
    pub session_ttl: Option<std::time::Duration>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub secure_cookies: bool,
}

/// Where journal messages go.
#[derive(Debug, Clone)]
pub enum JournalTarget {
    Smtp {
        host: String,
        port: u16,
        starttls: bool,
        ca: Option<PathBuf>,
        credentials: Option<(String, PathBuf)>,
    },
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub target: JournalTarget,
    pub from: String,
    pub to: Vec<String>,
    pub period: std::time::Duration,
    pub every: std::time::Duration,
    pub state: PathBuf,
}

/// The validated configuration.
pub struct Config {
    pub file: PathBuf,
    pub proxy: Option<ProxyConfig>,
    pub archive: Option<ArchiveSettings>,
    pub policy: Option<PolicySettings>,
    pub web: Option<WebSettings>,
    /// `[admin] bind`: metrics and health.
    pub admin: Option<SocketAddr>,
    pub journal: Option<JournalSettings>,
    /// `None`: no `[retention]` section, so nothing ever expires.
    pub retention: Option<RetentionSettings>,
    /// `[files]`: shared files fetched and archived.
    pub files: Option<custos_proxy::files::FilesConfig>,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        }]
    })?;
    parse(path, &text)
}

/// [`load`] for commands that stop at the first problem: every located error, one per line.
pub fn load_or_fail(path: &Path) -> anyhow::Result<Config> {
    load(path).map_err(|errors| {
        anyhow::anyhow!(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"))
    })
}

pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let locate = Locator { file: path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| vec![locate.toml_error(&e)])?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    let mut v = Validator {
        locate,
        base,
        errors: Vec::new(),
    };
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(v.errors)
    }
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, span: &Range<usize>, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line_of(span),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_owned();
        // serde names the offending key in backticks ("unknown field `bnd`").
        let key = message
            .split('`')
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "(syntax)".into());
        let line = e.span().map(|s| self.line_of(&s)).unwrap_or(0);
        ConfigError {
            file: self.file.to_owned(),
            line,
            key,
            reason: message,
        }
    }
}

struct Validator<'a> {
    locate: Locator<'a>,
    base: PathBuf,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn fail(&mut self, span: &Range<usize>, key: &str, reason: impl Into<String>) {
        let e = self.locate.error(span, key, reason);
        self.errors.push(e);
    }

    fn path(&self, p: &Spanned<PathBuf>) -> PathBuf {
        let p = p.get_ref();
        if p.is_absolute() {
            p.clone()
        } else {
            self.base.join(p)
        }
    }

    fn existing_file(&mut self, p: &Spanned<PathBuf>, key: &str) -> Option<PathBuf> {
        let path = self.path(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.fail(&p.span(), key, format!("{} is not a file", path.display()));
                None
            }
            Err(e) => {
                self.fail(&p.span(), key, format!("{}: {e}", path.display()));
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let proxy = self.proxy(&raw);
        let mut archive = raw.archive.as_ref().and_then(|a| self.archive(a));
        if let Some(l) = &raw.lexicons {
            let lexicons = self.lexicons(l);
            match archive.as_mut() {
                Some(a) => a.lexicons = lexicons,
                None => self.fail(
                    &l.span(),
                    "lexicons",
                    "lexicons search an archive: add an [archive] section",
                ),
            }
        }
        let policy = raw.policy.as_ref().and_then(|p| {
            let rules = self.existing_file(&p.get_ref().rules, "policy.rules")?;
            Some(PolicySettings { rules })
        });
        let web = raw
            .web
            .as_ref()
            .and_then(|w| self.web(w, archive.is_some()));
        let retention = raw.retention.as_ref().and_then(|r| self.retention(r));
        let admin = raw.admin.as_ref().and_then(|a| {
            let bind = &a.get_ref().bind;
            match bind.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.fail(
                        &bind.span(),
                        "admin.bind",
                        "expected an address like 127.0.0.1:9464",
                    );
                    None
                }
            }
        });
        let journal = raw
            .journal
            .as_ref()
            .and_then(|j| self.journal(j, archive.as_ref()));
        let files = raw
            .files
            .as_ref()
            .and_then(|f| self.files(f, archive.is_some()));
        Config {
            file: self.locate.file.to_owned(),
            proxy,
            archive,
            policy,
            web,
            admin,
            journal,
            retention,
            files,
        }
    }

    fn files(
        &mut self,
        f: &Spanned<RawFiles>,
        archive: bool,
    ) -> Option<custos_proxy::files::FilesConfig> {
        if !archive {
            self.fail(
                &f.span(),
                "files",
                "archiving files needs an [archive] section",
            );
            return None;
        }
        let f = f.get_ref();
        let mut sources = Vec::new();
        if f.sources.get_ref().is_empty() {
            self.fail(
                &f.sources.span(),
                "files.sources",
                "name at least one upload service, like \"https://upload.example.com/file_share/\"",
            );
        }
        for s in f.sources.get_ref() {
            match custos_proxy::files::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {
                    let mut u = u;
                    if !u.path().ends_with('/') {
                        let path = format!("{}/", u.path());
                        u.set_path(&path);
                    }
                    if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
                        self.fail(
                            &f.sources.span(),
                            "files.sources",
                            format!(
                                "{s:?}: a source is a scheme, host, port and path, nothing more"
                            ),
                        );
                    } else {
                        sources.push(u);
                    }
                }
                _ => self.fail(
                    &f.sources.span(),
                    "files.sources",
                    format!("{s:?} is not an http(s) URL"),
                ),
            }
        }
        const MAX: i64 = 48 << 20;
        let max_bytes = match &f.max_bytes {
            None => 16 << 20,
            Some(v) if (1..=MAX).contains(v.get_ref()) => *v.get_ref() as u64,
            Some(v) => {
                self.fail(
                    &v.span(),
                    "files.max_bytes",
                    format!("must be between 1 and {MAX} (a file is stored in one record)"),
                );
                0
            }
        };
        let timeout = match &f.timeout_secs {
            None => 10,
            Some(v) if (1..=300).contains(v.get_ref()) => *v.get_ref() as u64,
            Some(v) => {
                self.fail(&v.span(), "files.timeout_secs", "must be between 1 and 300");
                0
            }
        };
        let block_on_failure = match f
            .on_failure
            .as_ref()
            .map(|o| (o.get_ref().as_str(), o.span()))
        {
            None | Some(("deliver", _)) => false,
            Some(("block", _)) => true,
            Some((other, span)) => {
                self.fail(
                    &span,
                    "files.on_failure",
                    format!("{other:?}: expected \"deliver\" or \"block\""),
                );
                false
            }
        };
        let ca =
            f.ca.as_ref()
                .and_then(|c| self.existing_file(c, "files.ca"));
        Some(custos_proxy::files::FilesConfig {
            sources,
            max_bytes,
            timeout: std::time::Duration::from_secs(timeout),
            ca,
            block_on_failure,
        })
    }

    fn span(&mut self, v: &Spanned<RawSpan>, key: &str) -> Option<Span> {
        let parsed = match v.get_ref() {
            RawSpan::Secs(n) if *n > 0 => Span::parse(&n.to_string()),
            RawSpan::Secs(_) => Err("must be positive".into()),
            RawSpan::Text(t) => Span::parse(t),
        };
        match parsed {
            Ok(s) => Some(s),
            Err(e) => {
                self.fail(&v.span(), key, e);
                None
            }
        }
    }

    fn seconds(&mut self, v: &Spanned<RawSpan>, key: &str) -> Option<std::time::Duration> {
        match self.span(v, key)? {
            Span::Secs(s) if s > 0 => Some(std::time::Duration::from_secs(s)),
            _ => {
                self.fail(
                    &v.span(),
                    key,
                    "give seconds, minutes, hours or days (e.g. \"1h\", \"1d\")",
                );
                None
            }
        }
    }

    fn retention(&mut self, r: &Spanned<RawRetention>) -> Option<RetentionSettings> {
        let r = r.get_ref();
        let default = self.span(&r.default, "retention.default");
        let mut classes = std::collections::BTreeMap::new();
        for (name, v) in &r.classes {
            let key = format!("retention.classes.{name}");
            if let Some(s) = self.span(v, &key) {
                match default {
                    Some(d) if !s.at_least(d) => self.fail(
                        &v.span(),
                        &key,
                        format!("{s} keeps less than the default ({d}); make the default the shortest retention and give longer ones by class"),
                    ),
                    _ => {
                        classes.insert(name.clone(), s);
                    }
                }
            }
        }
        let run_every = match &r.run_every {
            Some(v) => self.seconds(v, "retention.run_every")?,
            None => std::time::Duration::from_secs(3600),
        };
        match RetentionPolicy::new(default?, classes) {
            Ok(policy) => Some(RetentionSettings { policy, run_every }),
            Err(e) => {
                let span = r.default.span();
                self.fail(&span, "retention.classes", e);
                None
            }
        }
    }

    fn journal(
        &mut self,
        j: &Spanned<RawJournal>,
        archive: Option<&ArchiveSettings>,
    ) -> Option<JournalSettings> {
        let Some(archive) = archive else {
            self.fail(
                &j.span(),
                "journal",
                "journaling needs an [archive] section",
            );
            return None;
        };
        let j = j.get_ref();
        let target = match (&j.smtp, &j.dir) {
            (Some(a), None) => {
                let text = a.get_ref();
                let parsed = text
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty());
                match parsed {
                    Some((host, port)) => Some(JournalTarget::Smtp {
                        host,
                        port,
                        starttls: j.starttls.unwrap_or(true),
                        ca: j
                            .ca
                            .as_ref()
                            .and_then(|c| self.existing_file(c, "journal.ca")),
                        credentials: match (&j.username, &j.password_file) {
                            (Some(u), Some(p)) => self
                                .existing_file(p, "journal.password_file")
                                .map(|p| (u.get_ref().clone(), p)),
                            (None, None) => None,
                            (Some(u), None) => {
                                self.fail(
                                    &u.span(),
                                    "journal.username",
                                    "needs journal.password_file too",
                                );
                                None
                            }
                            (None, Some(p)) => {
                                self.fail(
                                    &p.span(),
                                    "journal.password_file",
                                    "needs journal.username too",
                                );
                                None
                            }
                        },
                    }),
                    None => {
                        self.fail(
                            &a.span(),
                            "journal.smtp",
                            "expected host:port, like smtp.example.com:587",
                        );
                        None
                    }
                }
            }
            (None, Some(d)) => Some(JournalTarget::Dir(self.path(d))),
            _ => {
                self.fail(
                    &j.from.span(),
                    "journal",
                    "set exactly one of smtp (an SMTP endpoint) and dir (a directory drop)",
                );
                None
            }
        };
        let address = |s: &str| s.parse::<lettre::Address>().is_ok();
        if !address(j.from.get_ref()) {
            self.fail(
                &j.from.span(),
                "journal.from",
                format!("{:?} is not a mail address", j.from.get_ref()),
            );
        }
        if j.to.get_ref().is_empty() {
            self.fail(&j.to.span(), "journal.to", "name at least one recipient");
        }
        for t in j.to.get_ref() {
            if !address(t) {
                self.fail(
                    &j.to.span(),
                    "journal.to",
                    format!("{t:?} is not a mail address"),
                );
            }
        }
        let period = match &j.period {
            Some(p) => match self.span(p, "journal.period") {
                Some(custos_archive::retention::Span::Secs(n)) if n > 0 && n <= 31 * 86_400 => {
                    Some(std::time::Duration::from_secs(n))
                }
                Some(_) => {
                    self.fail(
                        &p.span(),
                        "journal.period",
                        "must be between 1 second and 31 days",
                    );
                    None
                }
                None => None,
            },
            None => Some(std::time::Duration::from_secs(3600)),
        };
        let every = match &j.every {
            Some(e) if *e.get_ref() <= 0 || *e.get_ref() > 86_400 => {
                self.fail(
                    &e.span(),
                    "journal.every",
                    "must be between 1 and 86400 seconds",
                );
                None
            }
            Some(e) => u64::try_from(*e.get_ref())
                .ok()
                .map(std::time::Duration::from_secs),
            None => Some(std::time::Duration::from_secs(60)),
        };
        let state = self.path(&j.state);
        if is_within(&state, &archive.dir) {
            self.fail(
                &j.state.span(),
                "journal.state",
                format!(
                    "{} is inside the archive directory {}; keep the cursor elsewhere",
                    state.display(),
                    archive.dir.display()
                ),
            );
        }
        if let Some(p) = &j.password_file {
            if is_within(&self.path(p), &archive.dir) {
                self.fail(
                    &p.span(),
                    "journal.password_file",
                    "is inside the archive directory; keep secrets elsewhere",
                );
            }
        }
        Some(JournalSettings {
            target: target?,
            from: j.from.get_ref().clone(),
            to: j.to.get_ref().clone(),
            period: period?,
            every: every?,
            state,
        })
    }

    fn web(&mut self, w: &Spanned<RawWeb>, has_archive: bool) -> Option<WebSettings> {
        if !has_archive {
            self.fail(&w.span(), "web", "the review UI needs an [archive] section");
        }
        let w = w.get_ref();
        let bind = match w.bind.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.fail(
                    &w.bind.span(),
                    "web.bind",
                    "expected an address like 127.0.0.1:8080",
                );
                None
            }
        };
        let users = match &w.users {
            Some(p) => self.path(p),
            None => self.base.join("users.json"),
        };
        let sample_rate = match &w.sample_rate {
            Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
                self.fail(&r.span(), "web.sample_rate", "must be between 0.0 and 1.0");
                None
            }
            Some(r) => Some(*r.get_ref()),
            None => None,
        };
        let session_ttl = match &w.session_minutes {
            Some(m) if *m.get_ref() <= 0 || *m.get_ref() > 24 * 60 => {
                self.fail(
                    &m.span(),
                    "web.session_minutes",
                    "must be between 1 and 1440",
                );
                None
            }
            Some(m) => u64::try_from(*m.get_ref())
                .ok()
                .map(|m| std::time::Duration::from_secs(m * 60)),
            None => None,
        };
        let tls = match (&w.cert, &w.key) {
            (None, None) => None,
            (Some(c), None) => {
                self.fail(&c.span(), "web.cert", "needs web.key too");
                None
            }
            (None, Some(k)) => {
                self.fail(&k.span(), "web.key", "needs web.cert too");
                None
            }
            (Some(c), Some(k)) => {
                let cert = self.existing_file(c, "web.cert");
                let key = self.existing_file(k, "web.key");
                match (cert, key) {
                    (Some(cert), Some(key)) => {
                        match custos_proxy::tls::server_config(&cert, &key) {
                            Ok(tls) => {
                                // The same identity as a listener's, speaking HTTP.
                                let mut config = (*tls).clone();
                                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                                Some(Arc::new(config))
                            }
                            Err(e) => {
                                self.fail(&c.span(), "web.cert", e.to_string());
                                None
                            }
                        }
                    }
                    _ => None,
                }
            }
        };
        let secure_cookies = w.secure_cookies.unwrap_or(tls.is_some());
        Some(WebSettings {
            bind: bind?,
            users,
            sample_rate,
            session_ttl,
            tls,
            secure_cookies,
        })
    }

    fn proxy(&mut self, raw: &RawConfig) -> Option<ProxyConfig> {
        let limits = self.limits(raw.limits.as_ref());
        if raw.listener.is_empty() {
            // A config without listeners is valid: it can serve the web UI or run the
            // archive commands alone. An upstream without listeners is almost certainly a
            // mistake, though.
            if let Some(up) = &raw.upstream {
                self.fail(
                    &up.span(),
                    "upstream",
                    "an [upstream] needs at least one [[listener]]",
                );
            }
            return None;
        }
        let listeners: Vec<_> = raw
            .listener
            .iter()
            .enumerate()
            .filter_map(|(i, l)| self.listener(i, l.get_ref()))
            .collect();
        let upstream = match &raw.upstream {
            Some(up) => self.upstream(up.get_ref()),
            None => {
                let span = raw.listener.first().map(|l| l.span()).unwrap_or(0..0);
                self.fail(&span, "upstream", "listeners need an [upstream] section");
                None
            }
        };
        let upstream = upstream?;
        (listeners.len() == raw.listener.len()).then_some(ProxyConfig {
            listeners,
            upstream,
            limits,
        })
    }

    fn listener(&mut self, index: usize, l: &RawListener) -> Option<ListenerConfig> {
        let key = |k: &str| format!("listener[{index}].{k}");
        let bind = match l.bind.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    &l.bind.span(),
                    &key("bind"),
                    "expected an address like 127.0.0.1:5222",
                );
                None
            }
        };
        let websocket = match l
            .protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("xmpp", _)) => false,
            Some(("websocket", _)) => true,
            Some((other, span)) => {
                self.fail(
                    &span,
                    &key("protocol"),
                    format!("expected \"xmpp\" or \"websocket\", got {other:?}"),
                );
                return None;
            }
        };
        let tls_word = l.tls.get_ref().as_str();
        let mode = match (websocket, tls_word) {
            (false, "starttls") => Some(ListenerMode::StartTls),
            (false, "direct") => Some(ListenerMode::DirectTls),
            (true, "direct" | "none") => Some(ListenerMode::WebSocket),
            (false, other) => {
                self.fail(
                    &l.tls.span(),
                    &key("tls"),
                    format!("expected \"starttls\" or \"direct\", got {other:?}"),
                );
                None
            }
            (true, other) => {
                self.fail(
                    &l.tls.span(),
                    &key("tls"),
                    format!(
                        "expected \"direct\" (wss://) or \"none\" (ws:// on loopback, behind a TLS-terminating proxy) for a WebSocket listener, got {other:?}"
                    ),
                );
                None
            }
        };
        let plain = websocket && tls_word == "none";
        if plain {
            if let Some(a) = bind {
                if !a.ip().is_loopback() {
                    self.fail(
                        &l.tls.span(),
                        &key("tls"),
                        format!(
                            "\"none\" is allowed only on a loopback address (a TLS-terminating reverse proxy in front), not {a}"
                        ),
                    );
                    return None;
                }
            }
        }
        if !websocket {
            for (name, given) in [
                ("path", l.path.as_ref().map(|p| p.span())),
                ("origins", l.origins.as_ref().map(|o| o.span())),
            ] {
                if let Some(span) = given {
                    self.fail(
                        &span,
                        &key(name),
                        "only a WebSocket listener (protocol = \"websocket\") has it",
                    );
                }
            }
        }
        let ws_options = if websocket {
            let path = l
                .path
                .as_ref()
                .map_or_else(|| "/xmpp-websocket".to_owned(), |p| p.get_ref().clone());
            if !path.starts_with('/') {
                let span = l.path.as_ref().map_or(0..0, |p| p.span());
                self.fail(
                    &span,
                    &key("path"),
                    format!("expected a path starting with /, got {path:?}"),
                );
                return None;
            }
            let origins = l
                .origins
                .as_ref()
                .map_or_else(Vec::new, |o| o.get_ref().clone());
            for o in &origins {
                if !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/') {
                    let span = l.origins.as_ref().map_or(0..0, |o| o.span());
                    self.fail(
                        &span,
                        &key("origins"),
                        format!("expected origins like \"https://chat.example.test\" (scheme, host, optional port; no path), got {o:?}"),
                    );
                    return None;
                }
            }
            Some(Arc::new(custos_proxy::websocket::WebSocketOptions {
                path,
                origins,
            }))
        } else {
            None
        };
        let tls = if plain {
            for (name, given) in [
                ("cert", l.cert.as_ref().map(|c| c.span())),
                ("key", l.key.as_ref().map(|k| k.span())),
            ] {
                if let Some(span) = given {
                    self.fail(&span, &key(name), "tls = \"none\" takes no certificate");
                }
            }
            None
        } else {
            let (Some(cert_path), Some(key_path)) = (&l.cert, &l.key) else {
                let span = l.tls.span();
                self.fail(&span, &key("cert"), "a TLS listener needs cert and key");
                return None;
            };
            let cert = self.existing_file(cert_path, &key("cert"));
            let tls_key = self.existing_file(key_path, &key("key"));
            match (cert, tls_key) {
                (Some(cert), Some(k)) => match custos_proxy::tls::server_config(&cert, &k) {
                    Ok(tls) if websocket => {
                        // Browsers offer ALPN http/1.1 for wss://.
                        let mut config = (*tls).clone();
                        config.alpn_protocols = vec![b"http/1.1".to_vec()];
                        Some(Arc::new(config))
                    }
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        self.fail(&cert_path.span(), &key("cert"), e.to_string());
                        return None;
                    }
                },
                _ => return None,
            }
        };
        Some(ListenerConfig {
            bind: bind?,
            mode: mode?,
            tls,
            websocket: ws_options,
        })
    }

    fn upstream(&mut self, u: &RawUpstream) -> Option<UpstreamConfig> {
        let mode = match u.tls.get_ref().as_str() {
            "starttls" => Some(UpstreamTls::StartTls),
            "direct" => Some(UpstreamTls::Direct),
            "none" => Some(UpstreamTls::None),
            other => {
                self.fail(
                    &u.tls.span(),
                    "upstream.tls",
                    format!("expected \"starttls\", \"direct\" or \"none\", got {other:?}"),
                );
                None
            }
        };
        let address = u.address.get_ref().clone();
        let resolved: Vec<SocketAddr> = match address.to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                self.fail(
                    &u.address.span(),
                    "upstream.address",
                    format!("expected host:port that resolves ({e})"),
                );
                return None;
            }
        };
        if mode == Some(UpstreamTls::None) && !resolved.iter().all(|a| a.ip().is_loopback()) {
            // Passwords cross the upstream leg in SASL: without TLS they may only stay on
            // this machine.
            self.fail(
                &u.tls.span(),
                "upstream.tls",
                format!("\"none\" is allowed only for a loopback upstream, and {address} is not"),
            );
            return None;
        }
        let ca = match &u.ca {
            Some(ca) => Some(self.existing_file(ca, "upstream.ca")?),
            None => None,
        };
        let tls = match custos_proxy::tls::upstream_config(
            ca.as_deref(),
            mode == Some(UpstreamTls::Direct),
        ) {
            Ok(tls) => tls,
            Err(e) => {
                let span = u.ca.as_ref().map(|c| c.span()).unwrap_or(u.tls.span());
                self.fail(&span, "upstream.ca", e.to_string());
                return None;
            }
        };
        Some(UpstreamConfig {
            address,
            mode: mode?,
            tls,
            server_name: u.server_name.as_ref().map(|s| s.get_ref().clone()),
        })
    }

    fn archive(&mut self, a: &Spanned<RawArchive>) -> Option<ArchiveSettings> {
        let a = a.get_ref();
        let dir = self.path(&a.dir);
        let master_key = a.master_key.as_ref().map(|k| (self.path(k), k.span()));
        if let Some((key_path, span)) = &master_key {
            // The master key must never sit in the archive directory: whoever copies the
            // archive would copy the key with it.
            if is_within(key_path, &dir) {
                self.fail(
                    span,
                    "archive.master_key",
                    format!(
                        "{} is inside the archive directory {}; keep the master key elsewhere",
                        key_path.display(),
                        dir.display()
                    ),
                );
            }
        }
        let signing_key = self.path(&a.signing_key);
        if is_within(&signing_key, &dir) {
            self.fail(
                &a.signing_key.span(),
                "archive.signing_key",
                format!(
                    "{} is inside the archive directory; keep keys elsewhere",
                    signing_key.display()
                ),
            );
        }
        let on_failure = match a
            .on_failure
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("block", _)) => OnFailure::Block,
            Some(("deliver", _)) => OnFailure::Deliver,
            Some((other, span)) => {
                self.fail(
                    &span,
                    "archive.on_failure",
                    format!("expected \"block\" or \"deliver\", got {other:?}"),
                );
                OnFailure::Block
            }
        };
        let segment_max_bytes = match &a.segment_max_bytes {
            Some(v) if *v.get_ref() <= 0 => {
                self.fail(&v.span(), "archive.segment_max_bytes", "must be positive");
                None
            }
            Some(v) => u64::try_from(*v.get_ref()).ok(),
            None => None,
        };
        let segment_max_age = a
            .segment_max_age
            .as_ref()
            .and_then(|v| self.seconds(v, "archive.segment_max_age"));
        let witness = a.witness.as_ref().map(|w| (self.path(w), w.span()));
        if let Some((path, span)) = &witness {
            // A witness the archive's owner can cut together with the archive proves
            // nothing: it belongs on another mount or host.
            if is_within(path, &dir) {
                self.fail(
                    span,
                    "archive.witness",
                    format!(
                        "{} is inside the archive directory {}; put the witness on another mount or host",
                        path.display(),
                        dir.display()
                    ),
                );
            }
        }
        let witness_shared = match &a.witness_shared {
            Some(shared) if witness.is_none() => {
                self.fail(
                    &shared.span(),
                    "archive.witness_shared",
                    "set without archive.witness: there is no witness directory to share",
                );
                false
            }
            Some(shared) => *shared.get_ref(),
            None => false,
        };
        let object_store = a
            .object_store
            .as_ref()
            .and_then(|o| self.object_store(o.get_ref(), &dir));
        let node = a.node.as_ref().and_then(|n| {
            if custos_archive::bucket::valid_node_name(n.get_ref()) {
                Some(n.get_ref().clone())
            } else {
                self.fail(
                    &n.span(),
                    "archive.node",
                    format!(
                        "{:?}: expected 1 to 32 of a-z, 0-9 and '-', not starting with '-'",
                        n.get_ref()
                    ),
                );
                None
            }
        });
        let index_niceness =
            a.index_niceness
                .as_ref()
                .and_then(|v| match i32::try_from(*v.get_ref()) {
                    Ok(n) if (0..=19).contains(&n) => Some(n),
                    _ => {
                        self.fail(
                            &v.span(),
                            "archive.index_niceness",
                            format!(
                                "expected 0 to 19 (nice steps below the relay), got {}",
                                v.get_ref()
                            ),
                        );
                        None
                    }
                });
        Some(ArchiveSettings {
            dir,
            master_key: master_key.map(|(p, _)| p),
            signing_key,
            on_failure,
            segment_max_bytes,
            segment_max_age,
            witness: witness.map(|(p, _)| p),
            witness_shared,
            object_store,
            node,
            index_niceness,
            lexicons: Default::default(),
        })
    }

    fn lexicons(
        &mut self,
        raw: &Spanned<std::collections::BTreeMap<String, Spanned<Vec<String>>>>,
    ) -> custos_archive::query::Lexicons {
        let mut map = std::collections::BTreeMap::new();
        for (name, terms) in raw.get_ref() {
            let one = std::collections::BTreeMap::from([(name.clone(), terms.get_ref().clone())]);
            match custos_archive::query::Lexicons::new(one) {
                Ok(_) => {
                    map.insert(name.clone(), terms.get_ref().clone());
                }
                Err(e) => self.fail(&terms.span(), &format!("lexicons.{name}"), e.reason),
            }
        }
        custos_archive::query::Lexicons::new(map).unwrap_or_default()
    }

    fn object_store(&mut self, o: &RawObjectStore, dir: &Path) -> Option<ObjectStoreSettings> {
        use custos_archive::bucket::LockMode;
        let endpoint = o.endpoint.get_ref().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            || endpoint.splitn(4, '/').nth(3).is_some()
        {
            self.fail(
                &o.endpoint.span(),
                "archive.object_store.endpoint",
                format!("expected http(s)://host[:port] without a path, got {endpoint:?}"),
            );
        }
        let bucket = o.bucket.get_ref().clone();
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            self.fail(
                &o.bucket.span(),
                "archive.object_store.bucket",
                format!("{bucket:?} is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"),
            );
        }
        let lock_mode = match o
            .lock_mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("compliance", _)) => LockMode::Compliance,
            Some(("governance", _)) => LockMode::Governance,
            Some((other, span)) => {
                self.fail(
                    &span,
                    "archive.object_store.lock_mode",
                    format!("expected \"compliance\" or \"governance\", got {other:?}"),
                );
                LockMode::Compliance
            }
        };
        let credentials = o.credentials.as_ref().map(|c| (self.path(c), c.span()));
        if let Some((path, span)) = &credentials {
            if is_within(path, dir) {
                self.fail(
                    span,
                    "archive.object_store.credentials",
                    format!(
                        "{} is inside the archive directory; keep credentials elsewhere",
                        path.display()
                    ),
                );
            }
        }
        let cache_bytes = match &o.cache_mb {
            Some(v) if !(1..=65_536).contains(v.get_ref()) => {
                self.fail(
                    &v.span(),
                    "archive.object_store.cache_mb",
                    "must be between 1 and 65536",
                );
                0
            }
            Some(v) => u64::try_from(*v.get_ref()).unwrap_or(256) << 20,
            None => 256 << 20,
        };
        let upload_every = o
            .upload_every
            .as_ref()
            .and_then(|v| self.seconds(v, "archive.object_store.upload_every"))
            .unwrap_or(std::time::Duration::from_secs(300));
        let mut prefix = o
            .prefix
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| "custos/".into());
        if let Some(p) = &o.prefix {
            if prefix.contains("//") || prefix.starts_with('/') {
                self.fail(
                    &p.span(),
                    "archive.object_store.prefix",
                    "must not start with '/' or contain '//'",
                );
            }
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Some(ObjectStoreSettings {
            endpoint,
            bucket,
            region: o
                .region
                .as_ref()
                .map(|r| r.get_ref().clone())
                .unwrap_or_else(|| "us-east-1".into()),
            prefix,
            path_style: o.path_style.unwrap_or(true),
            lock_mode,
            credentials: credentials.map(|(p, _)| p),
            keep_local: o.keep_local.unwrap_or(true),
            cache_bytes,
            upload_every,
        })
    }

    fn limits(&mut self, raw: Option<&Spanned<RawLimits>>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else { return limits };
        let raw = raw.get_ref();
        let mut positive = |v: &Option<Spanned<i64>>, key: &str, max: i64| -> Option<u64> {
            let v = v.as_ref()?;
            let n = *v.get_ref();
            if n <= 0 || n > max {
                self.fail(&v.span(), key, format!("must be between 1 and {max}"));
                return None;
            }
            u64::try_from(n).ok()
        };
        if let Some(n) = positive(&raw.max_stanza_bytes, "limits.max_stanza_bytes", 64 << 20) {
            limits.frame.max_stanza_bytes = n as usize;
        }
        if let Some(n) = positive(
            &raw.handshake_timeout_secs,
            "limits.handshake_timeout_secs",
            3600,
        ) {
            limits.handshake_timeout = std::time::Duration::from_secs(n);
        }
        if let Some(n) = positive(&raw.auth_timeout_secs, "limits.auth_timeout_secs", 3600) {
            limits.auth_timeout = std::time::Duration::from_secs(n);
        }
        if let Some(n) = positive(&raw.max_connections, "limits.max_connections", 1_000_000) {
            limits.max_connections = n as usize;
        }
        if let Some(n) = positive(&raw.drain_timeout_secs, "limits.drain_timeout_secs", 3600) {
            limits.drain_timeout = std::time::Duration::from_secs(n);
        }
        limits
    }
}

/// Whether `path` lies inside `dir`, comparing absolute, normalised forms so `..` tricks
/// and relative spellings do not slip past.
fn is_within(path: &Path, dir: &Path) -> bool {
    let abs = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() {
            p.to_owned()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        // Resolve symlinks where the path exists, so a link into the dir is caught too.
        std::fs::canonicalize(&out).unwrap_or(out)
    };
    abs(path).starts_with(abs(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("custos.toml"), text) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let errs = errors("[web]\nbind = \"127.0.0.1:8080\"\nport = 3\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("custos.toml:3: port: unknown field"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn retention_is_parsed_and_bad_durations_are_located() {
        let cfg = parse(
            Path::new("custos.toml"),
            "[retention]\ndefault = \"6y\"\nrun_every = 30\n[retention.classes]\nresearch = \"7y\"\nlegal = \"3660d\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let r = cfg.retention.unwrap();
        assert_eq!(r.run_every, std::time::Duration::from_secs(30));
        assert_eq!(r.policy.span("research"), Some(Span::Years(7)));
        assert_eq!(r.policy.span("default"), Some(Span::Years(6)));
        let errs = errors(
            "[retention]\ndefault = \"6 years\"\n[retention.classes]\nresearch = \"7q\"\npermanent = \"1d\"\n",
        )
        .join("\n");
        assert!(errs.contains("custos.toml:2: retention.default:"), "{errs}");
        assert!(
            errs.contains("custos.toml:4: retention.classes.research:"),
            "{errs}"
        );
        let errs =
            errors("[retention]\ndefault = \"6y\"\n[retention.classes]\nchatter = \"90d\"\n")
                .join("\n");
        assert!(
            errs.contains(
                "custos.toml:4: retention.classes.chatter: 90d keeps less than the default (6y)"
            ),
            "{errs}"
        );
        let errs = errors("[retention]\ndefault = \"1d\"\nrun_every = \"1y\"\n").join("\n");
        assert!(
            errs.contains("custos.toml:3: retention.run_every:"),
            "{errs}"
        );
    }

    #[test]
    fn bad_values_are_located() {
        let errs = errors(
            "[[listener]]\nbind = \"nowhere\"\ntls = \"tls\"\ncert = \"missing.crt\"\nkey = \"missing.key\"\n\
             [upstream]\naddress = \"127.0.0.1:5222\"\ntls = \"starttls\"\n",
        );
        let joined = errs.join("\n");
        assert!(
            joined.contains("custos.toml:2: listener[0].bind: expected an address"),
            "{joined}"
        );
        assert!(
            joined.contains("custos.toml:3: listener[0].tls: expected \"starttls\" or \"direct\""),
            "{joined}"
        );
        assert!(
            joined.contains("custos.toml:4: listener[0].cert: missing.crt:"),
            "{joined}"
        );
        assert!(
            joined.contains("custos.toml:5: listener[0].key: missing.key:"),
            "{joined}"
        );
    }

    #[test]
    fn websocket_listeners_are_checked() {
        let up = "[upstream]\naddress = \"127.0.0.1:5222\"\ntls = \"starttls\"\n";
        let cfg = parse(
            Path::new("custos.toml"),
            &format!(
                "[[listener]]\nprotocol = \"websocket\"\nbind = \"127.0.0.1:5280\"\ntls = \"none\"\n\
                 origins = [\"https://chat.example.test\"]\n{up}"
            ),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let proxy = cfg.proxy.unwrap();
        let l = &proxy.listeners[0];
        assert_eq!(l.mode, ListenerMode::WebSocket);
        assert!(l.tls.is_none());
        let ws = l.websocket.as_ref().unwrap();
        assert_eq!(ws.path, "/xmpp-websocket");
        assert_eq!(ws.origins, ["https://chat.example.test"]);

        for (listener, want) in [
            (
                "protocol = \"websocket\"\nbind = \"0.0.0.0:5280\"\ntls = \"none\"\n",
                "custos.toml:4: listener[0].tls: \"none\" is allowed only on a loopback address",
            ),
            (
                "protocol = \"websocket\"\nbind = \"127.0.0.1:5280\"\ntls = \"starttls\"\n",
                "custos.toml:4: listener[0].tls: expected \"direct\" (wss://) or \"none\"",
            ),
            (
                "protocol = \"bosh\"\nbind = \"127.0.0.1:5280\"\ntls = \"none\"\n",
                "custos.toml:2: listener[0].protocol: expected \"xmpp\" or \"websocket\"",
            ),
            (
                "protocol = \"websocket\"\nbind = \"127.0.0.1:5280\"\ntls = \"none\"\npath = \"ws\"\n",
                "custos.toml:5: listener[0].path: expected a path starting with /",
            ),
            (
                "protocol = \"websocket\"\nbind = \"127.0.0.1:5280\"\ntls = \"none\"\norigins = [\"chat.example.test\"]\n",
                "custos.toml:5: listener[0].origins: expected origins like",
            ),
            (
                "bind = \"127.0.0.1:5222\"\ntls = \"direct\"\npath = \"/x\"\ncert = \"c\"\nkey = \"k\"\n",
                "custos.toml:4: listener[0].path: only a WebSocket listener",
            ),
            (
                "bind = \"127.0.0.1:5222\"\ntls = \"direct\"\n",
                "custos.toml:3: listener[0].cert: a TLS listener needs cert and key",
            ),
        ] {
            let errs = errors(&format!("[[listener]]\n{listener}{up}")).join("\n");
            assert!(errs.contains(want), "{listener}: {errs}");
        }
    }

    #[test]
    fn plaintext_upstream_only_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let text = "[upstream]\naddress = \"192.0.2.1:5222\"\ntls = \"none\"\n";
        let raw: RawConfig = toml::from_str(text).unwrap();
        let mut v = Validator {
            locate: Locator { file: &cfg, text },
            base: dir.path().to_owned(),
            errors: Vec::new(),
        };
        assert!(v
            .upstream(raw.upstream.as_ref().unwrap().get_ref())
            .is_none());
        assert!(v.errors[0]
            .to_string()
            .contains("upstream.tls: \"none\" is allowed only for a loopback upstream"));
    }

    #[test]
    fn witness_inside_archive_dir_is_refused() {
        let errs = errors(
            "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\nwitness = \"data/archive/witness\"\n",
        );
        assert!(
            errs[0].starts_with("custos.toml:4: archive.witness:"),
            "{errs:?}"
        );
    }

    #[test]
    fn witness_shared_is_read_and_needs_a_witness() {
        let archive = "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n";
        let cfg = parse(
            Path::new("custos.toml"),
            &format!("{archive}witness = \"/mnt/witness\"\nwitness_shared = true\n"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(cfg.archive.unwrap().witness_shared);
        let cfg = parse(
            Path::new("custos.toml"),
            &format!("{archive}witness = \"/mnt/witness\"\n"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!cfg.archive.unwrap().witness_shared);
        let errs = errors(&format!("{archive}witness_shared = true\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .starts_with("custos.toml:4: archive.witness_shared: set without archive.witness"),
            "{errs:?}"
        );
    }

    #[test]
    fn index_niceness_is_read_and_bad_values_are_located() {
        let archive = "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n";
        let cfg = parse(
            Path::new("custos.toml"),
            &format!("{archive}index_niceness = 0\n"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.archive.unwrap().index_niceness, Some(0));
        for bad in ["-1", "20", "4294967306"] {
            let errs = errors(&format!("{archive}index_niceness = {bad}\n"));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].starts_with(&format!(
                    "custos.toml:4: archive.index_niceness: expected 0 to 19 (nice steps below the relay), got {bad}"
                )),
                "{}",
                errs[0]
            );
        }
    }

    #[test]
    fn master_key_inside_archive_dir_is_refused() {
        let errs = errors(
            "[archive]\ndir = \"data/archive\"\nmaster_key = \"data/archive/../archive/master.key\"\nsigning_key = \"secrets/s.key\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("custos.toml:3: archive.master_key:"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn lexicons_are_checked_and_located() {
        let errs = errors(
            "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n\n[lexicons]\nbribery = [\"brib*\", \"from:x@y\"]\nsecrecy = []\n\"bad name\" = [\"a\"]\nfine = [\"kickback~\", \"\\\"under the table\\\"\"]\n",
        );
        let all = errs.join("\n");
        for want in [
            "custos.toml:6: lexicons.bribery: term \"from:x@y\": a field term does not belong in a lexicon",
            "custos.toml:7: lexicons.secrecy: has no terms",
            "custos.toml:8: lexicons.bad name: a name is letters, digits",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
        assert!(!all.contains("lexicons.fine"), "{all}");
        let errs = errors("[lexicons]\nx = [\"a\"]\n");
        assert!(
            errs.join("\n").contains("add an [archive] section"),
            "{errs:?}"
        );
    }

    #[test]
    fn journal_settings_are_checked_and_located() {
        let errs = errors(
            "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n\n[journal]\nsmtp = \"mail.example\"\nfrom = \"not an address\"\nto = []\nstate = \"data/archive/../archive/journal.state\"\nperiod = \"0\"\n",
        );
        let all = errs.join("\n");
        for want in [
            "custos.toml:6: journal.smtp: expected host:port",
            "custos.toml:7: journal.from: \"not an address\" is not a mail address",
            "custos.toml:8: journal.to: name at least one recipient",
            "custos.toml:9: journal.state:",
            "custos.toml:10: journal.period:",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
        let errs = errors(
            "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n\n[journal]\nsmtp = \"mail.example:25\"\ndir = \"spool\"\nfrom = \"c@example.test\"\nto = [\"j@example.test\"]\nstate = \"journal.state\"\n",
        );
        assert!(
            errs.join("\n").contains("journal: set exactly one of smtp"),
            "{errs:?}"
        );
    }

    #[test]
    fn files_settings_are_checked_and_located() {
        let errs = errors(
            "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n\n[files]\nsources = [\"ftp://upload.example\", \"https://u.example/f/?q=1\"]\nmax_bytes = 0\ntimeout_secs = 900\non_failure = \"maybe\"\n",
        );
        let all = errs.join("\n");
        for want in [
            "custos.toml:6: files.sources: \"ftp://upload.example\" is not an http(s) URL",
            "custos.toml:6: files.sources: \"https://u.example/f/?q=1\": a source is a scheme, host, port and path",
            "custos.toml:7: files.max_bytes: must be between 1 and",
            "custos.toml:8: files.timeout_secs: must be between 1 and 300",
            "custos.toml:9: files.on_failure: \"maybe\": expected \"deliver\" or \"block\"",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
        // Without an archive there is nowhere to keep a file.
        let errs = errors("[files]\nsources = [\"https://u.example/f/\"]\n");
        assert!(
            errs.join("\n")
                .contains("files: archiving files needs an [archive] section"),
            "{errs:?}"
        );
        // A good section: the source gets its trailing slash, the defaults apply.
        let cfg = parse(
            Path::new("custos.toml"),
            "[archive]\ndir = \"data/archive\"\nsigning_key = \"secrets/s.key\"\n\n[files]\nsources = [\"https://u.example/file_share\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let files = cfg.files.unwrap_or_else(|| panic!("no files settings"));
        assert_eq!(files.sources[0].as_str(), "https://u.example/file_share/");
        assert_eq!(files.max_bytes, 16 << 20);
        assert!(!files.block_on_failure);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = errors("[web]\nbind = \n");
        assert!(errs[0].starts_with("custos.toml:2: "), "{}", errs[0]);
    }
}
