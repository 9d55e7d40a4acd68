//! A small owned XML element tree with resolved namespaces.
//!
//! [`parse_element`] runs quick-xml over a slice and builds an [`Element`]. The
//! framer hands each complete top-level unit to `parse_framed_in`, which reads
//! a unit written the plain way in one pass of its own and any other as
//! [`parse_element`] does. Policy and archive code read the tree; only a stanza
//! that policy changes is written back with [`Element::write_to`] (allowed
//! stanzas are forwarded as the raw bytes).
//!
//! Attributes are kept *as written*, including `xmlns` and `xmlns:p`
//! declarations, so that writing a parsed tree back reproduces the same
//! namespace declarations and therefore means the same thing in the stream it
//! came from.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::framer::FrameError;

/// Namespace bound to the `xml` prefix by the Namespaces in XML spec.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Namespace bound to the `xmlns` prefix by the Namespaces in XML spec.
pub const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// One node of element content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Character data with references resolved; adjacent text, character
    /// references and CDATA sections are merged into one node.
    Text(String),
}

/// An element name, attribute name or namespace. The ones XMPP traffic is made of
/// are borrowed from [`common`], so parsing a stanza allocates for none of them;
/// any other is owned.
pub type Name = Cow<'static, str>;

/// The [`Name`] for `s`: borrowed when it is one of the names and namespaces common
/// XMPP traffic uses, owned otherwise.
pub fn name(s: &str) -> Name {
    match common(s) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(s.to_owned()),
    }
}

/// The static copy of `s` if it is an element name, attribute name or namespace
/// that most stanzas carry (RFC 6120/6121 and the XEPs of a modern client).
pub fn common(s: &str) -> Option<&'static str> {
    Some(match s {
        // RFC 6120 / 6121
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        "body" => "body",
        "subject" => "subject",
        "thread" => "thread",
        "show" => "show",
        "status" => "status",
        "priority" => "priority",
        "error" => "error",
        "text" => "text",
        "query" => "query",
        "item" => "item",
        "group" => "group",
        "bind" => "bind",
        "resource" => "resource",
        "jid" => "jid",
        "jabber:client" => "jabber:client",
        "jabber:server" => "jabber:server",
        "jabber:iq:roster" => "jabber:iq:roster",
        "urn:ietf:params:xml:ns:xmpp-stanzas" => "urn:ietf:params:xml:ns:xmpp-stanzas",
        "urn:ietf:params:xml:ns:xmpp-bind" => "urn:ietf:params:xml:ns:xmpp-bind",
        // attributes
        "from" => "from",
        "to" => "to",
        "id" => "id",
        "type" => "type",
        "xmlns" => "xmlns",
        "xml:lang" => "xml:lang",
        "name" => "name",
        "subscription" => "subscription",
        "ask" => "ask",
        "ver" => "ver",
        "node" => "node",
        "hash" => "hash",
        "by" => "by",
        "stamp" => "stamp",
        "queryid" => "queryid",
        "code" => "code",
        "role" => "role",
        "affiliation" => "affiliation",
        "nick" => "nick",
        "h" => "h",
        // receipts, markers, stanza ids, chat states, hints
        "request" => "request",
        "received" => "received",
        "urn:xmpp:receipts" => "urn:xmpp:receipts",
        "markable" => "markable",
        "displayed" => "displayed",
        "acknowledged" => "acknowledged",
        "urn:xmpp:chat-markers:0" => "urn:xmpp:chat-markers:0",
        "origin-id" => "origin-id",
        "stanza-id" => "stanza-id",
        "urn:xmpp:sid:0" => "urn:xmpp:sid:0",
        "active" => "active",
        "composing" => "composing",
        "paused" => "paused",
        "inactive" => "inactive",
        "gone" => "gone",
        "http://jabber.org/protocol/chatstates" => "http://jabber.org/protocol/chatstates",
        "store" => "store",
        "no-store" => "no-store",
        "no-copy" => "no-copy",
        "no-permanent-store" => "no-permanent-store",
        "urn:xmpp:hints" => "urn:xmpp:hints",
        // carbons, forwarding, delay, archive
        "sent" => "sent",
        "private" => "private",
        "urn:xmpp:carbons:2" => "urn:xmpp:carbons:2",
        "forwarded" => "forwarded",
        "urn:xmpp:forward:0" => "urn:xmpp:forward:0",
        "delay" => "delay",
        "urn:xmpp:delay" => "urn:xmpp:delay",
        "result" => "result",
        "fin" => "fin",
        "urn:xmpp:mam:2" => "urn:xmpp:mam:2",
        // presence extras, rooms, discovery
        "c" => "c",
        "http://jabber.org/protocol/caps" => "http://jabber.org/protocol/caps",
        "x" => "x",
        "photo" => "photo",
        "vcard-temp:x:update" => "vcard-temp:x:update",
        "http://jabber.org/protocol/muc" => "http://jabber.org/protocol/muc",
        "http://jabber.org/protocol/muc#user" => "http://jabber.org/protocol/muc#user",
        "http://jabber.org/protocol/disco#info" => "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items" => "http://jabber.org/protocol/disco#items",
        "identity" => "identity",
        "feature" => "feature",
        "var" => "var",
        "urn:xmpp:ping" => "urn:xmpp:ping",
        "ping" => "ping",
        // stream management
        "r" => "r",
        "a" => "a",
        "urn:xmpp:sm:3" => "urn:xmpp:sm:3",
        // end-to-end encryption envelopes
        "encrypted" => "encrypted",
        "header" => "header",
        "key" => "key",
        "iv" => "iv",
        "payload" => "payload",
        "eu.siacs.conversations.axolotl" => "eu.siacs.conversations.axolotl",
        "urn:xmpp:eme:0" => "urn:xmpp:eme:0",
        _ => return None,
    })
}

/// An XML element with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Prefix as written (`stream` in `<stream:features>`), `None` when unprefixed.
    pub prefix: Option<String>,
    /// Local name.
    pub name: Name,
    /// Resolved namespace; for an unprefixed element without its own `xmlns`
    /// this is inherited from the parent, ultimately from the stream header.
    /// Empty when the element is in no namespace.
    pub ns: Name,
    /// Attributes in document order with their written (qualified) names,
    /// namespace declarations included, values unescaped and normalised.
    pub attrs: Vec<(Name, String)>,
    pub children: Vec<Node>,
}

impl Element {
    /// A new, unprefixed element without attributes or children.
    pub fn new(name: impl Into<Name>, ns: impl Into<Name>) -> Element {
        Element {
            prefix: None,
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: impl Into<Name>, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`Element::push_child`].
    pub fn with_child(mut self, child: Element) -> Element {
        self.push_child(child);
        self
    }

    /// Builder form of [`Element::set_text`].
    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.set_text(text);
        self
    }

    /// True if this element has the given local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The value of the attribute with this written name (`to`, `xml:lang`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an attribute, replacing an existing one of the same written name
    /// in place so attribute order is kept.
    pub fn set_attr(&mut self, name: impl Into<Name>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes an attribute and returns its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let at = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(at).1)
    }

    /// `xml:lang` of this element as written on it (not inherited).
    pub fn lang(&self) -> Option<&str> {
        self.attr("xml:lang")
    }

    /// The first child element with this local name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    /// Mutable access to the first child element with this name and namespace.
    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|c| c.is(name, ns))
    }

    /// Child elements, text nodes skipped.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Mutable child elements, text nodes skipped.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Concatenated direct text content (not descendants').
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out
    }

    /// All text content, descendants' included, in document order; element
    /// boundaries become a space so words of adjacent elements stay apart.
    pub fn deep_text(&self) -> String {
        fn walk(el: &Element, out: &mut String) {
            for node in &el.children {
                match node {
                    Node::Text(t) => out.push_str(t),
                    Node::Element(e) => {
                        out.push(' ');
                        walk(e, out);
                        out.push(' ');
                    }
                }
            }
        }
        let mut out = String::new();
        walk(self, &mut out);
        out
    }

    /// All text content, descendants' included, in document order and nothing
    /// between: what a client that shows an element's text content shows
    /// (`fal<i>con</i>` reads `falcon`).
    pub fn text_content(&self) -> String {
        fn walk(el: &Element, out: &mut String) {
            for node in &el.children {
                match node {
                    Node::Text(t) => out.push_str(t),
                    Node::Element(e) => walk(e, out),
                }
            }
        }
        let mut out = String::new();
        walk(self, &mut out);
        out
    }

    /// Replaces everything the element holds, child elements included, by `text`.
    pub fn replace_content(&mut self, text: impl Into<String>) {
        self.children.clear();
        self.children.push(Node::Text(text.into()));
    }

    /// Keeps the child elements for which `keep` returns true; text is kept.
    pub fn retain_children(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Replaces all text nodes by one text node holding `text`, placed where
    /// the first text node was (or first), child elements kept in order.
    pub fn set_text(&mut self, text: impl Into<String>) {
        let at = self
            .children
            .iter()
            .position(|n| matches!(n, Node::Text(_)))
            .unwrap_or(0);
        self.children.retain(|n| matches!(n, Node::Element(_)));
        let at = at.min(self.children.len());
        self.children.insert(at, Node::Text(text.into()));
    }

    /// Calls `f` with every namespace prefix this element and its descendants use in
    /// element or attribute names (`xml` and `xmlns` aside).
    pub fn visit_prefixes<'a>(&'a self, f: &mut impl FnMut(&'a str)) {
        if let Some(p) = &self.prefix {
            f(p);
        }
        for (k, _) in &self.attrs {
            if let Some((p, _)) = k.split_once(':') {
                if p != "xml" && p != "xmlns" {
                    f(p);
                }
            }
        }
        for child in &self.children {
            if let Node::Element(e) = child {
                e.visit_prefixes(f);
            }
        }
    }

    /// The qualified name as written: `prefix:name` or `name`.
    pub fn qname(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{p}:{}", self.name),
            None => self.name.clone().into_owned(),
        }
    }

    /// Serialises the element.
    ///
    /// The root is written as it would appear in the stream it was parsed
    /// from: its own namespace (and any prefix it uses without declaring) are
    /// taken to be in scope there, so a parsed stanza is written without extra
    /// declarations. Below the root, an unprefixed element whose namespace
    /// differs from the one in scope and which declares none itself (a
    /// builder-created child such as a `<text xmlns='urn:…'>`) gets an
    /// `xmlns` attribute. A builder-created root in a namespace other than
    /// the stream's content namespace must carry its own `xmlns` attribute,
    /// or be written with [`Element::write_in`].
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_with_default(&self.ns, out);
    }

    /// Serialises the element into a context whose default namespace is
    /// `default_ns` (for a stanza: the stream's content namespace, such as
    /// `jabber:client`), declaring the element's namespace if it differs.
    pub fn write_in(&self, default_ns: &str, out: &mut Vec<u8>) {
        self.write_with_default(default_ns, out);
    }

    /// The serialised element as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    fn write_with_default(&self, parent_default: &str, out: &mut Vec<u8>) {
        out.push(b'<');
        let qname = self.qname();
        out.extend_from_slice(qname.as_bytes());
        let mut default = parent_default;
        let mut declares_default = false;
        for (k, v) in &self.attrs {
            if k == "xmlns" {
                declares_default = true;
                default = v;
            }
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr(v, out);
            out.push(b'\'');
        }
        if self.prefix.is_none() && !declares_default && self.ns != parent_default {
            out.extend_from_slice(b" xmlns='");
            escape_attr(&self.ns, out);
            out.push(b'\'');
            default = &self.ns;
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for node in &self.children {
            match node {
                Node::Element(e) => e.write_with_default(default, out),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(qname.as_bytes());
        out.push(b'>');
    }
}

/// Escapes character data. `>` is escaped so no `]]>` can appear; `\r` is
/// written as a character reference because a parser would otherwise
/// normalise it to `\n` (XML 1.0 §2.11).
fn escape_text(text: &str, out: &mut Vec<u8>) {
    for &b in text.as_bytes() {
        match b {
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'&' => out.extend_from_slice(b"&amp;"),
            b'\r' => out.extend_from_slice(b"&#13;"),
            _ => out.push(b),
        }
    }
}

/// Escapes an attribute value for single or double quotes. Tab, LF and CR
/// become character references because attribute-value normalisation
/// (XML 1.0 §3.3.3) would turn them into spaces.
fn escape_attr(value: &str, out: &mut Vec<u8>) {
    for &b in value.as_bytes() {
        match b {
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'&' => out.extend_from_slice(b"&amp;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&apos;"),
            b'\t' => out.extend_from_slice(b"&#9;"),
            b'\n' => out.extend_from_slice(b"&#10;"),
            b'\r' => out.extend_from_slice(b"&#13;"),
            _ => out.push(b),
        }
    }
}

/// The namespace of an unprefixed element when no default is declared.
static NO_NAMESPACE: Name = Cow::Borrowed("");

/// Namespace bindings in scope, with an undo log per open element.
///
/// A hash map keeps prefix look-ups constant-time: a hostile stanza can
/// declare thousands of prefixes and then use one from thousands of elements.
#[derive(Debug, Clone, Default)]
pub struct NsScope {
    prefixes: HashMap<String, Vec<Name>>,
    defaults: Vec<Name>,
    /// What each open element declared, innermost last: the prefix, or `None`
    /// for the default namespace.
    undo: Vec<Option<String>>,
    /// Where each open element's entries in `undo` begin.
    marks: Vec<usize>,
}

impl NsScope {
    /// The scope every document starts with: `xml` bound, no default namespace.
    pub fn new() -> NsScope {
        let mut prefixes = HashMap::new();
        prefixes.insert("xml".to_owned(), vec![Cow::Borrowed(XML_NS)]);
        NsScope {
            prefixes,
            defaults: vec![Cow::Borrowed("")],
            undo: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// The namespace bound to `prefix` (`None`: the default namespace, which
    /// is empty when none is declared).
    pub fn resolve(&self, prefix: Option<&str>) -> Option<&str> {
        self.resolve_name(prefix).map(|n| &**n)
    }

    fn resolve_name(&self, prefix: Option<&str>) -> Option<&Name> {
        match prefix {
            None => Some(self.defaults.last().unwrap_or(&NO_NAMESPACE)),
            Some(p) => self.prefixes.get(p).and_then(|v| v.last()),
        }
    }

    /// Opens an element scope for the namespace declarations among `attrs`,
    /// checked as [`declarations`] checks them.
    fn enter_attrs(&mut self, attrs: &[(Name, String)]) -> Result<(), FrameError> {
        self.marks.push(self.undo.len());
        for (k, v) in attrs {
            if let Some(prefix) = declared_prefix(k, v)? {
                self.bind(prefix.map(str::to_owned), name(v));
            }
        }
        Ok(())
    }

    fn bind(&mut self, prefix: Option<String>, ns: Name) {
        match &prefix {
            None => self.defaults.push(ns),
            Some(p) => self.prefixes.entry(p.clone()).or_default().push(ns),
        }
        self.undo.push(prefix);
    }

    /// How many element scopes are open.
    fn depth(&self) -> usize {
        self.marks.len()
    }

    /// Closes the innermost element scope.
    fn leave(&mut self) {
        let from = self.marks.pop().unwrap_or(0);
        while self.undo.len() > from {
            match self.undo.pop().flatten() {
                None => {
                    self.defaults.pop();
                }
                Some(p) => {
                    if let Some(stack) = self.prefixes.get_mut(&p) {
                        stack.pop();
                        // A scope that outlives its elements (the stream's)
                        // keeps no trace of their prefixes.
                        if stack.is_empty() {
                            self.prefixes.remove(&p);
                        }
                    }
                }
            }
        }
    }

    /// Applies declarations permanently (the stream header's).
    pub(crate) fn declare(&mut self, decls: Vec<(Option<String>, String)>) {
        self.marks.push(self.undo.len());
        for (prefix, ns) in decls {
            self.bind(prefix, name(&ns));
        }
    }
}

fn not_well_formed(detail: impl Into<String>) -> FrameError {
    FrameError::NotWellFormed {
        detail: detail.into(),
    }
}

/// Splits a qualified name into prefix and local part (Namespaces in XML
/// §4: at most one colon, neither part empty).
pub(crate) fn split_qname(qname: &str) -> Result<(Option<&str>, &str), FrameError> {
    let bad = || not_well_formed(format!("bad qualified name {qname:?}"));
    // Names are a few bytes long: a plain loop finds the colon without the set-up
    // of `split_once`'s memchr, which showed in profiles of framing.
    let Some(colon) = qname.bytes().position(|b| b == b':') else {
        return if qname.is_empty() {
            Err(bad())
        } else {
            Ok((None, qname))
        };
    };
    // The colon is ASCII, so both slices lie on character boundaries.
    let prefix = qname.get(..colon).unwrap_or_default();
    let local = qname.get(colon + 1..).unwrap_or_default();
    if prefix.is_empty() || local.is_empty() || local.contains(':') {
        return Err(bad());
    }
    Ok((Some(prefix), local))
}

/// A start tag read into owned attributes, namespaces not yet resolved. The
/// name is borrowed: the element keeps its parts, not the qualified name.
pub(crate) struct RawTag<'a> {
    pub qname: &'a str,
    pub attrs: Vec<(Name, String)>,
}

/// `part` as a `&str`. A slice of `text` (the string a reader was given, its UTF-8
/// checked already) is found by address, and `str::get` then checks only that it
/// starts and ends on character boundaries; any other slice is checked in full.
fn str_within<'a>(text: &'a str, part: &'a [u8]) -> Option<&'a str> {
    let start = part.as_ptr().addr().wrapping_sub(text.as_ptr().addr());
    match text.get(start..start.saturating_add(part.len())) {
        // Same address and length within `text`: these are `part`'s own bytes.
        Some(s) if std::ptr::eq(s.as_ptr(), part.as_ptr()) => Some(s),
        _ => std::str::from_utf8(part).ok(),
    }
}

/// Reads a start tag's name and attributes, checking for duplicates. `text` is
/// the string the tag was read from.
pub(crate) fn read_tag<'a>(
    start: &'a BytesStart<'_>,
    text: &'a str,
) -> Result<RawTag<'a>, FrameError> {
    let qname = str_within(text, start.name().into_inner())
        .ok_or_else(|| not_well_formed("element name is not UTF-8"))?;
    let attrs = match str_within(text, start.attributes_raw()).and_then(plain_attrs) {
        Some(attrs) => attrs,
        None => checked_attrs(start)?,
    };
    Ok(RawTag { qname, attrs })
}

/// Reads attributes through quick-xml, which checks them and reports what is
/// wrong.
fn checked_attrs(start: &BytesStart<'_>) -> Result<Vec<(Name, String)>, FrameError> {
    let mut attrs = Vec::new();
    for attr in start.attributes().with_checks(true) {
        let attr = attr.map_err(|e| not_well_formed(format!("attribute: {e}")))?;
        let key = std::str::from_utf8(attr.key.as_ref())
            .map_err(|_| not_well_formed("attribute name is not UTF-8"))?;
        let key = name(key);
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| not_well_formed(format!("attribute {key:?}: {e}")))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(attrs)
}

/// Reads attributes the way nearly every tag writes them, faster than
/// [`checked_attrs`] and to the same result: a few `key='value'` or
/// `key="value"` separated by whitespace, distinct keys, and values that
/// normalisation leaves alone (no reference, tab or line end). `None` for
/// anything else, which [`checked_attrs`] then reads and judges.
fn plain_attrs(text: &str) -> Option<Vec<(Name, String)>> {
    plain_attrs_from(text, 0, AttrsEnd::Text).map(|(attrs, _)| attrs)
}

/// Where a run of attributes read by [`plain_attrs_from`] ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttrsEnd {
    /// At the end of the text (a tag's attributes as quick-xml hands them over).
    Text,
    /// At the `>` or `/` that ends a start tag, where a name would begin.
    Tag,
}

/// [`plain_attrs`] on the text from `from` on, ending as `end` says; with the
/// attributes, where they end (the text's length, or the index of the `>` or `/`).
fn plain_attrs_from(
    text: &str,
    from: usize,
    end: AttrsEnd,
) -> Option<(Vec<(Name, String)>, usize)> {
    /// Past this many, finding duplicates pair by pair is left to quick-xml.
    const MAX_ATTRS: usize = 32;
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let raw = text.as_bytes();
    let mut attrs: Vec<(Name, String)> = Vec::new();
    let mut i = from;
    loop {
        let Some(skip) = raw.get(i..)?.iter().position(|b| !is_ws(b)) else {
            return (end == AttrsEnd::Text).then_some((attrs, raw.len()));
        };
        if end == AttrsEnd::Tag && matches!(raw.get(i + skip), Some(b'>' | b'/')) {
            return Some((attrs, i + skip));
        }
        if attrs.len() == MAX_ATTRS || (!attrs.is_empty() && skip == 0) {
            return None;
        }
        i += skip;
        let key_len = raw.get(i..)?.iter().position(|&b| b == b'=' || is_ws(&b))?;
        let key = text.get(i..i + key_len).filter(|k| !k.is_empty())?;
        i += key_len;
        i += raw.get(i..)?.iter().position(|b| !is_ws(b))?;
        if raw.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        i += raw.get(i..)?.iter().position(|b| !is_ws(b))?;
        let quote = raw.get(i).copied().filter(|&q| q == b'\'' || q == b'"')?;
        i += 1;
        let value_len = raw
            .get(i..)?
            .iter()
            .position(|&b| matches!(b, b'&' | b'\t' | b'\r' | b'\n') || b == quote)?;
        if raw.get(i + value_len) != Some(&quote) {
            return None;
        }
        let value = text.get(i..i + value_len)?;
        i += value_len + 1;
        if attrs.iter().any(|(k, _)| k == key) {
            return None;
        }
        attrs.push((name(key), value.to_owned()));
    }
}

/// Namespace declarations carried by `attrs`, checked against the
/// Namespaces in XML constraints (reserved prefixes, no prefix undeclaring).
pub(crate) fn declarations(
    attrs: &[(Name, String)],
) -> Result<Vec<(Option<String>, String)>, FrameError> {
    let mut decls = Vec::new();
    for (k, v) in attrs {
        if let Some(prefix) = declared_prefix(k, v)? {
            decls.push((prefix.map(str::to_owned), v.clone()));
        }
    }
    Ok(decls)
}

/// What the attribute `k='v'` declares: `Some(None)` the default namespace,
/// `Some(Some(p))` the prefix `p`, `None` nothing (an ordinary attribute).
fn declared_prefix<'k>(k: &'k str, v: &str) -> Result<Option<Option<&'k str>>, FrameError> {
    if k == "xmlns" {
        if v == XML_NS || v == XMLNS_NS {
            return Err(not_well_formed("reserved namespace as default"));
        }
        return Ok(Some(None));
    }
    let Some(p) = k.strip_prefix("xmlns:") else {
        return Ok(None);
    };
    let bad = p.is_empty()
        || p.contains(':')
        || v.is_empty()
        || p == "xmlns"
        || (p == "xml") != (v == XML_NS)
        || v == XMLNS_NS;
    if bad {
        return Err(not_well_formed(format!("bad namespace declaration {k:?}")));
    }
    Ok(Some(Some(p)))
}

/// Checks that every prefixed attribute's prefix is bound and that no two
/// attributes share an expanded name (Namespaces in XML §6.3).
pub(crate) fn check_attr_namespaces(
    attrs: &[(Name, String)],
    scope: &NsScope,
) -> Result<(), FrameError> {
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for (k, _) in attrs {
        if k == "xmlns" || k.starts_with("xmlns:") {
            continue;
        }
        let (prefix, local) = split_qname(k)?;
        if let Some(p) = prefix {
            let ns = scope
                .resolve(Some(p))
                .ok_or_else(|| not_well_formed(format!("unbound prefix in attribute {k:?}")))?;
            if !seen.insert((ns, local)) {
                return Err(not_well_formed(format!("duplicate attribute {k:?}")));
            }
        }
    }
    Ok(())
}

/// Builds an element for a start tag in `scope`, entering its scope.
fn open_element(
    start: &BytesStart<'_>,
    text: &str,
    scope: &mut NsScope,
) -> Result<Element, FrameError> {
    new_element(read_tag(start, text)?, scope)
}

/// Builds the element for a tag read in `scope`, entering its scope.
fn new_element(tag: RawTag<'_>, scope: &mut NsScope) -> Result<Element, FrameError> {
    scope.enter_attrs(&tag.attrs)?;
    check_attr_namespaces(&tag.attrs, scope)?;
    let (prefix, local) = split_qname(tag.qname)?;
    if prefix == Some("xmlns") {
        return Err(not_well_formed("element with the xmlns prefix"));
    }
    let ns = scope
        .resolve_name(prefix)
        .ok_or_else(|| not_well_formed(format!("unbound prefix in element {:?}", tag.qname)))?
        .clone();
    Ok(Element {
        prefix: prefix.map(str::to_owned),
        name: name(local),
        ns,
        attrs: tag.attrs,
        children: Vec::new(),
    })
}

/// Appends text to the last node if it is text, else starts a text node.
fn push_text(el: &mut Element, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Node::Text(t)) = el.children.last_mut() {
        t.push_str(text);
    } else {
        el.children.push(Node::Text(text.to_owned()));
    }
}

/// The replacement text of a reference that XMPP allows: the five
/// predefined entities and character references.
fn resolve_ref(name: &[u8]) -> Result<char, FrameError> {
    Ok(match name {
        b"lt" => '<',
        b"gt" => '>',
        b"amp" => '&',
        b"quot" => '"',
        b"apos" => '\'',
        [b'#', b'x', hex @ ..] => char_from(hex, 16)?,
        [b'#', dec @ ..] => char_from(dec, 10)?,
        _ => {
            return Err(FrameError::RestrictedXml {
                what: "entity reference",
            })
        }
    })
}

fn char_from(digits: &[u8], radix: u32) -> Result<char, FrameError> {
    let bad = || not_well_formed("bad character reference");
    let s = std::str::from_utf8(digits).map_err(|_| bad())?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let n = u32::from_str_radix(s, radix).map_err(|_| bad())?;
    char::from_u32(n)
        .filter(|c| is_xml_char(*c))
        .ok_or_else(bad)
}

/// XML 1.0 `Char` production.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Parses one complete element (a top-level unit found by the framer) in
/// the namespace context `scope` (the stream header's declarations).
///
/// The slice must hold exactly one element; anything else is reported as
/// not well-formed. Comments, processing instructions and DTDs are
/// restricted XML.
pub fn parse_element(text: &str, scope: &NsScope) -> Result<Element, FrameError> {
    parse_element_in(text, &mut scope.clone())
}

/// [`parse_element`] in `scope` itself rather than a copy, for the framer,
/// which parses every stanza of a stream in the header's scope. The scope is
/// left as it was found, whether or not the element parses.
pub(crate) fn parse_element_in(text: &str, scope: &mut NsScope) -> Result<Element, FrameError> {
    let depth = scope.depth();
    let parsed = parse_in(text, scope);
    while scope.depth() > depth {
        scope.leave();
    }
    parsed
}

/// [`parse_element_in`] for a unit the framer's scanner has accepted: its tags
/// balanced and matched, its names, attribute syntax and references checked,
/// comments, processing instructions and DTDs refused, its UTF-8 and characters
/// checked. Such a unit written the plain way is read by [`read_plain`] in one
/// pass; anything else, and anything that pass is unsure of, is read by quick-xml
/// as [`parse_element_in`] reads it, so the tree and every error are quick-xml's.
pub(crate) fn parse_framed_in(text: &str, scope: &mut NsScope) -> Result<Element, FrameError> {
    let depth = scope.depth();
    let plain = read_plain(text, scope);
    while scope.depth() > depth {
        scope.leave();
    }
    match plain {
        Some(el) => Ok(el),
        None => parse_element_in(text, scope),
    }
}

/// Reads one framed element (see [`parse_framed_in`]) whose start tags carry only
/// attributes [`plain_attrs`] reads, whose text has no line end to normalise and
/// no `]]>`, with no CDATA section, its references resolved as quick-xml's
/// events are. The tree is the one [`parse_in`] builds from the same text.
/// `None` for anything else, and wherever [`parse_in`] would fail; the scope may
/// then be left with elements open.
fn read_plain(text: &str, scope: &mut NsScope) -> Option<Element> {
    let raw = text.as_bytes();
    // quick-xml turns CR and CR LF in text into LF; such a rare stanza is left to it.
    if memchr::memchr(b'\r', raw).is_some() {
        return None;
    }
    // Open elements with their qualified names, innermost last.
    let mut stack: Vec<(Element, &str)> = Vec::new();
    let mut i = 0;
    loop {
        // Here `raw[i]` is the `<` of a tag.
        if raw.get(i) != Some(&b'<') {
            return None;
        }
        let closed = match raw.get(i + 1)? {
            b'/' => {
                let end = i + 2 + raw.get(i + 2..)?.iter().position(|&b| b == b'>')?;
                let qname = text.get(i + 2..end)?.trim_end_matches([' ', '\t', '\n']);
                let (el, opened) = stack.pop()?;
                if qname != opened {
                    return None;
                }
                scope.leave();
                i = end + 1;
                el
            }
            // CDATA (comments, PIs and DTDs never reach here).
            b'!' | b'?' => return None,
            _ => {
                let name_len = raw
                    .get(i + 1..)?
                    .iter()
                    .position(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'/' | b'>'))?;
                let qname = text.get(i + 1..i + 1 + name_len)?;
                let (attrs, end) = plain_attrs_from(text, i + 1 + name_len, AttrsEnd::Tag)?;
                let el = new_element(RawTag { qname, attrs }, scope).ok()?;
                if raw.get(end) == Some(&b'>') {
                    stack.push((el, qname));
                    let (parent, _) = stack.last_mut()?;
                    i = read_text(text, end + 1, parent)?;
                    continue;
                }
                // `/>`: an empty element.
                if raw.get(end + 1) != Some(&b'>') {
                    return None;
                }
                scope.leave();
                i = end + 2;
                el
            }
        };
        match stack.last_mut() {
            Some((parent, _)) => {
                parent.push_child(closed);
                i = read_text(text, i, parent)?;
            }
            // The element is whole: it must be all of the text.
            None => return (i == raw.len()).then_some(closed),
        }
    }
}

/// Reads character data from `i` to the next `<` into `el`, as [`parse_in`] adds
/// quick-xml's text and reference events to it; returns where the `<` is. `None`
/// for a `]]>`, which is left to [`parse_in`] to refuse.
fn read_text(text: &str, mut i: usize, el: &mut Element) -> Option<usize> {
    let raw = text.as_bytes();
    loop {
        let run = text_run(raw.get(i..)?)?;
        push_text(el, text.get(i..i + run)?);
        i += run;
        match raw.get(i)? {
            b'<' => return Some(i),
            b'&' => {
                let semi = i + raw.get(i..)?.iter().position(|&b| b == b';')?;
                let c = resolve_ref(raw.get(i + 1..semi)?).ok()?;
                let mut buf = [0u8; 4];
                push_text(el, c.encode_utf8(&mut buf));
                i = semi + 1;
            }
            // `]`
            _ => {
                if raw.get(i..i + 3) == Some(b"]]>") {
                    return None;
                }
                push_text(el, "]");
                i += 1;
            }
        }
    }
}

/// Where the next `<`, `&` or `]` is in character data.
fn text_run(rest: &[u8]) -> Option<usize> {
    crate::framer::find_stop(rest, [b'<', b'&', b']'])
}

fn parse_in(text: &str, scope: &mut NsScope) -> Result<Element, FrameError> {
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.trim_markup_names_in_closing_tags = true;
    config.expand_empty_elements = false;

    // Iterative, so nesting depth costs heap, not stack; the framer bounds it.
    let mut stack: Vec<Element> = Vec::new();
    let mut done: Option<Element> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| not_well_formed(e.to_string()))?;
        if done.is_some() && !matches!(event, Event::Eof) {
            return Err(not_well_formed("content after the element"));
        }
        match event {
            Event::Start(start) => {
                let el = open_element(&start, text, scope)?;
                stack.push(el);
            }
            Event::Empty(start) => {
                let el = open_element(&start, text, scope)?;
                scope.leave();
                match stack.last_mut() {
                    Some(parent) => parent.push_child(el),
                    None => done = Some(el),
                }
            }
            Event::End(_) => {
                scope.leave();
                let el = stack
                    .pop()
                    .ok_or_else(|| not_well_formed("unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.push_child(el),
                    None => done = Some(el),
                }
            }
            Event::Text(t) => {
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| not_well_formed("text outside the element"))?;
                if memchr::memmem::find(&t, b"]]>").is_some() {
                    return Err(not_well_formed("']]>' in character data"));
                }
                let s = t
                    .xml10_content()
                    .map_err(|e| not_well_formed(e.to_string()))?;
                push_text(parent, &s);
            }
            Event::CData(t) => {
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| not_well_formed("CDATA outside the element"))?;
                let s = t
                    .xml10_content()
                    .map_err(|e| not_well_formed(e.to_string()))?;
                push_text(parent, &s);
            }
            Event::GeneralRef(r) => {
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| not_well_formed("reference outside the element"))?;
                let c = resolve_ref(&r)?;
                let mut buf = [0u8; 4];
                push_text(parent, c.encode_utf8(&mut buf));
            }
            Event::Comment(_) => return Err(FrameError::RestrictedXml { what: "comment" }),
            Event::PI(_) | Event::Decl(_) => {
                return Err(FrameError::RestrictedXml {
                    what: "processing instruction",
                })
            }
            Event::DocType(_) => return Err(FrameError::RestrictedXml { what: "DTD" }),
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(not_well_formed("unclosed element"));
    }
    done.ok_or_else(|| not_well_formed("no element"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn client_scope() -> NsScope {
        let mut s = NsScope::new();
        s.declare(vec![
            (None, "jabber:client".to_owned()),
            (
                Some("stream".to_owned()),
                "http://etherx.jabber.org/streams".to_owned(),
            ),
        ]);
        s
    }

    fn parse(s: &str) -> Result<Element, FrameError> {
        parse_element(s, &client_scope())
    }

    /// Attribute text: whitespace, names, quotes, references, line ends.
    const ATTR_PIECES: &[&str] = &[
        " ", "  ", "\t", "\n", "\r\n", "x", "y", "b:c", "xmlns", "xml:lang", "=", "'", "\"", "v",
        "a b", "&amp;", "&#x41;", "&", ";", "\u{E9}", ">", "/", "<",
    ];

    /// An attribute written out, sometimes with a stray piece in it.
    fn attr_text() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(&["", " ", "\n", " \t"][..]);
        (
            prop::sample::select(&[" ", "  ", "\n", "\t", ""][..]),
            prop::sample::select(&["x", "y", "b:c", "xmlns", "xml:lang", "\u{E9}", ""][..]),
            ws.clone(),
            ws,
            prop::sample::select(&["'", "\""][..]),
            prop::collection::vec(prop::sample::select(ATTR_PIECES), 0..4),
            prop::option::of(prop::sample::select(ATTR_PIECES)),
        )
            .prop_map(|(lead, key, before, after, q, value, stray)| {
                let value = value.concat();
                let stray = stray.unwrap_or_default();
                format!("{lead}{key}{before}={after}{q}{value}{q}{stray}")
            })
    }

    /// A slice of the text is taken as it lies there; any other is checked, and a
    /// slice that cuts a character is never a `str`.
    #[test]
    fn a_slice_is_text_only_where_its_bytes_are_valid() {
        let text = "<a b='\u{E9}t\u{E9}'/>";
        let bytes = text.as_bytes();
        let value = bytes.get(6..11).unwrap_or_default();
        assert_eq!(str_within(text, value), Some("\u{E9}t\u{E9}"));
        assert!(std::ptr::eq(
            str_within(text, value).unwrap_or_default().as_ptr(),
            value.as_ptr()
        ));
        let cut = bytes.get(6..7).unwrap_or_default();
        assert_eq!(str_within(text, cut), None);
        let elsewhere = b"t\xC3\xA9".to_vec();
        assert_eq!(str_within(text, &elsewhere), Some("t\u{E9}"));
        assert_eq!(str_within(text, b"\xFF"), None);
        assert_eq!(str_within(text, &[]), Some(""));
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whenever the fast reading of attributes answers, its answer is
        /// quick-xml's.
        #[test]
        fn plain_attributes_read_as_quick_xml_reads_them(
            attrs in prop::collection::vec(attr_text(), 0..6),
            trailing in prop::sample::select(&["", " ", "\n", "/"][..]),
        ) {
            let tag = format!("<a{}{trailing}>", attrs.concat());
            let mut reader = Reader::from_str(&tag);
            if let Ok(Event::Start(start) | Event::Empty(start)) = reader.read_event() {
                let raw = str_within(&tag, start.attributes_raw());
                if let Some(fast) = raw.and_then(plain_attrs) {
                    prop_assert_eq!(Ok(fast), checked_attrs(&start), "{}", tag);
                }
            }
        }
    }

    /// Reads a framed unit both ways: the one-pass reading (when it takes the unit)
    /// and quick-xml must give the same tree or the same error, and leave the
    /// stream's scope as it was. Returns whether the one-pass reading took it.
    fn read_both_ways(text: &str) -> bool {
        let plain = read_plain(text, &mut client_scope()).is_some();
        let mut scope = client_scope();
        let framed = parse_framed_in(text, &mut scope);
        assert_eq!(framed, parse(text), "{text}");
        assert_eq!(scope.depth(), 1, "{text}");
        assert_eq!(scope.undo.len(), 2, "{text}");
        assert_eq!(scope.resolve(None), Some("jabber:client"), "{text}");
        plain
    }

    /// Units the framer's scanner accepts, written the plain way: the one-pass
    /// reading takes them and builds quick-xml's tree. Its runs of text stop at
    /// `<`, `&` and `]` whether they lie in the first sixteen bytes or past them;
    /// `>`, quotes and non-ASCII text are passed over.
    #[test]
    fn plain_units_are_read_in_one_pass_as_quick_xml_reads_them() {
        let long = "0123456789abcdef";
        for text in [
            "<presence/>",
            "<presence />",
            "<message to='a@b' id=\"m1\"><body>hi</body></message>",
            "<a><b/><c x='1' /></a >",
            "<a\tb='1'\n></a\t\n>",
            "<a b='x>y' c=\"it's\" d='say \"hi\"'/>",
            "<a>\n\t text \"quoted\" 'single' > more\n</a>",
            "<a>&amp;&lt;&gt;&quot;&apos;&#x41;&#66;&#x1F600;</a>",
            "<a>x ] y ]] z ]>]</a>",
            "<a>\u{E9}t\u{E9} \u{4E2D}\u{1F600}<b \u{E9}='\u{E9}'>\u{E9}</b>\u{E9}</a>",
            "<a xmlns='urn:x' xmlns:p='urn:p'><p:b p:c='1'/><d/></a>",
            "<a xml:lang='en'><b><c><d><e><f/></e></d></c></b></a>",
            "<a></a>",
            "<a> </a>",
        ] {
            assert!(read_both_ways(text), "{text}");
        }
        for (at, stop) in [(15, "<b/>"), (16, "<b/>"), (17, "<b/>"), (40, "<b/>")] {
            for stop in [stop, "&amp;", "]", "]]&gt;"] {
                let run = long.repeat(3).get(..at).unwrap_or_default().to_owned();
                let text = format!("<a>{run}{stop}{run}</a>");
                assert!(read_both_ways(&text), "{text}");
            }
        }
    }

    /// What the one-pass reading leaves to quick-xml, which then reads it or
    /// reports what is wrong with it exactly as it does for any other text.
    #[test]
    fn units_not_written_the_plain_way_are_left_to_quick_xml() {
        for text in [
            // Line ends quick-xml normalises, in text or anywhere else.
            "<a>x\r\ny\rz</a>",
            "<a b='1'\r\n/>",
            // `]]>` in text, at the start of a run and past sixteen bytes.
            "<a>]]></a>",
            "<a>x]]]>y</a>",
            "<a>0123456789abcdefgh]]></a>",
            // CDATA.
            "<a><![CDATA[<x>&amp;]]></a>",
            // Attribute values that normalisation changes.
            "<a b='&amp;'/>",
            "<a b='x\ty'/>",
            "<a b='x\ny'/>",
            // Errors quick-xml and the namespace checks report.
            "<a b='1' b='2'/>",
            "<p:a/>",
            "<a p:b='1'/>",
            "<xmlns:a/>",
            "<a xmlns:p=''/>",
            "<a xmlns:p='urn:p' xmlns:q='urn:p' p:x='1' q:x='2'/>",
            // Not one whole element: the framer never hands these over.
            "<a>",
            "<a>text",
            "<a/><b/>",
            "<a></b>",
            "<a/> ",
        ] {
            assert!(!read_both_ways(text), "{text}");
        }
    }

    #[test]
    fn a_qualified_name_has_at_most_one_colon_and_no_empty_part() {
        assert_eq!(split_qname("a"), Ok((None, "a")));
        assert_eq!(split_qname("p:a"), Ok((Some("p"), "a")));
        assert_eq!(
            split_qname("\u{E9}:\u{4E2D}"),
            Ok((Some("\u{E9}"), "\u{4E2D}"))
        );
        for bad in ["", ":", ":a", "p:", "p:a:b", "p::a"] {
            assert!(split_qname(bad).is_err(), "{bad}");
        }
    }

    /// The framer parses every stanza in the stream's own scope: declarations
    /// inside one must not outlive it, whether it parses or not.
    #[test]
    fn an_empty_scope_has_no_default_namespace() {
        assert_eq!(NsScope::default().resolve(None), Some(""));
        assert_eq!(NsScope::new().resolve(None), Some(""));
    }

    #[test]
    fn parsing_in_place_leaves_the_scope_as_it_was() {
        let mut scope = client_scope();
        for text in [
            "<a xmlns:p='urn:p'><p:b xmlns='urn:d' xmlns:stream='urn:s'/></a>",
            "<a xmlns:p='urn:p'><p:b xmlns='urn:d' xmlns:stream='urn:s'>",
            "<a xmlns:p='urn:p'><p:b xmlns='urn:d'></a>",
            "<a xmlns='urn:d' xmlns:q='urn:q'><q:b/>&xxe;</a>",
        ] {
            let _ = parse_element_in(text, &mut scope);
            assert_eq!(scope.resolve(None), Some("jabber:client"), "{text}");
            assert_eq!(scope.resolve(Some("p")), None, "{text}");
            assert_eq!(scope.resolve(Some("q")), None, "{text}");
            assert_eq!(
                scope.resolve(Some("stream")),
                Some("http://etherx.jabber.org/streams"),
                "{text}"
            );
            assert_eq!(scope.prefixes.len(), 2, "{text}");
            assert_eq!(scope.depth(), 1, "{text}");
            assert_eq!(scope.undo.len(), 2, "{text}");
        }
    }

    #[test]
    fn resolves_inherited_and_declared_namespaces() -> Result<(), FrameError> {
        let el = parse(
            "<message to='a@b'><body>hi</body><x:y xmlns:x='urn:x'><z/></x:y>\
             <received xmlns='urn:xmpp:receipts' id='1'/></message>",
        )?;
        assert_eq!(el.ns, "jabber:client");
        assert_eq!(
            el.child("body", "jabber:client").map(Element::text),
            Some("hi".into())
        );
        let y = el.child("y", "urn:x").ok_or(not_well_formed("no y"))?;
        assert_eq!(y.prefix.as_deref(), Some("x"));
        // An unprefixed child of a prefixed element keeps the outer default.
        assert!(y.child("z", "jabber:client").is_some());
        let r = el.child("received", "urn:xmpp:receipts");
        assert_eq!(r.and_then(|r| r.attr("id")), Some("1"));
        Ok(())
    }

    #[test]
    fn stream_prefix_from_header_scope() -> Result<(), FrameError> {
        let el = parse(
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
        )?;
        assert!(el.is("features", "http://etherx.jabber.org/streams"));
        assert!(el
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_some());
        Ok(())
    }

    #[test]
    fn unbound_prefix_is_not_well_formed() {
        assert!(matches!(
            parse("<p:a/>"),
            Err(FrameError::NotWellFormed { .. })
        ));
        assert!(matches!(
            parse("<a p:x='1'/>"),
            Err(FrameError::NotWellFormed { .. })
        ));
    }

    #[test]
    fn duplicate_attributes_are_not_well_formed() {
        assert!(matches!(
            parse("<a x='1' x='2'/>"),
            Err(FrameError::NotWellFormed { .. })
        ));
        // Same expanded name through two prefixes.
        assert!(matches!(
            parse("<a xmlns:p='urn:n' xmlns:q='urn:n' p:x='1' q:x='2'/>"),
            Err(FrameError::NotWellFormed { .. })
        ));
    }

    #[test]
    fn references_resolve_and_text_merges() -> Result<(), FrameError> {
        let el = parse("<a>x &lt;&#65;&#x42;<![CDATA[<c>]]>&amp;y</a>")?;
        assert_eq!(el.children, vec![Node::Text("x <AB<c>&y".into())]);
        let el = parse("<a v='1&#10;2&#9;3 &apos;&quot;'/>")?;
        assert_eq!(el.attr("v"), Some("1\n2\t3 '\""));
        Ok(())
    }

    #[test]
    fn attribute_values_are_normalised() -> Result<(), FrameError> {
        let el = parse("<a v='1\n2\t3'/>")?;
        assert_eq!(el.attr("v"), Some("1 2 3"));
        Ok(())
    }

    #[test]
    fn text_line_ends_are_normalised() -> Result<(), FrameError> {
        let el = parse("<a>1\r\n2\r3</a>")?;
        assert_eq!(el.text(), "1\n2\n3");
        Ok(())
    }

    #[test]
    fn restricted_references_and_constructs() {
        assert_eq!(
            parse("<a>&foo;</a>"),
            Err(FrameError::RestrictedXml {
                what: "entity reference"
            })
        );
        assert_eq!(
            parse("<a><!-- c --></a>"),
            Err(FrameError::RestrictedXml { what: "comment" })
        );
        assert!(matches!(
            parse("<a>&#0;</a>"),
            Err(FrameError::NotWellFormed { .. })
        ));
        assert!(matches!(
            parse("<a>]]></a>"),
            Err(FrameError::NotWellFormed { .. })
        ));
        assert!(matches!(
            parse("<a><b></a></b>"),
            Err(FrameError::NotWellFormed { .. })
        ));
    }

    #[test]
    fn reserved_namespace_declarations_are_rejected() {
        for bad in [
            "<a xmlns:p=''/>",
            "<a xmlns:xml='urn:x'/>",
            "<a xmlns:x='http://www.w3.org/XML/1998/namespace'/>",
            "<a xmlns:xmlns='urn:x'/>",
            "<a xmlns='http://www.w3.org/2000/xmlns/'/>",
        ] {
            assert!(
                matches!(parse(bad), Err(FrameError::NotWellFormed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn write_escapes_hostile_content() -> Result<(), FrameError> {
        let el = Element::new("message", "jabber:client")
            .with_attr("id", "a'b\"c<d>&e\n")
            .with_child(Element::new("body", "jabber:client").with_text("<script>]]>&\r"));
        let bytes = el.to_bytes();
        let s = String::from_utf8(bytes).map_err(|e| not_well_formed(e.to_string()))?;
        assert_eq!(
            s,
            "<message id='a&apos;b&quot;c&lt;d&gt;&amp;e&#10;'>\
             <body>&lt;script&gt;]]&gt;&amp;&#13;</body></message>"
        );
        assert_eq!(parse(&s)?, el);
        Ok(())
    }

    #[test]
    fn builder_children_declare_their_namespace() -> Result<(), FrameError> {
        let el = Element::new("message", "jabber:client")
            .with_child(Element::new("request", "urn:xmpp:receipts"))
            .with_child(Element::new("body", "jabber:client").with_text("x"));
        let s = String::from_utf8(el.to_bytes()).map_err(|e| not_well_formed(e.to_string()))?;
        assert_eq!(
            s,
            "<message><request xmlns='urn:xmpp:receipts'/><body>x</body></message>"
        );
        let back = parse(&s)?;
        assert_eq!(
            back.child("request", "urn:xmpp:receipts").map(|r| &*r.ns),
            Some("urn:xmpp:receipts")
        );
        let mut sm = Vec::new();
        Element::new("a", "urn:xmpp:sm:3")
            .with_attr("h", "3")
            .write_in("jabber:client", &mut sm);
        assert_eq!(sm, b"<a h='3' xmlns='urn:xmpp:sm:3'/>");
        Ok(())
    }

    #[test]
    fn parsed_trees_round_trip() -> Result<(), FrameError> {
        let src = "<message xmlns:x='urn:x' type='chat'><x:y x:a='1'>t</x:y>\
                   <body xml:lang='en'>a &amp; b</body><c xmlns='urn:c'><d/></c></message>";
        let el = parse(src)?;
        let out = String::from_utf8(el.to_bytes()).map_err(|e| not_well_formed(e.to_string()))?;
        assert_eq!(parse(&out)?, el);
        Ok(())
    }

    #[test]
    fn editing_helpers() {
        let mut el = Element::new("m", "n")
            .with_attr("a", "1")
            .with_attr("b", "2")
            .with_text("t")
            .with_child(Element::new("c", "n"))
            .with_child(Element::new("d", "n"));
        el.set_attr("a", "3");
        assert_eq!(el.attrs[0], ("a".into(), "3".into()));
        assert_eq!(el.remove_attr("b"), Some("2".into()));
        assert_eq!(el.attr("b"), None);
        el.retain_children(|c| c.name != "c");
        assert_eq!(
            el.children().map(|c| &*c.name).collect::<Vec<_>>(),
            vec!["d"]
        );
        assert_eq!(el.text(), "t");
        el.set_text("u");
        assert_eq!(el.text(), "u");
        if let Some(d) = el.child_mut("d", "n") {
            d.set_text("inner");
        }
        assert_eq!(el.child("d", "n").map(Element::text), Some("inner".into()));
    }
}
