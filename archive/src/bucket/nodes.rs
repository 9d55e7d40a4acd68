//! The other nodes' chains in a shared bucket, seen from one node: where this node
//! reads each from (a local directory holding only what it derives, such as an index),
//! and the legal holds they record, which bind every node's expiry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Remote, TieredStorage};
use crate::archive::ArchiveReader;
use crate::keys::MasterKey;
use crate::retention::Hold;
use crate::storage::FileStorage;

/// The folder, under a node's archive directory, of the chains it reads from the bucket.
pub const PEERS_DIR: &str = "nodes";
/// The local name of a chain kept at the prefix itself (by a node without a name) when
/// read by a named node; no node can be named so.
pub const UNNAMED: &str = "_unnamed";

/// Where the node with archive directory `own_dir` reads `node`'s chain.
pub fn peer_dir(own_dir: &Path, node: Option<&str>) -> PathBuf {
    own_dir.join(PEERS_DIR).join(node.unwrap_or(UNNAMED))
}

/// Every chain in the bucket other than `remote`'s own: the unnamed one at the prefix
/// (when `remote` is a named node's) and every other named node's, by name.
pub fn other_chains(remote: &Remote) -> Result<Vec<(Option<String>, Remote)>, String> {
    let mut out = Vec::new();
    if remote.node.is_some() {
        let unnamed = remote.for_node(None);
        if unnamed.has_chain()? {
            out.push((None, unnamed));
        }
    }
    for name in remote.nodes()? {
        if remote.node.as_deref() != Some(name.as_str()) {
            out.push((Some(name.clone()), remote.for_node(Some(&name))));
        }
    }
    Ok(out)
}

/// Another chain in the bucket and its archive id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArchive {
    /// The node that writes it (`None`: the unnamed one at the prefix).
    pub node: Option<String>,
    pub archive_id: [u8; 16],
}

/// The archive id of every other chain in the bucket (read from its `archive.meta`), by
/// node: the witness files a shared witness directory may hold besides this chain's. A
/// node whose `archive.meta` is not in the bucket yet has no id to give.
pub fn peer_archive_ids(remote: &Remote) -> Result<Vec<PeerArchive>, String> {
    let mut out = Vec::new();
    for (node, r) in other_chains(remote)? {
        let key = r.key(crate::log::META_NAME);
        let Some(bytes) = r
            .client
            .get_object(&key, None)
            .map_err(|e| format!("{key}: {e}"))?
        else {
            continue;
        };
        let meta = crate::log::Meta::decode(&bytes)
            .ok_or_else(|| format!("{key}: not an archive.meta"))?;
        out.push(PeerArchive {
            node,
            archive_id: meta.archive_id,
        });
    }
    Ok(out)
}

/// The holds recorded in every other node's chain, as far as that chain is in the
/// bucket (its sealed, stored segments), each matter prefixed with its node's name.
/// An error when any of them cannot be read: a hold that cannot be read might cover
/// anything, so the caller shreds nothing.
pub fn peer_holds(
    own_dir: &Path,
    remote: &Remote,
    master: &MasterKey,
) -> Result<Vec<Hold>, String> {
    let mut all = Vec::new();
    for (node, r) in other_chains(remote)? {
        let name = node.as_deref().unwrap_or(UNNAMED).to_string();
        let dir = peer_dir(own_dir, node.as_deref());
        let storage = Arc::new(TieredStorage::new(
            FileStorage::new(&dir),
            r.clone(),
            r.cache_bytes,
        ));
        let reader = ArchiveReader::open_in(&dir, storage, master)
            .map_err(|e| format!("node {name}'s chain: {e}"))?;
        let holds = reader
            .holds()
            .map_err(|e| format!("node {name}'s holds: {e}"))?;
        if !holds.unreadable.is_empty() {
            return Err(format!(
                "node {name}'s hold record(s) at seq {:?} cannot be read",
                holds.unreadable
            ));
        }
        for mut h in holds.all().cloned() {
            h.spec.matter = format!("{name}: {}", h.spec.matter);
            all.push(h);
        }
    }
    Ok(all)
}
