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

use crate::rooms::NS_MUC_USER;
use crate::xml::{Element, Name};

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
pub const NS_XHTML_IM: &str = "http://jabber.org/protocol/xhtml-im";
pub const NS_XHTML: &str = "http://www.w3.org/1999/xhtml";
pub const NS_OOB: &str = "jabber:x:oob";
pub const NS_SFS: &str = "urn:xmpp:sfs:0";
pub const NS_SIMS: &str = "urn:xmpp:sims:1";
pub const NS_REFERENCE: &str = "urn:xmpp:reference:0";
pub const NS_CORRECT: &str = "urn:xmpp:message-correct:0";
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
pub const NS_RETRACT_0: &str = "urn:xmpp:message-retract:0";
pub const NS_FASTEN: &str = "urn:xmpp:fasten:0";
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
pub const NS_MODERATE_0: &str = "urn:xmpp:message-moderate:0";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_NICK: &str = "http://jabber.org/protocol/nick";
pub const NS_ADDRESS: &str = "http://jabber.org/protocol/address";
pub const NS_JINGLE_MESSAGE: &str = "urn:xmpp:jingle-message:0";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";

/// Content a client may show besides (or instead of) the primary body and
/// subject: every other `xml:lang` body and subject, the XHTML-IM text, and
/// out-of-band links; a presence's texts; and words a scripted client can read
/// anywhere else in a stanza. An insider can hide text in any of these, so all of it
/// is scanned, and archived with its stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraText {
    /// `body`, `subject`, `xhtml`, `oob-url`, `oob-desc`, `file-name`, `file-desc`,
    /// `file-url`, `other` (words in any other part); `forwarded-…` for the same inside a
    /// wrapper that is not believed or a message forwarded on its own. A presence's:
    /// `status`, `show`, `nick`, `other`. Judged but no content alone (see
    /// [`ExtraText::makes_content`]): `nick`, `profile`, and `error`, the text of an
    /// error coming in from another client (a server's bounce reads so too).
    pub kind: String,
    pub lang: Option<String>,
    pub text: String,
    /// Which of the message's child elements carries the text (its position among them):
    /// the part a redaction removes whole when it cannot rewrite the text in place;
    /// [`OWN_TEXT`] for text written directly in the stanza.
    pub child: usize,
}

impl ExtraText {
    /// Whether the text alone makes its stanza worth recording. A XEP-0172 nickname does
    /// not: servers hand every contact's nickname to a client at each login; nor does a
    /// `profile` text, what a user's software tells about them (a vCard's fields, a
    /// track, a location, bookmarks). Each is judged like any text, and its stanza
    /// recorded when a rule matched it.
    pub fn makes_content(&self) -> bool {
        !matches!(&*self.kind, "nick" | "profile" | "error" | "room")
    }
}

/// The [`ExtraText::child`] of text written directly in a stanza, between its children:
/// no client shows it, but any other reader of the stream reads it.
pub const OWN_TEXT: usize = usize::MAX;

/// The [`ExtraText::child`] of the resource of a presence's `to`: the nickname the
/// sender takes in a room, which every occupant reads. It is in the address, so no
/// redaction can take it out.
pub const TO_RESOURCE: usize = usize::MAX - 1;

/// The [`ExtraText::child`] of the resource a session binds, read in the server's
/// answer that binds it: it is in the address of everything the session sends, so no
/// redaction can take it out.
pub const BOUND_RESOURCE: usize = usize::MAX - 2;

/// The [`ExtraText::child`] of the tag in a client's Bind2 request (XEP-0386), which the
/// server would make part of the session's resource: read once it was taken out of the
/// request, to record what the user tried to bind.
pub const BIND2_TAG: usize = usize::MAX - 3;

/// The [`ExtraText::child`] of the name of a room its creator picked: the node of the
/// room's address, which everyone who finds or enters the room reads. In an address, so
/// no redaction can take it out.
pub const ROOM_NODE: usize = usize::MAX - 4;

/// The node of the room that sent `el`, as a `room` text, when `el` is the room's own
/// presence to its creator: available, with `muc#user` status codes 110 (the recipient's
/// own presence) and 201 (the room was created). Nothing for any other element.
pub fn created_room(el: &Element) -> Vec<ExtraText> {
    let mut out = Vec::new();
    let coded = |code: &str| {
        el.child("x", crate::rooms::NS_MUC_USER)
            .is_some_and(|x| crate::rooms::statuses(x).any(|c| c == code))
    };
    let created =
        el.name == "presence" && el.attr("type").is_none() && coded("110") && coded("201");
    let node = el
        .attr("from")
        .and_then(|f| f.split('/').next())
        .and_then(|bare| bare.split_once('@'))
        .map(|(node, _)| node);
    if let (true, Some(node)) = (created, node) {
        push_folded(&mut out, "room", None, &unescape_node(node), ROOM_NODE);
    }
    out
}

/// A JID node with the escapes of XEP-0106 undone (`falcon\20plans` is shown as
/// `falcon plans`); any other backslash stays as written.
fn unescape_node(node: &str) -> String {
    const ESCAPES: [(&str, char); 10] = [
        ("\\20", ' '),
        ("\\22", '"'),
        ("\\26", '&'),
        ("\\27", '\''),
        ("\\2f", '/'),
        ("\\3a", ':'),
        ("\\3c", '<'),
        ("\\3e", '>'),
        ("\\40", '@'),
        ("\\5c", '\\'),
    ];
    let mut out = String::with_capacity(node.len());
    let mut rest = node;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match ESCAPES
            .iter()
            .find(|(e, _)| tail.get(..3).is_some_and(|t| t.eq_ignore_ascii_case(e)))
        {
            Some((_, c)) => {
                out.push(*c);
                rest = &tail[3..];
            }
            None => {
                out.push('\\');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The tag of the Bind2 request `el` (`<bind xmlns='urn:xmpp:bind:0'>`, as a client
/// puts it in its SASL2 `<authenticate/>`), as a `nick` text. Nothing for any other
/// element.
pub fn bind2_tag(el: &Element) -> Vec<ExtraText> {
    let mut out = Vec::new();
    if el.is("bind", crate::relay_state::NS_BIND2) {
        if let Some(tag) = el.child("tag", crate::relay_state::NS_BIND2) {
            push_folded(&mut out, "nick", None, &tag.text(), BIND2_TAG);
        }
    }
    out
}

/// The resource of `jid`, the session's address, read in `el`, the server's answer that
/// binds it, as a `nick` text: every contact reads the resource in a presence, every
/// recipient in a message. The answer is an iq result to a bind request (RFC 6120 §7), or
/// a SASL2 success whose Bind2 `<bound/>` names the session by its authorization
/// identifier (XEP-0386). Nothing for any other element, or an answer binding another
/// address.
pub fn bound_resource(el: &Element, jid: &str) -> Vec<ExtraText> {
    let mut out = Vec::new();
    let bound = if el.ns == crate::relay_state::NS_SASL2 {
        el.name == "success"
            && el.child("bound", crate::relay_state::NS_BIND2).is_some()
            && el
                .child("authorization-identifier", crate::relay_state::NS_SASL2)
                .is_some_and(|a| a.text().trim() == jid)
    } else {
        el.name == "iq"
            && el.attr("type") == Some("result")
            && el
                .child("bind", crate::stream::NS_BIND)
                .and_then(|b| b.children().find(|c| c.name == "jid"))
                .is_some_and(|j| j.text().trim() == jid)
    };
    if let Some((_, resource)) = jid.split_once('/').filter(|_| bound) {
        push_folded(&mut out, "nick", None, resource, BOUND_RESOURCE);
    }
    out
}

/// Attributes a stanza carries that hold an address, an identifier, a type or a
/// language, never words.
const STANZA_ATTRS: &[&str] = &["to", "from", "id", "type", "xml:lang"];

/// Whether the stanza's attribute `name` holds words: one that is not an address,
/// identifier, type or language (no server or client puts another on a stanza), or an
/// identifier or type with a space in it, which none has. A resource may have spaces.
pub fn stanza_attr_words(name: &str, value: &str) -> bool {
    if name == "xmlns" || name.starts_with("xmlns:") {
        return false;
    }
    !STANZA_ATTRS.contains(&name) || (matches!(name, "id" | "type") && has_space(value))
}

/// Text written directly in `el`, and the words in its own attributes (see
/// [`stanza_attr_words`]), as one `other` text.
fn own_text(el: &Element, out: &mut Vec<ExtraText>) {
    let mut text = el.text();
    for (name, value) in &el.attrs {
        if stanza_attr_words(name, value) {
            text.push(' ');
            text.push_str(value);
        }
    }
    push_folded(out, "other", None, &text, OWN_TEXT);
}

/// Pushes `text` with its whitespace folded to single spaces as a text of `kind`, unless
/// nothing but whitespace is left.
fn push_folded(out: &mut Vec<ExtraText>, kind: &str, lang: Option<&str>, text: &str, child: usize) {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !text.is_empty() {
        out.push(ExtraText {
            kind: kind.to_owned(),
            lang: lang.map(str::to_owned),
            text,
            child,
        });
    }
}

/// Characters that show as a gap, or as nothing, between words without being whitespace
/// to [`char::is_whitespace`]: words joined by one read as words joined by a space.
const BLANKS: &[char] = &[
    '\u{115F}', '\u{1160}', '\u{180E}', '\u{200B}', '\u{2060}', '\u{2800}', '\u{3164}', '\u{FEFF}',
    '\u{FFA0}',
];

/// Whether `s` has a space (or a blank, see [`BLANKS`]) between two of its characters:
/// no name, number, address, identifier or hash has one.
pub fn has_space(s: &str) -> bool {
    s.trim_matches(|c: char| c.is_whitespace() || BLANKS.contains(&c))
        .contains(|c: char| c.is_whitespace() || BLANKS.contains(&c))
}

/// How a message changes an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// XEP-0308.
    Correction,
    /// XEP-0424.
    Retraction,
    /// XEP-0425.
    Moderation,
}

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
    /// The wrapper's position among the message's child elements.
    pub child: usize,
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
    pub child_namespaces: Vec<Name>,
    /// XEP-0359 `<origin-id id>`, set by the sending client.
    pub origin_id: Option<String>,
    /// XEP-0359 `<stanza-id id by>` pairs, set by archiving servers.
    pub stanza_ids: Vec<(String, String)>,
    pub e2ee: Option<E2ee>,
    pub forwarded: Option<Forwarded>,
    /// Content besides the primary body and subject.
    pub extra: Vec<ExtraText>,
    /// A correction, retraction or moderation, with the id of the message it changes.
    pub edit: Option<(EditKind, String)>,
}

impl StanzaView {
    /// Builds the view of a top-level element.
    pub fn of(el: &Element) -> StanzaView {
        let content_ns = el.ns == NS_CLIENT || el.ns == NS_SERVER;
        let kind = match &*el.name {
            "message" if content_ns => StanzaKind::Message,
            "presence" if content_ns => StanzaKind::Presence,
            "iq" if content_ns => StanzaKind::Iq,
            _ => StanzaKind::Nonza,
        };
        let attr = |name: &str| el.attr(name).map(str::to_owned);
        let body = localized_child(el, "body");
        let mut child_namespaces: Vec<Name> = Vec::new();
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
        // Wrapped messages are read as views of their own, as deep as they nest: the
        // framer bounds the nesting of elements in a stanza.
        let forwarded = if kind == StanzaKind::Message {
            forwarded(el)
        } else {
            None
        };
        let extra = match kind {
            StanzaKind::Message => extra_texts(el, forwarded.as_ref().map(|f| f.child)),
            StanzaKind::Presence => statuses(el),
            StanzaKind::Iq => iq_texts(el),
            StanzaKind::Nonza => Vec::new(),
        };
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
            forwarded,
            extra,
            edit: if kind == StanzaKind::Message {
                edit(el)
            } else {
                None
            },
        }
    }

    /// True for a message that carries something a person reads or that changes
    /// what they read: a body or subject in any language, other displayable text,
    /// an end-to-end-encrypted payload, or a correction or retraction.
    pub fn has_content(&self) -> bool {
        self.kind == StanzaKind::Message
            && (self.body.is_some()
                // A room sends an empty subject on entry when none is set: nothing is
                // said (words in its attributes or elements are an `other` text).
                || self.subject.as_deref().is_some_and(|s| !s.is_empty())
                || self.e2ee.is_some()
                || self.extra.iter().any(ExtraText::makes_content)
                || self.edit.is_some())
    }

    /// True for a message that carries a copy of another message.
    pub fn is_forwarded_copy(&self) -> bool {
        self.forwarded.is_some()
    }
}

/// Elements a browser or an XHTML-IM client lays out as a block of their own, as a
/// break, or as a box of their own (an image, a control, an embedded object): a word
/// never runs on across one. Any other element, one unknown included, is laid out
/// inline, as a browser lays out an element its stylesheet does not name.
const XHTML_BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "audio",
    "blockquote",
    "body",
    "br",
    "button",
    "canvas",
    "caption",
    "center",
    "col",
    "colgroup",
    "dd",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "dt",
    "embed",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "frame",
    "frameset",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hgroup",
    "hr",
    "html",
    "iframe",
    "img",
    "input",
    "legend",
    "li",
    "listing",
    "main",
    "menu",
    "meter",
    "nav",
    "noscript",
    "object",
    "ol",
    "optgroup",
    "option",
    "p",
    "plaintext",
    "pre",
    "progress",
    "search",
    "section",
    "select",
    "summary",
    "svg",
    "table",
    "tbody",
    "td",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
    "video",
    "xmp",
];

/// Appends an XHTML-IM body's text as a client draws it: an inline element's text runs
/// on from the text before it (`fal<span>con</span>` shows `falcon`), and a block
/// element or a break stands apart.
fn xhtml_shown(el: &Element, out: &mut String) {
    for node in &el.children {
        match node {
            crate::xml::Node::Text(t) => out.push_str(t),
            crate::xml::Node::Element(e) => {
                let block = XHTML_BLOCKS.iter().any(|b| b.eq_ignore_ascii_case(&e.name));
                if block {
                    out.push(' ');
                }
                xhtml_shown(e, out);
                if block {
                    out.push(' ');
                }
            }
        }
    }
}

/// Makes every text-only element in `root` hold only its text, when one held an element:
/// a message's body, subject and thread and a presence's status, show and priority (the
/// stanza's own, or those of one it carries anywhere: a carbon, an archive's result), a
/// XEP-0172 nickname and an out-of-band link's address and description. Returns whether
/// anything changed.
///
/// RFC 6120's schema gives these text only, and clients read one with an element inside
/// in different ways: Conversations keeps the text before the first element, others all
/// of it, so `falcon<x>zz</x>` shows as `falcon` to one reader and `falconzz` to another,
/// and no single reading can be both. Custos judges and records the text whole, each run
/// of it glued to the next (`fal<b>con</b>` is `falcon`), and this makes that the text
/// delivered.
pub fn flatten_mixed_text(root: &mut Element) -> bool {
    let own: &[&str] = match &*root.name {
        "message" => &["body", "subject", "thread"],
        "presence" => &["status", "show", "priority"],
        _ => &[],
    };
    let oob = root.is("x", NS_OOB);
    // The fields apart, so the namespace is read while the children change (this runs
    // on every stanza: no copy of it).
    let Element { ns, children, .. } = root;
    let mut changed = false;
    for child in children.iter_mut().filter_map(|n| match n {
        crate::xml::Node::Element(e) => Some(e),
        crate::xml::Node::Text(_) => None,
    }) {
        let text_only = (child.ns == *ns && own.contains(&&*child.name))
            || child.is("nick", NS_NICK)
            || (oob && matches!(&*child.name, "url" | "desc"));
        if text_only && child.children().next().is_some() {
            let text = child.text_content();
            child.replace_content(text);
            changed = true;
        } else {
            changed |= flatten_mixed_text(child);
        }
    }
    changed
}

/// The text of the child `name` in the stanza's own namespace: the one
/// without `xml:lang`, else the first (RFC 6120 §8.3 allows one per language).
fn localized_child(el: &Element, name: &str) -> Option<String> {
    let mut candidates = el.children().filter(|c| c.is(name, &el.ns));
    let first = candidates.next()?;
    if first.lang().is_none() {
        return Some(first.text_content());
    }
    let chosen = candidates.find(|c| c.lang().is_none()).unwrap_or(first);
    Some(chosen.text_content())
}

/// A presence's texts shown to those it reaches: each status (every language's), a
/// XEP-0172 nickname, and a `<show>` that is not one of its four values; and text
/// written directly in it.
fn statuses(el: &Element) -> Vec<ExtraText> {
    let mut out = Vec::new();
    for (child, c) in el.children().enumerate() {
        let own = c.ns == el.ns;
        let shown = if own && c.name == "status" {
            Some("status")
        } else if is_plain_nick(c) {
            Some("nick")
        } else if own
            && c.name == "show"
            && !matches!(c.text_content().trim(), "away" | "chat" | "dnd" | "xa")
        {
            Some("show")
        } else {
            None
        };
        if let Some(kind) = shown {
            out.push(ExtraText {
                kind: kind.into(),
                lang: c.lang().map(str::to_owned),
                text: c.text_content(),
                child,
            });
        }
        let mut hidden = String::new();
        if own && matches!(&*c.name, "status" | "show" | "priority") {
            // What no client shows of them: attributes but a language, and those of any
            // element inside.
            own_attr_values(c, &mut hidden, |name, _| name != "xml:lang");
            for inner in c.children() {
                attribute_values(inner, &mut hidden);
            }
        }
        if shown.is_none() && own && c.name == "error" {
            error_words(c, &mut hidden);
        } else if shown.is_none() && presence_words(el, c) {
            hidden.push(' ');
            hidden.push_str(&c.deep_text());
            attribute_values(c, &mut hidden);
        }
        push_folded(&mut out, "other", c.lang(), &hidden, child);
    }
    // To a room, the resource is the nickname asked for (the pipeline reads it only in
    // what the user sends; what comes in is addressed to the user's own resource).
    if let Some((_, nick)) = el
        .attr("to")
        .filter(|to| is_clients_address(to))
        .and_then(|to| to.split_once('/'))
    {
        push_folded(&mut out, "nick", None, nick, TO_RESOURCE);
    }
    own_text(el, &mut out);
    out
}

/// Extensions clients and servers put in a presence that hold hashes, times, room
/// requests and room roles, not words shown as such.
const PRESENCE_NS: &[&str] = &[
    "http://jabber.org/protocol/caps",
    "urn:xmpp:caps",
    "vcard-temp:x:update",
    "jabber:x:avatar",
    "urn:xmpp:idle:1",
    NS_DELAY,
    "jabber:x:delay",
    "http://jabber.org/protocol/muc",
    "http://jabber.org/protocol/muc#user",
    "urn:xmpp:occupant-id:0",
    "jabber:x:signed",
];

/// Whether the child `c` of presence `el` is an extension whose text and attribute values
/// are an `other` text: anything but the presence's own priority and the extensions of
/// [`PRESENCE_NS`] (a custom element reaches every contact's client, which a scripted
/// one reads). An error presence's `<error>` is its sender's words too (a room's or a
/// server's when they send it); as any presence's texts, judged and recorded only when
/// a rule matched them.
fn presence_words(el: &Element, c: &Element) -> bool {
    if c.ns == el.ns {
        match &*c.name {
            "status" | "show" => false,
            "priority" => c.text_content().trim().parse::<i8>().is_err(),
            _ => true,
        }
    } else {
        !PRESENCE_NS.contains(&&*c.ns)
    }
}

/// Whether `jid` is a full JID with a node, `node@domain/resource`: a user's client (or a
/// room occupant's, through the room), which answers an iq itself. A server answers one
/// addressed to a domain or a bare JID on its own behalf or its user's.
pub fn is_clients_address(jid: &str) -> bool {
    jid.split_once('/')
        .is_some_and(|(bare, _)| bare.contains('@'))
}

/// Payloads of an iq between two clients that hold what software writes (features, a
/// time, a version, a call's codecs and addresses, a cached image), not a person's words:
/// only a value with a space in it is words there (see [`spaced_words`]).
const MACHINE_IQ_NS: &[&str] = &[
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "urn:xmpp:time",
    "jabber:iq:version",
    "jabber:iq:last",
    "urn:xmpp:bob",
    "urn:xmpp:jingle:1",
    // A vCard a client hands out for its user (avatars in rooms): its free texts, which
    // have spaces, are words; its fields and photo are not.
    "vcard-temp",
];

/// The words in an iq that may go between two clients (`to` or `from` one, see
/// [`is_clients_address`]; the pipeline knows which end is the peer), which the server
/// routes without reading: an iq is a way to
/// talk past the message archive for a scripted client. Each payload but those of
/// [`MACHINE_IQ_NS`] is an `other` text, its text and attribute values; in those, a text
/// or attribute value with a space in it (a Jingle session's reason text); and text
/// written in the iq itself. An error iq's `<error>` is read too (an `other` text of its
/// own): the pipeline makes it an `error` text in an error coming in, which is often the
/// server's bounce. An `<error>` in any other iq is a payload like any other.
/// Any other iq is read for the items it publishes ([`published_texts`]), which the
/// pipeline keeps for one the user's client sends.
fn iq_texts(el: &Element) -> Vec<ExtraText> {
    let between_clients = [el.attr("to"), el.attr("from")]
        .into_iter()
        .flatten()
        .any(is_clients_address);
    if !between_clients {
        return published_texts(el);
    }
    let mut out = Vec::new();
    for (i, child) in el.children().enumerate() {
        let mut text = String::new();
        if child.name == "error" && child.ns == el.ns {
            error_words(child, &mut text);
        } else if MACHINE_IQ_NS.contains(&&*child.ns) {
            spaced_words(child, &mut text);
            if child.is("vCard", "vcard-temp") {
                let mut fields = String::new();
                vcard_fields(child, &mut fields);
                quiet_texts(vec![("profile", fields)], i, &mut out);
            }
        } else {
            text = child.deep_text();
            attribute_values(child, &mut text);
        }
        push_folded(&mut out, "other", child.lang(), &text, i);
    }
    own_text(el, &mut out);
    out
}

/// Appends the words of an `<error>`: its text, an attribute of its own (its type, code
/// and `by` are tokens) with a space in it, and any attribute of an element inside but a
/// language (its conditions and text have none other).
fn error_words(el: &Element, out: &mut String) {
    out.push(' ');
    out.push_str(&el.deep_text());
    own_attr_values(el, out, |_, value| has_space(value));
    fn inner(el: &Element, out: &mut String) {
        own_attr_values(el, out, |name, _| name != "xml:lang");
        for child in el.children() {
            inner(child, out);
        }
    }
    for child in el.children() {
        inner(child, out);
    }
}

/// Appends the texts and attribute values of a vCard's fields but its photo's data, and
/// of a description or note what [`spaced_words`] did not take: its own text without a
/// space, and whatever is inside it (the server keeps a vCard as it was written, so an
/// element inside a description reaches whoever fetches it).
fn vcard_fields(el: &Element, out: &mut String) {
    if el.is("BINVAL", "vcard-temp") {
        return;
    }
    own_attr_values(el, out, |_, _| true);
    let text = el.text();
    if !(matches!(&*el.name, "DESC" | "NOTE") && has_space(&text)) {
        out.push(' ');
        out.push_str(&text);
    }
    for child in el.children() {
        vcard_fields(child, out);
    }
}

/// Appends each text and attribute value below `el` (namespace declarations aside) that
/// has a space in it, which no token, number, address or hash has.
fn spaced_words(el: &Element, out: &mut String) {
    // Binary data in base64, which may be wrapped in lines, and a media stream's ids.
    if el.is("BINVAL", "vcard-temp") || el.is("data", "urn:xmpp:bob") || is_msid(el) {
        return;
    }
    // A vCard's names, addresses and numbers are its owner's card, handed to every client
    // that shows an avatar in a room; its description and note are free text.
    if el.is("vCard", "vcard-temp") {
        for free in el
            .children()
            .filter(|c| matches!(&*c.name, "DESC" | "NOTE"))
        {
            spaced_words(free, out);
        }
        return;
    }
    // A client's identity names its software and version (Profanity: "Profanity 0.14.0").
    let identity = el.is("identity", "http://jabber.org/protocol/disco#info");
    own_attr_values(el, out, |name, value| {
        has_space(value) && !(identity && name == "name" && is_name_and_version(value))
    });
    let text = el.text();
    if has_space(&text) {
        out.push(' ');
        out.push_str(&text);
    }
    for child in el.children() {
        spaced_words(child, out);
    }
}

/// Whether `el` is a media stream's ids (XEP-0339 `<parameter name='msid'/>`), which
/// WebRTC writes as two tokens with a space, and nothing else.
fn is_msid(el: &Element) -> bool {
    el.is("parameter", "urn:xmpp:jingle:apps:rtp:ssma:0")
        && el.children.is_empty()
        && el.attr("name") == Some("msid")
        && el.attrs.iter().all(|(name, _)| {
            matches!(&**name, "name" | "value" | "xmlns") || name.starts_with("xmlns:")
        })
}

/// Appends the words of a call's set-up (XEP-0353): in its Jingle elements, any text (a
/// reason's; no other has any) and an attribute value with a space in it; an element of
/// another namespace inside (Conversations' `<device id>`) is read as an extension that
/// holds ids (see [`stray_words`]).
fn call_words(el: &Element, out: &mut String) {
    if !el.ns.starts_with("urn:xmpp:jingle") {
        stray_words(el, out);
        return;
    }
    if is_msid(el) {
        return;
    }
    own_attr_values(el, out, |_, value| has_space(value));
    out.push(' ');
    out.push_str(&el.text());
    for child in el.children() {
        call_words(child, out);
    }
}

/// Whether `s` is a name and a version, one space between: a version starts with a digit
/// and holds letters, digits and `.+-_~` only.
fn is_name_and_version(s: &str) -> bool {
    let mut parts = s.split(' ');
    let (Some(name), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !name.is_empty()
        && !has_space(name)
        && !name.contains(BLANKS)
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-_~".contains(c))
}

/// Every displayable text but the primary body and subject (those the view holds).
/// `wrapper`: the position of the carbon or archive-result wrapper `forwarded` read.
fn extra_texts(el: &Element, wrapper: Option<usize>) -> Vec<ExtraText> {
    let mut out = Vec::new();
    for name in ["body", "subject"] {
        let all: Vec<(usize, &Element)> = el
            .children()
            .enumerate()
            .filter(|(_, c)| c.is(name, &el.ns))
            .collect();
        // The primary one is the one `localized_child` picked: skip exactly that one.
        let primary = all
            .iter()
            .position(|(_, c)| c.lang().is_none())
            .unwrap_or(0);
        for (i, (child, c)) in all.iter().enumerate() {
            if i != primary {
                out.push(ExtraText {
                    kind: name.to_owned(),
                    lang: c.lang().map(str::to_owned),
                    text: c.text_content(),
                    child: *child,
                });
            }
        }
    }
    // Every XHTML-IM alternative, not only the first: a client may draw any of them.
    for (child, html) in el
        .children()
        .enumerate()
        .filter(|(_, c)| c.is("html", NS_XHTML_IM))
    {
        for body in html.children().filter(|c| c.is("body", NS_XHTML)) {
            // As a client draws it, and with every element's edge a gap (an image, a
            // block this list does not know, a margin in a style): a word split by
            // markup is read whole in the one, words markup keeps apart in the other.
            // A third glues every element, for a box that draws nothing (an image of no
            // size) and a block a client of XEP-0071's profile draws inline.
            let mut shown = String::new();
            xhtml_shown(body, &mut shown);
            let fold = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut readings: Vec<String> = Vec::with_capacity(3);
            for text in [
                fold(&shown),
                fold(&body.deep_text()),
                fold(&body.text_content()),
            ] {
                if !readings.contains(&text) {
                    readings.push(text);
                }
            }
            for text in &readings {
                push_folded(&mut out, "xhtml", body.lang(), text, child);
            }
        }
    }
    for (i, x) in el.children().enumerate().filter(|(_, c)| c.is("x", NS_OOB)) {
        for (child, kind) in [("url", "oob-url"), ("desc", "oob-desc")] {
            for c in x.children().filter(|c| c.is(child, NS_OOB)) {
                out.push(ExtraText {
                    kind: kind.into(),
                    lang: None,
                    text: c.text_content(),
                    child: i,
                });
            }
        }
    }
    // Shared files (XEP-0447 stateless file sharing, XEP-0385 SIMS): the file's name and
    // description are shown to people, and every source address is a way to the content.
    for (i, child) in el.children().enumerate() {
        let sharing = match (&*child.name, &*child.ns) {
            ("file-sharing", NS_SFS) => Some(child),
            ("reference", NS_REFERENCE) => child.child("media-sharing", NS_SIMS),
            _ => None,
        };
        if let Some(sharing) = sharing {
            file_texts(sharing, i, &mut out);
        }
    }
    // A message forwarded on its own (XEP-0297), as clients show "forwarded" messages.
    // (Carbons and archive results wrap theirs one level deeper; `forwarded` reads the
    // first; any further one is read here.)
    for (i, child) in el.children().enumerate() {
        let wrappers: Vec<&Element> = if child.is("forwarded", NS_FORWARD) {
            vec![child]
        } else if is_wrapper(child) {
            child
                .children()
                .filter(|c| c.is("forwarded", NS_FORWARD))
                .collect()
        } else {
            continue;
        };
        for (n, fwd) in wrappers.into_iter().enumerate() {
            for (m, inner) in fwd.children().filter(|c| is_message(c)).enumerate() {
                // The one `forwarded` reads: the first message of the wrapper's first
                // `<forwarded>`. Any other beside it is read here.
                if Some(i) == wrapper && n == 0 && m == 0 {
                    continue;
                }
                forwarded_texts(&StanzaView::of(inner), i, &mut out);
            }
        }
    }
    // Whatever else a client put in the message and someone could read: an extension
    // Custos does not know (a custom client's element, a reaction) is content until shown
    // otherwise, its text and attribute values scanned and kept; an extension that holds
    // ids, states or hints is content when words were put in it anyway.
    for (i, child) in el.children().enumerate() {
        let mut text = String::new();
        match part(el, child) {
            Part::Read if child.is("event", NS_PUBSUB_EVENT) => {
                let mut quiet = Vec::new();
                published_words(child, "items", &mut text, &mut quiet);
                quiet_texts(quiet, i, &mut out);
            }
            Part::Read => unread_words(child, &mut text),
            Part::Wordless => stray_words(child, &mut text),
            Part::Machine => call_words(child, &mut text),
            Part::Words => {
                text = child.deep_text();
                attribute_values(child, &mut text);
            }
        }
        push_folded(&mut out, "other", child.lang(), &text, i);
    }
    own_text(el, &mut out);
    out
}

/// The texts of a message carried inside another one, as `forwarded-…` texts of the
/// carrying message's child `child`: its body, subject and other texts, and those of any
/// carbon or archive result wrapped in it in turn.
pub fn forwarded_texts(inner: &StanzaView, child: usize, out: &mut Vec<ExtraText>) {
    for (kind, text) in [("body", &inner.body), ("subject", &inner.subject)] {
        if let Some(text) = text {
            out.push(ExtraText {
                kind: format!("forwarded-{kind}"),
                lang: None,
                text: text.clone(),
                child,
            });
        }
    }
    out.extend(inner.extra.iter().map(|t| ExtraText {
        kind: format!("forwarded-{}", t.kind),
        lang: t.lang.clone(),
        text: t.text.clone(),
        child,
    }));
    if let Some(fwd) = &inner.forwarded {
        forwarded_texts(&fwd.inner, child, out);
    }
}

/// Extensions that hold ids, states and hints, never words of their own; any words found
/// in one anyway are content (see [`stray_words`]).
const WORDLESS_NS: &[&str] = &[
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:hints",
    NS_SID,
    NS_DELAY,
    "jabber:x:delay",
    "jabber:x:event",
    "urn:xmpp:fallback:0",
    "urn:xmpp:reply:0",
    "urn:xmpp:message-attaching:1",
    "urn:xmpp:styling:0",
    "urn:xmpp:sm:3",
    // Added by servers to copies they deliver: no words of the sender's.
    "urn:xmpp:occupant-id:0",
    // XEP-0033 addresses (ejabberd names a notification's publisher, a room message's
    // sender): addresses and address types; a description is words.
    NS_ADDRESS,
    // Wrappers: the messages inside are read as messages; the wrapper holds no words.
    NS_CARBONS,
    NS_MAM,
    NS_FORWARD,
    // Edits name the message they change; a moderator's reason is words, though.
    NS_CORRECT,
    NS_RETRACT,
    NS_RETRACT_0,
    NS_FASTEN,
];

/// Elements whose content the view reads elsewhere (XHTML, links, files, encryption, a
/// pubsub notification), by name and namespace: any other element of their namespaces is
/// words like an unknown one.
const READ_PARTS: &[(&str, &str)] = &[
    ("html", NS_XHTML_IM),
    ("x", NS_OOB),
    ("file-sharing", NS_SFS),
    ("reference", NS_REFERENCE),
    ("encrypted", NS_OMEMO_LEGACY),
    ("encrypted", NS_OMEMO),
    ("openpgp", NS_OX),
    ("x", NS_PGP_LEGACY),
    ("encryption", NS_EME),
    ("event", NS_PUBSUB_EVENT),
    ("x", NS_MUC_USER),
];

/// Attributes of the wordless extensions that hold an identifier, an address or a time.
const ID_ATTRS: &[&str] = &[
    "id", "by", "for", "from", "to", "stamp", "start", "end", "sender", "parent", "queryid",
];

/// How the view reads a child of a message.
enum Part {
    /// Its texts are read elsewhere.
    Read,
    /// Ids, states, hints or a wrapper: content only when it holds words anyway.
    Wordless,
    /// A call's set-up (XEP-0353), which software writes: only a text or value with a
    /// space in it is words (see [`spaced_words`]), as in a Jingle iq.
    Machine,
    /// Unknown: all its text and attribute values are content.
    Words,
}

fn part(message: &Element, child: &Element) -> Part {
    if child.ns == message.ns {
        return match &*child.name {
            "body" | "subject" => Part::Read,
            // A bounce's condition (a chat state to an address that does not exist); its
            // text is words.
            "error" if message.attr("type") == Some("error") => Part::Read,
            // A thread id, matched across the messages of a conversation.
            "thread" => Part::Wordless,
            _ => Part::Words,
        };
    }
    // A reference is read as a shared file only when it holds one.
    if child.is("reference", NS_REFERENCE) && child.child("media-sharing", NS_SIMS).is_none() {
        Part::Words
    } else if READ_PARTS.contains(&(&*child.name, &*child.ns)) {
        Part::Read
    } else if WORDLESS_NS.contains(&&*child.ns) {
        Part::Wordless
    } else if child.ns == NS_JINGLE_MESSAGE {
        Part::Machine
    } else {
        Part::Words
    }
}

fn is_message(el: &Element) -> bool {
    el.name == "message" && (el.ns == NS_CLIENT || el.ns == NS_SERVER)
}

/// A XEP-0280 carbon or XEP-0313 archive result wrapper.
fn is_wrapper(el: &Element) -> bool {
    el.is("sent", NS_CARBONS) || el.is("received", NS_CARBONS) || el.is("result", NS_MAM)
}

/// The types of a XEP-0033 address.
const ADDRESS_TYPES: &[&str] = &[
    "to",
    "cc",
    "bcc",
    "replyto",
    "replyroom",
    "noreply",
    "ofrom",
];

/// Whether the attribute `name` of `el` is a XEP-0033 address's address (`jid`, `uri`,
/// `node`), its type or its delivery mark; its `desc` is words.
fn is_address_attr(el: &Element, name: &str, value: &str) -> bool {
    el.is("address", NS_ADDRESS)
        && match name {
            "jid" | "uri" | "node" => true,
            "type" => ADDRESS_TYPES.contains(&value),
            "delivered" => value == "true",
            _ => false,
        }
}

/// Whether `el` is a room's status code (`<status code='104'/>`): three digits (XEP-0045
/// defines no other), and nothing else in it.
fn is_status_code(el: &Element) -> bool {
    el.is("status", NS_MUC_USER)
        && el.children().next().is_none()
        && el.text().trim().is_empty()
        && el.attrs.iter().all(|(name, value)| {
            name == "xmlns"
                || name.starts_with("xmlns:")
                || (name == "code" && value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The notes servers write in the delays they stamp on messages they kept (ejabberd,
/// Openfire): any other text in a delay may be a sender's words, whoever it names.
const SERVERS_DELAY_NOTES: [&str; 3] = ["Offline Storage", "Offline storage", "Resent"];

/// Whether `note` is one servers write in a delay: one of [`SERVERS_DELAY_NOTES`], or
/// one followed by the server's name (Tigase: "Offline Storage - example.org").
fn is_servers_note(note: &str) -> bool {
    SERVERS_DELAY_NOTES.iter().any(|n| {
        note.strip_prefix(n).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(" - ")
                    .is_some_and(|host| !host.is_empty() && !host.contains(char::is_whitespace))
        })
    })
}

/// Appends the words someone put where only identifiers belong: character data (in a
/// thread id or an XEP-0022 event id, only text with a space in it, which no identifier
/// has) and attribute values other than identifiers, or identifiers with a space in them.
/// A server's own note in a delay it stamped (`from` a domain, ejabberd's "Offline
/// Storage") is the server's, not a person's. Messages in a `<forwarded>` are read as
/// messages; a message put anywhere else is words of this part.
fn stray_words(el: &Element, out: &mut String) {
    for (name, value) in &el.attrs {
        if name == "xmlns" || name.starts_with("xmlns:") || name == "xml:lang" {
            continue;
        }
        if !(ID_ATTRS.contains(&&**name) || is_address_attr(el, name, value)) || has_space(value) {
            out.push(' ');
            out.push_str(value);
        }
    }
    let text = el.text();
    let holds_id = (el.name == "thread" && (el.ns == NS_CLIENT || el.ns == NS_SERVER))
        || el.is("id", "jabber:x:event");
    let servers_note = (el.is("delay", NS_DELAY) || el.is("x", "jabber:x:delay"))
        && el.attr("from").is_some_and(|f| !f.contains(['@', '/']))
        && is_servers_note(text.trim());
    let words = if holds_id {
        has_space(&text)
    } else {
        !servers_note
    };
    if words {
        out.push(' ');
        out.push_str(&text);
    }
    for child in el.children() {
        if !is_message(child) {
            stray_words(child, out);
        } else if !el.is("forwarded", NS_FORWARD) {
            // A message anywhere but in a `<forwarded>` is read by nobody as a message:
            // its words are this part's.
            out.push(' ');
            out.push_str(&child.deep_text());
            attribute_values(child, out);
        }
    }
}

/// Appends what the readers of a body or subject, an error, an XHTML-IM alternative, an
/// out-of-band link, an encryption hint or a room's `<x>` leave: a body's or subject's
/// attributes but its language, and those of any element in it; an error's text and any
/// attribute value in it with a space; the addresses and captions of XHTML links and
/// images (`href`, `src`, `alt`, `title`) and any text beside its bodies; a link's
/// attributes and any part but its address and descriptions; a hint's name and anything
/// but its namespace; a room's anything but its status codes.
fn unread_words(el: &Element, out: &mut String) {
    fn link_words(el: &Element, out: &mut String) {
        for (name, value) in &el.attrs {
            if matches!(&**name, "href" | "src" | "alt" | "title" | "cite") {
                out.push(' ');
                out.push_str(value);
            }
        }
        for child in el.children() {
            link_words(child, out);
        }
    }
    if matches!(&*el.name, "body" | "subject") && (el.ns == NS_CLIENT || el.ns == NS_SERVER) {
        // Its text is read as such; what no client shows is words.
        own_attr_values(el, out, |name, _| name != "xml:lang");
        for child in el.children() {
            attribute_values(child, out);
        }
    } else if el.name == "error" && (el.ns == NS_CLIENT || el.ns == NS_SERVER) {
        error_words(el, out);
    } else if el.is("html", NS_XHTML_IM) {
        link_words(el, out);
        for other in el.children().filter(|c| !c.is("body", NS_XHTML)) {
            out.push(' ');
            out.push_str(&other.deep_text());
        }
    } else if el.is("x", NS_OOB) {
        own_attr_values(el, out, |_, _| true);
        for other in el
            .children()
            .filter(|c| !c.is("url", NS_OOB) && !c.is("desc", NS_OOB))
        {
            out.push(' ');
            out.push_str(&other.deep_text());
            attribute_values(other, out);
        }
    } else if el.is("x", NS_MUC_USER) {
        // A room's status codes (a configuration changed, a room now logged) are numbers;
        // an invitation, a decline, its reason and password, and any other part are words.
        own_attr_values(el, out, |_, _| true);
        out.push(' ');
        out.push_str(&el.text());
        for part in el.children().filter(|c| !is_status_code(c)) {
            out.push(' ');
            out.push_str(&part.deep_text());
            attribute_values(part, out);
        }
    } else if el.is("encryption", NS_EME) {
        // A client that does not know the scheme shows its `name`.
        own_attr_values(el, out, |name, _| name != "namespace");
        out.push(' ');
        out.push_str(&el.deep_text());
        for child in el.children() {
            attribute_values(child, out);
        }
    }
}

/// Appends the values of `el`'s own attributes, namespace declarations aside, that
/// `keep` takes by name and value.
fn own_attr_values(el: &Element, out: &mut String, keep: impl Fn(&str, &str) -> bool) {
    for (name, value) in &el.attrs {
        if name != "xmlns" && !name.starts_with("xmlns:") && keep(name, value) {
            out.push(' ');
            out.push_str(value);
        }
    }
}

/// Appends every attribute value with a space in it, in `el` and below.
fn spaced_attrs(el: &Element, out: &mut String) {
    own_attr_values(el, out, |_, value| has_space(value));
    for child in el.children() {
        spaced_attrs(child, out);
    }
}

/// Appends every attribute value below `el` (not namespace declarations).
fn attribute_values(el: &Element, out: &mut String) {
    own_attr_values(el, out, |_, _| true);
    for child in el.children() {
        attribute_values(child, out);
    }
}

/// Names, descriptions and source addresses anywhere inside a file-sharing element, and
/// as one `other` text whatever else in it holds words (see [`file_parts`]).
fn file_texts(sharing: &Element, at: usize, out: &mut Vec<ExtraText>) {
    let mut words = String::new();
    file_parts(sharing, at, out, &mut words);
    push_folded(out, "other", None, &words, at);
}

/// Payloads of pubsub items that hold keys, images, hashes and read markers: never read,
/// never recorded.
const UNREAD_ITEMS_NS: &[&str] = &[
    "urn:xmpp:avatar:data",
    "urn:xmpp:avatar:metadata",
    NS_OMEMO_LEGACY,
    NS_OMEMO,
    NS_OX,
    "urn:xmpp:mds:displayed:0",
];

/// Payloads of pubsub items that a user's software publishes about them, a player's track,
/// a location, bookmarks: a `profile` text, judged but recorded only when a rule matched
/// it (see [`ExtraText::makes_content`]). A bookmark's room password is not read.
const PROFILE_ITEMS_NS: &[&str] = &[
    "urn:xmpp:bookmarks:1",
    "storage:bookmarks",
    "http://jabber.org/protocol/tune",
    "http://jabber.org/protocol/geoloc",
    // A vCard published as a PEP item (XEP-0292), fetched whenever a client shows a
    // contact's card.
    "urn:ietf:params:xml:ns:vcard-4.0",
];

/// Appends the texts and attribute values of a profile payload but a password.
fn profile_words(el: &Element, out: &mut String) {
    if el.name == "password" {
        return;
    }
    own_attr_values(el, out, |_, _| true);
    out.push(' ');
    out.push_str(&el.text());
    for child in el.children() {
        profile_words(child, out);
    }
}

/// Appends the words of the items an account publishes (`<pubsub><publish>`, `list` =
/// `"publish"`) or a notification carries (`<event><items>`, `"items"`): every payload's
/// text and attribute values, but those of [`UNREAD_ITEMS_NS`]. A nickname, a mood's text,
/// a post or a custom node's item reach whoever may read the node. Text beside the items
/// is words too; node options and configuration forms are not read. A nickname alone and
/// a [`PROFILE_ITEMS_NS`] payload go into `quiet`, with their kinds.
fn published_words(
    el: &Element,
    list: &str,
    out: &mut String,
    quiet: &mut Vec<(&'static str, String)>,
) {
    out.push(' ');
    out.push_str(&el.text());
    for part in el.children() {
        if part.name != list {
            continue;
        }
        out.push(' ');
        out.push_str(&part.text());
        // A node's or an item's name is an identifier: one with a space in it is words.
        own_attr_values(part, out, |_, value| has_space(value));
        for item in part.children() {
            if item.name != "item" {
                continue;
            }
            out.push(' ');
            out.push_str(&item.text());
            own_attr_values(item, out, |_, value| has_space(value));
            for payload in item.children() {
                if is_plain_nick(payload) {
                    quiet.push(("nick", payload.text()));
                } else if PROFILE_ITEMS_NS.contains(&&*payload.ns) {
                    let mut words = String::new();
                    profile_words(payload, &mut words);
                    quiet.push(("profile", words));
                } else if UNREAD_ITEMS_NS.contains(&&*payload.ns) {
                    // Keys, images and read markers hold base64 and identifiers, but an
                    // attribute with a space in it (an OMEMO device's label, which some
                    // clients show) is a `profile` text: judged, recorded when a rule
                    // matched it, as software writes labels at every new device.
                    let mut words = String::new();
                    spaced_attrs(payload, &mut words);
                    if !words.trim().is_empty() {
                        quiet.push(("profile", words));
                    }
                } else {
                    out.push(' ');
                    out.push_str(&payload.deep_text());
                    attribute_values(payload, out);
                }
            }
        }
    }
}

/// Whether `el` is a XEP-0172 nickname and nothing else: its text alone, no attribute or
/// element in it.
fn is_plain_nick(el: &Element) -> bool {
    el.is("nick", NS_NICK)
        && el.children().next().is_none()
        && el
            .attrs
            .iter()
            .all(|(name, _)| name == "xmlns" || name.starts_with("xmlns:"))
}

/// Texts that do not make content alone (nicknames, profiles) as texts of their kinds of
/// the child `child`.
fn quiet_texts(texts: Vec<(&'static str, String)>, child: usize, out: &mut Vec<ExtraText>) {
    for (kind, text) in texts {
        push_folded(out, kind, None, &text, child);
    }
}

/// What an iq to the server or a bare JID writes for others to read, an `other` text
/// per payload: the items it publishes to a pubsub node (see [`published_words`]), its
/// own PEP nodes' or a service's, which reach every reader of the node, inside the firm
/// or outside it; a room owner's or moderator's words (see [`room_words`]), which the
/// room shows to whoever finds it or is in it, and a command's form (XEP-0050), read
/// the same way, which a service shows others (an announcement to every user online,
/// XEP-0133; a hat's title beside a nickname in a room, ejabberd); and the user's
/// vCard, which the server hands to anyone who asks (read as one between clients: a
/// description or note with a space in it is words, its other fields a `profile` text,
/// its photo not read).
pub fn published_texts(el: &Element) -> Vec<ExtraText> {
    let mut out = Vec::new();
    for (i, child) in el.children().enumerate() {
        let mut text = String::new();
        if child.is("pubsub", NS_PUBSUB) {
            let mut quiet = Vec::new();
            published_words(child, "publish", &mut text, &mut quiet);
            quiet_texts(quiet, i, &mut out);
        } else if child.is("query", NS_MUC_OWNER)
            || child.is("query", NS_MUC_ADMIN)
            || child.is("command", NS_COMMANDS)
        {
            let mut quiet = Vec::new();
            room_words(child, &mut text, &mut quiet);
            quiet_texts(quiet, i, &mut out);
        } else if child.is("vCard", "vcard-temp") {
            vcard_words(child, i, &mut text, &mut out);
        }
        push_folded(&mut out, "other", None, &text, i);
    }
    out
}

/// Reads the vCard `card`, the child `i` of its stanza, as one between clients: a
/// description or note with a space in it is words (appended to `text`), its other
/// fields a `profile` text, its photo not read.
fn vcard_words(card: &Element, i: usize, text: &mut String, out: &mut Vec<ExtraText>) {
    spaced_words(card, text);
    let mut fields = String::new();
    vcard_fields(card, &mut fields);
    quiet_texts(vec![("profile", fields)], i, out);
}

/// The words of what a server hands back from another account or a service in a result:
/// the items of a pubsub node (`<pubsub><items>`), read as a notification's items are
/// (see [`published_words`]), an `other` text per `<pubsub>`, and a vCard, read as one
/// between clients (see [`vcard_words`]). Another account's node or card, an outsider's
/// too, reaches the user this way as well as in notifications. The pipeline reads it
/// unless it is the user's own.
pub fn fetched_texts(el: &Element) -> Vec<ExtraText> {
    let mut out = Vec::new();
    if el.attr("type") != Some("result") {
        return out;
    }
    for (i, child) in el.children().enumerate() {
        let mut text = String::new();
        if child.is("pubsub", NS_PUBSUB) {
            let mut quiet = Vec::new();
            published_words(child, "items", &mut text, &mut quiet);
            quiet_texts(quiet, i, &mut out);
        } else if child.is("vCard", "vcard-temp") {
            vcard_words(child, i, &mut text, &mut out);
        } else if child.is("query", "http://jabber.org/protocol/disco#info") {
            let mut about = String::new();
            discovered_words(child, &mut about);
            quiet_texts(vec![("profile", about)], i, &mut out);
        }
        push_folded(&mut out, "other", None, &text, i);
    }
    out
}

/// Fields of what a room tells of itself when discovered (XEP-0045 `muc#roominfo`) that
/// hold its owner's words whole.
const ROOM_INFO_TEXT_FIELDS: &[&str] = &["muc#roominfo_description", "muc#roominfo_subject"];

/// Appends what a discovered entity says of itself for people to read: each identity's
/// name (a room's is its name), a room's description and subject, and any other form
/// value with a space in it. A room on an outsider's service shows its owner's words
/// there; read as a `profile` text, as a client discovers every room it enters.
fn discovered_words(query: &Element, out: &mut String) {
    for child in query.children() {
        if child.is("identity", &query.ns) {
            if let Some(name) = child.attr("name") {
                out.push(' ');
                out.push_str(name);
            }
        } else if child.is("x", NS_DATA) {
            for field in child.children().filter(|f| f.is("field", NS_DATA)) {
                let whole = field
                    .attr("var")
                    .is_some_and(|var| ROOM_INFO_TEXT_FIELDS.contains(&var));
                for value in field.children() {
                    let text = value.text_content();
                    if whole || has_space(&text) {
                        out.push(' ');
                        out.push_str(&text);
                    }
                }
            }
        }
    }
}

/// Fields of a room's configuration form that hold its owner's words whole: the room's
/// name and description, shown to everyone who finds the room.
const ROOM_TEXT_FIELDS: &[&str] = &["muc#roomconfig_roomname", "muc#roomconfig_roomdesc"];

/// Whether the form field `el` holds a password (a room's secret, or any other so named):
/// never read. A field's `type` in a submitted form is the client's word, not the room's:
/// the room reads a field by its name (Prosody, ejabberd), so a name or description
/// marked `text-private` is still read.
fn is_secret_field(el: &Element) -> bool {
    el.attr("var").is_some_and(|var| {
        let var = var.to_ascii_lowercase();
        var.contains("secret") || var.contains("password")
    })
}

/// Appends the text of `el` whole: as a client that shows it reads it, the words of an
/// element inside apart, and as a server that keeps an element's own text and drops
/// what is inside it reads it (ejabberd: `fal<b/>con` is `falcon`).
fn whole_text(el: &Element, out: &mut String) {
    fn own(el: &Element, out: &mut String) {
        out.push(' ');
        out.push_str(&el.text());
        for child in el.children() {
            own(child, out);
        }
    }
    out.push(' ');
    out.push_str(&el.deep_text());
    own(el, out);
}

/// Appends the words of a room owner's or moderator's request (XEP-0045 `muc#owner`,
/// `muc#admin`): a configuration form's name and description whole, a reason (a kick's,
/// a ban's, the room's end) whole (see [`whole_text`]), and anything else with a space in
/// it (as in what software writes, see [`spaced_words`]: a field's value or label). A
/// room's password is not read, nor an address or a role, which have no space. Into
/// `quiet`, as texts judged but recorded only when a rule matched them: every other value
/// of the form (a setting, which a room may show as written: its language), the password
/// of a room's end, which the room hands to every occupant (Prosody), and the nickname an
/// affiliation reserves for a member, admin or owner (Prosody shows it in the room's
/// lists; a ban's or a removal's is the nickname someone already took).
fn room_words(el: &Element, out: &mut String, quiet: &mut Vec<(&'static str, String)>) {
    if el.name == "password" || (el.is("field", NS_DATA) && is_secret_field(el)) {
        return;
    }
    if el.name == "reason" {
        whole_text(el, out);
        attribute_values(el, out);
        return;
    }
    if el.name == "destroy" {
        for password in el.children().filter(|c| c.name == "password") {
            let mut text = String::new();
            whole_text(password, &mut text);
            attribute_values(password, &mut text);
            quiet.push(("profile", text));
        }
    }
    if el.name == "item" && el.attr("jid").is_some() && el.attr("role").is_none() {
        let reserving = el
            .attr("affiliation")
            .is_some_and(|a| !matches!(a, "outcast" | "none"));
        if let (true, Some(nick)) = (reserving, el.attr("nick")) {
            quiet.push(("nick", nick.to_owned()));
        }
    }
    own_attr_values(el, out, |_, value| has_space(value));
    let field = el.is("field", NS_DATA).then(|| el.attr("var")).flatten();
    if field.is_some_and(|var| ROOM_TEXT_FIELDS.contains(&var)) {
        // Its values whole, and whatever is inside them.
        whole_text(el, out);
        for child in el.children() {
            attribute_values(child, out);
        }
        return;
    }
    if field.is_some_and(|var| var != "FORM_TYPE") {
        let mut values = String::new();
        for value in el.children().filter(|c| c.is("value", NS_DATA)) {
            whole_text(value, &mut values);
        }
        quiet.push(("profile", values));
    }
    let text = el.text();
    if has_space(&text) {
        out.push(' ');
        out.push_str(&text);
    }
    for child in el.children() {
        room_words(child, out, quiet);
    }
}

/// Appends the values of `el`'s attributes that are not [`FILE_ATTRS`], or are but hold
/// a space.
fn file_attr_words(el: &Element, words: &mut String) {
    for (name, value) in &el.attrs {
        let known = name == "xmlns" || name.starts_with("xmlns:") || FILE_ATTRS.contains(&&**name);
        if !known || has_space(value) {
            words.push(' ');
            words.push_str(value);
        }
    }
}

/// Elements of a shared file's description (XEP-0446, XEP-0234's `<file>`, XEP-0300)
/// that hold one value: a type, a date, a number or a hash, never a space.
const FILE_VALUES: &[&str] = &[
    "media-type",
    "date",
    "size",
    "hash",
    "hash-used",
    "height",
    "width",
    "length",
];

/// Elements that frame a shared file's description and sources.
const FILE_FRAMES: &[&str] = &[
    "file",
    "sources",
    "url-data",
    "reference",
    "jinglepub",
    "thumbnail",
    "range",
    "media-sharing",
    "file-sharing",
];

/// Attributes of those elements that hold a value, never words.
const FILE_ATTRS: &[&str] = &[
    "target",
    "uri",
    "id",
    "disposition",
    "type",
    "algo",
    "media-type",
    "width",
    "height",
    "offset",
    "length",
    "begin",
    "end",
    "anchor",
    "from",
    "xml:lang",
];

/// Reads one element of a shared file: a name or description as such, a source address
/// as `file-url`; words found anywhere else go into `words`: text in a value with a space
/// in it, text between a frame's children, an attribute other than a value's, and all of
/// an element no file description has (a `<note>`).
fn file_parts(el: &Element, at: usize, out: &mut Vec<ExtraText>, words: &mut String) {
    file_attr_words(el, words);
    words.push(' ');
    words.push_str(&el.text());
    for child in el.children() {
        let name = &*child.name;
        if matches!(name, "name" | "desc") {
            out.push(ExtraText {
                kind: format!("file-{name}"),
                lang: child.lang().map(str::to_owned),
                text: child.text_content(),
                child: at,
            });
            file_attr_words(child, words);
        } else if FILE_VALUES.contains(&name) {
            let text = child.text_content();
            if has_space(&text) {
                words.push(' ');
                words.push_str(&text);
            }
            file_attr_words(child, words);
            // A value holds no elements: any inside are words.
            for inner in child.children() {
                words.push(' ');
                words.push_str(&inner.deep_text());
                attribute_values(inner, words);
            }
        } else if FILE_FRAMES.contains(&name) {
            for attr in ["target", "uri"] {
                if let Some(url) = child.attr(attr) {
                    out.push(ExtraText {
                        kind: "file-url".into(),
                        lang: None,
                        text: url.to_owned(),
                        child: at,
                    });
                }
            }
            file_parts(child, at, out, words);
        } else {
            words.push(' ');
            words.push_str(&child.deep_text());
            attribute_values(child, words);
        }
    }
}

fn edit(el: &Element) -> Option<(EditKind, String)> {
    for child in el.children() {
        let id = || child.attr("id").map(str::to_owned);
        match (&*child.name, &*child.ns) {
            ("replace", NS_CORRECT) => return id().map(|i| (EditKind::Correction, i)),
            ("retract", NS_RETRACT) => {
                let kind = if child.child("moderated", NS_MODERATE).is_some() {
                    EditKind::Moderation
                } else {
                    EditKind::Retraction
                };
                return id().map(|i| (kind, i));
            }
            // The earlier wire forms: XEP-0422 fastening around the change.
            ("apply-to", NS_FASTEN) => {
                let kind = if child.child("moderated", NS_MODERATE_0).is_some() {
                    EditKind::Moderation
                } else if child.child("retract", NS_RETRACT_0).is_some() {
                    EditKind::Retraction
                } else {
                    continue;
                };
                return id().map(|i| (kind, i));
            }
            _ => {}
        }
    }
    None
}

fn e2ee(el: &Element, body: Option<&str>) -> Option<E2ee> {
    for child in el.children() {
        let found = match (&*child.name, &*child.ns) {
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
    for (at, child) in el.children().enumerate() {
        let kind = match (&*child.name, &*child.ns) {
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
            child: at,
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

    /// A body or subject with an element inside is delivered as the text it is judged
    /// and recorded as, in the stanza and in a message it carries; XHTML-IM is read as
    /// a client draws it, an inline element's text running on from the text before.
    #[test]
    fn text_split_by_markup_is_one_text() -> Result<(), FrameError> {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, NS_CLIENT.to_owned())]);
        let mut el = parse_element(
            "<message to='b@x'><body>we buy falcon<x xmlns='urn:z'>zz</x> on friday</body>\
             <subject>fal<b>con</b></subject><body xml:lang='de'>kein <i>falke</i></body>\
             <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client'><body>4111111111111111<x xmlns='urn:z'>0</x></body></message>\
             </forwarded></sent></message>",
            &scope,
        )?;
        let judged = StanzaView::of(&el);
        assert!(flatten_mixed_text(&mut el));
        let mut bytes = Vec::new();
        el.write_to(&mut bytes);
        let again = parse_element(std::str::from_utf8(&bytes).unwrap_or_default(), &scope)?;
        let delivered = StanzaView::of(&again);
        assert_eq!(delivered.body.as_deref(), Some("we buy falconzz on friday"));
        assert_eq!(delivered.body, judged.body);
        assert_eq!(delivered.subject.as_deref(), Some("falcon"));
        assert_eq!(delivered.extra, judged.extra);
        let shown = std::str::from_utf8(&bytes).unwrap_or_default();
        assert!(
            !shown.contains("urn:z") && !shown.contains("<b>"),
            "{shown}"
        );
        assert!(shown.contains("41111111111111110"), "{shown}");
        // Nothing to change: the stanza is left as it came.
        let mut plain = parse_element("<message><body>a <![CDATA[b]]></body></message>", &scope)?;
        assert!(!flatten_mixed_text(&mut plain));

        let v = view(
            "<message><html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'><p>the fal<span>con</span> deal \
             closes fri<em>day</em></p><p>next</p>line<br/>break</body></html></message>",
        )?;
        assert_eq!(
            v.extra.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
            [
                "the falcon deal closes friday next line break",
                "the fal con deal closes fri day next line break",
                "the falcon deal closes fridaynextlinebreak"
            ]
        );
        // An image between two words, a break written in capitals, a section; a word
        // split by inline markup beside an image; an element no list names, drawn inline
        // as a browser draws it; a second XHTML-IM alternative.
        let v = view(
            "<message><html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'>falcon<img src='x'/>deal \
             kestrel<BR/>desk fal<b>con</b><img src='y'/>deal os<x-y>prey</x-y><section>now</section></body></html>\
             <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
             sec<i>ond</i></body></html></message>",
        )?;
        assert_eq!(
            v.extra
                .iter()
                .filter(|t| t.kind == "xhtml")
                .map(|t| t.text.as_str())
                .collect::<Vec<_>>(),
            [
                "falcon deal kestrel desk falcon deal osprey now",
                "falcon deal kestrel desk fal con deal os prey now",
                "falcondeal kestreldesk falcondeal ospreynow",
                "second",
                "sec ond"
            ]
        );
        // A status, a nickname and a link's description are flattened as a body is.
        let mut el = parse_element(
            "<presence><status>fal<b>con</b> here</status>\
             <nick xmlns='http://jabber.org/protocol/nick'>fal<i>con</i></nick></presence>",
            &scope,
        )?;
        assert!(flatten_mixed_text(&mut el));
        let mut bytes = Vec::new();
        el.write_to(&mut bytes);
        let shown = String::from_utf8(bytes).unwrap_or_default();
        assert!(
            shown.contains(">falcon here</status>") && shown.contains(">falcon</nick>"),
            "{shown}"
        );
        Ok(())
    }

    /// The name of a room the recipient created is read from the room's own presence,
    /// with XEP-0106 escapes undone; a presence without both status codes, or of
    /// another type, names nothing.
    #[test]
    fn a_created_rooms_name_is_read_with_its_escapes_undone() -> Result<(), FrameError> {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, NS_CLIENT.to_owned())]);
        let presence = |from: &str, codes: &str, kind: &str| {
            parse_element(
                &format!(
                    "<presence from='{from}'{kind}><x xmlns='http://jabber.org/protocol/muc#user'>{codes}</x></presence>"
                ),
                &scope,
            )
        };
        let both = "<status code='110'/><status code='201'/>";
        let names = |el: &Element| -> Vec<String> {
            created_room(el).into_iter().map(|t| t.text).collect()
        };
        assert_eq!(
            names(&presence("falcon\\20plans@muc.x/a\\40b", both, "")?),
            ["falcon plans"]
        );
        assert_eq!(
            names(&presence("a\\5C27\\x\\@muc.x/n", both, "")?),
            ["a\\27\\x\\"]
        );
        assert_eq!(
            names(&presence("falcon@muc.x/n", "<status code='110'/>", "")?),
            Vec::<String>::new()
        );
        assert_eq!(
            names(&presence("falcon@muc.x/n", both, " type='unavailable'")?),
            Vec::<String>::new()
        );
        assert_eq!(
            names(&presence("muc.x/falcon@x", both, "")?),
            Vec::<String>::new()
        );
        Ok(())
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
    fn every_displayable_text_is_kept() -> Result<(), FrameError> {
        let v = view(
            "<message><body>decoy</body><body xml:lang='de'>geheim 4111</body>\
             <subject xml:lang='fr'>sujet</subject>\
             <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
             <p>rich<b>text</b></p></body></html>\
             <x xmlns='jabber:x:oob'><url>https://files.example/leak.pdf</url><desc>the deal</desc></x>\
             </message>",
        )?;
        assert_eq!(v.body.as_deref(), Some("decoy"));
        // The only subject is the primary one, whatever its language.
        assert_eq!(v.subject.as_deref(), Some("sujet"));
        let got: Vec<(&str, Option<&str>, &str)> = v
            .extra
            .iter()
            .map(|t| (t.kind.as_str(), t.lang.as_deref(), t.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("body", Some("de"), "geheim 4111"),
                ("xhtml", None, "richtext"),
                ("xhtml", None, "rich text"),
                ("oob-url", None, "https://files.example/leak.pdf"),
                ("oob-desc", None, "the deal"),
            ]
        );
        assert!(v.has_content());
        // XHTML alone is content.
        let v = view(
            "<message><html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'>only here</body></html></message>",
        )?;
        assert!(v.has_content());
        assert!(!view(
            "<message><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )?
        .has_content());
        Ok(())
    }

    #[test]
    fn text_in_unrecognised_or_forwarding_payloads_is_content() -> Result<(), FrameError> {
        // A custom client's own element, text or attributes: recorded and scanned.
        let v =
            view("<message><x xmlns='urn:example:custom'><note>hidden words</note></x></message>")?;
        assert!(v.has_content());
        assert!(
            v.extra
                .iter()
                .any(|t| t.kind == "other" && t.text.contains("hidden words")),
            "{:?}",
            v.extra
        );
        let v = view("<message><x xmlns='urn:example:custom' data='in an attribute'/></message>")?;
        assert!(
            v.extra.iter().any(|t| t.text.contains("in an attribute")),
            "{:?}",
            v.extra
        );
        // XEP-0297 forwarding on its own, as a client shows a forwarded message.
        let v = view(
            "<message><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='c@x'>\
             <body>passed along</body></message></forwarded></message>",
        )?;
        assert!(
            v.extra
                .iter()
                .any(|t| t.kind == "forwarded-body" && t.text == "passed along"),
            "{:?}",
            v.extra
        );
        // A reaction (XEP-0444) is something a person said.
        let v = view("<message><reactions xmlns='urn:xmpp:reactions:0' id='m1'><reaction>👍</reaction></reactions></message>")?;
        assert!(v.has_content());
        // Content-free extensions stay content-free.
        let v = view(
            "<message><active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/>\
             <markable xmlns='urn:xmpp:chat-markers:0'/><store xmlns='urn:xmpp:hints'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='o1'/><thread>t</thread></message>",
        )?;
        assert!(!v.has_content(), "{:?}", v.extra);
        // An encrypted payload is recognised as such, not scanned as text.
        let v = view("<message><encrypted xmlns='eu.siacs.conversations.axolotl'><payload>NDExMTExMTE=</payload></encrypted></message>")?;
        assert!(v.extra.is_empty(), "{:?}", v.extra);
        Ok(())
    }

    fn others(v: &StanzaView) -> Vec<&str> {
        v.extra
            .iter()
            .filter(|t| t.kind == "other")
            .map(|t| t.text.as_str())
            .collect()
    }

    #[test]
    fn words_put_where_only_ids_belong_are_content() -> Result<(), FrameError> {
        for (xml, words) in [
            (
                "<message to='bob@x' type='chat'><thread>4111 1111 1111 1111</thread></message>",
                "4111 1111 1111 1111",
            ),
            (
                "<message to='bob@x'><active xmlns='http://jabber.org/protocol/chatstates'>secret text</active></message>",
                "secret text",
            ),
            (
                "<message to='bob@x'><received xmlns='urn:xmpp:receipts' id='m1' note='meet at noon'/></message>",
                "meet at noon",
            ),
            (
                "<message to='bob@x'><displayed xmlns='urn:xmpp:chat-markers:0' id='sell everything now'/></message>",
                "sell everything now",
            ),
            (
                "<message to='bob@x'><store xmlns='urn:xmpp:hints'><x>hidden</x></store></message>",
                "hidden",
            ),
            (
                "<message to='bob@x'><delay xmlns='urn:xmpp:delay' from='carol@x' stamp='2026-01-01T00:00:00Z'>the plan</delay></message>",
                "the plan",
            ),
            (
                "<message to='bob@x'><sent xmlns='urn:xmpp:carbons:2'>stray<forwarded xmlns='urn:xmpp:forward:0'/></sent></message>",
                "stray",
            ),
        ] {
            let v = view(xml)?;
            assert!(v.has_content(), "{xml}");
            assert_eq!(others(&v), [words], "{xml}");
        }
        // A moderator's reason is recorded with the moderation.
        let v = view(
            "<message><retract xmlns='urn:xmpp:message-retract:1' id='s3'>\
             <moderated xmlns='urn:xmpp:message-moderate:1' by='room@muc/mod'/>\
             <reason>insider tip</reason></retract></message>",
        )?;
        assert_eq!(others(&v), ["insider tip"]);
        assert_eq!(v.edit, Some((EditKind::Moderation, "s3".into())));
        // What these extensions ordinarily hold is no content.
        for xml in [
            "<message to='bob@x' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/><thread parent='p1'>t-4711</thread></message>",
            "<message><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
            "<message><displayed xmlns='urn:xmpp:chat-markers:0' id='m1' sender='a@x/r'/><store xmlns='urn:xmpp:hints'/></message>",
            "<message><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>\
             <delay xmlns='urn:xmpp:delay' from='x' stamp='2026-01-01T00:00:00Z'>Offline Storage</delay></message>",
            "<message><x xmlns='jabber:x:event'><composing/><id>m-22</id></x></message>",
            "<message><stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='x'/><occupant-id xmlns='urn:xmpp:occupant-id:0' id='o1'/></message>",
        ] {
            let v = view(xml)?;
            assert!(!v.has_content(), "{xml}: {:?}", v.extra);
        }
        // A thread id beside a body adds nothing; words in it are an `other` text.
        let v = view("<message><body>hi</body><thread>t-4711</thread></message>")?;
        assert!(v.extra.is_empty(), "{:?}", v.extra);
        let v = view("<message><body>hi</body><thread>4111 1111 1111 1111</thread></message>")?;
        assert_eq!(others(&v), ["4111 1111 1111 1111"]);
        // A delay naming a domain holds a server's note, and nothing else passes for one.
        let v = view(
            "<message><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>\
             <delay xmlns='urn:xmpp:delay' from='x' stamp='2026-01-01T00:00:00Z'>the plan is friday</delay></message>",
        )?;
        assert_eq!(others(&v), ["the plan is friday"]);
        Ok(())
    }

    #[test]
    fn words_where_no_client_shows_them_are_content() -> Result<(), FrameError> {
        // Text directly in the stanza, between its children.
        let v = view("<message to='bob@x'>meet at <active xmlns='http://jabber.org/protocol/chatstates'/>noon</message>")?;
        assert!(v.has_content());
        assert_eq!(others(&v), ["meet at noon"]);
        assert_eq!(v.extra[0].child, OWN_TEXT);
        let v = view("<presence>the plan<show>away</show></presence>")?;
        assert_eq!(others(&v), ["the plan"]);
        // Parts of a shared file that are not its name, description or sources.
        let file = |inner: &str| {
            view(&format!(
                "<message><file-sharing xmlns='urn:xmpp:sfs:0' disposition='inline'>\
                 <file xmlns='urn:xmpp:file:metadata:0'><name>a.pdf</name>{inner}</file>\
                 <sources><url-data xmlns='http://jabber.org/protocol/url-data' target='https://up.example/a'/></sources>\
                 </file-sharing></message>"
            ))
        };
        for (inner, words) in [
            ("<note>sell before friday</note>", "sell before friday"),
            (
                "<media-type>sell before friday</media-type>",
                "sell before friday",
            ),
            (
                "<size note='sell before friday'>12</size>",
                "sell before friday",
            ),
            (
                "<hash xmlns='urn:xmpp:hashes:2' algo='sha-256'>x<b>sell</b></hash>",
                "sell",
            ),
            (
                "<name xml:lang='en' alt='sell now'>b.pdf</name>",
                "sell now",
            ),
        ] {
            let v = file(inner)?;
            assert_eq!(others(&v), [words], "{inner}");
            assert_eq!(v.extra.last().map(|t| t.child), Some(0), "{inner}");
        }
        // What a file description ordinarily holds is none.
        let v = file(
            "<media-type>application/pdf</media-type><size>3032449</size>\
             <date>2026-01-01T00:00:00Z</date><width>10</width><height>20</height>\
             <hash xmlns='urn:xmpp:hashes:2' algo='sha-256'>2XarmwTlNxDAMkvymloX3S5+VbylNrJt/l5QyPa+YoU=</hash>\
             <desc xml:lang='en'>the report</desc>\
             <thumbnail xmlns='urn:xmpp:thumbs:1' uri='cid:sha1+x@bob.xmpp.org' media-type='image/png' width='128' height='96'/>",
        )?;
        assert!(others(&v).is_empty(), "{:?}", v.extra);
        // The name of an encryption scheme, shown by a client that does not know it.
        let v = view(
            "<message><encryption xmlns='urn:xmpp:eme:0' namespace='urn:x:custom' name='meet at noon'/>\
             <body>This message is encrypted.</body></message>",
        )?;
        assert_eq!(others(&v), ["meet at noon"]);
        // Pretty-printed whitespace is none.
        let v = view("<message>\n  <body>hi</body>\n  <encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/>\n</message>")?;
        assert!(others(&v).is_empty(), "{:?}", v.extra);
        Ok(())
    }

    #[test]
    fn a_pubsub_notification_is_read_for_words_and_not_for_keys_images_or_passwords(
    ) -> Result<(), FrameError> {
        let event = |node: &str, payload: &str| {
            view(&format!(
                "<message from='bob@x' to='alice@x/r' type='headline'>\
                 <event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{node}'>\
                 <item id='current'>{payload}</item></items></event></message>"
            ))
        };
        for (node, payload) in [
            ("urn:xmpp:avatar:metadata", "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='12345' id='111f4b3c50d7b0df729d299bc6f8e9ef9066971f' height='64' width='64' type='image/png'/></metadata>"),
            ("eu.siacs.conversations.axolotl.devicelist", "<list xmlns='eu.siacs.conversations.axolotl'><device id='12345'/></list>"),
            ("urn:xmpp:omemo:2:devices", "<devices xmlns='urn:xmpp:omemo:2'><device id='12345' label='Gajim on laptop'/></devices>"),
            ("urn:xmpp:bookmarks:1", "<conference xmlns='urn:xmpp:bookmarks:1' name='Deals desk' autojoin='true'><nick>al</nick><password>hunter2 secret</password></conference>"),
            ("urn:xmpp:mds:displayed:0", "<displayed xmlns='urn:xmpp:mds:displayed:0'><stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='x'/></displayed>"),
        ] {
            let v = event(node, payload)?;
            assert!(!v.has_content(), "{node}: {:?}", v.extra);
        }
        for (node, payload, words) in [
            ("http://jabber.org/protocol/mood", "<mood xmlns='http://jabber.org/protocol/mood'><happy/><text>deal closes friday</text></mood>", "deal closes friday"),
            ("urn:example:notes", "<note xmlns='urn:example:notes' tag='q3'>sell before friday</note>", "sell before friday q3"),
        ] {
            let v = event(node, payload)?;
            assert!(v.has_content(), "{node}");
            assert_eq!(others(&v), [words], "{node}");
        }
        // A device's label is judged, and makes no record by itself; an item named with a
        // space in it is words.
        let v = event(
            "urn:xmpp:omemo:2:devices",
            "<devices xmlns='urn:xmpp:omemo:2'><device id='1' label='sell falcon friday'/></devices>",
        )?;
        assert!(!v.has_content(), "{:?}", v.extra);
        assert_eq!(
            v.extra
                .iter()
                .map(|t| (t.kind.as_str(), t.text.trim()))
                .collect::<Vec<_>>(),
            [("profile", "sell falcon friday")]
        );
        let v = view(
            "<message from='bob@x' to='alice@x/r' type='headline'>\
             <event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:avatar:metadata'>\
             <item id='sell falcon before earnings'><metadata xmlns='urn:xmpp:avatar:metadata'/></item>\
             </items></event></message>",
        )?;
        assert!(v.has_content());
        assert_eq!(others(&v), ["sell falcon before earnings"]);
        // A nickname is judged but makes no record by itself: servers hand each contact's
        // to a client at every login. One with anything else in it is words.
        let v = event(
            "http://jabber.org/protocol/nick",
            "<nick xmlns='http://jabber.org/protocol/nick'>falcon desk</nick>",
        )?;
        assert!(!v.has_content(), "{:?}", v.extra);
        assert_eq!(
            v.extra
                .iter()
                .map(|t| (t.kind.as_str(), t.text.as_str()))
                .collect::<Vec<_>>(),
            [("nick", "falcon desk")]
        );
        let v = event(
            "http://jabber.org/protocol/nick",
            "<nick xmlns='http://jabber.org/protocol/nick' note='sell now'>al</nick>",
        )?;
        assert!(v.has_content());
        assert_eq!(others(&v), ["al sell now"]);
        // Any other element of a namespace the view reads only in part is words.
        for (part, words) in [
            ("<y xmlns='jabber:x:oob'>sell before friday</y>", "sell before friday"),
            ("<sources xmlns='urn:xmpp:sfs:0' id='f1'><url-data xmlns='http://jabber.org/protocol/url-data' target='https://files.example/plan'/></sources>", "f1 https://files.example/plan"),
            ("<note xmlns='http://jabber.org/protocol/xhtml-im'>sell before friday</note>", "sell before friday"),
            ("<header xmlns='urn:xmpp:omemo:2'>sell before friday</header>", "sell before friday"),
        ] {
            let v = view(&format!("<message to='bob@x'>{part}</message>"))?;
            assert_eq!(others(&v), [words], "{part}");
        }
        Ok(())
    }

    #[test]
    fn messages_wrapped_at_any_depth_are_read() -> Result<(), FrameError> {
        // A carbon inside a message forwarded on its own.
        let v = view(
            "<message to='bob@x' id='n'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'>\
             <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'>\
             <body>secret</body></message></forwarded></sent></message></forwarded></message>",
        )?;
        assert!(v.has_content());
        assert_eq!(
            v.extra
                .iter()
                .map(|t| (t.kind.as_str(), t.text.as_str(), t.child))
                .collect::<Vec<_>>(),
            [("forwarded-body", "secret", 0)]
        );
        // A second carbon wrapper beside the one the view reads as the forwarded copy.
        let v = view(
            "<message><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client'><body>decoy</body></message></forwarded></received>\
             <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client'><body>second</body></message></forwarded></sent></message>",
        )?;
        let fwd = v
            .forwarded
            .as_ref()
            .ok_or(FrameError::TooLarge { limit: 0 })?;
        assert_eq!(fwd.inner.body.as_deref(), Some("decoy"));
        assert!(
            v.extra
                .iter()
                .any(|t| t.kind == "forwarded-body" && t.text == "second" && t.child == 1),
            "{:?}",
            v.extra
        );
        Ok(())
    }

    #[test]
    fn shared_files_names_and_sources_are_kept() -> Result<(), FrameError> {
        let v = view(
            "<message><file-sharing xmlns='urn:xmpp:sfs:0'>\
             <file xmlns='urn:xmpp:file:metadata:0'><name>q3-forecast.xlsx</name><desc>numbers</desc></file>\
             <sources><url-data xmlns='http://jabber.org/protocol/url-data' target='https://up.example/q3'/></sources>\
             </file-sharing>\
             <reference xmlns='urn:xmpp:reference:0' type='data' uri='urn:x'><media-sharing xmlns='urn:xmpp:sims:1'>\
             <sources><reference xmlns='urn:xmpp:reference:0' type='data' uri='https://up.example/p'/></sources>\
             </media-sharing></reference></message>",
        )?;
        let got: Vec<(&str, &str)> = v
            .extra
            .iter()
            .map(|t| (t.kind.as_str(), t.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("file-name", "q3-forecast.xlsx"),
                ("file-desc", "numbers"),
                ("file-url", "https://up.example/q3"),
                ("file-url", "https://up.example/p"),
            ]
        );
        assert!(v.has_content());
        Ok(())
    }

    #[test]
    fn corrections_retractions_and_moderation() -> Result<(), FrameError> {
        let v = view("<message><body>fixed</body><replace xmlns='urn:xmpp:message-correct:0' id='m1'/></message>")?;
        assert_eq!(v.edit, Some((EditKind::Correction, "m1".into())));
        let v = view("<message><retract xmlns='urn:xmpp:message-retract:1' id='m2'/></message>")?;
        assert_eq!(v.edit, Some((EditKind::Retraction, "m2".into())));
        assert!(v.has_content());
        let v = view(
            "<message><retract xmlns='urn:xmpp:message-retract:1' id='s3'>\
             <moderated xmlns='urn:xmpp:message-moderate:1' by='room@muc/mod'/></retract></message>",
        )?;
        assert_eq!(v.edit, Some((EditKind::Moderation, "s3".into())));
        let v = view(
            "<message><apply-to xmlns='urn:xmpp:fasten:0' id='m4'>\
             <retract xmlns='urn:xmpp:message-retract:0'/></apply-to></message>",
        )?;
        assert_eq!(v.edit, Some((EditKind::Retraction, "m4".into())));
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
