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
    HoldSpec, Release, RetentionPolicy, HOLD_CHANGE, HOLD_PLACE, HOLD_RELEASE,
};
use custos_archive::Timestamp;
use serde::Deserialize;

use crate::app::{read, App, Authed};
use crate::error::AppError;
use crate::pages::{self, layout, Nav, Page};
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
    layout(
        "Legal holds",
        Some(a),
        Nav::Holds,
        pages::retention::holds(
            &a.session,
            &holds,
            &unreadable,
            allows(a.session.role, Perm::Hold),
            error,
        ),
    )
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
    app.catch_up_settled().await?;
    let (active, custodian) = {
        let store = read(&app.store);
        // Checked against the whole state: who the hold names, whether it is active.
        app.whole(&store)?;
        let hold = store.holds().get(&spec.matter).filter(|h| h.active);
        (
            hold.is_some(),
            hold.is_some_and(|h| names_user(&h.spec, &a)),
        )
    };
    if custodian && f.change.is_some() {
        return Err(AppError::OwnHold);
    }
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
    app.catch_up_settled().await?;
    Ok(Redirect::to("/holds").into_response())
}

/// Whether the hold names one of the signed-in user's own addresses, as a custodian or
/// in its query (`from:olivia@example.test`): they may not release it or change it (it
/// keeps their own messages), as nobody reviews their own messages.
fn names_user(spec: &HoldSpec, a: &Authed) -> bool {
    let query = spec.query.as_deref().unwrap_or("").to_lowercase();
    a.session.jids.iter().any(|own| {
        spec.jids.iter().any(|j| own.eq_ignore_ascii_case(j)) || query.contains(own.as_str())
    })
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
    app.catch_up_settled().await?;
    let (active, custodian) = {
        let store = read(&app.store);
        // Checked against the whole state: who the hold names, whether it is active.
        app.whole(&store)?;
        let hold = store.holds().get(&f.matter).filter(|h| h.active);
        (
            hold.is_some(),
            hold.is_some_and(|h| names_user(&h.spec, &a)),
        )
    };
    if custodian {
        return Err(AppError::OwnHold);
    }
    if !active {
        let e = format!("no active hold {:?}", f.matter);
        return Ok((StatusCode::BAD_REQUEST, holds_page(&app, &a, Some(&e))).into_response());
    }
    let detail = serde_json::to_value(Release {
        matter: f.matter.clone(),
    })
    .map_err(|e| AppError::Internal(e.to_string()))?;
    app.audit(&a.session.user, HOLD_RELEASE, detail).await?;
    app.catch_up_settled().await?;
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
        Some(a),
        Nav::Erasure,
        pages::retention::erasure(
            &a.session,
            &jid,
            report.as_ref(),
            app.cfg.retention.is_some(),
        ),
    ))
}

/// The dashboard's retention section, with the bytes the shredded segments took on
/// disk (their files stay, their keys are gone).
pub fn overview(
    store: &Store,
    policy: Option<&RetentionPolicy>,
    dir: Option<&std::path::Path>,
) -> maud::Markup {
    let mut o = store.retention_overview(policy);
    o.shredded_bytes = dir.map_or(0, |d| {
        store
            .shredded()
            .keys()
            .filter_map(|id| {
                std::fs::metadata(d.join(custos_archive::segment::segment_name(*id))).ok()
            })
            .map(|m| m.len())
            .sum()
    });
    pages::retention::overview(&o, policy)
}
