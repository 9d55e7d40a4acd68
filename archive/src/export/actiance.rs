//! Actiance XML, the chat format Smarsh and other archivers ingest: one `<FileDump>` of
//! `<Conversation>` elements, each with its room, start and end, participants entering
//! and leaving, messages and file transfers. Element names follow the shape Microsoft
//! documents for Actiance in its persistent-chat compliance XSL example; times are
//! milliseconds since 1970 (UTC).
//!
//! ```text
//!  <FileDump>
//!   <Conversation Perspective="chat:a@x b@x">
//!     <RoomID>…</RoomID><StartTimeUTC>ms</StartTimeUTC>
//!     <ParticipantEntered> LoginName DateTimeUTC InternalFlag ConversationID CorporateEmailID
//!     <Message> LoginName DateTimeUTC Content
//!     <FileTransferStarted>/<FileTransferEnded> LoginName DateTimeUTC FileName (Status)
//!     <ParticipantLeft> …
//!     <EndTimeUTC>ms</EndTimeUTC>
//!   </Conversation>
//!  </FileDump>
//! ```
//!
//! One `<Message>` per logical message (its copies on other streams are not repeated);
//! a participant enters at their first message in the selection and leaves after their
//! last. `InternalFlag` is true for an account that proved itself through Custos.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::filter::Filter;
use super::row::Conversation;
use super::{ExportError, ExportRequest};
use crate::archive::{ArchiveReader, ReadError};
use crate::keys::MasterKey;
use crate::query::{self, bare_jid, normalize_jid};
use crate::record::NewRecord;

/// What [`export_actiance`] wrote.
#[derive(Debug, Clone)]
pub struct ActianceSummary {
    pub out: PathBuf,
    pub conversations: usize,
    pub messages: u64,
    pub file_transfers: u64,
}

enum Event {
    Message {
        login: String,
        time: i64,
        content: String,
    },
    File {
        login: String,
        time: i64,
        name: String,
    },
}

struct Conv {
    key: String,
    room: String,
    start: i64,
    end: i64,
    /// Bare JID → (first, last) time.
    participants: BTreeMap<String, (i64, i64)>,
    events: Vec<Event>,
    shown: HashSet<String>,
}

/// Text XML 1.0 can carry: markup escaped, characters it forbids replaced.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Writes the message records selected by `req` from the chains in `chain_dirs` (one
/// per node; conversations merged across them, each logical message once) as one
/// Actiance XML file `out` (refused if it exists).
pub fn export_actiance(
    chain_dirs: &[&Path],
    master_key: &MasterKey,
    req: &ExportRequest,
    out: &Path,
) -> Result<ActianceSummary, ExportError> {
    if out.exists() {
        return Err(ExportError::OutExists(out.to_path_buf()));
    }
    let q = req.query.as_deref().map(query::parse).transpose()?;
    let filter = Filter::new(q, req.since, req.until);
    let mut convs: BTreeMap<String, Conv> = BTreeMap::new();
    let mut internal: HashSet<String> = HashSet::new();
    for dir in chain_dirs {
        let reader = ArchiveReader::open(dir, master_key).map_err(|e| match e {
            ReadError::Log(l) => ExportError::Open(l),
            other => ExportError::Read {
                segment: 0,
                what: format!("{}: {other}", dir.display()),
            },
        })?;
        // Segments whose key is gone (first seq, records), and those a shred record names.
        let mut keyless: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut shred_named: HashSet<u64> = HashSet::new();
        reader
            .scan(1, |e| {
                let Some(rec) = &e.record else {
                    keyless.entry(e.segment).or_insert((e.seq, 0)).1 += 1;
                    return Ok::<(), ReadError>(());
                };
                if let NewRecord::Event(crate::record::EventRecord::Shred { segment, .. }) =
                    &rec.content
                {
                    shred_named.insert(*segment);
                }
                let NewRecord::Message(m) = &rec.content else {
                    return Ok(());
                };
                if !filter.selects(rec) {
                    return Ok(());
                }
                let bare = |j: &str| bare_jid(&normalize_jid(j)).to_string();
                if !m.capture.account.is_empty() {
                    internal.insert(bare(&m.capture.account));
                }
                let c = Conversation::of(rec);
                let room = c
                    .key
                    .split_once(':')
                    .map_or(c.key.clone(), |(_, r)| r.to_string());
                let conv = convs.entry(c.key.clone()).or_insert_with(|| Conv {
                    key: c.key.clone(),
                    room,
                    start: rec.time.0,
                    end: rec.time.0,
                    participants: BTreeMap::new(),
                    events: Vec::new(),
                    shown: HashSet::new(),
                });
                conv.start = conv.start.min(rec.time.0);
                conv.end = conv.end.max(rec.time.0);
                // A copy of a message already shown (another stream's) adds nothing.
                let names: Vec<&String> = std::iter::once(&m.capture.identity)
                    .chain(m.capture.delivered_identity.as_ref())
                    .filter(|i| !i.is_empty())
                    .collect();
                if names.iter().any(|n| conv.shown.contains(*n)) {
                    return Ok(());
                }
                for n in names {
                    conv.shown.insert(n.clone());
                }
                let login = bare(&m.from);
                for p in [login.clone(), bare(&m.to)] {
                    if p.is_empty() {
                        continue;
                    }
                    let span = conv
                        .participants
                        .entry(p)
                        .or_insert((rec.time.0, rec.time.0));
                    span.0 = span.0.min(rec.time.0);
                    span.1 = span.1.max(rec.time.0);
                }
                let mut content = String::new();
                if let Some(e) = &m.capture.edit {
                    content.push_str(&format!(
                        "[Custos: {} of message {}; the original stays on the record]\n",
                        e.kind.as_str(),
                        e.target
                    ));
                }
                if let Some(s) = &m.outcome.e2ee {
                    content.push_str(&format!(
                        "[Custos: end-to-end encrypted ({s}); the text is the client's fallback]\n"
                    ));
                }
                if let Some(s) = &m.subject {
                    content.push_str(&format!("Subject: {s}\n"));
                }
                if let Some(b) = &m.body {
                    content.push_str(b);
                }
                if m.outcome.action != crate::record::Action::Allow || !m.outcome.rules.is_empty() {
                    content.push_str(&format!(
                        "\n[Custos: {}{}]",
                        m.outcome.action.as_str(),
                        if m.outcome.rules.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", m.outcome.rules.join(", "))
                        }
                    ));
                }
                conv.events.push(Event::Message {
                    login: login.clone(),
                    time: rec.time.0,
                    content,
                });
                for t in m.capture.extra.iter().filter(|t| t.kind == "oob-url") {
                    conv.events.push(Event::File {
                        login: login.clone(),
                        time: rec.time.0,
                        name: t.text.clone(),
                    });
                }
                Ok(())
            })
            .map_err(|e| ExportError::Read {
                segment: 0,
                what: format!("{}: {e}", dir.display()),
            })?;
        // A key is destroyed legitimately only after a signed shred record naming its
        // segment is in the chain: any other missing key would leave records out.
        if let Some((&segment, &(first_seq, records))) =
            keyless.iter().find(|(s, _)| !shred_named.contains(s))
        {
            return Err(ExportError::KeyMissing {
                segment,
                first_seq,
                records,
            });
        }
    }
    let write_err = |source| ExportError::Write {
        path: out.to_path_buf(),
        source,
    };
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(write_err)?;
    let mut w = std::io::BufWriter::new(file);
    let mut summary = ActianceSummary {
        out: out.to_path_buf(),
        conversations: convs.len(),
        messages: 0,
        file_transfers: 0,
    };
    let person = |w: &mut std::io::BufWriter<std::fs::File>, login: &str, time: i64| {
        write!(
            w,
            "<LoginName>{}</LoginName><DateTimeUTC>{time}</DateTimeUTC>",
            xml(login)
        )
    };
    (|| -> std::io::Result<()> {
        writeln!(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>")?;
        writeln!(w, "<FileDump>")?;
        for c in convs.values() {
            let id = xml(&c.key);
            writeln!(w, "<Conversation Perspective=\"{id}\">")?;
            writeln!(
                w,
                "<RoomID>{}</RoomID><StartTimeUTC>{}</StartTimeUTC>",
                xml(&c.room),
                c.start
            )?;
            // Entered at their first message, left after their last, interleaved in time.
            let mut timeline: Vec<(i64, u8, usize)> = Vec::new();
            for (i, (_, (first, last))) in c.participants.iter().enumerate() {
                timeline.push((*first, 0, i));
                timeline.push((*last, 2, i));
            }
            for (i, e) in c.events.iter().enumerate() {
                let t = match e {
                    Event::Message { time, .. } | Event::File { time, .. } => *time,
                };
                timeline.push((t, 1, i));
            }
            timeline.sort();
            let names: Vec<&String> = c.participants.keys().collect();
            for (time, kind, i) in timeline {
                match kind {
                    0 | 2 => {
                        let p = names.get(i).map_or("", |s| s.as_str());
                        let tag = if kind == 0 {
                            "ParticipantEntered"
                        } else {
                            "ParticipantLeft"
                        };
                        write!(w, "<{tag}>")?;
                        person(&mut w, p, time)?;
                        writeln!(
                            w,
                            "<InternalFlag>{}</InternalFlag><ConversationID>{id}</ConversationID><CorporateEmailID>{}</CorporateEmailID></{tag}>",
                            internal.contains(p),
                            xml(p)
                        )?;
                    }
                    _ => match c.events.get(i) {
                        Some(Event::Message {
                            login,
                            time,
                            content,
                        }) => {
                            write!(w, "<Message>")?;
                            person(&mut w, login, *time)?;
                            writeln!(w, "<Content>{}</Content></Message>", xml(content))?;
                            summary.messages += 1;
                        }
                        Some(Event::File { login, time, name }) => {
                            write!(w, "<FileTransferStarted>")?;
                            person(&mut w, login, *time)?;
                            writeln!(w, "<FileName>{}</FileName></FileTransferStarted>", xml(name))?;
                            write!(w, "<FileTransferEnded>")?;
                            person(&mut w, login, *time)?;
                            writeln!(
                                w,
                                "<FileName>{}</FileName><Status>Completed</Status></FileTransferEnded>",
                                xml(name)
                            )?;
                            summary.file_transfers += 1;
                        }
                        None => {}
                    },
                }
            }
            writeln!(w, "<EndTimeUTC>{}</EndTimeUTC>", c.end)?;
            writeln!(w, "</Conversation>")?;
        }
        writeln!(w, "</FileDump>")?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    })()
    .map_err(write_err)?;
    std::fs::rename(&tmp, out).map_err(write_err)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::xml;

    #[test]
    fn text_is_escaped_and_forbidden_characters_replaced() {
        assert_eq!(
            xml("a<b>&\"c\u{1}\u{FFFF}\n"),
            "a&lt;b&gt;&amp;&quot;c\u{FFFD}\u{FFFD}\n"
        );
    }
}
