//! Turns the bytes of one direction of an XMPP stream into whole top-level
//! units: the stream header, each depth-1 element, whitespace between them,
//! and the closing `</stream:stream>`.
//!
//! ```text
//!  push(bytes) ──▶ buffer ──▶ scanner ──(unit complete)──▶ UTF-8 + Char check
//!                              │ tag / quote / CDATA /            │
//!                              │ reference state kept             ▼
//!                              │ across pushes       one-pass reader, else
//!                              │                     quick-xml ──▶ xml::Element
//!                              ▼                                  │
//!                     Ok(None): need more bytes        next_frame() ──▶ Frame
//! ```
//!
//! The scanner resumes where the previous call stopped, so the work done for
//! a unit is linear in its size however the bytes arrive, and it stops
//! reading as soon as the unit passes its size limit. It also enforces what
//! RFC 6120 §11.1 forbids (comments, processing instructions, DTDs, entity
//! references other than the predefined ones) the moment it sees them; only
//! a complete unit is handed on to build the tree. A unit written the plain
//! way is read in one pass that relies on what the scanner checked; any other
//! is read by quick-xml, which checks the rest of well-formedness
//! (see `xml::parse_framed_in`).
//!
//! The framer knows the stream wrapper and nothing else of XMPP: which
//! elements may appear when is the stream state machine's business.

use bytes::{Bytes, BytesMut};

use crate::xml::{self, Element, NsScope};

/// The namespace of the stream wrapper (RFC 6120 §4.8.1).
pub const STREAMS_NS: &str = "http://etherx.jabber.org/streams";

/// Size bounds on what the framer will buffer for one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest stanza (any depth-1 element) in bytes; also bounds a run of
    /// whitespace between two units.
    pub max_stanza_bytes: usize,
    /// Largest stream header, XML declaration included.
    pub max_header_bytes: usize,
    /// Deepest element nesting inside a stanza (the stanza itself is depth 1).
    /// Bounded because the tree is walked recursively when it is compared,
    /// written and dropped; real stanzas nest well under 20 deep.
    pub max_depth: usize,
}

impl Default for FrameLimits {
    fn default() -> FrameLimits {
        FrameLimits {
            max_stanza_bytes: 256 * 1024,
            max_header_bytes: 16 * 1024,
            max_depth: 64,
        }
    }
}

/// Why the framer refused the stream. Every variant is the peer's fault and
/// maps to an RFC 6120 §4.9.3 stream error condition; after one the framer
/// is poisoned and the caller closes the stream with that condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Malformed XML, bad UTF-8, a character XML 1.0 does not allow,
    /// mismatched tags, text between top-level elements, duplicate
    /// attributes, an unbound prefix.
    #[error("not well-formed XML: {detail}")]
    NotWellFormed { detail: String },
    /// A comment, processing instruction, DTD or entity that XMPP forbids.
    #[error("restricted XML: {what}")]
    RestrictedXml { what: &'static str },
    /// A unit (stanza, header, whitespace run) grew past its limit.
    #[error("unit larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Elements nested deeper than the limit.
    #[error("elements nested deeper than {limit}")]
    TooDeep { limit: usize },
    /// The stream header is not `stream` in the streams namespace.
    #[error("invalid stream namespace: {detail}")]
    InvalidNamespace { detail: String },
    /// The XML declaration names an encoding other than UTF-8.
    #[error("unsupported encoding {encoding:?}")]
    UnsupportedEncoding { encoding: String },
}

impl FrameError {
    /// The stream error condition element name to send (RFC 6120 §4.9.3).
    pub fn condition(&self) -> &'static str {
        match self {
            FrameError::NotWellFormed { .. } => "not-well-formed",
            FrameError::RestrictedXml { .. } => "restricted-xml",
            FrameError::TooLarge { .. } | FrameError::TooDeep { .. } => "policy-violation",
            FrameError::InvalidNamespace { .. } => "invalid-namespace",
            FrameError::UnsupportedEncoding { .. } => "unsupported-encoding",
        }
    }
}

/// One top-level unit of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The optional XML declaration and the `<stream:stream …>` open tag.
    StreamHeader(StreamHeader),
    /// One complete depth-1 element of any name.
    Stanza(Stanza),
    /// Whitespace between top-level units (keepalives). It is handed out as
    /// soon as it arrives so keepalives are not delayed; one run may
    /// therefore come as several frames.
    Whitespace(Bytes),
    /// The closing `</stream:stream>`.
    StreamEnd(Bytes),
}

/// A parsed stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Exact bytes received, XML declaration included.
    pub raw: Bytes,
    /// Whether an XML declaration preceded the open tag.
    pub xml_decl: bool,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// The default (content) namespace, `jabber:client` or `jabber:server`.
    pub default_ns: Option<String>,
    /// The prefix bound to the streams namespace (`stream`), `None` if the
    /// header is unprefixed.
    pub stream_prefix: Option<String>,
    /// Namespace declarations on the header in document order (`None` is the
    /// default namespace); stanzas are resolved in this scope.
    pub namespaces: Vec<(Option<String>, String)>,
    /// Every attribute as written, declarations included.
    pub attrs: Vec<(xml::Name, String)>,
}

impl StreamHeader {
    /// The stream carries `jabber:client` content. Another default namespace would make
    /// every stanza after it an element Custos does not read as a stanza, while the peer
    /// on the other leg, reading under Custos's own header, would.
    pub fn require_client_content(&self) -> Result<(), FrameError> {
        let ns = self.default_ns.as_deref();
        if ns == Some(crate::stream::NS_CLIENT) {
            return Ok(());
        }
        Err(FrameError::InvalidNamespace {
            detail: format!(
                "default namespace must be {}, got {}",
                crate::stream::NS_CLIENT,
                ns.unwrap_or("none")
            ),
        })
    }
}

/// One depth-1 element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// Exact bytes as received: what is forwarded when policy allows it.
    pub raw: Bytes,
    pub root: Element,
}

/// Where the stream is, as far as framing cares.
#[derive(Debug, Clone)]
enum Phase {
    /// Before the stream header (at start and after a restart).
    ExpectHeader,
    /// Inside the stream; stanzas resolve names in `scope`. `foreign` holds the
    /// header's prefix declarations other than `stream` (see [`Stanza::raw`]).
    InStream {
        scope: NsScope,
        qname: String,
        foreign: Vec<(String, String)>,
    },
    /// After `</stream:stream>`: only whitespace may follow.
    Ended,
}

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
    CLASS[usize::from(b)] & WS != 0
}

/// ASCII is checked exactly; any non-ASCII byte is let through here and
/// the UTF-8 and Char checks of the complete unit judge it.
fn is_name_start(b: u8) -> bool {
    CLASS[usize::from(b)] & NAME_START != 0
}

fn is_name_char(b: u8) -> bool {
    CLASS[usize::from(b)] & NAME != 0
}

const WS: u8 = 1;
const NAME_START: u8 = 2;
const NAME: u8 = 4;

/// What each byte can be, so a class test is one load.
const CLASS: [u8; 256] = {
    let mut class = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        class[b] = if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            WS
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' || c >= 0x80 {
            NAME_START | NAME
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            NAME
        } else {
            0
        };
        b += 1;
    }
    class
};

/// Where the first of the bytes `stops` is in `rest`.
///
/// Most runs of text or of an attribute value between two bytes that matter
/// are short, where memchr's set-up costs more than the search. The first
/// [`SHORT_WORDS`] words of eight bytes are therefore tested a word at a time
/// (SWAR: a byte of `x ^ stop` is zero where `x` holds `stop`, and
/// `(y - 0x01…01) & !y & 0x80…80` sets the high bit of each zero byte of `y`;
/// a borrow can mark only bytes above a true zero, so the lowest mark is the
/// first stop). What is left after them goes to memchr when it is long, and
/// byte by byte when it is not.
pub(crate) fn find_stop(rest: &[u8], stops: [u8; 3]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 0xFF;
    const HIGH: u64 = ONES * 0x80;
    let (words, _) = rest.as_chunks::<8>();
    let words = words.get(..SHORT_WORDS).unwrap_or(words);
    for (n, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word);
        let mut hits = 0;
        for stop in stops {
            let y = x ^ (ONES * u64::from(stop));
            hits |= y.wrapping_sub(ONES) & !y;
        }
        let hits = hits & HIGH;
        if hits != 0 {
            // The lowest marked byte; its index within the word is below 8.
            return Some(n * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let from = words.len() * 8;
    let tail = rest.get(from..)?;
    let [a, b, c] = stops;
    let found = if tail.len() < 8 {
        tail.iter().position(|&x| x == a || x == b || x == c)
    } else {
        memchr::memchr3(a, b, c, tail)
    };
    found.map(|n| n + from)
}

/// How many words [`find_stop`] tests itself before handing the rest to memchr.
const SHORT_WORDS: usize = 4;

/// Where the next `<` or `&` is in character data.
fn content_run(rest: &[u8]) -> Option<usize> {
    find_stop(rest, [b'<', b'&', b'&'])
}

/// Where the closing quote `q`, a `<` or a `&` is in an attribute value.
fn value_run(q: u8, rest: &[u8]) -> Option<usize> {
    find_stop(rest, [q, b'<', b'&'])
}

/// The length of one attribute written the plain way at the start of `rest`: white
/// space (at least one byte when `space`), a name, `=`, a quoted value without `<`
/// or a reference, and its closing quote, all of it already there. Its bytes would
/// take the scanner, one by one, through the attribute's states to `AfterValue` and
/// nowhere else, so [`Scanner::scan`] moves past them at once. `None` for anything
/// else, which the byte-by-byte steps then read and judge.
fn plain_attribute(rest: &[u8], space: bool) -> Option<usize> {
    #[cfg(test)]
    tests::ATTRIBUTE_TRIES.with(|n| n.set(n.get() + 1));
    let name = rest.iter().position(|&b| !is_ws(b))?;
    if (space && name == 0) || !is_name_start(*rest.get(name)?) {
        return None;
    }
    let eq = name + rest.get(name..)?.iter().position(|&b| !is_name_char(b))?;
    let quote = match rest.get(eq..eq + 2)? {
        [b'=', q @ (b'\'' | b'"')] => *q,
        _ => return None,
    };
    let value = eq + 2;
    let end = value + value_run(quote, rest.get(value..)?)?;
    (rest.get(end) == Some(&quote)).then_some(end + 1)
}

/// A tag's name read at once after its `<` (see [`plain_tag_name`]).
enum TagName {
    /// A start tag's name of `len` bytes, then white space, or `>` when `closed`.
    Start { len: usize, closed: bool },
    /// A whole end tag, `/`, a name of `len` bytes and `>`.
    End { len: usize },
}

/// The name that follows a `<` at the start of `rest`, when it and the byte
/// ending it are there and that byte is white space or `>`; or a whole end tag
/// written without space before its `>` (never before the stream header, where
/// an end tag is an error the steps report). `None` for anything else.
fn plain_tag_name(rest: &[u8], in_header_phase: bool) -> Option<TagName> {
    let end_tag = rest.first() == Some(&b'/');
    if end_tag && in_header_phase {
        return None;
    }
    let from = usize::from(end_tag);
    if !is_name_start(*rest.get(from)?) {
        return None;
    }
    let len = rest.get(from..)?.iter().position(|&b| !is_name_char(b))?;
    let after = *rest.get(from + len)?;
    match (end_tag, after) {
        (true, b'>') => Some(TagName::End { len }),
        (false, b'>') => Some(TagName::Start { len, closed: true }),
        (false, b) if is_ws(b) => Some(TagName::Start { len, closed: false }),
        _ => None,
    }
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

    /// Starts on the next unit; the allocation for open element names is
    /// kept (it is bounded by the depth limit).
    fn reset(&mut self, in_header_phase: bool) {
        let mut open = std::mem::take(&mut self.open);
        open.clear();
        *self = Scanner {
            open,
            ..Scanner::new(in_header_phase, self.max_depth)
        };
    }

    /// Scans `unit[self.pos..]`; returns the length of the unit once complete.
    fn scan(&mut self, unit: &[u8]) -> Result<Option<(usize, Unit)>, FrameError> {
        let mut i = self.pos;
        while let Some(rest) = unit.get(i..) {
            // Fast paths over long runs that cannot change the state.
            let skip = match self.lex {
                // After `<`: a name and what ends it, or a whole end tag `/name>`,
                // when all of it is there and written the plain way. The steps
                // would reach the same state through the same bytes.
                Lex::Lt => match plain_tag_name(rest, self.in_header_phase) {
                    Some(TagName::Start { len, closed }) => {
                        self.name = (i, i + len);
                        i += len + 1;
                        if !closed {
                            self.lex = Lex::TagSpace;
                            continue;
                        }
                        self.lex = Lex::StartName;
                        if let Step::Done(kind) = self.end_start_tag(false)? {
                            self.pos = i;
                            return Ok(Some((i, kind)));
                        }
                        continue;
                    }
                    Some(TagName::End { len }) => {
                        self.name = (i + 1, i + 1 + len);
                        i += len + 2;
                        if let Step::Done(kind) = self.end_end_tag(unit)? {
                            self.pos = i;
                            return Ok(Some((i, kind)));
                        }
                        continue;
                    }
                    None => Some(0),
                },
                Lex::TagSpace | Lex::AfterValue => {
                    match plain_attribute(rest, self.lex == Lex::AfterValue) {
                        Some(n) => {
                            i += n;
                            self.lex = Lex::AfterValue;
                            continue;
                        }
                        // White space keeps the state at TagSpace: passed here, so
                        // a long run of it is not looked at again for each byte.
                        None if self.lex == Lex::TagSpace => rest.iter().position(|&b| !is_ws(b)),
                        None => Some(0),
                    }
                }
                Lex::Content => content_run(rest),
                Lex::Value(q) => value_run(q, rest),
                Lex::Cdata { brackets: 0 } => memchr::memchr(b']', rest),
                Lex::StartName | Lex::AttrName | Lex::EndName { started: true } => {
                    rest.iter().position(|&b| !is_name_char(b))
                }
                _ => Some(0),
            };
            let Some(skip) = skip else {
                i = unit.len();
                break;
            };
            i += skip;
            let Some(&b) = unit.get(i) else { break };
            i += 1;
            if let Step::Done(kind) = self.step(b, i - 1, unit)? {
                self.pos = i;
                return Ok(Some((i, kind)));
            }
        }
        self.pos = i;
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
    match first_non_char(text.as_bytes()) {
        Some(i) => Err(FrameError::NotWellFormed {
            detail: format!("character not allowed in XML at byte {i}"),
        }),
        None => Ok(text),
    }
}

/// Where the first character that is not an XML 1.0 `Char` starts in valid
/// UTF-8. There the only ones are C0 controls other than tab, LF and CR, and
/// U+FFFE / U+FFFF (EF BF BE / EF BF BF); surrogates cannot be encoded.
///
/// Eight bytes are tested at once for any byte below 0x20 or equal to 0xEF,
/// both rare in XMPP text; only a word holding one is looked at byte by byte.
fn first_non_char(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 0xFF;
    const HIGH: u64 = ONES * 0x80;
    let is_non_char = |i: usize| match bytes.get(i) {
        Some(0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F) => true,
        Some(0xEF) => matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])),
        _ => false,
    };
    let (words, _) = bytes.as_chunks::<8>();
    for (n, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word);
        let ef = x ^ (ONES * 0xEF);
        // A byte's high bit is set in `below` if some byte is under 0x20,
        // and in `zero` if some byte of `ef` is zero (SWAR "has less than"
        // and "has zero byte").
        let below = x.wrapping_sub(ONES * 0x20) & !x;
        let zero = ef.wrapping_sub(ONES) & !ef;
        if (below | zero) & HIGH != 0 {
            if let Some(i) = (n * 8..n * 8 + 8).find(|&i| is_non_char(i)) {
                return Some(i);
            }
        }
    }
    (words.len() * 8..bytes.len()).find(|&i| is_non_char(i))
}

/// The incremental stanza framer for one direction of one stream.
#[derive(Debug)]
pub struct Framer {
    limits: FrameLimits,
    buf: BytesMut,
    phase: Phase,
    scanner: Scanner,
    /// Whitespace handed out since the last unit.
    ws_run: usize,
    poisoned: Option<FrameError>,
}

impl Framer {
    pub fn new(limits: FrameLimits) -> Framer {
        Framer {
            limits,
            buf: BytesMut::new(),
            phase: Phase::ExpectHeader,
            scanner: Scanner::new(true, limits.max_depth),
            ws_run: 0,
            poisoned: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read received bytes into (appended to it, as [`Framer::push`]
    /// does), with room for at least `room` more. A buffer holding nothing is let go
    /// first when it is larger than `room`, so a session that went quiet after a burst
    /// does not keep the burst's buffer (frames still held keep their own bytes).
    pub fn read_buf(&mut self, room: usize) -> &mut BytesMut {
        if self.buf.is_empty() && self.buf.capacity() > room {
            self.buf = BytesMut::new();
        }
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Bytes pushed but not yet returned in a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Expects a new stream header next (after STARTTLS, after SASL
    /// success). Bytes already buffered are kept and framed afresh.
    pub fn restart(&mut self) {
        self.phase = Phase::ExpectHeader;
        self.scanner = Scanner::new(true, self.limits.max_depth);
        self.ws_run = 0;
    }

    /// The namespace scope stanzas are resolved in, once the header is seen.
    pub fn scope(&self) -> Option<&NsScope> {
        match &self.phase {
            Phase::InStream { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// The next complete frame; `Ok(None)` when more bytes are needed.
    /// After an error every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
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
        self.scanner.reset(false);
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
                let Phase::InStream { scope, foreign, .. } = &mut self.phase else {
                    return Err(nwf("element outside a stream"));
                };
                let mut root = xml::parse_framed_in(text, scope)?;
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

/// A stanza that uses a prefix its stream header declared (jabberd2 declares
/// `xmlns:ack` on its header and later sends `<ack:ack/>`) would be undeclared on the
/// other leg, where Custos writes its own header: the declarations it uses are added to
/// its root, and the stanza re-serialised. `None`: it needs none (the usual case).
fn declare_foreign(root: &mut xml::Element, foreign: &[(String, String)]) -> Option<Vec<u8>> {
    if foreign.is_empty() {
        return None;
    }
    let mut used: Vec<&str> = Vec::new();
    root.visit_prefixes(&mut |p| {
        if !used.contains(&p) {
            if let Some((prefix, _)) = foreign.iter().find(|(f, _)| f == p) {
                used.push(prefix.as_str());
            }
        }
    });
    let missing: Vec<(xml::Name, String)> = foreign
        .iter()
        .filter(|(p, _)| used.contains(&p.as_str()))
        .filter(|(p, _)| {
            let attr = format!("xmlns:{p}");
            !root.attrs.iter().any(|(k, _)| *k == attr)
        })
        .map(|(p, uri)| (format!("xmlns:{p}").into(), uri.clone()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    root.attrs.extend(missing);
    let mut out = Vec::new();
    root.write_to(&mut out);
    Some(out)
}

/// Parses the declaration (if any) and the stream open tag.
fn parse_header(text: &str, raw: Bytes) -> Result<(StreamHeader, NsScope), FrameError> {
    use quick_xml::events::Event;
    use quick_xml::Reader;

    // Attribute values cannot contain '<', so the open tag starts at the last one.
    let tag_start = text.rfind('<').unwrap_or(0);
    let decl = text.get(..tag_start).unwrap_or("").trim_end();
    let tag = text.get(tag_start..).unwrap_or("");
    let xml_decl = !decl.is_empty();
    if xml_decl {
        let mut reader = Reader::from_str(decl);
        let Ok(Event::Decl(d)) = reader.read_event() else {
            return Err(nwf("bad XML declaration"));
        };
        let version = d
            .version()
            .map_err(|e| FrameError::NotWellFormed {
                detail: format!("XML declaration: {e}"),
            })?
            .into_owned();
        if !version.starts_with(b"1.") {
            return Err(nwf("XML declaration: version is not 1.x"));
        }
        if let Some(enc) = d.encoding() {
            let enc = enc.map_err(|e| FrameError::NotWellFormed {
                detail: format!("XML declaration: {e}"),
            })?;
            if !enc.eq_ignore_ascii_case(b"UTF-8") {
                return Err(FrameError::UnsupportedEncoding {
                    encoding: String::from_utf8_lossy(&enc).into_owned(),
                });
            }
        }
        if !matches!(reader.read_event(), Ok(Event::Eof)) {
            return Err(nwf("bad XML declaration"));
        }
    }
    let mut reader = Reader::from_str(tag);
    let start = match reader.read_event() {
        Ok(Event::Start(s)) => s,
        Ok(_) => return Err(nwf("bad stream header")),
        Err(e) => {
            return Err(FrameError::NotWellFormed {
                detail: e.to_string(),
            })
        }
    };
    let tag = xml::read_tag(&start, tag)?;
    let namespaces = xml::declarations(&tag.attrs)?;
    let mut scope = NsScope::new();
    scope.declare(namespaces.clone());
    xml::check_attr_namespaces(&tag.attrs, &scope)?;
    let (prefix, local) = xml::split_qname(tag.qname)?;
    let ns = scope
        .resolve(prefix)
        .ok_or_else(|| FrameError::InvalidNamespace {
            detail: format!("prefix of <{}> is not declared", tag.qname),
        })?;
    if local != "stream" || ns != STREAMS_NS {
        return Err(FrameError::InvalidNamespace {
            detail: format!("<{}> in namespace {ns:?}", tag.qname),
        });
    }
    let attr = |name: &str| {
        tag.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let header = StreamHeader {
        raw,
        xml_decl,
        to: attr("to"),
        from: attr("from"),
        id: attr("id"),
        version: attr("version"),
        lang: attr("xml:lang"),
        default_ns: namespaces
            .iter()
            .rev()
            .find(|(p, _)| p.is_none())
            .map(|(_, n)| n.clone()),
        stream_prefix: prefix.map(str::to_owned),
        namespaces,
        attrs: tag.attrs,
    };
    Ok((header, scope))
}

/// Fuzzing entry point: frames arbitrary bytes pushed in chunks whose size
/// the first byte picks, and checks invariants that hold for any input.
/// Panics only if the framer itself is wrong.
#[doc(hidden)]
pub fn fuzz_framer(data: &[u8]) {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let limits = FrameLimits {
        max_stanza_bytes: 4096,
        max_header_bytes: 1024,
        max_depth: 16,
    };
    let mut framer = Framer::new(limits);
    let chunk = usize::from(seed & 0x0F) + 1;
    let mut consumed = 0usize;
    let mut pushed = 0usize;
    for piece in rest.chunks(chunk) {
        framer.push(piece);
        pushed += piece.len();
        // Each frame consumes at least one byte, so this ends.
        for _ in 0..=framer.buffered_len() {
            let frame = match framer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    assert_eq!(framer.next_frame(), Err(err), "framer not poisoned");
                    return;
                }
            };
            let raw = match &frame {
                Frame::StreamHeader(h) => h.raw.clone(),
                Frame::Stanza(s) => s.raw.clone(),
                Frame::Whitespace(b) | Frame::StreamEnd(b) => b.clone(),
            };
            assert!(!raw.is_empty(), "empty frame");
            assert_eq!(
                rest.get(consumed..consumed + raw.len()),
                Some(&raw[..]),
                "frame bytes are not the input bytes"
            );
            consumed += raw.len();
            if let Frame::Stanza(s) = &frame {
                let _ = crate::stanza::StanzaView::of(&s.root);
                if let Some(scope) = framer.scope() {
                    let out = s.root.to_bytes();
                    let text = std::str::from_utf8(&out);
                    let again = text.map(|t| xml::parse_element(t, scope));
                    assert!(
                        matches!(again, Ok(Ok(ref el)) if *el == s.root),
                        "re-serialised stanza does not parse back equal"
                    );
                }
            }
            if matches!(frame, Frame::StreamHeader(_)) && seed & 0x80 != 0 && consumed < 64 {
                // Exercise restart with bytes already buffered.
                framer.restart();
            }
        }
        assert_eq!(consumed + framer.buffered_len(), pushed);
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0' xml:lang='en'>";

    /// Frames everything pushed so far; the error, if any, ends the list.
    fn frames(framer: &mut Framer) -> (Vec<Frame>, Option<FrameError>) {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match framer.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn in_stream(body: &str) -> (Vec<Frame>, Option<FrameError>) {
        let mut f = Framer::new(FrameLimits::default());
        f.push(HEADER.as_bytes());
        f.push(body.as_bytes());
        let (mut frames, err) = frames(&mut f);
        assert!(matches!(frames.first(), Some(Frame::StreamHeader(_))));
        frames.remove(0);
        (frames, err)
    }

    fn error_of(body: &str) -> Option<FrameError> {
        in_stream(body).1
    }

    /// jabberd2 declares `xmlns:ack` on its stream header and then sends `<ack:ack/>`;
    /// forwarded under Custos's own header, the prefix must come with the stanza.
    #[test]
    fn a_prefix_declared_on_the_header_travels_with_the_stanzas_that_use_it() {
        let mut f = Framer::new(FrameLimits::default());
        f.push(
            b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' \
              xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns' version='1.0'>\
              <ack:ack/><message to='a@x'><body>hi</body></message>\
              <message to='a@x'><ack:r ack:h='1'/></message>\
              <ack:ack xmlns:ack='urn:other'/><s:features/>",
        );
        let (frames, err) = frames(&mut f);
        assert!(err.is_none(), "{err:?}");
        let raws: Vec<String> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Stanza(s) => Some(String::from_utf8_lossy(&s.raw).into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            raws,
            [
                "<ack:ack xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns'/>",
                // Untouched: it needs nothing from the header.
                "<message to='a@x'><body>hi</body></message>",
                "<message to='a@x' xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns'><ack:r ack:h='1'/></message>",
                // Declares its own.
                "<ack:ack xmlns:ack='urn:other'/>",
                "<s:features xmlns:s='http://etherx.jabber.org/streams'/>",
            ]
        );
        // Each parses alone, in a stream with only the usual declarations.
        for raw in &raws {
            let (frames, err) = in_stream(raw);
            assert!(err.is_none() && frames.len() == 1, "{raw}: {err:?}");
        }
    }

    #[test]
    fn a_mismatched_end_tag_is_not_well_formed_and_swallows_nothing() {
        // Byte by byte too: the name spans must survive resumption.
        for chunk in [usize::MAX, 1] {
            let mut f = Framer::new(FrameLimits::default());
            f.push(HEADER.as_bytes());
            let body = "<iq type='get' id='1'><query xmlns='urn:x'></iq><message><body>next</body></message>";
            let mut err = None;
            let mut got = Vec::new();
            for piece in body.as_bytes().chunks(chunk.min(body.len())) {
                f.push(piece);
                let (frames, e) = frames(&mut f);
                got.extend(frames);
                if e.is_some() {
                    err = e;
                    break;
                }
            }
            assert!(
                matches!(&err, Some(FrameError::NotWellFormed { detail }) if detail.contains("</iq>") && detail.contains("<query>")),
                "{err:?}"
            );
            assert!(
                got.iter().all(|f| !matches!(f, Frame::Stanza(_))),
                "{got:?}"
            );
        }
        // Prefixed names compare as written; matching ones pass.
        let (frames, err) = in_stream("<a:x xmlns:a='urn:a'><a:y/><b xmlns='urn:b'></b></a:x>");
        assert_eq!(err, None);
        assert_eq!(frames.len(), 1);
        assert!(matches!(
            error_of("<a:x xmlns:a='urn:a'></x>"),
            Some(FrameError::NotWellFormed { .. })
        ));
    }

    #[test]
    fn header_with_declaration() {
        let mut f = Framer::new(FrameLimits::default());
        f.push(HEADER.as_bytes());
        let Ok(Some(Frame::StreamHeader(h))) = f.next_frame() else {
            panic!("no header");
        };
        assert_eq!(&h.raw[..], HEADER.as_bytes());
        assert!(h.xml_decl);
        assert_eq!(h.to.as_deref(), Some("example.test"));
        assert_eq!(h.from, None);
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
        assert_eq!(h.stream_prefix.as_deref(), Some("stream"));
        assert_eq!(
            h.namespaces,
            vec![
                (None, "jabber:client".to_owned()),
                (Some("stream".to_owned()), STREAMS_NS.to_owned())
            ]
        );
        assert_eq!(f.buffered_len(), 0);
        assert_eq!(f.next_frame(), Ok(None));
    }

    #[test]
    fn header_without_declaration_double_quotes() {
        let raw = "<stream:stream xmlns=\"jabber:server\" from=\"a.test\" id=\"x'1\" \
                   xmlns:stream=\"http://etherx.jabber.org/streams\" version=\"1.0\">";
        let mut f = Framer::new(FrameLimits::default());
        f.push(raw.as_bytes());
        let Ok(Some(Frame::StreamHeader(h))) = f.next_frame() else {
            panic!("no header");
        };
        assert!(!h.xml_decl);
        assert_eq!(h.from.as_deref(), Some("a.test"));
        assert_eq!(h.id.as_deref(), Some("x'1"));
        assert_eq!(h.default_ns.as_deref(), Some("jabber:server"));
    }

    #[test]
    fn header_declaration_with_double_quotes_and_encoding() {
        let raw = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<s:stream xmlns:s='http://etherx.jabber.org/streams'>";
        let mut f = Framer::new(FrameLimits::default());
        f.push(raw.as_bytes());
        let Ok(Some(Frame::StreamHeader(h))) = f.next_frame() else {
            panic!("no header");
        };
        assert_eq!(h.stream_prefix.as_deref(), Some("s"));
        assert_eq!(h.default_ns, None);
        f.push(b"<s:features/></s:stream>");
        let (fr, err) = frames(&mut f);
        assert_eq!(err, None);
        assert!(
            matches!(&fr[..], [Frame::Stanza(s), Frame::StreamEnd(_)] if s.root.is("features", STREAMS_NS))
        );
    }

    #[test]
    fn header_errors() {
        let cases: [(&str, &str); 7] = [
            (
                "<stream:stream xmlns:stream='urn:wrong'>",
                "invalid-namespace",
            ),
            ("<stream:stream xmlns='jabber:client'>", "invalid-namespace"),
            (
                "<foo xmlns:stream='http://etherx.jabber.org/streams'>",
                "invalid-namespace",
            ),
            (
                "<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>",
                "unsupported-encoding",
            ),
            (
                "<?xml-stylesheet href='a'?><stream:stream>",
                "restricted-xml",
            ),
            ("<!DOCTYPE x><stream:stream>", "restricted-xml"),
            (
                "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>",
                "not-well-formed",
            ),
        ];
        for (input, condition) in cases {
            let mut f = Framer::new(FrameLimits::default());
            f.push(input.as_bytes());
            let err = f.next_frame().err();
            assert_eq!(
                err.as_ref().map(FrameError::condition),
                Some(condition),
                "{input}"
            );
        }
    }

    #[test]
    fn stanzas_whitespace_and_end() {
        let (fr, err) = in_stream(
            "\n<message to='b'><body>hi</body></message> \t<presence/>\n</stream:stream>",
        );
        assert_eq!(err, None);
        let kinds: Vec<String> = fr
            .iter()
            .map(|f| match f {
                Frame::StreamHeader(_) => "header".to_owned(),
                Frame::Stanza(s) => s.root.name.to_string(),
                Frame::Whitespace(w) => format!("ws{}", w.len()),
                Frame::StreamEnd(_) => "end".into(),
            })
            .collect();
        assert_eq!(kinds, ["ws1", "message", "ws2", "presence", "ws1", "end"]);
        let Some(Frame::Stanza(s)) = fr.get(1) else {
            panic!("no stanza")
        };
        assert_eq!(&s.raw[..], b"<message to='b'><body>hi</body></message>");
        assert_eq!(s.root.ns, "jabber:client");
    }

    #[test]
    fn keepalive_is_handed_out_at_once() {
        let mut f = Framer::new(FrameLimits::default());
        f.push(HEADER.as_bytes());
        f.push(b"<message><body>x");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b"</body></message> ");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Stanza(_)))));
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::Whitespace(Bytes::from_static(b" "))))
        );
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b" ");
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::Whitespace(Bytes::from_static(b" "))))
        );
    }

    #[test]
    fn stream_end_must_match_header() {
        let err = error_of("</stream:foo>");
        assert_eq!(
            err.as_ref().map(FrameError::condition),
            Some("not-well-formed")
        );
        let (fr, err) = in_stream("</stream:stream >  ");
        assert_eq!(err, None);
        assert!(
            matches!(&fr[..], [Frame::StreamEnd(e), Frame::Whitespace(_)] if &e[..] == b"</stream:stream >")
        );
        let err = error_of("</stream:stream><message/>");
        assert_eq!(
            err.as_ref().map(FrameError::condition),
            Some("not-well-formed")
        );
    }

    #[test]
    fn restart_expects_a_new_header_and_keeps_buffered_bytes() {
        let mut f = Framer::new(FrameLimits::default());
        f.push(HEADER.as_bytes());
        f.push(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        f.push(HEADER.as_bytes());
        f.push(b"<iq type='set' id='b'/>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Stanza(s))) if s.root.name == "success"));
        f.restart();
        assert_eq!(f.buffered_len(), HEADER.len() + 23);
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(h))) if h.xml_decl));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Stanza(s))) if s.root.name == "iq"));
        // Without a restart a second header is an ordinary element in the
        // stream namespace; with one, a stanza is not a header.
        f.restart();
        f.push(b"<message>");
        assert_eq!(
            f.next_frame().err().as_ref().map(FrameError::condition),
            Some("invalid-namespace")
        );
    }

    #[test]
    fn xml_declaration_only_before_the_header() {
        let err = error_of("<?xml version='1.0'?>");
        assert_eq!(
            err,
            Some(FrameError::RestrictedXml {
                what: "processing instruction"
            })
        );
    }

    #[test]
    fn restricted_constructs() {
        let cases = [
            ("<!-- hi -->", "comment"),
            ("<message><!-- hi --></message>", "comment"),
            ("<message><?php x?></message>", "processing instruction"),
            ("<?pi?>", "processing instruction"),
            ("<!DOCTYPE message>", "DTD"),
            ("<message><!ENTITY x 'y'></message>", "entity declaration"),
            ("<!ELEMENT a ANY>", "DTD markup declaration"),
            ("<!NOTATION a SYSTEM 'x'>", "DTD markup declaration"),
            ("<message><body>&xxe;</body></message>", "entity reference"),
            ("<message to='&xxe;'/>", "entity reference"),
            ("<message><body>&ltx;</body></message>", "entity reference"),
        ];
        for (input, what) in cases {
            let err = error_of(input);
            assert_eq!(err, Some(FrameError::RestrictedXml { what }), "{input}");
            assert_eq!(err.map(|e| e.condition()), Some("restricted-xml"));
        }
    }

    #[test]
    fn not_well_formed_inputs() {
        let cases = [
            "hello",
            "<message><body>x</message></body>",
            "<message></presence>",
            "<message a='1' a='2'/>",
            "<message a='1'b='2'/>",
            "<message a=1/>",
            "<message a='<'/>",
            "<message><body>a & b</body></message>",
            "<message><body>&#0;</body></message>",
            "<message><body>&#xD800;</body></message>",
            "<message><body>&#1114112;</body></message>",
            "<message><body>&#;</body></message>",
            "<message><body>\u{1}</body></message>",
            "<message><body>\u{FFFE}</body></message>",
            "<message><body>]]></body></message>",
            "<p:message/>",
            "<![CDATA[x]]>",
            "<message/ >",
            "<1message/>",
            "<message><!x></message>",
        ];
        for input in cases {
            let err = error_of(input);
            assert!(
                matches!(err, Some(FrameError::NotWellFormed { .. })),
                "{input}: {err:?}"
            );
            assert_eq!(err.map(|e| e.condition()), Some("not-well-formed"));
        }
    }

    #[test]
    fn bad_utf8_is_not_well_formed() {
        let mut f = Framer::new(FrameLimits::default());
        f.push(HEADER.as_bytes());
        f.push(b"<message><body>\xC3\x28</body></message>");
        let (_, err) = frames(&mut f);
        assert!(matches!(err, Some(FrameError::NotWellFormed { .. })));
    }

    #[test]
    fn utf8_split_across_pushes_is_fine() {
        let stanza = "<message><body>h\u{E9}\u{1F600}</body></message>".as_bytes();
        for cut in 0..stanza.len() {
            let mut f = Framer::new(FrameLimits::default());
            f.push(HEADER.as_bytes());
            assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
            f.push(stanza.get(..cut).unwrap_or_default());
            assert_eq!(f.next_frame(), Ok(None));
            f.push(stanza.get(cut..).unwrap_or_default());
            let Ok(Some(Frame::Stanza(s))) = f.next_frame() else {
                panic!("cut at {cut}");
            };
            assert_eq!(
                s.root.child("body", "jabber:client").map(Element::text),
                Some("h\u{E9}\u{1F600}".into())
            );
        }
    }

    #[test]
    fn too_large_is_raised_before_the_stanza_completes() {
        let limits = FrameLimits {
            max_stanza_bytes: 100,
            ..FrameLimits::default()
        };
        let mut f = Framer::new(limits);
        f.push(HEADER.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        let stanza = format!("<message><body>{}</body></message>", "a".repeat(68));
        assert_eq!(stanza.len(), 100);
        f.push(stanza.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Stanza(_)))));
        f.push(b"<message><body>");
        f.push(&[b'a'; 85]);
        assert_eq!(f.next_frame(), Ok(None)); // exactly 100 bytes buffered
        f.push(b"a");
        let err = f.next_frame();
        assert_eq!(err, Err(FrameError::TooLarge { limit: 100 }));
        assert_eq!(err.err().map(|e| e.condition()), Some("policy-violation"));
        // Poisoned: the same error again, whatever is pushed.
        f.push(b"</body></message>");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 100 }));
    }

    /// A run passed a word at a time, or handed to memchr, ends exactly where
    /// the byte-by-byte steps would: a unit whose text or attribute value crosses
    /// the limit is refused with the limit's error, whether it crosses it in the
    /// first words of the run or far past them, and one that ends at the limit is
    /// framed.
    #[test]
    fn a_limit_crossed_inside_a_run_is_raised() {
        for run in [1, 7, 8, 9, 31, 32, 33, 40, 200] {
            for (open, close) in [
                ("<message><body>", "</body></message>"),
                ("<message id='", "'/>"),
            ] {
                let limit = open.len() + run + close.len();
                let limits = FrameLimits {
                    max_stanza_bytes: limit,
                    ..FrameLimits::default()
                };
                let mut f = Framer::new(limits);
                f.push(HEADER.as_bytes());
                assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
                // Text of exactly `run` bytes with `>` and non-ASCII characters in it.
                let mut text = String::new();
                for c in ['a', '>', '\u{E9}'].into_iter().cycle() {
                    if text.len() + c.len_utf8() > run {
                        break;
                    }
                    text.push(c);
                }
                while text.len() < run {
                    text.push('a');
                }
                let whole = format!("{open}{text}{close}");
                assert_eq!(whole.len(), limit);
                f.push(whole.as_bytes());
                assert!(
                    matches!(f.next_frame(), Ok(Some(Frame::Stanza(_)))),
                    "{whole}"
                );
                f.push(open.as_bytes());
                f.push(&vec![b'a'; run + close.len() + 1]);
                assert_eq!(
                    f.next_frame(),
                    Err(FrameError::TooLarge { limit }),
                    "{open} {run}"
                );
            }
        }
    }

    /// [`find_stop`] answers as a plain search does: at every offset, in the words it
    /// tests itself and past them, for stops next to non-ASCII bytes and to bytes
    /// that differ from a stop only in their high bit (`<` is 0x3C, 0xBC is not),
    /// and `None` at the end of any run that holds no stop.
    #[test]
    fn find_stop_finds_the_first_stop_a_plain_search_finds() {
        let stops = [b'<', b'&', b'\''];
        let plain = |rest: &[u8]| rest.iter().position(|b| stops.contains(b));
        let fillers: [&[u8]; 4] = [
            b"a",
            b"\xBC\xA6\xA7",
            "\u{E9}\u{4E2D}".as_bytes(),
            b">\"=;]",
        ];
        for filler in fillers {
            for len in 0..80 {
                let run: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
                assert_eq!(find_stop(&run, stops), None, "{run:?}");
                for at in 0..len {
                    for stop in stops {
                        let mut run = run.clone();
                        if let Some(b) = run.get_mut(at) {
                            *b = stop;
                        }
                        if let Some(b) = run.get_mut(at + 3) {
                            *b = b'&';
                        }
                        assert_eq!(find_stop(&run, stops), plain(&run), "{run:?}");
                        assert_eq!(find_stop(&run, stops), Some(at), "{run:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn header_and_whitespace_limits() {
        let limits = FrameLimits {
            max_stanza_bytes: 10,
            max_header_bytes: 50,
            max_depth: 4,
        };
        let mut f = Framer::new(limits);
        f.push(&HEADER.as_bytes()[..51]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 50 }));

        let mut f = Framer::new(limits);
        f.push(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
        let mut f = Framer::new(FrameLimits {
            max_header_bytes: 100,
            ..limits
        });
        f.push(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        f.push(b"     ");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Whitespace(_)))));
        f.push(b"     ");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Whitespace(_)))));
        f.push(b" ");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 10 }));
    }

    #[test]
    fn whitespace_run_resets_after_a_stanza() {
        let limits = FrameLimits {
            max_stanza_bytes: 10,
            ..FrameLimits::default()
        };
        let mut f = Framer::new(limits);
        f.push(HEADER.as_bytes());
        f.push(b"        <a/>        <a/>        ");
        let (fr, err) = frames(&mut f);
        assert_eq!(err, None);
        assert_eq!(fr.len(), 6);
    }

    thread_local! {
        /// How often the scanner tried to read an attribute at once on this thread.
        pub(super) static ATTRIBUTE_TRIES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A peer that pads a start tag with white space the fast path cannot finish
    /// (before `/>`, before an attribute it leaves to the steps, or at the end of
    /// what has arrived) must not make the scanner look at the padding again for
    /// every byte of it: that would be quadratic work from one stanza.
    #[test]
    fn white_space_in_a_tag_is_read_once() {
        const PAD: usize = 100_000;
        let pad = " ".repeat(PAD);
        let newlines = "\n".repeat(PAD);
        for stanza in [
            format!("<message{pad}/>"),
            format!("<message{pad}>x</message>"),
            format!("<message id='1'{newlines}/>"),
            format!("<message{pad}a='&amp;'/>"),
            format!("<message{pad}a = '1'/>"),
        ] {
            let limits = FrameLimits {
                max_stanza_bytes: 1 << 20,
                ..FrameLimits::default()
            };
            let mut framer = Framer::new(limits);
            framer.push(HEADER.as_bytes());
            framer.push(stanza.as_bytes());
            ATTRIBUTE_TRIES.with(|n| n.set(0));
            let (frames, err) = frames(&mut framer);
            assert_eq!(err, None);
            assert!(matches!(frames.last(), Some(Frame::Stanza(_))));
            let tries = ATTRIBUTE_TRIES.with(|n| n.get());
            assert!(tries < 10, "{tries} tries for {} bytes", stanza.len());
        }
        // The padding arriving a little at a time: each push may look at it once.
        let mut framer = Framer::new(FrameLimits {
            max_stanza_bytes: 1 << 20,
            ..FrameLimits::default()
        });
        framer.push(HEADER.as_bytes());
        framer.push(b"<message");
        ATTRIBUTE_TRIES.with(|n| n.set(0));
        for _ in 0..1000 {
            framer.push(&[b' '; 100]);
            assert!(matches!(
                framer.next_frame(),
                Ok(Some(Frame::StreamHeader(_))) | Ok(None)
            ));
        }
        let tries = ATTRIBUTE_TRIES.with(|n| n.get());
        assert!(tries <= 2 * 1000 + 10, "{tries} tries for 1000 pushes");
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let limits = FrameLimits {
            max_depth: 3,
            ..FrameLimits::default()
        };
        let mut f = Framer::new(limits);
        f.push(HEADER.as_bytes());
        f.push(b"<a><b><c/></b></a><a><b><c><d>");
        let (fr, err) = frames(&mut f);
        assert_eq!(fr.len(), 2);
        assert_eq!(err, Some(FrameError::TooDeep { limit: 3 }));
        assert_eq!(err.map(|e| e.condition()), Some("policy-violation"));
    }

    #[test]
    fn every_condition_is_mapped() {
        let all = [
            (
                FrameError::NotWellFormed {
                    detail: String::new(),
                },
                "not-well-formed",
            ),
            (
                FrameError::RestrictedXml { what: "comment" },
                "restricted-xml",
            ),
            (FrameError::TooLarge { limit: 1 }, "policy-violation"),
            (FrameError::TooDeep { limit: 1 }, "policy-violation"),
            (
                FrameError::InvalidNamespace {
                    detail: String::new(),
                },
                "invalid-namespace",
            ),
            (
                FrameError::UnsupportedEncoding {
                    encoding: String::new(),
                },
                "unsupported-encoding",
            ),
        ];
        for (err, condition) in all {
            assert_eq!(err.condition(), condition);
        }
    }

    #[test]
    fn markup_lookalikes_inside_values_and_cdata() {
        let (fr, err) = in_stream(
            "<message id='a>b/>c' x=\"'/>\"><body><![CDATA[</message> <a> ]] ]]]>&gt;</body></message>",
        );
        assert_eq!(err, None);
        let [Frame::Stanza(s)] = &fr[..] else {
            panic!("{fr:?}")
        };
        assert_eq!(s.root.attr("id"), Some("a>b/>c"));
        assert_eq!(s.root.attr("x"), Some("'/>"));
        assert_eq!(
            s.root.child("body", "jabber:client").map(Element::text),
            Some("</message> <a> ]] ]>".into())
        );
    }
}
