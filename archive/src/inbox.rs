//! The archive inbox: how a process that does not hold the writer (a
//! `custos export` run beside `custos serve`) still gets its audit events
//! into the one tamper-evident log (promise 5).
//!
//! ```text
//!  submit_audit ─▶ writer lock free? ─▶ open archive, append, close ─▶ Appended{seq}
//!              └─▶ taken ─▶ encrypt ─▶ inbox/.<id>.tmp ─▶ fsync ─▶ rename inbox/<id>.sub ─▶ fsync dir ─▶ Queued
//!
//!  writer (at open, then about every second):
//!    inbox/<id>.sub ─▶ decrypt ─▶ rename <id>.<seq>.claimed + fsync dir ─▶ append (group commit, fsync)
//!                  ─▶ remove the file
//!    undecryptable / malformed ─▶ append Audit{custos, inbox-rejected} ─▶ move to inbox/rejected/
//! ```
//!
//! Exactly once: before appending, the writer renames each submission to a
//! name carrying the seq its record will get and syncs the directory. A crash
//! after the append but before the removal leaves a `.claimed` file; the next
//! drain reads that seq from the log and removes the file if the record there
//! is this submission, and appends it otherwise. Never lost, never twice.
//!
//! The inbox is a mailbox between processes on one machine, so it uses the
//! filesystem directly rather than the [`Storage`](crate::storage::Storage)
//! abstraction of the log: atomic rename and directory sync are what matter.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::SigningKey;

use crate::archive::{
    AppendError, Archive, ArchiveConfig, ArchiveReader, CloseError, OpenError, ReadError,
};
use crate::keys::{random_bytes, MasterKey};
use crate::log::{Appended, LogWriteError, LogWriter};
use crate::record::{EventRecord, NewRecord, RecordSeq};

/// The inbox directory, relative to the archive directory.
pub const INBOX_DIR: &str = "inbox";
/// Where files the writer refused are kept, relative to the inbox.
pub const REJECTED_DIR: &str = "rejected";

const MAGIC: &[u8; 8] = b"CUSTOSIB";
const VERSION: u16 = 1;
const ID_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 8 + 2 + ID_LEN + NONCE_LEN;
/// HKDF label of the inbox key (see `keys.rs`).
const KEY_LABEL: &str = "custos-inbox-v1";
const AAD_LABEL: &[u8] = b"custos-inbox-v1";
/// Larger files are refused unread: a submission is one audit event.
pub(crate) const MAX_FILE: u64 = 1 << 20;
/// Most files one drain takes, so one drain is one bounded batch.
const MAX_PER_DRAIN: usize = 1024;
/// How often the running writer looks into the inbox.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_secs(1);

/// How [`submit_audit`] recorded the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSubmitted {
    /// No other process held the writer: appended and durable at `seq`.
    Appended { seq: RecordSeq },
    /// Another process holds the writer: handed to it in this inbox file,
    /// which it appends (and then removes) within about a second.
    Queued { path: PathBuf },
}

/// Submitting an audit event failed; nothing was recorded unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("only audit events can be submitted")]
    NotAudit,
    #[error("cannot open the archive: {0}")]
    Archive(#[from] ReadError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("appending the audit event failed: {0}")]
    Append(#[from] AppendError),
    /// The event is durable at `seq`; only sealing the segment afterwards
    /// failed (the next open recovers). Do not submit it again.
    #[error("audit event appended at seq {}, but closing the archive failed: {source}", seq.0)]
    Close { seq: RecordSeq, source: CloseError },
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
    #[error("record encryption failed")]
    Encrypt,
    #[error("cannot write inbox file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Records an audit event whatever process holds the writer: appended directly when the
/// archive is free (opening it briefly), otherwise handed to the running writer through
/// the archive's inbox, which it appends within about a second.
///
/// `event` must be [`EventRecord::Audit`]. The archive must exist (its
/// `archive.meta` is read to check the master key). Blocks the calling thread;
/// from async code call it through `spawn_blocking`. Opening directly starts a
/// new segment, as every open does.
pub fn submit_audit(
    dir: &Path,
    master_key: &MasterKey,
    signing_key: &SigningKey,
    event: EventRecord,
) -> Result<AuditSubmitted, SubmitError> {
    let cfg = ArchiveConfig::new(dir.to_path_buf(), master_key.clone(), signing_key.clone());
    submit_audit_in(cfg, event)
}

/// [`submit_audit`] opening the archive, when it is free, as `cfg` says: with the
/// archive's witness, so a checkpoint it writes (at its close, over the event) is
/// witnessed as the server's are, not left for a later `serve` to cover.
pub fn submit_audit_in(
    cfg: ArchiveConfig,
    event: EventRecord,
) -> Result<AuditSubmitted, SubmitError> {
    let (dir, master_key) = (cfg.dir.clone(), cfg.master_key.clone());
    let (dir, master_key) = (dir.as_path(), &master_key);
    let EventRecord::Audit {
        actor,
        action,
        detail,
    } = event
    else {
        return Err(SubmitError::NotAudit);
    };
    // Fails early on a missing archive or a wrong key, which would otherwise
    // only show later as a rejected inbox file.
    let archive_id = ArchiveReader::open(dir, master_key)?.archive_id();
    let event = EventRecord::Audit {
        actor,
        action,
        detail,
    };
    match Archive::open(cfg) {
        Ok(archive) => {
            let appended = block_on(archive.append(NewRecord::Event(event)));
            let closed = block_on(archive.close());
            let seq = appended?.seq;
            closed.map_err(|source| SubmitError::Close { seq, source })?;
            Ok(AuditSubmitted::Appended { seq })
        }
        Err(OpenError::Locked { .. }) => {
            let sub = Submission {
                id: random_bytes::<ID_LEN>().map_err(SubmitError::Random)?,
                event,
            };
            let bytes = seal(master_key, &archive_id, &sub)?;
            let path = write_submission(&dir.join(INBOX_DIR), &sub.id, &bytes)?;
            Ok(AuditSubmitted::Queued { path })
        }
        Err(e) => Err(e.into()),
    }
}

/// One submitted event and its random id (which names the file and is bound
/// into the ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Submission {
    pub(crate) id: [u8; ID_LEN],
    /// Always [`EventRecord::Audit`].
    pub(crate) event: EventRecord,
}

fn cipher(master: &MasterKey, archive_id: &[u8; 16]) -> Option<Aes256Gcm> {
    Aes256Gcm::new_from_slice(master.derive(KEY_LABEL, archive_id).as_ref()).ok()
}

fn aad(archive_id: &[u8; 16], id: &[u8; ID_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 16 + ID_LEN);
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(archive_id);
    aad.extend_from_slice(id);
    aad
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    let s = rest.get(..len)?;
    *b = rest.get(len..)?;
    String::from_utf8(s.to_vec()).ok()
}

/// The inbox file bytes of a submission.
pub(crate) fn seal(
    master: &MasterKey,
    archive_id: &[u8; 16],
    sub: &Submission,
) -> Result<Vec<u8>, SubmitError> {
    let EventRecord::Audit {
        actor,
        action,
        detail,
    } = &sub.event
    else {
        return Err(SubmitError::NotAudit);
    };
    let mut plain = zeroize::Zeroizing::new(Vec::new());
    for s in [actor, action, detail] {
        put_str(&mut plain, s);
    }
    let nonce = random_bytes::<NONCE_LEN>().map_err(SubmitError::Random)?;
    let ct = cipher(master, archive_id)
        .ok_or(SubmitError::Encrypt)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &aad(archive_id, &sub.id),
            },
        )
        .map_err(|_| SubmitError::Encrypt)?;
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&sub.id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts an inbox file, or says why it cannot be used.
pub(crate) fn open(
    master: &MasterKey,
    archive_id: &[u8; 16],
    file: &[u8],
) -> Result<Submission, String> {
    if file.get(..8) != Some(MAGIC) {
        return Err("not an inbox file (bad magic)".into());
    }
    if file.get(8..10) != Some(&VERSION.to_be_bytes()[..]) {
        return Err("unsupported inbox file version".into());
    }
    let (Some(id), Some(nonce), Some(ct)) = (
        file.get(10..10 + ID_LEN)
            .and_then(|b| <[u8; ID_LEN]>::try_from(b).ok()),
        file.get(10 + ID_LEN..HEADER_LEN),
        file.get(HEADER_LEN..),
    ) else {
        return Err("truncated inbox file".into());
    };
    let plain = cipher(master, archive_id)
        .and_then(|c| {
            c.decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad(archive_id, &id),
                },
            )
            .ok()
        })
        .map(zeroize::Zeroizing::new)
        .ok_or("does not decrypt under this archive's inbox key")?;
    let mut rest = plain.as_slice();
    let (Some(actor), Some(action), Some(detail)) = (
        take_str(&mut rest),
        take_str(&mut rest),
        take_str(&mut rest),
    ) else {
        return Err("decrypted content is malformed".into());
    };
    if !rest.is_empty() {
        return Err("decrypted content has trailing bytes".into());
    }
    Ok(Submission {
        id,
        event: EventRecord::Audit {
            actor,
            action,
            detail,
        },
    })
}

fn hex(id: &[u8; ID_LEN]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `<inbox>/<id>.sub` atomically and durably: temp file, fsync,
/// rename, fsync of the directory (and of its parent if it was just created).
fn write_submission(inbox: &Path, id: &[u8; ID_LEN], bytes: &[u8]) -> Result<PathBuf, SubmitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SubmitError::Write { path, source }
    };
    if !inbox.is_dir() {
        std::fs::create_dir_all(inbox).map_err(io(inbox))?;
        if let Some(parent) = inbox.parent() {
            sync_dir(parent).map_err(io(parent))?;
        }
    }
    let name = hex(id);
    let tmp = inbox.join(format!(".{name}.tmp"));
    let path = inbox.join(format!("{name}.sub"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(inbox).map_err(io(inbox))?;
    Ok(path)
}

/// A file found in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `<id>.sub`: submitted, not yet taken.
    Pending { name: String, id: String },
    /// `<id>.<seq>.claimed`: taken by a writer that meant to append it at `seq`.
    Claimed { name: String, id: String, seq: u64 },
    /// Anything else (not a temp file): refused.
    Foreign { name: String },
}

fn is_id(s: &str) -> bool {
    s.len() == 2 * ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn classify(name: &str) -> Entry {
    if let Some(id) = name.strip_suffix(".sub").filter(|id| is_id(id)) {
        return Entry::Pending {
            name: name.into(),
            id: id.into(),
        };
    }
    if let Some((id, seq)) = name
        .strip_suffix(".claimed")
        .and_then(|s| s.split_once('.'))
    {
        if let (true, Ok(seq)) = (is_id(id), seq.parse::<u64>()) {
            return Entry::Claimed {
                name: name.into(),
                id: id.into(),
                seq,
            };
        }
    }
    Entry::Foreign { name: name.into() }
}

/// Regular files in the inbox, oldest name first, without temp files (a
/// submitter is still writing those) and without the `rejected` directory.
fn list(inbox: &Path) -> std::io::Result<Vec<Entry>> {
    let rd = match std::fs::read_dir(inbox) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for e in rd {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names.iter().map(|n| classify(n)).collect())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let f = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    Ok(bytes)
}

/// What one drain appended, and the last I/O problem it met (the inbox
/// health the archive reports; such problems never stop the writer).
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) appended: Vec<Appended>,
    pub(crate) problem: Option<String>,
}

/// The writer's side of the inbox. Owned by the writer thread.
pub(crate) struct Drain {
    inbox: PathBuf,
    master: MasterKey,
    archive_id: [u8; 16],
    /// Reads back the seq a `.claimed` file names.
    reader: ArchiveReader,
    /// Claimed files whose record this process made durable but could not
    /// remove: only their removal is retried.
    appended: HashSet<String>,
    /// Refused files whose refusal is recorded but which could not be moved
    /// aside: only the move is retried, so the log is not flooded with one
    /// refusal per drain.
    refused: HashSet<String>,
    last: Option<Instant>,
}

impl Drain {
    pub(crate) fn new(archive_dir: &Path, master: MasterKey, reader: ArchiveReader) -> Drain {
        Drain {
            inbox: archive_dir.join(INBOX_DIR),
            archive_id: reader.archive_id(),
            master,
            reader,
            appended: HashSet::new(),
            refused: HashSet::new(),
            last: None,
        }
    }

    /// Whether the running writer should look into the inbox now.
    pub(crate) fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= DRAIN_INTERVAL)
    }

    /// Appends every valid submission and records every refused file, in one
    /// batch. An error is the log's: the writer must fail as for any append.
    pub(crate) fn drain(&mut self, log: &mut LogWriter) -> Result<Drained, LogWriteError> {
        self.last = Some(Instant::now());
        let mut out = Drained::default();
        let entries = match list(&self.inbox) {
            Ok(e) => e,
            Err(e) => {
                out.problem = Some(format!("cannot list {}: {e}", self.inbox.display()));
                return Ok(out);
            }
        };
        if entries.is_empty() {
            return Ok(out);
        }
        let mut take: Vec<(String, String, Submission)> = Vec::new(); // (name, id, submission)
        let mut done: Vec<String> = Vec::new(); // already in the log: remove only
        let mut rejects: Vec<(String, String)> = Vec::new(); // (name, reason)
        let mut move_aside: Vec<String> = Vec::new();
        for entry in entries.into_iter().take(MAX_PER_DRAIN) {
            let name = match &entry {
                Entry::Foreign { name }
                | Entry::Pending { name, .. }
                | Entry::Claimed { name, .. } => name,
            };
            if self.refused.contains(name) {
                move_aside.push(name.clone());
                continue;
            }
            let (name, id, claimed) = match entry {
                Entry::Foreign { name } => {
                    rejects.push((name, "not an inbox file name".into()));
                    continue;
                }
                Entry::Pending { name, id } => (name, id, None),
                Entry::Claimed { name, id, seq } => {
                    if self.appended.contains(&name) {
                        done.push(name);
                        continue;
                    }
                    (name, id, Some(seq))
                }
            };
            let sub = match read_limited(&self.inbox.join(&name))
                .and_then(|b| open(&self.master, &self.archive_id, &b))
            {
                Ok(sub) => sub,
                Err(why) => {
                    rejects.push((name, why));
                    continue;
                }
            };
            if hex(&sub.id) != id {
                rejects.push((name, "file name does not match the submission id".into()));
                continue;
            }
            match claimed {
                Some(seq) if self.in_log(seq, log.next_seq(), &sub.event) => done.push(name),
                _ => take.push((name, id, sub)),
            }
        }
        // Claim: the new name carries the seq the record will get, durable
        // before the append, so a crash after the append is recognised.
        let mut batch = Vec::new();
        let mut claimed = Vec::new();
        for (name, id, sub) in take {
            let seq = log.next_seq() + batch.len() as u64;
            let to = format!("{id}.{seq}.claimed");
            match std::fs::rename(self.inbox.join(&name), self.inbox.join(&to)) {
                Ok(()) => {
                    batch.push(NewRecord::Event(sub.event));
                    claimed.push(to);
                }
                Err(e) => out.problem = Some(format!("cannot claim {name}: {e}")),
            }
        }
        if !claimed.is_empty() {
            if let Err(e) = sync_dir(&self.inbox) {
                // Not appended: the claims are re-resolved next time.
                out.problem = Some(format!("cannot sync {}: {e}", self.inbox.display()));
                return Ok(out);
            }
        }
        for (name, why) in &rejects {
            batch.push(NewRecord::Event(EventRecord::Audit {
                actor: "custos".into(),
                action: "inbox-rejected".into(),
                detail: format!("{name}: {why}"),
            }));
        }
        if !batch.is_empty() {
            out.appended = log.append_batch(batch)?;
        }
        // Durable: now the files may go.
        let mut changed = false;
        for name in claimed.into_iter().chain(done) {
            match std::fs::remove_file(self.inbox.join(&name)) {
                Ok(()) => {
                    self.appended.remove(&name);
                    changed = true;
                }
                Err(e) => {
                    out.problem = Some(format!("cannot remove {name}: {e}"));
                    self.appended.insert(name);
                }
            }
        }
        move_aside.extend(rejects.into_iter().map(|(name, _)| name));
        if !move_aside.is_empty() {
            let rejected = self.inbox.join(REJECTED_DIR);
            if let Err(e) = std::fs::create_dir_all(&rejected) {
                out.problem = Some(format!("cannot create {}: {e}", rejected.display()));
            }
            for name in move_aside {
                match std::fs::rename(self.inbox.join(&name), rejected.join(&name)) {
                    Ok(()) => {
                        self.refused.remove(&name);
                        changed = true;
                    }
                    Err(e) => {
                        out.problem = Some(format!("cannot move {name} aside: {e}"));
                        self.refused.insert(name);
                    }
                }
            }
            if let Err(e) = sync_dir(&rejected) {
                out.problem = Some(format!("cannot sync {}: {e}", rejected.display()));
            }
        }
        if changed {
            if let Err(e) = sync_dir(&self.inbox) {
                out.problem = Some(format!("cannot sync {}: {e}", self.inbox.display()));
            }
        }
        Ok(out)
    }

    /// Whether the record at `seq` is this submission's event. A record that
    /// cannot be read counts as absent: appending twice beats losing it.
    fn in_log(&self, seq: u64, next_seq: u64, event: &EventRecord) -> bool {
        if seq >= next_seq {
            return false;
        }
        match self.reader.records(seq..=seq) {
            Ok(r) => r
                .first()
                .is_some_and(|r| r.seq.0 == seq && r.content == NewRecord::Event(event.clone())),
            Err(_) => false,
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future of the archive to completion on this thread (its futures
/// are woken by the writer thread, so no runtime is needed).
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(detail: &str) -> Submission {
        Submission {
            id: [7; ID_LEN],
            event: EventRecord::Audit {
                actor: "ada".into(),
                action: "export".into(),
                detail: detail.into(),
            },
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let master = MasterKey::from_bytes([1; 32]);
        let id = [2; 16];
        let s = sub("query: insider trading");
        let bytes = seal(&master, &id, &s).unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(open(&master, &id, &bytes).unwrap(), s);
        // Another key, another archive, a changed byte or id: refused.
        assert!(open(&MasterKey::from_bytes([9; 32]), &id, &bytes).is_err());
        assert!(open(&master, &[3; 16], &bytes).is_err());
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&master, &id, &flipped).is_err());
        let mut other_id = bytes.clone();
        other_id[10] ^= 1;
        assert!(open(&master, &id, &other_id).is_err());
        assert!(open(&master, &id, &bytes[..HEADER_LEN]).is_err());
        assert!(open(&master, &id, b"garbage").is_err());
    }

    #[test]
    fn names_are_classified() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            classify(&format!("{id}.sub")),
            Entry::Pending {
                name: format!("{id}.sub"),
                id: id.into()
            }
        );
        assert_eq!(
            classify(&format!("{id}.42.claimed")),
            Entry::Claimed {
                name: format!("{id}.42.claimed"),
                id: id.into(),
                seq: 42
            }
        );
        for bad in ["x.sub", "notes.txt", &format!("{id}.x.claimed")] {
            assert_eq!(classify(bad), Entry::Foreign { name: bad.into() });
        }
    }
}
