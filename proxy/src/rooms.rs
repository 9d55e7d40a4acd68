//! Who is behind the group-chat rooms (XEP-0045) that users behind Custos are in.
//!
//! A room hides its occupants behind `room@service/nick`. Policy needs the people: an
//! information barrier holds in a room as in a chat, and a room with an external occupant
//! gets its disclaimer. Custos learns them from what the room tells the users behind it:
//!
//! - a session's own entry, reserved when the client sends it and before policy judges
//!   it, under the same lock as the check, so two sides entering at once cannot both pass
//!   unseen; the reservation goes if the entry is refused;
//! - the user's own presence from the room (status code 110), which names the session's
//!   nickname even in a room that hides everyone's JID — the JID is then the session's
//!   proven one, not anything the room or the client wrote. Only this confirms an address
//!   as a room, and only for a session that asked to enter it;
//! - the room's presence for each other occupant, with the real JID in
//!   `<x xmlns='http://jabber.org/protocol/muc#user'><item jid=…/>` where the room reveals
//!   it (non-anonymous rooms, or to moderators), and its nickname changes (status 303).
//!
//! A room is followed while a session behind Custos holds a nickname in it. A session's
//! entries outlive its connection by [`RESUME_GRACE`]: the server keeps a dropped session
//! in its rooms for stream-management resumption, and a resumed session is still inside.
//! Forgetting too early would let a barrier lapse; remembering too long only refuses an
//! entry that would have been allowed.
//!
//! Memory is bounded: [`MAX_ROOMS`] rooms, [`MAX_OCCUPANTS`] occupants in all,
//! [`MAX_ROOMS_PER_SESSION`] per session, and bounded nickname and JID lengths. Past a
//! bound, an entry is refused (the caller answers `<resource-constraint/>`), never let
//! through unseen.

use std::collections::{HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::relay_state::bare;
use crate::xml::Element;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Rooms followed at once.
pub const MAX_ROOMS: usize = 50_000;
/// Occupants remembered across every room.
pub const MAX_OCCUPANTS: usize = 500_000;
/// Rooms one session may hold or ask for a nickname in.
pub const MAX_ROOMS_PER_SESSION: usize = 1_000;
/// Longest nickname (RFC 7622 resourcepart) and JID kept.
const MAX_NICK: usize = 1023;
const MAX_JID: usize = 3071;
/// How long a session's rooms are kept after its connection ended, for resumption.
pub const RESUME_GRACE: Duration = Duration::from_secs(900);
/// How long a room closed for its name may not be configured: its destruction is on its
/// way well before.
const CLOSED_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Rooms {
    /// Read for every stanza's context, written by presences: a read lock keeps the
    /// sessions' lookups from queuing behind each other.
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Room bare JID (as [`room_key`] prepares it) → its occupants.
    rooms: HashMap<String, Room>,
    occupants: usize,
    /// The rooms each session (full JID) holds or asked for a nickname in.
    by_account: HashMap<String, HashSet<String>>,
    /// Sessions whose connection ended, and when: their rooms go after [`RESUME_GRACE`]
    /// unless the session resumes.
    ended: HashMap<String, Instant>,
    /// Rooms closed because policy refused their names, and when: no session may
    /// configure them while their destruction is on its way.
    closed: HashMap<String, Instant>,
    /// A warning was logged for reaching a limit.
    warned: bool,
}

#[derive(Debug, Default)]
struct Room {
    /// Nickname (case kept) → who it is.
    occupants: HashMap<String, Occupant>,
    /// A session behind Custos got its own presence from the room (status 110).
    confirmed: bool,
}

#[derive(Debug, Clone, Default)]
struct Occupant {
    /// The real JID, as the room revealed it or as the session proved it.
    real: Option<String>,
    /// The sessions behind Custos holding this nickname (several resources may share one).
    accounts: Vec<String>,
}

impl Room {
    fn followed(&self) -> bool {
        self.occupants.values().any(|o| !o.accounts.is_empty())
    }

    fn holds(&self, account: &str) -> bool {
        self.occupants
            .values()
            .any(|o| o.accounts.iter().any(|a| a == account))
    }

    /// The people inside but `account`'s own.
    fn others(&self, account: &str) -> Vec<String> {
        self.occupants
            .values()
            .filter_map(|o| o.real.as_deref())
            .filter(|r| !same_account(r, account))
            .map(str::to_owned)
            .collect()
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
    /// The entry was reserved: cancel it with [`Rooms::cancel`] if the stanza is refused.
    pub reserved: bool,
    /// Custos cannot follow one more room for this session: refuse the entry.
    pub full: bool,
}

/// The key a room is followed under: its bare JID as the server reads it, prepared with
/// nodeprep and nameprep as policy reads a party (`ｆal\u{AD}con@muc.x` is
/// `falcon@muc.x`; [`custos_policy::prepare_local`]).
fn room_key(jid: &str) -> String {
    let b = bare(jid);
    match b.split_once('@') {
        Some((l, d)) => format!(
            "{}@{}",
            custos_policy::prepare_local(l),
            custos_policy::prepare_domain(d)
        ),
        None => custos_policy::prepare_domain(b),
    }
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
pub(crate) fn statuses(x: &Element) -> impl Iterator<Item = &str> {
    x.children()
        .filter(|c| c.is("status", NS_MUC_USER))
        .filter_map(|c| c.attr("code"))
}

impl Rooms {
    pub fn new() -> Rooms {
        Rooms::default()
    }

    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `jid`'s bare part is a room Custos follows.
    pub fn is_room(&self, jid: &str) -> bool {
        self.read()
            .rooms
            .get(&room_key(jid))
            .is_some_and(|r| r.confirmed)
    }

    /// The room of `jid`, created by `account`, is closed because policy refused its
    /// name: the session's entry is undone (the room is not followed), and no session
    /// may configure the room for [`CLOSED_FOR`].
    pub fn close(&self, account: &str, jid: &str) {
        let key = room_key(jid);
        let mut state = self.lock();
        let now = Instant::now();
        state
            .closed
            .retain(|_, at| now.duration_since(*at) < CLOSED_FOR);
        if state.closed.len() < MAX_ROOMS {
            state.closed.insert(key.clone(), now);
        } else {
            warn!("more rooms closed for their names within a minute than Custos follows; this one may be configured");
        }
        // Every nickname the session holds or asked for there (the room may have given
        // another than asked).
        if let Some(n) = nick(jid) {
            state.drop_other_nicks(&key, account, n);
            state.remove_account(&key, n, account);
        }
    }

    /// Whether the room of `jid` was closed for its name within [`CLOSED_FOR`].
    pub fn is_closed(&self, jid: &str) -> bool {
        self.read()
            .closed
            .get(&room_key(jid))
            .is_some_and(|at| at.elapsed() < CLOSED_FOR)
    }

    /// Whether the session `account` may send a room's owner or administrator request
    /// (XEP-0045 `muc#owner`, `muc#admin`) to `jid`: not while the room has not answered
    /// an entry any session of the account awaits (until then Custos cannot know whether
    /// the account created it, and what its name is worth), and not to a room closed for
    /// its name.
    pub fn may_configure(&self, account: &str, jid: &str) -> bool {
        let key = room_key(jid);
        let state = self.read();
        if state
            .closed
            .get(&key)
            .is_some_and(|at| at.elapsed() < CLOSED_FOR)
        {
            return false;
        }
        match state.rooms.get(&key) {
            // Nobody behind Custos asked to enter it, or it answered.
            None => return true,
            Some(room) if room.confirmed => return true,
            Some(_) => {}
        }
        // The room grants ownership to the account, not the session: an entry any
        // session of the account is waiting on holds every session's requests. The
        // sessions' addresses are the server's, already prepared.
        let account = bare(account);
        !state.by_account.iter().any(|(session, rooms)| {
            bare(session).eq_ignore_ascii_case(account) && rooms.contains(&key)
        })
    }

    /// Whether the session `account` asked to enter the room of `jid` (and has not left).
    pub fn asked(&self, account: &str, jid: &str) -> bool {
        self.read()
            .by_account
            .get(account)
            .is_some_and(|rooms| rooms.contains(&room_key(jid)))
    }

    /// What is known about an outbound stanza from `account` to `peer`, or an inbound one
    /// from `peer`, other than an entry (see [`Rooms::enter`]).
    pub fn context(
        &self,
        outbound: bool,
        account: &str,
        peer: &str,
        groupchat: bool,
    ) -> RoomContext {
        let state = self.read();
        if state.rooms.is_empty() {
            return RoomContext::default();
        }
        let Some(room) = state.rooms.get(&room_key(peer)).filter(|r| r.confirmed) else {
            return RoomContext::default();
        };
        let behind = |n: &str| room.occupants.get(n).and_then(|o| o.real.clone());
        if !outbound {
            return RoomContext {
                from_real: nick(peer).and_then(behind),
                ..RoomContext::default()
            };
        }
        match nick(peer) {
            _ if groupchat => RoomContext {
                to_real: room.others(account),
                ..RoomContext::default()
            },
            Some(n) => RoomContext {
                to_real: behind(n).into_iter().collect(),
                ..RoomContext::default()
            },
            None => RoomContext::default(),
        }
    }

    /// An available presence from `account` to `to` (a full JID): an entry into a room
    /// when the session holds no nickname there, else a status update or a nickname
    /// change. Returns who is inside, and reserves the entry under the same lock, so a
    /// second session entering at the same moment sees this one. Any directed presence
    /// counts, with or without `<x xmlns='…muc'/>`: servers let a client enter without it
    /// (XEP-0045 §7.2.1). Until the address answers as a room, only entries see it.
    pub fn enter(&self, account: &str, to: &str) -> RoomContext {
        let Some(n) = nick(to) else {
            return RoomContext::default();
        };
        if same_account(to, account) {
            return RoomContext::default();
        }
        let key = room_key(to);
        let mut state = self.lock();
        state.expire(Instant::now());
        let (others, inside) = match state.rooms.get(&key) {
            Some(room) => (room.others(account), room.holds(account)),
            None => (Vec::new(), false),
        };
        if inside {
            return RoomContext {
                to_real: others,
                ..RoomContext::default()
            };
        }
        let reserved = state.reserve(&key, n, account);
        RoomContext {
            to_real: others,
            join: true,
            reserved,
            full: !reserved,
            ..RoomContext::default()
        }
    }

    /// The entry [`Rooms::enter`] reserved was refused.
    pub fn cancel(&self, account: &str, to: &str) {
        if let Some(n) = nick(to) {
            let mut state = self.lock();
            state.remove_account(&room_key(to), n, account);
        }
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
        if !state.rooms.contains_key(&key) {
            // A room no session behind Custos asked to enter: nothing to follow.
            return;
        }
        let asked = state
            .by_account
            .get(account)
            .is_some_and(|rooms| rooms.contains(&key));
        let kind = presence.attr("type");
        if kind == Some("error") {
            // The room refused this session's entry or nickname.
            state.remove_account(&key, n, account);
            return;
        }
        let Some(x) = presence.child("x", NS_MUC_USER) else {
            return;
        };
        let own = asked && statuses(x).any(|c| c == "110");
        let renamed = statuses(x).any(|c| c == "303");
        let item = x.child("item", NS_MUC_USER);
        let new_nick = item
            .and_then(|i| i.attr("nick"))
            .filter(|n| n.len() <= MAX_NICK);
        let revealed = item
            .and_then(|i| i.attr("jid"))
            .filter(|j| j.len() <= MAX_JID)
            .map(str::to_owned);
        match kind {
            Some("unavailable") if renamed => {
                // A nickname change: the same people under the new nickname.
                if let Some(new) = new_nick {
                    state.rename(&key, n, new, own.then_some(account));
                }
            }
            Some("unavailable") if own => state.remove_account(&key, n, account),
            Some("unavailable") => state.remove_nick(&key, n),
            None if own => {
                // The room may have given another nickname than asked: what it says
                // is final.
                state.drop_other_nicks(&key, account, n);
                state.hold(&key, n, account);
                if let Some(room) = state.rooms.get_mut(&key) {
                    room.confirmed = true;
                }
            }
            None => state.learn(&key, n, revealed),
            Some(_) => {}
        }
    }

    /// A session bound or resumed: its rooms are its own again.
    pub fn session_bound(&self, account: &str) {
        self.lock().ended.remove(account);
    }

    /// A session's connection ended. Its rooms stay for [`RESUME_GRACE`]: the server may
    /// keep the session, inside its rooms, for the client to resume.
    pub fn session_ended(&self, account: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        if state.by_account.contains_key(account) {
            state.ended.insert(account.to_owned(), now);
        }
        state.expire(now);
    }

    #[cfg(test)]
    fn occupants(&self) -> usize {
        self.lock().occupants
    }

    #[cfg(test)]
    fn expire_at(&self, now: Instant) {
        self.lock().expire(now);
    }
}

impl State {
    /// Puts `account` on `nick` as an entry on its way in. `false` when a bound says no.
    fn reserve(&mut self, key: &str, nick: &str, account: &str) -> bool {
        let rooms_of = self.by_account.get(account).map_or(0, HashSet::len);
        let new_room = !self.rooms.contains_key(key);
        let too_long = nick.len() > MAX_NICK || account.len() > MAX_JID || key.len() > MAX_JID;
        let full = self.occupants >= MAX_OCCUPANTS
            || (new_room && self.rooms.len() >= MAX_ROOMS)
            || rooms_of >= MAX_ROOMS_PER_SESSION;
        if too_long || full {
            if full && !self.warned {
                warn!(
                    rooms = self.rooms.len(),
                    occupants = self.occupants,
                    "group-chat rooms past their limit: entries are refused until some are left"
                );
                self.warned = true;
            }
            return false;
        }
        // A nickname someone else holds is not taken over: the room will refuse it.
        let taken = self
            .rooms
            .get(key)
            .and_then(|r| r.occupants.get(nick))
            .is_some_and(|o| {
                o.accounts.iter().all(|a| a != account)
                    && (o.real.is_some() || !o.accounts.is_empty())
            });
        if !taken {
            self.hold(key, nick, account);
        } else {
            // Still remembered as asking, so its own answer is believed.
            self.by_account
                .entry(account.to_owned())
                .or_default()
                .insert(key.to_owned());
            self.rooms.entry(key.to_owned()).or_default();
        }
        true
    }

    /// `account` holds `nick` (with others who may share it).
    fn hold(&mut self, key: &str, nick: &str, account: &str) {
        let room = self.rooms.entry(key.to_owned()).or_default();
        let occupant = room.occupants.entry(nick.to_owned()).or_insert_with(|| {
            self.occupants += 1;
            Occupant::default()
        });
        if !occupant.accounts.iter().any(|a| a == account) {
            occupant.accounts.push(account.to_owned());
        }
        occupant.real = Some(account.to_owned());
        self.by_account
            .entry(account.to_owned())
            .or_default()
            .insert(key.to_owned());
    }

    /// Someone else's presence in the room: who it is, where revealed.
    fn learn(&mut self, key: &str, nick: &str, revealed: Option<String>) {
        if nick.len() > MAX_NICK {
            return;
        }
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let known = room.occupants.contains_key(nick);
        if !known && self.occupants >= MAX_OCCUPANTS {
            if !self.warned {
                warn!(
                    occupants = self.occupants,
                    "group-chat occupants past their limit: new ones are not followed"
                );
                self.warned = true;
            }
            return;
        }
        let occupant = room.occupants.entry(nick.to_owned()).or_insert_with(|| {
            self.occupants += 1;
            Occupant::default()
        });
        // A session's own nickname keeps its proven JID.
        if occupant.accounts.is_empty() {
            if let Some(real) = revealed {
                occupant.real = Some(real);
            }
        }
    }

    fn rename(&mut self, key: &str, old: &str, new: &str, own: Option<&str>) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(mut moved) = room.occupants.remove(old) else {
            return;
        };
        if let Some(account) = own {
            // Only this session moves; others sharing the old nickname stay.
            let rest: Vec<String> = moved
                .accounts
                .iter()
                .filter(|a| *a != account)
                .cloned()
                .collect();
            if !rest.is_empty() {
                room.occupants.insert(
                    old.to_owned(),
                    Occupant {
                        real: moved.real.clone(),
                        accounts: rest,
                    },
                );
                self.occupants += 1;
                moved.accounts = vec![account.to_owned()];
            }
        }
        match room.occupants.get_mut(new) {
            Some(existing) => {
                for a in moved.accounts {
                    if !existing.accounts.contains(&a) {
                        existing.accounts.push(a);
                    }
                }
                existing.real = existing.real.take().or(moved.real);
                self.occupants -= 1;
            }
            None => {
                room.occupants.insert(new.to_owned(), moved);
            }
        }
    }

    /// `account` left `nick` (its own unavailable presence, or a refused entry).
    fn remove_account(&mut self, key: &str, nick: &str, account: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if let Some(o) = room.occupants.get_mut(nick) {
            // Only this session's hold goes: a nickname it never held is someone else's.
            let held = o.accounts.iter().any(|a| a == account);
            o.accounts.retain(|a| a != account);
            if held && o.accounts.is_empty() {
                room.occupants.remove(nick);
                self.occupants -= 1;
            }
        }
        if !room.holds(account) {
            if let Some(rooms) = self.by_account.get_mut(account) {
                rooms.remove(key);
                if rooms.is_empty() {
                    self.by_account.remove(account);
                }
            }
        }
        self.forget_if_unfollowed(key);
    }

    /// The room says `nick` left.
    fn remove_nick(&mut self, key: &str, nick: &str) {
        let accounts = self
            .rooms
            .get(key)
            .and_then(|r| r.occupants.get(nick))
            .map(|o| o.accounts.clone())
            .unwrap_or_default();
        for a in &accounts {
            self.remove_account(key, nick, a);
        }
        if let Some(room) = self.rooms.get_mut(key) {
            if room.occupants.remove(nick).is_some() {
                self.occupants -= 1;
            }
        }
        self.forget_if_unfollowed(key);
    }

    /// Forgets the nicknames `account` held in the room other than `keep`.
    fn drop_other_nicks(&mut self, key: &str, account: &str, keep: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let before = room.occupants.len();
        for (n, o) in room.occupants.iter_mut() {
            if n != keep {
                o.accounts.retain(|a| a != account);
            }
        }
        room.occupants.retain(|n, o| {
            n == keep || !o.accounts.is_empty() || o.real.as_deref() != Some(account)
        });
        self.occupants -= before - room.occupants.len();
    }

    /// Drops the rooms of sessions that ended more than [`RESUME_GRACE`] ago.
    fn expire(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .ended
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= RESUME_GRACE)
            .map(|(a, _)| a.clone())
            .collect();
        for account in gone {
            self.ended.remove(&account);
            let keys: Vec<String> = self
                .by_account
                .remove(&account)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default();
            for key in keys {
                let Some(room) = self.rooms.get_mut(&key) else {
                    continue;
                };
                let before = room.occupants.len();
                for o in room.occupants.values_mut() {
                    o.accounts.retain(|a| *a != account);
                }
                room.occupants.retain(|_, o| {
                    !o.accounts.is_empty() || o.real.as_deref() != Some(account.as_str())
                });
                self.occupants -= before - room.occupants.len();
                self.forget_if_unfollowed(&key);
            }
        }
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
    const ALICE: &str = "alice@example.test/desk";
    const BOB: &str = "bob@example.test/p";

    fn el(xml: &str) -> Element {
        let mut scope = NsScope::new();
        scope.declare(vec![(None, crate::stanza::NS_CLIENT.to_owned())]);
        parse_element(xml, &scope).expect("test XML parses")
    }

    /// `account` enters as `nick` and the room confirms it (others listed first).
    fn join(rooms: &Rooms, account: &str, nick: &str) -> RoomContext {
        let ctx = rooms.enter(account, &format!("{ROOM}/{nick}"));
        rooms.observe(account, &presence(nick, None, &["110"], None, None));
        ctx
    }

    fn presence(
        nick: &str,
        jid: Option<&str>,
        codes: &[&str],
        kind: Option<&str>,
        new_nick: Option<&str>,
    ) -> Element {
        let item = jid.map_or(String::new(), |j| format!(" jid='{j}'"));
        let renamed = new_nick.map_or(String::new(), |n| format!(" nick='{n}'"));
        let codes: String = codes
            .iter()
            .map(|c| format!("<status code='{c}'/>"))
            .collect();
        let kind = kind.map_or(String::new(), |k| format!(" type='{k}'"));
        el(&format!(
            "<presence from='{ROOM}/{nick}'{kind}><x xmlns='{NS_MUC_USER}'><item affiliation='none' role='participant'{item}{renamed}/>{codes}</x></presence>"
        ))
    }

    /// A room's owner and administrator requests wait for the room to answer an entry
    /// any session of the account is waiting on, under the address as the server reads
    /// it; a room closed for its name takes none, from any session, nor does its
    /// account follow it any more.
    #[test]
    fn configuring_waits_for_the_rooms_answer_and_a_closed_room_takes_none() {
        let rooms = Rooms::new();
        let phone = "alice@example.test/phone";
        rooms.enter(ALICE, &format!("{ROOM}/al"));
        let fullwidth = "\u{FF24}EALS@conference.example.test";
        for (session, room) in [(ALICE, ROOM), (phone, ROOM), (phone, fullwidth)] {
            assert!(!rooms.may_configure(session, room), "{session} {room}");
        }
        assert!(
            rooms.may_configure(BOB, ROOM),
            "another account is not held"
        );
        // The room gives another nickname than asked, then answers.
        rooms.observe(ALICE, &presence("al2", None, &["110", "210"], None, None));
        assert!(rooms.may_configure(phone, ROOM));
        // A room the session created, under another nickname than asked, closed for its
        // name instead of followed.
        let other = "falcon@conference.example.test";
        rooms.enter(ALICE, &format!("{other}/al"));
        rooms.close(ALICE, &format!("{other}/al2"));
        assert!(rooms.is_closed("\u{FF26}alcon@conference.example.test"));
        assert!(rooms.is_closed("fal\u{AD}con@conference.example.test"));
        for session in [ALICE, phone, BOB] {
            assert!(!rooms.may_configure(session, other), "{session}");
        }
        assert!(
            !rooms.asked(ALICE, other),
            "every nickname of the session is let go"
        );
    }

    #[test]
    fn follows_a_room_from_the_entry_to_the_last_leave() {
        let rooms = Rooms::new();
        let ctx = rooms.enter(ALICE, &format!("{ROOM}/al"));
        assert!(ctx.join && ctx.reserved && !ctx.full);
        assert!(!rooms.is_room(ROOM), "not a room until it says so");
        // The room lists bob (JID revealed), an anonymous occupant, then alice herself.
        rooms.observe(ALICE, &presence("bobby", Some(BOB), &[], None, None));
        rooms.observe(ALICE, &presence("anon", None, &[], None, None));
        rooms.observe(ALICE, &presence("al", None, &["110"], None, None));
        assert!(rooms.is_room(ROOM));
        let ctx = rooms.context(true, ALICE, ROOM, true);
        assert_eq!(ctx.to_real, vec![BOB.to_owned()]);
        let heard = rooms.context(false, ALICE, &format!("{ROOM}/bobby"), true);
        assert_eq!(heard.from_real.as_deref(), Some(BOB));
        let pm = rooms.context(true, ALICE, &format!("{ROOM}/bobby"), false);
        assert_eq!(pm.to_real, vec![BOB.to_owned()]);
        // A status update in the room is no entry.
        assert!(!rooms.enter(ALICE, &format!("{ROOM}/al")).join);
        rooms.observe(
            ALICE,
            &presence("bobby", None, &[], Some("unavailable"), None),
        );
        assert!(rooms.context(true, ALICE, ROOM, true).to_real.is_empty());
        rooms.observe(
            ALICE,
            &presence("al", None, &["110"], Some("unavailable"), None),
        );
        assert!(!rooms.is_room(ROOM));
        assert_eq!(rooms.occupants(), 0);
    }

    #[test]
    fn two_sides_entering_at_once_see_each_other() {
        let rooms = Rooms::new();
        rooms.enter(ALICE, &format!("{ROOM}/al"));
        // Without the MUC element too: the reservation is the same.
        let ctx = rooms.enter(BOB, &format!("{ROOM}/bob"));
        assert!(ctx.join);
        assert_eq!(ctx.to_real, vec![ALICE.to_owned()]);
        // Bob's entry was refused by policy: his reservation goes.
        rooms.cancel(BOB, &format!("{ROOM}/bob"));
        // The room refuses alice: she is not inside after all, and nothing is left.
        rooms.observe(
            ALICE,
            &el(&format!(
                "<presence from='{ROOM}/al' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
            )),
        );
        assert_eq!(rooms.occupants(), 0);
        assert!(rooms.lock().rooms.is_empty());
    }

    #[test]
    fn a_dropped_connection_keeps_its_rooms_for_resumption() {
        let rooms = Rooms::new();
        join(&rooms, ALICE, "al");
        rooms.session_ended(ALICE);
        // Still inside as far as anyone entering can tell.
        let ctx = rooms.enter(BOB, &format!("{ROOM}/bob"));
        assert_eq!(ctx.to_real, vec![ALICE.to_owned()]);
        rooms.cancel(BOB, &format!("{ROOM}/bob"));
        // Resumed: nothing expires.
        rooms.session_bound(ALICE);
        rooms.expire_at(Instant::now() + RESUME_GRACE * 2);
        assert!(rooms.is_room(ROOM));
        // Ended for good: gone after the grace period.
        rooms.session_ended(ALICE);
        rooms.expire_at(Instant::now() + RESUME_GRACE);
        assert!(!rooms.is_room(ROOM));
        assert_eq!(rooms.occupants(), 0);
    }

    #[test]
    fn a_nickname_change_keeps_the_room_and_its_people() {
        let rooms = Rooms::new();
        join(&rooms, ALICE, "al");
        rooms.observe(ALICE, &presence("bobby", Some(BOB), &[], None, None));
        // Alice renames herself: unavailable (110, 303) from the old, then the new.
        rooms.observe(
            ALICE,
            &presence(
                "al",
                None,
                &["110", "303"],
                Some("unavailable"),
                Some("al2"),
            ),
        );
        assert!(rooms.is_room(ROOM), "the room is still followed");
        rooms.observe(ALICE, &presence("al2", None, &["110"], None, None));
        assert_eq!(
            rooms.context(true, ALICE, ROOM, true).to_real,
            vec![BOB.to_owned()]
        );
        // Bob renames himself: still Bob behind the new nickname.
        rooms.observe(
            ALICE,
            &presence("bobby", None, &["303"], Some("unavailable"), Some("b")),
        );
        let heard = rooms.context(false, ALICE, &format!("{ROOM}/b"), true);
        assert_eq!(heard.from_real.as_deref(), Some(BOB));
        // The room gave alice another nickname than she asked for (status 210).
        rooms.observe(ALICE, &presence("al3", None, &["110", "210"], None, None));
        let heard = rooms.context(false, BOB, &format!("{ROOM}/al3"), true);
        assert_eq!(heard.from_real.as_deref(), Some(ALICE));
        assert_eq!(rooms.occupants(), 2);
    }

    #[test]
    fn two_resources_on_one_nickname_stay_until_both_left() {
        let rooms = Rooms::new();
        let laptop = "alice@example.test/laptop";
        join(&rooms, ALICE, "al");
        join(&rooms, laptop, "al");
        rooms.observe(
            laptop,
            &presence("al", None, &["110"], Some("unavailable"), None),
        );
        assert!(rooms.is_room(ROOM));
        let ctx = rooms.enter(BOB, &format!("{ROOM}/bob"));
        assert_eq!(ctx.to_real.len(), 1, "{ctx:?}");
    }

    #[test]
    fn an_entry_cannot_take_over_someone_elses_nickname() {
        let rooms = Rooms::new();
        join(&rooms, ALICE, "al");
        rooms.observe(ALICE, &presence("bobby", Some(BOB), &[], None, None));
        let carol = "carol@example.test/c";
        rooms.enter(carol, &format!("{ROOM}/bobby"));
        rooms.observe(
            carol,
            &el(&format!(
                "<presence from='{ROOM}/bobby' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
            )),
        );
        let heard = rooms.context(false, ALICE, &format!("{ROOM}/bobby"), true);
        assert_eq!(heard.from_real.as_deref(), Some(BOB), "bob is still bob");
        // Alice, inside, asking for bob's nickname changes nothing either.
        rooms.enter(ALICE, &format!("{ROOM}/bobby"));
        let heard = rooms.context(false, ALICE, &format!("{ROOM}/bobby"), true);
        assert_eq!(heard.from_real.as_deref(), Some(BOB));
    }

    #[test]
    fn a_room_address_is_one_room_however_it_is_written() {
        let rooms = Rooms::new();
        join(&rooms, ALICE, "al");
        for written in [
            "deals@conference.example.test./x",
            "DEALS@Conference.Example.Test/x",
        ] {
            let ctx = rooms.enter(BOB, written);
            assert_eq!(ctx.to_real, vec![ALICE.to_owned()], "{written}");
            rooms.cancel(BOB, written);
        }
    }

    #[test]
    fn only_the_session_that_asked_makes_an_address_a_room() {
        let rooms = Rooms::new();
        // Own-presence from an address nobody asked to enter: ignored.
        rooms.observe(ALICE, &presence("x", Some("y@z"), &["110"], None, None));
        assert!(!rooms.is_room(ROOM));
        // A directed presence to an address that never answers as a room makes it no
        // room: messages to or from it see nobody behind it.
        rooms.enter(ALICE, "carol@example.org/pc");
        rooms.observe(
            ALICE,
            &el(&format!(
                "<presence from='carol@example.org/other'><x xmlns='{NS_MUC_USER}'><item jid='ceo@example.test'/></x></presence>"
            )),
        );
        assert!(!rooms.is_room("carol@example.org"));
        let heard = rooms.context(false, ALICE, "carol@example.org/other", false);
        assert_eq!(heard, RoomContext::default());
        // Another session's own presence from that address does not confirm it either.
        rooms.observe(
            BOB,
            &el(&format!(
                "<presence from='carol@example.org/pc'><x xmlns='{NS_MUC_USER}'><status code='110'/></x></presence>"
            )),
        );
        assert!(!rooms.is_room("carol@example.org"));
    }

    #[test]
    fn past_its_bounds_an_entry_is_refused_not_let_through() {
        let rooms = Rooms::new();
        for i in 0..MAX_ROOMS_PER_SESSION {
            assert!(
                rooms
                    .enter(ALICE, &format!("r{i}@conference.example.test/al"))
                    .reserved
            );
        }
        let ctx = rooms.enter(ALICE, &format!("{ROOM}/al"));
        assert!(ctx.join && ctx.full && !ctx.reserved);
        // A nickname longer than any server allows is refused too.
        let ctx = rooms.enter(BOB, &format!("{ROOM}/{}", "n".repeat(MAX_NICK + 1)));
        assert!(ctx.full);
        // Everything goes with the session.
        rooms.session_ended(ALICE);
        rooms.expire_at(Instant::now() + RESUME_GRACE);
        assert_eq!(rooms.occupants(), 0);
    }
}
