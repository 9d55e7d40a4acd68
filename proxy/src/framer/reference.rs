//! The framer with its scanner stepping every byte through the state machine
//! and no fast paths: a slow, simple oracle the differential tests below hold
//! the framer to.

use bytes::{Bytes, BytesMut};

use super::{
    declare_foreign, parse_header, Frame, FrameError, FrameLimits, Phase, Stanza, STREAMS_NS,
};
use crate::xml;

/// How a reference (`&…;`) is spelled so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefLex {
    Start,
    Named { len: u8, word: [u8; 4] },
    Hash,
    HexStart,
    Num { value: u32, hex: bool },
}

/// Where the scanner returns after a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefIn {
    Content,
    Value(u8),
}

/// Lexical state of the scanner inside the current unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Nothing of the unit seen yet.
    Idle,
    /// After `<`.
    Lt,
    /// After `<?`, matching the `xml` target.
    PiTarget {
        matched: u8,
    },
    /// Inside `<?xml …`, `question` when the previous byte was `?`.
    Decl {
        question: bool,
    },
    /// Between the XML declaration and the stream open tag.
    AfterDecl,
    /// After `<!`, matching a keyword such as `DOCTYPE` or `[CDATA[`.
    Bang {
        len: u8,
        word: [u8; 8],
    },
    /// Inside a CDATA section, counting the `]` just seen.
    Cdata {
        brackets: u8,
    },
    StartName,
    TagSpace,
    AttrName,
    AfterAttrName,
    BeforeValue,
    Value(u8),
    AfterValue,
    /// After `/` in a start tag.
    SlashGt,
    EndName {
        started: bool,
    },
    EndSpace,
    /// Character data inside a stanza.
    Content,
    Ref {
        lex: RefLex,
        within: RefIn,
    },
}

/// What kind of unit the scanner completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Header,
    Element,
    StreamEnd,
}

/// The resumable scanner for the unit at the front of the buffer.
#[derive(Debug, Clone)]
struct Scanner {
    lex: Lex,
    /// Bytes of the unit already scanned.
    pos: usize,
    /// Open elements of the current unit.
    depth: usize,
    /// Whether an XML declaration may still start here.
    decl_ok: bool,
    /// Whether the scanner is at the stream's top level (so an end tag
    /// closes the stream rather than an element).
    in_header_phase: bool,
    max_depth: usize,
    /// Byte span in the unit of the tag name being read.
    name: (usize, usize),
    /// Spans of the names of the open elements: an end tag must close the innermost
    /// (`<iq><query></iq>` is not well-formed, and must not swallow what follows).
    open: Vec<(usize, usize)>,
}

/// Keywords that may follow `<!`.
const BANG_WORDS: [(&[u8], Option<&str>); 6] = [
    (b"[CDATA[", None),
    (b"--", Some("comment")),
    (b"DOCTYPE", Some("DTD")),
    (b"ENTITY", Some("entity declaration")),
    (b"ELEMENT", Some("DTD markup declaration")),
    (b"ATTLIST", Some("DTD markup declaration")),
];
const NOTATION: &[u8] = b"NOTATION";

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// ASCII is checked exactly; any non-ASCII byte is let through here and
/// the UTF-8 and Char checks of the complete unit judge it.
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

fn nwf(detail: &str) -> FrameError {
    FrameError::NotWellFormed {
        detail: detail.to_owned(),
    }
}

enum Step {
    More,
    Done(Unit),
}

impl Scanner {
    fn new(in_header_phase: bool, max_depth: usize) -> Scanner {
        Scanner {
            lex: Lex::Idle,
            pos: 0,
            depth: 0,
            decl_ok: in_header_phase,
            in_header_phase,
            max_depth,
            name: (0, 0),
            open: Vec::new(),
        }
    }

    /// Scans `unit[self.pos..]` one byte at a time; returns the length of
    /// the unit once complete.
    fn scan(&mut self, unit: &[u8]) -> Result<Option<(usize, Unit)>, FrameError> {
        while let Some(&b) = unit.get(self.pos) {
            self.pos += 1;
            if let Step::Done(kind) = self.step(b, self.pos - 1, unit)? {
                return Ok(Some((self.pos, kind)));
            }
        }
        Ok(None)
    }

    /// Closes a start tag; `empty` for `/>`.
    fn end_start_tag(&mut self, empty: bool) -> Result<Step, FrameError> {
        if self.in_header_phase {
            if empty {
                return Err(nwf("self-closing stream header"));
            }
            return Ok(Step::Done(Unit::Header));
        }
        if empty {
            if self.depth == 0 {
                return Ok(Step::Done(Unit::Element));
            }
        } else {
            self.depth += 1;
            if self.depth > self.max_depth {
                return Err(FrameError::TooDeep {
                    limit: self.max_depth,
                });
            }
            self.open.push(self.name);
        }
        self.lex = Lex::Content;
        Ok(Step::More)
    }

    fn end_end_tag(&mut self, unit: &[u8]) -> Result<Step, FrameError> {
        if self.depth == 0 {
            return Ok(Step::Done(Unit::StreamEnd));
        }
        let span = |(a, b): (usize, usize)| unit.get(a..b).unwrap_or(&[]);
        let opened = self.open.pop().map(span).unwrap_or(&[]);
        let closing = span(self.name);
        if opened != closing {
            return Err(FrameError::NotWellFormed {
                detail: format!(
                    "end tag </{}> does not close <{}>",
                    String::from_utf8_lossy(closing),
                    String::from_utf8_lossy(opened)
                ),
            });
        }
        self.depth -= 1;
        if self.depth == 0 {
            return Ok(Step::Done(Unit::Element));
        }
        self.lex = Lex::Content;
        Ok(Step::More)
    }

    fn step(&mut self, b: u8, at: usize, unit: &[u8]) -> Result<Step, FrameError> {
        self.lex = match self.lex {
            Lex::Idle => match b {
                b'<' => Lex::Lt,
                _ => return Err(nwf("text outside a stanza")),
            },
            Lex::Lt => match b {
                b'?' if self.decl_ok => Lex::PiTarget { matched: 0 },
                b'?' => {
                    return Err(FrameError::RestrictedXml {
                        what: "processing instruction",
                    })
                }
                b'!' => Lex::Bang {
                    len: 0,
                    word: [0; 8],
                },
                b'/' if self.in_header_phase => return Err(nwf("end tag before stream header")),
                b'/' => Lex::EndName { started: false },
                b if is_name_start(b) => {
                    self.name = (at, at);
                    Lex::StartName
                }
                _ => return Err(nwf("bad character after '<'")),
            },
            Lex::PiTarget { matched } => match (matched, b) {
                (3, b) if is_ws(b) => Lex::Decl { question: false },
                (m, b) if m < 3 && Some(&b) == b"xml".get(usize::from(m)) => {
                    Lex::PiTarget { matched: m + 1 }
                }
                _ => {
                    return Err(FrameError::RestrictedXml {
                        what: "processing instruction",
                    })
                }
            },
            Lex::Decl { question } => match b {
                b'>' if question => {
                    self.decl_ok = false;
                    Lex::AfterDecl
                }
                b'?' => Lex::Decl { question: true },
                _ => Lex::Decl { question: false },
            },
            Lex::AfterDecl => match b {
                b'<' => Lex::Lt,
                b if is_ws(b) => Lex::AfterDecl,
                _ => return Err(nwf("text after the XML declaration")),
            },
            Lex::Bang { len, mut word } => {
                let n = usize::from(len);
                if let Some(slot) = word.get_mut(n) {
                    *slot = b;
                }
                let seen = word.get(..n + 1).unwrap_or(&[]);
                let mut prefix_of_any = NOTATION.starts_with(seen);
                if seen == NOTATION {
                    return Err(FrameError::RestrictedXml {
                        what: "DTD markup declaration",
                    });
                }
                for (kw, restricted) in BANG_WORDS {
                    if seen == kw {
                        match restricted {
                            Some(what) => return Err(FrameError::RestrictedXml { what }),
                            None if self.depth == 0 => return Err(nwf("CDATA outside a stanza")),
                            None => {
                                self.lex = Lex::Cdata { brackets: 0 };
                                return Ok(Step::More);
                            }
                        }
                    }
                    prefix_of_any |= kw.starts_with(seen);
                }
                if !prefix_of_any {
                    return Err(nwf("bad markup after '<!'"));
                }
                Lex::Bang {
                    len: len.saturating_add(1),
                    word,
                }
            }
            Lex::Cdata { brackets } => match b {
                b']' => Lex::Cdata {
                    brackets: brackets.saturating_add(1).min(2),
                },
                b'>' if brackets == 2 => Lex::Content,
                _ => Lex::Cdata { brackets: 0 },
            },
            Lex::StartName => match b {
                b if is_name_char(b) => Lex::StartName,
                b'>' => {
                    self.name.1 = at;
                    return self.end_start_tag(false);
                }
                b'/' => {
                    self.name.1 = at;
                    Lex::SlashGt
                }
                b if is_ws(b) => {
                    self.name.1 = at;
                    Lex::TagSpace
                }
                _ => return Err(nwf("bad character in element name")),
            },
            Lex::TagSpace => match b {
                b'>' => return self.end_start_tag(false),
                b'/' => Lex::SlashGt,
                b if is_ws(b) => Lex::TagSpace,
                b if is_name_start(b) => Lex::AttrName,
                _ => return Err(nwf("bad character in start tag")),
            },
            Lex::AttrName => match b {
                b'=' => Lex::BeforeValue,
                b if is_ws(b) => Lex::AfterAttrName,
                b if is_name_char(b) => Lex::AttrName,
                _ => return Err(nwf("bad character in attribute name")),
            },
            Lex::AfterAttrName => match b {
                b'=' => Lex::BeforeValue,
                b if is_ws(b) => Lex::AfterAttrName,
                _ => return Err(nwf("attribute without value")),
            },
            Lex::BeforeValue => match b {
                b'\'' | b'"' => Lex::Value(b),
                b if is_ws(b) => Lex::BeforeValue,
                _ => return Err(nwf("unquoted attribute value")),
            },
            Lex::Value(q) => match b {
                b'<' => return Err(nwf("'<' in attribute value")),
                b'&' => Lex::Ref {
                    lex: RefLex::Start,
                    within: RefIn::Value(q),
                },
                b if b == q => Lex::AfterValue,
                _ => Lex::Value(q),
            },
            Lex::AfterValue => match b {
                b'>' => return self.end_start_tag(false),
                b'/' => Lex::SlashGt,
                b if is_ws(b) => Lex::TagSpace,
                _ => return Err(nwf("no space between attributes")),
            },
            Lex::SlashGt => match b {
                b'>' => return self.end_start_tag(true),
                _ => return Err(nwf("'/' not followed by '>' in start tag")),
            },
            Lex::EndName { started } => match b {
                b'>' if started => {
                    self.name.1 = at;
                    return self.end_end_tag(unit);
                }
                b if is_ws(b) && started => {
                    self.name.1 = at;
                    Lex::EndSpace
                }
                b if !started && is_name_start(b) => {
                    self.name = (at, at);
                    Lex::EndName { started: true }
                }
                b if started && is_name_char(b) => Lex::EndName { started: true },
                _ => return Err(nwf("bad character in end tag")),
            },
            Lex::EndSpace => match b {
                b'>' => return self.end_end_tag(unit),
                b if is_ws(b) => Lex::EndSpace,
                _ => return Err(nwf("bad character in end tag")),
            },
            Lex::Content => match b {
                b'<' => Lex::Lt,
                b'&' => Lex::Ref {
                    lex: RefLex::Start,
                    within: RefIn::Content,
                },
                _ => Lex::Content,
            },
            Lex::Ref { lex, within } => {
                let next = step_ref(lex, b)?;
                match next {
                    Some(lex) => Lex::Ref { lex, within },
                    None => match within {
                        RefIn::Content => Lex::Content,
                        RefIn::Value(q) => Lex::Value(q),
                    },
                }
            }
        };
        Ok(Step::More)
    }
}

/// Advances a reference; `None` once it closed with an allowed `;`.
fn step_ref(lex: RefLex, b: u8) -> Result<Option<RefLex>, FrameError> {
    let unterminated = || nwf("bad or unterminated reference");
    Ok(Some(match (lex, b) {
        (RefLex::Start, b'#') => RefLex::Hash,
        (RefLex::Start, b) if is_name_start(b) => RefLex::Named {
            len: 1,
            word: [b, 0, 0, 0],
        },
        (RefLex::Named { len, word }, b';') => {
            let n = usize::from(len);
            let predefined = n <= 4
                && matches!(
                    word.get(..n),
                    Some(b"lt" | b"gt" | b"amp" | b"quot" | b"apos")
                );
            if predefined {
                return Ok(None);
            }
            return Err(FrameError::RestrictedXml {
                what: "entity reference",
            });
        }
        (RefLex::Named { len, mut word }, b) if is_name_char(b) => {
            if let Some(slot) = word.get_mut(usize::from(len)) {
                *slot = b;
            }
            RefLex::Named {
                len: len.saturating_add(1).min(5),
                word,
            }
        }
        (RefLex::Hash, b'x') => RefLex::HexStart,
        (RefLex::Hash, b) if b.is_ascii_digit() => RefLex::Num {
            value: u32::from(b - b'0'),
            hex: false,
        },
        (RefLex::HexStart, b) if b.is_ascii_hexdigit() => RefLex::Num {
            value: hex_value(b),
            hex: true,
        },
        (RefLex::Num { value, .. }, b';') => {
            let legal = char::from_u32(value).is_some_and(xml::is_xml_char);
            if legal {
                return Ok(None);
            }
            return Err(nwf("character reference to an illegal character"));
        }
        (RefLex::Num { value, hex: false }, b) if b.is_ascii_digit() => RefLex::Num {
            // Saturate just past the Unicode range: the value is then
            // rejected at ';' without overflowing on long digit runs.
            value: value
                .saturating_mul(10)
                .saturating_add(u32::from(b - b'0'))
                .min(0x11_0000),
            hex: false,
        },
        (RefLex::Num { value, hex: true }, b) if b.is_ascii_hexdigit() => RefLex::Num {
            value: value
                .saturating_mul(16)
                .saturating_add(hex_value(b))
                .min(0x11_0000),
            hex: true,
        },
        _ => return Err(unterminated()),
    }))
}

fn hex_value(b: u8) -> u32 {
    char::from(b).to_digit(16).unwrap_or(0)
}

/// Checks a complete unit: UTF-8, and only characters XML 1.0 allows.
/// Done on whole units so a multi-byte character split across two pushes
/// is never mistaken for bad UTF-8.
fn check_chars(unit: &[u8]) -> Result<&str, FrameError> {
    let text = std::str::from_utf8(unit).map_err(|e| FrameError::NotWellFormed {
        detail: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
    })?;
    // In valid UTF-8 the only non-Chars are C0 controls other than tab, LF
    // and CR, and U+FFFE / U+FFFF (EF BF BE / EF BF BF); surrogates cannot
    // be encoded.
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let bad = match b {
            0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F => true,
            0xEF => matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])),
            _ => false,
        };
        if bad {
            return Err(FrameError::NotWellFormed {
                detail: format!("character not allowed in XML at byte {i}"),
            });
        }
        i += 1;
    }
    Ok(text)
}

/// The framer's public behaviour, driven by the scanner above.
#[derive(Debug)]
pub(super) struct Reference {
    limits: FrameLimits,
    buf: BytesMut,
    phase: Phase,
    scanner: Scanner,
    /// Whitespace handed out since the last unit.
    ws_run: usize,
    poisoned: Option<FrameError>,
}

impl Reference {
    pub(super) fn new(limits: FrameLimits) -> Reference {
        Reference {
            limits,
            buf: BytesMut::new(),
            phase: Phase::ExpectHeader,
            scanner: Scanner::new(true, limits.max_depth),
            ws_run: 0,
            poisoned: None,
        }
    }

    /// Appends received bytes.
    pub(super) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes pushed but not yet returned in a frame.
    pub(super) fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Expects a new stream header next (after STARTTLS, after SASL
    /// success). Bytes already buffered are kept and framed afresh.
    pub(super) fn restart(&mut self) {
        self.phase = Phase::ExpectHeader;
        self.scanner = Scanner::new(true, self.limits.max_depth);
        self.ws_run = 0;
    }

    /// The next complete frame; `Ok(None)` when more bytes are needed.
    /// After an error every later call returns the same error.
    pub(super) fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let result = self.frame();
        if let Err(err) = &result {
            self.poisoned = Some(err.clone());
        }
        result
    }

    fn frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.scanner.lex == Lex::Idle {
            let ws = self.buf.iter().take_while(|&&b| is_ws(b)).count();
            if ws > 0 {
                self.ws_run = self.ws_run.saturating_add(ws);
                if self.ws_run > self.limits.max_stanza_bytes {
                    return Err(FrameError::TooLarge {
                        limit: self.limits.max_stanza_bytes,
                    });
                }
                return Ok(Some(Frame::Whitespace(self.buf.split_to(ws).freeze())));
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            if matches!(self.phase, Phase::Ended) {
                return Err(nwf("data after the end of the stream"));
            }
        }
        let limit = match self.phase {
            Phase::ExpectHeader => self.limits.max_header_bytes,
            _ => self.limits.max_stanza_bytes,
        };
        // Never look past limit + 1 bytes: a unit that has not ended by then
        // is refused without reading (or waiting for) the rest.
        let window = self.buf.get(..self.buf.len().min(limit.saturating_add(1)));
        let window = window.unwrap_or(&[]);
        let Some((len, unit)) = self.scanner.scan(window)? else {
            if window.len() > limit {
                return Err(FrameError::TooLarge { limit });
            }
            return Ok(None);
        };
        if len > limit {
            return Err(FrameError::TooLarge { limit });
        }
        let raw = self.buf.split_to(len).freeze();
        self.ws_run = 0;
        self.scanner = Scanner::new(false, self.limits.max_depth);
        let text = check_chars(&raw)?;
        match unit {
            Unit::Header => {
                let (header, scope) = parse_header(text, raw.clone())?;
                let foreign = header
                    .namespaces
                    .iter()
                    .filter_map(|(p, uri)| Some((p.clone()?, uri.clone())))
                    .filter(|(p, uri)| !(p == "stream" && uri == STREAMS_NS))
                    .collect();
                self.phase = Phase::InStream {
                    scope,
                    foreign,
                    qname: match &header.stream_prefix {
                        Some(p) => format!("{p}:stream"),
                        None => "stream".to_owned(),
                    },
                };
                Ok(Some(Frame::StreamHeader(header)))
            }
            Unit::Element => {
                let Phase::InStream { scope, foreign, .. } = &self.phase else {
                    return Err(nwf("element outside a stream"));
                };
                let mut root = xml::parse_element(text, scope)?;
                let raw = match declare_foreign(&mut root, foreign) {
                    Some(rewritten) => Bytes::from(rewritten),
                    None => raw,
                };
                Ok(Some(Frame::Stanza(Stanza { raw, root })))
            }
            Unit::StreamEnd => {
                let Phase::InStream { qname, .. } = &self.phase else {
                    return Err(nwf("end tag outside a stream"));
                };
                let name = text
                    .get(2..)
                    .unwrap_or("")
                    .trim_end_matches('>')
                    .trim_end_matches(|c: char| c.is_ascii_whitespace());
                if name != qname {
                    return Err(FrameError::NotWellFormed {
                        detail: format!("end tag </{name}> does not close <{qname}>"),
                    });
                }
                self.phase = Phase::Ended;
                Ok(Some(Frame::StreamEnd(raw)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Reference;
    use crate::framer::{Frame, FrameLimits, Framer};

    /// Text a well-formed stanza may carry, much of it markup-like.
    const TEXT: &[&[u8]] = &[
        b"hi",
        b"Hi Bob, the numbers are in",
        b" ",
        b"\n\t\r",
        b"&amp;",
        b"&lt;&gt;&quot;&apos;",
        b"&#x1F600;",
        b"&#65;",
        b"&#xd7ff;",
        b">",
        b"'",
        b"\"",
        b"]",
        b"]]",
        b"]>",
        b"<![CDATA[ <a> ]] ]]] & ]]>",
        b"<![CDATA[x]]]]><![CDATA[>]]>",
        b"<![CDATA[]]>",
        b"<x/>",
        b"<x />",
        b"<y a='1'/>",
        b"\xC3\xA9",
        b"\xF0\x9F\x98\x80",
        b"\xEF\xBF\xBD",
        b"\xEF\xBB\xBF",
    ];

    /// What an attribute value may hold besides plain text.
    const VALUE: &[&[u8]] = &[
        b"alice@example.test/laptop",
        b" ",
        b"&amp;",
        b"&#x41;",
        b"&quot;",
        b">",
        b"/>",
        b"\xC3\xA9",
        b"\xF0\x9F\x98\x80",
        b"\t",
        b"]]>",
    ];

    /// Pieces next to every way of being wrong the scanner knows about,
    /// inserted anywhere by [`mutate`].
    const BAD: &[&[u8]] = &[
        b"&#0;",
        b"&#xD800;",
        b"&#1114112;",
        b"&#99999999999;",
        b"&#xFFFE;",
        b"&#;",
        b"&#x;",
        b"&#a;",
        b"&xxe;",
        b"&ltx;",
        b"&amp",
        b"&",
        b"]]>",
        b"]]]>",
        b"<![CDATA[",
        b"<![CDAT",
        b"<!-- c -->",
        b"<?php x?>",
        b"<?xml version='1.0'?>",
        b"<!DOCTYPE x>",
        b"<!ENTITY",
        b"<!NOTATION",
        b"<!ELEMENT",
        b"<!x>",
        b"<",
        b"</",
        b"/",
        b"=",
        b"'",
        b"\"",
        b"<x/ >",
        b"</x>",
        b"</a>",
        b"<a>",
        b"<1/>",
        b"a:b:c",
        b"\xEF\xBF\xBE",
        b"\xEF\xBF\xBF",
        b"\xEF\xBF",
        b"\xC3\x28",
        b"\xC3",
        b"\xFF",
        b"\x80",
        b"\xED\xA0\x80",
        b"\xF4\x90\x80\x80",
        b"\x01",
        b"\x00",
        b"\x0B",
        b"\x1F",
        b"\x7F",
    ];

    const NAMES: &[&str] = &[
        "message",
        "iq",
        "presence",
        "body",
        "a",
        "b",
        "x",
        "ack:r",
        "b:x",
        "stream:features",
        "q-1.x",
        "_u",
        "\u{E9}l",
    ];

    const ATTRS: &[&str] = &[
        "to",
        "id",
        "type",
        "xmlns",
        "xmlns:ack",
        "xmlns:b",
        "b:c",
        "xml:lang",
        "a",
        "\u{E9}",
    ];

    const HEADERS: &[&str] = &[
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:ack='urn:ack' xmlns:b='urn:b' \
         to='example.test' version='1.0'>",
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:ack='urn:ack' xmlns:b='urn:b'>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<s:stream \
         xmlns:s='http://etherx.jabber.org/streams' xmlns:ack='urn:ack' xmlns:b='urn:b'>",
    ];

    const BAD_HEADERS: &[&str] = &[
        "<?xml version='1.0'?><?xml version='1.0'?><stream:stream>",
        "<?xml?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
        "<?xml version='1.0' encoding='latin1'?><stream:stream>",
        "<?xml-stylesheet?><stream:stream>",
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>",
        "</stream:stream>",
        "<stream:stream xmlns:stream='urn:wrong'>",
    ];

    /// A run of character data: a few pieces, or a long run of one character.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => prop::collection::vec(prop::sample::select(TEXT), 0..6).prop_map(|p| p.concat()),
            1 => (0usize..700).prop_map(|n| vec![b'a'; n]),
            1 => (0usize..120, prop::sample::select(&["\u{E9}", "\u{1F600}", "\u{E9}\r\n"][..]))
                .prop_map(|(n, c)| c.repeat(n).into_bytes()),
        ]
    }

    /// Attributes with distinct names.
    fn attrs() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            6 => prop::collection::vec(prop::sample::select(VALUE), 1..5).prop_map(|p| p.concat()),
            1 => (1usize..400).prop_map(|n| vec![b'v'; n]),
        ];
        let attr = (
            prop::sample::select(&[" ", "  ", "\n", "\t"][..]),
            prop::sample::select(&["=", " = ", "\n=\t"][..]),
            prop::sample::select(&[("'", "\""), ("\"", "'")][..]),
            value,
        );
        (
            prop::sample::subsequence(ATTRS, 0..3),
            prop::collection::vec(attr, 3),
        )
            .prop_map(|(names, attrs)| {
                let mut out = String::new();
                for (name, (space, eq, (q, other), value)) in names.iter().zip(attrs) {
                    // The other quote may appear inside the value.
                    let value = String::from_utf8_lossy(&value).replace(q, other);
                    out.push_str(&format!("{space}{name}{eq}{q}{value}{q}"));
                }
                out.into_bytes()
            })
    }

    /// A well-formed element (but for prefixes and namespaces).
    fn element() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(NAMES);
        let leaf = (name.clone(), attrs())
            .prop_map(|(name, attrs)| [format!("<{name}").as_bytes(), &attrs, b"/>"].concat());
        leaf.prop_recursive(6, 64, 6, move |inner| {
            (
                name.clone(),
                attrs(),
                prop::sample::select(&[">", " >", "\n>"][..]),
                prop::collection::vec(prop_oneof![inner, text()], 0..5),
                prop::sample::select(&["", " ", "\n"][..]),
            )
                .prop_map(|(name, attrs, gt, children, space)| {
                    [
                        format!("<{name}").as_bytes(),
                        &attrs,
                        gt.as_bytes(),
                        &children.concat(),
                        format!("</{name}{space}>").as_bytes(),
                    ]
                    .concat()
                })
        })
    }

    /// Nesting at and around the depth limits the test picks.
    fn nest() -> impl Strategy<Value = Vec<u8>> {
        (0usize..12, 0usize..12, text()).prop_map(|(open, close, text)| {
            let open = "<a>".repeat(open);
            [open.as_bytes(), &text, "</a>".repeat(close).as_bytes()].concat()
        })
    }

    fn header() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            12 => prop::sample::select(HEADERS),
            1 => prop::sample::select(BAD_HEADERS),
        ]
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let item = prop_oneof![
            30 => element(),
            3 => nest(),
            8 => prop::sample::select(&[" ", "\n", "\r\n\t "][..]).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::sample::select(&["</stream:stream>", "</s:stream>", "</stream:stream >"][..])
                .prop_map(|s| s.as_bytes().to_vec()),
            1 => text(),
            1 => header().prop_map(|h| h.as_bytes().to_vec()),
        ];
        (header(), prop::collection::vec(item, 0..8))
            .prop_map(|(header, items)| [header.as_bytes(), &items.concat()].concat())
    }

    /// One change at a random place: a byte dropped, replaced or inserted,
    /// or a piece of [`BAD`] inserted.
    type Edit = (prop::sample::Index, u8, prop::sample::Index);

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        prop_oneof![
            1 => Just(Vec::new()),
            1 => prop::collection::vec(any::<Edit>(), 1..4),
        ]
    }

    fn mutate(mut input: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        const BYTES: &[u8] = b"<>/'\"&;=?!-[]#: \n\x00\x80\xC3\xEF\xBF";
        for (at, kind, what) in edits {
            let at = at.index(input.len() + 1);
            let byte = BYTES.get(what.index(BYTES.len())).copied().unwrap_or(b'<');
            match kind % 4 {
                0 if at < input.len() => {
                    input.remove(at);
                }
                1 if at < input.len() => {
                    if let Some(b) = input.get_mut(at) {
                        *b = byte;
                    }
                }
                2 => {
                    let piece = BAD.get(what.index(BAD.len())).copied().unwrap_or_default();
                    input.splice(at..at, piece.iter().copied());
                }
                _ => input.insert(at, byte),
            }
        }
        input
    }

    fn limits() -> impl Strategy<Value = FrameLimits> {
        prop_oneof![
            Just(FrameLimits::default()),
            (1usize..2000, 130usize..600, 1usize..8).prop_map(|(s, h, d)| FrameLimits {
                max_stanza_bytes: s,
                max_header_bytes: h,
                max_depth: d,
            }),
        ]
    }

    /// Limits set one below, at or one above the length of a unit of `input`
    /// as the reference frames it with the default limits.
    fn limits_at_an_edge(input: &[u8], which: prop::sample::Index, delta: usize) -> FrameLimits {
        let mut reference = Reference::new(FrameLimits::default());
        reference.push(input);
        let mut lens = Vec::new();
        while let Ok(Some(frame)) = reference.next_frame() {
            lens.push(match frame {
                Frame::StreamHeader(h) => (true, h.raw.len()),
                Frame::Stanza(s) => (false, s.raw.len()),
                Frame::Whitespace(b) | Frame::StreamEnd(b) => (false, b.len()),
            });
        }
        let mut limits = FrameLimits::default();
        if let Some(&(header, len)) = lens.get(which.index(lens.len().max(1))) {
            let len = (len + delta).saturating_sub(1).max(1);
            if header {
                limits.max_header_bytes = len;
            } else {
                limits.max_stanza_bytes = len;
            }
        }
        limits
    }

    /// Feeds both framers the same pushes, frame requests and restarts, and
    /// requires the same answer to every request.
    fn check_same(
        input: &[u8],
        limits: FrameLimits,
        cuts: &[usize],
        pulls: &[u8],
        restarts: &[bool],
    ) -> Result<(), TestCaseError> {
        let mut framer = Framer::new(limits);
        let mut reference = Reference::new(limits);
        let mut rest = input;
        let mut step = 0usize;
        let mut headers = 0usize;
        while !rest.is_empty() {
            let cut = cuts.get(step % cuts.len().max(1)).copied();
            let (piece, tail) = rest.split_at(cut.unwrap_or(rest.len()).min(rest.len()));
            rest = tail;
            if step.is_multiple_of(2) {
                framer.push(piece);
            } else {
                framer.read_buf(piece.len()).extend_from_slice(piece);
            }
            reference.push(piece);
            // Some pushes are framed only in part before the next arrives.
            let pull = pulls.get(step % pulls.len().max(1)).copied().unwrap_or(0);
            let budget = if pull == 0 {
                input.len() + 1
            } else {
                usize::from(pull)
            };
            step += 1;
            for _ in 0..budget {
                let got = framer.next_frame();
                prop_assert_eq!(&got, &reference.next_frame());
                prop_assert_eq!(framer.buffered_len(), reference.buffered_len());
                match got {
                    Err(_) => return Ok(()),
                    Ok(None) => break,
                    Ok(Some(Frame::StreamHeader(_))) => {
                        headers += 1;
                        if restarts.get(headers).copied().unwrap_or(false) {
                            framer.restart();
                            reference.restart();
                        }
                    }
                    Ok(Some(_)) => {}
                }
            }
        }
        loop {
            let got = framer.next_frame();
            prop_assert_eq!(&got, &reference.next_frame());
            prop_assert_eq!(framer.buffered_len(), reference.buffered_len());
            if !matches!(got, Ok(Some(_))) {
                return Ok(());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever arrives and however it is split, the framer answers
        /// every request as the byte-at-a-time scanner does: the same frames
        /// with the same bytes, the same error, at the same point.
        #[test]
        fn frames_as_the_reference_does(
            input in stream(),
            edits in edits(),
            limits in limits(),
            edge in prop::option::of((any::<prop::sample::Index>(), 0usize..3)),
            cuts in prop::collection::vec(prop_oneof![1usize..3, 1usize..40, 1usize..5000], 1..12),
            pulls in prop::collection::vec(0u8..4, 1..4),
            restarts in prop::collection::vec(any::<bool>(), 0..4),
        ) {
            let input = mutate(input, &edits);
            let limits = match edge {
                Some((which, delta)) => limits_at_an_edge(&input, which, delta),
                None => limits,
            };
            check_same(&input, limits, &cuts, &pulls, &restarts)?;
            check_same(&input, limits, &[input.len().max(1)], &[0], &restarts)?;
        }

        /// Arbitrary bytes after a header, for what the grammar above does
        /// not think of.
        #[test]
        fn frames_arbitrary_bytes_as_the_reference_does(
            header in header(),
            body in prop::collection::vec(any::<u8>(), 0..400),
            limits in limits(),
            cuts in prop::collection::vec(1usize..64, 1..8),
        ) {
            let input = [header.as_bytes(), &body].concat();
            check_same(&input, limits, &cuts, &[0], &[])?;
        }
    }
}
