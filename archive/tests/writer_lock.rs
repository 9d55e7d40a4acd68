//! One writer per archive directory: a second `Archive::open` (or `reindex`)
//! is refused with `Locked` while a writer runs, in this process or another,
//! readers and `verify` are not; the lock goes with the writer, also when the
//! writing process is killed.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custos_archive::*;

fn audit(detail: &str) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "ada".into(),
        action: "search".into(),
        detail: detail.into(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_is_refused_until_the_first_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing, public) = keys(tmp.path());
    let cfg = ArchiveConfig::new(dir.clone(), master.clone(), signing.clone());
    let first = Archive::open(cfg.clone()).unwrap();
    let r1 = first.append(audit("one")).await.unwrap();

    let err = Archive::open(cfg.clone()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Locked { dir: d } if d.ends_with("archive")),
        "{err}"
    );
    assert!(
        err.to_string().contains("another process is writing"),
        "{err}"
    );
    let err = reindex(&dir, &master, |_, _| {}).unwrap_err();
    assert!(matches!(err, ReindexError::Locked { .. }), "{err}");
    // The refused open touched nothing: the first writer goes on appending.
    let r2 = first.append(audit("two")).await.unwrap();
    assert_eq!(r2.seq.0, r1.seq.0 + 1);
    // Readers and verify need no lock.
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    assert_eq!(reader.records(1..=u64::MAX).unwrap().len(), 2);
    let report = verify(&dir, Some(&master), &public, |_, _| {});
    assert!(report.is_clean(), "{:#?}", report.problems);

    first.close().await.unwrap();
    let second = Archive::open(cfg.clone()).unwrap();
    assert_eq!(second.append(audit("three")).await.unwrap().seq.0, 3);
    second.close().await.unwrap();
    assert_eq!(reindex(&dir, &master, |_, _| {}).unwrap(), 3);
    let report = verify(&dir, Some(&master), &public, |_, _| {});
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert!(dir.join(WRITER_LOCK).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_clone_releases_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing, _) = keys(tmp.path());
    let cfg = ArchiveConfig::new(dir.clone(), master, signing);
    let a = Archive::open(cfg.clone()).unwrap();
    let b = a.clone();
    a.append(audit("x")).await.unwrap();
    drop(a);
    assert!(matches!(
        Archive::open(cfg.clone()),
        Err(OpenError::Locked { .. })
    ));
    drop(b);
    // The writer thread seals and lets go on its own once the channel closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match Archive::open(cfg.clone()) {
            Ok(a) => break a,
            Err(OpenError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    reopened.close().await.unwrap();
}

/// Another process writes (under load); this one is refused, hands an audit
/// event over through the inbox, and takes over once that process is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_held_by_another_process_and_released_by_its_death() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let created = keys_init(&secrets.join("master.key"), &secrets.join("signing.key")).unwrap();
    let master_b64 = std::fs::read_to_string(&created.master_key).unwrap();
    let master = MasterKey::from_file(&created.master_key).unwrap();
    let signing = load_signing_key(&created.signing_key).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_archive-crash-child"))
        .arg(&dir)
        .arg(&created.signing_key)
        .env("CUSTOS_MASTER_KEY", master_b64.trim())
        .env("CUSTOS_CHILD_MAX_SECS", "30")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("acked "));
    // Keep the pipe drained so the child never blocks on a full stdout.
    let drain = std::thread::spawn(move || for _ in lines {});

    let cfg = ArchiveConfig::new(dir.clone(), master.clone(), signing.clone());
    assert!(matches!(
        Archive::open(cfg.clone()),
        Err(OpenError::Locked { .. })
    ));
    let detail = "exported query \"from:alice\"";
    let submitted = submit_audit(
        &dir,
        &master,
        &signing,
        EventRecord::Audit {
            actor: "ada".into(),
            action: "export".into(),
            detail: detail.into(),
        },
    )
    .unwrap();
    let AuditSubmitted::Queued { path } = submitted else {
        panic!("appended directly beside a running writer: {submitted:?}");
    };
    // The busy writer in the other process takes it over.
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let mut cursor = custos_archive::archive::TailCursor::new();
    let start = Instant::now();
    let mut found = Vec::new();
    while found.is_empty() && start.elapsed() < Duration::from_secs(5) {
        reader
            .tail(&mut cursor, |e| {
                if let Some(Record {
                    content: NewRecord::Event(EventRecord::Audit { detail: d, .. }),
                    seq,
                    ..
                }) = e.record
                {
                    if d == detail {
                        found.push(seq.0);
                    }
                }
                Ok::<(), ReadError>(())
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(found.len(), 1, "not appended by the other process's writer");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let gone = Instant::now() + Duration::from_secs(2);
    while path.exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!path.exists(), "inbox file left after its append");

    child.kill().unwrap(); // SIGKILL: the kernel drops the lock with the process
    child.wait().unwrap();
    drain.join().unwrap();
    let archive = Archive::open(cfg).unwrap();
    archive.close().await.unwrap();
    let all = ArchiveReader::open(&dir, &master)
        .unwrap()
        .records(1..=u64::MAX)
        .unwrap();
    let copies = all
        .iter()
        .filter(|r| matches!(&r.content, NewRecord::Event(EventRecord::Audit { detail: d, .. }) if d == detail))
        .count();
    assert_eq!(copies, 1);
    let report = verify(&dir, Some(&master), &created.verifying_key, |_, _| {});
    assert!(report.is_clean(), "{:#?}", report.problems);
}
