#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a crash on peer data.
#![cfg_attr(test, allow(clippy::unwrap_used))]
//! `custos-archive`: the encrypted, append-only, hash-chained record log of
//! Custos, its blind full-text index, search and verification.
//!
//! ```text
//!  append (tokio) ──▶ writer thread: batch ─▶ encrypt+chain ─▶ 1 write + fsync ─▶ ack
//!                                                    │
//!                                                    ▼
//!                     indexer thread: blind tokens ─▶ tantivy (commit every 500 ms)
//!  search ─▶ query ─▶ blind index ─▶ (seq, segment, offset) ─▶ log ─▶ decrypt ─▶ Hit
//!  verify ─▶ every frame, record, chain link, checkpoint ─▶ Problem{segment, offset, seq, what}
//!  every reader (verify, recovery, scan, tail, export) ─▶ walk::SegmentWalk + walk::open_record
//!  index commit ─▶ payload = HMAC'd mark (seq, chain head, opstamp); readers check it
//!  submit_audit (other process) ─▶ inbox/ (encrypted file) ─▶ writer thread drains ─▶ append
//!  expiry ─▶ verify ─▶ plan (holds, policies, segments) ─▶ shred record ─▶ key gone ─▶ index purge
//! ```
//!
//! Modules: [`record`] (model and canonical encoding), [`segment`] (file format,
//! encryption, chain), [`keys`] (master, signing and data keys), [`storage`]
//! (the byte-store trait and its file and memory implementations), [`log`]
//! (recovery and the append path), [`index`] (blind tantivy index), [`query`]
//! (search syntax), [`walk`] (the one segment walk and record check every reader
//! uses), [`verify`], [`witness`] (checkpoints kept outside the archive),
//! [`archive`] (the public façade: writer, readers, tail, index upkeep and the writer
//! lock), [`inbox`] (audit events handed over by other processes),
//! [`grouping`] (copies of one logical message, for the views), [`retention`] (classes,
//! legal holds and the expiry decision; the job is `archive::expiry`).
//! The on-disk format is described in `docs/archive-format.md`.

pub mod archive;
pub mod bucket;
pub mod export;
#[cfg(test)]
mod fault_tests;
pub mod grouping;
pub mod inbox;
pub mod index;
pub mod journal;
pub mod keys;
pub mod log;
pub mod query;
pub mod record;
pub mod retention;
pub mod segment;
pub mod state;
pub mod storage;
pub mod time;
pub mod verify;
pub mod vocab;
pub mod walk;
pub mod witness;

pub use archive::{
    reindex, update_index, AppendError, AppendReceipt, Archive, ArchiveConfig, ArchiveReader,
    BucketCopy, ChainEntry, CloseError, ErasureGroup, ErasureReport, ExpiryError, ExpiryPlan,
    ExpiryReport, Hit, IndexCatchUp, LiveCopy, OpenError, ReadError, ReindexError, SearchError,
    Searched, SegmentPlan, ShredError, ShredSeen, Submitted, TailCursor, Uncovered, WRITER_LOCK,
};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use export::{
    export, export_with, verify_export, ExportError, ExportOptions, ExportProblem, ExportReport,
    ExportRequest, ExportSummary, SelectedBy,
};
pub use grouping::{group, merge_newest, CopyRef, MessageHit};
pub use inbox::{submit_audit, submit_audit_in, AuditSubmitted, SubmitError};
pub use keys::{
    keys_init, load_signing_key, load_verifying_key, KeyError, KeysCreated, MasterKey,
    MASTER_KEY_ENV,
};
pub use record::{
    Action, Capture, Direction, Edit, EditKind, EventRecord, Leg, MessageRecord, NewRecord,
    Outcome, Record, RecordSeq, SessionId, SharedFile, Text, Via,
};
pub use time::Timestamp;
pub use verify::{
    check_witness_entries, verify, verify_in, verify_witnessed, verify_witnessed_in, Problem,
    ShredReport, VerifyReport,
};

/// Test hook for crash-consistency tests: with `CUSTOS_CRASH_AT=<point>` in the
/// environment the process kills itself with SIGKILL at that point (nothing flushed, no
/// destructor run), exactly as `kill -9` would. Unset, it costs one environment lookup.
pub(crate) fn crash_point(point: &str) {
    if std::env::var_os("CUSTOS_CRASH_AT").is_some_and(|v| v == point) {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        std::process::abort();
    }
}
