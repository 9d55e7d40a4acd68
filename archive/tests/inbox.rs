//! Audit events from processes that do not hold the writer: `submit_audit`
//! appends directly when the archive is free, otherwise queues an encrypted
//! inbox file the writer appends within about a second, exactly once;
//! unusable inbox files are moved aside and their refusal is recorded.

#![allow(clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use custos_archive::inbox::{INBOX_DIR, REJECTED_DIR};
use custos_archive::*;

struct Keys {
    master: MasterKey,
    signing: SigningKey,
    public: VerifyingKey,
}

fn keys(tmp: &Path) -> Keys {
    let c = keys_init(&tmp.join("master.key"), &tmp.join("signing.key")).unwrap();
    Keys {
        master: MasterKey::from_file(&c.master_key).unwrap(),
        signing: load_signing_key(&c.signing_key).unwrap(),
        public: c.verifying_key,
    }
}

fn event(detail: &str) -> EventRecord {
    EventRecord::Audit {
        actor: "ada@compliance".into(),
        action: "export".into(),
        detail: detail.into(),
    }
}

/// A fresh archive with one record, closed.
async fn create(dir: &Path, k: &Keys) -> ArchiveConfig {
    let cfg = ArchiveConfig::new(dir.to_path_buf(), k.master.clone(), k.signing.clone());
    let a = Archive::open(cfg.clone()).unwrap();
    a.append(NewRecord::Event(event("created"))).await.unwrap();
    a.close().await.unwrap();
    cfg
}

/// Holds the writer lock the way a writer in another process would, without
/// draining the inbox.
fn hold_lock(dir: &Path) -> File {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(WRITER_LOCK))
        .unwrap();
    f.try_lock().unwrap();
    f
}

fn audits(dir: &Path, master: &MasterKey) -> Vec<(u64, String, String, String)> {
    ArchiveReader::open(dir, master)
        .unwrap()
        .records(1..=u64::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.content {
            NewRecord::Event(EventRecord::Audit {
                actor,
                action,
                detail,
            }) => Some((r.seq.0, actor, action, detail)),
            _ => None,
        })
        .collect()
}

fn with_detail(dir: &Path, master: &MasterKey, detail: &str) -> Vec<u64> {
    audits(dir, master)
        .into_iter()
        .filter(|a| a.3 == detail)
        .map(|a| a.0)
        .collect()
}

fn queue(dir: &Path, k: &Keys, detail: &str) -> PathBuf {
    match submit_audit(dir, &k.master, &k.signing, event(detail)).unwrap() {
        AuditSubmitted::Queued { path } => path,
        other => panic!("expected Queued, got {other:?}"),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn verify_clean(dir: &Path, k: &Keys) {
    let report = verify(dir, Some(&k.master), &k.public, |_, _| {});
    assert!(report.is_clean(), "{:#?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writer_running_appends_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let k = keys(tmp.path());
    create(&dir, &k).await;
    let detail = r#"{"query":"from:alice merger","hits":3}"#;
    let got = tokio::task::spawn_blocking({
        let (dir, master, signing) = (dir.clone(), k.master.clone(), k.signing.clone());
        move || submit_audit(&dir, &master, &signing, event(detail))
    })
    .await
    .unwrap()
    .unwrap();
    let AuditSubmitted::Appended { seq } = got else {
        panic!("queued although no writer runs: {got:?}");
    };
    assert_eq!(with_detail(&dir, &k.master, detail), [seq.0]);
    assert!(!dir.join(INBOX_DIR).exists());
    verify_clean(&dir, &k);
    // The lock went with the brief writer.
    Archive::open(ArchiveConfig::new(dir, k.master, k.signing))
        .unwrap()
        .close()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_writer_appends_a_submission_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let k = keys(tmp.path());
    let cfg = create(&dir, &k).await;
    let archive = Archive::open(cfg).unwrap();
    // Keep the writer busy: it must still look into the inbox.
    let busy = {
        let a = archive.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while a.append(NewRecord::Event(event("load"))).await.is_ok() {
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let detail = "viewed conversation alice/bob";
    let start = Instant::now();
    let path = tokio::task::spawn_blocking({
        let (dir, k2) = (
            dir.clone(),
            Keys {
                master: k.master.clone(),
                signing: k.signing.clone(),
                public: k.public,
            },
        );
        move || queue(&dir, &k2, detail)
    })
    .await
    .unwrap();
    let mut seqs = Vec::new();
    while seqs.is_empty() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seqs = with_detail(&dir, &k.master, detail);
    }
    let took = start.elapsed();
    assert_eq!(seqs.len(), 1, "not appended");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!path.exists(), "inbox file not removed");
    assert_eq!(archive.inbox_health(), None);
    archive.close().await.unwrap();
    assert!(busy.await.unwrap() > 0);
    assert_eq!(with_detail(&dir, &k.master, detail).len(), 1);
    verify_clean(&dir, &k);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_file_is_encrypted_and_appended_when_the_writer_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let k = keys(tmp.path());
    let cfg = create(&dir, &k).await;
    let lock = hold_lock(&dir);
    let detail = "search: \"insider tip\" AND from:carol@example.test";
    let path = queue(&dir, &k, detail);
    assert_eq!(path.parent().unwrap(), dir.join(INBOX_DIR));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"CUSTOSIB");
    assert_eq!(&bytes[8..10], &[0, 1]);
    for plain in [
        detail,
        "insider tip",
        "carol@example.test",
        "ada@compliance",
        "export",
    ] {
        assert!(!contains(&bytes, plain.as_bytes()), "{plain:?} in clear");
    }
    // Nothing but the file itself was left behind (no temp file).
    let names: Vec<_> = std::fs::read_dir(dir.join(INBOX_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(with_detail(&dir, &k.master, detail).is_empty());

    drop(lock);
    let archive = Archive::open(cfg).unwrap();
    // Appended by the open itself, before the writer thread starts.
    assert_eq!(with_detail(&dir, &k.master, detail).len(), 1);
    assert!(!path.exists());
    archive.close().await.unwrap();
    verify_clean(&dir, &k);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_inbox_files_are_moved_aside_and_the_refusal_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let k = keys(tmp.path());
    let cfg = create(&dir, &k).await;
    // A well-formed submission sealed for another archive (another master key).
    let other_dir = tmp.path().join("other");
    let other_keys = tmp.path().join("other-keys");
    std::fs::create_dir_all(&other_keys).unwrap();
    let other = keys(&other_keys);
    create(&other_dir, &other).await;
    let lock = hold_lock(&other_dir);
    let foreign = queue(&other_dir, &other, "secret of another archive");
    drop(lock);

    let archive = Archive::open(cfg).unwrap();
    let inbox = dir.join(INBOX_DIR);
    std::fs::create_dir_all(&inbox).unwrap();
    let garbage = "00112233445566778899aabbccddeeff.sub";
    std::fs::write(inbox.join(garbage), b"this is not an inbox file").unwrap();
    let misfiled = foreign.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::copy(&foreign, inbox.join(&misfiled)).unwrap();
    std::fs::write(inbox.join("notes.txt"), b"hello").unwrap();

    let start = Instant::now();
    let mut rejected = Vec::new();
    while rejected.len() < 3 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rejected = audits(&dir, &k.master)
            .into_iter()
            .filter(|a| a.1 == "custos" && a.2 == "inbox-rejected")
            .map(|a| a.3)
            .collect();
    }
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let reason = |name: &str| {
        rejected
            .iter()
            .find(|d| d.starts_with(name))
            .unwrap()
            .clone()
    };
    assert!(reason(garbage).contains("bad magic"), "{rejected:?}");
    assert!(
        reason(&misfiled).contains("does not decrypt"),
        "{rejected:?}"
    );
    assert!(
        reason("notes.txt").contains("not an inbox file name"),
        "{rejected:?}"
    );
    // Each refusal is recorded before its file is moved aside: wait for the moves.
    let names = [garbage, misfiled.as_str(), "notes.txt"];
    let start = Instant::now();
    while names.iter().any(|n| inbox.join(n).exists()) && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in names {
        assert!(!inbox.join(name).exists(), "{name} left in the inbox");
        assert!(
            inbox.join(REJECTED_DIR).join(name).is_file(),
            "{name} not kept"
        );
    }
    // Nothing of the refused files became a record.
    assert!(with_detail(&dir, &k.master, "secret of another archive").is_empty());
    archive.close().await.unwrap();
    // Refused once, not again on the next open.
    Archive::open(ArchiveConfig::new(
        dir.clone(),
        k.master.clone(),
        k.signing.clone(),
    ))
    .unwrap()
    .close()
    .await
    .unwrap();
    let again = audits(&dir, &k.master)
        .into_iter()
        .filter(|a| a.2 == "inbox-rejected")
        .count();
    assert_eq!(again, 3);
    verify_clean(&dir, &k);
}

/// A writer that crashed after appending a submission but before removing
/// its file leaves `<id>.<seq>.claimed`: the next writer must not append it
/// again; a claim whose seq holds another record is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_file_left_by_a_crash_is_appended_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let k = keys(tmp.path());
    let cfg = create(&dir, &k).await;
    let inbox = dir.join(INBOX_DIR);

    // Appended, then "crashed" before the removal: restore the file as claimed.
    let lock = hold_lock(&dir);
    let path = queue(&dir, &k, "done before the crash");
    let kept = std::fs::read(&path).unwrap();
    drop(lock);
    Archive::open(cfg.clone()).unwrap().close().await.unwrap();
    let seqs = with_detail(&dir, &k.master, "done before the crash");
    assert_eq!(seqs.len(), 1);
    let id = path.file_stem().unwrap().to_str().unwrap();
    let claimed = inbox.join(format!("{id}.{}.claimed", seqs[0]));
    std::fs::write(&claimed, &kept).unwrap();

    // Claimed, then "crashed" before the append: seq 1 holds another record.
    let lock = hold_lock(&dir);
    let path2 = queue(&dir, &k, "claimed but never appended");
    drop(lock);
    let id2 = path2.file_stem().unwrap().to_str().unwrap();
    let claimed2 = inbox.join(format!("{id2}.1.claimed"));
    std::fs::rename(&path2, &claimed2).unwrap();

    Archive::open(cfg).unwrap().close().await.unwrap();
    assert_eq!(with_detail(&dir, &k.master, "done before the crash"), seqs);
    assert_eq!(
        with_detail(&dir, &k.master, "claimed but never appended").len(),
        1
    );
    assert!(!claimed.exists() && !claimed2.exists());
    verify_clean(&dir, &k);
}

#[test]
fn only_audit_events_are_accepted_and_the_archive_must_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(tmp.path());
    let dir = tmp.path().join("archive");
    let session = EventRecord::SessionStart {
        session: SessionId("s".into()),
        jid: "a@example.test".into(),
        client_addr: "127.0.0.1:1".into(),
        resource: "r".into(),
    };
    assert!(matches!(
        submit_audit(&dir, &k.master, &k.signing, session),
        Err(SubmitError::NotAudit)
    ));
    assert!(matches!(
        submit_audit(&dir, &k.master, &k.signing, event("x")),
        Err(SubmitError::Archive(_))
    ));
    assert!(!dir.exists(), "a submission must not create an archive");
}

/// A refused file that cannot be moved aside is recorded once, not on every
/// drain, and moved once that becomes possible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_file_that_cannot_be_moved_is_recorded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let k = keys(tmp.path());
    let cfg = create(&dir, &k).await;
    let inbox = dir.join(INBOX_DIR);
    std::fs::create_dir_all(&inbox).unwrap();
    // A file where the rejected directory should be: moving aside fails.
    std::fs::write(inbox.join(REJECTED_DIR), b"in the way").unwrap();
    std::fs::write(inbox.join("stray.bin"), b"junk").unwrap();
    let archive = Archive::open(cfg).unwrap();
    let refusals = || {
        audits(&dir, &k.master)
            .into_iter()
            .filter(|a| a.2 == "inbox-rejected")
            .count()
    };
    // The file in the way is itself refused, once, like the stray one.
    assert_eq!(refusals(), 2);
    assert!(archive.inbox_health().unwrap().contains("stray.bin"));
    tokio::time::sleep(Duration::from_millis(2500)).await; // two more drains
    assert_eq!(refusals(), 2);
    assert!(inbox.join("stray.bin").exists());

    std::fs::remove_file(inbox.join(REJECTED_DIR)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while inbox.join("stray.bin").exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(inbox.join(REJECTED_DIR).join("stray.bin").is_file());
    assert_eq!(refusals(), 2);
    archive.close().await.unwrap();
    verify_clean(&dir, &k);
}
