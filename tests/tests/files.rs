//! Files are records too: a file a real client shares by HTTP upload (XEP-0363) through
//! Custos is fetched from the firm's upload service before the message goes on, archived
//! with the message (once, whatever the number of copies), found by its name and type, and
//! downloaded by an officer from the review UI in a real Chromium, byte for byte.

use std::time::Duration;

use custos_e2e::rig::{BoxError, Front, RigOptions, USERS};
use custos_e2e::{ConnectOptions, Prosody, ProsodyOptions, SlixClient, TestCa, TestDir, User};
use custos_web_ui::browser::Browser;
use fantoccini::Locator;
use sha2::{Digest, Sha256};

type TestResult = Result<(), BoxError>;

const OFFICER_PASSWORD: &str = "officer-password-1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn login(front: &Front, ca: &TestCa, user: &str) -> Result<SlixClient, BoxError> {
    let password = USERS
        .iter()
        .find(|(name, _)| *name == user)
        .map(|(_, pw)| *pw)
        .ok_or("no such user")?;
    let opts = ConnectOptions::new(
        &format!("{user}@example.test/desk"),
        password,
        front.custos.listener(0),
        ca.cert_path(),
    );
    Ok(SlixClient::connect(opts).await?)
}

/// One HTTP/1.1 GET on loopback, the whole response read: (status line and headers, body).
async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: &str,
) -> Result<(String, Vec<u8>), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let cookie = if cookie.is_empty() {
        String::new()
    } else {
        format!("Cookie: {cookie}\r\n")
    };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await??;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    Ok((head, all[split + 4..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_by_http_upload_is_archived_and_an_officer_downloads_it() -> TestResult {
    let dir = TestDir::new("files")?;
    let ca = TestCa::generate(dir.path())?;
    let prosody = Prosody::start(
        dir.path(),
        &ca,
        ProsodyOptions {
            users: USERS
                .iter()
                .map(|(n, pw)| User::new(n, "example.test", pw))
                .collect(),
            file_share: true,
            ..ProsodyOptions::default()
        },
    )?;
    let share = prosody.file_share_url().ok_or("no file share")?;
    let front = Front::start(
        &dir.join("custos"),
        &ca,
        prosody.c2s_addr(),
        &RigOptions {
            archive: true,
            web: true,
            extra: format!("[files]\nsources = [\"{share}\"]\nmax_bytes = 100000\n"),
            ..RigOptions::default()
        },
    )?;
    let context = || {
        format!(
            "--- custos log ---\n{}\n--- prosody log ---\n{}",
            front.custos.log_tail(),
            prosody.log_tail()
        )
    };
    let mut alice = login(&front, &ca, "alice").await?;
    let mut bob = login(&front, &ca, "bob").await?;

    // A file whose bytes are not all text, with a name that needs encoding.
    let mut content = b"%PDF-1.4 quarterly okapi figures\n".to_vec();
    content.extend((0u8..=255).cycle().take(3000));
    let path = dir.join("Q3 okapi report.pdf");
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
    front.search_copies_until("okapi", 2, Duration::from_secs(10))?;
    let hits = front.search("okapi report")?;
    assert_eq!(hits.len(), 1, "{hits:#?}\n{}", context());
    let copies = front.search_copies("pdf")?;
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
    front.search_copies_until("zebra", 2, Duration::from_secs(10))?;
    let elsewhere = front.search("zebra")?;
    assert!(elsewhere[0].get("files").is_none(), "{elsewhere:#?}");

    // The officer downloads it from the conversation, byte for byte, as an attachment.
    custos_e2e::custos::add_user(
        front.custos.config_path(),
        "olivia",
        "officer",
        OFFICER_PASSWORD,
    )?;
    let web = front.web.ok_or("no web UI")?;
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
        let (head, body) = http_get(web, &href, &cookies.join("; ")).await?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(hex(&Sha256::digest(&body)), digest, "byte for byte");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/octet-stream"),
            "{head}"
        );
        assert!(lower.contains("x-content-type-options: nosniff"), "{head}");
        assert!(lower.contains("content-disposition: attachment;"), "{head}");
        assert!(head.contains("Q3%20okapi%20report.pdf"), "{head}");
        // Without the session: nothing.
        let (head, _) = http_get(web, &href, "").await?;
        assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
        Ok::<(), BoxError>(())
    }
    .await;
    let _ = browser.close().await;
    result
}
