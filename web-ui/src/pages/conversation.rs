//! The conversation page's markup.

use std::collections::BTreeMap;

use custos_archive::{Action, EditKind, NewRecord, Record};
use maud::{html, Markup};

use super::{copies_badge, rules, short_time, status_badge, verdict, would};
use crate::auth::Session;
use crate::store::{MsgRef, ReviewItem, Shown};

/// What the conversation page shows.
pub struct ConversationView<'a> {
    pub session: &'a Session,
    /// The record asked for, and how the request named it.
    pub seq: MsgRef,
    pub at: &'a str,
    /// The conversation's key as the store names it (`chat A B`, `room R`), and the
    /// room for group chat.
    pub title: &'a str,
    pub room: Option<String>,
    /// The messages' first records in time order, and what the store knows of each.
    pub records: &'a [(MsgRef, Record)],
    pub shown: &'a BTreeMap<MsgRef, Shown>,
    /// Active legal holds covering each record.
    pub held: &'a BTreeMap<MsgRef, Vec<String>>,
    /// Sender's message id → anchor, and the corrections or retractions of each message.
    pub by_msg_id: &'a BTreeMap<&'a str, &'a str>,
    pub edited_by: &'a BTreeMap<MsgRef, Vec<(&'a str, EditKind)>>,
    pub review: Option<&'a ReviewItem>,
    /// The officer sent or received the message, so may not review it.
    pub own: bool,
    pub can_review: bool,
}

pub fn conversation(v: &ConversationView<'_>) -> Markup {
    html! {
        @if let Some(room) = &v.room {
            h1 { "Room transcript" }
            p.muted.conv-key { "Group chat in " span.jid { (room) } " · each message once, however many copies were recorded" }
        } @else {
            h1 { "Conversation" }
            p.muted.conv-key { (v.title.strip_prefix("chat ").unwrap_or(v.title).replace(' ', " · ")) }
        }
        div.conversation {
            @for (key, r) in v.records {
                @if let (NewRecord::Message(m), Some(shown)) = (&r.content, v.shown.get(key)) {
                    @let is_hit = shown.copies.iter().any(|c| c.key == v.seq);
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
                            @for matter in v.held.get(key).into_iter().flatten() {
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
                                @if let Some(t) = v.by_msg_id.get(target.as_str()) { " (" a href=(format!("#{t}")) { "shown above" } ")" }
                            }
                        }
                        @if let Some(later) = v.edited_by.get(key) {
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
        @if let Some(item) = v.review {
            section.card.review-panel {
                h2 { "Review" }
                p { "Status: " (status_badge(item.status)) @if item.sampled { " " span.badge.sample { "sample" } } " · Assigned to: " (item.assignee.as_deref().unwrap_or("nobody")) }
                (history(&item.history))
                @if v.can_review {
                    @if v.own { p.error { "You sent or received this message, so another officer must review it." } } @else {
                        (review_form(&v.session.csrf, std::slice::from_ref(&v.at.to_string()), &format!("/conversation/{}", v.at)))
                    }
                }
            }
        }
    }
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

fn history(h: &[crate::store::ReviewEvent]) -> Markup {
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

fn review_form(csrf: &str, seqs: &[String], back: &str) -> Markup {
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
