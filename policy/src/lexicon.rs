//! Keyword lexicons. Every lexicon in the file is merged into at most two Aho-Corasick
//! automata (one over the text as written for case-sensitive lexicons, one over its
//! lowercased form for case-insensitive ones), so a message is scanned once however many
//! lexicons and terms there are. Each hit maps back to the lexicons that own the term;
//! whole-word lexicons then check the characters either side in the original text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use unicode_normalization::UnicodeNormalization;

pub(crate) type LexiconId = usize;

/// A lexicon as declared: its terms and options.
#[derive(Debug, Clone)]
pub(crate) struct LexiconSpec {
    pub terms: Vec<String>,
    pub whole_word: bool,
    pub case_insensitive: bool,
}

#[derive(Debug, Default)]
struct Automaton {
    ac: Option<AhoCorasick>,
    /// Pattern index → lexicons that contain that term.
    owners: Vec<Vec<LexiconId>>,
}

impl Automaton {
    fn build(terms: HashMap<String, Vec<LexiconId>>) -> Result<Self, String> {
        if terms.is_empty() {
            return Ok(Automaton::default());
        }
        let (patterns, owners): (Vec<String>, Vec<Vec<LexiconId>>) = terms.into_iter().unzip();
        // Standard semantics + overlapping search: every occurrence of every term is
        // reported, so a whole-word check that rejects one match cannot hide another
        // that overlaps it.
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|e| e.to_string())?;
        Ok(Automaton {
            ac: Some(ac),
            owners,
        })
    }
}

/// All lexicons of a policy, compiled.
#[derive(Debug, Default)]
pub(crate) struct Lexicons {
    whole_word: Vec<bool>,
    exact: Automaton,
    folded: Automaton,
    any_folded: bool,
}

/// Lowercases `text`, remembering for every byte of the result the byte offset of the
/// original character it came from (lowercasing can change lengths: `İ` → `i̇`).
fn fold(text: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        for l in c.to_lowercase() {
            let before = out.len();
            out.push(l);
            map.extend(std::iter::repeat_n(i, out.len() - before));
        }
    }
    (out, map)
}

/// `text` lowercased for the folded automaton, and where each of its bytes came from:
/// ASCII keeps every offset, so it needs no map, and is copied only when it has a
/// capital.
fn folded(text: &str) -> (Cow<'_, str>, Option<Vec<usize>>) {
    if !text.is_ascii() {
        let (lower, map) = fold(text);
        return (Cow::Owned(lower), Some(map));
    }
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        (Cow::Owned(text.to_ascii_lowercase()), None)
    } else {
        (Cow::Borrowed(text), None)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `range` of `text` stands as a whole word: a word character at an edge of the
/// match must not touch another word character outside it.
fn whole_word_at(text: &str, range: &Range<usize>) -> bool {
    let inner_first = text.get(range.clone()).and_then(|s| s.chars().next());
    let inner_last = text.get(range.clone()).and_then(|s| s.chars().next_back());
    let before = text.get(..range.start).and_then(|s| s.chars().next_back());
    let after = text.get(range.end..).and_then(|s| s.chars().next());
    let left_ok = !(inner_first.is_some_and(is_word_char) && before.is_some_and(is_word_char));
    let right_ok = !(inner_last.is_some_and(is_word_char) && after.is_some_and(is_word_char));
    left_ok && right_ok
}

impl Lexicons {
    pub(crate) fn build(specs: &[LexiconSpec]) -> Result<Self, String> {
        let mut exact: HashMap<String, Vec<LexiconId>> = HashMap::new();
        let mut folded: HashMap<String, Vec<LexiconId>> = HashMap::new();
        for (id, spec) in specs.iter().enumerate() {
            for term in &spec.terms {
                // Composed, as text is read a second time (`e` and a combining acute
                // are `é`): a term written decomposed still meets it.
                let term: String = term.nfc().collect();
                let (map, key) = if spec.case_insensitive {
                    (&mut folded, fold(&term).0)
                } else {
                    (&mut exact, term)
                };
                let owners = map.entry(key).or_default();
                if owners.last() != Some(&id) {
                    owners.push(id);
                }
            }
        }
        Ok(Lexicons {
            whole_word: specs.iter().map(|s| s.whole_word).collect(),
            any_folded: !folded.is_empty(),
            exact: Automaton::build(exact)?,
            folded: Automaton::build(folded)?,
        })
    }

    /// Every (lexicon, byte range in `text`) hit, one scan per automaton.
    pub(crate) fn scan(&self, text: &str, out: &mut Vec<(LexiconId, Range<usize>)>) {
        if let Some(ac) = &self.exact.ac {
            for m in ac.find_overlapping_iter(text) {
                self.push_hits(&self.exact, m.pattern().as_usize(), text, m.range(), out);
            }
        }
        if let (true, Some(ac)) = (self.any_folded, &self.folded.ac) {
            let (lower, map) = folded(text);
            for m in ac.find_overlapping_iter(&*lower) {
                let orig = match &map {
                    Some(map) => map_back(text, map, m.range()),
                    None => Some(m.range()),
                };
                let Some(orig) = orig else {
                    continue;
                };
                self.push_hits(&self.folded, m.pattern().as_usize(), text, orig, out);
            }
        }
    }

    fn push_hits(
        &self,
        automaton: &Automaton,
        pattern: usize,
        text: &str,
        range: Range<usize>,
        out: &mut Vec<(LexiconId, Range<usize>)>,
    ) {
        let Some(owners) = automaton.owners.get(pattern) else {
            return;
        };
        let mut word_checked: Option<bool> = None;
        for &lex in owners {
            if self.whole_word.get(lex).copied().unwrap_or(true) {
                let ok = *word_checked.get_or_insert_with(|| whole_word_at(text, &range));
                if !ok {
                    continue;
                }
            }
            out.push((lex, range.clone()));
        }
    }
}

/// Maps a range of the folded text back to whole characters of the original.
fn map_back(text: &str, map: &[usize], r: Range<usize>) -> Option<Range<usize>> {
    let start = *map.get(r.start)?;
    let last = *map.get(r.end.checked_sub(1)?)?;
    let len = text.get(last..)?.chars().next()?.len_utf8();
    Some(start..last + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(terms: &[&str], whole_word: bool, case_insensitive: bool) -> LexiconSpec {
        LexiconSpec {
            terms: terms.iter().map(|s| s.to_string()).collect(),
            whole_word,
            case_insensitive,
        }
    }

    fn hits(l: &Lexicons, text: &str) -> Vec<(LexiconId, String)> {
        let mut out = Vec::new();
        l.scan(text, &mut out);
        let mut v: Vec<_> = out
            .into_iter()
            .map(|(id, r)| (id, text.get(r).unwrap_or("?").to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn whole_word_and_case_options() {
        let l = Lexicons::build(&[lex(&["falcon"], true, true), lex(&["Falcon"], false, false)])
            .expect("build");
        assert_eq!(hits(&l, "Project FALCON."), vec![(0, "FALCON".to_string())]);
        assert_eq!(hits(&l, "Falconry"), vec![(1, "Falcon".to_string())]);
        assert_eq!(
            hits(&l, "Falcon"),
            vec![(0, "Falcon".to_string()), (1, "Falcon".to_string())]
        );
        assert!(hits(&l, "falconry").is_empty());
    }

    #[test]
    fn overlapping_terms_are_all_found() {
        // "bar" fails the word check inside "foobar"; "foobar" itself must still match.
        let l = Lexicons::build(&[lex(&["bar", "foobar"], true, false)]).expect("build");
        assert_eq!(hits(&l, "foobar"), vec![(0, "foobar".to_string())]);
    }

    #[test]
    fn unicode_case_folding_maps_back_to_original() {
        let l = Lexicons::build(&[lex(&["straße", "İstanbul"], true, true)]).expect("build");
        assert_eq!(
            hits(&l, "STRAßE via İSTANBUL"),
            vec![(0, "STRAßE".to_string()), (0, "İSTANBUL".to_string())]
        );
    }

    #[test]
    fn ascii_is_folded_in_place_as_the_full_fold_would() {
        for text in [
            "plain words",
            "Mixed CASE Words",
            "",
            "ÜBER Straße İstanbul",
        ] {
            let (lower, map) = folded(text);
            let (want, want_map) = fold(text);
            assert_eq!(&*lower, want, "{text:?}");
            let map = map.unwrap_or_else(|| (0..text.len()).collect());
            assert_eq!(map, want_map, "{text:?}");
        }
        assert!(matches!(folded("no capitals").0, Cow::Borrowed(_)));
    }

    #[test]
    fn shared_terms_report_each_lexicon() {
        let l = Lexicons::build(&[lex(&["x1"], true, true), lex(&["X1"], true, true)]).expect("b");
        assert_eq!(
            hits(&l, "a x1 b"),
            vec![(0, "x1".to_string()), (1, "x1".to_string())]
        );
    }

    #[test]
    fn word_boundaries() {
        assert!(whole_word_at("a foo b", &(2..5)));
        assert!(!whole_word_at("afoo", &(1..4)));
        assert!(
            whole_word_at("$x", &(0..1)),
            "non-word edge needs no boundary"
        );
        assert!(!whole_word_at("foo_", &(0..3)), "underscore is a word char");
    }
}
