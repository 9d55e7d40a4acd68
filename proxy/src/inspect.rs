//! The inspection point: every stanza, in both directions, is handed to an [`Inspector`]
//! with its parsed view and its original bytes, and the inspector decides what the proxy
//! forwards. Policy and the archive plug in here; the proxy itself decides nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::framer::Stanza;
pub use crate::relay_state::Copy;
use crate::stanza::StanzaView;

/// Which way a stanza travels, seen from the users behind Custos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the user behind Custos (client → server).
    Outbound,
    /// Received by the user behind Custos (server → client).
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// What is known about a session when a stanza passes.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Process-unique connection id, the same as in the connection's log span.
    pub id: u64,
    pub client_addr: SocketAddr,
    /// The domain the client asked for in its stream header.
    pub domain: String,
    /// The full JID the session proved: the upstream's answer to this session's own
    /// bind request, or the JID of the session it resumed. Never what a client wrote.
    pub jid: Option<String>,
    /// The server's answer binding a resource the client named is being inspected (an
    /// RFC 6120 bind result, or Bind2's SASL2 success for a tag the client named): that
    /// resource is the client's words, not one the server picked or a resumed session's.
    /// Set for that answer alone.
    pub chose_resource: bool,
}

/// One stanza offered for inspection.
#[derive(Debug)]
pub struct Inspected<'a> {
    pub direction: Direction,
    pub session: &'a SessionInfo,
    /// The parsed view, with `from`/`to` filled in from the session where the wire omits
    /// them (RFC 6120 §8.1.2.1, §10.3): outbound `from` is the bound JID; inbound `to` is the
    /// bound JID and a missing inbound `from` is the user's own account.
    pub view: &'a StanzaView,
    /// The stanza exactly as received, parsed tree included.
    pub stanza: &'a Stanza,
    /// How far the upstream vouches for a carbon or archive-result wrapper in it; a
    /// wrapper a client sends is never believed.
    pub copy: Copy,
    /// A `from` the client wrote that is not its session's JID. The stanza is refused and
    /// the stream ends with `<invalid-from/>`; the inspector records the attempt.
    pub claimed_from: Option<&'a str>,
}

/// What the proxy does with an inspected stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the original bytes unchanged.
    Forward,
    /// Forward these bytes instead (a redacted stanza).
    Replace(Vec<u8>),
    /// Deliver nothing; write `error` (a stanza error for the sender), if any, back to the
    /// leg the stanza came from.
    Refuse { error: Option<Vec<u8>> },
}

/// Extra stanzas an inspector wants sent besides the decision (a disclaimer notice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injections {
    pub to_client: Vec<Vec<u8>>,
    pub to_upstream: Vec<Vec<u8>>,
}

/// The full answer for one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    pub inject: Injections,
}

impl Outcome {
    pub fn forward() -> Outcome {
        Outcome {
            decision: Decision::Forward,
            inject: Injections::default(),
        }
    }
}

/// What the sender of a stanza the archive could not write is told.
pub const NOT_ARCHIVED: &str =
    "The message could not be archived and was not delivered. Try again later.";

/// Resolves once the stanza's record is durable; `Err` (the archive's reason) when it
/// could not be written and the stanza must not be delivered.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// The inspector's answer: the outcome, and whether it waits on a record.
pub struct Inspection {
    pub outcome: Outcome,
    /// The stanza's record, queued in the log in the order stanzas were inspected: the
    /// outcome holds once it resolves `Ok`; on `Err` the stanza is refused instead
    /// (`internal-server-error` to its sender) and the injections are not sent.
    pub durable: Option<Durable>,
}

impl From<Outcome> for Inspection {
    fn from(outcome: Outcome) -> Inspection {
        Inspection {
            outcome,
            durable: None,
        }
    }
}

impl Inspection {
    /// The outcome once the record is durable: a stanza whose record failed is refused
    /// without an error stanza (the relay, which knows the addresses, writes one).
    pub async fn settled(self) -> Outcome {
        if let Some(durable) = self.durable {
            if durable.await.is_err() {
                return Outcome {
                    decision: Decision::Refuse { error: None },
                    inject: Injections::default(),
                };
            }
        }
        self.outcome
    }
}

impl std::fmt::Debug for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspection")
            .field("outcome", &self.outcome)
            .field("durable", &self.durable.is_some())
            .finish()
    }
}

/// Decides the fate of every stanza. Implementations must be cheap to share between all
/// sessions. `inspect` is called for the stanzas of one direction in wire order and may
/// await (a file fetch); it queues the stanza's record and returns without waiting for it
/// to be durable, so the relay can read and inspect the next stanza meanwhile. The relay
/// forwards each stanza only once its [`Inspection::durable`] resolved, in wire order.
pub trait Inspector: Send + Sync + 'static {
    fn inspect(&self, item: Inspected<'_>) -> impl Future<Output = Inspection> + Send;

    /// Called once negotiation succeeded and relaying starts.
    fn session_started(&self, _session: &SessionInfo) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Whether policy refuses (blocks or redacts) `text` as words the user sends, before
    /// any stanza carries them: a Bind2 tag, which the server makes part of the resource.
    /// Nothing is recorded: the session has no account yet. The resource the server then
    /// builds is inspected again, as the answer that binds it, once the account is known.
    fn refuses_words(
        &self,
        _session: &SessionInfo,
        _text: &str,
    ) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// Called once the session's full JID is known (the resource-binding result).
    fn session_bound(&self, _session: &SessionInfo) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called when a session that started ends, whatever the cause.
    fn session_ended(
        &self,
        _session: &SessionInfo,
        _reason: &str,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Forwards everything: the proxy without policy or archive.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Inspector for PassThrough {
    async fn inspect(&self, _item: Inspected<'_>) -> Inspection {
        Outcome::forward().into()
    }
}
