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
    let indexed = fill::<E>(reader, w, progress, &mut |_| {}, &mut |_| {})?;
    Ok(IndexCatchUp {
        rebuilt,
        indexed,
        through: w.indexed_through(),
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
        w.commit()?;
    }
    Ok(why)
}

/// Records indexed between commits while filling, so a long rebuild shows progress to
/// searches as well as to the log.
const FILL_COMMIT_EVERY: u64 = 10_000;

/// Adds every record after the index's mark, up to the end of the log as it is now,
/// committing every [`FILL_COMMIT_EVERY`] records (`committed(through)` after each) and
/// at the end. `progress(done_seq, last_seq)` is called at each commit, `added(record)`
/// for each record added. Returns the records added.
pub(super) fn fill<E: From<ReadError> + From<IndexError>>(
    reader: &ArchiveReader,
    w: &mut BlindIndexWriter,
    progress: &mut dyn FnMut(u64, u64),
    committed: &mut dyn FnMut(u64),
    added: &mut dyn FnMut(&crate::record::Record),
) -> Result<u64, E> {
    let end = reader.chain_end()?;
    let from = w.indexed_through() + 1;
    let mut indexed = 0u64;
    if from <= end {
        reader.scan(from, |e| {
            if e.seq > end {
                return Ok(());
            }
            if let Some(record) = e.record {
                let a = Appended {
                    record,
                    segment: e.segment,
                    offset: e.offset,
                    head: e.head,
                };
                w.add(&a)?;
                added(&a.record);
                indexed += 1;
                if indexed.is_multiple_of(FILL_COMMIT_EVERY) {
                    w.commit()?;
                    committed(w.indexed_through());
                    progress(e.seq, end);
                }
            }
            Ok::<(), E>(())
        })?;
    }
    if w.is_dirty() {
        w.commit()?;
    }
    committed(w.indexed_through());
    progress(end, end);
    Ok(indexed)
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

pub(super) fn index_writer(
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
    // An index already true to the whole log is left alone: nothing is written, no lock
    // is taken (a search by another user leaves no files of theirs behind).
    if let Ok(through) = reader.index_coverage() {
        if through == reader.chain_end()? {
            return Ok(IndexCatchUp {
                rebuilt: None,
                indexed: 0,
                through,
            });
        }
    }
    let _lock = take_lock(dir)?;
    // A chain in a bucket: start from the bucket's copy of its index when that covers
    // more than the local one (another node's chain, or a fresh directory).
    if let Some(remote) = crate::bucket::registered(dir) {
        let readable_end = reader.chain_end()?;
        match crate::bucket::fetch_index(
            dir,
            &remote,
            master_key,
            &reader.archive_id(),
            readable_end,
        ) {
            Ok(crate::bucket::IndexFetch::Fetched {
                through,
                files,
                words,
            }) => {
                tracing::info!(dir = %dir.display(), through, files, words, "took the bucket's copy of the index");
            }
            Ok(crate::bucket::IndexFetch::Kept) => {}
            // The local index is built from the segments instead.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), cause = %e, "the bucket's copy of the index cannot be used; indexing from the segments")
            }
        }
    }
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
