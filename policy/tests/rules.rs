//! Every condition and action, through the public API: rules text in, verdicts out.

use std::path::{Path, PathBuf};

use custos_policy::{
    Action, Direction, E2ee, Policy, Severity, StanzaKind, Subject, Verdict, MASK,
};

fn policy(text: &str) -> Policy {
    Policy::from_str(text, Path::new("rules.toml"))
        .unwrap_or_else(|e| panic!("rules must compile:\n{e}"))
}

fn errors(text: &str) -> String {
    match Policy::from_str(text, Path::new("rules.toml")) {
        Ok(_) => panic!("rules must not compile:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn out(p: &Policy, from: &str, to: &str, body: &str) -> Verdict {
    p.evaluate(&Subject::outbound_chat(from, to, body))
}

const A: &str = "alice@example.test/laptop";
const EXT: &str = "carol@example.org";

fn example() -> Policy {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/rules.toml");
    Policy::load(&path).unwrap_or_else(|e| panic!("example must load:\n{e}"))
}

#[test]
fn example_file_loads_and_enforces_its_rules() {
    let p = example();
    let s = p.summary();
    assert_eq!(
        (s.rules, s.barriers, s.groups, s.lexicons, s.monitored),
        (6, 1, 3, 2, 1)
    );
    assert_eq!(s.lexicon_terms, 8);
    assert!(s.webhook);
    assert_eq!(
        p.sources().len(),
        2,
        "rules file and the insider lexicon file"
    );

    let v = out(&p, A, EXT, "my card is 4111 1111 1111 1111");
    assert_eq!(v.action, Action::Block);
    assert!(v.matched("pci-card") && v.matched("external-notice"));
    assert_eq!(
        v.block_text.as_deref(),
        Some("Card numbers may not be sent over chat.")
    );
    assert_eq!(v.alerts.len(), 1);
    assert_eq!(
        v.alerts.first().map(|a| &*a.webhook),
        Some("http://127.0.0.1:9000/hook")
    );

    let v = out(
        &p,
        A,
        "dave@example.test",
        "About Project Falcon: mnpi inside",
    );
    assert_eq!(v.action, Action::Redact);
    assert_eq!(
        v.delivered_body.as_deref(),
        Some("About ██████████████: ████ inside")
    );
    assert!(v.disclaimer.is_none(), "internal conversation");

    let v = out(&p, A, "bob@example.test", "lunch?");
    assert_eq!(v.action, Action::Block);
    assert_eq!(
        v.rules.first().map(|r| r.as_str()),
        Some("research-trading")
    );

    let v = p.evaluate(&Subject {
        e2ee: Some(E2ee::Omemo),
        ..Subject::outbound_chat(A, "dave@example.test", "")
    });
    assert_eq!((v.action, v.severity), (Action::Flag, Some(Severity::High)));

    let v = out(&p, A, EXT, "heck");
    assert_eq!(v.action, Action::Allow);
    assert_eq!(v.would_action, Action::Flag);
    assert!(v.monitored.iter().any(|r| r.as_str() == "profanity"));
    let d = v
        .disclaimer
        .unwrap_or_else(|| panic!("disclaimer to the external party"));
    assert_eq!(d.to, "carol@example.org");
    assert_eq!(d.from.as_deref(), Some("alice@example.test"));
    assert_eq!(d.period.as_secs(), 86_400);
}

#[test]
fn direction_condition() {
    let p = policy("[[rule]]\nid='o'\nwhen={direction='outbound'}\naction='flag'\n");
    assert_eq!(out(&p, A, EXT, "x").action, Action::Flag);
    let inbound = Subject {
        direction: Direction::Inbound,
        ..Subject::outbound_chat(EXT, A, "x")
    };
    assert_eq!(p.evaluate(&inbound).action, Action::Allow);
}

#[test]
fn from_to_by_jid_domain_glob_and_group() {
    let p = policy(
        r#"
[groups]
desk = ["*@desk.example.test", "zed@example.test"]
[[rule]]
id = "bare"
when = { to = "carol@example.org" }
action = "flag"
[[rule]]
id = "full"
when = { from = "alice@example.test/laptop" }
action = "flag"
[[rule]]
id = "domain"
when = { to = "domain:example.net" }
action = "flag"
[[rule]]
id = "glob"
when = { to = "*.example.com" }
action = "flag"
[[rule]]
id = "group"
when = { from = "group:desk" }
action = "flag"
[[rule]]
id = "list"
when = { to = ["nobody@x.test", "Example.INFO"] }
action = "flag"
"#,
    );
    let m = |from: &str, to: &str| -> Vec<String> {
        out(&p, from, to, "")
            .rules
            .iter()
            .map(|r| r.to_string())
            .collect()
    };
    assert_eq!(m(A, "Carol@Example.org/phone"), ["bare", "full"]);
    assert_eq!(m("alice@example.test/phone", "x@example.net"), ["domain"]);
    assert_eq!(m("q@example.test", "x@sub.example.com"), ["glob"]);
    assert_eq!(m("q@example.test", "x@example.com"), Vec::<String>::new());
    assert_eq!(m("ann@desk.example.test", "x@y.test"), ["group"]);
    assert_eq!(m("zed@example.test/r", "x@y.test"), ["group"]);
    assert_eq!(m("q@example.test", "x@example.info"), ["list"]);
}

#[test]
fn internal_and_external_parties() {
    let p = policy(
        "internal_domains=['example.test']\n[[rule]]\nid='ext'\nwhen={to='external'}\naction='flag'\n[[rule]]\nid='int'\nwhen={to='internal'}\naction='flag'\n",
    );
    assert!(out(&p, A, EXT, "").matched("ext"));
    assert!(out(&p, A, "room@conference.example.test", "").matched("int"));
    let no_to = Subject {
        to: None,
        ..Subject::outbound_chat(A, EXT, "")
    };
    assert!(
        p.evaluate(&no_to).rules.is_empty(),
        "no address: neither internal nor external"
    );
}

#[test]
fn kind_and_type() {
    let p = policy(
        "[[rule]]\nid='gc'\nwhen={kind='message', type='groupchat'}\naction='flag'\n[[rule]]\nid='sub'\nwhen={kind='presence', type=['subscribe']}\naction='flag'\n[[rule]]\nid='normal'\nwhen={type='normal'}\naction='flag'\n",
    );
    let base = Subject::outbound_chat(A, EXT, "");
    assert!(p
        .evaluate(&Subject {
            stanza_type: Some("groupchat"),
            ..base
        })
        .matched("gc"));
    assert!(p.evaluate(&base).rules.is_empty());
    let sub = Subject {
        kind: StanzaKind::Presence,
        stanza_type: Some("subscribe"),
        body: None,
        ..base
    };
    assert!(p.evaluate(&sub).matched("sub"));
    let untyped = Subject {
        stanza_type: None,
        ..base
    };
    assert!(
        p.evaluate(&untyped).matched("normal"),
        "absent message type is normal"
    );
}

#[test]
fn body_and_subject_regex() {
    let p = policy("[[rule]]\nid='r'\nwhen={subject={regex='(?i)^urgent'}}\naction='flag'\n[[rule]]\nid='b'\nwhen={body={regex='\\bQ[1-4]\\b'}}\naction='flag'\n");
    let base = Subject::outbound_chat(A, EXT, "Q3 numbers");
    assert_eq!(p.evaluate(&base).rules.len(), 1);
    assert!(p
        .evaluate(&Subject {
            subject: Some("URGENT: x"),
            ..base
        })
        .matched("r"));
    assert!(!p
        .evaluate(&Subject {
            body: Some("Q5"),
            ..base
        })
        .matched("b"));
}

#[test]
fn lexicon_inline_whole_word_and_case_options() {
    let p = policy(
        r#"
[[lexicon]]
id = "ww"
terms = ["falcon", "Hawk eye"]
[[lexicon]]
id = "cs"
terms = ["XYZ"]
whole_word = false
case_insensitive = false
[[rule]]
id = "ww"
when = { body = { lexicon = "ww" } }
action = "flag"
[[rule]]
id = "cs"
when = { body = { lexicon = "cs" } }
action = "flag"
"#,
    );
    assert!(out(&p, A, EXT, "the FALCON flies").matched("ww"));
    assert!(out(&p, A, EXT, "hawk EYE").matched("ww"));
    assert!(!out(&p, A, EXT, "falconry").matched("ww"));
    assert!(out(&p, A, EXT, "abcXYZdef").matched("cs"));
    assert!(!out(&p, A, EXT, "xyz").matched("cs"));
}

#[test]
fn detectors() {
    let p = policy(
        "[[rule]]\nid='card'\nwhen={body={detector='payment-card'}}\naction='flag'\n[[rule]]\nid='iban'\nwhen={body={detector='iban'}}\naction='flag'\n[[rule]]\nid='ssn'\nwhen={body={detector='us-ssn'}}\naction='flag'\n[[rule]]\nid='mail'\nwhen={body={detector='email'}}\naction='flag'\n",
    );
    let ids = |body: &str| -> Vec<String> {
        out(&p, A, EXT, body)
            .rules
            .iter()
            .map(|r| r.to_string())
            .collect()
    };
    assert_eq!(ids("5555-5555-5555-4444"), ["card"]);
    assert_eq!(ids("5555-5555-5555-4445"), Vec::<String>::new());
    assert_eq!(ids("DE89 3704 0044 0532 0130 00"), ["iban"]);
    assert_eq!(ids("ssn 078-05-1120"), ["ssn"]);
    assert_eq!(ids("mail me: x.y@corp.example.com"), ["mail"]);
}

#[test]
fn e2ee_conditions() {
    let p = policy("[[rule]]\nid='any'\nwhen={e2ee=true}\naction='flag'\n[[rule]]\nid='otr'\nwhen={e2ee=['otr','openpgp']}\naction='flag'\n[[rule]]\nid='clear'\nwhen={e2ee=false}\naction='flag'\n");
    let base = Subject::outbound_chat(A, EXT, "");
    let ids = |e: Option<E2ee>| -> Vec<String> {
        p.evaluate(&Subject { e2ee: e, ..base })
            .rules
            .iter()
            .map(|r| r.to_string())
            .collect()
    };
    assert_eq!(ids(Some(E2ee::Omemo)), ["any"]);
    assert_eq!(ids(Some(E2ee::Otr)), ["any", "otr"]);
    assert_eq!(ids(Some(E2ee::Openpgp)), ["any", "otr"]);
    assert_eq!(ids(None), ["clear"]);
}

#[test]
fn all_any_not_combinations() {
    let p = policy(
        r#"
[[rule]]
id = "combo"
when = { all = [ { direction = "outbound" }, { any = [ { body = { regex = "alpha" } }, { body = { regex = "beta" } } ] } ], not = { body = { regex = "approved" } } }
action = "flag"
"#,
    );
    assert!(out(&p, A, EXT, "beta").matched("combo"));
    assert!(!out(&p, A, EXT, "beta approved").matched("combo"));
    assert!(!out(&p, A, EXT, "gamma").matched("combo"));
}

#[test]
fn most_restrictive_wins_and_all_are_reported() {
    let p = policy(
        r#"
[[rule]]
id = "a"
when = { body = { regex = "x" } }
action = "allow"
[[rule]]
id = "f"
when = { body = { regex = "x" } }
action = "flag"
severity = "low"
[[rule]]
id = "r"
when = { body = { regex = "x" } }
action = "redact"
severity = "critical"
[[rule]]
id = "b"
when = { body = { regex = "xx" } }
action = "block"
"#,
    );
    let v = out(&p, A, EXT, "x");
    assert_eq!(v.action, Action::Redact);
    assert_eq!(
        v.rules.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        ["a", "f", "r"]
    );
    assert_eq!(v.severity, Some(Severity::Critical));
    assert_eq!(v.delivered_body.as_deref(), Some("█"));
    let v = out(&p, A, EXT, "xx");
    assert_eq!(v.action, Action::Block);
    assert_eq!(v.delivered_body, None, "nothing is delivered when blocked");
    assert!(
        v.block_text.is_some_and(|t| t.contains("blocked")),
        "default block text"
    );
}

#[test]
fn flag_defaults_to_medium_severity() {
    let p = policy("[[rule]]\nid='f'\nwhen={direction='outbound'}\naction='flag'\n");
    assert_eq!(out(&p, A, EXT, "").severity, Some(Severity::Medium));
}

#[test]
fn alert_action_and_alert_flag() {
    let p = policy(
        "[alert]\nwebhook='https://127.0.0.1:9/h'\n[[rule]]\nid='al'\nwhen={body={regex='secret'}}\naction='alert'\n[[rule]]\nid='bl'\nwhen={body={regex='secret'}}\naction='flag'\nalert=true\n[[rule]]\nid='quiet'\nwhen={body={regex='secret'}}\naction='flag'\n",
    );
    let v = out(&p, A, EXT, "a secret");
    assert_eq!(v.action, Action::Flag);
    let rules: Vec<&str> = v.alerts.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(rules, ["al", "bl"]);
    let json = serde_json::to_value(v.alerts.first()).unwrap_or_default();
    assert_eq!(json["rule"], "al");
    assert_eq!(json["action"], "allow");
    assert_eq!(json["from"], "alice@example.test/laptop");
    assert!(json.get("body").is_none(), "alerts carry no message text");
}

#[test]
fn redact_body_and_subject_keeps_the_rest() {
    let p = policy(
        "[[rule]]\nid='r'\nwhen={any=[{body={detector='us-ssn'}},{subject={detector='us-ssn'}}]}\naction='redact'\n",
    );
    let v = p.evaluate(&Subject {
        subject: Some("re 123-45-6789"),
        ..Subject::outbound_chat(A, EXT, "ssn 078-05-1120, ok")
    });
    assert_eq!(v.action, Action::Redact);
    assert_eq!(v.delivered_body.as_deref(), Some("ssn ███████████, ok"));
    assert_eq!(v.delivered_subject.as_deref(), Some("re ███████████"));
    let v = out(&p, A, EXT, "nothing here");
    assert_eq!((v.action, v.delivered_body), (Action::Allow, None));
}

#[test]
fn redaction_masks_only_positive_matches() {
    // The `not` part names text that must be absent; it is never what gets masked.
    let p = policy("[[rule]]\nid='r'\nwhen={body={regex='gold'}, not={body={regex='silver'}}}\naction='redact'\n");
    let v = out(&p, A, EXT, "gold and gold");
    assert_eq!(v.delivered_body.as_deref(), Some("████ and ████"));
}

#[test]
fn redaction_that_uncovers_a_new_match_masks_it_too() {
    // Masking `zz` turns `zzab` into `██ab`, where `ab` now stands as a whole word.
    let p = policy(
        "[[lexicon]]\nid='l'\nterms=['ab']\n[[rule]]\nid='z'\nwhen={body={regex='zz'}}\naction='redact'\n[[rule]]\nid='w'\nwhen={body={lexicon='l'}}\naction='redact'\n",
    );
    let v = out(&p, A, EXT, "zzab");
    assert_eq!(v.action, Action::Redact);
    assert_eq!(v.delivered_body.as_deref(), Some("████"));
}

#[test]
fn block_text_per_rule_and_barriers_both_ways() {
    let p = policy(
        r#"
block_text = "Blocked by policy."
[groups]
red = ["r@example.test"]
blue = ["b@example.test"]
[[barrier]]
id = "rb"
between = ["red", "blue"]
[[rule]]
id = "bad"
when = { body = { regex = "bad" } }
action = "block"
"#,
    );
    let v = out(&p, "r@example.test/x", "b@example.test", "hi");
    assert_eq!(
        (v.action, v.block_text.as_deref()),
        (Action::Block, Some("Blocked by policy."))
    );
    let v = p.evaluate(&Subject {
        direction: Direction::Inbound,
        ..Subject::outbound_chat("b@example.test/y", "r@example.test", "hi")
    });
    assert!(v.matched("rb"), "barrier holds in both directions");
    assert!(out(&p, "r@example.test", "c@example.test", "hi")
        .rules
        .is_empty());
    let presence = Subject {
        kind: StanzaKind::Presence,
        ..Subject::outbound_chat("r@example.test", "b@example.test", "")
    };
    assert!(
        p.evaluate(&presence).rules.is_empty(),
        "barriers apply to messages"
    );
}

/// A scripted client writes its addressee as the server does not: a soft hyphen in
/// the domain or the localpart, fullwidth or capital letters. The server prepares the
/// address (nodeprep, nameprep) and routes to the party the rule names, so the rule
/// and the barrier must see that party too.
#[test]
fn an_address_written_otherwise_is_the_party_the_server_routes_to() {
    let p = policy(
        r#"
[groups]
red = ["r@example.test"]
blue = ["b@example.test"]
[[barrier]]
id = "rb"
between = ["red", "blue"]
[[rule]]
id = "rival"
when = { to = ["*@bigbank.com", "domain:rival.example"] }
action = "block"
"#,
    );
    for to in [
        "analyst@bigbank\u{AD}.com",
        "\u{FF41}nalyst@bigbank.com",
        "analyst@\u{FF22}IGBANK.com",
        "analyst@bigbank.com.",
        "analyst@riv\u{AD}al.example",
    ] {
        assert!(
            out(&p, A, to, "hi").matched("rival"),
            "{to:?} reaches the rival's server"
        );
    }
    for to in [
        "b\u{AD}@example.test",
        "\u{FF42}@example.test",
        "B@EXAMPLE.TEST",
    ] {
        assert!(
            out(&p, "r@example.test/x", to, "hi").matched("rb"),
            "{to:?} is blue's address"
        );
    }
    assert!(out(&p, A, "analyst@otherbank.com", "hi").rules.is_empty());
}

#[test]
fn disclaimer_goes_to_the_external_party_either_way() {
    let p = policy(
        "internal_domains=['example.test']\n[[rule]]\nid='d'\nwhen={any=[{to='external'},{from='external'}]}\naction='disclaimer'\ntext='Recorded.'\nperiod='30m'\n",
    );
    let v = out(&p, A, "Carol@Example.org/phone", "hi");
    let d = v
        .disclaimer
        .unwrap_or_else(|| panic!("outbound disclaimer"));
    assert_eq!(
        (d.to.as_str(), &*d.text, d.period.as_secs()),
        ("carol@example.org", "Recorded.", 1800)
    );
    let inbound = Subject {
        direction: Direction::Inbound,
        ..Subject::outbound_chat("carol@example.org/phone", A, "hi")
    };
    let d2 = p
        .evaluate(&inbound)
        .disclaimer
        .unwrap_or_else(|| panic!("inbound disclaimer"));
    assert_eq!(d2.to, "carol@example.org");
    assert_eq!(
        d2.conversation, d.conversation,
        "same conversation both ways"
    );
    assert_eq!(out(&p, A, EXT, "").action, Action::Allow);
}

#[test]
fn monitor_mode_per_rule_and_file() {
    let rules = "[[rule]]\nid='b'\nwhen={body={regex='x'}}\naction='block'\nmode='monitor'\n[[rule]]\nid='f'\nwhen={body={regex='y'}}\naction='flag'\n";
    let p = policy(rules);
    let v = out(&p, A, EXT, "x");
    assert_eq!(
        (v.action, v.would_action, v.monitor_only),
        (Action::Allow, Action::Block, true)
    );
    assert_eq!(v.block_text, None);
    let v = out(&p, A, EXT, "xy");
    assert_eq!(
        (v.action, v.would_action, v.monitor_only),
        (Action::Flag, Action::Block, false)
    );

    let p = policy(&format!("mode='monitor'\n{rules}"));
    let v = out(&p, A, EXT, "xy");
    assert_eq!(
        (v.action, v.would_action, v.monitor_only),
        (Action::Allow, Action::Block, true)
    );
    assert_eq!(v.monitored.len(), 2);
}

#[test]
fn monitor_redact_delivers_the_original() {
    let p = policy("mode='monitor'\n[[rule]]\nid='r'\nwhen={body={detector='payment-card'}}\naction='redact'\n");
    let v = out(&p, A, EXT, "4111111111111111");
    assert_eq!((v.action, v.would_action), (Action::Allow, Action::Redact));
    assert_eq!(v.delivered_body, None);
    assert!(!v.delivered_body.unwrap_or_default().contains(MASK));
}

#[test]
fn errors_name_file_and_line_and_are_collected() {
    let e = errors(
        "mode = 'loud'\n\n[[rule]]\nid = 'a'\nwhen = { body = { regex = '(' } }\naction = 'flag'\n\n[[rule]]\nid = 'a'\nwhen = { to = 'group:nope' }\naction = 'explode'\n",
    );
    let lines: Vec<&str> = e.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules.toml:1: mode `loud`")),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules.toml:5: bad regex")),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules.toml:9: id `a` is used twice")),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules.toml:10: no group `nope`")),
        "{e}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules.toml:11: action `explode`")),
        "{e}"
    );
}

#[test]
fn unknown_keys_and_syntax_errors_have_lines() {
    let e = errors("[[rule]]\nid='a'\nwhen={direction='outbound'}\naction='flag'\nseverty='low'\n");
    assert!(
        e.starts_with("rules.toml:5: unknown field `severty`"),
        "{e}"
    );
    let e = errors("[[rule]]\nid='a'\nwhen={ dirction='outbound' }\naction='flag'\n");
    assert!(
        e.starts_with("rules.toml:3: unknown field `dirction`"),
        "{e}"
    );
    let e = errors("x = = 1\n");
    assert!(e.starts_with("rules.toml:1: "), "{e}");
}

#[test]
fn semantic_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "[[rule]]\nid='r'\nwhen={direction='outbound'}\naction='redact'\n",
            "rules.toml:3: a redact rule needs",
        ),
        (
            "[[rule]]\nid='r'\nwhen={body={regex='a*'}}\naction='redact'\n",
            "must not match empty text",
        ),
        (
            "[[rule]]\nid='r'\nwhen={body={regex='[^a]'}}\naction='redact'\n",
            "must not match the mask",
        ),
        (
            "[[rule]]\nid='r'\nwhen={to='external'}\naction='flag'\n",
            "need `internal_domains`",
        ),
        (
            "[[rule]]\nid='r'\nwhen={to='x@y'}\naction='alert'\n",
            "no `[alert] webhook`",
        ),
        ("[alert]\nwebhook='ftp://x'\n", "rules.toml:2: webhook"),
        (
            "[[rule]]\nid='r'\nwhen={to='x@y'}\naction='disclaimer'\n",
            "needs the notice",
        ),
        (
            "[[rule]]\nid='r'\nwhen={to='x@y'}\naction='flag'\nperiod='1h'\n",
            "disclaimer rules only",
        ),
        (
            "[[rule]]\nid='r'\nwhen={to='x@y'}\naction='flag'\ntext='t'\n",
            "block and disclaimer rules only",
        ),
        (
            "[[rule]]\nid='r'\nwhen={}\naction='flag'\n",
            "empty condition",
        ),
        (
            "[[rule]]\nid='r'\nwhen={body={regex='a', lexicon='b'}}\naction='flag'\n",
            "exactly one of",
        ),
        (
            "[[rule]]\nid='r'\nwhen={body={lexicon='b'}}\naction='flag'\n",
            "no lexicon `b`",
        ),
        (
            "[[rule]]\nid='r'\nwhen={body={detector='visa'}}\naction='flag'\n",
            "detector `visa`",
        ),
        (
            "[[rule]]\nid='r'\nwhen={e2ee='signal'}\naction='flag'\n",
            "e2ee `signal`",
        ),
        (
            "[[rule]]\nid='r'\nwhen={type='sideways'}\naction='flag'\n",
            "type `sideways`",
        ),
        ("[[barrier]]\nid='b'\nbetween=['x']\n", "exactly two groups"),
        (
            "[groups]\nx=['a@b']\n[[barrier]]\nid='b'\nbetween=['x','y']\n",
            "no group `y`",
        ),
        ("[[lexicon]]\nid='l'\n", "exactly one of `file` or `terms`"),
        (
            "[[lexicon]]\nid='l'\nfile='missing.txt'\n",
            "rules.toml:3: cannot read lexicon file",
        ),
    ];
    for (text, want) in cases {
        let e = errors(text);
        assert!(e.contains(want), "for:\n{text}\nwant {want:?}, got:\n{e}");
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let mut cond = "{ direction = 'outbound' }".to_string();
    for _ in 0..40 {
        cond = format!("{{ not = {cond} }}");
    }
    let e = errors(&format!("[[rule]]\nid='r'\nwhen={cond}\naction='flag'\n"));
    assert!(e.contains("nest deeper"), "{e}");
}

#[test]
fn retention_classes_come_from_matched_rules_and_classifying_rules_are_not_hits() {
    let p = policy(
        r#"
[groups]
research = ["alice@example.test"]

[[rule]]
id = "research-records"
when = { from = "group:research" }
action = "allow"
retention = "research"

[[rule]]
id = "deals"
when = { body = { regex = "(?i)deal" } }
action = "flag"
retention = "deals"
mode = "monitor"
"#,
    );
    let v = out(&p, A, EXT, "lunch?");
    let names = |v: &Verdict| {
        v.retention
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&v), ["research"]);
    assert!(v.rules.is_empty(), "a classifying allow rule is not a hit");
    let v = out(&p, A, EXT, "the deal is on");
    assert_eq!(
        names(&v),
        ["research", "deals"],
        "monitor rules classify too"
    );
    assert!(v.matched("deals"));
    let v = out(&p, "bob@example.test/x", EXT, "hello");
    assert!(v.retention.is_empty());
    let e = errors(
        "[[rule]]\nid = \"x\"\nwhen = { body = { regex = \"a\" } }\naction = \"allow\"\nretention = \"permanent\"\n",
    );
    assert!(e.contains("rules.toml:5") && e.contains("permanent"), "{e}");
}

/// Research and trading may not meet; the room is on the firm's own service.
const ROOM_RULES: &str = r#"
internal_domains = ["example.test"]

[groups]
research = ["alice@example.test"]
trading = ["bob@example.test"]

[[barrier]]
id = "research-trading"
between = ["research", "trading"]
text = "Research and trading may not talk."

[[rule]]
id = "room-notice"
when = { to = "external", type = "groupchat" }
action = "disclaimer"
text = "This room is recorded."
"#;

const ROOM: &str = "deals@conference.example.test";

fn in_room<'a>(base: Subject<'a>, room: custos_policy::RoomFacts<'a>) -> Subject<'a> {
    Subject { room, ..base }
}

#[test]
fn a_barrier_refuses_entering_a_room_where_the_other_side_is() {
    let p = policy(ROOM_RULES);
    let join = |occupants: &'static [&'static str]| Subject {
        kind: StanzaKind::Presence,
        stanza_type: None,
        body: None,
        room: custos_policy::RoomFacts {
            to_real: occupants,
            join: true,
            ..Default::default()
        },
        ..Subject::outbound_chat(A, "deals@conference.example.test/alice", "")
    };
    let v = p.evaluate(&join(&["bob@example.test/desk", "dave@example.test/x"]));
    assert_eq!(v.action, Action::Block);
    assert!(v.matched("research-trading"));
    assert_eq!(
        v.block_text.as_deref(),
        Some("Research and trading may not talk.")
    );
    // Nobody of the other side inside: the join passes.
    assert_eq!(
        p.evaluate(&join(&["dave@example.test/x"])).action,
        Action::Allow
    );
    // A presence that is not a join (a status update in the room) is not a meeting.
    let mut update = join(&["bob@example.test/desk"]);
    update.room.join = false;
    assert_eq!(p.evaluate(&update).action, Action::Allow);
}

#[test]
fn a_barrier_holds_for_group_chat_and_private_messages_in_a_room() {
    let p = policy(ROOM_RULES);
    let to_room = Subject {
        stanza_type: Some("groupchat"),
        ..Subject::outbound_chat(A, ROOM, "shall we?")
    };
    // Speaking into a room the other side is in.
    let v = p.evaluate(&in_room(
        to_room,
        custos_policy::RoomFacts {
            to_real: &["bob@example.test/desk"],
            groupchat: true,
            ..Default::default()
        },
    ));
    assert_eq!(v.action, Action::Block);
    // Hearing the other side speak in a room.
    let heard = Subject {
        direction: Direction::Inbound,
        stanza_type: Some("groupchat"),
        ..Subject::outbound_chat("deals@conference.example.test/bobby", A, "buy")
    };
    let v = p.evaluate(&in_room(
        heard,
        custos_policy::RoomFacts {
            from_real: Some("bob@example.test/desk"),
            groupchat: true,
            ..Default::default()
        },
    ));
    assert_eq!(v.action, Action::Block);
    // A private message to the other side's nickname.
    let private = Subject::outbound_chat(A, "deals@conference.example.test/bobby", "psst");
    let v = p.evaluate(&in_room(
        private,
        custos_policy::RoomFacts {
            to_real: &["bob@example.test"],
            ..Default::default()
        },
    ));
    assert_eq!(v.action, Action::Block);
    // Without knowing who is behind the nickname, nothing is inferred.
    assert_eq!(p.evaluate(&private).action, Action::Allow);
}

#[test]
fn a_room_with_an_external_occupant_gets_its_disclaimer_as_group_chat() {
    let p = policy(ROOM_RULES);
    let to_room = Subject {
        stanza_type: Some("groupchat"),
        ..Subject::outbound_chat("dave@example.test/x", ROOM, "hello all")
    };
    let facts = |to_real| custos_policy::RoomFacts {
        to_real,
        groupchat: true,
        ..Default::default()
    };
    let v = p.evaluate(&in_room(to_room, facts(&["carol@example.org/pc"])));
    assert_eq!(v.action, Action::Allow);
    let d = v
        .disclaimer
        .unwrap_or_else(|| panic!("a room with an external occupant gets the notice"));
    assert!(d.room);
    assert_eq!(d.to, ROOM);
    // One conversation per room, whoever speaks.
    let other = Subject {
        from: Some(A),
        ..to_room
    };
    let d2 = p
        .evaluate(&in_room(other, facts(&["carol@example.org/pc"])))
        .disclaimer
        .unwrap_or_else(|| panic!("notice requested"));
    assert_eq!(d.conversation, d2.conversation);
    // Only internal occupants: no notice.
    let v = p.evaluate(&in_room(to_room, facts(&["alice@example.test/l"])));
    assert!(v.disclaimer.is_none());
}

/// A word in another script stays found in that script when it also hides, and a
/// word in look-alike letters is read as Latin where the text around it is Latin, not
/// in a Russian sentence; what "fancy text" generators write is read as plain letters.
/// A directional override draws the letters after it in the other direction: written
/// backwards after a right-to-left override, a word shows the right way round. Rules
/// read it as drawn, and a redaction keeps the controls, so what follows the word is
/// drawn as it was.
#[test]
fn words_turned_around_by_directional_controls_are_read_as_drawn() {
    let p = policy(
        "[[lexicon]]\nid='l'\nterms=['falcon', 'sell acme', '\u{5E9}\u{5D5}\u{5D7}\u{5D3}']\n[[rule]]\nid='words'\nwhen={body={lexicon='l'}}\naction='redact'\n[[rule]]\nid='cards'\nwhen={body={detector='payment-card'}}\naction='redact'\n",
    );
    let m = |n: usize| MASK.to_string().repeat(n);
    for (body, want) in [
        // Reversed after a right-to-left override, up to its end or the line's.
        (
            "the \u{202E}noclaf\u{202C} closes",
            format!("the \u{202E}{}\u{202C} closes", m(6)),
        ),
        ("the \u{202E}noclaf", format!("the \u{202E}{}", m(6))),
        // Half the word reversed: the override's end is kept though the mask covers it,
        // so the rest of the line is not drawn backwards.
        (
            "fal\u{202E}noc\u{202C} now",
            format!("{}\u{202E}{}\u{202C} now", m(3), m(3)),
        ),
        (
            "\u{202E}laf\u{202C}con is here",
            format!("\u{202E}{}\u{202C}{} is here", m(3), m(3)),
        ),
        // Nested: an embedding inside the override is drawn in its own direction, so
        // the words read `sell acme`.
        (
            "\u{202E}emca \u{202A}sell\u{202C}\u{202C}",
            format!("\u{202E}{}\u{202A}{}\u{202C}\u{202C}", m(5), m(4)),
        ),
        // A Hebrew word written backwards after a left-to-right override.
        (
            "\u{202D}\u{5D3}\u{5D7}\u{5D5}\u{5E9}\u{202C} ok",
            format!("\u{202D}{}\u{202C} ok", m(4)),
        ),
        // Hebrew under a right-to-left override is drawn as ever; a zero-width space
        // inside still hides nothing.
        (
            "\u{202E}\u{5E9}\u{5D5}\u{200B}\u{5D7}\u{5D3}\u{202C} ok",
            format!("\u{202E}{}\u{202C} ok", m(5)),
        ),
        // Pieces of a word that a right-to-left mark draws together, in a line drawn
        // right to left, or kept in order in a line drawn left to right.
        (
            "\u{200F}con\u{200F}fal",
            format!("\u{200F}{}\u{200F}{}", m(3), m(3)),
        ),
        (
            "\u{200F}fal\u{200F}con",
            format!("\u{200F}{}\u{200F}{}", m(3), m(3)),
        ),
        // Digits after a right-to-left mark are drawn before the stroke between: a
        // card number a reader sees whole.
        (
            "card 45391488\u{200F}/03436467",
            format!("card {}\u{200F}{}", m(8), m(9)),
        ),
        // Masking the first word leaves a Hebrew letter the line's first: the line is
        // drawn right to left then, and its last word shows `falcon`. The masked text
        // is read again, and that word masked too.
        (
            "falcon \u{5D0} con\u{200F}fal\u{2066}\u{2069}",
            format!("{} \u{5D0} {}\u{200F}{}\u{2066}\u{2069}", m(6), m(3), m(3)),
        ),
        // Words put in the other order in a right-to-left isolate: a right-to-left mark
        // between them draws `sell` at its left.
        (
            "\u{2067}acme\u{200F} sell\u{2069}",
            format!("\u{2067}{}\u{200F}{}\u{2069}", m(4), m(5)),
        ),
    ] {
        let v = out(&p, A, EXT, body);
        assert_eq!(v.action, Action::Redact, "{body:?}");
        assert_eq!(v.delivered_body.as_deref(), Some(want.as_str()), "{body:?}");
    }
    // Card numbers whose groups a right-to-left mark or letter draws in another order
    // than written: masked whole.
    for body in [
        "4539 1488 \u{200F} 0343 6467",
        "\u{200F}1111 1111 1111 4111 \u{5D0}",
        "\u{5D0} 1111 1111 1111 4111",
        "card 41111111\u{5D0} 11111111",
    ] {
        let v = out(&p, A, EXT, body);
        assert_eq!(v.action, Action::Redact, "{body:?}");
        let delivered = v.delivered_body.unwrap_or_default();
        assert!(
            !delivered.chars().any(|c| c.is_ascii_digit()),
            "{body:?}: {delivered:?}"
        );
    }
    // Text in the order it is drawn is read as before.
    for plain in [
        "\u{5E9}\u{200F} \u{5D5}\u{5D7}\u{5D3}",
        "acme \u{200F} sell",
    ] {
        assert_eq!(out(&p, A, EXT, plain).action, Action::Allow, "{plain:?}");
    }
}

#[test]
fn words_are_read_in_the_script_a_reader_sees() {
    let p = policy(
        "[[lexicon]]\nid='l'\nterms=['откат', 'pay', 'pot', 'coke', 'bitcoin', 'comisión']\n[[rule]]\nid='words'\nwhen={body={lexicon='l'}}\naction='redact'\n[[rule]]\nid='cards'\nwhen={body={detector='payment-card'}}\naction='redact'\n",
    );
    for hidden in [
        "от\u{200B}кат",
        "от\u{00AD}кат",
        "откaт",
        "send the рау now",
        "раү",
        "рɑу",
        "bıtcoin",
        "соміѕіóո",
        "рау\u{0345}",
        "p\u{336}a\u{336}y\u{336}",
        "p\u{332}a\u{332}y\u{332}",
        "⒫⒜⒴",
        "🄟🄐🄨",
    ] {
        let v = out(&p, A, EXT, &format!("{hidden}!"));
        assert_eq!(v.action, Action::Redact, "{hidden}");
    }
    for card in [
        "❹❶❶❶ ❶❶❶❶ ❶❶❶❶ ❶❶❶❶",
        "4\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}",
    ] {
        let v = out(&p, A, EXT, &format!("card {card} thanks"));
        assert_eq!(v.action, Action::Redact, "{card}");
    }
    // Russian words drawn wholly in look-alike letters, in a Russian sentence.
    for plain in ["у него болит рот", "Витамины в соке", "рот болит"]
    {
        assert_eq!(out(&p, A, EXT, plain).action, Action::Allow, "{plain}");
    }
}

/// Words hidden from a scanner but not from a reader (an invisible character inside,
/// fullwidth or mathematical letters, a Cyrillic letter drawn as a Latin one, digits
/// apart by no-break spaces, dots or two spaces) are found, and redacted where they are
/// written, the invisible characters with them.
#[test]
fn words_a_client_shows_are_found_however_they_are_written() {
    let p = policy(
        "[[lexicon]]\nid='l'\nterms=['falcon', 'сделка']\n[[rule]]\nid='words'\nwhen={body={lexicon='l'}}\naction='redact'\n[[rule]]\nid='cards'\nwhen={body={detector='payment-card'}}\naction='redact'\n",
    );
    let masked = |s: &str| MASK.to_string().repeat(s.chars().count());
    for hidden in [
        "fal\u{200B}con",
        "fal\u{00AD}con",
        "f\u{200D}a\u{2063}lcon",
        "fal\u{7F}con",
        "fa\u{80}l\u{9F}con",
        "ｆａｌｃｏｎ",
        "fаlcon",
        "FАLCON",
        "𝐟𝐚𝐥𝐜𝐨𝐧",
        "сделка",
    ] {
        let v = out(&p, A, EXT, &format!("the {hidden} closes"));
        assert_eq!(v.action, Action::Redact, "{hidden}");
        let want = format!("the {} closes", masked(hidden));
        assert_eq!(v.delivered_body.as_deref(), Some(want.as_str()), "{hidden}");
    }
    for card in [
        "4111\u{00A0}1111\u{00A0}1111\u{00A0}1111",
        "４１１１ １１１１ １１１１ １１１１",
        "4111.1111.1111.1111",
        "4111  1111  1111  1111",
    ] {
        let v = out(&p, A, EXT, &format!("card {card}, thanks"));
        assert_eq!(v.action, Action::Redact, "{card}");
        let body = v.delivered_body.unwrap_or_default();
        assert!(
            !body.chars().any(|c| c.is_numeric()),
            "{card} left digits: {body}"
        );
    }
    // A word written wholly in look-alike letters reads as the Latin word a reader
    // sees; a term in Cyrillic is still found as written, and words with letters no
    // Latin one is drawn like stay as they are.
    let p3 = policy("[[lexicon]]\nid='l'\nterms=['pay', 'cash', 'сор']\n[[rule]]\nid='r'\nwhen={body={lexicon='l'}}\naction='redact'\n");
    for hidden in [
        "рау",
        "РАУ",
        "саѕһ",
        "ραу",
        "сор",
        "ᴘᴀʏ",
        "ᴄᴀsʜ",
        "🅟🅐🅨",
        "🅿🅰🆈",
    ] {
        let v = out(&p3, A, EXT, &format!("the {hidden} closes"));
        assert_eq!(v.action, Action::Redact, "{hidden}");
        let want = format!("the {} closes", masked(hidden));
        assert_eq!(v.delivered_body.as_deref(), Some(want.as_str()), "{hidden}");
    }
    for plain in ["Мама мыла раму", "рауд", "payment"] {
        assert_eq!(out(&p3, A, EXT, plain).action, Action::Allow, "{plain}");
    }
    // A word spelt out a letter at a time, as a reader reads it; a card number too.
    for spaced in [
        "f a l c o n",
        "f.a.l.c.o.n",
        "F-A-L-C-O-N",
        "f  a  l  c  o  n",
        "f. a. l. c. o. n.",
        "f a l c о n",
        "f\na\nl\nc\no\nn",
    ] {
        let v = out(&p, A, EXT, &format!("the {spaced} closes"));
        assert_eq!(v.action, Action::Redact, "{spaced}");
        let body = v.delivered_body.unwrap_or_default();
        assert!(!body.contains(['f', 'F']), "{spaced} left letters: {body}");
        assert!(
            body.starts_with("the ") && body.ends_with(" closes"),
            "{body}"
        );
    }
    let v = out(&p, A, EXT, "card 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 thanks");
    assert_eq!(v.action, Action::Redact, "a card spelt out");
    for plain in ["a b c d", "plan a b or c", "f a l c o n s", "fa l c o n"] {
        assert_eq!(out(&p, A, EXT, plain).action, Action::Allow, "{plain}");
    }
    // Accents written as combining marks, in the text or in the term.
    let p2 = policy("[[lexicon]]\nid='l'\nterms=['réservé', 'cafe\u{301}']\n[[rule]]\nid='r'\nwhen={body={lexicon='l'}}\naction='flag'\n");
    for text in [
        "le fonds re\u{301}serve\u{301}",
        "le fonds réservé",
        "au café",
    ] {
        assert_eq!(out(&p2, A, EXT, text).action, Action::Flag, "{text}");
    }
    // Text that hides nothing is left as it is.
    let v = out(&p, A, EXT, "falconry in Zürich, 東京 and Αθήνα");
    assert_eq!((v.action, v.delivered_body), (Action::Allow, None));
}
