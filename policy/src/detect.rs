//! Built-in detectors: payment card numbers (Luhn), IBAN (ISO 7064 mod 97-10), US SSN
//! and e-mail addresses. Each returns the byte ranges it found, so a rule can redact
//! exactly those. They scan bytes with bounds-checked access: message text comes from
//! peers.

use std::ops::Range;

use regex::Regex;

/// A built-in detector, by its rules-file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// `payment-card`
    PaymentCard,
    /// `iban`
    Iban,
    /// `us-ssn`
    UsSsn,
    /// `email`
    Email,
}

impl Detector {
    pub const ALL: [Detector; 4] = [
        Detector::PaymentCard,
        Detector::Iban,
        Detector::UsSsn,
        Detector::Email,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::PaymentCard => "payment-card",
            Detector::Iban => "iban",
            Detector::UsSsn => "us-ssn",
            Detector::Email => "email",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The compiled state detectors need (only the e-mail pattern).
#[derive(Debug, Clone)]
pub(crate) struct Detectors {
    email: Regex,
}

impl Detectors {
    pub(crate) fn new() -> Result<Self, regex::Error> {
        Ok(Detectors {
            // Local part and a dotted domain with an alphabetic TLD. Deliberately wider
            // than RFC 5322's common subset: a compliance filter errs towards finding.
            email: Regex::new(
                r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
            )?,
        })
    }

    pub(crate) fn find(&self, d: Detector, text: &str) -> Vec<Range<usize>> {
        // An address has an `@`: most messages have none, and a byte search is cheaper
        // than the pattern's. (The number detectors go from digit to digit themselves.)
        if d == Detector::Email && !text.contains('@') {
            return Vec::new();
        }
        match d {
            Detector::PaymentCard => payment_cards(text),
            Detector::Iban => ibans(text),
            Detector::UsSsn => us_ssns(text),
            Detector::Email => self.email.find_iter(text).map(|m| m.range()).collect(),
        }
    }
}

/// Luhn check over ASCII digits.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A run of digit groups apart by one or two spaces, hyphens or dots
/// (`4111 1111-1111.1111`, `4111  1111`): each group's byte range.
fn digit_groups(bytes: &[u8], start: usize) -> (Vec<Range<usize>>, usize) {
    let is_sep = |b: Option<&u8>| matches!(b, Some(b' ' | b'-' | b'.'));
    let mut groups = Vec::new();
    let mut i = start;
    loop {
        let g_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        groups.push(g_start..i);
        // Continue only across separators that are followed by a digit.
        let gap = match (is_sep(bytes.get(i)), is_sep(bytes.get(i + 1))) {
            (true, true) => 2,
            (true, false) => 1,
            _ => return (groups, i),
        };
        if !bytes.get(i + gap).is_some_and(u8::is_ascii_digit) {
            return (groups, i);
        }
        i += gap;
    }
}

/// Card numbers: 13–19 digits, the first 2–6 (the issuer ranges of the card networks in
/// use), passing Luhn, written plain or in groups apart by one or two spaces, hyphens or
/// dots.
/// Every window of whole groups is tried, so a card followed or preceded by another
/// number (`4111 1111 1111 1111 2027`) is still found; a run of more than 19 digits with
/// no separator is not a card number. A run right after a `+` is a telephone number in
/// international form (E.164: at most 15 digits, country code included): a window from
/// its start of at most 15 digits is not a card (one in ten such numbers passes Luhn, as
/// `+49 151 12345678` does) unless it is an American Express number, a longer one still
/// is.
pub(crate) fn payment_cards(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // Straight to the next digit: most of a text is not one.
        let Some(d) = next_digit(bytes, i) else {
            break;
        };
        i = d;
        if i > 0 && bytes.get(i - 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        let (groups, end) = digit_groups(bytes, i);
        let telephone = i > 0 && bytes.get(i - 1) == Some(&b'+');
        let mut digits: Vec<u8> = Vec::with_capacity(19);
        for a in 0..groups.len() {
            digits.clear();
            for g in groups.get(a..).unwrap_or_default() {
                digits.extend_from_slice(bytes.get(g.clone()).unwrap_or_default());
                if digits.len() > 19 {
                    break;
                }
                let first_ok = digits.first().is_some_and(|d| (b'2'..=b'6').contains(d));
                let written = groups.get(a..).unwrap_or_default();
                let shape: Vec<usize> = written
                    .iter()
                    .take_while(|w| w.start <= g.start)
                    .map(|w| w.len())
                    .collect();
                let dialled = telephone && a == 0 && digits.len() <= 15 && !amex(&digits, &shape);
                if digits.len() >= 13 && first_ok && !dialled && luhn_valid(&digits) {
                    if let Some(first) = groups.get(a) {
                        push_merged(&mut out, first.start..g.end);
                    }
                }
            }
        }
        i = end.max(i + 1);
    }
    out
}

/// Whether `digits`, written in groups of the lengths `shape`, are an American Express
/// number as one is written (15 digits from 34 or 37, whole or as 4-6-5), which no
/// telephone number is: the 37x country codes' numbers have at most 13 digits in all
/// (San Marino's), and Spain's (+34) 11, but for its machine-to-machine range (+34 59…,
/// 15 in all), which stays a telephone number. A telephone number followed by a short
/// number (`+34 612 345 678 1234`) is grouped otherwise.
fn amex(digits: &[u8], shape: &[usize]) -> bool {
    digits.len() == 15
        && matches!(digits, [b'3', b'4' | b'7', ..])
        && !digits.starts_with(b"3459")
        && matches!(shape, [15] | [4, 6, 5])
}

/// Where the first ASCII digit at or after `from` is.
fn next_digit(bytes: &[u8], from: usize) -> Option<usize> {
    let at = bytes.get(from..)?.iter().position(u8::is_ascii_digit)?;
    Some(from + at)
}

/// Appends a range, merging it with the last one when they overlap.
fn push_merged(out: &mut Vec<Range<usize>>, r: Range<usize>) {
    if let Some(last) = out.last_mut() {
        if r.start <= last.end {
            last.end = last.end.max(r.end);
            last.start = last.start.min(r.start);
            return;
        }
    }
    out.push(r);
}

/// ISO 13616 IBAN: country letters, two check digits, 11–30 alphanumerics (15–34 in
/// all), plain or in groups of four separated by single spaces; valid when the mod 97
/// remainder is 1. Starts at a word boundary; the longest valid candidate ending at a
/// group boundary is taken.
pub(crate) fn ibans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        // The check digits come third and fourth: straight to the next place they can.
        let Some(d) = next_digit(bytes, i + 2) else {
            break;
        };
        i = d - 2;
        if i + 4 > bytes.len() {
            break;
        }
        let at_boundary = i == 0 || !bytes.get(i - 1).is_some_and(u8::is_ascii_alphanumeric);
        let shape = at_boundary
            && bytes.get(i).is_some_and(u8::is_ascii_alphabetic)
            && bytes.get(i + 1).is_some_and(u8::is_ascii_alphabetic)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_digit)
            && bytes.get(i + 3).is_some_and(u8::is_ascii_digit);
        if !shape {
            i += 1;
            continue;
        }
        // Collect alphanumerics across single spaces, remembering where groups end.
        let mut chars: Vec<u8> = Vec::with_capacity(34);
        let mut ends: Vec<(usize, usize)> = Vec::new(); // (chars so far, byte end)
        let mut j = i;
        while chars.len() < 34 {
            match bytes.get(j) {
                Some(b) if b.is_ascii_alphanumeric() => {
                    chars.push(b.to_ascii_uppercase());
                    j += 1;
                }
                Some(b' ') if bytes.get(j + 1).is_some_and(u8::is_ascii_alphanumeric) => {
                    ends.push((chars.len(), j));
                    j += 1;
                }
                _ => break,
            }
        }
        if !bytes.get(j).is_some_and(u8::is_ascii_alphanumeric) {
            ends.push((chars.len(), j));
        }
        let found = ends.iter().rev().find(|&&(n, _)| {
            (15..=34).contains(&n) && iban_checksum_ok(chars.get(..n).unwrap_or_default())
        });
        match found {
            Some(&(_, end)) => {
                out.push(i..end);
                i = end;
            }
            None => i += 1,
        }
    }
    out
}

fn iban_checksum_ok(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    // Move the first four characters to the end; letters count as 10..35.
    let rotated = chars.iter().skip(4).chain(chars.iter().take(4));
    let mut rem: u32 = 0;
    for &c in rotated {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// US Social Security numbers written `AAA-GG-SSSS` or `AAA GG SSSS` (same separator
/// twice), not touching other digits, excluding numbers the SSA never issues (area 000,
/// 666 or 9xx, group 00, serial 0000). Nine bare digits are not matched: too many other
/// numbers look like that.
pub(crate) fn us_ssns(text: &str) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let num = |r: Range<usize>| -> u32 {
        b.get(r)
            .unwrap_or_default()
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d.wrapping_sub(b'0')))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i + 11 <= b.len() {
        // Straight to the next digit, where a number can start.
        let Some(d) = next_digit(b, i) else {
            break;
        };
        i = d;
        if i + 11 > b.len() {
            break;
        }
        let sep = b.get(i + 3).copied();
        let shape = (i == 0 || !digit(i - 1))
            && (0..3).all(|k| digit(i + k))
            && matches!(sep, Some(b'-' | b' '))
            && (4..6).all(|k| digit(i + k))
            && b.get(i + 6).copied() == sep
            && (7..11).all(|k| digit(i + k))
            && !digit(i + 11);
        if shape {
            let (area, group, serial) = (num(i..i + 3), num(i + 4..i + 6), num(i + 7..i + 11));
            if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
                out.push(i..i + 11);
                i += 11;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, f: fn(&str) -> Vec<Range<usize>>) -> Vec<&str> {
        f(text).into_iter().filter_map(|r| text.get(r)).collect()
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b"41x1"));
    }

    #[test]
    fn cards_after_a_plus_longer_than_a_telephone_number() {
        // Sixteen digits are no telephone number; nor is a card after a country code.
        assert_eq!(
            found("+4111111111111111", payment_cards),
            ["4111111111111111"]
        );
        assert_eq!(
            found("+49 4111 1111 1111 1111", payment_cards),
            ["4111 1111 1111 1111"]
        );
        // Without the plus, the same digits are a card.
        assert_eq!(found("4915112345678", payment_cards), ["4915112345678"]);
        // Fifteen digits from 34 or 37 are an American Express number: no telephone
        // number of those country codes is that long.
        assert_eq!(
            found("+378282246310005", payment_cards),
            ["378282246310005"]
        );
        assert_eq!(
            found("+3782 822463 10005", payment_cards),
            ["3782 822463 10005"]
        );
        // A German mobile number is still a telephone number, and so are Spain's
        // machine-to-machine numbers and a number with a short one after it.
        assert!(found("+4915112345678", payment_cards).is_empty());
        let m2m = b"34590123456789";
        let check = (0..10u8)
            .map(|d| [&m2m[..], &[b'0' + d]].concat())
            .find(|n| luhn_valid(n))
            .expect("one check digit passes Luhn");
        let m2m = format!("+{}", String::from_utf8_lossy(&check));
        assert!(found(&m2m, payment_cards).is_empty(), "{m2m}");
        let extension = (0..10000)
            .map(|n| format!("+34 612 345 678 {n:04}"))
            .find(|t| luhn_valid(t.replace([' ', '+'], "").as_bytes()))
            .expect("one extension passes Luhn");
        assert!(found(&extension, payment_cards).is_empty(), "{extension}");
    }

    #[test]
    fn cards_plain_grouped_and_embedded() {
        assert_eq!(
            found("pay 4111111111111111 now", payment_cards),
            ["4111111111111111"]
        );
        assert_eq!(
            found("4111 1111 1111 1111", payment_cards),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found("4111-1111-1111-1111.", payment_cards),
            ["4111-1111-1111-1111"]
        );
        assert_eq!(
            found("amex 3782 822463 10005", payment_cards),
            ["3782 822463 10005"]
        );
        // A trailing number does not hide the card.
        assert_eq!(
            found("4111 1111 1111 1111 2027", payment_cards),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found("x5555555555554444y", payment_cards),
            ["5555555555554444"]
        );
    }

    #[test]
    fn cards_rejected() {
        assert!(payment_cards("4111111111111112").is_empty(), "Luhn fails");
        assert!(
            payment_cards("41111111111111110000").is_empty(),
            "20 digits, no separator"
        );
        assert!(
            payment_cards("4111   1111 1111 1111").is_empty(),
            "three spaces split"
        );
        assert!(
            payment_cards("4111 -. 1111 1111 1111").is_empty(),
            "three separators split"
        );
        assert!(payment_cards("79927398713").is_empty(), "too short");
        for phone in [
            "call +4915112345678",
            "+49 151 12345678",
            "+49-151-1234-5678",
            "tel:+4915112345678",
        ] {
            assert!(
                payment_cards(phone).is_empty(),
                "{phone}: a telephone number"
            );
        }
        assert!(
            payment_cards("0000000000000000").is_empty(),
            "no issuer starts with 0"
        );
    }

    #[test]
    fn iban_plain_grouped_lowercase() {
        assert_eq!(
            found("to DE89370400440532013000 pls", ibans),
            ["DE89370400440532013000"]
        );
        assert_eq!(
            found("GB82 WEST 1234 5698 7654 32 is mine", ibans),
            ["GB82 WEST 1234 5698 7654 32"]
        );
        assert_eq!(
            found("gb82west12345698765432", ibans),
            ["gb82west12345698765432"]
        );
    }

    #[test]
    fn iban_rejected() {
        assert!(ibans("DE89370400440532013001").is_empty(), "checksum");
        assert!(
            ibans("XDE89370400440532013000").is_empty(),
            "not at a word start"
        );
        assert!(ibans("DE89").is_empty());
    }

    #[test]
    fn ssn() {
        assert_eq!(found("ssn 123-45-6789.", us_ssns), ["123-45-6789"]);
        assert_eq!(found("123 45 6789", us_ssns), ["123 45 6789"]);
        assert!(us_ssns("123-45 6789").is_empty(), "mixed separators");
        assert!(us_ssns("1123-45-6789").is_empty(), "touches a digit");
        assert!(us_ssns("123-45-67890").is_empty(), "touches a digit");
        assert!(us_ssns("000-45-6789").is_empty());
        assert!(us_ssns("666-45-6789").is_empty());
        assert!(us_ssns("900-45-6789").is_empty());
        assert!(us_ssns("123-00-6789").is_empty());
        assert!(us_ssns("123-45-0000").is_empty());
    }

    /// The detectors go from digit to digit: what starts right after other digits, at
    /// the text's very start or end, or after long text without one, is still found.
    #[test]
    fn numbers_anywhere_among_other_digits_are_found() {
        let card = "4111 1111 1111 1111";
        let iban = "GB82 WEST 1234 5698 7654 32";
        let ssn = "078-05-1120";
        let pad = "no digits here at all, ".repeat(20);
        let tail = format!(" {pad}");
        for (before, after) in [
            ("", ""),
            ("7 ", " 8"),
            ("12 ab 9, ", ""),
            (pad.as_str(), ""),
            ("", tail.as_str()),
            ("x 9 ", " 1 y"),
        ] {
            let t = format!("{before}{card}");
            assert_eq!(
                found(&format!("{t}{after}"), payment_cards),
                [card],
                "{t:?}"
            );
            let t = format!("{before}{iban}{after}");
            assert_eq!(found(&t, ibans), [iban], "{t:?}");
            let t = format!("{before}{ssn}{after}");
            assert_eq!(found(&t, us_ssns), [ssn], "{t:?}");
        }
        let all = format!("1 {ssn} 2 {iban} x 3 y {card} z 4 {ssn}");
        assert_eq!(found(&all, us_ssns), [ssn, ssn]);
        assert_eq!(found(&all, ibans), [iban]);
        assert_eq!(found(&all, payment_cards), [card]);
        let d = Detectors::new().expect("email regex");
        assert!(d.find(Detector::PaymentCard, &pad).is_empty());
        assert!(d.find(Detector::Email, "a at b dot com").is_empty());
    }

    #[test]
    fn email() {
        let d = Detectors::new().expect("email regex");
        let t = "write to Jane.Doe+x@mail.example.com, not to foo@bar";
        let got: Vec<&str> = d
            .find(Detector::Email, t)
            .into_iter()
            .filter_map(|r| t.get(r))
            .collect();
        assert_eq!(got, ["Jane.Doe+x@mail.example.com"]);
    }

    #[test]
    fn detector_names_round_trip() {
        for d in Detector::ALL {
            assert_eq!(Detector::parse(d.name()), Some(d));
        }
        assert_eq!(Detector::parse("visa"), None);
    }
}
