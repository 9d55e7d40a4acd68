//! `manifest.json` and its signature `manifest.sig`.
//!
//! The manifest names every other file with its SHA-256 and size, states the
//! selection (query, time range), the record count and seq range, the
//! checkpoints that cover the rows, and the Parquet parts. `manifest.sig` is
//! the hex Ed25519 signature, by the archive's signing key, of
//! `"custos-export-manifest-v1\n" ‖ manifest.json bytes` (the prefix keeps it
//! from ever being mistaken for a checkpoint signature by the same key).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::chain::CoveringCheckpoint;
use super::hex;

pub const FORMAT: &str = "custos-export-v1";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const CHAIN: &str = "chain.jsonl";
const SIGNING_CONTEXT: &[u8] = b"custos-export-manifest-v1\n";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// Hex of the archive's 16-byte id (also inside every segment header).
    pub archive_id: String,
    /// Hex of the Ed25519 public key that signed this manifest and the checkpoints.
    pub signing_key: String,
    pub created: String,
    pub query: Option<String>,
    /// Inclusive lower bound, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Exclusive upper bound, ms since the epoch.
    pub until_ms: Option<i64>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The export read the archive up to this checkpointed seq; later records
    /// were not yet covered by a checkpoint and are not exported.
    pub through_seq: u64,
    pub checkpoints: CheckpointSummary,
    /// Segments the export met whose data key was destroyed by a signed shred record
    /// (retention, erasure): their records are not exported and not proven.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shredded: Vec<ShreddedSegment>,
    pub compression: String,
    pub parquet: Vec<PartEntry>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSummary {
    /// Checkpoints in `chain.jsonl` that close an interval with exported rows.
    pub count: u64,
    pub first: Option<CoveringCheckpoint>,
    pub last: Option<CoveringCheckpoint>,
}

/// A shredded segment an export met, and the shred record that destroyed its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShreddedSegment {
    pub segment: u64,
    /// The segment's first and last seq the export read (its first seq is in its
    /// header; its last is where the next segment begins).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The seq of the signed shred record in the chain.
    pub shred_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    pub path: String,
    pub rows: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// SHA-256 and length of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(buf.get(..k).unwrap_or_default());
        n += k as u64;
    }
    Ok((h.finalize().into(), n))
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(manifest);
    m
}

pub fn sign(key: &SigningKey, manifest: &[u8]) -> String {
    hex::encode(&key.sign(&signed_message(manifest)).to_bytes())
}

/// Whether `sig_file` (hex, surrounding whitespace ignored) signs `manifest`.
pub fn signature_valid(key: &VerifyingKey, manifest: &[u8], sig_file: &str) -> bool {
    hex::decode::<64>(sig_file.trim())
        .map(|s| {
            key.verify(&signed_message(manifest), &Signature::from_bytes(&s))
                .is_ok()
        })
        .unwrap_or(false)
}

/// A manifest path is relative, plain and inside the export: a hostile
/// manifest must not make the verifier read `/etc/passwd` or `../x`.
pub fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_binds_bytes_and_context() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let sig = sign(&k, b"{}");
        assert!(signature_valid(
            &k.verifying_key(),
            b"{}",
            &format!("{sig}\n")
        ));
        assert!(!signature_valid(&k.verifying_key(), b"{ }", &sig));
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(!signature_valid(&other.verifying_key(), b"{}", &sig));
        // A bare signature over the manifest (no context) is not accepted.
        let bare = hex::encode(&k.sign(b"{}").to_bytes());
        assert!(!signature_valid(&k.verifying_key(), b"{}", &bare));
    }

    #[test]
    fn paths_stay_inside() {
        assert!(safe_relative("records/part-00000.parquet"));
        assert!(safe_relative("index.html"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a\\b",
            "./a",
            "a b",
        ] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }
}
