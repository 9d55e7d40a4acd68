//! A scripted XMPP client for adversarial scenarios: it writes whatever XML a test gives
//! it, at any point of the stream, which no well-behaved client library would.
//!
//! Direct TLS (XEP-0368) to Custos or to Prosody, trusting only the test CA; SASL PLAIN,
//! resource binding, XEP-0198 enable and resume; raw sends; reads framed with Custos's
//! own framer into elements. Passwords go on the wire base64-encoded and nowhere else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use custos_proxy::framer::{Frame, FrameLimits, Framer};
use custos_proxy::xml::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SM: &str = "urn:xmpp:sm:3";

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// What the peer sent: a top-level element, or the end of its stream.
#[derive(Debug, Clone)]
pub enum Received {
    Element(Element),
    StreamEnd,
}

pub struct Scripted {
    tls: TlsStream<TcpStream>,
    framer: Framer,
    buf: Vec<u8>,
    domain: String,
    /// Everything received so far, as text (stream errors, for assertions).
    pub transcript: String,
    /// The bound full JID, once bound.
    pub jid: Option<String>,
    /// Stanzas handled, for XEP-0198 `h`.
    pub handled: u64,
}

impl Scripted {
    /// Direct TLS to `addr`, stream header, up to the first `<stream:features/>`.
    pub async fn connect(addr: SocketAddr, ca: &Path, domain: &str) -> Result<Scripted, BoxError> {
        let config = crate::certs::client_tls_config(ca)?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from(domain.to_owned())?,
                tcp,
            )
            .await?;
        let mut c = Scripted {
            tls,
            framer: Framer::new(FrameLimits::default()),
            buf: vec![0; 64 * 1024],
            domain: domain.to_owned(),
            transcript: String::new(),
            jid: None,
            handled: 0,
        };
        c.send(&header(domain)).await?;
        c.until_name("features").await?;
        Ok(c)
    }

    /// SASL PLAIN, then the stream restart with `header` (whatever a test wants to
    /// write there); returns without waiting for an answer.
    pub async fn authenticate_restarting_with(
        &mut self,
        user: &str,
        password: &str,
        header: &str,
    ) -> Result<(), BoxError> {
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
        self.framer.restart();
        self.send(header).await
    }

    /// SASL PLAIN, then the stream restart, up to the new features.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), BoxError> {
        let restart = header(&self.domain);
        self.authenticate_restarting_with(user, password, &restart)
            .await?;
        self.until_name("features").await?;
        Ok(())
    }

    /// SASL2 (XEP-0388) with PLAIN, `inline` (Bind2, an inline `<resume/>`…) inside the
    /// `<authenticate/>`; returns the `<success/>` once the features that follow it (no
    /// stream restart) have arrived. The bound JID, if the success names a full one,
    /// becomes [`Scripted::jid`].
    pub async fn authenticate_sasl2(
        &mut self,
        user: &str,
        password: &str,
        inline: &str,
    ) -> Result<Element, BoxError> {
        self.send_authenticate_sasl2(user, password, inline).await?;
        let answer = self
            .until(|e| e.ns == "urn:xmpp:sasl:2" && (e.name == "success" || e.name == "failure"))
            .await?;
        if answer.name != "success" {
            return Err(format!("SASL2 authentication failed for {user}: {answer:?}").into());
        }
        self.until_name("features").await?;
        let authz = answer
            .children()
            .find(|c| c.name == "authorization-identifier")
            .map(|a| a.text().trim().to_owned())
            .filter(|j| j.contains('/'));
        if authz.is_some() {
            self.jid = authz;
        }
        Ok(answer)
    }

    /// Binds `resource`; returns the full JID the server bound.
    pub async fn bind(&mut self, resource: &str) -> Result<String, BoxError> {
        self.send(&format!(
            "<iq type='set' id='bind-1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>"
        ))
        .await?;
        let result = self
            .until(|e| e.name == "iq" && e.attr("id") == Some("bind-1"))
            .await?;
        let jid = result
            .child("bind", NS_BIND)
            .and_then(|b| b.children().find(|c| c.name == "jid"))
            .map(|j| j.text())
            .ok_or("no bound JID")?;
        self.jid = Some(jid.clone());
        Ok(jid)
    }

    /// Connect, authenticate, bind, and send initial presence (so messages to the bare
    /// JID reach this resource).
    pub async fn login(
        addr: SocketAddr,
        ca: &Path,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Result<Scripted, BoxError> {
        let mut c = Scripted::connect(addr, ca, "example.test").await?;
        c.authenticate(user, password).await?;
        c.bind(resource).await?;
        c.send("<presence/>").await?;
        Ok(c)
    }

    /// XEP-0198 with resumption; returns the stream management id.
    pub async fn enable_sm(&mut self) -> Result<String, BoxError> {
        self.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
            .await?;
        let enabled = self
            .until(|e| e.ns == NS_SM && (e.name == "enabled" || e.name == "failed"))
            .await?;
        // XEP-0198 counts what arrives from here on.
        self.handled = 0;
        enabled
            .attr("id")
            .map(str::to_owned)
            .ok_or_else(|| "stream management not enabled".into())
    }

    /// After authenticating on a new connection: resume `previd`; returns the `<resumed/>`
    /// or `<failed/>` element.
    pub async fn resume(&mut self, previd: &str, h: u64) -> Result<Element, BoxError> {
        self.send(&format!(
            "<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>"
        ))
        .await?;
        self.until(|e| e.ns == NS_SM && (e.name == "resumed" || e.name == "failed"))
            .await
    }

    pub async fn send(&mut self, xml: &str) -> Result<(), BoxError> {
        self.tls.write_all(xml.as_bytes()).await?;
        self.tls.flush().await?;
        Ok(())
    }

    /// The next element or stream end within `limit`; `None` when nothing came.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<Received>, BoxError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.framer.next_frame() {
                Ok(Some(Frame::Stanza(s))) => {
                    if s.root.ns == NS_SM && s.root.name == "r" {
                        // Answer acknowledgement requests so the server keeps us.
                        let h = self.handled;
                        self.send(&format!("<a xmlns='{NS_SM}' h='{h}'/>")).await?;
                        continue;
                    }
                    if matches!(&*s.root.name, "message" | "presence" | "iq") {
                        self.handled += 1;
                    }
                    return Ok(Some(Received::Element(s.root)));
                }
                Ok(Some(Frame::StreamEnd(_))) => return Ok(Some(Received::StreamEnd)),
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(format!("peer sent bad XML: {e}").into()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let n = match tokio::time::timeout(left, self.tls.read(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(Err(_)) => return Ok(Some(Received::StreamEnd)),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Ok(Some(Received::StreamEnd));
            }
            let chunk = self.buf.get(..n).unwrap_or_default();
            self.transcript.push_str(&String::from_utf8_lossy(chunk));
            self.framer.push(chunk);
        }
    }

    /// Reads (within 10 s) until an element satisfies `want`; others are skipped.
    pub async fn until(&mut self, want: impl Fn(&Element) -> bool) -> Result<Element, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await? {
                Some(Received::Element(e)) if want(&e) => return Ok(e),
                Some(Received::Element(_)) => {}
                Some(Received::StreamEnd) => {
                    return Err(format!("stream ended; received: {}", self.transcript).into())
                }
                None => return Err(format!("timed out; received: {}", self.transcript).into()),
            }
        }
    }

    pub async fn until_name(&mut self, name: &str) -> Result<Element, BoxError> {
        self.until(|e| e.name == name).await
    }

    /// The next message with a body containing `needle`, within `limit`.
    pub async fn message_containing(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<Option<Element>, BoxError> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await? {
                Some(Received::Element(e))
                    if e.name == "message" && e.deep_text().contains(needle) =>
                {
                    return Ok(Some(e))
                }
                Some(Received::Element(_)) => {}
                Some(Received::StreamEnd) | None => return Ok(None),
            }
        }
    }

    /// Sends a SASL2 PLAIN `<authenticate/>` for `user` with `inline` in it (Bind2, a
    /// resumption), and nothing more: what answers it is the caller's to read.
    pub async fn send_authenticate_sasl2(
        &mut self,
        user: &str,
        password: &str,
        inline: &str,
    ) -> Result<(), BoxError> {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{token}</initial-response>\
             <user-agent id='3f0c2bde-5a51-4b8e-9d55-1c6a0f3f6c21'><software>custos-e2e</software></user-agent>{inline}</authenticate>"
        ))
        .await
    }

    /// Every element received until the stream ends or nothing comes within `limit`.
    pub async fn rest_within(&mut self, limit: Duration) -> Result<Vec<Element>, BoxError> {
        let mut seen = Vec::new();
        while let Some(Received::Element(e)) = self.next_within(limit).await? {
            seen.push(e);
        }
        Ok(seen)
    }

    /// Reads until the stream ends (or `limit`); true when the peer closed it.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Ok(Some(Received::StreamEnd)) | Err(_) => return true,
                Ok(Some(Received::Element(_))) => {}
                Ok(None) => return false,
            }
        }
    }

    /// Drops the TCP connection without closing the stream (a network failure).
    pub fn drop_connection(self) {
        drop(self.tls);
    }
}
