//! Custos policy: the rules file, compiled matchers, groups and information barriers,
//! verdicts, and hot reload. It knows no sockets and no storage: alerts and disclaimers
//! are returned in the [`Verdict`] for the caller to send.
//!
//! # Layout
//!
//! ```text
//!  rules.toml ─▶ raw (serde + spans) ─▶ compile (validate, FILE:LINE errors) ─▶ Policy
//!                                                                                 │
//!  Subject (one stanza) ─▶ Policy::evaluate:                                      │
//!     from/to ─▶ jid::PartyIndex (patterns, groups, internal?)  ┐                 │
//!     body    ─▶ scan: RegexSet + lexicon automata + detectors  ├─▶ conditions ─▶ Verdict
//!     subject ─▶ scan (same, once)                              ┘   (every rule)    │
//!                                                     redact (mask, re-check) ◀─────┘
//!  PolicyHandle (arc-swap) ◀── reload() ◀── Watcher (poll mtime+len+hash)
//! ```
//!
//! - [`raw`](crate) — the file as written, with spans for line numbers.
//! - `compile` — validation into a [`Policy`]; collects every problem.
//! - `jid` — JID normalisation, party patterns (JID, domain, glob), the party index.
//! - `lexicon` — all keyword lexicons merged into Aho-Corasick automata.
//! - `detect` — built-in detectors: payment card (Luhn), IBAN, US SSN, e-mail.
//! - `scan` — one pass per text field, and again over its view as a reader sees it
//!   (`custos-text`) where that differs; `condition` — the compiled condition tree.
//! - `policy` — [`Policy::evaluate`], combination of matches, redaction.
//! - `verdict` — [`Verdict`], [`Action`], [`AlertEvent`], [`DisclaimerRequest`].
//! - `disclaimer` — [`DisclaimerTracker`], once per conversation per period.
//! - `reload` — [`PolicyHandle`] and [`Watcher`].
//! - `testrun` — [`check`] and [`run_test`] behind `custos policy check|test`.
//!
//! The rules language and its semantics are documented in `docs/policy.md`.

#![forbid(unsafe_code)]

mod compile;
mod condition;
mod detect;
mod disclaimer;
mod error;
mod jid;
mod lexicon;
mod policy;
mod raw;
mod reload;
mod scan;
mod subject;
mod testrun;
mod verdict;

pub use detect::Detector;
pub use disclaimer::DisclaimerTracker;
pub use error::{Problem, RulesError, TestIoError};
pub use jid::{prepare_domain, prepare_local};
pub use policy::{Mode, Policy, PolicySummary, MASK};
pub use reload::{PolicyHandle, ReloadSummary, Watcher};
pub use subject::{Direction, E2ee, RoomFacts, StanzaKind, Subject};
pub use testrun::{check, run_test, LineError, TestStats, MAX_LINE};
pub use verdict::{
    Action, AlertEvent, ConversationKey, DisclaimerRequest, RuleId, Severity, Verdict,
};
