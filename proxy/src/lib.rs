//! The Custos proxy: sits between XMPP clients and an unmodified XMPP server, negotiates
//! TLS on both legs itself, and hands every stanza to an inspection point before
//! forwarding it.
//!
//! ```text
//!  client ──TLS──▶ server::accept ──▶ session (negotiation machine, then relay)
//!                                        │ framer: bytes → whole stanzas + parsed view
//!                                        ▼
//!                                   inspect::Inspector  (policy + archive plug in here)
//!                                        │ Decision: forward / replace / refuse
//!                                        ▼
//!  upstream ◀──TLS── original bytes (or the replacement), error stanzas back to the sender
//! ```
//!
//! Layout:
//! - [`framer`]: bytes → stream header / stanza / whitespace / stream end; limits and
//!   restricted XML. Knows no XMPP semantics.
//! - [`xml`]: the small element tree stanzas are parsed into, and its serialisation.
//! - [`stanza`]: the parsed view of a stanza handed to inspection.
//! - [`negotiation`]: the sans-I/O stream negotiation state machine.
//! - [`features`]: which upstream stream features a client may see through the proxy.
//! - [`session`]: the per-connection driver: negotiation I/O, then hands over to `relay`.
//! - `relay`: the two relay directions and their sockets, stream management bookkeeping on
//!   each leg.
//! - [`relay_state`]: the relay's protocol decisions without I/O: proven identity,
//!   what passes before bind, `from` checks, which wrappers the server vouches for.
//! - [`server`]: listeners, connection cap, shutdown and drain.
//! - [`inspect`]: the inspection point ([`Inspector`], [`Decision`]).
//! - [`stream`]: the stream-level elements Custos writes itself.
//! - [`tls`]: rustls configuration for both legs.
//! - [`error`]: why a session ended, by whose fault, and the stream error it maps to.

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a crash on peer data.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod alerts;
mod conn;
pub mod error;
pub mod features;
pub mod files;
pub mod framer;
pub mod inspect;
mod io;
pub mod negotiation;
pub mod pipeline;
mod relay;
pub mod relay_state;
pub mod reply;
pub mod rooms;
pub mod server;
mod session;
pub mod sm;
pub mod stanza;
pub mod stream;
pub mod tls;
pub mod websocket;
pub mod xml;

pub use inspect::{
    Decision, Direction, Durable, Inspected, Inspection, Inspector, Outcome, PassThrough,
    SessionInfo,
};
pub use server::{
    BoundProxy, Limits, ListenerConfig, ListenerMode, Proxy, ProxyConfig, UpstreamConfig,
};
