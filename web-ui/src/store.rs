//! What the UI knows without asking the index: message metadata (no bodies),
//! the audit trail and the review state derived from it.
//!
//! The archive is the single source of truth. [`Store`] is rebuilt by scanning
//! every record at start and then follows the log's tail; review state
//! changes only by applying `Audit` records read back from the log, never by
//! writing to memory directly, so a restart rebuilds exactly what was shown.
//! Bodies stay encrypted at rest and are read per record when a page needs them.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use custos_archive::query::{bare_jid, normalize_jid};
use custos_archive::retention::{self, Holds, SegmentFacts};
use custos_archive::{Action, ChainEntry, Direction, EventRecord, Leg, NewRecord, Timestamp, Via};
use serde::{Deserialize, Serialize};
use siphasher::sip128::SipHasher13;

mod identities;
mod rows;
mod sealed;
mod snapshot;
mod views;
use identities::Identities;
use rows::Rows;
pub use rows::{Spill, CACHE_PAGES};
pub use snapshot::{remove_other_pages, remove_pages, Covered, SnapshotError};
pub use views::{
    CopyRow, OpenItems, QueuePage, QueueQuery, QueueRow, RetentionOverview, Shown, Speaker,
};

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
    /// A sender the client wrote that was not its own (a refused attempt).
    pub claimed_from: Option<String>,
    /// The retention class fixed when it was written.
    pub retention_class: String,
    /// Group chat: the person behind the room occupant who sent it (or whom a private
    /// message in a room went to).
    pub occupant: Option<String>,
}

/// How grave a rule's severity is (the policy's levels; any other name ranks below).
fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
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

/// What the queue's filters and the dashboard's counts see of a review item. The store
/// counts its items by facet as they change, so that neither page walks every item to
/// count.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Facet {
    /// In the queue's order (its first copy readable), or an orphan.
    filed: bool,
    status: ReviewStatus,
    sampled: bool,
    severity: Option<String>,
    rules: Vec<String>,
}

impl Facet {
    /// Whether `item` (filed as this facet is) still has this facet.
    fn counts(&self, item: &ReviewItem) -> bool {
        self.status == item.status
            && self.sampled == item.sampled
            && self.severity == item.verdict.severity
            && self.rules == item.verdict.rules
    }

    fn of(item: &ReviewItem, filed: bool) -> Facet {
        Facet {
            filed,
            status: item.status,
            sampled: item.sampled,
            severity: item.verdict.severity.clone(),
            rules: item.verdict.rules.clone(),
        }
    }
}

/// Where one of this node's audit records is: the audit page reads the records it shows,
/// so the trail costs 24 bytes an entry in memory, however long its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRef {
    pub seq: u64,
    pub segment: u64,
    pub offset: u64,
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
    /// What the logical message's copies read so far add up to.
    pub verdict: GroupVerdict,
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

/// Strings that repeat from message to message (JIDs, conversation keys, rule lists,
/// labels), kept once each; a row holds their numbers. Number 0 is "none".
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn new() -> Interner {
        Interner {
            ids: HashMap::new(),
            names: vec![Arc::from("")],
        }
    }

    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        // Four billion different strings would not fit in memory first.
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(s);
        self.names.push(name.clone());
        self.ids.insert(name, i);
        i
    }

    fn opt(&mut self, s: Option<&str>) -> u32 {
        s.map_or(0, |s| self.id(s))
    }

    fn get(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", |s| s)
    }

    fn get_opt(&self, i: u32) -> Option<String> {
        (i != 0).then(|| self.get(i).to_string())
    }
}

/// Separates the rule names of one rule list in its interned form.
const RULE_SEP: char = '\u{1f}';

/// A [`MsgRef`] in one word: the chain in the top 16 bits, the seq below (a chain
/// reaches 2^48 records after thousands of years at a million a second). 0 is "none".
type Packed = u64;

fn pack(r: MsgRef) -> Packed {
    (u64::from(r.chain) << 48) | (r.seq & ((1 << 48) - 1))
}

fn unpack(p: Packed) -> MsgRef {
    MsgRef {
        chain: (p >> 48) as ChainIdx,
        seq: p & ((1 << 48) - 1),
    }
}

/// One archived copy as kept in memory: 64 bytes, strings by number. What only a page
/// about this very message shows (its sender's id, what it corrects) is read from the
/// record when the page is built; what few copies carry is in [`Extra`].
#[derive(Clone, Copy, Debug)]
struct Row {
    seq: u64,
    time: i64,
    /// Where the record is: the segment's number in its chain's list in the top 24
    /// bits, the offset in the 40 below; [`FAR`] when either does not fit, with the
    /// place in `Store::far`.
    place: u64,
    /// For a copy that is not its group's first: that first copy. For a first copy
    /// ([`HEAD`]): the first copy of the logical message before it in the same
    /// conversation (0: none), so conversations are lists through their rows.
    link: Packed,
    /// The next copy of the same group (0: none); the first copy starts the list.
    next: Packed,
    from: u32,
    to: u32,
    rules: u32,
    /// The stanza type's number in the low 16 bits and the retention class's in the
    /// high; [`IN_EXTRA`] in either half when the number is in the row's [`Extra`].
    kind: u32,
    /// Its entry in `Store::extras` (0: none).
    extra: u32,
    /// Direction, action, what monitor mode would have done, how it was captured, and
    /// whether it is its group's first copy.
    bits: u16,
}

/// What few copies carry: a session account other than the copy's own end, group chat's
/// real JID, a claimed sender, end-to-end encryption, a severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Extra {
    /// 0: the copy's own end (its sender when outbound, its addressee when inbound).
    account: u32,
    occupant: u32,
    claimed_from: u32,
    e2ee: u32,
    severity: u32,
    /// Stanza type and class numbers too large for the row's `kind`.
    stanza_type: u32,
    retention_class: u32,
}

/// A half of `Row::kind` whose number is in the row's [`Extra`].
const IN_EXTRA: u32 = 0xffff;

/// Packs stanza type and class numbers: (`Row::kind`, what goes to `Extra::stanza_type`,
/// what goes to `Extra::retention_class`).
fn pack_kind(stanza_type: u32, class: u32) -> (u32, u32, u32) {
    let half = |n: u32| if n < IN_EXTRA { n } else { IN_EXTRA };
    let spill = |n: u32| if half(n) == IN_EXTRA { n } else { 0 };
    (
        half(stanza_type) | (half(class) << 16),
        spill(stanza_type),
        spill(class),
    )
}

/// Reads [`pack_kind`] back: (stanza type, class) of a row with `kind` and extra `x`.
fn unpack_kind(kind: u32, x: &Extra) -> (u32, u32) {
    let stanza_type = match kind & 0xffff {
        IN_EXTRA => x.stanza_type,
        n => n,
    };
    let class = match kind >> 16 {
        IN_EXTRA => x.retention_class,
        n => n,
    };
    (stanza_type, class)
}

const FAR: u64 = u64::MAX;
const OFFSET_BITS: u32 = 40;

const ACTIONS: [Action; 4] = [Action::Allow, Action::Flag, Action::Redact, Action::Block];
const VIAS: [Via; 4] = [Via::Direct, Via::CarbonSent, Via::CarbonReceived, Via::Mam];

fn action_bits(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Flag => 1,
        Action::Redact => 2,
        Action::Block => 3,
    }
}

/// `Row::bits`: the row is its group's first copy.
const HEAD: u16 = 1 << 8;

fn pack_bits(direction: Direction, action: Action, would: Option<Action>, via: Via) -> u16 {
    let d = u8::from(direction == Direction::Inbound);
    let w = would.map_or(0, |w| action_bits(w) + 1);
    let v = match via {
        Via::Direct => 0,
        Via::CarbonSent => 1,
        Via::CarbonReceived => 2,
        Via::Mam => 3,
    };
    u16::from(d | (action_bits(action) << 1) | (w << 3) | (v << 6))
}

impl Row {
    fn direction(&self) -> Direction {
        if self.bits & 1 == 0 {
            Direction::Outbound
        } else {
            Direction::Inbound
        }
    }

    fn action(&self) -> Action {
        ACTIONS[usize::from((self.bits >> 1) & 3)]
    }

    fn would_action(&self) -> Option<Action> {
        match (self.bits >> 3) & 7 {
            0 => None,
            w => ACTIONS.get(usize::from(w - 1)).copied(),
        }
    }

    fn via(&self) -> Via {
        VIAS[usize::from((self.bits >> 6) & 3)]
    }

    fn is_head(&self) -> bool {
        self.bits & HEAD != 0
    }

    /// The first copy of its group; `me` is the row's own reference.
    fn group(&self, me: MsgRef) -> MsgRef {
        if self.is_head() {
            me
        } else {
            unpack(self.link)
        }
    }

    /// Which stream it crossed, as [`custos_archive::MessageRecord::leg`] says.
    fn leg(&self) -> Leg {
        match (self.direction(), self.via()) {
            (Direction::Outbound, Via::Direct) => Leg::ClientToServer,
            _ => Leg::ServerToClient,
        }
    }
}

/// One chain's copies, in the order they were written (seq order).
struct Chain {
    /// The node that writes it (`None`: a node without a name).
    node: Option<String>,
    rows: Rows,
    /// The segments its rows are in, numbered in the order met.
    segments: Vec<u64>,
    /// The first seq not yet applied.
    next_seq: u64,
    /// The chain head after record `next_seq - 1` (all zero before the first).
    head: [u8; 32],
    /// Mixed into the sample key, so other chains' seqs sample independently.
    sample_salt: u64,
}

impl Chain {
    fn new(node: Option<String>, own: bool, spill: &Arc<Spill>) -> Chain {
        let sample_salt = match (&node, own) {
            (_, true) | (None, _) => 0,
            (Some(n), false) => n.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }),
        };
        Chain {
            node,
            rows: Rows::new(spill.clone()),
            segments: Vec::new(),
            next_seq: 1,
            head: [0; 32],
            sample_salt,
        }
    }

    /// Where row `seq` is.
    fn index_of(&self, seq: u64) -> Option<usize> {
        self.rows.position(seq)
    }

    fn row(&self, seq: u64) -> Option<Row> {
        self.index_of(seq).and_then(|i| self.rows.get(i))
    }

    /// The number of segment `id` in this chain's list, added when new.
    fn segment_number(&mut self, id: u64) -> usize {
        match self.segments.iter().rposition(|s| *s == id) {
            Some(i) => i,
            None => {
                self.segments.push(id);
                self.segments.len() - 1
            }
        }
    }

    /// Changes row `seq` with `f`; false when there is none.
    fn update(&mut self, seq: u64, f: impl FnOnce(&mut Row)) -> bool {
        self.index_of(seq).is_some_and(|i| self.rows.update(i, f))
    }
}

/// The keys of [`identity_key`] and [`conversation_hash`]: random for each new store,
/// and kept in its saved state (sealed), so a store read back finds its own entries.
/// SipHash is a fixed function, so the same keys give the same hashes on any machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HashKeys([u64; 4]);

impl HashKeys {
    fn random() -> HashKeys {
        let mut b = [0u8; 32];
        if getrandom::getrandom(&mut b).is_err() {
            // No system randomness: the process's own random hasher keys instead.
            let r = RandomState::new();
            return HashKeys([0u64, 1, 2, 3].map(|i| r.hash_one(i)));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        HashKeys([word(0), word(1), word(2), word(3)])
    }
}

/// A message identity in 16 bytes (as two words: half the alignment of a `u128`, so a
/// table entry is 24 bytes rather than 32): identities the proxy writes are SHA-256 in
/// hex, whose first half is taken as is; anything else is hashed with SipHash-1-3-128
/// under the store's key.
fn identity_key(keys: &HashKeys, s: &str) -> [u64; 2] {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let word =
            |r: std::ops::Range<usize>| s.get(r).and_then(|h| u64::from_str_radix(h, 16).ok());
        if let (Some(a), Some(b)) = (word(0..16), word(16..32)) {
            return [a, b];
        }
    }
    let h = SipHasher13::new_with_keys(keys.0[0], keys.0[1]).hash(s.as_bytes());
    [h.h1, h.h2]
}

/// A conversation key in 128 bits, under the store's other key: senders choose the
/// addresses that make up keys, and must not be able to make two conversations share a
/// list (pages check the key itself too).
fn conversation_hash(keys: &HashKeys, key: &str) -> [u64; 2] {
    let h = SipHasher13::new_with_keys(keys.0[2], keys.0[3]).hash(key.as_bytes());
    [h.h1, h.h2]
}

const DAY_MS: i64 = 86_400_000;

/// Logical messages per day (by their first copy's time), counted as they are read, so
/// the dashboard does not walk the messages.
#[derive(Default)]
struct Tally {
    /// Day → [not flagged, flagged] (a message is flagged when any copy is).
    volume: BTreeMap<i64, [u64; 2]>,
    /// Rule → day → logical messages any copy of which it matched.
    hits: HashMap<String, BTreeMap<i64, u64>>,
}

impl Tally {
    /// Moves logical message `before` (its verdict as counted, `None` if not counted
    /// yet) to `after`, both on `day`.
    fn shift(&mut self, day: i64, before: Option<&GroupVerdict>, after: &GroupVerdict) {
        let slot = self.volume.entry(day).or_default();
        if let Some(b) = before {
            let i = usize::from(b.action != Action::Allow);
            if let Some(n) = slot.get_mut(i) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(n) = slot.get_mut(usize::from(after.action != Action::Allow)) {
            *n += 1;
        }
        for r in &after.rules {
            if before.is_some_and(|b| b.rules.contains(r)) {
                continue;
            }
            *self
                .hits
                .entry(r.clone())
                .or_default()
                .entry(day)
                .or_default() += 1;
        }
    }
}

/// Messages of a conversation to a block (see [`Conversation`]).
pub(crate) const CONVERSATION_BLOCK: usize = 64;

/// A conversation's logical messages: a list through their first copies' rows, newest
/// first, and, for every [`CONVERSATION_BLOCK`] of it counted from its oldest, where
/// that block starts and the span of its messages' times (`Store::blocks`, kept apart:
/// most conversations have none). A view reads the newest part
/// not yet in a block, and then only the blocks whose times can reach its window, not
/// the whole list.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Conversation {
    /// The first copy of its newest logical message, which links to the one before
    /// (`Row::link`).
    head: Packed,
    /// Messages in the list.
    len: u64,
    /// The span of times of the messages not in a block yet (empty: `MAX`, `MIN`), so
    /// that a block is closed without reading its rows.
    min: i64,
    max: i64,
}

/// [`CONVERSATION_BLOCK`] messages of a conversation's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    /// Its newest message; the block is the list from there on.
    top: Packed,
    /// The earliest and latest time among its messages.
    min: i64,
    max: i64,
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

/// How far [`Store::check_saved_pages`] has looked: each chain's rows in turn, then the
/// identities.
#[derive(Clone, Copy, Debug, Default)]
pub struct SavedCheck {
    chain: usize,
    page: usize,
    done: bool,
}

/// Derived state; see the module docs. Chain 0 is this node's; with several nodes, the
/// other nodes' chains are applied too, so the queue, dashboard and conversations cover
/// every node. The audit trail, holds and retention facts are this node's own.
///
/// Per copy it keeps one 64-byte row (strings are numbers into tables of the distinct
/// JIDs and labels; conversations are lists through their first copies' rows) and, per
/// logical message, one identity entry; both mostly on disk (`rows.rs`, `identities.rs`).
/// What pages count (the queue's
/// order and filters, the dashboard's days, the retention overview's classes) is kept
/// up to date as records are read, so no page walks every message.
pub struct Store {
    chains: Vec<Chain>,
    /// Message identity (and delivered identity) → the group it names; the older
    /// entries sealed on disk.
    identities: Identities,
    /// Groups whose first copy was shredded while other copies remain: where their list
    /// of copies starts now.
    detached: HashMap<Packed, Packed>,
    /// Conversation (by a 128-bit hash of its key) → its list.
    conversations: HashMap<[u64; 2], Conversation>,
    /// Conversation → its full blocks, oldest first (only those with one).
    blocks: HashMap<[u64; 2], Vec<Block>>,
    /// JIDs.
    jids: Interner,
    /// Stanza types and retention classes (few: their numbers fit in 16 bits).
    kinds: Interner,
    /// Stanza types, severities, end-to-end schemes, retention classes, rule lists.
    labels: Interner,
    audit: Vec<AuditRef>,
    /// The review items whose first copy is readable, by its time: the queue's order.
    items: BTreeMap<(i64, MsgRef), ReviewItem>,
    /// Where each of those is in `items`.
    item_at: HashMap<MsgRef, i64>,
    /// Review items whose first copy is shredded while other copies remain.
    orphans: BTreeMap<MsgRef, ReviewItem>,
    /// The items (filed and orphans) counted by facet.
    census: HashMap<Facet, u64>,
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
    tally: Tally,
    /// This node's copies by retention class (interned).
    classes: BTreeMap<u32, u64>,
    /// What rows' `extra` numbers name; entry 0 is unused. Equal ones are kept once
    /// (`extra_ids`): a recipient's copies all carry the same session account.
    extras: Vec<Extra>,
    extra_ids: HashMap<Extra, u32>,
    /// Places that do not fit a row's `place`: (segment, offset) by record.
    far: HashMap<MsgRef, (u64, u64)>,
    /// Every severity a copy was given (the queue's filter lists them).
    severities: std::collections::BTreeSet<u32>,
    /// The keys of `identity_key` and `conversation_hash`.
    keys: HashKeys,
    /// Where chains keep the rows they do not hold in memory.
    spill: Arc<Spill>,
    /// The saved state's pages file this store was taken back from, if it was.
    saved_pages: Option<String>,
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

impl GroupVerdict {
    /// The verdict of a logical message none of whose copies is read yet.
    fn empty() -> GroupVerdict {
        GroupVerdict {
            action: Action::Allow,
            rules: Vec::new(),
            would_action: None,
            severity: None,
            copies: 0,
        }
    }

    /// Adds copy `c`'s verdict: the most restrictive action, every rule, the highest
    /// severity. Each is the same whatever order the copies are read in (other nodes'
    /// copies arrive when they arrive).
    fn merge(&mut self, c: &GroupVerdict) {
        if rank(c.action) > rank(self.action) {
            self.action = c.action;
        }
        if let Some(w) = c.would_action {
            if self.would_action.is_none_or(|cur| rank(w) > rank(cur)) {
                self.would_action = Some(w);
            }
        }
        for r in &c.rules {
            if !self.rules.contains(r) {
                self.rules.push(r.clone());
            }
        }
        if let Some(sev) = &c.severity {
            let higher = match &self.severity {
                None => true,
                Some(cur) => {
                    (severity_rank(sev), sev.as_str()) > (severity_rank(cur), cur.as_str())
                }
            };
            if higher {
                self.severity = Some(sev.clone());
            }
        }
        self.copies += c.copies;
    }
}

impl Store {
    /// A store for this node's chain (`node`: its name, if nodes are named).
    pub fn new(archive_id: [u8; 16], sample_rate: f64) -> Store {
        Store::for_node(archive_id, sample_rate, None)
    }

    pub fn for_node(archive_id: [u8; 16], sample_rate: f64, node: Option<String>) -> Store {
        Store::spilling(archive_id, sample_rate, node, Spill::new(None, CACHE_PAGES))
    }

    /// [`Store::for_node`] keeping the rows it does not hold in memory in `spill`.
    pub fn spilling(
        archive_id: [u8; 16],
        sample_rate: f64,
        node: Option<String>,
        spill: Arc<Spill>,
    ) -> Store {
        let (a, b) = archive_id.split_at(8);
        let word = |s: &[u8]| s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        Store {
            chains: vec![Chain::new(node, true, &spill)],
            identities: Identities::new(spill.clone()),
            detached: HashMap::new(),
            conversations: HashMap::new(),
            blocks: HashMap::new(),
            jids: Interner::new(),
            kinds: Interner::new(),
            labels: Interner::new(),
            audit: Vec::new(),
            items: BTreeMap::new(),
            item_at: HashMap::new(),
            orphans: BTreeMap::new(),
            census: HashMap::new(),
            pending: HashMap::new(),
            sample_key: word(a) ^ word(b).rotate_left(17),
            sample_rate: sample_rate.clamp(0.0, 1.0),
            holds: Holds::default(),
            segments: BTreeMap::new(),
            shredded: BTreeMap::new(),
            tally: Tally::default(),
            classes: BTreeMap::new(),
            extras: vec![Extra::default()],
            extra_ids: HashMap::new(),
            far: HashMap::new(),
            severities: std::collections::BTreeSet::new(),
            keys: HashKeys::random(),
            spill,
            saved_pages: None,
        }
    }

    /// The pages file of the saved state this store was taken back from.
    pub fn saved_pages(&self) -> Option<&str> {
        self.saved_pages.as_deref()
    }

    /// Whether rows were lost from memory and disk (a page of the scratch file could not
    /// be read back): what the store shows is incomplete until it is built again.
    pub fn damaged(&self) -> bool {
        self.identities.damaged() || self.chains.iter().any(|c| c.rows.damaged())
    }

    /// Reads up to `n` of the pages the store still takes from its saved state's pages
    /// file, from where `at` says, so that a page changed there is found (and the store
    /// marked damaged) soon after a start rather than when a view needs it. Returns
    /// whether more are left.
    pub fn check_saved_pages(&self, at: &mut SavedCheck, n: usize) -> bool {
        if at.done || self.damaged() {
            at.done = true;
            return false;
        }
        if let Some(c) = self.chains.get(at.chain) {
            match c.rows.check_base(at.page, n) {
                Some(next) => at.page = next,
                None => {
                    at.chain += 1;
                    at.page = 0;
                }
            }
            return true;
        }
        match self.identities.check_saved(at.page, n) {
            Some(next) => at.page = next,
            None => at.done = true,
        }
        !at.done && !self.damaged()
    }

    /// The first seq of this node's chain not yet applied.
    pub fn next_seq(&self) -> u64 {
        self.chains.first().map_or(1, |c| c.next_seq)
    }

    /// How many chains are followed (this node's included).
    pub fn chain_count(&self) -> usize {
        self.chains.len()
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
        let c = Chain::new(node.map(str::to_owned), false, &self.spill);
        self.chains.push(c);
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

    fn row(&self, r: MsgRef) -> Option<Row> {
        self.chains
            .get(usize::from(r.chain))
            .and_then(|c| c.row(r.seq))
    }

    /// Changes row `r` with `f`; false when there is none.
    fn update_row(&mut self, r: MsgRef, f: impl FnOnce(&mut Row)) -> bool {
        self.chains
            .get_mut(usize::from(r.chain))
            .is_some_and(|c| c.update(r.seq, f))
    }

    /// Makes first copy `head` (its time `time`) the newest message of conversation
    /// `key`, closing a block when the list reaches a whole number of them; returns the
    /// head before, which the new head's row links to.
    fn push_head(&mut self, key: [u64; 2], head: MsgRef, time: i64) -> Packed {
        let n = self.spill.conv_block.max(1) as u64;
        let c = self.conversations.entry(key).or_insert(Conversation {
            head: 0,
            len: 0,
            min: i64::MAX,
            max: i64::MIN,
        });
        let before = std::mem::replace(&mut c.head, pack(head));
        c.len += 1;
        c.min = c.min.min(time);
        c.max = c.max.max(time);
        if c.len.is_multiple_of(n) {
            let block = Block {
                top: c.head,
                min: c.min,
                max: c.max,
            };
            (c.min, c.max) = (i64::MAX, i64::MIN);
            self.blocks.entry(key).or_default().push(block);
        }
        before
    }

    /// The conversation key of copy `w` (see [`conversation_key`]).
    fn conversation_of(&self, w: &Row) -> String {
        conversation_key(
            w.direction(),
            self.jids.get(w.from),
            self.jids.get(w.to),
            self.kinds.get(self.stanza_type_of(w)),
        )
    }

    fn class_of(&self, w: &Row) -> u32 {
        unpack_kind(w.kind, &self.extra(w)).1
    }

    fn stanza_type_of(&self, w: &Row) -> u32 {
        unpack_kind(w.kind, &self.extra(w)).0
    }

    /// The number of `x` in the side table, added when new (0: nothing to keep); its
    /// severity joins those the queue's filter lists.
    fn extra_id(&mut self, x: Extra) -> u32 {
        if x == Extra::default() {
            return 0;
        }
        if x.severity != 0 {
            self.severities.insert(x.severity);
        }
        if let Some(&i) = self.extra_ids.get(&x) {
            return i;
        }
        let i = u32::try_from(self.extras.len()).unwrap_or(0);
        self.extras.push(x);
        self.extra_ids.insert(x, i);
        i
    }

    fn extra(&self, w: &Row) -> Extra {
        self.extras
            .get(w.extra as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Where copy `w` of chain `chain` is: (segment, offset).
    fn place(&self, chain: ChainIdx, w: &Row) -> (u64, u64) {
        if w.place == FAR {
            return self
                .far
                .get(&MsgRef { chain, seq: w.seq })
                .copied()
                .unwrap_or((u64::MAX, u64::MAX));
        }
        let segment = self
            .chains
            .get(usize::from(chain))
            .and_then(|c| c.segments.get((w.place >> OFFSET_BITS) as usize))
            .copied()
            .unwrap_or(u64::MAX);
        (segment, w.place & ((1 << OFFSET_BITS) - 1))
    }

    /// The verdict one copy contributes.
    fn copy_verdict(&self, w: &Row) -> GroupVerdict {
        let rules = match w.rules {
            0 => Vec::new(),
            n => self
                .labels
                .get(n)
                .split(RULE_SEP)
                .map(str::to_owned)
                .collect(),
        };
        GroupVerdict {
            action: w.action(),
            rules,
            would_action: w.would_action(),
            severity: self.labels.get_opt(self.extra(w).severity),
            copies: 1,
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
            c.head = e.head;
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
                    let c = m.capture;
                    // Copies join the group of the first copy with either identity.
                    let mut names = [
                        &c.identity,
                        c.delivered_identity.as_ref().unwrap_or(&c.identity),
                    ]
                    .map(|n| (!n.is_empty()).then(|| identity_key(&self.keys, n)));
                    // Two spellings of one identity are one entry.
                    if names[0] == names[1] {
                        names[1] = None;
                    }
                    let found = names.map(|n| n.and_then(|n| self.identities.get(&n)));
                    let group = found.iter().flatten().next().copied().map_or(key, unpack);
                    for (n, g) in names.into_iter().zip(found) {
                        if let (Some(n), None) = (n, g) {
                            self.identities.insert_new(n, pack(group));
                        }
                    }
                    let conversation = conversation_hash(
                        &self.keys,
                        &conversation_key(m.direction, &m.from, &m.to, &m.stanza_type),
                    );
                    let stanza_type = self.kinds.id(&m.stanza_type);
                    let class = self.kinds.id(retention::class_name(&c.retention_class));
                    let (kind, spilled_type, spilled_class) = pack_kind(stanza_type, class);
                    let rules = if m.outcome.rules.is_empty() {
                        0
                    } else {
                        self.labels
                            .id(&m.outcome.rules.join(RULE_SEP.encode_utf8(&mut [0; 4])))
                    };
                    let own_end = match m.direction {
                        Direction::Outbound => &m.from,
                        Direction::Inbound => &m.to,
                    };
                    let extra = Extra {
                        account: if c.account == *own_end {
                            0
                        } else {
                            self.jids.id(&c.account)
                        },
                        occupant: self.jids.opt(c.occupant.as_deref()),
                        claimed_from: self.jids.opt(c.claimed_from.as_deref()),
                        e2ee: self.labels.opt(m.outcome.e2ee.as_deref()),
                        severity: self.labels.opt(m.outcome.severity.as_deref()),
                        stanza_type: spilled_type,
                        retention_class: spilled_class,
                    };
                    let extra = self.extra_id(extra);
                    let place = match self.chains.get_mut(usize::from(chain)) {
                        Some(ch) => {
                            let n = ch.segment_number(e.segment) as u64;
                            if n < 1 << (64 - OFFSET_BITS) && e.offset < 1 << OFFSET_BITS {
                                (n << OFFSET_BITS) | e.offset
                            } else {
                                FAR
                            }
                        }
                        None => FAR,
                    };
                    if place == FAR {
                        self.far.insert(key, (e.segment, e.offset));
                    }
                    let row = Row {
                        seq: e.seq,
                        time: record.time.0,
                        place,
                        link: if group == key { 0 } else { pack(group) },
                        next: 0,
                        from: self.jids.id(&m.from),
                        to: self.jids.id(&m.to),
                        rules,
                        kind,
                        extra,
                        bits: pack_bits(
                            m.direction,
                            m.outcome.action,
                            m.outcome.would_action,
                            c.via,
                        ),
                    };
                    self.add_row(chain, key, group, row, conversation);
                    // Changes made (on another node) before this copy was read.
                    for p in self.pending.remove(&key).unwrap_or_default() {
                        self.change_item(group, |item| {
                            if !item.history.iter().any(|h| h.audit == p.event.audit) {
                                item.record(p.event);
                            }
                        });
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
                        self.audit.push(AuditRef {
                            seq: e.seq,
                            segment: e.segment,
                            offset: e.offset,
                        });
                    }
                }
                NewRecord::Event(_) => {}
            }
        }
    }

    /// Takes copy `row` (record `key`) in: its chain, its group's list of copies, its
    /// conversation, the counts, and the review queue.
    fn add_row(
        &mut self,
        chain: ChainIdx,
        key: MsgRef,
        group: MsgRef,
        mut row: Row,
        conversation: [u64; 2],
    ) {
        let mine = self.copy_verdict(&row);
        // The list of copies starts at the first copy (or, once that is shredded, at
        // the first one left) and goes on with the others, newest first.
        let start = if group == key {
            None
        } else if self.row(group).is_some() {
            Some(group)
        } else {
            self.detached.get(&pack(group)).copied().map(unpack)
        };
        let linked = start.is_some_and(|s| {
            self.update_row(s, |s| {
                row.next = s.next;
                s.next = pack(key);
            })
        });
        if !linked && group != key {
            self.detached.insert(pack(group), pack(key));
        }
        if chain == 0 {
            *self.classes.entry(self.class_of(&row)).or_default() += 1;
        }
        if group == key {
            row.bits |= HEAD;
            row.link = self.push_head(conversation, key, row.time);
        }
        let Some(c) = self.chains.get_mut(usize::from(chain)) else {
            return;
        };
        let salt = c.sample_salt;
        c.rows.push(row);
        // The dashboard counts each logical message once, on its first copy's day, with
        // what its copies add up to so far.
        let head_day = self.row(group).map(|h| h.time.div_euclid(DAY_MS));
        let before = if group == key {
            None
        } else {
            Some(
                self.item(group)
                    .map(|i| i.verdict.clone())
                    .unwrap_or_else(GroupVerdict::empty),
            )
        };
        let mut after = before.clone().unwrap_or_else(GroupVerdict::empty);
        after.merge(&mine);
        if let Some(day) = head_day {
            self.tally.shift(day, before.as_ref(), &after);
        }
        // Anything a rule noticed is for review, enforced or not: a flag, a redaction or
        // block, a monitor-mode "would have", an alert-only hit. One review item per
        // logical message, keyed by its first copy.
        let flagged =
            mine.action != Action::Allow || mine.would_action.is_some() || !mine.rules.is_empty();
        let mut after = Some(after);
        let changed = self.change_item(group, |item| {
            if flagged {
                item.sampled = false;
            }
            if let Some(a) = after.take() {
                item.verdict = a;
            }
        });
        let sample = || sampled(self.sample_key ^ salt, key.seq, self.sample_rate);
        if !changed && (flagged || (group == key && sample())) {
            let verdict = self.verdict_of(group);
            self.insert_item(
                group,
                ReviewItem {
                    seq: group,
                    status: ReviewStatus::Open,
                    assignee: None,
                    sampled: !flagged,
                    history: Vec::new(),
                    verdict,
                },
            );
        }
    }

    fn item(&self, group: MsgRef) -> Option<&ReviewItem> {
        match self.item_at.get(&group) {
            Some(t) => self.items.get(&(*t, group)),
            None => self.orphans.get(&group),
        }
    }

    fn item_mut(&mut self, group: MsgRef) -> Option<&mut ReviewItem> {
        match self.item_at.get(&group) {
            Some(t) => self.items.get_mut(&(*t, group)),
            None => self.orphans.get_mut(&group),
        }
    }

    /// Changes the review item of `group` with `f`, keeping the census; false when
    /// there is none.
    fn change_item(&mut self, group: MsgRef, f: impl FnOnce(&mut ReviewItem)) -> bool {
        let filed = self.item_at.contains_key(&group);
        let Some(item) = self.item_mut(group) else {
            return false;
        };
        let before = Facet::of(item, filed);
        f(item);
        if before.counts(item) {
            return true;
        }
        let after = Facet::of(item, filed);
        self.uncount(&before);
        *self.census.entry(after).or_default() += 1;
        true
    }

    fn uncount(&mut self, facet: &Facet) {
        if let Some(n) = self.census.get_mut(facet) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.census.remove(facet);
            }
        }
    }

    /// Counts every item afresh (after a saved state is read back).
    fn recount(&mut self) {
        self.census = self.counted();
    }

    /// The census as counting every item gives it.
    fn counted(&self) -> HashMap<Facet, u64> {
        let mut census: HashMap<Facet, u64> = HashMap::new();
        let filed = self.items.values().map(|i| Facet::of(i, true));
        let orphans = self.orphans.values().map(|i| Facet::of(i, false));
        for f in filed.chain(orphans) {
            *census.entry(f).or_default() += 1;
        }
        census
    }

    /// Files a review item by its first copy's time, or with the orphans when that copy
    /// is not readable.
    fn insert_item(&mut self, group: MsgRef, item: ReviewItem) {
        let replaced = match self.row(group).map(|h| h.time) {
            Some(t) => {
                *self.census.entry(Facet::of(&item, true)).or_default() += 1;
                let old = self.item_at.insert(group, t).filter(|o| *o != t);
                let gone = old.and_then(|o| self.items.remove(&(o, group)));
                let same = self.items.insert((t, group), item);
                gone.or(same).map(|i| (i, true))
            }
            None => {
                *self.census.entry(Facet::of(&item, false)).or_default() += 1;
                self.orphans.insert(group, item).map(|i| (i, false))
            }
        };
        if let Some((old, filed)) = replaced {
            self.uncount(&Facet::of(&old, filed));
        }
    }

    /// Drops everything known about a shredded segment's messages: the UI must not
    /// keep showing who wrote to whom and when after the records are gone.
    fn forget_segment(&mut self, chain: ChainIdx, segment: u64, shred_seq: u64, time: Timestamp) {
        if chain == 0 {
            self.shredded.insert(segment, (shred_seq, time));
            self.segments.remove(&segment);
            self.audit.retain(|a| a.segment != segment);
        }
        let Some(c) = self.chains.get_mut(usize::from(chain)) else {
            return;
        };
        let number = c.segments.iter().position(|s| *s == segment);
        let far = &self.far;
        let gone = |r: &Row| {
            if r.place == FAR {
                far.get(&MsgRef { chain, seq: r.seq })
                    .is_some_and(|(s, _)| *s == segment)
            } else {
                number == Some((r.place >> OFFSET_BITS) as usize)
            }
        };
        let before = c.rows.len();
        c.rows.retain(|r| !gone(r));
        if c.rows.len() == before {
            return;
        }
        self.far
            .retain(|r, (s, _)| !(r.chain == chain && *s == segment));
        // Counts per class, string tables and the rest are rebuilt from the rows left.
        self.relink();
    }

    /// Rebuilds what joins rows (lists of copies, identities, conversations, review
    /// items, counts) from the rows left after a shred. Shreds are rare; this walks
    /// every row once.
    fn relink(&mut self) {
        self.compact_tables();
        let mut members: HashMap<Packed, Vec<Packed>> = HashMap::new();
        for (i, c) in self.chains.iter_mut().enumerate() {
            let chain = ChainIdx::try_from(i).unwrap_or(ChainIdx::MAX);
            c.rows.update_all(|r| {
                r.next = 0;
                let me = MsgRef { chain, seq: r.seq };
                members.entry(pack(r.group(me))).or_default().push(pack(me));
            });
        }
        self.detached.clear();
        for (g, refs) in &mut members {
            // The first copy starts its list (it may be on any chain), the rest follow.
            refs.sort_unstable_by_key(|p| (*p != *g, unpack(*p)));
            for pair in refs.windows(2) {
                if let [a, b] = *pair {
                    self.update_row(unpack(a), |w| w.next = b);
                }
            }
        }
        // A group whose first copy is gone is headed by its first copy left, as a read
        // that never saw the gone copy (a start after the shred) heads it: the same
        // message is then queued, counted and shown in its conversation either way, and
        // keeps the review history this process has for it.
        let reheaded: HashMap<Packed, Packed> = members
            .iter()
            .filter_map(|(g, refs)| refs.first().filter(|f| *f != g).map(|f| (*g, *f)))
            .collect();
        for (g, h) in &reheaded {
            let Some(refs) = members.remove(g) else {
                continue;
            };
            for &r in &refs {
                self.update_row(unpack(r), |w| {
                    if r == *h {
                        w.bits |= HEAD;
                        // Set below, with the conversation lists.
                        w.link = 0;
                    } else {
                        w.link = *h;
                    }
                });
            }
            members.insert(*h, refs);
        }
        self.identities.retain_map(|g| {
            if let Some(h) = reheaded.get(g) {
                *g = *h;
            }
            members.contains_key(g)
        });
        self.census.clear();
        let items: Vec<ReviewItem> = std::mem::take(&mut self.items)
            .into_values()
            .chain(std::mem::take(&mut self.orphans).into_values())
            .map(|mut i| {
                if let Some(h) = reheaded.get(&pack(i.seq)) {
                    i.seq = unpack(*h);
                }
                i
            })
            .filter(|i| members.contains_key(&pack(i.seq)))
            .collect();
        self.item_at.clear();
        for mut item in items {
            item.verdict = self.verdict_of(item.seq);
            let v = &item.verdict;
            let noticed =
                v.action != Action::Allow || v.would_action.is_some() || !v.rules.is_empty();
            // What a rule noticed went with its shredded copy: the copies left would
            // not be queued by a read after the shred either.
            if !noticed && !item.sampled {
                continue;
            }
            self.insert_item(item.seq, item);
        }
        // Conversations again, through the first copies left, oldest first.
        let mut heads: Vec<(i64, MsgRef)> = Vec::new();
        for (i, c) in self.chains.iter().enumerate() {
            let chain = ChainIdx::try_from(i).unwrap_or(ChainIdx::MAX);
            heads.extend(
                c.rows
                    .iter()
                    .filter(|r| r.is_head())
                    .map(|r| (r.time, MsgRef { chain, seq: r.seq })),
            );
        }
        heads.sort_unstable();
        self.conversations.clear();
        self.blocks.clear();
        for (time, h) in heads {
            let Some(key) = self
                .row(h)
                .map(|w| conversation_hash(&self.keys, &self.conversation_of(&w)))
            else {
                continue;
            };
            let before = self.push_head(key, h, time);
            self.update_row(h, |w| w.link = before);
        }
        self.tally = Tally::default();
        for g in members.keys().map(|p| unpack(*p)) {
            if let Some(day) = self.row(g).map(|h| h.time.div_euclid(DAY_MS)) {
                let v = self.verdict_of(g);
                self.tally.shift(day, None, &v);
            }
        }
    }

    /// Rebuilds the tables of strings and extras from the rows left, renumbering the
    /// rows: what only shredded records named (their JIDs among them) is not kept.
    fn compact_tables(&mut self) {
        let old_jids = std::mem::replace(&mut self.jids, Interner::new());
        let old_labels = std::mem::replace(&mut self.labels, Interner::new());
        let old_kinds = std::mem::replace(&mut self.kinds, Interner::new());
        let old_extras = std::mem::replace(&mut self.extras, vec![Extra::default()]);
        self.extra_ids.clear();
        self.severities.clear();
        self.classes.clear();
        for ci in 0..self.chains.len() {
            let mut rows = match self.chains.get_mut(ci) {
                Some(c) => c.rows.take(),
                None => continue,
            };
            rows.update_all(|r| {
                let x = old_extras
                    .get(r.extra as usize)
                    .copied()
                    .unwrap_or_default();
                let jid = |this: &mut Interner, i: u32| match i {
                    0 => 0,
                    i => this.id(old_jids.get(i)),
                };
                let label = |this: &mut Interner, i: u32| match i {
                    0 => 0,
                    i => this.id(old_labels.get(i)),
                };
                let (old_type, old_class) = unpack_kind(r.kind, &x);
                let stanza_type = self.kinds.id(old_kinds.get(old_type));
                let class = self.kinds.id(old_kinds.get(old_class));
                r.from = jid(&mut self.jids, r.from);
                r.to = jid(&mut self.jids, r.to);
                r.rules = label(&mut self.labels, r.rules);
                let (kind, spilled_type, spilled_class) = pack_kind(stanza_type, class);
                r.kind = kind;
                let nx = Extra {
                    account: jid(&mut self.jids, x.account),
                    occupant: jid(&mut self.jids, x.occupant),
                    claimed_from: jid(&mut self.jids, x.claimed_from),
                    e2ee: label(&mut self.labels, x.e2ee),
                    severity: label(&mut self.labels, x.severity),
                    stanza_type: spilled_type,
                    retention_class: spilled_class,
                };
                r.extra = self.extra_id(nx);
                if ci == 0 {
                    *self.classes.entry(class).or_default() += 1;
                }
            });
            if let Some(c) = self.chains.get_mut(ci) {
                c.rows = rows;
            }
        }
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
            match self.row(r) {
                Some(w) => groups.push(w.group(r)),
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
            self.change_item(group, |item| item.record(event.clone()));
        }
    }

    /// Whether copy `r` is read and not shredded.
    pub fn contains(&self, r: MsgRef) -> bool {
        self.row(r).is_some()
    }

    /// The copy `r`, as pages show it.
    pub fn message(&self, r: MsgRef) -> Option<MessageMeta> {
        self.row(r).map(|w| self.meta(r.chain, &w))
    }

    fn meta(&self, chain: ChainIdx, w: &Row) -> MessageMeta {
        let j = |i: u32| self.jids.get(i).to_string();
        let x = self.extra(w);
        let (segment, offset) = self.place(chain, w);
        let direction = w.direction();
        let (from, to) = (j(w.from), j(w.to));
        let stanza_type = self.kinds.get(self.stanza_type_of(w)).to_string();
        let conversation = conversation_key(direction, &from, &to, &stanza_type);
        let account = match (x.account, direction) {
            (0, Direction::Outbound) => j(w.from),
            (0, Direction::Inbound) => j(w.to),
            (a, _) => j(a),
        };
        MessageMeta {
            chain,
            seq: w.seq,
            time: Timestamp(w.time),
            direction,
            from,
            to,
            stanza_type: stanza_type.clone(),
            action: w.action(),
            rules: self.copy_verdict(w).rules,
            severity: self.labels.get_opt(x.severity),
            e2ee: self.labels.get_opt(x.e2ee),
            segment,
            offset,
            conversation,
            group: w.group(MsgRef { chain, seq: w.seq }),
            leg: w.leg(),
            via: w.via(),
            account,
            would_action: w.would_action(),
            claimed_from: self.jids.get_opt(x.claimed_from),
            retention_class: self.kinds.get(self.class_of(w)).to_string(),
            occupant: self.jids.get_opt(x.occupant),
        }
    }

    /// The review item of the logical message `r` is a copy of.
    pub fn review(&self, r: MsgRef) -> Option<&ReviewItem> {
        self.item(self.group_of(r))
    }

    /// The first copy of the logical message `r` belongs to.
    pub fn group_of(&self, r: MsgRef) -> MsgRef {
        self.row(r).map_or(r, |w| w.group(r))
    }

    /// Every copy of the logical message `r` belongs to: its first copy, then the others
    /// by chain and seq.
    fn copy_refs(&self, r: MsgRef) -> Vec<MsgRef> {
        // A group whose first copy is shredded is still named by it.
        let group = self.group_of(r);
        let start = if self.row(group).is_some() {
            Some(group)
        } else {
            self.detached.get(&pack(group)).copied().map(unpack)
        };
        let mut refs = Vec::new();
        let mut at = start;
        // Lists are built acyclic; the bound only makes sure of it.
        let bound = self.chains.iter().map(|c| c.rows.len()).sum::<usize>();
        while let Some(x) = at {
            let Some(row) = self.row(x) else { break };
            refs.push(x);
            if refs.len() > bound {
                break;
            }
            at = (row.next != 0).then(|| unpack(row.next));
        }
        // The first copy (the one it is shown by), then the others by chain and seq.
        refs.sort_unstable_by_key(|x| (*x != group, *x));
        refs
    }

    /// Every copy of the logical message `r` belongs to: its first copy, then the others
    /// by chain and seq.
    pub fn copies(&self, r: MsgRef) -> Vec<MessageMeta> {
        self.copy_refs(r)
            .into_iter()
            .filter_map(|c| self.message(c))
            .collect()
    }

    /// Whether `jids` (bare, lowercase) include a party of the logical message `r` belongs
    /// to: its sender, or whoever it was addressed to, as any copy shows them. A review is
    /// of the whole message, so the check that nobody reviews their own is too: a room's
    /// copy for another recipient may name the sender by nickname only, while the
    /// sender's own copy names the account. A room message's copy for a member is not
    /// addressed to that member (it was sent to the room), so its other members may
    /// review it; a private message in a room is addressed to its recipient.
    pub fn involves(&self, r: MsgRef, jids: &[String]) -> bool {
        if jids.is_empty() {
            return false;
        }
        let own = |i: u32| i != 0 && jids.contains(&normalize_jid(bare_jid(self.jids.get(i))));
        let found = self.copy_refs(r).into_iter().any(|c| {
            // A copy that cannot be read is counted as theirs (the store is damaged).
            let Some(w) = self.row(c) else {
                return true;
            };
            // The person behind a room occupant: the sender of an inbound copy, the
            // recipient of an outbound private message.
            let behind = self.extra(&w).occupant;
            let to_room = w.direction() == Direction::Inbound
                && self.kinds.get(self.stanza_type_of(&w)) == "groupchat";
            own(w.from) || own(behind) || (!to_room && own(w.to))
        });
        // Copies past one that could not be read were not looked at: with rows lost,
        // nobody is cleared of being a party.
        found || self.damaged()
    }

    /// The logical message's verdict: the most restrictive of its copies, every rule
    /// any copy matched, and what monitor-mode rules would have done.
    pub fn verdict_of(&self, r: MsgRef) -> GroupVerdict {
        let mut v = GroupVerdict::empty();
        for c in self.copy_refs(r) {
            if let Some(w) = self.row(c) {
                v.merge(&self.copy_verdict(&w));
            }
        }
        v
    }

    /// The review items, newest message first.
    pub fn reviews_newest_first(&self) -> impl Iterator<Item = &ReviewItem> {
        self.items.values().rev()
    }

    pub fn reviews(&self) -> impl DoubleEndedIterator<Item = &ReviewItem> {
        self.items.values().chain(self.orphans.values())
    }

    /// This node's audit records, oldest first.
    pub fn audit(&self) -> &[AuditRef] {
        &self.audit
    }

    /// Logical messages per day for `days` days from day `first` (days since the epoch,
    /// UTC): [not flagged, flagged].
    pub fn volume_by_day(&self, first: i64, days: usize) -> Vec<[u64; 2]> {
        (0..days)
            .map(|i| {
                self.tally
                    .volume
                    .get(&(first + i as i64))
                    .copied()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Per rule, the logical messages it matched on each of `days` days from `first`;
    /// rules without a hit in those days are left out.
    pub fn hits_by_day(&self, first: i64, days: usize) -> BTreeMap<String, Vec<u64>> {
        self.tally
            .hits
            .iter()
            .map(|(rule, by_day)| {
                let counts: Vec<u64> = (0..days)
                    .map(|i| by_day.get(&(first + i as i64)).copied().unwrap_or(0))
                    .collect();
                (rule.clone(), counts)
            })
            .filter(|(_, counts)| counts.iter().any(|n| *n > 0))
            .collect()
    }

    /// Every rule any readable message matched, sorted.
    pub fn rule_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tally.hits.keys().cloned().collect();
        names.sort();
        names
    }

    /// Every severity any copy was given, sorted.
    pub fn severity_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .severities
            .iter()
            .map(|i| self.labels.get(*i).to_string())
            .collect();
        names.sort();
        names
    }

    /// This node's readable copies by retention class.
    pub fn class_counts(&self) -> BTreeMap<String, u64> {
        self.classes
            .iter()
            .map(|(c, n)| (self.kinds.get(*c).to_string(), *n))
            .collect()
    }

    /// Up to `before` and `after` logical messages of the same conversation around the
    /// one `r` is a copy of, each by its first copy, in time order across every node.
    pub fn conversation_around(&self, r: MsgRef, before: usize, after: usize) -> Vec<MessageMeta> {
        self.around_reading(r, before, after).0
    }

    /// [`Store::conversation_around`], and how many blocks it read.
    ///
    /// Reads the conversation's newest part not yet in a block and the blocks whose span
    /// of times holds the message's. Then, while an unread block's span reaches into the
    /// window (from the `before`th message before it to the `after`th after it, or
    /// without end on a side that lacks them), it reads the nearest such block on each
    /// side: of those reaching past the message's time, the one that starts earliest;
    /// of those reaching before it, the one that ends latest. The window narrows as it
    /// fills. What is left unread then holds no message that could be in the window, so
    /// the result is the one a walk of the whole list gives (in a store whose rows all
    /// read back).
    fn around_reading(&self, r: MsgRef, before: usize, after: usize) -> (Vec<MessageMeta>, usize) {
        let hit = self.group_of(r);
        let Some(w) = self.row(hit) else {
            return (Vec::new(), 0);
        };
        let conversation = self.conversation_of(&w);
        let key = conversation_hash(&self.keys, &conversation);
        let Some(c) = self.conversations.get(&key) else {
            return (Vec::new(), 0);
        };
        let blocks: &[Block] = self.blocks.get(&key).map_or(&[], Vec::as_slice);
        let n = self.spill.conv_block.max(1);
        let in_blocks = (blocks.len() as u64).saturating_mul(n as u64);
        let newest = usize::try_from(c.len.saturating_sub(in_blocks)).unwrap_or(usize::MAX);
        // Should two keys ever share a hash, their lists are one: each message's own key
        // decides.
        let mut all: Vec<(i64, MsgRef)> = Vec::new();
        self.walk(c.head, newest, &conversation, &mut all);
        let mut unread = vec![true; blocks.len()];
        let mut read = 0;
        for (i, b) in blocks.iter().enumerate() {
            if b.min <= w.time && w.time <= b.max {
                self.walk(b.top, n, &conversation, &mut all);
                unread[i] = false;
                read += 1;
            }
        }
        let at = loop {
            all.sort_unstable();
            all.dedup();
            let at = all.iter().position(|(_, m)| *m == hit);
            let (lo, hi) = match at {
                // Not in what was read: only the rest can hold it.
                None => (i64::MIN, i64::MAX),
                Some(p) => (
                    p.checked_sub(before)
                        .and_then(|i| all.get(i))
                        .map_or(i64::MIN, |e| e.0),
                    all.get(p.saturating_add(after)).map_or(i64::MAX, |e| e.0),
                ),
            };
            let open = |i: &usize| {
                unread.get(*i) == Some(&true)
                    && blocks.get(*i).is_some_and(|b| b.max >= lo && b.min <= hi)
            };
            let later = (0..blocks.len())
                .filter(|i| open(i) && blocks.get(*i).is_some_and(|b| b.max >= w.time))
                .min_by_key(|i| blocks.get(*i).map(|b| b.min));
            let earlier = (0..blocks.len())
                .filter(|i| open(i) && blocks.get(*i).is_some_and(|b| b.min <= w.time))
                .max_by_key(|i| blocks.get(*i).map(|b| b.max));
            if later.is_none() && earlier.is_none() {
                break at;
            }
            for i in later.into_iter().chain(earlier) {
                if let (Some(b), Some(u)) = (blocks.get(i), unread.get_mut(i)) {
                    if *u {
                        *u = false;
                        read += 1;
                        self.walk(b.top, n, &conversation, &mut all);
                    }
                }
            }
        };
        let Some(at) = at else {
            return (Vec::new(), read);
        };
        let from = at.saturating_sub(before);
        let to = at.saturating_add(after).saturating_add(1).min(all.len());
        let shown = all
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .filter_map(|(_, m)| self.message(*m))
            .collect();
        (shown, read)
    }

    /// Adds the messages of `conversation` among `n` list entries from `top`.
    fn walk(&self, top: Packed, n: usize, conversation: &str, out: &mut Vec<(i64, MsgRef)>) {
        let mut at = top;
        for _ in 0..n {
            if at == 0 {
                break;
            }
            let m = unpack(at);
            let Some(x) = self.row(m) else { break };
            if self.conversation_of(&x) == conversation {
                out.push((x.time, m));
            }
            at = x.link;
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use custos_archive::{MessageRecord, Outcome, Record, RecordSeq};
    use proptest::prelude::*;

    fn msg(seq: u64, from: &str, to: &str, action: Action) -> ChainEntry {
        let m = MessageRecord {
            outcome: Outcome {
                action,
                rules: if action == Action::Allow {
                    vec![]
                } else {
                    vec!["r1".into()]
                },
                ..Outcome::allowed()
            },
            ..MessageRecord::chat(from, to, "x")
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

    /// A message is someone's own if any copy names them: the recipient's copy of a
    /// room message may name only the sender's nickname, while the sender's own copy
    /// names their account. Reviewing by the copy that does not name them is refused.
    #[test]
    fn a_message_is_ones_own_whichever_copy_names_it() {
        let mut s = Store::new([0; 16], 0.0);
        let mut own = copy(1, "id-1", None, Leg::ClientToServer, Action::Flag);
        let mut echo = copy(2, "id-1", None, Leg::ServerToClient, Action::Flag);
        if let (
            Some(Record {
                content: NewRecord::Message(o),
                ..
            }),
            Some(Record {
                content: NewRecord::Message(e),
                ..
            }),
        ) = (&mut own.record, &mut echo.record)
        {
            o.from = "olivia@x/desk".into();
            o.to = "room@conf.x".into();
            o.capture.account = "olivia@x/desk".into();
            o.stanza_type = "groupchat".into();
            e.from = "room@conf.x/nick".into();
            e.to = "bob@x/2".into();
            e.capture.account = "bob@x/2".into();
            e.stanza_type = "groupchat".into();
        }
        s.apply(vec![own, echo]);
        let olivia = ["olivia@x".to_string()];
        assert!(!s.message(MsgRef::own(2)).unwrap().involves(&olivia));
        assert!(s.involves(MsgRef::own(2), &olivia));
        assert!(s.involves(MsgRef::own(1), &olivia));
        assert!(!s.involves(MsgRef::own(2), &["carol@x".to_string()]));
        assert!(!s.involves(MsgRef::own(2), &[]));
        // Bob received it in the room: he may review it (it was sent to the room).
        assert!(!s.involves(MsgRef::own(2), &["bob@x".to_string()]));
        // A message sent to Bob himself is his, whichever copy is named first.
        let mut to_bob = copy(3, "id-2", None, Leg::ClientToServer, Action::Flag);
        let mut bobs = copy(4, "id-2", None, Leg::ServerToClient, Action::Flag);
        for e in [&mut to_bob, &mut bobs] {
            if let Some(Record {
                content: NewRecord::Message(m),
                ..
            }) = &mut e.record
            {
                m.to = "room@conf.x/bobnick".into();
                m.stanza_type = "chat".into();
            }
        }
        if let Some(Record {
            content: NewRecord::Message(m),
            ..
        }) = &mut bobs.record
        {
            m.to = "bob@x/2".into();
            m.from = "room@conf.x/alicenick".into();
        }
        s.apply(vec![to_bob, bobs]);
        assert!(s.involves(MsgRef::own(3), &["bob@x".to_string()]));
        assert!(s.involves(MsgRef::own(4), &["bob@x".to_string()]));
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

    /// One step of a generated history: a copy (identity, action, rule mask, day,
    /// segment) or the shred of a segment.
    #[derive(Clone, Debug)]
    enum Step {
        /// identity, action, rule mask, day, segment, node (0: this one, 1: another)
        Copy(u8, u8, u8, u8, u64, usize),
        /// segment, node
        Shred(u64, usize),
        /// A review change naming seq `target` of chain `on` (0: this node's, 1: the
        /// other's), as a status (0..4) or an assignment (4), written on node `node`.
        Review(u64, usize, u8, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            9 => (0u8..6, 0u8..4, 0u8..8, 0u8..3, 1u64..4, 0usize..2)
                .prop_map(|(i, a, r, d, g, n)| Step::Copy(i, a, r, d, g, n)),
            1 => (1u64..4, 0usize..2).prop_map(|(g, n)| Step::Shred(g, n)),
            2 => (1u64..30, 0usize..2, 0u8..5, 0usize..2).prop_map(|(t, o, s, n)| Step::Review(t, o, s, n)),
        ]
    }

    /// The records `steps` make, each with the node whose chain it is on.
    fn history(steps: &[Step]) -> Vec<(usize, ChainEntry)> {
        let actions = [Action::Allow, Action::Flag, Action::Redact, Action::Block];
        let rules = ["r-a", "r-b", "r-c"];
        let mut seqs = [0u64; 2];
        let mut out = Vec::new();
        for (n, st) in steps.iter().enumerate() {
            let node = match st {
                Step::Copy(.., node) | Step::Shred(_, node) | Step::Review(.., node) => *node,
            };
            seqs[node] += 1;
            let seq = seqs[node];
            let mut e = match st {
                Step::Copy(id, a, mask, day, seg, _) => {
                    let leg = if seq.is_multiple_of(2) {
                        Leg::ServerToClient
                    } else {
                        Leg::ClientToServer
                    };
                    let mut e = copy(
                        seq,
                        &format!("id{id}"),
                        None,
                        leg,
                        actions[usize::from(*a) % 4],
                    );
                    if let Some(Record {
                        content: NewRecord::Message(m),
                        time,
                        ..
                    }) = &mut e.record
                    {
                        m.outcome.rules = rules
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask & (1 << i) != 0)
                            .map(|(_, r)| r.to_string())
                            .collect();
                        m.outcome.severity = (mask % 3 == 1).then(|| "high".to_string());
                        *time = Timestamp(i64::from(*day) * DAY_MS + n as i64);
                    }
                    e.segment = *seg;
                    e
                }
                Step::Shred(seg, _) => {
                    let mut e = entry(
                        seq,
                        NewRecord::Event(EventRecord::Shred {
                            segment: *seg,
                            reason: "test".into(),
                            authority: "test".into(),
                            actor: "test".into(),
                        }),
                    );
                    e.segment = 9;
                    e
                }
                Step::Review(target, on, status, _) => {
                    let change = if *status == 4 {
                        ReviewChange::Assign {
                            seqs: vec![*target],
                            assignee: Some(format!("officer{target}")),
                            node: (*on == 1).then(|| "n2".to_string()),
                        }
                    } else {
                        ReviewChange::Status {
                            seqs: vec![*target],
                            status: STATUSES_ALL[usize::from(*status) % 4],
                            comment: format!("looked at {target}"),
                            node: (*on == 1).then(|| "n2".to_string()),
                        }
                    };
                    let mut e = audit(seq, "rita", &change);
                    e.segment = 9;
                    e
                }
            };
            if let Some(r) = &mut e.record {
                if !matches!(st, Step::Copy(..)) {
                    r.time = Timestamp(n as i64);
                }
            }
            e.head = [n as u8; 32];
            out.push((node, e));
        }
        out
    }

    const STATUSES_ALL: [ReviewStatus; 4] = [
        ReviewStatus::Open,
        ReviewStatus::Reviewed,
        ReviewStatus::Escalated,
        ReviewStatus::FalsePositive,
    ];

    /// Everything a store holds, in an order that does not depend on its hash maps.
    /// Outbound copies of messages `1..=n` (seqs as numbers, identities `id-N`).
    fn sent_copies(n: u64, action: Action) -> Vec<ChainEntry> {
        (1..=n)
            .map(|seq| copy(seq, &format!("id-{seq}"), None, Leg::ClientToServer, action))
            .collect()
    }

    /// `s` saved and read back under `id` and `rate`, as a restart does. The pages
    /// file is removed once read back (the store read back keeps it open), so that
    /// tests leave nothing behind.
    fn saved_and_back(
        s: &Store,
        id: [u8; 16],
        rate: f64,
        spill: Arc<Spill>,
    ) -> Result<(Store, Covered), SnapshotError> {
        let mut bytes = Vec::new();
        let name = s.save(&mut bytes)?;
        let back = Store::restore(&bytes[..], id, rate, None, spill);
        let _ = std::fs::remove_file(s.spill.dir().join(name));
        back
    }

    fn fingerprint(s: &Store) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let sorted = |v: Vec<String>| {
            let mut v = v;
            v.sort();
            v.join("\n")
        };
        for c in &s.chains {
            let _ = writeln!(
                out,
                "chain {:?} {} {:?} {}",
                c.node, c.next_seq, c.segments, c.sample_salt
            );
            for r in c.rows.iter() {
                let _ = writeln!(out, "{r:?}");
            }
        }
        let _ = writeln!(
            out,
            "{}",
            sorted(s.identities.sorted().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(
            out,
            "{}",
            sorted(s.detached.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(
            out,
            "{}",
            sorted(s.conversations.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(
            out,
            "{}",
            sorted(s.blocks.iter().map(|e| format!("{e:?}")).collect())
        );
        for t in [&s.jids, &s.kinds, &s.labels] {
            let _ = writeln!(out, "{:?}", t.names);
            let _ = writeln!(
                out,
                "{}",
                sorted(t.ids.iter().map(|e| format!("{e:?}")).collect())
            );
        }
        let _ = writeln!(out, "{:?}", s.audit);
        let _ = writeln!(out, "{:?}", s.items);
        let _ = writeln!(
            out,
            "{}",
            sorted(s.item_at.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(out, "{:?}", s.orphans);
        // The census kept as items changed is the one counting them gives.
        let _ = writeln!(
            out,
            "{}",
            sorted(s.census.iter().map(|e| format!("{e:?}")).collect())
        );
        assert_eq!(s.census, s.counted(), "census");
        let _ = writeln!(
            out,
            "{}",
            sorted(s.pending.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(out, "{:?} {:?} {:?}", s.holds, s.segments, s.shredded);
        let _ = writeln!(out, "{:?}", s.tally.volume);
        let _ = writeln!(
            out,
            "{}",
            sorted(s.tally.hits.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(out, "{:?} {:?} {:?}", s.classes, s.extras, s.severities);
        let _ = writeln!(
            out,
            "{}",
            sorted(s.extra_ids.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(
            out,
            "{}",
            sorted(s.far.iter().map(|e| format!("{e:?}")).collect())
        );
        let _ = writeln!(out, "{:?} {} {}", s.keys, s.sample_key, s.sample_rate);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// A store saved part-way, read back and fed the rest of the records is the
        /// store that read them all without stopping: every table, list, count and
        /// review item, on both chains, through shreds and reviews read before the
        /// messages they name.
        #[test]
        fn a_store_saved_and_read_back_goes_on_as_if_it_never_stopped(
            steps in prop::collection::vec(step(), 1..60),
            cut in 0usize..60,
        ) {
            let records = history(&steps);
            let cut = cut.min(records.len());
            // Rows in pages of two, one of them in memory: most of them leave it.
            let mut whole = Store::spilling([3; 16], 0.3, None, Spill::tiny());
            let mut first = Store::spilling([3; 16], 0.3, None, Spill::tiny());
            first.keys = whole.keys;
            for s in [&mut whole, &mut first] {
                s.chain_of(Some("n2"));
            }
            let on = |node: usize| -> ChainIdx { if node == 0 { 0 } else { 1 } };
            for (node, e) in records.iter().cloned() {
                whole.apply_chain(on(node), vec![e]);
            }
            for (node, e) in records.iter().take(cut).cloned() {
                first.apply_chain(on(node), vec![e]);
            }
            let (mut back, read) = saved_and_back(&first, [3; 16], 0.3, Spill::tiny()).unwrap();
            prop_assert_eq!(read, first.covered());
            prop_assert_eq!(fingerprint(&back), fingerprint(&first));
            for (node, e) in records.iter().skip(cut).cloned() {
                back.apply_chain(on(node), vec![e]);
            }
            prop_assert_eq!(fingerprint(&back), fingerprint(&whole));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// What the store keeps up to date as it reads (each item's verdict, the lists
        /// of copies, the dashboard's days, the classes) equals what is computed afresh
        /// from the rows, through copies joining late and shreds of first copies.
        #[test]
        fn counts_kept_while_reading_equal_counts_made_afresh(steps in prop::collection::vec(step(), 1..60)) {
            let mut s = Store::new([3; 16], 0.3);
            let peer = s.chain_of(Some("n2"));
            for (node, e) in history(&steps) {
                s.apply_chain(if node == 0 { 0 } else { peer }, vec![e]);
            }
            let rows: Vec<(MsgRef, Row)> = s
                .chains
                .iter()
                .enumerate()
                .flat_map(|(c, ch)| {
                    let chain = ChainIdx::try_from(c).unwrap();
                    ch.rows.iter().map(move |r| (MsgRef { chain, seq: r.seq }, r))
                })
                .collect();
            for (key, r) in &rows {
                // Every copy lists exactly the rows of its group, its first copy first.
                let group = r.group(*key);
                let mut want: Vec<MsgRef> = rows.iter().filter(|(k, o)| o.group(*k) == group).map(|(k, _)| *k).collect();
                want.sort_unstable_by_key(|x| (*x != group, *x));
                prop_assert_eq!(s.copy_refs(*key), want);
            }
            for item in s.reviews() {
                let fresh = s.verdict_of(item.seq);
                prop_assert_eq!(item.verdict.action, fresh.action);
                prop_assert_eq!(item.verdict.copies, fresh.copies);
                prop_assert_eq!(&item.verdict.severity, &fresh.severity);
                let (mut a, mut b) = (item.verdict.rules.clone(), fresh.rules.clone());
                a.sort();
                b.sort();
                prop_assert_eq!(a, b);
            }
            let mut volume = vec![[0u64; 2]; 3];
            let mut hits: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for (key, r) in &rows {
                if !r.is_head() {
                    continue;
                }
                let day = usize::try_from(r.time.div_euclid(DAY_MS)).unwrap();
                let v = s.verdict_of(*key);
                volume[day][usize::from(v.action != Action::Allow)] += 1;
                for rule in v.rules {
                    hits.entry(rule).or_insert_with(|| vec![0; 3])[day] += 1;
                }
            }
            prop_assert_eq!(s.volume_by_day(0, 3), volume);
            prop_assert_eq!(s.hits_by_day(0, 3), hits);
            // Every first copy left is in its conversation, in time order.
            let mut heads: Vec<(i64, MsgRef)> = rows.iter().filter(|(_, r)| r.is_head()).map(|(k, r)| (r.time, *k)).collect();
            heads.sort_unstable();
            let heads: Vec<MsgRef> = heads.into_iter().map(|(_, k)| k).collect();
            for h in &heads {
                let around: Vec<MsgRef> = s.conversation_around(*h, 1000, 1000).iter().map(|m| m.key()).collect();
                prop_assert_eq!(&around, &heads);
            }
            let classes: u64 = s.class_counts().values().sum();
            prop_assert_eq!(classes, rows.iter().filter(|(k, _)| k.chain == 0).count() as u64);
            // The queue holds each item once, and only items, and counts them as they are.
            prop_assert_eq!(s.items.len(), s.item_at.len());
            prop_assert_eq!(&s.census, &s.counted());
            for (k, item) in &s.items {
                prop_assert_eq!(k.1, item.seq);
                prop_assert_eq!(Some(k.0), s.row(item.seq).map(|h| h.time));
            }
            for g in s.orphans.keys() {
                prop_assert!(s.row(*g).is_none());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// A store that read records before their segment was shredded (a live one, or
        /// one read back from a state saved before the shred) queues, counts and groups
        /// the messages left as a read after the shred does, which never sees the
        /// shredded records: the same items, verdicts, days and conversations. (Review
        /// history may differ: a read after the shred cannot apply a review that names
        /// a shredded copy.)
        #[test]
        fn after_a_shred_a_store_shows_what_a_read_after_the_shred_shows(steps in prop::collection::vec(step(), 1..60)) {
            let steps: Vec<Step> = steps
                .into_iter()
                .map(|st| match st {
                    Step::Copy(i, a, m, d, g, _) => Step::Copy(i, a, m, d, g, 0),
                    Step::Shred(g, _) => Step::Shred(g, 0),
                    Step::Review(t, _, st, _) => Step::Review(t, 0, st, 0),
                })
                .collect();
            let records = history(&steps);
            // The shredding store's rows mostly out of memory: shreds rewrite them.
            let mut live = Store::spilling([3; 16], 0.0, None, Spill::tiny());
            let mut after = Store::new([3; 16], 0.0);
            after.keys = live.keys;
            for (n, (_, e)) in records.into_iter().enumerate() {
                // Shredded later: its key is gone by the time the other store reads it.
                let gone = steps.iter().skip(n + 1).any(|st| matches!(st, Step::Shred(g, _) if *g == e.segment));
                let mut seen_after = e.clone();
                if gone {
                    seen_after.record = None;
                }
                live.apply(vec![e]);
                after.apply(vec![seen_after]);
            }
            let items = |s: &Store| -> Vec<(MsgRef, Action, usize)> {
                s.reviews_newest_first()
                    .map(|i| (i.seq, i.verdict.action, i.verdict.copies))
                    .collect()
            };
            prop_assert_eq!(items(&live), items(&after));
            prop_assert_eq!(live.volume_by_day(0, 3), after.volume_by_day(0, 3));
            prop_assert_eq!(live.hits_by_day(0, 3), after.hits_by_day(0, 3));
            prop_assert_eq!(live.class_counts(), after.class_counts());
            for c in after.chains[0].rows.iter() {
                let r = MsgRef::own(c.seq);
                prop_assert_eq!(live.group_of(r), after.group_of(r));
                let conv = |s: &Store| -> Vec<MsgRef> {
                    s.conversation_around(r, 100, 100).iter().map(|m| m.key()).collect()
                };
                prop_assert_eq!(conv(&live), conv(&after));
            }
        }
    }

    #[test]
    fn a_row_is_64_bytes_and_gives_back_what_was_read() {
        assert_eq!(std::mem::size_of::<Row>(), 64);
        let directions = [Direction::Outbound, Direction::Inbound];
        let woulds = [
            None,
            Some(Action::Allow),
            Some(Action::Flag),
            Some(Action::Redact),
            Some(Action::Block),
        ];
        for d in directions {
            for a in ACTIONS {
                for w in woulds {
                    for v in VIAS {
                        let row = Row {
                            seq: 1,
                            time: 0,
                            place: 0,
                            link: 0,
                            next: 0,
                            from: 0,
                            to: 0,
                            rules: 0,
                            kind: 0,
                            extra: 0,
                            bits: pack_bits(d, a, w, v),
                        };
                        assert_eq!(
                            (row.direction(), row.action(), row.would_action(), row.via()),
                            (d, a, w, v)
                        );
                    }
                }
            }
        }
        // Places past what a row holds, an account other than the copy's end, a
        // severity: all read back as written.
        let mut s = Store::new([1; 16], 0.0);
        let mut far = msg(1, "a@x/1", "b@x", Action::Flag);
        far.segment = 1 << 30;
        far.offset = 1 << 41;
        if let Some(Record {
            content: NewRecord::Message(m),
            ..
        }) = &mut far.record
        {
            m.capture.account = "a@x/other".into();
            m.outcome.severity = Some("high".into());
        }
        let mut near = msg(2, "b@x/2", "a@x", Action::Allow);
        if let Some(Record {
            content: NewRecord::Message(m),
            ..
        }) = &mut near.record
        {
            m.capture.account = "b@x/2".into();
        }
        // No account recorded at all.
        let none = msg(3, "c@x/3", "a@x", Action::Allow);
        s.apply(vec![far, near, none]);
        let m = s.message(MsgRef::own(1)).unwrap();
        assert_eq!((m.segment, m.offset), (1 << 30, 1 << 41));
        assert_eq!(m.account, "a@x/other");
        assert_eq!(m.severity.as_deref(), Some("high"));
        let m = s.message(MsgRef::own(2)).unwrap();
        assert_eq!((m.segment, m.offset, m.account.as_str()), (1, 200, "b@x/2"));
        assert_eq!(s.message(MsgRef::own(3)).unwrap().account, "");
    }

    proptest! {
        /// The widening search finds every row and nothing else, whatever the gaps.
        #[test]
        fn rows_are_found_by_seq_whatever_the_gaps(gaps in prop::collection::vec(1u64..50, 0..300), start in 1u64..1000) {
            let mut c = Chain::new(None, true, &Spill::new(None, CACHE_PAGES));
            let mut seq = start;
            for g in &gaps {
                c.rows.push(Row {
                    seq,
                    time: 0,
                    place: 0,
                    link: 0,
                    next: 0,
                    from: 0,
                    to: 0,
                    rules: 0,
                    kind: 0,
                    extra: 0,
                    bits: 0,
                });
                seq += g;
            }
            for probe in 0..seq + 5 {
                let want = c.rows.iter().position(|r| r.seq == probe);
                prop_assert_eq!(c.index_of(probe), want);
            }
        }
    }

    #[test]
    fn a_sender_inventing_stanza_types_cannot_make_rows_lie() {
        // More distinct types than a row's 16 bits number: the rest go to the side
        // table and still read back exactly.
        let mut s = Store::new([1; 16], 0.0);
        let n = 70_000u64;
        let entries: Vec<ChainEntry> = (1..=n)
            .map(|seq| {
                let mut e = msg(seq, "a@x/1", "b@x", Action::Allow);
                if let Some(Record {
                    content: NewRecord::Message(m),
                    ..
                }) = &mut e.record
                {
                    m.stanza_type = format!("t{seq}");
                }
                e
            })
            .collect();
        s.apply(entries);
        for seq in [1, 65_000, 65_534, 65_535, 65_536, n] {
            let m = s.message(MsgRef::own(seq)).unwrap();
            assert_eq!(m.stanza_type, format!("t{seq}"));
            assert_eq!(m.retention_class, "default");
        }
        assert_eq!(s.class_counts().get("default"), Some(&n));
    }

    /// The saved state's pages file, where someone who can write the archive directory
    /// changes a page, puts back an earlier save's file in its place, or deletes it:
    /// the start refuses the state when the file is not the one it names, and a page
    /// changed in it marks the store damaged when read, instead of showing less.
    #[test]
    fn a_saved_states_pages_file_changed_swapped_or_gone_is_not_believed() {
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let spill = Spill::tiny_in(Some(tmp.path().to_owned()));
        let mut s = Store::spilling([1; 16], 0.0, None, spill.clone());
        s.apply(sent_copies(40, Action::Flag));
        let dir = spill.dir();
        let mut earlier = Vec::new();
        let earlier_pages = s.save(&mut earlier).unwrap();
        s.apply(vec![msg(41, "a@x/1", "b@x", Action::Allow)]);
        let mut saved = Vec::new();
        let pages = s.save(&mut saved).unwrap();
        assert_ne!(pages, earlier_pages, "each save writes a file of its own");
        let restore = || Store::restore(&saved[..], [1; 16], 0.0, None, spill.clone());
        let whole = restore().unwrap().0;
        assert_eq!(fingerprint(&whole), fingerprint(&s));

        // Rows and identities are not in the clear in it.
        let raw = std::fs::read(dir.join(&pages)).unwrap();
        let row = s.chains[0].rows.get(20).unwrap().to_bytes();
        assert!(!raw.windows(16).any(|w| w == &row[..16]));
        let (k, _) = s.identities.sorted().next().unwrap();
        let key: Vec<u8> = k.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert!(!raw.windows(key.len()).any(|w| w == key));

        // A page in the middle changed: the start takes the state (it reads the first
        // and last pages only), and the message on that page, once asked for, is not
        // shown from a store that looks whole.
        let slot = spill.row_slot() as u64;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(&pages))
            .unwrap();
        file.write_all_at(&[raw[(5 * slot + 3) as usize] ^ 1], 5 * slot + 3)
            .unwrap();
        let (back, _) = restore().unwrap();
        assert!(back.message(MsgRef::own(1)).is_some());
        assert!(!back.damaged());
        assert!(back.message(MsgRef::own(11)).is_none());
        assert!(back.damaged());
        assert!(back.save(&mut Vec::new()).is_err());
        // A look over the pages taken from the saved state finds it without a view.
        let (back, _) = restore().unwrap();
        let mut at = SavedCheck::default();
        let mut steps = 0;
        while back.check_saved_pages(&mut at, 3) {
            steps += 1;
            assert!(steps < 100);
        }
        assert!(back.damaged());
        file.write_all_at(&[raw[(5 * slot + 3) as usize]], 5 * slot + 3)
            .unwrap();
        // So it does a changed identity page (past the rows: 21 pages of them).
        let identities = 21 * slot;
        let at_byte = identities + 3 * 64 + 5;
        file.write_all_at(&[raw[at_byte as usize] ^ 1], at_byte)
            .unwrap();
        let (back, _) = restore().unwrap();
        assert!(!back.damaged());
        let mut at = SavedCheck::default();
        while back.check_saved_pages(&mut at, 3) {}
        assert!(back.damaged());
        file.write_all_at(&[raw[at_byte as usize]], at_byte)
            .unwrap();
        // And a whole one finds nothing.
        let (back, _) = restore().unwrap();
        let mut at = SavedCheck::default();
        while back.check_saved_pages(&mut at, 3) {}
        assert!(!back.damaged());

        // The first page changed, an earlier save's file in its place, or none: the
        // state is refused at the start, and built again from the log.
        file.write_all_at(&[raw[3] ^ 1], 3).unwrap();
        assert!(matches!(restore(), Err(SnapshotError::Malformed(_))));
        std::fs::copy(dir.join(&earlier_pages), dir.join(&pages)).unwrap();
        assert!(matches!(restore(), Err(SnapshotError::Malformed(_))));
        std::fs::remove_file(dir.join(&pages)).unwrap();
        assert!(matches!(restore(), Err(SnapshotError::Malformed(_))));
        // A pipe in its place is refused too, not waited on.
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join(&pages))
            .status()
            .unwrap();
        assert!(made.success());
        assert!(matches!(restore(), Err(SnapshotError::Malformed(_))));
        std::fs::remove_file(dir.join(&pages)).unwrap();

        // What an earlier save left is removed once a later one is in place.
        remove_other_pages(&dir, &[pages.as_str()]);
        assert!(!dir.join(&earlier_pages).exists());
    }

    #[test]
    fn rows_that_cannot_be_read_back_mark_the_store_damaged_and_it_is_not_saved() {
        use std::os::unix::fs::FileExt;
        let mut s = Store::spilling([1; 16], 0.0, None, Spill::tiny());
        s.apply(
            (1..=40)
                .map(|seq| msg(seq, "a@x/1", "b@x", Action::Allow))
                .collect(),
        );
        assert!(s.message(MsgRef::own(1)).is_some());
        assert!(!s.damaged());
        assert!(!s.involves(MsgRef::own(40), &["z@x".to_string()]));
        saved_and_back(&s, [1; 16], 0.0, Spill::tiny()).unwrap();
        // Someone who can write the archive directory changes the scratch file.
        let file = s.chains[0]
            .rows
            .scratch_file()
            .expect("rows were written out");
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, 3).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], 3).unwrap();
        // A message on another page takes the first page's place in memory.
        assert!(s.message(MsgRef::own(40)).is_some());
        assert!(!s.damaged());
        // The first rows are gone from what the store can show, and it says so.
        assert!(s.message(MsgRef::own(1)).is_none());
        assert!(s.damaged());
        assert!(s.save(&mut Vec::new()).is_err());
        // Nobody is cleared of being a party to a message from what is left: the check
        // that officers do not review their own messages fails closed.
        let stranger = vec!["z@x".to_string()];
        assert!(s.involves(MsgRef::own(1), &stranger));
        assert!(s.involves(MsgRef::own(40), &stranger));
        // A shred that rewrites the rows keeps the mark: the rows it could not read
        // are not silently dropped from a store that looks whole.
        s.apply(vec![entry(
            41,
            NewRecord::Event(EventRecord::Shred {
                segment: 99,
                reason: "retention expired".into(),
                authority: "test".into(),
                actor: "test".into(),
            }),
        )]);
        assert!(s.damaged());
    }

    #[test]
    fn a_late_copy_joins_its_message_through_identities_on_disk_and_a_changed_run_is_not_trusted() {
        use std::os::unix::fs::FileExt;
        let mut s = Store::spilling([1; 16], 0.0, None, Spill::tiny());
        s.apply(sent_copies(40, Action::Allow));
        // A replay of message 1 long after: its identity left memory long ago.
        s.apply(vec![copy(
            41,
            "id-1",
            None,
            Leg::ServerToClient,
            Action::Flag,
        )]);
        assert_eq!(s.group_of(MsgRef::own(41)), MsgRef::own(1));
        assert_eq!(s.copies(MsgRef::own(1)).len(), 2);
        assert!(!s.damaged());
        let mut saved = Vec::new();
        let pages = s.save(&mut saved).unwrap();
        // Someone who can write the archive directory changes the identities on disk.
        for f in s.identities.files() {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 5).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], 5).unwrap();
        }
        // A late copy of a message whose identity is on a changed page is not taken
        // for a new message in a store that looks whole: the store says it is damaged,
        // is not saved, and is built again.
        let late: Vec<ChainEntry> = (1..=40)
            .map(|i| {
                copy(
                    41 + i,
                    &format!("id-{i}"),
                    None,
                    Leg::ServerToClient,
                    Action::Allow,
                )
            })
            .collect();
        s.apply(late);
        assert!(s.damaged());
        assert!(s.save(&mut Vec::new()).is_err());
        // What was saved before reads back whole, and joins the late copy.
        let (mut back, _) = Store::restore(&saved[..], [1; 16], 0.0, None, Spill::tiny()).unwrap();
        let _ = std::fs::remove_file(s.spill.dir().join(pages));
        back.apply(vec![copy(
            42,
            "id-2",
            None,
            Leg::ServerToClient,
            Action::Allow,
        )]);
        assert_eq!(back.group_of(MsgRef::own(42)), MsgRef::own(2));
        assert!(!back.damaged());
    }

    /// The view a walk of a conversation's whole list gives: every message of it,
    /// sorted by time, and the window around the hit.
    fn walked_around(s: &Store, r: MsgRef, before: usize, after: usize) -> Vec<MsgRef> {
        let hit = s.group_of(r);
        let Some(w) = s.row(hit) else {
            return Vec::new();
        };
        let conversation = s.conversation_of(&w);
        let key = conversation_hash(&s.keys, &conversation);
        let mut all = Vec::new();
        let mut at = s.conversations.get(&key).map_or(0, |c| c.head);
        while at != 0 {
            let m = unpack(at);
            let Some(x) = s.row(m) else { break };
            if s.conversation_of(&x) == conversation {
                all.push((x.time, m));
            }
            at = x.link;
        }
        all.sort_unstable();
        let Some(p) = all.iter().position(|(_, m)| *m == hit) else {
            return Vec::new();
        };
        all[p.saturating_sub(before)..(p + after + 1).min(all.len())]
            .iter()
            .map(|(_, m)| *m)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Messages of two conversations on two chains, their times out of order, some
        /// with a second copy on the other chain: the view that reads only the blocks
        /// it needs (of two messages here) shows what a walk of the whole list shows,
        /// for every copy and window, after a save and read back, after a shred rebuilt
        /// the lists, with messages applied after it, and read back again.
        #[test]
        fn a_conversation_view_reads_few_blocks_and_shows_what_a_whole_walk_shows(
            msgs in prop::collection::vec((0i64..40, 0usize..2, 0u8..2, 1u64..3, 0u8..4), 1..70),
            later in prop::collection::vec((0i64..40, 0usize..2, 0u8..2), 0..10),
            before in 0usize..5,
            after in 0usize..5,
        ) {
            let mut s = Store::spilling([1; 16], 0.0, None, Spill::tiny());
            s.chain_of(Some("n2"));
            let mut seqs = [0u64; 2];
            let put = |s: &mut Store, seqs: &mut [u64; 2], id: &str, t: i64, node: usize, conv: u8, seg: u64| {
                seqs[node] += 1;
                let (from, to) = if conv == 0 { ("a@x/1", "b@x") } else { ("c@x/1", "d@x") };
                let mut e = msg(seqs[node], from, to, Action::Allow);
                e.segment = seg;
                if let Some(Record { content: NewRecord::Message(m), time, .. }) = &mut e.record {
                    m.capture.identity = id.to_string();
                    *time = Timestamp(t);
                }
                s.apply_chain(ChainIdx::try_from(node).unwrap_or(0), vec![e]);
            };
            for (i, (t, node, conv, seg, copy)) in msgs.iter().enumerate() {
                put(&mut s, &mut seqs, &format!("m{i}"), *t, *node, *conv, *seg);
                if *copy == 0 {
                    // The same message's copy on the other node's chain, a moment later.
                    put(&mut s, &mut seqs, &format!("m{i}"), *t + 1, 1 - *node, *conv, 1);
                }
            }
            let check = |s: &Store, seqs: [u64; 2]| -> Result<(), TestCaseError> {
                for (chain, last) in seqs.iter().enumerate() {
                    for seq in 1..=*last {
                        let r = MsgRef { chain: ChainIdx::try_from(chain).unwrap_or(0), seq };
                        let shown: Vec<MsgRef> = s
                            .conversation_around(r, before, after)
                            .iter()
                            .map(MessageMeta::key)
                            .collect();
                        prop_assert_eq!(shown, walked_around(s, r, before, after), "{:?}", r);
                    }
                }
                Ok(())
            };
            check(&s, seqs)?;
            let (back, _) = saved_and_back(&s, [1; 16], 0.0, Spill::tiny()).unwrap();
            check(&back, seqs)?;
            seqs[0] += 1;
            s.apply(vec![entry(seqs[0], NewRecord::Event(EventRecord::Shred {
                segment: 1,
                reason: "test".into(),
                authority: "test".into(),
                actor: "test".into(),
            }))]);
            check(&s, seqs)?;
            for (i, (t, node, conv)) in later.iter().enumerate() {
                put(&mut s, &mut seqs, &format!("later{i}"), *t, *node, *conv, 2);
            }
            check(&s, seqs)?;
            let (back, _) = saved_and_back(&s, [1; 16], 0.0, Spill::tiny()).unwrap();
            check(&back, seqs)?;
        }

        /// One node's messages in time order, no two at the same time: a view of any of
        /// them reads at most the blocks next to its own, however long the conversation.
        /// (Messages at the same time as the window's first or last must all be read: any
        /// of them may belong in it.)
        #[test]
        fn a_view_of_a_conversation_in_time_order_reads_only_the_blocks_beside_its_message(
            len in 1u64..200,
            gaps in prop::collection::vec(1i64..3, 200),
            before in 0usize..4,
            after in 0usize..4,
        ) {
            let mut s = Store::spilling([1; 16], 0.0, None, Spill::tiny());
            let mut t = 0;
            for seq in 1..=len {
                t += gaps.get(seq as usize).copied().unwrap_or(1);
                let mut e = msg(seq, "a@x/1", "b@x", Action::Allow);
                if let Some(Record { time, .. }) = &mut e.record {
                    *time = Timestamp(t);
                }
                s.apply(vec![e]);
            }
            for seq in 1..=len {
                let (shown, read) = s.around_reading(MsgRef::own(seq), before, after);
                prop_assert_eq!(
                    shown.iter().map(MessageMeta::key).collect::<Vec<_>>(),
                    walked_around(&s, MsgRef::own(seq), before, after)
                );
                // Blocks of two: those the window spans, and one more on each side.
                prop_assert!(
                    read <= (before + after) / 2 + 3,
                    "read {} blocks for seq {} of {}", read, seq, len
                );
            }
        }
    }

    #[test]
    fn the_queue_counts_and_pages_what_its_filters_select_however_rare() {
        let mut s = Store::new([1; 16], 0.0);
        for seq in 1..=40u64 {
            let mut e = msg(seq, "a@x/1", "b@x", Action::Flag);
            if let Some(Record {
                content: NewRecord::Message(m),
                ..
            }) = &mut e.record
            {
                m.capture.identity = format!("q{seq}");
                m.outcome.rules = vec![if seq % 7 == 0 { "rare" } else { "common" }.into()];
            }
            s.apply(vec![e]);
        }
        for (rule, skip) in [
            ("rare", 0),
            ("rare", 3),
            ("rare", 25),
            ("common", 0),
            ("common", 30),
            ("", 35),
        ] {
            let q = QueueQuery {
                status: "open",
                kind: "",
                rule,
                severity: "",
                skip,
                take: 4,
            };
            let page = s.queue_page(&q);
            let selected: Vec<MsgRef> = s
                .reviews_newest_first()
                .filter(|i| rule.is_empty() || i.verdict.rules.iter().any(|r| r == rule))
                .map(|i| i.seq)
                .collect();
            assert_eq!(page.total, selected.len(), "{rule} {skip}");
            let rows: Vec<MsgRef> = page.rows.iter().map(|r| r.item.seq).collect();
            let want: Vec<MsgRef> = selected.iter().skip(skip).take(4).copied().collect();
            assert_eq!(rows, want, "{rule} {skip}");
        }
        assert_eq!(s.open_items().by_rule.get("rare"), Some(&(5, 0)));
    }

    #[test]
    fn conversations_whose_hashes_collide_still_show_only_their_own_messages() {
        let mut s = Store::new([1; 16], 0.0);
        s.apply(vec![
            msg(1, "a@x/1", "b@x", Action::Allow),
            msg(2, "c@x/1", "d@x", Action::Allow),
            msg(3, "b@x/1", "a@x", Action::Allow),
        ]);
        // What a collision would make: c–d's message in the middle of a–b's list.
        let ab = conversation_hash(&s.keys, "chat a@x b@x");
        assert_eq!(
            s.conversations.get(&ab).map(|c| c.head),
            Some(pack(MsgRef::own(3)))
        );
        assert!(s.chains[0].update(3, |r| r.link = pack(MsgRef::own(2))));
        assert!(s.chains[0].update(2, |r| r.link = pack(MsgRef::own(1))));
        if let Some(c) = s.conversations.get_mut(&ab) {
            c.len = 3;
        }
        let seqs = |r| -> Vec<u64> {
            s.conversation_around(MsgRef::own(r), 10, 10)
                .iter()
                .map(|m| m.seq)
                .collect()
        };
        assert_eq!(seqs(1), vec![1, 3]);
        assert_eq!(seqs(3), vec![1, 3]);
    }

    fn shred(seq: u64, segment: u64) -> ChainEntry {
        let mut e = entry(
            seq,
            NewRecord::Event(EventRecord::Shred {
                segment,
                reason: "retention".into(),
                authority: "policy".into(),
                actor: "admin".into(),
            }),
        );
        e.segment = 9;
        e
    }

    fn with_severity(mut e: ChainEntry, action: Action, severity: &str) -> ChainEntry {
        if let Some(Record {
            content: NewRecord::Message(m),
            ..
        }) = &mut e.record
        {
            m.outcome.action = action;
            m.outcome.severity = Some(severity.into());
        }
        e
    }

    #[test]
    fn a_shred_elsewhere_keeps_every_copy_of_a_message_first_read_on_another_node() {
        let mut s = Store::for_node([4; 16], 0.0, Some("n1".into()));
        let n2 = s.chain_of(Some("n2"));
        // The other node's copy is read first (allowed there), then this node's (blocked).
        s.apply_chain(
            n2,
            vec![copy(1, "m1", None, Leg::ServerToClient, Action::Allow)],
        );
        s.apply(vec![copy(
            1,
            "m1",
            None,
            Leg::ClientToServer,
            Action::Block,
        )]);
        let head = MsgRef { chain: n2, seq: 1 };
        assert_eq!(s.verdict_of(head).action, Action::Block);
        // An unrelated segment is shredded: everything is relinked.
        let mut other = msg(2, "c@x/1", "d@x", Action::Allow);
        other.segment = 2;
        s.apply(vec![other, shred(3, 2)]);
        assert_eq!(s.copies(head).len(), 2);
        assert_eq!(s.copies(head)[0].key(), head, "the first copy first");
        assert_eq!(s.verdict_of(head).action, Action::Block);
        assert_eq!(s.review(head).unwrap().verdict.action, Action::Block);
        assert_eq!(s.volume_by_day(0, 1), vec![[0, 1]]);
    }

    #[test]
    fn a_messages_severity_is_the_highest_of_its_copies_in_any_reading_order() {
        let mut s = Store::for_node([4; 16], 0.0, Some("n1".into()));
        let n2 = s.chain_of(Some("n2"));
        s.apply_chain(
            n2,
            vec![with_severity(
                copy(1, "m1", None, Leg::ServerToClient, Action::Allow),
                Action::Allow,
                "critical",
            )],
        );
        s.apply(vec![with_severity(
            copy(1, "m1", None, Leg::ClientToServer, Action::Flag),
            Action::Flag,
            "low",
        )]);
        let head = MsgRef { chain: n2, seq: 1 };
        assert_eq!(s.verdict_of(head).severity.as_deref(), Some("critical"));
        assert_eq!(
            s.review(head).unwrap().verdict.severity.as_deref(),
            Some("critical")
        );
        // Read the other way round: the same.
        let mut t = Store::for_node([4; 16], 0.0, Some("n1".into()));
        let n2 = t.chain_of(Some("n2"));
        t.apply(vec![with_severity(
            copy(1, "m1", None, Leg::ClientToServer, Action::Flag),
            Action::Flag,
            "low",
        )]);
        t.apply_chain(
            n2,
            vec![with_severity(
                copy(1, "m1", None, Leg::ServerToClient, Action::Allow),
                Action::Allow,
                "critical",
            )],
        );
        assert_eq!(
            t.review(MsgRef::own(1))
                .unwrap()
                .verdict
                .severity
                .as_deref(),
            Some("critical")
        );
    }

    #[test]
    fn equal_extras_are_kept_once_and_a_shred_takes_its_rows_strings_along() {
        let mut s = Store::new([4; 16], 0.0);
        let entries: Vec<ChainEntry> = (1..=1000)
            .map(|seq| {
                let mut e = copy(
                    seq,
                    &format!("m{seq}"),
                    None,
                    Leg::ServerToClient,
                    Action::Allow,
                );
                e.segment = 2;
                e
            })
            .collect();
        s.apply(entries);
        assert!(
            s.extras.len() <= 2,
            "{} extras for one distinct value",
            s.extras.len()
        );
        let mut kept = msg(1001, "k@x/1", "l@x", Action::Allow);
        kept.segment = 3;
        if let Some(Record {
            content: NewRecord::Message(m),
            ..
        }) = &mut kept.record
        {
            m.capture.account = "k@x/1".into();
        }
        s.apply(vec![kept, shred(1002, 2)]);
        assert_eq!(s.extras.len(), 1, "extras of shredded rows kept");
        assert_eq!(
            s.jids.names.len(),
            3,
            "only k@x/1 and l@x are left besides the empty entry"
        );
        let m = s.message(MsgRef::own(1001)).unwrap();
        assert_eq!(
            (m.from.as_str(), m.to.as_str(), m.retention_class.as_str()),
            ("k@x/1", "l@x", "default")
        );
        assert_eq!(s.class_counts().get("default"), Some(&1));
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
    fn the_queue_page_and_the_dashboards_counts_come_from_the_same_items() {
        let mut s = Store::new([1; 16], 1.0);
        s.apply(vec![
            msg(1, "a@x/1", "b@x", Action::Flag),
            with_severity(msg(2, "c@x/1", "d@x", Action::Block), Action::Block, "high"),
            msg(3, "e@x/1", "f@x", Action::Allow),
            audit(
                4,
                "rita",
                &ReviewChange::Status {
                    seqs: vec![1],
                    status: ReviewStatus::Reviewed,
                    comment: "fine".into(),
                    node: None,
                },
            ),
        ]);
        let seqs = |status: &str, kind: &str, rule: &str, severity: &str, skip, take| {
            let p = s.queue_page(&QueueQuery {
                status,
                kind,
                rule,
                severity,
                skip,
                take,
            });
            let seqs: Vec<u64> = p.rows.iter().map(|r| r.item.seq.seq).collect();
            (seqs, p.total)
        };
        // Seq 3 is in the queue only as a sample (rate 1.0).
        assert_eq!(seqs("all", "", "", "", 0, 10), (vec![3, 2, 1], 3));
        assert_eq!(seqs("open", "", "", "", 0, 10), (vec![3, 2], 2));
        assert_eq!(seqs("reviewed", "", "", "", 0, 10), (vec![1], 1));
        assert_eq!(seqs("all", "flagged", "", "", 0, 10), (vec![2, 1], 2));
        assert_eq!(seqs("all", "sample", "", "", 0, 10), (vec![3], 1));
        assert_eq!(seqs("all", "", "r1", "", 0, 10), (vec![2, 1], 2));
        assert_eq!(seqs("all", "", "", "high", 0, 10), (vec![2], 1));
        assert_eq!(seqs("all", "", "r9", "", 0, 10), (vec![], 0));
        // Pages: the total counts every page.
        assert_eq!(seqs("all", "", "", "", 1, 1), (vec![2], 3));
        assert_eq!(seqs("all", "", "", "", 3, 1), (vec![], 3));
        let p = s.queue_page(&QueueQuery {
            status: "all",
            take: 1,
            ..QueueQuery::default()
        });
        assert_eq!(p.rows[0].name, "3");
        assert_eq!(p.rows[0].message.from, "e@x/1");
        // The dashboard's count of the same queue: the reviewed item is not open.
        let open = s.open_items();
        assert_eq!((open.open, open.escalated, open.sampled), (2, 0, 1));
        assert_eq!(
            open.by_rule.into_iter().collect::<Vec<_>>(),
            [("r1".to_string(), (1, 0))]
        );
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
        assert_eq!(s.chain_count(), 1, "no chain made up from a record");
        assert_eq!(s.review(MsgRef::own(1)).unwrap().status, ReviewStatus::Open);
    }

    /// A message's two copies straddle a segment boundary; retention shreds the segment
    /// of the first copy. A store saved before the shred and read back, then given the
    /// shred, queues the surviving flagged copy as a read after the shred does (which
    /// never sees the first copy), instead of keeping the item under the shredded copy
    /// out of the queue.
    #[test]
    fn a_store_read_back_across_a_shred_shows_the_queue_a_full_read_shows() {
        let seg = |mut e: ChainEntry, s: u64| {
            e.segment = s;
            e
        };
        let first = seg(copy(1, "idX", None, Leg::ClientToServer, Action::Flag), 1);
        let second = seg(copy(2, "idX", None, Leg::ServerToClient, Action::Flag), 2);
        let shred = seg(
            entry(
                3,
                NewRecord::Event(EventRecord::Shred {
                    segment: 1,
                    reason: "expired".into(),
                    authority: "policy".into(),
                    actor: "custos:retention".into(),
                }),
            ),
            9,
        );
        // Saved before the shred, read back after it.
        let mut before = Store::new([5; 16], 0.0);
        before.apply(vec![first.clone(), second.clone()]);
        let (mut back, _) =
            saved_and_back(&before, [5; 16], 0.0, Spill::new(None, CACHE_PAGES)).unwrap();
        back.apply(vec![shred.clone()]);
        // A full read after the shred: segment 1's key is gone, its record does not open.
        let mut gone = first;
        gone.record = None;
        let mut full = Store::new([5; 16], 0.0);
        full.apply(vec![gone, second, shred]);
        let queue =
            |s: &Store| -> Vec<MsgRef> { s.reviews_newest_first().map(|i| i.seq).collect() };
        assert_eq!(
            queue(&full),
            vec![MsgRef::own(2)],
            "the surviving flagged copy is queued"
        );
        assert_eq!(
            queue(&back),
            queue(&full),
            "the restored queue is the full read's"
        );
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
