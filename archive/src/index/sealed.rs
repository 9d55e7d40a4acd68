//! tantivy's files, each sealed by Custos with a MAC over its name and bytes.
//!
//! tantivy's own checksums catch accidents, not changes: anyone who can write the index
//! directory can rewrite a segment's postings, deletions or list with checksums that
//! match, and so make a message unfindable by its words while every count stays. So the
//! index is opened through [`SealedDirectory`], which appends a trailer to every file it
//! writes,
//!
//! ```text
//! bytes ‖ SHA-256 of each 16 KiB block of bytes ‖ len u64 ‖ "custos-s"
//!       ‖ HMAC-SHA256(HKDF(master, "custos-index-files-v1" ‖ archive id),
//!                     "custos-index-file-v1" ‖ name ‖ 0 ‖ len u64 ‖ block hashes)
//! ```
//!
//! and hands the file to tantivy without it. The MAC is checked when the file is
//! opened, and the hashes it covers are copied then. A file changed, cut, extended,
//! renamed to another file's name or taken from another archive's index fails, and the
//! open or read that met it fails naming it. Segment files are written once under
//! names tantivy never reuses, so an older copy of a file is the file itself; an older
//! `meta.json` is an older commit, whose authenticated mark says what it covers
//! (checked against the log).
//!
//! tantivy never reads the file itself: each read copies the blocks it covers into
//! private memory, checks the copy against the block hashes, and hands tantivy the
//! copy. Bytes changed on disk after a check therefore never reach tantivy, however
//! long a reader holds what it read (a shared mapping of the file would serve them).
//! Checked copies are kept in one cache for the process ([`Verified`]): what tantivy
//! still holds (term dictionaries, fast-field columns) is shared, not counted, and up to
//! [`BUDGET`] of what it let go is kept for the next read, so a reader's reload and a
//! common word's postings are not copied and hashed again.
//!
//! A file opened is kept open (not mapped) while tantivy holds it: tantivy deletes a
//! merged segment's files while older readers may still read them, and a file cut
//! under the reader is then an error, not a fault.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, OwnedBytes,
    TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};
use tantivy::HasLen;
use zeroize::Zeroizing;

use crate::keys::MasterKey;

const MAGIC: &[u8; 8] = b"custos-s";
/// The data length, the magic and the MAC end every sealed file.
const TAIL: usize = 8 + MAGIC.len() + 32;
const DOMAIN: &[u8] = b"custos-index-file-v1";
/// Bytes per hashed block: a read of a few bytes copies and checks at most two.
const BLOCK: usize = 16 * 1024;
/// Checked copies kept for the next read beyond those tantivy holds, for the process.
const BUDGET: usize = 64 << 20;
/// A whole-file check reads this many blocks at a time.
const CHECK_CHUNK: usize = 64;
/// The most data one sealed file may hold (its block hashes then take 128 MiB): far
/// beyond any segment file of an archive, and a bound on what a forged trailer can make
/// the open read and hold before its MAC is checked.
const MAX_LEN: usize = 64 << 30;
/// The most a file tantivy reads whole (`meta.json`, `.managed.json`) may hold.
const MAX_SMALL: u64 = 64 << 20;

/// The length of the data a sealed file holds, as its trailer says (not checked).
pub(crate) fn sealed_len(file: &[u8]) -> Option<usize> {
    let n = file.len().checked_sub(TAIL)?;
    let len = u64::from_be_bytes(file[n..n + 8].try_into().ok()?);
    usize::try_from(len).ok().filter(|&l| l <= n)
}

fn blocks(len: usize) -> usize {
    len.div_ceil(BLOCK)
}

/// Why a file was refused, as tantivy's error shows it (it prints the cause's `Debug`).
struct Refused(String);

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The sealing key, keyed once: each file then costs its own blocks.
#[derive(Clone)]
pub(crate) struct SealKey(Hmac<Sha256>);

impl SealKey {
    pub(crate) fn derive(master: &MasterKey, archive_id: &[u8; 16]) -> SealKey {
        let key: Zeroizing<[u8; 32]> = master.derive("custos-index-files-v1", archive_id);
        // HMAC accepts a key of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        SealKey(mac)
    }

    fn mac(&self, name: &str, len: u64, table: &[u8]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(DOMAIN);
        m.update(name.as_bytes());
        m.update(&[0]);
        m.update(&len.to_be_bytes());
        m.update(table);
        m.finalize().into_bytes().into()
    }

    /// The trailer of `len` bytes whose block hashes are `table`, as the file `name`.
    fn trailer(&self, name: &str, len: u64, table: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(table.len() + TAIL);
        out.extend_from_slice(table);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.mac(name, len, table));
        out
    }

    /// `data` with the trailer that seals it as the file `name`.
    pub(crate) fn seal(&self, name: &str, data: &[u8]) -> Vec<u8> {
        let table: Vec<u8> = data.chunks(BLOCK).flat_map(Sha256::digest).collect();
        let mut out = data.to_vec();
        out.extend(self.trailer(name, data.len() as u64, &table));
        out
    }

    /// The data length and the block hashes of the file `name`, `size` bytes long and
    /// read by `read_at(offset, n)`, if its trailer is sealed by this key (the blocks
    /// are not checked). The trailer is copied before it is checked: the hashes later
    /// blocks are checked against are the ones the MAC covered, whatever happens to
    /// the file meanwhile.
    fn open_trailer(
        &self,
        name: &str,
        size: u64,
        read_at: impl Fn(u64, usize) -> io::Result<Vec<u8>>,
    ) -> Result<(usize, Vec<u8>), String> {
        let unreadable = |e: io::Error| format!("search index file {name}: {e}");
        let at = size
            .checked_sub(TAIL as u64)
            .ok_or_else(|| format!("search index file {name}: too short to carry a seal"))?;
        let tail = read_at(at, TAIL).map_err(unreadable)?;
        if &tail[8..8 + MAGIC.len()] != MAGIC {
            return Err(format!(
                "search index file {name}: not sealed (written by an earlier Custos, or not by Custos); run `custos reindex`"
            ));
        }
        let mismatch = || {
            format!(
                "search index file {name}: its seal does not match (changed, cut or replaced after it was written, or another archive's); run `custos reindex`"
            )
        };
        let len = u64::from_be_bytes(tail[..8].try_into().map_err(|_| mismatch())?);
        if len > MAX_LEN as u64 {
            return Err(format!(
                "search index file {name}: its trailer claims {len} bytes, more than Custos writes to one file; run `custos reindex`"
            ));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| (l + blocks(l) * 32) as u64 == at)
            .ok_or_else(mismatch)?;
        let table = read_at(len as u64, blocks(len) * 32).map_err(unreadable)?;
        let want = self.mac(name, len as u64, &table);
        // Constant time: the comparison must not say how much of a forgery matched.
        let diff = want
            .iter()
            .zip(&tail[8 + MAGIC.len()..])
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        if diff != 0 {
            return Err(mismatch());
        }
        Ok((len, table))
    }

    /// The data of the file `name` without its trailer, every block checked.
    pub(crate) fn open<'a>(&self, name: &str, file: &'a [u8]) -> Result<&'a [u8], String> {
        let (len, hashes) = self.open_trailer(name, file.len() as u64, |at, n| {
            usize::try_from(at)
                .ok()
                .and_then(|at| file.get(at..at.checked_add(n)?))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
        })?;
        check_blocks(name, &hashes, 0, &file[..len])?;
        Ok(&file[..len])
    }
}

/// Checks `data`, the blocks of the file `name` from block `first` on, against their
/// hashes in `table`.
fn check_blocks(name: &str, table: &[u8], first: usize, data: &[u8]) -> Result<(), String> {
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let at = (first + i) * 32;
        if table.get(at..at + 32) != Some(Sha256::digest(block).as_slice()) {
            return Err(block_mismatch(name, first + i));
        }
    }
    Ok(())
}

fn block_mismatch(name: &str, block: usize) -> String {
    format!(
        "search index file {name}: block {block} does not match its seal (changed after it was written); run `custos reindex`"
    )
}

/// Which blocks of which open file: a file's serial, its first and last block.
type Span = (u64, usize, usize);

/// Checked copies of blocks, for the process: each read's copy is kept here, shared
/// with tantivy while it holds it. Copies tantivy let go are dropped oldest first once
/// they pass [`BUDGET`]; copies it holds cost nothing more for being kept.
struct Verified {
    /// Bytes of copies nobody holds that are kept: [`BUDGET`].
    budget: usize,
    /// Each copy with its last use (a tick).
    copies: HashMap<Span, (Arc<[u8]>, u64)>,
    tick: u64,
    bytes: usize,
    /// The next shrink is due when `bytes` passes this.
    limit: usize,
}

static VERIFIED: LazyLock<Mutex<Verified>> = LazyLock::new(|| Mutex::new(Verified::new(BUDGET)));
static SERIAL: AtomicU64 = AtomicU64::new(0);

fn verified() -> MutexGuard<'static, Verified> {
    // Every update leaves the maps consistent before the next can panic.
    VERIFIED.lock().unwrap_or_else(|e| e.into_inner())
}

impl Verified {
    fn new(budget: usize) -> Verified {
        Verified {
            budget,
            copies: HashMap::new(),
            tick: 0,
            bytes: 0,
            limit: budget,
        }
    }

    fn get(&mut self, span: Span) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let (data, used) = self.copies.get_mut(&span)?;
        *used = self.tick;
        Some(data.clone())
    }

    fn insert(&mut self, span: Span, data: Arc<[u8]>) {
        self.tick += 1;
        self.bytes += data.len();
        if let Some((old, _)) = self.copies.insert(span, (data, self.tick)) {
            self.bytes -= old.len();
        }
        if self.bytes > self.limit {
            self.shrink();
        }
    }

    /// Drops copies nobody holds, least recently used first, until those left fit the
    /// budget.
    fn shrink(&mut self) {
        // Copies nobody holds, least recently used first.
        let mut loose: Vec<(u64, Span, usize)> = self
            .copies
            .iter()
            .filter(|(_, (d, _))| Arc::strong_count(d) == 1)
            .map(|(span, (d, used))| (*used, *span, d.len()))
            .collect();
        loose.sort_unstable();
        let mut excess = loose
            .iter()
            .map(|c| c.2)
            .sum::<usize>()
            .saturating_sub(self.budget);
        for (_, span, len) in loose {
            if excess == 0 {
                break;
            }
            self.copies.remove(&span);
            self.bytes -= len;
            excess = excess.saturating_sub(len);
        }
        // What is held now may all be let go before the next shrink: that shrink comes
        // after an eighth of the budget more.
        self.limit = self.bytes.max(self.budget) + self.budget / 8;
    }

    fn forget(&mut self, file: u64) {
        let bytes = &mut self.bytes;
        self.copies.retain(|span, (d, _)| {
            let keep = span.0 != file;
            if !keep {
                *bytes -= d.len();
            }
            keep
        });
        // What the file's copies raised the limit by goes with them.
        self.limit = self
            .limit
            .min(self.bytes.max(self.budget) + self.budget / 8);
    }
}

/// The index's directory as tantivy sees it: every file sealed as it is written, and
/// read as checked private copies ([`SealedFile`]).
#[derive(Clone)]
pub(crate) struct SealedDirectory {
    /// Writes, deletes, locks and watches.
    inner: MmapDirectory,
    root: PathBuf,
    key: SealKey,
    /// Files opened and still held by tantivy.
    open: Arc<Mutex<HashMap<PathBuf, Weak<SealedFile>>>>,
    /// The first file refused, and why.
    refused: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for SealedDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedDirectory({:?})", self.inner)
    }
}

fn name_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl SealedDirectory {
    pub(crate) fn open(
        dir: &Path,
        master: &MasterKey,
        archive_id: &[u8; 16],
    ) -> Result<SealedDirectory, tantivy::TantivyError> {
        Ok(SealedDirectory {
            inner: MmapDirectory::open(dir)?,
            root: dir.to_path_buf(),
            key: SealKey::derive(master, archive_id),
            open: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// Why a file was refused, if one was since the last call: the error of the
    /// operation that met it is then reported as that.
    pub(crate) fn take_refusal(&self) -> Option<String> {
        self.refused.lock().ok()?.take()
    }

    fn refuse(&self, path: &Path, why: String) -> OpenReadError {
        note_refusal(&self.refused, &why);
        OpenReadError::wrap_io_error(
            io::Error::new(io::ErrorKind::InvalidData, Refused(why)),
            path.to_path_buf(),
        )
    }

    fn open_files(&self) -> MutexGuard<'_, HashMap<PathBuf, Weak<SealedFile>>> {
        // A panic while the map was held leaves it whole: entries are only added whole.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads every block of the file at `path` from disk and checks it, a chunk at a
    /// time (not through the cache, and not into memory whole), handing each checked
    /// chunk to `each` in order.
    pub(crate) fn check_whole(
        &self,
        path: &Path,
        each: impl FnMut(&[u8]),
    ) -> Result<(), OpenReadError> {
        let handle = self.sealed_file(path)?;
        handle
            .check_whole(each)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))
    }

    fn sealed_file(&self, path: &Path) -> Result<Arc<SealedFile>, OpenReadError> {
        if let Some(f) = self.open_files().get(path).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let name = name_of(path);
        // Not blocking: a FIFO put in a file's place must not hang the open.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.root.join(path));
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // tantivy opens a segment without a positions file it cannot find, and
                // its phrases then fail or miss: a load that met one must fail.
                if is_segment_file(&name) {
                    note_refusal(
                        &self.refused,
                        &format!("search index file {name} is missing; run `custos reindex`"),
                    );
                }
                return Err(OpenReadError::FileDoesNotExist(path.to_path_buf()));
            }
            Err(e) => return Err(OpenReadError::wrap_io_error(e, path.to_path_buf())),
        };
        let stat = file
            .metadata()
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))?;
        if !stat.is_file() {
            return Err(self.refuse(
                path,
                format!("search index file {name}: not a regular file; run `custos reindex`"),
            ));
        }
        let size = stat.len();
        let opened = self.key.open_trailer(&name, size, |at, n| {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, at)?;
            Ok(buf)
        });
        let (len, table) = match opened {
            Ok(t) => t,
            Err(why) => return Err(self.refuse(path, why)),
        };
        let file = Arc::new(SealedFile {
            name,
            file,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            len,
            table,
            refused: self.refused.clone(),
        });
        let mut open = self.open_files();
        open.retain(|_, f| f.strong_count() > 0);
        open.insert(path.to_path_buf(), Arc::downgrade(&file));
        Ok(file)
    }
}

/// A tantivy segment's file: `<32 hex digits>.<component>`.
pub(crate) fn is_segment_file(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(id, _)| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn note_refusal(refused: &Mutex<Option<String>>, why: &str) {
    if let Ok(mut r) = refused.lock() {
        r.get_or_insert_with(|| why.to_owned());
    }
}

/// A file whose trailer was checked, read block by block into checked copies.
struct SealedFile {
    name: String,
    file: std::fs::File,
    /// Names this open file's copies in [`Verified`].
    serial: u64,
    len: usize,
    /// The block hashes, as the MAC covered them (a private copy).
    table: Vec<u8>,
    refused: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedFile({}, {} bytes)", self.name, self.len)
    }
}

impl HasLen for SealedFile {
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SealedFile {
    fn drop(&mut self) {
        verified().forget(self.serial);
    }
}

impl SealedFile {
    /// Blocks `first..=last` read from disk into private memory and checked there.
    fn copy(&self, first: usize, last: usize) -> io::Result<Arc<[u8]>> {
        let start = first * BLOCK;
        let end = self.len.min((last + 1) * BLOCK);
        let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, end - start).collect();
        let buf = Arc::get_mut(&mut data).ok_or_else(|| io::Error::other("copy shared"))?;
        self.file.read_exact_at(buf, start as u64).map_err(|e| {
            self.refusal(format!(
                "search index file {}: blocks {first}..={last} cannot be read ({e}; cut after it was written?); run `custos reindex`",
                self.name
            ))
        })?;
        check_blocks(&self.name, &self.table, first, &data).map_err(|why| self.refusal(why))?;
        Ok(data)
    }

    fn refusal(&self, why: String) -> io::Error {
        note_refusal(&self.refused, &why);
        io::Error::new(io::ErrorKind::InvalidData, Refused(why))
    }

    fn check_whole(&self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let (n, step) = (blocks(self.len), CHECK_CHUNK);
        for first in (0..n).step_by(step) {
            each(&self.copy(first, (first + step).min(n) - 1)?);
        }
        Ok(())
    }
}

impl FileHandle for SealedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        if range.start > range.end || range.end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "search index file {}: read of {range:?} past its end ({})",
                    self.name, self.len
                ),
            ));
        }
        if range.is_empty() {
            return Ok(OwnedBytes::empty());
        }
        let (first, last) = (range.start / BLOCK, (range.end - 1) / BLOCK);
        let span = (self.serial, first, last);
        let cached = verified().get(span);
        let data = match cached {
            Some(d) => d,
            None => {
                let d = self.copy(first, last)?;
                verified().insert(span, d.clone());
                d
            }
        };
        let at = first * BLOCK;
        Ok(OwnedBytes::new(data).slice(range.start - at..range.end - at))
    }
}

/// A file being written: the bytes go through to the file and into the hash of their
/// block; the trailer is written when tantivy ends the file.
struct SealingWriter {
    inner: WritePtr,
    key: SealKey,
    name: String,
    block: Sha256,
    /// Bytes in the current block.
    filled: usize,
    table: Vec<u8>,
    len: u64,
    ended: bool,
}

impl Write for SealingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min(BLOCK - self.filled);
            self.block.update(&rest[..take]);
            self.filled += take;
            rest = &rest[take..];
            if self.filled == BLOCK {
                self.table.extend(self.block.finalize_reset());
                self.filled = 0;
            }
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl TerminatingWrite for SealingWriter {
    fn terminate_ref(&mut self, token: AntiCallToken) -> io::Result<()> {
        if std::mem::replace(&mut self.ended, true) {
            return Err(io::Error::other("the file was ended twice"));
        }
        if self.filled > 0 {
            self.table.extend(self.block.finalize_reset());
        }
        let trailer = self.key.trailer(&self.name, self.len, &self.table);
        self.inner.write_all(&trailer)?;
        self.inner.terminate_ref(token)
    }
}

impl Directory for SealedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        Ok(self.sealed_file(path)?)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.open_files().remove(path);
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let inner = self.inner.open_write(path)?;
        Ok(BufWriter::new(Box::new(SealingWriter {
            inner,
            key: self.key.clone(),
            name: name_of(path),
            block: Sha256::new(),
            filled: 0,
            table: Vec::new(),
            len: 0,
            ended: false,
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let name = name_of(path);
        let wrap = |e: io::Error| OpenReadError::wrap_io_error(e, path.to_path_buf());
        // Not blocking on a FIFO, and not reading a file of any size whole.
        let opened = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.root.join(path))
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenReadError::FileDoesNotExist(path.to_path_buf()))
            }
            Err(e) => return Err(wrap(e)),
        };
        let stat = opened.metadata().map_err(wrap)?;
        if !stat.is_file() || stat.len() > MAX_SMALL {
            return Err(self.refuse(
                path,
                format!(
                    "search index file {name}: not a regular file of at most {MAX_SMALL} bytes; run `custos reindex`"
                ),
            ));
        }
        let mut file = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(opened, MAX_SMALL), &mut file).map_err(wrap)?;
        match self.key.open(&name, &file) {
            Ok(data) => {
                let n = data.len();
                file.truncate(n);
                Ok(file)
            }
            Err(why) => Err(self.refuse(path, why)),
        }
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner
            .atomic_write(path, &self.key.seal(&name_of(path), data))
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, SealedDirectory) {
        let t = tempfile::tempdir().unwrap();
        let d = reopen(&t);
        (t, d)
    }

    /// A new directory value over `t`: nothing opened or checked before.
    fn reopen(t: &tempfile::TempDir) -> SealedDirectory {
        SealedDirectory::open(t.path(), &MasterKey::from_bytes([7; 32]), &[1; 16]).unwrap()
    }

    fn write(d: &SealedDirectory, name: &str, data: &[u8]) {
        let mut w = d.open_write(Path::new(name)).unwrap();
        // In pieces, as tantivy writes.
        for chunk in data.chunks(7) {
            w.write_all(chunk).unwrap();
        }
        w.terminate().unwrap();
    }

    fn read(d: &SealedDirectory, name: &str) -> Result<Vec<u8>, String> {
        let h = d
            .get_file_handle(Path::new(name))
            .map_err(|e| e.to_string())?;
        let b = h.read_bytes(0..h.len()).map_err(|e| e.to_string())?;
        Ok(b.as_slice().to_vec())
    }

    #[test]
    fn a_file_reads_back_as_written_without_its_trailer() {
        let (t, d) = dir();
        write(&d, "a.idx", b"postings of a segment");
        assert_eq!(read(&d, "a.idx").unwrap(), b"postings of a segment");
        let on_disk = std::fs::read(t.path().join("a.idx")).unwrap();
        assert_eq!(on_disk.len(), 21 + 32 + TAIL);
        assert_eq!(sealed_len(&on_disk), Some(21));
        d.atomic_write(Path::new("meta.json"), b"{}").unwrap();
        assert_eq!(d.atomic_read(Path::new("meta.json")).unwrap(), b"{}");
        assert!(d.take_refusal().is_none());
    }

    /// Every change an attacker without the key can make to a file is refused by name:
    /// a flipped byte, a cut, an extension, a file renamed to another's name, a file
    /// sealed under another archive's key, and a file never sealed.
    #[test]
    fn a_changed_moved_foreign_or_unsealed_file_is_refused() {
        let (t, d) = dir();
        let body = b"the deletion bitset of a segment, longer than a trailer".to_vec();
        write(&d, "a.del", &body);
        write(&d, "b.del", &body);
        let path = t.path().join("a.del");
        let sealed = std::fs::read(&path).unwrap();
        let foreign =
            SealKey::derive(&MasterKey::from_bytes([8; 32]), &[1; 16]).seal("a.del", &body);
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        let mut extended = sealed.clone();
        extended.extend_from_slice(b"x");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("flipped", flipped, "does not match"),
            ("cut", sealed[1..].to_vec(), "does not match"),
            ("extended", extended, "not sealed"),
            (
                "renamed",
                std::fs::read(t.path().join("b.del")).unwrap(),
                "does not match",
            ),
            ("foreign", foreign, "does not match"),
            ("unsealed", body.clone(), "not sealed"),
            ("empty", Vec::new(), "too short"),
        ];
        for (what, bytes, why) in cases {
            std::fs::write(&path, &bytes).unwrap();
            // A new directory value: nothing checked before.
            let d = reopen(&t);
            let err = read(&d, "a.del").unwrap_err();
            assert!(err.contains("a.del") && err.contains(why), "{what}: {err}");
            assert!(d.take_refusal().is_some_and(|r| r.contains(why)), "{what}");
        }
        std::fs::write(t.path().join("meta.json"), b"{}").unwrap();
        let err = d
            .atomic_read(Path::new("meta.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("meta.json") && err.contains("too short"),
            "{err}"
        );
    }

    /// A block not yet read, changed in place under an open file together with its
    /// hash in the trailer: the hashes were copied when the MAC was checked, so the
    /// change is still refused when the block is first read.
    #[test]
    fn a_block_and_its_hash_changed_in_place_after_the_open_are_refused() {
        let (t, d) = dir();
        let data: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 239) as u8).collect();
        write(&d, "s.idx", &data);
        let d = reopen(&t);
        let h = d.get_file_handle(Path::new("s.idx")).unwrap();
        assert_eq!(h.read_bytes(0..10).unwrap().as_slice(), &data[..10]);
        let path = t.path().join("s.idx");
        let mut file = std::fs::read(&path).unwrap();
        file[BLOCK + 3] ^= 1;
        let hash = Sha256::digest(&file[BLOCK..2 * BLOCK]);
        file[2 * BLOCK + 32..2 * BLOCK + 64].copy_from_slice(&hash);
        // In place: the same file, as the open mapping sees it.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&file).unwrap();
        drop(f);
        let err = h.read_bytes(BLOCK..BLOCK + 10).unwrap_err().to_string();
        assert!(err.contains("block 1"), "{err}");
    }

    /// A block read once is read from its checked copy while the copy is held: bytes
    /// changed in place after the read, even the file cut to nothing, do not reach a
    /// reader. A block not read before is then refused, naming the file.
    #[test]
    fn later_changes_on_disk_never_reach_a_reader_of_a_checked_copy() {
        let (t, d) = dir();
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        write(&d, "s.idx", &data);
        let d = reopen(&t);
        let h = d.get_file_handle(Path::new("s.idx")).unwrap();
        let held = h.read_bytes(10..BLOCK + 20).unwrap();
        let path = t.path().join("s.idx");
        let mut file = std::fs::read(&path).unwrap();
        for b in &mut file[..3 * BLOCK] {
            *b ^= 0xff;
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&file).unwrap();
        assert_eq!(held.as_slice(), &data[10..BLOCK + 20]);
        let again = h.read_bytes(5..BLOCK + 30).unwrap();
        assert_eq!(again.as_slice(), &data[5..BLOCK + 30]);
        let err = h
            .read_bytes(2 * BLOCK..2 * BLOCK + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.idx") && err.contains("block 2"), "{err}");
        f.set_len(0).unwrap();
        assert_eq!(
            h.read_bytes(0..2 * BLOCK).unwrap().as_slice(),
            &data[..2 * BLOCK]
        );
        let err = h.read_bytes(2 * BLOCK..3 * BLOCK).unwrap_err().to_string();
        assert!(
            err.contains("s.idx") && err.contains("cannot be read"),
            "{err}"
        );
        assert!(d.take_refusal().is_some());
    }

    /// Copies a reader holds are never dropped; those let go are dropped least recently
    /// used first once they pass the budget, and a file closed takes its copies along.
    #[test]
    fn the_cache_drops_only_copies_let_go_oldest_first() {
        let mut v = Verified::new(4 * BLOCK);
        let copy = || -> Arc<[u8]> { std::iter::repeat_n(1u8, BLOCK).collect() };
        let held: Vec<Arc<[u8]>> = (0..8).map(|_| copy()).collect();
        for (i, c) in held.iter().enumerate() {
            v.insert((1, i, i), c.clone());
        }
        for i in 0..8 {
            v.insert((2, i, i), copy());
            // Used again: the most recent.
            assert!(v.get((2, 0, 0)).is_some());
        }
        assert!((0..8).all(|i| v.copies.contains_key(&(1, i, i))), "held");
        let loose: Vec<usize> = (0..8)
            .filter(|i| v.copies.contains_key(&(2, *i, *i)))
            .collect();
        assert!(loose.contains(&0) && loose.contains(&7), "{loose:?}");
        assert!(!loose.contains(&1), "{loose:?}");
        assert!(loose.len() <= 5, "{loose:?}");
        drop(held);
        v.forget(1);
        v.forget(2);
        assert!(v.copies.is_empty() && v.bytes == 0);
    }

    /// A trailer that claims 16 TiB of data (as a sparse file of that size could, with
    /// its length consistent): its block hashes, 34 GB, would be read and held before the
    /// MAC is checked. The open refuses it naming the file, before reading them.
    #[test]
    fn a_trailer_claiming_more_than_custos_writes_is_refused_before_its_hashes_are_read() {
        let (t, d) = dir();
        let len: u64 = 16 << 40;
        let mut file = vec![0u8; 64];
        file.extend_from_slice(&len.to_be_bytes());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&[0; 32]);
        std::fs::write(t.path().join("x.idx"), &file).unwrap();
        let err = d
            .get_file_handle(Path::new("x.idx"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.idx") && err.contains("more than Custos writes"),
            "{err}"
        );
    }

    /// Copies a reader held raise the point of the next shrink; when their file is
    /// closed and they are forgotten, that point comes down with them, so copies nobody
    /// holds do not then grow to what was held.
    #[test]
    fn the_cache_keeps_to_its_budget_after_held_copies_are_forgotten() {
        let budget = 4 * BLOCK;
        let mut v = Verified::new(budget);
        let copy = || -> Arc<[u8]> { std::iter::repeat_n(1u8, BLOCK).collect() };
        let held: Vec<Arc<[u8]>> = (0..64).map(|_| copy()).collect();
        for (i, c) in held.iter().enumerate() {
            v.insert((1, i, i), c.clone());
        }
        // The reader lets go of file 1 (a reload after a merge): it is forgotten.
        drop(held);
        v.forget(1);
        // Another file's reads, none held.
        for i in 0..64 {
            v.insert((2, i, i), copy());
        }
        assert!(
            v.bytes <= budget + budget / 8 + BLOCK,
            "{} bytes of copies nobody holds kept, budget {budget} (limit {})",
            v.bytes,
            v.limit
        );
    }

    /// A FIFO put in place of an index file: the open is refused, naming it, and does
    /// not block the reader forever.
    #[test]
    fn a_fifo_in_place_of_a_file_is_refused_without_hanging() {
        let (t, d) = dir();
        let p = t.path().join("f.idx");
        assert!(std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap()
            .success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = d
                .get_file_handle(Path::new("f.idx"))
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(3));
        // Unblock the thread, if it is blocked, so the test process can end.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p);
        let err = got
            .expect("open of a FIFO still blocked after 3 s")
            .unwrap_err();
        assert!(
            err.contains("f.idx") && err.contains("not a regular file"),
            "{err}"
        );
        // The same for a file tantivy reads whole.
        let meta = t.path().join("meta.json");
        assert!(std::process::Command::new("mkfifo")
            .arg(&meta)
            .status()
            .unwrap()
            .success());
        let d = reopen(&t);
        let err = d
            .atomic_read(Path::new("meta.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("meta.json") && err.contains("not a regular file"),
            "{err}"
        );
    }

    /// Every range around block boundaries reads as written, from many threads at once,
    /// through the shared cache, with each file opened by two directory values.
    #[test]
    fn ranges_at_block_boundaries_read_as_written_from_many_threads() {
        let (t, d) = dir();
        let sizes = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 5];
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
            write(&d, &format!("f{i}.idx"), &data);
        }
        let d2 = reopen(&t);
        std::thread::scope(|s| {
            for th in 0..4 {
                let dd = if th % 2 == 0 { d.clone() } else { d2.clone() };
                s.spawn(move || {
                    for (i, &n) in sizes.iter().enumerate() {
                        let data: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
                        let h = dd.get_file_handle(Path::new(&format!("f{i}.idx"))).unwrap();
                        assert_eq!(h.len(), n);
                        let pts: Vec<usize> = [
                            0,
                            1,
                            BLOCK - 1,
                            BLOCK,
                            BLOCK + 1,
                            2 * BLOCK - 1,
                            2 * BLOCK,
                            2 * BLOCK + 1,
                            3 * BLOCK,
                            n.saturating_sub(1),
                            n,
                        ]
                        .into_iter()
                        .filter(|&p| p <= n)
                        .collect();
                        for &a in &pts {
                            for &b in &pts {
                                if a <= b {
                                    let got = h.read_bytes(a..b).unwrap();
                                    assert_eq!(got.as_slice(), &data[a..b], "f{i} {a}..{b}");
                                }
                            }
                        }
                        assert!(h.read_bytes(0..n + 1).is_err());
                        #[allow(clippy::reversed_empty_ranges)]
                        let r = h.read_bytes(1..0);
                        assert!(n == 0 || r.is_err());
                    }
                });
            }
        });
    }

    /// A file replaced by a rename while open is read as it was opened; once nothing
    /// holds it, the next open meets the replacement and refuses it.
    #[test]
    fn a_file_replaced_by_rename_while_open_reads_as_opened() {
        let (t, d) = dir();
        let a: Vec<u8> = (0..2 * BLOCK + 3).map(|j| j as u8).collect();
        write(&d, "r.idx", &a);
        write(&d, "s.idx", &vec![9u8; 2 * BLOCK + 3]);
        let h = d.get_file_handle(Path::new("r.idx")).unwrap();
        std::fs::rename(t.path().join("s.idx"), t.path().join("r.idx")).unwrap();
        assert_eq!(h.read_bytes(0..a.len()).unwrap().as_slice(), &a[..]);
        let h2 = d.get_file_handle(Path::new("r.idx")).unwrap();
        assert_eq!(
            h2.read_bytes(BLOCK..a.len()).unwrap().as_slice(),
            &a[BLOCK..]
        );
        drop((h, h2));
        let err = d
            .get_file_handle(Path::new("r.idx"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.idx") && err.contains("does not match"),
            "{err}"
        );
    }
}
