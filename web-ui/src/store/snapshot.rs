//! The store written out whole and read back, so a restart goes on from the last
//! record it covers instead of reading every record again (see `docs/web-ui.md`).
//!
//! The rows and the identity table, the bulk of it, go into a new pages file beside
//! the state, sealed page by page under a key of its own (`sealed.rs`); a start takes
//! that file as it is and reads a page of it when first needed. The rest goes into a
//! sealed state file of the archive (`custos_archive::state`), which encrypts and
//! authenticates it, with the pages file's name and key, where each chain's rows and
//! the identities lie in it, each page's first row or identity, and the identities'
//! filter: what a start reads whole. This module only lays it out: the conversations
//! (each with its blocks) are fixed-size entries written field by field
//! (little-endian); the rest (review items, counts, holds) is small beside them. The
//! layout carries a version: a file of another version is not read, and the store is
//! rebuilt from the log.
//!
//! What the state covers is each chain's next seq and the chain head after the last
//! record read: the caller resumes its log cursors with them, which fails if a log no
//! longer holds that very record.

use std::io::{Read, Write};

use super::rows::{Rows, Scratch};
use super::sealed::{self, Region, Sealer};
use super::*;

/// Removes the pages files of earlier saves in the state directory `dir`: those the
/// state files that may be in place do not name (`keep`).
pub fn remove_other_pages(dir: &std::path::Path, keep: &[&str]) {
    sealed::remove_others(dir, keep);
}

/// Removes pages file `name` from `dir`: a save's whose state file was not put in place.
pub fn remove_pages(dir: &std::path::Path, name: &str) {
    sealed::remove(dir, name);
}

/// A key read back, zeroed when dropped, however the read ends.
struct Wiped([u8; 32]);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// Bumped whenever the layout or the meaning of a field changes.
const VERSION: u32 = 4;
const MAGIC: &[u8; 16] = b"custos-web-ui-st";
const END: u64 = 0x656e_6420_6f66_2073;

/// A saved store is not read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("saved review state: {0}")]
    Malformed(String),
    /// Written under other settings; the store is rebuilt under the current ones.
    #[error("saved review state was made {0}")]
    Stale(String),
}

fn malformed(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(what.into())
}

/// What a store was read up to in one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Covered {
    /// The first seq not applied.
    pub next_seq: u64,
    /// The chain head after record `next_seq - 1`.
    pub head: [u8; 32],
}

struct Enc<W: Write> {
    w: W,
}

impl<W: Write> Enc<W> {
    fn raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)
    }
    fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.raw(&[v])
    }
    fn u16(&mut self, v: u16) -> std::io::Result<()> {
        self.raw(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.raw(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.raw(&v.to_le_bytes())
    }
    fn i64(&mut self, v: i64) -> std::io::Result<()> {
        self.raw(&v.to_le_bytes())
    }
    fn len(&mut self, n: usize) -> std::io::Result<()> {
        self.u64(n as u64)
    }
    fn str(&mut self, s: &str) -> std::io::Result<()> {
        self.len(s.len())?;
        self.raw(s.as_bytes())
    }
    fn opt_str(&mut self, s: Option<&str>) -> std::io::Result<()> {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1)?;
                self.str(s)
            }
        }
    }
    fn msg_ref(&mut self, r: MsgRef) -> std::io::Result<()> {
        self.u16(r.chain)?;
        self.u64(r.seq)
    }
    fn action(&mut self, a: Action) -> std::io::Result<()> {
        self.u8(action_bits(a))
    }
    fn opt_action(&mut self, a: Option<Action>) -> std::io::Result<()> {
        self.u8(a.map_or(0, |a| action_bits(a) + 1))
    }
    fn status(&mut self, s: ReviewStatus) -> std::io::Result<()> {
        self.u8(status_bits(s))
    }
    fn event(&mut self, e: &ReviewEvent) -> std::io::Result<()> {
        self.msg_ref(e.audit)?;
        self.i64(e.time.0)?;
        self.str(&e.actor)?;
        self.str(&e.change)?;
        self.str(&e.comment)?;
        self.u8(e.status.map_or(0, |s| status_bits(s) + 1))?;
        match &e.assignee {
            None => self.u8(0),
            Some(None) => self.u8(1),
            Some(Some(a)) => {
                self.u8(2)?;
                self.str(a)
            }
        }
    }
    fn item(&mut self, i: &ReviewItem) -> std::io::Result<()> {
        self.msg_ref(i.seq)?;
        self.status(i.status)?;
        self.opt_str(i.assignee.as_deref())?;
        self.u8(u8::from(i.sampled))?;
        self.len(i.history.len())?;
        for e in &i.history {
            self.event(e)?;
        }
        let v = &i.verdict;
        self.action(v.action)?;
        self.len(v.rules.len())?;
        for r in &v.rules {
            self.str(r)?;
        }
        self.opt_action(v.would_action)?;
        self.opt_str(v.severity.as_deref())?;
        self.len(v.copies)
    }
    fn interner(&mut self, t: &Interner) -> std::io::Result<()> {
        // Entry 0 is always "".
        self.len(t.names.len().saturating_sub(1))?;
        for n in t.names.iter().skip(1) {
            self.str(n)?;
        }
        Ok(())
    }
}

/// Most entries a saved list may claim before it is called malformed (a store of 2^40
/// rows would not fit in memory first); lists are allocated as they are read, not from
/// the length.
const MAX_LEN: u64 = 1 << 40;

struct Dec<R: Read> {
    r: R,
}

impl<R: Read> Dec<R> {
    fn raw<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => malformed("ends early"),
            _ => SnapshotError::Io(e),
        })?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.raw::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.raw()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.raw()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.raw()?))
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.raw()?))
    }
    fn len(&mut self) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        if n > MAX_LEN {
            return Err(malformed(format!("a list claims {n} entries")));
        }
        usize::try_from(n).map_err(|_| malformed("a list too long for this machine"))
    }
    fn str(&mut self) -> Result<String, SnapshotError> {
        let n = self.len()?;
        let mut b = Vec::with_capacity(n.min(1 << 16));
        (&mut self.r)
            .take(n as u64)
            .read_to_end(&mut b)
            .map_err(SnapshotError::Io)?;
        if b.len() != n {
            return Err(malformed("ends early"));
        }
        String::from_utf8(b).map_err(|_| malformed("a string is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            t => Err(malformed(format!("option tag {t}"))),
        }
    }
    fn msg_ref(&mut self) -> Result<MsgRef, SnapshotError> {
        Ok(MsgRef {
            chain: self.u16()?,
            seq: self.u64()?,
        })
    }
    fn action(&mut self) -> Result<Action, SnapshotError> {
        let b = self.u8()?;
        ACTIONS
            .get(usize::from(b))
            .copied()
            .ok_or_else(|| malformed(format!("action {b}")))
    }
    fn opt_action(&mut self) -> Result<Option<Action>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            b => ACTIONS
                .get(usize::from(b - 1))
                .copied()
                .map(Some)
                .ok_or_else(|| malformed(format!("action {b}"))),
        }
    }
    fn status(&mut self) -> Result<ReviewStatus, SnapshotError> {
        let b = self.u8()?;
        STATUSES
            .get(usize::from(b))
            .copied()
            .ok_or_else(|| malformed(format!("review status {b}")))
    }
    fn event(&mut self) -> Result<ReviewEvent, SnapshotError> {
        Ok(ReviewEvent {
            audit: self.msg_ref()?,
            time: Timestamp(self.i64()?),
            actor: self.str()?,
            change: self.str()?,
            comment: self.str()?,
            status: match self.u8()? {
                0 => None,
                b => Some(
                    STATUSES
                        .get(usize::from(b - 1))
                        .copied()
                        .ok_or_else(|| malformed(format!("review status {b}")))?,
                ),
            },
            assignee: match self.u8()? {
                0 => None,
                1 => Some(None),
                2 => Some(Some(self.str()?)),
                t => return Err(malformed(format!("assignee tag {t}"))),
            },
        })
    }
    fn item(&mut self) -> Result<ReviewItem, SnapshotError> {
        let seq = self.msg_ref()?;
        let status = self.status()?;
        let assignee = self.opt_str()?;
        let sampled = self.u8()? != 0;
        let mut history = Vec::new();
        for _ in 0..self.len()? {
            history.push(self.event()?);
        }
        let action = self.action()?;
        let mut rules = Vec::new();
        for _ in 0..self.len()? {
            rules.push(self.str()?);
        }
        Ok(ReviewItem {
            seq,
            status,
            assignee,
            sampled,
            history,
            verdict: GroupVerdict {
                action,
                rules,
                would_action: self.opt_action()?,
                severity: self.opt_str()?,
                copies: self.len()?,
            },
        })
    }
    fn interner(&mut self) -> Result<Interner, SnapshotError> {
        let mut t = Interner::new();
        for _ in 0..self.len()? {
            let s = self.str()?;
            let before = t.names.len();
            t.id(&s);
            if t.names.len() == before {
                return Err(malformed("a string table names one string twice"));
            }
        }
        Ok(t)
    }
}

const STATUSES: [ReviewStatus; 4] = [
    ReviewStatus::Open,
    ReviewStatus::Reviewed,
    ReviewStatus::Escalated,
    ReviewStatus::FalsePositive,
];

fn status_bits(s: ReviewStatus) -> u8 {
    match s {
        ReviewStatus::Open => 0,
        ReviewStatus::Reviewed => 1,
        ReviewStatus::Escalated => 2,
        ReviewStatus::FalsePositive => 3,
    }
}

impl Store {
    /// Writes the whole store: its rows and identities into a new pages file beside
    /// the scratch files (`sealed.rs`), the rest, with that file's name and key, to
    /// `w`. Returns the pages file's name: once `w` is in place, the pages files of
    /// earlier saves can go ([`remove_other_pages`]).
    pub fn save(&self, w: impl Write) -> Result<String, SnapshotError> {
        if self.damaged() {
            return Err(malformed("not saved: rows of it could not be read back"));
        }
        let dir = self.spill.dir();
        let (name, mut key, file) = sealed::create(&dir).map_err(|e| {
            SnapshotError::Io(std::io::Error::other(format!(
                "the saved state's pages: {e}"
            )))
        })?;
        let written = self.save_with(w, &name, &key, file);
        key.fill(0);
        if written.is_err() {
            // Nothing names it.
            let _ = std::fs::remove_file(dir.join(&name));
        }
        written.map(|()| name)
    }

    fn save_with(
        &self,
        w: impl Write,
        name: &str,
        key: &[u8; 32],
        file: Arc<Scratch>,
    ) -> Result<(), SnapshotError> {
        let failed = |what: &str, e: String| malformed(format!("not saved: {what}: {e}"));
        let mut out = Sealer::new(file);
        let mut rows = Vec::with_capacity(self.chains.len());
        for c in &self.chains {
            rows.push(c.rows.seal_pages(&mut out).map_err(|e| failed("rows", e))?);
            // A page that could not be read back was an error above.
            if c.rows.damaged() {
                return Err(malformed("not saved: rows of it could not be read back"));
            }
        }
        let (identities, mut out) = self
            .identities
            .save_into(out)
            .map_err(|e| failed("identities", e))?;
        out.sync().map_err(|e| failed("pages", e))?;
        let mut e = Enc { w };
        e.raw(MAGIC)?;
        e.u32(VERSION)?;
        e.u64(self.sample_rate.to_bits())?;
        e.u64(self.sample_key)?;
        e.opt_str(self.chains.first().and_then(|c| c.node.as_deref()))?;
        for k in self.keys.0 {
            e.u64(k)?;
        }
        e.str(name)?;
        e.raw(key)?;
        e.len(self.spill.page_rows())?;
        e.len(self.spill.ident_page)?;
        e.u64(out.len())?;
        e.len(self.chains.len())?;
        for (c, region) in self.chains.iter().zip(&rows) {
            e.opt_str(c.node.as_deref())?;
            e.u64(c.next_seq)?;
            e.raw(&c.head)?;
            e.len(c.segments.len())?;
            for s in &c.segments {
                e.u64(*s)?;
            }
            e.len(c.rows.len())?;
            e.u64(region.at)?;
            e.u64(region.first)?;
            for f in c.rows.firsts() {
                e.u64(*f)?;
            }
        }
        e.len(identities.len)?;
        e.u64(identities.at)?;
        e.u64(identities.first)?;
        for k in &identities.firsts {
            e.u64(k[0])?;
            e.u64(k[1])?;
        }
        for block in &identities.filter {
            for w in block {
                e.u64(*w)?;
            }
        }
        e.len(self.detached.len())?;
        for (g, first) in &self.detached {
            e.u64(*g)?;
            e.u64(*first)?;
        }
        e.len(self.conversations.len())?;
        for (k, c) in &self.conversations {
            e.u64(k[0])?;
            e.u64(k[1])?;
            e.u64(c.head)?;
            e.u64(c.len)?;
            e.i64(c.min)?;
            e.i64(c.max)?;
            let blocks: &[Block] = self.blocks.get(k).map_or(&[], Vec::as_slice);
            e.len(blocks.len())?;
            for b in blocks {
                e.u64(b.top)?;
                e.i64(b.min)?;
                e.i64(b.max)?;
            }
        }
        e.interner(&self.jids)?;
        e.interner(&self.kinds)?;
        e.interner(&self.labels)?;
        e.len(self.audit.len())?;
        for a in &self.audit {
            e.u64(a.seq)?;
            e.u64(a.segment)?;
            e.u64(a.offset)?;
        }
        e.len(self.items.len())?;
        for ((t, _), item) in &self.items {
            e.i64(*t)?;
            e.item(item)?;
        }
        e.len(self.orphans.len())?;
        for item in self.orphans.values() {
            e.item(item)?;
        }
        e.len(self.pending.len())?;
        for (r, list) in &self.pending {
            e.msg_ref(*r)?;
            e.len(list.len())?;
            for p in list {
                e.event(&p.event)?;
            }
        }
        let holds =
            serde_json::to_string(&self.holds).map_err(|err| malformed(format!("holds: {err}")))?;
        e.str(&holds)?;
        e.len(self.segments.len())?;
        for f in self.segments.values() {
            e.u64(f.segment)?;
            e.u64(f.first_seq)?;
            e.u64(f.last_seq)?;
            e.u64(f.records)?;
            e.u64(f.messages)?;
            match f.newest {
                None => e.u8(0)?,
                Some(t) => {
                    e.u8(1)?;
                    e.i64(t.0)?;
                }
            }
            e.len(f.classes.len())?;
            for c in &f.classes {
                e.str(c)?;
            }
            e.len(f.held_by.len())?;
            for (m, n) in &f.held_by {
                e.str(m)?;
                e.u64(*n)?;
            }
        }
        e.len(self.shredded.len())?;
        for (segment, (seq, time)) in &self.shredded {
            e.u64(*segment)?;
            e.u64(*seq)?;
            e.i64(time.0)?;
        }
        e.len(self.tally.volume.len())?;
        for (day, [a, b]) in &self.tally.volume {
            e.i64(*day)?;
            e.u64(*a)?;
            e.u64(*b)?;
        }
        e.len(self.tally.hits.len())?;
        for (rule, days) in &self.tally.hits {
            e.str(rule)?;
            e.len(days.len())?;
            for (day, n) in days {
                e.i64(*day)?;
                e.u64(*n)?;
            }
        }
        e.len(self.classes.len())?;
        for (c, n) in &self.classes {
            e.u32(*c)?;
            e.u64(*n)?;
        }
        e.len(self.extras.len())?;
        for x in &self.extras {
            for v in [
                x.account,
                x.occupant,
                x.claimed_from,
                x.e2ee,
                x.severity,
                x.stanza_type,
                x.retention_class,
            ] {
                e.u32(v)?;
            }
        }
        e.len(self.far.len())?;
        for (r, (segment, offset)) in &self.far {
            e.msg_ref(*r)?;
            e.u64(*segment)?;
            e.u64(*offset)?;
        }
        e.len(self.severities.len())?;
        for s in &self.severities {
            e.u32(*s)?;
        }
        e.u64(END)?;
        e.w.flush()?;
        Ok(())
    }

    /// Reads back what [`Store::save`] wrote, for the archive with `archive_id`, at
    /// `sample_rate`, as node `node`: a state saved under other settings is
    /// [`SnapshotError::Stale`] (the sample and the chains would differ).
    pub fn restore(
        r: impl Read,
        archive_id: [u8; 16],
        sample_rate: f64,
        node: Option<String>,
        spill: Arc<Spill>,
    ) -> Result<(Store, Covered), SnapshotError> {
        let mut s = Store::spilling(archive_id, sample_rate, node, spill);
        let mut d = Dec { r };
        if &d.raw::<16>()? != MAGIC {
            return Err(malformed("not a saved review state"));
        }
        let version = d.u32()?;
        if version != VERSION {
            return Err(SnapshotError::Stale(format!(
                "by another version (layout {version}, this one reads {VERSION})"
            )));
        }
        let rate = f64::from_bits(d.u64()?);
        if rate != s.sample_rate {
            return Err(SnapshotError::Stale(format!(
                "at sample rate {rate}, now {}",
                s.sample_rate
            )));
        }
        if d.u64()? != s.sample_key {
            return Err(SnapshotError::Stale("for another archive".into()));
        }
        let saved_node = d.opt_str()?;
        let own = s.chains.first().and_then(|c| c.node.clone());
        if saved_node != own {
            return Err(SnapshotError::Stale(format!(
                "as node {}, now {}",
                saved_node.as_deref().unwrap_or("(unnamed)"),
                own.as_deref().unwrap_or("(unnamed)")
            )));
        }
        s.keys = HashKeys([d.u64()?, d.u64()?, d.u64()?, d.u64()?]);
        let name = d.str()?;
        let key = Wiped(d.raw()?);
        let (page_rows, ident_page) = (d.len()?, d.len()?);
        if page_rows != s.spill.page_rows() || ident_page != s.spill.ident_page {
            return Err(SnapshotError::Stale(format!(
                "with pages of {page_rows} rows and {ident_page} identities"
            )));
        }
        let size = d.u64()?;
        let file = sealed::open(&s.spill.dir(), &name, &key.0, size)
            .map_err(|e| malformed(format!("its pages file: {e}")))?;
        drop(key);
        s.saved_pages = Some(name);
        let chains = d.len()?;
        if chains == 0 || chains > MAX_CHAINS {
            return Err(malformed(format!("{chains} chains")));
        }
        s.chains.clear();
        for i in 0..chains {
            let mut c = Chain::new(d.opt_str()?, i == 0, &s.spill);
            c.next_seq = d.u64()?;
            c.head = d.raw()?;
            for _ in 0..d.len()? {
                c.segments.push(d.u64()?);
            }
            let n = d.len()?;
            let region = Region {
                scratch: file.clone(),
                at: d.u64()?,
                first: d.u64()?,
                slot: s.spill.row_slot(),
            };
            let pages = n.div_ceil(s.spill.page_rows());
            if region.end(pages) > size {
                return Err(malformed(format!(
                    "chain {i}: rows past the pages file's end"
                )));
            }
            let mut firsts = Vec::new();
            for _ in 0..pages {
                firsts.push(d.u64()?);
            }
            if firsts.last().is_some_and(|f| *f >= c.next_seq) {
                return Err(malformed(format!("chain {i}: rows past the chain's end")));
            }
            c.rows = Rows::adopt(s.spill.clone(), region, n, firsts)
                .map_err(|e| malformed(format!("chain {i}: {e}")))?;
            // The first and last pages are read now: a pages file that is not this
            // state's is found here, before anything is built on it.
            let ends = [c.rows.get(0), c.rows.get(n.saturating_sub(1))];
            if n > 0 && (ends.iter().any(Option::is_none) || c.rows.damaged()) {
                return Err(malformed(format!(
                    "chain {i}: its pages cannot be read back (changed, another save's, or unreadable)"
                )));
            }
            s.chains.push(c);
        }
        let len = d.len()?;
        let mut saved = identities::Saved {
            len,
            at: d.u64()?,
            first: d.u64()?,
            firsts: Vec::new(),
            filter: Vec::new(),
        };
        for _ in 0..len.div_ceil(s.spill.ident_page.max(1)) {
            saved.firsts.push([d.u64()?, d.u64()?]);
        }
        for _ in 0..identities::Saved::filter_blocks(len) {
            let mut block = [0u64; 8];
            for w in &mut block {
                *w = d.u64()?;
            }
            saved.filter.push(block);
        }
        let first = saved.firsts.first().copied();
        s.identities = Identities::adopt(&s.spill, &file, size, saved).map_err(malformed)?;
        if first.is_some_and(|k| s.identities.get(&k).is_none()) || s.identities.damaged() {
            return Err(malformed(
                "its identities cannot be read back (changed, another save's, or unreadable)",
            ));
        }
        for _ in 0..d.len()? {
            let g = d.u64()?;
            s.detached.insert(g, d.u64()?);
        }
        let n = d.len()?;
        s.conversations.reserve(n.min(1 << 20));
        for _ in 0..n {
            let k = [d.u64()?, d.u64()?];
            let c = Conversation {
                head: d.u64()?,
                len: d.u64()?,
                min: d.i64()?,
                max: d.i64()?,
            };
            let blocks = d.len()?;
            if blocks as u64 != c.len / s.spill.conv_block.max(1) as u64 {
                return Err(malformed("a conversation's blocks do not match its length"));
            }
            if blocks > 0 {
                let mut list = Vec::new();
                for _ in 0..blocks {
                    list.push(Block {
                        top: d.u64()?,
                        min: d.i64()?,
                        max: d.i64()?,
                    });
                }
                s.blocks.insert(k, list);
            }
            if s.conversations.insert(k, c).is_some() {
                return Err(malformed("a conversation saved twice"));
            }
        }
        s.jids = d.interner()?;
        s.kinds = d.interner()?;
        s.labels = d.interner()?;
        for _ in 0..d.len()? {
            s.audit.push(AuditRef {
                seq: d.u64()?,
                segment: d.u64()?,
                offset: d.u64()?,
            });
        }
        for _ in 0..d.len()? {
            let t = d.i64()?;
            let item = d.item()?;
            s.item_at.insert(item.seq, t);
            s.items.insert((t, item.seq), item);
        }
        for _ in 0..d.len()? {
            let item = d.item()?;
            s.orphans.insert(item.seq, item);
        }
        for _ in 0..d.len()? {
            let r = d.msg_ref()?;
            let mut list = Vec::new();
            for _ in 0..d.len()? {
                list.push(PendingReview { event: d.event()? });
            }
            s.pending.insert(r, list);
        }
        s.holds =
            serde_json::from_str(&d.str()?).map_err(|err| malformed(format!("holds: {err}")))?;
        for _ in 0..d.len()? {
            let mut f = SegmentFacts::new(d.u64()?);
            f.first_seq = d.u64()?;
            f.last_seq = d.u64()?;
            f.records = d.u64()?;
            f.messages = d.u64()?;
            f.newest = match d.u8()? {
                0 => None,
                1 => Some(Timestamp(d.i64()?)),
                t => return Err(malformed(format!("option tag {t}"))),
            };
            for _ in 0..d.len()? {
                f.classes.insert(d.str()?);
            }
            for _ in 0..d.len()? {
                let m = d.str()?;
                f.held_by.insert(m, d.u64()?);
            }
            s.segments.insert(f.segment, f);
        }
        for _ in 0..d.len()? {
            let segment = d.u64()?;
            let seq = d.u64()?;
            s.shredded.insert(segment, (seq, Timestamp(d.i64()?)));
        }
        for _ in 0..d.len()? {
            let day = d.i64()?;
            s.tally.volume.insert(day, [d.u64()?, d.u64()?]);
        }
        for _ in 0..d.len()? {
            let rule = d.str()?;
            let mut days = BTreeMap::new();
            for _ in 0..d.len()? {
                let day = d.i64()?;
                days.insert(day, d.u64()?);
            }
            s.tally.hits.insert(rule, days);
        }
        for _ in 0..d.len()? {
            let c = d.u32()?;
            s.classes.insert(c, d.u64()?);
        }
        let n = d.len()?;
        if n == 0 {
            return Err(malformed("no side table"));
        }
        s.extras.clear();
        for i in 0..n {
            let x = Extra {
                account: d.u32()?,
                occupant: d.u32()?,
                claimed_from: d.u32()?,
                e2ee: d.u32()?,
                severity: d.u32()?,
                stanza_type: d.u32()?,
                retention_class: d.u32()?,
            };
            if i > 0 {
                s.extra_ids.insert(x, u32::try_from(i).unwrap_or(u32::MAX));
            }
            s.extras.push(x);
        }
        for _ in 0..d.len()? {
            let r = d.msg_ref()?;
            let segment = d.u64()?;
            s.far.insert(r, (segment, d.u64()?));
        }
        for _ in 0..d.len()? {
            s.severities.insert(d.u32()?);
        }
        if d.u64()? != END {
            return Err(malformed("no end mark"));
        }
        let mut rest = [0u8; 1];
        if d.r.read(&mut rest)? != 0 {
            return Err(malformed("bytes after the end mark"));
        }
        s.recount();
        let covered = s.covered();
        Ok((s, covered))
    }

    /// What of this node's chain the store has read.
    pub fn covered(&self) -> Covered {
        self.covered_of(0)
    }

    /// What of chain `chain` the store has read (nothing, for an unknown chain).
    pub fn covered_of(&self, chain: ChainIdx) -> Covered {
        self.chains.get(usize::from(chain)).map_or(
            Covered {
                next_seq: 1,
                head: [0; 32],
            },
            |c| Covered {
                next_seq: c.next_seq,
                head: c.head,
            },
        )
    }
}
