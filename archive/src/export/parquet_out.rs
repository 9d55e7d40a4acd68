//! The Parquet side of an export: the schema (documented, stable: see
//! `docs/export-format.md`), a column buffer for one row group, and a writer
//! that rolls to a new part file every `rows_per_file` rows.
//!
//! Written with the crate's low-level column API (no Arrow): rows are
//! buffered column by column and flushed as one row group when the buffer
//! reaches `row_group_rows` rows or `row_group_bytes` bytes, which is what
//! bounds memory. Compression is zstd level 3 on every column: bodies and
//! stanzas compress well, and pyarrow, DuckDB and Spark all read it.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{
    ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int64Type,
};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, Type};

use super::row::Shown;
use crate::segment::{Hash, SALT_LEN};

/// The schema, version 3 (version 1 lacked the capture columns, from
/// `logical_message` to `extra`; version 2 the last two, `occupant` and `files`). Column
/// order is part of the format.
pub(crate) const SCHEMA: &str = "
message custos_record_v3 {
  REQUIRED INT64 seq;
  REQUIRED INT64 time (TIMESTAMP(MILLIS,true));
  REQUIRED BINARY kind (STRING);
  OPTIONAL BINARY direction (STRING);
  OPTIONAL BINARY from (STRING);
  OPTIONAL BINARY to (STRING);
  OPTIONAL BINARY type (STRING);
  OPTIONAL BINARY thread (STRING);
  OPTIONAL BINARY subject (STRING);
  OPTIONAL BINARY body (STRING);
  OPTIONAL BINARY delivered_body (STRING);
  OPTIONAL BINARY action (STRING);
  REQUIRED GROUP rules (LIST) {
    REPEATED GROUP list {
      REQUIRED BINARY element (STRING);
    }
  }
  OPTIONAL BINARY session (STRING);
  OPTIONAL BINARY message_id (STRING);
  OPTIONAL BINARY origin_id (STRING);
  OPTIONAL BINARY stanza_id (STRING);
  OPTIONAL BINARY severity (STRING);
  OPTIONAL BINARY e2ee (STRING);
  OPTIONAL BINARY logical_message (STRING);
  OPTIONAL BINARY delivered_logical_message (STRING);
  OPTIONAL BINARY via (STRING);
  OPTIONAL BINARY leg (STRING);
  OPTIONAL BINARY account (STRING);
  OPTIONAL BINARY claimed_from (STRING);
  OPTIONAL BINARY would_action (STRING);
  OPTIONAL BINARY retention_class (STRING);
  OPTIONAL BINARY edit (JSON);
  OPTIONAL BINARY extra (JSON);
  OPTIONAL BINARY event (JSON);
  REQUIRED BINARY transcript (STRING);
  REQUIRED FIXED_LEN_BYTE_ARRAY (32) record_hash;
  REQUIRED FIXED_LEN_BYTE_ARRAY (32) ciphertext_hash;
  REQUIRED FIXED_LEN_BYTE_ARRAY (16) salt;
  REQUIRED BINARY canonical;
  REQUIRED INT64 segment;
  REQUIRED INT64 offset;
  OPTIONAL BINARY occupant (STRING);
  OPTIONAL BINARY files (JSON);
}
";

/// Column names in schema order.
pub(crate) const COLUMNS: [&str; 39] = [
    "seq",
    "time",
    "kind",
    "direction",
    "from",
    "to",
    "type",
    "thread",
    "subject",
    "body",
    "delivered_body",
    "action",
    "rules",
    "session",
    "message_id",
    "origin_id",
    "stanza_id",
    "severity",
    "e2ee",
    "logical_message",
    "delivered_logical_message",
    "via",
    "leg",
    "account",
    "claimed_from",
    "would_action",
    "retention_class",
    "edit",
    "extra",
    "event",
    "transcript",
    "record_hash",
    "ciphertext_hash",
    "salt",
    "canonical",
    "segment",
    "offset",
    "occupant",
    "files",
];

/// Columns written before `occupant` and `files` (schema version 2), which verify still
/// reads.
pub(crate) const COLUMNS_V2: usize = 37;

/// Columns whose values are (nearly) all distinct: a dictionary only costs time.
const NO_DICTIONARY: [&str; 10] = [
    "seq",
    "time",
    "body",
    "delivered_body",
    "event",
    "record_hash",
    "ciphertext_hash",
    "salt",
    "canonical",
    "offset",
];

pub(crate) fn schema() -> Result<Type, parquet::errors::ParquetError> {
    parse_message_type(SCHEMA)
}

/// One row: what is shown plus what proves it.
pub(crate) struct ExportRow {
    pub shown: Shown,
    pub record_hash: Hash,
    pub ciphertext_hash: Hash,
    pub salt: [u8; SALT_LEN],
    pub canonical: Vec<u8>,
    pub segment: u64,
    pub offset: u64,
}

#[derive(Default)]
struct OptStr {
    values: Vec<ByteArray>,
    defs: Vec<i16>,
}

impl OptStr {
    fn push(&mut self, v: &Option<String>) -> usize {
        match v {
            Some(s) => {
                self.values.push(ByteArray::from(s.as_bytes().to_vec()));
                self.defs.push(1);
                s.len()
            }
            None => {
                self.defs.push(0);
                0
            }
        }
    }
}

/// One row group's worth of rows, column by column.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    time: Vec<i64>,
    kind: Vec<ByteArray>,
    opt: [OptStr; 7],
    action: OptStr,
    rules: Vec<ByteArray>,
    rules_def: Vec<i16>,
    rules_rep: Vec<i16>,
    more: [OptStr; 7],
    capture: [OptStr; 10],
    event: OptStr,
    transcript: Vec<ByteArray>,
    record_hash: Vec<FixedLenByteArray>,
    ciphertext_hash: Vec<FixedLenByteArray>,
    salt: Vec<FixedLenByteArray>,
    canonical: Vec<ByteArray>,
    segment: Vec<i64>,
    offset: Vec<i64>,
    occupant: OptStr,
    files: OptStr,
    bytes: usize,
}

fn i64_of(v: u64) -> i64 {
    // Seqs, segment ids and offsets stay far below 2^63; clamping keeps the
    // conversion total without a panic path.
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Columns {
    fn len(&self) -> usize {
        self.seq.len()
    }

    fn push(&mut self, r: ExportRow) {
        let s = r.shown;
        let mut n = 0;
        self.seq.push(i64_of(s.seq));
        self.time.push(s.time);
        self.kind.push(ByteArray::from(s.kind.into_bytes()));
        for (col, v) in self.opt.iter_mut().zip([
            &s.direction,
            &s.from,
            &s.to,
            &s.stanza_type,
            &s.thread,
            &s.subject,
            &s.body,
        ]) {
            n += col.push(v);
        }
        n += self.action.push(&s.action);
        if s.rules.is_empty() {
            self.rules_def.push(0);
            self.rules_rep.push(0);
        }
        for (i, rule) in s.rules.iter().enumerate() {
            n += rule.len();
            self.rules.push(ByteArray::from(rule.as_bytes().to_vec()));
            self.rules_def.push(1);
            self.rules_rep.push(i16::from(i > 0));
        }
        for (col, v) in self.more.iter_mut().zip([
            &s.delivered_body,
            &s.session,
            &s.message_id,
            &s.origin_id,
            &s.stanza_id,
            &s.severity,
            &s.e2ee,
        ]) {
            n += col.push(v);
        }
        for (col, v) in self.capture.iter_mut().zip([
            &s.logical_message,
            &s.delivered_logical_message,
            &s.via,
            &s.leg,
            &s.account,
            &s.claimed_from,
            &s.would_action,
            &s.retention_class,
            &s.edit,
            &s.extra,
        ]) {
            n += col.push(v);
        }
        n += self.event.push(&s.event);
        n += s.transcript.len();
        self.transcript
            .push(ByteArray::from(s.transcript.into_bytes()));
        self.record_hash
            .push(FixedLenByteArray::from(r.record_hash.to_vec()));
        self.ciphertext_hash
            .push(FixedLenByteArray::from(r.ciphertext_hash.to_vec()));
        self.salt.push(FixedLenByteArray::from(r.salt.to_vec()));
        n += r.canonical.len();
        self.canonical.push(ByteArray::from(r.canonical));
        self.segment.push(i64_of(r.segment));
        self.offset.push(i64_of(r.offset));
        n += self.occupant.push(&s.occupant);
        n += self.files.push(&s.files);
        // Each buffered value costs a `Bytes` handle and a level beyond its data.
        self.bytes += n + COLUMNS.len() * 48;
    }
}

/// Size limits of the Parquet output.
#[derive(Debug, Clone, Copy)]
pub struct ParquetLimits {
    /// Rows per row group at most (scan parallelism and pruning unit).
    pub row_group_rows: usize,
    /// Buffered bytes per row group at most (bounds memory).
    pub row_group_bytes: usize,
    /// Rows per part file at most.
    pub rows_per_file: u64,
}

impl Default for ParquetLimits {
    /// 32 Ki rows or 64 MiB buffered per row group (about 10 MiB compressed
    /// for typical messages), 1 Mi rows per file: large enough for efficient
    /// scans, small enough to bound memory (measured: see the export bench).
    fn default() -> ParquetLimits {
        ParquetLimits {
            row_group_rows: 32 * 1024,
            row_group_bytes: 64 << 20,
            rows_per_file: 1 << 20,
        }
    }
}

/// One finished part file.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub path: String,
    pub rows: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

struct Open {
    writer: SerializedFileWriter<BufWriter<File>>,
    part: Part,
}

pub(crate) struct PartsWriter {
    root: PathBuf,
    limits: ParquetLimits,
    schema: Arc<Type>,
    props: Arc<WriterProperties>,
    open: Option<Open>,
    buf: Columns,
    done: Vec<Part>,
}

pub(crate) type PqError = parquet::errors::ParquetError;

impl PartsWriter {
    pub fn new(root: &Path, limits: ParquetLimits) -> Result<PartsWriter, PqError> {
        let mut props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(limits.row_group_rows.max(1)))
            .set_created_by(format!("custos-archive {}", env!("CARGO_PKG_VERSION")));
        for c in NO_DICTIONARY {
            props = props.set_column_dictionary_enabled(ColumnPath::from(c), false);
        }
        Ok(PartsWriter {
            root: root.to_path_buf(),
            limits,
            schema: Arc::new(schema()?),
            props: Arc::new(props.build()),
            open: None,
            buf: Columns::default(),
            done: Vec::new(),
        })
    }

    pub fn push(&mut self, row: ExportRow) -> Result<(), PqError> {
        if self.open.is_none() {
            let path = format!("records/part-{:05}.parquet", self.done.len());
            let file = File::create(self.root.join(&path))?;
            let writer = SerializedFileWriter::new(
                BufWriter::with_capacity(1 << 20, file),
                self.schema.clone(),
                self.props.clone(),
            )?;
            self.open = Some(Open {
                writer,
                part: Part {
                    path,
                    rows: 0,
                    first_seq: row.shown.seq,
                    last_seq: row.shown.seq,
                },
            });
        }
        if let Some(open) = &mut self.open {
            open.part.rows += 1;
            open.part.last_seq = row.shown.seq;
        }
        self.buf.push(row);
        if self.buf.len() >= self.limits.row_group_rows.max(1)
            || self.buf.bytes >= self.limits.row_group_bytes
        {
            self.flush_group()?;
        }
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.part.rows >= self.limits.rows_per_file.max(1))
        {
            self.close_part()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<(), PqError> {
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        if self.buf.len() == 0 {
            return Ok(());
        }
        let c = std::mem::take(&mut self.buf);
        let mut rg = open.writer.next_row_group()?;
        let mut i = 0usize;
        while let Some(mut col) = rg.next_column()? {
            let name = COLUMNS.get(i).copied().unwrap_or("");
            match name {
                "seq" => write_i64(&mut col, &c.seq)?,
                "time" => write_i64(&mut col, &c.time)?,
                "segment" => write_i64(&mut col, &c.segment)?,
                "offset" => write_i64(&mut col, &c.offset)?,
                "kind" => write_bytes(&mut col, &c.kind, None, None)?,
                "transcript" => write_bytes(&mut col, &c.transcript, None, None)?,
                "canonical" => write_bytes(&mut col, &c.canonical, None, None)?,
                "rules" => write_bytes(&mut col, &c.rules, Some(&c.rules_def), Some(&c.rules_rep))?,
                "record_hash" => write_fixed(&mut col, &c.record_hash)?,
                "ciphertext_hash" => write_fixed(&mut col, &c.ciphertext_hash)?,
                "salt" => write_fixed(&mut col, &c.salt)?,
                other => {
                    let o = c
                        .optional(other)
                        .ok_or_else(|| PqError::General(format!("no buffer for column {other}")))?;
                    write_bytes(&mut col, &o.values, Some(&o.defs), None)?;
                }
            }
            col.close()?;
            i += 1;
        }
        rg.close()?;
        Ok(())
    }

    fn close_part(&mut self) -> Result<(), PqError> {
        self.flush_group()?;
        if let Some(open) = self.open.take() {
            let file = open.writer.into_inner()?;
            let file = file
                .into_inner()
                .map_err(|e| PqError::External(Box::new(e.into_error())))?;
            file.sync_all()?;
            self.done.push(open.part);
        }
        Ok(())
    }

    /// Flushes and closes the last part; returns every part in order.
    pub fn finish(mut self) -> Result<Vec<Part>, PqError> {
        self.close_part()?;
        Ok(self.done)
    }
}

impl Columns {
    fn optional(&self, name: &str) -> Option<&OptStr> {
        let [direction, from, to, stanza_type, thread, subject, body] = &self.opt;
        let [delivered_body, session, message_id, origin_id, stanza_id, severity, e2ee] =
            &self.more;
        let [logical_message, delivered_logical_message, via, leg, account, claimed_from, would_action, retention_class, edit, extra] =
            &self.capture;
        Some(match name {
            "direction" => direction,
            "from" => from,
            "to" => to,
            "type" => stanza_type,
            "thread" => thread,
            "subject" => subject,
            "body" => body,
            "delivered_body" => delivered_body,
            "action" => &self.action,
            "session" => session,
            "message_id" => message_id,
            "origin_id" => origin_id,
            "stanza_id" => stanza_id,
            "severity" => severity,
            "e2ee" => e2ee,
            "logical_message" => logical_message,
            "delivered_logical_message" => delivered_logical_message,
            "via" => via,
            "leg" => leg,
            "account" => account,
            "claimed_from" => claimed_from,
            "would_action" => would_action,
            "retention_class" => retention_class,
            "edit" => edit,
            "extra" => extra,
            "event" => &self.event,
            "occupant" => &self.occupant,
            "files" => &self.files,
            _ => return None,
        })
    }
}

fn write_i64(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    v: &[i64],
) -> Result<(), PqError> {
    col.typed::<Int64Type>().write_batch(v, None, None)?;
    Ok(())
}

fn write_bytes(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    v: &[ByteArray],
    defs: Option<&[i16]>,
    reps: Option<&[i16]>,
) -> Result<(), PqError> {
    col.typed::<ByteArrayType>().write_batch(v, defs, reps)?;
    Ok(())
}

fn write_fixed(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    v: &[FixedLenByteArray],
) -> Result<(), PqError> {
    col.typed::<FixedLenByteArrayType>()
        .write_batch(v, None, None)?;
    Ok(())
}
