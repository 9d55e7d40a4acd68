//! tantivy's files, each sealed by Custos with a MAC over its name and bytes.
//!
//! tantivy's own checksums catch accidents, not changes: anyone who can write the index
//! directory can rewrite a segment's postings, deletions or list with checksums that
//! match, and so make a message unfindable by its words while every count stays. So the
//! index is opened through [`SealedDirectory`], which appends a trailer to every file it
//! writes,
//!
//! ```text
//! bytes ‖ "custos-s" ‖ HMAC-SHA256(HKDF(master, "custos-index-files-v1" ‖ archive id),
//!                                  "custos-index-file-v1" ‖ name ‖ 0 ‖ bytes ‖ len u64)
//! ```
//!
//! and checks the whole file before tantivy reads a byte of it, handing it over without
//! the trailer. A file changed, cut, extended, renamed to another file's name or taken
//! from another archive's index fails its seal, and the open or search that needed it
//! fails naming it. Segment files are written once under names tantivy never reuses,
//! so an older copy of a file is the file itself; an older `meta.json` is an older
//! commit, whose authenticated mark says what it covers (checked against the log).
//!
//! A file is checked once per directory value and kept mapped while tantivy holds it;
//! tantivy opens every segment anew on each reload, and those opens reuse the check.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, OwnedBytes,
    TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};
use tantivy::HasLen;
use zeroize::Zeroizing;

use crate::keys::MasterKey;

/// What a sealed file ends with: the magic and the MAC.
const MAGIC: &[u8; 8] = b"custos-s";
pub(crate) const TRAILER: usize = MAGIC.len() + 32;
const DOMAIN: &[u8] = b"custos-index-file-v1";

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

    fn start(&self, name: &str) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(DOMAIN);
        m.update(name.as_bytes());
        m.update(&[0]);
        m
    }

    fn finish(mut m: Hmac<Sha256>, len: u64) -> [u8; 32] {
        m.update(&len.to_be_bytes());
        m.finalize().into_bytes().into()
    }

    /// `data` with the trailer that seals it as the file `name`.
    pub(crate) fn seal(&self, name: &str, data: &[u8]) -> Vec<u8> {
        let mut m = self.start(name);
        m.update(data);
        let mac = SealKey::finish(m, data.len() as u64);
        let mut out = Vec::with_capacity(data.len() + TRAILER);
        out.extend_from_slice(data);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&mac);
        out
    }

    /// The bytes of the file `name` without its trailer, if it is sealed by this key.
    pub(crate) fn open<'a>(&self, name: &str, file: &'a [u8]) -> Result<&'a [u8], String> {
        let body = file
            .len()
            .checked_sub(TRAILER)
            .ok_or_else(|| format!("search index file {name}: too short to carry a seal"))?;
        let (data, trailer) = file.split_at(body);
        if &trailer[..MAGIC.len()] != MAGIC {
            return Err(format!(
                "search index file {name}: not sealed (written by an earlier Custos, or not by Custos); run `custos reindex`"
            ));
        }
        let mut m = self.start(name);
        m.update(data);
        let want = SealKey::finish(m, data.len() as u64);
        // Constant time: the comparison must not say how much of a forgery matched.
        let diff = want
            .iter()
            .zip(&trailer[MAGIC.len()..])
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        if diff != 0 {
            return Err(format!(
                "search index file {name}: its seal does not match (changed, cut or replaced after it was written, or another archive's); run `custos reindex`"
            ));
        }
        Ok(data)
    }
}

/// tantivy's [`MmapDirectory`] with every file sealed on write and checked on read.
#[derive(Clone)]
pub(crate) struct SealedDirectory {
    inner: MmapDirectory,
    key: SealKey,
    /// Files checked and still held by tantivy.
    checked: Arc<Mutex<HashMap<PathBuf, Weak<SealedFile>>>>,
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
            key: SealKey::derive(master, archive_id),
            checked: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// Why a file was refused, if one was since this directory was opened.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refused.lock().ok()?.clone()
    }

    fn refuse(&self, path: &Path, why: String) -> OpenReadError {
        if let Ok(mut r) = self.refused.lock() {
            r.get_or_insert_with(|| why.clone());
        }
        OpenReadError::wrap_io_error(
            io::Error::new(io::ErrorKind::InvalidData, Refused(why)),
            path.to_path_buf(),
        )
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Weak<SealedFile>>> {
        // A panic while the map was held leaves it whole: entries are only added whole.
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A checked file's bytes, without the trailer.
struct SealedFile(OwnedBytes);

impl std::fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedFile({} bytes)", self.0.len())
    }
}

impl HasLen for SealedFile {
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl FileHandle for SealedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        if range.start > range.end || range.end > self.0.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {range:?} past the end ({})", self.0.len()),
            ));
        }
        Ok(self.0.slice(range))
    }
}

/// A file being written: the bytes go through to the file and into its MAC; the
/// trailer is written when tantivy ends the file.
struct SealingWriter {
    inner: WritePtr,
    mac: Option<Hmac<Sha256>>,
    len: u64,
}

impl Write for SealingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(m) = &mut self.mac {
            m.update(&buf[..n]);
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
        let Some(m) = self.mac.take() else {
            return Err(io::Error::other("the file was ended twice"));
        };
        self.inner.write_all(MAGIC)?;
        self.inner.write_all(&SealKey::finish(m, self.len))?;
        self.inner.terminate_ref(token)
    }
}

impl Directory for SealedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        if let Some(f) = self.checked().get(path).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let handle = self.inner.get_file_handle(path)?;
        let bytes = handle
            .read_bytes(0..handle.len())
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))?;
        let body = match self.key.open(&name_of(path), bytes.as_slice()) {
            Ok(data) => data.len(),
            Err(why) => return Err(self.refuse(path, why)),
        };
        let file = Arc::new(SealedFile(bytes.slice(0..body)));
        let mut checked = self.checked();
        checked.retain(|_, f| f.strong_count() > 0);
        checked.insert(path.to_path_buf(), Arc::downgrade(&file));
        Ok(file)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.checked().remove(path);
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let inner = self.inner.open_write(path)?;
        Ok(BufWriter::new(Box::new(SealingWriter {
            inner,
            mac: Some(self.key.start(&name_of(path))),
            len: 0,
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let mut file = self.inner.atomic_read(path)?;
        match self.key.open(&name_of(path), &file) {
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
        let d = SealedDirectory::open(t.path(), &MasterKey::from_bytes([7; 32]), &[1; 16]).unwrap();
        (t, d)
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
        Ok(h.read_bytes(0..h.len()).unwrap().as_slice().to_vec())
    }

    #[test]
    fn a_file_reads_back_as_written_without_its_trailer() {
        let (t, d) = dir();
        write(&d, "a.idx", b"postings of a segment");
        assert_eq!(read(&d, "a.idx").unwrap(), b"postings of a segment");
        let on_disk = std::fs::read(t.path().join("a.idx")).unwrap();
        assert_eq!(on_disk.len(), 21 + TRAILER);
        d.atomic_write(Path::new("meta.json"), b"{}").unwrap();
        assert_eq!(d.atomic_read(Path::new("meta.json")).unwrap(), b"{}");
        assert!(d.refusal().is_none());
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
            let d =
                SealedDirectory::open(t.path(), &MasterKey::from_bytes([7; 32]), &[1; 16]).unwrap();
            let err = read(&d, "a.del").unwrap_err();
            assert!(err.contains("a.del") && err.contains(why), "{what}: {err}");
            assert!(d.refusal().is_some_and(|r| r.contains(why)), "{what}");
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
}
