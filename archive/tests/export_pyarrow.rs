//! pyarrow reads the exported Parquet files and the rows match what search
//! returns. Needs `<workspace>/.venv` with pyarrow (`bash scripts/setup.sh`)
//! or `$CUSTOS_TEST_PYTHON`; fails, naming the script, if it is missing.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use custos_archive::*;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTOS_TEST_PYTHON") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

const SCRIPT: &str = r#"
import json, sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
for r in t.sort_by("seq").to_pylist():
    print(json.dumps({"seq": r["seq"], "time_ms": int(r["time"].timestamp() * 1000),
        "kind": r["kind"], "from": r["from"], "to": r["to"], "type": r["type"],
        "body": r["body"], "action": r["action"], "rules": r["rules"],
        "delivered_body": r["delivered_body"], "hash_len": len(r["record_hash"])}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_rows_that_match_search() {
    let py = python();
    let probe = Command::new(&py).args(["-c", "import pyarrow"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{} cannot import pyarrow: run `bash scripts/setup.sh` (or set CUSTOS_TEST_PYTHON): {probe:?}",
        py.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let master = MasterKey::from_bytes([3; 32]);
    let signing = SigningKey::from_bytes(&[6; 32]);
    let a = Archive::open(ArchiveConfig::new(
        dir.clone(),
        master.clone(),
        signing.clone(),
    ))
    .unwrap();
    for i in 0..30u32 {
        let from = if i % 3 == 0 {
            "alice@example.test/laptop"
        } else {
            "bob@example.test/phone"
        };
        let action = if i % 5 == 0 {
            Action::Redact
        } else {
            Action::Allow
        };
        a.append(NewRecord::Message(MessageRecord {
            outcome: Outcome {
                action,
                rules: if action == Action::Redact {
                    vec!["pci-card".into()]
                } else {
                    vec![]
                },
                delivered_body: (action == Action::Redact).then(|| "████".into()),
                ..Outcome::allowed()
            },
            ..MessageRecord::chat(
                from,
                "carol@example.test",
                format!("payment {i} ünïcödé <b>"),
            )
        }))
        .await
        .unwrap();
    }
    a.close().await.unwrap();
    let query = "from:alice@example.test payment";
    let out = tmp.path().join("out");
    let req = ExportRequest {
        query: Some(query.into()),
        ..ExportRequest::default()
    };
    let s = export(&dir, &master, &signing, &out, &req, |_, _| {}).unwrap();
    let hits = ArchiveReader::open(&dir, &master)
        .unwrap()
        .search(query, 1000)
        .unwrap();
    assert_eq!(hits.len(), 10);
    assert_eq!(s.records, 10);

    let o = Command::new(&py)
        .args(["-c", SCRIPT])
        .arg(out.join("records"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), hits.len());
    for (r, h) in rows.iter().zip(&hits) {
        assert_eq!(r["seq"], h.seq.0);
        assert_eq!(r["time_ms"], h.time.millis());
        assert_eq!(r["kind"], "message");
        assert_eq!(r["from"], h.from.as_str());
        assert_eq!(r["to"], h.to.as_str());
        assert_eq!(r["type"], h.stanza_type.as_str());
        assert_eq!(r["body"], serde_json::json!(h.body));
        assert_eq!(r["action"], h.action.as_str());
        assert_eq!(r["rules"], serde_json::json!(h.rules));
        assert_eq!(r["delivered_body"], serde_json::json!(h.delivered_body));
        assert_eq!(r["hash_len"], 32);
    }
    assert!(verify_export(&out, &signing.verifying_key()).is_clean());
}
