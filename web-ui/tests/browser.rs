//! End to end in a real headless Chromium: sign in, search, open the
//! conversation, review a flagged item, check the audit page; hostile message
//! bodies, JIDs and rule ids render inert. Screenshots of the main pages go to
//! `<target>/screenshots/`.
//!
//! Run: `cargo test -p custos-web-ui --features browser --test browser`.

#![allow(clippy::unwrap_used)] // a test panics on a broken expectation

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use custos_archive::Action;
use custos_web_ui::browser::Browser;
use fantoccini::Locator;
use serde_json::Value;

/// Each payload would set `window.__xss` or change `document.title` if it ran.
const XSS: &[&str] = &[
    "payload <script>window.__xss=1</script>",
    "payload <img src=x onerror=\"window.__xss=1\">",
    "payload \"><svg onload=\"document.title='pwned'\">",
    "payload '><script>document.title='pwned'</script>",
    "payload </textarea></p><script>window.__xss=1</script>",
    "payload <a id=\"jslink\" href=\"javascript:window.__xss=1\">click</a>",
    "payload <iframe srcdoc=\"<script>parent.__xss=1</script>\"></iframe>",
    "payload <style>body{display:none}</style><body onload=window.__xss=1>",
    "payload <math><mtext><table><mglyph><style><img src=x onerror=window.__xss=1>",
    "payload <meta http-equiv=\"refresh\" content=\"0;url=javascript:window.__xss=1\">",
    "payload <!-- --><script>window.__xss=1</script> ]]> &lt;script&gt;",
];

fn screenshots() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("screenshots")
}

/// Asserts nothing a payload would do has happened on the current page.
async fn assert_inert(b: &Browser, expected_title: &str, page: &str) {
    let c = b.client();
    let xss = c.execute("return typeof window.__xss === 'undefined' && typeof window.parent.__xss === 'undefined';", vec![]).await.unwrap();
    assert_eq!(xss, Value::Bool(true), "a payload ran on {page}");
    assert_eq!(
        c.title().await.unwrap(),
        expected_title,
        "title changed on {page}"
    );
    // No element the payloads would create, and no event-handler attribute anywhere.
    let injected = c
        .execute(
            "return document.querySelectorAll('main img, main iframe, main script, main a[href^=\"javascript\"], main meta, main style, [onerror], [onload], [onclick]').length + document.querySelectorAll('script:not([src])').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, Value::from(0), "markup injected on {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_and_auditor_in_a_real_browser() {
    let fx = fixture(0.0);
    let lunch = append(
        &fx.archive,
        Msg::chat(
            "alice@example.test/laptop",
            "bob@example.test",
            "Lunch at noon? The usual place.",
        ),
    )
    .await;
    let _ = lunch;
    append(
        &fx.archive,
        Msg::chat(
            "bob@example.test/phone",
            "alice@example.test",
            "Sure. Also, can you check the wire transfer for the Hendricks account?",
        ),
    )
    .await;
    let mut card = Msg::chat(
        "alice@example.test/laptop",
        "bob@example.test",
        "Client card is 4111 1111 1111 1111, exp 09/29",
    )
    .flagged(Action::Redact, &["pci-card"], "high");
    card.delivered = Some("Client card is ████, exp 09/29");
    let flagged = append(&fx.archive, card).await;
    append(
        &fx.archive,
        Msg::chat(
            "bob@example.test/phone",
            "alice@example.test",
            "Got it, thanks. Deleting from my notes.",
        ),
    )
    .await;
    append(
        &fx.archive,
        Msg::chat(
            "carol@example.test/desk",
            "dave@example.test",
            "I can guarantee a 20% return on this, off the books",
        )
        .flagged(Action::Flag, &["promissory"], "medium"),
    )
    .await;
    let mut omemo = Msg::chat(
        "dave@example.test/desk",
        "carol@example.test",
        "I sent you an OMEMO encrypted message but your client doesn't seem to support that.",
    );
    omemo.e2ee = Some("omemo");
    omemo.action = Action::Flag;
    omemo.rules = &["e2ee"];
    append(&fx.archive, omemo).await;
    for p in XSS {
        append(
            &fx.archive,
            Msg::chat("mallory@example.test/x", "bob@example.test", p).flagged(
                Action::Flag,
                &["<b>rule</b>\"'"],
                "<i>sev</i>",
            ),
        )
        .await;
    }
    append(
        &fx.archive,
        Msg::chat(
            "\"><img src=x onerror=window.__xss=1>@evil.test/r",
            "bob@example.test",
            "payload hostile sender",
        ),
    )
    .await;
    wait_indexed(&fx.archive, "payload", XSS.len() + 1).await;

    let bound = custos_web_ui::bind(fx.cfg.clone(), fx.archive.clone())
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async move {
        let _ = stop_rx.await;
    }));
    let profile = tempfile::tempdir().unwrap();
    let b = Browser::start(profile.path())
        .await
        .expect("chromium and chromedriver start");
    let c = b.client();
    let shots = screenshots();
    let wait = || c.wait().at_most(Duration::from_secs(10));

    // Sign in.
    c.goto(&format!("{base}/login")).await.unwrap();
    b.screenshot(&shots.join("0-sign-in.png")).await.unwrap();
    b.sign_in(&base, "oscar", PASSWORD).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Dashboard · Custos");
    b.screenshot(&shots.join("1-dashboard.png")).await.unwrap();

    // Search with the form; the hit is highlighted.
    c.goto(&format!("{base}/search")).await.unwrap();
    c.find(Locator::Id("q"))
        .await
        .unwrap()
        .send_keys("card")
        .await
        .unwrap();
    c.find(Locator::Id("search-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mark = wait()
        .for_element(Locator::Css("table.results mark"))
        .await
        .unwrap();
    assert_eq!(mark.text().await.unwrap(), "card");
    b.screenshot(&shots.join("2-search.png")).await.unwrap();

    // A message sent now shows up in search within a second.
    let sent = Instant::now();
    append(
        &fx.archive,
        Msg::chat(
            "alice@example.test/laptop",
            "bob@example.test",
            "zebracorn freshly sent",
        ),
    )
    .await;
    let mut seen = None;
    while sent.elapsed() < Duration::from_secs(5) {
        c.goto(&format!("{base}/search?q=zebracorn")).await.unwrap();
        if c.find(Locator::Css("table.results mark")).await.is_ok() {
            seen = Some(sent.elapsed());
            break;
        }
    }
    let seen = seen.expect("new message searchable");
    eprintln!("new message searchable in the browser after {seen:?}");
    assert!(seen < Duration::from_secs(1), "took {seen:?}");

    // Open the conversation around the redacted card message.
    c.goto(&format!("{base}/search?q=card")).await.unwrap();
    wait()
        .for_element(Locator::Css("table.results a.open"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let hit = wait()
        .for_element(Locator::Css("article.msg.hit"))
        .await
        .unwrap();
    assert_eq!(
        hit.attr("id").await.unwrap().as_deref(),
        Some(format!("m{flagged}").as_str())
    );
    assert!(
        hit.text().await.unwrap().contains("Client card is ████"),
        "delivered text beside the original"
    );
    let n = c.find_all(Locator::Css("article.msg")).await.unwrap().len();
    assert_eq!(
        n, 5,
        "the five alice/bob messages (with the one sent just now), nothing from others"
    );
    let conv_text = c
        .find(Locator::Css("div.conversation"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(conv_text.contains("zebracorn") && !conv_text.contains("carol@"));
    b.screenshot(&shots.join("3-conversation.png"))
        .await
        .unwrap();

    // Review it.
    c.find(Locator::Id("comment"))
        .await
        .unwrap()
        .send_keys("Card number shared with a colleague; redaction held. Reminded both of policy.")
        .await
        .unwrap();
    c.find(Locator::Id("mark-reviewed"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let history = wait()
        .for_element(Locator::Css("ol.history li"))
        .await
        .unwrap();
    let h = history.text().await.unwrap();
    assert!(
        h.contains("oscar") && h.contains("marked reviewed") && h.contains("redaction held"),
        "{h}"
    );
    c.goto(&format!("{base}/queue")).await.unwrap();
    wait()
        .for_element(Locator::Css("table.queue"))
        .await
        .unwrap();
    assert!(
        c.find(Locator::Id(&format!("q{flagged}"))).await.is_err(),
        "reviewed item left the open queue"
    );
    b.screenshot(&shots.join("4-queue.png")).await.unwrap();
    assert_inert(&b, "Review queue · Custos", "queue").await;

    // Hostile content renders as text everywhere it appears.
    c.goto(&format!("{base}/search?q=payload")).await.unwrap();
    wait()
        .for_element(Locator::Css("table.results"))
        .await
        .unwrap();
    let rows = c
        .find_all(Locator::Css("table.results tbody tr"))
        .await
        .unwrap()
        .len();
    assert_eq!(rows, XSS.len() + 1);
    let body_text = c
        .find(Locator::Css("table.results"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body_text.contains("<script>window.__xss=1</script>"),
        "payload shown as text"
    );
    assert_inert(&b, "Search · Custos", "search results").await;
    b.screenshot(&shots.join("5-hostile-search.png"))
        .await
        .unwrap();
    c.find(Locator::Css("table.results a.open"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait()
        .for_element(Locator::Css("article.msg.hit"))
        .await
        .unwrap();
    assert_inert(&b, "Conversation · Custos", "hostile conversation").await;
    c.goto(&format!("{base}/queue?rule=%3Cb%3Erule%3C%2Fb%3E%22%27"))
        .await
        .unwrap();
    wait()
        .for_element(Locator::Css("table.queue"))
        .await
        .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("table.queue tbody tr"))
            .await
            .unwrap()
            .len(),
        XSS.len()
    );
    assert_inert(
        &b,
        "Review queue · Custos",
        "queue filtered by hostile rule",
    )
    .await;
    // A hostile search query is shown back in the form and (later) in the audit page.
    c.goto(&format!(
        "{base}/search?q=payload+%22%3E%3Cimg+src%3Dx+onerror%3Dwindow.__xss%3D1%3E"
    ))
    .await
    .unwrap();
    wait().for_element(Locator::Id("q")).await.unwrap();
    assert_inert(&b, "Search · Custos", "hostile query").await;
    c.goto(&format!("{base}/")).await.unwrap();
    assert_inert(&b, "Dashboard · Custos", "dashboard").await;

    // Sign out; the auditor sees the trail and cannot review.
    c.find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait().for_element(Locator::Id("user")).await.unwrap();
    b.sign_in(&base, "aud", PASSWORD).await.unwrap();
    c.goto(&format!("{base}/audit")).await.unwrap();
    let table = wait()
        .for_element(Locator::Css("table.audit"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "sign-in",
        "search",
        "view-conversation",
        "review",
        "\"status\":\"reviewed\"",
        "oscar",
        "sign-out",
    ] {
        assert!(table.contains(needle), "audit page lacks {needle:?}");
    }
    assert!(
        table.contains("onerror=window.__xss=1"),
        "hostile query recorded verbatim, shown as text"
    );
    assert_inert(&b, "Audit trail · Custos", "audit").await;
    b.screenshot(&shots.join("6-audit.png")).await.unwrap();
    c.goto(&format!("{base}/conversation/{flagged}"))
        .await
        .unwrap();
    wait()
        .for_element(Locator::Css("article.msg.hit"))
        .await
        .unwrap();
    assert!(
        c.find(Locator::Id("mark-reviewed")).await.is_err(),
        "auditors get no review form"
    );

    b.close().await.unwrap();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
