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
use crate::archive::{Archive, ArchiveConfig, ArchiveReader};
use crate::record::{Action, Direction, MessageRecord, Outcome, SessionId};

fn msg(from: &str, to: &str, ty: &str, body: &str, action: Action) -> NewRecord {
    NewRecord::Message(MessageRecord {
        direction: if from.starts_with("alice") {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        session: SessionId("s1".into()),
        stanza_type: ty.into(),
        id: Some("m1".into()),
        stanza: format!("<message><body>{body}</body></message>").into_bytes(),
        outcome: Outcome {
            action,
            rules: if action == Action::Allow {
                vec![]
            } else {
                vec!["pci-card".into(), "r2".into()]
            },
            delivered_body: (action == Action::Redact).then(|| "card ████".to_string()),
            ..Outcome::allowed()
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
        ..MessageRecord::chat(from, to, body)
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
        scan: false,
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

/// An archive of many small segments: varied senders, rooms, policy actions and
/// words, events between the messages, and every message indexed before it closes.
fn many_segments(n: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fixture {
        archive: tmp.path().join("archive"),
        _tmp: tmp,
        master: MasterKey::from_bytes([7; 32]),
        signing: SigningKey::from_bytes(&[5; 32]),
    };
    fill(&f, n, 1);
    f
}

/// Appends `n` generated messages (the mix drawn from `seed`) and waits until the
/// index holds them all.
fn fill(f: &Fixture, n: u64, seed: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = ArchiveConfig::new(f.archive.clone(), f.master.clone(), f.signing.clone());
    cfg.checkpoint_every = 7;
    cfg.segment_max_bytes = 8 * 1024;
    cfg.segment_max_age = Duration::from_secs(3600);
    let a = Archive::open(cfg).unwrap();
    let people = [
        "alice@example.test/laptop",
        "bob@example.test/phone",
        "carol@example.test",
        "dave@example.test/x",
    ];
    let words = [
        "guarantee",
        "guaranteed",
        "return",
        "returns",
        "lunch",
        "offshore",
        "bribe",
        "kickback",
        "table",
        "under",
        "the",
        "quarterly",
        "numbers",
        "garantee",
    ];
    let actions = [
        Action::Allow,
        Action::Allow,
        Action::Flag,
        Action::Redact,
        Action::Block,
    ];
    let last = rt.block_on(async {
        let mut last = 0;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..n {
            if i % 37 == 36 {
                a.append(NewRecord::Event(EventRecord::Audit {
                    actor: "officer".into(),
                    action: "search".into(),
                    detail: format!("bribe lunch {i}"),
                }))
                .await
                .unwrap();
            }
            let from = people[(next() % 4) as usize];
            let to = if next() % 5 == 0 {
                "deals@muc.example.test"
            } else {
                people[(next() % 4) as usize]
            };
            let body: Vec<&str> = (0..3 + next() % 9)
                .map(|_| words[(next() % words.len() as u64) as usize])
                .collect();
            let ty = if to.starts_with("deals") {
                "groupchat"
            } else {
                "chat"
            };
            let r = msg(
                from,
                to,
                ty,
                &body.join(" "),
                actions[(next() % 5) as usize],
            );
            last = a.append(r).await.unwrap().seq.0;
        }
        last
    });
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let start = std::time::Instant::now();
    while reader.index_coverage() != Ok(last) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "index never caught up: {:?}",
            reader.index_coverage()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.block_on(a.close()).unwrap();
}

fn export_by(
    f: &Fixture,
    out: &Path,
    query: &str,
    scan: bool,
) -> (ExportSummary, Vec<u64>, Vec<u8>) {
    export_range(f, out, query, (None, None), scan)
}

fn export_range(
    f: &Fixture,
    out: &Path,
    query: &str,
    (since, until): (Option<Timestamp>, Option<Timestamp>),
    scan: bool,
) -> (ExportSummary, Vec<u64>, Vec<u8>) {
    let req = ExportRequest {
        query: Some(query.into()),
        since,
        until,
    };
    let opts = ExportOptions {
        scan,
        ..ExportOptions::default()
    };
    let s = export_with(
        &f.archive,
        &f.master,
        &f.signing,
        out,
        &req,
        &opts,
        |_, _| {},
    )
    .unwrap();
    // The scanned export is the reference; the one through the index must verify.
    if !scan {
        let r = verify_export(out, &f.signing.verifying_key());
        assert!(r.is_clean(), "{query}: {:#?}", r.problems);
    }
    let mut seqs = Vec::new();
    for p in &s.files {
        if p.extension().is_some_and(|e| e == "parquet") {
            seqs.extend(read_part(&out.join(p)).iter().map(|r| r.shown.seq));
        }
    }
    let chain = std::fs::read(out.join(manifest::CHAIN)).unwrap();
    (s, seqs, chain)
}

#[test]
fn a_query_export_through_the_index_is_the_one_that_tests_every_record() {
    let f = many_segments(400);
    let queries = [
        "offshore",
        "from:carol@example.test bribe",
        "\"under the table\"",
        "guarant*",
        "g?ar*ee",
        "guarantee~",
        "guarantee NEAR/2 return*",
        "guarantee ONEAR/1 returns",
        "bribe OR kickback OR lunch",
        "-lunch -bribe -guarantee",
        "room:deals@muc.example.test action:block",
        "with:dave@example.test -(to:alice@example.test OR offshore)",
        "rule:pci-card via:carbon-received",
        "type:groupchat numbers",
        "nothingsaidthis",
    ];
    let mut skipped_any = false;
    for (i, q) in queries.iter().enumerate() {
        let dir = f._tmp.path();
        let (by_index, rows, chain) = export_by(&f, &dir.join(format!("i{i}")), q, false);
        let (by_scan, want, want_chain) = export_by(&f, &dir.join(format!("s{i}")), q, true);
        assert!(
            matches!(by_index.selected_by, SelectedBy::Index { .. }),
            "{q}: {:?}",
            by_index.selected_by
        );
        assert!(
            matches!(by_scan.selected_by, SelectedBy::Scan { .. }),
            "{q}"
        );
        assert_eq!(rows, want, "{q}: rows");
        assert!(chain == want_chain, "{q}: chain.jsonl differs");
        assert_eq!(by_index.records, by_scan.records, "{q}");
        assert_eq!(
            by_index.decrypted, by_index.records,
            "{q}: the index found exactly the rows"
        );
        assert_eq!(by_scan.decrypted, by_scan.scanned, "{q}");
        assert_eq!(by_index.scanned + by_index.skipped, by_scan.scanned, "{q}");
        skipped_any |= by_index.skipped > 0;
        if by_scan.records == 0 {
            assert!(
                by_index.skipped > by_index.scanned * 10,
                "{q}: only the newest segment is read"
            );
        }
    }
    assert!(skipped_any, "some query left a segment unread");

    // With a time range, segments whose matches all lie outside it are not read.
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let time = |seq: u64| reader.records(seq..=seq).unwrap()[0].time;
    let range = (Some(time(150)), Some(time(250)));
    for (i, q) in ["offshore", "-nothingsaidthis", "bribe OR table"]
        .iter()
        .enumerate()
    {
        let dir = f._tmp.path();
        let (by_index, rows, chain) =
            export_range(&f, &dir.join(format!("ri{i}")), q, range, false);
        let (by_scan, want, want_chain) =
            export_range(&f, &dir.join(format!("rs{i}")), q, range, true);
        assert_eq!(rows, want, "{q} in a range: rows");
        assert!(chain == want_chain, "{q} in a range: chain.jsonl differs");
        assert!(!rows.is_empty(), "{q} in a range");
        assert!(
            by_index.skipped > by_index.scanned,
            "{q} in a range: {} read, {} not",
            by_index.scanned,
            by_index.skipped
        );
        assert_eq!(by_index.decrypted, by_index.records, "{q} in a range");
        assert_eq!(by_scan.records, by_index.records);
    }
}

/// An index rolled back to an earlier commit of its own is authentic and on the
/// chain, but it does not hold what came after: those records are tested one by one.
/// An index that is gone, or that belongs to another archive, is not used at all.
#[test]
fn a_query_export_tests_what_the_index_does_not_hold() {
    let f = many_segments(150);
    let index = f.archive.join("index");
    let old = f._tmp.path().join("old-index");
    copy_dir(&index, &old);
    let behind = ArchiveReader::open(&f.archive, &f.master)
        .unwrap()
        .index_coverage()
        .unwrap();
    fill(&f, 150, 2);
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&old, &index);
    let dir = f._tmp.path();
    for (i, q) in [
        "offshore",
        "from:carol@example.test -lunch",
        "guarant*",
        "-nothingsaidthis",
    ]
    .iter()
    .enumerate()
    {
        let (by_index, rows, chain) = export_by(&f, &dir.join(format!("b{i}")), q, false);
        let (by_scan, want, want_chain) = export_by(&f, &dir.join(format!("s{i}")), q, true);
        assert_eq!(
            by_index.selected_by,
            SelectedBy::Index { through: behind },
            "{q}"
        );
        assert_eq!(rows, want, "{q}: rows");
        assert!(chain == want_chain, "{q}: chain.jsonl differs");
        assert!(
            rows.iter().any(|&s| s > behind),
            "{q}: some rows are past the index"
        );
        assert!(by_index.decrypted > by_index.records, "{q}");
        assert!(by_index.decrypted < by_scan.decrypted, "{q}");
    }

    // Another archive's index in its place.
    let other = many_segments(20);
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&other.archive.join("index"), &index);
    let (foreign, rows, _) = export_by(&f, &dir.join("foreign"), "offshore", false);
    let (_, want, _) = export_by(&f, &dir.join("foreign-scan"), "offshore", true);
    assert!(
        matches!(&foreign.selected_by, SelectedBy::Scan { why } if why.contains("index")),
        "{:?}",
        foreign.selected_by
    );
    assert_eq!(rows, want);

    std::fs::remove_dir_all(&index).unwrap();
    let (gone, rows, _) = export_by(&f, &dir.join("gone"), "offshore", false);
    assert!(
        matches!(&gone.selected_by, SelectedBy::Scan { why } if why.contains("index")),
        "{:?}",
        gone.selected_by
    );
    assert_eq!(rows, want);
}

/// A new archive, open, with a checkpoint every 4 records, segments that do not roll
/// by age and, if given, roll at `segment_max_bytes`; and a runtime to append with.
fn open_fixture(segment_max_bytes: Option<u64>) -> (Fixture, Archive, tokio::runtime::Runtime) {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fixture {
        archive: tmp.path().join("archive"),
        _tmp: tmp,
        master: MasterKey::from_bytes([7; 32]),
        signing: SigningKey::from_bytes(&[5; 32]),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = ArchiveConfig::new(f.archive.clone(), f.master.clone(), f.signing.clone());
    cfg.checkpoint_every = 4;
    if let Some(max) = segment_max_bytes {
        cfg.segment_max_bytes = max;
    }
    cfg.segment_max_age = Duration::from_secs(3600);
    let a = Archive::open(cfg).unwrap();
    (f, a, rt)
}

/// The index naturally trails the log: its mark can fall inside a segment that goes
/// on past it. An administrator who adds an empty segment file after that one, its
/// header claiming the chain resumes right after the mark, must not make the export
/// skip the segment's unindexed records: the export fails on the forged segment, as
/// the scan does, instead of leaving them out.
#[test]
fn a_forged_segment_after_the_mark_does_not_hide_what_the_index_lacks() {
    let (f, a, rt) = open_fixture(None);
    let append = |n: usize, body: &str| {
        rt.block_on(async {
            let mut last = 0;
            for i in 0..n {
                let r = msg(
                    "alice@example.test/laptop",
                    "bob@example.test",
                    "chat",
                    &format!("{body} {i}"),
                    Action::Allow,
                );
                last = a.append(r).await.unwrap().seq.0;
            }
            last
        })
    };
    let mark = append(40, "offshore account");
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let start = std::time::Instant::now();
    while reader.index_coverage() != Ok(mark) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "index never caught up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let index = f.archive.join("index");
    let old = f._tmp.path().join("old-index");
    copy_dir(&index, &old);
    // Past the mark, in the same segment: words the index has not seen.
    let last = append(20, "offshore again");
    rt.block_on(a.close()).unwrap();
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&old, &index);
    let ids = log::segment_ids(&crate::storage::FileStorage::new(&f.archive)).unwrap();
    let newest = *ids.last().unwrap();

    let dir = f._tmp.path();
    let (honest, rows, _) = export_by(&f, &dir.join("honest"), "again", false);
    assert_eq!(honest.selected_by, SelectedBy::Index { through: mark });
    assert_eq!(
        rows.last(),
        Some(&last),
        "the records past the mark are exported"
    );

    let forged = SegmentHeader {
        archive_id: ArchiveReader::open(&f.archive, &f.master)
            .unwrap()
            .archive_id(),
        segment: newest + 1,
        first_seq: mark + 1,
        prev_head: [0; 32],
        created_ms: 0,
    };
    std::fs::write(
        f.archive.join(segment::segment_name(newest + 1)),
        forged.encode(),
    )
    .unwrap();
    for scan in [true, false] {
        let out = dir.join(format!("forged-{scan}"));
        let req = ExportRequest {
            query: Some("again".into()),
            ..ExportRequest::default()
        };
        let opts = ExportOptions {
            scan,
            ..ExportOptions::default()
        };
        match export_with(
            &f.archive,
            &f.master,
            &f.signing,
            &out,
            &req,
            &opts,
            |_, _| {},
        ) {
            Err(ExportError::Corrupt { segment, what, .. }) => {
                assert_eq!(segment, newest + 1, "scan {scan}: {what}");
            }
            other => panic!("scan {scan}: the forged segment went unnoticed: {other:?}"),
        }
    }
}

/// An archive of 4 KiB segments: `before` filler messages, three "needle" messages in
/// one segment, `after` filler messages, every message indexed. Returned open.
fn needles(before: usize, after: usize) -> (Fixture, Archive, tokio::runtime::Runtime) {
    let (f, a, rt) = open_fixture(Some(4 * 1024));
    let pad = "x".repeat(300);
    let bodies = (0..before)
        .map(|i| format!("filler {i} {pad}"))
        .chain((0..3).map(|i| format!("needle {i} {pad}")))
        .chain((0..after).map(|i| format!("filler {i} {pad}")));
    let last = chat_bodies(&a, &rt, bodies);
    wait_indexed(&f, last);
    (f, a, rt)
}

/// Appends one alice-to-bob chat message per body; returns the last seq.
fn chat_bodies(
    a: &Archive,
    rt: &tokio::runtime::Runtime,
    bodies: impl IntoIterator<Item = String>,
) -> u64 {
    rt.block_on(async {
        let mut last = 0;
        for body in bodies {
            let r = msg(
                "alice@example.test/l",
                "bob@example.test",
                "chat",
                &body,
                Action::Allow,
            );
            last = a.append(r).await.unwrap().seq.0;
        }
        last
    })
}

fn wait_indexed(f: &Fixture, through: u64) {
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let start = std::time::Instant::now();
    while reader.index_coverage().map_or(true, |c| c < through) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "index never caught up: {:?}",
            reader.index_coverage()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (seq, segment) of every message whose body holds `word`, read from the log.
fn placed(f: &Fixture, word: &str) -> Vec<(u64, u64)> {
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let mut out = Vec::new();
    reader
        .scan::<crate::archive::ReadError>(1, |e| {
            if let Some(crate::Record {
                content: NewRecord::Message(m),
                ..
            }) = &e.record
            {
                if m.body.as_deref().is_some_and(|b| b.contains(word)) {
                    out.push((e.seq, e.segment));
                }
            }
            Ok(())
        })
        .unwrap();
    out
}

fn export_query(
    f: &Fixture,
    out: &Path,
    query: &str,
    scan: bool,
) -> Result<ExportSummary, ExportError> {
    let req = ExportRequest {
        query: Some(query.into()),
        ..ExportRequest::default()
    };
    let opts = ExportOptions {
        scan,
        ..ExportOptions::default()
    };
    export_with(
        &f.archive,
        &f.master,
        &f.signing,
        out,
        &req,
        &opts,
        |_, _| {},
    )
}

/// A shred whose record is in the chain while its key is still on disk: a crash
/// between the two, or a legal hold placed after the shred was recorded (the key then
/// stays until the hold is released). The index dropped the segment's documents when
/// it met the record; the log still decrypts them, and the export must hold them.
#[test]
fn a_segment_the_index_dropped_for_a_shred_is_read_while_its_key_stays() {
    let (f, a, rt) = needles(30, 30);
    let found = placed(&f, "needle");
    let seg = found[0].1;
    assert!(found.iter().all(|n| n.1 == seg), "{found:?}");
    let key = f.archive.join(segment::key_name(seg));
    let saved = std::fs::read(&key).unwrap();
    rt.block_on(a.shred_segment(seg, "test", "{}", "officer"))
        .unwrap();
    let end = ArchiveReader::open(&f.archive, &f.master)
        .unwrap()
        .chain_end()
        .unwrap();
    wait_indexed(&f, end);
    rt.block_on(a.close()).unwrap();
    std::fs::write(&key, saved).unwrap();

    let dir = f._tmp.path();
    let (_, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    assert_eq!(
        want.len(),
        3,
        "the scan reads the segment whose key is back"
    );
    let (s, rows, chain) = export_by(&f, &dir.join("index"), "needle", false);
    assert!(
        matches!(s.selected_by, SelectedBy::Index { .. }),
        "{:?}",
        s.selected_by
    );
    assert_eq!(
        rows, want,
        "the index-driven export left out rows --scan exports"
    );
    assert_eq!(chain, want_chain);
}

/// A log segment file is gone (deleted, or left out of a copy). The segment before it
/// holds no match, so it could go unread; then nothing would check that the segment
/// after it continues the chain. The export must fail as the scan does, not hand over
/// an export without the missing segment's matches that verifies.
#[test]
fn a_missing_segment_fails_an_index_export_as_it_fails_a_scan() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let found = placed(&f, "needle");
    let seg = found[0].1;
    assert!(found.iter().all(|n| n.1 == seg) && seg > 2, "{found:?}");
    std::fs::remove_file(f.archive.join(segment::segment_name(seg))).unwrap();
    let dir = f._tmp.path();
    for (scan, out) in [(true, "scan"), (false, "index")] {
        match export_query(&f, &dir.join(out), "needle", scan) {
            Err(ExportError::Corrupt { segment, what, .. }) => {
                assert_eq!(segment, seg + 1, "scan {scan}: {what}");
                assert!(what.contains("segment missing"), "scan {scan}: {what}");
            }
            other => panic!("scan {scan}: the missing segment went unnoticed: {other:?}"),
        }
    }
    // Without a match anywhere near, the gap is still found.
    match export_query(&f, &dir.join("none"), "nowhere", false) {
        Err(ExportError::Corrupt { segment, .. }) => assert_eq!(segment, seg + 1),
        other => panic!("the missing segment went unnoticed: {other:?}"),
    }
}

/// An altered index that places its finds in the wrong log segment: the segment that
/// holds them has no find, so it goes unread. The export must not end as if every
/// find had been met.
#[test]
fn an_index_find_the_export_never_meets_fails_it() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let found = placed(&f, "needle");
    let seg = found[0].1;
    assert!(found.iter().all(|n| n.1 == seg) && seg > 1, "{found:?}");
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let index = crate::archive::index_dir(&f.archive);
    let mut w =
        crate::index::BlindIndexWriter::open(&index, &f.master, reader.archive_id()).unwrap();
    w.clear().unwrap();
    reader
        .scan::<crate::archive::ReadError>(1, |e| {
            let needle = found.iter().any(|n| n.0 == e.seq);
            w.add(&crate::log::Appended {
                record: e.record.unwrap(),
                segment: if needle { seg - 1 } else { e.segment },
                offset: e.offset,
                head: e.head,
            })
            .unwrap();
            Ok(())
        })
        .unwrap();
    w.commit().unwrap();
    w.finish().unwrap();

    let dir = f._tmp.path();
    let (_, want, _) = export_by(&f, &dir.join("scan"), "needle", true);
    assert_eq!(want.len(), 3);
    match export_query(&f, &dir.join("index"), "needle", false) {
        Err(e @ ExportError::IndexUnmet { .. }) => {
            let e = e.to_string();
            assert!(e.contains("3 records") && e.contains("--scan"), "{e}");
        }
        other => panic!("the export ended without the index's finds: {other:?}"),
    }
}

/// Storage that empties the index and commits that, as `custos reindex` does first,
/// on its first read: after the export has read the index's mark, before its search.
#[derive(Debug)]
struct ReindexOnFirstRead {
    inner: crate::storage::FileStorage,
    fired: std::sync::atomic::AtomicBool,
    dir: PathBuf,
    master: MasterKey,
    id: [u8; 16],
}

impl crate::storage::Storage for ReindexOnFirstRead {
    fn list(&self, dir: &str) -> Result<Vec<String>, crate::storage::ListError> {
        self.inner.list(dir)
    }
    fn read(&self, name: &str) -> Result<Vec<u8>, crate::storage::ReadError> {
        self.inner.read(name)
    }
    fn read_at(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, crate::storage::ReadError> {
        if !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let index = crate::archive::index_dir(&self.dir);
            let mut w =
                crate::index::BlindIndexWriter::open(&index, &self.master, self.id).unwrap();
            w.clear().unwrap();
            w.commit().unwrap();
            w.finish().unwrap();
        }
        self.inner.read_at(name, offset, len)
    }
    fn len(&self, name: &str) -> Result<u64, crate::storage::ReadError> {
        self.inner.len(name)
    }
    fn is_sealed(&self, name: &str) -> Result<bool, crate::storage::ReadError> {
        self.inner.is_sealed(name)
    }
    fn create(
        &self,
        name: &str,
    ) -> Result<Box<dyn crate::storage::AppendHandle>, crate::storage::CreateError> {
        self.inner.create(name)
    }
    fn open_append(
        &self,
        name: &str,
    ) -> Result<Box<dyn crate::storage::AppendHandle>, crate::storage::OpenAppendError> {
        self.inner.open_append(name)
    }
    fn truncate(&self, name: &str, len: u64) -> Result<(), crate::storage::TruncateError> {
        self.inner.truncate(name, len)
    }
    fn seal(&self, name: &str) -> Result<(), crate::storage::SealError> {
        self.inner.seal(name)
    }
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), crate::storage::PutError> {
        self.inner.put_new(name, bytes)
    }
    fn remove(&self, name: &str) -> Result<(), crate::storage::RemoveError> {
        self.inner.remove(name)
    }
}

/// `custos export` takes no lock, and `custos reindex` may run beside it. A reindex
/// committing its emptied index between the export reading the mark and searching must
/// not leave every record up to the old mark "not found" and unread.
#[test]
fn a_reindex_between_the_mark_and_the_search_does_not_empty_the_selection() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let found = placed(&f, "needle");
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let id = reader.archive_id();
    let through = reader.chain_end().unwrap();
    let storage = std::sync::Arc::new(ReindexOnFirstRead {
        inner: crate::storage::FileStorage::new(&f.archive),
        fired: std::sync::atomic::AtomicBool::new(false),
        dir: f.archive.clone(),
        master: f.master.clone(),
        id,
    });
    let q = crate::query::parse("needle").unwrap();
    let sel = super::select::Selection::from_index(
        &f.archive,
        storage.clone(),
        &f.master,
        &id,
        &q,
        (None, None),
        through,
    );
    assert!(storage.fired.load(std::sync::atomic::Ordering::SeqCst));
    if let Ok(sel) = sel {
        let missed: Vec<_> = found.iter().filter(|n| !sel.opens(n.0, n.1)).collect();
        assert!(
            missed.is_empty(),
            "indexed through {}: needles not opened {missed:?}",
            sel.indexed()
        );
    }
}

/// `--scan` reaches every part of an export across nodes, not only a one-node export.
#[test]
fn a_scan_export_across_nodes_scans_every_part() {
    let f = many_segments(60);
    let sources: Vec<super::nodes::ChainSource> = ["a", "b"]
        .iter()
        .map(|n| super::nodes::ChainSource {
            node: Some((*n).into()),
            name: (*n).into(),
            dir: f.archive.clone(),
        })
        .collect();
    let req = ExportRequest {
        query: Some("lunch".into()),
        ..ExportRequest::default()
    };
    for scan in [true, false] {
        let out = f._tmp.path().join(format!("nodes-{scan}"));
        let parts = super::nodes::export_chains(
            &sources,
            &f.master,
            &f.signing,
            &out,
            (
                &req,
                &ExportOptions {
                    scan,
                    ..ExportOptions::default()
                },
            ),
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        for (_, s) in parts {
            assert_eq!(
                matches!(s.selected_by, SelectedBy::Scan { .. }),
                scan,
                "{:?}",
                s.selected_by
            );
            assert!(s.records > 0);
        }
    }
}

fn archive_id(f: &Fixture) -> [u8; 16] {
    ArchiveReader::open(&f.archive, &f.master)
        .unwrap()
        .archive_id()
}

/// The bytes of the index file `name`, without its seal.
fn index_file(index: &Path, name: &str) -> Vec<u8> {
    let mut b = std::fs::read(index.join(name)).unwrap();
    b.truncate(crate::index::sealed_len(&b).unwrap());
    b
}

/// Writes the index file `name`: sealed under the archive's key when `key` (what only a
/// holder of the master key can do, or a bug of Custos's own), else with no seal.
fn write_index_file(f: &Fixture, name: &str, data: &[u8], key: bool) {
    let id = archive_id(f);
    let bytes = if key {
        crate::index::SealKey::derive(&f.master, &id).seal(name, data)
    } else {
        data.to_vec()
    };
    let index = crate::archive::index_dir(&f.archive);
    std::fs::write(index.join(name), bytes).unwrap();
}

fn scanned_because(s: &ExportSummary) -> &str {
    match &s.selected_by {
        SelectedBy::Scan { why } => why,
        other => panic!("the index was used: {other:?}"),
    }
}

/// An index that lost messages unseen: a tantivy segment dropped from `meta.json`.
/// Without the key the edit breaks meta.json's seal; sealed anew (a bug, or a holder
/// of the key) it is what the commit's count is there for. The log segment holding the
/// needles still has messages in the index, so only the count shows the loss.
#[test]
fn an_index_with_a_segment_dropped_from_its_list_is_not_used() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let found = placed(&f, "needle");
    let (split, seg) = (found[2].0, found[2].1);
    assert!(
        placed(&f, "filler")
            .iter()
            .any(|&(q, s)| q > split && s == seg),
        "a filler after the needles shares their segment"
    );
    // Two commits: the needles and all before them, then the rest.
    let reader = ArchiveReader::open(&f.archive, &f.master).unwrap();
    let index = crate::archive::index_dir(&f.archive);
    let mut w =
        crate::index::BlindIndexWriter::open(&index, &f.master, reader.archive_id()).unwrap();
    w.clear().unwrap();
    let mut entries = Vec::new();
    reader
        .scan::<crate::archive::ReadError>(1, |e| {
            entries.push(e);
            Ok(())
        })
        .unwrap();
    for e in entries {
        let seq = e.seq;
        w.add(&crate::log::Appended {
            record: e.record.unwrap(),
            segment: e.segment,
            offset: e.offset,
            head: e.head,
        })
        .unwrap();
        if seq == split {
            w.commit().unwrap();
        }
    }
    w.finish().unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&index_file(&index, "meta.json")).unwrap();
    let segments = meta["segments"].as_array_mut().unwrap();
    assert_eq!(segments.len(), 2, "{segments:?}");
    segments.retain(|s| s["max_doc"].as_u64() != Some(split));
    assert_eq!(segments.len(), 1);
    let mut meta = serde_json::to_vec_pretty(&meta).unwrap();
    meta.push(b'\n');

    let dir = f._tmp.path();
    let (_, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    assert_eq!(want.len(), 3);
    write_index_file(&f, "meta.json", &meta, false);
    let (s, rows, chain) = export_by(&f, &dir.join("unsealed"), "needle", false);
    let why = scanned_because(&s);
    assert!(
        why.contains("meta.json") && why.contains("not sealed"),
        "{why}"
    );
    assert_eq!((&rows, &chain), (&want, &want_chain));

    write_index_file(&f, "meta.json", &meta, true);
    let (s, rows, chain) = export_by(&f, &dir.join("sealed"), "needle", false);
    let why = scanned_because(&s);
    assert!(why.contains("where its last commit counts"), "{why}");
    assert_eq!((&rows, &chain), (&want, &want_chain));
    // And the server's writer rebuilds it rather than carry on from it.
    let w = crate::index::BlindIndexWriter::open(&index, &f.master, reader.archive_id()).unwrap();
    assert!(
        matches!(w.found(), Err(crate::index::IndexError::Damaged(_))),
        "{:?}",
        w.found()
    );
}

/// A deletion bitset of a ragged length makes tantivy panic when it opens the
/// segment. Sealed as Custos's own (no attacker without the key gets one read), the
/// export must still test every record rather than fail.
#[test]
fn a_ragged_deletion_file_in_the_index_has_the_export_scan() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let index = crate::archive::index_dir(&f.archive);
    let mut meta: serde_json::Value =
        serde_json::from_slice(&index_file(&index, "meta.json")).unwrap();
    let opstamp = meta["opstamp"].as_u64().unwrap();
    let s = &mut meta["segments"][0];
    let uuid = s["segment_id"].as_str().unwrap().replace('-', "");
    s["deletes"] = serde_json::json!({"num_deleted_docs": 1, "opstamp": opstamp});
    // Five bytes of bitset, then a footer tantivy accepts (copied from another file).
    let norms = index_file(&index, &format!("{uuid}.fieldnorm"));
    let n = norms.len();
    let footer = u32::from_le_bytes(norms[n - 8..n - 4].try_into().unwrap()) as usize;
    let mut body = vec![1, 0, 0, 0, 0xff];
    body.extend_from_slice(&norms[n - 8 - footer..]);
    write_index_file(&f, &format!("{uuid}.{opstamp}.del"), &body, true);
    let mut meta = serde_json::to_vec_pretty(&meta).unwrap();
    meta.push(b'\n');
    write_index_file(&f, "meta.json", &meta, true);

    let s = export_query(&f, &f._tmp.path().join("index"), "needle", false).unwrap();
    let why = scanned_because(&s);
    assert!(why.contains("damaged index files"), "{why}");
    assert_eq!(s.records, 3);
}

/// Writes a deletion bitset that marks the needles deleted and sets as many bits past
/// their tantivy segment's last document (tantivy counts the bits, so the index holds
/// the number of messages its commit counts), with `meta.json` naming it; sealed
/// under the archive's key when `key`.
fn hide_needles(f: &Fixture, key: bool) {
    let needles: Vec<u64> = placed(f, "needle").iter().map(|&(q, _)| q).collect();
    let index = crate::archive::index_dir(&f.archive);
    let id = archive_id(f);
    let (tantivy, _) = crate::index::open_existing(&index, &f.master, &id).unwrap();
    let searcher = tantivy.reader().unwrap().searcher();
    let (at, max_doc, hidden) = searcher
        .segment_readers()
        .iter()
        .enumerate()
        .find_map(|(i, r)| {
            let seqs = r.fast_fields().u64("seq").unwrap();
            let docs: Vec<u32> = (0..r.max_doc())
                .filter(|&d| seqs.first(d).is_some_and(|s| needles.contains(&s)))
                .collect();
            (!docs.is_empty()).then(|| (i, r.max_doc(), docs))
        })
        .unwrap();
    assert_eq!(hidden.len(), 3);
    let uuid = searcher.segment_readers()[at].segment_id().uuid_string();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&index_file(&index, "meta.json")).unwrap();
    let opstamp = meta["opstamp"].as_u64().unwrap();
    let s = meta["segments"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["segment_id"].as_str().unwrap().replace('-', "") == uuid)
        .unwrap();
    assert!(s["deletes"].is_null(), "{s}");
    s["deletes"] = serde_json::json!({"num_deleted_docs": 3, "opstamp": opstamp});
    // Every document alive but the needles, and one more word with three bits set.
    let words = max_doc.div_ceil(64) as usize;
    let mut bits = vec![0u64; words + 1];
    for d in 0..max_doc {
        bits[(d / 64) as usize] |= 1 << (d % 64);
    }
    for d in &hidden {
        bits[(d / 64) as usize] &= !(1 << (d % 64));
    }
    bits[words] = 0b111;
    let mut body = max_doc.to_le_bytes().to_vec();
    for w in bits {
        body.extend_from_slice(&w.to_le_bytes());
    }
    // A footer tantivy accepts, copied from another file (no reader checks its sum).
    let norms = index_file(&index, &format!("{uuid}.fieldnorm"));
    let n = norms.len();
    let footer = u32::from_le_bytes(norms[n - 8..n - 4].try_into().unwrap()) as usize;
    body.extend_from_slice(&norms[n - 8 - footer..]);
    write_index_file(f, &format!("{uuid}.{opstamp}.del"), &body, key);
    let mut meta = serde_json::to_vec_pretty(&meta).unwrap();
    meta.push(b'\n');
    write_index_file(f, "meta.json", &meta, key);
}

/// The deletion file written without the key: its seal (and meta.json's) fails, so
/// the export does not use the index and the server's writer does not carry on from
/// it (tantivy would merge the forged deletions away at the writer's open, and the
/// merged segment keeps the needles' documents but not their words).
#[test]
fn a_deletion_file_written_without_the_key_is_refused_by_the_export_and_the_writer() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let dir = f._tmp.path();
    let (_, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    assert_eq!(want.len(), 3);
    hide_needles(&f, false);
    let (s, rows, chain) = export_by(&f, &dir.join("index"), "needle", false);
    let why = scanned_because(&s);
    assert!(why.contains("not sealed"), "{why}");
    assert_eq!((&rows, &chain), (&want, &want_chain));
    let index = crate::archive::index_dir(&f.archive);
    let id = archive_id(&f);
    let w = crate::index::BlindIndexWriter::open(&index, &f.master, id).unwrap();
    match w.found() {
        Err(crate::index::IndexError::Unsealed(why)) => assert!(why.contains("not sealed")),
        other => panic!("the writer carried on from the forged index: {other:?}"),
    }
    assert_eq!(w.mark(), crate::index::Mark::default(), "it starts over");
}

/// The same deletion file sealed (a bug, or a holder of the key): tantivy counts the
/// bits past the last document, so the index holds as many messages as its commit
/// counts, but not the ones it names.
#[test]
fn a_sealed_deletion_file_that_keeps_the_count_is_not_used_by_an_export() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let dir = f._tmp.path();
    let (_, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    hide_needles(&f, true);
    let index = crate::archive::index_dir(&f.archive);
    let id = archive_id(&f);
    let (forged, _) = crate::index::open_existing(&index, &f.master, &id).unwrap();
    assert_eq!(
        forged.reader().unwrap().searcher().num_docs(),
        crate::index::read_mark(&index, &f.master, &id)
            .unwrap()
            .held
            .count,
        "the forged index holds the count its commit carries"
    );
    let (s, rows, chain) = export_by(&f, &dir.join("index"), "needle", false);
    let why = scanned_because(&s);
    assert!(why.contains("its last commit"), "{why}");
    assert_eq!((&rows, &chain), (&want, &want_chain));
}

/// A checkpoint every 4 records, segments of at most `segment_max_bytes`: `before`
/// fillers, two needles four records apart, `after` fillers. Closed, so its segments
/// are sealed; indexed whole.
fn two_needles(before: usize, after: usize, segment_max_bytes: Option<u64>) -> Fixture {
    let (f, a, rt) = open_fixture(segment_max_bytes);
    let bodies = (0..before)
        .map(|i| format!("filler {i}"))
        .chain(["needle one".to_string()])
        .chain((0..3).map(|i| format!("between {i}")))
        .chain(["needle two".to_string()])
        .chain((0..after).map(|i| format!("filler after {i}")));
    let last = chat_bodies(&a, &rt, bodies);
    wait_indexed(&f, last);
    rt.block_on(a.close()).unwrap();
    f
}

/// The segment file holding record `seq`, and its frames: (offset, end, seq, whether a
/// checkpoint).
fn frames_around(f: &Fixture, seq: u64) -> (PathBuf, Vec<(u64, u64, u64, bool)>) {
    let logs = std::fs::read_dir(f.archive.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"));
    for path in logs {
        let bytes = std::fs::read(&path).unwrap();
        let header = SegmentHeader::decode(&bytes[..HEADER_LEN]).unwrap();
        let mut w = walk::SegmentWalk::segment(&bytes, &header);
        let mut out = Vec::new();
        loop {
            match w.next().unwrap() {
                Step::Record(r) => out.push((r.offset, w.offset(), r.seq, false)),
                Step::Checkpoint { offset, cp, .. } => {
                    out.push((offset, w.offset(), cp.seq, true));
                }
                Step::End { .. } => break,
            }
        }
        if out.iter().any(|x| !x.3 && x.2 == seq) {
            return (path, out);
        }
    }
    panic!("no segment holds seq {seq}")
}

/// Flips the byte at `at` of `path`, a sealed (read-only) segment.
fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 1], at).unwrap();
}

/// A narrow export hashes only the checkpoint intervals that hold its rows: the rest of
/// a segment it reads is walked, frame by frame, and not hashed, and the chain goes on
/// from each such interval's signed checkpoint. What it writes is the scan's, line for
/// line, and verifies.
#[test]
fn a_narrow_export_hashes_only_the_checkpoint_intervals_of_its_rows() {
    // Segments of 16 KiB: several, the needles' not the last (which holds the index's
    // mark).
    let f = two_needles(200, 100, Some(16 * 1024));
    let dir = f._tmp.path();
    let (by_index, rows, chain) = export_by(&f, &dir.join("index"), "needle", false);
    let (by_scan, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    assert!(matches!(by_index.selected_by, SelectedBy::Index { .. }));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows, want);
    assert!(chain == want_chain, "chain.jsonl differs from the scan's");
    assert_eq!(
        by_index.scanned + by_index.skipped,
        by_scan.scanned,
        "every record of a segment read is walked"
    );
    assert!(by_index.skipped > 0, "some segment went unread");
    assert_eq!(by_scan.skimmed, 0, "a scan hashes everything");
    // Hashed: the segment's first record, and the two intervals of 4 with a needle (the
    // needles are 4 apart, so in two intervals or, at most, three).
    let hashed = by_index.scanned - by_index.skimmed;
    assert!(hashed <= 1 + 3 * 4, "{hashed} records hashed");
    assert_eq!(by_index.decrypted, 2);
}

/// What skimming leaves to `custos verify`, and what it does not: a record changed in an
/// interval without exported rows goes unnoticed by the export (as in a segment it does
/// not read), while its rows still verify; a checkpoint whose signature does not hold
/// fails it, and so does a changed record the index found.
#[test]
fn a_narrow_export_checks_every_signature_and_every_row_but_hashes_no_other_interval() {
    // Segments of 16 KiB; the index's mark is in a later one than the needles'.
    let f = two_needles(60, 100, Some(16 * 1024));
    let needles: Vec<u64> = placed(&f, "needle").iter().map(|p| p.0).collect();
    assert_eq!(needles.len(), 2);
    let first = needles[0];
    let (path, fr) = frames_around(&f, first);
    let pristine = std::fs::read(&path).unwrap();
    let record = |seq: u64| *fr.iter().find(|x| !x.3 && x.2 == seq).unwrap();
    let checkpoint_after = |seq: u64| *fr.iter().find(|x| x.3 && x.2 >= seq).unwrap();
    let dir = f._tmp.path();
    // A filler of the needle's segment, in an interval before it.
    let filler = fr
        .iter()
        .find(|x| !x.3)
        .map(|x| x.2)
        .filter(|&s| checkpoint_after(s).2 < first)
        .expect("the needle's segment begins with an interval without it");

    // That filler's last byte (its tag) changed.
    let (_, end, ..) = record(filler);
    flip(&path, end - 1);
    let s = export_query(&f, &dir.join("a"), "needle", false).unwrap();
    assert_eq!(s.records, 2);
    let r = verify_export(&dir.join("a"), &f.signing.verifying_key());
    assert!(r.is_clean(), "{:#?}", r.problems);
    let v = crate::verify::verify(
        &f.archive,
        Some(&f.master),
        &f.signing.verifying_key(),
        |_, _| {},
    );
    assert!(!v.is_clean(), "verify reads every interval");
    std::fs::write(&path, &pristine).unwrap();

    // The signature of the checkpoint that closes that filler's interval.
    let (_, end, seq, _) = checkpoint_after(filler);
    assert!(seq < first, "the interval holds no needle");
    flip(&path, end - 1);
    let err = export_query(&f, &dir.join("b"), "needle", false).unwrap_err();
    assert!(err.to_string().contains("bad signature"), "{err}");
    std::fs::write(&path, &pristine).unwrap();

    // The first needle's own frame.
    let (_, end, ..) = record(first);
    flip(&path, end - 1);
    let err = export_query(&f, &dir.join("c"), "needle", false).unwrap_err();
    assert!(err.to_string().contains("authenticate"), "{err}");
    std::fs::write(&path, &pristine).unwrap();

    // And a record hashed for the needle's interval: its checkpoint no longer matches.
    let (_, end, ..) = record(first + 1);
    flip(&path, end - 1);
    let err = export_query(&f, &dir.join("d"), "needle", false).unwrap_err();
    assert!(err.to_string().contains("chain head differs"), "{err}");
}

/// A segment sealed without its sealing checkpoint (`verify` reports it) ends a walk
/// that skims with records no checkpoint follows: they are hashed after all, so the
/// next segment's header is checked against the chain, and the export goes on.
#[test]
fn a_segment_without_its_sealing_checkpoint_does_not_leave_the_skim_behind() {
    // Two segments: the second holds the index's mark, so it is read, and its header
    // checked against where the first left the chain.
    let f = two_needles(2, 60, Some(16 * 1024));
    let segments = std::fs::read_dir(f.archive.join("segments"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert_eq!(segments, 2);
    let needle = placed(&f, "needle")[0].0;
    let (path, fr) = frames_around(&f, needle);
    let (Some(seal), Some(before)) = (fr.last(), fr.iter().rev().nth(1)) else {
        panic!("no frames")
    };
    assert!(seal.3, "the segment ends with its sealing checkpoint");
    assert!(
        !before.3,
        "a record comes before it, not another checkpoint: {fr:?}"
    );
    assert!(
        fr.iter().any(|x| !x.3 && x.2 > needle + 8),
        "fillers follow the needles"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(seal.0).unwrap();
    }
    let dir = f._tmp.path();
    let (by_index, rows, chain) = export_by(&f, &dir.join("index"), "needle", false);
    let (_, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows, want);
    assert!(chain == want_chain, "chain.jsonl differs from the scan's");
    assert!(by_index.skimmed > 0);
}

/// Bytes this thread has read through `read(2)` and kin so far (`rchar`).
fn thread_rchar() -> u64 {
    std::fs::read_to_string("/proc/thread-self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Records hashed again when a needle turns up in an interval that was being skimmed
/// are a few frames; the export must read them, not a whole window (4 MiB) from where
/// the skim began each time. With checkpoints every few records (the writer also
/// writes one on each second of quiet) and a query with a hit in most intervals, one
/// segment is otherwise read again once per interval: far more than the scan, which
/// reads it once.
#[test]
fn a_narrow_export_reads_no_more_of_a_segment_than_the_scan() {
    // One segment (64 MiB limit), a checkpoint every 4 records, a needle every 5th
    // record: most intervals hold one, after a filler.
    let (f, a, rt) = open_fixture(None);
    let pad = "x".repeat(400);
    let bodies = (0..600).map(|i| {
        if i % 5 == 3 {
            format!("needle {i} {pad}")
        } else {
            format!("filler {i} {pad}")
        }
    });
    let last = chat_bodies(&a, &rt, bodies);
    wait_indexed(&f, last);
    rt.block_on(a.close()).unwrap();
    let dir = f._tmp.path();
    // Bytes read by an export, its own output (hashed for the manifest) included.
    let measured = |out: &str, query: &str, scan: bool| {
        let before = thread_rchar();
        let t = std::time::Instant::now();
        let s = export_query(&f, &dir.join(out), query, scan).unwrap();
        (s, thread_rchar() - before, t.elapsed())
    };
    let (by_scan, scan_read, scan_time) = measured("scan", "needle", true);
    // What an index export reads besides hashing records again: opening the index,
    // and the same walk, for a query without a hit.
    let (none, base_read, _) = measured("none", "nothingsaidthis", false);
    assert_eq!(
        none.skimmed + 1,
        none.scanned,
        "all but the first record skimmed"
    );
    let (by_index, index_read, index_time) = measured("index", "needle", false);
    assert_eq!(by_index.records, by_scan.records);
    assert!(by_index.skimmed > 0, "{by_index:?}");
    assert_eq!(by_index.scanned, by_scan.scanned);
    // Each record is read again at most once, so the index export reads at most what
    // the scan reads (the segment, twice, and the output) and that overhead.
    assert!(
        index_read <= scan_read + base_read,
        "the index export read {index_read} bytes in {index_time:?} ({base_read} without \
         a hit); the scan {scan_read} in {scan_time:?}"
    );
}

/// A segment shredded as retention and erasure shred one: its shred record in the
/// chain, then its key destroyed. Every export counts its records as shredded,
/// however the walk went over it (read and proven by leaf, or left unread), and names
/// it with its shred record; the verifier counts what the range lacks and which
/// segments the signed manifest says were shredded.
#[test]
fn a_narrow_export_counts_every_shredded_record_it_reads() {
    let (f, a, rt) = needles(30, 30);
    let found = placed(&f, "needle");
    let seg = found[0].1;
    assert!(found.iter().all(|n| n.1 == seg), "{found:?}");
    let shred = rt
        .block_on(a.shred_segment(seg, "test", "{}", "officer"))
        .unwrap();
    let end = ArchiveReader::open(&f.archive, &f.master)
        .unwrap()
        .chain_end()
        .unwrap();
    wait_indexed(&f, end);
    rt.block_on(a.close()).unwrap();
    assert!(!f.archive.join(segment::key_name(seg)).exists());
    let dir = f._tmp.path();
    let (by_scan, want, want_chain) = export_by(&f, &dir.join("scan"), "needle", true);
    let (by_index, rows, chain) = export_by(&f, &dir.join("index"), "needle", false);
    assert!(matches!(by_index.selected_by, SelectedBy::Index { .. }));
    assert!(want.is_empty() && rows.is_empty());
    assert_eq!(chain, want_chain);
    assert!(by_scan.shredded > 3, "{by_scan:?}");
    assert_eq!(
        by_index.shredded, by_scan.shredded,
        "the index export read the shredded segment ({} records read, {} skimmed)",
        by_index.scanned, by_index.skimmed
    );
    for s in [&by_scan, &by_index] {
        assert_eq!(s.shredded_segments.len(), 1, "{s:?}");
        let named = &s.shredded_segments[0];
        assert_eq!((named.segment, named.shred_seq), (seg, shred.seq.0));
        assert_eq!(named.last_seq + 1 - named.first_seq, by_scan.shredded);
    }
    // Everything: the range lacks exactly the shredded segment's records.
    let all = dir.join("all");
    let s = run_export(&f, &all, &ExportRequest::default());
    assert_eq!(s.shredded, by_scan.shredded);
    let r = verify_export(&all, &f.signing.verifying_key());
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(
        (r.withheld_in_range, r.shredded_in_range),
        (s.shredded, s.shredded)
    );
    assert_eq!(r.shredded, s.shredded_segments);
}

/// An administrator moves a segment's key file away, exports, and puts it back, to
/// hand over an export without that segment's records. No signed shred record names
/// the segment, so the export refuses, whether it reads every record, tests a query's
/// every record, or selects through the index; the first segment of the chain too.
#[test]
fn a_key_moved_away_without_a_shred_record_stops_every_export() {
    let (f, a, rt) = needles(30, 30);
    rt.block_on(a.close()).unwrap();
    let found = placed(&f, "needle");
    let seg = found[0].1;
    let dir = f._tmp.path();
    for (i, gone) in [seg, 1].into_iter().enumerate() {
        let key = f.archive.join(segment::key_name(gone));
        let saved = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        for (j, (query, scan)) in [
            (None, false),
            (Some("needle"), true),
            (Some("needle"), false),
        ]
        .into_iter()
        .enumerate()
        {
            let req = ExportRequest {
                query: query.map(str::to_string),
                ..ExportRequest::default()
            };
            let opts = ExportOptions {
                scan,
                ..ExportOptions::default()
            };
            let out = dir.join(format!("out-{i}-{j}"));
            let e = export_with(
                &f.archive,
                &f.master,
                &f.signing,
                &out,
                &req,
                &opts,
                |_, _| {},
            )
            .expect_err("an export without the segment's records");
            assert!(
                matches!(e, ExportError::KeyMissing { segment, .. } if segment == gone),
                "{query:?} scan {scan}: {e}"
            );
            assert!(e.to_string().contains("no signed shred record"), "{e}");
            assert!(!out.exists());
        }
        std::fs::write(&key, saved).unwrap();
    }
    let out = dir.join("whole");
    run_export(&f, &out, &ExportRequest::default());
    assert!(verify_export(&out, &f.signing.verifying_key()).is_clean());
}

/// The Actiance export, which reads every record of every chain, refuses a segment
/// whose key is gone without a shred record as the verifiable export does, and goes
/// on past a shredded one.
#[test]
fn the_actiance_export_refuses_a_key_moved_away_and_leaves_out_a_shredded_segment() {
    let (f, a, rt) = needles(30, 30);
    let seg = placed(&f, "needle")[0].1;
    let dir = f._tmp.path();
    let req = ExportRequest::default();
    let key = f.archive.join(segment::key_name(seg));
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let e = actiance::export_actiance(&[&f.archive], &f.master, &req, &dir.join("a.xml"))
        .expect_err("an export without the segment's records");
    assert!(
        matches!(e, ExportError::KeyMissing { segment, .. } if segment == seg),
        "{e}"
    );
    assert!(!dir.join("a.xml").exists());
    std::fs::write(&key, saved).unwrap();
    actiance::export_actiance(&[&f.archive], &f.master, &req, &dir.join("b.xml")).unwrap();
    rt.block_on(a.shred_segment(seg, "test", "{}", "officer"))
        .unwrap();
    rt.block_on(a.close()).unwrap();
    actiance::export_actiance(&[&f.archive], &f.master, &req, &dir.join("c.xml")).unwrap();
}

/// Someone holding the signing key writes an export of their own that leaves a whole
/// segment out: no row, no leaf and no line of its in the chain file, and the manifest
/// signed again without naming it shredded. The rows around it still prove, so the
/// verifier must count the records between them that the export lacks; and a manifest
/// that declares shredded records where rows are is refused.
#[test]
fn a_segment_left_out_of_an_export_is_counted_by_the_verifier() {
    let (f, a, rt) = needles(30, 30);
    let seg = placed(&f, "needle")[0].1;
    rt.block_on(a.shred_segment(seg, "test", "{}", "officer"))
        .unwrap();
    rt.block_on(a.close()).unwrap();
    let out = f._tmp.path().join("all");
    let s = run_export(&f, &out, &ExportRequest::default());
    let records = s.shredded;
    assert!(records > 3, "{s:?}");
    let resign = |edit: &dyn Fn(&mut Manifest)| {
        let path = out.join(manifest::MANIFEST);
        let mut m: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut m);
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let sig = manifest::sign(&f.signing, &bytes);
        std::fs::write(out.join(manifest::SIGNATURE), format!("{sig}\n")).unwrap();
        verify_export(&out, &f.signing.verifying_key())
    };
    let r = resign(&|m| m.shredded.clear());
    assert_eq!(
        (r.withheld_in_range, r.shredded_in_range),
        (records, 0),
        "the segment's records are missing from the range, and nothing says why"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("has no query")
                && p.what.contains(&format!("{records} record(s)"))),
        "{:#?}",
        r.problems
    );
    let first = s.first_seq.unwrap();
    let r = resign(&|m| {
        m.shredded = vec![manifest::ShreddedSegment {
            segment: 1,
            first_seq: first,
            last_seq: first + records,
            shred_seq: 1,
        }]
    });
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("declares") && p.what.contains("shredded")),
        "{:#?}",
        r.problems
    );
}
