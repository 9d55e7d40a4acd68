//! The witness against an administrator who wants records gone: with every checkpoint
//! also written outside the archive directory, cutting the end of the log — a whole
//! sealed segment, the active one, a truncation anywhere — is found and located, where
//! without a witness nothing left in the directory contradicts the cut.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use custos_archive::*;

fn note(i: u64) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "officer".into(),
        action: "search".into(),
        detail: format!("query {i}"),
    })
}

struct Made {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    witness: PathBuf,
    master: MasterKey,
    signing: SigningKey,
    public: VerifyingKey,
}

/// Three sessions of the archive (three sealed segments), each closed cleanly.
fn archive_with_witness(records_per_session: u64) -> Made {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let witness = tmp.path().join("elsewhere/witness");
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
    for session in 0..3 {
        let mut cfg = ArchiveConfig::new(dir.clone(), master.clone(), signing.clone());
        cfg.checkpoint_every = 5;
        cfg.witness = Some(witness.clone());
        let a = Archive::open(cfg).unwrap();
        rt.block_on(async {
            for i in 0..records_per_session {
                a.append(note(session * 100 + i)).await.unwrap();
            }
            a.close().await.unwrap();
        });
    }
    Made {
        _tmp: tmp,
        dir,
        witness,
        master,
        signing,
        public: c.verifying_key,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    s.sort();
    s
}

fn check(m: &Made) -> VerifyReport {
    verify_witnessed(&m.dir, Some(&m.master), &m.public, &m.witness, |_, _| {})
}

fn writable(path: &Path) {
    let mut p = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    std::fs::set_permissions(path, p).unwrap();
}

#[test]
fn a_cleanly_stopped_archive_is_fully_witnessed() {
    let m = archive_with_witness(12);
    let r = check(&m);
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert!(
        !r.notes.iter().any(|n| n.contains("not witnessed")),
        "{:?}",
        r.notes
    );
}

#[test]
fn removing_the_last_sealed_segment_is_found_with_the_records_lost() {
    let m = archive_with_witness(12);
    let last = segments(&m.dir).pop().unwrap();
    // Without the witness, nothing in the directory contradicts the cut once the
    // index is rebuilt to match it (root on the host can run reindex).
    writable(&last);
    std::fs::remove_file(&last).unwrap();
    reindex(&m.dir, &m.master, |_, _| {}).unwrap();
    let plain = verify(&m.dir, Some(&m.master), &m.public, |_, _| {});
    assert!(plain.is_clean(), "{:#?}", plain.problems);
    let r = check(&m);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("witnessed sealing checkpoint missing")
                && p.what.contains("were removed")
                && p.seq == Some(plain.last_seq + 12)),
        "{:#?}",
        r.problems
    );
}

#[test]
fn truncating_a_segment_anywhere_is_found() {
    for cut_to in [82u64, 200, 400] {
        let m = archive_with_witness(12);
        let last = segments(&m.dir).pop().unwrap();
        writable(&last);
        let len = std::fs::metadata(&last).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(cut_to.min(len - 1)).unwrap();
        let r = check(&m);
        assert!(
            r.problems
                .iter()
                .any(|p| p.what.contains("witnessed") && p.what.contains("missing")),
            "cut to {cut_to}: {:#?}",
            r.problems
        );
    }
}

#[test]
fn a_removed_or_foreign_witness_is_a_problem_not_a_pass() {
    let m = archive_with_witness(6);
    let files: Vec<PathBuf> = std::fs::read_dir(&m.witness)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    // Another archive's witness put in its place.
    let other = archive_with_witness(3);
    let theirs: Vec<PathBuf> = std::fs::read_dir(&other.witness)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::copy(&theirs[0], &files[0]).unwrap();
    let r = check(&m);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("another archive")),
        "{:#?}",
        r.problems
    );
    std::fs::remove_file(&files[0]).unwrap();
    let r = check(&m);
    assert!(
        r.problems.iter().any(|p| p.what.contains("is missing")),
        "{:#?}",
        r.problems
    );
}

/// Root with the keys moves the whole archive away and starts a new one, under a new
/// archive id, with the same configuration and witness directory, writing back only what
/// it wants kept. The new log reaches every checkpoint of its own witness; what shows the
/// replacement is the old archive's witness file, left in the directory.
#[test]
fn an_archive_started_afresh_beside_another_archives_witness_is_found() {
    let m = archive_with_witness(10);
    let before = check(&m);
    assert!(before.is_clean(), "{:#?}", before.problems);
    let old_id = before.archive_id.clone().unwrap();
    let old_file = m.witness.join(format!("{old_id}.witness"));
    assert!(old_file.exists(), "{}", old_file.display());
    std::fs::rename(&m.dir, m.dir.with_file_name("moved-away")).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = |shared: bool| {
        let mut cfg = ArchiveConfig::new(m.dir.clone(), m.master.clone(), m.signing.clone());
        cfg.checkpoint_every = 5;
        cfg.witness = Some(m.witness.clone());
        cfg.witness_shared = shared;
        cfg
    };
    // The fresh archive does not start its witness beside the other archive's.
    match Archive::open(config(false)) {
        Err(OpenError::Log(log::LogOpenError::Witness(
            e @ witness::WitnessError::Occupied { .. },
        ))) => {
            assert!(
                e.to_string().contains(&old_file.display().to_string()),
                "{e}"
            );
        }
        other => panic!("a new archive started beside another's witness: {other:?}"),
    }
    assert!(
        !m.dir.join(log::META_NAME).exists(),
        "the refused archive was created"
    );
    // Told the directory is shared (root can edit the configuration), it starts.
    let a = Archive::open(config(true)).unwrap();
    rt.block_on(async {
        for i in 0..3 {
            a.append(note(900 + i)).await.unwrap();
        }
        a.close().await.unwrap();
    });
    let r = check(&m);
    let new_id = r.archive_id.clone().unwrap();
    assert_ne!(new_id, old_id);
    // Its own witness is complete: only the other file can show the replacement.
    assert!(
        !r.problems.iter().any(|p| p.what.contains("missing")),
        "{:#?}",
        r.problems
    );
    let named: Vec<_> = r
        .problems
        .iter()
        .filter(|p| {
            p.what.contains(&old_file.display().to_string())
                && p.what.contains(&format!("archive {old_id}"))
                && p.what.contains(&new_id)
        })
        .collect();
    assert_eq!(named.len(), 1, "{:#?}", r.problems);
    assert!(
        named[0]
            .what
            .contains(&format!("the newest at seq {}", before.last_seq)),
        "{}",
        named[0].what
    );
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);

    // Renamed, the old witness is still found by its header.
    let hidden = m.witness.join("old.bak");
    std::fs::rename(&old_file, &hidden).unwrap();
    let r = check(&m);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains(&hidden.display().to_string())),
        "{:#?}",
        r.problems
    );
}

#[test]
fn a_witness_inside_the_archive_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let mut cfg = ArchiveConfig::new(
        dir.clone(),
        MasterKey::from_bytes([1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    cfg.witness = Some(dir.join("witness"));
    assert!(matches!(
        Archive::open(cfg),
        Err(OpenError::WitnessInsideArchive { .. })
    ));
}

/// A command that records an audit event while no server runs (`custos hold add`, an
/// export) opens the archive with its witness: the checkpoint its close writes over the
/// event is witnessed then, not left for the next `serve` to cover.
#[test]
fn an_audit_event_recorded_with_no_server_running_is_witnessed() {
    let m = archive_with_witness(3);
    let event = || EventRecord::Audit {
        actor: "officer".into(),
        action: "hold".into(),
        detail: "add".into(),
    };
    let unwitnessed = |r: &VerifyReport| r.notes.iter().any(|n| n.contains("not witnessed"));
    // Opened without it, as before: the event is past the witness's last entry.
    submit_audit(&m.dir, &m.master, &m.signing, event()).unwrap();
    assert!(unwitnessed(&check(&m)), "{:?}", check(&m).notes);

    let mut cfg = ArchiveConfig::new(m.dir.clone(), m.master.clone(), m.signing.clone());
    cfg.witness = Some(m.witness.clone());
    submit_audit_in(cfg, event()).unwrap();
    let r = check(&m);
    assert!(r.is_clean() && !unwitnessed(&r), "{r:#?}");
}
