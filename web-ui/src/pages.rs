//! HTML templates (maud: every interpolation is escaped unless wrapped in
//! `PreEscaped`, which this module never applies to archive data). Message
//! bodies, JIDs, rule ids and comments come from the network or from other
//! users: they are only ever interpolated as text or as quoted attribute values.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use custos_archive::{Action, Timestamp};
use maud::{html, Markup, DOCTYPE};

use crate::app::Authed;
use crate::roles::{allows, Perm};
use crate::store::ReviewStatus;

pub mod accounts;
pub mod audit;
pub mod conversation;
pub mod dashboard;
pub mod queue;
pub mod retention;
pub mod search;

/// A rendered page.
pub struct Page(pub Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        Html(self.0.into_string()).into_response()
    }
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Dashboard,
    Search,
    Queue,
    Audit,
    Users,
    Holds,
    Erasure,
    None,
}

/// A page in the common frame; `who` is the signed-in request, if any, whose notice
/// (the review state being built again, say) heads the page.
pub fn layout(title: &str, who: Option<&Authed>, nav: Nav, body: Markup) -> Page {
    let session = who.map(|a| &a.session);
    let notice = who.and_then(|a| a.notice.as_deref());
    Page(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Custos" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { span.logo { "◆" } " Custos" }
                    @if let Some(s) = session {
                        nav {
                            (nav_link("/", "Dashboard", nav == Nav::Dashboard))
                            (nav_link("/search", "Search", nav == Nav::Search))
                            (nav_link("/queue", "Review queue", nav == Nav::Queue))
                            @if allows(s.role, Perm::Audit) { (nav_link("/audit", "Audit trail", nav == Nav::Audit)) }
                            (nav_link("/holds", "Legal holds", nav == Nav::Holds))
                            @if allows(s.role, Perm::Erasure) { (nav_link("/erasure", "Erasure", nav == Nav::Erasure)) }
                            @if allows(s.role, Perm::ManageUsers) { (nav_link("/users", "Accounts", nav == Nav::Users)) }
                        }
                        div.who {
                            span.user { (s.user) } " " span.role { (s.role.as_str()) }
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button.link type="submit" id="sign-out" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    @if let Some(n) = notice { p.notice role="status" id="state-notice" { (n) } }
                    (body)
                }
            }
        }
    })
}

fn nav_link(href: &str, label: &str, current: bool) -> Markup {
    html! { a href=(href) class=[current.then_some("current")] { (label) } }
}

pub fn error_page(status: StatusCode, message: &str) -> Page {
    layout(
        "Error",
        None,
        Nav::None,
        html! {
            section.card.narrow {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
                p { (message) }
                p { a href="/" { "Back to the dashboard" } }
            }
        },
    )
}

pub fn login(csrf: &str, error: Option<&str>) -> Page {
    layout(
        "Sign in",
        None,
        Nav::None,
        html! {
            section.card.narrow.login {
                h1 { "Sign in" }
                p.muted { "Every sign-in, search, view and review action is recorded in the archive." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Account" input name="user" id="user" autocomplete="username" required autofocus; }
                    label { "Password" input name="password" id="password" type="password" autocomplete="current-password" required; }
                    button.primary type="submit" id="sign-in" { "Sign in" }
                }
            }
        },
    )
}

/// `2026-11-21 12:00:00` (UTC).
pub fn short_time(t: Timestamp) -> String {
    let s = t.to_string();
    s.get(..19).map_or(s.clone(), |p| p.replace('T', " "))
}

pub fn verdict(action: Action) -> Markup {
    html! { span class=(format!("badge v-{}", action.as_str())) { (action.as_str()) } }
}

pub fn status_badge(status: ReviewStatus) -> Markup {
    html! { span class=(format!("badge st-{}", status.as_str())) { (status.label()) } }
}

/// What monitor-mode rules would have done, beside the enforced verdict.
pub fn would(action: Option<Action>) -> Markup {
    html! { @if let Some(a) = action { span class=(format!("badge would v-{}", a.as_str())) { "would " (a.as_str()) } } }
}

/// How many copies of a logical message were recorded, when more than one.
pub fn copies_badge(n: usize) -> Markup {
    html! { @if n > 1 { span.badge.copies title="recorded once per stream it crossed" { (n) " copies" } } }
}

pub fn rules(rules: &[String]) -> Markup {
    html! { @for r in rules { span.rule { (r) } " " } }
}

/// Body text with the given byte ranges marked; ranges must be sorted,
/// disjoint and on char boundaries (as produced by [`crate::highlight`]).
pub fn marked(text: &str, marks: &[(usize, usize)]) -> Markup {
    let mut parts: Vec<(bool, &str)> = Vec::new();
    let mut at = 0;
    for &(s, e) in marks {
        if let (Some(before), Some(m)) = (text.get(at..s), text.get(s..e)) {
            parts.push((false, before));
            parts.push((true, m));
            at = e;
        }
    }
    parts.push((false, text.get(at..).unwrap_or("")));
    html! { @for (hl, p) in parts { @if hl { mark { (p) } } @else { (p) } } }
}

/// A pager: previous / next links built from `base` query pairs.
pub fn pager(path: &str, pairs: &[(String, String)], page: usize, has_next: bool) -> Markup {
    let link = |p: usize| {
        let mut q: Vec<(String, String)> =
            pairs.iter().filter(|(k, _)| k != "page").cloned().collect();
        q.push(("page".into(), p.to_string()));
        format!(
            "{path}?{}",
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    };
    if page == 0 && !has_next {
        return html! {};
    }
    html! {
        nav.pager {
            @if page > 0 { a.button href=(link(page - 1)) rel="prev" { "← Newer" } } @else { span.button.disabled { "← Newer" } }
            span.muted { "Page " (page + 1) }
            @if has_next { a.button href=(link(page + 1)) rel="next" id="next-page" { "Older →" } } @else { span.button.disabled { "Older →" } }
        }
    }
}

/// A span of milliseconds in words an operator reads at a glance: `42 s`, `7 min`,
/// `3 h 5 min`, `2 d 4 h`.
pub fn span_words(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod span_tests {
    use super::span_words;

    #[test]
    fn spans_read_in_the_largest_units() {
        assert_eq!(span_words(-5), "0 s");
        assert_eq!(span_words(42_000), "42 s");
        assert_eq!(span_words(7 * 60_000 + 10), "7 min");
        assert_eq!(span_words(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(span_words(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
    }
}
