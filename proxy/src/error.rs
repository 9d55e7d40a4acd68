//! Why a session ended, grouped by whose fault it was, and the stream error condition
//! (RFC 6120 §4.9.3) each cause puts on the wire toward the client.

use std::io;

use crate::framer::FrameError;

/// What went wrong on one proxied session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client broke the protocol or a limit.
    #[error("client: {0}")]
    Client(#[from] ClientFault),
    /// The upstream server could not be reached, failed verification or misbehaved.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamFault),
    /// Custos itself is stopping.
    #[error("shutting down")]
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientFault {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("closed the connection")]
    Closed,
    #[error("read failed: {0}")]
    Io(io::Error),
    #[error("sent {got} while {expected} was required")]
    Unexpected { expected: &'static str, got: String },
    #[error("sent data after <starttls/> before the TLS handshake")]
    DataBeforeTls,
    #[error("asked for no domain and none is configured")]
    NoDomain,
    /// A stanza before SASL success and resource binding (RFC 6120 §6.4.6, §7.1).
    #[error("sent a {0} stanza before authenticating and binding a resource")]
    NotAuthorized(String),
    /// A `from` that is not the session's JID (RFC 6120 §4.9.3.9).
    #[error("wrote from={claimed:?} while its session is {account}")]
    InvalidFrom { claimed: String, account: String },
    /// A first-level element that is neither a stanza nor a stream-level element Custos
    /// carries (RFC 6120 §4.9.3.24): passing it on unread could carry a message past
    /// inspection.
    #[error("sent an unsupported first-level element {0}")]
    UnsupportedElement(String),
    /// SASL again on a session that already authenticated.
    #[error("tried to authenticate again on an authenticated session")]
    Reauthentication,
    /// The resource the server bound for the session is refused by policy: it is in
    /// the address of everything the session sends.
    #[error("bound the resource {0:?}, which policy refuses")]
    ResourceRefused(String),
    /// The record of the server's answer binding the session's resource could not be
    /// written (a rule matched the resource, and the archive refuses writes): the
    /// answer is not delivered.
    #[error("bound the resource {0:?}, whose record the archive could not write")]
    BindNotArchived(String),
    /// The record of the Bind2 tag policy took out of the client's SASL2 request could
    /// not be written (the archive refuses writes): the success is not delivered.
    #[error("named a Bind2 tag policy refused, whose record the archive could not write")]
    Bind2TagNotArchived,
    /// A restarted stream's header names another domain than the stream it replaces.
    #[error("restarted its stream for {got:?} instead of {expected:?}")]
    OtherDomain { expected: String, got: String },
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamFault {
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("TLS with the upstream failed: {0}")]
    Tls(io::Error),
    #[error("invalid server name {0:?} for TLS")]
    ServerName(String),
    #[error("does not offer STARTTLS")]
    NoStartTls,
    #[error("refused STARTTLS")]
    StartTlsRefused,
    #[error("sent malformed XML: {0}")]
    Frame(FrameError),
    #[error("sent {got} while {expected} was expected")]
    Unexpected { expected: &'static str, got: String },
    #[error("closed the connection")]
    Closed,
    #[error("I/O failed: {0}")]
    Io(io::Error),
}

impl SessionError {
    /// The stream error condition sent to the client for this cause, with the text a
    /// person reading the client's log should see. `None`: nothing more can be written
    /// (the client is gone).
    pub fn client_condition(&self) -> Option<(&'static str, String)> {
        match self {
            SessionError::Client(fault) => match fault {
                ClientFault::Frame(e) => Some((e.condition(), e.to_string())),
                ClientFault::Timeout(what) => Some((
                    "connection-timeout",
                    format!("timed out waiting for {what}"),
                )),
                ClientFault::Unexpected { expected, .. } => Some((
                    if *expected == "<starttls/>" {
                        "policy-violation"
                    } else {
                        "bad-format"
                    },
                    format!("{expected} required"),
                )),
                ClientFault::DataBeforeTls => Some((
                    "policy-violation",
                    "data sent after <starttls/> before the TLS handshake".into(),
                )),
                ClientFault::NoDomain => {
                    Some(("host-unknown", "the stream header names no domain".into()))
                }
                ClientFault::NotAuthorized(_) => Some((
                    "not-authorized",
                    "authenticate and bind a resource before sending stanzas".into(),
                )),
                ClientFault::InvalidFrom { .. } => Some((
                    "invalid-from",
                    "the from address is not this session's address".into(),
                )),
                ClientFault::UnsupportedElement(_) => Some((
                    "unsupported-stanza-type",
                    "not a stanza or a stream-level element this service carries".into(),
                )),
                ClientFault::Reauthentication => Some((
                    "policy-violation",
                    "this session has already authenticated".into(),
                )),
                ClientFault::ResourceRefused(_) => Some((
                    "policy-violation",
                    "this resource is refused by the firm's policy: connect with another".into(),
                )),
                ClientFault::BindNotArchived(_) => Some((
                    "internal-server-error",
                    "the archive could not record this session's resource; connect again".into(),
                )),
                ClientFault::Bind2TagNotArchived => Some((
                    "internal-server-error",
                    "the archive could not record this session's bind request; connect again"
                        .into(),
                )),
                ClientFault::OtherDomain { .. } => Some((
                    "host-unknown",
                    "a restarted stream must name the same domain".into(),
                )),
                ClientFault::Tls(_) | ClientFault::Closed | ClientFault::Io(_) => None,
            },
            // The cause (addresses, certificate details) goes to the operator's log, not to
            // an unauthenticated peer.
            SessionError::Upstream(_) => Some((
                "remote-connection-failed",
                "the XMPP server behind this proxy is unavailable".into(),
            )),
            SessionError::Shutdown => Some(("system-shutdown", "the proxy is restarting".into())),
        }
    }
}
