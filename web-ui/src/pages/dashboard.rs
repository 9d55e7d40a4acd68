//! The dashboard's markup.

use custos_archive::Timestamp;
use maud::{html, Markup};

use crate::charts::{bar_chart, Bar};
use crate::store::OpenItems;

/// What the dashboard shows.
pub struct DashboardView<'a> {
    pub today_total: u64,
    pub today_flagged: u64,
    pub open: &'a OpenItems,
    /// Messages per day, [allowed, flagged].
    pub volume: &'a [Bar],
    /// The top rules' names and chart classes, and their hits per day.
    pub series: &'a [(&'a str, &'a str)],
    pub hits: &'a [Bar],
    pub journal: Option<crate::JournalStatus>,
    /// The retention overview, rendered by its own page module.
    pub retention: Markup,
}

pub fn dashboard(v: &DashboardView<'_>) -> Markup {
    html! {
        h1 { "Dashboard" }
        div.tiles {
            div.tile { span.n { (v.today_total) } span.l { "messages today" } }
            div.tile { span.n { (v.today_flagged) } span.l { "policy hits today" } }
            a.tile href="/queue" { span.n { (v.open.open) } span.l { "open review items" } }
            a.tile.warn href="/queue?status=escalated" { span.n { (v.open.escalated) } span.l { "escalated" } }
        }
        div.grid2 {
            section.card { (bar_chart("Messages per day (UTC), last 14 days", &[("Allowed", "s0"), ("Flagged, redacted or blocked", "s1")], v.volume)) }
            section.card {
                @if v.series.is_empty() { figure.chart { figcaption { "Rule hits per day" } p.empty { "No rule hits in the last 14 days." } } }
                @else { (bar_chart("Rule hits per day (top rules)", v.series, v.hits)) }
            }
        }
        section.card {
            h2 { "Open review items by rule" }
            @if v.open.by_rule.is_empty() && v.open.sampled == 0 { p.empty { "The queue is empty." } } @else {
                table.results.compact {
                    thead { tr { th { "Rule" } th.num { "Open" } th.num { "Escalated" } th {} } }
                    tbody {
                        @for (rule, (n, esc)) in &v.open.by_rule {
                            tr { td { span.rule { (rule) } } td.num { (n) } td.num { (esc) } td { a href=(format!("/queue?{}", serde_urlencoded::to_string([("rule", rule.as_str())]).unwrap_or_default())) { "Review" } } }
                        }
                        @if v.open.sampled > 0 { tr { td { span.badge.sample { "random sample" } } td.num { (v.open.sampled) } td.num { "—" } td { a href="/queue?kind=sample" { "Review" } } } }
                    }
                }
            }
        }
        (journal_card(v.journal.clone()))
        (v.retention)
    }
}

/// How journaling to the firm's archiver stands: delivered through when, and while
/// delivery fails, why and when it is tried again. Nothing when no journal runs.
fn journal_card(status: Option<crate::JournalStatus>) -> Markup {
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
