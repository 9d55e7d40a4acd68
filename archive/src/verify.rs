//! Verification: every frame, record, chain link and checkpoint, with each
//! problem located by segment, offset and seq.
//!
//! Without the master key, verify checks structure, seq order, segment links
//! and checkpoint signatures over the chain (content hashes are stored in
//! clear). With it, every record is also decrypted and its content hash
//! recomputed, which pinpoints a changed record instead of only the next
//! checkpoint. Records of a crypto-shredded segment (key file destroyed) still
//! verify against the chain.

use std::fmt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use crate::keys::MasterKey;
use crate::log::{self, LogOpenError};
use crate::record::{EventRecord, NewRecord};
use crate::segment::{self, SegmentHeader};
use crate::storage::Storage;
use crate::walk::{self, ChainPos, Step};

/// One thing wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub segment: Option<u64>,
    pub offset: Option<u64>,
    pub seq: Option<u64>,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.segment {
            write!(f, "segment {s} ")?;
        }
        if let Some(o) = self.offset {
            write!(f, "offset {o} ")?;
        }
        if let Some(q) = self.seq {
            write!(f, "seq {q} ")?;
        }
        write!(f, "{}", self.what)
    }
}

/// The result of a verification run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The archive id in `archive.meta` (32 hex digits), once it is read: what names the
    /// archive's witness file, for an auditor to pin.
    pub archive_id: Option<String>,
    pub segments: u64,
    pub records: u64,
    pub checkpoints: u64,
    /// Records whose segment key is destroyed: chain checked, content not.
    pub shredded_records: u64,
    pub last_seq: u64,
    /// Hex of the chain head after the last record.
    pub head: String,
    pub problems: Vec<Problem>,
    /// Not problems: e.g. an in-progress write at the tail of the active segment.
    pub notes: Vec<String>,
    /// Shredded segments and the records that authorised them.
    pub shreds: Vec<ShredReport>,
    /// Without the master key: segments whose data key file is gone, which only a
    /// verify with the key can tell shredded (by a signed record) from removed.
    pub keys_unchecked: Vec<u64>,
    /// Checkpoints the log reaches intact: (segment, seq, head).
    #[serde(skip)]
    pub(crate) reached: Vec<(u64, u64, segment::Hash)>,
    /// Message records up to the seq the index claims (decoded with the master key),
    /// and records up to there that could not be read (shredded), so the index's
    /// document count can be checked against that claim.
    #[serde(skip)]
    pub(crate) messages_upto: u64,
    #[serde(skip)]
    pub(crate) unreadable_upto: u64,
    /// The chain head after the record with seq equal to the index's mark.
    #[serde(skip)]
    pub(crate) head_at_upto: Option<segment::Hash>,
    /// Message records up to the index's mark, by segment, as the index places them.
    #[serde(skip)]
    pub(crate) placed_upto: std::collections::BTreeMap<u64, crate::index::Placed>,
    /// Segments whose data key is gone.
    #[serde(skip)]
    pub(crate) keyless: std::collections::BTreeSet<u64>,
    /// Segments a shred record names (their key may still be there: an interrupted shred).
    #[serde(skip)]
    pub(crate) shred_named: std::collections::BTreeSet<u64>,
    /// The time of the first record past both the index's mark and what its commit
    /// owes ([`crate::index::Mark::owed`]), and of the last record (read with the
    /// master key).
    #[serde(skip)]
    pub(crate) first_unowed_time: Option<i64>,
    #[serde(skip)]
    pub(crate) last_time: Option<i64>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the archive in `dir`. Safe to run while another process appends:
/// an incomplete frame at the end of the last, unsealed segment is reported as
/// a note, and so is that segment shorter than its header where its bytes begin the
/// header the writer writes (a crash while it was being created). `progress(done_bytes,
/// total_bytes)` is called after each segment.
pub fn verify(
    dir: &Path,
    master_key: Option<&MasterKey>,
    public_key: &VerifyingKey,
    progress: impl FnMut(u64, u64),
) -> VerifyReport {
    let storage = crate::bucket::storage_for_dir(dir);
    verify_in(dir, storage.as_ref(), master_key, public_key, progress)
}

/// [`verify`] reading the archive's files through `storage` (the directory in front of
/// a bucket: [`crate::bucket::storage_for`]); the index is the one in `dir`.
pub fn verify_in(
    dir: &Path,
    storage: &dyn Storage,
    master_key: Option<&MasterKey>,
    public_key: &VerifyingKey,
    progress: impl FnMut(u64, u64),
) -> VerifyReport {
    let running = crate::archive::writer_running(dir);
    // A node reading the archive from a bucket, with nothing written locally, has no
    // index until it builds or fetches one (a fetch cut short leaves files but no
    // commit): that is not a lost index.
    let reader_node =
        !dir.join(log::META_NAME).exists() && !dir.join("index").join("meta.json").exists();
    // Read before the log: a running writer only adds to what the index covers.
    let coverage = match (log::read_meta(storage), master_key) {
        (Ok(Some(_)), Some(_)) if reader_node => None,
        (Ok(Some(meta)), Some(key)) => Some(crate::index::coverage(
            &dir.join("index"),
            key,
            &meta.archive_id,
            !running,
        )),
        _ => None,
    };
    let mark = coverage
        .as_ref()
        .and_then(|c| c.as_ref().ok())
        .map(|c| c.mark)
        .unwrap_or_default();
    let mut r = walk(
        storage,
        master_key,
        public_key,
        (mark.through, mark.owed),
        progress,
    );
    // Another node's chain read from the bucket grows as its segments are stored; this
    // node's index of it catches up at its next search.
    let from_bucket =
        !dir.join(log::META_NAME).exists() && crate::bucket::registered(dir).is_some();
    if let Some(coverage) = coverage {
        check_index(&mut r, coverage, running, from_bucket);
    } else if reader_node && r.last_seq > 0 {
        r.notes.push(
            "no local search index (this directory only reads the archive from its bucket); `custos search` or `custos reindex` builds one".into(),
        );
    }
    r
}

/// The index must cover the log, and hold one document per message up to where it says
/// it has indexed: search must never answer from less without saying so.
fn check_index(
    r: &mut VerifyReport,
    coverage: Result<crate::index::Coverage, crate::index::IndexError>,
    writer_running: bool,
    from_bucket: bool,
) {
    let c = match coverage {
        Ok(c) => c,
        Err(e) => return index_problem(r, format!("{e} (run custos reindex)")),
    };
    let through = c.mark.through;
    if through > r.last_seq {
        return index_problem(r, format!(
            "claims to cover seq {through} but the log ends at seq {} (an index of another time or archive; run custos reindex)",
            r.last_seq
        ));
    }
    let head = if through == 0 {
        Some([0u8; 32])
    } else {
        r.head_at_upto
    };
    if head != Some(c.mark.head) {
        return index_problem(r, format!(
            "its chain head at seq {through} is not this log's (indexed from another chain, or the log was rewritten; run custos reindex)"
        ));
    }
    // Per log segment, the documents must be exactly its messages up to the mark (a
    // segment without its key cannot be checked: its records cannot be read).
    let segments: std::collections::BTreeSet<u64> = c
        .by_segment
        .keys()
        .chain(r.placed_upto.keys())
        .copied()
        .filter(|s| !r.keyless.contains(s) && !r.shred_named.contains(s))
        .collect();
    for seg in segments {
        let index = c.by_segment.get(&seg).copied().unwrap_or_default();
        let log = r.placed_upto.get(&seg).copied().unwrap_or_default();
        if index != log {
            r.problems.push(Problem {
                segment: Some(seg),
                offset: None,
                seq: None,
                what: format!(
                    "search index: its {} document(s) for this segment are not the segment's {} message(s) up to seq {through} (documents removed, added, duplicated or moved; run custos reindex)",
                    index.count, log.count
                ),
            });
        }
    }
    // A word list that is not the one the index's commit bound was changed after it
    // was written: no crash leaves one (lists are synced before the commit that binds
    // them). Search refuses pattern terms for these segments.
    for s in &c.vocabulary_unbound {
        if r.keyless.contains(s) || r.shred_named.contains(s) {
            continue;
        }
        r.problems.push(Problem {
            segment: Some(*s),
            offset: None,
            seq: None,
            what: "search vocabulary: the segment's sealed word list is not the one the index committed (cut back, rolled back to an older copy, or replaced); prefix, wildcard and fuzzy search refuse to run until custos reindex".into(),
        });
    }
    // Derived data whose loss hides nothing: search refuses pattern terms for these
    // segments rather than answer from less, so it is told, not failed.
    let gaps: Vec<u64> = c
        .vocabulary_gaps
        .iter()
        .copied()
        .filter(|s| !r.keyless.contains(s) && !r.shred_named.contains(s))
        .collect();
    if !gaps.is_empty() {
        r.notes.push(format!(
            "search vocabulary: no whole sealed word list for segment(s) {gaps:?} (deleted, damaged, or this node took the bucket's index copy): prefix, wildcard and fuzzy search refuse to run until custos reindex"
        ));
    }
    let messages = r.messages_upto;
    // The documents of a segment being shredded (its record written, its key not yet
    // gone) may already be deleted.
    let being_shredded: u64 = r
        .shred_named
        .iter()
        .filter(|s| !r.keyless.contains(s))
        .filter_map(|s| r.placed_upto.get(s))
        .map(|p| p.count)
        .sum();
    // Shredded records cannot be told apart: their documents may or may not be there.
    if c.docs + being_shredded < messages || c.docs > messages + r.unreadable_upto {
        index_problem(r, format!(
            "holds {} document(s) for the {messages} message(s) up to seq {} (damaged, rolled back or another archive's; run custos reindex)",
            c.docs, through
        ));
    }
    // A commit owes only records the log held when it was made: owing more than the
    // log now holds says the log lost its tail since (a cut, or a rollback of the whole
    // directory to an older copy beside a newer index).
    let owed = c.mark.owed;
    if owed > r.last_seq && !from_bucket {
        index_problem(r, format!(
            "its last commit was made while the log ran to seq {owed}, but the log ends at seq {}: records {}..={owed} are gone from the log",
            r.last_seq,
            r.last_seq + 1
        ));
    }
    if through < r.last_seq {
        let behind = format!(
            "covers seqs up to {through} but the log runs to {}",
            r.last_seq
        );
        // A writer killed between an append and the index commit (at most a second
        // apart) leaves exactly this: the next open or search adds them. So does one
        // closed, or killed, while the index caught up with the log: its commit says
        // up to where it owed. A lag of other records is an index rolled back or damaged.
        let crash_lag = matches!(
            (r.first_unowed_time, r.last_time),
            (Some(first), Some(last)) if last - first <= CRASH_LAG_MS
        );
        if from_bucket {
            r.notes.push(format!(
                "search index {behind}: segments stored since this node's last search; its next search indexes them"
            ));
        } else if writer_running {
            r.notes.push(format!(
                "search index {behind}: the running writer indexes the newest records within a second"
            ));
        } else if owed >= r.last_seq {
            r.notes.push(format!(
                "search index {behind}: it was catching up with the log when its writer stopped (a close does not wait for a rebuild or a backlog; or the writer was killed); the next open or search adds records {}..={}",
                through + 1,
                r.last_seq
            ));
        } else if crash_lag {
            r.notes.push(format!(
                "search index {behind}: records written in the last moment before the writer stopped (a crash); the next open or search adds them"
            ));
        } else {
            index_problem(
                r,
                format!(
                    "{behind}: records {}..={} are missing from search (run custos reindex)",
                    through + 1,
                    r.last_seq
                ),
            );
        }
    }
}

/// How recent, relative to the log's last record, unindexed records may be and still be
/// explained by a crash (the writer commits the index every 500 ms).
const CRASH_LAG_MS: i64 = 3_000;

fn index_problem(r: &mut VerifyReport, what: String) {
    r.problems.push(Problem {
        segment: None,
        offset: None,
        seq: None,
        what: format!("search index: {what}"),
    })
}

/// [`verify`] over any storage (without the index check).
pub fn verify_storage(
    storage: &dyn Storage,
    master_key: Option<&MasterKey>,
    public_key: &VerifyingKey,
    progress: impl FnMut(u64, u64),
) -> VerifyReport {
    walk(storage, master_key, public_key, (0, 0), progress)
}

/// The log walk; for the index check, counts message records with seq ≤ the index's
/// mark and takes the time of the first record past what its commit owes, given
/// `(mark, owed)`.
fn walk(
    storage: &dyn Storage,
    master_key: Option<&MasterKey>,
    public_key: &VerifyingKey,
    (count_upto, owed_upto): (u64, u64),
    mut progress: impl FnMut(u64, u64),
) -> VerifyReport {
    let unowed_from = count_upto.max(owed_upto) + 1;
    let mut r = VerifyReport::default();
    let problem = |r: &mut VerifyReport,
                   segment: Option<u64>,
                   offset: Option<u64>,
                   seq: Option<u64>,
                   what: String| {
        r.problems.push(Problem {
            segment,
            offset,
            seq,
            what,
        })
    };
    let meta = match log::read_meta(storage) {
        Ok(Some(m)) => m,
        Ok(None) => {
            problem(&mut r, None, None, None, "archive.meta is missing".into());
            return r;
        }
        Err(e) => {
            problem(&mut r, None, None, None, e.to_string());
            return r;
        }
    };
    r.archive_id = Some(crate::witness::hex_id(&meta.archive_id));
    let placement = master_key.map(|m| crate::index::Placer::derive(m, &meta.archive_id));
    let master = match master_key {
        Some(m) if m.check_value(&meta.archive_id) != meta.key_check => {
            problem(
                &mut r,
                None,
                None,
                None,
                LogOpenError::WrongMasterKey.to_string(),
            );
            None
        }
        other => other,
    };
    let ids = match log::segment_ids(storage) {
        Ok(ids) => ids,
        Err(e) => {
            problem(&mut r, None, None, None, e.to_string());
            return r;
        }
    };
    // Segments are read one at a time, a window at a time: what verify holds is one
    // window of the log, however large the archive.
    let total: u64 = ids
        .iter()
        .filter_map(|&id| storage.len(&segment::segment_name(id)).ok())
        .sum();
    let mut done = 0u64;
    let mut pos = ChainPos::genesis(&meta.archive_id);
    let last_id = ids.last().copied();
    // Segments whose data key is gone (with their record counts), and the segments a
    // signed shred record allows to be gone.
    let mut unreadable: std::collections::BTreeMap<u64, (u64, u64, u64)> = Default::default();
    let mut shred_records: std::collections::BTreeMap<u64, (u64, crate::record::Record)> =
        Default::default();
    // Retention in force over time, and each segment's (created, last checkpoint) times,
    // for checking retention shreds.
    let mut policies = crate::retention::PolicyHistory::default();
    let mut seg_times: std::collections::BTreeMap<u64, (i64, i64)> = Default::default();
    for &id in &ids {
        let name = segment::segment_name(id);
        // Sealed-ness first: a segment sealed after its bytes were read would look cut
        // short (its sealing checkpoint arrived between the two).
        let sealed = storage.is_sealed(&name).unwrap_or(false);
        let head_bytes = match storage.read_at(&name, 0, segment::HEADER_LEN) {
            Ok(b) => b,
            Err(e) => {
                problem(&mut r, Some(id), None, None, e.to_string());
                continue;
            }
        };
        r.segments += 1;
        let is_last = Some(id) == last_id;
        let seg = Some(id);
        let header = match SegmentHeader::decode(&head_bytes) {
            Ok(h) => h,
            Err(_) if is_last && !sealed && being_created(&head_bytes, &meta.archive_id, id) => {
                // As the log's open finds it after a crash between creating the file
                // and syncing its header: no record was written to it. A record lost
                // with it was acknowledged from nowhere else, and a witness names it.
                r.notes.push(format!(
                    "segment {id}: {} bytes, shorter than its header: the writer stopped while creating it; it holds no record",
                    head_bytes.len()
                ));
                done += head_bytes.len() as u64;
                progress(done, total);
                continue;
            }
            Err(w) => {
                problem(&mut r, seg, Some(0), None, w);
                done += storage.len(&name).unwrap_or(head_bytes.len() as u64);
                progress(done, total);
                continue;
            }
        };
        for flaw in walk::header_flaws(&header, id, &meta.archive_id, Some(pos)) {
            problem(&mut r, seg, Some(0), None, flaw);
        }
        let hb = header.encode();
        let cipher = match master {
            Some(m) => match log::segment_cipher(storage, m, &meta.archive_id, id) {
                Ok(c) => c,
                Err(e) => {
                    problem(&mut r, seg, None, None, e.to_string());
                    None
                }
            },
            None => {
                // No shred record can be read without the master key, but a key file's
                // absence can still be seen.
                if matches!(
                    storage.len(&segment::key_name(id)),
                    Err(crate::storage::ReadError::NotFound { .. })
                ) {
                    r.keys_unchecked.push(id);
                }
                None
            }
        };
        let shredded = master.is_some() && cipher.is_none();
        if shredded {
            unreadable.entry(id).or_insert((0, u64::MAX, 0));
            r.keyless.insert(id);
        }
        // Continue from the header's claim, so a break is reported once.
        let walked = walk::walk_stored(storage, &name, &header, |w, step| {
            let step = match step {
                Ok(s) => s,
                Err(b) => {
                    problem(&mut r, seg, Some(b.offset), None, b.what);
                    return Ok(false);
                }
            };
            match step {
                Step::End { left: 0, .. } => return Ok(false),
                Step::End { offset, left } if is_last && !sealed => {
                    r.notes.push(format!("segment {id} offset {offset}: {left} bytes of an incomplete frame at the tail (write in progress or torn)"));
                    return Ok(false);
                }
                Step::End { offset, .. } => {
                    problem(&mut r, seg, Some(offset), None, "truncated frame".into());
                    return Ok(false);
                }
                Step::Record(f) => {
                    let (off, seq) = (Some(f.offset), f.seq);
                    r.records += 1;
                    if let Some(flaw) = &f.flaw {
                        problem(&mut r, seg, off, Some(seq), flaw.clone());
                    }
                    if let Some(c) = &cipher {
                        match walk::open_frame(c, &hb, &f) {
                            Err(what) => problem(&mut r, seg, off, Some(seq), what),
                            Ok(o) => {
                                policies.observe(&o.record);
                                r.last_time = Some(o.record.time.0);
                                if seq == unowed_from {
                                    r.first_unowed_time = Some(o.record.time.0);
                                }
                                if seq <= count_upto
                                    && matches!(o.record.content, NewRecord::Message(_))
                                {
                                    r.messages_upto += 1;
                                    if let Some(k) = &placement {
                                        r.placed_upto
                                            .entry(id)
                                            .or_default()
                                            .add(k, seq, id, f.offset);
                                    }
                                }
                                if let NewRecord::Event(EventRecord::Shred { segment, .. }) =
                                    o.record.content
                                {
                                    shred_records.entry(segment).or_insert((seq, o.record));
                                }
                            }
                        }
                    } else if shredded {
                        r.shredded_records += 1;
                        if seq <= count_upto {
                            r.unreadable_upto += 1;
                        }
                        if let Some((n, first, last)) = unreadable.get_mut(&id) {
                            *n += 1;
                            *first = (*first).min(seq);
                            *last = seq;
                        }
                    }
                    if seq == count_upto {
                        r.head_at_upto = Some(f.head);
                    }
                    r.last_seq = seq;
                }
                Step::Checkpoint { offset, cp, flaw } => {
                    let off = Some(offset);
                    r.checkpoints += 1;
                    if !segment::checkpoint_valid(public_key, &hb, &cp) {
                        problem(
                            &mut r,
                            seg,
                            off,
                            Some(cp.seq),
                            "checkpoint signature invalid".into(),
                        );
                    } else if let Some(flaw) = flaw {
                        problem(&mut r, seg, off, Some(cp.seq), flaw);
                        w.resync(cp.head);
                    } else {
                        r.reached.push((id, cp.seq, cp.head));
                        seg_times
                            .entry(id)
                            .or_insert((header.created_ms, cp.time_ms))
                            .1 = cp.time_ms;
                    }
                }
            }
            Ok::<bool, std::convert::Infallible>(true)
        });
        let walked = match walked {
            Ok(w) => w,
            Err(walk::WalkError::Read(e)) => {
                problem(&mut r, seg, None, None, e.to_string());
                continue;
            }
            Err(walk::WalkError::Stopped(never)) => match never {},
        };
        pos = walked.pos;
        if (sealed || !is_last) && !walked.sealed {
            problem(
                &mut r,
                seg,
                Some(walked.len),
                None,
                "sealed segment does not end with a sealing checkpoint (truncated)".into(),
            );
        }
        done += walked.len;
        progress(done, total);
    }
    r.head = pos.head.iter().map(|b| format!("{b:02x}")).collect();
    if !r.keys_unchecked.is_empty() {
        r.notes.push(format!(
            "{} segment(s) have no data key ({}): shredded by a signed record, or removed; \
             only a verify with the master key reads the shred records and tells which",
            r.keys_unchecked.len(),
            r.keys_unchecked
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    r.shred_named = shred_records.keys().copied().collect();
    // Destroying a key is legitimate only as a signed act recorded in the chain.
    for (segment, (records, first, last)) in unreadable {
        if let Some((seq, rec)) = shred_records.get(&segment) {
            let ctx = ShredContext {
                policies: &policies,
                times: seg_times.get(&segment).copied(),
            };
            check_shred(&mut r, segment, (records, first, last), *seq, rec, &ctx);
            continue;
        }
        {
            problem(
                &mut r,
                Some(segment),
                None,
                None,
                format!("data key missing without a signed shred record: {records} record(s) made unreadable (key file removed outside retention or erasure)"),
            );
        }
    }
    r
}

/// A shredded segment, with the signed record that authorised it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShredReport {
    pub segment: u64,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The seq of the signed shred record.
    pub by_seq: u64,
    pub time: String,
    pub reason: String,
    pub authority: String,
    pub actor: String,
}

/// What a retention shred is checked against besides its segment's frames.
struct ShredContext<'a> {
    /// The `retention.policy` records of the chain.
    policies: &'a crate::retention::PolicyHistory,
    /// The segment's creation time and its last checkpoint's time (both signed or
    /// authenticated, readable without the key).
    times: Option<(i64, i64)>,
}

/// Records the shred and, for a retention shred, checks that its authority describes
/// this segment (the seqs and record count the chain shows without the key), that the
/// newest record time it states lies within the segment's lifetime, that its due date is
/// that time plus the retention it states, that this retention is no shorter than any
/// recorded policy in force since the segment was written gave the class, and that the
/// record was written no earlier than the due date and not in the future.
fn check_shred(
    r: &mut VerifyReport,
    segment: u64,
    seen: (u64, u64, u64),
    seq: u64,
    rec: &crate::record::Record,
    ctx: &ShredContext<'_>,
) {
    let NewRecord::Event(EventRecord::Shred {
        reason,
        authority,
        actor,
        ..
    }) = &rec.content
    else {
        return;
    };
    let (records, first_seq, last_seq) = seen;
    r.shreds.push(ShredReport {
        segment,
        records,
        first_seq,
        last_seq,
        by_seq: seq,
        time: rec.time.to_string(),
        reason: reason.clone(),
        authority: authority.clone(),
        actor: actor.clone(),
    });
    if reason != crate::retention::EXPIRY_REASON {
        return;
    }
    let mut bad = |what: String| {
        r.problems.push(Problem {
            segment: Some(segment),
            offset: None,
            seq: Some(seq),
            what: format!("retention shred record: {what}"),
        })
    };
    let a: crate::retention::ExpiryAuthority = match serde_json::from_str(authority) {
        Ok(a) => a,
        Err(e) => return bad(format!("its authority is not readable ({e})")),
    };
    if (a.first_seq, a.last_seq, a.records) != (first_seq, last_seq, records) {
        bad(format!(
            "it names seq {}..={} ({} records) but the segment holds seq {first_seq}..={last_seq} ({records} records)",
            a.first_seq, a.last_seq, a.records
        ));
    }
    match crate::time::Timestamp::parse(&a.due) {
        Ok(due) if rec.time >= due => {}
        Ok(due) => bad(format!(
            "written at {} before the due date {due} it states",
            rec.time
        )),
        Err(_) => bad(format!("its due date {:?} is not a time", a.due)),
    }
    let now = crate::time::Timestamp::now();
    if rec.time.0 > now.0 + 86_400_000 {
        bad(format!(
            "written at {}, in the future (a clock set forward makes records look due)",
            rec.time
        ));
    }
    let (Ok(span), Ok(newest)) = (
        crate::retention::Span::parse(&a.retention),
        crate::time::Timestamp::parse(&a.newest),
    ) else {
        return bad(format!(
            "its retention {:?} or newest time {:?} cannot be read",
            a.retention, a.newest
        ));
    };
    if let Some((created, sealed)) = ctx.times {
        // A minute's slack below: a record's time never goes back, but the header's
        // creation time is the raw clock.
        if newest.0 < created - 60_000 || newest.0 > sealed {
            bad(format!(
                "it states the newest record at {newest}, outside the segment's lifetime {}..{}",
                crate::time::Timestamp(created),
                crate::time::Timestamp(sealed)
            ));
        }
    }
    if span.due(newest).map(|d| d.to_string()) != Some(a.due.clone()) {
        bad(format!(
            "its due date {} is not the newest record's time {newest} plus its retention {span}",
            a.due
        ));
    }
    match ctx.policies.longest_for(&a.class, first_seq, seq) {
        Some((longest, policy_seq)) => {
            if !span.at_least(longest) {
                bad(format!(
                    "class {} was kept {longest} (retention policy record seq {policy_seq}) since the segment was written, but it was shredded under {span}",
                    a.class
                ));
            }
        }
        // Expiry records the policy in force before it shreds anything, and keeps a
        // class that policy does not name: a class no recorded policy names (or one
        // kept forever, as the permanent class holding legal holds is) was never due.
        None => bad(format!(
            "it names class {:?}, which no retention policy recorded before it gives a retention",
            a.class
        )),
    }
}

/// [`verify`], then the archive against its witness (see [`crate::witness`]): every
/// witnessed checkpoint must still be reached by the log, or records were cut from it,
/// and the witness directory must hold no other archive's witness but those of the
/// other node chains in the archive's bucket.
/// The witness is read first: anything in it was synced to the log before, so a writer
/// running meanwhile cannot make a checkpoint look lost.
pub fn verify_witnessed(
    dir: &Path,
    master_key: Option<&MasterKey>,
    public_key: &VerifyingKey,
    witness_dir: &Path,
    progress: impl FnMut(u64, u64),
) -> VerifyReport {
    let storage = crate::bucket::storage_for_dir(dir);
    verify_witnessed_in(
        dir,
        storage.as_ref(),
        master_key,
        public_key,
        witness_dir,
        progress,
    )
}

/// [`verify_witnessed`] reading the archive's files through `storage`.
pub fn verify_witnessed_in(
    dir: &Path,
    storage: &dyn Storage,
    master_key: Option<&MasterKey>,
    public_key: &VerifyingKey,
    witness_dir: &Path,
    progress: impl FnMut(u64, u64),
) -> VerifyReport {
    let archive_id = match log::read_meta(storage) {
        Ok(Some(meta)) => Some(meta.archive_id),
        _ => None,
    };
    let witnessed = archive_id.map(|id| crate::witness::read_witness(witness_dir, &id));
    let mut r = verify_in(dir, storage, master_key, public_key, progress);
    match witnessed {
        Some(Ok(w)) => check_witness(&mut r, w, public_key),
        Some(Err(e)) => r.problems.push(Problem {
            segment: None,
            offset: None,
            seq: None,
            what: e.to_string(),
        }),
        // verify has reported the missing or unreadable archive.meta.
        None => {}
    }
    if let Some(id) = archive_id {
        check_other_witnesses(&mut r, dir, witness_dir, &id);
    }
    r
}

/// Reports each witness file in `witness_dir` that is not this archive's, unless it is
/// another node chain's in the archive's bucket (nodes may share a witness directory).
/// Whoever holds the keys can replace the whole archive by a new one, under a new id,
/// keeping only the records they choose: the new archive's witness starts empty and the
/// new log reaches all of it. The old archive's witness, left beside it, is then all
/// that shows the records dropped.
fn check_other_witnesses(
    r: &mut VerifyReport,
    dir: &Path,
    witness_dir: &Path,
    archive_id: &[u8; 16],
) {
    let problem = |r: &mut VerifyReport, what: String| {
        r.problems.push(Problem {
            segment: None,
            offset: None,
            seq: None,
            what,
        })
    };
    let files = match crate::witness::witness_files(witness_dir) {
        Ok(f) => f,
        Err(e) => {
            return problem(
                r,
                format!(
                    "the witness directory cannot be listed for other archives' witnesses: {e}"
                ),
            )
        }
    };
    // The bucket is asked only when there is something to tell apart.
    let mut peers: Option<Result<Vec<crate::bucket::PeerArchive>, String>> = None;
    for file in files {
        let id = match file.archive_id {
            Ok(id) if id == *archive_id => continue,
            Ok(id) => id,
            Err(e) => {
                problem(
                    r,
                    format!(
                        "the witness directory holds a file that cannot be read as a witness: {e}"
                    ),
                );
                continue;
            }
        };
        let peers = peers.get_or_insert_with(|| match crate::bucket::registered(dir) {
            Some(remote) => crate::bucket::peer_archive_ids(&remote),
            None => Ok(Vec::new()),
        });
        let peer = peers
            .as_ref()
            .ok()
            .and_then(|p| p.iter().find(|p| p.archive_id == id));
        if let Some(peer) = peer {
            r.notes.push(format!(
                "the witness directory also holds {}, the witness of {} in the bucket",
                file.path.display(),
                match &peer.node {
                    Some(n) => format!("node {n}'s chain"),
                    None => "the unnamed node's chain".into(),
                }
            ));
            continue;
        }
        let held = match crate::witness::read_witness_file(&file.path) {
            Ok((_, w)) => match w.entries.iter().map(|e| e.checkpoint.seq).max() {
                Some(newest) => format!(
                    "{} checkpoint(s), the newest at seq {newest}",
                    w.entries.len()
                ),
                None => "no checkpoint yet".into(),
            },
            Err(e) => format!("unreadable: {e}"),
        };
        let peers_unknown = match peers {
            Err(e) => format!(" (the bucket's other node chains could not be read: {e})"),
            Ok(_) => String::new(),
        };
        problem(
            r,
            format!(
                "the witness directory also holds {}, the witness of archive {} ({held}); it is neither this archive ({}) nor another node chain in its bucket: this archive may have been started afresh in place of that one{peers_unknown}",
                file.path.display(),
                crate::witness::hex_id(&id),
                crate::witness::hex_id(archive_id),
            ),
        );
    }
}

fn check_witness(
    r: &mut VerifyReport,
    witnessed: crate::witness::Witnessed,
    public_key: &VerifyingKey,
) {
    if witnessed.torn_bytes > 0 {
        r.notes.push(format!(
            "the witness ends with {} bytes of an entry cut short (a crash while writing it)",
            witnessed.torn_bytes
        ));
    }
    check_witness_entries(r, &witnessed.entries, public_key, false);
}

/// Checks witnessed checkpoints against a verified chain: each must be signed and
/// reached by the log. With `unstored_is_note`, an entry past the log's end is a note,
/// not a problem: the chain was read from a bucket that holds only sealed segments, and
/// the witnessed checkpoint is in the writer's active one (see `docs/object-storage.md`).
pub fn check_witness_entries(
    r: &mut VerifyReport,
    entries: &[crate::witness::WitnessEntry],
    public_key: &VerifyingKey,
    unstored_is_note: bool,
) {
    let mut newest = 0;
    let mut unstored = 0;
    for e in entries {
        let cp = &e.checkpoint;
        if !e.signature_valid(public_key) {
            r.problems.push(Problem {
                segment: Some(e.segment),
                offset: None,
                seq: Some(cp.seq),
                what: "witness entry signature invalid (the witness was changed)".into(),
            });
            continue;
        }
        newest = newest.max(cp.seq);
        if r.reached
            .iter()
            .any(|(s, q, h)| *s == e.segment && *q == cp.seq && *h == cp.head)
        {
            continue;
        }
        if unstored_is_note && cp.seq > r.last_seq {
            unstored = unstored.max(cp.seq);
            continue;
        }
        let lost = if cp.seq > r.last_seq {
            format!(
                "records {}..={} were removed (the log ends at seq {})",
                r.last_seq + 1,
                cp.seq,
                r.last_seq
            )
        } else {
            "the log no longer reaches it intact (records removed, replaced or reordered)".into()
        };
        r.problems.push(Problem {
            segment: Some(e.segment),
            offset: None,
            seq: Some(cp.seq),
            what: format!(
                "witnessed {}checkpoint missing from the archive: {lost}",
                if cp.sealed { "sealing " } else { "" }
            ),
        });
    }
    if unstored > 0 {
        r.notes.push(format!(
            "witnessed through seq {unstored}; the records after seq {} are in a segment not in the bucket yet",
            r.last_seq
        ));
    } else if r.last_seq > newest {
        r.notes.push(format!(
            "{} record(s) after seq {newest} are not witnessed yet (written after the last checkpoint)",
            r.last_seq - newest
        ));
    }
}

/// Whether `bytes`, shorter than a segment header, are the start of segment `id`'s
/// header as the writer writes it: what a crash while creating the segment leaves.
fn being_created(bytes: &[u8], archive_id: &[u8; 16], id: u64) -> bool {
    let start = header_start(archive_id, id);
    let n = bytes.len().min(start.len());
    bytes.len() < segment::HEADER_LEN && bytes.get(..n) == start.get(..n)
}

/// What segment `id`'s header begins with whenever it is written: magic, version,
/// archive id and segment number.
fn header_start(archive_id: &[u8; 16], id: u64) -> Vec<u8> {
    let mut start = Vec::with_capacity(segment::HEADER_LEN);
    start.extend_from_slice(segment::SEGMENT_MAGIC);
    start.extend_from_slice(&segment::SEGMENT_VERSION.to_be_bytes());
    start.extend_from_slice(archive_id);
    start.extend_from_slice(&id.to_be_bytes());
    start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogLimits, LogWriter};
    use crate::record::tests::arb_new_record;
    use crate::record::NewRecord;
    use crate::segment::{Frame, Parsed, HEADER_LEN};
    use crate::storage::MemStorage;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn limits() -> LogLimits {
        LogLimits {
            segment_max_bytes: 1 << 20,
            segment_max_age: Duration::from_secs(3600),
            checkpoint_every: 3,
        }
    }

    /// Two sealed segments written by two writer lifetimes.
    fn build(batches: &[Vec<NewRecord>]) -> (MemStorage, MasterKey, SigningKey) {
        let s = MemStorage::new();
        let m = MasterKey::from_bytes([42; 32]);
        let k = SigningKey::from_bytes(&[43; 32]);
        for half in batches.chunks(batches.len().div_ceil(2).max(1)) {
            let (mut w, cut) =
                LogWriter::open(Arc::new(s.clone()), m.clone(), k.clone(), limits()).unwrap();
            assert!(cut.is_none());
            for b in half {
                w.append_batch(b.clone()).unwrap();
            }
            w.finish().unwrap();
        }
        (s, m, k)
    }

    /// (start, end) of every frame in a segment.
    fn frames(bytes: &[u8]) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        let mut at = HEADER_LEN;
        while let Parsed::Frame(f, next) = segment::parse_frame(bytes, at) {
            out.push((at, next, matches!(f, Frame::Record { .. })));
            at = next;
        }
        out
    }

    fn check(s: &MemStorage, m: &MasterKey, k: &SigningKey) -> VerifyReport {
        verify_storage(s, Some(m), &k.verifying_key(), |_, _| {})
    }

    /// `n` audit records of `action`.
    fn audits(n: usize, action: &str) -> Vec<NewRecord> {
        (0..n)
            .map(|i| {
                NewRecord::Event(crate::record::EventRecord::Audit {
                    actor: "o".into(),
                    action: action.into(),
                    detail: i.to_string(),
                })
            })
            .collect()
    }

    fn arb_batches() -> impl Strategy<Value = Vec<Vec<NewRecord>>> {
        proptest::collection::vec(proptest::collection::vec(arb_new_record(), 1..4), 2..5)
    }

    #[test]
    fn clean_archive_verifies_with_and_without_key() {
        let (s, m, k) = build(&[vec![]]);
        assert!(check(&s, &m, &k).is_clean());
        let recs = audits(5, "view");
        let (s, m, k) = build(&[recs.clone(), recs]);
        let r = check(&s, &m, &k);
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!((r.records, r.last_seq, r.segments), (10, 10, 2));
        assert!(r.checkpoints >= 4);
        let r2 = verify_storage(&s, None, &k.verifying_key(), |_, _| {});
        assert!(r2.is_clean());
        assert_eq!(r2.head, r.head);
        // A different signing key fails every checkpoint.
        let other = SigningKey::from_bytes(&[1; 32]);
        assert!(!verify_storage(&s, None, &other.verifying_key(), |_, _| {}).is_clean());
        // A wrong master key is reported clearly.
        let wrong = check(&s, &MasterKey::from_bytes([0; 32]), &k);
        assert!(
            wrong.problems[0].what.contains("master key"),
            "{:?}",
            wrong.problems
        );
    }

    /// A crash between creating the next segment and syncing its header leaves it
    /// shorter than a header: the log's open starts it again, and verify says so and
    /// finds nothing wrong. Cut short anywhere else, or filled with other bytes, it is
    /// a problem.
    #[test]
    fn a_segment_cut_short_while_being_created_is_no_problem() {
        let recs = audits(5, "view");
        let (s, m, k) = build(&[recs.clone(), recs]);
        let ids = log::segment_ids(&s).unwrap();
        let next = ids.last().copied().unwrap() + 1;
        let archive_id = log::read_meta(&s).unwrap().unwrap().archive_id;
        let start = header_start(&archive_id, next);
        for len in [0, 7, 30] {
            let name = segment::segment_name(next);
            let _ = s.remove(&name);
            s.create(&name).unwrap().append(&start[..len]).unwrap();
            let r = check(&s, &m, &k);
            assert!(r.is_clean(), "{len}: {:?}", r.problems);
            assert!(
                r.notes.iter().any(|n| n.contains("while creating it")),
                "{:?}",
                r.notes
            );
        }
        // Other bytes, or a segment after it, are not a creation cut short.
        let name = segment::segment_name(next);
        s.remove(&name).unwrap();
        s.create(&name).unwrap().append(b"not a header").unwrap();
        assert!(!check(&s, &m, &k).is_clean());
        s.remove(&name).unwrap();
        s.create(&name).unwrap().append(&start[..7]).unwrap();
        s.create(&segment::segment_name(next + 1))
            .unwrap()
            .append(&start[..7])
            .unwrap();
        let r = check(&s, &m, &k);
        assert!(
            r.problems
                .iter()
                .any(|p| p.segment == Some(next) && p.what.contains("shorter than its header")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn shredded_segment_still_verifies_its_chain() {
        let recs = audits(4, "a");
        let seg = 1;
        let shred = vec![NewRecord::Event(crate::record::EventRecord::Shred {
            segment: seg,
            reason: "erasure ordered".into(),
            authority: "court order 2026-17".into(),
            actor: "custos".into(),
        })];
        // Two sessions: segment 1 holds both batches, segment 2 the shred record.
        let (s, m, k) = build(&[recs.clone(), recs.clone(), shred]);
        assert_eq!(log::segment_ids(&s).unwrap()[0], seg);
        s.remove(&segment::key_name(seg)).unwrap();
        let r = check(&s, &m, &k);
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.shredded_records, 8);
        // The same key destroyed without a shred record is tampering, located.
        let (s, m, k) = build(&[recs.clone(), recs]);
        s.remove(&segment::key_name(seg)).unwrap();
        let r = check(&s, &m, &k);
        assert!(
            r.problems.iter().any(|p| p.segment == Some(seg)
                && p.what.contains("without a signed shred record")
                && p.what.contains("4 record(s)")),
            "{:?}",
            r.problems
        );
        // Without the master key the tampering cannot be told from a shred, but the
        // segment without a key is named, not passed over.
        let r = verify_storage(&s, None, &k.verifying_key(), |_, _| {});
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.keys_unchecked, vec![seg]);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("have no data key (1)") && n.contains("master key")),
            "{:?}",
            r.notes
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        #[test]
        fn any_byte_change_is_located(batches in arb_batches(), which in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let (s, m, k) = build(&batches);
            let ids = log::segment_ids(&s).unwrap();
            let seg = ids[which.index(ids.len())];
            let name = segment::segment_name(seg);
            let orig = s.read(&name).unwrap();
            let p = pos.index(orig.len());
            s.tamper(&name, |b| b[p] ^= xor);
            let r = check(&s, &m, &k);
            prop_assert!(!r.is_clean(), "flip at {} undetected", p);
            let first = &r.problems[0];
            prop_assert_eq!(first.segment, Some(seg));
            let off = first.offset.unwrap_or(u64::MAX) as usize;
            if p < HEADER_LEN {
                prop_assert!(off <= HEADER_LEN, "header flip reported at {}", off);
            } else {
                let (start, _, _) = frames(&orig).into_iter().find(|&(a, b, _)| a <= p && p < b).unwrap();
                prop_assert_eq!(off, start, "flip at {} reported as {:?}", p, first);
            }
        }

        #[test]
        fn removed_duplicated_or_reordered_record_is_located(batches in arb_batches(), which in any::<prop::sample::Index>(), pick in any::<prop::sample::Index>(), op in 0u8..3) {
            let (s, m, k) = build(&batches);
            let ids = log::segment_ids(&s).unwrap();
            let seg = ids[which.index(ids.len())];
            let name = segment::segment_name(seg);
            let orig = s.read(&name).unwrap();
            let recs: Vec<(usize, usize, bool)> = frames(&orig).into_iter().filter(|f| f.2).collect();
            let i = pick.index(recs.len());
            let (a, b, _) = recs[i];
            let expected_at = match op {
                0 => {
                    s.tamper(&name, |v| { v.drain(a..b); });
                    a
                }
                1 => {
                    let copy = orig[a..b].to_vec();
                    s.tamper(&name, |v| { v.splice(b..b, copy); });
                    b
                }
                _ => {
                    prop_assume!(i + 1 < recs.len());
                    let (c, d, _) = recs[i + 1];
                    prop_assume!(c == b);
                    let mut swapped = orig[c..d].to_vec();
                    swapped.extend_from_slice(&orig[a..b]);
                    s.tamper(&name, |v| { v.splice(a..d, swapped); });
                    a
                }
            };
            let r = check(&s, &m, &k);
            prop_assert!(!r.is_clean());
            let first = &r.problems[0];
            prop_assert_eq!(first.segment, Some(seg));
            prop_assert_eq!(first.offset, Some(expected_at as u64), "{:?}", first);
        }
    }
}
