//! The whole path an officer relies on, in a real Chromium: a message a real client sent
//! through Custos a moment ago is found in the review UI, read in context, reviewed, and the
//! review lands in the tamper-evident archive's audit trail.

use std::time::{Duration, Instant};

use custos_e2e::config::{section, strings};
use custos_e2e::process::{main_niceness, thread_niceness};
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::Tls;
use custos_web_ui::browser::Browser;
use fantoccini::Locator;

type TestResult = Result<(), BoxError>;

const PASSWORD: &str = "officer-password-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_reviews_a_message_sent_through_custos_a_moment_ago() -> TestResult {
    let rig = Rig::start(
        "review-ui",
        RigOptions {
            archive: true,
            web: true,
            rules: Some(
                "[[rule]]\nid = \"promise\"\nwhen = { body = { regex = \"(?i)guarantee\" } }\naction = \"flag\"\nseverity = \"medium\"\n"
                    .into(),
            ),
            extra: section(
                "lexicons",
                [("promises", strings(["guarant*", "promis*", "\"money back\""]))],
            ),
            ..RigOptions::default()
        },
    )?;
    rig.add_user("olivia", "officer", PASSWORD)?;
    rig.add_user("audrey", "auditor", PASSWORD)?;
    let base = format!("http://{}", rig.web.ok_or("no web UI")?);

    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    alice
        .send_chat("bob@example.test", "lunch at the zanzibar place?")
        .await?;
    assert_eq!(
        bob.next_message().await?.body,
        "lunch at the zanzibar place?"
    );
    bob.send_chat(
        "alice@example.test",
        "zanzibar returns are guaranteed, promise <b>",
    )
    .await?;
    assert_eq!(
        alice.next_message().await?.body,
        "zanzibar returns are guaranteed, promise <b>"
    );
    let sent = Instant::now();

    // The review UI follows the archive on a thread of its own, at index building's
    // priority (10 steps below by default): when the CPU is short, relaying goes first.
    let pid = rig.custos.pid().ok_or("custos has no pid")?;
    let threads = thread_niceness(pid)?;
    let base_nice = main_niceness(&threads, pid)?;
    let follower: Vec<_> = threads
        .iter()
        .filter(|(_, name, _)| name == "custos-web-tail")
        .collect();
    assert_eq!(follower.len(), 1, "{threads:?}");
    assert_eq!(follower[0].2, (base_nice + 10).min(19), "{threads:?}");

    let profile = tempfile::tempdir()?;
    let browser = Browser::start(profile.path()).await?;
    let shots = custos_e2e::tools::workspace_root().join("target/screenshots");
    let result = async {
        browser.sign_in(&base, "olivia", PASSWORD).await?;
        let c = browser.client();
        // Found within a second or so of being sent (the index is near-real-time).
        let mut found = false;
        while sent.elapsed() < Duration::from_secs(5) {
            c.goto(&format!("{base}/search?q=zanzibar")).await?;
            if c.find_all(Locator::Css("table.results tbody tr"))
                .await?
                .len()
                == 2
            {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            found,
            "both messages searchable in the UI\n{}",
            rig.context()
        );
        let found_after = sent.elapsed();
        // Both users are behind Custos: each message was recorded on the sender's stream
        // and on the recipient's, and the page shows it once, with both copies counted.
        let mut grouped = String::new();
        while sent.elapsed() < Duration::from_secs(8) {
            c.goto(&format!("{base}/search?q=zanzibar")).await?;
            grouped = c.find(Locator::Css("table.results")).await?.text().await?;
            if grouped.to_lowercase().matches("2 copies").count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            grouped.to_lowercase().matches("2 copies").count(),
            2,
            "each message once, with its two copies: {grouped}"
        );
        assert_eq!(
            c.find_all(Locator::Css("table.results tbody tr"))
                .await?
                .len(),
            2
        );
        let results = c.find(Locator::Css("table.results")).await?.text().await?;
        assert!(results.contains("alice@example.test/laptop"), "{results}");
        // Hostile markup in a body is shown as text.
        assert!(results.contains("promise <b>"), "{results}");
        browser
            .screenshot(&shots.join("pipeline-1-search.png"))
            .await?;

        // The compliance language: a saved lexicon, a prefix NEAR a prefix, a
        // misspelling; each finds Bob's message only, and the page marks the words.
        for q in [
            "%40promises",
            "zanzib*+NEAR%2F3+guarant*",
            "guarenteed~+-lunch",
            "%28lunch+OR+promis*%29+from%3Abob%40example.test",
        ] {
            c.goto(&format!("{base}/search?q={q}")).await?;
            let rows = c.find_all(Locator::Css("table.results tbody tr")).await?;
            assert_eq!(rows.len(), 1, "{q}\n{}", c.source().await?);
        }
        c.goto(&format!("{base}/search?q=%40promises")).await?;
        let mut marked = Vec::new();
        for m in c.find_all(Locator::Css("table.results mark")).await? {
            marked.push(m.text().await?);
        }
        assert!(
            marked.iter().any(|m| m == "guaranteed") && marked.iter().any(|m| m == "promise"),
            "{marked:?}"
        );
        // A lexicon that does not exist is named back, with the ones that do.
        c.goto(&format!("{base}/search?q=%40graft")).await?;
        let page = c.find(Locator::Css("main")).await?.text().await?;
        assert!(
            page.contains("\"@graft\"") && page.contains("@promises"),
            "{page}"
        );
        // The search page lists the lexicons an officer can name.
        assert!(
            c.source().await?.contains("<code>@promises</code>"),
            "lexicons listed"
        );
        // The same language from the command line, with the configuration's lexicons.
        let hits = rig.custos.search("@promises from:bob@example.test")?;
        assert_eq!(hits.len(), 1, "{hits:?}");

        // Open the flagged one in its conversation and review it.
        c.goto(&format!("{base}/search?q=guaranteed")).await?;
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("table.results a.open"))
            .await?
            .click()
            .await?;
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("article.msg.hit"))
            .await?;
        let conversation = c
            .find(Locator::Css("div.conversation"))
            .await?
            .text()
            .await?;
        assert!(
            conversation.contains("lunch at the zanzibar place?"),
            "context around the hit: {conversation}"
        );
        browser
            .screenshot(&shots.join("pipeline-2-conversation.png"))
            .await?;
        c.find(Locator::Id("comment"))
            .await?
            .send_keys("Performance promise to a colleague; discussed with the desk head.")
            .await?;
        c.find(Locator::Id("mark-reviewed")).await?.click().await?;
        let history = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("ol.history li"))
            .await?
            .text()
            .await?;
        assert!(
            history.contains("olivia") && history.contains("marked reviewed"),
            "{history}"
        );

        // The auditor sees the review in the audit trail.
        browser.sign_in(&base, "audrey", PASSWORD).await?;
        c.goto(&format!("{base}/audit")).await?;
        let audit = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("table.audit"))
            .await?
            .text()
            .await?;
        for needle in [
            "olivia",
            "search",
            "zanzibar",
            "view-conversation",
            "review",
            "\"status\":\"reviewed\"",
        ] {
            assert!(
                audit.contains(needle),
                "audit page lacks {needle:?}:\n{audit}"
            );
        }
        browser
            .screenshot(&shots.join("pipeline-3-audit.png"))
            .await?;
        Ok::<Duration, BoxError>(found_after)
    }
    .await;
    let _ = browser.close().await;
    let found_after = result?;
    eprintln!("message found in the review UI {found_after:?} after delivery (browser start and sign-in included)");

    // The audit records are in the same tamper-evident archive as the messages.
    let out = rig.cli(&["verify"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}
