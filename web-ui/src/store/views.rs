//! What each page asks of the store, answered here so a handler only parses its request,
//! asks, and renders: the queue's filtered page, the dashboard's open items.

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
        let status = match q.status {
            "all" => true,
            "open" => self.status.is_open(),
            s => ReviewStatus::parse(s) == Some(self.status),
        };
        let kind = match q.kind {
            "sample" => self.sampled,
            "flagged" => !self.sampled,
            _ => true,
        };
        status
            && kind
            && (q.rule.is_empty() || self.verdict.rules.iter().any(|r| r == q.rule))
            && (q.severity.is_empty() || self.verdict.severity.as_deref() == Some(q.severity))
    }
}

impl Store {
    /// The queue, newest first, filtered by each item's verdict as kept up to date
    /// while reading; only the returned rows' messages are looked up.
    pub fn queue_page(&self, q: &QueueQuery<'_>) -> QueuePage {
        let mut page = QueuePage::default();
        for item in self.reviews_newest_first().filter(|i| i.selected(q)) {
            if page.total >= q.skip && page.rows.len() < q.take {
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
            page.total += 1;
        }
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
        for i in self.reviews().filter(|i| i.status.is_open()) {
            let escalated = u64::from(i.status == ReviewStatus::Escalated);
            o.open += 1;
            o.escalated += escalated;
            if i.sampled {
                o.sampled += 1;
                continue;
            }
            for r in &i.verdict.rules {
                match o.by_rule.get_mut(r) {
                    Some(e) => {
                        e.0 += 1;
                        e.1 += escalated;
                    }
                    None => {
                        o.by_rule.insert(r.clone(), (1, escalated));
                    }
                }
            }
        }
        o
    }
}
