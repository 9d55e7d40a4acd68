//! Copies of one logical message, grouped for the views.
//!
//! Capture records every copy as observed (the sender's stanza, each recipient's copy,
//! carbons, archive replays), each with its leg and verdict. People read messages, not
//! copies: search shows one line per logical message with its copies listed. Copies share
//! a message identity; a redacted copy also carries the identity of what it delivered,
//! which its recipient's copy has, so both names join one group.

use std::collections::HashMap;

use crate::archive::Hit;
use crate::record::{Action, Direction, Leg, RecordSeq, Via};
use crate::time::Timestamp;

/// One copy of a logical message, as listed under it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub seq: RecordSeq,
    pub time: Timestamp,
    pub leg: Leg,
    pub account: String,
    pub direction: Direction,
    pub via: Via,
    pub action: Action,
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_body: Option<String>,
}

/// A logical message: the fields of its first copy found, and every copy found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageHit {
    #[serde(flatten)]
    pub first: Hit,
    pub copies: Vec<CopyRef>,
}

fn copy_ref(h: &Hit) -> CopyRef {
    CopyRef {
        node: h.node.clone(),
        seq: h.seq,
        time: h.time,
        leg: h.leg,
        account: h.account.clone(),
        direction: h.direction,
        via: h.via,
        action: h.action,
        rules: h.rules.clone(),
        would_action: h.would_action,
        delivered_body: h.delivered_body.clone(),
    }
}

/// Merges hits from several nodes' chains as one chain's search returns them: the
/// newest `limit`, in chronological order (time, then node, then seq).
pub fn merge_newest(hits: &mut Vec<Hit>, limit: usize) {
    hits.sort_by(|x, y| (x.time, &x.node, x.seq).cmp(&(y.time, &y.node, y.seq)));
    let extra = hits.len().saturating_sub(limit);
    hits.drain(..extra);
}

/// Groups hits by message identity, keeping the order in which each group's first hit
/// came. Records written before identities existed (format 1) each stand alone.
pub fn group(hits: Vec<Hit>) -> Vec<MessageHit> {
    let mut groups: Vec<MessageHit> = Vec::new();
    let mut by_identity: HashMap<String, usize> = HashMap::new();
    for hit in hits {
        let names: Vec<String> = std::iter::once(&hit.message)
            .chain(&hit.delivered_message)
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let found = names.iter().find_map(|n| by_identity.get(n).copied());
        let at = match found {
            Some(at) => {
                if let Some(g) = groups.get_mut(at) {
                    g.copies.push(copy_ref(&hit));
                }
                at
            }
            None => {
                groups.push(MessageHit {
                    copies: vec![copy_ref(&hit)],
                    first: hit,
                });
                groups.len() - 1
            }
        };
        for n in names {
            by_identity.entry(n).or_insert(at);
        }
    }
    for g in &mut groups {
        // One chain's sequence is its order; copies from several nodes' chains are
        // ordered by time.
        let one_chain = g.copies.windows(2).all(|w| w[0].node == w[1].node);
        if one_chain {
            g.copies.sort_by_key(|c| c.seq);
        } else {
            g.copies
                .sort_by(|a, b| (a.time, &a.node, a.seq).cmp(&(b.time, &b.node, b.seq)));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(seq: u64, message: &str, delivered: Option<&str>, leg: Leg) -> Hit {
        Hit {
            node: None,
            seq: RecordSeq(seq),
            time: Timestamp(seq as i64),
            direction: Direction::Outbound,
            from: "a@x".into(),
            to: "b@x".into(),
            stanza_type: "chat".into(),
            body: Some("hi".into()),
            thread: None,
            subject: None,
            action: Action::Allow,
            rules: Vec::new(),
            delivered_body: None,
            severity: None,
            e2ee: None,
            would_action: None,
            message: message.into(),
            delivered_message: delivered.map(str::to_owned),
            via: Via::Direct,
            leg,
            account: "a@x/r".into(),
            session: "1".into(),
            claimed_from: None,
            extra: Vec::new(),
            edit: None,
            retention_class: "default".into(),
            occupant: None,
            files: Vec::new(),
        }
    }

    #[test]
    fn copies_group_and_distinct_messages_do_not() {
        let hits = vec![
            hit(5, "m2", None, Leg::ClientToServer),
            hit(4, "m1r", None, Leg::ServerToClient),
            hit(3, "m1", Some("m1r"), Leg::ClientToServer),
            hit(2, "", None, Leg::ClientToServer),
            hit(1, "", None, Leg::ClientToServer),
        ];
        let g = group(hits);
        let shape: Vec<(u64, Vec<u64>)> = g
            .iter()
            .map(|m| (m.first.seq.0, m.copies.iter().map(|c| c.seq.0).collect()))
            .collect();
        // The redacted original (3) joins its recipient's copy (4) through the delivered
        // identity; records without identity stay apart.
        assert_eq!(
            shape,
            vec![(5, vec![5]), (4, vec![3, 4]), (2, vec![2]), (1, vec![1])]
        );
    }
}
