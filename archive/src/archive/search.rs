//! Search results: [`Hit`], and what a search could not see ([`Uncovered`]).

use crate::record::{Action, Direction, Edit, Leg, NewRecord, Record, RecordSeq, Text, Via};
use crate::time::Timestamp;

/// One search result, serialised as the DESIGN.md search JSON; `severity`
/// and `e2ee` are extra keys present only when the policy outcome has them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    /// The node whose chain holds the record, when nodes are named (`seq` counts
    /// within that chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub seq: RecordSeq,
    pub time: Timestamp,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    #[serde(rename = "type")]
    pub stanza_type: String,
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub action: Action,
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The end-to-end encryption scheme detected (e.g. `omemo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<String>,
    /// What monitor-mode rules would have done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_action: Option<Action>,
    /// The logical-message identity this copy shares with the other copies.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_message: Option<String>,
    pub via: Via,
    pub leg: Leg,
    /// The proven JID of the session whose stream carried this copy.
    pub account: String,
    pub session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_from: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit: Option<Edit>,
    /// The retention class fixed when the copy was written.
    pub retention_class: String,
    /// Group chat: the person behind the room occupant who sent the copy (or whom a
    /// private message in a room went to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occupant: Option<String>,
    /// Files the message shared, without their bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<HitFile>,
}

/// A shared file as a search hit shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HitFile {
    pub url: String,
    pub name: String,
    pub media_type: String,
    pub size: u64,
    pub sha256: String,
    /// This copy's record holds the bytes (else another copy of the message does).
    pub stored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Hit {
    pub(super) fn from_record(r: Record) -> Option<Hit> {
        let NewRecord::Message(m) = r.content else {
            return None;
        };
        let leg = m.leg();
        let c = m.capture;
        Some(Hit {
            node: None,
            seq: r.seq,
            time: r.time,
            direction: m.direction,
            from: m.from,
            to: m.to,
            stanza_type: m.stanza_type,
            body: m.body,
            thread: m.thread,
            subject: m.subject,
            action: m.outcome.action,
            rules: m.outcome.rules,
            delivered_body: m.outcome.delivered_body,
            severity: m.outcome.severity,
            e2ee: m.outcome.e2ee,
            would_action: m.outcome.would_action,
            message: c.identity,
            delivered_message: c.delivered_identity,
            via: c.via,
            leg,
            account: c.account,
            session: m.session.0,
            claimed_from: c.claimed_from,
            extra: c.extra,
            edit: c.edit,
            retention_class: crate::retention::class_name(&c.retention_class).to_string(),
            occupant: c.occupant,
            files: c
                .files
                .into_iter()
                .map(|f| HitFile {
                    stored: f.content.is_some(),
                    url: f.url,
                    name: f.name,
                    media_type: f.media_type,
                    size: f.size,
                    sha256: f.sha256,
                    error: f.error,
                })
                .collect(),
        })
    }
}

/// Records a search did not look at, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Uncovered {
    pub from: u64,
    pub to: u64,
    pub why: String,
}

impl Uncovered {
    pub(super) fn after(through: u64, end: u64, why: &str) -> Option<Uncovered> {
        (through < end).then(|| Uncovered {
            from: through + 1,
            to: end,
            why: why.to_owned(),
        })
    }
}

impl std::fmt::Display for Uncovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // An empty range: a whole chain was not searched (another node's, unreadable).
        if self.to < self.from {
            return write!(f, "{}: results may be incomplete", self.why);
        }
        let n = self.to - self.from + 1;
        write!(
            f,
            "{n} record(s), seq {}..={}, were not searched ({}): results may be incomplete",
            self.from, self.to, self.why
        )
    }
}

/// A search's hits and what it could not see.
#[derive(Debug, Clone)]
pub struct Searched {
    pub hits: Vec<Hit>,
    pub uncovered: Option<Uncovered>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MessageRecord, Outcome};

    fn message(severity: Option<&str>, e2ee: Option<&str>) -> Record {
        Record {
            seq: RecordSeq(42),
            time: Timestamp(0),
            content: NewRecord::Message(MessageRecord {
                stanza: b"<message/>".to_vec(),
                outcome: Outcome {
                    action: Action::Flag,
                    rules: vec!["watch".into()],
                    severity: severity.map(str::to_string),
                    e2ee: e2ee.map(str::to_string),
                    ..Outcome::allowed()
                },
                ..MessageRecord::chat("alice@example.test/laptop", "bob@example.test", "hi")
            }),
        }
    }

    fn keys(hit: &Hit) -> Vec<String> {
        let v = serde_json::to_value(hit).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn hit_json_has_severity_and_e2ee_only_when_present() {
        let plain = Hit::from_record(message(None, None)).unwrap();
        assert_eq!(
            keys(&plain),
            [
                "account",
                "action",
                "body",
                "direction",
                "from",
                "leg",
                "message",
                "retention_class",
                "rules",
                "seq",
                "session",
                "time",
                "to",
                "type",
                "via"
            ]
        );
        let marked = Hit::from_record(message(Some("high"), Some("omemo"))).unwrap();
        let v = serde_json::to_value(&marked).unwrap();
        assert_eq!(v["severity"], "high");
        assert_eq!(v["e2ee"], "omemo");
        let only_e2ee = Hit::from_record(message(None, Some("otr"))).unwrap();
        assert!(keys(&only_e2ee).contains(&"e2ee".to_string()));
        assert!(!keys(&only_e2ee).contains(&"severity".to_string()));
    }
}
