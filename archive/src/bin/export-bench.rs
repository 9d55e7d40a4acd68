//! Export benchmark: `export-bench [RECORDS]` (default 100000) generates an
//! archive of that many messages, exports it, and prints records/s and the
//! export's peak memory (VmHWM). The export runs in a child process so the
//! peak covers the export alone. Then it removes the search index and opens the
//! archive as `serve` does, printing how long the open took and how long until
//! every search covers the whole log again (the rebuild runs in the background),
//! and two narrow query exports through that index and by testing every record.
//! Last, retention: how long the expiry job takes to plan over the archive (with and
//! without a hold to check), to shred every segment, and what alternating retention
//! classes cost the append path (each change of class starts a segment).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_archive::export::{export_with, ExportOptions, ExportRequest};
use custos_archive::log::{LogLimits, LogWriter};
use custos_archive::storage::FileStorage;
use custos_archive::*;

#[path = "shared/mod.rs"]
mod shared;
use shared::block_on;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn keys() -> (MasterKey, SigningKey) {
    (
        MasterKey::from_bytes([1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    )
}

fn message(k: u64, class: &str) -> NewRecord {
    NewRecord::Message(MessageRecord {
        session: SessionId(format!("s{}", k % 50)),
        id: Some(format!("id{k}")),
        capture: Capture {
            retention_class: class.into(),
            ..Capture::default()
        },
        ..MessageRecord::chat(
            format!("user{}@example.test/desk", k % 100),
            format!("user{}@example.test", (k * 7) % 100),
            format!("message {k}: retention bench"),
        )
    })
}

/// Expiry over the generated archive: planning (every segment due), planning with a
/// hold that must be checked against every due segment's records, and shredding all.
fn expiry(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use custos_archive::retention::{HoldSpec, RetentionPolicy, Span, HOLD_PLACE};
    let (master, signing) = keys();
    let policy = RetentionPolicy::new(Span::Secs(1), Default::default())?;
    std::thread::sleep(Duration::from_millis(1100));
    let a = Archive::open(ArchiveConfig::new(dir.to_path_buf(), master, signing))?;
    let t = Instant::now();
    let plan = a.reader().expiry_plan(&policy, Timestamp::now())?;
    println!(
        "expiry plan, no hold: {:.2} s for {} sealed segment(s), {} due",
        t.elapsed().as_secs_f64(),
        plan.segments.len(),
        plan.due().count()
    );
    let spec = HoldSpec::new(
        "bench",
        &["nobody@example.test".into()],
        Some("trade"),
        None,
        None,
    )?;
    block_on(a.append(NewRecord::Event(EventRecord::Audit {
        actor: "bench".into(),
        action: HOLD_PLACE.into(),
        detail: serde_json::to_string(&spec)?,
    })))?;
    let t = Instant::now();
    let plan = a.reader().expiry_plan(&policy, Timestamp::now())?;
    println!(
        "expiry plan, one hold (custodian + query) checked: {:.2} s, {} due",
        t.elapsed().as_secs_f64(),
        plan.due().count()
    );
    let t = Instant::now();
    let r = block_on(a.run_expiry(&policy, Timestamp::now(), "bench", false))?;
    println!(
        "expiry run: {} segment(s) shredded in {:.2} s (plan included)",
        r.shredded.len(),
        t.elapsed().as_secs_f64()
    );
    block_on(a.close())?;
    Ok(())
}

/// With `CUSTOS_BENCH_S3=http://host:port` (an S3 server with Object Lock, e.g. moto's
/// server mode): how long the object sync takes to store the generated archive, and how
/// long a node with an empty directory takes to verify it and to build its index from
/// the bucket.
fn bucket(dir: &Path, fresh: &Path, endpoint: &str) -> Result<(), Box<dyn std::error::Error>> {
    use custos_archive::bucket::{Credentials, Endpoint, LockMode, ObjectStoreConfig, Remote};
    let cfg = ObjectStoreConfig {
        endpoint: Endpoint {
            url: endpoint.into(),
            bucket: format!("custos-bench-{}", std::process::id()),
            region: "us-east-1".into(),
            path_style: true,
        },
        credentials: Credentials {
            access_key: "bench".into(),
            secret_key: zeroize::Zeroizing::new("bench-secret".into()),
        },
        prefix: "custos/".into(),
        node: None,
        lock_mode: LockMode::Governance,
        keep_local: true,
        cache_bytes: 256 << 20,
    };
    let remote = Remote::connect(&cfg)?;
    remote.client.create_bucket_with_lock()?;
    let (master, signing) = keys();
    let public = signing.verifying_key();
    let mut c = ArchiveConfig::new(dir.to_path_buf(), master.clone(), signing);
    c.object_store = Some(remote.clone());
    let a = Archive::open(c)?;
    let policy = custos_archive::retention::RetentionPolicy::keep_forever();
    let bytes: u64 = std::fs::read_dir(dir.join("segments"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let t = Instant::now();
    let r = block_on(a.sync_objects(&remote, &policy, Timestamp::now()))?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "object sync: {} segment(s), {:.1} MiB in {secs:.2} s ({:.1} MiB/s, chain read and plan included)",
        r.stored.len(),
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64 / secs
    );
    block_on(a.close())?;
    std::fs::create_dir_all(fresh)?;
    let storage = custos_archive::bucket::storage_for(fresh, Some(&remote));
    let t = Instant::now();
    let v = verify_in(fresh, storage.as_ref(), Some(&master), &public, |_, _| {});
    println!(
        "verify from the bucket on an empty node: {} records in {:.2} s ({} problems)",
        v.records,
        t.elapsed().as_secs_f64(),
        v.problems.len()
    );
    match &r.index {
        Some(Ok(u)) => println!(
            "  of which the index copy: {} file(s), {:.1} MiB",
            u.files,
            u.bytes as f64 / (1 << 20) as f64
        ),
        Some(Err(e)) => println!("  the index copy was not put: {e}"),
        None => println!("  no index copy"),
    }
    custos_archive::bucket::register(fresh, remote.clone());
    let t = Instant::now();
    let n = reindex(fresh, &master, |_, _| {})?;
    println!(
        "index built from the bucket's segments on an empty node: {n} messages in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let copy = fresh.with_extension("copy");
    std::fs::create_dir_all(&copy)?;
    custos_archive::bucket::register(&copy, remote);
    let t = Instant::now();
    let done = custos_archive::update_index(&copy, &master, |_, _| {})?;
    println!(
        "index taken from the bucket's copy on an empty node: covers seq {} in {:.2} s ({} record(s) indexed from the segments after it)",
        done.through,
        t.elapsed().as_secs_f64(),
        done.indexed
    );
    Ok(())
}

/// Appends one record per batch, alternating classes or not: what a change of class
/// costs the append path.
fn class_switching(dir: &Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    for (label, classes) in [
        ("one class", ["", ""]),
        ("alternating classes", ["", "research"]),
    ] {
        let (master, signing) = keys();
        let sub = dir.join(label.replace(' ', "-"));
        let storage: Arc<dyn storage::Storage> = Arc::new(FileStorage::new(&sub));
        let limits = LogLimits {
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(86_400),
            checkpoint_every: 1000,
        };
        let (mut log, _) = LogWriter::open(storage, master, signing, limits)?;
        let t = Instant::now();
        for k in 0..n {
            log.append_batch(vec![message(k, classes[(k % 2) as usize])])?;
        }
        let secs = t.elapsed().as_secs_f64();
        log.finish()?;
        let segments = std::fs::read_dir(sub.join("segments"))?.count();
        println!(
            "append, one record per batch, {label}: {:.0} records/s, {segments} segment(s) for {n} records",
            n as f64 / secs
        );
    }
    Ok(())
}

fn generate(dir: &Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (master, signing) = keys();
    let storage: Arc<dyn storage::Storage> = Arc::new(FileStorage::new(dir));
    let limits = LogLimits {
        segment_max_bytes: 64 << 20,
        segment_max_age: Duration::from_secs(86_400),
        checkpoint_every: 1000,
    };
    let (mut log, _) = LogWriter::open(storage, master, signing, limits)?;
    let mut i = 0u64;
    while i < n {
        let batch: Vec<NewRecord> = (i..n.min(i + 4096))
            .map(|k| {
                NewRecord::Message(MessageRecord {
                    session: SessionId(format!("s{}", k % 50)),
                    id: Some(format!("id{k}")),
                    stanza: format!("<message to='user@example.test' id='id{k}' type='chat'><body>message {k}</body></message>").into_bytes(),
                    outcome: Outcome {
                        action: if k % 50 == 0 { Action::Flag } else { Action::Allow },
                        rules: if k % 50 == 0 { vec!["insider".into()] } else { vec![] },
                        ..Outcome::allowed()
                    },
                    ..MessageRecord::chat(
                        format!("user{}@example.test/desk", k % 100),
                        format!("user{}@example.test", (k * 7) % 100),
                        format!("message {k}: please confirm the trade of {} shares at {}", k % 977, k % 113),
                    )
                })
            })
            .collect();
        i += batch.len() as u64;
        log.append_batch(batch)?;
        log.maybe_roll()?;
    }
    log.finish()?;
    Ok(())
}

/// Opens the archive with its index removed: the open's time, then the time until
/// a search reports no uncovered records. Then opens it again with its index whole,
/// as a restart does, and times that open.
fn open_with_rebuild(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (master, signing) = keys();
    if dir.join("index").exists() {
        std::fs::remove_dir_all(dir.join("index"))?;
    }
    let t = Instant::now();
    let a = Archive::open(ArchiveConfig::new(dir.to_path_buf(), master, signing))?;
    let opened = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while a.search_covered("trade", 10)?.uncovered.is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "open with the index removed: {:.3} s to serve, {:.2} s until search covers the log",
        opened.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    block_on(a.close())?;
    let index_bytes: u64 = std::fs::read_dir(dir.join("index"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let (master, signing) = keys();
    let t = Instant::now();
    let a = Archive::open(ArchiveConfig::new(dir.to_path_buf(), master, signing))?;
    let opened = t.elapsed();
    block_on(a.close())?;
    println!(
        "open with the index whole ({:.1} MiB, page cache warm): {:.3} s to serve",
        index_bytes as f64 / (1024.0 * 1024.0),
        opened.as_secs_f64()
    );
    Ok(())
}

/// Narrow query exports: one person's messages with a phrase (about one in 100,000
/// records), and one rule's hits with a phrase (one in 5,650).
const NARROW: [&str; 2] = [
    "from:user7@example.test \"trade of 5\"",
    "rule:insider \"shares at 12\"",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("--export"), Some(dir), Some(out)) =
        (args.get(1).map(String::as_str), args.get(2), args.get(3))
    {
        let (master, signing) = keys();
        let query = args.get(4).cloned();
        let options = ExportOptions {
            scan: args.get(5).is_some_and(|a| a == "--scan"),
            ..ExportOptions::default()
        };
        let t = Instant::now();
        let s = export_with(
            Path::new(dir),
            &master,
            &signing,
            Path::new(out),
            &ExportRequest {
                query: query.clone(),
                ..ExportRequest::default()
            },
            &options,
            |_, _| {},
        )?;
        let secs = t.elapsed().as_secs_f64();
        if let Some(q) = query {
            println!(
                "export of {q:?}: {} records in {secs:.2} s, peak RSS (VmHWM) {} MiB; selected by {}: {} read ({} not hashed), {} decrypted, {} in segments not read",
                s.records,
                vm_hwm_kib() / 1024,
                s.selected_by,
                s.scanned,
                s.skimmed,
                s.decrypted,
                s.skipped
            );
            return Ok(());
        }
        let bytes: u64 = s
            .files
            .iter()
            .filter_map(|p| std::fs::metadata(Path::new(out).join(p)).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "exported {} records in {secs:.2} s: {:.0} records/s, {} files, {:.1} MiB, peak RSS (VmHWM) {} MiB",
            s.records,
            s.records as f64 / secs,
            s.files.len(),
            bytes as f64 / (1 << 20) as f64,
            vm_hwm_kib() / 1024
        );
        let t = Instant::now();
        let r = verify_export(Path::new(out), &signing.verifying_key());
        println!(
            "verified {} records in {:.2} s ({} problems), peak RSS (VmHWM) {} MiB",
            r.records,
            t.elapsed().as_secs_f64(),
            r.problems.len(),
            vm_hwm_kib() / 1024
        );
        return Ok(());
    }
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let tmp = std::env::temp_dir().join(format!("custos-export-bench-{}", std::process::id()));
    let dir = tmp.join("archive");
    let t = Instant::now();
    generate(&dir, n)?;
    println!(
        "generated {n} records in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--export")
        .arg(&dir)
        .arg(tmp.join("out"))
        .status()?;
    open_with_rebuild(&dir)?;
    // Narrow exports, through the index the open rebuilt and by testing every record.
    for (i, q) in NARROW.iter().enumerate() {
        for scan in [false, true] {
            let out = tmp.join(format!("narrow-{i}-{scan}"));
            let mut child = std::process::Command::new(std::env::current_exe()?);
            child.arg("--export").arg(&dir).arg(&out).arg(q);
            if scan {
                child.arg("--scan");
            }
            if !child.status()?.success() {
                return Err(format!("narrow export of {q:?} failed").into());
            }
        }
    }
    if let Ok(endpoint) = std::env::var("CUSTOS_BENCH_S3") {
        bucket(&dir, &tmp.join("fresh"), &endpoint)?;
    }
    expiry(&dir)?;
    class_switching(&tmp.join("switching"), 2000)?;
    std::fs::remove_dir_all(&tmp)?;
    if !status.success() {
        return Err("export child failed".into());
    }
    Ok(())
}
