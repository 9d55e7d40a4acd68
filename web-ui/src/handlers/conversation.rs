//! A conversation, its copies, and the files it shared.

use super::*;

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
    let (around, mut meta) = {
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
                let all = store.copies(s);
                let speaker = Speaker::of(&all);
                let copies = all
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
                        // From the record, once read.
                        msg_id: None,
                        edit: None,
                        speaker,
                    },
                ))
            })
            .collect();
        (around, meta)
    };
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
    // The sender's id and what a correction changes are read from the records.
    for (r, record) in &records {
        if let (NewRecord::Message(m), Some(shown)) = (&record.content, meta.get_mut(r)) {
            shown.msg_id = m.origin_id.clone().or_else(|| m.id.clone());
            shown.edit = m.capture.edit.as_ref().map(|e| (e.kind, e.target.clone()));
        }
    }
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
    let hit_meta = read(&app.store).message(seq);
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
    fn of(copies: &[store::MessageMeta]) -> Option<Speaker> {
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
