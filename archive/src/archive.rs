//! The public façade: [`Archive`] (the serving process's writer, group commit
//! and indexer threads), [`ArchiveReader`] (read-only, any process), and
//! [`reindex`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use crate::index::{BlindIndexReader, BlindIndexWriter, BlindKey, IndexError};
use crate::keys::MasterKey;
use crate::log::{self, Appended, LogLimits, LogOpenError, LogWriter, Meta};
use crate::query::{self, QueryError};
use crate::record::{Action, Direction, NewRecord, Record, RecordSeq};
use crate::segment::{self, Frame, Hash, Parsed, SegmentHeader, HEADER_LEN};
use crate::storage::{FileStorage, Storage};
use crate::time::Timestamp;

/// Most records committed by one write + fsync.
const MAX_BATCH: usize = 4096;
/// How often the indexer commits when it has new documents: keeps a new
/// message searchable within a second.
const INDEX_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Everything `Archive::open` needs.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub dir: PathBuf,
    pub master_key: MasterKey,
    pub signing_key: SigningKey,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    /// Write a signed checkpoint at least every this many records.
    pub checkpoint_every: u64,
}

impl ArchiveConfig {
    /// Defaults: 64 MiB segments, sealed after a day, checkpoint every 1000 records.
    pub fn new(dir: PathBuf, master_key: MasterKey, signing_key: SigningKey) -> ArchiveConfig {
        ArchiveConfig {
            dir,
            master_key,
            signing_key,
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(24 * 3600),
            checkpoint_every: 1000,
        }
    }
}

/// Opening the archive failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("master key file {key} is inside the archive directory {dir}; keep it elsewhere")]
    KeyInsideArchive { key: PathBuf, dir: PathBuf },
    #[error("cannot create archive directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogOpenError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("reading the log to catch up the index: {0}")]
    Read(#[from] ReadError),
    #[error("writing the recovery record failed: {0}")]
    Recovery(#[from] log::LogWriteError),
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
}

/// An append was not made durable. The proxy must not forward the message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("archive is closed")]
    Closed,
    #[error("archive writer failed earlier and refuses writes: {0}")]
    Failed(String),
}

/// Closing did not finish cleanly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloseError {
    #[error("archive already closed")]
    AlreadyClosed,
    #[error("sealing the last segment failed: {0}")]
    Seal(String),
    #[error("final index commit failed: {0}")]
    Index(String),
}

/// Reading records failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Storage(#[from] crate::storage::ReadError),
    #[error(transparent)]
    Log(#[from] LogOpenError),
    #[error("segment {segment} offset {offset}: {what}")]
    Corrupt {
        segment: u64,
        offset: u64,
        what: String,
    },
    #[error("segment {segment}: data key destroyed (record shredded)")]
    Shredded { segment: u64 },
}

/// A search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("bad query: {0}")]
    Query(#[from] QueryError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Rebuilding the index failed.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error(transparent)]
    Log(#[from] LogOpenError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// What a durable append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub seq: RecordSeq,
    pub time: Timestamp,
}

/// One search result, serialised exactly as the DESIGN.md search JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    pub seq: RecordSeq,
    pub time: Timestamp,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    #[serde(rename = "type")]
    pub stanza_type: String,
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub action: Action,
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_body: Option<String>,
}

impl Hit {
    fn from_record(r: Record) -> Option<Hit> {
        let NewRecord::Message(m) = r.content else {
            return None;
        };
        Some(Hit {
            seq: r.seq,
            time: r.time,
            direction: m.direction,
            from: m.from,
            to: m.to,
            stanza_type: m.stanza_type,
            body: m.body,
            thread: m.thread,
            subject: m.subject,
            action: m.outcome.action,
            rules: m.outcome.rules,
            delivered_body: m.outcome.delivered_body,
        })
    }
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

#[allow(clippy::large_enum_variant)] // moved once through the channel; see NewRecord
enum Cmd {
    Append(
        NewRecord,
        oneshot::Sender<Result<AppendReceipt, AppendError>>,
    ),
    Close(oneshot::Sender<Result<(), CloseError>>),
}

enum IndexCmd {
    Add(Vec<Appended>),
    Close(mpsc::Sender<Result<(), String>>),
}

struct Inner {
    tx: Mutex<Option<Sender<Cmd>>>,
    reader: ArchiveReader,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    index_health: Arc<Mutex<Option<String>>>,
}

/// The archive of the serving process. Clone freely; all clones share one
/// writer thread.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("dir", &self.inner.reader.dir)
            .finish()
    }
}

fn index_dir(dir: &Path) -> PathBuf {
    dir.join("index")
}

impl Archive {
    /// Opens or creates the archive: recovers a torn tail (recording the cut),
    /// catches the index up with the log, and starts the writer and indexer.
    pub fn open(cfg: ArchiveConfig) -> Result<Archive, OpenError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| OpenError::Dir {
            dir: cfg.dir.clone(),
            source,
        })?;
        let dir = std::fs::canonicalize(&cfg.dir).map_err(|source| OpenError::Dir {
            dir: cfg.dir.clone(),
            source,
        })?;
        if let Some(origin) = cfg.master_key.origin() {
            let origin = std::fs::canonicalize(origin).unwrap_or_else(|_| origin.to_path_buf());
            if origin.starts_with(&dir) {
                return Err(OpenError::KeyInsideArchive { key: origin, dir });
            }
        }
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&dir));
        let limits = LogLimits {
            segment_max_bytes: cfg.segment_max_bytes,
            segment_max_age: cfg.segment_max_age,
            checkpoint_every: cfg.checkpoint_every.max(1),
        };
        let (mut log, cut) = LogWriter::open(
            storage.clone(),
            cfg.master_key.clone(),
            cfg.signing_key.clone(),
            limits,
        )?;
        let archive_id = log.archive_id();
        let mut indexer = BlindIndexWriter::open(
            &index_dir(&dir),
            BlindKey::derive(&cfg.master_key, &archive_id),
            archive_id,
        )?;
        let reader =
            ArchiveReader::from_parts(dir.clone(), storage.clone(), cfg.master_key.clone())?;
        // The log is the source of truth: index whatever the last run did not commit.
        let through = indexer.indexed_through();
        if through + 1 < log.next_seq() {
            reader.scan(through + 1, |e| {
                if let Some(record) = e.record {
                    indexer.add(&Appended {
                        record,
                        segment: e.segment,
                        offset: e.offset,
                    })?;
                }
                Ok::<(), OpenError>(())
            })?;
            indexer.commit()?;
        }
        let mut first_batch = Vec::new();
        if let Some(cut) = &cut {
            first_batch = log.append_batch(vec![log::recovery_event(cut)])?;
        }
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (itx, irx) = mpsc::channel::<IndexCmd>();
        if !first_batch.is_empty() {
            let _ = itx.send(IndexCmd::Add(first_batch));
        }
        let health = Arc::new(Mutex::new(None));
        let h2 = health.clone();
        std::thread::Builder::new()
            .name("custos-indexer".into())
            .spawn(move || indexer_loop(indexer, irx, h2))
            .map_err(OpenError::Thread)?;
        let writer_thread = std::thread::Builder::new()
            .name("custos-archive-writer".into())
            .spawn(move || writer_loop(log, rx, itx))
            .map_err(OpenError::Thread)?;
        Ok(Archive {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                reader,
                writer_thread: Mutex::new(Some(writer_thread)),
                index_health: health,
            }),
        })
    }

    /// Appends a record; resolves only once it is durable (fsynced), with the
    /// seq and time the archive assigned.
    pub async fn append(&self, rec: NewRecord) -> Result<AppendReceipt, AppendError> {
        let (ack_tx, ack_rx) = oneshot::channel();
        {
            let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard.as_ref().ok_or(AppendError::Closed)?;
            tx.send(Cmd::Append(rec, ack_tx))
                .map_err(|_| AppendError::Closed)?;
        }
        ack_rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Searches; see [`ArchiveReader::search`].
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        self.inner.reader.search(query, limit)
    }

    /// Read access (records by seq, chain iteration).
    pub fn reader(&self) -> &ArchiveReader {
        &self.inner.reader
    }

    /// The last indexer error, if indexing is failing (appends continue: the
    /// log is the source of truth and `reindex` rebuilds the index).
    pub fn index_health(&self) -> Option<String> {
        self.inner
            .index_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Flushes, writes the final signed checkpoint, seals the active segment,
    /// commits the index and stops both threads. Later appends on any clone
    /// fail with [`AppendError::Closed`].
    pub async fn close(self) -> Result<(), CloseError> {
        let (done_tx, done_rx) = oneshot::channel();
        {
            let mut guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard.take().ok_or(CloseError::AlreadyClosed)?;
            tx.send(Cmd::Close(done_tx))
                .map_err(|_| CloseError::AlreadyClosed)?;
        }
        let result = done_rx
            .await
            .map_err(|_| CloseError::Seal("writer thread ended".into()))?;
        let handle = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            // The writer has already answered; joining only reaps the thread.
            let _ = h.join();
        }
        result
    }
}

fn writer_loop(mut log: LogWriter, rx: Receiver<Cmd>, itx: Sender<IndexCmd>) {
    let mut failed: Option<String> = None;
    let finish = |log: LogWriter, itx: &Sender<IndexCmd>| -> Result<(), CloseError> {
        let sealed = log.finish().map_err(|e| CloseError::Seal(e.to_string()));
        let (dtx, drx) = mpsc::channel();
        let indexed = match itx.send(IndexCmd::Close(dtx)) {
            Ok(()) => drx.recv().unwrap_or(Ok(())).map_err(CloseError::Index),
            Err(_) => Ok(()),
        };
        sealed.and(indexed)
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if failed.is_none() {
                    if let Err(e) = log.checkpoint_if_pending().and_then(|_| log.maybe_roll()) {
                        failed = Some(e.to_string());
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = finish(log, &itx);
                return;
            }
        };
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Append(rec, ack) => {
                    batch.push(rec);
                    acks.push(ack);
                }
                Cmd::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            match &failed {
                Some(why) => {
                    for ack in acks {
                        let _ = ack.send(Err(AppendError::Failed(why.clone())));
                    }
                }
                None => match log.append_batch(batch) {
                    Ok(appended) => {
                        for (a, ack) in appended.iter().zip(acks) {
                            let _ = ack.send(Ok(AppendReceipt {
                                seq: a.record.seq,
                                time: a.record.time,
                            }));
                        }
                        let _ = itx.send(IndexCmd::Add(appended));
                        if let Err(e) = log.maybe_roll() {
                            failed = Some(e.to_string());
                        }
                    }
                    Err(e) => {
                        // The file may now hold part of this batch: refuse all
                        // further writes (fail closed); reopening recovers.
                        let why = e.to_string();
                        for ack in acks {
                            let _ = ack.send(Err(AppendError::Failed(why.clone())));
                        }
                        failed = Some(why);
                    }
                },
            }
        }
        if let Some(done) = close {
            let r = if failed.is_some() {
                let _ = itx.send(IndexCmd::Close(mpsc::channel().0));
                Err(CloseError::Seal(failed.unwrap_or_default()))
            } else {
                finish(log, &itx)
            };
            // Later commands on the channel are dropped, answering them Closed.
            let _ = done.send(r);
            return;
        }
    }
}

fn indexer_loop(
    mut idx: BlindIndexWriter,
    rx: Receiver<IndexCmd>,
    health: Arc<Mutex<Option<String>>>,
) {
    let set = |e: Option<String>| *health.lock().unwrap_or_else(|p| p.into_inner()) = e;
    let mut last_commit = Instant::now();
    loop {
        match rx.recv_timeout(INDEX_COMMIT_INTERVAL) {
            Ok(IndexCmd::Add(v)) => {
                for a in &v {
                    if let Err(e) = idx.add(a) {
                        set(Some(e.to_string()));
                    }
                }
            }
            Ok(IndexCmd::Close(done)) => {
                let _ = done.send(idx.finish().map_err(|e| e.to_string()));
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = idx.finish();
                return;
            }
        }
        if idx.is_dirty() && last_commit.elapsed() >= INDEX_COMMIT_INTERVAL {
            match idx.commit() {
                Ok(()) => set(None),
                Err(e) => set(Some(e.to_string())),
            }
            last_commit = Instant::now();
        }
    }
}

/// A segment's header bytes (the AAD prefix) and its cipher, `None` if shredded.
type SegmentAccess = ([u8; HEADER_LEN], Option<Aes256Gcm>);

/// Read-only access to an archive, safe beside a serving process: it takes no
/// lock and stops cleanly at the last complete record.
pub struct ArchiveReader {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    master: MasterKey,
    meta: Meta,
    index: Mutex<Option<BlindIndexReader>>,
    segments: Mutex<HashMap<u64, SegmentAccess>>,
}

impl ArchiveReader {
    /// Opens the archive in `dir` for reading; checks the master key.
    pub fn open(dir: &Path, master_key: &MasterKey) -> Result<ArchiveReader, ReadError> {
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir));
        ArchiveReader::from_parts(dir.to_path_buf(), storage, master_key.clone())
    }

    fn from_parts(
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
        let located = {
            let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(BlindIndexReader::open(
                    &index_dir(&self.dir),
                    BlindKey::derive(&self.master, &self.meta.archive_id),
                )?);
            }
            match guard.as_ref() {
                Some(ix) => ix.search(&q, limit)?,
                None => Vec::new(),
            }
        };
        let mut hits = Vec::with_capacity(located.len());
        for l in located.iter().rev() {
            let rec = self.record_at(l.segment, l.offset)?;
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

    fn segment(&self, id: u64) -> Result<SegmentAccess, ReadError> {
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
        let lb = self.storage.read_at(&name, offset, 4)?;
        let len = match lb.as_slice() {
            [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
            _ => return Err(corrupt("frame beyond end of segment")),
        };
        if len > segment::MAX_FRAME {
            return Err(corrupt("frame too long"));
        }
        let frame = self.storage.read_at(&name, offset, 4 + len as usize)?;
        match segment::parse_frame(&frame, 0) {
            Parsed::Frame(
                Frame::Record {
                    seq,
                    nonce,
                    ciphertext,
                    ..
                },
                _,
            ) => {
                let cipher = cipher.ok_or(ReadError::Shredded {
                    segment: segment_id,
                })?;
                let (_, canonical) = segment::decrypt_record(&cipher, &hb, seq, nonce, ciphertext)
                    .ok_or_else(|| corrupt("record does not authenticate"))?;
                Record::decode(&canonical).map_err(|e| corrupt(&e.to_string()))
            }
            _ => Err(corrupt("not a record frame")),
        }
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
        mut f: impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
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
            let bytes = self
                .storage
                .read(&segment::segment_name(id))
                .map_err(ReadError::from)?;
            let header = match SegmentHeader::decode(&bytes) {
                Ok(h) => h,
                // A segment whose header is still being written holds no record yet.
                Err(_) if bytes.len() < HEADER_LEN => continue,
                Err(what) => {
                    return Err(ReadError::Corrupt {
                        segment: id,
                        offset: 0,
                        what,
                    }
                    .into())
                }
            };
            let (hb, cipher) = self.segment(id)?;
            let mut head = header.prev_head;
            let mut at = HEADER_LEN;
            loop {
                match segment::parse_frame(&bytes, at) {
                    Parsed::Incomplete => break,
                    Parsed::Malformed(what) => {
                        return Err(ReadError::Corrupt {
                            segment: id,
                            offset: at as u64,
                            what,
                        }
                        .into())
                    }
                    Parsed::Frame(Frame::Checkpoint(_), next) => at = next,
                    Parsed::Frame(
                        Frame::Record {
                            seq,
                            content_hash,
                            nonce,
                            ciphertext,
                        },
                        next,
                    ) => {
                        let cth = segment::ciphertext_hash(nonce, ciphertext);
                        let leaf = segment::leaf(seq, &content_hash, &cth);
                        head = segment::next_head(&head, &leaf);
                        if seq >= from {
                            let (salt, record) = match &cipher {
                                Some(c) => {
                                    let (salt, canonical) =
                                        segment::decrypt_record(c, &hb, seq, nonce, ciphertext)
                                            .ok_or_else(|| ReadError::Corrupt {
                                                segment: id,
                                                offset: at as u64,
                                                what: "record does not authenticate".into(),
                                            })?;
                                    let rec = Record::decode(&canonical).map_err(|e| {
                                        ReadError::Corrupt {
                                            segment: id,
                                            offset: at as u64,
                                            what: e.to_string(),
                                        }
                                    })?;
                                    (Some(salt), Some(rec))
                                }
                                None => (None, None),
                            };
                            f(ChainEntry {
                                seq,
                                segment: id,
                                offset: at as u64,
                                content_hash,
                                ciphertext_hash: cth,
                                leaf,
                                head,
                                salt,
                                record,
                            })?;
                        }
                        at = next;
                    }
                }
            }
        }
        Ok(())
    }

    /// The archive's random identifier.
    pub fn archive_id(&self) -> [u8; 16] {
        self.meta.archive_id
    }
}

/// Rebuilds the index of the archive in `dir` from the record log. Fails if
/// a serving process holds the index writer. `progress(done_records, last_seq)`.
pub fn reindex(
    dir: &Path,
    master_key: &MasterKey,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReindexError> {
    let reader = ArchiveReader::open(dir, master_key)?;
    let archive_id = reader.archive_id();
    let mut w = BlindIndexWriter::open(
        &index_dir(dir),
        BlindKey::derive(master_key, &archive_id),
        archive_id,
    )?;
    w.clear()?;
    let mut last = 0u64;
    reader.scan(1, |e| {
        last = e.seq;
        Ok::<(), ReindexError>(())
    })?;
    let mut n = 0u64;
    reader.scan(1, |e| {
        if let Some(record) = e.record {
            w.add(&Appended {
                record,
                segment: e.segment,
                offset: e.offset,
            })?;
            n += 1;
            if n % 10_000 == 0 {
                progress(e.seq, last);
            }
        }
        Ok::<(), ReindexError>(())
    })?;
    w.commit()?;
    w.finish()?;
    progress(last, last);
    Ok(n)
}

/// Stops a scan early without an error.
enum Stop {
    Done,
    Failed(ReadError),
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Stop {
        Stop::Failed(e)
    }
}
