//! The audit trail.

use super::*;

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
    let (entries, has_next) = {
        let store = read(&app.store);
        let all = store.audit();
        (
            all.iter()
                .rev()
                .skip(p.page * N)
                .take(N)
                .cloned()
                .collect::<Vec<_>>(),
            all.len() > (p.page + 1) * N,
        )
    };
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
