//! A private jabberd2 server per scenario: a second, independent XMPP server
//! implementation behind the proxy.
//!
//! [`Jabberd2::start`] writes `router.xml`, `router-users.xml`, `sm.xml` and
//! `c2s.xml` below the given directory, creates an SQLite database from the
//! schema the Debian package ships (storage for the session manager and the
//! `authreg` table for c2s, with the accounts' passwords in plain text),
//! issues the `example.test` certificate from the scenario's [`TestCa`], and
//! starts the router, then the session manager and c2s, each a child process
//! on loopback ports picked at run time. c2s offers STARTTLS, requires it,
//! and offers SASL PLAIN only once TLS is up. Dropping the handle stops the
//! processes by pid (c2s and sm first, then the router).
//!
//! ```no_run
//! use custos_e2e::jabberd2::Jabberd2;
//! use custos_e2e::{TestCa, TestDir, User};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = TestDir::new("demo")?;
//! let ca = TestCa::generate(dir.path())?;
//! let users = [User::new("alice", "example.test", "alice-pw")];
//! let server = Jabberd2::start(dir.path(), &ca, &users)?;
//! println!("STARTTLS on {}", server.c2s_addr());
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{CertError, LeafCert, TestCa};
use crate::net::free_port;
use crate::process::{tail, terminate_child, DEFAULT_GRACE};
use crate::prosody::User;
use crate::tools::{find_on_path, python, ToolError};

/// The virtual host jabberd2 serves.
pub const DOMAIN: &str = "example.test";

/// Bound on waiting for the router, the session manager and c2s.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on creating the database.
const DB_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of each component's log an error quotes.
const LOG_TAIL: usize = 2500;

/// Where the package puts the SQLite schema (Debian compresses it).
const SCHEMA_PATHS: &[&str] = &[
    "/usr/share/doc/jabberd2/db-setup.sqlite.gz",
    "/usr/share/doc/jabberd2/db-setup.sqlite",
    "/usr/share/jabberd2/db-setup.sqlite",
];

/// The shared secret c2s and sm present to the router. Only processes on
/// this host can reach the router, which listens on loopback only.
const ROUTER_SECRET: &str = "custos-e2e-router";

/// Creates the database: the package's schema, then one `authreg` row per
/// account. Arguments: schema file, database file, accounts (JSON list of
/// `[username, realm, password]`).
const CREATE_DB: &str = r#"
import gzip, json, sqlite3, sys
schema_path, db_path, users_path = sys.argv[1:4]
opener = gzip.open if schema_path.endswith(".gz") else open
with opener(schema_path, "rt") as f:
    schema = f.read()
with open(users_path) as f:
    users = json.load(f)
db = sqlite3.connect(db_path)
db.executescript(schema)
db.executemany('INSERT INTO "authreg" ("username", "realm", "password") VALUES (?, ?, ?)', users)
db.commit()
db.close()
"#;

/// Starting jabberd2 failed.
#[derive(Debug, thiserror::Error)]
pub enum Jabberd2Error {
    /// A program is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The certificate could not be issued.
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
    /// A file the package should have installed is not there.
    #[error("jabberd2 {what} not found (looked in {looked}); run scripts/setup.sh")]
    Missing {
        /// What was looked for.
        what: &'static str,
        /// Where.
        looked: String,
    },
    /// An account is for a host this server does not serve.
    #[error("account {jid}: jabberd2 here serves only {DOMAIN}")]
    ForeignUser {
        /// The account.
        jid: String,
    },
    /// Creating the SQLite database failed.
    #[error("creating the jabberd2 database failed ({status}): {output}")]
    Database {
        /// The script's exit status, or that it timed out.
        status: String,
        /// Its output.
        output: String,
    },
    /// A component exited or did not come up in time.
    #[error("jabberd2 did not start: {reason}\n--- logs ({dir}) ---\n{log_tail}")]
    Start {
        /// Which component exited (with status) or what timed out.
        reason: String,
        /// The server's directory (configs and logs).
        dir: PathBuf,
        /// The end of each component's log and console output.
        log_tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Jabberd2Error {
    let what = what.into();
    move |source| Jabberd2Error::Io { what, source }
}

/// The three processes, in start order.
const COMPONENTS: [&str; 3] = ["router", "sm", "c2s"];

/// A running jabberd2 (router, session manager, c2s). Stopped by pid on drop.
#[derive(Debug)]
pub struct Jabberd2 {
    /// Started components, in start order.
    children: Vec<(&'static str, Child)>,
    dir: PathBuf,
    router_port: u16,
    c2s_port: u16,
    cert: LeafCert,
}

impl Jabberd2 {
    /// Starts jabberd2 for [`DOMAIN`] with its files in
    /// `<parent>/jabberd2-<c2s port>/` and `users` in its database.
    ///
    /// Blocks (bounded) until the router has both the session manager and
    /// c2s online and c2s accepts. On failure the error carries the tail of
    /// every component's log.
    pub fn start(parent: &Path, ca: &TestCa, users: &[User]) -> Result<Self, Jabberd2Error> {
        if let Some(user) = users.iter().find(|u| u.host != DOMAIN) {
            return Err(Jabberd2Error::ForeignUser { jid: user.jid() });
        }
        let bins = COMPONENTS
            .iter()
            .map(|name| find_on_path(binary_name(name)))
            .collect::<Result<Vec<_>, _>>()?;
        let python = python()?;
        let modules = module_dir()?;
        let schema = schema_path()?;

        let router_port = free_port().map_err(io_err("picking router port"))?;
        let c2s_port = free_port().map_err(io_err("picking c2s port"))?;
        let dir = parent.join(format!("jabberd2-{c2s_port}"));
        let certs_dir = dir.join("certs");
        for d in [&dir, &certs_dir] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }

        // c2s reads the certificate chain and the key from one PEM file.
        let cert = ca.leaf(&certs_dir, DOMAIN)?;
        let key = fs::read_to_string(&cert.key_path).map_err(io_err("reading the key"))?;
        let pem_path = certs_dir.join(format!("{DOMAIN}.pem"));
        fs::write(&pem_path, format!("{}{key}", cert.chain_pem))
            .map_err(io_err("writing the c2s PEM file"))?;

        let db_path = dir.join("jabberd2.db");
        create_db(&python, &schema, &db_path, &dir, users)?;

        let layout = Layout {
            dir: dir.clone(),
            modules,
            db: db_path,
            pem: pem_path,
            router_port,
            c2s_port,
        };
        for (name, text) in [
            ("router.xml", render_router(&layout)),
            ("router-users.xml", render_router_users()),
            ("sm.xml", render_sm(&layout)),
            ("c2s.xml", render_c2s(&layout)),
        ] {
            fs::write(dir.join(name), text).map_err(io_err(format!("writing {name}")))?;
        }

        let mut this = Self {
            children: Vec::new(),
            dir,
            router_port,
            c2s_port,
            cert,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        for (name, bin) in COMPONENTS.iter().zip(&bins) {
            let child = this.spawn(name, bin)?;
            this.children.push((name, child));
            if *name == "router" {
                // sm and c2s give up after a few attempts if the router is
                // not there yet.
                this.wait_until(deadline, "the router port to accept", |j| {
                    accepts(j.router_port)
                })?;
            }
        }
        this.wait_until(deadline, "sm and c2s to come online", |j| {
            let log = j.read_log("router");
            log.contains(&format!("[{DOMAIN}] online"))
                && log.contains("[c2s] online")
                && accepts(j.c2s_port)
        })?;
        Ok(this)
    }

    fn spawn(&self, name: &str, bin: &Path) -> Result<Child, Jabberd2Error> {
        let console = fs::File::create(self.dir.join(format!("{name}.console")))
            .map_err(io_err(format!("creating {name} console log")))?;
        let console2 = console.try_clone().map_err(io_err("cloning console log"))?;
        Command::new(bin)
            .arg("-c")
            .arg(self.dir.join(format!("{name}.xml")))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2)
            .spawn()
            .map_err(io_err(format!("spawning {}", bin.display())))
    }

    /// Polls `ready` every 20 ms until it holds or `deadline` passes; fails
    /// early when a component exits.
    fn wait_until(
        &mut self,
        deadline: Instant,
        what: &str,
        ready: impl Fn(&Self) -> bool,
    ) -> Result<(), Jabberd2Error> {
        loop {
            if let Some((name, status)) = self.exited() {
                return Err(self.start_error(format!("{name} exited with {status}")));
            }
            if ready(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.start_error(format!(
                    "timed out after {START_TIMEOUT:?} waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<(&'static str, ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|(name, child)| match child.try_wait() {
                Ok(Some(status)) => Some((*name, status)),
                _ => None,
            })
    }

    fn start_error(&mut self, reason: String) -> Jabberd2Error {
        self.stop();
        Jabberd2Error::Start {
            reason,
            dir: self.dir.clone(),
            log_tail: self.log_tail(),
        }
    }

    fn read_log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The STARTTLS c2s address (`127.0.0.1:<port>`).
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.c2s_port))
    }

    /// The virtual host, [`DOMAIN`].
    pub fn domain(&self) -> &str {
        DOMAIN
    }

    /// The certificate c2s presents.
    pub fn cert(&self) -> &LeafCert {
        &self.cert
    }

    /// The server's directory (configs, logs, database, certificate).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process ids of the running components, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// The end of each component's log and console output, for error
    /// messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in COMPONENTS {
            let console =
                fs::read_to_string(self.dir.join(format!("{name}.console"))).unwrap_or_default();
            // `write!` into a String cannot fail.
            let _ = write!(
                out,
                "--- {name}.log ---\n{}\n",
                tail(&self.read_log(name), LOG_TAIL)
            );
            if !console.trim().is_empty() {
                let _ = write!(out, "--- {name} console ---\n{}\n", tail(&console, 1000));
            }
        }
        out
    }

    /// Stops every component now (SIGTERM, then SIGKILL), c2s and sm before
    /// the router; returns whether all exited. Drop does the same.
    pub fn stop(&mut self) -> bool {
        let mut all = true;
        while let Some((_, mut child)) = self.children.pop() {
            all &= terminate_child(&mut child, DEFAULT_GRACE);
        }
        all
    }
}

impl Drop for Jabberd2 {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary_name(component: &str) -> &'static str {
    match component {
        "router" => "jabberd2-router",
        "sm" => "jabberd2-sm",
        _ => "jabberd2-c2s",
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The directory holding the storage and authreg modules
/// (`/usr/lib/<multiarch triplet>/jabberd2` on Debian).
fn module_dir() -> Result<PathBuf, Jabberd2Error> {
    let mut candidates = vec![PathBuf::from("/usr/lib/jabberd2")];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        let mut arch: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("jabberd2"))
            .collect();
        arch.sort();
        candidates.extend(arch);
    }
    candidates
        .into_iter()
        .find(|d| d.join("storage_sqlite.so").is_file() && d.join("authreg_sqlite.so").is_file())
        .ok_or(Jabberd2Error::Missing {
            what: "SQLite modules",
            looked: "/usr/lib/*/jabberd2".to_string(),
        })
}

fn schema_path() -> Result<PathBuf, Jabberd2Error> {
    SCHEMA_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| Jabberd2Error::Missing {
            what: "SQLite schema",
            looked: SCHEMA_PATHS.join(", "),
        })
}

fn create_db(
    python: &Path,
    schema: &Path,
    db: &Path,
    dir: &Path,
    users: &[User],
) -> Result<(), Jabberd2Error> {
    let rows: Vec<[&str; 3]> = users
        .iter()
        .map(|u| [&*u.name, u.host.as_str(), u.password.as_str()])
        .collect();
    let users_path = dir.join("users.json");
    let json = serde_json::to_string(&rows).map_err(|e| Jabberd2Error::Database {
        status: "not run".to_string(),
        output: format!("encoding the accounts: {e}"),
    })?;
    fs::write(&users_path, json).map_err(io_err("writing users.json"))?;
    let out_path = dir.join("create-db.out");
    let out = fs::File::create(&out_path).map_err(io_err("creating create-db.out"))?;
    let out2 = out.try_clone().map_err(io_err("cloning create-db.out"))?;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(CREATE_DB)
        .arg(schema)
        .arg(db)
        .arg(&users_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(out2)
        .spawn()
        .map_err(io_err(format!("spawning {}", python.display())))?;
    let deadline = Instant::now() + DB_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if Instant::now() >= deadline => {
                terminate_child(&mut child, DEFAULT_GRACE);
                break format!("timed out after {DB_TIMEOUT:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break format!("waiting failed: {e}"),
        }
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    Err(Jabberd2Error::Database {
        status,
        output: tail(&output, 2000),
    })
}

/// Where everything a config names lives.
struct Layout {
    dir: PathBuf,
    modules: PathBuf,
    db: PathBuf,
    pem: PathBuf,
    router_port: u16,
    c2s_port: u16,
}

impl Layout {
    /// `<dir>/<name>`, escaped for XML.
    fn file(&self, name: &str) -> String {
        xml_escape(&self.dir.join(name).to_string_lossy())
    }
}

/// `s` escaped for XML character data and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn xml_path(p: &Path) -> String {
    xml_escape(&p.to_string_lossy())
}

fn log_section(l: &Layout, name: &str) -> String {
    format!(
        "  <log type='file'>\n    <ident>jabberd/{name}</ident>\n    <file>{}</file>\n  </log>\n",
        l.file(&format!("{name}.log"))
    )
}

/// How sm and c2s reach the router.
fn router_client_section(l: &Layout) -> String {
    format!(
        "  <router>\n    <ip>127.0.0.1</ip>\n    <port>{}</port>\n    <user>jabberd</user>\n    \
         <pass>{ROUTER_SECRET}</pass>\n    \
         <retry><init>5</init><lost>3</lost><sleep>1</sleep></retry>\n  </router>\n",
        l.router_port
    )
}

fn render_router(l: &Layout) -> String {
    let mut c = String::from("<!-- Generated by custos-e2e for one test run. -->\n<router>\n");
    // `write!` into a String cannot fail.
    let _ = write!(
        c,
        "  <id>router</id>\n  <pidfile>{}</pidfile>\n{}",
        l.file("router.pid"),
        log_section(l, "router")
    );
    let _ = write!(
        c,
        "  <local>\n    <ip>127.0.0.1</ip>\n    <port>{}</port>\n    <users>{}</users>\n    \
         <secret>{ROUTER_SECRET}</secret>\n  </local>\n",
        l.router_port,
        l.file("router-users.xml")
    );
    c.push_str(
        "  <check><interval>60</interval><keepalive>0</keepalive></check>\n  \
         <io><max_fds>1024</max_fds><limits><bytes>0</bytes><connects>0</connects></limits>\
         <access><order>allow,deny</order></access></io>\n  \
         <aliases/>\n  \
         <aci><acl type='all'><user>jabberd</user></acl></aci>\n</router>\n",
    );
    c
}

fn render_router_users() -> String {
    format!(
        "<users>\n  <user><name>jabberd</name><secret>{ROUTER_SECRET}</secret></user>\n</users>\n"
    )
}

/// The session manager: SQLite storage, the usual module chains without the
/// ones that need extra data (vCard, vacation, announcements, templates), and
/// accounts created on first login (c2s has already checked the password
/// against `authreg`).
fn render_sm(l: &Layout) -> String {
    let mut c = String::from("<!-- Generated by custos-e2e for one test run. -->\n<sm>\n");
    let _ = write!(
        c,
        "  <id>sm</id>\n  <pidfile>{}</pidfile>\n{}{}",
        l.file("sm.pid"),
        router_client_section(l),
        log_section(l, "sm")
    );
    let _ = writeln!(c, "  <local><id>{DOMAIN}</id></local>");
    let _ = write!(
        c,
        "  <storage>\n    <path>{}</path>\n    <driver>sqlite</driver>\n    \
         <sqlite><dbname>{}</dbname><busy-timeout>2000</busy-timeout></sqlite>\n  </storage>\n",
        xml_path(&l.modules),
        xml_path(&l.db)
    );
    let _ = writeln!(c, "  <modules>\n    <path>{}</path>", xml_path(&l.modules));
    let chains: &[(&str, &[&str])] = &[
        ("sess-start", &["status"]),
        ("sess-end", &["status", "iq-last"]),
        (
            "in-sess",
            &[
                "validate",
                "status",
                "privacy",
                "roster",
                "iq-ping",
                "iq-private",
                "disco",
                "offline",
                "presence",
                "deliver",
            ],
        ),
        ("out-sess", &[]),
        ("in-router", &["session", "validate", "presence", "privacy"]),
        ("out-router", &["privacy"]),
        (
            "pkt-sm",
            &[
                "iq-last",
                "iq-ping",
                "iq-time",
                "iq-version",
                "disco",
                "status",
                "presence",
            ],
        ),
        (
            "pkt-user",
            &[
                "roster", "presence", "disco", "deliver", "offline", "iq-last",
            ],
        ),
        ("pkt-router", &["session", "disco"]),
        ("user-load", &["active", "roster", "privacy"]),
        ("user-unload", &[]),
        ("user-create", &["active"]),
        (
            "user-delete",
            &[
                "active",
                "offline",
                "privacy",
                "roster",
                "status",
                "iq-last",
                "iq-private",
            ],
        ),
        ("disco-extend", &["iq-version"]),
    ];
    for (id, modules) in chains {
        let _ = write!(c, "    <chain id='{id}'>");
        for m in *modules {
            let _ = write!(c, "<module>{m}</module>");
        }
        c.push_str("</chain>\n");
    }
    c.push_str("  </modules>\n");
    c.push_str(
        "  <discovery><identity><category>server</category><type>im</type>\
         <name>jabberd2</name></identity></discovery>\n  \
         <user><auto-create/></user>\n</sm>\n",
    );
    c
}

/// c2s: STARTTLS required, SASL PLAIN only after TLS, no in-band
/// registration, no legacy port 5223.
fn render_c2s(l: &Layout) -> String {
    let mut c = String::from("<!-- Generated by custos-e2e for one test run. -->\n<c2s>\n");
    let _ = write!(
        c,
        "  <id>c2s</id>\n  <pidfile>{}</pidfile>\n{}{}",
        l.file("c2s.pid"),
        router_client_section(l),
        log_section(l, "c2s")
    );
    let _ = write!(
        c,
        "  <local>\n    <id pemfile='{}' require-starttls='true'>{DOMAIN}</id>\n    \
         <ip>127.0.0.1</ip>\n    <port>{}</port>\n  </local>\n",
        xml_path(&l.pem),
        l.c2s_port
    );
    c.push_str(
        "  <io><max_fds>1024</max_fds>\
         <limits><bytes>0</bytes><stanzas>0</stanzas><connects>0</connects>\
         <stanzasize>65535</stanzasize></limits>\
         <access><order>allow,deny</order></access>\
         <check><interval>0</interval><idle>0</idle><keepalive>0</keepalive></check></io>\n",
    );
    let _ = write!(
        c,
        "  <authreg>\n    <path>{}</path>\n    <module>sqlite</module>\n    \
         <mechanisms><traditional/><sasl/></mechanisms>\n    \
         <ssl-mechanisms><traditional/><sasl><plain/></sasl></ssl-mechanisms>\n    \
         <sqlite><dbname>{}</dbname><busy-timeout>2000</busy-timeout>\
         <password_type><plaintext/></password_type></sqlite>\n  </authreg>\n</c2s>\n",
        xml_path(&l.modules),
        xml_path(&l.db)
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            dir: "/t/j'd".into(),
            modules: "/usr/lib/x/jabberd2".into(),
            db: "/t/j'd/jabberd2.db".into(),
            pem: "/t/j'd/certs/example.test.pem".into(),
            router_port: 15347,
            c2s_port: 15222,
        }
    }

    #[test]
    fn configs_bind_loopback_ports_and_escape_paths() {
        let l = layout();
        let router = render_router(&l);
        assert!(router.contains("<ip>127.0.0.1</ip>\n    <port>15347</port>"));
        assert!(router.contains("<users>/t/j&apos;d/router-users.xml</users>"));
        let c2s = render_c2s(&l);
        assert!(c2s.contains("<port>15222</port>"));
        assert!(c2s.contains("<port>15347</port>"));
        assert!(c2s.contains("pemfile='/t/j&apos;d/certs/example.test.pem'"));
        assert!(c2s.contains("require-starttls"));
        assert!(!c2s.contains("0.0.0.0"));
        assert!(!c2s.contains("register-enable"));
        let sm = render_sm(&l);
        assert!(sm.contains("<local><id>example.test</id></local>"));
        assert!(sm.contains("<dbname>/t/j&apos;d/jabberd2.db</dbname>"));
        assert!(sm.contains("<auto-create/>"));
        assert!(render_router_users().contains(ROUTER_SECRET));
    }

    #[test]
    fn foreign_accounts_are_refused_before_anything_starts(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = crate::TestDir::new("jabberd2-foreign")?;
        let ca = TestCa::generate(dir.path())?;
        let users = [User::new("dave", "example.org", "pw")];
        match Jabberd2::start(dir.path(), &ca, &users) {
            Err(Jabberd2Error::ForeignUser { jid }) => assert_eq!(jid, "dave@example.org"),
            other => return Err(format!("expected ForeignUser, got {other:?}").into()),
        }
        Ok(())
    }
}
