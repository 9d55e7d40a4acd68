//! Legal holds, erasure reports and the dashboard's retention overview. A hold act is an
//! audit record in the archive (`hold.place`, `hold.change`, `hold.release`) written
//! before the page answers; the page then shows the holds replayed from the chain, so
//! what it shows is what expiry obeys.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use custos_archive::retention::{
    self, HoldSpec, Release, RetentionPolicy, HOLD_CHANGE, HOLD_PLACE, HOLD_RELEASE,
};
use custos_archive::Timestamp;
use maud::{html, Markup};
use serde::Deserialize;

use crate::app::{read, App, Authed};
use crate::error::AppError;
use crate::pages::{layout, short_time, Nav, Page};
use crate::roles::{allows, Perm};
use crate::store::Store;

pub async fn holds(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    app.catch_up().await?;
    Ok(holds_page(&app, &a, None))
}

fn holds_page(app: &App, a: &Authed, error: Option<&str>) -> Page {
    let store = read(&app.store);
    let holds: Vec<_> = store.holds().all().cloned().collect();
    let unreadable = store.holds().unreadable.clone();
    drop(store);
    let can = allows(a.session.role, Perm::Hold);
    layout(
        "Legal holds",
        Some(&a.session),
        Nav::Holds,
        html! {
            h1 { "Legal holds" }
            p.muted { "Records a hold covers are never shredded by retention, including messages written after the hold was placed. Every change is a signed record in the archive." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if !unreadable.is_empty() { p.error role="alert" { "Hold record(s) at seq " (format!("{unreadable:?}")) " cannot be read: expiry is stopped until they are." } }
            @if holds.is_empty() { p.empty { "No holds have been placed." } } @else {
                table.results.compact {
                    thead { tr { th { "Matter" } th { "Status" } th { "Selects" } th { "History" } th {} } }
                    tbody {
                        @for h in &holds {
                            tr {
                                td { (h.spec.matter) }
                                td { @if h.active { span.badge.hold { "active" } } @else { span.badge { "released" } } }
                                td { (selects(&h.spec)) }
                                td.small { @for act in &h.history { div { (act.act) " by " (act.actor) " at " (short_time(act.time)) " (#" (act.seq) ")" } } }
                                td { @if can && h.active {
                                    form.inline method="post" action="/holds/release" {
                                        input type="hidden" name="csrf" value=(a.session.csrf);
                                        input type="hidden" name="matter" value=(h.spec.matter);
                                        button.small.danger type="submit" { "Release" }
                                    }
                                } }
                            }
                        }
                    }
                }
            }
            @if can {
                section.card.narrow {
                    h2 { "Place or change a hold" }
                    p.muted.small { "Criteria combine: custodians AND query AND dates. Using an existing matter's name replaces its criteria." }
                    form.hold-form method="post" action="/holds" {
                        input type="hidden" name="csrf" value=(a.session.csrf);
                        label { "Matter" input name="matter" required maxlength="200"; }
                        label { "Custodians (XMPP addresses, comma-separated)" input name="jids" placeholder="alice@example.test"; }
                        label { "Search query (optional; every term must match)" input name="query" placeholder="merger from:bob@example.test"; }
                        label { "From (YYYY-MM-DD, optional)" input name="since"; }
                        label { "Until (YYYY-MM-DD, optional)" input name="until"; }
                        label.check { input type="checkbox" name="change" value="on"; " Replace the criteria of the active hold of this matter" }
                        button.primary type="submit" { "Place hold" }
                    }
                }
            }
        },
    )
}

fn selects(spec: &HoldSpec) -> Markup {
    html! {
        @if !spec.jids.is_empty() { div { "custodians: " span.jid { (spec.jids.join(", ")) } } }
        @if let Some(q) = &spec.query { div { "query: " code { (q) } } }
        @if let Some(s) = spec.since { div { "from " (short_time(Timestamp(s))) } }
        @if let Some(u) = spec.until { div { "until " (short_time(Timestamp(u))) } }
    }
}

#[derive(Deserialize)]
pub struct HoldForm {
    csrf: String,
    matter: String,
    #[serde(default)]
    jids: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Replace the criteria of the active hold of this matter.
    #[serde(default)]
    change: Option<String>,
}

fn when(v: &str, what: &str) -> Result<Option<Timestamp>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    Timestamp::parse(v)
        .map(Some)
        .map_err(|_| format!("{what} {v:?}: expected YYYY-MM-DD or an RFC 3339 time"))
}

pub async fn hold_add(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<HoldForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    let jids: Vec<String> = f
        .jids
        .split([',', '\n'])
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .map(String::from)
        .collect();
    let spec = when(&f.since, "from")
        .and_then(|since| Ok((since, when(&f.until, "until")?)))
        .and_then(|(since, until)| {
            // A hold keeps the terms a lexicon has now (see the CLI's hold add).
            let query = app
                .cfg
                .lexicons
                .expand(&f.query)
                .map_err(|e| format!("query: {e}"))?;
            HoldSpec::new(&f.matter, &jids, Some(&query), since, until)
        });
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            return Ok((StatusCode::BAD_REQUEST, holds_page(&app, &a, Some(&e))).into_response());
        }
    };
    app.catch_up().await?;
    let active = read(&app.store)
        .holds()
        .get(&spec.matter)
        .is_some_and(|h| h.active);
    // Changing a hold narrows or widens someone's matter: it must be meant.
    let act = match (active, f.change.is_some()) {
        (false, false) => HOLD_PLACE,
        (true, true) => HOLD_CHANGE,
        (true, false) => {
            let e = format!(
                "a hold {:?} is active: tick \"replace its criteria\" to change it, or choose another matter name",
                spec.matter
            );
            return Ok((StatusCode::BAD_REQUEST, holds_page(&app, &a, Some(&e))).into_response());
        }
        (false, true) => {
            let e = format!("no active hold {:?} to change", spec.matter);
            return Ok((StatusCode::BAD_REQUEST, holds_page(&app, &a, Some(&e))).into_response());
        }
    };
    let detail = serde_json::to_value(&spec).map_err(|e| AppError::Internal(e.to_string()))?;
    app.audit(&a.session.user, act, detail).await?;
    app.catch_up().await?;
    Ok(Redirect::to("/holds").into_response())
}

#[derive(Deserialize)]
pub struct ReleaseForm {
    csrf: String,
    matter: String,
}

pub async fn hold_release(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<ReleaseForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    app.catch_up().await?;
    let active = read(&app.store)
        .holds()
        .get(&f.matter)
        .is_some_and(|h| h.active);
    if !active {
        let e = format!("no active hold {:?}", f.matter);
        return Ok((StatusCode::BAD_REQUEST, holds_page(&app, &a, Some(&e))).into_response());
    }
    let detail = serde_json::to_value(Release {
        matter: f.matter.clone(),
    })
    .map_err(|e| AppError::Internal(e.to_string()))?;
    app.audit(&a.session.user, HOLD_RELEASE, detail).await?;
    app.catch_up().await?;
    Ok(Redirect::to("/holds").into_response())
}

#[derive(Deserialize, Default)]
pub struct ErasureForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    jid: String,
}

/// The request form.
pub async fn erasure_form(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    erasure_page(&app, &a, String::new(), None)
}

/// Runs the report (a POST: it writes an audit record).
pub async fn erasure(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(q): Form<ErasureForm>,
) -> Result<Page, AppError> {
    a.check_csrf(&q.csrf)?;
    let jid = q.jid.trim().to_string();
    let report = if jid.is_empty() {
        None
    } else {
        let policy = app
            .cfg
            .retention
            .clone()
            .unwrap_or_else(RetentionPolicy::keep_forever);
        let app2 = app.clone();
        let j = jid.clone();
        let report = tokio::task::spawn_blocking(move || {
            app2.archive
                .reader()
                .erasure_report(&j, &policy, Timestamp::now())
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
        // The report is itself evidence of how the request was answered.
        let summary = serde_json::json!({
            "jid": report.jid,
            "records": report.records,
            "groups": report.groups.iter().map(|g| serde_json::json!({
                "class": g.class,
                "holds": g.holds,
                "records": g.records,
                "erasable_from": g.erasable_from.map(|t| t.to_string()),
            })).collect::<Vec<_>>(),
        });
        app.audit(&a.session.user, "erasure.report", summary)
            .await?;
        Some(report)
    };
    erasure_page(&app, &a, jid, report)
}

fn erasure_page(
    app: &App,
    a: &Authed,
    jid: String,
    report: Option<custos_archive::ErasureReport>,
) -> Result<Page, AppError> {
    Ok(layout(
        "Erasure",
        Some(&a.session),
        Nav::Erasure,
        html! {
            h1 { "Erasure requests" }
            p.muted { "Every record of a data subject, when each becomes erasable and why it is kept until then. Erasure happens by expiry, never by rewriting the archive; the report is recorded in the audit trail." }
            form.search method="post" action="/erasure" {
                input type="hidden" name="csrf" value=(a.session.csrf);
                input name="jid" value=(jid) placeholder="alice@example.test" required;
                button.primary type="submit" { "Report" }
            }
            @if let Some(r) = &report {
                h2 { (r.jid) ": " (r.records) " record(s)" }
                @if app.cfg.retention.is_none() { p.warning { "No [retention] is configured: everything is kept forever." } }
                @if r.groups.is_empty() { p.empty { "No readable record names this address." } } @else {
                    table.results.compact {
                        thead { tr { th { "Class" } th { "Holds" } th.num { "Records" } th { "Span" } th { "Erasable from" } th { "Why kept" } } }
                        tbody {
                            @for g in &r.groups {
                                tr {
                                    td { span.badge.retention { (g.class) } }
                                    td { @for h in &g.holds { span.badge.hold { (h) } " " } }
                                    td.num { (g.records) }
                                    td.small { (short_time(g.oldest)) " – " (short_time(g.newest)) }
                                    td { @match (&g.erasable_from, g.holds.is_empty()) {
                                        (_, false) => { "after release of the hold(s)" }
                                        (Some(d), true) => { (short_time(*d)) }
                                        (None, true) => { "never (this configuration)" }
                                    } }
                                    td.small { (g.why) }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// The dashboard's retention section: records per class, the next expiry, shredded
/// segments and bytes, active holds.
pub fn overview(
    store: &Store,
    policy: Option<&RetentionPolicy>,
    dir: Option<&std::path::Path>,
) -> Markup {
    let per_class = store.class_counts();
    let newest = store.segments().keys().next_back().copied();
    let next_expiry = policy.and_then(|p| {
        store
            .segments()
            .iter()
            .filter(|(id, _)| Some(**id) != newest)
            .filter_map(|(_, f)| retention::segment_due(f, p).ok().map(|(_, _, due)| due))
            .min()
    });
    let shredded = store.shredded();
    let bytes: u64 = dir.map_or(0, |d| {
        shredded
            .keys()
            .filter_map(|id| {
                std::fs::metadata(d.join(custos_archive::segment::segment_name(*id))).ok()
            })
            .map(|m| m.len())
            .sum()
    });
    let active = store.holds().active().count();
    html! {
        section.card {
            h2 { "Retention" }
            @if policy.is_none() { p.muted { "No [retention] configured: every record is kept forever." } }
            div.tiles {
                div.tile { span.n { (next_expiry.map(short_time).unwrap_or_else(|| "—".into())) } span.l { "next segment due" } }
                div.tile { span.n { (shredded.len()) } span.l { "segments shredded" } }
                div.tile { span.n { (bytes) } span.l { "bytes shredded" } }
                a.tile href="/holds" { span.n { (active) } span.l { "active legal holds" } }
            }
            table.results.compact {
                thead { tr { th { "Class" } th { "Keeps" } th.num { "Messages" } } }
                tbody {
                    @for (class, n) in &per_class {
                        tr {
                            td { span.badge.retention { (class) } }
                            td { (policy.and_then(|p| p.span(class)).map(|s| s.to_string()).unwrap_or_else(|| "not configured".into())) }
                            td.num { (n) }
                        }
                    }
                }
            }
        }
    }
}
