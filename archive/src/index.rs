//! The blind full-text index (tantivy).
//!
//! Promise 3 says the index must not become a plaintext copy of the archive,
//! so no plaintext reaches tantivy: every word token and every field value is
//! replaced by `hex(HMAC-SHA256(blind key, field-tag ‖ 0 ‖ value))[..24]`
//! (96 bits). Queries hash their terms the same way. Word positions are kept,
//! so phrase queries work. Stored per document: only seq, segment and offset
//! (to fetch and decrypt the record from the log) and a time fast field.
//! Leakage (equal tokens hash equally, term frequencies, document lengths,
//! times) is documented in docs/archive-format.md.
//!
//! ```text
//! Appended record ─▶ tokenize ─▶ HMAC each token ─▶ tantivy doc {seq, seg, off, time, hashes}
//! query ─▶ parse ─▶ HMAC each term ─▶ tantivy query ─▶ (seq, seg, off) ─▶ log ─▶ decrypt
//! ```

use std::ops::Bound;
use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, PhraseQuery, Query as TQuery, RangeQuery, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::{Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term};
use zeroize::Zeroizing;

use crate::keys::{hmac_sha256, MasterKey};
use crate::log::Appended;
use crate::query::{self, Clause, JidField, Query};
use crate::record::NewRecord;

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
    #[error("the search index is missing")]
    Missing,
    #[error("search index files fail their checksums: {0}")]
    Damaged(String),
}

/// The key that blinds index terms.
pub struct BlindKey(Zeroizing<[u8; 32]>);

impl BlindKey {
    pub fn derive(master: &MasterKey, archive_id: &[u8; 16]) -> BlindKey {
        BlindKey(master.derive("custos-blind-index-v1", archive_id))
    }

    /// The blinded form of `value` in the namespace `tag`.
    pub fn term(&self, tag: &str, value: &str) -> String {
        let mac = hmac_sha256(self.0.as_ref(), &[tag.as_bytes(), &[0], value.as_bytes()]);
        mac.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Clone, Copy)]
struct Fields {
    seq: Field,
    seg: Field,
    off: Field,
    time: Field,
    text: Field,
    from: Field,
    to: Field,
    with: Field,
    direction: Field,
    stanza_type: Field,
    action: Field,
    rule: Field,
    /// Logical-message identities (the record's own and, when redacted, that of
    /// the content delivered), so every copy of a message is found together.
    msg: Field,
    via: Field,
    /// The proven JID of the session whose stream carried the copy.
    account: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        seq: b.add_u64_field("seq", INDEXED | STORED | FAST),
        seg: b.add_u64_field("seg", STORED),
        off: b.add_u64_field("off", STORED),
        time: b.add_i64_field("time", INDEXED | FAST),
        text: b.add_text_field("text", TEXT),
        from: b.add_text_field("from", STRING),
        to: b.add_text_field("to", STRING),
        with: b.add_text_field("with", STRING),
        direction: b.add_text_field("direction", STRING),
        stanza_type: b.add_text_field("type", STRING),
        action: b.add_text_field("action", STRING),
        rule: b.add_text_field("rule", STRING),
        msg: b.add_text_field("msg", STRING),
        via: b.add_text_field("via", STRING),
        account: b.add_text_field("account", STRING),
    };
    (b.build(), f)
}

fn payload(archive_id: &[u8; 16], seq: u64) -> String {
    let id: String = archive_id.iter().map(|b| format!("{b:02x}")).collect();
    format!("custos-index-v1 {id} {seq}")
}

fn parse_payload(p: &str, archive_id: &[u8; 16]) -> Result<u64, IndexError> {
    let mut parts = p.split(' ');
    let id: String = archive_id.iter().map(|b| format!("{b:02x}")).collect();
    match (
        parts.next(),
        parts.next(),
        parts.next().and_then(|s| s.parse().ok()),
    ) {
        (Some("custos-index-v1"), Some(pid), Some(seq)) if pid == id => Ok(seq),
        _ => Err(IndexError::Foreign),
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
    archive_id: [u8; 16],
    last_seq: u64,
    dirty: bool,
}

fn open_or_create(dir: &Path) -> Result<Index, IndexError> {
    std::fs::create_dir_all(dir)?;
    let (schema, _) = schema();
    let mmap = tantivy::directory::MmapDirectory::open(dir).map_err(tantivy::TantivyError::from)?;
    Ok(Index::open_or_create(mmap, schema)?)
}

/// What an index says it covers, read without opening a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Every record with seq ≤ this is in the last commit.
    pub through: u64,
    /// Documents (one per message record) in the last commit.
    pub docs: u64,
}

/// Reads the coverage of the index in `dir` for archive `archive_id`. An index that does
/// not exist, belongs to another archive or cannot be opened is an error.
pub fn coverage(dir: &Path, archive_id: &[u8; 16]) -> Result<Coverage, IndexError> {
    if !dir.join("meta.json").exists() {
        return Err(IndexError::Missing);
    }
    let mmap = tantivy::directory::MmapDirectory::open(dir).map_err(tantivy::TantivyError::from)?;
    let index = Index::open(mmap)?;
    let through = match index.load_metas()?.payload {
        Some(p) => parse_payload(&p, archive_id)?,
        None => 0,
    };
    let damaged = index.validate_checksum()?;
    if !damaged.is_empty() {
        let mut names: Vec<String> = damaged.iter().map(|p| p.display().to_string()).collect();
        names.sort();
        return Err(IndexError::Damaged(names.join(", ")));
    }
    let reader = index.reader()?;
    let docs = reader.searcher().num_docs();
    Ok(Coverage { through, docs })
}

/// The writer's open: an index made with another schema (an older Custos) is
/// derived data, so it is emptied and rebuilt from the log rather than refused.
fn open_or_rebuild(dir: &Path) -> Result<Index, IndexError> {
    match open_or_create(dir) {
        Err(IndexError::Tantivy(tantivy::TantivyError::SchemaError(_))) => {
            std::fs::remove_dir_all(dir)?;
            open_or_create(dir)
        }
        other => other,
    }
}

impl BlindIndexWriter {
    pub fn open(
        dir: &Path,
        key: BlindKey,
        archive_id: [u8; 16],
    ) -> Result<BlindIndexWriter, IndexError> {
        let index = open_or_rebuild(dir)?;
        let (_, fields) = schema();
        let last_seq = match index.load_metas()?.payload {
            Some(p) => parse_payload(&p, &archive_id)?,
            None => 0,
        };
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        Ok(BlindIndexWriter {
            writer,
            index,
            fields,
            key,
            archive_id,
            last_seq,
            dirty: false,
        })
    }

    /// Every record with seq ≤ this is in the last commit.
    pub fn indexed_through(&self) -> u64 {
        self.last_seq
    }

    /// Removes every document (reindex starts from nothing).
    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.writer.delete_all_documents()?;
        self.last_seq = 0;
        self.dirty = true;
        Ok(())
    }

    /// Adds a record. Events are not indexed but still advance the
    /// indexed-through mark.
    pub fn add(&mut self, a: &Appended) -> Result<(), IndexError> {
        self.last_seq = self.last_seq.max(a.record.seq.0);
        self.dirty = true;
        let NewRecord::Message(m) = &a.record.content else {
            return Ok(());
        };
        let f = self.fields;
        let k = &self.key;
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.seq, a.record.seq.0);
        doc.add_u64(f.seg, a.segment);
        doc.add_u64(f.off, a.offset);
        doc.add_i64(f.time, a.record.time.0);
        let extra = m.capture.extra.iter().map(|t| &t.text);
        for text in [&m.subject, &m.body].into_iter().flatten().chain(extra) {
            let blinded: Vec<String> = query::tokenize(text)
                .iter()
                .map(|t| k.term("text", t))
                .collect();
            doc.add_text(f.text, blinded.join(" "));
        }
        for (field, jid) in [(f.from, &m.from), (f.to, &m.to)] {
            let full = query::normalize_jid(jid);
            let bare = query::bare_jid(&full).to_string();
            for v in if bare == full {
                vec![full]
            } else {
                vec![full, bare]
            } {
                let h = k.term("jid", &v);
                doc.add_text(field, &h);
                doc.add_text(f.with, &h);
            }
        }
        doc.add_text(f.direction, k.term("direction", m.direction.as_str()));
        doc.add_text(f.stanza_type, k.term("type", &m.stanza_type.to_lowercase()));
        doc.add_text(f.action, k.term("action", m.outcome.action.as_str()));
        for r in &m.outcome.rules {
            doc.add_text(f.rule, k.term("rule", r));
        }
        let c = &m.capture;
        for id in std::iter::once(&c.identity).chain(&c.delivered_identity) {
            doc.add_text(f.msg, k.term("msg", id));
        }
        doc.add_text(f.via, k.term("via", c.via.as_str()));
        let account = query::normalize_jid(&c.account);
        doc.add_text(f.account, k.term("jid", &account));
        let bare = query::bare_jid(&account);
        if bare != account {
            doc.add_text(f.account, k.term("jid", bare));
        }
        self.writer.add_document(doc)?;
        Ok(())
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Commits what was added; readers see it after their next reload.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        let mut pc = self.writer.prepare_commit()?;
        pc.set_payload(&payload(&self.archive_id, self.last_seq));
        pc.commit()?;
        self.dirty = false;
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
pub struct BlindIndexReader {
    reader: IndexReader,
    fields: Fields,
    key: BlindKey,
}

impl BlindIndexReader {
    pub fn open(dir: &Path, key: BlindKey) -> Result<BlindIndexReader, IndexError> {
        let index = open_or_create(dir)?;
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(BlindIndexReader {
            reader,
            fields,
            key,
        })
    }

    fn clause(&self, c: &Clause) -> Box<dyn TQuery> {
        let f = self.fields;
        let k = &self.key;
        let term = |field: Field, tag: &str, v: &str| -> Box<dyn TQuery> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, &k.term(tag, v)),
                IndexRecordOption::Basic,
            ))
        };
        match c {
            Clause::Text(words) if words.len() == 1 => {
                term(f.text, "text", words.first().map_or("", String::as_str))
            }
            Clause::Text(words) => Box::new(PhraseQuery::new(
                words
                    .iter()
                    .map(|w| Term::from_field_text(f.text, &k.term("text", w)))
                    .collect(),
            )),
            Clause::Jid(which, jid) => {
                let field = match which {
                    JidField::From => f.from,
                    JidField::To => f.to,
                    JidField::With => f.with,
                    JidField::Account => f.account,
                };
                term(field, "jid", jid)
            }
            Clause::Direction(d) => term(f.direction, "direction", d.as_str()),
            Clause::Type(t) => term(f.stanza_type, "type", t),
            Clause::Action(a) => term(f.action, "action", a.as_str()),
            Clause::Rule(r) => term(f.rule, "rule", r),
            Clause::Message(id) => term(f.msg, "msg", id),
            Clause::Via(v) => term(f.via, "via", v.as_str()),
            Clause::After(t) => Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_i64(f.time, t.0)),
                Bound::Unbounded,
            )),
            Clause::Before(t) => Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_i64(f.time, t.0)),
            )),
        }
    }

    /// The newest `limit` matches, newest first.
    pub fn search(&self, q: &Query, limit: usize) -> Result<Vec<Located>, IndexError> {
        self.reader.reload()?;
        let searcher = self.reader.searcher();
        let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
        if q.must.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        clauses.extend(q.must.iter().map(|c| (Occur::Must, self.clause(c))));
        clauses.extend(q.must_not.iter().map(|c| (Occur::MustNot, self.clause(c))));
        let query = BooleanQuery::new(clauses);
        let top = searcher.search(
            &query,
            &TopDocs::with_limit(limit.max(1)).order_by_fast_field::<u64>("seq", Order::Desc),
        )?;
        let mut out = Vec::with_capacity(top.len());
        for (_, addr) in top.into_iter().take(limit) {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let get = |field: Field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
            out.push(Located {
                seq: get(self.fields.seq),
                segment: get(self.fields.seg),
                offset: get(self.fields.off),
            });
        }
        Ok(out)
    }
}
