//! `verify` checks that the search index covers the log: a deleted, rolled-back or
//! foreign index is a located problem, never a quiet search that returns too little.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use custos_archive::*;

fn message(i: u64) -> NewRecord {
    NewRecord::Message(MessageRecord {
        direction: Direction::Outbound,
        session: SessionId("s".into()),
        from: "alice@example.test/laptop".into(),
        to: "bob@example.test".into(),
        stanza_type: "chat".into(),
        id: None,
        origin_id: None,
        stanza_id: None,
        thread: None,
        subject: None,
        body: Some(format!("coverage message {i}")),
        stanza: Vec::new(),
        outcome: Outcome {
            action: Action::Allow,
            rules: Vec::new(),
            delivered_body: None,
            severity: None,
            e2ee: None,
            would_action: None,
        },
        capture: Capture::default(),
    })
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

async fn session(m: &Made, range: std::ops::Range<u64>) {
    let a = Archive::open(ArchiveConfig::new(
        m.dir.clone(),
        m.master.clone(),
        m.signing.clone(),
    ))
    .unwrap();
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

    // Rolled back to an older copy: ten messages missing from search.
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
