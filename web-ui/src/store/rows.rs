//! A chain's rows, in seq order, read and changed by position.
//!
//! Rows are kept in pages of [`PAGE_ROWS`] (1 KiB). The pages in use stay in memory, a
//! bounded number per chain; the rest are sealed (AES-256-GCM) into an unnamed scratch
//! file under a key drawn for that file alone, which exists only in this process's
//! memory, so what the store keeps grows on disk, not in memory, with the archive. The
//! file is gone when the process ends; the saved state (sealed under the master key)
//! stays the only copy that outlives it. Within a file, a page's nonce is its number and
//! how many times it has been sealed, a count kept in memory: no nonce is used twice
//! under a key, and a page changed, moved or put back as it was before is refused when
//! read, never taken for another. After a start from a saved state, the pages it saved
//! are read from its pages file (`sealed.rs`) until they change.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::sealed::{Region, Sealer};
use super::Row;

/// A row's fixed size in a page.
pub(super) const ROW_BYTES: usize = 8 * 5 + 4 * 5 + 2;

impl Row {
    /// The row in [`ROW_BYTES`] bytes, little-endian, fields in declaration order.
    pub(super) fn to_bytes(self) -> [u8; ROW_BYTES] {
        let mut b = [0u8; ROW_BYTES];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            b[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.seq.to_le_bytes());
        put(&self.time.to_le_bytes());
        put(&self.place.to_le_bytes());
        put(&self.link.to_le_bytes());
        put(&self.next.to_le_bytes());
        put(&self.from.to_le_bytes());
        put(&self.to.to_le_bytes());
        put(&self.rules.to_le_bytes());
        put(&self.kind.to_le_bytes());
        put(&self.extra.to_le_bytes());
        put(&self.bits.to_le_bytes());
        b
    }

    /// Reads [`Row::to_bytes`] back.
    pub(super) fn from_bytes(b: &[u8; ROW_BYTES]) -> Row {
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let w8 = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            a
        };
        let w4 = |s: &[u8]| {
            let mut a = [0u8; 4];
            a.copy_from_slice(s);
            a
        };
        Row {
            seq: u64::from_le_bytes(w8(take(8))),
            time: i64::from_le_bytes(w8(take(8))),
            place: u64::from_le_bytes(w8(take(8))),
            link: u64::from_le_bytes(w8(take(8))),
            next: u64::from_le_bytes(w8(take(8))),
            from: u32::from_le_bytes(w4(take(4))),
            to: u32::from_le_bytes(w4(take(4))),
            rules: u32::from_le_bytes(w4(take(4))),
            kind: u32::from_le_bytes(w4(take(4))),
            extra: u32::from_le_bytes(w4(take(4))),
            bits: u16::from_le_bytes([b[ROW_BYTES - 2], b[ROW_BYTES - 1]]),
        }
    }
}

/// Rows to a page.
const PAGE_ROWS: usize = 16;
pub(super) const TAG_BYTES: usize = 16;
/// Pages written with one call at most.
const WRITE_PAGES: usize = 64;
/// Pages each chain keeps in memory: 8 MiB of rows, the copies of the last 131,072.
pub const CACHE_PAGES: usize = 8192;

/// Where a store's chains put the pages they do not keep in memory, and how many they
/// keep. Where no scratch file can be made, pages stay in memory (logged).
pub struct Spill {
    dir: Option<PathBuf>,
    cache_pages: usize,
    /// Rows to a page ([`PAGE_ROWS`] but in tests).
    page_rows: usize,
    /// Entries to a page of an identity run, and identities kept in memory before they
    /// are written out (see `identities.rs`; smaller in tests).
    pub(super) ident_page: usize,
    pub(super) ident_recent: usize,
    /// Messages to a conversation block (`store.rs`, `Conversation`).
    pub(super) conv_block: usize,
}

impl Spill {
    /// A spill keeping `cache_pages` pages per chain in memory and the rest in scratch
    /// files in `dir` (`None`: the system's temporary directory).
    pub fn new(dir: Option<PathBuf>, cache_pages: usize) -> Arc<Spill> {
        Arc::new(Spill {
            dir,
            cache_pages: cache_pages.max(1),
            page_rows: PAGE_ROWS,
            ident_page: super::identities::PAGE_ENTRIES,
            ident_recent: super::identities::RECENT_ENTRIES,
            conv_block: super::CONVERSATION_BLOCK,
        })
    }

    /// A spill of one page of two rows in memory, identity runs of two to a page
    /// written out every three identities, and conversation blocks of two messages, so
    /// that few messages exercise them all.
    #[cfg(test)]
    pub(super) fn tiny() -> Arc<Spill> {
        Spill::tiny_in(None)
    }

    /// [`Spill::tiny`] with its files in `dir`.
    #[cfg(test)]
    pub(super) fn tiny_in(dir: Option<PathBuf>) -> Arc<Spill> {
        let mut s = Spill::new(dir, 1);
        if let Some(s) = Arc::get_mut(&mut s) {
            s.page_rows = 2;
            s.ident_page = 2;
            s.ident_recent = 3;
            s.conv_block = 2;
        }
        s
    }

    fn page_bytes(&self) -> usize {
        self.page_rows * ROW_BYTES
    }

    /// A new scratch file and its own key.
    pub(super) fn scratch(&self) -> Result<Scratch, String> {
        let dir = self.dir();
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("no key for a scratch file: {e}"))?;
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| tempfile::tempfile_in(&dir))
            .map(|file| Scratch::with_key(file, &key))
            .map_err(|e| format!("a scratch file in {}: {e}", dir.display()));
        key.fill(0);
        made
    }

    /// Where scratch files and the saved state's pages file go.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Bytes of a sealed page of rows.
    pub(super) fn row_slot(&self) -> usize {
        self.page_bytes() + TAG_BYTES
    }

    pub(super) fn page_rows(&self) -> usize {
        self.page_rows
    }
}

/// A scratch file and the key its pages are sealed under, which seals nothing else.
pub(super) struct Scratch {
    pub(super) file: File,
    cipher: Aes256Gcm,
}

impl Scratch {
    /// `file`, its pages sealed under `key`.
    pub(super) fn with_key(file: File, key: &[u8; 32]) -> Scratch {
        Scratch {
            file,
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Seals `slot` in place (its body, then [`TAG_BYTES`] the tag goes into) as the
    /// `count`th sealing of page `page`. A file's page and count never repeat.
    pub(super) fn seal(&self, page: usize, count: u32, slot: &mut [u8]) -> Result<(), String> {
        let body = slot
            .len()
            .checked_sub(TAG_BYTES)
            .ok_or("no room for a tag")?;
        let (plain, tag) = slot.split_at_mut(body);
        let t = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce(page, count)), b"", plain)
            .map_err(|_| "sealing failed")?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    /// Opens a slot [`Scratch::seal`] made, in place; its body is then in the clear.
    pub(super) fn open(&self, page: usize, count: u32, slot: &mut [u8]) -> Result<(), String> {
        let body = slot
            .len()
            .checked_sub(TAG_BYTES)
            .ok_or_else(|| format!("page {page} cut short"))?;
        let (plain, tag) = slot.split_at_mut(body);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce(page, count)),
                b"",
                plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| format!("page {page} does not open: changed since it was sealed"))
    }
}

/// One chain's rows. Rows are handed out by value: where they are kept is this type's
/// business alone.
pub(super) struct Rows {
    len: usize,
    /// Each page's first seq (rows are in seq order), so a seq is found by reading one
    /// page: 8 bytes a page, kept in memory.
    firsts: Vec<u64>,
    spill: Arc<Spill>,
    pages: Mutex<Pages>,
}

#[derive(Default)]
struct Pages {
    /// Made when the first page leaves memory.
    file: Option<Arc<Scratch>>,
    /// Per page, how many times it has been sealed into the file (0: never).
    sealed: Vec<u32>,
    /// Pages as the saved state had them (`sealed.rs`), read from its pages file until
    /// they are sealed into the scratch file: the first `base_pages` pages.
    base: Option<Region>,
    base_pages: usize,
    cache: HashMap<usize, Cached>,
    /// Row buffers of pages that left memory, for the next ones to come in: pages
    /// come and go without the allocator (whose freed pieces, scattered among
    /// long-lived ones, would stay resident).
    spare: Vec<Vec<Row>>,
    clock: u64,
    /// Whether a failure of the scratch file has been logged.
    reported: bool,
    /// Sealed pages on their way to the file (kept for the next batch).
    sealing: Vec<u8>,
    /// A sealed page could not be read back (or a row not added): rows are missing,
    /// and the store must be built again from the log.
    damaged: bool,
}

struct Cached {
    rows: Vec<Row>,
    /// Changed since it was last sealed.
    dirty: bool,
    used: u64,
}

/// Where a page out of memory is read from.
enum Source {
    /// The scratch file, where it was sealed for the `count`th time.
    Scratch(Arc<Scratch>, u32),
    /// The saved state's pages file.
    Base(Region),
}

/// Reads page `page` (`n` rows) from `from` into `out`.
fn open_page(
    spill: &Spill,
    from: &Source,
    (page, n): (usize, usize),
    out: &mut Vec<Row>,
) -> Result<(), String> {
    let slot = spill.row_slot();
    let mut buf = vec![0u8; slot];
    match from {
        Source::Scratch(scratch, count) => {
            let at = (page as u64).saturating_mul(slot as u64);
            scratch
                .file
                .read_exact_at(&mut buf, at)
                .map_err(|e| e.to_string())?;
            scratch.open(page, *count, &mut buf)?;
        }
        Source::Base(region) => {
            region.read(page, &mut buf)?;
            region
                .open(page, &mut buf)
                .map_err(|e| format!("saved state's {e}"))?;
        }
    }
    out.clear();
    out.extend(
        buf.chunks_exact(ROW_BYTES)
            .take(n)
            .filter_map(|b| <&[u8; ROW_BYTES]>::try_from(b).ok())
            .map(Row::from_bytes),
    );
    Ok(())
}

fn nonce(page: usize, count: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&(page as u64).to_le_bytes());
    n[8..].copy_from_slice(&count.to_le_bytes());
    n
}

impl Pages {
    /// Logs the first failure to write: the page stays in memory, nothing is lost.
    fn report(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !self.reported {
            self.reported = true;
            tracing::error!(cause = %e, "{what} in the review state's scratch file; pages stay in memory");
        }
    }

    /// A page that was sealed cannot be read back: rows are missing.
    fn lost(&mut self, e: &dyn std::fmt::Display) {
        if !self.damaged {
            self.damaged = true;
            tracing::error!(cause = %e, "a page of the review state's scratch file cannot be read back; the state is built again from the archive");
        }
    }

    /// Where page `page` is read from when it is not in memory; `None` for a page
    /// never sealed (one begun now).
    fn source(&self, page: usize) -> Option<Result<Source, String>> {
        match self.sealed.get(page).copied().unwrap_or(0) {
            0 => match &self.base {
                Some(base) if page < self.base_pages => Some(Ok(Source::Base(base.clone()))),
                _ => None,
            },
            count => Some(match &self.file {
                Some(file) => Ok(Source::Scratch(file.clone(), count)),
                None => Err(format!(
                    "page {page} was sealed, but there is no scratch file"
                )),
            }),
        }
    }

    /// Page `page` (`n` rows) read back from the file.
    fn read(&mut self, spill: &Spill, page: usize, n: usize) -> Option<Vec<Row>> {
        let mut rows = self.buffer(spill);
        let opened = match self.source(page) {
            None => return Some(rows),
            Some(Ok(from)) => open_page(spill, &from, (page, n), &mut rows),
            Some(Err(e)) => Err(e),
        };
        match opened {
            Ok(()) => Some(rows),
            Err(e) => {
                self.spare.push(rows);
                self.lost(&e);
                None
            }
        }
    }

    /// An empty row buffer for a page.
    fn buffer(&mut self, spill: &Spill) -> Vec<Row> {
        let mut b = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(spill.page_rows));
        b.clear();
        b
    }

    /// Seals `rows` as page `page` into the file.
    fn seal(&mut self, spill: &Spill, page: usize, rows: &[Row]) -> Result<(), String> {
        let mut buf = Vec::new();
        self.seal_into(spill, page, rows, &mut buf)?;
        self.write(spill, page, &buf)
    }

    /// Writes sealed pages `buf`, the first of them page `page`, into their slots.
    fn write(&self, spill: &Spill, page: usize, buf: &[u8]) -> Result<(), String> {
        let scratch = self.file.as_ref().ok_or("no scratch file")?;
        let slot = spill.page_bytes() + TAG_BYTES;
        let at = (page as u64).saturating_mul(slot as u64);
        scratch
            .file
            .write_all_at(buf, at)
            .map_err(|e| e.to_string())
    }

    /// Seals `rows` as page `page` and appends its slot to `out`, to be written there.
    fn seal_into(
        &mut self,
        spill: &Spill,
        page: usize,
        rows: &[Row],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let count = self
            .sealed
            .get(page)
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or("a page sealed too often")?;
        if self.file.is_none() {
            self.file = Some(Arc::new(spill.scratch()?));
        }
        let scratch = self.file.as_ref().ok_or("no scratch file")?;
        let slot = spill.page_bytes() + TAG_BYTES;
        let start = out.len();
        out.resize(start + slot, 0);
        let buf = out.get_mut(start..).ok_or("no room")?;
        for (r, b) in rows.iter().zip(buf.chunks_exact_mut(ROW_BYTES)) {
            b.copy_from_slice(&r.to_bytes());
        }
        scratch.seal(page, count, buf)?;
        // The count moves on before the write: a write that fails part-way leaves bytes
        // under this nonce, and the next seal of this page must not use it again. The
        // page stays in memory until a seal of it succeeds, so its slot is not read
        // meanwhile.
        if self.sealed.len() <= page {
            self.sealed.resize(page + 1, 0);
        }
        if let Some(c) = self.sealed.get_mut(page) {
            *c = count;
        }
        Ok(())
    }

    /// Page `page` (`n` rows) in memory, read in when it is not.
    fn load(&mut self, spill: &Spill, page: usize, n: usize) -> Option<&mut Cached> {
        self.clock += 1;
        let clock = self.clock;
        if !self.cache.contains_key(&page) {
            let rows = self.read(spill, page, n)?;
            self.keep(page, rows, false);
            self.shrink(spill);
        }
        let c = self.cache.get_mut(&page)?;
        c.used = clock;
        Some(c)
    }

    /// Puts page `page` in memory as the one used last.
    fn keep(&mut self, page: usize, rows: Vec<Row>, dirty: bool) {
        self.clock += 1;
        let used = self.clock;
        self.cache.insert(page, Cached { rows, dirty, used });
    }

    /// Seals the least recently used eighth of the pages out of memory when there are
    /// more than the spill keeps. A page that cannot be sealed stays.
    fn shrink(&mut self, spill: &Spill) {
        let cap = spill.cache_pages;
        if self.cache.len() <= cap {
            return;
        }
        let excess = self.cache.len() - cap + cap / 8;
        let mut used: Vec<u64> = self.cache.values().map(|c| c.used).collect();
        let k = excess.min(used.len()).saturating_sub(1);
        let limit = *used.select_nth_unstable(k).1;
        let mut old: Vec<usize> = self
            .cache
            .iter()
            .filter(|(_, c)| c.used <= limit)
            .map(|(p, _)| *p)
            .collect();
        // Pages of neighbouring numbers are written with one call: rows read in order
        // (a start, a catch-up) leave memory in runs of consecutive pages.
        old.sort_unstable();
        let mut batch: Vec<(usize, Cached)> = Vec::new();
        let mut sealed = std::mem::take(&mut self.sealing);
        sealed.clear();
        for p in old {
            let Some(c) = self.cache.remove(&p) else {
                continue;
            };
            if !c.dirty {
                self.spare.push(c.rows);
                continue;
            }
            let follows = batch.last().is_some_and(|(q, _)| q + 1 == p);
            if !follows || batch.len() >= WRITE_PAGES {
                if let Err(e) = self.write_batch(spill, &mut batch, &sealed) {
                    // It and the rest stay; the next page read in tries again.
                    self.report("a page cannot be written", &e);
                    self.cache.insert(p, c);
                    self.sealing = sealed;
                    return;
                }
                sealed.clear();
            }
            let before = sealed.len();
            if let Err(e) = self.seal_into(spill, p, &c.rows, &mut sealed) {
                sealed.truncate(before);
                self.report("a page cannot be sealed", &e);
                self.cache.insert(p, c);
                let _ = self.write_batch(spill, &mut batch, &sealed);
                self.sealing = sealed;
                return;
            }
            batch.push((p, c));
        }
        if let Err(e) = self.write_batch(spill, &mut batch, &sealed) {
            self.report("a page cannot be written", &e);
        }
        self.sealing = sealed;
    }

    /// Writes the sealed slots of `batch`'s consecutive pages; their rows leave memory
    /// when written, and stay (to be sealed again) when not.
    fn write_batch(
        &mut self,
        spill: &Spill,
        batch: &mut Vec<(usize, Cached)>,
        sealed: &[u8],
    ) -> Result<(), String> {
        let Some(&(first, _)) = batch.first() else {
            return Ok(());
        };
        let written = self.write(spill, first, sealed);
        for (p, c) in batch.drain(..) {
            if written.is_ok() {
                self.spare.push(c.rows);
            } else {
                self.cache.insert(p, c);
            }
        }
        written
    }
}

impl Rows {
    pub(super) fn new(spill: Arc<Spill>) -> Rows {
        Rows {
            len: 0,
            firsts: Vec::new(),
            spill,
            pages: Mutex::new(Pages::default()),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Rows a saved state wrote with [`Rows::seal_pages`]: `len` rows in `region`,
    /// each page's first seq in `firsts`. Nothing is read now: a page is read when
    /// first needed, and a page that does not open then marks the rows damaged.
    pub(super) fn adopt(
        spill: Arc<Spill>,
        region: Region,
        len: usize,
        firsts: Vec<u64>,
    ) -> Result<Rows, String> {
        let pages = len.div_ceil(spill.page_rows.max(1));
        if firsts.len() != pages || region.slot != spill.row_slot() {
            return Err(format!(
                "{len} rows in {} pages of {} bytes",
                firsts.len(),
                region.slot
            ));
        }
        if firsts.windows(2).any(|w| w[0] >= w[1]) {
            return Err("pages out of order".into());
        }
        Ok(Rows {
            len,
            firsts,
            spill,
            pages: Mutex::new(Pages {
                base: Some(region),
                base_pages: pages,
                ..Pages::default()
            }),
        })
    }

    /// Seals every page into `out`, in order, and says where they went; a page that
    /// cannot be read is an error (logged, and the rows marked damaged).
    pub(super) fn seal_pages(&self, out: &mut Sealer) -> Result<Region, String> {
        let region = out.region(self.spill.row_slot());
        let mut slot = vec![0u8; self.spill.row_slot()];
        for page in 0..self.page_count() {
            slot.fill(0);
            let filled = self.with_page(page, false, |rows| {
                for (r, b) in rows.iter().zip(slot.chunks_exact_mut(ROW_BYTES)) {
                    b.copy_from_slice(&r.to_bytes());
                }
            });
            if filled.is_none() {
                return Err(format!("page {page} of the rows cannot be read back"));
            }
            out.push(&mut slot)?;
        }
        Ok(region)
    }

    /// Each page's first seq.
    pub(super) fn firsts(&self) -> &[u64] {
        &self.firsts
    }

    /// Rows in page `page`.
    fn page_len(&self, page: usize) -> usize {
        self.len
            .saturating_sub(page.saturating_mul(self.spill.page_rows))
            .min(self.spill.page_rows)
    }

    fn page_count(&self) -> usize {
        self.len.div_ceil(self.spill.page_rows)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pages> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of page `page`'s rows; `None` when it cannot be read (logged). A page not
    /// in memory is read and opened without holding the lock, so readers (a page
    /// view, a save walking every row) do not wait on each other's reads, and joins
    /// the pages in memory when `keep`.
    fn with_page<T>(&self, page: usize, keep: bool, f: impl FnOnce(&[Row]) -> T) -> Option<T> {
        let n = self.page_len(page);
        let (from, mut rows) = {
            let mut pages = self.lock();
            pages.clock += 1;
            let clock = pages.clock;
            if let Some(c) = pages.cache.get_mut(&page) {
                c.used = clock;
                return Some(f(&c.rows));
            }
            match pages.source(page) {
                Some(Ok(from)) => (from, pages.buffer(&self.spill)),
                _ => return pages.load(&self.spill, page, n).map(|c| f(&c.rows)),
            }
        };
        let opened = open_page(&self.spill, &from, (page, n), &mut rows);
        let mut pages = self.lock();
        if opened.is_err() {
            pages.spare.push(rows);
            // Unreadable: once more under the lock, which marks the rows damaged.
            return pages.load(&self.spill, page, n).map(|c| f(&c.rows));
        }
        // Rows change, and pages are sealed anew, only through `&mut self` or from
        // memory: what was read is current even if another reader brought the page in
        // meanwhile.
        let out = f(&rows);
        if keep && !pages.cache.contains_key(&page) {
            pages.keep(page, rows, false);
            pages.shrink(&self.spill);
        } else {
            pages.spare.push(rows);
        }
        Some(out)
    }

    /// Row `i`; `None` past the end, or when its page cannot be read back (logged).
    pub(super) fn get(&self, i: usize) -> Option<Row> {
        if i >= self.len {
            return None;
        }
        let (page, at) = (i / self.spill.page_rows, i % self.spill.page_rows);
        self.with_page(page, true, |rows| rows.get(at).copied())
            .flatten()
    }

    /// Where the row with `seq` is, reading the one page it can be in.
    pub(super) fn position(&self, seq: u64) -> Option<usize> {
        let page = self.firsts.partition_point(|f| *f <= seq).checked_sub(1)?;
        let i = self
            .with_page(page, true, |rows| {
                rows.binary_search_by_key(&seq, |r| r.seq).ok()
            })
            .flatten()?;
        Some(page * self.spill.page_rows + i)
    }

    /// Adds `r` at the end; its seq must be above every other row's.
    pub(super) fn push(&mut self, r: Row) {
        let page = self.len / self.spill.page_rows;
        let begun = self.len.is_multiple_of(self.spill.page_rows);
        let n = self.page_len(page);
        let spill = &*self.spill;
        let pages = self.pages.get_mut().unwrap_or_else(|e| e.into_inner());
        match pages.load(spill, page, n) {
            Some(c) => {
                c.rows.push(r);
                c.dirty = true;
                self.len += 1;
                if begun {
                    self.firsts.push(r.seq);
                }
            }
            // `load` has marked the rows damaged: the store is built again.
            None => pages.damaged = true,
        }
    }

    /// Changes row `i` with `f`; false when there is no row `i` (or it cannot be read).
    pub(super) fn update(&mut self, i: usize, f: impl FnOnce(&mut Row)) -> bool {
        if i >= self.len {
            return false;
        }
        let page = i / self.spill.page_rows;
        let n = self.page_len(page);
        let spill = &*self.spill;
        let pages = self.pages.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(c) = pages.load(spill, page, n) else {
            return false;
        };
        match c.rows.get_mut(i % spill.page_rows) {
            Some(r) => {
                // A row's place follows from its seq, which stays.
                let seq = r.seq;
                f(r);
                r.seq = seq;
                c.dirty = true;
                true
            }
            None => false,
        }
    }

    /// Changes every row with `f`, in order, a page at a time; pages not in memory are
    /// sealed back without joining it.
    pub(super) fn update_all(&mut self, mut f: impl FnMut(&mut Row)) {
        let mut f = |r: &mut Row| {
            let seq = r.seq;
            f(r);
            r.seq = seq;
        };
        for page in 0..self.page_count() {
            let n = self.page_len(page);
            let spill = &*self.spill;
            let pages = self.pages.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = pages.cache.get_mut(&page) {
                c.rows.iter_mut().for_each(&mut f);
                c.dirty = true;
                continue;
            }
            let Some(mut rows) = pages.read(spill, page, n) else {
                continue;
            };
            rows.iter_mut().for_each(&mut f);
            if let Err(e) = pages.seal(spill, page, &rows) {
                pages.report("a page cannot be written", &e);
                pages.keep(page, rows, true);
            } else {
                pages.spare.push(rows);
            }
        }
        // Every page is now in the scratch file or changed in memory: nothing is read
        // from the saved state's pages file again, which is let go.
        let pages = self.pages.get_mut().unwrap_or_else(|e| e.into_inner());
        if !pages.damaged {
            pages.base = None;
            pages.base_pages = 0;
        }
    }

    /// Keeps the rows `keep` says yes to, in order (into a new scratch file). Rows
    /// that could not be read leave the new rows damaged too.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Row) -> bool) {
        let mut kept = Rows::new(self.spill.clone());
        for r in self.iter() {
            if keep(&r) {
                kept.push(r);
            }
        }
        if self.damaged() {
            kept.pages
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .damaged = true;
        }
        *self = kept;
    }

    /// Reads the pages from `from` on that are still read from the saved state's pages
    /// file, at most `n` of them, so that one changed there is found (and the rows
    /// marked damaged) without waiting for a page view to need it. Returns where to go
    /// on from; `None` when every page has been looked at.
    pub(super) fn check_base(&self, from: usize, n: usize) -> Option<usize> {
        let (base_pages, todo) = {
            let pages = self.lock();
            let todo: Vec<usize> = (from..pages.base_pages.min(from.saturating_add(n)))
                .filter(|p| {
                    pages.sealed.get(*p).copied().unwrap_or(0) == 0 && !pages.cache.contains_key(p)
                })
                .collect();
            (pages.base_pages, todo)
        };
        for page in todo {
            // Unreadable: marked damaged where it is read.
            let _ = self.with_page(page, false, |_| ());
        }
        let next = from.saturating_add(n);
        (next < base_pages).then_some(next)
    }

    /// Whether rows were lost: a page sealed out of memory could not be read back.
    /// Everything built from these rows since is suspect.
    pub(super) fn damaged(&self) -> bool {
        self.lock().damaged
    }

    /// Moves the rows out, leaving none.
    pub(super) fn take(&mut self) -> Rows {
        std::mem::replace(self, Rows::new(self.spill.clone()))
    }

    /// Every row, in order; pages not in memory are read without joining it.
    pub(super) fn iter(&self) -> impl Iterator<Item = Row> + '_ {
        (0..self.page_count()).flat_map(move |page| {
            self.with_page(page, false, <[Row]>::to_vec)
                .unwrap_or_default()
        })
    }

    /// The scratch file, once pages have left memory.
    #[cfg(test)]
    pub(super) fn scratch_file(&mut self) -> Option<&File> {
        let pages = self.pages.get_mut().unwrap_or_else(|e| e.into_inner());
        pages.file.as_ref().map(|s| &s.file)
    }

    /// Pages held in memory (for tests and figures).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(seq: u64) -> Row {
        Row {
            seq,
            time: seq as i64 * 7,
            place: seq << 3,
            link: seq ^ 0xff,
            next: 0,
            from: seq as u32,
            to: 3,
            rules: 0,
            kind: 1,
            extra: 0,
            bits: (seq % 512) as u16,
        }
    }

    fn seqs(r: &Rows) -> Vec<u64> {
        r.iter().map(|r| r.seq).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Get(usize),
        Update(usize, u64),
        UpdateAll(u64),
        Retain(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => Just(Op::Push),
            4 => any::<usize>().prop_map(Op::Get),
            3 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::Update(i, v)),
            1 => any::<u64>().prop_map(Op::UpdateAll),
            1 => (2u64..5).prop_map(Op::Retain),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With room for two pages in memory, rows read, changed, kept and walked are
        /// those a plain list would give, wherever they are kept.
        #[test]
        fn rows_kept_out_of_memory_are_the_rows_put_in(ops in prop::collection::vec(op(), 1..80)) {
            let mut rows = Rows::new(Spill::new(None, 2));
            let mut model: Vec<Row> = Vec::new();
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        // Pushes come in runs, so pages fill and leave memory.
                        for _ in 0..30 {
                            seq += 1;
                            rows.push(row(seq));
                            model.push(row(seq));
                        }
                    }
                    Op::Get(i) => {
                        let i = i % (model.len() + 1);
                        prop_assert_eq!(rows.get(i).map(Row::to_bytes), model.get(i).map(|r| r.to_bytes()));
                        if let Some(m) = model.get(i) {
                            prop_assert_eq!(rows.position(m.seq), Some(i));
                        }
                        prop_assert_eq!(rows.position(seq + 1), None);
                        prop_assert_eq!(rows.position(0), None);
                    }
                    Op::Update(i, v) => {
                        let i = i % (model.len() + 1);
                        let done = rows.update(i, |r| r.next = v);
                        prop_assert_eq!(done, i < model.len());
                        if let Some(r) = model.get_mut(i) {
                            r.next = v;
                        }
                    }
                    Op::UpdateAll(v) => {
                        rows.update_all(|r| r.link = r.link.wrapping_add(v));
                        model.iter_mut().for_each(|r| r.link = r.link.wrapping_add(v));
                    }
                    Op::Retain(m) => {
                        rows.retain(|r| r.seq % m != 0);
                        model.retain(|r| r.seq % m != 0);
                        if seq >= m {
                            prop_assert_eq!(rows.position(seq - seq % m), None);
                        }
                    }
                }
                prop_assert_eq!(rows.len(), model.len());
                prop_assert!(rows.cached() <= 3, "{} pages in memory", rows.cached());
            }
            let all: Vec<_> = rows.iter().map(Row::to_bytes).collect();
            let want: Vec<_> = model.iter().map(|r| r.to_bytes()).collect();
            prop_assert_eq!(all, want);
        }
    }

    /// Rows taken from a saved state's pages file read from it until they change;
    /// once every page has been rewritten into the scratch file (a shred's rewrite), the
    /// pages file is let go: nothing reads it again.
    #[test]
    fn rows_taken_from_a_saved_pages_file_let_it_go_once_all_are_rewritten() {
        let spill = Spill::tiny();
        let mut r = Rows::new(spill.clone());
        for s in 1..=9 {
            r.push(row(s));
        }
        let saved = Arc::new(Scratch::with_key(tempfile::tempfile().unwrap(), &[9; 32]));
        let mut out = Sealer::new(saved.clone());
        let region = r.seal_pages(&mut out).unwrap();
        out.sync().unwrap();
        let mut back = Rows::adopt(spill, region, r.len(), r.firsts().to_vec()).unwrap();
        assert_eq!(seqs(&back), (1..=9).collect::<Vec<_>>());
        back.push(row(10));
        back.update_all(|row| row.kind += 1);
        assert!(back.lock().base.is_none());
        saved.file.set_len(0).unwrap();
        assert_eq!(seqs(&back), (1..=10).collect::<Vec<_>>());
        assert!(back.iter().all(|r| r.kind == row(r.seq).kind + 1));
        assert!(!back.damaged());
    }

    /// Fills `rows` with `n` rows and writes every page out but the last one read.
    fn spilled(n: u64) -> Rows {
        let mut rows = Rows::new(Spill::new(None, 1));
        for s in 1..=n {
            rows.push(row(s));
        }
        assert_eq!(seqs(&rows).len() as u64, n);
        rows
    }

    fn file(rows: &mut Rows) -> &File {
        &rows
            .pages
            .get_mut()
            .unwrap()
            .file
            .as_ref()
            .expect("pages were written out")
            .file
    }

    #[test]
    fn pages_that_cannot_be_written_stay_in_memory_and_leave_it_once_they_can() {
        use std::os::fd::AsRawFd;
        let mut spill = Spill::new(None, 8);
        Arc::get_mut(&mut spill).unwrap().page_rows = 2;
        let mut rows = Rows::new(spill);
        for s in 1..=40 {
            rows.push(row(s));
        }
        assert!(rows.cached() <= 8);
        // The scratch file, open for reading only: every write fails.
        let writable = rows.pages.get_mut().unwrap().file.take().unwrap();
        let read_only = File::open(format!("/proc/self/fd/{}", writable.file.as_raw_fd())).unwrap();
        rows.pages.get_mut().unwrap().file = Some(Arc::new(Scratch {
            file: read_only,
            cipher: writable.cipher.clone(),
        }));
        for s in 41..=80 {
            rows.push(row(s));
        }
        assert!(
            rows.cached() > 8,
            "pages that could not be written left memory"
        );
        assert_eq!(seqs(&rows), (1..=80).collect::<Vec<_>>());
        assert!(!rows.damaged());
        rows.pages.get_mut().unwrap().file = Some(writable);
        for s in 81..=100 {
            rows.push(row(s));
        }
        assert!(rows.cached() <= 8);
        assert_eq!(seqs(&rows), (1..=100).collect::<Vec<_>>());
        assert!(!rows.damaged());
    }

    #[test]
    fn a_page_changed_in_the_scratch_file_is_refused_not_read() {
        let mut rows = spilled(300);
        let mut b = [0u8; 1];
        file(&mut rows).read_exact_at(&mut b, 10).unwrap();
        file(&mut rows).write_all_at(&[b[0] ^ 1], 10).unwrap();
        // Page 0 is out of memory: reading it finds the change.
        assert!(!rows.damaged());
        assert!(rows.get(0).is_none());
        assert!(rows.damaged());
        assert!(rows.get(PAGE_ROWS - 1).is_none());
        assert!(!rows.update(5, |r| r.next = 1));
        // The others are untouched.
        assert_eq!(
            rows.get(PAGE_ROWS).map(|r| r.seq),
            Some(PAGE_ROWS as u64 + 1)
        );
        assert_eq!(rows.get(299).map(|r| r.seq), Some(300));
    }

    #[test]
    fn a_page_put_back_as_it_was_before_is_refused() {
        let mut rows = spilled(300);
        let mut old = vec![0u8; PAGE_ROWS * ROW_BYTES + TAG_BYTES];
        file(&mut rows).read_exact_at(&mut old, 0).unwrap();
        assert!(rows.update(3, |r| r.next = 99));
        // Two more pages read push page 0 out of memory again, sealed anew.
        assert_eq!(rows.get(100).map(|r| r.seq), Some(101));
        assert_eq!(rows.get(200).map(|r| r.seq), Some(201));
        assert_eq!(rows.get(3).map(|r| r.next), Some(99));
        assert_eq!(rows.get(200).map(|r| r.seq), Some(201));
        // The page as first sealed, put back: a valid seal, but not the newest.
        file(&mut rows).write_all_at(&old, 0).unwrap();
        assert!(rows.get(3).is_none());
    }

    #[test]
    fn the_scratch_file_holds_no_row_in_the_clear() {
        let mut rows = spilled(300);
        let len = file(&mut rows).metadata().unwrap().len();
        let mut all = vec![0u8; len as usize];
        file(&mut rows).read_exact_at(&mut all, 0).unwrap();
        let needle = row(7).to_bytes();
        assert!(!all.windows(needle.len()).any(|w| w == needle));
        // Nor the first field of any row.
        assert!(!all.windows(8).any(|w| w == 7u64.to_le_bytes()));
    }

    #[test]
    fn rows_rewritten_into_a_new_file_are_sealed_under_a_new_key() {
        // A shred keeps some rows, writing them to a new file where page numbers and
        // seal counts start again: under the same key, its first page would reuse the
        // old file's first nonce.
        let mut rows = spilled(300);
        let mut before = vec![0u8; PAGE_ROWS * ROW_BYTES];
        file(&mut rows).read_exact_at(&mut before, 0).unwrap();
        let plain_before: Vec<u8> = (1..=PAGE_ROWS as u64)
            .flat_map(|s| row(s).to_bytes())
            .collect();
        rows.retain(|r| r.seq % 2 == 0);
        // Two rows read elsewhere push the new page 0 out of memory.
        assert_eq!(rows.get(100).map(|r| r.seq), Some(202));
        assert_eq!(rows.get(140).map(|r| r.seq), Some(282));
        let mut after = vec![0u8; PAGE_ROWS * ROW_BYTES];
        file(&mut rows).read_exact_at(&mut after, 0).unwrap();
        let plain_after: Vec<u8> = (1..=PAGE_ROWS as u64)
            .flat_map(|s| row(2 * s).to_bytes())
            .collect();
        let xor = |a: &[u8], b: &[u8]| -> Vec<u8> { a.iter().zip(b).map(|(x, y)| x ^ y).collect() };
        // The same key stream would make the ciphertexts differ as the rows do.
        assert_ne!(xor(&before, &after), xor(&plain_before, &plain_after));
    }
}
