//! Which records a query export opens, chosen by the search index.
//!
//! Without help a query export decrypts every record to test the query on it. With
//! an index that covers the log (its authenticated mark on this chain), only the
//! records the index finds are decrypted and tested, and a log segment holding none
//! of them is not read at all: the chain file needs the leaves of the checkpoint
//! intervals that hold exported rows only. Records after the index's mark are
//! opened and tested one by one, as without an index.
//!
//! The index only narrows what is opened: every exported row is still the decrypted
//! record, tested against the query (so nothing the query does not select can enter
//! an export through the index). What the index can do, if it was altered, is leave a
//! message out; `custos verify` checks that the index holds exactly the log's
//! messages, and [`super::ExportOptions::scan`] exports without it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::archive::ArchiveReader;
use crate::index::BlindIndexReader;
use crate::keys::MasterKey;
use crate::query::{Clause, Expr, Query};
use crate::storage::Storage;
use crate::time::Timestamp;

/// The records an index-driven export opens.
#[derive(Debug)]
pub(crate) struct Selection {
    /// Every message with seq ≤ `indexed` is in the index.
    indexed: u64,
    /// The log segment holding the index's last record, as the chain places it. Only
    /// segments before it can go unread: the records after the mark lie in it or
    /// later, whatever a header says.
    reach: u64,
    /// One bit per seq ≤ `indexed`: the index found that record.
    found: Vec<u64>,
    /// How many bits of `found` are set.
    found_count: u64,
    /// Log segments holding a found record.
    segments: BTreeSet<u64>,
    /// Log segments the index holds live documents of. The index drops a segment's
    /// documents when it meets its shred record; should the key outlive the record (a
    /// shred cut short, a legal hold placed after it), the log still opens them, so a
    /// segment the index does not hold is read whole.
    held: BTreeSet<u64>,
}

/// Searches tried before an index that keeps committing under the export is given up.
const TRIES: usize = 3;

impl Selection {
    /// Asks the index of the archive in `dir` for every record `query` finds between
    /// `since` (inclusive) and `until` up to seq `through`. `Err` says why the index
    /// cannot be used.
    pub fn from_index(
        dir: &Path,
        storage: Arc<dyn Storage>,
        master: &MasterKey,
        archive_id: &[u8; 16],
        query: &Query,
        range: (Option<Timestamp>, Option<Timestamp>),
        through: u64,
    ) -> Result<Selection, String> {
        // Index files that pass tantivy's checksums but not its assumptions (a
        // deletion bitset of a ragged length) make it panic: the export then tests
        // every record rather than fail.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Selection::from_index_files(dir, storage, master, archive_id, query, range, through)
        }))
        .unwrap_or_else(|_| Err("reading it failed on damaged index files".into()))
    }

    fn from_index_files(
        dir: &Path,
        storage: Arc<dyn Storage>,
        master: &MasterKey,
        archive_id: &[u8; 16],
        query: &Query,
        range: (Option<Timestamp>, Option<Timestamp>),
        through: u64,
    ) -> Result<Selection, String> {
        let reader = ArchiveReader::open_in(dir, storage, master).map_err(|e| e.to_string())?;
        let index = BlindIndexReader::open(&crate::archive::index_dir(dir), master, archive_id)
            .map_err(|e| e.to_string())?;
        for _ in 0..TRIES {
            if let Some(sel) = Selection::search(
                dir,
                (master, archive_id),
                &reader,
                &index,
                query,
                range,
                through,
            )? {
                return Ok(sel);
            }
        }
        Err(format!(
            "the index was committed again during each of {TRIES} searches (a reindex?)"
        ))
    }

    /// One try of [`Selection::from_index`]: `None` if the index was committed
    /// between the reading of its mark and the loading of its last commit. The mark, the search and the segments held must come from one
    /// commit: `custos reindex` commits an emptied index first, and a search of that
    /// commit under the full index's mark would find nothing it claims to cover.
    fn search(
        dir: &Path,
        (master, archive_id): (&MasterKey, &[u8; 16]),
        reader: &ArchiveReader,
        index: &BlindIndexReader,
        query: &Query,
        (since, until): (Option<Timestamp>, Option<Timestamp>),
        through: u64,
    ) -> Result<Option<Selection>, String> {
        let index_dir = crate::archive::index_dir(dir);
        let commit = || {
            crate::index::commit_opstamp(&index_dir, master, archive_id).map_err(|e| e.to_string())
        };
        let before = commit()?;
        let reach = reader.index_reach()?;
        index.reload().map_err(|e| e.to_string())?;
        // No commit between the two reads: the mark read and the commit loaded in
        // between are both commit `before`, and the search, the segments held and
        // the count below read that commit however long they take.
        if commit()? != before {
            return Ok(None);
        }
        let indexed = reach.through.min(through);
        let words = usize::try_from(indexed / 64 + 1).map_err(|_| "too many records")?;
        let mut sel = Selection {
            indexed,
            reach: reach.segment.unwrap_or(0),
            found: vec![0; words],
            found_count: 0,
            segments: BTreeSet::new(),
            held: BTreeSet::new(),
        };
        // The range as `after:` and `before:` terms, which mean the same: segments
        // holding only matches outside it are then not read either.
        let mut terms = vec![query.expr.clone()];
        terms.extend(since.map(|t| Expr::Clause(Clause::After(t))));
        terms.extend(until.map(|t| Expr::Clause(Clause::Before(t))));
        let query = Query {
            expr: Expr::And(terms),
        };
        index
            .search_all_loaded(&query, |l| {
                if l.seq <= indexed {
                    sel.mark(l.seq);
                    sel.segments.insert(l.segment);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        // The index's live documents must be the messages its commit names: one lost
        // unseen (a tantivy segment dropped from its list, a deletion file written by
        // hand) would be a match it cannot find.
        sel.held = index
            .held_segments(&reach.mark)
            .map_err(|e| e.to_string())?;
        Ok(Some(sel))
    }

    fn mark(&mut self, seq: u64) {
        if let Some(w) = usize::try_from(seq / 64)
            .ok()
            .and_then(|i| self.found.get_mut(i))
        {
            let bit = 1 << (seq % 64);
            if *w & bit == 0 {
                *w |= bit;
                self.found_count += 1;
            }
        }
    }

    /// The seq up to which the index answered.
    pub fn indexed(&self) -> u64 {
        self.indexed
    }

    /// How many records up to [`Selection::indexed`] the index found. An export
    /// meets every one of them in the log, or the index does not match the log.
    pub fn found_count(&self) -> u64 {
        self.found_count
    }

    /// Whether the index found the record `seq`.
    pub fn found_at(&self, seq: u64) -> bool {
        seq <= self.indexed
            && usize::try_from(seq / 64)
                .ok()
                .and_then(|i| self.found.get(i))
                .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Whether the record `seq`, in log segment `segment`, must be decrypted and
    /// tested: the index found it, does not reach it, or holds nothing of its segment.
    pub fn opens(&self, seq: u64, segment: u64) -> bool {
        seq > self.indexed || !self.held.contains(&segment) || self.found_at(seq)
    }

    /// Whether log segment `id`, whose records end at seq `last` by the next
    /// segment's header, can go unread: it lies before the segment holding the
    /// index's mark, the index found nothing there, and it holds the segment's
    /// messages or `keyless()` says they cannot be opened anyway. (`last` is not
    /// trusted for this: a forged header could claim anything. It only bounds the
    /// count.)
    pub fn skips(&self, id: u64, last: u64, keyless: impl FnOnce() -> bool) -> bool {
        id < self.reach
            && last <= self.indexed
            && !self.segments.contains(&id)
            && (self.held.contains(&id) || keyless())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(indexed: u64, reach: u64, found: &[(u64, u64)]) -> Selection {
        let mut s = Selection {
            indexed,
            reach,
            found: vec![0; (indexed / 64 + 1) as usize],
            found_count: 0,
            segments: BTreeSet::new(),
            held: (1..=reach).collect(),
        };
        for &(seq, seg) in found {
            s.mark(seq);
            s.segments.insert(seg);
        }
        s
    }

    #[test]
    fn opens_what_the_index_found_and_everything_past_its_mark() {
        let s = selection(130, 3, &[(1, 1), (64, 1), (127, 2), (128, 2)]);
        let opened: Vec<u64> = (0..=200).filter(|&q| s.opens(q, 2)).collect();
        let mut want = vec![1, 64, 127, 128];
        want.extend(131..=200);
        assert_eq!(opened, want);
        assert_eq!(s.found_count(), 4);
    }

    #[test]
    fn opens_every_record_of_a_segment_the_index_does_not_hold() {
        let mut s = selection(130, 3, &[(1, 1)]);
        s.held.remove(&2);
        assert!((2..=130).all(|q| s.opens(q, 2)));
        assert!(!s.opens(2, 1));
    }

    #[test]
    fn skips_only_segments_before_the_mark_without_a_find() {
        let mut s = selection(100, 4, &[(5, 1)]);
        let keyed = || false;
        assert!(!s.skips(1, 50, keyed), "a segment with a find is read");
        assert!(
            s.skips(2, 100, keyed),
            "indexed to its last record, nothing found"
        );
        assert!(!s.skips(3, 101, keyed), "its last record is past the mark");
        assert!(
            !s.skips(4, 100, keyed),
            "the segment holding the mark is read, whatever the next header says"
        );
        assert!(!s.skips(5, 90, keyed), "a later segment is read");
        s.held.remove(&2);
        assert!(
            !s.skips(2, 100, keyed),
            "a segment the index does not hold is read while its key stays"
        );
        assert!(s.skips(2, 100, || true), "unless its key is gone");
    }
}
