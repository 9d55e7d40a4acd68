//! XMPP over WebSocket (RFC 7395) through Custos: a raw WebSocket client for the
//! protocol's rules and refusals, and Converse.js in a real Chromium for what a web
//! user sees. Each test starts its own Prosody and `custos serve` on loopback ports.

use std::time::Duration;

use custos_e2e::config::section;
use custos_e2e::rig::{BoxError, Rig, RigOptions, ServerKind, WsListener};
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
    let log = rig.server.log_tail();
    assert!(!log.contains("ws-x"), "reached the server: {log}");
    Ok(())
}

/// Converse.js in a real Chromium signs in through Custos's WebSocket listener and chats
/// with a slixmpp user: messages both ways are shown and archived once per stream, and a
/// message the rules block is shown to its sender as refused, with the rule's text, and
/// never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_in_chromium_chats_through_custos() -> TestResult {
    converse_chats("ws-converse", ServerKind::Prosody).await
}

/// The same in front of ejabberd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_in_chromium_chats_through_custos_to_ejabberd() -> TestResult {
    converse_chats("ws-converse-ejabberd", ServerKind::Ejabberd).await
}

async fn converse_chats(label: &str, server: ServerKind) -> TestResult {
    use custos_e2e::converse::{ConversePage, PageOptions};
    use custos_web_ui::browser::Browser;
    use fantoccini::key::Key;
    use fantoccini::Locator;

    let page_port = custos_e2e::net::free_port()?;
    let rig = Rig::start(
        label,
        RigOptions {
            server,
            archive: true,
            rules: Some(
                "[[rule]]\nid = \"no-ledger\"\nwhen = { body = { regex = \"(?i)ledger\" } }\naction = \"block\"\ntext = \"Ledger talk is not allowed here\"\n"
                    .into(),
            ),
            websocket: Some(WsListener {
                tls: false,
                origins: vec![ConversePage::origin(page_port)],
            }),
            web_client: true,
            ..RigOptions::default()
        },
    )?;
    let ws = rig.websocket.ok_or("no WebSocket listener")?;
    let ws_url = format!("ws://{ws}/xmpp-websocket");
    let _page = ConversePage::serve(
        &rig.dir.join("converse"),
        page_port,
        &PageOptions {
            websocket_url: &ws_url,
            jid: "alice@example.test",
            password: "alice-secret",
        },
    )?;
    let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;

    let profile = tempfile::tempdir()?;
    let browser = Browser::start(profile.path()).await?;
    let shots = custos_e2e::tools::workspace_root().join("target/screenshots");
    let result = async {
        let c = browser.client();
        c.goto(&_page.url()).await?;
        // Signed in through Custos: Converse says it is connected.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let up = c
                .execute("return window.custos && window.custos.connected === true;", vec![])
                .await?;
            if up == serde_json::Value::Bool(true) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("Converse.js did not connect\n{}", rig.context()).into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let jid = c
            .execute("return window.custos.api.connection.get().jid;", vec![])
            .await?;
        let jid = jid.as_str().unwrap_or_default().to_owned();
        assert!(jid.starts_with("alice@example.test/"), "{jid}");

        // Bob writes first; Converse keeps the chat hidden until Alice opens it, as a
        // user does from the unread notice.
        bob.send_chat("alice@example.test", "cjs-1 hello <b>Alice</b>")
            .await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            c.execute(
                "window.custos.api.chats.get('bob@example.test').then(ch => { window.custos.received = ch ? ch.messages.pluck('body') : []; });",
                vec![],
            )
            .await?;
            let got = c.execute("return window.custos.received || [];", vec![]).await?;
            if got.as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            if std::time::Instant::now() > deadline {
                let log = c
                    .execute("return window.custos.log.filter(l => !/<(auth|challenge|response|success)/.test(l)).join('\\n');", vec![])
                    .await?;
                return Err(format!(
                    "Converse.js did not take Bob's message\n--- page log ---\n{}\n{}",
                    log.as_str().unwrap_or_default(),
                    rig.context()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.execute("window.custos.api.chats.open('bob@example.test', {}, true);", vec![])
            .await?;
        assert!(
            wait_text(c, "cjs-1 hello <b>Alice</b>", Duration::from_secs(10)).await?,
            "Bob's message shown\n{}",
            rig.context()
        );
        let say = |text: &'static str| async move {
            let area = c
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("textarea.chat-textarea"))
                .await?;
            area.send_keys(text).await?;
            area.send_keys(&char::from(Key::Enter).to_string()).await?;
            Ok::<_, BoxError>(())
        };
        // Alice answers by typing; Bob's slixmpp client gets it.
        say("cjs-2 hello from Converse").await?;
        assert_eq!(bob.next_message().await?.body, "cjs-2 hello from Converse");
        // Blocked: Converse shows the refusal, Bob gets nothing.
        say("cjs-3 about the ledger").await?;
        let refused = wait_text(c, "Ledger talk is not allowed here", Duration::from_secs(10)).await?;
        assert!(refused, "the refusal on the page\n{}", rig.context());
        bob.expect_no_message(Duration::from_millis(700)).await?;

        for (text, copies) in [("cjs-1", 2), ("cjs-2", 2), ("cjs-3", 1)] {
            let hits = rig.search_copies_until(text, copies, Duration::from_secs(10))?;
            assert_eq!(hits.len(), copies, "{text}: {hits:#?}\n{}", rig.context());
            assert!(
                hits.iter().any(|h| h["account"].as_str() == Some(jid.as_str())),
                "{text} on the WebSocket stream under {jid}: {hits:#?}"
            );
        }
        Ok::<(), BoxError>(())
    }
    .await;
    let _ = browser
        .screenshot(&shots.join(format!("{label}.png")))
        .await;
    let _ = browser.close().await;
    result
}

/// Whether the page's visible text contains `text` within `limit`.
async fn wait_text(c: &fantoccini::Client, text: &str, limit: Duration) -> Result<bool, BoxError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let body = c.execute("return document.body.innerText;", vec![]).await?;
        if body.as_str().is_some_and(|b| b.contains(text)) {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that upgrades and then neither opens a stream nor answers the close
/// handshake loses its connection slot when its session times out: with one slot, the
/// next client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_client_does_not_keep_its_slot() -> TestResult {
    let rig = Rig::start(
        "ws-silent",
        RigOptions {
            archive: true,
            extra: section(
                "limits",
                [("max_connections", 1), ("handshake_timeout_secs", 2)],
            ),
            websocket: Some(WsListener {
                tls: false,
                ..WsListener::default()
            }),
            ..RigOptions::default()
        },
    )?;
    let target = WsTarget::new(rig.websocket.ok_or("no WebSocket listener")?, None);
    // The start-up probes' connections hold the slot until their handshakes time out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Upgrades, then reads nothing: it answers no close frame either.
    let silent = WsClient::connect(&target).await?;
    // The handshake timeout (2 s) ends its session; the close handshake gets 5 s more.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut next = WsClient::connect(&target)
        .await
        .map_err(|e| format!("the slot is still held: {e}\n{}", rig.context()))?;
    let jid = next.login("alice", "alice-secret", "web").await?;
    assert_eq!(jid, "alice@example.test/web");
    drop(silent);
    Ok(())
}
