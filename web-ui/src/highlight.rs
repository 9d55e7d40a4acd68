//! Search-term highlighting and excerpts. Words are found with the archive's
//! own tokenizer rule (runs of alphanumerics, compared lowercased), so what is
//! marked is exactly what the index matched.

use std::collections::HashSet;

/// The plain words of a query (not `field:value`, not negated), lowercased.
pub fn query_terms(q: &str) -> HashSet<String> {
    q.split_whitespace()
        .filter(|t| !t.starts_with('-') && !t.trim_start_matches('"').contains(':'))
        .flat_map(custos_archive::query::tokenize)
        .collect()
}

/// Byte ranges of the words of `text` that are in `terms`.
pub fn marks(text: &str, terms: &HashSet<String>) -> Vec<(usize, usize)> {
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
        let terms = query_terms("Invoice from:alice@x -lunch \"wire transfer\"");
        assert!(terms.contains("invoice") && terms.contains("wire") && terms.contains("transfer"));
        assert!(!terms.contains("lunch") && !terms.contains("alice"));
        let text = "INVOICE sent; invoices later. Wire it.";
        let m = marks(text, &terms);
        let words: Vec<&str> = m.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(words, vec!["INVOICE", "Wire"]);
    }

    #[test]
    fn excerpt_centres_on_the_first_mark() {
        let text = format!("{}needle{}", "a ".repeat(300), " b".repeat(300));
        let terms = query_terms("needle");
        let m = marks(&text, &terms);
        let (ex, inside, cut_before, cut_after) = excerpt(&text, &m);
        assert!(cut_before && cut_after);
        assert_eq!(inside.len(), 1);
        assert_eq!(&ex[inside[0].0..inside[0].1], "needle");
    }

    proptest! {
        #[test]
        fn marks_and_excerpts_stay_on_char_boundaries(text in "\\PC{0,400}", word in "[a-zé]{1,4}") {
            let terms: HashSet<String> = [word].into_iter().collect();
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
