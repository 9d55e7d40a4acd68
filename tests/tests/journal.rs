//! Journaling into an existing archiver: a real SMTP server (aiosmtpd) receives one
//! RFC 5322 message per conversation per period after real traffic through Custos;
//! Python's `email` package parses each strictly; every message sent appears exactly once
//! with the right participants; taking the SMTP server away mid-way and bringing it back
//! loses and duplicates nothing (by Message-ID).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use custos_e2e::config::{path, section, strings, Value};
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::smtp::{Mail, SmtpServer};
use custos_e2e::{TestDir, Tls};

type TestResult = Result<(), BoxError>;

/// Distinct journal messages (a redelivery has the same Message-ID) and, per sent body,
/// the Message-IDs whose transcript holds it.
fn delivered(
    mails: &[Mail],
    bodies: &[&str],
) -> (BTreeMap<String, Mail>, BTreeMap<String, Vec<String>>) {
    let mut by_id: BTreeMap<String, Mail> = BTreeMap::new();
    for m in mails {
        by_id
            .entry(m.message_id.clone())
            .or_insert_with(|| m.clone());
    }
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, m) in &by_id {
        let body = m.body.as_deref().unwrap_or("");
        for b in bodies {
            // Each line of a transcript is indented; a body shows once per message.
            let n = body.matches(&format!("  {b}\n")).count();
            for _ in 0..n {
                found.entry((*b).to_string()).or_default().push(id.clone());
            }
        }
    }
    (by_id, found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_reaches_an_smtp_archiver_once_per_message_across_an_outage() -> TestResult {
    let side = TestDir::new("journal-side")?;
    let mut smtp = SmtpServer::start(side.path())?;
    let state = side.join("journal.state");
    let rig = Rig::start(
        "journal",
        RigOptions {
            archive: true,
            web: true,
            rules: Some(
                "[[rule]]\nid = \"watch-ledger\"\nwhen = { body = { regex = \"(?i)ledger\" } }\naction = \"flag\"\n".into(),
            ),
            extra: section(
                "journal",
                [
                    ("smtp", Value::from(format!("127.0.0.1:{}", smtp.port))),
                    ("starttls", Value::from(false)),
                    ("from", Value::from("custos@example.test")),
                    ("to", strings(["journal@archiver.example"])),
                    ("period", Value::from(2)),
                    ("every", Value::from(1)),
                    ("state", path(&state)),
                ],
            ),
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;
    let mut carol = rig.connect("carol", "desk", Tls::StartTls).await?;
    let first = [
        "journal-a1 morning bob",
        "journal-a2 the numbers are in",
        "journal-b1 thanks alice",
        "journal-c1 the ledger for carol",
    ];
    alice.send_chat("bob@example.test", first[0]).await?;
    bob.next_message().await?;
    alice.send_chat("bob@example.test", first[1]).await?;
    bob.next_message().await?;
    bob.send_chat("alice@example.test", first[2]).await?;
    alice.next_message().await?;
    alice.send_chat("carol@example.test", first[3]).await?;
    carol.next_message().await?;

    let mails = wait_all(&smtp, &first, Duration::from_secs(30))?;
    let (by_id, found) = delivered(&mails, &first);
    for b in first {
        assert_eq!(
            found.get(b).map(Vec::len),
            Some(1),
            "{b:?} once\n{mails:#?}\n{}",
            rig.context()
        );
    }
    for m in by_id.values() {
        assert!(m.defects.is_empty(), "strictly parsed: {m:#?}");
        assert_eq!(m.to, "journal@archiver.example");
        assert_eq!(m.from, "custos@example.test");
        assert!(m.message_id.ends_with("@custos.journal>"), "{m:#?}");
    }
    let with = |b: &str| -> Result<&Mail, BoxError> {
        let id = found.get(b).and_then(|v| v.first()).ok_or("not found")?;
        by_id.get(id).ok_or_else(|| "no mail".into())
    };
    let ab = with(first[0])?;
    assert_eq!(ab.participants, "alice@example.test, bob@example.test");
    let ac = with(first[3])?;
    assert_eq!(ac.participants, "alice@example.test, carol@example.test");
    let ac_body = ac.body.as_deref().unwrap_or("");
    assert!(
        ac_body.contains("flag [watch-ledger]"),
        "the verdict: {ac_body}"
    );
    assert!(
        ac_body.contains("2 copies"),
        "sender's and recipient's copies: {ac_body}"
    );

    // The archiver goes away; messages sent meanwhile wait, then arrive once it is back.
    smtp.stop();
    let second = [
        "journal-a3 while the archiver was down",
        "journal-b2 still down",
    ];
    alice.send_chat("bob@example.test", second[0]).await?;
    bob.next_message().await?;
    bob.send_chat("alice@example.test", second[1]).await?;
    alice.next_message().await?;
    // The failing delivery shows on the officers' dashboard, with the server's refusal.
    rig.add_user("olivia", "officer", "officer-password-1")?;
    let web = rig.web.ok_or("no web UI")?;
    let session = custos_e2e::net::web_sign_in(web, "olivia", "officer-password-1")?;
    let dashboard = || -> Result<String, BoxError> {
        let d = custos_e2e::net::http_request(web, "GET", "/", &[("Cookie", &session)], None)?;
        assert_eq!(d.status, 200, "{}", d.body);
        Ok(d.body)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let failing = loop {
        let d = dashboard()?;
        if d.contains(">failing<") || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        failing.contains(">failing<") && failing.contains("Last error"),
        "the dashboard shows the outage\n{failing}\n{}",
        rig.context()
    );
    assert!(failing.contains(&format!("smtp 127.0.0.1:{}", smtp.port)));
    smtp.restart()?;
    let all: Vec<&'static str> = first.iter().chain(second.iter()).copied().collect();
    let mails = wait_all(&smtp, &all, Duration::from_secs(60))?;
    let (_, found) = delivered(&mails, &all);
    for b in &all {
        assert_eq!(
            found.get(*b).map(Vec::len),
            Some(1),
            "{b:?} in exactly one journal message\n{mails:#?}\n{}",
            rig.context()
        );
    }
    // The same traffic as Actiance XML: a strict XML parser reads back every message
    // once, each conversation with its participants entering before they speak.
    let xml_path = side.join("actiance.xml");
    let ex = custos_e2e::custos::run_custos(
        &[
            "export",
            "--format",
            "actiance",
            "--out",
            xml_path.to_str().ok_or("path")?,
        ],
        Some(rig.custos.config_path()),
    )?;
    assert!(
        ex.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ex.stdout),
        String::from_utf8_lossy(&ex.stderr)
    );
    let probe = std::process::Command::new(custos_e2e::tools::python()?)
        .arg(custos_e2e::tools::clients_dir().join("actiance_probe.py"))
        .arg(&xml_path)
        .output()?;
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let convs: serde_json::Value = serde_json::from_slice(&probe.stdout)?;
    let convs = convs.as_array().ok_or("conversations")?;
    for b in &all {
        let n: usize = convs
            .iter()
            .flat_map(|c| c["messages"].as_array().into_iter().flatten())
            .filter(|m| m["content"].as_str().is_some_and(|t| t.starts_with(*b)))
            .count();
        assert_eq!(n, 1, "{b:?} once in the Actiance XML\n{convs:#?}");
    }
    let ab = convs
        .iter()
        .find(|c| c["room"] == "alice@example.test bob@example.test")
        .ok_or("the alice-bob conversation")?;
    assert_eq!(
        ab["entered"],
        serde_json::json!(["alice@example.test", "bob@example.test"])
    );
    assert_eq!(ab["internal"]["bob@example.test"], "true");
    let order: Vec<&str> = ab["order"]
        .as_array()
        .ok_or("order")?
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(order.first(), Some(&"RoomID"));
    assert_eq!(order.last(), Some(&"EndTimeUTC"));
    let first_message = order
        .iter()
        .position(|t| *t == "Message")
        .ok_or("messages")?;
    assert!(
        order
            .get(..first_message)
            .is_some_and(|head| head.contains(&"ParticipantEntered")),
        "{order:?}"
    );
    let ac = convs
        .iter()
        .find(|c| c["room"] == "alice@example.test carol@example.test")
        .ok_or("the alice-carol conversation")?;
    assert!(
        ac["messages"][0]["content"]
            .as_str()
            .is_some_and(|t| t.contains("[Custos: flag watch-ledger]")),
        "{ac:#?}"
    );

    // Delivery resumed, and the dashboard says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        let d = dashboard()?;
        if d.contains(">delivering<") || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(recovered.contains(">delivering<"), "{recovered}");
    assert!(!recovered.contains(">failing<"), "{recovered}");

    // The cursor says where delivery stands.
    let cursor: serde_json::Value = serde_json::from_slice(&std::fs::read(&state)?)?;
    assert!(cursor["delivered"].as_u64().unwrap_or(0) >= 3, "{cursor}");
    drop((alice, bob, carol));
    Ok(())
}

/// The mails received once every body of `bodies` is in one, or at `limit`.
fn wait_all(smtp: &SmtpServer, bodies: &[&str], limit: Duration) -> Result<Vec<Mail>, BoxError> {
    let start = Instant::now();
    loop {
        let mails = smtp.mails()?;
        let (_, found) = delivered(&mails, bodies);
        if bodies.iter().all(|b| found.contains_key(*b)) || start.elapsed() > limit {
            return Ok(mails);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
