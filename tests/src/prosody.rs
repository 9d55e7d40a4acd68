//! A private Prosody server per scenario.
//!
//! [`Prosody::start`] writes a config below the given directory, issues
//! certificates from the scenario's [`TestCa`], registers the accounts,
//! starts `prosody` in the foreground as a child process on loopback ports
//! picked at run time, and waits until its c2s ports accept. Dropping the
//! handle stops the process by pid (SIGTERM, then SIGKILL).
//!
//! ```no_run
//! use custos_e2e::{Prosody, ProsodyOptions, TestCa, TestDir, User};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = TestDir::new("demo")?;
//! let ca = TestCa::generate(dir.path())?;
//! let opts = ProsodyOptions {
//!     users: vec![User::new("alice", "example.test", "alice-pw")],
//!     ..ProsodyOptions::default()
//! };
//! let prosody = Prosody::start(dir.path(), &ca, opts)?;
//! println!("STARTTLS on {}", prosody.c2s_addr());
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{CertError, LeafCert, TestCa};
use crate::net::free_port;
use crate::process::{tail, terminate_child, DEFAULT_GRACE};
use crate::tools::{ToolError, Tools};

/// How much of Prosody's log an error quotes.
const LOG_TAIL: usize = 4000;

/// An XMPP account to create before (or after) start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Localpart, e.g. `alice`.
    pub name: String,
    /// Host, one of the server's virtual hosts.
    pub host: String,
    /// Plain password (Prosody stores it hashed).
    pub password: String,
}

impl User {
    /// An account `name@host` with `password`.
    pub fn new(name: &str, host: &str, password: &str) -> Self {
        Self {
            name: name.to_string(),
            host: host.to_string(),
            password: password.to_string(),
        }
    }

    /// The bare JID `name@host`.
    pub fn jid(&self) -> String {
        format!("{}@{}", self.name, self.host)
    }
}

/// What to start. [`Default`] gives `example.test` with STARTTLS and
/// Direct TLS, channel binding off, no MAM and no accounts.
#[derive(Debug, Clone)]
pub struct ProsodyOptions {
    /// The main virtual host (users "behind the proxy").
    pub domain: String,
    /// A second virtual host for "external" users, e.g. `example.org`.
    pub external_domain: Option<String>,
    /// Accounts registered with `prosodyctl` before start.
    pub users: Vec<User>,
    /// Also listen for Direct TLS (XEP-0368) on a second port.
    pub direct_tls: bool,
    /// Load `mod_mam` (XEP-0313 message archive).
    pub mam: bool,
    /// The modules a full web client such as Converse.js waits for at start (block
    /// list, private XML storage, PEP, bookmarks), which the minimal set leaves out.
    pub web_client: bool,
    /// SASL2 and Bind2 (XEP-0388, XEP-0386) from Debian's `prosody-modules`. (Its
    /// `mod_sasl2_sm`, inline stream management, needs a newer `mod_smacks` than
    /// Prosody 0.12's and is left out.)
    pub sasl2: bool,
    /// Accept clients without TLS (for a proxy's plain loopback leg): encryption not
    /// required and PLAIN allowed on it.
    pub plaintext_clients: bool,
    /// A multi-user chat component (XEP-0045) at this address, e.g.
    /// `conference.example.test`; rooms are created unlocked on first join.
    pub muc: Option<String>,
    /// HTTP file upload (XEP-0363, Prosody's `mod_http_file_share`) at
    /// `upload.<domain>`, served over plain HTTP on a loopback port of its own; the
    /// address files are offered under is [`Prosody::file_share_url`].
    pub file_share: bool,
    /// Remove the SCRAM-*-PLUS mechanisms (see the comment in
    /// [`ProsodyOptions::default`]). Turn off only to show what breaks.
    pub disable_channel_binding: bool,
    /// Lua lines appended to the global section, before the virtual hosts.
    pub extra_global_config: String,
    /// Bound on waiting for the c2s ports to accept.
    pub start_timeout: Duration,
}

impl Default for ProsodyOptions {
    fn default() -> Self {
        Self {
            domain: "example.test".to_string(),
            external_domain: None,
            users: Vec::new(),
            direct_tls: true,
            mam: false,
            web_client: false,
            sasl2: false,
            plaintext_clients: false,
            muc: None,
            file_share: false,
            // On by default because Custos terminates TLS on each leg: a
            // client's SCRAM-*-PLUS binds the SASL exchange to *its* TLS
            // channel (tls-unique / tls-exporter), which the server sees as a
            // different channel, so authentication would fail. The operator
            // docs ask upstream servers for the same setting; the proxy also
            // strips -PLUS from what it offers clients.
            disable_channel_binding: true,
            extra_global_config: String::new(),
            start_timeout: Duration::from_secs(15),
        }
    }
}

/// Starting or driving Prosody failed.
#[derive(Debug, thiserror::Error)]
pub enum ProsodyError {
    /// A required program is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Certificates could not be issued.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// Local file or process I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// `prosodyctl register` failed.
    #[error("registering {jid} failed ({status}): {output}")]
    Register {
        /// The account.
        jid: String,
        /// prosodyctl's exit status.
        status: String,
        /// prosodyctl's stdout and stderr.
        output: String,
    },
    /// Prosody exited or did not open its ports in time.
    #[error("prosody did not start: {reason}\n--- log tail ({log}) ---\n{log_tail}")]
    Start {
        /// Exited (with status) or timed out.
        reason: String,
        /// Log file path.
        log: PathBuf,
        /// The last lines of Prosody's log and console output.
        log_tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProsodyError {
    let what = what.into();
    move |source| ProsodyError::Io { what, source }
}

/// A running Prosody. Stopped by pid on drop.
#[derive(Debug)]
pub struct Prosody {
    child: Child,
    tools: Tools,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    console_path: PathBuf,
    c2s_port: u16,
    direct_tls_port: Option<u16>,
    http_port: Option<u16>,
    domain: String,
    external_domain: Option<String>,
    certs: Vec<LeafCert>,
}

impl Prosody {
    /// Starts Prosody with its files in `<parent>/prosody-<c2s port>/`.
    ///
    /// Blocks (bounded by `opts.start_timeout`) until every c2s port accepts.
    /// On failure the error carries the tail of Prosody's log.
    pub fn start(parent: &Path, ca: &TestCa, opts: ProsodyOptions) -> Result<Self, ProsodyError> {
        let tools = Tools::locate()?;
        let c2s_port = free_port().map_err(io_err("picking c2s port"))?;
        let direct_tls_port = if opts.direct_tls {
            Some(free_port().map_err(io_err("picking direct TLS port"))?)
        } else {
            None
        };
        let http_port = if opts.file_share {
            Some(free_port().map_err(io_err("picking HTTP port"))?)
        } else {
            None
        };
        let dir = parent.join(format!("prosody-{c2s_port}"));
        let certs_dir = dir.join("certs");
        let data_dir = dir.join("data");
        for d in [&dir, &certs_dir, &data_dir] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }

        let mut certs = vec![ca.leaf(&certs_dir, &opts.domain)?];
        if let Some(ext) = &opts.external_domain {
            certs.push(ca.leaf(&certs_dir, ext)?);
        }

        let paths = ConfigPaths {
            pidfile: dir.join("prosody.pid"),
            data: data_dir,
            log: dir.join("prosody.log"),
            certs: certs_dir,
        };
        let ports = Ports {
            c2s: c2s_port,
            direct_tls: direct_tls_port,
            http: http_port,
        };
        let config = render_config(&opts, &paths, &ports, &certs);
        let config_path = dir.join("prosody.cfg.lua");
        fs::write(&config_path, config).map_err(io_err("writing prosody config"))?;

        let console_path = dir.join("console.log");
        let mut this = Self {
            child: spawn_placeholder()?,
            tools,
            dir,
            config_path,
            log_path: paths.log,
            console_path,
            c2s_port,
            direct_tls_port,
            http_port,
            domain: opts.domain.clone(),
            external_domain: opts.external_domain.clone(),
            certs,
        };
        this.register_all(&opts.users)?;
        this.child = this.spawn()?;
        this.wait_ready(opts.start_timeout)?;
        Ok(this)
    }

    fn spawn(&self) -> Result<Child, ProsodyError> {
        let console =
            fs::File::create(&self.console_path).map_err(io_err("creating console log"))?;
        let console2 = console.try_clone().map_err(io_err("cloning console log"))?;
        Command::new(&self.tools.prosody)
            .arg("--config")
            .arg(&self.config_path)
            .arg("-F")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2)
            .spawn()
            .map_err(io_err("spawning prosody"))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), ProsodyError> {
        let deadline = Instant::now() + limit;
        let ports: Vec<u16> = std::iter::once(self.c2s_port)
            .chain(self.direct_tls_port)
            .chain(self.http_port)
            .collect();
        let mut pending = ports;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.start_error(format!("exited with {status}")));
            }
            pending.retain(|p| !accepts(*p));
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(
                    self.start_error(format!("ports {pending:?} not accepting after {limit:?}"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_error(&mut self, reason: String) -> ProsodyError {
        terminate_child(&mut self.child, DEFAULT_GRACE);
        ProsodyError::Start {
            reason,
            log: self.log_path.clone(),
            log_tail: self.log_tail(),
        }
    }

    fn register_all(&self, users: &[User]) -> Result<(), ProsodyError> {
        // prosodyctl boots a Lua runtime each time (~0.2 s); run them
        // concurrently, each writes its own account file.
        let children: Vec<(User, Result<Child, io::Error>)> = users
            .iter()
            .map(|u| (u.clone(), self.register_command(u).spawn()))
            .collect();
        let mut first_err = None;
        for (user, child) in children {
            let result = child
                .and_then(Child::wait_with_output)
                .map_err(io_err(format!(
                    "running prosodyctl register {}",
                    user.jid()
                )))
                .and_then(|out| check_register(&user, out));
            if let (Err(e), None) = (result, &first_err) {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn register_command(&self, user: &User) -> Command {
        let mut cmd = Command::new(&self.tools.prosodyctl);
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(["register", &user.name, &user.host, &user.password])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The prefix of the addresses uploaded files are offered under, when
    /// [`ProsodyOptions::file_share`] is on.
    pub fn file_share_url(&self) -> Option<String> {
        self.http_port
            .map(|p| format!("http://127.0.0.1:{p}/file_share/"))
    }

    /// Creates an account while the server runs.
    pub fn register(&self, user: &User) -> Result<(), ProsodyError> {
        let out = self
            .register_command(user)
            .output()
            .map_err(io_err(format!(
                "running prosodyctl register {}",
                user.jid()
            )))?;
        check_register(user, out)
    }

    /// The STARTTLS c2s address (`127.0.0.1:<port>`).
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.c2s_port))
    }

    /// The Direct TLS (XEP-0368) c2s address, if enabled.
    pub fn direct_tls_addr(&self) -> Option<SocketAddr> {
        self.direct_tls_port
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
    }

    /// The main virtual host.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The external virtual host, if configured.
    pub fn external_domain(&self) -> Option<&str> {
        self.external_domain.as_deref()
    }

    /// The certificate Prosody presents for `domain`.
    pub fn cert(&self, domain: &str) -> Option<&LeafCert> {
        self.certs.iter().find(|c| c.domain == domain)
    }

    /// Prosody's directory (config, log, data, certs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Prosody's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of Prosody's log and console output, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let console = fs::read_to_string(&self.console_path).unwrap_or_default();
        format!(
            "{}\n--- console ---\n{}",
            tail(&log, LOG_TAIL),
            tail(&console, 1000)
        )
    }

    /// Stops the server now (SIGTERM, then SIGKILL); returns whether it
    /// exited. Drop does the same.
    pub fn stop(&mut self) -> bool {
        terminate_child(&mut self.child, DEFAULT_GRACE)
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child that has already exited, so `Prosody` always holds a `Child`
/// (and Drop has something valid to reap) between construction steps.
fn spawn_placeholder() -> Result<Child, ProsodyError> {
    let mut child = Command::new("true")
        .stdin(Stdio::null())
        .spawn()
        .map_err(io_err("spawning true"))?;
    child.wait().map_err(io_err("waiting for true"))?;
    Ok(child)
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn check_register(user: &User, out: std::process::Output) -> Result<(), ProsodyError> {
    if out.status.success() {
        return Ok(());
    }
    Err(ProsodyError::Register {
        jid: user.jid(),
        status: out.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

struct ConfigPaths {
    pidfile: PathBuf,
    data: PathBuf,
    log: PathBuf,
    certs: PathBuf,
}

/// A Lua string literal for `s`.
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn lua_path(p: &Path) -> String {
    lua_str(&p.to_string_lossy())
}

/// The loopback ports Prosody listens on.
struct Ports {
    c2s: u16,
    direct_tls: Option<u16>,
    http: Option<u16>,
}

fn render_config(
    opts: &ProsodyOptions,
    paths: &ConfigPaths,
    ports: &Ports,
    certs: &[LeafCert],
) -> String {
    let c2s_port = ports.c2s;
    let direct_tls_port = ports.direct_tls;
    let mut modules = vec![
        "roster", "saslauth", "tls", "disco", "ping", "carbons", "smacks", "presence", "posix",
    ];
    if opts.mam {
        modules.push("mam");
    }
    if opts.sasl2 {
        modules.extend(["sasl2", "sasl2_bind2"]);
    }
    if opts.web_client {
        modules.extend(["blocklist", "private", "pep", "bookmarks"]);
    }
    let modules: Vec<String> = modules.iter().map(|m| lua_str(m)).collect();

    let mut c = String::new();
    // `writeln!` into a String cannot fail.
    let _ = writeln!(c, "-- Generated by custos-e2e for one test run.");
    // Prosody refuses to run as root unless told; in CI containers the tests
    // run as root, and switching to the `prosody` user would lose access to
    // the private temp dir. Harmless when not root.
    let _ = writeln!(c, "run_as_root = true");
    let _ = writeln!(c, "daemonize = false");
    let _ = writeln!(c, "pidfile = {}", lua_path(&paths.pidfile));
    let _ = writeln!(c, "data_path = {}", lua_path(&paths.data));
    let _ = writeln!(
        c,
        "log = {{ {{ levels = {{ min = \"debug\" }}, to = \"file\", filename = {} }} }}",
        lua_path(&paths.log)
    );
    let _ = writeln!(c, "interfaces = {{ \"127.0.0.1\" }}");
    let _ = writeln!(c, "local_interfaces = {{ \"127.0.0.1\" }}");
    let _ = writeln!(c, "c2s_ports = {{ {c2s_port} }}");
    match direct_tls_port {
        Some(p) => {
            let _ = writeln!(c, "c2s_direct_tls_ports = {{ {p} }}");
        }
        None => {
            let _ = writeln!(c, "c2s_direct_tls_ports = {{ }}");
        }
    }
    // No s2s (no federation, no DNS lookups), no HTTP but file upload, no components.
    let _ = writeln!(c, "s2s_ports = {{ }}");
    match ports.http {
        Some(p) => {
            let _ = writeln!(c, "http_ports = {{ {p} }}");
            let _ = writeln!(c, "http_interfaces = {{ \"127.0.0.1\" }}");
            // Slots name the loopback address, which resolves without DNS.
            let _ = writeln!(c, "http_external_url = \"http://127.0.0.1:{p}/\"");
            // Requests name 127.0.0.1 as their host: route them to the upload service.
            let _ = writeln!(
                c,
                "http_default_host = {}",
                lua_str(&format!("upload.{}", opts.domain))
            );
        }
        None => {
            let _ = writeln!(c, "http_ports = {{ }}");
        }
    }
    let _ = writeln!(c, "https_ports = {{ }}");
    let _ = writeln!(c, "component_ports = {{ }}");
    let _ = writeln!(c, "modules_disabled = {{ \"s2s\", \"s2s_auth_certs\" }}");
    let _ = writeln!(c, "modules_enabled = {{ {} }}", modules.join(", "));
    if opts.plaintext_clients {
        let _ = writeln!(c, "c2s_require_encryption = false");
        let _ = writeln!(c, "allow_unencrypted_plain_auth = true");
    } else {
        let _ = writeln!(c, "c2s_require_encryption = true");
    }
    let _ = writeln!(c, "allow_registration = false");
    let _ = writeln!(c, "authentication = \"internal_hashed\"");
    let _ = writeln!(c, "storage = \"internal\"");
    if opts.disable_channel_binding {
        // See ProsodyOptions::default: channel binding cannot survive a
        // TLS-terminating proxy.
        let _ = writeln!(
            c,
            "disable_sasl_mechanisms = {{ \"SCRAM-SHA-1-PLUS\", \"SCRAM-SHA-256-PLUS\" }}"
        );
    }
    let _ = writeln!(c, "certificates = {}", lua_path(&paths.certs));
    if let Some(main) = certs.first() {
        let _ = writeln!(
            c,
            "ssl = {{ certificate = {}, key = {} }}",
            lua_path(&main.chain_path),
            lua_path(&main.key_path)
        );
    }
    if !opts.extra_global_config.is_empty() {
        let _ = writeln!(c, "{}", opts.extra_global_config);
    }
    for cert in certs {
        let _ = writeln!(c, "\nVirtualHost {}", lua_str(&cert.domain));
        let _ = writeln!(
            c,
            "  ssl = {{ certificate = {}, key = {} }}",
            lua_path(&cert.chain_path),
            lua_path(&cert.key_path)
        );
    }
    if let Some(muc) = &opts.muc {
        // An internal component: no port, no certificate of its own.
        let _ = writeln!(c, "\nComponent {} \"muc\"", lua_str(muc));
        let _ = writeln!(c, "  muc_room_locking = false");
        let _ = writeln!(c, "  muc_room_default_persistent = false");
    }
    if ports.http.is_some() {
        let upload = format!("upload.{}", opts.domain);
        let _ = writeln!(c, "\nComponent {} \"http_file_share\"", lua_str(&upload));
        let _ = writeln!(c, "  http_file_share_size_limit = 1048576");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_disables_plus_mechanisms_by_default() {
        let paths = ConfigPaths {
            pidfile: "/t/p.pid".into(),
            data: "/t/data".into(),
            log: "/t/p.log".into(),
            certs: "/t/certs".into(),
        };
        let cert = LeafCert {
            domain: "example.test".into(),
            chain_path: "/t/certs/example.test.crt".into(),
            key_path: "/t/certs/example.test.key".into(),
            chain_pem: String::new(),
        };
        let opts = ProsodyOptions::default();
        let ports = Ports {
            c2s: 15222,
            direct_tls: Some(15223),
            http: None,
        };
        let text = render_config(&opts, &paths, &ports, std::slice::from_ref(&cert));
        assert!(text.contains("http_ports = { }"));
        assert!(text.contains("\"SCRAM-SHA-1-PLUS\", \"SCRAM-SHA-256-PLUS\""));
        assert!(text.contains("c2s_ports = { 15222 }"));
        assert!(text.contains("c2s_direct_tls_ports = { 15223 }"));
        assert!(text.contains("VirtualHost \"example.test\""));
        assert!(!text.contains("\"mam\""));

        let opts = ProsodyOptions {
            disable_channel_binding: false,
            mam: true,
            ..ProsodyOptions::default()
        };
        let ports = Ports {
            c2s: 15222,
            direct_tls: None,
            http: Some(15280),
        };
        let text = render_config(&opts, &paths, &ports, &[cert]);
        assert!(text.contains("http_ports = { 15280 }"));
        assert!(text.contains("http_interfaces = { \"127.0.0.1\" }"));
        assert!(!text.contains("SCRAM-SHA-1-PLUS"));
        assert!(text.contains("\"mam\""));
        assert!(text.contains("c2s_direct_tls_ports = { }"));
    }

    proptest! {
        // A Lua literal must round-trip through a Lua-ish unescape.
        #[test]
        fn lua_str_escapes_round_trip(s in "\\PC{0,40}|[\"\\\\\n]{0,8}") {
            let lit = lua_str(&s);
            prop_assert!(lit.starts_with('"') && lit.ends_with('"'));
            let inner = &lit[1..lit.len() - 1];
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '"' || c == '\n' {
                    prop_assert!(false, "unescaped {c:?} in {lit}");
                }
                if c == '\\' {
                    match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('0') => out.push('\0'),
                        Some(o) => out.push(o),
                        None => prop_assert!(false, "dangling escape"),
                    }
                } else {
                    out.push(c);
                }
            }
            prop_assert_eq!(out, s);
        }
    }
}
