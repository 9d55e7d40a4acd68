//! A copy of each chain's search index in the bucket, so a node reading another node's
//! chain (or a fresh node) starts from it instead of indexing every stored segment.
//!
//! ```text
//!  <chain prefix>index/<file>                     tantivy's segment files, immutable:
//!                                                  put once each
//!  <chain prefix>index/snap-<through 20 digits>.json  {format, meta (meta.json's text),
//!                                                  files: name, bytes, sha256}
//! ```
//!
//! A snapshot covers the chain through the seq in its name, which is usually past what
//! is stored (the index follows the active segment). A reader can only check an index
//! against records it can read, so it takes the newest snapshot within the stored chain;
//! the uploader keeps that one and every newer one, and deletes older snapshots and the
//! files only they name.
//!
//! The index is derived data: it is rebuilt from the locked segments at will, so its
//! objects are put without a lock of their own (a bucket default retention still applies
//! to them). It is blind like the local one (docs/archive-format.md): what a copy of it
//! reveals is what the local index reveals. A reader takes the bucket's copy only when
//! its coverage mark authenticates under the archive's key and covers more of the chain
//! than the local index; every file is checked against the snapshot's SHA-256, and the
//! index's position on the chain is checked against the log as for a local index.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::s3::PutOptions;
use super::sync::SyncError;
use super::Remote;
use crate::export::hex;
use crate::keys::MasterKey;

/// Where the copy is, under a chain's prefix.
pub const INDEX_FOLDER: &str = "index/";
const SNAPSHOT_PREFIX: &str = "index/snap-";
const FORMAT: &str = "custos-index-snapshot-v1";
/// tantivy's files of one segment, besides its deletes (`<id>.<opstamp>.del`).
const COMPONENTS: &[&str] = &["idx", "pos", "term", "store", "fast", "fieldnorm"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    format: String,
    /// The text of tantivy's `meta.json` for this commit.
    meta: String,
    files: Vec<IndexFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    name: String,
    bytes: u64,
    /// Lowercase hex SHA-256.
    sha256: String,
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexUpload {
    /// Files put now (the others were in the bucket already).
    pub files: usize,
    pub bytes: u64,
    /// Objects of older snapshots deleted.
    pub deleted: usize,
}

/// The files a `meta.json` names: each segment's components and its deletes.
fn files_of(meta: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(meta).map_err(|e| format!("meta.json: {e}"))?;
    let segments = v
        .get("segments")
        .and_then(|s| s.as_array())
        .ok_or("meta.json: no segment list")?;
    let mut out = Vec::new();
    for s in segments {
        let id: String = s
            .get("segment_id")
            .and_then(|i| i.as_str())
            .ok_or("meta.json: a segment without an id")?
            .chars()
            .filter(|c| *c != '-')
            .collect();
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("meta.json: segment id {id:?} is not a uuid"));
        }
        let id = id.to_ascii_lowercase();
        out.extend(COMPONENTS.iter().map(|c| format!("{id}.{c}")));
        if let Some(stamp) = s
            .get("deletes")
            .and_then(|d| d.get("opstamp"))
            .and_then(|o| o.as_u64())
        {
            out.push(format!("{id}.{stamp}.del"));
        }
    }
    Ok(out)
}

/// A file name a snapshot may carry: no path, nothing but what tantivy names.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b.is_ascii_lowercase())
        && !name.starts_with('.')
}

fn snapshot_name(through: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{through:020}.json")
}

/// The snapshots in the bucket: (through, object key), oldest first.
fn snapshots(remote: &Remote) -> Result<Vec<(u64, String)>, SyncError> {
    let base = remote.key(SNAPSHOT_PREFIX);
    let mut out: Vec<(u64, String)> = remote
        .client
        .list(&base)?
        .into_iter()
        .filter_map(|(key, _)| {
            let through = key
                .strip_prefix(&base)?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((through, key))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn get_snapshot(remote: &Remote, key: &str) -> Result<Option<Snapshot>, SyncError> {
    let Some(bytes) = remote.client.get_object(key, None)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SyncError::Check(format!("{key}: {e}")))
}

/// The seq an index's `meta.json` says it covers through (read, not authenticated:
/// the uploader's own index; readers check the mark before use).
fn through_of(meta: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(meta).ok()?;
    v.get("payload")?.as_str()?.split(' ').nth(2)?.parse().ok()
}

/// Deletes every version of `key` (derived data: no lock of ours protects it).
fn delete_all(remote: &Remote, key: &str) -> bool {
    let Ok(versions) = remote.client.list_versions(key) else {
        return false;
    };
    versions.iter().filter(|v| v.key == key).all(|v| {
        remote
            .client
            .delete_object(key, Some(&v.version_id), false)
            .is_ok()
    })
}

fn put_plain(remote: &Remote, name: &str, body: &[u8]) -> Result<(), SyncError> {
    let key = remote.key(name);
    let version = remote.client.put_object(
        &key,
        body,
        &PutOptions {
            lock: None,
            legal_hold: false,
        },
    )?;
    let head = remote
        .client
        .head_object(&key, version.as_deref())?
        .ok_or_else(|| SyncError::Check(format!("{key}: not found right after upload")))?;
    if head.len != body.len() as u64 {
        return Err(SyncError::Check(format!(
            "{key}: the bucket holds {} bytes, {} were sent",
            head.len,
            body.len()
        )));
    }
    Ok(())
}

/// Puts the index of the archive in `archive_dir` (its last commit) in the bucket as a
/// snapshot, the files not there yet first, unless a snapshot of that position is there
/// already; then deletes the snapshots older than the newest one within `stored_end`
/// (the last seq of the stored segments) and the files no remaining snapshot names.
/// Files that go while they are read (a merge in between) leave the bucket as it was;
/// the next run takes the newer commit.
pub fn upload_index(
    archive_dir: &Path,
    remote: &Remote,
    stored_end: u64,
) -> Result<IndexUpload, SyncError> {
    let dir = archive_dir.join("index");
    let mut done = IndexUpload::default();
    let meta = match std::fs::read_to_string(dir.join("meta.json")) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(SyncError::Check(format!("{}: {e}", dir.display()))),
    };
    let Some(through) = through_of(&meta) else {
        return Ok(done);
    };
    let mut there = snapshots(remote)?;
    if through > 0 && !there.iter().any(|(t, _)| *t == through) {
        // Files already put for an earlier snapshot are not put again.
        let newest = match there.last() {
            Some((_, key)) => get_snapshot(remote, key)?,
            None => None,
        };
        let mut files = Vec::new();
        for name in files_of(&meta).map_err(SyncError::Check)? {
            let path = dir.join(&name);
            let body = match std::fs::read(&path) {
                Ok(b) => b,
                // Merged away since meta.json was read: a newer commit; next time.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
                Err(e) => return Err(SyncError::Check(format!("{}: {e}", path.display()))),
            };
            let file = IndexFile {
                name: name.clone(),
                bytes: body.len() as u64,
                sha256: hex::encode(&Sha256::digest(&body)),
            };
            if !newest.as_ref().is_some_and(|s| s.files.contains(&file)) {
                put_plain(remote, &format!("{INDEX_FOLDER}{name}"), &body)?;
                done.files += 1;
                done.bytes += file.bytes;
            }
            files.push(file);
        }
        let snap = Snapshot {
            format: FORMAT.into(),
            meta,
            files,
        };
        let body = serde_json::to_vec(&snap).map_err(|e| SyncError::Check(e.to_string()))?;
        put_plain(remote, &snapshot_name(through), &body)?;
        there.push((through, remote.key(&snapshot_name(through))));
        there.sort();
    }
    // Older than the newest usable snapshot: no reader takes them any more.
    let Some(anchor) = there
        .iter()
        .rfind(|(t, _)| *t <= stored_end)
        .map(|(t, _)| *t)
    else {
        return Ok(done);
    };
    let (old, kept): (Vec<_>, Vec<_>) = there.into_iter().partition(|(t, _)| *t < anchor);
    if old.is_empty() {
        return Ok(done);
    }
    let mut named = std::collections::BTreeSet::new();
    for (_, key) in &kept {
        // A snapshot that cannot be read keeps every file: nothing is deleted blind.
        let Some(s) = get_snapshot(remote, key)? else {
            return Ok(done);
        };
        named.extend(s.files.into_iter().map(|f| f.name));
    }
    let mut unnamed = std::collections::BTreeSet::new();
    for (_, key) in &old {
        if let Some(s) = get_snapshot(remote, key)? {
            unnamed.extend(s.files.into_iter().map(|f| f.name));
        }
    }
    // A bucket default retention may refuse the deletions; the objects then stay.
    for name in unnamed.difference(&named) {
        let key = remote.key(&format!("{INDEX_FOLDER}{name}"));
        if delete_all(remote, &key) {
            done.deleted += 1;
        }
    }
    for (_, key) in &old {
        if delete_all(remote, key) {
            done.deleted += 1;
        }
    }
    Ok(done)
}

/// What [`fetch_index`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexFetch {
    /// The bucket has no copy, or none covering more than the local index.
    Kept,
    /// The bucket's copy, covering the chain through `through`, replaced the local index.
    Fetched { through: u64, files: usize },
}

/// Replaces the local index in `dir` with the bucket's newest snapshot within
/// `readable_end` (the chain's last readable seq) when that covers more of the chain.
/// The caller holds the archive's writer lock (no writer is open on the index). A copy
/// whose mark does not authenticate is refused.
pub(crate) fn fetch_index(
    dir: &Path,
    remote: &Remote,
    master: &MasterKey,
    archive_id: &[u8; 16],
    readable_end: u64,
) -> Result<IndexFetch, SyncError> {
    let index_dir = dir.join("index");
    let ours = crate::index::read_mark(&index_dir, master, archive_id)
        .map(|m| m.through)
        .unwrap_or(0);
    // The newest snapshot within what can be read, if it covers more than ours.
    let Some((_, key)) = snapshots(remote)?
        .into_iter()
        .rfind(|(t, _)| *t <= readable_end)
        .filter(|(t, _)| *t > ours)
    else {
        return Ok(IndexFetch::Kept);
    };
    let Some(snap) = get_snapshot(remote, &key)? else {
        return Ok(IndexFetch::Kept);
    };
    if snap.format != FORMAT {
        return Err(SyncError::Check(format!(
            "{key}: format {:?}, expected {FORMAT:?}",
            snap.format
        )));
    }
    let theirs = crate::index::mark_of_meta(&snap.meta, master, archive_id)
        .map_err(|e| SyncError::Check(format!("{key}: {e}")))?;
    if theirs.through > readable_end || theirs.through <= ours {
        return Err(SyncError::Check(format!(
            "{key}: its mark covers through seq {}, not what its name says",
            theirs.through
        )));
    }
    let wanted = files_of(&snap.meta).map_err(SyncError::Check)?;
    std::fs::create_dir_all(&index_dir)
        .map_err(|e| SyncError::Check(format!("{}: {e}", index_dir.display())))?;
    // The local word lists describe the index being replaced, not the bucket's: they go
    // first, so prefix, wildcard and fuzzy terms are refused (naming `custos reindex`)
    // instead of silently missing what the fetched index holds and they do not.
    let vocab = crate::vocab::vocab_dir(&index_dir);
    match std::fs::remove_dir_all(&vocab) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SyncError::Check(format!("{}: {e}", vocab.display())))
        }
        _ => {}
    }
    let io = |p: &Path, e: std::io::Error| SyncError::Check(format!("{}: {e}", p.display()));
    let mut fetched = 0;
    for name in &wanted {
        let f = snap
            .files
            .iter()
            .find(|f| f.name == *name)
            .filter(|f| plain_name(&f.name))
            .ok_or_else(|| {
                SyncError::Check(format!(
                    "{key}: {name} is named by its meta.json but not listed"
                ))
            })?;
        let path = index_dir.join(&f.name);
        let same = std::fs::read(&path).is_ok_and(|b| {
            b.len() as u64 == f.bytes && hex::encode(&Sha256::digest(&b)) == f.sha256
        });
        if same {
            continue;
        }
        let object = remote.key(&format!("{INDEX_FOLDER}{}", f.name));
        let body = remote
            .client
            .get_object(&object, None)?
            .ok_or_else(|| SyncError::Check(format!("{object}: listed in {key} but gone")))?;
        if hex::encode(&Sha256::digest(&body)) != f.sha256 {
            return Err(SyncError::Check(format!(
                "{object}: its content is not what {key} lists"
            )));
        }
        let part = index_dir.join(format!("{}.part", f.name));
        std::fs::write(&part, &body).map_err(|e| io(&part, e))?;
        std::fs::rename(&part, &path).map_err(|e| io(&path, e))?;
        fetched += 1;
    }
    let meta = index_dir.join("meta.json");
    let part = index_dir.join("meta.json.part");
    std::fs::write(&part, snap.meta.as_bytes()).map_err(|e| io(&part, e))?;
    std::fs::rename(&part, &meta).map_err(|e| io(&meta, e))?;
    // Segment files of the replaced commit: nothing names them any more. tantivy's list
    // of the files it manages is written anew, as tantivy writes it (compact JSON and a
    // newline), naming what is left.
    let mut managed = Vec::new();
    let entries = std::fs::read_dir(&index_dir).map_err(|e| io(&index_dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let segment_file = name
            .split('.')
            .next()
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if segment_file && !wanted.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        } else if segment_file || name == "meta.json" {
            managed.push(name);
        }
    }
    managed.sort();
    let mut list = serde_json::to_vec(&managed).map_err(|e| SyncError::Check(e.to_string()))?;
    list.push(b'\n');
    let path = index_dir.join(".managed.json");
    let part = index_dir.join(".managed.json.part");
    std::fs::write(&part, &list).map_err(|e| io(&part, e))?;
    std::fs::rename(&part, &path).map_err(|e| io(&path, e))?;
    Ok(IndexFetch::Fetched {
        through: theirs.through,
        files: fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_names_each_segments_files_and_its_deletes() {
        let meta = r#"{"index_settings":{},"segments":[
            {"segment_id":"a5c4dfcb-dfe6-4508-9129-e308e26d5523","max_doc":3,"deletes":null},
            {"segment_id":"0123456789abcdef0123456789abcdef","max_doc":2,"deletes":{"num_deleted_docs":1,"opstamp":7}}
        ],"schema":[],"opstamp":9}"#;
        let files = files_of(meta).expect("parses");
        assert!(files.contains(&"a5c4dfcbdfe645089129e308e26d5523.idx".to_string()));
        assert!(files.contains(&"0123456789abcdef0123456789abcdef.7.del".to_string()));
        assert_eq!(files.len(), 13);
        assert!(files_of(r#"{"segments":[{"segment_id":"../../etc"}]}"#).is_err());
        assert!(plain_name("a5c4dfcbdfe645089129e308e26d5523.fieldnorm"));
        assert!(!plain_name("../meta.json"));
        assert!(!plain_name(".managed.json"));
    }
}
