//! XMPP over WebSocket (RFC 7395) through Custos: a raw WebSocket client for the
//! protocol's rules and refusals, and Converse.js in a real Chromium for what a web
//! user sees. Each test starts its own Prosody and `custos serve` on loopback ports.

use std::time::Duration;

use custos_e2e::rig::{BoxError, Rig, RigOptions, WsListener};
use custos_e2e::ws::{parse_alone, Upgrade, WsClient, WsTarget, NS_FRAMING};
use custos_e2e::Tls;

type TestResult = Result<(), BoxError>;

const BLOCK_LEDGER: &str =
    "[[rule]]\nid = \"no-ledger\"\nwhen = { body = { regex = \"(?i)ledger\" } }\naction = \"block\"\n";

fn rig(label: &str, ws: WsListener) -> Result<Rig, BoxError> {
    Rig::start(
        label,
        RigOptions {
            archive: true,
            rules: Some(BLOCK_LEDGER.into()),
            websocket: Some(ws),
            ..RigOptions::default()
        },
    )
}

/// A WebSocket client over TLS logs in through Custos and chats with a TCP client: one
/// stanza per message each way, each message a document of its own, a blocked message
/// refused with an error and never delivered, everything archived once per stream under
/// the JID the WebSocket session proved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_chats_through_custos_and_is_archived() -> TestResult {
    let rig = rig(
        "ws-chat",
        WsListener {
            tls: true,
            ..WsListener::default()
        },
    )?;
    let target = WsTarget::new(
        rig.websocket.ok_or("no WebSocket listener")?,
        Some(rig.ca.cert_path()),
    );
    let mut alice = WsClient::connect(&target).await?;
    let jid = alice
        .login("alice", "alice-secret", "web")
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    assert_eq!(jid, "alice@example.test/web");
    let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;

    alice
        .send("<message xmlns='jabber:client' to='bob@example.test' type='chat' id='w1'><body>ws-1 hello from the browser</body></message>")
        .await?;
    assert_eq!(
        bob.next_message().await?.body,
        "ws-1 hello from the browser"
    );
    bob.send_chat(&jid, "ws-2 hello back & <welcome>").await?;
    let got = alice
        .until(|e| e.name == "message" && e.deep_text().contains("ws-2"))
        .await?;
    let body = got
        .children()
        .find(|c| c.name == "body")
        .map(|b| b.text())
        .unwrap_or_default();
    assert_eq!(body, "ws-2 hello back & <welcome>");

    // Blocked: Alice is told, Bob gets nothing.
    alice
        .send("<message xmlns='jabber:client' to='bob@example.test' type='chat' id='w2'><body>ws-3 the ledger, quietly</body></message>")
        .await?;
    let refused = alice
        .until(|e| e.name == "message" && e.attr("id") == Some("w2"))
        .await?;
    assert_eq!(refused.attr("type"), Some("error"), "{refused:?}");
    assert!(
        refused
            .children()
            .any(|c| c.name == "error" && c.children().any(|x| x.name == "policy-violation")),
        "{refused:?}"
    );
    bob.expect_no_message(Duration::from_millis(700)).await?;

    // Every message Custos sent over the WebSocket stood alone (RFC 7395 §3.3.3).
    for text in &alice.received {
        parse_alone(text)?;
    }

    for (text, copies) in [("ws-1", 2), ("ws-2", 2), ("ws-3", 1)] {
        let hits = rig.search_copies_until(text, copies, Duration::from_secs(10))?;
        assert_eq!(hits.len(), copies, "{text}: {hits:#?}\n{}", rig.context());
        assert!(
            hits.iter()
                .any(|h| h["account"].as_str() == Some("alice@example.test/web")),
            "{text} on the WebSocket stream under the JID it proved: {hits:#?}"
        );
    }
    let blocked = rig.search_copies("ws-3")?;
    assert_eq!(blocked[0]["action"], "block", "{blocked:#?}");

    alice.close().await?;
    Ok(())
}

/// The upgrade is refused at a wrong path, without the `xmpp` subprotocol, and from an
/// origin not listed; a message that breaks the framing rules, or a stanza before
/// authentication, ends the stream with a stream error and reaches neither the server
/// nor the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_listener_refuses_what_rfc_7395_and_its_origins_forbid() -> TestResult {
    let allowed = "http://chat.example.test";
    let rig = rig(
        "ws-refusals",
        WsListener {
            tls: false,
            origins: vec![allowed.into()],
        },
    )?;
    let addr = rig.websocket.ok_or("no WebSocket listener")?;
    let target = |f: &dyn Fn(&mut WsTarget)| {
        let mut t = WsTarget::new(addr, None);
        t.origin = Some(allowed.into());
        f(&mut t);
        t
    };
    let status = |u: Upgrade| match u {
        Upgrade::Open(_) => 101,
        Upgrade::Refused(s) => s,
    };
    assert_eq!(
        status(WsClient::open(&target(&|t| t.path = "/other".into())).await?),
        404
    );
    assert_eq!(
        status(WsClient::open(&target(&|t| t.protocol = None)).await?),
        400
    );
    assert_eq!(
        status(WsClient::open(&target(&|t| t.protocol = Some("chat".into()))).await?),
        400
    );
    assert_eq!(
        status(WsClient::open(&target(&|t| t.origin = Some("http://evil.example".into()))).await?),
        403
    );
    assert_eq!(status(WsClient::open(&target(&|_| ())).await?), 101);

    // Stream errors, each on a fresh connection.
    let cases: [(&str, &str); 3] = [
        (
            "two elements in one message",
            "<message xmlns='jabber:client' to='bob@example.test'><body>ws-x1 one</body></message><message xmlns='jabber:client' to='bob@example.test'><body>ws-x1 two</body></message>",
        ),
        (
            "half an element",
            "<message xmlns='jabber:client' to='bob@example.test'><body>ws-x2 unfinished",
        ),
        ("binary", ""),
    ];
    for (what, text) in cases {
        let mut c = WsClient::connect(&target(&|_| ())).await?;
        c.login("alice", "alice-secret", "web").await?;
        if what == "binary" {
            c.send_binary(b"<message xmlns='jabber:client' to='bob@example.test'><body>ws-x3</body></message>")
                .await?;
        } else {
            c.send(text).await?;
        }
        let err = c
            .until(|e| e.name == "error")
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        assert!(
            err.children().any(|x| x.name == "not-well-formed"),
            "{what}: {err:?}"
        );
        let close = c.until(|e| e.name == "close").await?;
        assert_eq!(close.ns, NS_FRAMING);
    }

    // A stanza before authentication.
    let mut c = WsClient::connect(&target(&|_| ())).await?;
    c.open_stream().await?;
    c.send("<message xmlns='jabber:client' to='bob@example.test'><body>ws-x4 before auth</body></message>")
        .await?;
    let err = c.until(|e| e.name == "error").await?;
    assert!(
        err.children().any(|x| x.name == "not-authorized"),
        "{err:?}"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    for text in ["ws-x1", "ws-x2", "ws-x3", "ws-x4"] {
        assert!(rig.search_copies(text)?.is_empty(), "{text} was archived");
    }
    let log = rig.prosody.log_tail();
    assert!(!log.contains("ws-x"), "reached the server: {log}");
    Ok(())
}
