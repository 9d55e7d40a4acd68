//! Pages sealed once each, one after another, into a file, and read back one at a
//! time: an identity run's scratch file, and the pages file of a saved review state.
//!
//! A saved state keeps its rows and its identity table in a pages file beside it,
//! `state/web-ui.<32 hex digits>.pages`, named afresh at every save. Its pages are
//! sealed (AES-256-GCM) under a key drawn for that file alone, which is written only
//! into the saved state (itself sealed under the master key); a page's nonce is its
//! number in the file. A start that reads the state back takes the file as it is and
//! reads a page when it is first needed, instead of reading every row and identity
//! first: the start no longer grows with the archive. A page changed, moved, or taken
//! from another save's file is refused when read, and the review state is then built
//! again from the log, as for a scratch file.

use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use super::rows::Scratch;

/// A page sealed once: its seal count.
pub(super) const SEALED_ONCE: u32 = 0;
/// Sealed pages gathered before one write.
const FLUSH_BYTES: usize = 64 << 10;
const PREFIX: &str = "web-ui.";
const SUFFIX: &str = ".pages";

/// A run of pages of `slot` bytes in a file of pages sealed once each: page `i` lies at
/// byte `at + i * slot` and is the file's page `first + i`.
#[derive(Clone)]
pub(super) struct Region {
    pub(super) scratch: Arc<Scratch>,
    pub(super) at: u64,
    pub(super) first: u64,
    pub(super) slot: usize,
}

impl Region {
    /// Reads pages from `page` on, as many as fill `buf`, still sealed.
    pub(super) fn read(&self, page: usize, buf: &mut [u8]) -> Result<(), String> {
        let at = (page as u64)
            .checked_mul(self.slot as u64)
            .and_then(|o| o.checked_add(self.at))
            .ok_or_else(|| format!("page {page} lies past any file"))?;
        self.scratch
            .file
            .read_exact_at(buf, at)
            .map_err(|e| format!("page {page}: {e}"))
    }

    /// Opens page `page` in place (`slot` as [`Region::read`] read it).
    pub(super) fn open(&self, page: usize, slot: &mut [u8]) -> Result<(), String> {
        if slot.len() != self.slot {
            return Err(format!("page {page} cut short"));
        }
        let index = usize::try_from(self.first)
            .ok()
            .and_then(|f| f.checked_add(page))
            .ok_or_else(|| format!("page {page} lies past any file"))?;
        self.scratch.open(index, SEALED_ONCE, slot)
    }

    /// Byte just past page `pages - 1`.
    pub(super) fn end(&self, pages: usize) -> u64 {
        self.at
            .saturating_add((pages as u64).saturating_mul(self.slot as u64))
    }
}

/// Seals pages once each, numbered in order, and writes them one after another.
pub(super) struct Sealer {
    scratch: Arc<Scratch>,
    /// The next page's number in the file.
    next: u64,
    /// Bytes written so far.
    at: u64,
    out: Vec<u8>,
}

impl Sealer {
    pub(super) fn new(scratch: Arc<Scratch>) -> Sealer {
        Sealer {
            scratch,
            next: 0,
            at: 0,
            out: Vec::new(),
        }
    }

    /// The pages of `slot` bytes pushed from now on.
    pub(super) fn region(&self, slot: usize) -> Region {
        Region {
            scratch: self.scratch.clone(),
            at: self.at + self.out.len() as u64,
            first: self.next,
            slot,
        }
    }

    /// Seals `page` (its body, then room for the tag) as the next page, to be written.
    pub(super) fn push(&mut self, page: &mut [u8]) -> Result<(), String> {
        let index = usize::try_from(self.next).map_err(|_| "too many pages")?;
        self.scratch.seal(index, SEALED_ONCE, page)?;
        self.out.extend_from_slice(page);
        self.next += 1;
        if self.out.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what was pushed.
    pub(super) fn flush(&mut self) -> Result<(), String> {
        self.scratch
            .file
            .write_all_at(&self.out, self.at)
            .map_err(|e| e.to_string())?;
        self.at += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes what was pushed and makes the file durable.
    pub(super) fn sync(&mut self) -> Result<(), String> {
        self.flush()?;
        self.scratch.file.sync_all().map_err(|e| e.to_string())
    }

    /// Bytes written and pushed.
    pub(super) fn len(&self) -> u64 {
        self.at + self.out.len() as u64
    }
}

/// Whether `name` is a pages file's name as [`create`] makes them.
fn is_pages_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
        .is_some_and(|id| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A new pages file in `dir`, its name and its key.
pub(super) fn create(dir: &Path) -> Result<(String, [u8; 32], Arc<Scratch>), String> {
    let mut id = [0u8; 16];
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut id)
        .and_then(|()| getrandom::getrandom(&mut key))
        .map_err(|e| format!("no key for a pages file: {e}"))?;
    let name = format!(
        "{PREFIX}{}{SUFFIX}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let path = dir.join(&name);
    // A fresh name, made here: an existing file (or a link) there is refused.
    let file = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let scratch = Arc::new(Scratch::with_key(file, &key));
    Ok((name, key, scratch))
}

/// Opens pages file `name` in `dir` with its key, for reading: it must be `len` bytes
/// long at least.
pub(super) fn open(
    dir: &Path,
    name: &str,
    key: &[u8; 32],
    len: u64,
) -> Result<Arc<Scratch>, String> {
    if !is_pages_name(name) {
        return Err(format!("{name:?} is not a pages file's name"));
    }
    let path = dir.join(name);
    // Not a link, and not waited on should it be a pipe.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let size = meta.len();
    if size < len {
        return Err(format!(
            "{}: {size} bytes, where the saved state has {len}",
            path.display()
        ));
    }
    Ok(Arc::new(Scratch::with_key(file, key)))
}

/// Removes pages file `name` in `dir` (a name [`create`] made; nothing else).
pub(super) fn remove(dir: &Path, name: &str) {
    if !is_pages_name(name) {
        return;
    }
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(cause = %e, file = %dir.join(name).display(), "a pages file no state names cannot be removed");
        }
    }
}

/// Removes the pages files in `dir` but those in `keep`: those of earlier saves (a
/// process that still reads one keeps it open), and any a save did not finish.
pub(super) fn remove_others(dir: &Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !keep.contains(&name) && is_pages_name(name) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(cause = %e, file = %entry.path().display(), "an earlier save's pages file cannot be removed");
                }
            }
        }
    }
}
