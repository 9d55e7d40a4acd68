//! What can go wrong opening, appending to, reading, searching and reindexing an archive.

use std::path::PathBuf;

use crate::index::IndexError;
use crate::log::{self, LogOpenError};
use crate::query::QueryError;

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
    /// A segment's data key is gone and no shred record authorised it.
    #[error("segment {segment}: its data key is missing and no signed shred record in the chain names it (met at seq {seq}); put the key file back, or run `custos verify`")]
    KeyMissing { segment: u64, seq: u64 },
    /// A [`crate::TailCursor::resume`] found the log without the record its state was
    /// derived up to.
    #[error("the log does not hold record {seq} as the saved state read it: {what}")]
    Diverged { seq: u64, what: String },
    /// Another node's holds bind this node's expiry; unread, nothing may be shredded.
    #[error("the holds recorded by other nodes cannot be read ({0}); nothing is shredded until they can")]
    PeerHolds(String),
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
