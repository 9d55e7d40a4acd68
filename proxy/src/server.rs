//! Listeners, the connection cap and graceful shutdown.
//!
//! `Proxy::bind` binds every listener up front, so a configuration that cannot bind fails
//! before anything is served, and tests learn the ports the OS picked. `BoundProxy::run`
//! accepts until the shutdown token fires, then stops accepting, tells every live session
//! `<system-shutdown/>`, and waits (bounded) for them to drain.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::framer::FrameLimits;
use crate::inspect::Inspector;
use crate::io::send;
use crate::negotiation::UpstreamTls;
use crate::session::{self, Shared};
use crate::stream::{self, HeaderAttrs};

/// How clients reach a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Plain TCP, STARTTLS required before anything else.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
    /// XMPP over WebSocket (RFC 7395), over TLS when `tls` is set.
    WebSocket,
}

#[derive(Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub mode: ListenerMode,
    /// Always set for XMPP listeners; `None` only for a plain WebSocket listener on
    /// loopback behind a TLS-terminating reverse proxy.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Set for [`ListenerMode::WebSocket`].
    pub websocket: Option<Arc<crate::websocket::WebSocketOptions>>,
}

#[derive(Clone)]
pub struct UpstreamConfig {
    /// `host:port` of the upstream server.
    pub address: String,
    pub mode: UpstreamTls,
    pub tls: Arc<rustls::ClientConfig>,
    /// Name checked against the upstream's certificate; default: the client's domain.
    /// Also the domain used for clients whose header names none.
    pub server_name: Option<String>,
}

/// Limits that keep one peer from hurting the others.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub frame: FrameLimits,
    /// Each negotiation step (TLS handshake, each expected element, upstream connect).
    pub handshake_timeout: Duration,
    /// From connection to SASL success.
    pub auth_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for sessions to close.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame: FrameLimits::default(),
            handshake_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct ProxyConfig {
    pub listeners: Vec<ListenerConfig>,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

pub struct Proxy;

impl Proxy {
    pub async fn bind(config: ProxyConfig) -> Result<BoundProxy, BindError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for spec in &config.listeners {
            let listener = TcpListener::bind(spec.bind)
                .await
                .map_err(|source| BindError {
                    addr: spec.bind,
                    source,
                })?;
            listeners.push((listener, spec.clone()));
        }
        Ok(BoundProxy { config, listeners })
    }
}

pub struct BoundProxy {
    config: ProxyConfig,
    listeners: Vec<(TcpListener, ListenerConfig)>,
}

impl BoundProxy {
    /// The addresses actually bound, in configuration order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` fires, then drains. Sessions share `inspector`.
    pub async fn run<I: Inspector>(self, inspector: Arc<I>, shutdown: CancellationToken) {
        let drain = self.config.limits.drain_timeout;
        let permits = Arc::new(Semaphore::new(self.config.limits.max_connections));
        let shared = Arc::new(Shared {
            config: Arc::new(self.config),
            inspector,
            shutdown: shutdown.clone(),
            resumable: std::sync::Mutex::new(crate::sm::Resumable::default()),
        });
        let next_id = Arc::new(AtomicU64::new(1));
        let mut accept_loops = JoinSet::new();
        for (listener, spec) in self.listeners {
            let shared = shared.clone();
            let permits = permits.clone();
            let next_id = next_id.clone();
            let addr = listener.local_addr().ok();
            info!(addr = ?addr, mode = ?spec.mode, "listening");
            accept_loops.spawn(accept_loop(listener, spec, shared, permits, next_id));
        }
        let mut sessions = JoinSet::new();
        while let Some(done) = accept_loops.join_next().await {
            if let Ok(mut loop_sessions) = done {
                while let Some(task) = loop_sessions.try_join_next() {
                    drop(task);
                }
                // Merge the listener's sessions so shutdown waits for all of them.
                sessions.spawn(async move { while loop_sessions.join_next().await.is_some() {} });
            }
        }
        info!(
            live = sessions.len(),
            "stopped accepting; draining sessions"
        );
        let drained = tokio::time::timeout(drain, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("sessions still open after the drain timeout; closing them");
            sessions.abort_all();
        }
        info!("proxy stopped");
    }
}

async fn accept_loop<I: Inspector>(
    listener: TcpListener,
    spec: ListenerConfig,
    shared: Arc<Shared<I>>,
    permits: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
) -> JoinSet<()> {
    let acceptor = spec.tls.clone().map(TlsAcceptor::from);
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shared.shutdown.cancelled() => break,
        };
        // Reap finished sessions so the set stays the size of the live ones.
        while sessions.try_join_next().is_some() {}
        let (tcp, client_addr) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(cause = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(conn = id, client = %client_addr, "connection cap reached; refusing");
            metrics::counter!("custos_connections_refused_total").increment(1);
            sessions.spawn(refuse_over_cap(tcp, spec.mode));
            continue;
        };
        let span = info_span!("conn", id, client = %client_addr, jid = tracing::field::Empty);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let mode = spec.mode;
        let websocket = spec.websocket.clone();
        sessions.spawn(
            async move {
                let live = Live::start();
                match (websocket, acceptor) {
                    // Each kind of session boxed: the task holds only the kind it runs.
                    (Some(ws), acceptor) => {
                        Box::pin(crate::websocket::serve(
                            tcp,
                            client_addr,
                            id,
                            acceptor,
                            ws,
                            shared,
                        ))
                        .await;
                    }
                    (None, Some(acceptor)) => {
                        Box::pin(session::run(tcp, client_addr, id, mode, acceptor, shared)).await;
                    }
                    (None, None) => warn!("an XMPP listener without TLS settings; closing"),
                }
                drop(live);
                drop(permit);
            }
            .instrument(span),
        );
    }
    sessions
}

/// A session in the `custos_connections_open` gauge for as long as it lives (aborted
/// sessions too: the gauge goes down on drop).
struct Live;

impl Live {
    fn start() -> Live {
        metrics::gauge!("custos_connections_open").increment(1.0);
        metrics::counter!("custos_connections_total").increment(1);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        metrics::gauge!("custos_connections_open").decrement(1.0);
    }
}

/// Over the cap a STARTTLS listener still answers in XMPP, so the client shows a reason
/// (`<resource-constraint/>`) instead of a bare disconnect; a Direct TLS listener cannot
/// without spending a handshake on it, so it just closes.
async fn refuse_over_cap(mut tcp: TcpStream, mode: ListenerMode) {
    if mode == ListenerMode::StartTls {
        let mut bytes = stream::header(&HeaderAttrs {
            id: Some(&stream::new_stream_id()),
            ..Default::default()
        });
        bytes.extend(stream::stream_error(
            "resource-constraint",
            Some("too many connections; try again later"),
        ));
        let _ = tokio::time::timeout(Duration::from_secs(2), send(&mut tcp, &bytes)).await;
    }
}
