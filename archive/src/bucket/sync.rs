//! The object sync job and the bucket's verification.
//!
//! Every change the job makes to the bucket is written to the chain as an audit record
//! (`object.stored`, `object.legal-hold`, `object.key-deleted`), so `verify` knows
//! which object versions must exist, with which content and lock, and which may be gone.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::s3::{LockMode, PutOptions, VersionEntry};
use super::Remote;
use crate::archive::{Archive, ArchiveReader, ReadError};
use crate::export::hex;
use crate::record::{EventRecord, NewRecord};
use crate::retention::{Decision, Keep, RetentionPolicy};
use crate::segment;
use crate::time::Timestamp;
use crate::witness::WitnessEntry;

/// Audit action: a sealed segment and its wrapped key are in the bucket, locked.
pub const OBJECT_STORED: &str = "object.stored";
/// Audit action: the legal-hold flag of a segment's objects was set or cleared.
pub const OBJECT_LEGAL_HOLD: &str = "object.legal-hold";
/// Audit action: the key object of a shredded segment was deleted from the bucket.
pub const OBJECT_KEY_DELETED: &str = "object.key-deleted";

/// Who the job's records name.
const ACTOR: &str = "custos object sync";

/// The least time a lock is set ahead: S3 refuses a retain-until in the past (a segment
/// already due when it is uploaded is shredded by the next expiry run anyway).
const MIN_LOCK_MS: i64 = 5_000;
/// What "kept forever" (a permanent class, or one no longer configured) locks for.
const FOREVER_YEARS: u32 = 100;

/// One object version the job stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredObject {
    /// The archive file (`segments/seg-0000000001.log`).
    pub name: String,
    /// The object name in the bucket.
    pub key: String,
    pub version_id: Option<String>,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    pub bytes: u64,
}

/// The detail of an `object.stored` record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredObjects {
    pub segment: u64,
    pub objects: Vec<StoredObject>,
    pub mode: LockMode,
    /// RFC 3339.
    pub retain_until: String,
    pub legal_hold: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LegalHoldChange {
    segment: u64,
    on: bool,
    matters: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeyDeleted {
    segment: u64,
    key: String,
    versions: Vec<String>,
}

/// What the chain says about the bucket.
#[derive(Debug, Clone, Default)]
pub struct ObjectRecords {
    /// Per segment, the record's seq and what it stored.
    pub stored: BTreeMap<u64, (u64, StoredObjects)>,
    /// The legal-hold flag the last record set, per segment.
    pub legal_hold: BTreeMap<u64, bool>,
    pub keys_deleted: BTreeSet<u64>,
    /// Segments with a shred record.
    pub shredded: BTreeSet<u64>,
    /// Per shredded segment, the segment that holds its (first) shred record.
    pub shred_recorded_in: BTreeMap<u64, u64>,
    /// Object records whose detail cannot be read (seq).
    pub unreadable: Vec<u64>,
}

/// Reads the object records (and shred records) of the whole chain.
pub fn object_records(reader: &ArchiveReader) -> Result<ObjectRecords, ReadError> {
    let mut out = ObjectRecords::default();
    reader.scan(1, |e| {
        let Some(rec) = e.record else {
            return Ok::<(), ReadError>(());
        };
        let NewRecord::Event(ev) = &rec.content else {
            return Ok(());
        };
        match ev {
            EventRecord::Shred { segment, .. } => {
                out.shredded.insert(*segment);
                out.shred_recorded_in.entry(*segment).or_insert(e.segment);
            }
            EventRecord::Audit { action, detail, .. } if action == OBJECT_STORED => {
                match serde_json::from_str::<StoredObjects>(detail) {
                    Ok(s) => {
                        out.legal_hold.insert(s.segment, s.legal_hold);
                        out.stored.insert(s.segment, (rec.seq.0, s));
                    }
                    Err(_) => out.unreadable.push(rec.seq.0),
                }
            }
            EventRecord::Audit { action, detail, .. } if action == OBJECT_LEGAL_HOLD => {
                match serde_json::from_str::<LegalHoldChange>(detail) {
                    Ok(c) => {
                        out.legal_hold.insert(c.segment, c.on);
                    }
                    Err(_) => out.unreadable.push(rec.seq.0),
                }
            }
            EventRecord::Audit { action, detail, .. } if action == OBJECT_KEY_DELETED => {
                match serde_json::from_str::<KeyDeleted>(detail) {
                    Ok(k) => {
                        out.keys_deleted.insert(k.segment);
                    }
                    Err(_) => out.unreadable.push(rec.seq.0),
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(out)
}

/// What one sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Segments put in the bucket now, with their retain-until.
    pub stored: Vec<(u64, Timestamp)>,
    /// Segments whose local copy was removed (`keep_local = false`).
    pub dropped_local: Vec<u64>,
    pub holds_set: Vec<u64>,
    pub holds_cleared: Vec<u64>,
    /// Shredded segments whose key object is now gone from the bucket.
    pub keys_deleted: Vec<u64>,
    /// Shredded segments whose key object the bucket still refuses to delete, and why.
    pub keys_pending: Vec<(u64, String)>,
    /// The seq of the checkpoint put in the bucket's witness now, if a new one.
    pub witnessed: Option<u64>,
    /// The index copy put in the bucket (or why not).
    pub index: Option<Result<super::IndexUpload, String>>,
}

/// Where the bucket witness keeps its entries, under a chain's prefix.
pub const WITNESS_FOLDER: &str = "witness/";

/// The object name (under the chain's prefix) of the witness entry for checkpoint `seq`.
pub fn witness_object_name(seq: u64) -> String {
    format!("{WITNESS_FOLDER}cp-{seq:020}.wit")
}

/// The seq an object name under the witness folder says it holds (`cp-<20 digits>.wit`).
fn witness_object_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("cp-")?.strip_suffix(".wit")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Every witness entry in the bucket for `remote`'s chain, oldest first, read from every
/// version of every object under the witness folder, not only the current one. Object
/// Lock keeps a locked version, but anyone with `s3:PutObject` can put a new current
/// version over it: an older genuine entry put over each newer one would hide records
/// cut since, and a delete marker hides an entry from a plain listing. So each object's
/// versions must all hold the same entry, of the seq its name says, and no delete marker
/// may be over one; every distinct entry found is returned, so the log must reach the
/// locked original too. What is wrong is a problem for `verify` to name (object and
/// version), not a reason to stop.
pub fn bucket_witness(remote: &Remote) -> Result<(Vec<WitnessEntry>, Vec<String>), SyncError> {
    let base = remote.key(WITNESS_FOLDER);
    let mut objects: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
    for v in remote.client.list_versions(&base)? {
        objects.entry(v.key.clone()).or_default().push(v);
    }
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut bad = Vec::new();
    for (key, versions) in objects {
        let named = key.strip_prefix(&base).and_then(witness_object_seq);
        if named.is_none() {
            bad.push(format!(
                "{key}: not named as a witness entry (cp-<seq, 20 digits>.wit)"
            ));
        }
        // (version, the entry it holds) for each version that holds one.
        let mut held: Vec<(&str, WitnessEntry)> = Vec::new();
        for v in &versions {
            let version = v.version_id.as_str();
            if v.delete_marker {
                bad.push(format!(
                    "{key}: delete marker {version} over a witness entry{}",
                    if v.is_latest {
                        " (it hides the entry from a plain listing; the locked versions are still there)"
                    } else {
                        ""
                    }
                ));
                continue;
            }
            if v.size != crate::witness::ENTRY_LEN as u64 {
                bad.push(format!(
                    "{key} version {version}: {} bytes, not a witness entry",
                    v.size
                ));
                continue;
            }
            let Some(bytes) = remote.client.get_object(&key, Some(version))? else {
                bad.push(format!("{key} version {version}: listed but gone"));
                continue;
            };
            let Some(entry) = WitnessEntry::from_bytes(&bytes) else {
                bad.push(format!("{key} version {version}: not a witness entry"));
                continue;
            };
            if named.is_some_and(|seq| seq != entry.checkpoint.seq) {
                bad.push(format!(
                    "{key} version {version}: holds the entry of seq {}, not the one its name says",
                    entry.checkpoint.seq
                ));
            }
            if seen.insert(bytes) {
                entries.push(entry.clone());
            }
            held.push((version, entry));
        }
        // The sync puts an entry once (again only with the same bytes, after a crash):
        // a version with other bytes was put over it by someone else.
        if let Some((first, entry)) = held.first() {
            for (other, e) in held.iter().skip(1).filter(|(_, e)| e != entry) {
                bad.push(format!(
                    "{key}: version {other} (seq {}) and version {first} (seq {}) hold different entries: each entry is written once, so one of them was put over the other",
                    e.checkpoint.seq, entry.checkpoint.seq
                ));
            }
        }
    }
    entries.sort_by_key(|e| e.checkpoint.seq);
    Ok((entries, bad))
}

/// Why the sync stopped. What was recorded before stays recorded.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Storage(#[from] crate::storage::ReadError),
    #[error("object store: {0}")]
    S3(#[from] super::S3Error),
    #[error("object store: {0}")]
    Check(String),
    /// An object a snapshot lists is gone: pruned by a newer sync while it was read,
    /// or deleted.
    #[error("object store: {0}")]
    Gone(String),
    #[error("object sync: {0}")]
    Task(String),
}

enum Step {
    Record(String, String),
}

struct Planned {
    steps: Vec<Step>,
    report: SyncReport,
    /// Segments stored (now or before) whose local copy may go.
    droppable: Vec<u64>,
}

fn b64_sha256(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// Puts `body` as a new version of `key` locked until `until` and checks what the
/// server kept. If the newest version already holds the same bytes (an upload whose
/// record was lost in a crash), that version is used instead of a second one.
fn put_checked(
    remote: &Remote,
    name: &str,
    body: &[u8],
    until: Timestamp,
    legal_hold: bool,
) -> Result<StoredObject, SyncError> {
    let key = remote.key(name);
    let want = b64_sha256(body);
    let existing = remote.client.head_object(&key, None)?;
    let version_id = match existing {
        Some(h) if h.checksum_sha256.as_deref() == Some(want.as_str()) => h.version_id,
        _ => remote.client.put_object(
            &key,
            body,
            &PutOptions {
                lock: Some((remote.lock_mode, until)),
                legal_hold,
            },
        )?,
    };
    let head = remote
        .client
        .head_object(&key, version_id.as_deref())?
        .ok_or_else(|| SyncError::Check(format!("{key}: not found right after upload")))?;
    if head.len != body.len() as u64 {
        return Err(SyncError::Check(format!(
            "{key}: the bucket holds {} bytes, {} were sent",
            head.len,
            body.len()
        )));
    }
    match &head.checksum_sha256 {
        Some(c) if *c == want => {}
        Some(c) => {
            return Err(SyncError::Check(format!(
                "{key}: the bucket's SHA-256 {c} is not the sent bytes' {want}"
            )))
        }
        None => {
            // The server keeps no checksum: read the bytes back.
            let back = remote
                .client
                .get_object(&key, version_id.as_deref())?
                .unwrap_or_default();
            if back != body {
                return Err(SyncError::Check(format!(
                    "{key}: the bytes read back are not the bytes sent"
                )));
            }
        }
    }
    if head.lock_mode.is_none() || head.retain_until.is_none_or(|t| t.0 + 1000 < until.0) {
        return Err(SyncError::Check(format!(
            "{key}: the bucket did not keep the Object Lock asked for ({} until {until}); is Object Lock enabled on the bucket?",
            remote.lock_mode.as_s3()
        )));
    }
    Ok(StoredObject {
        name: name.to_string(),
        key,
        version_id,
        sha256: hex::encode(&Sha256::digest(body)),
        bytes: body.len() as u64,
    })
}

fn plan_and_upload(
    archive: &Archive,
    remote: &Remote,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Result<Planned, SyncError> {
    let reader = archive.reader();
    let records = object_records(reader)?;
    if !records.unreadable.is_empty() {
        return Err(SyncError::Check(format!(
            "object record(s) at seq {:?} cannot be read; nothing is changed in the bucket until they are",
            records.unreadable
        )));
    }
    let storage = reader.storage();
    // Which segments are sealed is read before the plan: one sealed in between would
    // be missing from the plan and be locked as if it were kept forever.
    let sealed: Vec<u64> = crate::log::segment_ids(storage)
        .map_err(|e| SyncError::Task(e.to_string()))?
        .into_iter()
        .filter(|id| {
            storage
                .is_sealed(&segment::segment_name(*id))
                .unwrap_or(false)
        })
        .collect();
    let plan = reader.expiry_plan(policy, now)?;
    let mut steps = Vec::new();
    let mut report = SyncReport::default();
    let mut droppable: Vec<u64> = records.stored.keys().copied().collect();
    let mut newest_until: Option<Timestamp> = records
        .stored
        .values()
        .filter_map(|(_, s)| Timestamp::parse(&s.retain_until).ok())
        .max();
    // 1. Sealed segments not yet in the bucket (an empty one too: the chain's
    //    segment numbering must be complete for a node reading only the bucket).
    let planned: BTreeMap<u64, &crate::archive::SegmentPlan> =
        plan.segments.iter().map(|s| (s.facts.segment, s)).collect();
    for id in sealed {
        if records.stored.contains_key(&id) || records.shredded.contains(&id) {
            continue;
        }
        let s = planned.get(&id);
        let seg_name = segment::segment_name(id);
        let key_name = segment::key_name(id);
        let (Ok(seg_bytes), Ok(key_bytes)) = (storage.read(&seg_name), storage.read(&key_name))
        else {
            // No key: shredded or damaged; verify reports which.
            continue;
        };
        let due = s
            .and_then(|s| s.due)
            .unwrap_or_else(|| now.plus_years(FOREVER_YEARS));
        let until = due.max(Timestamp(now.0 + MIN_LOCK_MS));
        let held = s.is_some_and(|s| matches!(s.decision, Decision::Keep(Keep::Held(_))));
        let objects = vec![
            put_checked(remote, &seg_name, &seg_bytes, until, held)?,
            put_checked(remote, &key_name, &key_bytes, until, held)?,
        ];
        let detail = StoredObjects {
            segment: id,
            objects,
            mode: remote.lock_mode,
            retain_until: until.to_string(),
            legal_hold: held,
        };
        steps.push(Step::Record(
            OBJECT_STORED.into(),
            serde_json::to_string(&detail).map_err(|e| SyncError::Task(e.to_string()))?,
        ));
        report.stored.push((id, until));
        droppable.push(id);
        newest_until = newest_until.max(Some(until));
    }
    // 2. archive.meta: needed to read anything; locked as long as the longest segment.
    if let Some(until) = newest_until {
        let name = crate::log::META_NAME;
        let key = remote.key(name);
        let meta = storage.read(name)?;
        match remote.client.head_object(&key, None)? {
            None => {
                put_checked(remote, name, &meta, until, false)?;
            }
            Some(h) => {
                if h.checksum_sha256.as_deref() != Some(b64_sha256(&meta).as_str()) {
                    return Err(SyncError::Check(format!(
                        "{key}: the bucket's archive.meta is another archive's (or was replaced); use another prefix"
                    )));
                }
                if h.retain_until.is_none_or(|t| t < until) {
                    remote.client.put_retention(
                        &key,
                        h.version_id.as_deref(),
                        remote.lock_mode,
                        until,
                    )?;
                }
            }
        }
    }
    // 2b. The witness: the chain's newest signed checkpoint, off the host and locked,
    //     so that cutting the active segment's tail (not in the bucket yet) is seen.
    //     The chain's permanent records (holds, shreds, these object records) are kept
    //     forever, and so is what witnesses them: each entry is locked as they are.
    {
        let until = now.plus_years(FOREVER_YEARS);
        let ids = crate::log::segment_ids(storage).map_err(|e| SyncError::Task(e.to_string()))?;
        // The newest checkpoint: a segment just opened may have none yet.
        let mut newest = None;
        for &id in ids.iter().rev().take(3) {
            let bytes = storage.read(&segment::segment_name(id))?;
            if let Some(entry) = WitnessEntry::newest_in(id, &bytes) {
                newest = Some(entry);
                break;
            }
        }
        {
            if let Some(entry) = newest {
                let name = witness_object_name(entry.checkpoint.seq);
                if remote
                    .client
                    .head_object(&remote.key(&name), None)?
                    .is_none()
                {
                    put_checked(remote, &name, &entry.to_bytes(), until, false)?;
                    report.witnessed = Some(entry.checkpoint.seq);
                }
            }
        }
    }
    // 3. Legal holds: a segment past its retention but kept by a hold gets the flag, so
    //    the bucket keeps it too once the lock lapses; cleared when the holds are.
    let held: BTreeMap<u64, Vec<String>> = plan
        .segments
        .iter()
        .filter_map(|s| match &s.decision {
            Decision::Keep(Keep::Held(by)) => Some((s.facts.segment, by.keys().cloned().collect())),
            _ => None,
        })
        .collect();
    for (id, (_, stored)) in &records.stored {
        if records.shredded.contains(id) {
            continue;
        }
        let want = held.contains_key(id);
        let have = records.legal_hold.get(id).copied().unwrap_or(false);
        if want == have {
            continue;
        }
        for o in &stored.objects {
            remote
                .client
                .put_legal_hold(&o.key, o.version_id.as_deref(), want)?;
        }
        let change = LegalHoldChange {
            segment: *id,
            on: want,
            matters: held.get(id).cloned().unwrap_or_default(),
        };
        steps.push(Step::Record(
            OBJECT_LEGAL_HOLD.into(),
            serde_json::to_string(&change).map_err(|e| SyncError::Task(e.to_string()))?,
        ));
        if want {
            report.holds_set.push(*id);
        } else {
            report.holds_cleared.push(*id);
        }
    }
    // 4. Shredded segments: the key object goes once its lock has lapsed.
    for (id, (_, stored)) in &records.stored {
        if !records.shredded.contains(id) || records.keys_deleted.contains(id) {
            continue;
        }
        let key_name = segment::key_name(*id);
        if crate::storage::Storage::read(&crate::storage::FileStorage::new(reader.dir()), &key_name)
            .is_ok()
        {
            // An interrupted shred: the expiry job completes it first.
            continue;
        }
        let Some(obj) = stored.objects.iter().find(|o| o.name == key_name) else {
            continue;
        };
        // Whoever reads only the bucket must find the shred record that allows the
        // deletion: the key object goes once the segment recording the shred is stored.
        if let Some(at) = records.shred_recorded_in.get(id) {
            if !records.stored.contains_key(at) {
                report.keys_pending.push((
                    *id,
                    format!("its shred record is in segment {at}, not in the bucket yet"),
                ));
                continue;
            }
        }
        if let Ok(until) = Timestamp::parse(&stored.retain_until) {
            if until > now {
                report
                    .keys_pending
                    .push((*id, format!("{} is locked until {until}", obj.key)));
                continue;
            }
        }
        let versions: Vec<VersionEntry> = remote
            .client
            .list_versions(&obj.key)?
            .into_iter()
            .filter(|v| v.key == obj.key)
            .collect();
        let mut deleted = Vec::new();
        let mut refused = None;
        for v in &versions {
            match remote
                .client
                .delete_object(&obj.key, Some(&v.version_id), false)
            {
                Ok(()) => deleted.push(v.version_id.clone()),
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        match refused {
            Some(why) => report.keys_pending.push((*id, why)),
            None => {
                let detail = KeyDeleted {
                    segment: *id,
                    key: obj.key.clone(),
                    versions: deleted,
                };
                steps.push(Step::Record(
                    OBJECT_KEY_DELETED.into(),
                    serde_json::to_string(&detail).map_err(|e| SyncError::Task(e.to_string()))?,
                ));
                report.keys_deleted.push(*id);
            }
        }
    }
    droppable.retain(|id| !records.shredded.contains(id));
    // 5. A copy of the index for other nodes and fresh ones: derived data, so a failure
    //    is reported, not a reason to stop.
    let newest_stored = records
        .stored
        .keys()
        .copied()
        .chain(report.stored.iter().map(|(id, _)| *id))
        .max();
    if let Some(m) = newest_stored {
        let end = stored_end(reader, m);
        report.index = Some(end.map_err(|e| e.to_string()).and_then(|end| {
            super::index::upload_index(reader.dir(), remote, end).map_err(|e| e.to_string())
        }));
    }
    Ok(Planned {
        steps,
        report,
        droppable,
    })
}

/// The last seq of stored segment `newest` (the chain up to it is in the bucket).
fn stored_end(reader: &ArchiveReader, newest: u64) -> Result<u64, ReadError> {
    let storage = reader.storage();
    let ids = crate::log::segment_ids(storage).map_err(|e| ReadError::Log(e.into()))?;
    match ids.iter().find(|&&id| id > newest) {
        Some(&next) => {
            let hb = storage.read_at(&segment::segment_name(next), 0, segment::HEADER_LEN)?;
            segment::SegmentHeader::decode(&hb)
                .map(|h| h.first_seq.saturating_sub(1))
                .map_err(|what| ReadError::Corrupt {
                    segment: next,
                    offset: 0,
                    what,
                })
        }
        // Nothing after it yet: the chain ends in it.
        None => reader.chain_end(),
    }
}

impl Archive {
    /// Runs the object sync once: uploads sealed segments (with their keys) under
    /// Object Lock until they are due, sets and clears legal-hold flags as the holds
    /// require, deletes the key objects of shredded segments once their lock has
    /// lapsed, records each change in the chain, and, without `keep_local`, removes
    /// the local copies of stored segments.
    pub async fn sync_objects(
        &self,
        remote: &Remote,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<SyncReport, SyncError> {
        let this = self.clone();
        let r = remote.clone();
        let p = policy.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("custos-object-sync".into())
            .spawn(move || {
                let _ = tx.send(plan_and_upload(&this, &r, &p, now));
            })
            .map_err(|e| SyncError::Task(e.to_string()))?;
        let planned = rx.await.map_err(|e| SyncError::Task(e.to_string()))??;
        for Step::Record(action, detail) in planned.steps {
            self.append(NewRecord::Event(EventRecord::Audit {
                actor: ACTOR.into(),
                action,
                detail,
            }))
            .await
            .map_err(|e| SyncError::Task(e.to_string()))?;
        }
        let mut report = planned.report;
        if !remote.keep_local {
            // Only now, with the records durable, may a local copy go.
            let local = crate::storage::FileStorage::new(self.reader().dir());
            for id in planned.droppable {
                let name = segment::segment_name(id);
                match crate::storage::Storage::remove(&local, &name) {
                    Ok(()) => report.dropped_local.push(id),
                    Err(crate::storage::RemoveError::NotFound { .. }) => {}
                    Err(e) => return Err(SyncError::Task(e.to_string())),
                }
            }
        }
        Ok(report)
    }
}

/// What [`verify_bucket`] found.
#[derive(Debug, Clone, Default)]
pub struct BucketCheck {
    /// (segment, what): tampering or loss.
    pub problems: Vec<(Option<u64>, String)>,
    pub notes: Vec<String>,
    /// Segments whose objects were checked.
    pub segments: usize,
}

/// Checks the bucket against the chain: every recorded object version is still there
/// with the recorded SHA-256 and a lock not shortened; no other version of it holds
/// other bytes; no delete marker hides it; key objects are gone only after a shred;
/// `archive.meta` is there.
pub fn verify_bucket(reader: &ArchiveReader, remote: &Remote) -> Result<BucketCheck, SyncError> {
    let records = object_records(reader)?;
    let mut out = BucketCheck::default();
    for seq in &records.unreadable {
        out.problems
            .push((None, format!("object record at seq {seq} cannot be read")));
    }
    let mut versions: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
    for v in remote.client.list_versions(&remote.prefix)? {
        versions.entry(v.key.clone()).or_default().push(v);
    }
    for (id, (seq, stored)) in &records.stored {
        out.segments += 1;
        let until = Timestamp::parse(&stored.retain_until).ok();
        for o in &stored.objects {
            let is_key = o.name.starts_with("keys/");
            let present = versions.get(&o.key).cloned().unwrap_or_default();
            if is_key && records.keys_deleted.contains(id) {
                if present.iter().any(|v| !v.delete_marker) {
                    out.problems.push((Some(*id), format!(
                        "{}: the key object of shredded segment {id} is in the bucket again after its deletion was recorded",
                        o.key
                    )));
                }
                continue;
            }
            let recorded = present
                .iter()
                .find(|v| Some(&v.version_id) == o.version_id.as_ref() && !v.delete_marker);
            // A shredded segment's key object may go once its lock lapsed, before the
            // record of its deletion reaches the bucket (another node reading this
            // chain sees the shred first).
            let lapsed = until.is_some_and(|u| u <= Timestamp::now());
            if recorded.is_none() && is_key && records.shredded.contains(id) && lapsed {
                out.notes.push(format!(
                    "{}: the key object of shredded segment {id} is gone; the record of its deletion is not in the bucket yet",
                    o.key
                ));
                continue;
            }
            let Some(recorded) = recorded else {
                out.problems.push((
                    Some(*id),
                    format!(
                        "{} version {}: stored at seq {seq} and now gone from the bucket (deleted)",
                        o.key,
                        o.version_id.as_deref().unwrap_or("-")
                    ),
                ));
                continue;
            };
            let head = remote
                .client
                .head_object(&o.key, Some(&recorded.version_id))?;
            match head {
                // Listed a moment ago and gone now: for a shredded segment's key object
                // past its lock, that is the shred's deletion landing while this check
                // ran, as above.
                None if is_key && records.shredded.contains(id) && lapsed => {
                    out.notes.push(format!(
                        "{}: the key object of shredded segment {id} went while the bucket was being checked; the record of its deletion is not in the bucket yet",
                        o.key
                    ));
                }
                None => out.problems.push((
                    Some(*id),
                    format!(
                        "{} version {}: listed but cannot be read",
                        o.key, recorded.version_id
                    ),
                )),
                Some(h) => {
                    let want = base64::engine::general_purpose::STANDARD
                        .encode(hex::decode::<32>(&o.sha256).unwrap_or_default());
                    if h.checksum_sha256.as_deref().is_some_and(|c| c != want) || h.len != o.bytes {
                        out.problems.push((
                            Some(*id),
                            format!(
                                "{} version {}: its content is not what was stored at seq {seq}",
                                o.key, recorded.version_id
                            ),
                        ));
                    }
                    let shortened = match (until, h.retain_until) {
                        (Some(u), Some(t)) => t.0 + 1000 < u.0,
                        (Some(_), None) => true,
                        _ => false,
                    };
                    // Past its date a lock may be gone: that is the lock lapsing.
                    if shortened && until.is_some_and(|u| u > Timestamp::now()) {
                        out.problems.push((
                            Some(*id),
                            format!(
                            "{} version {}: its lock was shortened or removed (recorded until {})",
                            o.key, recorded.version_id, stored.retain_until
                        ),
                        ));
                    }
                }
            }
            if present
                .first()
                .is_some_and(|v| v.is_latest && v.delete_marker)
                || present.iter().any(|v| v.is_latest && v.delete_marker)
            {
                out.problems.push((Some(*id), format!(
                    "{}: a delete marker hides it (someone tried to delete it; the locked version is still there)",
                    o.key
                )));
            }
            for v in present
                .iter()
                .filter(|v| !v.delete_marker && Some(&v.version_id) != o.version_id.as_ref())
            {
                let other = remote.client.head_object(&o.key, Some(&v.version_id))?;
                let same = other.is_some_and(|h| {
                    h.len == o.bytes
                        && h.checksum_sha256.as_deref()
                            == Some(
                                base64::engine::general_purpose::STANDARD
                                    .encode(hex::decode::<32>(&o.sha256).unwrap_or_default())
                                    .as_str(),
                            )
                });
                if same {
                    out.notes.push(format!(
                        "{}: version {} is a second copy of the same bytes",
                        o.key, v.version_id
                    ));
                } else {
                    out.problems.push((Some(*id), format!(
                        "{}: version {} holds other bytes than the ones stored at seq {seq} (written by someone else)",
                        o.key, v.version_id
                    )));
                }
            }
        }
        if records.shredded.contains(id) && !records.keys_deleted.contains(id) {
            out.notes.push(format!(
                "segment {id}: shredded; its key object is deleted from the bucket by the next object sync once its lock has lapsed"
            ));
        }
    }
    if !records.stored.is_empty() && !versions.contains_key(&remote.key(crate::log::META_NAME)) {
        out.problems.push((
            None,
            format!(
                "{}: missing from the bucket",
                remote.key(crate::log::META_NAME)
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_witness_object_name_gives_its_seq_and_nothing_else_does() {
        let name = witness_object_name(42);
        assert_eq!(
            witness_object_seq(name.strip_prefix(WITNESS_FOLDER).unwrap()),
            Some(42)
        );
        for other in [
            "cp-42.wit",
            "cp-0000000000000000004x.wit",
            "cp-00000000000000000042.wit.bak",
            "xx-00000000000000000042.wit",
            "cp-+0000000000000000042.wit",
        ] {
            assert_eq!(witness_object_seq(other), None, "{other}");
        }
    }
}
