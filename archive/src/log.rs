//! The record log: opening with crash recovery, and the synchronous append
//! path that the group-commit writer thread drives.
//!
//! ```text
//! open ─▶ read archive.meta (check master key)
//!      ─▶ last segment unsealed? scan it, cut a torn tail, seal it
//!      ─▶ start a fresh segment (fresh data key ⇒ nonces never repeat)
//!      ─▶ cut happened? append a Recovery event record
//! append_batch ─▶ encrypt + chain every record ─▶ one append + one sync
//!              ─▶ checkpoint every N records ─▶ roll at size / age
//! ```

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use ed25519_dalek::SigningKey;

use crate::keys::{random_bytes, unwrap_data_key, wrap_data_key, MasterKey, UnwrapError};
use crate::record::{EventRecord, NewRecord, Record, RecordSeq};
use crate::segment::{self, Hash, Parsed, SegmentHeader, HEADER_LEN};
use crate::storage::{self, AppendHandle, Storage};
use crate::time::Timestamp;
use crate::walk::{self, SegmentWalk, Step};
use crate::witness::{WitnessEntry, WitnessError, WitnessWriter};

pub const META_NAME: &str = "archive.meta";
const META_MAGIC: &[u8; 8] = b"CUSTOSAR";
const META_VERSION: u16 = 1;
const META_LEN: usize = 8 + 2 + 16 + 32;

/// The archive identity file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub archive_id: [u8; 16],
    pub key_check: [u8; 32],
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(META_LEN);
        b.extend_from_slice(META_MAGIC);
        b.extend_from_slice(&META_VERSION.to_be_bytes());
        b.extend_from_slice(&self.archive_id);
        b.extend_from_slice(&self.key_check);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != META_LEN
            || b.get(..8)? != META_MAGIC
            || b.get(8..10)? != META_VERSION.to_be_bytes()
        {
            return None;
        }
        let mut archive_id = [0u8; 16];
        archive_id.copy_from_slice(b.get(10..26)?);
        let mut key_check = [0u8; 32];
        key_check.copy_from_slice(b.get(26..58)?);
        Some(Meta {
            archive_id,
            key_check,
        })
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("the master key does not match this archive (wrong key?)")]
    WrongMasterKey,
    #[error("archive.meta is malformed or of an unsupported version")]
    BadMeta,
    #[error("segments exist but archive.meta is missing")]
    MissingMeta,
    #[error("no archive has been written here yet (no archive.meta)")]
    NoArchive,
    #[error("segment {segment} is corrupt at offset {offset}: {what} (run verify)")]
    Corrupt {
        segment: u64,
        offset: u64,
        what: String,
    },
    #[error("key file of segment {segment} cannot be used: {source}")]
    Key { segment: u64, source: UnwrapError },
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    List(#[from] storage::ListError),
    #[error(transparent)]
    Read(#[from] storage::ReadError),
    #[error(transparent)]
    Create(#[from] storage::CreateError),
    #[error(transparent)]
    OpenAppend(#[from] storage::OpenAppendError),
    #[error(transparent)]
    Append(#[from] storage::AppendError),
    #[error(transparent)]
    Sync(#[from] storage::SyncError),
    #[error(transparent)]
    Truncate(#[from] storage::TruncateError),
    #[error(transparent)]
    Seal(#[from] storage::SealError),
    #[error(transparent)]
    Put(#[from] storage::PutError),
    #[error(transparent)]
    Remove(#[from] storage::RemoveError),
    #[error(transparent)]
    Witness(#[from] WitnessError),
}

/// Why a batch could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum LogWriteError {
    #[error("record encryption failed")]
    Encrypt,
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Append(#[from] storage::AppendError),
    #[error(transparent)]
    Sync(#[from] storage::SyncError),
    #[error(transparent)]
    Seal(#[from] storage::SealError),
    #[error(transparent)]
    Create(#[from] storage::CreateError),
    #[error(transparent)]
    Put(#[from] storage::PutError),
    /// A checkpoint reached the log but not the witness: it does not count as made.
    #[error(transparent)]
    Witness(#[from] WitnessError),
}

/// Limits that decide when a segment is sealed and checkpoints are written.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub checkpoint_every: u64,
}

/// A record made durable, with where it lives.
#[derive(Debug, Clone)]
pub struct Appended {
    pub record: Record,
    pub segment: u64,
    pub offset: u64,
    /// The chain head after this record.
    pub head: segment::Hash,
}

/// What recovery cut from a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryCut {
    pub segment: u64,
    pub offset: u64,
    pub bytes_cut: u64,
    pub detail: String,
}

struct Active {
    id: u64,
    header: [u8; HEADER_LEN],
    handle: Box<dyn AppendHandle>,
    len: u64,
    /// The time window of its first record (`None` while it has none).
    window: Option<i64>,
    /// The retention class of its records (`None` until the first one).
    class: Option<String>,
    cipher: Aes256Gcm,
}

/// The single writer of a log.
pub struct LogWriter {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    signer: SigningKey,
    limits: LogLimits,
    archive_id: [u8; 16],
    active: Active,
    next_seq: u64,
    head: Hash,
    last_time: i64,
    since_checkpoint: u64,
    /// Where every checkpoint is also appended, outside the archive directory.
    witness: Option<WitnessWriter>,
    /// The seq of the last hold record this writer appended (0: none since open).
    last_hold_seq: u64,
    /// A batch's frames and one record's canonical bytes, kept between batches so the
    /// writer does not allocate and free them for every record (see [`KEPT_CAPACITY`]).
    frames: Vec<u8>,
    canonical: Vec<u8>,
}

/// The most capacity a reused buffer keeps after a batch: a batch of large stanzas does
/// not hold its memory for good.
const KEPT_CAPACITY: usize = 4 << 20;

/// Hands `buf` back to be reused, emptied, unless it has grown past [`KEPT_CAPACITY`].
fn keep(slot: &mut Vec<u8>, mut buf: Vec<u8>) {
    if buf.capacity() <= KEPT_CAPACITY {
        buf.clear();
        *slot = buf;
    }
}

pub(crate) fn read_meta(storage: &dyn Storage) -> Result<Option<Meta>, LogOpenError> {
    match storage.read(META_NAME) {
        Ok(b) => Meta::decode(&b).map(Some).ok_or(LogOpenError::BadMeta),
        Err(storage::ReadError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads `archive.meta` and checks the master key against it.
pub(crate) fn open_meta(storage: &dyn Storage, master: &MasterKey) -> Result<Meta, LogOpenError> {
    let meta = match read_meta(storage)? {
        Some(m) => m,
        None if segment_ids(storage).is_ok_and(|ids| ids.is_empty()) => {
            return Err(LogOpenError::NoArchive)
        }
        None => return Err(LogOpenError::MissingMeta),
    };
    if master.check_value(&meta.archive_id) != meta.key_check {
        return Err(LogOpenError::WrongMasterKey);
    }
    Ok(meta)
}

pub(crate) fn segment_ids(storage: &dyn Storage) -> Result<Vec<u64>, storage::ListError> {
    let mut ids: Vec<u64> = storage
        .list("segments")?
        .iter()
        .filter_map(|f| segment::segment_id_from_file(f))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

pub(crate) fn segment_cipher(
    storage: &dyn Storage,
    master: &MasterKey,
    archive_id: &[u8; 16],
    segment: u64,
) -> Result<Option<Aes256Gcm>, LogOpenError> {
    let wrapped = match storage.read(&segment::key_name(segment)) {
        Ok(w) => w,
        Err(storage::ReadError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let key = unwrap_data_key(master, archive_id, segment, &wrapped)
        .map_err(|source| LogOpenError::Key { segment, source })?;
    Ok(Aes256Gcm::new_from_slice(key.as_ref()).ok())
}

/// State at the end of a scanned segment.
struct Scan {
    valid_end: usize,
    next_seq: u64,
    head: Hash,
    last_time: i64,
    sealed_by_checkpoint: bool,
    torn: Option<String>,
}

/// Scans a segment the writer left behind, finding where the valid prefix ends.
/// A bad region counts as a torn tail only when nothing valid follows it: a bad
/// frame in the middle is tampering or media damage, and cutting there would
/// lose acknowledged records, so it is refused.
fn scan_tail(
    bytes: &[u8],
    header: &SegmentHeader,
    cipher: &Aes256Gcm,
) -> Result<Scan, (u64, String)> {
    let hb = header.encode();
    let mut s = Scan {
        valid_end: HEADER_LEN,
        next_seq: header.first_seq,
        head: header.prev_head,
        last_time: header.created_ms,
        sealed_by_checkpoint: false,
        torn: None,
    };
    let torn_here = |at: usize, why: &str| -> Result<String, (u64, String)> {
        let rest = bytes.get(at..).unwrap_or_default();
        let nothing_after = match parse_frame_end(bytes, at) {
            Some(next) => {
                next >= bytes.len()
                    || matches!(segment::parse_frame(bytes, next), Parsed::Incomplete)
            }
            None => true,
        };
        if nothing_after || rest.iter().all(|&b| b == 0) {
            Ok(format!("{why}; cut {} bytes", rest.len()))
        } else {
            Err((at as u64, why.to_string()))
        }
    };
    let mut w = SegmentWalk::segment(bytes, header);
    loop {
        let at = w.offset() as usize;
        let step = match w.next() {
            Ok(step) => step,
            Err(b) => {
                s.torn = Some(torn_here(at, &b.what)?);
                break;
            }
        };
        match step {
            Step::End { left: 0, .. } => break,
            Step::End { .. } => {
                s.torn = Some(torn_here(at, "incomplete frame")?);
                break;
            }
            Step::Record(r) => {
                let opened = match r.flaw {
                    Some(flaw) => Err(flaw),
                    None => walk::open_frame(cipher, &hb, &r),
                };
                match opened {
                    Ok(o) => s.last_time = s.last_time.max(o.record.time.0),
                    Err(why) => {
                        s.torn = Some(torn_here(at, &why)?);
                        break;
                    }
                }
                s.head = r.head;
                s.next_seq = r.seq + 1;
                s.valid_end = w.offset() as usize;
            }
            Step::Checkpoint { cp, flaw, .. } => {
                if let Some(flaw) = flaw {
                    s.torn = Some(torn_here(at, &flaw)?);
                    break;
                }
                s.last_time = s.last_time.max(cp.time_ms);
                s.sealed_by_checkpoint = cp.sealed;
                s.valid_end = w.offset() as usize;
            }
        }
    }
    Ok(s)
}

/// The end of the frame at `at` if its length field is readable.
fn parse_frame_end(bytes: &[u8], at: usize) -> Option<usize> {
    let l = bytes.get(at..at + 4)?;
    let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
    Some(at + 4 + len)
}

impl LogWriter {
    /// Opens (or creates) the log, recovering a torn tail. Returns the writer
    /// and what was cut, if anything; the caller appends the Recovery event.
    pub fn open(
        storage: Arc<dyn Storage>,
        master: MasterKey,
        signer: SigningKey,
        limits: LogLimits,
    ) -> Result<(LogWriter, Option<RecoveryCut>), LogOpenError> {
        LogWriter::open_witnessed(storage, master, signer, limits, None, false)
    }

    /// [`LogWriter::open`] with a witness directory: every checkpoint written from
    /// here on (recovery's sealing one included) is also appended to the witness file.
    /// `witness_shared`: the directory may hold other archives' witness files (the node
    /// chains of one bucket), see [`WitnessWriter::open`].
    pub fn open_witnessed(
        storage: Arc<dyn Storage>,
        master: MasterKey,
        signer: SigningKey,
        limits: LogLimits,
        witness_dir: Option<&std::path::Path>,
        witness_shared: bool,
    ) -> Result<(LogWriter, Option<RecoveryCut>), LogOpenError> {
        let ids = segment_ids(storage.as_ref())?;
        let meta = match read_meta(storage.as_ref())? {
            Some(m) => m,
            None if ids.is_empty() => {
                let archive_id = random_bytes::<16>().map_err(LogOpenError::Random)?;
                // Before archive.meta is written: a witness refused leaves no archive.
                if let Some(dir) = witness_dir {
                    crate::witness::may_start(dir, &archive_id, witness_shared)?;
                }
                let m = Meta {
                    archive_id,
                    key_check: master.check_value(&archive_id),
                };
                storage.put_new(META_NAME, &m.encode())?;
                m
            }
            None => return Err(LogOpenError::MissingMeta),
        };
        if master.check_value(&meta.archive_id) != meta.key_check {
            return Err(LogOpenError::WrongMasterKey);
        }
        let mut witness = match witness_dir {
            Some(dir) => Some(WitnessWriter::open(dir, &meta.archive_id, witness_shared)?),
            None => None,
        };
        let archive_id = meta.archive_id;
        let mut next_seq = 1;
        let mut head = segment::genesis_head(&archive_id);
        let mut last_time = 0;
        let mut cut = None;
        if let Some(&last) = ids.last() {
            let name = segment::segment_name(last);
            let bytes = storage.read(&name)?;
            let corrupt = |offset: u64, what: String| LogOpenError::Corrupt {
                segment: last,
                offset,
                what,
            };
            let header = if bytes.len() < HEADER_LEN && !storage.is_sealed(&name)? {
                // A crash between creating the file and syncing its header.
                None
            } else {
                Some(SegmentHeader::decode(&bytes).map_err(|w| corrupt(0, w))?)
            };
            match header {
                None => {
                    // The previous segment (if any) was sealed before this one was created.
                    if let Some(&prev) = ids.iter().rev().nth(1) {
                        let pb = storage.read(&segment::segment_name(prev))?;
                        let ph = SegmentHeader::decode(&pb).map_err(|w| LogOpenError::Corrupt {
                            segment: prev,
                            offset: 0,
                            what: w,
                        })?;
                        let cipher = segment_cipher(storage.as_ref(), &master, &archive_id, prev)?
                            .ok_or_else(|| LogOpenError::Corrupt {
                                segment: prev,
                                offset: 0,
                                what: "data key missing".into(),
                            })?;
                        let s = scan_tail(&pb, &ph, &cipher).map_err(|(o, w)| {
                            LogOpenError::Corrupt {
                                segment: prev,
                                offset: o,
                                what: w,
                            }
                        })?;
                        next_seq = s.next_seq;
                        head = s.head;
                        last_time = s.last_time;
                    }
                    // It holds no record; removing it keeps every segment well-formed.
                    storage.remove(&name)?;
                    cut = Some(RecoveryCut {
                        segment: last,
                        offset: 0,
                        bytes_cut: bytes.len() as u64,
                        detail: "segment header incomplete".into(),
                    });
                }
                Some(h) => {
                    if h.archive_id != archive_id || h.segment != last {
                        return Err(corrupt(
                            0,
                            "segment header names another archive or segment".into(),
                        ));
                    }
                    let cipher = segment_cipher(storage.as_ref(), &master, &archive_id, last)?
                        .ok_or_else(|| corrupt(0, "data key missing".into()))?;
                    let s = scan_tail(&bytes, &h, &cipher).map_err(|(o, w)| corrupt(o, w))?;
                    next_seq = s.next_seq;
                    head = s.head;
                    last_time = s.last_time;
                    if !storage.is_sealed(&name)? {
                        if let Some(detail) = s.torn {
                            storage.truncate(&name, s.valid_end as u64)?;
                            cut = Some(RecoveryCut {
                                segment: last,
                                offset: s.valid_end as u64,
                                bytes_cut: (bytes.len() - s.valid_end) as u64,
                                detail,
                            });
                        }
                        let mut handle = storage.open_append(&name)?;
                        if !s.sealed_by_checkpoint {
                            let t = Timestamp::now().0.max(last_time);
                            let header = h.encode();
                            let frame = segment::checkpoint_frame(
                                &signer,
                                &header,
                                next_seq - 1,
                                &head,
                                t,
                                true,
                            );
                            handle.append(&frame)?;
                            handle.sync()?;
                            witness_frame(&mut witness, last, &header, &frame)?;
                        }
                        storage.seal(&name)?;
                    }
                }
            }
        }
        // Never reuse a segment id whose key file exists (a crash may leave one).
        let max_key = storage
            .list("keys")?
            .iter()
            .filter_map(|k| {
                k.strip_prefix("segment-")?
                    .strip_suffix(".key")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        let new_id = ids.last().copied().unwrap_or(0).max(max_key) + 1;
        let active = start_segment(
            storage.as_ref(),
            &master,
            &archive_id,
            (new_id, next_seq, last_time),
            &head,
        )
        .map_err(|e| match e {
            LogWriteError::Random(r) => LogOpenError::Random(r),
            LogWriteError::Create(c) => LogOpenError::Create(c),
            LogWriteError::Put(p) => LogOpenError::Put(p),
            LogWriteError::Append(a) => LogOpenError::Append(a),
            LogWriteError::Sync(s) => LogOpenError::Sync(s),
            LogWriteError::Seal(s) => LogOpenError::Seal(s),
            LogWriteError::Encrypt => LogOpenError::Random(getrandom::Error::UNSUPPORTED),
            LogWriteError::Witness(w) => LogOpenError::Witness(w),
        })?;
        let writer = LogWriter {
            storage,
            master,
            signer,
            limits,
            archive_id,
            active,
            next_seq,
            head,
            last_time,
            since_checkpoint: 0,
            witness,
            last_hold_seq: 0,
            frames: Vec::new(),
            canonical: Vec::new(),
        };
        Ok((writer, cut))
    }

    pub fn archive_id(&self) -> [u8; 16] {
        self.archive_id
    }

    /// The id of the segment being written.
    pub fn active_segment(&self) -> u64 {
        self.active.id
    }

    /// Whether segment `id`'s data key file exists.
    pub fn has_key(&self, id: u64) -> bool {
        self.storage.read(&segment::key_name(id)).is_ok()
    }

    /// Removes segment `id`'s data key file (crypto-shredding). The caller has made the
    /// `Shred` record durable first.
    pub fn destroy_key(&mut self, id: u64) -> Result<(), storage::RemoveError> {
        self.storage.remove(&segment::key_name(id))
    }

    /// The seq of the last hold record appended since open (0 if none).
    pub fn last_hold_seq(&self) -> u64 {
        self.last_hold_seq
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Encrypts, chains and durably appends a batch with one write and one
    /// sync per segment it lands in. A segment holds records of one retention class
    /// from one time window (`segment_max_age`, aligned to the epoch), so a record of
    /// another class or a new window first seals the active segment and starts the
    /// next. On error nothing in the batch may be acknowledged and the writer must not
    /// be used again (the file may hold part of the batch).
    pub fn append_batch(&mut self, batch: Vec<NewRecord>) -> Result<Vec<Appended>, LogWriteError> {
        let time = Timestamp(Timestamp::now().0.max(self.last_time));
        let window = self.window(time.0);
        if self.active.window.is_some_and(|w| w != window) {
            self.roll()?;
        }
        let mut out = Vec::with_capacity(batch.len());
        let mut run = Vec::with_capacity(batch.len());
        for content in batch {
            let class = crate::retention::record_class(&content, self.active.class.as_deref());
            if self.active.class.as_deref().is_some_and(|c| c != class) {
                out.extend(self.append_run(std::mem::take(&mut run), time)?);
                self.roll()?;
            }
            self.active.class = Some(class);
            self.active.window.get_or_insert(window);
            run.push(content);
        }
        out.extend(self.append_run(run, time)?);
        Ok(out)
    }

    /// The time window a moment falls in.
    fn window(&self, ms: i64) -> i64 {
        let age = i64::try_from(self.limits.segment_max_age.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        ms.div_euclid(age)
    }

    /// Appends records that all go to the active segment: one write, one sync.
    fn append_run(
        &mut self,
        batch: Vec<NewRecord>,
        time: Timestamp,
    ) -> Result<Vec<Appended>, LogWriteError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = std::mem::take(&mut self.frames);
        buf.clear();
        buf.reserve(batch.len() * 512);
        let mut canonical = std::mem::take(&mut self.canonical);
        let mut out = Vec::with_capacity(batch.len());
        let mut seq = self.next_seq;
        let mut head = self.head;
        // Every record's salt from one call for random bytes, not one call each.
        let mut salts = vec![[0u8; segment::SALT_LEN]; batch.len()];
        getrandom::getrandom(salts.as_flattened_mut()).map_err(LogWriteError::Random)?;
        for (content, salt) in batch.into_iter().zip(&salts) {
            if let NewRecord::Event(EventRecord::Audit { action, .. }) = &content {
                if action.starts_with("hold.") {
                    self.last_hold_seq = seq;
                }
            }
            let record = Record {
                seq: RecordSeq(seq),
                time,
                content,
            };
            let offset = self.active.len + buf.len() as u64;
            canonical.clear();
            record.encode_into(&mut canonical);
            let (content_hash, ciphertext_hash) = segment::append_record(
                &self.active.cipher,
                &self.active.header,
                seq,
                salt,
                &canonical,
                &mut buf,
            )
            .map_err(|_| LogWriteError::Encrypt)?;
            head = segment::next_head(&head, &segment::leaf(seq, &content_hash, &ciphertext_hash));
            out.push(Appended {
                record,
                segment: self.active.id,
                offset,
                head,
            });
            seq += 1;
        }
        let n = out.len() as u64;
        let checkpoint = self.since_checkpoint + n >= self.limits.checkpoint_every;
        let checkpoint_at = buf.len();
        if checkpoint {
            buf.extend_from_slice(&segment::checkpoint_frame(
                &self.signer,
                &self.active.header,
                seq - 1,
                &head,
                time.0,
                false,
            ));
        }
        self.active.handle.append(&buf)?;
        self.active.handle.sync()?;
        if checkpoint {
            // Before the batch is acknowledged: a checkpoint is made once witnessed.
            let frame = buf.get(checkpoint_at..).unwrap_or_default();
            witness_frame(
                &mut self.witness,
                self.active.id,
                &self.active.header,
                frame,
            )?;
        }
        self.active.len += buf.len() as u64;
        keep(&mut self.frames, buf);
        keep(&mut self.canonical, canonical);
        self.next_seq = seq;
        self.head = head;
        self.last_time = time.0;
        self.since_checkpoint = if checkpoint {
            0
        } else {
            self.since_checkpoint + n
        };
        Ok(out)
    }

    /// Writes a signed checkpoint of the current head if records were appended since
    /// the last one. Called when the writer is idle, so the signed chain covers the
    /// newest records within about a second of quiet instead of only every
    /// `checkpoint_every` records: records past the last checkpoint could otherwise be
    /// cut from the tail without `verify` noticing.
    pub fn checkpoint_if_pending(&mut self) -> Result<bool, LogWriteError> {
        if self.since_checkpoint == 0 {
            return Ok(false);
        }
        self.write_checkpoint(false)?;
        self.since_checkpoint = 0;
        Ok(true)
    }

    /// Appends and syncs a signed checkpoint of the current head; `sealed` marks the
    /// segment's last frame.
    fn write_checkpoint(&mut self, sealed: bool) -> Result<(), LogWriteError> {
        let t = Timestamp::now().0.max(self.last_time);
        let frame = segment::checkpoint_frame(
            &self.signer,
            &self.active.header,
            self.next_seq - 1,
            &self.head,
            t,
            sealed,
        );
        self.active.handle.append(&frame)?;
        self.active.handle.sync()?;
        self.active.len += frame.len() as u64;
        witness_frame(
            &mut self.witness,
            self.active.id,
            &self.active.header,
            &frame,
        )?;
        Ok(())
    }

    /// Seals the active segment and starts a new one if it reached its size or
    /// age limit. Returns whether it rolled.
    pub fn maybe_roll(&mut self) -> Result<bool, LogWriteError> {
        let full = self.active.len >= self.limits.segment_max_bytes;
        let now = self.window(Timestamp::now().0);
        let old = self.active.window.is_some_and(|w| w != now);
        if !(full || old) {
            return Ok(false);
        }
        self.roll()?;
        Ok(true)
    }

    /// Seals the active segment and starts the next.
    fn roll(&mut self) -> Result<(), LogWriteError> {
        self.seal_active()?;
        let id = self.active.id + 1;
        self.active = start_segment(
            self.storage.as_ref(),
            &self.master,
            &self.archive_id,
            (id, self.next_seq, self.last_time),
            &self.head,
        )?;
        self.since_checkpoint = 0;
        Ok(())
    }

    fn seal_active(&mut self) -> Result<(), LogWriteError> {
        self.write_checkpoint(true)?;
        self.storage.seal(&segment::segment_name(self.active.id))?;
        Ok(())
    }

    /// Writes the final signed checkpoint and seals the active segment.
    pub fn finish(mut self) -> Result<(), LogWriteError> {
        self.seal_active()
    }
}

/// Appends the checkpoint in `frame` to the witness, if there is one.
fn witness_frame(
    witness: &mut Option<WitnessWriter>,
    segment: u64,
    header: &[u8; HEADER_LEN],
    frame: &[u8],
) -> Result<(), WitnessError> {
    match (witness, WitnessEntry::of_frame(segment, header, frame)) {
        (Some(w), Some(entry)) => w.append(&entry),
        _ => Ok(()),
    }
}

fn start_segment(
    storage: &dyn Storage,
    master: &MasterKey,
    archive_id: &[u8; 16],
    (id, first_seq, not_before): (u64, u64, i64),
    prev_head: &Hash,
) -> Result<Active, LogWriteError> {
    let data_key = zeroize::Zeroizing::new(random_bytes::<32>().map_err(LogWriteError::Random)?);
    let wrapped =
        wrap_data_key(master, archive_id, id, &data_key).map_err(LogWriteError::Random)?;
    // The key is durable before any record encrypted under it exists.
    storage.put_new(&segment::key_name(id), &wrapped)?;
    // Never before the last record's time: a reopen after a crash resumes the records'
    // clock from this header, and a record's time never goes back.
    let created_ms = Timestamp::now().0.max(not_before);
    let header = SegmentHeader {
        archive_id: *archive_id,
        segment: id,
        first_seq,
        prev_head: *prev_head,
        created_ms,
    }
    .encode();
    let mut handle = storage.create(&segment::segment_name(id))?;
    handle.append(&header)?;
    handle.sync()?;
    let cipher =
        Aes256Gcm::new_from_slice(data_key.as_ref()).map_err(|_| LogWriteError::Encrypt)?;
    Ok(Active {
        id,
        header,
        handle,
        len: HEADER_LEN as u64,
        window: None,
        class: None,
        cipher,
    })
}

/// The recovery event recorded after a cut.
pub fn recovery_event(cut: &RecoveryCut) -> NewRecord {
    NewRecord::Event(EventRecord::Recovery {
        segment: cut.segment,
        offset: cut.offset,
        bytes_cut: cut.bytes_cut,
        detail: cut.detail.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use crate::verify::verify_storage;

    fn limits() -> LogLimits {
        LogLimits {
            segment_max_bytes: 1 << 20,
            segment_max_age: Duration::from_secs(3600),
            checkpoint_every: 2,
        }
    }

    fn audit(i: u64) -> NewRecord {
        NewRecord::Event(EventRecord::Audit {
            actor: "officer".into(),
            action: "search".into(),
            detail: format!("q{i}"),
        })
    }

    fn open(s: &MemStorage) -> (LogWriter, Option<RecoveryCut>) {
        LogWriter::open(
            Arc::new(s.clone()),
            MasterKey::from_bytes([5; 32]),
            SigningKey::from_bytes(&[6; 32]),
            limits(),
        )
        .unwrap()
    }

    #[test]
    fn torn_tail_is_cut_and_recorded_and_acked_records_survive() {
        let s = MemStorage::new();
        let (mut w, _) = open(&s);
        let acked: Vec<u64> = w
            .append_batch((0..5).map(audit).collect())
            .unwrap()
            .iter()
            .map(|a| a.record.seq.0)
            .collect();
        let last = segment::segment_name(w.active.id);
        // Crash mid-write: half of a frame reaches the disk, the writer never seals.
        drop(w);
        let garbage = segment::checkpoint_frame(
            &SigningKey::from_bytes(&[6; 32]),
            &[0; HEADER_LEN],
            1,
            &[0; 32],
            0,
            false,
        );
        s.tamper(&last, |b| b.extend_from_slice(&garbage[..30]));
        s.crash();
        let (mut w, cut) = open(&s);
        let cut = cut.expect("a cut");
        assert_eq!(cut.bytes_cut, 30);
        let rec = w.append_batch(vec![recovery_event(&cut)]).unwrap();
        assert_eq!(rec[0].record.seq.0, 6);
        w.finish().unwrap();
        let r = verify_storage(
            &s,
            Some(&MasterKey::from_bytes([5; 32])),
            &SigningKey::from_bytes(&[6; 32]).verifying_key(),
            |_, _| {},
        );
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.last_seq, 6);
        assert_eq!(acked, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn damage_before_valid_records_is_refused_not_cut() {
        let s = MemStorage::new();
        let (mut w, _) = open(&s);
        let a = w.append_batch(vec![audit(1)]).unwrap();
        w.append_batch(vec![audit(2), audit(3)]).unwrap();
        let name = segment::segment_name(a[0].segment);
        drop(w);
        let off = a[0].offset as usize + 60;
        s.tamper(&name, |b| b[off] ^= 1);
        let err = LogWriter::open(
            Arc::new(s.clone()),
            MasterKey::from_bytes([5; 32]),
            SigningKey::from_bytes(&[6; 32]),
            limits(),
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, LogOpenError::Corrupt { offset, .. } if offset == a[0].offset),
            "{err}"
        );
    }

    #[test]
    fn wrong_master_key_is_a_clear_error() {
        let s = MemStorage::new();
        let (w, _) = open(&s);
        w.finish().unwrap();
        let err = LogWriter::open(
            Arc::new(s.clone()),
            MasterKey::from_bytes([9; 32]),
            SigningKey::from_bytes(&[6; 32]),
            limits(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, LogOpenError::WrongMasterKey));
    }

    #[test]
    fn segments_roll_at_size_and_chain_across() {
        let s = MemStorage::new();
        let (mut w, _) = LogWriter::open(
            Arc::new(s.clone()),
            MasterKey::from_bytes([5; 32]),
            SigningKey::from_bytes(&[6; 32]),
            LogLimits {
                segment_max_bytes: 600,
                ..limits()
            },
        )
        .unwrap();
        let mut rolls = 0;
        for i in 0..20 {
            w.append_batch(vec![audit(i)]).unwrap();
            rolls += usize::from(w.maybe_roll().unwrap());
        }
        w.finish().unwrap();
        assert!(rolls >= 3, "{rolls}");
        assert_eq!(segment_ids(&s).unwrap().len(), rolls + 1);
        let r = verify_storage(
            &s,
            Some(&MasterKey::from_bytes([5; 32])),
            &SigningKey::from_bytes(&[6; 32]).verifying_key(),
            |_, _| {},
        );
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.last_seq, 20);
    }
}
