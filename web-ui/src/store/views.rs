//! What each page asks of the store, answered here so a handler only parses its request,
//! asks, and renders: the queue's filtered page, the dashboard's open items, the
//! messages of a conversation around one, a page of the audit trail, where a search
//! hit opens, the retention overview.

use super::*;

/// Which review items the queue shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueQuery<'a> {
    /// `open` (open and escalated), `all`, or one status by name.
    pub status: &'a str,
    /// `sample`, `flagged`, or anything else for both.
    pub kind: &'a str,
    /// A rule the item's copies matched; empty for any.
    pub rule: &'a str,
    /// The item's severity; empty for any.
    pub severity: &'a str,
    /// Items to skip (earlier pages), and at most how many to return.
    pub skip: usize,
    pub take: usize,
}

/// One queue item with what its row shows.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub item: ReviewItem,
    /// Its first copy.
    pub message: MessageMeta,
    /// How links and forms name it ([`Store::ref_name`]), and its anchor in the
    /// conversation page.
    pub name: String,
    pub anchor: String,
    /// The node that recorded it, when not this one.
    pub node: Option<String>,
}

/// A page of the queue.
#[derive(Debug, Clone, Default)]
pub struct QueuePage {
    pub rows: Vec<QueueRow>,
    /// Items matching the query, on every page.
    pub total: usize,
}

impl ReviewItem {
    /// Whether the item is one `q` asks for (its paging aside).
    fn selected(&self, q: &QueueQuery<'_>) -> bool {
        q.selects(
            self.status,
            self.sampled,
            self.verdict.severity.as_deref(),
            &self.verdict.rules,
        )
    }
}

impl QueueQuery<'_> {
    /// Whether an item of this status, kind, severity and rules is in the query.
    fn selects(
        &self,
        status: ReviewStatus,
        sampled: bool,
        severity: Option<&str>,
        rules: &[String],
    ) -> bool {
        let status = match self.status {
            "all" => true,
            "open" => status.is_open(),
            s => ReviewStatus::parse(s) == Some(status),
        };
        let kind = match self.kind {
            "sample" => sampled,
            "flagged" => !sampled,
            _ => true,
        };
        status
            && kind
            && (self.rule.is_empty() || rules.iter().any(|r| r == self.rule))
            && (self.severity.is_empty() || severity == Some(self.severity))
    }
}

impl Store {
    /// The queue, newest first, filtered by each item's verdict as kept up to date
    /// while reading; only the returned rows' messages are looked up.
    pub fn queue_page(&self, q: &QueueQuery<'_>) -> QueuePage {
        let mut page = QueuePage::default();
        // How many there are comes from the census; the items are walked only as far
        // as the page.
        let total: u64 = self
            .census
            .iter()
            .filter(|(f, _)| {
                f.filed && q.selects(f.status, f.sampled, f.severity.as_deref(), &f.rules)
            })
            .map(|(_, n)| *n)
            .sum();
        // Past the page, or past the last item the query selects: nothing more to show.
        let end = q
            .skip
            .saturating_add(q.take)
            .min(usize::try_from(total).unwrap_or(usize::MAX));
        let selected = self.reviews_newest_first().filter(|i| i.selected(q));
        for (seen, item) in selected.enumerate() {
            if seen >= end {
                break;
            }
            if seen >= q.skip && page.rows.len() < q.take {
                if let Some(message) = self.message(item.seq) {
                    page.rows.push(QueueRow {
                        item: item.clone(),
                        message,
                        name: self.ref_name(item.seq),
                        anchor: self.anchor(item.seq),
                        node: (item.seq.chain != 0)
                            .then(|| self.node_of(item.seq.chain).unwrap_or(UNNAMED).to_string()),
                    });
                }
            }
        }
        page.total = usize::try_from(total).unwrap_or(usize::MAX);
        page
    }
}

/// The open review items (open and escalated) as the dashboard counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenItems {
    pub open: u64,
    pub escalated: u64,
    /// Open items in the queue by sampling, not policy.
    pub sampled: u64,
    /// Flagged open items by each rule their copies matched: (open, escalated).
    pub by_rule: BTreeMap<String, (u64, u64)>,
}

impl Store {
    /// Counts the open review items.
    pub fn open_items(&self) -> OpenItems {
        let mut o = OpenItems::default();
        // From the census: items of one facet count alike.
        for (f, &n) in self.census.iter().filter(|(f, _)| f.status.is_open()) {
            let escalated = if f.status == ReviewStatus::Escalated {
                n
            } else {
                0
            };
            o.open += n;
            o.escalated += escalated;
            if f.sampled {
                o.sampled += n;
                continue;
            }
            for r in &f.rules {
                match o.by_rule.get_mut(r) {
                    Some(e) => {
                        e.0 += n;
                        e.1 += escalated;
                    }
                    None => {
                        o.by_rule.insert(r.clone(), (n, escalated));
                    }
                }
            }
        }
        o
    }
}

/// Who spoke a group-chat message: the nickname the room showed, and the person behind
/// it — the sender's own proven account when the message left through Custos, else what
/// the room revealed.
#[derive(Debug, Clone)]
pub struct Speaker {
    pub nick: Option<String>,
    pub real: Option<String>,
}

impl Speaker {
    fn of(copies: &[MessageMeta]) -> Option<Speaker> {
        copies.first()?.room()?;
        let nick = copies
            .iter()
            .filter(|c| c.direction == Direction::Inbound && c.room().is_some())
            .find_map(|c| c.from.split_once('/').map(|(_, n)| n.to_owned()));
        let real = copies
            .iter()
            .find(|c| c.direction == Direction::Outbound && c.via == Via::Direct)
            .map(|c| c.from.clone())
            .or_else(|| copies.iter().find_map(|c| c.occupant.clone()));
        Some(Speaker { nick, real })
    }
}

/// What the conversation page shows of one logical message besides its first record
/// (which the page reads from the archive, at `segment` and `offset`).
#[derive(Debug, Clone)]
pub struct Shown {
    /// Its first copy.
    pub key: MsgRef,
    pub segment: u64,
    pub offset: u64,
    pub anchor: String,
    /// How links name the record (`/conversation/NAME`, `/file/NAME/N`).
    pub name: String,
    /// Another node's record: that node's name.
    pub node: Option<String>,
    pub severity: Option<String>,
    pub e2ee: Option<String>,
    pub verdict: GroupVerdict,
    pub copies: Vec<CopyRow>,
    /// The sender's id and what a correction changes: read from the record by the
    /// page, not kept in memory.
    pub msg_id: Option<String>,
    pub edit: Option<(custos_archive::EditKind, String)>,
    /// Group chat: who spoke.
    pub speaker: Option<Speaker>,
}

/// One recorded copy of a shown message.
#[derive(Debug, Clone)]
pub struct CopyRow {
    pub key: MsgRef,
    /// As shown and linked (`node:seq` for another node's).
    pub name: String,
    pub leg: &'static str,
    pub via: &'static str,
    pub account: String,
    pub action: Action,
    pub would_action: Option<Action>,
    pub rules: Vec<String>,
}

impl Store {
    /// The logical messages of `r`'s conversation around it (at most `before` earlier
    /// and `after` later), in time order, with their copies and verdicts.
    pub fn conversation_view(&self, r: MsgRef, before: usize, after: usize) -> Vec<Shown> {
        self.conversation_around(r, before, after)
            .iter()
            .map(|m| {
                let s = m.key();
                let all = self.copies(s);
                let copies = all
                    .iter()
                    .map(|c| CopyRow {
                        key: c.key(),
                        name: self.ref_name(c.key()),
                        leg: c.leg.as_str(),
                        via: c.via.as_str(),
                        account: c.account.clone(),
                        action: c.action,
                        would_action: c.would_action,
                        rules: c.rules.clone(),
                    })
                    .collect();
                Shown {
                    key: s,
                    segment: m.segment,
                    offset: m.offset,
                    anchor: self.anchor(s),
                    name: self.ref_name(s),
                    node: (s.chain != 0)
                        .then(|| self.node_of(s.chain).unwrap_or(UNNAMED).to_string()),
                    severity: m.severity.clone(),
                    e2ee: m.e2ee.clone(),
                    verdict: self.verdict_of(s),
                    copies,
                    msg_id: None,
                    edit: None,
                    speaker: Speaker::of(&all),
                }
            })
            .collect()
    }
}

impl Store {
    /// Page `page` (newest first, `per_page` a page) of this node's audit records, and
    /// whether there is a next page: where each record is, for the page to read.
    pub fn audit_page(&self, page: usize, per_page: usize) -> (Vec<AuditRef>, bool) {
        let all = self.audit();
        let refs = all
            .iter()
            .rev()
            .skip(page.saturating_mul(per_page))
            .take(per_page)
            .copied()
            .collect();
        (
            refs,
            all.len() > page.saturating_add(1).saturating_mul(per_page),
        )
    }
}

impl Store {
    /// Where a search hit (record `seq` of the chain node `node` writes; this node is
    /// `own`) opens: its conversation, once that chain is followed here.
    pub fn conversation_link(
        &self,
        node: Option<&str>,
        seq: u64,
        own: Option<&str>,
    ) -> Option<String> {
        let name = if node == own {
            seq.to_string()
        } else {
            format!("{}:{seq}", node.unwrap_or(UNNAMED))
        };
        let r = self.parse_ref(&name)?;
        // This node's records are read at once; another node's once followed.
        (r.chain == 0 || self.contains(r))
            .then(|| format!("/conversation/{name}#{}", self.anchor(r)))
    }
}

/// What the dashboard's retention section counts.
#[derive(Debug, Clone, Default)]
pub struct RetentionOverview {
    /// This node's copies by retention class.
    pub per_class: BTreeMap<String, u64>,
    /// When the next sealed segment is due for shredding under the policy.
    pub next_expiry: Option<Timestamp>,
    pub shredded: usize,
    /// Filled by the caller, who knows where the segment files are.
    pub shredded_bytes: u64,
    pub active_holds: usize,
}

impl Store {
    /// The retention overview under `policy` (none: everything is kept).
    pub fn retention_overview(
        &self,
        policy: Option<&retention::RetentionPolicy>,
    ) -> RetentionOverview {
        let newest = self.segments().keys().next_back().copied();
        RetentionOverview {
            per_class: self.class_counts(),
            // The newest segment is the one being written: not due while it grows.
            next_expiry: policy.and_then(|p| {
                self.segments()
                    .iter()
                    .filter(|(id, _)| Some(**id) != newest)
                    .filter_map(|(_, f)| retention::segment_due(f, p).ok().map(|(_, _, due)| due))
                    .min()
            }),
            shredded: self.shredded().len(),
            shredded_bytes: 0,
            active_holds: self.holds().active().count(),
        }
    }
}
