//! Export and verify-export against a real archive filled with
//! `Archive::append`: a fresh export verifies, and each kind of tampering is
//! found and located.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use super::parquet_out::{ExportRow, ParquetLimits, PartsWriter};
use super::verify_export::{bytes, col, shown_of};
use super::*;
use crate::archive::{Archive, ArchiveConfig};
use crate::record::{Action, Direction, MessageRecord, Outcome, SessionId};

fn msg(from: &str, to: &str, ty: &str, body: &str, action: Action) -> NewRecord {
    NewRecord::Message(MessageRecord {
        direction: if from.starts_with("alice") {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        session: SessionId("s1".into()),
        from: from.into(),
        to: to.into(),
        stanza_type: ty.into(),
        id: Some("m1".into()),
        origin_id: None,
        stanza_id: None,
        thread: None,
        subject: None,
        body: Some(body.into()),
        stanza: format!("<message><body>{body}</body></message>").into_bytes(),
        outcome: Outcome {
            action,
            rules: if action == Action::Allow {
                vec![]
            } else {
                vec!["pci-card".into(), "r2".into()]
            },
            delivered_body: (action == Action::Redact).then(|| "card ████".to_string()),
            severity: None,
            e2ee: None,
            would_action: None,
        },
        capture: crate::record::Capture {
            via: if action == Action::Flag {
                crate::record::Via::CarbonReceived
            } else {
                crate::record::Via::Direct
            },
            account: format!("{}/r", crate::query::bare_jid(from)),
            identity: format!("{:x}", body.len() * 7919 + from.len()),
            delivered_identity: (action == Action::Redact).then(|| "delivered-id".to_string()),
            extra: if action == Action::Flag {
                vec![crate::record::Text {
                    kind: "body".into(),
                    lang: Some("de".into()),
                    text: "<b>zweite</b> Sprache".into(),
                }]
            } else {
                Vec::new()
            },
            edit: (action == Action::Block).then(|| crate::record::Edit {
                kind: crate::record::EditKind::Correction,
                target: "m0".into(),
            }),
            claimed_from: (action == Action::Block).then(|| "eve@example.test/forged".to_string()),
            retention_class: String::new(),
            occupant: None,
            files: Vec::new(),
        },
    })
}

pub(crate) struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub archive: PathBuf,
    pub master: MasterKey,
    pub signing: SigningKey,
}

/// Two sessions of the archive (two sealed segments), a checkpoint every 5
/// records, messages in three conversations, hostile bodies, and an event.
pub(crate) fn fixture(n: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let master = MasterKey::from_bytes([9; 32]);
    let signing = SigningKey::from_bytes(&[4; 32]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for part in 0..2 {
        let mut cfg = ArchiveConfig::new(archive.clone(), master.clone(), signing.clone());
        cfg.checkpoint_every = 5;
        cfg.segment_max_age = Duration::from_secs(3600);
        let a = Archive::open(cfg).unwrap();
        rt.block_on(async {
            for i in 0..n {
                let r = match i % 4 {
                    0 => msg(
                        "alice@example.test/laptop",
                        "bob@example.test",
                        "chat",
                        &format!("wire {i} <script>alert(1)</script>"),
                        Action::Allow,
                    ),
                    1 => msg(
                        "bob@example.test/phone",
                        "alice@example.test",
                        "chat",
                        &format!("reply {i} & \"quoted\""),
                        Action::Flag,
                    ),
                    2 => msg(
                        "alice@example.test/laptop",
                        "room@muc.example.test",
                        "groupchat",
                        &format!("card 4111 {i}"),
                        Action::Redact,
                    ),
                    _ => msg(
                        "carol@example.test",
                        "alice@example.test/laptop",
                        "chat",
                        &format!("hello {i}"),
                        Action::Block,
                    ),
                };
                a.append(r).await.unwrap();
            }
            a.append(NewRecord::Event(EventRecord::Audit {
                actor: "officer".into(),
                action: "search".into(),
                detail: format!("part {part}"),
            }))
            .await
            .unwrap();
            a.close().await.unwrap();
        });
    }
    Fixture {
        _tmp: tmp,
        archive,
        master,
        signing,
    }
}

fn run_export(f: &Fixture, out: &Path, req: &ExportRequest) -> ExportSummary {
    let opts = ExportOptions {
        parquet: ParquetLimits {
            row_group_rows: 4,
            row_group_bytes: 1 << 20,
            rows_per_file: 10,
        },
    };
    export_with(
        &f.archive,
        &f.master,
        &f.signing,
        out,
        req,
        &opts,
        |_, _| {},
    )
    .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn fresh_export_verifies_and_is_complete() {
    let f = fixture(9);
    let out = f._tmp.path().join("out");
    let s = run_export(&f, &out, &ExportRequest::default());
    // 2 × (9 messages + 1 audit) plus the archive's own records, if any.
    assert!(s.records >= 20, "{s:?}");
    assert_eq!(s.records, s.scanned);
    assert!(
        s.files.iter().any(|p| p.ends_with("part-00001.parquet")),
        "rolled to a second part"
    );
    assert!(!f._tmp.path().join("out.partial").exists());
    let r = verify_export(&out, &f.signing.verifying_key());
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(
        (r.records, r.proven, r.withheld_in_range),
        (s.records, s.records, 0)
    );
    assert_eq!((r.first_seq, r.last_seq), (s.first_seq, s.last_seq));
    // Every HTML page is script-free and escapes hostile bodies.
    for p in s
        .files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
    {
        let html = std::fs::read_to_string(out.join(p)).unwrap();
        assert!(!html.contains("<script"), "{p:?}");
    }
    let chat = std::fs::read_to_string(
        out.join(
            s.files
                .iter()
                .find(|p| {
                    p.starts_with("transcripts")
                        && std::fs::read_to_string(out.join(p)).unwrap().contains(
                            "Conversation between alice@example.test and bob@example.test",
                        )
                })
                .unwrap(),
        ),
    )
    .unwrap();
    assert!(chat.contains("wire 0 &lt;script&gt;alert(1)&lt;/script&gt;"));
    // A wrong public key fails the manifest and every checkpoint.
    let other = SigningKey::from_bytes(&[5; 32]).verifying_key();
    let bad = verify_export(&out, &other);
    assert!(bad
        .problems
        .iter()
        .any(|p| p.file.as_deref() == Some("manifest.sig")));
    assert_eq!(bad.proven, 0);
    // The output directory is never reused.
    let again = export_with(
        &f.archive,
        &f.master,
        &f.signing,
        &out,
        &ExportRequest::default(),
        &ExportOptions::default(),
        |_, _| {},
    );
    assert!(matches!(again, Err(ExportError::OutExists(_))));
}

#[test]
fn query_export_proves_only_selected_rows() {
    let f = fixture(9);
    let out = f._tmp.path().join("q");
    let req = ExportRequest {
        query: Some("from:bob@example.test".into()),
        ..ExportRequest::default()
    };
    let s = run_export(&f, &out, &req);
    assert_eq!(s.records, 4, "i % 4 == 1 for i in 0..9, twice");
    let r = verify_export(&out, &f.signing.verifying_key());
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(r.proven, 4);
    assert!(r.withheld_in_range > 0);
    let summary_audit = s.audit_record("officer");
    let NewRecord::Event(EventRecord::Audit { action, detail, .. }) = summary_audit else {
        panic!()
    };
    assert_eq!(action, "export");
    assert!(
        detail.contains("from:bob@example.test") && detail.contains("\"records\":4"),
        "{detail}"
    );
}

#[test]
fn one_changed_byte_in_any_file_is_found_and_named() {
    let f = fixture(6);
    let out = f._tmp.path().join("out");
    let s = run_export(&f, &out, &ExportRequest::default());
    for (i, p) in s.files.iter().enumerate() {
        let copy = f._tmp.path().join(format!("t{i}"));
        copy_dir(&out, &copy);
        let path = copy.join(p);
        let mut b = std::fs::read(&path).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        std::fs::write(&path, &b).unwrap();
        let r = verify_export(&copy, &f.signing.verifying_key());
        let name = p.to_str().unwrap();
        assert!(
            r.problems.iter().any(|q| q.file.as_deref() == Some(name)),
            "flip in {name}: {:#?}",
            r.problems
        );
    }
}

/// Reads a part back into rows (the test plays a dishonest exporter).
fn read_part(path: &Path) -> Vec<ExportRow> {
    let rd = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    rd.into_iter()
        .map(|row| {
            let row = row.unwrap();
            let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let long = |n| match col(&fields, n) {
                Some(Field::Long(v)) => *v as u64,
                _ => panic!(),
            };
            ExportRow {
                shown: shown_of(&fields).unwrap(),
                record_hash: bytes::<32>(col(&fields, "record_hash")).unwrap(),
                ciphertext_hash: bytes::<32>(col(&fields, "ciphertext_hash")).unwrap(),
                salt: bytes::<16>(col(&fields, "salt")).unwrap(),
                canonical: match col(&fields, "canonical") {
                    Some(Field::Bytes(b)) => b.data().to_vec(),
                    _ => panic!(),
                },
                segment: long("segment"),
                offset: long("offset"),
            }
        })
        .collect()
}

/// Rewrites part 0 with `edit` applied, then fixes its hash in the manifest
/// and re-signs with the archive key: only the row and chain checks remain.
fn tamper_rows(f: &Fixture, out: &Path, edit: impl FnOnce(&mut Vec<ExportRow>)) -> ExportReport {
    let part = out.join("records/part-00000.parquet");
    let mut rows = read_part(&part);
    edit(&mut rows);
    let tmp = out.join("rewrite");
    std::fs::create_dir_all(tmp.join("records")).unwrap();
    let mut w = PartsWriter::new(&tmp, ParquetLimits::default()).unwrap();
    for r in rows {
        w.push(r).unwrap();
    }
    w.finish().unwrap();
    std::fs::rename(tmp.join("records/part-00000.parquet"), &part).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    let mpath = out.join(manifest::MANIFEST);
    let mut m: Manifest = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let (h, n) = manifest::hash_file(&part).unwrap();
    for e in m
        .files
        .iter_mut()
        .filter(|e| e.path == "records/part-00000.parquet")
    {
        e.sha256 = hex::encode(&h);
        e.bytes = n;
    }
    let mb = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(&mpath, &mb).unwrap();
    std::fs::write(
        out.join(manifest::SIGNATURE),
        manifest::sign(&f.signing, &mb),
    )
    .unwrap();
    verify_export(out, &f.signing.verifying_key())
}

#[test]
fn removed_row_is_found_and_located() {
    let f = fixture(6);
    let out = f._tmp.path().join("out");
    run_export(&f, &out, &ExportRequest::default());
    let mut removed = 0;
    let r = tamper_rows(&f, &out, |rows| removed = rows.remove(3).shown.seq);
    assert!(
        r.problems
            .iter()
            .any(|p| p.file.as_deref() == Some("records/part-00000.parquet")
                && p.row == Some(3)
                && p.what.contains(&format!("seq {removed} is missing"))),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("the manifest says")),
        "row count: {:#?}",
        r.problems
    );
}

#[test]
fn reordered_rows_are_found_and_located() {
    let f = fixture(6);
    let out = f._tmp.path().join("out");
    run_export(&f, &out, &ExportRequest::default());
    let mut swapped = 0;
    let r = tamper_rows(&f, &out, |rows| {
        rows.swap(2, 3);
        swapped = rows[3].shown.seq;
    });
    assert!(
        r.problems
            .iter()
            .any(|p| p.row == Some(3) && p.seq == Some(swapped) && p.what.contains("out of order")),
        "{:#?}",
        r.problems
    );
}

#[test]
fn capture_columns_show_the_record_and_changes_to_them_are_found() {
    let f = fixture(6);
    let out = f._tmp.path().join("out");
    run_export(&f, &out, &ExportRequest::default());
    let rows = read_part(&out.join("records/part-00000.parquet"));
    let flagged = rows
        .iter()
        .find(|r| r.shown.action.as_deref() == Some("flag"))
        .unwrap();
    assert_eq!(flagged.shown.via.as_deref(), Some("carbon-received"));
    assert_eq!(flagged.shown.leg.as_deref(), Some("server-to-client"));
    assert_eq!(flagged.shown.account.as_deref(), Some("bob@example.test/r"));
    assert!(flagged.shown.logical_message.is_some());
    let extra: serde_json::Value =
        serde_json::from_str(flagged.shown.extra.as_deref().unwrap()).unwrap();
    assert_eq!(extra[0]["lang"], "de");
    let blocked = rows
        .iter()
        .find(|r| r.shown.action.as_deref() == Some("block"))
        .unwrap();
    assert_eq!(
        blocked.shown.claimed_from.as_deref(),
        Some("eve@example.test/forged")
    );
    let edit: serde_json::Value =
        serde_json::from_str(blocked.shown.edit.as_deref().unwrap()).unwrap();
    assert_eq!(
        (edit["kind"].as_str(), edit["target"].as_str()),
        (Some("correction"), Some("m0"))
    );
    let redacted = rows
        .iter()
        .find(|r| r.shown.action.as_deref() == Some("redact"))
        .unwrap();
    assert_eq!(
        redacted.shown.delivered_logical_message.as_deref(),
        Some("delivered-id")
    );
    // Whose stream carried a copy, and which message it is a copy of, are as signed.
    for (column, edit) in [
        (
            "account",
            Box::new(|r: &mut ExportRow| r.shown.account = Some("mallory@example.test/x".into()))
                as Box<dyn Fn(&mut ExportRow)>,
        ),
        (
            "logical_message",
            Box::new(|r: &mut ExportRow| r.shown.logical_message = Some("0000".into())),
        ),
        (
            "via",
            Box::new(|r: &mut ExportRow| r.shown.via = Some("mam".into())),
        ),
    ] {
        let out = f._tmp.path().join(format!("out-{column}"));
        run_export(&f, &out, &ExportRequest::default());
        let r = tamper_rows(&f, &out, |rows| edit(&mut rows[1]));
        assert!(
            r.problems
                .iter()
                .any(|p| p.row == Some(1) && p.what.contains(column)),
            "{column}: {:#?}",
            r.problems
        );
    }
}

#[test]
fn changed_body_is_found_even_with_a_fresh_signature() {
    let f = fixture(6);
    let out = f._tmp.path().join("out");
    run_export(&f, &out, &ExportRequest::default());
    let r = tamper_rows(&f, &out, |rows| {
        rows[1].shown.body = Some("nothing to see".into())
    });
    assert!(
        r.problems
            .iter()
            .any(|p| p.row == Some(1) && p.what.contains("body")),
        "{:#?}",
        r.problems
    );
    // Changing the canonical bytes too breaks the record hash and the chain.
    let out2 = f._tmp.path().join("out2");
    run_export(&f, &out2, &ExportRequest::default());
    let r = tamper_rows(&f, &out2, |rows| {
        let last = rows[1].canonical.len() - 1;
        rows[1].canonical[last] ^= 1;
    });
    assert!(
        r.problems
            .iter()
            .any(|p| p.row == Some(1) && p.what.contains("record_hash")),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("does not match the signed checkpoint")),
        "{:#?}",
        r.problems
    );
}
