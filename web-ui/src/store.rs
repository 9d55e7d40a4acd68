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

/// Which chain a record is in: 0 is this node's own, others are other nodes' chains
/// read from the shared bucket, numbered as this process first met them.
pub type ChainIdx = u16;

/// A record anywhere: its chain and its seq in that chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgRef {
    pub chain: ChainIdx,
    pub seq: u64,
}

impl MsgRef {
    /// A record of this node's own chain.
    pub fn own(seq: u64) -> MsgRef {
        MsgRef { chain: 0, seq }
    }
}

/// One archived copy of a message, minus its text. Copies of one logical message (the
/// sender's, each recipient's, carbons, replays, on any node) share `group`, the first
/// copy this process saw.
#[derive(Clone, Debug)]
pub struct MessageMeta {
    pub chain: ChainIdx,
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
    /// The first copy of this logical message.
    pub group: MsgRef,
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
    /// Group chat: the person behind the room occupant who sent it (or whom a private
    /// message in a room went to).
    pub occupant: Option<String>,
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
    pub fn key(&self) -> MsgRef {
        MsgRef {
            chain: self.chain,
            seq: self.seq,
        }
    }

    /// Whether this is the first copy of its logical message (the one it is shown by).
    pub fn is_first_copy(&self) -> bool {
        self.group == self.key()
    }

    /// Whether `jids` (bare, lowercase) include a party of this message, the person
    /// behind a room occupant included.
    pub fn involves(&self, jids: &[String]) -> bool {
        let from = normalize_jid(bare_jid(&self.from));
        let to = normalize_jid(bare_jid(&self.to));
        let behind = self.occupant.as_deref().map(|o| normalize_jid(bare_jid(o)));
        jids.iter()
            .any(|j| *j == from || *j == to || behind.as_ref() == Some(j))
    }

    /// Group chat: the room, when this copy is to or from one.
    pub fn room(&self) -> Option<&str> {
        (self.stanza_type == "groupchat").then(|| match self.direction {
            Direction::Outbound => bare_jid(&self.to),
            Direction::Inbound => bare_jid(&self.from),
        })
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

/// What the audit `detail` of a review change carries (JSON). `seqs` are records of the
/// chain `node` names (a node's name, or `_unnamed` for the chain of a node without one);
/// without `node`, of the chain the audit record itself is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum ReviewChange {
    Status {
        seqs: Vec<u64>,
        status: ReviewStatus,
        comment: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    Assign {
        seqs: Vec<u64>,
        assignee: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
}

impl ReviewChange {
    fn seqs(&self) -> &[u64] {
        match self {
            ReviewChange::Status { seqs, .. } | ReviewChange::Assign { seqs, .. } => seqs,
        }
    }

    fn node(&self) -> Option<&str> {
        match self {
            ReviewChange::Status { node, .. } | ReviewChange::Assign { node, .. } => {
                node.as_deref()
            }
        }
    }
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
    pub const FILE_DOWNLOAD: &str = "file-download";
    pub const USER_ADD: &str = "user-add";
    pub const USER_REMOVE: &str = "user-remove";
}

/// One entry of an item's history.
#[derive(Clone, Debug)]
pub struct ReviewEvent {
    /// The audit record that made the change: its chain and seq.
    pub audit: MsgRef,
    pub time: Timestamp,
    pub actor: String,
    pub change: String,
    pub comment: String,
    /// What it set: a status, or an assignee (`Some(None)`: unassigned).
    status: Option<ReviewStatus>,
    assignee: Option<Option<String>>,
}

/// A message in the review queue.
#[derive(Clone, Debug)]
pub struct ReviewItem {
    /// The logical message's first copy.
    pub seq: MsgRef,
    pub status: ReviewStatus,
    pub assignee: Option<String>,
    /// In the queue because of sampling, not because policy flagged it.
    pub sampled: bool,
    /// In time order (changes made on other nodes may be read late).
    pub history: Vec<ReviewEvent>,
}

impl ReviewItem {
    /// Takes `event` into the history at its time; status and assignee are what the
    /// latest changes set, whatever order the nodes' records were read in.
    fn record(&mut self, event: ReviewEvent) {
        let at = self
            .history
            .partition_point(|e| (e.time, e.audit) <= (event.time, event.audit));
        self.history.insert(at, event);
        self.status = self
            .history
            .iter()
            .rev()
            .find_map(|e| e.status)
            .unwrap_or(ReviewStatus::Open);
        self.assignee = self
            .history
            .iter()
            .rev()
            .find_map(|e| e.assignee.clone())
            .flatten();
    }
}

/// One chain's messages, in the order they were written.
struct Chain {
    /// The node that writes it (`None`: a node without a name).
    node: Option<String>,
    messages: Vec<MessageMeta>,
    by_seq: HashMap<u64, usize>,
    /// The first seq not yet applied.
    next_seq: u64,
    /// Mixed into the sample key, so other chains' seqs sample independently.
    sample_salt: u64,
}

impl Chain {
    fn new(node: Option<String>, own: bool) -> Chain {
        let sample_salt = match (&node, own) {
            (_, true) | (None, _) => 0,
            (Some(n), false) => n.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }),
        };
        Chain {
            node,
            messages: Vec::new(),
            by_seq: HashMap::new(),
            next_seq: 1,
            sample_salt,
        }
    }

    fn message(&self, seq: u64) -> Option<&MessageMeta> {
        self.by_seq.get(&seq).and_then(|&i| self.messages.get(i))
    }
}

/// What the name of an unnamed node's chain is in references and review records.
pub const UNNAMED: &str = "_unnamed";

/// Chains followed at most (nodes sharing one bucket are a handful).
const MAX_CHAINS: usize = 1024;
/// Records named by reviews but not read yet, at most; a review naming more is applied
/// to those already read only.
const MAX_PENDING: usize = 65_536;

/// A review change read from an audit record, waiting for the message it names.
#[derive(Clone, Debug)]
struct PendingReview {
    event: ReviewEvent,
}

/// Derived state; see the module docs. Chain 0 is this node's; with several nodes, the
/// other nodes' chains are applied too, so the queue, dashboard and conversations cover
/// every node. The audit trail, holds and retention facts are this node's own.
pub struct Store {
    chains: Vec<Chain>,
    /// Message identity (and delivered identity) → the group it names.
    identities: HashMap<String, MsgRef>,
    /// Group → its copies, in the order they were applied.
    members: HashMap<MsgRef, Vec<MsgRef>>,
    audit: Vec<AuditEntry>,
    reviews: BTreeMap<MsgRef, ReviewItem>,
    /// Review changes naming a record not read yet (another node's, read later).
    pending: HashMap<MsgRef, Vec<PendingReview>>,
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
    /// A store for this node's chain (`node`: its name, if nodes are named).
    pub fn new(archive_id: [u8; 16], sample_rate: f64) -> Store {
        Store::for_node(archive_id, sample_rate, None)
    }

    pub fn for_node(archive_id: [u8; 16], sample_rate: f64, node: Option<String>) -> Store {
        let (a, b) = archive_id.split_at(8);
        let word = |s: &[u8]| s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        Store {
            chains: vec![Chain::new(node, true)],
            identities: HashMap::new(),
            members: HashMap::new(),
            audit: Vec::new(),
            reviews: BTreeMap::new(),
            pending: HashMap::new(),
            sample_key: word(a) ^ word(b).rotate_left(17),
            sample_rate: sample_rate.clamp(0.0, 1.0),
            holds: Holds::default(),
            segments: BTreeMap::new(),
            shredded: BTreeMap::new(),
        }
    }

    /// The first seq of this node's chain not yet applied.
    pub fn next_seq(&self) -> u64 {
        self.chains.first().map_or(1, |c| c.next_seq)
    }

    /// The chain another node writes, numbered on first sight (`None`: the chain of
    /// a node without a name). This node's own name gives its own chain.
    pub fn chain_of(&mut self, node: Option<&str>) -> ChainIdx {
        if let Some(i) = self.find_chain(node) {
            return i;
        }
        // Bounded by MAX_CHAINS where names come from records; the server's own list of
        // peers is the bucket's folders.
        let Ok(i) = ChainIdx::try_from(self.chains.len()) else {
            return ChainIdx::MAX;
        };
        self.chains.push(Chain::new(node.map(str::to_owned), false));
        i
    }

    fn find_chain(&self, node: Option<&str>) -> Option<ChainIdx> {
        let node = node.filter(|n| *n != UNNAMED);
        self.chains
            .iter()
            .position(|c| c.node.as_deref() == node)
            .and_then(|i| ChainIdx::try_from(i).ok())
    }

    /// The node that writes chain `chain` (`None`: a node without a name).
    pub fn node_of(&self, chain: ChainIdx) -> Option<&str> {
        self.chains
            .get(usize::from(chain))
            .and_then(|c| c.node.as_deref())
    }

    /// How a record is named in links and forms: its seq for this node's records,
    /// `node:seq` for another node's.
    pub fn ref_name(&self, r: MsgRef) -> String {
        if r.chain == 0 {
            return r.seq.to_string();
        }
        format!("{}:{}", self.node_of(r.chain).unwrap_or(UNNAMED), r.seq)
    }

    /// An HTML id for a record (`m<seq>` for this node's).
    pub fn anchor(&self, r: MsgRef) -> String {
        if r.chain == 0 {
            return format!("m{}", r.seq);
        }
        format!("m-{}-{}", self.node_of(r.chain).unwrap_or(UNNAMED), r.seq)
    }

    /// Reads a [`Store::ref_name`] back; `None` for a malformed one or an unknown node.
    pub fn parse_ref(&self, s: &str) -> Option<MsgRef> {
        match s.split_once(':') {
            None => s.parse().ok().map(MsgRef::own),
            Some((node, seq)) => Some(MsgRef {
                chain: self.find_chain(Some(node))?,
                seq: seq.parse().ok()?,
            }),
        }
    }

    /// Applies this node's scanned entries in order; entries already applied are
    /// skipped, so overlapping scans are harmless.
    pub fn apply(&mut self, entries: Vec<ChainEntry>) {
        self.apply_chain(0, entries);
    }

    /// [`Store::apply`] for chain `chain` (see [`Store::chain_of`]).
    pub fn apply_chain(&mut self, chain: ChainIdx, entries: Vec<ChainEntry>) {
        let own = chain == 0;
        for e in entries {
            let Some(c) = self.chains.get_mut(usize::from(chain)) else {
                return;
            };
            if e.seq < c.next_seq {
                continue;
            }
            c.next_seq = e.seq + 1;
            // A shredded record has no content left to show.
            let Some(record) = e.record else { continue };
            if own {
                self.holds.observe(&record);
                if !self.shredded.contains_key(&e.segment) {
                    self.segments
                        .entry(e.segment)
                        .or_insert_with(|| SegmentFacts::new(e.segment))
                        .observe(&record, &[]);
                }
            }
            if let NewRecord::Event(EventRecord::Shred { segment, .. }) = &record.content {
                self.forget_segment(chain, *segment, e.seq, record.time);
            }
            let key = MsgRef { chain, seq: e.seq };
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
                        .unwrap_or(key);
                    for n in names {
                        self.identities.entry(n).or_insert(group);
                    }
                    self.members.entry(group).or_default().push(key);
                    let meta = MessageMeta {
                        chain,
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
                        occupant: c.occupant,
                    };
                    // Anything a rule noticed is for review, enforced or not: a flag, a
                    // redaction or block, a monitor-mode "would have", an alert-only hit.
                    let flagged = meta.action != Action::Allow
                        || meta.would_action.is_some()
                        || !meta.rules.is_empty();
                    let salt = self
                        .chains
                        .get(usize::from(chain))
                        .map_or(0, |c| c.sample_salt);
                    // One review item per logical message, keyed by its first copy.
                    match self.reviews.get_mut(&group) {
                        Some(item) if flagged => item.sampled = false,
                        Some(_) => {}
                        None => {
                            if flagged
                                || (group == key
                                    && sampled(self.sample_key ^ salt, e.seq, self.sample_rate))
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
                    if let Some(c) = self.chains.get_mut(usize::from(chain)) {
                        c.by_seq.insert(meta.seq, c.messages.len());
                        c.messages.push(meta);
                    }
                    // Changes made (on another node) before this copy was read.
                    for p in self.pending.remove(&key).unwrap_or_default() {
                        if let Some(item) = self.reviews.get_mut(&group) {
                            if !item.history.iter().any(|h| h.audit == p.event.audit) {
                                item.record(p.event);
                            }
                        }
                    }
                }
                NewRecord::Event(EventRecord::Audit {
                    actor,
                    action,
                    detail,
                }) => {
                    if action == audit_action::REVIEW {
                        self.apply_review(key, record.time, &actor, &detail);
                    }
                    if own {
                        self.audit.push(AuditEntry {
                            seq: e.seq,
                            time: record.time,
                            actor,
                            action,
                            detail,
                        });
                    }
                }
                NewRecord::Event(_) => {}
            }
        }
    }

    /// Drops everything known about a shredded segment's messages: the UI must not
    /// keep showing who wrote to whom and when after the records are gone.
    fn forget_segment(&mut self, chain: ChainIdx, segment: u64, shred_seq: u64, time: Timestamp) {
        if chain == 0 {
            self.shredded.insert(segment, (shred_seq, time));
            self.segments.remove(&segment);
        }
        let Some(c) = self.chains.get_mut(usize::from(chain)) else {
            return;
        };
        let before = c.messages.len();
        c.messages.retain(|m| m.segment != segment);
        if c.messages.len() == before {
            return;
        }
        c.by_seq = c
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.seq, i))
            .collect();
        let chains = &self.chains;
        let known = |r: &MsgRef| {
            chains
                .get(usize::from(r.chain))
                .is_some_and(|c| c.by_seq.contains_key(&r.seq))
        };
        self.members.retain(|_, refs| {
            refs.retain(known);
            !refs.is_empty()
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

    /// Applies review audit record `audit` to the items it names, wherever they are.
    fn apply_review(&mut self, audit: MsgRef, time: Timestamp, actor: &str, detail: &str) {
        // Audit records are written by this UI; one that does not parse is still
        // shown in the audit page but changes no state.
        let Ok(change) = serde_json::from_str::<ReviewChange>(detail) else {
            return;
        };
        let (describe, comment, status, assignee) = match &change {
            ReviewChange::Status {
                status, comment, ..
            } => (
                format!("marked {}", status.label().to_lowercase()),
                comment.clone(),
                Some(*status),
                None,
            ),
            ReviewChange::Assign { assignee, .. } => (
                assignee
                    .as_ref()
                    .map_or_else(|| "unassigned".to_string(), |a| format!("assigned to {a}")),
                String::new(),
                None,
                Some(assignee.clone()),
            ),
        };
        let target = match change.node() {
            None => audit.chain,
            Some(n) => match self.find_chain(Some(n)) {
                Some(i) => i,
                // A chain not followed yet: only a name a node can have, and only so many.
                None if n == UNNAMED || custos_archive::bucket::valid_node_name(n) => {
                    if self.chains.len() >= MAX_CHAINS {
                        return;
                    }
                    self.chain_of(Some(n))
                }
                None => return,
            },
        };
        let event = ReviewEvent {
            audit,
            time,
            actor: actor.to_string(),
            change: describe,
            comment,
            status,
            assignee,
        };
        // A review of any copy is a review of the logical message, once.
        let mut groups: Vec<MsgRef> = Vec::new();
        for &seq in change.seqs() {
            let r = MsgRef { chain: target, seq };
            match self.message(r) {
                Some(m) => groups.push(m.group),
                // Not read yet: another node's record this process has still to read.
                None if self.pending.len() < MAX_PENDING
                    && self
                        .chains
                        .get(usize::from(target))
                        .is_some_and(|c| seq >= c.next_seq) =>
                {
                    self.pending.entry(r).or_default().push(PendingReview {
                        event: event.clone(),
                    });
                }
                None => {}
            }
        }
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            if let Some(item) = self.reviews.get_mut(&group) {
                item.record(event.clone());
            }
        }
    }

    pub fn message(&self, r: MsgRef) -> Option<&MessageMeta> {
        self.chains
            .get(usize::from(r.chain))
            .and_then(|c| c.message(r.seq))
    }

    /// This node's messages, in the order they were written.
    pub fn messages(&self) -> &[MessageMeta] {
        self.chains.first().map_or(&[], |c| c.messages.as_slice())
    }

    /// Every chain's messages, each chain in the order it was written.
    pub fn chains(&self) -> impl Iterator<Item = &[MessageMeta]> {
        self.chains.iter().map(|c| c.messages.as_slice())
    }

    /// The review item of the logical message `r` is a copy of.
    pub fn review(&self, r: MsgRef) -> Option<&ReviewItem> {
        self.reviews.get(&self.group_of(r))
    }

    /// The first copy of the logical message `r` belongs to.
    pub fn group_of(&self, r: MsgRef) -> MsgRef {
        self.message(r).map_or(r, |m| m.group)
    }

    /// Every copy of the logical message `r` belongs to, in the order read.
    pub fn copies(&self, r: MsgRef) -> Vec<&MessageMeta> {
        self.members
            .get(&self.group_of(r))
            .map(|refs| refs.iter().filter_map(|s| self.message(*s)).collect())
            .unwrap_or_default()
    }

    /// The logical message's verdict: the most restrictive of its copies, every rule
    /// any copy matched, and what monitor-mode rules would have done.
    pub fn verdict_of(&self, r: MsgRef) -> GroupVerdict {
        let copies = self.copies(r);
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

    /// The review items, newest message first.
    pub fn reviews_newest_first(&self) -> Vec<&ReviewItem> {
        let mut items: Vec<(&ReviewItem, Timestamp)> = self
            .reviews
            .values()
            .map(|i| (i, self.message(i.seq).map_or(Timestamp(0), |m| m.time)))
            .collect();
        items.sort_by_key(|i| std::cmp::Reverse((i.1, i.0.seq)));
        items.into_iter().map(|(i, _)| i).collect()
    }

    pub fn reviews(&self) -> impl DoubleEndedIterator<Item = &ReviewItem> {
        self.reviews.values()
    }

    pub fn audit(&self) -> &[AuditEntry] {
        &self.audit
    }

    /// Up to `before` and `after` logical messages of the same conversation around the
    /// one `r` is a copy of, each by its first copy, in time order across every node.
    pub fn conversation_around(&self, r: MsgRef, before: usize, after: usize) -> Vec<&MessageMeta> {
        let Some(hit) = self.message(self.group_of(r)) else {
            return Vec::new();
        };
        let key = &hit.conversation;
        let mut all: Vec<&MessageMeta> = self
            .chains
            .iter()
            .flat_map(|c| c.messages.iter())
            .filter(|m| &m.conversation == key && m.is_first_copy())
            .collect();
        // Each chain is in time order already; a stable sort keeps ties in chain order.
        all.sort_by_key(|m| (m.time, m.chain, m.seq));
        let Some(at) = all.iter().position(|m| m.key() == hit.key()) else {
            return Vec::new();
        };
        let from = at.saturating_sub(before);
        let to = at.saturating_add(after).saturating_add(1).min(all.len());
        all.get(from..to).map(<[_]>::to_vec).unwrap_or_default()
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
                node: None,
            },
        ));
        log.push(audit(
            5,
            "olivia",
            &ReviewChange::Status {
                seqs: vec![1],
                status: ReviewStatus::FalsePositive,
                comment: "test".into(),
                node: None,
            },
        ));
        s.apply(log.clone());
        assert!(
            s.review(MsgRef::own(2)).is_none(),
            "unflagged and unsampled"
        );
        let one = s.review(MsgRef::own(1)).unwrap();
        assert_eq!(one.status, ReviewStatus::FalsePositive);
        assert_eq!(one.assignee.as_deref(), Some("olivia"));
        assert_eq!(one.history.len(), 2);
        assert_eq!(s.review(MsgRef::own(3)).unwrap().status, ReviewStatus::Open);
        assert_eq!(s.audit().len(), 2);
        // Applying the same entries again (an overlapping tail scan) changes nothing.
        s.apply(log);
        assert_eq!(s.review(MsgRef::own(1)).unwrap().history.len(), 2);
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
            .conversation_around(MsgRef::own(3), 10, 10)
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        let seqs: Vec<u64> = s
            .conversation_around(MsgRef::own(3), 0, 1)
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![3, 4]);
        assert!(s.conversation_around(MsgRef::own(99), 5, 5).is_empty());
        assert!(s
            .message(MsgRef::own(3))
            .unwrap()
            .involves(&["b@x".to_string()]));
        assert!(!s
            .message(MsgRef::own(2))
            .unwrap()
            .involves(&["b@x".to_string()]));
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
            s.copies(MsgRef::own(2))
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            s.copies(MsgRef::own(4))
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(s.copies(MsgRef::own(5)).len(), 1);
        // One item per logical message, keyed by its first copy, with the strictest verdict.
        let items: Vec<u64> = s.reviews().map(|i| i.seq.seq).collect();
        assert_eq!(items, [1, 3]);
        assert!(std::ptr::eq(
            s.review(MsgRef::own(2)).unwrap(),
            s.review(MsgRef::own(1)).unwrap()
        ));
        let v = s.verdict_of(MsgRef::own(1));
        assert_eq!((v.action, v.copies), (Action::Block, 2));
        // A review through any copy reviews the logical message, once.
        s.apply(vec![audit(
            6,
            "olivia",
            &ReviewChange::Status {
                seqs: vec![1, 2],
                status: ReviewStatus::Reviewed,
                comment: "checked".into(),
                node: None,
            },
        )]);
        assert_eq!(
            s.review(MsgRef::own(1)).unwrap().status,
            ReviewStatus::Reviewed
        );
        assert_eq!(s.review(MsgRef::own(1)).unwrap().history.len(), 1);
        // The conversation shows each logical message once.
        let shown: Vec<u64> = s
            .conversation_around(MsgRef::own(4), 10, 10)
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
        assert!(s.review(MsgRef::own(1)).is_some_and(|i| !i.sampled));
        assert!(s.review(MsgRef::own(2)).is_some_and(|i| !i.sampled));
        assert_eq!(
            s.verdict_of(MsgRef::own(1)).would_action,
            Some(Action::Block)
        );
    }

    fn at(mut e: ChainEntry, time: i64) -> ChainEntry {
        if let Some(r) = &mut e.record {
            r.time = Timestamp(time);
        }
        e
    }

    #[test]
    fn other_nodes_copies_and_reviews_join_this_nodes_items_in_time_order() {
        let mut s = Store::for_node([2; 16], 0.0, Some("n1".into()));
        let n2 = s.chain_of(Some("n2"));
        assert_eq!(
            s.chain_of(Some("n1")),
            0,
            "this node's name is its own chain"
        );
        // n2's reviewer marked n1's message reviewed (at t=5000) before this process has
        // read that message: the change waits for it.
        s.apply_chain(
            n2,
            vec![at(
                audit(
                    1,
                    "rita",
                    &ReviewChange::Status {
                        seqs: vec![1],
                        status: ReviewStatus::Reviewed,
                        comment: "checked on n2".into(),
                        node: Some("n1".into()),
                    },
                ),
                5000,
            )],
        );
        // The sender's copy is on n1, the recipient's on n2: one logical message.
        s.apply(vec![at(
            copy(1, "m1", None, Leg::ClientToServer, Action::Flag),
            1000,
        )]);
        s.apply_chain(
            n2,
            vec![at(
                copy(2, "m1", None, Leg::ServerToClient, Action::Block),
                1001,
            )],
        );
        // An escalation written on n1 earlier than n2's review, read after it.
        s.apply(vec![at(
            audit(
                2,
                "olivia",
                &ReviewChange::Status {
                    seqs: vec![1],
                    status: ReviewStatus::Escalated,
                    comment: "look again".into(),
                    node: None,
                },
            ),
            4000,
        )]);
        let peer_copy = MsgRef { chain: n2, seq: 2 };
        let item = s.review(peer_copy).unwrap();
        assert_eq!(item.seq, MsgRef::own(1));
        assert_eq!(s.reviews().count(), 1);
        assert_eq!(
            item.history
                .iter()
                .map(|h| h.actor.as_str())
                .collect::<Vec<_>>(),
            ["olivia", "rita"]
        );
        assert_eq!(
            item.status,
            ReviewStatus::Reviewed,
            "the latest change wins"
        );
        assert_eq!(s.verdict_of(peer_copy).action, Action::Block);
        assert_eq!(s.verdict_of(peer_copy).copies, 2);
        // Names of records round-trip; an unknown node's do not parse.
        assert_eq!(s.ref_name(peer_copy), "n2:2");
        assert_eq!(s.parse_ref("n2:2"), Some(peer_copy));
        assert_eq!(s.parse_ref("n1:7"), Some(MsgRef::own(7)));
        assert_eq!(s.parse_ref("7"), Some(MsgRef::own(7)));
        assert_eq!(s.parse_ref("n9:7"), None);
        assert_eq!(s.parse_ref("n2:x"), None);
        // A conversation interleaves both nodes' messages by time.
        s.apply(vec![at(msg(3, "a@x/1", "b@x", Action::Allow), 3000)]);
        s.apply_chain(n2, vec![at(msg(3, "b@x/1", "a@x", Action::Allow), 2000)]);
        let shown: Vec<(ChainIdx, u64)> = s
            .conversation_around(MsgRef::own(3), 10, 10)
            .iter()
            .map(|m| (m.chain, m.seq))
            .collect();
        assert_eq!(shown, [(0, 1), (n2, 3), (0, 3)]);
    }

    #[test]
    fn a_review_naming_a_chain_no_node_can_have_changes_nothing() {
        let mut s = Store::for_node([3; 16], 0.0, Some("n1".into()));
        s.apply(vec![msg(1, "a@x/1", "b@x", Action::Flag)]);
        for (seq, node) in (2..).zip(["../x", "N2", "<b>", ""]) {
            s.apply(vec![audit(
                seq,
                "mallory",
                &ReviewChange::Status {
                    seqs: vec![1],
                    status: ReviewStatus::Reviewed,
                    comment: "hidden".into(),
                    node: Some(node.into()),
                },
            )]);
        }
        assert_eq!(s.chains().count(), 1, "no chain made up from a record");
        assert_eq!(s.review(MsgRef::own(1)).unwrap().status, ReviewStatus::Open);
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
