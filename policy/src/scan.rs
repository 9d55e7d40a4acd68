//! One pass over a text field. Every regex used on the field is in one `RegexSet`, every
//! lexicon in the shared automata, and each detector in use runs once; rule conditions
//! then read the results instead of searching again. Exact match positions of regexes
//! are only computed for rules that redact, after they matched.
//!
//! A Unicode word boundary (`\b`, `\B`, `\<`, `\>`) keeps a regex set off its fast
//! engines on any text that is not ASCII: a set of a hundred such regexes read a
//! 200-character Russian message in about a millisecond. So the set holds each regex
//! with its Unicode word boundaries taken out, which matches wherever the regex does and
//! maybe elsewhere, and a regex that had one is then tried alone where its wide form
//! matched.

use std::collections::HashMap;
use std::ops::Range;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::detect::{Detector, Detectors};
use crate::jid::Bits;
use crate::lexicon::{LexiconId, Lexicons};
use custos_text::Unmasked;

/// Which text field a condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Field {
    Body,
    Subject,
}

/// A text test a condition can make; indexes into a [`FieldScanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Probe {
    Regex(usize),
    Lexicon(LexiconId),
    Detector(Detector),
}

/// Compiled size cap per regex (the regex crate's own default is 10 MiB); rules files
/// are written by people, but one pathological pattern must not eat the proxy's memory.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

#[derive(Debug, Default)]
pub(crate) struct FieldScanner {
    regexes: Vec<Regex>,
    by_source: HashMap<String, usize>,
    /// Every regex, with its Unicode word boundaries taken out.
    set: Option<RegexSet>,
    /// Which regexes the set holds wider than they are: a match of the set is checked
    /// with the regex itself.
    widened: Vec<bool>,
    lexicons: bool,
    detectors: [bool; 4],
}

impl FieldScanner {
    /// Adds (or reuses) a regex; `Err` is the regex's own reason, on one line.
    pub(crate) fn add_regex(&mut self, source: &str) -> Result<Probe, String> {
        if let Some(&i) = self.by_source.get(source) {
            return Ok(Probe::Regex(i));
        }
        let re = RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| one_line(&e.to_string()))?;
        let i = self.regexes.len();
        self.regexes.push(re);
        self.by_source.insert(source.to_owned(), i);
        Ok(Probe::Regex(i))
    }

    pub(crate) fn add_lexicon(&mut self, id: LexiconId) -> Probe {
        self.lexicons = true;
        Probe::Lexicon(id)
    }

    pub(crate) fn add_detector(&mut self, d: Detector) -> Probe {
        if let Some(slot) = self.detectors.get_mut(d.index()) {
            *slot = true;
        }
        Probe::Detector(d)
    }

    pub(crate) fn regex(&self, i: usize) -> Option<&Regex> {
        self.regexes.get(i)
    }

    /// Compiles the regex set once every regex is added.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        if self.regexes.is_empty() {
            return Ok(());
        }
        let wide: Vec<Option<String>> = self.regexes.iter().map(|r| widen(r.as_str())).collect();
        self.widened = wide.iter().map(Option::is_some).collect();
        let sources = self
            .regexes
            .iter()
            .zip(&wide)
            .map(|(r, w)| w.as_deref().unwrap_or(r.as_str()));
        let set = RegexSetBuilder::new(sources)
            .size_limit(REGEX_SIZE_LIMIT.saturating_mul(self.regexes.len()))
            .build()
            .map_err(|e| one_line(&e.to_string()))?;
        self.set = Some(set);
        Ok(())
    }

    /// Whether regex `i`, which the set matched in `text` in its wide form, matches.
    fn confirmed(&self, i: usize, text: &str) -> bool {
        !self.widened.get(i).copied().unwrap_or(false)
            || self.regexes.get(i).is_some_and(|re| re.is_match(text))
    }

    pub(crate) fn is_used(&self) -> bool {
        self.set.is_some() || self.lexicons || self.detectors.iter().any(|&d| d)
    }

    pub(crate) fn scan<'t>(
        &self,
        text: &'t str,
        lexicons: &Lexicons,
        n_lexicons: usize,
        detectors: &Detectors,
    ) -> FieldScan<'t> {
        // The text, and where it hides words from a scanner, the views a reader sees.
        let unmasked = Unmasked::views(text);
        let views = || std::iter::once(text).chain(unmasked.iter().map(|u| u.text.as_str()));
        let regex_hits = match &self.set {
            Some(set) => {
                let mut hits = vec![false; self.regexes.len()];
                for view in views() {
                    for i in set.matches(view).iter() {
                        if let Some(h) = hits.get_mut(i) {
                            *h = *h || self.confirmed(i, view);
                        }
                    }
                }
                hits
            }
            None => Vec::new(),
        };
        let mut lexicon_hits = Vec::new();
        let mut lexicon_matched = Bits::new(n_lexicons);
        if self.lexicons {
            lexicons.scan(text, &mut lexicon_hits);
            for u in &unmasked {
                let mut seen = Vec::new();
                lexicons.scan(&u.text, &mut seen);
                lexicon_hits.extend(
                    seen.into_iter()
                        .filter_map(|(id, r)| Some((id, u.original(text, r)?))),
                );
            }
            for (id, _) in &lexicon_hits {
                lexicon_matched.set(*id);
            }
        }
        let mut detector_hits: [Vec<Range<usize>>; 4] = Default::default();
        for d in Detector::ALL {
            if self.detectors.get(d.index()).copied().unwrap_or(false) {
                if let Some(slot) = detector_hits.get_mut(d.index()) {
                    *slot = detectors.find(d, text);
                    for u in &unmasked {
                        let seen = detectors.find(d, &u.text);
                        slot.extend(seen.into_iter().filter_map(|r| u.original(text, r)));
                    }
                }
            }
        }
        FieldScan {
            text,
            unmasked,
            regex_hits,
            lexicon_hits,
            lexicon_matched,
            detector_hits,
        }
    }
}

/// What one scan of a field found.
#[derive(Debug)]
pub(crate) struct FieldScan<'t> {
    pub text: &'t str,
    /// The text as a reader sees it, where that differs (see [`Unmasked::views`]).
    unmasked: Vec<Unmasked>,
    regex_hits: Vec<bool>,
    lexicon_hits: Vec<(LexiconId, Range<usize>)>,
    lexicon_matched: Bits,
    detector_hits: [Vec<Range<usize>>; 4],
}

impl FieldScan<'_> {
    pub(crate) fn matched(&self, p: Probe) -> bool {
        match p {
            Probe::Regex(i) => self.regex_hits.get(i).copied().unwrap_or(false),
            Probe::Lexicon(id) => self.lexicon_matched.get(id),
            Probe::Detector(d) => self
                .detector_hits
                .get(d.index())
                .is_some_and(|v| !v.is_empty()),
        }
    }

    /// Where `p` matched, for redaction.
    pub(crate) fn spans(&self, p: Probe, scanner: &FieldScanner, out: &mut Vec<Range<usize>>) {
        match p {
            Probe::Regex(i) => {
                if let Some(re) = scanner.regex(i) {
                    out.extend(
                        re.find_iter(self.text)
                            .map(|m| m.range())
                            .filter(|r| !r.is_empty()),
                    );
                    for u in &self.unmasked {
                        out.extend(
                            re.find_iter(&u.text)
                                .map(|m| m.range())
                                .filter(|r| !r.is_empty())
                                .filter_map(|r| u.original(self.text, r)),
                        );
                    }
                }
            }
            Probe::Lexicon(id) => out.extend(
                self.lexicon_hits
                    .iter()
                    .filter(|(l, _)| *l == id)
                    .map(|(_, r)| r.clone()),
            ),
            Probe::Detector(d) => {
                if let Some(v) = self.detector_hits.get(d.index()) {
                    out.extend(v.iter().cloned());
                }
            }
        }
    }
}

/// `source` with its Unicode word boundaries taken out, as a pattern that matches
/// wherever `source` does (an assertion taken out only lets more through); `None` when
/// it has none, or cannot be read again (the regex then stays in the set as it is).
fn widen(source: &str) -> Option<String> {
    use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};
    fn wide(h: &Hir) -> Hir {
        match h.kind() {
            HirKind::Look(
                Look::WordUnicode
                | Look::WordUnicodeNegate
                | Look::WordStartUnicode
                | Look::WordEndUnicode
                | Look::WordStartHalfUnicode
                | Look::WordEndHalfUnicode,
            ) => Hir::empty(),
            HirKind::Repetition(r) => Hir::repetition(Repetition {
                sub: Box::new(wide(&r.sub)),
                ..r.clone()
            }),
            HirKind::Capture(c) => Hir::capture(Capture {
                sub: Box::new(wide(&c.sub)),
                ..c.clone()
            }),
            HirKind::Concat(v) => Hir::concat(v.iter().map(wide).collect()),
            HirKind::Alternation(v) => Hir::alternation(v.iter().map(wide).collect()),
            _ => h.clone(),
        }
    }
    let hir = regex_syntax::parse(source).ok()?;
    if !hir.properties().look_set().contains_word_unicode() {
        return None;
    }
    let out = wide(&hir).to_string();
    // What the printer writes must read again as a regex.
    RegexBuilder::new(&out)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .ok()
        .map(|_| out)
}

/// Regex errors are multi-line drawings; a `FILE:LINE: reason` wants one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_are_deduplicated_and_scanned_as_a_set() {
        let mut s = FieldScanner::default();
        let a = s.add_regex("(?i)falcon").expect("a");
        let b = s.add_regex("\\d{3}").expect("b");
        assert_eq!(s.add_regex("(?i)falcon").expect("a again"), a);
        s.finish().expect("set");
        let lex = Lexicons::default();
        let det = Detectors::new().expect("det");
        let scan = s.scan("Project FALCON", &lex, 0, &det);
        assert!(scan.matched(a));
        assert!(!scan.matched(b));
        let mut spans = Vec::new();
        scan.spans(a, &s, &mut spans);
        assert_eq!(spans, vec![8..14]);
    }

    /// A regex with Unicode word boundaries is held wide in the set and confirmed
    /// alone: what it matches is what the regex itself matches, in any script.
    #[test]
    fn word_boundaries_match_as_the_regex_does() {
        assert!(widen("(?i)\\bfalcon\\b").is_some());
        assert!(widen("falcon|\\d{3}").is_none());
        assert!(widen("(?-u:\\b)falcon").is_none());
        let sources = [
            "(?i)\\bfalcon\\b",
            "\\Bcon\\b",
            "\\b(?:deal|сделка)\\s+\\d+",
            "\\<go\\>",
            "plain",
        ];
        let mut s = FieldScanner::default();
        let probes: Vec<Probe> = sources
            .iter()
            .map(|r| s.add_regex(r).expect("a regex"))
            .collect();
        s.finish().expect("set");
        let lex = Lexicons::default();
        let det = Detectors::new().expect("det");
        for text in [
            "the Falcon lands",
            "falconry",
            "Ёfalcon",
            "сокол falcon, сделка 12",
            "сделка12 deal 7",
            "Добрый день, falconё",
            "let us go now",
            "cargo plain",
            "",
        ] {
            let scan = s.scan(text, &lex, 0, &det);
            for (p, src) in probes.iter().zip(sources) {
                let re = Regex::new(src).expect("compiles");
                assert_eq!(scan.matched(*p), re.is_match(text), "{src} on {text:?}");
            }
        }
    }

    proptest::proptest! {
        /// The same on any text of Latin and Cyrillic letters, digits, `_`, spaces and a
        /// combining mark, read with its views (single letters between spaces are a
        /// word spelt out).
        #[test]
        fn a_widened_regex_matches_exactly_where_it_does(text in "[fldnбгджё1_ \u{301}]{0,24}") {
            let sources = ["\\bfl\\b", "\\Bn", "\\b\\d+\\b", "д\\b", "\\bж", "(?i)\\bБГ"];
            let mut s = FieldScanner::default();
            let probes: Vec<Probe> = sources.iter().map(|r| s.add_regex(r).expect("a regex")).collect();
            s.finish().expect("set");
            let scan = s.scan(&text, &Lexicons::default(), 0, &Detectors::new().expect("det"));
            let views = Unmasked::views(&text);
            for (p, src) in probes.iter().zip(sources) {
                let re = Regex::new(src).expect("compiles");
                let want = re.is_match(&text) || views.iter().any(|v| re.is_match(&v.text));
                proptest::prop_assert_eq!(scan.matched(*p), want, "{} on {:?}", src, text);
            }
        }
    }

    #[test]
    fn bad_regex_reason_is_one_line() {
        let mut s = FieldScanner::default();
        let e = s.add_regex("(unclosed").expect_err("must fail");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("unclosed"), "{e}");
    }
}
