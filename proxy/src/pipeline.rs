//! The inspector Custos runs in production: policy, then the archive, then the verdict on
//! the wire.
//!
//! ```text
//!  stanza ──▶ content (believed wrapper? inner message : the stanza itself)
//!         ──▶ policy.evaluate (body, subject, then every other text) ──▶ Verdict
//!         ──▶ archive.append, one record per copy as observed (awaits the durable ack)
//!                                        │ ok                     │ failed
//!                                        ▼                        ▼
//!                          forward / redact / refuse     refuse with <internal-server-error/>
//!                          + alert (once per message)    (on_failure = "block", the default)
//!                          + disclaimer                  or deliver, loudly (on_failure = "deliver")
//! ```
//!
//! What is archived: every message stanza that carries content — a body or subject in any
//! language, XHTML-IM text, an out-of-band link, an end-to-end-encrypted payload, a
//! correction or retraction, a forwarded message at any depth, words in any other part
//! (an extension Custos does not know, or words put where only ids belong) — in both
//! directions, blocked and error ones included, once per session and stream it crossed.
//! Nothing is dropped as a duplicate at capture: copies (carbons, archive replays, the
//! recipient's copy of a message between two users behind Custos, room echoes) are each
//! recorded with their own leg and verdict, and grouped into one logical message by
//! [`identity`] in the views. Chat states, receipts and markers without words in them
//! carry no content and are not recorded. `docs/capture.md` states the model.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custos_archive::retention::RetentionPolicy;
use custos_archive::{
    Archive, Capture, EventRecord, LiveCopy, MessageRecord, NewRecord, SessionId, Text, Via,
};
use custos_policy::{DisclaimerTracker, PolicyHandle, Subject, Verdict};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::alerts::AlertSender;
use crate::files::Files;
use crate::inspect::{
    Decision, Direction, Durable, Injections, Inspected, Inspection, Inspector, Outcome,
    SessionInfo, NOT_ARCHIVED,
};
use crate::relay_state::{bare, Copy};
use crate::reply::{stanza_error, ErrorType};
use crate::rooms::{RoomContext, Rooms};
use crate::stanza::{
    bind2_tag, bound_resource, created_room, fetched_texts, forwarded_texts, is_clients_address,
    published_texts, stanza_attr_words, E2ee, EditKind, ExtraText, StanzaKind, StanzaView,
    BIND2_TAG, BOUND_RESOURCE, NS_ADDRESS, OWN_TEXT, ROOM_NODE, TO_RESOURCE,
};
use crate::xml::Element;

/// Rule ids Custos itself records beside policy's.
pub const RULE_INVALID_FROM: &str = "custos:invalid-from";
pub const RULE_FORGED_WRAPPER: &str = "custos:forged-wrapper";
pub const RULE_REPLAY_ONLY: &str = "custos:replay-only";
/// An archive replay whose live copy the archive could not look for yet (its index is
/// catching up or lags past what memory holds): flagged as a replay-only one is, under
/// a name that says it is not known to be one.
pub const RULE_REPLAY_UNVERIFIED: &str = "custos:replay-unverified";
pub const RULE_FILE_NOT_ARCHIVED: &str = "custos:file-not-archived";

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
    /// The alerts that went out, by logical message, rule and webhook: a message seen
    /// again (carbons, the recipient's copy, a replay) raises each alert once.
    alerted: Mutex<RecentMessages>,
    disclaimers: Mutex<DisclaimerTracker>,
    /// The configured retention classes, to resolve the classes rules name.
    retention: RetentionPolicy,
    /// Who is behind the group-chat rooms sessions are in.
    rooms: Rooms,
    /// Fetches files shared from the firm's own upload services.
    files: Option<Files>,
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
            alerted: Mutex::new(RecentMessages::new(100_000, Duration::from_secs(3600))),
            disclaimers: Mutex::new(DisclaimerTracker::new(100_000)),
            retention: RetentionPolicy::keep_forever(),
            rooms: Rooms::new(),
            files: None,
        }
    }

    /// Archive the files messages share from these upload services (`[files]`).
    pub fn with_files(mut self, files: Files) -> Pipeline {
        self.files = Some(files);
        self
    }

    /// The retention classes rules may name (`[retention]`).
    pub fn with_retention(mut self, retention: RetentionPolicy) -> Pipeline {
        self.retention = retention;
        self
    }

    async fn archive_event(&self, event: EventRecord) {
        if let Some(archive) = &self.archive {
            if let Err(err) = archive.append(NewRecord::Event(event)).await {
                error!(cause = %err, "archive failed to record a session event");
            }
        }
    }
}

/// The message a stanza carries, from the user's point of view: a believed carbon or
/// archive result carries a copy of another message; anything else is its own content.
struct Content<'a> {
    view: &'a StanzaView,
    /// Sent (outbound) or received (inbound) by the user behind Custos.
    direction: Direction,
    via: Via,
    /// A wrapper nobody vouches for: recorded as the stanza itself, its wrapped text kept.
    forged_wrapper: bool,
    extra: Vec<ExtraText>,
    /// The room this presence says the user created is closed, as policy refuses its
    /// name.
    room_closed: bool,
}

fn content<'a>(item: &Inspected<'a>) -> Content<'a> {
    let outer = item.view;
    let believed = |via| {
        outer.forwarded.as_ref().map(|fwd| {
            let inner: &StanzaView = &fwd.inner;
            let direction = match via {
                Via::CarbonSent => Direction::Outbound,
                Via::CarbonReceived => Direction::Inbound,
                // A replay of the user's own message is one they sent.
                _ => match (&inner.from, &item.session.jid) {
                    (Some(from), Some(jid)) if same_bare(from, jid) => Direction::Outbound,
                    _ => Direction::Inbound,
                },
            };
            Content {
                view: inner,
                direction,
                via,
                // The server vouches for its wrapper, not for one a client put inside.
                forged_wrapper: inner.forwarded.is_some(),
                extra: texts_of(inner),
                room_closed: false,
            }
        })
    };
    let wrapped = match item.copy {
        Copy::CarbonSent => believed(Via::CarbonSent),
        Copy::CarbonReceived => believed(Via::CarbonReceived),
        Copy::Mam => believed(Via::Mam),
        Copy::Direct | Copy::ForgedWrapper => None,
    };
    if let Some(c) = wrapped {
        return c;
    }
    // An iq's words are another person's only when it goes to or comes from another
    // account's client, or is a request from another account's bare JID (which its
    // server, an outsider's too, writes as it likes): not the server's answer on its
    // user's behalf, nor one between the account's own clients.
    let request = matches!(outer.stanza_type.as_deref(), Some("get" | "set"));
    let persons = |peer: &str| {
        is_clients_address(peer)
            || (item.direction == Direction::Inbound && request && bare(peer).contains('@'))
    };
    let unread_iq = outer.kind == StanzaKind::Iq && {
        let peer = match item.direction {
            Direction::Outbound => &outer.to,
            Direction::Inbound => &outer.from,
        };
        match (peer, &item.session.jid) {
            (Some(peer), Some(jid)) => !persons(peer) || same_bare(peer, jid),
            (Some(peer), None) => !persons(peer),
            (None, _) => true,
        }
    };
    // What the account publishes to a pubsub node (its own or a service's) is its words
    // to every reader of the node; what it fetches from another's node is that node's
    // words to the user.
    let mut extra = match (unread_iq, item.direction) {
        (false, _) => texts_of(outer),
        (true, Direction::Outbound) => published_texts(&item.stanza.root),
        (true, Direction::Inbound) => {
            let own = match (&outer.from, &item.session.jid) {
                (Some(from), Some(jid)) => same_bare(from, jid),
                (None, _) => true,
                (Some(_), None) => false,
            };
            if own {
                Vec::new()
            } else {
                fetched_texts(&item.stanza.root)
            }
        }
    };
    // An error coming in from a client's address is often its server's (a bounce), or
    // the other client's words: an `error` text, judged, and the error recorded when a
    // rule matched it. One the user's client sends is its words. Neither is part of the
    // identity, as no `other` text is, so both legs of one error are one message.
    if outer.kind == StanzaKind::Iq
        && item.direction == Direction::Inbound
        && outer.stanza_type.as_deref() == Some("error")
    {
        let root = &item.stanza.root;
        for t in &mut extra {
            if root
                .children()
                .nth(t.child)
                .is_some_and(|c| c.is("error", &root.ns))
            {
                "error".clone_into(&mut t.kind);
            }
        }
    }
    // The resource the session binds is in the address of all it sends: the server's
    // answer that binds it (an iq, or Bind2's SASL2 success) is judged on it, as a
    // nickname is.
    if item.direction == Direction::Inbound
        && matches!(outer.kind, StanzaKind::Iq | StanzaKind::Nonza)
        && item.session.chose_resource
    {
        if let Some(jid) = &item.session.jid {
            extra.extend(bound_resource(&item.stanza.root, jid));
        }
    }
    // A Bind2 tag taken out of the user's request, once the session is bound: what the
    // user tried to bind, on the record as words they sent.
    if item.direction == Direction::Outbound
        && outer.kind == StanzaKind::Nonza
        && item.session.jid.is_some()
    {
        extra.extend(bind2_tag(&item.stanza.root));
    }
    // The resource a presence goes to is a nickname the user takes in a room only in an
    // available presence the user sends; one coming in goes to the user's own resource.
    if outer.kind == StanzaKind::Presence
        && !(item.direction == Direction::Outbound && directed_available(outer))
    {
        extra.retain(|t| t.child != TO_RESOURCE);
    }
    Content {
        view: outer,
        direction: item.direction,
        via: Via::Direct,
        forged_wrapper: outer.forwarded.is_some(),
        extra,
        room_closed: false,
    }
}

/// Every text a message carries for people: its own, and those of a carbon or archive
/// result wrapped in it that nobody vouches for (and of any wrapped in that one), as
/// `forwarded-…`.
fn texts_of(view: &StanzaView) -> Vec<ExtraText> {
    let mut out = view.extra.clone();
    if let Some(fwd) = &view.forwarded {
        forwarded_texts(&fwd.inner, fwd.child, &mut out);
    }
    out
}

impl Content<'_> {
    /// A message with something to record, or an iq between two clients with words in it
    /// (a presence is recorded only when a rule matched its texts: see `judge`).
    fn has_content(&self) -> bool {
        let texts = self.extra.iter().any(ExtraText::makes_content);
        match self.view.kind {
            StanzaKind::Message => self.view.has_content() || texts,
            StanzaKind::Iq => texts,
            StanzaKind::Presence | StanzaKind::Nonza => false,
        }
    }

    /// What a Bind2 exchange stands for, as the iq type of its RFC 6120 counterpart: the
    /// SASL2 success binding a resource the client named (`result`), judged and recorded
    /// as the answer to a bind request is, or the client's request with a tag that was
    /// taken out (`set`). No stanza, but the answer and request that bind the session's
    /// address. `None` for anything else.
    fn bind2(&self) -> Option<&'static str> {
        if self.view.kind != StanzaKind::Nonza {
            return None;
        }
        self.extra.iter().find_map(|t| match t.child {
            BOUND_RESOURCE => Some("result"),
            BIND2_TAG => Some("set"),
            _ => None,
        })
    }
}

/// Whether policy refuses (blocks or redacts) the name of a room the user created, on
/// its own, as words the user sends: the reason a presence that reports it is refused.
fn room_name_refused(policy: &PolicyHandle, c: &Content<'_>) -> bool {
    let Some(name) = c.extra.iter().find(|t| t.child == ROOM_NODE) else {
        return false;
    };
    with_subject(c, &RoomContext::default(), |subject| {
        let judged = |body: Option<&str>| {
            let verdict = policy.current().evaluate(&Subject {
                direction: custos_policy::Direction::Outbound,
                from: subject.to,
                to: subject.from,
                body,
                subject: None,
                ..subject
            });
            matches!(
                verdict.action,
                custos_policy::Action::Block | custos_policy::Action::Redact
            )
        };
        // Refused for the name, not for who the parties are.
        judged(Some(&name.text)) && !judged(None)
    })
    .unwrap_or(false)
}

/// A room the user created whose name policy refuses: the user's client gets the entry's
/// refusal from the room's address; the room gets its owner's request to destroy it (a
/// script could have made it persistent before its answer reached Custos, or someone
/// else could have entered it), then the user's unavailable presence.
fn refused_room(item: &Inspected<'_>) -> Outcome {
    let room = item.view.from.clone().unwrap_or_default();
    let bare = room.split('/').next().unwrap_or_default().to_owned();
    let mut error = Element::new("presence", item.stanza.root.ns.clone())
        .with_attr("type", "error")
        .with_attr("from", &room);
    if let Some(to) = item.view.to.as_deref() {
        error.set_attr("to", to);
    }
    error.push_child(Element::new("x", crate::rooms::NS_MUC));
    error.push_child(
        Element::new("error", item.stanza.root.ns.clone())
            .with_attr("type", "cancel")
            .with_child(Element::new(
                "policy-violation",
                crate::stream::NS_STANZA_ERRORS,
            ))
            .with_child(
                Element::new("text", crate::stream::NS_STANZA_ERRORS)
                    .with_attr("xml:lang", "en")
                    .with_text(ROOM_NAME_TEXT),
            ),
    );
    let destroy = Element::new("iq", item.stanza.root.ns.clone())
        .with_attr("type", "set")
        .with_attr("id", DESTROY_ID)
        .with_attr("to", &bare)
        .with_child(
            Element::new("query", crate::stanza::NS_MUC_OWNER).with_child(
                Element::new("destroy", crate::stanza::NS_MUC_OWNER).with_child(
                    Element::new("reason", crate::stanza::NS_MUC_OWNER).with_text(ROOM_NAME_TEXT),
                ),
            ),
        );
    let leave = Element::new("presence", item.stanza.root.ns.clone())
        .with_attr("type", "unavailable")
        .with_attr("to", &room);
    let bytes = |e: &Element| {
        let mut out = Vec::new();
        e.write_to(&mut out);
        out
    };
    Outcome {
        decision: Decision::Replace(bytes(&error)),
        inject: Injections {
            to_client: Vec::new(),
            to_upstream: vec![bytes(&destroy), bytes(&leave)],
        },
    }
}

/// The id of the request destroying a room closed for its name; its answer is Custos's.
const DESTROY_ID: &str = "custos-refused-room";

/// What a client that configures a room too early, or one closed for its name, is told.
const CONFIGURE_EARLY_TEXT: &str =
    "Configure a room once it has answered your entry; a room closed by the firm's policy takes no configuration.";

/// What a user whose new room's name policy refuses is told.
const ROOM_NAME_TEXT: &str =
    "This room's name is refused by the firm's policy; the room was closed. Choose another name.";

/// Whether a text redaction changed is in an address the user named: the resource of the
/// session's own address (the one it binds, or a Bind2 tag it asked for), or the name
/// of a room it created. No redaction can change an address.
fn in_named_address(c: &Content<'_>, delivered_extra: &[Option<String>]) -> bool {
    c.extra
        .iter()
        .zip(delivered_extra)
        .any(|(t, d)| d.is_some() && matches!(t.child, BOUND_RESOURCE | BIND2_TAG | ROOM_NODE))
}

fn same_bare(a: &str, b: &str) -> bool {
    bare(a).eq_ignore_ascii_case(bare(b))
}

/// Presence types that are not availability: anything else is taken as available, as
/// some servers do with a type they do not know (an entry into a room).
const NOT_AVAILABLE: [&str; 7] = [
    "unavailable",
    "error",
    "probe",
    "subscribe",
    "subscribed",
    "unsubscribe",
    "unsubscribed",
];

/// Whether the stanza is a presence saying its sender is gone (offline, or out of a room).
fn going_offline(view: &StanzaView) -> bool {
    view.kind == StanzaKind::Presence && view.stanza_type.as_deref() == Some("unavailable")
}

/// Whether the stanza is an iq or presence error coming in to the user.
fn error_coming_in(item: &Inspected<'_>) -> bool {
    item.direction == Direction::Inbound
        && matches!(item.view.kind, StanzaKind::Iq | StanzaKind::Presence)
        && item.view.stanza_type.as_deref() == Some("error")
        && item.copy == Copy::Direct
}

/// The defined conditions of a stanza error (RFC 6120 §8.3.3).
const STANZA_CONDITIONS: &[&str] = &[
    "bad-request",
    "conflict",
    "feature-not-implemented",
    "forbidden",
    "gone",
    "internal-server-error",
    "item-not-found",
    "jid-malformed",
    "not-acceptable",
    "not-allowed",
    "not-authorized",
    "policy-violation",
    "recipient-unavailable",
    "redirect",
    "registration-required",
    "remote-server-not-found",
    "remote-server-timeout",
    "resource-constraint",
    "service-unavailable",
    "subscription-required",
    "undefined-condition",
    "unexpected-request",
];

/// An error stanza with nothing but its addresses, its id (unless it holds words), its
/// type and its error's type and defined condition, emptied: no word of its sender's
/// reaches the user.
fn bare_error(stanza: &Element) -> Vec<u8> {
    const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    let mut out = Element::new(stanza.name.clone(), stanza.ns.clone());
    for name in ["to", "from", "id", "type"] {
        if let Some(value) = stanza.attr(name).filter(|v| !stanza_attr_words(name, v)) {
            out.set_attr(name, value);
        }
    }
    let error = stanza.child("error", &stanza.ns);
    let mut bare = Element::new("error", stanza.ns.clone());
    if let Some(kind) = error
        .and_then(|e| e.attr("type"))
        .filter(|t| ["auth", "cancel", "continue", "modify", "wait"].contains(t))
    {
        bare.set_attr("type", kind);
    }
    let condition = error
        .and_then(|e| {
            e.children()
                .find(|c| c.ns == NS_STANZAS && STANZA_CONDITIONS.contains(&&*c.name))
        })
        .map_or("undefined-condition", |c| &*c.name);
    bare.push_child(Element::new(condition.to_owned(), NS_STANZAS));
    out.push_child(bare);
    out.to_bytes()
}

/// Whether the stanza is an available presence addressed to someone (a room entry, a
/// status update in a room, or a directed presence).
fn directed_available(view: &StanzaView) -> bool {
    view.kind == StanzaKind::Presence
        && view
            .stanza_type
            .as_deref()
            .is_none_or(|t| !NOT_AVAILABLE.contains(&t))
}

/// What the rooms say about the content: who is behind the room address it goes to or
/// comes from. An outbound available presence to a full JID reserves its room entry (see
/// [`Rooms::enter`]); the caller cancels it when the presence is refused.
fn room_context(rooms: &Rooms, item: &Inspected<'_>, c: &Content<'_>) -> RoomContext {
    let v = c.view;
    let Some(account) = item.session.jid.as_deref() else {
        return RoomContext::default();
    };
    let groupchat = v.stanza_type.as_deref() == Some("groupchat");
    let mut ctx = match c.direction {
        Direction::Outbound => {
            let Some(to) = v.to.as_deref() else {
                return RoomContext::default();
            };
            if c.via == Via::Direct && directed_available(v) {
                rooms.enter(account, to)
            } else {
                rooms.context(true, account, to, groupchat)
            }
        }
        Direction::Inbound => {
            let Some(from) = v.from.as_deref() else {
                return RoomContext::default();
            };
            rooms.context(false, account, from, groupchat)
        }
    };
    // Mediated invitations and declines (XEP-0045 §7.8) carry words between the inviter
    // and the invitee through the room: the person on the other end is a party.
    if c.via == Via::Direct && v.kind == StanzaKind::Message {
        let x = item.stanza.root.child("x", crate::rooms::NS_MUC_USER);
        for child in x.into_iter().flat_map(Element::children) {
            if !(child.is("invite", crate::rooms::NS_MUC_USER)
                || child.is("decline", crate::rooms::NS_MUC_USER))
            {
                continue;
            }
            match c.direction {
                Direction::Outbound => {
                    if let Some(to) = child.attr("to") {
                        ctx.to_real.push(to.to_owned());
                    }
                }
                Direction::Inbound => {
                    if let (Some(from), None) = (child.attr("from"), &ctx.from_real) {
                        ctx.from_real = Some(from.to_owned());
                    }
                }
            }
        }
    }
    // A stanza sent through a multicast service (XEP-0033) reaches every recipient its
    // addresses list, whatever they say was delivered already: each is a party.
    if c.via == Via::Direct && c.direction == Direction::Outbound {
        let addresses = item
            .stanza
            .root
            .children()
            .filter(|a| a.is("addresses", NS_ADDRESS));
        for address in addresses.flat_map(Element::children) {
            if address.is("address", NS_ADDRESS)
                && matches!(address.attr("type"), Some("to" | "cc" | "bcc"))
            {
                if let Some(jid) = address.attr("jid") {
                    ctx.to_real.push(jid.to_owned());
                }
            }
        }
    }
    ctx
}

fn subject<'a>(c: &'a Content<'a>, room: custos_policy::RoomFacts<'a>) -> Option<Subject<'a>> {
    let kind = match c.view.kind {
        StanzaKind::Message => custos_policy::StanzaKind::Message,
        StanzaKind::Presence => custos_policy::StanzaKind::Presence,
        StanzaKind::Iq => custos_policy::StanzaKind::Iq,
        StanzaKind::Nonza if c.bind2().is_some() => custos_policy::StanzaKind::Iq,
        StanzaKind::Nonza => return None,
    };
    Some(Subject {
        direction: match c.direction {
            Direction::Outbound => custos_policy::Direction::Outbound,
            Direction::Inbound => custos_policy::Direction::Inbound,
        },
        kind,
        // Bind2's exchange is judged as the iq it stands for.
        stanza_type: c.view.stanza_type.as_deref().or_else(|| c.bind2()),
        from: c.view.from.as_deref(),
        to: c.view.to.as_deref(),
        body: c.view.body.as_deref(),
        subject: c.view.subject.as_deref(),
        e2ee: c.view.e2ee.map(|e| match e {
            E2ee::Omemo => custos_policy::E2ee::Omemo,
            E2ee::OpenPgp => custos_policy::E2ee::Openpgp,
            E2ee::Otr => custos_policy::E2ee::Otr,
        }),
        room,
    })
}

/// Whether policy blocks the stanza on its parties and kind alone, whatever it says (an
/// information barrier between its sender and the user).
fn blocked_without_texts(policy: &PolicyHandle, c: &Content<'_>, room: &RoomContext) -> bool {
    with_subject(c, room, |subject| {
        let bare = Subject {
            body: None,
            subject: None,
            ..subject
        };
        policy.current().evaluate(&bare).action == custos_policy::Action::Block
    })
    .unwrap_or(false)
}

/// Calls `f` with what policy judges of the stanza ([`subject`]), the people behind a
/// room it goes to or comes from included.
fn with_subject<R>(
    c: &Content<'_>,
    room: &RoomContext,
    f: impl FnOnce(Subject<'_>) -> R,
) -> Option<R> {
    let to_real: Vec<&str> = room.to_real.iter().map(String::as_str).collect();
    let facts = custos_policy::RoomFacts {
        from_real: room.from_real.as_deref(),
        to_real: &to_real,
        join: room.join,
        groupchat: c.view.stanza_type.as_deref() == Some("groupchat"),
    };
    subject(c, facts).map(f)
}

/// The verdict on every text of the stanza: body and subject, then each other text as a
/// body of its own (a rule cannot be dodged by moving text into another language, XHTML
/// or a link). Returns each other text's redacted form, where it was redacted.
fn evaluate(
    policy: &PolicyHandle,
    c: &Content<'_>,
    room: &RoomContext,
) -> Option<(Verdict, Vec<Option<String>>)> {
    with_subject(c, room, |subject| judge_texts(policy, c, subject))
}

/// [`evaluate`] once the stanza's subject is made.
fn judge_texts(
    policy: &PolicyHandle,
    c: &Content<'_>,
    subject: Subject<'_>,
) -> (Verdict, Vec<Option<String>>) {
    let policy = policy.current();
    let mut verdict = policy.evaluate(&subject);
    let mut delivered = Vec::with_capacity(c.extra.len());
    for text in &c.extra {
        // The resource a session binds goes out in every address it sends from, and the
        // name of a room it created in the room's: they are the user's words to the
        // server and beyond, not the words of the answer that reports them.
        let other = if matches!(text.child, BOUND_RESOURCE | ROOM_NODE) {
            policy.evaluate(&Subject {
                direction: custos_policy::Direction::Outbound,
                from: subject.to,
                to: subject.from,
                body: Some(&text.text),
                subject: None,
                ..subject
            })
        } else {
            policy.evaluate(&Subject {
                body: Some(&text.text),
                subject: None,
                ..subject
            })
        };
        delivered.push(other.delivered_body.clone());
        verdict.absorb(other);
    }
    (verdict, delivered)
}

/// A message with content crossed a leg: its direction, its verdict and each rule hit.
fn count_message(direction: Direction, verdict: Option<&Verdict>) {
    let direction = match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    let action = verdict.map_or(custos_archive::Action::Allow, |v| action(v.action));
    metrics::counter!("custos_messages_total", "direction" => direction, "action" => action.as_str())
        .increment(1);
    for rule in verdict.iter().flat_map(|v| v.rules.iter()) {
        metrics::counter!("custos_rule_hits_total", "rule" => rule.to_string()).increment(1);
    }
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

/// The logical-message identity: every copy of one message computes the same value from
/// what it carries — the sender's outbound stanza, each recipient's inbound copy, carbons,
/// archive replays. It commits to the conversation (sender and recipient accounts, or the
/// room for group chat, whose echoes come from the room), the sender's id (XEP-0359
/// origin-id, else the stanza id) and the content, so two different messages never share
/// one: an id reused for other text is another message. A copy whose content policy
/// changed (redaction) reaches its recipient with other content; its record also carries
/// the identity of what was delivered, which the recipient's copy then matches.
pub fn identity(
    view: &StanzaView,
    direction: Direction,
    body: Option<&str>,
    subject: Option<&str>,
    extra: &[ExtraText],
) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    put("custos-message-v1");
    let from = view.from.as_deref().map(bare).unwrap_or("").to_lowercase();
    let to = view.to.as_deref().map(bare).unwrap_or("").to_lowercase();
    if view.stanza_type.as_deref() == Some("groupchat") {
        put("groupchat");
        put(match direction {
            Direction::Outbound => &to,
            Direction::Inbound => &from,
        });
    } else {
        put(view.stanza_type.as_deref().unwrap_or("normal"));
        put(&from);
        put(&to);
    }
    put(view
        .origin_id
        .as_deref()
        .or(view.id.as_deref())
        .unwrap_or(""));
    put(body.unwrap_or("\u{0}none"));
    put(subject.unwrap_or("\u{0}none"));
    // Unrecognised extensions are recorded and scanned, but left out: servers add their
    // own to the copies they deliver, which must still meet the sender's copy.
    for t in extra
        .iter()
        .filter(|t| !matches!(&*t.kind, "other" | "error"))
    {
        put(&t.kind);
        put(t.lang.as_deref().unwrap_or(""));
        put(&t.text);
    }
    put(view.e2ee.map_or("", e2ee_name));
    match &view.edit {
        Some((kind, target)) => {
            put(edit_kind(*kind).as_str());
            put(target);
        }
        None => put(""),
    }
    // Without a `format!` (and an allocation) per byte: written for every stanza.
    custos_archive::export::hex::encode(&h.finalize()[..16])
}

fn edit_kind(k: EditKind) -> custos_archive::EditKind {
    match k {
        EditKind::Correction => custos_archive::EditKind::Correction,
        EditKind::Retraction => custos_archive::EditKind::Retraction,
        EditKind::Moderation => custos_archive::EditKind::Moderation,
    }
}

/// Keys of recently seen messages, bounded in count and age.
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

    fn key(&self, id: impl std::hash::Hash) -> u64 {
        self.hasher.hash_one(id)
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
}

impl Pipeline {
    /// Policy, the archive and the verdict on the wire for one stanza (see the module
    /// documentation), given what the rooms say about it.
    async fn decide(
        &self,
        item: &Inspected<'_>,
        c: &Content<'_>,
        room: &RoomContext,
    ) -> Inspection {
        let mut durable: Option<Durable> = None;
        let outcome = self.judge(item, c, room, &mut durable).await;
        Inspection { outcome, durable }
    }

    /// [`Pipeline::decide`]'s outcome; the message's record, if it has one, is queued in
    /// `durable`.
    async fn judge(
        &self,
        item: &Inspected<'_>,
        c: &Content<'_>,
        room: &RoomContext,
        durable: &mut Option<Durable>,
    ) -> Outcome {
        let evaluated = match &self.policy {
            Some(policy) => evaluate(policy, c, room),
            None => None,
        };
        let (mut verdict, delivered_extra) = match evaluated {
            Some((v, d)) => (Some(v), d),
            None => (None, Vec::new()),
        };
        // The redacted stanza is settled before the record, which says what was delivered:
        // a redaction that cannot keep every changed text out of the stanza is a block.
        let mut redaction = None;
        if let Some(v) = verdict
            .as_mut()
            .filter(|v| v.action == custos_policy::Action::Redact)
        {
            redaction = redact(item, c, v, &delivered_extra);
            if redaction.is_none() {
                let rules: Vec<&str> = v.rules.iter().map(|r| r.as_str()).collect();
                if in_named_address(c, &delivered_extra) {
                    info!(?rules, "a redacted word is in an address the user named, which no redaction can change; refused instead");
                } else {
                    warn!(
                        ?rules,
                        "a redacted text could not be taken out of the stanza; refused instead"
                    );
                }
                v.action = custos_policy::Action::Block;
                v.block_text = Some(UNREDACTABLE_TEXT.to_owned());
                v.delivered_body = None;
                v.delivered_subject = None;
            }
        }
        // A presence, or a nickname alone, is recorded when a rule matched its texts: a
        // flag, an alert, a redaction or a block on one is on the record like one on a
        // message.
        let recorded = c.has_content()
            || ((c.view.kind != StanzaKind::Nonza || c.bind2().is_some())
                && !c.extra.is_empty()
                && verdict.as_ref().is_some_and(|v| !v.rules.is_empty()));
        if recorded && c.view.kind == StanzaKind::Message {
            count_message(item.direction, verdict.as_ref());
        }
        let ids = recorded.then(|| Identities::of(c, redaction.as_ref().map(|r| &r.identity)));
        let live_copy = match (&self.archive, &ids) {
            (Some(archive), Some(ids)) if c.via == Via::Mam => archive.live_copy(&ids.identity),
            _ => LiveCopy::Recorded,
        };
        // History replayed alerts only when it is not known to have crossed Custos live
        // (the live copy alerted already).
        let alerting = c.via != Via::Mam || live_copy != LiveCopy::Recorded;
        if let (Some(alerts), Some(v), Some(ids), true) = (&self.alerts, &verdict, &ids, alerting) {
            // Each alert once per logical message, and only an alert that goes out marks it
            // sent: a copy that raised none (or others) leaves the way open to a later copy
            // with the same identity whose words the identity leaves out (an extension a
            // server may add, so never part of the identity) and which do raise one.
            let mut alerted = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for alert in &v.alerts {
                let key = alerted.key((&ids.identity, alert.rule.as_str(), &*alert.webhook));
                if alerted.first_sighting(key, now) {
                    alerts.send(alert);
                }
            }
        }
        // The files the message shares from the firm's upload services, fetched before
        // it goes on, so the record holds what the recipient can download.
        let shared = match (&self.files, &self.archive, &ids) {
            (Some(files), Some(_), Some(_)) => {
                let urls = files.wanted(file_addresses(c));
                if urls.is_empty() {
                    Vec::new()
                } else {
                    files.fetch_all(&urls).await
                }
            }
            _ => Vec::new(),
        };
        let file_missing = shared.iter().any(|f| f.error.is_some());
        let refuse_for_file =
            file_missing && self.files.as_ref().is_some_and(Files::block_on_failure);
        if let (Some(archive), Some(ids)) = (&self.archive, ids) {
            let mut record = message_record(item, c, verdict.as_ref(), ids, live_copy);
            record.capture.occupant = occupant(c, room);
            record.capture.files = shared;
            if file_missing {
                record.outcome.rules.push(RULE_FILE_NOT_ARCHIVED.to_owned());
                let at_least = if refuse_for_file {
                    custos_archive::Action::Block
                } else {
                    custos_archive::Action::Flag
                };
                record.outcome.action = max_action(record.outcome.action, at_least);
            }
            if let Some(v) = &verdict {
                record.capture.retention_class = self
                    .retention
                    .choose(v.retention.iter().map(|c| &**c))
                    .unwrap_or_default();
            }
            // A record carrying file contents is awaited here: the relay's window bounds
            // stanza bytes, not the files riding in their records.
            let carries_files = record.capture.files.iter().any(|f| f.content.is_some());
            let submitted = archive.submit(NewRecord::Message(record));
            let on_failure = self.on_failure;
            *durable = Some(Box::pin(async move {
                match submitted.await {
                    Ok(_) => Ok(()),
                    Err(err) => match on_failure {
                        OnArchiveFailure::Block => {
                            error!(cause = %err, "archive write failed; message refused, not delivered");
                            Err(err.to_string())
                        }
                        OnArchiveFailure::Deliver => {
                            error!(cause = %err, "archive write failed; delivering UNARCHIVED message (archive.on_failure = \"deliver\")");
                            Ok(())
                        }
                    },
                }
            }));
            if carries_files {
                if let Err(refused) = settle_now(item, durable).await {
                    return refused;
                }
            }
        }
        if refuse_for_file {
            return refuse(
                item,
                ErrorType::Wait,
                "internal-server-error",
                "The shared file could not be archived, so the message was not delivered. Try again later.",
            );
        }
        if item.claimed_from.is_some() {
            // The relay ends the stream with <invalid-from/>; nothing is delivered.
            return Outcome {
                decision: Decision::Refuse { error: None },
                inject: Injections::default(),
            };
        }
        let Some(verdict) = verdict else {
            return Outcome::forward();
        };
        // A room whose name policy refuses was created all the same (the server answers
        // the entry that creates it): it is destroyed at once, by its owner, and the
        // user leaves it. The user's client is told the entry was refused.
        if c.room_closed {
            info!(rules = ?verdict.rules.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "a room whose name policy refuses was created; it is destroyed");
            return refused_room(item);
        }
        let mut outcome = match verdict.action {
            custos_policy::Action::Allow | custos_policy::Action::Flag => Outcome::forward(),
            custos_policy::Action::Redact => match redaction {
                Some(redaction) => Outcome {
                    decision: Decision::Replace(redaction.bytes),
                    inject: Injections::default(),
                },
                // Unreachable: a redaction that failed turned the verdict into a block.
                None => refuse(
                    item,
                    ErrorType::Modify,
                    "policy-violation",
                    UNREDACTABLE_TEXT,
                ),
            },
            // Going offline is delivered whatever policy says, without its texts: a refused
            // one would leave its sender shown online, in every roster and room, for good.
            custos_policy::Action::Block if going_offline(item.view) => {
                info!(rules = ?verdict.rules.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "an unavailable presence blocked by policy goes without its texts");
                let mut stanza = item.stanza.root.clone();
                let texts: Vec<usize> = c.extra.iter().map(|t| t.child).collect();
                take_out(&mut stanza, &texts);
                let mut bytes = Vec::new();
                stanza.write_to(&mut bytes);
                Outcome {
                    decision: Decision::Replace(bytes),
                    inject: Injections::default(),
                }
            }
            // An error coming in is delivered without its words, its condition kept:
            // dropped, a request would wait for its timeout, and a room's refused entry
            // would show as joining for good.
            custos_policy::Action::Block
                if error_coming_in(item)
                    && !self
                        .policy
                        .as_ref()
                        .is_some_and(|p| blocked_without_texts(p, c, room)) =>
            {
                info!(rules = ?verdict.rules.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "an error blocked by policy goes without its words");
                Outcome {
                    decision: Decision::Replace(bare_error(&item.stanza.root)),
                    inject: Injections::default(),
                }
            }
            custos_policy::Action::Block => {
                info!(rules = ?verdict.rules.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "stanza blocked by policy");
                let text = verdict
                    .block_text
                    .as_deref()
                    .unwrap_or("Blocked by policy.");
                refuse(item, ErrorType::Modify, "policy-violation", text)
            }
        };
        // A refused message reaches nobody, so there is nobody to notify yet; asking the
        // tracker would mark the conversation as notified without a notice.
        let delivered = !matches!(outcome.decision, Decision::Refuse { .. });
        if let (Some(request), true) = (&verdict.disclaimer, delivered) {
            let tracker = || self.disclaimers.lock().unwrap_or_else(|p| p.into_inner());
            // The notice counts as sent only once its message is on its way: when one is
            // due, the message's record is awaited here rather than in the relay's window.
            if tracker().is_due(request, Instant::now()) {
                if let Err(refused) = settle_now(item, durable).await {
                    return refused;
                }
            }
            let due = tracker().should_send_request(request, Instant::now());
            if due {
                outcome.inject.to_upstream.push(disclaimer(
                    &request.to,
                    &request.text,
                    request.room,
                ));
            }
        }
        outcome
    }
}

/// Why an iq that starts or carries a file transfer between two clients is refused: the
/// file would cross without a record (it goes over a direct connection, a relay, or in
/// pieces of its own), where a file shared through the server's upload is archived.
const PEER_FILE_TEXT: &str = "Files sent directly between clients cannot be archived, so they \
     are refused. Share the file through the server instead (HTTP upload).";

/// The kind of file transfer between clients an iq starts or carries, if it does:
/// XEP-0234 Jingle file transfer (an offer, or a content added to a session), XEP-0096
/// stream initiation, XEP-0047 in-band bytestreams, XEP-0065 SOCKS5 bytestreams and
/// XEP-0066 iq-based out-of-band data. Only requests (`set`) are refused; a Jingle call's
/// audio and video are not files and pass.
fn peer_file_transfer(view: &StanzaView, root: &Element) -> Option<&'static str> {
    if view.kind != StanzaKind::Iq || view.stanza_type.as_deref() != Some("set") {
        return None;
    }
    root.children().find_map(|payload| match &*payload.ns {
        // A file-transfer application, or a transport that carries bytes between the two
        // clients whatever application names them (a call's media go over ICE instead).
        "urn:xmpp:jingle:1" if payload.name == "jingle" => payload
            .children()
            .filter(|c| c.is("content", "urn:xmpp:jingle:1"))
            .flat_map(|c| c.children())
            .any(|d| {
                (d.name == "description" && d.ns.starts_with("urn:xmpp:jingle:apps:file-transfer:"))
                    || (d.name == "transport"
                        && (d.ns.starts_with("urn:xmpp:jingle:transports:s5b:")
                            || d.ns.starts_with("urn:xmpp:jingle:transports:ibb:")))
            })
            .then_some("jingle-file-transfer"),
        "http://jabber.org/protocol/si" => Some("stream-initiation"),
        "http://jabber.org/protocol/ibb" => Some("in-band-bytestream"),
        "http://jabber.org/protocol/bytestreams" => Some("socks5-bytestream"),
        "jabber:iq:oob" => Some("iq-oob"),
        _ => None,
    })
}

impl Inspector for Pipeline {
    async fn refuses_words(&self, session: &SessionInfo, text: &str) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        // Read as the record of a refused tag reads it, its whitespace folded.
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        // From the session's domain: its account is not known yet.
        let verdict = policy.current().evaluate(&Subject {
            direction: custos_policy::Direction::Outbound,
            kind: custos_policy::StanzaKind::Iq,
            stanza_type: None,
            from: Some(&session.domain),
            to: None,
            body: Some(&text),
            subject: None,
            e2ee: None,
            room: custos_policy::RoomFacts::default(),
        });
        matches!(
            verdict.action,
            custos_policy::Action::Block | custos_policy::Action::Redact
        )
    }

    async fn inspect(&self, item: Inspected<'_>) -> Inspection {
        if let Some(kind) = peer_file_transfer(item.view, &item.stanza.root) {
            let direction = match item.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            };
            info!(kind, direction, to = ?item.view.to, "a file transfer between clients refused: the file would cross unrecorded");
            metrics::counter!("custos_peer_file_transfers_refused_total", "kind" => kind, "direction" => direction)
                .increment(1);
            return refuse(&item, ErrorType::Cancel, "not-acceptable", PEER_FILE_TEXT).into();
        }
        let mut c = content(&item);
        let direct_presence = item.view.kind == StanzaKind::Presence && item.copy == Copy::Direct;
        if let (Direction::Inbound, true, Some(account)) =
            (item.direction, direct_presence, &item.session.jid)
        {
            // A room this session asked to enter says the session created it: its name
            // is the user's words, shown to everyone who finds or enters the room. One
            // policy refuses is closed: not followed, and not to be configured, from
            // here on.
            // Read only where the room says so, so an ordinary presence takes no lock.
            let created = created_room(&item.stanza.root);
            if let (false, Some(from)) = (created.is_empty(), item.view.from.as_deref()) {
                if self.rooms.asked(account, from) {
                    c.extra.extend(created);
                    c.room_closed = self
                        .policy
                        .as_ref()
                        .is_some_and(|p| room_name_refused(p, &c));
                    if c.room_closed {
                        self.rooms.close(account, from);
                    }
                }
            }
            if !c.room_closed {
                self.rooms.observe(account, &item.stanza.root);
            }
        }
        // A room's owner and administrator requests wait for the room's answer to the
        // session's entry, and a room closed for its name takes none: a script could
        // otherwise keep a room whose name policy refuses (made persistent, its
        // ownership handed on) before Custos can close it.
        if let (Direction::Outbound, StanzaKind::Iq, Some(account), Some(to)) = (
            item.direction,
            item.view.kind,
            item.session.jid.as_deref(),
            item.view.to.as_deref(),
        ) {
            let configures = item.stanza.root.children().any(|q| {
                q.name == "query"
                    && (q.ns == crate::stanza::NS_MUC_OWNER || q.ns == crate::stanza::NS_MUC_ADMIN)
            });
            if configures && !self.rooms.may_configure(account, to) {
                info!(to, "a room's owner or administrator request refused: the room has not answered the entry, or is closed for its name");
                return refuse(&item, ErrorType::Wait, "not-allowed", CONFIGURE_EARLY_TEXT).into();
            }
        }
        // The answer to the request that destroys a room closed for its name is for
        // Custos, not the client.
        if item.direction == Direction::Inbound
            && item.view.kind == StanzaKind::Iq
            && item.view.id.as_deref() == Some(DESTROY_ID)
            && matches!(item.view.stanza_type.as_deref(), Some("result" | "error"))
            && item
                .view
                .from
                .as_deref()
                .is_some_and(|f| self.rooms.is_closed(f))
        {
            if item.view.stanza_type.as_deref() == Some("error") {
                warn!(room = ?item.view.from, "a room closed for its name could not be destroyed; it stays, without this session");
            }
            return Outcome {
                decision: Decision::Refuse { error: None },
                inject: Injections::default(),
            }
            .into();
        }
        let room = room_context(&self.rooms, &item, &c);
        if room.full {
            warn!("a room entry refused: this session, or Custos, follows as many rooms as it can");
            return refuse(
                &item,
                ErrorType::Wait,
                "resource-constraint",
                "Custos cannot follow one more room for this session; leave a room first.",
            )
            .into();
        }
        let mut inspection = self.decide(&item, &c, &room).await;
        if !room.reserved {
            return inspection;
        }
        // An entry reserved its place in the room: a refused one must give it back, so
        // the rare entry that carries a record waits for it here.
        if let Err(refused) = settle_now(&item, &mut inspection.durable).await {
            inspection.outcome = refused;
        }
        if let (Decision::Refuse { .. }, Some(account), Some(to)) = (
            &inspection.outcome.decision,
            &item.session.jid,
            item.view.to.as_deref(),
        ) {
            // The entry did not go to the room: it reserves nothing.
            self.rooms.cancel(account, to);
        }
        inspection
    }

    async fn session_bound(&self, session: &SessionInfo) {
        if let Some(jid) = &session.jid {
            self.rooms.session_bound(jid);
        }
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
        if let Some(jid) = &session.jid {
            self.rooms.session_ended(jid);
        }
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

/// The identity of a copy as observed and, when policy changed its content, of the
/// content delivered.
struct Identities {
    identity: String,
    delivered: Option<String>,
}

impl Identities {
    /// `delivered`: the identity of the redacted stanza, when policy changed the content.
    fn of(c: &Content<'_>, delivered: Option<&String>) -> Identities {
        let v = c.view;
        let identity = identity(
            v,
            c.direction,
            v.body.as_deref(),
            v.subject.as_deref(),
            &c.extra,
        );
        let delivered = delivered.filter(|d| **d != identity).cloned();
        Identities {
            identity,
            delivered,
        }
    }
}

fn message_record(
    item: &Inspected<'_>,
    c: &Content<'_>,
    verdict: Option<&Verdict>,
    ids: Identities,
    live_copy: LiveCopy,
) -> MessageRecord {
    let v = c.view;
    let e2ee = v.e2ee.map(|e| e2ee_name(e).to_owned());
    let mut outcome = match verdict {
        Some(verdict) => custos_archive::Outcome {
            action: action(verdict.action),
            rules: verdict
                .rules
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            delivered_body: verdict.delivered_body.clone(),
            severity: verdict.severity.map(|s| severity(s).to_owned()),
            e2ee,
            would_action: (verdict.would_action > verdict.action)
                .then(|| action(verdict.would_action)),
        },
        None => custos_archive::Outcome {
            action: custos_archive::Action::Allow,
            rules: Vec::new(),
            delivered_body: None,
            severity: None,
            e2ee,
            would_action: None,
        },
    };
    let mut custos_rule = |rule: &str, at_least: custos_archive::Action| {
        outcome.rules.push(rule.to_owned());
        outcome.action = max_action(outcome.action, at_least);
    };
    if item.claimed_from.is_some() {
        custos_rule(RULE_INVALID_FROM, custos_archive::Action::Block);
    }
    if c.forged_wrapper {
        custos_rule(RULE_FORGED_WRAPPER, custos_archive::Action::Flag);
    }
    match live_copy {
        LiveCopy::Absent => custos_rule(RULE_REPLAY_ONLY, custos_archive::Action::Flag),
        LiveCopy::Undetermined => custos_rule(RULE_REPLAY_UNVERIFIED, custos_archive::Action::Flag),
        LiveCopy::Recorded => {}
    }
    let account = item.session.jid.clone().unwrap_or_default();
    MessageRecord {
        direction: match c.direction {
            Direction::Outbound => custos_archive::Direction::Outbound,
            Direction::Inbound => custos_archive::Direction::Inbound,
        },
        session: SessionId(item.session.id.to_string()),
        from: v.from.clone().unwrap_or_default(),
        to: v.to.clone().unwrap_or_default(),
        stanza_type: v.stanza_type.clone().unwrap_or_else(|| {
            match v.kind {
                StanzaKind::Presence => "available",
                // A Bind2 request or answer: the iq it stands for.
                StanzaKind::Nonza => c.bind2().unwrap_or("normal"),
                _ => "normal",
            }
            .into()
        }),
        id: v.id.clone(),
        origin_id: v.origin_id.clone(),
        stanza_id: v.stanza_ids.first().map(|(id, _)| id.clone()),
        thread: v.thread.clone(),
        subject: v.subject.clone(),
        body: v.body.clone(),
        stanza: item.stanza.raw.to_vec(),
        outcome,
        capture: Capture {
            via: c.via,
            account,
            identity: ids.identity,
            delivered_identity: ids.delivered,
            extra: c
                .extra
                .iter()
                .map(|t| Text {
                    kind: t.kind.clone(),
                    lang: t.lang.clone(),
                    text: t.text.clone(),
                })
                .collect(),
            edit: v.edit.as_ref().map(|(kind, target)| custos_archive::Edit {
                kind: edit_kind(*kind),
                target: target.clone(),
            }),
            claimed_from: item.claimed_from.map(str::to_owned),
            retention_class: String::new(),
            occupant: None,
            files: Vec::new(),
        },
    }
}

/// Where the content says a file is: out-of-band and file-sharing addresses, and a body
/// that is one address and nothing else (what clients send with an upload).
fn file_addresses<'a>(c: &'a Content<'a>) -> impl Iterator<Item = &'a str> {
    let body = c
        .view
        .body
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.contains(char::is_whitespace) && b.contains("://"));
    c.extra
        .iter()
        .filter(|t| t.kind == "oob-url" || t.kind == "file-url")
        .map(|t| t.text.as_str())
        .chain(body)
}

/// The person behind the room address of a copy: who sent it, or whom a private message
/// in the room went to.
fn occupant(c: &Content<'_>, room: &RoomContext) -> Option<String> {
    match c.direction {
        Direction::Inbound => room.from_real.clone(),
        Direction::Outbound if c.view.stanza_type.as_deref() != Some("groupchat") => {
            match room.to_real.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            }
        }
        Direction::Outbound => None,
    }
}

fn max_action(a: custos_archive::Action, b: custos_archive::Action) -> custos_archive::Action {
    let rank = |a: custos_archive::Action| match a {
        custos_archive::Action::Allow => 0,
        custos_archive::Action::Flag => 1,
        custos_archive::Action::Redact => 2,
        custos_archive::Action::Block => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The stanza error back to the sender, and nothing delivered.
/// Waits here for the stanza's queued record instead of in the relay's window (`durable`
/// is then empty); `Err` is the refusal when the record could not be written.
async fn settle_now(item: &Inspected<'_>, durable: &mut Option<Durable>) -> Result<(), Outcome> {
    if let Some(pending) = durable.take() {
        if pending.await.is_err() {
            return Err(refuse(
                item,
                ErrorType::Wait,
                "internal-server-error",
                NOT_ARCHIVED,
            ));
        }
    }
    Ok(())
}

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

/// Why a stanza is refused when its redaction cannot be delivered safely.
const UNREDACTABLE_TEXT: &str = "This message could not be redacted safely and was not delivered.";

/// Texts a redaction rewrites where they stand; any other text policy changed goes with
/// the child element of the message that carries it.
const REWRITTEN_IN_PLACE: [&str; 4] = ["body", "subject", "oob-url", "oob-desc"];

/// What a redaction delivers.
struct Redaction {
    bytes: Vec<u8>,
    /// The identity of the delivered content, which the recipient's copy has.
    identity: String,
}

/// The stanza with every redacted text replaced: the primary body and subject, each
/// other-language body and subject and out-of-band link by its own redacted form. A text
/// that cannot be rewritten in place (a reaction, a custom element, an attribute, a
/// forwarded message, a shared file) takes the whole child element that carries it out of
/// the message; the XHTML-IM alternative is removed (it would deliver the unredacted text
/// beside the redacted one). For a believed carbon or replay the forwarded message is
/// changed; a wrapper nobody vouches for loses its wrapped message.
///
/// `None` when a text policy redacted would still be delivered: the caller refuses the
/// stanza instead.
fn redact(
    item: &Inspected<'_>,
    c: &Content<'_>,
    verdict: &Verdict,
    delivered_extra: &[Option<String>],
) -> Option<Redaction> {
    let mut replace: HashMap<(&str, Option<&str>, &str), &str> = HashMap::new();
    // What policy took out: none of it may be in what is delivered.
    let mut redacted: Vec<&str> = Vec::new();
    let v = c.view;
    if let (Some(orig), Some(new)) = (&v.body, &verdict.delivered_body) {
        replace.insert(("body", None, orig.as_str()), new.as_str());
        redacted.push(orig);
    }
    if let (Some(orig), Some(new)) = (&v.subject, &verdict.delivered_subject) {
        replace.insert(("subject", None, orig.as_str()), new.as_str());
        redacted.push(orig);
    }
    let mut removed: Vec<usize> = Vec::new();
    for (t, d) in c.extra.iter().zip(delivered_extra) {
        if let Some(d) = d {
            replace.insert(
                (t.kind.as_str(), t.lang.as_deref(), t.text.as_str()),
                d.as_str(),
            );
            redacted.push(&t.text);
            if !REWRITTEN_IN_PLACE.contains(&t.kind.as_str()) {
                removed.push(t.child);
            }
        }
    }
    let mut stanza = item.stanza.root.clone();
    let message = if c.via == Via::Direct {
        &mut stanza
    } else {
        wrapped_message(&mut stanza, item.view.forwarded.as_ref()?.child)?
    };
    // No redaction takes a word out of the session's own address.
    if in_named_address(c, delivered_extra) {
        return None;
    }
    // An error's condition cannot go with its text: what is left would be no error.
    if removed.iter().any(|&i| {
        message
            .children()
            .nth(i)
            .is_some_and(|child| child.is("error", &message.ns))
    }) {
        return None;
    }
    take_out(message, &removed);
    if c.forged_wrapper {
        message.retain_children(|child| {
            !(child.is("sent", crate::stanza::NS_CARBONS)
                || child.is("received", crate::stanza::NS_CARBONS)
                || child.is("result", crate::stanza::NS_MAM))
        });
    }
    let ns = message.ns.clone();
    for child in message.children_mut() {
        let kind = match (&*child.name, child.ns == ns, &*child.ns) {
            ("body", true, _) => "body",
            ("subject", true, _) => "subject",
            ("x", false, crate::stanza::NS_OOB) => {
                for part in child.children_mut() {
                    let kind = match &*part.name {
                        "url" => "oob-url",
                        "desc" => "oob-desc",
                        _ => continue,
                    };
                    let text = part.text_content();
                    if let Some(new) = replace.get(&(kind, None, text.as_str())) {
                        part.replace_content(*new);
                    }
                }
                continue;
            }
            _ => continue,
        };
        let text = child.text_content();
        let lang = child.lang().map(str::to_owned);
        // The primary text was recorded without its language; try both.
        let new = replace
            .get(&(kind, lang.as_deref(), text.as_str()))
            .or_else(|| replace.get(&(kind, None, text.as_str())));
        if let Some(new) = new {
            child.replace_content(*new);
        }
    }
    message.retain_children(|c| c.name != "html" || c.ns != crate::stanza::NS_XHTML_IM);
    // A shared file's name or address cannot be masked in place: it goes.
    let file_redacted = c
        .extra
        .iter()
        .zip(delivered_extra)
        .any(|(t, d)| d.is_some() && t.kind.starts_with("file-"));
    if file_redacted {
        message.retain_children(|c| {
            !c.is("file-sharing", crate::stanza::NS_SFS)
                && !c.is("reference", crate::stanza::NS_REFERENCE)
        });
    }
    // Read back what is delivered, as its recipient will: an address's resource only
    // where it was read (the nickname a presence takes in a room).
    let delivered = StanzaView::of(message);
    let mut texts = texts_of(&delivered);
    if !c.extra.iter().any(|t| t.child == TO_RESOURCE) {
        texts.retain(|t| t.child != TO_RESOURCE);
    }
    let left = [&delivered.body, &delivered.subject]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(texts.iter().map(|t| t.text.as_str()));
    for text in left {
        if redacted.contains(&text) {
            return None;
        }
    }
    let identity = identity(
        v,
        c.direction,
        delivered.body.as_deref(),
        delivered.subject.as_deref(),
        &texts,
    );
    let mut bytes = Vec::new();
    stanza.write_to(&mut bytes);
    Some(Redaction { bytes, identity })
}

/// Removes the children of `stanza` at the positions `parts` names (by position, so
/// before anything else changes them) and, when it names [`OWN_TEXT`], the text written
/// directly in the stanza and the attributes of its own that hold words.
fn take_out(stanza: &mut Element, parts: &[usize]) {
    let mut at = 0;
    stanza.retain_children(|_| {
        at += 1;
        !parts.contains(&(at - 1))
    });
    if parts.contains(&OWN_TEXT) {
        stanza
            .children
            .retain(|n| !matches!(n, crate::xml::Node::Text(t) if !t.trim().is_empty()));
        stanza
            .attrs
            .retain(|(name, value)| !stanza_attr_words(name, value));
    }
}

/// The message a believed carbon or archive result carries: inside the wrapper at
/// position `wrapper`, the one [`StanzaView`] read.
fn wrapped_message(stanza: &mut Element, wrapper: usize) -> Option<&mut Element> {
    stanza
        .children_mut()
        .nth(wrapper)?
        .child_mut("forwarded", crate::stanza::NS_FORWARD)?
        .children_mut()
        .find(|c| {
            c.name == "message"
                && (c.ns == crate::stanza::NS_CLIENT || c.ns == crate::stanza::NS_SERVER)
        })
}

fn disclaimer(to: &str, text: &str, room: bool) -> Vec<u8> {
    let id = format!("custos-notice-{}", crate::stream::new_stream_id());
    let message = Element::new("message", crate::stream::NS_CLIENT)
        .with_attr("to", to)
        .with_attr("type", if room { "groupchat" } else { "chat" })
        .with_attr("id", id)
        .with_child(Element::new("body", crate::stream::NS_CLIENT).with_text(text));
    let mut out = Vec::new();
    message.write_to(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{parse_element, NsScope};

    /// Identities in archives written before are `{:02x}` per byte; a copy relayed now
    /// must still meet them.
    #[test]
    fn identities_are_written_in_hex_as_before() {
        let bytes: Vec<u8> = (0..=255).collect();
        let before: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let hex = custos_archive::export::hex::encode;
        assert_eq!(hex(&bytes), before);
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn recent_messages_remember_within_window_and_evict() {
        let mut r = RecentMessages::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert!(r.first_sighting(1, t));
        assert!(!r.first_sighting(1, t));
        assert!(r.first_sighting(2, t));
        // Capacity 2: a third key evicts the oldest.
        assert!(r.first_sighting(3, t));
        assert!(r.first_sighting(1, t));
        // Age: everything older than the window is forgotten.
        let mut r = RecentMessages::new(10, Duration::from_secs(1));
        assert!(r.first_sighting(7, t));
        assert!(r.first_sighting(7, t + Duration::from_secs(2)));
    }

    fn view(s: &str) -> StanzaView {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, crate::stanza::NS_CLIENT.to_owned())]);
        StanzaView::of(&parse_element(s, &scope).unwrap())
    }

    fn id_of(s: &str, direction: Direction) -> String {
        let v = view(s);
        identity(
            &v,
            direction,
            v.body.as_deref(),
            v.subject.as_deref(),
            &v.extra,
        )
    }

    fn pipeline(rules: &str) -> Pipeline {
        let path = std::path::Path::new("rules.toml");
        let policy = custos_policy::Policy::from_str(rules, path).unwrap();
        Pipeline::new(
            Some(PolicyHandle::new(path, policy)),
            None,
            OnArchiveFailure::Block,
            None,
        )
    }

    fn session() -> SessionInfo {
        SessionInfo {
            id: 1,
            client_addr: "127.0.0.1:1".parse().unwrap(),
            domain: "x".into(),
            jid: Some("alice@x/r".into()),
            chose_resource: false,
        }
    }

    fn stanza(s: &str) -> crate::framer::Stanza {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, crate::stanza::NS_CLIENT.to_owned())]);
        crate::framer::Stanza {
            raw: bytes::Bytes::copy_from_slice(s.as_bytes()),
            root: parse_element(s, &scope).unwrap(),
        }
    }

    async fn outcome(p: &Pipeline, xml: &str, direction: Direction, copy: Copy) -> Outcome {
        let st = stanza(xml);
        let mut v = StanzaView::of(&st.root);
        crate::relay::fill_addresses(&mut v, direction, Some("alice@x/r"));
        let info = session();
        p.inspect(Inspected {
            direction,
            session: &info,
            view: &v,
            stanza: &st,
            copy,
            claimed_from: None,
        })
        .await
        .settled()
        .await
    }

    const CARD_RULES: &str = "[[rule]]\nid = \"pci-card\"\nwhen = { body = { detector = \"payment-card\" } }\naction = \"block\"\n\n[[rule]]\nid = \"codename\"\nwhen = { body = { regex = \"(?i)falcon\" } }\naction = \"redact\"\n";

    #[tokio::test]
    async fn text_hidden_beside_the_body_is_judged_too() {
        let p = pipeline(CARD_RULES);
        for hidden in [
            "<body>hello</body><body xml:lang='de'>karte 4111 1111 1111 1111</body>",
            "<body>hello</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>4111 1111 1111 1111</p></body></html>",
            "<x xmlns='jabber:x:oob'><url>https://x.example/?card=4111111111111111</url></x>",
        ] {
            let xml = format!("<message to='bob@x' type='chat' id='1'>{hidden}</message>");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{hidden}");
        }
    }

    /// A payload policy recognises, packed where only tokens are skipped (a room's status
    /// code, an element inside a call's set-up or a bounce's error) or in what a user's
    /// software publishes about them (a vCard's fields, a track, a location), is judged.
    #[tokio::test]
    async fn payloads_in_parts_read_in_part_are_judged() {
        let p = pipeline(CARD_RULES);
        let card = "card 4111 1111 1111 1111";
        let messages = [
            "<message to='bob@x' type='chat' id='1'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <status code='4111111111111111'/></x></message>".to_owned(),
            "<message to='bob@x' type='chat' id='1'><propose xmlns='urn:xmpp:jingle-message:0' id='a'>\
             <note xmlns='urn:x:custom'>4111111111111111</note></propose></message>".to_owned(),
            "<message to='bob@x' type='chat' id='1'><propose xmlns='urn:xmpp:jingle-message:0' id='a'>\
             <note xmlns='urn:x:custom' v='4111111111111111'/></propose></message>".to_owned(),
            "<message to='bob@x' type='error' id='1'><error type='cancel'>\
             <gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><x xmlns='urn:x:custom' v='4111111111111111'/></error></message>".to_owned(),
            format!("<message to='bob@x' type='headline' id='1'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
             <items node='http://jabber.org/protocol/tune'><item id='t'><tune xmlns='http://jabber.org/protocol/tune'>\
             <title>{card}</title></tune></item></items></event></message>"),
            format!("<iq type='set' id='1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:x:notes'>\
             <item id='t'><geoloc xmlns='http://jabber.org/protocol/geoloc'><text>{card}</text></geoloc></item></publish></pubsub></iq>"),
            format!("<iq to='bob@x/pc' type='result' id='1'><vCard xmlns='vcard-temp'><FN>{card}</FN></vCard></iq>"),
            format!("<iq to='bob@x/pc' type='result' id='1'><vCard xmlns='vcard-temp'><X-MEMO>{card}</X-MEMO></vCard></iq>"),
        ];
        for xml in &messages {
            let out = outcome(&p, xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{xml}");
        }
        // Judged, a profile is recorded only when a rule matched it.
        let held = Held::of(
            "<iq from='bob@x/pc' to='alice@x/r' type='result' id='1'><vCard xmlns='vcard-temp'>\
                             <FN>Bob Smith</FN><TITLE>Senior Engineer</TITLE></vCard></iq>",
        );
        let c = content(&held.item(Direction::Inbound, Copy::Direct));
        assert!(!c.has_content());
        assert_eq!(c.extra.len(), 1, "{:?}", c.extra);
    }

    /// An error coming in from another client's address is a server's bounce, in the
    /// server's words, or an answer the other client wrote: a scripted client answers
    /// any request with an error whose text is what it likes. Its text is judged, and
    /// the error recorded when a rule matched it, so that bounces make no records.
    #[tokio::test]
    async fn an_error_coming_in_from_another_client_is_judged() {
        let p = pipeline(CARD_RULES);
        let words = "<iq from='bob@x/pc' to='alice@x/r' type='error' id='1'><error type='cancel'>\
                     <undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                     <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>card 4111 1111 1111 1111</text></error></iq>";
        // Blocked or redacted, an error coming in is delivered without its words, its
        // condition kept: a request refused in silence would wait for its timeout, and
        // a room's refused entry would show as joining for good.
        let bare = |out: Outcome| {
            let Decision::Replace(bytes) = out.decision else {
                panic!("not delivered bare: {:?}", out.decision);
            };
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.contains("<undefined-condition")
                    && !text.contains("4111")
                    && !text.contains("falcon")
                    && !text.contains("<text"),
                "{text}"
            );
        };
        bare(outcome(&p, words, Direction::Inbound, Copy::Direct).await);
        let redacted = words.replace("card 4111 1111 1111 1111", "falcon at noon");
        bare(outcome(&p, &redacted, Direction::Inbound, Copy::Direct).await);
        // So is a presence's error: a presence a client sends reaches its contact.
        let presence = words
            .replace("<iq ", "<presence ")
            .replace("</iq>", "</presence>");
        bare(outcome(&p, &presence, Direction::Inbound, Copy::Direct).await);
        // Nor in its id, its error's type or a made-up condition.
        let attrs = words
            .replace("id='1'", "id='falcon at noon'")
            .replace("type='cancel'", "type='falcon plans'")
            .replace("undefined-condition", "falcon-at-noon");
        let out = outcome(&p, &attrs, Direction::Inbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not delivered bare: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && text.contains("<undefined-condition"),
            "{text}"
        );
        // Words in a condition's content or beside the error go with it.
        let hidden = "<iq from='bob@x/pc' to='alice@x/r' type='error' id='1'><note xmlns='urn:x'>falcon</note>\
                      <error type='cancel' by='bob@x'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>xmpp:falcon@x</gone>\
                      <x xmlns='urn:x' v='falcon'/></error></iq>";
        let out = outcome(&p, hidden, Direction::Inbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not delivered bare: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("<gone") && !text.contains("falcon"), "{text}");
        // Blocked on its parties alone (a barrier), it does not cross, bare or not.
        let barrier = pipeline(&format!(
            "{CARD_RULES}\n[[rule]]\nid = \"wall\"\nwhen = {{ from = \"bob@x\" }}\naction = \"block\"\n"
        ));
        let out = outcome(&barrier, words, Direction::Inbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        // One the user's client sends is refused, as any stanza is.
        let sent = words.replace("from='bob@x/pc' to='alice@x/r'", "to='bob@x/pc'");
        let out = outcome(&p, &sent, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        // Both legs of one error are one message: its text is not part of the identity.
        let sent = Held::of(words);
        let outbound = content(&sent.item(Direction::Outbound, Copy::Direct));
        let inbound = content(&sent.item(Direction::Inbound, Copy::Direct));
        assert_eq!(
            Identities::of(&outbound, None).identity,
            Identities::of(&inbound, None).identity
        );
        let bounce = Held::of(
            "<iq from='bob@x/pc' to='alice@x/r' type='error' id='1'><ping xmlns='urn:xmpp:ping'/>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>The recipient is not online</text></error></iq>",
        );
        let c = content(&bounce.item(Direction::Inbound, Copy::Direct));
        assert!(!c.has_content(), "{:?}", c.extra);
        assert!(
            c.extra.iter().any(|t| t.text.contains("not online")),
            "{:?}",
            c.extra
        );
    }

    /// The resource a session binds is in the address of everything it sends: every
    /// contact reads it in a presence, every recipient in a message. The server's answer
    /// that binds it is judged on it, as a nickname is: recorded when a rule matched
    /// it, and refused, redacted or blocked, since no redaction takes a word out of an
    /// address.
    #[tokio::test]
    async fn the_resource_a_session_binds_is_judged() {
        let p = pipeline(CARD_RULES);
        let bound = |resource: &str| {
            let jid = format!("alice@x/{resource}");
            let xml = format!(
                "<iq type='result' id='b1' to='{jid}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <jid>{jid}</jid></bind></iq>"
            );
            let mut held = Held::of(&xml);
            held.session.jid = Some(jid);
            held.session.chose_resource = true;
            held
        };
        for resource in ["falcon-plans", "card 4111 1111 1111 1111"] {
            let held = bound(resource);
            let c = content(&held.item(Direction::Inbound, Copy::Direct));
            assert!(
                c.extra
                    .iter()
                    .any(|t| t.kind == "nick" && t.text == resource),
                "{:?}",
                c.extra
            );
            let out = held.decided(&p, Direction::Inbound).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{resource}: {out:?}"
            );
        }
        // It is the user's words going out: a rule on what users send sees it.
        let outbound = pipeline(
            "[[rule]]\nid = \"dlp\"\nwhen = { direction = \"outbound\", body = { regex = \"(?i)osprey\" } }\naction = \"block\"\n",
        );
        let out = bound("osprey-desk")
            .decided(&outbound, Direction::Inbound)
            .await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        // Judged, a plain one is no content: binding makes no record.
        let held = bound("laptop");
        let c = content(&held.item(Direction::Inbound, Copy::Direct));
        assert!(!c.has_content(), "{:?}", c.extra);
        let out = held.decided(&p, Direction::Inbound).await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
        // Only the answer that binds the session's own address is read so, and only
        // for a resource the client asked for: one the server picked is not its words
        // (ejabberd picks digits, Prosody a UUID, which a card detector could take for
        // a card number).
        let mut other = bound("falcon-plans");
        other.session.jid = Some("alice@x/laptop".into());
        let c = content(&other.item(Direction::Inbound, Copy::Direct));
        assert!(c.extra.is_empty(), "{:?}", c.extra);
        let mut picked = bound("4111111111111111");
        picked.session.chose_resource = false;
        let c = content(&picked.item(Direction::Inbound, Copy::Direct));
        assert!(c.extra.is_empty(), "{:?}", c.extra);
    }

    /// Bind2's SASL2 success (XEP-0386) binds a resource built from the client's tag:
    /// what the relay inspects of it (the authorization identifier and `<bound/>`) is
    /// judged on the resource as the iq result to an RFC 6120 bind is, with the account
    /// known: refused when a rule on that account blocks it, delivered when one only
    /// flags it (its record is checked end to end), and judged as a result. A tag taken
    /// out of the client's request is read, once the account is known, as words the
    /// user sent in a request that stands for a bind set.
    #[tokio::test]
    async fn a_resource_bound_from_a_bind2_tag_is_judged_with_its_account() {
        let p = pipeline(
            "[[rule]]\nid = \"alice-osprey\"\nwhen = { from = \"alice@x\", body = { regex = \"(?i)osprey\" } }\naction = \"block\"\n\n\
             [[rule]]\nid = \"watch\"\nwhen = { body = { regex = \"(?i)kestrel\" } }\naction = \"flag\"\n",
        );
        let bound = |jid: &str| {
            let mut held = Held::of(&format!(
                "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>{jid}</authorization-identifier>\
                 <bound xmlns='urn:xmpp:bind:0'/></success>"
            ));
            crate::relay::fill_addresses(&mut held.view, Direction::Inbound, Some(jid));
            held.session.jid = Some(jid.to_owned());
            held.session.chose_resource = true;
            held
        };
        let held = bound("alice@x/osprey-desk~a1B2");
        let c = content(&held.item(Direction::Inbound, Copy::Direct));
        assert!(
            c.extra
                .iter()
                .any(|t| t.kind == "nick" && t.text == "osprey-desk~a1B2"),
            "{:?}",
            c.extra
        );
        let out = held.decided(&p, Direction::Inbound).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        // The rule is on Alice's account: another's resource passes.
        let out = bound("bob@x/osprey-desk~a1B2")
            .decided(&p, Direction::Inbound)
            .await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
        // A flagged one is delivered (its record is in the end-to-end test), as is a plain
        // one. A rule on bind results sees it as one.
        let results = pipeline(
            "[[rule]]\nid = \"results\"\nwhen = { kind = \"iq\", type = \"result\", body = { regex = \"(?i)laptop\" } }\naction = \"block\"\n",
        );
        let out = bound("alice@x/laptop~9x")
            .decided(&results, Direction::Inbound)
            .await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        for jid in ["alice@x/kestrel-desk~9x", "alice@x/laptop~9x"] {
            let out = bound(jid).decided(&p, Direction::Inbound).await;
            assert!(matches!(out.decision, Decision::Forward), "{jid}: {out:?}");
        }
        // A tag taken out of the user's request is read, once the account is known, as
        // words the user sent, in a request that stands for a bind set.
        let mut request = Held::of("<bind xmlns='urn:xmpp:bind:0'><tag>osprey  desk</tag></bind>");
        crate::relay::fill_addresses(&mut request.view, Direction::Outbound, Some("alice@x/9f2c"));
        request.session.jid = Some("alice@x/9f2c".into());
        let c = content(&request.item(Direction::Outbound, Copy::Direct));
        assert_eq!(c.bind2(), Some("set"));
        assert!(
            c.extra
                .iter()
                .any(|t| t.kind == "nick" && t.text == "osprey desk"),
            "{:?}",
            c.extra
        );
        let out = request.decided(&p, Direction::Outbound).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        // Before the session is bound it is not read.
        request.session.jid = None;
        assert!(content(&request.item(Direction::Outbound, Copy::Direct))
            .extra
            .is_empty());
        // Only the success binding the session's own address, and only when the client
        // named a tag.
        let mut other = bound("alice@x/osprey-desk~a1B2");
        other.session.jid = Some("alice@x/laptop".into());
        assert!(content(&other.item(Direction::Inbound, Copy::Direct))
            .extra
            .is_empty());
        let mut picked = bound("alice@x/osprey-desk~a1B2");
        picked.session.chose_resource = false;
        assert!(content(&picked.item(Direction::Inbound, Copy::Direct))
            .extra
            .is_empty());
    }

    /// A room's name is picked by whoever creates it and read by everyone who finds or
    /// enters it. The room's own presence telling a session that asked to enter it that
    /// it created it (status codes 110 and 201) is judged on the room's name as the
    /// user's words: refused, the entry is answered with its refusal from the room and
    /// the user leaves the room. The same presence to a session that never asked to
    /// enter the room (anyone may send a presence) names nothing.
    #[tokio::test]
    async fn a_room_the_user_created_is_judged_on_its_name() {
        let p = pipeline(CARD_RULES);
        let created = "<presence from='falcon-plans@muc.x/alice' to='alice@x/r'>\
            <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/>\
            <status code='110'/><status code='201'/></x></presence>";
        let out = outcome(&p, created, Direction::Inbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
        // The entry names the room; its name is not read until the room says who made it.
        let entry = "<presence to='falcon-plans@muc.x/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>";
        let out = outcome(&p, entry, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
        let out = outcome(&p, created, Direction::Inbound, Copy::Direct).await;
        let Decision::Replace(delivered) = &out.decision else {
            panic!("{out:?}");
        };
        let delivered = String::from_utf8_lossy(delivered);
        assert!(
            delivered.contains("type='error'") || delivered.contains("type=\"error\""),
            "{delivered}"
        );
        assert!(delivered.contains("policy-violation"), "{delivered}");
        assert!(
            delivered.contains("falcon-plans@muc.x/alice"),
            "{delivered}"
        );
        let left: Vec<String> = out
            .inject
            .to_upstream
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left[0].contains("<destroy") && left[0].contains("to='falcon-plans@muc.x'"),
            "{left:?}"
        );
        assert!(
            left[1].contains("unavailable") && left[1].contains("falcon-plans@muc.x/alice"),
            "{left:?}"
        );
        // The closed room takes no configuration, and its destruction's answer is
        // Custos's.
        let configure = "<iq to='falcon-plans@muc.x' type='set' id='k1'><query xmlns='http://jabber.org/protocol/muc#admin'>\
            <item jid='mallory@elsewhere' affiliation='owner'/></query></iq>";
        let out = outcome(&p, configure, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        let answer =
            "<iq from='falcon-plans@muc.x' to='alice@x/r' type='result' id='custos-refused-room'/>";
        let out = outcome(&p, answer, Direction::Inbound, Copy::Direct).await;
        assert!(
            matches!(out.decision, Decision::Refuse { error: None }),
            "{out:?}"
        );
        // A room's owner requests wait for the room's answer to the entry.
        let entry = "<presence to='osprey@muc.x/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>";
        outcome(&p, entry, Direction::Outbound, Copy::Direct).await;
        let configure = configure.replace("falcon-plans", "osprey");
        let out = outcome(&p, &configure, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        let created = "<presence from='osprey@muc.x/alice' to='alice@x/r'>\
            <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/>\
            <status code='110'/><status code='201'/></x></presence>";
        let out = outcome(&p, created, Direction::Inbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
        let out = outcome(&p, &configure, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
        // A created room's presence refused for another of its words is refused as any
        // presence is: the room is not destroyed for a name nobody refused.
        let entry = "<presence to='lunch@muc.x/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>";
        outcome(&p, entry, Direction::Outbound, Copy::Direct).await;
        let created = "<presence from='lunch@muc.x/alice' to='alice@x/r'><status>card 4111 1111 1111 1111</status>\
            <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/>\
            <status code='110'/><status code='201'/></x></presence>";
        let out = outcome(&p, created, Direction::Inbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }), "{out:?}");
        assert!(out.inject.to_upstream.is_empty(), "{out:?}");
        // Entering a room someone else made (no status 201) reads no name.
        let entry = "<presence to='falcon-talk@muc.x/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>";
        outcome(&p, entry, Direction::Outbound, Copy::Direct).await;
        let joined = "<presence from='falcon-talk@muc.x/alice' to='alice@x/r'>\
            <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/>\
            <status code='110'/></x></presence>";
        let out = outcome(&p, joined, Direction::Inbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Forward), "{out:?}");
    }

    /// A Bind2 tag (XEP-0386) becomes part of the resource the server binds: policy
    /// judges it as words the user sends, before any stanza carries it.
    #[tokio::test]
    async fn a_bind2_tag_is_judged_as_words_the_user_sends() {
        let p = pipeline(&format!(
            "{CARD_RULES}\n[[rule]]\nid = \"watch\"\nwhen = {{ body = {{ regex = \"(?i)kestrel\" }} }}\naction = \"flag\"\n"
        ));
        let info = session();
        assert!(p.refuses_words(&info, "falcon plans").await);
        assert!(p.refuses_words(&info, "4111 1111 1111 1111").await);
        assert!(!p.refuses_words(&info, "kestrel desk").await);
        assert!(!p.refuses_words(&info, "Conversations.xK2a").await);
        assert!(
            !Pipeline::new(None, None, OnArchiveFailure::Block, None)
                .refuses_words(&info, "falcon")
                .await
        );
    }

    /// Words a reader can get at in a part Custos reads only in part, or in a message
    /// put where no message is read as one, are judged as any other text.
    #[tokio::test]
    async fn text_hidden_in_parts_read_in_part_or_in_a_misplaced_message_is_judged() {
        let p = pipeline(CARD_RULES);
        let card = "card 4111 1111 1111 1111";
        for hidden in [
            format!("<active xmlns='http://jabber.org/protocol/chatstates'><message xmlns='jabber:client'><body>{card}</body></message></active>"),
            format!("<sent xmlns='urn:xmpp:carbons:2'><message xmlns='jabber:client'><body>{card}</body></message></sent>"),
            format!("<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/>\
                     <message xmlns='jabber:client'><body>{card}</body></message></forwarded></sent>"),
            format!("<reference xmlns='urn:xmpp:reference:0' type='data' uri='https://x.example/'>{card}</reference>"),
            format!("<html xmlns='http://jabber.org/protocol/xhtml-im'><p>{card}</p></html>"),
            "<body>see</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
             <a href='https://x.example/?c=4111111111111111'>a link</a></body></html>".to_owned(),
            format!("<x xmlns='jabber:x:oob'><url>https://x.example/</url><note>{card}</note></x>"),
            format!("<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/><delay xmlns='urn:xmpp:delay' from='x' stamp='2026-01-01T00:00:00Z'>Offline Storage - {card}</delay>"),
        ] {
            let xml = format!("<message from='alice@x/r' to='bob@x' type='chat' id='1'>{hidden}</message>");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{hidden}: {:?}", out.decision);
        }
        // The notes servers write in the delays they stamp are no content.
        for note in ["Offline Storage", "Offline Storage - example.org", "Resent"] {
            let xml = format!("<message><received xmlns='urn:xmpp:receipts' id='m1'/>\
                               <delay xmlns='urn:xmpp:delay' from='example.org' stamp='2026-01-01T00:00:00Z'>{note}</delay></message>");
            assert!(!view(&xml).has_content(), "{note}");
        }
    }

    #[tokio::test]
    async fn redaction_reaches_every_text_and_drops_the_xhtml_copy() {
        let p = pipeline(CARD_RULES);
        let xml = "<message to='bob@x' type='chat' id='1'><body>falcon one</body>\
                   <body xml:lang='de'>falcon zwei</body>\
                   <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>falcon</body></html>\
                   <x xmlns='jabber:x:oob'><url>https://x.example/falcon</url><desc>falcon plan</desc></x></message>";
        let out = outcome(&p, xml, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.to_lowercase().contains("falcon"), "{text}");
        assert!(!text.contains("xhtml-im"), "{text}");
        assert!(
            text.contains("xml:lang=\"de\"") || text.contains("xml:lang='de'"),
            "{text}"
        );
    }

    /// Policy's verdict on `xml` as alice sends it, and the redaction it leads to.
    /// A stanza, its view and its session, for an [`Inspected`] to borrow.
    struct Held {
        stanza: crate::framer::Stanza,
        view: StanzaView,
        session: SessionInfo,
    }

    impl Held {
        fn of(xml: &str) -> Held {
            let stanza = stanza(xml);
            Held {
                view: StanzaView::of(&stanza.root),
                stanza,
                session: session(),
            }
        }

        /// What `p` decides of it, crossing directly in `direction`, once its record
        /// (if any) is settled.
        async fn decided(&self, p: &Pipeline, direction: Direction) -> Outcome {
            p.inspect(self.item(direction, Copy::Direct))
                .await
                .settled()
                .await
        }

        fn item(&self, direction: Direction, copy: Copy) -> Inspected<'_> {
            Inspected {
                direction,
                session: &self.session,
                view: &self.view,
                stanza: &self.stanza,
                copy,
                claimed_from: None,
            }
        }
    }

    fn redaction_of(rules: &str, xml: &str) -> (Verdict, Option<Redaction>) {
        let p = pipeline(rules);
        let held = Held::of(xml);
        let item = held.item(Direction::Outbound, Copy::Direct);
        let c = content(&item);
        let policy = p.policy.as_ref().unwrap();
        let (verdict, delivered) = evaluate(policy, &c, &RoomContext::default()).unwrap();
        let redaction = redact(&item, &c, &verdict, &delivered);
        (verdict, redaction)
    }

    #[tokio::test]
    async fn a_redacted_text_that_cannot_be_masked_in_place_is_not_delivered() {
        let p = pipeline(CARD_RULES);
        for (part, gone) in [
            (
                "<x xmlns='jabber:x:conference' jid='r@muc.x' reason='falcon closes friday'/>",
                "jabber:x:conference",
            ),
            (
                "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='c@x'>\
                 <body>falcon lands</body></message></forwarded>",
                "urn:xmpp:forward:0",
            ),
            (
                "<reactions xmlns='urn:xmpp:reactions:0' id='x'><reaction>falcon</reaction></reactions>",
                "urn:xmpp:reactions:0",
            ),
        ] {
            let xml = format!(
                "<message from='alice@x/r' to='bob@x' type='chat' id='1'><body>see this</body>{part}\
                 <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            );
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            let Decision::Replace(bytes) = out.decision else {
                panic!("not redacted: {:?}", out.decision);
            };
            let text = String::from_utf8(bytes).unwrap();
            assert!(!text.to_lowercase().contains("falcon"), "{text}");
            assert!(!text.contains(gone), "{text}");
            // The rest of the message goes on as it was.
            assert!(text.contains("see this"), "{text}");
            assert!(text.contains("chatstates"), "{text}");
            // The record's delivered identity is the one the recipient's copy computes.
            let (verdict, redaction) = redaction_of(CARD_RULES, &xml);
            assert_eq!(verdict.action, custos_policy::Action::Redact);
            let redaction = redaction.unwrap();
            let delivered = String::from_utf8(redaction.bytes).unwrap();
            assert_eq!(redaction.identity, id_of(&delivered, Direction::Outbound));
        }
    }

    /// Text written directly in a message or presence, between its children, reaches
    /// whoever reads the stream: it is judged, and a redaction takes it out.
    #[tokio::test]
    async fn text_written_directly_in_a_stanza_is_judged_and_redacted() {
        let p = pipeline(CARD_RULES);
        for xml in [
            "<message from='alice@x/r' to='bob@x' type='chat' id='1'><body>see this</body>\
             falcon closes friday<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message from='alice@x/r' to='bob@x' type='chat' id='1'>falcon closes friday\
             <active xmlns='http://jabber.org/protocol/chatstates'/><body>see this</body></message>",
        ] {
            let out = outcome(&p, xml, Direction::Outbound, Copy::Direct).await;
            let Decision::Replace(bytes) = out.decision else {
                panic!("not redacted: {xml}: {:?}", out.decision);
            };
            let text = String::from_utf8(bytes).unwrap();
            assert!(!text.contains("falcon"), "{text}");
            assert!(text.contains("see this") && text.contains("chatstates"), "{text}");
            let (_, redaction) = redaction_of(CARD_RULES, xml);
            let delivered = String::from_utf8(redaction.unwrap().bytes).unwrap();
            assert_eq!(delivered, text);
        }
        // Alone, it makes a message worth recording.
        let alone = "<message from='alice@x/r' to='bob@x' id='2'>meet me at noon</message>";
        assert!(content_of(alone, Copy::Direct, |c| c.has_content()));
        let presence = "<presence from='alice@x/r'>falcon lands<show>away</show></presence>";
        let out = outcome(&p, presence, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && text.contains("<show>away"),
            "{text}"
        );
        let offline =
            "<presence from='alice@x/r' type='unavailable'>card 4111 1111 1111 1111</presence>";
        let out = outcome(&p, offline, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not delivered: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("unavailable") && !text.contains("4111"),
            "{text}"
        );
    }

    /// An iq between two clients is routed by the server without reading it: a scripted
    /// client could talk through one past the message archive. Words in one are recorded
    /// and judged; what clients ask each other (features, versions, pings, calls) and an
    /// iq to a server or to the account's own clients is neither.
    #[tokio::test]
    async fn words_in_an_iq_between_clients_are_recorded_and_judged() {
        let p = pipeline(CARD_RULES);
        let talk = "<iq from='alice@x/r' to='bob@x/pc' type='set' id='q1'>\
                    <note xmlns='urn:example:chat'>meet at noon</note></iq>";
        assert!(content_of(talk, Copy::Direct, |c| c.has_content()));
        let answer = "<iq from='bob@x/pc' to='alice@x/r' type='result' id='q1'>\
                      <note xmlns='urn:example:chat' text='see you then'/></iq>";
        let held = Held::of(answer);
        let c = content(&held.item(Direction::Inbound, Copy::Direct));
        assert!(c.has_content());
        assert_eq!(c.extra[0].text, "see you then");
        // Judged: a card is refused with an error to its sender, a code name taken out.
        let card = "<iq from='alice@x/r' to='bob@x/pc' type='set' id='q2'>\
                    <note xmlns='urn:example:chat'>4111 1111 1111 1111</note></iq>";
        let out = outcome(&p, card, Direction::Outbound, Copy::Direct).await;
        let Decision::Refuse { error: Some(error) } = out.decision else {
            panic!("not refused: {:?}", out.decision);
        };
        assert!(String::from_utf8_lossy(&error).contains("policy-violation"));
        let redacted = "<iq from='alice@x/r' to='bob@x/pc' type='set' id='q3'>\
                        <note xmlns='urn:example:chat'>falcon</note><ping xmlns='urn:xmpp:ping'/></iq>";
        let out = outcome(&p, redacted, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && text.contains("urn:xmpp:ping"),
            "{text}"
        );
        // A request from another account's bare JID (its server, an outsider's, writes
        // what it likes there) reaches a scripted client as one from a client does.
        for request in [
            "<iq from='bob@ext.example' to='alice@x/r' type='set' id='b1'><note xmlns='urn:example:chat'>card 4111 1111 1111 1111</note></iq>",
            "<iq from='bob@ext.example' to='alice@x/r' type='get' id='b2'><note xmlns='urn:example:chat'>card 4111 1111 1111 1111</note></iq>",
        ] {
            let out = outcome(&p, request, Direction::Inbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{request}: {:?}",
                out.decision
            );
        }
        // A card in an answer goes nowhere; no error answers an answer.
        let answer = "<iq from='bob@x/pc' to='alice@x/r' type='result' id='q4'>\
                      <note xmlns='urn:example:chat'>4111 1111 1111 1111</note></iq>";
        let out = outcome(&p, answer, Direction::Inbound, Copy::Direct).await;
        assert!(
            matches!(out.decision, Decision::Refuse { error: None }),
            "{:?}",
            out.decision
        );
        // Not content (a vCard from a bare JID is judged, as a profile), and not refused.
        for (xml, direction) in [
            // To the account's own other client, and to the server or a bare JID.
            ("<iq from='alice@x/r' to='alice@x/phone' type='set' id='o1'><note xmlns='urn:example:chat'>4111 1111 1111 1111</note></iq>", Direction::Outbound),
            ("<iq from='alice@x/phone' to='alice@x/r' type='set' id='o2'><note xmlns='urn:example:chat'>4111 1111 1111 1111</note></iq>", Direction::Inbound),
            ("<iq type='set' id='o3'><query xmlns='jabber:iq:roster'><item jid='bob@x' name='Bob Smith'/></query></iq>", Direction::Outbound),
            ("<iq to='bob@x' type='get' id='o4'><vCard xmlns='vcard-temp'/></iq>", Direction::Outbound),
            ("<iq from='bob@x' to='alice@x/r' type='result' id='o4'><vCard xmlns='vcard-temp'><FN>Bob Smith</FN></vCard></iq>", Direction::Inbound),
            // What clients ask each other.
            ("<iq from='bob@x/pc' to='alice@x/r' type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'>\
              <identity category='client' type='pc' name='Gajim'/><feature var='urn:xmpp:ping'/></query></iq>", Direction::Inbound),
            ("<iq from='bob@x/pc' to='alice@x/r' type='result' id='v1'><query xmlns='jabber:iq:version'><name>Gajim</name><version>1.9</version><os>Linux</os></query></iq>", Direction::Inbound),
            ("<iq from='r@muc.x/bob' to='alice@x/r' type='result' id='c1'><vCard xmlns='vcard-temp'><FN>Bob Smith</FN><ORG><ORGNAME>Example Bank</ORGNAME></ORG><PHOTO><TYPE>image/png</TYPE>\
              <BINVAL>iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk\n+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==</BINVAL></PHOTO></vCard></iq>", Direction::Inbound),
            ("<iq from='bob@x/pc' to='alice@x/r' type='result' id='l1'><query xmlns='jabber:iq:last' seconds='903'>Away</query></iq>", Direction::Inbound),
            ("<iq from='bob@x/pc' to='alice@x/r' type='result' id='t1'><time xmlns='urn:xmpp:time'><tzo>-06:00</tzo><utc>2006-12-19T17:58:35Z</utc></time></iq>", Direction::Inbound),
            ("<iq from='alice@x/r' to='bob@x/pc' type='set' id='j0'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='c'>\
              <content creator='initiator' name='voice'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><payload-type id='111' name='opus' clockrate='48000' channels='2'/>\
              <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='1'><parameter name='msid' value='a3f1 9b2c'/></source></description>\
              <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' pwd='asd88fgpdd777uzjYhagZg' ufrag='8hhy'><candidate component='1' foundation='1' generation='0' id='el0747fg11' ip='10.0.1.1' network='1' port='8998' priority='2130706431' protocol='udp' type='host'/></transport></content></jingle></iq>", Direction::Outbound),
            ("<iq from='alice@x/r' to='bob@x/pc' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>", Direction::Outbound),
            ("<iq from='bob@x/pc' to='alice@x/r' type='error' id='p2'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
              <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>No such session</text></error></iq>", Direction::Inbound),
        ] {
            let held = Held::of(xml);
            let c = content(&held.item(direction, Copy::Direct));
            assert!(!c.has_content(), "{xml}: {:?}", c.extra);
            let out = outcome(&p, xml, direction, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Forward), "{xml}: {:?}", out.decision);
        }
        // A call's reason text is words; its codecs and addresses are not.
        let call = |reason: &str| {
            format!(
                "<iq from='alice@x/r' to='bob@x/pc' type='set' id='j1'><jingle xmlns='urn:xmpp:jingle:1' action='session-terminate' sid='c'>\
                 <reason><decline/>{reason}</reason></jingle></iq>"
            )
        };
        assert!(!content_of(&call(""), Copy::Direct, |c| c.has_content()));
        let out = outcome(
            &p,
            &call("<text>card 4111 1111 1111 1111</text>"),
            Direction::Outbound,
            Copy::Direct,
        )
        .await;
        assert!(
            matches!(out.decision, Decision::Refuse { .. }),
            "{:?}",
            out.decision
        );
        // Words in what clients ask each other: a version's name, a discovered name, a ping.
        for payload in [
            "<query xmlns='jabber:iq:version'><name>card 4111 1111 1111 1111</name></query>",
            "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc' name='card 4111 1111 1111 1111'/></query>",
            "<ping xmlns='urn:xmpp:ping'>card 4111 1111 1111 1111</ping>",
            "<vCard xmlns='vcard-temp'><DESC>card 4111 1111 1111 1111</DESC></vCard>",
            "<jingle xmlns='urn:xmpp:jingle:1' action='session-info' sid='c'>\
             <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='1'>card 4111 1111 1111 1111</source></jingle>",
            "<jingle xmlns='urn:xmpp:jingle:1' action='session-info' sid='c'>\
             <parameter xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' name='msid' value='a b' note='card 4111 1111 1111 1111'/></jingle>",
        ] {
            let xml = format!("<iq from='alice@x/r' to='bob@x/pc' type='result' id='w1'>{payload}</iq>");
            assert!(content_of(&xml, Copy::Direct, |c| c.has_content()), "{payload}");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{payload}: {:?}", out.decision);
        }
    }

    /// Words where the commonest readers do not look still reach a scripted client: an
    /// `<error>` in an iq that is no error, the error the user's client answers with, an
    /// identifier or an attribute of the stanza's own, a presence's custom extension, a
    /// ping's text and words joined by a blank that is not whitespace.
    #[tokio::test]
    async fn words_in_errors_stanza_attributes_and_presence_extensions_are_judged() {
        let p = pipeline(CARD_RULES);
        let card = "card 4111 1111 1111 1111";
        for (xml, direction) in [
            (format!("<iq from='alice@x/r' to='bob@x/pc' type='set' id='e1'><error type='cancel'>\
              <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{card}</text></error></iq>"), Direction::Outbound),
            (format!("<iq from='bob@x/pc' to='alice@x/r' type='result' id='e2'><error type='cancel'>\
              <undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><note xmlns='urn:x'>{card}</note></error></iq>"), Direction::Inbound),
            (format!("<iq from='alice@x/r' to='bob@x/pc' type='error' id='e3'><error type='cancel'>\
              <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{card}</text></error></iq>"), Direction::Outbound),
            (format!("<iq from='alice@x/r' to='bob@x/pc' type='get' id='{card}'><ping xmlns='urn:xmpp:ping'/></iq>"), Direction::Outbound),
            ("<iq from='alice@x/r' to='bob@x/pc' type='get' id='p9'><ping xmlns='urn:xmpp:ping'>card-4111111111111111</ping></iq>".to_owned(), Direction::Outbound),
            (format!("<message from='alice@x/r' to='bob@x' type='chat' id='{card}'/>"), Direction::Outbound),
            (format!("<message from='alice@x/r' to='bob@x' type='chat' id='m1' note='{card}'/>"), Direction::Outbound),
            (format!("<presence from='alice@x/r' to='bob@x/pc' note='{card}'/>"), Direction::Outbound),
            (format!("<presence from='alice@x/r' to='bob@x/pc'><note xmlns='urn:example:chat'>{card}</note></presence>"), Direction::Outbound),
            (format!("<presence from='alice@x/r'><priority>{card}</priority></presence>"), Direction::Outbound),
        ] {
            let out = outcome(&p, &xml, direction, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{xml}: {:?}", out.decision);
        }
        let recorded = [
            "<iq from='alice@x/r' to='bob@x/pc' type='error' id='e3'><error type='cancel'>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>see you at noon</text></error></iq>",
            "<iq from='alice@x/r' to='bob@x/pc' type='result' id='v1'><query xmlns='jabber:iq:version'>\
             <name>meet\u{2800}at\u{2800}noon</name></query></iq>",
            "<message from='alice@x/r' to='bob@x' id='meet at noon'/>",
        ];
        for xml in recorded {
            assert!(content_of(xml, Copy::Direct, |c| c.has_content()), "{xml}");
        }
        // A redaction takes the stanza's own words out with its text.
        let xml = "<message from='alice@x/r' to='bob@x' type='chat' id='falcon at noon' note='falcon'><body>hi</body></message>";
        let out = outcome(&p, xml, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && text.contains("<body>hi"),
            "{text}"
        );
        // What clients and servers ordinarily send is none.
        for (xml, direction) in [
            ("<iq from='bob@x/pc' to='alice@x/r' type='error' id='p2'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
              <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>No such session</text></error></iq>", Direction::Inbound),
            ("<iq from='alice@x/r' to='bob@x/pc' type='error' id='p3'><ping xmlns='urn:xmpp:ping'/><error type='cancel'>\
              <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>", Direction::Outbound),
            ("<message xmlns='jabber:client' xml:lang='en' from='bob@x/pc' to='alice@x/r' type='chat' id='5c0b9c2e-1d6f-4c1e-9b1a-0f6f0a7f2b11'>\
              <active xmlns='http://jabber.org/protocol/chatstates'/></message>", Direction::Inbound),
            ("<presence from='bob@x/pc' to='alice@x/r' xml:lang='en'><priority>-1</priority><show>away</show>\
              <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/>\
              <x xmlns='vcard-temp:x:update'><photo>a9f3e7c3d2b1</photo></x><idle xmlns='urn:xmpp:idle:1' since='2026-01-01T00:00:00Z'/>\
              <delay xmlns='urn:xmpp:delay' from='x' stamp='2026-01-01T00:00:00Z'/></presence>", Direction::Inbound),
            ("<presence from='alice@x/r' to='room@muc.x/Alice Smith'><x xmlns='http://jabber.org/protocol/muc'>\
              <history maxstanzas='20'/><password>open sesame</password></x></presence>", Direction::Outbound),
            ("<presence from='room@muc.x/Bob Smith' to='alice@x/r'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <item affiliation='member' role='participant' jid='bob@x/pc'/><status code='110'/></x>\
              <occupant-id xmlns='urn:xmpp:occupant-id:0' id='dGVzdA=='/></presence>", Direction::Inbound),
        ] {
            let held = Held::of(xml);
            let c = content(&held.item(direction, Copy::Direct));
            // A room's entry is judged on the nickname it asks for, and a bounce on its
            // text, neither recorded unless a rule matched it; nothing else is read.
            assert!(
                !c.has_content()
                    && c.extra
                        .iter()
                        .all(|t| t.child == TO_RESOURCE || t.kind == "error"),
                "{xml}: {:?}",
                c.extra
            );
        }
    }

    /// What an account publishes to a pubsub node reaches every reader of the node, inside
    /// the firm or outside: its words are recorded and judged as the iq's. Keys, avatars,
    /// read markers and bookmarks (a room's password) are not.
    #[tokio::test]
    async fn words_an_account_publishes_are_recorded_and_judged() {
        let p = pipeline(CARD_RULES);
        let publish = |to: &str, node: &str, payload: &str| {
            format!(
                "<iq type='set' id='pub1'{to}><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                 <publish node='{node}'><item id='current'>{payload}</item></publish>\
                 <publish-options><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>open</value></field></x></publish-options>\
                 </pubsub></iq>"
            )
        };
        for to in ["", " to='pubsub.x'", " to='alice@x'"] {
            let xml = publish(
                to,
                "urn:example:notes",
                "<note xmlns='urn:example:notes'>card 4111 1111 1111 1111</note>",
            );
            assert!(content_of(&xml, Copy::Direct, |c| c.has_content()), "{xml}");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { error: Some(_) }),
                "{xml}: {:?}",
                out.decision
            );
        }
        // A nickname alone is judged, and recorded only when a rule matched it.
        let plain = publish(
            "",
            "http://jabber.org/protocol/nick",
            "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>",
        );
        assert!(!content_of(&plain, Copy::Direct, |c| c.has_content()));
        let nick = publish(
            "",
            "http://jabber.org/protocol/nick",
            "<nick xmlns='http://jabber.org/protocol/nick'>falcon</nick>",
        );
        let out = outcome(&p, &nick, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && !text.contains("pubsub"),
            "{text}"
        );
        for (node, payload) in [
            ("urn:xmpp:bookmarks:1", "<conference xmlns='urn:xmpp:bookmarks:1' name='Deals desk' autojoin='true'><password>4111 1111 1111 1111</password></conference>"),
            ("urn:xmpp:avatar:data", "<data xmlns='urn:xmpp:avatar:data'>iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk</data>"),
            ("urn:xmpp:omemo:2:bundles", "<bundle xmlns='urn:xmpp:omemo:2'><spk id='0'>BQ==</spk></bundle>"),
        ] {
            let xml = publish("", node, payload);
            assert!(!content_of(&xml, Copy::Direct, |c| c.has_content()), "{node}");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Forward), "{node}: {:?}", out.decision);
        }
        // Items fetched from another account's node or a service's are its words to the
        // user as a notification's are: an outsider's node is a way in that no message
        // crosses. A blocked answer is dropped.
        let fetched = |from: &str, node: &str, payload: &str| {
            format!(
                "<iq{from} to='alice@x/r' type='result' id='f1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                 <items node='{node}'><item id='1'>{payload}</item></items></pubsub></iq>"
            )
        };
        let note = "<note xmlns='urn:example:notes'>card 4111 1111 1111 1111</note>";
        for xml in [
            fetched(" from='bob@ext.example'", "urn:example:notes", note),
            fetched(" from='pubsub.x'", "urn:example:notes", note),
            "<iq from='bob@ext.example' to='alice@x/r' type='result' id='v1'><vCard xmlns='vcard-temp'>\
             <DESC>card 4111 1111 1111 1111</DESC></vCard></iq>"
                .to_owned(),
        ] {
            let held = Held::of(&xml);
            assert!(content(&held.item(Direction::Inbound, Copy::Direct)).has_content(), "{xml}");
            let out = outcome(&p, &xml, Direction::Inbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { error: None }),
                "{xml}: {:?}",
                out.decision
            );
        }
        // What a room says of itself when discovered (a room on an outsider's service has
        // its owner's words there): its name, description and subject are judged.
        let room_info = |name: &str, description: &str| {
            format!(
                "<iq from='plans@muc.ext.example' to='alice@x/r' type='result' id='i1'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'>\
                 <identity category='conference' type='text' name='{name}'/><feature var='muc_open'/>\
                 <x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>\
                 <value>http://jabber.org/protocol/muc#roominfo</value></field>\
                 <field var='muc#roominfo_description' label='Description'><value>{description}</value></field>\
                 <field var='muc#roominfo_occupants'><value>3</value></field></x></query></iq>"
            )
        };
        for xml in [
            room_info("Plans", "card 4111 1111 1111 1111"),
            room_info("card 4111 1111 1111 1111", "Plans"),
        ] {
            let out = outcome(&p, &xml, Direction::Inbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { error: None }),
                "{xml}: {:?}",
                out.decision
            );
        }
        let plain = room_info("Plans", "Where the plans are made");
        let held = Held::of(&plain);
        assert!(!content(&held.item(Direction::Inbound, Copy::Direct)).has_content());
        // The account's own nodes, keys, avatars and a plain vCard are read as published.
        for xml in [
            fetched("", "urn:example:notes", note),
            fetched(" from='alice@x'", "urn:example:notes", note),
            fetched(
                " from='bob@ext.example'",
                "urn:xmpp:omemo:2:bundles",
                "<bundle xmlns='urn:xmpp:omemo:2'><spk id='0'>BQ==</spk></bundle>",
            ),
            fetched(
                " from='bob@ext.example'",
                "urn:xmpp:avatar:data",
                "<data xmlns='urn:xmpp:avatar:data'>iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk</data>",
            ),
            "<iq from='bob@ext.example' to='alice@x/r' type='result' id='v1'><vCard xmlns='vcard-temp'><FN>Bob Smith</FN></vCard></iq>".to_owned(),
            fetched(
                " from='bob@ext.example'",
                "urn:xmpp:vcard4",
                "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Bob Smith</text></fn></vcard>",
            ),
        ] {
            let held = Held::of(&xml);
            assert!(!content(&held.item(Direction::Inbound, Copy::Direct)).has_content(), "{xml}");
            let out = outcome(&p, &xml, Direction::Inbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Forward), "{xml}: {:?}", out.decision);
        }
    }

    /// A message addressed through a multicast service (XEP-0033) reaches every address
    /// it lists: each is a party its rules and barriers see, as its `to` is.
    #[tokio::test]
    async fn every_address_a_multicast_message_lists_is_a_party() {
        let p = pipeline(
            "internal_domains = [\"x\"]\n\n[groups]\nresearch = [\"alice@x\"]\ntrading = [\"bob@x\"]\n\n\
             [[barrier]]\nid = \"wall\"\nbetween = [\"research\", \"trading\"]\n\n\
             [[rule]]\nid = \"no-outside\"\nwhen = { to = \"external\" }\naction = \"block\"\n",
        );
        let multicast = |addresses: &str| {
            format!(
                "<message from='alice@x/r' to='multicast.x' type='chat' id='m1'><body>hello</body>\
                 <addresses xmlns='http://jabber.org/protocol/address'>{addresses}</addresses></message>"
            )
        };
        for addresses in [
            "<address type='to' jid='carol@x'/><address type='cc' jid='mallory@outside.example'/>",
            "<address type='bcc' jid='mallory@outside.example'/>",
            "<address type='to' jid='bob@x/desk'/>",
            "<address type='cc' jid='bob@x' delivered='true'/>",
        ] {
            let xml = multicast(addresses);
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{addresses}: {:?}",
                out.decision
            );
        }
        // Colleagues on the same side, and a reply-to address, which receives nothing.
        for addresses in [
            "<address type='to' jid='carol@x'/><address type='cc' jid='dave@x'/>",
            "<address type='replyto' jid='mallory@outside.example'/>",
        ] {
            let xml = multicast(addresses);
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Forward),
                "{addresses}: {:?}",
                out.decision
            );
        }
    }

    /// A room owner's configuration of `deals@muc.x` submitting `fields`.
    fn config(fields: &str) -> String {
        format!(
            "<iq to='deals@muc.x' type='set' id='c1'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             {fields}</x></query></iq>"
        )
    }

    /// A moderator's request to `deals@muc.x` about `item`.
    fn admin(item: &str) -> String {
        format!(
            "<iq to='deals@muc.x' type='set' id='k1'><query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query></iq>"
        )
    }

    /// The owner's end of `deals@muc.x`, with `inner` in its `<destroy>`.
    fn destroy(inner: &str) -> String {
        format!(
            "<iq to='deals@muc.x' type='set' id='d1'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <destroy jid='other@muc.x'>{inner}</destroy></query></iq>"
        )
    }

    /// The user's own vCard set on the server, with `fields`.
    fn vcard(fields: &str) -> String {
        format!("<iq type='set' id='v1'><vCard xmlns='vcard-temp'>{fields}</vCard></iq>")
    }

    /// What a user writes through the server for others to read, besides messages: a
    /// room's name and description, a kick's or a room's end's reason, the user's own
    /// vCard, and the nickname taken in a room. Each is judged; a password is not read.
    #[tokio::test]
    async fn words_written_for_a_room_or_a_profile_are_judged() {
        let p = pipeline(CARD_RULES);
        let card = "card 4111 1111 1111 1111";
        let join = |nick: &str| {
            format!("<presence to='deals@muc.x/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        };
        for xml in [
            config(&format!(
                "<field var='muc#roomconfig_roomname'><value>{card}</value></field>"
            )),
            config(&format!(
                "<field var='muc#roomconfig_roomdesc'><value>{card}</value></field>"
            )),
            config(&format!(
                "<field var='x-example#motto' label='{card}'><value>1</value></field>"
            )),
            config(&format!(
                "<field var='x-example#motto'><value>{card}</value></field>"
            )),
            admin(&format!(
                "<item nick='bob' role='none'><reason>{card}</reason></item>"
            )),
            destroy(&format!("<reason>{card}</reason>")),
            vcard(&format!("<DESC>{card}</DESC>")),
            vcard(&format!("<FN>{card}</FN>")),
            join(card),
            // A nickname cannot be taken out of the address: a redaction refuses the entry.
            join("falcon"),
        ] {
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{xml}: {:?}",
                out.decision
            );
        }
        // A redacted room name takes the configuration out: the room keeps its old one.
        let redacted = config("<field var='muc#roomconfig_roomname'><value>falcon</value></field>");
        let out = outcome(&p, &redacted, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && !text.contains("muc#owner"),
            "{text}"
        );
        // A room's name is its owner's words to everyone who finds the room: recorded.
        let named = config("<field var='muc#roomconfig_roomname'><value>Deals</value></field>");
        assert!(content_of(&named, Copy::Direct, |c| c.has_content()));
        let described = vcard("<DESC>ask me about deals</DESC>");
        assert!(content_of(&described, Copy::Direct, |c| c.has_content()));
        // Passwords, settings, a plain nickname or vCard: judged on nothing, no record.
        for xml in [
            config(&format!(
                "<field var='muc#roomconfig_roomsecret'><value>{card}</value></field>\
                 <field var='x-example#password' type='text-private'><value>{card}</value></field>\
                 <field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>\
                 <field var='muc#roomconfig_whois'><value>moderators</value></field>"
            )),
            config(""),
            admin("<item jid='bob@x' affiliation='member'/>"),
            vcard("<FN>Alice Smith</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk</BINVAL></PHOTO>"),
            join("Alice Smith"),
            "<iq to='lounge@muc.x' type='get' id='c0'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>".to_owned(),
        ] {
            assert!(!content_of(&xml, Copy::Direct, |c| c.has_content()), "{xml}");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Forward), "{xml}: {:?}", out.decision);
        }
        // What comes in is addressed to the user's own resource, which is not a nickname.
        let inbound = "<presence from='bob@x/pc' to='alice@x/falcon'/>";
        let out = outcome(&p, inbound, Direction::Inbound, Copy::Direct).await;
        assert!(
            matches!(out.decision, Decision::Forward),
            "{:?}",
            out.decision
        );
        // Nor is it read back after a redaction: a status that happens to be the word of
        // the resource it comes in to is taken out, and the presence delivered.
        let inbound =
            "<presence from='bob@x/pc' to='alice@x/falcon'><status>falcon</status></presence>";
        let out = outcome(&p, inbound, Direction::Inbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("<status"), "{text}");
        // Leaving a room under a nickname already taken is not refused.
        let leave = "<presence to='deals@muc.x/falcon' type='unavailable'/>";
        let out = outcome(&p, leave, Direction::Outbound, Copy::Direct).await;
        assert!(
            matches!(out.decision, Decision::Forward | Decision::Replace(_)),
            "{:?}",
            out.decision
        );
    }

    /// A room reads a configuration field by its name, whatever type the client gives it
    /// (Prosody, ejabberd): a name or description marked private is read. ejabberd keeps
    /// a value's or a reason's own text and drops an element inside it: a word split by
    /// one is read as the room keeps it.
    #[tokio::test]
    async fn a_room_name_or_reason_is_read_as_the_room_reads_it() {
        let p = pipeline(CARD_RULES);
        let card = "4111111111111111";
        for xml in [
            config(&format!(
                "<field var='muc#roomconfig_roomname' type='text-private'><value>{card}</value></field>"
            )),
            config(&format!(
                "<field var='muc#roomconfig_roomdesc' type='text-private'><value>{card}</value></field>"
            )),
        ] {
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{xml}: {:?}",
                out.decision
            );
        }
        for xml in [
            config("<field var='muc#roomconfig_roomname'><value>fal<b/>con</value></field>"),
            config("<field var='muc#roomconfig_roomdesc'><value>fal<b>x</b>con</value></field>"),
            admin("<item nick='bob' role='none'><reason>fal<b/>con</reason></item>"),
            destroy("<reason>fal<b>x</b>con</reason>"),
        ] {
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            match out.decision {
                Decision::Refuse { .. } => {}
                Decision::Replace(bytes) => {
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(!text.contains("fal"), "{xml}: {text}");
                }
                other => panic!("{xml}: {other:?}"),
            }
        }
    }

    /// What a room shows as it was written without its request presenting it as words:
    /// a setting's value (its language), the password a room's end hands to every
    /// occupant (Prosody), the nickname reserved for a member (Prosody). Each is judged,
    /// recorded only when a rule matched it; a kick of a nickname someone took, an
    /// address and a role are not judged.
    #[tokio::test]
    async fn what_a_room_shows_as_written_is_judged() {
        let p = pipeline(CARD_RULES);
        let card = "4111111111111111";
        for xml in [
            config(&format!(
                "<field var='muc#roomconfig_lang'><value>{card}</value></field>"
            )),
            destroy(&format!("<password>{card}</password>")),
            admin(&format!(
                "<item affiliation='member' jid='bob@x' nick='{card}'/>"
            )),
        ] {
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{xml}: {:?}",
                out.decision
            );
        }
        for xml in [
            config(
                "<field var='muc#roomconfig_lang'><value>en</value></field>\
                 <field var='muc#roomconfig_whois'><value>moderators</value></field>\
                 <field var='muc#roomconfig_presencebroadcast'><value>moderator</value><value>participant</value></field>",
            ),
            admin("<item nick='falcon' role='none'/>"),
            admin("<item affiliation='member' jid='falcon@x'/>"),
            admin("<item affiliation='outcast' jid='bob@x' nick='falcon'/>"),
            destroy("<password>hunter2</password>"),
        ] {
            assert!(!content_of(&xml, Copy::Direct, |c| c.has_content()), "{xml}");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Forward), "{xml}: {:?}", out.decision);
        }
    }

    /// The server keeps a vCard as it was written: a description or note with an element
    /// inside reaches whoever fetches it whole, its own text and the element's.
    #[tokio::test]
    async fn a_vcard_description_with_an_element_inside_is_judged() {
        let p = pipeline(CARD_RULES);
        let card = "4111111111111111";
        for xml in [
            vcard(&format!("<DESC>{card}<b>x y</b></DESC>")),
            vcard(&format!("<DESC>see here<X>{card}</X></DESC>")),
            vcard(&format!("<NOTE>{card}<b>x y</b></NOTE>")),
        ] {
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{xml}: {:?}",
                out.decision
            );
        }
    }

    /// A command's form (XEP-0050) to the server or a room writes what the service shows
    /// others: an announcement to every user online (XEP-0133), a hat's title beside an
    /// occupant's nickname (ejabberd). Read as a room's configuration is; a password is
    /// not read.
    #[tokio::test]
    async fn a_commands_form_to_a_service_is_judged() {
        let p = pipeline(CARD_RULES);
        let card = "4111111111111111";
        let command = |to: &str, node: &str, fields: &str| {
            format!(
                "<iq to='{to}' type='set' id='a1'><command xmlns='http://jabber.org/protocol/commands' node='{node}' sessionid='s1'>\
                 <x xmlns='jabber:x:data' type='submit'>{fields}</x></command></iq>"
            )
        };
        let announce = "http://jabber.org/protocol/admin#announce";
        for xml in [
            command(
                "x",
                announce,
                &format!(
                    "<field var='announcement'><value>see</value><value>{card}</value></field>"
                ),
            ),
            command(
                "deals@muc.x",
                "urn:xmpp:hats:commands:don",
                &format!(
                    "<field var='hats#jid'><value>bob@x</value></field>\
                     <field var='hats#title'><value>{card}</value></field>"
                ),
            ),
        ] {
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Refuse { .. }),
                "{xml}: {:?}",
                out.decision
            );
        }
        let words = command(
            "x",
            announce,
            "<field var='announcement'><value>the deal is on</value></field>",
        );
        assert!(content_of(&words, Copy::Direct, |c| c.has_content()));
        for xml in [
            command(
                "x",
                "http://jabber.org/protocol/admin#change-user-password",
                &format!(
                    "<field var='accountjid'><value>bob@x</value></field>\
                     <field var='password'><value>{card}</value></field>"
                ),
            ),
            command("x", announce, ""),
        ] {
            assert!(
                !content_of(&xml, Copy::Direct, |c| c.has_content()),
                "{xml}"
            );
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            assert!(
                matches!(out.decision, Decision::Forward),
                "{xml}: {:?}",
                out.decision
            );
        }
    }

    /// A body is text, but a client that shows its text content shows the text of
    /// elements put inside it too: policy reads and redaction replaces all of it, in
    /// every language. A link's second description is read as its first.
    #[tokio::test]
    async fn words_inside_elements_inside_the_body_or_a_second_link_text_are_redacted() {
        let p = pipeline(CARD_RULES);
        for part in [
            "<body>see <i>falcon</i> today</body>",
            "<body>see fal<b>con</b> today</body>",
            "<body>see today</body><body xml:lang='de'>der <em>falcon</em></body>",
            "<body>see today</body><x xmlns='jabber:x:oob'><url>https://x.example/</url>\
             <desc>a link</desc><desc>falcon plan</desc></x>",
        ] {
            let xml =
                format!("<message from='alice@x/r' to='bob@x' type='chat' id='1'>{part}</message>");
            let out = outcome(&p, &xml, Direction::Outbound, Copy::Direct).await;
            let Decision::Replace(bytes) = out.decision else {
                panic!("not redacted: {part}: {:?}", out.decision);
            };
            let text = String::from_utf8(bytes).unwrap();
            assert!(!text.to_lowercase().contains("falcon"), "{text}");
            assert!(!text.to_lowercase().contains("con</b>"), "{text}");
            assert!(text.contains("today") || text.contains("a link"), "{text}");
        }
        let v = view("<message to='bob@x'><body>fal<b>con</b></body></message>");
        assert_eq!(v.body.as_deref(), Some("falcon"));
    }

    /// A file sent between clients crosses without a record (XEP-0234 Jingle over a
    /// direct or relayed connection, in-band chunks, XEP-0096, XEP-0066 iq): the requests
    /// that start or carry one are refused, either way; a Jingle call and the answers to a
    /// request are not.
    #[tokio::test]
    async fn a_file_sent_between_clients_is_refused_and_a_call_is_not() {
        let p = pipeline(CARD_RULES);
        for payload in [
            "<jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s1'>\
             <content creator='initiator' name='f'>\
             <description xmlns='urn:xmpp:jingle:apps:file-transfer:5'><file><name>4111 1111 1111 1111.txt</name></file></description>\
             <transport xmlns='urn:xmpp:jingle:transports:s5b:1' sid='t'/></content></jingle>",
            "<jingle xmlns='urn:xmpp:jingle:1' action='content-add' sid='s1'><content creator='initiator' name='g'>\
             <description xmlns='urn:xmpp:jingle:apps:file-transfer:4'/></content></jingle>",
            "<jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s2'><content creator='initiator' name='h'>\
             <description xmlns='urn:example:made-up'/><transport xmlns='urn:xmpp:jingle:transports:ibb:1' sid='t' block-size='4096'/></content></jingle>",
            "<open xmlns='http://jabber.org/protocol/ibb' block-size='4096' sid='i1' stanza='iq'/>",
            "<data xmlns='http://jabber.org/protocol/ibb' seq='0' sid='i1'>c2VjcmV0</data>",
            "<si xmlns='http://jabber.org/protocol/si' id='a' profile='http://jabber.org/protocol/si/profile/file-transfer'/>",
            "<query xmlns='http://jabber.org/protocol/bytestreams' sid='b'><streamhost jid='p.x' host='10.0.0.1' port='7777'/></query>",
            "<query xmlns='jabber:iq:oob'><url>http://10.0.0.1/ledger.xlsx</url></query>",
        ] {
            let xml = format!("<iq from='alice@x/r' to='bob@x/phone' type='set' id='j1'>{payload}</iq>");
            for direction in [Direction::Outbound, Direction::Inbound] {
                let out = outcome(&p, &xml, direction, Copy::Direct).await;
                let Decision::Refuse { error: Some(error) } = out.decision else {
                    panic!("passed: {payload}");
                };
                let error = String::from_utf8_lossy(&error).into_owned();
                assert!(error.contains("not-acceptable") && error.contains("HTTP upload"), "{error}");
            }
        }
        for passes in [
            "<iq from='alice@x/r' to='bob@x/phone' type='set' id='c1'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='c'>\
             <content creator='initiator' name='voice'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></content></jingle></iq>",
            "<iq from='alice@x/r' to='bob@x/phone' type='result' id='j1'/>",
            "<iq from='alice@x/r' to='x' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        ] {
            let out = outcome(&p, passes, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Forward), "{passes}: {:?}", out.decision);
        }
    }

    /// A presence's status is shown to everyone it reaches: policy judges it as a body.
    /// A redaction takes the status out and the presence goes on; a block refuses it.
    #[tokio::test]
    async fn a_status_is_judged_redacted_or_refused() {
        let p = pipeline(CARD_RULES);
        let redacted = "<presence from='alice@x/r'><show>away</show><status>on falcon</status>\
                        <status xml:lang='de'>bei falcon</status><priority>5</priority></presence>";
        let out = outcome(&p, redacted, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("falcon") && !text.contains("<status"),
            "{text}"
        );
        assert!(
            text.contains("<show>away</show>") && text.contains("<priority>5"),
            "{text}"
        );
        // Words no client shows in a presence's own texts.
        for hidden in [
            "<presence from='alice@x/r'><status note='card 4111 1111 1111 1111'>in a meeting</status></presence>",
            "<presence from='alice@x/r'><show note='card 4111 1111 1111 1111'>away</show></presence>",
            "<presence from='alice@x/r'><priority note='card 4111 1111 1111 1111'>5</priority></presence>",
            "<presence from='alice@x/r'><nick xmlns='http://jabber.org/protocol/nick' note='card 4111 1111 1111 1111'>Al</nick></presence>",
            "<presence from='alice@x/r'><status>in a <i title='card 4111 1111 1111 1111'>meeting</i></status></presence>",
        ] {
            let out = outcome(&p, hidden, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{hidden}: {:?}", out.decision);
        }
        let blocked = "<presence from='alice@x/r' to='room@muc.x/al'><status>card 4111 1111 1111 1111</status></presence>";
        let out = outcome(&p, blocked, Direction::Outbound, Copy::Direct).await;
        assert!(
            matches!(out.decision, Decision::Refuse { .. }),
            "{:?}",
            out.decision
        );
        for hidden in [
            "<presence from='alice@x/r' to='bob@x' type='subscribe'><nick xmlns='http://jabber.org/protocol/nick'>card 4111 1111 1111 1111</nick></presence>",
            "<presence from='alice@x/r'><show>card 4111 1111 1111 1111</show></presence>",
        ] {
            let out = outcome(&p, hidden, Direction::Outbound, Copy::Direct).await;
            assert!(matches!(out.decision, Decision::Refuse { .. }), "{hidden}");
        }
        // Going offline is never refused: its texts go, it is delivered.
        for direction in [Direction::Outbound, Direction::Inbound] {
            let offline = "<presence from='alice@x/r' type='unavailable'><status>card 4111 1111 1111 1111</status></presence>";
            let out = outcome(&p, offline, direction, Copy::Direct).await;
            let Decision::Replace(bytes) = out.decision else {
                panic!("not delivered: {:?}", out.decision);
            };
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.contains("unavailable") && !text.contains("4111"),
                "{text}"
            );
        }
        let plain = "<presence from='alice@x/r'><show>dnd</show><status>in a meeting</status>\
                     <nick xmlns='http://jabber.org/protocol/nick'>Alice</nick></presence>";
        let out = outcome(&p, plain, Direction::Outbound, Copy::Direct).await;
        assert!(
            matches!(out.decision, Decision::Forward),
            "{:?}",
            out.decision
        );
        assert!(!content_of(redacted, Copy::Direct, |c| c.has_content()));
    }

    #[test]
    fn a_redaction_that_would_leave_a_redacted_text_is_refused() {
        // Policy redacted a link description it was told is German; the stanza's only
        // description has no language, so the rewrite in place finds nothing to change.
        let xml = "<message from='alice@x/r' to='bob@x' type='chat' id='1'><body>hi</body>\
                   <x xmlns='jabber:x:oob'><url>https://x.example/</url><desc>falcon plan</desc></x></message>";
        let (mut verdict, _) = redaction_of(CARD_RULES, xml);
        verdict.action = custos_policy::Action::Redact;
        let held = Held::of(xml);
        let item = held.item(Direction::Outbound, Copy::Direct);
        let mut c = content(&item);
        let desc = c.extra.iter_mut().find(|t| t.kind == "oob-desc").unwrap();
        desc.lang = Some("de".into());
        let delivered: Vec<Option<String>> = c
            .extra
            .iter()
            .map(|t| (t.kind == "oob-desc").then(|| "████ plan".to_owned()))
            .collect();
        assert!(redact(&item, &c, &verdict, &delivered).is_none());
    }

    #[tokio::test]
    async fn an_alert_is_not_spent_by_a_copy_that_raised_none() {
        let rules = "[alert]\nwebhook = \"https://alerts.example/hook\"\n\n\
                     [[rule]]\nid = \"codename\"\nwhen = { body = { regex = \"(?i)falcon\" } }\n\
                     action = \"flag\"\nalert = true\n";
        let path = std::path::Path::new("rules.toml");
        let policy = custos_policy::Policy::from_str(rules, path).unwrap();
        let (sender, mut sent) = AlertSender::queue();
        let p = Pipeline::new(
            Some(PolicyHandle::new(path, policy)),
            None,
            OnArchiveFailure::Block,
            Some(sender),
        );
        let harmless = "<message to='bob@x' type='chat' id='7'><body>lunch?</body></message>";
        outcome(&p, harmless, Direction::Outbound, Copy::Direct).await;
        assert!(sent.try_recv().is_err());
        // Same id and body, so the same logical message; its words are in an extension.
        let loaded = "<message to='bob@x' type='chat' id='7'><body>lunch?</body>\
                      <x xmlns='urn:example:custom'>falcon</x></message>";
        outcome(&p, loaded, Direction::Outbound, Copy::Direct).await;
        assert_eq!(
            sent.try_recv().map(|a| a.rule.to_string()).ok().as_deref(),
            Some("codename")
        );
        // A copy of it alerts no more.
        outcome(&p, loaded, Direction::Outbound, Copy::Direct).await;
        assert!(sent.try_recv().is_err());
    }

    /// What the pipeline makes of `xml` as alice's client sends it.
    fn content_of<T>(xml: &str, copy: Copy, f: impl FnOnce(&Content<'_>) -> T) -> T {
        f(&content(&Held::of(xml).item(Direction::Outbound, copy)))
    }

    #[tokio::test]
    async fn words_in_ids_and_states_are_recorded_and_judged() {
        let p = pipeline(CARD_RULES);
        let thread =
            "<message to='bob@x' type='chat'><thread>4111 1111 1111 1111</thread></message>";
        assert!(content_of(thread, Copy::Direct, |c| c.has_content()));
        let out = outcome(&p, thread, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }));
        // A redacted word in a chat state takes the chat state out; the body goes on.
        let state = "<message to='bob@x' type='chat'><body>hi</body>\
                     <active xmlns='http://jabber.org/protocol/chatstates'>falcon</active></message>";
        let out = outcome(&p, state, Direction::Outbound, Copy::Direct).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("falcon") && text.contains("hi"), "{text}");
        // Ordinary chat states and receipts are no records.
        for plain in [
            "<message to='bob@x' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/><thread>t1</thread></message>",
            "<message to='bob@x'><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
        ] {
            assert!(!content_of(plain, Copy::Direct, |c| c.has_content()), "{plain}");
        }
        // A thread beside a body does not change the message's identity, words or not.
        let alone = id_of(
            "<message from='alice@x/r' to='bob@x' type='chat' id='m1'><body>hi</body></message>",
            Direction::Outbound,
        );
        for thread in ["t-4711", "4111 1111 1111 1111"] {
            let with = id_of(
                &format!("<message from='alice@x/r' to='bob@x' type='chat' id='m1'><body>hi</body><thread>{thread}</thread></message>"),
                Direction::Outbound,
            );
            assert_eq!(alone, with, "{thread}");
        }
    }

    #[tokio::test]
    async fn a_wrapper_inside_a_wrapper_is_read_and_flagged() {
        let p = pipeline(CARD_RULES);
        // A client forwards (XEP-0297) a carbon it made up.
        let nested = "<message to='bob@x' id='n'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'>\
                      <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'>\
                      <body>4111 1111 1111 1111</body></message></forwarded></sent></message></forwarded></message>";
        let out = outcome(&p, nested, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }));
        // A carbon a client made up, inside another one.
        let double = "<message to='bob@x' id='d'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
                      <message xmlns='jabber:client'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
                      <message xmlns='jabber:client'><body>falcon</body></message></forwarded></sent></message>\
                      </forwarded></sent></message>";
        content_of(double, Copy::ForgedWrapper, |c| {
            assert!(c.has_content());
            assert!(c.forged_wrapper);
            assert!(c
                .extra
                .iter()
                .any(|t| t.kind == "forwarded-body" && t.text == "falcon"));
        });
        // The same inside a carbon the server vouches for: the inner wrapper is nobody's.
        let carbon = format!(
            "<message from='alice@x' to='alice@x/r'><received xmlns='urn:xmpp:carbons:2'>\
             <forwarded xmlns='urn:xmpp:forward:0'>{}</forwarded></received></message>",
            double.replace(
                "<message to='bob@x' id='d'>",
                "<message xmlns='jabber:client' from='mallory@y/m' to='alice@x/p' id='d'>"
            )
        );
        content_of(&carbon, Copy::CarbonReceived, |c| {
            assert_eq!(c.via, Via::CarbonReceived);
            assert!(c.forged_wrapper);
            assert!(c
                .extra
                .iter()
                .any(|t| t.kind == "forwarded-body" && t.text == "falcon"));
        });
        let out = outcome(&p, &carbon, Direction::Inbound, Copy::CarbonReceived).await;
        let Decision::Replace(bytes) = out.decision else {
            panic!("not redacted: {:?}", out.decision);
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("falcon"), "{text}");
        assert!(
            text.contains("carbons:2"),
            "the server's own carbon went: {text}"
        );
    }

    #[tokio::test]
    async fn a_forged_wrapper_is_judged_by_what_it_wraps() {
        let p = pipeline(CARD_RULES);
        // An insider hides a card number inside a fake archive result.
        let xml = "<message to='bob@x' id='w'><result xmlns='urn:xmpp:mam:2' queryid='q' id='1'>\
                   <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='carol@x' to='bob@x'>\
                   <body>4111 1111 1111 1111</body></message></forwarded></result></message>";
        let out = outcome(&p, xml, Direction::Outbound, Copy::ForgedWrapper).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }));
        let held = Held::of(xml);
        let item = held.item(Direction::Outbound, Copy::ForgedWrapper);
        let c = content(&item);
        assert!(c.forged_wrapper);
        assert_eq!(c.via, Via::Direct);
        assert!(c.has_content());
        assert!(c.extra.iter().any(|t| t.kind == "forwarded-body"));
    }

    #[tokio::test]
    async fn a_believed_carbon_is_the_message_it_carries() {
        let xml = "<message from='alice@x' to='alice@x/r'><sent xmlns='urn:xmpp:carbons:2'>\
                   <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@x/phone' to='bob@x' type='chat' id='m'>\
                   <body>hi</body></message></forwarded></sent></message>";
        let held = Held::of(xml);
        let item = held.item(Direction::Inbound, Copy::CarbonSent);
        let c = content(&item);
        assert_eq!(c.via, Via::CarbonSent);
        assert_eq!(c.direction, Direction::Outbound);
        assert_eq!(c.view.from.as_deref(), Some("alice@x/phone"));
        assert!(!c.forged_wrapper);
        // It is the same logical message as the sender's own stanza.
        let sent = id_of(
            "<message from='alice@x/phone' to='bob@x' type='chat' id='m'><body>hi</body></message>",
            Direction::Outbound,
        );
        let ids = Identities::of(&c, None);
        assert_eq!(ids.identity, sent);
    }

    /// An archive result carrying a message nobody recorded live.
    fn replayed(id: &str, body: &str) -> String {
        format!(
            "<message from='alice@x' to='alice@x/r'><result xmlns='urn:xmpp:mam:2' queryid='q' id='{id}'>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@x/p' \
             to='alice@x' type='chat' id='{id}'><body>{body}</body></message></forwarded></result></message>"
        )
    }

    /// The rules on the newest record of the archive.
    fn newest_rules(a: &Archive) -> Vec<String> {
        let end = a.reader().chain_end().unwrap();
        let mut rules = Vec::new();
        a.reader()
            .scan::<custos_archive::ReadError>(end, |e| {
                if let Some(custos_archive::Record {
                    content: NewRecord::Message(m),
                    ..
                }) = e.record
                {
                    assert_eq!(m.capture.via, Via::Mam);
                    rules = m.outcome.rules;
                }
                Ok(())
            })
            .unwrap();
        rules
    }

    /// After a start the index may still be catching up with the log, and memory knows
    /// nothing of what was recorded before: a replay that cannot be placed is flagged
    /// under a name that does not claim it bypassed Custos; once the index covers the
    /// log, one that has no live copy is replay-only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_is_flagged_for_what_the_archive_can_tell() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = custos_archive::keys_init(
            &tmp.path().join("master.key"),
            &tmp.path().join("signing.key"),
        )
        .unwrap();
        let cfg = custos_archive::ArchiveConfig::new(
            tmp.path().join("archive"),
            custos_archive::MasterKey::from_file(&keys.master_key).unwrap(),
            custos_archive::load_signing_key(&keys.signing_key).unwrap(),
        );
        let a = Archive::open(cfg.clone()).unwrap();
        let earlier: Vec<_> = (0..20_000)
            .map(|i| {
                a.submit(NewRecord::Message(MessageRecord::chat(
                    "c@x/r",
                    "d@x",
                    format!("earlier {i}"),
                )))
            })
            .collect();
        for s in earlier {
            s.await.unwrap();
        }
        a.close().await.unwrap();
        // The index is lost: the archive serves at once and rebuilds it meanwhile.
        std::fs::remove_dir_all(tmp.path().join("archive/index")).unwrap();
        let a = Archive::open(cfg).unwrap();
        let p = Pipeline::new(None, Some(a.clone()), OnArchiveFailure::Block, None);
        outcome(&p, &replayed("r1", "first"), Direction::Inbound, Copy::Mam).await;
        assert!(
            a.index_lag() > 0,
            "the index caught up before the replay was judged"
        );
        assert_eq!(newest_rules(&a), [RULE_REPLAY_UNVERIFIED]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while a.index_lag() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcome(&p, &replayed("r2", "second"), Direction::Inbound, Copy::Mam).await;
        assert_eq!(newest_rules(&a), [RULE_REPLAY_ONLY]);
        a.close().await.unwrap();
    }

    /// A presence whose texts a rule matched is on the record with its verdict, so a flag
    /// or an alert on a status works as on a message; any other presence is not recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_presence_a_rule_matched_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = custos_archive::keys_init(
            &tmp.path().join("master.key"),
            &tmp.path().join("signing.key"),
        )
        .unwrap();
        let a = Archive::open(custos_archive::ArchiveConfig::new(
            tmp.path().join("archive"),
            custos_archive::MasterKey::from_file(&keys.master_key).unwrap(),
            custos_archive::load_signing_key(&keys.signing_key).unwrap(),
        ))
        .unwrap();
        let rules = format!(
            "{CARD_RULES}\n[[rule]]\nid = \"watch\"\nwhen = {{ body = {{ regex = \"(?i)kestrel\" }} }}\naction = \"flag\"\n"
        );
        let path = std::path::Path::new("rules.toml");
        let policy = custos_policy::Policy::from_str(&rules, path).unwrap();
        let p = Pipeline::new(
            Some(PolicyHandle::new(path, policy)),
            Some(a.clone()),
            OnArchiveFailure::Block,
            None,
        );
        let recorded = || {
            let mut all = Vec::new();
            a.reader()
                .scan::<custos_archive::ReadError>(1, |e| {
                    if let Some(custos_archive::Record {
                        content: NewRecord::Message(m),
                        ..
                    }) = e.record
                    {
                        all.push(m);
                    }
                    Ok(())
                })
                .unwrap();
            all
        };
        for plain in [
            "<presence from='alice@x/r'><status>in a meeting</status></presence>",
            "<presence from='alice@x/r'/>",
        ] {
            outcome(&p, plain, Direction::Outbound, Copy::Direct).await;
        }
        assert!(recorded().is_empty());
        let flagged = "<presence from='alice@x/r'><show>away</show><status>kestrel at noon</status></presence>";
        let out = outcome(&p, flagged, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Forward));
        let blocked = "<presence from='alice@x/r' to='bob@x'><status>card 4111 1111 1111 1111</status></presence>";
        let out = outcome(&p, blocked, Direction::Outbound, Copy::Direct).await;
        assert!(matches!(out.decision, Decision::Refuse { .. }));
        let all = recorded();
        assert_eq!(all.len(), 2, "{all:#?}");
        assert_eq!(all[0].stanza_type, "available");
        assert_eq!(all[0].outcome.action, custos_archive::Action::Flag);
        assert_eq!(all[0].outcome.rules, ["watch"]);
        assert!(all[0]
            .capture
            .extra
            .iter()
            .any(|t| t.kind == "status" && t.text == "kestrel at noon"));
        assert_eq!(all[1].outcome.action, custos_archive::Action::Block);
        a.close().await.unwrap();
    }

    #[test]
    fn copies_share_an_identity_and_different_messages_do_not() {
        let sent = id_of(
            "<message from='alice@x/laptop' to='bob@x' type='chat' id='m1'><body>hi</body></message>",
            Direction::Outbound,
        );
        // The recipient's copy: full JID as `to`, a server-stamped stanza-id added.
        let received = id_of(
            "<message from='alice@x/laptop' to='bob@x/phone' type='chat' id='m1'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='s' by='bob@x'/></message>",
            Direction::Inbound,
        );
        assert_eq!(sent, received);
        // An extension the server adds to what it delivers changes nothing.
        let stamped = id_of(
            "<message from='alice@x/laptop' to='bob@x/phone' type='chat' id='m1'><body>hi</body>\
             <x xmlns='urn:example:server-added' seen='1'/></message>",
            Direction::Inbound,
        );
        assert_eq!(sent, stamped);
        // Same id, other text: another message.
        let reused = id_of(
            "<message from='alice@x/laptop' to='bob@x' type='chat' id='m1'><body>other</body></message>",
            Direction::Outbound,
        );
        assert_ne!(sent, reused);
        // A text hidden in a second-language body makes another message too.
        let hidden = id_of(
            "<message from='alice@x/laptop' to='bob@x' type='chat' id='m1'><body>hi</body>\
             <body xml:lang='de'>geheim</body></message>",
            Direction::Outbound,
        );
        assert_ne!(sent, hidden);
        // Group chat: the outbound message to the room and each echo from room/nick.
        let to_room = id_of(
            "<message from='alice@x/l' to='room@muc.x' type='groupchat' id='g1'><body>all</body></message>",
            Direction::Outbound,
        );
        let echo = id_of(
            "<message from='room@muc.x/alice' to='carol@x/c' type='groupchat' id='g1'><body>all</body></message>",
            Direction::Inbound,
        );
        assert_eq!(to_room, echo);
    }

    /// Whether `xml`, crossing in `direction`, is recorded, and whether it is forwarded
    /// unchanged under [`CARD_RULES`].
    async fn recorded_and_forwarded(xml: &str, direction: Direction) -> (bool, bool) {
        let held = Held::of(xml);
        let recorded = content(&held.item(direction, Copy::Direct)).has_content();
        let p = pipeline(CARD_RULES);
        let out = outcome(&p, xml, direction, Copy::Direct).await;
        (recorded, matches!(out.decision, Decision::Forward))
    }

    /// What common clients (Conversations, Gajim, Dino, Monal, Converse.js, Profanity,
    /// slixmpp) and servers (Prosody, ejabberd) send in normal use without a person's
    /// words in it is no record, and passes unchanged.
    #[tokio::test]
    async fn machinery_of_common_clients_and_servers_is_no_content() {
        use Direction::{Inbound as In, Outbound as Out};
        let machinery: &[(&str, Direction)] = &[
            // Chat states, receipts, markers, ids, hints.
            ("<message to='bob@x' type='chat' id='c1'><composing xmlns='http://jabber.org/protocol/chatstates'/>\
              <no-store xmlns='urn:xmpp:hints'/></message>", Out),
            ("<message from='bob@x/dino' to='alice@x/r' type='chat' id='r1'><received xmlns='urn:xmpp:receipts' id='m1'/>\
              <origin-id xmlns='urn:xmpp:sid:0' id='r1'/><store xmlns='urn:xmpp:hints'/></message>", In),
            ("<message to='bob@x' type='chat' id='d1'><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>\
              <store xmlns='urn:xmpp:hints'/></message>", Out),
            ("<message to='room@muc.x' type='groupchat' id='d2'><displayed xmlns='urn:xmpp:chat-markers:0' id='2024-abc' sender='room@muc.x/bob'/></message>", Out),
            ("<message from='bob@x/gajim' to='alice@x/r' type='chat' id='g1'><paused xmlns='http://jabber.org/protocol/chatstates'/>\
              <stanza-id xmlns='urn:xmpp:sid:0' id='Zx1' by='alice@x'/></message>", In),
            // A private message in a room carries an empty muc#user element.
            ("<message to='room@muc.x/bob' type='chat' id='p1'><x xmlns='http://jabber.org/protocol/muc#user'/>\
              <active xmlns='http://jabber.org/protocol/chatstates'/></message>", Out),
            // A room tells its occupants its configuration changed (Prosody, ejabberd).
            ("<message from='room@muc.x' to='alice@x/r' type='groupchat' id='cfg'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <status code='104'/></x></message>", In),
            ("<message from='room@muc.x' to='alice@x/r' type='groupchat' id='cfg2'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <status code='170'/><status code='172'/></x><stanza-id xmlns='urn:xmpp:sid:0' id='s9' by='room@muc.x'/></message>", In),
            // XEP-0353 call set-up (Conversations, Dino, Monal).
            ("<message to='bob@x' type='chat' id='jm1'><propose xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'>\
              <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'/>\
              <device xmlns='http://gultsch.de/xmpp/drafts/omemo/dlts-srtp-verification' id='123456'/></propose>\
              <request xmlns='urn:xmpp:receipts'/><store xmlns='urn:xmpp:hints'/></message>", Out),
            ("<message from='bob@x/dino' to='alice@x/r' type='chat' id='jm2'><ringing xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'/></message>", In),
            ("<message from='bob@x/dino' to='alice@x/r' type='chat' id='jm3'><proceed xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'>\
              <device xmlns='http://gultsch.de/xmpp/drafts/omemo/dlts-srtp-verification' id='654321'/></proceed></message>", In),
            ("<message to='alice@x' type='chat' id='jm4'><accept xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'/><store xmlns='urn:xmpp:hints'/></message>", Out),
            ("<message to='bob@x' type='chat' id='jm5'><reject xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'>\
              <reason xmlns='urn:xmpp:jingle:1'><busy/></reason></reject><store xmlns='urn:xmpp:hints'/></message>", Out),
            ("<message to='bob@x' type='chat' id='jm6'><retract xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'>\
              <reason xmlns='urn:xmpp:jingle:1'><cancel/></reason></retract></message>", Out),
            ("<message to='bob@x' type='chat' id='jm7'><finish xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'>\
              <reason xmlns='urn:xmpp:jingle:1'><success/></reason></finish><store xmlns='urn:xmpp:hints'/></message>", Out),
            // PEP notifications (headline): avatar, OMEMO device lists, bookmarks, MDS; ejabberd
            // adds the publisher's address (XEP-0033 replyto) and a delay to the last item.
            ("<message from='bob@x' to='alice@x/r' type='headline' id='n1'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
              <items node='urn:xmpp:avatar:metadata'><item id='a1b2c3'><metadata xmlns='urn:xmpp:avatar:metadata'>\
              <info bytes='12345' id='a1b2c3' height='64' width='64' type='image/png'/></metadata></item></items></event>\
              <addresses xmlns='http://jabber.org/protocol/address'><address type='replyto' jid='bob@x/Conversations.AbCd'/></addresses></message>", In),
            ("<message from='bob@x' to='alice@x/r' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
              <items node='eu.siacs.conversations.axolotl.devicelist'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'>\
              <device id='1234'/><device id='5678'/></list></item></items></event>\
              <delay xmlns='urn:xmpp:delay' stamp='2026-01-01T10:00:00.000Z'/>\
              <addresses xmlns='http://jabber.org/protocol/address'><address type='replyto' jid='bob@x/gajim.XY12'/></addresses></message>", In),
            ("<message from='bob@x' to='alice@x/r' type='headline' id='n3'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
              <items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'>\
              <device id='1234' label='Gajim on laptop'/></devices></item></items></event></message>", In),
            ("<message from='alice@x' to='alice@x/r' type='headline' id='n4'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
              <items node='urn:xmpp:bookmarks:1'><item id='room@muc.x'><conference xmlns='urn:xmpp:bookmarks:1' name='Team room' autojoin='true'>\
              <nick>alice</nick></conference></item></items></event></message>", In),
            ("<message from='alice@x' to='alice@x/r' type='headline' id='n5'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
              <items node='urn:xmpp:mds:displayed:0'><item id='bob@x'><displayed xmlns='urn:xmpp:mds:displayed:0'>\
              <stanza-id xmlns='urn:xmpp:sid:0' id='Zx1' by='alice@x'/></displayed></item></items></event></message>", In),
            ("<message from='alice@x' to='alice@x/r' type='headline' id='n6'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
              <items node='urn:xmpp:bookmarks:1'><retract id='room@muc.x'/></items></event></message>", In),
            // MUC self-ping (XEP-0410), and the room's answers.
            ("<iq to='room@muc.x/alice' type='get' id='sp1'><ping xmlns='urn:xmpp:ping'/></iq>", Out),
            ("<iq from='room@muc.x/alice' to='alice@x/r' type='result' id='sp1'/>", In),
            ("<iq from='room@muc.x/alice' to='alice@x/r' type='error' id='sp1'><error type='cancel' by='room@muc.x'>\
              <not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>You are not currently connected to this chat</text></error></iq>", In),
            // Jingle RTP call set-up between clients: codecs, ICE-UDP, DTLS, SSMA.
            ("<iq to='bob@x/dino.abc' type='set' id='j1'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' initiator='alice@x/r' sid='Kq2vZ1'>\
              <content creator='initiator' name='0' senders='both'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio' ssrc='3735928559'>\
              <payload-type id='111' name='opus' clockrate='48000' channels='2'><parameter name='minptime' value='10'/><parameter name='useinbandfec' value='1'/>\
              <rtcp-fb xmlns='urn:xmpp:jingle:apps:rtp:rtcp-fb:0' type='transport-cc'/></payload-type>\
              <payload-type id='126' name='telephone-event' clockrate='8000'/>\
              <rtp-hdrext xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0' id='1' uri='urn:ietf:params:rtp-hdrext:ssrc-audio-level'/>\
              <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='3735928559'><parameter name='cname' value='4TOk42mSjXCkVIa6'/>\
              <parameter name='msid' value='my-media-stream my-audio-track'/></source><rtcp-mux/></description>\
              <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='8hhy' pwd='asd88fgpdd777uzjYhagZg'>\
              <fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='actpass'>02:1A:CC:54:27:AB:EB:9C:53:3F:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1:7A:03:A2:7D:F9:B0:7F:46:19:B2</fingerprint>\
              <candidate component='1' foundation='1' generation='0' id='el0747fg11' ip='10.0.1.1' network='1' port='8998' priority='2130706431' protocol='udp' type='host'/>\
              </transport></content><group xmlns='urn:xmpp:jingle:apps:grouping:0' semantics='BUNDLE'><content name='0'/></group></jingle></iq>", Out),
            ("<iq from='bob@x/dino.abc' to='alice@x/r' type='set' id='j2'><jingle xmlns='urn:xmpp:jingle:1' action='session-terminate' sid='Kq2vZ1'>\
              <reason><success/></reason></jingle></iq>", In),
            // What clients ask each other: capabilities, software, time, last activity, ping.
            ("<iq from='bob@x/gajim' to='alice@x/r' type='get' id='q1'><query xmlns='http://jabber.org/protocol/disco#info' node='https://conversations.im#q07IKJEyjvHSyhy//CH0CxmKi8w='/></iq>", In),
            ("<iq to='bob@x/gajim' type='result' id='q1'><query xmlns='http://jabber.org/protocol/disco#info' node='https://conversations.im#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
              <identity category='client' type='phone' name='Conversations'/><feature var='http://jabber.org/protocol/caps'/>\
              <feature var='urn:xmpp:jingle-message:0'/><feature var='eu.siacs.conversations.axolotl.devicelist+notify'/>\
              <x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
              <field var='os'><value>Android</value></field><field var='os_version'><value>14</value></field>\
              <field var='software'><value>Conversations</value></field><field var='software_version'><value>2.16.7+free</value></field></x>\
              </query></iq>", Out),
            // Profanity names its software and version in its identity.
            ("<iq to='bob@x/gajim' type='result' id='q2'><query xmlns='http://jabber.org/protocol/disco#info' node='http://profanity-im.github.io#TB8mnKvWJ9dEf0vGYmNaHjLjE0M='>\
              <identity category='client' type='console' name='Profanity 0.14.0dev.master.5b1e2f0'/><feature var='http://jabber.org/protocol/caps'/></query></iq>", Out),
            ("<iq to='bob@x/gajim' type='result' id='v1'><query xmlns='jabber:iq:version'><name>Conversations</name><version>2.16.7+free</version><os>Android</os></query></iq>", Out),
            ("<iq from='bob@x/gajim' to='alice@x/r' type='result' id='t1'><time xmlns='urn:xmpp:time'><tzo>+01:00</tzo><utc>2026-01-01T10:00:00Z</utc></time></iq>", In),
            ("<iq to='bob@x/gajim' type='result' id='l1'><query xmlns='jabber:iq:last' seconds='903'/></iq>", Out),
            ("<iq from='bob@x/gajim' to='alice@x/r' type='get' id='pi'><ping xmlns='urn:xmpp:ping'/></iq>", In),
            // What a client asks its server: roster, archive, PEP publishes, blocking, push,
            // upload slots, carbons.
            ("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@x' name='Bob Smith'><group>Work friends</group></item></query></iq>", Out),
            ("<iq type='set' id='m1'><query xmlns='urn:xmpp:mam:2' queryid='f27'><x xmlns='jabber:x:data' type='submit'>\
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='with'><value>bob@x</value></field></x>\
              <set xmlns='http://jabber.org/protocol/rsm'><max>50</max><before/></set></query></iq>", Out),
            ("<iq type='set' id='av'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:metadata'>\
              <item id='a1b2c3'><metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='12345' id='a1b2c3' height='64' width='64' type='image/png'/></metadata></item></publish>\
              <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
              <field var='pubsub#access_model'><value>open</value></field></x></publish-options></pubsub></iq>", Out),
            ("<iq type='set' id='om'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:omemo:2:devices'>\
              <item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='1234' label='Gajim on laptop'/></devices></item></publish></pubsub></iq>", Out),
            ("<iq type='set' id='bm'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:bookmarks:1'>\
              <item id='room@muc.x'><conference xmlns='urn:xmpp:bookmarks:1' name='Team room' autojoin='true'><nick>alice</nick></conference></item></publish>\
              <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
              <field var='pubsub#persist_items'><value>true</value></field><field var='pubsub#max_items'><value>max</value></field>\
              <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub></iq>", Out),
            ("<iq type='set' id='md'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:mds:displayed:0'>\
              <item id='bob@x'><displayed xmlns='urn:xmpp:mds:displayed:0'><stanza-id xmlns='urn:xmpp:sid:0' id='Zx1' by='alice@x'/></displayed></item></publish></pubsub></iq>", Out),
            ("<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='spam@y'/></block></iq>", Out),
            ("<iq type='set' id='pu'><enable xmlns='urn:xmpp:push:0' jid='push.example' node='yxs32uqsflafdk3iuqo'>\
              <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
              <field var='secret'><value>eruio234vzxc2kla-91</value></field></x></enable></iq>", Out),
            ("<iq type='get' to='upload.x' id='up'><request xmlns='urn:xmpp:http:upload:0' filename='holiday photo.jpg' size='23456' content-type='image/jpeg'/></iq>", Out),
            ("<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>", Out),
            ("<iq from='alice@x' to='alice@x/r' type='set' id='rp'><query xmlns='jabber:iq:roster' ver='v2'><item jid='bob@x' name='Bob Smith' subscription='both'/></query></iq>", In),
            // Presences: capabilities, idle, avatar hash, room entries and exits.
            ("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://dino.im' ver='Ty2ZBqVnmwq7FdzXoR4VMqZ3S4o='/>\
              <x xmlns='vcard-temp:x:update'><photo>01b87fcd030b72895ff8e88db57ec525450f000d</photo></x></presence>", Out),
            ("<presence from='bob@x/gajim' to='alice@x/r'><show>away</show><idle xmlns='urn:xmpp:idle:1' since='2026-01-01T10:00:00Z'/>\
              <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org' ver='kfdh='/><delay xmlns='urn:xmpp:delay' from='bob@x/gajim' stamp='2026-01-01T10:00:00Z'/></presence>", In),
            ("<presence to='room@muc.x/alice'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='20'/></x>\
              <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' ver='q07='/></presence>", Out),
            ("<presence from='room@muc.x/alice' to='alice@x/r'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <item affiliation='member' role='participant' jid='alice@x/r'/><status code='110'/><status code='100'/></x>\
              <occupant-id xmlns='urn:xmpp:occupant-id:0' id='dd72603d'/></presence>", In),
            ("<presence from='room@muc.x/bob' to='alice@x/r' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <item affiliation='none' role='none'/></x></presence>", In),
            ("<presence to='room@muc.x/alice' type='unavailable'/>", Out),
            ("<presence to='bob@x' type='subscribe'/>", Out),
            ("<presence to='bob@x' type='subscribe'><nick xmlns='http://jabber.org/protocol/nick'>Alice</nick></presence>", Out),
            ("<presence><show>dnd</show><status>In a meeting</status><priority>5</priority>\
              <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org' ver='kfdh='/></presence>", Out),
            ("<presence from='bob@x' to='alice@x' type='subscribed'/>", In),
            // A room sends its subject on entry, empty when none is set (Prosody, ejabberd).
            ("<message from='room@muc.x' to='alice@x/r' type='groupchat' id='sj'><subject/></message>", In),
            // A message bounced by a server: a chat state to an unknown or blocked address.
            ("<message from='bob@y' to='alice@x/r' type='error' id='c1'><active xmlns='http://jabber.org/protocol/chatstates'/>\
              <error type='cancel' by='y'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>", In),
            ("<message from='bob@z' to='alice@x/r' type='error' id='c2'><error type='cancel'>\
              <remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>", In),
            // An occupant's vCard (avatars in rooms), and more PEP publishes.
            ("<iq to='room@muc.x/bob' type='get' id='vc'><vCard xmlns='vcard-temp'/></iq>", Out),
            ("<iq from='room@muc.x/bob' to='alice@x/r' type='result' id='vc'><vCard xmlns='vcard-temp'><FN>Bob Smith</FN>\
              <PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==</BINVAL></PHOTO></vCard></iq>", In),
            ("<iq type='set' id='ad'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:data'>\
              <item id='a1b2c3'><data xmlns='urn:xmpp:avatar:data'>iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ</data></item></publish></pubsub></iq>", Out),
            ("<iq type='set' id='ob'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='eu.siacs.conversations.axolotl.bundles:1234'>\
              <item id='current'><bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>BASE64=</signedPreKeyPublic>\
              <signedPreKeySignature>BASE64=</signedPreKeySignature><identityKey>BASE64=</identityKey>\
              <prekeys><preKeyPublic preKeyId='1'>BASE64=</preKeyPublic></prekeys></bundle></item></publish></pubsub></iq>", Out),
            ("<iq type='set' id='pv'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
              <conference jid='room@muc.x' name='Team room' autojoin='true'><nick>alice</nick></conference></storage></query></iq>", Out),
            ("<iq type='get' id='dq' to='room@muc.x'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", Out),
            ("<iq from='room@muc.x' to='alice@x/r' type='result' id='dq'><query xmlns='http://jabber.org/protocol/disco#info'>\
              <identity category='conference' type='text' name='Team room'/><feature var='muc_membersonly'/></query></iq>", In),
        ];
        let mut wrong = Vec::new();
        for (xml, direction) in machinery {
            let (recorded, forwarded) = recorded_and_forwarded(xml, *direction).await;
            if recorded || !forwarded {
                wrong.push(format!("recorded {recorded}, forwarded {forwarded}: {xml}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // The server's carbon of a chat state or marker this account sent from another client.
        let carbon = "<message from='alice@x' to='alice@x/r' type='chat'><sent xmlns='urn:xmpp:carbons:2'>\
                      <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@x/phone' to='bob@x' type='chat' id='d9'>\
                      <displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/><active xmlns='http://jabber.org/protocol/chatstates'/>\
                      </message></forwarded></sent></message>";
        let held = Held::of(carbon);
        assert!(!content(&held.item(In, Copy::CarbonSent)).has_content());
    }

    /// What people say, or share, with the same clients is content.
    #[tokio::test]
    async fn messages_of_common_clients_are_content() {
        use Direction::{Inbound as In, Outbound as Out};
        let said: &[(&str, Direction)] = &[
            ("<message to='bob@x' type='chat' id='m1'><body>Lunch at noon?</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
              <markable xmlns='urn:xmpp:chat-markers:0'/><request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='m1'/></message>", Out),
            // A reply with its fallback (XEP-0461).
            ("<message to='room@muc.x' type='groupchat' id='m2'><body>&gt; Lunch at noon?\nsure</body>\
              <reply xmlns='urn:xmpp:reply:0' to='room@muc.x/bob' id='2024-abc'/>\
              <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='16'/></fallback></message>", Out),
            // A reaction (XEP-0444).
            ("<message to='bob@x' type='chat' id='m3'><reactions xmlns='urn:xmpp:reactions:0' id='m1'><reaction>👍</reaction></reactions>\
              <store xmlns='urn:xmpp:hints'/></message>", Out),
            // A shared file: HTTP upload link (XEP-0066), SIMS (XEP-0385), SFS (XEP-0447).
            ("<message to='bob@x' type='chat' id='m4'><body>https://upload.x/abc/photo.jpg</body>\
              <x xmlns='jabber:x:oob'><url>https://upload.x/abc/photo.jpg</url></x></message>", Out),
            ("<message to='bob@x' type='chat' id='m5'><body>https://upload.x/abc/photo.jpg</body>\
              <reference xmlns='urn:xmpp:reference:0' type='data' begin='0' end='30'><media-sharing xmlns='urn:xmpp:sims:1'>\
              <file xmlns='urn:xmpp:jingle:apps:file-transfer:5'><media-type>image/jpeg</media-type><name>photo.jpg</name><size>23456</size>\
              <hash xmlns='urn:xmpp:hashes:2' algo='sha-256'>2XarmwTlNxDAMkvymloX3S5+VbylNrJt/l5QyPa+YoU=</hash></file>\
              <sources><reference xmlns='urn:xmpp:reference:0' type='data' uri='https://upload.x/abc/photo.jpg'/></sources></media-sharing></reference></message>", Out),
            ("<message from='bob@x/dino' to='alice@x/r' type='chat' id='m6'><body>https://upload.x/abc/photo.jpg</body>\
              <file-sharing xmlns='urn:xmpp:sfs:0' disposition='inline' id='fs1'><file xmlns='urn:xmpp:file:metadata:0'>\
              <media-type>image/jpeg</media-type><name>photo.jpg</name><size>23456</size><width>1024</width><height>768</height>\
              <date>2026-01-01T10:00:00Z</date><hash xmlns='urn:xmpp:hashes:2' algo='sha-256'>2XarmwTlNxDAMkvymloX3S5+VbylNrJt/l5QyPa+YoU=</hash>\
              <thumbnail xmlns='urn:xmpp:thumbs:1' uri='data:image/png;base64,iVBORw0KGgo=' media-type='image/png' width='32' height='24'/></file>\
              <sources><url-data xmlns='http://jabber.org/protocol/url-data' target='https://upload.x/abc/photo.jpg'/></sources></file-sharing>\
              <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:sfs:0'><body/></fallback></message>", In),
            // OMEMO 0.3 and OMEMO 2 messages.
            ("<message to='bob@x' type='chat' id='m7'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='27183'>\
              <key rid='31415'>BASE64ENCODED=</key><key prekey='true' rid='12321'>BASE64ENCODED=</key><iv>BASE64IV==</iv></header>\
              <payload>BASE64ENCODED</payload></encrypted><encryption xmlns='urn:xmpp:eme:0' name='OMEMO' namespace='eu.siacs.conversations.axolotl'/>\
              <body>I sent you an OMEMO encrypted message but your client doesn’t seem to support that.</body><store xmlns='urn:xmpp:hints'/></message>", Out),
            ("<message from='bob@x/gajim' to='alice@x/r' type='chat' id='m8'><encrypted xmlns='urn:xmpp:omemo:2'><header sid='27183'>\
              <keys jid='alice@x'><key rid='31415' kex='true'>BASE64=</key></keys></header><payload>BASE64</payload></encrypted>\
              <encryption xmlns='urn:xmpp:eme:0' namespace='urn:xmpp:omemo:2' name='OMEMO'/><store xmlns='urn:xmpp:hints'/></message>", In),
            // Invitations: mediated (XEP-0045) and direct (XEP-0249).
            ("<message to='room@muc.x' id='i1'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@x'><reason>Join the planning</reason></invite></x></message>", Out),
            ("<message from='room@muc.x' to='alice@x/r' id='i2'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='bob@x/gajim'/></x>\
              <body>bob@x invited you to the room room@muc.x</body></message>", In),
            ("<message to='bob@x' id='i3'><x xmlns='jabber:x:conference' jid='room@muc.x' reason='Join the planning'/></message>", Out),
            // A room's subject.
            ("<message from='room@muc.x/bob' to='alice@x/r' type='groupchat' id='s1'><subject>Quarterly planning</subject></message>", In),
            // A ping carrying words.
            ("<iq to='bob@x/gajim' type='get' id='pw'><ping xmlns='urn:xmpp:ping'>meet at noon</ping></iq>", Out),
            // A Jingle call set-up carrying words in a reason's text.
            ("<message to='bob@x' type='chat' id='jw'><reject xmlns='urn:xmpp:jingle-message:0' id='Kq2vZ1'>\
              <reason xmlns='urn:xmpp:jingle:1'><busy/><text>meet me at noon</text></reason></reject></message>", Out),
            // Words put in a room's status message, or in an address's description.
            ("<message from='room@muc.x' to='alice@x/r' type='groupchat' id='sw'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <status code='104'>meet at noon</status></x></message>", In),
            ("<message to='bob@x' type='headline' id='aw'><addresses xmlns='http://jabber.org/protocol/address'>\
              <address type='replyto' jid='bob@x/r' desc='meet at noon'/></addresses></message>", Out),
            // Words in a client's identity.
            ("<iq to='bob@x/gajim' type='result' id='q3'><query xmlns='http://jabber.org/protocol/disco#info'>\
              <identity category='client' type='pc' name='meet at noon'/></query></iq>", Out),
            ("<iq to='bob@x/gajim' type='result' id='q4'><query xmlns='http://jabber.org/protocol/disco#info'>\
              <identity category='client' type='pc' name='meet noon'/></query></iq>", Out),
            ("<iq to='bob@x/gajim' type='result' id='q5'><query xmlns='http://jabber.org/protocol/disco#info'>\
              <identity category='client' type='pc' name='Profanity\u{2800}0.14'/></query></iq>", Out),
            // A bounce's text, and words where no client shows them in a subject.
            ("<message from='bob@y' to='alice@x/r' type='error' id='c3'><error type='cancel'>\
              <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>meet at noon</text></error></message>", In),
            ("<message from='bob@y' to='alice@x/r' type='error' id='c4'><error type='cancel' by='meet at noon'/></message>", In),
            ("<message to='bob@x' type='chat' id='c5'><error type='cancel'/></message>", Out),
            ("<message to='room@muc.x' type='groupchat' id='e1'><subject note='meet-at-noon'/></message>", Out),
            ("<message to='room@muc.x' type='groupchat' id='e2'><subject><b x='meet-at-noon'/></subject></message>", Out),
            ("<message to='room@muc.x' type='groupchat' id='e3'><subject><b>noon</b></subject></message>", Out),
            ("<message to='bob@x' type='headline' id='aw2'><addresses xmlns='http://jabber.org/protocol/address'>\
              <address type='meet-at-noon' jid='bob@x/r'/></addresses></message>", Out),
        ];
        for (xml, direction) in said {
            let held = Held::of(xml);
            assert!(
                content(&held.item(*direction, Copy::Direct)).has_content(),
                "not recorded: {xml}"
            );
        }
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;
    use crate::xml::{parse_element, NsScope};
    use custos_policy::{Policy, PolicyHandle};

    const RULES: &str = "[groups]\nresearch = [\"alice@x\"]\ntrading = [\"bob@x\"]\n\n[[barrier]]\nid = \"rt\"\nbetween = [\"research\", \"trading\"]\n";

    fn pipeline() -> Pipeline {
        let path = std::path::PathBuf::from("rules.toml");
        let policy = Policy::from_str(RULES, &path).unwrap();
        Pipeline::new(
            Some(PolicyHandle::new(&path, policy)),
            None,
            OnArchiveFailure::Block,
            None,
        )
    }

    async fn send(p: &Pipeline, jid: &str, xml: &str, direction: Direction) -> Outcome {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, crate::stanza::NS_CLIENT.to_owned())]);
        let st = crate::framer::Stanza {
            raw: bytes::Bytes::copy_from_slice(xml.as_bytes()),
            root: parse_element(xml, &scope).unwrap(),
        };
        let mut v = StanzaView::of(&st.root);
        crate::relay::fill_addresses(&mut v, direction, Some(jid));
        let info = SessionInfo {
            id: 1,
            client_addr: "127.0.0.1:1".parse().unwrap(),
            domain: "x".into(),
            jid: Some(jid.into()),
            chose_resource: false,
        };
        p.inspect(Inspected {
            direction,
            session: &info,
            view: &v,
            stanza: &st,
            copy: Copy::Direct,
            claimed_from: None,
        })
        .await
        .settled()
        .await
    }

    fn refused(o: &Outcome) -> bool {
        matches!(o.decision, Decision::Refuse { .. })
    }

    /// Alice (research) enters r@muc.x as "al"; the room confirms it.
    async fn alice_inside(p: &Pipeline) {
        let o = send(
            p,
            "alice@x/r",
            "<presence to='r@muc.x/al'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
            Direction::Outbound,
        )
        .await;
        assert!(!refused(&o));
        let own = "<presence from='r@muc.x/al' to='alice@x/r'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/><status code='110'/></x></presence>";
        send(p, "alice@x/r", own, Direction::Inbound).await;
    }

    #[tokio::test]
    async fn an_entry_with_any_availability_type_meets_the_barrier() {
        let p = pipeline();
        alice_inside(&p).await;
        for entry in [
            "<presence to='r@muc.x/bob'/>",
            "<presence to='r@muc.x/bob' type='available'/>",
            "<presence to='r@muc.x/bob' type='bogus'/>",
            "<presence to='R@MUC.X./bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        ] {
            let o = send(&p, "bob@x/p", entry, Direction::Outbound).await;
            assert!(refused(&o), "{entry}");
            if let Decision::Refuse { error: Some(e) } = &o.decision {
                assert!(
                    String::from_utf8_lossy(e).contains("policy-violation"),
                    "{entry}"
                );
            }
        }
        // Leaving is not entering.
        let o = send(
            &p,
            "bob@x/p",
            "<presence to='r@muc.x/bob' type='unavailable'/>",
            Direction::Outbound,
        )
        .await;
        assert!(!refused(&o));
    }

    #[tokio::test]
    async fn an_invitation_through_the_room_meets_the_barrier() {
        let p = pipeline();
        alice_inside(&p).await;
        let invite = "<message to='r@muc.x'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@x'><reason>buy it</reason></invite></x></message>";
        assert!(refused(
            &send(&p, "alice@x/r", invite, Direction::Outbound).await
        ));
        let declined = "<message from='r@muc.x' to='alice@x/r'><x xmlns='http://jabber.org/protocol/muc#user'><decline from='bob@x/p'><reason>sell it</reason></decline></x></message>";
        assert!(refused(
            &send(&p, "alice@x/r", declined, Direction::Inbound).await
        ));
    }

    #[tokio::test]
    async fn past_its_bounds_an_entry_is_refused_not_let_through() {
        let p = pipeline();
        for i in 0..crate::rooms::MAX_ROOMS_PER_SESSION {
            let o = send(
                &p,
                "carol@x/c",
                &format!("<presence to='r{i}@muc.x/c'/>"),
                Direction::Outbound,
            )
            .await;
            assert!(!refused(&o), "{i}");
        }
        let o = send(
            &p,
            "carol@x/c",
            "<presence to='r@muc.x/c'/>",
            Direction::Outbound,
        )
        .await;
        match &o.decision {
            Decision::Refuse { error: Some(e) } => {
                assert!(String::from_utf8_lossy(e).contains("resource-constraint"));
            }
            other => panic!("an entry past the bounds passed: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_entry_reserves_nothing() {
        let p = pipeline();
        alice_inside(&p).await;
        let o = send(
            &p,
            "bob@x/p",
            "<presence to='r@muc.x/bob'/>",
            Direction::Outbound,
        )
        .await;
        assert!(refused(&o));
        // Bob's refused entry left no trace that would keep anyone else out.
        let o = send(
            &p,
            "carol@x/c",
            "<presence to='r@muc.x/carol'/>",
            Direction::Outbound,
        )
        .await;
        assert!(!refused(&o));
        assert!(!p.rooms.is_room("bob@x"));
    }
}
