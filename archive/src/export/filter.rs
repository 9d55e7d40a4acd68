//! Which records an export selects: the time range and the search query,
//! evaluated on each decrypted record as it streams past.
//!
//! The query has the meaning `docs/search-syntax.md` gives it, evaluated here
//! directly instead of through the blind index: the export then needs no index
//! (which may lag the log or be rebuilding) and no result-size limit. Only
//! messages match a query, as in search; without a query every record in the
//! range is selected, events included, so the exported sequence has no gaps.

use std::collections::HashMap;

use crate::query::{self, Clause, JidField, Query, Word, WordMatcher};
use crate::record::{Direction, MessageRecord, NewRecord, Record};
use crate::time::Timestamp;

pub(crate) struct Filter {
    query: Option<Query>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    /// Each prefix, wildcard and fuzzy word of the query, compiled once (a fuzzy
    /// term's automaton is not rebuilt per record).
    matchers: HashMap<Word, WordMatcher>,
}

impl Filter {
    pub fn new(query: Option<Query>, since: Option<Timestamp>, until: Option<Timestamp>) -> Filter {
        let mut matchers = HashMap::new();
        for c in query.iter().flat_map(|q| q.expr.clauses()) {
            let words: Vec<&Word> = match c {
                Clause::Pattern { word, .. } => vec![word],
                Clause::Near { left, right, .. } => left.iter().chain(right).collect(),
                _ => continue,
            };
            for w in words {
                matchers.entry(w.clone()).or_insert_with(|| w.matcher());
            }
        }
        Filter {
            query,
            since,
            until,
            matchers,
        }
    }

    /// The query, if the export has one.
    pub fn query(&self) -> Option<&Query> {
        self.query.as_ref()
    }

    /// Whether the record is inside the time range only.
    pub fn selects_time(&self, rec: &Record) -> bool {
        !(self.since.is_some_and(|t| rec.time < t) || self.until.is_some_and(|t| rec.time >= t))
    }

    /// `since` is inclusive and `until` exclusive, like `after:` / `before:`.
    pub fn selects(&self, rec: &Record) -> bool {
        if !self.selects_time(rec) {
            return false;
        }
        let Some(q) = &self.query else {
            return true;
        };
        let NewRecord::Message(m) = &rec.content else {
            return false;
        };
        let words = Words::of(m);
        q.expr
            .eval(&mut |c| clause(c, rec, m, &words, &self.matchers))
    }
}

/// The tokens of every text part, numbered as the index numbers them: one part
/// after another, [`query::PART_GAP`] positions apart, so a phrase or NEAR never
/// joins two parts, and agrees with search.
struct Words(Vec<(String, u32)>);

impl Words {
    fn of(m: &MessageRecord) -> Words {
        let mut out = Vec::new();
        let mut next = 0u32;
        for part in query::text_parts(m) {
            for t in query::tokenize(&part) {
                out.push((t, next));
                next = next.saturating_add(1);
            }
            next = next.saturating_add(query::PART_GAP);
        }
        Words(out)
    }

    fn has_phrase(&self, phrase: &[String]) -> bool {
        if phrase.is_empty() {
            return false;
        }
        self.0.windows(phrase.len()).any(|w| {
            w.iter().zip(phrase).all(|((t, _), p)| t == p)
                && w.windows(2).all(|p| p[1].1 == p[0].1 + 1)
        })
    }

    /// Positions of the words any of `words` matches, ascending.
    fn positions(&self, words: &[Word], compiled: &HashMap<Word, WordMatcher>) -> Vec<u32> {
        let matchers: Vec<&WordMatcher> = words.iter().filter_map(|w| compiled.get(w)).collect();
        self.0
            .iter()
            .filter(|(t, _)| matchers.iter().any(|m| m.matches(t)))
            .map(|&(_, p)| p)
            .collect()
    }
}

fn jid_matches(jid: &str, wanted: &str) -> bool {
    let full = query::normalize_jid(jid);
    full == wanted || query::bare_jid(&full) == wanted
}

/// The person behind a room address on the given side of the copy (see the index).
fn occupant(m: &MessageRecord, side: Direction) -> Option<&str> {
    m.capture
        .occupant
        .as_deref()
        .filter(|_| m.direction == side)
}

fn clause(
    c: &Clause,
    rec: &Record,
    m: &MessageRecord,
    words: &Words,
    compiled: &HashMap<Word, WordMatcher>,
) -> bool {
    match c {
        Clause::Text(phrase) => words.has_phrase(phrase),
        Clause::Pattern { word, .. } => compiled
            .get(word)
            .is_some_and(|m| words.0.iter().any(|(t, _)| m.matches(t))),
        Clause::Near {
            left,
            right,
            within,
            ordered,
            ..
        } => query::near(
            &words.positions(left, compiled),
            &words.positions(right, compiled),
            *within,
            *ordered,
        ),
        Clause::Jid(JidField::From, j) => {
            jid_matches(&m.from, j)
                || occupant(m, Direction::Inbound).is_some_and(|o| jid_matches(o, j))
        }
        Clause::Jid(JidField::To, j) => {
            jid_matches(&m.to, j)
                || occupant(m, Direction::Outbound).is_some_and(|o| jid_matches(o, j))
        }
        Clause::Jid(JidField::With, j) => {
            jid_matches(&m.from, j)
                || jid_matches(&m.to, j)
                || m.capture
                    .occupant
                    .as_deref()
                    .is_some_and(|o| jid_matches(o, j))
        }
        Clause::Room(room) => query::room_of(m).as_ref() == Some(room),
        Clause::Jid(JidField::Account, j) => jid_matches(&m.capture.account, j),
        Clause::Message(id) => {
            m.capture.identity == *id || m.capture.delivered_identity.as_ref() == Some(id)
        }
        Clause::Via(v) => m.capture.via == *v,
        Clause::Direction(d) => m.direction == *d,
        Clause::Type(t) => m.stanza_type.to_lowercase() == *t,
        Clause::Action(a) => m.outcome.action == *a,
        Clause::Rule(r) => m.outcome.rules.iter().any(|x| x == r),
        Clause::After(t) => rec.time >= *t,
        Clause::Before(t) => rec.time < *t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Action, Direction, Outcome, RecordSeq};

    fn msg(from: &str, to: &str, body: &str, t: i64) -> Record {
        Record {
            seq: RecordSeq(1),
            time: Timestamp(t),
            content: NewRecord::Message(MessageRecord {
                stanza_type: "Chat".into(),
                subject: Some("Quarterly".into()),
                outcome: Outcome {
                    action: Action::Flag,
                    rules: vec!["pci-card".into()],
                    ..Outcome::allowed()
                },
                ..MessageRecord::chat(from, to, body)
            }),
        }
    }

    fn sel(q: &str, r: &Record) -> bool {
        Filter::new(Some(query::parse(q).unwrap()), None, None).selects(r)
    }

    #[test]
    fn query_clauses_match_like_search() {
        let r = msg(
            "Alice@Example.test/laptop",
            "bob@example.test",
            "Wire the FUNDS today",
            5,
        );
        assert!(sel("funds", &r));
        assert!(sel("\"wire the funds\"", &r));
        assert!(!sel("\"the wire\"", &r));
        // A phrase does not run from the subject into the body.
        assert!(!sel("\"quarterly wire\"", &r));
        assert!(sel("from:alice@example.test", &r));
        assert!(sel("from:alice@example.test/laptop", &r));
        assert!(!sel("from:alice@example.test/phone", &r));
        assert!(sel("with:bob@example.test", &r));
        assert!(!sel("to:alice@example.test", &r));
        assert!(sel(
            "type:chat direction:outbound action:flag rule:pci-card",
            &r
        ));
        assert!(!sel("rule:pci", &r));
        assert!(!sel("funds -today", &r));
        assert!(sel("after:1970-01-01 -before:1970-01-01", &r));
    }

    /// Words hidden from a scanner but not from a reader (an invisible character
    /// inside, letters drawn like Latin ones, fullwidth letters) are found as a reader
    /// sees them, and as they are written.
    #[test]
    fn words_are_found_as_a_reader_sees_them() {
        for body in [
            "wire the fal\u{200B}con funds",
            "wire the fаlcon funds",
            "wire the ｆａｌｃｏｎ funds",
            "wire the ᴘᴀʏ funds",
            "wire the f a l c o n funds",
            "wire the \u{202E}noclaf\u{202C} funds",
        ] {
            let r = msg("alice@example.test", "bob@example.test", body, 5);
            let word = if body.contains('ᴘ') {
                "pay"
            } else {
                "falcon"
            };
            assert!(sel(word, &r), "{body}");
            assert!(sel(&format!("\"the {word} funds\""), &r), "{body}");
            assert!(sel(&format!("{}*", &word[..3]), &r), "{body}");
            assert!(sel(&format!("wire NEAR/2 {word}"), &r), "{body}");
        }
        let r = msg("alice@example.test", "bob@example.test", "the fаlcon", 5);
        assert!(sel("fаlcon", &r), "as written");
    }

    #[test]
    fn boolean_patterns_and_near() {
        let r = msg(
            "alice@example.test",
            "bob@example.test",
            "We guarantee a good return, honestly",
            5,
        );
        assert!(sel("funds OR guarantee", &r));
        assert!(!sel("funds OR lunch", &r));
        assert!(sel("from:alice@example.test (lunch OR return)", &r));
        assert!(!sel("NOT (lunch OR return)", &r));
        assert!(sel("guarant*", &r));
        assert!(sel("g?ar*ee", &r));
        assert!(!sel("guarantees*", &r));
        assert!(sel("garantee~", &r));
        assert!(!sel("garanty~", &r));
        assert!(sel("guarant* NEAR/3 return*", &r));
        assert!(!sel("guarant* NEAR/2 return*", &r));
        assert!(sel("return NEAR/3 guarantee", &r));
        assert!(!sel("return ONEAR/3 guarantee", &r));
        assert!(sel("guarantee ONEAR/3 (profit OR return)", &r));
        // Subject "Quarterly" and body's first word are in different parts: never near.
        assert!(!sel("quarterly NEAR/1 we", &r));
        assert!(!sel("quarterly NEAR/1000 we", &r));
        assert!(!sel("\"quarterly we\"", &r));
    }

    #[test]
    fn room_and_the_person_behind_an_occupant() {
        let mut r = msg(
            "deals@conference.example.test/bobby",
            "alice@example.test/l",
            "buy",
            5,
        );
        if let NewRecord::Message(m) = &mut r.content {
            m.direction = Direction::Inbound;
            m.stanza_type = "groupchat".into();
            m.capture.occupant = Some("bob@example.test/desk".into());
        }
        assert!(sel("room:deals@conference.example.test", &r));
        assert!(sel("room:Deals@Conference.example.test buy", &r));
        assert!(!sel("room:other@conference.example.test", &r));
        assert!(sel("from:bob@example.test", &r));
        assert!(sel("with:bob@example.test", &r));
        assert!(!sel("to:bob@example.test", &r));
        // A chat with the room's address is not group chat in the room.
        if let NewRecord::Message(m) = &mut r.content {
            m.stanza_type = "chat".into();
        }
        assert!(!sel("room:deals@conference.example.test", &r));
        assert!(query::parse("room:deals@conference.example.test/bobby").is_err());
    }

    #[test]
    fn time_range_and_events() {
        let r = msg("a@x", "b@x", "hi", 100);
        let f = |s, u| Filter::new(None, s, u);
        assert!(f(Some(Timestamp(100)), Some(Timestamp(101))).selects(&r));
        assert!(!f(Some(Timestamp(101)), None).selects(&r));
        assert!(!f(None, Some(Timestamp(100))).selects(&r));
        let ev = Record {
            seq: RecordSeq(2),
            time: Timestamp(1),
            content: NewRecord::Event(crate::record::EventRecord::Audit {
                actor: "o".into(),
                action: "search".into(),
                detail: "hi".into(),
            }),
        };
        assert!(f(None, None).selects(&ev));
        assert!(
            !sel("", &ev),
            "a query selects messages only, as search does"
        );
    }
}
