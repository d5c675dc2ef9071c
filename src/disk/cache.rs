//! A shared cache of sector bitmaps for the read path.
//!
//! Reads of partially present blocks need a few bitmap bytes; fetching them
//! from the file on every request costs a system call per block per level of
//! a chain. With `std` the committed bitmaps are cached, one write-once slot
//! per bitmap block, bounded in bytes. Without `std` there is no such cell
//! to share, and bitmaps are read per request. Uncommitted bitmap pages are
//! not cached: the disk overlays them, and commits clear the cache.
//!
//! A sector bitmap block is 1 MiB on disk, but only the slices of blocks
//! that hold something are non-zero. The cache keeps just those slices, side
//! by side ([`ChunkBitmaps`]), and a 64-bit summary per block: in a chain
//! every level's bitmaps are consulted at random, and the summaries stay in
//! the processor's cache where the bitmap bytes cost a cache miss per level
//! (measured: most of a depth-8 read's own time went to that one load).

use alloc::borrow::Cow;
use alloc::vec::Vec;

use crate::error::Result;

/// Slot of a block whose bitmap slice is all zeros.
const NONE: u32 = u32::MAX;

/// Zeros to lend for an all-zero slice: a block's bitmap slice is at most
/// 256 MiB / 512 / 8 bytes.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Every sector of the piece is present.
const PRESENT: u64 = 0b01;
/// No sector of the piece is present.
const ABSENT: u64 = 0b10;
/// Some are, some are not.
const MIXED: u64 = 0b11;
/// Pieces per block, at most (a slice is at least 1 MiB / 4096 / 8 = 32
/// bytes, and a power of two).
const PIECES: usize = 32;

/// Bytes per piece of a `per_block`-byte slice: at most [`PIECES`] pieces
/// cover it, whatever its length.
fn piece_bytes(per_block: usize) -> usize {
    per_block.div_ceil(PIECES)
}

/// The non-zero per-block slices of one sector bitmap block.
#[derive(Clone)]
pub(crate) struct ChunkBitmaps {
    per_block: usize,
    /// Per payload block of the chunk: where its slice starts in `bytes`, or
    /// [`NONE`].
    slots: Vec<u32>,
    bytes: Vec<u8>,
    /// Per payload block: 32 pieces of its slice, two bits each
    /// ([`PRESENT`], [`ABSENT`] or [`MIXED`]). Reads inside uniform pieces
    /// are answered from these 8 bytes rather than from the slice. (Only the
    /// `std` cache keeps summaries to consult.)
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pieces: Vec<u64>,
}

impl ChunkBitmaps {
    /// Compacts a whole bitmap block whose blocks have `per_block`-byte slices.
    pub(crate) fn compact(raw: &[u8], per_block: usize) -> ChunkBitmaps {
        let per_block = per_block.clamp(1, ZEROS.len());
        let mut slots = Vec::with_capacity(raw.len() / per_block);
        let mut bytes = Vec::new();
        let mut pieces = Vec::with_capacity(raw.len() / per_block);
        let piece_bytes = piece_bytes(per_block);
        for slice in raw.chunks_exact(per_block) {
            if slice.iter().all(|&b| b == 0) {
                slots.push(NONE);
                pieces.push(0);
            } else {
                slots.push(bytes.len() as u32);
                bytes.extend_from_slice(slice);
                let mut word = 0u64;
                for (i, piece) in slice.chunks(piece_bytes).enumerate() {
                    let state = if piece.iter().all(|&b| b == 0xFF) {
                        PRESENT
                    } else if piece.iter().all(|&b| b == 0) {
                        ABSENT
                    } else {
                        MIXED
                    };
                    word |= state << (2 * i);
                }
                pieces.push(word);
            }
        }
        ChunkBitmaps { per_block, slots, bytes, pieces }
    }

    /// What the cache counts for it, in bytes.
    #[cfg(feature = "std")]
    fn cost(&self) -> usize {
        self.bytes.len() + self.slots.len() * 12
    }

    /// `len` bytes at byte `rel` of the bitmap block, which must lie inside
    /// one block's slice.
    pub(crate) fn bytes(&self, rel: usize, len: usize) -> &[u8] {
        let (index, within) = (rel / self.per_block, rel % self.per_block);
        let len = len.min(self.per_block - within);
        match self.slots.get(index) {
            Some(&at) if at != NONE => &self.bytes[at as usize + within..at as usize + within + len],
            _ => &ZEROS[..len],
        }
    }

    /// Whether bitmap bytes `lo..=hi` of block `index` (a range inside its
    /// slice) are all ones (`Some(true)`) or all zeros (`Some(false)`), told
    /// from the piece summary; `None` when a piece is mixed (look at the
    /// bytes).
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn uniform(&self, index: usize, lo: usize, hi: usize) -> Option<bool> {
        let slot = *self.slots.get(index)?;
        if slot == NONE {
            return Some(false);
        }
        let word = *self.pieces.get(index)?;
        let piece_bytes = piece_bytes(self.per_block);
        let (first, last) = (lo / piece_bytes, hi / piece_bytes);
        let state = (word >> (2 * first)) & 0b11;
        if state == MIXED || (first..=last).any(|p| (word >> (2 * p)) & 0b11 != state) {
            return None;
        }
        Some(state == PRESENT)
    }
}

/// Bytes of compacted bitmaps the cache holds at most; past that, bitmaps
/// are read from the file per request.
#[cfg(feature = "std")]
const MAX_BYTES: usize = 256 << 20;

/// One slot per sector bitmap block (chunk), filled on first use and emptied
/// only by [`BitmapCache::reset`] (which needs `&mut`): a hit is an index and
/// an atomic load, with no lock and no reference count, so readers on many
/// threads never write to a shared cache line.
#[derive(Default)]
pub(crate) struct BitmapCache {
    #[cfg(feature = "std")]
    chunks: Vec<std::sync::OnceLock<ChunkBitmaps>>,
    #[cfg(feature = "std")]
    bytes: core::sync::atomic::AtomicUsize,
    /// [`MAX_BYTES`], or less in tests.
    #[cfg(feature = "std")]
    max_bytes: usize,
}

impl BitmapCache {
    /// A cache for a disk of geometry `g` (only differencing disks read
    /// sector bitmaps).
    pub(crate) fn for_geometry(g: &crate::format::bat::BatGeometry) -> BitmapCache {
        BitmapCache::new(if g.has_parent { g.sector_bitmap_blocks } else { 0 })
    }

    /// A cache for a disk with `chunks` sector bitmap blocks.
    fn new(chunks: u64) -> BitmapCache {
        #[cfg(feature = "std")]
        {
            BitmapCache {
                chunks: (0..chunks).map(|_| std::sync::OnceLock::new()).collect(),
                bytes: Default::default(),
                max_bytes: MAX_BYTES,
            }
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = chunks;
            BitmapCache {}
        }
    }

    /// The committed bitmaps of chunk `chunk`, loaded by `load` on a miss.
    /// Without `std`, or once the cache is full, every call loads.
    pub(crate) fn get(&self, chunk: u64, load: impl FnOnce() -> Result<ChunkBitmaps>) -> Result<Cow<'_, ChunkBitmaps>> {
        #[cfg(feature = "std")]
        if let Some(slot) = usize::try_from(chunk).ok().and_then(|c| self.chunks.get(c)) {
            if let Some(b) = slot.get() {
                return Ok(Cow::Borrowed(b));
            }
            use core::sync::atomic::Ordering;
            let loaded = load()?;
            let size = loaded.cost();
            if self.bytes.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                return Ok(Cow::Owned(loaded));
            }
            // Another reader may have filled the slot meanwhile; either copy
            // is the same committed bitmap.
            return Ok(Cow::Borrowed(slot.get_or_init(|| loaded)));
        }
        let _ = chunk;
        Ok(Cow::Owned(load()?))
    }

    /// [`ChunkBitmaps::uniform`] of chunk `chunk` when it is cached.
    pub(crate) fn uniform(&self, chunk: u64, index: usize, lo: usize, hi: usize) -> Option<bool> {
        #[cfg(feature = "std")]
        {
            let c = self.chunks.get(usize::try_from(chunk).ok()?)?.get()?;
            c.uniform(index, lo, hi)
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = (chunk, index, lo, hi);
            None
        }
    }

    /// Forgets chunk `chunk` (its bitmap changed in the file while cached).
    #[cfg(feature = "std")]
    pub(crate) fn forget(&mut self, chunk: u64) {
        if let Some(slot) = usize::try_from(chunk).ok().and_then(|c| self.chunks.get_mut(c)) {
            if let Some(gone) = slot.take() {
                *self.bytes.get_mut() -= gone.cost();
            }
        }
    }

    /// Forgets everything (after metadata reached the file), sized for
    /// geometry `g`.
    pub(crate) fn reset(&mut self, g: &crate::format::bat::BatGeometry) {
        *self = BitmapCache::for_geometry(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keeps_non_zero_slices_and_lends_zeros() {
        let mut raw = alloc::vec![0u8; 4 * 8];
        raw[8..16].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        raw[31] = 0x80;
        let c = ChunkBitmaps::compact(&raw, 8);
        assert_eq!(c.bytes.len(), 16);
        for rel in 0..raw.len() {
            let len = 8 - rel % 8;
            assert_eq!(c.bytes(rel, len), &raw[rel..rel + len], "at {rel}");
            // Asked for more: the rest of that block's slice, no more.
            assert_eq!(c.bytes(rel, 100), &raw[rel..rel + len], "at {rel}, long");
            assert_eq!(c.bytes(rel, 1), &raw[rel..rel + 1], "at {rel}, one");
        }
    }

    /// Checks `uniform` on every range of every block of `raw` against the
    /// bytes: it may decline (None) but never contradict, and blocks `0` and
    /// `1` (empty and full) are always answered.
    fn check_uniform(raw: &[u8], per: usize) -> ChunkBitmaps {
        let c = ChunkBitmaps::compact(raw, per);
        for index in 0..raw.len() / per {
            for lo in 0..per {
                for hi in lo..per {
                    let bytes = &raw[index * per + lo..=index * per + hi];
                    let truth = if bytes.iter().all(|&b| b == 0xFF) {
                        Some(true)
                    } else if bytes.iter().all(|&b| b == 0) {
                        Some(false)
                    } else {
                        None
                    };
                    let said = c.uniform(index, lo, hi);
                    // The summary may decline (None) but never contradict.
                    assert!(said.is_none() || said == truth, "block {index} {lo}..={hi}: {said:?} vs {truth:?}");
                    if index < 2 {
                        assert_eq!(said, truth);
                    }
                }
            }
        }
        c
    }

    #[test]
    fn uniform_answers_only_what_the_bytes_say() {
        // 64-byte slices: 2-byte pieces. Block 0 empty, block 1 full, block 2
        // a mix (first half full, one odd byte in the second half).
        let mut raw = alloc::vec![0u8; 3 * 64];
        raw[64..128].fill(0xFF);
        raw[128..160].fill(0xFF);
        raw[170] = 0x01;
        let c = check_uniform(&raw, 64);
        assert_eq!(c.uniform(2, 0, 31), Some(true));
        assert_eq!(c.uniform(2, 44, 63), Some(false));
        assert_eq!(c.uniform(2, 40, 43), None);
        // The smallest slice (32 bytes, one per piece) and one that is not a
        // multiple of the piece count: every byte is still summarised.
        for per in [32, 40, 33] {
            let mut raw = alloc::vec![0u8; 3 * per];
            raw[per..2 * per].fill(0xFF);
            raw[2 * per..2 * per + per / 2].fill(0xFF);
            raw[3 * per - 1] = 0x10;
            let c = check_uniform(&raw, per);
            assert_eq!(c.uniform(2, per - 1, per - 1), None, "slice {per}");
            assert_eq!(c.uniform(2, 0, 0), Some(true), "slice {per}");
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn a_chunk_is_loaded_once_and_kept() {
        // A differencing disk of 3 chunks (1 MiB blocks, 512-byte sectors:
        // 4 GiB per chunk) has a slot for each; a disk without a parent none.
        let g = |parent| crate::format::bat::BatGeometry::new(1 << 20, 512, 9 << 30, parent).unwrap();
        assert_eq!(BitmapCache::for_geometry(&g(true)).chunks.len(), 3);
        assert_eq!(BitmapCache::for_geometry(&g(false)).chunks.len(), 0);
        assert_eq!(BitmapCache::for_geometry(&g(true)).max_bytes, 256 << 20);
        let cache = BitmapCache::for_geometry(&g(true));
        let loads = core::cell::Cell::new(0);
        let raw = [0xFFu8; 64];
        let load = || {
            loads.set(loads.get() + 1);
            Ok(ChunkBitmaps::compact(&raw, 32))
        };
        for _ in 0..3 {
            assert_eq!(cache.get(1, load).unwrap().bytes(32, 4), &[0xFF; 4]);
        }
        assert_eq!(loads.get(), 1, "later reads come from the cache");
        assert_eq!(cache.uniform(1, 1, 0, 31), Some(true));
        assert_eq!(cache.uniform(0, 1, 0, 31), None, "chunk 0 was never loaded");
        // Past the last chunk: loaded each time, never kept.
        for _ in 0..2 {
            cache.get(5, load).unwrap();
        }
        assert_eq!(loads.get(), 3);
    }

    #[cfg(feature = "std")]
    #[test]
    fn the_cache_keeps_chunks_up_to_its_bound_in_bytes() {
        // Each chunk below costs its 64 non-zero slice bytes plus 12 per
        // block (slot and summary): 64 + 2 * 12 = 88. Two fit exactly in 176.
        let mut cache = BitmapCache::new(4);
        cache.max_bytes = 176;
        let loads = core::cell::Cell::new(0);
        let raw = [0x0Fu8; 64];
        let load = || {
            loads.set(loads.get() + 1);
            Ok(ChunkBitmaps::compact(&raw, 32))
        };
        for chunk in [0, 1, 2, 0, 1, 2] {
            assert!(matches!(cache.get(chunk, load).unwrap(), Cow::Borrowed(_)) == (chunk < 2), "chunk {chunk}");
        }
        assert_eq!(loads.get(), 4, "chunks 0 and 1 are kept, 2 is loaded each time");
        assert_eq!(cache.bytes.load(core::sync::atomic::Ordering::Relaxed), 176);
        // One byte less and the second no longer fits.
        cache = BitmapCache::new(4);
        cache.max_bytes = 175;
        for chunk in [0, 1] {
            assert!(matches!(cache.get(chunk, load).unwrap(), Cow::Borrowed(_)) == (chunk == 0), "chunk {chunk}");
        }
        assert_eq!(cache.bytes.load(core::sync::atomic::Ordering::Relaxed), 88);
    }
}
