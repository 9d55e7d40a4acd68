//! Evaluation cost with 1,000 rules and a 10,000-term lexicon: µs per message.
//!
//! The rules file is generated: a mix of regex, lexicon, detector, party, group and
//! combined conditions, as a large deployment would have. Run with
//! `cargo bench -p custos-policy --bench evaluate`.

use std::fmt::Write as _;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use custos_policy::{Action, Policy, Subject};

/// Deterministic pseudo-words (xorshift), so every run benchmarks the same file.
struct Words(u64);

impl Words {
    fn next_word(&mut self) -> String {
        const SYL: [&str; 16] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "ba", "do", "fe", "gi",
            "ho", "ju",
        ];
        let mut w = String::new();
        for _ in 0..3 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            w.push_str(SYL[(self.0 % 16) as usize]);
        }
        write!(w, "{}", self.0 % 1000).unwrap_or(());
        w
    }
}

pub fn rules_file(n_rules: usize, n_terms: usize) -> String {
    let mut words = Words(0x9E37_79B9_7F4A_7C15);
    let mut s = String::from("internal_domains = [\"example.test\"]\n[alert]\nwebhook = \"http://127.0.0.1:9000/hook\"\n[groups]\n");
    for g in 0..20 {
        let _ = writeln!(
            s,
            "g{g} = [\"*@dept{g}.example.test\", \"lead{g}@example.test\"]"
        );
    }
    let terms: Vec<String> = (0..n_terms).map(|_| words.next_word()).collect();
    let _ = writeln!(s, "[[lexicon]]\nid = \"big\"\nterms = {terms:?}\n");
    for l in 0..20 {
        let small: Vec<String> = (0..50).map(|_| words.next_word()).collect();
        let _ = writeln!(
            s,
            "[[lexicon]]\nid = \"small{l}\"\nterms = {small:?}\nwhole_word = {}\n",
            l % 2 == 0
        );
    }
    for i in 0..n_rules {
        let when = match i % 8 {
            0 => format!("{{ body = {{ regex = \"(?i)\\\\bcodename{i}\\\\b\" }} }}"),
            1 => format!("{{ direction = \"outbound\", body = {{ lexicon = \"small{}\" }} }}", i % 20),
            2 => format!("{{ from = \"group:g{}\", to = \"group:g{}\" }}", i % 20, (i + 7) % 20),
            3 => format!("{{ to = \"external\", body = {{ regex = \"ticket-{i}-[0-9]+\" }} }}"),
            4 => format!("{{ from = \"user{i}@example.test\", body = {{ lexicon = \"big\" }} }}"),
            5 => format!("{{ any = [ {{ subject = {{ regex = \"(?i)deal {i}\" }} }}, {{ to = \"partner{i}@example.org\" }} ] }}"),
            6 => format!("{{ to = \"external\", body = {{ detector = \"{}\" }} }}", ["payment-card", "iban", "us-ssn", "email"][(i / 8) % 4]),
            _ => format!("{{ all = [ {{ kind = \"message\" }}, {{ type = \"chat\" }} ], not = {{ from = \"internal\" }}, body = {{ lexicon = \"small{}\" }} }}", i % 20),
        };
        let action = ["flag", "redact", "block", "alert"][i % 4];
        let action = if action == "redact" && !when.contains("body") {
            "flag"
        } else {
            action
        };
        let _ = writeln!(
            s,
            "[[rule]]\nid = \"r{i}\"\nwhen = {when}\naction = \"{action}\"\n"
        );
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = rules_file(1_000, 10_000);
    let started = std::time::Instant::now();
    let policy = Policy::from_str(&text, Path::new("bench.toml")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "compiled {} rules, {} lexicon terms in {:?}",
        policy.summary().rules,
        policy.summary().lexicon_terms,
        started.elapsed()
    );

    let clean = "Morning! Could you send me the latest numbers for the quarterly review before the \
                 call at three? I also need the slides from last week and the notes from the client \
                 meeting, thanks a lot.";
    let term = Words(0x9E37_79B9_7F4A_7C15).next_word();
    let hit = format!(
        "Our codename496 notes: the ticket-3-42 is done, card 4111 1111 1111 1111, \
         and the lexicon word {term} shows up."
    );
    let hit = hit.as_str();
    // Sanity: the hit message really exercises matching and redaction.
    let v = policy.evaluate(&Subject::outbound_chat(
        "user4@example.test/w",
        "x@example.org",
        hit,
    ));
    assert_eq!(v.action, Action::Block, "{v:?}");
    let v = policy.evaluate(&Subject::outbound_chat(
        "a@example.test/w",
        "b@example.test",
        clean,
    ));
    assert_eq!(v.action, Action::Allow, "{v:?}");

    let mut g = c.benchmark_group("evaluate_1000_rules_10000_terms");
    g.bench_function("clean_200_chars", |b| {
        b.iter(|| {
            policy.evaluate(&Subject::outbound_chat(
                "a@example.test/w",
                "b@example.org",
                clean,
            ))
        })
    });
    g.bench_function("matching_message", |b| {
        b.iter(|| {
            policy.evaluate(&Subject::outbound_chat(
                "user4@example.test/w",
                "x@example.org",
                hit,
            ))
        })
    });
    // Text a client shows otherwise than it is written (here a heart emoji's variation
    // selector) is read a second time, as shown; other non-ASCII text once.
    let shown = format!("{clean} \u{2764}\u{FE0F}");
    let accented = format!("{clean} Grüße aus Zürich");
    // Russian, most of whose letters are drawn like Latin ones: read through the views
    // (none differs from the text).
    let russian = "Добрый день, пересылаю отчёт о продажах за третий квартал; \
                   цифры по региону выросли, но маржа снизилась. Прошу посмотреть \
                   таблицу до пятницы и сообщить, если есть вопросы по прогнозу."
        .to_owned();
    // Hebrew with directional marks around a Latin word, as clients write it: laid out
    // as a client draws it and read again.
    let hebrew = "שלום לכולם, מצרף את הדוח על המכירות ברבעון השלישי; המספרים באזור \
                  עלו אבל השוליים ירדו. נא לעבור על הטבלה \u{200E}sales.xlsx\u{200E} \
                  עד יום שישי ולעדכן\u{200F} אם יש שאלות על התחזית."
        .to_owned();
    // The same with the Latin word in an isolate: laid out and read again.
    let isolated = hebrew.replace("\u{200E}sales.xlsx\u{200E}", "\u{2068}sales.xlsx\u{2069}");
    for (name, body) in [
        ("shown_200_chars", &shown),
        ("hebrew_marks_200_chars", &hebrew),
        ("hebrew_isolate_200_chars", &isolated),
        ("accented_200_chars", &accented),
        ("russian_200_chars", &russian),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                policy.evaluate(&Subject::outbound_chat(
                    "a@example.test/w",
                    "b@example.org",
                    body,
                ))
            })
        });
    }
    let long = clean.repeat(20);
    g.bench_function("clean_4kb", |b| {
        b.iter(|| {
            policy.evaluate(&Subject::outbound_chat(
                "a@example.test/w",
                "b@example.org",
                &long,
            ))
        })
    });
    g.finish();

    // Scaling: the same message against 10× more rules and terms.
    let mut g = c.benchmark_group("scaling_clean_200_chars");
    for (rules, terms) in [(100, 1_000), (1_000, 10_000)] {
        let p = Policy::from_str(&rules_file(rules, terms), Path::new("scale.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(format!("{rules}_rules_{terms}_terms"), |b| {
            b.iter(|| {
                p.evaluate(&Subject::outbound_chat(
                    "a@example.test/w",
                    "b@example.org",
                    clean,
                ))
            })
        });
    }
    g.finish();

    let redactor = Policy::from_str(
        "[[lexicon]]\nid='l'\nterms=['falcon','merger target']\n[[rule]]\nid='r'\nwhen={any=[{body={lexicon='l'}},{body={detector='payment-card'}}]}\naction='redact'\n",
        Path::new("redact.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("redact_message", |b| {
        b.iter(|| {
            redactor.evaluate(&Subject::outbound_chat(
                "a@example.test",
                "b@example.org",
                "falcon: merger target, card 4111 1111 1111 1111",
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
