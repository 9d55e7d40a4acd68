//! Following the log with `ArchiveReader::tail`: every record exactly once and
//! in order while the writer appends and rolls segments, nothing of a frame
//! still being written, and no re-reading of what the cursor has passed.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use custos_archive::archive::TailCursor;
use custos_archive::segment::segment_name;
use custos_archive::*;

fn keys(tmp: &Path) -> (MasterKey, SigningKey) {
    let c = keys_init(&tmp.join("master.key"), &tmp.join("signing.key")).unwrap();
    (
        MasterKey::from_file(&c.master_key).unwrap(),
        load_signing_key(&c.signing_key).unwrap(),
    )
}

fn note(i: u64, stanza_bytes: usize) -> NewRecord {
    let body = format!("note number {i}");
    let mut stanza = format!("<message><body>{body}</body></message>").into_bytes();
    stanza.resize(stanza.len().max(stanza_bytes), b' ');
    NewRecord::Message(MessageRecord {
        session: SessionId("s1".into()),
        stanza,
        ..MessageRecord::chat("alice@example.test/laptop", "bob@example.test", body)
    })
}

fn body(e: &ChainEntry) -> Option<String> {
    match &e.record.as_ref()?.content {
        NewRecord::Message(m) => m.body.clone(),
        NewRecord::Event(_) => None,
    }
}

/// Small segments and frequent checkpoints, so a short test crosses many of both.
fn small_config(dir: &Path, master: &MasterKey, signing: &SigningKey) -> ArchiveConfig {
    let mut cfg = ArchiveConfig::new(dir.to_path_buf(), master.clone(), signing.clone());
    cfg.segment_max_bytes = 2048;
    cfg.checkpoint_every = 3;
    cfg
}

fn tail_all(reader: &ArchiveReader, cursor: &mut TailCursor) -> Vec<ChainEntry> {
    let mut out = Vec::new();
    reader
        .tail(cursor, |e| {
            out.push(e);
            Ok::<(), ReadError>(())
        })
        .unwrap();
    out
}

fn scan_all(reader: &ArchiveReader) -> Vec<ChainEntry> {
    let mut out = Vec::new();
    reader
        .scan(1, |e| {
            out.push(e);
            Ok::<(), ReadError>(())
        })
        .unwrap();
    out
}

/// Notes 1 to 30 of 150 bytes in a new archive at `dir`, over many small segments;
/// closed, so its last segment is sealed.
async fn thirty_notes(dir: &Path, master: &MasterKey, signing: &SigningKey) {
    let archive = Archive::open(small_config(dir, master, signing)).unwrap();
    for i in 1..=30 {
        archive.append(note(i, 150)).await.unwrap();
    }
    archive.close().await.unwrap();
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("segments")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_interleaved_with_tail_calls_arrive_once_in_order_across_rollovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing) = keys(tmp.path());
    let archive = Archive::open(small_config(&dir, &master, &signing)).unwrap();
    // One reader inside the writing process, one beside it as another process would.
    let beside = ArchiveReader::open(&dir, &master).unwrap();
    let mut inside_cursor = TailCursor::new();
    let mut beside_cursor = TailCursor::new();
    let mut inside = Vec::new();
    let mut beside_got = Vec::new();

    let mut appended = 0u64;
    for round in 0..40u64 {
        for _ in 0..(round % 4) {
            appended += 1;
            let r = archive.append(note(appended, 120)).await.unwrap();
            assert_eq!(r.seq.0, appended);
        }
        inside.extend(tail_all(archive.reader(), &mut inside_cursor));
        beside_got.extend(tail_all(&beside, &mut beside_cursor));
        // Every acknowledged record is readable at once, and only once.
        let want: Vec<u64> = (1..=appended).collect();
        assert_eq!(inside.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
        assert_eq!(beside_got.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
        assert_eq!(inside_cursor.next_seq(), appended + 1);
    }
    assert!(
        segment_count(&dir) >= 5,
        "the test should cross several segment rollovers, made {}",
        segment_count(&dir)
    );

    // Closing seals the last segment; reopening starts a new one. The cursor
    // follows through both without repeating anything.
    archive.close().await.unwrap();
    assert!(tail_all(&beside, &mut beside_cursor).is_empty());
    let archive = Archive::open(small_config(&dir, &master, &signing)).unwrap();
    for _ in 0..5 {
        appended += 1;
        archive.append(note(appended, 120)).await.unwrap();
    }
    beside_got.extend(tail_all(&beside, &mut beside_cursor));
    assert_eq!(
        beside_got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=appended).collect::<Vec<_>>()
    );
    for (i, e) in beside_got.iter().enumerate() {
        assert_eq!(body(e), Some(format!("note number {}", i + 1)));
    }

    // What the cursor handed over is exactly what a full scan reads, chain data included.
    let scanned = scan_all(&beside);
    assert_eq!(scanned.len(), beside_got.len());
    for (s, t) in scanned.iter().zip(&beside_got) {
        assert_eq!(
            (s.seq, s.segment, s.offset, s.leaf, s.head, s.salt),
            (t.seq, t.segment, t.offset, t.leaf, t.head, t.salt)
        );
    }
    assert_eq!(beside_cursor.head(), scanned.last().map(|e| e.head));

    // A cursor started part-way hands over from there on, with the same chain heads.
    let mut mid = TailCursor::from_seq(17);
    let from_mid = tail_all(&beside, &mut mid);
    assert_eq!(
        from_mid.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (17..=appended).collect::<Vec<_>>()
    );
    assert_eq!(from_mid.first().map(|e| e.head), Some(scanned[16].head));
    archive.close().await.unwrap();
}

/// Replays a finished archive's segment files into a fresh directory a few
/// bytes at a time, as a writer would append them, tailing after every step:
/// a record is handed over exactly when its last byte is there, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_frame_is_not_handed_over_until_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    let (master, signing) = keys(tmp.path());
    let archive = Archive::open(small_config(&src, &master, &signing)).unwrap();
    for i in 1..=24 {
        archive.append(note(i, 150)).await.unwrap();
    }
    archive.close().await.unwrap();
    let source = ArchiveReader::open(&src, &master).unwrap();
    let all = scan_all(&source);
    assert_eq!(all.len(), 24);
    // (segment, end of the record's frame, seq)
    let ends: Vec<(u64, u64, u64)> = all
        .iter()
        .map(|e| {
            let f = std::fs::File::open(src.join(segment_name(e.segment))).unwrap();
            let mut len = [0u8; 4];
            f.read_exact_at(&mut len, e.offset).unwrap();
            (
                e.segment,
                e.offset + 4 + u64::from(u32::from_be_bytes(len)),
                e.seq,
            )
        })
        .collect();

    let dst = tmp.path().join("replica");
    std::fs::create_dir_all(dst.join("keys")).unwrap();
    std::fs::create_dir_all(dst.join("segments")).unwrap();
    std::fs::copy(src.join("archive.meta"), dst.join("archive.meta")).unwrap();
    for k in std::fs::read_dir(src.join("keys")).unwrap() {
        let k = k.unwrap();
        std::fs::copy(k.path(), dst.join("keys").join(k.file_name())).unwrap();
    }
    let mut ids: Vec<u64> = all.iter().map(|e| e.segment).collect();
    ids.dedup();
    assert!(ids.len() >= 3, "the replay should cross segment boundaries");

    let replica = ArchiveReader::open(&dst, &master).unwrap();
    let mut cursor = TailCursor::new();
    let mut got: Vec<u64> = Vec::new();
    let mut steps = 0;
    for &id in &ids {
        let bytes = std::fs::read(src.join(segment_name(id))).unwrap();
        let mut out = std::fs::File::create(dst.join(segment_name(id))).unwrap();
        let mut written = 0usize;
        while written < bytes.len() {
            // Uneven steps land inside length fields, headers and bodies alike.
            let step = 1 + steps % 7;
            let upto = (written + step).min(bytes.len());
            out.write_all(&bytes[written..upto]).unwrap();
            written = upto;
            steps += 1;
            got.extend(tail_all(&replica, &mut cursor).iter().map(|e| e.seq));
            let want: Vec<u64> = ends
                .iter()
                .filter(|&&(seg, end, _)| seg < id || (seg == id && end <= written as u64))
                .map(|&(_, _, seq)| seq)
                .collect();
            assert_eq!(got, want, "segment {id} with {written} bytes written");
        }
    }
    assert_eq!(got, (1..=24).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_does_not_read_records_it_has_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing) = keys(tmp.path());
    let archive = Archive::open(ArchiveConfig::new(dir.clone(), master, signing)).unwrap();
    for i in 1..=20 {
        archive.append(note(i, 100)).await.unwrap();
    }
    let reader = archive.reader();
    let mut cursor = TailCursor::new();
    let first = tail_all(reader, &mut cursor);
    assert_eq!(first.len(), 20);

    // Damage a record the cursor has passed, in the still-active segment: an
    // unknown frame kind, which any reader walking the frames again (even
    // one skipping decryption below a seq, as `scan` does) stops at.
    let old = &first[4];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(segment_name(old.segment)))
        .unwrap();
    f.write_all_at(&[0x7f], old.offset + 4).unwrap();
    let rescanned = reader.scan(21, |_| Ok::<(), ReadError>(()));
    assert!(
        matches!(rescanned, Err(ReadError::Corrupt { .. })),
        "the damage must be visible to a reader that re-reads: {rescanned:?}"
    );

    for i in 21..=25 {
        archive.append(note(i, 100)).await.unwrap();
    }
    let next = tail_all(reader, &mut cursor);
    assert_eq!(
        next.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (21..=25).collect::<Vec<_>>()
    );
    assert!(tail_all(reader, &mut cursor).is_empty());
    archive.close().await.unwrap();
}

/// Prints what one idle catch-up costs on a large active segment, by `scan`
/// from the next seq (the old way) and by `tail`. Slow to set up; run with
/// `cargo test --release -p custos-archive --test tail -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_catch_up_cost_on_a_large_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing) = keys(tmp.path());
    let archive = Archive::open(ArchiveConfig::new(dir.clone(), master, signing)).unwrap();
    let target: u64 = 48 << 20;
    let per_record = 16 << 10;
    let count = target / per_record as u64;
    let mut next = 1;
    while next <= count {
        let tasks: Vec<_> = (next..(next + 256).min(count + 1))
            .map(|i| {
                let a = archive.clone();
                tokio::spawn(async move { a.append(note(i, per_record)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
            next += 1;
        }
    }
    let active = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    assert_eq!(segment_count(&dir), 1, "all in one active segment");

    let reader = archive.reader();
    let mut cursor = TailCursor::new();
    assert_eq!(tail_all(reader, &mut cursor).len() as u64, count);

    let runs = 20;
    let started = Instant::now();
    for _ in 0..runs {
        let mut n = 0;
        reader
            .scan(count + 1, |_| {
                n += 1;
                Ok::<(), ReadError>(())
            })
            .unwrap();
        assert_eq!(n, 0);
    }
    let scan = started.elapsed() / runs;
    let runs = 2000;
    let started = Instant::now();
    for _ in 0..runs {
        assert!(tail_all(reader, &mut cursor).is_empty());
    }
    let tail = started.elapsed() / runs;
    println!(
        "active segment {:.1} MiB, {count} records: idle scan(next) {scan:?}, idle tail {tail:?}",
        active as f64 / f64::from(1 << 20)
    );
    assert!(tail * 100 < scan, "tail {tail:?} vs scan {scan:?}");
    assert!(tail < Duration::from_millis(5));
    archive.close().await.unwrap();
}

/// A cursor resuming from a saved state goes on only from the very record the state
/// was read up to: on the same chain it hands over the rest, at a segment's start or
/// inside one; on a log cut back below that record, or a different chain, it fails
/// before handing anything over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_resumes_only_on_the_chain_its_state_was_read_from() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing) = keys(tmp.path());
    thirty_notes(&dir, &master, &signing).await;
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let all = scan_all(&reader);
    let last = all.len() as u64;
    // Seqs that open a segment, and seqs inside one.
    let starts: Vec<u64> = all
        .windows(2)
        .filter(|w| w[0].segment != w[1].segment)
        .map(|w| w[1].seq)
        .collect();
    assert!(!starts.is_empty(), "the test must cross segments");
    let mut froms = vec![2, 5, last, last + 1];
    froms.extend(&starts);
    for from in froms {
        let head = all[from as usize - 2].head;
        let mut cursor = TailCursor::resume(from, head);
        let got = tail_all(&reader, &mut cursor);
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (from..=last).collect::<Vec<_>>(),
            "resuming at {from}"
        );
        // Another head at the same place: a state of some other chain.
        let mut wrong = head;
        wrong[0] ^= 1;
        let mut cursor = TailCursor::resume(from, wrong);
        let mut handed = 0;
        let err = reader
            .tail(&mut cursor, |_| {
                handed += 1;
                Ok::<(), ReadError>(())
            })
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Diverged { seq, .. } if seq == from - 1),
            "{err}"
        );
        assert_eq!(handed, 0, "nothing handed over from a chain that differs");
    }
    // A state read further than the log now goes (its tail deleted, or cut back).
    let mut cursor = TailCursor::resume(last + 5, all[0].head);
    let err = reader
        .tail(&mut cursor, |_| Ok::<(), ReadError>(()))
        .unwrap_err();
    assert!(err.to_string().contains("ends before"), "{err}");

    // The same seqs on another archive's chain.
    let other_dir = tmp.path().join("other");
    thirty_notes(&other_dir, &master, &signing).await;
    let other = ArchiveReader::open(&other_dir, &master).unwrap();
    let mut cursor = TailCursor::resume(10, all[8].head);
    assert!(matches!(
        other.tail(&mut cursor, |_| Ok::<(), ReadError>(())),
        Err(ReadError::Diverged { seq: 9, .. })
    ));

    // Resumed at the end, the cursor hands over what is appended later.
    let mut cursor = TailCursor::resume(last + 1, all[last as usize - 1].head);
    assert!(tail_all(&reader, &mut cursor).is_empty());
    let archive = Archive::open(small_config(&dir, &master, &signing)).unwrap();
    archive.append(note(31, 150)).await.unwrap();
    archive.close().await.unwrap();
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let more = tail_all(&reader, &mut cursor);
    assert!(more
        .iter()
        .any(|e| body(e).as_deref() == Some("note number 31")));
}

/// Reads with `tail_at_most(max)` until a slice comes back short: the slices, in order.
fn tail_in_slices(reader: &ArchiveReader, cursor: &mut TailCursor, max: usize) -> Vec<Vec<u64>> {
    let mut slices = Vec::new();
    loop {
        let mut slice = Vec::new();
        let handed = reader
            .tail_at_most(cursor, max, |e| {
                slice.push(e.seq);
                Ok::<(), ReadError>(())
            })
            .unwrap();
        assert_eq!(handed, slice.len(), "the count is what was handed over");
        assert!(handed <= max, "a slice of {handed} past {max}");
        let short = handed < max;
        slices.push(slice);
        if short {
            return slices;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_read_in_slices_hands_over_what_one_read_does_and_no_more_per_slice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing) = keys(tmp.path());
    let archive = Archive::open(small_config(&dir, &master, &signing)).unwrap();
    for i in 1..=40 {
        archive.append(note(i, 150)).await.unwrap();
    }
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let all: Vec<u64> = scan_all(&reader).iter().map(|e| e.seq).collect();
    assert!(segment_count(&dir) >= 4, "the test must cross segments");

    for max in [1, 2, 3, 7, 40, 41, 1000] {
        let mut cursor = TailCursor::new();
        let slices = tail_in_slices(&reader, &mut cursor, max);
        // Every slice but the last is full; together they are the log, once, in order.
        let (last, full) = slices.split_last().unwrap();
        assert!(full.iter().all(|s| s.len() == max), "max {max}: {slices:?}");
        assert!(last.len() < max, "max {max}: {slices:?}");
        assert_eq!(slices.concat(), all, "max {max}");
        assert_eq!(cursor.next_seq(), all.len() as u64 + 1);
    }
    // Nothing is handed over for a slice of none, and the cursor stays.
    let mut cursor = TailCursor::new();
    let none = reader
        .tail_at_most(&mut cursor, 0, |_| Ok::<(), ReadError>(()))
        .unwrap();
    assert_eq!(none, 0);
    assert_eq!(tail_all(&reader, &mut cursor).len(), all.len());

    // A resumed cursor counts only what it hands over, not the records before it that
    // it reads to check the chain; and a slice that stops at a segment's end goes on
    // into the next one.
    let entries = scan_all(&reader);
    let from = entries
        .windows(2)
        .find(|w| w[0].segment != w[1].segment && w[1].seq > 5)
        .map(|w| w[1].seq)
        .unwrap();
    let mut cursor = TailCursor::resume(from - 2, entries[from as usize - 4].head);
    let first = tail_in_slices(&reader, &mut cursor, 2);
    assert_eq!(first[0], vec![from - 2, from - 1], "{first:?}");
    assert_eq!(first[1][0], from, "{first:?}");
    assert_eq!(
        first.concat(),
        (from - 2..=all.len() as u64).collect::<Vec<_>>()
    );

    // Records appended after a short slice arrive in the next ones.
    for i in 41..=45 {
        archive.append(note(i, 150)).await.unwrap();
    }
    let mut cursor = TailCursor::new();
    tail_in_slices(&reader, &mut cursor, 1000);
    for i in 46..=50 {
        archive.append(note(i, 150)).await.unwrap();
    }
    let more = tail_in_slices(&reader, &mut cursor, 3);
    assert_eq!(more.concat(), (46..=50).collect::<Vec<_>>());
    archive.close().await.unwrap();
}

/// Every resume point and slice size, with a chain that differs and an `f` that
/// fails now and then: each slice goes on right after the last record handed over, the
/// count is what was handed over, and nothing comes from a chain that differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_from_every_resume_point_with_failures_and_diverged_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing) = keys(tmp.path());
    thirty_notes(&dir, &master, &signing).await;
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let all = scan_all(&reader);
    let last = all.len() as u64;
    let head_before = |from: u64| {
        if from > 1 {
            all[from as usize - 2].head
        } else {
            [0; 32]
        }
    };
    for from in 1..=last + 1 {
        for max in 1..=7usize {
            for fail_every in [0u32, 2, 3, 5] {
                let mut cursor = TailCursor::resume(from, head_before(from));
                let mut got = Vec::new();
                let mut calls = 0u32;
                let mut rounds = 0;
                loop {
                    rounds += 1;
                    assert!(rounds < 1000, "from {from} max {max}: no progress");
                    let mut slice = Vec::new();
                    let r = reader.tail_at_most(&mut cursor, max, |e| {
                        calls += 1;
                        if fail_every > 0 && calls.is_multiple_of(fail_every) {
                            return Err(ReadError::Corrupt {
                                segment: 0,
                                offset: 0,
                                what: "refused".into(),
                            });
                        }
                        slice.push(e.seq);
                        Ok(())
                    });
                    let n = slice.len();
                    got.extend(slice);
                    let expect_next = got.last().map_or(from, |s| s + 1);
                    assert_eq!(cursor.next_seq(), expect_next, "from {from} max {max}");
                    match r {
                        Err(ReadError::Corrupt { what, .. }) if what == "refused" => continue,
                        Err(e) => panic!("from {from} max {max}: {e}"),
                        Ok(handed) => {
                            assert_eq!(handed, n, "from {from} max {max} fail {fail_every}");
                            assert!(handed <= max);
                            if handed < max {
                                break;
                            }
                        }
                    }
                }
                assert_eq!(
                    got,
                    (from..=last).collect::<Vec<_>>(),
                    "from {from} max {max} fail {fail_every}"
                );
            }
            if from > 1 {
                let mut wrong = head_before(from);
                wrong[0] ^= 1;
                let mut cursor = TailCursor::resume(from, wrong);
                let mut handed = 0;
                let r = reader.tail_at_most(&mut cursor, max, |_| {
                    handed += 1;
                    Ok::<(), ReadError>(())
                });
                assert!(
                    matches!(r, Err(ReadError::Diverged { .. })),
                    "from {from} max {max}: {r:?}"
                );
                assert_eq!(handed, 0);
                // And again, once the cursor has been read with.
                let r = reader.tail_at_most(&mut cursor, max, |_| {
                    handed += 1;
                    Ok::<(), ReadError>(())
                });
                assert!(
                    matches!(r, Err(ReadError::Diverged { .. })),
                    "again from {from} max {max}: {r:?}"
                );
                assert_eq!(handed, 0);
            }
        }
        // A slice of none on a chain that differs: nothing handed, and the next real
        // slice still refuses it.
        if from > 1 {
            let mut wrong = head_before(from);
            wrong[0] ^= 1;
            let mut cursor = TailCursor::resume(from, wrong);
            let zero = reader.tail_at_most(&mut cursor, 0, |_| Ok::<(), ReadError>(()));
            assert!(
                matches!(zero, Ok(0) | Err(ReadError::Diverged { .. })),
                "{zero:?}"
            );
            let r = reader.tail_at_most(&mut cursor, 3, |_| Ok::<(), ReadError>(()));
            assert!(
                matches!(r, Err(ReadError::Diverged { .. })),
                "after zero, from {from}: {r:?}"
            );
        }
    }
}
