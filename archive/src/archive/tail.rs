//! [`ArchiveReader::tail`]: following the log as it grows, reading only new bytes.

use crate::log;
use crate::segment::{self, Hash, SegmentHeader, HEADER_LEN};
use crate::walk::{self, ChainPos, SegmentWalk, Step};

use super::*;

/// Where [`ArchiveReader::tail`] left off, so the next call reads only the
/// bytes appended since. Start one with [`TailCursor::new`] (every record) or
/// [`TailCursor::from_seq`]; keep it between calls.
#[derive(Debug, Clone, Default)]
pub struct TailCursor {
    /// Records below this seq are read (for the chain) but not handed over.
    from: u64,
    /// `None` until the first segment with a complete header has been found.
    at: Option<TailPos>,
    /// The chain head the record before `from` must have ([`TailCursor::resume`]);
    /// cleared once checked.
    expect: Option<Hash>,
}

#[derive(Debug, Clone)]
struct TailPos {
    segment: u64,
    /// The first byte not yet consumed: the start of the next frame.
    offset: u64,
    /// The seq the next record frame must carry.
    next_seq: u64,
    /// The chain head after the last record consumed.
    head: Hash,
    /// Nothing more will be written to `segment`; the next bytes are in a later one.
    done: bool,
}

impl TailCursor {
    /// A cursor that hands over every record, from seq 1.
    pub fn new() -> TailCursor {
        TailCursor::from_seq(1)
    }

    /// A cursor that hands over records from seq `from` on. The first call
    /// still reads the segment holding `from` from its start, to follow the chain.
    pub fn from_seq(from: u64) -> TailCursor {
        TailCursor {
            from,
            at: None,
            expect: None,
        }
    }

    /// A cursor that goes on from a state derived from records `..from` whose last had
    /// chain head `head`: it hands over records from seq `from` on, once it has found
    /// that the log still holds that very record. A log cut back below `from`, or a
    /// chain that differs there, fails with [`ReadError::Diverged`] before anything is
    /// handed over: the saved state describes records this log does not have.
    pub fn resume(from: u64, head: Hash) -> TailCursor {
        TailCursor {
            from,
            at: None,
            expect: (from > 1).then_some(head),
        }
    }

    /// The seq of the next record the cursor will hand over.
    pub fn next_seq(&self) -> u64 {
        match &self.at {
            Some(p) => p.next_seq.max(self.from),
            None => self.from.max(1),
        }
    }

    /// The chain head after the last record read, once reading has begun.
    /// Exact relative to the first segment read: that segment's header gives
    /// the starting head (every record of it authenticates the header).
    pub fn head(&self) -> Option<Hash> {
        self.at.as_ref().map(|p| p.head)
    }
}

/// What [`ArchiveReader::tail`] reads at first from the active segment;
/// small, as most calls find nothing new. Doubles while chunks come back full.
const TAIL_FIRST_READ: usize = 64 << 10;
const TAIL_MAX_READ: usize = 4 << 20;

impl ArchiveReader {
    /// Calls `f` with every record appended since the last call with this
    /// cursor, in seq order, each exactly once. Reads only the bytes after the
    /// cursor, follows into the next segment after a segment's sealing
    /// checkpoint, and stops without error at an incomplete frame (a write in
    /// progress); the next call picks that record up once it is whole.
    ///
    /// Every record is authenticated and decrypted (unless its segment key was
    /// destroyed: then `salt` and `record` are `None`), and the chain is
    /// followed: seqs must be consecutive, each checkpoint must state the head
    /// computed so far, and each segment's header must continue the head and
    /// seq of the previous one. A break is [`ReadError::Corrupt`].
    ///
    /// The cursor moves past a record only once `f` has accepted it: after an
    /// error (from `f` or reading) the next call offers that record again, and
    /// everything `f` accepted before the error is the caller's to keep.
    pub fn tail<E: From<ReadError>>(
        &self,
        cursor: &mut TailCursor,
        f: impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        self.tail_at_most(cursor, usize::MAX, f).map(drop)
    }

    /// [`ArchiveReader::tail`], handing over at most `max` records: for a reader that
    /// follows in slices, letting go of whatever it holds between them. Returns how many
    /// were handed over; fewer than `max` means everything written so far is read. The
    /// next call goes on right after the last record handed over.
    pub fn tail_at_most<E: From<ReadError>>(
        &self,
        cursor: &mut TailCursor,
        max: usize,
        mut f: impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<usize, E> {
        let from = cursor.from;
        let mut left = max;
        loop {
            if left == 0 {
                // Records are handed over only once `expect` is settled, so there is no
                // divergence left to report.
                return Ok(max);
            }
            if cursor.at.is_none() {
                cursor.at = self.tail_start(from)?;
                if let (Some(pos), Some(want)) = (&cursor.at, cursor.expect) {
                    // The segment begins at `from`: its header states the head before.
                    if pos.next_seq == from {
                        check_continues(from, pos.head, want)?;
                        cursor.expect = None;
                    }
                }
            }
            let Some(pos) = cursor.at.as_mut() else {
                return match cursor.expect {
                    Some(_) => Err(diverged(from, "the log has no segment").into()),
                    None => Ok(max - left),
                };
            };
            if !pos.done {
                self.tail_segment(pos, from, &mut cursor.expect, &mut left, &mut f)?;
                if left == 0 {
                    return Ok(max);
                }
            }
            if !pos.done {
                return match cursor.expect {
                    // Everything written so far is read, and the record before `from`
                    // is not among it.
                    Some(_) => Err(diverged(from, "the log ends before it").into()),
                    None => Ok(max - left),
                };
            }
            match self.tail_next_segment(pos)? {
                Some(next) => {
                    *pos = next;
                    if let Some(want) = cursor.expect {
                        if pos.next_seq == from {
                            check_continues(from, pos.head, want)?;
                            cursor.expect = None;
                        }
                    }
                }
                None => {
                    return match cursor.expect {
                        Some(_) => Err(diverged(from, "the log ends before it").into()),
                        None => Ok(max - left),
                    }
                }
            }
        }
    }

    /// The segment a cursor starting at seq `from` reads first (as in
    /// [`ArchiveReader::scan`]), or `None` while no segment has a whole header.
    fn tail_start(&self, from: u64) -> Result<Option<TailPos>, ReadError> {
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        let mut start = None;
        for id in ids {
            match self.tail_enter(id)? {
                Some(pos) if start.is_none() || pos.next_seq <= from => start = Some(pos),
                _ => break,
            }
        }
        Ok(start)
    }

    /// A cursor position at the first frame of segment `id`, or `None` while
    /// its header is still being written.
    fn tail_enter(&self, id: u64) -> Result<Option<TailPos>, ReadError> {
        let hb = self
            .storage
            .read_at(&segment::segment_name(id), 0, HEADER_LEN)?;
        if hb.len() < HEADER_LEN {
            return Ok(None);
        }
        let corrupt = |what: String| ReadError::Corrupt {
            segment: id,
            offset: 0,
            what,
        };
        let header = SegmentHeader::decode(&hb).map_err(corrupt)?;
        if let Some(flaw) = walk::header_flaws(&header, id, &self.meta.archive_id, None)
            .into_iter()
            .next()
        {
            return Err(corrupt(flaw));
        }
        Ok(Some(TailPos {
            segment: id,
            offset: HEADER_LEN as u64,
            next_seq: header.first_seq,
            head: header.prev_head,
            done: false,
        }))
    }

    /// The segment after a finished one, checked to continue its chain, or
    /// `None` if the writer has not started it yet.
    fn tail_next_segment(&self, pos: &TailPos) -> Result<Option<TailPos>, ReadError> {
        let ids = log::segment_ids(self.storage.as_ref()).map_err(|e| ReadError::Log(e.into()))?;
        // Ids may skip numbers (a crash can leave a key file for an unused id).
        let Some(&id) = ids.iter().find(|&&id| id > pos.segment) else {
            return Ok(None);
        };
        let Some(next) = self.tail_enter(id)? else {
            return Ok(None);
        };
        if next.next_seq != pos.next_seq || next.head != pos.head {
            return Err(ReadError::Corrupt {
                segment: id,
                offset: 0,
                what: format!(
                    "header does not continue segment {} (first seq {}, expected {})",
                    pos.segment, next.next_seq, pos.next_seq
                ),
            });
        }
        Ok(Some(next))
    }

    /// Consumes every whole frame of `pos.segment` after `pos.offset`, marking
    /// the segment done at its sealing checkpoint, or stops once `left` records have
    /// been handed over (counting it down).
    fn tail_segment<E: From<ReadError>>(
        &self,
        pos: &mut TailPos,
        from: u64,
        expect: &mut Option<Hash>,
        left: &mut usize,
        f: &mut impl FnMut(ChainEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let id = pos.segment;
        let name = segment::segment_name(id);
        let (hb, cipher) = self.segment(id)?;
        let mut want = TAIL_FIRST_READ;
        // Set once the file was seen sealed (read-only): it can no longer grow.
        let mut sealed_file = false;
        loop {
            let base = pos.offset;
            let bytes = self
                .storage
                .read_at(&name, base, want)
                .map_err(ReadError::from)?;
            let corrupt = |offset: u64, what: String| ReadError::Corrupt {
                segment: id,
                offset,
                what,
            };
            let mut w = SegmentWalk::window(
                &bytes,
                base,
                ChainPos {
                    next_seq: pos.next_seq,
                    head: pos.head,
                },
            );
            loop {
                let step = w.next().map_err(|b| corrupt(b.offset, b.what))?;
                match step {
                    Step::End { .. } => break,
                    Step::Checkpoint { offset, cp, flaw } => {
                        if let Some(flaw) = flaw {
                            return Err(corrupt(offset, flaw).into());
                        }
                        pos.offset = w.offset();
                        if cp.sealed {
                            pos.done = true;
                            return Ok(());
                        }
                    }
                    Step::Record(r) => {
                        if let Some(flaw) = r.flaw {
                            return Err(corrupt(r.offset, flaw).into());
                        }
                        if let Some(want) = *expect {
                            if r.seq + 1 == from {
                                check_continues(from, r.head, want)?;
                                *expect = None;
                            } else if r.seq >= from {
                                return Err(diverged(from, "the log skips it").into());
                            }
                        }
                        let handed = r.seq >= from;
                        if handed {
                            f(ChainEntry::of_frame(id, &r, cipher.as_ref(), &hb)?)?;
                        }
                        pos.next_seq = w.pos().next_seq;
                        pos.head = r.head;
                        pos.offset = w.offset();
                        if handed {
                            *left = left.saturating_sub(1);
                            if *left == 0 {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            let at = (pos.offset - base) as usize;
            if bytes.len() < want {
                // The end of what is written so far.
                if sealed_file {
                    // A sealed file without a sealing checkpoint (the writer
                    // always writes one; `verify` reports its absence): like
                    // `scan`, go on to the next segment.
                    pos.done = true;
                    return Ok(());
                }
                if !self.storage.is_sealed(&name).map_err(ReadError::from)? {
                    return Ok(());
                }
                // Sealed since the read above: read once more, as frames may
                // have landed between that read and the sealing.
                sealed_file = true;
                want = TAIL_FIRST_READ;
            } else if at == 0 {
                // One frame longer than the read: read all of it next time.
                want = match bytes.get(..4) {
                    Some(&[a, b, c, d]) => {
                        (4 + u32::from_be_bytes([a, b, c, d]) as usize).max(want * 2)
                    }
                    _ => want * 2,
                };
            } else {
                want = (want * 2).min(TAIL_MAX_READ);
            }
        }
    }
}

/// [`ReadError::Diverged`] at `from` for reason `what`.
fn diverged(from: u64, what: &str) -> ReadError {
    ReadError::Diverged {
        seq: from.saturating_sub(1),
        what: what.to_string(),
    }
}

/// Whether the head after record `from - 1` is the one a saved state was made from.
fn check_continues(from: u64, found: Hash, want: Hash) -> Result<(), ReadError> {
    if found == want {
        Ok(())
    } else {
        Err(diverged(from, "its chain head differs"))
    }
}
