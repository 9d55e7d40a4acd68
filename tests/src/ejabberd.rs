//! A private ejabberd per scenario: a third XMPP server implementation behind the
//! proxy, with XEP-0198 stream management and resumption.
//!
//! [`Ejabberd::start`] writes `ejabberd.yml` below the given directory (one c2s
//! listener on a loopback port picked at run time, STARTTLS required, no HTTP,
//! s2s or other listeners, the Mnesia database and the logs in the same
//! directory), starts the Erlang node as a child process, waits until c2s
//! accepts, and registers the accounts through `ejabberd_ctl`, the module
//! `ejabberdctl` runs.
//!
//! The `example.test` certificate comes from a CA of the server's own, whose
//! certificate is appended to the scenario's [`TestCa`] file so that clients
//! and Custos trust it: [`TestCa`] certificates are valid until the year 4096,
//! further ahead than ejabberd's certificate store can arm its expiry timers
//! (see `issue_cert`).
//!
//! The node runs the `erl` command line `ejabberdctl foreground` builds rather
//! than the script itself: as root the script switches to the `ejabberd` user
//! (who cannot read a private temp dir), as any other user it refuses to run,
//! the packaged `/etc/default/ejabberd` it sources overrides `--config`, and it
//! does not exec the VM, so its pid would not be the server's. `erl` execs the
//! VM, so the child's pid is `beam.smp`'s.
//!
//! The Erlang distribution, which `ejabberd_ctl` needs, listens on a second
//! loopback port given with `-erl_epmd_port`, so no epmd is started or needed
//! (should one run on `ERL_EPMD_PORT`, default 4369, the node registers its
//! unique name `ejabberd-<c2s port>@localhost` there). The cookie is in a file
//! in the server's directory, not on any command line. Dropping the handle
//! stops the node by pid.
//!
//! ```no_run
//! use custos_e2e::ejabberd::Ejabberd;
//! use custos_e2e::{TestCa, TestDir, User};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = TestDir::new("demo")?;
//! let ca = TestCa::generate(dir.path())?;
//! let users = [User::new("alice", "example.test", "alice-pw")];
//! let server = Ejabberd::start(dir.path(), &ca, &users)?;
//! println!("STARTTLS on {}", server.c2s_addr());
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::certs::{CertError, LeafCert, TestCa};
use crate::net::free_port;
use crate::process::{tail, terminate_child};
use crate::prosody::User;
use crate::tools::{find_on_path, ToolError};

/// The virtual host ejabberd serves.
pub const DOMAIN: &str = "example.test";

/// Bound on the node starting and c2s accepting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on registering the accounts (each `ejabberd_ctl` call boots a VM).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Between SIGTERM and SIGKILL: ejabberd stops its listeners, sessions and
/// Mnesia in about a second.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How much of the log an error quotes.
const LOG_TAIL: usize = 4000;

/// The `erl` `ejabberdctl` runs.
const PACKAGED_ERL: &str = "/usr/bin/erl";

/// Where Debian and others put the ejabberd application (`ejabberd-<version>/ebin`).
const LIB_DIRS: &[&str] = &[
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/lib/erlang/lib",
];

/// Starting ejabberd failed.
#[derive(Debug, thiserror::Error)]
pub enum EjabberdError {
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
    /// The ejabberd application is not installed.
    #[error("ejabberd not found (looked for ejabberd-*/ebin/ejabberd.app in {looked}); run scripts/setup.sh")]
    Missing {
        /// Where.
        looked: String,
    },
    /// An account is for a host this server does not serve.
    #[error("account {jid}: ejabberd here serves only {DOMAIN}")]
    ForeignUser {
        /// The account.
        jid: String,
    },
    /// `ejabberd_ctl register` failed.
    #[error("registering {jid} failed ({status}): {output}\n--- ejabberd log ---\n{log_tail}")]
    Register {
        /// The account.
        jid: String,
        /// The exit status, or that it timed out.
        status: String,
        /// Its output.
        output: String,
        /// The end of the server's log.
        log_tail: String,
    },
    /// The node exited or c2s did not accept in time.
    #[error("ejabberd did not start: {reason}\n--- logs ({dir}) ---\n{log_tail}")]
    Start {
        /// Exited (with status) or timed out.
        reason: String,
        /// The server's directory (config, logs, database).
        dir: PathBuf,
        /// The end of the log and the console output.
        log_tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EjabberdError {
    let what = what.into();
    move |source| EjabberdError::Io { what, source }
}

/// A running ejabberd node. Stopped by pid on drop.
#[derive(Debug)]
pub struct Ejabberd {
    /// `beam.smp`; `None` once stopped.
    child: Option<Child>,
    erl: PathBuf,
    layout: Layout,
    cert: LeafCert,
}

impl Ejabberd {
    /// Starts ejabberd for [`DOMAIN`] with its files in
    /// `<parent>/ejabberd-<c2s port>/` and registers `users`.
    ///
    /// Blocks (bounded) until c2s accepts and every account is registered. On
    /// failure the error carries the tail of the log.
    pub fn start(parent: &Path, ca: &TestCa, users: &[User]) -> Result<Self, EjabberdError> {
        if let Some(user) = users.iter().find(|u| u.host != DOMAIN) {
            return Err(EjabberdError::ForeignUser { jid: user.jid() });
        }
        // The Erlang ejabberd was built for, as `ejabberdctl` runs it; another
        // one may come first on PATH.
        let erl = match PathBuf::from(PACKAGED_ERL) {
            p if p.is_file() => p,
            _ => find_on_path("erl")?,
        };
        let erl_libs = erl_libs()?;

        let c2s_port = free_port().map_err(io_err("picking c2s port"))?;
        let dist_port = free_port().map_err(io_err("picking distribution port"))?;
        let dir = parent.join(format!("ejabberd-{c2s_port}"));
        let layout = Layout {
            certs: dir.join("certs"),
            spool: dir.join("spool"),
            logs: dir.join("logs"),
            dir,
            erl_libs,
            c2s_port,
            dist_port,
        };
        for d in [&layout.dir, &layout.certs, &layout.spool, &layout.logs] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }

        // ejabberd reads the chain and the key from one PEM file.
        let cert = issue_cert(&layout, ca)?;
        let key = fs::read_to_string(&cert.key_path).map_err(io_err("reading the key"))?;
        fs::write(layout.pem(), format!("{}{key}", cert.chain_pem))
            .map_err(io_err("writing the ejabberd PEM file"))?;

        fs::write(layout.config(), render_config(&layout))
            .map_err(io_err("writing ejabberd.yml"))?;
        // Resolves the node's host without DNS.
        fs::write(
            layout.dir.join("inetrc"),
            "{lookup, [file, native]}.\n{host, {127,0,0,1}, [\"localhost\"]}.\n",
        )
        .map_err(io_err("writing inetrc"))?;
        write_cookie(&layout.dir.join(".erlang.cookie"))?;

        let mut this = Self {
            child: None,
            erl,
            layout,
            cert,
        };
        this.child = Some(this.spawn_node()?);
        this.wait_ready()?;
        this.register_all(users)?;
        Ok(this)
    }

    /// `erl` with the environment `ejabberdctl` exports, `HOME` (where the cookie
    /// is) set to the server's directory.
    fn erl_command(&self) -> Command {
        let l = &self.layout;
        let mut cmd = Command::new(&self.erl);
        cmd.env("HOME", &l.dir)
            .env("ERL_LIBS", &l.erl_libs)
            .env("ERL_INETRC", l.dir.join("inetrc"))
            .env("ERL_CRASH_DUMP", l.logs.join("erl_crash.dump"))
            .env("EJABBERD_CONFIG_PATH", l.config())
            .env("EJABBERD_LOG_PATH", l.log())
            .env("ERL_MAX_PORTS", "32000")
            .env("ERL_MAX_ETS_TABLES", "1400")
            .env_remove("EJABBERD_PID_PATH")
            .env_remove("ERL_FLAGS")
            .env_remove("ERL_AFLAGS")
            .env_remove("ERL_ZFLAGS")
            .current_dir(&l.dir)
            .stdin(Stdio::null());
        cmd
    }

    /// Distribution on loopback only, on the port given, without epmd.
    fn dist_args(&self) -> [String; 7] {
        [
            "-start_epmd".into(),
            "false".into(),
            "-erl_epmd_port".into(),
            self.layout.dist_port.to_string(),
            "-kernel".into(),
            "inet_dist_use_interface".into(),
            "{127,0,0,1}".into(),
        ]
    }

    fn spawn_node(&self) -> Result<Child, EjabberdError> {
        let console =
            fs::File::create(self.layout.console()).map_err(io_err("creating the console log"))?;
        let console2 = console.try_clone().map_err(io_err("cloning console log"))?;
        self.erl_command()
            .arg("-sname")
            .arg(self.node())
            .args(["-noinput", "-env", "ERL_CRASH_DUMP_BYTES", "0"])
            .args(self.dist_args())
            .args(["-mnesia", "dir"])
            .arg(erlang_string(&self.layout.spool.to_string_lossy()))
            .args(["-s", "ejabberd"])
            .stdout(console)
            .stderr(console2)
            .spawn()
            .map_err(io_err(format!("spawning {}", self.erl.display())))
    }

    /// Polls every 20 ms until c2s accepts; fails early when the node exits.
    fn wait_ready(&mut self) -> Result<(), EjabberdError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(self.start_error(format!("the node exited with {status}")));
            }
            if accepts(self.layout.c2s_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.start_error(format!(
                    "c2s port {} not accepting after {START_TIMEOUT:?}",
                    self.layout.c2s_port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_error(&mut self, reason: String) -> EjabberdError {
        self.stop();
        EjabberdError::Start {
            reason,
            dir: self.layout.dir.clone(),
            log_tail: self.log_tail(),
        }
    }

    /// Registers every account, each through its own hidden `ejabberd_ctl` node
    /// (about half a second of VM start each), all at once. Mnesia may still be creating
    /// the `passwd` or `reg_users_counter` table right after c2s accepts (under load):
    /// those accounts are tried again, at most five times in all.
    fn register_all(&mut self, users: &[User]) -> Result<(), EjabberdError> {
        let mut pending: Vec<&User> = users.iter().collect();
        for attempt in 1..=5 {
            let failures = match self.register_once(&pending) {
                Ok(failures) => failures,
                Err(e) => {
                    self.stop();
                    return Err(e);
                }
            };
            // Tables and caches a node is still creating when its port first accepts:
            // a missing table (`no_exists`), the auth cache not started yet
            // (`ets_cache:get_counter` on an `undefined` counter), or a registration
            // transaction on a table not yet created, which `ejabberdctl` reports only
            // as `Database failure` (its log says `no_exists,reg_users_counter`).
            let transient = failures.iter().all(|(_, _, _, output)| {
                output.contains("no_exists")
                    || output.contains("ets_cache:")
                    || output.contains("Database failure")
            });
            match failures.first() {
                None => return Ok(()),
                Some(_) if transient && attempt < 5 => {
                    pending = failures.iter().map(|(u, _, _, _)| *u).collect();
                    std::thread::sleep(Duration::from_secs(1));
                }
                Some((_, jid, status, output)) => {
                    let err = EjabberdError::Register {
                        jid: jid.clone(),
                        status: status.clone(),
                        output: output.clone(),
                        log_tail: self.log_tail(),
                    };
                    self.stop();
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// One round of registrations: the accounts that failed, with status and output.
    fn register_once<'u>(
        &self,
        users: &[&'u User],
    ) -> Result<Vec<(&'u User, String, String, String)>, EjabberdError> {
        let mut running = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let out_path = self.layout.dir.join(format!("register-{i}.out"));
            match self.spawn_register(i, user, &out_path) {
                Ok(child) => running.push((*user, child, out_path)),
                Err(e) => {
                    for (_, mut child, _) in running {
                        terminate_child(&mut child, Duration::from_secs(1));
                    }
                    return Err(e);
                }
            }
        }
        let deadline = Instant::now() + CTL_TIMEOUT;
        let mut failures = Vec::new();
        for (user, mut child, out_path) in running {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break None,
                    Ok(Some(status)) => break Some(status.to_string()),
                    Ok(None) if Instant::now() >= deadline => {
                        terminate_child(&mut child, Duration::from_secs(1));
                        break Some(format!("timed out after {CTL_TIMEOUT:?}"));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => break Some(format!("waiting failed: {e}")),
                }
            };
            if let Some(status) = status {
                let output = fs::read_to_string(&out_path).unwrap_or_default();
                failures.push((user, user.jid(), status, tail(&output, 2000)));
            }
        }
        Ok(failures)
    }

    fn spawn_register(
        &self,
        i: usize,
        user: &User,
        out_path: &Path,
    ) -> Result<Child, EjabberdError> {
        let out = fs::File::create(out_path).map_err(io_err("creating register output"))?;
        let out2 = out.try_clone().map_err(io_err("cloning register output"))?;
        // A hidden node that does not listen: it connects to the server's
        // distribution port, runs the command there and halts with its status.
        self.erl_command()
            .arg("-sname")
            .arg(format!("ctl-{}-{i}@localhost", self.layout.c2s_port))
            .args(["-hidden", "-noinput", "-dist_listen", "false"])
            .args(self.dist_args())
            .args(["-s", "ejabberd_ctl", "-extra"])
            .arg(self.node())
            .args(["register", &user.name, &user.host, &user.password])
            .stdout(out)
            .stderr(out2)
            .spawn()
            .map_err(io_err(format!(
                "spawning {} for ejabberd_ctl",
                self.erl.display()
            )))
    }

    /// The Erlang node name, `ejabberd-<c2s port>@localhost`.
    pub fn node(&self) -> String {
        format!("ejabberd-{}@localhost", self.layout.c2s_port)
    }

    /// The STARTTLS c2s address (`127.0.0.1:<port>`).
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.layout.c2s_port))
    }

    /// The Erlang distribution address (loopback).
    pub fn dist_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.layout.dist_port))
    }

    /// The virtual host, [`DOMAIN`].
    pub fn domain(&self) -> &str {
        DOMAIN
    }

    /// The certificate c2s presents.
    pub fn cert(&self) -> &LeafCert {
        &self.cert
    }

    /// The server's directory (config, logs, database, certificate).
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The process id of `beam.smp`, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The end of the log, the error log and the console output, for error
    /// messages.
    pub fn log_tail(&self) -> String {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        let mut out = format!(
            "--- ejabberd.log ---\n{}\n",
            tail(&read(self.layout.log()), LOG_TAIL)
        );
        for (name, path) in [
            ("error.log", self.layout.logs.join("error.log")),
            ("console", self.layout.console()),
        ] {
            let text = read(path);
            if !text.trim().is_empty() {
                // `write!` into a String cannot fail.
                let _ = write!(out, "--- {name} ---\n{}\n", tail(&text, 1500));
            }
        }
        out
    }

    /// Stops the node now (SIGTERM, then SIGKILL); returns whether it exited.
    /// Drop does the same.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => terminate_child(&mut child, STOP_GRACE),
            None => true,
        }
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The directory to put in `ERL_LIBS`: the one holding
/// `ejabberd-<version>/ebin/ejabberd.app` (`/usr/lib/<multiarch triplet>` on
/// Debian).
fn erl_libs() -> Result<PathBuf, EjabberdError> {
    let mut candidates = Vec::new();
    for base in LIB_DIRS {
        let base = PathBuf::from(base);
        candidates.push(base.clone());
        if let Ok(entries) = fs::read_dir(&base) {
            let mut subdirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            subdirs.sort();
            candidates.extend(subdirs);
        }
    }
    candidates
        .into_iter()
        .find(|dir| holds_ejabberd(dir))
        .ok_or_else(|| EjabberdError::Missing {
            looked: LIB_DIRS
                .iter()
                .map(|d| format!("{d}, {d}/*"))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn holds_ejabberd(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name().to_string_lossy().starts_with("ejabberd-")
                && e.path().join("ebin").join("ejabberd.app").is_file()
        })
    })
}

/// How long ejabberd's certificates are valid, from a day before now.
const CERT_VALIDITY: Duration = Duration::from_secs(366 * 24 * 3600);

/// Issues ejabberd's `example.test` certificate (SANs as [`TestCa::leaf`]:
/// `example.test`, `localhost`, `127.0.0.1`) from a CA of its own, writes the
/// chain, the key and the CA below `certs/`, and appends the CA's certificate to
/// the scenario's CA file, which clients and Custos's upstream leg trust.
///
/// Not signed by `ca` because [`TestCa`] certificates are valid until the year
/// 4096 (rcgen's default), and ejabberd's certificate store (pkix 1.0.9) arms
/// an `erlang:start_timer` for each certificate's expiry that the VM cannot hold
/// that far ahead: the call fails with badarg, `ejabberd_pkix` crashes at start,
/// and every STARTTLS then fails with `TLS failed: no_certfile`. These
/// certificates are valid for a year.
fn issue_cert(l: &Layout, ca: &TestCa) -> Result<LeafCert, EjabberdError> {
    let subject = format!("Custos Test CA for ejabberd-{}", l.c2s_port);
    let gen = |subject: &str| {
        let subject = subject.to_string();
        move |source| CertError::Generate { subject, source }
    };
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
    let not_before = now - Duration::from_secs(24 * 3600);
    let not_after = now + CERT_VALIDITY;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen(&subject))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, subject.clone());
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(gen(&subject))?;
    let ca_pem = ca_params.self_signed(&ca_key).map_err(gen(&subject))?.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let names = [DOMAIN, "localhost", "127.0.0.1"].map(str::to_string);
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen(DOMAIN))?;
    params.distinguished_name.push(DnType::CommonName, DOMAIN);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(gen(DOMAIN))?;
    let leaf = params.signed_by(&key, &issuer).map_err(gen(DOMAIN))?;

    let chain_pem = format!("{}{ca_pem}", leaf.pem());
    let chain_path = l.certs.join(format!("{DOMAIN}.crt"));
    let key_path = l.certs.join(format!("{DOMAIN}.key"));
    let key_pem = key.serialize_pem();
    for (path, text) in [
        (&chain_path, &chain_pem),
        (&key_path, &key_pem),
        (&l.ca(), &ca_pem),
    ] {
        fs::write(path, text).map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
    }
    fs::OpenOptions::new()
        .append(true)
        .open(ca.cert_path())
        .and_then(|mut f| f.write_all(format!("\n{ca_pem}").as_bytes()))
        .map_err(|source| CertError::Write {
            path: ca.cert_path().to_path_buf(),
            source,
        })?;
    Ok(LeafCert {
        domain: DOMAIN.to_string(),
        chain_path,
        key_path,
        chain_pem,
    })
}

/// Writes a random cookie readable by the owner only, as Erlang requires.
fn write_cookie(path: &Path) -> Result<(), EjabberdError> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("reading /dev/urandom"))?;
    let cookie: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(io_err("creating the Erlang cookie"))?;
    file.write_all(cookie.as_bytes())
        .map_err(io_err("writing the Erlang cookie"))
}

/// Where everything lives.
#[derive(Debug)]
struct Layout {
    dir: PathBuf,
    certs: PathBuf,
    spool: PathBuf,
    logs: PathBuf,
    erl_libs: PathBuf,
    c2s_port: u16,
    dist_port: u16,
}

impl Layout {
    fn config(&self) -> PathBuf {
        self.dir.join("ejabberd.yml")
    }

    fn pem(&self) -> PathBuf {
        self.certs.join(format!("{DOMAIN}.pem"))
    }

    /// The CA that signed ejabberd's certificate.
    fn ca(&self) -> PathBuf {
        self.certs.join("ca.crt")
    }

    fn log(&self) -> PathBuf {
        self.logs.join("ejabberd.log")
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// `s` as an Erlang string literal (for `-mnesia dir`).
fn erlang_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `s` as a double-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn yaml_path(p: &Path) -> String {
    yaml_str(&p.to_string_lossy())
}

/// One c2s listener on loopback with STARTTLS required; internal accounts with
/// plain-text storage (the harness knows the passwords anyway); SASL without
/// the channel-binding mechanisms, which cannot survive a TLS-terminating
/// proxy (ejabberd 23.01 offers all three -PLUS variants otherwise), and
/// without DIGEST-MD5 and X-OAUTH2, as the packaged config; no s2s, no ACME, no
/// in-band registration; stream management with resumption; group chat; what a web
/// client needs at start (block list, private storage, PEP).
fn render_config(l: &Layout) -> String {
    let mut c = String::from("# Generated by custos-e2e for one test run.\n");
    // `writeln!` into a String cannot fail.
    let _ = writeln!(c, "hosts:\n  - {}", yaml_str(DOMAIN));
    let _ = writeln!(c, "loglevel: info");
    let _ = writeln!(c, "certfiles:\n  - {}", yaml_path(&l.pem()));
    let _ = writeln!(c, "ca_file: {}", yaml_path(&l.ca()));
    let _ = writeln!(
        c,
        "listen:\n  -\n    port: {}\n    ip: \"127.0.0.1\"\n    module: ejabberd_c2s\n    \
         starttls_required: true\n    max_stanza_size: 262144",
        l.c2s_port
    );
    let _ = writeln!(c, "auth_method: internal");
    let _ = writeln!(c, "auth_password_format: plain");
    let _ = writeln!(
        c,
        "disable_sasl_mechanisms:\n  - \"SCRAM-SHA-1-PLUS\"\n  - \"SCRAM-SHA-256-PLUS\"\n  \
         - \"SCRAM-SHA-512-PLUS\"\n  - \"DIGEST-MD5\"\n  - \"X-OAUTH2\""
    );
    // No federation: nothing listens for it and no outgoing s2s is allowed.
    let _ = writeln!(c, "s2s_access: none");
    let _ = writeln!(c, "acme:\n  auto: false");
    c.push_str(
        "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  \
         mod_stream_mgmt:\n    resume_timeout: 300\n",
    );
    // What a full web client such as Converse.js waits for at start: a block list
    // (XEP-0191, on top of privacy lists), private XML storage and PEP (bookmarks).
    c.push_str(
        "  mod_privacy: {}\n  mod_blocking: {}\n  mod_private: {}\n  mod_caps: {}\n  \
         mod_pubsub:\n    plugins:\n      - \"flat\"\n      - \"pep\"\n",
    );
    // Group chat (XEP-0045) at conference.example.test; rooms are created on first
    // entry and their creator owns (and moderates) them.
    let _ = writeln!(
        c,
        "  mod_muc:\n    hosts:\n      - {}\n    access_create: all\n    \
         default_room_options:\n      persistent: false",
        yaml_str(&format!("conference.{DOMAIN}"))
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let dir = PathBuf::from("/t/e\"j");
        Layout {
            certs: dir.join("certs"),
            spool: dir.join("spool"),
            logs: dir.join("logs"),
            dir,
            erl_libs: "/usr/lib/x86_64-linux-gnu".into(),
            c2s_port: 15222,
            dist_port: 15223,
        }
    }

    #[test]
    fn config_binds_one_loopback_listener_and_escapes_paths() {
        let text = render_config(&layout());
        assert!(text.contains("port: 15222\n    ip: \"127.0.0.1\""));
        assert_eq!(text.matches("port:").count(), 1, "{text}");
        assert!(text.contains("starttls_required: true"));
        assert!(text.contains("- \"/t/e\\\"j/certs/example.test.pem\""));
        for mech in [
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-512-PLUS",
        ] {
            assert!(text.contains(&format!("- \"{mech}\"")), "{mech}");
        }
        assert!(text.contains("mod_stream_mgmt:"));
        assert!(!text.contains("0.0.0.0") && !text.contains("\"::\""));
        assert!(!text.contains("mod_register"));
        assert_eq!(erlang_string("/t/e\"j\\s"), "\"/t/e\\\"j\\\\s\"");
    }

    #[test]
    fn foreign_accounts_are_refused_before_anything_starts(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = crate::TestDir::new("ejabberd-foreign")?;
        let ca = TestCa::generate(dir.path())?;
        let users = [User::new("dave", "example.org", "pw")];
        match Ejabberd::start(dir.path(), &ca, &users) {
            Err(EjabberdError::ForeignUser { jid }) => assert_eq!(jid, "dave@example.org"),
            other => return Err(format!("expected ForeignUser, got {other:?}").into()),
        }
        Ok(())
    }
}
