//! Format compatibility: an archive written by record/segment format version 1 is checked
//! in under `tests/fixtures/v1/` and must keep opening, decrypting, verifying and
//! searching with every later version of this crate. Its master key is a test key that
//! protects nothing but the fixture.
//!
//! Regenerate (only when deliberately starting a new fixture version, never to make this
//! test pass): `cargo test -p custos-archive --test compat -- --ignored`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use custos_archive::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// The fixture's messages: (from, to, body, action, rules).
const MESSAGES: &[(&str, &str, &str, Action, &[&str])] = &[
    (
        "alice@example.test/laptop",
        "bob@example.test",
        "fixture: quarterly numbers attached",
        Action::Allow,
        &[],
    ),
    (
        "bob@example.test/phone",
        "alice@example.test",
        "fixture: thanks, card 4111 1111 1111 1111",
        Action::Block,
        &["pci-card"],
    ),
    (
        "alice@example.test/laptop",
        "dave@example.org",
        "fixture: project falcon kickoff",
        Action::Redact,
        &["codenames"],
    ),
];

fn record(i: usize) -> NewRecord {
    let (from, to, body, action, rules) = MESSAGES[i];
    NewRecord::Message(MessageRecord {
        session: SessionId(format!("s{i}")),
        id: Some(format!("m{i}")),
        stanza: format!("<message to='{to}' type='chat'><body>{body}</body></message>")
            .into_bytes(),
        outcome: Outcome {
            action,
            rules: rules.iter().map(|r| r.to_string()).collect(),
            delivered_body: (action == Action::Redact)
                .then(|| "fixture: project ██████ kickoff".to_string()),
            ..Outcome::allowed()
        },
        ..MessageRecord::chat(from, to, body)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the checked-in fixture; run only to create a new format version's fixture"]
async fn regenerate_v1_fixture() {
    let root = fixture();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let created = keys_init(
        &keys.path().join("master.key"),
        &keys.path().join("signing.key"),
    )
    .unwrap();
    std::fs::copy(&created.master_key, root.join("master.key")).unwrap();
    std::fs::copy(&created.public_key, root.join("signing.key.pub")).unwrap();
    let master = MasterKey::from_file(&created.master_key).unwrap();
    let signing = load_signing_key(&created.signing_key).unwrap();
    let archive = Archive::open(ArchiveConfig::new(root.join("archive"), master, signing)).unwrap();
    for i in 0..MESSAGES.len() {
        archive.append(record(i)).await.unwrap();
    }
    archive.close().await.unwrap();
    // The index is derived data (rebuilt by `reindex`); only the log is the format.
    std::fs::remove_dir_all(root.join("archive/index")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            // Sealed segments are read-only in the fixture; the copy must stay writable
            // only so the temp dir can be removed.
        }
    }
}

#[test]
fn version_1_archive_still_reads_verifies_and_searches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    copy_dir(&fixture().join("archive"), &dir);
    let master = MasterKey::from_file(&fixture().join("master.key")).unwrap();
    let public = load_verifying_key(&fixture().join("signing.key.pub")).unwrap();

    // The fixture holds the log alone: the index is derived, and verify says so.
    let report = verify(&dir, Some(&master), &public, |_, _| {});
    assert_eq!(
        report
            .problems
            .iter()
            .map(|p| p.what.as_str())
            .collect::<Vec<_>>(),
        ["search index: the search index is missing (run custos reindex)"]
    );
    assert_eq!(report.records, MESSAGES.len() as u64, "{report:?}");
    assert!(
        report.checkpoints >= 1,
        "the sealed fixture ends with a signed checkpoint"
    );

    assert_eq!(
        reindex(&dir, &master, |_, _| {}).unwrap(),
        MESSAGES.len() as u64
    );
    let report = verify(&dir, Some(&master), &public, |_, _| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let reader = ArchiveReader::open(&dir, &master).unwrap();
    let hits = reader.search("fixture", 10).unwrap();
    assert_eq!(hits.len(), MESSAGES.len());
    for (hit, (from, to, body, action, rules)) in hits.iter().zip(MESSAGES) {
        assert_eq!((hit.from.as_str(), hit.to.as_str()), (*from, *to));
        assert_eq!(hit.body.as_deref(), Some(*body));
        assert_eq!(hit.action, *action);
        assert_eq!(
            hit.rules,
            rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        hits[2].delivered_body.as_deref(),
        Some("fixture: project ██████ kickoff")
    );
    assert_eq!(reader.search("rule:pci-card", 10).unwrap().len(), 1);
}
