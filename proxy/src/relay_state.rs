//! The relay's protocol decisions, without I/O: who the session has proven to be, what a
//! client may send before that, which `from` it may write, and which wrappers (carbons,
//! archive query results) the server vouches for. The relay feeds it each stanza and acts
//! on the answer; tests drive it with elements alone.
//!
//! ```text
//!   ExpectAuth ──upstream <success/>──▶ ExpectBind ──upstream bind result (our request's id)──▶ Bound
//!       │                                  └──────upstream <resumed previd> (our request)────────┘
//!       └──SASL2 <success> with <bound/> (Bind2) or <resumed/> answering our <authenticate>──▶ Bound
//!   client stanza before Bound ─▶ not-authorized (the bind request itself excepted)
//!   client stanza in Bound      ─▶ from must be the session's JID, else invalid-from
//!   upstream message            ─▶ Direct | a believed carbon / archive result | ForgedWrapper
//! ```
//!
//! Identity is what the upstream answered to *this session's own* requests, never what
//! either peer wrote elsewhere: a bind result that answers no bind request of ours (another
//! user can route an iq result to any full JID) changes nothing.

use std::collections::VecDeque;

use crate::stanza::{ForwardKind, StanzaKind, StanzaView};
use crate::stream::{NS_BIND, NS_SASL, NS_SM};

/// XEP-0388 (SASL2) and XEP-0386 (Bind2).
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
use crate::xml::Element;

pub const NS_MAM: &str = crate::stanza::NS_MAM;

/// A session's proven account: the full JID the upstream bound or resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub jid: String,
}

impl Account {
    pub fn bare(&self) -> &str {
        bare(&self.jid)
    }
}

/// Waiting for SASL to succeed: only stream-level elements pass.
#[derive(Debug, Default)]
pub struct ExpectAuth {
    /// The client's SASL2 `<authenticate/>` in flight.
    sasl2: Option<Sasl2Request>,
}

/// What a client's SASL2 `<authenticate/>` asks for besides authentication.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sasl2Request {
    /// Bind2: bind a resource in the same round trip.
    pub bind: bool,
    /// Bind2's request names a tag, which the server makes part of the resource.
    pub tag: bool,
    /// XEP-0198 `<resume previd>` inline (its `h` is translated by the relay).
    pub resume: Option<String>,
}

/// A SASL2 success answering this session's `<authenticate/>`: what it established.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sasl2Success {
    /// Bind2 bound a resource: the session's account (the authorization identifier).
    pub bound: Option<Account>,
    /// The resource was bound from a tag the client named: the client's words, judged
    /// before the success is delivered (until then, its stanzas are refused).
    pub chose: bool,
    /// Stream management enabled inline (in Bind2's answer): both legs start counting.
    pub sm_enabled: bool,
    /// The session `previd` was resumed inline; the relay looks its account up.
    pub resumed: Option<String>,
}

/// Authenticated, not yet bound: the client's bind (or resume) request is the only
/// stanza that passes; the upstream's answer to it proves the JID.
#[derive(Debug, Default)]
pub struct ExpectBind {
    bind_request: Option<String>,
    /// The bind request names a resource: the one bound is the client's choice.
    chose: bool,
    resume_request: Option<String>,
}

#[derive(Debug)]
pub struct Bound {
    account: Account,
    /// The client named the resource it bound (the server did not pick it).
    chose: bool,
    /// The relay let the bind result through: until then, as before it came, the
    /// client's stanzas are refused (a resource policy refuses ends the session).
    confirmed: bool,
}

#[derive(Debug)]
pub enum Identity {
    ExpectAuth(ExpectAuth),
    ExpectBind(ExpectBind),
    Bound(Bound),
}

/// What to do with a stanza (message, presence, iq) from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStanza {
    /// Inspect it as sent by this account, then act on the outcome.
    Inspect(Account),
    /// Forward it unrecorded: the bind request, or an in-band registration request
    /// (XEP-0077) before authentication, the one exception RFC 6120 makes; neither
    /// carries a message, and registration carries a password that must not be kept.
    PassUnrecorded,
    /// Before authentication and bind a server would refuse it too (RFC 6120 §6.4.6,
    /// §7.1): end the stream with `<not-authorized/>`; nothing is forwarded or archived.
    NotAuthorized,
    /// The client wrote a `from` that is not its session's JID (RFC 6120 §4.9.3.9,
    /// §8.1.2.1): archive the attempt under the proven account, forward nothing, and end
    /// the stream with `<invalid-from/>`.
    InvalidFrom { account: Account, claimed: String },
}

/// What a server-to-client message is, as far as the server vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The stanza itself; any wrapper inside it is believed.
    Direct,
    /// A carbon from the user's own account.
    CarbonSent,
    CarbonReceived,
    /// An archive query result answering a query this session sent.
    Mam,
    /// A carbon or archive-result wrapper that nobody vouches for (from another
    /// address, or answering no query of ours): an ordinary message from its real
    /// sender, whose wrapped content is scanned and kept as its own.
    ForgedWrapper,
}

/// What the relay must do about a stanza from the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEvent {
    /// Nothing special: relay it.
    Relay,
    /// SASL `<success/>`: both streams restart (RFC 6120 §6.4.6).
    AuthSucceeded,
    /// The answer to our bind request: this is the session's account from now on.
    Bound(Account),
    /// `<resumed/>` answering our `<resume previd>`: the caller looks the detached
    /// session's account up by `previd` and calls [`RelayState::resumed`].
    Resumed { previd: String },
    /// A bind result that answers no request of this session: ignored (and logged).
    UnsolicitedBind,
    /// SASL2 `<success/>` answering this session's `<authenticate/>`: no stream restart
    /// (XEP-0388); what it bound, enabled or resumed inline.
    Sasl2Succeeded(Sasl2Success),
}

/// Pending XEP-0313 queries of this session: `queryid` → the archive queried.
#[derive(Debug, Default)]
struct MamQueries {
    /// (iq id, query id, archive JID as bare, lowercased), oldest first.
    pending: VecDeque<(String, String, String)>,
}

/// A client can have this many archive queries outstanding; past it the oldest is
/// forgotten (its late results are then not believed: recorded and flagged, not lost).
const MAX_MAM_QUERIES: usize = 32;

impl MamQueries {
    fn add(&mut self, iq_id: String, query_id: String, archive: String) {
        if self.pending.len() >= MAX_MAM_QUERIES {
            self.pending.pop_front();
        }
        self.pending.push_back((iq_id, query_id, archive));
    }

    fn answers(&self, query_id: &str, from_bare: &str) -> bool {
        self.pending
            .iter()
            .any(|(_, q, archive)| q == query_id && archive == from_bare)
    }

    fn finished(&mut self, iq_id: &str) {
        self.pending.retain(|(id, _, _)| id != iq_id);
    }
}

/// Which leg's stream-management numbering an `h` value is in: the leg whose stanzas the
/// acknowledging peer received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// Stanzas written toward the client (the client acknowledges them).
    ToClient,
    /// Stanzas written toward the server (the server acknowledges them).
    ToUpstream,
}

/// What a XEP-0198 element asks of the relay, which owns the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmStep {
    /// Not a stream management element.
    NotSm,
    /// `<enable/>` from the client or `<enabled/>` from the server: forward it, then the
    /// leg that carried it starts counting, under the same lock as the write.
    StartCounting,
    /// `<resume previd h>`: its `h` is in the detached session's numbering, so adopt that
    /// session's counters first, then translate `h` (to-client numbering).
    Resume { previd: String, h: Option<u64> },
    /// An acknowledgement (`<a/>`, `<resumed/>`): rewrite `h` into the sender's numbering.
    Translate { h: u64, numbering: Numbering },
    /// Forward unchanged (`<r/>`, `<failed/>`, …).
    Forward,
}

/// The session's stream management as the server granted it.
#[derive(Debug, Default)]
struct SmSession {
    /// The client asked to enable it (once: a second request must not restart the
    /// upstream leg's count, which the server keeps).
    enable_requested: bool,
    /// The server enabled it.
    enabled: bool,
    /// The id from `<enabled/>` or `<resumed previd>`: the key of the detached session.
    id: Option<String>,
    /// The server allows resumption: a dropped client must leave the server's stream open.
    resumable: bool,
}

#[derive(Debug)]
pub struct RelayState {
    identity: Identity,
    mam: MamQueries,
    sm: SmSession,
}

impl Default for RelayState {
    fn default() -> Self {
        RelayState {
            identity: Identity::ExpectAuth(ExpectAuth::default()),
            mam: MamQueries::default(),
            sm: SmSession::default(),
        }
    }
}

impl RelayState {
    /// A XEP-0198 element from the client (`from_client`) or the server.
    pub fn stream_management(&mut self, el: &Element, from_client: bool) -> SmStep {
        if el.ns != NS_SM {
            return SmStep::NotSm;
        }
        let h = el.attr("h").and_then(crate::sm::parse_h);
        match (&*el.name, from_client, h) {
            ("enable", true, _) if !self.sm.enable_requested => {
                self.sm.enable_requested = true;
                SmStep::StartCounting
            }
            ("enabled", false, _) if !self.sm.enabled => {
                self.sm.enabled = true;
                self.sm.id = el.attr("id").map(str::to_owned);
                self.sm.resumable = matches!(el.attr("resume"), Some("true" | "1"));
                SmStep::StartCounting
            }
            // Only a session not yet bound may resume another (its counters are
            // adopted); a bound one's request goes on for the server to refuse.
            ("resume", true, h) => match (el.attr("previd"), &self.identity) {
                (Some(previd), Identity::ExpectBind(_)) => SmStep::Resume {
                    previd: previd.to_owned(),
                    h,
                },
                _ => SmStep::Forward,
            },
            ("resumed", false, h) => {
                if let Some(previd) = el.attr("previd") {
                    self.sm.id = Some(previd.to_owned());
                    self.sm.resumable = true;
                }
                match h {
                    Some(h) => SmStep::Translate {
                        h,
                        numbering: Numbering::ToUpstream,
                    },
                    None => SmStep::Forward,
                }
            }
            ("a", true, Some(h)) => SmStep::Translate {
                h,
                numbering: Numbering::ToClient,
            },
            ("a", false, Some(h)) => SmStep::Translate {
                h,
                numbering: Numbering::ToUpstream,
            },
            _ => SmStep::Forward,
        }
    }

    /// The id under which a detached session's counters and account are kept.
    pub fn sm_id(&self) -> Option<&str> {
        self.sm.id.as_deref()
    }

    pub fn sm_resumable(&self) -> bool {
        self.sm.resumable
    }

    pub fn account(&self) -> Option<&Account> {
        match &self.identity {
            Identity::Bound(b) => Some(&b.account),
            _ => None,
        }
    }

    /// Whether the client named the resource it bound (RFC 6120 resource binding; not
    /// one the server picked, nor Bind2's).
    pub fn chose_resource(&self) -> bool {
        matches!(&self.identity, Identity::Bound(b) if b.chose)
    }

    /// The relay let the bind result through to the client: its stanzas pass from now.
    pub fn confirm_bound(&mut self) {
        if let Identity::Bound(b) = &mut self.identity {
            b.confirmed = true;
        }
    }

    pub fn authenticated(&self) -> bool {
        !matches!(self.identity, Identity::ExpectAuth(_))
    }

    /// A stream-level element from the client: `<resume previd>` and SASL2's
    /// `<authenticate/>` matter here.
    pub fn client_nonza(&mut self, el: &Element) {
        if el.ns == NS_SASL2 && el.name == "authenticate" {
            if let Identity::ExpectAuth(a) = &mut self.identity {
                let bind = el.child("bind", NS_BIND2);
                a.sasl2 = Some(Sasl2Request {
                    bind: bind.is_some(),
                    tag: bind
                        .and_then(|b| b.child("tag", NS_BIND2))
                        .is_some_and(|t| !t.text().trim().is_empty()),
                    resume: el
                        .child("resume", NS_SM)
                        .and_then(|r| r.attr("previd"))
                        .map(str::to_owned),
                });
            }
            return;
        }
        if el.ns == NS_SM && el.name == "resume" {
            if let (Identity::ExpectBind(e), Some(previd)) = (&mut self.identity, el.attr("previd"))
            {
                e.resume_request = Some(previd.to_owned());
            }
        }
    }

    /// The proxy answered the client's `<resume/>` with `<failed/>` itself.
    pub fn resume_refused(&mut self) {
        if let Identity::ExpectBind(e) = &mut self.identity {
            e.resume_request = None;
        }
    }

    /// A stanza from the client.
    pub fn client_stanza(&mut self, el: &Element, view: &StanzaView) -> ClientStanza {
        match &mut self.identity {
            Identity::ExpectAuth(_) if is_registration(el, view) => ClientStanza::PassUnrecorded,
            Identity::ExpectAuth(_) => ClientStanza::NotAuthorized,
            Identity::ExpectBind(e) => {
                // Addressed to the server (no `to`, or a domain) and holding the bind
                // request alone, as RFC 6120 §7.6 has it: nothing else rides along
                // unrecorded, whatever the server would do with it.
                let to_server = view
                    .to
                    .as_deref()
                    .is_none_or(|to| !to.contains('@') && !to.contains('/'));
                let bind_request = view.kind == StanzaKind::Iq
                    && view.stanza_type.as_deref() == Some("set")
                    && to_server
                    && el.children().count() == 1
                    && el.child("bind", NS_BIND).is_some();
                match (bind_request, &view.id) {
                    (true, Some(id)) => {
                        e.bind_request = Some(id.clone());
                        // Any element named so, in any namespace: the resource bound
                        // is judged, whichever the server read; and once any request
                        // named one, whichever request the server answers.
                        e.chose |= el.child("bind", NS_BIND).is_some_and(|b| {
                            b.children()
                                .any(|c| c.name == "resource" && !c.text().trim().is_empty())
                        });
                        ClientStanza::PassUnrecorded
                    }
                    _ => ClientStanza::NotAuthorized,
                }
            }
            // The bind result is not through yet: the client has no resource to send from.
            Identity::Bound(b) if !b.confirmed => ClientStanza::NotAuthorized,
            Identity::Bound(b) => {
                let account = b.account.clone();
                if let Some(claimed) = view.from.as_deref() {
                    if !same_sender(claimed, &account.jid) {
                        return ClientStanza::InvalidFrom {
                            account,
                            claimed: claimed.to_owned(),
                        };
                    }
                }
                self.note_mam_query(el, view, &account);
                ClientStanza::Inspect(account)
            }
        }
    }

    fn note_mam_query(&mut self, el: &Element, view: &StanzaView, account: &Account) {
        if view.kind != StanzaKind::Iq || view.stanza_type.as_deref() != Some("set") {
            return;
        }
        let (Some(query), Some(iq_id)) = (el.child("query", NS_MAM), &view.id) else {
            return;
        };
        let Some(query_id) = query.attr("queryid") else {
            return;
        };
        // A query without `to` asks the user's own archive (XEP-0313 §4).
        let archive = view.to.as_deref().map_or(account.bare(), bare);
        self.mam
            .add(iq_id.clone(), query_id.to_owned(), normalize(archive));
    }

    /// A top-level element from the upstream, before it is relayed.
    pub fn upstream_element(&mut self, el: &Element) -> UpstreamEvent {
        if el.ns == NS_SASL2 {
            let Identity::ExpectAuth(a) = &mut self.identity else {
                return UpstreamEvent::Relay;
            };
            return match &*el.name {
                "success" => match a.sasl2.take() {
                    Some(request) => UpstreamEvent::Sasl2Succeeded(self.sasl2_success(el, request)),
                    // A success answering no authenticate of ours proves nothing.
                    None => UpstreamEvent::Relay,
                },
                "failure" => {
                    a.sasl2 = None;
                    UpstreamEvent::Relay
                }
                _ => UpstreamEvent::Relay,
            };
        }
        if el.ns == NS_SASL && el.name == "success" {
            if let Identity::ExpectAuth(_) = self.identity {
                self.identity = Identity::ExpectBind(ExpectBind::default());
            }
            return UpstreamEvent::AuthSucceeded;
        }
        if el.ns == NS_SM {
            if let Identity::ExpectBind(e) = &mut self.identity {
                match (&*el.name, el.attr("previd")) {
                    ("resumed", Some(previd)) if e.resume_request.as_deref() == Some(previd) => {
                        return UpstreamEvent::Resumed {
                            previd: previd.to_owned(),
                        };
                    }
                    ("failed", _) => e.resume_request = None,
                    _ => {}
                }
            }
            return UpstreamEvent::Relay;
        }
        if el.name != "iq" {
            return UpstreamEvent::Relay;
        }
        let (id, kind) = (el.attr("id"), el.attr("type"));
        if let Some(id) = id {
            if matches!(kind, Some("result" | "error")) {
                self.mam.finished(id);
            }
        }
        let bind_jid = el
            .child("bind", NS_BIND)
            .and_then(|b| b.children().find(|c| c.name == "jid"))
            .map(|j| j.text().trim().to_owned())
            .filter(|j| !j.is_empty());
        match &mut self.identity {
            Identity::ExpectBind(e) if id.is_some() && e.bind_request.as_deref() == id => {
                match (kind, bind_jid) {
                    (Some("result"), Some(jid)) => {
                        let account = Account { jid };
                        self.identity = Identity::Bound(Bound {
                            account: account.clone(),
                            chose: e.chose,
                            confirmed: false,
                        });
                        UpstreamEvent::Bound(account)
                    }
                    _ => {
                        e.bind_request = None;
                        UpstreamEvent::Relay
                    }
                }
            }
            _ if bind_jid.is_some() && kind == Some("result") => UpstreamEvent::UnsolicitedBind,
            _ => UpstreamEvent::Relay,
        }
    }

    /// The upstream's SASL2 success for `request`: the authorization identifier is the
    /// session's account when Bind2 bound a resource; a resumption names its session;
    /// otherwise the client binds next as after RFC 6120 SASL.
    fn sasl2_success(&mut self, el: &Element, request: Sasl2Request) -> Sasl2Success {
        let authz = el
            .child("authorization-identifier", NS_SASL2)
            .map(|a| a.text().trim().to_owned())
            .filter(|j| !j.is_empty());
        let resumed = el
            .child("resumed", NS_SM)
            .and_then(|r| r.attr("previd"))
            .filter(|p| request.resume.as_deref() == Some(*p))
            .map(str::to_owned);
        if let Some(previd) = resumed {
            self.sm.id = Some(previd.clone());
            self.sm.resumable = true;
            self.identity = Identity::ExpectBind(ExpectBind {
                resume_request: Some(previd.clone()),
                ..ExpectBind::default()
            });
            return Sasl2Success {
                resumed: Some(previd),
                ..Sasl2Success::default()
            };
        }
        let bound = el.child("bound", NS_BIND2);
        match (request.bind, bound, authz) {
            // A full JID: the resource Bind2 bound.
            (true, Some(bound), Some(jid)) if split(&jid).1.is_some() => {
                let enabled = bound.child("enabled", NS_SM);
                if let Some(e) = enabled {
                    self.sm.id = e.attr("id").map(str::to_owned);
                    self.sm.resumable = matches!(e.attr("resume"), Some("true" | "1"));
                }
                let account = Account { jid };
                // A resource built from the client's tag is judged before the client has
                // the success, as an RFC 6120 bind result is; one the server picked is
                // its own.
                self.identity = Identity::Bound(Bound {
                    account: account.clone(),
                    chose: request.tag,
                    confirmed: !request.tag,
                });
                Sasl2Success {
                    bound: Some(account),
                    chose: request.tag,
                    sm_enabled: enabled.is_some(),
                    resumed: None,
                }
            }
            _ => {
                self.identity = Identity::ExpectBind(ExpectBind::default());
                Sasl2Success::default()
            }
        }
    }

    /// The upstream resumed the session `previd` named; `account` is what that session
    /// had proven (kept with its stream management counters). Without it (the detached
    /// session was never bound through this proxy) the session stays unbound.
    pub fn resumed(&mut self, account: Option<Account>) -> Option<Account> {
        let account = account?;
        self.identity = Identity::Bound(Bound {
            account: account.clone(),
            chose: false,
            confirmed: true,
        });
        Some(account)
    }

    /// How far the server vouches for a message it sends this session.
    pub fn upstream_copy(&self, view: &StanzaView) -> Copy {
        let Some(fwd) = &view.forwarded else {
            return Copy::Direct;
        };
        let Some(account) = self.account() else {
            return Copy::ForgedWrapper;
        };
        // A missing `from` is the user's own account (RFC 6120 §8.1.2.1). Carbons and
        // archive results come from a bare JID; one with a resource is some client's
        // message (another resource of the same account could forge the inner sender).
        let from = view.from.as_deref().unwrap_or(account.bare());
        if split(from).1.is_some() {
            return Copy::ForgedWrapper;
        }
        let from = normalize(from);
        let own = from == normalize(account.bare());
        match &fwd.kind {
            ForwardKind::CarbonSent if own => Copy::CarbonSent,
            ForwardKind::CarbonReceived if own => Copy::CarbonReceived,
            ForwardKind::MamResult {
                query_id: Some(q), ..
            } if self.mam.answers(q, &from) => Copy::Mam,
            _ => Copy::ForgedWrapper,
        }
    }
}

fn is_registration(el: &Element, view: &StanzaView) -> bool {
    view.kind == StanzaKind::Iq
        && matches!(view.stanza_type.as_deref(), Some("get" | "set"))
        && el.child("query", NS_REGISTER).is_some()
        && el.children().count() == 1
}

const NS_REGISTER: &str = "jabber:iq:register";

/// A client may write its full JID or its bare JID as `from`; node and domain compare
/// case-insensitively (their stringprep/PRECIS forms are lowercase), the resource exactly.
fn same_sender(claimed: &str, jid: &str) -> bool {
    let (c_bare, c_res) = split(claimed.trim());
    let (j_bare, j_res) = split(jid);
    normalize(c_bare) == normalize(j_bare) && (c_res.is_none() || c_res == j_res)
}

fn split(jid: &str) -> (&str, Option<&str>) {
    match jid.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (jid, None),
    }
}

pub fn bare(jid: &str) -> &str {
    split(jid).0
}

fn normalize(bare: &str) -> String {
    bare.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::NS_CLIENT;
    use crate::xml::{parse_element, NsScope};

    fn el(s: &str) -> Element {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, NS_CLIENT.to_owned())]);
        parse_element(s, &scope).unwrap()
    }

    fn client(st: &mut RelayState, s: &str) -> ClientStanza {
        let e = el(s);
        let v = StanzaView::of(&e);
        st.client_stanza(&e, &v)
    }

    const SUCCESS: &str = "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";
    const BIND_REQ: &str = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>";
    const BIND_RES: &str = "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r</jid></bind></iq>";

    const AUTH2_BIND: &str = "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>x</initial-response>\
        <bind xmlns='urn:xmpp:bind:0'><tag>t</tag><enable xmlns='urn:xmpp:sm:3'/></bind></authenticate>";

    #[test]
    fn sasl2_success_with_bind2_proves_the_full_jid_and_enables_sm() {
        let mut st = RelayState::default();
        st.client_nonza(&el(AUTH2_BIND));
        assert_eq!(
            client(&mut st, "<message to='b@x'><body>early</body></message>"),
            ClientStanza::NotAuthorized
        );
        let success = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>alice@x/t~1</authorization-identifier>\
            <bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3' id='sm9' resume='1'/></bound></success>";
        assert_eq!(
            st.upstream_element(&el(success)),
            UpstreamEvent::Sasl2Succeeded(Sasl2Success {
                bound: Some(Account {
                    jid: "alice@x/t~1".into()
                }),
                chose: true,
                sm_enabled: true,
                resumed: None,
            })
        );
        assert_eq!((st.sm_id(), st.sm_resumable()), (Some("sm9"), true));
        // The resource was built from the client's tag: its stanzas wait for the relay
        // to let the success through, as after an RFC 6120 bind result.
        assert!(st.chose_resource());
        assert_eq!(
            client(&mut st, "<message to='b@x'><body>early</body></message>"),
            ClientStanza::NotAuthorized
        );
        st.confirm_bound();
        assert!(matches!(
            client(&mut st, "<message to='b@x'><body>hi</body></message>"),
            ClientStanza::Inspect(a) if a.jid == "alice@x/t~1"
        ));

        // Without a tag (or with an empty one), the server picked the resource.
        for bind in [
            "<bind xmlns='urn:xmpp:bind:0'/>",
            "<bind xmlns='urn:xmpp:bind:0'><tag> </tag></bind>",
        ] {
            let mut st = RelayState::default();
            st.client_nonza(&el(&format!(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>x</initial-response>{bind}</authenticate>"
            )));
            let success = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>alice@x/9f2c</authorization-identifier>\
                <bound xmlns='urn:xmpp:bind:0'/></success>";
            assert!(matches!(
                st.upstream_element(&el(success)),
                UpstreamEvent::Sasl2Succeeded(Sasl2Success {
                    chose: false,
                    bound: Some(_),
                    ..
                })
            ));
            assert!(!st.chose_resource());
            assert!(matches!(
                client(&mut st, "<message to='b@x'><body>hi</body></message>"),
                ClientStanza::Inspect(_)
            ));
        }
    }

    /// Identity comes only from an answer to this session's own `<authenticate/>`: an
    /// unsolicited SASL2 success, a bare authorization identifier, or a `<resumed/>`
    /// naming another session prove nothing.
    #[test]
    fn sasl2_success_proves_only_what_was_asked() {
        let unasked = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>mallory@x/r</authorization-identifier><bound xmlns='urn:xmpp:bind:0'/></success>";
        let mut st = RelayState::default();
        assert_eq!(st.upstream_element(&el(unasked)), UpstreamEvent::Relay);
        assert!(!st.authenticated());

        // Without Bind2 the client binds next, as after RFC 6120 SASL.
        let mut st = RelayState::default();
        st.client_nonza(&el(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>x</initial-response></authenticate>",
        ));
        let plain = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>alice@x</authorization-identifier></success>";
        assert_eq!(
            st.upstream_element(&el(plain)),
            UpstreamEvent::Sasl2Succeeded(Sasl2Success::default())
        );
        assert!(st.authenticated() && st.account().is_none());
        assert_eq!(client(&mut st, BIND_REQ), ClientStanza::PassUnrecorded);

        // A bare authorization identifier binds nothing.
        let mut st = RelayState::default();
        st.client_nonza(&el(AUTH2_BIND));
        let bare = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>alice@x</authorization-identifier><bound xmlns='urn:xmpp:bind:0'/></success>";
        assert_eq!(
            st.upstream_element(&el(bare)),
            UpstreamEvent::Sasl2Succeeded(Sasl2Success::default())
        );
        assert!(st.account().is_none());

        // A resumption answers only the previd this session asked for.
        let mut st = RelayState::default();
        st.client_nonza(&el(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>x</initial-response><resume xmlns='urn:xmpp:sm:3' previd='mine' h='3'/></authenticate>",
        ));
        let other = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>alice@x/r</authorization-identifier><resumed xmlns='urn:xmpp:sm:3' previd='theirs' h='1'/></success>";
        assert_eq!(
            st.upstream_element(&el(other)),
            UpstreamEvent::Sasl2Succeeded(Sasl2Success::default())
        );
        assert_eq!(st.sm_id(), None);
        let mut st = RelayState::default();
        st.client_nonza(&el(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>x</initial-response><resume xmlns='urn:xmpp:sm:3' previd='mine' h='3'/></authenticate>",
        ));
        let ours = "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>alice@x/r</authorization-identifier><resumed xmlns='urn:xmpp:sm:3' previd='mine' h='1'/></success>";
        assert_eq!(
            st.upstream_element(&el(ours)),
            UpstreamEvent::Sasl2Succeeded(Sasl2Success {
                resumed: Some("mine".into()),
                ..Sasl2Success::default()
            })
        );
        // The account is the resumed session's, looked up by the relay.
        assert_eq!(
            st.resumed(Some(Account {
                jid: "alice@x/r".into()
            })),
            Some(Account {
                jid: "alice@x/r".into()
            })
        );
    }

    fn bound() -> RelayState {
        let mut st = RelayState::default();
        st.upstream_element(&el(SUCCESS));
        assert_eq!(client(&mut st, BIND_REQ), ClientStanza::PassUnrecorded);
        assert_eq!(
            st.upstream_element(&el(BIND_RES)),
            UpstreamEvent::Bound(Account {
                jid: "alice@x/r".into()
            })
        );
        // The client named its resource; its stanzas wait for the relay to let the
        // bind result through.
        assert!(st.chose_resource());
        assert_eq!(client(&mut st, "<presence/>"), ClientStanza::NotAuthorized);
        st.confirm_bound();
        st
    }

    /// A second bind request under the same id, naming no resource, does not make the
    /// resource the first named the server's pick.
    #[test]
    fn a_resource_named_by_any_pending_bind_request_is_the_clients() {
        let mut st = RelayState::default();
        st.upstream_element(&el(SUCCESS));
        assert_eq!(client(&mut st, BIND_REQ), ClientStanza::PassUnrecorded);
        let again = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
        assert_eq!(client(&mut st, again), ClientStanza::PassUnrecorded);
        st.upstream_element(&el(BIND_RES));
        assert!(st.chose_resource());
    }

    #[test]
    fn nothing_passes_before_auth_and_bind() {
        let mut st = RelayState::default();
        assert_eq!(
            client(&mut st, "<message to='b@x'><body>hi</body></message>"),
            ClientStanza::NotAuthorized
        );
        // A bind request before SASL success is refused too.
        assert_eq!(client(&mut st, BIND_REQ), ClientStanza::NotAuthorized);
        // In-band registration is the exception (RFC 6120 §6.4.6, XEP-0077); a message
        // disguised beside it is not.
        assert_eq!(
            client(
                &mut st,
                "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>"
            ),
            ClientStanza::PassUnrecorded
        );
        assert_eq!(
            client(
                &mut st,
                "<iq type='set' id='r2'><query xmlns='jabber:iq:register'/><x xmlns='urn:x'/></iq>"
            ),
            ClientStanza::NotAuthorized
        );
        st.upstream_element(&el(SUCCESS));
        assert!(st.authenticated());
        assert_eq!(
            client(&mut st, "<message to='b@x'><body>hi</body></message>"),
            ClientStanza::NotAuthorized
        );
        assert_eq!(client(&mut st, "<presence/>"), ClientStanza::NotAuthorized);
        assert_eq!(client(&mut st, BIND_REQ), ClientStanza::PassUnrecorded);
        assert_eq!(st.account(), None);
    }

    #[test]
    fn the_jid_comes_only_from_the_answer_to_our_bind_request() {
        let mut st = RelayState::default();
        st.upstream_element(&el(SUCCESS));
        // Only a bind request addressed to the server and holding nothing else passes.
        for smuggled in [
            "<iq type='set' id='b0' to='bob@x/r'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
            "<iq type='set' id='b0'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><query xmlns='jabber:iq:private'/></iq>",
        ] {
            assert_eq!(client(&mut st, smuggled), ClientStanza::NotAuthorized, "{smuggled}");
        }
        assert_eq!(
            client(
                &mut st,
                "<iq type='set' id='b9' to='x'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
            ),
            ClientStanza::PassUnrecorded
        );
        client(&mut st, BIND_REQ);
        // A bind result with another id (injected by another user) is not ours.
        let injected = "<iq type='result' id='zz' from='eve@x/e'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>eve@x/e</jid></bind></iq>";
        assert_eq!(
            st.upstream_element(&el(injected)),
            UpstreamEvent::UnsolicitedBind
        );
        assert_eq!(st.account(), None);
        st.upstream_element(&el(BIND_RES));
        assert_eq!(st.account().map(|a| a.jid.as_str()), Some("alice@x/r"));
        // Once bound, a second bind result — even with our old id — changes nothing.
        let again = "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>eve@x/e</jid></bind></iq>";
        assert_eq!(
            st.upstream_element(&el(again)),
            UpstreamEvent::UnsolicitedBind
        );
        assert_eq!(st.account().map(|a| a.jid.as_str()), Some("alice@x/r"));
    }

    #[test]
    fn a_failed_bind_leaves_the_session_unbound() {
        let mut st = RelayState::default();
        st.upstream_element(&el(SUCCESS));
        client(&mut st, BIND_REQ);
        st.upstream_element(&el("<iq type='error' id='b1'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"));
        assert_eq!(st.account(), None);
        assert_eq!(
            st.upstream_element(&el(BIND_RES)),
            UpstreamEvent::UnsolicitedBind
        );
    }

    #[test]
    fn a_forged_from_is_invalid_and_own_addresses_are_not() {
        let mut st = bound();
        assert_eq!(
            client(
                &mut st,
                "<message from='bob@x/forged' to='c@x'><body>x</body></message>"
            ),
            ClientStanza::InvalidFrom {
                account: Account {
                    jid: "alice@x/r".into()
                },
                claimed: "bob@x/forged".into()
            }
        );
        // Another resource of the same account is not this session either.
        assert!(matches!(
            client(
                &mut st,
                "<message from='alice@x/other'><body>x</body></message>"
            ),
            ClientStanza::InvalidFrom { .. }
        ));
        for ok in [
            "<message to='c@x'><body>x</body></message>",
            "<message from='alice@x/r' to='c@x'><body>x</body></message>",
            "<message from='Alice@X' to='c@x'><body>x</body></message>",
        ] {
            assert!(
                matches!(client(&mut st, ok), ClientStanza::Inspect(_)),
                "{ok}"
            );
        }
    }

    #[test]
    fn resumption_restores_the_account_only_when_the_upstream_resumes_our_request() {
        let mut st = RelayState::default();
        st.upstream_element(&el(SUCCESS));
        // `<resumed>` for a previd the client never asked for is ignored.
        let resumed = el("<resumed xmlns='urn:xmpp:sm:3' previd='sm1' h='0'/>");
        assert_eq!(st.upstream_element(&resumed), UpstreamEvent::Relay);
        st.client_nonza(&el("<resume xmlns='urn:xmpp:sm:3' previd='sm1' h='0'/>"));
        assert_eq!(
            st.upstream_element(&resumed),
            UpstreamEvent::Resumed {
                previd: "sm1".into()
            }
        );
        let acc = Account {
            jid: "alice@x/r".into(),
        };
        assert_eq!(st.resumed(Some(acc.clone())), Some(acc));
        assert!(matches!(
            client(&mut st, "<message to='c@x'><body>x</body></message>"),
            ClientStanza::Inspect(_)
        ));
    }

    #[test]
    fn stream_management_steps() {
        let mut st = bound();
        let sm = |st: &mut RelayState, s: &str, from_client: bool| {
            st.stream_management(&el(s), from_client)
        };
        assert_eq!(sm(&mut st, "<presence/>", true), SmStep::NotSm);
        assert_eq!(
            sm(
                &mut st,
                "<enable xmlns='urn:xmpp:sm:3' resume='true'/>",
                true
            ),
            SmStep::StartCounting
        );
        assert!(!st.sm_resumable());
        assert_eq!(
            sm(
                &mut st,
                "<enabled xmlns='urn:xmpp:sm:3' id='sm1' resume='1'/>",
                false
            ),
            SmStep::StartCounting
        );
        assert_eq!((st.sm_id(), st.sm_resumable()), (Some("sm1"), true));
        assert_eq!(
            sm(&mut st, "<a xmlns='urn:xmpp:sm:3' h='5'/>", true),
            SmStep::Translate {
                h: 5,
                numbering: Numbering::ToClient
            }
        );
        assert_eq!(
            sm(&mut st, "<a xmlns='urn:xmpp:sm:3' h='4294967295'/>", false),
            SmStep::Translate {
                h: 4294967295,
                numbering: Numbering::ToUpstream
            }
        );
        assert_eq!(
            sm(&mut st, "<a xmlns='urn:xmpp:sm:3' h='-1'/>", false),
            SmStep::Forward
        );
        assert_eq!(
            sm(&mut st, "<r xmlns='urn:xmpp:sm:3'/>", true),
            SmStep::Forward
        );
        // A second enable (the server answers <failed/>) does not restart the count.
        assert_eq!(
            sm(&mut st, "<enable xmlns='urn:xmpp:sm:3'/>", true),
            SmStep::Forward
        );
        assert_eq!(
            sm(&mut st, "<enabled xmlns='urn:xmpp:sm:3' id='sm2'/>", false),
            SmStep::Forward
        );
        assert_eq!(st.sm_id(), Some("sm1"));
        // A bound session's resume request adopts nothing; the server refuses it.
        assert_eq!(
            sm(
                &mut st,
                "<resume xmlns='urn:xmpp:sm:3' previd='other' h='3'/>",
                true
            ),
            SmStep::Forward
        );
        let mut fresh = RelayState::default();
        fresh.upstream_element(&el(SUCCESS));
        assert_eq!(
            sm(
                &mut fresh,
                "<resume xmlns='urn:xmpp:sm:3' previd='sm1' h='3'/>",
                true
            ),
            SmStep::Resume {
                previd: "sm1".into(),
                h: Some(3)
            }
        );
        assert_eq!(fresh.sm_id(), None, "a request claims nothing");
        assert_eq!(
            sm(
                &mut fresh,
                "<resumed xmlns='urn:xmpp:sm:3' previd='sm1' h='7'/>",
                false
            ),
            SmStep::Translate {
                h: 7,
                numbering: Numbering::ToUpstream
            }
        );
        assert_eq!((fresh.sm_id(), fresh.sm_resumable()), (Some("sm1"), true));
    }

    #[test]
    fn wrappers_are_believed_only_from_the_own_account_or_our_own_queries() {
        let mut st = bound();
        let up = |st: &RelayState, s: &str| st.upstream_copy(&StanzaView::of(&el(s)));
        let carbon = |from: &str| {
            format!("<message from='{from}' to='alice@x/r'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@x/o' to='b@x'><body>hi</body></message></forwarded></sent></message>")
        };
        assert_eq!(up(&st, &carbon("alice@x")), Copy::CarbonSent);
        assert_eq!(up(&st, &carbon("ALICE@x")), Copy::CarbonSent);
        assert_eq!(up(&st, &carbon("mallory@evil")), Copy::ForgedWrapper);
        assert_eq!(up(&st, &carbon("alice@x/other")), Copy::ForgedWrapper);
        let result = |from: &str, q: &str| {
            format!("<message from='{from}' to='alice@x/r'><result xmlns='urn:xmpp:mam:2' queryid='{q}' id='1'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='b@x/o' to='alice@x'><body>old</body></message></forwarded></result></message>")
        };
        // No query sent yet: not believed.
        assert_eq!(up(&st, &result("alice@x", "q1")), Copy::ForgedWrapper);
        client(
            &mut st,
            "<iq type='set' id='i1'><query xmlns='urn:xmpp:mam:2' queryid='q1'/></iq>",
        );
        assert_eq!(up(&st, &result("alice@x", "q1")), Copy::Mam);
        assert_eq!(up(&st, &result("eve@x", "q1")), Copy::ForgedWrapper);
        assert_eq!(up(&st, &result("alice@x", "q2")), Copy::ForgedWrapper);
        // A room's archive, queried by address.
        client(
            &mut st,
            "<iq type='set' id='i2' to='room@muc.x'><query xmlns='urn:xmpp:mam:2' queryid='q2'/></iq>",
        );
        assert_eq!(up(&st, &result("room@muc.x", "q2")), Copy::Mam);
        // The query ends with its iq result; later results are not believed.
        st.upstream_element(&el("<iq type='result' id='i1'/>"));
        assert_eq!(up(&st, &result("alice@x", "q1")), Copy::ForgedWrapper);
    }
}
