//! The compiled policy and evaluation of one stanza into a [`Verdict`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::condition::{Condition, Facts, GroupId, PartyFacts};
use crate::detect::Detectors;
use crate::error::RulesError;
use crate::jid::{is_internal_domain, Bits, Jid, PartyIndex};
use crate::lexicon::Lexicons;
use crate::scan::{Field, FieldScanner, Probe};
use crate::subject::Subject;
use crate::verdict::{
    Action, AlertEvent, ConversationKey, DisclaimerRequest, RuleId, Severity, Verdict,
};

/// The mask character; each masked character of the original becomes one of these.
pub const MASK: char = '█';

/// How many times redaction re-checks and re-masks its own output before giving up and
/// blocking instead (each pass masks at least one more character, or stops).
const MAX_REDACT_PASSES: usize = 8;

/// Sent when redaction cannot produce a text free of matches.
const UNREDACTABLE_TEXT: &str = "This message could not be redacted safely and was not delivered.";

/// Whether a rule's action is enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

/// A rule's action as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleAction {
    Allow,
    Flag,
    Alert,
    Redact,
    Block,
    Disclaimer,
}

impl RuleAction {
    pub(crate) fn parse(s: &str) -> Option<RuleAction> {
        Some(match s {
            "allow" => RuleAction::Allow,
            "flag" => RuleAction::Flag,
            "alert" => RuleAction::Alert,
            "redact" => RuleAction::Redact,
            "block" => RuleAction::Block,
            "disclaimer" => RuleAction::Disclaimer,
            _ => return None,
        })
    }

    /// Alert and disclaimer add to the verdict without restricting the stanza.
    fn effect(self) -> Action {
        match self {
            RuleAction::Allow | RuleAction::Alert | RuleAction::Disclaimer => Action::Allow,
            RuleAction::Flag => Action::Flag,
            RuleAction::Redact => Action::Redact,
            RuleAction::Block => Action::Block,
        }
    }
}

/// A compiled rule or information barrier.
#[derive(Debug)]
pub(crate) struct Rule {
    pub id: RuleId,
    pub condition: Condition,
    pub action: RuleAction,
    pub severity: Option<Severity>,
    pub text: Option<Arc<str>>,
    pub period: Duration,
    pub alert: bool,
    pub monitor: bool,
    pub barrier: bool,
    /// The retention class the rule assigns to what it matches.
    pub retention: Option<Arc<str>>,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub name: String,
}

/// A compiled rules file: immutable, `Send + Sync`, shared by every connection.
#[derive(Debug)]
pub struct Policy {
    pub(crate) origin: PathBuf,
    pub(crate) sources: Vec<PathBuf>,
    pub(crate) mode: Mode,
    pub(crate) internal_domains: Vec<String>,
    pub(crate) parties: PartyIndex,
    pub(crate) groups: Vec<Group>,
    /// Pattern → the groups it is a member pattern of.
    pub(crate) pattern_groups: Vec<Vec<GroupId>>,
    pub(crate) lexicons: Lexicons,
    pub(crate) lexicon_count: usize,
    pub(crate) lexicon_terms: usize,
    pub(crate) detectors: Detectors,
    pub(crate) body: FieldScanner,
    pub(crate) subject: FieldScanner,
    /// Barriers first, then rules in file order.
    pub(crate) rules: Vec<Rule>,
    pub(crate) webhook: Option<Arc<str>>,
    pub(crate) block_text: Arc<str>,
}

/// Counts describing a compiled policy, for `policy check` and reload logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    pub file: PathBuf,
    pub mode: Mode,
    pub rules: usize,
    pub barriers: usize,
    pub monitored: usize,
    pub groups: usize,
    pub lexicons: usize,
    pub lexicon_terms: usize,
    pub webhook: bool,
}

impl fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: ok ({} mode): {} rules ({} monitor-only), {} barriers, {} groups, {} lexicons ({} terms){}",
            self.file.display(),
            self.mode,
            self.rules,
            self.monitored,
            self.barriers,
            self.groups,
            self.lexicons,
            self.lexicon_terms,
            if self.webhook { ", alert webhook set" } else { "" }
        )
    }
}

impl Policy {
    /// Reads and compiles a rules file. Lexicon files are resolved against its directory.
    pub fn load(path: &Path) -> Result<Policy, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::read(path, e))?;
        Policy::from_str(&text, path)
    }

    /// Compiles rules text; `origin` names the file in errors and anchors relative paths.
    pub fn from_str(text: &str, origin: &Path) -> Result<Policy, RulesError> {
        crate::compile::compile(text, origin)
    }

    /// The rules file this policy came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The rules file and every lexicon file it read: what a watcher must watch.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// The group names defined in `[groups]`.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| &*g.name)
    }

    pub fn summary(&self) -> PolicySummary {
        let barriers = self.rules.iter().filter(|r| r.barrier).count();
        PolicySummary {
            file: self.origin.clone(),
            mode: self.mode,
            rules: self.rules.len() - barriers,
            barriers,
            monitored: self.rules.iter().filter(|r| r.monitor).count(),
            groups: self.groups.len(),
            lexicons: self.lexicon_count,
            lexicon_terms: self.lexicon_terms,
            webhook: self.webhook.is_some(),
        }
    }

    fn party(&self, jid: Option<&str>) -> PartyFacts {
        let jid = jid.and_then(Jid::parse);
        let mut patterns = Bits::new(self.parties.len());
        let mut groups = Bits::new(self.groups.len());
        if let Some(j) = &jid {
            self.parties.matches(j, &mut patterns);
            for p in patterns.ones() {
                for &g in self.pattern_groups.get(p).into_iter().flatten() {
                    groups.set(g);
                }
            }
        }
        let internal = jid
            .as_ref()
            .map(|j| is_internal_domain(j.domain(), &self.internal_domains));
        PartyFacts {
            jid,
            patterns,
            groups,
            internal,
        }
    }

    /// One side of the stanza: its address, and the people behind it when it is a room's.
    fn side(&self, jid: Option<&str>, behind: &[&str]) -> PartyFacts {
        let mut facts = self.party(jid);
        for real in behind {
            facts.absorb(self.party(Some(real)));
        }
        facts
    }

    fn facts<'a>(&'a self, msg: &'a Subject<'a>) -> Facts<'a> {
        let scan = |scanner: &FieldScanner, text: Option<&'a str>| {
            text.filter(|_| scanner.is_used())
                .map(|t| scanner.scan(t, &self.lexicons, self.lexicon_count, &self.detectors))
        };
        Facts {
            subject: msg,
            from: self.side(msg.from, msg.room.from_real.as_slice()),
            to: self.side(msg.to, msg.room.to_real),
            body: scan(&self.body, msg.body),
            subject_text: scan(&self.subject, msg.subject),
        }
    }

    /// Evaluates one stanza. Text fields are scanned once each, whatever the number of
    /// rules; see `docs/policy.md` for how matches combine.
    pub fn evaluate(&self, msg: &Subject<'_>) -> Verdict {
        let facts = self.facts(msg);
        let mut v = Verdict::allow();
        let mut any_enforced = false;
        let mut block_text: Option<Arc<str>> = None;
        let mut redacting = false;
        for rule in &self.rules {
            if !rule.condition.eval(&facts) {
                continue;
            }
            let effect = rule.action.effect();
            // Retention applies in monitor mode too: it only ever keeps longer.
            if let Some(class) = &rule.retention {
                if !v.retention.contains(class) {
                    v.retention.push(class.clone());
                }
                // An allow rule that only assigns a class classifies; it is not a hit.
                if rule.action == RuleAction::Allow && !rule.alert {
                    continue;
                }
            }
            v.rules.push(rule.id.clone());
            v.would_action = v.would_action.max(effect);
            let severity = match rule.action {
                RuleAction::Flag => Some(rule.severity.unwrap_or(Severity::Medium)),
                _ => rule.severity,
            };
            v.severity = v.severity.max(severity);
            if rule.alert {
                if let Some(webhook) = &self.webhook {
                    v.alerts.push(AlertEvent {
                        webhook: webhook.clone(),
                        rule: rule.id.clone(),
                        action: effect,
                        severity,
                        monitor: rule.monitor,
                        direction: msg.direction,
                        kind: msg.kind,
                        from: facts.from.jid.as_ref().map(Jid::full),
                        to: facts.to.jid.as_ref().map(Jid::full),
                    });
                }
            }
            if rule.monitor {
                v.monitored.push(rule.id.clone());
                continue;
            }
            any_enforced = true;
            v.action = v.action.max(effect);
            match rule.action {
                RuleAction::Block if block_text.is_none() => {
                    block_text = Some(rule.text.clone().unwrap_or_else(|| self.block_text.clone()));
                }
                RuleAction::Redact => redacting = true,
                RuleAction::Disclaimer if v.disclaimer.is_none() => {
                    v.disclaimer = disclaimer(rule, &facts);
                }
                _ => {}
            }
        }
        v.monitor_only = !v.rules.is_empty() && !any_enforced;
        if v.action == Action::Redact && redacting {
            match self.redact(msg, &facts) {
                Some((body, subject)) => {
                    v.delivered_body = body;
                    v.delivered_subject = subject;
                }
                None => {
                    v.action = Action::Block;
                    block_text = Some(Arc::from(UNREDACTABLE_TEXT));
                }
            }
        }
        if v.action == Action::Block {
            v.block_text = Some(
                block_text
                    .unwrap_or_else(|| self.block_text.clone())
                    .to_string(),
            );
        }
        v
    }

    /// Masks what enforced redact rules matched, then re-evaluates those rules on the
    /// masked text and masks again until none of them matches any more: the delivered
    /// text never holds a match of a redact rule, even when masking one match lets
    /// another appear (a whole-word term whose neighbour was masked). `None` when that
    /// cannot be reached, so the caller blocks instead of leaking.
    fn redact(
        &self,
        msg: &Subject<'_>,
        first: &Facts<'_>,
    ) -> Option<(Option<String>, Option<String>)> {
        let mut body = msg.body.map(str::to_owned);
        let mut subject = msg.subject.map(str::to_owned);
        let mut changed_body = false;
        let mut changed_subject = false;
        let mut spans = self.redaction_spans(first);
        for _ in 0..MAX_REDACT_PASSES {
            if spans.0.is_empty() && spans.1.is_empty() {
                break;
            }
            let mut progress = false;
            if let Some(b) = body.as_mut() {
                progress |= mask(b, &spans.0);
                changed_body |= !spans.0.is_empty();
            }
            if let Some(s) = subject.as_mut() {
                progress |= mask(s, &spans.1);
                changed_subject |= !spans.1.is_empty();
            }
            let masked = Subject {
                body: body.as_deref(),
                subject: subject.as_deref(),
                ..*msg
            };
            let facts = self.facts(&masked);
            if !self.redact_rules_match(&facts) {
                return Some((
                    body.filter(|_| changed_body),
                    subject.filter(|_| changed_subject),
                ));
            }
            if !progress {
                return None;
            }
            spans = self.redaction_spans(&facts);
        }
        if self.redact_rules_match(&self.facts(&Subject {
            body: body.as_deref(),
            subject: subject.as_deref(),
            ..*msg
        })) {
            return None;
        }
        Some((
            body.filter(|_| changed_body),
            subject.filter(|_| changed_subject),
        ))
    }

    fn enforced_redactors(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(|r| r.action == RuleAction::Redact && !r.monitor)
    }

    fn redact_rules_match(&self, facts: &Facts<'_>) -> bool {
        self.enforced_redactors().any(|r| r.condition.eval(facts))
    }

    /// Spans to mask in (body, subject): the positive text matches of every enforced
    /// redact rule that holds.
    fn redaction_spans(&self, facts: &Facts<'_>) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
        let mut probes: Vec<(Field, Probe)> = Vec::new();
        for rule in self.enforced_redactors() {
            if rule.condition.eval(facts) {
                rule.condition.positive_probes(facts, &mut probes);
            }
        }
        probes.sort();
        probes.dedup();
        let mut body = Vec::new();
        let mut subject = Vec::new();
        for (field, probe) in probes {
            let (out, scanner) = match field {
                Field::Body => (&mut body, &self.body),
                Field::Subject => (&mut subject, &self.subject),
            };
            if let Some(scan) = facts.field(field) {
                scan.spans(probe, scanner, out);
            }
        }
        (merge(body), merge(subject))
    }
}

fn disclaimer(rule: &Rule, facts: &Facts<'_>) -> Option<DisclaimerRequest> {
    let (external, internal) = if facts.to.internal == Some(false) {
        (&facts.to, &facts.from)
    } else if facts.from.internal == Some(false) {
        (&facts.from, &facts.to)
    } else {
        return None;
    };
    let text = rule.text.clone()?;
    let room = facts.subject.room;
    let external_jid = external.jid.as_ref()?;
    if room.groupchat {
        // Group chat: the notice goes to the room, once per room and period, whoever
        // behind Custos speaks first.
        let to = external_jid.bare.clone();
        return Some(DisclaimerRequest {
            conversation: ConversationKey(format!("{} room {}", rule.id, to)),
            rule: rule.id.clone(),
            text,
            to,
            from: None,
            room: true,
            period: rule.period,
        });
    }
    // A private message in a room goes to the occupant's room address; anything else
    // to the account.
    let private_in_room = room.from_real.is_some() || !room.to_real.is_empty();
    let to = if private_in_room {
        external_jid.full()
    } else {
        external_jid.bare.clone()
    };
    let from = internal.jid.as_ref().map(|j| j.bare.clone());
    Some(DisclaimerRequest {
        conversation: ConversationKey(format!(
            "{} {} {}",
            rule.id,
            from.as_deref().unwrap_or("-"),
            to
        )),
        rule: rule.id.clone(),
        text,
        to,
        from,
        room: false,
        period: rule.period,
    })
}

/// Sorts and merges overlapping or touching ranges.
pub(crate) fn merge(mut spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    spans.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for r in spans.into_iter().filter(|r| r.start < r.end) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Replaces every character that overlaps a span with [`MASK`], but directional
/// controls: a span read in the order a client draws it may cover the end of an
/// override and not its start, and masking that end would turn the rest of the line
/// around. Returns whether any character that was not already a mask changed.
pub(crate) fn mask(text: &mut String, spans: &[Range<usize>]) -> bool {
    if spans.is_empty() {
        return false;
    }
    let mut out = String::with_capacity(text.len() + spans.len() * 2);
    let mut changed = false;
    let mut k = 0;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        while spans.get(k).is_some_and(|s| s.end <= i) {
            k += 1;
        }
        let hit = spans.get(k).is_some_and(|s| s.start < end && i < s.end)
            && !custos_text::is_directional_control(c);
        if hit {
            changed |= c != MASK;
            out.push(MASK);
        } else {
            out.push(c);
        }
    }
    *text = out;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_joins_overlaps_and_touching() {
        assert_eq!(
            merge(vec![5..8, 0..2, 1..3, 8..9, 12..12]),
            vec![0..3, 5..9]
        );
    }

    #[test]
    fn mask_is_one_block_per_character() {
        let mut s = "card 4111 ok é".to_string();
        assert!(mask(&mut s, &[5..9, 13..15]));
        assert_eq!(s, "card ████ ok █");
        let already = vec![5..8, 5..6];
        assert!(!mask(&mut s, &already), "already masked: no progress");
    }

    #[test]
    fn policy_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Policy>();
    }
}
