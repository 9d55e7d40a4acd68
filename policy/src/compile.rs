//! Stage two: validate the parsed file into a [`Policy`]. Every problem is recorded
//! with its line and checking goes on, so one run reports all of them.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::condition::{Condition, E2eeCond, GroupId, PartyRef, Side};
use crate::detect::{Detector, Detectors};
use crate::error::{LineIndex, Problem, RulesError};
use crate::jid::{PartyIndex, PartyPattern};
use crate::lexicon::{LexiconId, LexiconSpec, Lexicons};
use crate::policy::{Group, Mode, Policy, Rule, RuleAction, MASK};
use crate::raw::{OneOrMany, RawBarrier, RawCondition, RawE2ee, RawRule, RawRules, RawText};
use crate::scan::{Field, FieldScanner, Probe};
use crate::subject::{Direction, E2ee, StanzaKind};
use crate::verdict::{RuleId, Severity};

/// Conditions nest at most this deep; deeper is a mistake, not a policy.
const MAX_DEPTH: usize = 32;
const DEFAULT_PERIOD: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_BLOCK_TEXT: &str =
    "This message was blocked by the organisation's communication policy.";
const MESSAGE_TYPES: [&str; 5] = ["chat", "error", "groupchat", "headline", "normal"];
const PRESENCE_TYPES: [&str; 8] = [
    "available",
    "unavailable",
    "subscribe",
    "subscribed",
    "unsubscribe",
    "unsubscribed",
    "probe",
    "error",
];
const IQ_TYPES: [&str; 4] = ["get", "set", "result", "error"];

struct Builder<'a> {
    file: &'a Path,
    dir: PathBuf,
    lines: LineIndex,
    problems: Vec<Problem>,
    parties: PartyIndex,
    groups: HashMap<String, GroupId>,
    lexicon_ids: HashMap<String, LexiconId>,
    body: FieldScanner,
    subject: FieldScanner,
    uses_party_class: Option<usize>,
    uses_alert: Option<usize>,
    sources: Vec<PathBuf>,
}

pub(crate) fn compile(text: &str, origin: &Path) -> Result<Policy, RulesError> {
    let mut b = Builder {
        file: origin,
        dir: origin.parent().map(Path::to_path_buf).unwrap_or_default(),
        lines: LineIndex::new(text),
        problems: Vec::new(),
        parties: PartyIndex::default(),
        groups: HashMap::new(),
        lexicon_ids: HashMap::new(),
        body: FieldScanner::default(),
        subject: FieldScanner::default(),
        uses_party_class: None,
        uses_alert: None,
        sources: vec![origin.to_path_buf()],
    };
    let raw: RawRules = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let line = e.span().map(|s| b.lines.line(s.start)).unwrap_or(1);
            b.problem_at_line(origin.to_path_buf(), line, e.message().trim().to_owned());
            return Err(b.into_error());
        }
    };
    let policy = b.build(raw);
    match policy {
        Some(p) if b.problems.is_empty() => Ok(p),
        _ => Err(b.into_error()),
    }
}

impl Builder<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        self.lines.line(span.start)
    }

    fn err(&mut self, span: Range<usize>, reason: impl Into<String>) {
        let line = self.line(span);
        self.problem_at_line(self.file.to_path_buf(), line, reason.into());
    }

    fn problem_at_line(&mut self, file: PathBuf, line: usize, reason: String) {
        self.problems.push(Problem { file, line, reason });
    }

    fn into_error(mut self) -> RulesError {
        self.problems
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        self.problems.dedup();
        RulesError::Invalid {
            problems: self.problems,
        }
    }

    fn build(&mut self, raw: RawRules) -> Option<Policy> {
        let mode = match &raw.mode {
            None => Mode::Enforce,
            Some(m) => self.mode(m).unwrap_or(Mode::Enforce),
        };
        let internal_domains = self.internal_domains(&raw.internal_domains);
        let webhook = raw.alert.as_ref().and_then(|a| {
            let url = a.get_ref().webhook.get_ref().trim();
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() > "https://".len()
                && !url.contains(char::is_whitespace);
            if !ok {
                self.err(
                    a.get_ref().webhook.span(),
                    format!("webhook `{url}` is not an http:// or https:// URL"),
                );
            }
            ok.then(|| Arc::<str>::from(url))
        });
        let block_text = match &raw.block_text {
            Some(t) if t.get_ref().trim().is_empty() => {
                self.err(t.span(), "block_text is empty");
                Arc::from(DEFAULT_BLOCK_TEXT)
            }
            Some(t) => Arc::from(t.get_ref().as_str()),
            None => Arc::from(DEFAULT_BLOCK_TEXT),
        };

        let (groups, pattern_groups) = self.groups(&raw);
        let lexicon_specs = self.lexicons(&raw);
        let lexicon_terms = lexicon_specs.iter().map(|l| l.terms.len()).sum();

        let mut ids: HashSet<String> = HashSet::new();
        let mut rules = Vec::new();
        for barrier in &raw.barriers {
            if let Some(r) = self.barrier(barrier, mode, &mut ids) {
                rules.push(r);
            }
        }
        for rule in &raw.rules {
            if let Some(r) = self.rule(rule, mode, &mut ids) {
                rules.push(r);
            }
        }

        if let (Some(line), true) = (self.uses_party_class, internal_domains.is_empty()) {
            self.problem_at_line(
                self.file.to_path_buf(),
                line,
                "`internal`/`external` need `internal_domains` at the top of the file".into(),
            );
        }
        if let (Some(line), None) = (self.uses_alert, &webhook) {
            self.problem_at_line(
                self.file.to_path_buf(),
                line,
                "this rule alerts but the file has no `[alert] webhook`".into(),
            );
        }
        if let Err(e) = self.parties.build() {
            self.problem_at_line(self.file.to_path_buf(), 1, format!("JID globs: {e}"));
        }
        for (field, scanner) in [("body", &mut self.body), ("subject", &mut self.subject)] {
            if let Err(e) = scanner.finish() {
                let file = self.file.to_path_buf();
                self.problems.push(Problem {
                    file,
                    line: 1,
                    reason: format!("{field} regexes: {e}"),
                });
            }
        }
        let lexicons = match Lexicons::build(&lexicon_specs) {
            Ok(l) => l,
            Err(e) => {
                self.problem_at_line(self.file.to_path_buf(), 1, format!("lexicons: {e}"));
                return None;
            }
        };
        let detectors = match Detectors::new() {
            Ok(d) => d,
            Err(e) => {
                self.problem_at_line(self.file.to_path_buf(), 1, format!("detectors: {e}"));
                return None;
            }
        };
        Some(Policy {
            origin: self.file.to_path_buf(),
            sources: std::mem::take(&mut self.sources),
            mode,
            internal_domains,
            parties: std::mem::take(&mut self.parties),
            groups,
            pattern_groups,
            lexicon_count: lexicon_specs.len(),
            lexicon_terms,
            lexicons,
            detectors,
            body: std::mem::take(&mut self.body),
            subject: std::mem::take(&mut self.subject),
            rules,
            webhook,
            block_text,
        })
    }

    fn mode(&mut self, m: &Spanned<String>) -> Option<Mode> {
        match m.get_ref().as_str() {
            "enforce" => Some(Mode::Enforce),
            "monitor" => Some(Mode::Monitor),
            other => {
                self.err(
                    m.span(),
                    format!("mode `{other}` is not `enforce` or `monitor`"),
                );
                None
            }
        }
    }

    fn internal_domains(&mut self, raw: &[Spanned<String>]) -> Vec<String> {
        let mut out = Vec::new();
        for d in raw {
            let v = crate::jid::prepare_domain(d.get_ref().trim());
            if v.is_empty() || v.contains(['@', '/', '*', '?', ' ']) {
                self.err(
                    d.span(),
                    format!("internal domain `{}` is not a domain", d.get_ref()),
                );
            } else {
                out.push(v);
            }
        }
        out
    }

    fn groups(&mut self, raw: &RawRules) -> (Vec<Group>, Vec<Vec<GroupId>>) {
        let mut groups = Vec::new();
        let mut members: Vec<(GroupId, usize)> = Vec::new();
        if let Some(g) = &raw.groups {
            for (name, list) in g.get_ref() {
                if !valid_name(name) {
                    self.err(
                        list.span(),
                        format!(
                            "group name `{name}` may only use letters, digits, `-`, `_` and `.`"
                        ),
                    );
                    continue;
                }
                if list.get_ref().is_empty() {
                    self.err(list.span(), format!("group `{name}` has no members"));
                }
                let id = groups.len();
                groups.push(Group { name: name.clone() });
                self.groups.insert(name.clone(), id);
                for m in list.get_ref() {
                    match PartyPattern::parse(m.get_ref()) {
                        Ok(p) => members.push((id, self.parties.intern(p))),
                        Err(reason) => self.err(m.span(), format!("group `{name}`: {reason}")),
                    }
                }
            }
        }
        let mut pattern_groups: Vec<Vec<GroupId>> = Vec::new();
        for (g, p) in members {
            if pattern_groups.len() <= p {
                pattern_groups.resize_with(p + 1, Vec::new);
            }
            if let Some(v) = pattern_groups.get_mut(p) {
                if !v.contains(&g) {
                    v.push(g);
                }
            }
        }
        (groups, pattern_groups)
    }

    fn lexicons(&mut self, raw: &RawRules) -> Vec<LexiconSpec> {
        let mut specs = Vec::new();
        for lex in &raw.lexicons {
            let l = lex.get_ref();
            let id = l.id.get_ref();
            if !valid_name(id) {
                self.err(
                    l.id.span(),
                    format!("lexicon id `{id}` may only use letters, digits, `-`, `_` and `.`"),
                );
                continue;
            }
            if self.lexicon_ids.contains_key(id) {
                self.err(l.id.span(), format!("lexicon `{id}` is defined twice"));
                continue;
            }
            let terms = match (&l.file, &l.terms) {
                (Some(_), Some(_)) | (None, None) => {
                    self.err(
                        lex.span(),
                        format!("lexicon `{id}` needs exactly one of `file` or `terms`"),
                    );
                    continue;
                }
                (None, Some(t)) => {
                    let terms: Vec<String> =
                        t.get_ref().iter().map(|s| s.trim().to_owned()).collect();
                    if terms.iter().any(String::is_empty) {
                        self.err(t.span(), format!("lexicon `{id}` has an empty term"));
                    }
                    terms
                }
                (Some(f), None) => match self.lexicon_file(f) {
                    Some(t) => t,
                    None => continue,
                },
            };
            let terms: Vec<String> = terms.into_iter().filter(|t| !t.is_empty()).collect();
            if terms.is_empty() {
                self.err(lex.span(), format!("lexicon `{id}` has no terms"));
                continue;
            }
            self.lexicon_ids.insert(id.clone(), specs.len());
            specs.push(LexiconSpec {
                terms,
                whole_word: l.whole_word.unwrap_or(true),
                case_insensitive: l.case_insensitive.unwrap_or(true),
            });
        }
        specs
    }

    /// One term per line; blank lines and lines starting with `#` are skipped.
    fn lexicon_file(&mut self, f: &Spanned<String>) -> Option<Vec<String>> {
        let path = self.dir.join(f.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.sources.push(path);
                Some(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned)
                        .collect(),
                )
            }
            Err(e) => {
                self.err(
                    f.span(),
                    format!("cannot read lexicon file {}: {e}", path.display()),
                );
                None
            }
        }
    }

    fn new_id(&mut self, id: &Spanned<String>, ids: &mut HashSet<String>) -> Option<RuleId> {
        let s = id.get_ref();
        if !valid_name(s) {
            self.err(
                id.span(),
                format!("id `{s}` may only use letters, digits, `-`, `_` and `.`"),
            );
            return None;
        }
        if !ids.insert(s.clone()) {
            self.err(id.span(), format!("id `{s}` is used twice"));
            return None;
        }
        Some(RuleId::new(s))
    }

    fn severity(&mut self, s: &Option<Spanned<String>>) -> Option<Severity> {
        let s = s.as_ref()?;
        let v = Severity::parse(s.get_ref());
        if v.is_none() {
            self.err(
                s.span(),
                format!(
                    "severity `{}` is not low, medium, high or critical",
                    s.get_ref()
                ),
            );
        }
        v
    }

    fn rule_mode(&mut self, file_mode: Mode, m: &Option<Spanned<String>>) -> bool {
        // A file in monitor mode is a dry run as a whole: no rule in it enforces.
        let own = m.as_ref().and_then(|m| self.mode(m));
        file_mode == Mode::Monitor || own == Some(Mode::Monitor)
    }

    fn barrier(
        &mut self,
        raw: &Spanned<RawBarrier>,
        mode: Mode,
        ids: &mut HashSet<String>,
    ) -> Option<Rule> {
        let b = raw.get_ref();
        let id = self.new_id(&b.id, ids);
        let severity = self.severity(&b.severity);
        let monitor = self.rule_mode(mode, &b.mode);
        let alert = b.alert.unwrap_or(false);
        if alert {
            self.uses_alert.get_or_insert(self.line(raw.span()));
        }
        let names = b.between.get_ref();
        let [a, c] = names.as_slice() else {
            self.err(b.between.span(), "`between` names exactly two groups");
            return None;
        };
        if a.get_ref() == c.get_ref() {
            self.err(b.between.span(), "`between` names the same group twice");
            return None;
        }
        let ga = self.group_ref(a);
        let gc = self.group_ref(c);
        let text = self.text(&b.text, "text");
        let (id, ga, gc) = (id?, ga?, gc?);
        let pair = |x: GroupId, y: GroupId| {
            Condition::All(vec![
                Condition::Party(Side::From, vec![PartyRef::Group(x)]),
                Condition::Party(Side::To, vec![PartyRef::Group(y)]),
            ])
        };
        Some(Rule {
            id,
            condition: Condition::All(vec![
                // A message, or entering a room where the other side is.
                Condition::Any(vec![
                    Condition::Kind(vec![StanzaKind::Message]),
                    Condition::RoomJoin,
                ]),
                Condition::Any(vec![pair(ga, gc), pair(gc, ga)]),
            ]),
            action: RuleAction::Block,
            severity,
            text,
            period: DEFAULT_PERIOD,
            alert,
            monitor,
            barrier: true,
            retention: None,
        })
    }

    fn group_ref(&mut self, name: &Spanned<String>) -> Option<GroupId> {
        let g = self.groups.get(name.get_ref()).copied();
        if g.is_none() {
            self.err(
                name.span(),
                format!("no group `{}` in [groups]", name.get_ref()),
            );
        }
        g
    }

    fn text(&mut self, t: &Option<Spanned<String>>, key: &str) -> Option<Arc<str>> {
        let t = t.as_ref()?;
        if t.get_ref().trim().is_empty() {
            self.err(t.span(), format!("`{key}` is empty"));
            return None;
        }
        Some(Arc::from(t.get_ref().as_str()))
    }

    fn rule(
        &mut self,
        raw: &Spanned<RawRule>,
        mode: Mode,
        ids: &mut HashSet<String>,
    ) -> Option<Rule> {
        let r = raw.get_ref();
        let id = self.new_id(&r.id, ids);
        let action = RuleAction::parse(r.action.get_ref());
        if action.is_none() {
            self.err(
                r.action.span(),
                format!(
                    "action `{}` is not allow, flag, alert, redact, block or disclaimer",
                    r.action.get_ref()
                ),
            );
        }
        let severity = self.severity(&r.severity);
        let monitor = self.rule_mode(mode, &r.mode);
        let redacting = action == Some(RuleAction::Redact);
        let condition = self.condition(&r.when, 0, redacting);
        let action = action?;
        let alert = action == RuleAction::Alert || r.alert.unwrap_or(false);
        if alert {
            self.uses_alert.get_or_insert(self.line(raw.span()));
        }
        let text = self.text(&r.text, "text");
        match (action, &r.text) {
            (RuleAction::Block | RuleAction::Disclaimer, _) => {}
            (_, Some(t)) => self.err(
                t.span(),
                "`text` applies to block and disclaimer rules only",
            ),
            _ => {}
        }
        if action == RuleAction::Disclaimer && text.is_none() && r.text.is_none() {
            self.err(raw.span(), "a disclaimer rule needs the notice in `text`");
        }
        let period = match (&r.period, action) {
            (None, _) => DEFAULT_PERIOD,
            (Some(p), RuleAction::Disclaimer) => match parse_period(p.get_ref()) {
                Some(d) => d,
                None => {
                    self.err(
                        p.span(),
                        format!("period `{}` is not like 30m, 24h or 7d", p.get_ref()),
                    );
                    DEFAULT_PERIOD
                }
            },
            (Some(p), _) => {
                self.err(p.span(), "`period` applies to disclaimer rules only");
                DEFAULT_PERIOD
            }
        };
        let retention = r.retention.as_ref().and_then(|c| {
            let name = c.get_ref();
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                && name != "permanent";
            if !ok {
                self.err(
                    c.span(),
                    format!("retention class `{name}`: use letters, digits, '-' and '_' (not `permanent`)"),
                );
            }
            ok.then(|| Arc::from(name.as_str()))
        });
        let condition = condition?;
        if redacting && !condition.has_positive_text() {
            self.err(
                r.when.span(),
                "a redact rule needs a body or subject condition saying what to redact",
            );
        }
        Some(Rule {
            id: id?,
            condition,
            action,
            severity,
            text,
            period,
            alert,
            monitor,
            barrier: false,
            retention,
        })
    }

    fn condition(
        &mut self,
        raw: &Spanned<RawCondition>,
        depth: usize,
        redacting: bool,
    ) -> Option<Condition> {
        if depth > MAX_DEPTH {
            self.err(
                raw.span(),
                format!("conditions nest deeper than {MAX_DEPTH} levels"),
            );
            return None;
        }
        let c = raw.get_ref();
        let mut parts: Vec<Option<Condition>> = Vec::new();
        if let Some(d) = &c.direction {
            parts.push(match d.get_ref().as_str() {
                "outbound" => Some(Condition::Direction(Direction::Outbound)),
                "inbound" => Some(Condition::Direction(Direction::Inbound)),
                other => {
                    self.err(
                        d.span(),
                        format!("direction `{other}` is not `outbound` or `inbound`"),
                    );
                    None
                }
            });
        }
        if let Some(f) = &c.from {
            parts.push(self.party(Side::From, f));
        }
        if let Some(t) = &c.to {
            parts.push(self.party(Side::To, t));
        }
        if let Some(k) = &c.kind {
            parts.push(self.kinds(k));
        }
        if let Some(t) = &c.stanza_type {
            parts.push(self.types(t));
        }
        if let Some(t) = &c.body {
            parts.push(self.text_condition(Field::Body, t, redacting));
        }
        if let Some(t) = &c.subject {
            parts.push(self.text_condition(Field::Subject, t, redacting));
        }
        if let Some(e) = &c.e2ee {
            parts.push(self.e2ee(e));
        }
        for (list, is_all) in [(&c.all, true), (&c.any, false)] {
            let Some(list) = list else { continue };
            if list.get_ref().is_empty() {
                self.err(
                    list.span(),
                    if is_all {
                        "`all` is empty"
                    } else {
                        "`any` is empty"
                    },
                );
                parts.push(None);
                continue;
            }
            let subs: Vec<Option<Condition>> = list
                .get_ref()
                .iter()
                .map(|s| self.condition(s, depth + 1, redacting))
                .collect();
            let subs: Option<Vec<Condition>> = subs.into_iter().collect();
            parts.push(subs.map(|s| {
                if is_all {
                    Condition::All(s)
                } else {
                    Condition::Any(s)
                }
            }));
        }
        if let Some(n) = &c.not {
            // Under `not`, text is what must be absent: never what a redact rule masks.
            parts.push(
                self.condition(n, depth + 1, false)
                    .map(|c| Condition::Not(Box::new(c))),
            );
        }
        if parts.is_empty() {
            self.err(raw.span(), "empty condition: say what the rule matches");
            return None;
        }
        let parts: Vec<Condition> = parts.into_iter().collect::<Option<_>>()?;
        Some(match <[Condition; 1]>::try_from(parts) {
            Ok([one]) => one,
            Err(parts) => Condition::All(parts),
        })
    }

    fn party(&mut self, side: Side, list: &Spanned<OneOrMany>) -> Option<Condition> {
        let mut refs = Vec::new();
        let mut ok = true;
        if list.get_ref().0.is_empty() {
            self.err(list.span(), "empty list of parties");
            return None;
        }
        for s in &list.get_ref().0 {
            let s = s.trim();
            let r = match s {
                "internal" => Some(PartyRef::Internal),
                "external" => Some(PartyRef::External),
                _ => match s.strip_prefix("group:") {
                    Some(name) => match self.groups.get(name.trim()) {
                        Some(&g) => Some(PartyRef::Group(g)),
                        None => {
                            self.err(
                                list.span(),
                                format!("no group `{}` in [groups]", name.trim()),
                            );
                            None
                        }
                    },
                    None => match PartyPattern::parse(s) {
                        Ok(p) => Some(PartyRef::Pattern(self.parties.intern(p))),
                        Err(reason) => {
                            self.err(list.span(), reason);
                            None
                        }
                    },
                },
            };
            if matches!(r, Some(PartyRef::Internal | PartyRef::External)) {
                self.uses_party_class.get_or_insert(self.line(list.span()));
            }
            match r {
                Some(r) => refs.push(r),
                None => ok = false,
            }
        }
        ok.then_some(Condition::Party(side, refs))
    }

    fn kinds(&mut self, list: &Spanned<OneOrMany>) -> Option<Condition> {
        let mut kinds = Vec::new();
        for k in &list.get_ref().0 {
            match k.as_str() {
                "message" => kinds.push(StanzaKind::Message),
                "presence" => kinds.push(StanzaKind::Presence),
                "iq" => kinds.push(StanzaKind::Iq),
                other => {
                    self.err(
                        list.span(),
                        format!("kind `{other}` is not message, presence or iq"),
                    );
                    return None;
                }
            }
        }
        if kinds.is_empty() {
            self.err(list.span(), "empty list of kinds");
            return None;
        }
        Some(Condition::Kind(kinds))
    }

    fn types(&mut self, list: &Spanned<OneOrMany>) -> Option<Condition> {
        let types = list.get_ref().0.clone();
        if types.is_empty() {
            self.err(list.span(), "empty list of types");
            return None;
        }
        for t in &types {
            let known = MESSAGE_TYPES.contains(&t.as_str())
                || PRESENCE_TYPES.contains(&t.as_str())
                || IQ_TYPES.contains(&t.as_str());
            if !known {
                self.err(
                    list.span(),
                    format!("type `{t}` is not a message, presence or iq type"),
                );
                return None;
            }
        }
        Some(Condition::Type(types))
    }

    fn e2ee(&mut self, e: &Spanned<RawE2ee>) -> Option<Condition> {
        Some(Condition::E2ee(match e.get_ref() {
            RawE2ee::Present(true) => E2eeCond::Any,
            RawE2ee::Present(false) => E2eeCond::None,
            RawE2ee::Schemes(list) => {
                let mut out = Vec::new();
                for s in list {
                    match E2ee::parse(s) {
                        Some(x) => out.push(x),
                        None => {
                            self.err(e.span(), format!("e2ee `{s}` is not omemo, openpgp or otr"));
                            return None;
                        }
                    }
                }
                if out.is_empty() {
                    self.err(e.span(), "empty list of e2ee schemes");
                    return None;
                }
                E2eeCond::Schemes(out)
            }
        }))
    }

    fn text_condition(
        &mut self,
        field: Field,
        t: &Spanned<RawText>,
        redacting: bool,
    ) -> Option<Condition> {
        let raw = t.get_ref();
        let given = [
            raw.regex.is_some(),
            raw.lexicon.is_some(),
            raw.detector.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            self.err(
                t.span(),
                "a text condition takes exactly one of `regex`, `lexicon` or `detector`",
            );
            return None;
        }
        let scanner = match field {
            Field::Body => &mut self.body,
            Field::Subject => &mut self.subject,
        };
        let probe: Result<Probe, (Range<usize>, String)> = if let Some(re) = &raw.regex {
            scanner
                .add_regex(re.get_ref())
                .map_err(|e| (re.span(), format!("bad regex: {e}")))
                .and_then(|p| {
                    if !redacting {
                        return Ok(p);
                    }
                    // Redaction must make progress and must not chase its own mask.
                    let Probe::Regex(i) = p else { return Ok(p) };
                    match scanner.regex(i) {
                        Some(r) if r.is_match("") => {
                            Err((re.span(), "a redact regex must not match empty text".into()))
                        }
                        Some(r) if r.is_match(MASK.encode_utf8(&mut [0; 4])) => Err((
                            re.span(),
                            format!("a redact regex must not match the mask character {MASK}"),
                        )),
                        _ => Ok(p),
                    }
                })
        } else if let Some(l) = &raw.lexicon {
            match self.lexicon_ids.get(l.get_ref()) {
                Some(&id) => Ok(scanner.add_lexicon(id)),
                None => Err((l.span(), format!("no lexicon `{}` is defined", l.get_ref()))),
            }
        } else if let Some(d) = &raw.detector {
            match Detector::parse(d.get_ref()) {
                Some(det) => Ok(scanner.add_detector(det)),
                None => Err((
                    d.span(),
                    format!(
                        "detector `{}` is not payment-card, iban, us-ssn or email",
                        d.get_ref()
                    ),
                )),
            }
        } else {
            return None;
        };
        match probe {
            Ok(p) => Some(Condition::Text(field, p)),
            Err((span, reason)) => {
                self.err(span, reason);
                None
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `90s`, `30m`, `24h`, `7d`.
pub(crate) fn parse_period(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: u64 = s.get(..s.len() - unit.len_utf8())?.trim().parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_period("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_period("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_period("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_period("0h"), None);
        assert_eq!(parse_period("h"), None);
        assert_eq!(parse_period("5w"), None);
        assert_eq!(parse_period(""), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("pci-card.v2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
    }
}
