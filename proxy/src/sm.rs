//! Stream management (XEP-0198) across a proxy that drops and injects stanzas.
//!
//! Each side counts the stanzas it has handled (`h`) and acknowledges that count to the
//! other. When Custos refuses a stanza, its recipient never counts it, so the sender's
//! view of `h` would lag (and it would resend on resumption); when Custos injects one (an
//! error reply, a disclaimer), the recipient counts a stanza its peer never sent, and the
//! peer would see a count above what it sent (`<handled-count-too-high/>`).
//!
//! [`SmCounter`] keeps, for one leg, where drops and injections happened in the
//! receiver's numbering, and translates the receiver's `h` into the sender's:
//! `h_sender = h − injections ≤ h + drops ≤ h`. Counters are pure; the relay updates them
//! under the same lock as the write, so positions match the order the receiver sees.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Bookkeeping for stanzas delivered on one leg, in the receiver's numbering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmCounter {
    /// Counting starts with `<enable/>` / `<enabled/>`; stanzas before are not counted.
    counting: bool,
    /// Stanzas the receiver has been given (forwarded and injected).
    delivered: u64,
    /// Sender stanzas that never reached the receiver: each sits after `delivered` stanzas.
    drops: VecDeque<u64>,
    /// Positions (1-based, in the receiver's numbering) of stanzas Custos injected.
    injections: VecDeque<u64>,
    /// Drops and injections at or before the last acknowledged `h`, folded into counts:
    /// acknowledgements only grow, so memory stays bounded by what is in flight.
    acked_drops: u64,
    acked_injections: u64,
}

impl SmCounter {
    /// Starts (or restarts) counting from zero, as both ends do on `<enable/>`.
    pub fn start(&mut self) {
        *self = SmCounter {
            counting: true,
            ..SmCounter::default()
        };
    }

    pub fn is_counting(&self) -> bool {
        self.counting
    }

    /// A sender stanza was forwarded to the receiver.
    pub fn forwarded(&mut self) {
        if self.counting {
            self.delivered += 1;
        }
    }

    /// A sender stanza was refused: the receiver never sees it.
    pub fn dropped(&mut self) {
        if self.counting {
            self.drops.push_back(self.delivered);
        }
    }

    /// Custos gave the receiver a stanza the sender never sent.
    pub fn injected(&mut self) {
        if self.counting {
            self.delivered += 1;
            self.injections.push_back(self.delivered);
        }
    }

    /// The sender's `h` for the receiver's acknowledged `h`. Everything at or before it
    /// is folded away: a peer's acknowledgements never go back (XEP-0198 §4).
    pub fn to_sender(&mut self, receiver_h: u64) -> u64 {
        while self.drops.front().is_some_and(|&p| p <= receiver_h) {
            self.drops.pop_front();
            self.acked_drops += 1;
        }
        while self.injections.front().is_some_and(|&p| p <= receiver_h) {
            self.injections.pop_front();
            self.acked_injections += 1;
        }
        (receiver_h + self.acked_drops).saturating_sub(self.acked_injections)
    }
}

/// XEP-0198 wraps `h` at 2^32.
pub fn parse_h(value: &str) -> Option<u64> {
    value.trim().parse::<u32>().ok().map(u64::from)
}

pub fn format_h(h: u64) -> String {
    // Counts past 2^32 wrap as XEP-0198 §4 says.
    ((h % (1u64 << 32)) as u32).to_string()
}

/// Counters and proven account of sessions that may be resumed, by stream management id.
#[derive(Debug, Default)]
pub struct Resumable {
    entries: HashMap<String, Detached>,
}

/// What a detached session leaves for its resumption.
#[derive(Debug, Clone)]
pub struct Detached {
    pub to_client: SmCounter,
    pub to_upstream: SmCounter,
    /// The full JID the session had proven; a resumed session is the same account.
    pub jid: Option<String>,
    at: Instant,
}

/// How long a detached session's counters are kept for a resumption.
pub const RESUME_WINDOW: Duration = Duration::from_secs(900);
const MAX_RESUMABLE: usize = 100_000;

impl Resumable {
    /// Keeps `(to_client, to_upstream)` counters and the proven JID for `id`.
    pub fn store(
        &mut self,
        id: String,
        to_client: SmCounter,
        to_upstream: SmCounter,
        jid: Option<String>,
        now: Instant,
    ) {
        self.entries
            .retain(|_, d| now.duration_since(d.at) < RESUME_WINDOW);
        if self.entries.len() >= MAX_RESUMABLE {
            return;
        }
        self.entries.insert(
            id,
            Detached {
                to_client,
                to_upstream,
                jid,
                at: now,
            },
        );
    }

    /// A copy of what `id` left, without claiming it: a `<resume/>` is only a request,
    /// which the server may refuse (another user naming someone else's id, say).
    pub fn peek(&self, id: &str) -> Option<Detached> {
        self.entries.get(id).cloned()
    }

    /// Claims what `id` left, once the server has resumed it.
    pub fn take(&mut self, id: &str) -> Option<Detached> {
        self.entries.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_changes_without_drops_or_injections() {
        let mut c = SmCounter::default();
        c.start();
        for _ in 0..5 {
            c.forwarded();
        }
        assert_eq!(c.to_sender(5), 5);
        assert_eq!(c.to_sender(3), 3);
    }

    #[test]
    fn a_drop_counts_once_everything_before_it_is_handled() {
        let mut c = SmCounter::default();
        c.start();
        c.forwarded(); // sender #1 → receiver #1
        c.dropped(); // sender #2 refused
        c.forwarded(); // sender #3 → receiver #2
        assert_eq!(c.to_sender(0), 0);
        assert_eq!(
            c.to_sender(1),
            2,
            "receiver handled #1, so #2 (dropped) is done too"
        );
        assert_eq!(c.to_sender(2), 3);
    }

    #[test]
    fn an_injection_is_not_reported_to_the_sender() {
        let mut c = SmCounter::default();
        c.start();
        c.forwarded(); // receiver #1 = sender #1
        c.injected(); // receiver #2 = error reply from Custos
        c.forwarded(); // receiver #3 = sender #2
        assert_eq!(c.to_sender(1), 1);
        assert_eq!(c.to_sender(2), 1);
        assert_eq!(c.to_sender(3), 2);
    }

    #[test]
    fn acknowledged_positions_are_folded_so_memory_stays_bounded() {
        let mut c = SmCounter::default();
        c.start();
        for _ in 0..10_000 {
            c.forwarded();
            c.dropped();
            c.injected();
        }
        // Receiver numbering: each round delivers 2 (forwarded + injected); the drop sits
        // after the forwarded one.
        assert_eq!(c.to_sender(20_000), 20_000 + 10_000 - 10_000);
        assert!(c.drops.is_empty() && c.injections.is_empty());
        c.forwarded();
        c.dropped();
        assert_eq!(c.to_sender(20_001), 20_002);
    }

    #[test]
    fn nothing_is_counted_before_enable() {
        let mut c = SmCounter::default();
        c.forwarded();
        c.dropped();
        c.injected();
        c.start();
        c.forwarded();
        assert_eq!(c.to_sender(1), 1);
    }

    #[test]
    fn h_wraps_at_two_to_the_32() {
        assert_eq!(format_h(1u64 << 32), "0");
        assert_eq!(parse_h("4294967295"), Some(4_294_967_295));
        assert_eq!(parse_h("-1"), None);
    }

    #[test]
    fn resumable_counters_expire() {
        let mut r = Resumable::default();
        let t = Instant::now();
        r.store(
            "a".into(),
            SmCounter::default(),
            SmCounter::default(),
            None,
            t,
        );
        r.store(
            "b".into(),
            SmCounter::default(),
            SmCounter::default(),
            Some("alice@x/r".into()),
            t + RESUME_WINDOW * 2,
        );
        assert!(r.take("a").is_none(), "expired entries are pruned");
        assert!(r.peek("b").is_some());
        assert_eq!(
            r.take("b").and_then(|d| d.jid).as_deref(),
            Some("alice@x/r")
        );
        assert!(r.take("b").is_none(), "taken once");
    }
}
