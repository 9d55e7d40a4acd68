//! What evaluation returns: the enforced action, every rule that matched, and the side
//! effects (alerts to POST, a disclaimer to send) for the caller to carry out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::subject::{Direction, StanzaKind};

/// The action enforced on a stanza, ordered from least to most restrictive: when several
/// rules match, the greatest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deliver unchanged.
    Allow,
    /// Deliver unchanged, tag for review.
    Flag,
    /// Deliver with matched text masked; the archive keeps original and delivered text.
    Redact,
    /// Do not deliver; the sender gets a `<policy-violation/>` error.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a match is, for the review queue and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub(crate) fn parse(s: &str) -> Option<Severity> {
        match s {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// The id of a rule or barrier as written in the rules file. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(Arc<str>);

impl RuleId {
    pub(crate) fn new(s: &str) -> Self {
        RuleId(Arc::from(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RuleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// An event for the configured webhook. The caller POSTs it as JSON and never holds the
/// stanza back waiting for it. It carries no message text: the webhook is often outside
/// the compliance boundary, and the archive holds the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertEvent {
    /// Where to POST it (`[alert] webhook`).
    #[serde(skip)]
    pub webhook: Arc<str>,
    pub rule: RuleId,
    /// What the rule does (or would do, in monitor mode) to the stanza.
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// True when the rule only monitors: nothing was enforced.
    pub monitor: bool,
    pub direction: Direction,
    pub kind: StanzaKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Identifies one conversation between an internal user and an external party for one
/// disclaimer rule: `rule`, internal bare JID, external bare JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConversationKey(pub String);

/// A notice the caller should send to the external party, unless it already did within
/// `period` for `conversation` (see [`crate::DisclaimerTracker`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisclaimerRequest {
    pub rule: RuleId,
    pub text: Arc<str>,
    /// Who receives the notice: the external party's bare JID, a room (group chat with
    /// an external occupant) or an occupant's room address (a private message in a room).
    pub to: String,
    /// `to` is a room: the notice is sent as group chat.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub room: bool,
    /// Bare JID of the internal user on whose behalf it is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub conversation: ConversationKey,
    #[serde(serialize_with = "ser_secs")]
    pub period: Duration,
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// The outcome of evaluating one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The enforced action (from rules not in monitor mode).
    pub action: Action,
    /// Every rule and barrier that matched, enforced or monitored, barriers first, then
    /// rules in file order.
    pub rules: Vec<RuleId>,
    /// The matched rules that only monitor (a subset of `rules`).
    pub monitored: Vec<RuleId>,
    /// What the action would be if every matched rule were enforced.
    pub would_action: Action,
    /// The highest severity among matched rules that are more than `allow`.
    pub severity: Option<Severity>,
    /// The body to deliver; `Some` only when it was redacted.
    pub delivered_body: Option<String>,
    /// The subject to deliver; `Some` only when it was redacted.
    pub delivered_subject: Option<String>,
    /// The `<text/>` of the `<policy-violation/>` error; `Some` only when blocked.
    pub block_text: Option<String>,
    pub alerts: Vec<AlertEvent>,
    pub disclaimer: Option<DisclaimerRequest>,
    /// True when rules matched and every one of them only monitors.
    pub monitor_only: bool,
    /// Retention classes named by matched rules (`retention = "…"`); the archive keeps
    /// the record under the one that keeps longest.
    pub retention: Vec<Arc<str>>,
}

impl Verdict {
    pub(crate) fn allow() -> Self {
        Verdict {
            action: Action::Allow,
            rules: Vec::new(),
            monitored: Vec::new(),
            would_action: Action::Allow,
            severity: None,
            delivered_body: None,
            delivered_subject: None,
            block_text: None,
            alerts: Vec::new(),
            disclaimer: None,
            monitor_only: false,
            retention: Vec::new(),
        }
    }

    /// Whether `id` is among the matched rules.
    pub fn matched(&self, id: &str) -> bool {
        self.rules.iter().any(|r| r.as_str() == id)
    }

    /// Folds in the verdict on another text of the same stanza (a second-language body,
    /// XHTML, a link): the stanza gets the most restrictive action and every rule that
    /// matched anywhere. Delivered texts, the disclaimer and the block text of `self` are
    /// kept (the first block text wins); the other text's redaction is the caller's to
    /// apply.
    pub fn absorb(&mut self, other: Verdict) {
        self.action = self.action.max(other.action);
        self.would_action = self.would_action.max(other.would_action);
        self.severity = self.severity.max(other.severity);
        for rule in other.rules {
            if !self.rules.contains(&rule) {
                self.rules.push(rule);
            }
        }
        for rule in other.monitored {
            if !self.monitored.contains(&rule) {
                self.monitored.push(rule);
            }
        }
        if self.block_text.is_none() {
            self.block_text = other.block_text;
        }
        for class in other.retention {
            if !self.retention.contains(&class) {
                self.retention.push(class);
            }
        }
        for alert in other.alerts {
            if !self
                .alerts
                .iter()
                .any(|a| a.rule == alert.rule && a.webhook == alert.webhook)
            {
                self.alerts.push(alert);
            }
        }
        if self.disclaimer.is_none() {
            self.disclaimer = other.disclaimer;
        }
        self.monitor_only =
            !self.rules.is_empty() && self.rules.iter().all(|r| self.monitored.contains(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_order_by_restrictiveness() {
        assert!(Action::Allow < Action::Flag);
        assert!(Action::Flag < Action::Redact);
        assert!(Action::Redact < Action::Block);
        assert_eq!(
            [Action::Flag, Action::Block, Action::Redact].iter().max(),
            Some(&Action::Block)
        );
    }

    #[test]
    fn absorbing_keeps_the_most_restrictive_and_every_rule() {
        let mut a = Verdict::allow();
        a.action = Action::Flag;
        a.would_action = Action::Flag;
        a.rules = vec![RuleId::new("watch")];
        let mut b = Verdict::allow();
        b.action = Action::Block;
        b.would_action = Action::Block;
        b.rules = vec![RuleId::new("watch"), RuleId::new("pci-card")];
        b.block_text = Some("no cards".into());
        b.severity = Some(Severity::High);
        a.absorb(b);
        assert_eq!(a.action, Action::Block);
        assert_eq!(a.would_action, Action::Block);
        assert_eq!(a.severity, Some(Severity::High));
        assert_eq!(
            a.rules.iter().map(RuleId::as_str).collect::<Vec<_>>(),
            ["watch", "pci-card"]
        );
        assert_eq!(a.block_text.as_deref(), Some("no cards"));
        assert!(!a.monitor_only);
        // Only monitored rules anywhere: still monitor-only.
        let mut m = Verdict::allow();
        let mut n = Verdict::allow();
        n.rules = vec![RuleId::new("m")];
        n.monitored = vec![RuleId::new("m")];
        n.would_action = Action::Block;
        m.absorb(n);
        assert!(m.monitor_only);
        assert_eq!(m.action, Action::Allow);
        assert_eq!(m.would_action, Action::Block);
    }

    #[test]
    fn severity_parses_and_orders() {
        assert_eq!(Severity::parse("high"), Some(Severity::High));
        assert_eq!(Severity::parse("High"), None);
        assert!(Severity::Low < Severity::Critical);
    }
}
