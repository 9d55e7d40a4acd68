//! What the UI knows without asking the index: message metadata (no bodies),
//! the audit trail and the review state derived from it.
//!
//! The archive is the single source of truth. [`Store`] is rebuilt by scanning
//! every record at start and then follows the log's tail; review state
//! changes only by applying `Audit` records read back from the log, never by
//! writing to memory directly, so a restart rebuilds exactly what was shown.
//! Bodies stay encrypted at rest and are read per record when a page needs them.

use std::collections::{BTreeMap, HashMap};

use custos_archive::query::{bare_jid, normalize_jid};
use custos_archive::retention::{self, Holds, SegmentFacts};
use custos_archive::{
    Action, ChainEntry, Direction, EditKind, EventRecord, Leg, NewRecord, Timestamp, Via,
};
use serde::{Deserialize, Serialize};

/// One archived copy of a message, minus its text. Copies of one logical message (the
/// sender's, each recipient's, carbons, replays) share `group`, the seq of the first.
#[derive(Clone, Debug)]
pub struct MessageMeta {
    pub seq: u64,
    pub time: Timestamp,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub stanza_type: String,
    pub action: Action,
    pub rules: Vec<String>,
    pub severity: Option<String>,
    pub e2ee: Option<String>,
    /// Where the record sits, so a page reads it without a scan.
    pub segment: u64,
    pub offset: u64,
    /// Messages with equal keys belong to one conversation.
    pub conversation: String,
    /// The seq of the first copy of this logical message.
    pub group: u64,
    pub leg: Leg,
    pub via: Via,
    /// The JID the session proved whose stream carried this copy.
    pub account: String,
    pub would_action: Option<Action>,
    /// The sender's id for the message (XEP-0359 origin-id, else the stanza id).
    pub msg_id: Option<String>,
    /// A correction or retraction: which message (by `msg_id`) it changes.
    pub edit: Option<(EditKind, String)>,
    /// A sender the client wrote that was not its own (a refused attempt).
    pub claimed_from: Option<String>,
    /// The retention class fixed when it was written.
    pub retention_class: String,
}

/// Restrictiveness, for the verdict of a logical message across its copies.
pub fn rank(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Flag => 1,
        Action::Redact => 2,
        Action::Block => 3,
    }
}

impl MessageMeta {
    /// Whether `jids` (bare, lowercase) include a party of this message.
    pub fn involves(&self, jids: &[String]) -> bool {
        let from = normalize_jid(bare_jid(&self.from));
        let to = normalize_jid(bare_jid(&self.to));
        jids.iter().any(|j| *j == from || *j == to)
    }
}

/// The conversation a message belongs to: the room for group chat, else the
/// unordered pair of bare JIDs.
pub fn conversation_key(direction: Direction, from: &str, to: &str, stanza_type: &str) -> String {
    let from = normalize_jid(bare_jid(from));
    let to = normalize_jid(bare_jid(to));
    if stanza_type == "groupchat" {
        // Outbound group messages are addressed to the room; inbound ones come from room/nick.
        let room = match direction {
            Direction::Outbound => to,
            Direction::Inbound => from,
        };
        return format!("room {room}");
    }
    let (a, b) = if from <= to { (from, to) } else { (to, from) };
    format!("chat {a} {b}")
}

/// What a logical message's copies add up to.
#[derive(Clone, Debug)]
pub struct GroupVerdict {
    pub action: Action,
    pub rules: Vec<String>,
    pub would_action: Option<Action>,
    pub severity: Option<String>,
    pub copies: usize,
}

/// One reviewer action or other audited event.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: Timestamp,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// Where a queue item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewStatus {
    Open,
    Reviewed,
    Escalated,
    FalsePositive,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Open => "open",
            ReviewStatus::Reviewed => "reviewed",
            ReviewStatus::Escalated => "escalated",
            ReviewStatus::FalsePositive => "false-positive",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ReviewStatus::Open => "Open",
            ReviewStatus::Reviewed => "Reviewed",
            ReviewStatus::Escalated => "Escalated",
            ReviewStatus::FalsePositive => "False positive",
        }
    }

    pub fn parse(s: &str) -> Option<ReviewStatus> {
        [
            ReviewStatus::Open,
            ReviewStatus::Reviewed,
            ReviewStatus::Escalated,
            ReviewStatus::FalsePositive,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Escalated items still need someone's attention.
    pub fn is_open(self) -> bool {
        matches!(self, ReviewStatus::Open | ReviewStatus::Escalated)
    }
}

/// What the audit `detail` of a review change carries (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum ReviewChange {
    Status {
        seqs: Vec<u64>,
        status: ReviewStatus,
        comment: String,
    },
    Assign {
        seqs: Vec<u64>,
        assignee: Option<String>,
    },
}

/// Audit action names written by the UI.
pub mod audit_action {
    pub const SIGN_IN: &str = "sign-in";
    pub const SIGN_IN_FAILED: &str = "sign-in-failed";
    pub const SIGN_OUT: &str = "sign-out";
    pub const SEARCH: &str = "search";
    pub const VIEW: &str = "view-conversation";
    pub const REVIEW: &str = "review";
    pub const EXPORT: &str = "export";
    pub const USER_ADD: &str = "user-add";
    pub const USER_REMOVE: &str = "user-remove";
}

/// One entry of an item's history.
#[derive(Clone, Debug)]
pub struct ReviewEvent {
    pub audit_seq: u64,
    pub time: Timestamp,
    pub actor: String,
    pub change: String,
    pub comment: String,
}

/// A message in the review queue.
#[derive(Clone, Debug)]
pub struct ReviewItem {
    pub seq: u64,
    pub status: ReviewStatus,
    pub assignee: Option<String>,
    /// In the queue because of sampling, not because policy flagged it.
    pub sampled: bool,
    pub history: Vec<ReviewEvent>,
}

/// Derived state; see the module docs.
pub struct Store {
    messages: Vec<MessageMeta>,
    by_seq: HashMap<u64, usize>,
    /// Message identity (and delivered identity) → the group it names.
    identities: HashMap<String, u64>,
    /// Group → the seqs of its copies, in order.
    members: HashMap<u64, Vec<u64>>,
    audit: Vec<AuditEntry>,
    reviews: BTreeMap<u64, ReviewItem>,
    next_seq: u64,
    sample_key: u64,
    sample_rate: f64,
    /// Legal holds, replayed from their records.
    holds: Holds,
    /// Per log segment still readable: newest record and classes (for the retention
    /// overview).
    segments: BTreeMap<u64, SegmentFacts>,
    /// Shredded segments: the shred record's seq and time.
    shredded: BTreeMap<u64, (u64, Timestamp)>,
}

/// splitmix64: a keyed, stable mix so the sample is the same after a restart
/// yet cannot be predicted by senders (the key derives from the archive's
/// random id).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether message `seq` falls in the sample at `rate` (0..=1).
pub fn sampled(key: u64, seq: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    // 53 bits give an exact f64 in [0, 1).
    let u = (mix(seq ^ key) >> 11) as f64 / (1u64 << 53) as f64;
    u < rate
}

impl Store {
    pub fn new(archive_id: [u8; 16], sample_rate: f64) -> Store {
        let (a, b) = archive_id.split_at(8);
        let word = |s: &[u8]| s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        Store {
            messages: Vec::new(),
            by_seq: HashMap::new(),
            identities: HashMap::new(),
            members: HashMap::new(),
            audit: Vec::new(),
            reviews: BTreeMap::new(),
            next_seq: 1,
            sample_key: word(a) ^ word(b).rotate_left(17),
            sample_rate: sample_rate.clamp(0.0, 1.0),
            holds: Holds::default(),
            segments: BTreeMap::new(),
            shredded: BTreeMap::new(),
        }
    }

    /// The first seq not yet applied.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Applies scanned entries in order; entries already applied are skipped,
    /// so overlapping scans are harmless.
    pub fn apply(&mut self, entries: Vec<ChainEntry>) {
        for e in entries {
            if e.seq < self.next_seq {
                continue;
            }
            self.next_seq = e.seq + 1;
            // A shredded record has no content left to show.
            let Some(record) = e.record else { continue };
            self.holds.observe(&record);
            if !self.shredded.contains_key(&e.segment) {
                self.segments
                    .entry(e.segment)
                    .or_insert_with(|| SegmentFacts::new(e.segment))
                    .observe(&record, &[]);
            }
            if let NewRecord::Event(EventRecord::Shred { segment, .. }) = &record.content {
                self.forget_segment(*segment, e.seq, record.time);
            }
            match record.content {
                NewRecord::Message(m) => {
                    let leg = m.leg();
                    let c = m.capture;
                    // Copies join the group of the first copy with either identity.
                    let names: Vec<String> = std::iter::once(c.identity)
                        .chain(c.delivered_identity)
                        .filter(|n| !n.is_empty())
                        .collect();
                    let group = names
                        .iter()
                        .find_map(|n| self.identities.get(n).copied())
                        .unwrap_or(e.seq);
                    for n in names {
                        self.identities.entry(n).or_insert(group);
                    }
                    self.members.entry(group).or_default().push(e.seq);
                    let meta = MessageMeta {
                        seq: e.seq,
                        time: record.time,
                        direction: m.direction,
                        conversation: conversation_key(m.direction, &m.from, &m.to, &m.stanza_type),
                        from: m.from,
                        to: m.to,
                        stanza_type: m.stanza_type,
                        action: m.outcome.action,
                        rules: m.outcome.rules,
                        severity: m.outcome.severity,
                        e2ee: m.outcome.e2ee,
                        segment: e.segment,
                        offset: e.offset,
                        group,
                        leg,
                        via: c.via,
                        account: c.account,
                        would_action: m.outcome.would_action,
                        msg_id: m.origin_id.or(m.id),
                        edit: c.edit.map(|e| (e.kind, e.target)),
                        claimed_from: c.claimed_from,
                        retention_class: retention::class_name(&c.retention_class).to_string(),
                    };
                    // Anything a rule noticed is for review, enforced or not: a flag, a
                    // redaction or block, a monitor-mode "would have", an alert-only hit.
                    let flagged = meta.action != Action::Allow
                        || meta.would_action.is_some()
                        || !meta.rules.is_empty();
                    let first_copy = group == e.seq;
                    // One review item per logical message, keyed by its first copy.
                    match self.reviews.get_mut(&group) {
                        Some(item) if flagged => item.sampled = false,
                        Some(_) => {}
                        None => {
                            if flagged
                                || (first_copy
                                    && sampled(self.sample_key, meta.seq, self.sample_rate))
                            {
                                self.reviews.insert(
                                    group,
                                    ReviewItem {
                                        seq: group,
                                        status: ReviewStatus::Open,
                                        assignee: None,
                                        sampled: !flagged,
                                        history: Vec::new(),
                                    },
                                );
                            }
                        }
                    }
                    self.by_seq.insert(meta.seq, self.messages.len());
                    self.messages.push(meta);
                }
                NewRecord::Event(EventRecord::Audit {
                    actor,
                    action,
                    detail,
                }) => {
                    if action == audit_action::REVIEW {
                        self.apply_review(e.seq, record.time, &actor, &detail);
                    }
                    self.audit.push(AuditEntry {
                        seq: e.seq,
                        time: record.time,
                        actor,
                        action,
                        detail,
                    });
                }
                NewRecord::Event(_) => {}
            }
        }
    }

    /// Drops everything known about a shredded segment's messages: the UI must not
    /// keep showing who wrote to whom and when after the records are gone.
    fn forget_segment(&mut self, segment: u64, shred_seq: u64, time: Timestamp) {
        self.shredded.insert(segment, (shred_seq, time));
        self.segments.remove(&segment);
        let before = self.messages.len();
        self.messages.retain(|m| m.segment != segment);
        if self.messages.len() == before {
            return;
        }
        self.by_seq = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.seq, i))
            .collect();
        let by_seq = &self.by_seq;
        self.members.retain(|_, seqs| {
            seqs.retain(|s| by_seq.contains_key(s));
            !seqs.is_empty()
        });
        let members = &self.members;
        self.identities.retain(|_, g| members.contains_key(g));
        self.reviews.retain(|g, _| members.contains_key(g));
    }

    /// Legal holds recorded in the chain.
    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    /// Readable segments' facts, by segment id.
    pub fn segments(&self) -> &BTreeMap<u64, SegmentFacts> {
        &self.segments
    }

    /// Shredded segments: (shred record seq, its time).
    pub fn shredded(&self) -> &BTreeMap<u64, (u64, Timestamp)> {
        &self.shredded
    }

    fn apply_review(&mut self, audit_seq: u64, time: Timestamp, actor: &str, detail: &str) {
        // Audit records are written by this UI; one that does not parse is still
        // shown in the audit page but changes no state.
        let Ok(change) = serde_json::from_str::<ReviewChange>(detail) else {
            return;
        };
        let (seqs, describe, comment) = match &change {
            ReviewChange::Status {
                seqs,
                status,
                comment,
            } => (
                seqs,
                format!("marked {}", status.label().to_lowercase()),
                comment.clone(),
            ),
            ReviewChange::Assign { seqs, assignee } => (
                seqs,
                assignee
                    .as_ref()
                    .map_or_else(|| "unassigned".to_string(), |a| format!("assigned to {a}")),
                String::new(),
            ),
        };
        // A review of any copy is a review of the logical message, once.
        let mut groups: Vec<u64> = seqs.iter().map(|s| self.group_of(*s)).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            let Some(item) = self.reviews.get_mut(&group) else {
                continue;
            };
            match &change {
                ReviewChange::Status { status, .. } => item.status = *status,
                ReviewChange::Assign { assignee, .. } => item.assignee = assignee.clone(),
            }
            item.history.push(ReviewEvent {
                audit_seq,
                time,
                actor: actor.to_string(),
                change: describe.clone(),
                comment: comment.clone(),
            });
        }
    }

    pub fn message(&self, seq: u64) -> Option<&MessageMeta> {
        self.by_seq.get(&seq).and_then(|&i| self.messages.get(i))
    }

    pub fn messages(&self) -> &[MessageMeta] {
        &self.messages
    }

    /// The review item of the logical message `seq` is a copy of.
    pub fn review(&self, seq: u64) -> Option<&ReviewItem> {
        self.reviews.get(&self.group_of(seq))
    }

    /// The first copy's seq of the logical message `seq` belongs to.
    pub fn group_of(&self, seq: u64) -> u64 {
        self.message(seq).map_or(seq, |m| m.group)
    }

    /// Every copy of the logical message `seq` belongs to, in order.
    pub fn copies(&self, seq: u64) -> Vec<&MessageMeta> {
        self.members
            .get(&self.group_of(seq))
            .map(|seqs| seqs.iter().filter_map(|s| self.message(*s)).collect())
            .unwrap_or_default()
    }

    /// The logical message's verdict: the most restrictive of its copies, every rule
    /// any copy matched, and what monitor-mode rules would have done.
    pub fn verdict_of(&self, seq: u64) -> GroupVerdict {
        let copies = self.copies(seq);
        let mut v = GroupVerdict {
            action: Action::Allow,
            rules: Vec::new(),
            would_action: None,
            severity: None,
            copies: copies.len(),
        };
        for c in copies {
            if rank(c.action) > rank(v.action) {
                v.action = c.action;
            }
            if let Some(w) = c.would_action {
                if v.would_action.is_none_or(|cur| rank(w) > rank(cur)) {
                    v.would_action = Some(w);
                }
            }
            for r in &c.rules {
                if !v.rules.contains(r) {
                    v.rules.push(r.clone());
                }
            }
            if v.severity.is_none() {
                v.severity = c.severity.clone();
            }
        }
        v
    }

    pub fn reviews(&self) -> impl DoubleEndedIterator<Item = &ReviewItem> {
        self.reviews.values()
    }

    pub fn audit(&self) -> &[AuditEntry] {
        &self.audit
    }

    /// Up to `before` and `after` logical messages of the same conversation around the
    /// one `seq` is a copy of, each by its first copy, in order.
    pub fn conversation_around(&self, seq: u64, before: usize, after: usize) -> Vec<&MessageMeta> {
        let Some(&at) = self.by_seq.get(&self.group_of(seq)) else {
            return Vec::new();
        };
        let Some(hit) = self.messages.get(at) else {
            return Vec::new();
        };
        let key = &hit.conversation;
        let first = |m: &&MessageMeta| &m.conversation == key && m.group == m.seq;
        let head = self.messages.get(..at).unwrap_or_default();
        let tail = self.messages.get(at + 1..).unwrap_or_default();
        let mut earlier: Vec<&MessageMeta> = head.iter().rev().filter(first).take(before).collect();
        earlier.reverse();
        earlier.push(hit);
        earlier.extend(tail.iter().filter(first).take(after));
        earlier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_archive::{MessageRecord, Outcome, Record, RecordSeq, SessionId};
    use proptest::prelude::*;

    fn msg(seq: u64, from: &str, to: &str, action: Action) -> ChainEntry {
        let m = MessageRecord {
            direction: Direction::Outbound,
            session: SessionId("s".into()),
            from: from.into(),
            to: to.into(),
            stanza_type: "chat".into(),
            id: None,
            origin_id: None,
            stanza_id: None,
            thread: None,
            subject: None,
            body: Some("x".into()),
            stanza: Vec::new(),
            outcome: Outcome {
                action,
                rules: if action == Action::Allow {
                    vec![]
                } else {
                    vec!["r1".into()]
                },
                delivered_body: None,
                severity: None,
                e2ee: None,
                would_action: None,
            },
            capture: Default::default(),
        };
        entry(seq, NewRecord::Message(m))
    }

    fn entry(seq: u64, content: NewRecord) -> ChainEntry {
        ChainEntry {
            seq,
            segment: 1,
            offset: seq * 100,
            content_hash: Default::default(),
            ciphertext_hash: Default::default(),
            leaf: Default::default(),
            head: Default::default(),
            salt: None,
            record: Some(Record {
                seq: RecordSeq(seq),
                time: Timestamp(seq as i64 * 1000),
                content,
            }),
        }
    }

    fn audit(seq: u64, actor: &str, change: &ReviewChange) -> ChainEntry {
        let detail = serde_json::to_string(change).unwrap();
        entry(
            seq,
            NewRecord::Event(EventRecord::Audit {
                actor: actor.into(),
                action: audit_action::REVIEW.into(),
                detail,
            }),
        )
    }

    #[test]
    fn review_state_follows_audit_records_and_replay_is_idempotent() {
        let mut s = Store::new([7; 16], 0.0);
        let mut log = vec![
            msg(1, "a@x/1", "b@x", Action::Flag),
            msg(2, "b@x/2", "a@x", Action::Allow),
            msg(3, "c@x/1", "d@x", Action::Block),
        ];
        log.push(audit(
            4,
            "olivia",
            &ReviewChange::Assign {
                seqs: vec![1, 3],
                assignee: Some("olivia".into()),
            },
        ));
        log.push(audit(
            5,
            "olivia",
            &ReviewChange::Status {
                seqs: vec![1],
                status: ReviewStatus::FalsePositive,
                comment: "test".into(),
            },
        ));
        s.apply(log.clone());
        assert!(s.review(2).is_none(), "unflagged and unsampled");
        let one = s.review(1).unwrap();
        assert_eq!(one.status, ReviewStatus::FalsePositive);
        assert_eq!(one.assignee.as_deref(), Some("olivia"));
        assert_eq!(one.history.len(), 2);
        assert_eq!(s.review(3).unwrap().status, ReviewStatus::Open);
        assert_eq!(s.audit().len(), 2);
        // Applying the same entries again (an overlapping tail scan) changes nothing.
        s.apply(log);
        assert_eq!(s.review(1).unwrap().history.len(), 2);
        assert_eq!(s.audit().len(), 2);
        assert_eq!(s.next_seq(), 6);
    }

    #[test]
    fn conversation_groups_pairs_regardless_of_direction() {
        let mut s = Store::new([0; 16], 0.0);
        s.apply(vec![
            msg(1, "a@x/1", "b@x", Action::Allow),
            msg(2, "c@x/1", "d@x", Action::Allow),
            msg(3, "B@x/9", "a@x/1", Action::Flag),
            msg(4, "a@x/2", "b@x", Action::Allow),
        ]);
        let seqs: Vec<u64> = s
            .conversation_around(3, 10, 10)
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        let seqs: Vec<u64> = s
            .conversation_around(3, 0, 1)
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![3, 4]);
        assert!(s.conversation_around(99, 5, 5).is_empty());
        assert!(s.message(3).unwrap().involves(&["b@x".to_string()]));
        assert!(!s.message(2).unwrap().involves(&["b@x".to_string()]));
    }

    /// A copy of logical message `identity` on `leg`, seen by `account`.
    fn copy(
        seq: u64,
        identity: &str,
        delivered: Option<&str>,
        leg: Leg,
        action: Action,
    ) -> ChainEntry {
        let mut e = msg(seq, "a@x/1", "b@x", action);
        if let Some(Record {
            content: NewRecord::Message(m),
            ..
        }) = &mut e.record
        {
            m.capture.identity = identity.into();
            m.capture.delivered_identity = delivered.map(str::to_owned);
            m.capture.account = match leg {
                Leg::ClientToServer => "a@x/1".into(),
                Leg::ServerToClient => "b@x/2".into(),
            };
            if leg == Leg::ServerToClient {
                m.direction = Direction::Inbound;
            }
        }
        e
    }

    #[test]
    fn copies_make_one_logical_message_with_one_review_item() {
        let mut s = Store::new([1; 16], 0.0);
        s.apply(vec![
            // Allowed on the sender's leg, blocked on the recipient's.
            copy(1, "m1", None, Leg::ClientToServer, Action::Allow),
            copy(2, "m1", None, Leg::ServerToClient, Action::Block),
            // Redacted on the sender's leg: the recipient's copy has the delivered identity.
            copy(3, "m2", Some("m2r"), Leg::ClientToServer, Action::Redact),
            copy(4, "m2r", None, Leg::ServerToClient, Action::Allow),
            // Another message, with an id reused but other content: another identity.
            copy(5, "m3", None, Leg::ClientToServer, Action::Allow),
        ]);
        assert_eq!(
            s.copies(2).iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            s.copies(4).iter().map(|m| m.seq).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(s.copies(5).len(), 1);
        // One item per logical message, keyed by its first copy, with the strictest verdict.
        let items: Vec<u64> = s.reviews().map(|i| i.seq).collect();
        assert_eq!(items, [1, 3]);
        assert!(std::ptr::eq(s.review(2).unwrap(), s.review(1).unwrap()));
        let v = s.verdict_of(1);
        assert_eq!((v.action, v.copies), (Action::Block, 2));
        // A review through any copy reviews the logical message, once.
        s.apply(vec![audit(
            6,
            "olivia",
            &ReviewChange::Status {
                seqs: vec![1, 2],
                status: ReviewStatus::Reviewed,
                comment: "checked".into(),
            },
        )]);
        assert_eq!(s.review(1).unwrap().status, ReviewStatus::Reviewed);
        assert_eq!(s.review(1).unwrap().history.len(), 1);
        // The conversation shows each logical message once.
        let shown: Vec<u64> = s
            .conversation_around(4, 10, 10)
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(shown, [1, 3, 5]);
    }

    #[test]
    fn monitor_and_alert_only_hits_are_review_items() {
        let mut s = Store::new([1; 16], 0.0);
        let mut would = msg(1, "a@x/1", "b@x", Action::Allow);
        let mut alert_only = msg(2, "a@x/1", "b@x", Action::Allow);
        for (e, would_action, rules) in [
            (&mut would, Some(Action::Block), vec!["trial".to_string()]),
            (&mut alert_only, None, vec!["notify".to_string()]),
        ] {
            if let Some(Record {
                content: NewRecord::Message(m),
                ..
            }) = &mut e.record
            {
                m.outcome.would_action = would_action;
                m.outcome.rules = rules;
            }
        }
        s.apply(vec![would, alert_only]);
        assert!(s.review(1).is_some_and(|i| !i.sampled));
        assert!(s.review(2).is_some_and(|i| !i.sampled));
        assert_eq!(s.verdict_of(1).would_action, Some(Action::Block));
    }

    #[test]
    fn group_chat_is_keyed_by_room() {
        assert_eq!(
            conversation_key(Direction::Outbound, "a@x/1", "room@muc.x", "groupchat"),
            conversation_key(Direction::Inbound, "room@muc.x/bob", "a@x/1", "groupchat")
        );
    }

    proptest! {
        #[test]
        fn sample_rate_is_respected(key in any::<u64>(), rate in 0.05f64..0.95) {
            let n = 4000u64;
            let hits = (0..n).filter(|&s| sampled(key, s, rate)).count() as f64;
            // Binomial sd at n=4000 is at most ~32; allow five of them.
            prop_assert!((hits - rate * n as f64).abs() < 160.0, "hits {} rate {}", hits, rate);
            prop_assert_eq!((0..n).filter(|&s| sampled(key, s, 0.0)).count(), 0);
            prop_assert_eq!((0..n).filter(|&s| sampled(key, s, 1.0)).count(), n as usize);
        }
    }
}
