//! The proxy core end to end: real clients log in *through* Custos to a real Prosody.
//!
//! Each test starts its own Prosody and `custos serve` on loopback ports it picks, and
//! stops both by pid. Raw TLS sockets stand in for a client only where a test must send
//! bytes no real client would (malformed XML, oversized stanzas).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_e2e::config::{path, section, Table, Value};
use custos_e2e::custos::{Custos, ListenerKind};
use custos_e2e::rig::{Rig, RigOptions};
use custos_e2e::{
    go_sendxmpp_send, ConnectOptions, OutgoingMessage, PingOutcome, Prosody, ProsodyOptions,
    SendxmppOptions, SlixClient, TestCa, TestDir, Tls, User,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type TestResult = Result<(), BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ALICE_PW: &str = "alice-secret";

/// Everything a plain TCP peer sends until it closes, each read bounded by `limit`.
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> Result<String, BoxError> {
    let mut got = String::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(limit, tcp.read(&mut buf)).await??;
        if n == 0 {
            return Ok(got);
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn rig(label: &str, extra: Table) -> Result<Rig, BoxError> {
    Rig::start(
        label,
        RigOptions {
            extra,
            ..RigOptions::default()
        },
    )
}

/// A `[limits]` section with one key.
fn limit(key: &str, value: i64) -> Table {
    section("limits", [(key, value)])
}

/// Custos alone in front of `upstream` (which may be down or untrusted).
fn start_custos(dir: &TestDir, ca: &TestCa, upstream: SocketAddr) -> Result<Custos, BoxError> {
    let custos_dir = dir.join("custos");
    std::fs::create_dir_all(&custos_dir)?;
    let leaf = ca.leaf(&custos_dir, "example.test")?;
    let config = section(
        "upstream",
        [
            ("address", Value::from(upstream.to_string())),
            ("tls", Value::from("starttls")),
            ("ca", path(ca.cert_path())),
            ("server_name", Value::from("example.test")),
        ],
    );
    Ok(Custos::start(
        &custos_dir,
        &[ListenerKind::StartTls, ListenerKind::Direct],
        &leaf.chain_path,
        &leaf.key_path,
        &config,
    )?)
}

trait Users {
    async fn alice(&self) -> Result<SlixClient, BoxError>;
    async fn bob(&self) -> Result<SlixClient, BoxError>;
}

impl Users for Rig {
    async fn alice(&self) -> Result<SlixClient, BoxError> {
        self.connect("alice", "laptop", Tls::StartTls).await
    }
    async fn bob(&self) -> Result<SlixClient, BoxError> {
        self.connect("bob", "phone", Tls::Direct).await
    }
}

/// A client that speaks raw bytes over TLS to a Custos listener.
struct RawClient {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    received: String,
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
     xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

impl RawClient {
    /// Direct TLS to `addr`, trusting only `ca`, then the stream header.
    async fn direct(addr: SocketAddr, ca: &Path) -> Result<RawClient, BoxError> {
        let config = custos_e2e::certs::client_tls_config(ca)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("example.test")?;
        let tls =
            tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await??;
        let mut raw = RawClient {
            tls,
            received: String::new(),
        };
        raw.send(HEADER.as_bytes()).await?;
        Ok(raw)
    }

    /// [`RawClient::direct`], then waits for the stream features: the session is relaying.
    async fn ready(addr: SocketAddr, ca: &Path) -> Result<RawClient, BoxError> {
        let mut raw = RawClient::direct(addr, ca).await?;
        if !raw
            .read_until("</stream:features>", Duration::from_secs(10))
            .await?
        {
            return Err(format!("no stream features: {}", raw.received).into());
        }
        Ok(raw)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await?;
        Ok(())
    }

    /// Reads until `needle` has been received or the peer closes; bounded by `limit`.
    async fn read_until(&mut self, needle: &str, limit: Duration) -> Result<bool, BoxError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = vec![0u8; 16 * 1024];
        while !self.received.contains(needle) {
            let n = match tokio::time::timeout_at(deadline, self.tls.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return Ok(false),
            };
            if n == 0 {
                return Ok(self.received.contains(needle));
            }
            self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(true)
    }

    /// Whether the peer closed the connection within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.received.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => return false,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_chat_through_custos_over_both_listeners() -> TestResult {
    let rig = rig("proxy-chat", Table::new())?;
    let mut alice = rig
        .alice()
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    let mut bob = rig
        .bob()
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;

    // Messages both ways, with the full JIDs the server bound.
    let id = alice
        .send_message(OutgoingMessage {
            subject: Some("through the proxy".into()),
            thread: Some("t-1".into()),
            ..OutgoingMessage::chat("bob@example.test", "hello bob, via Custos <&> ✓")
        })
        .await?;
    let got = bob.next_message().await?;
    assert_eq!(got.body, "hello bob, via Custos <&> ✓");
    assert_eq!(got.from, "alice@example.test/laptop");
    assert_eq!(got.id.as_deref(), Some(id.as_str()));
    assert_eq!(got.subject.as_deref(), Some("through the proxy"));
    assert_eq!(got.thread.as_deref(), Some("t-1"));

    bob.send_chat("alice@example.test/laptop", "hi alice, from Direct TLS")
        .await?;
    let got = alice.next_message().await?;
    assert_eq!(got.body, "hi alice, from Direct TLS");
    assert_eq!(got.from, "bob@example.test/phone");

    // Roster set and get pass through (iq round trips).
    alice.roster_set("bob@example.test", Some("Bob")).await?;
    let roster = alice.roster().await?;
    assert!(
        roster
            .iter()
            .any(|i| i.jid == "bob@example.test" && i.name.as_deref() == Some("Bob")),
        "{roster:?}"
    );

    // iq ping to the server and to another user's full JID.
    match alice.ping("example.test", Duration::from_secs(5)).await? {
        PingOutcome::Pong { .. } => {}
        other => panic!("server ping through Custos: {other:?}"),
    }
    match alice
        .ping("bob@example.test/phone", Duration::from_secs(5))
        .await?
    {
        PingOutcome::Pong { .. } => {}
        other => panic!("client ping through Custos: {other:?}"),
    }

    // Directed presence arrives with its status.
    alice
        .send_presence(
            Some("bob@example.test/phone"),
            None,
            None,
            Some("in a meeting"),
        )
        .await?;
    let p = bob
        .wait_presence("alice's directed presence", |p| {
            p.from == "alice@example.test/laptop"
        })
        .await?;
    assert_eq!(p.status.as_deref(), Some("in a meeting"));

    // The proxy learned both sessions' JIDs from the bind results.
    let log = rig.custos.log();
    assert!(
        log.contains("resource bound jid=alice@example.test/laptop"),
        "{}",
        rig.context()
    );
    assert!(
        log.contains("resource bound jid=bob@example.test/phone"),
        "{}",
        rig.context()
    );
    // SASL never reaches the log, at any level.
    assert!(
        !log.contains(ALICE_PW) && !log.contains("<auth"),
        "{}",
        rig.context()
    );

    alice.disconnect().await?;
    bob.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sendxmpp_sends_through_both_listeners() -> TestResult {
    let rig = rig("proxy-sendxmpp", Table::new())?;
    let mut bob = rig.bob().await?;
    for (tls, body) in [
        (Tls::StartTls, "from go-sendxmpp over STARTTLS"),
        (Tls::Direct, "from go-sendxmpp over Direct TLS"),
    ] {
        let addr = match tls {
            Tls::StartTls => rig.custos.listener(0),
            Tls::Direct => rig.custos.listener(1),
        };
        let opts = SendxmppOptions {
            jid: "alice@example.test".into(),
            password: ALICE_PW.into(),
            addr,
            direct_tls: tls == Tls::Direct,
            ca_file: rig.ca.cert_path().to_owned(),
            timeout: Duration::from_secs(20),
        };
        go_sendxmpp_send(&opts, "bob@example.test", body)
            .await
            .map_err(|e| format!("{e}\n{}", rig.context()))?;
        let got = bob.next_message().await?;
        assert_eq!(got.body, body);
        assert!(got.from.starts_with("alice@example.test/"), "{}", got.from);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_ends_only_that_session() -> TestResult {
    let rig = rig("proxy-malformed", Table::new())?;
    let mut alice = rig.alice().await?;
    let mut bob = rig.bob().await?;

    let mut raw = RawClient::direct(rig.custos.listener(1), rig.ca.cert_path()).await?;
    assert!(
        raw.read_until("</stream:features>", Duration::from_secs(10))
            .await?,
        "{}",
        rig.context()
    );
    raw.send(b"<message to='bob@example.test'><body>unclosed</bdy></message>")
        .await?;
    assert!(
        raw.read_until(
            "<not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
            Duration::from_secs(5)
        )
        .await?,
        "got: {}\n{}",
        raw.received,
        rig.context()
    );
    assert!(
        raw.closed_within(Duration::from_secs(5)).await,
        "session not closed"
    );

    // Comments are restricted XML (RFC 6120 §11.1).
    let mut raw = RawClient::ready(rig.custos.listener(1), rig.ca.cert_path()).await?;
    raw.send(b"<!-- hello -->").await?;
    assert!(
        raw.read_until(
            "<restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
            Duration::from_secs(5)
        )
        .await?,
        "got: {}",
        raw.received
    );

    // The other sessions never noticed.
    alice.send_chat("bob@example.test", "still here").await?;
    assert_eq!(bob.next_message().await?.body, "still here");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stanza_is_a_policy_violation() -> TestResult {
    let rig = rig("proxy-oversize", limit("max_stanza_bytes", 65536))?;
    let mut alice = rig.alice().await?;
    let mut bob = rig.bob().await?;

    let mut raw = RawClient::ready(rig.custos.listener(1), rig.ca.cert_path()).await?;
    let body = "x".repeat(70 * 1024);
    raw.send(format!("<message to='bob@example.test'><body>{body}</body></message>").as_bytes())
        .await?;
    assert!(
        raw.read_until(
            "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
            Duration::from_secs(5)
        )
        .await?,
        "got: {}\n{}",
        raw.received,
        rig.context()
    );
    assert!(raw.closed_within(Duration::from_secs(5)).await);

    // A stanza just under the limit still goes through a real client.
    let fits = "y".repeat(60 * 1024);
    alice.send_chat("bob@example.test", &fits).await?;
    assert_eq!(bob.next_message().await?.body.len(), fits.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_required_on_the_starttls_listener() -> TestResult {
    let rig = rig("proxy-starttls-required", Table::new())?;
    let mut tcp = TcpStream::connect(rig.custos.listener(0)).await?;
    tcp.write_all(HEADER.as_bytes()).await?;
    let mut got = String::new();
    let mut buf = vec![0u8; 4096];
    while !got.contains("</stream:features>") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await??;
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        got.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{got}"
    );
    assert!(!got.contains("mechanism"), "no SASL before TLS: {got}");
    // Trying to authenticate in clear is refused.
    tcp.write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>").await?;
    let got = read_to_close(&mut tcp, Duration::from_secs(5)).await?;
    assert!(
        got.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_remote_connection_failed() -> TestResult {
    let dir = TestDir::new("proxy-upstream-down")?;
    let ca = TestCa::generate(dir.path())?;
    // A port nothing listens on.
    let dead = SocketAddr::from(([127, 0, 0, 1], custos_e2e::free_port()?));
    let custos = start_custos(&dir, &ca, dead)?;
    let mut raw = RawClient::direct(custos.listener(1), ca.cert_path()).await?;
    assert!(
        raw.read_until(
            "<remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
            Duration::from_secs(10)
        )
        .await?,
        "got: {}\n{}",
        raw.received,
        custos.log_tail()
    );
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    // The cause is in the operator's log, not on the wire.
    assert!(
        !raw.received.contains(&dead.to_string()),
        "{}",
        raw.received
    );
    assert!(
        custos.log().contains("upstream unavailable"),
        "{}",
        custos.log_tail()
    );

    // A real client is told the same and gives up cleanly.
    let opts = ConnectOptions::new(
        "alice@example.test/laptop",
        ALICE_PW,
        custos.listener(0),
        ca.cert_path(),
    );
    assert!(SlixClient::connect(opts).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_an_untrusted_certificate_is_refused() -> TestResult {
    let dir = TestDir::new("proxy-upstream-untrusted")?;
    let prosody_ca = TestCa::generate(dir.path())?;
    let mut opts = ProsodyOptions::default();
    opts.users
        .push(User::new("alice", "example.test", ALICE_PW));
    let prosody = Prosody::start(dir.path(), &prosody_ca, opts)?;
    // Custos trusts a different CA than the one that signed Prosody's certificate.
    let other_dir = dir.join("other-ca");
    std::fs::create_dir_all(&other_dir)?;
    let other_ca = TestCa::generate(&other_dir)?;
    let custos = start_custos(&dir, &other_ca, prosody.c2s_addr())?;
    let mut raw = RawClient::direct(custos.listener(1), other_ca.cert_path()).await?;
    assert!(
        raw.read_until(
            "<remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
            Duration::from_secs(10)
        )
        .await?,
        "got: {}\n{}",
        raw.received,
        custos.log_tail()
    );
    assert!(
        custos.log().contains("TLS with the upstream failed"),
        "{}",
        custos.log_tail()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_with_resource_constraint() -> TestResult {
    let rig = rig("proxy-cap", limit("max_connections", 1))?;
    // The harness's readiness probes hold the one permit for a moment; retry until the
    // first real connection gets it.
    let mut first = None;
    for _ in 0..50 {
        if let Ok(mut raw) = RawClient::direct(rig.custos.listener(1), rig.ca.cert_path()).await {
            if raw
                .read_until("</stream:features>", Duration::from_secs(10))
                .await?
            {
                first = Some(raw);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.ok_or("no connection got the single permit")?;
    let mut tcp = TcpStream::connect(rig.custos.listener(0)).await?;
    let got = read_to_close(&mut tcp, Duration::from_secs(5)).await?;
    assert!(
        got.contains("<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
    // Once the first leaves, a new client gets in.
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut alice = rig.alice().await?;
    alice.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_system_shutdown_and_exits() -> TestResult {
    let mut rig = rig("proxy-sigterm", Table::new())?;
    let mut raw = RawClient::ready(rig.custos.listener(1), rig.ca.cert_path()).await?;
    let status = rig
        .custos
        .terminate(Duration::from_secs(15))
        .ok_or("custos did not exit after SIGTERM")?;
    assert!(status.success(), "exit status {status}\n{}", rig.context());
    assert!(
        raw.read_until(
            "<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
            Duration::from_secs(5)
        )
        .await?,
        "got: {}",
        raw.received
    );
    // Nothing listens any more.
    assert!(TcpStream::connect(rig.custos.listener(0)).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_timed_out_during_negotiation() -> TestResult {
    let rig = rig("proxy-timeout", limit("handshake_timeout_secs", 1))?;
    // Connects and says nothing: a slowloris. Another client is unaffected meanwhile.
    let mut silent = TcpStream::connect(rig.custos.listener(0)).await?;
    let mut alice = rig.alice().await?;
    let started = std::time::Instant::now();
    let got = read_to_close(&mut silent, Duration::from_secs(10)).await?;
    assert!(
        got.contains("<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
    assert!(
        got.starts_with("<stream:stream"),
        "a header precedes the error: {got}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    alice
        .send_chat("alice@example.test", "note to self")
        .await?;
    assert_eq!(alice.next_message().await?.body, "note to self");

    // A header trickled a byte at a time, each byte well inside the timeout, is still
    // bounded as a whole.
    let mut trickle = TcpStream::connect(rig.custos.listener(0)).await?;
    let header = b"<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
        xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let started = std::time::Instant::now();
    let mut refused = false;
    for b in header {
        if trickle.write_all(&[*b]).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let got = read_to_close(&mut trickle, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(
        refused || got.contains("connection-timeout"),
        "a trickled header was not cut off: {got}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} (timeout 1 s; the full header takes {} s to trickle)",
        started.elapsed(),
        header.len() / 10
    );
    Ok(())
}

/// A real XEP-0198 client (slixmpp) loses its TCP connection and resumes through
/// Custos: Custos leaves the upstream stream unclosed so the server keeps the session,
/// the `<resume/>` reattaches it, the message sent to the client meanwhile arrives once
/// after resumption, nothing needs a new login, the counts agree afterwards, and each
/// message is archived once per stream it crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slixmpp_client_resumes_its_session_through_custos() -> TestResult {
    let rig = Rig::start(
        "sm-resume",
        RigOptions {
            archive: true,
            ..RigOptions::default()
        },
    )?;
    let mut opts = rig.client("alice", "laptop", Tls::StartTls);
    opts.stream_management = true;
    let addr = opts.addr;
    let mut alice = SlixClient::connect(opts).await?;
    let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;
    custos_e2e::scenarios::drop_and_resume(&rig.custos, &mut alice, &mut bob, addr, &|| {
        rig.context()
    })
    .await?;
    Ok(())
}
