//! [`WsClient`]: a raw XMPP-over-WebSocket client (RFC 7395) for the checks no browser
//! client makes on purpose: refused upgrades, messages that break the framing rules,
//! and the bytes of each message.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use custos_proxy::framer::{Frame, FrameLimits, Framer};
use custos_proxy::xml::Element;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::rig::BoxError;

/// Any byte stream a WebSocket can run on here: TCP, or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// How long each wait for a message lasts.
const WAIT: Duration = Duration::from_secs(10);

/// The framing namespace of RFC 7395.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// Where and how to open the WebSocket.
#[derive(Debug, Clone)]
pub struct WsTarget {
    pub addr: SocketAddr,
    /// `Some(ca)`: wss:// with this trust anchor and the name `example.test`.
    pub tls_ca: Option<std::path::PathBuf>,
    pub path: String,
    /// The `Sec-WebSocket-Protocol` offered (`None`: the header is left out).
    pub protocol: Option<String>,
    pub origin: Option<String>,
}

impl WsTarget {
    pub fn new(addr: SocketAddr, tls_ca: Option<&Path>) -> WsTarget {
        WsTarget {
            addr,
            tls_ca: tls_ca.map(Path::to_owned),
            path: "/xmpp-websocket".into(),
            protocol: Some("xmpp".into()),
            origin: None,
        }
    }
}

pub struct WsClient {
    ws: WebSocketStream<Box<dyn Transport>>,
    /// Every text message received, in order.
    pub received: Vec<String>,
    /// The bound JID, once bound.
    pub jid: Option<String>,
}

/// The HTTP status of a refused upgrade, or the client.
pub enum Upgrade {
    Open(Box<WsClient>),
    Refused(u16),
}

impl WsClient {
    /// Opens the WebSocket; a refused upgrade is `Upgrade::Refused(status)`.
    pub async fn open(target: &WsTarget) -> Result<Upgrade, BoxError> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let (io, scheme): (Box<dyn Transport>, &str) = match &target.tls_ca {
            Some(ca) => {
                let mut config = crate::certs::client_tls_config(ca)?;
                // What a browser offers for wss://.
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(
                        rustls::pki_types::ServerName::try_from("example.test".to_owned())?,
                        tcp,
                    )
                    .await?;
                (Box::new(tls), "wss")
            }
            None => (Box::new(tcp), "ws"),
        };
        let url = format!("{scheme}://{}{}", target.addr, target.path);
        let mut request = url.into_client_request()?;
        if let Some(p) = &target.protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p)?);
        }
        if let Some(o) = &target.origin {
            request
                .headers_mut()
                .insert("origin", HeaderValue::from_str(o)?);
        }
        let upgrade = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, io))
            .await
            .map_err(|_| "WebSocket upgrade timed out")?;
        match upgrade {
            Ok((ws, response)) => {
                let proto = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok());
                if proto != Some("xmpp") {
                    return Err(format!("the answer names subprotocol {proto:?}").into());
                }
                Ok(Upgrade::Open(Box::new(WsClient {
                    ws,
                    received: Vec::new(),
                    jid: None,
                })))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                Ok(Upgrade::Refused(r.status().as_u16()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the WebSocket, which must be accepted.
    pub async fn connect(target: &WsTarget) -> Result<WsClient, BoxError> {
        match WsClient::open(target).await? {
            Upgrade::Open(c) => Ok(*c),
            Upgrade::Refused(status) => Err(format!("upgrade refused with {status}").into()),
        }
    }

    pub async fn send(&mut self, text: &str) -> Result<(), BoxError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.ws.send(Message::binary(bytes.to_vec())).await?;
        Ok(())
    }

    /// The next text message within `limit`; `None` when the connection closed.
    pub async fn next_text(&mut self, limit: Duration) -> Result<Option<String>, BoxError> {
        loop {
            let msg = tokio::time::timeout(limit, self.ws.next())
                .await
                .map_err(|_| "no WebSocket message in time")?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str().to_owned();
                    self.received.push(t.clone());
                    return Ok(Some(t));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads messages until one parses (alone, as RFC 7395 requires) to an element that
    /// `want` accepts.
    pub async fn until(&mut self, want: impl Fn(&Element) -> bool) -> Result<Element, BoxError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self
                .next_text(left)
                .await?
                .ok_or_else(|| format!("closed; received {:#?}", self.received))?;
            let element = parse_alone(&text)?;
            if want(&element) {
                return Ok(element);
            }
        }
    }

    /// `<open/>`, then the features.
    pub async fn open_stream(&mut self) -> Result<Element, BoxError> {
        self.send(&format!(
            "<open xmlns='{NS_FRAMING}' to='example.test' version='1.0'/>"
        ))
        .await?;
        self.until(|e| e.name == "open").await?;
        self.until(|e| e.name == "features").await
    }

    /// Open, SASL PLAIN, open again, bind `resource`: the bound JID.
    pub async fn login(
        &mut self,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Result<String, BoxError> {
        self.open_stream().await?;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))
        .await?;
        let answer = self
            .until(|e| e.name == "success" || e.name == "failure")
            .await?;
        if answer.name != "success" {
            return Err(format!("authentication failed for {user}").into());
        }
        self.open_stream().await?;
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await?;
        let result = self
            .until(|e| e.name == "iq" && e.attr("id") == Some("bind-1"))
            .await?;
        let jid = result
            .children()
            .find(|c| c.name == "bind")
            .and_then(|b| b.children().find(|c| c.name == "jid"))
            .map(Element::text)
            .ok_or("no JID in the bind result")?;
        self.send("<presence xmlns='jabber:client'/>").await?;
        self.jid = Some(jid.clone());
        Ok(jid)
    }

    /// `<close/>`, then waits for the server's.
    pub async fn close(&mut self) -> Result<(), BoxError> {
        self.send(&format!("<close xmlns='{NS_FRAMING}'/>")).await?;
        self.until(|e| e.name == "close").await?;
        Ok(())
    }
}

/// One message parsed on its own, with no stream around it: only what it declares itself.
pub fn parse_alone(text: &str) -> Result<Element, BoxError> {
    let mut framer = Framer::new(FrameLimits::default());
    // A header that declares nothing a message could lean on but the streams prefix
    // under another name.
    framer.push(b"<x:stream xmlns:x='http://etherx.jabber.org/streams'>");
    framer.push(text.as_bytes());
    let mut found = None;
    while let Some(frame) = framer.next_frame().map_err(|e| format!("{text}: {e}"))? {
        if let Frame::Stanza(s) = frame {
            if found.is_some() {
                return Err(format!("more than one element in {text}").into());
            }
            found = Some(s.root);
        }
    }
    let element = found.ok_or_else(|| format!("no complete element in {text}"))?;
    if element.ns.is_empty() {
        return Err(format!("{text}: its namespace is not declared in the message").into());
    }
    Ok(element)
}
