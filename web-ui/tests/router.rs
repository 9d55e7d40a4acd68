//! The real router against a real archive, driven with `oneshot`: every route
//! × role, sign-in, CSRF, throttling, self-review, audit records, escaping,
//! and review state rebuilt from the archive after a restart.

#![allow(clippy::unwrap_used)] // a test panics on a broken expectation

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::*;
use custos_archive::{Action, EventRecord, NewRecord};
use custos_web_ui::app::ROUTES;
use custos_web_ui::roles::allows;
use custos_web_ui::Role;
use tower::ServiceExt;

struct World {
    fx: Fixture,
    app: Router,
    flagged: u64,
    own: u64,
    plain: u64,
}

async fn world() -> World {
    let fx = fixture(0.0);
    let plain = append(
        &fx.archive,
        Msg::chat(
            "alice@example.test/laptop",
            "bob@example.test",
            "lunch at noon?",
        ),
    )
    .await;
    let mut card = Msg::chat(
        "bob@example.test/phone",
        "alice@example.test",
        "send the card 4111 1111 1111 1111",
    )
    .flagged(Action::Flag, &["pci-card"], "high");
    // A file it shared, for the download route.
    card.capture.files.push(custos_archive::SharedFile {
        url: "https://upload.example.test/f/a/card.png".into(),
        name: "card.png".into(),
        media_type: "image/png".into(),
        size: 4,
        sha256: "00".repeat(32),
        content: Some(b"\x89PNG".to_vec()),
        error: None,
    });
    let flagged = append(&fx.archive, card).await;
    let own = append(
        &fx.archive,
        Msg::chat(
            "olivia@example.test/desk",
            "carol@example.test",
            "guaranteed returns, trust me",
        )
        .flagged(Action::Flag, &["promissory"], "medium"),
    )
    .await;
    wait_indexed(&fx.archive, "card", 1).await;
    let bound = custos_web_ui::bind(fx.cfg.clone(), fx.archive.clone())
        .await
        .unwrap();
    let app = bound.router();
    World {
        fx,
        app,
        flagged,
        own,
        plain,
    }
}

fn concrete(path: &str, seq: u64) -> String {
    path.replace("{seq}", &seq.to_string()).replace("{n}", "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_for_every_role() {
    let w = world().await;
    let mut sessions = Vec::new();
    for (user, role) in [
        ("ada", Role::Admin),
        ("oscar", Role::Officer),
        ("aud", Role::Auditor),
    ] {
        sessions.push((role, sign_in(&w.app, user).await));
    }
    let mut checked = 0;
    for &(method, path, perm) in ROUTES {
        let Some(perm) = perm else { continue };
        let uri = concrete(path, w.flagged);
        // Not signed in: every protected route sends the browser to sign in and does nothing.
        let m: Method = method.parse().unwrap();
        let anon_form = (m == Method::POST).then_some("csrf=x");
        let r = send(&w.app, m.clone(), &uri, None, anon_form).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{method} {path} anonymous");
        assert_eq!(r.headers.get(header::LOCATION).unwrap(), "/login");
        for (role, (cookie, csrf)) in &sessions {
            if path == "/logout" {
                continue; // checked below with throwaway sessions
            }
            let form = match path {
                "/queue" => format!("csrf={csrf}&seq={}&op=assign-me", w.flagged),
                "/users" => format!(
                    "csrf={csrf}&name=new-{}&role=auditor&password={}",
                    role.as_str(),
                    enc(PASSWORD)
                ),
                "/users/remove" => format!("csrf={csrf}&name=removable"),
                "/holds" => format!(
                    "csrf={csrf}&matter=m-{}&jids=x%40example.test",
                    role.as_str()
                ),
                "/holds/release" => format!("csrf={csrf}&matter=r-{}", role.as_str()),
                "/erasure" => format!("csrf={csrf}&jid=bob%40example.test"),
                _ => String::new(),
            };
            if path == "/holds/release" {
                let spec = custos_archive::retention::HoldSpec::new(
                    &format!("r-{}", role.as_str()),
                    &["y@example.test".to_string()],
                    None,
                    None,
                    None,
                )
                .unwrap();
                w.fx.archive
                    .append(NewRecord::Event(EventRecord::Audit {
                        actor: "setup".into(),
                        action: custos_archive::retention::HOLD_PLACE.into(),
                        detail: serde_json::to_string(&spec).unwrap(),
                    }))
                    .await
                    .unwrap();
            }
            if path == "/users/remove" {
                let _ = custos_web_ui::add_user(
                    &w.fx.cfg.users_file,
                    "removable",
                    Role::Auditor,
                    PASSWORD,
                    &[],
                );
            }
            let r = send(
                &w.app,
                m.clone(),
                &uri,
                Some(cookie),
                (m == Method::POST).then_some(form.as_str()),
            )
            .await;
            if allows(*role, perm) {
                assert!(
                    r.status == StatusCode::OK || r.status == StatusCode::SEE_OTHER,
                    "{method} {path} as {role:?}: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {role:?} must be refused"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} route × role checks");
    // Sign-out, for each role, with its own session.
    for user in ["ada", "oscar", "aud"] {
        let (cookie, csrf) = sign_in(&w.app, user).await;
        let r = send(
            &w.app,
            Method::POST,
            "/logout",
            Some(&cookie),
            Some(&format!("csrf={csrf}")),
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let after = send(&w.app, Method::GET, "/", Some(&cookie), None).await;
        assert_eq!(
            after.status,
            StatusCode::SEE_OTHER,
            "session ended by sign-out"
        );
    }
    // Public routes.
    for path in ["/login", "/static/app.css", "/static/app.js"] {
        assert_eq!(
            send(&w.app, Method::GET, path, None, None).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_session_csrf_token() {
    let w = world().await;
    let (cookie, csrf) = sign_in(&w.app, "oscar").await;
    let (_, other_csrf) = sign_in(&w.app, "ada").await;
    for bad in ["", "csrf=", &format!("csrf={other_csrf}")] {
        let form = format!("{bad}&seq={}&op=assign-me", w.flagged);
        let r = send(&w.app, Method::POST, "/queue", Some(&cookie), Some(&form)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{bad:?}");
    }
    let r = send(
        &w.app,
        Method::POST,
        "/queue",
        Some(&cookie),
        Some(&format!("csrf={csrf}&seq={}&op=assign-me", w.flagged)),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // The sign-in form needs its own double-submit token.
    let r = send(
        &w.app,
        Method::POST,
        "/login",
        None,
        Some(&format!("user=ada&password={}&csrf=abc", enc(PASSWORD))),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_is_audited_refuses_self_review_and_survives_restart() {
    let w = world().await;
    let (cookie, csrf) = sign_in(&w.app, "olivia").await;
    // Olivia sent `own`: she may not review it.
    let r = send(
        &w.app,
        Method::POST,
        "/queue",
        Some(&cookie),
        Some(&format!(
            "csrf={csrf}&seq={}&op=reviewed&comment=fine",
            w.own
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("sent or received"), "{}", r.body);
    // A status change without a comment is refused.
    let r = send(
        &w.app,
        Method::POST,
        "/queue",
        Some(&cookie),
        Some(&format!(
            "csrf={csrf}&seq={}&op=escalated&comment=",
            w.flagged
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A message that is not in the queue cannot be reviewed.
    let r = send(
        &w.app,
        Method::POST,
        "/queue",
        Some(&cookie),
        Some(&format!(
            "csrf={csrf}&seq={}&op=reviewed&comment=x",
            w.plain
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(
        &w.app,
        Method::POST,
        "/queue",
        Some(&cookie),
        Some(&format!(
            "csrf={csrf}&seq={}&op=escalated&comment={}&back=/queue",
            w.flagged,
            enc("card number <b>shared</b>")
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let q = send(
        &w.app,
        Method::GET,
        "/queue?status=escalated",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        q.body.contains(&format!("id=\"q{}\"", w.flagged)),
        "escalated item listed"
    );
    let conv = send(
        &w.app,
        Method::GET,
        &format!("/conversation/{}", w.flagged),
        Some(&cookie),
        None,
    )
    .await;
    assert!(conv.body.contains("marked escalated"));
    assert!(
        conv.body.contains("card number &lt;b&gt;shared&lt;/b&gt;"),
        "comment escaped"
    );
    // The archive holds the audit record with who, what and which action.
    let audits: Vec<(String, String, String)> =
        w.fx.archive
            .reader()
            .records(1..=u64::MAX - 1)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.content {
                NewRecord::Event(EventRecord::Audit {
                    actor,
                    action,
                    detail,
                }) => Some((actor, action, detail)),
                _ => None,
            })
            .collect();
    let review = audits
        .iter()
        .find(|(_, a, _)| a == "review")
        .expect("review audited");
    assert_eq!(review.0, "olivia");
    let detail: serde_json::Value = serde_json::from_str(&review.2).unwrap();
    assert_eq!(detail["status"], "escalated");
    assert_eq!(detail["seqs"][0], w.flagged);
    assert!(audits.iter().any(|(u, a, d)| u == "olivia"
        && a == "view-conversation"
        && d.contains(&w.flagged.to_string())));
    assert!(audits
        .iter()
        .any(|(u, a, _)| u == "olivia" && a == "sign-in"));
    // Restart: a new server on the reopened archive derives the same state.
    let World {
        fx, app, flagged, ..
    } = w;
    drop(app);
    let Fixture { dir, archive, cfg } = fx;
    archive.close().await.unwrap();
    let archive = open_archive(&dir);
    let app = custos_web_ui::bind(cfg, archive).await.unwrap().router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let q = send(
        &app,
        Method::GET,
        "/queue?status=escalated",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        q.body.contains(&format!("id=\"q{flagged}\"")),
        "review state rebuilt from the archive"
    );
    let open = send(&app, Method::GET, "/queue?status=open", Some(&cookie), None).await;
    assert!(open.body.contains("Escalated"));
}

/// Olivia is a custodian of a hold Oscar placed: it keeps her own messages, so she may
/// neither release it nor change its criteria (say, take herself off it); Oscar may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custodian_may_not_release_or_change_the_hold_that_keeps_their_messages() {
    let w = world().await;
    let (oscar, oscar_csrf) = sign_in(&w.app, "oscar").await;
    let place = |csrf: &str, jids: &str, change: bool| {
        format!(
            "csrf={csrf}&matter={}&jids={}{}",
            enc("acme v. firm"),
            enc(jids),
            if change { "&change=on" } else { "" }
        )
    };
    let r = send(
        &w.app,
        Method::POST,
        "/holds",
        Some(&oscar),
        Some(&place(
            &oscar_csrf,
            "olivia@example.test, carol@example.test",
            false,
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (olivia, csrf) = sign_in(&w.app, "olivia").await;
    for (path, body) in [
        ("/holds", place(&csrf, "carol@example.test", true)),
        (
            "/holds/release",
            format!("csrf={csrf}&matter={}", enc("acme v. firm")),
        ),
    ] {
        let r = send(&w.app, Method::POST, path, Some(&olivia), Some(&body)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(r.body.contains("custodian"), "{}", r.body);
    }
    let r = send(
        &w.app,
        Method::POST,
        "/holds/release",
        Some(&oscar),
        Some(&format!("csrf={oscar_csrf}&matter={}", enc("acme v. firm"))),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    // A hold that reaches her through its query alone is hers as much.
    let r = send(
        &w.app,
        Method::POST,
        "/holds",
        Some(&oscar),
        Some(&format!(
            "csrf={oscar_csrf}&matter=probe&jids=&query={}",
            enc("from:Olivia@example.test")
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = send(
        &w.app,
        Method::POST,
        "/holds/release",
        Some(&olivia),
        Some(&format!("csrf={csrf}&matter=probe")),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_highlight_escape_and_audit() {
    let w = world().await;
    let xss = append(
        &w.fx.archive,
        Msg::chat(
            "mallory@example.test/x",
            "bob@example.test",
            "<script>window.__xss=1</script> card \"><img src=x onerror=alert(1)>",
        ),
    )
    .await;
    wait_indexed(&w.fx.archive, "card", 2).await;
    let (cookie, _) = sign_in(&w.app, "aud").await;
    let r = send(&w.app, Method::GET, "/search?q=card", Some(&cookie), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("<mark>card</mark>"), "highlighted");
    assert!(r.body.contains(&format!("/conversation/{xss}")));
    assert!(!r.body.contains("<script>window"), "body escaped");
    assert!(!r.body.contains("<img src=x"), "no attribute escape");
    assert!(r.body.contains("&lt;script&gt;"));
    let csp = r
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    // Form filters become clauses: flagged only drops the allowed XSS message.
    let r = send(
        &w.app,
        Method::GET,
        "/search?q=card&flagged=1",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        !r.body.contains(&format!("/conversation/{xss}"))
            && r.body.contains(&format!("/conversation/{}", w.flagged))
    );
    let r = send(
        &w.app,
        Method::GET,
        "/search?q=card&participant=mallory%40example.test",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        r.body.contains(&format!("/conversation/{xss}"))
            && !r.body.contains(&format!("/conversation/{}\"", w.flagged))
    );
    let r = send(
        &w.app,
        Method::GET,
        "/search?q=card&rule=pci-card&direction=outbound",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        r.body.contains(&format!("/conversation/{}", w.flagged))
            && !r.body.contains(&format!("/conversation/{xss}"))
    );
    // A bad query is explained, not a server error.
    let r = send(
        &w.app,
        Method::GET,
        "/search?q=colour%3Ared",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("unknown field"));
    // Export is audited with its query and count.
    let r = send(&w.app, Method::GET, "/export?q=card", Some(&cookie), None).await;
    assert_eq!(r.body.lines().count(), 2);
    let audit = w.fx.archive.reader().records(1..=u64::MAX - 1).unwrap();
    let searched: Vec<String> = audit
        .into_iter()
        .filter_map(|r| match r.content {
            NewRecord::Event(EventRecord::Audit {
                actor,
                action,
                detail,
            }) if actor == "aud" && (action == "search" || action == "export") => Some(detail),
            _ => None,
        })
        .collect();
    assert!(
        searched
            .iter()
            .any(|d| d.contains("card with:mallory@example.test")),
        "{searched:?}"
    );
    assert!(
        searched.iter().any(|d| d.contains("\"count\":2")),
        "{searched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_shows_context_redaction_and_e2ee() {
    let w = world().await;
    let a = append(
        &w.fx.archive,
        Msg::chat(
            "alice@example.test/laptop",
            "bob@example.test",
            "the account is 12345678",
        ),
    )
    .await;
    let mut red = Msg::chat(
        "bob@example.test/phone",
        "alice@example.test",
        "card 4111 1111 1111 1111 ok",
    )
    .flagged(Action::Redact, &["pci-card"], "high");
    red.delivered = Some("card ████ ok");
    red.direction = custos_archive::Direction::Inbound;
    let r = append(&w.fx.archive, red).await;
    let mut enc_msg = Msg::chat(
        "alice@example.test/laptop",
        "bob@example.test",
        "I sent you an OMEMO encrypted message",
    );
    enc_msg.e2ee = Some("omemo");
    let e = append(&w.fx.archive, enc_msg).await;
    let other = append(
        &w.fx.archive,
        Msg::chat(
            "carol@example.test",
            "dave@example.test",
            "unrelated chatter",
        ),
    )
    .await;
    let (cookie, _) = sign_in(&w.app, "oscar").await;
    let page = send(
        &w.app,
        Method::GET,
        &format!("/conversation/{r}"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    let pos = |s: u64| {
        page.body
            .find(&format!("id=\"m{s}\""))
            .unwrap_or_else(|| panic!("m{s} missing"))
    };
    assert!(
        pos(w.plain) < pos(w.flagged)
            && pos(w.flagged) < pos(a)
            && pos(a) < pos(r)
            && pos(r) < pos(e),
        "in order"
    );
    assert!(
        !page.body.contains(&format!("id=\"m{other}\"")),
        "other parties excluded"
    );
    assert!(
        page.body
            .contains(&format!("id=\"m{r}\" class=\"msg inbound hit\"")),
        "hit marked"
    );
    assert!(
        page.body.contains("Original") && page.body.contains("card ████ ok"),
        "delivered beside original"
    );
    assert!(page.body.contains("end-to-end encrypted") && page.body.contains("omemo"));
    assert_eq!(
        send(
            &w.app,
            Method::GET,
            "/conversation/999999",
            Some(&cookie),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_throttled_and_failures_audited() {
    let w = world().await;
    let form = send(&w.app, Method::GET, "/login", None, None).await;
    let lc = set_cookie(&form, "custos_login")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let token = csrf_of(&form.body);
    for i in 0..5 {
        let r = send(
            &w.app,
            Method::POST,
            "/login",
            Some(&lc),
            Some(&format!("user=ada&password=wrong{i}xxxxxx&csrf={token}")),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert!(r.body.contains("wrong password"));
    }
    // Even the right password is refused while locked.
    let r = send(
        &w.app,
        Method::POST,
        "/login",
        Some(&lc),
        Some(&format!("user=ada&password={}&csrf={token}", enc(PASSWORD))),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let failures = w
        .fx
        .archive
        .reader()
        .records(1..=u64::MAX - 1)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(&r.content, NewRecord::Event(EventRecord::Audit { actor, action, .. }) if actor == "ada" && action == "sign-in-failed"))
        .count();
    assert_eq!(failures, 5);
    // A name no account can have, as long as a request: refused as a wrong password,
    // and the archive keeps a note of it, not the name.
    let huge = format!("{}<script>", "x".repeat(100_000));
    let r = send(
        &w.app,
        Method::POST,
        "/login",
        Some(&lc),
        Some(&format!("user={}&password=wrong&csrf={token}", enc(&huge))),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let audits: Vec<String> =
        w.fx.archive
            .reader()
            .records(1..=u64::MAX - 1)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.content {
                NewRecord::Event(EventRecord::Audit { actor, action, .. })
                    if action == "sign-in-failed" =>
                {
                    Some(actor)
                }
                _ => None,
            })
            .collect();
    assert!(
        audits.iter().any(|a| a == "(not an account name)"),
        "{audits:?}"
    );
    assert!(audits.iter().all(|a| a.len() <= 64), "{audits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_secure_cookies_over_tls() {
    let mut fx = fixture(0.0);
    fx.cfg.session_ttl = std::time::Duration::from_millis(300);
    fx.cfg.secure_cookies = true;
    let app = custos_web_ui::bind(fx.cfg.clone(), fx.archive.clone())
        .await
        .unwrap()
        .router();
    let form = send(&app, Method::GET, "/login", None, None).await;
    let lc = set_cookie(&form, "custos_login").unwrap();
    assert!(lc.contains("; Secure"));
    let (cookie, _) = sign_in(&app, "ada").await;
    assert_eq!(
        send(&app, Method::GET, "/", Some(&cookie), None)
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        send(&app, Method::GET, "/", Some(&cookie), None)
            .await
            .status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_puts_unflagged_messages_in_the_queue_and_dashboard_counts() {
    let fx = fixture(1.0);
    let s = append(
        &fx.archive,
        Msg::chat("alice@example.test", "bob@example.test", "just hello"),
    )
    .await;
    append(
        &fx.archive,
        Msg::chat("alice@example.test", "bob@example.test", "wire it").flagged(
            Action::Block,
            &["wire-fraud"],
            "high",
        ),
    )
    .await;
    let app = custos_web_ui::bind(fx.cfg.clone(), fx.archive.clone())
        .await
        .unwrap()
        .router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let q = send(&app, Method::GET, "/queue?kind=sample", Some(&cookie), None).await;
    assert!(
        q.body.contains(&format!("id=\"q{s}\"")),
        "sampled at rate 1"
    );
    let flagged_only = send(
        &app,
        Method::GET,
        "/queue?kind=flagged",
        Some(&cookie),
        None,
    )
    .await;
    assert!(!flagged_only.body.contains(&format!("id=\"q{s}\"")));
    let d = send(&app, Method::GET, "/", Some(&cookie), None).await;
    assert!(d.body.contains("<svg"), "charts rendered");
    assert!(d.body.contains("wire-fraud"), "open items by rule");
    assert!(
        d.body
            .contains("<span class=\"n\">2</span><span class=\"l\">messages today"),
        "{}",
        d.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_says_when_journal_delivery_fails_and_when_it_recovers() {
    let fx = fixture(0.0);
    let app = custos_web_ui::bind(fx.cfg.clone(), fx.archive.clone())
        .await
        .unwrap()
        .router();
    let (cookie, _) = sign_in(&app, "oscar").await;
    let d = send(&app, Method::GET, "/", Some(&cookie), None).await;
    assert!(
        !d.body.contains("Journal to the archiver"),
        "no journal, no card"
    );

    // The SMTP server's answer is the server's text: shown, never as markup.
    *fx.cfg.journal.write().unwrap() = Some(custos_web_ui::JournalStatus {
        target: "smtp archiver.example:25".into(),
        failures: 3,
        last_error: Some("554 <script>alert(1)</script> rejected".into()),
        next_attempt: Some(custos_archive::Timestamp(1_700_000_000_000)),
        ..Default::default()
    });
    let d = send(&app, Method::GET, "/", Some(&cookie), None).await;
    assert!(d.body.contains("Journal to the archiver"), "{}", d.body);
    assert!(d.body.contains(">failing<"), "{}", d.body);
    assert!(d.body.contains("3 delivery run(s) in a row failed"));
    assert!(d
        .body
        .contains("554 &lt;script&gt;alert(1)&lt;/script&gt; rejected"));
    assert!(!d.body.contains("<script>alert(1)"));
    assert!(d.body.contains("smtp archiver.example:25"));

    let through = custos_archive::Timestamp(custos_archive::Timestamp::now().0 - 90_000);
    *fx.cfg.journal.write().unwrap() = Some(custos_web_ui::JournalStatus {
        target: "smtp archiver.example:25".into(),
        delivered: 12,
        delivered_through: Some(through),
        last_success: Some(custos_archive::Timestamp::now()),
        ..Default::default()
    });
    let d = send(&app, Method::GET, "/", Some(&cookie), None).await;
    assert!(d.body.contains(">delivering<"), "{}", d.body);
    assert!(!d.body.contains(">failing<"));
    assert!(
        d.body.contains(&format!("{through} (1 min behind)")),
        "{}",
        d.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regulator_export_downloads_a_verifiable_archive_and_is_audited() {
    let w = world().await;
    wait_indexed(&w.fx.archive, "card", 1).await;
    // The export reaches up to the newest signed checkpoint, which the writer signs
    // within about a second of going idle.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (cookie, _) = sign_in(&w.app, "aud").await;
    let req = Request::builder()
        .uri("/export/regulator?q=card")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let res = w.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/x-tar");
    let bytes = axum::body::to_bytes(res.into_body(), 256 << 20)
        .await
        .unwrap();

    // Unpacked, it verifies offline with nothing but the public key.
    let out = tempfile::tempdir().unwrap();
    tar::Archive::new(&bytes[..]).unpack(out.path()).unwrap();
    let public =
        custos_archive::load_verifying_key(&w.fx.dir.path().join("secrets/signing.key.pub"))
            .unwrap();
    let report = custos_archive::verify_export(&out.path().join("custos-export"), &public);
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(
        report.records >= 1 && report.proven == report.records,
        "{report:?}"
    );

    // And it is on the record: who exported what, how many.
    let (admin, _) = sign_in(&w.app, "ada").await;
    let audit = send(&w.app, Method::GET, "/audit", Some(&admin), None).await;
    assert!(audit.body.contains("regulator"), "export audited");
    assert!(audit.body.contains("aud"), "by whom");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_show_as_one_logical_message_with_each_legs_verdict() {
    let w = world().await;
    // The sender's copy, allowed on its leg; the recipient's copy, blocked on hers.
    let sent = append(
        &w.fx.archive,
        Msg::chat(
            "alice@example.test/laptop",
            "carol@example.test",
            "twofold quarterly memo",
        )
        .copy_of("m-two", "alice@example.test/laptop"),
    )
    .await;
    let mut received = Msg::chat(
        "alice@example.test/laptop",
        "carol@example.test",
        "twofold quarterly memo",
    )
    .copy_of("m-two", "carol@example.test/desk")
    .flagged(Action::Block, &["inbound-only"], "high");
    received.direction = custos_archive::Direction::Inbound;
    let received = append(&w.fx.archive, received).await;
    // A redacted original, and the recipient's copy that carries the delivered text.
    let mut red = Msg::chat(
        "alice@example.test/laptop",
        "carol@example.test",
        "falcon plan twofold",
    )
    .copy_of("m-red", "alice@example.test/laptop")
    .flagged(Action::Redact, &["codename"], "low");
    red.delivered = Some("██████ plan twofold");
    red.capture.delivered_identity = Some("m-red-delivered".into());
    let red = append(&w.fx.archive, red).await;
    let mut red_copy = Msg::chat(
        "alice@example.test/laptop",
        "carol@example.test",
        "██████ plan twofold",
    )
    .copy_of("m-red-delivered", "carol@example.test/desk");
    red_copy.direction = custos_archive::Direction::Inbound;
    let red_copy = append(&w.fx.archive, red_copy).await;
    // Monitor mode: allowed, but would have been blocked.
    let mut trial = Msg::chat(
        "alice@example.test/laptop",
        "carol@example.test",
        "twofold pilot",
    )
    .copy_of("m-trial", "alice@example.test/laptop");
    trial.rules = &["trial-block"];
    trial.would_action = Some(Action::Block);
    let trial = append(&w.fx.archive, trial).await;
    // A correction of a message, with hostile text in another-language body.
    let mut orig = Msg::chat(
        "alice@example.test/laptop",
        "carol@example.test",
        "twofold first wording",
    )
    .copy_of("m-orig", "alice@example.test/laptop");
    orig.id = Some("orig-1");
    let orig = append(&w.fx.archive, orig).await;
    let mut fix = Msg::chat(
        "alice@example.test/laptop",
        "carol@example.test",
        "twofold second wording",
    )
    .copy_of("m-fix", "alice@example.test/laptop");
    fix.capture.edit = Some(custos_archive::Edit {
        kind: custos_archive::EditKind::Correction,
        target: "orig-1".into(),
    });
    fix.capture.extra = vec![custos_archive::Text {
        kind: "body".into(),
        lang: Some("de".into()),
        text: "<script>alert('x')</script><img src=x onerror=alert(1)>".into(),
    }];
    let fix = append(&w.fx.archive, fix).await;
    wait_indexed(&w.fx.archive, "twofold", 7).await;
    let (cookie, _) = sign_in(&w.app, "oscar").await;

    // Search: one row per logical message, with its copies counted.
    let page = send(
        &w.app,
        Method::GET,
        "/search?q=twofold",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    let rows = page.body.matches("<td class=\"time\">").count();
    assert_eq!(rows, 5, "{}", page.body);
    assert_eq!(page.body.matches("2 copies").count(), 2, "{}", page.body);
    assert!(page.body.contains("would block"), "{}", page.body);

    // The conversation: each message once, its copies with their leg's verdict; the
    // correction linked to what it changes; hostile text inert.
    let conv = send(
        &w.app,
        Method::GET,
        &format!("/conversation/{received}"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(conv.status, StatusCode::OK);
    assert!(conv.body.contains(&format!("id=\"m{sent}\"")));
    assert!(
        !conv.body.contains(&format!("id=\"m{received}\"")),
        "a copy is not a message of its own"
    );
    assert!(
        conv.body.contains("carol@example.test/desk") && conv.body.contains("server-to-client")
    );
    assert!(
        conv.body.contains(&format!("id=\"m{orig}\""))
            && conv.body.contains(&format!("id=\"m{fix}\""))
    );
    assert!(conv.body.contains("correction") && conv.body.contains("orig-1"));
    assert!(
        conv.body.contains("Changed later"),
        "edit history on the original"
    );
    assert!(
        !conv.body.contains("<script>alert"),
        "hostile text rendered live"
    );
    assert!(!conv.body.contains("<img src=x"));
    assert!(conv.body.contains("&lt;script&gt;"));

    // The queue: one item per logical message, keyed by its first copy.
    let queue = send(
        &w.app,
        Method::GET,
        "/queue?status=all",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        queue.body.contains(&format!("id=\"q{sent}\"")),
        "{}",
        queue.body
    );
    assert!(!queue.body.contains(&format!("id=\"q{received}\"")));
    assert!(queue.body.contains(&format!("id=\"q{red}\"")));
    assert!(!queue.body.contains(&format!("id=\"q{red_copy}\"")));
    assert!(
        queue.body.contains(&format!("id=\"q{trial}\"")),
        "a would-have item"
    );
}
