//! The inspector Custos runs in production: policy, then the archive, then the verdict on
//! the wire.
//!
//! ```text
//!  stanza ──▶ policy.evaluate ──▶ archive.append (awaits the durable ack)
//!                                        │ ok                     │ failed
//!                                        ▼                        ▼
//!                          forward / redact / refuse     refuse with <internal-server-error/>
//!                          + alert (async) + disclaimer  (on_failure = "block", the default)
//!                                                        or deliver, loudly (on_failure = "deliver")
//! ```
//!
//! What is archived: message stanzas that carry content — a body, a subject or an
//! end-to-end-encrypted payload — in both directions, blocked ones included. Chat states,
//! receipts and markers carry no content and are not. A message seen twice (carbons, two
//! users both behind Custos, several resources of one user) is archived once; MAM query
//! results are replays of history and never archived again.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custos_archive::{Archive, EventRecord, MessageRecord, NewRecord, SessionId};
use custos_policy::{DisclaimerTracker, PolicyHandle, Subject, Verdict};
use tracing::{error, info, warn};

use crate::alerts::AlertSender;
use crate::inspect::{Decision, Direction, Injections, Inspected, Inspector, Outcome, SessionInfo};
use crate::reply::{stanza_error, ErrorType};
use crate::stanza::{E2ee, ForwardKind, StanzaKind, StanzaView};
use crate::xml::{Element, Node};

/// What to do with a message the archive could not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnArchiveFailure {
    /// Refuse it with an error to its sender; nothing unarchived is delivered.
    Block,
    /// Deliver it anyway and log an error: an explicit per-deployment choice.
    Deliver,
}

pub struct Pipeline {
    policy: Option<PolicyHandle>,
    archive: Option<Archive>,
    on_failure: OnArchiveFailure,
    alerts: Option<AlertSender>,
    seen: Mutex<RecentMessages>,
    disclaimers: Mutex<DisclaimerTracker>,
}

impl Pipeline {
    pub fn new(
        policy: Option<PolicyHandle>,
        archive: Option<Archive>,
        on_failure: OnArchiveFailure,
        alerts: Option<AlertSender>,
    ) -> Pipeline {
        if on_failure == OnArchiveFailure::Deliver && archive.is_some() {
            warn!("archive.on_failure = \"deliver\": messages the archive cannot write will be delivered unarchived");
        }
        Pipeline {
            policy,
            archive,
            on_failure,
            alerts,
            seen: Mutex::new(RecentMessages::new(100_000, Duration::from_secs(600))),
            disclaimers: Mutex::new(DisclaimerTracker::new(100_000)),
        }
    }

    async fn archive_event(&self, event: EventRecord) {
        if let Some(archive) = &self.archive {
            if let Err(err) = archive.append(NewRecord::Event(event)).await {
                error!(cause = %err, "archive failed to record a session event");
            }
        }
    }
}

/// The message a stanza carries and which way it went from the user's point of view: a
/// carbon carries a copy of a message sent or received by another of the user's clients.
struct Content<'a> {
    view: &'a StanzaView,
    direction: Direction,
    /// A MAM result: a replay of history, evaluated but never archived again.
    replay: bool,
    carbon: bool,
}

fn content<'a>(view: &'a StanzaView, direction: Direction) -> Content<'a> {
    match &view.forwarded {
        Some(fwd) => Content {
            view: &fwd.inner,
            direction: match fwd.kind {
                ForwardKind::CarbonSent => Direction::Outbound,
                ForwardKind::CarbonReceived => Direction::Inbound,
                ForwardKind::MamResult { .. } => direction,
            },
            replay: matches!(fwd.kind, ForwardKind::MamResult { .. }),
            carbon: true,
        },
        None => Content {
            view,
            direction,
            replay: false,
            carbon: false,
        },
    }
}

fn subject<'a>(c: &Content<'a>) -> Option<Subject<'a>> {
    let kind = match c.view.kind {
        StanzaKind::Message => custos_policy::StanzaKind::Message,
        StanzaKind::Presence => custos_policy::StanzaKind::Presence,
        StanzaKind::Iq => custos_policy::StanzaKind::Iq,
        StanzaKind::Nonza => return None,
    };
    Some(Subject {
        direction: match c.direction {
            Direction::Outbound => custos_policy::Direction::Outbound,
            Direction::Inbound => custos_policy::Direction::Inbound,
        },
        kind,
        stanza_type: c.view.stanza_type.as_deref(),
        from: c.view.from.as_deref(),
        to: c.view.to.as_deref(),
        body: c.view.body.as_deref(),
        subject: c.view.subject.as_deref(),
        e2ee: c.view.e2ee.map(|e| match e {
            E2ee::Omemo => custos_policy::E2ee::Omemo,
            E2ee::OpenPgp => custos_policy::E2ee::Openpgp,
            E2ee::Otr => custos_policy::E2ee::Otr,
        }),
    })
}

fn e2ee_name(e: E2ee) -> &'static str {
    match e {
        E2ee::Omemo => "omemo",
        E2ee::OpenPgp => "openpgp",
        E2ee::Otr => "otr",
    }
}

fn action(a: custos_policy::Action) -> custos_archive::Action {
    match a {
        custos_policy::Action::Allow => custos_archive::Action::Allow,
        custos_policy::Action::Flag => custos_archive::Action::Flag,
        custos_policy::Action::Redact => custos_archive::Action::Redact,
        custos_policy::Action::Block => custos_archive::Action::Block,
    }
}

fn severity(s: custos_policy::Severity) -> &'static str {
    match s {
        custos_policy::Severity::Low => "low",
        custos_policy::Severity::Medium => "medium",
        custos_policy::Severity::High => "high",
        custos_policy::Severity::Critical => "critical",
    }
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

fn has_content(view: &StanzaView) -> bool {
    view.kind == StanzaKind::Message
        && view.stanza_type.as_deref() != Some("error")
        && (view.body.is_some() || view.subject.is_some() || view.e2ee.is_some())
}

/// Identifies one message however it is seen again: from the sender's outbound stream,
/// from each recipient's inbound stream, or as a carbon. Group chat echoes come back
/// from the room with the sender's nickname, so a room message is keyed by the room.
fn message_key(c: &Content<'_>, hasher: &RandomState) -> u64 {
    let v = c.view;
    let mut h = hasher.build_hasher();
    let from = v.from.as_deref().map(bare).unwrap_or("");
    let to = v.to.as_deref().map(bare).unwrap_or("");
    if v.stanza_type.as_deref() == Some("groupchat") {
        let room = match c.direction {
            Direction::Outbound => to,
            Direction::Inbound => from,
        };
        ("groupchat", room).hash(&mut h);
    } else {
        ("chat", from, to).hash(&mut h);
    }
    // With an id the content is left out: a redacted copy delivered to a recipient
    // behind Custos is the same message as the sender's original.
    match v.origin_id.as_deref().or(v.id.as_deref()) {
        Some(id) => ("id", id).hash(&mut h),
        None => ("content", &v.body, &v.subject).hash(&mut h),
    }
    h.finish()
}

/// Keys of recently archived messages, bounded in count and age.
struct RecentMessages {
    hasher: RandomState,
    seen: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl RecentMessages {
    fn new(capacity: usize, ttl: Duration) -> Self {
        RecentMessages {
            hasher: RandomState::new(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// True the first time `key` is offered within the window.
    fn first_sighting(&mut self, key: u64, now: Instant) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            if self.order.len() < self.capacity && now.duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key, now);
        self.order.push_back((key, now));
        true
    }

    /// Forgets `key` again (its archiving failed, so a retry must be archived).
    fn forget(&mut self, key: u64) {
        self.seen.remove(&key);
    }
}

impl Inspector for Pipeline {
    async fn inspect(&self, item: Inspected<'_>) -> Outcome {
        let c = content(item.view, item.direction);
        let verdict: Option<Verdict> = match (&self.policy, subject(&c)) {
            (Some(policy), Some(subject)) => Some(policy.current().evaluate(&subject)),
            _ => None,
        };
        if let (Some(alerts), Some(v)) = (&self.alerts, &verdict) {
            for alert in &v.alerts {
                alerts.send(alert);
            }
        }
        if let Some(archive) = &self.archive {
            if !c.replay && has_content(c.view) {
                let (key, first) = {
                    let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    let key = message_key(&c, &seen.hasher);
                    (key, seen.first_sighting(key, Instant::now()))
                };
                if first {
                    let record = message_record(&item, &c, verdict.as_ref());
                    if let Err(err) = archive.append(NewRecord::Message(record)).await {
                        self.seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .forget(key);
                        match self.on_failure {
                            OnArchiveFailure::Block => {
                                error!(cause = %err, "archive write failed; message refused, not delivered");
                                return refuse(
                                    &item,
                                    ErrorType::Wait,
                                    "internal-server-error",
                                    "The message could not be archived and was not delivered. Try again later.",
                                );
                            }
                            OnArchiveFailure::Deliver => {
                                error!(cause = %err, "archive write failed; delivering UNARCHIVED message (archive.on_failure = \"deliver\")");
                            }
                        }
                    }
                }
            }
        }
        let Some(verdict) = verdict else {
            return Outcome::forward();
        };
        let mut outcome = match verdict.action {
            custos_policy::Action::Allow | custos_policy::Action::Flag => Outcome::forward(),
            custos_policy::Action::Redact => Outcome {
                decision: Decision::Replace(redact(
                    &item.stanza.root,
                    c.carbon,
                    verdict.delivered_body.as_deref(),
                    verdict.delivered_subject.as_deref(),
                )),
                inject: Injections::default(),
            },
            custos_policy::Action::Block => {
                info!(rules = ?verdict.rules.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "stanza blocked by policy");
                let text = verdict
                    .block_text
                    .as_deref()
                    .unwrap_or("Blocked by policy.");
                refuse(&item, ErrorType::Modify, "policy-violation", text)
            }
        };
        // A refused message reaches nobody, so there is nobody to notify yet; asking the
        // tracker would mark the conversation as notified without a notice.
        let delivered = !matches!(outcome.decision, Decision::Refuse { .. });
        if let (Some(request), true) = (&verdict.disclaimer, delivered) {
            let due = self
                .disclaimers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .should_send_request(request, Instant::now());
            if due {
                outcome
                    .inject
                    .to_upstream
                    .push(disclaimer(&request.to, &request.text));
            }
        }
        outcome
    }

    async fn session_bound(&self, session: &SessionInfo) {
        if let Some(id) = SessionIdentity::of(session) {
            self.archive_event(EventRecord::SessionStart {
                session: id.session,
                jid: id.jid,
                client_addr: id.client_addr,
                resource: id.resource,
            })
            .await;
        }
    }

    async fn session_ended(&self, session: &SessionInfo, reason: &str) {
        if let Some(id) = SessionIdentity::of(session) {
            self.archive_event(EventRecord::SessionEnd {
                session: id.session,
                jid: id.jid,
                client_addr: id.client_addr,
                resource: id.resource,
                reason: reason.to_owned(),
            })
            .await;
        }
    }
}

/// What session events record about a bound session.
struct SessionIdentity {
    session: SessionId,
    jid: String,
    client_addr: String,
    resource: String,
}

impl SessionIdentity {
    /// `None` before resource binding: a session that never bound has no one to record.
    fn of(session: &SessionInfo) -> Option<SessionIdentity> {
        let jid = session.jid.clone()?;
        let resource = jid
            .split_once('/')
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default();
        Some(SessionIdentity {
            session: SessionId(session.id.to_string()),
            jid,
            client_addr: session.client_addr.to_string(),
            resource,
        })
    }
}

fn message_record(
    item: &Inspected<'_>,
    c: &Content<'_>,
    verdict: Option<&Verdict>,
) -> MessageRecord {
    let v = c.view;
    let outcome = match verdict {
        Some(verdict) => custos_archive::Outcome {
            action: action(verdict.action),
            rules: verdict
                .rules
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            delivered_body: verdict.delivered_body.clone(),
            severity: verdict.severity.map(|s| severity(s).to_owned()),
            e2ee: v.e2ee.map(|e| e2ee_name(e).to_owned()),
        },
        None => custos_archive::Outcome {
            action: custos_archive::Action::Allow,
            rules: Vec::new(),
            delivered_body: None,
            severity: None,
            e2ee: v.e2ee.map(|e| e2ee_name(e).to_owned()),
        },
    };
    MessageRecord {
        direction: match c.direction {
            Direction::Outbound => custos_archive::Direction::Outbound,
            Direction::Inbound => custos_archive::Direction::Inbound,
        },
        session: SessionId(item.session.id.to_string()),
        from: v.from.clone().unwrap_or_default(),
        to: v.to.clone().unwrap_or_default(),
        stanza_type: v.stanza_type.clone().unwrap_or_else(|| "normal".into()),
        id: v.id.clone(),
        origin_id: v.origin_id.clone(),
        stanza_id: v.stanza_ids.first().map(|(id, _)| id.clone()),
        thread: v.thread.clone(),
        subject: v.subject.clone(),
        body: v.body.clone(),
        stanza: item.stanza.raw.to_vec(),
        outcome,
    }
}

/// The stanza error back to the sender, and nothing delivered.
fn refuse(item: &Inspected<'_>, error_type: ErrorType, condition: &str, text: &str) -> Outcome {
    let error = stanza_error(
        &item.stanza.root,
        item.view.from.as_deref(),
        item.view.to.as_deref(),
        error_type,
        condition,
        Some(text),
    );
    Outcome {
        decision: Decision::Refuse { error },
        inject: Injections::default(),
    }
}

/// The stanza with its body and subject replaced by the redacted text; for a carbon, the
/// forwarded message inside it.
fn redact(root: &Element, carbon: bool, body: Option<&str>, subject: Option<&str>) -> Vec<u8> {
    let mut stanza = root.clone();
    let target = if carbon {
        forwarded_message(&mut stanza)
    } else {
        Some(&mut stanza)
    };
    if let Some(message) = target {
        let ns = message.ns.clone();
        for node in message.children.iter_mut() {
            if let Node::Element(child) = node {
                if child.ns != ns {
                    continue;
                }
                match (child.name.as_str(), body, subject) {
                    ("body", Some(text), _) => child.set_text(text),
                    ("subject", _, Some(text)) => child.set_text(text),
                    _ => {}
                }
            }
        }
        // An HTML body (XEP-0071) would deliver the unredacted text beside the redacted one.
        message
            .retain_children(|c| c.name != "html" || c.ns != "http://jabber.org/protocol/xhtml-im");
    }
    let mut out = Vec::new();
    stanza.write_to(&mut out);
    out
}

fn forwarded_message(stanza: &mut Element) -> Option<&mut Element> {
    stanza
        .children_mut()
        .find(|c| c.name == "sent" || c.name == "received" || c.name == "result")?
        .children_mut()
        .find(|c| c.name == "forwarded")?
        .children_mut()
        .find(|c| c.name == "message")
}

fn disclaimer(to: &str, text: &str) -> Vec<u8> {
    let id = format!("custos-notice-{}", crate::stream::new_stream_id());
    let message = Element::new("message", crate::stream::NS_CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_attr("id", id)
        .with_child(Element::new("body", crate::stream::NS_CLIENT).with_text(text));
    let mut out = Vec::new();
    message.write_to(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_messages_dedup_within_window_and_evict() {
        let mut r = RecentMessages::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert!(r.first_sighting(1, t));
        assert!(!r.first_sighting(1, t));
        assert!(r.first_sighting(2, t));
        // Capacity 2: a third key evicts the oldest.
        assert!(r.first_sighting(3, t));
        assert!(r.first_sighting(1, t));
        r.forget(1);
        assert!(r.first_sighting(1, t));
        // Age: everything older than the window is forgotten.
        let mut r = RecentMessages::new(10, Duration::from_secs(1));
        assert!(r.first_sighting(7, t));
        assert!(r.first_sighting(7, t + Duration::from_secs(2)));
    }
}
