//! The review queue's markup.

use maud::{html, Markup};

use super::{copies_badge, pager, rules, short_time, status_badge, verdict, would};
use crate::auth::Session;
use crate::store::QueuePage;

/// What the queue page shows besides its rows.
pub struct QueueView<'a> {
    pub session: &'a Session,
    /// The filter as asked (the status defaulted to `open`).
    pub status: &'a str,
    pub rule: &'a str,
    pub severity: &'a str,
    pub kind: &'a str,
    /// Every rule and severity seen, for the filter's choices.
    pub all_rules: &'a [String],
    pub all_severities: &'a [String],
    pub page: &'a QueuePage,
    /// For each row: whether the signed-in user is a party of the message (any copy).
    pub own: &'a [bool],
    pub page_number: usize,
    pub has_next: bool,
    pub can_review: bool,
    /// The filter as query pairs (for the pager), and the URL to come back to.
    pub pairs: &'a [(String, String)],
    pub back: &'a str,
}

pub fn queue(v: &QueueView<'_>) -> Markup {
    html! {
        h1 { "Review queue" span.count { (v.page.total) } }
        form.card.filters method="get" action="/queue" {
            div.row.filters {
                label { "Status" select name="status" {
                    @for (value, label) in [("open", "Open and escalated"), ("escalated", "Escalated"), ("reviewed", "Reviewed"), ("false-positive", "False positive"), ("all", "All")] {
                        option value=(value) selected[value == v.status] { (label) }
                    }
                } }
                label { "Rule" select name="rule" { option value="" { "Any" } @for r in v.all_rules { option value=(r) selected[r == v.rule] { (r) } } } }
                label { "Severity" select name="severity" { option value="" { "Any" } @for s in v.all_severities { option value=(s) selected[s == v.severity] { (s) } } } }
                label { "Source" select name="kind" {
                    option value="" { "Flagged and sampled" }
                    option value="flagged" selected[v.kind == "flagged"] { "Flagged by policy" }
                    option value="sample" selected[v.kind == "sample"] { "Random sample" }
                } }
                button type="submit" { "Filter" }
            }
        }
        @if v.page.rows.is_empty() { p.empty { "Nothing to review here." } } @else {
            form method="post" action="/queue" id="bulk" {
                input type="hidden" name="csrf" value=(v.session.csrf);
                input type="hidden" name="back" value=(v.back);
                table.results.queue {
                    thead { tr {
                        @if v.can_review { th.sel { input type="checkbox" data-select-all="seq" aria-label="Select all"; } }
                        th { "Time (UTC)" } th { "From" } th { "To" } th { "Verdict" } th { "Severity" } th { "Status" } th { "Assignee" } th {}
                    } }
                    tbody {
                        @for (i, row) in v.page.rows.iter().enumerate() {
                            @let (item, m, verdict_of) = (&row.item, &row.message, &row.item.verdict);
                            @let own = v.own.get(i).copied().unwrap_or(true);
                            tr id=(format!("q{}", row.name.replace(':', "-"))) {
                                @if v.can_review { td.sel { @if !own { input type="checkbox" name="seq" value=(row.name) aria-label="Select"; } } }
                                td.time { (short_time(m.time)) }
                                td.jid { (m.from) }
                                td.jid { (m.to) }
                                td { (verdict(verdict_of.action)) " " (would(verdict_of.would_action)) " " (rules(&verdict_of.rules)) " " (copies_badge(verdict_of.copies)) @if item.sampled { span.badge.sample { "sample" } } }
                                td { (verdict_of.severity.as_deref().unwrap_or("—")) }
                                td { (status_badge(item.status)) }
                                td { (item.assignee.as_deref().unwrap_or("—")) }
                                td { a.button.small href=(format!("/conversation/{}#{}", row.name, row.anchor)) { "Open" } @if let Some(n) = &row.node { " " span.badge.node title="recorded by another node" { "node " (n) } } @if own { " " span.muted.small { "(own)" } } }
                            }
                        }
                    }
                }
                @if v.can_review {
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
            (pager("/queue", v.pairs, v.page_number, v.has_next))
        }
    }
}
