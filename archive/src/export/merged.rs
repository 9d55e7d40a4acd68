//! The reading view of a several-node export: every part's rows in one time order,
//! as transcripts per conversation (`transcripts/`, `index.html` at the export's top),
//! each row naming its node and seq. The parts stay the proof; this view is listed with
//! its SHA-256 in the signed `nodes.json`, so it cannot be changed unseen either.
//!
//! Rows are read back from the parts' Parquet files one row group at a time and merged
//! by (time, part, seq): memory is one row per part plus the transcripts' bookkeeping.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;
use sha2::{Digest, Sha256};

use super::hex;
use super::manifest::{self, Manifest};
use super::row::Shown;
use super::transcripts::Transcripts;

/// One file of the view, as `nodes.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewFile {
    /// Relative to the export: `index.html` or `transcripts/<name>.html`.
    pub path: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// One part's rows in order.
struct PartRows {
    node: Option<String>,
    files: VecDeque<PathBuf>,
    rows: Option<parquet::record::reader::RowIter<'static>>,
}

impl PartRows {
    fn open(dir: &Path, node: Option<String>) -> std::io::Result<PartRows> {
        let bytes = std::fs::read(dir.join(manifest::MANIFEST))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        let mut files = VecDeque::new();
        for p in &m.parquet {
            if !manifest::safe_relative(&p.path) {
                return Err(std::io::Error::other(format!(
                    "part {:?} is not an allowed path",
                    p.path
                )));
            }
            files.push_back(dir.join(&p.path));
        }
        Ok(PartRows {
            node,
            files,
            rows: None,
        })
    }

    fn next(&mut self) -> std::io::Result<Option<Shown>> {
        loop {
            if self.rows.is_none() {
                let Some(path) = self.files.pop_front() else {
                    return Ok(None);
                };
                let reader =
                    SerializedFileReader::new(File::open(&path)?).map_err(std::io::Error::other)?;
                self.rows = Some(reader.into_iter());
            }
            match self.rows.as_mut().and_then(Iterator::next) {
                None => self.rows = None,
                Some(row) => {
                    let row = row.map_err(std::io::Error::other)?;
                    let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
                    let mut shown = super::verify_export::shown_of(&fields).map_err(|col| {
                        std::io::Error::other(format!("a row's {col} cannot be read"))
                    })?;
                    shown.node = Some(
                        self.node
                            .clone()
                            .unwrap_or_else(|| crate::bucket::UNNAMED.to_string()),
                    );
                    return Ok(Some(shown));
                }
            }
        }
    }
}

/// Writes the view of the parts `(node, part directory)` under `out` and returns its
/// files, `index.html` last.
pub(super) fn write_view(
    out: &Path,
    parts: &[(Option<String>, PathBuf)],
    heading: &str,
) -> std::io::Result<Vec<ViewFile>> {
    std::fs::create_dir_all(out.join("transcripts"))?;
    let mut streams = parts
        .iter()
        .map(|(node, dir)| PartRows::open(dir, node.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut heads = streams
        .iter_mut()
        .map(PartRows::next)
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut t = Transcripts::new(out);
    loop {
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|s| (s.time, i, s.seq)))
            .min();
        let Some((_, i, _)) = next else { break };
        let (Some(head), Some(stream)) = (heads.get_mut(i), streams.get_mut(i)) else {
            break;
        };
        if let Some(s) = head.take() {
            t.add(s.conversation(), &s)?;
        }
        *head = stream.next()?;
    }
    let mut files = Vec::new();
    for path in t.finish(heading)? {
        let bytes = std::fs::read(out.join(&path))?;
        files.push(ViewFile {
            path,
            sha256: hex::encode(&Sha256::digest(&bytes)),
        });
    }
    Ok(files)
}

/// Checks the view's files against the list: each there with its hash, and no other
/// file in `transcripts/` or at the top besides the list, its signature and `nodes/`.
pub(super) fn check_view(dir: &Path, listed: &[ViewFile], problems: &mut Vec<String>) {
    let allowed = |p: &str| {
        manifest::safe_relative(p)
            && (p == "index.html"
                || p.strip_prefix("transcripts/")
                    .is_some_and(|n| !n.is_empty() && !n.contains('/')))
    };
    for f in listed {
        if !allowed(&f.path) {
            problems.push(format!(
                "{}: view file {:?} is not index.html or transcripts/<name>",
                super::nodes::NODES,
                f.path
            ));
            continue;
        }
        match std::fs::read(dir.join(&f.path)) {
            Ok(b) if hex::encode(&Sha256::digest(&b)) == f.sha256 => {}
            Ok(_) => problems.push(format!("{}: changed since the export was signed", f.path)),
            Err(e) => problems.push(format!("{}: {e}", f.path)),
        }
    }
    let names: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    let mut unlisted = |p: String| {
        if !names.contains(&p.as_str()) {
            problems.push(format!("{p} is not listed in {}", super::nodes::NODES));
        }
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ![
                super::nodes::NODES,
                super::nodes::NODES_SIGNATURE,
                "nodes",
                "transcripts",
            ]
            .contains(&name.as_str())
            {
                unlisted(name);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("transcripts")) {
        for e in entries.flatten() {
            unlisted(format!("transcripts/{}", e.file_name().to_string_lossy()));
        }
    }
}
