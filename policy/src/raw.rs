//! Stage one: the rules file as written, parsed with spans so that validation can name
//! the line of every problem. Nothing here is checked beyond TOML types; `compile`
//! turns it into the typed, compiled [`crate::Policy`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRules {
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub internal_domains: Vec<Spanned<String>>,
    pub block_text: Option<Spanned<String>>,
    pub groups: Option<Spanned<BTreeMap<String, Spanned<Members>>>>,
    #[serde(default, rename = "lexicon")]
    pub lexicons: Vec<Spanned<RawLexicon>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RawRule>>,
    #[serde(default, rename = "barrier")]
    pub barriers: Vec<Spanned<RawBarrier>>,
    pub alert: Option<Spanned<RawAlert>>,
}

/// A group's member patterns, each with its span.
pub(crate) type Members = Vec<Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLexicon {
    pub id: Spanned<String>,
    pub file: Option<Spanned<String>>,
    pub terms: Option<Spanned<Vec<String>>>,
    pub whole_word: Option<bool>,
    pub case_insensitive: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub id: Spanned<String>,
    #[allow(dead_code)] // documentation for the reader of the file; kept for unknown-key checks
    pub description: Option<String>,
    pub when: Spanned<RawCondition>,
    pub action: Spanned<String>,
    pub severity: Option<Spanned<String>>,
    pub text: Option<Spanned<String>>,
    pub period: Option<Spanned<String>>,
    pub alert: Option<bool>,
    pub mode: Option<Spanned<String>>,
    /// A retention class for the messages it matches (see the archive's `[retention]`).
    pub retention: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBarrier {
    pub id: Spanned<String>,
    #[allow(dead_code)]
    pub description: Option<String>,
    pub between: Spanned<Vec<Spanned<String>>>,
    pub text: Option<Spanned<String>>,
    pub severity: Option<Spanned<String>>,
    pub alert: Option<bool>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlert {
    pub webhook: Spanned<String>,
}

/// A condition table. Several keys in one table must all hold (an implicit `all`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCondition {
    pub direction: Option<Spanned<String>>,
    pub from: Option<Spanned<OneOrMany>>,
    pub to: Option<Spanned<OneOrMany>>,
    pub kind: Option<Spanned<OneOrMany>>,
    #[serde(rename = "type")]
    pub stanza_type: Option<Spanned<OneOrMany>>,
    pub body: Option<Spanned<RawText>>,
    pub subject: Option<Spanned<RawText>>,
    pub e2ee: Option<Spanned<RawE2ee>>,
    pub all: Option<Spanned<Vec<Spanned<RawCondition>>>>,
    pub any: Option<Spanned<Vec<Spanned<RawCondition>>>>,
    pub not: Option<Box<Spanned<RawCondition>>>,
}

/// `body = { regex = "…" }`, `{ lexicon = "id" }` or `{ detector = "payment-card" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawText {
    pub regex: Option<Spanned<String>>,
    pub lexicon: Option<Spanned<String>>,
    pub detector: Option<Spanned<String>>,
}

/// A string or a list of strings (`to = "external"` or `to = ["group:a", "b@x"]`).
#[derive(Debug)]
pub(crate) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `e2ee = true` (any scheme), `e2ee = false` (none), `"omemo"` or a list of schemes.
#[derive(Debug)]
pub(crate) enum RawE2ee {
    Present(bool),
    Schemes(Vec<String>),
}

impl<'de> Deserialize<'de> for RawE2ee {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawE2ee;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, a scheme name or an array of scheme names")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawE2ee, E> {
                Ok(RawE2ee::Present(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawE2ee, E> {
                Ok(RawE2ee::Schemes(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawE2ee, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(RawE2ee::Schemes(out))
            }
        }
        d.deserialize_any(V)
    }
}
