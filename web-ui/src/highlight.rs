//! Search-term highlighting and excerpts. Words are found with the archive's
//! own tokenizer rule (runs of alphanumerics, compared lowercased), so what is
//! marked is exactly what the index matched.

use std::collections::HashSet;

use custos_archive::query::{self, Clause, Expr, Word, WordMatcher};

/// The words a query looks for in text (not `field:value` terms, not what it excludes):
/// exact words, and the prefix, wildcard and fuzzy terms as matchers.
#[derive(Default)]
pub struct Terms {
    exact: HashSet<String>,
    patterns: Vec<WordMatcher>,
}

impl Terms {
    /// The terms of a query; one that does not parse marks nothing.
    pub fn of(q: &str) -> Terms {
        let mut t = Terms::default();
        if let Ok(q) = query::parse(q) {
            t.collect(&q.expr);
        }
        t
    }

    fn word(&mut self, w: &Word) {
        match w {
            Word::Exact(e) => {
                self.exact.insert(e.clone());
            }
            w => self.patterns.push(w.matcher()),
        }
    }

    fn collect(&mut self, e: &Expr) {
        match e {
            Expr::All | Expr::Not(_) => {}
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| self.collect(e)),
            Expr::Clause(Clause::Text(words)) => self.exact.extend(words.iter().cloned()),
            Expr::Clause(Clause::Pattern { word, .. }) => self.word(word),
            Expr::Clause(Clause::Near { left, right, .. }) => {
                left.iter().chain(right).for_each(|w| self.word(w))
            }
            Expr::Clause(_) => {}
        }
    }

    /// Whether a lowercased word is one the query looks for.
    pub fn contains(&self, word: &str) -> bool {
        self.exact.contains(word) || self.patterns.iter().any(|m| m.matches(word))
    }
}

/// Byte ranges of the words of `text` that are in `terms`, in order and apart: each
/// word as written, and each word of the text as a reader sees it (the index holds both)
/// as the characters it was written with, so `fal` + zero-width space + `con` is marked
/// whole when the query asks for `falcon`.
pub fn marks(text: &str, terms: &Terms) -> Vec<(usize, usize)> {
    let mut out = words_in(text, terms);
    let views = custos_text::Unmasked::views(text);
    if !views.is_empty() {
        for seen in &views {
            out.extend(
                words_in(&seen.text, terms)
                    .into_iter()
                    .filter_map(|(s, e)| seen.original(text, s..e))
                    .map(|r| (r.start, r.end)),
            );
        }
        out.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(out.len());
        for (s, e) in out {
            match merged.last_mut() {
                Some(last) if s < last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        out = merged;
    }
    out
}

/// Byte ranges of the words of `text` that are in `terms`.
fn words_in(text: &str, terms: &Terms) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let flush = |s: usize, e: usize, out: &mut Vec<(usize, usize)>| {
        if let Some(w) = text.get(s..e) {
            if terms.contains(&w.to_lowercase()) {
                out.push((s, e));
            }
        }
    };
    for (i, c) in text.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                flush(s, i, &mut out);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        flush(s, text.len(), &mut out);
    }
    out
}

/// Longest excerpt shown in a result row, in bytes (approximate: cut on char boundaries).
pub const EXCERPT: usize = 280;

/// A window of `text` around its first mark, the marks inside it rebased, and
/// whether text was cut before / after.
pub fn excerpt<'a>(
    text: &'a str,
    marks: &[(usize, usize)],
) -> (&'a str, Vec<(usize, usize)>, bool, bool) {
    if text.len() <= EXCERPT {
        return (text, marks.to_vec(), false, false);
    }
    let first = marks.first().map_or(0, |m| m.0);
    let mut start = first.saturating_sub(EXCERPT / 3);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + EXCERPT).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let inside = marks
        .iter()
        .filter(|&&(s, e)| s >= start && e <= end)
        .map(|&(s, e)| (s - start, e - start))
        .collect();
    (
        text.get(start..end).unwrap_or(""),
        inside,
        start > 0,
        end < text.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marks_whole_words_case_insensitively() {
        let terms = Terms::of("Invoice from:alice@x -lunch \"wire transfer\"");
        assert!(terms.contains("invoice") && terms.contains("wire") && terms.contains("transfer"));
        assert!(!terms.contains("lunch") && !terms.contains("alice"));
        let text = "INVOICE sent; invoices later. Wire it.";
        let m = marks(text, &terms);
        let words: Vec<&str> = m.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(words, vec!["INVOICE", "Wire"]);
    }

    #[test]
    fn marks_what_patterns_and_near_matched() {
        let terms = Terms::of("guarant* NEAR/5 (retrun~ OR profit) OR -lunch");
        let text = "We guaranteed a return, not lunch.";
        let m = marks(text, &terms);
        let words: Vec<&str> = m.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(words, vec!["guaranteed", "return"]);
    }

    /// A word the index found as a reader sees it is marked as it is written.
    #[test]
    fn marks_words_as_a_reader_sees_them() {
        let terms = Terms::of("falcon OR pay");
        let text =
            "the fal\u{200B}con and fаlcon, ᴘᴀʏ now; falcon, f a l c o n, \u{202E}noclaf\u{202C}";
        let m = marks(text, &terms);
        let words: Vec<&str> = m.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(
            words,
            vec![
                "fal\u{200B}con",
                "fаlcon",
                "ᴘᴀʏ",
                "falcon",
                "f a l c o n",
                "noclaf\u{202C}"
            ]
        );
    }

    #[test]
    fn excerpt_centres_on_the_first_mark() {
        let text = format!("{}needle{}", "a ".repeat(300), " b".repeat(300));
        let terms = Terms::of("needle");
        let m = marks(&text, &terms);
        let (ex, inside, cut_before, cut_after) = excerpt(&text, &m);
        assert!(cut_before && cut_after);
        assert_eq!(inside.len(), 1);
        assert_eq!(&ex[inside[0].0..inside[0].1], "needle");
    }

    proptest! {
        #[test]
        fn marks_and_excerpts_stay_on_char_boundaries(text in "\\PC{0,400}", word in "[a-zé]{1,4}") {
            let terms = Terms::of(&word);
            let m = marks(&text, &terms);
            for &(s, e) in &m {
                prop_assert!(text.get(s..e).is_some());
            }
            let (ex, inside, _, _) = excerpt(&text, &m);
            for &(s, e) in &inside {
                prop_assert!(ex.get(s..e).is_some());
            }
        }
    }
}
