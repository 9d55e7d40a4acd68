//! The serving process's writer: [`Archive`] with its group-commit writer thread and
//! indexer thread, appends, shredding and close.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{
    self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use crate::inbox::Drain;
use crate::index::{BlindIndexWriter, IndexError};
use crate::keys::MasterKey;
use crate::log::{self, Appended, LogLimits, LogWriter};
use crate::record::{EventRecord, NewRecord, Record, RecordSeq};

use crate::time::Timestamp;

use super::recent::{live_identities, RecentIdentities, RECENT_IDENTITIES};
use super::*;

/// Most records committed by one write + fsync.
const MAX_BATCH: usize = 4096;
/// [`ArchiveConfig::index_queue`] by default.
const INDEX_QUEUE_BATCHES: usize = 256;
/// [`ArchiveConfig::index_niceness`] by default.
const INDEX_NICENESS: i32 = 10;
/// How often the indexer commits when it has new documents: keeps a new
/// message searchable within a second.
const INDEX_COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How long the indexer lets appended batches gather when its queue runs dry in the
/// middle of a burst, instead of being woken for each.
const INDEX_GATHER: Duration = Duration::from_millis(10);

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
    /// Whether the witness directory is shared with the other node chains of this
    /// archive's bucket: without it, the archive does not start a witness file in a
    /// directory that holds another archive's ([`crate::witness::WitnessWriter::open`]).
    pub witness_shared: bool,
    /// A bucket that holds sealed segments ([`crate::bucket`]): reads fall back to it.
    pub object_store: Option<crate::bucket::Remote>,
    /// Batches of appended records that may wait for the indexer. Past this the writer
    /// leaves batches out rather than wait or hold more records in memory; the indexer
    /// reads what it missed from the log.
    pub index_queue: usize,
    /// How far below the process's own scheduling priority index building runs (the
    /// indexer thread and tantivy's threads under it), in `nice` steps, 0 to 19. When
    /// the CPU is short, relaying and the log's appends go first and the index catches
    /// up once there is room; with CPU to spare it changes nothing.
    pub index_niceness: i32,
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
            witness_shared: false,
            object_store: None,
            index_queue: INDEX_QUEUE_BATCHES,
            index_niceness: INDEX_NICENESS,
        }
    }
}

/// What a durable append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub seq: RecordSeq,
    pub time: Timestamp,
}

/// A record submitted to the log: awaiting it yields the durable acknowledgement (or
/// the refusal). Dropping it does not withdraw the record.
#[derive(Debug)]
#[must_use = "the record is durable only once the acknowledgement arrives"]
pub struct Submitted {
    ack: Option<oneshot::Receiver<Result<AppendReceipt, AppendError>>>,
    started: std::time::Instant,
}

impl std::future::Future for Submitted {
    type Output = Result<AppendReceipt, AppendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(ack) = self.ack.as_mut() else {
            return std::task::Poll::Ready(Err(AppendError::Closed));
        };
        let done = match std::pin::Pin::new(ack).poll(cx) {
            std::task::Poll::Pending => return std::task::Poll::Pending,
            std::task::Poll::Ready(r) => r.unwrap_or(Err(AppendError::Closed)),
        };
        self.ack = None;
        // From submission to the durable acknowledgement (or the refusal).
        metrics::histogram!("custos_archive_append_seconds")
            .record(self.started.elapsed().as_secs_f64());
        if done.is_err() {
            metrics::counter!("custos_archive_append_failures_total").increment(1);
        }
        std::task::Poll::Ready(done)
    }
}

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
    /// Refuse if a hold record was appended after this seq (the caller decided on
    /// the holds up to it).
    holds_through: Option<u64>,
    /// The shred record already exists at this seq (an interrupted shred): only the
    /// key is destroyed.
    recorded: Option<u64>,
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
    #[error("a hold was placed or changed (seq {0}) after the decision to shred segment {1}; the next run decides again")]
    HoldsChanged(u64, u64),
}

enum IndexCmd {
    Add(Vec<Appended>),
    Close(mpsc::Sender<Result<(), String>>),
}

struct Inner {
    /// Every record up to this seq is in the index's last commit.
    indexed: Arc<AtomicU64>,
    /// Raised before the index is removed to be rebuilt (it failed the check its
    /// indexer makes first): an answer read from the index across a change of it may
    /// have come from the emptied index, and is not trusted.
    index_epoch: Arc<AtomicU64>,
    /// The last durable record's seq.
    log_end: Arc<AtomicU64>,
    /// Live copies the index's last commit does not hold yet ([`super::recent`]).
    recent: Arc<Mutex<RecentIdentities>>,
    tx: Mutex<Option<Sender<Cmd>>>,
    reader: ArchiveReader,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    index_health: Arc<Mutex<Option<String>>>,
    inbox_health: Arc<Mutex<Option<String>>>,
    /// Why the writer refuses appends, once it does (it stays so until reopened).
    write_health: Arc<Mutex<Option<String>>>,
    /// What the retention job verifies the archive with before it shreds anything.
    public_key: ed25519_dalek::VerifyingKey,
    witness: Option<PathBuf>,
    /// Batches the writer left out of the indexer's full queue.
    index_deferred: Arc<AtomicU64>,
    /// The last record in the log when this process opened it: memory knows nothing of
    /// the messages up to it ([`Archive::live_copy`]).
    opened_at: u64,
    /// [`ArchiveConfig::index_niceness`].
    index_niceness: i32,
}

/// Whether a copy of a logical message that crossed Custos live is in the archive:
/// [`Archive::live_copy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveCopy {
    /// Recorded: in memory (submitted lately) or found by the index.
    Recorded,
    /// Not recorded: the index holds every record of the log and finds none, and memory
    /// holds none.
    Absent,
    /// Neither can tell: the index has not taken in every record that memory does not
    /// cover (it is catching up after a start, or lags past what memory holds), or it
    /// cannot be searched.
    Undetermined,
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

pub(crate) fn index_dir(dir: &Path) -> PathBuf {
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
        let remote = cfg
            .object_store
            .clone()
            .or_else(|| crate::bucket::registered(&dir));
        let storage = crate::bucket::storage_for(&dir, remote.as_ref());
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
            cfg.witness_shared,
        )?;
        let reader =
            ArchiveReader::from_parts(dir.clone(), storage.clone(), cfg.master_key.clone())?;
        // The index is derived data: one that cannot be opened is replaced. It is opened
        // on a thread of lowered priority, so that tantivy's threads, started now, run
        // at the indexer's priority and not at the relay's.
        let (indexer, emptied) = with_lowered_priority(cfg.index_niceness, || {
            // Reading the whole index (every block against its seal, the documents
            // against the commit's mark) is the indexer thread's first job: an open
            // that did it would take time in proportion to the archive.
            let mut indexer = match index_writer_checking_later(&dir, &reader, &cfg.master_key) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "search index cannot be opened; rebuilding it from the log");
                    std::fs::remove_dir_all(index_dir(&dir)).map_err(IndexError::Io)?;
                    index_writer(&dir, &reader, &cfg.master_key)?
                }
            };
            // The log is the source of truth. An index that is not this log's is emptied
            // here, at once; filling it (or catching up one that is behind) is the
            // indexer thread's first job, while the archive already serves: until it is
            // done, every search says which records it has not seen.
            let emptied = trust_or_clear::<OpenError>(&reader, &mut indexer, None)?;
            // An index behind the log (lost, emptied, or left at a crash) says so at
            // once, before anything is appended: a kill before the indexer's first
            // commit then leaves a catch-up for `verify` to note, not a lag it must
            // take for an index rolled back.
            let end = reader.chain_end()?;
            if indexer.indexed_through() < end && indexer.mark().owed < end {
                indexer.owe(end);
                indexer.commit()?;
            }
            Ok::<_, OpenError>((indexer, emptied))
        })
        .map_err(OpenError::Thread)??;
        if let Some(why) = emptied {
            tracing::warn!(reason = %why, "search index emptied; rebuilding it from the log");
        }
        let indexed = Arc::new(AtomicU64::new(indexer.indexed_through()));
        let index_epoch = Arc::new(AtomicU64::new(0));
        let fill_reader =
            ArchiveReader::from_parts(dir.clone(), storage.clone(), cfg.master_key.clone())?;
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
        let (itx, irx) = mpsc::sync_channel::<IndexCmd>(cfg.index_queue.max(1));
        let itx = IndexQueue {
            tx: itx,
            deferred: Arc::default(),
            stop: Arc::default(),
        };
        if !first_batch.is_empty() {
            to_indexer(&itx, first_batch);
        }
        let health = Arc::new(Mutex::new(None));
        let h2 = health.clone();
        let recent = Arc::new(Mutex::new(RecentIdentities::default()));
        std::thread::Builder::new()
            .name("custos-indexer".into())
            .spawn({
                let marks = IndexMarks {
                    indexed: indexed.clone(),
                    epoch: index_epoch.clone(),
                    log_end: log_end.clone(),
                    recent: recent.clone(),
                    stop: itx.stop.clone(),
                    close_budget: CLOSE_BUDGET,
                };
                let niceness = cfg.index_niceness;
                move || {
                    lower_thread_priority(niceness);
                    indexer_loop(indexer, fill_reader, irx, h2, marks)
                }
            })
            .map_err(OpenError::Thread)?;
        let ih = inbox_health.clone();
        let le = log_end.clone();
        let write_health: Arc<Mutex<Option<String>>> = Arc::default();
        let wh = write_health.clone();
        let index_deferred = itx.deferred.clone();
        let writer_thread = std::thread::Builder::new()
            .name("custos-archive-writer".into())
            .spawn(move || {
                writer_loop(log, rx, itx, inbox, ih, le, wh);
                // Only now, with the last segment sealed and the index
                // finished, may another process write.
                drop(lock);
            })
            .map_err(OpenError::Thread)?;
        let opened_at = log_end.load(Ordering::Acquire);
        Ok(Archive {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                reader,
                writer_thread: Mutex::new(Some(writer_thread)),
                index_health: health,
                inbox_health,
                write_health,
                recent,
                indexed,
                index_epoch,
                log_end,
                public_key: cfg.signing_key.verifying_key(),
                witness: cfg.witness.clone(),
                index_deferred,
                index_niceness: cfg.index_niceness,
                opened_at,
            }),
        })
    }

    /// Lowers the calling thread to the priority index building runs at
    /// ([`ArchiveConfig::index_niceness`]): for other work that follows the archive in
    /// the background, such as the review UI's follower, so that it too gives way to
    /// relaying when the CPU is short.
    pub fn lower_to_index_priority(&self) {
        lower_thread_priority(self.inner.index_niceness);
    }

    /// How many batches of appended records the indexer's full queue made the writer
    /// leave out since open (the indexer read them from the log).
    pub fn index_deferred(&self) -> u64 {
        self.inner.index_deferred.load(Ordering::Relaxed)
    }

    /// How many identities of live copies are held in memory because no index commit
    /// holds their records yet ([`Archive::live_copy`]).
    pub fn unindexed_identities(&self) -> usize {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Verifies the archive as `custos verify` does (against the witness when one is
    /// configured), as it is at this moment.
    pub fn verify_now(&self) -> crate::verify::VerifyReport {
        let dir = &self.inner.reader.dir;
        let storage = self.inner.reader.storage.as_ref();
        let master = Some(&self.inner.reader.master);
        match &self.inner.witness {
            Some(w) => crate::verify::verify_witnessed_in(
                dir,
                storage,
                master,
                &self.inner.public_key,
                w,
                |_, _| {},
            ),
            None => {
                crate::verify::verify_in(dir, storage, master, &self.inner.public_key, |_, _| {})
            }
        }
    }

    /// Whether a copy of the logical message `identity` that crossed Custos live (not an
    /// archive replay) has been recorded: first the live copies submitted that the
    /// index's last commit does not hold yet ([`super::recent`]), then the index.
    /// [`LiveCopy::Absent`] only when the index holds every record that memory does not
    /// cover; otherwise a miss is [`LiveCopy::Undetermined`]. The caller flags both.
    pub fn live_copy(&self, identity: &str) -> LiveCopy {
        // Read before the look-ups: a record indexed meanwhile only makes them surer.
        let epoch = self.inner.index_epoch.load(Ordering::SeqCst);
        let indexed = self.inner.indexed.load(Ordering::SeqCst);
        let log_end = self.inner.log_end.load(Ordering::Acquire);
        let forgotten = {
            let recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.contains(identity) {
                return LiveCopy::Recorded;
            }
            recent.forgotten()
        };
        if identity.is_empty() || !identity.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return LiveCopy::Absent;
        }
        let found = self
            .inner
            .reader
            .search(&format!("msg:{identity} -via:mam"), 1);
        match found {
            Ok(hits) if !hits.is_empty() => LiveCopy::Recorded,
            // The index was removed to be rebuilt meanwhile: the search may have met it
            // empty.
            Ok(_) if self.inner.index_epoch.load(Ordering::SeqCst) != epoch => {
                LiveCopy::Undetermined
            }
            Ok(_) => {
                // Memory covers this process's submissions up to its bound; the index
                // must cover the rest.
                let covered =
                    indexed >= log_end || (indexed >= self.inner.opened_at && forgotten == 0);
                if covered {
                    LiveCopy::Absent
                } else {
                    LiveCopy::Undetermined
                }
            }
            Err(_) => LiveCopy::Undetermined,
        }
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
        self.request_shred(ShredRequest {
            segment,
            reason: reason.to_owned(),
            authority: authority.to_owned(),
            actor: actor.to_owned(),
            holds_through: None,
            recorded: None,
        })
        .await
    }

    /// [`Archive::shred_segment`] for the retention job: refused if any hold record was
    /// appended after seq `holds_through`, the point up to which the job read the holds.
    pub(super) async fn shred_expired(
        &self,
        segment: u64,
        authority: &str,
        actor: &str,
        holds_through: u64,
    ) -> Result<AppendReceipt, ShredError> {
        self.request_shred(ShredRequest {
            segment,
            reason: crate::retention::EXPIRY_REASON.to_owned(),
            authority: authority.to_owned(),
            actor: actor.to_owned(),
            holds_through: Some(holds_through),
            recorded: None,
        })
        .await
    }

    /// Destroys the key of a segment whose shred record (at `recorded`) is already in the
    /// chain: completes a shred interrupted between its record and the key's removal.
    /// Refused, like [`Archive::shred_expired`], if a hold record was appended after
    /// `holds_through`.
    pub async fn complete_shred(
        &self,
        segment: u64,
        recorded: u64,
        holds_through: u64,
    ) -> Result<AppendReceipt, ShredError> {
        self.request_shred(ShredRequest {
            segment,
            reason: String::new(),
            authority: String::new(),
            actor: String::new(),
            holds_through: Some(holds_through),
            recorded: Some(recorded),
        })
        .await
    }

    async fn request_shred(&self, req: ShredRequest) -> Result<AppendReceipt, ShredError> {
        let segment = req.segment;
        let (ack_tx, ack_rx) = oneshot::channel();
        {
            let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard.as_ref().ok_or(ShredError::Closed)?;
            tx.send(Cmd::Shred(req, ack_tx))
                .map_err(|_| ShredError::Closed)?;
        }
        let receipt = ack_rx.await.map_err(|_| ShredError::Closed)??;
        // The key is gone from disk; it must not live on in this process's cache either.
        self.inner.reader.forget_segment(segment);
        Ok(receipt)
    }

    /// Appends a record; resolves only once it is durable (fsynced), with the
    /// seq and time the archive assigned.
    pub async fn append(&self, rec: NewRecord) -> Result<AppendReceipt, AppendError> {
        self.submit(rec).await
    }

    /// Queues a record for the log and returns at once; the [`Submitted`] resolves once it
    /// is durable. Records enter the log in the order of their `submit` calls, so a
    /// caller that submits several before awaiting any keeps its order on disk, and the
    /// writer commits them together. A failed write fails every record queued after it
    /// (the writer refuses all further appends until reopened).
    pub fn submit(&self, rec: NewRecord) -> Submitted {
        // Known before the writer can take it, until the index has committed it.
        let live = live_identities(&rec).next().is_some();
        if live {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            let unremembered = live_identities(&rec)
                .filter(|id| !recent.submitted(id))
                .count();
            if unremembered > 0 {
                metrics::counter!("custos_recent_identities_forgotten_total")
                    .increment(unremembered as u64);
            }
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        let started = std::time::Instant::now();
        let refused = {
            let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(tx) => match tx.send(Cmd::Append(rec, ack_tx)) {
                    Ok(()) => None,
                    Err(mpsc::SendError(Cmd::Append(rec, _))) => Some(rec),
                    Err(_) => None, // only an append was sent
                },
                None => Some(rec),
            }
        };
        let sent = refused.is_none();
        if let (Some(rec), true) = (&refused, live) {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            live_identities(rec).for_each(|id| recent.settled(id));
        }
        Submitted {
            ack: sent.then_some(ack_rx),
            started,
        }
    }

    /// Why the archive refuses appends, if it does (a write or fsync failed; reopening
    /// recovers). `None`: writable.
    pub fn write_health(&self) -> Option<String> {
        self.inner
            .write_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The seq of the last record durable in the log (0: none).
    pub fn durable_seq(&self) -> u64 {
        self.inner.log_end.load(Ordering::Acquire)
    }

    /// Records durable in the log but not yet in the index's last commit.
    pub fn index_lag(&self) -> u64 {
        self.inner
            .log_end
            .load(Ordering::Acquire)
            .saturating_sub(self.inner.indexed.load(Ordering::Acquire))
    }

    /// Searches; see [`ArchiveReader::search`].
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        self.inner.reader.search(query, limit)
    }

    /// Searches, saying which records the index has not taken in yet (the newest,
    /// for up to a commit interval, or more while indexing fails).
    pub fn search_covered(&self, query: &str, limit: usize) -> Result<Searched, SearchError> {
        // Read before the search: the searcher reloads to a commit at least this new.
        let epoch = self.inner.index_epoch.load(Ordering::SeqCst);
        let mut through = self.inner.indexed.load(Ordering::SeqCst);
        let end = self.inner.log_end.load(Ordering::Acquire);
        let why = match self.index_health() {
            Some(e) => format!("indexing is failing: {e}"),
            None => "not yet indexed".to_owned(),
        };
        let hits = self.search(query, limit)?;
        // The index was removed to be rebuilt meanwhile: it answered for nothing.
        if self.inner.index_epoch.load(Ordering::SeqCst) != epoch {
            through = 0;
        }
        Ok(Searched {
            hits,
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

/// Hands appended records to the indexer without ever waiting on it: with its queue
/// full the batch is left out, and the indexer, finding the gap, reads those records
/// from the log (the log is the record; the index follows it).
fn to_indexer(itx: &IndexQueue, appended: Vec<Appended>) {
    if let Err(TrySendError::Full(_)) = itx.tx.try_send(IndexCmd::Add(appended)) {
        itx.deferred.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("custos_index_batches_deferred_total").increment(1);
    }
}

/// The writer's side of the indexer's bounded queue.
struct IndexQueue {
    tx: SyncSender<IndexCmd>,
    /// Batches left out because the queue was full.
    deferred: Arc<AtomicU64>,
    /// Tells the indexer the archive is closing: after [`CLOSE_BUDGET`] it adds
    /// nothing more, from its queue or the log (a rebuild, records the queue left
    /// out), rather than hold the close.
    stop: Arc<AtomicBool>,
}

/// One write and one fsync for `batch`, timed and counted.
fn write_batch(
    log: &mut LogWriter,
    batch: Vec<NewRecord>,
) -> Result<Vec<crate::log::Appended>, crate::log::LogWriteError> {
    metrics::histogram!("custos_archive_batch_records").record(batch.len() as f64);
    let written = std::time::Instant::now();
    let r = log.append_batch(batch);
    metrics::histogram!("custos_archive_write_seconds").record(written.elapsed().as_secs_f64());
    r
}

fn writer_loop(
    mut log: LogWriter,
    rx: Receiver<Cmd>,
    itx: IndexQueue,
    mut inbox: Drain,
    inbox_health: Arc<Mutex<Option<String>>>,
    log_end: Arc<AtomicU64>,
    write_health: Arc<Mutex<Option<String>>>,
) {
    let mut failed: Option<String> = None;
    let mut failure_shown = false;
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
                    to_indexer(&itx, d.appended);
                    if let Err(e) = log.maybe_roll() {
                        *failed = Some(e.to_string());
                    }
                }
            }
            Err(e) => *failed = Some(e.to_string()),
        }
    };
    let finish = |log: LogWriter, itx: &IndexQueue| -> Result<(), CloseError> {
        itx.stop.store(true, Ordering::Release);
        let sealed = log.finish().map_err(|e| CloseError::Seal(e.to_string()));
        let (dtx, drx) = mpsc::channel();
        let indexed = match itx.tx.send(IndexCmd::Close(dtx)) {
            Ok(()) => drx.recv().unwrap_or(Ok(())).map_err(CloseError::Index),
            Err(_) => Ok(()),
        };
        sealed.and(indexed)
    };
    loop {
        if !failure_shown && failed.is_some() {
            *write_health.lock().unwrap_or_else(|p| p.into_inner()) = failed.clone();
            failure_shown = true;
        }
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
                None => match write_batch(&mut log, batch) {
                    Ok(appended) => {
                        publish(&log);
                        for (a, ack) in appended.iter().zip(acks) {
                            let _ = ack.send(Ok(AppendReceipt {
                                seq: a.record.seq,
                                time: a.record.time,
                            }));
                        }
                        to_indexer(&itx, appended);
                        if let Err(e) = log.maybe_roll() {
                            failed = Some(e.to_string());
                        }
                    }
                    Err(e) => {
                        // The file may now hold part of this batch: refuse all
                        // further writes (fail closed); reopening recovers. The batch's
                        // identities stay known until then (what is relayed meanwhile,
                        // with `on_failure = "deliver"`, did cross Custos), and the
                        // reopened archive starts afresh.
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
            // A hold handed over by another process counts from the moment it was
            // submitted: append what waits in the inbox before deciding.
            drain(&mut inbox, &mut log, &mut failed);
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
                itx.stop.store(true, Ordering::Release);
                let _ = itx.tx.send(IndexCmd::Close(mpsc::channel().0));
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
    itx: &IndexQueue,
) -> Result<AppendReceipt, ShredError> {
    let segment = req.segment;
    if segment == log.active_segment() {
        return Err(ShredError::Active(segment));
    }
    if !log.has_key(segment) {
        return Err(ShredError::NoKey(segment));
    }
    if let Some(through) = req.holds_through {
        if log.last_hold_seq() > through {
            return Err(ShredError::HoldsChanged(log.last_hold_seq(), segment));
        }
    }
    let failed = |why: String| ShredError::Failed { segment, why };
    if let Some(seq) = req.recorded {
        log.destroy_key(segment)
            .map_err(|e| failed(e.to_string()))?;
        return Ok(AppendReceipt {
            seq: RecordSeq(seq),
            time: Timestamp::now(),
        });
    }
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
    to_indexer(itx, appended);
    crate::crash_point("shred-recorded");
    log.destroy_key(segment)
        .map_err(|e| failed(e.to_string()))?;
    crate::crash_point("shred-key-destroyed");
    receipt.ok_or_else(|| failed("no record appended".into()))
}

/// Runs `f` on a thread of its own whose scheduling priority is `niceness` steps below
/// the caller's, and returns what it returns. Threads that `f` starts inherit that
/// priority: Linux keeps a nice value per thread and hands it to the threads a thread
/// creates, which is how tantivy's merge and segment-updater threads get it.
fn with_lowered_priority<T: Send>(
    niceness: i32,
    f: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    std::thread::scope(|s| {
        let opener = std::thread::Builder::new()
            .name("custos-index-open".into())
            .spawn_scoped(s, || {
                lower_thread_priority(niceness);
                f()
            })?;
        Ok(opener
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// Lowers the calling thread's scheduling priority by `niceness` steps (its nice value
/// rises, to at most 19). Best effort: where the system refuses, the thread keeps the
/// priority it has, and a warning says so.
pub(crate) fn lower_thread_priority(niceness: i32) {
    if niceness <= 0 {
        return;
    }
    let me = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(me))
        .and_then(|now| rustix::process::setpriority_process(Some(me), (now + niceness).min(19)));
    if let Err(e) = lowered {
        tracing::warn!(error = %e, niceness, "cannot lower the search index's scheduling priority; it runs at the relay's");
    }
}

/// Identities let go per taking of the recent set's lock.
const SETTLE_CHUNK: usize = 256;

/// What the indexer shares with the writer and the [`Archive`] handles.
struct IndexMarks {
    /// Every record up to this seq is in the index's last commit.
    indexed: Arc<AtomicU64>,
    /// [`Inner::index_epoch`].
    epoch: Arc<AtomicU64>,
    /// The last durable record's seq.
    log_end: Arc<AtomicU64>,
    /// Live copies not yet in the index's last commit; the indexer lets go of each once
    /// a commit holds it.
    recent: Arc<Mutex<RecentIdentities>>,
    /// Set when the archive closes: a catch-up from the log stops where it is.
    stop: Arc<AtomicBool>,
    /// How long, once `stop` is set, records appended before it are still added
    /// (from the queue or the log) before the rest is left to the next open
    /// ([`CLOSE_BUDGET`]).
    close_budget: Duration,
}

/// How long a closing archive's indexer still adds what was appended before the close,
/// from its queue or the log: a busy server's last half second or so goes in, so that
/// a clean stop leaves a whole index, while a backlog (the queue holds up to
/// [`INDEX_QUEUE_BATCHES`] batches) or a rebuild does not hold the close.
const CLOSE_BUDGET: Duration = Duration::from_secs(1);

fn indexer_loop(
    mut idx: BlindIndexWriter,
    reader: ArchiveReader,
    rx: Receiver<IndexCmd>,
    health: Arc<Mutex<Option<String>>>,
    marks: IndexMarks,
) {
    let IndexMarks {
        indexed,
        epoch,
        log_end,
        recent,
        stop,
        close_budget,
    } = marks;
    let live_end = || log_end.load(Ordering::Acquire);
    // When the indexer first saw the archive closing. What was appended before the close
    // is still added, from the queue or the log, for a short while (a busy server's last
    // moment, or what a short session appended before the first check was done); then
    // the rest is left, owed, to the next open.
    let closing: std::cell::Cell<Option<Instant>> = std::cell::Cell::new(None);
    let past_budget = || {
        if !stop.load(Ordering::Acquire) {
            return false;
        }
        let since = closing.get().unwrap_or_else(Instant::now);
        closing.set(Some(since));
        since.elapsed() >= close_budget
    };
    let set = |e: Option<String>| *health.lock().unwrap_or_else(|p| p.into_inner()) = e;
    // Identities of the live copies added since the last commit. Once a commit holds
    // them, the index answers for them: memory lets them go (after the mark is raised).
    // Bounded as the set is: while commits fail, what is not listed stays remembered,
    // which errs toward placing a replay, never toward flagging one wrongly.
    let uncommitted: RefCell<Vec<String>> = RefCell::default();
    let added = |record: &Record| {
        let mut u = uncommitted.borrow_mut();
        for id in live_identities(&record.content) {
            if u.len() < RECENT_IDENTITIES {
                u.push(id.to_owned());
            }
        }
    };
    let committed = |through: u64| {
        indexed.store(through, Ordering::Release);
        let mut u = uncommitted.borrow_mut();
        // A few at a time: submitters take the same lock at the relay's priority, and
        // this thread runs below it.
        for chunk in u.chunks(SETTLE_CHUNK) {
            let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            chunk.iter().for_each(|id| recent.settled(id));
        }
        u.clear();
    };
    // The check the open left: nothing is added to an index not read whole. One that
    // fails it is removed and rebuilt from the log, as an open would have; searches and
    // live-copy look-ups that straddle the removal see the epoch change. A close waits
    // for it: stopped half way, it would leave records appended meanwhile neither
    // indexed nor owed.
    match idx.check_deferred() {
        Ok(()) => {}
        Err(why) => {
            tracing::warn!(reason = %why, "search index failed its check; rebuilding it from the log");
            // In this order: a reader that sees the old epoch and then the old mark sees
            // the new epoch after its search.
            indexed.store(0, Ordering::SeqCst);
            epoch.fetch_add(1, Ordering::SeqCst);
            idx = match idx.rebuild_from_nothing(live_end()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "search index cannot be rebuilt");
                    set(Some(format!("rebuilding the index: {e}")));
                    // Nothing more is written; the next open tries again.
                    return drain_until_closed(rx);
                }
            };
        }
    }
    // First what the log holds beyond the index's mark; appends queued meanwhile are
    // skipped by `add` up to where the fill reached.
    let started = Instant::now();
    let filled = fill::<OpenError>(
        &reader,
        &mut idx,
        FillHooks {
            progress: &mut |done, last| {
                if done < last {
                    tracing::info!(done, last, "search index catching up with the log");
                }
            },
            committed: &mut |through| committed(through),
            added: &mut |record| added(record),
            log_end: Some(&live_end),
            stop: &past_budget,
        },
    );
    // After a failure nothing more is added: a later record must never move the mark
    // past one that is missing. The next open catches up from the last commit. Nor
    // after a fill told to stop: the archive is closing, and the next open goes on.
    let mut stopped = false;
    let mut broken = match filled {
        Ok(f) if f.stopped => {
            stopped = true;
            false
        }
        Ok(Filled { added: 0, .. }) => false,
        Ok(f) => {
            tracing::info!(
                records = f.added,
                seconds = started.elapsed().as_secs_f64(),
                "search index caught up with the log"
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "search index cannot catch up with the log");
            set(Some(format!("catching up with the log: {e}")));
            true
        }
    };
    let mut last_commit = Instant::now();
    // Twice a second while records come, or sooner when the writer holds many.
    let commit_if_due = |idx: &mut BlindIndexWriter, last_commit: &mut Instant| {
        if idx.is_dirty() && (last_commit.elapsed() >= INDEX_COMMIT_INTERVAL || idx.commit_due()) {
            match idx.commit() {
                Ok(()) => {
                    committed(idx.indexed_through());
                    set(None)
                }
                Err(e) => set(Some(e.to_string())),
            }
            *last_commit = Instant::now();
        }
    };
    // Reads from the log what the index is missing: whether it was told to stop first,
    // or `None` (and the index's health set) when it cannot.
    let catch_up = |idx: &mut BlindIndexWriter| -> Option<bool> {
        let caught_up = fill::<OpenError>(
            &reader,
            idx,
            FillHooks {
                progress: &mut |_, _| {},
                committed: &mut |through| committed(through),
                added: &mut |record| added(record),
                log_end: Some(&live_end),
                stop: &past_budget,
            },
        );
        match caught_up {
            Ok(f) => Some(f.stopped),
            Err(e) => {
                tracing::error!(error = %e, "search index cannot read the records it missed from the log");
                set(Some(format!("catching up with the log: {e}")));
                None
            }
        }
    };
    // Whether the last command added records: appends may be arriving.
    let mut busy = false;
    loop {
        let cmd = match rx.try_recv() {
            Ok(cmd) => Ok(cmd),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            // The queue ran dry while appends arrive: the writer's next batches gather
            // for a moment rather than wake this thread, each, on their way to an
            // index that commits twice a second anyway.
            Err(TryRecvError::Empty) if std::mem::take(&mut busy) => {
                std::thread::sleep(INDEX_GATHER);
                // A commit that fell due meanwhile is not left to the next wake-up.
                if !broken && !stopped {
                    commit_if_due(&mut idx, &mut last_commit);
                }
                continue;
            }
            Err(TryRecvError::Empty) => rx.recv_timeout(INDEX_COMMIT_INTERVAL),
        };
        busy = matches!(cmd, Ok(IndexCmd::Add(_)));
        match cmd {
            Ok(IndexCmd::Add(_)) if !stopped && past_budget() => {
                stopped = true;
            }
            Ok(IndexCmd::Add(v)) if !broken && !stopped => {
                let first = v.first().map_or(0, |a| a.record.seq.0);
                // Batches were left out while the queue was full: what lies between
                // comes from the log first, so the mark never passes a record that is
                // not in the index.
                if first > idx.indexed_through() + 1 {
                    match catch_up(&mut idx) {
                        Some(false) => {}
                        Some(true) => {
                            stopped = true;
                            continue;
                        }
                        None => {
                            broken = true;
                            continue;
                        }
                    }
                }
                for a in &v {
                    if let Err(e) = idx.add(a) {
                        set(Some(e.to_string()));
                        broken = true;
                        break;
                    }
                    added(&a.record);
                }
            }
            Ok(IndexCmd::Add(_)) => {}
            Ok(IndexCmd::Close(done)) => {
                let r = if broken {
                    Ok(())
                } else {
                    close_index(idx, live_end(), stopped).map_err(|e| e.to_string())
                };
                let _ = done.send(r);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                // Idle with records the queue left out (the last batches of a burst):
                // nothing more will come to show the gap, so look at the log's end.
                if !broken && !stopped && live_end() > idx.indexed_through() {
                    match catch_up(&mut idx) {
                        Some(false) => {}
                        Some(true) => stopped = true,
                        None => broken = true,
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                if !broken {
                    let _ = close_index(idx, live_end(), stopped);
                }
                return;
            }
        }
        if !broken && !stopped {
            commit_if_due(&mut idx, &mut last_commit);
        }
    }
}

/// An indexer that can write nothing: it takes what comes until the archive closes.
fn drain_until_closed(rx: Receiver<IndexCmd>) {
    while let Ok(cmd) = rx.recv() {
        if let IndexCmd::Close(done) = cmd {
            let _ = done.send(Ok(()));
            return;
        }
    }
}

/// The index's last commit at close: it owes whatever the log holds past its mark (a
/// catch-up the close stopped, batches the full queue left out), so `verify` reads a
/// lag the next open fills, not an index rolled back.
fn close_index(mut idx: BlindIndexWriter, log_end: u64, stopped: bool) -> Result<(), IndexError> {
    idx.owe(log_end);
    if stopped {
        tracing::info!(
            through = idx.indexed_through(),
            log_end,
            "search index left behind the log at close; the next open catches up"
        );
    }
    idx.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive of `n` chat messages, closed (its index whole), with its keys.
    struct Closed {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        master: MasterKey,
        signing: SigningKey,
        public: ed25519_dalek::VerifyingKey,
    }

    async fn closed_archive(n: u64) -> Closed {
        let tmp = tempfile::tempdir().unwrap();
        let c = crate::keys::keys_init(
            &tmp.path().join("master.key"),
            &tmp.path().join("signing.key"),
        )
        .unwrap();
        let master = MasterKey::from_file(&c.master_key).unwrap();
        let signing = crate::keys::load_signing_key(&c.signing_key).unwrap();
        let dir = tmp.path().join("archive");
        let cfg = ArchiveConfig::new(dir.clone(), master.clone(), signing.clone());
        let a = Archive::open(cfg).unwrap();
        for i in 0..n {
            a.append(NewRecord::Message(crate::record::MessageRecord::chat(
                "alice@example.test",
                "bob@example.test",
                format!("message {i}"),
            )))
            .await
            .unwrap();
        }
        a.close().await.unwrap();
        Closed {
            _tmp: tmp,
            dir,
            master,
            public: c.verifying_key,
            signing,
        }
    }

    fn my_niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    /// The indexer told to stop (the archive closing) while it catches up from the log
    /// adds nothing more, not even what the queue brings after the gap, and its last
    /// commit owes what the log holds: the close does not wait for the rebuild, and
    /// `verify` reads the lag as one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_indexer_told_to_stop_while_catching_up_adds_nothing_more_and_owes_the_rest() {
        let Closed {
            _tmp,
            dir,
            master,
            signing: _,
            public,
        } = closed_archive(300).await;
        std::fs::remove_dir_all(index_dir(&dir)).unwrap();

        let reader = ArchiveReader::open(&dir, &master).unwrap();
        let end = reader.chain_end().unwrap();
        let idx = index_writer(&dir, &reader, &master).unwrap();
        let (tx, rx) = mpsc::sync_channel(4);
        // A batch of the live feed past the gap the fill was to close.
        let mut later = Vec::new();
        reader
            .scan(end, |e| {
                later.push(Appended {
                    record: e.record.unwrap(),
                    segment: e.segment,
                    offset: e.offset,
                    head: e.head,
                });
                Ok::<(), ReadError>(())
            })
            .unwrap();
        tx.send(IndexCmd::Add(later)).unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        tx.send(IndexCmd::Close(done_tx)).unwrap();
        let marks = IndexMarks {
            indexed: Arc::default(),
            epoch: Arc::default(),
            log_end: Arc::new(AtomicU64::new(end)),
            recent: Arc::default(),
            stop: Arc::new(AtomicBool::new(true)),
            close_budget: Duration::ZERO,
        };
        indexer_loop(idx, reader, rx, Arc::default(), marks);
        assert_eq!(done_rx.recv().unwrap(), Ok(()));

        let mark = crate::index::read_mark(
            &index_dir(&dir),
            &master,
            &ArchiveReader::open(&dir, &master).unwrap().archive_id(),
        )
        .unwrap();
        assert_eq!((mark.through, mark.owed), (0, end));
        let r = crate::verify::verify(&dir, Some(&master), &public, |_, _| {});
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("catching up with the log")),
            "{:?}",
            r.notes
        );
    }

    /// An indexer told to stop before it made the check its open left still makes it
    /// (a close waits for it), and leaves a whole index as it was: no commit, and
    /// tantivy's lock free once the close is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_indexer_told_to_stop_before_its_first_check_leaves_a_whole_index_as_it_was() {
        let Closed {
            _tmp,
            dir,
            master,
            signing: _,
            public: _,
        } = closed_archive(50).await;
        let reader = ArchiveReader::open(&dir, &master).unwrap();
        let id = reader.archive_id();
        let before = crate::index::read_mark(&index_dir(&dir), &master, &id).unwrap();
        let meta = std::fs::read(index_dir(&dir).join("meta.json")).unwrap();

        let idx = index_writer_checking_later(&dir, &reader, &master).unwrap();
        let (tx, rx) = mpsc::sync_channel(4);
        let (done_tx, done_rx) = mpsc::channel();
        tx.send(IndexCmd::Close(done_tx)).unwrap();
        let marks = IndexMarks {
            indexed: Arc::default(),
            epoch: Arc::default(),
            log_end: Arc::new(AtomicU64::new(before.through)),
            recent: Arc::default(),
            stop: Arc::new(AtomicBool::new(true)),
            close_budget: Duration::ZERO,
        };
        indexer_loop(idx, reader, rx, Arc::default(), marks);
        assert_eq!(done_rx.recv().unwrap(), Ok(()));
        assert_eq!(
            std::fs::read(index_dir(&dir).join("meta.json")).unwrap(),
            meta,
            "a commit was made"
        );
        // The index's lock is free: another writer opens it, and finds it whole.
        let reader = ArchiveReader::open(&dir, &master).unwrap();
        let w = index_writer(&dir, &reader, &master).unwrap();
        assert_eq!(w.found().unwrap(), before);
    }

    /// Told to stop (the archive closing) with a backlog of batches already queued,
    /// the indexer adds them only for its close budget, then leaves the rest owed to the
    /// next open: a close does not wait for the index to take in a backlog.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closing_indexer_leaves_a_queued_backlog_owed() {
        let Closed {
            _tmp,
            dir,
            master,
            signing,
            public: _,
        } = closed_archive(30).await;
        std::fs::remove_dir_all(index_dir(&dir)).unwrap();

        let reader = ArchiveReader::open(&dir, &master).unwrap();
        let n = reader.chain_end().unwrap();
        let idx = index_writer(&dir, &reader, &master).unwrap();
        let (tx, rx) = mpsc::sync_channel(8);
        let stop = Arc::new(AtomicBool::new(false));
        let log_end = Arc::new(AtomicU64::new(n));
        let indexed = Arc::new(AtomicU64::new(0));
        let marks = IndexMarks {
            indexed: indexed.clone(),
            epoch: Arc::default(),
            log_end: log_end.clone(),
            recent: Arc::default(),
            stop: stop.clone(),
            close_budget: Duration::ZERO,
        };
        let indexer =
            std::thread::spawn(move || indexer_loop(idx, reader, rx, Arc::default(), marks));
        while indexed.load(Ordering::Acquire) < n {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A burst the writer appended; its batches wait in the indexer's queue.
        let (mut log, _) = crate::log::LogWriter::open(
            crate::bucket::storage_for_dir(&dir),
            master.clone(),
            signing,
            crate::log::LogLimits {
                segment_max_bytes: 64 << 20,
                segment_max_age: Duration::from_secs(24 * 3600),
                checkpoint_every: 1000,
            },
        )
        .unwrap();
        let mut batches = Vec::new();
        for b in 0..6 {
            let batch = (0..1000)
                .map(|i| {
                    NewRecord::Message(crate::record::MessageRecord::chat(
                        "alice@example.test",
                        "bob@example.test",
                        format!("burst {b} {i}"),
                    ))
                })
                .collect();
            batches.push(log.append_batch(batch).unwrap());
        }
        let end = log.next_seq() - 1;
        log.finish().unwrap();
        stop.store(true, Ordering::Release);
        for b in batches {
            tx.send(IndexCmd::Add(b)).unwrap();
        }
        log_end.store(end, Ordering::Release);
        let (done_tx, done_rx) = mpsc::channel();
        tx.send(IndexCmd::Close(done_tx)).unwrap();
        assert_eq!(done_rx.recv().unwrap(), Ok(()));
        indexer.join().unwrap();
        let mark = crate::index::read_mark(
            &index_dir(&dir),
            &master,
            &ArchiveReader::open(&dir, &master).unwrap().archive_id(),
        )
        .unwrap();
        assert_eq!((mark.through, mark.owed), (n, end));
    }

    #[test]
    fn lowering_a_threads_priority_leaves_the_thread_that_started_it_alone() {
        let before = my_niceness();
        let (inside_before, inside_after) = std::thread::spawn(|| {
            let b = my_niceness();
            lower_thread_priority(3);
            (b, my_niceness())
        })
        .join()
        .unwrap();
        assert_eq!(inside_before, before);
        assert_eq!(inside_after, (before + 3).min(19));
        assert_eq!(my_niceness(), before);
        // Nothing asked, nothing changed; and never past 19.
        let (none, capped) = std::thread::spawn(|| {
            lower_thread_priority(0);
            let none = my_niceness();
            lower_thread_priority(40);
            (none, my_niceness())
        })
        .join()
        .unwrap();
        assert_eq!(none, before);
        assert_eq!(capped, 19);
    }

    #[test]
    fn threads_started_under_a_lowered_priority_inherit_it() {
        let before = my_niceness();
        let (opener, started) = with_lowered_priority(4, || {
            let started = std::thread::spawn(my_niceness).join().unwrap();
            (my_niceness(), started)
        })
        .unwrap();
        assert_eq!(opener, (before + 4).min(19));
        assert_eq!(started, opener);
        assert_eq!(my_niceness(), before);
    }
}
