//! End-to-end harness for Custos: a real Prosody, real XMPP clients and test
//! certificates, each started on loopback ports picked at run time and torn
//! down by pid when the handle drops.
//!
//! # Layout
//!
//! - [`tools`]: where the workspace, the test venv's Python, `prosody`,
//!   `prosodyctl` and `go-sendxmpp` are; a missing tool is an error that
//!   says to run `scripts/setup.sh`.
//! - [`dir`]: [`TestDir`], a temporary directory kept on request.
//! - [`net`]: free loopback ports and "wait until this port accepts".
//! - [`certs`]: a test CA and leaf certificates written as PEM files.
//! - [`prosody`]: [`Prosody`], a private Prosody server per test.
//! - [`jabberd2`]: [`jabberd2::Jabberd2`], a private jabberd2 server (router, session
//!   manager, c2s) per test, a second server implementation behind the proxy.
//! - [`ejabberd`]: [`ejabberd::Ejabberd`], a private ejabberd node per test (c2s and the
//!   Erlang distribution on loopback only, stream management with resumption), a third.
//! - [`slix`]: [`SlixClient`], a slixmpp client driven over JSON lines.
//! - [`scripted`]: [`scripted::Scripted`], a raw client that writes whatever XML a test
//!   gives it (forged senders, wrappers, stanzas before authentication).
//! - [`sendxmpp`]: one-shot sends and a listener through `go-sendxmpp`.
//! - [`process`]: stopping children by pid (SIGTERM, then SIGKILL).
//! - [`smtp`]: [`smtp::SmtpServer`], a real SMTP server (aiosmtpd) filling a Maildir.
//! - [`prometheus`]: [`prometheus::Prometheus`], a real Prometheus scraping a target.
//! - [`s3`]: [`s3::S3Server`], a real S3 server with Object Lock (moto), and a boto3
//!   probe that inspects and attacks its bucket.
//!
//! ```text
//!   TestDir ──▶ TestCa ──▶ LeafCert (example.test, localhost, 127.0.0.1)
//!                  │            │
//!                  │            ▼
//!                  │   Prosody::start ── c2s 127.0.0.1:<free port> (STARTTLS)
//!                  │            │       └ direct TLS 127.0.0.1:<free port> (XEP-0368)
//!                  ▼            ▼
//!     SlixClient / go-sendxmpp (trust the CA, verify the server name)
//! ```
//!
//! Scenario tests put the proxy between the clients and [`Prosody`]; the
//! self-tests in `tests/harness.rs` connect the clients to Prosody directly.
#![forbid(unsafe_code)]

pub mod certs;
pub mod config;
pub mod converse;
pub mod custos;
pub mod dir;
pub mod ejabberd;
pub mod jabberd2;
pub mod net;
pub mod process;
pub mod prometheus;
pub mod prosody;
pub mod rig;
pub mod s3;
pub mod scenarios;
pub mod scripted;
pub mod sendxmpp;
pub mod slix;
pub mod smtp;
pub mod tools;
pub mod ws;

pub use certs::{CertError, LeafCert, TestCa};
pub use dir::TestDir;
pub use net::{free_port, wait_for_port};
pub use prosody::{Prosody, ProsodyError, ProsodyOptions, User};
pub use sendxmpp::{go_sendxmpp_send, SendxmppError, SendxmppListener, SendxmppOptions};
pub use slix::{
    ClientError, ConnectOptions, IncomingMessage, OutgoingMessage, PingOutcome, Presence,
    RosterItem, SlixClient, SmState, StanzaError, Tls,
};
pub use tools::{ToolError, Tools};
