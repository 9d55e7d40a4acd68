//! The record model and its canonical binary encoding (format version 4; versions 1
//! to 3 still decode).
//!
//! The encoding is the "canonical plaintext" that the hash chain commits to, so
//! it must be deterministic: fixed field order, big-endian integers, `u32`
//! length prefixes, option tags that are exactly 0 or 1, no trailing bytes.
//! Decoding rejects anything else, which is what makes encode/decode a bijection
//! on valid input.

use crate::time::Timestamp;

/// Format version of the canonical encoding written today.
pub const RECORD_VERSION: u8 = 4;
/// Format 3: messages without the room occupant behind them. Still decoded, never
/// written.
pub const RECORD_VERSION_3: u8 = 3;
/// Format 2: messages without a retention class. Still decoded (class empty, meaning
/// `default`), never written.
pub const RECORD_VERSION_2: u8 = 2;
/// The first format: messages without [`Capture`] fields. Still decoded (as a
/// message with `Capture::default()`), never written.
pub const RECORD_VERSION_1: u8 = 1;

/// Position of a record in the archive-wide sequence; the first record is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct RecordSeq(pub u64);

/// The proxy's identifier for one client connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

/// Which way a stanza travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by a user behind Custos.
    Outbound,
    /// Received by a user behind Custos.
    Inbound,
}

/// What policy did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Flag,
    Redact,
    Block,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// How a copy of a message reached the stream it was seen on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The stanza itself, as its sender's client or the server sent it.
    #[default]
    Direct,
    /// A XEP-0280 carbon of a message another client of the account sent.
    CarbonSent,
    /// A XEP-0280 carbon of a message another client of the account received.
    CarbonReceived,
    /// A XEP-0313 archive query result: history replayed to the client.
    Mam,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::CarbonSent => "carbon-sent",
            Via::CarbonReceived => "carbon-received",
            Via::Mam => "mam",
        }
    }
}

/// Which of the proxy's two streams a copy crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leg {
    ClientToServer,
    ServerToClient,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::ClientToServer => "client-to-server",
            Leg::ServerToClient => "server-to-client",
        }
    }
}

/// Content beyond the primary body and subject: what a client may display
/// instead of them (another language, XHTML-IM) or beside them (a link).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Text {
    /// `body`, `subject`, `xhtml`, `oob-url`, `oob-desc`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    pub text: String,
}

/// What kind of change a message makes to an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EditKind {
    /// XEP-0308 last message correction.
    Correction,
    /// XEP-0424 retraction by the sender.
    Retraction,
    /// XEP-0425 moderation by a room moderator.
    Moderation,
}

impl EditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EditKind::Correction => "correction",
            EditKind::Retraction => "retraction",
            EditKind::Moderation => "moderation",
        }
    }
}

/// A message that changes another: recorded as an event of its own, never by
/// changing the record of the message it targets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Edit {
    pub kind: EditKind,
    /// The `id` (or stanza-id, for moderation) of the changed message.
    pub target: String,
}

/// How a copy was captured: who proved to own the stream it crossed, how it
/// got there, and the identity that groups it with the other copies of the
/// same logical message (format version 2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    pub via: Via,
    /// The full JID the session proved (SASL, then bind or resumption) whose
    /// stream carried this copy.
    pub account: String,
    /// Copies of one logical message share it (see `docs/capture.md`).
    pub identity: String,
    /// The identity of the content as delivered, when policy changed it
    /// (redaction): the recipient's copy carries that content.
    pub delivered_identity: Option<String>,
    pub extra: Vec<Text>,
    pub edit: Option<Edit>,
    /// A `from` the client wrote that is not its session's JID (the stanza
    /// was refused; `from` holds the proven sender).
    pub claimed_from: Option<String>,
    /// The retention class fixed when the copy was written (format 3; empty means
    /// `default`). See `docs/retention.md`.
    pub retention_class: String,
    /// Group chat (format 4): the real JID behind the room occupant who sent this copy,
    /// or whom a private message in a room went to, as the room revealed it or as the
    /// occupant's own session proved it. `from`/`to` keep the room address.
    pub occupant: Option<String>,
    /// Files the message shared by address, fetched from the firm's own upload service
    /// when the copy passed (format 4; see `docs/capture.md`).
    pub files: Vec<SharedFile>,
}

/// A file a message shared by address (XEP-0363 HTTP upload, XEP-0066 out-of-band data,
/// XEP-0447 stateless file sharing), as Custos fetched it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedFile {
    /// The address the message carried.
    pub url: String,
    /// The name: the address's last path segment, percent-decoded.
    pub name: String,
    /// The media type the upload service answered with (empty when not fetched).
    pub media_type: String,
    /// Bytes, and their SHA-256 in hex (empty when not fetched).
    pub size: u64,
    pub sha256: String,
    /// The content. `None` when another copy of the same message holds it (the same
    /// `sha256`), or when it could not be fetched.
    pub content: Option<Vec<u8>>,
    /// Why the file is not on the record, when it is not.
    pub error: Option<String>,
}

/// The policy outcome stored with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// Ids of the rules that matched.
    pub rules: Vec<String>,
    /// The body as forwarded, when it differs from `body` (redaction).
    pub delivered_body: Option<String>,
    pub severity: Option<String>,
    /// The end-to-end encryption scheme detected, if any (e.g. `omemo`).
    pub e2ee: Option<String>,
    /// What rules in monitor mode would have done, when more than `action`.
    pub would_action: Option<Action>,
}

/// One archived message stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    pub direction: Direction,
    pub session: SessionId,
    /// Full JID of the sender.
    pub from: String,
    /// Full (or bare) JID of the addressee.
    pub to: String,
    /// The stanza `type` attribute (`chat`, `groupchat`, `normal`, …).
    pub stanza_type: String,
    pub id: Option<String>,
    pub origin_id: Option<String>,
    pub stanza_id: Option<String>,
    pub thread: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    /// The original stanza bytes as received.
    pub stanza: Vec<u8>,
    pub outcome: Outcome,
    pub capture: Capture,
}

impl Outcome {
    /// Policy let the message through as sent: no rule matched, nothing redacted, no
    /// end-to-end encryption detected, nothing a monitor-mode rule would have done.
    pub fn allowed() -> Outcome {
        Outcome {
            action: Action::Allow,
            rules: Vec::new(),
            delivered_body: None,
            severity: None,
            e2ee: None,
            would_action: None,
        }
    }
}

impl MessageRecord {
    /// An allowed outbound `chat` message from `from` to `to` with `body`, in session
    /// `s`, and nothing else set: no ids, thread or subject, no stanza bytes, an
    /// [`Outcome::allowed`] outcome and the default [`Capture`].
    ///
    /// The plain message record that tools, benches and tests generating archives
    /// start from, setting the fields that differ with struct update syntax
    /// (`MessageRecord { id: .., ..MessageRecord::chat(from, to, body) }`).
    pub fn chat(
        from: impl Into<String>,
        to: impl Into<String>,
        body: impl Into<String>,
    ) -> MessageRecord {
        MessageRecord {
            direction: Direction::Outbound,
            session: SessionId("s".into()),
            from: from.into(),
            to: to.into(),
            stanza_type: "chat".into(),
            id: None,
            origin_id: None,
            stanza_id: None,
            thread: None,
            subject: None,
            body: Some(body.into()),
            stanza: Vec::new(),
            outcome: Outcome::allowed(),
            capture: Capture::default(),
        }
    }

    /// The stream this copy crossed: only a message the user's own client sent
    /// travels client to server; copies (carbons, replays) come from the server.
    pub fn leg(&self) -> Leg {
        match (self.direction, self.capture.via) {
            (Direction::Outbound, Via::Direct) => Leg::ClientToServer,
            _ => Leg::ServerToClient,
        }
    }
}

/// A non-message event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventRecord {
    SessionStart {
        session: SessionId,
        jid: String,
        client_addr: String,
        resource: String,
    },
    SessionEnd {
        session: SessionId,
        jid: String,
        client_addr: String,
        resource: String,
        reason: String,
    },
    /// Written by the archive itself when opening cut a torn tail.
    Recovery {
        segment: u64,
        offset: u64,
        bytes_cut: u64,
        detail: String,
    },
    /// A reviewer action; `detail` is free text or JSON.
    Audit {
        actor: String,
        action: String,
        detail: String,
    },
    /// A segment's data key is about to be destroyed (crypto-shredding): the only
    /// legitimate way records become unreadable. Appended, durably, before the key file
    /// is removed; `verify` reports a missing key without one as tampering.
    Shred {
        segment: u64,
        /// Why, in words (e.g. "retention expired", which requires an authority verify
        /// can check: see `retention::ExpiryAuthority`).
        reason: String,
        /// What allows it: the retention rule or erasure decision.
        authority: String,
        actor: String,
    },
}

/// What a caller asks the archive to store.
// Not boxed: a record is built once and moved into the writer; boxing would
// add an allocation per message for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewRecord {
    Message(MessageRecord),
    Event(EventRecord),
}

/// A stored record: the archive assigned `seq` and `time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: RecordSeq,
    pub time: Timestamp,
    pub content: NewRecord,
}

/// Why bytes are not a canonical record encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("record ends early")]
    Truncated,
    #[error("unknown {what} tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("text field is not UTF-8")]
    Utf8,
    #[error("{0} trailing bytes after record")]
    Trailing(usize),
}

const K_MESSAGE: u8 = 1;
const K_SESSION_START: u8 = 2;
const K_SESSION_END: u8 = 3;
const K_RECOVERY: u8 = 4;
const K_AUDIT: u8 = 5;
const K_SHRED: u8 = 6;

impl Record {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(256);
        self.encode_into(&mut w);
        w
    }

    /// Appends the canonical encoding to `w` (a buffer the caller reuses).
    pub fn encode_into(&self, w: &mut Vec<u8>) {
        w.push(RECORD_VERSION);
        w.extend_from_slice(&self.seq.0.to_be_bytes());
        w.extend_from_slice(&self.time.0.to_be_bytes());
        match &self.content {
            NewRecord::Message(m) => {
                w.push(K_MESSAGE);
                w.push(match m.direction {
                    Direction::Outbound => 0,
                    Direction::Inbound => 1,
                });
                put_str(w, &m.session.0);
                put_str(w, &m.from);
                put_str(w, &m.to);
                put_str(w, &m.stanza_type);
                for o in [
                    &m.id,
                    &m.origin_id,
                    &m.stanza_id,
                    &m.thread,
                    &m.subject,
                    &m.body,
                ] {
                    put_opt(w, o);
                }
                put_bytes(w, &m.stanza);
                w.push(action_tag(m.outcome.action));
                put_u32(w, m.outcome.rules.len());
                for r in &m.outcome.rules {
                    put_str(w, r);
                }
                put_opt(w, &m.outcome.delivered_body);
                put_opt(w, &m.outcome.severity);
                put_opt(w, &m.outcome.e2ee);
                put_capture(w, &m.outcome, &m.capture);
            }
            NewRecord::Event(EventRecord::SessionStart {
                session,
                jid,
                client_addr,
                resource,
            }) => {
                w.push(K_SESSION_START);
                for s in [&session.0, jid, client_addr, resource] {
                    put_str(w, s);
                }
            }
            NewRecord::Event(EventRecord::SessionEnd {
                session,
                jid,
                client_addr,
                resource,
                reason,
            }) => {
                w.push(K_SESSION_END);
                for s in [&session.0, jid, client_addr, resource, reason] {
                    put_str(w, s);
                }
            }
            NewRecord::Event(EventRecord::Recovery {
                segment,
                offset,
                bytes_cut,
                detail,
            }) => {
                w.push(K_RECOVERY);
                for v in [segment, offset, bytes_cut] {
                    w.extend_from_slice(&v.to_be_bytes());
                }
                put_str(w, detail);
            }
            NewRecord::Event(EventRecord::Audit {
                actor,
                action,
                detail,
            }) => {
                w.push(K_AUDIT);
                for s in [actor, action, detail] {
                    put_str(w, s);
                }
            }
            NewRecord::Event(EventRecord::Shred {
                segment,
                reason,
                authority,
                actor,
            }) => {
                w.push(K_SHRED);
                w.extend_from_slice(&segment.to_be_bytes());
                for s in [reason, authority, actor] {
                    put_str(w, s);
                }
            }
        }
    }

    /// Decodes a canonical encoding; anything non-canonical is an error.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut r = Reader { b: bytes };
        let version = r.u8()?;
        if !(RECORD_VERSION_1..=RECORD_VERSION).contains(&version) {
            return Err(DecodeError::Version(version));
        }
        let seq = RecordSeq(r.u64()?);
        let time = Timestamp(r.u64()? as i64);
        let content = match r.u8()? {
            K_MESSAGE => {
                let direction = match r.u8()? {
                    0 => Direction::Outbound,
                    1 => Direction::Inbound,
                    tag => {
                        return Err(DecodeError::Tag {
                            what: "direction",
                            tag,
                        })
                    }
                };
                let session = SessionId(r.str()?);
                let from = r.str()?;
                let to = r.str()?;
                let stanza_type = r.str()?;
                let id = r.opt()?;
                let origin_id = r.opt()?;
                let stanza_id = r.opt()?;
                let thread = r.opt()?;
                let subject = r.opt()?;
                let body = r.opt()?;
                let stanza = r.bytes()?.to_vec();
                let action = action_of(r.u8()?)?;
                let n = r.u32()?;
                // Each rule needs at least its 4-byte length; a bigger count is a lie.
                if n as usize > r.b.len() / 4 {
                    return Err(DecodeError::Truncated);
                }
                let mut rules = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    rules.push(r.str()?);
                }
                let mut outcome = Outcome {
                    action,
                    rules,
                    delivered_body: r.opt()?,
                    severity: r.opt()?,
                    e2ee: r.opt()?,
                    would_action: None,
                };
                let capture = if version == RECORD_VERSION_1 {
                    Capture::default()
                } else {
                    outcome.would_action = r.opt_action()?;
                    let mut c = r.capture()?;
                    if version >= RECORD_VERSION_3 {
                        c.retention_class = r.str()?;
                    }
                    if version >= RECORD_VERSION {
                        c.occupant = r.opt()?;
                        c.files = r.files()?;
                    }
                    c
                };
                NewRecord::Message(MessageRecord {
                    direction,
                    session,
                    from,
                    to,
                    stanza_type,
                    id,
                    origin_id,
                    stanza_id,
                    thread,
                    subject,
                    body,
                    stanza,
                    outcome,
                    capture,
                })
            }
            K_SESSION_START => NewRecord::Event(EventRecord::SessionStart {
                session: SessionId(r.str()?),
                jid: r.str()?,
                client_addr: r.str()?,
                resource: r.str()?,
            }),
            K_SESSION_END => NewRecord::Event(EventRecord::SessionEnd {
                session: SessionId(r.str()?),
                jid: r.str()?,
                client_addr: r.str()?,
                resource: r.str()?,
                reason: r.str()?,
            }),
            K_RECOVERY => NewRecord::Event(EventRecord::Recovery {
                segment: r.u64()?,
                offset: r.u64()?,
                bytes_cut: r.u64()?,
                detail: r.str()?,
            }),
            K_AUDIT => NewRecord::Event(EventRecord::Audit {
                actor: r.str()?,
                action: r.str()?,
                detail: r.str()?,
            }),
            // Shredding came with format 2: a version 1 record never holds one.
            K_SHRED if version >= RECORD_VERSION_2 => NewRecord::Event(EventRecord::Shred {
                segment: r.u64()?,
                reason: r.str()?,
                authority: r.str()?,
                actor: r.str()?,
            }),
            tag => {
                return Err(DecodeError::Tag {
                    what: "record kind",
                    tag,
                })
            }
        };
        if !r.b.is_empty() {
            return Err(DecodeError::Trailing(r.b.len()));
        }
        Ok(Record { seq, time, content })
    }
}

fn action_tag(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Flag => 1,
        Action::Redact => 2,
        Action::Block => 3,
    }
}

fn action_of(tag: u8) -> Result<Action, DecodeError> {
    match tag {
        0 => Ok(Action::Allow),
        1 => Ok(Action::Flag),
        2 => Ok(Action::Redact),
        3 => Ok(Action::Block),
        tag => Err(DecodeError::Tag {
            what: "action",
            tag,
        }),
    }
}

/// The version-2 tail of a message: `would_action` and the [`Capture`] fields.
fn put_capture(w: &mut Vec<u8>, outcome: &Outcome, c: &Capture) {
    match outcome.would_action {
        None => w.push(0),
        Some(a) => {
            w.push(1);
            w.push(action_tag(a));
        }
    }
    w.push(match c.via {
        Via::Direct => 0,
        Via::CarbonSent => 1,
        Via::CarbonReceived => 2,
        Via::Mam => 3,
    });
    put_str(w, &c.account);
    put_str(w, &c.identity);
    put_opt(w, &c.delivered_identity);
    put_u32(w, c.extra.len());
    for t in &c.extra {
        put_str(w, &t.kind);
        put_opt(w, &t.lang);
        put_str(w, &t.text);
    }
    match &c.edit {
        None => w.push(0),
        Some(e) => {
            w.push(1);
            w.push(match e.kind {
                EditKind::Correction => 0,
                EditKind::Retraction => 1,
                EditKind::Moderation => 2,
            });
            put_str(w, &e.target);
        }
    }
    put_opt(w, &c.claimed_from);
    put_str(w, &c.retention_class);
    put_opt(w, &c.occupant);
    put_u32(w, c.files.len());
    for f in &c.files {
        put_str(w, &f.url);
        put_str(w, &f.name);
        put_str(w, &f.media_type);
        w.extend_from_slice(&f.size.to_be_bytes());
        put_str(w, &f.sha256);
        match &f.content {
            None => w.push(0),
            Some(b) => {
                w.push(1);
                put_bytes(w, b);
            }
        }
        put_opt(w, &f.error);
    }
}

fn put_u32(w: &mut Vec<u8>, n: usize) {
    // Lengths beyond u32 cannot occur: frames are capped far below 4 GiB.
    w.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len());
    w.extend_from_slice(b);
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

fn put_opt(w: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => w.push(0),
        Some(s) => {
            w.push(1);
            put_str(w, s);
        }
    }
}

/// The encoding of a [`SharedFile`] with every string empty and no content or error:
/// url, name, media type and hash lengths (4 each), the size (8), two option tags.
const MIN_FILE_BYTES: usize = 4 * 4 + 8 + 2;

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::Utf8)
    }
    fn files(&mut self) -> Result<Vec<SharedFile>, DecodeError> {
        let n = self.u32()?;
        // Each file needs at least 26 bytes (four lengths, a size and two option tags).
        if n as usize > self.b.len() / MIN_FILE_BYTES {
            return Err(DecodeError::Truncated);
        }
        let mut files = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let url = self.str()?;
            let name = self.str()?;
            let media_type = self.str()?;
            let size = self.u64()?;
            let sha256 = self.str()?;
            let content = match self.u8()? {
                0 => None,
                1 => Some(self.bytes()?.to_vec()),
                tag => {
                    return Err(DecodeError::Tag {
                        what: "option",
                        tag,
                    })
                }
            };
            files.push(SharedFile {
                url,
                name,
                media_type,
                size,
                sha256,
                content,
                error: self.opt()?,
            });
        }
        Ok(files)
    }
    fn opt_action(&mut self) -> Result<Option<Action>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(action_of(self.u8()?)?)),
            tag => Err(DecodeError::Tag {
                what: "option",
                tag,
            }),
        }
    }
    fn capture(&mut self) -> Result<Capture, DecodeError> {
        let via = match self.u8()? {
            0 => Via::Direct,
            1 => Via::CarbonSent,
            2 => Via::CarbonReceived,
            3 => Via::Mam,
            tag => return Err(DecodeError::Tag { what: "via", tag }),
        };
        let account = self.str()?;
        let identity = self.str()?;
        let delivered_identity = self.opt()?;
        let n = self.u32()?;
        // Each text needs at least 9 bytes (two lengths and an option tag).
        if n as usize > self.b.len() / 9 {
            return Err(DecodeError::Truncated);
        }
        let mut extra = Vec::with_capacity(n as usize);
        for _ in 0..n {
            extra.push(Text {
                kind: self.str()?,
                lang: self.opt()?,
                text: self.str()?,
            });
        }
        let edit = match self.u8()? {
            0 => None,
            1 => {
                let kind = match self.u8()? {
                    0 => EditKind::Correction,
                    1 => EditKind::Retraction,
                    2 => EditKind::Moderation,
                    tag => return Err(DecodeError::Tag { what: "edit", tag }),
                };
                Some(Edit {
                    kind,
                    target: self.str()?,
                })
            }
            tag => {
                return Err(DecodeError::Tag {
                    what: "option",
                    tag,
                })
            }
        };
        Ok(Capture {
            via,
            account,
            identity,
            delivered_identity,
            extra,
            edit,
            claimed_from: self.opt()?,
            retention_class: String::new(),
            occupant: None,
            files: Vec::new(),
        })
    }
    fn opt(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            tag => Err(DecodeError::Tag {
                what: "option",
                tag,
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_new_record() -> impl Strategy<Value = NewRecord> {
        let s = || ".{0,12}";
        let o = || proptest::option::of(".{0,12}");
        let msg = (
            (any::<bool>(), s(), s(), s(), s(), o(), o(), o()),
            (
                o(),
                o(),
                o(),
                proptest::collection::vec(any::<u8>(), 0..40),
                0u8..4,
            ),
            (proptest::collection::vec(s(), 0..3), o(), o(), o()),
            arb_capture(),
            proptest::option::of(0u8..4),
        )
            .prop_map(
                |(
                    (inb, session, from, to, ty, id, origin_id, stanza_id),
                    (thread, subject, body, stanza, a),
                    (rules, delivered_body, severity, e2ee),
                    capture,
                    would,
                )| {
                    let actions = [Action::Allow, Action::Flag, Action::Redact, Action::Block];
                    NewRecord::Message(MessageRecord {
                        direction: if inb {
                            Direction::Inbound
                        } else {
                            Direction::Outbound
                        },
                        session: SessionId(session),
                        from,
                        to,
                        stanza_type: ty,
                        id,
                        origin_id,
                        stanza_id,
                        thread,
                        subject,
                        body,
                        stanza,
                        outcome: Outcome {
                            action: actions[a as usize],
                            rules,
                            delivered_body,
                            severity,
                            e2ee,
                            would_action: would.map(|w| actions[w as usize]),
                        },
                        capture,
                    })
                },
            );
        let ev = prop_oneof![
            (s(), s(), s(), s()).prop_map(|(a, b, c, d)| EventRecord::SessionStart {
                session: SessionId(a),
                jid: b,
                client_addr: c,
                resource: d
            }),
            (s(), s(), s(), s(), s()).prop_map(|(a, b, c, d, e)| EventRecord::SessionEnd {
                session: SessionId(a),
                jid: b,
                client_addr: c,
                resource: d,
                reason: e
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), s()).prop_map(
                |(segment, offset, bytes_cut, detail)| EventRecord::Recovery {
                    segment,
                    offset,
                    bytes_cut,
                    detail
                }
            ),
            (s(), s(), s()).prop_map(|(actor, action, detail)| EventRecord::Audit {
                actor,
                action,
                detail
            }),
            (any::<u64>(), s(), s(), s()).prop_map(|(segment, reason, authority, actor)| {
                EventRecord::Shred {
                    segment,
                    reason,
                    authority,
                    actor,
                }
            }),
        ]
        .prop_map(NewRecord::Event);
        prop_oneof![3 => msg, 1 => ev]
    }

    fn arb_file() -> impl Strategy<Value = SharedFile> {
        let s = || ".{0,12}";
        (
            (s(), s(), s(), any::<u64>(), s()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::option::of(s()),
        )
            .prop_map(|((url, name, media_type, size, sha256), content, error)| {
                SharedFile {
                    url,
                    name,
                    media_type,
                    size,
                    sha256,
                    content,
                    error,
                }
            })
    }

    fn arb_capture() -> impl Strategy<Value = Capture> {
        let s = || ".{0,12}";
        let o = || proptest::option::of(".{0,12}");
        let text = (s(), o(), s()).prop_map(|(kind, lang, text)| Text { kind, lang, text });
        let edit = (0u8..3, s()).prop_map(|(k, target)| Edit {
            kind: [
                EditKind::Correction,
                EditKind::Retraction,
                EditKind::Moderation,
            ][k as usize],
            target,
        });
        (
            0u8..4,
            s(),
            s(),
            o(),
            proptest::collection::vec(text, 0..3),
            proptest::option::of(edit),
            (o(), s(), o(), proptest::collection::vec(arb_file(), 0..2)),
        )
            .prop_map(
                |(
                    via,
                    account,
                    identity,
                    delivered_identity,
                    extra,
                    edit,
                    (claimed_from, retention_class, occupant, files),
                )| Capture {
                    via: [Via::Direct, Via::CarbonSent, Via::CarbonReceived, Via::Mam]
                        [via as usize],
                    account,
                    identity,
                    delivered_identity,
                    extra,
                    edit,
                    claimed_from,
                    retention_class,
                    occupant,
                    files,
                },
            )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(content in arb_new_record(), seq in any::<u64>(), t in any::<i64>()) {
            let rec = Record { seq: RecordSeq(seq), time: Timestamp(t), content };
            let bytes = rec.encode();
            prop_assert_eq!(Record::decode(&bytes).unwrap(), rec);
        }

        #[test]
        fn decode_never_panics_and_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Whatever decodes as the current version must re-encode to exactly the
            // same bytes (version 1 input decodes too, and is re-encoded as version 2).
            if let Ok(rec) = Record::decode(&bytes) {
                if bytes.first() == Some(&RECORD_VERSION) {
                    prop_assert_eq!(rec.encode(), bytes);
                }
            }
        }
    }

    #[test]
    fn version_1_messages_decode_with_default_capture() {
        let mut rec = Record {
            seq: RecordSeq(3),
            time: Timestamp(5),
            content: NewRecord::Message(MessageRecord {
                direction: Direction::Inbound,
                id: Some("1".into()),
                stanza: b"<message/>".to_vec(),
                outcome: Outcome {
                    action: Action::Flag,
                    rules: vec!["r".into()],
                    ..Outcome::allowed()
                },
                ..MessageRecord::chat("a@x", "b@x", "hi")
            }),
        };
        // A version 1 message is the version 2 one without its tail.
        let mut v1 = rec.encode();
        v1[0] = RECORD_VERSION_1;
        // would, via, account, identity, delivered_identity, extra, edit, claimed_from,
        // class, occupant, files
        let tail = 1 + 1 + 4 + 4 + 1 + 4 + 1 + 1 + 4 + 1 + 4;
        let mut v3 = v1.clone();
        v1.truncate(v1.len() - tail);
        assert_eq!(Record::decode(&v1).unwrap(), rec);
        // A version 3 message is the version 4 one without the occupant and files.
        v3[0] = RECORD_VERSION_3;
        v3.truncate(v3.len() - 5);
        assert_eq!(Record::decode(&v3).unwrap(), rec);
        if let NewRecord::Message(m) = &mut rec.content {
            m.capture.via = Via::Mam;
        }
        assert_ne!(Record::decode(&rec.encode()).unwrap().content, {
            let mut r = rec.clone();
            if let NewRecord::Message(m) = &mut r.content {
                m.capture.via = Via::Direct;
            }
            r.content
        });
    }

    /// The smallest file a record can carry (every string empty) ends the record in
    /// 26 bytes; the count check once wanted 30 per file and refused it as truncated.
    #[test]
    fn a_record_ending_in_the_smallest_file_decodes() {
        let mut capture = Capture::default();
        capture.files.push(SharedFile {
            url: String::new(),
            name: String::new(),
            media_type: String::new(),
            size: 0,
            sha256: String::new(),
            content: None,
            error: None,
        });
        let rec = Record {
            seq: RecordSeq(1),
            time: Timestamp(0),
            content: NewRecord::Message(MessageRecord {
                session: SessionId(String::new()),
                stanza_type: String::new(),
                body: None,
                capture,
                ..MessageRecord::chat("", "", "")
            }),
        };
        assert_eq!(Record::decode(&rec.encode()), Ok(rec));
    }

    #[test]
    fn rejects_trailing_bytes_and_bad_tags() {
        let rec = Record {
            seq: RecordSeq(7),
            time: Timestamp(1),
            content: NewRecord::Event(EventRecord::Audit {
                actor: "a".into(),
                action: "view".into(),
                detail: "{}".into(),
            }),
        };
        let mut b = rec.encode();
        b.push(0);
        assert_eq!(Record::decode(&b), Err(DecodeError::Trailing(1)));
        let mut b = rec.encode();
        b[0] = 9;
        assert_eq!(Record::decode(&b), Err(DecodeError::Version(9)));
    }
}
