//! Relaying after negotiation: two futures of one task, client→upstream and
//! upstream→client, each framing what it reads, handing stanzas to the [`Inspector`]
//! (which queues their records) and writing the outcomes once the records are durable.
//!
//! ```text
//!  client ──▶ [client_loop: frame, inspect ─▶ window ─▶ forward when durable] ──▶ LegWriter(upstream)
//!  client ◀── LegWriter(client) ◀── [upstream_loop: the same, the other way] ◀── upstream
//! ```
//! Each direction's [`Window`] holds the stanzas whose records are in flight, in wire
//! order; reading goes on while it has room, and what is not a stanza waits until it is
//! empty. Reads are plain `read` calls, which are cancellation-safe, so each may be raced
//! against shutdown and against the window's head settling. Both directions may write to
//! either leg (a refused stanza's error goes back to its sender), so each write half sits
//! behind an async mutex together with its stream management counter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{split, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::conn::Conn;
use crate::error::{ClientFault, SessionError, UpstreamFault};
use crate::features::filter_features;
use crate::framer::{Frame, Framer, Stanza};
use crate::inspect::{Copy, Decision, Direction, Inspected, Inspection, Inspector, SessionInfo};
use crate::io::{read_frame, send, ReadError};
use crate::negotiation::ClientStream;
use crate::relay_state::{
    Account, ClientStanza, Numbering, RelayState, Sasl2Success, SmStep, UpstreamEvent, NS_BIND2,
    NS_SASL2,
};
use crate::reply::{stanza_error, ErrorType};
use crate::session::Shared;
use crate::sm::{self, SmCounter};
use crate::stanza::{StanzaKind, StanzaView};
use crate::stream::{self, HeaderAttrs, NS_SM, NS_STREAMS};
use crate::xml::{Element, Node};

/// How one relay direction ended.
#[derive(Debug)]
enum Ended {
    /// The client closed its stream with `</stream:stream>`.
    ClientClosedStream,
    /// The client's connection dropped.
    ClientGone,
    UpstreamClosedStream,
    UpstreamGone,
    /// The other direction ended first.
    Cancelled,
    Shutdown,
    Failed(SessionError),
}

impl Ended {
    fn describe(&self) -> String {
        match self {
            Ended::ClientClosedStream => "client closed the stream".into(),
            Ended::ClientGone => "client connection dropped".into(),
            Ended::UpstreamClosedStream => "upstream closed the stream".into(),
            Ended::UpstreamGone => "upstream connection dropped".into(),
            Ended::Cancelled => "the other direction ended".into(),
            Ended::Shutdown => "proxy shutting down".into(),
            Ended::Failed(e) => e.to_string(),
        }
    }
}

/// Whether a first-level element from the client that is not a stanza is one Custos
/// passes on: SASL and SASL2 exchanges, stream management, client state indication
/// (XEP-0352) and a stream error. Anything else (another namespace wrapping a message,
/// a `jabber:client` element that is not a stanza) would reach the server unread.
fn client_nonza_carried(el: &Element) -> bool {
    match &*el.ns {
        stream::NS_SASL | NS_SASL2 | NS_SM | NS_CSI => true,
        NS_STREAMS => el.name == "error",
        _ => false,
    }
}

/// Client state indication (XEP-0352): `<active/>`, `<inactive/>`.
const NS_CSI: &str = "urn:xmpp:csi:0";

/// A peer's `<stream:error/>`, named with its side. A client's usually objects to what
/// it received, which includes the upstream's bytes as relayed: the log says so rather
/// than blaming the client. The peer's text is quoted escaped and cut short.
fn log_stream_error(direction: Direction, el: &Element) {
    let condition = el
        .children()
        .find(|c| c.ns == stream::NS_STREAM_ERRORS && c.name != "text")
        .map_or("(none)", |c| &*c.name)
        .to_owned();
    let text: String = el
        .children()
        .find(|c| c.ns == stream::NS_STREAM_ERRORS && c.name == "text")
        .map(|t| t.text().chars().take(200).collect())
        .unwrap_or_default();
    match direction {
        Direction::Outbound => warn!(
            condition,
            text = ?text,
            "the client ended its stream with a stream error: it objected to what it received, which may be the upstream's bytes as relayed"
        ),
        Direction::Inbound => {
            warn!(condition, text = ?text, "the upstream ended the stream with a stream error")
        }
    }
}

/// One leg's write side with its stream management counter: both change under one lock,
/// so counted positions follow the order in which the receiver gets the stanzas.
struct LegWriter {
    w: WriteHalf<Conn>,
    sm: SmCounter,
    /// Which way bytes written here travel (`Inbound`: toward the client).
    toward: Direction,
}

/// What a write on a leg means to stream management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Not a stanza (whitespace, headers, nonzas).
    No,
    /// A stanza from the other side.
    Forwarded,
    /// A stanza Custos made (an error reply, a notice).
    Injected,
    /// A stanza from the other side that Custos refused: nothing is written.
    Dropped,
}

/// Bytes for one leg gathered from several settled stanzas, written at once, with what
/// each write means to stream management in the order the receiver gets them.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    counts: Vec<Counted>,
}

impl Batch {
    fn add(&mut self, bytes: &[u8], counted: Counted) {
        self.bytes.extend_from_slice(bytes);
        self.counts.push(counted);
    }
}

impl LegWriter {
    async fn write(&mut self, bytes: &[u8], counted: Counted) -> Result<(), Ended> {
        send(&mut self.w, bytes)
            .await
            .map_err(|_| match self.toward {
                Direction::Inbound => Ended::ClientGone,
                Direction::Outbound => Ended::UpstreamGone,
            })?;
        self.count(counted);
        Ok(())
    }

    fn count(&mut self, counted: Counted) {
        match counted {
            Counted::No => {}
            Counted::Forwarded => self.sm.forwarded(),
            Counted::Injected => self.sm.injected(),
            Counted::Dropped => self.sm.dropped(),
        }
    }

    /// One write (and one flush, so one TLS record train) for the whole batch. The counts
    /// go first: a receiver's `h` covers at most what was handed to its socket, so a
    /// write that fails or is cut off part-way leaves them exact.
    async fn write_batch(&mut self, batch: &Batch) -> Result<(), Ended> {
        for counted in &batch.counts {
            self.count(*counted);
        }
        if !batch.bytes.is_empty() {
            send(&mut self.w, &batch.bytes)
                .await
                .map_err(|_| match self.toward {
                    Direction::Inbound => Ended::ClientGone,
                    Direction::Outbound => Ended::UpstreamGone,
                })?;
        }
        Ok(())
    }
}

/// Most stanzas one direction has read and inspected but not yet forwarded: their
/// records are on their way to disk. Past this (or [`WINDOW_BYTES`]) the direction stops
/// reading, so a slow disk fills the sender's socket, not memory.
const WINDOW_STANZAS: usize = 256;
const WINDOW_BYTES: usize = 1 << 20;

/// A stanza waiting for its record to be durable before it goes on, or whitespace
/// between stanzas waiting for the stanzas before it.
struct InFlight {
    raw: bytes::Bytes,
    /// The stanza, for the error its sender gets if its record fails; `None` for
    /// whitespace, which is not counted by stream management.
    root: Option<Element>,
    /// Its sender and recipient, for that error.
    from: Option<String>,
    to: Option<String>,
    inspection: Inspection,
}

impl InFlight {
    fn whitespace(raw: bytes::Bytes) -> InFlight {
        InFlight {
            raw,
            root: None,
            from: None,
            to: None,
            inspection: crate::inspect::Outcome::forward().into(),
        }
    }

    fn stanza(
        stanza: Stanza,
        from: Option<String>,
        to: Option<String>,
        inspection: Inspection,
    ) -> InFlight {
        InFlight {
            raw: stanza.raw,
            root: Some(stanza.root),
            from,
            to,
            inspection,
        }
    }
}

/// One direction's stanzas in flight, in wire order: each is forwarded once its own
/// record is durable and every stanza before it has gone on.
#[derive(Default)]
struct Window {
    queue: VecDeque<InFlight>,
    bytes: usize,
}

impl Window {
    fn has_room(&self) -> bool {
        self.queue.len() < WINDOW_STANZAS && self.bytes < WINDOW_BYTES
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the stanza put in last is refused.
    fn last_refused(&self) -> bool {
        self.queue.back().is_some_and(|f| {
            matches!(
                f.inspection.outcome.decision,
                crate::inspect::Decision::Refuse { .. }
            )
        })
    }

    fn push(&mut self, item: InFlight) {
        self.bytes += item.raw.len();
        self.queue.push_back(item);
    }

    /// Waits for the first stanza's record. Cancellation-safe: the acknowledgement stays
    /// in the stanza's future until it is taken by [`Window::take_settled`].
    async fn head_settled(&mut self) -> Result<(), String> {
        match self
            .queue
            .front_mut()
            .and_then(|f| f.inspection.durable.as_mut())
        {
            Some(durable) => durable.await,
            None => Ok(()),
        }
    }

    /// The first stanza, whose record `head` settled, and every one after it whose record
    /// is already settled too, taken from the window as they are iterated: one write
    /// forwards them all. Nothing is allocated for them (a burst's dozens of stanzas
    /// collected into a vector cost the relay a large allocation a batch).
    fn take_settled(&mut self, head: Result<(), String>) -> Settled<'_> {
        Settled {
            window: self,
            head: Some(head),
        }
    }
}

/// The stanzas [`Window::take_settled`] takes, in wire order, each with its record's
/// result. A stanza whose record is not settled yet ends it and stays in the window, as
/// does everything behind it and whatever was not iterated.
struct Settled<'a> {
    window: &'a mut Window,
    /// The first stanza's result, which the caller awaited; `None` once it is taken.
    head: Option<Result<(), String>>,
}

impl Iterator for Settled<'_> {
    type Item = (InFlight, Result<(), String>);

    fn next(&mut self) -> Option<Self::Item> {
        use futures_util::FutureExt;
        let front = self.window.queue.front_mut()?;
        let result = match self.head.take() {
            // Its future already gave its result: it is not polled again.
            Some(head) => head,
            None => match front.inspection.durable.as_mut() {
                None => Ok(()),
                Some(durable) => durable.now_or_never()?,
            },
        };
        let mut item = self.window.queue.pop_front()?;
        self.window.bytes -= item.raw.len();
        item.inspection.durable = None;
        Some((item, result))
    }
}

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        if self.window.queue.is_empty() {
            // An idle session holds no room for stanzas it may never send: a burst's
            // stanzas take a few kilobytes of queue, made again when the next comes.
            self.window.queue = VecDeque::new();
        }
    }
}

pub(crate) struct Relay<'a, I> {
    shared: &'a Shared<I>,
    client_w: Mutex<LegWriter>,
    upstream_w: Mutex<LegWriter>,
    client_r: Option<ReadHalf<Conn>>,
    upstream_r: Option<ReadHalf<Conn>>,
    stream: ClientStream,
    /// Shared with every stanza's inspection, changed (copied on write) only when the
    /// session binds: taking it per stanza copies nothing.
    info: RwLock<Arc<SessionInfo>>,
    /// Set by upstream→client right before forwarding SASL `<success/>`: the client's next
    /// bytes are a new stream header.
    client_restart: AtomicBool,
    /// The client's SASL2 `<authenticate/>` asked to resume a session this node never
    /// relayed: the request went on without it, and the success gets a `<failed/>` for it.
    sasl2_resume_refused: AtomicBool,
    /// The tag policy refused in the client's Bind2 request, taken out of it: recorded
    /// once the success names the account.
    sasl2_refused_tag: std::sync::Mutex<Option<String>>,
    /// Who the session has proven to be, its stream management grant, and the other
    /// protocol decisions (no I/O).
    state: std::sync::Mutex<RelayState>,
    client_finished: AtomicBool,
    upstream_finished: AtomicBool,
    /// Cancels the other direction once one has ended.
    done: CancellationToken,
}

impl<'a, I: Inspector> Relay<'a, I> {
    pub(crate) fn new(
        shared: &'a Shared<I>,
        client: Conn,
        upstream: Conn,
        stream: ClientStream,
        info: SessionInfo,
    ) -> Self {
        let (client_r, client_w) = split(client);
        let (upstream_r, upstream_w) = split(upstream);
        Relay {
            shared,
            client_w: Mutex::new(LegWriter {
                w: client_w,
                sm: SmCounter::default(),
                toward: Direction::Inbound,
            }),
            upstream_w: Mutex::new(LegWriter {
                w: upstream_w,
                sm: SmCounter::default(),
                toward: Direction::Outbound,
            }),
            client_r: Some(client_r),
            upstream_r: Some(upstream_r),
            stream,
            info: RwLock::new(Arc::new(info)),
            client_restart: AtomicBool::new(false),
            sasl2_resume_refused: AtomicBool::new(false),
            sasl2_refused_tag: std::sync::Mutex::new(None),
            state: std::sync::Mutex::new(RelayState::default()),
            client_finished: AtomicBool::new(false),
            upstream_finished: AtomicBool::new(false),
            done: CancellationToken::new(),
        }
    }

    pub(crate) async fn run(
        mut self,
        (client_framer, upstream_framer): (Framer, Framer),
    ) -> (String, SessionInfo) {
        let (Some(client_r), Some(upstream_r)) = (self.client_r.take(), self.upstream_r.take())
        else {
            return (
                "internal: relay started twice".into(),
                Arc::unwrap_or_clone(self.snapshot()),
            );
        };
        let mut c2u = Box::pin(self.client_to_upstream(client_r, client_framer));
        let mut u2c = Box::pin(self.upstream_to_client(upstream_r, upstream_framer));
        // Give the other direction a moment to pass the peer's closing tag on.
        let grace = Duration::from_secs(2);
        let first = tokio::select! {
            ended = &mut c2u => {
                let _ = tokio::time::timeout(grace, &mut u2c).await;
                ended
            }
            ended = &mut u2c => {
                let _ = tokio::time::timeout(grace, &mut c2u).await;
                ended
            }
        };
        // A direction still running past the grace may be inside a write holding its
        // leg: dropped here, it lets go, so the closing writes below cannot wait forever.
        drop(c2u);
        drop(u2c);
        Box::pin(self.close()).await;
        (first.describe(), Arc::unwrap_or_clone(self.snapshot()))
    }

    /// The last writes on both legs, once both directions have stopped.
    async fn close(&self) {
        self.finish_client(stream::CLOSE).await;
        self.finish_upstream().await;
        self.keep_for_resumption().await;
        let _ = self.client_w.lock().await.w.shutdown().await;
        let _ = self.upstream_w.lock().await.w.shutdown().await;
    }

    fn snapshot(&self) -> Arc<SessionInfo> {
        match self.info.read() {
            Ok(info) => Arc::clone(&info),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Writes the last bytes the client gets (a close tag or a stream error), once.
    async fn finish_client(&self, bytes: &[u8]) {
        if !self.client_finished.swap(true, Ordering::AcqRel) {
            let mut leg = self.client_w.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), send(&mut leg.w, bytes)).await;
        }
    }

    async fn finish_upstream(&self) {
        if !self.upstream_finished.swap(true, Ordering::AcqRel) {
            let mut leg = self.upstream_w.lock().await;
            let _ =
                tokio::time::timeout(Duration::from_secs(2), send(&mut leg.w, stream::CLOSE)).await;
        }
    }

    async fn to_client(&self, bytes: &[u8]) -> Result<(), Ended> {
        self.client_w.lock().await.write(bytes, Counted::No).await
    }

    async fn to_upstream(&self, bytes: &[u8]) -> Result<(), Ended> {
        self.upstream_w.lock().await.write(bytes, Counted::No).await
    }

    /// A session that enabled stream management may be resumed on a new connection:
    /// keep its counters so the `h` values exchanged then can be translated too.
    async fn keep_for_resumption(&self) {
        let id = self.lock_state().sm_id().map(str::to_owned);
        if let Some(id) = id {
            let to_client = self.client_w.lock().await.sm.clone();
            let to_upstream = self.upstream_w.lock().await.sm.clone();
            let jid = self.snapshot().jid.clone();
            self.shared
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .store(id, to_client, to_upstream, jid, Instant::now());
        }
    }

    /// XEP-0198 elements: what each means is decided in [`RelayState::stream_management`];
    /// here the counters change and the element is forwarded (rewritten where a count
    /// changed). `Ok(false)`: not a stream management element; nothing was written.
    async fn stream_management(
        &self,
        direction: Direction,
        stanza: &Stanza,
    ) -> Result<bool, Ended> {
        let root = &stanza.root;
        let from_client = direction == Direction::Outbound;
        let step = self.lock_state().stream_management(root, from_client);
        let to_peer = if from_client {
            &self.upstream_w
        } else {
            &self.client_w
        };
        let translate = match step {
            SmStep::NotSm => return Ok(false),
            SmStep::StartCounting => {
                let mut leg = to_peer.lock().await;
                leg.write(&stanza.raw, Counted::No).await?;
                leg.sm.start();
                return Ok(true);
            }
            SmStep::Forward => None,
            // The detached session is only peeked at: the server may refuse the request
            // (someone naming another user's id); its account is claimed on `<resumed/>`.
            SmStep::Resume { previd, h } => {
                let previous = self
                    .shared
                    .resumable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .peek(&previd);
                let Some(d) = previous else {
                    // Not a session this process relayed: another node's behind the same
                    // load balancer, or one from before a restart. The server would
                    // resume it, but this node has neither the stanza counts to
                    // translate `h` with (so it cannot tell which stanzas were archived
                    // and delivered) nor the account the session proved at bind. Refuse
                    // it here: the client binds afresh, and the server, when the old
                    // session times out, redelivers what it held as offline messages,
                    // through this node and into the archive.
                    self.lock_state().resume_refused();
                    let failed = format!(
                        "<failed xmlns='{}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
                        crate::stream::NS_SM
                    );
                    self.client_w
                        .lock()
                        .await
                        .write(failed.as_bytes(), Counted::No)
                        .await?;
                    info!("refused to resume a stream-management session this node did not relay; the client binds afresh");
                    return Ok(true);
                };
                self.client_w.lock().await.sm = d.to_client;
                self.upstream_w.lock().await.sm = d.to_upstream;
                h.map(|h| (h, Numbering::ToClient))
            }
            SmStep::Translate { h, numbering } => Some((h, numbering)),
        };
        let translated = match translate {
            Some((h, Numbering::ToClient)) => Some((h, self.client_w.lock().await.sm.to_sender(h))),
            Some((h, Numbering::ToUpstream)) => {
                Some((h, self.upstream_w.lock().await.sm.to_sender(h)))
            }
            None => None,
        };
        match translated {
            Some((h, new)) if new != h => {
                let mut rewritten = root.clone();
                rewritten.set_attr("h", sm::format_h(new));
                let mut out = Vec::with_capacity(stanza.raw.len());
                rewritten.write_to(&mut out);
                to_peer.lock().await.write(&out, Counted::No).await?;
            }
            _ => to_peer.lock().await.write(&stanza.raw, Counted::No).await?,
        }
        Ok(true)
    }

    async fn client_to_upstream(&self, mut reader: ReadHalf<Conn>, mut framer: Framer) -> Ended {
        let mut window = Window::default();
        let ended = self
            .client_loop(&mut reader, &mut framer, &mut window)
            .await;
        Box::pin(self.drain_at_end(Direction::Outbound, &mut window, &ended)).await;
        match &ended {
            Ended::ClientClosedStream => self.finish_upstream().await,
            // A dropped connection on a resumable session: the server must see the TCP
            // close without `</stream:stream>`, or it ends the session and the client's
            // `<resume/>` fails (XEP-0198 §5).
            Ended::ClientGone if self.lock_state().sm_resumable() => {
                self.upstream_finished.store(true, Ordering::Release);
            }
            Ended::ClientGone => self.finish_upstream().await,
            Ended::Shutdown => {
                let err = SessionError::Shutdown;
                if let Some((condition, text)) = err.client_condition() {
                    self.finish_client(&stream::stream_error(condition, Some(&text)))
                        .await;
                }
                self.finish_upstream().await;
            }
            Ended::Failed(err) => {
                if let Some((condition, text)) = err.client_condition() {
                    self.finish_client(&stream::stream_error(condition, Some(&text)))
                        .await;
                }
                self.finish_upstream().await;
                info!(cause = %err, "closing session");
            }
            Ended::UpstreamClosedStream | Ended::UpstreamGone | Ended::Cancelled => {}
        }
        // After a clean `</stream:stream>` the upstream still answers with its own closing
        // tag, which upstream→client passes on; otherwise stop it now.
        if !matches!(ended, Ended::ClientClosedStream) {
            self.done.cancel();
        }
        ended
    }

    /// Every step but the read is boxed here and in [`Relay::upstream_loop`]: this
    /// future is what an idle session holds, so it carries only what a read needs.
    async fn client_loop(
        &self,
        reader: &mut ReadHalf<Conn>,
        framer: &mut Framer,
        window: &mut Window,
    ) -> Ended {
        let mut room = 0;
        let limits = &self.shared.config.limits;
        let auth_deadline = Instant::now() + limits.auth_timeout;
        loop {
            // Until SASL succeeds a client gets a bounded time; afterwards idling is normal.
            let timeout = if self.lock_state().authenticated() {
                None
            } else {
                Some(auth_deadline.saturating_duration_since(Instant::now()))
            };
            let read = read_frame(
                reader,
                framer,
                &mut room,
                Some(&self.client_restart),
                timeout,
            );
            let frame = tokio::select! {
                biased;
                () = self.shared.shutdown.cancelled() => return Ended::Shutdown,
                () = self.done.cancelled() => return Ended::Cancelled,
                head = window.head_settled(), if !window.is_empty() => {
                    match Box::pin(self.forward_settled(Direction::Outbound, window, head)).await {
                        Ok(()) => continue,
                        Err(ended) => return ended,
                    }
                }
                r = read, if window.has_room() => r,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(ReadError::Io(_)) => return Ended::ClientGone,
                Err(ReadError::Frame(e)) => return Ended::Failed(ClientFault::Frame(e).into()),
                Err(ReadError::Timeout) => {
                    return Ended::Failed(ClientFault::Timeout("authentication").into());
                }
            };
            if let Frame::Whitespace(bytes) = frame {
                // A keepalive keeps its place among the stanzas, without a drain.
                window.push(InFlight::whitespace(bytes));
                continue;
            }
            if !matches!(frame, Frame::Stanza(_)) {
                if let Err(ended) = Box::pin(self.drain(Direction::Outbound, window)).await {
                    return ended;
                }
            }
            let result = match frame {
                Frame::Whitespace(_) => Ok(()),
                Frame::StreamHeader(h) => {
                    // The restarted stream is the same stream: `jabber:client` content
                    // (another default namespace would make every stanza an element
                    // Custos does not read, while the server, under Custos's header,
                    // reads messages) and the same domain.
                    if let Err(e) = h.require_client_content() {
                        return Ended::Failed(ClientFault::Frame(e).into());
                    }
                    if let Some(to) = h.to.as_deref() {
                        if !to.trim().is_empty() && !to.eq_ignore_ascii_case(&self.stream.domain) {
                            return Ended::Failed(
                                ClientFault::OtherDomain {
                                    expected: self.stream.domain.clone(),
                                    got: to.to_owned(),
                                }
                                .into(),
                            );
                        }
                    }
                    // Custos writes its own header on the upstream leg.
                    let header = stream::header(&HeaderAttrs {
                        to: Some(&self.stream.domain),
                        lang: h.lang.as_deref().or(self.stream.lang.as_deref()),
                        ..Default::default()
                    });
                    Box::pin(self.to_upstream(&header)).await
                }
                Frame::StreamEnd(_) => return Ended::ClientClosedStream,
                Frame::Stanza(stanza) => {
                    Box::pin(self.relay_stanza(Direction::Outbound, stanza, window)).await
                }
            };
            if let Err(ended) = result {
                return ended;
            }
        }
    }

    async fn upstream_to_client(&self, mut reader: ReadHalf<Conn>, mut framer: Framer) -> Ended {
        let mut window = Window::default();
        let ended = self
            .upstream_loop(&mut reader, &mut framer, &mut window)
            .await;
        Box::pin(self.drain_at_end(Direction::Inbound, &mut window, &ended)).await;
        match &ended {
            Ended::UpstreamClosedStream => self.finish_client(stream::CLOSE).await,
            Ended::UpstreamGone | Ended::Failed(_) => {
                let gone = SessionError::Upstream(UpstreamFault::Closed);
                let err = match &ended {
                    // What the client is told of its own session (a resource refused).
                    Ended::Failed(err @ SessionError::Client(_)) => {
                        info!(cause = %err, "closing session");
                        err
                    }
                    Ended::Failed(err) => {
                        warn!(cause = %err, "upstream failed");
                        &gone
                    }
                    _ => &gone,
                };
                if let Some((condition, text)) = err.client_condition() {
                    self.finish_client(&stream::stream_error(condition, Some(&text)))
                        .await;
                }
                self.finish_upstream().await;
            }
            _ => {}
        }
        self.done.cancel();
        ended
    }

    async fn upstream_loop(
        &self,
        reader: &mut ReadHalf<Conn>,
        framer: &mut Framer,
        window: &mut Window,
    ) -> Ended {
        let mut room = 0;
        loop {
            let read = read_frame(reader, framer, &mut room, None, None);
            let frame = tokio::select! {
                biased;
                () = self.done.cancelled() => return Ended::Cancelled,
                head = window.head_settled(), if !window.is_empty() => {
                    match Box::pin(self.forward_settled(Direction::Inbound, window, head)).await {
                        Ok(()) => continue,
                        Err(ended) => return ended,
                    }
                }
                r = read, if window.has_room() => r,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(ReadError::Io(_)) | Err(ReadError::Timeout) => {
                    return Ended::UpstreamGone
                }
                Err(ReadError::Frame(e)) => return Ended::Failed(UpstreamFault::Frame(e).into()),
            };
            if let Frame::Whitespace(bytes) = frame {
                window.push(InFlight::whitespace(bytes));
                continue;
            }
            if !matches!(frame, Frame::Stanza(_)) {
                if let Err(ended) = Box::pin(self.drain(Direction::Inbound, window)).await {
                    return ended;
                }
            }
            let result = match frame {
                Frame::Whitespace(_) => Ok(()),
                Frame::StreamHeader(h) => {
                    if let Err(e) = h.require_client_content() {
                        return Ended::Failed(UpstreamFault::Frame(e).into());
                    }
                    let header = stream::header(&HeaderAttrs {
                        from: Some(&self.stream.domain),
                        id: h.id.as_deref(),
                        lang: h.lang.as_deref(),
                        ..Default::default()
                    });
                    Box::pin(self.to_client(&header)).await
                }
                Frame::StreamEnd(_) => return Ended::UpstreamClosedStream,
                Frame::Stanza(stanza) => {
                    let root = &stanza.root;
                    if root.ns == NS_SASL2 && root.name == "failure" {
                        self.sasl2_resume_refused.store(false, Ordering::Release);
                    }
                    let event = self.lock_state().upstream_element(root);
                    let pipelined = matches!(event, UpstreamEvent::Relay)
                        && !(root.ns == NS_STREAMS && root.name == "features");
                    if !pipelined {
                        if let Err(ended) = Box::pin(self.drain(Direction::Inbound, window)).await {
                            return ended;
                        }
                    }
                    match event {
                        UpstreamEvent::AuthSucceeded => {
                            // Both streams restart after SASL success (RFC 6120 §6.4.6):
                            // the flag must be up before the client can see <success/>.
                            self.client_restart.store(true, Ordering::Release);
                            framer.restart();
                            Box::pin(self.to_client(&stanza.raw)).await
                        }
                        _ if root.ns == NS_STREAMS && root.name == "features" => {
                            let mut features = stanza.root;
                            if filter_features(&mut features) {
                                let mut out = Vec::with_capacity(stanza.raw.len());
                                features.write_to(&mut out);
                                Box::pin(self.to_client(&out)).await
                            } else {
                                Box::pin(self.to_client(&stanza.raw)).await
                            }
                        }
                        UpstreamEvent::Bound(account) => {
                            self.learn_account(&account);
                            let relayed =
                                Box::pin(self.relay_stanza(Direction::Inbound, stanza, window))
                                    .await;
                            // The resource is judged once, on the answer that binds it.
                            if let Ok(mut info) = self.info.write() {
                                Arc::make_mut(&mut info).chose_resource = false;
                            }
                            // The resource is in the address of all the session would
                            // send: one policy refused ends the session, its answer on
                            // the record and not delivered. The client's stanzas are
                            // refused until the answer is let through, once its record
                            // (kept when a rule matched the resource) is durable; the
                            // window holds the answer alone, as a bind is not pipelined.
                            let refused = window.last_refused();
                            let mut archived = Ok(());
                            let mut head = None;
                            if relayed.is_ok() && !refused {
                                let settled = window.head_settled().await;
                                archived.clone_from(&settled);
                                if settled.is_ok() {
                                    self.lock_state().confirm_bound();
                                }
                                head = Some(settled);
                            }
                            // The session's start is on the record before the client can
                            // send anything under it.
                            Box::pin(self.shared.inspector.session_bound(&self.snapshot())).await;
                            if let Some(head) = head {
                                if let Err(ended) =
                                    Box::pin(self.forward_settled(Direction::Inbound, window, head))
                                        .await
                                {
                                    return ended;
                                }
                            }
                            let resource = || {
                                account
                                    .jid
                                    .split_once('/')
                                    .map(|(_, r)| r.to_owned())
                                    .unwrap_or_default()
                            };
                            match (relayed, refused, archived) {
                                (Err(ended), ..) => Err(ended),
                                (Ok(()), true, _) => {
                                    Box::pin(self.drain(Direction::Inbound, window))
                                        .await
                                        .and(Err(Ended::Failed(
                                            ClientFault::ResourceRefused(resource()).into(),
                                        )))
                                }
                                (Ok(()), false, Err(_)) => Err(Ended::Failed(
                                    ClientFault::BindNotArchived(resource()).into(),
                                )),
                                (Ok(()), false, Ok(())) => Ok(()),
                            }
                        }
                        UpstreamEvent::Resumed { previd } => {
                            let detached = self
                                .shared
                                .resumable
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .take(&previd);
                            let account = detached.and_then(|d| d.jid).map(|jid| Account { jid });
                            let resumed = self.lock_state().resumed(account);
                            match &resumed {
                                Some(account) => self.learn_account(account),
                                None => warn!("session resumed whose account this proxy never saw bound; its stanzas are refused"),
                            }
                            let relayed =
                                Box::pin(self.relay_stanza(Direction::Inbound, stanza, window))
                                    .await;
                            // A new connection of a known session: its start is on the
                            // record like any other, so its end has a start to match.
                            if resumed.is_some() {
                                Box::pin(self.shared.inspector.session_bound(&self.snapshot()))
                                    .await;
                            }
                            relayed
                        }
                        UpstreamEvent::Sasl2Succeeded(outcome) => {
                            Box::pin(self.sasl2_succeeded(stanza, outcome)).await
                        }
                        UpstreamEvent::UnsolicitedBind => {
                            warn!("ignored a bind result that answers no bind request of this session");
                            Box::pin(self.relay_stanza(Direction::Inbound, stanza, window)).await
                        }
                        UpstreamEvent::Relay => {
                            Box::pin(self.relay_stanza(Direction::Inbound, stanza, window)).await
                        }
                    }
                }
            };
            if let Err(ended) = result {
                return ended;
            }
        }
    }

    /// The client's SASL2 `<authenticate/>`. An inline `<resume/>` of a session this
    /// node relayed adopts its counters and has its `h` translated, as a `<resume/>`
    /// after RFC 6120 SASL; one of a session it did not relay is taken out (the server
    /// would resume what this node cannot attribute) and answered `<failed/>` in the
    /// success. A Bind2 request the server could read otherwise than this relay is
    /// refused; a tag policy refuses is taken out (and recorded at the success).
    async fn sasl2_authenticate(&self, stanza: Stanza) -> Result<(), Ended> {
        let mut root = stanza.root;
        let mut rewritten = false;
        // Only this request's refused tag is recorded at its success (a failed attempt
        // may have come before, under another account).
        *self
            .sasl2_refused_tag
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let resume = root.child("resume", NS_SM).map(|r| {
            (
                r.attr("previd").map(str::to_owned),
                r.attr("h").and_then(sm::parse_h),
            )
        });
        if let Some((previd, h)) = resume {
            let detached = previd.as_deref().and_then(|p| {
                self.shared
                    .resumable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .peek(p)
            });
            match detached {
                Some(d) => {
                    let mut client_leg = self.client_w.lock().await;
                    client_leg.sm = d.to_client;
                    self.upstream_w.lock().await.sm = d.to_upstream;
                    if let Some(h) = h {
                        let new = client_leg.sm.to_sender(h);
                        if new != h {
                            if let Some(r) = root
                                .children_mut()
                                .find(|c| c.name == "resume" && c.ns == NS_SM)
                            {
                                r.set_attr("h", sm::format_h(new));
                                rewritten = true;
                            }
                        }
                    }
                }
                None => {
                    root.children.retain(
                        |n| !matches!(n, Node::Element(e) if e.name == "resume" && e.ns == NS_SM),
                    );
                    rewritten = true;
                    self.sasl2_resume_refused.store(true, Ordering::Release);
                    info!("SASL2: not resuming a stream-management session this node did not relay; the client binds afresh");
                }
            }
        }
        // The server reads the first element in Bind2's namespace whatever its name
        // (Prosody's `mod_sasl2_bind2`), and the first tag in it: a request where it could
        // read another tag than the one judged here is refused whole.
        let odd = {
            let mut bind2 = root.children().filter(|c| c.ns == NS_BIND2);
            let first = bind2.next();
            bind2.next().is_some()
                || first.is_some_and(|b| {
                    b.name != "bind" || b.children().filter(|c| c.name == "tag").count() > 1
                })
        };
        if odd {
            return Err(Ended::Failed(
                ClientFault::UnsupportedElement(
                    "<authenticate/> with other than one <bind/> holding at most one <tag/> in \"urn:xmpp:bind:0\"".into(),
                )
                .into(),
            ));
        }
        // A Bind2 tag becomes part of the resource, in the address of all the session
        // sends: one policy refuses is taken out, and the server picks a resource.
        let tag = root
            .child("bind", NS_BIND2)
            .and_then(|b| b.child("tag", NS_BIND2))
            .map(|t| t.text().trim().to_owned())
            .filter(|t| !t.is_empty());
        if let Some(tag) = tag {
            let info = self.snapshot();
            if self.shared.inspector.refuses_words(&info, &tag).await {
                if let Some(bind) = root
                    .children_mut()
                    .find(|c| c.name == "bind" && c.ns == NS_BIND2)
                {
                    bind.retain_children(|c| !(c.name == "tag" && c.ns == NS_BIND2));
                    rewritten = true;
                    *self
                        .sasl2_refused_tag
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(tag);
                    info!("SASL2: took a Bind2 tag policy refuses out of the request; the server picks the resource");
                }
            }
        }
        self.lock_state().client_nonza(&root);
        let bytes = if rewritten {
            let mut out = Vec::with_capacity(stanza.raw.len());
            root.write_to(&mut out);
            bytes::Bytes::from(out)
        } else {
            stanza.raw
        };
        self.upstream_w
            .lock()
            .await
            .write(&bytes, Counted::No)
            .await
    }

    /// The upstream's SASL2 success for this session's `<authenticate/>`: the account
    /// Bind2 bound, or the session resumed inline, is learnt; a Bind2 tag policy took
    /// out of the request is recorded, and a resource built from the client's tag is
    /// judged, before the client has the success; an inline resumption's `h`
    /// is translated; stream management enabled inline starts both legs' counts once
    /// the client has the success. No stream restart (XEP-0388).
    async fn sasl2_succeeded(&self, stanza: Stanza, outcome: Sasl2Success) -> Result<(), Ended> {
        let mut root = stanza.root;
        let mut rewritten = false;
        if let Some(previd) = &outcome.resumed {
            let detached = self
                .shared
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(previd);
            let account = detached.and_then(|d| d.jid).map(|jid| Account { jid });
            match self.lock_state().resumed(account) {
                Some(account) => self.learn_account(&account),
                None => warn!("session resumed whose account this proxy never saw bound; its stanzas are refused"),
            }
            let h = root
                .child("resumed", NS_SM)
                .and_then(|r| r.attr("h"))
                .and_then(sm::parse_h);
            if let Some(h) = h {
                let new = self.upstream_w.lock().await.sm.to_sender(h);
                if new != h {
                    if let Some(r) = root
                        .children_mut()
                        .find(|c| c.name == "resumed" && c.ns == NS_SM)
                    {
                        r.set_attr("h", sm::format_h(new));
                        rewritten = true;
                    }
                }
            }
        }
        if self.sasl2_resume_refused.swap(false, Ordering::AcqRel) && outcome.resumed.is_none() {
            let mut failed = Element::new("failed", NS_SM);
            failed.children.push(Node::Element(Element::new(
                "item-not-found",
                "urn:ietf:params:xml:ns:xmpp-stanzas",
            )));
            root.children.push(Node::Element(failed));
            rewritten = true;
        }
        if let Some(account) = &outcome.bound {
            self.learn_account(account);
        }
        let known = self.snapshot().jid.clone();
        let resource = known
            .as_deref()
            .and_then(|j| j.split_once('/'))
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default();
        let mut refused: Option<ClientFault> = None;
        // A tag policy took out of the request is on the record, as what the user sent,
        // once the account is known (bound, or a resumed session's).
        let refused_tag = self
            .sasl2_refused_tag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let (Some(_), Some(tag)) = (&known, refused_tag) {
            if let Err(reason) = self.record_refused_tag(tag).await {
                warn!(%reason, "the record of a Bind2 tag taken out of the request could not be written; the session ends");
                refused = Some(ClientFault::Bind2TagNotArchived);
            }
        }
        // A resource built from the client's Bind2 tag is its words in the address of
        // all the session would send. The tag was judged at the `<authenticate/>` from the
        // session's domain; now the account is known, the resource is judged as an RFC
        // 6120 bind result is, and one policy refuses ends the session before the client
        // has the success.
        if let (Some(account), true) = (&outcome.bound, outcome.chose) {
            if refused.is_none() {
                match self.judge_bound_tag(account).await {
                    Ok(true) => self.lock_state().confirm_bound(),
                    Ok(false) => refused = Some(ClientFault::ResourceRefused(resource.clone())),
                    Err(_) => refused = Some(ClientFault::BindNotArchived(resource.clone())),
                }
            }
            if let Ok(mut info) = self.info.write() {
                Arc::make_mut(&mut info).chose_resource = false;
            }
        }
        // The session's start is on the record before the client can send under it,
        // and before its end when it is refused here.
        if known.is_some() {
            self.shared.inspector.session_bound(&self.snapshot()).await;
        }
        if let Some(fault) = refused {
            return Err(Ended::Failed(fault.into()));
        }
        let bytes = if rewritten {
            let mut out = Vec::with_capacity(stanza.raw.len() + 100);
            root.write_to(&mut out);
            bytes::Bytes::from(out)
        } else {
            stanza.raw
        };
        let mut client_leg = self.client_w.lock().await;
        client_leg.write(&bytes, Counted::No).await?;
        if outcome.sm_enabled {
            // Both ends count from here (the server finishes enabling after it has sent
            // the success).
            client_leg.sm.start();
            self.upstream_w.lock().await.sm.start();
        }
        Ok(())
    }

    /// Records the tag policy took out of the client's Bind2 request, now the session's
    /// account is known: a request holding that tag alone, inspected as what the user
    /// sent (it is judged again, with the account, and recorded when a rule matched).
    /// `Err` when its record could not be written.
    async fn record_refused_tag(&self, tag: String) -> Result<(), String> {
        let mut root = Element::new("bind", NS_BIND2);
        let mut t = Element::new("tag", NS_BIND2);
        t.children.push(Node::Text(tag));
        root.children.push(Node::Element(t));
        self.inspect_settled(Direction::Outbound, root)
            .await
            .map(|_| ())
    }

    /// Judges the resource Bind2 bound from the client's tag, `account`'s, on what the
    /// SASL2 success says of it alone: a success that holds the authorization identifier
    /// and `<bound/>`, and nothing else it carried (the server's SASL data, a FAST
    /// token). That success is what is recorded when a rule matched the resource.
    /// `Ok(true)` to deliver the success; `Ok(false)` when policy refuses the resource;
    /// `Err` when its record could not be written.
    async fn judge_bound_tag(&self, account: &Account) -> Result<bool, String> {
        let mut root = Element::new("success", NS_SASL2);
        let mut authz = Element::new("authorization-identifier", NS_SASL2);
        authz.children.push(Node::Text(account.jid.clone()));
        root.children.push(Node::Element(authz));
        root.children
            .push(Node::Element(Element::new("bound", NS_BIND2)));
        let decision = self.inspect_settled(Direction::Inbound, root).await?;
        Ok(decision == Decision::Forward)
    }

    /// Inspects `root`, an element this relay made of what a Bind2 exchange says of the
    /// session's address, as crossing in `direction`, and waits for its record: the
    /// decision, or `Err` when the record could not be written.
    async fn inspect_settled(
        &self,
        direction: Direction,
        root: Element,
    ) -> Result<Decision, String> {
        let mut raw = Vec::new();
        root.write_to(&mut raw);
        let stanza = Stanza {
            raw: bytes::Bytes::from(raw),
            root,
        };
        let info = self.snapshot();
        let mut view = StanzaView::of(&stanza.root);
        let inspection = self
            .inspect(direction, &info, &stanza, &mut view, Copy::Direct, None)
            .await;
        if let Some(durable) = inspection.durable {
            durable.await?;
        }
        Ok(inspection.outcome.decision)
    }

    /// Offers `stanza` to the inspector as crossing in `direction` in the session `info`,
    /// its `view`'s implicit addresses filled in from the session first.
    async fn inspect(
        &self,
        direction: Direction,
        info: &SessionInfo,
        stanza: &Stanza,
        view: &mut StanzaView,
        copy: Copy,
        claimed_from: Option<&str>,
    ) -> Inspection {
        fill_addresses(view, direction, info.jid.as_deref());
        self.shared
            .inspector
            .inspect(Inspected {
                direction,
                session: info,
                view,
                stanza,
                copy,
                claimed_from,
            })
            .await
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's account is proven: the upstream answered this session's own bind
    /// request (RFC 6120 §7.6.1) or resumed a session bound through this proxy.
    fn learn_account(&self, account: &Account) {
        tracing::Span::current().record("jid", account.jid.as_str());
        info!(jid = %account.jid, "resource bound");
        let chose = self.lock_state().chose_resource();
        if let Ok(mut info) = self.info.write() {
            let info = Arc::make_mut(&mut info);
            info.jid = Some(account.jid.clone());
            info.chose_resource = chose;
        }
    }

    /// The leg a direction's stanzas go to, and the leg back to their sender.
    fn legs(&self, direction: Direction) -> (&Mutex<LegWriter>, &Mutex<LegWriter>) {
        match direction {
            Direction::Outbound => (&self.upstream_w, &self.client_w),
            Direction::Inbound => (&self.client_w, &self.upstream_w),
        }
    }

    /// Forwards the stanzas at the head of the window whose records are settled (the
    /// first one's is `head`): what goes to the peer in one write, errors and notices for
    /// the sender in another. A stanza whose record failed is refused.
    async fn forward_settled(
        &self,
        direction: Direction,
        window: &mut Window,
        head: Result<(), String>,
    ) -> Result<(), Ended> {
        let mut peer = Batch::default();
        let mut sender = Batch::default();
        for (item, result) in window.take_settled(head) {
            let outcome = match result {
                Ok(()) => item.inspection.outcome,
                // The inspector logged why.
                Err(_) => crate::inspect::Outcome {
                    decision: Decision::Refuse {
                        error: item.root.as_ref().and_then(|root| {
                            stanza_error(
                                root,
                                item.from.as_deref(),
                                item.to.as_deref(),
                                ErrorType::Wait,
                                "internal-server-error",
                                Some(crate::inspect::NOT_ARCHIVED),
                            )
                        }),
                    },
                    inject: Default::default(),
                },
            };
            // Injected stanzas go first: a recording notice should reach the external
            // party before the message it is about.
            let inject = outcome.inject;
            let (to_peer, to_sender) = match direction {
                Direction::Outbound => (inject.to_upstream, inject.to_client),
                Direction::Inbound => (inject.to_client, inject.to_upstream),
            };
            for bytes in &to_sender {
                sender.add(bytes, Counted::Injected);
            }
            for bytes in &to_peer {
                peer.add(bytes, Counted::Injected);
            }
            let counted = if item.root.is_some() {
                Counted::Forwarded
            } else {
                Counted::No
            };
            match outcome.decision {
                Decision::Forward => peer.add(&item.raw, counted),
                Decision::Replace(bytes) => peer.add(&bytes, counted),
                Decision::Refuse { error } => {
                    peer.add(&[], Counted::Dropped);
                    if let Some(error) = error {
                        sender.add(&error, Counted::Injected);
                    }
                }
            }
        }
        // Going out, the peer's batch first: a client that cannot take its errors does
        // not hold back the stanzas already archived before and after the refused one.
        // Coming in, the server's batch first: a client that stops reading does not hold
        // back what Custos sends the server (a room closed for its name is destroyed).
        let (to_peer, to_sender) = self.legs(direction);
        if direction == Direction::Inbound && !sender.counts.is_empty() {
            to_sender.lock().await.write_batch(&sender).await?;
        }
        if !peer.counts.is_empty() {
            to_peer.lock().await.write_batch(&peer).await?;
        }
        if direction == Direction::Outbound && !sender.counts.is_empty() {
            to_sender.lock().await.write_batch(&sender).await?;
        }
        Ok(())
    }

    /// Forwards everything in the window, waiting for each record: before anything that
    /// is not a stanza goes on, so the peer gets it in wire order, and stream management
    /// and restarts see every earlier stanza written.
    async fn drain(&self, direction: Direction, window: &mut Window) -> Result<(), Ended> {
        while !window.is_empty() {
            let head = window.head_settled().await;
            self.forward_settled(direction, window, head).await?;
        }
        Ok(())
    }

    /// After a direction ended: what it read and inspected still goes on (its records are
    /// in the log), within a bound, unless the leg it goes to is gone.
    async fn drain_at_end(&self, direction: Direction, window: &mut Window, ended: &Ended) {
        let peer_gone = match direction {
            Direction::Outbound => matches!(ended, Ended::UpstreamGone),
            Direction::Inbound => matches!(ended, Ended::ClientGone),
        };
        if window.is_empty() || peer_gone {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.drain(direction, window)).await;
    }

    /// One stanza or nonza, read in wire order: a stanza is inspected (its record queued)
    /// and joins the window; anything else first drains the window.
    async fn relay_stanza(
        &self,
        direction: Direction,
        mut stanza: Stanza,
        window: &mut Window,
    ) -> Result<(), Ended> {
        let (to_peer, to_sender) = self.legs(direction);
        if crate::stanza::flatten_mixed_text(&mut stanza.root) {
            // What is judged and recorded is what is delivered.
            let mut raw = Vec::with_capacity(stanza.raw.len());
            stanza.root.write_to(&mut raw);
            stanza.raw = raw.into();
        }
        let mut view = StanzaView::of(&stanza.root);
        if view.kind == StanzaKind::Nonza {
            self.drain(direction, window).await?;
            if stanza.root.ns == NS_STREAMS && stanza.root.name == "error" {
                log_stream_error(direction, &stanza.root);
            }
            if direction == Direction::Outbound {
                let root = &stanza.root;
                if !client_nonza_carried(root) {
                    return Err(Ended::Failed(
                        ClientFault::UnsupportedElement(format!(
                            "<{}/> in {:?}",
                            root.name, root.ns
                        ))
                        .into(),
                    ));
                }
                let sasl2 = root.ns == NS_SASL2 && root.name == "authenticate";
                let sasl1 = root.ns == stream::NS_SASL && root.name == "auth";
                if (sasl1 || sasl2) && self.lock_state().authenticated() {
                    return Err(Ended::Failed(ClientFault::Reauthentication.into()));
                }
                // Never offered, so only a scripted client asks; the server must not
                // judge it by Custos's side of the upstream TLS session.
                if sasl1 || sasl2 {
                    let mechanism = root.attr("mechanism").unwrap_or_default();
                    if !crate::features::mechanism_crosses(mechanism) {
                        info!(
                            mechanism,
                            "refused a SASL mechanism bound to the client's TLS session"
                        );
                        let failure: &[u8] = if sasl2 {
                            b"<failure xmlns='urn:xmpp:sasl:2'><invalid-mechanism xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>"
                        } else {
                            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
                        };
                        return to_sender.lock().await.write(failure, Counted::No).await;
                    }
                }
                if sasl2 {
                    return self.sasl2_authenticate(stanza).await;
                }
                self.lock_state().client_nonza(&stanza.root);
            }
            // Stream-level elements (SASL exchanges, stream management) pass unlogged:
            // SASL payloads carry credentials. Only XEP-0198 counts are rewritten.
            if self.stream_management(direction, &stanza).await? {
                return Ok(());
            }
            return to_peer.lock().await.write(&stanza.raw, Counted::No).await;
        }
        let (copy, claimed_from) = match direction {
            Direction::Outbound => {
                let decision = self.lock_state().client_stanza(&stanza.root, &view);
                match decision {
                    ClientStanza::NotAuthorized => {
                        self.drain(direction, window).await?;
                        return Err(Ended::Failed(
                            ClientFault::NotAuthorized(stanza.root.name.to_string()).into(),
                        ));
                    }
                    ClientStanza::PassUnrecorded => {
                        window.push(InFlight::stanza(
                            stanza,
                            None,
                            None,
                            crate::inspect::Outcome::forward().into(),
                        ));
                        return Ok(());
                    }
                    ClientStanza::InvalidFrom { claimed, .. } => (Copy::Direct, Some(claimed)),
                    // A client never relays the server's carbons or archive results.
                    ClientStanza::Inspect(_) if view.forwarded.is_some() => {
                        (Copy::ForgedWrapper, None)
                    }
                    ClientStanza::Inspect(_) => (Copy::Direct, None),
                }
            }
            Direction::Inbound => (self.lock_state().upstream_copy(&view), None),
        };
        let info = self.snapshot();
        let inspection = self
            .inspect(
                direction,
                &info,
                &stanza,
                &mut view,
                copy,
                claimed_from.as_deref(),
            )
            .await;
        if let Some(claimed) = claimed_from {
            // Nothing of the stanza is delivered; the attempt is on the record (queued
            // before anything else can fail), and what came before it goes on first.
            self.drain(direction, window).await?;
            let _ = inspection.settled().await;
            to_peer.lock().await.sm.dropped();
            return Err(Ended::Failed(
                ClientFault::InvalidFrom {
                    claimed,
                    account: info.jid.clone().unwrap_or_default(),
                }
                .into(),
            ));
        }
        window.push(InFlight::stanza(stanza, view.from, view.to, inspection));
        Ok(())
    }
}

/// Fills in the addresses the wire leaves implicit (RFC 6120 §8.1.2.1 and §10.3). A
/// client's stanza is from its session's proven JID whatever it wrote (a `from` that is
/// not its own never gets this far).
pub(crate) fn fill_addresses(view: &mut StanzaView, direction: Direction, jid: Option<&str>) {
    let Some(jid) = jid else { return };
    let bare = jid.split('/').next().unwrap_or(jid);
    match direction {
        Direction::Outbound => {
            view.from = Some(jid.to_owned());
            view.to.get_or_insert_with(|| bare.to_owned());
        }
        Direction::Inbound => {
            view.to.get_or_insert_with(|| jid.to_owned());
            view.from.get_or_insert_with(|| bare.to_owned());
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::inspect::Outcome;
    use tokio::sync::oneshot;

    fn pending() -> (oneshot::Sender<Result<(), String>>, InFlight) {
        let (tx, rx) = oneshot::channel::<Result<(), String>>();
        let durable: crate::inspect::Durable =
            Box::pin(async move { rx.await.unwrap_or(Err("dropped".into())) });
        let item = InFlight {
            raw: bytes::Bytes::from_static(b"<message/>"),
            root: None,
            from: None,
            to: None,
            inspection: Inspection {
                outcome: Outcome::forward(),
                durable: Some(durable),
            },
        };
        (tx, item)
    }

    /// A later record acknowledged first waits for the earlier one: nothing overtakes.
    #[tokio::test]
    async fn a_later_record_settled_first_does_not_overtake() {
        let mut w = Window::default();
        let (first, a) = pending();
        let (second, b) = pending();
        w.push(a);
        w.push(b);
        w.push(InFlight::whitespace(bytes::Bytes::from_static(b"\n")));
        second.send(Ok(())).ok();
        let early = tokio::time::timeout(Duration::from_millis(50), w.head_settled()).await;
        assert!(early.is_err(), "the head is not settled yet");
        assert_eq!(w.queue.len(), 3);
        first.send(Ok(())).ok();
        let head = w.head_settled().await;
        let settled: Vec<_> = w.take_settled(head).collect();
        // All three go in one write, in order: the head, the one settled before it, and
        // the whitespace behind them.
        assert_eq!(settled.len(), 3);
        assert!(settled.iter().all(|(_, r)| r.is_ok()));
        assert!(w.is_empty());
        assert_eq!(w.bytes, 0);
        assert_eq!(w.queue.capacity(), 0, "an emptied window keeps no room");
    }

    /// A failed record is reported with its own stanza; what follows and is not settled
    /// stays in the window, in order.
    #[tokio::test]
    async fn a_failed_record_settles_alone_and_in_order() {
        let mut w = Window::default();
        let (first, a) = pending();
        let (_second, b) = pending();
        w.push(a);
        w.push(b);
        first.send(Err("disk full".into())).ok();
        let head = w.head_settled().await;
        let settled: Vec<_> = w.take_settled(head).collect();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].1, Err("disk full".to_owned()));
        assert_eq!(w.queue.len(), 1);
    }

    /// Stanzas not iterated stay in the window with their records' futures, in order,
    /// and are taken next time; an emptied window gives its queue back.
    #[tokio::test]
    async fn what_is_not_iterated_stays_in_the_window() {
        let mut w = Window::default();
        let (first, a) = pending();
        let (second, b) = pending();
        w.push(a);
        w.push(b);
        first.send(Ok(())).ok();
        second.send(Err("disk full".into())).ok();
        let head = w.head_settled().await;
        let mut settled = w.take_settled(head);
        assert!(matches!(settled.next(), Some((_, Ok(())))));
        drop(settled);
        assert_eq!(w.queue.len(), 1);
        assert_eq!(w.bytes, b"<message/>".len());
        let head = w.head_settled().await;
        assert_eq!(head, Err("disk full".to_owned()));
        let rest: Vec<_> = w.take_settled(head).collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, Err("disk full".to_owned()));
        assert!(w.is_empty());
        assert_eq!((w.bytes, w.queue.capacity()), (0, 0));
    }

    #[test]
    fn the_window_is_bounded_in_stanzas_and_bytes() {
        let mut w = Window::default();
        for _ in 0..WINDOW_STANZAS {
            assert!(w.has_room());
            w.push(InFlight::whitespace(bytes::Bytes::from_static(b" ")));
        }
        assert!(!w.has_room());
        let mut w = Window::default();
        w.push(InFlight::whitespace(bytes::Bytes::from(vec![
            b' ';
            WINDOW_BYTES
        ])));
        assert!(!w.has_room());
    }
}
