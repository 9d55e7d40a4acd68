//! `verify` checks that the search index covers the log: a deleted, rolled-back or
//! foreign index is a located problem, never a quiet search that returns too little.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use custos_archive::*;

fn message(i: u64) -> NewRecord {
    NewRecord::Message(MessageRecord::chat(
        "alice@example.test/laptop",
        "bob@example.test",
        format!("coverage message {i}"),
    ))
}

struct Made {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    master: MasterKey,
    signing: SigningKey,
    public: VerifyingKey,
}

fn make(root: &Path) -> Made {
    let tmp = tempfile::tempdir_in(root).unwrap();
    let dir = tmp.path().join("archive");
    let c = keys_init(
        &tmp.path().join("master.key"),
        &tmp.path().join("signing.key"),
    )
    .unwrap();
    Made {
        dir,
        master: MasterKey::from_file(&c.master_key).unwrap(),
        signing: load_signing_key(&c.signing_key).unwrap(),
        public: c.verifying_key,
        _tmp: tmp,
    }
}

impl Made {
    fn config(&self) -> ArchiveConfig {
        ArchiveConfig::new(self.dir.clone(), self.master.clone(), self.signing.clone())
    }

    /// The serving archive over this directory.
    fn open(&self) -> Archive {
        Archive::open(self.config()).unwrap()
    }
}

async fn session(m: &Made, range: std::ops::Range<u64>) {
    let a = m.open();
    for i in range {
        a.append(message(i)).await.unwrap();
    }
    a.close().await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn problems(m: &Made) -> Vec<String> {
    verify(&m.dir, Some(&m.master), &m.public, |_, _| {})
        .problems
        .into_iter()
        .map(|p| p.what)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_does_not_cover_the_log_is_found() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..10).await;
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
    let old_index = root.path().join("old-index");
    copy_dir(&m.dir.join("index"), &old_index);
    session(&m, 10..20).await;
    assert!(problems(&m).is_empty());

    // Behind by records of the last moment before the log's end: what a writer killed
    // before its index commit leaves. A note; the next open or search adds them.
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    copy_dir(&old_index, &m.dir.join("index"));
    let r = verify(&m.dir, Some(&m.master), &m.public, |_, _| {});
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("a crash")),
        "{:?}",
        r.notes
    );

    // Rolled back further than any crash leaves: records older than the last 3 s of the
    // log missing from search.
    session(&m, 20..21).await;
    std::thread::sleep(std::time::Duration::from_millis(3200));
    session(&m, 21..22).await;
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    copy_dir(&old_index, &m.dir.join("index"));
    let p = problems(&m);
    assert!(
        p.iter()
            .any(|w| w.contains("covers seqs up to") && w.contains("are missing from search")),
        "{p:?}"
    );

    // Deleted.
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    let p = problems(&m);
    assert!(
        p.iter().any(|w| w.contains("search index is missing")),
        "{p:?}"
    );

    // Copied from another archive.
    let other = make(root.path());
    session(&other, 0..20).await;
    copy_dir(&other.dir.join("index"), &m.dir.join("index"));
    let p = problems(&m);
    assert!(p.iter().any(|w| w.contains("another archive")), "{p:?}");

    // Rebuilt: clean again.
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    reindex(&m.dir, &m.master, |_, _| {}).unwrap();
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
}

/// What every index file ends with: the data length, the magic and the MAC that seal
/// it (after the hashes of its blocks).
const SEAL: usize = 8 + 8 + 32;

/// The length of an index file's trailer: a hash per 16 KiB block of the data it
/// sealed (whose length it gives), then the length, magic and MAC.
fn trailer_len(file: &[u8]) -> usize {
    let at = file.len() - SEAL;
    let sealed = u64::from_be_bytes(file[at..at + 8].try_into().unwrap()) as usize;
    sealed.div_ceil(16 * 1024) * 32 + SEAL
}

/// Rewrites the commit payload (the coverage mark) in the index's meta.json, keeping
/// the file's seal (the key that would make a new one is not the attacker's).
fn edit_mark(dir: &Path, f: impl FnOnce(&str) -> String) {
    let path = dir.join("index/meta.json");
    let file = std::fs::read(&path).unwrap();
    let (text, seal) = file.split_at(file.len() - trailer_len(&file));
    let mut meta: serde_json::Value = serde_json::from_slice(text).unwrap();
    let old = meta["payload"].as_str().unwrap().to_owned();
    meta["payload"] = serde_json::Value::String(f(&old));
    let mut out = serde_json::to_vec(&meta).unwrap();
    out.extend_from_slice(seal);
    std::fs::write(&path, out).unwrap();
}

/// Takes the seal off every file of the index in `dir`, as someone who wants tantivy
/// itself to change it must (and as an index an earlier Custos wrote has them).
fn strip_seals(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let b = std::fs::read(&path).unwrap();
        if b.len() >= SEAL && &b[b.len() - 40..b.len() - 32] == b"custos-s" {
            std::fs::write(&path, &b[..b.len() - trailer_len(&b)]).unwrap();
        }
    }
}

fn search(m: &Made) -> Searched {
    ArchiveReader::open(&m.dir, &m.master)
        .unwrap()
        .search_covered("coverage", 100)
        .unwrap()
}

fn chain_end(m: &Made) -> u64 {
    ArchiveReader::open(&m.dir, &m.master)
        .unwrap()
        .chain_end()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_says_which_records_the_index_does_not_cover() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..10).await;
    let old_index = root.path().join("old-index");
    copy_dir(&m.dir.join("index"), &old_index);
    let covered_then = chain_end(&m);
    session(&m, 10..20).await;
    let end = chain_end(&m);
    let s = search(&m);
    assert_eq!(s.hits.len(), 20);
    assert_eq!(s.uncovered, None);

    // Rolled back: the ten older hits, and the range it could not see.
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    copy_dir(&old_index, &m.dir.join("index"));
    let s = search(&m);
    assert_eq!(s.hits.len(), 10);
    let u = s
        .uncovered
        .expect("a rolled-back index must say what it misses");
    assert_eq!((u.from, u.to), (covered_then + 1, end));
    assert!(u.to_string().contains("results may be incomplete"), "{u}");

    // Bringing it up to the log adds just what is missing.
    let done = update_index(&m.dir, &m.master, |_, _| {}).unwrap();
    assert_eq!(done.rebuilt, None);
    assert_eq!(done.through, end);
    assert!(done.indexed >= 10, "{done:?}");
    let s = search(&m);
    assert_eq!((s.hits.len(), s.uncovered), (20, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_foreign_mark_is_refused_and_serving_rebuilds() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..20).await;
    let end = chain_end(&m);
    let good = root.path().join("good-index");
    copy_dir(&m.dir.join("index"), &good);

    // The mark edited to claim less than it holds (hiding nothing from a count check)
    // without the key: meta.json no longer matches its seal.
    edit_mark(&m.dir, |p| {
        let mut parts: Vec<String> = p.split(' ').map(str::to_owned).collect();
        parts[2] = "3".into();
        parts.join(" ")
    });
    let p = problems(&m);
    assert!(
        p.iter()
            .any(|w| w.contains("meta.json") && w.contains("seal does not match")),
        "{p:?}"
    );
    let s = search(&m);
    assert!(s.hits.is_empty(), "hits from an unusable index");
    let u = s.uncovered.unwrap();
    assert_eq!((u.from, u.to), (1, end));

    // Another archive's index, relabelled with this archive's id.
    let other = make(root.path());
    session(&other, 0..20).await;
    let our_id = {
        let mut id = String::new();
        edit_mark(&m.dir, |p| {
            id = p.split(' ').nth(1).unwrap().to_owned();
            p.to_owned()
        });
        id
    };
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    copy_dir(&other.dir.join("index"), &m.dir.join("index"));
    edit_mark(&m.dir, |p| {
        let mut parts: Vec<String> = p.split(' ').map(str::to_owned).collect();
        parts[1] = our_id.clone();
        parts.join(" ")
    });
    let p = problems(&m);
    assert!(p.iter().any(|w| w.contains("seal does not match")), "{p:?}");

    // An index an earlier Custos wrote: no file is sealed.
    strip_seals(&m.dir.join("index"));
    let p = problems(&m);
    assert!(
        p.iter()
            .any(|w| w.contains("not sealed") && w.contains("earlier Custos")),
        "{p:?}"
    );

    // Serving opens the archive, finds the index unusable, empties it at once and
    // rebuilds it from the log in the background; meanwhile a search answers nothing
    // from the old index and says what it has not seen.
    let a = m.open();
    let mut complete = false;
    for _ in 0..100 {
        let s = a.search_covered("coverage", 100).unwrap();
        match &s.uncovered {
            Some(u) => assert!(
                s.hits.len() as u64 + (u.to - u.from + 1) >= 20 && u.to >= end,
                "{s:?}"
            ),
            None => {
                assert_eq!(s.hits.len(), 20);
                complete = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(complete, "the rebuild never finished");
    a.close().await.unwrap();
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_another_branch_of_the_same_archive_is_found() {
    // A copy of the archive taken at ten messages, then both grown differently: same
    // archive id and key, same seqs, different chains.
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..10).await;
    let branch = Made {
        _tmp: tempfile::tempdir_in(root.path()).unwrap(),
        dir: root.path().join("branch"),
        master: m.master.clone(),
        signing: m.signing.clone(),
        public: m.public,
    };
    copy_dir(&m.dir, &branch.dir);
    session(&m, 10..20).await;
    session(&branch, 100..110).await;
    assert_eq!(chain_end(&m), chain_end(&branch));
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();
    copy_dir(&branch.dir.join("index"), &m.dir.join("index"));

    let p = problems(&m);
    assert!(p.iter().any(|w| w.contains("is not this log's")), "{p:?}");
    let s = search(&m);
    assert!(s.hits.is_empty());
    assert!(s.uncovered.unwrap().why.contains("is not this log's"));
    // The CLI's catch-up rebuilds it.
    let done = update_index(&m.dir, &m.master, |_, _| {}).unwrap();
    assert!(done.rebuilt.unwrap().contains("is not this log's"));
    let s = search(&m);
    assert_eq!((s.hits.len(), s.uncovered), (20, None));
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_archive_reports_what_its_indexer_has_not_taken_in_and_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    let a = m.open();
    let mut last = 0;
    for i in 0..5 {
        last = a.append(message(i)).await.unwrap().seq.0;
    }
    // Whatever the search sees, it never answers for more than the index holds.
    let s = a.search_covered("coverage", 100).unwrap();
    match &s.uncovered {
        Some(u) => assert!(u.to == last && s.hits.len() as u64 + (u.to - u.from + 1) >= 5),
        None => assert_eq!(s.hits.len(), 5),
    }
    let mut complete = false;
    for _ in 0..50 {
        let s = a.search_covered("coverage", 100).unwrap();
        if s.uncovered.is_none() {
            assert_eq!(s.hits.len(), 5);
            complete = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(complete, "the indexer never caught up");
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_anywhere_in_the_index_is_found() {
    // Tantivy's checksums cover file bodies only; meta.json, .managed.json and every
    // footer are checked byte for byte. Up to 80 evenly spread positions per file.
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..30).await;
    session(&m, 30..40).await;
    let mut tried = 0;
    for entry in std::fs::read_dir(m.dir.join("index")).unwrap() {
        let path = entry.unwrap().path();
        let orig = std::fs::read(&path).unwrap();
        let step = orig.len().div_ceil(80).max(1);
        let mut missed = Vec::new();
        for at in (0..orig.len()).step_by(step) {
            let mut b = orig.clone();
            b[at] ^= 0x01;
            std::fs::write(&path, &b).unwrap();
            tried += 1;
            if verify(&m.dir, Some(&m.master), &m.public, |_, _| {})
                .problems
                .is_empty()
            {
                missed.push(at);
            }
        }
        std::fs::write(&path, &orig).unwrap();
        assert!(
            missed.is_empty(),
            "{}: flips at {missed:?} pass verify",
            path.display()
        );
    }
    assert!(tried > 300, "{tried}");
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_replaced_inside_the_index_is_found() {
    // The attacker drives tantivy itself: one message's document is deleted and a
    // duplicate of another's placement added, so the count stays; then meta.json is
    // rewritten, canonically, with the old opstamp and the old (authentic) mark. For
    // tantivy to read the files, their seals come off first, and none can be made anew.
    // Places are read from the columns; tantivy deletes only by term, and `seg` is the
    // one place term the index holds, so the victim's segment goes whole and all its
    // other documents come back.
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..20).await;
    assert!(problems(&m).is_empty());
    let dir = m.dir.join("index");
    strip_seals(&dir);
    let index = tantivy::Index::open_in_dir(&dir).unwrap();
    let old = index.load_metas().unwrap();
    let schema = index.schema();
    let (seq, seg, off) = (
        schema.get_field("seq").unwrap(),
        schema.get_field("seg").unwrap(),
        schema.get_field("off").unwrap(),
    );
    let reader = index.reader().unwrap();
    let mut places = Vec::new();
    for sr in reader.searcher().segment_readers() {
        let ff = sr.fast_fields();
        let (seqs, segs, offs) = (
            ff.u64("seq").unwrap(),
            ff.u64("seg").unwrap(),
            ff.u64("off").unwrap(),
        );
        for doc in 0..sr.max_doc() {
            if sr.alive_bitset().is_none_or(|a| a.is_alive(doc)) {
                places.push([
                    seqs.first(doc).unwrap(),
                    segs.first(doc).unwrap(),
                    offs.first(doc).unwrap(),
                ]);
            }
        }
    }
    assert!(places.len() >= 2, "{places:?}");
    let victim = places[0];
    let place = |p: [u64; 3]| {
        let mut d = tantivy::TantivyDocument::default();
        for (field, v) in [seq, seg, off].into_iter().zip(p) {
            d.add_u64(field, v);
        }
        d
    };
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
    writer.delete_term(tantivy::Term::from_field_u64(seg, victim[1]));
    for p in places.iter().skip(1).filter(|p| p[1] == victim[1]) {
        writer.add_document(place(*p)).unwrap();
    }
    writer.add_document(place(places[1])).unwrap();
    writer.commit().unwrap();
    writer.wait_merging_threads().unwrap();
    let mut meta = index.load_metas().unwrap();
    meta.opstamp = old.opstamp;
    meta.payload = old.payload.clone();
    let mut bytes = serde_json::to_vec_pretty(&meta).unwrap();
    bytes.push(b'\n');
    std::fs::write(dir.join("meta.json"), bytes).unwrap();

    let p = problems(&m);
    assert!(p.iter().any(|w| w.contains("not sealed")), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_over_a_shredded_segment_shows_what_is_left() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..5).await;
    let a = m.open();
    a.append(message(5)).await.unwrap();
    a.shred_segment(1, "erasure ordered", "court order 2026-17", "test")
        .await
        .unwrap();
    // The shredded records' documents are still in the index: the search must not fail
    // on them, and shows the one message that is left.
    let mut left = Vec::new();
    for _ in 0..100 {
        let s = a.search_covered("coverage", 100).unwrap();
        if s.uncovered.is_none() {
            left = s.hits;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].body.as_deref(), Some("coverage message 5"));
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_file_left_by_a_killed_index_write_is_not_tampering() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    session(&m, 0..3).await;
    // What tantivy's atomic write leaves when the process dies before the rename.
    let tmp = m.dir.join("index/.tmpA1b2C3");
    std::fs::write(&tmp, b"{\"partial\":").unwrap();
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
    // The next writer removes it.
    session(&m, 3..4).await;
    assert!(!tmp.exists());
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
}

/// A message whose live copy crossed Custos, with its logical identity.
fn live(i: u64, identity: &str, via: Via) -> NewRecord {
    let NewRecord::Message(mut m) = message(i) else {
        unreachable!("message() makes a message")
    };
    m.capture.identity = identity.to_owned();
    m.capture.via = via;
    NewRecord::Message(m)
}

/// An archive replay is flagged unless a live copy was recorded: the live copy must be
/// known from its submission (a replay can follow it on the same stream before it is
/// written), while it waits for the index, and then from the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_copy_is_known_from_its_submission_on() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    let a = m.open();
    let known = "a1".repeat(32);
    let submitted = a.submit(live(1, &known, Via::Direct));
    assert_eq!(a.live_copy(&known), LiveCopy::Recorded, "pending");
    submitted.await.unwrap();
    assert_eq!(a.live_copy(&known), LiveCopy::Recorded, "written");
    // A replay proves nothing: recording one leaves its identity unknown.
    let replayed = "b2".repeat(32);
    a.append(live(2, &replayed, Via::Mam)).await.unwrap();
    assert_eq!(a.live_copy(&replayed), LiveCopy::Absent);
    for _ in 0..100 {
        if a.index_lag() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(a.index_lag(), 0, "the indexer never caught up");
    // The index's commit holds it: memory has let it go, and the index answers.
    assert_eq!(a.live_copy(&known), LiveCopy::Recorded, "indexed");
    assert_eq!(a.live_copy(&replayed), LiveCopy::Absent);
    a.close().await.unwrap();
}

/// Memory lets an identity go once an index commit holds its record, whether the
/// indexer took the record from its queue or, having missed it while the queue was full,
/// read it back from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_let_go_once_a_commit_holds_their_records() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    let mut cfg = m.config();
    // One batch may wait: a burst overflows it, and the indexer reads the rest back.
    cfg.index_queue = 1;
    let a = Archive::open(cfg).unwrap();
    // In waves, each a batch of its own: while the indexer commits, the writer goes on
    // and finds the queue full (here some 400 of the batches are left out each run).
    let ids: Vec<String> = (0..3000u64).map(|i| format!("{i:032x}")).collect();
    for (w, wave) in ids.chunks(10).enumerate() {
        let submitted: Vec<_> = wave
            .iter()
            .enumerate()
            .map(|(i, id)| a.submit(live((w * 10 + i) as u64, id, Via::Direct)))
            .collect();
        for s in submitted {
            s.await.unwrap();
        }
    }
    assert!(ids.iter().all(|id| a.live_copy(id) == LiveCopy::Recorded));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (a.index_lag() > 0 || a.unindexed_identities() > 0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(a.index_lag(), 0, "the indexer never caught up");
    assert_eq!(a.unindexed_identities(), 0);
    // Now the index answers for every one of them.
    assert!(ids.iter().all(|id| a.live_copy(id) == LiveCopy::Recorded));
    a.close().await.unwrap();
}

/// After a restart the index may be behind the log (here it was lost and is rebuilt),
/// and memory knows nothing of what was recorded before: a replay of a message recorded
/// then must not be taken for one that never crossed Custos while the index catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_recorded_before_a_restart_is_never_absent_while_the_index_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    let a = m.open();
    let first = "d4".repeat(16);
    a.append(live(0, &first, Via::Direct)).await.unwrap();
    let rest: Vec<_> = (1..20_000u64)
        .map(|i| a.submit(live(i, &format!("{i:032x}"), Via::Direct)))
        .collect();
    for s in rest {
        s.await.unwrap();
    }
    a.close().await.unwrap();
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();

    let a = m.open();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let answer = a.live_copy(&first);
        assert_ne!(answer, LiveCopy::Absent, "after {seen:?}");
        if seen.last() != Some(&answer) {
            seen.push(answer);
        }
        if answer == LiveCopy::Recorded || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen.last(), Some(&LiveCopy::Recorded), "{seen:?}");
    // A message never recorded is absent once the index has caught up, not before.
    let never = "e5".repeat(16);
    while a.index_lag() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.live_copy(&never), LiveCopy::Absent);
    a.close().await.unwrap();
}

/// Closing an archive whose index is being rebuilt: the close stops the rebuild rather
/// than wait for it (a CLI appending one audit record to a stopped archive, `serve`
/// stopped by its service manager), the index's commit says what it still owes, and
/// nothing about that is a problem for `verify`; the next catch-up completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_during_a_rebuild_stops_it_and_leaves_no_problem() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    let a = m.open();
    let sent: Vec<_> = (0..30_000u64).map(|i| a.submit(message(i))).collect();
    for s in sent {
        s.await.unwrap();
    }
    a.close().await.unwrap();
    // Records older than a crash could leave unindexed.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    std::fs::remove_dir_all(m.dir.join("index")).unwrap();

    let a = m.open();
    a.append(message(30_000)).await.unwrap();
    a.close().await.unwrap();
    let end = chain_end(&m);
    let r = verify(&m.dir, Some(&m.master), &m.public, |_, _| {});
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    // Thirty thousand records take the rebuild far longer than the close takes to be
    // asked for: it was stopped.
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("it was catching up with the log when its writer stopped")),
        "{:?}",
        r.notes
    );

    let done = update_index(&m.dir, &m.master, |_, _| {}).unwrap();
    assert_eq!(done.through, end);
    let r = verify(&m.dir, Some(&m.master), &m.public, |_, _| {});
    assert!(r.problems.is_empty() && r.notes.is_empty(), "{r:?}");
}

/// A serving open no longer reads the whole index before it returns (that takes time in
/// proportion to the archive): its indexer does, first. A block changed in the middle
/// of a large file, which an open does not read, is found there; the index is rebuilt
/// from the log, and no search meanwhile claims to have covered what it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_the_open_does_not_read_is_found_by_the_indexer_and_the_index_rebuilt() {
    let root = tempfile::tempdir().unwrap();
    let m = make(root.path());
    let a = m.open();
    let sent: Vec<_> = (0..6_000u64)
        .map(|i| {
            let marker = if i % 500 == 0 { " needle" } else { "" };
            a.submit(NewRecord::Message(MessageRecord::chat(
                "alice@example.test/laptop",
                "bob@example.test",
                format!(
                    "q{:x}z k{:x}y{marker}",
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    i * 7919
                ),
            )))
        })
        .collect();
    for s in sent {
        s.await.unwrap();
    }
    a.close().await.unwrap();
    // A close stops the index's catch-up where it is (its commit says what it owes): the
    // index is brought up to the log first, so the search below covers every record.
    update_index(&m.dir, &m.master, |_, _| {}).unwrap();
    let wanted = 12;
    let before = ArchiveReader::open(&m.dir, &m.master)
        .unwrap()
        .search_covered("needle", 100)
        .unwrap();
    assert!(before.uncovered.is_none(), "{:?}", before.uncovered);
    assert_eq!(before.hits.len(), wanted);

    // The middle of the largest file, far from what an open reads.
    let (path, len) = std::fs::read_dir(m.dir.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .max_by_key(|(_, len)| *len)
        .unwrap();
    assert!(len > 8 * 16 * 1024, "{} is {len} bytes", path.display());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (len as usize - trailer_len(&bytes)) / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let a = m.open();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut complete = false;
    while !complete && std::time::Instant::now() < deadline {
        match a.search_covered("needle", 100) {
            Ok(s) if s.uncovered.is_none() => {
                assert_eq!(s.hits.len(), wanted, "a search claimed the whole log");
                complete = true;
            }
            // Not covered yet, or the changed block refused.
            Ok(_) | Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    assert!(complete, "the index was never rebuilt");
    assert!(!path.exists(), "the index with the changed block was kept");
    a.close().await.unwrap();
    assert!(problems(&m).is_empty(), "{:?}", problems(&m));
}
