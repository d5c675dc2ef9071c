//! The block allocation table as a session holds it: its shape, where it
//! lives in the file, its entries (whole 4 KiB pages of them) and which
//! pages changed since the last commit.
//!
//! Every change goes through [`BlockTable::set`], which marks the page
//! dirty and returns what an undo needs; [`BlockTable::dirty_pages`] gives
//! the changed pages as the bytes the log commits.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::format::bat::{BatEntry, BatGeometry};

/// BAT entries per 4 KiB page.
const PER_PAGE: usize = 512;

/// The in-memory BAT (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct BlockTable {
    geometry: BatGeometry,
    /// File offset of the BAT region.
    offset: u64,
    /// At least `geometry.entry_count` entries, whole pages as read.
    entries: Vec<BatEntry>,
    /// Pages changed and not yet committed, by page number.
    dirty: BTreeSet<u64>,
}

impl BlockTable {
    /// A table of `geometry` at file offset `offset`, holding `entries`.
    pub(crate) fn new(geometry: BatGeometry, offset: u64, entries: Vec<BatEntry>) -> BlockTable {
        BlockTable { geometry, offset, entries, dirty: BTreeSet::new() }
    }

    /// Entries decoded from the little-endian bytes of a BAT region.
    pub(crate) fn decode(raw: &[u8]) -> impl Iterator<Item = BatEntry> + '_ {
        raw.chunks_exact(8).map(|c| BatEntry::from_raw(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
    }

    /// The table's shape.
    pub(crate) fn geometry(&self) -> &BatGeometry {
        &self.geometry
    }

    /// Gives the table a new shape (resize); entries are adjusted apart.
    pub(crate) fn set_geometry(&mut self, geometry: BatGeometry) {
        self.geometry = geometry;
    }

    /// File offset of the BAT region.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Moves the table to a new region at `offset` (resize).
    pub(crate) fn set_offset(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// The entries the geometry counts.
    pub(crate) fn entries(&self) -> &[BatEntry] {
        &self.entries[..self.geometry.entry_count as usize]
    }

    /// Entry `index`; empty past the entries held.
    pub(crate) fn entry(&self, index: usize) -> BatEntry {
        self.entries.get(index).copied().unwrap_or(BatEntry::EMPTY)
    }

    /// The entry of payload block `block`.
    pub(crate) fn payload(&self, block: u64) -> BatEntry {
        self.entry(self.geometry.payload_index(block))
    }

    /// The entry of chunk `chunk`'s sector bitmap block.
    pub(crate) fn sector_bitmap(&self, chunk: u64) -> BatEntry {
        self.entry(self.geometry.sector_bitmap_index(chunk))
    }

    /// Sets entry `index` and marks its page dirty. Returns the entry it
    /// held and whether the page was clean before, for [`BlockTable::restore`].
    pub(crate) fn set(&mut self, index: usize, entry: BatEntry) -> (BatEntry, bool) {
        let newly_dirty = self.dirty.insert((index / PER_PAGE) as u64);
        let old = core::mem::replace(&mut self.entries[index], entry);
        (old, newly_dirty)
    }

    /// Takes back a [`BlockTable::set`] that returned `(old, newly_dirty)`.
    pub(crate) fn restore(&mut self, index: usize, old: BatEntry, newly_dirty: bool) {
        self.entries[index] = old;
        if newly_dirty {
            self.dirty.remove(&((index / PER_PAGE) as u64));
        }
    }

    /// Marks page `page` dirty without changing it (a commit that must
    /// carry a log entry, e.g. to record a new file size).
    pub(crate) fn touch_page(&mut self, page: u64) {
        self.dirty.insert(page);
    }

    /// Holds exactly `count` entries, cutting or padding with empty ones.
    pub(crate) fn set_len(&mut self, count: usize) {
        self.entries.resize(count, BatEntry::EMPTY);
    }

    /// Entries held (whole pages, possibly more than the geometry counts).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends entries (read from the region past those held).
    pub(crate) fn extend(&mut self, more: impl IntoIterator<Item = BatEntry>) {
        self.entries.extend(more);
    }

    /// Whether a page changed since the last commit.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Number of changed pages.
    pub(crate) fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// The changed pages as (file offset, 4 KiB of little-endian entries).
    pub(crate) fn dirty_pages(&self) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
        self.dirty.iter().map(|&page| {
            let first = page as usize * PER_PAGE;
            let bytes = self.entries[first..first + PER_PAGE].iter().flat_map(|e| e.raw().to_le_bytes()).collect();
            (self.offset + page * 4096, bytes)
        })
    }

    /// Forgets the changed pages (they were committed).
    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.clear();
    }

    /// The first `len` bytes of a copy of the region: the counted entries,
    /// zeros after, in pieces of at most `piece` bytes at their offset from
    /// the region's start.
    pub(crate) fn region_bytes(
        &self,
        len: u64,
        piece: u64,
        mut out: impl FnMut(u64, &[u8]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let count = self.geometry.entry_count as usize;
        let mut chunk = alloc::vec![0u8; piece as usize];
        let mut done = 0u64;
        while done < len {
            chunk.fill(0);
            let first = (done / 8) as usize;
            let last = (((done + piece) / 8) as usize).min(count);
            for i in first..last.max(first) {
                let o = (i - first) * 8;
                chunk[o..o + 8].copy_from_slice(&self.entries[i].raw().to_le_bytes());
            }
            let n = (len - done).min(piece);
            out(done, &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bat::PayloadState;
    use crate::format::MIB;

    fn table() -> BlockTable {
        let g = BatGeometry::new(MIB as u32, 512, 600 * MIB, false).unwrap();
        BlockTable::new(g, 3 * MIB, alloc::vec![BatEntry::EMPTY; 1024])
    }

    #[test]
    fn a_change_dirties_its_page_and_restore_takes_it_back() {
        let mut t = table();
        let e = BatEntry::payload(PayloadState::FullyPresent, 9 * MIB);
        assert_eq!(t.set(513, e), (BatEntry::EMPTY, true));
        assert_eq!(t.payload(513), e);
        assert_eq!(t.set(514, e), (BatEntry::EMPTY, false), "the page was dirty already");
        let pages: Vec<_> = t.dirty_pages().collect();
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].0, 3 * MIB + 4096, "page 1 of the region");
        assert_eq!(pages[0].1[8..16], (0x90_0006u64).to_le_bytes(), "entry 513 is the page's second");
        assert_eq!(pages[0].1[24..], [0u8; 4096 - 24][..]);
        t.restore(514, BatEntry::EMPTY, false);
        assert!(t.has_dirty(), "the page still holds entry 513's change");
        t.restore(513, BatEntry::EMPTY, true);
        assert!(!t.has_dirty() && t.entry(513).is_empty());
        assert_eq!(t.entry(5000), BatEntry::EMPTY, "past the entries held");
    }

    #[test]
    fn a_region_copy_holds_the_counted_entries_then_zeros() {
        let mut t = table();
        t.set_len(1024);
        t.set(0, BatEntry::from_raw(0x30_0006));
        t.set(599, BatEntry::from_raw(0x40_0006));
        // Past the 600 counted entries, nothing is copied.
        t.set(600, BatEntry::from_raw(0x50_0006));
        let mut copy = alloc::vec![0xAAu8; 3 * 4096];
        t.region_bytes(copy.len() as u64, 4096, |at, bytes| {
            copy[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(copy[..8], 0x30_0006u64.to_le_bytes());
        assert_eq!(copy[599 * 8..600 * 8], 0x40_0006u64.to_le_bytes());
        assert!(copy[600 * 8..].iter().all(|&b| b == 0));
        assert!(copy[8..599 * 8].iter().all(|&b| b == 0));
    }
}
