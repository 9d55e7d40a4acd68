//! The public façade: [`Archive`] (the serving process's writer, group commit
//! and indexer threads), [`ArchiveReader`] (read-only, any process), and
//! [`reindex`].
//!
//! One process writes: [`Archive::open`] and [`reindex`] hold an exclusive
//! advisory lock on `<dir>/writer.lock` for as long as they write. Readers and
//! `verify` take no lock. Other processes hand audit events to the writer
//! through the inbox ([`crate::inbox`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use crate::inbox::Drain;
use crate::index::{BlindIndexReader, BlindIndexWriter, BlindKey, IndexError};
use crate::keys::MasterKey;
use crate::log::{self, Appended, LogLimits, LogOpenError, LogWriter, Meta};
use crate::query::{self, QueryError};
use crate::record::{
    Action, Direction, Edit, EventRecord, Leg, NewRecord, Record, RecordSeq, Text, Via,
};
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
    /// A directory outside `dir` (another mount or host) where every signed checkpoint
    /// is also appended; `verify` then finds a cut tail ([`crate::witness`]).
    pub witness: Option<PathBuf>,
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
            witness: None,
        }
    }
}

/// The lock file that makes one process at a time the writer of an archive.
pub const WRITER_LOCK: &str = "writer.lock";

/// An exclusive advisory lock on `<dir>/writer.lock` (`flock` on Unix,
/// `LockFileEx` on Windows), released when dropped — including by the
/// kernel when the process dies, so a crash never leaves a stale lock. The
/// file itself stays: removing it would let two processes lock two different
/// files of the same name.
#[derive(Debug)]
struct WriterLock {
    _file: File,
}

enum LockError {
    Held,
    Io(std::io::Error),
}

impl WriterLock {
    fn take(dir: &Path) -> Result<WriterLock, LockError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(WRITER_LOCK))
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => Ok(WriterLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held),
            Err(TryLockError::Error(e)) => Err(LockError::Io(e)),
        }
    }
}

/// Whether a process holds the archive's writer lock now (a probe: the lock is taken and
/// dropped at once when free).
pub(crate) fn writer_running(dir: &Path) -> bool {
    matches!(WriterLock::take(dir), Err(LockError::Held))
}

/// Opening the archive failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("master key file {key} is inside the archive directory {dir}; keep it elsewhere")]
    KeyInsideArchive { key: PathBuf, dir: PathBuf },
    /// Another process (or another `Archive` of this one) holds the writer lock.
    #[error("another process is writing to this archive (custos serve?): {dir} is locked")]
    Locked { dir: PathBuf },
    #[error("cannot lock {dir}/writer.lock: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
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
    #[error("appending inbox submissions failed: {0}")]
    Inbox(log::LogWriteError),
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    #[error("the witness {witness} is inside the archive directory {dir}: whoever can cut the archive could cut the witness too")]
    WitnessInsideArchive { witness: PathBuf, dir: PathBuf },
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
    #[error("another process is writing to this archive (custos serve?): {dir} is locked")]
    Locked { dir: PathBuf },
    #[error("cannot lock {dir}/writer.lock: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
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

/// One search result, serialised as the DESIGN.md search JSON; `severity`
/// and `e2ee` are extra keys present only when the policy outcome has them.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The end-to-end encryption scheme detected (e.g. `omemo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<String>,
    /// What monitor-mode rules would have done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_action: Option<Action>,
    /// The logical-message identity this copy shares with the other copies.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_message: Option<String>,
    pub via: Via,
    pub leg: Leg,
    /// The proven JID of the session whose stream carried this copy.
    pub account: String,
    pub session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_from: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit: Option<Edit>,
}

impl Hit {
    fn from_record(r: Record) -> Option<Hit> {
        let NewRecord::Message(m) = r.content else {
            return None;
        };
        let leg = m.leg();
        let c = m.capture;
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
            severity: m.outcome.severity,
            e2ee: m.outcome.e2ee,
            would_action: m.outcome.would_action,
            message: c.identity,
            delivered_message: c.delivered_identity,
            via: c.via,
            leg,
            account: c.account,
            session: m.session.0,
            claimed_from: c.claimed_from,
            extra: c.extra,
            edit: c.edit,
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

/// Where [`ArchiveReader::tail`] left off, so the next call reads only the
/// bytes appended since. Start one with [`TailCursor::new`] (every record) or
/// [`TailCursor::from_seq`]; keep it between calls.
#[derive(Debug, Clone, Default)]
pub struct TailCursor {
    /// Records below this seq are read (for the chain) but not handed over.
    from: u64,
    /// `None` until the first segment with a complete header has been found.
    at: Option<TailPos>,
}

#[derive(Debug, Clone)]
struct TailPos {
    segment: u64,
    /// The first byte not yet consumed: the start of the next frame.
    offset: u64,
    /// The seq the next record frame must carry.
    next_seq: u64,
    /// The chain head after the last record consumed.
    head: Hash,
    /// Nothing more will be written to `segment`; the next bytes are in a later one.
    done: bool,
}

impl TailCursor {
    /// A cursor that hands over every record, from seq 1.
    pub fn new() -> TailCursor {
        TailCursor::from_seq(1)
    }

    /// A cursor that hands over records from seq `from` on. The first call
    /// still reads the segment holding `from` from its start, to follow the chain.
    pub fn from_seq(from: u64) -> TailCursor {
        TailCursor { from, at: None }
    }

    /// The seq of the next record the cursor will hand over.
    pub fn next_seq(&self) -> u64 {
        match &self.at {
            Some(p) => p.next_seq.max(self.from),
            None => self.from.max(1),
        }
    }

    /// The chain head after the last record read, once reading has begun.
    /// Exact relative to the first segment read: that segment's header gives
    /// the starting head (every record of it authenticates the header).
    pub fn head(&self) -> Option<Hash> {
        self.at.as_ref().map(|p| p.head)
    }
}

/// What [`ArchiveReader::tail`] reads at first from the active segment;
/// small, as most calls find nothing new. Doubles while chunks come back full.
const TAIL_FIRST_READ: usize = 64 << 10;
const TAIL_MAX_READ: usize = 4 << 20;

#[allow(clippy::large_enum_variant)] // moved once through the channel; see NewRecord
enum Cmd {
    Append(
        NewRecord,
        oneshot::Sender<Result<AppendReceipt, AppendError>>,
    ),
    Close(oneshot::Sender<Result<(), CloseError>>),
    Shred(
        ShredRequest,
        oneshot::Sender<Result<AppendReceipt, ShredError>>,
    ),
}

/// What [`Archive::shred_segment`] asks of the writer.
#[derive(Debug)]
struct ShredRequest {
    segment: u64,
    reason: String,
    authority: String,
    actor: String,
}

/// Why a segment could not be shredded.
#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    #[error("segment {0} is the one being written; only a sealed segment can be shredded")]
    Active(u64),
    #[error("segment {0} has no data key (already shredded, or no such segment)")]
    NoKey(u64),
    #[error("the archive is closed")]
    Closed,
    #[error("shredding segment {segment} failed: {why}")]
    Failed { segment: u64, why: String },
}

enum IndexCmd {
    Add(Vec<Appended>),
    Close(mpsc::Sender<Result<(), String>>),
}

/// Identities of the messages appended lately, oldest first, bounded: they bridge the
/// time until the index commits them.
#[derive(Default)]
struct RecentIdentities {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

const RECENT_IDENTITIES: usize = 1 << 16;

impl RecentIdentities {
    fn insert(&mut self, id: &str) {
        if self.set.contains(id) {
            return;
        }
        if self.order.len() >= RECENT_IDENTITIES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

struct Inner {
    /// Every record up to this seq is in the index's last commit.
    indexed: Arc<AtomicU64>,
    /// The last durable record's seq.
    log_end: Arc<AtomicU64>,
    recent: Mutex<RecentIdentities>,
    tx: Mutex<Option<Sender<Cmd>>>,
    reader: ArchiveReader,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    index_health: Arc<Mutex<Option<String>>>,
    inbox_health: Arc<Mutex<Option<String>>>,
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
    /// Opens or creates the archive: takes the writer lock (held until the
    /// writer thread ends, on close or when the last clone is dropped),
    /// recovers a torn tail (recording the cut), catches the index up with the
    /// log, appends what waits in the inbox, and starts the writer and indexer.
    /// Fails with [`OpenError::Locked`] while another writer holds the lock.
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
        // Before recovery: recovery seals and truncates the active segment,
        // which would destroy a running writer's tail.
        let lock = WriterLock::take(&dir).map_err(|e| match e {
            LockError::Held => OpenError::Locked { dir: dir.clone() },
            LockError::Io(source) => OpenError::Lock {
                dir: dir.clone(),
                source,
            },
        })?;
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&dir));
        let limits = LogLimits {
            segment_max_bytes: cfg.segment_max_bytes,
            segment_max_age: cfg.segment_max_age,
            checkpoint_every: cfg.checkpoint_every.max(1),
        };
        if let Some(witness) = &cfg.witness {
            std::fs::create_dir_all(witness).map_err(|source| OpenError::Dir {
                dir: witness.clone(),
                source,
            })?;
            let witness = std::fs::canonicalize(witness).unwrap_or_else(|_| witness.clone());
            if witness.starts_with(&dir) {
                return Err(OpenError::WitnessInsideArchive { witness, dir });
            }
        }
        let (mut log, cut) = LogWriter::open_witnessed(
            storage.clone(),
            cfg.master_key.clone(),
            cfg.signing_key.clone(),
            limits,
            cfg.witness.as_deref(),
        )?;
        let reader =
            ArchiveReader::from_parts(dir.clone(), storage.clone(), cfg.master_key.clone())?;
        // The index is derived data: one that cannot be opened is replaced.
        let mut indexer = match index_writer(&dir, &reader, &cfg.master_key) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "search index cannot be opened; rebuilding it from the log");
                std::fs::remove_dir_all(index_dir(&dir)).map_err(IndexError::Io)?;
                index_writer(&dir, &reader, &cfg.master_key)?
            }
        };
        // The log is the source of truth: index whatever the last run did not commit,
        // and rebuild an index that is not this log's.
        if let Err(why) = indexer.found() {
            tracing::warn!(reason = %why, "search index rebuilding from the log");
        }
        let done = catch_up::<OpenError>(&reader, &mut indexer, None, &mut |done, last| {
            if done < last {
                tracing::info!(done, last, "search index catching up with the log");
            }
        })?;
        match &done.rebuilt {
            Some(why) => {
                tracing::warn!(reason = %why, records = done.indexed, "search index rebuilt from the log")
            }
            None if done.indexed > 0 => tracing::info!(
                records = done.indexed,
                "search index caught up with the log"
            ),
            None => {}
        }
        let indexed = Arc::new(AtomicU64::new(done.through));
        let log_end = Arc::new(AtomicU64::new(log.next_seq() - 1));
        let mut first_batch = Vec::new();
        if let Some(cut) = &cut {
            first_batch = log.append_batch(vec![log::recovery_event(cut)])?;
        }
        let mut inbox = Drain::new(
            &dir,
            cfg.master_key.clone(),
            ArchiveReader::from_parts(dir.clone(), storage.clone(), cfg.master_key.clone())?,
        );
        let drained = inbox.drain(&mut log).map_err(OpenError::Inbox)?;
        first_batch.extend(drained.appended);
        log_end.store(log.next_seq() - 1, Ordering::Release);
        let inbox_health = Arc::new(Mutex::new(drained.problem));
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (itx, irx) = mpsc::channel::<IndexCmd>();
        if !first_batch.is_empty() {
            let _ = itx.send(IndexCmd::Add(first_batch));
        }
        let health = Arc::new(Mutex::new(None));
        let h2 = health.clone();
        std::thread::Builder::new()
            .name("custos-indexer".into())
            .spawn({
                let indexed = indexed.clone();
                move || indexer_loop(indexer, irx, h2, indexed)
            })
            .map_err(OpenError::Thread)?;
        let ih = inbox_health.clone();
        let le = log_end.clone();
        let writer_thread = std::thread::Builder::new()
            .name("custos-archive-writer".into())
            .spawn(move || {
                writer_loop(log, rx, itx, inbox, ih, le);
                // Only now, with the last segment sealed and the index
                // finished, may another process write.
                drop(lock);
            })
            .map_err(OpenError::Thread)?;
        Ok(Archive {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                reader,
                writer_thread: Mutex::new(Some(writer_thread)),
                index_health: health,
                inbox_health,
                recent: Mutex::new(RecentIdentities::default()),
                indexed,
                log_end,
            }),
        })
    }

    /// Whether a copy of the logical message `identity` other than an archive replay
    /// has been recorded: the messages appended lately (the index sees them only after
    /// its next commit), then the index. A failing index answers `false`: the caller
    /// flags a replay it cannot place, it never drops one.
    pub fn knows_message(&self, identity: &str) -> bool {
        if self
            .inner
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(identity)
        {
            return true;
        }
        if identity.is_empty() || !identity.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return false;
        }
        self.inner
            .reader
            .search(&format!("msg:{identity} -via:mam"), 1)
            .is_ok_and(|hits| !hits.is_empty())
    }

    /// Crypto-shreds a sealed segment: appends a signed-chain `Shred` record (segment,
    /// reason, the authority that allows it, actor), durably, then destroys the
    /// segment's data key. Its records become unreadable; the chain still verifies, and
    /// `verify` accepts the missing key because of the record. Refuses the active
    /// segment and a segment without a key.
    pub async fn shred_segment(
        &self,
        segment: u64,
        reason: &str,
        authority: &str,
        actor: &str,
    ) -> Result<AppendReceipt, ShredError> {
        let (ack_tx, ack_rx) = oneshot::channel();
        {
            let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard.as_ref().ok_or(ShredError::Closed)?;
            tx.send(Cmd::Shred(
                ShredRequest {
                    segment,
                    reason: reason.to_owned(),
                    authority: authority.to_owned(),
                    actor: actor.to_owned(),
                },
                ack_tx,
            ))
            .map_err(|_| ShredError::Closed)?;
        }
        ack_rx.await.map_err(|_| ShredError::Closed)?
    }

    /// Appends a record; resolves only once it is durable (fsynced), with the
    /// seq and time the archive assigned.
    pub async fn append(&self, rec: NewRecord) -> Result<AppendReceipt, AppendError> {
        if let NewRecord::Message(m) = &rec {
            if m.capture.via != Via::Mam {
                let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
                recent.insert(&m.capture.identity);
                if let Some(d) = &m.capture.delivered_identity {
                    recent.insert(d);
                }
            }
        }
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

    /// Searches, saying which records the index has not taken in yet (the newest,
    /// for up to a commit interval, or more while indexing fails).
    pub fn search_covered(&self, query: &str, limit: usize) -> Result<Searched, SearchError> {
        // Read before the search: the searcher reloads to a commit at least this new.
        let through = self.inner.indexed.load(Ordering::Acquire);
        let end = self.inner.log_end.load(Ordering::Acquire);
        let why = match self.index_health() {
            Some(e) => format!("indexing is failing: {e}"),
            None => "not yet indexed".to_owned(),
        };
        Ok(Searched {
            hits: self.search(query, limit)?,
            uncovered: Uncovered::after(through, end, &why),
        })
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

    /// The last inbox problem (a file that could not be listed, claimed,
    /// removed or moved aside), if the latest drain met one. Appends continue.
    pub fn inbox_health(&self) -> Option<String> {
        self.inner
            .inbox_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends what waits in the inbox, takes a last look at the inbox,
    /// flushes, writes the final signed checkpoint, seals the active segment,
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

fn writer_loop(
    mut log: LogWriter,
    rx: Receiver<Cmd>,
    itx: Sender<IndexCmd>,
    mut inbox: Drain,
    inbox_health: Arc<Mutex<Option<String>>>,
    log_end: Arc<AtomicU64>,
) {
    let mut failed: Option<String> = None;
    // Before anything appended is acknowledged: a search that follows sees it counted.
    let publish = |log: &LogWriter| log_end.store(log.next_seq() - 1, Ordering::Release);
    // Appends what waits in the inbox unless the writer already failed.
    let drain = |inbox: &mut Drain, log: &mut LogWriter, failed: &mut Option<String>| {
        if failed.is_some() {
            return;
        }
        match inbox.drain(log) {
            Ok(d) => {
                publish(log);
                *inbox_health.lock().unwrap_or_else(|p| p.into_inner()) = d.problem;
                if !d.appended.is_empty() {
                    let _ = itx.send(IndexCmd::Add(d.appended));
                    if let Err(e) = log.maybe_roll() {
                        *failed = Some(e.to_string());
                    }
                }
            }
            Err(e) => *failed = Some(e.to_string()),
        }
    };
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
        // Checked every turn, not only when idle: a busy writer never times out.
        if inbox.due() {
            drain(&mut inbox, &mut log, &mut failed);
        }
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
                drain(&mut inbox, &mut log, &mut failed);
                let _ = finish(log, &itx);
                return;
            }
        };
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut close = None;
        let mut shred = None;
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
                Cmd::Shred(req, ack) => {
                    shred = Some((req, ack));
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
                        publish(&log);
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
        if let Some((req, ack)) = shred {
            let answer = match &failed {
                Some(why) => Err(ShredError::Failed {
                    segment: req.segment,
                    why: why.clone(),
                }),
                None => shred_segment(&mut log, req, &itx),
            };
            publish(&log);
            if let Err(ShredError::Failed { why, .. }) = &answer {
                failed.get_or_insert_with(|| why.clone());
            }
            let _ = ack.send(answer);
        }
        if let Some(done) = close {
            // Whatever a submitter queued before the close goes in now rather
            // than waiting for the next open.
            drain(&mut inbox, &mut log, &mut failed);
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

/// Records the shred durably, then destroys the key: a key is never gone without the
/// signed record that says why (a crash between the two leaves the key, and the record
/// of an intent that a retry completes).
fn shred_segment(
    log: &mut LogWriter,
    req: ShredRequest,
    itx: &Sender<IndexCmd>,
) -> Result<AppendReceipt, ShredError> {
    let segment = req.segment;
    if segment == log.active_segment() {
        return Err(ShredError::Active(segment));
    }
    if !log.has_key(segment) {
        return Err(ShredError::NoKey(segment));
    }
    let failed = |why: String| ShredError::Failed { segment, why };
    let appended = log
        .append_batch(vec![NewRecord::Event(EventRecord::Shred {
            segment,
            reason: req.reason,
            authority: req.authority,
            actor: req.actor,
        })])
        .map_err(|e| failed(e.to_string()))?;
    let receipt = appended.first().map(|a| AppendReceipt {
        seq: a.record.seq,
        time: a.record.time,
    });
    let _ = itx.send(IndexCmd::Add(appended));
    log.destroy_key(segment)
        .map_err(|e| failed(e.to_string()))?;
    receipt.ok_or_else(|| failed("no record appended".into()))
}

fn indexer_loop(
    mut idx: BlindIndexWriter,
    rx: Receiver<IndexCmd>,
    health: Arc<Mutex<Option<String>>>,
    indexed: Arc<AtomicU64>,
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
                Ok(()) => {
                    indexed.store(idx.indexed_through(), Ordering::Release);
                    set(None)
                }
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
                                Some(c) if decrypt => {
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
                                _ => (None, None),
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

    /// Calls `f` with every record appended since the last call with this
    /// cursor, in seq order, each exactly once. Reads only the bytes after the
    /// cursor, follows into the next segment after a segment's sealing
    /// checkpoint, and stops without error at an incomplete frame (a write in
    /// progress); the next call picks that record up once it is whole.
    ///
    /// Every record is authenticated and decrypted (unless its segment key was
    /// destroyed: then `salt` and `record` are `None`), and the chain is
    /// followed: seqs must be consecutive, each checkpoint must state the head
    /// computed so far, and each segment's header must continue the head and
    /// seq of the previous one. A break is [`ReadError::Corrupt`].
    ///
    /// The cursor moves past a record only once `f` has accepted it: after an
    /// error (from `f` or reading) the next call offers that record again, and
    /// everything `f` accepted before the error is the caller's to keep.
    pub fn tail<E: From<ReadError>>(
        &self,
        cursor: &mut TailCursor,
        mut f: impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let from = cursor.from;
        loop {
            if cursor.at.is_none() {
                cursor.at = self.tail_start(from)?;
            }
            let Some(pos) = cursor.at.as_mut() else {
                return Ok(());
            };
            if !pos.done {
                self.tail_segment(pos, from, &mut f)?;
            }
            if !pos.done {
                return Ok(());
            }
            match self.tail_next_segment(pos)? {
                Some(next) => *pos = next,
                None => return Ok(()),
            }
        }
    }

    /// The segment a cursor starting at seq `from` reads first (as in
    /// [`ArchiveReader::scan`]), or `None` while no segment has a whole header.
    fn tail_start(&self, from: u64) -> Result<Option<TailPos>, ReadError> {
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        let mut start = None;
        for id in ids {
            match self.tail_enter(id)? {
                Some(pos) if start.is_none() || pos.next_seq <= from => start = Some(pos),
                _ => break,
            }
        }
        Ok(start)
    }

    /// A cursor position at the first frame of segment `id`, or `None` while
    /// its header is still being written.
    fn tail_enter(&self, id: u64) -> Result<Option<TailPos>, ReadError> {
        let hb = self
            .storage
            .read_at(&segment::segment_name(id), 0, HEADER_LEN)?;
        if hb.len() < HEADER_LEN {
            return Ok(None);
        }
        let corrupt = |what: String| ReadError::Corrupt {
            segment: id,
            offset: 0,
            what,
        };
        let header = SegmentHeader::decode(&hb).map_err(corrupt)?;
        if header.segment != id || header.archive_id != self.meta.archive_id {
            return Err(corrupt(
                "segment header names another archive or segment".into(),
            ));
        }
        Ok(Some(TailPos {
            segment: id,
            offset: HEADER_LEN as u64,
            next_seq: header.first_seq,
            head: header.prev_head,
            done: false,
        }))
    }

    /// The segment after a finished one, checked to continue its chain, or
    /// `None` if the writer has not started it yet.
    fn tail_next_segment(&self, pos: &TailPos) -> Result<Option<TailPos>, ReadError> {
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        // Ids may skip numbers (a crash can leave a key file for an unused id).
        let Some(&id) = ids.iter().find(|&&id| id > pos.segment) else {
            return Ok(None);
        };
        let Some(next) = self.tail_enter(id)? else {
            return Ok(None);
        };
        if next.next_seq != pos.next_seq || next.head != pos.head {
            return Err(ReadError::Corrupt {
                segment: id,
                offset: 0,
                what: format!(
                    "header does not continue segment {} (first seq {}, expected {})",
                    pos.segment, next.next_seq, pos.next_seq
                ),
            });
        }
        Ok(Some(next))
    }

    /// Consumes every whole frame of `pos.segment` after `pos.offset`, marking
    /// the segment done at its sealing checkpoint.
    fn tail_segment<E: From<ReadError>>(
        &self,
        pos: &mut TailPos,
        from: u64,
        f: &mut impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let id = pos.segment;
        let name = segment::segment_name(id);
        let (hb, cipher) = self.segment(id)?;
        let mut want = TAIL_FIRST_READ;
        // Set once the file was seen sealed (read-only): it can no longer grow.
        let mut sealed_file = false;
        loop {
            let base = pos.offset;
            let bytes = self
                .storage
                .read_at(&name, base, want)
                .map_err(ReadError::from)?;
            let corrupt = |at: usize, what: String| ReadError::Corrupt {
                segment: id,
                offset: base + at as u64,
                what,
            };
            let mut at = 0;
            loop {
                match segment::parse_frame(&bytes, at) {
                    Parsed::Incomplete => break,
                    Parsed::Malformed(what) => return Err(corrupt(at, what).into()),
                    Parsed::Frame(Frame::Checkpoint(cp), next) => {
                        if cp.seq.checked_add(1) != Some(pos.next_seq) || cp.head != pos.head {
                            return Err(corrupt(
                                at,
                                format!("checkpoint of seq {} does not match the chain", cp.seq),
                            )
                            .into());
                        }
                        at = next;
                        pos.offset = base + next as u64;
                        if cp.sealed {
                            pos.done = true;
                            return Ok(());
                        }
                    }
                    Parsed::Frame(
                        Frame::Record {
                            seq,
                            content_hash,
                            nonce,
                            ciphertext,
                        },
                        next,
                    ) => {
                        if seq != pos.next_seq {
                            return Err(corrupt(
                                at,
                                format!("record seq {seq}, expected {}", pos.next_seq),
                            )
                            .into());
                        }
                        let cth = segment::ciphertext_hash(nonce, ciphertext);
                        let leaf = segment::leaf(seq, &content_hash, &cth);
                        let head = segment::next_head(&pos.head, &leaf);
                        if seq >= from {
                            let (salt, record) = match &cipher {
                                Some(c) => {
                                    let (salt, canonical) =
                                        segment::decrypt_record(c, &hb, seq, nonce, ciphertext)
                                            .ok_or_else(|| {
                                                corrupt(at, "record does not authenticate".into())
                                            })?;
                                    if segment::content_hash(&salt, &canonical) != content_hash {
                                        return Err(corrupt(
                                            at,
                                            "content hash does not match the record".into(),
                                        )
                                        .into());
                                    }
                                    let rec = Record::decode(&canonical)
                                        .map_err(|e| corrupt(at, e.to_string()))?;
                                    (Some(salt), Some(rec))
                                }
                                None => (None, None),
                            };
                            f(ChainEntry {
                                seq,
                                segment: id,
                                offset: base + at as u64,
                                content_hash,
                                ciphertext_hash: cth,
                                leaf,
                                head,
                                salt,
                                record,
                            })?;
                        }
                        pos.next_seq = seq.saturating_add(1);
                        pos.head = head;
                        at = next;
                        pos.offset = base + next as u64;
                    }
                }
            }
            if bytes.len() < want {
                // The end of what is written so far.
                if sealed_file {
                    // A sealed file without a sealing checkpoint (the writer
                    // always writes one; `verify` reports its absence): like
                    // `scan`, go on to the next segment.
                    pos.done = true;
                    return Ok(());
                }
                if !self.storage.is_sealed(&name).map_err(ReadError::from)? {
                    return Ok(());
                }
                // Sealed since the read above: read once more, as frames may
                // have landed between that read and the sealing.
                sealed_file = true;
                want = TAIL_FIRST_READ;
            } else if at == 0 {
                // One frame longer than the read: read all of it next time.
                want = match bytes.get(..4) {
                    Some(&[a, b, c, d]) => {
                        (4 + u32::from_be_bytes([a, b, c, d]) as usize).max(want * 2)
                    }
                    _ => want * 2,
                };
            } else {
                want = (want * 2).min(TAIL_MAX_READ);
            }
        }
    }

    /// The archive's random identifier.
    pub fn archive_id(&self) -> [u8; 16] {
        self.meta.archive_id
    }

    /// The chain head after record `seq`, or `None` if the log has no such record.
    pub fn head_at(&self, seq: u64) -> Result<Option<Hash>, ReadError> {
        let mut found = None;
        let r = self.scan_chain(seq, false, |e| {
            if e.seq == seq {
                found = Some(e.head);
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
        let mark =
            crate::index::read_mark(&index_dir(&self.dir), &self.master, &self.meta.archive_id)
                .map_err(|e| e.to_string())?;
        if mark.through == 0 {
            return Ok(0);
        }
        match self.head_at(mark.through) {
            Ok(Some(head)) if head == mark.head => Ok(mark.through),
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
        query::parse(query)?;
        // The mark before the search: the searcher reloads to a commit at least as new.
        let coverage = self.index_coverage();
        let end = self.chain_end()?;
        match coverage {
            Ok(through) => Ok(Searched {
                hits: self.search(query, limit)?,
                uncovered: Uncovered::after(through, end, "not yet indexed"),
            }),
            Err(why) => Ok(Searched {
                hits: Vec::new(),
                uncovered: Uncovered::after(0, end, &why),
            }),
        }
    }
}

/// Records a search did not look at, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Uncovered {
    pub from: u64,
    pub to: u64,
    pub why: String,
}

impl Uncovered {
    fn after(through: u64, end: u64, why: &str) -> Option<Uncovered> {
        (through < end).then(|| Uncovered {
            from: through + 1,
            to: end,
            why: why.to_owned(),
        })
    }
}

impl std::fmt::Display for Uncovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.to - self.from + 1;
        write!(
            f,
            "{n} record(s), seq {}..={}, were not searched ({}): results may be incomplete",
            self.from, self.to, self.why
        )
    }
}

/// A search's hits and what it could not see.
#[derive(Debug, Clone)]
pub struct Searched {
    pub hits: Vec<Hit>,
    pub uncovered: Option<Uncovered>,
}

/// Brings the index up to the log it belongs to. An index whose mark cannot be trusted
/// (foreign, forged, unauthenticated), claims more than the log holds, or names a chain
/// head that is not this log's at its seq is cleared first; `force` clears it anyway.
/// Then every record after the mark is added and committed.
/// `progress(done_seq, last_seq)` is called every 10,000 records and at the end.
fn catch_up<E: From<ReadError> + From<IndexError>>(
    reader: &ArchiveReader,
    w: &mut BlindIndexWriter,
    force: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<IndexCatchUp, E> {
    let end = reader.chain_end()?;
    let rebuilt = match (force, w.found()) {
        (Some(why), _) => Some(why.to_owned()),
        (None, Err(e)) => Some(e.to_string()),
        (None, Ok(mark)) if mark.through > end => Some(format!(
            "it claims seq {} but the log ends at seq {end}",
            mark.through
        )),
        (None, Ok(mark))
            if mark.through > 0 && reader.head_at(mark.through)? != Some(mark.head) =>
        {
            Some(format!(
                "its chain head at seq {} is not this log's",
                mark.through
            ))
        }
        (None, Ok(_)) => None,
    };
    if rebuilt.is_some() {
        w.clear()?;
    }
    let from = w.indexed_through() + 1;
    let mut indexed = 0u64;
    if from <= end {
        reader.scan(from, |e| {
            if let Some(record) = e.record {
                w.add(&Appended {
                    record,
                    segment: e.segment,
                    offset: e.offset,
                    head: e.head,
                })?;
                indexed += 1;
                if indexed.is_multiple_of(10_000) {
                    progress(e.seq, end);
                }
            }
            Ok::<(), E>(())
        })?;
    }
    if w.is_dirty() || rebuilt.is_some() {
        w.commit()?;
    }
    progress(end, end);
    Ok(IndexCatchUp {
        rebuilt,
        indexed,
        through: w.indexed_through(),
    })
}

/// What bringing the index up to the log did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexCatchUp {
    /// Why the index was cleared and rebuilt from the first record, if it was.
    pub rebuilt: Option<String>,
    /// Records added.
    pub indexed: u64,
    /// The index now covers every record up to this seq.
    pub through: u64,
}

fn take_lock(dir: &Path) -> Result<WriterLock, ReindexError> {
    WriterLock::take(dir).map_err(|e| match e {
        LockError::Held => ReindexError::Locked {
            dir: dir.to_path_buf(),
        },
        LockError::Io(source) => ReindexError::Lock {
            dir: dir.to_path_buf(),
            source,
        },
    })
}

fn index_writer(
    dir: &Path,
    reader: &ArchiveReader,
    master: &MasterKey,
) -> Result<BlindIndexWriter, IndexError> {
    BlindIndexWriter::open(&index_dir(dir), master, reader.archive_id())
}

/// Brings the index of the archive in `dir` up to its log (see [`IndexCatchUp`]):
/// what `custos search` does before it searches when no server is running.
/// Takes the writer lock, failing with [`ReindexError::Locked`] while a serving
/// process writes (its own indexer keeps the index current).
pub fn update_index(
    dir: &Path,
    master_key: &MasterKey,
    mut progress: impl FnMut(u64, u64),
) -> Result<IndexCatchUp, ReindexError> {
    let reader = ArchiveReader::open(dir, master_key)?;
    let _lock = take_lock(dir)?;
    let mut w = index_writer(dir, &reader, master_key)?;
    let done = catch_up::<ReindexError>(&reader, &mut w, None, &mut progress)?;
    w.finish()?;
    Ok(done)
}

/// Rebuilds the index of the archive in `dir` from the record log.
/// `progress(done_seq, last_seq)`. Returns the message records indexed.
///
/// Takes the writer lock, failing with [`ReindexError::Locked`] while a
/// serving process writes: it would hold the index's own (tantivy) lock anyway,
/// and a server started during the rebuild would fail to open the index
/// instead of being told the archive is busy. Held until the rebuild ends.
pub fn reindex(
    dir: &Path,
    master_key: &MasterKey,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReindexError> {
    let reader = ArchiveReader::open(dir, master_key)?;
    let _lock = take_lock(dir)?;
    let mut w = match index_writer(dir, &reader, master_key) {
        Ok(w) => w,
        // Whatever is there is being replaced: an index that cannot even be opened too.
        Err(_) => {
            std::fs::remove_dir_all(index_dir(dir)).map_err(IndexError::Io)?;
            index_writer(dir, &reader, master_key)?
        }
    };
    let done = catch_up::<ReindexError>(&reader, &mut w, Some("requested"), &mut progress)?;
    w.finish()?;
    Ok(done.indexed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MessageRecord, Outcome, SessionId};

    fn message(severity: Option<&str>, e2ee: Option<&str>) -> Record {
        Record {
            seq: RecordSeq(42),
            time: Timestamp(0),
            content: NewRecord::Message(MessageRecord {
                direction: Direction::Outbound,
                session: SessionId("s".into()),
                from: "alice@example.test/laptop".into(),
                to: "bob@example.test".into(),
                stanza_type: "chat".into(),
                id: None,
                origin_id: None,
                stanza_id: None,
                thread: None,
                subject: None,
                body: Some("hi".into()),
                stanza: b"<message/>".to_vec(),
                outcome: Outcome {
                    action: Action::Flag,
                    rules: vec!["watch".into()],
                    delivered_body: None,
                    severity: severity.map(str::to_string),
                    e2ee: e2ee.map(str::to_string),
                    would_action: None,
                },
                capture: Default::default(),
            }),
        }
    }

    fn keys(hit: &Hit) -> Vec<String> {
        let v = serde_json::to_value(hit).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn hit_json_has_severity_and_e2ee_only_when_present() {
        let plain = Hit::from_record(message(None, None)).unwrap();
        assert_eq!(
            keys(&plain),
            [
                "account",
                "action",
                "body",
                "direction",
                "from",
                "leg",
                "message",
                "rules",
                "seq",
                "session",
                "time",
                "to",
                "type",
                "via"
            ]
        );
        let marked = Hit::from_record(message(Some("high"), Some("omemo"))).unwrap();
        let v = serde_json::to_value(&marked).unwrap();
        assert_eq!(v["severity"], "high");
        assert_eq!(v["e2ee"], "omemo");
        let only_e2ee = Hit::from_record(message(None, Some("otr"))).unwrap();
        assert!(keys(&only_e2ee).contains(&"e2ee".to_string()));
        assert!(!keys(&only_e2ee).contains(&"severity".to_string()));
    }
}
