//! Segment file format (version 1), record encryption and the hash chain.
//!
//! ```text
//! segment := header frame*
//! header  := "CUSTOSSG" u16 version  [16] archive id  u64 segment id
//!            u64 first seq  [32] chain head before this segment  i64 created ms
//! frame   := u32 len  body[len]
//! body    := 0x01 u64 seq [32] content hash [12] nonce  ciphertext+tag   (record)
//!          | 0x02 u64 seq [32] head i64 time u8 sealed [64] signature    (checkpoint)
//! ```
//!
//! Record payload (encrypted) = 16-byte random salt ‖ canonical record encoding.
//! AAD = "custos-rec-v1" ‖ header bytes ‖ seq, so a record cannot be moved to
//! another segment or position and any header byte change breaks every record.
//! The nonce is `0u32 ‖ seq`: seqs never repeat within a segment and every
//! segment has a fresh random key (a new segment is started on every open), so
//! a nonce never repeats under a key.
//!
//! Chain: `content_hash = SHA-256("custos-record-v1" ‖ salt ‖ canonical)`,
//! `leaf = SHA-256(seq ‖ content_hash ‖ SHA-256(nonce ‖ ciphertext))`,
//! `head_n = SHA-256(head_{n-1} ‖ leaf_n)`, `head_0 = SHA-256("custos-genesis-v1" ‖ archive id)`.
//! Content hashes are stored in clear: with the salt secret they reveal nothing,
//! and they let the chain verify after a segment key is destroyed.

use aes_gcm::aead::{Aead, AeadInPlace, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

pub const SEGMENT_MAGIC: &[u8; 8] = b"CUSTOSSG";
pub const SEGMENT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 8 + 2 + 16 + 8 + 8 + 32 + 8;
/// Frames larger than this are malformed (stanzas are capped far below it).
pub const MAX_FRAME: u32 = 64 << 20;
const KIND_RECORD: u8 = 1;
const KIND_CHECKPOINT: u8 = 2;
const RECORD_FIXED: usize = 1 + 8 + 32 + 12;
const CHECKPOINT_BODY: usize = 1 + 8 + 32 + 8 + 1 + 64;
pub const SALT_LEN: usize = 16;

pub type Hash = [u8; 32];

/// Segment header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub archive_id: [u8; 16],
    pub segment: u64,
    pub first_seq: u64,
    pub prev_head: Hash,
    pub created_ms: i64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let mut w = &mut b[..];
        for part in [
            &SEGMENT_MAGIC[..],
            &SEGMENT_VERSION.to_be_bytes(),
            &self.archive_id,
            &self.segment.to_be_bytes(),
            &self.first_seq.to_be_bytes(),
            &self.prev_head,
            &self.created_ms.to_be_bytes(),
        ] {
            let (head, tail) = w.split_at_mut(part.len());
            head.copy_from_slice(part);
            w = tail;
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        let h = b
            .get(..HEADER_LEN)
            .ok_or("segment shorter than its header")?;
        if h.get(..8) != Some(&SEGMENT_MAGIC[..]) {
            return Err("bad segment magic".into());
        }
        let version = u16::from_be_bytes(arr(h, 8));
        if version != SEGMENT_VERSION {
            return Err(format!("unsupported segment version {version}"));
        }
        Ok(SegmentHeader {
            archive_id: arr(h, 10),
            segment: u64::from_be_bytes(arr(h, 26)),
            first_seq: u64::from_be_bytes(arr(h, 34)),
            prev_head: arr(h, 42),
            created_ms: i64::from_be_bytes(arr(h, 74)),
        })
    }
}

/// Copies `N` bytes at `at`; callers have checked the length, zeros otherwise.
fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        out.copy_from_slice(s);
    }
    out
}

/// A parsed frame, borrowing the segment bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Record {
        seq: u64,
        content_hash: Hash,
        nonce: &'a [u8],
        ciphertext: &'a [u8],
    },
    Checkpoint(Checkpoint),
}

/// A signed statement of the chain head after record `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: Hash,
    pub time_ms: i64,
    /// Written when the segment was sealed; nothing may follow it.
    pub sealed: bool,
    pub signature: [u8; 64],
}

/// Outcome of parsing at an offset.
#[derive(Debug)]
pub enum Parsed<'a> {
    Frame(Frame<'a>, usize),
    /// Not enough bytes for a whole frame: a write in progress or a torn tail.
    Incomplete,
    Malformed(String),
}

pub fn parse_frame(b: &[u8], at: usize) -> Parsed<'_> {
    let Some(rest) = b.get(at..) else {
        return Parsed::Incomplete;
    };
    if rest.len() < 4 {
        return Parsed::Incomplete;
    }
    let len = u32::from_be_bytes(arr(rest, 0));
    if len > MAX_FRAME {
        return Parsed::Malformed(format!("frame length {len} exceeds limit"));
    }
    let Some(body) = rest.get(4..4 + len as usize) else {
        return Parsed::Incomplete;
    };
    let next = at + 4 + len as usize;
    match body.first() {
        Some(&KIND_RECORD) if body.len() >= RECORD_FIXED + 16 => Parsed::Frame(
            Frame::Record {
                seq: u64::from_be_bytes(arr(body, 1)),
                content_hash: arr(body, 9),
                nonce: body.get(41..53).unwrap_or_default(),
                ciphertext: body.get(53..).unwrap_or_default(),
            },
            next,
        ),
        Some(&KIND_RECORD) => Parsed::Malformed("record frame too short".into()),
        Some(&KIND_CHECKPOINT) if body.len() == CHECKPOINT_BODY => {
            let sealed = match body.get(49) {
                Some(0) => false,
                Some(1) => true,
                _ => return Parsed::Malformed("checkpoint sealed flag is not 0 or 1".into()),
            };
            Parsed::Frame(
                Frame::Checkpoint(Checkpoint {
                    seq: u64::from_be_bytes(arr(body, 1)),
                    head: arr(body, 9),
                    time_ms: i64::from_be_bytes(arr(body, 41)),
                    sealed,
                    signature: arr(body, 50),
                }),
                next,
            )
        }
        Some(&KIND_CHECKPOINT) => Parsed::Malformed("checkpoint frame has wrong length".into()),
        Some(k) => Parsed::Malformed(format!("unknown frame kind {k}")),
        None => Parsed::Malformed("empty frame".into()),
    }
}

pub fn genesis_head(archive_id: &[u8; 16]) -> Hash {
    sha(&[b"custos-genesis-v1", archive_id])
}

pub fn sha(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn content_hash(salt: &[u8], canonical: &[u8]) -> Hash {
    sha(&[b"custos-record-v1", salt, canonical])
}

pub fn ciphertext_hash(nonce: &[u8], ciphertext: &[u8]) -> Hash {
    sha(&[nonce, ciphertext])
}

pub fn leaf(seq: u64, content_hash: &Hash, ciphertext_hash: &Hash) -> Hash {
    sha(&[&seq.to_be_bytes(), content_hash, ciphertext_hash])
}

pub fn next_head(prev: &Hash, leaf: &Hash) -> Hash {
    sha(&[prev, leaf])
}

fn nonce_for(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn record_aad(header: &[u8; HEADER_LEN], seq: u64) -> [u8; 13 + HEADER_LEN + 8] {
    let mut aad = [0u8; 13 + HEADER_LEN + 8];
    aad[..13].copy_from_slice(b"custos-rec-v1");
    aad[13..13 + HEADER_LEN].copy_from_slice(header);
    aad[13 + HEADER_LEN..].copy_from_slice(&seq.to_be_bytes());
    aad
}

/// What sealing a record produced: the frame to append and its chain data.
pub struct SealedRecord {
    pub frame: Vec<u8>,
    pub content_hash: Hash,
    pub ciphertext_hash: Hash,
}

/// Encrypts one record into a frame.
pub fn encrypt_record(
    key: &Aes256Gcm,
    header: &[u8; HEADER_LEN],
    seq: u64,
    salt: &[u8; SALT_LEN],
    canonical: &[u8],
) -> Result<SealedRecord, aes_gcm::Error> {
    let mut frame = Vec::new();
    let (content_hash, ciphertext_hash) =
        append_record(key, header, seq, salt, canonical, &mut frame)?;
    Ok(SealedRecord {
        frame,
        content_hash,
        ciphertext_hash,
    })
}

/// [`encrypt_record`] appending the frame to `out`, encrypted where it lies (the
/// writer's batch buffer takes every record of a batch without a copy per record).
/// Returns the content hash and the ciphertext hash; on an error `out` is as it was.
pub fn append_record(
    key: &Aes256Gcm,
    header: &[u8; HEADER_LEN],
    seq: u64,
    salt: &[u8; SALT_LEN],
    canonical: &[u8],
    out: &mut Vec<u8>,
) -> Result<(Hash, Hash), aes_gcm::Error> {
    const TAG_LEN: usize = 16;
    let start = out.len();
    let ct_len = SALT_LEN + canonical.len() + TAG_LEN;
    let body_len = u32::try_from(RECORD_FIXED + ct_len).map_err(|_| aes_gcm::Error)?;
    let nonce = nonce_for(seq);
    let ch = content_hash(salt, canonical);
    out.reserve(4 + RECORD_FIXED + ct_len);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.push(KIND_RECORD);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ch);
    out.extend_from_slice(&nonce);
    let ct_start = out.len();
    out.extend_from_slice(salt);
    out.extend_from_slice(canonical);
    let aad = record_aad(header, seq);
    let tag = match key.encrypt_in_place_detached(
        Nonce::from_slice(&nonce),
        &aad,
        &mut out[ct_start..],
    ) {
        Ok(tag) => tag,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    out.extend_from_slice(&tag);
    let cth = ciphertext_hash(&nonce, &out[ct_start..]);
    Ok((ch, cth))
}

/// Decrypts a record frame's payload into (salt, canonical bytes).
pub fn decrypt_record(
    key: &Aes256Gcm,
    header: &[u8; HEADER_LEN],
    seq: u64,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Option<([u8; SALT_LEN], Vec<u8>)> {
    if nonce.len() != 12 {
        return None;
    }
    let aad = record_aad(header, seq);
    let mut pt = key
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()?;
    if pt.len() < SALT_LEN {
        return None;
    }
    let canonical = pt.split_off(SALT_LEN);
    Some((arr(&pt, 0), canonical))
}

fn checkpoint_message(
    header: &[u8; HEADER_LEN],
    seq: u64,
    head: &Hash,
    time_ms: i64,
    sealed: bool,
) -> Vec<u8> {
    // The header carries the archive id and segment id; hashing it in binds the
    // checkpoint to this exact segment.
    checkpoint_message_for_hash(&sha(&[header]), seq, head, time_ms, sealed)
}

fn checkpoint_message_for_hash(
    header_hash: &Hash,
    seq: u64,
    head: &Hash,
    time_ms: i64,
    sealed: bool,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"custos-checkpoint-v1");
    m.extend_from_slice(header_hash);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&time_ms.to_be_bytes());
    m.push(u8::from(sealed));
    m
}

pub fn checkpoint_frame(
    signer: &SigningKey,
    header: &[u8; HEADER_LEN],
    seq: u64,
    head: &Hash,
    time_ms: i64,
    sealed: bool,
) -> Vec<u8> {
    let sig = signer.sign(&checkpoint_message(header, seq, head, time_ms, sealed));
    let mut f = Vec::with_capacity(4 + CHECKPOINT_BODY);
    f.extend_from_slice(&(CHECKPOINT_BODY as u32).to_be_bytes());
    f.push(KIND_CHECKPOINT);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(head);
    f.extend_from_slice(&time_ms.to_be_bytes());
    f.push(u8::from(sealed));
    f.extend_from_slice(&sig.to_bytes());
    f
}

pub fn checkpoint_valid(key: &VerifyingKey, header: &[u8; HEADER_LEN], cp: &Checkpoint) -> bool {
    let msg = checkpoint_message(header, cp.seq, &cp.head, cp.time_ms, cp.sealed);
    key.verify(&msg, &Signature::from_bytes(&cp.signature))
        .is_ok()
}

/// [`checkpoint_valid`] given only the hash of the segment header (as a witness keeps it).
pub fn checkpoint_valid_for_hash(key: &VerifyingKey, header_hash: &Hash, cp: &Checkpoint) -> bool {
    let msg = checkpoint_message_for_hash(header_hash, cp.seq, &cp.head, cp.time_ms, cp.sealed);
    key.verify(&msg, &Signature::from_bytes(&cp.signature))
        .is_ok()
}

pub fn segment_name(id: u64) -> String {
    format!("segments/seg-{id:010}.log")
}

pub fn key_name(id: u64) -> String {
    format!("keys/segment-{id:010}.key")
}

/// Parses `seg-NNNNNNNNNN.log` back to its id.
pub fn segment_id_from_file(file: &str) -> Option<u64> {
    file.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::KeyInit;

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader {
            archive_id: [3; 16],
            segment: 9,
            first_seq: 100,
            prev_head: [4; 32],
            created_ms: -5,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = b;
        bad[9] = 2;
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("version"));
    }

    #[test]
    fn record_frame_round_trip_and_binding() {
        let key = Aes256Gcm::new_from_slice(&[1; 32]).unwrap();
        let header = SegmentHeader {
            archive_id: [3; 16],
            segment: 1,
            first_seq: 1,
            prev_head: [0; 32],
            created_ms: 0,
        }
        .encode();
        let sealed = encrypt_record(&key, &header, 5, &[2; 16], b"canonical").unwrap();
        let Parsed::Frame(
            Frame::Record {
                seq,
                content_hash: ch,
                nonce,
                ciphertext,
            },
            next,
        ) = parse_frame(&sealed.frame, 0)
        else {
            panic!("not a record frame")
        };
        assert_eq!((seq, next), (5, sealed.frame.len()));
        assert_eq!(ch, content_hash(&[2; 16], b"canonical"));
        let (salt, pt) = decrypt_record(&key, &header, 5, nonce, ciphertext).unwrap();
        assert_eq!((salt, pt.as_slice()), ([2; 16], &b"canonical"[..]));
        // The same bytes under another seq do not authenticate.
        assert!(decrypt_record(&key, &header, 6, nonce, ciphertext).is_none());
        assert!(matches!(
            parse_frame(&sealed.frame[..sealed.frame.len() - 1], 0),
            Parsed::Incomplete
        ));
    }

    #[test]
    fn records_appended_to_one_buffer_parse_where_they_lie() {
        let key = Aes256Gcm::new_from_slice(&[1; 32]).unwrap();
        let header = [4u8; HEADER_LEN];
        let mut buf = b"before".to_vec();
        let (ch5, cth5) = append_record(&key, &header, 5, &[2; 16], b"five", &mut buf).unwrap();
        let second = buf.len();
        let (ch6, cth6) = append_record(&key, &header, 6, &[3; 16], b"", &mut buf).unwrap();
        for (at, seq, salt, text, ch, cth) in [
            (6, 5, [2; 16], &b"five"[..], ch5, cth5),
            (second, 6, [3; 16], &b""[..], ch6, cth6),
        ] {
            let Parsed::Frame(
                Frame::Record {
                    seq: got,
                    content_hash: parsed,
                    nonce,
                    ciphertext,
                },
                _,
            ) = parse_frame(&buf, at)
            else {
                panic!("no record frame at {at}")
            };
            assert_eq!((got, parsed), (seq, ch));
            assert_eq!(cth, ciphertext_hash(nonce, ciphertext));
            assert_eq!(ch, content_hash(&salt, text));
            let (s, pt) = decrypt_record(&key, &header, seq, nonce, ciphertext).unwrap();
            assert_eq!((s, pt.as_slice()), (salt, text));
        }
        // Each frame is the format's bytes, built here the plain way: the salt and
        // record sealed by AES-256-GCM with the tag after the ciphertext.
        for (at, end, seq, salt, text, ch) in [
            (6, second, 5u64, [2u8; 16], &b"five"[..], ch5),
            (second, buf.len(), 6, [3; 16], &b""[..], ch6),
        ] {
            let nonce = nonce_for(seq);
            let mut aad = b"custos-rec-v1".to_vec();
            aad.extend_from_slice(&header);
            aad.extend_from_slice(&seq.to_be_bytes());
            let ct = key
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &[&salt[..], text].concat(),
                        aad: &aad,
                    },
                )
                .unwrap();
            let mut frame = u32::try_from(RECORD_FIXED + ct.len())
                .unwrap()
                .to_be_bytes()
                .to_vec();
            frame.push(KIND_RECORD);
            frame.extend_from_slice(&seq.to_be_bytes());
            frame.extend_from_slice(&ch);
            frame.extend_from_slice(&nonce);
            frame.extend_from_slice(&ct);
            assert_eq!(buf[at..end], frame[..]);
        }
    }

    #[test]
    fn checkpoint_signature_checks() {
        let sk = SigningKey::from_bytes(&[5; 32]);
        let header = [0u8; HEADER_LEN];
        let f = checkpoint_frame(&sk, &header, 10, &[7; 32], 1234, true);
        let Parsed::Frame(Frame::Checkpoint(cp), _) = parse_frame(&f, 0) else {
            panic!("not a checkpoint")
        };
        assert!(cp.sealed);
        assert!(checkpoint_valid(&sk.verifying_key(), &header, &cp));
        let mut other = cp.clone();
        other.seq = 11;
        assert!(!checkpoint_valid(&sk.verifying_key(), &header, &other));
    }
}
