//! Keeping the index true to the log: catching up, rebuilding, and `reindex`.

use std::path::Path;

use crate::index::{BlindIndexWriter, IndexError};
use crate::keys::MasterKey;
use crate::log::Appended;

use super::*;

/// Brings the index up to the log it belongs to: [`trust_or_clear`], then [`fill`].
pub(super) fn catch_up<E: From<ReadError> + From<IndexError>>(
    reader: &ArchiveReader,
    w: &mut BlindIndexWriter,
    force: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<IndexCatchUp, E> {
    let rebuilt = trust_or_clear::<E>(reader, w, force)?;
    let filled = fill::<E>(
        reader,
        w,
        FillHooks {
            progress,
            committed: &mut |_| {},
            added: &mut |_| {},
            log_end: None,
            stop: &|| false,
        },
    )?;
    Ok(IndexCatchUp {
        rebuilt,
        indexed: filled.added,
        through: w.indexed_through(),
        bucket_copy: None,
    })
}

/// Keeps the index if its mark can be trusted for this log; otherwise — foreign, forged
/// or unauthenticated, claiming more than the log holds, or naming a chain head that is
/// not this log's at its seq, or `force` — empties it and commits the empty index at
/// once, so no reader answers from it again. Returns why it was emptied. Cheap: it
/// reads the last segment and the one holding the mark's seq.
pub(super) fn trust_or_clear<E: From<ReadError> + From<IndexError>>(
    reader: &ArchiveReader,
    w: &mut BlindIndexWriter,
    force: Option<&str>,
) -> Result<Option<String>, E> {
    let end = reader.chain_end()?;
    let why = match (force, w.found()) {
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
    if why.is_some() {
        w.clear()?;
        // Owing the whole log: a rebuild interrupted before its first commit is one.
        w.owe(end);
        w.commit()?;
    }
    Ok(why)
}

/// Records indexed between commits while filling, so a long rebuild shows progress to
/// searches as well as to the log.
const FILL_COMMIT_EVERY: u64 = 10_000;

/// Times a reader reads the bucket's newest index copy when objects it lists go while it
/// is read (a newer sync pruned them).
const FETCH_ATTEMPTS: u32 = 3;

/// While a writer appends beside a fill, a commit at least this often once the log has
/// grown past what the last one owed: a fill killed with its CPU short (it runs below
/// the relay) leaves unowed only records of about the last second, which `verify`
/// takes for a crash's (its window is 3 s), not an index rolled back.
const FILL_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a [`fill`] is told, and tells, as it goes.
pub(super) struct FillHooks<'a> {
    /// `(done_seq, last_seq)` at each commit.
    pub progress: &'a mut dyn FnMut(u64, u64),
    /// The index's mark after each commit.
    pub committed: &'a mut dyn FnMut(u64),
    /// Each record added.
    pub added: &'a mut dyn FnMut(&crate::record::Record),
    /// The last durable seq as the log's writer knows it now, where one is running
    /// (records appended since the fill began lie beyond the end it reads to): a
    /// commit made before the fill is done owes the index up to there
    /// ([`BlindIndexWriter::owe`]). Without a writer, up to the end the fill reads to.
    pub log_end: Option<&'a dyn Fn() -> u64>,
    /// Whether to end the fill early (the archive is closing): what was added is
    /// committed, owing the rest, and the next open goes on from there.
    pub stop: &'a dyn Fn() -> bool,
}

/// How a [`fill`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Filled {
    /// Records added.
    pub added: u64,
    /// It was told to stop before it reached the end of the log.
    pub stopped: bool,
}

/// Why a fill's scan of the log ended before the log did.
enum Halt<E> {
    /// Past the end it set out to reach.
    Reached,
    /// Told to stop.
    Stopped,
    Failed(E),
}

impl<E: From<ReadError>> From<ReadError> for Halt<E> {
    fn from(e: ReadError) -> Self {
        Halt::Failed(e.into())
    }
}

/// Adds every record after the index's mark, up to the end of the log as it is now,
/// committing every [`FILL_COMMIT_EVERY`] records and at the end (or where it was told
/// to stop); each commit before the end owes the rest (see [`FillHooks`]).
pub(super) fn fill<E: From<ReadError> + From<IndexError>>(
    reader: &ArchiveReader,
    w: &mut BlindIndexWriter,
    hooks: FillHooks<'_>,
) -> Result<Filled, E> {
    let FillHooks {
        progress,
        committed,
        added,
        log_end,
        stop,
    } = hooks;
    let end = reader.chain_end()?;
    let from = w.indexed_through() + 1;
    // Never more than is durable: the fill may read a record a running writer has not
    // synced yet.
    let owed = || log_end.map_or(end, |f| f());
    let mut indexed = 0u64;
    let mut stopped = false;
    let mut last_commit = std::time::Instant::now();
    if from <= end {
        let scanned = reader.scan(from, |e| {
            if e.seq > end {
                return Err(Halt::Reached);
            }
            if stop() {
                return Err(Halt::Stopped);
            }
            if let Some(record) = e.record {
                let a = Appended {
                    record,
                    segment: e.segment,
                    offset: e.offset,
                    head: e.head,
                };
                w.add(&a).map_err(|e| Halt::Failed(e.into()))?;
                added(&a.record);
                indexed += 1;
                let log_grew = || {
                    log_end.is_some()
                        && last_commit.elapsed() >= FILL_COMMIT_INTERVAL
                        && owed() > w.mark().owed
                };
                if indexed.is_multiple_of(FILL_COMMIT_EVERY) || log_grew() {
                    w.owe(owed());
                    w.commit().map_err(|e| Halt::Failed(e.into()))?;
                    last_commit = std::time::Instant::now();
                    committed(w.indexed_through());
                    progress(e.seq, end);
                }
            }
            Ok::<(), Halt<E>>(())
        });
        match scanned {
            Ok(()) | Err(Halt::Reached) => {}
            Err(Halt::Stopped) => stopped = true,
            Err(Halt::Failed(e)) => return Err(e),
        }
    }
    // Whatever the log holds past the mark now is owed: records the fill was told to
    // leave, and those appended while it ran (the live feed brings them next).
    w.owe(owed());
    if w.is_dirty() {
        w.commit()?;
    }
    committed(w.indexed_through());
    progress(w.indexed_through().max(from - 1), end);
    Ok(Filled {
        added: indexed,
        stopped,
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
    /// What became of the bucket's copy of the index, when one covered more of the
    /// chain than the local index.
    pub bucket_copy: Option<BucketCopy>,
}

/// The bucket's copy of a chain's index, as [`update_index`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketCopy {
    /// It replaced the local index, which then covered the chain through `through`.
    Taken { through: u64 },
    /// It could not be fetched whole (why): the local index and its word lists were
    /// kept, and the rest indexed from the segments.
    Unusable(String),
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

pub(super) fn index_writer(
    dir: &Path,
    reader: &ArchiveReader,
    master: &MasterKey,
) -> Result<BlindIndexWriter, IndexError> {
    BlindIndexWriter::open(&index_dir(dir), master, reader.archive_id())
}

/// [`index_writer`] that leaves reading the whole index to the indexer thread
/// ([`BlindIndexWriter::open_checking_later`]), as an archive that serves opens it.
pub(super) fn index_writer_checking_later(
    dir: &Path,
    reader: &ArchiveReader,
    master: &MasterKey,
) -> Result<BlindIndexWriter, IndexError> {
    BlindIndexWriter::open_checking_later(&index_dir(dir), master, reader.archive_id())
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
    // An index already true to the whole log is left alone: nothing is written, no lock
    // is taken (a search by another user leaves no files of theirs behind).
    if let Ok(through) = reader.index_coverage() {
        if through == reader.chain_end()? {
            return Ok(IndexCatchUp {
                rebuilt: None,
                indexed: 0,
                through,
                bucket_copy: None,
            });
        }
    }
    let _lock = take_lock(dir)?;
    // A chain in a bucket: start from the bucket's copy of its index when that covers
    // more than the local one (another node's chain, or a fresh directory).
    let mut bucket_copy = None;
    if let Some(remote) = crate::bucket::registered(dir) {
        let readable_end = reader.chain_end()?;
        // An object gone while the copy was read was most likely pruned by a newer sync
        // of the node that puts it: the newest snapshot is read again, a few times.
        let mut attempt = 1;
        let fetched = loop {
            match crate::bucket::fetch_index(
                dir,
                &remote,
                master_key,
                &reader.archive_id(),
                readable_end,
            ) {
                Err(crate::bucket::SyncError::Gone(what)) if attempt < FETCH_ATTEMPTS => {
                    tracing::info!(dir = %dir.display(), %what, attempt, "an object of the bucket's index copy went while it was read; reading the newest copy again");
                    attempt += 1;
                }
                other => break other,
            }
        };
        match fetched {
            Ok(crate::bucket::IndexFetch::Fetched {
                through,
                files,
                words,
            }) => {
                tracing::info!(dir = %dir.display(), through, files, words, "took the bucket's copy of the index");
                bucket_copy = Some(BucketCopy::Taken { through });
            }
            Ok(crate::bucket::IndexFetch::Kept) => {}
            // The local index is built from the segments instead.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), cause = %e, "the bucket's copy of the index cannot be used; indexing from the segments");
                bucket_copy = Some(BucketCopy::Unusable(e.to_string()));
            }
        }
    }
    let mut w = index_writer(dir, &reader, master_key)?;
    let done = catch_up::<ReindexError>(&reader, &mut w, None, &mut progress)?;
    w.finish()?;
    Ok(IndexCatchUp {
        bucket_copy,
        ..done
    })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::keys::{keys_init, load_signing_key};
    use crate::record::{MessageRecord, NewRecord};
    use crate::verify::{verify, VerifyReport};

    struct Made {
        _tmp: tempfile::TempDir,
        dir: std::path::PathBuf,
        master: MasterKey,
        signing: SigningKey,
    }

    impl Made {
        fn new() -> Made {
            let tmp = tempfile::tempdir().unwrap();
            let c = keys_init(
                &tmp.path().join("master.key"),
                &tmp.path().join("signing.key"),
            )
            .unwrap();
            Made {
                dir: tmp.path().join("archive"),
                master: MasterKey::from_file(&c.master_key).unwrap(),
                signing: load_signing_key(&c.signing_key).unwrap(),
                _tmp: tmp,
            }
        }

        /// Appends `n` messages in one session, many in flight at a time.
        async fn session(&self, n: u64) {
            let mut cfg =
                ArchiveConfig::new(self.dir.clone(), self.master.clone(), self.signing.clone());
            cfg.segment_max_bytes = 256 << 10;
            let a = Archive::open(cfg).unwrap();
            let mut pending = Vec::new();
            for i in 0..n {
                pending.push(a.submit(NewRecord::Message(MessageRecord::chat(
                    "alice@example.test/laptop",
                    "bob@example.test",
                    format!("rebuild message {i}"),
                ))));
                if pending.len() == 256 {
                    for p in pending.drain(..) {
                        p.await.unwrap();
                    }
                }
            }
            for p in pending {
                p.await.unwrap();
            }
            a.close().await.unwrap();
        }

        /// `n` messages, then one more 3.2 s later: a lag of the first ones is older
        /// than any crash leaves unindexed.
        async fn aged(n: u64) -> Made {
            let m = Made::new();
            m.session(n).await;
            std::thread::sleep(std::time::Duration::from_millis(3200));
            m.session(1).await;
            m
        }

        /// [`Made::aged`], its index then built again in one pass: one tantivy segment,
        /// whose term dictionary is large enough to have blocks no open reads (an
        /// indexer that commits as it goes leaves as many as tantivy has not merged).
        async fn aged_whole(n: u64) -> Made {
            let m = Made::aged(n).await;
            reindex(&m.dir, &m.master, |_, _| {}).unwrap();
            m
        }

        fn reader(&self) -> ArchiveReader {
            ArchiveReader::open(&self.dir, &self.master).unwrap()
        }

        fn writer(&self) -> BlindIndexWriter {
            index_writer(&self.dir, &self.reader(), &self.master).unwrap()
        }

        fn verified(&self) -> VerifyReport {
            verify(
                &self.dir,
                Some(&self.master),
                &self.signing.verifying_key(),
                |_, _| {},
            )
        }

        /// `verify` finds no problem; else fails naming them and the index's mark.
        fn assert_no_problem(&self) {
            let r = self.verified();
            assert!(
                r.problems.is_empty(),
                "{:?} (mark {:?})",
                problems(&r),
                self.mark()
            );
        }

        fn mark(&self) -> crate::index::Mark {
            crate::index::read_mark(
                &index_dir(&self.dir),
                &self.master,
                &self.reader().archive_id(),
            )
            .unwrap()
        }
    }

    /// A fill of the whole log, told to stop once `stop_after` records are in (never
    /// when `None`), with a writer whose durable end is `log_end`.
    fn fill_stopping(m: &Made, stop_after: Option<u64>, log_end: Option<u64>) -> Filled {
        let reader = m.reader();
        let mut w = m.writer();
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        let end = log_end.map(|e| move || e);
        let filled = fill::<ReindexError>(
            &reader,
            &mut w,
            FillHooks {
                progress: &mut |_, _| {},
                committed: &mut |_| {},
                added: &mut |_| {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    if Some(n) == stop_after {
                        stop.store(true, Ordering::Release);
                    }
                },
                log_end: end.as_ref().map(|f| f as &dyn Fn() -> u64),
                stop: &|| stop.load(Ordering::Acquire),
            },
        )
        .unwrap();
        w.finish().unwrap();
        filled
    }

    fn has(report: &[String], words: &str) -> bool {
        report.iter().any(|w| w.contains(words))
    }

    fn problems(r: &VerifyReport) -> Vec<String> {
        r.problems.iter().map(|p| p.what.clone()).collect()
    }

    /// A rebuild that is stopped (the archive closing, or the process killed between
    /// its commits) leaves an index behind by records that may be old. Its commit says
    /// what it owes, so `verify` tells it as a catch-up to finish, where an index rolled
    /// back to the same position, owing nothing, stays a problem; and the next fill goes
    /// on from where it stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_rebuild_owes_the_rest_and_verify_tells_it_from_a_rollback() {
        let m = Made::aged(25_000).await;
        let end = m.reader().chain_end().unwrap();
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();

        let filled = fill_stopping(&m, Some(15_000), None);
        assert_eq!(
            filled,
            Filled {
                added: 15_000,
                stopped: true
            }
        );
        let mark = m.mark();
        assert!(mark.through < end, "{mark:?}");
        assert_eq!(mark.owed, end);
        let r = m.verified();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(
            has(&r.notes, "it was catching up with the log"),
            "{:?}",
            r.notes
        );
        let stopped_at = mark.through;

        // The same position owing nothing: what an index rolled back looks like.
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();
        let rolled_back = fill_stopping(&m, Some(15_000), Some(stopped_at));
        assert!(rolled_back.stopped);
        assert_eq!((m.mark().through, m.mark().owed), (stopped_at, 0));
        let p = problems(&m.verified());
        assert!(has(&p, "are missing from search"), "{p:?}");

        // The next fill goes on from the stopped one and owes nothing once done.
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();
        fill_stopping(&m, Some(15_000), None);
        let rest = fill_stopping(&m, None, None);
        assert_eq!(
            rest,
            Filled {
                added: 25_001 - 15_000,
                stopped: false
            }
        );
        assert_eq!((m.mark().through, m.mark().owed), (end, 0));
        let r = m.verified();
        assert!(r.problems.is_empty() && r.notes.is_empty(), "{r:?}");
    }

    /// What a stopped commit owes covers only the records the log held then: a log that
    /// grew afterwards, by records older than a crash leaves, with the index put back to
    /// that commit is a rollback again; and a log that lost records the commit owed has
    /// lost its tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_debt_explains_no_later_records_and_one_larger_than_the_log_is_a_cut_tail() {
        let m = Made::new();
        m.session(12_000).await;
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();
        fill_stopping(&m, Some(11_000), None);
        let owing = m._tmp.path().join("owing-index");
        copy_dir(&index_dir(&m.dir), &owing);

        // The log grows by records a crash cannot explain (3 s and more before its end).
        m.session(10).await;
        std::thread::sleep(std::time::Duration::from_millis(3200));
        m.session(1).await;
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();
        copy_dir(&owing, &index_dir(&m.dir));
        let p = problems(&m.verified());
        assert!(has(&p, "are missing from search"), "{p:?}");

        // A commit owing more than the log now holds.
        let end = m.reader().chain_end().unwrap();
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();
        fill_stopping(&m, Some(11_000), Some(end + 40));
        let p = problems(&m.verified());
        assert!(
            has(
                &p,
                &format!("records {}..={} are gone from the log", end + 1, end + 40)
            ),
            "{p:?}"
        );
    }

    /// Appends one message with the log's writer alone (the index untouched), as a
    /// serving writer does while its indexer rebuilds; returns the log's new end.
    fn append_to_log_only(m: &Made) -> u64 {
        let (mut log, _) = crate::log::LogWriter::open(
            crate::bucket::storage_for_dir(&m.dir),
            m.master.clone(),
            m.signing.clone(),
            crate::log::LogLimits {
                segment_max_bytes: 256 << 10,
                segment_max_age: std::time::Duration::from_secs(24 * 3600),
                checkpoint_every: 1000,
            },
        )
        .unwrap();
        let appended = log
            .append_batch(vec![NewRecord::Message(MessageRecord::chat(
                "alice@example.test/laptop",
                "bob@example.test",
                "live message",
            ))])
            .unwrap();
        log.finish().unwrap();
        appended[0].record.seq.0
    }

    /// A writer killed (-9) in the middle of a rebuild while records keep coming, its
    /// fill starved of CPU so that 10,000 records take longer than a crash's window:
    /// the fill commits within about a second of the log growing past what it owed, so
    /// only the newest records are unowed, and `verify` notes the kill rather than
    /// report an index rolled back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_killed_while_the_log_grows_is_not_a_rollback() {
        let m = Made::new();
        m.session(25_000).await;
        std::thread::sleep(std::time::Duration::from_millis(3200));
        std::fs::remove_dir_all(index_dir(&m.dir)).unwrap();

        let reader = m.reader();
        let mut w = m.writer();
        let stop = AtomicBool::new(false);
        let live = AtomicU64::new(reader.chain_end().unwrap());
        let live_end = || live.load(Ordering::Acquire);
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fill::<ReindexError>(
                &reader,
                &mut w,
                FillHooks {
                    progress: &mut |_, _| {},
                    committed: &mut |_| {},
                    // The writer appends while the fill goes on, slowly; it is killed
                    // right after two more appends.
                    added: &mut |r| match r.seq.0 {
                        11_000 | 12_500 | 12_600 => {
                            live.store(append_to_log_only(&m), Ordering::Release)
                        }
                        12_000 => std::thread::sleep(std::time::Duration::from_millis(3200)),
                        12_700 => panic!("kill -9"),
                        _ => {}
                    },
                    log_end: Some(&live_end),
                    stop: &|| stop.load(Ordering::Acquire),
                },
            )
        }));
        assert!(killed.is_err());
        drop(w);
        let mark = m.mark();
        // The record appended before the starved stretch is owed; the last two are not.
        assert!(mark.through >= 12_000 && mark.through < 12_500, "{mark:?}");
        assert_eq!(mark.owed, 25_001, "{mark:?}");
        let r = m.verified();
        assert!(r.problems.is_empty(), "{:?}", problems(&r));
        assert!(has(&r.notes, "a crash"), "{:?}", r.notes);
    }

    /// `custos reindex` (or an open that does not trust the index) interrupted before
    /// the rebuild's first commit: the emptied index it committed owes the whole log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reindex_interrupted_before_its_first_commit_is_not_a_rollback() {
        let m = Made::aged(50).await;
        let reader = m.reader();
        let mut w = m.writer();
        trust_or_clear::<ReindexError>(&reader, &mut w, Some("requested")).unwrap();
        drop(w);
        assert_eq!(m.mark().owed, reader.chain_end().unwrap());
        let r = m.verified();
        assert!(r.problems.is_empty(), "{:?}", problems(&r));
        assert!(
            has(&r.notes, "it was catching up with the log"),
            "{:?}",
            r.notes
        );
    }

    /// Flips a middle byte of the largest index file ending in `ending`, in place.
    fn poke_middle(m: &Made, ending: &str) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let path = std::fs::read_dir(index_dir(&m.dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ending))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = crate::index::sealed_len(&std::fs::read(&path).unwrap()).unwrap() as u64;
        assert!(len > 4 * 16 * 1024, "{len}");
        let at = len / 2;
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 1]).unwrap();
    }

    /// An index whose authentic mark claims more than the log holds (a restore that
    /// mixed two copies) is emptied by `trust_or_clear`, which commits it owing the log.
    /// The check the open left for later is of that commit, not of the mark the open
    /// found: it passes, and the debt stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deferred_check_is_of_the_index_trust_or_clear_emptied() {
        let m = Made::new();
        m.session(50).await;
        let t = tempfile::tempdir().unwrap();
        let ahead = Made {
            dir: t.path().join("archive"),
            master: m.master.clone(),
            signing: m.signing.clone(),
            _tmp: t,
        };
        copy_dir(&m.dir, &ahead.dir);
        ahead.session(10).await;
        // The newer index beside the older log (a restore that mixed two copies).
        for d in [
            index_dir(&m.dir),
            crate::vocab::vocab_dir(&index_dir(&m.dir)),
        ] {
            std::fs::remove_dir_all(&d).unwrap();
            copy_dir(&ahead.dir.join(d.file_name().unwrap()), &d);
        }
        // Archive::open, as it opens the index now.
        let reader = m.reader();
        let mut w = index_writer_checking_later(&m.dir, &reader, &m.master).unwrap();
        let why = trust_or_clear::<ReindexError>(&reader, &mut w, None).unwrap();
        assert!(why.unwrap().contains("claims seq"));
        assert_eq!(m.mark().owed, reader.chain_end().unwrap());
        // The indexer thread's first job, on the index its own writer just emptied.
        let checked = w.check_deferred();
        assert!(
            checked.is_ok(),
            "the emptied index failed the check: {checked:?}"
        );
    }

    /// An index that fails the deferred check is removed and opened empty owing the
    /// whole log, as `trust_or_clear`'s rebuild does: a kill -9 before the fill's first
    /// commit leaves a catch-up for `verify` to note, not an index rolled back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kill_right_after_the_deferred_rebuild_is_not_a_rollback() {
        let m = Made::aged_whole(5000).await;
        // A block no open reads changed (a disk error; or an administrator).
        poke_middle(&m, ".term");
        // Archive::open, as it opens the index now.
        let reader = m.reader();
        let mut w = index_writer_checking_later(&m.dir, &reader, &m.master).unwrap();
        assert_eq!(
            trust_or_clear::<ReindexError>(&reader, &mut w, None).unwrap(),
            None
        );
        // indexer_loop's first steps.
        assert!(
            w.check_deferred().is_err(),
            "the check passed the changed block"
        );
        let w = w.rebuild_from_nothing(reader.chain_end().unwrap()).unwrap();
        // kill -9 here, before the fill's first commit.
        drop(w);
        m.assert_no_problem();
    }

    /// The same damage and kill under the checked open (`custos search`, `reindex`):
    /// the open wipes the index and `trust_or_clear` owes the whole log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kill_right_after_the_checked_opens_rebuild_is_not_a_rollback() {
        let m = Made::aged_whole(5000).await;
        poke_middle(&m, ".term");
        let reader = m.reader();
        let mut w = m.writer();
        assert!(trust_or_clear::<ReindexError>(&reader, &mut w, None)
            .unwrap()
            .is_some());
        drop(w);
        m.assert_no_problem();
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
}
