//! The parsed view of a stanza that inspection (policy, archive) reads.
//!
//! ```text
//!  xml::Element ──StanzaView::of──▶ kind, addressing, body/subject/thread,
//!                                   XEP-0359 ids, end-to-end encryption,
//!                                   forwarded copy (carbons, MAM) ──▶ inner view
//! ```
//!
//! The view is read-only and cheap to build; it never fails, because a
//! stanza the framer accepted is well-formed and anything the view does not
//! recognise is simply absent.

use crate::xml::Element;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_SERVER: &str = "jabber:server";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
pub const NS_OMEMO: &str = "urn:xmpp:omemo:2";
pub const NS_OX: &str = "urn:xmpp:openpgp:0";
pub const NS_PGP_LEGACY: &str = "jabber:x:encrypted";
pub const NS_OTR: &str = "urn:xmpp:otr:0";
pub const NS_EME: &str = "urn:xmpp:eme:0";
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// What a top-level element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
    /// Anything else at top level: stream features, SASL, stream
    /// management, stream errors…
    Nonza,
}

/// End-to-end encryption a message carries; its content cannot be archived
/// in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2ee {
    /// XEP-0384 OMEMO, legacy (`eu.siacs.conversations.axolotl`) or current.
    Omemo,
    /// XEP-0373 OpenPGP for XMPP, or legacy XEP-0027 `jabber:x:encrypted`.
    OpenPgp,
    /// Off-the-Record, recognised by its `?OTR` body or an XEP-0380 hint.
    Otr,
}

/// How a copy of a message reached this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardKind {
    /// XEP-0280 carbon of a message this account sent from another client.
    CarbonSent,
    /// XEP-0280 carbon of a message another client of this account received.
    CarbonReceived,
    /// XEP-0313 archive query result.
    MamResult {
        query_id: Option<String>,
        /// The archive's id of the result.
        id: Option<String>,
    },
}

/// A message carried inside another (carbons, MAM): the same message seen
/// again, which the archive must recognise rather than store twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub kind: ForwardKind,
    /// XEP-0203 `<delay stamp>` on the forwarded wrapper.
    pub stamp: Option<String>,
    pub inner: Box<StanzaView>,
}

/// What inspection needs to know of a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaView {
    pub kind: StanzaKind,
    pub stanza_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    pub body: Option<String>,
    pub subject: Option<String>,
    pub thread: Option<String>,
    /// Distinct namespaces of the direct children, in document order.
    pub child_namespaces: Vec<String>,
    /// XEP-0359 `<origin-id id>`, set by the sending client.
    pub origin_id: Option<String>,
    /// XEP-0359 `<stanza-id id by>` pairs, set by archiving servers.
    pub stanza_ids: Vec<(String, String)>,
    pub e2ee: Option<E2ee>,
    pub forwarded: Option<Forwarded>,
}

impl StanzaView {
    /// Builds the view of a top-level element.
    pub fn of(el: &Element) -> StanzaView {
        let content_ns = el.ns == NS_CLIENT || el.ns == NS_SERVER;
        let kind = match el.name.as_str() {
            "message" if content_ns => StanzaKind::Message,
            "presence" if content_ns => StanzaKind::Presence,
            "iq" if content_ns => StanzaKind::Iq,
            _ => StanzaKind::Nonza,
        };
        let attr = |name: &str| el.attr(name).map(str::to_owned);
        let body = localized_child(el, "body");
        let mut child_namespaces: Vec<String> = Vec::new();
        for child in el.children() {
            if !child_namespaces.contains(&child.ns) {
                child_namespaces.push(child.ns.clone());
            }
        }
        let stanza_ids = el
            .children()
            .filter(|c| c.is("stanza-id", NS_SID))
            .filter_map(|c| Some((c.attr("id")?.to_owned(), c.attr("by")?.to_owned())))
            .collect();
        StanzaView {
            kind,
            stanza_type: attr("type"),
            from: attr("from"),
            to: attr("to"),
            id: attr("id"),
            e2ee: e2ee(el, body.as_deref()),
            body,
            subject: localized_child(el, "subject"),
            thread: el.child("thread", &el.ns).map(Element::text),
            child_namespaces,
            origin_id: el
                .child("origin-id", NS_SID)
                .and_then(|c| c.attr("id"))
                .map(str::to_owned),
            stanza_ids,
            forwarded: if kind == StanzaKind::Message {
                forwarded(el)
            } else {
                None
            },
        }
    }

    /// True for a message that carries a copy of another message.
    pub fn is_forwarded_copy(&self) -> bool {
        self.forwarded.is_some()
    }
}

/// The text of the child `name` in the stanza's own namespace: the one
/// without `xml:lang`, else the first (RFC 6120 §8.3 allows one per language).
fn localized_child(el: &Element, name: &str) -> Option<String> {
    let mut candidates = el.children().filter(|c| c.is(name, &el.ns));
    let first = candidates.next()?;
    if first.lang().is_none() {
        return Some(first.text());
    }
    let chosen = candidates.find(|c| c.lang().is_none()).unwrap_or(first);
    Some(chosen.text())
}

fn e2ee(el: &Element, body: Option<&str>) -> Option<E2ee> {
    for child in el.children() {
        let found = match (child.name.as_str(), child.ns.as_str()) {
            ("encrypted", NS_OMEMO_LEGACY | NS_OMEMO) => Some(E2ee::Omemo),
            ("openpgp", NS_OX) | ("x", NS_PGP_LEGACY) => Some(E2ee::OpenPgp),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    if body.is_some_and(|b| b.starts_with("?OTR")) {
        return Some(E2ee::Otr);
    }
    // XEP-0380 names the scheme even when the payload is not recognised.
    let hint = el.child("encryption", NS_EME)?.attr("namespace")?;
    match hint {
        NS_OMEMO_LEGACY | NS_OMEMO => Some(E2ee::Omemo),
        NS_OX | NS_PGP_LEGACY => Some(E2ee::OpenPgp),
        NS_OTR => Some(E2ee::Otr),
        _ => None,
    }
}

fn forwarded(el: &Element) -> Option<Forwarded> {
    for child in el.children() {
        let kind = match (child.name.as_str(), child.ns.as_str()) {
            ("sent", NS_CARBONS) => ForwardKind::CarbonSent,
            ("received", NS_CARBONS) => ForwardKind::CarbonReceived,
            ("result", NS_MAM) => ForwardKind::MamResult {
                query_id: child.attr("queryid").map(str::to_owned),
                id: child.attr("id").map(str::to_owned),
            },
            _ => continue,
        };
        let Some(fwd) = child.child("forwarded", NS_FORWARD) else {
            continue;
        };
        let inner = fwd
            .children()
            .find(|c| c.name == "message" && (c.ns == NS_CLIENT || c.ns == NS_SERVER));
        let Some(inner) = inner else { continue };
        return Some(Forwarded {
            kind,
            stamp: fwd
                .child("delay", NS_DELAY)
                .and_then(|d| d.attr("stamp"))
                .map(str::to_owned),
            inner: Box::new(StanzaView::of(inner)),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::FrameError;
    use crate::xml::{parse_element, NsScope};

    fn view(s: &str) -> Result<StanzaView, FrameError> {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, NS_CLIENT.to_owned())]);
        Ok(StanzaView::of(&parse_element(s, &scope)?))
    }

    #[test]
    fn message_fields() -> Result<(), FrameError> {
        let v = view(
            "<message from='a@x/r' to='b@x' type='chat' id='m1'>\
             <body xml:lang='de'>hallo</body><body>hello</body>\
             <subject>s</subject><thread>t1</thread>\
             <body xmlns='urn:other'>not me</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='o1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='x'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='s2' by='b@x'/>\
             <request xmlns='urn:xmpp:receipts'/></message>",
        )?;
        assert_eq!(v.kind, StanzaKind::Message);
        assert_eq!(v.stanza_type.as_deref(), Some("chat"));
        assert_eq!(v.from.as_deref(), Some("a@x/r"));
        assert_eq!(v.to.as_deref(), Some("b@x"));
        assert_eq!(v.id.as_deref(), Some("m1"));
        assert_eq!(v.body.as_deref(), Some("hello"));
        assert_eq!(v.subject.as_deref(), Some("s"));
        assert_eq!(v.thread.as_deref(), Some("t1"));
        assert_eq!(v.origin_id.as_deref(), Some("o1"));
        assert_eq!(
            v.stanza_ids,
            vec![("s1".into(), "x".into()), ("s2".into(), "b@x".into())]
        );
        assert_eq!(
            v.child_namespaces,
            vec![NS_CLIENT, "urn:other", NS_SID, "urn:xmpp:receipts"]
        );
        assert_eq!(v.e2ee, None);
        assert_eq!(v.forwarded, None);
        Ok(())
    }

    #[test]
    fn first_body_when_all_have_lang() -> Result<(), FrameError> {
        let v =
            view("<message><body xml:lang='en'>a</body><body xml:lang='de'>b</body></message>")?;
        assert_eq!(v.body.as_deref(), Some("a"));
        let v = view("<message><body xmlns='urn:x'>foreign</body></message>")?;
        assert_eq!(v.body, None);
        Ok(())
    }

    #[test]
    fn kinds() -> Result<(), FrameError> {
        assert_eq!(view("<presence/>")?.kind, StanzaKind::Presence);
        assert_eq!(view("<iq type='get' id='1'/>")?.kind, StanzaKind::Iq);
        assert_eq!(
            view("<message xmlns='jabber:server'/>")?.kind,
            StanzaKind::Message
        );
        assert_eq!(view("<message xmlns='urn:x'/>")?.kind, StanzaKind::Nonza);
        assert_eq!(
            view("<a xmlns='urn:xmpp:sm:3' h='1'/>")?.kind,
            StanzaKind::Nonza
        );
        Ok(())
    }

    #[test]
    fn end_to_end_encryption() -> Result<(), FrameError> {
        let omemo = "<message><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted>\
                     <body>I sent you an OMEMO encrypted message</body></message>";
        assert_eq!(view(omemo)?.e2ee, Some(E2ee::Omemo));
        assert_eq!(
            view("<message><encrypted xmlns='urn:xmpp:omemo:2'/></message>")?.e2ee,
            Some(E2ee::Omemo)
        );
        assert_eq!(
            view("<message><openpgp xmlns='urn:xmpp:openpgp:0'>b64</openpgp></message>")?.e2ee,
            Some(E2ee::OpenPgp)
        );
        assert_eq!(
            view("<message><x xmlns='jabber:x:encrypted'>b64</x></message>")?.e2ee,
            Some(E2ee::OpenPgp)
        );
        assert_eq!(
            view("<message><body>?OTRv23? hi</body></message>")?.e2ee,
            Some(E2ee::Otr)
        );
        assert_eq!(
            view("<message><encryption xmlns='urn:xmpp:eme:0' namespace='urn:xmpp:otr:0'/></message>")?.e2ee,
            Some(E2ee::Otr)
        );
        assert_eq!(
            view("<message><body>about ?OTR</body></message>")?.e2ee,
            None
        );
        Ok(())
    }

    #[test]
    fn carbons_and_mam_results() -> Result<(), FrameError> {
        let carbon = view(
            "<message from='a@x' to='a@x/r'><sent xmlns='urn:xmpp:carbons:2'>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='b@x' \
             from='a@x/other' type='chat'><body>hi</body><origin-id xmlns='urn:xmpp:sid:0' id='o9'/>\
             </message></forwarded></sent></message>",
        )?;
        let fwd = carbon.forwarded.ok_or(FrameError::TooLarge { limit: 0 })?;
        assert_eq!(fwd.kind, ForwardKind::CarbonSent);
        assert_eq!(fwd.inner.body.as_deref(), Some("hi"));
        assert_eq!(fwd.inner.origin_id.as_deref(), Some("o9"));
        assert_eq!(fwd.inner.from.as_deref(), Some("a@x/other"));
        assert_eq!(carbon.body, None);

        let mam = view(
            "<message to='a@x/r'><result xmlns='urn:xmpp:mam:2' queryid='q1' id='28482'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>\
             <message xmlns='jabber:client' type='chat'><body>old</body></message>\
             </forwarded></result></message>",
        )?;
        let fwd = mam.forwarded.ok_or(FrameError::TooLarge { limit: 0 })?;
        assert_eq!(
            fwd.kind,
            ForwardKind::MamResult {
                query_id: Some("q1".into()),
                id: Some("28482".into())
            }
        );
        assert_eq!(fwd.stamp.as_deref(), Some("2010-07-10T23:08:25Z"));
        assert_eq!(fwd.inner.body.as_deref(), Some("old"));
        assert_eq!(fwd.inner.kind, StanzaKind::Message);

        let received = view(
            "<message><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client'><body>x</body></message></forwarded></received></message>",
        )?;
        assert_eq!(
            received.forwarded.map(|f| f.kind),
            Some(ForwardKind::CarbonReceived)
        );
        // A receipt `<received xmlns='urn:xmpp:receipts'>` is no carbon.
        let receipt = view("<message><received xmlns='urn:xmpp:receipts' id='1'/></message>")?;
        assert_eq!(receipt.forwarded, None);
        Ok(())
    }
}
