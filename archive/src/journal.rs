//! Journaling: the archive's messages as one e-mail per conversation per period, the
//! form existing archivers (Global Relay, Smarsh, Proofpoint, Vault, Purview) ingest.
//! This module decides what each journal message holds; the binary delivers it.
//!
//! ```text
//!  chain from the cursor's seq ─▶ records with time < end of the last closed period
//!      ─▶ group by (period, conversation) ─▶ JournalMessage (participants, transcript
//!         with verdicts, edits, copies) ─▶ Message-ID fixed by (archive, conversation,
//!         period): a redelivery after a crash is the same message, deduplicated
//! ```
//!
//! Record times never go backwards in a chain, so a period is complete once its end has
//! passed (plus a grace for appends in flight), and the cursor is a seq and a time.
//!
//! The copies of one message (the sender's, the recipient's, carbons) are recorded
//! moments apart, so a run's end can fall between them. A run therefore also reads the
//! records of the [`copy_window`] after its end, counts those that are copies of its own
//! messages, and names them in [`JournalBatch::taken_ahead`]; the next run skips them.
//! A copy recorded later than that (an archive replay days after) is journaled again in
//! its own period, as a message of its own.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::archive::{ArchiveReader, ReadError};
use crate::export::hex;
use crate::export::row::Conversation;
use crate::query::{bare_jid, normalize_jid};
use crate::record::{NewRecord, Record};
use crate::time::Timestamp;

/// One message of a transcript (a logical message: its copies are counted, not repeated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLine {
    pub seq: u64,
    pub time: Timestamp,
    pub from: String,
    pub to: String,
    pub subject: Option<String>,
    pub body: Option<String>,
    /// The text delivered when policy redacted it.
    pub delivered: Option<String>,
    /// `allow`, `flag`, `redact` or `block`, with the rules that matched.
    pub action: String,
    pub rules: Vec<String>,
    /// A correction or retraction: its kind and the message id it changes.
    pub edit: Option<(String, String)>,
    pub e2ee: Option<String>,
    /// Other texts the message carried: shared files' links (`oob-url`), other
    /// languages, formatted text, as `(kind, text)`.
    pub extra: Vec<(String, String)>,
    pub copies: usize,
}

/// One journal e-mail: a conversation's messages in one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalMessage {
    /// Without angle brackets; the same for the same archive, conversation and period.
    pub message_id: String,
    pub title: String,
    /// Bare JIDs of everyone who wrote or was written to, sorted.
    pub participants: Vec<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub lines: Vec<JournalLine>,
}

/// What [`collect`] found: the messages of every period that closed, and where the
/// next run starts.
#[derive(Debug, Clone)]
pub struct JournalBatch {
    pub messages: Vec<JournalMessage>,
    /// The first seq not taken (the next run scans from here).
    pub next_seq: u64,
    /// Periods before this time are complete and in `messages`.
    pub through: Timestamp,
    /// Records read.
    pub scanned: u64,
    /// Records at or past `next_seq` already counted here as copies of this run's
    /// messages: the next run passes them to [`collect`] as `taken`.
    pub taken_ahead: Vec<u64>,
}

/// How long after a message its other copies are still counted with it across a run's
/// end, and the grace a run leaves for appends in flight: half a period, at most 30 s.
pub fn copy_window(period_ms: i64) -> i64 {
    (period_ms / 2).clamp(0, 30_000)
}

enum Scan {
    Read(ReadError),
    Done,
}

impl From<ReadError> for Scan {
    fn from(e: ReadError) -> Scan {
        Scan::Read(e)
    }
}

/// The start of the period `t` falls in.
pub fn period_start(t: Timestamp, period_ms: i64) -> Timestamp {
    Timestamp(t.0.div_euclid(period_ms.max(1)) * period_ms.max(1))
}

/// Reads the chain from `from_seq` and gathers the messages of every period that ends
/// at or before `until` (a period boundary), grouped per conversation and period.
/// `taken`: records the previous run already counted (its `taken_ahead`).
pub fn collect(
    reader: &ArchiveReader,
    from_seq: u64,
    until: Timestamp,
    period_ms: i64,
    taken: &[u64],
) -> Result<JournalBatch, ReadError> {
    let archive_id = reader.archive_id();
    let mut groups: BTreeMap<(i64, String), JournalMessage> = BTreeMap::new();
    // Logical message identity → (group key, line index), to count copies once.
    let mut seen: std::collections::HashMap<String, ((i64, String), usize)> =
        std::collections::HashMap::new();
    let mut next_seq = from_seq;
    let mut scanned = 0;
    let mut taken_ahead = Vec::new();
    let taken: std::collections::HashSet<u64> = taken.iter().copied().collect();
    let ahead_until = Timestamp(until.0.saturating_add(copy_window(period_ms)));
    let mut ahead = false;
    // Segments met without their key, each checked once for the shred record naming it.
    let mut shredded: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let r = reader.scan(from_seq, |e| {
        let Some(record) = &e.record else {
            // Shredded: nothing left to journal. A key gone without a shred record stops
            // the run where it is, so the journal does not pass over the segment.
            if shredded.insert(e.segment) && reader.shred_record_naming(e.segment, e.seq)?.is_none()
            {
                return Err(Scan::Read(ReadError::KeyMissing {
                    segment: e.segment,
                    seq: e.seq,
                }));
            }
            if !ahead {
                next_seq = e.seq + 1;
            }
            return Ok::<(), Scan>(());
        };
        if record.time >= until {
            // Past the run's end: only copies of this run's messages are counted.
            ahead = true;
            if record.time >= ahead_until {
                return Err(Scan::Done);
            }
            scanned += 1;
            if attach(&mut groups, &seen, record) {
                taken_ahead.push(e.seq);
            }
            return Ok(());
        }
        next_seq = e.seq + 1;
        scanned += 1;
        if !taken.contains(&e.seq) {
            add(&mut groups, &mut seen, record, &archive_id, period_ms);
        }
        Ok(())
    });
    match r {
        Ok(()) | Err(Scan::Done) => {}
        Err(Scan::Read(e)) => return Err(e),
    }
    Ok(JournalBatch {
        messages: groups.into_values().collect(),
        next_seq,
        through: until,
        scanned,
        taken_ahead,
    })
}

fn add(
    groups: &mut BTreeMap<(i64, String), JournalMessage>,
    seen: &mut std::collections::HashMap<String, ((i64, String), usize)>,
    record: &Record,
    archive_id: &[u8; 16],
    period_ms: i64,
) {
    let NewRecord::Message(m) = &record.content else {
        return;
    };
    let conv = Conversation::of(record);
    let start = period_start(record.time, period_ms);
    let key = (start.0, conv.key.clone());
    let identities: Vec<&String> = std::iter::once(&m.capture.identity)
        .chain(m.capture.delivered_identity.as_ref())
        .filter(|i| !i.is_empty())
        .collect();
    if attach(groups, seen, record) {
        return;
    }
    let group = groups.entry(key.clone()).or_insert_with(|| JournalMessage {
        message_id: message_id(archive_id, &conv.key, start),
        title: conv.title.clone(),
        participants: Vec::new(),
        start,
        end: Timestamp(start.0 + period_ms),
        lines: Vec::new(),
    });
    for jid in [&m.from, &m.to] {
        let bare = bare_jid(&normalize_jid(jid)).to_string();
        if !bare.is_empty() && !group.participants.contains(&bare) {
            group.participants.push(bare);
            group.participants.sort();
        }
    }
    for i in identities {
        seen.insert(i.clone(), (key.clone(), group.lines.len()));
    }
    group.lines.push(JournalLine {
        seq: record.seq.0,
        time: record.time,
        from: m.from.clone(),
        to: m.to.clone(),
        subject: m.subject.clone(),
        body: m.body.clone(),
        delivered: m.outcome.delivered_body.clone(),
        action: m.outcome.action.as_str().to_string(),
        rules: m.outcome.rules.clone(),
        edit: m
            .capture
            .edit
            .as_ref()
            .map(|e| (e.kind.as_str().to_string(), e.target.clone())),
        e2ee: m.outcome.e2ee.clone(),
        extra: m
            .capture
            .extra
            .iter()
            .map(|t| (t.kind.clone(), t.text.clone()))
            .collect(),
        copies: 1,
    });
}

/// Counts `record` with the message it is a copy of (the recipient's leg, a carbon, a
/// replay), when that message is already in `groups`; says whether it was.
fn attach(
    groups: &mut BTreeMap<(i64, String), JournalMessage>,
    seen: &std::collections::HashMap<String, ((i64, String), usize)>,
    record: &Record,
) -> bool {
    let NewRecord::Message(m) = &record.content else {
        return false;
    };
    let found = std::iter::once(&m.capture.identity)
        .chain(m.capture.delivered_identity.as_ref())
        .filter(|i| !i.is_empty())
        .find_map(|i| seen.get(i));
    let Some(line) = found.and_then(|(k, i)| groups.get_mut(k).and_then(|g| g.lines.get_mut(*i)))
    else {
        return false;
    };
    line.copies += 1;
    let strictest = [&line.action, m.outcome.action.as_str()]
        .into_iter()
        .max_by_key(|a| rank(a))
        .unwrap_or("allow")
        .to_string();
    line.action = strictest;
    for r in &m.outcome.rules {
        if !line.rules.contains(r) {
            line.rules.push(r.clone());
        }
    }
    true
}

/// A sender's text with every line indented, so no line of it can pass for a
/// transcript line of Custos's own.
fn indent(text: &str) -> String {
    text.replace("\r\n", "\n").replace(['\r', '\n'], "\n    ")
}

fn rank(action: &str) -> u8 {
    match action {
        "block" => 3,
        "redact" => 2,
        "flag" => 1,
        _ => 0,
    }
}

/// `<period start ms>.<24 hex of SHA-256(archive id ‖ conversation)>@custos.journal`.
pub fn message_id(archive_id: &[u8; 16], conversation: &str, start: Timestamp) -> String {
    let mut h = Sha256::new();
    h.update(archive_id);
    h.update(conversation.as_bytes());
    let d = h.finalize();
    format!(
        "{}.{}@custos.journal",
        start.0,
        hex::encode(d.get(..12).unwrap_or_default())
    )
}

impl JournalMessage {
    /// The plain-text body: a participant table, then the transcript as it happened,
    /// each message with its verdict.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}\nFrom {} to {} (UTC), {} message(s), recorded by Custos.\n\nParticipants:\n",
            self.title,
            self.start,
            self.end,
            self.lines.len()
        );
        for p in &self.participants {
            out.push_str(&format!("  {p}\n"));
        }
        out.push_str("\nTranscript:\n");
        for l in &self.lines {
            let mut verdict = l.action.clone();
            if !l.rules.is_empty() {
                verdict.push_str(&format!(" [{}]", l.rules.join(", ")));
            }
            out.push_str(&format!(
                "\n[{}] {} -> {} ({verdict}; seq {}{})\n",
                l.time,
                l.from,
                l.to,
                l.seq,
                if l.copies > 1 {
                    format!(", {} copies", l.copies)
                } else {
                    String::new()
                }
            ));
            if let Some((kind, target)) = &l.edit {
                out.push_str(&format!(
                    "  ({kind} of message {target}; the original stays on the record)\n"
                ));
            }
            if let Some(s) = &l.e2ee {
                out.push_str(&format!(
                    "  (end-to-end encrypted, {s}: the text below is the client's fallback)\n"
                ));
            }
            if let Some(s) = &l.subject {
                out.push_str(&format!("  Subject: {}\n", indent(s)));
            }
            match (&l.body, &l.delivered) {
                (Some(b), Some(d)) if b != d => {
                    out.push_str(&format!(
                        "  Original: {}\n  Delivered: {}\n",
                        indent(b),
                        indent(d)
                    ));
                }
                (Some(b), _) => out.push_str(&format!("  {}\n", indent(b))),
                (None, _) => out.push_str("  (no body)\n"),
            }
            for (kind, text) in &l.extra {
                let label = match kind.as_str() {
                    "oob-url" => "file or link",
                    "oob-desc" => "file description",
                    other => other,
                };
                out.push_str(&format!("  [{label}] {}\n", indent(text)));
            }
            if l.action == "block" {
                out.push_str("  (not delivered: blocked by policy)\n");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_cannot_forge_a_transcript_line() {
        let m = JournalMessage {
            message_id: "1.ab@custos.journal".into(),
            title: "Conversation between a@x and b@x".into(),
            participants: vec!["a@x".into(), "b@x".into()],
            start: Timestamp(0),
            end: Timestamp(3_600_000),
            lines: vec![JournalLine {
                seq: 5,
                time: Timestamp(1000),
                from: "a@x/1".into(),
                to: "b@x".into(),
                subject: None,
                body: Some(
                    "hello\n\n[2026-01-01T00:00:00Z] b@x -> a@x (allow; seq 6)\r  forged".into(),
                ),
                delivered: None,
                action: "flag".into(),
                rules: vec!["r".into()],
                edit: None,
                e2ee: None,
                extra: vec![("oob-url".into(), "https://files.example/q3.pdf".into())],
                copies: 2,
            }],
        };
        let text = m.text();
        assert!(text.contains("(flag [r]; seq 5, 2 copies)"), "{text}");
        assert!(
            text.contains("  [file or link] https://files.example/q3.pdf"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.contains("seq 6")) {
            assert!(line.starts_with("    "), "indented: {line:?}");
        }
    }

    fn copy(from: &str, to: &str, direction: crate::record::Direction, body: &str) -> NewRecord {
        NewRecord::Message(crate::record::MessageRecord {
            direction,
            id: Some("m1".into()),
            capture: crate::record::Capture {
                identity: format!("identity of {body}"),
                ..Default::default()
            },
            ..crate::record::MessageRecord::chat(from, to, body)
        })
    }

    #[test]
    fn copies_on_both_sides_of_a_runs_end_make_one_line_journaled_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = crate::ArchiveConfig::new(
            tmp.path().join("archive"),
            crate::MasterKey::from_bytes([3; 32]),
            crate::SigningKey::from_bytes(&[4; 32]),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let archive = crate::Archive::open(cfg).unwrap();
        let period = 1_000;
        use crate::record::Direction::{Inbound, Outbound};
        // The sender's copy, then (once a period boundary has passed) the recipient's.
        let sent = rt
            .block_on(archive.append(copy("a@x/1", "b@x", Outbound, "hello")))
            .unwrap();
        let until = Timestamp(period_start(sent.time, period).0 + period);
        while Timestamp::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let got = rt
            .block_on(archive.append(copy("a@x/1", "b@x/2", Inbound, "hello")))
            .unwrap();
        assert!(got.time >= until && got.time.0 < until.0 + copy_window(period));
        // A message of the next period, for the next run.
        rt.block_on(archive.append(copy("b@x/2", "a@x", Outbound, "later")))
            .unwrap();
        let first = collect(archive.reader(), 1, until, period, &[]).unwrap();
        let lines: Vec<(&str, usize)> = first
            .messages
            .iter()
            .flat_map(|m| &m.lines)
            .map(|l| (l.body.as_deref().unwrap_or(""), l.copies))
            .collect();
        assert_eq!(lines, vec![("hello", 2)]);
        assert_eq!(first.taken_ahead, vec![got.seq.0]);
        assert_eq!(
            first.next_seq, got.seq.0,
            "the next run starts at the first record past the end"
        );
        let next = collect(
            archive.reader(),
            first.next_seq,
            Timestamp(until.0 + 10 * period),
            period,
            &first.taken_ahead,
        )
        .unwrap();
        let lines: Vec<(&str, usize)> = next
            .messages
            .iter()
            .flat_map(|m| &m.lines)
            .map(|l| (l.body.as_deref().unwrap_or(""), l.copies))
            .collect();
        assert_eq!(
            lines,
            vec![("later", 1)],
            "the recipient's copy is not journaled again"
        );
    }

    /// A data key moved away while the journal runs: the run stops at the segment, naming
    /// it, and does not pass over its messages; a segment shredded by a signed record is
    /// passed over.
    #[test]
    fn the_journal_stops_at_a_key_gone_without_a_shred_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let master = crate::MasterKey::from_bytes([3; 32]);
        let mut cfg = crate::ArchiveConfig::new(
            dir.clone(),
            master.clone(),
            crate::SigningKey::from_bytes(&[4; 32]),
        );
        cfg.segment_max_bytes = 4 * 1024;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let archive = crate::Archive::open(cfg).unwrap();
        use crate::record::Direction::Outbound;
        let pad = "x".repeat(300);
        for i in 0..40 {
            rt.block_on(archive.append(copy("a@x/1", "b@x", Outbound, &format!("m{i} {pad}"))))
                .unwrap();
        }
        let until = Timestamp(Timestamp::now().0 + 60_000);
        let key = dir.join(crate::segment::key_name(1));
        let saved = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let reader = crate::ArchiveReader::open(&dir, &master).unwrap();
        let e =
            collect(&reader, 1, until, 1_000, &[]).expect_err("the segment's messages passed over");
        assert!(
            matches!(e, ReadError::KeyMissing { segment: 1, seq: 1 }),
            "{e}"
        );
        std::fs::write(&key, saved).unwrap();
        rt.block_on(archive.shred_segment(1, "test", "{}", "officer"))
            .unwrap();
        let reader = crate::ArchiveReader::open(&dir, &master).unwrap();
        let batch = collect(&reader, 1, until, 1_000, &[]).unwrap();
        assert!(
            batch.scanned > 0 && batch.next_seq > 1,
            "{:?}",
            batch.next_seq
        );
        rt.block_on(archive.close()).unwrap();
    }

    #[test]
    fn periods_and_message_ids_are_stable() {
        assert_eq!(period_start(Timestamp(3_599_999), 3_600_000).0, 0);
        assert_eq!(period_start(Timestamp(3_600_000), 3_600_000).0, 3_600_000);
        let a = message_id(&[1; 16], "chat:a@x b@x", Timestamp(7));
        assert_eq!(a, message_id(&[1; 16], "chat:a@x b@x", Timestamp(7)));
        assert_ne!(a, message_id(&[2; 16], "chat:a@x b@x", Timestamp(7)));
        assert_ne!(a, message_id(&[1; 16], "chat:a@x c@x", Timestamp(7)));
        assert!(a.ends_with("@custos.journal") && !a.contains(['<', '>', ' ']));
    }
}
