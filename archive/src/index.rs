//! The blind full-text index (tantivy).
//!
//! Promise 3 says the index must not become a plaintext copy of the archive,
//! so no plaintext reaches tantivy: every word token and every field value is
//! replaced by the first 96 bits of `HMAC-SHA256(blind key, field-tag ‖ 0 ‖ value)`
//! in unpadded URL-safe base64 (16 characters). Queries hash their terms the same
//! way. Word positions are kept, so phrase queries work. Stored per document: only
//! seq, segment and offset (to fetch and decrypt the record from the log) and a time
//! fast field.
//! Leakage (equal tokens hash equally, term frequencies, document lengths,
//! times) is documented in docs/archive-format.md.
//!
//! ```text
//! Appended record ─▶ tokenize ─▶ HMAC each token ─▶ tantivy doc {seq, seg, off, time, hashes}
//! query ─▶ parse ─▶ HMAC each term ─▶ tantivy query ─▶ (seq, seg, off) ─▶ log ─▶ decrypt
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use foldhash::quality::SeedableRandomState;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tantivy::indexer::UserOperation;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, EmptyScorer, EnableScoring, Explanation, Occur,
    PhraseQuery, Query as TQuery, Scorer, TermQuery, TermSetQuery, Weight,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
};
use tantivy::{
    DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader,
    TantivyDocument, Term, TERMINATED,
};
use zeroize::Zeroizing;

use crate::export::hex::encode as hex;
use crate::keys::{hmac_sha256, MasterKey};
use crate::log::Appended;
use crate::query::{self, Clause, Expr, JidField, Query};
use crate::record::{Direction, EventRecord, NewRecord};
use crate::segment::Hash;
use crate::vocab::{
    vocab_dir, ListMark, ListMarks, TooBroad, VocabWriter, Vocabulary, MAX_EXPANSION,
    MAX_NEAR_EXPANSION, MAX_QUERY_EXPANSION,
};

mod sealed;
use sealed::SealedDirectory;
pub(crate) use sealed::{is_segment_file, sealed_len, SealKey};

/// Memory budget for the single indexing thread (tantivy needs ≥ 15 MB).
const WRITER_MEMORY: usize = 50_000_000;

/// An index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("cannot create index directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the index was built for another archive or key; run reindex")]
    Foreign,
    #[error("the index's coverage mark does not authenticate with this archive's key (forged or damaged); run reindex")]
    Forged,
    #[error(
        "the index carries no coverage mark this Custos trusts (made by an older Custos); run reindex"
    )]
    Unauthenticated,
    #[error("the search index is missing")]
    Missing,
    /// Derived data of an earlier Custos: never read, rebuilt.
    #[error("the search index was made with another schema (by an earlier Custos): the serving process rebuilds it from the log when it starts, as `custos reindex` does")]
    OtherSchema,
    #[error("search index damaged: {0}")]
    Damaged(String),
    /// A file of the index fails its seal (changed outside Custos, another archive's,
    /// or written by a version that did not seal them).
    #[error("{0}")]
    Unsealed(String),
    #[error("bad query: {0}")]
    TooBroad(#[from] TooBroad),
    #[error("search vocabulary: {0}")]
    Vocabulary(std::io::Error),
    #[error("the search vocabulary has no word list for log segment(s) {0:?} whose messages the index holds (deleted or damaged?): prefix, wildcard and fuzzy terms cannot be answered completely; run `custos reindex`")]
    VocabularyMissing(Vec<u64>),
    #[error("the word list(s) of log segment(s) {0:?} are not the ones the index committed (cut back, rolled back to an older copy, or replaced): prefix, wildcard and fuzzy terms would miss messages; run `custos reindex`")]
    VocabularyNotBound(Vec<u64>),
}

/// The key that blinds index terms, held as HMAC-SHA256 keyed once: each term then costs
/// the message's blocks only, not the key's two pads again.
pub struct BlindKey(Hmac<Sha256>);

/// Bytes of the MAC a blinded term keeps.
const TERM_BYTES: usize = 12;
/// Characters of a blinded term: [`TERM_BYTES`] in base64, four for every three.
const TERM_CHARS: usize = TERM_BYTES / 3 * 4;

impl BlindKey {
    pub fn derive(master: &MasterKey, archive_id: &[u8; 16]) -> BlindKey {
        let key: Zeroizing<[u8; 32]> = master.derive("custos-blind-index-v1", archive_id);
        // HMAC accepts a key of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        BlindKey(mac)
    }

    /// The blinded form of `value` in the namespace `tag`.
    pub fn term(&self, tag: &str, value: &str) -> String {
        let mut out = String::with_capacity(TERM_CHARS);
        self.push_term(tag, value, &mut out);
        out
    }

    /// Appends the blinded form of `value` in the namespace `tag` to `out`: the MAC's
    /// first [`TERM_BYTES`] in unpadded URL-safe base64, 16 characters where hex took 24.
    /// Blinded terms share no prefixes, so every character is a node of its own in the
    /// term dictionary's automaton, and fewer make it cheaper to build.
    pub fn push_term(&self, tag: &str, value: &str, out: &mut String) {
        use base64::Engine;
        let mut m = self.0.clone();
        m.update(tag.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        let mac = m.finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&mac[..TERM_BYTES], out);
    }
}

/// The blinded forms of the terms the writer met lately. Words and addresses repeat
/// (a few thousand make up most of any traffic), and a look-up costs far less than the
/// keyed hash. Held in memory only, and only for short values: a sender's long made-up
/// words would otherwise fill it with their plaintext. Emptied when a segment is
/// shredded, so its words do not outlive it here.
struct TermCache {
    /// `tag NUL value` → the blinded term's characters. Hashed with foldhash under
    /// seeds from the system's randomness ([`word_hasher`]) rather than with SipHash,
    /// which took a third of a look-up: a sender can fill the cache with words of their
    /// choosing but sees neither its hashes nor its order nor its timing, so cannot
    /// find words that collide, and the cache is bounded ([`TermCache::MAX`]).
    terms: std::collections::HashMap<Box<str>, [u8; TERM_CHARS], SeedableRandomState>,
    /// The key being looked up, built without allocating.
    scratch: String,
}

impl TermCache {
    /// Terms kept before the cache starts again from nothing: 5.3 MiB at most with the
    /// map's own overhead, measured with 24-byte hex terms (about 0.25 MiB less with
    /// 16-byte ones).
    const MAX: usize = 32 * 1024;
    /// Longest value kept, in bytes; longer ones (rare) are blinded each time.
    const MAX_VALUE: usize = 64;

    fn new() -> TermCache {
        TermCache {
            terms: std::collections::HashMap::with_hasher(word_hasher()),
            scratch: String::new(),
        }
    }

    /// Appends the blinded form of `value` in the namespace `tag` to `out`, as
    /// [`BlindKey::push_term`] does.
    fn push_term(&mut self, key: &BlindKey, tag: &str, value: &str, out: &mut String) {
        if value.len() > Self::MAX_VALUE {
            key.push_term(tag, value, out);
            return;
        }
        self.scratch.clear();
        self.scratch.push_str(tag);
        self.scratch.push('\0');
        self.scratch.push_str(value);
        // Base64 digits are ASCII: always text.
        if let Some(Ok(chars)) = self
            .terms
            .get(self.scratch.as_str())
            .map(|c| std::str::from_utf8(c))
        {
            out.push_str(chars);
            return;
        }
        let start = out.len();
        key.push_term(tag, value, out);
        let mut chars = [0u8; TERM_CHARS];
        chars.copy_from_slice(&out.as_bytes()[start..]);
        if self.terms.len() >= Self::MAX {
            self.terms.clear();
        }
        self.terms.insert(self.scratch.as_str().into(), chars);
    }

    fn clear(&mut self) {
        self.terms.clear();
    }
}

/// foldhash seeded from the system's randomness (its own seeds come from addresses and
/// the clock): one seed shared by the process's tables, one for each table. For tables
/// of words from messages that no sender can see into: neither their hashes, nor their
/// order, nor how long a look-up takes.
pub(crate) fn word_hasher() -> SeedableRandomState {
    static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
    let (mut shared, mut own) = ([0u8; 8], [0u8; 8]);
    if getrandom::getrandom(&mut shared)
        .and_then(|()| getrandom::getrandom(&mut own))
        .is_err()
    {
        // No system randomness: foldhash's own seeds.
        return SeedableRandomState::random();
    }
    let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(u64::from_le_bytes(shared)));
    SeedableRandomState::with_seed(u64::from_le_bytes(own), shared)
}

#[derive(Clone, Copy)]
struct Fields {
    seq: Field,
    seg: Field,
    off: Field,
    time: Field,
    text: Field,
    /// Everything a message is found by besides its words, in one field: each value
    /// blinded under its [`Attr`]'s tag, so `from:` and `to:` of one address are two
    /// terms. One field rather than one for each attribute: every field costs a commit
    /// and a merge a term dictionary and an automaton of its own.
    attrs: Field,
}

/// What a term of the `attrs` field says of its message; its tag is the namespace the
/// value is blinded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    /// The sender's JIDs (full and bare), and the person behind a room occupant who
    /// sent; `with:` asks this or [`Attr::To`], as both name participants.
    From,
    /// The addressee's JIDs, and the person behind a room occupant addressed.
    To,
    /// The proven JID of the session whose stream carried the copy.
    Account,
    /// Group chat only: the room's bare address ([`query::room_of`]), so `room:`
    /// matches the room and not the person behind a nickname.
    Room,
    Direction,
    Type,
    Action,
    Rule,
    /// Logical-message identities (the record's own and, when redacted, that of the
    /// content delivered), so every copy of a message is found together.
    Msg,
    Via,
}

impl Attr {
    fn tag(self) -> &'static str {
        match self {
            Attr::From => "from",
            Attr::To => "to",
            Attr::Account => "account",
            Attr::Room => "room",
            Attr::Direction => "direction",
            Attr::Type => "type",
            Attr::Action => "action",
            Attr::Rule => "rule",
            Attr::Msg => "msg",
            Attr::Via => "via",
        }
    }
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Nothing is scored (searches return the newest matches), so no field keeps the
    // per-document lengths tantivy would score by.
    let indexed = |tokenizer: &str, record: IndexRecordOption| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(record)
                .set_fieldnorms(false),
        )
    };
    // A message's place and time are read from columns, never looked up as terms nor
    // stored: a term of its own for every document's seq and time was most of what a
    // commit's term dictionaries held.
    let f = Fields {
        seq: b.add_u64_field("seq", FAST),
        // Indexed so a shredded segment's documents can be deleted by one term.
        seg: b.add_u64_field("seg", INDEXED | FAST),
        off: b.add_u64_field("off", FAST),
        time: b.add_i64_field("time", FAST),
        // Tokenized by the name `default`, which [`open_or_create`] gives [`BlindTokens`].
        text: b.add_text_field(
            "text",
            indexed("default", IndexRecordOption::WithFreqsAndPositions),
        ),
        attrs: b.add_text_field("attrs", indexed("raw", IndexRecordOption::Basic)),
    };
    (b.build(), f)
}

/// How far an index has indexed the log: every record with seq ≤ `through` is in its
/// last commit, and `head` is the chain head after record `through` (all zero for 0).
/// Stored as the commit payload with an HMAC under a key derived from the master key,
/// so an index cannot be made to claim another archive's or another chain's position
/// without the key; whether that position is on *this* chain is checked against the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub through: u64,
    pub head: Hash,
    /// The messages the commit holds (its live documents): how many, and the sum of
    /// their keyed placement hashes. tantivy's files are covered by no MAC: an index
    /// that lost some messages unseen (a tantivy segment dropped from `meta.json`, a
    /// deletion file written by hand that keeps the count) or was given some (a
    /// segment copied in) holds another set, and without the key no set of other
    /// messages can be made to sum as these do.
    pub held: Placed,
    /// The last seq the log held, as far as the writer knew, when a commit was made
    /// while the index was still catching up with it (a fill interrupted by a close, or
    /// one that commits as it goes); 0 when the commit left nothing known behind. The
    /// records after `through` up to here were missing knowingly: `verify` tells them
    /// as a catch-up the next open finishes, not as an index rolled back.
    pub owed: u64,
}

/// The mark with the word lists the commit binds and the messages it holds. Marks of
/// earlier versions are not trusted: v1 was not authenticated, v2 bound no word lists
/// (a v2 commit restored beside rolled-back lists would have the writer bind those as
/// they are), v3 did not count its messages (a v3 commit restored with a segment
/// dropped would be trusted whole), and v4 counted them without saying which (a
/// deletion file hiding some beside bits set past the last document kept the count).
/// A v5 mark is sound, but a v5 index holds its terms in hex where they are base64
/// now: no query would find them. v6 and v7 marks are sound, but their indexes hold
/// only the words as written, not the view of a text as a reader sees it
/// ([`query::text_parts`]): a search would miss `fаlcon` (a Cyrillic `а`) while
/// claiming the index complete. A v8 index holds those views, but not text that
/// directional controls draw otherwise than written (`\u{202E}noclaf` shows `falcon`).
/// Each of these is cleared and rebuilt from the log.
const MARK_V9: &str = "custos-index-v9";
const UNTRUSTED_MARKS: [&str; 8] = [
    "custos-index-v1",
    "custos-index-v2",
    "custos-index-v3",
    "custos-index-v4",
    "custos-index-v5",
    "custos-index-v6",
    "custos-index-v7",
    "custos-index-v8",
];

/// The MAC of a mark in the format `version` names.
fn mark_mac(
    master: &MasterKey,
    archive_id: &[u8; 16],
    version: &str,
    mark: &Mark,
    words: &str,
    opstamp: u64,
) -> [u8; 32] {
    let key = master.derive("custos-index-mark-v1", archive_id);
    let owed = mark.owed.to_be_bytes();
    let through = mark.through.to_be_bytes();
    let count = mark.held.count.to_be_bytes();
    let digest = mark.held.digest.to_be_bytes();
    let stamp = opstamp.to_be_bytes();
    hmac_sha256(
        key.as_ref(),
        &[
            version.as_bytes(),
            archive_id,
            &through,
            &mark.head,
            &count,
            &digest,
            &owed,
            &stamp,
            words.as_bytes(),
        ],
    )
}

/// The word lists a commit binds, as its payload writes them: `-` for none, else
/// `segment.len.file id.sha256` per list, comma-separated, in segment order.
fn words_text(words: &ListMarks) -> String {
    if words.is_empty() {
        return "-".into();
    }
    words
        .iter()
        .map(|(seg, m)| format!("{seg}.{}.{}.{}", m.len, hex(&m.file), hex(&m.hash)))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_words(text: &str) -> Option<ListMarks> {
    let mut out = ListMarks::new();
    if text == "-" {
        return Some(out);
    }
    for item in text.split(',') {
        let mut parts = item.split('.');
        let seg = parts.next()?.parse().ok()?;
        let len = parts.next()?.parse().ok()?;
        let file_hex = parts.next()?;
        let hash = unhex32(parts.next()?)?;
        if parts.next().is_some() || file_hex.len() != 32 {
            return None;
        }
        let mut file = [0u8; 16];
        for (i, f) in file.iter_mut().enumerate() {
            *f = u8::from_str_radix(file_hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        out.insert(seg, ListMark { file, len, hash });
    }
    Some(out)
}

/// The payload of the commit with tantivy's `opstamp`: that number is in the MAC too,
/// so even it cannot be changed in `meta.json` unseen; so are the word lists the
/// commit binds.
fn payload(
    master: &MasterKey,
    archive_id: &[u8; 16],
    mark: &Mark,
    words: &ListMarks,
    opstamp: u64,
) -> String {
    let words = words_text(words);
    format!(
        "{MARK_V9} {} {} {} {} {:032x} {} {opstamp} {words} {}",
        hex(archive_id),
        mark.through,
        hex(&mark.head),
        mark.held.count,
        mark.held.digest,
        mark.owed,
        hex(&mark_mac(
            master, archive_id, MARK_V9, mark, &words, opstamp
        ))
    )
}

fn unhex32(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The mark in the payload of commit `opstamp`, and the word lists it binds; no
/// payload is an index nothing was committed to.
fn parse_payload(
    p: Option<&str>,
    opstamp: u64,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<(Mark, ListMarks), IndexError> {
    let Some(p) = p else {
        return Ok((Mark::default(), ListMarks::new()));
    };
    let parts: Vec<&str> = p.split(' ').collect();
    let (version, id, seq, head, docs, digest, owed, stamp, words, mac) = match parts.as_slice() {
        [MARK_V9, id, seq, head, docs, digest, owed, stamp, words, mac] => (
            MARK_V9, id, seq, head, docs, digest, *owed, stamp, *words, mac,
        ),
        [v, ..] if UNTRUSTED_MARKS.contains(v) => return Err(IndexError::Unauthenticated),
        _ => return Err(IndexError::Foreign),
    };
    if *id != hex(archive_id) {
        return Err(IndexError::Foreign);
    }
    let mark = Mark {
        through: seq.parse().map_err(|_| IndexError::Forged)?,
        head: unhex32(head).ok_or(IndexError::Forged)?,
        held: Placed {
            count: docs.parse().map_err(|_| IndexError::Forged)?,
            digest: (digest.len() == 32)
                .then(|| u128::from_str_radix(digest, 16).ok())
                .flatten()
                .ok_or(IndexError::Forged)?,
        },
        owed: owed.parse().map_err(|_| IndexError::Forged)?,
    };
    if stamp.parse::<u64>().ok() != Some(opstamp) {
        return Err(IndexError::Forged);
    }
    let want = mark_mac(master, archive_id, version, &mark, words, opstamp);
    let got = unhex32(mac).ok_or(IndexError::Forged)?;
    // Constant time: the comparison must not say how much of a forgery matched.
    if want
        .iter()
        .zip(got.iter())
        .fold(0u8, |a, (x, y)| a | (x ^ y))
        != 0
    {
        return Err(IndexError::Forged);
    }
    let words = parse_words(words).ok_or(IndexError::Forged)?;
    Ok((mark, words))
}

fn meta_mark(
    meta: &tantivy::IndexMeta,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<Mark, IndexError> {
    meta_mark_words(meta, master, archive_id).map(|(m, _)| m)
}

/// [`meta_mark`] with the word lists the commit binds.
fn meta_mark_words(
    meta: &tantivy::IndexMeta,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<(Mark, ListMarks), IndexError> {
    parse_payload(meta.payload.as_deref(), meta.opstamp, master, archive_id)
}

/// The mark of the commit a `meta.json` text describes (a copy of an index, checked
/// before it is used).
pub(crate) fn mark_of_meta(
    meta: &str,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<Mark, IndexError> {
    marked_lists_of_meta(meta, master, archive_id).map(|(m, _)| m)
}

/// [`mark_of_meta`] with the word lists the commit binds.
fn marked_lists_of_meta(
    meta: &str,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<(Mark, ListMarks), IndexError> {
    let v: serde_json::Value =
        serde_json::from_str(meta).map_err(|e| IndexError::Damaged(format!("meta.json: {e}")))?;
    let opstamp = v
        .get("opstamp")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| IndexError::Damaged("meta.json: no opstamp".into()))?;
    parse_payload(
        v.get("payload").and_then(serde_json::Value::as_str),
        opstamp,
        master,
        archive_id,
    )
}

/// The word lists a commit's `meta.json` text binds, read without its MAC: for a copier
/// that holds no key and only needs to know that the lists it copies go with the commit
/// it copies (whoever uses the copy checks the MAC). `None` when it names none this
/// version reads.
pub(crate) fn lists_of_meta(meta: &str) -> Option<ListMarks> {
    let v: serde_json::Value = serde_json::from_str(meta).ok()?;
    let parts: Vec<&str> = v.get("payload")?.as_str()?.split(' ').collect();
    let words = match parts.as_slice() {
        [MARK_V9, .., words, _mac] if parts.len() == 10 => words,
        _ => return None,
    };
    parse_words(words)
}

/// The mark of the index in `dir`, as last committed (not checked against the log).
pub fn read_mark(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<Mark, IndexError> {
    meta_mark(&last_commit(dir, master, archive_id)?, master, archive_id)
}

/// The opstamp of the index's last commit in `dir`: it grows with every commit, so
/// the same value read before and after a search says no commit came between.
pub(crate) fn commit_opstamp(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<u64, IndexError> {
    Ok(last_commit(dir, master, archive_id)?.opstamp)
}

/// The metadata of the last commit of the index in `dir`, read through its seal.
fn last_commit(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<tantivy::IndexMeta, IndexError> {
    let (index, sealed) = open_existing(dir, master, archive_id)?;
    index.load_metas().map_err(|e| unsealed(&sealed, e))
}

/// tantivy's directory of the index in `dir`, read and written through its seals: for
/// tools that open the index with tantivy itself (the benchmarks).
pub fn sealed_directory(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<Box<dyn tantivy::Directory>, IndexError> {
    Ok(Box::new(SealedDirectory::open(dir, master, archive_id)?))
}

/// Opens the index in `dir` through its seals; no index there is [`IndexError::Missing`].
pub(crate) fn open_existing(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<(Index, SealedDirectory), IndexError> {
    if !dir.join("meta.json").exists() {
        return Err(IndexError::Missing);
    }
    let sealed = SealedDirectory::open(dir, master, archive_id)?;
    let index = Index::open(sealed.clone()).map_err(|e| unsealed(&sealed, e))?;
    index.tokenizers().register("default", BlindTokens);
    Ok((index, sealed))
}

/// `e`, or the seal a file of `sealed` failed if that is what made it.
fn unsealed(sealed: &SealedDirectory, e: impl Into<IndexError>) -> IndexError {
    match sealed.take_refusal() {
        Some(why) => IndexError::Unsealed(why),
        None => e.into(),
    }
}

/// Where a hit's record lives in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub seq: u64,
    pub segment: u64,
    pub offset: u64,
}

/// The single index writer (holds tantivy's writer lock).
pub struct BlindIndexWriter {
    writer: IndexWriter<TantivyDocument>,
    index: Index,
    fields: Fields,
    key: BlindKey,
    master: MasterKey,
    archive_id: [u8; 16],
    mark: Mark,
    found: Result<Mark, IndexError>,
    dirty: bool,
    /// A shred was indexed: purge deleted documents after the next commit.
    purge: bool,
    /// The words added, sealed per segment before each commit (prefix, wildcard and
    /// fuzzy terms expand through them).
    vocab: VocabWriter,
    /// Shredded segments whose word lists go after the next commit.
    forget: Vec<u64>,
    /// Messages added since the last commit, per log segment: a shred deletes them
    /// with the committed ones, and the mark must lose both.
    pending: BTreeMap<u64, Placed>,
    placer: Placer,
    /// Documents and deletions added but not yet handed to tantivy: sent together, so
    /// its indexing thread takes a batch per wake-up instead of one document.
    ops: Vec<UserOperation<TantivyDocument>>,
    /// Documents handed to tantivy since the last commit. tantivy's queue bounds the
    /// batches it holds, not the documents in them: a commit, which waits for every one,
    /// is due once this reaches [`MAX_UNCOMMITTED`].
    sent: usize,
    terms: TermCache,
    /// A record's text and a blinded term as they are built, kept between records so
    /// that each record does not grow buffers of its own (tantivy copies them).
    text: String,
    term: String,
    /// Why operations handed to tantivy were refused: the mark has moved past
    /// documents that are not in, so no commit may record it.
    lost: Option<String>,
    /// Where the index is, for [`BlindIndexWriter::rebuild_from_nothing`].
    dir: PathBuf,
    /// The check an open left for later ([`BlindIndexWriter::open_checking_later`]).
    unchecked: Option<SealedDirectory>,
}

/// Operations queued before they are handed to tantivy at once.
const OPS_BATCH: usize = 128;

/// Largest text buffer [`BlindIndexWriter`] keeps between records, in bytes.
const TEXT_KEPT: usize = 64 * 1024;

/// Documents handed to tantivy after which a commit is due whatever the time: what its
/// queue can hold (about 1 KiB each) stays bounded however fast records come.
pub const MAX_UNCOMMITTED: usize = 32 * 1024;

fn open_or_create(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<(Index, SealedDirectory), IndexError> {
    std::fs::create_dir_all(dir)?;
    let (schema, _) = schema();
    let sealed = SealedDirectory::open(dir, master, archive_id)?;
    // A file that fails its seal is reported as that, whatever tantivy made of it.
    let index =
        Index::open_or_create(sealed.clone(), schema).map_err(|e| match unsealed(&sealed, e) {
            IndexError::Tantivy(tantivy::TantivyError::SchemaError(_)) => IndexError::OtherSchema,
            e => e,
        })?;
    // The `text` field is the schema's one `TEXT` field, tokenized by the name
    // `default`: its values are blinded words as [`BlindTokens`] reads them.
    index.tokenizers().register("default", BlindTokens);
    Ok((index, sealed))
}

/// The tokenizer of the `text` field: blinded words, each ended by
/// [`BlindTokens::WORD_END`], each part of the message ended by
/// [`BlindTokens::PART_END`]. Words take consecutive positions and each part end
/// adds [`query::PART_GAP`], as the query side numbers them, so no phrase and no
/// NEAR joins the subject to the body.
#[derive(Clone, Copy, Debug, Default)]
struct BlindTokens;

impl BlindTokens {
    const WORD_END: char = ' ';
    const PART_END: char = '\n';
}

impl tantivy::tokenizer::Tokenizer for BlindTokens {
    type TokenStream<'a> = BlindTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> BlindTokenStream<'a> {
        BlindTokenStream {
            text,
            at: 0,
            next: 0,
            token: tantivy::tokenizer::Token::default(),
        }
    }
}

struct BlindTokenStream<'a> {
    text: &'a str,
    /// Byte offset of what is still to be read.
    at: usize,
    /// The position of the next word.
    next: usize,
    token: tantivy::tokenizer::Token,
}

impl tantivy::tokenizer::TokenStream for BlindTokenStream<'_> {
    fn advance(&mut self) -> bool {
        let rest = self.text.get(self.at..).unwrap_or("");
        let mut skipped = 0;
        for c in rest.chars() {
            match c {
                BlindTokens::PART_END => {
                    self.next = self.next.saturating_add(query::PART_GAP as usize)
                }
                BlindTokens::WORD_END => {}
                _ => break,
            }
            skipped += c.len_utf8();
        }
        let start = self.at + skipped;
        let word = self.text.get(start..).unwrap_or("");
        let len = word
            .find([BlindTokens::WORD_END, BlindTokens::PART_END])
            .unwrap_or(word.len());
        if len == 0 {
            self.at = self.text.len();
            return false;
        }
        self.token.text.clear();
        self.token.text.push_str(&word[..len]);
        self.token.offset_from = start;
        self.token.offset_to = start + len;
        self.token.position = self.next;
        self.token.position_length = 1;
        self.next = self.next.saturating_add(1);
        self.at = start + len;
        true
    }

    fn token(&self) -> &tantivy::tokenizer::Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut tantivy::tokenizer::Token {
        &mut self.token
    }
}

/// What an index says it covers, read without opening a writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Every record with seq ≤ `mark.through` is in the last commit.
    pub mark: Mark,
    /// Documents (one per message record) in the last commit.
    pub docs: u64,
    /// The documents by the log segment they point into.
    pub by_segment: BTreeMap<u64, Placed>,
    /// Segments with documents but no whole sealed word list (deleted or damaged):
    /// prefix, wildcard and fuzzy terms would be refused for them.
    pub vocabulary_gaps: Vec<u64>,
    /// Segments whose word list is not the one the last commit bound (cut back, rolled
    /// back, replaced): refused by search too, and no crash leaves one.
    pub vocabulary_unbound: Vec<u64>,
}

/// Reads the coverage of the index in `dir` for archive `archive_id`. An index that does
/// not exist, belongs to another archive or cannot be opened is an error.
pub fn coverage(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
    at_rest: bool,
) -> Result<Coverage, IndexError> {
    let (index, sealed) = open_existing(dir, master, archive_id)?;
    // Beside a running writer a commit can replace meta.json between loading it and
    // checking its bytes, and a merge can delete the files the loaded meta.json names
    // before they are opened: that is a newer commit, not damage, so look again.
    let mut attempt = 0;
    loop {
        match coverage_of(dir, &index, &sealed, master, archive_id, at_rest) {
            Ok(c) => return Ok(c),
            // A file that fails its seal, or is missing, is reported as found if it
            // still is after a few readings: a merge's deletion can make a file the
            // loaded commit named go missing between two steps of one.
            Err(_) if !at_rest && attempt < 3 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One reading of [`coverage`] from the commit `meta.json` names now.
fn coverage_of(
    dir: &Path,
    index: &Index,
    sealed: &SealedDirectory,
    master: &MasterKey,
    archive_id: &[u8; 16],
    at_rest: bool,
) -> Result<Coverage, IndexError> {
    let fail = |e: tantivy::TantivyError| unsealed(sealed, e);
    let meta = index.load_metas().map_err(fail)?;
    // An earlier Custos's index is named as that, not as a mark or files that fail.
    if meta.schema != schema().0 {
        return Err(IndexError::OtherSchema);
    }
    let (mark, words) = meta_mark_words(&meta, master, archive_id)?;
    check_files(dir, sealed, &meta, at_rest)
        .map_err(|e| unsealed(sealed, IndexError::Damaged(e)))?;
    let reader = index.reader().map_err(fail)?;
    let searcher = reader.searcher();
    let docs = searcher.num_docs();
    let placer = Placer::derive(master, archive_id);
    let mut by_segment: BTreeMap<u64, Placed> = BTreeMap::new();
    for sr in searcher.segment_readers() {
        let ff = sr.fast_fields();
        let (seqs, segs, offs) = (ff.u64("seq")?, ff.u64("seg")?, ff.u64("off")?);
        for doc in sr.doc_ids_alive() {
            let get = |c: &tantivy::columnar::Column<u64>| c.first(doc).unwrap_or(0);
            let (seq, seg) = (get(&seqs), get(&segs));
            // Documents past the mark are counted in `docs` only (a writer may have
            // committed since the mark was read).
            if seq > mark.through {
                continue;
            }
            by_segment
                .entry(seg)
                .or_default()
                .add(&placer, seq, seg, get(&offs));
        }
    }
    // Every segment with documents needs its sealed word list, whole.
    let mut vocab = Vocabulary::new(dir, master, archive_id);
    vocab.refresh().map_err(IndexError::Vocabulary)?;
    let vocabulary_gaps: Vec<u64> = by_segment
        .keys()
        .copied()
        .filter(|s| !vocab.has_segment(*s))
        .collect();
    // A list that is there but is not what the commit bound.
    let vocabulary_unbound = vocab
        .unbound(
            &words,
            by_segment
                .keys()
                .copied()
                .filter(|s| !vocabulary_gaps.contains(s)),
        )
        .map_err(IndexError::Vocabulary)?;
    Ok(Coverage {
        mark,
        docs,
        by_segment,
        vocabulary_gaps,
        vocabulary_unbound,
    })
}

/// Messages by their places in the log: how many, and a multiset digest of their
/// (seq, segment, offset): the sum of a keyed hash of each ([`Placer`]), so order does
/// not matter, a missing, extra, duplicated or moved message changes it, and without
/// the master key nobody can compute the element hashes to make a sum match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placed {
    pub count: u64,
    pub digest: u128,
}

impl Placed {
    pub fn add(&mut self, placer: &Placer, seq: u64, segment: u64, offset: u64) {
        self.count += 1;
        self.digest = self.digest.wrapping_add(placer.hash(seq, segment, offset));
    }

    /// Adds every message of `other`.
    pub fn join(&mut self, other: Placed) {
        self.count += other.count;
        self.digest = self.digest.wrapping_add(other.digest);
    }

    /// Takes out every message of `other` (which these hold).
    pub fn remove(&mut self, other: Placed) {
        self.count = self.count.saturating_sub(other.count);
        self.digest = self.digest.wrapping_sub(other.digest);
    }
}

/// The keyed hash of a message's place in the log: SipHash-2-4 with a 128-bit output,
/// keyed from the master key. A keyed PRF for short inputs is what the sum needs (no
/// element hash can be computed without the key), and at some 20 ns a message, against
/// 126 for HMAC-SHA256, an export can afford to sum every message the index holds.
#[derive(Clone)]
pub struct Placer(siphasher::sip128::SipHasher24);

impl Placer {
    pub fn derive(master: &MasterKey, archive_id: &[u8; 16]) -> Placer {
        let key: Zeroizing<[u8; 32]> = master.derive("custos-index-placement-v2", archive_id);
        let mut k = Zeroizing::new([0u8; 16]);
        k.copy_from_slice(&key[..16]);
        Placer(siphasher::sip128::SipHasher24::new_with_key(&k))
    }

    fn hash(&self, seq: u64, segment: u64, offset: u64) -> u128 {
        let mut place = [0u8; 24];
        place[..8].copy_from_slice(&seq.to_be_bytes());
        place[8..16].copy_from_slice(&segment.to_be_bytes());
        place[16..].copy_from_slice(&offset.to_be_bytes());
        self.0.hash(&place).as_u128()
    }
}

/// The live documents of `searcher`, placed, with the log segments they are in.
fn placed_in(searcher: &Searcher, placer: &Placer) -> Result<(Placed, BTreeSet<u64>), IndexError> {
    let mut all = Placed::default();
    let mut segments = BTreeSet::new();
    for sr in searcher.segment_readers() {
        let ff = sr.fast_fields();
        let (seqs, segs, offs) = (ff.u64("seq")?, ff.u64("seg")?, ff.u64("off")?);
        // Documents come mostly in log order: one set insert per run of a segment.
        let mut last = None;
        for doc in sr.doc_ids_alive() {
            let get = |c: &tantivy::columnar::Column<u64>| c.first(doc).unwrap_or(0);
            let seg = get(&segs);
            all.add(placer, get(&seqs), seg, get(&offs));
            if last != Some(seg) {
                segments.insert(seg);
                last = Some(seg);
            }
        }
    }
    Ok((all, segments))
}

/// Whether the live documents `held` are the messages `mark` names.
fn check_held(mark: &Mark, held: Placed) -> Result<(), IndexError> {
    if held == mark.held {
        return Ok(());
    }
    Err(IndexError::Damaged(if held.count == mark.held.count {
        format!(
            "its {} messages are not the messages its last commit names (documents hidden, copied in or moved)",
            held.count
        )
    } else {
        format!(
            "it holds {} messages where its last commit counts {}",
            held.count, mark.held.count
        )
    }))
}

/// The files of the commit `meta` and what tantivy's own checksums do not cover:
/// every block of every file the commit uses against its seal, and its body against
/// tantivy's checksum, in one read; `meta.json` byte for byte as tantivy writes the
/// metadata it holds, with Custos's settings (its caller compares the schema); every
/// segment file's footer naming this tantivy version; and, at rest (no writer between
/// its steps), every file present listed in `.managed.json`.
fn check_files(
    dir: &Path,
    sealed: &SealedDirectory,
    meta: &tantivy::IndexMeta,
    at_rest: bool,
) -> Result<(), String> {
    use tantivy::directory::Directory;
    // A file's footer: its last 8 bytes say how long the JSON before them is.
    let footer = |name: &str| -> Result<Vec<u8>, String> {
        let h = sealed
            .get_file_handle(Path::new(name))
            .map_err(|e| format!("{name}: {e}"))?;
        let n = h.len();
        let tail = |from: usize| -> Result<Vec<u8>, String> {
            h.read_bytes(from..n)
                .map(|b| b.as_slice().to_vec())
                .map_err(|e| format!("{name}: {e}"))
        };
        let last = tail(n.saturating_sub(8))?;
        let json = last
            .get(..4)
            .map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
        tail(n.saturating_sub(8usize.saturating_add(json)))
    };
    let mut canonical = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
    canonical.push(b'\n');
    let on_disk = sealed
        .atomic_read(Path::new("meta.json"))
        .map_err(|e| format!("meta.json: {e}"))?;
    if on_disk != canonical {
        return Err("meta.json is not as tantivy wrote it".into());
    }
    if meta.index_settings != tantivy::IndexSettings::default() {
        return Err("meta.json holds other index settings".into());
    }
    let version = serde_json::to_string(tantivy::version()).map_err(|e| e.to_string())?;
    // The files the commit uses. Others are what a killed writer or merge left, or what
    // a running writer is writing for its next commit (a shred's deletion file): tantivy
    // never reads them for this commit.
    let used: std::collections::BTreeSet<String> = meta
        .segments
        .iter()
        .flat_map(segment_files)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut present = std::collections::BTreeSet::new();
    let mut damaged = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `.tmp…`: an atomic write (meta.json, .managed.json) a crash interrupted before
        // its rename. tantivy never reads it; the next writer removes it.
        if name.ends_with(".lock") || name == ".managed.json" || is_interrupted_write(&name) {
            continue;
        }
        if used.contains(&name) {
            let footer = footer(&name)?;
            let crc = check_footer(&footer, &version).map_err(|e| format!("{name}: {e}"))?;
            // tantivy's checksum of the body, in the same pass that checks every block
            // against its seal: one read of the file, a chunk at a time.
            let h = sealed
                .get_file_handle(Path::new(&name))
                .map_err(|e| format!("{name}: {e}"))?;
            let mut body = h.len().saturating_sub(footer.len());
            let mut hasher = crc32fast::Hasher::new();
            sealed
                .check_whole(Path::new(&name), |chunk| {
                    let take = chunk.len().min(body);
                    hasher.update(&chunk[..take]);
                    body -= take;
                })
                .map_err(|e| format!("{name}: {e}"))?;
            if hasher.finalize() != crc {
                damaged.push(name.clone());
            }
        }
        present.insert(name);
    }
    if !damaged.is_empty() {
        damaged.sort();
        return Err(format!("{} fail their checksums", damaged.join(", ")));
    }
    let missing: Vec<&String> = used.difference(&present).collect();
    if !missing.is_empty() {
        return Err(format!(
            "the files {missing:?} of its last commit are missing"
        ));
    }
    if at_rest {
        let managed = sealed
            .atomic_read(Path::new(".managed.json"))
            .map_err(|e| format!(".managed.json: {e}"))?;
        let listed: Vec<String> = serde_json::from_slice(&managed)
            .map_err(|e| format!(".managed.json does not parse: {e}"))?;
        let mut canonical = serde_json::to_vec(&listed).map_err(|e| e.to_string())?;
        canonical.push(b'\n');
        if managed != canonical {
            return Err(".managed.json is not as tantivy wrote it".into());
        }
        // tantivy lists a file before it writes it and unlists it after deleting it,
        // so a crash can leave a listed file missing; an unlisted file is never its own.
        let listed: std::collections::BTreeSet<String> = listed.into_iter().collect();
        let unlisted: Vec<&String> = present.difference(&listed).collect();
        if !unlisted.is_empty() {
            return Err(format!(".managed.json does not list {unlisted:?}"));
        }
    }
    Ok(())
}

/// A temporary file of tantivy's atomic writes, left by a crash.
fn is_interrupted_write(name: &str) -> bool {
    name.starts_with(".tmp")
}

/// A tantivy file ends in a JSON footer `{"version":…,"crc":N}`, its length (u32 LE)
/// and the magic number 1337 (u32 LE); the checksum covers the body only. Returns it.
fn check_footer(bytes: &[u8], version: &str) -> Result<u32, String> {
    let n = bytes.len();
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (len, magic) = match (
        n.checked_sub(8).and_then(word),
        n.checked_sub(4).and_then(word),
    ) {
        (Some(l), Some(m)) => (l as usize, m),
        _ => return Err("too short for a footer".into()),
    };
    if magic != 1337 {
        return Err("footer magic number missing".into());
    }
    let json = n
        .checked_sub(8 + len)
        .and_then(|start| bytes.get(start..n - 8))
        .ok_or("footer longer than the file")?;
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("footer does not parse: {e}"))?;
    let crc = value
        .get("crc")
        .and_then(|c| c.as_u64())
        .ok_or("footer has no checksum")?;
    if json != format!("{{\"version\":{version},\"crc\":{crc}}}").as_bytes() {
        return Err("footer is not as this tantivy writes it".into());
    }
    u32::try_from(crc).map_err(|_| "footer checksum is not 32 bits".into())
}

/// The files a segment of a commit is read from, each of which must be there: every
/// component but the writer's temporary store, and the deletions if it has any.
fn segment_files(segment: &tantivy::SegmentMeta) -> Vec<std::path::PathBuf> {
    let deletes = segment.delete_opstamp().is_some();
    let mut files: Vec<_> = segment
        .list_files()
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            !name.ends_with(".store.temp") && (deletes || !name.ends_with(".del"))
        })
        .collect();
    files.sort();
    files
}

/// Reads every block of every file the last commit uses and checks it against its
/// seal. A file missing is refused as one that fails its seal.
fn check_every_block(index: &Index, sealed: &SealedDirectory) -> Result<(), IndexError> {
    use tantivy::directory::Directory;
    for segment in index.searchable_segment_metas()? {
        for path in segment_files(&segment) {
            if !sealed.exists(&path).map_err(tantivy::TantivyError::from)? {
                return Err(IndexError::Unsealed(format!(
                    "search index file {} is missing; run `custos reindex`",
                    path.display()
                )));
            }
            sealed
                .check_whole(&path, |_| {})
                .map_err(tantivy::TantivyError::from)?;
        }
    }
    Ok(())
}

/// Runs a read of the index, turning a panic of tantivy's on bytes it cannot parse
/// into an error. tantivy reads only checked private copies of its files, so this is
/// a second line: against a tantivy that panics on bytes it wrote itself, or on a
/// file written and sealed by a holder of the master key.
fn guarded<T>(read: impl FnOnce() -> Result<T, IndexError>) -> Result<T, IndexError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(IndexError::Damaged(
            "tantivy could not read its files (changed in place under this reader?); run `custos verify`"
                .into(),
        ))
    })
}

/// Removes the index in `dir` and its word lists: derived data, rebuilt from the log.
fn wipe(dir: &Path) -> Result<(), IndexError> {
    for d in [dir.to_path_buf(), vocab_dir(dir)] {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// The writer's open: an index made with another schema (an older Custos) is
/// derived data, so it is emptied and rebuilt from the log rather than refused.
fn open_or_rebuild(
    dir: &Path,
    master: &MasterKey,
    archive_id: &[u8; 16],
) -> Result<(Index, SealedDirectory), IndexError> {
    match open_or_create(dir, master, archive_id) {
        Err(IndexError::OtherSchema) => {
            wipe(dir)?;
            open_or_create(dir, master, archive_id)
        }
        other => other,
    }
}

impl BlindIndexWriter {
    /// Opens the index for writing. A mark that is foreign, forged or unauthenticated
    /// does not fail the open: [`BlindIndexWriter::found`] says so, the writer starts
    /// from mark 0, and the caller clears and rebuilds. Nor does a file that fails its
    /// seal: the index is removed and opened empty, and `found` says why.
    pub fn open(
        dir: &Path,
        master: &MasterKey,
        archive_id: [u8; 16],
    ) -> Result<BlindIndexWriter, IndexError> {
        match BlindIndexWriter::open_sealed(dir, master, archive_id) {
            Err(IndexError::Unsealed(why)) => {
                wipe(dir)?;
                let mut w = BlindIndexWriter::open_sealed(dir, master, archive_id)?;
                w.found = Err(IndexError::Unsealed(why));
                Ok(w)
            }
            other => other,
        }
    }

    fn open_sealed(
        dir: &Path,
        master: &MasterKey,
        archive_id: [u8; 16],
    ) -> Result<BlindIndexWriter, IndexError> {
        let (index, sealed) = open_or_rebuild(dir, master, &archive_id)?;
        // Blocks are checked as they are first read, and an open reads few of them: a
        // block changed in the middle of a large file would pass it and fail every later
        // search and merge. The writer carries on only from an index it has read whole.
        check_every_block(&index, &sealed).map_err(|e| unsealed(&sealed, e))?;
        BlindIndexWriter::open_index(dir, index, master, archive_id, true)
            .map_err(|e| unsealed(&sealed, e))
    }

    /// [`BlindIndexWriter::open`] that leaves reading the whole index for
    /// [`BlindIndexWriter::check_deferred`]: every block against its seal, and the live
    /// documents against the messages the last commit names. Both take time in
    /// proportion to the index (a gigabyte at ten million messages); an archive that
    /// serves opens this way and has its indexer thread check before it adds or
    /// commits anything. Until then [`BlindIndexWriter::found`] is the mark as
    /// authenticated, not yet checked against the documents; readers meanwhile check
    /// every block they read, as always.
    pub fn open_checking_later(
        dir: &Path,
        master: &MasterKey,
        archive_id: [u8; 16],
    ) -> Result<BlindIndexWriter, IndexError> {
        let opened = open_or_rebuild(dir, master, &archive_id).and_then(|(index, sealed)| {
            let mut w = BlindIndexWriter::open_index(dir, index, master, archive_id, false)
                .map_err(|e| unsealed(&sealed, e))?;
            w.unchecked = Some(sealed);
            Ok(w)
        });
        match opened {
            Err(IndexError::Unsealed(why)) => {
                wipe(dir)?;
                let mut w = BlindIndexWriter::open_sealed(dir, master, archive_id)?;
                w.found = Err(IndexError::Unsealed(why));
                Ok(w)
            }
            other => other,
        }
    }

    /// The check [`BlindIndexWriter::open_checking_later`] left: every block of every
    /// file the last commit uses, and its live documents against the messages its mark
    /// names. Nothing to do after [`BlindIndexWriter::open`]. On failure the index is
    /// not to be written to: [`BlindIndexWriter::rebuild_from_nothing`].
    pub fn check_deferred(&mut self) -> Result<(), IndexError> {
        let Some(sealed) = self.unchecked.take() else {
            return Ok(());
        };
        check_every_block(&self.index, &sealed).map_err(|e| unsealed(&sealed, e))?;
        // The last commit's mark, not the one the open found: the caller may have
        // emptied and committed the index since ([`BlindIndexWriter::clear`]). An
        // untrusted one names nothing to check against (and is cleared).
        let metas = self.index.load_metas()?;
        if let Ok(mark) = meta_mark(&metas, &self.master, &self.archive_id) {
            let (held, _) = placed_in(&self.index.reader()?.searcher(), &self.placer)
                .map_err(|e| unsealed(&sealed, e))?;
            check_held(&mark, held)?;
        }
        Ok(())
    }

    /// Removes the index and its word lists and opens it empty, to be filled from the
    /// log: after [`BlindIndexWriter::check_deferred`] failed. The empty index is
    /// committed owing the log up to `owed` (its last durable seq), as an index emptied
    /// at open is.
    pub fn rebuild_from_nothing(self, owed: u64) -> Result<BlindIndexWriter, IndexError> {
        let (dir, master, archive_id) = (self.dir.clone(), self.master.clone(), self.archive_id);
        // tantivy's lock goes with its writer.
        drop(self);
        wipe(&dir)?;
        let mut w = BlindIndexWriter::open(&dir, &master, archive_id)?;
        w.owe(owed);
        if w.is_dirty() {
            w.commit()?;
        }
        Ok(w)
    }

    /// The writer over `index`; `check_held` checks its live documents against the
    /// messages its last commit names now (else [`BlindIndexWriter::check_deferred`]
    /// does).
    fn open_index(
        dir: &Path,
        index: Index,
        master: &MasterKey,
        archive_id: [u8; 16],
        check_held_now: bool,
    ) -> Result<BlindIndexWriter, IndexError> {
        // Word lists a fetch of a bucket's index copy left half swapped are settled to
        // those of the commit the index has, before anything below commits another.
        crate::vocab::settle_fetch(dir).map_err(IndexError::Vocabulary)?;
        let (_, fields) = schema();
        let found = meta_mark(&index.load_metas()?, master, &archive_id);
        let mut writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        // Files a killed writer left behind (registered, never committed) go now, and
        // so do the temporary files of atomic writes it was in the middle of.
        writer.garbage_collect_files().wait()?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if is_interrupted_write(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        // Deletions a crash left unmerged (a shred committed, its merge not run) are
        // merged out now, so their terms leave the files and the segment's word list
        // can go below.
        let pending: Vec<tantivy::index::SegmentId> = index
            .searchable_segment_metas()?
            .iter()
            .filter(|m| m.has_deletes())
            .map(|m| m.id())
            .collect();
        if !pending.is_empty() {
            writer.merge(&pending).wait()?;
            writer.garbage_collect_files().wait()?;
        }
        // A word list with no documents beside it is what a crash left: words sealed
        // for a commit that never landed (added again as the log is caught up), or a
        // shredded segment's, whose removal after the merge did not happen.
        let mut vocab = VocabWriter::open(&vocab_dir(dir), master, &archive_id);
        let indexed = segments_in(&index.reader()?.searcher(), fields.seg)?;
        for s in vocab.segments()? {
            if !indexed.contains(&s) {
                vocab.forget(s)?;
            }
        }
        // The lists' marks are read now, once, and carried on in memory: a list changed
        // while this writer runs is never bound as it is. A list changed while nothing
        // ran stays refused: the next commit binds what the last one did for it, not
        // what is there now.
        let committed = meta_mark_words(&index.load_metas()?, master, &archive_id)
            .ok()
            .map(|(_, words)| words);
        // An authentic commit whose files hold other than the messages it names lost
        // some (or was given some) outside Custos: it is rebuilt like an untrusted one.
        let placer = Placer::derive(master, &archive_id);
        let found = match found {
            Ok(mark) if check_held_now => {
                let (held, _) = placed_in(&index.reader()?.searcher(), &placer)?;
                check_held(&mark, held).map(|()| mark)
            }
            other => other,
        };
        let held = vocab
            .load(committed.as_ref())
            .map_err(IndexError::Vocabulary)?;
        if !held.is_empty() {
            tracing::warn!(segments = ?held, "search word lists are not the ones the index committed (cut back, rolled back or replaced); prefix, wildcard and fuzzy search refuse them until custos reindex");
        }
        Ok(BlindIndexWriter {
            writer,
            index,
            fields,
            key: BlindKey::derive(master, &archive_id),
            master: master.clone(),
            archive_id,
            mark: found.as_ref().copied().unwrap_or_default(),
            found,
            dirty: false,
            purge: false,
            vocab,
            forget: Vec::new(),
            pending: BTreeMap::new(),
            placer,
            ops: Vec::with_capacity(OPS_BATCH),
            sent: 0,
            terms: TermCache::new(),
            text: String::new(),
            term: String::with_capacity(TERM_CHARS),
            lost: None,
            dir: dir.to_path_buf(),
            unchecked: None,
        })
    }

    /// The mark the index carried when opened, or why it cannot be trusted.
    pub fn found(&self) -> Result<Mark, &IndexError> {
        self.found.as_ref().copied()
    }

    /// Every record with seq ≤ this is in the last commit.
    pub fn indexed_through(&self) -> u64 {
        self.mark.through
    }

    /// The position added so far (committed or not).
    pub fn mark(&self) -> Mark {
        self.mark
    }

    /// Says, in the next commit's mark, that the log holds records up to `seq` that the
    /// index does not have yet and is catching up to ([`Mark::owed`]): a commit made
    /// before a catch-up is done. Nothing when `seq` is already indexed or already
    /// owed.
    pub fn owe(&mut self, seq: u64) {
        if seq > self.mark.through && seq > self.mark.owed {
            self.mark.owed = seq;
            self.dirty = true;
        }
    }

    /// Removes every document (reindex starts from nothing).
    pub fn clear(&mut self) -> Result<(), IndexError> {
        // Queued documents go with the rest, unsent.
        self.ops.clear();
        self.terms.clear();
        self.writer.delete_all_documents()?;
        self.vocab.clear()?;
        self.pending.clear();
        self.mark = Mark::default();
        self.dirty = true;
        Ok(())
    }

    /// Adds a record, in seq order. Events are not indexed but still advance the mark.
    ///
    /// A record at or below the mark is already in: it is skipped (the live feed may
    /// repeat what a catch-up from the log just added). The mark moves only once the
    /// record is in.
    pub fn add(&mut self, a: &Appended) -> Result<(), IndexError> {
        if a.record.seq.0 <= self.mark.through {
            return Ok(());
        }
        if let NewRecord::Event(EventRecord::Shred { segment, .. }) = &a.record.content {
            // Counted out once: a second shred of the segment before the commit finds
            // the same committed documents still there.
            if !self.forget.contains(segment) {
                let mut gone = self.committed_of(*segment)?;
                gone.join(self.pending.remove(segment).unwrap_or_default());
                self.mark.held.remove(gone);
            }
            // The shredded records go from the index too: deleted now, and their terms
            // purged from the files by the merge after the next commit.
            self.ops.push(UserOperation::Delete(Term::from_field_u64(
                self.fields.seg,
                *segment,
            )));
            self.purge = true;
            // Nor do its words stay in the writer's memory.
            self.terms.clear();
            // Its word list goes once its documents have (after the commit's merge):
            // until then a search still finds them, and expands terms for them.
            self.forget.push(*segment);
        }
        let mut advance = Mark {
            through: a.record.seq.0,
            head: a.head,
            held: self.mark.held,
            // Paid once the index reaches it.
            owed: Some(self.mark.owed)
                .filter(|o| *o > a.record.seq.0)
                .unwrap_or(0),
        };
        let NewRecord::Message(m) = &a.record.content else {
            self.mark = advance;
            self.dirty = true;
            return Ok(());
        };
        let f = self.fields;
        let k = &self.key;
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.seq, a.record.seq.0);
        doc.add_u64(f.seg, a.segment);
        doc.add_u64(f.off, a.offset);
        doc.add_i64(f.time, a.record.time.0);
        // Every part's words in one value with explicit positions, [`query::PART_GAP`]
        // apart between parts (as the export filter numbers them): no phrase and no NEAR
        // joins the subject to the body. A shared file is found by its name and its
        // media type.
        // (Written out as text that [`BlindTokens`] reads back: tantivy would put a
        // pre-tokenized value through JSON and back.)
        let text = &mut self.text;
        text.clear();
        let mut unlisted = None;
        let terms = &mut self.terms;
        for part in query::text_parts(m) {
            query::for_each_token(&part, |t| {
                terms.push_term(k, "text", t, text);
                text.push(BlindTokens::WORD_END);
                if unlisted.is_none() {
                    unlisted = self.vocab.add(a.segment, t).err();
                }
            });
            if let Some(e) = unlisted {
                return Err(e.into());
            }
            text.push(BlindTokens::PART_END);
        }
        doc.add_text(f.text, text.as_str());
        if text.capacity() > TEXT_KEPT {
            // A long message's buffer is not held on to.
            *text = String::new();
        }
        // One buffer for every blinded term: tantivy copies each into the document.
        let term = &mut self.term;
        let mut add = |doc: &mut TantivyDocument, attr: Attr, value: &str| {
            term.clear();
            terms.push_term(k, attr.tag(), value, term);
            doc.add_text(f.attrs, term.as_str());
        };
        // Full and bare JID both, so either finds the message.
        let mut add_jid = |doc: &mut TantivyDocument, attr: Attr, jid: &str| {
            let full = query::normalized_jid(jid);
            let bare = query::bare_jid(&full);
            add(doc, attr, &full);
            if bare != full {
                add(doc, attr, bare);
            }
        };
        add_jid(&mut doc, Attr::From, &m.from);
        add_jid(&mut doc, Attr::To, &m.to);
        // The person behind a room occupant is a party too: `from:` finds what they said
        // in a room, as the copies others received it.
        if let Some(o) = &m.capture.occupant {
            let attr = match m.direction {
                Direction::Inbound => Attr::From,
                Direction::Outbound => Attr::To,
            };
            add_jid(&mut doc, attr, o);
        }
        add_jid(&mut doc, Attr::Account, &m.capture.account);
        if let Some(room) = query::room_of(m) {
            add(&mut doc, Attr::Room, &room);
        }
        add(&mut doc, Attr::Direction, m.direction.as_str());
        add(&mut doc, Attr::Type, &m.stanza_type.to_lowercase());
        add(&mut doc, Attr::Action, m.outcome.action.as_str());
        for r in &m.outcome.rules {
            add(&mut doc, Attr::Rule, r);
        }
        let c = &m.capture;
        for id in std::iter::once(&c.identity).chain(&c.delivered_identity) {
            add(&mut doc, Attr::Msg, id);
        }
        add(&mut doc, Attr::Via, c.via.as_str());
        self.ops.push(UserOperation::Add(doc));
        if self.ops.len() >= OPS_BATCH {
            self.send()?;
        }
        let seq = a.record.seq.0;
        advance.held.add(&self.placer, seq, a.segment, a.offset);
        self.pending
            .entry(a.segment)
            .or_default()
            .add(&self.placer, seq, a.segment, a.offset);
        self.mark = advance;
        self.dirty = true;
        Ok(())
    }

    /// Hands the queued operations to tantivy. A refusal is kept: the mark has already
    /// moved past those documents, so every later commit fails too.
    fn send(&mut self) -> Result<(), IndexError> {
        if let Some(why) = &self.lost {
            return Err(IndexError::Damaged(why.clone()));
        }
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(OPS_BATCH));
        self.sent += ops
            .iter()
            .filter(|op| matches!(op, UserOperation::Add(_)))
            .count();
        if let Err(e) = self.writer.run(ops) {
            let why = format!("the index writer refused documents ({e}); the next open catches up from the last commit");
            self.lost = Some(why.clone());
            return Err(IndexError::Damaged(why));
        }
        Ok(())
    }

    /// The live documents of log segment `segment` in the last commit, placed.
    fn committed_of(&self, segment: u64) -> Result<Placed, IndexError> {
        let reader: IndexReader = self
            .index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let term = Term::from_field_u64(self.fields.seg, segment);
        let mut out = Placed::default();
        for sr in reader.searcher().segment_readers() {
            let Some(mut postings) = sr
                .inverted_index(self.fields.seg)?
                .read_postings(&term, IndexRecordOption::Basic)?
            else {
                continue;
            };
            let ff = sr.fast_fields();
            let (seqs, offs) = (ff.u64("seq")?, ff.u64("off")?);
            let alive = sr.alive_bitset();
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    let seq = seqs.first(doc).unwrap_or(0);
                    out.add(&self.placer, seq, segment, offs.first(doc).unwrap_or(0));
                }
                doc = postings.advance();
            }
        }
        Ok(out)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether so many documents wait for a commit that one is due now, however soon
    /// after the last.
    pub fn commit_due(&self) -> bool {
        self.sent + self.ops.len() >= MAX_UNCOMMITTED
    }

    /// Commits what was added; readers see it after their next reload.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.send()?;
        // The words first: a committed document's words are always in the vocabulary.
        self.vocab.flush()?;
        // The lists as they stand, less those whose segment this commit shreds (they
        // are deleted after it).
        let mut words = self.vocab.marks().map_err(IndexError::Vocabulary)?;
        for segment in &self.forget {
            words.remove(segment);
        }
        let mut pc = self.writer.prepare_commit()?;
        let opstamp = pc.opstamp();
        pc.set_payload(&payload(
            &self.master,
            &self.archive_id,
            &self.mark,
            &words,
            opstamp,
        ));
        pc.commit()?;
        self.sent = 0;
        self.dirty = false;
        self.pending.clear();
        // A failed merge leaves `purge` set (the next commit tries again) and the word
        // lists in place: they go only once their documents have.
        if self.purge {
            self.purge_deleted()?;
            self.purge = false;
        }
        for segment in std::mem::take(&mut self.forget) {
            self.vocab.forget(segment)?;
        }
        Ok(())
    }

    /// Rewrites every index segment holding deleted documents without them (the merge
    /// keeps the commit's opstamp and mark), then removes the old files: a shredded
    /// record's blinded terms leave the disk, not just the results.
    fn purge_deleted(&mut self) -> Result<(), IndexError> {
        let ids: Vec<tantivy::index::SegmentId> = self
            .index
            .searchable_segment_metas()?
            .iter()
            .filter(|m| m.has_deletes())
            .map(|m| m.id())
            .collect();
        if !ids.is_empty() {
            self.writer.merge(&ids).wait()?;
        }
        self.writer.garbage_collect_files().wait()?;
        Ok(())
    }

    /// Commits and waits for merges; the writer lock is released on return.
    pub fn finish(mut self) -> Result<(), IndexError> {
        if self.dirty {
            self.commit()?;
        }
        self.writer.wait_merging_threads()?;
        let _ = &self.index;
        Ok(())
    }
}

/// A reader of the index; needs no lock, so it works beside a writer in
/// another process.
/// How often [`BlindIndexReader::load_commit`] tries before it gives up on an index
/// committed again during each load.
const LOAD_TRIES: usize = 5;

/// One commit of the index, held for searching (see [`BlindIndexReader::load_commit`]).
pub struct Commit {
    searcher: Searcher,
    /// Its mark and the word lists it binds, authenticated.
    marked: Result<(Mark, ListMarks), String>,
}

impl Commit {
    /// The commit's mark, authenticated (not yet checked against the log); `Err` says
    /// why it cannot be trusted.
    pub fn mark(&self) -> Result<Mark, String> {
        self.marked.as_ref().map(|(m, _)| *m).map_err(Clone::clone)
    }
}

pub struct BlindIndexReader {
    reader: IndexReader,
    fields: Fields,
    key: BlindKey,
    /// To check a commit's mark and the word lists it binds.
    master: MasterKey,
    archive_id: [u8; 16],
    /// Loaded on the first prefix, wildcard or fuzzy term, then kept current.
    vocab: std::sync::Mutex<Vocabulary>,
    placer: Placer,
    /// Says which file failed its seal when a load fails.
    sealed: SealedDirectory,
    /// `meta.json` as it was read before the last load: a reload finding it unchanged
    /// keeps the commit loaded (and what its readers hold) instead of opening every
    /// segment anew.
    loaded: std::sync::Mutex<Vec<u8>>,
}

impl BlindIndexReader {
    pub fn open(
        dir: &Path,
        master: &MasterKey,
        archive_id: &[u8; 16],
    ) -> Result<BlindIndexReader, IndexError> {
        let (index, sealed) = open_or_create(dir, master, archive_id)?;
        BlindIndexReader::on(index, sealed, dir, master, archive_id)
    }

    /// [`BlindIndexReader::open`] of an index that exists: [`IndexError::Missing`]
    /// rather than a new empty one.
    pub fn open_existing(
        dir: &Path,
        master: &MasterKey,
        archive_id: &[u8; 16],
    ) -> Result<BlindIndexReader, IndexError> {
        let (index, sealed) = open_existing(dir, master, archive_id)?;
        BlindIndexReader::on(index, sealed, dir, master, archive_id)
    }

    fn on(
        index: Index,
        sealed: SealedDirectory,
        dir: &Path,
        master: &MasterKey,
        archive_id: &[u8; 16],
    ) -> Result<BlindIndexReader, IndexError> {
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| unsealed(&sealed, e))?;
        // As in `reload`: a refusal tantivy passed over fails the load.
        if let Some(why) = sealed.take_refusal() {
            return Err(IndexError::Unsealed(why));
        }
        Ok(BlindIndexReader {
            reader,
            sealed,
            fields,
            key: BlindKey::derive(master, archive_id),
            master: master.clone(),
            archive_id: *archive_id,
            vocab: std::sync::Mutex::new(Vocabulary::new(dir, master, archive_id)),
            placer: Placer::derive(master, archive_id),
            loaded: std::sync::Mutex::default(),
        })
    }

    fn term(&self, field: Field, tag: &str, v: &str) -> Term {
        Term::from_field_text(field, &self.key.term(tag, v))
    }

    /// The words of a prefix, wildcard, fuzzy or NEAR term, from the vocabulary
    /// (read again if this search has not yet).
    fn expand(
        &self,
        words: &[query::Word],
        token: &str,
        limit: usize,
        b: &mut Build<'_>,
    ) -> Result<Vec<String>, IndexError> {
        let mut v = self.vocab.lock().unwrap_or_else(|p| p.into_inner());
        if !b.fresh && words.iter().any(|w| !matches!(w, query::Word::Exact(_))) {
            // The commit's mark first: the lists read after it hold at least what it
            // binds (they are written before each commit). A held commit's own: the
            // last commit's may be a rebuild's, whose lists hold fewer words.
            let read;
            let bound = match b.bound {
                Some(bound) => bound,
                None => {
                    read = meta_mark_words(
                        &b.searcher.index().load_metas()?,
                        &self.master,
                        &self.archive_id,
                    )?
                    .1;
                    &read
                }
            };
            v.refresh().map_err(IndexError::Vocabulary)?;
            // Every segment the index holds messages of must have its word list, or
            // these terms would silently miss its messages.
            let segments = segments_in(b.searcher, self.fields.seg)?;
            let missing: Vec<u64> = segments
                .iter()
                .copied()
                .filter(|s| !v.has_segment(*s))
                .collect();
            if !missing.is_empty() {
                return Err(IndexError::VocabularyMissing(missing));
            }
            // And it must be the list the commit bound, not one cut back or rolled back
            // to an older copy, which would expand terms to fewer words.
            let unbound = v.unbound(bound, segments).map_err(IndexError::Vocabulary)?;
            if !unbound.is_empty() {
                return Err(IndexError::VocabularyNotBound(unbound));
            }
            b.fresh = true;
        }
        let out = v.expand(words, token, limit)?;
        // All of a query's terms together stay within a budget too.
        b.expanded += out.len();
        if b.expanded > MAX_QUERY_EXPANSION {
            return Err(TooBroad {
                token: token.to_string(),
                limit: MAX_QUERY_EXPANSION,
            }
            .into());
        }
        Ok(out)
    }

    fn any_word(&self, words: Vec<String>) -> Box<dyn TQuery> {
        if words.is_empty() {
            return Box::new(EmptyQuery);
        }
        Box::new(TermSetQuery::new(
            words.iter().map(|w| self.term(self.fields.text, "text", w)),
        ))
    }

    fn clause(&self, c: &Clause, b: &mut Build<'_>) -> Result<Box<dyn TQuery>, IndexError> {
        let f = self.fields;
        let term = |field: Field, tag: &str, v: &str| -> Box<dyn TQuery> {
            Box::new(TermQuery::new(
                self.term(field, tag, v),
                IndexRecordOption::Basic,
            ))
        };
        let attr = |attr: Attr, v: &str| term(f.attrs, attr.tag(), v);
        Ok(match c {
            Clause::Text(words) if words.len() == 1 => {
                term(f.text, "text", words.first().map_or("", String::as_str))
            }
            Clause::Text(words) => Box::new(PhraseQuery::new(
                words.iter().map(|w| self.term(f.text, "text", w)).collect(),
            )),
            Clause::Pattern { word, token } => {
                self.any_word(self.expand(std::slice::from_ref(word), token, MAX_EXPANSION, b)?)
            }
            Clause::Near {
                left,
                right,
                within,
                ordered,
                token,
            } => {
                let left = self.expand(left, token, MAX_NEAR_EXPANSION, b)?;
                let right = self.expand(right, token, MAX_NEAR_EXPANSION, b)?;
                if left.is_empty() || right.is_empty() {
                    return Ok(Box::new(EmptyQuery));
                }
                let terms = |w: Vec<String>| -> Vec<Term> {
                    w.iter().map(|w| self.term(f.text, "text", w)).collect()
                };
                Box::new(NearQuery {
                    field: f.text,
                    left: terms(left),
                    right: terms(right),
                    within: *within,
                    ordered: *ordered,
                })
            }
            Clause::Jid(which, jid) => {
                let party = match which {
                    JidField::From => Attr::From,
                    JidField::To => Attr::To,
                    JidField::With => {
                        return Ok(Box::new(BooleanQuery::new(vec![
                            (Occur::Should, attr(Attr::From, jid)),
                            (Occur::Should, attr(Attr::To, jid)),
                        ])));
                    }
                    JidField::Account => Attr::Account,
                };
                attr(party, jid)
            }
            Clause::Room(room) => attr(Attr::Room, room),
            Clause::Direction(d) => attr(Attr::Direction, d.as_str()),
            Clause::Type(t) => attr(Attr::Type, t),
            Clause::Action(a) => attr(Attr::Action, a.as_str()),
            Clause::Rule(r) => attr(Attr::Rule, r),
            Clause::Message(id) => attr(Attr::Msg, id),
            Clause::Via(v) => attr(Attr::Via, v.as_str()),
            Clause::After(t) => Box::new(TimeRange {
                from: t.0,
                until: i64::MAX,
            }),
            Clause::Before(t) => Box::new(TimeRange {
                from: i64::MIN,
                until: t.0.saturating_sub(1),
            }),
        })
    }

    fn expr(&self, e: &Expr, b: &mut Build<'_>) -> Result<Box<dyn TQuery>, IndexError> {
        Ok(match e {
            Expr::All => Box::new(AllQuery),
            Expr::Clause(c) => self.clause(c, b)?,
            Expr::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn TQuery>),
                (Occur::MustNot, self.expr(inner, b)?),
            ])),
            Expr::And(parts) => {
                let mut clauses = Vec::with_capacity(parts.len() + 1);
                for p in parts {
                    clauses.push(match p {
                        Expr::Not(inner) => (Occur::MustNot, self.expr(inner, b)?),
                        p => (Occur::Must, self.expr(p, b)?),
                    });
                }
                if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(clauses))
            }
            Expr::Or(parts) => Box::new(BooleanQuery::new(
                parts
                    .iter()
                    .map(|p| Ok((Occur::Should, self.expr(p, b)?)))
                    .collect::<Result<Vec<_>, IndexError>>()?,
            )),
        })
    }

    /// The newest `limit` matches, newest first.
    ///
    /// Index segments are visited newest first (by the highest seq each holds, a column
    /// statistic), and the walk stops once `limit` matches are held that are all newer
    /// than anything a remaining segment holds: a common word is answered from the
    /// small recent segments without reading its postings in the large old ones.
    pub fn search(&self, q: &Query, limit: usize) -> Result<Vec<Located>, IndexError> {
        guarded(|| {
            self.reload()?;
            self.search_newest((&self.reader.searcher(), None), q, limit)
        })
    }

    /// [`BlindIndexReader::search`] of one commit held by [`BlindIndexReader::load_commit`].
    pub fn search_commit(
        &self,
        commit: &Commit,
        q: &Query,
        limit: usize,
    ) -> Result<Vec<Located>, IndexError> {
        let bound = commit.marked.as_ref().ok().map(|(_, lists)| lists);
        guarded(|| self.search_newest((&commit.searcher, bound), q, limit))
    }

    fn search_newest(
        &self,
        searcher: (&Searcher, Option<&ListMarks>),
        q: &Query,
        limit: usize,
    ) -> Result<Vec<Located>, IndexError> {
        if limit == 0 {
            // Still built: a query the index cannot run is an error at any limit.
            return self
                .matching(searcher, q, |_| Ok(Visit::Stop), |_, _| Ok(()))
                .map(|_| Vec::new());
        }
        // The `limit` highest seqs so far: a min-heap of (seq, segment, doc).
        let mut top: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize, DocId)>> =
            std::collections::BinaryHeap::with_capacity(limit.min(4096) + 1);
        let full = std::cell::Cell::new(None::<u64>);
        let segments = self.matching(
            searcher,
            q,
            // Segments come newest first: once the heap is full and its lowest seq is
            // above a segment's newest, no later segment can add a hit.
            |newest| {
                Ok(if full.get().is_some_and(|low| low >= newest) {
                    Visit::Stop
                } else {
                    Visit::Enter
                })
            },
            |m, _| {
                if top.len() < limit {
                    top.push(std::cmp::Reverse((m.seq, m.at, m.doc)));
                } else if top.peek().is_some_and(|low| m.seq > low.0 .0) {
                    top.pop();
                    top.push(std::cmp::Reverse((m.seq, m.at, m.doc)));
                }
                if top.len() >= limit {
                    full.set(top.peek().map(|low| low.0 .0));
                }
                Ok(())
            },
        )?;
        let mut newest: Vec<(u64, usize, DocId)> = top.into_iter().map(|r| r.0).collect();
        newest.sort_unstable_by_key(|n| std::cmp::Reverse(n.0));
        let mut columns = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(newest.len());
        for (seq, at, doc) in newest {
            let Some(reader) = segments.get(at) else {
                continue;
            };
            let (seg, off) = match columns.entry(at) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let ff = reader.fast_fields();
                    e.insert((ff.u64("seg")?, ff.u64("off")?))
                }
            };
            out.push(Located {
                seq,
                segment: seg.first(doc).unwrap_or(0),
                offset: off.first(doc).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Every document `q` finds, with no limit, in no particular order: an export
    /// selects with it. Documents past the index's mark may be among them (a commit
    /// newer than the mark the caller read).
    pub fn search_all(
        &self,
        q: &Query,
        found: impl FnMut(Located) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        guarded(|| {
            self.reload()?;
            self.search_all_loaded(q, found)
        })
    }

    /// Loads the index's last commit and holds it: what
    /// [`BlindIndexReader::search_commit`] finds in it and the mark it carries are that
    /// one commit's, however many commits come after, in this process or another (a
    /// reindex first commits an emptied index: a search of that commit under the whole
    /// index's mark would find nothing it claims to cover).
    pub fn load_commit(&self) -> Result<Commit, IndexError> {
        // Which commit a `meta.json` is: a merge rewrites the segment list, not these.
        let commit_of = |meta: &[u8]| -> Option<(u64, Option<String>)> {
            let v: serde_json::Value = serde_json::from_slice(meta).ok()?;
            let payload = v.get("payload").and_then(|p| p.as_str()).map(str::to_owned);
            Some((v.get("opstamp")?.as_u64()?, payload))
        };
        for attempt in 1..=LOAD_TRIES {
            let before = self.read_meta()?;
            match self.reload() {
                Ok(()) => {}
                // A merge's clean-up can take a file from under a load: load again.
                Err(_) if attempt < LOAD_TRIES => continue,
                Err(e) => return Err(e),
            }
            let searcher = self.reader.searcher();
            // No commit between the two reads: the searcher holds the one both read.
            let after = self.read_meta()?;
            if after == before || commit_of(&after).is_some_and(|c| Some(c) == commit_of(&before)) {
                let marked = marked_lists_of_meta(
                    &String::from_utf8_lossy(&before),
                    &self.master,
                    &self.archive_id,
                )
                .map_err(|e| e.to_string());
                return Ok(Commit { searcher, marked });
            }
        }
        Err(IndexError::Damaged(format!(
            "it was committed again during each of {LOAD_TRIES} loads"
        )))
    }

    /// The last commit's `meta.json`, read through its seal.
    fn read_meta(&self) -> Result<Vec<u8>, IndexError> {
        use tantivy::directory::Directory;
        self.sealed
            .atomic_read(Path::new("meta.json"))
            .map_err(|e| unsealed(&self.sealed, tantivy::TantivyError::from(e)))
    }

    /// Loads the index's last commit: [`BlindIndexReader::search_all_loaded`] and
    /// [`BlindIndexReader::held_segments`] then read that commit until the next reload.
    pub fn reload(&self) -> Result<(), IndexError> {
        // One load at a time: another thread's load must not take this one's refusal.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // A refusal met by an earlier search was reported there: this load is told
        // only of its own.
        let _ = self.sealed.take_refusal();
        let meta = self.read_meta()?;
        // The same bytes are the same commit (each names its opstamp and segments).
        if *loaded == meta {
            return Ok(());
        }
        loaded.clear();
        self.reader
            .reload()
            .map_err(|e| unsealed(&self.sealed, e))?;
        // tantivy loads a segment without a positions file it cannot open: a refusal it
        // passed over still fails the load.
        if let Some(why) = self.sealed.take_refusal() {
            return Err(IndexError::Unsealed(why));
        }
        // The commit loaded is known only when no other came during the load: the
        // same bytes coming back later (a copy of the index put back) must not pass
        // for a load of a newer commit.
        if self.read_meta()? == meta {
            *loaded = meta;
        }
        Ok(())
    }

    /// [`BlindIndexReader::search_all`] of the commit last loaded, without loading a
    /// newer one.
    pub fn search_all_loaded(
        &self,
        q: &Query,
        mut found: impl FnMut(Located) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut columns = None;
        let mut current = usize::MAX;
        self.matching(
            (&self.reader.searcher(), None),
            q,
            |_| Ok(Visit::Enter),
            |m, reader| {
                if current != m.at || columns.is_none() {
                    let ff = reader.fast_fields();
                    columns = Some((ff.u64("seg")?, ff.u64("off")?));
                    current = m.at;
                }
                let Some((seg, off)) = &columns else {
                    return Ok(());
                };
                found(Located {
                    seq: m.seq,
                    segment: seg.first(m.doc).unwrap_or(0),
                    offset: off.first(m.doc).unwrap_or(0),
                })
            },
        )
        .map(|_| ())
    }

    /// The log segments the commit last loaded holds live documents of, once its
    /// live documents are checked to be the messages `mark` (that commit's) names. A
    /// segment whose documents a shred deleted is not among them, though its terms
    /// stay in the files until a merge.
    pub fn held_segments(&self, mark: &Mark) -> Result<BTreeSet<u64>, IndexError> {
        let (held, segments) = placed_in(&self.reader.searcher(), &self.placer)?;
        check_held(mark, held)?;
        Ok(segments)
    }

    /// Runs `q` over the segments of the commit last loaded, newest first, handing each live matching
    /// document to `each`; `enter(newest seq of a segment)` may stop before a segment.
    /// Returns the segments in the order their `at` numbers them.
    /// `bound`: the word lists the commit binds, when the caller holds them (else they
    /// are read from the index's last commit).
    fn matching(
        &self,
        (searcher, bound): (&Searcher, Option<&ListMarks>),
        q: &Query,
        mut enter: impl FnMut(u64) -> Result<Visit, IndexError>,
        mut each: impl FnMut(Match, &SegmentReader) -> Result<(), IndexError>,
    ) -> Result<Vec<SegmentReader>, IndexError> {
        // A date range beside other terms is checked on the documents those find (one
        // value read each) rather than intersected with them: a sought document outside
        // the range would have the range look ahead for its next match, through every
        // message before or after it in the segment.
        let (window, rest) = match time_window(&q.expr) {
            Some((window, rest)) if rest != Expr::All => (Some(window), rest),
            _ => (None, q.expr.clone()),
        };
        let query = self.expr(
            &rest,
            &mut Build {
                searcher,
                bound,
                fresh: false,
                expanded: 0,
            },
        )?;
        let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
        let mut segments = Vec::with_capacity(searcher.segment_readers().len());
        for r in searcher.segment_readers() {
            let seq = r.fast_fields().u64("seq")?;
            segments.push((seq.max_value(), r.clone(), seq));
        }
        segments.sort_by_key(|s| std::cmp::Reverse(s.0));
        for (at, (newest, reader, seqs)) in segments.iter().enumerate() {
            if matches!(enter(*newest)?, Visit::Stop) {
                break;
            }
            let within = match &window {
                None => None,
                Some(w) => {
                    let time = reader.fast_fields().i64("time")?;
                    if time.max_value() < w.from || time.min_value() > w.until {
                        continue;
                    }
                    Some((time, w))
                }
            };
            let mut scorer = weight.scorer(reader, 1.0)?;
            let alive = reader.alive_bitset();
            let mut doc = scorer.doc();
            while doc != TERMINATED {
                let in_window = within.as_ref().is_none_or(|(time, w)| {
                    time.first(doc).is_some_and(|t| w.from <= t && t <= w.until)
                });
                if in_window && alive.is_none_or(|a| a.is_alive(doc)) {
                    if let Some(seq) = seqs.first(doc) {
                        each(Match { at, doc, seq }, reader)?;
                    }
                }
                doc = scorer.advance();
            }
        }
        Ok(segments.into_iter().map(|s| s.1).collect())
    }
}

/// Whether [`BlindIndexReader::matching`] goes on into the next segment.
enum Visit {
    Enter,
    Stop,
}

/// A live document a query found: its segment's place in the search order, the
/// document, and its record's seq.
#[derive(Clone, Copy)]
struct Match {
    at: usize,
    doc: DocId,
    seq: u64,
}

/// The log segments the index holds documents of (a shredded segment's stay until
/// the merge after its deletion commits).
fn segments_in(
    searcher: &Searcher,
    seg: Field,
) -> Result<std::collections::BTreeSet<u64>, IndexError> {
    let mut out = std::collections::BTreeSet::new();
    for r in searcher.segment_readers() {
        let inv = r.inverted_index(seg)?;
        let mut terms = inv.terms().stream()?;
        while terms.advance() {
            if let Ok(b) = <[u8; 8]>::try_from(terms.key()) {
                out.insert(u64::from_be_bytes(b));
            }
        }
    }
    Ok(out)
}

/// What building one search's query needs beside the clauses.
struct Build<'a> {
    searcher: &'a Searcher,
    /// The word lists the searched commit binds, when known.
    bound: Option<&'a ListMarks>,
    /// The vocabulary has been read again for this search.
    fresh: bool,
    /// Words the query's terms expanded to so far.
    expanded: usize,
}

/// The `after:` and `before:` terms of a query's top level as one range, and the
/// query without them (`Expr::All` when nothing else is left); `None` without any.
fn time_window(e: &Expr) -> Option<(TimeRange, Expr)> {
    let parts: &[Expr] = match e {
        Expr::And(parts) => parts,
        Expr::Clause(Clause::After(_) | Clause::Before(_)) => std::slice::from_ref(e),
        _ => return None,
    };
    let mut window = TimeRange {
        from: i64::MIN,
        until: i64::MAX,
    };
    let mut rest = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Expr::Clause(Clause::After(t)) => window.from = window.from.max(t.0),
            Expr::Clause(Clause::Before(t)) => {
                window.until = window.until.min(t.0.saturating_sub(1));
            }
            other => rest.push(other.clone()),
        }
    }
    if rest.len() == parts.len() {
        return None;
    }
    let rest = match rest.len() {
        0 => Expr::All,
        1 => rest.pop().unwrap_or_default(),
        _ => Expr::And(rest),
    };
    Some((window, rest))
}

/// Documents whose time is within `from..=until` (milliseconds). tantivy's own range
/// query answers a seek by scanning the next 128 documents' values; beside a
/// participant, which seeks it once per message of that person, that is most of a
/// search's time. This one reads the sought document's value first and, when that is
/// outside the range, looks ahead a block of values at a time; it answers a segment
/// wholly inside or outside the range without reading any. (Beside other terms at a
/// query's top level the range is not intersected at all: see [`time_window`].)
#[derive(Debug, Clone)]
struct TimeRange {
    from: i64,
    until: i64,
}

impl TQuery for TimeRange {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for TimeRange {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let time = reader.fast_fields().i64("time")?;
        let max_doc = reader.max_doc();
        if max_doc == 0
            || self.from > self.until
            || time.max_value() < self.from
            || time.min_value() > self.until
        {
            return Ok(Box::new(EmptyScorer));
        }
        // Every document in range: a seek reads nothing (tantivy's `AllScorer` would
        // step to its target one document at a time).
        let every = matches!(time.get_cardinality(), tantivy::columnar::Cardinality::Full)
            && time.min_value() >= self.from
            && time.max_value() <= self.until;
        // The share of the segment's time span the range covers, as a size for the
        // intersection to order its clauses by.
        let span = (time.max_value() as i128 - time.min_value() as i128).max(1);
        let covered = (self.until.min(time.max_value()) as i128
            - self.from.max(time.min_value()) as i128)
            .clamp(1, span);
        let size_hint = u32::try_from(i128::from(max_doc) * covered / span).unwrap_or(max_doc);
        let matcher = TimeRangeMatch {
            time,
            every,
            from: self.from,
            until: self.until,
            max_doc,
            found: Vec::new(),
        };
        Ok(Lazy::start(matcher, size_hint.max(1), boost))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain_by_seek(self.scorer(reader, 1.0)?, doc, "time range")
    }
}

struct TimeRangeMatch {
    time: tantivy::columnar::Column<i64>,
    /// The whole segment is in range.
    every: bool,
    from: i64,
    until: i64,
    max_doc: DocId,
    /// Matches of the last block looked at.
    found: Vec<DocId>,
}

impl NextMatch for TimeRangeMatch {
    fn next_from(&mut self, target: DocId) -> DocId {
        let (from, until) = (self.from, self.until);
        if target >= self.max_doc {
            return TERMINATED;
        }
        if self.every
            || self
                .time
                .first(target)
                .is_some_and(|t| from <= t && t <= until)
        {
            return target;
        }
        // Not the sought one: look further a block of values at a time, each twice
        // the last, as a lead over a range of sparse matches would.
        let (mut start, mut block) = (target + 1, 128u32);
        loop {
            if start >= self.max_doc {
                break TERMINATED;
            }
            let end = start.saturating_add(block).min(self.max_doc);
            self.found.clear();
            self.time
                .get_docids_for_value_range(from..=until, start..end, &mut self.found);
            if let Some(&d) = self.found.first() {
                break d;
            }
            (start, block) = (end, block.saturating_mul(2).min(1 << 16));
        }
    }
}

/// What a lazy scorer needs of its query: the first matching document at or after a
/// target (called with ascending targets), or [`TERMINATED`].
trait NextMatch: Send + 'static {
    fn next_from(&mut self, target: DocId) -> DocId;
}

/// A constant-score [`Scorer`] that asks its matcher for the next document only when
/// advanced or sought.
struct Lazy<M> {
    matcher: M,
    doc: DocId,
    size_hint: u32,
    boost: Score,
}

impl<M: NextMatch> Lazy<M> {
    /// At its first document, as tantivy expects of a new scorer.
    fn start(mut matcher: M, size_hint: u32, boost: Score) -> Box<dyn Scorer> {
        let doc = matcher.next_from(0);
        Box::new(Lazy {
            matcher,
            doc,
            size_hint,
            boost,
        })
    }
}

impl<M: NextMatch> DocSet for Lazy<M> {
    fn advance(&mut self) -> DocId {
        if self.doc != TERMINATED {
            self.doc = self.matcher.next_from(self.doc + 1);
        }
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.doc < target {
            self.doc = self.matcher.next_from(target);
        }
        self.doc
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.size_hint
    }
}

impl<M: NextMatch> Scorer for Lazy<M> {
    fn score(&mut self) -> Score {
        self.boost
    }
}

/// `Weight::explain` for a constant-score query: whether `scorer` reaches `doc`.
fn explain_by_seek(
    mut scorer: Box<dyn Scorer>,
    doc: DocId,
    what: &'static str,
) -> tantivy::Result<Explanation> {
    if scorer.seek(doc) == doc {
        Ok(Explanation::new(what, 1.0))
    } else {
        Err(tantivy::TantivyError::InvalidArgument(format!(
            "document {doc} does not match"
        )))
    }
}

/// Documents where a term of `left` stands within `within` positions of a term of
/// `right` (`ordered`: after it). tantivy has no span queries; this reads the
/// positions of each side's terms per index segment and keeps the documents where
/// both sides meet, as [`query::near`] decides for the export filter.
#[derive(Debug, Clone)]
struct NearQuery {
    field: Field,
    left: Vec<Term>,
    right: Vec<Term>,
    within: u32,
    ordered: bool,
}

impl NearQuery {
    /// Postings with positions of each of `terms` present in the segment, and the sum
    /// of their document counts.
    fn postings(
        inv: &tantivy::InvertedIndexReader,
        terms: &[Term],
    ) -> tantivy::Result<(Vec<SegmentPostings>, u32)> {
        let (mut out, mut docs) = (Vec::new(), 0u32);
        for t in terms {
            if let Some(p) = inv.read_postings(t, IndexRecordOption::WithFreqsAndPositions)? {
                docs = docs.saturating_add(p.size_hint());
                out.push(p);
            }
        }
        Ok((out, docs))
    }
}

/// The documents of one index segment where a term of `left` stands near a term of
/// `right`, found lazily: each step moves both sides' postings to the next document
/// holding both and reads positions of that document only. Combined with a
/// participant or a date range, the intersection seeks it to the few documents those
/// allow, so it reads a skip block or two of each side per candidate instead of every
/// document of a common word.
struct NearMatch {
    left: NearSide,
    right: NearSide,
    within: u32,
    ordered: bool,
    buf: Vec<u32>,
    lp: Vec<u32>,
    rp: Vec<u32>,
}

/// The postings of one side of a NEAR, with the document each is at in a heap, so a step
/// costs the lists it moves, not every list of a wide pattern's expansion.
struct NearSide {
    lists: Vec<SegmentPostings>,
    /// `(document, list)`, the smallest document on top; finished lists leave it.
    at: std::collections::BinaryHeap<std::cmp::Reverse<(DocId, usize)>>,
    /// The lists at the document of the last [`NearSide::positions_in`].
    here: Vec<usize>,
}

impl NearSide {
    fn new(lists: Vec<SegmentPostings>) -> NearSide {
        let at = lists
            .iter()
            .enumerate()
            .filter(|(_, p)| p.doc() != TERMINATED)
            .map(|(i, p)| std::cmp::Reverse((p.doc(), i)))
            .collect();
        NearSide {
            lists,
            at,
            here: Vec::new(),
        }
    }

    /// The smallest document at or after `target` holding a term of this side.
    fn first_from(&mut self, target: DocId) -> DocId {
        while let Some(&std::cmp::Reverse((doc, i))) = self.at.peek() {
            if doc >= target {
                return doc;
            }
            self.at.pop();
            if let Some(p) = self.lists.get_mut(i) {
                let next = p.seek(target);
                if next != TERMINATED {
                    self.at.push(std::cmp::Reverse((next, i)));
                }
            }
        }
        TERMINATED
    }

    /// The positions in `doc` (the smallest document of this side) of any of its
    /// terms, ascending.
    fn positions_in(&mut self, doc: DocId, buf: &mut Vec<u32>, out: &mut Vec<u32>) {
        out.clear();
        self.here.clear();
        self.here
            .extend(self.at.iter().filter(|r| r.0 .0 == doc).map(|r| r.0 .1));
        for &i in &self.here {
            if let Some(p) = self.lists.get_mut(i) {
                p.positions(buf);
                out.extend_from_slice(buf);
            }
        }
        out.sort_unstable();
    }
}

impl NextMatch for NearMatch {
    fn next_from(&mut self, mut target: DocId) -> DocId {
        loop {
            if target >= TERMINATED {
                break TERMINATED;
            }
            let l = self.left.first_from(target);
            if l == TERMINATED {
                break TERMINATED;
            }
            let r = self.right.first_from(l);
            if r != l {
                target = r;
                continue;
            }
            self.left.positions_in(l, &mut self.buf, &mut self.lp);
            self.right.positions_in(l, &mut self.buf, &mut self.rp);
            if query::near(&self.lp, &self.rp, self.within, self.ordered) {
                break l;
            }
            target = l + 1;
        }
    }
}

impl TQuery for NearQuery {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for NearQuery {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inv = reader.inverted_index(self.field)?;
        let (left, left_docs) = Self::postings(&inv, &self.left)?;
        if left.is_empty() {
            return Ok(Box::new(EmptyScorer));
        }
        let (right, right_docs) = Self::postings(&inv, &self.right)?;
        if right.is_empty() {
            return Ok(Box::new(EmptyScorer));
        }
        let matcher = NearMatch {
            left: NearSide::new(left),
            right: NearSide::new(right),
            within: self.within,
            ordered: self.ordered,
            buf: Vec::new(),
            lp: Vec::new(),
            rp: Vec::new(),
        };
        Ok(Lazy::start(matcher, left_docs.min(right_docs), boost))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain_by_seek(self.scorer(reader, 1.0)?, doc, "near")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_term_cache_blinds_as_the_key_does_before_and_after_it_starts_again() {
        let key = BlindKey::derive(&MasterKey::from_bytes([9; 32]), &[1; 16]);
        let mut cache = TermCache::new();
        let mut out = String::from("x");
        // Pairs that join into one cache key are one HMAC input too, so one term: the
        // cache is a memo of the keyed hash and nothing else.
        for (tag, value) in [
            ("jid", "a\0b"),
            ("jid\0a", "b"),
            ("text", "word"),
            ("text", "word"),
        ] {
            out.truncate(1);
            cache.push_term(&key, tag, value, &mut out);
            assert_eq!(&out[1..], key.term(tag, value), "{tag:?} {value:?}");
        }
        for n in 0..TermCache::MAX + 10 {
            let word = format!("w{}", n % (TermCache::MAX + 5));
            out.clear();
            cache.push_term(&key, "text", &word, &mut out);
            assert_eq!(out, key.term("text", &word));
        }
        assert!(cache.terms.len() <= TermCache::MAX);
    }

    /// A hostile sender's long made-up words, many log segments apart: none is kept in
    /// the cache (a segment's word list is dropped at the next segment; the cache is
    /// not), so its memory stays bounded by its count of short terms.
    #[test]
    fn long_words_are_blinded_without_being_kept() {
        let f = Fixture::new();
        let mut w = f.writer();
        for seq in 1..=20u64 {
            let word = format!("{seq:08}").repeat(256);
            w.add(&appended(seq, seq, &word)).unwrap();
        }
        w.commit().unwrap();
        let longest = w.terms.terms.keys().map(|k| k.len()).max().unwrap_or(0);
        assert!(longest <= "jid\0".len() + TermCache::MAX_VALUE, "{longest}");
        assert!(w.terms.scratch.capacity() < 1024);
        let word = format!("{:08}", 7).repeat(256);
        assert_eq!(seqs(&f.reader(), &word).unwrap(), vec![7]);
    }

    /// Once a segment is shredded its words and parties are not kept in clear by the
    /// writer either.
    #[test]
    fn a_shred_empties_the_term_cache() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "merger codename bluebird")).unwrap();
        w.commit().unwrap();
        w.add(&appended(2, 2, "hello")).unwrap();
        assert!(w.terms.terms.keys().any(|k| k.contains("bluebird")));
        w.add(&shred(3, 1)).unwrap();
        assert!(w.terms.terms.is_empty());
    }

    /// However fast records come, a commit is due once the documents waiting for one
    /// would fill what tantivy's queue may hold; a commit makes room again.
    #[test]
    fn a_commit_is_due_once_enough_documents_wait_for_one() {
        let f = Fixture::new();
        let mut w = f.writer();
        for seq in 1..MAX_UNCOMMITTED as u64 {
            w.add(&appended(seq, 1, "w")).unwrap();
        }
        assert!(!w.commit_due());
        w.add(&appended(MAX_UNCOMMITTED as u64, 1, "w")).unwrap();
        assert!(w.commit_due());
        w.commit().unwrap();
        assert!(!w.commit_due());
    }

    /// Adds of a segment, its shred and adds after it, handed to tantivy together and
    /// across a batch boundary: the shred removes the segment's documents queued before
    /// it, committed or not, and none added after it.
    #[test]
    fn a_shred_queued_among_adds_removes_exactly_the_documents_before_it() {
        for before in [3u64, OPS_BATCH as u64 - 1, 2 * OPS_BATCH as u64 + 5] {
            let f = Fixture::new();
            let mut w = f.writer();
            w.add(&appended(1, 1, "word")).unwrap();
            w.commit().unwrap();
            let mut seq = 2;
            for _ in 0..before {
                w.add(&appended(seq, 1, "word")).unwrap();
                seq += 1;
            }
            w.add(&shred(seq, 1)).unwrap();
            seq += 1;
            let after = seq;
            for _ in 0..5 {
                w.add(&appended(seq, 2, "word")).unwrap();
                seq += 1;
            }
            w.finish().unwrap();
            let mut got = f
                .reader()
                .search(&query::parse("word").unwrap(), 1000)
                .unwrap()
                .iter()
                .map(|l| l.seq)
                .collect::<Vec<_>>();
            got.sort_unstable();
            assert_eq!(got, (after..seq).collect::<Vec<_>>(), "{before} queued");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The `text` field's tokens: each word at the position the query side gives
        /// it (one apart within a part, [`query::PART_GAP`] more after each part, an
        /// empty part included), with nothing lost or joined.
        #[test]
        fn blind_tokens_number_words_as_the_query_side_does(
            parts in proptest::collection::vec(
                proptest::collection::vec("[A-Za-z0-9_-]{1,16}", 0..6),
                0..5,
            ),
        ) {
            use tantivy::tokenizer::{TokenStream as _, Tokenizer as _};
            let mut text = String::new();
            let mut want = Vec::new();
            let mut next = 0usize;
            for part in &parts {
                for w in part {
                    text.push_str(w);
                    text.push(BlindTokens::WORD_END);
                    want.push((w.clone(), next));
                    next += 1;
                }
                text.push(BlindTokens::PART_END);
                next += query::PART_GAP as usize;
            }
            let mut tokens = BlindTokens;
            let mut stream = tokens.token_stream(&text);
            let mut got = Vec::new();
            while stream.advance() {
                let t = stream.token();
                proptest::prop_assert_eq!(&text[t.offset_from..t.offset_to], t.text.as_str());
                got.push((t.text.clone(), t.position));
            }
            proptest::prop_assert_eq!(got, want);
        }

        /// A time range, walked document by document or sought at increasing targets,
        /// stops at exactly the documents whose time is in range, whatever the times'
        /// order (a lead scanning sparse matches a block at a time included).
        #[test]
        fn a_time_range_stops_at_exactly_the_documents_in_range(
            times in proptest::collection::vec(0i64..400, 1..3000),
            from in -10i64..410,
            len in 0i64..420,
            steps in proptest::collection::vec(1u32..300, 1..40),
        ) {
            let mut b = Schema::builder();
            let time = b.add_i64_field("time", INDEXED | FAST);
            let index = Index::create_in_ram(b.build());
            let mut w: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
            for t in &times {
                w.add_document(tantivy::doc!(time => *t)).unwrap();
            }
            w.commit().unwrap();
            let searcher = index.reader().unwrap().searcher();
            let reader = searcher.segment_reader(0);
            let range = TimeRange { from, until: from + len };
            let inside = |d: u32| (from..=from + len).contains(&times[d as usize]);
            let want: Vec<u32> = (0..times.len() as u32).filter(|&d| inside(d)).collect();

            let mut s = range.scorer(reader, 1.0).unwrap();
            let mut got = Vec::new();
            while s.doc() != TERMINATED {
                got.push(s.doc());
                s.advance();
            }
            proptest::prop_assert_eq!(&got, &want);

            let mut s = range.scorer(reader, 1.0).unwrap();
            let mut target = 0u32;
            for step in steps {
                target = target.saturating_add(step);
                let expect = want.iter().copied().find(|&d| d >= target).unwrap_or(TERMINATED);
                let at = if s.doc() >= target { s.doc() } else { s.seek(target) };
                proptest::prop_assert_eq!(at, expect, "seek {}", target);
            }
        }
    }

    /// Terms are written as base64url(HMAC(key, tag ‖ 0 ‖ value)[..12]), unpadded: the
    /// keyed-once form must write exactly that.
    #[test]
    fn a_blinded_term_is_the_truncated_hmac_in_base64url() {
        use base64::Engine;
        let master = MasterKey::from_bytes([7; 32]);
        let id = [3; 16];
        let key = BlindKey::derive(&master, &id);
        let raw = master.derive("custos-blind-index-v1", &id);
        for (tag, value) in [
            ("text", "falcon"),
            ("jid", "alice@example.test"),
            ("msg", ""),
        ] {
            let mac = hmac_sha256(raw.as_ref(), &[tag.as_bytes(), &[0], value.as_bytes()]);
            let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac[..12]);
            assert_eq!(want.len(), 16);
            assert_eq!(key.term(tag, value), want);
        }
        // Every one of the 64 digits comes out somewhere, and nothing else does.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2000 {
            seen.extend(key.term("text", &i.to_string()).chars());
        }
        assert_eq!(seen.len(), 64, "{seen:?}");
        assert!(seen
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_'));
    }

    // ---- Word lists bound to commits: an administrator without the master key must
    // not get a rolled-back, cut or recreated list bound by a later commit, nor past a
    // long-lived reader. ----

    fn appended(seq: u64, segment: u64, body: &str) -> Appended {
        use crate::record::{MessageRecord, Record, RecordSeq};
        Appended {
            record: Record {
                seq: RecordSeq(seq),
                time: crate::time::Timestamp(seq as i64),
                content: NewRecord::Message(MessageRecord::chat("a@x", "b@x", body)),
            },
            segment,
            offset: seq * 100,
            head: [seq as u8; 32],
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        index: std::path::PathBuf,
        master: MasterKey,
        id: [u8; 16],
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let index = tmp.path().join("index");
            Fixture {
                _tmp: tmp,
                index,
                master: MasterKey::from_bytes([5; 32]),
                id: [6; 16],
            }
        }
        fn writer(&self) -> BlindIndexWriter {
            BlindIndexWriter::open(&self.index, &self.master, self.id).unwrap()
        }
        fn reader(&self) -> BlindIndexReader {
            BlindIndexReader::open(&self.index, &self.master, &self.id).unwrap()
        }
        fn list(&self, segment: u64) -> std::path::PathBuf {
            vocab_dir(&self.index).join(format!("{segment:016x}.words"))
        }
        /// An index file whose name ends with `ending` (`.pos`, `.term`…).
        fn file_ending(&self, ending: &str) -> std::path::PathBuf {
            std::fs::read_dir(&self.index)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(ending))
                .unwrap()
        }
    }

    fn seqs(r: &BlindIndexReader, q: &str) -> Result<Vec<u64>, IndexError> {
        let mut s: Vec<u64> = r
            .search(&query::parse(q).unwrap(), 100)?
            .iter()
            .map(|l| l.seq)
            .collect();
        s.sort_unstable();
        Ok(s)
    }

    fn refused(got: Result<Vec<u64>, IndexError>, segment: u64) {
        match got {
            Err(IndexError::VocabularyNotBound(s)) | Err(IndexError::VocabularyMissing(s))
                if s.contains(&segment) => {}
            other => panic!("segment {segment}'s list must be refused, got {other:?}"),
        }
    }

    /// Every attribute shares one field, each blinded under its own tag: a value a
    /// sender chooses in one attribute (its type, its id) never answers for another,
    /// and an address as sender is not found as addressee, account or room.
    #[test]
    fn an_attribute_is_found_only_in_its_own_role() {
        use crate::record::{Action, MessageRecord, Record, RecordSeq, Via};
        let f = Fixture::new();
        let mut w = f.writer();
        let at = |seq: u64, m: MessageRecord| Appended {
            record: Record {
                seq: RecordSeq(seq),
                time: crate::time::Timestamp(seq as i64),
                content: NewRecord::Message(m),
            },
            segment: 1,
            offset: seq * 100,
            head: [seq as u8; 32],
        };
        // Alice sends Bob a message typed and identified as the boss's address.
        let mut sent = MessageRecord::chat("Alice@X/Phone", "b@x", "numbers");
        sent.stanza_type = "boss@x".into();
        sent.capture.account = "alice@x/phone".into();
        sent.capture.identity = "boss@x".into();
        sent.outcome.action = Action::Flag;
        sent.outcome.rules = vec!["inbound".into(), "carol@x".into()];
        w.add(&at(1, sent)).unwrap();
        // Carol speaks in a room; Alice's client receives it as a carbon.
        let mut heard = MessageRecord::chat("deals@conf.x/carol", "alice@x/phone", "bids");
        heard.direction = Direction::Inbound;
        heard.stanza_type = "groupchat".into();
        heard.capture.account = "alice@x/phone".into();
        heard.capture.occupant = Some("carol@x/laptop".into());
        heard.capture.via = Via::CarbonReceived;
        heard.capture.identity = "m2".into();
        w.add(&at(2, heard)).unwrap();
        w.commit().unwrap();
        let r = f.reader();
        let none = Vec::<u64>::new();
        for (q, want) in [
            ("from:alice@x", vec![1]),
            ("from:alice@x/phone", vec![1]),
            ("to:alice@x", vec![2]),
            ("with:alice@x", vec![1, 2]),
            ("account:alice@x", vec![1, 2]),
            ("to:b@x", vec![1]),
            ("from:b@x", none.clone()),
            ("account:b@x", none.clone()),
            ("from:carol@x", vec![2]),
            ("from:deals@conf.x", vec![2]),
            ("room:deals@conf.x", vec![2]),
            ("room:carol@x", none.clone()),
            ("room:alice@x", none.clone()),
            ("from:boss@x", none.clone()),
            ("with:boss@x", none.clone()),
            ("type:boss@x", vec![1]),
            ("msg:boss@x", vec![1]),
            ("msg:m2", vec![2]),
            ("rule:carol@x", vec![1]),
            ("from:carol@x rule:carol@x", none.clone()),
            ("rule:inbound", vec![1]),
            ("direction:inbound", vec![2]),
            ("action:flag", vec![1]),
            ("action:allow", vec![2]),
            ("via:carbon-received", vec![2]),
            ("via:direct", vec![1]),
            ("type:groupchat", vec![2]),
        ] {
            assert_eq!(seqs(&r, q).unwrap(), want, "{q}");
        }
    }

    /// Schemas earlier Custos builds wrote.
    #[derive(Clone, Copy)]
    enum Earlier {
        /// A term for every document's seq and time, stored fields and a `with` field
        /// of its own.
        SeqTerms,
        /// Seq and time as columns only, but a field for each attribute, and lengths
        /// kept for scoring.
        FieldPerAttr,
    }

    fn earlier_schema(earlier: Earlier) -> (Schema, Field) {
        use tantivy::schema::{NumericOptions, STORED, STRING, TEXT};
        let mut b = Schema::builder();
        let (seq, place, time): (NumericOptions, NumericOptions, NumericOptions) = match earlier {
            Earlier::SeqTerms => (
                (INDEXED | STORED | FAST).into(),
                (STORED | FAST).into(),
                (INDEXED | FAST).into(),
            ),
            Earlier::FieldPerAttr => (FAST.into(), FAST.into(), FAST.into()),
        };
        let seq = b.add_u64_field("seq", seq);
        b.add_u64_field("seg", place.clone().set_indexed());
        b.add_u64_field("off", place);
        b.add_i64_field("time", time);
        b.add_text_field("text", TEXT);
        let attrs = [
            "from",
            "to",
            "direction",
            "type",
            "action",
            "rule",
            "msg",
            "via",
            "account",
            "room",
        ];
        for name in attrs {
            b.add_text_field(name, STRING);
        }
        if let Earlier::SeqTerms = earlier {
            b.add_text_field("with", STRING);
        }
        (b.build(), seq)
    }

    /// An index of an earlier schema is emptied at the writer's open and refilled under
    /// the current one: nothing of it is read, and `with:` then finds either party.
    #[test]
    fn an_index_of_an_earlier_schema_is_rebuilt() {
        for earlier in [Earlier::SeqTerms, Earlier::FieldPerAttr] {
            rebuilt_from(earlier);
        }
    }

    fn rebuilt_from(earlier: Earlier) {
        let f = Fixture::new();
        std::fs::create_dir_all(&f.index).unwrap();
        {
            let (schema, seq) = earlier_schema(earlier);
            let sealed = SealedDirectory::open(&f.index, &f.master, &f.id).unwrap();
            let old = Index::create(sealed, schema, tantivy::IndexSettings::default()).unwrap();
            let mut w: IndexWriter = old.writer_with_num_threads(1, 15_000_000).unwrap();
            w.add_document(tantivy::doc!(seq => 7u64)).unwrap();
            w.commit().unwrap();
        }
        let refused = BlindIndexReader::open(&f.index, &f.master, &f.id);
        assert!(
            matches!(refused, Err(IndexError::OtherSchema)),
            "a reader refuses the earlier schema until the writer has rebuilt it"
        );
        assert!(
            matches!(
                coverage(&f.index, &f.master, &f.id, true),
                Err(IndexError::OtherSchema)
            ),
            "verify names the earlier schema, not damage"
        );
        let mut w = f.writer();
        assert_eq!(w.indexed_through(), 0);
        w.add(&appended(1, 1, "quarterly numbers")).unwrap();
        w.commit().unwrap();
        let r = f.reader();
        assert_eq!(seqs(&r, "quarterly").unwrap(), vec![1]);
        assert_eq!(seqs(&r, "with:a@x").unwrap(), vec![1]);
        assert_eq!(seqs(&r, "with:b@x").unwrap(), vec![1]);
        assert_eq!(seqs(&r, "with:c@x").unwrap(), Vec::<u64>::new());
    }

    /// Words hidden from a scanner but not from a reader are found as a reader sees
    /// them (an invisible character inside, a letter drawn like a Latin one, small
    /// capitals, spelt out a letter at a time), by a word, a phrase, a prefix and NEAR,
    /// and as they are written.
    #[test]
    fn words_are_found_as_a_reader_sees_them() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "wire the fal\u{200B}con funds"))
            .unwrap();
        w.add(&appended(2, 1, "wire the fаlcon funds")).unwrap();
        w.add(&appended(3, 1, "wire the ᴘᴀʏ funds")).unwrap();
        w.add(&appended(4, 1, "the falconry club")).unwrap();
        w.add(&appended(5, 1, "wire the f.a.l.c.o.n funds"))
            .unwrap();
        w.add(&appended(6, 1, "какой от\u{200B}кат, рау")).unwrap();
        w.add(&appended(7, 1, "у него болит рот")).unwrap();
        w.add(&appended(8, 1, "wire the \u{202E}noclaf\u{202C} funds"))
            .unwrap();
        w.commit().unwrap();
        let r = f.reader();
        assert_eq!(seqs(&r, "falcon").unwrap(), vec![1, 2, 5, 8]);
        assert_eq!(seqs(&r, "\"the falcon funds\"").unwrap(), vec![1, 2, 5, 8]);
        assert_eq!(seqs(&r, "falc*").unwrap(), vec![1, 2, 4, 5, 8]);
        assert_eq!(seqs(&r, "wire NEAR/2 falcon").unwrap(), vec![1, 2, 5, 8]);
        assert_eq!(seqs(&r, "pay").unwrap(), vec![3]);
        assert_eq!(seqs(&r, "fаlcon").unwrap(), vec![2]);
        // A Cyrillic word hidden the same way is found in Cyrillic; a word drawn like
        // a Latin one is read as Latin only beside Latin words, or alone.
        assert_eq!(seqs(&r, "откат").unwrap(), vec![6]);
        assert_eq!(seqs(&r, "pot").unwrap(), Vec::<u64>::new());
    }

    /// Segment 1's list with one message's words, then with two; the older copy.
    fn two_messages(f: &Fixture, w: &mut BlindIndexWriter) -> Vec<u8> {
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.commit().unwrap();
        let older = std::fs::read(f.list(1)).unwrap();
        w.add(&appended(2, 1, "zanzibarian holiday")).unwrap();
        w.commit().unwrap();
        assert_eq!(seqs(&f.reader(), "zanzib*").unwrap(), vec![1, 2]);
        older
    }

    /// The writer's marks were read from the files at its first commit, not at its
    /// open: a list rolled back after the open (checked then) and before that commit
    /// (which may be hours later on an idle server) was bound as it stood.
    #[test]
    fn a_list_rolled_back_after_the_writer_opened_is_not_bound_by_its_first_commit() {
        let f = Fixture::new();
        let mut w = f.writer();
        let older = two_messages(&f, &mut w);
        w.finish().unwrap();

        let mut w = f.writer();
        std::fs::write(f.list(1), &older).unwrap();
        w.add(&appended(3, 2, "unrelated words")).unwrap();
        w.commit().unwrap();
        refused(seqs(&f.reader(), "zanzib*"), 1);
    }

    /// A list deleted under a running writer was started anew by its next flush (a new
    /// file id, only the new words) and bound as such: the earlier messages of the
    /// segment were silently missed by pattern terms.
    #[test]
    fn a_list_deleted_under_a_running_writer_is_not_recreated_and_bound() {
        let f = Fixture::new();
        let mut w = f.writer();
        two_messages(&f, &mut w);
        std::fs::remove_file(f.list(1)).unwrap();
        w.add(&appended(3, 1, "zanzibarese")).unwrap();
        w.commit().unwrap();
        refused(seqs(&f.reader(), "zanzib*"), 1);
    }

    /// After a restart the indexer catches up in a segment that already has a list: its
    /// running hash was built from the bytes on disk at that moment, so a list rolled
    /// back after the open was carried on and bound.
    #[test]
    fn a_list_rolled_back_before_the_catch_up_reaches_its_segment_is_not_bound() {
        let f = Fixture::new();
        let mut w = f.writer();
        let older = two_messages(&f, &mut w);
        w.finish().unwrap();

        let mut w = f.writer();
        std::fs::write(f.list(1), &older).unwrap();
        w.add(&appended(3, 1, "tanzanite")).unwrap();
        w.commit().unwrap();
        refused(seqs(&f.reader(), "zanzib*"), 1);
    }

    /// A long-lived reader (the server's) checked a list once and cached the result by
    /// the file's size: a rolled-back copy padded to the same size (the padding reads
    /// as a torn chunk) passed once the reader re-read every list (any list gone or
    /// replaced — a shred — makes it start over).
    #[test]
    fn a_reader_does_not_trust_a_list_by_its_size_after_reading_it_anew() {
        let f = Fixture::new();
        let mut w = f.writer();
        let older = two_messages(&f, &mut w);
        w.add(&appended(3, 2, "hello")).unwrap();
        w.commit().unwrap();
        let r = f.reader();
        assert_eq!(seqs(&r, "zanzib*").unwrap(), vec![1, 2]);

        let size = std::fs::metadata(f.list(1)).unwrap().len() as usize;
        let mut padded = older.clone();
        padded.resize(size, 0xff);
        std::fs::write(f.list(1), &padded).unwrap();
        // Any other list appearing and going makes the reader read every list again.
        let bogus = f.list(99);
        let mut header = b"custos-w".to_vec();
        header.extend_from_slice(&[7; 16]);
        std::fs::write(&bogus, &header).unwrap();
        let _ = seqs(&r, "zanzib*");
        std::fs::remove_file(&bogus).unwrap();
        refused(seqs(&r, "zanzib*"), 1);
    }

    /// A `custos-index-v5`, `-v6` or `-v7` mark is not trusted, however it
    /// authenticates: a v5 index holds its terms in hex, not in the base64 form queries
    /// now ask for, and v6 and v7 indexes hold no words as a reader sees them, so
    /// searches would miss messages while claiming the index complete. The index is
    /// cleared and rebuilt, as one of v1 (`trust_or_clear`).
    #[test]
    fn marks_of_indexes_that_would_miss_words_are_not_trusted() {
        for version in [
            "custos-index-v5",
            "custos-index-v6",
            "custos-index-v7",
            "custos-index-v8",
        ] {
            let f = Fixture::new();
            let mut w = f.writer();
            w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
            w.send().unwrap();
            w.vocab.flush().unwrap();
            let words = w.vocab.marks().unwrap();
            let mut pc = w.writer.prepare_commit().unwrap();
            let opstamp = pc.opstamp();
            // Authentic as that version's, the version's name under the MAC.
            let text = words_text(&words);
            let mac = mark_mac(&f.master, &f.id, version, &w.mark, &text, opstamp);
            pc.set_payload(&format!(
                "{version} {} {} {} {} {:032x} 0 {opstamp} {text} {}",
                hex(&f.id),
                w.mark.through,
                hex(&w.mark.head),
                w.mark.held.count,
                w.mark.held.digest,
                hex(&mac)
            ));
            pc.commit().unwrap();
            w.dirty = false;
            w.finish().unwrap();

            let w = f.writer();
            assert!(
                matches!(w.found(), Err(IndexError::Unauthenticated)),
                "{version}: {:?}",
                w.found()
            );
            assert!(matches!(
                read_mark(&f.index, &f.master, &f.id),
                Err(IndexError::Unauthenticated)
            ));
        }
    }

    /// What a mark owes is authenticated: changed without the key, it is a forgery, as
    /// any other changed field.
    #[test]
    fn what_a_mark_owes_is_authenticated() {
        let f = Fixture::new();
        // Committed owing up to seq 9; then the debt rewritten.
        let mut w = f.writer();
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.add(&appended(2, 1, "zanzibarian holiday")).unwrap();
        w.owe(9);
        w.commit().unwrap();
        let payload = w.index.load_metas().unwrap().payload.unwrap();
        w.finish().unwrap();
        let found = read_mark(&f.index, &f.master, &f.id).unwrap();
        assert_eq!((found.through, found.owed), (2, 9));
        let opstamp = commit_opstamp(&f.index, &f.master, &f.id).unwrap();
        let mut parts: Vec<&str> = payload.split(' ').collect();
        assert_eq!(parts[6], "9");
        assert!(parse_payload(Some(&payload), opstamp, &f.master, &f.id).is_ok());
        parts[6] = "2";
        let changed = parts.join(" ");
        assert!(matches!(
            parse_payload(Some(&changed), opstamp, &f.master, &f.id),
            Err(IndexError::Forged)
        ));
        // Reaching what it owed settles it.
        let mut w = f.writer();
        for seq in 3..=9 {
            w.add(&appended(seq, 1, "zanzibarite")).unwrap();
        }
        assert_eq!(w.mark().owed, 0);
        w.finish().unwrap();
    }

    /// An index committed by an older Custos (`custos-index-v2`) binds no list. Were its
    /// mark trusted, the writer's next commit would bind the lists as they are: an
    /// administrator who restores a pre-upgrade copy of `index/` (its mark is on this
    /// chain) together with an older copy of a word list would get that list bound,
    /// and patterns would silently miss the messages indexed between the two copies.
    /// So a v2 mark is not trusted: the index is rebuilt, as one of v1.
    #[test]
    fn a_restored_pre_upgrade_index_is_not_trusted() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.commit().unwrap();
        let older = std::fs::read(f.list(1)).unwrap();
        w.add(&appended(2, 1, "zanzibarian holiday")).unwrap();
        // Committed as an older Custos did: a v2 mark, authenticated, binding no lists.
        w.vocab.flush().unwrap();
        let mut pc = w.writer.prepare_commit().unwrap();
        let opstamp = pc.opstamp();
        let mark = w.mark;
        let key = f.master.derive("custos-index-mark-v1", &f.id);
        let mac = hmac_sha256(
            key.as_ref(),
            &[
                b"custos-index-v2",
                &f.id,
                &mark.through.to_be_bytes(),
                &mark.head,
                &opstamp.to_be_bytes(),
                b"",
            ],
        );
        pc.set_payload(&format!(
            "custos-index-v2 {} {} {} {opstamp} {}",
            hex(&f.id),
            mark.through,
            hex(&mark.head),
            hex(&mac)
        ));
        pc.commit().unwrap();
        w.dirty = false;
        w.finish().unwrap();

        std::fs::write(f.list(1), &older).unwrap();
        let w = f.writer();
        assert!(
            matches!(w.found(), Err(IndexError::Unauthenticated)),
            "{:?}",
            w.found()
        );
        assert!(matches!(
            coverage(&f.index, &f.master, &f.id, true),
            Err(IndexError::Unauthenticated)
        ));
        assert!(matches!(
            read_mark(&f.index, &f.master, &f.id),
            Err(IndexError::Unauthenticated)
        ));
    }

    /// What a crash leaves is no tampering: words sealed (and a chunk torn after them)
    /// for a commit that never landed, then a restart that catches up in the same
    /// segment; a reader opened before; a shred. Pattern terms keep working throughout.
    #[test]
    fn a_crash_between_flush_and_commit_and_a_shred_leave_lists_bound() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "zanzibarite")).unwrap();
        w.commit().unwrap();
        let early = f.reader();
        assert_eq!(seqs(&early, "zanzib*").unwrap(), vec![1]);
        w.add(&appended(2, 1, "zanzibarian")).unwrap();
        w.vocab.flush().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(f.list(1))
            .unwrap();
        std::io::Write::write_all(&mut file, &[0, 0, 0, 90, 1, 2, 3]).unwrap();
        drop(w); // killed before its commit
        assert_eq!(seqs(&early, "zanzib*").unwrap(), vec![1]);

        let mut w = f.writer();
        assert_eq!(w.indexed_through(), 1);
        w.add(&appended(2, 1, "zanzibarian")).unwrap();
        w.add(&appended(3, 2, "zanzibarese")).unwrap();
        w.commit().unwrap();
        assert_eq!(seqs(&early, "zanzib*").unwrap(), vec![1, 2, 3]);
        assert_eq!(seqs(&f.reader(), "zanzib*").unwrap(), vec![1, 2, 3]);
        let c = coverage(&f.index, &f.master, &f.id, false).unwrap();
        assert!(c.vocabulary_unbound.is_empty() && c.vocabulary_gaps.is_empty());

        // A shred: segment 1's documents and list go; nothing is refused after.
        let shred = Appended {
            record: crate::record::Record {
                seq: crate::record::RecordSeq(4),
                time: crate::time::Timestamp(4),
                content: NewRecord::Event(EventRecord::Shred {
                    segment: 1,
                    reason: "expired".into(),
                    authority: "policy".into(),
                    actor: "test".into(),
                }),
            },
            segment: 2,
            offset: 400,
            head: [4; 32],
        };
        w.add(&shred).unwrap();
        w.commit().unwrap();
        assert!(!f.list(1).exists());
        assert_eq!(seqs(&early, "zanzib*").unwrap(), vec![3]);
        w.finish().unwrap();
        let mut w = f.writer();
        w.add(&appended(5, 2, "zanzibarish")).unwrap();
        w.commit().unwrap();
        assert_eq!(seqs(&early, "zanzib*").unwrap(), vec![3, 5]);
        let c = coverage(&f.index, &f.master, &f.id, false).unwrap();
        assert!(c.vocabulary_unbound.is_empty() && c.vocabulary_gaps.is_empty());
    }

    fn shred(seq: u64, segment: u64) -> Appended {
        Appended {
            record: crate::record::Record {
                seq: crate::record::RecordSeq(seq),
                time: crate::time::Timestamp(seq as i64),
                content: NewRecord::Event(EventRecord::Shred {
                    segment,
                    reason: "expired".into(),
                    authority: "policy".into(),
                    actor: "test".into(),
                }),
            },
            segment: 9,
            offset: seq * 100,
            head: [seq as u8; 32],
        }
    }

    /// A commit held by `load_commit` is searched as it was, under its own mark, when
    /// the index is emptied and committed meanwhile (a reindex's first commit, in
    /// another process): a search that read the whole index's mark and then searched
    /// the emptied commit would claim messages it cannot find.
    #[test]
    fn a_loaded_commit_is_searched_under_its_own_mark_whatever_is_committed_after() {
        let f = Fixture::new();
        let mut w = f.writer();
        for seq in 1..=3 {
            w.add(&appended(seq, 1, "ledger entry")).unwrap();
        }
        w.commit().unwrap();
        let r = f.reader();
        let q = query::parse("ledger").unwrap();
        let found = |c: &Commit| {
            let mut s: Vec<u64> = r
                .search_commit(c, &q, 100)
                .unwrap()
                .iter()
                .map(|l| l.seq)
                .collect();
            s.sort_unstable();
            s
        };
        let held = r.load_commit().unwrap();
        w.clear().unwrap();
        w.commit().unwrap();
        assert_eq!(
            (held.mark().unwrap().through, found(&held)),
            (3, vec![1, 2, 3])
        );

        let now = r.load_commit().unwrap();
        assert_eq!((now.mark().unwrap().through, found(&now)), (0, vec![]));
        assert_eq!(found(&held), vec![1, 2, 3]);
        w.finish().unwrap();
    }

    /// A held commit's prefix, wildcard and fuzzy terms expand from the word lists that
    /// commit binds, or are refused: the lists on disk may be a rebuild's, holding the
    /// words of fewer messages than the held commit claims.
    #[test]
    fn a_held_commit_expands_its_patterns_from_its_own_word_lists() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.add(&appended(2, 1, "zanzibarian holiday")).unwrap();
        w.commit().unwrap();
        let r = f.reader();
        let held = r.load_commit().unwrap();
        // A rebuild beside the search: emptied, then part of the log again.
        w.clear().unwrap();
        w.commit().unwrap();
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.commit().unwrap();
        let got = r.search_commit(&held, &query::parse("zanzibar*").unwrap(), 100);
        refused(got.map(|l| l.iter().map(|l| l.seq).collect()), 1);
        w.finish().unwrap();
    }

    /// The bucket upload, which holds no key, reads the lists a commit binds from its
    /// `meta.json` and puts with the commit only lists that go with it: grown since,
    /// yes; started anew by a rebuild since, no (that commit is put next time); replaced
    /// under the index, which still binds the old one, left out (never every snapshot
    /// after it refused).
    #[test]
    fn a_snapshot_takes_only_the_word_lists_its_commit_binds() {
        let f = Fixture::new();
        let meta = || {
            let sealed = std::fs::read(f.index.join("meta.json")).unwrap();
            let len = super::sealed::sealed_len(&sealed).unwrap();
            String::from_utf8(sealed[..len].to_vec()).unwrap()
        };
        let names = |m: &str| -> Option<Vec<String>> {
            crate::bucket::read_words(&f.index, m)
                .unwrap()
                .map(|lists| lists.into_iter().map(|(n, _)| n).collect())
        };
        let one = f
            .list(1)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let two = f
            .list(2)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut w = f.writer();
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.commit().unwrap();
        let first = meta();
        assert_eq!(
            lists_of_meta(&first)
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![1]
        );
        w.add(&appended(2, 1, "zanzibarian holiday")).unwrap();
        w.add(&appended(3, 2, "quarterly ledger")).unwrap();
        w.commit().unwrap();
        assert_eq!(names(&first), Some(vec![one.clone(), two.clone()]));

        // Rebuilt from the log since `first` was read: the same words, in lists started
        // anew; the newer commit is the one to put.
        w.clear().unwrap();
        w.add(&appended(1, 1, "zanzibarite shipment")).unwrap();
        w.commit().unwrap();
        assert_eq!(names(&first), None);
        let rebuilt = meta();
        assert_eq!(names(&rebuilt), Some(vec![one.clone()]));
        w.finish().unwrap();

        // A list replaced under the index, whose last commit still binds the old one.
        let held = meta();
        std::fs::write(f.list(1), b"custos-w0123456789abcdef").unwrap();
        assert_eq!(names(&held), Some(vec![]));
        // And one deleted.
        std::fs::remove_file(f.list(1)).unwrap();
        assert_eq!(names(&held), Some(vec![]));
        assert!(lists_of_meta("{\"payload\":\"custos-index-v8 x\"}").is_none());
    }

    /// A reader loads each commit once: a search after a commit sees it, and searches
    /// with no commit between them keep the loaded one instead of opening every
    /// segment anew.
    #[test]
    fn a_reader_loads_each_new_commit_and_keeps_the_loaded_one_otherwise() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "alpha")).unwrap();
        w.commit().unwrap();
        let r = f.reader();
        let generation = |r: &BlindIndexReader| r.reader.searcher().generation().generation_id();
        assert_eq!(seqs(&r, "alpha").unwrap(), vec![1]);
        let first = generation(&r);
        assert_eq!(seqs(&r, "alpha").unwrap(), vec![1]);
        assert_eq!(generation(&r), first);
        w.add(&appended(2, 1, "alpha")).unwrap();
        w.commit().unwrap();
        assert_eq!(seqs(&r, "alpha").unwrap(), vec![1, 2]);
        let second = generation(&r);
        assert_ne!(second, first);
        assert_eq!(seqs(&r, "alpha").unwrap(), vec![1, 2]);
        assert_eq!(generation(&r), second);
    }

    /// A file whose body tantivy's checksum does not match, sealed as if Custos had
    /// written it so (a tantivy that wrote it wrong, or a holder of the key): the seal
    /// passes, and the one read that checks every block also checks the body against the
    /// footer's checksum, naming the file.
    #[test]
    fn a_sealed_file_whose_body_fails_tantivys_checksum_is_named() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "alpha")).unwrap();
        w.finish().unwrap();
        coverage(&f.index, &f.master, &f.id, true).unwrap();
        let key = SealKey::derive(&f.master, &f.id);
        let name = f
            .file_ending(".idx")
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut body = std::fs::read(f.index.join(&name)).unwrap();
        body.truncate(sealed_len(&body).unwrap());
        body[0] ^= 1;
        std::fs::write(f.index.join(&name), key.seal(&name, &body)).unwrap();
        let err = coverage(&f.index, &f.master, &f.id, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&name) && err.contains("fail their checksums"),
            "{err}"
        );
    }

    /// A tantivy segment copied in under a new id in place of another as large (sealed,
    /// as only a bug or a holder of the key could): the index holds as many messages as
    /// its commit counts, but not the ones it names. Neither the reader's check nor the
    /// writer trusts it.
    #[test]
    fn a_segment_copied_in_for_another_as_large_is_not_the_messages_the_mark_names() {
        let f = Fixture::new();
        let mut w = f.writer();
        for seq in 1..=4 {
            w.add(&appended(seq, 1, "word")).unwrap();
            if seq % 2 == 0 {
                w.commit().unwrap();
            }
        }
        w.finish().unwrap();
        let key = SealKey::derive(&f.master, &f.id);
        let unsealed = |name: &str| {
            let mut b = std::fs::read(f.index.join(name)).unwrap();
            b.truncate(sealed_len(&b).unwrap());
            b
        };
        let mut meta: serde_json::Value = serde_json::from_slice(&unsealed("meta.json")).unwrap();
        let segments = meta["segments"].as_array_mut().unwrap();
        assert_eq!(segments.len(), 2, "{segments:?}");
        let first = segments[0]["segment_id"].as_str().unwrap().to_owned();
        // Another id: the last hex digit changed.
        let last = if first.ends_with('0') { '1' } else { '0' };
        let copy = format!("{}{last}", &first[..first.len() - 1]);
        assert_ne!(copy, first);
        let plain = |id: &str| id.replace('-', "");
        for entry in std::fs::read_dir(&f.index).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(ext) = name.strip_prefix(&format!("{}.", plain(&first))) {
                let to = format!("{}.{ext}", plain(&copy));
                std::fs::write(f.index.join(&to), key.seal(&to, &unsealed(&name))).unwrap();
            }
        }
        segments[1] = segments[0].clone();
        segments[1]["segment_id"] = serde_json::Value::String(copy);
        let mut text = serde_json::to_vec_pretty(&meta).unwrap();
        text.push(b'\n');
        std::fs::write(f.index.join("meta.json"), key.seal("meta.json", &text)).unwrap();

        let r = f.reader();
        r.reload().unwrap();
        assert_eq!(r.reader.searcher().num_docs(), 4);
        let mark = read_mark(&f.index, &f.master, &f.id).unwrap();
        assert_eq!(mark.held.count, 4);
        match r.held_segments(&mark) {
            Err(IndexError::Damaged(why)) => {
                assert!(
                    why.contains("not the messages its last commit names"),
                    "{why}"
                )
            }
            other => panic!("the copied segment was trusted: {other:?}"),
        }
        assert!(
            matches!(f.writer().found(), Err(IndexError::Damaged(_))),
            "the writer carried on from it"
        );
        // Nor does the writer of an archive that serves, once it made the check its
        // open left for later.
        let mut w = BlindIndexWriter::open_checking_later(&f.index, &f.master, f.id).unwrap();
        assert!(matches!(
            w.check_deferred(),
            Err(IndexError::Damaged(why)) if why.contains("not the messages its last commit names")
        ));
    }

    /// The messages the mark names follow the documents through shreds of committed
    /// and uncommitted messages, a shred recorded twice before a commit, a reopen and
    /// a clear: a writer that reopens trusts its own index.
    #[test]
    fn the_mark_names_the_messages_its_commit_holds() {
        let f = Fixture::new();
        let mut w = f.writer();
        let placer = Placer::derive(&f.master, &f.id);
        // `seqs` as `appended` places them, named as the mark names them.
        let named = |seqs: &[u64]| {
            let mut p = Placed::default();
            for &seq in seqs {
                p.add(&placer, seq, 1 + seq / 3, seq * 100);
            }
            p
        };
        let check = |w: &BlindIndexWriter, seqs: &[u64]| {
            let r = f.reader();
            r.reload().unwrap();
            let (held, _) = placed_in(&r.reader.searcher(), &placer).unwrap();
            assert_eq!(held, named(seqs));
            assert_eq!(read_mark(&f.index, &f.master, &f.id).unwrap().held, held);
            assert_eq!(w.mark().held, held);
        };
        for seq in 1..=4 {
            w.add(&appended(seq, 1 + seq / 3, "word")).unwrap();
        }
        w.commit().unwrap();
        check(&w, &[1, 2, 3, 4]);
        // Segment 2 holds seqs 3 and 4 committed and 5 not yet: the shred takes all.
        w.add(&appended(5, 2, "word")).unwrap();
        w.add(&appended(6, 3, "word")).unwrap();
        w.add(&shred(7, 2)).unwrap();
        w.add(&shred(8, 2)).unwrap();
        w.add(&appended(9, 4, "word")).unwrap();
        w.commit().unwrap();
        check(&w, &[1, 2, 6, 9]);
        w.finish().unwrap();
        let mut w = f.writer();
        assert!(w.found().is_ok(), "{:?}", w.found());
        w.add(&shred(10, 1)).unwrap();
        w.commit().unwrap();
        check(&w, &[6, 9]);
        w.clear().unwrap();
        w.commit().unwrap();
        check(&w, &[]);
        w.finish().unwrap();
        assert!(f.writer().found().is_ok());
    }
    /// Flips `mask` into byte `at` of the file at `path` in place.
    fn poke(path: &std::path::Path, at: u64, mask: u8) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ mask]).unwrap();
    }

    /// 4,000 messages of distinct words committed, then one byte changed in the middle
    /// of the `.term` file, far from the few blocks an open reads.
    fn changed_block_in_the_middle(f: &Fixture) {
        let mut w = f.writer();
        for seq in 1..=4000u64 {
            let body = format!(
                "q{:x}z k{:x}y",
                seq.wrapping_mul(0x9e3779b97f4a7c15),
                seq * 7919
            );
            w.add(&appended(seq, 1, &body)).unwrap();
        }
        w.finish().unwrap();
        let term = f.file_ending(".term");
        let len = sealed_len(&std::fs::read(&term).unwrap()).unwrap();
        assert!(len > 4 * 16 * 1024, "{len}");
        poke(&term, (len / 2) as u64, 0x01);
    }

    /// A block changed in the middle of a large file passes an open that reads only a
    /// few blocks: the writer must not carry on from it (every later search touching
    /// the block, and every merge, would fail), but rebuild.
    #[test]
    fn the_writer_does_not_carry_on_from_a_file_with_a_changed_block() {
        let f = Fixture::new();
        changed_block_in_the_middle(&f);
        let w = f.writer();
        match w.found() {
            Err(IndexError::Unsealed(why)) => assert!(why.contains(".term"), "{why}"),
            other => panic!("the writer carried on from it: {other:?}"),
        }
        assert_eq!(w.mark(), Mark::default(), "it starts over");
    }

    /// An open that leaves the whole read for later (an archive that serves) takes the
    /// same file as its mark says, but the check it left finds the block, and the
    /// writer then starts over from an empty index rather than carry on from it.
    #[test]
    fn a_check_left_for_later_finds_the_changed_block_and_the_writer_starts_over() {
        let f = Fixture::new();
        changed_block_in_the_middle(&f);

        let mut w = BlindIndexWriter::open_checking_later(&f.index, &f.master, f.id).unwrap();
        assert_eq!(w.found().unwrap().through, 4000, "the open read the block");
        match w.check_deferred() {
            Err(IndexError::Unsealed(why)) => assert!(why.contains(".term"), "{why}"),
            other => panic!("the check passed the changed block: {other:?}"),
        }
        let mut w = w.rebuild_from_nothing(4000).unwrap();
        assert_eq!(
            w.mark(),
            Mark {
                owed: 4000,
                ..Mark::default()
            },
            "it starts over, owing what it had"
        );
        assert_eq!(w.found().unwrap(), Mark::default());
        w.check_deferred().unwrap();
        w.add(&appended(1, 1, "qz")).unwrap();
        w.finish().unwrap();
        assert_eq!(read_mark(&f.index, &f.master, &f.id).unwrap().through, 1);

        // An index that passes is checked once; the writer carries on from it.
        let mut w = BlindIndexWriter::open_checking_later(&f.index, &f.master, f.id).unwrap();
        w.check_deferred().unwrap();
        assert_eq!(w.found().unwrap().through, 1);
    }

    /// Beside a running writer, a deletion file it is still writing for its next
    /// commit (a shred's) is no file of the last commit: coverage does not read it.
    #[test]
    fn coverage_beside_a_writer_does_not_read_a_file_of_its_next_commit() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "alpha")).unwrap();
        w.finish().unwrap();
        let mut meta = std::fs::read(f.index.join("meta.json")).unwrap();
        meta.truncate(sealed_len(&meta).unwrap());
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        let id = meta["segments"][0]["segment_id"]
            .as_str()
            .unwrap()
            .replace('-', "");
        std::fs::write(f.index.join(format!("{id}.999.del")), b"\x01\x00").unwrap();
        let got = coverage(&f.index, &f.master, &f.id, false);
        assert!(got.is_ok(), "{got:?}");
    }
    /// Bytes changed in place under a reader that already read them never reach tantivy:
    /// it reads checked private copies. Whatever single bit of a `.term` or `.idx` file
    /// is flipped under a live reader, each search answers as before or fails naming the
    /// file; none answers otherwise, and none panics.
    #[test]
    fn a_search_over_files_changed_in_place_answers_truly_or_fails() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "alpha")).unwrap();
        w.add(&appended(2, 1, "beta")).unwrap();
        w.finish().unwrap();
        let r = f.reader();
        let truth = [("alpha", vec![1]), ("beta", vec![2]), ("gamma", vec![])];
        for (word, want) in &truth {
            assert_eq!(&seqs(&r, word).unwrap(), want);
        }
        let mut tried = 0;
        for entry in std::fs::read_dir(&f.index).unwrap() {
            let path = entry.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            if !(name.ends_with(".idx") || name.ends_with(".term")) {
                continue;
            }
            let len = sealed_len(&std::fs::read(&path).unwrap()).unwrap() as u64;
            for at in 0..len {
                poke(&path, at, 0x80);
                for (word, want) in &truth {
                    match seqs(&r, word) {
                        Ok(got) => {
                            assert_eq!(&got, want, "{word} with byte {at} of {name} flipped")
                        }
                        Err(e) => assert!(
                            e.to_string().contains("search index file"),
                            "{word} {at} {name}: {e}"
                        ),
                    }
                }
                poke(&path, at, 0x80);
                tried += 1;
            }
        }
        assert!(tried > 100, "{tried}");
        assert_eq!(seqs(&r, "alpha").unwrap(), vec![1]);
    }

    /// The positions file of a segment fails its seal before a reader loads it. tantivy
    /// loads a segment without a positions file it cannot open; the load still fails,
    /// naming the file.
    #[test]
    fn a_refused_positions_file_fails_the_load_naming_it() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "alpha")).unwrap();
        w.finish().unwrap();
        let pos = f.file_ending(".pos");
        poke(&pos, 0, 0x80);
        let r = BlindIndexReader::open(&f.index, &f.master, &f.id);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("search index file") && e.contains(".pos"),
                    "open: {e}"
                );
                return;
            }
        };
        match seqs(&r, "alpha") {
            Ok(got) => panic!("search answered {got:?} over a refused positions file"),
            Err(e) => assert!(e.to_string().contains(".pos"), "search error: {e}"),
        }
    }

    /// A segment's positions file deleted: tantivy would open the segment without it.
    /// The search fails naming it, `verify`'s reading reports it, and the writer
    /// rebuilds the index.
    #[test]
    fn a_deleted_positions_file_is_found_by_search_verify_and_the_writer() {
        let f = Fixture::new();
        let mut w = f.writer();
        w.add(&appended(1, 1, "alpha")).unwrap();
        w.finish().unwrap();
        let pos = f.file_ending(".pos");
        std::fs::remove_file(&pos).unwrap();
        let name = pos.file_name().unwrap().to_string_lossy().into_owned();
        let search = match BlindIndexReader::open(&f.index, &f.master, &f.id) {
            Ok(r) => seqs(&r, "alpha").map(|_| ()),
            Err(e) => Err(e),
        };
        let search = search.unwrap_err().to_string();
        assert!(
            search.contains(&name) && search.contains("missing"),
            "{search}"
        );
        let cov = coverage(&f.index, &f.master, &f.id, true)
            .unwrap_err()
            .to_string();
        assert!(cov.contains(&name) && cov.contains("missing"), "{cov}");
        let w = BlindIndexWriter::open(&f.index, &f.master, f.id).unwrap();
        let found = w.found().unwrap_err().to_string();
        assert!(
            found.contains(&name) && found.contains("missing"),
            "{found}"
        );
    }
}
