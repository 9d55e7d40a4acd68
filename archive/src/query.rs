//! The search query language, parsed into a plain syntax tree with no index
//! knowledge (see docs/search-syntax.md).
//!
//! ```text
//! query  := term*            (all terms must match)
//! term   := ["-"] ( word | "\"" phrase "\"" | field ":" value )
//! field  := from | to | with | account | room | direction | type | action | rule | msg
//!         | via | after | before
//! ```

use crate::record::{Action, Direction, Via};
use crate::time::Timestamp;

/// A JID-valued field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JidField {
    From,
    To,
    /// Either participant.
    With,
    /// The proven JID of the session whose stream carried the copy.
    Account,
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// One or more normalised tokens that must appear consecutively (one
    /// token = a plain word).
    Text(Vec<String>),
    Jid(JidField, String),
    /// Group chat in this room (a bare JID): what was said to it and echoed from it.
    Room(String),
    Direction(Direction),
    Type(String),
    Action(Action),
    Rule(String),
    /// A logical-message identity: every copy of one message.
    Message(String),
    Via(crate::record::Via),
    /// Record time ≥ this.
    After(Timestamp),
    /// Record time < this.
    Before(Timestamp),
}

/// A parsed query: clauses that must hold and clauses that must not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub must: Vec<Clause>,
    pub must_not: Vec<Clause>,
}

/// A query that cannot be understood, naming the token at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown field in {token:?} (fields: from, to, with, account, room, direction, type, action, rule, msg, via, after, before)")]
    UnknownField { token: String },
    #[error("bad value in {token:?}: {reason}")]
    BadValue { token: String, reason: String },
    #[error("unterminated quote in {token:?}")]
    UnterminatedQuote { token: String },
    #[error("{token:?} contains nothing searchable")]
    Empty { token: String },
}

/// Lowercases and splits text into word tokens: runs of alphanumeric
/// characters. Index and query must use exactly this function.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Normalises a JID for matching: lowercase, surrounding space trimmed.
pub fn normalize_jid(jid: &str) -> String {
    jid.trim().to_lowercase()
}

/// The bare form of a JID (without `/resource`).
pub fn bare_jid(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

/// Splits on whitespace, keeping `"quoted phrases"` (also after `-` or `field:`) whole.
fn split_tokens(q: &str) -> Result<Vec<String>, QueryError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    for c in q.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            c if c.is_whitespace() && !in_quote => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if in_quote {
        return Err(QueryError::UnterminatedQuote { token: cur });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Parses a query string.
pub fn parse(q: &str) -> Result<Query, QueryError> {
    let mut query = Query::default();
    for token in split_tokens(q)? {
        let (negated, body) = match token.strip_prefix('-') {
            Some(rest) if !rest.is_empty() => (true, rest),
            _ => (false, token.as_str()),
        };
        let bad = |reason: &str| QueryError::BadValue {
            token: token.clone(),
            reason: reason.to_string(),
        };
        let clause = if body.starts_with('"') {
            let words = tokenize(unquote(body));
            if words.is_empty() {
                return Err(QueryError::Empty {
                    token: token.clone(),
                });
            }
            Clause::Text(words)
        } else if let Some((field, value)) = body.split_once(':') {
            let value = unquote(value);
            if value.is_empty() {
                return Err(bad("empty value"));
            }
            match field.to_ascii_lowercase().as_str() {
                "from" => Clause::Jid(JidField::From, normalize_jid(value)),
                "to" => Clause::Jid(JidField::To, normalize_jid(value)),
                "with" => Clause::Jid(JidField::With, normalize_jid(value)),
                "account" => Clause::Jid(JidField::Account, normalize_jid(value)),
                "room" => {
                    let room = normalize_jid(value);
                    if room.contains('/') {
                        return Err(bad("a room is a bare JID (room@service), without /nick"));
                    }
                    Clause::Room(room)
                }
                "msg" => Clause::Message(value.to_ascii_lowercase()),
                "via" => match value.to_ascii_lowercase().as_str() {
                    "direct" => Clause::Via(Via::Direct),
                    "carbon-sent" => Clause::Via(Via::CarbonSent),
                    "carbon-received" => Clause::Via(Via::CarbonReceived),
                    "mam" => Clause::Via(Via::Mam),
                    _ => return Err(bad("expected direct, carbon-sent, carbon-received or mam")),
                },
                "direction" => match value.to_ascii_lowercase().as_str() {
                    "inbound" => Clause::Direction(Direction::Inbound),
                    "outbound" => Clause::Direction(Direction::Outbound),
                    _ => return Err(bad("expected inbound or outbound")),
                },
                "type" => Clause::Type(value.to_lowercase()),
                "action" => match value.to_ascii_lowercase().as_str() {
                    "allow" => Clause::Action(Action::Allow),
                    "flag" => Clause::Action(Action::Flag),
                    "redact" => Clause::Action(Action::Redact),
                    "block" => Clause::Action(Action::Block),
                    _ => return Err(bad("expected allow, flag, redact or block")),
                },
                "rule" => Clause::Rule(value.to_string()),
                "after" => Clause::After(
                    Timestamp::parse(value)
                        .map_err(|_| bad("expected YYYY-MM-DD or RFC 3339 time"))?,
                ),
                "before" => Clause::Before(
                    Timestamp::parse(value)
                        .map_err(|_| bad("expected YYYY-MM-DD or RFC 3339 time"))?,
                ),
                _ => {
                    return Err(QueryError::UnknownField {
                        token: token.clone(),
                    })
                }
            }
        } else {
            let words = tokenize(body);
            if words.is_empty() {
                return Err(QueryError::Empty {
                    token: token.clone(),
                });
            }
            Clause::Text(words)
        };
        if negated {
            query.must_not.push(clause);
        } else {
            query.must.push(clause);
        }
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let q = parse(r#"Invoice "wire transfer" from:Alice@Example.test with:bob@example.test direction:outbound type:chat action:block rule:pci-card after:2026-11-01 before:2026-11-21T12:00:00Z -lunch account:Eve@example.test/x msg:ABC12 via:mam"#).unwrap();
        assert_eq!(
            q.must[10],
            Clause::Jid(JidField::Account, "eve@example.test/x".into())
        );
        assert_eq!(q.must[11], Clause::Message("abc12".into()));
        assert_eq!(q.must[12], Clause::Via(Via::Mam));
        assert_eq!(q.must[0], Clause::Text(vec!["invoice".into()]));
        assert_eq!(
            q.must[1],
            Clause::Text(vec!["wire".into(), "transfer".into()])
        );
        assert_eq!(
            q.must[2],
            Clause::Jid(JidField::From, "alice@example.test".into())
        );
        assert_eq!(
            q.must[3],
            Clause::Jid(JidField::With, "bob@example.test".into())
        );
        assert_eq!(q.must[4], Clause::Direction(Direction::Outbound));
        assert_eq!(q.must[5], Clause::Type("chat".into()));
        assert_eq!(q.must[6], Clause::Action(Action::Block));
        assert_eq!(q.must[7], Clause::Rule("pci-card".into()));
        assert_eq!(
            q.must[8],
            Clause::After(Timestamp::parse("2026-11-01").unwrap())
        );
        assert_eq!(
            q.must[9],
            Clause::Before(Timestamp::parse("2026-11-21T12:00:00Z").unwrap())
        );
        assert_eq!(q.must_not, vec![Clause::Text(vec!["lunch".into()])]);
    }

    #[test]
    fn errors_name_the_bad_token() {
        let e = parse("hello colour:red").unwrap_err();
        assert_eq!(
            e,
            QueryError::UnknownField {
                token: "colour:red".into()
            }
        );
        let e = parse("direction:sideways").unwrap_err();
        assert!(e.to_string().contains("direction:sideways"), "{e}");
        let e = parse("after:yesterday").unwrap_err();
        assert!(e.to_string().contains("after:yesterday"), "{e}");
        assert!(matches!(
            parse("\"open phrase"),
            Err(QueryError::UnterminatedQuote { .. })
        ));
        assert!(matches!(parse("!!!"), Err(QueryError::Empty { .. })));
    }

    #[test]
    fn tokenizer_lowercases_and_splits() {
        assert_eq!(
            tokenize("Card: 4111-1111, OK?"),
            vec!["card", "4111", "1111", "ok"]
        );
        assert_eq!(bare_jid("a@b/c/d"), "a@b");
    }
}
