//! Regulator export after real traffic through Custos: `custos export`, then
//! `custos verify-export` with nothing but the directory and the public key, pyarrow
//! reading the Parquet rows, and tampering found and located.

use std::process::Command;
use std::time::{Duration, Instant};

use custos_e2e::custos::run_custos;
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::{Tls, Tools};

type TestResult = Result<(), BoxError>;

fn record_count(rig: &Rig) -> Result<u64, BoxError> {
    let out = rig.cli(&["verify"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(", ")
        .find_map(|part| part.strip_suffix(" record(s)"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no record count in {text:?}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_real_traffic_verifies_offline_and_loads_in_pyarrow() -> TestResult {
    let rig = Rig::start(
        "export",
        RigOptions {
            archive: true,
            rules: Some("[[rule]]\nid = \"codenames\"\nwhen = { body = { regex = \"(?i)falcon\" } }\naction = \"redact\"\n".into()),
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    for body in [
        "export me: first",
        "export me: project falcon <&>",
        "export me: last",
    ] {
        alice.send_chat("bob@example.test", body).await?;
        bob.next_message().await?;
    }
    bob.send_chat("alice@example.test", "export me: reply ✓")
        .await?;
    alice.next_message().await?;
    // The export reaches up to the newest signed checkpoint, signed once the writer idles.
    tokio::time::sleep(Duration::from_millis(1800)).await;

    let before = record_count(&rig)?;
    let out_dir = rig.dir.join("export");
    let out = rig.cli(&[
        "export",
        "--out",
        out_dir.to_str().ok_or("path")?,
        "--query",
        "\"export me\"",
    ])?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Offline verification: the directory and the public key, nothing else.
    let public = rig.custos_dir.join("secrets/signing.key.pub");
    let verify = run_custos(
        &[
            "verify-export",
            out_dir.to_str().ok_or("path")?,
            "--public-key",
            public.to_str().ok_or("path")?,
        ],
        None,
    )?;
    let report = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        verify.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Both users are behind Custos: each of the four messages crossed the sender's and
    // the recipient's stream, and the export holds every copy as recorded.
    assert!(report.contains("8 record(s), 8 proven"), "{report}");

    // pyarrow reads the rows, and they are what `custos search` returns.
    let tools = Tools::locate()?;
    let script = r#"
import glob, json, sys
import pyarrow.parquet as pq
rows = []
for part in sorted(glob.glob(sys.argv[1] + "/records/*.parquet")):
    t = pq.read_table(part, columns=["seq", "direction", "from", "to", "type", "body", "delivered_body", "action", "rules", "logical_message", "delivered_logical_message", "leg", "account"])
    rows.extend(t.to_pylist())
print(json.dumps(rows))
"#;
    let py = Command::new(&tools.python)
        .arg("-c")
        .arg(script)
        .arg(&out_dir)
        .output()?;
    assert!(
        py.status.success(),
        "pyarrow failed (run scripts/setup.sh): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&py.stdout)?;
    let hits = rig.search_copies("\"export me\"")?;
    assert_eq!(rows.len(), hits.len(), "{rows:#?}\n{hits:#?}");
    for (row, hit) in rows.iter().zip(&hits) {
        for key in [
            "seq",
            "direction",
            "from",
            "to",
            "type",
            "body",
            "action",
            "rules",
        ] {
            assert_eq!(row[key], hit[key], "{key} of seq {}", hit["seq"]);
        }
        assert_eq!(
            row["delivered_body"],
            hit.get("delivered_body")
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        );
    }
    assert!(
        rows.iter()
            .any(|r| r["delivered_body"] == "export me: project ██████ <&>"),
        "{rows:#?}"
    );
    // A regulator groups copies by logical message (a redacted original also names the
    // identity of what it delivered): four messages, each seen on the sender's stream
    // and on the recipient's.
    let mut groups: Vec<Vec<&serde_json::Value>> = Vec::new();
    for row in &rows {
        let names = [&row["logical_message"], &row["delivered_logical_message"]];
        match groups.iter_mut().find(|g| {
            g.iter().any(|o| {
                names.iter().any(|n| {
                    !n.is_null()
                        && (o["logical_message"] == **n || o["delivered_logical_message"] == **n)
                })
            })
        }) {
            Some(g) => g.push(row),
            None => groups.push(vec![row]),
        }
    }
    assert_eq!(groups.len(), 4, "{rows:#?}");
    for g in &groups {
        let mut legs: Vec<&str> = g.iter().map(|r| r["leg"].as_str().unwrap_or("")).collect();
        legs.sort_unstable();
        assert_eq!(legs, ["client-to-server", "server-to-client"], "{g:#?}");
    }

    // Transcripts are self-contained HTML with bodies escaped and no script.
    let transcripts: Vec<_> =
        std::fs::read_dir(out_dir.join("transcripts"))?.collect::<Result<_, _>>()?;
    assert!(!transcripts.is_empty());
    for t in transcripts {
        let html = std::fs::read_to_string(t.path())?;
        assert!(!html.contains("<script"), "{}", t.path().display());
        assert!(
            !html.contains("<&>"),
            "bodies escaped in {}",
            t.path().display()
        );
    }

    // One changed byte in a Parquet part: found, and the file named.
    let tampered = rig.dir.join("export-tampered");
    custos_e2e::dir::copy_dir(&out_dir, &tampered)?;
    let part = std::fs::read_dir(tampered.join("records"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .ok_or("no parquet part")?;
    let mut bytes = std::fs::read(&part)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&part, bytes)?;
    let verify = run_custos(
        &[
            "verify-export",
            tampered.to_str().ok_or("path")?,
            "--public-key",
            public.to_str().ok_or("path")?,
        ],
        None,
    )?;
    let report = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(!verify.status.success(), "tampering not detected: {report}");
    let name = part.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    assert!(report.contains(name), "problem names the file: {report}");

    // The export itself is on the record: `custos export` hands an audit event to the
    // running writer, which appends it to the chain.
    let deadline = Instant::now() + Duration::from_secs(5);
    while record_count(&rig)? != before + 1 {
        assert!(
            Instant::now() < deadline,
            "export not recorded: {} records, {before} before\n{}",
            record_count(&rig)?,
            rig.context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
