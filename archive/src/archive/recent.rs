//! The message identities the index cannot answer for yet.
//!
//! An archive replay (XEP-0313) of a message is flagged `custos:replay-only` unless a
//! copy that crossed Custos live was recorded. The index answers for the records its
//! last commit holds; this set answers for the rest. A live copy's identities enter it
//! when the copy is submitted (a replay can follow it on the same stream before its
//! record is written) and leave it when an index commit holds the record, however far
//! the index lags. The indexer, not the log's writer, lets them go, so the writer's path
//! to the acknowledgement does no more work for it. Up to a bound: past
//! [`RECENT_IDENTITIES`] a new identity is not remembered and is counted, since a replay
//! then cannot be placed until the index holds the whole log
//! ([`super::Archive::live_copy`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::record::{NewRecord, Via};

/// Most identities remembered while the index lags: 29 MiB when full (measured, with
/// 32-character identities as the relay computes them).
pub(super) const RECENT_IDENTITIES: usize = 1 << 18;

#[derive(Debug)]
pub(super) struct RecentIdentities {
    /// Copies submitted that no index commit is known to hold, by identity.
    /// SipHash, keyed per process: identities are digests of content peers choose.
    pending: HashMap<Arc<str>, u32>,
    bound: usize,
    /// Identities not remembered because the set was full, since open.
    forgotten: u64,
}

impl Default for RecentIdentities {
    fn default() -> RecentIdentities {
        RecentIdentities::with_bound(RECENT_IDENTITIES)
    }
}

/// The identities a record makes known: those of a copy that crossed Custos live (a
/// replay proves nothing), its own and the one of the content as delivered.
pub(super) fn live_identities(rec: &NewRecord) -> impl Iterator<Item = &str> {
    let capture = match rec {
        NewRecord::Message(m) if m.capture.via != Via::Mam => Some(&m.capture),
        _ => None,
    };
    capture
        .into_iter()
        .flat_map(|c| std::iter::once(&c.identity).chain(&c.delivered_identity))
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}

impl RecentIdentities {
    pub(super) fn with_bound(bound: usize) -> RecentIdentities {
        RecentIdentities {
            pending: HashMap::default(),
            bound,
            forgotten: 0,
        }
    }

    /// A live copy of `id` is on its way to the log. False when the set is full and
    /// does not remember it.
    pub(super) fn submitted(&mut self, id: &str) -> bool {
        if let Some(n) = self.pending.get_mut(id) {
            *n = n.saturating_add(1);
            return true;
        }
        if self.pending.len() >= self.bound {
            self.forgotten += 1;
            return false;
        }
        self.pending.insert(Arc::from(id), 1);
        true
    }

    /// A copy of `id` is settled: an index commit holds its record, or it was never
    /// written. Once none is left, `id` is the index's to answer for.
    ///
    /// A copy settled that was not remembered (the set was full) may take the count of
    /// another copy of the same message with it. That is safe when an index commit holds
    /// the settled copy, which is then found there, and otherwise happens only while
    /// the archive is closing.
    pub(super) fn settled(&mut self, id: &str) {
        if let Some((key, n)) = self.pending.remove_entry(id) {
            if n > 1 {
                self.pending.insert(key, n - 1);
            }
        }
    }

    /// Identities not remembered because the set was full, since open.
    pub(super) fn forgotten(&self) -> u64 {
        self.forgotten
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> String {
        format!("{n:032x}")
    }

    /// The index stalls (a long burst with index building at a lower priority, a
    /// failing disk) for more messages than the set once remembered in all (65,536,
    /// oldest out first whatever the index held): every copy no commit holds is still
    /// known.
    #[test]
    fn an_identity_is_known_until_an_index_commit_holds_it() {
        let mut recent = RecentIdentities::default();
        let n = 70_000;
        for i in 0..n {
            assert!(recent.submitted(&id(i)));
        }
        assert!((0..n).all(|i| recent.contains(&id(i))));
        // A commit holds the first half: those are the index's to answer for.
        (0..n / 2).for_each(|i| recent.settled(&id(i)));
        assert!(!recent.contains(&id(0)));
        assert!(!recent.contains(&id(n / 2 - 1)));
        assert!((n / 2..n).all(|i| recent.contains(&id(i))));
    }

    /// Copies of one message (the sender's leg, each recipient's leg) share an identity:
    /// it stays known while any of them is not in an index commit.
    #[test]
    fn copies_of_one_message_keep_their_identity_until_the_last_is_settled() {
        let mut recent = RecentIdentities::default();
        recent.submitted(&id(7));
        recent.submitted(&id(7));
        recent.settled(&id(7));
        assert!(recent.contains(&id(7)), "the second copy is not committed");
        recent.submitted(&id(7));
        recent.settled(&id(7));
        assert!(recent.contains(&id(7)));
        recent.settled(&id(7));
        assert!(!recent.contains(&id(7)));
        assert_eq!(recent.len(), 0);
        // Settling what is not there (a record from before this process) changes nothing.
        recent.settled(&id(8));
        assert_eq!(recent.len(), 0);
    }

    /// Memory stays bounded while the index is stuck: past the bound a new identity is
    /// refused (the caller counts it); copies of those remembered still count.
    #[test]
    fn past_the_bound_a_new_identity_is_not_remembered() {
        let mut recent = RecentIdentities::with_bound(4);
        assert!((0..4).all(|i| recent.submitted(&id(i))));
        assert!(!recent.submitted(&id(4)));
        assert!(!recent.contains(&id(4)));
        assert_eq!(recent.forgotten(), 1);
        assert!(
            recent.submitted(&id(0)),
            "another copy of a remembered message"
        );
        assert_eq!(recent.len(), 4);
        recent.settled(&id(1));
        assert!(recent.submitted(&id(4)));
    }
}
