#![forbid(unsafe_code)]
// Tests may panic on a broken expectation; the served code may not.
#![cfg_attr(test, allow(clippy::unwrap_used))]
//! `custos-web-ui`: the review application compliance officers work in.
//!
//! ```text
//!  browser ──HTTP──▶ [app: security headers ─▶ session ─▶ role check ─▶ CSRF]
//!                                   │
//!            ┌──────────────────────┼────────────────────────┐
//!            ▼                      ▼                        ▼
//!     archive.search         store (in memory)        archive.append(Audit)
//!     record_at (bodies)     messages, review state,          │
//!            ▲               audit trail  ◀── tail scan ──────┘
//!            └──────────────────── the archive (single source of truth)
//! ```
//!
//! Modules: [`users`] (accounts file, argon2), [`auth`] (sessions, cookies,
//! CSRF, throttling), [`roles`] (the role matrix), [`store`] (metadata and
//! review state derived from audit records), [`app`] (state, router, tail),
//! [`handlers`] (one function per route), [`pages`] and [`charts`]
//! (escaping templates, SVG), [`highlight`] (search-term marking), [`error`].
//! With the `browser` feature, [`browser`] drives a real Chromium for tests.

pub mod app;
pub mod auth;
#[cfg(feature = "browser")]
pub mod browser;
pub mod charts;
pub mod error;
pub mod handlers;
pub mod highlight;
pub mod pages;
pub mod roles;
pub mod store;
pub mod tls;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{AppError, WebError};
pub use users::{add_user, load_users, remove_user, Role, User, UserError};

/// The `[web]` section, validated.
#[derive(Clone, Debug)]
pub struct WebConfig {
    pub bind: SocketAddr,
    /// Accounts file (outside the archive directory).
    pub users_file: PathBuf,
    /// A session ends after this long without a request.
    pub session_ttl: Duration,
    /// Fraction (0..=1) of unflagged messages put in the queue for sampling review.
    pub sample_rate: f64,
    /// Mark cookies `Secure` (on when served over TLS, here or behind a TLS proxy).
    pub secure_cookies: bool,
    /// Serve HTTPS with this configuration (`[web] cert`, `key`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What a regulator export needs; `None` disables export downloads.
    pub export: Option<ExportKeys>,
    /// The retention classes (`[retention]`); `None`: everything is kept forever.
    pub retention: Option<custos_archive::retention::RetentionPolicy>,
    /// This node's name, when nodes are named.
    pub node: Option<String>,
    /// Other nodes' chains that search covers too (read from the shared bucket), kept
    /// current by the server as nodes appear.
    pub peers: Peers,
    /// How delivery to the firm's archiver stands (`[journal]`), kept current by the
    /// server's journal loop; shown on the dashboard.
    pub journal: JournalHealth,
    /// Saved term lists (`[lexicons]`), used in queries as `@name`.
    pub lexicons: custos_archive::query::Lexicons,
    /// A start that has more than this many of this node's records to read (no saved
    /// state, or one that does not continue the log) serves at once and reads them in
    /// the background; until it has caught up, pages say how far it has read and
    /// review and hold actions are refused. Fewer are read before serving. Later
    /// catch-ups (a page's) read at most this many records of a chain too, and leave a
    /// chain further behind (another node's, just added) to the follower the same way.
    pub build_in_background_above: u64,
}

/// Another node's chain, readable through a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChain {
    pub node: Option<String>,
    pub dir: PathBuf,
}

/// The other nodes' chains, shared between the server's refresh loop and the web UI.
pub type Peers = std::sync::Arc<std::sync::RwLock<Vec<PeerChain>>>;

/// Where journaling (`[journal]`) stands, as its delivery loop last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStatus {
    /// Where the journal goes: `smtp host:port` or `dir /path`.
    pub target: String,
    /// Every period up to this time has been delivered.
    pub delivered_through: Option<custos_archive::Timestamp>,
    /// The last run that succeeded.
    pub last_success: Option<custos_archive::Timestamp>,
    /// Journal messages delivered since the cursor was created.
    pub delivered: u64,
    /// Runs that failed in a row (0: the last run succeeded).
    pub failures: u32,
    /// Why the last run failed, while failures last.
    pub last_error: Option<String>,
    /// When the next attempt is due.
    pub next_attempt: Option<custos_archive::Timestamp>,
}

/// The journal's status, shared between the server's journal loop and the web UI;
/// `None` while no journal is configured or it has not run yet.
pub type JournalHealth = std::sync::Arc<std::sync::RwLock<Option<JournalStatus>>>;

/// The archive keys a verifiable export is written and signed with. The serving process
/// holds them anyway (it opened the archive); they never leave it.
#[derive(Clone)]
pub struct ExportKeys {
    pub archive_dir: PathBuf,
    pub master_key: custos_archive::MasterKey,
    pub signing_key: custos_archive::SigningKey,
}

impl std::fmt::Debug for ExportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportKeys")
            .field("archive_dir", &self.archive_dir)
            .finish_non_exhaustive()
    }
}

impl WebConfig {
    /// Defaults: 30 min idle sessions, 1 % sampling, cookies not `Secure`, a state of
    /// more than 100,000 records built in the background.
    pub fn new(bind: SocketAddr, users_file: PathBuf) -> WebConfig {
        WebConfig {
            bind,
            users_file,
            session_ttl: Duration::from_secs(30 * 60),
            sample_rate: 0.01,
            secure_cookies: false,
            tls: None,
            export: None,
            retention: None,
            node: None,
            peers: Peers::default(),
            journal: JournalHealth::default(),
            lexicons: Default::default(),
            build_in_background_above: 100_000,
        }
    }
}

/// How often the server looks for records appended by others (the proxy).
const TAIL_INTERVAL: Duration = Duration::from_millis(500);
/// Slices of the saved state's pages the follower looks over each turn
/// ([`app::CHECK_SLICE`] pages each): 64 MiB, so a dozen turns for the 718 MiB of ten
/// million records' pages.
const CHECK_SLICES: usize = 64;
/// How long the follower reads the log in one turn before it looks pages over and
/// starts the next turn (at once, when records are left).
const FOLLOW_TURN: Duration = Duration::from_millis(250);

/// The follower (thread `custos-web-tail`): every [`TAIL_INTERVAL`], or at once while
/// a turn left records unread, applies what the archive gained, one
/// [`app::FOLLOW_SLICE`] at a time for at most [`FOLLOW_TURN`], then looks some pages
/// taken from the saved state over, until `stop` is dropped. It runs at index
/// building's priority: when the CPU is short, relaying goes first and the review state
/// catches up after. A page that must show the latest state catches up itself, at its
/// own priority, waiting for at most the slice in hand; while the state is being built,
/// the follower alone reads.
fn follow(app: &app::App, stop: &std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    app.archive.lower_to_index_priority();
    let mut checking = true;
    let mut behind = false;
    let mut failing: Option<(String, std::time::Instant)> = None;
    loop {
        // No wait while a turn left records unread.
        let wait = if behind {
            Duration::ZERO
        } else {
            TAIL_INTERVAL
        };
        if !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
            return;
        }
        let turn = std::time::Instant::now();
        behind = false;
        loop {
            match app.follow_slice() {
                Ok(more) => {
                    // The catch-up that read it cleared what pages say.
                    failing = None;
                    if !more {
                        break;
                    }
                    if turn.elapsed() >= FOLLOW_TURN {
                        behind = true;
                        break;
                    }
                    if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                        return;
                    }
                }
                Err(e) => {
                    // Logged when it changes, and once a minute while it lasts; pages
                    // say it meanwhile.
                    let said = e.to_string();
                    let again = failing.as_ref().is_none_or(|(last, at)| {
                        *last != said || at.elapsed() >= Duration::from_secs(60)
                    });
                    if again {
                        tracing::warn!(cause = %said, "following the archive failed; retrying");
                        failing = Some((said.clone(), std::time::Instant::now()));
                    }
                    app.follow_failed(said);
                    break;
                }
            }
        }
        // Then the pages taken from the saved state are looked over, some each turn,
        // until all have been.
        for _ in 0..CHECK_SLICES {
            checking = checking
                && app.check_saved_slice()
                && matches!(stop.try_recv(), Err(TryRecvError::Empty));
            if !checking {
                break;
            }
        }
    }
}

/// A web UI whose socket is bound and whose state is rebuilt; not serving yet.
pub struct BoundWeb {
    listener: tokio::net::TcpListener,
    app: Arc<app::App>,
}

/// A web UI whose users file is checked and whose socket is bound, before anything is
/// read from the archive: connections wait in the socket's backlog until
/// [`PreparedWeb::load`] is done.
pub struct PreparedWeb {
    cfg: WebConfig,
    listener: tokio::net::TcpListener,
}

/// Checks the users file and binds the socket: the quick part of [`bind`], where
/// configuration mistakes show.
pub async fn prepare(cfg: WebConfig) -> Result<PreparedWeb, WebError> {
    users::load_users(&cfg.users_file)?;
    let addr = cfg.bind;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    Ok(PreparedWeb { cfg, listener })
}

impl PreparedWeb {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.cfg.bind)
    }

    /// Rebuilds review state from the archive (the slow part, off the async threads).
    pub async fn load(self, archive: custos_archive::Archive) -> Result<BoundWeb, WebError> {
        let cfg = self.cfg;
        let app = tokio::task::spawn_blocking(move || app::App::new(cfg, archive))
            .await
            .map_err(|e| WebError::Serve(std::io::Error::other(e.to_string())))??;
        Ok(BoundWeb {
            listener: self.listener,
            app: Arc::new(app),
        })
    }
}

/// Checks the users file, binds the socket and rebuilds review state from the archive:
/// [`prepare`] then [`PreparedWeb::load`].
pub async fn bind(cfg: WebConfig, archive: custos_archive::Archive) -> Result<BoundWeb, WebError> {
    prepare(cfg).await?.load(archive).await
}

impl BoundWeb {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.app.cfg.bind)
    }

    /// The router, for driving the application without a socket (tests).
    pub fn router(&self) -> axum::Router {
        app::router(self.app.clone())
    }

    /// How the review state was built: read back from its saved copy or from the log.
    pub fn started(&self) -> app::Started {
        self.app.started
    }

    /// Whether the state is still being built in the background, as it stands when the
    /// returned function is called (for whoever watches a UI being served).
    pub fn building_watch(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let app = self.app.clone();
        move || app.building()
    }

    /// Whether the state is whole, as it stands when the returned function is called:
    /// no page notice (not being built, not found damaged, every log it follows read;
    /// for a gauge operators can watch).
    pub fn whole_watch(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let app = self.app.clone();
        move || app.state_notice().is_none()
    }

    /// How many times the state has been emptied to be built again (a page of its files
    /// found changed, say), as it stands when the returned function is called.
    pub fn rebuilds_watch(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let app = self.app.clone();
        move || app.generation()
    }

    /// Saves the review state now (blocking file I/O; `run` also saves at its end).
    pub fn save_state_blocking(&self) {
        self.app.save_blocking();
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WebError> {
        let self_app = self.app.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let app = self.app.clone();
        let follower = std::thread::Builder::new()
            .name("custos-web-tail".into())
            .spawn(move || follow(&app, &stopped))
            .map_err(WebError::Serve)?;
        // Saving stays at the relay's priority: a review change made during a save waits
        // for it to end.
        let app = self.app.clone();
        let saver = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TAIL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if app.save_due() {
                    let app = app.clone();
                    let _ = tokio::task::spawn_blocking(move || app.save_blocking()).await;
                }
            }
        });
        let tls = self.app.cfg.tls.clone();
        let router = app::router(self.app);
        let served = match tls {
            Some(config) => {
                let service = router.into_make_service_with_connect_info::<tls::TlsPeer>();
                axum::serve(tls::TlsListener::new(self.listener, config), service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                axum::serve(self.listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
        .map_err(WebError::Serve);
        saver.abort();
        drop(stop);
        let _ = tokio::task::spawn_blocking(move || follower.join()).await;
        // What was read since the saved copy is saved, so the next start reads it back.
        let app = self_app;
        let _ = tokio::task::spawn_blocking(move || {
            // A state still being built is saved as far as it has read: the next start
            // takes that back and reads the rest in the background.
            if !app.building() {
                if let Err(e) = app.catch_up_blocking() {
                    tracing::warn!(cause = %e, "following the archive before saving failed");
                }
            }
            app.save_blocking();
        })
        .await;
        served
    }
}

#[cfg(test)]
mod follow_tests {
    use super::*;
    use custos_archive::{Archive, ArchiveConfig, MasterKey, MessageRecord, NewRecord, SigningKey};

    /// The follower catches up in slices, and ends promptly once its sender
    /// is dropped, idle or in the middle of a backlog.
    #[test]
    fn the_follower_catches_up_and_ends_when_told() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let archive = Archive::open(ArchiveConfig::new(
            tmp.path().join("archive"),
            MasterKey::from_bytes([3; 32]),
            SigningKey::from_bytes(&[4; 32]),
        ))
        .unwrap();
        let cfg = WebConfig::new("127.0.0.1:0".parse().unwrap(), tmp.path().join("u.json"));
        let app = Arc::new(app::App::new(cfg, archive.clone()).unwrap());
        let add = |n: usize| {
            rt.block_on(async {
                for i in 0..n {
                    let m =
                        MessageRecord::chat("a@example.test/x", "b@example.test", format!("{i}"));
                    archive.append(NewRecord::Message(m)).await.unwrap();
                }
            })
        };
        // Drops the follower's sender and waits for it to end, boundedly.
        let stop_within =
            |tx: std::sync::mpsc::Sender<()>, t: std::thread::JoinHandle<()>, what: &str| {
                let stop = std::time::Instant::now();
                drop(tx);
                t.join().unwrap();
                assert!(
                    stop.elapsed() < Duration::from_secs(10),
                    "{what} follower ended late"
                );
            };
        let start = |app: &Arc<app::App>| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let a = app.clone();
            (tx, std::thread::spawn(move || follow(&a, &rx)))
        };
        add(3 * app::FOLLOW_SLICE);
        let end = archive.reader().records(1..=u64::MAX - 1).unwrap().len() as u64 + 1;
        let (tx, t) = start(&app);
        let began = std::time::Instant::now();
        while app::read(&app.store).next_seq() < end {
            assert!(began.elapsed() < Duration::from_secs(20), "not caught up");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop_within(tx, t, "idle");

        add(40 * app::FOLLOW_SLICE);
        let (tx, t) = start(&app);
        std::thread::sleep(Duration::from_millis(600));
        stop_within(tx, t, "busy");
        rt.block_on(archive.close()).unwrap();
    }
}
