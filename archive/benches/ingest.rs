//! Ingest and search benchmark (prints figures; not a timed test).
//!
//! `CUSTOS_BENCH_RECORDS` (default 20000; use 1000000 for the full run) realistic
//! messages, made before the clock starts, are appended by
//! `CUSTOS_BENCH_CONCURRENCY` (default 64) concurrent tasks, each keeping
//! `CUSTOS_BENCH_WINDOW` (default 1) submissions in flight as a pipelining proxy
//! direction does (1: each append awaited before the next); then records/s, ack
//! latency percentiles and search latency are printed.
//! `CUSTOS_BENCH_VOCAB=N` draws the bodies from N made-up words by Zipf's law
//! instead of from a 34-word list. `CUSTOS_BENCH_LOG_ONLY=1` measures only the log
//! writer by itself.
//! Run: `cargo bench -p custos-archive --bench ingest`.

use std::time::{Duration, Instant};

use custos_archive::*;

const WORDS: &[&str] = &[
    "meeting",
    "invoice",
    "tomorrow",
    "report",
    "client",
    "budget",
    "lunch",
    "call",
    "review",
    "contract",
    "deadline",
    "approve",
    "shipment",
    "quarter",
    "forecast",
    "trade",
    "order",
    "price",
    "risk",
    "update",
    "please",
    "thanks",
    "send",
    "the",
    "and",
    "for",
    "with",
    "about",
    "today",
    "agenda",
    "draft",
    "final",
    "numbers",
    "compliance",
];

/// `CUSTOS_BENCH_VOCAB=N`: bodies draw from N made-up words by a Zipf law (rank r
/// about as frequent as 1/r), as natural language does, instead of from [`WORDS`].
fn vocabulary() -> Option<u64> {
    static VOCAB: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *VOCAB.get_or_init(|| {
        std::env::var("CUSTOS_BENCH_VOCAB")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 1)
    })
}

/// The made-up word of rank `r`: 3 to 10 lowercase letters.
fn made_up(r: u64) -> String {
    let mut x = r.wrapping_mul(0x9e3779b97f4a7c15) ^ 0x5851f42d4c957f2d;
    let len = 3 + (x % 8) as usize;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect()
}

fn body(i: u64) -> String {
    let mut x = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = 6 + (x % 18) as usize;
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        match vocabulary() {
            Some(v) => {
                // P(rank ≤ k) = ln k / ln v: Zipf's law with exponent 1.
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                words.push(made_up((v as f64).powf(u) as u64));
            }
            None => words.push(WORDS[(x % WORDS.len() as u64) as usize].to_owned()),
        }
    }
    words.join(" ")
}

fn record(i: u64) -> NewRecord {
    let u = i % 500;
    let peer = (i * 7) % 500;
    let text = body(i);
    NewRecord::Message(MessageRecord {
        direction: if i.is_multiple_of(2) { Direction::Outbound } else { Direction::Inbound },
        session: SessionId(format!("sess-{u}")),
        id: Some(format!("id-{i}")),
        origin_id: Some(format!("origin-{i}")),
        stanza: format!("<message from='user{u}@corp.example/desktop' to='user{peer}@corp.example' type='chat' id='id-{i}'><body>{text}</body><origin-id xmlns='urn:xmpp:sid:0' id='origin-{i}'/></message>").into_bytes(),
        outcome: Outcome {
            action: if i.is_multiple_of(97) { Action::Flag } else { Action::Allow },
            rules: if i.is_multiple_of(97) { vec!["watch-list".into()] } else { vec![] },
            ..Outcome::allowed()
        },
        // Two copies of each logical message (the sender's leg, the recipient's), as the
        // relay records them.
        capture: Capture {
            identity: format!("{:032x}", (i / 2).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ..Capture::default()
        },
        ..MessageRecord::chat(
            format!("user{u}@corp.example/desktop"),
            format!("user{peer}@corp.example"),
            text,
        )
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn main() {
    let n: u64 = std::env::var("CUSTOS_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let conc: u64 = std::env::var("CUSTOS_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let window: usize = std::env::var("CUSTOS_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("archive");
    let master = MasterKey::from_bytes([7; 32]);
    if std::env::var_os("CUSTOS_BENCH_LOG_ONLY").is_some() {
        log_alone(n, &tmp.path().join("log-alone"), &master);
        return;
    }
    let signing = SigningKey::from_bytes(&[8; 32]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let archive =
        Archive::open(ArchiveConfig::new(dir.clone(), master.clone(), signing)).expect("open");

    // Each appender's records are made before the clock starts: what is measured is
    // the archive's work, not the formatting of made-up messages.
    let made: Vec<Vec<NewRecord>> = (0..conc)
        .map(|t| (t..n).step_by(conc as usize).map(record).collect())
        .collect();
    let start = Instant::now();
    let mut lat: Vec<Duration> = rt.block_on(async {
        let tasks: Vec<_> = made
            .into_iter()
            .map(|records| {
                let a = archive.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(records.len());
                    let mut flight = std::collections::VecDeque::with_capacity(window);
                    let mut records = records.into_iter().peekable();
                    while records.peek().is_some() || !flight.is_empty() {
                        if flight.len() < window {
                            if let Some(r) = records.next() {
                                flight.push_back((Instant::now(), a.submit(r)));
                                continue;
                            }
                        }
                        if let Some((s, acked)) = flight.pop_front() {
                            acked.await.expect("append");
                            lat.push(s.elapsed());
                        }
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n as usize);
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let elapsed = start.elapsed();
    lat.sort_unstable();
    println!(
        "ingest: {n} records, {conc} concurrent appenders with {window} in flight each, {:.2} s",
        elapsed.as_secs_f64()
    );
    println!("ingest: {:.0} records/s", n as f64 / elapsed.as_secs_f64());
    println!(
        "ack latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        pct(&lat, 1.0).as_secs_f64() * 1e3
    );

    // Wait until the indexer has caught up (NRT commit interval).
    let wait = Instant::now();
    while archive
        .search("", 1)
        .map(|h| h.first().map(|h| h.seq.0))
        .ok()
        .flatten()
        != Some(n)
    {
        if wait.elapsed() > Duration::from_secs(600) {
            println!("index did not catch up");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "index caught up {:.2} s after the last ack",
        wait.elapsed().as_secs_f64()
    );

    let queries = [
        "invoice",
        "\"contract deadline\"",
        "from:user42@corp.example",
        "with:user7@corp.example budget",
        "action:flag rule:watch-list",
        "direction:inbound compliance -lunch",
        "after:2000-01-01 forecast",
    ];
    for q in queries {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..20 {
            let s = Instant::now();
            hits = archive.search(q, 50).expect("search").len();
            times.push(s.elapsed());
        }
        times.sort_unstable();
        println!(
            "search {q:?}: {hits} hits (limit 50), p50 {:.2} ms, p99 {:.2} ms",
            pct(&times, 0.5).as_secs_f64() * 1e3,
            pct(&times, 0.99).as_secs_f64() * 1e3
        );
    }
    rt.block_on(archive.close()).expect("close");
    let s = Instant::now();
    let report = verify(
        &dir,
        Some(&master),
        &SigningKey::from_bytes(&[8; 32]).verifying_key(),
        |_, _| {},
    );
    println!(
        "verify: {} records, clean={}, {:.2} s",
        report.records,
        report.is_clean(),
        s.elapsed().as_secs_f64()
    );

    log_alone(n, &tmp.path().join("log-alone"), &master);
}

/// The log writer by itself (what the writer thread does, without the indexer beside it
/// or appenders to answer): `n` records in batches of 256, one write and one fsync each.
fn log_alone(n: u64, dir: &std::path::Path, master: &MasterKey) {
    use custos_archive::log::{LogLimits, LogWriter};
    let cfg = ArchiveConfig::new(
        dir.to_owned(),
        master.clone(),
        SigningKey::from_bytes(&[8; 32]),
    );
    std::fs::create_dir_all(dir).expect("log dir");
    let storage = std::sync::Arc::new(custos_archive::storage::FileStorage::new(dir));
    let limits = LogLimits {
        segment_max_bytes: cfg.segment_max_bytes,
        segment_max_age: cfg.segment_max_age,
        checkpoint_every: cfg.checkpoint_every,
    };
    let (mut log, _) =
        LogWriter::open(storage, cfg.master_key, cfg.signing_key, limits).expect("open log");
    let mut batches: Vec<Vec<NewRecord>> = Vec::new();
    let mut i = 0;
    while i < n {
        let end = (i + 256).min(n);
        batches.push((i..end).map(record).collect());
        i = end;
    }
    let start = Instant::now();
    let cpu = thread_cpu();
    for batch in batches {
        log.append_batch(batch).expect("append");
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu().zip(cpu).map(|(after, before)| after - before);
    log.finish().expect("seal");
    println!(
        "log writer alone: {n} records in batches of 256, {:.0} records/s, {} CPU per record",
        n as f64 / elapsed.as_secs_f64(),
        cpu.map_or_else(
            || "unknown".to_owned(),
            |c| format!("{:.2} µs", c.as_secs_f64() * 1e6 / n as f64)
        ),
    );
}

/// The CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux), which
/// the machine's other work does not move as it moves the wall clock.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}
