//! The review queue and review actions.

use super::*;
use crate::store::QueueQuery;

#[derive(Deserialize, Default)]
pub struct QueueFilter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    page: usize,
}

pub async fn queue(
    State(app): State<Arc<App>>,
    a: Authed,
    Query(f): Query<QueueFilter>,
) -> Result<Page, AppError> {
    let status = if f.status.is_empty() {
        "open".to_string()
    } else {
        f.status.clone()
    };
    let page_number = f.page;
    let skip = page_number.saturating_mul(PAGE);
    let (page, own, all_rules, all_severities) = {
        let store = read(&app.store);
        let page = store.queue_page(&QueueQuery {
            status: &status,
            kind: &f.kind,
            rule: &f.rule,
            severity: &f.severity,
            skip,
            take: PAGE,
        });
        let own: Vec<bool> = page
            .rows
            .iter()
            .map(|row| store.involves(row.message.key(), &a.session.jids))
            .collect();
        (page, own, store.rule_names(), store.severity_names())
    };
    let pairs: Vec<(String, String)> = [
        ("status", &status),
        ("rule", &f.rule),
        ("severity", &f.severity),
        ("kind", &f.kind),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let back = format!(
        "/queue?{}",
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    );
    let body = pages::queue::queue(&pages::queue::QueueView {
        session: &a.session,
        status: &status,
        rule: &f.rule,
        severity: &f.severity,
        kind: &f.kind,
        all_rules: &all_rules,
        all_severities: &all_severities,
        page: &page,
        own: &own,
        page_number,
        has_next: page.total > skip.saturating_add(PAGE),
        can_review: allows(a.session.role, Perm::Review),
        pairs: &pairs,
        back: &back,
    });
    Ok(layout("Review queue", Some(&a), Nav::Queue, body))
}

/// Longest review comment kept.
const MAX_COMMENT: usize = 4000;

pub async fn queue_action(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    a.check_csrf(field("csrf").unwrap_or(""))?;
    let mut refs: Vec<MsgRef> = {
        let store = read(&app.store);
        pairs
            .iter()
            .filter(|(k, _)| k == "seq")
            .map(|(_, v)| {
                store
                    .parse_ref(v)
                    .ok_or_else(|| AppError::BadRequest(format!("bad item {v:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    refs.sort_unstable();
    refs.dedup();
    if refs.is_empty() {
        return Err(AppError::BadRequest("select at least one item".into()));
    }
    let comment: String = field("comment")
        .unwrap_or("")
        .trim()
        .chars()
        .take(MAX_COMMENT)
        .collect();
    let op = field("op").unwrap_or("");
    let status = match op {
        "assign-me" | "unassign" => None,
        op => {
            let status = ReviewStatus::parse(op)
                .filter(|s| *s != ReviewStatus::Open)
                .ok_or_else(|| AppError::BadRequest(format!("unknown action {op:?}")))?;
            if comment.is_empty() {
                return Err(AppError::BadRequest(
                    "a review needs a comment saying what was checked and decided".into(),
                ));
            }
            Some(status)
        }
    };
    // One audit record per chain the items are in: a record names its items by their
    // seq in one chain.
    let mut by_chain: BTreeMap<Option<String>, Vec<u64>> = BTreeMap::new();
    {
        let store = read(&app.store);
        // Checked against the whole state only: not one being built, nor one that
        // lost rows.
        app.whole(&store)?;
        for r in &refs {
            let name = store.ref_name(*r);
            if store.review(*r).is_none() {
                return Err(AppError::BadRequest(format!(
                    "message {name} is not in the review queue"
                )));
            }
            // Nobody reviews their own messages (FINRA 3110: independent review).
            if store.involves(*r, &a.session.jids) {
                return Err(AppError::SelfReview);
            }
            let node = (r.chain != 0)
                .then(|| store.node_of(r.chain).unwrap_or(store::UNNAMED).to_string());
            by_chain.entry(node).or_default().push(r.seq);
        }
        // Rows read for the checks above may have been found lost.
        if store.damaged() {
            return Err(AppError::Rebuilding);
        }
    }
    for (node, seqs) in by_chain {
        let change = match status {
            Some(status) => ReviewChange::Status {
                seqs,
                status,
                comment: comment.clone(),
                node,
            },
            None => ReviewChange::Assign {
                seqs,
                assignee: (op == "assign-me").then(|| a.session.user.clone()),
                node,
            },
        };
        let detail =
            serde_json::to_value(&change).map_err(|e| AppError::Internal(e.to_string()))?;
        app.audit(&a.session.user, audit_action::REVIEW, detail)
            .await?;
    }
    // State changes by reading the record back from the log, like at start.
    app.catch_up_settled().await?;
    let back = field("back")
        .filter(|b| b.starts_with('/') && !b.starts_with("//"))
        .unwrap_or("/queue");
    Ok(Redirect::to(back).into_response())
}
