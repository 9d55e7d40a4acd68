//! The alternative to the blind index, measured: `encdir-bench [RECORDS] [--block-kib N]
//! [--rounds N] [--dir DIR]` (default 200000 records, 16 KiB blocks, 5 rounds).
//!
//! Generates search-bench's corpus (same generator, same seed, same query samples),
//! appends it through `Archive` as the proxy does and waits until the blind index
//! covers it. Then it rebuilds three indexes from the log, each the same way (records
//! read and decrypted in order, one writer thread, 50 MB, a commit every 10,000
//! records): the blind index (`reindex`, as `custos reindex` does), and a plain
//! tantivy index of the same messages — body text with positions, the participants as
//! raw strings, time as a fast i64, and the record's place in the log — once in an
//! [`EncryptedDirectory`] (AES-256-GCM blocks, keys from the master key) and once in
//! tantivy's `MmapDirectory` (plaintext, for reference). Printed: size on disk, build
//! rate, segments, the text field's share of the blind and the plain index (the blind
//! schema indexes more fields); the time of a fresh reader's first query; and p50/p99 of every
//! query kind of search-bench, alone and with a participant and a date range, each
//! sample run `--rounds` times: 50 newest hits, which for the tantivy indexes means
//! tantivy's own queries (term, phrase, regex prefix, union, regex phrase with slop 5,
//! fuzzy distance 1) sorted by the time fast field, and then, as the blind search does,
//! the 50 records read and decrypted from the log (the "index only" columns leave that
//! out).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use custos_archive::*;
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    BooleanQuery, FuzzyTermQuery, Occur, PhraseQuery, Query, RangeQuery, RegexPhraseQuery,
    RegexQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Schema, FAST, INDEXED, STRING, TEXT};
use tantivy::{
    Directory, Index, IndexReader, Order, ReloadPolicy, Searcher, TantivyDocument, Term,
};

#[path = "shared/mod.rs"]
mod shared;
use shared::block_on;

#[path = "shared/corpus.rs"]
mod corpus;
use corpus::*;

#[path = "shared/encdir.rs"]
mod encdir;
use encdir::{EncryptedDirectory, BLOCKS_DECRYPTED};

/// As the blind index's writer.
const WRITER_MEMORY: usize = 50_000_000;
/// As a rebuild of the blind index from the log commits.
const COMMIT_EVERY: u64 = 10_000;
const LIMIT: usize = 50;

#[derive(Clone, Copy)]
struct Fields {
    body: Field,
    participant: Field,
    time: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        body: b.add_text_field("body", TEXT),
        participant: b.add_text_field("participant", STRING),
        time: b.add_i64_field("time", INDEXED | FAST),
    };
    // Where the record is in the log, to read it as the blind search does.
    b.add_u64_field("seq", FAST);
    b.add_u64_field("seg", FAST);
    b.add_u64_field("off", FAST);
    (b.build(), f)
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Builds a plain-schema index of every message of the log in `directory`; returns
/// the seconds it took (log read and decrypted, documents added, commits, merges).
fn build(
    reader: &ArchiveReader,
    directory: Box<dyn Directory>,
) -> Result<(Index, f64), Box<dyn std::error::Error>> {
    let (schema, f) = schema();
    let started = Instant::now();
    let index = Index::create(directory, schema.clone(), Default::default())?;
    let (seq_f, seg_f, off_f) = (
        schema.get_field("seq")?,
        schema.get_field("seg")?,
        schema.get_field("off")?,
    );
    let mut w = index.writer_with_num_threads(1, WRITER_MEMORY)?;
    let mut n = 0u64;
    let mut failed: Option<tantivy::TantivyError> = None;
    reader.scan(1, |e: ChainEntry| {
        let Some(Record {
            time,
            content: NewRecord::Message(m),
            ..
        }) = e.record
        else {
            return Ok::<_, ReadError>(());
        };
        let mut d = TantivyDocument::new();
        d.add_text(f.body, m.body.as_deref().unwrap_or(""));
        d.add_text(f.participant, bare(&m.from));
        d.add_text(f.participant, bare(&m.to));
        d.add_i64(f.time, time.0);
        d.add_u64(seq_f, e.seq);
        d.add_u64(seg_f, e.segment);
        d.add_u64(off_f, e.offset);
        if let Err(err) = w.add_document(d) {
            failed.get_or_insert(err);
        }
        n += 1;
        if n.is_multiple_of(COMMIT_EVERY) {
            if let Err(err) = w.commit() {
                failed.get_or_insert(err);
            }
        }
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    w.commit()?;
    w.wait_merging_threads()?;
    Ok((index, started.elapsed().as_secs_f64()))
}

/// A tantivy index opened for searching, with its log-place columns per segment.
struct Side {
    searcher: Searcher,
    _reader: IndexReader,
    places: Vec<(Column<u64>, Column<u64>)>,
}

impl Side {
    fn open(directory: Box<dyn Directory>) -> Result<Side, Box<dyn std::error::Error>> {
        let index = Index::open(directory)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let searcher = reader.searcher();
        let mut places = Vec::new();
        for s in searcher.segment_readers() {
            let ff = s.fast_fields();
            places.push((ff.u64("seg")?, ff.u64("off")?));
        }
        Ok(Side {
            searcher,
            _reader: reader,
            places,
        })
    }

    /// The 50 newest matches' places in the log, newest first.
    fn search(&self, q: &dyn Query) -> tantivy::Result<Vec<(u64, u64)>> {
        let top = self.searcher.search(
            q,
            &TopDocs::with_limit(LIMIT).order_by_fast_field::<i64>("time", Order::Desc),
        )?;
        Ok(top
            .into_iter()
            .filter_map(|(_, a)| {
                let (seg, off) = &self.places[a.segment_ord as usize];
                Some((seg.first(a.doc_id)?, off.first(a.doc_id)?))
            })
            .collect())
    }
}

/// Reads the hits' records from the log, as the blind search does after its index.
fn fetch(reader: &ArchiveReader, places: &[(u64, u64)]) -> Result<usize, ReadError> {
    let mut n = 0;
    for &(seg, off) in places.iter().rev() {
        let r = reader.record_at(seg, off)?;
        if matches!(r.content, NewRecord::Message(_)) {
            n += 1;
        }
    }
    Ok(n)
}

/// The tantivy query for one of search-bench's samples (its Custos form, with
/// `__WHEN__` for the date range).
fn tantivy_query(f: Fields, q: &str, when: (i64, i64)) -> tantivy::Result<Box<dyn Query>> {
    if let Some(inner) = q.strip_prefix('(') {
        let (core, rest) = inner
            .split_once(") with:")
            .ok_or_else(|| tantivy::TantivyError::InvalidArgument(q.to_string()))?;
        let who = rest.split(' ').next().unwrap_or("");
        let range = RangeQuery::new(
            Bound::Included(Term::from_field_i64(f.time, when.0)),
            Bound::Excluded(Term::from_field_i64(f.time, when.1)),
        );
        return Ok(Box::new(BooleanQuery::new(vec![
            (Occur::Must, core_query(f, core)?),
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.participant, who),
                    IndexRecordOption::Basic,
                )),
            ),
            (Occur::Must, Box::new(range)),
        ])));
    }
    core_query(f, q)
}

fn core_query(f: Fields, q: &str) -> tantivy::Result<Box<dyn Query>> {
    let term = |w: &str| Term::from_field_text(f.body, w);
    if let Some((a, b)) = q.split_once(" NEAR/5 ") {
        // `a* NEAR/5 b`: the prefix as a regex, slop 5 (either order, a reversal costs 2).
        let a = format!("{}.*", a.trim_end_matches('*'));
        return Ok(Box::new(RegexPhraseQuery::new_with_offset_and_slop(
            f.body,
            vec![(0, a), (1, b.to_string())],
            5,
        )));
    }
    if q.contains(" OR ") {
        return Ok(Box::new(BooleanQuery::new(
            q.split(" OR ")
                .map(|w| {
                    let t: Box<dyn Query> =
                        Box::new(TermQuery::new(term(w), IndexRecordOption::Basic));
                    (Occur::Should, t)
                })
                .collect(),
        )));
    }
    if let Some(p) = q.strip_prefix('"') {
        let words: Vec<Term> = p.trim_end_matches('"').split(' ').map(term).collect();
        return Ok(Box::new(PhraseQuery::new(words)));
    }
    if let Some(stem) = q.strip_suffix('*') {
        return Ok(Box::new(RegexQuery::from_pattern(
            &format!("{stem}.*"),
            f.body,
        )?));
    }
    if let Some(w) = q.strip_suffix('~') {
        return Ok(Box::new(FuzzyTermQuery::new(term(w), 1, true)));
    }
    Ok(Box::new(TermQuery::new(term(q), IndexRecordOption::Basic)))
}

#[derive(Default)]
struct Timings {
    total: Vec<f64>,
    index: Vec<f64>,
    hits: usize,
    blocks: u64,
}

impl Timings {
    fn p(&mut self, p: f64) -> (f64, f64) {
        self.total.sort_by(|a, b| a.total_cmp(b));
        self.index.sort_by(|a, b| a.total_cmp(b));
        (percentile(&self.total, p), percentile(&self.index, p))
    }
}

fn time_side(
    side: &Side,
    log: &ArchiveReader,
    f: Fields,
    queries: &[(String, Option<String>)],
    when: (i64, i64),
    rounds: usize,
) -> Result<Timings, Box<dyn std::error::Error>> {
    let mut t = Timings::default();
    for _ in 0..rounds {
        for (q, _) in queries {
            let blocks = BLOCKS_DECRYPTED.load(Ordering::Relaxed);
            let started = Instant::now();
            let query = tantivy_query(f, q, when)?;
            let places = side.search(query.as_ref())?;
            let index = started.elapsed();
            let n = fetch(log, &places)?;
            t.total.push(started.elapsed().as_secs_f64() * 1e3);
            t.index.push(index.as_secs_f64() * 1e3);
            t.hits += n;
            t.blocks += BLOCKS_DECRYPTED.load(Ordering::Relaxed) - blocks;
        }
    }
    Ok(t)
}

fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    m.is_file()
                        .then(|| (e.file_name().to_string_lossy().into_owned(), m.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

/// Bytes of the index in `dir` that hold the text field `text` (term dictionary,
/// postings, positions, norms), and the whole index as tantivy counts it.
fn text_share(
    dir: Box<dyn Directory>,
    text: &str,
) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let index = Index::open(dir)?;
    let field = index.schema().get_field(text)?;
    let usage = index.reader()?.searcher().space_usage()?;
    let mut bytes = 0;
    for s in usage.segments() {
        for per_field in [s.termdict(), s.postings(), s.positions(), s.fieldnorms()] {
            bytes += per_field
                .fields()
                .filter(|(f, _)| **f == field)
                .map(|(_, u)| u.total().get_bytes())
                .sum::<u64>();
        }
    }
    Ok((bytes, usage.total().get_bytes()))
}

fn segments(dir: Box<dyn Directory>) -> usize {
    Index::open(dir)
        .and_then(|i| i.searchable_segment_ids())
        .map_or(0, |s| s.len())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut records: u64 = 200_000;
    let mut block_kib: usize = 16;
    let mut rounds: usize = 5;
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Result<usize, String> {
            args.next()
                .and_then(|s| s.parse().ok())
                .ok_or(format!("{what} needs a number"))
        };
        match a.as_str() {
            "--block-kib" => block_kib = num("--block-kib")?,
            "--rounds" => rounds = num("--rounds")?.max(1),
            "--dir" => dir = Some(args.next().ok_or("--dir needs a path")?.into()),
            n => {
                records = n
                    .parse()
                    .map_err(|_| format!("not a record count: {n:?}"))?
            }
        }
    }
    let tmp = std::env::temp_dir().join(format!("custos-encdir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let base = dir.unwrap_or_else(|| tmp.clone());
    let archive_dir = base.join("archive");
    let (enc_dir, plain_dir) = (base.join("encrypted-index"), base.join("plain-index"));
    let master_bytes = [5u8; 32];
    let master = MasterKey::from_bytes(master_bytes);
    let signing = SigningKey::from_bytes(&[6; 32]);
    let block = block_kib * 1024;

    // The corpus and the ingest of search-bench, draw for draw.
    let mut rng = Rng(0x0c05_7005);
    let corpus = Corpus::new(&mut rng);
    let archive = Archive::open(ArchiveConfig::new(
        archive_dir.clone(),
        master.clone(),
        signing,
    ))?;
    let started = Instant::now();
    let mut times = ingest(&archive, &corpus, &mut rng, records, |_, _, _| {})?;
    let ingest = started.elapsed();
    loop {
        let s = archive.reader().search_covered("kickback", 1)?;
        if s.uncovered.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let indexed = started.elapsed();
    block_on(archive.close())?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let blind_path = archive_dir.join("index");
    let blind_live = du(&blind_path);
    let vocab = du(&archive_dir.join("vocabulary"));
    let id = ArchiveReader::open(&archive_dir, &master)?.archive_id();
    let blind = || index::sealed_directory(&blind_path, &master, &id);
    let blind_live_segments = segments(blind()?);
    println!(
        "corpus: {records} messages; appended in {:.1} s ({:.0} msg/s), blind index covers them after {:.1} s",
        ingest.as_secs_f64(),
        records as f64 / ingest.as_secs_f64(),
        indexed.as_secs_f64()
    );
    println!(
        "on disk: log {:.1} MiB; blind index as built live {:.1} MiB in {blind_live_segments} segments, sealed vocabulary {:.2} MiB",
        mib(du(&archive_dir.join("segments"))),
        mib(blind_live),
        mib(vocab)
    );

    // Three rebuilds from the log, the same way.
    let t = Instant::now();
    reindex(&archive_dir, &master, |_, _| {})?;
    let blind_secs = t.elapsed().as_secs_f64();
    let log = ArchiveReader::open(&archive_dir, &master)?;
    std::fs::create_dir_all(&plain_dir)?;
    let (_, plain_secs) = build(&log, Box::new(MmapDirectory::open(&plain_dir)?))?;
    let (_, enc_secs) = build(
        &log,
        Box::new(EncryptedDirectory::open(&enc_dir, &master_bytes, block)?),
    )?;
    let sizes = [
        ("blind (HMAC'd words)", du(&blind_path) + vocab, blind_secs),
        ("encrypted directory", du(&enc_dir), enc_secs),
        ("plain MmapDirectory", du(&plain_dir), plain_secs),
    ];
    let segs = [
        segments(blind()?),
        segments(Box::new(EncryptedDirectory::open(
            &enc_dir,
            &master_bytes,
            block,
        )?)),
        segments(Box::new(MmapDirectory::open(&plain_dir)?)),
    ];
    println!(
        "\nrebuilt from the log (read, decrypt, index; 1 writer thread, {} MB, commit every {COMMIT_EVERY}); encrypted blocks of {block_kib} KiB:",
        WRITER_MEMORY / 1_000_000
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>9} {:>6}",
        "index", "MiB", "vs plain", "build s", "docs/s", "segs"
    );
    for ((name, bytes, secs), segs) in sizes.iter().zip(segs) {
        println!(
            "{:<22} {:>10.1} {:>9.2}x {:>10.1} {:>9.0} {:>6}",
            name,
            mib(*bytes),
            *bytes as f64 / sizes[2].1 as f64,
            secs,
            records as f64 / secs,
            segs
        );
    }
    println!(
        "(blind size includes the sealed vocabulary, {:.2} MiB)",
        mib(vocab)
    );
    // The blind schema has more fields (from, to, with, direction, type, action, rule,
    // msg, via, account, room; seq, seg and off stored too): the text field alone.
    let (blind_text, blind_all) = text_share(blind()?, "text")?;
    let (plain_text, plain_all) = text_share(Box::new(MmapDirectory::open(&plain_dir)?), "body")?;
    println!(
        "text field alone (terms, postings, positions, norms): blind {:.1} MiB of {:.1}, plain {:.1} MiB of {:.1} ({:.2}x)",
        mib(blind_text),
        mib(blind_all),
        mib(plain_text),
        mib(plain_all),
        blind_text as f64 / plain_text.max(1) as f64
    );
    // What the files look like to someone holding a copy.
    let summarize = |dir: &Path| {
        let f = files(dir);
        let total: u64 = f.iter().map(|x| x.1).sum();
        let top: Vec<String> = f
            .iter()
            .take(6)
            .map(|(n, s)| format!("{} {:.2} MiB", n, mib(*s)))
            .collect();
        format!(
            "{} files, {:.1} MiB; largest: {}",
            f.len(),
            mib(total),
            top.join(", ")
        )
    };
    println!("plain dir:     {}", summarize(&plain_dir));
    println!("encrypted dir: {}", summarize(&enc_dir));

    // Queries: search-bench's samples, drawn after the ingest from the same generator.
    times.sort_unstable();
    let (t0, t1) = (
        times[times.len() / 4],
        times[times.len() * 3 / 4].saturating_add(1),
    );
    let when = format!("after:{} before:{}", Timestamp(t0), Timestamp(t1));
    let kinds = kinds(&corpus, &mut rng, 40);
    let (_, f) = schema();

    // Cold: a fresh reader and its first query (the OS page cache is warm from the build).
    let first = kinds
        .iter()
        .find(|k| k.name == "word + who + when")
        .and_then(|k| k.queries.first())
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let t = Instant::now();
    let blind = ArchiveReader::open(&archive_dir, &master)?;
    let n = blind
        .search(&first.replace("__WHEN__", &when), LIMIT)?
        .len();
    let blind_cold = t.elapsed().as_secs_f64() * 1e3;
    let cold = |directory: Box<dyn Directory>| -> Result<(Side, f64, f64, u64), Box<dyn std::error::Error>> {
        let blocks = BLOCKS_DECRYPTED.load(Ordering::Relaxed);
        let t = Instant::now();
        let side = Side::open(directory)?;
        let opened = t.elapsed().as_secs_f64() * 1e3;
        let q = tantivy_query(f, &first, (t0, t1))?;
        fetch(&log, &side.search(q.as_ref())?)?;
        Ok((
            side,
            opened,
            t.elapsed().as_secs_f64() * 1e3,
            BLOCKS_DECRYPTED.load(Ordering::Relaxed) - blocks,
        ))
    };
    let (enc, enc_open, enc_cold, enc_blocks) = cold(Box::new(EncryptedDirectory::open(
        &enc_dir,
        &master_bytes,
        block,
    )?))?;
    let (plain, plain_open, plain_cold, _) = cold(Box::new(MmapDirectory::open(&plain_dir)?))?;
    println!("\nfresh reader + first query (\"word + who + when\", {n} hits; OS page cache warm):");
    println!("  blind:     {blind_cold:.1} ms (open + search + read 50 records)");
    println!(
        "  encrypted: {enc_cold:.1} ms, of which opening the reader {enc_open:.1} ms; {enc_blocks} blocks decrypted ({:.1} MiB)",
        mib(enc_blocks * block as u64)
    );
    println!("  plain:     {plain_cold:.1} ms, of which opening the reader {plain_open:.1} ms");

    // Warm: untimed warm-up words first, as search-bench does.
    for w in corpus.words.iter().skip(3000).take(10) {
        blind.search(w, LIMIT)?;
        for side in [&enc, &plain] {
            fetch(&log, &side.search(tantivy_query(f, w, (t0, t1))?.as_ref())?)?;
        }
    }
    println!(
        "\nquery ms, 40 samples x {rounds} rounds each, 50 newest hits read from the log (index only: without that read)"
    );
    println!(
        "{:<21} {:>13} {:>13} {:>13} {:>13} {:>13} {:>14} {:>8}",
        "",
        "blind",
        "encrypted",
        "plain",
        "enc idx only",
        "plain idx only",
        "hits b/e/p",
        "blocks/q"
    );
    println!(
        "{:<21} {:>13} {:>13} {:>13} {:>13} {:>13} {:>14} {:>8}",
        "query", "p50 / p99", "p50 / p99", "p50 / p99", "p50 / p99", "p50 / p99", "", ""
    );
    let pair = |a: f64, b: f64| format!("{a:.2} / {b:.2}");
    for k in &kinds {
        let mut b = Timings::default();
        for _ in 0..rounds {
            for (q, _) in &k.queries {
                let q = q.replace("__WHEN__", &when);
                let t = Instant::now();
                let h = blind.search(&q, LIMIT)?;
                b.total.push(t.elapsed().as_secs_f64() * 1e3);
                b.hits += h.len();
            }
        }
        let mut e = time_side(&enc, &log, f, &k.queries, (t0, t1), rounds)?;
        let mut p = time_side(&plain, &log, f, &k.queries, (t0, t1), rounds)?;
        let runs = (k.queries.len() * rounds) as f64;
        let (b50, _) = b.p(0.5);
        let (b99, _) = b.p(0.99);
        let (e50, ei50) = e.p(0.5);
        let (e99, ei99) = e.p(0.99);
        let (p50, pi50) = p.p(0.5);
        let (p99, pi99) = p.p(0.99);
        println!(
            "{:<21} {:>13} {:>13} {:>13} {:>13} {:>13} {:>14} {:>8.1}",
            k.name,
            pair(b50, b99),
            pair(e50, e99),
            pair(p50, p99),
            pair(ei50, ei99),
            pair(pi50, pi99),
            format!(
                "{:.0}/{:.0}/{:.0}",
                b.hits as f64 / runs,
                e.hits as f64 / runs,
                p.hits as f64 / runs
            ),
            e.blocks as f64 / runs,
        );
    }
    println!("(blocks/q: AES-GCM blocks the encrypted directory decrypted per query, cache hits not counted)");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
