//! The witness: every signed checkpoint is also appended, and synced, to a file outside
//! the archive directory (another mount or host), before the checkpoint counts as made.
//! Whoever can write the archive directory can cut the end of the log, and nothing left in
//! it would contradict the cut; the witness remembers how far the chain had grown.
//!
//! ```text
//!  <witness dir>/<archive id, 32 hex>.witness
//!    header  "CUSTOSWT" | version u16 | archive id [16]
//!    entries segment u64 | seq u64 | head [32] | time ms i64 | sealed u8
//!            | SHA-256(segment header) [32] | Ed25519 signature [64]      (153 bytes each)
//! ```
//!
//! Each entry is the checkpoint as signed in the segment, with the hash of the segment
//! header its signature covers, so the witness alone can be checked with the public key.
//!
//! A witness directory holds one archive's file (or, with `witness_shared`, the files of
//! the node chains of one bucket). Whoever holds the keys could otherwise replace the
//! whole archive by a new one under a new id: its file starts empty beside the old
//! one's, and nothing in it contradicts the new log. So a new file is not started beside
//! another archive's unless the writer is told the directory is shared
//! ([`WitnessWriter::open`]), and `verify` reports every other archive's file it finds
//! there ([`witness_files`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::segment::{self, Checkpoint, Frame, Hash, Parsed, HEADER_LEN};

pub const MAGIC: &[u8; 8] = b"CUSTOSWT";
pub const VERSION: u16 = 1;
const HEADER: usize = 8 + 2 + 16;
pub const ENTRY_LEN: usize = 8 + 8 + 32 + 8 + 1 + 32 + 64;

/// One witnessed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessEntry {
    pub segment: u64,
    pub header_hash: Hash,
    pub checkpoint: Checkpoint,
}

impl WitnessEntry {
    /// The entry for a checkpoint frame just written to `segment` (whose header is
    /// `header`); `None` if `frame` is not a checkpoint frame.
    pub fn of_frame(segment: u64, header: &[u8; HEADER_LEN], frame: &[u8]) -> Option<Self> {
        match segment::parse_frame(frame, 0) {
            Parsed::Frame(Frame::Checkpoint(checkpoint), _) => Some(WitnessEntry {
                segment,
                header_hash: segment::sha(&[header]),
                checkpoint,
            }),
            _ => None,
        }
    }

    /// The entry's bytes as stored in a witness file or object.
    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        self.encode()
    }

    /// An entry from its stored bytes; `None` unless exactly one well-formed entry.
    pub fn from_bytes(b: &[u8]) -> Option<WitnessEntry> {
        if b.len() != ENTRY_LEN {
            return None;
        }
        WitnessEntry::decode(b)
    }

    /// The newest checkpoint in a segment's bytes (header first), as a witness entry.
    pub fn newest_in(segment: u64, bytes: &[u8]) -> Option<WitnessEntry> {
        let header: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let mut at = HEADER_LEN;
        let mut newest = None;
        while let Parsed::Frame(frame, next) = segment::parse_frame(bytes, at) {
            if let Frame::Checkpoint(_) = frame {
                newest = bytes
                    .get(at..next)
                    .and_then(|f| WitnessEntry::of_frame(segment, header, f));
            }
            at = next;
        }
        newest
    }

    fn encode(&self) -> [u8; ENTRY_LEN] {
        let c = &self.checkpoint;
        let mut b = [0u8; ENTRY_LEN];
        let mut w = &mut b[..];
        // Writing into a fixed array of exactly ENTRY_LEN bytes cannot fail.
        let _ = w.write_all(&self.segment.to_be_bytes());
        let _ = w.write_all(&c.seq.to_be_bytes());
        let _ = w.write_all(&c.head);
        let _ = w.write_all(&c.time_ms.to_be_bytes());
        let _ = w.write_all(&[u8::from(c.sealed)]);
        let _ = w.write_all(&self.header_hash);
        let _ = w.write_all(&c.signature);
        b
    }

    fn decode(b: &[u8]) -> Option<WitnessEntry> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let sealed = match b.get(56)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(WitnessEntry {
            segment: u64_at(0)?,
            header_hash: b.get(57..89)?.try_into().ok()?,
            checkpoint: Checkpoint {
                seq: u64_at(8)?,
                head: b.get(16..48)?.try_into().ok()?,
                time_ms: i64::from_be_bytes(b.get(48..56)?.try_into().ok()?),
                sealed,
                signature: b.get(89..153)?.try_into().ok()?,
            },
        })
    }

    /// Whether the archive's signing key signed this checkpoint.
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        segment::checkpoint_valid_for_hash(key, &self.header_hash, &self.checkpoint)
    }
}

/// Why the witness could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("witness {path}: not a Custos witness file (bad magic or version)")]
    Format { path: PathBuf },
    #[error("witness {path} belongs to another archive")]
    Foreign { path: PathBuf },
    #[error("witness {path} is missing: it was removed, or the archive was never opened with this witness")]
    Missing { path: PathBuf },
    #[error("witness {path} not started: its directory already holds {other}, the witness of archive {other_id}, and verify reports another archive's witness there as one this archive may have replaced; give this archive a witness directory of its own, or set witness_shared when nodes of one bucket share the directory")]
    Occupied {
        path: PathBuf,
        other: PathBuf,
        other_id: String,
    },
}

/// An archive id as witness file names and reports spell it: 32 lowercase hex digits.
pub fn hex_id(archive_id: &[u8; 16]) -> String {
    crate::export::hex::encode(archive_id)
}

/// The witness file of archive `archive_id` in `dir`.
pub fn witness_path(dir: &Path, archive_id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{}.witness", hex_id(archive_id)))
}

fn header(archive_id: &[u8; 16]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_be_bytes());
    h[10..].copy_from_slice(archive_id);
    h
}

/// Appends entries; every append is synced before it returns.
#[derive(Debug)]
pub struct WitnessWriter {
    file: File,
    path: PathBuf,
}

impl WitnessWriter {
    /// Opens the archive's witness file in `dir`, creating the directory and the file
    /// (header synced, directory synced) the first time; refuses another archive's file.
    /// A new file is refused ([`WitnessError::Occupied`]) where the directory already
    /// holds another archive's witness, unless `shared` says that nodes of one bucket
    /// keep their witness files there together.
    pub fn open(
        dir: &Path,
        archive_id: &[u8; 16],
        shared: bool,
    ) -> Result<WitnessWriter, WitnessError> {
        let path = witness_path(dir, archive_id);
        let io = |source| WitnessError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                check_header(&bytes, archive_id, &path)?;
                let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
                // An entry torn by a crash is cut, so what follows stays aligned.
                let torn = bytes.len().saturating_sub(HEADER) % ENTRY_LEN;
                if torn > 0 {
                    file.set_len((bytes.len() - torn) as u64).map_err(io)?;
                    file.sync_all().map_err(io)?;
                }
                Ok(WitnessWriter { file, path })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                may_start(dir, archive_id, shared)?;
                let mut file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(&header(archive_id)).map_err(io)?;
                file.sync_all().map_err(io)?;
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                Ok(WitnessWriter { file, path })
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn append(&mut self, entry: &WitnessEntry) -> Result<(), WitnessError> {
        let io = |source| WitnessError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&entry.encode()).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

/// Whether archive `archive_id` may have its witness file in `dir`: it has one there
/// already, or the directory holds no other archive's, or `shared` says that nodes of
/// one bucket keep their witness files there together. Else [`WitnessError::Occupied`].
/// Creates nothing: a new archive asks before it writes its `archive.meta`, so that a
/// refusal leaves no archive behind.
pub fn may_start(dir: &Path, archive_id: &[u8; 16], shared: bool) -> Result<(), WitnessError> {
    let path = witness_path(dir, archive_id);
    if shared || path.exists() {
        return Ok(());
    }
    let other = witness_files(dir)?
        .into_iter()
        .find_map(|f| match f.archive_id {
            Ok(id) if id != *archive_id => Some((f.path, id)),
            _ => None,
        });
    match other {
        Some((other, id)) => Err(WitnessError::Occupied {
            path,
            other,
            other_id: hex_id(&id),
        }),
        None => Ok(()),
    }
}

fn check_header(bytes: &[u8], archive_id: &[u8; 16], path: &Path) -> Result<(), WitnessError> {
    if header_id(bytes, path)? != *archive_id {
        return Err(WitnessError::Foreign { path: path.into() });
    }
    Ok(())
}

/// The archive id a witness file's header names, once its magic and version are checked.
fn header_id(bytes: &[u8], path: &Path) -> Result<[u8; 16], WitnessError> {
    let format = || WitnessError::Format { path: path.into() };
    let h = bytes.get(..HEADER).ok_or_else(format)?;
    if h.get(..10) != header(&[0; 16]).get(..10) {
        return Err(format());
    }
    h.get(10..)
        .and_then(|id| id.try_into().ok())
        .ok_or_else(format)
}

/// What a witness file holds.
#[derive(Debug, Default)]
pub struct Witnessed {
    pub entries: Vec<WitnessEntry>,
    /// Bytes after the last whole entry: a write cut short by a crash.
    pub torn_bytes: usize,
}

/// Reads the witness of `archive_id` in `dir`.
pub fn read_witness(dir: &Path, archive_id: &[u8; 16]) -> Result<Witnessed, WitnessError> {
    let path = witness_path(dir, archive_id);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WitnessError::Missing { path })
        }
        Err(source) => return Err(WitnessError::Io { path, source }),
    };
    check_header(&bytes, archive_id, &path)?;
    entries(&bytes, &path)
}

/// Reads the witness file at `path`, whichever archive's it is: its archive id and what
/// it holds.
pub fn read_witness_file(path: &Path) -> Result<([u8; 16], Witnessed), WitnessError> {
    let bytes = std::fs::read(path).map_err(|source| WitnessError::Io {
        path: path.into(),
        source,
    })?;
    let id = header_id(&bytes, path)?;
    Ok((id, entries(&bytes, path)?))
}

fn entries(bytes: &[u8], path: &Path) -> Result<Witnessed, WitnessError> {
    let body = bytes.get(HEADER..).unwrap_or_default();
    let mut w = Witnessed::default();
    let mut chunks = body.chunks_exact(ENTRY_LEN);
    for chunk in &mut chunks {
        match WitnessEntry::decode(chunk) {
            Some(e) => w.entries.push(e),
            None => return Err(WitnessError::Format { path: path.into() }),
        }
    }
    w.torn_bytes = chunks.remainder().len();
    Ok(w)
}

/// A file in a witness directory that is, or claims by its name to be, a witness file.
#[derive(Debug)]
pub struct WitnessFile {
    pub path: PathBuf,
    /// The archive id its header names, or why it cannot be read as a witness file.
    pub archive_id: Result<[u8; 16], WitnessError>,
}

/// Every witness file in `dir`, sorted by path: each file named `*.witness`, and each
/// other file that starts with a witness header (a witness renamed is still one).
/// Subdirectories and other files are left alone: a mount's `lost+found` is not the
/// archive's business. A directory that does not exist holds none.
pub fn witness_files(dir: &Path) -> Result<Vec<WitnessFile>, WitnessError> {
    let io = |source| WitnessError::Io {
        path: dir.into(),
        source,
    };
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in listing {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if !entry.file_type().map_err(io)?.is_file() {
            continue;
        }
        let named = path.extension().is_some_and(|e| e == "witness");
        let archive_id = read_header(&path);
        let looks_like_one = match &archive_id {
            Ok(_) => true,
            Err(WitnessError::Format { .. }) => false,
            Err(_) => named,
        };
        if named || looks_like_one {
            out.push(WitnessFile { path, archive_id });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The archive id in the header of the file at `path`, reading no more than the header.
fn read_header(path: &Path) -> Result<[u8; 16], WitnessError> {
    use std::io::Read;
    let io = |source| WitnessError::Io {
        path: path.into(),
        source,
    };
    let mut bytes = Vec::with_capacity(HEADER);
    File::open(path)
        .map_err(io)?
        .take(HEADER as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    header_id(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn entry(seq: u64, signer: &SigningKey) -> WitnessEntry {
        let header = [7u8; HEADER_LEN];
        let frame = segment::checkpoint_frame(
            signer,
            &header,
            seq,
            &[seq as u8; 32],
            1000,
            seq.is_multiple_of(2),
        );
        WitnessEntry::of_frame(3, &header, &frame).unwrap()
    }

    #[test]
    fn entries_round_trip_and_verify_alone() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SigningKey::from_bytes(&[5; 32]);
        let id = [1u8; 16];
        let mut w = WitnessWriter::open(dir.path(), &id, false).unwrap();
        let (a, b) = (entry(10, &signer), entry(11, &signer));
        w.append(&a).unwrap();
        w.append(&b).unwrap();
        drop(w);
        // Reopening appends after what is there.
        let c = entry(12, &signer);
        WitnessWriter::open(dir.path(), &id, false)
            .unwrap()
            .append(&c)
            .unwrap();
        let read = read_witness(dir.path(), &id).unwrap();
        assert_eq!(read.entries, vec![a.clone(), b, c]);
        assert_eq!(read.torn_bytes, 0);
        assert!(read
            .entries
            .iter()
            .all(|e| e.signature_valid(&signer.verifying_key())));
        let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
        assert!(!a.signature_valid(&other));
        let mut forged = a;
        forged.checkpoint.seq += 1;
        assert!(!forged.signature_valid(&signer.verifying_key()));
    }

    #[test]
    fn foreign_missing_and_torn_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SigningKey::from_bytes(&[5; 32]);
        assert!(matches!(
            read_witness(dir.path(), &[1; 16]),
            Err(WitnessError::Missing { .. })
        ));
        let mut w = WitnessWriter::open(dir.path(), &[1; 16], false).unwrap();
        w.append(&entry(1, &signer)).unwrap();
        drop(w);
        // Another archive's file copied under this archive's name.
        std::fs::copy(
            witness_path(dir.path(), &[1; 16]),
            witness_path(dir.path(), &[2; 16]),
        )
        .unwrap();
        assert!(matches!(
            read_witness(dir.path(), &[2; 16]),
            Err(WitnessError::Foreign { .. })
        ));
        assert!(WitnessWriter::open(dir.path(), &[2; 16], false).is_err());
        // A torn last entry is counted, not fatal.
        let path = witness_path(dir.path(), &[1; 16]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 40]);
        std::fs::write(&path, &bytes).unwrap();
        let read = read_witness(dir.path(), &[1; 16]).unwrap();
        assert_eq!((read.entries.len(), read.torn_bytes), (1, 40));
        // The writer cuts the torn entry before appending again.
        WitnessWriter::open(dir.path(), &[1; 16], false)
            .unwrap()
            .append(&entry(2, &signer))
            .unwrap();
        let read = read_witness(dir.path(), &[1; 16]).unwrap();
        assert_eq!((read.entries.len(), read.torn_bytes), (2, 0));
        std::fs::write(&path, b"not a witness").unwrap();
        assert!(matches!(
            read_witness(dir.path(), &[1; 16]),
            Err(WitnessError::Format { .. })
        ));
    }

    #[test]
    fn a_witness_directory_lists_its_witness_files_by_header() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SigningKey::from_bytes(&[5; 32]);
        WitnessWriter::open(dir.path(), &[1; 16], true)
            .unwrap()
            .append(&entry(1, &signer))
            .unwrap();
        WitnessWriter::open(dir.path(), &[2; 16], true).unwrap();
        // Files that are not witnesses are left alone.
        std::fs::write(dir.path().join("README"), b"witness share").unwrap();
        std::fs::create_dir(dir.path().join("lost+found")).unwrap();
        // A renamed witness is still found by its header; a file named as a witness but
        // not one is listed with the reason.
        std::fs::rename(
            witness_path(dir.path(), &[1; 16]),
            dir.path().join("old.bak"),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.witness"), b"not a witness").unwrap();
        let found: Vec<(String, Option<[u8; 16]>)> = witness_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| {
                let name = f.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, f.archive_id.ok())
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (format!("{}.witness", hex_id(&[2; 16])), Some([2; 16])),
                ("junk.witness".into(), None),
                ("old.bak".into(), Some([1; 16])),
            ]
        );
        let (id, read) = read_witness_file(&dir.path().join("old.bak")).unwrap();
        assert_eq!((id, read.entries.len()), ([1; 16], 1));
        assert!(witness_files(&dir.path().join("absent"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_new_file_is_not_started_beside_another_archives_unless_shared() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SigningKey::from_bytes(&[5; 32]);
        WitnessWriter::open(dir.path(), &[1; 16], false)
            .unwrap()
            .append(&entry(1, &signer))
            .unwrap();
        // Files that are not witnesses do not count.
        std::fs::write(dir.path().join("README"), b"witness share").unwrap();
        match WitnessWriter::open(dir.path(), &[2; 16], false) {
            Err(WitnessError::Occupied {
                path,
                other,
                other_id,
            }) => {
                assert_eq!(path, witness_path(dir.path(), &[2; 16]));
                assert_eq!(other, witness_path(dir.path(), &[1; 16]));
                assert_eq!(other_id, hex_id(&[1; 16]));
            }
            other => panic!("{other:?}"),
        }
        assert!(!witness_path(dir.path(), &[2; 16]).exists());
        // The archive's own file reopens as before.
        WitnessWriter::open(dir.path(), &[1; 16], false).unwrap();
        // Told the directory is shared, the writer starts its file beside the other.
        WitnessWriter::open(dir.path(), &[2; 16], true).unwrap();
        assert!(witness_path(dir.path(), &[2; 16]).exists());
    }
}
