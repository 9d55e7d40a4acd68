//! The sealed vocabulary: every distinct word the index holds, per log segment,
//! encrypted, so that prefix, wildcard and fuzzy terms can be expanded into the words
//! they match before those words are blinded like any other term.
//!
//! The blind index cannot answer `guarant*` by itself: its terms are keyed hashes,
//! unordered and unrelated to one another. The vocabulary supplies the words: one file
//! per segment, `vocabulary/<segment>.words`, a sequence of AES-256-GCM chunks (each the
//! new words of one index commit, newline-separated) under a key derived from the
//! master key, bound to the archive and the segment. It is written before the commit
//! that makes its words searchable, so every committed word is in it. When a segment is
//! crypto-shredded, the indexer deletes that segment's file with its documents: what a
//! shredded conversation said is not kept as a word list either.
//!
//! ```text
//! file  := "custos-w" ‖ file id:16 (random, so a file written anew is told apart) ‖ chunk*
//! chunk := len:u32be ‖ nonce:12 ‖ AES-GCM(key, nonce, words joined by '\n', aad)
//! aad   := "custos-vocab-v1" ‖ archive id ‖ segment:u64be
//! ```
//!
//! Someone who copies the directory learns its file sizes (roughly how many distinct
//! words each segment added, and when), nothing of the words without the master key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

use crate::keys::{random_bytes, MasterKey};
use crate::query::Word;

const LABEL: &str = "custos-vocab-v1";
const SUFFIX: &str = ".words";
const MAGIC: &[u8; 8] = b"custos-w";
/// Magic and file id.
const HEADER_LEN: usize = 24;

/// The file id of a list's header, if it has a whole one.
fn file_id(bytes: &[u8]) -> Option<[u8; 16]> {
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    bytes.get(8..HEADER_LEN)?.try_into().ok()
}
/// Most words one prefix, wildcard or fuzzy term may expand to.
pub const MAX_EXPANSION: usize = 4096;
/// Most words each side of a NEAR may expand to (its positions are read per word for
/// every document holding both sides).
pub const MAX_NEAR_EXPANSION: usize = 256;
/// Most words all of a query's terms may expand to together.
pub const MAX_QUERY_EXPANSION: usize = 16_384;

/// The vocabulary directory beside an index directory.
pub fn vocab_dir(index_dir: &Path) -> PathBuf {
    index_dir.with_file_name("vocabulary")
}

/// Where word lists fetched with a bucket's index copy wait, beside the index in
/// `index_dir`, until the whole copy is fetched.
pub(crate) fn staged_lists(index_dir: &Path) -> PathBuf {
    index_dir.with_file_name("vocabulary.fetched")
}

/// The name under which the lists a fetched copy replaces wait, ended by a tag of the
/// commit they go with.
const REPLACED: &str = "vocabulary.replaced-";

/// A tag of the commit the index in `index_dir` has now: part of the SHA-256 of its
/// `meta.json`, or `none`.
fn commit_tag(index_dir: &Path) -> std::io::Result<String> {
    match std::fs::read(index_dir.join("meta.json")) {
        Ok(bytes) => Ok(crate::export::hex::encode(&Sha256::digest(&bytes)[..16])),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("none".into()),
        Err(e) => Err(e),
    }
}

fn remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Puts the fetched lists ([`staged_lists`]) in place of the index's, which wait under
/// a name tagged with the commit they go with, the one the index has now. The caller
/// then switches the commit, and [`settle_fetch`] removes them, or puts them back if
/// the commit was not switched.
pub(crate) fn swap_in_fetched(index_dir: &Path) -> std::io::Result<()> {
    let vocab = vocab_dir(index_dir);
    let replaced = index_dir.with_file_name(format!("{REPLACED}{}", commit_tag(index_dir)?));
    remove_dir(&replaced)?;
    match std::fs::rename(&vocab, &replaced) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(&replaced)?,
        r => r?,
    }
    match std::fs::rename(staged_lists(index_dir), &vocab) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Leaves in place the word lists that go with the commit the index in `index_dir` has,
/// whatever step a fetch of a bucket's copy stopped at: lists it replaced are put back
/// when their commit is still the index's, and removed when it is not (the fetched
/// commit replaced it, or a rebuild did since); half-fetched lists go. Run by the fetch
/// and by every open of the index's writer, which hold the archive's writer lock.
pub(crate) fn settle_fetch(index_dir: &Path) -> std::io::Result<()> {
    remove_dir(&staged_lists(index_dir))?;
    let Some(parent) = index_dir.parent() else {
        return Ok(());
    };
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let now = commit_tag(index_dir)?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_prefix(REPLACED) else {
            continue;
        };
        if tag == now {
            let vocab = vocab_dir(index_dir);
            remove_dir(&vocab)?;
            std::fs::rename(e.path(), &vocab)?;
            tracing::info!(dir = %vocab.display(), "put back the word lists of the index's commit after a fetch of a bucket's copy stopped part way");
        } else {
            remove_dir(&e.path())?;
        }
    }
    Ok(())
}

pub(crate) fn file_name(segment: u64) -> String {
    format!("{segment:016x}{SUFFIX}")
}

/// Whether `name` is a word list's file name (`<segment, 16 hex digits>.words`).
pub(crate) fn is_list_name(name: &str) -> bool {
    segment_of(name).is_some()
}

pub(crate) fn segment_of(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

struct Seal {
    cipher: Aes256Gcm,
    archive_id: [u8; 16],
}

impl Seal {
    fn new(master: &MasterKey, archive_id: &[u8; 16]) -> Seal {
        let key = master.derive(LABEL, archive_id);
        Seal {
            // A 32-byte key is always accepted.
            cipher: Aes256Gcm::new_from_slice(key.as_ref())
                .unwrap_or_else(|_| Aes256Gcm::new(&Default::default())),
            archive_id: *archive_id,
        }
    }

    fn aad(&self, segment: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(LABEL.len() + 24);
        aad.extend_from_slice(LABEL.as_bytes());
        aad.extend_from_slice(&self.archive_id);
        aad.extend_from_slice(&segment.to_be_bytes());
        aad
    }

    fn seal(&self, segment: u64, words: &str) -> std::io::Result<Vec<u8>> {
        let nonce = random_bytes::<12>().map_err(std::io::Error::other)?;
        let aad = self.aad(segment);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: words.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| std::io::Error::other("vocabulary encryption failed"))?;
        let len = u32::try_from(12 + ct.len())
            .map_err(|_| std::io::Error::other("vocabulary chunk too large"))?;
        let mut out = Vec::with_capacity(4 + 12 + ct.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens the chunks of `bytes` from `at`, calling `word` for each word. Returns
    /// where the last whole chunk ended (a torn one at the end is what a crash mid-write
    /// leaves; the index commit it preceded never happened) and whether a whole chunk
    /// failed to open (damage: its words are lost until a reindex, and the chunks after
    /// it are still read).
    fn open(
        &self,
        segment: u64,
        bytes: &[u8],
        mut at: usize,
        word: &mut impl FnMut(&str),
    ) -> (usize, bool) {
        let aad = self.aad(segment);
        let mut damaged = false;
        loop {
            let Some(len) = bytes
                .get(at..at.saturating_add(4))
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            else {
                return (at, damaged);
            };
            let end = at.saturating_add(4).saturating_add(len);
            let Some(chunk) = bytes.get(at + 4..end) else {
                return (at, damaged);
            };
            let opened = chunk.split_at_checked(12).and_then(|(nonce, ct)| {
                self.cipher
                    .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                    .ok()
            });
            match opened.as_deref().map(std::str::from_utf8) {
                Some(Ok(text)) => text
                    .split('\n')
                    .filter(|w| !w.is_empty())
                    .for_each(&mut *word),
                _ => damaged = true,
            }
            at = end;
        }
    }
}

/// What an index commit binds of one segment's word list: which file (its header's id),
/// how many bytes of it, and their SHA-256. A list cut back, rolled back to an older
/// copy, replaced or with a chunk swapped no longer matches, so a search refuses it
/// rather than expand terms to fewer words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListMark {
    pub file: [u8; 16],
    pub len: u64,
    pub hash: [u8; 32],
}

/// The lists a commit binds, by segment.
pub type ListMarks = BTreeMap<u64, ListMark>;

/// The mark of a list's first `len` bytes.
fn list_mark(bytes: &[u8], len: usize) -> Option<ListMark> {
    let file = file_id(bytes)?;
    let prefix = bytes.get(..len)?;
    Some(ListMark {
        file,
        len: len as u64,
        hash: Sha256::digest(prefix).into(),
    })
}

/// Whether `bytes` start with what `want` binds.
fn extends(bytes: &[u8], want: &ListMark) -> bool {
    usize::try_from(want.len)
        .ok()
        .and_then(|len| list_mark(bytes, len))
        .is_some_and(|m| m == *want)
}

/// Whether `body`, read from the list file `name`, still holds what a commit binding
/// `bound` bound of it: not when the list was started anew since (a rebuild). A list
/// the commit binds nothing of goes with it.
pub(crate) fn list_goes_with(name: &str, body: &[u8], bound: &ListMarks) -> bool {
    segment_of(name)
        .and_then(|s| bound.get(&s))
        .is_none_or(|want| extends(body, want))
}

/// Collects the words the indexer adds and seals them, per segment, at each commit.
pub struct VocabWriter {
    dir: PathBuf,
    seal: Seal,
    segment: Option<u64>,
    /// Words of `segment` already sealed or pending (never two copies in a file).
    /// Hashed as the index's term cache is ([`crate::index::word_hasher`]).
    seen: HashSet<String, foldhash::quality::SeedableRandomState>,
    pending: Vec<String>,
    /// Every list's mark as written so far: read from the files at the open
    /// ([`VocabWriter::load`]), then carried on in memory. The files are never read for
    /// it again: a list changed under a running writer must not be bound as it is.
    marks: Option<ListMarks>,
    /// The hash of `segment`'s list so far, carried on as chunks are appended.
    hashing: Option<(Sha256, ListMark)>,
    /// Lists found at open not to extend what the index last committed for them (cut
    /// back, rolled back, replaced while nothing ran): that commit's marks are carried
    /// on for them, so searches and `verify` keep refusing them until a reindex,
    /// rather than the next commit binding what is there now.
    held: ListMarks,
}

impl VocabWriter {
    pub fn open(dir: &Path, master: &MasterKey, archive_id: &[u8; 16]) -> VocabWriter {
        VocabWriter {
            dir: dir.to_path_buf(),
            seal: Seal::new(master, archive_id),
            segment: None,
            seen: HashSet::with_hasher(crate::index::word_hasher()),
            pending: Vec::new(),
            marks: None,
            hashing: None,
            held: ListMarks::new(),
        }
    }

    /// Reads every list's mark (what the next commit binds of it), once, at the open,
    /// and checks the lists against `committed` (what the index's last commit bound,
    /// when it bound any): a list that does not extend its committed mark keeps that
    /// mark, so searches and `verify` keep refusing it until a reindex. Returns those
    /// segments. Both come from the same reading of each file.
    pub fn load(&mut self, committed: Option<&ListMarks>) -> std::io::Result<Vec<u64>> {
        let mut segments: BTreeSet<u64> = self.segments()?.into_iter().collect();
        segments.extend(committed.into_iter().flat_map(|c| c.keys().copied()));
        let mut marks = ListMarks::new();
        let mut held = Vec::new();
        for segment in segments {
            let bytes = match std::fs::read(self.dir.join(file_name(segment))) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            // Only whole chunks count: a torn one is cut before anything follows it.
            if let Some(bytes) = bytes.as_deref().filter(|b| file_id(b).is_some()) {
                let end = self.seal.open(segment, bytes, HEADER_LEN, &mut |_| {}).0;
                if let Some(m) = list_mark(bytes, end) {
                    marks.insert(segment, m);
                }
            }
            if let Some(want) = committed.and_then(|c| c.get(&segment)) {
                if !bytes.as_deref().is_some_and(|b| extends(b, want)) {
                    self.held.insert(segment, *want);
                    held.push(segment);
                }
            }
        }
        self.marks = Some(marks);
        Ok(held)
    }

    /// The marks of every list as written so far: what the next commit binds.
    pub fn marks(&mut self) -> std::io::Result<ListMarks> {
        if self.marks.is_none() {
            self.load(None)?;
        }
        let mut marks = self.marks.clone().unwrap_or_default();
        marks.extend(self.held.iter().map(|(s, m)| (*s, *m)));
        Ok(marks)
    }

    /// A list found not to be what this writer last knew of it (`known`): it keeps that
    /// mark, so it is refused until a reindex instead of bound as it now is.
    fn hold(&mut self, segment: u64, known: ListMark) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.held.entry(segment) {
            tracing::warn!(segment, "a search word list changed under the indexer (cut back, rolled back, replaced or deleted); prefix, wildcard and fuzzy search refuse it until custos reindex");
            e.insert(known);
        }
    }

    /// Notes a word of a record in `segment` (records come in log order).
    pub fn add(&mut self, segment: u64, word: &str) -> std::io::Result<()> {
        if self.segment != Some(segment) {
            self.flush()?;
            self.segment = Some(segment);
            self.seen.clear();
            self.hashing = None;
            // What this writer read of the list at its open, or wrote since: the file
            // must still start with it.
            if self.marks.is_none() {
                self.load(None)?;
            }
            let known = self.marks.as_ref().and_then(|m| m.get(&segment)).copied();
            // After a restart the file may already hold words of this segment, and end
            // in a chunk a crash tore: cut that, or chunks appended after it would be
            // unreadable.
            let path = self.dir.join(file_name(segment));
            let read = match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if let Some(known) = known {
                if !read.as_deref().is_some_and(|b| extends(b, &known)) {
                    self.hold(segment, known);
                }
            }
            if let Some(bytes) = read {
                let seen = &mut self.seen;
                // No whole header: nothing in it was ever committed; it is started anew.
                let end = match file_id(&bytes) {
                    Some(_) => {
                        self.seal
                            .open(segment, &bytes, HEADER_LEN, &mut |w| {
                                seen.insert(w.to_string());
                            })
                            .0
                    }
                    None => 0,
                };
                if end < bytes.len() {
                    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                    f.set_len(end as u64)?;
                    f.sync_data()?;
                }
                if let (Some(m), Some(prefix)) = (list_mark(&bytes, end), bytes.get(..end)) {
                    let mut h = Sha256::new();
                    h.update(prefix);
                    self.hashing = Some((h, m));
                }
            }
        }
        if !self.seen.contains(word) {
            self.seen.insert(word.to_string());
            self.pending.push(word.to_string());
        }
        Ok(())
    }

    /// Seals the pending words into their segment's file and syncs it.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let (Some(segment), false) = (self.segment, self.pending.is_empty()) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir)?;
        let chunk = self.seal.seal(segment, &self.pending.join("\n"))?;
        let path = self.dir.join(file_name(segment));
        // The marks are read before this append, so they do not count it twice.
        self.marks()?;
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        // The file must be what this writer last knew of it: appending to a list cut
        // back, or starting a deleted one anew, would bind a list without the words
        // before.
        let new = match self.hashing.as_ref().map(|(_, m)| *m) {
            // No list at `add`: whatever is there now is no commit's; started anew.
            None => true,
            Some(m) if size == m.len => false,
            // An append of this writer that failed part way: cut back to its end.
            Some(m) if size > m.len => {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(m.len)?;
                false
            }
            // Cut back or deleted under the writer: refused from now on.
            Some(m) => {
                self.hold(segment, m);
                true
            }
        };
        let mut f = if new {
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)?
        } else {
            std::fs::OpenOptions::new().append(true).open(&path)?
        };
        let written = if new {
            let file = random_bytes::<16>().map_err(std::io::Error::other)?;
            let mut header = Vec::with_capacity(HEADER_LEN + chunk.len());
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&file);
            header.extend_from_slice(&chunk);
            f.write_all(&header)?;
            self.hashing = Some((
                Sha256::new(),
                ListMark {
                    file,
                    len: 0,
                    hash: [0; 32],
                },
            ));
            header
        } else {
            f.write_all(&chunk)?;
            chunk
        };
        f.sync_data()?;
        if new {
            sync_dir(&self.dir)?;
        }
        self.pending.clear();
        match self.hashing.as_mut() {
            Some((h, m)) => {
                h.update(&written);
                m.len += written.len() as u64;
                m.hash = h.clone().finalize().into();
                let m = *m;
                if let Some(marks) = self.marks.as_mut() {
                    marks.insert(segment, m);
                }
            }
            // Cannot happen: a new list starts its hash above, and `add` starts it for
            // a list already there.
            None => return Err(std::io::Error::other("word list written without its hash")),
        }
        Ok(())
    }

    /// A shredded segment's words go with it.
    pub fn forget(&mut self, segment: u64) -> std::io::Result<()> {
        if self.segment == Some(segment) {
            self.segment = None;
            self.seen.clear();
            self.pending.clear();
            self.hashing = None;
        }
        if let Some(marks) = self.marks.as_mut() {
            marks.remove(&segment);
        }
        self.held.remove(&segment);
        match std::fs::remove_file(self.dir.join(file_name(segment))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(()),
            Ok(()) => sync_dir(&self.dir),
        }
    }

    /// The segments that have a word list.
    pub fn segments(&self) -> std::io::Result<Vec<u64>> {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => Ok(entries
                .flatten()
                .filter_map(|e| segment_of(&e.file_name().to_string_lossy()))
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes every word (the index is rebuilt from nothing).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.segment = None;
        self.seen.clear();
        self.pending.clear();
        self.marks = Some(ListMarks::new());
        self.hashing = None;
        self.held.clear();
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Makes a directory's entries (a file created or removed) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A word term matched more words than a search expands to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token:?} matches more than {limit} different words; make it narrower")]
pub struct TooBroad {
    pub token: String,
    pub limit: usize,
}

/// Every word of the vocabulary, kept current with the files as they grow.
pub struct Vocabulary {
    dir: PathBuf,
    seal: Seal,
    /// Of each segment's file: which file (its header's id), the bytes read (up to its
    /// last whole chunk), and whether a chunk in them failed to open.
    read: HashMap<u64, Read>,
    words: BTreeSet<String>,
    /// Lists checked against a commit's marks: the mark, the file's size then, and
    /// whether it matched.
    checked: HashMap<u64, (ListMark, u64, bool)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Read {
    /// The header's file id.
    file: [u8; 16],
    at: usize,
    damaged: bool,
}

impl Vocabulary {
    pub fn new(index_dir: &Path, master: &MasterKey, archive_id: &[u8; 16]) -> Vocabulary {
        Vocabulary {
            dir: vocab_dir(index_dir),
            seal: Seal::new(master, archive_id),
            read: HashMap::new(),
            words: BTreeSet::new(),
            checked: HashMap::new(),
        }
    }

    /// Of `segments`, those whose word list is not what `marks` (an index commit's)
    /// binds: gone, another file, shorter, or other bytes in the bound part, or the words
    /// held were not read from all of the bound part (call after [`Vocabulary::refresh`]).
    /// A list is read again only when its mark or its size changed since it was last
    /// checked, or the words were read anew. Segments `marks` does not name are not
    /// checked here.
    pub fn unbound(
        &mut self,
        marks: &ListMarks,
        segments: impl IntoIterator<Item = u64>,
    ) -> std::io::Result<Vec<u64>> {
        let mut bad = Vec::new();
        for segment in segments {
            let Some(want) = marks.get(&segment) else {
                continue;
            };
            let path = self.dir.join(file_name(segment));
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    bad.push(segment);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ok = match self.checked.get(&segment) {
                Some((m, n, ok)) if m == want && *n == size => *ok,
                _ => {
                    let ok = match std::fs::read(&path) {
                        Ok(bytes) => usize::try_from(want.len)
                            .ok()
                            .and_then(|len| list_mark(&bytes, len))
                            .is_some_and(|m| m == *want),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                        Err(e) => return Err(e),
                    };
                    self.checked.insert(segment, (*want, size, ok));
                    ok
                }
            };
            // The words held are those of the bytes read: up to `at` of file `file`.
            // They must cover the bound part too, not only the file as it is now.
            let read = self
                .read
                .get(&segment)
                .is_some_and(|r| r.file == want.file && r.at as u64 >= want.len);
            if !ok || !read {
                bad.push(segment);
            }
        }
        Ok(bad)
    }

    /// Takes in what the files gained; starts over when a file went (a shred or a
    /// rebuild), so a forgotten segment's words are forgotten here too.
    pub fn refresh(&mut self) -> std::io::Result<()> {
        let mut present = HashMap::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e?;
                    if let Some(seg) = segment_of(&e.file_name().to_string_lossy()) {
                        present.insert(seg, e.metadata()?.len());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Each present list's header, and all of it when it is new or has grown.
        let mut seen: HashMap<u64, ([u8; 16], Option<Vec<u8>>)> = HashMap::new();
        for (&seg, &len) in &present {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let path = self.dir.join(file_name(seg));
            let grown = self.read.get(&seg).is_none_or(|r| len > r.at);
            let bytes = if grown {
                match std::fs::read(&path) {
                    Ok(b) => b,
                    // Forgotten between the listing and the read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            } else {
                let mut head = [0u8; HEADER_LEN];
                match std::fs::File::open(&path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                {
                    Ok(()) => head.to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            };
            // A list without a whole header holds nothing committed yet.
            let Some(id) = file_id(&bytes) else { continue };
            seen.insert(seg, (id, grown.then_some(bytes)));
        }
        // A list gone, or written anew (another file id): start over.
        let changed = self
            .read
            .iter()
            .any(|(seg, r)| seen.get(seg).is_none_or(|(id, _)| *id != r.file));
        if changed {
            // Nothing read now: the second pass reads every list whole, and checks it
            // against a commit's marks anew.
            self.read.clear();
            self.words.clear();
            self.checked.clear();
            return self.refresh();
        }
        for (seg, (id, bytes)) in seen {
            let Some(bytes) = bytes else { continue };
            let r = self.read.get(&seg).copied().unwrap_or(Read {
                file: id,
                at: HEADER_LEN,
                damaged: false,
            });
            let words = &mut self.words;
            let (end, damaged) = self.seal.open(seg, &bytes, r.at, &mut |w| {
                if !words.contains(w) {
                    words.insert(w.to_string());
                }
            });
            self.read.insert(
                seg,
                Read {
                    file: id,
                    at: end,
                    damaged: r.damaged || damaged,
                },
            );
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the segment's word list was there, whole, at the last refresh.
    pub fn has_segment(&self, segment: u64) -> bool {
        self.read.get(&segment).is_some_and(|r| !r.damaged)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The words any of `words` matches (exact words as they are), at most `limit` in
    /// all.
    pub fn expand(
        &self,
        words: &[Word],
        token: &str,
        limit: usize,
    ) -> Result<Vec<String>, TooBroad> {
        let mut out = BTreeSet::new();
        let too_broad = || TooBroad {
            token: token.to_string(),
            limit,
        };
        for w in words {
            if let Word::Exact(e) = w {
                out.insert(e.clone());
                continue;
            }
            let m = w.matcher();
            let stem = w.literal_prefix();
            let candidates: Box<dyn Iterator<Item = &String>> = match w {
                Word::Fuzzy(word, d) => {
                    let n = word.chars().count();
                    let d = usize::from(*d);
                    Box::new(self.words.iter().filter(move |c| {
                        let k = c.chars().count();
                        k + d >= n && k <= n + d
                    }))
                }
                _ => Box::new(
                    self.words
                        .range::<str, _>((
                            std::ops::Bound::Included(stem),
                            std::ops::Bound::Unbounded,
                        ))
                        .take_while(|c| c.starts_with(stem)),
                ),
            };
            for c in candidates {
                if m.matches(c) {
                    out.insert(c.clone());
                    if out.len() > limit {
                        return Err(too_broad());
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetch of a bucket's index copy stopped while the word lists changed hands:
    /// whichever go with the commit the index has are left in place, and nothing
    /// half-fetched stays.
    #[test]
    fn a_fetch_stopped_part_way_leaves_the_lists_of_the_commit_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let index = tmp.path().join("index");
        std::fs::create_dir_all(&index).unwrap();
        let list = || std::fs::read_to_string(vocab_dir(&index).join(file_name(2))).ok();
        let leftovers = || {
            std::fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .filter(|e| !["index", "vocabulary"].contains(&&*e.file_name().to_string_lossy()))
                .count()
        };
        let lay_out = |local: &str| {
            std::fs::write(index.join("meta.json"), "local commit").unwrap();
            let vocab = vocab_dir(&index);
            std::fs::create_dir_all(&vocab).unwrap();
            std::fs::write(vocab.join(file_name(2)), local).unwrap();
            let staged = staged_lists(&index);
            std::fs::create_dir_all(&staged).unwrap();
            std::fs::write(staged.join(file_name(2)), "fetched").unwrap();
            swap_in_fetched(&index).unwrap();
            std::fs::create_dir_all(&staged).unwrap();
            std::fs::write(staged.join(file_name(2)), "half").unwrap();
        };
        // Stopped before the commit switched: the local lists are put back.
        lay_out("local");
        assert_eq!(list().as_deref(), Some("fetched"));
        settle_fetch(&index).unwrap();
        assert_eq!(list().as_deref(), Some("local"));
        assert_eq!(leftovers(), 0);
        // Stopped after it switched: the fetched lists stay.
        lay_out("local");
        std::fs::write(index.join("meta.json"), "fetched commit").unwrap();
        settle_fetch(&index).unwrap();
        assert_eq!(list().as_deref(), Some("fetched"));
        assert_eq!(leftovers(), 0);
        // A rebuild since (another commit, lists written anew): it keeps its own.
        lay_out("local");
        std::fs::write(index.join("meta.json"), "rebuilt").unwrap();
        std::fs::write(vocab_dir(&index).join(file_name(2)), "rebuilt").unwrap();
        settle_fetch(&index).unwrap();
        assert_eq!(list().as_deref(), Some("rebuilt"));
        assert_eq!(leftovers(), 0);
        // A fresh directory: nothing to settle.
        settle_fetch(&tmp.path().join("none").join("index")).unwrap();
    }

    #[test]
    fn words_are_sealed_per_segment_and_forgotten_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let index = tmp.path().join("index");
        let master = MasterKey::from_bytes([9; 32]);
        let id = [4; 16];
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &id);
        for word in ["guarantee", "guaranteed", "return", "guarantee"] {
            w.add(1, word).unwrap();
        }
        w.add(2, "returns").unwrap();
        w.flush().unwrap();
        let on_disk = std::fs::read(vocab_dir(&index).join(file_name(1))).unwrap();
        assert!(!on_disk.windows(6).any(|x| x == b"return"), "sealed");

        let mut v = Vocabulary::new(&index, &master, &id);
        v.refresh().unwrap();
        assert_eq!(v.len(), 4);
        let prefix = [Word::Prefix("guarant".into())];
        assert_eq!(
            v.expand(&prefix, "guarant*", MAX_EXPANSION).unwrap(),
            vec!["guarantee", "guaranteed"]
        );
        assert_eq!(
            v.expand(&[Word::Fuzzy("retrun".into(), 1)], "retrun~", MAX_EXPANSION)
                .unwrap(),
            vec!["return"]
        );
        // A restart does not write a word twice; a torn chunk is ignored.
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &id);
        w.add(2, "returns").unwrap();
        w.add(2, "profit").unwrap();
        w.flush().unwrap();
        let path = vocab_dir(&index).join(file_name(2));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0, 0, 0, 40, 1, 2, 3]).unwrap();
        v.refresh().unwrap();
        assert_eq!(v.len(), 5);
        // The next writer cuts the torn chunk before it appends.
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &id);
        w.add(2, "dividend").unwrap();
        w.flush().unwrap();
        let mut v = Vocabulary::new(&index, &master, &id);
        v.refresh().unwrap();
        assert_eq!(v.len(), 6);

        w.forget(1).unwrap();
        v.refresh().unwrap();
        assert_eq!(
            v.expand(&prefix, "guarant*", MAX_EXPANSION).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(v.len(), 3);

        // Another key reads nothing.
        let mut other = Vocabulary::new(&index, &MasterKey::from_bytes([1; 32]), &id);
        other.refresh().unwrap();
        assert!(other.is_empty());
    }

    #[test]
    fn a_damaged_chunk_marks_its_list_and_keeps_the_rest_and_a_replaced_file_is_read_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let index = tmp.path().join("index");
        let master = MasterKey::from_bytes([9; 32]);
        let id = [4; 16];
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &id);
        w.add(1, "alpha").unwrap();
        w.flush().unwrap();
        w.add(1, "bravo").unwrap();
        w.flush().unwrap();
        let path = vocab_dir(&index).join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 20] ^= 1; // inside the first chunk's ciphertext
        std::fs::write(&path, &bytes).unwrap();
        let mut v = Vocabulary::new(&index, &master, &id);
        v.refresh().unwrap();
        assert_eq!(v.len(), 1, "the chunk after the damaged one is still read");
        assert!(!v.has_segment(1), "a damaged list counts as missing");
        // The next writer keeps every whole chunk, damaged or not.
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &id);
        w.add(1, "charlie").unwrap();
        w.flush().unwrap();
        assert!(std::fs::read(&path).unwrap().len() > bytes.len());

        // Removed and written again, longer, between two refreshes: read from the start.
        let mut v = Vocabulary::new(&index, &master, &id);
        w.add(2, "delta").unwrap();
        w.flush().unwrap();
        v.refresh().unwrap();
        w.forget(2).unwrap();
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &id);
        for word in ["echo", "foxtrot", "golf", "hotel"] {
            w.add(2, word).unwrap();
        }
        w.flush().unwrap();
        v.refresh().unwrap();
        assert!(v.has_segment(2));
        let all = v
            .expand(&[Word::Wildcard("*".into())], "*", MAX_EXPANSION)
            .unwrap();
        assert!(
            all.contains(&"hotel".to_string()) && !all.contains(&"delta".to_string()),
            "{all:?}"
        );
    }

    #[test]
    fn a_pattern_matching_too_many_words_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let index = tmp.path().join("index");
        let master = MasterKey::from_bytes([9; 32]);
        let mut w = VocabWriter::open(&vocab_dir(&index), &master, &[0; 16]);
        for i in 0..=MAX_EXPANSION {
            w.add(0, &format!("w{i}")).unwrap();
        }
        w.flush().unwrap();
        let mut v = Vocabulary::new(&index, &master, &[0; 16]);
        v.refresh().unwrap();
        let e = v
            .expand(&[Word::Prefix("w".into())], "w*", MAX_EXPANSION)
            .unwrap_err();
        assert!(e.to_string().contains("\"w*\""), "{e}");
    }
}
