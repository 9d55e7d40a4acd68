//! Storage fault injection: the log writer takes its storage through [`Storage`], so
//! every mutating call can be made to fail. For each call of a reference run, in turn,
//! the call fails, either before its effect or after it (an append leaves a durable torn
//! prefix; a sync, create, put, seal, truncate or remove takes effect and still reports
//! an error). The writer stops at the first error, as the serving writer does; then the
//! machine "crashes" (unsynced bytes are lost) and the log is reopened on the same
//! storage. Every acknowledged record must be there, unchanged and in order; nothing may
//! be there that was never handed to the writer; and the reopened log must verify clean.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::archive::ArchiveReader;
use crate::keys::MasterKey;
use crate::log::{recovery_event, LogLimits, LogWriter};
use crate::record::{EventRecord, NewRecord};
use crate::storage::{
    AppendError, AppendHandle, CreateError, ListError, MemStorage, OpenAppendError, PutError,
    ReadError, RemoveError, SealError, Storage, SyncError, TruncateError,
};
use crate::verify::verify_storage;

/// When the chosen call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before it has any effect.
    Before,
    /// After its effect (for an append: after half of the bytes are durable).
    After,
}

#[derive(Debug)]
struct Plan {
    calls: u64,
    fail_at: Option<u64>,
    mode: Mode,
}

/// [`MemStorage`] whose `fail_at`-th mutating call fails.
#[derive(Debug, Clone)]
struct Faulty {
    inner: MemStorage,
    plan: Arc<Mutex<Plan>>,
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

impl Faulty {
    /// Counts a mutating call; `Some(mode)` if this one is to fail.
    fn tick(&self) -> Option<Mode> {
        let mut p = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        p.calls += 1;
        (p.fail_at == Some(p.calls)).then_some(p.mode)
    }
}

struct FaultyAppend {
    inner: Box<dyn AppendHandle>,
    storage: Faulty,
}

impl AppendHandle for FaultyAppend {
    fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        let io = |source| AppendError::Io {
            name: "segment".into(),
            source,
        };
        match self.storage.tick() {
            None => self.inner.append(bytes),
            Some(Mode::Before) => Err(io(injected())),
            Some(Mode::After) => {
                let half = bytes.get(..bytes.len() / 2).unwrap_or_default();
                self.inner.append(half)?;
                let _ = self.inner.sync();
                Err(io(injected()))
            }
        }
    }

    fn sync(&mut self) -> Result<(), SyncError> {
        let io = |source| SyncError::Io {
            name: "segment".into(),
            source,
        };
        match self.storage.tick() {
            None => self.inner.sync(),
            Some(Mode::Before) => Err(io(injected())),
            Some(Mode::After) => {
                self.inner.sync()?;
                Err(io(injected()))
            }
        }
    }
}

/// Runs `op` unless this call is to fail before its effect; fails after it if asked.
fn around<T, E>(
    s: &Faulty,
    err: impl Fn() -> E,
    op: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match s.tick() {
        None => op(),
        Some(Mode::Before) => Err(err()),
        Some(Mode::After) => {
            op()?;
            Err(err())
        }
    }
}

impl Storage for Faulty {
    fn list(&self, dir: &str) -> Result<Vec<String>, ListError> {
        self.inner.list(dir)
    }
    fn read(&self, name: &str) -> Result<Vec<u8>, ReadError> {
        self.inner.read(name)
    }
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        self.inner.read_at(name, offset, len)
    }
    fn is_sealed(&self, name: &str) -> Result<bool, ReadError> {
        self.inner.is_sealed(name)
    }
    fn create(&self, name: &str) -> Result<Box<dyn AppendHandle>, CreateError> {
        let err = || CreateError::Io {
            name: name.into(),
            source: injected(),
        };
        let inner = around(self, err, || self.inner.create(name))?;
        Ok(Box::new(FaultyAppend {
            inner,
            storage: self.clone(),
        }))
    }
    fn open_append(&self, name: &str) -> Result<Box<dyn AppendHandle>, OpenAppendError> {
        let inner = self.inner.open_append(name)?;
        Ok(Box::new(FaultyAppend {
            inner,
            storage: self.clone(),
        }))
    }
    fn truncate(&self, name: &str, len: u64) -> Result<(), TruncateError> {
        let err = || TruncateError::Io {
            name: name.into(),
            source: injected(),
        };
        around(self, err, || self.inner.truncate(name, len))
    }
    fn seal(&self, name: &str) -> Result<(), SealError> {
        let err = || SealError::Io {
            name: name.into(),
            source: injected(),
        };
        around(self, err, || self.inner.seal(name))
    }
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        let err = || PutError::Io {
            name: name.into(),
            source: injected(),
        };
        around(self, err, || self.inner.put_new(name, bytes))
    }
    fn remove(&self, name: &str) -> Result<(), RemoveError> {
        let err = || RemoveError::Io {
            name: name.into(),
            source: injected(),
        };
        around(self, err, || self.inner.remove(name))
    }
}

fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[8; 32])
}

fn limits() -> LogLimits {
    LogLimits {
        // Small segments and frequent checkpoints: the run rolls and checkpoints often.
        segment_max_bytes: 1500,
        segment_max_age: Duration::from_secs(3600),
        checkpoint_every: 3,
    }
}

fn audit(i: u64) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "officer".into(),
        action: "fault-test".into(),
        detail: format!("record {i}"),
    })
}

/// Two sessions of appends in batches of one to three, each followed by the roll
/// check the serving writer makes, and a clean finish. Returns the acknowledged
/// records (seq, content) and everything handed to the writer, until the first error.
fn run(storage: Arc<dyn Storage>) -> (Vec<(u64, NewRecord)>, Vec<NewRecord>) {
    let mut acked = Vec::new();
    let mut handed = Vec::new();
    let mut i = 0u64;
    for _session in 0..2 {
        let Ok((mut w, cut)) = LogWriter::open(storage.clone(), master(), signer(), limits())
        else {
            return (acked, handed);
        };
        if let Some(cut) = cut {
            let r = recovery_event(&cut);
            handed.push(r.clone());
            match w.append_batch(vec![r]) {
                Ok(a) => acked.extend(a.into_iter().map(|a| (a.record.seq.0, a.record.content))),
                Err(_) => return (acked, handed),
            }
        }
        for batch in [1usize, 3, 2, 1, 3, 2, 2, 1, 3] {
            let recs: Vec<NewRecord> = (0..batch)
                .map(|_| {
                    i += 1;
                    audit(i)
                })
                .collect();
            handed.extend(recs.iter().cloned());
            match w.append_batch(recs) {
                Ok(a) => acked.extend(a.into_iter().map(|a| (a.record.seq.0, a.record.content))),
                Err(_) => return (acked, handed),
            }
            if w.maybe_roll().is_err() || w.checkpoint_if_pending().is_err() {
                return (acked, handed);
            }
        }
        if w.finish().is_err() {
            return (acked, handed);
        }
    }
    (acked, handed)
}

#[test]
fn no_storage_fault_loses_an_acknowledged_record_or_invents_one() {
    // The reference run counts the mutating calls.
    let reference = Faulty {
        inner: MemStorage::new(),
        plan: Arc::new(Mutex::new(Plan {
            calls: 0,
            fail_at: None,
            mode: Mode::Before,
        })),
    };
    let (all, _) = run(Arc::new(reference.clone()));
    assert_eq!(all.len(), 36);
    let calls = reference.plan.lock().map(|p| p.calls).unwrap_or(0);
    assert!(calls > 60, "{calls} calls");

    let mut checked = 0;
    let mut stopped_early = 0;
    for fail_at in 1..=calls {
        for mode in [Mode::Before, Mode::After] {
            let s = Faulty {
                inner: MemStorage::new(),
                plan: Arc::new(Mutex::new(Plan {
                    calls: 0,
                    fail_at: Some(fail_at),
                    mode,
                })),
            };
            let (acked, handed) = run(Arc::new(s.clone()));
            if acked.len() < all.len() {
                stopped_early += 1;
            }
            let case = format!("call {fail_at} failing {mode:?}");
            // Power loss right after the error, then a restart on the same storage.
            s.inner.crash();
            let mem: Arc<dyn Storage> = Arc::new(s.inner.clone());
            let (mut w, cut) = LogWriter::open(mem.clone(), master(), signer(), limits())
                .unwrap_or_else(|e| panic!("{case}: reopening fails: {e}"));
            if let Some(cut) = cut {
                w.append_batch(vec![recovery_event(&cut)])
                    .unwrap_or_else(|e| panic!("{case}: recovery record: {e}"));
            }
            w.finish()
                .unwrap_or_else(|e| panic!("{case}: finishing after recovery: {e}"));
            let report = verify_storage(
                mem.as_ref(),
                Some(&master()),
                &signer().verifying_key(),
                |_, _| {},
            );
            assert!(report.is_clean(), "{case}: {:?}", report.problems);

            let reader = ArchiveReader::from_parts("/nonexistent".into(), mem, master())
                .unwrap_or_else(|e| panic!("{case}: reader: {e}"));
            let mut found = Vec::new();
            reader
                .scan(1, |e| {
                    found.extend(e.record.map(|r| (r.seq.0, r.content)));
                    Ok::<(), crate::archive::ReadError>(())
                })
                .unwrap_or_else(|e| panic!("{case}: reading back: {e}"));
            for (seq, content) in &acked {
                assert!(
                    found.iter().any(|(s, c)| s == seq && c == content),
                    "{case}: acknowledged seq {seq} lost"
                );
            }
            for (seq, content) in &found {
                let known = handed.contains(content)
                    || matches!(content, NewRecord::Event(EventRecord::Recovery { .. }));
                assert!(known, "{case}: seq {seq} was never handed to the writer");
            }
            let seqs: Vec<u64> = found.iter().map(|(s, _)| *s).collect();
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "{case}: seqs {seqs:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, calls * 2);
    // Most faults cut the run short (those in the last roll and finish come after the
    // last acknowledgement).
    assert!(
        stopped_early * 4 >= checked * 3,
        "{stopped_early} of {checked}"
    );
    eprintln!("{checked} faults injected over {calls} storage calls");
}
