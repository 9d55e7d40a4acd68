//! `custos policy check` and `custos policy test`: one call each.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{RulesError, TestIoError};
use crate::policy::{Policy, PolicySummary};
use crate::subject::{Direction, E2ee, RoomFacts, StanzaKind, Subject};
use crate::verdict::{Action, AlertEvent, DisclaimerRequest, RuleId, Severity};

/// Input lines longer than this are reported and skipped, not buffered without bound.
pub const MAX_LINE: usize = 4 << 20;

/// Validates a rules file (and the lexicon files it names).
pub fn check(path: &Path) -> Result<PolicySummary, RulesError> {
    Policy::load(path).map(|p| p.summary())
}

/// One input line of `policy test`. Unknown keys are ignored so that lines exported
/// from elsewhere (with `seq`, `time`, …) can be replayed as they are.
#[derive(Debug, Deserialize)]
struct TestInput {
    direction: Direction,
    #[serde(default = "message")]
    kind: StanzaKind,
    #[serde(rename = "type")]
    stanza_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    body: Option<String>,
    subject: Option<String>,
    #[allow(dead_code)] // accepted for completeness; threads do not change a verdict
    thread: Option<String>,
    e2ee: Option<E2ee>,
    /// Group chat: the real JID behind the occupant that sent it.
    from_real: Option<String>,
    /// Group chat: the real JIDs of the room's occupants it reaches.
    #[serde(default)]
    to_real: Vec<String>,
    /// An outbound presence that enters a room.
    #[serde(default)]
    join: bool,
}

fn message() -> StanzaKind {
    StanzaKind::Message
}

#[derive(Debug, Serialize)]
struct TestOutput<'a> {
    action: Action,
    rules: &'a [RuleId],
    /// The body as delivered: redacted when redacted, absent when blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<Severity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    alerts: &'a [AlertEvent],
    #[serde(skip_serializing_if = "Option::is_none")]
    disclaimer: Option<&'a DisclaimerRequest>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    monitor: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    monitored: &'a [RuleId],
    #[serde(skip_serializing_if = "Option::is_none")]
    would_action: Option<Action>,
}

#[derive(Debug, Serialize)]
struct ErrorLine<'a> {
    line: usize,
    error: &'a str,
}

/// A bad input line: its 1-based number and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// What a `policy test` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestStats {
    /// Messages evaluated (one output verdict line each).
    pub evaluated: usize,
    pub allowed: usize,
    pub flagged: usize,
    pub redacted: usize,
    pub blocked: usize,
    /// Lines that could not be evaluated (one output error line each).
    pub errors: Vec<LineError>,
}

/// Reads JSON lines, writes one verdict line per message. A bad line produces
/// `{"line":N,"error":"…"}` in its place and the run goes on; blank lines are skipped.
pub fn run_test(
    policy: &Policy,
    mut input: impl BufRead,
    mut out: impl Write,
) -> Result<TestStats, TestIoError> {
    let mut stats = TestStats::default();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(TestIoError::Read)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let too_long = buf.len() > MAX_LINE && buf.last() != Some(&b'\n');
        if too_long {
            skip_rest_of_line(&mut input)?;
            report(
                &mut out,
                &mut stats,
                line_no,
                format!("line longer than {MAX_LINE} bytes"),
            )?;
            continue;
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(e) => {
                report(&mut out, &mut stats, line_no, format!("not UTF-8: {e}"))?;
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let parsed: TestInput = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                report(&mut out, &mut stats, line_no, e.to_string())?;
                continue;
            }
        };
        let to_real: Vec<&str> = parsed.to_real.iter().map(String::as_str).collect();
        let subject = Subject {
            direction: parsed.direction,
            kind: parsed.kind,
            stanza_type: parsed.stanza_type.as_deref(),
            from: parsed.from.as_deref(),
            to: parsed.to.as_deref(),
            body: parsed.body.as_deref(),
            subject: parsed.subject.as_deref(),
            e2ee: parsed.e2ee,
            room: RoomFacts {
                from_real: parsed.from_real.as_deref(),
                to_real: &to_real,
                join: parsed.join,
                groupchat: parsed.stanza_type.as_deref() == Some("groupchat"),
            },
        };
        let v = policy.evaluate(&subject);
        let delivered = v.action != Action::Block;
        let output = TestOutput {
            action: v.action,
            rules: &v.rules,
            body: delivered
                .then(|| v.delivered_body.as_deref().or(subject.body))
                .flatten(),
            subject: delivered
                .then(|| v.delivered_subject.as_deref().or(subject.subject))
                .flatten(),
            severity: v.severity,
            text: v.block_text.as_deref(),
            alerts: &v.alerts,
            disclaimer: v.disclaimer.as_ref(),
            monitor: v.monitor_only,
            monitored: &v.monitored,
            would_action: (v.would_action != v.action).then_some(v.would_action),
        };
        write_json(&mut out, &output)?;
        stats.evaluated += 1;
        match v.action {
            Action::Allow => stats.allowed += 1,
            Action::Flag => stats.flagged += 1,
            Action::Redact => stats.redacted += 1,
            Action::Block => stats.blocked += 1,
        }
    }
    out.flush().map_err(TestIoError::Write)?;
    Ok(stats)
}

fn skip_rest_of_line(input: &mut impl BufRead) -> Result<(), TestIoError> {
    // Bounded by the input: each pass consumes at least one byte or ends.
    loop {
        let chunk = input.fill_buf().map_err(TestIoError::Read)?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = chunk.len();
                input.consume(len);
            }
        }
    }
}

fn report(
    out: &mut impl Write,
    stats: &mut TestStats,
    line: usize,
    reason: String,
) -> Result<(), TestIoError> {
    write_json(
        out,
        &ErrorLine {
            line,
            error: &reason,
        },
    )?;
    stats.errors.push(LineError { line, reason });
    Ok(())
}

fn write_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), TestIoError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| TestIoError::Write(e.into()))?;
    out.write_all(b"\n").map_err(TestIoError::Write)
}
