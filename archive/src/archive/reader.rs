//! [`ArchiveReader`]: read-only access from any process — records by position, the
//! chain in order, the index's coverage and search.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::Aes256Gcm;

use crate::index::{BlindIndexReader, IndexError};

/// Bytes read at a record's offset in one go: its length and, for most records, all of
/// it (a chat message's frame is a few hundred bytes).
const FIRST_READ: usize = 4096;
use crate::keys::MasterKey;
use crate::log::{self, Meta};
use crate::query;
use crate::record::Record;
use crate::segment::{self, Frame, Hash, Parsed, SegmentHeader, HEADER_LEN};
use crate::storage::Storage;
use crate::walk::{self, ChainPos, Step};

use super::*;

/// How far the index covers the log: every message up to seq `through`, the last of
/// them in log segment `segment` (`None` when the index holds nothing), `docs`
/// messages in all as its commit counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexReach {
    pub through: u64,
    pub segment: Option<u64>,
    /// The mark read, checked against the chain.
    pub mark: crate::index::Mark,
}

/// A record with the data that ties it to the signed chain (what an export
/// needs to prove one record without revealing others).
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub seq: u64,
    pub segment: u64,
    pub offset: u64,
    pub content_hash: Hash,
    pub ciphertext_hash: Hash,
    pub leaf: Hash,
    /// The chain head after this record.
    pub head: Hash,
    /// Salt and record; `None` when the segment's key was destroyed.
    pub salt: Option<[u8; segment::SALT_LEN]>,
    pub record: Option<Record>,
}

impl ChainEntry {
    /// The entry for a walked record frame of segment `id`, opened with `cipher` when
    /// given (`salt` and `record` are `None` otherwise).
    pub(super) fn of_frame(
        id: u64,
        r: &walk::RecordFrame<'_>,
        cipher: Option<&Aes256Gcm>,
        hb: &[u8; HEADER_LEN],
    ) -> Result<ChainEntry, ReadError> {
        let (salt, record) = match cipher {
            Some(c) => {
                let o = walk::open_frame(c, hb, r).map_err(|what| ReadError::Corrupt {
                    segment: id,
                    offset: r.offset,
                    what,
                })?;
                (Some(o.salt), Some(o.record))
            }
            None => (None, None),
        };
        Ok(ChainEntry {
            seq: r.seq,
            segment: id,
            offset: r.offset,
            content_hash: r.content_hash,
            ciphertext_hash: r.ciphertext_hash,
            leaf: r.leaf,
            head: r.head,
            salt,
            record,
        })
    }
}

/// A segment's header bytes (the AAD prefix) and its cipher, `None` if shredded.
pub(super) type SegmentAccess = ([u8; HEADER_LEN], Option<Aes256Gcm>);

/// Read-only access to an archive, safe beside a serving process: it takes no
/// lock and stops cleanly at the last complete record.
pub struct ArchiveReader {
    pub(super) dir: PathBuf,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) master: MasterKey,
    pub(super) meta: Meta,
    /// Opened at the first search, then shared: searches run beside each other, the
    /// lock is held only to open it.
    pub(super) index: Mutex<Option<std::sync::Arc<BlindIndexReader>>>,
    pub(super) segments: Mutex<HashMap<u64, SegmentAccess>>,
}

impl ArchiveReader {
    /// Opens the archive in `dir` for reading; checks the master key.
    pub fn open(dir: &Path, master_key: &MasterKey) -> Result<ArchiveReader, ReadError> {
        let storage = crate::bucket::storage_for_dir(dir);
        ArchiveReader::from_parts(dir.to_path_buf(), storage, master_key.clone())
    }

    /// Opens the archive in `dir` for reading through `storage` (the directory alone,
    /// or the directory in front of a bucket: [`crate::bucket::storage_for`]).
    pub fn open_in(
        dir: &Path,
        storage: Arc<dyn Storage>,
        master_key: &MasterKey,
    ) -> Result<ArchiveReader, ReadError> {
        ArchiveReader::from_parts(dir.to_path_buf(), storage, master_key.clone())
    }

    /// Opens another chain readable with this one's master key (another node's, read
    /// from the bucket through `dir`).
    pub fn open_other(&self, dir: &Path) -> Result<ArchiveReader, ReadError> {
        ArchiveReader::open(dir, &self.master)
    }

    /// The local directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where its files are read from.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    pub(crate) fn from_parts(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        master: MasterKey,
    ) -> Result<ArchiveReader, ReadError> {
        let meta = log::open_meta(storage.as_ref(), &master)?;
        Ok(ArchiveReader {
            dir,
            storage,
            master,
            meta,
            index: Mutex::new(None),
            segments: Mutex::new(HashMap::new()),
        })
    }

    /// Searches (syntax in docs/search-syntax.md). Returns the newest `limit`
    /// matching messages in chronological order, bodies decrypted from the log.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        let q = query::parse(query)?;
        let located = self.index(BlindIndexReader::open)?.search(&q, limit)?;
        self.hits_at(&located)
    }

    /// The index's reader, opened with `open` on first use and kept.
    fn index(
        &self,
        open: fn(&Path, &MasterKey, &[u8; 16]) -> Result<BlindIndexReader, IndexError>,
    ) -> Result<std::sync::Arc<BlindIndexReader>, IndexError> {
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = guard.as_ref() {
            return Ok(ix.clone());
        }
        let ix = std::sync::Arc::new(open(
            &index_dir(&self.dir),
            &self.master,
            &self.meta.archive_id,
        )?);
        *guard = Some(ix.clone());
        Ok(ix)
    }

    /// The records the index placed, newest first, as hits.
    fn hits_at(&self, located: &[crate::index::Located]) -> Result<Vec<Hit>, SearchError> {
        let mut hits = Vec::with_capacity(located.len());
        for l in located.iter().rev() {
            let rec = match self.record_at(l.segment, l.offset) {
                // Crypto-shredded by a signed shred record: the record no longer exists
                // to show, though its document may remain in the index.
                Err(ReadError::Shredded { .. }) => continue,
                other => other?,
            };
            if rec.seq.0 != l.seq {
                return Err(ReadError::Corrupt {
                    segment: l.segment,
                    offset: l.offset,
                    what: format!("index says seq {}, log has {}", l.seq, rec.seq.0),
                }
                .into());
            }
            hits.extend(Hit::from_record(rec));
        }
        Ok(hits)
    }

    /// Drops the cached header and cipher of segment `id` (after its key was destroyed).
    pub(super) fn forget_segment(&self, id: u64) {
        self.segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(super) fn segment(&self, id: u64) -> Result<SegmentAccess, ReadError> {
        let mut cache = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(&id) {
            return Ok(s.clone());
        }
        let hb = self
            .storage
            .read_at(&segment::segment_name(id), 0, HEADER_LEN)?;
        let header = SegmentHeader::decode(&hb).map_err(|what| ReadError::Corrupt {
            segment: id,
            offset: 0,
            what,
        })?;
        let cipher = log::segment_cipher(
            self.storage.as_ref(),
            &self.master,
            &self.meta.archive_id,
            id,
        )?;
        let entry = (header.encode(), cipher);
        cache.insert(id, entry.clone());
        Ok(entry)
    }

    /// Reads and decrypts the record frame at `offset` of segment `segment`.
    pub fn record_at(&self, segment_id: u64, offset: u64) -> Result<Record, ReadError> {
        let (hb, cipher) = self.segment(segment_id)?;
        let name = segment::segment_name(segment_id);
        let corrupt = |what: &str| ReadError::Corrupt {
            segment: segment_id,
            offset,
            what: what.to_string(),
        };
        // One read covers most records whole; a longer one is read again, exactly.
        let mut frame = self.storage.read_at(&name, offset, FIRST_READ)?;
        let len = match frame.get(..4) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => return Err(corrupt("frame beyond end of segment")),
        };
        if len > segment::MAX_FRAME {
            return Err(corrupt("frame too long"));
        }
        let whole = 4 + len as usize;
        if frame.len() < whole {
            frame = self.storage.read_at(&name, offset, whole)?;
        } else {
            frame.truncate(whole);
        }
        match segment::parse_frame(&frame, 0) {
            Parsed::Frame(
                Frame::Record {
                    seq,
                    content_hash,
                    nonce,
                    ciphertext,
                },
                _,
            ) => {
                let cipher = cipher.ok_or(ReadError::Shredded {
                    segment: segment_id,
                })?;
                walk::open_record(&cipher, &hb, seq, &content_hash, nonce, ciphertext)
                    .map(|o| o.record)
                    .map_err(|what| corrupt(&what))
            }
            _ => Err(corrupt("not a record frame")),
        }
    }

    /// The seq of the signed shred record in the chain that names `segment`, read from
    /// seq `from` on (a shred record is written after the segment it names); `None`
    /// when there is none. A data key is destroyed legitimately only after such a record.
    pub fn shred_record_naming(&self, segment: u64, from: u64) -> Result<Option<u64>, ReadError> {
        let mut found = None;
        self.scan(from, |e| {
            if let Some(Record {
                content:
                    crate::record::NewRecord::Event(crate::record::EventRecord::Shred {
                        segment: named,
                        ..
                    }),
                ..
            }) = &e.record
            {
                if *named == segment {
                    found = Some(e.seq);
                    return Err(Stop::Done);
                }
            }
            Ok(())
        })
        .or_else(|e| match e {
            Stop::Done => Ok(()),
            Stop::Failed(e) => Err(e),
        })?;
        Ok(found)
    }

    /// Records with seq in `range`, in order (shredded records are skipped).
    pub fn records(&self, range: std::ops::RangeInclusive<u64>) -> Result<Vec<Record>, ReadError> {
        let mut out = Vec::new();
        self.scan(*range.start(), |e| {
            if e.seq > *range.end() {
                return Err(Stop::Done);
            }
            out.extend(e.record);
            Ok(())
        })
        .or_else(|e| match e {
            Stop::Done => Ok(()),
            Stop::Failed(e) => Err(e),
        })?;
        Ok(out)
    }

    /// Calls `f` with every record from seq `from` on, with its chain data,
    /// stopping cleanly at the last complete frame. The `head` of each entry
    /// is exact only when `from` is 1 (otherwise the scan skips whole
    /// segments and starts from the segment header's head). An error from `f`
    /// stops the scan and is returned.
    pub fn scan<E: From<ReadError>>(
        &self,
        from: u64,
        f: impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        self.scan_chain(from, true, f)
    }

    /// [`ArchiveReader::scan`], decrypting records only when `decrypt` (otherwise
    /// `salt` and `record` are `None`: the chain position alone is wanted).
    fn scan_chain<E: From<ReadError>>(
        &self,
        from: u64,
        decrypt: bool,
        mut f: impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        // Where the previous segment walked left the chain (unknown for the first).
        let mut after: Option<ChainPos> = None;
        for (i, &id) in ids.iter().enumerate() {
            // Skip a segment wholly before `from`: the next one starts at or before it.
            if let Some(&next) = ids.get(i + 1) {
                let hb = self
                    .storage
                    .read_at(&segment::segment_name(next), 0, HEADER_LEN)
                    .map_err(ReadError::from)?;
                if let Ok(h) = SegmentHeader::decode(&hb) {
                    if h.first_seq <= from {
                        continue;
                    }
                }
            }
            let name = segment::segment_name(id);
            let bytes = self
                .storage
                .read_at(&name, 0, HEADER_LEN)
                .map_err(ReadError::from)?;
            let corrupt = |offset: u64, what: String| ReadError::Corrupt {
                segment: id,
                offset,
                what,
            };
            let header = match SegmentHeader::decode(&bytes) {
                Ok(h) => h,
                // A segment whose header is still being written holds no record yet.
                Err(_) if bytes.len() < HEADER_LEN => continue,
                Err(what) => return Err(corrupt(0, what).into()),
            };
            if let Some(flaw) = walk::header_flaws(&header, id, &self.meta.archive_id, after)
                .into_iter()
                .next()
            {
                return Err(corrupt(0, flaw).into());
            }
            let (hb, cipher) = self.segment(id)?;
            // The segment is read a window at a time, not whole.
            let walked = walk::walk_stored(self.storage.as_ref(), &name, &header, |_, step| {
                match step.map_err(|b| Halt::Read(corrupt(b.offset, b.what)))? {
                    // A write in progress (or a torn tail `verify` reports) ends the walk.
                    Step::End { .. } => Ok(false),
                    Step::Checkpoint { offset, flaw, .. } => match flaw {
                        Some(flaw) => Err(Halt::Read(corrupt(offset, flaw))),
                        None => Ok(true),
                    },
                    Step::Record(r) => {
                        if let Some(flaw) = r.flaw {
                            return Err(Halt::Read(corrupt(r.offset, flaw)));
                        }
                        if r.seq >= from {
                            let cipher = cipher.as_ref().filter(|_| decrypt);
                            let entry =
                                ChainEntry::of_frame(id, &r, cipher, &hb).map_err(Halt::Read)?;
                            f(entry).map_err(Halt::Caller)?;
                        }
                        Ok(true)
                    }
                }
            });
            let walked = walked.map_err(|h| match h {
                walk::WalkError::Read(e) => E::from(e.into()),
                walk::WalkError::Stopped(Halt::Read(e)) => E::from(e),
                walk::WalkError::Stopped(Halt::Caller(e)) => e,
            })?;
            after = Some(walked.pos);
        }
        Ok(())
    }

    /// The archive's random identifier.
    pub fn archive_id(&self) -> [u8; 16] {
        self.meta.archive_id
    }

    /// The chain head after record `seq`, or `None` if the log has no such record.
    pub fn head_at(&self, seq: u64) -> Result<Option<Hash>, ReadError> {
        Ok(self.place_of(seq)?.map(|(head, _)| head))
    }

    /// The chain head after record `seq` and the segment the log holds it in.
    fn place_of(&self, seq: u64) -> Result<Option<(Hash, u64)>, ReadError> {
        let mut found = None;
        let r = self.scan_chain(seq, false, |e| {
            if e.seq == seq {
                found = Some((e.head, e.segment));
            }
            Err(Stop::Done)
        });
        match r {
            Ok(()) | Err(Stop::Done) => Ok(found),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    /// The seq of the last complete record in the log (0 for an empty log). Reads
    /// only the last segment or two, without decrypting.
    pub fn chain_end(&self) -> Result<u64, ReadError> {
        let mut last = 0;
        // A start past every record makes the scan skip to the last segment.
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        for &id in ids.iter().rev() {
            let hb = self
                .storage
                .read_at(&segment::segment_name(id), 0, HEADER_LEN)?;
            if let Ok(h) = SegmentHeader::decode(&hb) {
                // Records before this segment end at first_seq - 1; the walk adds its own.
                last = h.first_seq.saturating_sub(1);
                self.scan_chain(h.first_seq, false, |e| {
                    last = last.max(e.seq);
                    Ok::<(), ReadError>(())
                })?;
                break;
            }
        }
        Ok(last)
    }

    /// How far the index on disk covers this log: its authenticated mark checked
    /// against the chain. `Err` says why none of it can be used.
    pub fn index_coverage(&self) -> Result<u64, String> {
        Ok(self.index_reach()?.through)
    }

    /// [`ArchiveReader::index_coverage`], with the segment that holds the mark's
    /// record. That segment is known from the chain, not from any header: the chain
    /// head after it matched the mark's, so every record before it is in the index
    /// and every record after it lies in that segment or a later one.
    pub(crate) fn index_reach(&self) -> Result<IndexReach, String> {
        let mark =
            crate::index::read_mark(&index_dir(&self.dir), &self.master, &self.meta.archive_id)
                .map_err(|e| e.to_string())?;
        self.reach_of(mark)
    }

    /// How far an index commit carrying `mark` covers this log.
    fn reach_of(&self, mark: crate::index::Mark) -> Result<IndexReach, String> {
        if mark.through == 0 {
            return Ok(IndexReach {
                through: 0,
                segment: None,
                mark,
            });
        }
        match self.place_of(mark.through) {
            Ok(Some((head, segment))) if head == mark.head => Ok(IndexReach {
                through: mark.through,
                segment: Some(segment),
                mark,
            }),
            Ok(Some(_)) => Err(format!(
                "the index's chain head at seq {} is not this log's",
                mark.through
            )),
            Ok(None) => Err(format!(
                "the index claims seq {} but the log has no such record",
                mark.through
            )),
            Err(e) => Err(format!("cannot check the index against the log: {e}")),
        }
    }

    /// [`ArchiveReader::search`], saying which records the index did not cover:
    /// those after its mark, or all of them when the index cannot be used (then no
    /// hits are returned: they would come from another log).
    pub fn search_covered(&self, query: &str, limit: usize) -> Result<Searched, SearchError> {
        let q = query::parse(query)?;
        // The mark and the documents searched are one commit's: a commit made meanwhile
        // (an emptied index's, by a reindex in another process) is not searched under
        // the mark of the one before it.
        // A reader that finds no index makes none.
        let index = self.index(BlindIndexReader::open_existing);
        let loaded = index.map_err(|e| e.to_string()).and_then(|index| {
            let commit = index.load_commit().map_err(|e| e.to_string())?;
            let through = self.reach_of(commit.mark()?)?.through;
            Ok((index, commit, through))
        });
        let end = self.chain_end()?;
        match loaded {
            Ok((index, commit, through)) => Ok(Searched {
                hits: self.hits_at(&index.search_commit(&commit, &q, limit)?)?,
                uncovered: Uncovered::after(through, end, "not yet indexed"),
            }),
            Err(why) => Ok(Searched {
                hits: Vec::new(),
                uncovered: Uncovered::after(0, end, &why),
            }),
        }
    }
}

/// Stops a scan early without an error.
/// Why a walk of a segment stopped early: reading failed, or the caller's function did.
enum Halt<E> {
    Read(ReadError),
    Caller(E),
}

pub(super) enum Stop {
    Done,
    Failed(ReadError),
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Stop {
        Stop::Failed(e)
    }
}

impl ArchiveReader {
    /// Starts writing state file `name` (see [`crate::state`]), sealed under this
    /// archive's master key.
    pub fn write_state(&self, name: &str) -> std::io::Result<crate::state::StateWriter> {
        crate::state::StateWriter::create(&self.dir, &self.master, &self.meta.archive_id, name)
    }

    /// Opens state file `name` for reading; `Ok(None)` when there is none.
    pub fn read_state(&self, name: &str) -> std::io::Result<Option<crate::state::StateReader>> {
        crate::state::StateReader::open(&self.dir, &self.master, &self.meta.archive_id, name)
    }
}
