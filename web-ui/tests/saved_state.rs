//! The review state's saved copy, against a real archive: a restart reads it back and
//! reads only the records after it, and shows what a full read would; a copy that is
//! damaged, made under other settings, or made from records this log does not hold is
//! not believed, and the state is read from the log instead.

#![allow(clippy::unwrap_used)] // a test panics on a broken expectation

mod common;

use axum::http::{Method, StatusCode};
use axum::Router;
use common::*;
use custos_archive::Action;
use custos_web_ui::BoundWeb;

async fn page(app: &Router, cookie: &str, path: &str) -> String {
    let r = send(app, Method::GET, path, Some(cookie), None).await;
    assert_eq!(r.status, StatusCode::OK, "{path}");
    r.body
}

async fn bind(fx: &Fixture) -> BoundWeb {
    custos_web_ui::bind(fx.cfg.clone(), fx.archive.clone())
        .await
        .unwrap()
}

/// Bob's card number, flagged by `pci-card`: the review item each test looks for.
async fn append_flagged_card(fx: &Fixture) -> u64 {
    append(
        &fx.archive,
        Msg::chat("bob@example.test/phone", "alice@example.test", "card 4111").flagged(
            Action::Flag,
            &["pci-card"],
            "high",
        ),
    )
    .await
}

fn state_file(fx: &Fixture) -> std::path::PathBuf {
    archive_dir(&fx.dir).join("state").join("web-ui.state")
}

/// The saved state's pages files (`state/web-ui.<id>.pages`).
fn pages_files(fx: &Fixture) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(archive_dir(&fx.dir).join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pages"))
        .collect();
    found.sort();
    found
}

/// Changes one byte of rows page `page` in the saved state's pages file, as someone who
/// can write the archive directory would. The rows are the file's first part, in pages
/// of 16 rows (1,008 bytes sealed).
fn change_saved_row_page(fx: &Fixture, page: usize) {
    let pages = pages_files(fx);
    let mut raw = std::fs::read(&pages[0]).unwrap();
    raw[page * 1008 + 40] ^= 0x20;
    std::fs::write(&pages[0], &raw).unwrap();
}

/// A web UI served (its follower running) until [`Served::stop`], which saves.
struct Served {
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<(), custos_web_ui::WebError>>,
}

impl Served {
    fn start(web: BoundWeb) -> Served {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(web.run(async {
            let _ = stopped.await;
        }));
        Served { stop, run }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.run.await.unwrap().unwrap();
    }
}

/// The queue's item ids, as the page lists them.
fn queued(html: &str) -> Vec<String> {
    html.match_indices("id=\"q")
        .map(|(i, _)| {
            html[i + 5..]
                .chars()
                .take_while(|c| *c != '"')
                .collect::<String>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_saved_state_back_and_then_only_newer_records() {
    let fx = fixture(0.0);
    let first = append_flagged_card(&fx).await;
    append(
        &fx.archive,
        Msg::chat("alice@example.test/laptop", "bob@example.test", "lunch?"),
    )
    .await;
    let web = bind(&fx).await;
    assert_eq!(web.started().restored_through, None, "nothing saved yet");
    web.save_state_blocking();
    assert!(state_file(&fx).exists());
    // Nothing of what it says is readable in the file, nor in its pages file.
    let pages = pages_files(&fx);
    assert_eq!(pages.len(), 1, "{pages:?}");
    for file in [state_file(&fx), pages[0].clone()] {
        let raw = std::fs::read(&file).unwrap();
        for plain in [&b"alice@example.test"[..], b"pci-card"] {
            assert!(!raw.windows(plain.len()).any(|w| w == plain));
        }
    }
    // A second save writes a pages file of its own, and the first one goes.
    append(
        &fx.archive,
        Msg::chat(
            "alice@example.test/laptop",
            "bob@example.test",
            "and dinner",
        ),
    )
    .await;
    drop(web);
    let web = bind(&fx).await;
    assert_eq!(web.started().records_read, 1);
    web.save_state_blocking();
    let second = pages_files(&fx);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, pages);
    let covered = fx.archive.reader().records(1..=u64::MAX - 1).unwrap().len() as u64;
    drop(web);

    // Written after the save: read from the log at the next start.
    let later = append(
        &fx.archive,
        Msg::chat(
            "carol@example.test/desk",
            "dave@example.test",
            "insider tip",
        )
        .flagged(Action::Block, &["mnpi"], "critical"),
    )
    .await;
    let web = bind(&fx).await;
    let started = web.started();
    assert_eq!(started.restored_through, Some(covered));
    assert_eq!(
        started.records_read, 1,
        "only the record after the saved state"
    );
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let q = page(&app, &cookie, "/queue").await;
    assert_eq!(queued(&q), [later.to_string(), first.to_string()]);
    assert!(q.contains("mnpi") && q.contains("pci-card"));
    // The same pages a full read gives.
    std::fs::remove_file(state_file(&fx)).unwrap();
    let full = bind(&fx).await;
    assert_eq!(full.started().restored_through, None);
    let full_app = full.router();
    let (cookie2, _) = sign_in(&full_app, "oscar").await;
    for path in ["/queue", "/", "/holds", &format!("/conversation/{first}")] {
        let a = page(&app, &cookie, path).await;
        let b = page(&full_app, &cookie2, path).await;
        let strip = |s: &str| {
            // Session-specific tokens differ between the two servers.
            s.lines()
                .filter(|l| !l.contains("csrf"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&a), strip(&b), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_state_that_is_damaged_or_made_under_other_settings_is_read_afresh() {
    let mut fx = fixture(0.0);
    let flagged = append_flagged_card(&fx).await;
    let web = bind(&fx).await;
    web.save_state_blocking();
    drop(web);
    let path = state_file(&fx);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let web = bind(&fx).await;
    assert_eq!(web.started().restored_through, None, "damaged copy refused");
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    assert_eq!(
        queued(&page(&app, &cookie, "/queue").await),
        [flagged.to_string()]
    );
    drop(web);
    // Made at another sample rate: the sample would differ.
    std::fs::write(&path, &good).unwrap();
    fx.cfg.sample_rate = 1.0;
    let web = bind(&fx).await;
    assert_eq!(web.started().restored_through, None, "stale copy not used");
    fx.cfg.sample_rate = 0.0;
    std::fs::write(&path, &good).unwrap();
    assert!(bind(&fx).await.started().restored_through.is_some());
    // Its pages file gone: read afresh as well.
    for p in pages_files(&fx) {
        std::fs::remove_file(p).unwrap();
    }
    let web = bind(&fx).await;
    assert_eq!(web.started().restored_through, None, "no pages, not used");
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    assert_eq!(
        queued(&page(&app, &cookie, "/queue").await),
        [flagged.to_string()]
    );
}

/// An administrator keeps a copy of the archive directory, lets the original run on,
/// and later puts the original's saved state beside the copy's diverging log: the
/// state describes records the copy does not hold, and must not be shown for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_state_from_another_history_of_the_same_archive_is_not_believed() {
    let fx = fixture(0.0);
    append(
        &fx.archive,
        Msg::chat("bob@example.test/phone", "alice@example.test", "hello"),
    )
    .await;
    let Fixture { dir, archive, cfg } = fx;
    archive.close().await.unwrap();
    // The copy: same archive id, same keys, same first record.
    let twin = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), twin.path());
    let mut twin_cfg = cfg.clone();
    twin_cfg.users_file = twin.path().join("users.json");

    // The original goes on with a flagged message and saves its state.
    let original = open_archive(&dir);
    append(
        &original,
        Msg::chat(
            "mallory@example.test/x",
            "eve@example.test",
            "the original's",
        )
        .flagged(Action::Flag, &["original-rule"], "high"),
    )
    .await;
    let web = custos_web_ui::bind(cfg.clone(), original.clone())
        .await
        .unwrap();
    web.save_state_blocking();
    drop(web);
    original.close().await.unwrap();

    // The copy goes on differently, to the same seq.
    let copy = open_archive(&twin);
    let seq = append(
        &copy,
        Msg::chat("carol@example.test/desk", "dave@example.test", "the copy's").flagged(
            Action::Block,
            &["copy-rule"],
            "critical",
        ),
    )
    .await;
    std::fs::create_dir_all(archive_dir(&twin).join("state")).unwrap();
    std::fs::copy(
        archive_dir(&dir).join("state").join("web-ui.state"),
        archive_dir(&twin).join("state").join("web-ui.state"),
    )
    .unwrap();
    let web = custos_web_ui::bind(twin_cfg, copy.clone()).await.unwrap();
    assert_eq!(
        web.started().restored_through,
        None,
        "the log does not continue the saved state"
    );
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let q = page(&app, &cookie, "/queue").await;
    assert_eq!(queued(&q), [seq.to_string()]);
    assert!(q.contains("copy-rule"));
    assert!(!q.contains("original-rule"), "nothing of the other history");
    copy.close().await.unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "writer.lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Another node's chain is resumed from the saved state too. When that node's chain in
/// the bucket is no longer the one the state was read from (the node was set up again
/// under its name, or its folder put back from another copy), the restored UI must not
/// go on showing the old chain's messages and leave out every message of the chain that
/// is there now: it must show what a full read shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_chain_that_no_longer_continues_the_saved_state_is_read_afresh() {
    let mut fx = fixture(0.0);
    // The other node's chain: another archive under the same keys.
    let peer_tmp = tempfile::tempdir().unwrap();
    let secrets = peer_tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    copy_dir(&fx.dir.path().join("secrets"), &secrets);
    let peer_dir = archive_dir(&peer_tmp);
    let peer = open_archive(&peer_tmp);
    append(
        &peer,
        Msg::chat("old@example.test/a", "x@example.test", "old").flagged(
            Action::Flag,
            &["peer-old-rule"],
            "high",
        ),
    )
    .await;
    peer.close().await.unwrap();
    fx.cfg.peers = std::sync::Arc::new(std::sync::RwLock::new(vec![custos_web_ui::PeerChain {
        node: Some("n2".into()),
        dir: peer_dir.clone(),
    }]));
    append(
        &fx.archive,
        Msg::chat("bob@example.test/phone", "alice@example.test", "hello"),
    )
    .await;
    let web = bind(&fx).await;
    {
        let app = web.router();
        let (cookie, _) = sign_in(&app, "oscar").await;
        assert!(page(&app, &cookie, "/queue")
            .await
            .contains("peer-old-rule"));
    }
    web.save_state_blocking();
    drop(web);

    // The other node's chain is now another one, longer than the one the state read.
    std::fs::remove_dir_all(&peer_dir).unwrap();
    let peer = open_archive(&peer_tmp);
    for body in ["new 1", "new 2", "new 3"] {
        append(
            &peer,
            Msg::chat("new@example.test/a", "y@example.test", body).flagged(
                Action::Block,
                &["peer-new-rule"],
                "critical",
            ),
        )
        .await;
    }
    peer.close().await.unwrap();

    let web = bind(&fx).await;
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let restored = page(&app, &cookie, "/queue").await;
    drop(web);
    std::fs::remove_file(state_file(&fx)).unwrap();
    let full = bind(&fx).await;
    let full_app = full.router();
    let (cookie, _) = sign_in(&full_app, "oscar").await;
    let full_queue = page(&full_app, &cookie, "/queue").await;
    assert!(full_queue.contains("peer-new-rule") && !full_queue.contains("peer-old-rule"));
    assert!(
        restored.contains("peer-new-rule"),
        "the other node's current messages are queued"
    );
    assert!(
        !restored.contains("peer-old-rule"),
        "nothing of the chain the other node no longer has"
    );
}

/// A start with more of the log to read than it reads before serving (no saved state
/// here, as at the first start after an upgrade, or after someone deleted it) serves at
/// once: pages say how far the state is built, a review is refused rather than checked
/// against part of it, and once the follower has caught up everything is as a full
/// read shows, and the state is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_much_to_read_serves_at_once_and_builds_the_state_behind() {
    let mut fx = fixture(0.0);
    let flagged = append_flagged_card(&fx).await;
    let mut last = flagged;
    for i in 0..600 {
        last = append(
            &fx.archive,
            Msg::chat(
                "carol@example.test/desk",
                "dave@example.test",
                &format!("note {i}"),
            ),
        )
        .await;
    }
    let late = append(
        &fx.archive,
        Msg::chat(
            "carol@example.test/desk",
            "dave@example.test",
            "insider tip",
        )
        .flagged(Action::Flag, &["mnpi"], "critical"),
    )
    .await;
    fx.cfg.build_in_background_above = 100;
    let web = bind(&fx).await;
    let started = web.started();
    assert!(started.in_background);
    assert!(started.records_read < last, "{started:?}");
    let app = web.router();
    let (cookie, csrf) = sign_in(&app, "oscar").await;
    let dashboard = page(&app, &cookie, "/").await;
    assert!(
        dashboard.contains("being built from the archive"),
        "{dashboard}"
    );
    // The first message is read; reviewing it now is refused, not checked against part
    // of the state.
    let review = format!("csrf={csrf}&seq={flagged}&op=reviewed&comment=checked");
    let r = send(&app, Method::POST, "/queue", Some(&cookie), Some(&review)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);

    let served = Served::start(web);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let q = page(&app, &cookie, "/queue").await;
        if !q.contains("being built from the archive") {
            assert_eq!(queued(&q), [late.to_string(), flagged.to_string()]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = send(&app, Method::POST, "/queue", Some(&cookie), Some(&review)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    served.stop().await;
    // Saved at shutdown, whole: the next start takes it back and reads nothing more.
    let web = bind(&fx).await;
    assert!(!web.started().in_background);
    assert!(web.started().restored_through.is_some_and(|n| n > late));
}

/// Someone who can write the archive directory changes a page in the middle of the
/// saved state's pages file. The start takes the state back (it reads the ends only);
/// the view that reads the changed page is not shown short but refused, every page
/// then says the state is being built again, and it is built again (the next catch-up,
/// a page's or the follower's, starts it; the follower reads the rest): the message is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_changed_in_the_saved_pages_file_is_found_and_the_state_built_again() {
    let fx = fixture(0.0);
    let chat = |i: usize| {
        Msg::chat(
            "carol@example.test/desk",
            "dave@example.test",
            Box::leak(format!("note {i}").into_boxed_str()),
        )
    };
    for i in 0..150 {
        append(&fx.archive, chat(i)).await;
    }
    let target = append(
        &fx.archive,
        Msg::chat(
            "carol@example.test/desk",
            "dave@example.test",
            "insider tip",
        )
        .flagged(Action::Flag, &["mnpi"], "critical"),
    )
    .await;
    for i in 150..300 {
        append(&fx.archive, chat(i)).await;
    }
    let web = bind(&fx).await;
    web.save_state_blocking();
    drop(web);
    // The flagged message's row is on page 9.
    change_saved_row_page(&fx, 9);

    let web = bind(&fx).await;
    assert!(web.started().restored_through.is_some());
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let path = format!("/conversation/{target}");
    let r = send(&app, Method::GET, &path, Some(&cookie), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let dashboard = page(&app, &cookie, "/").await;
    assert!(dashboard.contains("could not be read back"), "{dashboard}");

    let served = Served::start(web);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = send(&app, Method::GET, &path, Some(&cookie), None).await;
        if r.status == StatusCode::OK && !r.body.contains("being built") {
            assert!(r.body.contains("insider tip"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never built again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    served.stop().await;
}

/// The same change, found by no view: the follower looks the saved pages over after
/// the start, and the state is built again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_changed_in_the_saved_pages_file_is_found_by_the_look_over() {
    let fx = fixture(0.0);
    for i in 0..300 {
        append(
            &fx.archive,
            Msg::chat(
                "carol@example.test/desk",
                "dave@example.test",
                Box::leak(format!("note {i}").into_boxed_str()),
            ),
        )
        .await;
    }
    let web = bind(&fx).await;
    web.save_state_blocking();
    drop(web);
    change_saved_row_page(&fx, 9);

    let web = bind(&fx).await;
    let app = web.router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    assert!(!page(&app, &cookie, "/")
        .await
        .contains("could not be read back"));
    let pages_before = pages_files(&fx);
    let (rebuilds, building) = (web.rebuilds_watch(), web.building_watch());
    assert_eq!(rebuilds(), 0);
    let served = Served::start(web);
    // Found and built again: after it, the dashboard says nothing, and the state the
    // rebuild saves at shutdown is a new one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rebuilds() == 0 || building() {
        assert!(std::time::Instant::now() < deadline, "never found");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let d = page(&app, &cookie, "/").await;
    assert!(!d.contains("could not be read back") && !d.contains("being built"));
    served.stop().await;
    assert_ne!(pages_files(&fx), pages_before);
}
