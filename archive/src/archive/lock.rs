//! One writer at a time: the advisory lock on `<dir>/writer.lock`.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

/// The lock file that makes one process at a time the writer of an archive.
pub const WRITER_LOCK: &str = "writer.lock";

/// An exclusive advisory lock on `<dir>/writer.lock` (`flock` on Unix,
/// `LockFileEx` on Windows), released when dropped — including by the
/// kernel when the process dies, so a crash never leaves a stale lock. The
/// file itself stays: removing it would let two processes lock two different
/// files of the same name.
#[derive(Debug)]
pub(super) struct WriterLock {
    _file: File,
}

pub(super) enum LockError {
    Held,
    Io(std::io::Error),
}

impl WriterLock {
    pub(super) fn take(dir: &Path) -> Result<WriterLock, LockError> {
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
