//! Stream negotiation up to the point where Custos can relay: the client's stream header,
//! STARTTLS on the client leg, the connection to the upstream, STARTTLS on the upstream
//! leg, and the upstream's post-TLS features offered (filtered) to the client.
//!
//! A sans-I/O state machine: [`Negotiation::handle`] takes an [`Event`] and returns the
//! next state and the [`Action`]s the driver must perform, so every path is tested without
//! sockets. Each state is a struct named after what it waits for and holds only the data
//! that exists in that state.
//!
//! ```text
//!  ExpectClientHeader{secured:false} ──header──▶ ExpectStartTls ──<starttls/>──▶ (client TLS)
//!        │                                                                           │
//!        ▼ (direct TLS listener)                                                     ▼
//!  ExpectClientHeader{secured:true} ──header──▶ ExpectUpstreamConnection ──connected──▶
//!  ExpectUpstreamHeader ──▶ ExpectUpstreamFeatures ──(STARTTLS needed)──▶ ExpectProceed
//!        ▲                        │                                         │
//!        └──── ExpectUpstreamTls ◀┼─────────────────────────────────────────┘
//!                                 ▼ (secured)
//!                              Relaying
//! ```

use crate::error::{ClientFault, SessionError, UpstreamFault};
use crate::features::filter_features;
use crate::framer::{Frame, StreamHeader};
use crate::stream::{self, HeaderAttrs, NS_TLS};

/// How the proxy reaches the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP, then STARTTLS (RFC 6120 §5).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    Direct,
    /// No TLS: only to a co-located server on loopback.
    None,
}

/// Something that happened on one of the two legs.
#[derive(Debug)]
pub enum Event {
    Client(Frame),
    Upstream(Frame),
    /// The TCP connection (and for Direct TLS, the TLS session) to the upstream is up.
    UpstreamConnected,
    /// The upstream TLS handshake after `<proceed/>` completed.
    UpstreamSecured,
}

/// What the driver must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    SendClient(Vec<u8>),
    SendUpstream(Vec<u8>),
    /// Run the TLS handshake on the client socket, then expect a new stream header.
    SecureClient,
    /// Connect to the upstream (Direct TLS included), then feed [`Event::UpstreamConnected`].
    ConnectUpstream {
        domain: String,
    },
    /// Run the TLS handshake on the upstream socket, then feed [`Event::UpstreamSecured`].
    SecureUpstream {
        domain: String,
    },
}

/// Which leg the machine reads from next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Client,
    Upstream,
    /// Waiting for the driver to finish an action; no frame is expected.
    Driver,
}

/// The stream as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStream {
    /// The domain the client wants to talk to (the header's `to`).
    pub domain: String,
    pub lang: Option<String>,
}

#[derive(Debug)]
pub struct ExpectClientHeader {
    secured: bool,
}
#[derive(Debug)]
pub struct ExpectStartTls;
#[derive(Debug)]
pub struct ExpectUpstreamConnection {
    stream: ClientStream,
}
#[derive(Debug)]
pub struct ExpectUpstreamHeader {
    stream: ClientStream,
    needs_starttls: bool,
}
#[derive(Debug)]
pub struct ExpectUpstreamFeatures {
    stream: ClientStream,
    needs_starttls: bool,
}
#[derive(Debug)]
pub struct ExpectProceed {
    stream: ClientStream,
}
#[derive(Debug)]
pub struct ExpectUpstreamTls {
    stream: ClientStream,
}
/// Negotiation is over: both legs are secured and the client has the upstream's features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relaying {
    pub stream: ClientStream,
}

#[derive(Debug)]
pub enum Negotiation {
    ExpectClientHeader(ExpectClientHeader),
    ExpectStartTls(ExpectStartTls),
    ExpectUpstreamConnection(ExpectUpstreamConnection),
    ExpectUpstreamHeader(ExpectUpstreamHeader),
    ExpectUpstreamFeatures(ExpectUpstreamFeatures),
    ExpectProceed(ExpectProceed),
    ExpectUpstreamTls(ExpectUpstreamTls),
    Relaying(Relaying),
}

/// Fixed facts the machine needs from configuration.
#[derive(Debug, Clone)]
pub struct NegotiationConfig {
    pub upstream_tls: UpstreamTls,
    /// Domain used when a client's header has no `to`.
    pub default_domain: Option<String>,
}

type Step = Result<(Negotiation, Vec<Action>), SessionError>;

impl Negotiation {
    /// A fresh negotiation; `secured` when the listener is Direct TLS and the handshake is done.
    pub fn new(secured: bool) -> Negotiation {
        Negotiation::ExpectClientHeader(ExpectClientHeader { secured })
    }

    pub fn awaits(&self) -> Leg {
        match self {
            Negotiation::ExpectClientHeader(_) | Negotiation::ExpectStartTls(_) => Leg::Client,
            Negotiation::ExpectUpstreamHeader(_)
            | Negotiation::ExpectUpstreamFeatures(_)
            | Negotiation::ExpectProceed(_) => Leg::Upstream,
            Negotiation::ExpectUpstreamConnection(_)
            | Negotiation::ExpectUpstreamTls(_)
            | Negotiation::Relaying(_) => Leg::Driver,
        }
    }

    /// Whether Custos has already written a stream header to the client, so a stream error
    /// can follow directly (RFC 6120 §4.9.1.1 wants a header before any error).
    pub fn client_header_sent(&self) -> bool {
        !matches!(self, Negotiation::ExpectClientHeader(_))
    }

    pub fn handle(self, event: Event, config: &NegotiationConfig) -> Step {
        // Whitespace keepalives are legal between elements in every state.
        if matches!(
            event,
            Event::Client(Frame::Whitespace(_)) | Event::Upstream(Frame::Whitespace(_))
        ) {
            return Ok((self, Vec::new()));
        }
        match self {
            Negotiation::ExpectClientHeader(s) => s.handle(event, config),
            Negotiation::ExpectStartTls(s) => s.handle(event),
            Negotiation::ExpectUpstreamConnection(s) => s.handle(event, config),
            Negotiation::ExpectUpstreamHeader(s) => s.handle(event),
            Negotiation::ExpectUpstreamFeatures(s) => s.handle(event),
            Negotiation::ExpectProceed(s) => s.handle(event),
            Negotiation::ExpectUpstreamTls(s) => s.handle(event),
            Negotiation::Relaying(s) => Err(unexpected_event(&Negotiation::Relaying(s), &event)),
        }
    }
}

impl ExpectClientHeader {
    fn handle(self, event: Event, config: &NegotiationConfig) -> Step {
        let header = match event {
            Event::Client(Frame::StreamHeader(h)) => h,
            other => {
                return Err(unexpected_event(
                    &Negotiation::ExpectClientHeader(self),
                    &other,
                ))
            }
        };
        let stream = client_stream(&header, config)?;
        let mut actions = vec![Action::SendClient(stream::header(&HeaderAttrs {
            from: Some(&stream.domain),
            to: None,
            id: Some(&stream::new_stream_id()),
            lang: stream.lang.as_deref(),
        }))];
        if self.secured {
            actions.push(Action::ConnectUpstream {
                domain: stream.domain.clone(),
            });
            Ok((
                Negotiation::ExpectUpstreamConnection(ExpectUpstreamConnection { stream }),
                actions,
            ))
        } else {
            actions.push(Action::SendClient(stream::STARTTLS_FEATURES.to_vec()));
            Ok((Negotiation::ExpectStartTls(ExpectStartTls), actions))
        }
    }
}

fn client_stream(
    header: &StreamHeader,
    config: &NegotiationConfig,
) -> Result<ClientStream, SessionError> {
    header
        .require_client_content()
        .map_err(ClientFault::Frame)?;
    let domain = header
        .to
        .clone()
        .filter(|d| !d.trim().is_empty())
        .or_else(|| config.default_domain.clone())
        .ok_or(ClientFault::NoDomain)?;
    Ok(ClientStream {
        domain,
        lang: header.lang.clone(),
    })
}

impl ExpectStartTls {
    fn handle(self, event: Event) -> Step {
        match event {
            Event::Client(Frame::Stanza(s)) if s.root.name == "starttls" && s.root.ns == NS_TLS => {
                Ok((
                    Negotiation::ExpectClientHeader(ExpectClientHeader { secured: true }),
                    vec![
                        Action::SendClient(stream::PROCEED.to_vec()),
                        Action::SecureClient,
                    ],
                ))
            }
            Event::Client(Frame::Stanza(s)) => Err(ClientFault::Unexpected {
                expected: "<starttls/>",
                got: format!("<{}/>", s.root.name),
            }
            .into()),
            Event::Client(Frame::StreamEnd(_)) => Err(ClientFault::Closed.into()),
            other => Err(unexpected_event(&Negotiation::ExpectStartTls(self), &other)),
        }
    }
}

impl ExpectUpstreamConnection {
    fn handle(self, event: Event, config: &NegotiationConfig) -> Step {
        match event {
            Event::UpstreamConnected => Ok(upstream_header(
                self.stream,
                config.upstream_tls == UpstreamTls::StartTls,
            )),
            other => Err(unexpected_event(
                &Negotiation::ExpectUpstreamConnection(self),
                &other,
            )),
        }
    }
}

/// Custos writes its own header on the upstream leg (it is the initiating entity there).
fn upstream_header(stream: ClientStream, needs_starttls: bool) -> (Negotiation, Vec<Action>) {
    let header = stream::header(&HeaderAttrs {
        from: None,
        to: Some(&stream.domain),
        id: None,
        lang: stream.lang.as_deref(),
    });
    (
        Negotiation::ExpectUpstreamHeader(ExpectUpstreamHeader {
            stream,
            needs_starttls,
        }),
        vec![Action::SendUpstream(header)],
    )
}

impl ExpectUpstreamHeader {
    fn handle(self, event: Event) -> Step {
        match event {
            Event::Upstream(Frame::StreamHeader(h)) => {
                h.require_client_content().map_err(UpstreamFault::Frame)?;
                Ok((
                    Negotiation::ExpectUpstreamFeatures(ExpectUpstreamFeatures {
                        stream: self.stream,
                        needs_starttls: self.needs_starttls,
                    }),
                    Vec::new(),
                ))
            }
            other => Err(upstream_unexpected("a stream header", &other)),
        }
    }
}

impl ExpectUpstreamFeatures {
    fn handle(self, event: Event) -> Step {
        let features = match event {
            Event::Upstream(Frame::Stanza(s))
                if s.root.name == "features" && s.root.ns == stream::NS_STREAMS =>
            {
                s
            }
            other => return Err(upstream_unexpected("<stream:features/>", &other)),
        };
        if self.needs_starttls {
            if features.root.child("starttls", NS_TLS).is_none() {
                return Err(UpstreamFault::NoStartTls.into());
            }
            return Ok((
                Negotiation::ExpectProceed(ExpectProceed {
                    stream: self.stream,
                }),
                vec![Action::SendUpstream(stream::STARTTLS.to_vec())],
            ));
        }
        let mut root = features.root;
        let bytes = if filter_features(&mut root) {
            let mut out = Vec::with_capacity(features.raw.len());
            root.write_to(&mut out);
            out
        } else {
            features.raw.to_vec()
        };
        Ok((
            Negotiation::Relaying(Relaying {
                stream: self.stream,
            }),
            vec![Action::SendClient(bytes)],
        ))
    }
}

impl ExpectProceed {
    fn handle(self, event: Event) -> Step {
        match event {
            Event::Upstream(Frame::Stanza(s))
                if s.root.ns == NS_TLS && s.root.name == "proceed" =>
            {
                let domain = self.stream.domain.clone();
                Ok((
                    Negotiation::ExpectUpstreamTls(ExpectUpstreamTls {
                        stream: self.stream,
                    }),
                    vec![Action::SecureUpstream { domain }],
                ))
            }
            Event::Upstream(Frame::Stanza(s)) if s.root.ns == NS_TLS => {
                Err(UpstreamFault::StartTlsRefused.into())
            }
            other => Err(upstream_unexpected("<proceed/>", &other)),
        }
    }
}

impl ExpectUpstreamTls {
    fn handle(self, event: Event) -> Step {
        match event {
            Event::UpstreamSecured => Ok(upstream_header(self.stream, false)),
            other => Err(unexpected_event(
                &Negotiation::ExpectUpstreamTls(self),
                &other,
            )),
        }
    }
}

fn describe(event: &Event) -> String {
    fn frame(f: &Frame) -> String {
        match f {
            Frame::StreamHeader(_) => "a stream header".into(),
            Frame::Stanza(s) => format!("<{}/>", s.root.name),
            Frame::Whitespace(_) => "whitespace".into(),
            Frame::StreamEnd(_) => "</stream:stream>".into(),
        }
    }
    match event {
        Event::Client(f) | Event::Upstream(f) => frame(f),
        Event::UpstreamConnected => "upstream connected".into(),
        Event::UpstreamSecured => "upstream secured".into(),
    }
}

fn upstream_unexpected(expected: &'static str, event: &Event) -> SessionError {
    match event {
        Event::Upstream(Frame::StreamEnd(_)) => UpstreamFault::Closed.into(),
        other => UpstreamFault::Unexpected {
            expected,
            got: describe(other),
        }
        .into(),
    }
}

fn unexpected_event(state: &Negotiation, event: &Event) -> SessionError {
    let expected = match state {
        Negotiation::ExpectClientHeader(_) => "a stream header",
        Negotiation::ExpectStartTls(_) => "<starttls/>",
        _ => "nothing",
    };
    match event {
        Event::Client(Frame::StreamEnd(_)) => ClientFault::Closed.into(),
        Event::Client(_) => ClientFault::Unexpected {
            expected,
            got: describe(event),
        }
        .into(),
        other => upstream_unexpected(expected, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::{FrameLimits, Framer};

    const CLIENT_HEADER: &str =
        "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    const SERVER_HEADER: &str = "<stream:stream from='example.test' id='up1' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    /// Frames a peer's bytes the way the driver does.
    struct Peer(Framer);

    impl Peer {
        fn new() -> Peer {
            Peer(Framer::new(FrameLimits::default()))
        }
        fn frames(&mut self, bytes: &str) -> Vec<Frame> {
            self.0.push(bytes.as_bytes());
            let mut out = Vec::new();
            while let Some(f) = self.0.next_frame().expect("well-formed test input") {
                out.push(f);
            }
            out
        }
        fn one(&mut self, bytes: &str) -> Frame {
            let mut frames = self.frames(bytes);
            assert_eq!(frames.len(), 1, "expected one frame from {bytes}");
            frames.remove(0)
        }
    }

    fn config(mode: UpstreamTls) -> NegotiationConfig {
        NegotiationConfig {
            upstream_tls: mode,
            default_domain: None,
        }
    }

    fn sent_to_client(actions: &[Action]) -> String {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendClient(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn full_starttls_negotiation_on_both_legs() {
        let cfg = config(UpstreamTls::StartTls);
        let mut client = Peer::new();
        let mut upstream = Peer::new();

        let m = Negotiation::new(false);
        assert_eq!(m.awaits(), Leg::Client);
        let (m, actions) = m
            .handle(Event::Client(client.one(CLIENT_HEADER)), &cfg)
            .unwrap();
        let out = sent_to_client(&actions);
        assert!(out.contains("from='example.test'"), "{out}");
        assert!(out
            .contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"));

        let (m, actions) = m
            .handle(
                Event::Client(client.one("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
                &cfg,
            )
            .unwrap();
        assert_eq!(
            actions,
            vec![
                Action::SendClient(stream::PROCEED.to_vec()),
                Action::SecureClient
            ]
        );
        client.0.restart();

        let (m, actions) = m
            .handle(Event::Client(client.one(CLIENT_HEADER)), &cfg)
            .unwrap();
        assert!(
            matches!(actions.last(), Some(Action::ConnectUpstream { domain }) if domain == "example.test")
        );
        assert_eq!(m.awaits(), Leg::Driver);

        let (m, actions) = m.handle(Event::UpstreamConnected, &cfg).unwrap();
        assert!(
            matches!(&actions[..], [Action::SendUpstream(h)] if String::from_utf8_lossy(h).contains("to='example.test'"))
        );
        let (m, _) = m
            .handle(Event::Upstream(upstream.one(SERVER_HEADER)), &cfg)
            .unwrap();
        let (m, actions) = m
            .handle(
                Event::Upstream(upstream.one(
                    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
                )),
                &cfg,
            )
            .unwrap();
        assert_eq!(
            actions,
            vec![Action::SendUpstream(stream::STARTTLS.to_vec())]
        );
        let (m, actions) = m
            .handle(
                Event::Upstream(upstream.one("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
                &cfg,
            )
            .unwrap();
        assert_eq!(
            actions,
            vec![Action::SecureUpstream {
                domain: "example.test".into()
            }]
        );
        upstream.0.restart();
        let (m, _) = m.handle(Event::UpstreamSecured, &cfg).unwrap();
        let (m, _) = m
            .handle(Event::Upstream(upstream.one(SERVER_HEADER)), &cfg)
            .unwrap();
        let (m, actions) = m
            .handle(
                Event::Upstream(upstream.one(
                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
                     </mechanisms></stream:features>",
                )),
                &cfg,
            )
            .unwrap();
        let out = sent_to_client(&actions);
        assert!(out.contains("SCRAM-SHA-1<"), "{out}");
        assert!(!out.contains("PLUS"), "{out}");
        match m {
            Negotiation::Relaying(r) => {
                assert_eq!(r.stream.domain, "example.test");
                assert_eq!(r.stream.lang.as_deref(), Some("en"));
            }
            other => panic!("expected Relaying, got {other:?}"),
        }
    }

    #[test]
    fn direct_tls_listener_skips_client_starttls() {
        let cfg = config(UpstreamTls::Direct);
        let mut client = Peer::new();
        let (m, actions) = Negotiation::new(true)
            .handle(Event::Client(client.one(CLIENT_HEADER)), &cfg)
            .unwrap();
        assert!(!sent_to_client(&actions).contains("starttls"));
        assert!(matches!(
            actions.last(),
            Some(Action::ConnectUpstream { .. })
        ));
        // A Direct TLS upstream needs no STARTTLS: the first features are relayed.
        let mut upstream = Peer::new();
        let (m, _) = m.handle(Event::UpstreamConnected, &cfg).unwrap();
        let (m, _) = m
            .handle(Event::Upstream(upstream.one(SERVER_HEADER)), &cfg)
            .unwrap();
        let (m, _) = m
            .handle(Event::Upstream(upstream.one("<stream:features/>")), &cfg)
            .unwrap();
        assert!(matches!(m, Negotiation::Relaying(_)));
    }

    #[test]
    fn client_skipping_starttls_is_refused() {
        let cfg = config(UpstreamTls::StartTls);
        let mut client = Peer::new();
        let (m, _) = Negotiation::new(false)
            .handle(Event::Client(client.one(CLIENT_HEADER)), &cfg)
            .unwrap();
        let err = m
            .handle(
                Event::Client(client.one("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")),
                &cfg,
            )
            .unwrap_err();
        let (condition, _) = err.client_condition().unwrap();
        assert_eq!(condition, "policy-violation");
    }

    #[test]
    fn upstream_without_starttls_fails_with_remote_connection_failed() {
        let cfg = config(UpstreamTls::StartTls);
        let mut client = Peer::new();
        let mut upstream = Peer::new();
        let (m, _) = Negotiation::new(true)
            .handle(Event::Client(client.one(CLIENT_HEADER)), &cfg)
            .unwrap();
        let (m, _) = m.handle(Event::UpstreamConnected, &cfg).unwrap();
        let (m, _) = m
            .handle(Event::Upstream(upstream.one(SERVER_HEADER)), &cfg)
            .unwrap();
        let err = m
            .handle(Event::Upstream(upstream.one("<stream:features/>")), &cfg)
            .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Upstream(UpstreamFault::NoStartTls)
        ));
        assert_eq!(
            err.client_condition().unwrap().0,
            "remote-connection-failed"
        );
    }

    #[test]
    fn wrong_default_namespace_is_invalid_namespace() {
        let cfg = config(UpstreamTls::StartTls);
        let mut client = Peer::new();
        let err = Negotiation::new(false)
            .handle(
                Event::Client(client.one(
                    "<stream:stream to='example.test' version='1.0' xmlns='jabber:server' \
                     xmlns:stream='http://etherx.jabber.org/streams'>",
                )),
                &cfg,
            )
            .unwrap_err();
        assert_eq!(err.client_condition().unwrap().0, "invalid-namespace");
    }

    #[test]
    fn missing_domain_uses_configured_default_or_fails() {
        let header = "<stream:stream version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
        let err = Negotiation::new(true)
            .handle(
                Event::Client(Peer::new().one(header)),
                &config(UpstreamTls::StartTls),
            )
            .unwrap_err();
        assert_eq!(err.client_condition().unwrap().0, "host-unknown");
        let cfg = NegotiationConfig {
            upstream_tls: UpstreamTls::StartTls,
            default_domain: Some("example.test".into()),
        };
        let (_, actions) = Negotiation::new(true)
            .handle(Event::Client(Peer::new().one(header)), &cfg)
            .unwrap();
        assert!(
            matches!(actions.last(), Some(Action::ConnectUpstream { domain }) if domain == "example.test")
        );
    }

    #[test]
    fn whitespace_keepalives_change_nothing() {
        let cfg = config(UpstreamTls::StartTls);
        let mut client = Peer::new();
        let (m, _) = Negotiation::new(false)
            .handle(Event::Client(client.one(CLIENT_HEADER)), &cfg)
            .unwrap();
        let (m, actions) = m.handle(Event::Client(client.one("  \n")), &cfg).unwrap();
        assert!(actions.is_empty());
        assert!(matches!(m, Negotiation::ExpectStartTls(_)));
    }
}
