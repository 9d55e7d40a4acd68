//! Group chat (XEP-0045) through Custos, in front of Prosody and of ejabberd: a room with
//! three members behind Custos and one who reaches the server directly, an information
//! barrier kept at the room's door and in private messages, every message archived once
//! with the room, the nickname and the person behind it, and the room transcript an
//! officer reads in the review UI (in a real Chromium).
//!
//! Each test starts its own server and `custos serve` on loopback ports it picks, and
//! stops both by pid.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use custos_e2e::ejabberd::Ejabberd;
use custos_e2e::rig::{BoxError, Front, RigOptions, USERS};
use custos_e2e::scenarios::{group_chat, RoomMembers, ROOM, ROOM_RULES, ROOM_USERS};
use custos_e2e::{ConnectOptions, Prosody, ProsodyOptions, SlixClient, TestCa, TestDir, User};
use custos_web_ui::browser::Browser;
use fantoccini::Locator;

type TestResult = Result<(), BoxError>;

const OFFICER_PASSWORD: &str = "officer-password-1";

fn password(user: &str) -> Result<&'static str, BoxError> {
    USERS
        .iter()
        .chain(ROOM_USERS)
        .find(|(name, _)| *name == user)
        .map(|(_, pw)| *pw)
        .ok_or_else(|| format!("no account {user}").into())
}

/// Every account the scenario uses, on `example.test`.
fn users() -> Vec<User> {
    USERS
        .iter()
        .chain(ROOM_USERS)
        .map(|(name, pw)| User::new(name, "example.test", pw))
        .collect()
}

async fn login(addr: SocketAddr, ca: &TestCa, user: &str) -> Result<SlixClient, BoxError> {
    let opts = ConnectOptions::new(
        &format!("{user}@example.test/desk"),
        password(user)?,
        addr,
        ca.cert_path(),
    );
    SlixClient::connect(opts)
        .await
        .map_err(|e| format!("{user} could not log in at {addr}: {e}").into())
}

/// Alice, Bob, Carol and Erin through Custos; Dave straight to the server at `server`.
async fn members(front: &Front, server: SocketAddr, ca: &TestCa) -> Result<RoomMembers, BoxError> {
    let through = front.custos.listener(0);
    Ok(RoomMembers {
        alice: login(through, ca, "alice").await?,
        bob: login(through, ca, "bob").await?,
        carol: login(through, ca, "carol").await?,
        dave: login(server, ca, "dave").await?,
        erin: login(through, ca, "erin").await?,
    })
}

fn front(dir: &Path, ca: &TestCa, upstream: SocketAddr, web: bool) -> Result<Front, BoxError> {
    Front::start(
        &dir.join("custos"),
        ca,
        upstream,
        &RigOptions {
            archive: true,
            web,
            rules: Some(ROOM_RULES.into()),
            ..RigOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_prosody_through_custos() -> TestResult {
    let dir = TestDir::new("rooms-prosody")?;
    let ca = TestCa::generate(dir.path())?;
    let prosody = Prosody::start(
        dir.path(),
        &ca,
        ProsodyOptions {
            users: users(),
            muc: Some("conference.example.test".into()),
            ..ProsodyOptions::default()
        },
    )?;
    let front = front(dir.path(), &ca, prosody.c2s_addr(), true)?;
    let context = || {
        format!(
            "--- custos log ---\n{}\n--- prosody log ---\n{}",
            front.custos.log_tail(),
            prosody.log_tail()
        )
    };
    let mut m = members(&front, prosody.c2s_addr(), &ca).await?;
    group_chat(&front.custos, &mut m, &context).await?;

    // The officer reads the room as a transcript: each message once, by nickname and
    // the person behind it, Dave's words included though he never crossed Custos.
    custos_e2e::custos::add_user(
        front.custos.config_path(),
        "olivia",
        "officer",
        OFFICER_PASSWORD,
    )?;
    let base = format!("http://{}", front.web.ok_or("no web UI")?);
    let profile = tempfile::tempdir()?;
    let browser = Browser::start(profile.path()).await?;
    let shots = custos_e2e::tools::workspace_root().join("target/screenshots");
    let result = async {
        browser.sign_in(&base, "olivia", OFFICER_PASSWORD).await?;
        let c = browser.client();
        c.goto(&format!("{base}/search?q=room:{ROOM}+bravo"))
            .await?;
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
        let heading = c.find(Locator::Css("h1")).await?.text().await?;
        assert_eq!(heading, "Room transcript");
        let page = c
            .find(Locator::Css("div.conversation"))
            .await?
            .text()
            .await?;
        for said in [
            "room-alpha the okapi desk opens at nine",
            "room-bravo dave confirms the okapi order",
            "room-charlie erin slips a word in",
        ] {
            assert_eq!(page.matches(said).count(), 1, "{said} once: {page}");
        }
        assert!(page.contains("dave@example.test/desk"), "{page}");
        assert!(page.contains("alice@example.test/desk"), "{page}");
        let bravo = c
            .find(Locator::Css("article.msg.hit header"))
            .await?
            .text()
            .await?;
        assert!(
            bravo.contains("dave (dave@example.test/desk)"),
            "speaker named by nickname and person: {bravo}"
        );
        browser
            .screenshot(&shots.join("rooms-transcript.png"))
            .await?;
        Ok::<(), BoxError>(())
    }
    .await;
    let _ = browser.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_ejabberd_through_custos() -> TestResult {
    let dir = TestDir::new("rooms-ejabberd")?;
    let ca = TestCa::generate(dir.path())?;
    let server = Ejabberd::start(dir.path(), &ca, &users())?;
    let front = front(dir.path(), &ca, server.c2s_addr(), false)?;
    let context = || {
        format!(
            "--- custos log ---\n{}\n--- ejabberd logs ---\n{}",
            front.custos.log_tail(),
            server.log_tail()
        )
    };
    let mut m = members(&front, server.c2s_addr(), &ca).await?;
    group_chat(&front.custos, &mut m, &context).await
}
