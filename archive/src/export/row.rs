//! What an exported row shows, derived from one record.
//!
//! The writer fills the Parquet columns from [`Shown::from_record`], and the
//! verifier decodes each row's canonical encoding and calls the same function:
//! a displayed value that differs from what the signed record says is found.

use crate::query;
use crate::record::{Direction, EventRecord, NewRecord, Record};
use crate::segment::sha;

/// The human-facing columns of one row (everything but the proof columns).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Shown {
    pub seq: u64,
    pub time: i64,
    pub kind: String,
    pub direction: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub stanza_type: Option<String>,
    pub thread: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub delivered_body: Option<String>,
    pub action: Option<String>,
    pub rules: Vec<String>,
    pub session: Option<String>,
    pub message_id: Option<String>,
    pub origin_id: Option<String>,
    pub stanza_id: Option<String>,
    pub severity: Option<String>,
    pub e2ee: Option<String>,
    /// How the copy was captured (docs/capture.md); message rows only.
    pub logical_message: Option<String>,
    pub delivered_logical_message: Option<String>,
    pub via: Option<String>,
    pub leg: Option<String>,
    pub account: Option<String>,
    pub claimed_from: Option<String>,
    pub would_action: Option<String>,
    /// The retention class fixed when the record was written (message rows).
    pub retention_class: Option<String>,
    /// `{"kind","target"}` of a correction, retraction or moderation.
    pub edit: Option<String>,
    /// `[{"kind","lang","text"}]`: content beyond the body and subject.
    pub extra: Option<String>,
    /// Event fields as a JSON object (event rows only).
    pub event: Option<String>,
    /// Group chat: the person behind the room occupant (record format 4).
    pub occupant: Option<String>,
    /// `[{"url","name","media_type","size","sha256","stored","error"?}]`: files the message
    /// shared, without their bytes (those are in `canonical`).
    pub files: Option<String>,
    /// Path of the transcript holding this record, relative to the export.
    pub transcript: String,
    /// In a view across several nodes' parts: the node whose chain holds the record
    /// (not a column: each part is one node's chain).
    pub node: Option<String>,
}

/// The conversation a record belongs to: its transcript key and title.
pub(crate) struct Conversation {
    pub key: String,
    pub title: String,
}

impl Conversation {
    pub fn of(rec: &Record) -> Conversation {
        match &rec.content {
            NewRecord::Message(m) => Conversation::between(
                m.stanza_type.eq_ignore_ascii_case("groupchat"),
                m.direction == Direction::Outbound,
                &m.from,
                &m.to,
            ),
            NewRecord::Event(_) => Conversation::events(),
        }
    }

    fn between(groupchat: bool, outbound: bool, from: &str, to: &str) -> Conversation {
        if groupchat {
            // The room is the peer outside: the addressee of what a user sends, the
            // sender of what a user receives.
            let peer = if outbound { to } else { from };
            let room = query::bare_jid(&query::normalize_jid(peer)).to_string();
            return Conversation {
                title: format!("Group chat {room}"),
                key: format!("room:{room}"),
            };
        }
        let a = query::bare_jid(&query::normalize_jid(from)).to_string();
        let b = query::bare_jid(&query::normalize_jid(to)).to_string();
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        Conversation {
            title: format!("Conversation between {a} and {b}"),
            key: format!("chat:{a} {b}"),
        }
    }

    fn events() -> Conversation {
        Conversation {
            key: "events".into(),
            title: "Archive events (sessions, reviewer actions, recovery)".into(),
        }
    }

    /// `transcripts/<first 16 hex digits of SHA-256(key)>.html`: a fixed,
    /// recomputable name that no hostile JID can steer.
    pub fn path(&self) -> String {
        let h = sha(&[self.key.as_bytes()]);
        format!(
            "transcripts/{}.html",
            super::hex::encode(h.get(..8).unwrap_or_default())
        )
    }
}

impl Shown {
    /// The record's seq as shown: `node:seq` in a view across several nodes.
    pub fn seq_label(&self) -> String {
        match &self.node {
            Some(n) => format!("{n}:{}", self.seq),
            None => self.seq.to_string(),
        }
    }

    /// The conversation of a row read back from an export (as [`Conversation::of`]
    /// names it for the record).
    pub fn conversation(&self) -> Conversation {
        if self.kind != "message" {
            return Conversation::events();
        }
        let (from, to) = (
            self.from.as_deref().unwrap_or(""),
            self.to.as_deref().unwrap_or(""),
        );
        let outbound = self.direction.as_deref() != Some("inbound");
        let groupchat = self
            .stanza_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("groupchat"));
        Conversation::between(groupchat, outbound, from, to)
    }

    pub fn from_record(rec: &Record) -> Shown {
        let mut s = Shown {
            seq: rec.seq.0,
            time: rec.time.0,
            transcript: Conversation::of(rec).path(),
            ..Shown::default()
        };
        match &rec.content {
            NewRecord::Message(m) => {
                s.kind = "message".into();
                s.direction = Some(m.direction.as_str().into());
                s.from = Some(m.from.clone());
                s.to = Some(m.to.clone());
                s.stanza_type = Some(m.stanza_type.clone());
                s.thread = m.thread.clone();
                s.subject = m.subject.clone();
                s.body = m.body.clone();
                s.delivered_body = m.outcome.delivered_body.clone();
                s.action = Some(m.outcome.action.as_str().into());
                s.rules = m.outcome.rules.clone();
                s.session = Some(m.session.0.clone());
                s.message_id = m.id.clone();
                s.origin_id = m.origin_id.clone();
                s.stanza_id = m.stanza_id.clone();
                s.severity = m.outcome.severity.clone();
                s.e2ee = m.outcome.e2ee.clone();
                let c = &m.capture;
                s.logical_message = Some(c.identity.clone()).filter(|i| !i.is_empty());
                s.delivered_logical_message = c.delivered_identity.clone();
                s.via = Some(c.via.as_str().into());
                s.leg = Some(m.leg().as_str().into());
                s.account = Some(c.account.clone()).filter(|a| !a.is_empty());
                s.claimed_from = c.claimed_from.clone();
                s.occupant = c.occupant.clone();
                s.files = (!c.files.is_empty()).then(|| {
                    let files: Vec<serde_json::Value> = c
                        .files
                        .iter()
                        .map(|f| {
                            serde_json::json!({
                                "url": f.url,
                                "name": f.name,
                                "media_type": f.media_type,
                                "size": f.size,
                                "sha256": f.sha256,
                                "stored": f.content.is_some(),
                                "error": f.error,
                            })
                        })
                        .collect();
                    serde_json::Value::Array(files).to_string()
                });
                s.would_action = m.outcome.would_action.map(|a| a.as_str().into());
                s.retention_class =
                    Some(crate::retention::class_name(&c.retention_class).to_string());
                s.edit = c.edit.as_ref().map(|e| {
                    serde_json::json!({"kind": e.kind.as_str(), "target": e.target}).to_string()
                });
                s.extra = (!c.extra.is_empty())
                    .then(|| serde_json::to_string(&c.extra).unwrap_or_default());
            }
            NewRecord::Event(e) => {
                let (kind, session, json) = event_json(e);
                s.kind = kind.into();
                s.session = session;
                s.event = Some(json.to_string());
            }
        }
        s
    }
}

fn event_json(e: &EventRecord) -> (&'static str, Option<String>, serde_json::Value) {
    use serde_json::json;
    match e {
        EventRecord::SessionStart {
            session,
            jid,
            client_addr,
            resource,
        } => (
            "session_start",
            Some(session.0.clone()),
            json!({"jid": jid, "client_addr": client_addr, "resource": resource}),
        ),
        EventRecord::SessionEnd {
            session,
            jid,
            client_addr,
            resource,
            reason,
        } => (
            "session_end",
            Some(session.0.clone()),
            json!({"jid": jid, "client_addr": client_addr, "resource": resource, "reason": reason}),
        ),
        EventRecord::Recovery {
            segment,
            offset,
            bytes_cut,
            detail,
        } => (
            "recovery",
            None,
            json!({"segment": segment, "offset": offset, "bytes_cut": bytes_cut, "detail": detail}),
        ),
        EventRecord::Audit {
            actor,
            action,
            detail,
        } => (
            "audit",
            None,
            json!({"actor": actor, "action": action, "detail": detail}),
        ),
        EventRecord::Shred {
            segment,
            reason,
            authority,
            actor,
        } => (
            "shred",
            None,
            json!({"segment": segment, "reason": reason, "authority": authority, "actor": actor}),
        ),
    }
}
