//! `EncryptedDirectory`: a tantivy [`Directory`] that keeps every file as AES-256-GCM
//! blocks, so an index of plain words can live on disk without plaintext at rest.
//!
//! ```text
//!  on-disk name = hex(HMAC(name key, logical path))[..32]      (no ".idx", no uuid)
//!  file         = header | block 0 | block 1 | … | block n-1 | trailer
//!  header (32)  = "CXEDIR01" | file id (16 random bytes) | block size (u32 LE) | 0u32
//!  block i      = AES-256-GCM(file key, nonce = i (u64 BE) | 0u32, plaintext ≤ block size)
//!                 | tag (16); every block but the last is full
//!  trailer (24) = AES-256-GCM(file key, nonce = u64::MAX | 1u32, plaintext length u64 LE)
//!                 | tag (16)
//!  file key     = HMAC-SHA256(files key, file id): each file has its own key, so a
//!                 block index is a nonce that never repeats under one key
//!  AAD          = header | len(path) u32 LE | logical path | index u64 LE | kind u8
//! ```
//!
//! Both keys come from the 32-byte master key by HKDF-SHA256 with their own labels.
//! The AAD binds each block to its file (header, id and path) and its position, so a
//! block moved within a file, taken from another file, or a file put under another
//! file's name fails authentication. The trailer authenticates the length: a file cut
//! short or extended no longer matches it (or has no trailer that opens), and the
//! file is refused when opened — before any of it is handed to tantivy.
//!
//! Reads decrypt only the blocks a range touches; a file keeps up to
//! [`CACHE_BLOCKS`] decrypted blocks of reads spanning at most `CACHED_SPAN` blocks
//! (least recently used goes first); a longer read is decrypted for itself alone. Writes
//! encrypt each block as it fills; `flush` writes nothing short (blocks are fixed),
//! `terminate` seals the last block and the trailer and syncs the data, as
//! `MmapDirectory` does. `watch` is a no-op: readers of this directory reload by hand
//! (`ReloadPolicy::Manual`, then `IndexReader::reload`). The writer lock is tantivy's
//! default, a file created exclusively and deleted when released (a killed writer
//! leaves it behind; it must then be deleted by hand).
//!
//! What it does not hide: how many files there are, each one's size (so its length to
//! within a block, and from the sizes which file is which kind), when each is written
//! and deleted (segments and merges), that one small file is rewritten at every commit
//! (`meta.json`), and, to someone watching reads, which blocks a query touches.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tantivy::directory::error::{DeleteError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, FileHandle, OwnedBytes, TerminatingWrite, WatchCallback, WatchHandle,
    WritePtr,
};
use tantivy::HasLen;
use zeroize::Zeroizing;

const MAGIC: &[u8; 8] = b"CXEDIR01";
const HEADER_LEN: usize = 32;
const TAG_LEN: usize = 16;
const TRAILER_LEN: usize = 8 + TAG_LEN;
const KIND_BLOCK: u8 = 0;
const KIND_TRAILER: u8 = 1;
/// Blocks a file keeps decrypted, least recently used out first.
pub const CACHE_BLOCKS: usize = 32;
/// Reads of at most this many blocks go through the cache; longer ones are decrypted
/// for the read alone.
const CACHED_SPAN: u64 = 8;

/// Blocks decrypted since the process started (all directories): what a query cost in
/// decryption.
pub static BLOCKS_DECRYPTED: AtomicU64 = AtomicU64::new(0);

/// A tantivy directory whose files are AES-256-GCM blocks (format in the module doc).
#[derive(Clone)]
pub struct EncryptedDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    files_key: Zeroizing<[u8; 32]>,
    names_key: Zeroizing<[u8; 32]>,
    block: usize,
}

impl std::fmt::Debug for EncryptedDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptedDirectory({})", self.inner.root.display())
    }
}

fn hkdf32(master: &[u8; 32], label: &str) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<Sha256>::new(None, master);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF's limit, so expand cannot fail.
    let _ = hk.expand(label.as_bytes(), out.as_mut());
    out
}

fn hmac32(key: &[u8; 32], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC takes keys of any length: construction cannot fail.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    m.update(data);
    Zeroizing::new(m.finalize().into_bytes().into())
}

fn nonce(index: u64, kind: u8) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = kind;
    n.into()
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("encrypted index file {}: {what}", path.display()),
    )
}

/// What every block of one file shares: its cipher, the AAD prefix and the geometry.
struct Sealed {
    path: PathBuf,
    cipher: Aes256Gcm,
    aad: Vec<u8>,
    block: usize,
}

impl Sealed {
    fn new(dir: &Inner, path: &Path, header: &[u8; HEADER_LEN]) -> Sealed {
        let key = hmac32(&dir.files_key, &header[8..24]);
        let p = path.to_string_lossy();
        let mut aad = Vec::with_capacity(HEADER_LEN + 4 + p.len() + 9);
        aad.extend_from_slice(header);
        aad.extend_from_slice(&(p.len() as u32).to_le_bytes());
        aad.extend_from_slice(p.as_bytes());
        Sealed {
            path: path.to_path_buf(),
            cipher: Aes256Gcm::new(key.as_ref().into()),
            aad,
            block: dir.block,
        }
    }

    fn aad(&self, index: u64, kind: u8) -> Vec<u8> {
        let mut a = Vec::with_capacity(self.aad.len() + 9);
        a.extend_from_slice(&self.aad);
        a.extend_from_slice(&index.to_le_bytes());
        a.push(kind);
        a
    }

    /// Encrypts `buf` in place and appends its tag.
    fn seal(&self, index: u64, kind: u8, buf: &mut Vec<u8>) -> io::Result<()> {
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(index, kind), &self.aad(index, kind), buf)
            .map_err(|_| io::Error::other("AES-GCM encryption failed"))?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts ciphertext-and-tag `buf` in place, leaving the plaintext.
    fn open(&self, index: u64, kind: u8, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.len() < TAG_LEN {
            return Err(corrupt(&self.path, "block shorter than its tag"));
        }
        let tag = *Tag::from_slice(&buf[buf.len() - TAG_LEN..]);
        buf.truncate(buf.len() - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached(&nonce(index, kind), &self.aad(index, kind), buf, &tag)
            .map_err(|_| {
                let what = if kind == KIND_TRAILER {
                    "the length trailer fails authentication (truncated, extended, altered, or not written under this key and name)".to_string()
                } else {
                    format!("block {index} fails authentication (altered, moved, taken from another file, or not written under this key)")
                };
                corrupt(&self.path, what)
            })?;
        BLOCKS_DECRYPTED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn disk_len(&self, len: u64) -> u64 {
        let blocks = len.div_ceil(self.block as u64);
        HEADER_LEN as u64 + len + blocks * TAG_LEN as u64 + TRAILER_LEN as u64
    }
}

impl EncryptedDirectory {
    /// Opens (creating it if needed) the directory `root`, with keys derived from
    /// `master`; `block` bytes of plaintext per block.
    pub fn open(root: &Path, master: &[u8; 32], block: usize) -> io::Result<EncryptedDirectory> {
        if block == 0 || block > (1 << 24) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "block size must be 1 byte to 16 MiB",
            ));
        }
        std::fs::create_dir_all(root)?;
        Ok(EncryptedDirectory {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                files_key: hkdf32(master, "custos-encdir-files-v1"),
                names_key: hkdf32(master, "custos-encdir-names-v1"),
                block,
            }),
        })
    }

    /// Where the file tantivy calls `path` is on disk.
    pub fn disk_path(&self, path: &Path) -> PathBuf {
        let mac = hmac32(&self.inner.names_key, path.to_string_lossy().as_bytes());
        let name: String = mac[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.inner.root.join(name)
    }

    fn open_file(&self, path: &Path) -> Result<EncryptedFile, OpenReadError> {
        let disk = self.disk_path(path);
        let file = File::open(&disk).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                OpenReadError::FileDoesNotExist(path.to_path_buf())
            } else {
                OpenReadError::wrap_io_error(e, path.to_path_buf())
            }
        })?;
        EncryptedFile::open(&self.inner, path, file)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))
    }

    fn create(&self, path: &Path, disk: &Path) -> io::Result<EncryptedWriter> {
        let file = OpenOptions::new().write(true).create_new(true).open(disk)?;
        EncryptedWriter::new(&self.inner, path, file)
    }
}

/// One encrypted file open for reading.
pub struct EncryptedFile {
    sealed: Sealed,
    file: File,
    len: usize,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    tick: u64,
    /// (block index, last use, plaintext).
    blocks: Vec<(u64, u64, Arc<Vec<u8>>)>,
}

impl std::fmt::Debug for EncryptedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncryptedFile({}, {} bytes)",
            self.sealed.path.display(),
            self.len
        )
    }
}

impl EncryptedFile {
    fn open(dir: &Inner, path: &Path, file: File) -> io::Result<EncryptedFile> {
        let size = file.metadata()?.len();
        if size < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(
                path,
                format!("{size} bytes: shorter than a header and a trailer (truncated or never finished)"),
            ));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != MAGIC {
            return Err(corrupt(path, "not an encrypted index file (bad magic)"));
        }
        let block = u32::from_le_bytes([header[24], header[25], header[26], header[27]]) as usize;
        if block != dir.block {
            return Err(corrupt(
                path,
                format!(
                    "written with {block}-byte blocks, this directory uses {}",
                    dir.block
                ),
            ));
        }
        let sealed = Sealed::new(dir, path, &header);
        let mut trailer = vec![0u8; TRAILER_LEN];
        file.read_exact_at(&mut trailer, size - TRAILER_LEN as u64)?;
        sealed.open(u64::MAX, KIND_TRAILER, &mut trailer)?;
        let len = u64::from_le_bytes(
            trailer[..8]
                .try_into()
                .map_err(|_| corrupt(path, "short trailer"))?,
        );
        if sealed.disk_len(len) != size {
            return Err(corrupt(
                path,
                format!(
                    "{size} bytes on disk, but its trailer says {len} bytes of content ({} on disk)",
                    sealed.disk_len(len)
                ),
            ));
        }
        Ok(EncryptedFile {
            sealed,
            file,
            len: len as usize,
            cache: Mutex::new(Cache::default()),
        })
    }

    fn block_len(&self, i: u64) -> usize {
        let start = i as usize * self.sealed.block;
        (self.len - start).min(self.sealed.block)
    }

    fn block_offset(&self, i: u64) -> u64 {
        HEADER_LEN as u64 + i * (self.sealed.block + TAG_LEN) as u64
    }

    /// Blocks `first..=last`, decrypted, read with one `pread`.
    fn decrypt_blocks(&self, first: u64, last: u64) -> io::Result<Vec<Vec<u8>>> {
        let start = self.block_offset(first);
        let end = self.block_offset(last) + (self.block_len(last) + TAG_LEN) as u64;
        let mut all = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut all, start)?;
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        let mut at = 0usize;
        for i in first..=last {
            let n = self.block_len(i) + TAG_LEN;
            let mut b = all[at..at + n].to_vec();
            self.sealed.open(i, KIND_BLOCK, &mut b)?;
            out.push(b);
            at += n;
        }
        Ok(out)
    }

    fn cached_block(&self, i: u64) -> io::Result<Arc<Vec<u8>>> {
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.tick += 1;
            let tick = c.tick;
            if let Some(e) = c.blocks.iter_mut().find(|e| e.0 == i) {
                e.1 = tick;
                return Ok(e.2.clone());
            }
        }
        let b = Arc::new(self.decrypt_blocks(i, i)?.pop().unwrap_or_default());
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let tick = c.tick;
        if c.blocks.len() >= CACHE_BLOCKS {
            if let Some(oldest) = c
                .blocks
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.1)
                .map(|(k, _)| k)
            {
                c.blocks.swap_remove(oldest);
            }
        }
        c.blocks.push((i, tick, b.clone()));
        Ok(b)
    }

    /// The plaintext bytes `range`, decrypting only the blocks it touches.
    pub fn read(&self, range: Range<usize>) -> io::Result<Vec<u8>> {
        if range.start > range.end || range.end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: range {range:?} outside {} bytes",
                    self.sealed.path.display(),
                    self.len
                ),
            ));
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let bs = self.sealed.block;
        let (first, last) = ((range.start / bs) as u64, ((range.end - 1) / bs) as u64);
        if first == last {
            let b = self.cached_block(first)?;
            let at = first as usize * bs;
            return Ok(b[range.start - at..range.end - at].to_vec());
        }
        let mut out = Vec::with_capacity(range.len());
        let mut take = |i: u64, b: &[u8]| {
            let at = i as usize * bs;
            let from = range.start.max(at) - at;
            let to = range.end.min(at + b.len()) - at;
            out.extend_from_slice(&b[from..to]);
        };
        if last - first < CACHED_SPAN {
            // A short span (a column, a skip list) is read again and again: cached.
            for i in first..=last {
                take(i, &self.cached_block(i)?);
            }
        } else {
            // A long one would push everything else out of the cache.
            for (i, b) in (first..=last).zip(self.decrypt_blocks(first, last)?) {
                take(i, &b);
            }
        }
        Ok(out)
    }
}

impl HasLen for EncryptedFile {
    fn len(&self) -> usize {
        self.len
    }
}

impl FileHandle for EncryptedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        Ok(OwnedBytes::new(self.read(range)?))
    }
}

/// A file being written: each block is encrypted as it fills.
pub struct EncryptedWriter {
    sealed: Sealed,
    file: File,
    buf: Vec<u8>,
    out: Vec<u8>,
    index: u64,
    len: u64,
    done: bool,
}

impl EncryptedWriter {
    fn new(dir: &Inner, path: &Path, mut file: File) -> io::Result<EncryptedWriter> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        getrandom::getrandom(&mut header[8..24]).map_err(io::Error::other)?;
        header[24..28].copy_from_slice(&(dir.block as u32).to_le_bytes());
        file.write_all(&header)?;
        Ok(EncryptedWriter {
            sealed: Sealed::new(dir, path, &header),
            file,
            buf: Vec::with_capacity(dir.block + TAG_LEN),
            out: Vec::new(),
            index: 0,
            len: 0,
            done: false,
        })
    }

    fn seal_block(&mut self) -> io::Result<()> {
        self.sealed.seal(self.index, KIND_BLOCK, &mut self.buf)?;
        self.out.extend_from_slice(&self.buf);
        self.buf.clear();
        self.index += 1;
        // Ciphertext goes out in writes of a few blocks, not one small write each.
        if self.out.len() >= 4 * self.sealed.block {
            self.file.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

impl Write for EncryptedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.done {
            return Err(io::Error::other("write after terminate"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = (self.sealed.block - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            self.len += n as u64;
            if self.buf.len() == self.sealed.block {
                self.seal_block()?;
            }
        }
        Ok(data.len())
    }

    /// Writes out the blocks sealed so far; a partly filled block stays buffered until
    /// it fills or the file is terminated (every block but the last is full).
    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.out)?;
        self.out.clear();
        self.file.flush()
    }
}

impl TerminatingWrite for EncryptedWriter {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.seal_block()?;
        }
        let mut trailer = self.len.to_le_bytes().to_vec();
        self.sealed.seal(u64::MAX, KIND_TRAILER, &mut trailer)?;
        self.out.extend_from_slice(&trailer);
        self.flush()?;
        self.file.sync_data()?;
        self.done = true;
        Ok(())
    }
}

impl Directory for EncryptedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        Ok(Arc::new(self.open_file(path)?))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        std::fs::remove_file(self.disk_path(path)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                DeleteError::FileDoesNotExist(path.to_path_buf())
            } else {
                DeleteError::IoError {
                    io_error: Arc::new(e),
                    filepath: path.to_path_buf(),
                }
            }
        })
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.disk_path(path)
            .try_exists()
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let w = self.create(path, &self.disk_path(path)).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                OpenWriteError::FileAlreadyExists(path.to_path_buf())
            } else {
                OpenWriteError::wrap_io_error(e, path.to_path_buf())
            }
        })?;
        Ok(BufWriter::new(Box::new(w)))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let f = self.open_file(path)?;
        f.read(0..f.len)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))
    }

    /// Written under a temporary name, synced, then renamed over the file: a reader sees
    /// the old content or the new, whole.
    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let disk = self.disk_path(path);
        let mut tmp = disk.clone().into_os_string();
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(io::Error::other)?;
        tmp.push(format!(".tmp{:016x}", u64::from_le_bytes(r)));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            let mut w = self.create(path, &tmp)?;
            w.write_all(data)?;
            w.terminate()?;
            std::fs::rename(&tmp, &disk)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        self.sync_directory()
    }

    fn sync_directory(&self) -> io::Result<()> {
        File::open(&self.inner.root)?.sync_all()
    }

    /// No change notifications: readers reload by hand.
    fn watch(&self, _callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(WatchHandle::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    fn dir(block: usize) -> (tempfile::TempDir, EncryptedDirectory) {
        let t = tempfile::tempdir().unwrap();
        let d = EncryptedDirectory::open(t.path(), &KEY, block).unwrap();
        (t, d)
    }

    fn write(d: &EncryptedDirectory, name: &str, data: &[u8]) {
        let mut w = d.open_write(Path::new(name)).unwrap();
        // Odd-sized writes, so blocks fill across calls.
        for c in data.chunks(37) {
            w.write_all(c).unwrap();
        }
        w.terminate().unwrap();
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn err_text(r: Result<Arc<dyn FileHandle>, OpenReadError>) -> String {
        match r {
            Ok(_) => panic!("opened a damaged file"),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn round_trip_any_range() {
        let (_t, d) = dir(64);
        for n in [0usize, 1, 63, 64, 65, 1000] {
            let name = format!("f{n}");
            let data = sample(n);
            write(&d, &name, &data);
            let f = d.get_file_handle(Path::new(&name)).unwrap();
            assert_eq!(f.len(), n);
            for (a, b) in [
                (0, n),
                (0, n.min(1)),
                (n / 3, n / 2),
                (n.min(60), n.min(130)),
            ] {
                assert_eq!(
                    f.read_bytes(a..b).unwrap().as_slice(),
                    &data[a..b],
                    "{n} {a}..{b}"
                );
            }
            // No plaintext on disk.
            let disk = std::fs::read(d.disk_path(Path::new(&name))).unwrap();
            if n >= 64 {
                assert!(!disk.windows(16).any(|w| w == &data[..16]));
            }
        }
        d.atomic_write(Path::new("meta.json"), b"{\"a\":1}")
            .unwrap();
        d.atomic_write(Path::new("meta.json"), b"{\"a\":2}")
            .unwrap();
        assert_eq!(d.atomic_read(Path::new("meta.json")).unwrap(), b"{\"a\":2}");
        assert!(d.exists(Path::new("meta.json")).unwrap());
        assert!(matches!(
            d.open_write(Path::new("f1")),
            Err(OpenWriteError::FileAlreadyExists(_))
        ));
        d.delete(Path::new("f1")).unwrap();
        assert!(!d.exists(Path::new("f1")).unwrap());
        assert!(matches!(
            d.get_file_handle(Path::new("f1")),
            Err(OpenReadError::FileDoesNotExist(_))
        ));
        // Another key reads nothing.
        let other = EncryptedDirectory::open(&d.inner.root, &[8; 32], 64).unwrap();
        assert!(matches!(
            other.atomic_read(Path::new("meta.json")),
            Err(OpenReadError::FileDoesNotExist(_))
        ));
    }

    #[test]
    fn a_flipped_byte_fails_the_read_of_its_block() {
        let (_t, d) = dir(64);
        let data = sample(300);
        write(&d, "x", &data);
        let disk = d.disk_path(Path::new("x"));
        let mut bytes = std::fs::read(&disk).unwrap();
        // A byte of block 2's ciphertext.
        bytes[HEADER_LEN + 2 * (64 + TAG_LEN) + 5] ^= 1;
        std::fs::write(&disk, &bytes).unwrap();
        let f = d.get_file_handle(Path::new("x")).unwrap();
        // Blocks 0 and 1 are intact and still read.
        assert_eq!(f.read_bytes(0..128).unwrap().as_slice(), &data[..128]);
        let e = f.read_bytes(100..200).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().contains("block 2 fails authentication"),
            "{e}"
        );
    }

    #[test]
    fn a_truncated_or_extended_file_is_refused_when_opened() {
        let (_t, d) = dir(64);
        write(&d, "x", &sample(300));
        let disk = d.disk_path(Path::new("x"));
        let whole = std::fs::read(&disk).unwrap();
        // Cut at the end of a block (trailer gone), inside a block, and at the header.
        for cut in [
            HEADER_LEN + 4 * (64 + TAG_LEN),
            whole.len() - 1,
            whole.len() - TRAILER_LEN - 10,
            HEADER_LEN,
        ] {
            std::fs::write(&disk, &whole[..cut]).unwrap();
            let e = err_text(d.get_file_handle(Path::new("x")));
            assert!(e.contains("trailer") || e.contains("shorter"), "{cut}: {e}");
        }
        // The last block dropped and the trailer put back: the length no longer fits.
        let last_block = 300 - 4 * 64 + TAG_LEN;
        let mut short = whole[..whole.len() - TRAILER_LEN - last_block].to_vec();
        short.extend_from_slice(&whole[whole.len() - TRAILER_LEN..]);
        std::fs::write(&disk, &short).unwrap();
        let e = err_text(d.get_file_handle(Path::new("x")));
        assert!(e.contains("trailer says 300 bytes"), "{e}");
        // Bytes appended.
        let mut long = whole.clone();
        long.extend_from_slice(&[0; 80]);
        std::fs::write(&disk, &long).unwrap();
        let e = err_text(d.get_file_handle(Path::new("x")));
        assert!(e.contains("trailer"), "{e}");
    }

    #[test]
    fn blocks_cannot_be_swapped_moved_or_taken_from_another_file() {
        let (_t, d) = dir(64);
        let (a, b) = (
            sample(256),
            sample(256).iter().map(|x| !x).collect::<Vec<_>>(),
        );
        write(&d, "a", &a);
        write(&d, "b", &b);
        let (pa, pb) = (d.disk_path(Path::new("a")), d.disk_path(Path::new("b")));
        let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        let blk = |i: usize| HEADER_LEN + i * (64 + TAG_LEN)..HEADER_LEN + (i + 1) * (64 + TAG_LEN);
        // Blocks 0 and 1 of `a` swapped.
        let mut swapped = ba.clone();
        swapped[blk(0)].copy_from_slice(&ba[blk(1)]);
        swapped[blk(1)].copy_from_slice(&ba[blk(0)]);
        std::fs::write(&pa, &swapped).unwrap();
        let f = d.get_file_handle(Path::new("a")).unwrap();
        assert!(f.read_bytes(0..10).is_err());
        assert!(f.read_bytes(70..80).is_err());
        assert_eq!(f.read_bytes(130..140).unwrap().as_slice(), &a[130..140]);
        // Block 1 of `b` in `a`.
        let mut mixed = ba.clone();
        mixed[blk(1)].copy_from_slice(&bb[blk(1)]);
        std::fs::write(&pa, &mixed).unwrap();
        let f = d.get_file_handle(Path::new("a")).unwrap();
        let e = f.read_bytes(64..128).unwrap_err();
        assert!(
            e.to_string().contains("block 1 fails authentication"),
            "{e}"
        );
        // All of `b` under the name of `a` (same size, same key).
        std::fs::write(&pa, &bb).unwrap();
        let e = err_text(d.get_file_handle(Path::new("a")));
        assert!(e.contains("trailer fails authentication"), "{e}");
    }

    #[test]
    fn tantivy_indexes_and_searches_through_it() {
        use tantivy::collector::Count;
        use tantivy::query::TermQuery;
        use tantivy::schema::{IndexRecordOption, Schema, TEXT};
        use tantivy::{doc, Index, Term};
        let (t, d) = dir(4096);
        let mut s = Schema::builder();
        let body = s.add_text_field("body", TEXT);
        let schema = s.build();
        {
            let index = Index::create(d.clone(), schema.clone(), Default::default()).unwrap();
            let mut w = index.writer_with_num_threads(1, 15_000_000).unwrap();
            for i in 0..2000 {
                w.add_document(doc!(body => format!("word{} common text", i % 100)))
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let index = Index::open(EncryptedDirectory::open(t.path(), &KEY, 4096).unwrap()).unwrap();
        let searcher = index.reader().unwrap().searcher();
        let q = TermQuery::new(
            Term::from_field_text(body, "word7"),
            IndexRecordOption::Basic,
        );
        assert_eq!(searcher.search(&q, &Count).unwrap(), 20);
        // Nothing on disk holds the words or tantivy's file names.
        for e in std::fs::read_dir(t.path()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            assert!(!name.contains('.'), "{name}");
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(!bytes.windows(6).any(|w| w == b"common"), "{name}");
        }
    }
}
