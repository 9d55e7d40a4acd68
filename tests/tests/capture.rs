//! Capture integrity against an adversarial insider: a scripted client (it writes any XML
//! at any point of the stream) and a real Prosody with carbons, MAM, stream management
//! and group chat, Custos in between with its archive. Each test tries one way to get a
//! conversation off the record, or onto it under someone else's name, and asserts what
//! the archive holds afterwards: how many records, from whom, on which leg, with which
//! verdict. The honest paths show every copy grouped into one logical message.
//! The model under test is docs/capture.md.

use std::time::{Duration, Instant};

use custos_e2e::rig::{BoxError, Rig, RigOptions, USERS};
use custos_e2e::scripted::{Received, Scripted};
use serde_json::Value;

type TestResult = Result<(), BoxError>;

const QUIET: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(5);

fn rig(label: &str, rules: Option<&str>) -> Result<Rig, BoxError> {
    Rig::start(
        label,
        RigOptions {
            archive: true,
            rules: rules.map(str::to_owned),
            mam: true,
            muc: true,
            ..RigOptions::default()
        },
    )
}

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(n, _)| *n == user)
        .map_or("", |(_, pw)| pw)
}

/// `user@example.test/resource` through Custos (Direct TLS listener).
async fn login(rig: &Rig, user: &str, resource: &str) -> Result<Scripted, BoxError> {
    Scripted::login(
        rig.custos.listener(1),
        rig.ca.cert_path(),
        user,
        password(user),
        resource,
    )
    .await
}

/// The same account straight to Prosody, around Custos.
async fn login_direct(rig: &Rig, user: &str, resource: &str) -> Result<Scripted, BoxError> {
    let addr = rig.server.direct_tls_addr().ok_or("no direct TLS port")?;
    Scripted::login(addr, rig.ca.cert_path(), user, password(user), resource).await
}

/// Polls `custos search --json --copies` until at least `want` records match, bounded.
fn copies_until(rig: &Rig, query: &str, want: usize) -> Result<Vec<Value>, BoxError> {
    rig.search_copies_until(query, want, WAIT)
}

/// Records of `query` after the archive has had time to take in stragglers.
fn settled_copies(rig: &Rig, query: &str, want: usize) -> Result<Vec<Value>, BoxError> {
    copies_until(rig, query, want)?;
    std::thread::sleep(Duration::from_millis(700));
    rig.search_copies(query)
}

fn rules_of(hit: &Value) -> Vec<&str> {
    hit["rules"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn legs(hit: &Value) -> Vec<(String, String)> {
    hit["copies"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    (
                        c["leg"].as_str().unwrap_or("").to_owned(),
                        c["account"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sender_is_refused_and_recorded_under_the_real_one() -> TestResult {
    let rig = rig("capture-forged-from", None)?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let mut carol = login(&rig, "carol", "desk").await?;
    carol
        .send(
            "<message from='alice@example.test/forged' to='bob@example.test/phone' type='chat' id='f1'>\
             <body>forged sender text</body></message>",
        )
        .await?;
    assert!(carol.closed_within(WAIT).await, "session kept open");
    assert!(
        carol.transcript.contains("<invalid-from"),
        "{}",
        carol.transcript
    );
    assert!(
        bob.message_containing("forged sender", QUIET)
            .await?
            .is_none(),
        "a forged message was delivered"
    );
    let hits = settled_copies(&rig, "forged sender", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    let h = &hits[0];
    assert_eq!(h["from"], "carol@example.test/desk");
    assert_eq!(h["account"], "carol@example.test/desk");
    assert_eq!(h["claimed_from"], "alice@example.test/forged");
    assert_eq!(h["action"], "block");
    assert_eq!(h["leg"], "client-to-server");
    assert!(rules_of(h).contains(&"custos:invalid-from"), "{h}");
    assert!(rig.search_copies("from:alice@example.test")?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_before_authentication_or_bind_are_refused_and_never_recorded() -> TestResult {
    let rig = rig("capture-preauth", None)?;
    let mut bob = login(&rig, "bob", "phone").await?;
    // No SASL at all.
    let mut anon =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    anon.send(
        "<message to='bob@example.test/phone' type='chat'><body>preauth one</body></message>",
    )
    .await?;
    assert!(anon.closed_within(WAIT).await);
    assert!(
        anon.transcript.contains("<not-authorized"),
        "{}",
        anon.transcript
    );
    // Authenticated, not bound.
    let mut unbound =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    unbound.authenticate("carol", password("carol")).await?;
    unbound
        .send("<message to='bob@example.test/phone' type='chat'><body>preauth two</body></message>")
        .await?;
    assert!(unbound.closed_within(WAIT).await);
    assert!(
        unbound.transcript.contains("<not-authorized"),
        "{}",
        unbound.transcript
    );
    assert!(bob.message_containing("preauth", QUIET).await?.is_none());
    std::thread::sleep(Duration::from_millis(700));
    assert!(rig.search_copies("preauth")?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_ids_and_repeated_texts_are_all_recorded() -> TestResult {
    let rig = rig("capture-dupes", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    for (id, text) in [
        (Some("same"), "reuse first text"),
        (Some("same"), "reuse second text"),
        (None, "repeat identical text"),
        (None, "repeat identical text"),
    ] {
        let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
        alice
            .send(&format!(
                "<message to='bob@example.test/phone' type='chat'{id}><body>{text}</body></message>"
            ))
            .await?;
        assert!(
            bob.message_containing(text, WAIT).await?.is_some(),
            "{text}"
        );
    }
    // Both users are behind Custos: every stanza is recorded on the sender's leg and on
    // the recipient's, nothing dropped as a duplicate.
    let reuse = settled_copies(&rig, "reuse", 4)?;
    assert_eq!(reuse.len(), 4, "{reuse:#?}");
    let repeat = settled_copies(&rig, "repeat", 4)?;
    assert_eq!(repeat.len(), 4, "{repeat:#?}");
    let sent = |hits: &[Value]| {
        hits.iter()
            .filter(|h| h["leg"] == "client-to-server")
            .count()
    };
    assert_eq!(sent(&reuse), 2);
    assert_eq!(sent(&repeat), 2);
    // A reused id does not merge two different texts into one message.
    let grouped = rig.search("reuse")?;
    assert_eq!(grouped.len(), 2, "{grouped:#?}");
    for m in &grouped {
        assert_eq!(m["copies"].as_array().map(Vec::len), Some(2), "{m:#}");
    }
    // The same text twice without an id is one logical message whose copies show both sends.
    let grouped = rig.search("repeat")?;
    let copies: usize = grouped
        .iter()
        .filter_map(|m| m["copies"].as_array().map(Vec::len))
        .sum();
    assert_eq!(copies, 4, "{grouped:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_carbons_are_ordinary_messages_from_their_real_sender() -> TestResult {
    let rig = rig("capture-forged-carbons", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut carol = login(&rig, "carol", "desk").await?;
    for (kind, text) in [
        ("sent", "planted sent carbon"),
        ("received", "planted received carbon"),
    ] {
        carol
            .send(&format!(
                "<message to='alice@example.test/laptop' id='pc-{kind}'><{kind} xmlns='urn:xmpp:carbons:2'>\
                 <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' \
                 from='alice@example.test/laptop' to='bob@example.test' type='chat' id='x-{kind}'>\
                 <body>{text}</body></message></forwarded></{kind}></message>"
            ))
            .await?;
    }
    // Whatever Prosody does with them, nothing may say alice sent or received this.
    let _ = alice.message_containing("planted received", QUIET).await?;
    let hits = settled_copies(&rig, "planted", 2)?;
    assert!(hits.len() >= 2, "{hits:#?}");
    for h in &hits {
        assert!(
            h["from"]
                .as_str()
                .unwrap_or("")
                .starts_with("carol@example.test"),
            "{h:#}"
        );
        assert_eq!(h["via"], "direct", "{h:#}");
        assert!(rules_of(h).contains(&"custos:forged-wrapper"), "{h:#}");
        assert_ne!(h["action"], "allow", "{h:#}");
    }
    // The wrapped text is searchable, kept as forwarded content.
    assert!(hits.iter().any(|h| h["extra"]
        .as_array()
        .is_some_and(|x| x.iter().any(|t| t["kind"] == "forwarded-body"))));
    assert!(rig
        .search_copies("from:alice@example.test planted")?
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_archive_result_hides_nothing() -> TestResult {
    let rig = rig(
        "capture-fake-mam",
        Some("[[rule]]\nid = \"watch-merger\"\nwhen = { body = { regex = \"(?i)merger\" } }\naction = \"flag\"\n"),
    )?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let mut carol = login(&rig, "carol", "desk").await?;
    // The decoy is what policy would see if it read only the outer body.
    carol
        .send(
            "<message to='bob@example.test/phone' type='chat' id='fm1'><body>lunch?</body>\
             <result xmlns='urn:xmpp:mam:2' queryid='nothing' id='1'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='alice@example.test/laptop' to='bob@example.test'>\
             <body>secret merger terms</body></message></forwarded></result></message>",
        )
        .await?;
    let _ = bob.message_containing("lunch", WAIT).await?;
    let hits = settled_copies(&rig, "merger", 2)?;
    // carol's copy and bob's copy, both from carol, both flagged by the rule on the
    // wrapped text and as a forged wrapper.
    assert_eq!(hits.len(), 2, "{hits:#?}");
    for h in &hits {
        assert_eq!(h["from"], "carol@example.test/desk", "{h:#}");
        let rules = rules_of(h);
        assert!(rules.contains(&"watch-merger"), "{h:#}");
        assert!(rules.contains(&"custos:forged-wrapper"), "{h:#}");
        assert_eq!(h["via"], "direct");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_its_proven_identity() -> TestResult {
    let rig = rig("capture-resume", None)?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let previd = alice.enable_sm().await?;
    let h = alice.handled;
    alice.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    again.authenticate("alice", password("alice")).await?;
    let answer = again
        .resume(&previd, h)
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    assert_eq!(
        answer.name,
        "resumed",
        "{}\n{}",
        again.transcript,
        rig.context()
    );
    again
        .send("<message to='bob@example.test/phone' type='chat' id='after'><body>after resumption</body></message>")
        .await?;
    assert!(bob
        .message_containing("after resumption", WAIT)
        .await?
        .is_some());
    let hits = settled_copies(&rig, "resumption", 2)?;
    let sent: Vec<&Value> = hits
        .iter()
        .filter(|h| h["leg"] == "client-to-server")
        .collect();
    assert_eq!(sent.len(), 1, "{hits:#?}");
    assert_eq!(sent[0]["from"], "alice@example.test/laptop");
    assert_eq!(sent[0]["account"], "alice@example.test/laptop");
    Ok(())
}

/// Two Custos nodes in front of one Prosody (as behind a TCP load balancer): a session
/// that enabled stream management on one and lost its connection asks the other to
/// resume it. The second node never relayed it (it has no counts to translate, and did
/// not see the account bound), so it refuses with `<failed/>` itself instead of letting
/// the server resume a session whose stanzas it could not attribute; the client binds
/// afresh there, and what it says is archived by that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_at_another_node_is_refused_and_the_client_binds_afresh() -> TestResult {
    let rig = rig("capture-two-nodes", None)?;
    // The second node: the same upstream and keys, its own archive directory.
    let node2 = rig.another_node(
        "node2",
        None,
        &[
            custos_e2e::custos::ListenerKind::StartTls,
            custos_e2e::custos::ListenerKind::Direct,
        ],
    )?;

    let mut bob = login(&rig, "bob", "phone").await?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let previd = alice.enable_sm().await?;
    let h = alice.handled;
    alice.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut again =
        Scripted::connect(node2.listener(1), rig.ca.cert_path(), "example.test").await?;
    again.authenticate("alice", password("alice")).await?;
    let answer = again.resume(&previd, h).await?;
    assert_eq!(
        answer.name,
        "failed",
        "{}\n{}",
        again.transcript,
        node2.log_tail()
    );
    assert!(answer
        .child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    let jid = again.bind("laptop2").await?;
    assert!(jid.starts_with("alice@example.test/"), "{jid}");
    again
        .send("<message to='bob@example.test/phone' type='chat' id='n2'><body>bound afresh on the second node</body></message>")
        .await?;
    assert!(bob.message_containing("afresh", WAIT).await?.is_some());
    // The second node archived what it relayed, under the account the new bind proved.
    let start = Instant::now();
    let hits = loop {
        let out = node2.command(&["search", "--json", "--copies", "afresh"])?;
        let hits: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !hits.is_empty() || start.elapsed() > WAIT {
            break hits;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        hits.iter()
            .any(|h| h["leg"] == "client-to-server" && h["account"] == jid.as_str()),
        "{hits:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_bind_result_does_not_change_who_the_user_is() -> TestResult {
    let rig = rig("capture-bind-injection", None)?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut carol = login(&rig, "carol", "desk").await?;
    carol
        .send(
            "<iq type='result' id='bind-1' to='alice@example.test/laptop'>\
             <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>carol@example.test/evil</jid></bind></iq>",
        )
        .await?;
    // Whether or not Prosody delivers it, alice stays alice.
    let _ = alice.next_within(Duration::from_millis(500)).await?;
    alice
        .send("<message to='bob@example.test/phone' type='chat' id='b1'><body>still alice here</body></message>")
        .await?;
    assert!(bob.message_containing("still alice", WAIT).await?.is_some());
    let hits = settled_copies(&rig, "\"still alice\"", 2)?;
    assert_eq!(hits.len(), 2, "{hits:#?}");
    for h in &hits {
        assert_eq!(h["from"], "alice@example.test/laptop", "{h:#}");
    }
    let sent = hits
        .iter()
        .find(|h| h["leg"] == "client-to-server")
        .ok_or("no sender copy")?;
    assert_eq!(sent["account"], "alice@example.test/laptop");
    Ok(())
}

const HIDDEN_RULES: &str = "[[rule]]\nid = \"no-codeword\"\nwhen = { body = { regex = \"(?i)bluebird\" } }\naction = \"block\"\ntext = \"codeword\"\n\n[[rule]]\nid = \"watch-links\"\nwhen = { body = { regex = \"(?i)leak\\\\.example\" } }\naction = \"flag\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_in_a_second_language_xhtml_or_a_link_is_scanned_and_kept() -> TestResult {
    let rig = rig("capture-hidden-text", Some(HIDDEN_RULES))?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    // A second-language body carrying the blocked codeword: refused as a whole.
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='l1'><body>harmless hello</body>\
             <body xml:lang='de'>bluebird kommt</body></message>",
        )
        .await?;
    let err = alice
        .until(|e| e.name == "message" && e.attr("type") == Some("error"))
        .await?;
    assert!(err.deep_text().contains("codeword"), "{err:?}");
    assert!(bob
        .message_containing("harmless hello", QUIET)
        .await?
        .is_none());
    // XHTML only, no plain body: recorded and searchable.
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='x1'>\
             <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
             <p>richtextonly plan</p></body></html></message>",
        )
        .await?;
    assert!(bob
        .message_containing("richtextonly", WAIT)
        .await?
        .is_some());
    // A link out of band.
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='o1'>\
             <x xmlns='jabber:x:oob'><url>https://leak.example/oobfile</url><desc>oobdesc</desc></x></message>",
        )
        .await?;
    assert!(bob.message_containing("oobfile", WAIT).await?.is_some());

    // A custom client's own extension, no body at all.
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='c1'>\
             <x xmlns='urn:example:custom'><note>customsecret words</note></x></message>",
        )
        .await?;
    assert!(bob
        .message_containing("customsecret", WAIT)
        .await?
        .is_some());

    let custom = settled_copies(&rig, "customsecret", 2)?;
    assert_eq!(custom.len(), 2, "{custom:#?}");
    assert_eq!(custom[0]["extra"][0]["kind"], "other", "{custom:#?}");
    let blocked = settled_copies(&rig, "bluebird", 1)?;
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(blocked[0]["action"], "block");
    assert_eq!(blocked[0]["body"], "harmless hello");
    assert!(rules_of(&blocked[0]).contains(&"no-codeword"));
    let xhtml = settled_copies(&rig, "richtextonly", 2)?;
    assert_eq!(xhtml.len(), 2, "{xhtml:#?}");
    assert!(xhtml[0]["extra"][0]["kind"] == "xhtml", "{xhtml:#?}");
    let oob = settled_copies(&rig, "oobfile", 2)?;
    assert_eq!(oob.len(), 2, "{oob:#?}");
    for h in &oob {
        assert_eq!(h["action"], "flag", "{h:#}");
        assert!(rules_of(h).contains(&"watch-links"));
    }
    Ok(())
}

const SPLIT_RULES: &str = "[[lexicon]]\nid = \"codewords\"\nterms = [\"falcon\"]\n\n[[rule]]\nid = \"no-codeword\"\nwhen = { body = { lexicon = \"codewords\" } }\naction = \"block\"\ntext = \"codeword\"\n";

/// Markup splits a word that the reader sees whole, or glues one the reader sees apart.
/// A body with an element inside (`falcon<x>zz</x>`) reads `falcon` in Conversations,
/// which keeps the text before the element, and `falconzz` where all of it is kept: it
/// is delivered as the one text it was judged and recorded as. An XHTML-IM word split
/// by an inline element (`fal<span>con</span>`) is judged as the client draws it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_split_by_markup_is_delivered_as_it_was_judged() -> TestResult {
    let rig = rig("capture-split-markup", Some(SPLIT_RULES))?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='s1'>\
             <body>we buy falcon<x xmlns='urn:example:z'>zz</x> on friday</body></message>",
        )
        .await?;
    let got = bob
        .message_containing("on friday", WAIT)
        .await?
        .ok_or("the message never came")?;
    let body = got.child("body", "jabber:client").ok_or("no body")?;
    assert_eq!(body.children().count(), 0, "{got:?}");
    assert_eq!(body.text(), "we buy falconzz on friday");
    let copies = settled_copies(&rig, "\"on friday\"", 2)?;
    assert_eq!(copies.len(), 2, "{copies:#?}");
    for c in &copies {
        assert_eq!(c["body"], "we buy falconzz on friday", "{c:#}");
    }

    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='s2'><body>see notes</body>\
             <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
             <p>the fal<span>con</span> deal closes friday</p></body></html></message>",
        )
        .await?;
    let err = alice
        .until(|e| e.name == "message" && e.attr("type") == Some("error"))
        .await?;
    assert!(err.deep_text().contains("codeword"), "{err:?}");
    assert!(bob.message_containing("see notes", QUIET).await?.is_none());
    let blocked = settled_copies(&rig, "\"see notes\"", 1)?;
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(blocked[0]["action"], "block");
    assert!(rules_of(&blocked[0]).contains(&"no-codeword"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_leg_block_between_two_internal_users_is_on_the_record() -> TestResult {
    let rig = rig(
        "capture-inbound-block",
        Some("[[rule]]\nid = \"inbound-only\"\nwhen = { direction = \"inbound\", body = { regex = \"(?i)quarantine\" } }\naction = \"block\"\n"),
    )?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send("<message to='bob@example.test/phone' type='chat' id='q1'><body>quarantine this</body></message>")
        .await?;
    assert!(bob.message_containing("quarantine", QUIET).await?.is_none());
    let hits = settled_copies(&rig, "quarantine", 2)?;
    assert_eq!(hits.len(), 2, "{hits:#?}");
    let leg = |l: &str| hits.iter().find(|h| h["leg"] == l).ok_or("missing leg");
    let sent = leg("client-to-server")?;
    assert_eq!(sent["action"], "allow");
    assert_eq!(sent["account"], "alice@example.test/laptop");
    let received = leg("server-to-client")?;
    assert_eq!(received["action"], "block");
    assert_eq!(received["account"], "bob@example.test/phone");
    assert!(rules_of(received).contains(&"inbound-only"));
    assert_eq!(sent["message"], received["message"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_and_retractions_are_recorded_as_edits_never_deletions() -> TestResult {
    let rig = rig("capture-edits", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send("<message to='bob@example.test/phone' type='chat' id='orig'><body>original wording</body></message>")
        .await?;
    assert!(bob
        .message_containing("original wording", WAIT)
        .await?
        .is_some());
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='fix'><body>corrected wording</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='orig'/></message>",
        )
        .await?;
    assert!(bob
        .message_containing("corrected wording", WAIT)
        .await?
        .is_some());
    alice
        .send(
            "<message to='bob@example.test/phone' type='chat' id='gone'>\
             <retract xmlns='urn:xmpp:message-retract:1' id='orig'/></message>",
        )
        .await?;
    let _ = bob.next_within(QUIET).await?;
    let original = settled_copies(&rig, "original wording", 2)?;
    assert_eq!(
        original.len(),
        2,
        "the original stays on the record: {original:#?}"
    );
    let corrected = copies_until(&rig, "corrected wording", 2)?;
    assert!(corrected
        .iter()
        .all(|h| h["edit"]["kind"] == "correction" && h["edit"]["target"] == "orig"));
    let alice_sent = rig.search_copies("from:alice@example.test direction:outbound")?;
    let retractions: Vec<&Value> = alice_sent
        .iter()
        .filter(|h| h["edit"]["kind"] == "retraction")
        .collect();
    assert!(!retractions.is_empty(), "{alice_sent:#?}");
    assert_eq!(retractions[0]["edit"]["target"], "orig");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carbon_to_a_second_resource_is_a_copy_of_the_same_message() -> TestResult {
    let rig = rig("capture-carbons", None)?;
    let mut laptop = login(&rig, "alice", "laptop").await?;
    let mut phone = login(&rig, "alice", "phone").await?;
    for c in [&mut laptop, &mut phone] {
        c.send("<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await?;
        c.until(|e| e.name == "iq" && e.attr("id") == Some("carbons"))
            .await?;
    }
    let mut bob = login(&rig, "bob", "desk").await?;
    laptop
        .send("<message to='bob@example.test/desk' type='chat' id='cc1'><body>carbon copy check</body></message>")
        .await?;
    assert!(bob.message_containing("carbon copy", WAIT).await?.is_some());
    assert!(phone
        .message_containing("carbon copy", WAIT)
        .await?
        .is_some());
    let grouped = {
        settled_copies(&rig, "\"carbon copy\"", 3)?;
        rig.search("\"carbon copy\"")?
    };
    assert_eq!(grouped.len(), 1, "{grouped:#?}");
    let copies = grouped[0]["copies"].as_array().ok_or("no copies")?;
    let vias: Vec<(&str, &str)> = copies
        .iter()
        .map(|c| {
            (
                c["via"].as_str().unwrap_or(""),
                c["account"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(copies.len(), 3, "{grouped:#?}");
    assert!(vias.contains(&("direct", "alice@example.test/laptop")));
    assert!(vias.contains(&("carbon-sent", "alice@example.test/phone")));
    assert!(vias.contains(&("direct", "bob@example.test/desk")));
    for c in copies {
        assert_eq!(
            c["direction"],
            if c["account"] == "bob@example.test/desk" {
                "inbound"
            } else {
                "outbound"
            }
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_message_is_one_logical_message_with_every_echo() -> TestResult {
    let rig = rig("capture-muc", None)?;
    let room = "deals@conference.example.test";
    let mut members = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut c = login(&rig, user, "desk").await?;
        c.send(&format!(
            "<presence to='{room}/{user}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        ))
        .await?;
        c.until(|e| e.name == "presence" && e.attr("from") == Some(&format!("{room}/{user}")))
            .await?;
        members.push(c);
    }
    members[0]
        .send(&format!(
            "<message to='{room}' type='groupchat' id='g1'><body>room wide announcement</body></message>"
        ))
        .await?;
    for m in members.iter_mut() {
        assert!(
            m.message_containing("room wide", WAIT).await?.is_some(),
            "{}",
            m.transcript
        );
    }
    settled_copies(&rig, "announcement", 4)?;
    let grouped = rig.search("announcement")?;
    assert_eq!(grouped.len(), 1, "{grouped:#?}");
    let l = legs(&grouped[0]);
    assert_eq!(l.len(), 4, "{grouped:#?}");
    assert!(l.contains(&("client-to-server".into(), "alice@example.test/desk".into())));
    for user in ["alice", "bob", "carol"] {
        assert!(
            l.contains(&(
                "server-to-client".into(),
                format!("{user}@example.test/desk")
            )),
            "{user}: {l:?}"
        );
    }
    Ok(())
}

/// Sends a XEP-0313 query for the whole archive and returns the results' inner bodies.
async fn mam_query(c: &mut Scripted, queryid: &str) -> Result<Vec<String>, BoxError> {
    c.send(&format!(
        "<iq type='set' id='{queryid}-iq'><query xmlns='urn:xmpp:mam:2' queryid='{queryid}'/></iq>"
    ))
    .await?;
    let mut bodies = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(Received::Element(e)) = c.next_within(Duration::from_secs(1)).await? {
            if e.name == "iq" && e.attr("id") == Some(&format!("{queryid}-iq")) {
                return Ok(bodies);
            }
            if e.name == "message" {
                bodies.push(e.deep_text());
            }
        }
    }
    Err(format!("no end of query: {}", c.transcript).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replayed_by_mam_groups_with_the_live_copies() -> TestResult {
    let rig = rig("capture-mam", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send("<message to='bob@example.test' type='chat' id='h1'><body>archived history line</body></message>")
        .await?;
    assert!(bob
        .message_containing("history line", WAIT)
        .await?
        .is_some());
    settled_copies(&rig, "\"history line\"", 2)?;
    let replayed = mam_query(&mut bob, "q1").await?;
    assert!(
        replayed.iter().any(|b| b.contains("history line")),
        "{replayed:?}\n{}",
        bob.transcript
    );
    let hits = settled_copies(&rig, "\"history line\"", 3)?;
    let replays: Vec<&Value> = hits.iter().filter(|h| h["via"] == "mam").collect();
    assert_eq!(replays.len(), 1, "{hits:#?}");
    assert!(
        !rules_of(replays[0]).contains(&"custos:replay-only"),
        "{hits:#?}"
    );
    assert_eq!(replays[0]["account"], "bob@example.test/phone");
    let grouped = rig.search("\"history line\"")?;
    assert_eq!(grouped.len(), 1, "{grouped:#?}");
    assert_eq!(grouped[0]["copies"].as_array().map(Vec::len), Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_bypassed_custos_is_flagged_when_replayed() -> TestResult {
    let rig = rig("capture-bypass", None)?;
    // alice talks to Prosody directly, around Custos.
    let mut around = login_direct(&rig, "alice", "around").await?;
    around
        .send("<message to='bob@example.test' type='chat' id='by1'><body>bypass whisper</body></message>")
        .await?;
    let _ = around.next_within(Duration::from_millis(500)).await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let replayed = mam_query(&mut bob, "q2").await?;
    assert!(
        replayed.iter().any(|b| b.contains("bypass whisper")),
        "{replayed:?}"
    );
    let hits = settled_copies(&rig, "bypass", 1)?;
    // Offline delivery may also reach bob live; the replay is what must be flagged, and
    // nothing says the message crossed Custos on alice's side.
    let replays: Vec<&Value> = hits.iter().filter(|h| h["via"] == "mam").collect();
    assert_eq!(replays.len(), 1, "{hits:#?}");
    if hits.iter().all(|h| h["via"] == "mam") {
        assert!(
            rules_of(replays[0]).contains(&"custos:replay-only"),
            "{hits:#?}"
        );
        assert_eq!(replays[0]["action"], "flag");
    }
    assert!(
        hits.iter().all(|h| h["leg"] == "server-to-client"),
        "{hits:#?}"
    );
    Ok(())
}

/// The hits of `query` that `account`'s archive queries replayed.
fn replays_to<'a>(hits: &'a [Value], account: &str) -> Vec<&'a Value> {
    hits.iter()
        .filter(|h| h["via"] == "mam" && h["account"] == account)
        .collect()
}

/// After a restart memory knows nothing of what was recorded before: the search index
/// alone places a replay. A message that crossed Custos before the restart is believed
/// when replayed; one sent around Custos is `custos:replay-only`. Then the administrator
/// deletes the index as well: until the rebuilt index can tell, a replay is flagged, never
/// believed, and the one that crossed Custos is never called replay-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_index_alone_places_a_replay_and_a_deleted_one_places_none(
) -> TestResult {
    let mut rig = rig("capture-replay-restart", None)?;
    {
        let mut alice = login(&rig, "alice", "laptop").await?;
        let mut bob = login(&rig, "bob", "phone").await?;
        alice
            .send("<message to='bob@example.test' type='chat' id='k1'><body>kept line crossed custos</body></message>")
            .await?;
        assert!(bob.message_containing("kept line", WAIT).await?.is_some());
        settled_copies(&rig, "\"kept line\"", 2)?;
    }
    // alice and bob, both straight to Prosody: nothing of this crosses Custos.
    {
        let mut side = login_direct(&rig, "bob", "side").await?;
        let mut around = login_direct(&rig, "alice", "around").await?;
        around
            .send("<message to='bob@example.test/side' type='chat' id='k2'><body>around line never crossed</body></message>")
            .await?;
        assert!(side
            .message_containing("around line", WAIT)
            .await?
            .is_some());
    }

    let stopped = rig.custos.terminate(Duration::from_secs(20));
    assert!(stopped.is_some_and(|s| s.success()), "{}", rig.context());
    rig.custos.start_again()?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let replayed = mam_query(&mut bob, "r1").await?;
    for line in ["kept line", "around line"] {
        assert!(
            replayed.iter().any(|b| b.contains(line)),
            "{line}: {replayed:?}"
        );
    }
    drop(bob);
    let kept = settled_copies(&rig, "\"kept line\"", 3)?;
    let kept_replay = replays_to(&kept, "bob@example.test/phone");
    assert_eq!(kept_replay.len(), 1, "{kept:#?}");
    assert!(rules_of(kept_replay[0]).is_empty(), "{kept:#?}");
    assert_eq!(kept_replay[0]["action"], "allow", "{kept:#?}");
    let around = settled_copies(&rig, "\"around line\"", 1)?;
    assert_eq!(around.len(), 1, "only the replay: {around:#?}");
    assert_eq!(rules_of(&around[0]), ["custos:replay-only"], "{around:#?}");
    assert_eq!(around[0]["action"], "flag");
    // One logical message: the replay groups with the copies that crossed Custos.
    let grouped = rig.search("\"kept line\"")?;
    assert_eq!(grouped.len(), 1, "{grouped:#?}");
    assert_eq!(grouped[0]["copies"].as_array().map(Vec::len), Some(3));

    // The administrator deletes the search index while Custos is stopped.
    let stopped = rig.custos.terminate(Duration::from_secs(20));
    assert!(stopped.is_some_and(|s| s.success()), "{}", rig.context());
    let archive = rig.archive_dir.clone().ok_or("no archive")?;
    std::fs::remove_dir_all(archive.join("index"))?;
    rig.custos.start_again()?;
    let mut bob = login(&rig, "bob", "tablet").await?;
    let replayed = mam_query(&mut bob, "r2").await?;
    assert_eq!(
        replayed.iter().filter(|b| b.contains(" line ")).count(),
        2,
        "{replayed:?}"
    );
    drop(bob);
    let kept = settled_copies(&rig, "\"kept line\"", 4)?;
    let around = settled_copies(&rig, "\"around line\"", 2)?;
    let kept_replay = replays_to(&kept, "bob@example.test/tablet");
    let around_replay = replays_to(&around, "bob@example.test/tablet");
    assert_eq!(
        (kept_replay.len(), around_replay.len()),
        (1, 1),
        "{kept:#?}\n{around:#?}"
    );
    // Whether the rebuilt index had caught up when the replays were judged is a race;
    // what each may be called is not.
    let kept_rules = rules_of(kept_replay[0]);
    assert!(
        kept_rules.is_empty() || kept_rules == ["custos:replay-unverified"],
        "an honest replay called {kept_rules:?}"
    );
    let around_rules = rules_of(around_replay[0]);
    assert!(
        around_rules == ["custos:replay-only"] || around_rules == ["custos:replay-unverified"],
        "a replay that went around Custos believed: {around_rules:?}"
    );
    assert_eq!(around_replay[0]["action"], "flag");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_hits_record_what_they_would_have_done() -> TestResult {
    let rig = rig(
        "capture-monitor",
        Some("[[rule]]\nid = \"trial-block\"\nmode = \"monitor\"\nwhen = { direction = \"outbound\", body = { regex = \"(?i)pilot\" } }\naction = \"block\"\n"),
    )?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send("<message to='bob@example.test/phone' type='chat' id='m1'><body>pilot programme</body></message>")
        .await?;
    assert!(
        bob.message_containing("pilot", WAIT).await?.is_some(),
        "monitor mode delivers"
    );
    let hits = settled_copies(&rig, "pilot", 2)?;
    let sent = hits
        .iter()
        .find(|h| h["leg"] == "client-to-server")
        .ok_or("no sender copy")?;
    assert_eq!(sent["action"], "allow");
    assert_eq!(sent["would_action"], "block", "{sent:#}");
    assert!(rules_of(sent).contains(&"trial-block"));
    Ok(())
}

/// SASL EXTERNAL and channel-bound mechanisms cannot cross Custos (the client's TLS
/// session and certificate end here): never offered, and a client that asks anyway is
/// refused by Custos, so the server never judges Custos's side of the upstream TLS
/// session as the client's. The same stream then logs in normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_bound_to_the_client_tls_session_is_refused_at_custos() -> TestResult {
    let rig = rig("capture-external", None)?;
    let mut c =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    let offered = c.transcript.clone();
    assert!(offered.contains("PLAIN"), "{offered}");
    assert!(!offered.contains("EXTERNAL"), "{offered}");
    assert!(!offered.contains("-PLUS"), "{offered}");
    for mechanism in ["EXTERNAL", "SCRAM-SHA-1-PLUS"] {
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>=</auth>"
        ))
        .await?;
        let answer = c
            .until(|e| e.name == "success" || e.name == "failure")
            .await?;
        assert_eq!(answer.name, "failure", "{mechanism}");
        assert!(
            answer.children().any(|e| e.name == "invalid-mechanism"),
            "{mechanism}: {answer:?}"
        );
    }
    c.authenticate("alice", password("alice")).await?;
    let jid = c.bind("laptop").await?;
    assert_eq!(jid, "alice@example.test/laptop");
    // Prosody never saw either request.
    let log = rig.server.log_tail();
    assert!(!log.contains("mechanism='EXTERNAL'"), "{log}");
    assert!(!log.contains("SCRAM-SHA-1-PLUS'"), "{log}");
    Ok(())
}

/// A SASL2 client (XEP-0388) with Bind2 logs in through Custos: the archive records its
/// messages under the full JID the SASL2 success proved; a SASL1 client on the same Custos
/// chats with it; after its connection drops, a new SASL2 login resumes the session
/// (XEP-0198; the message sent meanwhile arrives once) and what it sends afterwards is
/// still recorded under the same JID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl2_bind2_session_is_archived_under_the_jid_it_proved() -> TestResult {
    let rig = Rig::start(
        "capture-sasl2",
        RigOptions {
            archive: true,
            sasl2: true,
            // mod_sasl2 from Debian's prosody-modules (2023-02) asks the TLS connection
            // for `ssl_info`, which Prosody 0.12 lacks: on a TLS leg it fails before
            // offering anything. Over loopback without TLS it works, and Custos carries
            // SASL2 the same either way.
            upstream_plain: true,
            ..RigOptions::default()
        },
    )?;
    let mut alice = Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test")
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    let offered = alice.transcript.clone();
    assert!(
        offered.contains("urn:xmpp:sasl:2") && offered.contains("urn:xmpp:bind:0"),
        "SASL2 and Bind2 offered through Custos: {offered}\n{}",
        rig.context()
    );
    assert!(!offered.contains("-PLUS"), "{offered}");
    let success = alice
        .authenticate_sasl2(
            "alice",
            password("alice"),
            "<bind xmlns='urn:xmpp:bind:0'><tag>e2e</tag></bind>",
        )
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
    assert!(success.children().any(|c| c.name == "bound"), "{success:?}");
    let jid = alice
        .jid
        .clone()
        .ok_or("no full JID in the SASL2 success")?;
    assert!(jid.starts_with("alice@example.test/e2e~"), "{jid}");
    let previd = alice.enable_sm().await?;
    alice.send("<presence/>").await?;

    // A SASL1 client on the same Custos.
    let mut bob = rig
        .connect("bob", "phone", custos_e2e::Tls::StartTls)
        .await?;
    alice
        .send("<message to='bob@example.test' type='chat' id='s2-1'><body>sasl2-one from alice</body></message>")
        .await?;
    assert_eq!(bob.next_message().await?.body, "sasl2-one from alice");
    bob.send_chat(&jid, "sasl2-two to alice").await?;
    alice
        .message_containing("sasl2-two", WAIT)
        .await?
        .ok_or("bob's message did not reach the SASL2 session")?;

    // The connection drops; Bob writes meanwhile; an inline resume reattaches.
    let h = alice.handled;
    alice.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_chat(&jid, "sasl2-three while away").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    again
        .authenticate_sasl2("alice", password("alice"), "")
        .await?;
    let resumed = again.resume(&previd, h).await?;
    assert_eq!(resumed.name, "resumed", "{resumed:?}\n{}", rig.context());
    again.handled = h;
    again
        .message_containing("sasl2-three", WAIT)
        .await?
        .ok_or("the message sent while away did not arrive after resumption")?;
    again
        .send("<message to='bob@example.test' type='chat' id='s2-4'><body>sasl2-four after resuming</body></message>")
        .await?;
    assert_eq!(bob.next_message().await?.body, "sasl2-four after resuming");

    for text in ["sasl2-one", "sasl2-two", "sasl2-three", "sasl2-four"] {
        let hits = settled_copies(&rig, text, 2)?;
        assert_eq!(hits.len(), 2, "{text}: {hits:#?}\n{}", rig.context());
        assert!(
            hits.iter()
                .any(|h| h["account"].as_str() == Some(jid.as_str())),
            "{text} recorded under {jid}: {hits:#?}"
        );
    }
    Ok(())
}

/// A Bind2 tag becomes part of the resource Prosody binds (`tag~suffix`), in the address
/// of everything the session sends: one a rule blocks is taken out of the request and
/// the server picks the resource; one no rule refuses is kept. Once the server has bound
/// the session, the resource is judged again with its account known, as an RFC 6120
/// bind is: one a rule on that account refuses ends the session with
/// `<policy-violation/>` before the client has the success, and one a rule flags is on
/// the record with its flag, so no rule is dodged by binding through SASL2. A tag taken
/// out of the request is recorded, refused, once the account is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind2_tag_policy_refuses_never_becomes_the_resource() -> TestResult {
    let rig = Rig::start(
        "capture-bind2-tag",
        RigOptions {
            archive: true,
            sasl2: true,
            // As in the test above: Debian's mod_sasl2 works over loopback without TLS.
            upstream_plain: true,
            rules: Some(
                "[[rule]]\nid = \"codename\"\nwhen = { body = { regex = \"(?i)falcon\" } }\naction = \"block\"\n\n\
                 [[rule]]\nid = \"alice-osprey\"\nwhen = { from = \"alice@example.test\", body = { regex = \"(?i)osprey\" } }\naction = \"block\"\n\n\
                 [[rule]]\nid = \"watch\"\nwhen = { body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n"
                    .into(),
            ),
            ..RigOptions::default()
        },
    )?;
    for (user, tag, kept) in [
        ("alice", "falcon-desk", false),
        ("bob", "osprey-desk", true),
        ("alice", "kestrel-desk", true),
        ("alice", "plain-desk", true),
    ] {
        let mut c = Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test")
            .await
            .map_err(|e| format!("{e}\n{}", rig.context()))?;
        c.authenticate_sasl2(
            user,
            password(user),
            &format!("<bind xmlns='urn:xmpp:bind:0'><tag>{tag}</tag></bind>"),
        )
        .await
        .map_err(|e| format!("{e}\n{}", rig.context()))?;
        let jid = c.jid.clone().ok_or("no full JID in the SASL2 success")?;
        assert_eq!(jid.contains(tag), kept, "{tag}: {jid}");
        assert!(jid.starts_with(&format!("{user}@example.test/")), "{jid}");
    }

    // A rule on Alice's account alone: judged from the session's domain at the
    // `<authenticate/>`, the tag passes; once the account is known, it is refused.
    let mut refused =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    refused
        .send_authenticate_sasl2(
            "alice",
            password("alice"),
            "<bind xmlns='urn:xmpp:bind:0'><tag>osprey-desk</tag></bind>",
        )
        .await?;
    let seen = refused.rest_within(WAIT).await?;
    assert!(
        seen.iter().all(|e| e.name != "success"),
        "the SASL2 success was delivered: {}",
        refused.transcript
    );
    assert!(
        seen.iter()
            .any(|e| e.name == "error" && e.children().any(|c| c.name == "policy-violation")),
        "{}",
        refused.transcript
    );
    let hits = settled_copies(&rig, "osprey", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}\n{}", rig.context());
    assert_eq!(hits[0]["action"], "block", "{:#}", hits[0]);
    assert!(
        rules_of(&hits[0]).contains(&"alice-osprey"),
        "{:#}",
        hits[0]
    );
    assert!(
        hits[0]["account"]
            .as_str()
            .is_some_and(|a| a.starts_with("alice@example.test/osprey-desk")),
        "{:#}",
        hits[0]
    );

    // A flagged tag is on the record with its flag; a plain one makes no record.
    let hits = settled_copies(&rig, "kestrel", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["action"], "flag", "{:#}", hits[0]);
    assert!(rules_of(&hits[0]).contains(&"watch"), "{:#}", hits[0]);
    assert!(rig.search_copies("plain")?.is_empty());
    // The tag taken out at the `<authenticate/>` is on the record too, once the account
    // is known: what the user tried to bind, refused.
    let hits = settled_copies(&rig, "falcon", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["action"], "block", "{:#}", hits[0]);
    assert_eq!(hits[0]["direction"], "outbound", "{:#}", hits[0]);
    assert!(rules_of(&hits[0]).contains(&"codename"), "{:#}", hits[0]);
    assert!(
        hits[0]["account"]
            .as_str()
            .is_some_and(|a| a.starts_with("alice@example.test/") && !a.contains("falcon")),
        "{:#}",
        hits[0]
    );

    // Prosody reads the first element in Bind2's namespace whatever its name, and the
    // first tag in it: a request that could make it read a tag Custos does not is
    // refused whole, never passed on.
    for inline in [
        "<x xmlns='urn:xmpp:bind:0'><tag>falcon-desk</tag></x><bind xmlns='urn:xmpp:bind:0'/>",
        "<bind xmlns='urn:xmpp:bind:0'/><bind xmlns='urn:xmpp:bind:0'><tag>falcon-desk</tag></bind>",
        "<bind xmlns='urn:xmpp:bind:0'><tag/><tag>falcon-desk</tag></bind>",
    ] {
        let mut odd =
            Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
        odd.send_authenticate_sasl2("alice", password("alice"), inline)
            .await?;
        let seen = odd.rest_within(WAIT).await?;
        assert!(
            seen.iter().all(|e| e.name != "success") && !odd.transcript.contains("falcon"),
            "{inline}: {}",
            odd.transcript
        );
        assert!(
            seen.iter().any(|e| e.name == "error"),
            "{inline}: {}",
            odd.transcript
        );
    }
    Ok(())
}

/// A room's address is named by whoever creates it and is shown to everyone who finds or
/// enters the room. The room Custos sees a user create (the room's own presence to that
/// user with status 201, answering an entry the session asked for) is judged on its name
/// as words the user sends. One a rule refuses is left at once (the server destroys a
/// new room nobody is in) and the user is told `<policy-violation/>`; one a rule flags is
/// on the record. Entering a room that already exists reads no name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_named_by_its_creator_is_judged() -> TestResult {
    let rig = rig(
        "capture-room-name",
        Some(
            // What the user sends: a room's name is judged as the user's words.
            "[[rule]]\nid = \"codename\"\nwhen = { direction = \"outbound\", body = { regex = \"(?i)falcon\" } }\naction = \"block\"\n\n\
             [[rule]]\nid = \"watch\"\nwhen = { direction = \"outbound\", body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n",
        ),
    )?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let entry = |room: &str| {
        format!("<presence to='{room}@conference.example.test/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    };
    let from_room = |room: &'static str| {
        move |e: &custos_proxy::xml::Element| {
            e.name == "presence"
                && e.attr("from")
                    .is_some_and(|f| f.starts_with(&format!("{room}@conference.example.test/")))
        }
    };
    alice.send(&entry("falcon-plans")).await?;
    let answer = alice.until(from_room("falcon-plans")).await?;
    assert_eq!(answer.attr("type"), Some("error"), "{}", alice.transcript);
    assert!(
        alice.transcript.contains("policy-violation"),
        "{}",
        alice.transcript
    );
    let hits = settled_copies(&rig, "falcon", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}\n{}", rig.context());
    assert_eq!(hits[0]["action"], "block", "{:#}", hits[0]);
    assert!(rules_of(&hits[0]).contains(&"codename"), "{:#}", hits[0]);
    // Alice left it: someone straight at the server who enters it creates it anew.
    let mut carol = login_direct(&rig, "carol", "desk").await?;
    carol.send("<presence to='falcon-plans@conference.example.test/carol'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await?;
    let own = carol.until(from_room("falcon-plans")).await?;
    assert!(
        own.children()
            .flat_map(|x| x.children())
            .any(|c| c.name == "status" && c.attr("code") == Some("201")),
        "the room was still there: {}",
        carol.transcript
    );

    // An address the server prepares (a soft hyphen that shows nothing taken out, a
    // fullwidth letter folded) names the room the server creates.
    alice.send(&entry("fal\u{AD}con-soft")).await?;
    let answer = alice.until(from_room("falcon-soft")).await?;
    assert_eq!(answer.attr("type"), Some("error"), "{}", alice.transcript);
    alice.send(&entry("\u{FF46}alcon-wide")).await?;
    let answer = alice.until(from_room("falcon-wide")).await?;
    assert_eq!(answer.attr("type"), Some("error"), "{}", alice.transcript);

    // A script that makes the room persistent and hands its ownership on before the
    // room's answer reaches Custos does not keep it: those requests wait for the answer,
    // and the refused room is destroyed, not only left.
    alice
        .send(&format!(
            "{}<iq type='set' id='keep' to='falcon-keep@conference.example.test'>\
             <query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>\
             <iq type='set' id='hand-on' to='falcon-keep@conference.example.test'>\
             <query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@example.test' affiliation='owner'/></query></iq>\
             <iq type='set' id='step-down' to='falcon-keep@conference.example.test'>\
             <query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@example.test' affiliation='member'/></query></iq>",
            entry("falcon-keep")
        ))
        .await?;
    let answer = alice.until(from_room("falcon-keep")).await?;
    assert_eq!(answer.attr("type"), Some("error"), "{}", alice.transcript);
    assert!(
        alice.transcript.contains("not-allowed"),
        "the early requests were not refused: {}",
        alice.transcript
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    carol
        .send("<presence to='falcon-keep@conference.example.test/carol'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await?;
    // Prosody keeps a destroyed persistent room's tombstone: an entry gets `<gone/>`.
    let own = carol.until(from_room("falcon-keep")).await?;
    let created_anew = own
        .children()
        .flat_map(|x| x.children())
        .any(|c| c.name == "status" && c.attr("code") == Some("201"));
    let gone = own.attr("type") == Some("error")
        && own
            .children()
            .flat_map(|x| x.children())
            .any(|c| c.name == "gone");
    assert!(
        created_anew || gone,
        "the persistent room was still there: {}",
        carol.transcript
    );

    // A flagged name: the room is entered, and its creation is on the record.
    alice.send(&entry("kestrel-desk")).await?;
    let answer = alice.until(from_room("kestrel-desk")).await?;
    assert_eq!(answer.attr("type"), None, "{}", alice.transcript);
    let hits = settled_copies(&rig, "kestrel", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["action"], "flag", "{:#}", hits[0]);
    assert!(rules_of(&hits[0]).contains(&"watch"), "{:#}", hits[0]);
    // Bob enters the room Alice made: he names nothing, and nothing more is recorded.
    let mut bob = login(&rig, "bob", "phone").await?;
    bob.send("<presence to='kestrel-desk@conference.example.test/bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await?;
    bob.until(from_room("kestrel-desk")).await?;
    // A plain name makes no record.
    alice.send(&entry("lunch-orders")).await?;
    alice.until(from_room("lunch-orders")).await?;
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(rig.search_copies("kestrel")?.len(), 1);
    assert!(rig.search_copies("lunch")?.is_empty());
    Ok(())
}

/// A client that ends its stream with a stream error (as clients do when what they
/// received is not well-formed) is logged as objecting, with its condition, not blamed
/// as a faulty client; its text is quoted escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_stream_error_is_logged_with_its_condition() -> TestResult {
    let rig = rig("capture-stream-error", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    alice
        .send(
            "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
               <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad bytes\nforged: line</text>\
               </stream:error></stream:stream>",
        )
        .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let log = rig.custos.log_tail();
        if log.contains("the client ended its stream with a stream error") {
            assert!(
                log.contains("condition=\"not-well-formed\"")
                    || log.contains("condition=not-well-formed"),
                "{log}"
            );
            assert!(
                log.contains("bad bytes\\nforged: line"),
                "escaped text: {log}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not logged\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// After SASL the client writes a new stream header. One that declares another default
/// namespace would turn every stanza after it into an unknown element for Custos (not a
/// message, so neither inspected nor archived) while the server, under Custos's own
/// `jabber:client` header, reads a message and delivers it. Custos refuses the header;
/// and an unknown top-level element is refused, never passed on unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_header_or_element_in_another_namespace_cannot_take_messages_off_the_record(
) -> TestResult {
    let rig = rig("capture-restart-ns", None)?;
    let mut bob = rig
        .connect("bob", "phone", custos_e2e::Tls::StartTls)
        .await?;

    let mut c =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    c.authenticate_restarting_with(
        "alice",
        password("alice"),
        "<stream:stream xmlns='urn:evil' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>\
         <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>\
         <message to='bob@example.test' type='chat'><body>offrecord-1 under another namespace</body></message>",
    )
    .await?;
    assert!(c.closed_within(WAIT).await, "the stream is ended");
    assert!(
        c.transcript.contains("invalid-namespace"),
        "{}",
        c.transcript
    );

    // A message wrapped in an element of an unknown namespace, after a normal login.
    let mut d = login(&rig, "alice", "desk").await?;
    d.send("<x xmlns='urn:evil'><message xmlns='jabber:client' to='bob@example.test' type='chat'><body>offrecord-2 wrapped</body></message></x>")
        .await?;
    assert!(d.closed_within(WAIT).await, "the stream is ended");
    assert!(
        d.transcript.contains("unsupported-stanza-type"),
        "{}",
        d.transcript
    );

    bob.expect_no_message(Duration::from_millis(700)).await?;
    let log = rig.server.log_tail();
    assert!(!log.contains("offrecord-"), "reached the server: {log}");
    Ok(())
}

/// A file sent straight to a colleague's client (a XEP-0234 Jingle offer, then its bytes
/// in band) would cross unrecorded. Through a real Prosody the offer and the bytes are
/// refused, with the reason, and never reach the colleague; a message beside them is
/// delivered as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_between_clients_is_refused_and_never_reaches_the_other() -> TestResult {
    let rig = rig("capture-peer-file", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    let offer = "<iq to='bob@example.test/phone' type='set' id='ft1'>\
        <jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s1' initiator='alice@example.test/laptop'>\
        <content creator='initiator' name='f'><description xmlns='urn:xmpp:jingle:apps:file-transfer:5'>\
        <file><name>ledger.xlsx</name><size>6</size></file></description>\
        <transport xmlns='urn:xmpp:jingle:transports:ibb:1' sid='t1' block-size='4096'/></content></jingle></iq>";
    let bytes = "<iq to='bob@example.test/phone' type='set' id='ft2'>\
        <data xmlns='http://jabber.org/protocol/ibb' seq='0' sid='t1'>c2VjcmV0</data></iq>";
    for (id, xml) in [("ft1", offer), ("ft2", bytes)] {
        alice.send(xml).await?;
        let reply = alice
            .until(|e| e.name == "iq" && e.attr("id") == Some(id))
            .await?;
        assert_eq!(reply.attr("type"), Some("error"), "{}", alice.transcript);
    }
    assert!(
        alice.transcript.contains("not-acceptable") && alice.transcript.contains("HTTP upload"),
        "{}",
        alice.transcript
    );
    alice
        .send("<message to='bob@example.test/phone' type='chat' id='m1'><body>peer-file: use the upload</body></message>")
        .await?;
    assert!(bob.message_containing("peer-file", WAIT).await?.is_some());
    assert!(
        !bob.transcript.contains("jingle") && !bob.transcript.contains("c2VjcmV0"),
        "{}",
        bob.transcript
    );
    Ok(())
}

/// An iq between two clients is routed by the server unread: a scripted client could hold
/// a whole conversation in iqs. Their words are recorded on both legs, and judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_held_in_iqs_between_clients_is_recorded() -> TestResult {
    let rig = rig("capture-iq-talk", None)?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send(
            "<iq to='bob@example.test/phone' type='set' id='q1'>\
             <note xmlns='urn:example:chat'>iqtalk meet at the dock</note></iq>",
        )
        .await?;
    let asked = bob
        .until(|e| e.name == "iq" && e.attr("id") == Some("q1"))
        .await?;
    assert_eq!(asked.attr("type"), Some("set"), "{}", bob.transcript);
    bob.send(
        "<iq to='alice@example.test/laptop' type='result' id='q1'>\
         <note xmlns='urn:example:chat'>iqtalk see you there</note></iq>",
    )
    .await?;
    let answer = alice
        .until(|e| e.name == "iq" && e.attr("id") == Some("q1"))
        .await?;
    assert_eq!(answer.attr("type"), Some("result"), "{}", alice.transcript);
    // Each iq on its sender's leg and on its recipient's.
    let hits = settled_copies(&rig, "iqtalk", 4)?;
    assert_eq!(hits.len(), 4, "{hits:#?}");
    for (text, from) in [
        ("meet at the dock", "alice@example.test/laptop"),
        ("see you there", "bob@example.test/phone"),
    ] {
        let copies: Vec<&Value> = hits
            .iter()
            .filter(|h| h.to_string().contains(text))
            .collect();
        assert_eq!(copies.len(), 2, "{text}: {hits:#?}");
        assert!(copies.iter().all(|h| h["from"] == from), "{copies:#?}");
    }
    Ok(())
}

/// An error is answered with text its sender writes: a client outside Custos sends the
/// user one no request asked for, its words in the error's text. One a rule matches is
/// on the record with its verdict; one no rule matches (a server's bounce reads so) is
/// delivered unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_in_an_error_from_another_client_are_judged() -> TestResult {
    let rig = rig(
        "capture-error-text",
        Some("[[rule]]\nid = \"watch-errors\"\nwhen = { body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n"),
    )?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login_direct(&rig, "bob", "phone").await?;
    for (id, text) in [
        ("e1", "plain errortext at noon"),
        ("e2", "kestrel errorword at noon"),
    ] {
        bob.send(&format!(
            "<iq to='alice@example.test/laptop' type='error' id='{id}'><error type='cancel'>\
             <undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{text}</text></error></iq>"
        ))
        .await?;
        let seen = alice
            .until(|e| e.name == "iq" && e.attr("id") == Some(id))
            .await?;
        assert_eq!(seen.attr("type"), Some("error"), "{}", alice.transcript);
    }
    let hits = settled_copies(&rig, "errorword", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["action"], "flag", "{:#}", hits[0]);
    assert_eq!(hits[0]["from"], "bob@example.test/phone", "{:#}", hits[0]);
    assert!(
        rules_of(&hits[0]).contains(&"watch-errors"),
        "{:#}",
        hits[0]
    );
    assert!(rig.search_copies("errortext")?.is_empty());
    Ok(())
}

/// The resource a session binds is in the address of all it sends: every contact reads
/// it in a presence. One a block rule matches ends the session before the client learns
/// it is bound, and is on the record; one a flag rule matches is on the record and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_a_rule_matches_is_judged_and_recorded() -> TestResult {
    let rig = rig(
        "capture-resource",
        Some(
            "[[rule]]\nid = \"codename\"\nwhen = { body = { regex = \"(?i)falcon\" } }\naction = \"block\"\n\n\
             [[rule]]\nid = \"watch\"\nwhen = { body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n",
        ),
    )?;
    let mut refused =
        Scripted::connect(rig.custos.listener(1), rig.ca.cert_path(), "example.test").await?;
    refused.authenticate("alice", password("alice")).await?;
    refused
        .send("<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>falcon-plans</resource></bind></iq>")
        .await?;
    let seen = refused.rest_within(WAIT).await?;
    assert!(
        seen.iter().all(|e| e.attr("id") != Some("bind-1")),
        "the bind result was delivered: {}",
        refused.transcript
    );
    assert!(
        seen.iter()
            .any(|e| e.name == "error" && e.children().any(|c| c.name == "policy-violation")),
        "{}",
        refused.transcript
    );
    let hits = settled_copies(&rig, "falcon", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["action"], "block", "{:#}", hits[0]);
    assert!(rules_of(&hits[0]).contains(&"codename"), "{:#}", hits[0]);

    let mut alice = login(&rig, "alice", "kestrel-desk").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send("<message to='bob@example.test/phone' type='chat' id='m1'><body>resourceword hello</body></message>")
        .await?;
    bob.message_containing("resourceword", WAIT)
        .await?
        .ok_or("the message did not arrive")?;
    let hits = settled_copies(&rig, "kestrel", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["action"], "flag", "{:#}", hits[0]);
    assert!(rules_of(&hits[0]).contains(&"watch"), "{:#}", hits[0]);
    // A plain resource makes no record.
    assert!(rig.search_copies("phone")?.is_empty());
    Ok(())
}

/// A status is shown to every contact: one a flag rule matches is on the record with its
/// verdict, on the sender's leg and on each contact's behind Custos, and found by search;
/// one no rule matches is not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_status_is_on_the_record() -> TestResult {
    let rig = rig(
        "capture-status",
        Some("[[rule]]\nid = \"watch-status\"\nwhen = { body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n"),
    )?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    let mut bob = login(&rig, "bob", "phone").await?;
    alice
        .send("<presence to='bob@example.test/phone'><status>plain afternoon</status></presence>")
        .await?;
    bob.until(|e| e.name == "presence" && e.child("status", "jabber:client").is_some())
        .await?;
    alice
        .send("<presence to='bob@example.test/phone'><status>kestrel statusword at noon</status></presence>")
        .await?;
    let seen = bob
        .until(|e| {
            e.name == "presence"
                && e.child("status", "jabber:client")
                    .is_some_and(|s| s.text().contains("statusword"))
        })
        .await?;
    assert_eq!(seen.attr("type"), None, "{}", bob.transcript);
    let hits = settled_copies(&rig, "statusword", 2)?;
    assert_eq!(hits.len(), 2, "{hits:#?}");
    for hit in &hits {
        assert_eq!(hit["action"], "flag", "{hit:#}");
        assert!(rules_of(hit).contains(&"watch-status"), "{hit:#}");
    }
    assert!(rig.search_copies("afternoon")?.is_empty());
    Ok(())
}

/// Words published to a pubsub node reach every reader of the node, outside the firm
/// too: the publish is recorded and found by search; a device list is not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_published_to_a_pep_node_are_on_the_record() -> TestResult {
    // PEP, which the minimal Prosody leaves out, as a full client's server has it.
    let rig = Rig::start(
        "capture-pep",
        RigOptions {
            archive: true,
            web_client: true,
            ..RigOptions::default()
        },
    )?;
    let mut alice = login(&rig, "alice", "laptop").await?;
    for (id, node, payload) in [
        (
            "pub1",
            "urn:example:notes",
            "<note xmlns='urn:example:notes'>pubword the plan is friday</note>",
        ),
        (
            "pub2",
            "urn:xmpp:omemo:2:devices",
            "<devices xmlns='urn:xmpp:omemo:2'><device id='4711'/></devices>",
        ),
    ] {
        alice
            .send(&format!(
                "<iq type='set' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                 <publish node='{node}'><item id='current'>{payload}</item></publish></pubsub></iq>"
            ))
            .await?;
        let reply = alice
            .until(|e| e.name == "iq" && e.attr("id") == Some(id))
            .await?;
        assert_eq!(reply.attr("type"), Some("result"), "{}", alice.transcript);
    }
    let hits = settled_copies(&rig, "pubword", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["leg"], "client-to-server", "{:#}", hits[0]);
    assert_eq!(
        hits[0]["from"], "alice@example.test/laptop",
        "{:#}",
        hits[0]
    );
    assert!(rig.search_copies("4711")?.is_empty());
    Ok(())
}

/// A room's name and description reach everyone who finds the room, and the nickname
/// taken in it everyone in it: the owner's configuration is on the record and found by
/// search, and an entry whose nickname a flag rule matches is recorded with its verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_written_for_a_room_are_on_the_record() -> TestResult {
    let rig = rig(
        "capture-room-words",
        Some("[[rule]]\nid = \"watch-nick\"\nwhen = { body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n"),
    )?;
    let room = "plans@conference.example.test";
    let nick = "kestrel watcher";
    let mut alice = login(&rig, "alice", "desk").await?;
    alice
        .send(&format!(
            "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await?;
    let entered = alice
        .until(|e| e.name == "presence" && e.attr("from") == Some(&format!("{room}/{nick}")))
        .await?;
    assert_eq!(entered.attr("type"), None, "{}", alice.transcript);
    alice
        .send(&format!(
            "<iq to='{room}' type='set' id='cfg1'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_roomname'><value>Plans</value></field>\
             <field var='muc#roomconfig_roomdesc'><value>roomword the merger closes friday</value></field>\
             <field var='muc#roomconfig_roomsecret'><value>secretword</value></field>\
             </x></query></iq>"
        ))
        .await?;
    let reply = alice
        .until(|e| e.name == "iq" && e.attr("id") == Some("cfg1"))
        .await?;
    assert_eq!(reply.attr("type"), Some("result"), "{}", alice.transcript);
    let hits = settled_copies(&rig, "roomword", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["leg"], "client-to-server", "{:#}", hits[0]);
    assert_eq!(hits[0]["from"], "alice@example.test/desk", "{:#}", hits[0]);
    assert!(rig.search_copies("secretword")?.is_empty());
    let entries = settled_copies(&rig, "watcher", 1)?;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["action"], "flag", "{:#}", entries[0]);
    assert!(
        rules_of(&entries[0]).contains(&"watch-nick"),
        "{:#}",
        entries[0]
    );
    Ok(())
}

/// Items on another account's node reach the user when fetched, which no message
/// carries: a node written around Custos (an outsider's, say) and fetched through it is
/// on the record as that account's words to the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_fetched_from_another_accounts_node_are_on_the_record() -> TestResult {
    let rig = Rig::start(
        "capture-fetch",
        RigOptions {
            archive: true,
            web_client: true,
            ..RigOptions::default()
        },
    )?;
    // Bob publishes straight to the server, to a node anyone may read.
    let mut bob = login_direct(&rig, "bob", "phone").await?;
    bob.send(
        "<iq type='set' id='pub1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <publish node='urn:example:notes'><item id='current'>\
         <note xmlns='urn:example:notes'>fetchword the plan is friday</note></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>open</value></field></x></publish-options>\
         </pubsub></iq>",
    )
    .await?;
    let reply = bob
        .until(|e| e.name == "iq" && e.attr("id") == Some("pub1"))
        .await?;
    assert_eq!(reply.attr("type"), Some("result"), "{}", bob.transcript);
    assert!(rig.search_copies("fetchword")?.is_empty());
    let mut alice = login(&rig, "alice", "laptop").await?;
    alice
        .send(
            "<iq to='bob@example.test' type='get' id='get1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='urn:example:notes'/></pubsub></iq>",
        )
        .await?;
    let items = alice
        .until(|e| e.name == "iq" && e.attr("id") == Some("get1"))
        .await?;
    assert_eq!(items.attr("type"), Some("result"), "{}", alice.transcript);
    let hits = settled_copies(&rig, "fetchword", 1)?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["leg"], "server-to-client", "{:#}", hits[0]);
    assert_eq!(hits[0]["from"], "bob@example.test", "{:#}", hits[0]);
    Ok(())
}
