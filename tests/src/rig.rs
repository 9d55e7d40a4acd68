//! One rig for every scenario: a real XMPP server (Prosody by default, or ejabberd or
//! jabberd2) with accounts, and `custos serve` in front of it with a STARTTLS listener
//! (index 0) and a Direct TLS listener (index 1), optionally with an archive (keys created
//! by `custos keys init`), a rules file, the review web UI and a WebSocket listener. The
//! configuration is built as TOML values ([`crate::config`]); [`Rig::another_node`] starts a
//! second Custos node from the same values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::config::{merge, path, render, section, strings, table, Table, Value};
use crate::custos::{run_custos, Custos, ListenerKind};
use crate::ejabberd::Ejabberd;
use crate::jabberd2::Jabberd2;
use crate::slix::{ConnectOptions, SlixClient, Tls};
use crate::{Prosody, ProsodyOptions, TestCa, TestDir, User};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accounts every rig has, on `example.test` ("behind Custos").
pub const USERS: &[(&str, &str)] = &[
    ("alice", "alice-secret"),
    ("bob", "bob-secret"),
    ("carol", "carol-secret"),
];

/// Which XMPP server a rig starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerKind {
    #[default]
    Prosody,
    /// Debian's ejabberd (23.01), with group chat and stream management.
    Ejabberd,
    /// Debian's jabberd2 (2.7).
    Jabberd2,
}

/// What to start besides the server and the proxy.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// The server behind Custos.
    pub server: ServerKind,
    /// Accounts on `example.test` besides [`USERS`].
    pub users: Vec<(&'static str, &'static str)>,
    /// Prosody offers HTTP file upload (XEP-0363) at `upload.example.test`, and Custos
    /// archives the files shared from it (`[files] sources`; more `[files]` keys may come
    /// in `extra`).
    pub file_share: bool,
    /// Add `[archive]` with fresh keys.
    pub archive: bool,
    /// Rules file content; adds `[policy]`.
    pub rules: Option<String>,
    /// More configuration merged in (e.g. a `[limits]` section).
    pub extra: Table,
    /// A second Prosody host for external users (`dave@example.org`).
    pub external_domain: bool,
    /// Run `custos serve` under this uid/gid (via `setpriv`) instead of as the caller.
    pub run_as: Option<(u32, u32)>,
    /// Extra keys for the `[archive]` section.
    pub archive_extra: Table,
    /// Serve the review web UI (needs `archive`); its address is [`Rig::web`].
    pub web: bool,
    /// Serve it over HTTPS with the test CA's `example.test` certificate.
    pub web_tls: bool,
    /// Prosody keeps a message archive (XEP-0313).
    pub mam: bool,
    /// Prosody serves group chat at `conference.example.test`.
    pub muc: bool,
    /// Prosody loads what a full web client waits for at start (Converse.js); ejabberd
    /// always does.
    pub web_client: bool,
    /// Prosody offers SASL2 with Bind2 (prosody-modules).
    pub sasl2: bool,
    /// Custos reaches Prosody over plain TCP on loopback (`upstream.tls = "none"`); the
    /// deployment with both on one host.
    pub upstream_plain: bool,
    /// A WebSocket listener (RFC 7395) besides the two XMPP ones; its address is
    /// [`Rig::websocket`].
    pub websocket: Option<WsListener>,
}

/// A `[[listener]] protocol = "websocket"`.
#[derive(Debug, Clone, Default)]
pub struct WsListener {
    /// wss:// with the test CA's `example.test` certificate; otherwise plain ws:// on
    /// loopback, as behind a TLS-terminating reverse proxy.
    pub tls: bool,
    /// `origins`; empty leaves the key out.
    pub origins: Vec<String>,
}

impl RigOptions {
    pub fn with_archive_extra(mut self, keys: Table) -> Self {
        merge(&mut self.archive_extra, keys);
        self
    }
}

pub struct Rig {
    pub custos: Custos,
    pub server: Server,
    pub ca: TestCa,
    pub custos_dir: PathBuf,
    pub rules_path: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    /// The review web UI's address, when started.
    pub web: Option<SocketAddr>,
    /// The WebSocket listener's address, when configured.
    pub websocket: Option<SocketAddr>,
    /// Custos's configuration besides its XMPP listeners.
    pub config: Table,
    /// Passwords of every account on `example.test`.
    accounts: Vec<(&'static str, &'static str)>,
    // Last: files outlive the processes that use them.
    pub dir: TestDir,
}

/// The server a rig runs behind Custos.
pub enum Server {
    Prosody(Prosody),
    Ejabberd(Ejabberd),
    Jabberd2(Jabberd2),
}

impl Server {
    /// Which implementation, as logs and messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            Server::Prosody(_) => "prosody",
            Server::Ejabberd(_) => "ejabberd",
            Server::Jabberd2(_) => "jabberd2",
        }
    }

    /// The client (STARTTLS) port.
    pub fn c2s_addr(&self) -> SocketAddr {
        match self {
            Server::Prosody(s) => s.c2s_addr(),
            Server::Ejabberd(s) => s.c2s_addr(),
            Server::Jabberd2(s) => s.c2s_addr(),
        }
    }

    /// The Direct TLS port, where the server has one.
    pub fn direct_tls_addr(&self) -> Option<SocketAddr> {
        match self {
            Server::Prosody(s) => s.direct_tls_addr(),
            _ => None,
        }
    }

    /// The end of the server's logs.
    pub fn log_tail(&self) -> String {
        match self {
            Server::Prosody(s) => s.log_tail(),
            Server::Ejabberd(s) => s.log_tail(),
            Server::Jabberd2(s) => s.log_tail(),
        }
    }

    /// Stops the server; whether it was running.
    pub fn stop(&mut self) -> bool {
        match self {
            Server::Prosody(s) => s.stop(),
            Server::Ejabberd(s) => s.stop(),
            Server::Jabberd2(s) => s.stop(),
        }
    }

    /// Prosody's own handle, when the rig runs Prosody.
    pub fn prosody(&self) -> Option<&Prosody> {
        match self {
            Server::Prosody(s) => Some(s),
            _ => None,
        }
    }
}

/// The configuration besides the listeners Custos is started with (keys are created
/// when `opts.archive`).
fn write_config(
    custos_dir: &std::path::Path,
    ca: &TestCa,
    upstream: SocketAddr,
    opts: &RigOptions,
) -> Result<(Table, Option<PathBuf>, Option<PathBuf>), BoxError> {
    let mut upstream_keys = table([
        ("address", Value::String(upstream.to_string())),
        ("server_name", Value::String("example.test".into())),
    ]);
    if opts.upstream_plain {
        upstream_keys.insert("tls".into(), "none".into());
    } else {
        upstream_keys.insert("tls".into(), "starttls".into());
        upstream_keys.insert("ca".into(), path(ca.cert_path()));
    }
    let mut config = table([("upstream", Value::Table(upstream_keys))]);
    let mut archive_dir = None;
    if opts.archive {
        let secrets = custos_dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        let dir = custos_dir.join("archive");
        let mut archive = table([
            ("dir", path(&dir)),
            ("master_key", path(&secrets.join("master.key"))),
            ("signing_key", path(&secrets.join("signing.key"))),
        ]);
        merge(&mut archive, opts.archive_extra.clone());
        config.insert("archive".into(), Value::Table(archive));
        archive_dir = Some(dir);
    }
    let mut rules_path = None;
    if let Some(rules) = &opts.rules {
        let p = custos_dir.join("rules.toml");
        std::fs::write(&p, rules)?;
        merge(&mut config, section("policy", [("rules", path(&p))]));
        rules_path = Some(p);
    }
    merge(&mut config, opts.extra.clone());
    Ok((config, rules_path, archive_dir))
}

/// A `[web]` section that serves the review UI on a free loopback port, with its users
/// file in `custos_dir` and no random sample: the section and the UI's address.
pub fn web_section(custos_dir: &std::path::Path) -> Result<(Table, SocketAddr), BoxError> {
    let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
    let users = custos_dir.join("users.json");
    Ok((
        table([
            ("bind", Value::String(addr.to_string())),
            ("users", path(&users)),
            ("sample_rate", Value::Float(0.0)),
        ]),
        addr,
    ))
}

/// The Custos half of a [`Rig`]: `custos serve` in front of any `upstream` server that
/// offers STARTTLS with the test CA's `example.test` certificate.
struct Front {
    pub custos: Custos,
    pub custos_dir: PathBuf,
    pub rules_path: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    /// The review web UI's address, when started.
    pub web: Option<SocketAddr>,
    /// The WebSocket listener's address, when configured.
    pub websocket: Option<SocketAddr>,
    /// The configuration besides the XMPP listeners Custos was started with.
    pub config: Table,
}

impl Front {
    /// Writes the config into `custos_dir` (created if needed) with `upstream` as the
    /// server and the sections `opts` asks for (the Prosody options are ignored), and
    /// starts Custos with a STARTTLS listener (index 0) and a Direct TLS one (index 1).
    fn start(
        custos_dir: &Path,
        ca: &TestCa,
        upstream: SocketAddr,
        opts: &RigOptions,
    ) -> Result<Front, BoxError> {
        std::fs::create_dir_all(custos_dir)?;
        let (mut config, rules_path, archive_dir) = write_config(custos_dir, ca, upstream, opts)?;
        let leaf = ca.leaf(custos_dir, "example.test")?;
        let web = if opts.web {
            let (mut web, addr) = web_section(custos_dir)?;
            if opts.web_tls {
                web.insert("cert".into(), path(&leaf.chain_path));
                web.insert("key".into(), path(&leaf.key_path));
            }
            config.insert("web".into(), Value::Table(web));
            Some(addr)
        } else {
            None
        };
        if opts.archive {
            // `keys init` needs only [archive]: give it just that section.
            let archive_only = table(config.get("archive").cloned().map(|a| ("archive", a)));
            let keys_config = custos_dir.join("keys.toml");
            std::fs::write(&keys_config, render(&archive_only))?;
            let out = run_custos(&["keys", "init"], Some(&keys_config))?;
            if !out.status.success() {
                return Err(format!(
                    "custos keys init failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
        if let Some((uid, gid)) = opts.run_as {
            chown_tree(custos_dir, uid, gid)?;
        }
        let websocket = match &opts.websocket {
            Some(ws) => {
                let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
                let mut listener = table([
                    ("protocol", Value::String("websocket".into())),
                    ("bind", Value::String(addr.to_string())),
                ]);
                if ws.tls {
                    listener.insert("tls".into(), "direct".into());
                    listener.insert("cert".into(), path(&leaf.chain_path));
                    listener.insert("key".into(), path(&leaf.key_path));
                } else {
                    listener.insert("tls".into(), "none".into());
                }
                if !ws.origins.is_empty() {
                    listener.insert("origins".into(), strings(&ws.origins));
                }
                merge(
                    &mut config,
                    table([("listener", Value::Array(vec![Value::Table(listener)]))]),
                );
                Some(addr)
            }
            None => None,
        };
        let custos = Custos::start_as(
            custos_dir,
            &[ListenerKind::StartTls, ListenerKind::Direct],
            &leaf.chain_path,
            &leaf.key_path,
            &config,
            opts.run_as,
        )?;
        if let Some(addr) = websocket {
            if !crate::wait_for_port(addr.port(), std::time::Duration::from_secs(15)) {
                return Err(format!(
                    "the WebSocket listener did not listen on {addr}\n{}",
                    custos.log_tail()
                )
                .into());
            }
        }
        if let Some(addr) = web {
            if !crate::wait_for_port(addr.port(), std::time::Duration::from_secs(15)) {
                return Err(
                    format!("web UI did not listen on {addr}\n{}", custos.log_tail()).into(),
                );
            }
        }
        Ok(Front {
            custos,
            custos_dir: custos_dir.to_owned(),
            rules_path,
            archive_dir,
            web,
            websocket,
            config,
        })
    }
}

impl Rig {
    /// Starts the server `opts.server` names with the accounts of [`USERS`] and
    /// `opts.users`, and Custos in front of it as `opts` asks.
    pub fn start(label: &str, opts: RigOptions) -> Result<Rig, BoxError> {
        let dir = TestDir::new(label)?;
        let ca = TestCa::generate(dir.path())?;
        let accounts: Vec<(&'static str, &'static str)> = USERS
            .iter()
            .copied()
            .chain(opts.users.iter().copied())
            .collect();
        let users: Vec<User> = accounts
            .iter()
            .map(|(name, pw)| User::new(name, "example.test", pw))
            .collect();
        let prosody_only = [
            ("external_domain", opts.external_domain),
            ("mam", opts.mam),
            ("sasl2", opts.sasl2),
            ("upstream_plain", opts.upstream_plain),
            ("file_share", opts.file_share),
        ];
        if opts.server != ServerKind::Prosody {
            if let Some((what, _)) = prosody_only.iter().find(|(_, on)| *on) {
                return Err(format!("{what} is set up on Prosody only").into());
            }
        }
        let server = match opts.server {
            ServerKind::Prosody => {
                let mut popts = ProsodyOptions {
                    users,
                    mam: opts.mam,
                    web_client: opts.web_client,
                    sasl2: opts.sasl2,
                    file_share: opts.file_share,
                    // Prosody 0.12 has no `secure_interfaces`: a plain leg is accepted
                    // only with encryption not required (the listener is on loopback,
                    // reachable by Custos alone).
                    plaintext_clients: opts.upstream_plain,
                    muc: opts.muc.then(|| "conference.example.test".into()),
                    ..ProsodyOptions::default()
                };
                if opts.external_domain {
                    popts.external_domain = Some("example.org".into());
                    popts
                        .users
                        .push(User::new("dave", "example.org", "dave-secret"));
                }
                Server::Prosody(Prosody::start(dir.path(), &ca, popts)?)
            }
            ServerKind::Ejabberd => Server::Ejabberd(Ejabberd::start(dir.path(), &ca, &users)?),
            ServerKind::Jabberd2 => Server::Jabberd2(Jabberd2::start(dir.path(), &ca, &users)?),
        };
        let mut opts = opts;
        if let Some(url) = server.prosody().and_then(Prosody::file_share_url) {
            let files = section("files", [("sources", strings([url]))]);
            let extra = std::mem::take(&mut opts.extra);
            opts.extra = files;
            merge(&mut opts.extra, extra);
        }
        let custos_dir = dir.join("custos");
        let Front {
            custos,
            custos_dir,
            rules_path,
            archive_dir,
            web,
            websocket,
            config,
        } = Front::start(&custos_dir, &ca, server.c2s_addr(), &opts)?;
        Ok(Rig {
            custos,
            server,
            ca,
            custos_dir,
            rules_path,
            archive_dir,
            web,
            websocket,
            config,
            accounts,
            dir,
        })
    }

    /// The prefix of the upload service's file addresses, with `file_share`.
    pub fn file_share_url(&self) -> Option<String> {
        self.server.prosody().and_then(Prosody::file_share_url)
    }

    /// The password of `user@example.test`.
    pub fn password(&self, user: &str) -> Result<&'static str, BoxError> {
        self.accounts
            .iter()
            .find(|(name, _)| *name == user)
            .map(|(_, pw)| *pw)
            .ok_or_else(|| format!("no account {user}@example.test in this rig").into())
    }

    /// Another Custos node in front of the same server, in `dir` below the rig's: the
    /// same upstream, keys, rules, bucket and retention, its own archive directory, no
    /// web UI or WebSocket listener, and the node name `name` when given. Listeners as
    /// `kinds`.
    pub fn another_node(
        &self,
        name: &str,
        node_name: Option<&str>,
        kinds: &[ListenerKind],
    ) -> Result<Custos, BoxError> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut config = self.config.clone();
        config.remove("listener");
        config.remove("web");
        if let Some(Value::Table(archive)) = config.get_mut("archive") {
            archive.insert("dir".into(), path(&dir.join("archive")));
            if let Some(n) = node_name {
                archive.insert("node".into(), Value::String(n.to_owned()));
            }
        }
        let leaf = self.ca.leaf(&dir, "example.test")?;
        Ok(Custos::start(
            &dir,
            kinds,
            &leaf.chain_path,
            &leaf.key_path,
            &config,
        )?)
    }

    /// Connection options for `user@example.test/resource` through Custos.
    pub fn client(&self, user: &str, resource: &str, tls: Tls) -> ConnectOptions {
        let (domain, password) = match self.accounts.iter().find(|(n, _)| *n == user) {
            Some((_, pw)) => ("example.test", *pw),
            None => ("example.org", "dave-secret"),
        };
        let addr = match tls {
            Tls::StartTls => self.custos.listener(0),
            Tls::Direct => self.custos.listener(1),
        };
        let mut opts = ConnectOptions::new(
            &format!("{user}@{domain}/{resource}"),
            password,
            addr,
            self.ca.cert_path(),
        );
        opts.tls = tls;
        opts
    }

    /// Connects `user` through Custos, with the logs in the error if it fails.
    pub async fn connect(
        &self,
        user: &str,
        resource: &str,
        tls: Tls,
    ) -> Result<SlixClient, BoxError> {
        SlixClient::connect(self.client(user, resource, tls))
            .await
            .map_err(|e| format!("{user} could not connect: {e}\n{}", self.context()).into())
    }

    /// Connects an external user directly to Prosody (not through Custos), as a party on
    /// another server would be.
    pub async fn connect_direct(&self, jid: &str, password: &str) -> Result<SlixClient, BoxError> {
        let opts = ConnectOptions::new(jid, password, self.server.c2s_addr(), self.ca.cert_path());
        Ok(SlixClient::connect(opts).await?)
    }

    /// Runs `custos ARGS --config <this rig's config>`.
    pub fn cli(&self, args: &[&str]) -> Result<Output, BoxError> {
        Ok(self.custos.command(args)?)
    }

    /// `custos search --json QUERY` polled every 100 ms until at least `want` logical
    /// messages match or `limit` passes (the index is near-real-time); the last answer.
    pub fn search_until(
        &self,
        query: &str,
        want: usize,
        limit: std::time::Duration,
    ) -> Result<Vec<serde_json::Value>, BoxError> {
        crate::custos::poll(want, limit, || self.search(query))
    }

    /// [`Rig::search_until`] over `--copies`: until `want` records match.
    pub fn search_copies_until(
        &self,
        query: &str,
        want: usize,
        limit: std::time::Duration,
    ) -> Result<Vec<serde_json::Value>, BoxError> {
        self.custos.search_copies_until(query, want, limit)
    }

    /// `custos search --json QUERY`, parsed: one object per logical message, its
    /// copies under `copies`.
    pub fn search(&self, query: &str) -> Result<Vec<serde_json::Value>, BoxError> {
        self.custos.search(query)
    }

    /// `custos search --json --copies QUERY`, parsed: one object per record (copy).
    pub fn search_copies(&self, query: &str) -> Result<Vec<serde_json::Value>, BoxError> {
        self.custos.search_copies(query)
    }

    /// `custos user add` with the password on stdin.
    pub fn add_user(&self, name: &str, role: &str, password: &str) -> Result<(), BoxError> {
        Ok(crate::custos::add_user(
            self.custos.config_path(),
            name,
            role,
            password,
        )?)
    }

    /// Waits until Custos's log says `needle`, at most `limit`.
    pub fn wait_for_log(&self, needle: &str, limit: std::time::Duration) -> Result<(), BoxError> {
        let deadline = std::time::Instant::now() + limit;
        while !self.custos.log().contains(needle) {
            if std::time::Instant::now() > deadline {
                return Err(format!("log never said {needle:?}\n{}", self.context()).into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// Both logs, for assertion messages.
    pub fn context(&self) -> String {
        format!(
            "--- custos log ---\n{}\n--- {} log ---\n{}",
            self.custos.log_tail(),
            self.server.name(),
            self.server.log_tail()
        )
    }
}

fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
