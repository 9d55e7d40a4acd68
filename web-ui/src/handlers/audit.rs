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
    let (refs, has_next) = read(&app.store).audit_page(p.page, N);
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
        Some(&a),
        Nav::Audit,
        pages::audit::audit(&entries, p.page, has_next),
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
