//! Sealed segments in an S3 bucket under Object Lock (WORM).
//!
//! ```text
//!  writer seals seg N ─▶ object sync (serve, every upload_every; `custos object-store sync`)
//!      PUT segments/seg-N.log, keys/segment-N.key   (lock: mode, retain-until = when N is due)
//!      HEAD both: length, SHA-256 and lock as asked ─▶ chain record `object.stored`
//!      keep_local = false ─▶ local seg-N.log removed (its key stays on disk)
//!  expiry finds N due but held ─▶ legal hold ON on both versions ─▶ `object.legal-hold`
//!  expiry shreds N ─▶ local key gone ─▶ key object's versions deleted once the lock
//!      has lapsed ─▶ `object.key-deleted`
//!  readers (verify, search, export, web UI) ─▶ TieredStorage: local file, else bucket
//!  verify ─▶ every recorded version still there, same SHA-256, lock not shortened,
//!      no version Custos did not write; every version of every witness entry read,
//!      all the same entry, each reached by the log
//! ```
//!
//! Object names are the archive's own file names under a configured prefix
//! (`custos/segments/seg-0000000001.log`). The lock is per object version, set at
//! upload; the bucket's default retention is not relied on (docs/object-storage.md).

mod index;
mod nodes;
pub mod s3;
pub mod sigv4;
mod sync;
mod tiered;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) use index::fetch_index;
#[cfg(test)]
pub(crate) use index::read_words;
pub use index::{upload_index, IndexFetch, IndexUpload, INDEX_FOLDER};
pub use nodes::{
    other_chains, peer_archive_ids, peer_dir, peer_holds, PeerArchive, PEERS_DIR, UNNAMED,
};
pub use s3::{Endpoint, LockMode, S3Client, S3Error};
pub use sigv4::Credentials;
pub use sync::{
    bucket_witness, object_records, verify_bucket, witness_object_name, BucketCheck, ObjectRecords,
    StoredObject, StoredObjects, SyncError, SyncReport, OBJECT_KEY_DELETED, OBJECT_LEGAL_HOLD,
    OBJECT_STORED, WITNESS_FOLDER,
};
pub use tiered::TieredStorage;

use crate::storage::{FileStorage, Storage};

/// `[archive.object_store]`, resolved (credentials read).
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    /// Prepended to every object name; ends with `/` unless empty.
    pub prefix: String,
    /// This node's name when several nodes share the bucket: its chain is then kept
    /// under `<prefix>nodes/<node>/` ([`node_prefix`]).
    pub node: Option<String>,
    pub lock_mode: LockMode,
    /// Keep sealed segments on the local disk after they are in the bucket.
    pub keep_local: bool,
    /// Most bytes of bucket objects kept in memory by a reader.
    pub cache_bytes: u64,
}

/// The folder of node `node`'s chain under the configured prefix `root`.
pub fn node_prefix(root: &str, node: Option<&str>) -> String {
    match node {
        None => root.to_string(),
        Some(n) => format!("{root}{NODES_FOLDER}{n}/"),
    }
}

/// Where the nodes of a multi-node deployment keep their chains, under the prefix.
pub const NODES_FOLDER: &str = "nodes/";

/// Whether `name` can name a node: 1 to 32 of `a-z`, `0-9`, `-`, not starting with `-`.
pub fn valid_node_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A connected bucket, seen from one chain (one node's segment stream).
#[derive(Debug, Clone)]
pub struct Remote {
    pub client: S3Client,
    /// The configured prefix: every node's chain is somewhere under it.
    pub root: String,
    /// The chain this handle reads and writes (`None`: the only one, at `root`).
    pub node: Option<String>,
    /// Where this chain's objects are: `root`, or `root` + `nodes/<node>/`.
    pub prefix: String,
    pub lock_mode: LockMode,
    pub keep_local: bool,
    pub cache_bytes: u64,
}

impl Remote {
    pub fn connect(cfg: &ObjectStoreConfig) -> Result<Remote, String> {
        let client = S3Client::new(cfg.endpoint.clone(), cfg.credentials.clone())?;
        let mut root = cfg.prefix.trim_start_matches('/').to_string();
        if !root.is_empty() && !root.ends_with('/') {
            root.push('/');
        }
        if let Some(n) = &cfg.node {
            if !valid_node_name(n) {
                return Err(format!(
                    "node name {n:?}: expected 1 to 32 of a-z, 0-9 and '-', not starting with '-'"
                ));
            }
        }
        Ok(Remote {
            client,
            prefix: node_prefix(&root, cfg.node.as_deref()),
            node: cfg.node.clone(),
            root,
            lock_mode: cfg.lock_mode,
            keep_local: cfg.keep_local,
            cache_bytes: cfg.cache_bytes,
        })
    }

    /// The same bucket seen from another node's chain.
    pub fn for_node(&self, node: Option<&str>) -> Remote {
        Remote {
            prefix: node_prefix(&self.root, node),
            node: node.map(str::to_string),
            ..self.clone()
        }
    }

    /// The names of the nodes whose chains are in the bucket (`<root>nodes/<name>/`),
    /// sorted. A folder there whose name cannot be a node's is reported, not skipped:
    /// nothing else writes under the prefix.
    pub fn nodes(&self) -> Result<Vec<String>, String> {
        let base = format!("{}{NODES_FOLDER}", self.root);
        let folders = self
            .client
            .list_folders(&base)
            .map_err(|e| format!("listing the nodes under {base}: {e}"))?;
        let mut out = Vec::new();
        for f in folders {
            let name = f
                .strip_prefix(&base)
                .and_then(|n| n.strip_suffix('/'))
                .unwrap_or(&f);
            if !valid_node_name(name) {
                return Err(format!(
                    "{f}: a folder under {base} that is not a node's (expected 1 to 32 of a-z, 0-9 and '-')"
                ));
            }
            out.push(name.to_string());
        }
        out.sort();
        Ok(out)
    }

    /// Whether this chain has been started in the bucket (its `archive.meta` is there).
    pub fn has_chain(&self) -> Result<bool, String> {
        let key = self.key(crate::log::META_NAME);
        self.client
            .head_object(&key, None)
            .map(|h| h.is_some())
            .map_err(|e| format!("{key}: {e}"))
    }

    /// The object name of archive file `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Checks that the bucket can hold a WORM archive: versioning on, Object Lock
    /// enabled. Returns the bucket's default retention, if any, for the operator.
    pub fn check_bucket(&self) -> Result<Option<(LockMode, u64)>, String> {
        let name = &self.client.endpoint().bucket;
        let lock = self
            .client
            .lock_configuration()
            .map_err(|e| format!("bucket {name}: {e}"))?;
        if !lock.enabled {
            return Err(format!(
                "bucket {name} does not have Object Lock enabled (it can only be enabled when the bucket is created; see docs/object-storage.md)"
            ));
        }
        let versioning = self
            .client
            .versioning_enabled()
            .map_err(|e| format!("bucket {name}: {e}"))?;
        if !versioning {
            return Err(format!("bucket {name} does not have versioning enabled"));
        }
        Ok(lock.default_retention)
    }
}

/// Buckets registered for archive directories in this process.
static REGISTERED: OnceLock<Mutex<Vec<(PathBuf, Remote)>>> = OnceLock::new();

fn normal(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Declares that the archive in `dir` keeps its sealed segments in `remote`: every
/// reader, verifier, exporter and writer this process opens on `dir` afterwards reads
/// through the bucket ([`storage_for_dir`]). The binary calls this once, right after
/// reading its configuration, so that the many ways into an archive (search, export,
/// the web UI, retention) need no bucket parameter of their own.
pub fn register(dir: &Path, remote: Remote) {
    let dir = normal(dir);
    let mut all = REGISTERED
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.retain(|(d, _)| *d != dir);
    all.push((dir, remote));
}

/// The bucket registered for `dir`, if any.
pub fn registered(dir: &Path) -> Option<Remote> {
    let dir = normal(dir);
    REGISTERED
        .get()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(d, _)| *d == dir)
        .map(|(_, r)| r.clone())
}

/// The storage of the archive in `dir`, with the bucket registered for it if any.
pub fn storage_for_dir(dir: &Path) -> Arc<dyn Storage> {
    storage_for(dir, registered(dir).as_ref())
}

/// The storage of the archive in `dir`: the directory alone, or the directory in front
/// of the bucket.
pub fn storage_for(dir: &Path, remote: Option<&Remote>) -> Arc<dyn Storage> {
    match remote {
        None => Arc::new(FileStorage::new(dir)),
        Some(r) => Arc::new(TieredStorage::new(
            FileStorage::new(dir),
            r.clone(),
            r.cache_bytes,
        )),
    }
}
