//! `custos-text`: a text as a reader sees it. Views of a text that undo what hides
//! words from a scanner but not from a reader: invisible format characters dropped
//! (zero-width spaces and joiners, soft hyphens, bidirectional controls, variation
//! selectors, tag characters, the delete and C1 control characters) and decorations (strike-through, underline, keycap
//! frames); every character in its compatibility form (NFKC: fullwidth letters and
//! digits, mathematical alphanumerics, ligatures, circled digits) and what "fancy text"
//! generators write with none (small capitals, letters in black circles and squares or
//! in parentheses) as the plain letter; every space separator a plain space; a word
//! spelt out a letter at a time (`f a l c o n`) as the word; a word in Latin and
//! Cyrillic letters in whichever has more of them; and, in a second view, letters drawn
//! like Latin ones as Latin where the text around them is Latin. Where directional
//! controls or right-to-left letters may draw a text otherwise than it is written, the
//! same in each order a client may draw it (the Unicode bidirectional algorithm, left
//! to right, right to left and each paragraph in its own direction). A client shows
//! `fal\u{200B}con`, `ｆａｌｃｏｎ`, `fаlcon` (a Cyrillic `а`), `send the рау` (all
//! Cyrillic) or `\u{202E}noclaf` (after a right-to-left override) as the words they
//! hide.
//!
//! Both readers of words use it, so what the rules find, a search finds:
//!
//! ```text
//!  a message's text ─┬─▶ as written ─────────┬─▶ policy: rules read every one
//!                    └─▶ Unmasked::views ────┘   archive: the index holds every one
//! ```
//!
//! One module: [`Unmasked`], with [`Unmasked::original`] taking a range of a view
//! back to the characters as written (a redaction masks those).

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a crash on peer data.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::ops::Range;

use unicode_bidi::{bidi_class, BidiClass, BidiInfo, Level};
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
    /// The views of `text` a reader may see where they differ from it, each different
    /// from the others: two at most for each order a client may draw it in, the order
    /// it is written in and, where directional controls may turn it around, each
    /// order [`reading_orders`] finds (at most three more):
    ///
    /// - as shown: invisible characters and decorations (strike-through, underline,
    ///   keycap frames) dropped, compatibility forms, "fancy text" letters and digits
    ///   plain, a word spelt out a letter at a time (along a line or down a column)
    ///   as the word, and a word written in
    ///   Latin and Cyrillic in whichever has more of its letters, Latin on a tie
    ///   (`fаlcon` is `falcon`, `откaт` with a Latin `a` is `откат`);
    /// - read as Latin: that, but a word in two scripts in Latin, a word every letter
    ///   of which is drawn like a Latin one (`рау`) in Latin unless the nearest words
    ///   around it not drawn so are in another script (`рот` in a Russian sentence
    ///   stays `рот`), and a combining mark no letter has built in read past after a
    ///   Latin letter.
    ///
    /// Empty for most text (all ASCII text but words spelt out or hidden by a delete
    /// character).
    pub fn views(text: &str) -> Vec<Unmasked> {
        // Most text needs no second reading: checked at a glance first. An invisible
        // character hides nothing unless it touches a letter or digit (an emoji's
        // variation selector does not).
        let hides = |(prev, c, next): (Option<char>, char, Option<char>)| {
            let touches = |x: Option<char>| x.is_some_and(is_word_char);
            (!c.is_ascii() || c == '\u{7F}')
                && ((is_invisible(c) && (touches(prev) || touches(next)))
                    || lays_out(c)
                    || c.is_whitespace()
                    || is_decoration(c)
                    || unbracketed(c) != c
                    || fancy(c) != c
                    || latin_lookalike(c) != c)
        };
        let plain = ((text.is_ascii() && !text.contains('\u{7F}'))
            || (!neighbours(text).any(hides)
                && is_nfkc_quick(text.chars()) == IsNormalized::Yes
                && !needs_layout(text)))
            && (!may_spell_out(text) || spelt_out(text.chars()).is_empty());
        if plain {
            return Vec::new();
        }
        // As written, and in each order a client may draw it where directional
        // controls may turn it around.
        let mut out: Vec<Unmasked> = Vec::new();
        Unmasked::views_in_order(text, text.char_indices(), &mut out);
        let orders = reading_orders(text);
        if !orders.is_empty() {
            let as_written: Vec<(usize, char)> = text
                .char_indices()
                .filter(|&(_, c)| !is_directional_control(c))
                .collect();
            for order in orders.into_iter().filter(|o| *o != as_written) {
                Unmasked::views_in_order(text, order.into_iter(), &mut out);
            }
        }
        out
    }

    /// Adds to `out` the views of `text` read in `order` (its characters, each with its
    /// byte offset) that differ from it and from those in `out`.
    fn views_in_order(
        text: &str,
        order: impl Iterator<Item = (usize, char)>,
        out: &mut Vec<Unmasked>,
    ) {
        // Each character with the combining marks after it, in its compatibility form
        // and composed (`e` and a combining acute are `é`), invisible ones and
        // decorations dropped; every character of the form is placed at the first of
        // those it came from.
        let mut chars: Vec<(char, usize)> = Vec::with_capacity(text.len());
        let mut segment = String::new();
        let mut segment_at = 0;
        let mut flush = |segment: &mut String, at: usize| {
            for d in segment.nfkc() {
                let d = match d {
                    d if is_line_break(d) => d,
                    d if d.is_whitespace() => ' ',
                    d => fancy(d),
                };
                chars.push((d, at));
            }
            segment.clear();
        };
        for (at, c) in order {
            if is_invisible(c) || is_decoration(c) {
                continue;
            }
            if canonical_combining_class(c) == 0 && !segment.is_empty() {
                flush(&mut segment, segment_at);
            }
            if segment.is_empty() {
                segment_at = at;
            }
            segment.push(unbracketed(c));
        }
        flush(&mut segment, segment_at);
        // Words, and what each is: the letters of a word in two scripts take the script
        // most of them are in, in both views; a word wholly in letters drawn like Latin
        // ones is Latin in the second, where the text around it is.
        let words = words_of(&chars);
        let latin_around = reads_latin(&words);
        let mut latin = chars.clone();
        for (i, w) in words.iter().enumerate() {
            let r = w.range.clone();
            match w.kind {
                Kind::Mixed { cyrillic: true } => {
                    for (c, _) in chars.get_mut(r.clone()).into_iter().flatten() {
                        *c = cyrillic_twin(*c);
                    }
                    for (c, _) in latin.get_mut(r).into_iter().flatten() {
                        *c = latin_lookalike(*c);
                    }
                }
                Kind::Mixed { cyrillic: false } => {
                    for v in [&mut chars, &mut latin] {
                        for (c, _) in v.get_mut(r.clone()).into_iter().flatten() {
                            *c = latin_lookalike(*c);
                        }
                    }
                }
                Kind::Drawn if latin_around.get(i).copied().unwrap_or(false) => {
                    for (c, _) in latin.get_mut(r).into_iter().flatten() {
                        *c = latin_lookalike(*c);
                    }
                }
                Kind::Drawn | Kind::Latin | Kind::Other | Kind::Unlettered => {}
            }
        }
        // A combining mark left on a Latin letter after composing (no letter has it
        // built in: `y` and U+0345) is read past, in the second view.
        let mut after_latin = false;
        latin.retain(|&(c, _)| {
            let mark = canonical_combining_class(c) != 0;
            let keep = !(mark && after_latin);
            if !mark {
                after_latin = is_latin(c);
            }
            keep
        });
        // A word spelt out a letter at a time reads as the word.
        for v in [chars, latin] {
            let gaps = spelt_out(v.iter().map(|&(c, _)| c));
            let view = Unmasked::from_chars(v, &gaps);
            if view.text != text && out.iter().all(|o| o.text != view.text) {
                out.push(view);
            }
        }
    }

    /// The view of `chars` with the characters at `gaps` left out.
    fn from_chars(chars: Vec<(char, usize)>, gaps: &[Range<usize>]) -> Unmasked {
        let mut text = String::with_capacity(chars.len());
        let mut map = Vec::with_capacity(chars.len());
        let mut gaps = gaps.iter().peekable();
        for (i, (c, at)) in chars.into_iter().enumerate() {
            while gaps.next_if(|g| g.end <= i).is_some() {}
            if gaps.peek().is_some_and(|g| g.contains(&i)) {
                continue;
            }
            text.push(c);
            map.extend(std::iter::repeat_n(at, c.len_utf8()));
        }
        Unmasked { text, map }
    }

    /// The whole characters of `text` (this view's original) that `r` of the view came
    /// from, the invisible ones between them included. Where directional controls turned
    /// the text around, the range runs from the first of them as written to the last;
    /// masking it whole keeps the controls ([`is_directional_control`]), or what follows
    /// would be drawn turned around.
    pub fn original(&self, text: &str, r: Range<usize>) -> Option<Range<usize>> {
        let came_from = self.map.get(r)?;
        let start = *came_from.iter().min()?;
        let last = *came_from.iter().max()?;
        // The last character, with the combining marks, invisible characters and
        // decorations after it.
        let mut rest = text.get(last..)?.char_indices();
        let (_, first) = rest.next()?;
        let len = rest
            .find(|&(_, c)| {
                canonical_combining_class(c) == 0 && !is_invisible(c) && !is_decoration(c)
            })
            .map_or(text.len() - last, |(n, _)| n);
        debug_assert!(len >= first.len_utf8());
        Some(start..last + len)
    }
}

/// Explicit directional formatting characters (UAX #9): the marks (LRM, RLM, ALM), the
/// embeddings and overrides with their end (PDF), and the isolates with theirs (PDI).
/// Drawn as nothing, they change the order in which a client draws what is around them;
/// a redaction keeps them where they are.
pub fn is_directional_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Directional controls that lay out what follows them until their end: embeddings,
/// overrides and isolates. An override draws the letters of a word backwards; the others
/// move whole words, or put the pieces of one together.
fn lays_out(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The directional marks (LRM, RLM, ALM).
fn is_mark(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Whether directional controls or right-to-left letters may draw `text` otherwise
/// than it is written, so that a word or number shows that is not written:
///
/// - it holds an embedding, override or isolate;
/// - or a directional mark with a letter or digit on both sides of it
///   (`con\u{200F}fal` in a right-to-left line draws `falcon`), or a digit after it
///   before any letter (`4539\u{200F}/0343` draws `45390343/`: digits after a
///   right-to-left mark are drawn in one right-to-left run with what is between, which
///   then leaves it);
/// - or groups of digits apart by a right-to-left letter or mark, or by spaces or other
///   punctuation than a number's own separators after one, with no left-to-right
///   letter between, [`REORDERED_DIGITS`] digits in all at least
///   (`\u{5D0} 1111 41111` draws `41111 1111 \u{5D0}` in a left-to-right line;
///   `card 4111\u{5D0} 11111` draws `card 411111111 \u{5D0}`).
///
/// What a client draws as nothing is looked past: invisible characters, combining
/// marks, controls. A mark anywhere else moves whole words at most; such marks are
/// common in text mixing Hebrew or Arabic with Latin (`\u{200E}sales.xlsx\u{200E}`),
/// and laying all of it out would cost a message of it about twice the time its rules
/// take.
fn needs_layout(text: &str) -> bool {
    // Without a control, a mark or a right-to-left letter, every line is drawn as
    // written, whichever its direction: checked at a glance first.
    if !text
        .chars()
        .any(|c| lays_out(c) || is_mark(c) || is_right_to_left(c))
    {
        return false;
    }
    let transparent =
        |c: char| is_invisible(c) || c.is_control() || canonical_combining_class(c) != 0;
    let mut after_word_char = false;
    // A mark met since the last letter, and whether a letter or digit touched it.
    let mut mark: Option<bool> = None;
    // Since the last left-to-right letter: whether a right-to-left letter or mark was
    // met, whether a group of digits was, whether one is being read, whether a group
    // came after another and such a letter or mark, and how many digits were met.
    let (mut rtl, mut group_before, mut in_group, mut reordered) = (false, false, false, false);
    let mut digits = 0usize;
    for c in text.chars() {
        if lays_out(c) {
            return true;
        }
        if is_mark(c) {
            let touched = after_word_char || mark == Some(true);
            mark = Some(touched);
            if c != '\u{200E}' {
                rtl = true;
                in_group = false;
            }
            continue;
        }
        if transparent(c) {
            continue;
        }
        if let Some(touched) = mark {
            if c.is_numeric() || (touched && is_word_char(c)) {
                return true;
            }
            if is_letter(c) {
                mark = None;
            } else {
                // Punctuation or a space: the mark still reaches digits after it.
                mark = Some(false);
            }
        }
        if c.is_numeric() {
            reordered |= !in_group && group_before && rtl;
            digits += 1;
            if reordered && digits >= REORDERED_DIGITS {
                return true;
            }
            (group_before, in_group) = (true, true);
        } else if is_letter(c) {
            rtl = is_right_to_left(c);
            if !rtl {
                (group_before, reordered, digits) = (false, false, 0);
            }
            in_group = false;
        } else if in_group
            && !matches!(bidi_class(c), BidiClass::CS | BidiClass::ES | BidiClass::ET)
        {
            in_group = false;
        }
        after_word_char = is_word_char(c);
    }
    false
}

/// Digits in groups a right-to-left letter may draw in another order than written,
/// from which the text is laid out: as many as the shortest number a rule is likely to
/// look for (a national identity number; a card has 13 or more), and more than two
/// years, which Hebrew and Arabic text holds often and which would cost laying that
/// text out (about as much again as its rules). A date with a time often has nine and
/// is laid out: that costs time, not a reading.
const REORDERED_DIGITS: usize = 9;

/// Whether letter `c` is of a right-to-left script (Hebrew, Arabic, Syriac, Thaana,
/// N'Ko and the others in Unicode's right-to-left blocks), by its block: every letter
/// there is of bidirectional class R or AL.
fn is_right_to_left(c: char) -> bool {
    matches!(
        c,
        '\u{0590}'..='\u{08FF}'
            | '\u{FB1D}'..='\u{FDFF}'
            | '\u{FE70}'..='\u{FEFE}'
            | '\u{10800}'..='\u{10FFF}'
            | '\u{1E800}'..='\u{1EFFF}'
    )
}

/// The orders, each different from the others, in which a reader may read `text`
/// where directional controls may draw it otherwise than it is written
/// ([`needs_layout`]); none elsewhere. A client draws a paragraph in the direction of
/// the element it puts the message in (most left to right; right to left in a Hebrew
/// or Arabic interface), or in each paragraph's own (UAX #9 rule P2: its first strong
/// character, a letter or a directional mark, not a digit nor what is inside an
/// isolate), as native toolkits do: each is an order here, the last only where the
/// paragraphs' own directions differ. See [`laid_out`] for each.
fn reading_orders(text: &str) -> Vec<Vec<(usize, char)>> {
    if !needs_layout(text) {
        return Vec::new();
    }
    let mut orders: Vec<Vec<(usize, char)>> = Vec::with_capacity(3);
    // Paragraph separators (bidirectional class B): with none, the paragraph's own
    // direction is one of the two.
    let paragraphs = text.contains([
        '\n', '\r', '\u{1C}', '\u{1D}', '\u{1E}', '\u{85}', '\u{2029}',
    ]);
    let own = paragraphs.then(|| BidiInfo::new(text, None)).filter(|own| {
        own.paragraphs.iter().any(|p| p.level.is_rtl())
            && own.paragraphs.iter().any(|p| p.level.is_ltr())
    });
    let each = [Level::ltr(), Level::rtl()].map(|base| BidiInfo::new(text, Some(base)));
    for info in each.iter().chain(own.as_ref()) {
        let order = laid_out(text, info);
        if !orders.contains(&order) {
            orders.push(order);
        }
    }
    orders
}

/// The characters of `text` (the text `info` was made of), each with its byte offset,
/// in the order a reader reads them: each line laid out as the Unicode bidirectional
/// algorithm draws it at the levels `info` resolved (UAX #9: a paragraph ends at a
/// paragraph separator, and a line at that or a line separator, U+2028), and what is
/// drawn then read left to right, but words of right-to-left scripts right to left
/// ([`read_line`]). So a word written backwards after a right-to-left override
/// (`\u{202E}noclaf`) reads `falcon`, a Hebrew word backwards after a left-to-right
/// override reads the right way round, and text whose controls change nothing reads as
/// written. The controls themselves are left out. Where a client wraps a long line is
/// not known here: each line is laid out whole.
fn laid_out(text: &str, info: &BidiInfo<'_>) -> Vec<(usize, char)> {
    let mut out = Vec::with_capacity(text.len());
    for para in &info.paragraphs {
        let Some(body) = text.get(para.range.clone()) else {
            continue;
        };
        if !needs_layout(body) {
            out.extend(
                body.char_indices()
                    .map(|(i, c)| (para.range.start + i, c))
                    .filter(|&(_, c)| !is_directional_control(c)),
            );
            continue;
        }
        let mut start = para.range.start;
        for (i, c) in body.char_indices() {
            let at = para.range.start + i;
            if c == '\u{2028}' || bidi_class(c) == BidiClass::B {
                read_line(text, start..at, para.level, info, &mut out);
                out.push((at, c));
                start = at + c.len_utf8();
            }
        }
        read_line(text, start..para.range.end, para.level, info, &mut out);
    }
    out
}

/// Adds the characters of bytes `line` of `text` to `out` in the order a reader reads
/// them (see [`laid_out`]): as drawn at the levels `info` resolved in a paragraph of
/// `level`, without the controls, left to right, but each run of words in a
/// right-to-left script (from a right-to-left letter to the last before a
/// left-to-right letter or a digit) right to left. Digits keep the order they are drawn
/// in: groups of digits apart by spaces after a right-to-left letter are drawn in the
/// other order (`\u{5D0} 1111 4111` draws `4111 1111 \u{5D0}` in a left-to-right line),
/// and a card number is read as it shows.
fn read_line(
    text: &str,
    line: Range<usize>,
    level: Level,
    info: &BidiInfo<'_>,
    out: &mut Vec<(usize, char)>,
) {
    use BidiClass::{AL, AN, BN, EN, L, NSM, R};
    let seen: Vec<(usize, char)> = drawn(
        text,
        line.clone(),
        level,
        &info.levels,
        &info.original_classes,
    )
    .into_iter()
    .filter(|&(_, c)| !is_directional_control(c))
    .collect();
    // Characters with the marks after them, and each one's class.
    let mut clusters: Vec<(BidiClass, Range<usize>)> = Vec::with_capacity(seen.len());
    for (k, &(at, c)) in seen.iter().enumerate() {
        let class = info
            .original_classes
            .get(at)
            .copied()
            .unwrap_or(BidiClass::ON);
        let joins =
            matches!(class, NSM | BN) || canonical_combining_class(c) != 0 || is_decoration(c);
        match clusters.last_mut() {
            Some(last) if joins => last.1.end = k + 1,
            _ => clusters.push((class, k..k + 1)),
        }
    }
    let mut k = 0;
    while k < clusters.len() {
        let rtl = |i: usize| clusters.get(i).is_some_and(|c| matches!(c.0, R | AL));
        let mut last = k;
        if rtl(k) {
            let mut i = k + 1;
            while let Some(c) = clusters.get(i) {
                if matches!(c.0, L | EN | AN) {
                    break;
                }
                if rtl(i) {
                    last = i;
                }
                i += 1;
            }
        }
        if let Some(run) = clusters.get(k..=last) {
            for (_, r) in run.iter().rev() {
                out.extend(seen.get(r.clone()).unwrap_or_default().iter().copied());
            }
        }
        k = last + 1;
    }
}

/// The characters of bytes `line` of `text`, each with its byte offset, in the left to
/// right order a client draws them at their resolved `levels` in a paragraph of level
/// `paragraph`: whitespace before a tab and at the line's end at the paragraph's level
/// (UAX #9 rule L1), then from the highest level down to the lowest odd one, every run
/// at that level or above reversed (rule L2). A character keeps the combining marks
/// after it and the characters the algorithm sets aside (rule X9: embedding and
/// override controls, zero-width and other boundary-neutral characters), in the order
/// written. `levels` and `classes` are per byte of `text`, as `unicode_bidi` gives
/// them.
fn drawn(
    text: &str,
    line: Range<usize>,
    paragraph: Level,
    levels: &[Level],
    classes: &[BidiClass],
) -> Vec<(usize, char)> {
    use BidiClass::{BN, FSI, LRE, LRI, LRO, NSM, PDF, PDI, RLE, RLI, RLO, S, WS};
    let Some(body) = text.get(line.clone()) else {
        return Vec::new();
    };
    let chars: Vec<(usize, char)> = body
        .char_indices()
        .map(|(i, c)| (line.start + i, c))
        .collect();
    let class_of = |at: usize| classes.get(at).copied().unwrap_or(BidiClass::ON);
    let mut level_of: Vec<u8> = chars
        .iter()
        .map(|&(at, _)| levels.get(at).map_or(0, |l| l.number()))
        .collect();
    // Rule L1, with the characters rule X9 set aside counted as whitespace.
    let mut trailing = true;
    for (k, &(at, _)) in chars.iter().enumerate().rev() {
        let class = class_of(at);
        let blank = matches!(
            class,
            WS | FSI | LRI | RLI | PDI | BN | LRE | RLE | LRO | RLO | PDF
        );
        if class == S {
            trailing = true;
        } else if !blank {
            trailing = false;
            continue;
        }
        if trailing {
            if let Some(l) = level_of.get_mut(k) {
                *l = paragraph.number();
            }
        }
    }
    // (level, the characters' positions in `chars`).
    let mut clusters: Vec<(u8, Range<usize>)> = Vec::with_capacity(chars.len());
    for (k, &(at, c)) in chars.iter().enumerate() {
        let attached = matches!(class_of(at), NSM | BN | LRE | RLE | LRO | RLO | PDF)
            || canonical_combining_class(c) != 0
            || is_decoration(c);
        match clusters.last_mut() {
            Some(last) if attached => last.1.end = k + 1,
            _ => clusters.push((level_of.get(k).copied().unwrap_or(0), k..k + 1)),
        }
    }
    // Clusters in a row at one level move together: a block, whose clusters are drawn
    // backwards after an odd number of reversals.
    struct Block {
        level: u8,
        clusters: Range<usize>,
        backwards: bool,
    }
    let mut blocks: Vec<Block> = Vec::new();
    for (k, &(level, _)) in clusters.iter().enumerate() {
        match blocks.last_mut() {
            Some(b) if b.level == level => b.clusters.end = k + 1,
            _ => blocks.push(Block {
                level,
                clusters: k..k + 1,
                backwards: false,
            }),
        }
    }
    // Between two levels the text has, every level reverses the same runs: an even
    // number of those reversals leaves them as they were. So each level the text has
    // is one pass over the blocks at most, however deep the nesting.
    let mut present = [false; 256];
    for b in &blocks {
        if let Some(p) = present.get_mut(usize::from(b.level)) {
            *p = true;
        }
    }
    let Some(lowest_odd) = (1..=u8::MAX)
        .step_by(2)
        .find(|&l| present.get(usize::from(l)) == Some(&true))
    else {
        return chars;
    };
    let mut below = lowest_odd - 1;
    let mut passes: Vec<u8> = Vec::new();
    for level in (lowest_odd..=u8::MAX).filter(|&l| present.get(usize::from(l)) == Some(&true)) {
        // Levels `below + 1 ..= level` each reverse the runs at `level` and above.
        if (level - below) % 2 == 1 {
            passes.push(level);
        }
        below = level;
    }
    for &level in passes.iter().rev() {
        let mut i = 0;
        while i < blocks.len() {
            let run = blocks.get(i..).map_or(0, |rest| {
                rest.iter().take_while(|b| b.level >= level).count()
            });
            if let Some(r) = blocks.get_mut(i..i + run) {
                r.reverse();
                for b in r {
                    b.backwards = !b.backwards;
                }
            }
            i += run.max(1);
        }
    }
    let cluster_chars = |k: usize| {
        clusters
            .get(k)
            .and_then(|(_, r)| chars.get(r.clone()))
            .unwrap_or_default()
            .iter()
            .copied()
    };
    let mut out = Vec::with_capacity(chars.len());
    for b in blocks {
        if b.backwards {
            out.extend(b.clusters.rev().flat_map(cluster_chars));
        } else {
            out.extend(b.clusters.flat_map(cluster_chars));
        }
    }
    out
}

/// Separators a word spelt out a letter at a time is written with (`f.a.l.c.o.n`),
/// besides whitespace.
const SPELLING_APART: &[char] = &[
    '.', '-', '_', '*', '/', '|', '+', '~', '·', '•', '∙', '⋅', '‐', '‑', '‒', '–', '—',
];

/// Where characters apart the letters of a word spelt out one at a time: a run of at
/// least three single letters or digits along a line, each apart from the next by one
/// to three characters of whitespace or [`SPELLING_APART`] (`f a l c o n`,
/// `F-A-L-C-O-N`, `f. a. l.`), or down a column, one a line. A reader reads the word.
/// Ranges of character positions, in order.
fn spelt_out(chars: impl Iterator<Item = char>) -> Vec<Range<usize>> {
    let mut runs = Runs::default();
    // The token being read: where it started, whether it is a word; and of a gap, how
    // many of its characters end a line.
    let mut token: Option<(usize, bool)> = None;
    let mut breaks = 0;
    let mut lines = 0;
    let mut marks = 0;
    let mut prev = '\0';
    let mut n = 0;
    for (i, c) in chars.enumerate() {
        n = i + 1;
        let after = std::mem::replace(&mut prev, c);
        let drawn_apart = is_spacing_modifier(c);
        let word = is_word_char(c) && !drawn_apart;
        let line_break = is_line_break(c);
        // Asked only of what is not a letter: most characters are.
        let apart = !word
            && (line_break || c.is_whitespace() || drawn_apart || SPELLING_APART.contains(&c));
        if !(word || apart) {
            // Anything else ends a run where it stands.
            if let Some((start, w)) = token.take() {
                runs.token(start..i, w, (breaks, lines, marks));
            }
            runs.gap = None;
            runs.end();
            continue;
        }
        match token {
            Some((_, w)) if w == word => {}
            Some((start, w)) => {
                runs.token(start..i, w, (breaks, lines, marks));
                token = Some((i, word));
                (breaks, lines, marks) = (0, 0, 0);
            }
            None => {
                token = Some((i, word));
                (breaks, lines, marks) = (0, 0, 0);
            }
        }
        breaks += usize::from(line_break);
        marks += usize::from(!word && !c.is_whitespace());
        // `\r\n` ends one line.
        lines += usize::from(line_break && !(c == '\n' && after == '\r'));
    }
    if let Some((start, w)) = token {
        runs.token(start..n, w, (breaks, lines, marks));
    }
    runs.end();
    runs.out
}

/// Whether `text` has as many single letters or digits (words one character long) as a
/// word [`spelt_out`] needs. Most text has fewer, and this count reads each character
/// once, where [`spelt_out`] asks several questions of it.
fn may_spell_out(text: &str) -> bool {
    let mut singles = 0;
    let mut run = 0;
    for c in text.chars() {
        if is_word_char(c) && !is_spacing_modifier(c) {
            run += 1;
            continue;
        }
        singles += usize::from(run == 1);
        if singles >= Runs::MIN_LETTERS {
            return true;
        }
        run = 0;
    }
    singles + usize::from(run == 1) >= Runs::MIN_LETTERS
}

/// The state of [`spelt_out`].
#[derive(Default)]
struct Runs {
    /// The single letters of the current run, and the gaps between them.
    letters: usize,
    gaps: Vec<Range<usize>>,
    /// Whether the current run goes down a column (its gaps are line breaks) rather
    /// than along a line; `None` until its first gap.
    down: Option<bool>,
    /// The gap just read, when it can part two letters of a run, and whether it is a
    /// line break.
    gap: Option<(Range<usize>, bool)>,
    out: Vec<Range<usize>>,
}

impl Runs {
    /// Letters a run has at least.
    const MIN_LETTERS: usize = 3;
    /// Characters between two of its letters at most.
    const MAX_APART: usize = 3;

    /// A word (`word`) or a gap of separators at positions `r` has been read; of a
    /// gap's characters, `breaks` are line breaks, ending `lines` lines, and `marks` are
    /// not whitespace. A gap is along a line (no line break) or down a column (one line
    /// break, `\r\n` as one, with at most a few spaces a reader cannot see around it);
    /// a run keeps to one of the two, so a table of digits is not read across its rows.
    fn token(
        &mut self,
        r: Range<usize>,
        word: bool,
        (breaks, lines, marks): (usize, usize, usize),
    ) {
        let len = r.end - r.start;
        if !word {
            let down = breaks > 0;
            let fits = if down {
                lines == 1 && marks == 0 && len - breaks <= Self::MAX_APART
            } else {
                len <= Self::MAX_APART
            };
            if fits {
                self.gap = Some((r, down));
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
            Some((g, down)) if self.letters > 0 && self.down.is_none_or(|d| d == down) => {
                self.gaps.push(g);
                self.letters += 1;
                self.down = Some(down);
            }
            // A turn from a line to a column or back, after too few letters to be a
            // run: the letter before the gap starts the new run with this one (`B` at
            // a line's end does not take the `f` of `f a l c o n` below it).
            Some((g, down)) if self.letters > 0 && self.letters < Self::MIN_LETTERS => {
                self.gaps.clear();
                self.gaps.push(g);
                self.letters = 2;
                self.down = Some(down);
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
        self.down = None;
    }
}

/// What a word of a text is written in, for the views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// No letter drawn like one of another script: read as written.
    Latin,
    /// Latin letters and letters drawn like Latin ones, Cyrillic the most of them
    /// (`cyrillic`) or not.
    Mixed { cyrillic: bool },
    /// Every letter drawn like a Latin one, none Latin (`рау`, `рот`).
    Drawn,
    /// Letters of another script, some drawn like no Latin one (`мыла`, `Αθήνα`, `東京`).
    Other,
    /// No letter (digits, punctuation, spaces).
    Unlettered,
}

/// A word of a view's characters: a run of letters and digits (or one other
/// character), and what it is written in.
struct Word {
    range: Range<usize>,
    kind: Kind,
}

fn words_of(chars: &[(char, usize)]) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let end = chars
            .get(start..)
            .and_then(|rest| rest.iter().position(|&(c, _)| !is_word_char(c)))
            .map_or(chars.len(), |n| start + n.max(1));
        let letters = chars
            .get(start..end)
            .into_iter()
            .flatten()
            .map(|&(c, _)| c)
            .filter(|&c| is_letter(c) && canonical_combining_class(c) == 0);
        let (mut latin, mut drawn, mut other, mut cyrillic) = (0usize, 0usize, 0usize, 0usize);
        for c in letters {
            if is_latin(c) {
                latin += 1;
            } else if latin_lookalike(c) != c {
                drawn += 1;
            } else {
                other += 1;
            }
            if ('\u{0400}'..='\u{052F}').contains(&c) {
                cyrillic += 1;
            }
        }
        let kind = match (latin, drawn, other) {
            (0, 0, 0) => Kind::Unlettered,
            (_, 0, _) if latin > 0 => Kind::Latin,
            (0, _, 0) => Kind::Drawn,
            (0, _, _) => Kind::Other,
            _ => Kind::Mixed {
                cyrillic: cyrillic > latin,
            },
        };
        out.push(Word {
            range: start..end,
            kind,
        });
        start = end;
    }
    out
}

/// For each word, whether one drawn wholly in letters like Latin ones reads as Latin:
/// the nearest word with letters on either side that is not drawn so is Latin, or
/// there is none on either side. In a Russian sentence `рот` is read as Russian. Two
/// passes over the words, whatever their number.
fn reads_latin(words: &[Word]) -> Vec<bool> {
    let script = |w: &Word| match w.kind {
        Kind::Drawn | Kind::Unlettered => None,
        Kind::Latin | Kind::Mixed { cyrillic: false } => Some(true),
        Kind::Mixed { cyrillic: true } | Kind::Other => Some(false),
    };
    let mut before = Vec::with_capacity(words.len());
    let mut nearest = None;
    for w in words {
        before.push(nearest);
        nearest = script(w).or(nearest);
    }
    let mut out = vec![false; words.len()];
    let mut nearest = None;
    for (i, w) in words.iter().enumerate().rev() {
        let b = before.get(i).copied().flatten();
        if let Some(o) = out.get_mut(i) {
            *o = match (b, nearest) {
                (None, None) => true,
                (b, a) => b == Some(true) || a == Some(true),
            };
        }
        nearest = script(w).or(nearest);
    }
    out
}

/// Characters below this are classed from a table made once: Latin, Greek, Cyrillic,
/// Armenian, the scripts most text a view reads is in. The standard library finds
/// each non-ASCII one by a search of its tables, which was a third of the time a
/// Russian message took to read.
const TABLED: u32 = 0x600;

/// Which characters below [`TABLED`] are letters or digits, and which are letters.
struct Classes {
    word: [u64; TABLED as usize / 64],
    letter: [u64; TABLED as usize / 64],
}

fn classes() -> &'static Classes {
    static CLASSES: std::sync::OnceLock<Classes> = std::sync::OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut out = Classes {
            word: [0; TABLED as usize / 64],
            letter: [0; TABLED as usize / 64],
        };
        for (i, c) in (0..TABLED).filter_map(|i| Some((i as usize, char::from_u32(i)?))) {
            if let Some(w) = out.word.get_mut(i / 64) {
                *w |= u64::from(c.is_alphanumeric()) << (i % 64);
            }
            if let Some(w) = out.letter.get_mut(i / 64) {
                *w |= u64::from(c.is_alphabetic()) << (i % 64);
            }
        }
        out
    })
}

/// Whether `c` is in the table `bits` (`c` below [`TABLED`]).
fn tabled(bits: &[u64], c: char) -> bool {
    let i = u32::from(c) as usize;
    bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
}

/// `char::is_alphanumeric`, from a table for the common scripts.
fn is_word_char(c: char) -> bool {
    if u32::from(c) < TABLED {
        tabled(&classes().word, c)
    } else {
        c.is_alphanumeric()
    }
}

/// `char::is_alphabetic`, from a table for the common scripts.
fn is_letter(c: char) -> bool {
    if u32::from(c) < TABLED {
        tabled(&classes().letter, c)
    } else {
        c.is_alphabetic()
    }
}

/// A letter of the Latin script (ASCII, Latin-1, Latin Extended-A and -B, IPA's
/// letters, Latin Extended Additional), not one drawn like another's.
fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic()
        || (is_letter(c)
            && matches!(c, '\u{00C0}'..='\u{02AF}' | '\u{1E00}'..='\u{1EFF}')
            && latin_lookalike(c) == c)
}

/// Marks a "fancy text" generator draws over, under or around a letter or digit
/// (strike-through, slash, underline, overline, a keycap's or a circle's frame): a
/// reader reads the character under them. Modifier letters drawn as punctuation (`ʼ`,
/// `ː`) are letters of words (Ukrainian `мʼясо`, Hawaiian `ʻokina`) and stay.
fn is_decoration(c: char) -> bool {
    matches!(
        c,
        '\u{0305}'
            | '\u{0332}'..='\u{0338}'
            | '\u{033D}'
            | '\u{0359}'
            | '\u{035F}'
            | '\u{0488}'
            | '\u{0489}'
            | '\u{20D2}'
            | '\u{20D3}'
            | '\u{20DD}'..='\u{20E6}'
            | '\u{A670}'..='\u{A672}'
    )
}

/// Modifier letters drawn as a dot, a colon or a stroke (`ꓸ`, `ː`, `ˈ`, `ʼ`): letters
/// of the words they are in (Ukrainian `мʼясо`), but between single letters they part
/// a word spelt out (`fꓸaꓸlꓸcꓸoꓸn`), as punctuation would.
fn is_spacing_modifier(c: char) -> bool {
    matches!(
        c,
        '\u{02B9}'..='\u{02BF}' | '\u{02C8}'..='\u{02D1}' | '\u{A4F8}'..='\u{A4FF}' | '\u{A78F}'
    )
}

/// Whitespace that ends a line: a view keeps it (a word spelt out runs along a line or
/// down a column, not both, and a number's digit groups do not run over a line's end).
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// `c`, the character so far past `first` in a block of letters or digits, as the
/// ASCII one as far past `to` (`c` itself should that not be one).
fn in_block(c: char, first: char, to: u8) -> char {
    u32::from(c)
        .checked_sub(u32::from(first))
        .and_then(|d| u8::try_from(d).ok())
        .and_then(|d| to.checked_add(d))
        .filter(u8::is_ascii_alphanumeric)
        .map_or(c, char::from)
}

/// A letter in parentheses (`⒜`, `🄐`) as the letter, before its compatibility form
/// (which is the letter between two parentheses, three characters).
fn unbracketed(c: char) -> char {
    match c {
        '\u{249C}'..='\u{24B5}' => in_block(c, '\u{249C}', b'a'),
        '\u{1F110}'..='\u{1F129}' => in_block(c, '\u{1F110}', b'A'),
        other => other,
    }
}

/// The plain letter or digit a "fancy text" generator's character stands for where
/// it has no compatibility form: small capitals, letters in black circles and squares,
/// digits in black and sans-serif circles.
fn fancy(c: char) -> char {
    match c {
        '\u{1F150}'..='\u{1F169}' => in_block(c, '\u{1F150}', b'A'),
        '\u{1F170}'..='\u{1F189}' => in_block(c, '\u{1F170}', b'A'),
        '\u{2776}'..='\u{277E}' => in_block(c, '\u{2776}', b'1'),
        '\u{2780}'..='\u{2788}' => in_block(c, '\u{2780}', b'1'),
        '\u{278A}'..='\u{2792}' => in_block(c, '\u{278A}', b'1'),
        '\u{24F5}'..='\u{24FD}' => in_block(c, '\u{24F5}', b'1'),
        '\u{24FF}' | '\u{1F10C}' => '0',
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
        'ǫ' | 'ꞯ' => 'q',
        'ʀ' => 'r',
        'ꜱ' => 's',
        'ᴛ' => 't',
        'ᴜ' => 'u',
        'ᴠ' => 'v',
        'ᴡ' => 'w',
        'ʏ' => 'y',
        'ᴢ' => 'z',
        other => other,
    }
}

/// The Cyrillic letter a Latin one is drawn as (the same glyph in the common fonts),
/// for a word mostly in Cyrillic; any other character as it is.
fn cyrillic_twin(c: char) -> char {
    match c {
        'a' => 'а',
        'c' => 'с',
        'e' => 'е',
        'h' => 'һ',
        'i' => 'і',
        'j' => 'ј',
        'o' => 'о',
        'p' => 'р',
        's' => 'ѕ',
        'x' => 'х',
        'y' => 'у',
        'A' => 'А',
        'B' => 'В',
        'C' => 'С',
        'E' => 'Е',
        'H' => 'Н',
        'I' => 'І',
        'J' => 'Ј',
        'K' => 'К',
        'M' => 'М',
        'O' => 'О',
        'P' => 'Р',
        'S' => 'Ѕ',
        'T' => 'Т',
        'X' => 'Х',
        'Y' => 'У',
        other => other,
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
/// are not whitespace, and the delete and C1 control characters but the next-line one,
/// which XML lets through and browsers do not draw): a word written with one inside
/// reads as the word.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{007F}'..='\u{0084}'
            | '\u{0086}'..='\u{009F}'
            | '\u{00AD}'
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

/// The Latin letter a letter of another script is drawn as, in the common fonts:
/// Cyrillic, Greek and Armenian letters, and the Latin letters of other alphabets
/// (`ı`, `ɑ`) drawn like a plain one, from Unicode's confusables list where it pairs
/// one letter with one; any other character as it is. Not every pair of the list is
/// here: a letter missing keeps a word from being read as Latin.
fn latin_lookalike(c: char) -> char {
    match c {
        'а' | 'α' | 'ɑ' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'ɡ' => 'g',
        'һ' | 'հ' => 'h',
        'і' | 'ι' | 'ı' | 'ɩ' => 'i',
        'ӏ' | 'Ӏ' => 'l',
        'ј' | 'ϳ' => 'j',
        'κ' | 'к' => 'k',
        'м' => 'm',
        'ո' | 'η' => 'n',
        'о' | 'ο' | 'σ' | 'օ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' | 'ѵ' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' | 'ү' => 'y',
        'А' | 'Α' => 'A',
        'В' | 'Β' => 'B',
        'С' | 'Ϲ' => 'C',
        'Е' | 'Ε' => 'E',
        'Н' | 'Η' => 'H',
        'І' | 'Ι' => 'I',
        'Ј' | 'Ϳ' => 'J',
        'К' | 'Κ' => 'K',
        'М' | 'Μ' => 'M',
        'Ν' => 'N',
        'О' | 'Ο' | 'Օ' => 'O',
        'Р' | 'Ρ' => 'P',
        'Ԛ' => 'Q',
        'Ѕ' => 'S',
        'Т' | 'Τ' => 'T',
        'Ԝ' => 'W',
        'Х' | 'Χ' => 'X',
        'У' | 'Υ' | 'Ү' => 'Y',
        'Ζ' => 'Z',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The views' texts.
    fn views(text: &str) -> Vec<String> {
        Unmasked::views(text).into_iter().map(|u| u.text).collect()
    }

    /// The last view (read as Latin where that differs), or the text.
    fn view(text: &str) -> String {
        Unmasked::views(text)
            .pop()
            .map_or_else(|| text.to_owned(), |u| u.text)
    }

    /// The one view of a text whose views are the same.
    fn one(text: &str) -> Unmasked {
        let mut v = Unmasked::views(text);
        assert_eq!(v.len(), 1, "{text}: {:?}", views(text));
        v.remove(0)
    }

    #[test]
    fn hidden_words_read_as_a_client_shows_them() {
        assert_eq!(view("fal\u{200B}con"), "falcon");
        assert_eq!(view("fal\u{00AD}con"), "falcon");
        assert_eq!(view("f\u{200D}a\u{2063}l\u{FEFF}con"), "falcon");
        assert_eq!(view("fa\u{7F}l\u{80}c\u{9F}on"), "falcon");
        assert_eq!(view("one\u{85}two"), "one\u{85}two");
        assert_eq!(view("\u{202E}noclaf"), "falcon");
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
        // What "fancy text" generators write.
        assert_eq!(view("ᴘᴀʏ ᴛʜᴇ ꜰᴇᴇ"), "pay the fee");
        assert_eq!(view("🅟🅐🅨 🅿🅰🆈 🅩"), "PAY PAY Z");
        assert_eq!(view("⒫⒜⒴ 🄟🄐🄨"), "pay PAY");
        assert_eq!(
            view("p\u{336}a\u{336}y\u{336} p\u{332}a\u{332}y\u{332}"),
            "pay pay"
        );
        assert_eq!(view("❹❶ ➍➊ 4\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}"), "41 41 41");
        assert_eq!(view("bıtcoin pay\u{345}"), "bitcoin pay");
        assert_eq!(view("p\u{20E0}a\u{20E0}y\u{20E0}"), "pay");
        // A modifier letter is a letter of its word.
        assert!(views("мʼя\u{200B}со").contains(&"мʼясо".to_owned()));
    }

    /// Directional controls: what they turn around reads as a client draws it; what
    /// they leave in order reads as written.
    #[test]
    fn text_turned_around_by_directional_controls_reads_as_drawn() {
        let reads = |text: &str, want: &str| {
            let seen = views(text);
            assert!(seen.iter().any(|v| v == want), "{text:?} reads {seen:?}");
        };
        reads("say \u{202E}noclaf\u{202C} now", "say falcon now");
        reads("say\u{202E} noclaf", "sayfalcon ");
        // Up to the line's end, and each line on its own.
        reads("\u{202E}ab\nc\u{202E}de", "ba\nced");
        // Nested: an embedding keeps its own direction inside the override.
        reads("\u{202E}emca \u{202A}sell\u{202C}\u{202C}", "sell acme");
        // Combining marks stay on their letters.
        reads("\u{202E}noc\u{301}laf", "falćon");
        // A Hebrew word backwards after a left-to-right override, and Hebrew as ever
        // after a right-to-left one.
        let shalom = "\u{5E9}\u{5DC}\u{5D5}\u{5DD}";
        let backwards: String = shalom.chars().rev().collect();
        reads(&format!("\u{202D}{backwards}\u{202C}"), shalom);
        reads(
            &format!("\u{202D}{backwards}\u{202C} ok"),
            &format!("{shalom} ok"),
        );
        reads(
            &format!("\u{202E}{shalom}\u{202C} ok"),
            &format!("{shalom} ok"),
        );
        // An isolate drawn right to left puts the number in it at its left: read so.
        reads(
            &format!("abc \u{2067}{shalom} 12\u{2069} def"),
            &format!("abc 12 {shalom} def"),
        );
        // Whitespace at a line's end and before a tab is drawn at the paragraph's
        // level, and a line separator ends a line: none parts the word.
        reads("fal\u{202E}noc ", "falcon ");
        reads("fal\u{202E}noc \nbye", "falcon \nbye");
        reads("fal\u{202E}noc\tx", "falcon x");
        reads("fal\u{202E}noc\u{2028}x", "falcon\u{2028}x");
        // A mark between the pieces of a word draws them together in a right-to-left
        // line, and keeps them apart in a left-to-right one: both are read.
        reads("\u{200F}con\u{200F}fal", "falcon");
        reads("\u{5D0} con\u{200F}fal", "falcon \u{5D0}");
        reads("con\u{200F}fal", "falcon");
        reads("\u{200F}fal\u{200F}con", "falcon");
        // Marks beside a space or a stop are not laid out.
        assert!(reading_orders("\u{5D0} \u{200E}sales.xlsx\u{200E} \u{5D1}").is_empty());
        assert!(!reading_orders("con\u{200B}\u{200F}\u{200B}fal").is_empty());
        assert!(!reading_orders("con\u{200F}\u{301}fal").is_empty());
        // Groups of digits after a right-to-left letter are drawn in the other order.
        reads("\u{5D0} 1111 1111 1111 4111", "4111 1111 1111 1111 \u{5D0}");
        reads(
            "card 41111111\u{5D0} 11111111",
            "card 4111111111111111 \u{5D0}",
        );
        reads(
            "\u{200F}1111 1111 1111 4111 \u{5D0}",
            "\u{5D0} 4111 1111 1111 1111",
        );
        // Two years are too few digits to lay a text out for.
        assert!(reading_orders("\u{5D0} 2025 \u{5D1} 2026").is_empty());
        assert!(!reading_orders("\u{5D0} 2025 \u{5D1} 20261").is_empty());
        // One number, its separators in it, is drawn whole.
        assert!(reading_orders("\u{5D0} 1,000.50 \u{5D1}").is_empty());
        assert!(reading_orders("\u{5D0} 2026-05-12 ok 7 \u{5D1}").is_empty());
        // Digits after a right-to-left mark are drawn before what is between.
        reads("agent\u{200F}.007", "agent007.");
        reads("card 4539\u{200F} / 0343", "card 45390343 / ");
        // Paragraphs of both directions: each in its own, as a native client draws
        // them (the second line right to left draws `falcon`).
        reads("\u{5D0}\n\u{200F}con\u{200F}fal", "\u{5D0}\nfalcon");
        // Text the controls do not turn around reads as written, without them.
        for natural in [
            format!("\u{200F}{shalom} falcon 123, {shalom}."),
            format!("abc \u{2067}{shalom}\u{2069} def"),
            format!("\u{202B}{shalom} abc def\u{202C}"),
            "x \u{2066}(1)\u{2069} falcon-plan".to_owned(),
        ] {
            let plain: String = natural
                .chars()
                .filter(|&c| !is_directional_control(c))
                .collect();
            reads(&natural, &plain);
        }
        // The range of a word read turned around is the word as written.
        let turned = |text: &str, word: &str| {
            let u = Unmasked::views(text)
                .into_iter()
                .find(|v| v.text.contains(word))
                .expect("read");
            let at = u.text.find(word).expect("read");
            u.original(text, at..at + word.len()).expect("a range")
        };
        let text = "so \u{202E}noclaf\u{202C}!";
        assert_eq!(&text[turned(text, "falcon")], "noclaf\u{202C}");
        let text = "fal\u{202E}noc\u{202C}.";
        assert_eq!(&text[turned(text, "falcon")], "fal\u{202E}noc\u{202C}");
    }

    /// Nesting as deep as the algorithm goes (125 levels, and a digit one above) and
    /// more is read without a panic.
    #[test]
    fn the_deepest_nesting_is_read() {
        let mut text: String = (0..140)
            .map(|i| if i % 2 == 0 { '\u{2067}' } else { '\u{2066}' })
            .collect();
        text.push('9');
        assert_eq!(view(&text), "9");
        let text = format!("{}noclaf", "\u{202E}\u{202D}".repeat(100));
        assert!(views(&text).contains(&"noclaf".to_owned()));
    }

    proptest::proptest! {
        /// Whatever mix of controls, scripts and marks a text holds, its reading order
        /// holds each of its characters but the controls once, each at its own offset.
        #[test]
        fn the_reading_order_is_the_text_rearranged(
            text in "[ab1 \n\u{5D0}\u{5D1}\u{627}\u{301}\u{200B}\u{061C}\u{200E}\u{200F}\u{202A}-\u{202E}\u{2066}-\u{2069}]{0,40}",
        ) {
            let orders = reading_orders(&text);
            proptest::prop_assert!(orders.len() <= 3);
            if text.chars().any(lays_out) {
                proptest::prop_assert!(!orders.is_empty());
            }
            let want: Vec<usize> = text
                .char_indices()
                .filter(|&(_, c)| !is_directional_control(c))
                .map(|(at, _)| at)
                .collect();
            for order in orders {
                let mut seen: Vec<usize> = order.iter().map(|&(at, _)| at).collect();
                for &(at, c) in &order {
                    proptest::prop_assert!(text.get(at..).is_some_and(|t| t.starts_with(c)));
                }
                seen.sort_unstable();
                proptest::prop_assert_eq!(&seen, &want);
            }
            let _ = Unmasked::views(&text);
        }

        /// A text the quick count passes over has no word spelt out.
        #[test]
        fn too_few_single_letters_spell_out_nothing(
            text in "[ab1_é \n\r.\\-|·\u{2B9}\u{200B},]{0,40}",
        ) {
            if !may_spell_out(&text) {
                proptest::prop_assert!(spelt_out(text.chars()).is_empty(), "{:?}", text);
            }
        }
    }

    /// The views of a long text take one pass over its words, however many are drawn
    /// in look-alike letters (each looks for the nearest other word on either side).
    #[test]
    fn a_long_text_of_look_alike_words_is_read_in_linear_passes() {
        let text = "рау ".repeat(64 * 1024);
        let seen = views(&text);
        assert!(seen.len() == 1 && seen[0] == "pay ".repeat(64 * 1024));
        let text = format!("{}мыла", "рау ".repeat(64 * 1024));
        assert!(views(&text).is_empty());
    }

    #[test]
    fn a_spelt_out_word_runs_along_a_line_or_down_a_column() {
        assert_eq!(views("4 3 3\n4 5 2"), ["433\n452"]);
        assert_eq!(view("a b c\nd e f"), "abc\ndef");
        // Down a column, one letter a line, it reads as the word too.
        assert_eq!(view("f\na\nl\nc\no\nn"), "falcon");
        assert_eq!(view("f\r\na\r\nl\r\n"), "fal\r\n");
        assert_eq!(view("4\n1\n1\n1 2 3"), "4111\n23".replace("\n23", " 2 3"));
        assert!(views("a\n\nb\n\nc").is_empty());
        // A single letter ending the line above does not take the word's first one.
        assert_eq!(view("plan B\nf a l c o n"), "plan B\nfalcon");
        assert_eq!(view("a b\nc\nd"), "a bcd");
        // Spaces a reader cannot see at a line's end or start do not part a column.
        assert_eq!(view("f \na\n l \nc"), "falc");
        // Modifier letters drawn as dots or colons part the letters of a spelt word.
        assert_eq!(view("fꓸaꓸlꓸcꓸoꓸn, pːaːy"), "falcon, pay");
        assert_eq!(view("f–a–l–c—o—n"), "falcon");
    }

    #[test]
    fn a_word_in_two_scripts_takes_the_one_most_of_its_letters_are_in() {
        assert_eq!(views("fаlcon"), ["falcon"]);
        assert_eq!(views("откaт"), ["откат", "otkat"]);
        // Hidden as well: still found in its own script.
        assert_eq!(views("от\u{200B}кат"), ["откат", "otkat"]);
        assert_eq!(views("соміѕіóո"), ["comisión"]);
    }

    #[test]
    fn a_word_drawn_like_latin_is_read_as_latin_where_the_text_around_it_is() {
        assert_eq!(views("send the рау now"), ["send the pay now"]);
        assert_eq!(views("рау"), ["pay"]);
        assert_eq!(views("сор fаlcon"), ["сор falcon", "cop falcon"]);
        // In Russian or Greek it stays as written: no view at all.
        assert!(views("у него болит рот").is_empty());
        assert!(views("Витамины в соке").is_empty());
        assert!(views("Мама мыла раму").is_empty());
        assert!(views("Αθήνα δέκα").is_empty());
        // Either side in Latin is enough.
        assert_eq!(views("рот болит, рау now"), ["рот болит, pay now"]);
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
        let u = one(text);
        let at = u.text.find("falcon").expect("the word");
        let r = u.original(text, at..at + 6).expect("a range");
        assert_eq!(&text[r], "f a l c o n");
    }

    #[test]
    fn the_class_tables_agree_with_the_standard_library() {
        for c in (0..TABLED + 16).filter_map(char::from_u32) {
            assert_eq!(is_word_char(c), c.is_alphanumeric(), "{c:?}");
            assert_eq!(is_letter(c), c.is_alphabetic(), "{c:?}");
        }
    }

    #[test]
    fn plain_text_has_no_second_view() {
        assert!(views("plain ascii falcon").is_empty());
        assert!(views("a b, c d and e").is_empty());
        assert!(views("straße café 東京").is_empty());
        assert!(views("thanks \u{2764}\u{FE0F} see you").is_empty());
        assert!(!views("\u{2764}\u{FE0F}fal\u{200B}con").is_empty());
    }

    #[test]
    fn a_range_of_the_view_is_whole_characters_of_the_text() {
        let text = "say fal\u{200B}con, ｆａｌｃｏｎ!";
        let u = one(text);
        let words: Vec<&str> = u
            .text
            .match_indices("falcon")
            .filter_map(|(at, _)| text.get(u.original(text, at..at + 6)?))
            .collect();
        assert_eq!(words, ["fal\u{200B}con", "ｆａｌｃｏｎ"]);
        // A composed letter covers the marks it was written with.
        let text = "the re\u{301}serve\u{301}\u{200B} fund";
        let u = one(text);
        let at = u.text.find("réservé").expect("composed");
        let r = u.original(text, at..at + "réservé".len()).expect("a range");
        assert_eq!(&text[r], "re\u{301}serve\u{301}\u{200B}");
        assert_eq!(u.original(text, 0..0), None);
        // A decorated letter covers its decoration, a keycap's frame too.
        let text = "p\u{336}a\u{336}y\u{336}!";
        let u = one(text);
        let r = u.original(text, 0..3).expect("a range");
        assert_eq!(&text[r], "p\u{336}a\u{336}y\u{336}");
        let text = "7\u{FE0F}\u{20E3}!";
        let u = one(text);
        let r = u.original(text, 0..1).expect("a range");
        assert_eq!(&text[r], "7\u{FE0F}\u{20E3}");
    }
}
