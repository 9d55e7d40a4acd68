//! `custos-text`: a text as a reader sees it. A second view of a text, undoing what
//! hides words from a scanner but not from a reader: invisible format characters are
//! dropped (zero-width spaces and joiners, soft hyphens, bidirectional controls,
//! variation selectors, tag characters), every character takes its compatibility form
//! (NFKC: fullwidth letters and digits, mathematical alphanumerics, ligatures, circled
//! digits), every space separator is a plain space, and in a word with Latin letters, or
//! whose every letter is drawn like a Latin one, Cyrillic and Greek letters drawn like
//! Latin ones are those Latin letters, and a word spelt out a letter at a time
//! (`f a l c o n`, `F-A-L-C-O-N`) is the word. A client shows `fal\u{200B}con`,
//! `ｆａｌｃｏｎ`, `fаlcon` (a Cyrillic `а`) or `рау` (all Cyrillic) as the word it hides,
//! and a reader reads a spelt-out word as one.
//!
//! Both readers of words use it, so what the rules find, a search finds:
//!
//! ```text
//!  a message's text ─┬─▶ as written ─────────────┬─▶ policy: rules read both
//!                    └─▶ Unmasked::of (the view) ┘   archive: the index holds both
//! ```
//!
//! One module: [`Unmasked`], with [`Unmasked::original`] taking a range of the view
//! back to the characters as written (a redaction masks those).

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a crash on peer data.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::ops::Range;

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// The view, and for each of its bytes the byte offset in the original text of the
/// character it came from.
#[derive(Debug)]
pub struct Unmasked {
    /// The text as a reader sees it.
    pub text: String,
    map: Vec<usize>,
}

impl Unmasked {
    /// `None` when the view would be the text itself (most ASCII text: all but words
    /// spelt out).
    pub fn of(text: &str) -> Option<Unmasked> {
        // Most text needs no second reading: checked at a glance first. An invisible
        // character hides nothing unless it touches a letter or digit (an emoji's
        // variation selector does not).
        let hides = |(prev, c, next): (Option<char>, char, Option<char>)| {
            let touches = |x: Option<char>| x.is_some_and(char::is_alphanumeric);
            !c.is_ascii()
                && ((is_invisible(c) && (touches(prev) || touches(next)))
                    || c.is_whitespace()
                    || latin_lookalike(c) != c)
        };
        let plain = (text.is_ascii()
            || (!neighbours(text).any(hides) && is_nfkc_quick(text.chars()) == IsNormalized::Yes))
            && spelt_out(text.chars()).is_empty();
        if plain {
            return None;
        }
        // Each character with the combining marks after it, in its compatibility form
        // and composed (`e` and a combining acute are `é`), invisible ones dropped; every
        // character of the form is placed at the first of those it came from.
        let mut chars: Vec<(char, usize)> = Vec::with_capacity(text.len());
        let mut segment = String::new();
        let mut segment_at = 0;
        let mut flush = |segment: &mut String, at: usize| {
            for d in segment.nfkc() {
                chars.push((if d.is_whitespace() { ' ' } else { d }, at));
            }
            segment.clear();
        };
        for (at, c) in text.char_indices() {
            if is_invisible(c) {
                continue;
            }
            if canonical_combining_class(c) == 0 && !segment.is_empty() {
                flush(&mut segment, segment_at);
            }
            if segment.is_empty() {
                segment_at = at;
            }
            segment.push(c);
        }
        flush(&mut segment, segment_at);
        // Look-alike letters read as Latin inside a word that has Latin letters, and in
        // a word every letter of which is drawn like a Latin one (`рау` reads `pay`, as
        // a reader sees it). A word with a letter no Latin one is drawn like (`мыла`)
        // stays as it is written.
        let mut start = 0;
        while start < chars.len() {
            let end = chars
                .get(start..)
                .and_then(|rest| rest.iter().position(|(c, _)| !c.is_alphanumeric()))
                .map_or(chars.len(), |n| start + n.max(1));
            if let Some(word) = chars.get_mut(start..end) {
                let latin = word.iter().any(|(c, _)| c.is_ascii_alphabetic());
                let drawn_latin = || {
                    word.iter()
                        .filter(|(c, _)| c.is_alphabetic())
                        .all(|(c, _)| latin_lookalike(*c) != *c)
                };
                if latin || drawn_latin() {
                    for (c, _) in word.iter_mut() {
                        *c = latin_lookalike(*c);
                    }
                }
            }
            start = end;
        }
        // A word spelt out a letter at a time reads as the word.
        let gaps = spelt_out(chars.iter().map(|&(c, _)| c));
        if !gaps.is_empty() {
            let mut i = 0;
            let mut gaps = gaps.iter().peekable();
            chars.retain(|_| {
                while gaps.next_if(|g| g.end <= i).is_some() {}
                let keep = !gaps.peek().is_some_and(|g| g.contains(&i));
                i += 1;
                keep
            });
        }
        let mut out = String::with_capacity(text.len());
        let mut map = Vec::with_capacity(text.len());
        for (c, at) in chars {
            out.push(c);
            map.extend(std::iter::repeat_n(at, c.len_utf8()));
        }
        (out != text).then_some(Unmasked { text: out, map })
    }

    /// The whole characters of `text` (this view's original) that `r` of the view came
    /// from, the invisible ones between them included.
    pub fn original(&self, text: &str, r: Range<usize>) -> Option<Range<usize>> {
        let start = *self.map.get(r.start)?;
        let last = *self.map.get(r.end.checked_sub(1)?)?;
        // The last character, with the combining marks and invisible characters after it.
        let mut rest = text.get(last..)?.char_indices();
        let (_, first) = rest.next()?;
        let len = rest
            .find(|&(_, c)| canonical_combining_class(c) == 0 && !is_invisible(c))
            .map_or(text.len() - last, |(n, _)| n);
        debug_assert!(len >= first.len_utf8());
        Some(start..last + len)
    }
}

/// Separators a word spelt out a letter at a time is written with (`f.a.l.c.o.n`),
/// besides whitespace.
const SPELLING_APART: &[char] = &['.', '-', '_', '*', '/', '|', '+', '~', '·', '•'];

/// Where characters apart the letters of a word spelt out one at a time: a run of at
/// least three single letters or digits, each apart from the next by one to three
/// characters of whitespace or [`SPELLING_APART`] (`f a l c o n`, `F-A-L-C-O-N`,
/// `f. a. l.`). A reader reads the word. Ranges of character positions, in order.
fn spelt_out(chars: impl Iterator<Item = char>) -> Vec<Range<usize>> {
    let mut runs = Runs::default();
    // The token being read: where it started, whether it is a word.
    let mut token: Option<(usize, bool)> = None;
    let mut n = 0;
    for (i, c) in chars.enumerate() {
        n = i + 1;
        let word = c.is_alphanumeric();
        if !(word || c.is_whitespace() || SPELLING_APART.contains(&c)) {
            // Anything else ends a run where it stands.
            if let Some((start, w)) = token.take() {
                runs.token(start..i, w);
            }
            runs.gap = None;
            runs.end();
            continue;
        }
        match token {
            Some((_, w)) if w == word => {}
            Some((start, w)) => {
                runs.token(start..i, w);
                token = Some((i, word));
            }
            None => token = Some((i, word)),
        }
    }
    if let Some((start, w)) = token {
        runs.token(start..n, w);
    }
    runs.end();
    runs.out
}

/// The state of [`spelt_out`].
#[derive(Default)]
struct Runs {
    /// The single letters of the current run, and the gaps between them.
    letters: usize,
    gaps: Vec<Range<usize>>,
    /// The gap just read, when it can part two letters of a run.
    gap: Option<Range<usize>>,
    out: Vec<Range<usize>>,
}

impl Runs {
    /// Letters a run has at least.
    const MIN_LETTERS: usize = 3;
    /// Characters between two of its letters at most.
    const MAX_APART: usize = 3;

    /// A word (`word`) or a gap of separators at positions `r` has been read.
    fn token(&mut self, r: Range<usize>, word: bool) {
        let len = r.end - r.start;
        if !word {
            if len <= Self::MAX_APART {
                self.gap = Some(r);
            } else {
                self.gap = None;
                self.end();
            }
            return;
        }
        if len != 1 {
            self.gap = None;
            self.end();
            return;
        }
        match self.gap.take() {
            Some(g) if self.letters > 0 => {
                self.gaps.push(g);
                self.letters += 1;
            }
            _ => {
                self.end();
                self.letters = 1;
            }
        }
    }

    /// The current run ends: its gaps are taken when it is long enough.
    fn end(&mut self) {
        if self.letters >= Self::MIN_LETTERS {
            self.out.append(&mut self.gaps);
        }
        self.gaps.clear();
        self.letters = 0;
    }
}

/// Each character of `text` with the ones before and after it.
fn neighbours(text: &str) -> impl Iterator<Item = (Option<char>, char, Option<char>)> + '_ {
    let mut prev = None;
    let mut rest = text.chars().peekable();
    std::iter::from_fn(move || {
        let c = rest.next()?;
        let item = (prev, c, rest.peek().copied());
        prev = Some(c);
        Some(item)
    })
}

/// Characters a client draws as nothing (Unicode's default-ignorable code points that
/// are not whitespace): a word written with one inside reads as the word.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The Latin letter a Cyrillic or Greek letter is drawn as, in the common fonts (the
/// pairs of Unicode's confusables list between those scripts that are one letter to
/// one letter), and the letter a "fancy text" generator's small capital or letter in a
/// black circle or square stands for (none has a compatibility form); any other
/// character as it is.
fn latin_lookalike(c: char) -> char {
    let offset = |first: char| char::from(b'A' + (u32::from(c) - u32::from(first)) as u8);
    match c {
        // Negative circled and negative squared capital letters.
        '\u{1F150}'..='\u{1F169}' => offset('\u{1F150}'),
        '\u{1F170}'..='\u{1F189}' => offset('\u{1F170}'),
        // Small capitals (there is none for `x`).
        'ᴀ' => 'a',
        'ʙ' => 'b',
        'ᴄ' => 'c',
        'ᴅ' => 'd',
        'ᴇ' => 'e',
        'ꜰ' => 'f',
        'ɢ' => 'g',
        'ʜ' => 'h',
        'ɪ' => 'i',
        'ᴊ' => 'j',
        'ᴋ' => 'k',
        'ʟ' => 'l',
        'ᴍ' => 'm',
        'ɴ' => 'n',
        'ᴏ' => 'o',
        'ᴘ' => 'p',
        'ǫ' => 'q',
        'ʀ' => 'r',
        'ꜱ' => 's',
        'ᴛ' => 't',
        'ᴜ' => 'u',
        'ᴠ' => 'v',
        'ᴡ' => 'w',
        'ʏ' => 'y',
        'ᴢ' => 'z',
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ι' => 'i',
        'ӏ' | 'Ӏ' => 'l',
        'ј' => 'j',
        'κ' | 'к' => 'k',
        'м' => 'm',
        'ո' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' | 'ѵ' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'А' | 'Α' => 'A',
        'В' | 'Β' => 'B',
        'С' | 'Ϲ' => 'C',
        'Е' | 'Ε' => 'E',
        'Н' | 'Η' => 'H',
        'І' | 'Ι' => 'I',
        'Ј' => 'J',
        'К' | 'Κ' => 'K',
        'М' | 'Μ' => 'M',
        'Ν' => 'N',
        'О' | 'Ο' => 'O',
        'Р' | 'Ρ' => 'P',
        'Ѕ' => 'S',
        'Т' | 'Τ' => 'T',
        'Х' | 'Χ' => 'X',
        'У' | 'Υ' => 'Y',
        'Ζ' => 'Z',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> String {
        Unmasked::of(text).map_or_else(|| text.to_owned(), |u| u.text)
    }

    #[test]
    fn hidden_words_read_as_a_client_shows_them() {
        assert_eq!(view("fal\u{200B}con"), "falcon");
        assert_eq!(view("fal\u{00AD}con"), "falcon");
        assert_eq!(view("f\u{200D}a\u{2063}l\u{FEFF}con"), "falcon");
        assert_eq!(view("\u{202E}noclaf"), "noclaf");
        assert_eq!(view("ｆａｌｃｏｎ"), "falcon");
        assert_eq!(view("fаlcon"), "falcon");
        assert_eq!(view("𝐟𝐚𝐥𝐜𝐨𝐧"), "falcon");
        assert_eq!(
            view("４111\u{00A0}1111\u{2009}1111 1111"),
            "4111 1111 1111 1111"
        );
        assert_eq!(view("ﬁnance"), "finance");
        assert_eq!(view("re\u{301}serve\u{301}"), "réservé");
        assert_eq!(view("fa\u{4CF}con"), "falcon");
        // A word wholly in letters drawn like Latin ones reads as Latin; one with a
        // letter no Latin one is drawn like is read as written.
        assert_eq!(view("сор мама ΚΑΙ"), "cop mama KAI");
        assert_eq!(view("сор fаlcon"), "cop falcon");
        assert_eq!(view("Мама мыла раму"), "Mama мыла pamy");
        assert_eq!(view("Αθήνα δέκα"), "Αθήνα δέκα");
        // What "fancy text" generators write.
        assert_eq!(view("ᴘᴀʏ ᴛʜᴇ ꜰᴇᴇ"), "pay the fee");
        assert_eq!(view("🅟🅐🅨 🅿🅰🆈 🅩"), "PAY PAY Z");
    }

    #[test]
    fn a_word_spelt_out_reads_as_the_word() {
        assert_eq!(view("the f a l c o n lands"), "the falcon lands");
        assert_eq!(view("f.a.l.c.o.n"), "falcon");
        assert_eq!(view("f. a. l. c. o. n."), "falcon.");
        assert_eq!(
            view("F-A-L-C-O-N  and  f\u{3000}a\u{3000}l"),
            "FALCON  and  fal"
        );
        assert_eq!(view("the U.S.A. team"), "the USA. team");
        assert_eq!(view("x = a b c"), "x = abc");
        // Two letters are no run; a longer word or a wider gap ends one.
        assert_eq!(view("a b and ab c d"), "a b and ab c d");
        assert_eq!(view("a b c    d e"), "abc    d e");
        assert_eq!(view("a b c, d e f"), "abc, def");
        let text = "say f a l c o n now";
        let u = Unmasked::of(text).expect("a view");
        let at = u.text.find("falcon").expect("the word");
        let r = u.original(text, at..at + 6).expect("a range");
        assert_eq!(&text[r], "f a l c o n");
    }

    #[test]
    fn plain_text_has_no_second_view() {
        assert!(Unmasked::of("plain ascii falcon").is_none());
        assert!(Unmasked::of("a b, c d and e").is_none());
        assert!(Unmasked::of("straße café 東京").is_none());
        assert!(Unmasked::of("thanks \u{2764}\u{FE0F} see you").is_none());
        assert!(Unmasked::of("\u{2764}\u{FE0F}fal\u{200B}con").is_some());
    }

    #[test]
    fn a_range_of_the_view_is_whole_characters_of_the_text() {
        let text = "say fal\u{200B}con, ｆａｌｃｏｎ!";
        let u = Unmasked::of(text).expect("a view");
        let words: Vec<&str> = u
            .text
            .match_indices("falcon")
            .filter_map(|(at, _)| text.get(u.original(text, at..at + 6)?))
            .collect();
        assert_eq!(words, ["fal\u{200B}con", "ｆａｌｃｏｎ"]);
        // A composed letter covers the marks it was written with.
        let text = "the re\u{301}serve\u{301}\u{200B} fund";
        let u = Unmasked::of(text).expect("a view");
        let at = u.text.find("réservé").expect("composed");
        let r = u.original(text, at..at + "réservé".len()).expect("a range");
        assert_eq!(&text[r], "re\u{301}serve\u{301}\u{200B}");
        assert_eq!(u.original(text, 0..0), None);
    }
}
