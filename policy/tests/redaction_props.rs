//! Redaction never leaks a match: after redaction, evaluating the delivered text finds
//! no match of the redacting rule, for detectors, regexes and lexicon terms, whatever
//! text surrounds them.

use std::path::Path;

use custos_policy::{Action, Policy, Subject, MASK};
use proptest::prelude::*;

fn policy(text: &str) -> Policy {
    Policy::from_str(text, Path::new("props.toml")).unwrap_or_else(|e| panic!("{e}"))
}

const CARDS: [&str; 6] = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "378282246310005",
    "6011 0009 9013 9424",
    "4012888888881881",
];
const IBANS: [&str; 3] = [
    "DE89370400440532013000",
    "GB82 WEST 1234 5698 7654 32",
    "FR1420041010050500013M02606",
];
const SSNS: [&str; 3] = ["078-05-1120", "123 45 6789", "219-09-9999"];
const EMAILS: [&str; 3] = ["a.b@example.com", "X+y@mail.example.org", "z@q.co"];
const TERMS: [&str; 6] = [
    "falcon",
    "merger target",
    "mnpi",
    "hawk",
    "zürich deal",
    "q3",
];

/// Filler that can glue onto matches: digits, separators, letters, punctuation.
fn filler() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 \\-._@,:ÄÜ]{0,12}").unwrap_or_else(|e| panic!("{e}"))
}

fn case_mix(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_uppercase().next().unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

/// A message made of filler and planted sensitive items.
fn message(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (filler(), proptest::sample::select(items), any::<u64>()),
        1..4,
    )
    .prop_map(|parts| {
        parts
            .into_iter()
            .map(|(f, item, m)| format!("{f}{}", case_mix(item, m)))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Redacts `body`, then asserts that the delivered text no longer matches the rule.
fn assert_no_leak(p: &Policy, body: &str) -> Result<(), TestCaseError> {
    let v = p.evaluate(&Subject::outbound_chat(
        "a@example.test",
        "b@example.org",
        body,
    ));
    if v.action == Action::Allow {
        return Ok(());
    }
    prop_assert_eq!(v.action, Action::Redact, "body {:?}", body);
    let delivered = v.delivered_body.unwrap_or_default();
    prop_assert!(delivered.contains(MASK));
    prop_assert_eq!(
        delivered.chars().count(),
        body.chars().count(),
        "one mask per character"
    );
    let again = p.evaluate(&Subject::outbound_chat(
        "a@example.test",
        "b@example.org",
        &delivered,
    ));
    prop_assert!(
        again.rules.is_empty(),
        "{:?} still matches {:?} after redaction",
        delivered,
        again.rules
    );
    Ok(())
}

fn detector_policy(name: &str) -> Policy {
    policy(&format!(
        "[[rule]]\nid='r'\nwhen={{body={{detector='{name}'}}}}\naction='redact'\n"
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cards_never_leak(body in message(&CARDS)) {
        assert_no_leak(&detector_policy("payment-card"), &body)?;
    }

    /// A card not glued to other digits (nor joined to them by a separator a card is
    /// written with) is always found and fully masked.
    #[test]
    fn planted_cards_are_found(pre in "[a-z ,.:]{0,6}[a-z ,:]", post in "[a-z,][a-z0-9 ,.]{0,6}", card in proptest::sample::select(&CARDS[..])) {
        let p = detector_policy("payment-card");
        let body = format!("{pre}{card}{post}");
        let v = p.evaluate(&Subject::outbound_chat("a@x.test", "b@y.test", &body));
        prop_assert_eq!(v.action, Action::Redact, "a planted card is found in {:?}", body);
        let delivered = v.delivered_body.unwrap_or_default();
        prop_assert!(delivered.chars().filter(char::is_ascii_digit).count() == post.chars().filter(char::is_ascii_digit).count(),
            "no digit of the card is left in {:?}", delivered);
        prop_assert_eq!(delivered.chars().filter(|&c| c == MASK).count(), card.len());
    }

    #[test]
    fn ibans_never_leak(body in message(&IBANS)) {
        assert_no_leak(&detector_policy("iban"), &body)?;
    }

    #[test]
    fn ssns_never_leak(body in message(&SSNS)) {
        assert_no_leak(&detector_policy("us-ssn"), &body)?;
    }

    #[test]
    fn emails_never_leak(body in message(&EMAILS)) {
        let p = detector_policy("email");
        assert_no_leak(&p, &body)?;
    }

    #[test]
    fn regexes_never_leak(body in message(&TERMS), pattern in proptest::sample::select(vec![
        "(?i)falcon", "\\d{2,}", "(?i)merger\\s+target", "[A-Z]{2,}", "(?i)q[0-9]", "h.wk",
    ])) {
        let p = policy(&format!("[[rule]]\nid='r'\nwhen={{body={{regex='{pattern}'}}}}\naction='redact'\n"));
        assert_no_leak(&p, &body)?;
    }

    #[test]
    fn lexicon_terms_never_leak(body in message(&TERMS), whole_word in any::<bool>(), ci in any::<bool>()) {
        let p = policy(&format!(
            "[[lexicon]]\nid='l'\nterms=['falcon','merger target','MNPI','hawk','Zürich deal','q3','al']\nwhole_word={whole_word}\ncase_insensitive={ci}\n[[rule]]\nid='r'\nwhen={{body={{lexicon='l'}}}}\naction='redact'\n"
        ));
        assert_no_leak(&p, &body)?;
    }

    #[test]
    fn planted_whole_words_are_found(pre in "[ ,.]{1,3}", post in "[ ,.]{1,3}", term in proptest::sample::select(&TERMS[..]), m in any::<u64>()) {
        let p = policy("[[lexicon]]\nid='l'\nterms=['falcon','merger target','mnpi','hawk','zürich deal','q3']\n[[rule]]\nid='r'\nwhen={body={lexicon='l'}}\naction='redact'\n");
        let body = format!("x{pre}{}{post}y", case_mix(term, m));
        let v = p.evaluate(&Subject::outbound_chat("a@x.test", "b@y.test", &body));
        let delivered = v.delivered_body.unwrap_or_default();
        prop_assert_eq!(delivered.chars().filter(|&c| c == MASK).count(), term.chars().count(), "{:?} -> {:?}", body, delivered);
    }

    /// Evaluation never panics on arbitrary text and JIDs.
    #[test]
    fn arbitrary_input_is_safe(body in any::<String>(), from in any::<String>(), to in any::<String>()) {
        let p = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let v = p.evaluate(&Subject::outbound_chat(&from, &to, &body));
        if let Some(d) = v.delivered_body {
            prop_assert_eq!(d.chars().count(), body.chars().count());
        }
    }
}
