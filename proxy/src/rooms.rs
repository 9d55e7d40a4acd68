//! Who is behind the group-chat rooms (XEP-0045) that users behind Custos are in.
//!
//! A room hides its occupants behind `room@service/nick`. Policy needs the people: an
//! information barrier holds in a room as in a chat, and a room with an external occupant
//! gets its disclaimer. Custos learns them from what the room tells the users behind it:
//!
//! - a user's own join, when the client sends it (before the room answers, so two sides
//!   entering at once cannot both pass unseen);
//! - the room's presence for each occupant, with the real JID in
//!   `<x xmlns='http://jabber.org/protocol/muc#user'><item jid=…/>` when the room reveals
//!   it (non-anonymous rooms, or to moderators);
//! - the user's own presence from the room (status code 110), which names the user's
//!   nickname even in a room that hides everyone's JID — the JID is then the session's
//!   proven one, not anything the room or the client wrote.
//!
//! A room is followed while at least one session behind Custos is in it; when the last
//! one leaves (its own unavailable presence, or the session ends) the room is forgotten,
//! since nothing would keep its list current. Only presences the upstream sends are
//! believed; a client's own stanzas only ever add the client's own proven JID.
//!
//! Memory is bounded: past [`MAX_ROOMS`] rooms or [`MAX_OCCUPANTS`] occupants in all,
//! what is new is not followed (and a warning says so).

use std::collections::HashMap;
use std::sync::Mutex;

use tracing::warn;

use crate::relay_state::bare;
use crate::xml::Element;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Rooms followed at once.
pub const MAX_ROOMS: usize = 50_000;
/// Occupants remembered across every room.
pub const MAX_OCCUPANTS: usize = 500_000;

#[derive(Debug, Default)]
pub struct Rooms {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Room bare JID, lowercased → its occupants.
    rooms: HashMap<String, Room>,
    occupants: usize,
    /// A warning was logged for reaching a limit (once until the load falls again).
    warned: bool,
}

#[derive(Debug, Default)]
struct Room {
    /// Nickname (case kept, RFC 7622 resourceprep does not fold) → who it is.
    occupants: HashMap<String, Occupant>,
    /// The address sent room presence (`muc#user`): it is a room, not only an address a
    /// session sent a directed presence to.
    confirmed: bool,
}

#[derive(Debug, Clone)]
struct Occupant {
    /// The real JID, as the room revealed it or as the session proved it.
    real: Option<String>,
    /// The session behind Custos holding this nickname (its full JID), if any.
    account: Option<String>,
}

impl Room {
    fn followed(&self) -> bool {
        self.occupants.values().any(|o| o.account.is_some())
    }
}

/// What the rooms say about one stanza, for policy and the record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoomContext {
    /// The real JID behind the occupant that sent it.
    pub from_real: Option<String>,
    /// The real JIDs it reaches.
    pub to_real: Vec<String>,
    /// An outbound presence entering a room.
    pub join: bool,
}

fn room_key(jid: &str) -> String {
    bare(jid).to_lowercase()
}

fn nick(jid: &str) -> Option<&str> {
    jid.split_once('/')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty())
}

fn same_account(a: &str, b: &str) -> bool {
    bare(a).eq_ignore_ascii_case(bare(b))
}

/// Status codes in a `muc#user` element.
fn statuses(x: &Element) -> impl Iterator<Item = &str> {
    x.children()
        .filter(|c| c.is("status", NS_MUC_USER))
        .filter_map(|c| c.attr("code"))
}

impl Rooms {
    pub fn new() -> Rooms {
        Rooms::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `jid`'s bare part is a room Custos follows.
    pub fn is_room(&self, jid: &str) -> bool {
        self.lock()
            .rooms
            .get(&room_key(jid))
            .is_some_and(|r| r.confirmed)
    }

    /// What is known about an outbound stanza from `account` to `to`, or an inbound one
    /// from `from`. `groupchat` is the stanza's type; `presence` whether it is an available
    /// presence (the only kind that can enter a room).
    pub fn context(
        &self,
        outbound: bool,
        account: &str,
        peer: &str,
        groupchat: bool,
        entering: bool,
    ) -> RoomContext {
        let state = self.lock();
        let Some(room) = state.rooms.get(&room_key(peer)) else {
            return RoomContext::default();
        };
        let others = || -> Vec<String> {
            room.occupants
                .values()
                .filter_map(|o| o.real.as_deref())
                .filter(|r| !same_account(r, account))
                .map(str::to_owned)
                .collect()
        };
        let behind = |n: &str| room.occupants.get(n).and_then(|o| o.real.clone());
        if !room.confirmed {
            // Not known to be a room yet: only a second session entering it at the same
            // time needs to see who is on the way in.
            return match nick(peer) {
                Some(_) if outbound && entering => RoomContext {
                    to_real: others(),
                    join: !room
                        .occupants
                        .values()
                        .any(|o| o.account.as_deref() == Some(account)),
                    ..RoomContext::default()
                },
                _ => RoomContext::default(),
            };
        }
        if !outbound {
            return RoomContext {
                from_real: nick(peer).and_then(behind),
                ..RoomContext::default()
            };
        }
        match nick(peer) {
            // An available presence from a session that holds no nickname in the room is
            // an entry; from one inside, a status update or a nickname change.
            Some(_) if entering => {
                let inside = room
                    .occupants
                    .values()
                    .any(|o| o.account.as_deref() == Some(account));
                RoomContext {
                    to_real: others(),
                    join: !inside,
                    ..RoomContext::default()
                }
            }
            _ if groupchat => RoomContext {
                to_real: others(),
                ..RoomContext::default()
            },
            Some(n) => RoomContext {
                to_real: behind(n).into_iter().collect(),
                ..RoomContext::default()
            },
            None => RoomContext::default(),
        }
    }

    /// The session `account` sent `presence` (available, to `room/nick`), and it was let
    /// through: followed from now, so the occupants the room lists before its answer are
    /// seen, and so is a second side entering at the same time. Any directed presence to
    /// a full JID counts, with or without `<x xmlns='…muc'/>`: servers let a client enter
    /// without it (XEP-0045 §7.2.1). Until the address sends room presence it is not taken
    /// for a room (see [`Rooms::context`]); it is forgotten with the session.
    pub fn entering(&self, account: &str, presence: &Element) {
        let Some(to) = presence.attr("to") else {
            return;
        };
        let Some(n) = nick(to) else {
            return;
        };
        if same_account(to, account) {
            return;
        }
        let key = room_key(to);
        let mut state = self.lock();
        state.put(
            &key,
            n,
            Occupant {
                real: Some(account.to_owned()),
                account: Some(account.to_owned()),
            },
        );
    }

    /// A presence the upstream sent to the session `account`.
    pub fn observe(&self, account: &str, presence: &Element) {
        let Some(from) = presence.attr("from") else {
            return;
        };
        let Some(n) = nick(from) else {
            return;
        };
        let key = room_key(from);
        let mut state = self.lock();
        let kind = presence.attr("type");
        if kind == Some("error") {
            // The room refused this session's entry.
            state.remove_if(&key, n, |o| o.account.as_deref() == Some(account));
            return;
        }
        let Some(x) = presence.child("x", NS_MUC_USER) else {
            return;
        };
        let own = statuses(x).any(|c| c == "110");
        if let Some(room) = state.rooms.get_mut(&key) {
            room.confirmed = true;
        }
        if kind == Some("unavailable") {
            state.remove_if(&key, n, |_| true);
            if own {
                state.leave(&key, account);
            }
            return;
        }
        if kind.is_some() {
            return;
        }
        let revealed = x
            .child("item", NS_MUC_USER)
            .and_then(|i| i.attr("jid"))
            .map(str::to_owned);
        if own {
            // The room may have changed the nickname asked for: what it says is final.
            state.drop_nicks(&key, account, n);
            state.put(
                &key,
                n,
                Occupant {
                    real: Some(account.to_owned()),
                    account: Some(account.to_owned()),
                },
            );
            if let Some(room) = state.rooms.get_mut(&key) {
                room.confirmed = true;
            }
            return;
        }
        if !state.rooms.contains_key(&key) {
            // Presence from a room no session behind Custos entered: nothing to follow.
            return;
        }
        let account_there = state
            .rooms
            .get(&key)
            .and_then(|r| r.occupants.get(n))
            .and_then(|o| o.account.clone());
        let real = revealed.or_else(|| {
            state
                .rooms
                .get(&key)
                .and_then(|r| r.occupants.get(n))
                .and_then(|o| o.real.clone())
        });
        state.put(
            &key,
            n,
            Occupant {
                real,
                account: account_there,
            },
        );
    }

    /// The session `account` ended: it is in no room any more.
    pub fn session_ended(&self, account: &str) {
        let mut state = self.lock();
        let keys: Vec<String> = state.rooms.keys().cloned().collect();
        for key in keys {
            state.leave(&key, account);
        }
    }

    #[cfg(test)]
    fn occupants(&self) -> usize {
        self.lock().occupants
    }
}

impl State {
    fn put(&mut self, key: &str, nick: &str, occupant: Occupant) {
        let room_known = self.rooms.contains_key(key);
        let nick_known = room_known
            && self
                .rooms
                .get(key)
                .is_some_and(|r| r.occupants.contains_key(nick));
        if !nick_known {
            let full =
                self.occupants >= MAX_OCCUPANTS || (!room_known && self.rooms.len() >= MAX_ROOMS);
            if full {
                if !self.warned {
                    warn!(
                        rooms = self.rooms.len(),
                        occupants = self.occupants,
                        "group-chat rooms past their limit: new occupants are not followed, and barriers cannot see them"
                    );
                    self.warned = true;
                }
                return;
            }
            self.occupants += 1;
        }
        self.rooms
            .entry(key.to_owned())
            .or_default()
            .occupants
            .insert(nick.to_owned(), occupant);
    }

    fn remove_if(&mut self, key: &str, nick: &str, pred: impl Fn(&Occupant) -> bool) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if room.occupants.get(nick).is_some_and(pred) {
            room.occupants.remove(nick);
            self.occupants -= 1;
        }
        self.forget_if_unfollowed(key);
    }

    /// `account` is no longer in the room; the room is forgotten when nobody behind
    /// Custos is.
    fn leave(&mut self, key: &str, account: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let before = room.occupants.len();
        room.occupants
            .retain(|_, o| o.account.as_deref() != Some(account));
        self.occupants -= before - room.occupants.len();
        self.forget_if_unfollowed(key);
    }

    /// Forgets the nicknames `account` held in the room other than `keep`.
    fn drop_nicks(&mut self, key: &str, account: &str, keep: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let before = room.occupants.len();
        room.occupants
            .retain(|n, o| n == keep || o.account.as_deref() != Some(account));
        self.occupants -= before - room.occupants.len();
    }

    fn forget_if_unfollowed(&mut self, key: &str) {
        if self.rooms.get(key).is_some_and(|r| !r.followed()) {
            if let Some(room) = self.rooms.remove(key) {
                self.occupants -= room.occupants.len();
            }
            if self.occupants < MAX_OCCUPANTS / 2 && self.rooms.len() < MAX_ROOMS / 2 {
                self.warned = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{parse_element, NsScope};

    const ROOM: &str = "deals@conference.example.test";

    fn el(xml: &str) -> Element {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, crate::stanza::NS_CLIENT.to_owned())]);
        parse_element(xml, &scope).expect("test XML parses")
    }

    fn join(rooms: &Rooms, account: &str, nick: &str) {
        rooms.entering(
            account,
            &el(&format!(
                "<presence to='{ROOM}/{nick}'><x xmlns='{NS_MUC}'/></presence>"
            )),
        );
    }

    fn presence(nick: &str, jid: Option<&str>, codes: &[&str], kind: Option<&str>) -> Element {
        let item = jid.map_or(String::new(), |j| format!(" jid='{j}'"));
        let codes: String = codes
            .iter()
            .map(|c| format!("<status code='{c}'/>"))
            .collect();
        let kind = kind.map_or(String::new(), |k| format!(" type='{k}'"));
        el(&format!(
            "<presence from='{ROOM}/{nick}'{kind}><x xmlns='{NS_MUC_USER}'><item affiliation='none' role='participant'{item}/>{codes}</x></presence>"
        ))
    }

    #[test]
    fn follows_a_room_from_the_join_to_the_last_leave() {
        let rooms = Rooms::new();
        let alice = "alice@example.test/desk";
        join(&rooms, alice, "al");
        assert!(!rooms.is_room(ROOM), "not a room until it says so");
        // The room lists bob (JID revealed), an anonymous occupant, then alice herself.
        rooms.observe(
            alice,
            &presence("bobby", Some("bob@example.test/p"), &[], None),
        );
        rooms.observe(alice, &presence("anon", None, &[], None));
        rooms.observe(alice, &presence("al", None, &["110"], None));
        let ctx = rooms.context(true, alice, ROOM, true, false);
        assert_eq!(ctx.to_real, vec!["bob@example.test/p".to_owned()]);
        assert!(!ctx.join);
        let heard = rooms.context(false, alice, &format!("{ROOM}/bobby"), true, false);
        assert_eq!(heard.from_real.as_deref(), Some("bob@example.test/p"));
        // A private message to bob's nickname reaches bob.
        let pm = rooms.context(true, alice, &format!("{ROOM}/bobby"), false, false);
        assert_eq!(pm.to_real, vec!["bob@example.test/p".to_owned()]);
        // A status update in the room is not an entry.
        let update = rooms.context(true, alice, &format!("{ROOM}/al"), false, true);
        assert!(!update.join);
        // Bob leaves; then alice does, and the room is forgotten.
        rooms.observe(alice, &presence("bobby", None, &[], Some("unavailable")));
        assert!(rooms
            .context(true, alice, ROOM, true, false)
            .to_real
            .is_empty());
        rooms.observe(alice, &presence("al", None, &["110"], Some("unavailable")));
        assert!(!rooms.is_room(ROOM));
        assert_eq!(rooms.occupants(), 0);
    }

    #[test]
    fn an_entry_sees_who_is_inside_even_before_the_room_answered() {
        let rooms = Rooms::new();
        join(&rooms, "alice@example.test/desk", "al");
        // Without the MUC element too (servers let a client enter without it).
        rooms.entering(
            "dave@example.test/x",
            &el(&format!("<presence to='{ROOM}/dave'/>")),
        );
        let bob = "bob@example.test/p";
        let ctx = rooms.context(true, bob, &format!("{ROOM}/bob"), false, true);
        assert!(ctx.join);
        let mut inside = ctx.to_real.clone();
        inside.sort();
        assert_eq!(inside, ["alice@example.test/desk", "dave@example.test/x"]);
        // The room refuses alice: she is not inside after all.
        rooms.observe(
            "alice@example.test/desk",
            &el(&format!(
                "<presence from='{ROOM}/al' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
            )),
        );
        rooms.session_ended("dave@example.test/x");
        assert_eq!(rooms.occupants(), 0);
    }

    #[test]
    fn a_renamed_nickname_and_an_ended_session_are_followed() {
        let rooms = Rooms::new();
        let alice = "alice@example.test/desk";
        join(&rooms, alice, "al");
        // The room gave alice another nickname (status 210).
        rooms.observe(alice, &presence("al2", None, &["110", "210"], None));
        let heard = rooms.context(
            false,
            "bob@example.test/p",
            &format!("{ROOM}/al2"),
            true,
            false,
        );
        assert_eq!(heard.from_real.as_deref(), Some(alice));
        assert_eq!(rooms.occupants(), 1);
        rooms.session_ended(alice);
        assert!(!rooms.is_room(ROOM));
        assert_eq!(rooms.occupants(), 0);
    }

    #[test]
    fn only_the_room_and_the_session_itself_say_who_is_inside() {
        let rooms = Rooms::new();
        // Presence from a room nobody behind Custos entered is not followed.
        rooms.observe(
            "alice@example.test/desk",
            &presence("x", Some("y@z"), &[], None),
        );
        assert!(!rooms.is_room(ROOM));
        // A directed presence to an address that never answers as a room makes it no
        // room: a message to it sees nobody behind it.
        let alice = "alice@example.test/desk";
        rooms.entering(alice, &el("<presence to='carol@example.org/pc'/>"));
        assert!(!rooms.is_room("carol@example.org"));
        let chat = rooms.context(true, alice, "carol@example.org/pc", false, false);
        assert_eq!(chat, RoomContext::default());
        let heard = rooms.context(false, alice, "carol@example.org/pc", false, false);
        assert_eq!(heard, RoomContext::default());
        rooms.session_ended(alice);
        assert_eq!(rooms.occupants(), 0);
    }
}
