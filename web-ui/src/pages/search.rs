//! The search page's markup.

use custos_archive::query::Lexicons;
use custos_archive::MessageHit;
use maud::{html, Markup};

use super::{copies_badge, marked, pager, rules, short_time, verdict, would};
use crate::handlers::SearchForm;
use crate::highlight;
use crate::store;

/// What the search page shows.
pub struct SearchView<'a> {
    pub form: &'a SearchForm,
    pub lexicons: &'a Lexicons,
    pub error: Option<&'a str>,
    /// Which records the index does not cover yet, when some.
    pub uncovered: Option<&'a str>,
    /// The page of logical messages found, and whether there is a next page.
    pub results: Option<&'a (Vec<MessageHit>, bool)>,
    /// Where each hit opens (its conversation), once its chain is followed here.
    pub links: &'a [Option<String>],
    /// The words to mark in excerpts.
    pub terms: &'a highlight::Terms,
    pub own_node: &'a Option<String>,
    pub page: usize,
}

pub fn search(v: &SearchView<'_>) -> Markup {
    html! {
        h1 { "Search" }
        form.card.search method="get" action="/search" {
            div.row {
                input.grow type="search" name="q" id="q" value=(v.form.q) placeholder="Words, \"a phrase\", guarant* NEAR/5 return*, @lexicon, from:alice@example.test, -word …";
                button.primary type="submit" id="search-button" { "Search" }
            }
            div.row.filters {
                label { "Participant" input name="participant" value=(v.form.participant) placeholder="user@example.test"; }
                label { "Direction" select name="direction" {
                    option value="" { "Any" }
                    option value="outbound" selected[("outbound" == v.form.direction)] { "Outbound" }
                    option value="inbound" selected[("inbound" == v.form.direction)] { "Inbound" }
                } }
                label { "From" input type="date" name="since" value=(v.form.since); }
                label { "To" input type="date" name="until" value=(v.form.until); }
                label { "Rule" input name="rule" value=(v.form.rule) placeholder="rule id"; }
                label { "Action" select name="action" {
                    option value="" { "Any" }
                    @for act in ["allow", "flag", "redact", "block"] { option value=(act) selected[(act == v.form.action)] { (act) } }
                } }
                label.check { input type="checkbox" name="flagged" value="1" checked[v.form.flagged.is_some()]; "Flagged only" }
            }
            p.help { "Fields: " code { "from: to: with: account: room: direction: type: action: rule: msg: via: after: before:" } "; " code { "OR" } ", " code { "NOT" } " or " code { "-" } ", " code { "( )" } ", " code { "guarant*" } ", " code { "garantee~" } ", " code { "a NEAR/5 b" } "." }
            @if !v.lexicons.is_empty() {
                details.lexicons {
                    summary { "Lexicons" }
                    dl {
                        @for (name, terms) in v.lexicons.names() {
                            dt { code { "@" (name) } }
                            dd { (terms.join(" · ")) }
                        }
                    }
                }
            }
        }
        @if let Some(e) = v.error { p.error role="alert" { (e) } }
        @if let Some(u) = v.uncovered { p.warning.uncovered role="status" { "Incomplete: " (u) "." } }
        @if let Some((hits, has_next)) = v.results {
            @if hits.is_empty() { p.empty { "No messages match." } } @else {
                table.results {
                    thead { tr { th { "Time (UTC)" } th { "From" } th { "To" } th { "Message" } th { "Verdict" } } }
                    tbody {
                        @for (mh, link) in hits.iter().zip(v.links) {
                            @let h = &mh.first;
                            @let strictest = mh.copies.iter().map(|c| c.action).max_by_key(|a| store::rank(*a)).unwrap_or(h.action);
                            @let would_act = mh.copies.iter().filter_map(|c| c.would_action).max_by_key(|a| store::rank(*a));
                            @let all_rules: Vec<String> = mh.copies.iter().flat_map(|c| c.rules.iter().cloned()).fold(Vec::new(), |mut v, r| { if !v.contains(&r) { v.push(r); } v });
                            @let body = h.body.as_deref().unwrap_or("");
                            @let m = highlight::marks(body, v.terms);
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
                                td { (verdict(strictest)) " " (would(would_act)) " " (rules(&all_rules)) " " (copies_badge(mh.copies.len())) (node_badges(mh, v.own_node)) }
                            }
                        }
                    }
                }
                (pager("/search", &v.form.pairs(), v.page, *has_next))
                p.muted {
                    a href=(format!("/export?{}", serde_urlencoded::to_string(v.form.pairs()).unwrap_or_default())) { "Export these results (JSON lines)" }
                    " · "
                    a href=(format!("/export/regulator?{}", serde_urlencoded::to_string(v.form.pairs()).unwrap_or_default())) { "Verifiable export (Parquet, transcripts, signed manifest)" }
                }
            }
        }
    }
}

/// With several nodes, which nodes carried a message's copies (nothing with one node).
fn node_badges(mh: &MessageHit, own: &Option<String>) -> Markup {
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
