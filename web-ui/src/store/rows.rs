//! A chain's rows, in seq order, read and changed by position.

use super::Row;

/// A row's fixed size in the saved state.
pub(super) const ROW_BYTES: usize = 8 * 5 + 4 * 5 + 2;

impl Row {
    /// The row in [`ROW_BYTES`] bytes, little-endian, fields in declaration order.
    pub(super) fn to_bytes(self) -> [u8; ROW_BYTES] {
        let mut b = [0u8; ROW_BYTES];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            b[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.seq.to_le_bytes());
        put(&self.time.to_le_bytes());
        put(&self.place.to_le_bytes());
        put(&self.link.to_le_bytes());
        put(&self.next.to_le_bytes());
        put(&self.from.to_le_bytes());
        put(&self.to.to_le_bytes());
        put(&self.rules.to_le_bytes());
        put(&self.kind.to_le_bytes());
        put(&self.extra.to_le_bytes());
        put(&self.bits.to_le_bytes());
        b
    }

    /// Reads [`Row::to_bytes`] back.
    pub(super) fn from_bytes(b: &[u8; ROW_BYTES]) -> Row {
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let w8 = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            a
        };
        let w4 = |s: &[u8]| {
            let mut a = [0u8; 4];
            a.copy_from_slice(s);
            a
        };
        Row {
            seq: u64::from_le_bytes(w8(take(8))),
            time: i64::from_le_bytes(w8(take(8))),
            place: u64::from_le_bytes(w8(take(8))),
            link: u64::from_le_bytes(w8(take(8))),
            next: u64::from_le_bytes(w8(take(8))),
            from: u32::from_le_bytes(w4(take(4))),
            to: u32::from_le_bytes(w4(take(4))),
            rules: u32::from_le_bytes(w4(take(4))),
            kind: u32::from_le_bytes(w4(take(4))),
            extra: u32::from_le_bytes(w4(take(4))),
            bits: u16::from_le_bytes([b[ROW_BYTES - 2], b[ROW_BYTES - 1]]),
        }
    }
}

/// One chain's rows. Rows are handed out by value: where they are kept is this type's
/// business alone.
#[derive(Default)]
pub(super) struct Rows {
    rows: Vec<Row>,
}

impl Rows {
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn get(&self, i: usize) -> Option<Row> {
        self.rows.get(i).copied()
    }

    pub(super) fn first(&self) -> Option<Row> {
        self.get(0)
    }

    pub(super) fn push(&mut self, r: Row) {
        self.rows.push(r);
    }

    /// Changes row `i` with `f`; false when there is no row `i`.
    pub(super) fn update(&mut self, i: usize, f: impl FnOnce(&mut Row)) -> bool {
        match self.rows.get_mut(i) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }

    /// Changes every row with `f`, in order.
    pub(super) fn update_all(&mut self, f: impl FnMut(&mut Row)) {
        self.rows.iter_mut().for_each(f);
    }

    /// Keeps the rows `keep` says yes to, in order.
    pub(super) fn retain(&mut self, keep: impl FnMut(&Row) -> bool) {
        self.rows.retain(keep);
    }

    /// Moves the rows out, leaving none.
    pub(super) fn take(&mut self) -> Rows {
        std::mem::take(self)
    }

    /// Every row, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Row> + '_ {
        self.rows.iter().copied()
    }
}
