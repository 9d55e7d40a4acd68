//! The search query language, parsed into a plain syntax tree with no index
//! knowledge (see docs/search-syntax.md).
//!
//! ```text
//! query    := all
//! all      := any (["AND"] any)*          (juxtaposition is AND)
//! any      := unary ("OR" unary)*         (OR binds tighter than AND)
//! unary    := ("NOT" | "-") unary | near
//! near     := primary [("NEAR/n" | "ONEAR/n") primary]
//! primary  := "(" all ")" | term
//! term     := word | prefix* | wild?card | word~[1|2] | "phrase" | field ":" value
//! field    := from | to | with | account | room | direction | type | action | rule | msg
//!           | via | after | before
//! ```
//!
//! A saved lexicon (`@name`) is replaced by its terms, ORed, before parsing
//! ([`Lexicons::expand`]), so what is stored and exported is the query that ran.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use custos_text::Unmasked;
use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder, DFA};

use crate::record::{Action, Direction, MessageRecord, Via};
use crate::time::Timestamp;

/// A JID-valued field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JidField {
    From,
    To,
    /// Either participant.
    With,
    /// The proven JID of the session whose stream carried the copy.
    Account,
}

/// A one-word pattern: what a prefix, wildcard or fuzzy term matches, word by word.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Word {
    /// Exactly this normalised word.
    Exact(String),
    /// Any word starting with this.
    Prefix(String),
    /// `*` any run of characters, `?` one character.
    Wildcard(String),
    /// Any word within this many edits (insert, delete, substitute, swap two neighbours).
    Fuzzy(String, u8),
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// One or more normalised tokens that must appear consecutively (one
    /// token = a plain word).
    Text(Vec<String>),
    /// A prefix, wildcard or fuzzy term; `token` is as the user wrote it.
    Pattern {
        word: Word,
        token: String,
    },
    /// A word from `left` within `within` words of a word from `right` (`ordered`:
    /// the left one first).
    Near {
        left: Vec<Word>,
        right: Vec<Word>,
        within: u32,
        ordered: bool,
        token: String,
    },
    Jid(JidField, String),
    /// Group chat in this room (a bare JID): what was said to it and echoed from it.
    Room(String),
    Direction(Direction),
    Type(String),
    Action(Action),
    Rule(String),
    /// A logical-message identity: every copy of one message.
    Message(String),
    Via(crate::record::Via),
    /// Record time ≥ this.
    After(Timestamp),
    /// Record time < this.
    Before(Timestamp),
}

/// A boolean combination of clauses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Expr {
    /// Every message (the empty query).
    #[default]
    All,
    Clause(Clause),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub expr: Expr,
}

impl Expr {
    /// Every clause in the tree, in order.
    pub fn clauses(&self) -> Vec<&Clause> {
        let mut out = Vec::new();
        fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a Clause>) {
            match e {
                Expr::All => {}
                Expr::Clause(c) => out.push(c),
                Expr::Not(e) => walk(e, out),
                Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| walk(e, out)),
            }
        }
        walk(self, &mut out);
        out
    }

    /// Evaluates the tree with `clause` deciding each leaf.
    pub fn eval(&self, clause: &mut impl FnMut(&Clause) -> bool) -> bool {
        match self {
            Expr::All => true,
            Expr::Clause(c) => clause(c),
            Expr::Not(e) => !e.eval(clause),
            Expr::And(v) => v.iter().all(|e| e.eval(clause)),
            Expr::Or(v) => v.iter().any(|e| e.eval(clause)),
        }
    }
}

/// A query that cannot be understood, naming the token at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown field in {token:?} (fields: from, to, with, account, room, direction, type, action, rule, msg, via, after, before)")]
    UnknownField { token: String },
    #[error("bad value in {token:?}: {reason}")]
    BadValue { token: String, reason: String },
    #[error("unterminated quote in {token:?}")]
    UnterminatedQuote { token: String },
    #[error("{token:?} contains nothing searchable")]
    Empty { token: String },
    #[error("{token:?}: {reason}")]
    Syntax { token: String, reason: String },
    #[error("no lexicon named {token:?} ({known})")]
    UnknownLexicon { token: String, known: String },
}

fn syntax(token: &str, reason: &str) -> QueryError {
    QueryError::Syntax {
        token: token.to_string(),
        reason: reason.to_string(),
    }
}

/// Lowercases and splits text into word tokens: runs of alphanumeric
/// characters. Index and query must use exactly this function (or
/// [`for_each_token`], which yields the same tokens).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, |t| out.push(t.to_owned()));
    out
}

/// Calls `f` with each token [`tokenize`] would return, in order, without allocating
/// one string per token: a word already in lowercase ASCII is passed as it stands,
/// other ASCII words are lowercased into one reused buffer.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    let mut lower = String::new();
    for t in text.split(|c: char| !c.is_alphanumeric()) {
        if t.is_empty() {
            continue;
        }
        if !t.is_ascii() {
            // `str::to_lowercase` as `tokenize` always did: it knows the context rules
            // (a final sigma) that per-character lowercasing does not.
            f(&t.to_lowercase());
        } else if t.bytes().any(|b| b.is_ascii_uppercase()) {
            lower.clear();
            lower.push_str(t);
            lower.make_ascii_lowercase();
            f(&lower);
        } else {
            f(t);
        }
    }
}

/// The texts of a message that word terms search, each its own part (a phrase or a
/// NEAR never spans two): subject, body, other texts, and each archived file's name and
/// media type, as written; then, for each of those that hides words from a scanner but
/// not from a reader (an invisible character inside a word, fullwidth letters, letters
/// drawn like Latin ones, a word spelt out), the text as a reader sees it, one part per
/// view ([`custos_text::Unmasked::views`]), so a search finds what the rules found.
/// Index and export filter must use exactly this function.
pub fn text_parts(m: &MessageRecord) -> impl Iterator<Item = Cow<'_, str>> {
    let written = written_parts(m);
    let seen = written
        .clone()
        .flat_map(Unmasked::views)
        .map(|u| Cow::Owned(u.text));
    written.map(Cow::Borrowed).chain(seen)
}

/// The texts of [`text_parts`] as written.
fn written_parts(m: &MessageRecord) -> impl Iterator<Item = &str> + Clone {
    let extra = m.capture.extra.iter().map(|t| t.text.as_str());
    let files = m
        .capture
        .files
        .iter()
        .flat_map(|f| [&*f.name, f.media_type.as_str()]);
    [&m.subject, &m.body]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(extra)
        .chain(files)
}

/// Positions left between two parts of a message's text, in the index and the export
/// filter alike: more than any `NEAR/n` spans, so neither a phrase nor a NEAR joins two
/// parts.
pub const PART_GAP: u32 = MAX_NEAR;

/// The room of a group-chat copy, normalised and bare: its sender when it came from the
/// room (inbound), its addressee when a user behind Custos sent it (outbound). `None`
/// for anything but group chat.
pub fn room_of(m: &MessageRecord) -> Option<String> {
    if !m.stanza_type.eq_ignore_ascii_case("groupchat") {
        return None;
    }
    let jid = match m.direction {
        Direction::Inbound => &m.from,
        Direction::Outbound => &m.to,
    };
    Some(bare_jid(&normalize_jid(jid)).to_string())
}

/// Normalises a JID for matching: lowercase, surrounding space trimmed.
pub fn normalize_jid(jid: &str) -> String {
    normalized_jid(jid).into_owned()
}

/// [`normalize_jid`], borrowing the JID when it is already normal (lowercase ASCII
/// without surrounding space), as nearly every JID on the wire is.
pub fn normalized_jid(jid: &str) -> std::borrow::Cow<'_, str> {
    let jid = jid.trim();
    if jid.is_ascii() && !jid.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Borrowed(jid)
    } else {
        std::borrow::Cow::Owned(jid.to_lowercase())
    }
}

/// The bare form of a JID (without `/resource`).
pub fn bare_jid(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

/// Most edits a fuzzy term may allow.
pub const MAX_FUZZY: u8 = 2;
/// Largest `n` in `NEAR/n`.
pub const MAX_NEAR: u32 = 1000;
/// Deepest nesting of parentheses and NOTs a query may have (parsing and evaluation
/// recurse once per level).
pub const MAX_DEPTH: usize = 64;
/// Longest query, in bytes, lexicons written out.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Longest word of a fuzzy term, in characters (its automaton grows with the square).
pub const MAX_FUZZY_CHARS: usize = 64;
/// Most prefix, wildcard and fuzzy terms in one query (NEAR's sides included).
pub const MAX_PATTERNS: usize = 256;
/// Most of those that must be checked against every word of the vocabulary (fuzzy
/// terms, and wildcards with no literal start).
pub const MAX_SCANS: usize = 16;

fn automaton_builder(distance: u8) -> &'static LevenshteinAutomatonBuilder {
    static ONE: OnceLock<LevenshteinAutomatonBuilder> = OnceLock::new();
    static TWO: OnceLock<LevenshteinAutomatonBuilder> = OnceLock::new();
    match distance {
        0 | 1 => ONE.get_or_init(|| LevenshteinAutomatonBuilder::new(1, true)),
        _ => TWO.get_or_init(|| LevenshteinAutomatonBuilder::new(MAX_FUZZY, true)),
    }
}

/// A compiled [`Word`], matching normalised words.
pub enum WordMatcher {
    Exact(String),
    Prefix(String),
    Wildcard(Vec<char>),
    Fuzzy(DFA, u8),
}

impl Word {
    pub fn matcher(&self) -> WordMatcher {
        match self {
            Word::Exact(w) => WordMatcher::Exact(w.clone()),
            Word::Prefix(p) => WordMatcher::Prefix(p.clone()),
            Word::Wildcard(g) => WordMatcher::Wildcard(g.chars().collect()),
            Word::Fuzzy(w, d) => WordMatcher::Fuzzy(automaton_builder(*d).build_dfa(w), *d),
        }
    }

    /// The literal start every match shares (for narrowing a sorted word list).
    pub fn literal_prefix(&self) -> &str {
        match self {
            Word::Exact(w) | Word::Prefix(w) => w,
            Word::Wildcard(g) => g.split(['*', '?']).next().unwrap_or(""),
            Word::Fuzzy(..) => "",
        }
    }
}

impl WordMatcher {
    pub fn matches(&self, word: &str) -> bool {
        match self {
            WordMatcher::Exact(w) => w == word,
            WordMatcher::Prefix(p) => word.starts_with(p.as_str()),
            WordMatcher::Wildcard(g) => glob(g, &word.chars().collect::<Vec<_>>()),
            WordMatcher::Fuzzy(dfa, d) => match dfa.eval(word) {
                Distance::Exact(n) => n <= *d,
                Distance::AtLeast(_) => false,
            },
        }
    }
}

/// `*` matches any run of characters (also none), `?` exactly one.
fn glob(pattern: &[char], text: &[char]) -> bool {
    // Iterative matching with one backtrack point: linear for one `*`, and never
    // exponential (each `*` resumes from the last one only).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether some position in `a` and some position in `b` (each sorted ascending) are
/// at most `within` apart, `ordered`: the one from `b` after the one from `a`. One
/// position is one word, so a word never stands near itself.
pub fn near(a: &[u32], b: &[u32], within: u32, ordered: bool) -> bool {
    a.iter().any(|&p| {
        let lo = if ordered {
            p.saturating_add(1)
        } else {
            p.saturating_sub(within)
        };
        let hi = p.saturating_add(within);
        let start = b.partition_point(|&q| q < lo);
        b[start..].iter().take_while(|&&q| q <= hi).any(|&q| q != p)
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    Near { within: u32, ordered: bool },
    Term(String),
}

struct Lexed {
    tok: Tok,
    /// As written, for errors.
    text: String,
}

/// Splits into tokens: parentheses, operators, and terms (whitespace separated, with
/// `"quoted phrases"` kept whole, also after `-` or `field:`). A `-` directly before
/// a term or `(` is NOT.
fn lex(q: &str) -> Result<Vec<Lexed>, QueryError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let flush = |cur: &mut String, out: &mut Vec<Lexed>| -> Result<(), QueryError> {
        if cur.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(cur);
        let tok = match text.as_str() {
            "AND" => Tok::And,
            "OR" => Tok::Or,
            "NOT" => Tok::Not,
            t if t.starts_with("NEAR/")
                || t.starts_with("ONEAR/")
                || t == "NEAR"
                || t == "ONEAR" =>
            {
                let (ordered, n) = match t.strip_prefix("ONEAR") {
                    Some(n) => (true, n),
                    None => (false, t.strip_prefix("NEAR").unwrap_or("")),
                };
                let within = n
                    .strip_prefix('/')
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| (1..=MAX_NEAR).contains(n))
                    .ok_or_else(|| {
                        syntax(
                            t,
                            &format!("expected a distance 1..={MAX_NEAR} in words, as in NEAR/5"),
                        )
                    })?;
                Tok::Near { within, ordered }
            }
            _ => Tok::Term(text.clone()),
        };
        out.push(Lexed { tok, text });
        Ok(())
    };
    for c in q.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            _ if in_quote => cur.push(c),
            '(' | ')' => {
                if c == '(' && cur == "-" {
                    cur.clear();
                    out.push(Lexed {
                        tok: Tok::Not,
                        text: "-".into(),
                    });
                }
                flush(&mut cur, &mut out)?;
                out.push(Lexed {
                    tok: if c == '(' { Tok::Open } else { Tok::Close },
                    text: c.to_string(),
                });
            }
            c if c.is_whitespace() => flush(&mut cur, &mut out)?,
            c => cur.push(c),
        }
    }
    if in_quote {
        return Err(QueryError::UnterminatedQuote { token: cur });
    }
    flush(&mut cur, &mut out)?;
    // `-term` is NOT term.
    let mut split = Vec::with_capacity(out.len());
    for l in out {
        match &l.tok {
            Tok::Term(t) if t.len() > 1 && t.starts_with('-') => {
                split.push(Lexed {
                    tok: Tok::Not,
                    text: "-".into(),
                });
                let rest = t[1..].to_string();
                split.push(Lexed {
                    tok: Tok::Term(rest.clone()),
                    text: rest,
                });
            }
            _ => split.push(l),
        }
    }
    Ok(split)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Parses a query string. A lexicon reference (`@name`) must have been expanded
/// ([`Lexicons::expand`]); here it is an error.
pub fn parse(q: &str) -> Result<Query, QueryError> {
    if q.len() > MAX_QUERY_BYTES {
        let start: String = q.chars().take(40).collect();
        return Err(syntax(
            &start,
            &format!("the query is longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let toks = lex(q)?;
    let mut p = Parser {
        toks,
        at: 0,
        depth: 0,
    };
    if p.toks.is_empty() {
        return Ok(Query::default());
    }
    let expr = p.all()?;
    if let Some(l) = p.toks.get(p.at) {
        return Err(syntax(&l.text, "unexpected here (a ')' without its '('?)"));
    }
    bound_patterns(&expr)?;
    Ok(Query { expr })
}

/// Bounds the work a query asks of the vocabulary.
fn bound_patterns(expr: &Expr) -> Result<(), QueryError> {
    let (mut patterns, mut scans) = (0usize, 0usize);
    for c in expr.clauses() {
        let (words, token): (Vec<&Word>, &str) = match c {
            Clause::Pattern { word, token } => (vec![word], token),
            Clause::Near {
                left, right, token, ..
            } => (left.iter().chain(right).collect(), token),
            _ => continue,
        };
        for w in words {
            if matches!(w, Word::Exact(_)) {
                continue;
            }
            patterns += 1;
            if w.literal_prefix().is_empty() {
                scans += 1;
            }
            if patterns > MAX_PATTERNS {
                return Err(syntax(
                    token,
                    &format!(
                        "more than {MAX_PATTERNS} prefix, wildcard and fuzzy terms in one query"
                    ),
                ));
            }
            if scans > MAX_SCANS {
                return Err(syntax(
                    token,
                    &format!("more than {MAX_SCANS} fuzzy terms and wildcards without a literal start in one query"),
                ));
            }
        }
    }
    Ok(())
}

struct Parser {
    toks: Vec<Lexed>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|l| &l.tok)
    }

    fn text(&self, at: usize) -> String {
        self.toks
            .get(at)
            .map_or_else(|| "end of query".to_string(), |l| l.text.clone())
    }

    fn all(&mut self) -> Result<Expr, QueryError> {
        let mut parts = vec![self.any()?];
        loop {
            match self.peek() {
                None | Some(Tok::Close) => break,
                Some(Tok::And) => {
                    self.at += 1;
                    if matches!(self.peek(), None | Some(Tok::Close)) {
                        return Err(syntax(&self.text(self.at - 1), "AND needs a term after it"));
                    }
                }
                _ => {}
            }
            parts.push(self.any()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn any(&mut self) -> Result<Expr, QueryError> {
        let mut parts = vec![self.unary()?];
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    /// One level deeper, refused past [`MAX_DEPTH`].
    fn descend(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(syntax(
                &self.text(self.at.saturating_sub(1)),
                &format!("nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.peek() == Some(&Tok::Not) {
            self.at += 1;
            self.descend()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.near()
    }

    fn near(&mut self) -> Result<Expr, QueryError> {
        let left_at = self.at;
        let left = self.primary()?;
        let Some(&Tok::Near { within, ordered }) = self.peek() else {
            return Ok(left);
        };
        let op_at = self.at;
        self.at += 1;
        let right_at = self.at;
        let right = self.primary()?;
        if let Some(Tok::Near { .. }) = self.peek() {
            return Err(syntax(
                &self.text(self.at),
                "NEAR joins two terms; group the ones you mean with AND",
            ));
        }
        let token = format!(
            "{} {} {}",
            self.text(left_at),
            self.text(op_at),
            self.text(right_at)
        );
        let words = |e: Expr, at: usize| -> Result<Vec<Word>, QueryError> {
            near_words(e).ok_or_else(|| {
                syntax(
                    &self.text(at),
                    "each side of NEAR is a word, prefix, wildcard or fuzzy term, or (a OR b …) of them",
                )
            })
        };
        Ok(Expr::Clause(Clause::Near {
            left: words(left, left_at)?,
            right: words(right, right_at)?,
            within,
            ordered,
            token,
        }))
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let at = self.at;
        match self.toks.get(at).map(|l| l.tok.clone()) {
            None => Err(syntax(
                &self.text(at.saturating_sub(1)),
                "needs a term after it",
            )),
            Some(Tok::Open) => {
                self.at += 1;
                if self.peek() == Some(&Tok::Close) {
                    return Err(syntax("()", "empty parentheses"));
                }
                self.descend()?;
                let e = self.all()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::Close) {
                    return Err(syntax("(", "this '(' is never closed"));
                }
                self.at += 1;
                Ok(e)
            }
            Some(Tok::Term(t)) => {
                self.at += 1;
                Ok(Expr::Clause(term(&t)?))
            }
            Some(_) => Err(syntax(&self.text(at), "expected a term here")),
        }
    }
}

/// The words of one side of a NEAR: a word pattern, or an OR of them.
fn near_words(e: Expr) -> Option<Vec<Word>> {
    match e {
        Expr::Clause(Clause::Text(mut w)) if w.len() == 1 => {
            w.pop().map(Word::Exact).map(|w| vec![w])
        }
        Expr::Clause(Clause::Pattern { word, .. }) => Some(vec![word]),
        Expr::Or(v) => {
            let mut out = Vec::new();
            for e in v {
                out.extend(near_words(e)?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// One search term.
fn term(token: &str) -> Result<Clause, QueryError> {
    let bad = |reason: &str| QueryError::BadValue {
        token: token.to_string(),
        reason: reason.to_string(),
    };
    if token.starts_with('@') {
        return Err(QueryError::UnknownLexicon {
            token: token.to_string(),
            known: "no lexicons are defined here".into(),
        });
    }
    if token.starts_with('"') {
        let words = tokenize(unquote(token));
        if words.is_empty() {
            return Err(QueryError::Empty {
                token: token.to_string(),
            });
        }
        return Ok(Clause::Text(words));
    }
    if let Some((field, value)) = token.split_once(':') {
        let value = unquote(value);
        if value.is_empty() {
            return Err(bad("empty value"));
        }
        return Ok(match field.to_ascii_lowercase().as_str() {
            "from" => Clause::Jid(JidField::From, normalize_jid(value)),
            "to" => Clause::Jid(JidField::To, normalize_jid(value)),
            "with" => Clause::Jid(JidField::With, normalize_jid(value)),
            "account" => Clause::Jid(JidField::Account, normalize_jid(value)),
            "room" => {
                let room = normalize_jid(value);
                if room.contains('/') {
                    return Err(bad("a room is a bare JID (room@service), without /nick"));
                }
                Clause::Room(room)
            }
            "msg" => Clause::Message(value.to_ascii_lowercase()),
            "via" => match value.to_ascii_lowercase().as_str() {
                "direct" => Clause::Via(Via::Direct),
                "carbon-sent" => Clause::Via(Via::CarbonSent),
                "carbon-received" => Clause::Via(Via::CarbonReceived),
                "mam" => Clause::Via(Via::Mam),
                _ => return Err(bad("expected direct, carbon-sent, carbon-received or mam")),
            },
            "direction" => match value.to_ascii_lowercase().as_str() {
                "inbound" => Clause::Direction(Direction::Inbound),
                "outbound" => Clause::Direction(Direction::Outbound),
                _ => return Err(bad("expected inbound or outbound")),
            },
            "type" => Clause::Type(value.to_lowercase()),
            "action" => match value.to_ascii_lowercase().as_str() {
                "allow" => Clause::Action(Action::Allow),
                "flag" => Clause::Action(Action::Flag),
                "redact" => Clause::Action(Action::Redact),
                "block" => Clause::Action(Action::Block),
                _ => return Err(bad("expected allow, flag, redact or block")),
            },
            "rule" => Clause::Rule(value.to_string()),
            "after" => Clause::After(
                Timestamp::parse(value).map_err(|_| bad("expected YYYY-MM-DD or RFC 3339 time"))?,
            ),
            "before" => Clause::Before(
                Timestamp::parse(value).map_err(|_| bad("expected YYYY-MM-DD or RFC 3339 time"))?,
            ),
            _ => {
                return Err(QueryError::UnknownField {
                    token: token.to_string(),
                })
            }
        });
    }
    if let Some((base, distance)) = token.rsplit_once('~') {
        let distance = match distance {
            "" => 1,
            "1" => 1,
            "2" => 2,
            _ => return Err(bad("a fuzzy term allows ~1 or ~2 edits")),
        };
        let word =
            one_word(base).ok_or_else(|| bad("a fuzzy term is one word of letters and digits"))?;
        if word.chars().count() > MAX_FUZZY_CHARS {
            return Err(bad(&format!(
                "a fuzzy term is at most {MAX_FUZZY_CHARS} characters"
            )));
        }
        return Ok(Clause::Pattern {
            word: Word::Fuzzy(word, distance),
            token: token.to_string(),
        });
    }
    if token.contains(['*', '?']) {
        let pattern = token.to_lowercase();
        if !pattern
            .chars()
            .all(|c| c.is_alphanumeric() || c == '*' || c == '?')
        {
            return Err(bad(
                "a wildcard term is one word: letters and digits with * or ?",
            ));
        }
        if pattern.chars().all(|c| c == '*') {
            return Err(bad("matches every word; leave it out"));
        }
        let stem = pattern.trim_end_matches('*');
        let word = if !stem.contains(['*', '?']) {
            Word::Prefix(stem.to_string())
        } else {
            Word::Wildcard(pattern.clone())
        };
        return Ok(Clause::Pattern {
            word,
            token: token.to_string(),
        });
    }
    let words = tokenize(token);
    if words.is_empty() {
        return Err(QueryError::Empty {
            token: token.to_string(),
        });
    }
    Ok(Clause::Text(words))
}

/// `text` as exactly one normalised word, if it is one.
fn one_word(text: &str) -> Option<String> {
    let mut words = tokenize(text);
    (words.len() == 1 && text.chars().all(char::is_alphanumeric))
        .then(|| words.pop())
        .flatten()
}

/// Saved lexicons: named lists of terms, each usable in a query as `@name` (any of
/// its terms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lexicons(BTreeMap<String, Vec<String>>);

/// A lexicon that cannot be used, naming it and the term at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lexicon {name:?}: {reason}")]
pub struct LexiconError {
    pub name: String,
    pub reason: String,
}

impl Lexicons {
    /// Checks every lexicon: a name of letters, digits, `-` and `_`; at least one
    /// term; each term one word, prefix, wildcard, fuzzy term or quoted phrase.
    pub fn new(map: BTreeMap<String, Vec<String>>) -> Result<Lexicons, LexiconError> {
        for (name, terms) in &map {
            let err = |reason: String| LexiconError {
                name: name.clone(),
                reason,
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err("a name is letters, digits, '-' and '_'".into()));
            }
            if terms.is_empty() {
                return Err(err("has no terms".into()));
            }
            for t in terms {
                let ok = match lex(t) {
                    Ok(toks) => match toks.as_slice() {
                        [Lexed {
                            tok: Tok::Term(text),
                            ..
                        }] if !text.starts_with('@') => match term(text) {
                            Ok(Clause::Text(_) | Clause::Pattern { .. }) => Ok(()),
                            Ok(_) => Err("a field term does not belong in a lexicon".to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                        _ => Err(
                            "a term is one word, prefix, wildcard, fuzzy term or \"quoted phrase\""
                                .to_string(),
                        ),
                    },
                    Err(e) => Err(e.to_string()),
                };
                ok.map_err(|reason| err(format!("term {t:?}: {reason}")))?;
            }
        }
        Ok(Lexicons(map))
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The query with each `@name` (a whole term, outside quotes, possibly after `-`
    /// or `(`) replaced by `(term1 OR term2 …)`.
    pub fn expand(&self, q: &str) -> Result<String, QueryError> {
        let mut out = String::with_capacity(q.len());
        let mut chars = q.char_indices().peekable();
        let mut in_quote = false;
        let mut at_term_start = true;
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                in_quote = !in_quote;
            }
            if !in_quote && c == '@' && at_term_start {
                let rest = &q[i + 1..];
                let len = rest
                    .find(|c: char| c.is_whitespace() || c == '(' || c == ')')
                    .unwrap_or(rest.len());
                let name = &rest[..len];
                let token = format!("@{name}");
                let Some(terms) = self.0.get(name) else {
                    let known = if self.0.is_empty() {
                        "no lexicons are defined".to_string()
                    } else {
                        format!(
                            "defined: {}",
                            self.0
                                .keys()
                                .map(|k| format!("@{k}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    return Err(QueryError::UnknownLexicon { token, known });
                };
                out.push('(');
                out.push_str(&terms.join(" OR "));
                out.push(')');
                for _ in 0..name.chars().count() {
                    chars.next();
                }
                at_term_start = false;
                continue;
            }
            out.push(c);
            at_term_start = !in_quote && (c.is_whitespace() || c == '(' || c == '-');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn musts(q: &str) -> Vec<Expr> {
        match parse(q).unwrap().expr {
            Expr::And(v) => v,
            e => vec![e],
        }
    }

    fn c(clause: Clause) -> Expr {
        Expr::Clause(clause)
    }

    proptest::proptest! {
        /// The index takes its words through `for_each_token` and its parties through
        /// `normalized_jid`; a search must find them as `tokenize` and `normalize_jid`
        /// spell them, for any text (final sigmas, dotted capitals, mixed scripts).
        #[test]
        fn the_borrowing_tokenizer_and_jid_normaliser_agree_with_the_owning_ones(
            text in "(?s)[a-zA-Z0-9 ΣσςİIıßẞ.,/@é\u{301}\t-]{0,40}",
        ) {
            let old: Vec<String> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|t| !t.is_empty())
                .map(str::to_lowercase)
                .collect();
            let mut new = Vec::new();
            for_each_token(&text, |t| new.push(t.to_owned()));
            proptest::prop_assert_eq!(&new, &old);
            proptest::prop_assert_eq!(tokenize(&text), old);
            proptest::prop_assert_eq!(normalized_jid(&text), text.trim().to_lowercase());
        }
    }

    #[test]
    fn parses_every_form() {
        let q = musts(
            r#"Invoice "wire transfer" from:Alice@Example.test with:bob@example.test direction:outbound type:chat action:block rule:pci-card after:2026-11-01 before:2026-11-21T12:00:00Z -lunch account:Eve@example.test/x msg:ABC12 via:mam"#,
        );
        assert_eq!(
            q[11],
            c(Clause::Jid(JidField::Account, "eve@example.test/x".into()))
        );
        assert_eq!(q[12], c(Clause::Message("abc12".into())));
        assert_eq!(q[13], c(Clause::Via(Via::Mam)));
        assert_eq!(q[0], c(Clause::Text(vec!["invoice".into()])));
        assert_eq!(
            q[1],
            c(Clause::Text(vec!["wire".into(), "transfer".into()]))
        );
        assert_eq!(
            q[2],
            c(Clause::Jid(JidField::From, "alice@example.test".into()))
        );
        assert_eq!(
            q[3],
            c(Clause::Jid(JidField::With, "bob@example.test".into()))
        );
        assert_eq!(q[4], c(Clause::Direction(Direction::Outbound)));
        assert_eq!(q[5], c(Clause::Type("chat".into())));
        assert_eq!(q[6], c(Clause::Action(Action::Block)));
        assert_eq!(q[7], c(Clause::Rule("pci-card".into())));
        assert_eq!(
            q[8],
            c(Clause::After(Timestamp::parse("2026-11-01").unwrap()))
        );
        assert_eq!(
            q[9],
            c(Clause::Before(
                Timestamp::parse("2026-11-21T12:00:00Z").unwrap()
            ))
        );
        assert_eq!(
            q[10],
            Expr::Not(Box::new(c(Clause::Text(vec!["lunch".into()]))))
        );
    }

    #[test]
    fn or_binds_tighter_than_and_and_parentheses_group() {
        let word = |w: &str| c(Clause::Text(vec![w.into()]));
        assert_eq!(
            parse("from:a@x bribe OR kickback").unwrap().expr,
            Expr::And(vec![
                c(Clause::Jid(JidField::From, "a@x".into())),
                Expr::Or(vec![word("bribe"), word("kickback")]),
            ])
        );
        assert_eq!(
            parse("(a AND b) OR NOT c").unwrap().expr,
            Expr::Or(vec![
                Expr::And(vec![word("a"), word("b")]),
                Expr::Not(Box::new(word("c"))),
            ])
        );
        assert_eq!(
            parse("-(a OR b)").unwrap().expr,
            Expr::Not(Box::new(Expr::Or(vec![word("a"), word("b")])))
        );
        // Lowercase operator words are words.
        assert_eq!(
            parse("this or that").unwrap().expr,
            Expr::And(vec![word("this"), word("or"), word("that")])
        );
    }

    #[test]
    fn patterns_and_near() {
        let p = |q: &str| match parse(q).unwrap().expr {
            Expr::Clause(Clause::Pattern { word, .. }) => word,
            e => panic!("{q}: {e:?}"),
        };
        assert_eq!(p("Guarant*"), Word::Prefix("guarant".into()));
        assert_eq!(p("gu?r*nt*"), Word::Wildcard("gu?r*nt*".into()));
        assert_eq!(p("guarantee~"), Word::Fuzzy("guarantee".into(), 1));
        assert_eq!(p("guarantee~2"), Word::Fuzzy("guarantee".into(), 2));
        match parse("guarant* NEAR/5 (return* OR profit)").unwrap().expr {
            Expr::Clause(Clause::Near {
                left,
                right,
                within: 5,
                ordered: false,
                ..
            }) => {
                assert_eq!(left, vec![Word::Prefix("guarant".into())]);
                assert_eq!(
                    right,
                    vec![Word::Prefix("return".into()), Word::Exact("profit".into())]
                );
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            parse("a ONEAR/2 b").unwrap().expr,
            Expr::Clause(Clause::Near {
                ordered: true,
                within: 2,
                ..
            })
        ));
    }

    #[test]
    fn errors_name_the_bad_token() {
        let e = parse("hello colour:red").unwrap_err();
        assert_eq!(
            e,
            QueryError::UnknownField {
                token: "colour:red".into()
            }
        );
        for (q, token) in [
            ("direction:sideways", "direction:sideways"),
            ("after:yesterday", "after:yesterday"),
            ("a NEAR/0 b", "NEAR/0"),
            ("a NEAR b", "NEAR"),
            ("a NEAR/3 \"two words\"", "\"two words\""),
            ("a NEAR/3 b NEAR/3 c", "NEAR/3"),
            ("(a OR b", "("),
            ("a OR b)", ")"),
            ("a OR", "OR"),
            ("e-ma*", "e-ma*"),
            ("word~3", "word~3"),
            ("two-words~", "two-words~"),
            ("***", "***"),
            ("@bribery", "@bribery"),
            ("a AND", "AND"),
        ] {
            let e = parse(q).unwrap_err().to_string();
            assert!(e.contains(&format!("{token:?}")), "{q}: {e}");
        }
        assert!(matches!(
            parse("\"open phrase"),
            Err(QueryError::UnterminatedQuote { .. })
        ));
        assert!(matches!(parse("!!!"), Err(QueryError::Empty { .. })));
        // Nesting is bounded before it can exhaust the stack.
        let deep = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
        assert!(parse(&deep).unwrap_err().to_string().contains("nested"));
        let nots = format!("{}a", "NOT ".repeat(1000));
        assert!(parse(&nots).unwrap_err().to_string().contains("nested"));
        let dashes = format!("{}(a)", "-(".repeat(1000));
        assert!(parse(&dashes).is_err());
        // The work a query may ask is bounded, and the refusal names the term.
        let long = format!("{}~2", "字".repeat(2000));
        assert!(parse(&long).is_err());
        let e = parse(&format!("{}~", "a".repeat(65)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
        let scans = (0..17)
            .map(|i| format!("*x{i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let e = parse(&scans).unwrap_err().to_string();
        assert!(e.contains("\"*x16\"") && e.contains("literal start"), "{e}");
        let prefixes = (0..257)
            .map(|i| format!("p{i}*"))
            .collect::<Vec<_>>()
            .join(" OR ");
        assert!(parse(&prefixes)
            .unwrap_err()
            .to_string()
            .contains("\"p256*\""));
        assert!(parse(&"a ".repeat(9000))
            .unwrap_err()
            .to_string()
            .contains("longer than"));
        assert!(parse(&format!("{}a{}", "(".repeat(60), ")".repeat(60))).is_ok());
    }

    #[test]
    fn word_matchers() {
        let m = |w: Word, s: &str| w.matcher().matches(s);
        assert!(m(Word::Prefix("guarant".into()), "guaranteed"));
        assert!(!m(Word::Prefix("guarant".into()), "guaran"));
        assert!(m(Word::Wildcard("gu?r*nt*".into()), "guaranteed"));
        assert!(m(Word::Wildcard("*tee".into()), "guarantee"));
        assert!(!m(Word::Wildcard("*tee".into()), "guaranteed"));
        assert!(m(Word::Wildcard("a*b*c".into()), "axxbyyc"));
        assert!(!m(Word::Wildcard("a*b*c".into()), "axxbyy"));
        assert!(m(Word::Fuzzy("guarantee".into(), 1), "garantee"));
        assert!(
            m(Word::Fuzzy("guarantee".into(), 1), "guarnatee"),
            "a swap is one edit"
        );
        assert!(!m(Word::Fuzzy("guarantee".into(), 1), "garanty"));
        assert!(m(Word::Fuzzy("guarantee".into(), 2), "garantie"));
        assert!(m(Word::Fuzzy("über".into(), 1), "uber"));
    }

    #[test]
    fn near_counts_words_between() {
        // "guarantee a good return": 0 and 3.
        assert!(near(&[0], &[3], 3, false));
        assert!(!near(&[0], &[3], 2, false));
        assert!(near(&[3], &[0], 3, false));
        assert!(!near(&[3], &[0], 3, true));
        assert!(near(&[0], &[3], 3, true));
        assert!(!near(&[4], &[4], 3, false), "a word is not near itself");
        assert!(near(&[4], &[4, 6], 3, false));
    }

    #[test]
    fn lexicons_expand_outside_quotes_only() {
        let lex = Lexicons::new(BTreeMap::from([(
            "bribery".to_string(),
            vec![
                "bribe*".to_string(),
                "kickback~".into(),
                "\"under the table\"".into(),
            ],
        )]))
        .unwrap();
        assert_eq!(
            lex.expand("from:a@x @bribery -(@bribery) \"@bribery\"").unwrap(),
            "from:a@x (bribe* OR kickback~ OR \"under the table\") -((bribe* OR kickback~ OR \"under the table\")) \"@bribery\""
        );
        parse(&lex.expand("@bribery NEAR/3 cash").unwrap()).unwrap_err();
        parse(&lex.expand("@bribery cash").unwrap()).unwrap();
        let e = lex.expand("@graft").unwrap_err().to_string();
        assert!(e.contains("\"@graft\"") && e.contains("@bribery"), "{e}");
        let bad = |terms: &[&str]| {
            Lexicons::new(BTreeMap::from([(
                "x".to_string(),
                terms.iter().map(|t| t.to_string()).collect(),
            )]))
            .unwrap_err()
            .to_string()
        };
        assert!(bad(&["from:a@x"]).contains("from:a@x"));
        assert!(bad(&["a OR b"]).contains("a OR b"));
        assert!(bad(&[]).contains("no terms"));
    }

    #[test]
    fn tokenizer_lowercases_and_splits() {
        assert_eq!(
            tokenize("Card: 4111-1111, OK?"),
            vec!["card", "4111", "1111", "ok"]
        );
        assert_eq!(bare_jid("a@b/c/d"), "a@b");
    }
}
