//! The compliance query language through the blind index: OR, NOT and groups,
//! prefix, wildcard and fuzzy terms expanded through the sealed vocabulary, NEAR and
//! ONEAR on word positions, lexicons; and a shredded segment's words leave the
//! vocabulary with it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use custos_archive::query::Lexicons;
use custos_archive::*;

fn chat(from: &str, to: &str, body: &str) -> NewRecord {
    NewRecord::Message(MessageRecord {
        session: SessionId("s1".into()),
        ..MessageRecord::chat(from, to, body)
    })
}

fn open(tmp: &Path) -> (Archive, MasterKey) {
    let (master_key, signing_key) = (tmp.join("master.key"), tmp.join("signing.key"));
    if !master_key.exists() {
        keys_init(&master_key, &signing_key).unwrap();
    }
    let master = MasterKey::from_file(&master_key).unwrap();
    let signing = load_signing_key(&signing_key).unwrap();
    let a = Archive::open(ArchiveConfig::new(
        tmp.join("archive"),
        master.clone(),
        signing,
    ))
    .unwrap();
    (a, master)
}

/// Seqs the index finds for `q`, once everything up to `seq` is searchable.
async fn found(a: &Archive, q: &str, through: u64) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let s = a.reader().search_covered(q, 100).unwrap();
        if s.uncovered.as_ref().is_none_or(|u| u.from > through) {
            let mut seqs: Vec<u64> = s.hits.iter().map(|h| h.seq.0).collect();
            seqs.sort_unstable();
            return seqs;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never indexed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lexicon_searches_run_through_the_blind_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = open(tmp.path());
    let alice = "alice@example.test/laptop";
    let bob = "bob@example.test";
    let carol = "carol@example.test/desk";
    let bodies = [
        (alice, bob, "We guarantee a good return on this"),
        (bob, alice, "No guarantees, but the returns are fine"),
        (carol, "dave@example.test", "the garantee is void"),
        (alice, carol, "lunch at noon"),
        (alice, bob, "return the guarantee form"),
    ];
    let mut last = 0;
    for (from, to, body) in bodies {
        last = a.append(chat(from, to, body)).await.unwrap().seq.0;
    }
    assert_eq!(last, 5);
    for (q, want) in [
        ("guarant*", vec![1, 2, 5]),
        ("g?arant*", vec![1, 2, 5]),
        ("*ntee", vec![1, 3, 5]),
        ("guarantee~", vec![1, 2, 3, 5]),
        ("garantie~2", vec![1, 3, 5]),
        ("guarant* NEAR/3 return*", vec![1, 2, 5]),
        ("guarant* NEAR/2 return*", vec![5]),
        ("guarant* ONEAR/3 return*", vec![1, 2]),
        (
            "(guarantee OR guarantees) NEAR/3 (return OR returns)",
            vec![1, 2, 5],
        ),
        ("lunch OR garantee", vec![3, 4]),
        ("from:alice@example.test NOT lunch", vec![1, 5]),
        ("from:alice@example.test -lunch", vec![1, 5]),
        ("(lunch OR void) from:carol@example.test", vec![3]),
        ("-(guarant* OR lunch)", vec![3]),
        ("\"good return\" OR noon", vec![1, 4]),
        ("zzz*", vec![]),
        ("zzz* NEAR/5 guarantee", vec![]),
    ] {
        assert_eq!(found(&a, q, last).await, want, "{q}");
    }

    // A lexicon is written out into the query that runs.
    let lex = Lexicons::new(BTreeMap::from([(
        "assurances".to_string(),
        vec![
            "guarant*".to_string(),
            "\"good return\"".into(),
            "promis*".into(),
        ],
    )]))
    .unwrap();
    let q = lex.expand("@assurances from:bob@example.test").unwrap();
    assert_eq!(found(&a, &q, last).await, vec![2]);

    // A term too broad for the vocabulary is refused by name, not silently cut.
    let pending: Vec<_> = (0..4200)
        .map(|i| a.submit(chat(alice, bob, &format!("ticket w{i}x"))))
        .collect();
    for p in pending {
        p.await.unwrap();
    }
    let start = Instant::now();
    let e = loop {
        match a.reader().search_covered("w*", 10) {
            Err(e) => break e.to_string(),
            Ok(_) => {
                assert!(start.elapsed() < Duration::from_secs(20), "never refused");
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
    };
    assert!(e.contains("\"w*\"") && e.contains("narrower"), "{e}");
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shredded_segment_takes_its_words_out_of_the_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = open(tmp.path());
    a.append(chat("a@x", "b@x", "zanzibarite shipment tonight"))
        .await
        .unwrap();
    a.append(chat("a@x", "b@x", "quartz shipment"))
        .await
        .unwrap();
    // The close seals segment 1; the next open writes segment 2.
    a.close().await.unwrap();
    let (a, _) = open(tmp.path());
    let last = a
        .append(chat("a@x", "b@x", "zanzibar holiday"))
        .await
        .unwrap()
        .seq
        .0;
    assert_eq!(found(&a, "zanzib*", last).await, vec![1, 3]);

    let vocab = tmp.path().join("archive/vocabulary");
    let files: Vec<_> = std::fs::read_dir(&vocab).unwrap().flatten().collect();
    assert_eq!(files.len(), 2, "one file per segment");
    for f in &files {
        let bytes = std::fs::read(f.path()).unwrap();
        for word in [&b"zanzibar"[..], b"shipment", b"quartz"] {
            assert!(
                !bytes.windows(word.len()).any(|w| w == word),
                "{} holds plaintext",
                f.path().display()
            );
        }
    }

    let receipt = a
        .shred_segment(1, "erasure ordered", "court order 2026-17", "custos")
        .await
        .unwrap();
    let start = Instant::now();
    while vocab.join(format!("{:016x}.words", 1)).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the shredded segment's words stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found(&a, "zanzib*", receipt.seq.0).await, vec![3]);
    assert_eq!(found(&a, "quar*", receipt.seq.0).await, Vec::<u64>::new());
    a.close().await.unwrap();

    // Someone deletes a word list: prefix terms would silently miss that segment's
    // messages, so they are refused with the way out, until a reindex.
    std::fs::remove_file(vocab.join(format!("{:016x}.words", 2))).unwrap();
    let (a, master) = open(tmp.path());
    let e = a
        .reader()
        .search_covered("zanzib*", 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2]") && e.contains("custos reindex"), "{e}");
    // Exact words do not need it.
    assert_eq!(found(&a, "holiday", receipt.seq.0).await, vec![3]);
    a.close().await.unwrap();
    // verify tells of it, naming the segment (the log itself is whole).
    let public = load_verifying_key(&custos_archive::keys::public_key_path(
        &tmp.path().join("signing.key"),
    ))
    .unwrap();
    let r = verify(
        &tmp.path().join("archive"),
        Some(&master),
        &public,
        |_, _| {},
    );
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("search vocabulary") && n.contains("[2]")),
        "{:#?}",
        r.notes
    );
    reindex(&tmp.path().join("archive"), &master, |_, _| {}).unwrap();
    let (a, _) = open(tmp.path());
    assert_eq!(found(&a, "zanzib*", receipt.seq.0).await, vec![3]);
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_matches_come_from_whichever_index_segment_holds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, master) = open(tmp.path());
    // Several index commits (each a segment of its own until merged), words in each.
    let mut last = 0;
    for round in 0..6u64 {
        for i in 0..40u64 {
            let body = if i % 3 == 0 {
                format!("alpha note {round}-{i}")
            } else {
                format!("beta note {round}-{i}")
            };
            last = a.append(chat("a@x", "b@x", &body)).await.unwrap().seq.0;
        }
        found(&a, "note", last).await;
    }
    let alpha: Vec<u64> = (1..=last).filter(|s| (s - 1) % 40 % 3 == 0).collect();
    for limit in [1usize, 7, 50, 500] {
        let want: Vec<u64> = alpha[alpha.len().saturating_sub(limit)..].to_vec();
        let got: Vec<u64> = a
            .reader()
            .search("alpha", limit)
            .unwrap()
            .iter()
            .map(|h| h.seq.0)
            .collect();
        assert_eq!(got, want, "limit {limit}");
    }
    a.close().await.unwrap();
    // The same after a rebuild merged them differently.
    reindex(&tmp.path().join("archive"), &master, |_, _| {}).unwrap();
    let (a, _) = open(tmp.path());
    let got: Vec<u64> = a
        .reader()
        .search("alpha OR zzz", 7)
        .unwrap()
        .iter()
        .map(|h| h.seq.0)
        .collect();
    assert_eq!(got, alpha[alpha.len() - 7..].to_vec());
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_matches_the_room_not_the_person_behind_a_nickname() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = open(tmp.path());
    let mut rec = chat(
        "deals@conference.example.test/bobby",
        "alice@example.test/laptop",
        "buy the dip",
    );
    if let NewRecord::Message(m) = &mut rec {
        m.direction = Direction::Inbound;
        m.stanza_type = "groupchat".into();
        m.capture.occupant = Some("bob@example.test/desk".into());
    }
    let last = a.append(rec).await.unwrap().seq.0;
    a.append(chat("bob@example.test/desk", "alice@example.test", "buy"))
        .await
        .unwrap();
    assert_eq!(
        found(&a, "room:deals@conference.example.test", last + 1).await,
        vec![1]
    );
    assert_eq!(
        found(&a, "room:bob@example.test", last + 1).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        found(&a, "room:alice@example.test", last + 1).await,
        Vec::<u64>::new(),
        "the recipient of a group chat copy is not its room"
    );
    assert_eq!(
        found(&a, "from:bob@example.test buy", last + 1).await,
        vec![1, 2]
    );
    a.close().await.unwrap();
}

/// An administrator puts back an older copy of a word list (or cuts it back by whole
/// chunks, which is the same): every chunk still authenticates, but the words added
/// since are gone, so `zanzib*` would silently skip the newer message. The index's
/// commit binds each list's length and hash: search refuses the list, naming its
/// segment, `verify` reports it, a restart does not bind the rolled-back list anew, and
/// a reindex brings the words back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_list_rolled_back_to_an_older_copy_is_refused_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, master) = open(tmp.path());
    let first = a
        .append(chat("a@x", "b@x", "zanzibarite shipment"))
        .await
        .unwrap()
        .seq
        .0;
    assert_eq!(found(&a, "zanzib*", first).await, vec![first]);
    let vocab = tmp.path().join("archive/vocabulary");
    let list = std::fs::read_dir(&vocab)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .unwrap();
    let older = std::fs::read(&list).unwrap();
    let second = a
        .append(chat("a@x", "b@x", "zanzibarian holiday"))
        .await
        .unwrap()
        .seq
        .0;
    assert_eq!(found(&a, "zanzib*", second).await, vec![first, second]);
    assert!(std::fs::read(&list).unwrap().len() > older.len());

    // Rolled back while Custos runs: the next pattern search refuses it.
    std::fs::write(&list, &older).unwrap();
    let e = a
        .reader()
        .search_covered("zanzib*", 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not the ones the index committed") && e.contains("custos reindex"),
        "{e}"
    );
    // Exact words do not need the list.
    assert_eq!(found(&a, "holiday", second).await, vec![second]);
    a.close().await.unwrap();

    // Rolled back while nothing runs: the restart does not bind it anew.
    let (a, _) = open(tmp.path());
    a.append(chat("a@x", "b@x", "more words, zanzibarese"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = a
        .reader()
        .search_covered("zanzib*", 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the ones the index committed"), "{e}");
    a.close().await.unwrap();
    let public = load_verifying_key(&custos_archive::keys::public_key_path(
        &tmp.path().join("signing.key"),
    ))
    .unwrap();
    let r = verify(
        &tmp.path().join("archive"),
        Some(&master),
        &public,
        |_, _| {},
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("not the one the index committed")),
        "{:#?}",
        r.problems
    );

    // A reindex writes the lists anew from the log.
    reindex(&tmp.path().join("archive"), &master, |_, _| {}).unwrap();
    let (a, _) = open(tmp.path());
    let all = found(&a, "zanzib*", second + 1).await;
    assert_eq!(all.len(), 3, "{all:?}");
    a.close().await.unwrap();
    let r = verify(
        &tmp.path().join("archive"),
        Some(&master),
        &public,
        |_, _| {},
    );
    assert!(r.is_clean(), "{:#?}", r.problems);
}

/// NEAR and ONEAR find exactly the messages where the words stand that close, alone
/// and combined with a participant (which seeks the NEAR side to the few messages the
/// participant allows, across skip blocks) or its negation: checked against the word
/// positions of 3,000 generated messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_finds_exactly_the_messages_where_the_words_stand_that_close() {
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = open(tmp.path());
    let mut rng = Rng(42);
    let words = ["alpha", "beta", "gamma", "delta"];
    let mut messages: Vec<(u64, Vec<String>)> = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..3000 {
        let user = rng.below(7);
        let body: Vec<String> = (0..3 + rng.below(8))
            .map(|_| match rng.below(12) {
                n @ 0..=3 => words[n as usize].to_string(),
                n => format!("filler{n}"),
            })
            .collect();
        messages.push((user, body.clone()));
        pending.push(a.submit(chat(
            &format!("u{user}@example.test"),
            "desk@example.test",
            &body.join(" "),
        )));
    }
    let mut last = 0;
    for p in pending {
        last = p.await.unwrap().seq.0;
    }
    assert_eq!(last, 3000);
    found(&a, "filler4", last).await;

    let near = |body: &[String], l: &[&str], r: &[&str], within: usize, ordered: bool| {
        let at = |side: &[&str]| -> Vec<usize> {
            (0..body.len())
                .filter(|&i| side.contains(&body[i].as_str()))
                .collect()
        };
        let (ls, rs) = (at(l), at(r));
        ls.iter().any(|&i| {
            rs.iter().any(|&j| {
                j != i
                    && if ordered {
                        j > i && j - i <= within
                    } else {
                        i.abs_diff(j) <= within
                    }
            })
        })
    };
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], usize, bool);
    let fillers: Vec<String> = (4..12).map(|n| format!("filler{n}")).collect();
    let fillers: Vec<&str> = fillers.iter().map(String::as_str).collect();
    let cases: [Case<'_>; 6] = [
        ("alpha NEAR/1 beta", &["alpha"], &["beta"], 1, false),
        ("alpha NEAR/3 gamma", &["alpha"], &["gamma"], 3, false),
        ("delta ONEAR/2 alpha", &["delta"], &["alpha"], 2, true),
        (
            "(alpha OR beta) ONEAR/1 gamma",
            &["alpha", "beta"],
            &["gamma"],
            1,
            true,
        ),
        ("gam* NEAR/2 del*", &["gamma"], &["delta"], 2, false),
        // A side of eight words, each its own postings list.
        ("fill* ONEAR/1 alpha", &fillers, &["alpha"], 1, true),
    ];
    for (q, l, r, within, ordered) in cases {
        for user in [None, Some((3u64, true)), Some((5, false))] {
            let (query, keep): (String, Box<dyn Fn(u64) -> bool>) = match user {
                None => (q.to_string(), Box::new(|_| true)),
                Some((u, true)) => (
                    format!("from:u{u}@example.test {q}"),
                    Box::new(move |x| x == u),
                ),
                Some((u, false)) => (
                    format!("{q} -from:u{u}@example.test"),
                    Box::new(move |x| x != u),
                ),
            };
            let want: Vec<u64> = messages
                .iter()
                .zip(1u64..)
                .filter(|((who, body), _)| keep(*who) && near(body, l, r, within, ordered))
                .map(|(_, seq)| seq)
                .collect();
            let mut got: Vec<u64> = a
                .reader()
                .search(&query, 5000)
                .unwrap()
                .iter()
                .map(|h| h.seq.0)
                .collect();
            got.sort_unstable();
            assert!(!want.is_empty(), "{query} should match something");
            assert_eq!(got, want, "{query}");
        }
    }
    a.close().await.unwrap();
}

/// `after:` and `before:` find exactly the messages of their times, alone, together,
/// beside a participant or a word (which seek them once per message those allow), and
/// at bounds that take in or leave out whole index segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_range_finds_exactly_the_messages_of_its_times() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = open(tmp.path());
    let mut last = 0;
    for batch in 0..8u64 {
        let pending: Vec<_> = (0..250u64)
            .map(|i| {
                let n = batch * 250 + i;
                a.submit(chat(
                    &format!("u{}@example.test", n % 5),
                    "desk@example.test",
                    &format!("word{} filler", n % 3),
                ))
            })
            .collect();
        for p in pending {
            last = p.await.unwrap().seq.0;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
        // Several index commits, so several index segments.
        found(&a, "filler", last).await;
    }
    let all = a.reader().search("filler", 5000).unwrap();
    assert_eq!(all.len(), 2000);
    let mut times: Vec<i64> = all.iter().map(|h| h.time.0).collect();
    times.sort_unstable();
    times.dedup();
    let (first, last_time) = (times[0], times[times.len() - 1]);
    let (t1, t2) = (times[times.len() / 3], times[times.len() * 2 / 3]);
    let at = |t: i64| Timestamp(t).to_string();
    type Keep = fn(i64, &str, &str) -> bool;
    type InRange = Box<dyn Fn(i64) -> bool>;
    let ranges: Vec<(String, InRange)> = vec![
        (format!("after:{}", at(t1)), Box::new(move |t| t >= t1)),
        (format!("before:{}", at(t2)), Box::new(move |t| t < t2)),
        (
            format!("after:{} before:{}", at(t1), at(t2)),
            Box::new(move |t| t1 <= t && t < t2),
        ),
        (format!("after:{}", at(first)), Box::new(|_| true)),
        (format!("before:{}", at(first)), Box::new(|_| false)),
        (format!("after:{}", at(last_time + 1)), Box::new(|_| false)),
    ];
    let others: [(&str, Keep); 4] = [
        ("", |_, _, _| true),
        ("from:u2@example.test", |_, from, _| {
            from == "u2@example.test"
        }),
        ("word1", |_, _, body| body.starts_with("word1 ")),
        ("-from:u2@example.test word0", |_, from, body| {
            from != "u2@example.test" && body.starts_with("word0 ")
        }),
    ];
    for (range, in_range) in &ranges {
        for (other, keep) in &others {
            let q = format!("{range} {other}");
            let mut want: Vec<u64> = all
                .iter()
                .filter(|h| {
                    in_range(h.time.0) && keep(h.time.0, &h.from, h.body.as_deref().unwrap_or(""))
                })
                .map(|h| h.seq.0)
                .collect();
            want.sort_unstable();
            let mut got: Vec<u64> = a
                .reader()
                .search(&q, 5000)
                .unwrap()
                .iter()
                .map(|h| h.seq.0)
                .collect();
            got.sort_unstable();
            assert_eq!(got, want, "{q}");
        }
    }
    a.close().await.unwrap();
}

/// Subject, body and every further text of a message are apart in the index: a
/// phrase or a NEAR never joins the end of one to the start of the next, while
/// each is found within its own part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phrase_or_near_does_not_join_two_parts_of_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = open(tmp.path());
    let split = NewRecord::Message(MessageRecord {
        subject: Some("quarterly alpha".into()),
        ..MessageRecord::chat("u1@example.test", "u2@example.test", "beta numbers gamma")
    });
    let joined = chat(
        "u1@example.test",
        "u2@example.test",
        "quarterly alpha beta numbers",
    );
    let s = a.append(split).await.unwrap().seq.0;
    let j = a.append(joined).await.unwrap().seq.0;
    for (q, want) in [
        ("\"alpha beta\"", vec![j]),
        ("alpha NEAR/1 beta", vec![j]),
        ("alpha NEAR/50 gamma", Vec::new()),
        ("\"quarterly alpha\"", vec![s, j]),
        ("\"beta numbers\"", vec![s, j]),
        ("numbers ONEAR/1 gamma", vec![s]),
    ] {
        assert_eq!(found(&a, q, j).await, want, "{q}");
    }
    a.close().await.unwrap();
}
