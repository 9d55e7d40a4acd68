//! Group chat (XEP-0045) through Custos, in front of Prosody and of ejabberd: a room with
//! three members behind Custos and one who reaches the server directly, an information
//! barrier kept at the room's door and in private messages, every message archived once
//! with the room, the nickname and the person behind it, and the room transcript an
//! officer reads in the review UI (in a real Chromium).
//!
//! Each test starts its own server and `custos serve` on loopback ports it picks, and
//! stops both by pid.

use std::time::Duration;

use custos_e2e::rig::{BoxError, Rig, RigOptions, ServerKind};
use custos_e2e::scenarios::{group_chat, RoomMembers, ROOM, ROOM_RULES, ROOM_USERS};
use custos_e2e::{ConnectOptions, SlixClient};
use custos_web_ui::browser::Browser;
use fantoccini::Locator;

type TestResult = Result<(), BoxError>;

const OFFICER_PASSWORD: &str = "officer-password-1";

/// `user@example.test/desk` at `addr` (Custos, or the server itself).
async fn login(rig: &Rig, addr: std::net::SocketAddr, user: &str) -> Result<SlixClient, BoxError> {
    let opts = ConnectOptions::new(
        &format!("{user}@example.test/desk"),
        rig.password(user)?,
        addr,
        rig.ca.cert_path(),
    );
    SlixClient::connect(opts)
        .await
        .map_err(|e| format!("{user} could not log in at {addr}: {e}\n{}", rig.context()).into())
}

/// Alice, Bob, Carol and Erin through Custos; Dave straight to the server.
async fn members(rig: &Rig) -> Result<RoomMembers, BoxError> {
    let through = rig.custos.listener(0);
    Ok(RoomMembers {
        alice: login(rig, through, "alice").await?,
        bob: login(rig, through, "bob").await?,
        carol: login(rig, through, "carol").await?,
        dave: login(rig, rig.server.c2s_addr(), "dave").await?,
        erin: login(rig, through, "erin").await?,
    })
}

/// A rig with group chat, the room rules and the extra accounts, in front of `server`.
fn rig(label: &str, server: ServerKind, web: bool) -> Result<Rig, BoxError> {
    Rig::start(
        label,
        RigOptions {
            server,
            users: ROOM_USERS.to_vec(),
            muc: true,
            archive: true,
            web,
            rules: Some(ROOM_RULES.into()),
            ..RigOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_prosody_through_custos() -> TestResult {
    let rig = rig("rooms-prosody", ServerKind::Prosody, true)?;
    let mut m = members(&rig).await?;
    group_chat(&rig.custos, &mut m, &|| rig.context()).await?;

    // The officer reads the room as a transcript: each message once, by nickname and
    // the person behind it, Dave's words included though he never crossed Custos.
    rig.add_user("olivia", "officer", OFFICER_PASSWORD)?;
    let base = format!("http://{}", rig.web.ok_or("no web UI")?);
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
    let rig = rig("rooms-ejabberd", ServerKind::Ejabberd, false)?;
    let mut m = members(&rig).await?;
    group_chat(&rig.custos, &mut m, &|| rig.context()).await
}
