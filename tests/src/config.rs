//! Custos configuration for a scenario, built as TOML values and rendered once, so no
//! value needs quoting by hand and a second node's configuration is a change to a table,
//! not a text substitution.
//!
//! ```
//! use custos_e2e::config::{section, table};
//! let admin = section("admin", [("bind", "127.0.0.1:9464")]);
//! let mut config = table([("journal", table([("period", 2)]))]);
//! custos_e2e::config::merge(&mut config, admin);
//! assert!(custos_e2e::config::render(&config).contains("[admin]"));
//! ```

use std::path::Path;

pub use toml::{Table, Value};

/// A table from key/value pairs.
pub fn table<K: Into<String>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Table {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// A document holding one `[name]` section.
pub fn section<K: Into<String>, V: Into<Value>>(
    name: &str,
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Table {
    table([(name, Value::Table(table(pairs)))])
}

/// A path as a TOML string.
pub fn path(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// An array of strings.
pub fn strings<S: ToString>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    )
}

/// Merges `more` into `into`: tables merge key by key, arrays of tables (`[[listener]]`)
/// are appended to, any other value is replaced.
pub fn merge(into: &mut Table, more: Table) {
    for (k, v) in more {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (Some(Value::Array(a)), Value::Array(b)) if a.iter().chain(&b).all(Value::is_table) => {
                a.extend(b)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The `[name]` table of `doc`, created empty if absent (or replacing a non-table).
pub fn section_mut<'a>(doc: &'a mut Table, name: &str) -> &'a mut Table {
    let entry = doc
        .entry(name.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    match entry {
        Value::Table(t) => t,
        // Made a table just above.
        _ => unreachable!("section is a table"),
    }
}

/// The document as TOML text.
pub fn render(doc: &Table) -> String {
    toml::to_string(doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_sections_and_listeners_and_renders_parsable_toml() {
        let mut doc = section("archive", [("dir", "/a \"quoted\" path")]);
        merge(&mut doc, section("archive", [("node", "n1")]));
        merge(
            &mut doc,
            table([(
                "listener",
                Value::Array(vec![Value::Table(table([("bind", "x")]))]),
            )]),
        );
        merge(
            &mut doc,
            table([(
                "listener",
                Value::Array(vec![Value::Table(table([("bind", "y")]))]),
            )]),
        );
        let text = render(&doc);
        let back: Table = toml::from_str(&text).expect("renders valid TOML");
        assert_eq!(back["archive"]["dir"].as_str(), Some("/a \"quoted\" path"));
        assert_eq!(back["archive"]["node"].as_str(), Some("n1"));
        assert_eq!(back["listener"].as_array().map(Vec::len), Some(2));
        section_mut(&mut doc, "web").insert("bind".into(), "z".into());
        assert_eq!(doc["web"]["bind"].as_str(), Some("z"));
    }
}
