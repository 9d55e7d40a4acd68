//! Regulator export and its offline verification.
//!
//! ```text
//!  segments ─▶ decrypt, recompute chain ─▶ filter (range, query)
//!                   │ every record              │ selected
//!                   ▼                           ├─▶ records/part-N.parquet (rows + proof columns)
//!             chain.jsonl (links to the         └─▶ transcripts/*.html, index.html
//!             signed checkpoints)
//!  all files ─▶ SHA-256 ─▶ manifest.json ─▶ Ed25519 ─▶ manifest.sig ─▶ rename DIR.partial → DIR
//!
//!  verify_export(DIR, public key) ─▶ signature, file hashes, every row, every link
//!                                 ─▶ ExportProblem{file, row, seq, what}
//! ```
//!
//! A query export first asks the search index where its matches are (`select`): only
//! those records are decrypted and tested, and segments without one are not read.
//!
//! Modules: [`row`] (what a row shows, derived from the canonical record),
//! [`filter`] (time range and query), `select` (records found through the index),
//! [`parquet_out`] (schema and writer),
//! [`chain`] (chain links), [`transcripts`] (HTML), [`manifest`] (manifest and
//! signature), [`verify_export`]. The format is described for third-party
//! verifiers in `docs/export-format.md`.

pub mod actiance;
mod chain;
pub(crate) mod filter;
pub mod hex;
pub mod manifest;
mod merged;
pub mod nodes;
mod parquet_out;
pub(crate) mod row;
mod select;
pub mod transcripts;
mod verify_export;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

pub use chain::{ChainError, CoveringCheckpoint};
pub use manifest::Manifest;
pub use parquet_out::ParquetLimits;
pub use verify_export::{verify_export, ExportProblem, ExportReport};

use crate::keys::MasterKey;
use crate::log::{self, LogOpenError};
use crate::query::{self, QueryError};
use crate::record::{EventRecord, NewRecord};
use crate::segment::{self, SegmentHeader, HEADER_LEN};
use crate::storage::Storage;
use crate::time::Timestamp;
use crate::walk::{self, ChainPos, Step};

use chain::ProofBuilder;
use filter::Filter;
use manifest::{CheckpointSummary, FileEntry, PartEntry};
use parquet_out::{ExportRow, PartsWriter};
use row::{Conversation, Shown};
use transcripts::Transcripts;

/// Marks a `DIR.partial` directory as ours, so a rerun may clear it.
const PARTIAL_MARKER: &str = ".custos-export-partial";
/// Records between progress calls.
const PROGRESS_EVERY: u64 = 10_000;

/// What to export. `since` is inclusive, `until` exclusive; `query` uses
/// the search syntax and selects messages only (no query: every record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportRequest {
    pub query: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// Tuning that does not change what is exported.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    pub parquet: ParquetLimits,
    /// Select a query's records by decrypting and testing every record, not through
    /// the search index (see [`select`]).
    pub scan: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub request: ExportRequest,
    /// Rows exported.
    pub records: u64,
    /// Every file written, relative to `out`, manifest and signature last.
    pub files: Vec<PathBuf>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The last checkpointed seq: records after it (appended since the last
    /// checkpoint) were not read, and this export says so in its manifest.
    pub through_seq: u64,
    /// Records read (selected or not) up to `through_seq`.
    pub scanned: u64,
    /// Records decrypted to be tested against the selection.
    pub decrypted: u64,
    /// Records read but not hashed: no exported row is in their checkpoint interval, so
    /// no leaf of theirs is needed, and the interval's signed checkpoint is where the
    /// chain goes on (with the index choosing what is read only).
    pub skimmed: u64,
    /// Records in log segments not read at all: the index found nothing there.
    pub skipped: u64,
    /// How the query's records were found: through the index, or why not.
    pub selected_by: SelectedBy,
    /// Records whose segment key is destroyed: proven by leaf only, not exported.
    pub shredded: u64,
    /// The shredded segments met, each with the shred record that destroyed its key
    /// (also in the manifest).
    pub shredded_segments: Vec<manifest::ShreddedSegment>,
    /// Checkpoints that cover exported rows.
    pub checkpoints: u64,
    /// Hex SHA-256 of `manifest.json`.
    pub manifest_sha256: String,
}

impl ExportSummary {
    /// The audit record the caller appends to the archive (promise 5).
    pub fn audit_record(&self, actor: &str) -> NewRecord {
        let detail = serde_json::json!({
            "query": self.request.query,
            "since": self.request.since.map(|t| t.to_string()),
            "until": self.request.until.map(|t| t.to_string()),
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "through_seq": self.through_seq,
            "selected_by": self.selected_by.to_string(),
            "out": self.out.display().to_string(),
            "manifest_sha256": self.manifest_sha256,
        });
        NewRecord::Event(EventRecord::Audit {
            actor: actor.to_string(),
            action: "export".into(),
            detail: detail.to_string(),
        })
    }
}

/// How an export found the records its query selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectedBy {
    /// No query: every record in the time range.
    Range,
    /// The search index up to seq `through`, every record after it tested.
    Index { through: u64 },
    /// Every record decrypted and tested: asked for, or the index could not be used.
    Scan { why: String },
}

impl std::fmt::Display for SelectedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectedBy::Range => write!(f, "every record in the range"),
            SelectedBy::Index { through } => write!(
                f,
                "the search index through seq {through}, every record after it tested"
            ),
            SelectedBy::Scan { why } => write!(f, "testing every record ({why})"),
        }
    }
}

/// An export failed; the output directory was not created (at most a
/// `DIR.partial` remains, which a rerun clears).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    // The request.
    #[error("bad query: {0}")]
    Query(#[from] QueryError),
    // The output location.
    #[error("output directory {0} exists and is not empty; choose a new one")]
    OutExists(PathBuf),
    #[error("{0} exists and was not left by an export; remove it or choose another output")]
    PartialExists(PathBuf),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    // The archive.
    #[error(transparent)]
    Open(#[from] LogOpenError),
    #[error("reading segment {segment}: {what}")]
    Read { segment: u64, what: String },
    #[error("segment {segment} offset {offset}: {what}; run `custos verify`")]
    Corrupt {
        segment: u64,
        offset: u64,
        what: String,
    },
    #[error(
        "{unmet} of the {found} records the search index found up to seq {indexed} \
         are not where it places them in the log: the index does not match the log; \
         run `custos verify`, or export with --scan"
    )]
    IndexUnmet {
        found: u64,
        unmet: u64,
        indexed: u64,
    },
    #[error(
        "segment {segment}: its data key is missing and no signed shred record in the \
         chain names it ({records} record(s) from seq {first_seq} could not be read); \
         the export would leave them out unannounced: put the key file back, or run \
         `custos verify`"
    )]
    KeyMissing {
        segment: u64,
        first_seq: u64,
        records: u64,
    },
    #[error(transparent)]
    Chain(#[from] ChainError),
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Exports with default options; see [`export_with`].
pub fn export(
    archive_dir: &Path,
    master_key: &MasterKey,
    signing_key: &SigningKey,
    out: &Path,
    req: &ExportRequest,
    progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, ExportError> {
    export_with(
        archive_dir,
        master_key,
        signing_key,
        out,
        req,
        &ExportOptions::default(),
        progress,
    )
}

/// Exports the records of the archive in `archive_dir` selected by `req`
/// into the new directory `out` (refused if it exists and is not empty).
/// Safe beside a serving process: reads up to the last checkpoint.
/// `progress(seq_read, through_seq)`. Memory is bounded by one segment, one
/// row group and the per-conversation bookkeeping, not by the export size.
pub fn export_with(
    archive_dir: &Path,
    master_key: &MasterKey,
    signing_key: &SigningKey,
    out: &Path,
    req: &ExportRequest,
    opts: &ExportOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, ExportError> {
    let query = req.query.as_deref().map(query::parse).transpose()?;
    let filter = Filter::new(query, req.since, req.until);
    let storage = crate::bucket::storage_for_dir(archive_dir);
    let storage = storage.as_ref();
    let meta = log::open_meta(storage, master_key)?;
    let ids = log::segment_ids(storage).map_err(|e| ExportError::Read {
        segment: 0,
        what: e.to_string(),
    })?;
    let through = last_checkpoint(storage, &ids)?;
    if dir_has_entries(out) {
        return Err(ExportError::OutExists(out.to_path_buf()));
    }
    let (selection, selected_by) = match filter.query() {
        None => (None, SelectedBy::Range),
        Some(_) if opts.scan => (
            None,
            SelectedBy::Scan {
                why: "asked for".into(),
            },
        ),
        Some(q) => match select::Selection::from_index(
            archive_dir,
            crate::bucket::storage_for_dir(archive_dir),
            master_key,
            &meta.archive_id,
            q,
            (req.since, req.until),
            through,
        ) {
            Ok(s) if s.indexed() == 0 => (
                None,
                SelectedBy::Scan {
                    why: "the search index holds nothing yet".into(),
                },
            ),
            Ok(s) => {
                let through = s.indexed();
                (Some(s), SelectedBy::Index { through })
            }
            Err(why) => (
                None,
                SelectedBy::Scan {
                    why: format!("the search index cannot be used: {why}"),
                },
            ),
        },
    };
    // Where each segment's records end, for skipping one: the next one's first seq.
    let ends = match &selection {
        Some(_) => segment_ends(storage, &ids, through)?,
        None => Vec::new(),
    };
    let partial = prepare_partial(out)?;

    let chain_path = partial.join(manifest::CHAIN);
    let chain_file = File::create(&chain_path).map_err(write_err(&chain_path))?;
    let mut sink = Sink {
        proofs: ProofBuilder::new(
            BufWriter::with_capacity(1 << 20, chain_file),
            signing_key.verifying_key(),
        ),
        parts: PartsWriter::new(&partial, opts.parquet)?,
        transcripts: Transcripts::new(&partial),
        st: Stats::default(),
        met: 0,
        partial: &partial,
    };

    let mut after = Some(ChainPos::genesis(&meta.archive_id));
    // The seq the next segment must begin with: after a segment left unread, its
    // chain head is not known, but where it ends is.
    let mut next_seq = 1;
    // Set once a record past `through` is met: the export ends there.
    let mut past = false;
    for (i, &id) in ids.iter().enumerate() {
        if past {
            break;
        }
        if let (Some(sel), Some(Some((first, last)))) = (&selection, ends.get(i)) {
            let keyless = matches!(
                log::segment_cipher(storage, master_key, &meta.archive_id, id),
                Ok(None)
            );
            if *first == next_seq && sel.skips(id, *last, || keyless) {
                sink.st.skipped += last + 1 - first;
                if keyless {
                    sink.st.shredded += last + 1 - first;
                    sink.st.keyless.insert(id, (*first, *last));
                }
                // The next segment read is checked against this one's end only.
                after = None;
                next_seq = last + 1;
                progress(*last, through);
                continue;
            }
        }
        let name = segment::segment_name(id);
        let read_err = |e: crate::storage::ReadError| ExportError::Read {
            segment: id,
            what: e.to_string(),
        };
        let bytes = storage.read_at(&name, 0, HEADER_LEN).map_err(read_err)?;
        let corrupt = |offset: usize, what: String| ExportError::Corrupt {
            segment: id,
            offset: offset as u64,
            what,
        };
        let hb: [u8; HEADER_LEN] = match bytes.get(..HEADER_LEN).and_then(|h| h.try_into().ok()) {
            Some(h) => h,
            // A segment being created holds no checkpointed record yet.
            None => break,
        };
        let header = SegmentHeader::decode(&hb).map_err(|w| corrupt(0, w))?;
        if header.first_seq > through {
            break;
        }
        let cipher = log::segment_cipher(storage, master_key, &meta.archive_id, id)?;
        sink.proofs
            .begin_segment(id, hb, header.first_seq, header.prev_head)?;
        if let Some(flaw) = walk::header_flaws(&header, id, &meta.archive_id, after)
            .into_iter()
            .next()
        {
            return Err(corrupt(0, flaw));
        }
        if after.is_none() && header.first_seq != next_seq {
            return Err(corrupt(
                0,
                format!(
                    "header first seq {} but expected {next_seq} (segment missing or altered)",
                    header.first_seq
                ),
            ));
        }
        let seg = SegmentCtx {
            id,
            hb,
            cipher: cipher.as_ref(),
            selection: selection.as_ref(),
            filter: &filter,
        };
        // Where the walk began to skim: the next frame then, and the chain after the
        // last record hashed; and how many records it skimmed since.
        let mut skimmed_from = None;
        let mut skimmed = 0;
        // The end of the last record walked.
        let mut walked_to = 0;
        // The segment is read a window at a time, not whole.
        let walked = walk::walk_stored(storage, &name, &header, |w, step| {
            match step.map_err(|b| corrupt(b.offset as usize, b.what))? {
                Step::End { .. } => return Ok(false),
                Step::Checkpoint { offset, cp, flaw } => {
                    if let Some(flaw) = flaw {
                        return Err(corrupt(offset as usize, flaw));
                    }
                    if w.skimming() {
                        // Nothing of the interval is exported: its signed head is
                        // where the chain goes on from.
                        w.resync(cp.head);
                        sink.proofs.skipped(cp)?;
                        skimmed_from = Some((w.offset(), w.pos()));
                        let n = std::mem::take(&mut skimmed);
                        sink.skimmed(&seg, n);
                    } else {
                        sink.proofs.checkpoint(cp)?;
                    }
                }
                Step::Record(r) => {
                    let (at, seq) = (r.offset as usize, r.seq);
                    if let Some(flaw) = r.flaw {
                        return Err(corrupt(at, flaw));
                    }
                    if seq > through {
                        past = true;
                        return Ok(false);
                    }
                    walked_to = w.offset();
                    if w.skimming() && seg.opens(seq) {
                        // Exported, perhaps: the records skimmed since `skimmed_from`
                        // are leaves of its interval after all. They are read again and
                        // hashed, this one last, and the interval is hashed to its end.
                        let (from, pos) = skimmed_from
                            .ok_or_else(|| corrupt(at, "skimming began nowhere".into()))?;
                        let pos = sink.rehash(storage, &name, &seg, (from, pos), w.offset())?;
                        w.resync(pos.head);
                        w.skim(false);
                        skimmed = 0;
                    } else if w.skimming() {
                        skimmed += 1;
                    } else {
                        sink.record(&seg, &r)?;
                        if seg.may_skim(seq) && !sink.proofs.is_active() {
                            // No leaf of this interval is needed unless a record the
                            // selection opens is met before its checkpoint.
                            w.skim(true);
                            skimmed_from = Some((w.offset(), w.pos()));
                        }
                    }
                    if seq % PROGRESS_EVERY == 0 {
                        progress(seq, through);
                    }
                }
            }
            Ok(true)
        });
        let walked = walked.map_err(|e| match e {
            walk::WalkError::Read(e) => read_err(e),
            walk::WalkError::Stopped(e) => e,
        })?;
        let mut end = walked.pos;
        if skimmed > 0 && !past {
            // The segment ended with records no checkpoint follows (a sealed file
            // without its sealing checkpoint, which `verify` reports): they are hashed
            // after all, so that the next segment's header is checked against the chain
            // itself, not against a head the skim left behind.
            let from = skimmed_from.ok_or_else(|| corrupt(0, "skimming began nowhere".into()))?;
            end = sink.rehash(storage, &name, &seg, from, walked_to)?;
            skimmed = 0;
        }
        // Records skimmed after the last checkpoint read (past the export's end).
        sink.skimmed(&seg, skimmed);
        if cipher.is_none() && end.next_seq > header.first_seq {
            sink.st
                .keyless
                .insert(id, (header.first_seq, end.next_seq - 1));
        }
        next_seq = end.next_seq;
        after = Some(end);
    }
    // Each record the index found lies in a segment it places there, and each such
    // segment was read: a find not met means the index and the log disagree, and the
    // export could lack what the index put elsewhere.
    let Sink {
        proofs,
        parts,
        transcripts,
        st,
        met,
        ..
    } = sink;
    if let Some(sel) = &selection {
        if met != sel.found_count() {
            return Err(ExportError::IndexUnmet {
                found: sel.found_count(),
                unmet: sel.found_count().saturating_sub(met),
                indexed: sel.indexed(),
            });
        }
    }

    // A data key is destroyed legitimately only as a signed act recorded in the chain
    // (retention, erasure): any other missing key would leave records out of the
    // export with nothing in it to say so.
    let mut shreds = st.shred_records.clone();
    let unnamed: Vec<u64> = st
        .keyless
        .keys()
        .filter(|s| !shreds.contains_key(s))
        .copied()
        .collect();
    if let Some(&first) = unnamed.first() {
        find_shred_records(
            storage,
            master_key,
            &signing_key.verifying_key(),
            &meta.archive_id,
            (&ids, first),
            &unnamed,
            &mut shreds,
        )?;
    }
    let mut shredded = Vec::with_capacity(st.keyless.len());
    for (&segment, &(first_seq, last_seq)) in &st.keyless {
        let Some(&shred_seq) = shreds.get(&segment) else {
            return Err(ExportError::KeyMissing {
                segment,
                first_seq,
                records: last_seq + 1 - first_seq,
            });
        };
        shredded.push(manifest::ShreddedSegment {
            segment,
            first_seq,
            last_seq,
            shred_seq,
        });
    }

    let checkpoints = CheckpointSummary {
        count: proofs.covering,
        first: proofs.first_covering.clone(),
        last: proofs.last_covering.clone(),
    };
    let chain_out = proofs.finish()?;
    chain_out
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(write_err(&chain_path))?;
    let parts = parts.finish()?;
    let heading = describe(req, &st, through);
    let html = transcripts.finish(&heading).map_err(write_err(&partial))?;

    let mut rel: Vec<String> = parts.iter().map(|p| p.path.clone()).collect();
    rel.push(manifest::CHAIN.into());
    rel.extend(html);
    let mut files = Vec::with_capacity(rel.len());
    for p in &rel {
        let full = partial.join(p);
        let (h, bytes) = manifest::hash_file(&full).map_err(write_err(&full))?;
        files.push(FileEntry {
            path: p.clone(),
            sha256: hex::encode(&h),
            bytes,
        });
    }
    let m = Manifest {
        format: manifest::FORMAT.into(),
        archive_id: hex::encode(&meta.archive_id),
        signing_key: hex::encode(signing_key.verifying_key().as_bytes()),
        created: Timestamp::now().to_string(),
        query: req.query.clone(),
        since_ms: req.since.map(Timestamp::millis),
        until_ms: req.until.map(Timestamp::millis),
        records: st.records,
        first_seq: st.first_seq,
        last_seq: st.last_seq,
        through_seq: through,
        checkpoints,
        shredded,
        compression: "zstd(3)".into(),
        parquet: parts
            .iter()
            .map(|p| PartEntry {
                path: p.path.clone(),
                rows: p.rows,
                first_seq: p.first_seq,
                last_seq: p.last_seq,
            })
            .collect(),
        files,
    };
    let mbytes = serde_json::to_vec_pretty(&m).map_err(|e| write_err(&partial)(e.into()))?;
    let sig = manifest::sign(signing_key, &mbytes);
    // The signature is written last: a directory without it is not an export.
    write_synced(&partial.join(manifest::MANIFEST), &mbytes)?;
    write_synced(
        &partial.join(manifest::SIGNATURE),
        format!("{sig}\n").as_bytes(),
    )?;
    let marker = partial.join(PARTIAL_MARKER);
    fs::remove_file(&marker).map_err(write_err(&marker))?;
    for d in ["records", "transcripts", ""] {
        sync_dir(&partial.join(d))?;
    }
    if out.is_dir() {
        // Checked empty above; `rename` needs it gone.
        fs::remove_dir(out).map_err(write_err(out))?;
    }
    fs::rename(&partial, out).map_err(write_err(out))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    progress(through, through);
    rel.push(manifest::MANIFEST.into());
    rel.push(manifest::SIGNATURE.into());
    Ok(ExportSummary {
        out: out.to_path_buf(),
        request: req.clone(),
        records: st.records,
        files: rel.into_iter().map(PathBuf::from).collect(),
        first_seq: st.first_seq,
        last_seq: st.last_seq,
        through_seq: through,
        scanned: st.scanned,
        decrypted: st.decrypted,
        skimmed: st.skimmed,
        skipped: st.skipped,
        selected_by,
        shredded: st.shredded,
        shredded_segments: m.shredded.clone(),
        checkpoints: m.checkpoints.count,
        manifest_sha256: hex::encode(&segment::sha(&[&mbytes])),
    })
}

/// One log segment as the export walks it.
struct SegmentCtx<'a> {
    id: u64,
    hb: [u8; HEADER_LEN],
    /// `None`: the segment's key is destroyed (shredded).
    cipher: Option<&'a aes_gcm::Aes256Gcm>,
    selection: Option<&'a select::Selection>,
    filter: &'a Filter,
}

impl SegmentCtx<'_> {
    /// Whether record `seq` must be decrypted and tested.
    fn opens(&self, seq: u64) -> bool {
        self.selection.is_none_or(|s| s.opens(seq, self.id))
    }

    /// Whether, after record `seq`, the walk may skim: the index chose what is read,
    /// and `seq` is not among it.
    fn may_skim(&self, seq: u64) -> bool {
        self.selection.is_some_and(|s| !s.opens(seq, self.id))
    }
}

/// What the walk over the log writes to and counts.
struct Sink<'p, W: Write> {
    proofs: ProofBuilder<W>,
    parts: PartsWriter,
    transcripts: Transcripts,
    st: Stats,
    /// Records the index found that the walk met.
    met: u64,
    partial: &'p Path,
}

impl<W: Write> Sink<'_, W> {
    /// A record of `seg` the walk hashed: exported when it opens and the filter
    /// selects it, else a leaf of the proofs.
    fn record(
        &mut self,
        seg: &SegmentCtx<'_>,
        r: &walk::RecordFrame<'_>,
    ) -> Result<(), ExportError> {
        let (at, seq) = (r.offset, r.seq);
        self.st.scanned += 1;
        if seg.selection.is_some_and(|s| s.found_at(seq)) {
            self.met += 1;
        }
        let Some(c) = seg.cipher else {
            self.st.shredded += 1;
            return Ok(self.proofs.gap(seq, r.leaf)?);
        };
        if !seg.opens(seq) {
            return Ok(self.proofs.gap(seq, r.leaf)?);
        }
        self.st.decrypted += 1;
        let o = walk::open_frame(c, &seg.hb, r).map_err(|what| ExportError::Corrupt {
            segment: seg.id,
            offset: at,
            what,
        })?;
        let rec = o.record;
        if let NewRecord::Event(EventRecord::Shred { segment, .. }) = &rec.content {
            self.st.shred_records.entry(*segment).or_insert(seq);
        }
        if !seg.filter.selects(&rec) {
            return Ok(self.proofs.gap(seq, r.leaf)?);
        }
        self.proofs.exported(seq, r.leaf)?;
        let shown = Shown::from_record(&rec);
        self.transcripts
            .add(Conversation::of(&rec), &shown)
            .map_err(write_err(self.partial))?;
        self.st.records += 1;
        self.st.first_seq.get_or_insert(seq);
        self.st.last_seq = Some(seq);
        self.parts.push(ExportRow {
            shown,
            record_hash: r.content_hash,
            ciphertext_hash: r.ciphertext_hash,
            salt: o.salt,
            canonical: o.canonical,
            segment: seg.id,
            offset: at,
        })?;
        Ok(())
    }

    /// `n` records of `seg` the walk read but did not hash: shredded too, if its key is
    /// gone (as each is, hashed, in a scan).
    fn skimmed(&mut self, seg: &SegmentCtx<'_>, n: u64) {
        self.st.scanned += n;
        self.st.skimmed += n;
        if seg.cipher.is_none() {
            self.st.shredded += n;
        }
    }

    /// Reads the frames of `seg` from `from` (with the chain at `pos` there) up to `to`
    /// again, a window at a time, hashing each, and takes every record (the last is the
    /// one that made the walk stop skimming). Returns the chain after the last.
    fn rehash(
        &mut self,
        storage: &dyn Storage,
        name: &str,
        seg: &SegmentCtx<'_>,
        (from, pos): (u64, ChainPos),
        to: u64,
    ) -> Result<ChainPos, ExportError> {
        let corrupt = |offset: u64, what: String| ExportError::Corrupt {
            segment: seg.id,
            offset,
            what,
        };
        let mut reached = None;
        // The frames up to `to` and no more: a window from `from` would read up to 4 MiB
        // each time a skim ends.
        let window =
            usize::try_from(to.saturating_sub(from)).map_or(walk::WINDOW, |n| n.min(walk::WINDOW));
        let walked = walk::walk_stored_from(storage, name, (from, pos), window, |w, step| {
            match step.map_err(|b| corrupt(b.offset, b.what))? {
                Step::Record(r) => {
                    if let Some(flaw) = r.flaw {
                        return Err(corrupt(r.offset, flaw));
                    }
                    self.record(seg, &r)?;
                }
                // The first walk met whole records only up to `to`.
                Step::Checkpoint { offset, .. } | Step::End { offset, .. } => {
                    return Err(corrupt(offset, "changed while it was read".into()));
                }
            }
            if w.offset() < to {
                return Ok(true);
            }
            if w.offset() > to {
                return Err(corrupt(to, "changed while it was read".into()));
            }
            reached = Some(w.pos());
            Ok(false)
        });
        walked.map_err(|e| match e {
            walk::WalkError::Read(e) => ExportError::Read {
                segment: seg.id,
                what: e.to_string(),
            },
            walk::WalkError::Stopped(e) => e,
        })?;
        reached.ok_or_else(|| corrupt(to, "changed while it was read".into()))
    }
}

#[derive(Default)]
struct Stats {
    records: u64,
    scanned: u64,
    decrypted: u64,
    skimmed: u64,
    skipped: u64,
    shredded: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// Segments read (or skipped) whose data key is gone: their first and last seq.
    keyless: std::collections::BTreeMap<u64, (u64, u64)>,
    /// The segments that the shred records decrypted on the way name, with each
    /// record's seq.
    shred_records: std::collections::BTreeMap<u64, u64>,
}

fn describe(req: &ExportRequest, st: &Stats, through: u64) -> String {
    let q = req
        .query
        .as_deref()
        .map_or("all records".to_string(), |q| format!("query {q:?}"));
    let since = req
        .since
        .map_or("the beginning".to_string(), |t| t.to_string());
    let until = req
        .until
        .map_or("the last checkpoint".to_string(), |t| t.to_string());
    format!(
        "{} records exported ({q}, from {since} until {until}); archive read through seq {through}. \
         The Parquet files are authoritative; these pages render them for reading.",
        st.records
    )
}

/// Reads the records of the segments after `first` (all of them, decrypted) for the
/// shred records that name the `wanted` segments, adding each to `found`, until every
/// one is named. Only met when an export reads a segment whose key is gone: the shred
/// record is written after the segment, often far beyond the export's range. A record
/// counts once a checkpoint after it in its segment states the head the walk computed
/// and bears a valid signature: one put in a segment of someone's own making, without
/// the signing key, does not.
fn find_shred_records(
    storage: &dyn Storage,
    master_key: &MasterKey,
    verifying: &ed25519_dalek::VerifyingKey,
    archive_id: &[u8; 16],
    (ids, first): (&[u64], u64),
    wanted: &[u64],
    found: &mut std::collections::BTreeMap<u64, u64>,
) -> Result<(), ExportError> {
    let missing = |found: &std::collections::BTreeMap<u64, u64>| {
        wanted.iter().filter(|s| !found.contains_key(s)).count()
    };
    for &id in ids.iter().filter(|&&id| id > first) {
        if missing(found) == 0 {
            break;
        }
        let Some(cipher) = log::segment_cipher(storage, master_key, archive_id, id)? else {
            continue;
        };
        let name = segment::segment_name(id);
        let read_err = |e: crate::storage::ReadError| ExportError::Read {
            segment: id,
            what: e.to_string(),
        };
        let corrupt = |offset: u64, what: String| ExportError::Corrupt {
            segment: id,
            offset,
            what,
        };
        let bytes = storage.read_at(&name, 0, HEADER_LEN).map_err(read_err)?;
        let Some(hb) = bytes
            .get(..HEADER_LEN)
            .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
        else {
            break;
        };
        let header = SegmentHeader::decode(&hb).map_err(|w| corrupt(0, w))?;
        // Shred records met since the last checkpoint: they count once one covers them.
        let mut pending: Vec<(u64, u64)> = Vec::new();
        walk::walk_stored(storage, &name, &header, |_, step| {
            match step.map_err(|b| corrupt(b.offset, b.what))? {
                Step::End { .. } => return Ok(false),
                Step::Checkpoint { offset, cp, flaw } => {
                    if let Some(flaw) = flaw {
                        return Err(corrupt(offset, flaw));
                    }
                    if !segment::checkpoint_valid(verifying, &hb, &cp) {
                        return Err(corrupt(
                            offset,
                            "checkpoint signature does not verify".into(),
                        ));
                    }
                    for (segment, seq) in pending.drain(..) {
                        found.entry(segment).or_insert(seq);
                    }
                }
                Step::Record(r) => {
                    if let Some(flaw) = r.flaw {
                        return Err(corrupt(r.offset, flaw));
                    }
                    let o = walk::open_frame(&cipher, &hb, &r).map_err(|w| corrupt(r.offset, w))?;
                    if let NewRecord::Event(EventRecord::Shred { segment, .. }) = o.record.content {
                        if wanted.contains(&segment) {
                            pending.push((segment, r.seq));
                        }
                    }
                }
            }
            Ok(missing(found) > 0)
        })
        .map_err(|e| match e {
            walk::WalkError::Read(e) => read_err(e),
            walk::WalkError::Stopped(e) => e,
        })?;
    }
    Ok(())
}

/// The seq of the newest checkpoint: records after it are not yet covered by
/// a signature, so the export stops there.
fn last_checkpoint(storage: &dyn Storage, ids: &[u64]) -> Result<u64, ExportError> {
    for &id in ids.iter().rev() {
        let name = segment::segment_name(id);
        let read_err = |e: crate::storage::ReadError| ExportError::Read {
            segment: id,
            what: e.to_string(),
        };
        let bytes = storage.read_at(&name, 0, HEADER_LEN).map_err(read_err)?;
        let Ok(header) = SegmentHeader::decode(&bytes) else {
            continue;
        };
        let mut last = None;
        // The walk is checked in full by the export itself; here only the newest
        // checkpoint is wanted, up to the first frame that does not parse.
        walk::walk_stored(storage, &name, &header, |_, step| {
            if let Ok(Step::Checkpoint { cp, .. }) = &step {
                last = Some(cp.seq);
            }
            Ok::<bool, std::convert::Infallible>(step.is_ok())
        })
        .map_err(|e| match e {
            walk::WalkError::Read(e) => read_err(e),
            walk::WalkError::Stopped(never) => match never {},
        })?;
        if let Some(seq) = last {
            return Ok(seq);
        }
    }
    Ok(0)
}

/// The first and last seq of each segment but the newest, from the headers alone:
/// a segment ends where the next begins. `None` where that cannot be told (a header
/// that does not decode, the newest segment): such a segment is read.
fn segment_ends(
    storage: &dyn Storage,
    ids: &[u64],
    through: u64,
) -> Result<Vec<Option<(u64, u64)>>, ExportError> {
    let mut firsts = Vec::with_capacity(ids.len());
    for &id in ids {
        let bytes = storage
            .read_at(&segment::segment_name(id), 0, HEADER_LEN)
            .map_err(|e| ExportError::Read {
                segment: id,
                what: e.to_string(),
            })?;
        let first = SegmentHeader::decode(&bytes).ok().map(|h| h.first_seq);
        // Past the export's end nothing more is read.
        let done = first.is_some_and(|f| f > through);
        firsts.push(first);
        if done {
            break;
        }
    }
    Ok((0..ids.len())
        .map(|i| match (firsts.get(i), firsts.get(i + 1)) {
            // Only beside the next segment: a missing one would fall into the range.
            (Some(Some(first)), Some(Some(next)))
                if next > first && ids.get(i + 1).copied() == ids.get(i).map(|id| id + 1) =>
            {
                Some((*first, next - 1))
            }
            _ => None,
        })
        .collect())
}

fn dir_has_entries(p: &Path) -> bool {
    match fs::read_dir(p) {
        Ok(mut it) => it.next().is_some(),
        // A file (not a directory) at `out` also counts as taken.
        Err(_) => p.exists(),
    }
}

fn prepare_partial(out: &Path) -> Result<PathBuf, ExportError> {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let partial = out.with_file_name(name);
    if partial.exists() {
        if partial.join(PARTIAL_MARKER).is_file() {
            fs::remove_dir_all(&partial).map_err(write_err(&partial))?;
        } else {
            return Err(ExportError::PartialExists(partial));
        }
    }
    for d in ["records", "transcripts"] {
        let p = partial.join(d);
        fs::create_dir_all(&p).map_err(write_err(&p))?;
    }
    let marker = partial.join(PARTIAL_MARKER);
    File::create(&marker).map_err(write_err(&marker))?;
    Ok(partial)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut f = File::create(path).map_err(write_err(path))?;
    f.write_all(bytes).map_err(write_err(path))?;
    f.sync_all().map_err(write_err(path))
}

fn sync_dir(path: &Path) -> Result<(), ExportError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(write_err(path))
}

#[cfg(test)]
mod tests;
