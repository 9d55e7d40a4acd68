//! The driver for one client connection: runs the [`Negotiation`] machine against real
//! sockets (TLS handshakes, the upstream connection, timeouts), reports failures as stream
//! errors, then hands both legs to the relay. Everything runs in the connection's task and
//! log span.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::conn::Conn;
use crate::error::{ClientFault, SessionError, UpstreamFault};
use crate::framer::{Frame, Framer};
use crate::inspect::{Inspector, SessionInfo};
use crate::io::{read_frame, send, ReadError};
use crate::negotiation::{
    Action, ClientStream, Event, Leg, Negotiation, NegotiationConfig, UpstreamTls,
};
use crate::relay::Relay;
use crate::server::{ListenerMode, ProxyConfig};
use crate::sm::Resumable;
use crate::stream::{self, HeaderAttrs};

/// Everything a session needs from the server that accepted it.
pub(crate) struct Shared<I> {
    pub config: Arc<ProxyConfig>,
    pub inspector: Arc<I>,
    pub shutdown: CancellationToken,
    /// Stream management counters of detached sessions, for resumption.
    pub resumable: std::sync::Mutex<Resumable>,
}

/// Runs one connection to its end. Never returns an error: the outcome is logged in the
/// connection's span, and reported to the client as a stream error where it still listens.
pub(crate) async fn run<I: Inspector>(
    tcp: TcpStream,
    client_addr: SocketAddr,
    conn_id: u64,
    mode: ListenerMode,
    acceptor: TlsAcceptor,
    shared: Arc<Shared<I>>,
) {
    let _ = tcp.set_nodelay(true);
    let start = match mode {
        ListenerMode::DirectTls => Start::TlsHandshake,
        _ => Start::Plain,
    };
    run_conn(
        Conn::Plain(tcp),
        Some(acceptor),
        start,
        client_addr,
        conn_id,
        shared,
    )
    .await;
}

/// Runs a session whose client transport is already secured outside it (a WebSocket over
/// TLS, or behind a TLS-terminating proxy): no STARTTLS is offered or accepted.
pub(crate) async fn run_secured<I: Inspector>(
    client: Conn,
    client_addr: SocketAddr,
    conn_id: u64,
    shared: Arc<Shared<I>>,
) {
    run_conn(client, None, Start::Secured, client_addr, conn_id, shared).await;
}

/// How the client leg starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Plain TCP: STARTTLS first.
    Plain,
    /// TLS from the first byte: the handshake first.
    TlsHandshake,
    /// Already secured by the caller.
    Secured,
}

fn run_conn<I: Inspector>(
    client: Conn,
    acceptor: Option<TlsAcceptor>,
    start: Start,
    client_addr: SocketAddr,
    conn_id: u64,
    shared: Arc<Shared<I>>,
) -> impl Future<Output = ()> {
    // Negotiation (both connections mid-handshake, the TLS handshakes) is boxed here, before
    // any future holds the client connection, and the connections go straight into the
    // relay outside any await: an idle session's task keeps only what relaying needs.
    let negotiation = Box::pin(negotiate(client, acceptor, start, shared.clone()));
    relay_negotiated(negotiation, client_addr, conn_id, shared)
}

async fn relay_negotiated<I: Inspector>(
    negotiation: Pin<Box<impl Future<Output = Option<Negotiated>>>>,
    client_addr: SocketAddr,
    conn_id: u64,
    shared: Arc<Shared<I>>,
) {
    let (relay, framers, info) = {
        let Some(negotiated) = negotiation.await else {
            return;
        };
        negotiated.into_relay(&shared, conn_id, client_addr)
    };
    debug!(domain = %info.domain, "negotiated; relaying");
    shared.inspector.session_started(&info).await;
    let (reason, info) = relay.run(framers).await;
    // Boxed: what the inspector does at the end would otherwise size the whole session.
    Box::pin(shared.inspector.session_ended(&info, &reason)).await;
    info!(reason = %reason, "session ended");
}

/// What negotiation hands to relaying.
struct Negotiated {
    stream: ClientStream,
    client: Conn,
    client_framer: Framer,
    upstream: Conn,
    upstream_framer: Framer,
}

impl Negotiated {
    fn into_relay<'a, I: Inspector>(
        self,
        shared: &'a Shared<I>,
        conn_id: u64,
        client_addr: SocketAddr,
    ) -> (Relay<'a, I>, (Framer, Framer), SessionInfo) {
        let info = SessionInfo {
            id: conn_id,
            client_addr,
            domain: self.stream.domain.clone(),
            jid: None,
            chose_resource: false,
        };
        let relay = Relay::new(
            shared,
            self.client,
            self.upstream,
            self.stream,
            info.clone(),
        );
        (relay, (self.client_framer, self.upstream_framer), info)
    }
}

/// Runs negotiation to its end: both connections and their framers once relaying can
/// start, or `None` after failing the session (logged, and told to the client where it
/// still listens).
async fn negotiate<I: Inspector>(
    client: Conn,
    acceptor: Option<TlsAcceptor>,
    start: Start,
    shared: Arc<Shared<I>>,
) -> Option<Negotiated> {
    let mut negotiator = Negotiator {
        shared: &shared,
        client,
        client_framer: Framer::new(shared.config.limits.frame),
        upstream: None,
        upstream_framer: Framer::new(shared.config.limits.frame),
        acceptor,
        room: 0,
        machine: None,
    };
    let negotiated = tokio::select! {
        r = negotiator.run(start) => r,
        () = shared.shutdown.cancelled() => Err(SessionError::Shutdown),
    };
    let relaying = match negotiated {
        Ok(stream) => stream,
        Err(err) => {
            log_end(&err);
            negotiator.fail(&err).await;
            return None;
        }
    };
    let Negotiator {
        client,
        client_framer,
        upstream,
        upstream_framer,
        ..
    } = negotiator;
    let Some(upstream) = upstream else {
        warn!("negotiation finished without an upstream connection");
        return None;
    };
    Some(Negotiated {
        stream: relaying,
        client,
        client_framer,
        upstream,
        upstream_framer,
    })
}

fn log_end(err: &SessionError) {
    match err {
        SessionError::Client(ClientFault::Closed) => debug!("client left during negotiation"),
        SessionError::Client(fault) => info!(cause = %fault, "client failed negotiation"),
        SessionError::Upstream(fault) => warn!(cause = %fault, "upstream unavailable"),
        SessionError::Shutdown => info!("closed for shutdown during negotiation"),
    }
}

struct Negotiator<'a, I> {
    shared: &'a Shared<I>,
    client: Conn,
    client_framer: Framer,
    upstream: Option<Conn>,
    upstream_framer: Framer,
    /// `None` for a client secured before the session started.
    acceptor: Option<TlsAcceptor>,
    /// How much the next read asks for (see [`read_frame`]).
    room: usize,
    /// The state, kept here so `fail` knows whether the client has a header yet.
    machine: Option<Negotiation>,
}

impl<I: Inspector> Negotiator<'_, I> {
    fn limits(&self) -> &crate::server::Limits {
        &self.shared.config.limits
    }

    async fn run(&mut self, start: Start) -> Result<ClientStream, SessionError> {
        let config = NegotiationConfig {
            upstream_tls: self.shared.config.upstream.mode,
            default_domain: self.shared.config.upstream.server_name.clone(),
        };
        if start == Start::TlsHandshake {
            self.secure_client().await?;
        }
        self.machine = Some(Negotiation::new(start != Start::Plain));
        loop {
            let leg = match &self.machine {
                Some(Negotiation::Relaying(r)) => return Ok(r.stream.clone()),
                Some(m) => m.awaits(),
                None => return Err(ClientFault::Closed.into()),
            };
            let event = match leg {
                Leg::Client => Event::Client(self.read_client().await?),
                Leg::Upstream => Event::Upstream(self.read_upstream().await?),
                // Driver states are left only through the actions below.
                Leg::Driver => return Err(ClientFault::Closed.into()),
            };
            self.step(event, &config).await?;
        }
    }

    async fn step(&mut self, event: Event, config: &NegotiationConfig) -> Result<(), SessionError> {
        let mut pending = vec![event];
        while let Some(event) = pending.pop() {
            let machine = self.machine.take().ok_or(ClientFault::Closed)?;
            let (next, actions) = machine.handle(event, config)?;
            self.machine = Some(next);
            for action in actions {
                if let Some(event) = self.perform(action).await? {
                    pending.push(event);
                }
            }
        }
        Ok(())
    }

    async fn perform(&mut self, action: Action) -> Result<Option<Event>, SessionError> {
        match action {
            Action::SendClient(bytes) => {
                send(&mut self.client, &bytes)
                    .await
                    .map_err(ClientFault::Io)?;
                Ok(None)
            }
            Action::SendUpstream(bytes) => {
                let upstream = self.upstream.as_mut().ok_or(UpstreamFault::Closed)?;
                send(upstream, &bytes).await.map_err(UpstreamFault::Io)?;
                Ok(None)
            }
            Action::SecureClient => {
                // Bytes pipelined after <starttls/> would be read as if they had come
                // through TLS: the STARTTLS command-injection attack. Refuse them;
                // whitespace (some clients end every element with a newline) is harmless.
                if !only_whitespace_buffered(&mut self.client_framer) {
                    return Err(ClientFault::DataBeforeTls.into());
                }
                self.secure_client().await?;
                self.client_framer.restart();
                Ok(None)
            }
            Action::ConnectUpstream { domain } => {
                self.connect_upstream(&domain).await?;
                Ok(Some(Event::UpstreamConnected))
            }
            Action::SecureUpstream { domain } => {
                if !only_whitespace_buffered(&mut self.upstream_framer) {
                    return Err(UpstreamFault::Unexpected {
                        expected: "nothing before the TLS handshake",
                        got: "data after <proceed/>".into(),
                    }
                    .into());
                }
                let tcp = self
                    .upstream
                    .as_mut()
                    .and_then(Conn::take_plain)
                    .ok_or(UpstreamFault::Closed)?;
                let tls = self.upstream_tls(tcp, &domain).await?;
                self.upstream = Some(Conn::Tls(Box::new(tls)));
                self.upstream_framer.restart();
                Ok(Some(Event::UpstreamSecured))
            }
        }
    }

    async fn secure_client(&mut self) -> Result<(), SessionError> {
        let tcp = self.client.take_plain().ok_or(ClientFault::Closed)?;
        let acceptor = self.acceptor.as_ref().ok_or(ClientFault::Closed)?;
        let handshake = acceptor.accept(tcp);
        let tls = tokio::time::timeout(self.limits().handshake_timeout, handshake)
            .await
            .map_err(|_| ClientFault::Timeout("the TLS handshake"))?
            .map_err(ClientFault::Tls)?;
        self.client = Conn::Tls(Box::new(tls));
        Ok(())
    }

    async fn connect_upstream(&mut self, domain: &str) -> Result<(), SessionError> {
        let upstream = &self.shared.config.upstream;
        let limit = self.limits().handshake_timeout;
        let tcp = tokio::time::timeout(limit, TcpStream::connect(&upstream.address))
            .await
            .map_err(|_| UpstreamFault::Timeout("connecting"))?
            .map_err(|source| UpstreamFault::Connect {
                address: upstream.address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        self.upstream = Some(match upstream.mode {
            UpstreamTls::Direct => Conn::Tls(Box::new(self.upstream_tls(tcp, domain).await?)),
            UpstreamTls::StartTls | UpstreamTls::None => Conn::Plain(tcp),
        });
        Ok(())
    }

    async fn upstream_tls(
        &self,
        tcp: TcpStream,
        domain: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SessionError> {
        let upstream = &self.shared.config.upstream;
        let name = upstream.server_name.as_deref().unwrap_or(domain).to_owned();
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| UpstreamFault::ServerName(name))?;
        let connector = TlsConnector::from(upstream.tls.clone());
        tokio::time::timeout(
            self.limits().handshake_timeout,
            connector.connect(server_name, tcp),
        )
        .await
        .map_err(|_| UpstreamFault::Timeout("in the TLS handshake"))?
        .map_err(|e| UpstreamFault::Tls(e).into())
    }

    async fn read_client(&mut self) -> Result<Frame, SessionError> {
        let limit = Some(self.limits().handshake_timeout);
        match read_frame(
            &mut self.client,
            &mut self.client_framer,
            &mut self.room,
            None,
            limit,
        )
        .await
        {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(ClientFault::Closed.into()),
            Err(ReadError::Frame(e)) => Err(ClientFault::Frame(e).into()),
            Err(ReadError::Io(e)) => Err(ClientFault::Io(e).into()),
            Err(ReadError::Timeout) => Err(ClientFault::Timeout("the stream negotiation").into()),
        }
    }

    async fn read_upstream(&mut self) -> Result<Frame, SessionError> {
        let limit = Some(self.limits().handshake_timeout);
        let upstream = self.upstream.as_mut().ok_or(UpstreamFault::Closed)?;
        match read_frame(
            upstream,
            &mut self.upstream_framer,
            &mut self.room,
            None,
            limit,
        )
        .await
        {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(UpstreamFault::Closed.into()),
            Err(ReadError::Frame(e)) => Err(UpstreamFault::Frame(e).into()),
            Err(ReadError::Io(e)) => Err(UpstreamFault::Io(e).into()),
            Err(ReadError::Timeout) => {
                Err(UpstreamFault::Timeout("waiting for the stream negotiation").into())
            }
        }
    }

    /// Tells the client why, where it can still hear it, and closes both legs.
    async fn fail(&mut self, err: &SessionError) {
        if let Some((condition, text)) = err.client_condition() {
            let mut bytes = Vec::new();
            let header_sent = self
                .machine
                .as_ref()
                .is_some_and(Negotiation::client_header_sent);
            if !header_sent && !matches!(self.client, Conn::Upgrading) {
                bytes.extend(stream::header(&HeaderAttrs {
                    from: self.shared.config.upstream.server_name.as_deref(),
                    id: Some(&stream::new_stream_id()),
                    ..Default::default()
                }));
            }
            bytes.extend(stream::stream_error(condition, Some(&text)));
            let _ =
                tokio::time::timeout(Duration::from_secs(2), send(&mut self.client, &bytes)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.shutdown()).await;
        if let Some(upstream) = self.upstream.as_mut() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), send(upstream, stream::CLOSE)).await;
        }
    }
}

/// Drains whitespace frames; true when nothing else is buffered.
fn only_whitespace_buffered(framer: &mut Framer) -> bool {
    loop {
        match framer.next_frame() {
            Ok(Some(Frame::Whitespace(_))) => continue,
            Ok(None) => return framer.buffered_len() == 0,
            Ok(Some(_)) | Err(_) => return false,
        }
    }
}
