//! Shared application state, the router (one [`Perm`] per route) and the
//! request plumbing: the signed-in extractor, CSRF checks, security headers,
//! audit writes and following the archive's tail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use custos_archive::archive::TailCursor;
use custos_archive::state::Placed;
use custos_archive::{Archive, ArchiveReader, ChainEntry, EventRecord, NewRecord, ReadError};

use crate::auth::{cookie, Session, Sessions, Throttle, SESSION_COOKIE};
use crate::error::AppError;
use crate::roles::{allows, Perm};
use crate::store::{ChainIdx, MsgRef, SavedCheck, Shown, Spill, Store, CACHE_PAGES};
use crate::WebConfig;

/// Everything a handler can reach.
pub struct App {
    pub cfg: WebConfig,
    pub archive: Archive,
    pub store: RwLock<Store>,
    /// Where the store keeps the rows it does not hold in memory.
    spill: Arc<Spill>,
    /// When the store was last built again because it lost rows.
    repaired: Mutex<Option<Instant>>,
    /// How far the pages taken from the saved state have been looked over.
    checked: Mutex<SavedCheck>,
    /// How many times the state was emptied to be built again ([`App::start_over`]).
    generation: AtomicU64,
    /// Why the follower's last read of the log failed, while it keeps failing.
    follow_error: Mutex<Option<String>>,
    /// Why another node's chain could not be opened or read in the last whole pass.
    peer_failure: Mutex<Option<String>>,
    /// The pages files a state file that may be in place names, as far as this
    /// process knows: the last one put in place durably first, then up to two of
    /// saves whose rename was not made durable ([`Placed::Maybe`]).
    pages_in_place: Mutex<Vec<String>>,
    /// The store is being built from the log behind the pages: at a start with much to
    /// read, after it was dropped to be read again from the first record, or when a
    /// chain was found far behind; cleared when a catch-up finds nothing more to read.
    building: AtomicBool,
    /// Where following the archive left off. The lock also serialises catch-ups,
    /// so two never apply the same records concurrently.
    tail: Mutex<TailCursor>,
    /// Following other nodes' chains (read from the bucket), by local directory.
    peer_tails: Mutex<PeerTails>,
    /// When the store was last saved, and how far it had read then.
    saved: Mutex<Saved>,
    /// Records read while a save holds the store; see [`App::apply`].
    deferred: Mutex<Deferred>,
    /// Signalled when a save is done and what was deferred is applied.
    settled: std::sync::Condvar,
    /// How the state was built at start.
    pub started: Started,
    pub sessions: Mutex<Sessions>,
    pub throttle: Mutex<Throttle>,
}

/// Other nodes' chains as followed so far.
#[derive(Default)]
struct PeerTails {
    chains: HashMap<PathBuf, PeerTail>,
    last: Option<Instant>,
    /// A chain gave a whole slice last time: look again without waiting.
    behind: bool,
    /// A chain could not be opened or read last time: which, and why (for the log;
    /// pages read [`App::peer_failure`]).
    failing: Option<String>,
}

/// What [`App::follow_peers`] found.
#[derive(Default)]
struct PeersFollowed {
    /// A chain does not hold the record the store's part of it was read up to.
    diverged: bool,
    /// A chain gave as many records as asked for: more may be waiting.
    more: bool,
}

struct PeerTail {
    chain: ChainIdx,
    reader: Arc<ArchiveReader>,
    cursor: TailCursor,
    /// The last failure logged, so a lasting one is logged once.
    failing: Option<String>,
}

/// This node's own chain in the store.
const OWN_CHAIN: ChainIdx = 0;

/// Ends a save however [`App::save_blocking`] returns: [`App::save_done`] after the
/// store is let go (dropped after the guard, being declared before it).
struct SaveDone<'a>(&'a App);

impl Drop for SaveDone<'_> {
    fn drop(&mut self) {
        self.0.save_done();
    }
}

/// How often other nodes' chains are looked at: their records arrive in sealed
/// segments through the bucket, so more often would only cost requests.
const PEER_INTERVAL: Duration = Duration::from_secs(2);

/// Locks a mutex; a panic elsewhere while holding it leaves plain data that is still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Records decoded before they are applied to the store, at most.
const APPLY_BATCH: usize = 4096;

/// Records of a chain the follower applies at most per hold of the tail
/// ([`App::follow_slice`]): at a few microseconds each, a slice is about a millisecond
/// of CPU, so a page behind the lowered thread waits little even when the CPU is short.
pub const FOLLOW_SLICE: usize = 256;
/// Pages of the saved state looked over at a time ([`App::check_saved_slice`]), under
/// the store's read lock: 1 MiB, a millisecond or two.
pub const CHECK_SLICE: usize = 1024;

/// At most one rebuild of a store that lost rows in this long.
const REPAIR_EVERY: Duration = Duration::from_secs(600);

/// The store's saved copy: `state/web-ui.state` in the archive directory.
pub const STATE_NAME: &str = "web-ui";
/// The store is saved after reading at least this many records beyond its saved copy
/// (at start, and then at most every [`SAVE_EVERY`]), and at shutdown.
pub const SAVE_AFTER: u64 = 100_000;
pub const SAVE_EVERY: Duration = Duration::from_secs(3600);
/// After a save failed (a full disk, say), the next is tried this much later at the
/// earliest; at shutdown it is tried anyway.
pub const SAVE_RETRY: Duration = Duration::from_secs(600);

/// How the review state was built at start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Started {
    /// The last record of this node's chain its saved copy covered, when that was read
    /// back and the log continues it.
    pub restored_through: Option<u64>,
    /// Records of this node's chain read from the log.
    pub records_read: u64,
    pub seconds: f64,
    /// Whether the rest is being read in the background
    /// ([`crate::WebConfig::build_in_background_above`]).
    pub in_background: bool,
}

/// While the store is being saved (seconds at ten million records) it is held for
/// reading; a catch-up that waited for it to write would hold up every page behind it
/// (a waiting writer keeps new readers out). Records read meanwhile wait here, in the
/// order they were read, and are applied when the save is done.
#[derive(Default)]
struct Deferred {
    /// Saves in progress.
    saving: u32,
    entries: Vec<(ChainIdx, Vec<ChainEntry>)>,
}

#[derive(Clone, Copy, Debug)]
struct Saved {
    /// This node's chain's next seq in the saved copy (1: none).
    next_seq: u64,
    at: Option<Instant>,
    /// When the last save failed, if it did: the next is tried [`SAVE_RETRY`] later.
    failed: Option<Instant>,
}

impl Saved {
    /// Whether a save is due with `read` records read since this one: see
    /// [`App::save_due`].
    fn due(&self, read: u64, building: bool) -> bool {
        // While the state is being built, the save waits for it to catch up: what is
        // saved then is the whole state, and the next save is not an hour away.
        !building
            && read >= SAVE_AFTER
            && self.at.is_none_or(|t| t.elapsed() >= SAVE_EVERY)
            && self.failed.is_none_or(|t| t.elapsed() >= SAVE_RETRY)
    }
}

impl App {
    /// Builds the state: reads the store's saved copy back when there is one that this
    /// log continues, then every record after it; otherwise every record (blocking).
    pub fn new(cfg: WebConfig, archive: Archive) -> Result<App, ReadError> {
        let started = Instant::now();
        let (archive_id, sample_rate, node) = (
            archive.reader().archive_id(),
            cfg.sample_rate,
            cfg.node.clone(),
        );
        // The store's rows beyond those in use go to scratch files beside its saved copy.
        let spill = Spill::new(
            Some(custos_archive::state::state_dir(archive.reader().dir())),
            CACHE_PAGES,
        );
        let restored = restore(&cfg, &archive, spill.clone());
        let fresh = {
            let spill = spill.clone();
            move || Store::spilling(archive_id, sample_rate, node, spill)
        };
        let (store, cursor, saved) = match restored {
            Some((store, covered)) => (
                store,
                TailCursor::resume(covered.next_seq, covered.head),
                covered.next_seq,
            ),
            None => (fresh(), TailCursor::new(), 1),
        };
        let pages_in_place: Vec<String> =
            store.saved_pages().map(str::to_owned).into_iter().collect();
        let mut app = App {
            peer_tails: Mutex::new(PeerTails::default()),
            saved: Mutex::new(Saved {
                next_seq: saved,
                at: None,
                failed: None,
            }),
            deferred: Mutex::new(Deferred::default()),
            settled: std::sync::Condvar::new(),
            started: Started {
                restored_through: None,
                records_read: 0,
                seconds: 0.0,
                in_background: false,
            },
            sessions: Mutex::new(Sessions::new(cfg.session_ttl)),
            throttle: Mutex::new(Throttle::new()),
            store: RwLock::new(store),
            tail: Mutex::new(cursor),
            spill,
            repaired: Mutex::new(None),
            checked: Mutex::new(SavedCheck::default()),
            generation: AtomicU64::new(0),
            follow_error: Mutex::new(None),
            peer_failure: Mutex::new(None),
            pages_in_place: Mutex::new(pages_in_place),
            building: AtomicBool::new(false),
            cfg,
            archive,
        };
        let mut saved = saved;
        // Up to this many records are read before serving; past it, one slice (which
        // checks that the log continues the saved state), and the follower reads the
        // rest while pages are served.
        let first_read = |app: &App, next_seq: u64| {
            let behind = app
                .archive
                .durable_seq()
                .saturating_sub(next_seq.saturating_sub(1));
            if behind > app.cfg.build_in_background_above {
                FOLLOW_SLICE
            } else {
                // Other nodes' chains too: one further behind is left to the follower.
                app.read_at_once()
            }
        };
        let more = match app.catch_up_at_most(first_read(&app, saved)) {
            Err(ReadError::Diverged { seq, what }) if saved > 1 => {
                tracing::warn!(
                    seq,
                    cause = %what,
                    "the saved review state was read from records this log does not hold; reading the whole archive instead"
                );
                app.start_over(&mut lock(&app.tail));
                app.catch_up_at_most(first_read(&app, 1))?
            }
            other => other?,
        };
        app.building.store(more, Ordering::Release);
        // Nothing of the saved copy is kept when it was found not to continue (this
        // node's chain, or another's).
        saved = lock(&app.saved).next_seq;
        let read = read(&app.store).next_seq().saturating_sub(saved);
        app.started = Started {
            restored_through: (saved > 1).then(|| saved - 1),
            records_read: read,
            seconds: started.elapsed().as_secs_f64(),
            in_background: more,
        };
        if more {
            tracing::info!(
                records = read,
                restored = saved > 1,
                behind = app.archive.durable_seq().saturating_sub(read + saved - 1),
                seconds = app.started.seconds,
                "review state being built in the background; pages are served meanwhile"
            );
            return Ok(app);
        }
        tracing::info!(
            records = read,
            restored = saved > 1,
            seconds = app.started.seconds,
            "review state built"
        );
        if read >= SAVE_AFTER {
            app.save_blocking();
        }
        Ok(app)
    }

    /// Applies at most `max` records of a chain (see [`App::catch_up_locked`]):
    /// whether more may be waiting.
    fn catch_up_at_most(&self, max: usize) -> Result<bool, ReadError> {
        let mut cursor = lock(&self.tail);
        self.catch_up_locked(&mut cursor, max)
    }

    /// One step of looking over the pages the state still takes from its saved copy's
    /// pages file ([`Store::check_saved_pages`], [`CHECK_SLICE`] pages under the
    /// store's read lock): whether more are left. A page found changed marks the store
    /// damaged, and the next catch-up builds it again.
    pub fn check_saved_slice(&self) -> bool {
        let mut at = lock(&self.checked);
        read(&self.store).check_saved_pages(&mut at, CHECK_SLICE)
    }

    /// Whether the state is being built from the log and has not caught up yet.
    pub fn building(&self) -> bool {
        self.building.load(Ordering::Acquire)
    }

    /// Refuses, with [`AppError::Rebuilding`], an action that must be checked against
    /// the whole state (a review, a hold) while the state is not whole: being built
    /// from the log, or damaged. `store` is the state as the caller holds it (a state
    /// emptied to be built again is marked as being built before it is put in place).
    pub fn whole(&self, store: &Store) -> Result<(), AppError> {
        if store.damaged() || self.building() || lock(&self.follow_error).is_some() {
            return Err(AppError::Rebuilding);
        }
        Ok(())
    }

    /// Saves the store (blocking) when it has read anything since its saved copy;
    /// failures are logged: the saved copy only shortens the next start.
    pub fn save_blocking(&self) {
        let started = Instant::now();
        lock(&self.deferred).saving += 1;
        let _done = SaveDone(self);
        let store = read(&self.store);
        let covered = store.covered();
        if covered.next_seq <= lock(&self.saved).next_seq {
            return;
        }
        let written = self
            .archive
            .reader()
            .write_state(STATE_NAME)
            .map_err(crate::store::SnapshotError::from)
            .and_then(|mut w| {
                let pages = store.save(&mut w)?;
                // Before another save can begin writing its own: once the state in place
                // names these pages, earlier saves' go; if it does not, these go.
                let dir = self.spill.dir();
                let mut in_place = lock(&self.pages_in_place);
                Ok(w.finish_then(|placed| match placed {
                    Placed::Yes => {
                        crate::store::remove_other_pages(&dir, &[pages.as_str()]);
                        *in_place = vec![pages.clone()];
                    }
                    Placed::No => crate::store::remove_pages(&dir, &pages),
                    // After a crash, the last durable state file or one of these may be
                    // found: their pages stay (the two newest of them at most, so a
                    // directory that never syncs cannot fill the disk) until a save
                    // goes through.
                    Placed::Maybe => {
                        if in_place.len() >= 3 {
                            in_place.remove(1);
                        }
                        in_place.push(pages.clone());
                        let keep: Vec<&str> = in_place.iter().map(String::as_str).collect();
                        crate::store::remove_other_pages(&dir, &keep);
                    }
                })?)
            });
        if written.is_ok() {
            // Noted while the store is still held, so that a start-over (which drops
            // the store and what was saved of it) cannot come in between.
            *lock(&self.saved) = Saved {
                next_seq: covered.next_seq,
                at: Some(Instant::now()),
                failed: None,
            };
        } else {
            lock(&self.saved).failed = Some(Instant::now());
        }
        drop(store);
        match written {
            Ok(path) => {
                tracing::info!(
                    path = %path.display(),
                    through = covered.next_seq - 1,
                    seconds = started.elapsed().as_secs_f64(),
                    "review state saved"
                );
            }
            Err(e) => {
                tracing::warn!(cause = %e, "saving the review state failed; the next start reads more of the archive")
            }
        }
    }

    /// Applies entries of `chain` read from its log, in the order read: now, or once a
    /// save in progress is done ([`Deferred`]).
    fn apply(&self, chain: ChainIdx, entries: Vec<ChainEntry>) {
        let mut deferred = lock(&self.deferred);
        if deferred.saving > 0 {
            deferred.entries.push((chain, entries));
            return;
        }
        // Held while applying: entries read later wait for these.
        let mut store = write(&self.store);
        for (c, earlier) in std::mem::take(&mut deferred.entries) {
            store.apply_chain(c, earlier);
        }
        store.apply_chain(chain, entries);
    }

    /// Ends a save: what was read meanwhile is applied.
    fn save_done(&self) {
        let mut deferred = lock(&self.deferred);
        deferred.saving = deferred.saving.saturating_sub(1);
        if deferred.saving > 0 {
            return;
        }
        if !deferred.entries.is_empty() {
            let mut store = write(&self.store);
            for (c, earlier) in std::mem::take(&mut deferred.entries) {
                store.apply_chain(c, earlier);
            }
        }
        self.settled.notify_all();
    }

    /// Waits until no save is in progress, so that everything caught up is applied.
    /// Only the caller waits: nothing asks for the store meanwhile.
    fn wait_settled(&self) {
        drop(self.settled_deferred());
    }

    /// [`App::wait_settled`], returning the deferred entries locked: no save starts
    /// until they are dropped.
    fn settled_deferred(&self) -> std::sync::MutexGuard<'_, Deferred> {
        let mut deferred = lock(&self.deferred);
        while deferred.saving > 0 {
            deferred = self
                .settled
                .wait(deferred)
                .unwrap_or_else(|p| p.into_inner());
        }
        deferred
    }

    /// Whether the store is due a save: [`SAVE_AFTER`] records read since the last,
    /// which was at least [`SAVE_EVERY`] ago. Saving holds the store for reading;
    /// catch-ups meanwhile leave what they read for after it ([`Deferred`]).
    pub fn save_due(&self) -> bool {
        let saved = *lock(&self.saved);
        let read = read(&self.store).next_seq().saturating_sub(saved.next_seq);
        saved.due(read, self.building())
    }

    /// What pages must say before anything else when the review state is not whole:
    /// it lost rows and awaits being built again, or it is being built again and has
    /// not caught up with the log yet.
    pub fn state_notice(&self) -> Option<String> {
        let (damaged, next) = {
            let store = read(&self.store);
            (store.damaged(), store.next_seq())
        };
        if damaged {
            return Some(
                "Part of the review state could not be read back from its files and \
                 it is being built again from the archive. Until then pages may show less than \
                 the archive holds, and review actions are refused."
                    .to_owned(),
            );
        }
        let own = lock(&self.follow_error).clone();
        let failing = match (own, self.peers_failing()) {
            (Some(e), _) => format!(
                " Reading this node's archive fails at the moment ({e}); it is tried again, \
                 and review and hold actions wait until it reads."
            ),
            (None, Some(e)) => format!(
                " Another node's chain cannot be read at the moment ({e}); it is tried again, \
                 and its records may be missing meanwhile."
            ),
            (None, None) => String::new(),
        };
        if !self.building() {
            return (!failing.is_empty()).then(|| failing.trim_start().to_owned());
        }
        let durable = self.archive.durable_seq();
        let read = next.saturating_sub(1).min(durable);
        Some(format!(
            "The review state is being built from the archive: {read} of this node's \
             {durable} records read so far. Pages show what has been read; review and hold \
             actions wait until it has caught up.{failing}"
        ))
    }

    /// Drops the whole state, so that `cursor` (this node's, locked by the caller) and
    /// every other node's chain are read again from their first record.
    fn start_over(&self, cursor: &mut TailCursor) {
        // Once no save holds the store (the store is not asked for meanwhile, so pages
        // go on), and before another can begin: a save takes `deferred` to start.
        let mut deferred = self.settled_deferred();
        // What was read from the old cursor is read again.
        deferred.entries.clear();
        // Said before the store is emptied: whoever holds the new store sees it.
        self.building.store(true, Ordering::Release);
        // After `building`: whoever sees the new generation sees it being built.
        self.generation.fetch_add(1, Ordering::Release);
        *write(&self.store) = Store::spilling(
            self.archive.reader().archive_id(),
            self.cfg.sample_rate,
            self.cfg.node.clone(),
            self.spill.clone(),
        );
        drop(deferred);
        *cursor = TailCursor::new();
        *lock(&self.peer_tails) = PeerTails::default();
        *lock(&self.saved) = Saved {
            next_seq: 1,
            at: None,
            failed: None,
        };
    }

    /// Applies every record appended since the last catch-up, reading only
    /// the bytes appended since. Blocking file I/O. At most
    /// [`crate::WebConfig::build_in_background_above`] records of a chain are read:
    /// a chain further behind (another node's, just added, say) is left to the
    /// follower, and the state is said to be being built until it has caught up.
    pub fn catch_up_blocking(&self) -> Result<(), ReadError> {
        let mut cursor = lock(&self.tail);
        if self.catch_up_locked(&mut cursor, self.read_at_once())? {
            self.building.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Records of a chain a catch-up reads before the rest is left to the follower.
    fn read_at_once(&self) -> usize {
        usize::try_from(self.cfg.build_in_background_above)
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// How many times the state was emptied to be built again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Notes why the follower's read of the log failed, for pages to say, until a
    /// catch-up reads it again.
    pub fn follow_failed(&self, why: String) {
        *lock(&self.follow_error) = Some(why);
    }

    /// The follower's step: applies at most [`FOLLOW_SLICE`] records of each chain it
    /// reads, in a whole catch-up's order, and stops after the first chain that gives
    /// that many, holding the tail no longer than that. It runs below the relay's
    /// priority, and a page that must show the latest state catches up itself under the
    /// same lock, so it waits for this step, never for the follower's whole backlog.
    /// Returns whether more may be waiting (a chain gave a whole slice).
    ///
    /// During a save it reads nothing: what is read then is held, decoded, until the
    /// save ends, and the follower would pile its whole backlog up there.
    pub fn follow_slice(&self) -> Result<bool, ReadError> {
        let mut cursor = lock(&self.tail);
        if lock(&self.deferred).saving > 0 {
            return Ok(false);
        }
        self.catch_up_locked(&mut cursor, FOLLOW_SLICE)
    }

    /// Applies at most `max` records, in the order one whole catch-up reads them: this
    /// node's chain first, then each other node's in turn (the copy read first keys a
    /// logical message's review item, so the order is what a restart shows). The tail
    /// (`cursor`) is locked by the caller. Returns whether a chain gave `max`.
    fn catch_up_locked(&self, cursor: &mut TailCursor, max: usize) -> Result<bool, ReadError> {
        let more = self.catch_up_chains(cursor, max)?;
        // This node's log reads again.
        *lock(&self.follow_error) = None;
        // Nothing more to read: whatever was being built has caught up. Another
        // node's chain that cannot be read does not hold that up (pages say it): a
        // chain gone for good would otherwise refuse every review until restart.
        if !more {
            self.building.store(false, Ordering::Release);
        }
        Ok(more)
    }

    /// [`App::catch_up_locked`] but for what it says of being caught up.
    fn catch_up_chains(&self, cursor: &mut TailCursor, max: usize) -> Result<bool, ReadError> {
        if read(&self.store).damaged() {
            // Rows it holds outside memory could not be read back (logged where it
            // happened): build it again from the archive rather than show less. Not more
            // than once in REPAIR_EVERY, so a disk that keeps failing is not read
            // again and again; meanwhile review actions are refused.
            let mut repaired = lock(&self.repaired);
            if repaired.is_none_or(|at| at.elapsed() >= REPAIR_EVERY) {
                *repaired = Some(Instant::now());
                drop(repaired);
                tracing::warn!("the review state lost rows; reading every chain afresh");
                self.start_over(cursor);
            }
        }
        // While the state is being built, whoever catches up reads a slice: the
        // follower reads the rest.
        let max = if self.building() {
            max.min(FOLLOW_SLICE)
        } else {
            max
        };
        if self.catch_up_own(cursor, max)? {
            return Ok(true);
        }
        let peers = self.follow_peers(max);
        if !peers.diverged {
            return Ok(peers.more);
        }
        // Another node's chain does not hold what the state was read from (its saved
        // part): the state would go on showing records that chain no longer has and
        // never show the ones it has. Read every chain afresh, as at a start without a
        // saved state; chains read from their first record cannot diverge.
        tracing::warn!(
            "another node's chain does not continue the saved review state; reading every chain afresh"
        );
        self.start_over(cursor);
        let max = max.min(FOLLOW_SLICE);
        if self.catch_up_own(cursor, max)? {
            return Ok(true);
        }
        Ok(self.follow_peers(max).more)
    }

    /// This node's part of [`App::catch_up_locked`]: whether it applied `max` records.
    fn catch_up_own(&self, cursor: &mut TailCursor, max: usize) -> Result<bool, ReadError> {
        // Applied in batches, so a long scan never holds many decoded records at once.
        let mut entries: Vec<ChainEntry> = Vec::new();
        let followed = self.archive.reader().tail_at_most(cursor, max, |e| {
            entries.push(e);
            if entries.len() >= APPLY_BATCH {
                self.apply(OWN_CHAIN, std::mem::take(&mut entries));
            }
            Ok::<(), ReadError>(())
        });
        // The cursor has moved past whatever was handed over before an error;
        // those records would not be offered again, so apply them either way.
        if !entries.is_empty() {
            self.apply(OWN_CHAIN, entries);
        }
        Ok(followed? == max)
    }

    /// Applies what other nodes' chains gained since last time, in turn, stopping after
    /// the first that gives `max` records (looked at every [`PEER_INTERVAL`], or at once
    /// while one is still behind). A chain that cannot be read is logged and tried
    /// again; it never stops this node's own pages.
    fn follow_peers(&self, max: usize) -> PeersFollowed {
        let mut done = PeersFollowed::default();
        let peers = read(&self.cfg.peers).clone();
        if peers.is_empty() {
            return done;
        }
        let mut tails = lock(&self.peer_tails);
        if !tails.behind && tails.last.is_some_and(|t| t.elapsed() < PEER_INTERVAL) {
            return done;
        }
        tails.last = Some(Instant::now());
        tails.behind = false;
        let mut failing = None;
        for p in peers {
            let name = p
                .node
                .as_deref()
                .unwrap_or(crate::store::UNNAMED)
                .to_string();
            let tail = match tails.chains.entry(p.dir.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    // Naming a new chain writes to the store: not under a save, which
                    // would have every page wait behind this write. Tried next time.
                    let deferred = lock(&self.deferred);
                    if deferred.saving > 0 {
                        continue;
                    }
                    match self.archive.reader().open_other(&p.dir) {
                        Ok(reader) => {
                            let mut store = write(&self.store);
                            let chain = store.chain_of(p.node.as_deref());
                            // A chain read before the store was saved goes on from there.
                            let covered = store.covered_of(chain);
                            drop(store);
                            drop(deferred);
                            v.insert(PeerTail {
                                chain,
                                reader: Arc::new(reader),
                                cursor: TailCursor::resume(covered.next_seq, covered.head),
                                failing: None,
                            })
                        }
                        Err(e) => {
                            let why = format!("{name}: {e}");
                            if tails.failing.as_deref() != Some(why.as_str()) {
                                tracing::warn!(node = %name, cause = %e, "another node's chain cannot be opened; its records are not in the queue yet");
                            }
                            failing.get_or_insert(why);
                            continue;
                        }
                    }
                }
            };
            let mut entries: Vec<ChainEntry> = Vec::new();
            let chain = tail.chain;
            let followed = tail.reader.tail_at_most(&mut tail.cursor, max, |e| {
                entries.push(e);
                if entries.len() >= APPLY_BATCH {
                    self.apply(chain, std::mem::take(&mut entries));
                }
                Ok::<(), ReadError>(())
            });
            if !entries.is_empty() {
                self.apply(tail.chain, entries);
            }
            match followed {
                Ok(handed) => {
                    tail.failing = None;
                    if handed == max {
                        // The chains after it wait for it, as in a whole catch-up.
                        done.more = true;
                        break;
                    }
                }
                Err(ReadError::Diverged { seq, what }) => {
                    tracing::warn!(node = %name, seq, cause = %what, "another node's chain does not hold the record the review state read it up to");
                    done.diverged = true;
                }
                Err(e) => {
                    let why = e.to_string();
                    if tail.failing.as_deref() != Some(why.as_str()) {
                        tracing::warn!(node = %name, cause = %why, "following another node's chain failed; retrying");
                    }
                    failing.get_or_insert(format!("{name}: {why}"));
                    tail.failing = Some(why);
                }
            }
        }
        tails.behind = done.more;
        // A pass cut short by a chain that gave a whole slice says nothing of those
        // after it: what was failing stays said.
        if !done.more {
            tails.failing.clone_from(&failing);
            *lock(&self.peer_failure) = failing;
        }
        done
    }

    /// Why another node's chain could not be opened or read the last time it was
    /// looked at, if one could not (its own lock: pages do not wait for a pass).
    fn peers_failing(&self) -> Option<String> {
        lock(&self.peer_failure).clone()
    }

    /// The reader of another node's chain, once it is followed.
    pub fn peer_reader(&self, chain: ChainIdx) -> Option<Arc<ArchiveReader>> {
        lock(&self.peer_tails)
            .chains
            .values()
            .find(|t| t.chain == chain)
            .map(|t| t.reader.clone())
    }

    /// [`App::catch_up`], and then, if a save is in progress, waiting for it to end so
    /// that what was caught up is applied: for a change the caller has just written
    /// and is about to show, or a check against the latest state (legal holds).
    pub async fn catch_up_settled(self: &Arc<App>) -> Result<(), AppError> {
        self.catch_up().await?;
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.wait_settled())
            .await
            .map_err(|e| AppError::Internal(e.to_string()))
    }

    /// The message `at` names and up to `context` messages of its conversation on
    /// each side, once caught up. A message archived while the review state is saved
    /// is applied when the save ends: for a message not found, and only then, this
    /// waits for that.
    pub async fn conversation_around(
        self: &Arc<App>,
        at: &str,
        context: usize,
    ) -> Result<(MsgRef, Vec<Shown>), AppError> {
        self.catch_up().await?;
        if let Some(found) = self.around(at, context) {
            return Ok(found);
        }
        // Only a save holding back records read meanwhile can hide it.
        let held_back = !lock(&self.deferred).entries.is_empty();
        if !held_back || read(&self.store).parse_ref(at).is_none() {
            return Err(AppError::NotFound);
        }
        self.catch_up_settled().await?;
        self.around(at, context).ok_or(AppError::NotFound)
    }

    fn around(&self, at: &str, context: usize) -> Option<(MsgRef, Vec<Shown>)> {
        let store = read(&self.store);
        let seq = store.parse_ref(at)?;
        let shown = store.conversation_view(seq, context, context);
        (!shown.is_empty()).then_some((seq, shown))
    }

    /// [`App::catch_up_blocking`] off the async executor. While the state is being
    /// built from the log, a page reads nothing itself: the follower reads, a slice at
    /// a time, and pages show what it has read and say so.
    pub async fn catch_up(self: &Arc<App>) -> Result<(), AppError> {
        if self.building() {
            return Ok(());
        }
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.catch_up_blocking())
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Appends an audit record and waits until it is durable. An action whose
    /// audit record cannot be written is not carried out (callers write the
    /// record first).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), AppError> {
        let rec = NewRecord::Event(EventRecord::Audit {
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.to_string(),
        });
        self.archive.append(rec).await?;
        Ok(())
    }
}

/// A signed-in request: the session and its id, and what every page must say first
/// ([`App::state_notice`]).
pub struct Authed {
    pub id: String,
    pub session: Session,
    pub notice: Option<String>,
}

impl Authed {
    pub fn require(&self, perm: Perm) -> Result<(), AppError> {
        if allows(self.session.role, perm) {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// Checks the synchronizer token a form echoed.
    pub fn check_csrf(&self, token: &str) -> Result<(), AppError> {
        if crate::auth::same_token(&self.session.csrf, token) {
            Ok(())
        } else {
            Err(AppError::Csrf)
        }
    }
}

impl FromRequestParts<Arc<App>> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Authed, AppError> {
        let id = cookie(&parts.headers, SESSION_COOKIE).ok_or(AppError::Unauthenticated)?;
        let session = lock(&app.sessions)
            .touch(id)
            .ok_or(AppError::Unauthenticated)?;
        Ok(Authed {
            id: id.to_string(),
            session,
            notice: app.state_notice(),
        })
    }
}

/// The client address when the server was started with connect info (tests
/// calling the router directly have none).
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientAddr, Self::Rejection> {
        let plain = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let tls = || {
            parts
                .extensions
                .get::<ConnectInfo<crate::tls::TlsPeer>>()
                .map(|c| c.0 .0)
        };
        Ok(ClientAddr(plain.or_else(tls)))
    }
}

/// No inline script or style, nothing from elsewhere, no framing: a body that
/// slips past escaping still cannot run script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Every route, its method and the permission it needs: the one table the router is
/// built from and [`guard`] checks every request against before its handler runs. A
/// route is served only if it is here, and only to a session holding its permission.
pub const ROUTES: &[(&str, &str, Option<Perm>)] = &[
    ("GET", "/login", None),
    ("POST", "/login", None),
    ("POST", "/logout", Some(Perm::Read)),
    ("GET", "/", Some(Perm::Read)),
    ("GET", "/search", Some(Perm::Read)),
    ("GET", "/export", Some(Perm::Read)),
    ("GET", "/export/regulator", Some(Perm::Read)),
    ("GET", "/conversation/{seq}", Some(Perm::Read)),
    ("GET", "/file/{seq}/{n}", Some(Perm::Read)),
    ("GET", "/queue", Some(Perm::Read)),
    ("POST", "/queue", Some(Perm::Review)),
    ("GET", "/audit", Some(Perm::Audit)),
    ("GET", "/users", Some(Perm::ManageUsers)),
    ("POST", "/users", Some(Perm::ManageUsers)),
    ("POST", "/users/remove", Some(Perm::ManageUsers)),
    ("GET", "/holds", Some(Perm::Read)),
    ("POST", "/holds", Some(Perm::Hold)),
    ("POST", "/holds/release", Some(Perm::Hold)),
    ("GET", "/erasure", Some(Perm::Erasure)),
    ("POST", "/erasure", Some(Perm::Erasure)),
    ("GET", "/static/app.css", None),
    ("GET", "/static/app.js", None),
];

/// The handler of one row of [`ROUTES`].
fn handler(method: &str, path: &str) -> Option<MethodRouter<Arc<App>>> {
    use crate::handlers as h;
    use crate::handlers::retention as rp;
    Some(match (method, path) {
        ("GET", "/login") => get(h::login_form),
        ("POST", "/login") => post(h::login),
        ("POST", "/logout") => post(h::logout),
        ("GET", "/") => get(h::dashboard),
        ("GET", "/search") => get(h::search),
        ("GET", "/export") => get(h::export),
        ("GET", "/export/regulator") => get(h::regulator_export),
        ("GET", "/conversation/{seq}") => get(h::conversation),
        ("GET", "/file/{seq}/{n}") => get(h::file_download),
        ("GET", "/queue") => get(h::queue),
        ("POST", "/queue") => post(h::queue_action),
        ("GET", "/audit") => get(h::audit),
        ("GET", "/users") => get(h::users),
        ("POST", "/users") => post(h::user_add),
        ("POST", "/users/remove") => post(h::user_remove),
        ("GET", "/holds") => get(rp::holds),
        ("POST", "/holds") => post(rp::hold_add),
        ("POST", "/holds/release") => post(rp::hold_release),
        ("GET", "/erasure") => get(rp::erasure_form),
        ("POST", "/erasure") => post(rp::erasure),
        ("GET", "/static/app.css") => get(h::css),
        ("GET", "/static/app.js") => get(h::js),
        _ => return None,
    })
}

/// The permission a request needs, from [`ROUTES`]; `None` when the route is not in
/// the table. `HEAD` is not served: it would run a page's handler, audit record and
/// all (a whole regulator export), to send no body.
pub fn permission(method: &str, path: &str) -> Option<Option<Perm>> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|&(_, _, perm)| perm)
}

/// Checks the request against its row of [`ROUTES`] before the handler runs: a
/// protected route needs a live session with the permission (otherwise the sign-in
/// page or 403), and a route missing from the table is refused.
async fn guard(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(perm) = path.and_then(|p| permission(req.method().as_str(), &p)) else {
        return AppError::NotFound.into_response();
    };
    let Some(perm) = perm else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    // Taken before the notice is made: what the page says of the state.
    let generation = app.generation();
    let building = app.building();
    let damaged = read(&app.store).damaged();
    if let Err(e) = Authed::from_request_parts(&mut parts, &app)
        .await
        .and_then(|a| a.require(perm))
    {
        return e.into_response();
    }
    let view = parts.method == axum::http::Method::GET;
    let res = next.run(Request::from_parts(parts, body)).await;
    // A view during which the state was found damaged (a page of its files changed),
    // emptied to be built again, or found far behind (its own catch-up left the rest to
    // the follower), may show less than the archive holds, and its notice was made
    // before: it is not shown. The next request says why.
    let became_incomplete = app.generation() != generation
        || (!building && app.building())
        || (!damaged && read(&app.store).damaged());
    if view && became_incomplete {
        return AppError::Rebuilding.into_response();
    }
    res
}

/// Gives each request a tracing span (`request{id method path}`) its handler's events
/// are logged in, and logs its status at DEBUG.
async fn request_span(req: Request, next: Next) -> Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::Instrument;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let span = tracing::info_span!(
        "request",
        id = NEXT.fetch_add(1, Ordering::Relaxed),
        method = %req.method(),
        path = %req.uri().path(),
    );
    async move {
        let started = Instant::now();
        let res = next.run(req).await;
        tracing::debug!(
            status = res.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "served"
        );
        res
    }
    .instrument(span)
    .await
}

pub fn router(app: Arc<App>) -> Router {
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<Arc<App>>> =
        std::collections::BTreeMap::new();
    for &(method, path, _) in ROUTES {
        let Some(h) = handler(method, path) else {
            // A row without a handler serves nothing (the route tests catch it).
            tracing::error!(method, path, "route in ROUTES has no handler");
            continue;
        };
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(h),
            None => h,
        };
        by_path.insert(path, merged);
    }
    let mut r = Router::new();
    for (path, methods) in by_path {
        r = r.route(path, methods);
    }
    r.route_layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .fallback(|| async { AppError::NotFound.into_response() })
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(app)
}

/// The store's saved copy, when there is one made under these settings; anything
/// else (none, damaged, another archive's or setting's) is logged and `None`.
fn restore(
    cfg: &WebConfig,
    archive: &Archive,
    spill: Arc<Spill>,
) -> Option<(Store, crate::store::Covered)> {
    let started = Instant::now();
    let reader = archive.reader();
    let state = match reader.read_state(STATE_NAME) {
        Ok(Some(state)) => state,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(cause = %e, "the saved review state cannot be opened; reading the whole archive instead");
            return None;
        }
    };
    match Store::restore(
        state,
        reader.archive_id(),
        cfg.sample_rate,
        cfg.node.clone(),
        spill,
    ) {
        Ok((store, covered)) => {
            tracing::info!(
                through = covered.next_seq - 1,
                seconds = started.elapsed().as_secs_f64(),
                "saved review state read back"
            );
            Some((store, covered))
        }
        Err(crate::store::SnapshotError::Stale(why)) => {
            tracing::info!(%why, "the saved review state is not used; reading the whole archive");
            None
        }
        Err(e) => {
            tracing::warn!(cause = %e, "the saved review state cannot be read; reading the whole archive instead");
            None
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn every_row_of_the_table_has_its_handler_and_nothing_else_is_allowed() {
        for &(method, path, _) in ROUTES {
            assert!(handler(method, path).is_some(), "{method} {path}");
        }
        assert_eq!(permission("HEAD", "/"), None);
        assert_eq!(permission("POST", "/"), None);
        assert_eq!(permission("GET", "/admin"), None);
        assert_eq!(permission("GET", "/login"), Some(None));
    }
}

#[cfg(test)]
mod save_tests {
    use super::*;
    use custos_archive::{
        Action, ArchiveConfig, MasterKey, MessageRecord, Outcome, SessionId, SigningKey,
    };

    fn chat(body: &str) -> NewRecord {
        NewRecord::Message(MessageRecord {
            session: SessionId("s1".into()),
            outcome: Outcome {
                action: Action::Flag,
                rules: vec!["watch".into()],
                ..Outcome::allowed()
            },
            ..MessageRecord::chat("alice@example.test/laptop", "bob@example.test", body)
        })
    }

    /// An archive holding one message (its seq returned), its review app, and a
    /// runtime of `workers` threads.
    fn app_with_one_message(
        workers: usize,
    ) -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Archive,
        Arc<App>,
        u64,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let archive = Archive::open(ArchiveConfig::new(
            tmp.path().join("archive"),
            MasterKey::from_bytes([3; 32]),
            SigningKey::from_bytes(&[4; 32]),
        ))
        .unwrap();
        let seq = rt.block_on(archive.append(chat("before"))).unwrap().seq.0;
        let cfg = crate::WebConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            tmp.path().join("users.json"),
        );
        let app = Arc::new(App::new(cfg, archive.clone()).unwrap());
        (tmp, rt, archive, app, seq)
    }

    /// Someone who can write the archive directory puts a directory where the state file
    /// goes: every save fails at its last step. Each leaves nothing behind (its pages
    /// file is removed, or the disk would fill a save at a time), the next is not tried
    /// at once, and once the way is clear a save goes through.
    #[test]
    fn a_save_that_cannot_be_put_in_place_leaves_no_pages_file_behind() {
        let (tmp, rt, archive, app, _) = app_with_one_message(1);
        rt.block_on(archive.append(chat("after"))).unwrap();
        app.catch_up_blocking().unwrap();
        let states = tmp.path().join("archive").join("state");
        let pages = || {
            std::fs::read_dir(&states)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pages"))
                .count()
        };
        std::fs::create_dir_all(states.join("web-ui.state").join("in-the-way")).unwrap();
        app.save_blocking();
        app.save_blocking();
        assert_eq!(pages(), 0);
        assert!(lock(&app.saved).failed.is_some());
        std::fs::remove_dir_all(states.join("web-ui.state")).unwrap();
        app.save_blocking();
        assert_eq!(pages(), 1);
        assert!(lock(&app.saved).failed.is_none());
        assert!(states.join("web-ui.state").is_file());
    }

    /// A save is due once enough was read, not while the state is being built, not an
    /// hour after the last, and not soon after one failed.
    #[test]
    fn a_save_is_due_when_enough_was_read_and_not_soon_after_one_failed() {
        let now = Instant::now();
        let never = Saved {
            next_seq: 1,
            at: None,
            failed: None,
        };
        assert!(never.due(SAVE_AFTER, false));
        assert!(!never.due(SAVE_AFTER - 1, false));
        assert!(!never.due(SAVE_AFTER, true));
        let failed = Saved {
            failed: Some(now),
            ..never
        };
        assert!(!failed.due(SAVE_AFTER, false));
        let recent = Saved {
            at: Some(now),
            ..never
        };
        assert!(!recent.due(SAVE_AFTER, false));
    }

    /// A page's catch-up reads at most `build_in_background_above` records of a chain;
    /// a chain further behind is left to the follower, and until it has caught up the
    /// state says it is being built and refuses reviews.
    #[test]
    fn a_catch_up_far_behind_is_left_to_the_follower() {
        let (tmp, rt, archive, _, _) = app_with_one_message(1);
        let mut cfg = crate::WebConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            tmp.path().join("users.json"),
        );
        cfg.build_in_background_above = 100;
        let app = App::new(cfg, archive.clone()).unwrap();
        assert!(!app.building());
        rt.block_on(async {
            for i in 0..300 {
                archive.append(chat(&format!("note {i}"))).await.unwrap();
            }
        });
        let before = read(&app.store).next_seq();
        app.catch_up_blocking().unwrap();
        assert_eq!(read(&app.store).next_seq(), before + 100);
        assert!(app.building());
        assert!(app.whole(&read(&app.store)).is_err());
        assert!(app.state_notice().unwrap().contains("being built"));
        while app.follow_slice().unwrap() {}
        assert!(!app.building());
        assert_eq!(read(&app.store).next_seq(), before + 300);
        assert!(app.whole(&read(&app.store)).is_ok());
    }

    /// A state dropped while serving is read again a slice at a time; until it has
    /// caught up, pages say so (and how far it has read), and then they stop saying it.
    #[test]
    fn pages_say_the_state_is_being_built_again_until_it_has_caught_up() {
        let (_tmp, rt, archive, app, _) = app_with_one_message(1);
        rt.block_on(async {
            for i in 0..FOLLOW_SLICE + 5 {
                archive.append(chat(&format!("note {i}"))).await.unwrap();
            }
        });
        app.catch_up_blocking().unwrap();
        assert_eq!(app.state_notice(), None);
        app.start_over(&mut lock(&app.tail));
        let notice = app.state_notice().unwrap();
        assert!(notice.contains("being built from the archive"), "{notice}");
        assert!(app.follow_slice().unwrap());
        let notice = app.state_notice().unwrap();
        assert!(
            notice.contains(&format!("{FOLLOW_SLICE} of this node's")),
            "{notice}"
        );
        assert!(!app.follow_slice().unwrap());
        assert_eq!(app.state_notice(), None);
    }

    /// The follower holds the tail for one slice at a time: each step applies at most
    /// [`FOLLOW_SLICE`] records and says whether more wait, and the steps end where one
    /// whole catch-up does. A page that catches up meanwhile takes the rest.
    #[test]
    fn the_follower_applies_a_slice_at_a_time_and_ends_where_a_whole_catch_up_does() {
        let (tmp, rt, archive, app, first) = app_with_one_message(1);
        let total = 2 * FOLLOW_SLICE + 10;
        rt.block_on(async {
            for i in 0..total {
                archive.append(chat(&format!("note {i}"))).await.unwrap();
            }
        });
        let last = first + total as u64;

        let mut steps = Vec::new();
        loop {
            let before = read(&app.store).next_seq();
            let more = app.follow_slice().unwrap();
            let applied = read(&app.store).next_seq() - before;
            steps.push(applied);
            assert!(applied as usize <= FOLLOW_SLICE, "{steps:?}");
            if !more {
                break;
            }
            assert_eq!(applied as usize, FOLLOW_SLICE, "{steps:?}");
        }
        assert_eq!(steps, [FOLLOW_SLICE as u64, FOLLOW_SLICE as u64, 10]);
        assert_eq!(read(&app.store).next_seq(), last + 1);

        // The same state a whole catch-up builds.
        let cfg = crate::WebConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            tmp.path().join("users.json"),
        );
        let whole = App::new(cfg, archive.clone()).unwrap();
        whole.catch_up_blocking().unwrap();
        let items = |a: &App| {
            read(&a.store)
                .reviews()
                .map(|r| (r.seq, r.status))
                .collect::<Vec<_>>()
        };
        assert_eq!(items(&app).len(), total + 1);
        assert_eq!(items(&app), items(&whole));

        // Half a slice arrives: a page takes it, and the follower's next step finds none.
        rt.block_on(async {
            for i in 0..FOLLOW_SLICE / 2 {
                archive.append(chat(&format!("more {i}"))).await.unwrap();
            }
        });
        app.catch_up_blocking().unwrap();
        let caught = read(&app.store).next_seq();
        assert_eq!(caught, last + 1 + FOLLOW_SLICE as u64 / 2);
        assert!(!app.follow_slice().unwrap());
        assert_eq!(read(&app.store).next_seq(), caught);
        rt.block_on(archive.close()).unwrap();
    }

    /// The copy read first keys a logical message's review item. One whole
    /// catch-up (and a restart) reads this node's chain before other nodes'; the
    /// follower's slices must not let another node's copy overtake this node's.
    #[test]
    fn slices_read_another_nodes_copy_no_earlier_than_a_whole_catch_up() {
        let (tmp, rt, archive, app, _) = app_with_one_message(1);
        let copy = |body: &str| {
            let NewRecord::Message(mut m) = chat(body) else {
                unreachable!()
            };
            m.capture.identity = "one-logical-message".into();
            NewRecord::Message(m)
        };
        // This node's copy comes after more than a slice of other records.
        rt.block_on(async {
            for i in 0..FOLLOW_SLICE + 20 {
                archive.append(chat(&format!("note {i}"))).await.unwrap();
            }
            archive.append(copy("ours")).await.unwrap();
        });
        // Another node's copy, early in its chain (same keys, as in a bucket).
        let peer = peer_chain(&tmp, &app);
        rt.block_on(async {
            peer.append(chat("peer note")).await.unwrap();
            peer.append(copy("theirs")).await.unwrap();
            peer.close().await.unwrap();
        });
        while app.follow_slice().unwrap() {}

        let whole = App::new(app.cfg.clone(), archive.clone()).unwrap();
        // The last item: the logical message with a copy on both chains.
        let last = |a: &App| {
            read(&a.store)
                .reviews()
                .map(|r| r.seq)
                .filter(|r| r.seq > 270 || r.chain != 0)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            last(&app),
            last(&whole),
            "keyed by another copy than a restart shows"
        );
        rt.block_on(archive.close()).unwrap();
    }

    /// Another node's chain that cannot be opened (a node named in the bucket whose
    /// chain is not there yet, or one an administrator made unreadable) is said on
    /// every page, naming it, but does not keep the state from being whole: a chain
    /// gone for good would otherwise refuse every review until a restart. Once it reads,
    /// the notice goes.
    #[test]
    fn another_nodes_chain_that_cannot_be_read_is_said_without_locking_reviews() {
        let (tmp, rt, archive, first, _) = app_with_one_message(1);
        let mut cfg = first.cfg.clone();
        cfg.build_in_background_above = 100;
        rt.block_on(async {
            for i in 0..300 {
                archive.append(chat(&format!("note {i}"))).await.unwrap();
            }
        });
        // Named, but not there yet.
        let dir = tmp.path().join("peer");
        write(&cfg.peers).push(crate::PeerChain {
            node: Some("n2".into()),
            dir: dir.clone(),
        });
        let app = App::new(cfg, archive.clone()).unwrap();
        assert!(app.building());
        while app.follow_slice().unwrap() {}
        assert!(!app.building());
        let notice = app.state_notice().unwrap();
        assert!(
            notice.contains("Another node's chain cannot be read") && notice.contains("n2"),
            "{notice}"
        );
        assert!(app.whole(&read(&app.store)).is_ok());
        // The chain appears; looked at again after PEER_INTERVAL.
        let peer = Archive::open(ArchiveConfig::new(
            dir,
            MasterKey::from_bytes([3; 32]),
            SigningKey::from_bytes(&[4; 32]),
        ))
        .unwrap();
        rt.block_on(async {
            peer.append(chat("peer note")).await.unwrap();
            peer.close().await.unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.state_notice().is_some() {
            assert!(Instant::now() < deadline, "still said");
            std::thread::sleep(Duration::from_millis(100));
            while app.follow_slice().unwrap() {}
        }
    }

    /// While this node's log cannot be read, every page says why and reviews wait (the
    /// state may lack the latest copies); the next catch-up that reads clears it.
    #[test]
    fn a_failing_read_of_this_nodes_log_is_said_and_refuses_reviews_until_it_reads() {
        let (_tmp, _rt, _archive, app, _) = app_with_one_message(1);
        assert_eq!(app.state_notice(), None);
        app.follow_failed("segment 3: input/output error".into());
        let notice = app.state_notice().unwrap();
        assert!(notice.contains("input/output error"), "{notice}");
        assert!(app.whole(&read(&app.store)).is_err());
        app.catch_up_blocking().unwrap();
        assert_eq!(app.state_notice(), None);
        assert!(app.whole(&read(&app.store)).is_ok());
    }

    /// A peer chain with exactly a slice of new records is behind once, then
    /// not; `behind` does not stay set.
    #[test]
    fn behind_clears_after_a_chain_gives_exactly_a_slice() {
        let (tmp, rt, _archive, app, _) = app_with_one_message(1);
        let peer = peer_chain(&tmp, &app);
        rt.block_on(async {
            for i in 0..FOLLOW_SLICE {
                peer.append(chat(&format!("p {i}"))).await.unwrap();
            }
        });
        assert!(app.follow_slice().unwrap());
        assert!(lock(&app.peer_tails).behind);
        assert!(!app.follow_slice().unwrap());
        assert!(!lock(&app.peer_tails).behind);
        rt.block_on(peer.append(chat("late"))).unwrap();
        // Within PEER_INTERVAL: not looked at again.
        assert!(!app.follow_slice().unwrap());
        let peer_chain = write(&app.store).chain_of(Some("n2"));
        assert_eq!(
            read(&app.store).covered_of(peer_chain).next_seq,
            FOLLOW_SLICE as u64 + 1
        );
        // A page after the interval takes it.
        std::thread::sleep(PEER_INTERVAL);
        app.catch_up_blocking().unwrap();
        assert_eq!(
            read(&app.store).covered_of(peer_chain).next_seq,
            FOLLOW_SLICE as u64 + 2
        );
        rt.block_on(peer.close()).unwrap();
    }

    /// A save holds what is read meanwhile in memory, decoded. The follower
    /// must not read its whole backlog into that while a save runs.
    #[test]
    fn the_follower_does_not_pile_its_backlog_up_behind_a_save() {
        let (_tmp, rt, archive, app, _) = app_with_one_message(1);
        rt.block_on(async {
            for i in 0..4 * FOLLOW_SLICE {
                archive.append(chat(&format!("note {i}"))).await.unwrap();
            }
        });
        lock(&app.deferred).saving += 1;
        // The follower's loop (`follow` in lib.rs), bounded for the test.
        let mut slices = 0;
        while app.follow_slice().unwrap() && slices < 100 {
            slices += 1;
        }
        let held: usize = lock(&app.deferred)
            .entries
            .iter()
            .map(|(_, e)| e.len())
            .sum();
        app.save_done();
        assert!(
            held <= FOLLOW_SLICE,
            "{held} decoded records held behind one save"
        );
        rt.block_on(archive.close()).unwrap();
    }

    /// Another node's chain (node `n2`, the same keys, as in a bucket) in `tmp`, which
    /// `app` follows: its writer.
    fn peer_chain(tmp: &tempfile::TempDir, app: &App) -> Archive {
        let dir = tmp.path().join("peer");
        let peer = Archive::open(ArchiveConfig::new(
            dir.clone(),
            MasterKey::from_bytes([3; 32]),
            SigningKey::from_bytes(&[4; 32]),
        ))
        .unwrap();
        write(&app.cfg.peers).push(crate::PeerChain {
            node: Some("n2".into()),
            dir,
        });
        peer
    }

    /// A save holds the store for reading for seconds at ten million records. A
    /// catch-up meanwhile must not wait for it (a waiting writer would hold up every
    /// page); what it read is applied, in order, once the save is done.
    #[test]
    fn a_catch_up_during_a_save_does_not_wait_for_it() {
        let (_tmp, rt, archive, app, _) = app_with_one_message(1);
        let before = read(&app.store).next_seq();

        // A save in progress, as `save_blocking` holds it.
        lock(&app.deferred).saving += 1;
        let saving = read(&app.store);
        let during = rt.block_on(archive.append(chat("during"))).unwrap().seq.0;
        let (tx, rx) = std::sync::mpsc::channel();
        let caught = app.clone();
        std::thread::spawn(move || {
            let _ = tx.send(caught.catch_up_blocking());
        });
        let done = rx.recv_timeout(Duration::from_secs(20));
        assert!(
            matches!(done, Ok(Ok(()))),
            "the catch-up waited for the save: {done:?}"
        );
        assert_eq!(saving.next_seq(), before, "nothing applied under the save");
        drop(saving);

        // A change about to be shown waits for the save, and only that caller waits.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = app.clone();
        std::thread::spawn(move || {
            waiting.wait_settled();
            let _ = tx.send(read(&waiting.store).next_seq());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(read(&app.store).next_seq(), before, "pages still read");

        app.save_done();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)),
            Ok(during + 1),
            "settled once the save is done, with what it deferred"
        );
        assert_eq!(read(&app.store).next_seq(), during + 1);
        // And later records go on after the deferred ones.
        let after = rt.block_on(archive.append(chat("after"))).unwrap().seq.0;
        app.catch_up_blocking().unwrap();
        assert_eq!(read(&app.store).next_seq(), after + 1);
        rt.block_on(archive.close()).unwrap();
    }

    /// A message archived during a save is applied when the save ends. Its
    /// conversation page is asked for at once (the link came in an alert, say): it
    /// waits for the save instead of answering "not found", and a page of an older
    /// message does not wait.
    #[test]
    fn a_message_archived_during_a_save_is_found_when_the_save_ends() {
        let (_tmp, rt, archive, app, before) = app_with_one_message(2);

        lock(&app.deferred).saving += 1;
        let saving = read(&app.store);
        // Nothing read during the save yet: a ref to no message does not wait.
        for none in ["999999", "not-a-ref"] {
            let got = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(3), app.conversation_around(none, 5)).await
            });
            assert!(
                matches!(got, Ok(Err(AppError::NotFound))),
                "{none}: {:?}",
                got.map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
            );
        }
        let during = rt.block_on(archive.append(chat("during"))).unwrap().seq.0;
        let older = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                app.conversation_around(&before.to_string(), 5),
            )
            .await
        });
        assert!(
            matches!(older, Ok(Ok(_))),
            "an older message waited for the save"
        );
        let asking = app.clone();
        let page = rt.spawn(async move {
            asking
                .conversation_around(&during.to_string(), 5)
                .await
                .map(|(seq, shown)| (seq.seq, shown.len()))
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!page.is_finished(), "answered before the save ended");
        drop(saving);
        app.save_done();
        let got = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), page).await })
            .expect("the page waited past the save")
            .unwrap();
        assert!(
            matches!(got, Ok((seq, 2)) if seq == during),
            "{:?}",
            got.map_err(|e| e.to_string())
        );
        rt.block_on(archive.close()).unwrap();
    }
}
