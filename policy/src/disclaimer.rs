//! Remembering which conversations got their disclaimer, so the external party sees it
//! at most once per period. Pure: the caller passes the time, so it is tested without
//! sleeping, and it holds no lock (the proxy wraps it in whatever it shares it with).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::verdict::{ConversationKey, DisclaimerRequest};

/// At most `capacity` conversations are remembered. When full, expired entries go first,
/// then the oldest: forgetting a conversation early only means its notice is sent again.
#[derive(Debug)]
pub struct DisclaimerTracker {
    capacity: usize,
    /// Conversation → (when the notice was last sent, the period it holds for).
    sent: HashMap<ConversationKey, (Instant, Duration)>,
    /// Send order; entries superseded by a later send are skipped when popped.
    order: VecDeque<(ConversationKey, Instant)>,
}

impl DisclaimerTracker {
    pub fn new(capacity: usize) -> Self {
        DisclaimerTracker {
            capacity: capacity.max(1),
            sent: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the notice for `request` should be sent at `now`; if so it is recorded as
    /// sent.
    pub fn should_send_request(&mut self, request: &DisclaimerRequest, now: Instant) -> bool {
        self.should_send(&request.conversation, request.period, now)
    }

    /// Whether the notice for `request` would be sent at `now`; nothing is recorded.
    pub fn is_due(&self, request: &DisclaimerRequest, now: Instant) -> bool {
        match self.sent.get(&request.conversation) {
            Some(&(at, p)) => now.saturating_duration_since(at) >= p,
            None => true,
        }
    }

    /// Whether a notice for `key` should be sent at `now`, given it holds for `period`;
    /// if so it is recorded as sent.
    pub fn should_send(&mut self, key: &ConversationKey, period: Duration, now: Instant) -> bool {
        if let Some(&(at, p)) = self.sent.get(key) {
            if now.saturating_duration_since(at) < p {
                return false;
            }
        }
        self.evict(now);
        self.sent.insert(key.clone(), (now, period));
        self.order.push_back((key.clone(), now));
        true
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    fn evict(&mut self, now: Instant) {
        // Bounded: each iteration pops one entry of `order`.
        while let Some((key, at)) = self.order.front() {
            let current = self.sent.get(key).copied();
            let stale = current.is_none_or(|(t, _)| t != *at);
            let expired = current.is_some_and(|(t, p)| now.saturating_duration_since(t) >= p);
            let full = self.sent.len() >= self.capacity;
            if !(stale || expired || full) {
                break;
            }
            if !stale {
                self.sent.remove(key);
            }
            self.order.pop_front();
        }
        // `order` can hold stale entries for re-sent keys; keep it bounded too.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let sent = &self.sent;
            self.order
                .retain(|(k, at)| sent.get(k).is_some_and(|(t, _)| t == at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ConversationKey {
        ConversationKey(s.into())
    }

    #[test]
    fn once_per_period_per_conversation() {
        let mut t = DisclaimerTracker::new(10);
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        assert!(t.should_send(&key("a"), day, t0));
        assert!(!t.should_send(&key("a"), day, t0 + Duration::from_secs(3600)));
        assert!(t.should_send(&key("b"), day, t0 + Duration::from_secs(1)));
        assert!(t.should_send(&key("a"), day, t0 + day));
        assert!(!t.should_send(&key("a"), day, t0 + day + Duration::from_secs(1)));
    }

    /// Asking whether a notice is due records nothing: a message refused after the
    /// question still leaves the notice due for the next one.
    #[test]
    fn asking_whether_due_records_nothing() {
        let mut t = DisclaimerTracker::new(10);
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let request = DisclaimerRequest {
            rule: crate::verdict::RuleId::new("external"),
            text: "recorded".into(),
            to: "x@partner.example".into(),
            room: false,
            from: None,
            conversation: key("a"),
            period: day,
        };
        assert!(t.is_due(&request, t0));
        assert!(t.is_due(&request, t0));
        assert!(t.should_send_request(&request, t0));
        assert!(!t.is_due(&request, t0 + Duration::from_secs(1)));
        assert!(t.is_due(&request, t0 + day));
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = DisclaimerTracker::new(3);
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        for i in 0..100u64 {
            assert!(t.should_send(&key(&format!("k{i}")), day, t0 + Duration::from_secs(i)));
            assert!(t.len() <= 3);
            assert!(t.order.len() <= 6);
        }
        // The newest are remembered, the oldest forgotten.
        assert!(!t.should_send(&key("k99"), day, t0 + Duration::from_secs(100)));
        assert!(t.should_send(&key("k0"), day, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn expired_entries_are_evicted_first() {
        let mut t = DisclaimerTracker::new(2);
        let t0 = Instant::now();
        let short = Duration::from_secs(10);
        let long = Duration::from_secs(1000);
        assert!(t.should_send(&key("short"), short, t0));
        assert!(t.should_send(&key("long"), long, t0 + Duration::from_secs(1)));
        assert!(t.should_send(&key("new"), long, t0 + Duration::from_secs(20)));
        assert!(
            !t.should_send(&key("long"), long, t0 + Duration::from_secs(21)),
            "long kept"
        );
    }

    #[test]
    fn resending_keeps_order_bounded() {
        let mut t = DisclaimerTracker::new(2);
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        for i in 0..50u64 {
            assert!(t.should_send(&key("a"), p, t0 + Duration::from_secs(i * 2)));
        }
        assert_eq!(t.len(), 1);
        assert!(t.order.len() <= 4);
    }
}
