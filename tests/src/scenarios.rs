//! Scenarios run unchanged in front of each server the suite starts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::custos::Custos;
use crate::rig::BoxError;
use crate::slix::{OutgoingMessage, SlixClient};

/// Alice (stream management on, connected through Custos at `addr`) loses her TCP
/// connection and resumes: Custos leaves the upstream stream unclosed, so the server
/// keeps her session; the message Bob sends meanwhile arrives once after resumption;
/// nothing needs a new login; the counts agree afterwards; and each message is archived
/// once per stream it crossed, Alice's copy under her proven JID. `context` gives the
/// logs for failure messages.
pub async fn drop_and_resume(
    custos: &Custos,
    alice: &mut SlixClient,
    bob: &mut SlixClient,
    addr: SocketAddr,
    context: &dyn Fn() -> String,
) -> Result<(), BoxError> {
    let alice_jid = alice.jid().to_owned();
    alice
        .send_chat("bob@example.test", "resume-1 before the drop")
        .await?;
    assert_eq!(bob.next_message().await?.body, "resume-1 before the drop");

    let id = alice.sm_drop().await?;
    assert!(!id.is_empty());
    // Sent while Alice is away: the server holds it in her hibernating session.
    bob.send_chat(&alice_jid, "resume-2 while alice was away")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = alice.sm_resume(addr).await?;
    assert_eq!(outcome, "resumed", "no new login\n{}", context());
    let got = alice
        .next_message()
        .await
        .map_err(|e| format!("{e}\n{}", context()))?;
    assert_eq!(got.body, "resume-2 while alice was away");

    alice
        .send_chat("bob@example.test", "resume-3 after resumption")
        .await?;
    assert_eq!(bob.next_message().await?.body, "resume-3 after resumption");
    bob.send_chat(&alice_jid, "resume-4 to the resumed session")
        .await?;
    assert_eq!(
        alice.next_message().await?.body,
        "resume-4 to the resumed session"
    );
    // The server acknowledges everything Alice sent, across both connections.
    let state = alice.sm_acknowledged(Duration::from_secs(5)).await?;
    assert_eq!(state.acked, state.sent, "{state:?}\n{}", context());
    assert_eq!(state.unacked, 0, "{state:?}");
    // Nothing twice: no message arrives again after resumption.
    alice.expect_no_message(Duration::from_millis(700)).await?;
    bob.expect_no_message(Duration::from_millis(300)).await?;

    // Each message once per stream it crossed: the sender's and the recipient's.
    for text in ["resume-1", "resume-2", "resume-3", "resume-4"] {
        custos.search_copies_until(text, 2, Duration::from_secs(10))?;
        // Time for a duplicate, had one been recorded, to reach the index.
        std::thread::sleep(Duration::from_millis(500));
        let hits = custos.search_copies(text)?;
        assert_eq!(hits.len(), 2, "{text}: {hits:#?}\n{}", context());
        assert!(
            hits.iter()
                .any(|h| h["account"].as_str() == Some(alice_jid.as_str())),
            "{text} on Alice's stream under her proven JID: {hits:#?}"
        );
    }
    Ok(())
}

/// The room the group-chat scenario meets in, and a second one for the barrier.
pub const ROOM: &str = "deals@conference.example.test";
pub const DESK: &str = "desk@conference.example.test";

/// Accounts the group-chat scenario needs besides [`crate::rig::USERS`]: Dave reaches the
/// server directly, around Custos; Erin is on the other side of a barrier from Alice.
pub const ROOM_USERS: &[(&str, &str)] = &[("dave", "dave-secret"), ("erin", "erin-secret")];

/// Research (Alice) and trading (Erin) may not meet, in a room either.
pub const ROOM_RULES: &str = r#"
[groups]
research = ["alice@example.test"]
trading = ["erin@example.test"]

[[barrier]]
id = "research-trading"
between = ["research", "trading"]
text = "Research and trading may not meet, in a room either."
"#;

/// Who takes part: Alice, Bob, Carol and Erin through Custos, Dave straight to the
/// server.
pub struct RoomMembers {
    pub alice: SlixClient,
    pub bob: SlixClient,
    pub carol: SlixClient,
    pub dave: SlixClient,
    pub erin: SlixClient,
}

async fn heard(c: &mut SlixClient, body: &str) -> Result<(), BoxError> {
    let who = c.jid().to_owned();
    c.wait_message(&format!("{body:?} in the room"), |m| {
        m.body == body && m.kind == "groupchat"
    })
    .await
    .map_err(|e| format!("{who} did not hear {body:?}: {e}"))?;
    Ok(())
}

/// A room with three members behind Custos and one outside, run with [`ROOM_RULES`]:
///
/// - what a member behind Custos says reaches every member once and is archived as one
///   logical message (the sender's copy and each echo), searchable by `room:`;
/// - what the member outside says is archived once per member behind Custos, as one
///   logical message naming the room, the nickname and the person behind it;
/// - the barrier refuses Erin's entry while Alice is inside (with the MUC element and
///   without it), refuses what Erin says to the room from outside it, and refuses Alice's
///   entry into, and private message to, the room Erin is in.
pub async fn group_chat(
    custos: &Custos,
    m: &mut RoomMembers,
    context: &dyn Fn() -> String,
) -> Result<(), BoxError> {
    let barrier = "Research and trading may not meet, in a room either.";
    // Alice creates the room and owns it; the others enter.
    for (c, nick) in [
        (&mut m.alice, "alice"),
        (&mut m.bob, "bob"),
        (&mut m.carol, "carol"),
        (&mut m.dave, "dave"),
    ] {
        if let Some(err) = c.join_room(ROOM, nick).await? {
            return Err(format!("{nick} could not enter {ROOM}: {err:?}\n{}", context()).into());
        }
    }

    // Erin may not enter while Alice is inside: Custos answers for the room.
    let refused = m
        .erin
        .join_room(ROOM, "erin")
        .await?
        .ok_or_else(|| format!("Erin entered a room Alice is in\n{}", context()))?;
    assert_eq!(refused.condition, "policy-violation", "{refused:?}");
    assert_eq!(refused.text, barrier, "{refused:?}");
    // Nor by a bare presence without the MUC element, which servers also take as entry.
    let nick = format!("{ROOM}/erin-again");
    m.erin.send_presence(Some(&nick), None, None, None).await?;
    let p = m
        .erin
        .wait_presence("the refusal of a bare entry", |p| p.from == nick)
        .await?;
    assert_eq!(p.kind, "error", "{p:?}\n{}", context());
    // Alice changes her nickname: she is still inside, and Erin still may not enter.
    let renamed = format!("{ROOM}/alice-renamed");
    m.alice
        .send_presence(Some(&renamed), None, None, None)
        .await?;
    let echo = "room-echo alice speaks under her new nickname";
    m.alice
        .send_message(OutgoingMessage {
            kind: "groupchat".into(),
            ..OutgoingMessage::chat(ROOM, echo)
        })
        .await?;
    m.alice
        .wait_message("the echo under the new nickname", |msg| {
            msg.body == echo && msg.from == renamed
        })
        .await
        .map_err(|e| format!("{e}\n{}", context()))?;
    let refused = m
        .erin
        .join_room(ROOM, "erin-later")
        .await?
        .ok_or_else(|| format!("Erin entered after Alice's nickname change\n{}", context()))?;
    assert_eq!(refused.condition, "policy-violation", "{refused:?}");
    // Speaking into the room from outside is refused by Custos too (the server would
    // refuse a non-occupant anyway; the record says who tried).
    let id = m
        .erin
        .send_message(OutgoingMessage {
            kind: "groupchat".into(),
            ..OutgoingMessage::chat(ROOM, "room-charlie erin slips a word in")
        })
        .await?;
    let err = m.erin.wait_stanza_error(&id).await?;
    assert_eq!(err.condition, "policy-violation", "{err:?}");

    // Alice speaks: every member hears it once.
    let alpha = "room-alpha the okapi desk opens at nine";
    m.alice
        .send_message(OutgoingMessage {
            kind: "groupchat".into(),
            ..OutgoingMessage::chat(ROOM, alpha)
        })
        .await?;
    for c in [&mut m.alice, &mut m.bob, &mut m.carol, &mut m.dave] {
        heard(c, alpha).await?;
    }
    // Dave, outside Custos, speaks.
    let bravo = "room-bravo dave confirms the okapi order";
    m.dave
        .send_message(OutgoingMessage {
            kind: "groupchat".into(),
            ..OutgoingMessage::chat(ROOM, bravo)
        })
        .await?;
    for c in [&mut m.alice, &mut m.bob, &mut m.carol, &mut m.dave] {
        heard(c, bravo).await?;
    }

    // Alpha: Alice's copy and the echo to each of the three behind Custos, one message.
    custos.search_copies_until("alpha", 4, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(700));
    let copies = custos.search_copies("alpha")?;
    assert_eq!(copies.len(), 4, "{copies:#?}\n{}", context());
    let hits = custos.search(&format!("room:{ROOM} alpha"))?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["from"], m.alice.jid(), "{:#}", hits[0]);
    // Bravo: one echo per member behind Custos, naming the nickname and the person.
    custos.search_copies_until("bravo", 3, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(700));
    let copies = custos.search_copies("bravo")?;
    assert_eq!(copies.len(), 3, "{copies:#?}\n{}", context());
    let hits = custos.search(&format!("room:{ROOM} bravo"))?;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["from"], format!("{ROOM}/dave"), "{:#}", hits[0]);
    assert_eq!(
        hits[0]["occupant"],
        m.dave.jid(),
        "the room revealed Dave to its owner: {:#}",
        hits[0]
    );
    // Found as Dave's words, though he never crossed Custos.
    let by_dave = custos.search("from:dave@example.test okapi")?;
    assert_eq!(by_dave.len(), 1, "{by_dave:#?}");
    // Erin's attempt is on the record, refused under the barrier.
    let tried = custos.search("charlie")?;
    assert_eq!(tried.len(), 1, "{tried:#?}");
    assert_eq!(tried[0]["action"], "block", "{:#}", tried[0]);
    assert_eq!(tried[0]["rules"][0], "research-trading", "{:#}", tried[0]);
    // Everything said in the room, and nothing else (the room's subject, which it sends
    // each member on entry, is on the record too).
    let room = custos.search(&format!("room:{ROOM}"))?;
    let mut said: Vec<&str> = room.iter().filter_map(|h| h["body"].as_str()).collect();
    said.sort_unstable();
    assert_eq!(
        said,
        [alpha, bravo, "room-charlie erin slips a word in", echo],
        "{room:#?}"
    );

    // The other way round: Erin is in a room first; Alice may neither enter it nor
    // write privately to Erin's nickname in it.
    if let Some(err) = m.erin.join_room(DESK, "erin").await? {
        return Err(format!("Erin could not enter {DESK}: {err:?}\n{}", context()).into());
    }
    let refused = m
        .alice
        .join_room(DESK, "alice")
        .await?
        .ok_or_else(|| format!("Alice entered a room Erin is in\n{}", context()))?;
    assert_eq!(refused.condition, "policy-violation", "{refused:?}");
    let id = m
        .alice
        .send_chat(&format!("{DESK}/erin"), "room-delta a private word")
        .await?;
    let err = m.alice.wait_stanza_error(&id).await?;
    assert_eq!(err.condition, "policy-violation", "{err:?}");
    assert_eq!(err.text, barrier, "{err:?}");
    Ok(())
}
