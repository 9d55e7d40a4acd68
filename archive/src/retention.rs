//! Retention classes, legal holds and the expiry decision, as pure functions of the
//! records: no I/O here, so the rule "nothing under a hold or inside its retention is
//! ever shredded" is checked directly by property tests (`docs/retention.md`).
//!
//! ```text
//! [retention] classes ─┐
//! hold records (chain) ─┼─▶ SegmentFacts::gather(records of one sealed segment)
//!                       └─▶ decide(facts, now) ─▶ Shred { class, span, newest, due } | Keep(why)
//! ```
//!
//! Every record has a class: a message carries the one fixed when it was written
//! (`Capture::retention_class`, empty = `default`); governance records (shred, recovery,
//! hold and erasure acts) are `permanent`, because the evidence that a deletion was
//! allowed must outlive it; session events and reviewer audit take the class of the
//! segment they are written into. The writer starts a new segment whenever the class
//! changes, so a segment's records share one class and expire together.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::export::filter::Filter;
use crate::query::{self, Query};
use crate::record::{EventRecord, NewRecord, Record};
use crate::time::Timestamp;

/// The class of records with no class of their own.
pub const DEFAULT_CLASS: &str = "default";
/// The class of governance records, never expired.
pub const PERMANENT_CLASS: &str = "permanent";

/// How long a class keeps a record, counted from the record's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Span {
    /// Seconds (`"45s"`, `"30m"`, `"12h"`, `"90d"`, `"2w"`, or a bare number).
    Secs(u64),
    /// Calendar years (`"6y"`): the same date that many years later (29 February
    /// becomes 1 March), never a day less.
    Years(u32),
    Forever,
}

impl Span {
    /// Parses a duration as the configuration writes it.
    pub fn parse(s: &str) -> Result<Span, String> {
        let t = s.trim();
        if t == "forever" {
            return Ok(Span::Forever);
        }
        let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. \"90d\", \"6y\", \"3600\")"))?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "y" => {
                return u32::try_from(n)
                    .ok()
                    .filter(|&y| y <= 1000)
                    .map(Span::Years)
                    .ok_or_else(|| format!("{s:?}: more than 1000 years"))
            }
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (s, m, h, d, w, y, or \"forever\")"
                ))
            }
        };
        n.checked_mul(mult)
            .filter(|&secs| secs <= 1000 * 366 * 86_400)
            .map(Span::Secs)
            .ok_or_else(|| format!("{s:?}: more than 1000 years"))
    }

    /// When a record written at `t` may go; `None` for never.
    pub fn due(self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Span::Secs(s) => Some(Timestamp(
                t.0.saturating_add((s as i64).saturating_mul(1000)),
            )),
            Span::Years(y) => Some(t.plus_years(y)),
            Span::Forever => None,
        }
    }

    /// An upper bound in seconds: a year counts as 366 days, so a span in days is
    /// "at least as long" as one in years only when it is for every record.
    fn upper_secs(self) -> u64 {
        match self {
            Span::Secs(s) => s,
            Span::Years(y) => u64::from(y) * 366 * 86_400,
            Span::Forever => u64::MAX,
        }
    }

    /// A lower bound in seconds (a year counts as 365 days).
    fn lower_secs(self) -> u64 {
        match self {
            Span::Secs(s) => s,
            Span::Years(y) => u64::from(y) * 365 * 86_400,
            Span::Forever => u64::MAX,
        }
    }

    /// Whether `self` keeps every record at least as long as `other` does.
    pub fn at_least(self, other: Span) -> bool {
        match (self, other) {
            (Span::Years(a), Span::Years(b)) => a >= b,
            _ => self.lower_secs() >= other.upper_secs(),
        }
    }

    /// Of two spans, one that keeps every record at least as long as the other when
    /// there is one; otherwise the one whose longest reading is longer.
    fn longer(self, other: Span) -> Span {
        if self.at_least(other) {
            self
        } else if other.at_least(self) || other.upper_secs() > self.upper_secs() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Span::Forever => write!(f, "forever"),
            Span::Years(y) => write!(f, "{y}y"),
            Span::Secs(s) if s % 86_400 == 0 && s > 0 => write!(f, "{}d", s / 86_400),
            Span::Secs(s) if s % 3600 == 0 && s > 0 => write!(f, "{}h", s / 3600),
            Span::Secs(s) => write!(f, "{s}s"),
        }
    }
}

/// The configured classes: `[retention] default` and named ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    classes: BTreeMap<String, Span>,
    /// False for [`RetentionPolicy::keep_forever`] (no `[retention]` section).
    configured: bool,
}

impl RetentionPolicy {
    /// `default` keeps unclassed records; `classes` are the named ones. The name
    /// `permanent` is reserved (governance records, kept forever). No class may keep
    /// less than `default`: a rule could then shorten what the default requires, and a
    /// rule testing text could let a sender shorten it for their own messages. Set the
    /// default to the shortest retention and give longer classes by rule instead.
    pub fn new(default: Span, classes: BTreeMap<String, Span>) -> Result<RetentionPolicy, String> {
        let mut all = BTreeMap::new();
        for (name, span) in classes {
            if !span.at_least(default) {
                return Err(format!(
                    "class {name:?} ({span}) keeps less than the default ({default}); make the default the shortest retention and give longer ones by class"
                ));
            }
            if name == PERMANENT_CLASS || name == DEFAULT_CLASS {
                return Err(format!(
                    "class name {name:?} is reserved (set the default with `default = …`)"
                ));
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "class name {name:?}: use letters, digits, '-' and '_'"
                ));
            }
            all.insert(name, span);
        }
        all.insert(DEFAULT_CLASS.into(), default);
        all.insert(PERMANENT_CLASS.into(), Span::Forever);
        Ok(RetentionPolicy {
            classes: all,
            configured: true,
        })
    }

    /// Keep everything forever: what an archive without `[retention]` does.
    pub fn keep_forever() -> RetentionPolicy {
        RetentionPolicy {
            classes: [
                (DEFAULT_CLASS.to_string(), Span::Forever),
                (PERMANENT_CLASS.to_string(), Span::Forever),
            ]
            .into(),
            configured: false,
        }
    }

    /// Whether it came from a `[retention]` section.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    pub fn span(&self, class: &str) -> Option<Span> {
        self.classes.get(class).copied()
    }

    pub fn classes(&self) -> impl Iterator<Item = (&str, Span)> {
        self.classes.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The class to write for a record whose rules named `wanted` classes: the one that
    /// keeps longest among those configured; a name not configured counts as the
    /// longest configured class (never keep less than asked). `None` = default. Without
    /// a `[retention]` section the first name is kept as written, so configuring classes
    /// later applies them to what was already written.
    pub fn choose<'a>(&self, wanted: impl IntoIterator<Item = &'a str>) -> Option<String> {
        if !self.configured {
            return wanted
                .into_iter()
                .find(|n| *n != PERMANENT_CLASS && *n != DEFAULT_CLASS)
                .map(str::to_string);
        }
        let mut best: Option<(String, Span)> = None;
        for name in wanted {
            let (name, span) = match self.classes.get(name) {
                Some(&s) if name != PERMANENT_CLASS => (name.to_string(), s),
                _ => match self.longest_named() {
                    Some(x) => x,
                    None => continue,
                },
            };
            best = match best {
                Some((n, s)) if s.longer(span) == s => Some((n, s)),
                _ => Some((name, span)),
            };
        }
        best.map(|(n, _)| n).filter(|n| n != DEFAULT_CLASS)
    }

    fn longest_named(&self) -> Option<(String, Span)> {
        self.classes
            .iter()
            .filter(|(n, _)| n.as_str() != PERMANENT_CLASS)
            .fold(None, |acc: Option<(String, Span)>, (n, &s)| match acc {
                Some((an, a)) if a.longer(s) == a => Some((an, a)),
                _ => Some((n.clone(), s)),
            })
    }
}

/// The audit action of a record stating the retention classes in force.
pub const RETENTION_POLICY: &str = "retention.policy";

/// The classes as a `retention.policy` record states them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PolicyDetail {
    default: String,
    classes: BTreeMap<String, String>,
}

impl RetentionPolicy {
    /// The `detail` of a `retention.policy` record.
    pub fn record_detail(&self) -> String {
        let span = |c: &str| self.span(c).unwrap_or(Span::Forever).to_string();
        let d = PolicyDetail {
            default: span(DEFAULT_CLASS),
            classes: self
                .classes()
                .filter(|(n, _)| *n != DEFAULT_CLASS && *n != PERMANENT_CLASS)
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        };
        serde_json::to_string(&d).unwrap_or_default()
    }

    /// Reads a `retention.policy` record's detail.
    pub fn from_record_detail(detail: &str) -> Result<RetentionPolicy, String> {
        let d: PolicyDetail = serde_json::from_str(detail).map_err(|e| e.to_string())?;
        let classes = d
            .classes
            .iter()
            .map(|(n, s)| Ok((n.clone(), Span::parse(s)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        RetentionPolicy::new(Span::parse(&d.default)?, classes)
    }

    /// Per class, the longer of this policy's span and `other`'s (classes `other` lacks
    /// keep this policy's span).
    fn widen(&mut self, other: &RetentionPolicy) {
        for (name, span) in self.classes.iter_mut() {
            if let Some(o) = other.span(name) {
                *span = span.longer(o);
            }
        }
    }
}

/// The `retention.policy` records of the chain, in order: what retention was in force
/// when. A configuration change can shorten retention only for records written after
/// it: each record keeps the longest span any policy since its writing gave its class.
#[derive(Debug, Clone, Default)]
pub struct PolicyHistory {
    entries: Vec<(u64, RetentionPolicy)>,
    /// Policy records that could not be read: expiry stops while there are any.
    pub unreadable: Vec<u64>,
}

impl PolicyHistory {
    /// Feeds one record; records must come in seq order.
    pub fn observe(&mut self, rec: &Record) {
        if let NewRecord::Event(EventRecord::Audit { action, detail, .. }) = &rec.content {
            if action == RETENTION_POLICY {
                match RetentionPolicy::from_record_detail(detail) {
                    Ok(p) => self.entries.push((rec.seq.0, p)),
                    Err(_) => self.unreadable.push(rec.seq.0),
                }
            }
        }
    }

    /// The last policy recorded, if any.
    pub fn last(&self) -> Option<&RetentionPolicy> {
        self.entries.last().map(|(_, p)| p)
    }

    /// The longest span any recorded policy in force between `from_seq` and
    /// `until_seq` gave `class` (see [`PolicyHistory::effective`]); `None` when no
    /// recorded policy names the class.
    pub fn longest_for(&self, class: &str, from_seq: u64, until_seq: u64) -> Option<(Span, u64)> {
        let at_start = self
            .entries
            .iter()
            .rev()
            .find(|(seq, _)| *seq < from_seq)
            .or_else(|| self.entries.first());
        at_start
            .into_iter()
            .chain(
                self.entries
                    .iter()
                    .filter(|(seq, _)| *seq >= from_seq && *seq <= until_seq),
            )
            .filter_map(|(seq, p)| p.span(class).map(|s| (s, *seq)))
            .fold(None, |best: Option<(Span, u64)>, (s, seq)| match best {
                Some((b, bs)) if b.longer(s) == b => Some((b, bs)),
                _ => Some((s, seq)),
            })
    }

    /// `current`, widened by every recorded policy in force at some time between
    /// `from_seq` (the first record of a segment) and `until_seq`: the one in force at
    /// `from_seq` (the last recorded before it, or the first recorded when none is) and
    /// every one recorded after it.
    pub fn effective(
        &self,
        current: &RetentionPolicy,
        from_seq: u64,
        until_seq: u64,
    ) -> RetentionPolicy {
        let mut eff = current.clone();
        let at_start = self
            .entries
            .iter()
            .rev()
            .find(|(seq, _)| *seq < from_seq)
            .or_else(|| self.entries.first());
        for (_, p) in at_start.into_iter().chain(
            self.entries
                .iter()
                .filter(|(seq, _)| *seq >= from_seq && *seq <= until_seq),
        ) {
            eff.widen(p);
        }
        eff
    }
}

/// The class a record was written under, given the class of its segment so far
/// (`None` at the start of a segment). See the module documentation.
pub fn record_class(content: &NewRecord, segment_class: Option<&str>) -> String {
    match content {
        NewRecord::Message(m) => class_name(&m.capture.retention_class).to_string(),
        NewRecord::Event(e) if is_governance(e) => PERMANENT_CLASS.into(),
        NewRecord::Event(_) => match segment_class {
            Some(c) if c != PERMANENT_CLASS => c.to_string(),
            _ => DEFAULT_CLASS.into(),
        },
    }
}

/// The class a stored message names (empty means default).
pub fn class_name(stored: &str) -> &str {
    if stored.is_empty() {
        DEFAULT_CLASS
    } else {
        stored
    }
}

/// Shred, recovery, hold, erasure, retention and object-store acts: evidence kept
/// forever.
pub fn is_governance(e: &EventRecord) -> bool {
    match e {
        EventRecord::Shred { .. } | EventRecord::Recovery { .. } => true,
        EventRecord::Audit { action, .. } => {
            action.starts_with("hold.")
                || action.starts_with("erasure.")
                || action.starts_with("retention.")
                || action.starts_with("object.")
        }
        EventRecord::SessionStart { .. } | EventRecord::SessionEnd { .. } => false,
    }
}

/// What a legal hold selects. Criteria combine with AND; at least one is required.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HoldSpec {
    pub matter: String,
    /// Custodians: bare JIDs (lowercase). A message is theirs when they sent it,
    /// received it, or their session carried it.
    #[serde(default)]
    pub jids: Vec<String>,
    /// A search query (`docs/search-syntax.md`), evaluated on each message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

impl HoldSpec {
    /// Checks and normalises a hold as an officer wrote it.
    pub fn new(
        matter: &str,
        jids: &[String],
        query_text: Option<&str>,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<HoldSpec, String> {
        let matter = matter.trim();
        if matter.is_empty()
            || matter.len() > 200
            || matter.chars().any(|c| c.is_control() || is_invisible(c))
        {
            return Err(
                "the matter name must be 1 to 200 printable characters, none invisible".into(),
            );
        }
        let mut norm = Vec::new();
        for j in jids {
            let bare = query::bare_jid(&query::normalize_jid(j)).to_string();
            if bare.is_empty() || !bare.contains(|c: char| c != '@') || bare.contains(' ') {
                return Err(format!("custodian {j:?} is not a JID"));
            }
            if !norm.contains(&bare) {
                norm.push(bare);
            }
        }
        let query_text = query_text.map(str::trim).filter(|q| !q.is_empty());
        if let Some(q) = query_text {
            query::parse(q).map_err(|e| format!("query: {e}"))?;
        }
        if let (Some(a), Some(b)) = (since, until) {
            if a >= b {
                return Err(format!("--since {a} is not before --until {b}"));
            }
        }
        if norm.is_empty() && query_text.is_none() && since.is_none() && until.is_none() {
            return Err(
                "a hold must select something: custodian JIDs, a query and/or a date range".into(),
            );
        }
        Ok(HoldSpec {
            matter: matter.to_string(),
            jids: norm,
            query: query_text.map(str::to_string),
            since: since.map(|t| t.0),
            until: until.map(|t| t.0),
        })
    }

    /// A compiled form for matching many records.
    pub fn matcher(&self) -> HoldMatcher {
        // A stored query that no longer parses selects every message: a hold must
        // never silently select less than when it was placed.
        let query: Option<Query> = self
            .query
            .as_deref()
            .map(|q| query::parse(q).unwrap_or_default());
        HoldMatcher {
            jids: self.jids.iter().cloned().collect(),
            filter: Filter::new(query, self.since.map(Timestamp), self.until.map(Timestamp)),
            has_query: self.query.is_some(),
        }
    }
}

/// Zero-width and direction-changing characters: two matter names that differ only by
/// them look the same on every page.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// A [`HoldSpec`] ready to test records.
pub struct HoldMatcher {
    jids: BTreeSet<String>,
    filter: Filter,
    has_query: bool,
}

impl HoldMatcher {
    /// Whether the hold covers this record.
    pub fn covers(&self, rec: &Record) -> bool {
        if !self.jids.is_empty() && !party_jids(&rec.content).any(|j| self.jids.contains(&j)) {
            return false;
        }
        if self.has_query || self.jids.is_empty() {
            return self.filter.selects(rec);
        }
        // Custodian holds keep the custodians' session events too.
        self.filter.selects_time(rec)
    }
}

/// The bare JIDs a record concerns (its data subjects).
pub fn party_jids(content: &NewRecord) -> impl Iterator<Item = String> + '_ {
    let list: Vec<&str> = match content {
        NewRecord::Message(m) => {
            let mut v = vec![m.from.as_str(), m.to.as_str(), m.capture.account.as_str()];
            v.extend(m.capture.claimed_from.as_deref());
            v
        }
        NewRecord::Event(EventRecord::SessionStart { jid, .. })
        | NewRecord::Event(EventRecord::SessionEnd { jid, .. }) => vec![jid.as_str()],
        NewRecord::Event(_) => Vec::new(),
    };
    let mut seen = BTreeSet::new();
    list.into_iter()
        .filter(|j| !j.is_empty())
        .map(|j| query::bare_jid(&query::normalize_jid(j)).to_string())
        .filter(move |j| seen.insert(j.clone()))
}

/// One act on a hold, as recorded in the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HoldAct {
    pub seq: u64,
    pub time: Timestamp,
    pub actor: String,
    /// `place`, `change` or `release`.
    pub act: String,
}

/// A hold with its history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub spec: HoldSpec,
    pub active: bool,
    pub history: Vec<HoldAct>,
}

pub const HOLD_PLACE: &str = "hold.place";
pub const HOLD_CHANGE: &str = "hold.change";
pub const HOLD_RELEASE: &str = "hold.release";

/// Every hold ever placed, by matter, replayed from hold records in chain order.
/// Serialized only into sealed state derived from those records.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holds {
    by_matter: BTreeMap<String, Hold>,
    /// Hold records whose detail could not be read: a hold that cannot be read must
    /// stop expiry rather than be ignored.
    pub unreadable: Vec<u64>,
}

impl Holds {
    /// Feeds one record; records must come in seq order.
    pub fn observe(&mut self, rec: &Record) {
        let NewRecord::Event(EventRecord::Audit {
            actor,
            action,
            detail,
        }) = &rec.content
        else {
            return;
        };
        if !action.starts_with("hold.") {
            return;
        }
        let act = HoldAct {
            seq: rec.seq.0,
            time: rec.time,
            actor: actor.clone(),
            act: action.trim_start_matches("hold.").to_string(),
        };
        match action.as_str() {
            HOLD_PLACE | HOLD_CHANGE => match serde_json::from_str::<HoldSpec>(detail) {
                Ok(spec) => {
                    let hold = self.by_matter.entry(spec.matter.clone()).or_insert(Hold {
                        spec: spec.clone(),
                        active: true,
                        history: Vec::new(),
                    });
                    hold.spec = spec;
                    hold.active = true;
                    hold.history.push(act);
                }
                Err(_) => self.unreadable.push(rec.seq.0),
            },
            HOLD_RELEASE => match serde_json::from_str::<Release>(detail) {
                Ok(r) => {
                    if let Some(h) = self.by_matter.get_mut(&r.matter) {
                        h.active = false;
                        h.history.push(act);
                    }
                }
                Err(_) => self.unreadable.push(rec.seq.0),
            },
            _ => {}
        }
    }

    pub fn get(&self, matter: &str) -> Option<&Hold> {
        self.by_matter.get(matter)
    }

    pub fn all(&self) -> impl Iterator<Item = &Hold> {
        self.by_matter.values()
    }

    pub fn active(&self) -> impl Iterator<Item = &Hold> {
        self.by_matter.values().filter(|h| h.active)
    }

    /// The active holds compiled for matching.
    pub fn matchers(&self) -> Vec<(String, HoldMatcher)> {
        self.active()
            .map(|h| (h.spec.matter.clone(), h.spec.matcher()))
            .collect()
    }
}

/// The detail of a `hold.release` record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Release {
    pub matter: String,
}

/// What expiry needs to know about one sealed segment, gathered from its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentFacts {
    pub segment: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub messages: u64,
    pub newest: Option<Timestamp>,
    /// Classes of the records in it (a segment written before classes existed, or
    /// holding only session events, counts as `default`).
    pub classes: BTreeSet<String>,
    /// Active holds covering at least one of its records, with how many.
    pub held_by: BTreeMap<String, u64>,
}

impl SegmentFacts {
    pub fn new(segment: u64) -> SegmentFacts {
        SegmentFacts {
            segment,
            ..SegmentFacts::default()
        }
    }

    /// Feeds one record of the segment, in order.
    pub fn observe(&mut self, rec: &Record, holds: &[(String, HoldMatcher)]) {
        if self.records == 0 {
            self.first_seq = rec.seq.0;
        }
        self.records += 1;
        self.last_seq = rec.seq.0;
        self.newest = Some(self.newest.map_or(rec.time, |n| n.max(rec.time)));
        match &rec.content {
            NewRecord::Message(m) => {
                self.messages += 1;
                self.classes
                    .insert(class_name(&m.capture.retention_class).to_string());
            }
            NewRecord::Event(e) if is_governance(e) => {
                self.classes.insert(PERMANENT_CLASS.into());
            }
            NewRecord::Event(_) => {}
        }
        for (matter, m) in holds {
            if m.covers(rec) {
                *self.held_by.entry(matter.clone()).or_default() += 1;
            }
        }
    }

    /// Classes for the decision: `default` when no record named one.
    pub fn effective_classes(&self) -> BTreeSet<String> {
        if self.classes.is_empty() {
            [DEFAULT_CLASS.to_string()].into()
        } else {
            self.classes.clone()
        }
    }
}

/// Why a segment is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Some record is still inside its retention.
    NotDue { class: String, due: Timestamp },
    /// Legal holds cover records in it.
    Held(BTreeMap<String, u64>),
    /// It holds governance records or a class kept forever.
    Forever { class: String },
    /// A class no longer configured: kept until the configuration names it again.
    UnknownClass(String),
    /// Nothing readable in it (no records).
    Empty,
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::NotDue { class, due } => write!(f, "class {class}: due {due}"),
            Keep::Held(m) => {
                let list: Vec<String> = m
                    .iter()
                    .map(|(k, n)| format!("{k:?} ({n} record(s))"))
                    .collect();
                write!(f, "held by {}", list.join(", "))
            }
            Keep::Forever { class } => write!(f, "class {class} is kept forever"),
            Keep::UnknownClass(c) => write!(
                f,
                "class {c:?} is not in [retention]; kept until it is configured again"
            ),
            Keep::Empty => write!(f, "no records"),
        }
    }
}

/// The verdict on one sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Shred {
        /// The class that keeps longest among its records.
        class: String,
        span: Span,
        newest: Timestamp,
        due: Timestamp,
    },
    Keep(Keep),
}

/// Decides whether a sealed segment may be shredded at `now`: only when every record in
/// it is past its class's retention and no active hold covers any of them.
pub fn decide(facts: &SegmentFacts, policy: &RetentionPolicy, now: Timestamp) -> Decision {
    let (class, newest, due) = match segment_due(facts, policy) {
        Ok(x) => x,
        Err(keep) => return Decision::Keep(keep),
    };
    if !facts.held_by.is_empty() {
        return Decision::Keep(Keep::Held(facts.held_by.clone()));
    }
    if now < due {
        return Decision::Keep(Keep::NotDue { class, due });
    }
    let span = policy.span(&class).unwrap_or(Span::Forever);
    Decision::Shred {
        class,
        span,
        newest,
        due,
    }
}

/// When a segment's retention ends, holds aside: its newest record's time plus the
/// retention of the longest-keeping class among its records, with that class and the
/// newest time; or why it never ends under this configuration.
pub fn segment_due(
    facts: &SegmentFacts,
    policy: &RetentionPolicy,
) -> Result<(String, Timestamp, Timestamp), Keep> {
    let newest = facts.newest.ok_or(Keep::Empty)?;
    let mut worst: Option<(String, Timestamp)> = None;
    for class in facts.effective_classes() {
        let span = policy
            .span(&class)
            .ok_or_else(|| Keep::UnknownClass(class.clone()))?;
        let due = span.due(newest).ok_or_else(|| Keep::Forever {
            class: class.clone(),
        })?;
        if worst.as_ref().is_none_or(|(_, d)| due > *d) {
            worst = Some((class, due));
        }
    }
    let (class, due) = worst.ok_or(Keep::Empty)?;
    Ok((class, newest, due))
}

/// The `authority` a retention shred record carries: what was checked, so a reader of
/// the chain can see that the deletion was due.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpiryAuthority {
    pub rule: String,
    pub class: String,
    pub retention: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub newest: String,
    pub due: String,
    /// Active holds checked (none covered the segment).
    pub holds_checked: Vec<String>,
}

pub const EXPIRY_REASON: &str = "retention expired";
pub const EXPIRY_RULE: &str = "custos:retention";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Capture, MessageRecord, RecordSeq};
    use proptest::prelude::*;

    fn msg(seq: u64, t: i64, from: &str, to: &str, class: &str, body: &str) -> Record {
        Record {
            seq: RecordSeq(seq),
            time: Timestamp(t),
            content: NewRecord::Message(MessageRecord {
                capture: Capture {
                    account: from.into(),
                    retention_class: class.into(),
                    ..Capture::default()
                },
                ..MessageRecord::chat(from, to, body)
            }),
        }
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy::new(
            Span::Secs(100),
            [("research".to_string(), Span::Secs(1000))].into(),
        )
        .unwrap()
    }

    #[test]
    fn durations_parse_and_years_are_calendar_years() {
        assert_eq!(Span::parse("90d").unwrap(), Span::Secs(90 * 86_400));
        assert_eq!(Span::parse("3600").unwrap(), Span::Secs(3600));
        assert_eq!(Span::parse("6y").unwrap(), Span::Years(6));
        assert_eq!(Span::parse("forever").unwrap(), Span::Forever);
        assert!(Span::parse("6x").unwrap_err().contains("unknown unit"));
        assert!(Span::parse("y").is_err());
        assert!(Span::parse("99999999999999999999d").is_err());
        let leap = Timestamp::parse("2024-02-29T10:00:00Z").unwrap();
        assert_eq!(
            Span::Years(1).due(leap).unwrap(),
            Timestamp::parse("2025-03-01T10:00:00Z").unwrap()
        );
        let t = Timestamp::parse("2020-06-30T23:59:59.500Z").unwrap();
        assert_eq!(
            Span::Years(6).due(t).unwrap(),
            Timestamp::parse("2026-06-30T23:59:59.500Z").unwrap()
        );
    }

    #[test]
    fn unknown_class_names_choose_the_longest() {
        let p = policy();
        assert_eq!(p.choose(["research"]).as_deref(), Some("research"));
        assert_eq!(p.choose(["nope"]).as_deref(), Some("research"));
        assert_eq!(p.choose(std::iter::empty()), None);
        assert_eq!(p.choose(["default"]), None);
        assert!(
            RetentionPolicy::new(Span::Secs(1), [("permanent".into(), Span::Secs(1))].into())
                .is_err()
        );
        // No class may keep less than the default: a rule could shorten it.
        let e = RetentionPolicy::new(
            Span::Years(6),
            [("chatter".into(), Span::Secs(90 * 86_400))].into(),
        )
        .unwrap_err();
        assert!(e.contains("keeps less than the default"), "{e}");
        assert!(
            RetentionPolicy::new(
                Span::Years(1),
                [("d".into(), Span::Secs(365 * 86_400))].into()
            )
            .is_err(),
            "365 days is a day short of a leap year"
        );
        assert!(RetentionPolicy::new(
            Span::Years(1),
            [("d".into(), Span::Secs(366 * 86_400))].into()
        )
        .is_ok());
        // Without [retention], a rule's class is kept as written.
        let none = RetentionPolicy::keep_forever();
        assert_eq!(none.choose(["research"]).as_deref(), Some("research"));
        assert_eq!(none.choose(["permanent"]), None);
    }

    #[test]
    fn a_segment_goes_only_when_due_and_unheld() {
        let p = policy();
        let mut f = SegmentFacts::new(3);
        f.observe(&msg(1, 0, "a@x/r", "b@x", "", "hi"), &[]);
        f.observe(&msg(2, 5_000, "a@x/r", "b@x", "", "hi"), &[]);
        assert_eq!(
            decide(&f, &p, Timestamp(104_999)),
            Decision::Keep(Keep::NotDue {
                class: "default".into(),
                due: Timestamp(105_000)
            })
        );
        assert!(matches!(
            decide(&f, &p, Timestamp(105_000)),
            Decision::Shred { .. }
        ));
        let hold = HoldSpec::new("m", &["B@X/phone".into()], None, None, None).unwrap();
        let holds = vec![("m".to_string(), hold.matcher())];
        let mut g = SegmentFacts::new(3);
        g.observe(&msg(1, 0, "a@x/r", "b@x", "", "hi"), &holds);
        assert!(matches!(
            decide(&g, &p, Timestamp(1_000_000)),
            Decision::Keep(Keep::Held(_))
        ));
        let mut r = SegmentFacts::new(4);
        r.observe(&msg(1, 0, "a@x/r", "b@x", "research", "hi"), &[]);
        assert!(matches!(
            decide(&r, &p, Timestamp(200_000)),
            Decision::Keep(Keep::NotDue { .. })
        ));
        let mut u = SegmentFacts::new(5);
        u.observe(&msg(1, 0, "a@x/r", "b@x", "gone", "hi"), &[]);
        assert!(matches!(
            decide(&u, &p, Timestamp(i64::MAX / 2)),
            Decision::Keep(Keep::UnknownClass(_))
        ));
    }

    #[test]
    fn holds_replay_place_change_release() {
        let mut h = Holds::default();
        let spec = HoldSpec::new("acme", &["a@x".into()], Some("merger"), None, None).unwrap();
        let audit = |seq: u64, action: &str, detail: String| Record {
            seq: RecordSeq(seq),
            time: Timestamp(seq as i64),
            content: NewRecord::Event(EventRecord::Audit {
                actor: "officer".into(),
                action: action.into(),
                detail,
            }),
        };
        h.observe(&audit(1, HOLD_PLACE, serde_json::to_string(&spec).unwrap()));
        assert_eq!(h.active().count(), 1);
        let m = &h.matchers()[0].1;
        assert!(m.covers(&msg(9, 0, "a@x/r", "b@x", "", "the Merger plan")));
        assert!(!m.covers(&msg(9, 0, "a@x/r", "b@x", "", "lunch")));
        assert!(!m.covers(&msg(9, 0, "c@x/r", "b@x", "", "the merger plan")));
        h.observe(&audit(
            2,
            HOLD_RELEASE,
            serde_json::to_string(&Release {
                matter: "acme".into(),
            })
            .unwrap(),
        ));
        assert_eq!(h.active().count(), 0);
        assert_eq!(h.get("acme").unwrap().history.len(), 2);
        h.observe(&audit(3, HOLD_PLACE, "{not json".into()));
        assert_eq!(h.unreadable, vec![3]);
        assert!(HoldSpec::new("m", &[], None, None, None).is_err());
        // The full query language holds: OR, NEAR and prefixes select what search does.
        assert!(HoldSpec::new("m", &[], Some("merger OR acquisit*"), None, None).is_ok());
        let e = HoldSpec::new("m", &[], Some("merger NEAR acquisition"), None, None).unwrap_err();
        assert!(e.contains("\"NEAR\""), "{e}");
        let e = HoldSpec::new("m", &[], Some("@deals"), None, None).unwrap_err();
        assert!(e.contains("\"@deals\""), "{e}");
        assert!(HoldSpec::new("acme\u{200B}", &["a@x".into()], None, None, None).is_err());
        assert!(HoldSpec::new("acme \u{202E}mrif", &["a@x".into()], None, None, None).is_err());
        assert!(HoldSpec::new("m", &[], Some("from:"), None, None).is_err());
    }

    fn arb_record(seq: u64) -> impl Strategy<Value = Record> {
        (
            0i64..2_000,
            prop::sample::select(vec!["a@x/r", "b@x/r", "c@y/r"]),
            prop::sample::select(vec!["a@x", "b@x", "c@y"]),
            prop::sample::select(vec!["", "research", "short"]),
            prop::sample::select(vec!["merger talk", "lunch", "deal"]),
        )
            .prop_map(move |(t, from, to, class, body)| msg(seq, t * 1000, from, to, class, body))
    }

    fn arb_hold() -> impl Strategy<Value = HoldSpec> {
        (
            prop::collection::vec(prop::sample::select(vec!["a@x", "b@x", "c@y"]), 0..2),
            prop::option::of(prop::sample::select(vec!["merger", "deal", "with:c@y"])),
            prop::option::of(0i64..2_000),
        )
            .prop_filter_map("a hold selects something", |(jids, q, since)| {
                let jids: Vec<String> = jids.into_iter().map(String::from).collect();
                HoldSpec::new("m", &jids, q, since.map(|s| Timestamp(s * 1000)), None).ok()
            })
    }

    proptest! {
        /// No record under an active hold or inside its class's retention is ever in a
        /// segment that `decide` lets go.
        #[test]
        fn nothing_held_or_inside_retention_is_shredded(
            records in prop::collection::vec(any::<u8>(), 1..40)
                .prop_flat_map(|v| (0..v.len() as u64).map(arb_record).collect::<Vec<_>>()),
            holds in prop::collection::vec(arb_hold(), 0..3),
            cut in 1usize..8,
            now in 0i64..4_000,
        ) {
            let policy = RetentionPolicy::new(
                Span::Secs(10),
                [("research".to_string(), Span::Secs(1500)), ("short".to_string(), Span::Secs(500))].into(),
            ).unwrap();
            let now = Timestamp(now * 1000);
            let matchers: Vec<(String, HoldMatcher)> = holds
                .iter()
                .enumerate()
                .map(|(i, h)| (format!("{}-{i}", h.matter), h.matcher()))
                .collect();
            for (n, chunk) in records.chunks(cut).enumerate() {
                let mut f = SegmentFacts::new(n as u64);
                for r in chunk {
                    f.observe(r, &matchers);
                }
                if let Decision::Shred { .. } = decide(&f, &policy, now) {
                    for r in chunk {
                        let NewRecord::Message(m) = &r.content else { unreachable!() };
                        let span = policy.span(class_name(&m.capture.retention_class)).unwrap();
                        prop_assert!(span.due(r.time).unwrap() <= now, "record {} inside retention", r.seq.0);
                        for (name, h) in &matchers {
                            prop_assert!(!h.covers(r), "record {} held by {}", r.seq.0, name);
                        }
                    }
                }
            }
        }
    }
}
