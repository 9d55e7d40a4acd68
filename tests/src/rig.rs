//! A complete deployment for a scenario: a real Prosody with accounts, and `custos serve`
//! in front of it with a STARTTLS listener (index 0) and a Direct TLS listener (index 1),
//! optionally with an archive (keys created by `custos keys init`) and a rules file.
//! [`Front`] is the Custos half alone, for scenarios against another server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::custos::{run_custos, Custos, ListenerKind};
use crate::slix::{ConnectOptions, SlixClient, Tls};
use crate::{Prosody, ProsodyOptions, TestCa, TestDir, User};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accounts every rig has, on `example.test` ("behind Custos").
pub const USERS: &[(&str, &str)] = &[
    ("alice", "alice-secret"),
    ("bob", "bob-secret"),
    ("carol", "carol-secret"),
];

/// What to start besides Prosody and the proxy.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// Add `[archive]` with fresh keys.
    pub archive: bool,
    /// Rules file content; adds `[policy]`.
    pub rules: Option<String>,
    /// TOML appended to the config (e.g. `[limits]`).
    pub extra: String,
    /// A second Prosody host for external users (`dave@example.org`).
    pub external_domain: bool,
    /// Run `custos serve` under this uid/gid (via `setpriv`) instead of as the caller.
    pub run_as: Option<(u32, u32)>,
    /// Extra keys for the `[archive]` section.
    pub archive_extra: String,
    /// Serve the review web UI (needs `archive`); its address is [`Rig::web`].
    pub web: bool,
    /// Serve it over HTTPS with the test CA's `example.test` certificate.
    pub web_tls: bool,
    /// Prosody keeps a message archive (XEP-0313).
    pub mam: bool,
    /// Prosody serves group chat at `conference.example.test`.
    pub muc: bool,
    /// Prosody loads what a full web client waits for at start (Converse.js).
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
    pub fn with_archive_extra(mut self, toml: &str) -> Self {
        self.archive_extra.push_str(toml);
        self
    }
}

pub struct Rig {
    pub custos: Custos,
    pub prosody: Prosody,
    pub ca: TestCa,
    pub custos_dir: PathBuf,
    pub rules_path: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    /// The review web UI's address, when started.
    pub web: Option<SocketAddr>,
    /// The WebSocket listener's address, when configured.
    pub websocket: Option<SocketAddr>,
    // Last: files outlive the processes that use them.
    pub dir: TestDir,
}

/// Writes the config without starting anything (keys are created when `opts.archive`).
fn write_config(
    custos_dir: &std::path::Path,
    ca: &TestCa,
    upstream: SocketAddr,
    opts: &RigOptions,
) -> Result<(String, Option<PathBuf>, Option<PathBuf>), BoxError> {
    let mut config = if opts.upstream_plain {
        format!("[upstream]\naddress = \"{upstream}\"\ntls = \"none\"\nserver_name = \"example.test\"\n\n")
    } else {
        format!(
            "[upstream]\naddress = \"{upstream}\"\ntls = \"starttls\"\nca = \"{}\"\nserver_name = \"example.test\"\n\n",
            ca.cert_path().display()
        )
    };
    let mut archive_dir = None;
    if opts.archive {
        let secrets = custos_dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        let dir = custos_dir.join("archive");
        config.push_str(&format!(
            "[archive]\ndir = \"{}\"\nmaster_key = \"{}\"\nsigning_key = \"{}\"\n{}\n",
            dir.display(),
            secrets.join("master.key").display(),
            secrets.join("signing.key").display(),
            opts.archive_extra
        ));
        archive_dir = Some(dir);
    }
    let mut rules_path = None;
    if let Some(rules) = &opts.rules {
        let path = custos_dir.join("rules.toml");
        std::fs::write(&path, rules)?;
        config.push_str(&format!("[policy]\nrules = \"{}\"\n\n", path.display()));
        rules_path = Some(path);
    }
    config.push_str(&opts.extra);
    Ok((config, rules_path, archive_dir))
}

fn web_section(custos_dir: &std::path::Path) -> Result<(String, SocketAddr), BoxError> {
    let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
    let users = custos_dir.join("users.json");
    Ok((
        format!(
            "\n[web]\nbind = \"{addr}\"\nusers = \"{}\"\nsample_rate = 0.0\n",
            users.display()
        ),
        addr,
    ))
}

/// `custos serve` as [`Rig::start`] sets it up, in front of any `upstream` server that
/// offers STARTTLS with the test CA's `example.test` certificate; for scenarios against
/// a server other than Prosody.
pub struct Front {
    pub custos: Custos,
    pub custos_dir: PathBuf,
    pub rules_path: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    /// The review web UI's address, when started.
    pub web: Option<SocketAddr>,
    /// The WebSocket listener's address, when configured.
    pub websocket: Option<SocketAddr>,
}

impl Front {
    /// Writes the config into `custos_dir` (created if needed) with `upstream` as the
    /// server and the sections `opts` asks for (the Prosody options are ignored), and
    /// starts Custos with a STARTTLS listener (index 0) and a Direct TLS one (index 1).
    pub fn start(
        custos_dir: &Path,
        ca: &TestCa,
        upstream: SocketAddr,
        opts: &RigOptions,
    ) -> Result<Front, BoxError> {
        std::fs::create_dir_all(custos_dir)?;
        let (mut config, rules_path, archive_dir) = write_config(custos_dir, ca, upstream, opts)?;
        let leaf = ca.leaf(custos_dir, "example.test")?;
        let web = if opts.web {
            let (section, addr) = web_section(custos_dir)?;
            config.push_str(&section);
            if opts.web_tls {
                config.push_str(&format!(
                    "cert = \"{}\"\nkey = \"{}\"\n",
                    leaf.chain_path.display(),
                    leaf.key_path.display()
                ));
            }
            Some(addr)
        } else {
            None
        };
        if opts.archive {
            // `keys init` needs only [archive]: give it just that section.
            let archive_only = config
                .split("\n\n")
                .find(|section| section.starts_with("[archive]"))
                .unwrap_or_default();
            let keys_config = custos_dir.join("keys.toml");
            std::fs::write(&keys_config, archive_only)?;
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
                config.push_str(&format!(
                    "\n[[listener]]\nprotocol = \"websocket\"\nbind = \"{addr}\"\n"
                ));
                if ws.tls {
                    config.push_str(&format!(
                        "tls = \"direct\"\ncert = \"{}\"\nkey = \"{}\"\n",
                        leaf.chain_path.display(),
                        leaf.key_path.display()
                    ));
                } else {
                    config.push_str("tls = \"none\"\n");
                }
                if !ws.origins.is_empty() {
                    let list: Vec<String> = ws.origins.iter().map(|o| format!("{o:?}")).collect();
                    config.push_str(&format!("origins = [{}]\n", list.join(", ")));
                }
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
        })
    }

    /// [`Rig::search`] against this Custos.
    pub fn search(&self, query: &str) -> Result<Vec<serde_json::Value>, BoxError> {
        self.custos.search(query)
    }

    /// [`Rig::search_copies`] against this Custos.
    pub fn search_copies(&self, query: &str) -> Result<Vec<serde_json::Value>, BoxError> {
        self.custos.search_copies(query)
    }

    /// [`Rig::search_copies_until`] against this Custos.
    pub fn search_copies_until(
        &self,
        query: &str,
        want: usize,
        limit: std::time::Duration,
    ) -> Result<Vec<serde_json::Value>, BoxError> {
        self.custos.search_copies_until(query, want, limit)
    }
}

impl Rig {
    pub fn start(label: &str, opts: RigOptions) -> Result<Rig, BoxError> {
        let dir = TestDir::new(label)?;
        let ca = TestCa::generate(dir.path())?;
        let mut popts = ProsodyOptions::default();
        for (name, pw) in USERS {
            popts.users.push(User::new(name, "example.test", pw));
        }
        if opts.external_domain {
            popts.external_domain = Some("example.org".into());
            popts
                .users
                .push(User::new("dave", "example.org", "dave-secret"));
        }
        popts.mam = opts.mam;
        popts.web_client = opts.web_client;
        popts.sasl2 = opts.sasl2;
        if opts.upstream_plain {
            // Prosody 0.12 has no `secure_interfaces`: a plain leg is accepted only with
            // encryption not required (the listener is on loopback, reachable by Custos
            // alone).
            popts.plaintext_clients = true;
        }
        if opts.muc {
            popts.muc = Some("conference.example.test".into());
        }
        let prosody = Prosody::start(dir.path(), &ca, popts)?;
        let custos_dir = dir.join("custos");
        let Front {
            custos,
            custos_dir,
            rules_path,
            archive_dir,
            web,
            websocket,
        } = Front::start(&custos_dir, &ca, prosody.c2s_addr(), &opts)?;
        Ok(Rig {
            custos,
            prosody,
            ca,
            custos_dir,
            rules_path,
            archive_dir,
            web,
            websocket,
            dir,
        })
    }

    /// Connection options for `user@example.test/resource` through Custos.
    pub fn client(&self, user: &str, resource: &str, tls: Tls) -> ConnectOptions {
        let (domain, password) = match USERS.iter().find(|(n, _)| *n == user) {
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
        let opts = ConnectOptions::new(jid, password, self.prosody.c2s_addr(), self.ca.cert_path());
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

    /// Both logs, for assertion messages.
    pub fn context(&self) -> String {
        format!(
            "--- custos log ---\n{}\n--- prosody log ---\n{}",
            self.custos.log_tail(),
            self.prosody.log_tail()
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
