//! Human-readable transcripts: one self-contained HTML file per conversation
//! and an index page linking them.
//!
//! Bodies, JIDs and subjects are hostile: every one goes through [`escape`]
//! and nothing is ever placed in an attribute but our own fixed file names.
//! The pages carry no script and no external resource, and a
//! Content-Security-Policy of `default-src 'none'` forbids loading any even
//! if some markup slipped through.
//!
//! Conversations interleave in the log, so files are appended to as records
//! stream past; at most [`MAX_OPEN`] stay open (least recently used is closed
//! and reopened for append later), which bounds file handles and buffers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::row::{Conversation, Shown};
use crate::time::Timestamp;

const MAX_OPEN: usize = 32;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#111}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ccc;\
padding:.3em .5em;vertical-align:top;text-align:left}\
.body{white-space:pre-wrap;word-break:break-word}.meta{color:#555;font-size:.85em}\
.block{background:#fdd}.redact{background:#ffd}.flag{background:#eef}";

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page_head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    )
}

struct Conv {
    path: String,
    title: String,
    messages: u64,
    first: i64,
    last: i64,
    out: Option<BufWriter<File>>,
    last_used: u64,
}

pub(crate) struct Transcripts {
    root: PathBuf,
    convs: Vec<Conv>,
    by_key: HashMap<String, usize>,
    open: usize,
    clock: u64,
    /// Logical message → the seq (as shown) of its first row, so later copies are shown
    /// as copies (bounded: past the cap a copy is shown in full, never dropped).
    first_copy: HashMap<String, String>,
}

/// Logical messages remembered for showing copies as such.
const MAX_REMEMBERED: usize = 200_000;

impl Transcripts {
    pub fn new(root: &Path) -> Transcripts {
        Transcripts {
            root: root.to_path_buf(),
            convs: Vec::new(),
            by_key: HashMap::new(),
            open: 0,
            clock: 0,
            first_copy: HashMap::new(),
        }
    }

    pub fn add(&mut self, conv: Conversation, s: &Shown) -> io::Result<()> {
        self.clock += 1;
        let idx = match self.by_key.get(&conv.key) {
            Some(&i) => i,
            None => {
                let path = conv.path();
                let mut f = File::create(self.root.join(&path))?;
                f.write_all(page_head(&conv.title).as_bytes())?;
                f.write_all(
                    b"<table><tr><th>seq</th><th>time (UTC)</th><th>from \xe2\x86\x92 to</th><th>message</th><th>policy</th></tr>\n",
                )?;
                self.convs.push(Conv {
                    path,
                    title: conv.title,
                    messages: 0,
                    first: s.time,
                    last: s.time,
                    out: None,
                    last_used: 0,
                });
                let i = self.convs.len() - 1;
                self.by_key.insert(conv.key, i);
                i
            }
        };
        if self.convs.get(idx).is_some_and(|c| c.out.is_none()) {
            if self.open >= MAX_OPEN {
                self.close_lru()?;
            }
            if let Some(c) = self.convs.get_mut(idx) {
                let f = OpenOptions::new()
                    .append(true)
                    .open(self.root.join(&c.path))?;
                c.out = Some(BufWriter::with_capacity(16 << 10, f));
                self.open += 1;
            }
        }
        let clock = self.clock;
        let Some(c) = self.convs.get_mut(idx) else {
            return Ok(());
        };
        c.messages += 1;
        c.first = c.first.min(s.time);
        c.last = c.last.max(s.time);
        c.last_used = clock;
        let names: Vec<&String> = s
            .logical_message
            .iter()
            .chain(&s.delivered_logical_message)
            .collect();
        let copy_of = names
            .iter()
            .find_map(|n| self.first_copy.get(n.as_str()).cloned());
        if self.first_copy.len() < MAX_REMEMBERED {
            for n in names {
                self.first_copy
                    .entry(n.clone())
                    .or_insert_with(|| s.seq_label());
            }
        }
        if let Some(out) = &mut c.out {
            out.write_all(row_html(s, copy_of.as_deref()).as_bytes())?;
        }
        Ok(())
    }

    fn close_lru(&mut self) -> io::Result<()> {
        let lru = self
            .convs
            .iter_mut()
            .filter(|c| c.out.is_some())
            .min_by_key(|c| c.last_used);
        if let Some(c) = lru {
            if let Some(mut out) = c.out.take() {
                out.flush()?;
                self.open -= 1;
            }
        }
        Ok(())
    }

    /// Closes every transcript and writes `index.html`; returns the paths
    /// written, index last.
    pub fn finish(mut self, heading: &str) -> io::Result<Vec<String>> {
        let mut paths = Vec::with_capacity(self.convs.len() + 1);
        for c in &mut self.convs {
            let mut out = match c.out.take() {
                Some(o) => o,
                None => BufWriter::new(
                    OpenOptions::new()
                        .append(true)
                        .open(self.root.join(&c.path))?,
                ),
            };
            out.write_all(b"</table>\n<p class=\"meta\"><a href=\"../index.html\">All conversations</a></p>\n</body></html>\n")?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            paths.push(c.path.clone());
        }
        let mut idx = BufWriter::new(File::create(self.root.join("index.html"))?);
        idx.write_all(page_head("Custos export").as_bytes())?;
        idx.write_all(format!("<p>{}</p>\n", escape(heading)).as_bytes())?;
        idx.write_all(b"<table><tr><th>conversation</th><th>records</th><th>first (UTC)</th><th>last (UTC)</th></tr>\n")?;
        for c in &self.convs {
            // `c.path` is our own `transcripts/<hex>.html`, safe in an attribute.
            idx.write_all(
                format!(
                    "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    c.path,
                    escape(&c.title),
                    c.messages,
                    Timestamp(c.first),
                    Timestamp(c.last)
                )
                .as_bytes(),
            )?;
        }
        idx.write_all(b"</table>\n</body></html>\n")?;
        idx.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        paths.push("index.html".into());
        Ok(paths)
    }
}

fn opt(label: &str, v: &Option<String>) -> String {
    v.as_ref()
        .map(|v| format!("<div class=\"meta\">{label}: {}</div>", escape(v)))
        .unwrap_or_default()
}

/// One record's row. A copy of a message shown earlier (the recipient's copy, a carbon, a
/// replay) says so and shows only what differs: its stream, account and verdict.
fn row_html(s: &Shown, copy_of: Option<&str>) -> String {
    let action = s.action.as_deref().unwrap_or("");
    let class = match action {
        "block" | "redact" | "flag" => action,
        _ => "",
    };
    let who = match (&s.from, &s.to) {
        (Some(f), Some(t)) => format!(
            "{} \u{2192} {}<div class=\"meta\">{}</div>",
            escape(f),
            escape(t),
            escape(s.direction.as_deref().unwrap_or(""))
        ),
        _ => escape(&s.kind),
    };
    let mut msg = String::new();
    if let Some(first) = copy_of {
        msg.push_str(&format!(
            "<div class=\"meta\">copy of the message at seq {}</div>",
            escape(first)
        ));
    } else {
        msg.push_str(&opt("subject", &s.subject));
        if let Some(b) = &s.body {
            msg.push_str(&format!("<div class=\"body\">{}</div>", escape(b)));
        }
        if let Some(extra) = &s.extra {
            for t in serde_json::from_str::<Vec<serde_json::Value>>(extra).unwrap_or_default() {
                let label = match t["lang"].as_str() {
                    Some(lang) => format!("{} ({lang})", t["kind"].as_str().unwrap_or("text")),
                    None => t["kind"].as_str().unwrap_or("text").to_owned(),
                };
                msg.push_str(&format!(
                    "<div class=\"meta\">{}: {}</div>",
                    escape(&label),
                    escape(t["text"].as_str().unwrap_or(""))
                ));
            }
        }
    }
    msg.push_str(&opt("delivered as", &s.delivered_body));
    msg.push_str(&opt("sender claimed to be (refused)", &s.claimed_from));
    msg.push_str(&opt("person behind the room nickname", &s.occupant));
    if let Some(files) = &s.files {
        let files: serde_json::Value = serde_json::from_str(files).unwrap_or_default();
        for f in files.as_array().into_iter().flatten() {
            let text = match f["error"].as_str() {
                Some(e) => format!("{} — not archived: {e}", f["url"].as_str().unwrap_or("")),
                None => format!(
                    "{} ({}, {} bytes, SHA-256 {})",
                    f["name"].as_str().unwrap_or(""),
                    f["media_type"].as_str().unwrap_or(""),
                    f["size"],
                    f["sha256"].as_str().unwrap_or("")
                ),
            };
            msg.push_str(&format!(
                "<div class=\"meta\">shared file: {}</div>",
                escape(&text)
            ));
        }
    }
    if let Some(edit) = &s.edit {
        let e: serde_json::Value = serde_json::from_str(edit).unwrap_or_default();
        msg.push_str(&format!(
            "<div class=\"meta\">{} of message {}; that message stays on the record</div>",
            escape(e["kind"].as_str().unwrap_or("edit")),
            escape(e["target"].as_str().unwrap_or("?"))
        ));
    }
    if let (Some(leg), Some(via)) = (&s.leg, &s.via) {
        msg.push_str(&format!(
            "<div class=\"meta\">recorded on the {} stream of {} ({})</div>",
            escape(leg),
            escape(s.account.as_deref().unwrap_or("an unbound session")),
            escape(via)
        ));
    }
    msg.push_str(&opt("event", &s.event));
    msg.push_str(&opt("thread", &s.thread));
    let mut policy = escape(action);
    if let Some(w) = &s.would_action {
        policy.push_str(&format!("<div class=\"meta\">would {}</div>", escape(w)));
    }
    if let Some(c) = &s.retention_class {
        policy.push_str(&format!("<div class=\"meta\">kept: {}</div>", escape(c)));
    }
    if !s.rules.is_empty() {
        policy.push_str(&format!(
            "<div class=\"meta\">{}</div>",
            escape(&s.rules.join(", "))
        ));
    }
    format!(
        "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{who}</td><td>{msg}</td><td>{policy}</td></tr>\n",
        escape(&s.seq_label()),
        Timestamp(s.time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaped_text_has_no_markup(s in ".{0,64}") {
            let e = escape(&s);
            prop_assert!(!e.contains('<') && !e.contains('>') && !e.contains('"') && !e.contains('\''));
            // Unescaping gives the input back: nothing is lost for the reader.
            let back = e.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"")
                .replace("&#39;", "'").replace("&amp;", "&");
            prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn hostile_body_stays_text() {
        let s = Shown {
            seq: 1,
            kind: "message".into(),
            from: Some("<img src=x onerror=alert(1)>@x".into()),
            to: Some("b@x".into()),
            body: Some("</td></tr></table><script>alert(1)</script>".into()),
            action: Some("allow".into()),
            ..Shown::default()
        };
        let h = row_html(&s, None);
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn copies_other_texts_and_edits_are_shown_as_text() {
        let s = Shown {
            seq: 7,
            kind: "message".into(),
            from: Some("a@x/1".into()),
            to: Some("b@x".into()),
            body: Some("hello".into()),
            action: Some("flag".into()),
            leg: Some("server-to-client".into()),
            via: Some("carbon-received".into()),
            account: Some("b@x/2".into()),
            claimed_from: Some("<i>eve</i>@x".into()),
            edit: Some(r#"{"kind":"correction","target":"<orig>"}"#.into()),
            extra: Some(r#"[{"kind":"body","lang":"de","text":"<script>x()</script>"}]"#.into()),
            would_action: Some("block".into()),
            ..Shown::default()
        };
        let h = row_html(&s, None);
        for hostile in ["<script", "<i>", "<orig>"] {
            assert!(!h.contains(hostile), "{hostile}: {h}");
        }
        assert!(
            h.contains("body (de): &lt;script&gt;x()&lt;/script&gt;"),
            "{h}"
        );
        assert!(h.contains("correction of message &lt;orig&gt;"), "{h}");
        assert!(
            h.contains("server-to-client stream of b@x/2 (carbon-received)"),
            "{h}"
        );
        assert!(h.contains("would block"), "{h}");
        // A later copy refers to the first instead of repeating the text.
        let c = row_html(&s, Some("3"));
        assert!(
            c.contains("copy of the message at seq 3") && !c.contains("hello"),
            "{c}"
        );
    }
}
