//! Hot reload. [`PolicyHandle`] holds the current [`Policy`] behind an `ArcSwap`: readers
//! take a snapshot with one atomic load and keep it for the whole stanza, and `reload()`
//! compiles the new file *before* swapping, so a bad file leaves the old rules in force.
//! [`Watcher`] polls the rules file and the lexicon files it read (mtime, length and a
//! content hash) on an interval in one thread, and calls `reload()` when they change.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::error::RulesError;
use crate::policy::{Policy, PolicySummary};

/// What a successful reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub summary: PolicySummary,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    current: ArcSwap<Policy>,
    /// Serialises reloads so two racing ones cannot swap in the older file last.
    reloading: Mutex<()>,
}

/// A shared, atomically replaceable policy. Cheap to clone; every clone sees reloads.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    shared: Arc<Shared>,
}

impl PolicyHandle {
    /// Loads `path` and holds it.
    pub fn open(path: &Path) -> Result<PolicyHandle, RulesError> {
        let policy = Policy::load(path)?;
        Ok(PolicyHandle::new(path, policy))
    }

    /// Holds an already compiled policy; `reload()` will read `path`.
    pub fn new(path: &Path, policy: Policy) -> PolicyHandle {
        PolicyHandle {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                current: ArcSwap::from_pointee(policy),
                reloading: Mutex::new(()),
            }),
        }
    }

    /// The policy in force now. Keep the `Arc` for the whole stanza so one stanza is
    /// judged by one policy even if a reload lands meanwhile.
    pub fn current(&self) -> Arc<Policy> {
        self.shared.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Compiles the file again and swaps it in. On error the old policy stays.
    pub fn reload(&self) -> Result<ReloadSummary, RulesError> {
        // A poisoned lock only means another reload panicked; the swap is still atomic.
        let _guard = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let policy = Policy::load(&self.shared.path)?;
        let summary = policy.summary();
        self.shared.current.store(Arc::new(policy));
        Ok(ReloadSummary { summary })
    }
}

/// Identity of the watched files' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

/// Modification time, length and content hash of one file.
type Stamp = (SystemTime, u64, u64);

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    Fingerprint(
        paths
            .iter()
            .map(|p| {
                let stamp = std::fs::metadata(p).ok().and_then(|m| {
                    // Hash too: an edit within the mtime granularity that keeps the length
                    // would otherwise go unseen.
                    let bytes = std::fs::read(p).ok()?;
                    let mut h = DefaultHasher::new();
                    bytes.hash(&mut h);
                    Some((m.modified().ok()?, m.len(), h.finish()))
                });
                (p.clone(), stamp)
            })
            .collect(),
    )
}

/// A polling thread that reloads a [`PolicyHandle`] when its files change. Stop it with
/// [`Watcher::stop`]; dropping it also stops the thread (without waiting for it).
#[derive(Debug)]
pub struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Polls every `interval`. `on_reload` gets each reload's outcome (log it; on error
    /// the old rules are still in force, and the file is not retried until it changes).
    pub fn spawn<F>(
        handle: PolicyHandle,
        interval: Duration,
        on_reload: F,
    ) -> std::io::Result<Watcher>
    where
        F: Fn(Result<ReloadSummary, RulesError>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<()>();
        // Taken before returning, not when the thread first runs: a change made right
        // after `spawn` returns (before a busy machine schedules the thread) would
        // otherwise become the baseline and never be reloaded.
        let mut sources = handle.current().sources().to_vec();
        let mut seen = fingerprint(&sources);
        let thread = std::thread::Builder::new()
            .name("custos-policy-watch".into())
            .spawn(move || {
                // Ends when `stop()` sends or the Watcher is dropped.
                loop {
                    match rx.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = fingerprint(&sources);
                    if now == seen {
                        continue;
                    }
                    let result = handle.reload();
                    // `now` was taken before reading: a change landing during the
                    // reload shows up as a difference at the next poll.
                    seen = now;
                    if result.is_ok() {
                        let latest = handle.current().sources().to_vec();
                        if latest != sources {
                            // The new file names other lexicon files.
                            sources = latest;
                            seen = fingerprint(&sources);
                        }
                    }
                    on_reload(result);
                }
            })?;
        Ok(Watcher {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel, which ends the loop.
        self.stop.take();
    }
}
