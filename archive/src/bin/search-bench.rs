//! Search benchmark: `search-bench [RECORDS] [--python PATH] [--dir DIR] [--profile
//! KIND SECONDS]` (default 200000 records) generates an archive of chat among 1,000 users (a Zipf-distributed
//! vocabulary of 30,000 words, 5–25 words a message, compliance terms in about one
//! message in 200, a few percent flagged), appends it through `Archive` as the proxy
//! does, waits until the index covers it, and then times searches of every kind the
//! query language has — a word, a phrase, a prefix, an OR-list, NEAR, a fuzzy term —
//! alone and combined with a participant and a date range: p50 and p99 of
//! `ArchiveReader::search` (50 newest hits, decrypted from the log, as the CLI and web
//! UI ask). The same corpus goes into SQLite FTS5 (Python's sqlite3, with a participant
//! and time column) in the same run and the same queries run there, and the ratio is
//! printed. Also printed: ingest rate, index and vocabulary size on disk, how long the
//! first pattern search takes to read the vocabulary, and the process's resident memory
//! after the searches. `--profile` then runs the queries of one kind (a name from the
//! table) over and over for that many seconds, for a profiler to sample.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use custos_archive::*;

#[path = "shared/mod.rs"]
mod shared;
use shared::block_on;

#[path = "shared/corpus.rs"]
mod corpus;
use corpus::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut records: u64 = 200_000;
    let mut python = PathBuf::from("python3");
    let mut dir: Option<PathBuf> = None;
    let mut profile: Option<(String, Duration)> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--python" => python = args.next().ok_or("--python needs a path")?.into(),
            "--dir" => dir = Some(args.next().ok_or("--dir needs a path")?.into()),
            "--profile" => {
                let kind = args.next().ok_or("--profile needs a kind and seconds")?;
                let secs: u64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--profile needs a number of seconds after the kind")?;
                profile = Some((kind, Duration::from_secs(secs)));
            }
            n => {
                records = n
                    .parse()
                    .map_err(|_| format!("not a record count: {n:?}"))?
            }
        }
    }
    let tmp = tempfile_dir()?;
    let dir = dir.unwrap_or_else(|| tmp.join("archive"));
    let master = MasterKey::from_bytes([5; 32]);
    let signing = SigningKey::from_bytes(&[6; 32]);

    let mut rng = Rng(0x0c05_7005);
    let corpus = Corpus::new(&mut rng);
    let mut rows: Vec<(u64, u64, String)> = Vec::with_capacity(records as usize);

    // Ingest, as the proxy submits: many appends in flight.
    let archive = Archive::open(ArchiveConfig::new(dir.clone(), master.clone(), signing))?;
    let started = Instant::now();
    let mut times = ingest(&archive, &corpus, &mut rng, records, |from, to, body| {
        rows.push((from, to, body.to_owned()))
    })?;
    let ingest = started.elapsed();
    // The same corpus for FTS5: acknowledgements came in submission order, so row i
    // has time i.
    let tsv_path = tmp.join("corpus.tsv");
    {
        let mut tsv = std::io::BufWriter::new(std::fs::File::create(&tsv_path)?);
        for (i, ((from, to, body), t)) in rows.iter().zip(&times).enumerate() {
            writeln!(tsv, "{}\t{from}\t{to}\t{t}\t{body}", i + 1)?;
        }
    }
    drop(rows);
    // Until the index covers every record.
    loop {
        let s = archive.reader().search_covered("kickback", 1)?;
        if s.uncovered.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let indexed = started.elapsed();
    block_on(archive.close())?;
    println!(
        "corpus: {records} messages; appended in {:.1} s ({:.0} msg/s), searchable after {:.1} s",
        ingest.as_secs_f64(),
        records as f64 / ingest.as_secs_f64(),
        indexed.as_secs_f64()
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let (log, index, vocab) = (
        du(&dir.join("segments")),
        du(&dir.join("index")),
        du(&dir.join("vocabulary")),
    );
    println!(
        "on disk: log {:.1} MiB, blind index {:.1} MiB, sealed vocabulary {:.2} MiB",
        mib(log),
        mib(index),
        mib(vocab)
    );

    // Date range: the middle half of the ingest.
    times.sort_unstable();
    let (t0, t1) = (
        times[times.len() / 4],
        times[times.len() * 3 / 4].saturating_add(1),
    );
    let when = format!("after:{} before:{}", Timestamp(t0), Timestamp(t1));
    let kinds = kinds(&corpus, &mut rng, 40);

    let reader = ArchiveReader::open(&dir, &master)?;
    // The first searches of a process open files and fill caches: ten words of
    // their own go first, untimed (the FTS5 side does the same).
    for w in corpus.words.iter().skip(3000).take(10) {
        reader.search(w, 50)?;
    }
    let t = Instant::now();
    reader.search("zzzz*", 1)?;
    println!(
        "first pattern search (reads the vocabulary): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // FTS5 over the same corpus, in the same run.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fts5_search.py");
    let queries_path = tmp.join("queries.tsv");
    {
        let mut q = std::io::BufWriter::new(std::fs::File::create(&queries_path)?);
        for w in corpus.words.iter().skip(3000).take(10) {
            writeln!(q, "warm-up\t{w}\t{t0}\t{t1}")?;
        }
        for k in &kinds {
            for (_, f) in &k.queries {
                if let Some(f) = f {
                    writeln!(q, "{}\t{}\t{t0}\t{t1}", k.name, f)?;
                }
            }
        }
    }
    let fts = std::process::Command::new(&python)
        .arg(&script)
        .arg(&tsv_path)
        .arg(&queries_path)
        .output();
    let fts = match fts {
        Ok(o) if o.status.success() => {
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
        }
        Ok(o) => {
            eprintln!(
                "FTS5 side failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            serde_json::Value::Null
        }
        Err(e) => {
            eprintln!("FTS5 side not run ({}): {e}", python.display());
            serde_json::Value::Null
        }
    };

    println!(
        "{:<22} {:>8} {:>9} {:>8} {:>9} {:>10} {:>9}",
        "query (40 each)", "p50 ms", "p99 ms", "hits", "FTS5 p50", "FTS5 p99", "p99 ratio"
    );
    for k in &kinds {
        let mut ms = Vec::with_capacity(k.queries.len());
        let mut hits = 0usize;
        for (q, _) in &k.queries {
            let q = q.replace("__WHEN__", &when);
            let t = Instant::now();
            let h = reader.search(&q, 50)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            hits += h.len();
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
        let f = fts.get(k.name);
        let fp = |p: &str| f.and_then(|f| f.get(p)).and_then(|v| v.as_f64());
        let (f50, f99) = (fp("p50"), fp("p99"));
        let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<22} {:>8.2} {:>9.2} {:>8.1} {:>9} {:>10} {:>9}",
            k.name,
            p50,
            p99,
            hits as f64 / k.queries.len() as f64,
            show(f50),
            show(f99),
            f99.map_or("n/a".to_string(), |f| format!("{:.2}x", f / p99)),
        );
    }
    println!("(ratio = FTS5 p99 / Custos p99: above 1 means Custos answers faster)");
    println!("after the searches: {}", shared::resident());
    if let Some((name, secs)) = profile {
        let k = kinds
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| format!("--profile: no query kind named {name:?}"))?;
        let (start, mut runs) = (Instant::now(), 0u64);
        while start.elapsed() < secs {
            for (q, _) in &k.queries {
                reader.search(&q.replace("__WHEN__", &when), 50)?;
                runs += 1;
            }
        }
        println!(
            "profile {name}: {runs} searches, {:.2} ms each",
            start.elapsed().as_secs_f64() * 1e3 / runs.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("custos-search-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
