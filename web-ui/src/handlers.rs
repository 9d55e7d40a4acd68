//! Route handlers. The permission each route carries in [`crate::app::ROUTES`] is
//! checked before its handler runs; a handler checks (for POST) the CSRF token, then
//! writes its audit record before doing or showing anything.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use custos_archive::query::Lexicons;
use custos_archive::{Action, EditKind, MessageHit, NewRecord, Record, Timestamp};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use crate::app::{lock, read, App, Authed, ClientAddr};
use crate::auth::{self, LOGIN_COOKIE, SESSION_COOKIE};
use crate::charts::{bar_chart, Bar};
use crate::error::AppError;
use crate::highlight;
use crate::pages::{
    self, copies_badge, layout, marked, pager, rules, short_time, status_badge, verdict, would,
    Nav, Page,
};
use crate::roles::{allows, Perm};
use crate::store::{self, audit_action, MsgRef, ReviewChange, ReviewStatus};
use crate::users::{self, Role};

const CSS: &str = include_str!("../static/app.css");
const JS: &str = include_str!("../static/app.js");

pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

pub async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

// ---------------------------------------------------------------- sign-in

pub async fn login_form(State(app): State<Arc<App>>) -> Result<Response, AppError> {
    let token = auth::random_token().map_err(|e| AppError::Internal(e.to_string()))?;
    let cookie = auth::set_cookie(LOGIN_COOKIE, &token, app.cfg.secure_cookies, Some(3600));
    Ok(([(header::SET_COOKIE, cookie)], pages::login(&token, None)).into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    csrf: String,
}

pub async fn login(
    State(app): State<Arc<App>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, AppError> {
    // Double-submit: the form's token must equal the cookie set with the form,
    // which another site can neither read nor set (SameSite=Strict, HttpOnly).
    let expected = auth::cookie(&headers, LOGIN_COOKIE).ok_or(AppError::Csrf)?;
    if !auth::same_token(expected, &f.csrf) {
        return Err(AppError::Csrf);
    }
    let mut keys = vec![format!("user:{}", f.user)];
    keys.extend(addr.map(|a| format!("ip:{}", a.ip())));
    if let Some(wait) = lock(&app.throttle).locked(&keys, Instant::now()) {
        return Err(AppError::Throttled(wait.as_secs().max(1)));
    }
    // Re-read so accounts added by `custos user add` while serving work at once.
    let path = app.cfg.users_file.clone();
    let (name, password) = (f.user.clone(), f.password);
    let found = tokio::task::spawn_blocking(move || {
        let all = users::load_users(&path)?;
        let user = all.into_iter().find(|u| u.name == name);
        let ok = users::verify_password(user.as_ref(), &password);
        Ok::<_, users::UserError>(user.filter(|_| ok))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let Some(user) = found else {
        lock(&app.throttle).fail(&keys, Instant::now());
        app.audit(
            &f.user,
            audit_action::SIGN_IN_FAILED,
            json!({ "client": addr.map(|a| a.ip().to_string()) }),
        )
        .await?;
        return Ok((
            StatusCode::UNAUTHORIZED,
            pages::login(&f.csrf, Some("Unknown account or wrong password.")),
        )
            .into_response());
    };
    lock(&app.throttle).succeed(&keys);
    app.audit(
        &user.name,
        audit_action::SIGN_IN,
        json!({ "role": user.role.as_str(), "client": addr.map(|a| a.ip().to_string()) }),
    )
    .await?;
    let id = lock(&app.sessions)
        .create(&user.name, user.role, user.jids)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let session = auth::set_cookie(SESSION_COOKIE, &id, app.cfg.secure_cookies, None);
    let clear = auth::set_cookie(LOGIN_COOKIE, "", app.cfg.secure_cookies, Some(0));
    let mut res = Redirect::to("/").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        session
            .parse()
            .map_err(|_| AppError::Internal("cookie".into()))?,
    );
    res.headers_mut().append(
        header::SET_COOKIE,
        clear
            .parse()
            .map_err(|_| AppError::Internal("cookie".into()))?,
    );
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<CsrfForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    app.audit(&a.session.user, audit_action::SIGN_OUT, json!({}))
        .await?;
    lock(&app.sessions).end(&a.id);
    let clear = auth::set_cookie(SESSION_COOKIE, "", app.cfg.secure_cookies, Some(0));
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

// ---------------------------------------------------------------- search

/// The search form: free query text plus filters that become query clauses.
#[derive(Deserialize, Default, Clone)]
pub struct SearchForm {
    #[serde(default)]
    q: String,
    #[serde(default)]
    participant: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    flagged: Option<String>,
    #[serde(default)]
    page: usize,
}

/// A filter value as one query token: whitespace and quotes would let a
/// value start a new clause, so they are dropped.
fn token(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_whitespace() && *c != '"')
        .collect()
}

impl SearchForm {
    fn is_empty(&self) -> bool {
        [
            &self.q,
            &self.participant,
            &self.direction,
            &self.since,
            &self.until,
            &self.rule,
            &self.action,
        ]
        .iter()
        .all(|s| s.trim().is_empty())
            && self.flagged.is_none()
    }

    /// The archive query the form stands for, its lexicons written out.
    fn query(&self, lexicons: &Lexicons) -> Result<String, AppError> {
        let typed = lexicons
            .expand(self.q.trim())
            .map_err(|e| AppError::BadRequest(format!("bad query: {e}")))?;
        // Checked alone first: a whole query followed by more terms ANDs them with all
        // of it, but a broken one ("a OR") could be completed by a filter into another
        // meaning.
        custos_archive::query::parse(&typed)
            .map_err(|e| AppError::BadRequest(format!("bad query: {e}")))?;
        let mut q = vec![typed];
        let mut add = |field: &str, v: &str| {
            let v = token(v);
            if !v.is_empty() {
                q.push(format!("{field}:{v}"));
            }
        };
        add("with", &self.participant);
        add("direction", &self.direction);
        add("after", &self.since);
        add("rule", &self.rule);
        add("action", &self.action);
        if !self.until.trim().is_empty() {
            // The form's end date is inclusive; `before:` is exclusive.
            let t = Timestamp::parse(self.until.trim()).map_err(|_| {
                AppError::BadRequest(format!("bad end date {:?}: use YYYY-MM-DD", self.until))
            })?;
            q.push(format!(
                "before:{}",
                Timestamp(t.0.saturating_add(86_400_000))
            ));
        }
        if self.flagged.is_some() {
            q.push("-action:allow".into());
        }
        Ok(q.into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "))
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("q", &self.q),
            ("participant", &self.participant),
            ("direction", &self.direction),
            ("since", &self.since),
            ("until", &self.until),
            ("rule", &self.rule),
            ("action", &self.action),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        if self.flagged.is_some() {
            p.push(("flagged".into(), "1".into()));
        }
        p
    }
}

const PAGE: usize = 25;
/// The deepest page a search may ask for: the archive returns the newest N
/// hits, so deep pages cost N record reads.
const MAX_PAGE: usize = 200;

async fn run_search(
    app: &Arc<App>,
    query: String,
    limit: usize,
) -> Result<custos_archive::Searched, AppError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || search_all_nodes(&app, &query, limit))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
}

/// This node's chain and, with several nodes, every other chain in the bucket: the
/// newest `limit` hits of all, in time order, each naming its node.
fn search_all_nodes(
    app: &App,
    query: &str,
    limit: usize,
) -> Result<custos_archive::Searched, AppError> {
    let mut searched = app.archive.search_covered(query, limit)?;
    let peers = crate::app::read(&app.cfg.peers).clone();
    if peers.is_empty() {
        return Ok(searched);
    }
    for h in &mut searched.hits {
        h.node.clone_from(&app.cfg.node);
    }
    let reader = app.archive.reader();
    for p in peers {
        let name = p.node.as_deref().unwrap_or("(unnamed)").to_string();
        let found = reader
            .open_other(&p.dir)
            .map_err(custos_archive::SearchError::from)
            .and_then(|r| r.search_covered(query, limit));
        match found {
            Ok(s) => {
                searched.hits.extend(s.hits.into_iter().map(|mut h| {
                    h.node.clone_from(&p.node);
                    h
                }));
                if searched.uncovered.is_none() {
                    searched.uncovered = s.uncovered.map(|mut u| {
                        u.why = format!("node {name}: {}", u.why);
                        u
                    });
                }
            }
            // A node's chain that cannot be read is said, not hidden.
            Err(e) => {
                searched.uncovered = Some(custos_archive::Uncovered {
                    from: 1,
                    to: 0,
                    why: format!("node {name} could not be searched: {e}"),
                })
            }
        }
    }
    custos_archive::merge_newest(&mut searched.hits, limit);
    Ok(searched)
}

pub async fn search(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<SearchForm>,
) -> Result<Page, AppError> {
    let page = f.page.min(MAX_PAGE);
    let mut results = None;
    let mut error = None;
    let mut uncovered = None;
    if !f.is_empty() {
        match f.query(&app.cfg.lexicons) {
            Ok(query) => {
                app.audit(
                    &a.session.user,
                    audit_action::SEARCH,
                    json!({ "query": query, "page": page }),
                )
                .await?;
                // Copies of one message are separate records: fetch enough of them to
                // fill the page with logical messages.
                let want = ((page + 1) * PAGE + 1) * COPIES_PER_MESSAGE;
                match run_search(&app, query, want).await {
                    Ok(searched) => {
                        uncovered = searched.uncovered;
                        let mut hits = searched.hits;
                        hits.reverse();
                        let messages = custos_archive::group(hits);
                        let has_next = messages.len() > (page + 1) * PAGE;
                        let shown: Vec<MessageHit> =
                            messages.into_iter().skip(page * PAGE).take(PAGE).collect();
                        results = Some((shown, has_next));
                    }
                    Err(AppError::BadRequest(m)) => error = Some(m),
                    Err(e) => return Err(e),
                }
            }
            // A search that could not run is audited too, as typed.
            Err(AppError::BadRequest(m)) => {
                app.audit(
                    &a.session.user,
                    audit_action::SEARCH,
                    json!({ "query": f.q, "page": page, "error": m }),
                )
                .await?;
                error = Some(m);
            }
            Err(e) => return Err(e),
        }
    }
    // Where each hit opens: its conversation, on whichever node's chain it is, once
    // that chain is followed here.
    let links: Vec<Option<String>> = {
        let store = read(&app.store);
        results
            .iter()
            .flat_map(|(hits, _)| hits.iter())
            .map(|mh| {
                let h = &mh.first;
                let name = if h.node == app.cfg.node {
                    h.seq.0.to_string()
                } else {
                    format!(
                        "{}:{}",
                        h.node.as_deref().unwrap_or(store::UNNAMED),
                        h.seq.0
                    )
                };
                let r = store.parse_ref(&name)?;
                // This node's records are read at once; another node's once followed.
                (r.chain == 0 || store.message(r).is_some())
                    .then(|| format!("/conversation/{name}#{}", store.anchor(r)))
            })
            .collect()
    };
    let terms = highlight::Terms::of(
        &app.cfg
            .lexicons
            .expand(&f.q)
            .unwrap_or_else(|_| f.q.clone()),
    );
    let sel = |v: &str, cur: &str| v == cur;
    Ok(layout(
        "Search",
        Some(&a.session),
        Nav::Search,
        html! {
            h1 { "Search" }
            form.card.search method="get" action="/search" {
                div.row {
                    input.grow type="search" name="q" id="q" value=(f.q) placeholder="Words, \"a phrase\", from:alice@example.test, -word …";
                    button.primary type="submit" id="search-button" { "Search" }
                }
                div.row.filters {
                    label { "Participant" input name="participant" value=(f.participant) placeholder="user@example.test"; }
                    label { "Direction" select name="direction" {
                        option value="" { "Any" }
                        option value="outbound" selected[sel("outbound", &f.direction)] { "Outbound" }
                        option value="inbound" selected[sel("inbound", &f.direction)] { "Inbound" }
                    } }
                    label { "From" input type="date" name="since" value=(f.since); }
                    label { "To" input type="date" name="until" value=(f.until); }
                    label { "Rule" input name="rule" value=(f.rule) placeholder="rule id"; }
                    label { "Action" select name="action" {
                        option value="" { "Any" }
                        @for act in ["allow", "flag", "redact", "block"] { option value=(act) selected[sel(act, &f.action)] { (act) } }
                    } }
                    label.check { input type="checkbox" name="flagged" value="1" checked[f.flagged.is_some()]; "Flagged only" }
                }
                p.help { "Fields: " code { "from: to: with: account: direction: type: action: rule: msg: via: after: before:" } "; prefix " code { "-" } " to exclude." }
            }
            @if let Some(e) = &error { p.error role="alert" { (e) } }
            @if let Some(u) = &uncovered { p.warning.uncovered role="status" { "Incomplete: " (u) "." } }
            @if let Some((hits, has_next)) = &results {
                @if hits.is_empty() { p.empty { "No messages match." } } @else {
                    table.results {
                        thead { tr { th { "Time (UTC)" } th { "From" } th { "To" } th { "Message" } th { "Verdict" } } }
                        tbody {
                            @for (mh, link) in hits.iter().zip(&links) {
                                @let h = &mh.first;
                                @let strictest = mh.copies.iter().map(|c| c.action).max_by_key(|a| store::rank(*a)).unwrap_or(h.action);
                                @let would_act = mh.copies.iter().filter_map(|c| c.would_action).max_by_key(|a| store::rank(*a));
                                @let all_rules: Vec<String> = mh.copies.iter().flat_map(|c| c.rules.iter().cloned()).fold(Vec::new(), |mut v, r| { if !v.contains(&r) { v.push(r); } v });
                                @let body = h.body.as_deref().unwrap_or("");
                                @let m = highlight::marks(body, &terms);
                                @let (ex, inside, before, after) = highlight::excerpt(body, &m);
                                tr {
                                    @if let Some(link) = link {
                                        td.time { a href=(link) { (short_time(h.time)) } }
                                    } @else {
                                        td.time { (short_time(h.time)) }
                                    }
                                    td.jid { (h.from) }
                                    td.jid { (h.to) }
                                    @if let Some(link) = link {
                                        td.body { a.open href=(link) { @if before { "… " } (marked(ex, &inside)) @if after { " …" } } }
                                    } @else {
                                        td.body { @if before { "… " } (marked(ex, &inside)) @if after { " …" } }
                                    }
                                    td { (verdict(strictest)) " " (would(would_act)) " " (rules(&all_rules)) " " (copies_badge(mh.copies.len())) (node_badges(mh, &app.cfg.node)) }
                                }
                            }
                        }
                    }
                    (pager("/search", &f.pairs(), page, *has_next))
                    p.muted {
                        a href=(format!("/export?{}", serde_urlencoded::to_string(f.pairs()).unwrap_or_default())) { "Export these results (JSON lines)" }
                        " · "
                        a href=(format!("/export/regulator?{}", serde_urlencoded::to_string(f.pairs()).unwrap_or_default())) { "Verifiable export (Parquet, transcripts, signed manifest)" }
                    }
                }
            }
        },
    ))
}

/// With several nodes, which nodes carried a message's copies (nothing with one node).
fn node_badges(mh: &MessageHit, own: &Option<String>) -> maud::Markup {
    let mut nodes: Vec<&str> = Vec::new();
    for c in &mh.copies {
        if let Some(n) = c.node.as_deref() {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
    }
    html! {
        @for n in nodes {
            " " span.badge.node title=(if Some(n) == own.as_deref() { "recorded by this node" } else { "recorded by another node" }) { "node " (n) }
        }
    }
}

/// Records fetched per logical message wanted on a search page (a message seen by both
/// parties, their other clients and a replay has a handful of copies).
const COPIES_PER_MESSAGE: usize = 8;

/// Up to this many hits per export download.
const EXPORT_LIMIT: usize = 10_000;

pub async fn export(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<SearchForm>,
) -> Result<Response, AppError> {
    let query = f.query(&app.cfg.lexicons)?;
    let searched = run_search(&app, query.clone(), EXPORT_LIMIT).await?;
    let hits = searched.hits;
    app.audit(
        &a.session.user,
        audit_action::EXPORT,
        json!({ "query": query, "count": hits.len(), "uncovered": searched.uncovered }),
    )
    .await?;
    let mut out = String::new();
    for h in &hits {
        out.push_str(&serde_json::to_string(h).map_err(|e| AppError::Internal(e.to_string()))?);
        out.push('\n');
    }
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"custos-search.jsonl\"",
            ),
        ],
        out,
    )
        .into_response();
    // An export that could not see every record says so where a script looks.
    if let Some(u) = &searched.uncovered {
        if let Ok(v) = header::HeaderValue::from_str(&format!("{}-{}", u.from, u.to)) {
            resp.headers_mut().insert("x-custos-not-searched", v);
        }
    }
    Ok(resp)
}

/// A regulator export of the current search (docs/export-format.md), as one tar file:
/// Parquet rows, HTML transcripts and the signed manifest with every record's proof, so the
/// receiver can check it offline with `custos verify-export` and the public key.
pub async fn regulator_export(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<SearchForm>,
) -> Result<Response, AppError> {
    let Some(keys) = app.cfg.export.clone() else {
        return Err(AppError::NotFound);
    };
    let query = f.query(&app.cfg.lexicons)?;
    let request = custos_archive::ExportRequest {
        query: (!query.trim().is_empty()).then(|| query.clone()),
        since: None,
        until: None,
    };
    // With several nodes: one part per chain and the signed list of parts, as
    // `custos export` writes it.
    let peers = read(&app.cfg.peers).clone();
    let own_node = app.cfg.node.clone();
    let (tar, recorded) = tokio::task::spawn_blocking(move || -> Result<_, AppError> {
        let tmp = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
        let out = tmp.path().join("export");
        let recorded = if peers.is_empty() {
            let summary = custos_archive::export(
                &keys.archive_dir,
                &keys.master_key,
                &keys.signing_key,
                &out,
                &request,
                |_, _| {},
            )
            .map_err(|e| AppError::Internal(format!("export failed: {e}")))?;
            json!({
                "count": summary.records,
                "through_seq": summary.through_seq,
                "manifest_sha256": summary.manifest_sha256,
            })
        } else {
            use custos_archive::export::nodes::{export_chains, ChainSource};
            let mut sources = vec![ChainSource {
                name: own_node.clone().unwrap_or_else(|| store::UNNAMED.into()),
                node: own_node,
                dir: keys.archive_dir.clone(),
            }];
            sources.extend(peers.into_iter().map(|p| {
                ChainSource {
                    name: p
                        .dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| store::UNNAMED.into()),
                    node: p.node,
                    dir: p.dir,
                }
            }));
            let parts = export_chains(
                &sources,
                &keys.master_key,
                &keys.signing_key,
                &out,
                &request,
                |_, _, _| {},
                |_, _| Ok(()),
            )
            .map_err(|e| AppError::Internal(format!("export failed: {e}")))?;
            let count: u64 = parts.iter().map(|(p, _)| p.records).sum();
            let nodes: Vec<serde_json::Value> = parts
                .iter()
                .map(|(p, s)| {
                    json!({
                        "node": p.node,
                        "count": s.records,
                        "through_seq": s.through_seq,
                        "manifest_sha256": s.manifest_sha256,
                    })
                })
                .collect();
            json!({ "count": count, "nodes": nodes })
        };
        // The tar goes to an unnamed temporary file and is streamed from there, so an
        // export of the whole archive costs disk, not memory.
        let file = tempfile::tempfile().map_err(|e| AppError::Internal(e.to_string()))?;
        let mut tar = tar::Builder::new(file);
        tar.append_dir_all("custos-export", &out)
            .map_err(|e| AppError::Internal(format!("packing the export: {e}")))?;
        let mut file = tar
            .into_inner()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        use std::io::{Seek, SeekFrom};
        let len = file
            .seek(SeekFrom::End(0))
            .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(((file, len), recorded))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    // Handing out records is itself recorded; no record, no download.
    app.audit(&a.session.user, audit_action::EXPORT, {
        let mut detail = json!({ "query": query, "kind": "regulator" });
        if let (Some(d), serde_json::Value::Object(r)) = (detail.as_object_mut(), recorded) {
            d.extend(r);
        }
        detail
    })
    .await?;
    let (file, len) = tar;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"custos-export.tar\"".to_owned(),
            ),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

// ---------------------------------------------------------------- conversation

/// Messages shown on each side of the hit.
const CONTEXT: usize = 25;

pub async fn conversation(
    State(app): State<Arc<App>>,
    a: Authed,
    Path(at): Path<String>,
) -> Result<Page, AppError> {
    // The context may include messages sent since the last tail scan.
    app.catch_up().await?;
    let seq = read(&app.store).parse_ref(&at).ok_or(AppError::NotFound)?;
    let (around, meta) = {
        let store = read(&app.store);
        let around: Vec<(MsgRef, u64, u64)> = store
            .conversation_around(seq, CONTEXT, CONTEXT)
            .iter()
            .map(|m| (m.key(), m.segment, m.offset))
            .collect();
        let meta: BTreeMap<MsgRef, Shown> = around
            .iter()
            .filter_map(|&(s, _, _)| {
                let m = store.message(s)?;
                let speaker = Speaker::of(store.copies(s));
                let copies = store
                    .copies(s)
                    .iter()
                    .map(|c| CopyRow {
                        key: c.key(),
                        name: store.ref_name(c.key()),
                        leg: c.leg.as_str(),
                        via: c.via.as_str(),
                        account: c.account.clone(),
                        action: c.action,
                        would_action: c.would_action,
                        rules: c.rules.clone(),
                    })
                    .collect();
                Some((
                    s,
                    Shown {
                        anchor: store.anchor(s),
                        name: store.ref_name(s),
                        node: (s.chain != 0)
                            .then(|| store.node_of(s.chain).unwrap_or(store::UNNAMED).to_string()),
                        severity: m.severity.clone(),
                        e2ee: m.e2ee.clone(),
                        verdict: store.verdict_of(s),
                        copies,
                        msg_id: m.msg_id.clone(),
                        edit: m.edit.clone(),
                        speaker,
                    },
                ))
            })
            .collect();
        (around, meta)
    };
    // Which shown message a correction or retraction changes, and the reverse.
    let by_msg_id: BTreeMap<&str, &str> = meta
        .values()
        .filter_map(|m| m.msg_id.as_deref().map(|id| (id, m.anchor.as_str())))
        .collect();
    let mut edited_by: BTreeMap<MsgRef, Vec<(&str, EditKind)>> = BTreeMap::new();
    for m in meta.values() {
        if let Some((kind, target)) = &m.edit {
            if let Some(t) = meta
                .iter()
                .find(|(_, o)| o.msg_id.as_deref() == Some(target.as_str()))
            {
                edited_by
                    .entry(*t.0)
                    .or_default()
                    .push((m.anchor.as_str(), *kind));
            }
        }
    }
    if around.is_empty() {
        return Err(AppError::NotFound);
    }
    let viewed = match meta
        .get(&read(&app.store).group_of(seq))
        .and_then(|m| m.node.clone())
    {
        None => json!({ "seq": seq.seq }),
        Some(node) => json!({ "seq": seq.seq, "node": node }),
    };
    app.audit(&a.session.user, audit_action::VIEW, viewed)
        .await?;
    let app2 = app.clone();
    let records: Vec<(MsgRef, Record)> = tokio::task::spawn_blocking(move || {
        around
            .iter()
            .map(|&(r, seg, off)| {
                let mut record = record_of(&app2, r, seg, off)?;
                // The page lists shared files; their bytes are for the download route, not
                // for holding a page's worth of them in memory.
                if let NewRecord::Message(m) = &mut record.content {
                    for f in &mut m.capture.files {
                        f.content = None;
                    }
                }
                Ok((r, record))
            })
            .collect::<Result<Vec<_>, AppError>>()
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    // Which active legal holds cover each shown record.
    let held: BTreeMap<MsgRef, Vec<String>> = {
        let matchers = read(&app.store).holds().matchers();
        records
            .iter()
            .map(|(k, r)| {
                let names = matchers
                    .iter()
                    .filter(|(_, m)| m.covers(r))
                    .map(|(n, _)| n.clone())
                    .collect();
                (*k, names)
            })
            .collect()
    };
    let review = read(&app.store).review(seq).cloned();
    let hit_meta = read(&app.store).message(seq).cloned();
    let own = hit_meta
        .as_ref()
        .is_some_and(|m| m.involves(&a.session.jids));
    let title = hit_meta
        .as_ref()
        .map(|m| m.conversation.clone())
        .unwrap_or_default();
    let room = title.strip_prefix("room ").map(str::to_owned);
    Ok(layout(
        "Conversation",
        Some(&a.session),
        Nav::Search,
        html! {
            @if let Some(room) = &room {
                h1 { "Room transcript" }
                p.muted.conv-key { "Group chat in " span.jid { (room) } " · each message once, however many copies were recorded" }
            } @else {
                h1 { "Conversation" }
                p.muted.conv-key { (title.strip_prefix("chat ").unwrap_or(&title).replace(' ', " · ")) }
            }
            div.conversation {
                @for (key, r) in &records {
                    @if let (NewRecord::Message(m), Some(shown)) = (&r.content, meta.get(key)) {
                        @let is_hit = shown.copies.iter().any(|c| c.key == seq);
                        article id=(shown.anchor) class=(format!("msg {} {}", m.direction.as_str(), if is_hit { "hit" } else { "" })) {
                            header {
                                span.time { (short_time(r.time)) }
                                @if let Some(sp) = &shown.speaker {
                                    span.speaker {
                                        @match (&sp.nick, &sp.real) {
                                            (None, None) => { span.muted { "the room" } }
                                            (nick, real) => {
                                                @if let Some(nick) = nick { span.nick { (nick) } " " }
                                                @match real {
                                                    Some(real) => { "(" span.jid { (real) } ")" }
                                                    None => { span.muted.small { "(real JID not revealed by the room)" } }
                                                }
                                            }
                                        }
                                    }
                                } @else {
                                    span.jid { (m.from) } " → " span.jid { (m.to) }
                                }
                                span.spacer {}
                                @if let Some(s) = &shown.severity { span.severity { (s) } }
                                (verdict(shown.verdict.action)) " " (would(shown.verdict.would_action)) " " (rules(&shown.verdict.rules)) " " (copies_badge(shown.verdict.copies))
                                @if is_hit { span.badge.hit-badge { "search hit" } }
                                @if let Some(n) = &shown.node { span.badge.node title="recorded by another node" { "node " (n) } }
                                span.badge.retention title="retention class" { "keep: " (custos_archive::retention::class_name(&m.capture.retention_class)) }
                                @for matter in held.get(key).into_iter().flatten() {
                                    span.badge.hold title="under legal hold" { "hold: " (matter) }
                                }
                            }
                            @if let Some(claimed) = &m.capture.claimed_from {
                                p.error.forged { "Refused: the sender's client wrote the sender as " span.jid { (claimed) } "; the account it had proven is " span.jid { (m.from) } "." }
                            }
                            @if let Some((kind, target)) = &shown.edit {
                                p.edit {
                                    span.badge.edit { (kind.as_str()) }
                                    " of message " code { (target) }
                                    @if let Some(t) = by_msg_id.get(target.as_str()) { " (" a href=(format!("#{t}")) { "shown above" } ")" }
                                }
                            }
                            @if let Some(later) = edited_by.get(key) {
                                p.edit.muted { "Changed later: " @for (s, kind) in later { a href=(format!("#{s}")) { (kind.as_str()) } " " } "— the original stays on the record." }
                            }
                            @let e2ee = &shown.e2ee;
                            @if let Some(scheme) = e2ee {
                                p.e2ee { span.badge.v-e2ee { "end-to-end encrypted" } " " (scheme) ": the content is not readable by Custos; the archived body is the client's fallback text." }
                            }
                            @if let Some(subject) = &m.subject { p.subject { "Subject: " (subject) } }
                            @match (&m.body, &m.outcome.delivered_body) {
                                (Some(orig), Some(delivered)) if orig != delivered => {
                                    div.sidebyside {
                                        div { h4 { "Original" } p.body.original { (orig) } }
                                        div { h4 { "Delivered" } p.body.delivered { (delivered) } }
                                    }
                                }
                                (Some(body), _) => { p.body { (body) } }
                                (None, _) => { p.body.muted { "(no body)" } }
                            }
                            @if !m.capture.extra.is_empty() {
                                dl.extra {
                                    @for t in &m.capture.extra {
                                        dt { (extra_label(&t.kind)) @if let Some(l) = &t.lang { " (" (l) ")" } }
                                        dd { (t.text) }
                                    }
                                }
                            }
                            @if !m.capture.files.is_empty() {
                                ul.files {
                                    @for (i, f) in m.capture.files.iter().enumerate() {
                                        li {
                                            span.badge.file { "file" } " "
                                            @match &f.error {
                                                Some(e) => { span.jid { (f.url) } " " span.error { "not archived: " (e) } }
                                                None => {
                                                    a.download href=(format!("/file/{}/{i}", shown.name)) { (f.name) }
                                                    " " span.muted.small { (f.media_type) ", " (f.size) " bytes, SHA-256 " code { (f.sha256.get(..16).unwrap_or(&f.sha256)) } "…" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                            @if m.outcome.action == Action::Block { p.muted.small { "Not delivered: blocked by policy." } }
                            @if shown.copies.len() > 1 || shown.copies.iter().any(|c| c.via != "direct") {
                                details.copies {
                                    summary { "Recorded copies (" (shown.copies.len()) ")" }
                                    table.results.compact {
                                        thead { tr { th { "#" } th { "Stream" } th { "Account" } th { "How" } th { "Verdict" } } }
                                        tbody {
                                            @for c in &shown.copies {
                                                tr { td { (c.name) } td { (c.leg) } td.jid { (c.account) } td { (c.via) } td { (verdict(c.action)) " " (would(c.would_action)) " " (rules(&c.rules)) } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(item) = &review {
                section.card.review-panel {
                    h2 { "Review" }
                    p { "Status: " (status_badge(item.status)) @if item.sampled { " " span.badge.sample { "sample" } } " · Assigned to: " (item.assignee.as_deref().unwrap_or("nobody")) }
                    (history(&item.history))
                    @if allows(a.session.role, Perm::Review) {
                        @if own { p.error { "You sent or received this message, so another officer must review it." } } @else {
                            (review_form(&a.session.csrf, std::slice::from_ref(&at), &format!("/conversation/{at}")))
                        }
                    }
                }
            }
        },
    ))
}

// ---------------------------------------------------------------- shared files

/// Reads one record of any followed chain.
fn record_of(app: &App, r: MsgRef, segment: u64, offset: u64) -> Result<Record, AppError> {
    if r.chain == 0 {
        return Ok(app.archive.reader().record_at(segment, offset)?);
    }
    Ok(app
        .peer_reader(r.chain)
        .ok_or_else(|| AppError::Internal("another node's chain is not followed".into()))?
        .record_at(segment, offset)?)
}

/// The `n`th file a message shared, as archived: always a download (`attachment`, opaque
/// type, no sniffing), never shown in the page, whatever the sender called it.
pub async fn file_download(
    State(app): State<Arc<App>>,
    a: Authed,
    Path((at, n)): Path<(String, usize)>,
) -> Result<Response, AppError> {
    let (key, places) = {
        let store = read(&app.store);
        let key = store.parse_ref(&at).ok_or(AppError::NotFound)?;
        let first = store.message(key).ok_or(AppError::NotFound)?;
        // This copy first, then the other copies of the message: the bytes are stored
        // with whichever copy fetched them.
        let mut places = vec![(first.key(), first.segment, first.offset)];
        places.extend(
            store
                .copies(key)
                .iter()
                .filter(|c| c.key() != key)
                .map(|c| (c.key(), c.segment, c.offset)),
        );
        (key, places)
    };
    let app2 = app.clone();
    let found = tokio::task::spawn_blocking(
        move || -> Result<Option<custos_archive::SharedFile>, AppError> {
            let NewRecord::Message(m) =
                record_of(&app2, places[0].0, places[0].1, places[0].2)?.content
            else {
                return Ok(None);
            };
            let Some(wanted) = m.capture.files.get(n).cloned() else {
                return Ok(None);
            };
            if wanted.content.is_some() || wanted.sha256.is_empty() {
                return Ok(Some(wanted));
            }
            for &(r, seg, off) in places.iter().skip(1) {
                if let NewRecord::Message(other) = record_of(&app2, r, seg, off)?.content {
                    if let Some(f) = other
                        .capture
                        .files
                        .into_iter()
                        .find(|f| f.sha256 == wanted.sha256 && f.content.is_some())
                    {
                        return Ok(Some(f));
                    }
                }
            }
            Ok(Some(wanted))
        },
    )
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    let file = found.ok_or(AppError::NotFound)?;
    let Some(bytes) = file.content else {
        return Err(AppError::NotFound);
    };
    app.audit(
        &a.session.user,
        audit_action::FILE_DOWNLOAD,
        json!({ "seq": key.seq, "file": n, "name": file.name, "sha256": file.sha256 }),
    )
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, attachment(&file.name)),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff".to_owned(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `attachment` with the name as the sender gave it (RFC 6266 `filename*`) and a plain
/// ASCII fallback; nothing in the name can break out of the header.
fn attachment(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let fallback = if fallback.trim().is_empty() {
        "file".to_owned()
    } else {
        fallback
    };
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Who spoke a group-chat message: the nickname the room showed, and the person behind
/// it — the sender's own proven account when the message left through Custos, else what
/// the room revealed.
struct Speaker {
    nick: Option<String>,
    real: Option<String>,
}

impl Speaker {
    fn of(copies: Vec<&store::MessageMeta>) -> Option<Speaker> {
        copies.first()?.room()?;
        let nick = copies
            .iter()
            .filter(|c| c.direction == custos_archive::Direction::Inbound && c.room().is_some())
            .find_map(|c| c.from.split_once('/').map(|(_, n)| n.to_owned()));
        let real = copies
            .iter()
            .find(|c| {
                c.direction == custos_archive::Direction::Outbound
                    && c.via == custos_archive::Via::Direct
            })
            .map(|c| c.from.clone())
            .or_else(|| copies.iter().find_map(|c| c.occupant.clone()));
        Some(Speaker { nick, real })
    }
}

/// What the conversation view shows of one logical message besides its first record.
struct Shown {
    anchor: String,
    /// How links name the record (`/conversation/NAME`, `/file/NAME/N`).
    name: String,
    /// Another node's record: that node's name.
    node: Option<String>,
    severity: Option<String>,
    e2ee: Option<String>,
    verdict: store::GroupVerdict,
    copies: Vec<CopyRow>,
    msg_id: Option<String>,
    edit: Option<(EditKind, String)>,
    /// Group chat: who spoke.
    speaker: Option<Speaker>,
}

struct CopyRow {
    key: MsgRef,
    /// As shown and linked (`node:seq` for another node's).
    name: String,
    leg: &'static str,
    via: &'static str,
    account: String,
    action: Action,
    would_action: Option<Action>,
    rules: Vec<String>,
}

/// A reader's name for a kind of extra text (docs/capture.md).
fn extra_label(kind: &str) -> String {
    let (wrapped, kind) = match kind.strip_prefix("forwarded-") {
        Some(k) => (true, k),
        None => (false, kind),
    };
    let name = match kind {
        "body" => "Other body",
        "subject" => "Other subject",
        "xhtml" => "Formatted text",
        "oob-url" => "Link",
        "oob-desc" => "Link description",
        "file-name" => "Shared file",
        "file-desc" => "File description",
        "file-url" => "File address",
        _ => "Text",
    };
    if wrapped {
        format!("{name}, inside an unverified wrapper")
    } else {
        name.to_owned()
    }
}

fn history(h: &[crate::store::ReviewEvent]) -> maud::Markup {
    html! {
        @if !h.is_empty() {
            ol.history {
                @for e in h {
                    li { span.time { (short_time(e.time)) } " " strong { (e.actor) } " " (e.change) @if !e.comment.is_empty() { ": " q { (e.comment) } } }
                }
            }
        }
    }
}

fn review_form(csrf: &str, seqs: &[String], back: &str) -> maud::Markup {
    html! {
        form.review method="post" action="/queue" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="back" value=(back);
            @for s in seqs { input type="hidden" name="seq" value=(s); }
            label.grow { "Comment" textarea name="comment" id="comment" rows="2" placeholder="Why: what you checked, what you decided" {} }
            div.buttons {
                button.primary type="submit" name="op" value="reviewed" id="mark-reviewed" { "Mark reviewed" }
                button type="submit" name="op" value="escalated" id="mark-escalated" { "Escalate" }
                button type="submit" name="op" value="false-positive" id="mark-false-positive" { "False positive" }
                button type="submit" name="op" value="assign-me" { "Assign to me" }
            }
        }
    }
}

// ---------------------------------------------------------------- queue

#[derive(Deserialize, Default)]
pub struct QueueFilter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    page: usize,
}

pub async fn queue(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<QueueFilter>,
) -> Result<Page, AppError> {
    let status = if f.status.is_empty() {
        "open".to_string()
    } else {
        f.status.clone()
    };
    let rows: Vec<_> = {
        let store = read(&app.store);
        store
            .reviews_newest_first()
            .into_iter()
            .filter(|i| match status.as_str() {
                "all" => true,
                "open" => i.status.is_open(),
                s => ReviewStatus::parse(s) == Some(i.status),
            })
            .filter(|i| match f.kind.as_str() {
                "sample" => i.sampled,
                "flagged" => !i.sampled,
                _ => true,
            })
            .filter_map(|i| {
                store.message(i.seq).map(|m| {
                    let name = store.ref_name(i.seq);
                    let anchor = store.anchor(i.seq);
                    let node = (i.seq.chain != 0).then(|| {
                        store
                            .node_of(i.seq.chain)
                            .unwrap_or(store::UNNAMED)
                            .to_string()
                    });
                    (
                        i.clone(),
                        m.clone(),
                        store.verdict_of(i.seq),
                        (name, anchor, node),
                    )
                })
            })
            .filter(|(_, _, v, _)| f.rule.is_empty() || v.rules.contains(&f.rule))
            .filter(|(_, _, v, _)| {
                f.severity.is_empty() || v.severity.as_deref() == Some(f.severity.as_str())
            })
            .collect()
    };
    let (all_rules, all_sev): (Vec<String>, Vec<String>) = {
        let store = read(&app.store);
        let mut r: HashSet<String> = HashSet::new();
        let mut s: HashSet<String> = HashSet::new();
        for i in store.reviews() {
            let v = store.verdict_of(i.seq);
            r.extend(v.rules);
            s.extend(v.severity);
        }
        let mut r: Vec<_> = r.into_iter().collect();
        let mut s: Vec<_> = s.into_iter().collect();
        r.sort();
        s.sort();
        (r, s)
    };
    let page = f.page;
    let has_next = rows.len() > (page + 1) * PAGE;
    let total = rows.len();
    let rows: Vec<_> = rows.into_iter().skip(page * PAGE).take(PAGE).collect();
    let can_review = allows(a.session.role, Perm::Review);
    let pairs: Vec<(String, String)> = [
        ("status", &status),
        ("rule", &f.rule),
        ("severity", &f.severity),
        ("kind", &f.kind),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let back = format!(
        "/queue?{}",
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    );
    Ok(layout(
        "Review queue",
        Some(&a.session),
        Nav::Queue,
        html! {
            h1 { "Review queue" span.count { (total) } }
            form.card.filters method="get" action="/queue" {
                div.row.filters {
                    label { "Status" select name="status" {
                        @for (v, l) in [("open", "Open and escalated"), ("escalated", "Escalated"), ("reviewed", "Reviewed"), ("false-positive", "False positive"), ("all", "All")] {
                            option value=(v) selected[v == status] { (l) }
                        }
                    } }
                    label { "Rule" select name="rule" { option value="" { "Any" } @for r in &all_rules { option value=(r) selected[*r == f.rule] { (r) } } } }
                    label { "Severity" select name="severity" { option value="" { "Any" } @for s in &all_sev { option value=(s) selected[*s == f.severity] { (s) } } } }
                    label { "Source" select name="kind" {
                        option value="" { "Flagged and sampled" }
                        option value="flagged" selected[f.kind == "flagged"] { "Flagged by policy" }
                        option value="sample" selected[f.kind == "sample"] { "Random sample" }
                    } }
                    button type="submit" { "Filter" }
                }
            }
            @if rows.is_empty() { p.empty { "Nothing to review here." } } @else {
                form method="post" action="/queue" id="bulk" {
                    input type="hidden" name="csrf" value=(a.session.csrf);
                    input type="hidden" name="back" value=(back);
                    table.results.queue {
                        thead { tr {
                            @if can_review { th.sel { input type="checkbox" data-select-all="seq" aria-label="Select all"; } }
                            th { "Time (UTC)" } th { "From" } th { "To" } th { "Verdict" } th { "Severity" } th { "Status" } th { "Assignee" } th {}
                        } }
                        tbody {
                            @for (item, m, v, (name, anchor, node)) in &rows {
                                @let own = m.involves(&a.session.jids);
                                tr id=(format!("q{}", name.replace(':', "-"))) {
                                    @if can_review { td.sel { @if !own { input type="checkbox" name="seq" value=(name) aria-label="Select"; } } }
                                    td.time { (short_time(m.time)) }
                                    td.jid { (m.from) }
                                    td.jid { (m.to) }
                                    td { (verdict(v.action)) " " (would(v.would_action)) " " (rules(&v.rules)) " " (copies_badge(v.copies)) @if item.sampled { span.badge.sample { "sample" } } }
                                    td { (v.severity.as_deref().unwrap_or("—")) }
                                    td { (status_badge(item.status)) }
                                    td { (item.assignee.as_deref().unwrap_or("—")) }
                                    td { a.button.small href=(format!("/conversation/{name}#{anchor}")) { "Open" } @if let Some(n) = node { " " span.badge.node title="recorded by another node" { "node " (n) } } @if own { " " span.muted.small { "(own)" } } }
                                }
                            }
                        }
                    }
                    @if can_review {
                        div.card.bulk {
                            label.grow { "Comment for the selected items" textarea name="comment" rows="2" {} }
                            div.buttons {
                                button.primary type="submit" name="op" value="reviewed" { "Mark reviewed" }
                                button type="submit" name="op" value="escalated" { "Escalate" }
                                button type="submit" name="op" value="false-positive" { "False positive" }
                                button type="submit" name="op" value="assign-me" { "Assign to me" }
                                button type="submit" name="op" value="unassign" { "Unassign" }
                            }
                        }
                    }
                }
                (pager("/queue", &pairs, page, has_next))
            }
        },
    ))
}

/// Longest review comment kept.
const MAX_COMMENT: usize = 4000;

pub async fn queue_action(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    a.check_csrf(field("csrf").unwrap_or(""))?;
    let mut refs: Vec<MsgRef> = {
        let store = read(&app.store);
        pairs
            .iter()
            .filter(|(k, _)| k == "seq")
            .map(|(_, v)| {
                store
                    .parse_ref(v)
                    .ok_or_else(|| AppError::BadRequest(format!("bad item {v:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    refs.sort_unstable();
    refs.dedup();
    if refs.is_empty() {
        return Err(AppError::BadRequest("select at least one item".into()));
    }
    let comment: String = field("comment")
        .unwrap_or("")
        .trim()
        .chars()
        .take(MAX_COMMENT)
        .collect();
    let op = field("op").unwrap_or("");
    let status = match op {
        "assign-me" | "unassign" => None,
        op => {
            let status = ReviewStatus::parse(op)
                .filter(|s| *s != ReviewStatus::Open)
                .ok_or_else(|| AppError::BadRequest(format!("unknown action {op:?}")))?;
            if comment.is_empty() {
                return Err(AppError::BadRequest(
                    "a review needs a comment saying what was checked and decided".into(),
                ));
            }
            Some(status)
        }
    };
    // One audit record per chain the items are in: a record names its items by their
    // seq in one chain.
    let mut by_chain: BTreeMap<Option<String>, Vec<u64>> = BTreeMap::new();
    {
        let store = read(&app.store);
        for r in &refs {
            let name = store.ref_name(*r);
            if store.review(*r).is_none() {
                return Err(AppError::BadRequest(format!(
                    "message {name} is not in the review queue"
                )));
            }
            // Nobody reviews their own messages (FINRA 3110: independent review).
            if store
                .message(*r)
                .is_some_and(|m| m.involves(&a.session.jids))
            {
                return Err(AppError::SelfReview);
            }
            let node = (r.chain != 0)
                .then(|| store.node_of(r.chain).unwrap_or(store::UNNAMED).to_string());
            by_chain.entry(node).or_default().push(r.seq);
        }
    }
    for (node, seqs) in by_chain {
        let change = match status {
            Some(status) => ReviewChange::Status {
                seqs,
                status,
                comment: comment.clone(),
                node,
            },
            None => ReviewChange::Assign {
                seqs,
                assignee: (op == "assign-me").then(|| a.session.user.clone()),
                node,
            },
        };
        let detail =
            serde_json::to_value(&change).map_err(|e| AppError::Internal(e.to_string()))?;
        app.audit(&a.session.user, audit_action::REVIEW, detail)
            .await?;
    }
    // State changes by reading the record back from the log, like at start.
    app.catch_up().await?;
    let back = field("back")
        .filter(|b| b.starts_with('/') && !b.starts_with("//"))
        .unwrap_or("/queue");
    Ok(Redirect::to(back).into_response())
}

// ---------------------------------------------------------------- dashboard

const DAY_MS: i64 = 86_400_000;
const DAYS: i64 = 14;

pub async fn dashboard(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    let today = Timestamp::now().0.div_euclid(DAY_MS);
    let first = today - (DAYS - 1);
    let mut volume = vec![[0u64; 2]; DAYS as usize];
    let mut hits: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut open_by_rule: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut open, mut escalated, mut sampled_open) = (0u64, 0u64, 0u64);
    {
        let store = read(&app.store);
        // Logical messages, counted once by their first copy; a message is a policy hit
        // when any of its copies is.
        // Each chain is in time order: walk back from its newest record.
        let recent = store.chains().flat_map(|c| {
            c.iter()
                .rev()
                .take_while(|m| m.time.0.div_euclid(DAY_MS) >= first)
        });
        for m in recent {
            let day = m.time.0.div_euclid(DAY_MS);
            if !m.is_first_copy() {
                continue;
            }
            let Some(slot) = usize::try_from(day - first)
                .ok()
                .and_then(|i| volume.get_mut(i))
            else {
                continue;
            };
            let v = store.verdict_of(m.key());
            slot[usize::from(v.action != Action::Allow)] += 1;
            for r in &v.rules {
                if let Some(c) = hits
                    .entry(r.clone())
                    .or_insert_with(|| vec![0; DAYS as usize])
                    .get_mut(usize::try_from(day - first).unwrap_or(0))
                {
                    *c += 1;
                }
            }
        }
        for i in store.reviews().filter(|i| i.status.is_open()) {
            open += 1;
            escalated += u64::from(i.status == ReviewStatus::Escalated);
            if i.sampled {
                sampled_open += 1;
                continue;
            }
            for r in &store.verdict_of(i.seq).rules {
                let e = open_by_rule.entry(r.clone()).or_default();
                e.0 += 1;
                e.1 += u64::from(i.status == ReviewStatus::Escalated);
            }
        }
    }
    let label = |i: usize| {
        let t = Timestamp((first + i as i64) * DAY_MS).to_string();
        t.get(5..10).unwrap_or("").to_string()
    };
    let volume_bars: Vec<Bar> = volume
        .iter()
        .enumerate()
        .map(|(i, v)| Bar {
            label: label(i),
            values: v.to_vec(),
        })
        .collect();
    let mut top: Vec<(String, Vec<u64>)> = hits.into_iter().collect();
    top.sort_by_key(|(_, v)| std::cmp::Reverse(v.iter().sum::<u64>()));
    let shown: Vec<(String, Vec<u64>)> = top.iter().take(4).cloned().collect();
    let classes = ["s1", "s2", "s3", "s4"];
    let series: Vec<(&str, &str)> = shown
        .iter()
        .zip(classes)
        .map(|((n, _), c)| (n.as_str(), c))
        .collect();
    let hit_bars: Vec<Bar> = (0..DAYS as usize)
        .map(|i| Bar {
            label: label(i),
            values: shown
                .iter()
                .map(|(_, v)| v.get(i).copied().unwrap_or(0))
                .collect(),
        })
        .collect();
    let retention = crate::retention_pages::overview(
        &read(&app.store),
        app.cfg.retention.as_ref(),
        app.cfg.export.as_ref().map(|e| e.archive_dir.as_path()),
    );
    let journal = journal_card(app.cfg.journal.read().ok().and_then(|j| j.clone()));
    let today_total: u64 = volume.last().map_or(0, |v| v[0] + v[1]);
    let today_flagged: u64 = volume.last().map_or(0, |v| v[1]);
    Ok(layout(
        "Dashboard",
        Some(&a.session),
        Nav::Dashboard,
        html! {
            h1 { "Dashboard" }
            div.tiles {
                div.tile { span.n { (today_total) } span.l { "messages today" } }
                div.tile { span.n { (today_flagged) } span.l { "policy hits today" } }
                a.tile href="/queue" { span.n { (open) } span.l { "open review items" } }
                a.tile.warn href="/queue?status=escalated" { span.n { (escalated) } span.l { "escalated" } }
            }
            div.grid2 {
                section.card { (bar_chart("Messages per day (UTC), last 14 days", &[("Allowed", "s0"), ("Flagged, redacted or blocked", "s1")], &volume_bars)) }
                section.card {
                    @if series.is_empty() { figure.chart { figcaption { "Rule hits per day" } p.empty { "No rule hits in the last 14 days." } } }
                    @else { (bar_chart("Rule hits per day (top rules)", &series, &hit_bars)) }
                }
            }
            section.card {
                h2 { "Open review items by rule" }
                @if open_by_rule.is_empty() && sampled_open == 0 { p.empty { "The queue is empty." } } @else {
                    table.results.compact {
                        thead { tr { th { "Rule" } th.num { "Open" } th.num { "Escalated" } th {} } }
                        tbody {
                            @for (rule, (n, esc)) in &open_by_rule {
                                tr { td { span.rule { (rule) } } td.num { (n) } td.num { (esc) } td { a href=(format!("/queue?{}", serde_urlencoded::to_string([("rule", rule.as_str())]).unwrap_or_default())) { "Review" } } }
                            }
                            @if sampled_open > 0 { tr { td { span.badge.sample { "random sample" } } td.num { (sampled_open) } td.num { "—" } td { a href="/queue?kind=sample" { "Review" } } } }
                        }
                    }
                }
            }
            (journal)
            (retention)
        },
    ))
}

/// How journaling to the firm's archiver stands: delivered through when, and while
/// delivery fails, why and when it is tried again. Nothing when no journal runs.
fn journal_card(status: Option<crate::JournalStatus>) -> maud::Markup {
    let Some(j) = status else {
        return html! {};
    };
    let now = Timestamp::now();
    let lag = j
        .delivered_through
        .map(|t| crate::pages::span_words((now.0 - t.0).max(0)));
    html! {
        section.card.journal {
            h2 { "Journal to the archiver" }
            @if j.failures > 0 {
                p.journal-failing {
                    span.badge.v-block { "failing" }
                    " " (j.failures) " delivery run(s) in a row failed; nothing is lost, delivery resumes where it stopped."
                }
            } @else {
                p { span.badge.v-allow { "delivering" } }
            }
            table.results.compact {
                tbody {
                    tr { th { "Target" } td.jid { (j.target) } }
                    tr { th { "Delivered through" } td {
                        @match j.delivered_through { Some(t) => { (t.to_string()) " (" (lag.unwrap_or_default()) " behind)" } None => { "nothing yet" } }
                    } }
                    tr { th { "Journal messages delivered" } td.num { (j.delivered) } }
                    tr { th { "Last successful run" } td { (j.last_success.map_or("none yet".to_string(), |t| t.to_string())) } }
                    @if let Some(e) = &j.last_error { tr { th { "Last error" } td.detail { code { (e) } } } }
                    @if j.failures > 0 { @if let Some(t) = j.next_attempt { tr { th { "Next attempt" } td { (t.to_string()) } } } }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- audit

#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(default)]
    page: usize,
}

pub async fn audit(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(p): Query<PageQuery>,
) -> Result<Page, AppError> {
    app.catch_up().await?;
    const N: usize = 50;
    let (entries, has_next) = {
        let store = read(&app.store);
        let all = store.audit();
        (
            all.iter()
                .rev()
                .skip(p.page * N)
                .take(N)
                .cloned()
                .collect::<Vec<_>>(),
            all.len() > (p.page + 1) * N,
        )
    };
    Ok(layout(
        "Audit trail",
        Some(&a.session),
        Nav::Audit,
        html! {
            h1 { "Audit trail" }
            p.muted { "Every sign-in, search, conversation view, review action and export, as recorded in the tamper-evident archive. Newest first." }
            table.results.audit {
                thead { tr { th.num { "Seq" } th { "Time (UTC)" } th { "Who" } th { "Action" } th { "Detail" } } }
                tbody {
                    @for e in &entries {
                        tr { td.num { (e.seq) } td.time { (short_time(e.time)) } td { (e.actor) } td { span class=(format!("act act-{}", e.action.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())) { (e.action) } } td.detail { code { (e.detail) } } }
                    }
                }
            }
            (pager("/audit", &[], p.page, has_next))
        },
    ))
}

// ---------------------------------------------------------------- accounts

pub async fn users(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    let list =
        users::load_users(&app.cfg.users_file).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(users_page(&a, &list, None))
}

fn users_page(a: &Authed, list: &[users::User], error: Option<&str>) -> Page {
    layout(
        "Accounts",
        Some(&a.session),
        Nav::Users,
        html! {
            h1 { "Accounts" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            table.results.compact {
                thead { tr { th { "Name" } th { "Role" } th { "Linked XMPP accounts" } th {} } }
                tbody {
                    @for u in list {
                        tr {
                            td { (u.name) } td { span.role { (u.role.as_str()) } } td.jid { (u.jids.join(", ")) }
                            td { @if u.name != a.session.user {
                                form.inline method="post" action="/users/remove" {
                                    input type="hidden" name="csrf" value=(a.session.csrf);
                                    input type="hidden" name="name" value=(u.name);
                                    button.small.danger type="submit" { "Remove" }
                                }
                            } }
                        }
                    }
                }
            }
            section.card.narrow {
                h2 { "Add an account" }
                form method="post" action="/users" {
                    input type="hidden" name="csrf" value=(a.session.csrf);
                    label { "Name" input name="name" required; }
                    label { "Role" select name="role" { @for r in Role::ALL { option value=(r.as_str()) { (r.as_str()) } } } }
                    label { "Password (at least " (users::MIN_PASSWORD_LEN) " characters)" input type="password" name="password" autocomplete="new-password" required; }
                    label { "XMPP accounts this person uses (comma-separated; they cannot review these)" input name="jids" placeholder="alice@example.test"; }
                    button.primary type="submit" { "Add account" }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct UserForm {
    csrf: String,
    name: String,
    role: String,
    password: String,
    #[serde(default)]
    jids: String,
}

pub async fn user_add(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<UserForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    let role: Role = f
        .role
        .parse()
        .map_err(|e: users::UserError| AppError::BadRequest(e.to_string()))?;
    let jids: Vec<String> = f
        .jids
        .split(',')
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .map(String::from)
        .collect();
    app.audit(
        &a.session.user,
        audit_action::USER_ADD,
        json!({ "name": f.name, "role": role.as_str(), "jids": jids }),
    )
    .await?;
    let path = app.cfg.users_file.clone();
    let (name, password) = (f.name.clone(), f.password);
    let result =
        tokio::task::spawn_blocking(move || users::add_user(&path, &name, role, &password, &jids))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
    match result {
        Ok(()) => Ok(Redirect::to("/users").into_response()),
        Err(
            e @ (users::UserError::Exists(_)
            | users::UserError::BadName(_)
            | users::UserError::WeakPassword { .. }
            | users::UserError::BadJid(_)),
        ) => {
            let list = users::load_users(&app.cfg.users_file)
                .map_err(|e| AppError::Internal(e.to_string()))?;
            Ok((
                StatusCode::BAD_REQUEST,
                users_page(&a, &list, Some(&e.to_string())),
            )
                .into_response())
        }
        Err(e) => Err(AppError::Internal(e.to_string())),
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: String,
    name: String,
}

pub async fn user_remove(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<RemoveForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    if f.name == a.session.user {
        return Err(AppError::BadRequest(
            "you cannot remove your own account".into(),
        ));
    }
    app.audit(
        &a.session.user,
        audit_action::USER_REMOVE,
        json!({ "name": f.name }),
    )
    .await?;
    users::remove_user(&app.cfg.users_file, &f.name).map_err(|e| match e {
        users::UserError::NotFound(_) => AppError::NotFound,
        other => AppError::Internal(other.to_string()),
    })?;
    lock(&app.sessions).end_user(&f.name);
    Ok(Redirect::to("/users").into_response())
}
