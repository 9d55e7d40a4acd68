//! [`TieredStorage`]: the local directory first, then the bucket. Writes go to the
//! local directory only (the uploader puts sealed files in the bucket); a read of a
//! file the local directory no longer has (or never had, on a fresh node) is served
//! from the bucket through a bounded in-memory cache of whole objects.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Remote;
use crate::storage::{
    AppendHandle, CreateError, FileStorage, ListError, OpenAppendError, PutError, ReadError,
    RemoveError, SealError, Storage, TruncateError,
};

/// How long a bucket listing is reused: readers list the segments several times a
/// second while scanning; the bucket only changes when a segment is sealed.
const LISTING_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Cache {
    objects: HashMap<String, Arc<Vec<u8>>>,
    order: VecDeque<String>,
    bytes: u64,
    listings: HashMap<String, (Instant, Arc<BTreeSet<String>>)>,
    /// The last merged listing per directory.
    merged: HashMap<String, BTreeSet<String>>,
}

/// Local files, then the bucket's copies.
pub struct TieredStorage {
    local: FileStorage,
    remote: Remote,
    cache_bytes: u64,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for TieredStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStorage")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

fn remote_error(name: &str, e: impl std::fmt::Display) -> ReadError {
    ReadError::Io {
        name: name.to_string(),
        source: std::io::Error::other(format!("object store: {e}")),
    }
}

impl TieredStorage {
    pub fn new(local: FileStorage, remote: Remote, cache_bytes: u64) -> TieredStorage {
        TieredStorage {
            local,
            remote,
            cache_bytes,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names directly in `dir` in the bucket; a listing younger than [`LISTING_TTL`]
    /// is reused unless `fresh`.
    fn remote_list(&self, dir: &str, fresh: bool) -> Result<Arc<BTreeSet<String>>, ListError> {
        if !fresh {
            if let Some((at, names)) = self.cache().listings.get(dir) {
                if at.elapsed() < LISTING_TTL {
                    return Ok(names.clone());
                }
            }
        }
        let prefix = if dir.is_empty() {
            self.remote.prefix.clone()
        } else {
            format!("{}{dir}/", self.remote.prefix)
        };
        let listed = self
            .remote
            .client
            .list(&prefix)
            .map_err(|e| ListError::Io {
                name: dir.to_string(),
                source: std::io::Error::other(format!("object store: {e}")),
            })?;
        let names: BTreeSet<String> = listed
            .into_iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix(&prefix)?;
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect();
        let names = Arc::new(names);
        self.cache()
            .listings
            .insert(dir.to_string(), (Instant::now(), names.clone()));
        Ok(names)
    }

    fn remote_has(&self, name: &str) -> Result<bool, ReadError> {
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        if self
            .remote_list(dir, false)
            .map_err(|e| remote_error(name, e))?
            .contains(file)
        {
            return Ok(true);
        }
        // Uploaded since the cached listing, perhaps.
        Ok(self
            .remote_list(dir, true)
            .map_err(|e| remote_error(name, e))?
            .contains(file))
    }

    /// Whether a file missing locally may come from the bucket. Data keys may not where
    /// the local directory is a writer's (it has `archive.meta`): there keys never leave
    /// the disk, so a missing one was shredded, and the bucket's copy (deleted by the
    /// next object sync once its lock has lapsed) must not bring its records back.
    fn may_fetch(&self, name: &str) -> bool {
        !name.starts_with("keys/")
            || matches!(
                self.local.is_sealed(crate::log::META_NAME),
                Err(ReadError::NotFound { .. })
            )
    }

    /// The bucket's newest version of `name`, through the cache.
    fn remote_read(&self, name: &str) -> Result<Arc<Vec<u8>>, ReadError> {
        if let Some(b) = self.cache().objects.get(name) {
            return Ok(b.clone());
        }
        let key = self.remote.key(name);
        let bytes = self
            .remote
            .client
            .get_object(&key, None)
            .map_err(|e| remote_error(name, e))?
            .ok_or_else(|| ReadError::NotFound {
                name: name.to_string(),
            })?;
        let bytes = Arc::new(bytes);
        let mut c = self.cache();
        let len = bytes.len() as u64;
        if len <= self.cache_bytes {
            while c.bytes + len > self.cache_bytes {
                let Some(old) = c.order.pop_front() else {
                    break;
                };
                if let Some(b) = c.objects.remove(&old) {
                    c.bytes -= b.len() as u64;
                }
            }
            c.bytes += len;
            c.order.push_back(name.to_string());
            c.objects.insert(name.to_string(), bytes.clone());
        }
        Ok(bytes)
    }
}

impl Storage for TieredStorage {
    fn list(&self, dir: &str) -> Result<Vec<String>, ListError> {
        let local: BTreeSet<String> = self.local.list(dir)?.into_iter().collect();
        let mut names = local.clone();
        names.extend(self.remote_list(dir, false)?.iter().cloned());
        // A file gone from the local directory since the last listing was uploaded (and
        // its local copy dropped) after the cached bucket listing was taken: list again.
        let vanished = self
            .cache()
            .merged
            .get(dir)
            .is_some_and(|before| !before.is_subset(&names));
        if vanished {
            names = local;
            names.extend(self.remote_list(dir, true)?.iter().cloned());
        }
        self.cache().merged.insert(dir.to_string(), names.clone());
        Ok(names.into_iter().collect())
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ReadError> {
        match self.local.read(name) {
            Err(ReadError::NotFound { .. }) if self.may_fetch(name) => {
                Ok(self.remote_read(name)?.as_ref().clone())
            }
            other => other,
        }
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        match self.local.read_at(name, offset, len) {
            Err(ReadError::NotFound { .. }) if self.may_fetch(name) => {
                let all = self.remote_read(name)?;
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
                let end = start.saturating_add(len).min(all.len());
                Ok(all[start..end].to_vec())
            }
            other => other,
        }
    }

    fn len(&self, name: &str) -> Result<u64, ReadError> {
        match self.local.len(name) {
            Err(ReadError::NotFound { .. }) if self.may_fetch(name) => {
                Ok(self.remote_read(name)?.len() as u64)
            }
            other => other,
        }
    }

    fn is_sealed(&self, name: &str) -> Result<bool, ReadError> {
        match self.local.is_sealed(name) {
            // Only sealed files are ever uploaded.
            Err(ReadError::NotFound { .. }) if self.may_fetch(name) && self.remote_has(name)? => {
                Ok(true)
            }
            other => other,
        }
    }

    fn create(&self, name: &str) -> Result<Box<dyn AppendHandle>, CreateError> {
        self.local.create(name)
    }

    fn open_append(&self, name: &str) -> Result<Box<dyn AppendHandle>, OpenAppendError> {
        match self.local.open_append(name) {
            Err(OpenAppendError::NotFound { .. }) if self.remote_has(name).unwrap_or(false) => {
                Err(OpenAppendError::Sealed {
                    name: name.to_string(),
                })
            }
            other => other,
        }
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), TruncateError> {
        self.local.truncate(name, len)
    }

    fn seal(&self, name: &str) -> Result<(), SealError> {
        self.local.seal(name)
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        self.local.put_new(name, bytes)
    }

    fn remove(&self, name: &str) -> Result<(), RemoveError> {
        self.local.remove(name)
    }
}
