//! Reading the log in one place. Every reader — `verify`, recovery, [`ArchiveReader`]'s
//! scan, tail and `record_at`, and export — walks a segment's frames with
//! [`SegmentWalk`], checks a segment header against the chain so far with
//! [`header_flaws`], and opens a record with [`open_record`], so the checks are the same
//! everywhere:
//!
//! - a header names this archive and this segment, and continues the previous segment's
//!   seq and chain head;
//! - record seqs run on without gap, repeat or reversal;
//! - each checkpoint covers the last record and states the head computed so far;
//! - nothing follows a sealing checkpoint;
//! - a record authenticates under its segment key, its content hash matches its
//!   plaintext, it decodes, and it carries the seq of its frame.
//!
//! Strict readers stop at the first flaw; `verify` reports each and walks on. An export
//! skims the checkpoint intervals it needs no leaf of ([`SegmentWalk::skim`]): the
//! frames and seqs are checked there, the hashes are not, and each such interval's
//! checkpoint signature is checked instead.
//!
//! [`ArchiveReader`]: crate::archive::ArchiveReader

use aes_gcm::Aes256Gcm;

use crate::record::Record;
use crate::segment::{self, Checkpoint, Frame, Hash, Parsed, SegmentHeader, HEADER_LEN, SALT_LEN};

/// Where the chain stands: the seq the next record must carry and the head so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPos {
    pub next_seq: u64,
    pub head: Hash,
}

impl ChainPos {
    /// Before the first record of the archive.
    pub fn genesis(archive_id: &[u8; 16]) -> ChainPos {
        ChainPos {
            next_seq: 1,
            head: segment::genesis_head(archive_id),
        }
    }

    /// Where a segment's header says the chain stood when it began.
    pub fn of_header(h: &SegmentHeader) -> ChainPos {
        ChainPos {
            next_seq: h.first_seq,
            head: h.prev_head,
        }
    }
}

/// What is wrong with segment `id`'s header, given the archive and, when known, where
/// the previous segment left the chain. Empty when nothing is.
pub fn header_flaws(
    h: &SegmentHeader,
    id: u64,
    archive_id: &[u8; 16],
    after: Option<ChainPos>,
) -> Vec<String> {
    let mut flaws = Vec::new();
    if h.archive_id != *archive_id {
        flaws.push("header names another archive".to_owned());
    }
    if h.segment != id {
        flaws.push(format!("header says segment {}", h.segment));
    }
    if let Some(after) = after {
        if h.first_seq != after.next_seq {
            flaws.push(format!(
                "header first seq {} but expected {} (segment missing or altered)",
                h.first_seq, after.next_seq
            ));
        }
        if h.prev_head != after.head {
            flaws.push("header chain head does not continue the previous segment".to_owned());
        }
    }
    flaws
}

/// One record frame, with its place in the chain.
#[derive(Debug, Clone)]
pub struct RecordFrame<'a> {
    /// Offset of the frame in its segment.
    pub offset: u64,
    pub seq: u64,
    pub content_hash: Hash,
    pub nonce: &'a [u8],
    pub ciphertext: &'a [u8],
    pub ciphertext_hash: Hash,
    pub leaf: Hash,
    /// The chain head after this record.
    pub head: Hash,
    /// A break in the seq run at this record (the walk goes on from its seq).
    pub flaw: Option<String>,
}

/// A step of the walk.
#[derive(Debug)]
pub enum Step<'a> {
    Record(RecordFrame<'a>),
    Checkpoint {
        offset: u64,
        cp: Checkpoint,
        /// It does not cover the last record, or states another head. The walk keeps
        /// its own head; [`SegmentWalk::resync`] takes the checkpoint's instead.
        flaw: Option<String>,
    },
    /// No whole frame at `offset`: the end of the segment (`left` = 0), a write in
    /// progress, or a torn tail (`left` bytes).
    End {
        offset: u64,
        left: usize,
    },
}

/// A frame the walk cannot go past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub offset: u64,
    pub what: String,
}

/// The frames of one segment (or of a window of it), in order, with the chain followed.
pub struct SegmentWalk<'a> {
    bytes: &'a [u8],
    /// Offset in the segment of `bytes[0]`.
    base: u64,
    at: usize,
    pos: ChainPos,
    sealed: bool,
    /// [`SegmentWalk::skim`].
    skim: bool,
}

impl<'a> SegmentWalk<'a> {
    /// Walks a whole segment file: frames start after the header, and the chain starts
    /// from the header's own position (check it with [`header_flaws`]).
    pub fn segment(bytes: &'a [u8], header: &SegmentHeader) -> SegmentWalk<'a> {
        SegmentWalk {
            bytes,
            base: 0,
            at: HEADER_LEN.min(bytes.len()),
            pos: ChainPos::of_header(header),
            sealed: false,
            skim: false,
        }
    }

    /// Walks `bytes`, which start at offset `base` of a segment, with the chain at `pos`.
    pub fn window(bytes: &'a [u8], base: u64, pos: ChainPos) -> SegmentWalk<'a> {
        SegmentWalk::window_after(bytes, base, pos, false)
    }

    /// [`SegmentWalk::window`] going on from a window that ended past a sealing
    /// checkpoint when `sealed` (anything here is then data after the seal).
    pub fn window_after(
        bytes: &'a [u8],
        base: u64,
        pos: ChainPos,
        sealed: bool,
    ) -> SegmentWalk<'a> {
        SegmentWalk {
            bytes,
            base,
            at: 0,
            pos,
            sealed,
            skim: false,
        }
    }

    /// The chain after the last frame returned.
    pub fn pos(&self) -> ChainPos {
        self.pos
    }

    /// Offset in the segment of the next frame.
    pub fn offset(&self) -> u64 {
        self.base + self.at as u64
    }

    /// Whether a sealing checkpoint has been passed.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    /// Continues from a checkpoint's head (after its flaw was reported), so one break
    /// is reported once.
    pub fn resync(&mut self, head: Hash) {
        self.pos.head = head;
    }

    /// Skims (`true`) or follows the chain again: a skimming walk still checks frames,
    /// seqs and that a checkpoint covers the last record, but hashes nothing. Its record
    /// frames carry no hashes (`ciphertext_hash`, `leaf` and `head` are all zero), the
    /// head stays where it was, and a checkpoint's head goes unchecked: for a reader that
    /// needs nothing of the records up to a checkpoint, and goes on from that
    /// checkpoint's signed head ([`SegmentWalk::resync`]).
    pub fn skim(&mut self, on: bool) {
        self.skim = on;
    }

    /// Whether the walk skims ([`SegmentWalk::skim`]).
    pub fn skimming(&self) -> bool {
        self.skim
    }

    /// The next frame; `Err` for a frame that cannot be parsed or data after the seal.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Step<'a>, Broken> {
        let offset = self.offset();
        let left = self.bytes.len().saturating_sub(self.at);
        if left == 0 {
            return Ok(Step::End { offset, left });
        }
        if self.sealed {
            return Err(Broken {
                offset,
                what: "data after the sealing checkpoint".into(),
            });
        }
        match segment::parse_frame(self.bytes, self.at) {
            Parsed::Incomplete => Ok(Step::End { offset, left }),
            Parsed::Malformed(what) => Err(Broken {
                offset,
                what: format!("malformed frame: {what}"),
            }),
            Parsed::Frame(
                Frame::Record {
                    seq,
                    content_hash,
                    nonce,
                    ciphertext,
                },
                next,
            ) => {
                let expected = self.pos.next_seq;
                let flaw = (seq != expected).then(|| {
                    if seq < expected {
                        format!("seq {seq} repeats or goes back (expected {expected}): duplicated or reordered record")
                    } else {
                        format!("expected seq {expected}, found {seq}: records removed or reordered")
                    }
                });
                let (ciphertext_hash, leaf, head) = if self.skim {
                    ([0; 32], [0; 32], self.pos.head)
                } else {
                    let ciphertext_hash = segment::ciphertext_hash(nonce, ciphertext);
                    let leaf = segment::leaf(seq, &content_hash, &ciphertext_hash);
                    let head = segment::next_head(&self.pos.head, &leaf);
                    (ciphertext_hash, leaf, head)
                };
                self.pos = ChainPos {
                    next_seq: seq.max(expected.saturating_sub(1)).saturating_add(1),
                    head,
                };
                self.at = next;
                Ok(Step::Record(RecordFrame {
                    offset,
                    seq,
                    content_hash,
                    nonce,
                    ciphertext,
                    ciphertext_hash,
                    leaf,
                    head,
                    flaw,
                }))
            }
            Parsed::Frame(Frame::Checkpoint(cp), next) => {
                let last = self.pos.next_seq.saturating_sub(1);
                let flaw = if cp.seq != last {
                    Some(format!(
                        "checkpoint covers seq {} but the log is at {last}",
                        cp.seq
                    ))
                } else if !self.skim && cp.head != self.pos.head {
                    Some(
                        "chain head differs from the signed checkpoint: earlier records were changed"
                            .to_owned(),
                    )
                } else {
                    None
                };
                self.sealed = cp.sealed;
                self.at = next;
                Ok(Step::Checkpoint { offset, cp, flaw })
            }
        }
    }
}

/// Bytes [`walk_stored`] reads at a time; a longer frame is read whole (at most
/// [`segment::MAX_FRAME`]).
pub const WINDOW: usize = 4 << 20;

/// Why [`walk_stored`] stopped with an error.
#[derive(Debug)]
pub enum WalkError<E> {
    /// Reading the file failed.
    Read(crate::storage::ReadError),
    /// The function walking it did.
    Stopped(E),
}

/// What [`walk_stored`] walked of a segment file.
#[derive(Debug, Clone, Copy)]
pub struct Walked {
    /// The file's length (header included): as read to its end, or as it is when the
    /// walk stopped before.
    pub len: u64,
    /// The chain after the last frame walked.
    pub pos: ChainPos,
    /// Whether a sealing checkpoint was passed.
    pub sealed: bool,
}

/// Walks the frames of segment file `name`, whose header is `header`, reading it a
/// window of about [`WINDOW`] bytes at a time rather than whole (a segment is up to
/// 64 MiB). `f` gets every step as [`SegmentWalk::next`] gives it, with the walk (for
/// [`SegmentWalk::resync`] and [`SegmentWalk::skim`], which holds from window to
/// window), and says whether to go on. [`Step::End`] comes once, at
/// what is the end of the file when it is read, with `left` the bytes of an incomplete
/// frame there; a walk stops after an `End` or an `Err`.
pub fn walk_stored<E>(
    storage: &dyn crate::storage::Storage,
    name: &str,
    header: &SegmentHeader,
    f: impl FnMut(&mut SegmentWalk<'_>, Result<Step<'_>, Broken>) -> Result<bool, E>,
) -> Result<Walked, WalkError<E>> {
    walk_stored_by(storage, name, header, WINDOW, f)
}

/// [`walk_stored`] reading `window` bytes at a time (at least one).
pub fn walk_stored_by<E>(
    storage: &dyn crate::storage::Storage,
    name: &str,
    header: &SegmentHeader,
    window: usize,
    f: impl FnMut(&mut SegmentWalk<'_>, Result<Step<'_>, Broken>) -> Result<bool, E>,
) -> Result<Walked, WalkError<E>> {
    let start = (HEADER_LEN as u64, ChainPos::of_header(header));
    walk_stored_from(storage, name, start, window, f)
}

/// [`walk_stored_by`] from the frame at offset `start.0`, with the chain at `start.1`
/// there (a frame boundary a walk reached before, and where it stood then).
pub fn walk_stored_from<E>(
    storage: &dyn crate::storage::Storage,
    name: &str,
    (mut base, mut pos): (u64, ChainPos),
    window: usize,
    mut f: impl FnMut(&mut SegmentWalk<'_>, Result<Step<'_>, Broken>) -> Result<bool, E>,
) -> Result<Walked, WalkError<E>> {
    let window = window.max(1);
    let mut sealed = false;
    let mut skim = false;
    let mut want = window;
    loop {
        let bytes = storage.read_at(name, base, want).map_err(WalkError::Read)?;
        let at_eof = bytes.len() < want;
        let mut w = SegmentWalk::window_after(&bytes, base, pos, sealed);
        w.skim(skim);
        let walked = |w: &SegmentWalk<'_>| {
            let read = base + bytes.len() as u64;
            Walked {
                // Stopped before the end: the file goes on past this window.
                len: if at_eof {
                    read
                } else {
                    storage.len(name).unwrap_or(read).max(read)
                },
                pos: w.pos(),
                sealed: w.sealed(),
            }
        };
        loop {
            let step = w.next();
            let last = match &step {
                Ok(Step::End { .. }) if !at_eof => break,
                Ok(Step::End { .. }) | Err(_) => true,
                Ok(_) => false,
            };
            if !f(&mut w, step).map_err(WalkError::Stopped)? || last {
                return Ok(walked(&w));
            }
        }
        if w.offset() == base {
            // One frame longer than the window: read all of it next time.
            let longer = match bytes.get(..4) {
                Some(&[a, b, c, d]) => {
                    (4 + u32::from_be_bytes([a, b, c, d]) as usize).max(want.saturating_mul(2))
                }
                _ => want.saturating_mul(2),
            }
            .min(4 + segment::MAX_FRAME as usize);
            if longer <= want {
                // No whole frame within the longest a frame can be (the file changed
                // under the walk): what is there is an incomplete frame.
                let end = Step::End {
                    offset: base,
                    left: bytes.len(),
                };
                f(&mut w, Ok(end)).map_err(WalkError::Stopped)?;
                return Ok(walked(&w));
            }
            want = longer;
        } else {
            want = window;
        }
        base = w.offset();
        pos = w.pos();
        sealed = w.sealed();
        skim = w.skimming();
    }
}

/// A record opened: its salt, canonical bytes and decoded form.
#[derive(Debug)]
pub struct Opened {
    pub salt: [u8; SALT_LEN],
    pub canonical: Vec<u8>,
    pub record: Record,
}

/// Decrypts and checks a record frame of the segment whose header bytes are `hb`.
pub fn open_record(
    cipher: &Aes256Gcm,
    hb: &[u8; HEADER_LEN],
    seq: u64,
    content_hash: &Hash,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Opened, String> {
    let (salt, canonical) = segment::decrypt_record(cipher, hb, seq, nonce, ciphertext)
        .ok_or("record does not authenticate (record or segment header altered)")?;
    if segment::content_hash(&salt, &canonical) != *content_hash {
        return Err("content hash does not match the record".into());
    }
    let record = Record::decode(&canonical).map_err(|e| format!("record does not decode: {e}"))?;
    if record.seq.0 != seq {
        return Err(format!("record body says seq {}", record.seq.0));
    }
    Ok(Opened {
        salt,
        canonical,
        record,
    })
}

/// [`open_record`] for a walked frame.
pub fn open_frame(
    cipher: &Aes256Gcm,
    hb: &[u8; HEADER_LEN],
    f: &RecordFrame<'_>,
) -> Result<Opened, String> {
    open_record(cipher, hb, f.seq, &f.content_hash, f.nonce, f.ciphertext)
}
