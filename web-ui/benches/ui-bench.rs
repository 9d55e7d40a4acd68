//! Review-UI benchmark at archive scale.
//!
//! `ui-bench generate DIR RECORDS` writes an archive of chat among 1,000 users into
//! `DIR/archive` (keys in `DIR/secrets`): logical messages with two copies each (the
//! sender's outbound copy and the recipient's inbound one, sharing an identity), one in
//! ten in one of 50 rooms, 2.5 % flagged by one of eight rules, and a review record
//! for one flagged message in ten.
//!
//! `ui-bench measure DIR` then starts the web UI on it in this process and prints how
//! long the state took to build, resident memory after it, and p50/p99 of the queue
//! (first and a deep page), dashboard, conversation and search pages, driven through
//! the real router with a signed-in officer's session. Run `measure` in its own process
//! so that the figures are the UI's alone. It reads the whole state before it measures.
//!
//! `ui-bench start DIR` starts the web UI as `custos serve` does and prints how long
//! until pages are served and, when the state is built in the background (no saved
//! state, and much to read), until it has caught up; it then stops, saving the state.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use custos_archive::{
    Action, Archive, ArchiveConfig, Capture, Direction, EventRecord, MasterKey, MessageRecord,
    NewRecord, Outcome, SessionId,
};
use custos_web_ui::store::{ReviewChange, ReviewStatus};
use custos_web_ui::{add_user, Role, WebConfig};
use tower::ServiceExt;

const USERS: u64 = 1000;
/// The load after the page figures: at most this many requests, for at most this long.
const LOAD_REQUESTS: usize = 20_000;
const LOAD_TIME: Duration = Duration::from_secs(300);
const ROOMS: u64 = 50;
const PASSWORD: &str = "bench horse battery staple";
const RULES: [&str; 8] = [
    "pci-card",
    "promissory",
    "insider",
    "secrecy",
    "off-channel",
    "profanity",
    "gifts",
    "pii",
];
const WORDS: [&str; 16] = [
    "lunch", "report", "client", "market", "order", "price", "meeting", "draft", "call", "trade",
    "review", "budget", "desk", "risk", "quote", "memo",
];

/// SplitMix64: every run generates the same archive.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn copy(
    direction: Direction,
    (from, to): (String, String),
    stanza_type: &str,
    body: &str,
    identity: &str,
    account: String,
    flag: Option<(&str, &str)>,
) -> NewRecord {
    NewRecord::Message(MessageRecord {
        direction,
        session: SessionId(account.clone()),
        stanza_type: stanza_type.into(),
        id: Some(identity[..12].to_string()),
        outcome: Outcome {
            action: if flag.is_some() {
                Action::Flag
            } else {
                Action::Allow
            },
            rules: flag.map(|(r, _)| vec![r.to_string()]).unwrap_or_default(),
            severity: flag.map(|(_, s)| s.to_string()),
            ..Outcome::allowed()
        },
        capture: Capture {
            account,
            identity: identity.to_string(),
            ..Capture::default()
        },
        ..MessageRecord::chat(from, to, body)
    })
}

fn keys(dir: &Path) -> Result<(MasterKey, custos_archive::SigningKey), Box<dyn std::error::Error>> {
    let secrets = dir.join("secrets");
    let master = secrets.join("master.key");
    let signing = secrets.join("signing.key");
    if !master.exists() {
        std::fs::create_dir_all(&secrets)?;
        custos_archive::keys_init(&master, &signing)?;
    }
    Ok((
        MasterKey::from_file(&master)?,
        custos_archive::load_signing_key(&signing)?,
    ))
}

fn generate(dir: &Path, records: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (master, signing) = keys(dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let archive = Archive::open(ArchiveConfig::new(dir.join("archive"), master, signing))?;
    let started = Instant::now();
    let mut rng = Rng(0x0c05_7005);
    let logical = records / 2;
    rt.block_on(async {
        let mut inflight = std::collections::VecDeque::new();
        let mut flagged_seqs: Vec<u64> = Vec::new();
        for n in 0..logical {
            let a = rng.below(USERS);
            let b = (a + 1 + rng.below(USERS - 1)) % USERS;
            let words = 4 + rng.below(10);
            let body: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                .collect();
            let body = body.join(" ");
            let flag = (rng.below(40) == 0).then(|| {
                let r = RULES[rng.below(RULES.len() as u64) as usize];
                (r, ["low", "medium", "high"][rng.below(3) as usize])
            });
            let identity = format!("{:016x}{:016x}{:032x}", rng.next(), rng.next(), n);
            let sender = format!("user{a}@example.test");
            let pair = if rng.below(10) == 0 {
                let room = format!("room{}@rooms.example.test", rng.below(ROOMS));
                [
                    copy(
                        Direction::Outbound,
                        (format!("{sender}/desk"), room.clone()),
                        "groupchat",
                        &body,
                        &identity,
                        format!("{sender}/desk"),
                        flag,
                    ),
                    copy(
                        Direction::Inbound,
                        (format!("{room}/user{a}"), format!("{sender}/desk")),
                        "groupchat",
                        &body,
                        &identity,
                        format!("{sender}/desk"),
                        None,
                    ),
                ]
            } else {
                let recipient = format!("user{b}@example.test");
                [
                    copy(
                        Direction::Outbound,
                        (format!("{sender}/desk"), recipient.clone()),
                        "chat",
                        &body,
                        &identity,
                        format!("{sender}/desk"),
                        flag,
                    ),
                    copy(
                        Direction::Inbound,
                        (format!("{sender}/desk"), format!("{recipient}/phone")),
                        "chat",
                        &body,
                        &identity,
                        format!("{recipient}/phone"),
                        None,
                    ),
                ]
            };
            for (i, rec) in pair.into_iter().enumerate() {
                inflight.push_back((i == 0 && flag.is_some(), archive.submit(rec)));
            }
            while inflight.len() >= 512 {
                if let Some((flagged, s)) = inflight.pop_front() {
                    let seq = s.await?.seq.0;
                    if flagged {
                        flagged_seqs.push(seq);
                    }
                }
            }
            // A reviewer closes or escalates one flagged message in ten.
            if flagged_seqs.len() >= 10 {
                let seqs: Vec<u64> = flagged_seqs.drain(..).take(1).collect();
                let status = if rng.below(4) == 0 {
                    ReviewStatus::Escalated
                } else {
                    ReviewStatus::Reviewed
                };
                let detail = serde_json::to_string(&ReviewChange::Status {
                    seqs,
                    status,
                    comment: "reviewed".into(),
                    node: None,
                })?;
                inflight.push_back((
                    false,
                    archive.submit(NewRecord::Event(EventRecord::Audit {
                        actor: "oscar".into(),
                        action: "review".into(),
                        detail,
                    })),
                ));
            }
        }
        while let Some((_, s)) = inflight.pop_front() {
            s.await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let took = started.elapsed();
    println!(
        "generated {records} records ({logical} logical messages) in {:.1} s ({:.0} records/s)",
        took.as_secs_f64(),
        records as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

struct Page {
    status: StatusCode,
    cookies: Vec<String>,
    body: String,
}

async fn send(
    app: &axum::Router,
    method: Method,
    uri: &str,
    cookie: &str,
    form: Option<String>,
) -> Page {
    let mut b = Request::builder().method(method).uri(uri);
    if !cookie.is_empty() {
        b = b.header(header::COOKIE, cookie);
    }
    let req = match form {
        Some(f) => b
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(f)),
        None => b.body(Body::empty()),
    }
    .expect("a well-formed request");
    let res = app.clone().oneshot(req).await.expect("the router answers");
    let status = res.status();
    let cookies = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect();
    let body = axum::body::to_bytes(res.into_body(), 64 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Page {
        status,
        cookies,
        body,
    }
}

fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    html.find(marker)
        .and_then(|at| html.get(at + marker.len()..))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The first 20 conversations a queue page links to.
fn conversation_links(page: &str) -> Vec<String> {
    page.match_indices("href=\"/conversation/")
        .filter_map(|(at, m)| page.get(at + m.len()..))
        .filter_map(|rest| rest.split(['"', '#']).next())
        .map(str::to_owned)
        .take(20)
        .collect()
}

fn measure(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (master, signing) = keys(dir)?;
    let users = dir.join("users.json");
    if !users.exists() {
        add_user(&users, "olivia", Role::Officer, PASSWORD, &[])?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let archive = Archive::open(ArchiveConfig::new(dir.join("archive"), master, signing))?;
    let mut cfg = WebConfig::new("127.0.0.1:0".parse()?, users);
    cfg.session_ttl = Duration::from_secs(3600);
    // Pages are measured on the whole state: it is read before serving, however long.
    cfg.build_in_background_above = u64::MAX;
    let bound = rt.block_on(custos_web_ui::bind(cfg, archive.clone()))?;
    let built = started.elapsed();
    let app = bound.router();
    let rss_after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    println!(
        "web UI state built in {:.2} s; RSS {:.0} MiB after (peak {:.0} MiB, {:.0} MiB before)",
        built.as_secs_f64(),
        rss_after as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    // Pages of mapped files (the search index's) count in RSS too, and the kernel takes
    // them back under pressure; the heap is what the process holds.
    println!(
        "  of which anonymous (heap) {:.0} MiB, mapped files {:.0} MiB",
        status_kib("RssAnon:") as f64 / 1024.0,
        status_kib("RssFile:") as f64 / 1024.0
    );
    let how = bound.started();
    let saved = std::fs::metadata(dir.join("archive/state/web-ui.state")).map_or(0, |m| m.len());
    println!(
        "  {}; {} records read from the log; saved state now {:.0} MiB",
        match how.restored_through {
            Some(n) => format!("saved state read back through record {n}"),
            None => "no saved state used".to_string(),
        },
        how.records_read,
        saved as f64 / (1 << 20) as f64
    );
    let (cookie, conversation) = rt.block_on(async {
        let form = send(&app, Method::GET, "/login", "", None).await;
        let login = form.cookies.join("; ");
        let token = csrf_of(&form.body);
        let form = serde_urlencoded::to_string([
            ("user", "olivia"),
            ("password", PASSWORD),
            ("csrf", token.as_str()),
        ])?;
        let r = send(&app, Method::POST, "/login", &login, Some(form)).await;
        if r.status != StatusCode::SEE_OTHER {
            return Err(format!("sign-in refused: {}", r.status).into());
        }
        let cookie = r
            .cookies
            .iter()
            .find(|c| c.starts_with("custos_session="))
            .cloned()
            .ok_or("no session cookie")?;
        // Conversations to open: the queue's first items.
        let queue = send(&app, Method::GET, "/queue?status=all", &cookie, None).await;
        let targets = conversation_links(&queue.body);
        if targets.is_empty() {
            return Err("the queue lists no conversation".into());
        }
        // A page about halfway down the queue (25 items a page; the heading counts them).
        let items: usize = queue
            .body
            .split("<span class=\"count\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let deep = items / 2 / 25;
        // Conversations of messages halfway back: their rows are long out of memory.
        let deep_queue = send(
            &app,
            Method::GET,
            &format!("/queue?status=all&page={deep}"),
            &cookie,
            None,
        )
        .await;
        let old = conversation_links(&deep_queue.body);
        if old.is_empty() {
            return Err("the queue's deep page lists no conversation".into());
        }
        let pages: Vec<(&str, Vec<String>)> = vec![
            ("queue, first page", vec!["/queue".into()]),
            (
                "queue, page filtered by rule",
                vec!["/queue?status=all&rule=insider".into()],
            ),
            (
                "queue, a deep page",
                vec![format!("/queue?status=all&page={deep}")],
            ),
            ("dashboard", vec!["/".into()]),
            (
                "conversation",
                targets
                    .iter()
                    .map(|t| format!("/conversation/{t}"))
                    .collect(),
            ),
            (
                "conversation, halfway back",
                old.iter().map(|t| format!("/conversation/{t}")).collect(),
            ),
            ("search, a word", vec!["/search?q=budget".into()]),
        ];
        println!("{:<30} {:>9} {:>9}", "page (40 each)", "p50 ms", "p99 ms");
        for (name, uris) in &pages {
            let mut ms = Vec::new();
            for i in 0..40 {
                let uri = &uris[i % uris.len()];
                let t = Instant::now();
                let p = send(&app, Method::GET, uri, &cookie, None).await;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                if p.status != StatusCode::OK {
                    return Err(format!("{uri}: {}", p.status).into());
                }
            }
            ms.sort_by(f64::total_cmp);
            println!(
                "{name:<30} {:>9.2} {:>9.2}",
                percentile(&ms, 0.5),
                percentile(&ms, 0.99)
            );
        }
        // A load like an hour of officers' work, bounded in count and time: every page
        // above in turn with the searches of a compliance lexicon, each with a
        // participant and a date range too.
        let searches = [
            "budget",
            "\"client meeting\"",
            "guarant*",
            "risk OR trade OR quote OR memo OR draft",
            "price NEAR/5 order",
            "reveiw~1",
        ];
        let mut load: Vec<String> = pages.iter().flat_map(|(_, uris)| uris.clone()).collect();
        for q in searches {
            for scoped in [q.to_string(), format!("{q} from:user7@example.test after:2020-01-01")] {
                load.push(format!(
                    "/search?q={}",
                    serde_urlencoded::to_string([("q", scoped.as_str())])?
                        .trim_start_matches("q=")
                ));
            }
        }
        let began = Instant::now();
        let mut served = 0usize;
        let mut slowest = 0f64;
        while served < LOAD_REQUESTS && began.elapsed() < LOAD_TIME {
            let uri = &load[served % load.len()];
            let t = Instant::now();
            let p = send(&app, Method::GET, uri, &cookie, None).await;
            slowest = slowest.max(t.elapsed().as_secs_f64() * 1e3);
            if p.status != StatusCode::OK {
                return Err(format!("{uri}: {}", p.status).into());
            }
            served += 1;
        }
        println!(
            "load: {served} pages and searches in {:.1} s (slowest {slowest:.1} ms); RSS after it {:.0} MiB (anonymous {:.0} MiB)",
            began.elapsed().as_secs_f64(),
            status_kib("VmRSS:") as f64 / 1024.0,
            status_kib("RssAnon:") as f64 / 1024.0
        );
        let conversation = format!("/conversation/{}", targets[0]);
        Ok::<_, Box<dyn std::error::Error>>((cookie, conversation))
    })?;
    // A conversation while the state is saved (as `serve` does hourly), with a message
    // arriving before each view: the page first applies what the log gained, as review
    // actions do.
    let (saved_in, during) = std::thread::scope(|scope| {
        let saver = scope.spawn(|| {
            let t = Instant::now();
            bound.save_state_blocking();
            t.elapsed()
        });
        let mut ms = Vec::new();
        let mut k = 0u64;
        while !saver.is_finished() && ms.len() < 10_000 {
            k += 1;
            let record = copy(
                Direction::Outbound,
                ("bench@example.test/desk".into(), "peer@example.test".into()),
                "chat",
                "arriving while the state is saved",
                &format!("{k:016x}{k:016x}"),
                "bench@example.test/desk".into(),
                None,
            );
            let t = Instant::now();
            let status = rt.block_on(async {
                archive.append(record).await?;
                Ok::<_, custos_archive::AppendError>(
                    send(&app, Method::GET, &conversation, &cookie, None)
                        .await
                        .status,
                )
            })?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            if status != StatusCode::OK {
                return Err(format!("{conversation} during the save: {status}").into());
            }
        }
        let saved_in = saver.join().map_err(|_| "the save panicked")?;
        ms.sort_by(f64::total_cmp);
        Ok::<_, Box<dyn std::error::Error>>((saved_in, ms))
    })?;
    println!(
        "conversation while the state is saved ({:.2} s): {} views, p50 {:.2} ms, p99 {:.2} ms, slowest {:.2} ms (each after one append)",
        saved_in.as_secs_f64(),
        during.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or(0.0)
    );
    println!(
        "RSS after the pages: {:.0} MiB (anonymous {:.0} MiB, mapped files {:.0} MiB)",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("RssAnon:") as f64 / 1024.0,
        status_kib("RssFile:") as f64 / 1024.0
    );
    Ok(())
}

/// A start as `custos serve` makes it: how long until pages are served, and, when the
/// state is built in the background, until it has caught up (then the server stops,
/// which saves the state).
fn start(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (master, signing) = keys(dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let users = dir.join("users.json");
    if !users.exists() {
        add_user(&users, "olivia", Role::Officer, PASSWORD, &[])?;
    }
    let started = Instant::now();
    let archive = Archive::open(ArchiveConfig::new(dir.join("archive"), master, signing))?;
    let cfg = WebConfig::new("127.0.0.1:0".parse()?, users);
    let bound = rt.block_on(custos_web_ui::bind(cfg, archive))?;
    let serving = started.elapsed();
    let how = bound.started();
    println!(
        "pages served after {:.2} s ({}; {} records read before serving{}); RSS {:.0} MiB",
        serving.as_secs_f64(),
        match how.restored_through {
            Some(n) => format!("saved state taken back through record {n}"),
            None => "no saved state used".to_string(),
        },
        how.records_read,
        if how.in_background {
            ", the rest in the background"
        } else {
            ""
        },
        status_kib("VmRSS:") as f64 / 1024.0
    );
    let building = bound.building_watch();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(bound.run(async {
        let _ = stopped.await;
    }));
    // Bounded: a state that has not caught up in an hour is reported as such.
    while building() && started.elapsed() < Duration::from_secs(3600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let built = started.elapsed();
    println!(
        "state {} after {:.2} s; RSS {:.0} MiB (peak {:.0} MiB)",
        if building() {
            "still not whole"
        } else {
            "whole"
        },
        built.as_secs_f64(),
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
    let _ = stop.send(());
    rt.block_on(served)??;
    println!(
        "stopped (state saved) after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; nothing else starts with dashes here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let usage = "usage: ui-bench generate DIR RECORDS | ui-bench measure DIR | ui-bench start DIR";
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["generate", dir, n] => generate(
            &PathBuf::from(dir),
            n.parse()
                .map_err(|_| format!("not a record count: {n:?}"))?,
        ),
        ["measure", dir] => measure(&PathBuf::from(dir)),
        ["start", dir] => start(&PathBuf::from(dir)),
        // `cargo test --benches` runs it without arguments: a small round trip.
        [] => {
            let dir = tempfile::tempdir()?;
            generate(dir.path(), 2_000)?;
            measure(dir.path())
        }
        _ => Err(usage.into()),
    }
}
