//! Walking a segment a window at a time (`walk::walk_stored_by`, what `verify`, scans and
//! export read with) sees exactly what walking the whole file at once sees: the same
//! frames, flaws, breaks and end, for any window size, on intact and damaged segments
//! (cut short, a flipped byte, data after the seal).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use custos_archive::segment::{segment_name, SegmentHeader, HEADER_LEN};
use custos_archive::storage::FileStorage;
use custos_archive::walk::{walk_stored_by, SegmentWalk, Step};
use custos_archive::*;
use proptest::prelude::*;

fn note(i: u64) -> NewRecord {
    // Some records far longer than the smallest windows.
    let body = format!("note {i} {}", "x".repeat((i as usize * 97) % 1500));
    NewRecord::Message(MessageRecord {
        session: SessionId("s1".into()),
        ..MessageRecord::chat("alice@example.test/laptop", "bob@example.test", body)
    })
}

/// The segment files of a small archive: several sealed segments and an active one.
fn segments() -> &'static Vec<Vec<u8>> {
    static SEGMENTS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEGMENTS.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let c = keys_init(
            &tmp.path().join("master.key"),
            &tmp.path().join("signing.key"),
        )
        .unwrap();
        let master = MasterKey::from_file(&c.master_key).unwrap();
        let signing = load_signing_key(&c.signing_key).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cfg = ArchiveConfig::new(dir.clone(), master, signing);
            cfg.segment_max_bytes = 8192;
            cfg.checkpoint_every = 3;
            let archive = Archive::open(cfg).unwrap();
            for i in 1..=40 {
                archive.append(note(i)).await.unwrap();
            }
            archive.close().await.unwrap();
        });
        let mut names: Vec<_> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    })
}

/// Steps as text, with the end: what a walk reports.
fn describe(step: &Result<Step<'_>, custos_archive::walk::Broken>) -> String {
    match step {
        Ok(Step::Record(r)) => format!(
            "record @{} seq {} head {:02x}{:02x} {:?}",
            r.offset, r.seq, r.head[0], r.head[1], r.flaw
        ),
        Ok(Step::Checkpoint { offset, cp, flaw }) => {
            format!(
                "checkpoint @{offset} seq {} sealed {} {flaw:?}",
                cp.seq, cp.sealed
            )
        }
        Ok(Step::End { offset, left }) => format!("end @{offset} left {left}"),
        Err(b) => format!("broken @{} {}", b.offset, b.what),
    }
}

fn whole(bytes: &[u8], header: &SegmentHeader) -> (Vec<String>, u64, bool) {
    let mut w = SegmentWalk::segment(bytes, header);
    let mut out = Vec::new();
    loop {
        let step = w.next();
        out.push(describe(&step));
        match step {
            Ok(Step::Checkpoint {
                cp, flaw: Some(_), ..
            }) => w.resync(cp.head),
            Ok(Step::End { .. }) | Err(_) => break,
            _ => {}
        }
    }
    (out, w.pos().next_seq, w.sealed())
}

fn windowed(
    dir: &Path,
    id: u64,
    header: &SegmentHeader,
    window: usize,
) -> (Vec<String>, u64, bool, u64) {
    let storage = FileStorage::new(dir);
    let mut out = Vec::new();
    let walked = walk_stored_by(&storage, &segment_name(id), header, window, |w, step| {
        out.push(describe(&step));
        if let Ok(Step::Checkpoint {
            cp, flaw: Some(_), ..
        }) = &step
        {
            w.resync(cp.head);
        }
        Ok::<bool, std::convert::Infallible>(true)
    })
    .unwrap();
    (out, walked.pos.next_seq, walked.sealed, walked.len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn a_windowed_walk_sees_what_a_whole_walk_sees(
        pick in 0usize..100,
        damage in 0u8..4,
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        window in prop_oneof![1usize..64, 64usize..2048, 2048usize..20_000],
    ) {
        let all = segments();
        prop_assert!(all.len() >= 3, "the archive must have several segments");
        let mut bytes = all[pick % all.len()].clone();
        let body = bytes.len() - HEADER_LEN;
        match damage {
            // Cut short anywhere after the header.
            1 => bytes.truncate(HEADER_LEN + at.index(body)),
            2 => {
                let i = HEADER_LEN + at.index(body);
                bytes[i] ^= mask;
            }
            // Something after the end (after the seal, for a sealed segment).
            3 => bytes.extend(std::iter::repeat_n(mask, 1 + at.index(300))),
            _ => {}
        }
        let header = SegmentHeader::decode(&bytes[..HEADER_LEN]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("segments")).unwrap();
        let id = header.segment;
        std::fs::write(tmp.path().join(segment_name(id)), &bytes).unwrap();
        let (want, want_next, want_sealed) = whole(&bytes, &header);
        let (got, next, sealed, len) = windowed(tmp.path(), id, &header, window);
        prop_assert_eq!(got, want);
        prop_assert_eq!((next, sealed), (want_next, want_sealed));
        prop_assert_eq!(len, bytes.len() as u64);
    }
}
