//! The review queue and review actions.

use super::*;

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
    let page = f.page;
    let start = page.saturating_mul(PAGE);
    // Filters read each item's verdict as kept up to date by the store; only the shown
    // page's messages are looked up.
    let (rows, total) = {
        let store = read(&app.store);
        let mut rows = Vec::new();
        let mut total = 0usize;
        let matching = store
            .reviews_newest_first()
            .filter(|i| match status.as_str() {
                "all" => true,
                "open" => i.status.is_open(),
                s => ReviewStatus::parse(s) == Some(i.status),
            })
            .filter(|i| match f.kind.as_str() {
                "sample" => i.sampled,
                "flagged" => !i.sampled,
                _ => true,
            })
            .filter(|i| f.rule.is_empty() || i.verdict.rules.contains(&f.rule))
            .filter(|i| {
                f.severity.is_empty() || i.verdict.severity.as_deref() == Some(f.severity.as_str())
            });
        for i in matching {
            if total >= start && rows.len() < PAGE {
                if let Some(m) = store.message(i.seq) {
                    let name = store.ref_name(i.seq);
                    let anchor = store.anchor(i.seq);
                    let node = (i.seq.chain != 0).then(|| {
                        store
                            .node_of(i.seq.chain)
                            .unwrap_or(store::UNNAMED)
                            .to_string()
                    });
                    rows.push((i.clone(), m, i.verdict.clone(), (name, anchor, node)));
                }
            }
            total += 1;
        }
        (rows, total)
    };
    let (all_rules, all_sev) = {
        let store = read(&app.store);
        (store.rule_names(), store.severity_names())
    };
    let has_next = total > start.saturating_add(PAGE);
    let can_review = allows(a.session.role, Perm::Review);
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
    Ok(layout(
        "Review queue",
        Some(&a.session),
        Nav::Queue,
        html! {
            h1 { "Review queue" span.count { (total) } }
            form.card.filters method="get" action="/queue" {
                div.row.filters {
                    label { "Status" select name="status" {
                        @for (v, l) in [("open", "Open and escalated"), ("escalated", "Escalated"), ("reviewed", "Reviewed"), ("false-positive", "False positive"), ("all", "All")] {
                            option value=(v) selected[v == status] { (l) }
                        }
                    } }
                    label { "Rule" select name="rule" { option value="" { "Any" } @for r in &all_rules { option value=(r) selected[*r == f.rule] { (r) } } } }
                    label { "Severity" select name="severity" { option value="" { "Any" } @for s in &all_sev { option value=(s) selected[*s == f.severity] { (s) } } } }
                    label { "Source" select name="kind" {
                        option value="" { "Flagged and sampled" }
                        option value="flagged" selected[f.kind == "flagged"] { "Flagged by policy" }
                        option value="sample" selected[f.kind == "sample"] { "Random sample" }
                    } }
                    button type="submit" { "Filter" }
                }
            }
            @if rows.is_empty() { p.empty { "Nothing to review here." } } @else {
                form method="post" action="/queue" id="bulk" {
                    input type="hidden" name="csrf" value=(a.session.csrf);
                    input type="hidden" name="back" value=(back);
                    table.results.queue {
                        thead { tr {
                            @if can_review { th.sel { input type="checkbox" data-select-all="seq" aria-label="Select all"; } }
                            th { "Time (UTC)" } th { "From" } th { "To" } th { "Verdict" } th { "Severity" } th { "Status" } th { "Assignee" } th {}
                        } }
                        tbody {
                            @for (item, m, v, (name, anchor, node)) in &rows {
                                @let own = m.involves(&a.session.jids);
                                tr id=(format!("q{}", name.replace(':', "-"))) {
                                    @if can_review { td.sel { @if !own { input type="checkbox" name="seq" value=(name) aria-label="Select"; } } }
                                    td.time { (short_time(m.time)) }
                                    td.jid { (m.from) }
                                    td.jid { (m.to) }
                                    td { (verdict(v.action)) " " (would(v.would_action)) " " (rules(&v.rules)) " " (copies_badge(v.copies)) @if item.sampled { span.badge.sample { "sample" } } }
                                    td { (v.severity.as_deref().unwrap_or("—")) }
                                    td { (status_badge(item.status)) }
                                    td { (item.assignee.as_deref().unwrap_or("—")) }
                                    td { a.button.small href=(format!("/conversation/{name}#{anchor}")) { "Open" } @if let Some(n) = node { " " span.badge.node title="recorded by another node" { "node " (n) } } @if own { " " span.muted.small { "(own)" } } }
                                }
                            }
                        }
                    }
                    @if can_review {
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
                (pager("/queue", &pairs, page, has_next))
            }
        },
    ))
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
        for r in &refs {
            let name = store.ref_name(*r);
            if store.review(*r).is_none() {
                return Err(AppError::BadRequest(format!(
                    "message {name} is not in the review queue"
                )));
            }
            // Nobody reviews their own messages (FINRA 3110: independent review).
            if store
                .message(*r)
                .is_some_and(|m| m.involves(&a.session.jids))
            {
                return Err(AppError::SelfReview);
            }
            let node = (r.chain != 0)
                .then(|| store.node_of(r.chain).unwrap_or(store::UNNAMED).to_string());
            by_chain.entry(node).or_default().push(r.seq);
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
    app.catch_up().await?;
    let back = field("back")
        .filter(|b| b.starts_with('/') && !b.starts_with("//"))
        .unwrap_or("/queue");
    Ok(Redirect::to(back).into_response())
}
