//! Offline verification of an export directory with only the public key.
//!
//! Checks, each problem located by file, row (0-based Parquet row, or 1-based
//! line of `chain.jsonl`) and seq: the manifest signature; every listed
//! file's SHA-256 and size, and that no file is unlisted; every row (schema,
//! canonical encoding decodes, each shown column equals what the canonical
//! record says, the record hash recomputes, the row is inside the stated time
//! range and matches the stated query, seqs ascend); and the chain: walking
//! seqs in order, taking each leaf from a row or from `chain.jsonl`, every
//! interval must reach a checkpoint whose Ed25519 signature verifies.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use super::chain::ProofLine;
use super::filter::Filter;
use super::hex;
use super::manifest::{self, Manifest, PartEntry};
use super::parquet_out::COLUMNS;
use super::row::Shown;
use crate::query;
use crate::record::{Record, RecordSeq};
use crate::segment::{self, Hash, SegmentHeader, HEADER_LEN, SALT_LEN};
use crate::time::Timestamp;

/// The manifest is small (it lists files, not records); a larger one is hostile.
const MAX_MANIFEST: u64 = 64 << 20;
/// No legitimate chain line comes near this.
const MAX_LINE: u64 = 64 << 10;

/// One thing wrong with an export, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportProblem {
    /// Path relative to the export directory.
    pub file: Option<String>,
    /// 0-based row of a Parquet file, or 1-based line of `chain.jsonl`.
    pub row: Option<u64>,
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for ExportProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(r) = self.row {
            let unit = if self.file.as_deref() == Some(manifest::CHAIN) {
                "line"
            } else {
                "row"
            };
            write!(f, "{unit} {r}: ")?;
        }
        if let Some(s) = self.seq {
            write!(f, "seq {s}: ")?;
        }
        write!(f, "{}", self.what)
    }
}

/// The outcome of [`verify_export`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    /// Rows read from the Parquet files.
    pub records: u64,
    /// Rows whose chain interval reached a valid signed checkpoint.
    pub proven: u64,
    pub files: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records between the first and last exported seq that are not exported
    /// (not selected, or shredded), whether or not the chain file gives their leaves.
    /// 0 means the seq range is complete.
    pub withheld_in_range: u64,
    /// Of those, the records of segments the signed manifest declares shredded.
    pub shredded_in_range: u64,
    /// The shredded segments the manifest declares, each with its shred record's seq.
    pub shredded: Vec<manifest::ShreddedSegment>,
    pub problems: Vec<ExportProblem>,
}

impl ExportReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(
        &mut self,
        file: Option<&str>,
        row: Option<u64>,
        seq: Option<u64>,
        what: impl Into<String>,
    ) {
        self.problems.push(ExportProblem {
            file: file.map(str::to_string),
            row,
            seq,
            what: what.into(),
        });
    }
}

/// Verifies the export in `dir` against the archive's public key.
pub fn verify_export(dir: &Path, public_key: &VerifyingKey) -> ExportReport {
    let mut r = ExportReport::default();
    let Some(m) = check_manifest(dir, public_key, &mut r) else {
        return r;
    };
    check_files(dir, &m, &mut r);
    let mut rows = Rows::new(dir, &m);
    check_chain(dir, &m, public_key, &mut rows, &mut r);
    check_range(&m, &mut r);
    r
}

/// Counts what the seq range between the first and last row lacks. The rows' seqs are
/// proven (each row's leaf is hashed into a signed head), so whatever the chain file
/// leaves out between them (a leaf line, or a whole interval or segment it skips) is
/// counted: an export without a query and without shredded segments lacks nothing.
/// Shredded segments the manifest declares must lie in what is lacking.
fn check_range(m: &Manifest, r: &mut ExportReport) {
    let (Some(first), Some(last)) = (r.first_seq, r.last_seq) else {
        return;
    };
    r.withheld_in_range = (last - first + 1).saturating_sub(r.records);
    for s in &m.shredded {
        if s.first_seq > s.last_seq {
            r.problem(
                Some(manifest::MANIFEST),
                None,
                Some(s.first_seq),
                format!(
                    "shredded segment {} is declared to end at seq {} before it begins",
                    s.segment, s.last_seq
                ),
            );
            continue;
        }
        let (a, b) = (s.first_seq.max(first), s.last_seq.min(last));
        if a <= b {
            r.shredded_in_range += b - a + 1;
        }
    }
    // Without a query every record in the range is exported, and a record's time never
    // goes back: what lies between the first and last row is in the range too, so only
    // a declared shredded segment may be missing there.
    if m.query.is_none() && r.withheld_in_range > r.shredded_in_range {
        r.problem(
            Some(manifest::MANIFEST),
            None,
            None,
            format!(
                "the export has no query, yet {} record(s) between seq {first} and {last} are \
                 neither exported nor in a shredded segment the manifest declares",
                r.withheld_in_range - r.shredded_in_range
            ),
        );
    }
    if r.shredded_in_range > r.withheld_in_range {
        r.problem(
            Some(manifest::MANIFEST),
            None,
            None,
            format!(
                "the manifest declares {} shredded record(s) between seq {first} and {last}, \
                 but only {} of that range are not exported",
                r.shredded_in_range, r.withheld_in_range
            ),
        );
    }
    r.shredded = m.shredded.clone();
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut b = Vec::new();
    File::open(path)?.take(cap + 1).read_to_end(&mut b)?;
    if b.len() as u64 > cap {
        return Err(std::io::Error::other("file too large"));
    }
    Ok(b)
}

fn check_manifest(dir: &Path, key: &VerifyingKey, r: &mut ExportReport) -> Option<Manifest> {
    let mbytes = match read_capped(&dir.join(manifest::MANIFEST), MAX_MANIFEST) {
        Ok(b) => b,
        Err(e) => {
            r.problem(
                Some(manifest::MANIFEST),
                None,
                None,
                format!("cannot read: {e}"),
            );
            return None;
        }
    };
    match read_capped(&dir.join(manifest::SIGNATURE), 1024) {
        Ok(sig) => {
            let sig = String::from_utf8_lossy(&sig);
            if !manifest::signature_valid(key, &mbytes, &sig) {
                r.problem(
                    Some(manifest::SIGNATURE),
                    None,
                    None,
                    "signature does not verify over manifest.json with this public key",
                );
            }
        }
        Err(e) => r.problem(
            Some(manifest::SIGNATURE),
            None,
            None,
            format!("cannot read: {e}"),
        ),
    }
    let m: Manifest = match serde_json::from_slice(&mbytes) {
        Ok(m) => m,
        Err(e) => {
            r.problem(
                Some(manifest::MANIFEST),
                None,
                None,
                format!("not a valid manifest: {e}"),
            );
            return None;
        }
    };
    if m.format != manifest::FORMAT {
        r.problem(
            Some(manifest::MANIFEST),
            None,
            None,
            format!("unsupported format {:?}", m.format),
        );
        return None;
    }
    if hex::decode::<16>(&m.archive_id).is_none() {
        r.problem(
            Some(manifest::MANIFEST),
            None,
            None,
            "archive_id is not 16 bytes of hex",
        );
    }
    Some(m)
}

fn check_files(dir: &Path, m: &Manifest, r: &mut ExportReport) {
    let mut listed = HashSet::new();
    for f in &m.files {
        r.files += 1;
        if !manifest::safe_relative(&f.path)
            || f.path == manifest::MANIFEST
            || f.path == manifest::SIGNATURE
        {
            r.problem(
                Some(manifest::MANIFEST),
                None,
                None,
                format!("file entry {:?} is not an allowed path", f.path),
            );
            continue;
        }
        if !listed.insert(f.path.clone()) {
            r.problem(
                Some(manifest::MANIFEST),
                None,
                None,
                format!("file {:?} listed twice", f.path),
            );
            continue;
        }
        match manifest::hash_file(&dir.join(&f.path)) {
            Ok((h, n)) => {
                if hex::encode(&h) != f.sha256 || n != f.bytes {
                    r.problem(
                        Some(&f.path),
                        None,
                        None,
                        format!(
                            "SHA-256 {} ({n} bytes) differs from the manifest's {} ({} bytes)",
                            hex::encode(&h),
                            f.sha256,
                            f.bytes
                        ),
                    );
                }
            }
            Err(e) => r.problem(Some(&f.path), None, None, format!("cannot read: {e}")),
        }
    }
    for p in m
        .parquet
        .iter()
        .map(|p| &p.path)
        .chain(std::iter::once(&manifest::CHAIN.to_string()))
    {
        if !listed.contains(p.as_str()) {
            r.problem(
                Some(manifest::MANIFEST),
                None,
                None,
                format!("{p:?} is not in the signed file list"),
            );
        }
    }
    // Walk at most two levels (the layout has no deeper directories).
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0u8)];
    while let Some((d, prefix, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                if depth < 1 {
                    stack.push((e.path(), format!("{name}/"), depth + 1));
                } else {
                    r.problem(Some(&name), None, None, "unexpected directory");
                }
            } else if name != manifest::MANIFEST
                && name != manifest::SIGNATURE
                && !listed.contains(&name)
            {
                r.problem(
                    Some(&name),
                    None,
                    None,
                    "file is not listed in the manifest",
                );
            }
        }
    }
}

/// A row as the chain needs it.
struct RowItem {
    file: String,
    row: u64,
    seq: u64,
    leaf: Hash,
}

/// All rows of all parts, in manifest order, checked one by one.
struct Rows<'a> {
    dir: &'a Path,
    parts: std::slice::Iter<'a, PartEntry>,
    current: Option<(
        PartEntry,
        parquet::record::reader::RowIter<'static>,
        u64,
        Option<u64>,
    )>,
    peeked: Option<RowItem>,
    filter: Option<Filter>,
    since: Option<i64>,
    until: Option<i64>,
    prev_seq: Option<u64>,
}

impl<'a> Rows<'a> {
    fn new(dir: &'a Path, m: &'a Manifest) -> Rows<'a> {
        let filter = match &m.query {
            Some(q) => query::parse(q)
                .ok()
                .map(|q| Filter::new(Some(q), None, None)),
            None => None,
        };
        Rows {
            dir,
            parts: m.parquet.iter(),
            current: None,
            peeked: None,
            filter,
            since: m.since_ms,
            until: m.until_ms,
            prev_seq: None,
        }
    }

    fn open_next(&mut self, r: &mut ExportReport) -> bool {
        loop {
            let Some(p) = self.parts.next() else {
                return false;
            };
            if !manifest::safe_relative(&p.path) {
                r.problem(
                    Some(manifest::MANIFEST),
                    None,
                    None,
                    format!("part {:?} is not an allowed path", p.path),
                );
                continue;
            }
            let reader = match File::open(self.dir.join(&p.path))
                .map_err(|e| e.to_string())
                .and_then(|f| SerializedFileReader::new(f).map_err(|e| e.to_string()))
            {
                Ok(rd) => rd,
                Err(e) => {
                    r.problem(
                        Some(&p.path),
                        None,
                        None,
                        format!("cannot read Parquet: {e}"),
                    );
                    continue;
                }
            };
            let names: Vec<String> = reader
                .metadata()
                .file_metadata()
                .schema()
                .get_fields()
                .iter()
                .map(|f| f.name().to_string())
                .collect();
            // Parts written before the `occupant` column still verify.
            let v2 = COLUMNS
                .get(..super::parquet_out::COLUMNS_V2)
                .unwrap_or(&COLUMNS);
            let known = names.iter().map(String::as_str).eq(COLUMNS.iter().copied())
                || names.iter().map(String::as_str).eq(v2.iter().copied());
            if !known {
                r.problem(
                    Some(&p.path),
                    None,
                    None,
                    format!("schema columns {names:?} are not the export schema"),
                );
                continue;
            }
            self.current = Some((p.clone(), reader.into_iter(), 0, None));
            return true;
        }
    }

    fn peek(&mut self, r: &mut ExportReport) -> Option<&RowItem> {
        if self.peeked.is_none() {
            self.peeked = self.read(r);
        }
        self.peeked.as_ref()
    }

    fn take(&mut self, r: &mut ExportReport) -> Option<RowItem> {
        self.peek(r);
        self.peeked.take()
    }

    fn read(&mut self, r: &mut ExportReport) -> Option<RowItem> {
        loop {
            if self.current.is_none() && !self.open_next(r) {
                return None;
            }
            let (part, iter, n, last) = self.current.as_mut()?;
            let file = part.path.clone();
            match iter.next() {
                None => {
                    if *n != part.rows || (*n > 0 && (*last != Some(part.last_seq))) {
                        r.problem(
                            Some(&file),
                            None,
                            None,
                            format!("file has {n} rows ending at seq {:?}; the manifest says {} rows, seqs {}..={}", last, part.rows, part.first_seq, part.last_seq),
                        );
                    }
                    self.current = None;
                }
                Some(Err(e)) => {
                    r.problem(Some(&file), Some(*n), None, format!("cannot read row: {e}"));
                    self.current = None;
                }
                Some(Ok(row)) => {
                    let i = *n;
                    *n += 1;
                    let first = i == 0;
                    match check_row(&row, self.filter.as_ref(), self.since, self.until) {
                        Ok((seq, leaf, issues)) => {
                            if first && seq != part.first_seq {
                                r.problem(
                                    Some(&file),
                                    Some(i),
                                    Some(seq),
                                    format!("first row should have seq {}", part.first_seq),
                                );
                            }
                            *last = Some(seq);
                            for what in issues {
                                r.problem(Some(&file), Some(i), Some(seq), what);
                            }
                            r.records += 1;
                            if let Some(p) = self.prev_seq.filter(|&p| seq <= p) {
                                r.problem(
                                    Some(&file),
                                    Some(i),
                                    Some(seq),
                                    format!("rows out of order: comes after seq {p}"),
                                );
                            }
                            self.prev_seq = Some(seq);
                            r.first_seq = Some(r.first_seq.map_or(seq, |f| f.min(seq)));
                            r.last_seq = Some(r.last_seq.map_or(seq, |l| l.max(seq)));
                            return Some(RowItem {
                                file,
                                row: i,
                                seq,
                                leaf,
                            });
                        }
                        Err(what) => r.problem(Some(&file), Some(i), None, what),
                    }
                }
            }
        }
    }
}

pub(super) fn col<'r>(fields: &'r [&'r Field], name: &str) -> Option<&'r Field> {
    let i = COLUMNS.iter().position(|c| *c == name)?;
    fields.get(i).copied()
}

fn opt_str(f: Option<&Field>) -> Result<Option<String>, ()> {
    match f {
        Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s.clone())),
        _ => Err(()),
    }
}

pub(super) fn bytes<const N: usize>(f: Option<&Field>) -> Option<[u8; N]> {
    match f {
        Some(Field::Bytes(b)) => b.data().try_into().ok(),
        _ => None,
    }
}

/// Checks one row; returns its seq, its leaf and what is wrong with it.
fn check_row(
    row: &Row,
    filter: Option<&Filter>,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<(u64, Hash, Vec<String>), String> {
    let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
    let seq = match col(&fields, "seq") {
        Some(Field::Long(s)) => u64::try_from(*s).map_err(|_| "negative seq".to_string())?,
        _ => return Err("seq column is not an integer".into()),
    };
    let record_hash =
        bytes::<32>(col(&fields, "record_hash")).ok_or("record_hash is not 32 bytes")?;
    let cth =
        bytes::<32>(col(&fields, "ciphertext_hash")).ok_or("ciphertext_hash is not 32 bytes")?;
    let salt = bytes::<SALT_LEN>(col(&fields, "salt")).ok_or("salt is not 16 bytes")?;
    let canonical = match col(&fields, "canonical") {
        Some(Field::Bytes(b)) => b.data().to_vec(),
        _ => return Err("canonical is not bytes".into()),
    };
    let mut issues = Vec::new();
    let recomputed = segment::content_hash(&salt, &canonical);
    if recomputed != record_hash {
        issues.push(
            "record_hash does not match SHA-256(\"custos-record-v1\" ‖ salt ‖ canonical)"
                .to_string(),
        );
    }
    // The chain decides with the recomputed hash: what the row shows must be
    // what the signed archive holds.
    let leaf = segment::leaf(seq, &recomputed, &cth);
    let rec = match Record::decode(&canonical) {
        Ok(rec) => rec,
        Err(e) => {
            issues.push(format!("canonical encoding does not decode: {e}"));
            return Ok((seq, leaf, issues));
        }
    };
    if rec.seq != RecordSeq(seq) {
        issues.push(format!("canonical record has seq {}", rec.seq.0));
    }
    let want = Shown::from_record(&rec);
    let shown = shown_of(&fields).map_err(|c| format!("column {c} has the wrong type"))?;
    let differs = differing_columns(&shown, &want);
    if !differs.is_empty() {
        issues.push(format!(
            "column(s) {} differ from the canonical record",
            differs.join(", ")
        ));
    }
    if since.is_some_and(|s| rec.time.0 < s) || until.is_some_and(|u| rec.time.0 >= u) {
        issues.push(format!(
            "time {} is outside the export's time range",
            Timestamp(rec.time.0)
        ));
    }
    if let Some(f) = filter {
        if !f.selects(&rec) {
            issues.push("record does not match the export's query".into());
        }
    }
    Ok((seq, leaf, issues))
}

pub(super) fn shown_of(fields: &[&Field]) -> Result<Shown, &'static str> {
    let s = |name: &'static str| opt_str(col(fields, name)).map_err(|_| name);
    let req = |name: &'static str| s(name)?.ok_or(name);
    let time = match col(fields, "time") {
        Some(Field::TimestampMillis(t)) => *t,
        _ => return Err("time"),
    };
    let seq = match col(fields, "seq") {
        Some(Field::Long(v)) => u64::try_from(*v).map_err(|_| "seq")?,
        _ => return Err("seq"),
    };
    let rules = match col(fields, "rules") {
        Some(Field::ListInternal(l)) => l
            .elements()
            .iter()
            .map(|e| match e {
                Field::Str(x) => Ok(x.clone()),
                _ => Err("rules"),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("rules"),
    };
    Ok(Shown {
        seq,
        time,
        kind: req("kind")?,
        direction: s("direction")?,
        from: s("from")?,
        to: s("to")?,
        stanza_type: s("type")?,
        thread: s("thread")?,
        subject: s("subject")?,
        body: s("body")?,
        delivered_body: s("delivered_body")?,
        action: s("action")?,
        rules,
        session: s("session")?,
        message_id: s("message_id")?,
        origin_id: s("origin_id")?,
        stanza_id: s("stanza_id")?,
        severity: s("severity")?,
        e2ee: s("e2ee")?,
        logical_message: s("logical_message")?,
        delivered_logical_message: s("delivered_logical_message")?,
        via: s("via")?,
        leg: s("leg")?,
        account: s("account")?,
        claimed_from: s("claimed_from")?,
        would_action: s("would_action")?,
        retention_class: s("retention_class")?,
        edit: s("edit")?,
        extra: s("extra")?,
        event: s("event")?,
        // Absent from a part written before the column existed.
        occupant: match col(fields, "occupant") {
            None => None,
            f => opt_str(f).map_err(|_| "occupant")?,
        },
        files: match col(fields, "files") {
            None => None,
            f => opt_str(f).map_err(|_| "files")?,
        },
        transcript: req("transcript")?,
        node: None,
    })
}

fn differing_columns(a: &Shown, b: &Shown) -> Vec<&'static str> {
    let mut d = Vec::new();
    let mut cmp = |name, x: bool| {
        if !x {
            d.push(name)
        }
    };
    cmp("seq", a.seq == b.seq);
    cmp("time", a.time == b.time);
    cmp("kind", a.kind == b.kind);
    cmp("direction", a.direction == b.direction);
    cmp("from", a.from == b.from);
    cmp("to", a.to == b.to);
    cmp("type", a.stanza_type == b.stanza_type);
    cmp("thread", a.thread == b.thread);
    cmp("subject", a.subject == b.subject);
    cmp("body", a.body == b.body);
    cmp("delivered_body", a.delivered_body == b.delivered_body);
    cmp("action", a.action == b.action);
    cmp("rules", a.rules == b.rules);
    cmp("session", a.session == b.session);
    cmp("message_id", a.message_id == b.message_id);
    cmp("origin_id", a.origin_id == b.origin_id);
    cmp("stanza_id", a.stanza_id == b.stanza_id);
    cmp("severity", a.severity == b.severity);
    cmp("e2ee", a.e2ee == b.e2ee);
    cmp("logical_message", a.logical_message == b.logical_message);
    cmp(
        "delivered_logical_message",
        a.delivered_logical_message == b.delivered_logical_message,
    );
    cmp("via", a.via == b.via);
    cmp("leg", a.leg == b.leg);
    cmp("account", a.account == b.account);
    cmp("claimed_from", a.claimed_from == b.claimed_from);
    cmp("would_action", a.would_action == b.would_action);
    cmp("retention_class", a.retention_class == b.retention_class);
    cmp("edit", a.edit == b.edit);
    cmp("extra", a.extra == b.extra);
    cmp("event", a.event == b.event);
    cmp("occupant", a.occupant == b.occupant);
    cmp("files", a.files == b.files);
    cmp("transcript", a.transcript == b.transcript);
    d
}

/// The verifier's position in the chain.
struct Walk {
    header: Option<[u8; HEADER_LEN]>,
    /// (seq, head) after the last applied leaf; `None` before any interval.
    state: Option<(u64, Hash)>,
    /// The interval cannot be recomputed (a seq is missing); resynchronise at
    /// the next checkpoint.
    broken: bool,
    /// Rows applied since the last confirming checkpoint: (count, first seq).
    open: (u64, Option<u64>),
}

const CHAIN: Option<&str> = Some(manifest::CHAIN);

fn check_chain(
    dir: &Path,
    m: &Manifest,
    key: &VerifyingKey,
    rows: &mut Rows<'_>,
    r: &mut ExportReport,
) {
    let archive_id = hex::decode::<16>(&m.archive_id);
    let file = match File::open(dir.join(manifest::CHAIN)) {
        Ok(f) => f,
        Err(e) => {
            r.problem(CHAIN, None, None, format!("cannot read: {e}"));
            return;
        }
    };
    let mut input = BufReader::new(file);
    let mut w = Walk {
        header: None,
        state: None,
        broken: false,
        open: (0, None),
    };
    let mut line_no = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut input).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                r.problem(CHAIN, Some(line_no + 1), None, format!("cannot read: {e}"));
                break;
            }
        }
        line_no += 1;
        let at = Some(line_no);
        let parsed: ProofLine = match serde_json::from_str(line.trim_end()) {
            Ok(p) => p,
            Err(e) => {
                r.problem(CHAIN, at, None, format!("not a chain line: {e}"));
                w.broken = true;
                continue;
            }
        };
        match parsed {
            ProofLine::Segment { segment, header } => {
                close_open(
                    &mut w,
                    r,
                    "no checkpoint closes the interval before this segment",
                );
                let h = hex::decode::<HEADER_LEN>(&header);
                match h.as_ref().map(|h| SegmentHeader::decode(h)) {
                    Some(Ok(sh)) => {
                        if Some(sh.archive_id) != archive_id {
                            r.problem(CHAIN, at, None, "segment header belongs to another archive");
                        }
                        if sh.segment != segment {
                            r.problem(
                                CHAIN,
                                at,
                                None,
                                format!("header is of segment {}, line says {segment}", sh.segment),
                            );
                        }
                        w.header = h;
                        w.state = Some((sh.first_seq.saturating_sub(1), sh.prev_head));
                        w.broken = false;
                    }
                    _ => {
                        r.problem(
                            CHAIN,
                            at,
                            None,
                            "segment header is not a valid 82-byte header",
                        );
                        w.header = None;
                        w.broken = true;
                    }
                }
            }
            ProofLine::Resume(cpj) => {
                close_open(
                    &mut w,
                    r,
                    "no checkpoint closes the interval before this resume",
                );
                match (cpj.to_checkpoint(), &w.header) {
                    (Some(cp), Some(h)) => {
                        if !segment::checkpoint_valid(key, h, &cp) {
                            // Starting from an unsigned head is still sound (the end
                            // checkpoint fixes every leaf), but a bad one is reported.
                            r.problem(
                                CHAIN,
                                at,
                                Some(cp.seq),
                                "resume checkpoint signature does not verify",
                            );
                        }
                        w.state = Some((cp.seq, cp.head));
                        w.broken = false;
                    }
                    _ => {
                        r.problem(
                            CHAIN,
                            at,
                            Some(cpj.seq),
                            "resume line without a segment header or with bad hex",
                        );
                        w.broken = true;
                    }
                }
            }
            ProofLine::Leaf { seq, leaf } => {
                consume_rows(&mut w, rows, r, seq);
                if w.broken {
                    continue;
                }
                let Some((s, head)) = w.state else {
                    r.problem(CHAIN, at, Some(seq), "leaf before any segment line");
                    w.broken = true;
                    continue;
                };
                match hex::decode::<32>(&leaf) {
                    Some(l) if seq == s + 1 => w.state = Some((seq, segment::next_head(&head, &l))),
                    Some(_) => {
                        r.problem(
                            CHAIN,
                            at,
                            Some(seq),
                            format!(
                                "seq {} is missing: neither a row nor a chain leaf gives it",
                                s + 1
                            ),
                        );
                        w.broken = true;
                    }
                    None => {
                        r.problem(CHAIN, at, Some(seq), "leaf is not 32 bytes of hex");
                        w.broken = true;
                    }
                }
            }
            ProofLine::Checkpoint(cpj) => {
                consume_rows(&mut w, rows, r, cpj.seq.saturating_add(1));
                let (Some(cp), Some(h)) = (cpj.to_checkpoint(), w.header) else {
                    r.problem(
                        CHAIN,
                        at,
                        Some(cpj.seq),
                        "checkpoint line without a segment header or with bad hex",
                    );
                    close_open(&mut w, r, "its checkpoint line is unreadable");
                    w.broken = true;
                    continue;
                };
                let signed = segment::checkpoint_valid(key, &h, &cp);
                if !signed {
                    r.problem(
                        CHAIN,
                        at,
                        Some(cp.seq),
                        "checkpoint signature does not verify with this public key",
                    );
                }
                let reached = !w.broken && w.state == Some((cp.seq, cp.head));
                if !w.broken && !reached {
                    r.problem(
                        CHAIN,
                        at,
                        Some(cp.seq),
                        "recomputed chain head does not match the signed checkpoint",
                    );
                }
                if signed && reached {
                    r.proven += w.open.0;
                    r.checkpoints += 1;
                    w.open = (0, None);
                } else {
                    close_open(&mut w, r, "the chain does not reach a valid checkpoint");
                }
                w.state = Some((cp.seq, cp.head));
                w.broken = false;
            }
        }
    }
    close_open(&mut w, r, "no checkpoint closes the last interval");
    while let Some(row) = rows.take(r) {
        r.problem(
            Some(&row.file),
            Some(row.row),
            Some(row.seq),
            "row is not covered by any checkpoint in chain.jsonl",
        );
    }
}

fn consume_rows(w: &mut Walk, rows: &mut Rows<'_>, r: &mut ExportReport, below: u64) {
    // Bounded: every iteration takes one row from a finite file set.
    while rows.peek(r).is_some_and(|row| row.seq < below) {
        let Some(row) = rows.take(r) else { break };
        let place = (Some(row.file.as_str()), Some(row.row), Some(row.seq));
        let Some((s, head)) = w.state else {
            r.problem(
                place.0,
                place.1,
                place.2,
                "row lies before any chain interval",
            );
            continue;
        };
        if w.broken {
            w.open.0 += 1;
            w.open.1.get_or_insert(row.seq);
            continue;
        }
        if row.seq <= s {
            r.problem(
                place.0,
                place.1,
                place.2,
                format!("seq out of order or repeated: the chain is already at seq {s}"),
            );
            continue;
        }
        w.open.0 += 1;
        w.open.1.get_or_insert(row.seq);
        if row.seq != s + 1 {
            r.problem(
                place.0,
                place.1,
                place.2,
                format!(
                    "seq {} is missing: neither a row nor a chain leaf gives it",
                    s + 1
                ),
            );
            w.broken = true;
            continue;
        }
        w.state = Some((row.seq, segment::next_head(&head, &row.leaf)));
    }
}

fn close_open(w: &mut Walk, r: &mut ExportReport, why: &str) {
    if let (n @ 1.., Some(first)) = w.open {
        r.problem(
            CHAIN,
            None,
            Some(first),
            format!("{n} row(s) from seq {first} are not proven: {why}"),
        );
    }
    w.open = (0, None);
}
