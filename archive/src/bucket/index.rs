//! A copy of each chain's search index in the bucket, so a node reading another node's
//! chain (or a fresh node) starts from it instead of indexing every stored segment.
//!
//! ```text
//!  <chain prefix>index/<file>                     tantivy's segment files, immutable:
//!                                                  put once each
//!  <chain prefix>index/snap-<through 20 digits>.json  {format, meta (meta.json's text), meta_seal,
//!                                                  files: name, bytes, sha256}
//!  <chain prefix>index/words/<sha256>              a sealed word list (docs/archive-format.md,
//!                                                  "vocabulary"), by its content
//!  <chain prefix>index/words-<through 20 digits>.json  {format, files: name, bytes, sha256}:
//!                                                  the word lists beside that snapshot
//! ```
//!
//! The word lists let a node that takes the copy answer prefix, wildcard and fuzzy terms
//! without indexing the segments itself. They are read after the snapshot's `meta.json`,
//! so they hold at least the words of what it covers (a list only grows, and is written
//! before the index commit that makes its words searchable); a list deleted in between
//! (a shred) is missing, and a search that needs it says so. They are sealed under the
//! archive's key like the local ones: a copy reveals their sizes, no word. They sit in
//! their own manifest so that a reader that does not know them takes the snapshot as
//! before.
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
use crate::index::is_segment_file;
use crate::keys::MasterKey;

/// Where the copy is, under a chain's prefix.
pub const INDEX_FOLDER: &str = "index/";
const SNAPSHOT_PREFIX: &str = "index/snap-";
const FORMAT: &str = "custos-index-snapshot-v2";
const WORDS_PREFIX: &str = "index/words-";
const WORDS_FOLDER: &str = "index/words/";
const WORDS_FORMAT: &str = "custos-words-snapshot-v1";

/// The word lists beside one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Words {
    format: String,
    /// `name` is the list's file name; the object is `index/words/<sha256>`.
    files: Vec<IndexFile>,
}

fn words_name(through: u64) -> String {
    format!("{WORDS_PREFIX}{through:020}.json")
}

fn get_words(remote: &Remote, through: u64) -> Result<Option<Words>, SyncError> {
    let key = remote.key(&words_name(through));
    let Some(bytes) = remote.client.get_object(&key, None)? else {
        return Ok(None);
    };
    let words: Words =
        serde_json::from_slice(&bytes).map_err(|e| SyncError::Check(format!("{key}: {e}")))?;
    if words.format != WORDS_FORMAT {
        return Err(SyncError::Check(format!(
            "{key}: format {:?}, expected {WORDS_FORMAT:?}",
            words.format
        )));
    }
    Ok(Some(words))
}

/// Word lists read for a snapshot: each file's name and bytes.
pub(crate) type WordLists = Vec<(String, Vec<u8>)>;

/// Reads the word lists beside the index in `index_dir` for a snapshot of the commit
/// whose `meta.json` text is `meta`: read after it, they hold at least what it binds.
/// A list it binds that is gone or no longer extends what it bound is left out when
/// the index's last commit still binds it so (a list cut back or replaced under the
/// index: a reader refuses pattern terms over that segment, as the local index does);
/// when a newer commit binds it otherwise, the index was rebuilt since `meta` was read,
/// and `None` says to put that newer commit next time instead.
pub(crate) fn read_words(index_dir: &Path, meta: &str) -> Result<Option<WordLists>, SyncError> {
    let bound = crate::index::lists_of_meta(meta).unwrap_or_default();
    let dir = crate::vocab::vocab_dir(index_dir);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::vocab::is_list_name(n))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(SyncError::Check(format!("{}: {e}", dir.display()))),
    };
    names.sort();
    let mut lists = Vec::with_capacity(names.len());
    let mut astray = Vec::new();
    for name in names {
        let path = dir.join(&name);
        match std::fs::read(&path) {
            Ok(body) if crate::vocab::list_goes_with(&name, &body, &bound) => {
                lists.push((name, body));
            }
            Ok(_) => astray.push(name),
            // Shredded since the listing: the snapshot's index may still hold its
            // documents; a search that needs the list says it is missing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => astray.push(name),
            Err(e) => return Err(SyncError::Check(format!("{}: {e}", path.display()))),
        }
    }
    let gone: Vec<String> = bound
        .keys()
        .map(|&s| crate::vocab::file_name(s))
        .filter(|n| !lists.iter().any(|(l, _)| l == n) && !astray.contains(n))
        .collect();
    astray.extend(gone);
    if astray.is_empty() {
        return Ok(Some(lists));
    }
    let now = std::fs::read(index_dir.join("meta.json"))
        .ok()
        .and_then(|sealed| {
            let at = crate::index::sealed_len(&sealed)?;
            crate::index::lists_of_meta(std::str::from_utf8(sealed.get(..at)?).ok()?)
        })
        .unwrap_or_default();
    let rebuilt = astray.iter().any(|n| {
        let segment = crate::vocab::segment_of(n);
        segment.and_then(|s| bound.get(&s)) != segment.and_then(|s| now.get(&s))
    });
    Ok((!rebuilt).then_some(lists))
}

/// Puts word lists (those not in the bucket yet) and their manifest for snapshot
/// `through`. Returns (files put, bytes put).
fn put_words(
    remote: &Remote,
    through: u64,
    newest: Option<u64>,
    lists: &WordLists,
) -> Result<(usize, u64), SyncError> {
    let there: Vec<IndexFile> = match newest {
        Some(t) => get_words(remote, t)?.map(|w| w.files).unwrap_or_default(),
        None => Vec::new(),
    };
    let (mut put, mut bytes) = (0, 0);
    let mut files = Vec::with_capacity(lists.len());
    for (name, body) in lists {
        let file = IndexFile {
            name: name.clone(),
            bytes: body.len() as u64,
            sha256: hex::encode(&Sha256::digest(body)),
        };
        if !there.iter().any(|f| f.sha256 == file.sha256) {
            put_plain(remote, &format!("{WORDS_FOLDER}{}", file.sha256), body)?;
            put += 1;
            bytes += file.bytes;
        }
        files.push(file);
    }
    let manifest = Words {
        format: WORDS_FORMAT.into(),
        files,
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| SyncError::Check(e.to_string()))?;
    put_plain(remote, &words_name(through), &body)?;
    Ok((put, bytes))
}

/// Writes the word lists beside snapshot `through`, whose commit binds the lists
/// `bound`, into the folder `dir`, each checked against its manifest. Returns how many.
/// No manifest is 0 for a commit that binds no list (an uploader that did not put
/// them), and an error for one that does: the lists went (pruned by a newer sync while
/// this one was read, or deleted). So is a manifest without a list the commit binds,
/// or with one that does not hold what it binds: the rest of that segment would be
/// indexed into a list started anew, which the commit does not bind.
fn fetch_words(
    dir: &Path,
    remote: &Remote,
    through: u64,
    bound: &crate::vocab::ListMarks,
) -> Result<usize, SyncError> {
    let Some(words) = get_words(remote, through)? else {
        if bound.is_empty() {
            return Ok(0);
        }
        return Err(SyncError::Gone(format!(
            "{}: gone, though its snapshot's commit binds {} word list(s)",
            remote.key(&words_name(through)),
            bound.len()
        )));
    };
    let io = |p: &Path, e: std::io::Error| SyncError::Check(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let manifest = remote.key(&words_name(through));
    let mut whole = std::collections::BTreeSet::new();
    for f in &words.files {
        if !crate::vocab::is_list_name(&f.name) || !plain_name(&f.sha256) {
            return Err(SyncError::Check(format!(
                "{manifest}: {:?} is not a word list's name",
                f.name
            )));
        }
        let object = remote.key(&format!("{WORDS_FOLDER}{}", f.sha256));
        let body = remote
            .client
            .get_object(&object, None)?
            .ok_or_else(|| SyncError::Gone(format!("{object}: listed in {manifest} but gone")))?;
        if hex::encode(&Sha256::digest(&body)) != f.sha256 {
            return Err(SyncError::Check(format!(
                "{object}: its content is not what {manifest} lists"
            )));
        }
        if !crate::vocab::list_goes_with(&f.name, &body, bound) {
            return Err(SyncError::Check(format!(
                "{object}: does not hold what the snapshot's commit binds of {}",
                f.name
            )));
        }
        whole.extend(crate::vocab::segment_of(&f.name));
        let path = dir.join(&f.name);
        let part = dir.join(format!("{}.part", f.name));
        write_new(&part, &body).map_err(|e| io(&part, e))?;
        std::fs::rename(&part, &path).map_err(|e| io(&path, e))?;
    }
    if let Some(missing) = bound.keys().find(|s| !whole.contains(s)) {
        return Err(SyncError::Check(format!(
            "{manifest}: no word list for segment {missing}, which the snapshot's commit binds"
        )));
    }
    Ok(words.files.len())
}
/// tantivy's files of one segment, besides its deletes (`<id>.<opstamp>.del`).
const COMPONENTS: &[&str] = &["idx", "pos", "term", "store", "fast", "fieldnorm"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    format: String,
    /// The text of tantivy's `meta.json` for this commit.
    meta: String,
    /// The trailer that seals `meta.json` (hex): a copy is checked as the local file is.
    /// (Absent from snapshots of the first format, so that they can still be read to
    /// be pruned.)
    #[serde(default)]
    meta_seal: String,
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
    let sealed = match std::fs::read(dir.join("meta.json")) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(SyncError::Check(format!("{}: {e}", dir.display()))),
    };
    // The text and its seal, put apart (the seal is checked by the reader that takes
    // the copy; an unsealed file is not an index this version writes).
    let Some((meta, seal)) = crate::index::sealed_len(&sealed)
        .map(|at| sealed.split_at(at))
        .and_then(|(m, t)| Some((String::from_utf8(m.to_vec()).ok()?, hex::encode(t))))
    else {
        return Ok(done);
    };
    let Some(through) = through_of(&meta) else {
        return Ok(done);
    };
    let mut there = snapshots(remote)?;
    if through > 0 && !there.iter().any(|(t, _)| *t == through) {
        // Read before any file is put: a commit that cannot be put leaves nothing.
        let Some(lists) = read_words(&dir, &meta)? else {
            return Ok(done);
        };
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
            meta_seal: seal,
            files,
        };
        // The word lists first: a reader that finds the snapshot finds its lists.
        let newest = there.last().map(|(t, _)| *t);
        let (words, word_bytes) = put_words(remote, through, newest, &lists)?;
        done.files += words;
        done.bytes += word_bytes;
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
    let mut named_words = std::collections::BTreeSet::new();
    for (t, key) in &kept {
        // A snapshot that cannot be read keeps every file: nothing is deleted blind.
        let Some(s) = get_snapshot(remote, key)? else {
            return Ok(done);
        };
        named.extend(s.files.into_iter().map(|f| f.name));
        let Ok(words) = get_words(remote, *t) else {
            return Ok(done);
        };
        named_words.extend(words.into_iter().flat_map(|w| w.files).map(|f| f.sha256));
    }
    let mut unnamed_words = std::collections::BTreeSet::new();
    for (t, _) in &old {
        if let Ok(Some(w)) = get_words(remote, *t) {
            unnamed_words.extend(w.files.into_iter().map(|f| f.sha256));
        }
    }
    for sha in unnamed_words.difference(&named_words) {
        if delete_all(remote, &remote.key(&format!("{WORDS_FOLDER}{sha}"))) {
            done.deleted += 1;
        }
    }
    for (t, _) in &old {
        let key = remote.key(&words_name(*t));
        if remote
            .client
            .head_object(&key, None)
            .ok()
            .flatten()
            .is_some()
            && delete_all(remote, &key)
        {
            done.deleted += 1;
        }
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
    /// The bucket's copy, covering the chain through `through`, replaced the local index
    /// (`files` fetched, the rest were here already), with `words` word lists.
    Fetched {
        through: u64,
        files: usize,
        words: usize,
    },
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
    let io = |p: &Path, e: std::io::Error| SyncError::Check(format!("{}: {e}", p.display()));
    crate::vocab::settle_fetch(&index_dir).map_err(|e| io(&index_dir, e))?;
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
    // meta.json as the node that put it had it, sealed: its seal is checked now, and
    // the file is written as it was.
    let seal_key = crate::index::SealKey::derive(master, archive_id);
    let trailer = hex::decode_vec(&snap.meta_seal)
        .ok_or_else(|| SyncError::Check(format!("{key}: meta_seal is not hex")))?;
    let meta_file = [snap.meta.as_bytes(), &trailer[..]].concat();
    seal_key
        .open("meta.json", &meta_file)
        .map_err(|e| SyncError::Check(format!("{key}: {e}")))?;
    let theirs = crate::index::mark_of_meta(&snap.meta, master, archive_id)
        .map_err(|e| SyncError::Check(format!("{key}: {e}")))?;
    if theirs.through > readable_end || theirs.through <= ours {
        return Err(SyncError::Check(format!(
            "{key}: its mark covers through seq {}, not what its name says",
            theirs.through
        )));
    }
    let wanted = files_of(&snap.meta).map_err(SyncError::Check)?;
    std::fs::create_dir_all(&index_dir).map_err(|e| io(&index_dir, e))?;
    // tantivy's list of the files it manages is kept as tantivy keeps it: a file is
    // listed before it is written and unlisted after it is deleted, so a crash at any
    // step leaves no file present that the list does not name (which `verify` would
    // report). So: list what is there and what comes, fetch, switch the commit, delete
    // what the replaced commit alone used, list what is left.
    list_managed(&index_dir, &seal_key, &wanted, true)?;
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
            .ok_or_else(|| SyncError::Gone(format!("{object}: listed in {key} but gone")))?;
        if hex::encode(&Sha256::digest(&body)) != f.sha256 {
            return Err(SyncError::Check(format!(
                "{object}: its content is not what {key} lists"
            )));
        }
        let part = index_dir.join(format!("{}.part", f.name));
        write_new(&part, &body).map_err(|e| io(&part, e))?;
        std::fs::rename(&part, &path).map_err(|e| io(&path, e))?;
        fetched += 1;
    }
    // The word lists are fetched beside the local ones, which describe the local commit
    // and stay until the fetched commit replaces it: a fetch that fails part way (an
    // object pruned or deleted meanwhile, the bucket unreachable) leaves the local index
    // and its lists as they were. A copy whose lists cannot be fetched whole is not
    // taken either: the rest of a segment it covers in part would be indexed into a
    // list started anew, which the copy's commit does not bind.
    let staged = crate::vocab::staged_lists(&index_dir);
    let bound = crate::index::lists_of_meta(&snap.meta).unwrap_or_default();
    let words = fetch_words(&staged, remote, theirs.through, &bound).and_then(|n| {
        // The lists change hands with the commit: the replaced ones wait under a name
        // that says which commit they go with until it is replaced, so a stop in
        // between (a crash, an error) is settled by putting back whichever lists go
        // with the commit the index has ([`crate::vocab::settle_fetch`]).
        crate::vocab::swap_in_fetched(&index_dir).map_err(|e| io(&index_dir, e))?;
        crate::crash_point("index-fetch-files");
        let meta = index_dir.join("meta.json");
        let part = index_dir.join("meta.json.part");
        write_new(&part, &meta_file).map_err(|e| io(&part, e))?;
        std::fs::rename(&part, &meta).map_err(|e| io(&meta, e))?;
        crate::crash_point("index-fetch-meta");
        Ok(n)
    });
    // Done or not, the lists left in place are those of the commit the index has.
    let settled = crate::vocab::settle_fetch(&index_dir).map_err(|e| io(&index_dir, e));
    let words = words?;
    if let Err(e) = settled {
        tracing::warn!(cause = %e, "a word list folder a fetch replaced could not be removed");
    }
    // Segment files of the replaced commit: nothing names them any more.
    let entries = std::fs::read_dir(&index_dir).map_err(|e| io(&index_dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_segment_file(&name) && !wanted.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    list_managed(&index_dir, &seal_key, &wanted, false)?;
    Ok(IndexFetch::Fetched {
        through: theirs.through,
        files: fetched,
        words,
    })
}

/// Writes tantivy's list of the files it manages in `index_dir`, as tantivy writes it
/// (compact JSON and a newline, sealed): `meta.json`, the segment files `wanted`, and,
/// with `and_present`, every other segment file present.
fn list_managed(
    index_dir: &Path,
    seal_key: &crate::index::SealKey,
    wanted: &[String],
    and_present: bool,
) -> Result<(), SyncError> {
    let io = |p: &Path, e: std::io::Error| SyncError::Check(format!("{}: {e}", p.display()));
    let mut managed: std::collections::BTreeSet<String> = wanted.iter().cloned().collect();
    managed.insert("meta.json".into());
    if and_present {
        let entries = std::fs::read_dir(index_dir).map_err(|e| io(index_dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_segment_file(&name) {
                managed.insert(name);
            }
        }
    }
    let managed: Vec<String> = managed.into_iter().collect();
    let mut list = serde_json::to_vec(&managed).map_err(|e| SyncError::Check(e.to_string()))?;
    list.push(b'\n');
    let list = seal_key.seal(".managed.json", &list);
    let path = index_dir.join(".managed.json");
    let part = index_dir.join(".managed.json.part");
    write_new(&part, &list).map_err(|e| io(&part, e))?;
    std::fs::rename(&part, &path).map_err(|e| io(&path, e))
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

/// Writes `bytes` to a file made anew at `path`: whatever is there (a crash's leftover,
/// or a link someone with write access to the directory put there to have this write go
/// elsewhere) is removed first, not written through.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    std::io::Write::write_all(&mut f, bytes)
}

#[cfg(all(test, unix))]
mod write_tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_link_in_place_of_a_part_file_is_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("master.key");
        std::fs::write(&outside, b"the master key").unwrap();
        let part = tmp.path().join("meta.json.part");
        std::os::unix::fs::symlink(&outside, &part).unwrap();
        super::write_new(&part, b"{}").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"the master key");
        assert_eq!(std::fs::read(&part).unwrap(), b"{}");
    }
}
