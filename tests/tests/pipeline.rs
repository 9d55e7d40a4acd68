//! Policy and archive on real traffic: real clients through Custos to a real Prosody,
//! every message archived before it is delivered, rules enforced on the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use custos_e2e::process::{main_niceness, thread_niceness};
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::scripted::{Received, Scripted};
use custos_e2e::{OutgoingMessage, SlixClient, Tls};

type TestResult = Result<(), BoxError>;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_messages_are_archived_per_leg_and_shown_once_in_search() -> TestResult {
    let rig = Rig::start(
        "pipeline-archive",
        RigOptions {
            archive: true,
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;

    alice
        .send_message(OutgoingMessage {
            subject: Some("falcon briefing".into()),
            thread: Some("th-42".into()),
            ..OutgoingMessage::chat("bob@example.test", "the quarterly aardvark numbers are in")
        })
        .await?;
    assert_eq!(
        bob.next_message().await?.body,
        "the quarterly aardvark numbers are in"
    );
    bob.send_chat("alice@example.test/laptop", "thanks, aardvark received")
        .await?;
    assert_eq!(
        alice.next_message().await?.body,
        "thanks, aardvark received"
    );

    // Searchable within a second of delivery. Both users are behind Custos: each message
    // crossed two streams and is recorded twice (the sender's outbound copy and the
    // recipient's inbound one, each with its own verdict), and search shows it once.
    let copies = rig.search_copies_until("aardvark", 4, Duration::from_secs(3))?;
    assert_eq!(copies.len(), 4, "{copies:#?}\n{}", rig.context());

    // Index building runs below the relay's priority (`index_niceness`, 10 by default),
    // tantivy's threads included; relaying and the log's writer do not.
    let pid = rig.custos.pid().ok_or("custos has no pid")?;
    let threads = thread_niceness(pid)?;
    let base = main_niceness(&threads, pid)?;
    assert!(
        base + 10 <= 19,
        "the tests run at nice {base}: 10 steps more would pass 19, and nothing could be told apart"
    );
    let lowered = base + 10;
    // tantivy's indexing worker and its document-store compressor are started afresh at
    // each commit, so either may be between two lives at this moment: checked when there.
    let index_threads = [
        ("custos-indexer", true),
        ("segment_updater", true),
        ("merge_thread_", true),
        ("thrd-tantivy-in", false),
        ("docstore-compre", false),
    ];
    for (name, always_there) in index_threads {
        let found: Vec<_> = threads
            .iter()
            .filter(|(_, n, _)| n.starts_with(name))
            .collect();
        assert!(
            !always_there || !found.is_empty(),
            "no {name} thread: {threads:?}"
        );
        assert!(
            found.iter().all(|(_, _, n)| *n == lowered),
            "{name}: {threads:?}"
        );
    }
    for name in ["custos-archive-", "tokio-rt-worker"] {
        let found: Vec<_> = threads.iter().filter(|(_, n, _)| n == name).collect();
        assert!(!found.is_empty(), "no {name} thread: {threads:?}");
        assert!(
            found.iter().all(|(_, _, n)| *n == base),
            "{name}: {threads:?}"
        );
    }
    let hits = rig.search("aardvark")?;
    assert_eq!(hits.len(), 2, "{hits:#?}\n{}", rig.context());
    for hit in &hits {
        let legs: Vec<(&str, &str)> = hit["copies"]
            .as_array()
            .ok_or("no copies")?
            .iter()
            .map(|c| {
                (
                    c["leg"].as_str().unwrap_or(""),
                    c["direction"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            legs,
            [
                ("client-to-server", "outbound"),
                ("server-to-client", "inbound")
            ],
            "{hit:#}"
        );
    }
    assert_eq!(hits[0]["copies"][0]["account"], "alice@example.test/laptop");
    assert_eq!(hits[0]["copies"][1]["account"], "bob@example.test/phone");
    let first = &hits[0];
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["from"], "alice@example.test/laptop");
    assert_eq!(first["to"], "bob@example.test");
    assert_eq!(first["type"], "chat");
    assert_eq!(first["body"], "the quarterly aardvark numbers are in");
    assert_eq!(first["subject"], "falcon briefing");
    assert_eq!(first["thread"], "th-42");
    assert_eq!(first["action"], "allow");
    assert_eq!(hits[1]["from"], "bob@example.test/phone");
    assert!(
        hits[0]["seq"].as_u64() < hits[1]["seq"].as_u64(),
        "ordered by time"
    );

    // Field queries.
    assert_eq!(rig.search("from:bob@example.test aardvark")?.len(), 1);
    assert_eq!(
        rig.search("with:alice@example.test \"quarterly aardvark\"")?
            .len(),
        1
    );
    assert_eq!(rig.search("aardvark -thanks")?.len(), 1);

    // verify passes on the live archive, from a second process.
    let out = rig.cli(&["verify"])?;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing plaintext at rest: the message text appears in no file of the archive
    // directory (record log and search index alike).
    let dir = rig.archive_dir.clone().ok_or("no archive dir")?;
    for path in walk(&dir)? {
        let bytes = std::fs::read(&path)?;
        for needle in [&b"aardvark"[..], b"quarterly", b"alice@example.test"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains {:?} in clear",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    alice.disconnect().await?;
    bob.disconnect().await?;
    // Besides the four copies, each session's start (with its bound JID) and end are
    // records too: 4 + 2 × 2.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = rig.cli(&["verify"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(", 8 record(s),") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected 8 records: {text}\n{}",
            rig.context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn walk(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_delivered_when_the_archive_cannot_write() -> TestResult {
    let rig = disk_that_can_fail("pipeline-archive-fails")?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    alice
        .send_chat("bob@example.test", "before the disk went bad")
        .await?;
    assert_eq!(bob.next_message().await?.body, "before the disk went bad");

    // The archive directory becomes unwritable.
    let dir = rig.archive_dir.clone().ok_or("no archive dir")?;
    set_readonly(&dir)?;

    // The first write after that may still land in the open segment (it is durable, so it
    // may be delivered); sealing it fails, and from then on nothing is delivered.
    let mut refused = 0;
    for i in 0..4 {
        let id = alice
            .send_chat("bob@example.test", &format!("unarchivable {i}"))
            .await?;
        match alice.wait_stanza_error(&id).await {
            Ok(err) => {
                assert_eq!(err.condition, "internal-server-error", "{err:?}");
                assert_eq!(err.error_type, "wait");
                assert!(err.text.contains("could not be archived"), "{}", err.text);
                refused += 1;
            }
            Err(_) if refused == 0 => {}
            Err(e) => {
                return Err(format!(
                    "message {i} was not refused after a refusal: {e}\n{}",
                    rig.context()
                )
                .into())
            }
        }
    }
    assert!(
        refused >= 3,
        "only {refused} of 4 refused\n{}",
        rig.context()
    );
    // Bob never sees a refused message.
    let mut delivered = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(800), bob.next_message()).await {
        delivered.push(m?.body);
    }
    assert!(
        delivered.len() <= 4 - refused,
        "delivered {delivered:?} with {refused} refused"
    );
    assert!(
        rig.custos
            .log()
            .contains("archive write failed; message refused"),
        "{}",
        rig.context()
    );
    Ok(())
}

/// A rig whose archive directory [`set_readonly`] can make unwritable: every batch
/// fills its segment, so each append must create a new file. Root ignores directory
/// permissions, so as root Custos runs as nobody here.
fn disk_that_can_fail(label: &str) -> Result<Rig, BoxError> {
    let root = nix::unistd::geteuid().is_root();
    Rig::start(
        label,
        RigOptions {
            archive: true,
            run_as: root.then_some((65534, 65534)),
            ..RigOptions::default()
        }
        .with_archive_extra(custos_e2e::config::table([("segment_max_bytes", 1)])),
    )
}

fn set_readonly(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for path in walk(dir)?
        .iter()
        .filter_map(|p| p.parent().map(ToOwned::to_owned))
        .chain([dir.to_owned()])
    {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555))?;
    }
    Ok(())
}

/// A webhook receiver on loopback: each POST body arrives on the channel.
fn webhook() -> Result<(u16, mpsc::Receiver<String>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    Ok((port, rx))
}

fn rules(webhook_port: u16) -> String {
    format!(
        r#"
internal_domains = ["example.test"]

[groups]
research = ["alice@example.test"]
trading = ["carol@example.test"]

[alert]
webhook = "http://127.0.0.1:{webhook_port}/hook"

[[lexicon]]
id = "codenames"
terms = ["kestrel", "osprey"]
whole_word = true
case_insensitive = true

[[rule]]
id = "pci-card"
when = {{ direction = "outbound", body = {{ detector = "payment-card" }} }}
action = "block"
severity = "high"
text = "Card numbers may not be sent over chat."

[[rule]]
id = "codenames"
when = {{ body = {{ lexicon = "codenames" }} }}
action = "redact"
severity = "medium"

[[rule]]
id = "merger-talk"
when = {{ body = {{ regex = "(?i)\\bmerger\\b" }} }}
action = "alert"
severity = "critical"

[[barrier]]
id = "research-trading"
between = ["research", "trading"]
text = "Research and trading are separated by an information barrier."

[[rule]]
id = "external-notice"
when = {{ kind = "message", to = "external" }}
action = "disclaimer"
text = "This conversation is recorded by Example Corp."
period = "24h"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_blocks_redacts_separates_alerts_and_warns_on_real_traffic() -> TestResult {
    let (port, hooks) = webhook()?;
    let rig = Rig::start(
        "pipeline-policy",
        RigOptions {
            archive: true,
            rules: Some(rules(port)),
            external_domain: true,
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    let mut carol = rig.connect("carol", "desk", Tls::StartTls).await?;

    // A card number: the sender gets <policy-violation/> with the rule's text; the
    // recipient never sees it.
    let id = alice
        .send_chat("bob@example.test", "my card is 4111 1111 1111 1111")
        .await?;
    let err = alice.wait_stanza_error(&id).await?;
    assert_eq!(
        err.condition,
        "policy-violation",
        "{err:?}\n{}",
        rig.context()
    );
    assert_eq!(err.text, "Card numbers may not be sent over chat.");
    // A lexicon term is redacted in what is delivered.
    alice
        .send_chat("bob@example.test", "Project Kestrel starts monday")
        .await?;
    let got = bob.next_message().await?;
    assert_eq!(
        got.body, "Project ███████ starts monday",
        "the card message must not arrive first"
    );
    // Written in small capitals, the term is read as a reader sees it: redacted where
    // it is written. A word hidden by a zero-width space no rule names is delivered as
    // sent, and found by its plain spelling in search (below).
    alice
        .send_chat("bob@example.test", "Project ᴋᴇsᴛʀᴇʟ starts tuesday")
        .await?;
    assert_eq!(
        bob.next_message().await?.body,
        "Project ███████ starts tuesday"
    );
    alice
        .send_chat("bob@example.test", "the fal\u{200B}con report")
        .await?;
    assert_eq!(bob.next_message().await?.body, "the fal\u{200B}con report");
    // Written backwards after a right-to-left override, the term shows the right way
    // round: redacted, the override and its end kept so the rest of the line is drawn
    // as it was.
    alice
        .send_chat(
            "bob@example.test",
            "Project \u{202E}lertsek\u{202C} starts wednesday",
        )
        .await?;
    assert_eq!(
        bob.next_message().await?.body,
        "Project \u{202E}███████\u{202C} starts wednesday"
    );

    // The information barrier holds both ways.
    let id = alice
        .send_chat("carol@example.test", "hello trading")
        .await?;
    let err = alice.wait_stanza_error(&id).await?;
    assert_eq!(
        err.condition,
        "policy-violation",
        "{err:?}\n{}",
        rig.context()
    );
    let id = carol
        .send_chat("alice@example.test", "hello research")
        .await?;
    let err = carol.wait_stanza_error(&id).await?;
    assert_eq!(err.condition, "policy-violation");
    assert_eq!(
        err.text,
        "Research and trading are separated by an information barrier."
    );
    carol.expect_no_message(Duration::from_millis(300)).await?;
    alice.expect_no_message(Duration::from_millis(300)).await?;

    // An alert rule: the message is delivered and the webhook gets a JSON event.
    bob.send_chat("alice@example.test", "the merger is on")
        .await?;
    assert_eq!(alice.next_message().await?.body, "the merger is on");
    let event = hooks
        .recv_timeout(Duration::from_secs(5))
        .map_err(|e| format!("no webhook call: {e}\n{}", rig.context()))?;
    let event: serde_json::Value = serde_json::from_str(&event)?;
    assert_eq!(event["rule"], "merger-talk");
    assert_eq!(event["severity"], "critical");
    assert!(
        !event.to_string().contains("merger is on"),
        "alerts carry no message text: {event}"
    );

    // A message to an external party brings the disclaimer, once per conversation.
    let mut dave = rig
        .connect_direct("dave@example.org/home", "dave-secret")
        .await?;
    // A blocked first message reaches nobody and must not use up the notice.
    let id = alice
        .send_chat("dave@example.org", "card 4111 1111 1111 1111")
        .await?;
    assert_eq!(
        alice.wait_stanza_error(&id).await?.condition,
        "policy-violation"
    );
    alice.send_chat("dave@example.org", "hi dave").await?;
    alice
        .send_chat("dave@example.org", "second message")
        .await?;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(dave.next_message().await?.body);
    }
    dave.expect_no_message(Duration::from_millis(500)).await?;
    // The notice comes first, once, then the messages in order.
    assert_eq!(
        bodies,
        [
            "This conversation is recorded by Example Corp.",
            "hi dave",
            "second message"
        ],
        "{}",
        rig.context()
    );

    // The archive holds the verdicts: the blocked original, the redacted text as
    // delivered beside the original.
    let blocked = rig.search_until("rule:pci-card", 2, Duration::from_secs(3))?;
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    assert_eq!(blocked[0]["action"], "block");
    assert_eq!(blocked[0]["body"], "my card is 4111 1111 1111 1111");
    assert_eq!(blocked[1]["to"], "dave@example.org");
    let redacted = rig.search("action:redact")?;
    assert_eq!(redacted.len(), 3, "{redacted:?}");
    assert_eq!(redacted[0]["body"], "Project Kestrel starts monday");
    assert_eq!(
        redacted[0]["delivered_body"],
        "Project ███████ starts monday"
    );
    // An officer's search finds every spelling of the term, and the hidden word.
    let mut found: Vec<String> = rig
        .search("kestrel")?
        .iter()
        .filter_map(|h| h["body"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "Project Kestrel starts monday",
            "Project ᴋᴇsᴛʀᴇʟ starts tuesday",
            "Project \u{202E}lertsek\u{202C} starts wednesday",
        ]
    );
    let hidden = rig.search("falcon")?;
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    assert_eq!(hidden[0]["body"], "the fal\u{200B}con report");
    assert_eq!(rig.search("rule:research-trading")?.len(), 2);

    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        c.disconnect().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_without_dropping_sessions() -> TestResult {
    let rig = Rig::start(
        "pipeline-reload",
        RigOptions {
            rules: Some("[[rule]]\nid = \"noop\"\nwhen = { body = { regex = \"^never-matches-anything$\" } }\naction = \"flag\"\n".into()),
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob: SlixClient = rig.connect("bob", "phone", Tls::Direct).await?;
    alice.send_chat("bob@example.test", "gamma ray").await?;
    assert_eq!(bob.next_message().await?.body, "gamma ray");

    let rules_path = rig.rules_path.clone().ok_or("no rules")?;
    // An invalid file is refused and the old rules stay in force.
    std::fs::write(
        &rules_path,
        "[[rule]]\nid = \"broken\"\naction = \"explode\"\n",
    )?;
    rig.wait_for_log("previous rules stay in force", Duration::from_secs(5))?;
    alice
        .send_chat("bob@example.test", "gamma ray again")
        .await?;
    assert_eq!(bob.next_message().await?.body, "gamma ray again");

    // A valid file takes effect on the live sessions, without reconnecting.
    std::fs::write(
        &rules_path,
        "[[rule]]\nid = \"no-gamma\"\nwhen = { body = { regex = \"(?i)gamma\" } }\naction = \"block\"\ntext = \"No gamma.\"\n",
    )?;
    rig.wait_for_log("policy reloaded", Duration::from_secs(5))?;
    // SIGHUP reloads on demand too (operators script it after deploying a file).
    let pid = rig.custos.pid().ok_or("custos not running")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    rig.wait_for_log("SIGHUP: policy reloaded", Duration::from_secs(5))?;
    let id = alice
        .send_chat("bob@example.test", "gamma ray, third time")
        .await?;
    let err = alice.wait_stanza_error(&id).await?;
    assert_eq!(err.text, "No gamma.");
    bob.expect_no_message(Duration::from_millis(300)).await?;
    alice.send_chat("bob@example.test", "delta is fine").await?;
    assert_eq!(bob.next_message().await?.body, "delta is fine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_management_counts_stay_consistent_when_stanzas_are_dropped_or_injected(
) -> TestResult {
    let rig = Rig::start(
        "pipeline-sm",
        RigOptions {
            rules: Some(
                "[[rule]]\nid = \"no-out\"\nwhen = { direction = \"outbound\", body = { regex = \"forbidden-out\" } }\naction = \"block\"\n\n\
                 [[rule]]\nid = \"no-in\"\nwhen = { direction = \"inbound\", body = { regex = \"forbidden-in\" } }\naction = \"block\"\n"
                    .into(),
            ),
            ..RigOptions::default()
        },
    )?;
    let mut alice_opts = rig.client("alice", "laptop", Tls::StartTls);
    alice_opts.stream_management = true;
    let mut alice = SlixClient::connect(alice_opts).await?;
    let mut bob_opts = rig.client("bob", "phone", Tls::Direct);
    bob_opts.stream_management = true;
    let mut bob = SlixClient::connect(bob_opts).await?;
    let mut carol = rig.connect("carol", "desk", Tls::StartTls).await?;
    assert!(
        alice.sm_state().await?.enabled,
        "stream management not enabled through Custos"
    );

    // Outbound drop plus an injected error reply on alice's stream.
    let id = alice.send_chat("bob@example.test", "forbidden-out").await?;
    alice.wait_stanza_error(&id).await?;
    alice.send_chat("bob@example.test", "fine 1").await?;
    assert_eq!(bob.next_message().await?.body, "fine 1");

    // Inbound drop on bob's stream (carol's copy passes outbound, bob's inbound copy is
    // refused), with the error injected toward the server.
    let id = carol.send_chat("bob@example.test", "forbidden-in").await?;
    carol.wait_stanza_error(&id).await?;
    carol.send_chat("bob@example.test", "fine 2").await?;
    assert_eq!(bob.next_message().await?.body, "fine 2");

    // Alice asks the server what it has handled: every stanza she sent is accounted for,
    // the refused one included (the server never saw it).
    alice.sm_request_ack().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let state = loop {
        let state = alice.sm_state().await?;
        if state.unacked == 0 || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state.unacked, 0, "{state:?}\n{}", rig.context());
    assert_eq!(state.acked, state.sent, "{state:?}");

    // Bob's acks (Prosody asks for one after each stanza) were translated: had they not
    // been, Prosody would close his stream for acknowledging more than it sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice.send_chat("bob@example.test", "fine 3").await?;
    assert_eq!(bob.next_message().await?.body, "fine 3");
    let prosody_log = rig.server.log_tail();
    assert!(!prosody_log.contains("acknowledged more"), "{prosody_log}");
    assert!(!prosody_log.contains("handled-count"), "{prosody_log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_encrypted_messages_are_detected_flagged_and_archived() -> TestResult {
    let rig = Rig::start(
        "pipeline-e2ee",
        RigOptions {
            archive: true,
            rules: Some("[[rule]]\nid = \"e2ee-message\"\nwhen = { kind = \"message\", e2ee = true }\naction = \"flag\"\nseverity = \"high\"\n".into()),
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    // What an OMEMO client (XEP-0384, legacy namespace as deployed) sends: the payload is
    // ciphertext; the body is only the fallback text for clients without OMEMO.
    let omemo = "<encrypted xmlns='eu.siacs.conversations.axolotl'>\
                 <header sid='27183'><key rid='31415'>MwohBQ==</key><iv>1234567890AB</iv></header>\
                 <payload>c2VjcmV0IGNpcGhlcnRleHQ=</payload></encrypted>";
    alice
        .send_message(OutgoingMessage {
            payloads: vec![omemo.into(), "<store xmlns='urn:xmpp:hints'/>".into()],
            ..OutgoingMessage::chat("bob@example.test", "I sent you an OMEMO encrypted message but your client doesn't seem to support that.")
        })
        .await?;
    // Flagged, not blocked: delivered untouched.
    assert!(bob
        .next_message()
        .await?
        .body
        .starts_with("I sent you an OMEMO encrypted message"));
    let hits = rig.search_until("rule:e2ee-message", 1, Duration::from_secs(3))?;
    assert_eq!(hits.len(), 1, "{hits:?}\n{}", rig.context());
    assert_eq!(hits[0]["action"], "flag");
    assert_eq!(hits[0]["e2ee"], "omemo");
    assert_eq!(hits[0]["severity"], "high");
    // A plain message is not mistaken for one.
    alice
        .send_chat("bob@example.test", "plain text, no encryption")
        .await?;
    bob.next_message().await?;
    let plain = rig.search_until("\"no encryption\"", 1, Duration::from_secs(3))?;
    assert_eq!(plain[0]["action"], "allow");
    assert!(plain[0].get("e2ee").is_none(), "{plain:?}");
    Ok(())
}

/// `n` chat messages to Bob numbered from `first`, as one write's worth of XML.
fn burst(label: &str, first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| {
            format!(
                "<message to='bob@example.test' type='chat' id='{label}-{i}'><body>{label} {i} in order</body></message>"
            )
        })
        .collect()
}

/// The number in a burst message's body or id (`label-17`, `label 17 in order`).
fn burst_number(text: &str, label: &str) -> Option<usize> {
    let rest = text.strip_prefix(label)?;
    rest.trim_start_matches(['-', ' '])
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// What a Scripted client receives until `want` burst messages came, or `quiet` passes
/// with nothing new (at most `limit` in all): burst message numbers delivered, and the
/// numbers and conditions of error replies.
async fn receive_burst(
    c: &mut Scripted,
    label: &str,
    want: usize,
    quiet: Duration,
    limit: Duration,
) -> Result<(Vec<usize>, Vec<(usize, String)>), BoxError> {
    let mut delivered = Vec::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && delivered.len() < want {
        let Some(Received::Element(e)) = c.next_within(quiet).await? else {
            break;
        };
        if e.name != "message" {
            continue;
        }
        if e.attr("type") == Some("error") {
            let n = e.attr("id").and_then(|id| burst_number(id, label));
            let condition = e
                .child("error", NS_CLIENT)
                .and_then(|err| err.children().next())
                .map(|c| c.name.to_string())
                .unwrap_or_default();
            if let Some(n) = n {
                errors.push((n, condition));
            }
        } else if let Some(n) = e
            .child("body", NS_CLIENT)
            .and_then(|b| burst_number(&b.text(), label))
        {
            delivered.push(n);
        }
    }
    Ok((delivered, errors))
}

const NS_CLIENT: &str = "jabber:client";

/// Through Custos as alice (Direct TLS); straight to the server as bob.
async fn burst_pair(rig: &Rig) -> Result<(Scripted, Scripted), BoxError> {
    let bob = Scripted::login(
        rig.server.direct_tls_addr().ok_or("no direct TLS port")?,
        rig.ca.cert_path(),
        "bob",
        rig.password("bob")?,
        "phone",
    )
    .await?;
    let alice = Scripted::login(
        rig.custos.listener(1),
        rig.ca.cert_path(),
        "alice",
        rig.password("alice")?,
        "laptop",
    )
    .await?;
    Ok((alice, bob))
}

/// A client that writes without waiting has many stanzas in flight. When the disk fails
/// among them, the ones whose records were written go on and every one after the first
/// failure is refused, each with its own error: delivery is a prefix of what was sent,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_failing_mid_burst_refuses_that_stanza_and_everything_after() -> TestResult {
    let rig = disk_that_can_fail("pipeline-burst-fails")?;
    let (mut alice, mut bob) = burst_pair(&rig).await?;
    alice.send(&burst("warmup", 0, 1)).await?;
    let (got, _) = receive_burst(&mut bob, "warmup", 1, Duration::from_secs(3), WAIT).await?;
    assert_eq!(got, vec![0], "{}", rig.context());

    set_readonly(rig.archive_dir.as_deref().ok_or("no archive dir")?)?;
    const N: usize = 200;
    alice.send(&burst("doomed", 0, N)).await?;
    let (errors_seen, delivered) = tokio::join!(
        receive_burst(&mut alice, "doomed", N, Duration::from_secs(3), WAIT),
        receive_burst(&mut bob, "doomed", N, Duration::from_secs(3), WAIT),
    );
    let (_, errors) = errors_seen?;
    let (delivered, _) = delivered?;
    let prefix: Vec<usize> = (0..delivered.len()).collect();
    assert_eq!(delivered, prefix, "delivered out of order or with a gap");
    let refused: Vec<usize> = errors.iter().map(|(n, _)| *n).collect();
    let suffix: Vec<usize> = (delivered.len()..N).collect();
    assert_eq!(
        refused,
        suffix,
        "every stanza after the first failure is refused, in order\n{}",
        rig.context()
    );
    assert!(
        errors.iter().all(|(_, c)| c == "internal-server-error"),
        "{errors:?}"
    );
    // The log starts a segment after each batch it writes: a burst that reached the
    // writer as one batch went whole into the segment open before the disk failed, and
    // only the next stanza needs a new file. That one is refused.
    if refused.is_empty() {
        alice.send(&burst("after", 0, 1)).await?;
        let (_, errors) =
            receive_burst(&mut alice, "after", 1, Duration::from_secs(3), WAIT).await?;
        assert_eq!(
            errors.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![0],
            "the failing disk refused nothing\n{}",
            rig.context()
        );
    }
    Ok(())
}

/// kill -9 while a client's burst is in flight: every message the recipient got has its
/// record in the archive when Custos comes back (a stanza goes on only after its record
/// is durable), and the archive verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_pipelined_burst_delivers_nothing_unarchived() -> TestResult {
    let mut rig = Rig::start(
        "pipeline-kill",
        RigOptions {
            archive: true,
            ..RigOptions::default()
        },
    )?;
    let (mut alice, mut bob) = burst_pair(&rig).await?;
    const N: usize = 3000;
    let sender = tokio::spawn(async move {
        for chunk in 0..N / 100 {
            if alice
                .send(&burst("killed", chunk * 100, 100))
                .await
                .is_err()
            {
                break;
            }
        }
        alice
    });
    // Kill once the burst is well under way.
    let (mut delivered, _) =
        receive_burst(&mut bob, "killed", 300, Duration::from_secs(3), WAIT).await?;
    let pid = rig.custos.pid().ok_or("custos has no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let (rest, _) = receive_burst(&mut bob, "killed", N, Duration::from_secs(2), WAIT).await?;
    delivered.extend(rest);
    let _ = sender.await;
    assert!(
        delivered.len() >= 100 && delivered.len() < N,
        "the kill should fall inside the burst: {} of {N} delivered",
        delivered.len()
    );
    let prefix: Vec<usize> = (0..delivered.len()).collect();
    assert_eq!(delivered, prefix, "delivered out of order or with a gap");

    let listeners = vec![rig.custos.listener(0), rig.custos.listener(1)];
    let config = rig.custos.config_path().to_owned();
    let poll_until = Instant::now() + Duration::from_secs(5);
    while !rig.custos.has_exited() && Instant::now() < poll_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.custos = custos_e2e::custos::Custos::start_with_config(&config, listeners, None)?;
    let limit = (N + 10).to_string();
    let archived = custos_e2e::custos::poll(delivered.len(), WAIT, || {
        let out = rig.cli(&["search", "--json", "--copies", "--limit", &limit, "killed"])?;
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .map(|l| Ok(serde_json::from_str::<serde_json::Value>(l)?))
            .collect::<Result<Vec<_>, BoxError>>()
    })?;
    let mut on_record: Vec<usize> = archived
        .iter()
        .filter_map(|h| h["body"].as_str().and_then(|b| burst_number(b, "killed")))
        .collect();
    on_record.sort_unstable();
    on_record.dedup();
    let missing: Vec<usize> = delivered
        .iter()
        .filter(|n| on_record.binary_search(n).is_err())
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "delivered but not archived: {missing:?} ({} delivered, {} archived)\n{}",
        delivered.len(),
        on_record.len(),
        rig.context()
    );
    let verify = rig.cli(&["verify"])?;
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    Ok(())
}

/// Stream management through the window: a burst written at once, some of it refused by
/// policy (dropped toward the server, an error injected toward the client), then `<r/>`
/// in the same write. The server's count comes back translated to exactly what the client
/// sent, after every stanza before it went on, and the server never sees a count it
/// did not earn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_management_stays_exact_across_a_pipelined_burst_with_refusals() -> TestResult {
    let rig = Rig::start(
        "pipeline-sm-burst",
        RigOptions {
            archive: true,
            rules: Some(
                "[[rule]]\nid = \"no-out\"\nwhen = { direction = \"outbound\", body = { regex = \"forbidden-out\" } }\naction = \"block\"\n".into(),
            ),
            ..RigOptions::default()
        },
    )?;
    let (mut alice, mut bob) = burst_pair(&rig).await?;
    alice.enable_sm().await?;
    const N: usize = 60;
    let refused = |i: usize| i % 5 == 2;
    let mut xml = String::new();
    for i in 0..N {
        let body = if refused(i) {
            format!("forbidden-out {i}")
        } else {
            format!("smburst {i} in order")
        };
        xml.push_str(&format!(
            "<message to='bob@example.test' type='chat' id='smburst-{i}'><body>{body}</body></message>"
        ));
    }
    xml.push_str("<r xmlns='urn:xmpp:sm:3'/>");
    alice.send(&xml).await?;
    let ack = alice
        .until(|e| e.ns == "urn:xmpp:sm:3" && e.name == "a")
        .await?;
    assert_eq!(
        ack.attr("h"),
        Some(N.to_string().as_str()),
        "{}\n{}",
        alice.transcript,
        rig.context()
    );
    // Every refusal was answered before the count, which covers them.
    let errors = alice.transcript.matches("policy-violation").count();
    assert_eq!(
        errors,
        (0..N).filter(|&i| refused(i)).count(),
        "{}",
        alice.transcript
    );

    let wanted: Vec<usize> = (0..N).filter(|&i| !refused(i)).collect();
    let (delivered, _) = receive_burst(
        &mut bob,
        "smburst",
        wanted.len(),
        Duration::from_secs(3),
        WAIT,
    )
    .await?;
    assert_eq!(delivered, wanted, "delivered out of order or with a gap");

    // A second round: the counts stay in step.
    alice
        .send("<message to='bob@example.test' type='chat' id='smburst-last'><body>smburst 60 in order</body></message><r xmlns='urn:xmpp:sm:3'/>")
        .await?;
    let ack = alice
        .until(|e| e.ns == "urn:xmpp:sm:3" && e.name == "a")
        .await?;
    assert_eq!(ack.attr("h"), Some((N + 1).to_string().as_str()));
    let prosody_log = rig.server.log_tail();
    assert!(!prosody_log.contains("acknowledged more"), "{prosody_log}");
    assert!(!prosody_log.contains("handled-count"), "{prosody_log}");
    Ok(())
}
