//! An export of several nodes' chains: one complete export per chain under
//! `nodes/<name>/` (each with its own manifest, proofs and signature, verifiable alone),
//! and `nodes.json` naming every part with the SHA-256 of its manifest. `nodes.sig` is
//! the hex Ed25519 signature, by the same key, of `"custos-export-nodes-v1\n" ‖
//! nodes.json bytes`, so a part cannot be dropped, added or swapped unseen.
//!
//! Each chain's records keep their own sequence; merged views order by time and name
//! the node beside the seq.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::hex;
use super::manifest::{self, safe_relative};
pub use super::merged::ViewFile;
use super::merged::{check_view, write_view};
use super::{
    verify_export, ExportError, ExportOptions, ExportReport, ExportRequest, ExportSummary,
};
use crate::keys::MasterKey;

pub const NODES: &str = "nodes.json";
pub const NODES_SIGNATURE: &str = "nodes.sig";
const FORMAT: &str = "custos-export-nodes-v1";
const SIGNING_CONTEXT: &[u8] = b"custos-export-nodes-v1\n";

/// One node's part of the export.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePart {
    /// The node that wrote the chain (`None`: a node without a name).
    pub node: Option<String>,
    /// The part's directory, relative to the export (`nodes/<name>`).
    pub dir: String,
    /// Hex SHA-256 of the part's `manifest.json`.
    pub manifest_sha256: String,
    pub records: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeList {
    format: String,
    nodes: Vec<NodePart>,
    /// The reading view across the parts (`index.html`, `transcripts/`), if written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    view: Vec<ViewFile>,
}

fn signed_message(list: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + list.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(list);
    m
}

/// Whether `dir` holds a multi-node export (its `nodes.json`).
pub fn is_nodes_export(dir: &Path) -> bool {
    dir.join(NODES).exists()
}

/// Writes and signs the list of parts, once every part is complete.
pub fn write_node_list(
    out: &Path,
    parts: Vec<NodePart>,
    view: Vec<ViewFile>,
    key: &SigningKey,
) -> Result<(), std::io::Error> {
    let list = NodeList {
        format: FORMAT.into(),
        nodes: parts,
        view,
    };
    let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
    std::fs::write(out.join(NODES), &bytes)?;
    let sig = hex::encode(&key.sign(&signed_message(&bytes)).to_bytes());
    std::fs::write(out.join(NODES_SIGNATURE), sig)?;
    Ok(())
}

/// One chain to export: the node that writes it, the part's directory name and where
/// the chain is read from (a node's own directory, or another node's local directory in
/// front of the bucket).
#[derive(Debug, Clone)]
pub struct ChainSource {
    pub node: Option<String>,
    /// `nodes/<name>` in the export: the node's name (`_unnamed` for a node without).
    pub name: String,
    pub dir: std::path::PathBuf,
}

/// Why a several-node export stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodesExportError {
    #[error("output directory {0} exists and is not empty; choose a new one")]
    OutExists(std::path::PathBuf),
    #[error("exporting node {name}: {source}")]
    Part { name: String, source: ExportError },
    #[error("recording the export of node {name}: {why}")]
    Record { name: String, why: String },
    #[error("writing the node list and the view across nodes in {path}: {source}")]
    List {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Exports every chain of `chains` into `out/nodes/<name>/` (each a complete export,
/// verifiable alone) and then writes the signed list. `recorded` is called once per
/// part as it completes, to record the export in the audit trail; a failure there stops
/// the export before the next part. Each part is selected by `req` as `opts` say.
pub fn export_chains(
    chains: &[ChainSource],
    master_key: &MasterKey,
    signing_key: &SigningKey,
    out: &Path,
    (req, opts): (&ExportRequest, &ExportOptions),
    mut progress: impl FnMut(&ChainSource, u64, u64),
    mut recorded: impl FnMut(&ChainSource, &ExportSummary) -> Result<(), String>,
) -> Result<Vec<(NodePart, ExportSummary)>, NodesExportError> {
    let not_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if not_empty {
        return Err(NodesExportError::OutExists(out.to_path_buf()));
    }
    let mut parts = Vec::new();
    for chain in chains {
        let summary = super::export_with(
            &chain.dir,
            master_key,
            signing_key,
            &out.join("nodes").join(&chain.name),
            req,
            opts,
            |read, through| progress(chain, read, through),
        )
        .map_err(|source| NodesExportError::Part {
            name: chain.name.clone(),
            source,
        })?;
        recorded(chain, &summary).map_err(|why| NodesExportError::Record {
            name: chain.name.clone(),
            why,
        })?;
        parts.push((
            NodePart {
                node: chain.node.clone(),
                dir: format!("nodes/{}", chain.name),
                manifest_sha256: summary.manifest_sha256.clone(),
                records: summary.records,
            },
            summary,
        ));
    }
    // Every node's rows in one time order, for reading; the parts are the proof.
    let dirs: Vec<(Option<String>, std::path::PathBuf)> = parts
        .iter()
        .map(|(p, _)| (p.node.clone(), out.join(&p.dir)))
        .collect();
    let names: Vec<&str> = chains.iter().map(|c| &*c.name).collect();
    let heading = format!(
        "Every node's exported records in time order (nodes {}); each row names its node and seq. The proof of each record is in its node's part under nodes/.",
        names.join(", ")
    );
    let list_error = |source| NodesExportError::List {
        path: out.to_path_buf(),
        source,
    };
    let view = write_view(out, &dirs, &heading).map_err(list_error)?;
    write_node_list(
        out,
        parts.iter().map(|(p, _)| p.clone()).collect(),
        view,
        signing_key,
    )
    .map_err(list_error)?;
    Ok(parts)
}

/// The outcome of [`verify_nodes_export`]: each listed part's own report, and what is
/// wrong with the list itself.
#[derive(Debug, Default)]
pub struct NodesReport {
    pub parts: Vec<(NodePart, ExportReport)>,
    pub problems: Vec<String>,
}

impl NodesReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.parts.iter().all(|(_, r)| r.is_clean())
    }
}

/// Checks the signed list, every part it names (as a complete export, and its manifest
/// the one listed), and that `nodes/` holds no part the list does not name.
pub fn verify_nodes_export(dir: &Path, key: &VerifyingKey) -> NodesReport {
    let mut r = NodesReport::default();
    let bytes = match std::fs::read(dir.join(NODES)) {
        Ok(b) => b,
        Err(e) => {
            r.problems.push(format!("{NODES}: {e}"));
            return r;
        }
    };
    let signed = std::fs::read_to_string(dir.join(NODES_SIGNATURE))
        .ok()
        .and_then(|s| hex::decode::<64>(s.trim()))
        .is_some_and(|s| {
            key.verify(&signed_message(&bytes), &Signature::from_bytes(&s))
                .is_ok()
        });
    if !signed {
        r.problems.push(format!(
            "{NODES_SIGNATURE} is missing or does not sign {NODES} with this key (changed, or signed by another)"
        ));
    }
    let list: NodeList = match serde_json::from_slice(&bytes) {
        Ok(l) => l,
        Err(e) => {
            r.problems
                .push(format!("{NODES}: not a list of node exports: {e}"));
            return r;
        }
    };
    if list.format != FORMAT {
        r.problems.push(format!(
            "{NODES}: format {:?}, expected {FORMAT:?}",
            list.format
        ));
    }
    let mut listed = Vec::new();
    for part in list.nodes {
        let Some(name) = part
            .dir
            .strip_prefix("nodes/")
            .filter(|n| safe_relative(&part.dir) && !n.contains('/'))
        else {
            r.problems.push(format!(
                "{NODES}: part directory {:?} is not nodes/<name>",
                part.dir
            ));
            continue;
        };
        listed.push(name.to_string());
        let at = dir.join(&part.dir);
        let manifest_sha = std::fs::read(at.join(manifest::MANIFEST))
            .map(|m| hex::encode(&Sha256::digest(&m)))
            .unwrap_or_default();
        if manifest_sha != part.manifest_sha256 {
            r.problems.push(format!(
                "{}: its manifest is not the one {NODES} lists",
                part.dir
            ));
        }
        let report = verify_export(&at, key);
        r.parts.push((part, report));
    }
    check_view(dir, &list.view, &mut r.problems);
    match std::fs::read_dir(dir.join("nodes")) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !listed.contains(&name) {
                    r.problems
                        .push(format!("nodes/{name} is not listed in {NODES}"));
                }
            }
        }
        Err(e) => r.problems.push(format!("nodes/: {e}")),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_signature_binds_its_bytes() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = vec![NodePart {
            node: Some("n1".into()),
            dir: "nodes/n1".into(),
            manifest_sha256: "00".repeat(32),
            records: 3,
        }];
        write_node_list(dir.path(), parts, Vec::new(), &key).expect("write");
        let r = verify_nodes_export(dir.path(), &key.verifying_key());
        // The part itself is missing (its manifest), but the list verifies.
        assert!(
            !r.problems.iter().any(|p| p.contains(NODES_SIGNATURE)),
            "{r:?}"
        );
        let path = dir.path().join(NODES);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("\"records\": 3", "\"records\": 4")).expect("write");
        let r = verify_nodes_export(dir.path(), &key.verifying_key());
        assert!(
            r.problems.iter().any(|p| p.contains(NODES_SIGNATURE)),
            "{r:?}"
        );
    }

    #[test]
    fn a_part_outside_nodes_is_refused() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = vec![NodePart {
            node: None,
            dir: "nodes/../../etc".into(),
            manifest_sha256: String::new(),
            records: 0,
        }];
        write_node_list(dir.path(), parts, Vec::new(), &key).expect("write");
        let r = verify_nodes_export(dir.path(), &key.verifying_key());
        assert!(
            r.problems.iter().any(|p| p.contains("is not nodes/<name>")),
            "{r:?}"
        );
    }
}
