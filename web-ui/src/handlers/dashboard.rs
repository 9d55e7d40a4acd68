//! The dashboard.

use super::*;

const DAY_MS: i64 = 86_400_000;
const DAYS: i64 = 14;

pub async fn dashboard(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    let today = Timestamp::now().0.div_euclid(DAY_MS);
    let first = today - (DAYS - 1);
    let mut open_by_rule: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut open, mut escalated, mut sampled_open) = (0u64, 0u64, 0u64);
    let (volume, hits) = {
        let store = read(&app.store);
        // Logical messages, counted once by their first copy's day; a message is a
        // policy hit when any of its copies is. The store keeps these counts as it reads.
        let volume = store.volume_by_day(first, DAYS as usize);
        let hits = store.hits_by_day(first, DAYS as usize);
        for i in store.reviews().filter(|i| i.status.is_open()) {
            open += 1;
            escalated += u64::from(i.status == ReviewStatus::Escalated);
            if i.sampled {
                sampled_open += 1;
                continue;
            }
            let is_escalated = u64::from(i.status == ReviewStatus::Escalated);
            for r in &i.verdict.rules {
                match open_by_rule.get_mut(r) {
                    Some(e) => {
                        e.0 += 1;
                        e.1 += is_escalated;
                    }
                    None => {
                        open_by_rule.insert(r.clone(), (1, is_escalated));
                    }
                }
            }
        }
        (volume, hits)
    };
    let label = |i: usize| {
        let t = Timestamp((first + i as i64) * DAY_MS).to_string();
        t.get(5..10).unwrap_or("").to_string()
    };
    let volume_bars: Vec<Bar> = volume
        .iter()
        .enumerate()
        .map(|(i, v)| Bar {
            label: label(i),
            values: v.to_vec(),
        })
        .collect();
    let mut top: Vec<(String, Vec<u64>)> = hits.into_iter().collect();
    top.sort_by_key(|(_, v)| std::cmp::Reverse(v.iter().sum::<u64>()));
    let shown: Vec<(String, Vec<u64>)> = top.iter().take(4).cloned().collect();
    let classes = ["s1", "s2", "s3", "s4"];
    let series: Vec<(&str, &str)> = shown
        .iter()
        .zip(classes)
        .map(|((n, _), c)| (n.as_str(), c))
        .collect();
    let hit_bars: Vec<Bar> = (0..DAYS as usize)
        .map(|i| Bar {
            label: label(i),
            values: shown
                .iter()
                .map(|(_, v)| v.get(i).copied().unwrap_or(0))
                .collect(),
        })
        .collect();
    let retention = crate::retention_pages::overview(
        &read(&app.store),
        app.cfg.retention.as_ref(),
        app.cfg.export.as_ref().map(|e| e.archive_dir.as_path()),
    );
    let journal = journal_card(app.cfg.journal.read().ok().and_then(|j| j.clone()));
    let today_total: u64 = volume.last().map_or(0, |v| v[0] + v[1]);
    let today_flagged: u64 = volume.last().map_or(0, |v| v[1]);
    Ok(layout(
        "Dashboard",
        Some(&a.session),
        Nav::Dashboard,
        html! {
            h1 { "Dashboard" }
            div.tiles {
                div.tile { span.n { (today_total) } span.l { "messages today" } }
                div.tile { span.n { (today_flagged) } span.l { "policy hits today" } }
                a.tile href="/queue" { span.n { (open) } span.l { "open review items" } }
                a.tile.warn href="/queue?status=escalated" { span.n { (escalated) } span.l { "escalated" } }
            }
            div.grid2 {
                section.card { (bar_chart("Messages per day (UTC), last 14 days", &[("Allowed", "s0"), ("Flagged, redacted or blocked", "s1")], &volume_bars)) }
                section.card {
                    @if series.is_empty() { figure.chart { figcaption { "Rule hits per day" } p.empty { "No rule hits in the last 14 days." } } }
                    @else { (bar_chart("Rule hits per day (top rules)", &series, &hit_bars)) }
                }
            }
            section.card {
                h2 { "Open review items by rule" }
                @if open_by_rule.is_empty() && sampled_open == 0 { p.empty { "The queue is empty." } } @else {
                    table.results.compact {
                        thead { tr { th { "Rule" } th.num { "Open" } th.num { "Escalated" } th {} } }
                        tbody {
                            @for (rule, (n, esc)) in &open_by_rule {
                                tr { td { span.rule { (rule) } } td.num { (n) } td.num { (esc) } td { a href=(format!("/queue?{}", serde_urlencoded::to_string([("rule", rule.as_str())]).unwrap_or_default())) { "Review" } } }
                            }
                            @if sampled_open > 0 { tr { td { span.badge.sample { "random sample" } } td.num { (sampled_open) } td.num { "—" } td { a href="/queue?kind=sample" { "Review" } } } }
                        }
                    }
                }
            }
            (journal)
            (retention)
        },
    ))
}

/// How journaling to the firm's archiver stands: delivered through when, and while
/// delivery fails, why and when it is tried again. Nothing when no journal runs.
fn journal_card(status: Option<crate::JournalStatus>) -> maud::Markup {
    let Some(j) = status else {
        return html! {};
    };
    let now = Timestamp::now();
    let lag = j
        .delivered_through
        .map(|t| crate::pages::span_words((now.0 - t.0).max(0)));
    html! {
        section.card.journal {
            h2 { "Journal to the archiver" }
            @if j.failures > 0 {
                p.journal-failing {
                    span.badge.v-block { "failing" }
                    " " (j.failures) " delivery run(s) in a row failed; nothing is lost, delivery resumes where it stopped."
                }
            } @else {
                p { span.badge.v-allow { "delivering" } }
            }
            table.results.compact {
                tbody {
                    tr { th { "Target" } td.jid { (j.target) } }
                    tr { th { "Delivered through" } td {
                        @match j.delivered_through { Some(t) => { (t.to_string()) " (" (lag.unwrap_or_default()) " behind)" } None => { "nothing yet" } }
                    } }
                    tr { th { "Journal messages delivered" } td.num { (j.delivered) } }
                    tr { th { "Last successful run" } td { (j.last_success.map_or("none yet".to_string(), |t| t.to_string())) } }
                    @if let Some(e) = &j.last_error { tr { th { "Last error" } td.detail { code { (e) } } } }
                    @if j.failures > 0 { @if let Some(t) = j.next_attempt { tr { th { "Next attempt" } td { (t.to_string()) } } } }
                }
            }
        }
    }
}
