//! Where archive bytes live, behind a small trait with a durability contract.
//!
//! Names are relative paths with at most one directory level
//! (`segments/seg-00000001.log`, `keys/segment-00000001.key`, `archive.meta`).
//! The contract, per method, is what recovery relies on; `tests::contract`
//! runs the same suite against [`FileStorage`] and [`MemStorage`].

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

// One error type per operation, as the durability contract differs per operation.
/// Listing a directory failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Reading a file failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{name}: not found")]
    NotFound { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Creating an append-only file failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{name}: already exists")]
    AlreadyExists { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Reopening a file for append failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenAppendError {
    #[error("{name}: not found")]
    NotFound { name: String },
    #[error("{name}: sealed (read-only)")]
    Sealed { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Appending bytes failed; the file may hold a torn tail.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("{name}: sealed (read-only)")]
    Sealed { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Making appended bytes durable failed; treat the file as unknown.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Cutting a file failed.
#[derive(Debug, thiserror::Error)]
pub enum TruncateError {
    #[error("{name}: not found")]
    NotFound { name: String },
    #[error("{name}: sealed (read-only)")]
    Sealed { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Making a file read-only failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{name}: not found")]
    NotFound { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Writing a small whole file failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{name}: already exists")]
    AlreadyExists { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Removing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{name}: not found")]
    NotFound { name: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// An open append-only file.
pub trait AppendHandle: Send {
    /// Appends `bytes` at the end. Not durable until [`AppendHandle::sync`]
    /// returns; a crash before then may keep any prefix of them (a torn tail).
    fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError>;
    /// When this returns `Ok`, every byte appended so far survives a crash.
    fn sync(&mut self) -> Result<(), SyncError>;
}

/// The archive's byte store.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Names in directory `dir` (`""` is the root), sorted; missing dir = empty.
    fn list(&self, dir: &str) -> Result<Vec<String>, ListError>;
    /// The current contents, including appends of this process not yet synced.
    fn read(&self, name: &str) -> Result<Vec<u8>, ReadError>;
    /// Up to `len` bytes at `offset` (fewer at end of file).
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ReadError>;
    /// The current length in bytes.
    fn len(&self, name: &str) -> Result<u64, ReadError> {
        self.read(name).map(|b| b.len() as u64)
    }
    /// Whether the file is sealed (read-only).
    fn is_sealed(&self, name: &str) -> Result<bool, ReadError>;
    /// Creates an empty file for appending; fails if it exists. The name is
    /// durable when this returns (directory entry synced).
    fn create(&self, name: &str) -> Result<Box<dyn AppendHandle>, CreateError>;
    /// Opens an existing unsealed file for appending at its end.
    fn open_append(&self, name: &str) -> Result<Box<dyn AppendHandle>, OpenAppendError>;
    /// Cuts an unsealed file to `len` bytes; durable when this returns.
    fn truncate(&self, name: &str, len: u64) -> Result<(), TruncateError>;
    /// Makes a file read-only; later appends and truncates fail. Durable on return.
    fn seal(&self, name: &str) -> Result<(), SealError>;
    /// Writes a whole small file atomically (all or nothing) and fails if it
    /// exists; durable when this returns.
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), PutError>;
    /// Removes a file (used to destroy wrapped keys); durable on return.
    fn remove(&self, name: &str) -> Result<(), RemoveError>;
}

/// Files under a directory on a local filesystem.
#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    pub fn new(root: &Path) -> FileStorage {
        FileStorage {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn sync_parent(&self, name: &str) -> std::io::Result<()> {
        let p = self.path(name);
        let dir = p.parent().unwrap_or(&self.root);
        File::open(dir)?.sync_all()
    }

    fn ensure_parent(&self, name: &str) -> std::io::Result<()> {
        let p = self.path(name);
        if let Some(dir) = p.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
                File::open(&self.root)?.sync_all()?;
            }
        }
        Ok(())
    }
}

fn is_readonly(meta: &std::fs::Metadata) -> bool {
    meta.permissions().readonly()
}

struct FileAppend {
    name: String,
    file: File,
}

impl AppendHandle for FileAppend {
    fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        self.file
            .write_all(bytes)
            .map_err(|source| AppendError::Io {
                name: self.name.clone(),
                source,
            })
    }
    fn sync(&mut self) -> Result<(), SyncError> {
        // fdatasync: the size change is data for this purpose, so appends are covered.
        self.file.sync_data().map_err(|source| SyncError::Io {
            name: self.name.clone(),
            source,
        })
    }
}

impl Storage for FileStorage {
    fn list(&self, dir: &str) -> Result<Vec<String>, ListError> {
        let p = self.path(dir);
        let rd = match std::fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ListError::Io {
                    name: dir.to_string(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|source| ListError::Io {
                name: dir.to_string(),
                source,
            })?;
            if let Some(n) = e.file_name().to_str() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    out.push(n.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ReadError> {
        std::fs::read(self.path(name)).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound {
                name: name.to_string(),
            },
            _ => ReadError::Io {
                name: name.to_string(),
                source,
            },
        })
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound {
                name: name.to_string(),
            },
            _ => ReadError::Io {
                name: name.to_string(),
                source,
            },
        };
        let mut f = File::open(self.path(name)).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut buf).map_err(io)?;
        Ok(buf)
    }

    fn len(&self, name: &str) -> Result<u64, ReadError> {
        match std::fs::metadata(self.path(name)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ReadError::NotFound {
                name: name.to_string(),
            }),
            Err(source) => Err(ReadError::Io {
                name: name.to_string(),
                source,
            }),
        }
    }

    fn is_sealed(&self, name: &str) -> Result<bool, ReadError> {
        match std::fs::metadata(self.path(name)) {
            Ok(m) => Ok(is_readonly(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ReadError::NotFound {
                name: name.to_string(),
            }),
            Err(source) => Err(ReadError::Io {
                name: name.to_string(),
                source,
            }),
        }
    }

    fn create(&self, name: &str) -> Result<Box<dyn AppendHandle>, CreateError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CreateError::AlreadyExists {
                name: name.to_string(),
            },
            _ => CreateError::Io {
                name: name.to_string(),
                source,
            },
        };
        self.ensure_parent(name).map_err(io)?;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(self.path(name))
            .map_err(io)?;
        self.sync_parent(name).map_err(io)?;
        Ok(Box::new(FileAppend {
            name: name.to_string(),
            file,
        }))
    }

    fn open_append(&self, name: &str) -> Result<Box<dyn AppendHandle>, OpenAppendError> {
        let p = self.path(name);
        let meta = std::fs::metadata(&p).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => OpenAppendError::NotFound {
                name: name.to_string(),
            },
            _ => OpenAppendError::Io {
                name: name.to_string(),
                source,
            },
        })?;
        if is_readonly(&meta) {
            return Err(OpenAppendError::Sealed {
                name: name.to_string(),
            });
        }
        let file =
            OpenOptions::new()
                .append(true)
                .open(&p)
                .map_err(|source| OpenAppendError::Io {
                    name: name.to_string(),
                    source,
                })?;
        Ok(Box::new(FileAppend {
            name: name.to_string(),
            file,
        }))
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), TruncateError> {
        let p = self.path(name);
        let meta = std::fs::metadata(&p).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TruncateError::NotFound {
                name: name.to_string(),
            },
            _ => TruncateError::Io {
                name: name.to_string(),
                source,
            },
        })?;
        if is_readonly(&meta) {
            return Err(TruncateError::Sealed {
                name: name.to_string(),
            });
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|source| TruncateError::Io {
                name: name.to_string(),
                source,
            })?;
        f.set_len(len)
            .and_then(|()| f.sync_all())
            .map_err(|source| TruncateError::Io {
                name: name.to_string(),
                source,
            })
    }

    fn seal(&self, name: &str) -> Result<(), SealError> {
        let p = self.path(name);
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => SealError::NotFound {
                name: name.to_string(),
            },
            _ => SealError::Io {
                name: name.to_string(),
                source,
            },
        };
        let mut perms = std::fs::metadata(&p).map_err(io)?.permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&p, perms).map_err(io)?;
        File::open(&p).and_then(|f| f.sync_all()).map_err(io)
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::AlreadyExists => PutError::AlreadyExists {
                name: name.to_string(),
            },
            _ => PutError::Io {
                name: name.to_string(),
                source,
            },
        };
        self.ensure_parent(name).map_err(io)?;
        let target = self.path(name);
        let tmp = self.path(&format!("{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            // hard_link fails if the target exists: an atomic create-new publish.
            std::fs::hard_link(&tmp, &target)
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map_err(io)?;
        self.sync_parent(name).map_err(io)
    }

    fn remove(&self, name: &str) -> Result<(), RemoveError> {
        std::fs::remove_file(self.path(name)).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RemoveError::NotFound {
                name: name.to_string(),
            },
            _ => RemoveError::Io {
                name: name.to_string(),
                source,
            },
        })?;
        self.sync_parent(name).map_err(|source| RemoveError::Io {
            name: name.to_string(),
            source,
        })
    }
}

#[derive(Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    /// Bytes that survive [`MemStorage::crash`].
    durable: usize,
    sealed: bool,
}

/// In-memory storage that models the durability contract: [`MemStorage::crash`]
/// drops every byte not yet synced.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    files: Arc<Mutex<BTreeMap<String, MemFile>>>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, MemFile>> {
        // A panic while holding the lock leaves plain bytes behind, still usable.
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates power loss: unsynced appends are lost.
    pub fn crash(&self) {
        for f in self.lock().values_mut() {
            f.data.truncate(f.durable);
        }
    }

    /// Direct access to a file's bytes, for fault-injection tests. Returns
    /// `false` if the file does not exist.
    pub fn tamper(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        match self.lock().get_mut(name) {
            Some(file) => {
                f(&mut file.data);
                file.durable = file.data.len();
                true
            }
            None => false,
        }
    }
}

struct MemAppend {
    name: String,
    files: Arc<Mutex<BTreeMap<String, MemFile>>>,
}

impl AppendHandle for MemAppend {
    fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        match files.get_mut(&self.name) {
            Some(f) if f.sealed => Err(AppendError::Sealed {
                name: self.name.clone(),
            }),
            Some(f) => {
                f.data.extend_from_slice(bytes);
                Ok(())
            }
            None => Err(AppendError::Io {
                name: self.name.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }
    fn sync(&mut self) -> Result<(), SyncError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        match files.get_mut(&self.name) {
            Some(f) => {
                f.durable = f.data.len();
                Ok(())
            }
            None => Err(SyncError::Io {
                name: self.name.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }
}

impl Storage for MemStorage {
    fn list(&self, dir: &str) -> Result<Vec<String>, ListError> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        Ok(self
            .lock()
            .keys()
            .filter_map(|k| {
                k.strip_prefix(&prefix)
                    .filter(|rest| !rest.contains('/'))
                    .map(str::to_string)
            })
            .collect())
    }
    fn read(&self, name: &str) -> Result<Vec<u8>, ReadError> {
        self.lock()
            .get(name)
            .map(|f| f.data.clone())
            .ok_or_else(|| ReadError::NotFound {
                name: name.to_string(),
            })
    }
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let files = self.lock();
        let f = files.get(name).ok_or_else(|| ReadError::NotFound {
            name: name.to_string(),
        })?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.data.len());
        let end = start.saturating_add(len).min(f.data.len());
        Ok(f.data.get(start..end).unwrap_or_default().to_vec())
    }
    fn is_sealed(&self, name: &str) -> Result<bool, ReadError> {
        self.lock()
            .get(name)
            .map(|f| f.sealed)
            .ok_or_else(|| ReadError::NotFound {
                name: name.to_string(),
            })
    }
    fn create(&self, name: &str) -> Result<Box<dyn AppendHandle>, CreateError> {
        let mut files = self.lock();
        if files.contains_key(name) {
            return Err(CreateError::AlreadyExists {
                name: name.to_string(),
            });
        }
        files.insert(name.to_string(), MemFile::default());
        Ok(Box::new(MemAppend {
            name: name.to_string(),
            files: self.files.clone(),
        }))
    }
    fn open_append(&self, name: &str) -> Result<Box<dyn AppendHandle>, OpenAppendError> {
        match self.lock().get(name) {
            None => Err(OpenAppendError::NotFound {
                name: name.to_string(),
            }),
            Some(f) if f.sealed => Err(OpenAppendError::Sealed {
                name: name.to_string(),
            }),
            Some(_) => Ok(Box::new(MemAppend {
                name: name.to_string(),
                files: self.files.clone(),
            })),
        }
    }
    fn truncate(&self, name: &str, len: u64) -> Result<(), TruncateError> {
        match self.lock().get_mut(name) {
            None => Err(TruncateError::NotFound {
                name: name.to_string(),
            }),
            Some(f) if f.sealed => Err(TruncateError::Sealed {
                name: name.to_string(),
            }),
            Some(f) => {
                f.data.truncate(usize::try_from(len).unwrap_or(usize::MAX));
                f.durable = f.data.len();
                Ok(())
            }
        }
    }
    fn seal(&self, name: &str) -> Result<(), SealError> {
        match self.lock().get_mut(name) {
            None => Err(SealError::NotFound {
                name: name.to_string(),
            }),
            Some(f) => {
                f.sealed = true;
                f.durable = f.data.len();
                Ok(())
            }
        }
    }
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        let mut files = self.lock();
        if files.contains_key(name) {
            return Err(PutError::AlreadyExists {
                name: name.to_string(),
            });
        }
        files.insert(
            name.to_string(),
            MemFile {
                data: bytes.to_vec(),
                durable: bytes.len(),
                sealed: false,
            },
        );
        Ok(())
    }
    fn remove(&self, name: &str) -> Result<(), RemoveError> {
        self.lock()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RemoveError::NotFound {
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one contract suite, run against every implementation.
    fn contract(s: &dyn Storage) {
        assert!(s.list("segments").unwrap().is_empty());
        let mut h = s.create("segments/a.log").unwrap();
        assert!(matches!(
            s.create("segments/a.log"),
            Err(CreateError::AlreadyExists { .. })
        ));
        h.append(b"hello ").unwrap();
        h.append(b"world").unwrap();
        h.sync().unwrap();
        assert_eq!(s.read("segments/a.log").unwrap(), b"hello world");
        assert_eq!(s.read_at("segments/a.log", 6, 100).unwrap(), b"world");
        assert_eq!(s.read_at("segments/a.log", 100, 5).unwrap(), b"");
        assert_eq!(s.list("segments").unwrap(), vec!["a.log".to_string()]);
        assert!(matches!(
            s.read("segments/none"),
            Err(ReadError::NotFound { .. })
        ));

        s.truncate("segments/a.log", 5).unwrap();
        assert_eq!(s.read("segments/a.log").unwrap(), b"hello");
        let mut h2 = s.open_append("segments/a.log").unwrap();
        h2.append(b"!").unwrap();
        h2.sync().unwrap();
        assert_eq!(s.read("segments/a.log").unwrap(), b"hello!");

        assert!(!s.is_sealed("segments/a.log").unwrap());
        s.seal("segments/a.log").unwrap();
        assert!(s.is_sealed("segments/a.log").unwrap());
        assert!(matches!(
            s.open_append("segments/a.log"),
            Err(OpenAppendError::Sealed { .. })
        ));
        assert!(matches!(
            s.truncate("segments/a.log", 0),
            Err(TruncateError::Sealed { .. })
        ));
        assert_eq!(s.read("segments/a.log").unwrap(), b"hello!");

        s.put_new("keys/k1", b"key").unwrap();
        assert!(matches!(
            s.put_new("keys/k1", b"other"),
            Err(PutError::AlreadyExists { .. })
        ));
        assert_eq!(s.read("keys/k1").unwrap(), b"key");
        assert_eq!(s.list("keys").unwrap(), vec!["k1".to_string()]);
        s.remove("keys/k1").unwrap();
        assert!(matches!(
            s.remove("keys/k1"),
            Err(RemoveError::NotFound { .. })
        ));
        assert!(s.list("keys").unwrap().is_empty());
    }

    #[test]
    fn file_storage_meets_contract() {
        let d = tempfile::tempdir().unwrap();
        contract(&FileStorage::new(d.path()));
    }

    #[test]
    fn mem_storage_meets_contract() {
        contract(&MemStorage::new());
    }

    #[test]
    fn mem_crash_keeps_exactly_the_synced_prefix() {
        let s = MemStorage::new();
        let mut h = s.create("f").unwrap();
        h.append(b"durable").unwrap();
        h.sync().unwrap();
        h.append(b" lost").unwrap();
        assert_eq!(s.read("f").unwrap(), b"durable lost");
        s.crash();
        assert_eq!(s.read("f").unwrap(), b"durable");
    }
}
