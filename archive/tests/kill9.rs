//! Kill -9 a process appending under load, many times; after each restart the
//! archive verifies clean and every acknowledged record is present.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use custos_archive::{keys_init, verify, ArchiveReader, KeysCreated, MasterKey};

/// The crash child appending to the archive in `dir` until killed (or `max_secs` pass),
/// with the seqs it acknowledges and the thread that reads them from its output.
fn appending_child(
    dir: &Path,
    signing_key: &Path,
    master_b64: &str,
    max_secs: u64,
) -> (Child, Receiver<u64>, JoinHandle<()>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_archive-crash-child"))
        .arg(dir)
        .arg(signing_key)
        .env("CUSTOS_MASTER_KEY", master_b64.trim())
        .env("CUSTOS_CHILD_MAX_SECS", max_secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line
                .strip_prefix("acked ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let _ = tx.send(seq);
            }
        }
    });
    (child, rx, reader)
}

/// The archive's directory in `root`, and keys made outside it: as files, the master
/// key as the child takes it (base64) and as loaded.
fn keyed(root: &Path) -> (PathBuf, KeysCreated, String, MasterKey) {
    let secrets = root.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let created = keys_init(&secrets.join("master.key"), &secrets.join("signing.key")).unwrap();
    let master_b64 = std::fs::read_to_string(&created.master_key).unwrap();
    let master = MasterKey::from_file(&created.master_key).unwrap();
    (root.join("archive"), created, master_b64, master)
}

#[test]
fn kill_nine_under_load_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, created, master_b64, master) = keyed(tmp.path());
    let mut acked = BTreeSet::new();
    let rounds = 6;
    for round in 0..rounds {
        let (mut child, rx, reader) = appending_child(&dir, &created.signing_key, &master_b64, 20);
        // Let it run a varying while after its first ack, then kill it hard.
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child acked nothing");
        acked.insert(first);
        let run_for = Duration::from_millis(150 + 130 * round as u64);
        let start = Instant::now();
        while start.elapsed() < run_for {
            if let Ok(seq) = rx.recv_timeout(Duration::from_millis(10)) {
                acked.insert(seq);
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
    }
    assert!(acked.len() > 100, "only {} acks", acked.len());
    // A last, clean open recovers whatever the final kill left.
    let mut cfg = custos_archive::ArchiveConfig::new(
        dir.clone(),
        master.clone(),
        custos_archive::load_signing_key(&created.signing_key).unwrap(),
    );
    cfg.checkpoint_every = 50;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(custos_archive::Archive::open(cfg).unwrap().close())
        .unwrap();

    let report = verify(&dir, Some(&master), &created.verifying_key, |_, _| {});
    assert!(report.is_clean(), "{:#?}", report.problems);
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let present: BTreeSet<u64> = reader
        .records(1..=u64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq.0)
        .collect();
    let missing: Vec<_> = acked.difference(&present).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert_eq!(report.last_seq, *present.iter().max().unwrap());
}

/// A writer killed while it rebuilds a lost index, appending all the while: the index
/// it leaves is far behind the log, by records older than a crash's last moment, yet
/// `verify` reads that as the rebuild it is (its commits say what they owe), not as an
/// index rolled back; and the next open finishes the rebuild.
#[test]
fn kill_nine_during_a_rebuild_is_not_a_rolled_back_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, created, master_b64, master) = keyed(tmp.path());
    let signing = custos_archive::load_signing_key(&created.signing_key).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = custos_archive::ArchiveConfig::new(dir.clone(), master.clone(), signing.clone());
    rt.block_on(async {
        let a = custos_archive::Archive::open(cfg).unwrap();
        let sent: Vec<_> = (0..30_000)
            .map(|i| {
                a.submit(custos_archive::NewRecord::Message(
                    custos_archive::MessageRecord::chat(
                        "alice@example.test/laptop",
                        "bob@example.test",
                        format!("before the rebuild {i}"),
                    ),
                ))
            })
            .collect();
        for s in sent {
            s.await.unwrap();
        }
        a.close().await.unwrap();
    });
    // Older than any crash's last moment, by the time of the kill.
    std::thread::sleep(Duration::from_millis(3200));
    std::fs::remove_dir_all(dir.join("index")).unwrap();

    let (mut child, rx, reader) = appending_child(&dir, &created.signing_key, &master_b64, 60);
    rx.recv_timeout(Duration::from_secs(60))
        .expect("child acked nothing");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();

    let end = ArchiveReader::open(&dir, &master)
        .unwrap()
        .chain_end()
        .unwrap();
    let report = verify(&dir, Some(&master), &created.verifying_key, |_, _| {});
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("search index covers seqs up to")),
        "the rebuild was done before the kill: {:?}",
        report.notes
    );

    let done = custos_archive::update_index(&dir, &master, |_, _| {}).unwrap();
    assert_eq!(done.through, end);
    let report = verify(&dir, Some(&master), &created.verifying_key, |_, _| {});
    assert!(report.is_clean(), "{:#?}", report.problems);
}
