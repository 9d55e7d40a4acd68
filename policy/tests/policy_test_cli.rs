//! `policy check` and `policy test` entry points, as the binary calls them.

use std::path::{Path, PathBuf};

use custos_policy::{check, run_test, Policy};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/rules.toml")
}

fn run(input: &str) -> (Vec<serde_json::Value>, custos_policy::TestStats) {
    let p = Policy::load(&example_path()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let stats = run_test(&p, input.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{e}"));
    let lines = String::from_utf8(out)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (lines, stats)
}

#[test]
fn check_summarises_a_good_file_and_locates_errors() {
    let s = check(&example_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.rules, 6);
    assert!(s.to_string().contains("ok (enforce mode): 6 rules"), "{s}");
    let bad = std::env::temp_dir().join(format!("custos-bad-rules-{}.toml", std::process::id()));
    std::fs::write(&bad, "[[rule]]\nid='a'\naction='flag'\n").unwrap_or_else(|e| panic!("{e}"));
    let e = check(&bad).expect_err("missing when");
    std::fs::remove_file(&bad).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        e.to_string()
            .starts_with(&format!("{}:1: missing field `when`", bad.display())),
        "{e}"
    );
}

#[test]
fn verdict_lines_carry_action_rules_and_delivered_body() {
    let input = concat!(
        r#"{"direction":"outbound","from":"alice@example.test/laptop","to":"dave@example.test","type":"chat","body":"falcon is a merger target"}"#,
        "\n",
        r#"{"direction":"outbound","from":"alice@example.test/laptop","to":"bob@example.org","type":"chat","body":"card 4111111111111111"}"#,
        "\n",
        r#"{"direction":"inbound","from":"bob@example.test","to":"alice@example.test","body":"hi","thread":"t1","seq":7}"#,
        "\n",
        r#"{"direction":"outbound","from":"alice@example.test","to":"dave@example.test","body":"x","e2ee":"omemo"}"#,
        "\n",
        r#"{"direction":"outbound","kind":"presence","from":"alice@example.test","to":"carol@example.org","type":"subscribe"}"#,
        "\n",
        r#"{"direction":"outbound","from":"alice@example.test","to":"carol@example.org","body":"heck"}"#,
        "\n",
    );
    let (lines, stats) = run(input);
    assert_eq!(lines.len(), 6);
    let [redact, block, barrier, e2ee, presence, monitor] = lines.as_slice() else {
        panic!("6 lines")
    };
    assert_eq!(redact["action"], "redact");
    assert_eq!(redact["rules"], serde_json::json!(["insider"]));
    assert_eq!(redact["body"], "falcon is a █████████████");
    assert_eq!(block["action"], "block");
    assert_eq!(block["text"], "Card numbers may not be sent over chat.");
    assert!(block.get("body").is_none());
    assert_eq!(block["alerts"][0]["rule"], "pci-card");
    assert_eq!(block["disclaimer"]["to"], "bob@example.org");
    assert_eq!(barrier["rules"], serde_json::json!(["research-trading"]));
    assert_eq!(e2ee["action"], "flag");
    assert_eq!(e2ee["severity"], "high");
    assert_eq!(presence["action"], "allow");
    assert_eq!(presence["rules"], serde_json::json!([]));
    assert_eq!(monitor["action"], "allow");
    assert_eq!(monitor["would_action"], "flag");
    assert_eq!(monitor["monitored"], serde_json::json!(["profanity"]));
    assert_eq!(monitor["body"], "heck");
    assert_eq!(
        (
            stats.evaluated,
            stats.redacted,
            stats.blocked,
            stats.flagged,
            stats.allowed
        ),
        (6, 1, 2, 1, 2)
    );
    assert!(stats.errors.is_empty());
}

#[test]
fn bad_lines_are_reported_in_place_and_processing_continues() {
    let mut input = String::new();
    input.push_str("not json\n\n");
    input.push_str(r#"{"direction":"sideways","body":"x"}"#);
    input.push('\n');
    input.push_str(r#"{"direction":"outbound","to":"bob@example.test","from":"alice@example.test","body":"ok"}"#);
    input.push('\n');
    let (lines, stats) = run(&input);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["line"], 1);
    assert!(lines[0]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(lines[1]["line"], 3, "blank line 2 is skipped but counted");
    assert!(
        lines[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("sideways")),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["action"], "block");
    assert_eq!(stats.evaluated, 1);
    assert_eq!(
        stats.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        [1, 3]
    );
}

#[test]
fn invalid_utf8_and_overlong_lines_do_not_stop_the_run() {
    let p = Policy::from_str("", Path::new("empty.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut input: Vec<u8> = b"\xff\xfe\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', custos_policy::MAX_LINE + 10));
    input.extend_from_slice(b"\n{\"direction\":\"inbound\",\"body\":\"hi\"}\n");
    let mut out = Vec::new();
    let stats = run_test(&p, input.as_slice(), &mut out).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(r#"{"line":1,"error":"not UTF-8"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(r#"{"line":2,"error":"line longer than"#),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], r#"{"action":"allow","rules":[],"body":"hi"}"#);
    assert_eq!(stats.evaluated, 1);
}
