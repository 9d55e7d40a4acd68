//! Fixtures shared by the router and browser tests: a real archive in a temp
//! dir (keys outside it), accounts, messages appended with `Archive::append`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use custos_archive::{
    Action, Archive, ArchiveConfig, Direction, MasterKey, MessageRecord, NewRecord, Outcome,
    SessionId,
};
use custos_web_ui::{add_user, Role, WebConfig};
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub archive: Archive,
    pub cfg: WebConfig,
}

pub fn archive_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("archive")
}

pub fn open_archive(dir: &tempfile::TempDir) -> Archive {
    let keys = dir.path().join("secrets");
    let master = keys.join("master.key");
    let signing = keys.join("signing.key");
    if !master.exists() {
        std::fs::create_dir_all(&keys).unwrap();
        custos_archive::keys_init(&master, &signing).unwrap();
    }
    let cfg = ArchiveConfig::new(
        archive_dir(dir),
        MasterKey::from_file(&master).unwrap(),
        custos_archive::load_signing_key(&signing).unwrap(),
    );
    Archive::open(cfg).unwrap()
}

/// An archive with accounts `ada` (admin), `olivia` (officer, linked to
/// olivia@example.test), `oscar` (officer) and `aud` (auditor).
pub fn fixture(sample_rate: f64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let archive = open_archive(&dir);
    let users = dir.path().join("users.json");
    add_user(&users, "ada", Role::Admin, PASSWORD, &[]).unwrap();
    add_user(
        &users,
        "olivia",
        Role::Officer,
        PASSWORD,
        &["olivia@example.test".into()],
    )
    .unwrap();
    add_user(&users, "oscar", Role::Officer, PASSWORD, &[]).unwrap();
    add_user(&users, "aud", Role::Auditor, PASSWORD, &[]).unwrap();
    let mut cfg = WebConfig::new("127.0.0.1:0".parse().unwrap(), users);
    let keys = dir.path().join("secrets");
    cfg.export = Some(custos_web_ui::ExportKeys {
        archive_dir: archive_dir(&dir),
        master_key: MasterKey::from_file(&keys.join("master.key")).unwrap(),
        signing_key: custos_archive::load_signing_key(&keys.join("signing.key")).unwrap(),
    });
    cfg.sample_rate = sample_rate;
    cfg.session_ttl = Duration::from_secs(600);
    Fixture { dir, archive, cfg }
}

pub struct Msg<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub body: &'a str,
    pub action: Action,
    pub rules: &'a [&'a str],
    pub delivered: Option<&'a str>,
    pub e2ee: Option<&'a str>,
    pub severity: Option<&'a str>,
    pub direction: Direction,
    pub stanza_type: &'a str,
    pub id: Option<&'a str>,
    pub would_action: Option<Action>,
    pub capture: custos_archive::Capture,
}

impl<'a> Msg<'a> {
    pub fn chat(from: &'a str, to: &'a str, body: &'a str) -> Msg<'a> {
        Msg {
            from,
            to,
            body,
            action: Action::Allow,
            rules: &[],
            delivered: None,
            e2ee: None,
            severity: None,
            direction: Direction::Outbound,
            stanza_type: "chat",
            id: None,
            would_action: None,
            capture: Default::default(),
        }
    }
    /// A copy of logical message `identity` seen on `account`'s stream.
    pub fn copy_of(mut self, identity: &str, account: &str) -> Msg<'a> {
        self.capture.identity = identity.into();
        self.capture.account = account.into();
        self
    }
    pub fn flagged(mut self, action: Action, rules: &'a [&'a str], severity: &'a str) -> Msg<'a> {
        self.action = action;
        self.rules = rules;
        self.severity = Some(severity);
        self
    }
}

pub async fn append(archive: &Archive, m: Msg<'_>) -> u64 {
    let stanza = format!(
        "<message from='{}' to='{}' type='{}'><body/></message>",
        m.from, m.to, m.stanza_type
    )
    .into_bytes();
    let rec = NewRecord::Message(MessageRecord {
        direction: m.direction,
        session: SessionId("test".into()),
        stanza_type: m.stanza_type.into(),
        id: m.id.map(String::from),
        stanza,
        outcome: Outcome {
            action: m.action,
            rules: m.rules.iter().map(|r| r.to_string()).collect(),
            delivered_body: m.delivered.map(String::from),
            severity: m.severity.map(String::from),
            e2ee: m.e2ee.map(String::from),
            would_action: m.would_action,
        },
        capture: m.capture,
        ..MessageRecord::chat(m.from, m.to, m.body)
    });
    archive.append(rec).await.unwrap().seq.0
}

/// Waits until the index answers `query` with at least `n` hits (it commits every 500 ms).
pub async fn wait_indexed(archive: &Archive, query: &str, n: usize) {
    for _ in 0..100 {
        if archive
            .search(query, n)
            .map(|h| h.len() >= n)
            .unwrap_or(false)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{query:?} not indexed within 5 s");
}

/// A response as the router tests read it.
pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

/// Sends one request through the router, with a session cookie and a form if given.
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    let req = match form {
        Some(f) => b
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(f.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    };
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .unwrap();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field")
        + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

pub fn set_cookie(r: &Resp, name: &str) -> Option<String> {
    r.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(String::from)
}

pub fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_string()
}

/// Signs in through the real form; returns (cookie header, csrf token).
pub async fn sign_in(app: &Router, user: &str) -> (String, String) {
    let form = send(app, Method::GET, "/login", None, None).await;
    let login_cookie = set_cookie(&form, "custos_login").unwrap();
    let login_cookie = login_cookie.split(';').next().unwrap().to_string();
    let token = csrf_of(&form.body);
    let r = send(
        app,
        Method::POST,
        "/login",
        Some(&login_cookie),
        Some(&format!(
            "user={user}&password={}&csrf={token}",
            enc(PASSWORD)
        )),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "sign-in of {user}: {}",
        r.body
    );
    let session = set_cookie(&r, "custos_session").unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let cookie = session.split(';').next().unwrap().to_string();
    let home = send(app, Method::GET, "/", Some(&cookie), None).await;
    assert_eq!(home.status, StatusCode::OK);
    (cookie.clone(), csrf_of(&home.body))
}
