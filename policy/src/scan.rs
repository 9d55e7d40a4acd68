//! One pass over a text field. Every regex used on the field is in one `RegexSet`, every
//! lexicon in the shared automata, and each detector in use runs once; rule conditions
//! then read the results instead of searching again. Exact match positions of regexes
//! are only computed for rules that redact, after they matched.

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
    set: Option<RegexSet>,
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
        let set = RegexSetBuilder::new(self.regexes.iter().map(Regex::as_str))
            .size_limit(REGEX_SIZE_LIMIT.saturating_mul(self.regexes.len()))
            .build()
            .map_err(|e| one_line(&e.to_string()))?;
        self.set = Some(set);
        Ok(())
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
                            *h = true;
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

    #[test]
    fn bad_regex_reason_is_one_line() {
        let mut s = FieldScanner::default();
        let e = s.add_regex("(unclosed").expect_err("must fail");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("unclosed"), "{e}");
    }
}
