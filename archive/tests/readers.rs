//! Every reader makes the same checks as `verify` (they share one segment walk): a
//! record whose clear content hash was changed, or a segment missing from the middle,
//! is an error naming the place — never a record handed over as if nothing happened.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use custos_archive::archive::TailCursor;
use custos_archive::segment::HEADER_LEN;
use custos_archive::*;

fn audit(i: u64) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "officer".into(),
        action: "reader-test".into(),
        detail: format!("record {i} {}", "x".repeat(200)),
    })
}

struct Made {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    master: MasterKey,
}

/// An archive of 40 records in several small segments.
async fn make() -> Made {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let c = keys_init(
        &tmp.path().join("master.key"),
        &tmp.path().join("signing.key"),
    )
    .unwrap();
    let master = MasterKey::from_file(&c.master_key).unwrap();
    let mut cfg = ArchiveConfig::new(
        dir.clone(),
        master.clone(),
        load_signing_key(&c.signing_key).unwrap(),
    );
    cfg.segment_max_bytes = 3000;
    let a = Archive::open(cfg).unwrap();
    for i in 0..40 {
        a.append(audit(i)).await.unwrap();
    }
    a.close().await.unwrap();
    Made {
        _tmp: tmp,
        dir,
        master,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn writable(p: &Path) {
    let mut perm = std::fs::metadata(p).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(p, perm).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_content_hash_is_refused_by_every_reader() {
    let m = make().await;
    let first = segments(&m.dir)[0].clone();
    writable(&first);
    // The first record frame: u32 length, kind byte, u64 seq, then the content hash,
    // which is outside the AEAD: decryption alone would not notice.
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[HEADER_LEN + 4 + 1 + 8] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();

    let r = ArchiveReader::open(&m.dir, &m.master).unwrap();
    let err = r.record_at(1, HEADER_LEN as u64).unwrap_err().to_string();
    assert!(err.contains("content hash does not match"), "{err}");
    let err = r
        .scan(1, |_| Ok::<(), ReadError>(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("segment 1") && err.contains("content hash"),
        "{err}"
    );
    let mut cursor = TailCursor::new();
    let mut handed = 0;
    let err = r
        .tail(&mut cursor, |_| {
            handed += 1;
            Ok::<(), ReadError>(())
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("content hash"), "{err}");
    assert_eq!(handed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_missing_from_the_middle_stops_the_scan_where_it_was() {
    let m = make().await;
    let segs = segments(&m.dir);
    assert!(segs.len() >= 4, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let r = ArchiveReader::open(&m.dir, &m.master).unwrap();
    let mut seen = 0;
    let err = r
        .scan(1, |_| {
            seen += 1;
            Ok::<(), ReadError>(())
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected"), "{err}");
    assert!(seen > 0, "the records before the gap are read");
    let err = r.records(1..=u64::MAX).unwrap_err().to_string();
    assert!(err.contains("segment missing or altered"), "{err}");
}
