//! Custos in front of XMPP servers other than Prosody: real clients log in through the
//! proxy to a real server of another implementation, chat, and every message is archived.
//!
//! Each test starts its own server and `custos serve` on loopback ports it picks, and
//! stops both by pid.

use std::time::Duration;

use custos_e2e::rig::{BoxError, Rig, RigOptions, ServerKind};
use custos_e2e::scripted::Scripted;
use custos_e2e::{ConnectOptions, OutgoingMessage, SlixClient, Tls};
use serde_json::Value;

type TestResult = Result<(), BoxError>;

/// The namespace jabberd2 binds to the `ack` prefix on its stream header.
const NS_JABBERD2_ACK: &str = "http://www.xmpp.org/extensions/xep-0198.html#ns";

/// Bound on a message showing up in search.
const ARCHIVE_WAIT: Duration = Duration::from_secs(10);

/// `user@example.test/resource` through Custos's STARTTLS listener, with the logs in
/// the error if it fails.
async fn connect(rig: &Rig, user: &str, resource: &str) -> Result<SlixClient, BoxError> {
    connect_with(rig, rig.client(user, resource, Tls::StartTls)).await
}

/// Connects with `opts`, with the logs in the error if it fails.
async fn connect_with(rig: &Rig, opts: ConnectOptions) -> Result<SlixClient, BoxError> {
    let user = opts.jid.clone();
    SlixClient::connect(opts).await.map_err(|e| {
        format!(
            "{user} could not log in through Custos: {e}\n{}",
            rig.context()
        )
        .into()
    })
}

/// `(leg, direction, account)` of each copy of a logical message.
fn copies(hit: &Value) -> Vec<(String, String, String)> {
    hit["copies"]
        .as_array()
        .map(|copies| {
            copies
                .iter()
                .map(|c| {
                    let field = |name: &str| c[name].as_str().unwrap_or("").to_owned();
                    (field("leg"), field("direction"), field("account"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that the one message matching `word` is one logical message in the archive
/// with `body`, sent by `from`, with exactly two copies: the sender's outbound one and
/// the inbound one of the recipient's session `to`.
fn assert_archived_once(rig: &Rig, word: &str, body: &str, from: &str, to: &str) -> TestResult {
    rig.search_copies_until(word, 2, ARCHIVE_WAIT)?;
    // Time for a duplicate, had one been recorded, to reach the index.
    std::thread::sleep(Duration::from_millis(700));
    let records = rig.search_copies(word)?;
    assert_eq!(records.len(), 2, "{word}: {records:#?}\n{}", rig.context());
    let hits = rig.search(word)?;
    assert_eq!(hits.len(), 1, "{word}: {hits:#?}\n{}", rig.context());
    let hit = &hits[0];
    assert_eq!(hit["body"], body, "{hit:#}");
    assert_eq!(hit["from"], from, "{hit:#}");
    assert_eq!(hit["action"], "allow", "{hit:#}");
    let expected = [
        ("client-to-server", "outbound", from),
        ("server-to-client", "inbound", to),
    ]
    .map(|(leg, direction, account)| (leg.to_owned(), direction.to_owned(), account.to_owned()));
    assert_eq!(copies(hit), expected, "{hit:#}");
    Ok(())
}

/// Alice and Bob log in through Custos (STARTTLS on both legs) and chat both ways: each
/// message delivered once, with its subject and thread, and archived once as one logical
/// message with the sender's and the recipient's copy.
async fn chat_both_ways(rig: &Rig) -> TestResult {
    let name = rig.server.name();
    let mut alice = connect(rig, "alice", "laptop").await?;
    let mut bob = connect(rig, "bob", "phone").await?;
    assert_eq!(alice.jid(), "alice@example.test/laptop");
    assert_eq!(bob.jid(), "bob@example.test/phone");

    // Alice to Bob's bare JID, with subject and thread.
    let to_bob = format!("{} relays the okapi report <&> ✓", name);
    let id = alice
        .send_message(OutgoingMessage {
            subject: Some(format!("via {}", name)),
            thread: Some(format!("{}-1", name)),
            ..OutgoingMessage::chat("bob@example.test", to_bob.as_str())
        })
        .await?;
    let got = bob
        .next_message()
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    assert_eq!(got.body, to_bob);
    assert_eq!(got.from, "alice@example.test/laptop");
    assert_eq!(got.id.as_deref(), Some(id.as_str()));
    assert_eq!(got.subject, Some(format!("via {}", name)));
    assert_eq!(got.thread, Some(format!("{}-1", name)));

    // Bob back to Alice's full JID.
    let to_alice = "quokka says the report arrived";
    bob.send_chat("alice@example.test/laptop", to_alice).await?;
    let got = alice
        .next_message()
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    assert_eq!(got.body, to_alice);
    assert_eq!(got.from, "bob@example.test/phone");

    // Each delivered once.
    alice.expect_no_message(Duration::from_millis(500)).await?;
    bob.expect_no_message(Duration::from_millis(500)).await?;

    // Each archived once, as one logical message with the sender's and the recipient's
    // copy.
    assert_archived_once(
        rig,
        "okapi",
        &to_bob,
        "alice@example.test/laptop",
        "bob@example.test/phone",
    )?;
    assert_archived_once(
        rig,
        "quokka",
        to_alice,
        "bob@example.test/phone",
        "alice@example.test/laptop",
    )?;

    // The sessions are still up after all of the server's traffic (roster round trip).
    alice.roster().await?;
    bob.roster().await?;
    alice.disconnect().await?;
    bob.disconnect().await?;
    Ok(())
}

/// `server` with Custos in front of it, archiving.
fn archiving(label: &str, server: ServerKind) -> Result<Rig, BoxError> {
    Rig::start(
        label,
        RigOptions {
            server,
            archive: true,
            ..RigOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_through_custos_against_jabberd2() -> TestResult {
    let rig = archiving("servers-jabberd2", ServerKind::Jabberd2)?;

    // jabberd2 declares `xmlns:ack` on its stream header and offers `<ack:ack/>` in the
    // stream features after authentication; Custos writes its own header, so the
    // declaration must travel with the features. slixmpp rejects the stream otherwise.
    let mut carol =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    carol.authenticate("carol", rig.password("carol")?).await?;
    let restarted = carol
        .transcript
        .rsplit("<stream:stream")
        .next()
        .unwrap_or_default();
    let before_ack = restarted
        .split_once("<ack:ack")
        .map(|(before, _)| before)
        .ok_or_else(|| format!("no <ack:ack/> feature: {}", carol.transcript))?;
    assert!(
        [
            format!("xmlns:ack='{NS_JABBERD2_ACK}'"),
            format!("xmlns:ack=\"{NS_JABBERD2_ACK}\""),
        ]
        .iter()
        .any(|decl| before_ack.contains(decl.as_str())),
        "ack prefix not declared: {}",
        carol.transcript
    );
    drop(carol);

    chat_both_ways(&rig).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_through_custos_against_ejabberd() -> TestResult {
    let rig = archiving("servers-ejabberd", ServerKind::Ejabberd)?;
    chat_both_ways(&rig).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slixmpp_client_resumes_through_custos_against_ejabberd() -> TestResult {
    let rig = archiving("servers-ejabberd-sm", ServerKind::Ejabberd)?;
    let mut opts = rig.client("alice", "laptop", Tls::StartTls);
    opts.stream_management = true;
    let addr = opts.addr;
    let mut alice = connect_with(&rig, opts).await?;
    let mut bob = connect(&rig, "bob", "phone").await?;
    custos_e2e::scenarios::drop_and_resume(&rig.custos, &mut alice, &mut bob, addr, &|| {
        rig.context()
    })
    .await?;
    alice.disconnect().await?;
    bob.disconnect().await?;
    Ok(())
}
