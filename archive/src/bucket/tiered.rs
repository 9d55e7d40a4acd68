//! [`TieredStorage`]: the local directory first, then the bucket. Writes go to the
//! local directory only (the uploader puts sealed files in the bucket); a read of a
//! file the local directory no longer has (or never had, on a fresh node) is served
//! from the bucket through a bounded in-memory cache of whole objects (and the last
//! object too large for it, so a segment read a window at a time is fetched once).

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
    /// The last object read that is larger than the whole cache: a segment read a
    /// window at a time (`walk::walk_stored`) is downloaded once, not once per window.
    last: Option<(String, Arc<Vec<u8>>)>,
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
        {
            let c = self.cache();
            if let Some(b) = c.objects.get(name) {
                return Ok(b.clone());
            }
            if let Some((_, b)) = c.last.as_ref().filter(|(n, _)| n == name) {
                return Ok(b.clone());
            }
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
        } else {
            c.last = Some((name.to_string(), bytes.clone()));
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
                {
                    let c = self.cache();
                    let held = c.objects.get(name).or(c
                        .last
                        .as_ref()
                        .filter(|(n, _)| n == name)
                        .map(|(_, b)| b));
                    if let Some(b) = held {
                        return Ok(b.len() as u64);
                    }
                }
                // Its length only: `verify` asks every segment's before it reads one.
                self.remote
                    .client
                    .head_object(&self.remote.key(name), None)
                    .map_err(|e| remote_error(name, e))?
                    .map(|h| h.len)
                    .ok_or_else(|| ReadError::NotFound {
                        name: name.to_string(),
                    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::s3::LockMode;
    use crate::segment::SegmentHeader;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A bucket that answers every GET with `body` and every HEAD with its length,
    /// counting both.
    fn bucket(body: Vec<u8>) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (gets, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (g, h) = (gets.clone(), heads.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut out) = conn else { return };
                let (body, g, h) = (body.clone(), g.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(out.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut header = String::new();
                            if r.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                        }
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let mut answer = head.into_bytes();
                        if line.starts_with("HEAD ") {
                            h.fetch_add(1, Ordering::SeqCst);
                        } else {
                            g.fetch_add(1, Ordering::SeqCst);
                            answer.extend_from_slice(&body);
                        }
                        if out.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, gets, heads)
    }

    /// A segment of 100 record frames of about 1 KB (the walk checks structure and
    /// chain only).
    fn segment() -> (SegmentHeader, Vec<u8>) {
        let header = SegmentHeader {
            archive_id: [1; 16],
            segment: 3,
            first_seq: 1,
            prev_head: [0; 32],
            created_ms: 0,
        };
        let mut bytes = header.encode().to_vec();
        for seq in 1..=100u64 {
            let mut body = vec![1u8];
            body.extend_from_slice(&seq.to_be_bytes());
            body.extend_from_slice(&[2; 32]);
            body.extend_from_slice(&[3; 12]);
            body.extend_from_slice(&[4; 1000]);
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&body);
        }
        (header, bytes)
    }

    /// `verify`, scans and export read a segment a window at a time. A segment only in
    /// the bucket and larger than the cache was downloaded whole for every window (and
    /// once more for its length): 64 MiB segments read in 4 MiB windows cost 17
    /// downloads each where reading the file whole cost one.
    #[test]
    fn a_segment_read_a_window_at_a_time_is_downloaded_once() {
        let (header, bytes) = segment();
        let (url, gets, heads) = bucket(bytes.clone());
        let client = crate::bucket::s3::tests::client(url);
        let remote = Remote {
            client,
            root: String::new(),
            node: None,
            prefix: String::new(),
            lock_mode: LockMode::Compliance,
            keep_local: false,
            cache_bytes: 1024,
        };
        let tmp = tempfile::tempdir().unwrap();
        let storage = TieredStorage::new(FileStorage::new(tmp.path()), remote, 1024);
        let name = crate::segment::segment_name(3);
        assert_eq!(storage.len(&name).unwrap(), bytes.len() as u64);
        let mut records = 0;
        let walked = crate::walk::walk_stored_by(&storage, &name, &header, 8192, |_, step| {
            if let Ok(crate::walk::Step::Record(_)) = step {
                records += 1;
            }
            Ok::<bool, std::convert::Infallible>(true)
        })
        .unwrap();
        assert_eq!((records, walked.len), (100, bytes.len() as u64));
        let (gets, heads) = (gets.load(Ordering::SeqCst), heads.load(Ordering::SeqCst));
        assert!(gets + heads <= 2, "{gets} GETs and {heads} HEADs");
    }
}
