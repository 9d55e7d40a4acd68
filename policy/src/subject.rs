//! What the proxy hands to the policy for one stanza.

use serde::{Deserialize, Serialize};

/// Which way a stanza travels, seen from the users behind Custos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by a user behind Custos.
    Outbound,
    /// Received by a user behind Custos.
    Inbound,
}

/// The three XMPP stanza kinds (RFC 6120 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

/// End-to-end encryption the proxy found on a stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2ee {
    /// XEP-0384.
    Omemo,
    /// XEP-0373/0374 (OX) and legacy XEP-0027.
    #[serde(alias = "ox")]
    Openpgp,
    /// Off-the-Record, recognised by its `?OTR` body prefix.
    Otr,
}

impl E2ee {
    pub(crate) fn parse(s: &str) -> Option<E2ee> {
        match s {
            "omemo" => Some(E2ee::Omemo),
            "openpgp" | "ox" => Some(E2ee::Openpgp),
            "otr" => Some(E2ee::Otr),
            _ => None,
        }
    }
}

/// One stanza as the policy sees it. Borrowed: evaluation copies nothing it need not.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub direction: Direction,
    pub kind: StanzaKind,
    /// The `type` attribute as on the wire; `None` when absent (a message is then
    /// `normal` and a presence `available`, RFC 6121).
    pub stanza_type: Option<&'a str>,
    /// Full or bare JIDs as on the wire.
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub body: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub e2ee: Option<E2ee>,
    /// The people behind a group-chat room's addresses, as far as Custos knows them.
    pub room: RoomFacts<'a>,
}

/// What Custos knows about the people behind a group-chat room (XEP-0045) that a stanza
/// goes to or comes from. A room hides its occupants behind `room@service/nick`; the
/// proxy learns who they are from the presences the room sends to users behind Custos.
/// `from` and `to` conditions see these parties beside the room's own address, so a
/// barrier or an `external` condition holds in a room exactly as in a chat.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomFacts<'a> {
    /// The real JID behind the occupant that sent the stanza, when the room revealed it.
    pub from_real: Option<&'a str>,
    /// The real JIDs the stanza reaches: every known occupant of the room (the sender
    /// aside) for group chat and a join, the one occupant for a private message.
    pub to_real: &'a [&'a str],
    /// An outbound presence that enters a room (or would, were it let through).
    pub join: bool,
    /// The stanza is group chat in a room (`type='groupchat'`): a disclaimer goes to the
    /// room, once per room and period.
    pub groupchat: bool,
}

impl<'a> Subject<'a> {
    /// An outbound chat message with a body: the common case, handy in tests.
    pub fn outbound_chat(from: &'a str, to: &'a str, body: &'a str) -> Self {
        Subject {
            direction: Direction::Outbound,
            kind: StanzaKind::Message,
            stanza_type: Some("chat"),
            from: Some(from),
            to: Some(to),
            body: Some(body),
            subject: None,
            e2ee: None,
            room: RoomFacts::default(),
        }
    }

    /// The type the stanza has, with RFC 6121 defaults for an absent attribute.
    pub(crate) fn effective_type(&self) -> Option<&'a str> {
        match (self.stanza_type, self.kind) {
            (Some(t), _) => Some(t),
            (None, StanzaKind::Message) => Some("normal"),
            (None, StanzaKind::Presence) => Some("available"),
            (None, StanzaKind::Iq) => None,
        }
    }
}
