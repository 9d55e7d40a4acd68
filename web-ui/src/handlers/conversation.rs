//! A conversation, its copies, and the files it shared.

use super::*;
use crate::store::Shown;

/// Messages shown on each side of the hit.
const CONTEXT: usize = 25;

pub async fn conversation(
    State(app): State<Arc<App>>,
    a: Authed,
    Path(at): Path<String>,
) -> Result<Page, AppError> {
    // The context may include messages sent since the last tail scan.
    let (seq, shown_list) = app.conversation_around(&at, CONTEXT).await?;
    let around: Vec<(MsgRef, u64, u64)> = shown_list
        .iter()
        .map(|s| (s.key, s.segment, s.offset))
        .collect();
    let mut meta: BTreeMap<MsgRef, Shown> = shown_list.into_iter().map(|s| (s.key, s)).collect();
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
    let own = read(&app.store).involves(seq, &a.session.jids);
    let title = hit_meta
        .as_ref()
        .map(|m| m.conversation.clone())
        .unwrap_or_default();
    let body = pages::conversation::conversation(&pages::conversation::ConversationView {
        session: &a.session,
        seq,
        at: &at,
        title: &title,
        room: title.strip_prefix("room ").map(str::to_owned),
        records: &records,
        shown: &meta,
        held: &held,
        by_msg_id: &by_msg_id,
        edited_by: &edited_by,
        review: review.as_ref(),
        own,
        can_review: allows(a.session.role, Perm::Review),
    });
    Ok(layout("Conversation", Some(&a), Nav::Search, body))
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
