//! The dashboard.

use super::*;
use crate::pages::dashboard::DashboardView;

const DAY_MS: i64 = 86_400_000;
const DAYS: i64 = 14;

pub async fn dashboard(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    let today = Timestamp::now().0.div_euclid(DAY_MS);
    let first = today - (DAYS - 1);
    let (volume, hits, open) = {
        let store = read(&app.store);
        // Logical messages, counted once by their first copy's day; a message is a
        // policy hit when any of its copies is. The store keeps these counts as it reads.
        (
            store.volume_by_day(first, DAYS as usize),
            store.hits_by_day(first, DAYS as usize),
            store.open_items(),
        )
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
    let retention = retention::overview(
        &read(&app.store),
        app.cfg.retention.as_ref(),
        app.cfg.export.as_ref().map(|e| e.archive_dir.as_path()),
    );
    let body = pages::dashboard::dashboard(&DashboardView {
        today_total: volume.last().map_or(0, |v| v[0] + v[1]),
        today_flagged: volume.last().map_or(0, |v| v[1]),
        open: &open,
        volume: &volume_bars,
        series: &series,
        hits: &hit_bars,
        journal: app.cfg.journal.read().ok().and_then(|j| j.clone()),
        retention,
    });
    Ok(layout("Dashboard", Some(&a), Nav::Dashboard, body))
}
