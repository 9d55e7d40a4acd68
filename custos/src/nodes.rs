//! The chains a node reads. Each node writes its own chain; with several nodes sharing
//! a bucket, each keeps it under `<prefix>nodes/<name>/`, and every reader (search,
//! verify, export, the web UI) reads them all (docs/object-storage.md, "Several nodes").
//!
//! Another node's chain is read through a local directory `<archive dir>/nodes/<name>`
//! that holds only what this node derives from it (its search index); segments, keys
//! and `archive.meta` come from the bucket.

use std::path::PathBuf;

use anyhow::Context;
use custos_archive::bucket;

use crate::config::ArchiveSettings;

/// The audit action with which a named node begins each run of its chain; its detail
/// is `{"node": "<name>"}`.
pub const NODE_START: &str = "node.start";

/// Checks that every `node.start` record in `reader`'s chain names `node`: a chain kept
/// in one node's folder but started by another was copied or moved there. Returns the
/// problems, located by seq, and how many such records there are.
pub fn check_node_records(
    reader: &custos_archive::ArchiveReader,
    node: Option<&str>,
) -> Result<(usize, Vec<custos_archive::Problem>), custos_archive::ReadError> {
    use custos_archive::{EventRecord, NewRecord};
    let mut seen = 0;
    let mut problems = Vec::new();
    reader.scan::<custos_archive::ReadError>(1, |e| {
        let Some(rec) = &e.record else {
            return Ok(());
        };
        if let NewRecord::Event(EventRecord::Audit { action, detail, .. }) = &rec.content {
            if action == NODE_START {
                seen += 1;
                let named = serde_json::from_str::<serde_json::Value>(detail)
                    .ok()
                    .and_then(|v| v.get("node").and_then(|n| n.as_str()).map(str::to_string));
                if named.as_deref() != node {
                    problems.push(custos_archive::Problem {
                        segment: Some(e.segment),
                        offset: Some(e.offset),
                        seq: Some(e.seq),
                        what: format!(
                            "a node.start record names node {}, but this chain is kept as {}",
                            named.as_deref().unwrap_or("(none)"),
                            node.map(|n| format!("node {n}'s"))
                                .unwrap_or_else(|| "the unnamed node's".into())
                        ),
                    });
                }
            }
        }
        Ok(())
    })?;
    Ok((seen, problems))
}

/// One chain: this node's own, or another's read from the bucket.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The node that writes it (`None`: a node without a name).
    pub node: Option<String>,
    /// Where it is opened: the archive directory for this node's own chain.
    pub dir: PathBuf,
    pub own: bool,
}

impl Chain {
    /// How reports name it: `node n1`, or `the archive` for an unnamed single node.
    pub fn label(&self) -> String {
        match &self.node {
            Some(n) => format!("node {n}"),
            None => "the archive".to_string(),
        }
    }
}

/// This node's own chain, ready to record what the node does (an export's audit
/// record), created if it has not been written yet. Refused when the chain's place in
/// the bucket is taken by a chain whose `archive.meta` is not in the local directory:
/// another node writes it, and appending here would fork it.
pub fn own_chain_for_records(
    a: &ArchiveSettings,
    master: &custos_archive::MasterKey,
    signing: &custos_archive::SigningKey,
) -> anyhow::Result<PathBuf> {
    if a.dir.join(custos_archive::log::META_NAME).exists() {
        return Ok(a.dir.clone());
    }
    if let Some(remote) = bucket::registered(&a.dir) {
        if remote.has_chain().map_err(anyhow::Error::msg)? {
            anyhow::bail!(
                "the chain at {} in the bucket is written by another node (its archive.meta is not in {}): this node cannot record its actions there without forking it; give it a name of its own (`[archive] node = \"…\"`)",
                remote.prefix,
                a.dir.display()
            );
        }
    }
    let cfg = crate::archive_cmds::archive_config(a, master.clone(), signing.clone());
    let archive = custos_archive::Archive::open(cfg)
        .with_context(|| format!("starting this node's chain in {}", a.dir.display()))?;
    // Closed, not dropped: the writer lock is free again before the caller appends.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to close the new chain")?
        .block_on(archive.close())
        .context("closing the new chain")?;
    Ok(a.dir.clone())
}

/// Every chain this node can read, its own first, then the others by name. Without an
/// object store that is the local archive alone. A node that has not written yet (a
/// reader) leaves its own out once any other chain exists.
pub fn chains(a: &ArchiveSettings) -> anyhow::Result<Vec<Chain>> {
    let own = Chain {
        node: a.node.clone(),
        dir: a.dir.clone(),
        own: true,
    };
    let Some(remote) = bucket::registered(&a.dir) else {
        return Ok(vec![own]);
    };
    let mut others = Vec::new();
    for (node, r) in bucket::other_chains(&remote).map_err(anyhow::Error::msg)? {
        let dir = bucket::peer_dir(&a.dir, node.as_deref());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        bucket::register(&dir, r);
        others.push(Chain {
            node,
            dir,
            own: false,
        });
    }
    let own_written = a.dir.join(custos_archive::log::META_NAME).exists()
        || remote.has_chain().map_err(anyhow::Error::msg)?;
    let mut out = Vec::with_capacity(others.len() + 1);
    if own_written || others.is_empty() {
        out.push(own);
    }
    out.extend(others);
    Ok(out)
}
