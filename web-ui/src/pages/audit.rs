//! The audit trail's markup.

use maud::{html, Markup};

use super::{pager, short_time};
use crate::store::AuditEntry;

/// A page of the audit trail, newest first.
pub fn audit(entries: &[AuditEntry], page: usize, has_next: bool) -> Markup {
    html! {
        h1 { "Audit trail" }
        p.muted { "Every sign-in, search, conversation view, review action and export, as recorded in the tamper-evident archive. Newest first." }
        table.results.audit {
            thead { tr { th.num { "Seq" } th { "Time (UTC)" } th { "Who" } th { "Action" } th { "Detail" } } }
            tbody {
                @for e in entries {
                    tr { td.num { (e.seq) } td.time { (short_time(e.time)) } td { (e.actor) } td { span class=(format!("act act-{}", e.action.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())) { (e.action) } } td.detail { code { (e.detail) } } }
                }
            }
        }
        (pager("/audit", &[], page, has_next))
    }
}
