//! Scenarios run unchanged in front of each server the suite starts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::custos::Custos;
use crate::rig::BoxError;
use crate::slix::SlixClient;

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
