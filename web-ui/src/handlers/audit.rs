//! The audit trail.

use super::*;
use crate::store::AuditEntry;
use custos_archive::EventRecord;

#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(default)]
    page: usize,
}

pub async fn audit(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(p): Query<PageQuery>,
) -> Result<Page, AppError> {
    app.catch_up().await?;
    const N: usize = 50;
    let (refs, has_next) = {
        let store = read(&app.store);
        let all = store.audit();
        (
            all.iter()
                .rev()
                .skip(p.page.saturating_mul(N))
                .take(N)
                .copied()
                .collect::<Vec<_>>(),
            all.len() > p.page.saturating_add(1).saturating_mul(N),
        )
    };
    // The page's records, read from the log (the store keeps where they are).
    let app2 = app.clone();
    let entries: Vec<AuditEntry> = tokio::task::spawn_blocking(move || {
        refs.iter()
            .map(
                |r| match app2.archive.reader().record_at(r.segment, r.offset) {
                    Ok(Record {
                        time,
                        content:
                            NewRecord::Event(EventRecord::Audit {
                                actor,
                                action,
                                detail,
                            }),
                        ..
                    }) => AuditEntry {
                        seq: r.seq,
                        time,
                        actor,
                        action,
                        detail,
                    },
                    Ok(_) => unreadable(r.seq, "the record there is not an audit record".into()),
                    Err(e) => unreadable(r.seq, e.to_string()),
                },
            )
            .collect()
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(layout(
        "Audit trail",
        Some(&a.session),
        Nav::Audit,
        html! {
            h1 { "Audit trail" }
            p.muted { "Every sign-in, search, conversation view, review action and export, as recorded in the tamper-evident archive. Newest first." }
            table.results.audit {
                thead { tr { th.num { "Seq" } th { "Time (UTC)" } th { "Who" } th { "Action" } th { "Detail" } } }
                tbody {
                    @for e in &entries {
                        tr { td.num { (e.seq) } td.time { (short_time(e.time)) } td { (e.actor) } td { span class=(format!("act act-{}", e.action.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())) { (e.action) } } td.detail { code { (e.detail) } } }
                    }
                }
            }
            (pager("/audit", &[], p.page, has_next))
        },
    ))
}

/// A row for an audit record that could not be read back (the page says why).
fn unreadable(seq: u64, why: String) -> AuditEntry {
    AuditEntry {
        seq,
        time: Timestamp(0),
        actor: String::new(),
        action: "unreadable".into(),
        detail: why,
    }
}
