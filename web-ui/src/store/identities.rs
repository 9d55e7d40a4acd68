//! The identity table: each message identity (and delivered identity) → the group, the
//! first copy, it names.
//!
//! Identities seen lately are kept in a bounded hash table in memory. When it is full,
//! its entries are written out, sorted, as a *run*: pages of [`PAGE_ENTRIES`] entries
//! sealed (AES-256-GCM) into an unnamed scratch file under a key drawn for that run
//! alone, which exists only in this process's memory. Each page is sealed once, its
//! nonce its number, so no nonce serves twice under a key, and a page changed or moved
//! is refused when read. Runs of like size are merged into one, into a new file under a
//! new key: there are a handful at most, the oldest the largest, and each entry is
//! written out about once per doubling of the table. A saved state writes the whole
//! table as one run into its pages file (`sealed.rs`), which a start takes as its run.
//!
//! Per run, memory holds each page's first identity and a filter that answers "not
//! here" for about 99 % of the identities the run lacks. A new message's identity, the
//! common case, is therefore looked up without reading the disk; a late copy (a replay
//! from the server's archive, say) reads one page of the run that holds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::rows::{Scratch, Spill, TAG_BYTES};
use super::sealed::{Region, Sealer};
use super::Packed;

/// An identity as the store keys it (`identity_key`).
pub(super) type Key = [u64; 2];

const ENTRY_BYTES: usize = 24;
/// Entries to a page: 42 of 24 bytes and the tag fill 1 KiB.
pub(super) const PAGE_ENTRIES: usize = 42;
/// Identities kept in memory before they are written out: 196,608 entries fill a hash
/// table of 262,144 slots, about 6.5 MiB.
pub(super) const RECENT_ENTRIES: usize = 196_608;
/// Pages read or written at once when a run is read or written whole.
const BATCH_PAGES: usize = 64;

/// A filter over a run's identities, about ten bits each: every identity of the run
/// is "maybe", about 1 % of the others too. Blocked: an identity's bits are all in one
/// 64-byte block, so a look-up costs one cache miss.
struct Filter {
    blocks: Vec<[u64; 8]>,
}

/// SplitMix64's finaliser: identities the proxy writes are hash output already, but
/// others need not spread over the filter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Filter {
    fn new(entries: usize) -> Filter {
        Filter {
            blocks: vec![[0; 8]; Filter::blocks_for(entries)],
        }
    }

    /// Blocks of a filter for `entries`: bounded whatever a caller claims, since a
    /// smaller filter only answers "maybe" more often.
    fn blocks_for(entries: usize) -> usize {
        entries.min(1 << 28).saturating_mul(10).div_ceil(512).max(1)
    }

    /// The block of `k` and its seven bits in it (9 bits of hash each).
    fn probe(&self, k: &Key) -> (usize, u64) {
        let a = mix(k[0] ^ mix(k[1] ^ 0x2545_f491_4f6c_dd1d));
        let b = mix(a ^ 0x9e37_79b9_7f4a_7c15);
        let block = ((u128::from(a) * self.blocks.len() as u128) >> 64) as usize;
        (block, b)
    }

    fn bits(b: u64) -> impl Iterator<Item = (usize, u64)> {
        (0..7).map(move |i| {
            let bit = (b >> (9 * i)) & 511;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&mut self, k: &Key) {
        let (block, b) = self.probe(k);
        if let Some(words) = self.blocks.get_mut(block) {
            for (w, m) in Filter::bits(b) {
                if let Some(word) = words.get_mut(w) {
                    *word |= m;
                }
            }
        }
    }

    fn may_hold(&self, k: &Key) -> bool {
        let (block, b) = self.probe(k);
        self.blocks.get(block).is_some_and(|words| {
            Filter::bits(b).all(|(w, m)| words.get(w).is_some_and(|word| word & m != 0))
        })
    }
}

/// A sorted run of entries in its own scratch file, or in a saved state's pages file.
struct Run {
    region: Region,
    /// Taken from a saved state's pages file (a named file) at the start.
    saved: bool,
    len: usize,
    /// Each page's first identity.
    firsts: Vec<Key>,
    filter: Filter,
}

fn slot(spill: &Spill) -> usize {
    spill.ident_page * ENTRY_BYTES + TAG_BYTES
}

fn decode(b: &[u8]) -> Option<(Key, Packed)> {
    let word = |i: usize| {
        b.get(i * 8..i * 8 + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    Some(([word(0)?, word(1)?], word(2)?))
}

impl Run {
    /// Entries in page `page`.
    fn page_len(&self, spill: &Spill, page: usize) -> usize {
        self.len
            .saturating_sub(page.saturating_mul(spill.ident_page))
            .min(spill.ident_page)
    }

    /// Opens sealed page `page` in place (`buf` is its slot) and appends its entries.
    fn open(
        &self,
        spill: &Spill,
        page: usize,
        buf: &mut [u8],
        out: &mut Vec<(Key, Packed)>,
    ) -> Result<(), String> {
        if buf.len() != slot(spill) {
            return Err(format!("identity page {page} cut short"));
        }
        self.region
            .open(page, buf)
            .map_err(|e| format!("identity {e}"))?;
        out.extend(
            buf.chunks_exact(ENTRY_BYTES)
                .take(self.page_len(spill, page))
                .filter_map(decode),
        );
        Ok(())
    }

    /// The group `k` names, if this run holds it: one page read, unless the filter
    /// rules it out.
    fn get(&self, spill: &Spill, k: &Key) -> Result<Option<Packed>, String> {
        if !self.filter.may_hold(k) {
            return Ok(None);
        }
        let Some(page) = self.firsts.partition_point(|f| f <= k).checked_sub(1) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; slot(spill)];
        self.region
            .read(page, &mut buf)
            .map_err(|e| format!("identity {e}"))?;
        let mut entries = Vec::with_capacity(spill.ident_page);
        self.open(spill, page, &mut buf, &mut entries)?;
        Ok(entries
            .binary_search_by(|(e, _)| e.cmp(k))
            .ok()
            .and_then(|i| entries.get(i))
            .map(|(_, g)| *g))
    }
}

/// Writes a run, entries in increasing order, pages sealed in batches.
struct RunWriter<'a> {
    spill: &'a Spill,
    out: Sealer,
    region: Region,
    len: usize,
    firsts: Vec<Key>,
    filter: Filter,
    /// The page being filled, in the clear.
    page: Vec<u8>,
    last: Option<Key>,
}

impl<'a> RunWriter<'a> {
    /// A writer for about `expected` entries (the filter is sized for them) into a
    /// new scratch file.
    fn new(spill: &'a Spill, expected: usize) -> Result<RunWriter<'a>, String> {
        Ok(RunWriter::into(
            spill,
            Sealer::new(Arc::new(spill.scratch()?)),
            expected,
        ))
    }

    /// A writer for about `expected` entries into `out`, from where it stands.
    fn into(spill: &'a Spill, out: Sealer, expected: usize) -> RunWriter<'a> {
        RunWriter {
            spill,
            region: out.region(slot(spill)),
            out,
            len: 0,
            firsts: Vec::with_capacity(expected.min(1 << 28).div_ceil(spill.ident_page)),
            filter: Filter::new(expected),
            page: Vec::with_capacity(slot(spill)),
            last: None,
        }
    }

    fn push(&mut self, k: Key, g: Packed) -> Result<(), String> {
        if self.last.is_some_and(|l| l >= k) {
            return Err("identities out of order".into());
        }
        self.last = Some(k);
        if self.page.is_empty() {
            self.firsts.push(k);
        }
        for w in [k[0], k[1], g] {
            self.page.extend_from_slice(&w.to_le_bytes());
        }
        self.filter.insert(&k);
        self.len += 1;
        if self.page.len() >= self.spill.ident_page * ENTRY_BYTES {
            self.seal()?;
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<(), String> {
        self.page.resize(slot(self.spill), 0);
        let sealed = self.out.push(&mut self.page);
        self.page.clear();
        sealed
    }

    /// The run written, or `None` if it is empty.
    fn finish(self) -> Result<Option<Run>, String> {
        self.finish_into().map(|(run, _)| run)
    }

    /// [`RunWriter::finish`], and what it wrote into, to go on writing.
    fn finish_into(mut self) -> Result<(Option<Run>, Sealer), String> {
        if !self.page.is_empty() {
            self.seal()?;
        }
        self.out.flush()?;
        let run = (self.len > 0).then_some(Run {
            region: self.region,
            saved: false,
            len: self.len,
            firsts: self.firsts,
            filter: self.filter,
        });
        Ok((run, self.out))
    }
}

/// Reads a run's entries in order, [`BATCH_PAGES`] pages a read.
struct RunReader<'a> {
    spill: &'a Spill,
    run: &'a Run,
    page: usize,
    buf: Vec<u8>,
    entries: Vec<(Key, Packed)>,
    at: usize,
}

impl<'a> RunReader<'a> {
    fn new(spill: &'a Spill, run: &'a Run) -> RunReader<'a> {
        RunReader {
            spill,
            run,
            page: 0,
            buf: Vec::new(),
            entries: Vec::new(),
            at: 0,
        }
    }

    fn next(&mut self) -> Result<Option<(Key, Packed)>, String> {
        if self.at >= self.entries.len() {
            let pages = self.run.firsts.len();
            if self.page >= pages {
                return Ok(None);
            }
            let n = BATCH_PAGES.min(pages - self.page);
            let slot = slot(self.spill);
            self.buf.resize(n * slot, 0);
            self.run
                .region
                .read(self.page, &mut self.buf)
                .map_err(|e| format!("identity {e}"))?;
            self.entries.clear();
            self.at = 0;
            for (i, b) in self.buf.chunks_exact_mut(slot).enumerate() {
                self.run
                    .open(self.spill, self.page + i, b, &mut self.entries)?;
            }
            self.page += n;
        }
        let e = self.entries.get(self.at).copied();
        self.at += 1;
        Ok(e)
    }
}

/// Sorted sources merged into one sorted sequence. Sources are given oldest first; an
/// identity in several keeps the oldest source's entry, as the table keeps the first
/// group an identity named.
struct Merge<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<(Key, Packed)>>,
}

enum Source<'a> {
    Run(RunReader<'a>),
    Sorted(std::vec::IntoIter<(Key, Packed)>),
    Slice(std::slice::Iter<'a, (Key, Packed)>),
}

impl Source<'_> {
    fn next(&mut self) -> Result<Option<(Key, Packed)>, String> {
        match self {
            Source::Run(r) => r.next(),
            Source::Sorted(v) => Ok(v.next()),
            Source::Slice(v) => Ok(v.next().copied()),
        }
    }
}

impl<'a> Merge<'a> {
    fn new(mut sources: Vec<Source<'a>>) -> Result<Merge<'a>, String> {
        let heads = sources
            .iter_mut()
            .map(Source::next)
            .collect::<Result<_, _>>()?;
        Ok(Merge { sources, heads })
    }

    fn next(&mut self) -> Result<Option<(Key, Packed)>, String> {
        let mut best: Option<(usize, (Key, Packed))> = None;
        for (i, h) in self.heads.iter().enumerate() {
            if let Some(e) = h {
                if best.is_none_or(|(_, b)| e.0 < b.0) {
                    best = Some((i, *e));
                }
            }
        }
        let Some((_, entry)) = best else {
            return Ok(None);
        };
        for (h, s) in self.heads.iter_mut().zip(&mut self.sources) {
            if h.is_some_and(|e| e.0 == entry.0) {
                *h = s.next()?;
            }
        }
        Ok(Some(entry))
    }
}

/// The table; see the module docs.
pub(super) struct Identities {
    spill: Arc<Spill>,
    recent: HashMap<Key, Packed>,
    /// Oldest (and largest) first.
    runs: Vec<Run>,
    /// `recent` may grow to this before it is written out: more than the spill's
    /// bound after a run could not be written.
    limit: usize,
    /// A run could not be read: identities are missing, and the store must be built
    /// again from the log.
    damaged: AtomicBool,
    /// Whether a failure to write a run has been logged.
    reported: bool,
}

impl Identities {
    pub(super) fn new(spill: Arc<Spill>) -> Identities {
        let limit = spill.ident_recent.max(1);
        Identities {
            spill,
            recent: HashMap::new(),
            runs: Vec::new(),
            limit,
            damaged: AtomicBool::new(false),
            reported: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.recent.len() + self.runs.iter().map(|r| r.len).sum::<usize>()
    }

    /// Whether identities were lost: a run could not be read back.
    pub(super) fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    fn lost(&self, e: &dyn std::fmt::Display) {
        if !self.damaged.swap(true, Ordering::Relaxed) {
            tracing::error!(cause = %e, "the review state's identity table cannot be read back; the state is built again from the archive");
        }
    }

    /// The group identity `k` names.
    pub(super) fn get(&self, k: &Key) -> Option<Packed> {
        if let Some(g) = self.recent.get(k) {
            return Some(*g);
        }
        // Oldest first, as a merge keeps the oldest entry of an identity.
        for run in &self.runs {
            match run.get(&self.spill, k) {
                Ok(Some(g)) => return Some(g),
                Ok(None) => {}
                Err(e) => self.lost(&e),
            }
        }
        None
    }

    /// Adds `k → g`; `k` must not be in the table yet ([`Identities::get`] said so),
    /// or the entry already there stays.
    pub(super) fn insert_new(&mut self, k: Key, g: Packed) {
        self.recent.entry(k).or_insert(g);
        if self.recent.len() >= self.limit {
            self.write_out();
        }
    }

    /// Writes the identities in memory out as a run, merged with the newest runs
    /// as long as those are no more than twice the size of what is merged. If that
    /// fails, they stay in memory (logged) and the next try is when as many again
    /// have come.
    fn write_out(&mut self) {
        let mut fresh: Vec<(Key, Packed)> = self.recent.drain().collect();
        fresh.sort_unstable_by_key(|e| e.0);
        let mut total = fresh.len();
        let mut take = 0;
        while let Some(r) = self
            .runs
            .len()
            .checked_sub(take + 1)
            .and_then(|i| self.runs.get(i))
        {
            if r.len > total.saturating_mul(2) {
                break;
            }
            total += r.len;
            take += 1;
        }
        let old = self.runs.split_off(self.runs.len() - take);
        let written = {
            let mut sources: Vec<Source<'_>> = old
                .iter()
                .map(|r| Source::Run(RunReader::new(&self.spill, r)))
                .collect();
            sources.push(Source::Slice(fresh.iter()));
            Merge::new(sources)
                .map_err(Failure::Read)
                .and_then(|m| write_run(&self.spill, m, total, |_| true))
        };
        match written {
            Ok(run) => {
                self.runs.extend(run);
                self.limit = self.spill.ident_recent.max(1);
            }
            Err(e) => {
                self.runs.extend(old);
                self.recent.extend(fresh);
                self.limit = self.recent.len().saturating_mul(2);
                if let Failure::Read(e) = &e {
                    // A run that does not read back has lost what it held.
                    self.lost(e);
                } else if !self.reported {
                    self.reported = true;
                    tracing::error!(cause = %e, "the review state's identity table cannot be written to its scratch file; it stays in memory");
                }
            }
        }
    }

    /// Changes every entry's group with `f`, keeping those it says yes to (after a
    /// shred). Runs are rewritten into new files.
    pub(super) fn retain_map(&mut self, mut f: impl FnMut(&mut Packed) -> bool) {
        self.recent.retain(|_, g| f(g));
        let runs = std::mem::take(&mut self.runs);
        for run in runs {
            let rewritten = Merge::new(vec![Source::Run(RunReader::new(&self.spill, &run))])
                .map_err(Failure::Read)
                .and_then(|m| write_run(&self.spill, m, run.len, &mut f));
            match rewritten {
                Ok(r) => self.runs.extend(r),
                Err(Failure::Write(e)) => {
                    // Its entries, changed, stay in memory instead.
                    let mut reader = RunReader::new(&self.spill, &run);
                    loop {
                        match reader.next() {
                            Ok(Some((k, mut g))) => {
                                if f(&mut g) {
                                    self.recent.entry(k).or_insert(g);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                self.lost(&e);
                                break;
                            }
                        }
                    }
                    self.limit = self.limit.max(self.recent.len().saturating_mul(2));
                    if !self.reported {
                        self.reported = true;
                        tracing::error!(cause = %e, "the review state's identity table cannot be written to its scratch file; it stays in memory");
                    }
                }
                Err(Failure::Read(e)) => {
                    // What it held is lost: the store is built again.
                    self.lost(&e);
                }
            }
        }
    }

    /// Every entry in identity order; a run that cannot be read ends it early and
    /// marks the table damaged.
    pub(super) fn sorted(&self) -> impl Iterator<Item = (Key, Packed)> + '_ {
        let mut fresh: Vec<(Key, Packed)> = self.recent.iter().map(|(k, g)| (*k, *g)).collect();
        fresh.sort_unstable_by_key(|e| e.0);
        let mut sources: Vec<Source<'_>> = self
            .runs
            .iter()
            .map(|r| Source::Run(RunReader::new(&self.spill, r)))
            .collect();
        sources.push(Source::Sorted(fresh.into_iter()));
        let mut merge = match Merge::new(sources) {
            Ok(m) => Some(m),
            Err(e) => {
                self.lost(&e);
                None
            }
        };
        std::iter::from_fn(move || match merge.as_mut()?.next() {
            Ok(e) => e,
            Err(e) => {
                self.lost(&e);
                None
            }
        })
    }

    /// Reads pages from `from` on, at most `n`, of the run taken from a saved state's
    /// pages file while it is still one of the table's, so that a page changed there is
    /// found (and the table marked damaged) before a late copy needs it. Returns where
    /// to go on from; `None` when there is nothing more to look at.
    pub(super) fn check_saved(&self, from: usize, n: usize) -> Option<usize> {
        let run = self.runs.iter().find(|r| r.saved)?;
        let pages = run.firsts.len();
        let slot = slot(&self.spill);
        let mut buf = vec![0u8; slot];
        let mut entries = Vec::with_capacity(self.spill.ident_page);
        for page in from..pages.min(from.saturating_add(n)) {
            entries.clear();
            let read = run
                .region
                .read(page, &mut buf)
                .map_err(|e| format!("identity {e}"))
                .and_then(|()| run.open(&self.spill, page, &mut buf, &mut entries));
            if let Err(e) = read {
                self.lost(&e);
                return None;
            }
        }
        let next = from.saturating_add(n);
        (next < pages).then_some(next)
    }

    /// Writes every entry, in identity order, into `out` as one run, and says where
    /// it went (see `sealed.rs`).
    pub(super) fn save_into(&self, out: Sealer) -> Result<(Saved, Sealer), String> {
        let n = self.len();
        let mut w = RunWriter::into(&self.spill, out, n);
        let mut written = 0;
        for (k, g) in self.sorted() {
            w.push(k, g)?;
            written += 1;
        }
        if written != n || self.damaged() {
            return Err("identities of it could not be read back".into());
        }
        let (at, first) = (w.region.at, w.region.first);
        let (run, out) = w.finish_into()?;
        let saved = match run {
            Some(r) => Saved {
                at,
                first,
                len: r.len,
                firsts: r.firsts,
                filter: r.filter.blocks,
            },
            None => Saved {
                at,
                first,
                len: 0,
                firsts: Vec::new(),
                filter: Vec::new(),
            },
        };
        Ok((saved, out))
    }

    /// The table [`Identities::save_into`] wrote into the pages file `file`, of `size`
    /// bytes. Nothing is read now; a page that does not open when read marks the table
    /// damaged.
    pub(super) fn adopt(
        spill: &Arc<Spill>,
        file: &Arc<Scratch>,
        size: u64,
        saved: Saved,
    ) -> Result<Identities, String> {
        let mut t = Identities::new(spill.clone());
        if saved.len == 0 {
            return Ok(t);
        }
        let pages = saved.len.div_ceil(spill.ident_page.max(1));
        if saved.firsts.len() != pages || saved.filter.len() != Filter::blocks_for(saved.len) {
            return Err(format!(
                "{} identities with {} pages and {} filter blocks",
                saved.len,
                saved.firsts.len(),
                saved.filter.len()
            ));
        }
        if saved.firsts.windows(2).any(|w| w[0] >= w[1]) {
            return Err("identity pages out of order".into());
        }
        let region = Region {
            scratch: file.clone(),
            at: saved.at,
            first: saved.first,
            slot: slot(spill),
        };
        if region.end(pages) > size {
            return Err("identities past the pages file's end".into());
        }
        t.runs.push(Run {
            saved: true,
            region,
            len: saved.len,
            firsts: saved.firsts,
            filter: Filter {
                blocks: saved.filter,
            },
        });
        Ok(t)
    }
}

/// What a saved state keeps of the identity table it wrote into its pages file: where
/// the run lies, how many entries, each page's first, and the filter.
pub(super) struct Saved {
    pub(super) at: u64,
    pub(super) first: u64,
    pub(super) len: usize,
    pub(super) firsts: Vec<Key>,
    pub(super) filter: Vec<[u64; 8]>,
}

impl Saved {
    /// The filter's blocks a table of `len` entries has.
    pub(super) fn filter_blocks(len: usize) -> usize {
        if len == 0 {
            0
        } else {
            Filter::blocks_for(len)
        }
    }
}

#[cfg(test)]
impl Identities {
    /// The runs' scratch files.
    pub(super) fn files(&self) -> Vec<&std::fs::File> {
        self.runs.iter().map(|r| &r.region.scratch.file).collect()
    }
}

/// Why a run could not be written: what it was made from could not be read (entries
/// are lost), or it could not be written (they are still where they were).
enum Failure {
    Read(String),
    Write(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Read(e) | Failure::Write(e) => f.write_str(e),
        }
    }
}

/// Writes what `m` yields and `f` keeps (changed as `f` changes it) as a new run.
fn write_run(
    spill: &Spill,
    mut m: Merge<'_>,
    expected: usize,
    mut f: impl FnMut(&mut Packed) -> bool,
) -> Result<Option<Run>, Failure> {
    let mut w = RunWriter::new(spill, expected).map_err(Failure::Write)?;
    while let Some((k, mut g)) = m.next().map_err(Failure::Read)? {
        if f(&mut g) {
            w.push(k, g).map_err(Failure::Write)?;
        }
    }
    w.finish().map_err(Failure::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::FileExt;

    fn key(i: u64) -> Key {
        [mix(i.wrapping_mul(3)), i]
    }

    /// A pages file (unnamed, in the temporary directory) and its key.
    fn saved_pages(spill: &Spill) -> (Arc<Scratch>, [u8; 32]) {
        let key = [7u8; 32];
        let file = tempfile::tempfile_in(spill.dir()).unwrap();
        (Arc::new(Scratch::with_key(file, &key)), key)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a plain map, with runs of two entries a page written out every
        /// three identities: look-ups, first entry kept, a shred's rewrite, the sorted
        /// walk, and the walk read back.
        #[test]
        fn the_table_answers_as_a_map_does(
            ops in proptest::collection::vec((0u64..40, 0u64..1000), 0..120),
            cut in 0u64..1000,
        ) {
            let spill = Spill::tiny();
            let mut t = Identities::new(spill.clone());
            let mut m: std::collections::BTreeMap<Key, Packed> = Default::default();
            for (i, g) in &ops {
                let k = key(*i);
                prop_assert_eq!(t.get(&k), m.get(&k).copied());
                if t.get(&k).is_none() {
                    t.insert_new(k, *g);
                }
                m.entry(k).or_insert(*g);
            }
            prop_assert_eq!(t.len(), m.len());
            for i in 0..45 {
                prop_assert_eq!(t.get(&key(i)), m.get(&key(i)).copied());
            }
            t.retain_map(|g| { *g += 1; *g <= cut });
            m.retain(|_, g| { *g += 1; *g <= cut });
            let walked: Vec<(Key, Packed)> = t.sorted().collect();
            prop_assert_eq!(&walked, &m.iter().map(|(k, g)| (*k, *g)).collect::<Vec<_>>());
            let (file, _) = saved_pages(&spill);
            let (saved, _) = t.save_into(Sealer::new(file.clone())).unwrap();
            prop_assert_eq!(saved.len, walked.len());
            let size = file.file.metadata().unwrap().len();
            let back = Identities::adopt(&spill, &file, size, saved).unwrap();
            for i in 0..45 {
                prop_assert_eq!(back.get(&key(i)), m.get(&key(i)).copied());
            }
            prop_assert!(!t.damaged() && !back.damaged());
        }
    }

    #[test]
    fn when_runs_cannot_be_written_identities_stay_in_memory_and_nothing_is_lost() {
        let mut t = Identities::new(Spill::tiny());
        for i in 0..10 {
            t.insert_new(key(i), i);
        }
        assert!(!t.runs.is_empty());
        // The scratch directory is gone: no new run can be made.
        let mut broken = Spill::new(Some("/proc/custos-no-such-dir".into()), 1);
        if let Some(s) = Arc::get_mut(&mut broken) {
            s.ident_page = 2;
            s.ident_recent = 3;
        }
        t.spill = broken;
        for i in 10..20 {
            t.insert_new(key(i), i);
        }
        // A shred's rewrite keeps the even groups.
        t.retain_map(|g| g.is_multiple_of(2));
        assert!(t.runs.is_empty());
        for i in 0..20 {
            let want = (i % 2 == 0).then_some(i);
            assert_eq!(t.get(&key(i)), want, "identity {i}");
        }
        assert_eq!(t.len(), 10);
        assert!(!t.damaged());
    }

    #[test]
    fn a_filter_holds_what_was_put_in_and_little_else() {
        let mut f = Filter::new(10_000);
        for i in 0..10_000 {
            f.insert(&key(i));
        }
        assert!((0..10_000).all(|i| f.may_hold(&key(i))));
        let others = (10_000..110_000).filter(|i| f.may_hold(&key(*i))).count();
        assert!(others < 2_000, "{others} false positives in 100,000");
    }

    #[test]
    fn identities_do_not_lie_in_the_clear_on_disk_and_a_changed_page_marks_the_table_damaged() {
        let spill = Spill::tiny();
        let mut t = Identities::new(spill.clone());
        let marker = 0x5a5a_5a5a_5a5a_5a5a_u64;
        for i in 0..12 {
            t.insert_new([marker, i], marker);
        }
        assert!(t.recent.len() < 3 && !t.runs.is_empty());
        let mut flipped = false;
        for run in &t.runs {
            let mut bytes = Vec::new();
            let mut at = 0u64;
            let mut buf = [0u8; 4096];
            while let Ok(n) = run.region.scratch.file.read_at(&mut buf, at) {
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..n]);
                at += n as u64;
            }
            let needle = marker.to_le_bytes();
            assert!(
                !bytes.windows(8).any(|w| w == needle),
                "an identity in the clear"
            );
            if !flipped {
                run.region
                    .scratch
                    .file
                    .write_all_at(&[bytes[0] ^ 1], 0)
                    .unwrap();
                flipped = true;
            }
        }
        let _ = (0..12).filter_map(|i| t.get(&[marker, i])).count();
        assert!(t.damaged());
        let fresh = Identities::new(spill);
        assert!(!fresh.damaged());
    }
}
