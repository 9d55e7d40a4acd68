//! The legal holds, erasure and retention overview markup.

use custos_archive::retention::{HoldSpec, RetentionPolicy};
use custos_archive::Timestamp;
use maud::{html, Markup};

use super::short_time;
use crate::auth::Session;
use crate::store::RetentionOverview;

/// Every hold with its history, and (for those who may) the form to place one.
pub fn holds(
    session: &Session,
    holds: &[custos_archive::retention::Hold],
    unreadable: &[u64],
    can_hold: bool,
    error: Option<&str>,
) -> Markup {
    html! {
        h1 { "Legal holds" }
        p.muted { "Records a hold covers are never shredded by retention, including messages written after the hold was placed. Every change is a signed record in the archive." }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        @if !unreadable.is_empty() { p.error role="alert" { "Hold record(s) at seq " (format!("{unreadable:?}")) " cannot be read: expiry is stopped until they are." } }
        @if holds.is_empty() { p.empty { "No holds have been placed." } } @else {
            table.results.compact {
                thead { tr { th { "Matter" } th { "Status" } th { "Selects" } th { "History" } th {} } }
                tbody {
                    @for h in holds {
                        tr {
                            td { (h.spec.matter) }
                            td { @if h.active { span.badge.hold { "active" } } @else { span.badge { "released" } } }
                            td { (selects(&h.spec)) }
                            td.small { @for act in &h.history { div { (act.act) " by " (act.actor) " at " (short_time(act.time)) " (#" (act.seq) ")" } } }
                            td { @if can_hold && h.active {
                                form.inline method="post" action="/holds/release" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input type="hidden" name="matter" value=(h.spec.matter);
                                    button.small.danger type="submit" { "Release" }
                                }
                            } }
                        }
                    }
                }
            }
        }
        @if can_hold {
            section.card.narrow {
                h2 { "Place or change a hold" }
                p.muted.small { "Criteria combine: custodians AND query AND dates. Using an existing matter's name replaces its criteria." }
                form.hold-form method="post" action="/holds" {
                    input type="hidden" name="csrf" value=(session.csrf);
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
    }
}

fn selects(spec: &HoldSpec) -> Markup {
    html! {
        @if !spec.jids.is_empty() { div { "custodians: " span.jid { (spec.jids.join(", ")) } } }
        @if let Some(q) = &spec.query { div { "query: " code { (q) } } }
        @if let Some(s) = spec.since { div { "from " (short_time(Timestamp(s))) } }
        @if let Some(u) = spec.until { div { "until " (short_time(Timestamp(u))) } }
    }
}

/// The erasure request form and, once asked, the report for one address.
pub fn erasure(
    session: &Session,
    jid: &str,
    report: Option<&custos_archive::ErasureReport>,
    retention_configured: bool,
) -> Markup {
    html! {
        h1 { "Erasure requests" }
        p.muted { "Every record of a data subject, when each becomes erasable and why it is kept until then. Erasure happens by expiry, never by rewriting the archive; the report is recorded in the audit trail." }
        form.search method="post" action="/erasure" {
            input type="hidden" name="csrf" value=(session.csrf);
            input name="jid" value=(jid) placeholder="alice@example.test" required;
            button.primary type="submit" { "Report" }
        }
        @if let Some(r) = report {
            h2 { (r.jid) ": " (r.records) " record(s)" }
            @if !retention_configured { p.warning { "No [retention] is configured: everything is kept forever." } }
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
    }
}

/// The dashboard's retention section: records per class, the next expiry, shredded
/// segments and bytes, active holds.
pub fn overview(o: &RetentionOverview, policy: Option<&RetentionPolicy>) -> Markup {
    html! {
        section.card {
            h2 { "Retention" }
            @if policy.is_none() { p.muted { "No [retention] configured: every record is kept forever." } }
            div.tiles {
                div.tile { span.n { (o.next_expiry.map(short_time).unwrap_or_else(|| "—".into())) } span.l { "next segment due" } }
                div.tile { span.n { (o.shredded) } span.l { "segments shredded" } }
                div.tile { span.n { (o.shredded_bytes) } span.l { "bytes shredded" } }
                a.tile href="/holds" { span.n { (o.active_holds) } span.l { "active legal holds" } }
            }
            table.results.compact {
                thead { tr { th { "Class" } th { "Keeps" } th.num { "Messages" } } }
                tbody {
                    @for (class, n) in &o.per_class {
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
