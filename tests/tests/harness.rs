//! Harness self-tests: real clients against a real Prosody, no proxy.
//!
//! These prove the harness itself (config, certificates, accounts, both TLS
//! modes, every client command) so that a failing proxy scenario points at
//! the proxy, not at the test rig.

use std::time::{Duration, Instant};

use custos_e2e::{
    go_sendxmpp_send, ConnectOptions, OutgoingMessage, PingOutcome, Prosody, ProsodyOptions,
    SendxmppListener, SendxmppOptions, SlixClient, TestCa, TestDir, Tls, User,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ALICE_PW: &str = "alice-secret";
const BOB_PW: &str = "bob-secret";

/// Prosody alone, for the harness's own clients (no Custos).
struct Bare {
    prosody: Prosody,
    ca: TestCa,
    // Last: files outlive the processes that use them.
    _dir: TestDir,
}

fn bare(label: &str, opts: ProsodyOptions) -> Result<Bare, Box<dyn std::error::Error>> {
    let dir = TestDir::new(label)?;
    let ca = TestCa::generate(dir.path())?;
    let mut opts = opts;
    opts.users.extend([
        User::new("alice", "example.test", ALICE_PW),
        User::new("bob", "example.test", BOB_PW),
    ]);
    let prosody = Prosody::start(dir.path(), &ca, opts)?;
    Ok(Bare {
        prosody,
        ca,
        _dir: dir,
    })
}

impl Bare {
    fn alice_starttls(&self) -> ConnectOptions {
        ConnectOptions::new(
            "alice@example.test/laptop",
            ALICE_PW,
            self.prosody.c2s_addr(),
            self.ca.cert_path(),
        )
    }

    fn bob_direct(&self) -> Result<ConnectOptions, Box<dyn std::error::Error>> {
        let addr = self
            .prosody
            .direct_tls_addr()
            .ok_or("direct TLS not enabled")?;
        let mut opts =
            ConnectOptions::new("bob@example.test/phone", BOB_PW, addr, self.ca.cert_path());
        opts.tls = Tls::Direct;
        Ok(opts)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_starttls_and_bob_direct_tls_exchange_messages() -> TestResult {
    let rig = bare("exchange", ProsodyOptions::default())?;
    let mut alice = SlixClient::connect(rig.alice_starttls()).await?;
    let mut bob = SlixClient::connect(rig.bob_direct()?).await?;
    assert_eq!(alice.jid(), "alice@example.test/laptop");
    assert_eq!(bob.jid(), "bob@example.test/phone");

    let id = alice
        .send_message(OutgoingMessage {
            subject: Some("quarterly numbers".into()),
            thread: Some("thread-1".into()),
            ..OutgoingMessage::chat(bob.jid(), "hello bob, over STARTTLS")
        })
        .await?;
    let got = bob.next_message().await?;
    assert_eq!(got.body, "hello bob, over STARTTLS");
    assert_eq!(got.from, "alice@example.test/laptop");
    assert_eq!(got.to, "bob@example.test/phone");
    assert_eq!(got.kind, "chat");
    assert_eq!(got.id.as_deref(), Some(id.as_str()));
    assert_eq!(got.subject.as_deref(), Some("quarterly numbers"));
    assert_eq!(got.thread.as_deref(), Some("thread-1"));

    // And back, to the bare JID, over Direct TLS; non-ASCII survives.
    bob.send_chat("alice@example.test", "hej alice — över direkt TLS ✓")
        .await?;
    let got = alice.next_message().await?;
    assert_eq!(got.body, "hej alice — över direkt TLS ✓");
    assert_eq!(got.from, "bob@example.test/phone");

    // Several in a row arrive in order.
    for i in 0..5 {
        alice.send_chat(bob.jid(), &format!("burst {i}")).await?;
    }
    for i in 0..5 {
        assert_eq!(bob.next_message().await?.body, format!("burst {i}"));
    }

    alice.disconnect().await?;
    bob.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_unreachable_domain_returns_a_stanza_error() -> TestResult {
    let rig = bare("error", ProsodyOptions::default())?;
    let mut alice = SlixClient::connect(rig.alice_starttls()).await?;
    let id = alice
        .send_chat("nobody@elsewhere.invalid", "is anyone there?")
        .await?;
    let err = alice.wait_stanza_error(&id).await?;
    // s2s is disabled, so Prosody refuses remote domains with a <text/>.
    assert_eq!(err.condition, "not-allowed");
    assert_eq!(err.error_type, "cancel");
    assert_eq!(err.text, "Communication with remote domains is not enabled");
    assert_eq!(err.id.as_deref(), Some(id.as_str()));
    assert_eq!(err.from, "nobody@elsewhere.invalid");

    let id = alice.send_chat("nobody@example.test", "hello?").await?;
    let err = alice.wait_stanza_error(&id).await?;
    assert_eq!(err.condition, "service-unavailable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() -> TestResult {
    let rig = bare("badauth", ProsodyOptions::default())?;
    let mut opts = rig.alice_starttls();
    opts.password = "not-the-password".into();
    let err = SlixClient::connect(opts)
        .await
        .err()
        .ok_or("login succeeded")?;
    assert!(err.to_string().contains("authentication failed"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_is_rejected() -> TestResult {
    let rig = bare("badca", ProsodyOptions::default())?;
    let other_dir = TestDir::new("otherca")?;
    let other = TestCa::generate(other_dir.path())?;
    let mut opts = rig.alice_starttls();
    opts.ca_file = other.cert_path().to_path_buf();
    opts.timeout = Duration::from_secs(5);
    let result = SlixClient::connect(opts).await;
    assert!(result.is_err(), "TLS with an untrusted CA must fail");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_roster_and_presence() -> TestResult {
    let rig = bare("presence", ProsodyOptions::default())?;
    let mut alice = SlixClient::connect(rig.alice_starttls()).await?;
    let mut bob = SlixClient::connect(rig.bob_direct()?).await?;

    alice.roster_set("bob@example.test", Some("Bob B.")).await?;
    // slixmpp auto-authorises and subscribes back, so one request gives a
    // mutual subscription.
    alice
        .send_presence(Some("bob@example.test"), Some("subscribe"), None, None)
        .await?;
    let sub = bob
        .wait_presence("subscribe from alice", |p| p.kind == "subscribe")
        .await?;
    assert_eq!(sub.from, "alice@example.test");

    let deadline = Instant::now() + Duration::from_secs(10);
    let item = loop {
        let roster = alice.roster().await?;
        let item = roster
            .into_iter()
            .find(|i| i.jid == "bob@example.test")
            .ok_or("bob missing from alice's roster")?;
        if item.subscription == "both" || Instant::now() >= deadline {
            break item;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(item.name.as_deref(), Some("Bob B."));
    assert_eq!(item.subscription, "both");

    bob.send_presence(None, None, Some("away"), Some("in a meeting"))
        .await?;
    let p = alice
        .wait_presence("bob's away presence", |p| {
            p.from == "bob@example.test/phone" && p.status.as_deref() == Some("in a meeting")
        })
        .await?;
    assert_eq!(p.show.as_deref(), Some("away"));
    assert!(p.to.starts_with("alice@example.test"), "{p:?}");

    bob.disconnect().await?;
    let p = alice
        .wait_presence("bob's unavailable", |p| {
            p.from == "bob@example.test/phone" && p.kind == "unavailable"
        })
        .await?;
    assert_eq!(p.kind, "unavailable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_server_and_peer() -> TestResult {
    let rig = bare("ping", ProsodyOptions::default())?;
    let mut alice = SlixClient::connect(rig.alice_starttls()).await?;
    let bob = SlixClient::connect(rig.bob_direct()?).await?;

    let server = alice.ping("example.test", Duration::from_secs(5)).await?;
    assert!(matches!(server, PingOutcome::Pong { .. }), "{server:?}");
    // slixmpp answers pings itself (xep_0199 is loaded in the client).
    let peer = alice.ping(bob.jid(), Duration::from_secs(5)).await?;
    assert!(matches!(peer, PingOutcome::Pong { .. }), "{peer:?}");
    // A resource that is not online: the server answers for it.
    let gone = alice
        .ping("bob@example.test/nowhere", Duration::from_secs(5))
        .await?;
    assert!(
        matches!(&gone, PingOutcome::Error { condition, .. } if condition == "service-unavailable"),
        "{gone:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_management_counts_and_acks() -> TestResult {
    let rig = bare("smacks", ProsodyOptions::default())?;
    let mut opts = rig.alice_starttls();
    opts.stream_management = true;
    let mut alice = SlixClient::connect(opts).await?;
    let mut bob_opts = rig.bob_direct()?;
    bob_opts.stream_management = true;
    let mut bob = SlixClient::connect(bob_opts).await?;

    let before = bob.sm_state().await?;
    assert!(before.enabled, "{before:?}");
    assert!(before.id.is_some(), "Prosody offers resumption: {before:?}");

    for i in 0..3 {
        alice.send_chat(bob.jid(), &format!("counted {i}")).await?;
    }
    for i in 0..3 {
        assert_eq!(bob.next_message().await?.body, format!("counted {i}"));
    }
    let after = bob.sm_state().await?;
    assert!(
        after.handled >= before.handled + 3,
        "bob's h must count the 3 messages: {before:?} -> {after:?}"
    );

    // Alice asks for an ack; the server's h must catch up with what she sent.
    let state = alice.sm_acknowledged(Duration::from_secs(5)).await?;
    assert!(state.sent >= 3, "{state:?}");
    assert_eq!(state.acked, state.sent, "{state:?}");
    assert_eq!(state.unacked, 0, "{state:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sendxmpp_reaches_slixmpp_over_both_tls_modes() -> TestResult {
    let rig = bare("sendxmpp", ProsodyOptions::default())?;
    let mut bob = SlixClient::connect(rig.bob_direct()?).await?;

    let mut opts = SendxmppOptions {
        jid: "alice@example.test".into(),
        password: ALICE_PW.into(),
        addr: rig.prosody.c2s_addr(),
        direct_tls: false,
        ca_file: rig.ca.cert_path().to_path_buf(),
        timeout: Duration::from_secs(10),
    };
    go_sendxmpp_send(&opts, "bob@example.test", "sent by go-sendxmpp (STARTTLS)").await?;
    let got = bob.next_message().await?;
    assert_eq!(got.body.trim_end(), "sent by go-sendxmpp (STARTTLS)");
    assert!(got.from.starts_with("alice@example.test/"), "{}", got.from);

    opts.direct_tls = true;
    opts.addr = rig.prosody.direct_tls_addr().ok_or("no direct TLS")?;
    go_sendxmpp_send(
        &opts,
        "bob@example.test",
        "sent by go-sendxmpp (direct TLS)",
    )
    .await?;
    assert_eq!(
        bob.next_message().await?.body.trim_end(),
        "sent by go-sendxmpp (direct TLS)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sendxmpp_refuses_an_untrusted_server() -> TestResult {
    let rig = bare("sendxmpp-badca", ProsodyOptions::default())?;
    let other_dir = TestDir::new("otherca")?;
    let other = TestCa::generate(other_dir.path())?;
    let opts = SendxmppOptions {
        jid: "alice@example.test".into(),
        password: ALICE_PW.into(),
        addr: rig.prosody.c2s_addr(),
        direct_tls: false,
        ca_file: other.cert_path().to_path_buf(),
        timeout: Duration::from_secs(5),
    };
    let result = go_sendxmpp_send(&opts, "bob@example.test", "must not arrive").await;
    assert!(result.is_err(), "verification must not be skipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sendxmpp_listener_prints_received_messages() -> TestResult {
    let rig = bare("listener", ProsodyOptions::default())?;
    let opts = SendxmppOptions {
        jid: "bob@example.test".into(),
        password: BOB_PW.into(),
        addr: rig.prosody.c2s_addr(),
        direct_tls: false,
        ca_file: rig.ca.cert_path().to_path_buf(),
        timeout: Duration::from_secs(10),
    };
    let mut listener = SendxmppListener::start(&opts).await?;
    let mut alice = SlixClient::connect(rig.alice_starttls()).await?;
    // To the bare JID: delivered live if the listener is already online,
    // else held by mod_offline and flushed when its presence arrives.
    alice
        .send_chat("bob@example.test", "to the listener")
        .await?;
    let line = listener.next_line().await?;
    assert!(line.contains("to the listener"), "{line}");
    assert!(line.contains("alice@example.test"), "{line}");
    Ok(())
}

#[test]
fn prosody_log_records_configuration_problems() -> TestResult {
    let dir = TestDir::new("badconfig")?;
    let ca = TestCa::generate(dir.path())?;
    let opts = ProsodyOptions {
        extra_global_config: "modules_enabled = { \"custos_no_such_module\" }".into(),
        start_timeout: Duration::from_secs(5),
        ..ProsodyOptions::default()
    };
    // Prosody logs the missing module but keeps running; the ports still
    // open, so this start succeeds and the log must name the module.
    let prosody = Prosody::start(dir.path(), &ca, opts)?;
    // The ports can open before the module error reaches the log file: wait for it, boundedly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !prosody.log_tail().contains("custos_no_such_module")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        prosody.log_tail().contains("custos_no_such_module"),
        "{}",
        prosody.log_tail()
    );
    Ok(())
}

#[test]
fn prosody_start_failure_quotes_the_log() -> TestResult {
    let dir = TestDir::new("brokenconfig")?;
    let ca = TestCa::generate(dir.path())?;
    let opts = ProsodyOptions {
        extra_global_config: "this is not lua {".into(),
        start_timeout: Duration::from_secs(5),
        ..ProsodyOptions::default()
    };
    let started = Instant::now();
    let err = Prosody::start(dir.path(), &ca, opts)
        .err()
        .ok_or("prosody started with a broken config")?;
    let text = err.to_string();
    assert!(text.contains("exited with"), "{text}");
    // Prosody names the config file and line of the syntax error.
    assert!(text.contains("prosody.cfg.lua"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "must not wait for the timeout"
    );
    Ok(())
}
