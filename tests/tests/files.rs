//! Files are records too: a file a real client shares by HTTP upload (XEP-0363) through
//! Custos is fetched from the firm's upload service before the message goes on, archived
//! with the message (once, whatever the number of copies), found by its name and type, and
//! downloaded by an officer from the review UI in a real Chromium, byte for byte.

use std::time::Duration;

use custos_e2e::config::section;
use custos_e2e::net::http_request;
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::Tls;
use custos_web_ui::browser::Browser;
use fantoccini::Locator;
use sha2::{Digest, Sha256};

type TestResult = Result<(), BoxError>;

const OFFICER_PASSWORD: &str = "officer-password-1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_by_http_upload_is_archived_and_an_officer_downloads_it() -> TestResult {
    let options = RigOptions {
        archive: true,
        web: true,
        file_share: true,
        extra: section("files", [("max_bytes", 100_000)]),
        ..RigOptions::default()
    };
    let rig = Rig::start("files", options)?;
    let share = rig.file_share_url().ok_or("no upload service")?;
    let context = || rig.context();
    let mut alice = rig.connect("alice", "desk", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "desk", Tls::StartTls).await?;

    // A file whose bytes are not all text, with a name that needs encoding.
    let mut content = b"%PDF-1.4 quarterly okapi figures\n".to_vec();
    content.extend((0u8..=255).cycle().take(3000));
    let path = rig.dir.join("Q3 okapi report.pdf");
    std::fs::write(&path, &content)?;
    let digest = hex(&Sha256::digest(&content));

    let (url, _) = alice
        .share_file(
            &path,
            "application/pdf",
            "upload.example.test",
            "bob@example.test",
        )
        .await
        .map_err(|e| format!("{e}\n{}", context()))?;
    assert!(url.starts_with(&share), "{url} under {share}");
    let got = bob.next_message().await?;
    assert_eq!(got.body, url);

    // Found by its name and by its type; the bytes stored once, with the first copy.
    rig.search_copies_until("okapi", 2, Duration::from_secs(10))?;
    let hits = rig.search("okapi report")?;
    assert_eq!(hits.len(), 1, "{hits:#?}\n{}", context());
    let copies = rig.search_copies("pdf")?;
    assert_eq!(copies.len(), 2, "{copies:#?}");
    for c in &copies {
        let f = &c["files"][0];
        assert_eq!(f["name"], "Q3 okapi report.pdf", "{c:#}");
        assert_eq!(f["media_type"], "application/pdf", "{c:#}");
        assert_eq!(f["size"], content.len(), "{c:#}");
        assert_eq!(f["sha256"], digest.as_str(), "{c:#}");
        assert!(f.get("error").is_none(), "{c:#}");
    }
    let stored = copies
        .iter()
        .filter(|c| c["files"][0]["stored"] == true)
        .count();
    assert_eq!(stored, 1, "bytes stored once: {copies:#?}");

    // An address outside the upload service is not fetched: Custos reaches nowhere else.
    alice
        .send_chat("bob@example.test", "http://127.0.0.1:9/elsewhere/zebra.pdf")
        .await?;
    bob.next_message().await?;
    rig.search_copies_until("zebra", 2, Duration::from_secs(10))?;
    let elsewhere = rig.search("zebra")?;
    assert!(elsewhere[0].get("files").is_none(), "{elsewhere:#?}");

    // The officer downloads it from the conversation, byte for byte, as an attachment.
    rig.add_user("olivia", "officer", OFFICER_PASSWORD)?;
    let web = rig.web.ok_or("no web UI")?;
    let base = format!("http://{web}");
    let profile = tempfile::tempdir()?;
    let browser = Browser::start(profile.path()).await?;
    let shots = custos_e2e::tools::workspace_root().join("target/screenshots");
    let result = async {
        browser.sign_in(&base, "olivia", OFFICER_PASSWORD).await?;
        let c = browser.client();
        c.goto(&format!("{base}/search?q=okapi+report")).await?;
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("table.results a.open"))
            .await?
            .click()
            .await?;
        let link = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("article.msg.hit a.download"))
            .await?;
        assert_eq!(link.text().await?, "Q3 okapi report.pdf");
        let href = link.attr("href").await?.ok_or("no href")?;
        browser
            .screenshot(&shots.join("files-conversation.png"))
            .await?;
        // The officer's browser session, as the link would send it.
        let cookies: Vec<String> = c
            .get_all_cookies()
            .await?
            .iter()
            .map(|k| format!("{}={}", k.name(), k.value()))
            .collect();
        let cookie = cookies.join("; ");
        let got = http_request(web, "GET", &href, &[("Cookie", &cookie)], None)?;
        assert_eq!(got.status, 200, "{:?}", got.headers);
        assert_eq!(hex(&Sha256::digest(&got.bytes)), digest, "byte for byte");
        let header = |name: &str| {
            got.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header("content-type"), "application/octet-stream");
        assert_eq!(header("x-content-type-options"), "nosniff");
        let disposition = header("content-disposition");
        assert!(disposition.starts_with("attachment;"), "{disposition}");
        assert!(
            disposition.contains("Q3%20okapi%20report.pdf"),
            "{disposition}"
        );
        // Without the session: nothing.
        let refused = http_request(web, "GET", &href, &[], None)?;
        assert_ne!(refused.status, 200);
        Ok::<(), BoxError>(())
    }
    .await;
    let _ = browser.close().await;
    result
}

/// A file that cannot be fetched from the upload service (here: it is not there) is never
/// silently missing: by default the message goes on and its record says why the file is
/// not in it, flagged `custos:file-not-archived`; with `on_failure = "block"` the message
/// is refused with an error to its sender, and the refusal is on the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_fetched_is_flagged_or_the_message_refused() -> TestResult {
    for block in [false, true] {
        let mut files = vec![("max_bytes", toml::Value::from(100_000))];
        if block {
            files.push(("on_failure", toml::Value::from("block")));
        }
        let rig = Rig::start(
            if block {
                "files-fail-block"
            } else {
                "files-fail-flag"
            },
            RigOptions {
                archive: true,
                file_share: true,
                extra: section("files", files),
                ..RigOptions::default()
            },
        )?;
        let share = rig.file_share_url().ok_or("no upload service")?;
        let mut alice = rig.connect("alice", "desk", Tls::StartTls).await?;
        let mut bob = rig.connect("bob", "desk", Tls::StartTls).await?;
        let url = format!(
            "{}/never-uploaded/ghost-ledger.pdf",
            share.trim_end_matches('/')
        );
        let id = alice.send_chat("bob@example.test", &url).await?;
        if block {
            let err = alice.wait_stanza_error(&id).await?;
            assert_eq!(err.condition, "internal-server-error", "{err:?}");
            assert!(err.text.contains("could not be archived"), "{}", err.text);
            bob.expect_no_message(Duration::from_secs(1)).await?;
        } else {
            assert_eq!(bob.next_message().await?.body, url);
        }
        let want = if block { 1 } else { 2 };
        let copies = rig.search_copies_until("ghost", want, Duration::from_secs(10))?;
        assert_eq!(copies.len(), want, "{copies:#?}\n{}", rig.context());
        for copy in &copies {
            let rules = copy["rules"].as_array().ok_or("no rules")?;
            assert!(
                rules.iter().any(|r| r == "custos:file-not-archived"),
                "{copy:#?}"
            );
            assert_eq!(
                copy["action"],
                if block { "block" } else { "flag" },
                "{copy:#?}"
            );
            let error = copy["files"][0]["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "the record says why: {copy:#?}");
            assert_eq!(copy["files"][0]["stored"], false, "{copy:#?}");
        }
    }
    Ok(())
}
