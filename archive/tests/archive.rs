//! The archive through its public API: append, search (every query form),
//! near-real-time visibility, a second reader beside the writer, close,
//! reopen, verify, reindex, and that the index holds no plaintext.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use custos_archive::*;

fn msg(
    from: &str,
    to: &str,
    dir: Direction,
    body: &str,
    action: Action,
    rules: &[&str],
) -> NewRecord {
    NewRecord::Message(MessageRecord {
        direction: dir,
        session: SessionId("s1".into()),
        id: Some("m1".into()),
        stanza: format!("<message><body>{body}</body></message>").into_bytes(),
        outcome: Outcome {
            action,
            rules: rules.iter().map(|r| r.to_string()).collect(),
            delivered_body: (action == Action::Redact).then(|| "card ████".to_string()),
            ..Outcome::allowed()
        },
        ..MessageRecord::chat(from, to, body)
    })
}

fn keys(tmp: &Path) -> (MasterKey, SigningKey, VerifyingKey) {
    let c = keys_init(&tmp.join("master.key"), &tmp.join("signing.key")).unwrap();
    (
        MasterKey::from_file(&c.master_key).unwrap(),
        load_signing_key(&c.signing_key).unwrap(),
        c.verifying_key,
    )
}

fn seqs(hits: &[Hit]) -> Vec<u64> {
    hits.iter().map(|h| h.seq.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_search_verify_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing, public) = keys(tmp.path());
    let archive = Archive::open(ArchiveConfig::new(
        dir.clone(),
        master.clone(),
        signing.clone(),
    ))
    .unwrap();

    let a = "alice@example.test/laptop";
    let b = "bob@example.test";
    let r1 = archive
        .append(msg(
            a,
            b,
            Direction::Outbound,
            "Please wire transfer the invoice",
            Action::Allow,
            &[],
        ))
        .await
        .unwrap();
    let r2 = archive
        .append(msg(
            b,
            a,
            Direction::Inbound,
            "Transfer done, zebracorn",
            Action::Flag,
            &["watch"],
        ))
        .await
        .unwrap();
    let r3 = archive
        .append(msg(
            a,
            "carol@example.test/phone",
            Direction::Outbound,
            "my card is 4111 1111",
            Action::Redact,
            &["pci-card"],
        ))
        .await
        .unwrap();
    assert_eq!((r1.seq.0, r2.seq.0, r3.seq.0), (1, 2, 3));
    assert!(r1.time <= r2.time && r2.time <= r3.time);

    // Concurrent appends are all acknowledged with distinct seqs.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let ar = archive.clone();
            tokio::spawn(async move {
                ar.append(msg(
                    "dave@example.test/x",
                    "erin@example.test",
                    Direction::Outbound,
                    &format!("bulk note {i}"),
                    Action::Allow,
                    &[],
                ))
                .await
            })
        })
        .collect();
    let mut bulk = Vec::new();
    for t in tasks {
        bulk.push(t.await.unwrap().unwrap().seq.0);
    }
    bulk.sort_unstable();
    assert_eq!(bulk, (4..54).collect::<Vec<_>>());

    // Near-real-time: searchable within a second of the ack.
    let acked = Instant::now();
    let hits = loop {
        let h = archive.search("zebracorn", 10).unwrap();
        if !h.is_empty() || acked.elapsed() > Duration::from_secs(1) {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seqs(&hits), vec![2], "not searchable within 1 s");
    tokio::time::sleep(Duration::from_millis(700)).await;

    assert_eq!(seqs(&archive.search("transfer", 10).unwrap()), vec![1, 2]);
    assert_eq!(
        seqs(&archive.search("\"wire transfer\"", 10).unwrap()),
        vec![1]
    );
    assert_eq!(
        seqs(&archive.search("\"transfer wire\"", 10).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&archive.search("transfer -zebracorn", 10).unwrap()),
        vec![1]
    );
    assert_eq!(
        seqs(&archive.search("from:alice@example.test", 10).unwrap()),
        vec![1, 3]
    );
    assert_eq!(
        seqs(
            &archive
                .search("from:alice@example.test/laptop", 10)
                .unwrap()
        ),
        vec![1, 3]
    );
    assert_eq!(
        seqs(&archive.search("from:alice@example.test/phone", 10).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&archive.search("with:carol@example.test", 10).unwrap()),
        vec![3]
    );
    assert_eq!(
        seqs(
            &archive
                .search("with:bob@example.test transfer", 10)
                .unwrap()
        ),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&archive.search("direction:inbound", 10).unwrap()),
        vec![2]
    );
    assert_eq!(seqs(&archive.search("action:redact", 10).unwrap()), vec![3]);
    assert_eq!(seqs(&archive.search("rule:pci-card", 10).unwrap()), vec![3]);
    assert_eq!(
        seqs(
            &archive
                .search("type:chat from:bob@example.test", 10)
                .unwrap()
        ),
        vec![2]
    );
    assert_eq!(archive.search("bulk", 5).unwrap().len(), 5);
    assert_eq!(
        seqs(&archive.search("bulk", 3).unwrap()),
        vec![51, 52, 53],
        "newest matches, in time order"
    );
    let after = r2.time.to_string();
    assert!(archive
        .search(&format!("after:{after} transfer"), 10)
        .unwrap()
        .iter()
        .all(|h| h.time >= r2.time));
    assert!(archive.search("before:2000-01-01", 10).unwrap().is_empty());
    assert!(matches!(
        archive.search("colour:red", 10),
        Err(SearchError::Query(_))
    ));

    // The hit is exactly the documented JSON.
    let h = &archive.search("rule:pci-card", 1).unwrap()[0];
    let json = serde_json::to_string(h).unwrap();
    let expected = format!(
        r#"{{"seq":3,"time":"{}","direction":"outbound","from":"alice@example.test/laptop","to":"carol@example.test/phone","type":"chat","body":"my card is 4111 1111","action":"redact","rules":["pci-card"],"delivered_body":"card ████","message":"","via":"direct","leg":"client-to-server","account":"","session":"s1","retention_class":"default"}}"#,
        r3.time
    );
    assert_eq!(json, expected);

    // A second reader (as another process would) sees the same while the writer runs.
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    assert_eq!(seqs(&reader.search("transfer", 10).unwrap()), vec![1, 2]);
    let live = verify(&dir, Some(&master), &public, |_, _| {});
    assert!(live.is_clean(), "{:?}", live.problems);

    archive.close().await.unwrap();

    let report = verify(&dir, Some(&master), &public, |_, _| {});
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.last_seq, 53);

    // Promise 3: no plaintext of bodies or JIDs anywhere in the archive dir.
    for needle in ["zebracorn", "alice@example", "pci-card"] {
        for entry in walk(&dir) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in plaintext in {}",
                entry.display()
            );
        }
    }

    // Reopen: records and index survive; the rebuilt index gives the same answers.
    let archive = Archive::open(ArchiveConfig::new(
        dir.clone(),
        master.clone(),
        signing.clone(),
    ))
    .unwrap();
    assert_eq!(seqs(&archive.search("transfer", 10).unwrap()), vec![1, 2]);
    let r = archive
        .append(msg(
            a,
            b,
            Direction::Outbound,
            "after reopen",
            Action::Allow,
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(r.seq.0, 54);
    archive.close().await.unwrap();
    assert_eq!(reindex(&dir, &master, |_, _| {}).unwrap(), 54);
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    assert_eq!(seqs(&reader.search("transfer", 10).unwrap()), vec![1, 2]);
    assert_eq!(seqs(&reader.search("reopen", 10).unwrap()), vec![54]);

    // Chain data for export: heads link up and content hashes are reproducible.
    let mut prev = None;
    reader
        .scan(1, |e| {
            assert!(e.record.is_some() && e.salt.is_some());
            if let Some(p) = prev {
                assert_eq!(e.seq, p + 1);
            }
            prev = Some(e.seq);
            Ok::<(), ReadError>(())
        })
        .unwrap();
    assert_eq!(prev, Some(54));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn refuses_master_key_inside_archive_dir_and_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    std::fs::create_dir_all(&dir).unwrap();
    let c = keys_init(&dir.join("master.key"), &tmp.path().join("signing.key")).unwrap();
    let inside = MasterKey::from_file(&c.master_key).unwrap();
    let signing = load_signing_key(&c.signing_key).unwrap();
    let err = Archive::open(ArchiveConfig::new(dir.clone(), inside, signing.clone())).unwrap_err();
    assert!(matches!(err, OpenError::KeyInsideArchive { .. }), "{err}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let good = MasterKey::from_bytes([1; 32]);
    rt.block_on(
        Archive::open(ArchiveConfig::new(dir.clone(), good, signing.clone()))
            .unwrap()
            .close(),
    )
    .unwrap();
    let err = Archive::open(ArchiveConfig::new(
        dir.clone(),
        MasterKey::from_bytes([2; 32]),
        signing,
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("master key does not match"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_signs_a_checkpoint_covering_the_newest_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing, public) = keys(tmp.path());
    let archive = Archive::open(ArchiveConfig::new(dir.clone(), master.clone(), signing)).unwrap();
    for i in 0..3 {
        archive
            .append(msg(
                "a@x/r",
                "b@x",
                Direction::Outbound,
                &format!("m{i}"),
                Action::Allow,
                &[],
            ))
            .await
            .unwrap();
    }
    // Far fewer than `checkpoint_every` records, but the writer goes quiet: within a
    // couple of seconds a checkpoint covers the last seq, with the archive still open.
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let report = verify(&dir, Some(&master), &public, |_, _| {});
        if report.checkpoints >= 1 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.checkpoints >= 1,
        "no checkpoint while idle: {report:?}"
    );
    archive.close().await.unwrap();
}

/// The indexer's queue is bounded and the writer never waits on it: with a queue of one
/// batch, a burst makes the writer leave batches out, and the indexer reads what it
/// missed from the log. Every record is found; none is skipped by the index's mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_left_out_of_a_full_index_queue_are_read_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (master, signing, _) = keys(tmp.path());
    let mut cfg = ArchiveConfig::new(tmp.path().join("archive"), master, signing);
    cfg.index_queue = 1;
    let archive = Archive::open(cfg).unwrap();
    // A pipelined burst (few large batches keep the indexer busy), then appends one at
    // a time (a batch each), which arrive while it is.
    const BURST: usize = 4000;
    const N: usize = BURST + 400;
    let record = |i: usize| {
        let mut rec = msg(
            "alice@example.test/laptop",
            "bob@example.test",
            Direction::Outbound,
            &format!("overflowing burst {i}"),
            Action::Allow,
            &[],
        );
        if let NewRecord::Message(m) = &mut rec {
            m.id = Some(format!("burst-{i}"));
        }
        rec
    };
    let pending: Vec<_> = (0..BURST).map(|i| archive.submit(record(i))).collect();
    for p in pending {
        p.await.unwrap();
    }
    for i in BURST..N {
        archive.append(record(i)).await.unwrap();
    }
    assert!(
        archive.index_deferred() > 0,
        "the queue of one never filled: the test proves nothing"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while archive.index_lag() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(archive.index_lag(), 0, "{:?}", archive.index_health());
    let hits = archive.search("overflowing", N + 10).unwrap();
    assert_eq!(hits.len(), N, "records the index never took in");
    archive.close().await.unwrap();
}
