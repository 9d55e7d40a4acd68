//! [`SlixClient`]: a real XMPP client (slixmpp) in a Python child process,
//! driven over JSON lines.
//!
//! ```text
//!  test ──cmd {"id":n,...}──▶ stdin ┐
//!                                   python tests/clients/client.py ──TLS──▶ server
//!  reader task ◀── stdout ──────────┘  {"reply":n,...} → the waiting call
//!      │                               {"event":...}   → per-kind queues
//!      └── stderr → bounded tail quoted in every error
//! ```
//!
//! Every wait is bounded by a timeout. The process is stopped by pid on drop.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::process::{tail, terminate};
use crate::tools::{self, ToolError};

/// Default bound on each wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the client's stderr an error quotes.
const STDERR_TAIL: usize = 3000;

/// How the client secures its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP, then STARTTLS (RFC 6120 §5).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

impl Tls {
    fn as_str(self) -> &'static str {
        match self {
            Tls::StartTls => "starttls",
            Tls::Direct => "direct",
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Full or bare JID to log in as.
    pub jid: String,
    /// The account password.
    pub password: String,
    /// Server (or proxy) address; the TLS server name is the JID's domain.
    pub addr: SocketAddr,
    /// STARTTLS or Direct TLS.
    pub tls: Tls,
    /// The only trust anchor (PEM); verification is never disabled.
    pub ca_file: PathBuf,
    /// Enable XEP-0198 stream management.
    pub stream_management: bool,
    /// Bound on each wait, including connecting.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Options with STARTTLS, no stream management and [`DEFAULT_TIMEOUT`].
    pub fn new(jid: &str, password: &str, addr: SocketAddr, ca_file: impl Into<PathBuf>) -> Self {
        Self {
            jid: jid.to_string(),
            password: password.to_string(),
            addr,
            tls: Tls::StartTls,
            ca_file: ca_file.into(),
            stream_management: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The client process failed, a command was refused, or a wait timed out.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Python is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Spawning or talking to the process failed.
    #[error("client {jid}: {what}: {source}\n--- client stderr ---\n{stderr}")]
    Io {
        /// The client's JID.
        jid: String,
        /// What the harness was doing.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
        /// Tail of the client's stderr.
        stderr: String,
    },
    /// The script reported failure for a command (e.g. authentication).
    #[error("client {jid}: {cmd} failed: {error}\n--- client stderr ---\n{stderr}")]
    Command {
        /// The client's JID.
        jid: String,
        /// The command name.
        cmd: String,
        /// The script's error text.
        error: String,
        /// Tail of the client's stderr.
        stderr: String,
    },
    /// Nothing arrived within the bound.
    #[error("client {jid}: timed out after {after:?} waiting for {what}\n--- client stderr ---\n{stderr}")]
    Timeout {
        /// The client's JID.
        jid: String,
        /// What was awaited.
        what: String,
        /// The bound.
        after: Duration,
        /// Tail of the client's stderr.
        stderr: String,
    },
    /// The process exited (stdout closed).
    #[error(
        "client {jid}: process exited while waiting for {what}\n--- client stderr ---\n{stderr}"
    )]
    Exited {
        /// The client's JID.
        jid: String,
        /// What was awaited.
        what: String,
        /// Tail of the client's stderr.
        stderr: String,
    },
    /// The script sent something the harness cannot read.
    #[error("client {jid}: unexpected output for {what}: {detail}")]
    Protocol {
        /// The client's JID.
        jid: String,
        /// What was awaited.
        what: String,
        /// The problem.
        detail: String,
    },
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    /// Recipient JID.
    pub to: String,
    /// Body text.
    pub body: String,
    /// `chat` (default when empty), `normal`, `groupchat`, `headline`.
    pub kind: String,
    /// Stanza id; the harness generates one when `None`.
    pub id: Option<String>,
    /// Optional `<subject/>`.
    pub subject: Option<String>,
    /// Optional `<thread/>`.
    pub thread: Option<String>,
    /// Extra child elements, as XML text (each with its own `xmlns`).
    pub payloads: Vec<String>,
}

impl OutgoingMessage {
    /// A `type="chat"` message.
    pub fn chat(to: &str, body: &str) -> Self {
        Self {
            to: to.to_string(),
            body: body.to_string(),
            kind: "chat".to_string(),
            ..Self::default()
        }
    }
}

/// A message the client received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IncomingMessage {
    /// Sender (full JID as delivered).
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message type (`chat`, `normal`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Stanza id, if any.
    pub id: Option<String>,
    /// Body text (empty if none).
    pub body: String,
    /// Subject, if any.
    pub subject: Option<String>,
    /// Thread, if any.
    pub thread: Option<String>,
}

/// A `type="error"` stanza received in reply to something sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StanzaError {
    /// Who returned the error.
    pub from: String,
    /// The id of the stanza the error answers.
    pub id: Option<String>,
    /// Defined condition, e.g. `policy-violation`.
    pub condition: String,
    /// Human-readable `<text/>` (empty if none).
    pub text: String,
    /// Error type (`cancel`, `modify`, `auth`, `wait`).
    pub error_type: String,
}

/// A presence stanza the client received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// `available`, `unavailable`, `subscribe`, `subscribed`, … (slixmpp
    /// reports the `<show/>` value for available presence that has one).
    #[serde(rename = "type")]
    pub kind: String,
    /// `<show/>`, if any.
    pub show: Option<String>,
    /// `<status/>`, if any.
    pub status: Option<String>,
}

/// One roster entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RosterItem {
    /// Contact JID.
    pub jid: String,
    /// Display name, if set.
    pub name: Option<String>,
    /// `none`, `to`, `from`, `both`, `remove`.
    pub subscription: String,
    /// Roster groups.
    pub groups: Vec<String>,
}

/// The result of an XEP-0199 ping.
#[derive(Debug, Clone, PartialEq)]
pub enum PingOutcome {
    /// A result IQ arrived after `rtt`.
    Pong {
        /// Round-trip time.
        rtt: Duration,
    },
    /// An error IQ arrived.
    Error {
        /// Defined condition.
        condition: String,
        /// `<text/>`.
        text: String,
    },
    /// No answer within the ping's timeout.
    Timeout,
}

/// The client's XEP-0198 counters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SmState {
    /// Whether the server answered `<enabled/>`.
    pub enabled: bool,
    /// The resumption id, if the server gave one.
    #[serde(default)]
    pub id: Option<String>,
    /// Stanzas this client has handled (its `h`).
    #[serde(default)]
    pub handled: u32,
    /// Stanzas this client has sent while SM was on.
    #[serde(default)]
    pub sent: u32,
    /// The last `h` the server acknowledged.
    #[serde(default)]
    pub acked: u32,
    /// Sent stanzas not yet acknowledged.
    #[serde(default)]
    pub unacked: u32,
}

/// Drops the queued items before the first that `pred` accepts, and returns that one.
fn pop_until<T>(queue: &mut VecDeque<T>, pred: &mut impl FnMut(&T) -> bool) -> Option<T> {
    while let Some(item) = queue.pop_front() {
        if pred(&item) {
            return Some(item);
        }
    }
    None
}

#[derive(Default)]
struct Queues {
    messages: VecDeque<IncomingMessage>,
    errors: VecDeque<StanzaError>,
    presences: VecDeque<Presence>,
    /// `stream_error` and `disconnected` events, raw.
    other: VecDeque<Value>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A slixmpp client process. See the module docs.
pub struct SlixClient {
    child: Child,
    stdin: ChildStdin,
    pending: Pending,
    /// Wakes waiters when an event is queued; `None` once stdout closed.
    notify: mpsc::UnboundedReceiver<()>,
    queues: Arc<Mutex<Queues>>,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
    login_jid: String,
    bound_jid: String,
    timeout: Duration,
}

impl std::fmt::Debug for SlixClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlixClient")
            .field("jid", &self.bound_jid)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SlixClient {
    /// Starts the client process and logs in; returns once the session is
    /// online (resource bound, roster fetched, initial presence sent).
    pub async fn connect(opts: ConnectOptions) -> Result<Self, ClientError> {
        let python = tools::python()?;
        let script = tools::clients_dir().join("client.py");
        let io = |what: &'static str| {
            let jid = opts.jid.clone();
            move |source| ClientError::Io {
                jid,
                what,
                source,
                stderr: String::new(),
            }
        };
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawning client.py"))?;
        let stdin = child.stdin.take().ok_or_else(|| ClientError::Protocol {
            jid: opts.jid.clone(),
            what: "spawn".into(),
            detail: "no stdin pipe".into(),
        })?;
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();

        let pending: Pending = Arc::default();
        let queues: Arc<Mutex<Queues>> = Arc::default();
        let stderr: Arc<Mutex<String>> = Arc::default();
        let (notify_tx, notify) = mpsc::unbounded_channel();

        if let Some(out) = stdout {
            tokio::spawn(read_stdout(
                out,
                Arc::clone(&pending),
                Arc::clone(&queues),
                notify_tx,
            ));
        }
        if let Some(err) = stderr_pipe {
            tokio::spawn(read_stderr(err, Arc::clone(&stderr)));
        }

        let mut client = Self {
            child,
            stdin,
            pending,
            notify,
            queues,
            stderr,
            next_id: 0,
            login_jid: opts.jid.clone(),
            bound_jid: opts.jid.clone(),
            timeout: opts.timeout,
        };
        let reply = client
            .command(
                "connect",
                json!({
                    "jid": opts.jid,
                    "password": opts.password,
                    "host": opts.addr.ip().to_string(),
                    "port": opts.addr.port(),
                    "tls": opts.tls.as_str(),
                    "ca_file": opts.ca_file,
                    "sm": opts.stream_management,
                }),
            )
            .await?;
        if let Some(jid) = reply.get("jid").and_then(Value::as_str) {
            client.bound_jid = jid.to_string();
        }
        Ok(client)
    }

    /// The full JID the server bound for this session.
    pub fn jid(&self) -> &str {
        &self.bound_jid
    }

    /// The client process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Changes the bound on later waits.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The last few KB of the client's stderr (slixmpp warnings, tracebacks).
    pub fn stderr_tail(&self) -> String {
        tail(&lock(&self.stderr), STDERR_TAIL)
    }

    /// Sends a message; returns the stanza id it carried.
    pub async fn send_message(&mut self, msg: OutgoingMessage) -> Result<String, ClientError> {
        let id = match msg.id {
            Some(id) => id,
            None => format!("e2e-{}-{}", std::process::id(), self.next_id + 1),
        };
        let kind = if msg.kind.is_empty() {
            "chat".to_string()
        } else {
            msg.kind
        };
        self.command(
            "send_message",
            json!({
                "to": msg.to, "body": msg.body, "type": kind, "msg_id": id,
                "subject": msg.subject, "thread": msg.thread, "payloads": msg.payloads,
            }),
        )
        .await?;
        Ok(id)
    }

    /// Sends a `type="chat"` message to `to`; returns its id.
    pub async fn send_chat(&mut self, to: &str, body: &str) -> Result<String, ClientError> {
        self.send_message(OutgoingMessage::chat(to, body)).await
    }

    /// The next message received (queued ones first), within the timeout.
    pub async fn next_message(&mut self) -> Result<IncomingMessage, ClientError> {
        self.wait_for("a message", |q| q.messages.pop_front()).await
    }

    /// Waits for a message matching `pred`, dropping the ones before it (a room's subject,
    /// say), within the timeout.
    pub async fn wait_message(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&IncomingMessage) -> bool,
    ) -> Result<IncomingMessage, ClientError> {
        self.wait_for(what, |q| pop_until(&mut q.messages, &mut pred))
            .await
    }

    /// Waits the full `quiet` period and fails if a message arrives in it.
    /// For checking that something was *not* delivered.
    pub async fn expect_no_message(&mut self, quiet: Duration) -> Result<(), ClientError> {
        let saved = self.timeout;
        self.timeout = quiet;
        let got = self
            .wait_for("no message", |q| q.messages.pop_front())
            .await;
        self.timeout = saved;
        match got {
            Err(ClientError::Timeout { .. }) => Ok(()),
            Err(e) => Err(e),
            Ok(m) => Err(ClientError::Protocol {
                jid: self.login_jid.clone(),
                what: "no message".into(),
                detail: format!("unexpected message {m:?}"),
            }),
        }
    }

    /// Waits for the error stanza answering the stanza with id `id`.
    pub async fn wait_stanza_error(&mut self, id: &str) -> Result<StanzaError, ClientError> {
        let what = format!("an error for stanza {id}");
        self.wait_for(&what, |q| {
            let pos = q.errors.iter().position(|e| e.id.as_deref() == Some(id))?;
            q.errors.remove(pos)
        })
        .await
    }

    /// Sends presence. `to: None` broadcasts; `kind` is e.g. `subscribe`,
    /// `subscribed`, `unavailable`, or `None` for available.
    pub async fn send_presence(
        &mut self,
        to: Option<&str>,
        kind: Option<&str>,
        show: Option<&str>,
        status: Option<&str>,
    ) -> Result<(), ClientError> {
        self.command(
            "send_presence",
            json!({"to": to, "type": kind, "show": show, "status": status}),
        )
        .await
        .map(drop)
    }

    /// The next presence received, within the timeout.
    pub async fn next_presence(&mut self) -> Result<Presence, ClientError> {
        self.wait_for("a presence", |q| q.presences.pop_front())
            .await
    }

    /// Waits for a presence matching `pred`, dropping the ones before it.
    pub async fn wait_presence(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Presence) -> bool,
    ) -> Result<Presence, ClientError> {
        self.wait_for(what, |q| pop_until(&mut q.presences, &mut pred))
            .await
    }

    /// Enters a group-chat room (XEP-0045) as `nick` and waits for the room's answer:
    /// `Ok(None)` once the room sent the entering occupant's own presence, `Ok(Some(e))`
    /// when it answered with an error (a refused entry).
    pub async fn join_room(
        &mut self,
        room: &str,
        nick: &str,
    ) -> Result<Option<StanzaError>, ClientError> {
        let reply = self
            .command("join_room", json!({"room": room, "nick": nick}))
            .await?;
        if reply.get("joined").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let field = |name: &str| {
            reply
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Some(StanzaError {
            from: format!("{room}/{nick}"),
            id: None,
            condition: field("condition"),
            text: field("text"),
            error_type: field("error_type"),
        }))
    }

    /// Shares the file at `path` with `to` as a real client does (XEP-0363): a slot from
    /// the upload service `service`, an HTTP PUT, then a message whose body is the file's
    /// address, with an out-of-band element. Returns the address and the message id.
    pub async fn share_file(
        &mut self,
        path: &std::path::Path,
        content_type: &str,
        service: &str,
        to: &str,
    ) -> Result<(String, String), ClientError> {
        let reply = self
            .command(
                "share_file",
                json!({"path": path, "content_type": content_type, "service": service, "to": to}),
            )
            .await?;
        let field = |name: &str| {
            reply
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok((field("url"), field("msg_id")))
    }

    /// Leaves a group-chat room.
    pub async fn leave_room(&mut self, room: &str, nick: &str) -> Result<(), ClientError> {
        self.command("leave_room", json!({"room": room, "nick": nick}))
            .await
            .map(drop)
    }

    /// Fetches the roster from the server.
    pub async fn roster(&mut self) -> Result<Vec<RosterItem>, ClientError> {
        let reply = self.command("roster_get", json!({})).await?;
        let items = reply.get("items").cloned().unwrap_or(Value::Null);
        serde_json::from_value(items).map_err(|e| self.protocol("roster_get", e))
    }

    /// Adds or updates a roster item (a roster set IQ).
    pub async fn roster_set(&mut self, jid: &str, name: Option<&str>) -> Result<(), ClientError> {
        self.command("roster_set", json!({"jid": jid, "name": name}))
            .await
            .map(drop)
    }

    /// Pings `jid` (XEP-0199), waiting at most `limit` for the answer.
    pub async fn ping(&mut self, jid: &str, limit: Duration) -> Result<PingOutcome, ClientError> {
        let reply = self
            .command("ping", json!({"jid": jid, "timeout": limit.as_secs_f64()}))
            .await?;
        let field = |k: &str| {
            reply
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match reply.get("result").and_then(Value::as_str) {
            Some("pong") => {
                let secs = reply.get("rtt").and_then(Value::as_f64).unwrap_or(0.0);
                Ok(PingOutcome::Pong {
                    rtt: Duration::try_from_secs_f64(secs).unwrap_or_default(),
                })
            }
            Some("error") => Ok(PingOutcome::Error {
                condition: field("condition"),
                text: field("text"),
            }),
            Some("timeout") => Ok(PingOutcome::Timeout),
            other => Err(ClientError::Protocol {
                jid: self.login_jid.clone(),
                what: "ping".into(),
                detail: format!("result {other:?}"),
            }),
        }
    }

    /// The client's stream-management counters.
    pub async fn sm_state(&mut self) -> Result<SmState, ClientError> {
        let reply = self.command("sm_state", json!({})).await?;
        serde_json::from_value(reply).map_err(|e| self.protocol("sm_state", e))
    }

    /// Sends `<r/>` so the server answers with its `<a h=…/>`.
    pub async fn sm_request_ack(&mut self) -> Result<(), ClientError> {
        self.command("sm_request_ack", json!({})).await.map(drop)
    }

    /// Asks the server for an acknowledgement and waits (at most `limit`) until it has
    /// acknowledged everything sent; the counters as they then stand.
    pub async fn sm_acknowledged(&mut self, limit: Duration) -> Result<SmState, ClientError> {
        self.sm_request_ack().await?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            let s = self.sm_state().await?;
            if (s.sent > 0 && s.acked == s.sent) || std::time::Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops the TCP connection without closing the stream (a network failure), keeping
    /// the stream-management session for [`SlixClient::sm_resume`]. Its id.
    pub async fn sm_drop(&mut self) -> Result<String, ClientError> {
        let reply = self.command("sm_drop", json!({})).await?;
        Ok(reply
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Connects to `addr` again after [`SlixClient::sm_drop`] and waits for the outcome:
    /// `resumed`, `failed` (the server refused the resumption) or `new-session` (the
    /// client logged in afresh).
    pub async fn sm_resume(&mut self, addr: SocketAddr) -> Result<String, ClientError> {
        let reply = self
            .command(
                "sm_resume",
                json!({"host": addr.ip().to_string(), "port": addr.port()}),
            )
            .await?;
        Ok(reply
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Ends the stream cleanly and waits for the disconnect.
    pub async fn disconnect(&mut self) -> Result<(), ClientError> {
        self.command("disconnect", json!({})).await.map(drop)
    }

    /// Stream errors and disconnect events received so far (raw JSON).
    pub fn other_events(&self) -> Vec<Value> {
        lock(&self.queues).other.drain(..).collect()
    }

    fn protocol(&self, what: &str, e: serde_json::Error) -> ClientError {
        ClientError::Protocol {
            jid: self.login_jid.clone(),
            what: what.into(),
            detail: e.to_string(),
        }
    }

    async fn command(&mut self, cmd: &str, mut args: Value) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        if let Value::Object(map) = &mut args {
            map.insert("id".into(), json!(id));
            map.insert("cmd".into(), json!(cmd));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = args.to_string();
        line.push('\n');
        let write = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        if let Err(source) = write.await {
            return Err(ClientError::Io {
                jid: self.login_jid.clone(),
                what: "writing command",
                source,
                stderr: self.stderr_tail(),
            });
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => {
                return Err(ClientError::Exited {
                    jid: self.login_jid.clone(),
                    what: format!("reply to {cmd}"),
                    stderr: self.settled_stderr().await,
                })
            }
            Err(_) => {
                lock(&self.pending).remove(&id);
                return Err(ClientError::Timeout {
                    jid: self.login_jid.clone(),
                    what: format!("reply to {cmd}"),
                    after: self.timeout,
                    stderr: self.stderr_tail(),
                });
            }
        };
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(reply)
        } else {
            Err(ClientError::Command {
                jid: self.login_jid.clone(),
                cmd: cmd.to_string(),
                error: reply
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error text")
                    .to_string(),
                stderr: self.stderr_tail(),
            })
        }
    }

    /// Stderr after the process died: give the reader a moment to drain.
    async fn settled_stderr(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stderr_tail()
    }

    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut take: impl FnMut(&mut Queues) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(v) = take(&mut lock(&self.queues)) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, self.notify.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => {
                    // stdout closed: one last look, then report the exit.
                    if let Some(v) = take(&mut lock(&self.queues)) {
                        return Ok(v);
                    }
                    return Err(ClientError::Exited {
                        jid: self.login_jid.clone(),
                        what: what.to_string(),
                        stderr: self.settled_stderr().await,
                    });
                }
                Err(_) => {
                    return Err(ClientError::Timeout {
                        jid: self.login_jid.clone(),
                        what: what.to_string(),
                        after: self.timeout,
                        stderr: self.stderr_tail(),
                    })
                }
            }
        }
    }
}

impl Drop for SlixClient {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let child = &mut self.child;
            terminate(pid, Duration::from_secs(1), || {
                matches!(child.try_wait(), Ok(Some(_)) | Err(_))
            });
        }
    }
}

async fn read_stdout(
    out: tokio::process::ChildStdout,
    pending: Pending,
    queues: Arc<Mutex<Queues>>,
    notify: mpsc::UnboundedSender<()>,
) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(id) = value.get("reply").and_then(Value::as_u64) {
            if let Some(tx) = lock(&pending).remove(&id) {
                let _ = tx.send(value);
            }
            continue;
        }
        route_event(&mut lock(&queues), value);
        let _ = notify.send(());
    }
    // Dropping the senders tells every waiter the process is gone.
    lock(&pending).clear();
}

fn route_event(q: &mut Queues, value: Value) {
    let kind = value
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "message" => match serde_json::from_value(value) {
            Ok(m) => q.messages.push_back(m),
            Err(e) => q
                .other
                .push_back(json!({"event": "bad_message", "error": e.to_string()})),
        },
        "message_error" => match serde_json::from_value(value) {
            Ok(m) => q.errors.push_back(m),
            Err(e) => q
                .other
                .push_back(json!({"event": "bad_error", "error": e.to_string()})),
        },
        "presence" => match serde_json::from_value(value) {
            Ok(p) => q.presences.push_back(p),
            Err(e) => q
                .other
                .push_back(json!({"event": "bad_presence", "error": e.to_string()})),
        },
        _ => q.other.push_back(value),
    }
}

async fn read_stderr(mut err: tokio::process::ChildStderr, sink: Arc<Mutex<String>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = err.read(&mut buf).await {
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        let mut s = lock(&sink);
        s.push_str(&String::from_utf8_lossy(chunk));
        // Keep memory bounded; only the tail is ever shown.
        if s.len() > 4 * STDERR_TAIL {
            *s = tail(&s, STDERR_TAIL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_routed_by_kind() {
        let mut q = Queues::default();
        route_event(
            &mut q,
            json!({"event":"message","from":"a@x/r","to":"b@x","type":"chat","id":"1","body":"hi","subject":null,"thread":null}),
        );
        route_event(
            &mut q,
            json!({"event":"message_error","from":"x","id":"7","condition":"policy-violation","text":"no","error_type":"modify"}),
        );
        route_event(
            &mut q,
            json!({"event":"presence","from":"a@x/r","to":"b@x","type":"available","show":null,"status":"s"}),
        );
        route_event(&mut q, json!({"event":"disconnected","reason":"x"}));
        route_event(&mut q, json!({"event":"message","from":1}));
        assert_eq!(q.messages.len(), 1);
        assert_eq!(q.messages.front().map(|m| m.body.as_str()), Some("hi"));
        assert_eq!(
            q.errors.front().map(|e| e.condition.as_str()),
            Some("policy-violation")
        );
        assert_eq!(
            q.presences.front().and_then(|p| p.status.as_deref()),
            Some("s")
        );
        assert_eq!(q.other.len(), 2);
    }
}
