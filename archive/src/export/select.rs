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
    /// Log segments holding a found record.
    segments: BTreeSet<u64>,
}

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
        (since, until): (Option<Timestamp>, Option<Timestamp>),
        through: u64,
    ) -> Result<Selection, String> {
        let reader = ArchiveReader::open_in(dir, storage, master).map_err(|e| e.to_string())?;
        // The mark is read before the search: the searcher reloads to a commit at
        // least as new, which holds every message up to the mark.
        let reach = reader.index_reach()?;
        let indexed = reach.through.min(through);
        let index = BlindIndexReader::open(&crate::archive::index_dir(dir), master, archive_id)
            .map_err(|e| e.to_string())?;
        let words = usize::try_from(indexed / 64 + 1).map_err(|_| "too many records")?;
        let mut sel = Selection {
            indexed,
            reach: reach.segment.unwrap_or(0),
            found: vec![0; words],
            segments: BTreeSet::new(),
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
            .search_all(&query, |l| {
                if l.seq <= indexed {
                    sel.mark(l.seq);
                    sel.segments.insert(l.segment);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        Ok(sel)
    }

    fn mark(&mut self, seq: u64) {
        if let Some(w) = usize::try_from(seq / 64)
            .ok()
            .and_then(|i| self.found.get_mut(i))
        {
            *w |= 1 << (seq % 64);
        }
    }

    /// The seq up to which the index answered.
    pub fn indexed(&self) -> u64 {
        self.indexed
    }

    /// Whether the record `seq` must be decrypted and tested: the index found it, or
    /// the index does not reach it.
    pub fn opens(&self, seq: u64) -> bool {
        if seq > self.indexed {
            return true;
        }
        usize::try_from(seq / 64)
            .ok()
            .and_then(|i| self.found.get(i))
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Whether log segment `id`, whose records end at seq `last` by the next
    /// segment's header, can go unread: it lies before the segment holding the
    /// index's mark and the index found nothing there. (`last` is not trusted for
    /// this: a forged header could claim anything. It only bounds the count.)
    pub fn skips(&self, id: u64, last: u64) -> bool {
        id < self.reach && last <= self.indexed && !self.segments.contains(&id)
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
            segments: BTreeSet::new(),
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
        let opened: Vec<u64> = (0..=200).filter(|&q| s.opens(q)).collect();
        let mut want = vec![1, 64, 127, 128];
        want.extend(131..=200);
        assert_eq!(opened, want);
    }

    #[test]
    fn skips_only_segments_before_the_mark_without_a_find() {
        let s = selection(100, 4, &[(5, 1)]);
        assert!(!s.skips(1, 50), "a segment with a find is read");
        assert!(s.skips(2, 100), "indexed to its last record, nothing found");
        assert!(!s.skips(3, 101), "its last record is past the mark");
        assert!(
            !s.skips(4, 100),
            "the segment holding the mark is read, whatever the next header says"
        );
        assert!(!s.skips(5, 90), "a later segment is read");
    }
}
