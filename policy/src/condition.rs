//! Compiled conditions and their evaluation against the facts gathered once per stanza.

use crate::jid::{Bits, Jid, PatternId};
use crate::scan::{Field, FieldScan, Probe};
use crate::subject::{Direction, E2ee, StanzaKind, Subject};

pub(crate) type GroupId = usize;

/// Which party a `from`/`to` condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    From,
    To,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartyRef {
    Pattern(PatternId),
    Group(GroupId),
    Internal,
    External,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum E2eeCond {
    /// Any scheme (`e2ee = true`).
    Any,
    /// Not encrypted (`e2ee = false`).
    None,
    Schemes(Vec<E2ee>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Direction(Direction),
    /// Holds when the party matches any of the references.
    Party(Side, Vec<PartyRef>),
    Kind(Vec<StanzaKind>),
    /// An outbound presence entering a group-chat room.
    RoomJoin,
    Type(Vec<String>),
    Text(Field, Probe),
    E2ee(E2eeCond),
}

/// What is known about one party of the stanza.
#[derive(Debug)]
pub(crate) struct PartyFacts {
    pub jid: Option<Jid>,
    pub patterns: Bits,
    pub groups: Bits,
    /// `None` when the stanza has no such address.
    pub internal: Option<bool>,
}

impl PartyFacts {
    /// Adds a party behind this one (an occupant behind a room's address): a condition
    /// on the side holds when it holds for any of them, and the side is external as soon
    /// as one of them is.
    pub(crate) fn absorb(&mut self, other: PartyFacts) {
        self.patterns.union(&other.patterns);
        self.groups.union(&other.groups);
        self.internal = match (self.internal, other.internal) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), _) | (_, Some(true)) => Some(true),
            (None, None) => None,
        };
    }
}

/// Everything a condition may read, gathered once per stanza.
pub(crate) struct Facts<'a> {
    pub subject: &'a Subject<'a>,
    pub from: PartyFacts,
    pub to: PartyFacts,
    pub body: Option<FieldScan<'a>>,
    pub subject_text: Option<FieldScan<'a>>,
}

impl Facts<'_> {
    pub(crate) fn party(&self, side: Side) -> &PartyFacts {
        match side {
            Side::From => &self.from,
            Side::To => &self.to,
        }
    }

    pub(crate) fn field(&self, f: Field) -> Option<&FieldScan<'_>> {
        match f {
            Field::Body => self.body.as_ref(),
            Field::Subject => self.subject_text.as_ref(),
        }
    }
}

impl Condition {
    pub(crate) fn eval(&self, f: &Facts<'_>) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.eval(f)),
            Condition::Any(cs) => cs.iter().any(|c| c.eval(f)),
            Condition::Not(c) => !c.eval(f),
            Condition::Direction(d) => f.subject.direction == *d,
            Condition::Party(side, refs) => {
                let p = f.party(*side);
                refs.iter().any(|r| match r {
                    PartyRef::Pattern(id) => p.patterns.get(*id),
                    PartyRef::Group(g) => p.groups.get(*g),
                    PartyRef::Internal => p.internal == Some(true),
                    PartyRef::External => p.internal == Some(false),
                })
            }
            Condition::Kind(ks) => ks.contains(&f.subject.kind),
            Condition::RoomJoin => f.subject.room.join,
            Condition::Type(ts) => f
                .subject
                .effective_type()
                .is_some_and(|t| ts.iter().any(|x| x == t)),
            Condition::Text(field, probe) => f.field(*field).is_some_and(|s| s.matched(*probe)),
            Condition::E2ee(c) => match (c, f.subject.e2ee) {
                (E2eeCond::Any, e) => e.is_some(),
                (E2eeCond::None, e) => e.is_none(),
                (E2eeCond::Schemes(list), Some(e)) => list.contains(&e),
                (E2eeCond::Schemes(_), None) => false,
            },
        }
    }

    /// The text probes that made this (matching) condition true: those under every
    /// `all`, under the `any` branches that hold, never under a `not` (text a rule
    /// requires to be absent is not what the rule is about).
    pub(crate) fn positive_probes(&self, f: &Facts<'_>, out: &mut Vec<(Field, Probe)>) {
        match self {
            Condition::All(cs) => cs.iter().for_each(|c| c.positive_probes(f, out)),
            Condition::Any(cs) => cs
                .iter()
                .filter(|c| c.eval(f))
                .for_each(|c| c.positive_probes(f, out)),
            Condition::Text(field, probe) if f.field(*field).is_some_and(|s| s.matched(*probe)) => {
                out.push((*field, *probe));
            }
            _ => {}
        }
    }

    /// Whether any text probe can contribute positively (a redact rule needs one).
    pub(crate) fn has_positive_text(&self) -> bool {
        match self {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().any(Condition::has_positive_text),
            Condition::Text(..) => true,
            _ => false,
        }
    }
}
