//! XMPP over WebSocket (RFC 7395) toward the client, the usual TCP stream toward the
//! upstream, and the same session in between.
//!
//! ```text
//!  browser ══ws(s)══▶ [handshake: path, Sec-WebSocket-Protocol: xmpp, Origin]
//!     │ one element per text message
//!     ▼
//!  inbound:  <open/> → <stream:stream …>, stanza → its bytes, <close/> → </stream:stream>
//!     │                                  ┌──────────── duplex pipe ────────────┐
//!     └────────────────────────────────▶ │ session (negotiation, relay, policy,│──▶ upstream
//!     ┌───────────────────────────────── │ archive), as for a TLS client       │◀──
//!     ▼                                  └─────────────────────────────────────┘
//!  outbound: header → <open/>, each stanza made self-contained (its namespace declared
//!            on its root) → one text message, </stream:stream> → <close/> + close frame
//! ```
//!
//! The session cannot tell a WebSocket client from a Direct TLS one: everything it
//! enforces (authentication before stanzas, the proven JID, policy before forwarding,
//! archive before delivery) applies unchanged. Each text message must be exactly one
//! element; anything else ends the connection with a `<not-well-formed/>` stream error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use crate::conn::Conn;
use crate::framer::{Frame, FrameError, FrameLimits, Framer, STREAMS_NS};
use crate::inspect::Inspector;
use crate::io::{BoxIo, READ_CHUNK};
use crate::session::{self, Shared};
use crate::stream::{self, HeaderAttrs, NS_SASL};
use crate::xml::Element;

/// RFC 7395's framing namespace (`<open/>`, `<close/>`).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// What a WebSocket listener accepts besides the TLS settings every listener has.
#[derive(Debug, Clone)]
pub struct WebSocketOptions {
    /// The HTTP path of the endpoint, such as `/xmpp-websocket`.
    pub path: String,
    /// Allowed `Origin` values (`https://chat.example.test`). Empty: a request without
    /// `Origin` (not a browser) or whose origin names the host it was sent to.
    pub origins: Vec<String>,
}

/// Bytes buffered between the WebSocket pumps and the session, per direction.
const PIPE_BYTES: usize = 64 * 1024;

/// Serves one WebSocket connection: TLS (unless the listener is plain, behind a TLS
/// terminating reverse proxy on loopback), the HTTP upgrade, then the session.
#[allow(clippy::result_large_err)] // the upgrade callback's error type is tungstenite's
pub(crate) async fn serve<I: Inspector>(
    tcp: TcpStream,
    client_addr: SocketAddr,
    conn_id: u64,
    acceptor: Option<TlsAcceptor>,
    options: Arc<WebSocketOptions>,
    shared: Arc<Shared<I>>,
) {
    let _ = tcp.set_nodelay(true);
    let limits = shared.config.limits;
    let tls = acceptor.is_some();
    let io: BoxIo = match acceptor {
        Some(acceptor) => {
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    info!(cause = %e, "WebSocket client failed the TLS handshake");
                    return;
                }
                Err(_) => {
                    info!("WebSocket client did not finish the TLS handshake in time");
                    return;
                }
            }
        }
        None => Box::new(tcp),
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(limits.frame.max_stanza_bytes))
        .max_frame_size(Some(limits.frame.max_stanza_bytes));
    let check = {
        let options = options.clone();
        move |req: &Request, resp: Response| check_upgrade(&options, tls, req, resp)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(io, check, Some(config));
    let ws = match tokio::time::timeout(limits.handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            info!(cause = %e, "WebSocket upgrade refused or failed");
            return;
        }
        Err(_) => {
            info!("WebSocket client did not finish the upgrade in time");
            return;
        }
    };
    let (session_end, pump_end) = tokio::io::duplex(PIPE_BYTES);
    let session = session::run_secured(
        Conn::Tls(Box::new(session_end)),
        client_addr,
        conn_id,
        shared.clone(),
    );
    let pump = pump(ws, pump_end, limits.frame);
    tokio::pin!(session, pump);
    tokio::select! {
        () = &mut session => {
            // The client gets the close handshake's time, no more: a peer that never
            // answers must not keep its connection slot.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut pump).await;
        }
        () = &mut pump => session.await,
    }
}

/// How long a client has to finish the close handshake once its session has ended.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The upgrade request's checks: the configured path, the `xmpp` subprotocol (which the
/// answer echoes, RFC 7395 §3.1), and the origin.
#[allow(clippy::result_large_err)] // the callback type tungstenite asks for
fn check_upgrade(
    options: &WebSocketOptions,
    tls: bool,
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        info!(status = status.as_u16(), why, "WebSocket upgrade refused");
        let mut r = ErrorResponse::new(Some(format!("{why}\n")));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != options.path {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "no XMPP endpoint at this path",
        ));
    }
    let protocols = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|p| p == "xmpp");
    if !protocols {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol must be \"xmpp\" (RFC 7395)",
        ));
    }
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    let host = req.headers().get("host").and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &options.origins, tls) {
        return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    resp.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("xmpp"));
    Ok(resp)
}

/// Whether a browser page at `origin` may open the endpoint. With a list, exactly its
/// entries; without one, only a page served from the host the request was sent to (or a
/// client that sends no `Origin`, which is not a browser).
/// On a wss:// listener (`tls`) that page must itself be https://; behind a
/// TLS-terminating proxy the listener cannot tell, and either scheme is taken.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
    tls: bool,
) -> bool {
    let Some(origin) = origin else {
        return allowed.is_empty();
    };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
    }
    let Some(host) = host else {
        return false;
    };
    let authority = match origin.strip_prefix("https://") {
        Some(a) => Some(a),
        None if tls => None,
        None => origin.strip_prefix("http://"),
    };
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// Moves messages between the WebSocket and the session's pipe until either side ends.
async fn pump<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    pipe: tokio::io::DuplexStream,
    limits: FrameLimits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut from_session, mut to_session) = tokio::io::split(pipe);
    // A new <open/> is due at the start and after SASL <success/> (set by outbound).
    let open_due = AtomicBool::new(true);
    let inbound = async {
        let mut inbound = Inbound::new(limits, &open_due);
        while let Some(msg) = ws_rx.next().await {
            let bytes = match msg {
                Ok(Message::Text(text)) => inbound.translate(text.as_str()),
                Ok(Message::Binary(_)) => Err(FrameError::NotWellFormed {
                    detail: "a binary WebSocket message (RFC 7395 allows text only)".into(),
                }),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match bytes {
                Ok(bytes) => {
                    if to_session.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // Bytes no stream may hold: the session ends as for any client that
                    // breaks the XML rules, with a <not-well-formed/> stream error.
                    debug!(cause = %e, "WebSocket message refused");
                    let _ = to_session.write_all(NOT_WELL_FORMED).await;
                    break;
                }
            }
        }
        let _ = to_session.shutdown().await;
    };
    let outbound = async {
        let mut outbound = Outbound::new(limits, &open_due);
        let mut buf = vec![0; READ_CHUNK];
        'read: loop {
            let n = match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Some(chunk) = buf.get(..n) else { break };
            for text in outbound.translate(chunk) {
                if ws_tx.send(Message::text(text)).await.is_err() {
                    break 'read;
                }
            }
            if outbound.ended {
                break;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
        let _ = ws_tx.close().await;
    };
    tokio::join!(inbound, outbound);
}

/// What the session reads after a message that breaks RFC 7395: not XML, so its framer
/// refuses it and the client gets `<not-well-formed/>`.
const NOT_WELL_FORMED: &[u8] = b"<<";

/// A stream header in the usual form, for checking a client's message against.
const FRAME_SCOPE: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// Client → session: each text message checked to be one element and rewritten as a
/// stream's bytes.
struct Inbound<'a> {
    limits: FrameLimits,
    opened: bool,
    /// Whether an `<open/>` may come now (at the start, and after SASL `<success/>`):
    /// elsewhere it would wrap the messages after it in one element the session does
    /// not read as stanzas.
    open_due: &'a AtomicBool,
}

impl<'a> Inbound<'a> {
    fn new(limits: FrameLimits, open_due: &'a AtomicBool) -> Inbound<'a> {
        Inbound {
            limits,
            opened: false,
            open_due,
        }
    }

    fn translate(&mut self, text: &str) -> Result<Vec<u8>, FrameError> {
        if text.trim().is_empty() {
            // Whitespace keepalives carry nothing (RFC 7395 uses WebSocket pings).
            return Ok(Vec::new());
        }
        let (element, raw) = one_element(text, self.limits)?;
        if element.ns == NS_FRAMING && element.name == "open" {
            if !self.open_due.swap(false, Ordering::AcqRel) {
                return Err(FrameError::NotWellFormed {
                    detail: "<open/> in the middle of a stream".into(),
                });
            }
            if element.attr("version") != Some("1.0") {
                return Err(FrameError::NotWellFormed {
                    detail: "<open/> without version='1.0' (RFC 7395 §3.3.1)".into(),
                });
            }
            self.opened = true;
            return Ok(stream::header(&HeaderAttrs {
                to: element.attr("to"),
                from: element.attr("from"),
                lang: element.attr("xml:lang"),
                id: None,
            }));
        }
        if !self.opened {
            return Err(FrameError::NotWellFormed {
                detail: format!("<{}/> before <open/>", element.name),
            });
        }
        if element.ns == NS_FRAMING && element.name == "close" {
            return Ok(stream::CLOSE.to_vec());
        }
        if element.ns == NS_FRAMING {
            return Err(FrameError::NotWellFormed {
                detail: format!("unknown framing element <{}/>", element.name),
            });
        }
        // RFC 7395 frames streams with <open/> and <close/>: of the streams namespace
        // only an error may come (a <stream:stream> element would restart the stream).
        if element.ns == STREAMS_NS && element.name != "error" {
            return Err(FrameError::NotWellFormed {
                detail: format!(
                    "<{}/> of the streams namespace in a WebSocket message",
                    element.name
                ),
            });
        }
        Ok(raw)
    }
}

/// The one element `text` holds, parsed as a depth-1 element of an ordinary stream, and
/// its bytes. More than one element, or a part of one, is not well-formed here.
fn one_element(text: &str, limits: FrameLimits) -> Result<(Element, Vec<u8>), FrameError> {
    let mut framer = Framer::new(limits);
    framer.push(FRAME_SCOPE);
    framer.push(text.as_bytes());
    let mut found = None;
    loop {
        match framer.next_frame()? {
            Some(Frame::StreamHeader(_) | Frame::Whitespace(_)) => {}
            Some(Frame::Stanza(s)) if found.is_none() => found = Some(s),
            Some(_) => {
                return Err(FrameError::NotWellFormed {
                    detail: "a WebSocket message holds more than one element".into(),
                })
            }
            None => break,
        }
    }
    if framer.buffered_len() > 0 {
        return Err(FrameError::NotWellFormed {
            detail: "a WebSocket message ends inside an element".into(),
        });
    }
    let stanza = found.ok_or_else(|| FrameError::NotWellFormed {
        detail: "an empty WebSocket message".into(),
    })?;
    Ok((stanza.root, stanza.raw.to_vec()))
}

/// Session → client: the bytes of an XMPP stream cut into RFC 7395 messages.
struct Outbound<'a> {
    framer: Framer,
    /// The stream ended (`</stream:stream>` went out as `<close/>`).
    ended: bool,
    open_due: &'a AtomicBool,
}

impl<'a> Outbound<'a> {
    fn new(limits: FrameLimits, open_due: &'a AtomicBool) -> Outbound<'a> {
        // These bytes are Custos's own, and a stanza it rewrote (escaped, redacted,
        // declarations added) may be larger than the client could send.
        let limits = FrameLimits {
            max_stanza_bytes: limits.max_stanza_bytes.saturating_mul(8),
            ..limits
        };
        Outbound {
            framer: Framer::new(limits),
            ended: false,
            open_due,
        }
    }

    /// The messages the bytes complete.
    fn translate(&mut self, bytes: &[u8]) -> Vec<String> {
        self.framer.push(bytes);
        let mut out = Vec::new();
        while !self.ended {
            match self.framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Whitespace(_))) => {}
                Ok(Some(Frame::StreamHeader(h))) => {
                    let mut open = format!("<open xmlns='{NS_FRAMING}' version='1.0'");
                    for (name, value) in [
                        ("from", h.from.as_deref()),
                        ("id", h.id.as_deref()),
                        ("xml:lang", h.lang.as_deref()),
                    ] {
                        if let Some(v) = value {
                            open.push_str(&format!(" {name}='{}'", quick_xml::escape::escape(v)));
                        }
                    }
                    open.push_str("/>");
                    out.push(open);
                }
                Ok(Some(Frame::Stanza(s))) => {
                    let restart = s.root.ns == NS_SASL && s.root.name == "success";
                    out.push(self_contained(s.root, &s.raw));
                    if restart {
                        // The session writes a new stream header next (RFC 6120 §6.4.6),
                        // and the client opens again.
                        self.framer.restart();
                        self.open_due.store(true, Ordering::Release);
                    }
                }
                Ok(Some(Frame::StreamEnd(_))) => {
                    out.push(format!("<close xmlns='{NS_FRAMING}'/>"));
                    self.ended = true;
                }
                Err(e) => {
                    // Only Custos writes these bytes; a failure here is a bug, and the
                    // client gets a closed stream rather than garbage.
                    tracing::error!(cause = %e, "cannot frame the stream toward a WebSocket client");
                    out.push(format!("<close xmlns='{NS_FRAMING}'/>"));
                    self.ended = true;
                }
            }
        }
        out
    }
}

/// RFC 7395 §3.3.3: every message is a document of its own, so the stanza's namespace
/// (inherited from the stream header on a TCP stream) is declared on its root.
fn self_contained(mut root: Element, raw: &[u8]) -> String {
    let declared = match &root.prefix {
        None => root.attrs.iter().any(|(k, _)| k == "xmlns") || root.ns.is_empty(),
        Some(p) => {
            let attr = format!("xmlns:{p}");
            root.attrs.iter().any(|(k, _)| *k == attr)
        }
    };
    if declared {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let ns = root.ns.clone();
    let attr = match &root.prefix {
        None => "xmlns".to_owned(),
        Some(p) => format!("xmlns:{p}"),
    };
    root.attrs.push((attr.into(), ns.into_owned()));
    let mut out = Vec::with_capacity(raw.len() + 40);
    root.write_to(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrameLimits {
        FrameLimits::default()
    }

    #[test]
    fn open_stanzas_and_close_become_a_stream() {
        let due = AtomicBool::new(true);
        let mut i = Inbound::new(limits(), &due);
        let open = i
            .translate("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0' xml:lang='en'/>")
            .unwrap_or_default();
        let open = String::from_utf8_lossy(&open).into_owned();
        assert!(open.starts_with("<stream:stream"), "{open}");
        assert!(open.contains("to='example.test'") && open.contains("xml:lang='en'"));
        let msg = "<message xmlns='jabber:client' to='b@example.test'><body>hi</body></message>";
        assert_eq!(i.translate(msg).ok(), Some(msg.as_bytes().to_vec()));
        assert_eq!(i.translate("  \n").ok(), Some(Vec::new()));
        let again =
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0'/>";
        assert!(i.translate(again).is_err(), "not due mid-stream");
        due.store(true, Ordering::Release);
        assert!(i.translate(again).is_ok(), "due after SASL success");
        assert_eq!(
            i.translate("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
                .ok(),
            Some(stream::CLOSE.to_vec())
        );
    }

    #[test]
    fn a_message_must_be_exactly_one_element_after_open() {
        let due = AtomicBool::new(true);
        let mut i = Inbound::new(limits(), &due);
        assert!(i.translate("<message/>").is_err(), "before <open/>");
        let due = AtomicBool::new(true);
        let mut i = Inbound::new(limits(), &due);
        assert!(i
            .translate("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='x' version='1.0'/>")
            .is_ok());
        for bad in [
            "<message><body>a</body></message><message/>",
            "<message><body>unfinished",
            "</message>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            "text",
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='x'/>",
            "<frob xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            // A second <open/> mid-stream would wrap what follows in one element.
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='x' version='1.0'/>",
            // A whole stream element would restart the session's stream in it.
            "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='urn:evil'><message/></s:stream>",
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>",
        ] {
            let due = AtomicBool::new(true);
            let mut i = Inbound::new(limits(), &due);
            let _ = i.translate(
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='x' version='1.0'/>",
            );
            assert!(i.translate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_stream_toward_the_client_becomes_messages_each_a_document() {
        let due = AtomicBool::new(false);
        let mut o = Outbound::new(limits(), &due);
        let mut got = o.translate(
            b"<stream:stream from='example.test' id='s1' version='1.0' xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams'><stream:features><mechanisms \
              xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>\
              </stream:features> <success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        );
        // After <success/>, the next stream header comes (split across writes here).
        got.extend(o.translate(b"<stream:stream from='example.test' id='s2' version='1.0' "));
        got.extend(o.translate(
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
              <message to='a@example.test'><body>x &amp; y</body></message>\
              <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
              </stream:stream>",
        ));
        assert_eq!(
            got,
            [
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' version='1.0' from='example.test' id='s1'/>",
                "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>",
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' version='1.0' from='example.test' id='s2'/>",
                "<message to='a@example.test' xmlns='jabber:client'><body>x &amp; y</body></message>",
                "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            ]
        );
        assert!(o.ended);
        assert!(
            due.load(Ordering::Acquire),
            "after <success/> the client opens again"
        );
        // Each message parses alone with no stream around it.
        for m in &got {
            let mut f = Framer::new(limits());
            f.push(b"<s:stream xmlns:s='http://etherx.jabber.org/streams'>");
            f.push(m.as_bytes());
            assert!(f.next_frame().is_ok());
            assert!(matches!(f.next_frame(), Ok(Some(Frame::Stanza(_)))), "{m}");
        }
    }

    #[test]
    fn origins() {
        let none: Vec<String> = Vec::new();
        let list = vec!["https://chat.example.test".to_owned()];
        let ok = |o: Option<&str>, h: Option<&str>, l: &[String], tls: bool| {
            origin_allowed(o, h, l, tls)
        };
        assert!(ok(None, Some("x"), &none, false));
        assert!(!ok(None, Some("x"), &list, false));
        assert!(ok(
            Some("https://chat.example.test"),
            Some("x"),
            &list,
            true
        ));
        assert!(!ok(Some("https://evil.test"), Some("x"), &list, true));
        // Without a list: the host the request was sent to.
        let host = Some("127.0.0.1:8080");
        assert!(ok(Some("http://127.0.0.1:8080"), host, &none, false));
        assert!(ok(Some("https://127.0.0.1:8080"), host, &none, true));
        assert!(
            !ok(Some("http://127.0.0.1:8080"), host, &none, true),
            "an http page on wss"
        );
        assert!(!ok(Some("https://evil.test"), host, &none, false));
        assert!(!ok(Some("null"), Some("127.0.0.1"), &none, false));
    }
}
