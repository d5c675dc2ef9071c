//! What a power cut leaves of a file: the operations issued since the last
//! flush ([`PendingOp`]), a choice of which of them reached the media
//! ([`CrashState`]), and the file that choice leaves
//! ([`FaultStorage::crash_image`](super::FaultStorage::crash_image)).
//!
//! The media is modelled as a device that writes whole *pieces* — aligned
//! runs of `unit` bytes of the file (512 by default, [`TORN_SECTOR_SIZE`]) —
//! atomically, in any order between two flushes, and a page cache above it
//! that merges writes: a piece that reaches the media holds the file's bytes
//! as they stood right after the operation it belongs to, not only that
//! operation's bytes. So a write smaller than a piece persists together with
//! whatever earlier writes left in the rest of the piece (as the cache's read,
//! modify and write does), a piece always holds *some* version the file had,
//! and a write issued after another over the same piece may persist while
//! the earlier one does not.
//!
//! A 4096-byte sector of a 512e disk (512-byte logical sectors on 4096-byte
//! physical ones) tears in 512-byte pieces: [`CrashState::Scattered`] with a
//! `unit` of 512 may keep any of the eight pieces of one 4 KiB sector, not
//! only a prefix. What a format can promise over such a device is what its
//! checksums and its log give: a torn log entry is detected and ignored; a
//! payload sector written in place reads, 512 bytes at a time, old or new.

use alloc::vec::Vec;

use super::TORN_SECTOR_SIZE;

/// A mutating operation that completed but was not yet flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingOp {
    /// `bytes` written at `offset`.
    Write {
        /// File offset of the first byte.
        offset: u64,
        /// The bytes written.
        bytes: Vec<u8>,
    },
    /// The file truncated or extended (with zeros) to this length.
    SetLen(u64),
}

impl PendingOp {
    /// How many [`TORN_SECTOR_SIZE`] sectors (aligned to the file) the
    /// operation touches: the points at which it can tear. A `set_len` is
    /// one atomic step.
    pub fn sectors(&self) -> u64 {
        self.pieces(TORN_SECTOR_SIZE)
    }

    /// How many pieces of `unit` bytes (aligned to the file) the operation
    /// touches: the length of its flags in [`Persisted::Pieces`]. A
    /// `set_len` is one piece; an empty write has none.
    pub fn pieces(&self, unit: u64) -> u64 {
        match self.piece_span(unit) {
            Some((first, last)) => last - first + 1,
            None => u64::from(matches!(self, PendingOp::SetLen(_))),
        }
    }

    /// The first and last piece of `unit` bytes a write touches.
    fn piece_span(&self, unit: u64) -> Option<(u64, u64)> {
        match self {
            PendingOp::Write { offset, bytes } if !bytes.is_empty() => {
                let unit = unit.max(1);
                Some((offset / unit, (offset + bytes.len() as u64 - 1) / unit))
            }
            _ => None,
        }
    }

    /// Applies the first `sectors` sectors of the operation to `image`
    /// (all of it when `sectors` is at least [`PendingOp::sectors`]).
    pub(super) fn apply_prefix(&self, image: &mut Vec<u8>, sectors: u64) {
        match self {
            PendingOp::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                let cut = ((offset / TORN_SECTOR_SIZE).saturating_add(sectors)).saturating_mul(TORN_SECTOR_SIZE);
                let n = (end.min(cut).saturating_sub(*offset)) as usize;
                write_into(image, &bytes[..n], *offset);
            }
            PendingOp::SetLen(len) => {
                if sectors > 0 {
                    image.resize(*len as usize, 0);
                }
            }
        }
    }

    pub(super) fn apply(&self, image: &mut Vec<u8>) {
        self.apply_prefix(image, u64::MAX);
    }
}

/// How much of one unflushed operation a crash left on the media
/// ([`CrashState::Scattered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    /// None of it.
    Nothing,
    /// All of it.
    Whole,
    /// The pieces whose flag is set, in file order (missing flags count as
    /// unset); see [`PendingOp::pieces`]. A `set_len` has one piece.
    Pieces(Vec<bool>),
}

/// Which of the unflushed operations a crash left on the media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashState {
    /// All of them, in order: nothing lost.
    AllPending,
    /// None: every operation since the last flush lost.
    DurableOnly,
    /// The first `applied` in order, then the first `sectors` sectors of the
    /// next one (none when there is no next one).
    Torn {
        /// Unflushed operations applied whole.
        applied: usize,
        /// Sectors of the following operation applied.
        sectors: u64,
    },
    /// Exactly those whose flag is set (missing flags count as unset): a
    /// cache that reorders whole operations between barriers. The same as
    /// [`CrashState::Scattered`] with 512-byte pieces, each operation
    /// [`Whole`](Persisted::Whole) or [`Nothing`](Persisted::Nothing).
    Subset(Vec<bool>),
    /// Any subset of the operations, each persisted whole, not at all, or in
    /// any of its pieces of `unit` bytes: reordering and tears anywhere,
    /// such as a few 512-byte pieces of one 4096-byte physical sector
    /// (`unit` 512 on a 512e disk). Operations past the end of `ops` are
    /// lost. A piece holds the file's bytes as they stood right after its
    /// operation (see the [module documentation](self)).
    Scattered {
        /// The atomic piece, in bytes: a power of two, at least 1.
        unit: u64,
        /// For each unflushed operation in issue order, what persisted.
        ops: Vec<Persisted>,
    },
}

/// The file a crash in `state` leaves, from the `durable` image and the
/// `pending` operations since it.
pub(super) fn crash_image(durable: &[u8], pending: &[PendingOp], state: &CrashState) -> Vec<u8> {
    let mut image = durable.to_vec();
    match state {
        CrashState::AllPending => pending.iter().for_each(|op| op.apply(&mut image)),
        CrashState::DurableOnly => {}
        CrashState::Torn { applied, sectors } => {
            pending.iter().take(*applied).for_each(|op| op.apply(&mut image));
            if let Some(op) = pending.get(*applied) {
                op.apply_prefix(&mut image, *sectors);
            }
        }
        CrashState::Subset(flags) => {
            let kept = |i: usize, _: u64| flags.get(i).copied().unwrap_or(false);
            scatter(&mut image, durable, pending, TORN_SECTOR_SIZE, kept);
        }
        CrashState::Scattered { unit, ops } => {
            let kept = |i: usize, piece: u64| match ops.get(i) {
                None | Some(Persisted::Nothing) => false,
                Some(Persisted::Whole) => true,
                Some(Persisted::Pieces(flags)) => flags.get(piece as usize).copied().unwrap_or(false),
            };
            scatter(&mut image, durable, pending, (*unit).max(1), kept);
        }
    }
    image
}

/// Applies to `image` (a copy of `durable`) the pieces of `pending` for
/// which `kept(operation, piece)` holds, in issue order, each piece with the
/// file's content right after its operation.
fn scatter(image: &mut Vec<u8>, durable: &[u8], pending: &[PendingOp], unit: u64, kept: impl Fn(usize, u64) -> bool) {
    for (i, op) in pending.iter().enumerate() {
        match op {
            PendingOp::SetLen(len) => {
                if kept(i, 0) {
                    image.resize(*len as usize, 0);
                }
            }
            PendingOp::Write { offset, bytes } => {
                let Some((first, last)) = op.piece_span(unit) else { continue };
                let end = offset + bytes.len() as u64;
                for p in first..=last {
                    if !kept(i, p - first) {
                        continue;
                    }
                    let (lo, hi) = (p * unit, (p + 1) * unit);
                    if *offset <= lo && hi <= end {
                        write_into(image, &bytes[(lo - offset) as usize..(hi - offset) as usize], lo);
                    } else {
                        let piece = content_after(durable, &pending[..=i], lo, hi);
                        write_into(image, &piece, lo);
                        // The sector goes to the media whole: past the end
                        // the file had then, it holds zeros.
                        let (from, to) = (lo as usize + piece.len(), (hi as usize).min(image.len()));
                        if from < to {
                            image[from..to].fill(0);
                        }
                    }
                }
            }
        }
    }
}

/// The bytes of `[lo, hi)` (cut at the end of the file) after `ops` applied
/// in order to `durable`.
fn content_after(durable: &[u8], ops: &[PendingOp], lo: u64, hi: u64) -> Vec<u8> {
    let mut piece = alloc::vec![0u8; (hi - lo) as usize];
    let mut len = durable.len() as u64;
    if lo < len {
        let n = (len.min(hi) - lo) as usize;
        piece[..n].copy_from_slice(&durable[lo as usize..lo as usize + n]);
    }
    for op in ops {
        match op {
            PendingOp::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                let (a, b) = ((*offset).max(lo), end.min(hi));
                if a < b {
                    piece[(a - lo) as usize..(b - lo) as usize]
                        .copy_from_slice(&bytes[(a - offset) as usize..(b - offset) as usize]);
                }
                len = len.max(end);
            }
            PendingOp::SetLen(l) => {
                if *l < hi {
                    piece[(l.max(&lo) - lo) as usize..].fill(0);
                }
                len = *l;
            }
        }
    }
    piece.truncate(len.clamp(lo, hi).saturating_sub(lo) as usize);
    piece
}

pub(super) fn write_into(image: &mut Vec<u8>, buf: &[u8], offset: u64) {
    let start = offset as usize;
    let end = start + buf.len();
    if end > image.len() {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(offset: u64, byte: u8, len: usize) -> PendingOp {
        PendingOp::Write { offset, bytes: alloc::vec![byte; len] }
    }

    #[test]
    fn pieces_count_the_aligned_runs_an_operation_touches() {
        assert_eq!(write(100, 1, 1200).pieces(512), 3);
        assert_eq!(write(100, 1, 1200).pieces(4096), 1);
        assert_eq!(write(4095, 1, 2).pieces(4096), 2);
        assert_eq!(write(0, 1, 0).pieces(512), 0);
        assert_eq!(PendingOp::SetLen(7).pieces(512), 1);
        assert_eq!(write(512, 1, 512).sectors(), 1);
    }

    #[test]
    fn a_4k_sector_keeps_any_of_its_512_byte_pieces() {
        let durable = alloc::vec![0u8; 8192];
        let pending = [write(0, 1, 8192)];
        // Pieces 1, 3 and 6 of the first 4 KiB sector, and all of the second.
        let mut flags = alloc::vec![false; 16];
        for p in [1, 3, 6, 8, 9, 10, 11, 12, 13, 14, 15] {
            flags[p] = true;
        }
        let state = CrashState::Scattered { unit: 512, ops: alloc::vec![Persisted::Pieces(flags)] };
        let image = crash_image(&durable, &pending, &state);
        for piece in 0..16 {
            let want = u8::from([1, 3, 6].contains(&piece) || piece >= 8);
            assert!(image[piece * 512..(piece + 1) * 512].iter().all(|&b| b == want), "piece {piece}");
        }
        // With 4 KiB pieces the same write tears only between its sectors.
        let state = CrashState::Scattered { unit: 4096, ops: alloc::vec![Persisted::Pieces(alloc::vec![false, true])] };
        let image = crash_image(&durable, &pending, &state);
        assert_eq!((image[4095], image[4096]), (0, 1));
    }

    #[test]
    fn a_later_write_may_persist_without_an_earlier_one() {
        let durable = alloc::vec![0u8; 2048];
        let pending = [write(0, 1, 1024), write(512, 2, 1024), write(1536, 3, 100)];
        let state = CrashState::Scattered {
            unit: 512,
            ops: alloc::vec![Persisted::Nothing, Persisted::Pieces(alloc::vec![true, false]), Persisted::Whole],
        };
        let image = crash_image(&durable, &pending, &state);
        assert!(image[..512].iter().all(|&b| b == 0), "the first write is lost");
        assert!(image[512..1024].iter().all(|&b| b == 2), "the second write's first piece persisted");
        // The third write's piece holds what the file held after it: the
        // second write's bytes around the third's (a page cache merged them).
        assert!(image[1536..1636].iter().all(|&b| b == 3));
        assert!(image[1636..2048].iter().all(|&b| b == 0));
        assert!(image[1024..1536].iter().all(|&b| b == 0), "the second write's second piece is lost");
        // Issue order: where both persist, the later one wins.
        let all = CrashState::Subset(alloc::vec![true, true, true]);
        assert_eq!(crash_image(&durable, &pending, &all), crash_image(&durable, &pending, &CrashState::AllPending));
    }

    #[test]
    fn a_sub_piece_write_persists_with_the_earlier_writes_in_its_piece() {
        let durable = alloc::vec![0u8; 512];
        let pending = [write(0, 1, 512), write(100, 2, 10)];
        let image = crash_image(&durable, &pending, &CrashState::Subset(alloc::vec![false, true]));
        assert_eq!((image[0], image[100], image[110]), (1, 2, 1));
    }

    #[test]
    fn set_len_persists_or_not_and_later_pieces_see_it() {
        let durable = alloc::vec![7u8; 1024];
        let pending = [PendingOp::SetLen(100), write(200, 5, 10)];
        let image = crash_image(&durable, &pending, &CrashState::Subset(alloc::vec![false, true]));
        // The write's piece holds the file after the truncation: its first
        // 100 bytes, zeros up to the write, the file ending with it (zeros
        // to the end of the sector); the lost truncation leaves the old
        // length and the old bytes after the piece.
        assert_eq!(image.len(), 1024);
        assert!(image[..100].iter().all(|&b| b == 7) && image[100..200].iter().all(|&b| b == 0));
        assert!(image[200..210].iter().all(|&b| b == 5) && image[210..512].iter().all(|&b| b == 0));
        assert_eq!(image[512], 7);
        let image = crash_image(&durable, &pending, &CrashState::Subset(alloc::vec![true, false]));
        assert_eq!(image, [7u8; 100]);
    }
}
