//! Sealed state files: what a reader derived from the log, written out whole so that a
//! restart reads it back and goes on from the record it covers, instead of reading
//! every record again. The log stays the only source of truth: a state file names the
//! chain position it was read up to (inside its sealed content, checked on resume with
//! [`crate::TailCursor::resume`]), and one that is missing, damaged, from another
//! archive or from a chain that has since changed is discarded and the state read
//! afresh from the log.
//!
//! Each file is `state/<name>.state` in the archive directory:
//!
//! ```text
//! file  := "custos-s" ‖ version:u8 = 1 ‖ file id:16 (random) ‖ chunk*
//! chunk := last:1 bit ‖ len:31 bits, u32be ‖ AES-256-GCM(file key, nonce = index:u64be ‖ 0:u32, data, aad)
//! file key := HMAC-SHA256(HKDF(master key, "custos-state-v1" ‖ archive id), file id)
//! aad   := "custos-state-v1" ‖ archive id ‖ name length:u8 ‖ name ‖ index:u64be ‖ last:u8
//! ```
//!
//! Chunks are numbered, and the last one says it is last: a file cut short, with chunks
//! reordered, or spliced from another state file does not open. Someone who copies the
//! directory learns the file's size (roughly how many records the state covers), nothing
//! of its content without the master key. Someone who can write the directory can delete
//! the file or put back an older one, which costs a longer catch-up: the rest is read
//! from the log. The temporary file is created anew for each write (a link in its place
//! is removed, not followed), and writers of one state wait for each other.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::keys::{hmac_sha256, random_bytes, MasterKey};

const LABEL: &str = "custos-state-v1";
const MAGIC: &[u8; 8] = b"custos-s";
const VERSION: u8 = 1;
/// Plaintext bytes per chunk.
const CHUNK: usize = 1 << 20;
/// AES-GCM's tag.
const TAG: usize = 16;

/// The directory of state files in archive directory `dir`.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

fn check_name(name: &str) -> std::io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a state file name (a-z, 0-9 and '-', at most 64)"),
        ))
    }
}

struct Seal {
    cipher: Aes256Gcm,
    archive_id: [u8; 16],
    name: String,
}

impl Seal {
    fn new(master: &MasterKey, archive_id: &[u8; 16], name: &str, file_id: &[u8; 16]) -> Seal {
        let key = master.derive(LABEL, archive_id);
        let file_key = Zeroizing::new(hmac_sha256(key.as_ref(), &[b"file", file_id]));
        Seal {
            // A 32-byte key is always accepted.
            cipher: Aes256Gcm::new_from_slice(file_key.as_ref())
                .unwrap_or_else(|_| Aes256Gcm::new(&Default::default())),
            archive_id: *archive_id,
            name: name.to_string(),
        }
    }

    fn aad(&self, index: u64, last: bool) -> Vec<u8> {
        let mut aad = Vec::with_capacity(LABEL.len() + 16 + 1 + self.name.len() + 9);
        aad.extend_from_slice(LABEL.as_bytes());
        aad.extend_from_slice(&self.archive_id);
        // Names are at most 64 bytes (`check_name`).
        aad.push(self.name.len() as u8);
        aad.extend_from_slice(self.name.as_bytes());
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    fn nonce(index: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&index.to_be_bytes());
        n
    }
}

/// How far [`StateWriter::finish_then`] got in putting its file in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Not at all: the previous file is in place.
    No,
    /// Renamed into place, but the directory could not be synced: after a crash,
    /// either file may be found there.
    Maybe,
    /// In place, durably.
    Yes,
}

/// Writes a state file: everything written goes into sealed chunks of a temporary
/// file, which [`StateWriter::finish`] makes durable and puts in place of the previous
/// one. Dropped unfinished, it leaves the previous file as it was.
pub struct StateWriter {
    out: BufWriter<File>,
    seal: Seal,
    buf: Vec<u8>,
    index: u64,
    tmp: PathBuf,
    path: PathBuf,
    /// The state directory, locked (exclusive) for as long as this writer lives: a
    /// second writer waits instead of writing into the same temporary file.
    _lock: File,
}

impl StateWriter {
    pub(crate) fn create(
        dir: &Path,
        master: &MasterKey,
        archive_id: &[u8; 16],
        name: &str,
    ) -> std::io::Result<StateWriter> {
        check_name(name)?;
        let states = state_dir(dir);
        std::fs::create_dir_all(&states)?;
        let path = states.join(format!("{name}.state"));
        let tmp = states.join(format!("{name}.state.tmp"));
        let lock = File::open(&states)?;
        lock.lock()?;
        // What a crash or another process left there is removed, not written through
        // (a link put in its place is not followed).
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let file_id = random_bytes::<16>().map_err(std::io::Error::other)?;
        let mut out = BufWriter::with_capacity(CHUNK + 64, file);
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        out.write_all(&file_id)?;
        Ok(StateWriter {
            out,
            seal: Seal::new(master, archive_id, name, &file_id),
            buf: Vec::with_capacity(CHUNK + TAG),
            index: 0,
            tmp,
            path,
            _lock: lock,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> std::io::Result<()> {
        let aad = self.seal.aad(self.index, last);
        let nonce = Seal::nonce(self.index);
        self.seal
            .cipher
            .encrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut self.buf)
            .map_err(|_| std::io::Error::other("sealing a state chunk failed"))?;
        // At most CHUNK + TAG: far below the top bit, which says "last".
        let len = self.buf.len() as u32 | (u32::from(last) << 31);
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals what is left, syncs the file and renames it into place (then syncs the
    /// directory), so a crash leaves either the previous file or this one whole.
    pub fn finish(self) -> std::io::Result<PathBuf> {
        self.finish_then(|_| {})
    }

    /// [`StateWriter::finish`], then `then` with how far it got, while the state
    /// directory is still locked, whether it succeeded or not. For files that go with
    /// a state file: to remove what the file in place no longer names, or what a failed
    /// write left, before another writer begins.
    pub fn finish_then(mut self, then: impl FnOnce(Placed)) -> std::io::Result<PathBuf> {
        let mut placed = Placed::No;
        let finished = self.place(&mut placed);
        then(placed);
        finished.map(|()| self.path.clone())
    }

    fn place(&mut self, placed: &mut Placed) -> std::io::Result<()> {
        self.seal_chunk(true)?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        *placed = Placed::Maybe;
        if let Some(parent) = self.path.parent() {
            File::open(parent)?.sync_all()?;
        }
        *placed = Placed::Yes;
        Ok(())
    }
}

impl Write for StateWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.seal_chunk(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a state file back, opening one chunk at a time. Any damage (a chunk that
/// does not open, a file cut short, bytes after the last chunk) is an
/// [`std::io::ErrorKind::InvalidData`] error naming the file.
pub struct StateReader {
    input: BufReader<File>,
    seal: Seal,
    path: PathBuf,
    buf: Vec<u8>,
    at: usize,
    index: u64,
    done: bool,
}

impl StateReader {
    /// `Ok(None)` when there is no such file.
    pub(crate) fn open(
        dir: &Path,
        master: &MasterKey,
        archive_id: &[u8; 16],
        name: &str,
    ) -> std::io::Result<Option<StateReader>> {
        check_name(name)?;
        let path = state_dir(dir).join(format!("{name}.state"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut input = BufReader::with_capacity(CHUNK + 64, file);
        let mut head = [0u8; 25];
        let bad = |path: &Path, what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("state file {}: {what}", path.display()),
            )
        };
        input
            .read_exact(&mut head)
            .map_err(|_| bad(&path, "shorter than its header"))?;
        if &head[..8] != MAGIC {
            return Err(bad(&path, "not a state file"));
        }
        if head[8] != VERSION {
            return Err(bad(&path, &format!("version {} is not known", head[8])));
        }
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&head[9..25]);
        Ok(Some(StateReader {
            input,
            seal: Seal::new(master, archive_id, name, &file_id),
            path,
            buf: Vec::new(),
            at: 0,
            index: 0,
            done: false,
        }))
    }

    fn bad(&self, what: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("state file {}: {what}", self.path.display()),
        )
    }

    /// Opens the next chunk into `buf`.
    fn next_chunk(&mut self) -> std::io::Result<()> {
        let mut len = [0u8; 4];
        if self.input.read_exact(&mut len).is_err() {
            return Err(self.bad("cut short before its last chunk"));
        }
        let word = u32::from_be_bytes(len);
        let last = word >> 31 == 1;
        let len = (word & !(1 << 31)) as usize;
        if !(TAG..=CHUNK + TAG).contains(&len) {
            return Err(self.bad(&format!("chunk {} has a bad length {len}", self.index)));
        }
        self.buf.resize(len, 0);
        if self.input.read_exact(&mut self.buf).is_err() {
            return Err(self.bad("cut short inside a chunk"));
        }
        let nonce = Seal::nonce(self.index);
        // The flag is authenticated with the chunk: a chunk not sealed as the last
        // does not open as the last.
        let aad = self.seal.aad(self.index, last);
        if self
            .seal
            .cipher
            .decrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut self.buf)
            .is_err()
        {
            return Err(self.bad(&format!(
                "chunk {} does not open (damaged, moved, or sealed under another key)",
                self.index
            )));
        }
        self.done = last;
        self.at = 0;
        self.index += 1;
        if self.done {
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(self.bad("bytes after its last chunk"));
            }
        }
        Ok(())
    }
}

impl Read for StateReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, master: &MasterKey, id: &[u8; 16], name: &str, data: &[u8]) {
        let mut w = StateWriter::create(dir, master, id, name).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
    }

    fn read(dir: &Path, master: &MasterKey, id: &[u8; 16], name: &str) -> std::io::Result<Vec<u8>> {
        let mut r = StateReader::open(dir, master, id, name)?.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_state_reads_back_and_any_change_to_its_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let master = MasterKey::from_bytes([7; 32]);
        let id = [1u8; 16];
        // Three chunks and a bit.
        let data: Vec<u8> = (0..3 * CHUNK + 1234)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        write(dir, &master, &id, "web-ui", &data);
        assert_eq!(read(dir, &master, &id, "web-ui").unwrap(), data);
        assert!(StateReader::open(dir, &master, &id, "other")
            .unwrap()
            .is_none());
        let path = state_dir(dir).join("web-ui.state");
        let original = std::fs::read(&path).unwrap();
        let refused = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = read(dir, &master, &id, "web-ui").unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
            assert!(err.to_string().contains("web-ui.state"), "{err}");
        };
        // Cut at a chunk boundary: the chunks left all open, but the last is missing.
        let first_chunk_end = 25 + 4 + CHUNK + TAG;
        refused(&original[..first_chunk_end], "cut after a chunk");
        refused(&original[..original.len() - 1], "cut inside the last chunk");
        let mut flipped = original.clone();
        flipped[first_chunk_end + 100] ^= 1;
        refused(&flipped, "a flipped bit");
        let mut longer = original.clone();
        longer.push(0);
        refused(&longer, "a byte after the end");
        // Chunks 1 and 2 swapped.
        let c = 4 + CHUNK + TAG;
        let mut swapped = original[..25 + c].to_vec();
        swapped.extend_from_slice(&original[25 + 2 * c..25 + 3 * c]);
        swapped.extend_from_slice(&original[25 + c..25 + 2 * c]);
        swapped.extend_from_slice(&original[25 + 3 * c..]);
        refused(&swapped, "chunks swapped");
        std::fs::write(&path, &original).unwrap();
        // Another archive, another key, another name: none opens it.
        assert!(read(dir, &master, &[2; 16], "web-ui").is_err());
        assert!(read(dir, &MasterKey::from_bytes([8; 32]), &id, "web-ui").is_err());
        std::fs::copy(&path, state_dir(dir).join("other.state")).unwrap();
        assert!(read(dir, &master, &id, "other").is_err());
        assert_eq!(read(dir, &master, &id, "web-ui").unwrap(), data);
    }

    #[test]
    fn an_unfinished_write_leaves_the_previous_state_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let id = [1u8; 16];
        write(tmp.path(), &master, &id, "s", b"first");
        let mut w = StateWriter::create(tmp.path(), &master, &id, "s").unwrap();
        w.write_all(&vec![9u8; 2 * CHUNK]).unwrap();
        drop(w);
        assert_eq!(read(tmp.path(), &master, &id, "s").unwrap(), b"first");
        write(tmp.path(), &master, &id, "s", b"");
        assert_eq!(read(tmp.path(), &master, &id, "s").unwrap(), b"");
        assert!(StateWriter::create(tmp.path(), &master, &id, "../x").is_err());
    }

    /// Someone who can write the archive directory (and not the keys, kept outside it)
    /// puts a link where the temporary file goes: the next save must not write through
    /// it into the file it names (the master key, the accounts file).
    #[cfg(unix)]
    #[test]
    fn a_link_in_place_of_the_temporary_file_is_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let id = [1u8; 16];
        let outside = tmp.path().join("master.key");
        std::fs::write(&outside, b"the master key").unwrap();
        let dir = tmp.path().join("archive");
        std::fs::create_dir_all(state_dir(&dir)).unwrap();
        std::os::unix::fs::symlink(&outside, state_dir(&dir).join("s.state.tmp")).unwrap();
        write(&dir, &master, &id, "s", b"state");
        assert_eq!(std::fs::read(&outside).unwrap(), b"the master key");
        assert_eq!(read(&dir, &master, &id, "s").unwrap(), b"state");
    }

    /// Two saves of one state at once (the web UI's hourly save still writing when the
    /// shutdown save starts): each must either put a whole file in place or fail
    /// leaving whatever was there whole; what ends up in place opens.
    #[test]
    fn two_writers_of_one_state_at_once_leave_a_whole_file() {
        use std::sync::mpsc;
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let master = MasterKey::from_bytes([7; 32]);
        let id = [1u8; 16];
        let a = vec![0xaa_u8; 3 * CHUNK + 17];
        let b = vec![0xbb_u8; CHUNK / 2];
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let first = {
            let (dir, master, a) = (dir.clone(), master.clone(), a.clone());
            std::thread::spawn(move || {
                let mut w = StateWriter::create(&dir, &master, &id, "s").unwrap();
                w.write_all(&a[..2 * CHUNK + 5]).unwrap();
                started_tx.send(()).unwrap();
                // Goes on once the second writer has started (or after a while, if
                // the second writer waits for this one).
                let _ = go_rx.recv_timeout(Duration::from_millis(500));
                w.write_all(&a[2 * CHUNK + 5..]).unwrap();
                w.finish().is_ok()
            })
        };
        started_rx.recv().unwrap();
        let second = {
            let (dir, master, b) = (dir.clone(), master.clone(), b.clone());
            std::thread::spawn(move || {
                let mut w = StateWriter::create(&dir, &master, &id, "s").unwrap();
                let _ = go_tx.send(());
                w.write_all(&b).unwrap();
                // Lets the first writer finish (and rename) before this one does.
                std::thread::sleep(Duration::from_millis(100));
                w.finish().is_ok()
            })
        };
        let first_ok = first.join().unwrap();
        let second_ok = second.join().unwrap();
        assert!(first_ok || second_ok, "one of the two saves went through");
        let back = read(&dir, &master, &id, "s").expect("the state in place opens");
        assert!(
            back == a || back == b,
            "the state in place is one writer's, whole"
        );
    }
}
