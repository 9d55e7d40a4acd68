//! `chain.jsonl`: the chain links that tie every exported row to a signed
//! checkpoint of the archive.
//!
//! The archive's chain is `head_n = SHA-256(head_{n-1} ‖ leaf_n)`. An
//! exported row carries its own leaf inputs (seq, record hash, ciphertext
//! hash). For every checkpoint interval that holds exported rows this file
//! gives where the interval starts (the segment header, or the signed
//! checkpoint before it), the leaf of every record of the interval that is
//! *not* exported, and the signed checkpoint that ends it. A verifier walks
//! the seqs in order, taking each leaf from the rows or from this file, and
//! must arrive at the signed head: so no row can be altered, dropped, moved or
//! added without breaking a signature, and no other record is revealed.
//!
//! ```text
//! {"type":"segment",...}     header → state (first_seq - 1, prev_head)
//! {"type":"resume",...}      signed checkpoint → state (seq, head)
//! {"type":"leaf",...}        a record not exported: state ← (seq, H(head ‖ leaf))
//!   (rows)                   an exported record: leaf from its row
//! {"type":"checkpoint",...}  state must equal the signed (seq, head)
//! ```

use std::io::Write;

use super::hex;
use crate::segment::{self, Checkpoint, Hash, HEADER_LEN};

/// One line of `chain.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ProofLine {
    /// The 82 header bytes of a segment, hex.
    Segment { segment: u64, header: String },
    /// A checkpoint the next interval starts from.
    Resume(CheckpointJson),
    /// The leaf of a record that is not exported.
    Leaf { seq: u64, leaf: String },
    /// The checkpoint that ends an interval.
    Checkpoint(CheckpointJson),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointJson {
    pub seq: u64,
    pub head: String,
    pub time_ms: i64,
    pub sealed: bool,
    pub signature: String,
}

impl CheckpointJson {
    pub fn from_checkpoint(cp: &Checkpoint) -> CheckpointJson {
        CheckpointJson {
            seq: cp.seq,
            head: hex::encode(&cp.head),
            time_ms: cp.time_ms,
            sealed: cp.sealed,
            signature: hex::encode(&cp.signature),
        }
    }

    pub fn to_checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            seq: self.seq,
            head: hex::decode::<32>(&self.head)?,
            time_ms: self.time_ms,
            sealed: self.sealed,
            signature: hex::decode::<64>(&self.signature)?,
        })
    }
}

/// A checkpoint that covers exported rows, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoveringCheckpoint {
    pub segment: u64,
    pub seq: u64,
    pub head: String,
    pub time_ms: i64,
}

/// Why the archive cannot be exported as it is.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("segment {segment}: checkpoint at seq {seq} does not match the recomputed chain head; run `custos verify`")]
    HeadMismatch { segment: u64, seq: u64 },
    #[error("segment {segment}: checkpoint at seq {seq} has a bad signature for this signing key; run `custos verify`")]
    BadSignature { segment: u64, seq: u64 },
    #[error("segment {segment}: seq {seq} does not follow seq {prev}; run `custos verify`")]
    Gap { segment: u64, seq: u64, prev: u64 },
    #[error(
        "segment {segment} ends at seq {seq} without a checkpoint covering it; run `custos verify`"
    )]
    Uncovered { segment: u64, seq: u64 },
    #[error("writing chain.jsonl: {0}")]
    Io(#[from] std::io::Error),
}

struct Seg {
    id: u64,
    header: [u8; HEADER_LEN],
    emitted: bool,
}

/// Builds `chain.jsonl` while the export streams the log in order. Memory:
/// the leaves of one checkpoint interval before its first exported row.
pub(crate) struct ProofBuilder<W: Write> {
    out: W,
    verifying: ed25519_dalek::VerifyingKey,
    seg: Option<Seg>,
    /// Recomputed (seq, head) after the last record seen.
    state: (u64, Hash),
    /// The checkpoint the current interval starts from (`None`: segment start).
    interval_start: Option<Checkpoint>,
    /// The last line written leaves the verifier's state at `interval_start`.
    continuous: bool,
    /// The current interval has exported rows (its leaves go straight out).
    active: bool,
    pending: Vec<(u64, Hash)>,
    pub covering: u64,
    pub first_covering: Option<CoveringCheckpoint>,
    pub last_covering: Option<CoveringCheckpoint>,
    pub leaves_written: u64,
}

impl<W: Write> ProofBuilder<W> {
    pub fn new(out: W, verifying: ed25519_dalek::VerifyingKey) -> ProofBuilder<W> {
        ProofBuilder {
            out,
            verifying,
            seg: None,
            state: (0, [0; 32]),
            interval_start: None,
            continuous: false,
            active: false,
            pending: Vec::new(),
            covering: 0,
            first_covering: None,
            last_covering: None,
            leaves_written: 0,
        }
    }

    fn line(&mut self, l: &ProofLine) -> Result<(), ChainError> {
        serde_json::to_writer(&mut self.out, l).map_err(std::io::Error::from)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn seg_id(&self) -> u64 {
        self.seg.as_ref().map_or(0, |s| s.id)
    }

    pub fn begin_segment(
        &mut self,
        id: u64,
        header: [u8; HEADER_LEN],
        first_seq: u64,
        prev_head: Hash,
    ) -> Result<(), ChainError> {
        if self.active {
            return Err(ChainError::Uncovered {
                segment: self.seg_id(),
                seq: self.state.0,
            });
        }
        self.seg = Some(Seg {
            id,
            header,
            emitted: false,
        });
        self.state = (first_seq.saturating_sub(1), prev_head);
        self.interval_start = None;
        self.continuous = false;
        self.pending.clear();
        Ok(())
    }

    fn advance(&mut self, seq: u64, leaf: &Hash) -> Result<(), ChainError> {
        if seq != self.state.0 + 1 {
            return Err(ChainError::Gap {
                segment: self.seg_id(),
                seq,
                prev: self.state.0,
            });
        }
        self.state = (seq, segment::next_head(&self.state.1, leaf));
        Ok(())
    }

    /// A record that is not exported.
    pub fn gap(&mut self, seq: u64, leaf: Hash) -> Result<(), ChainError> {
        self.advance(seq, &leaf)?;
        if self.active {
            self.leaves_written += 1;
            self.line(&ProofLine::Leaf {
                seq,
                leaf: hex::encode(&leaf),
            })
        } else {
            self.pending.push((seq, leaf));
            Ok(())
        }
    }

    /// A record that is exported (its row carries the leaf inputs).
    pub fn exported(&mut self, seq: u64, leaf: Hash) -> Result<(), ChainError> {
        self.advance(seq, &leaf)?;
        if self.active {
            return Ok(());
        }
        self.active = true;
        let mut seg_line = None;
        if let Some(s) = &mut self.seg {
            if !s.emitted {
                s.emitted = true;
                seg_line = Some(ProofLine::Segment {
                    segment: s.id,
                    header: hex::encode(&s.header),
                });
            }
        }
        if let Some(l) = seg_line {
            self.line(&l)?;
        }
        if let Some(cp) = self.interval_start.clone() {
            if !self.continuous {
                self.line(&ProofLine::Resume(CheckpointJson::from_checkpoint(&cp)))?;
            }
        }
        for (s, l) in std::mem::take(&mut self.pending) {
            self.leaves_written += 1;
            self.line(&ProofLine::Leaf {
                seq: s,
                leaf: hex::encode(&l),
            })?;
        }
        Ok(())
    }

    /// A checkpoint frame: checked against the recomputed chain, then written
    /// if it closes an interval with exported rows.
    pub fn checkpoint(&mut self, cp: Checkpoint) -> Result<(), ChainError> {
        let Some(seg) = &self.seg else {
            return Ok(());
        };
        if cp.seq != self.state.0 || cp.head != self.state.1 {
            return Err(ChainError::HeadMismatch {
                segment: seg.id,
                seq: cp.seq,
            });
        }
        if !segment::checkpoint_valid(&self.verifying, &seg.header, &cp) {
            return Err(ChainError::BadSignature {
                segment: seg.id,
                seq: cp.seq,
            });
        }
        let seg_id = seg.id;
        if self.active {
            self.line(&ProofLine::Checkpoint(CheckpointJson::from_checkpoint(&cp)))?;
            let c = CoveringCheckpoint {
                segment: seg_id,
                seq: cp.seq,
                head: hex::encode(&cp.head),
                time_ms: cp.time_ms,
            };
            self.covering += 1;
            if self.first_covering.is_none() {
                self.first_covering = Some(c.clone());
            }
            self.last_covering = Some(c);
            self.active = false;
            self.continuous = true;
        } else {
            self.continuous = false;
        }
        self.interval_start = Some(cp);
        self.pending.clear();
        Ok(())
    }

    /// Whether the current interval has exported rows: its leaves are all needed.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A checkpoint that ends an interval whose records were skimmed, not hashed: none
    /// of them is exported, and no leaf of theirs is needed. Its signature is checked,
    /// and the chain goes on from its head, as a verifier's does from a `resume` line.
    pub fn skipped(&mut self, cp: Checkpoint) -> Result<(), ChainError> {
        let Some(seg) = &self.seg else {
            return Ok(());
        };
        if self.active {
            return Err(ChainError::Uncovered {
                segment: seg.id,
                seq: self.state.0,
            });
        }
        if cp.seq < self.state.0 {
            return Err(ChainError::Gap {
                segment: seg.id,
                seq: cp.seq,
                prev: self.state.0,
            });
        }
        if !segment::checkpoint_valid(&self.verifying, &seg.header, &cp) {
            return Err(ChainError::BadSignature {
                segment: seg.id,
                seq: cp.seq,
            });
        }
        self.state = (cp.seq, cp.head);
        self.continuous = false;
        self.interval_start = Some(cp);
        self.pending.clear();
        Ok(())
    }

    /// Ends the stream at the export limit (a checkpoint): nothing may be open.
    pub fn finish(mut self) -> Result<W, ChainError> {
        if self.active {
            return Err(ChainError::Uncovered {
                segment: self.seg_id(),
                seq: self.state.0,
            });
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
