//! Writing to differencing disks: blocks allocated in the child, sector
//! bitmap bits set for every sector written, partial sectors completed from
//! the chain first.
//!
//! A block written whole becomes FULLY_PRESENT; a block written in part
//! becomes PARTIALLY_PRESENT, its unwritten sectors still coming from the
//! parent. A block in ZERO, UNMAPPED or UNDEFINED state reads zeros, never the
//! parent, so it becomes FULLY_PRESENT over a zero-filled block. Bitmap pages
//! are metadata: they change in memory and reach the file through the log at
//! the next flush, after the payload they describe.

use alloc::vec::Vec;

use super::{Disk, Image};
use crate::error::{IoContext, Result};
use crate::format::bat::{BatEntry, PayloadState, SB_PRESENT};
use crate::format::MIB;

const PAGE: u64 = 4096;

impl Image {
    /// Differencing write of whole sectors.
    fn write_sectors_differencing(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.begin_data_change()?;
        let bs = self.params.block_size as u64;
        let ss = self.params.logical_sector_size as u64;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let whole_block = n == bs;
            let entry = self.bat_payload(block)?;
            let state = entry.payload_state();
            // A partially present block written whole becomes fully present
            // once its data is written.
            let mut becomes_full = false;
            let (base, mark) = match state {
                Some(PayloadState::FullyPresent) => (entry.file_offset(), false),
                Some(PayloadState::PartiallyPresent) if whole_block => {
                    becomes_full = true;
                    (entry.file_offset(), false)
                }
                Some(PayloadState::PartiallyPresent) => (entry.file_offset(), true),
                Some(PayloadState::NotPresent) if !whole_block => (self.place_partial(block)?, true),
                _ => (self.allocate_block_as(block, PayloadState::FullyPresent)?, false),
            };
            let src = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let at = base + in_block;
            self.storage.write_all_at(src, at).during("writing payload", at)?;
            if mark {
                self.set_bitmap_bits(block, in_block / ss, n / ss)?;
            }
            if becomes_full {
                let index = self.table.geometry().payload_index(block);
                self.set_bat_entry(index, BatEntry::payload(PayloadState::FullyPresent, base))?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Makes not-present `block` partially present with no sector present;
    /// returns its file offset. Its chunk gets a sector bitmap block, and
    /// the block's slice of it is cleared: the bits of a block that is not
    /// partially present mean nothing (MS-VHDX 2.5.1), and another writer
    /// may have left some set. Kept, they would make sectors never written
    /// here read the new block's zeros in place of the parent's bytes.
    pub(crate) fn place_partial(&mut self, block: u64) -> Result<u64> {
        self.ensure_sector_bitmap(block / self.table.geometry().chunk_ratio)?;
        let at = self.allocate_block_as(block, PayloadState::PartiallyPresent)?;
        self.absorb_shared_bits();
        // Only a page with a bit to clear is changed (and logged).
        for (_, s, stop) in self.runs_with_bits(block, |page_at| self.metadata_page(page_at))? {
            self.change_bitmap_bits(block, s, stop - s, false)?;
        }
        Ok(at)
    }

    /// The runs of `block`'s bitmap slice (`bitmap_runs` over all its
    /// sectors: page offset, first bit, end bit) that hold a set bit, each
    /// page's bytes as `page` gives them.
    pub(crate) fn runs_with_bits(
        &self,
        block: u64,
        page: impl Fn(u64) -> Result<Vec<u8>>,
    ) -> Result<Vec<(u64, u64, u64)>> {
        let base = self.bitmap_base(block)?;
        let mut out = Vec::new();
        for (page_at, s, stop) in bitmap_runs(base, 0, self.table.geometry().sectors_per_block()) {
            let bytes = page(page_at)?;
            if run_masks(base, page_at, s, stop).any(|(i, mask)| bytes[i] & mask != 0) {
                out.push((page_at, s, stop));
            }
        }
        Ok(out)
    }

    /// Makes sure chunk `chunk` has a sector bitmap block; returns its
    /// offset. A new block is backed by real space at once (not left a hole
    /// of the file), so that applying its pages from the log later never
    /// needs space.
    pub(crate) fn ensure_sector_bitmap(&mut self, chunk: u64) -> Result<u64> {
        let index = self.table.geometry().sector_bitmap_index(chunk);
        let entry = self.bat(index)?;
        if entry.sector_bitmap_present() {
            return Ok(entry.file_offset());
        }
        let at = self.grow_for(MIB)?;
        self.storage.allocate(at, MIB).during("allocating a sector bitmap block", at)?;
        self.set_bat_entry(index, BatEntry::new(SB_PRESENT, at))?;
        Ok(at)
    }

    /// Sets the bitmap bits of `count` sectors from `first` in `block`.
    pub(crate) fn set_bitmap_bits(&mut self, block: u64, first: u64, count: u64) -> Result<()> {
        self.change_bitmap_bits(block, first, count, true)
    }

    /// Sets (`present`) or clears the bitmap bits of `count` sectors from
    /// `first` in `block`; the chunk must have a sector bitmap block.
    pub(crate) fn change_bitmap_bits(&mut self, block: u64, first: u64, count: u64, present: bool) -> Result<()> {
        let base = self.bitmap_base(block)?;
        for (page_at, s, stop) in bitmap_runs(base, first, count) {
            self.metadata_page_mut(page_at)?;
            let page = self.dirty_pages.get_mut(&page_at).expect("loaded above");
            for (i, mask) in run_masks(base, page_at, s, stop) {
                let old = page[i];
                if present {
                    page[i] |= mask;
                } else {
                    page[i] &= !mask;
                }
                if page[i] != old {
                    self.undo.byte(page_at + i as u64, old);
                }
            }
        }
        Ok(())
    }

    /// The file offset of bit 0 of partially present `block`'s sector
    /// bitmap (its slice of its chunk's sector bitmap block).
    pub(crate) fn bitmap_base(&self, block: u64) -> Result<u64> {
        let g = *self.table.geometry();
        let sb = self.sector_bitmap_block(block, block / g.chunk_ratio)?;
        Ok(sb + (block % g.chunk_ratio) * (g.sectors_per_block() / 8))
    }

    /// The uncommitted copy of the metadata page at `page_at`, loaded on first use.
    pub(crate) fn metadata_page_mut(&mut self, page_at: u64) -> Result<&mut Vec<u8>> {
        self.absorb_shared_bits();
        if !self.dirty_pages.contains_key(&page_at) {
            let page = self.metadata_page(page_at)?;
            self.dirty_pages.insert(page_at, page);
            self.undo.page_loaded(page_at);
        }
        Ok(self.dirty_pages.get_mut(&page_at).expect("inserted above"))
    }

    /// The metadata page at `page_at` as the disk presents it now: this
    /// session's uncommitted copy, else the file's bytes.
    pub(crate) fn metadata_page(&self, page_at: u64) -> Result<Vec<u8>> {
        if let Some(changed) = self.dirty_pages.get(&page_at) {
            return Ok(changed.clone());
        }
        let mut page = alloc::vec![0u8; PAGE as usize];
        self.read_file(&mut page, page_at, "reading a sector bitmap")?;
        Ok(page)
    }
}

/// Bits `[first, first + count)` counted from file offset `base` (bit 0 of
/// the byte there), cut at 4 KiB pages: (page offset, first bit, end bit)
/// of each page's run, in order.
pub(crate) fn bitmap_runs(base: u64, first: u64, count: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let last = first + count;
    let mut s = first;
    core::iter::from_fn(move || {
        (s < last).then(|| {
            let page_at = (base + s / 8) / PAGE * PAGE;
            let stop = last.min((page_at + PAGE - base) * 8);
            let run = (page_at, s, stop);
            s = stop;
            run
        })
    })
}

/// The bytes of a run of [`bitmap_runs`] (bits `[s, stop)` from `base`,
/// inside the page at `page_at`): (index in the page, mask of the run's
/// bits in it), whole bytes as `0xFF`.
pub(crate) fn run_masks(base: u64, page_at: u64, mut s: u64, stop: u64) -> impl Iterator<Item = (usize, u8)> {
    core::iter::from_fn(move || {
        (s < stop).then(|| {
            let i = (base + s / 8 - page_at) as usize;
            let (mask, n) = if s % 8 == 0 && stop - s >= 8 { (0xFF, 8) } else { (1u8 << (s % 8), 1) };
            s += n;
            (i, mask)
        })
    })
}

impl Image {
    /// Takes back the sector bitmap pages changed through `&self` (see
    /// `bits`): the changed ones join this session's uncommitted pages (as
    /// they were before the `&mut` change that follows, which an undo then
    /// returns to), and their chunks leave the bitmap cache, which may hold
    /// pages a shared flush rewrote as they were before. Every `&mut` use
    /// of the bitmaps starts here.
    pub(crate) fn absorb_shared_bits(&mut self) {
        #[cfg(feature = "std")]
        for (at, chunk, bytes, changed) in self.shared_bits.take() {
            if changed {
                self.dirty_pages.insert(at, bytes);
            }
            self.bitmap_cache.forget(chunk);
        }
    }

    /// Whether a sector bitmap page changed through `&self` covers a byte of
    /// `[at, end)` of the file.
    pub(crate) fn shared_bits_in(&self, at: u64, end: u64) -> bool {
        #[cfg(feature = "std")]
        return self.shared_bits.any_in(at, end);
        #[cfg(not(feature = "std"))]
        {
            let _ = (at, end);
            false
        }
    }
}

impl Disk {
    /// Differencing write of any alignment: the partial sectors at either end
    /// are read through the chain, merged and written whole.
    pub(crate) fn write_differencing(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let ss = self.image.params.logical_sector_size as u64;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        let mut src = buf;
        if pos % ss != 0 || (end - pos) < ss {
            let sector_start = pos / ss * ss;
            let mut sector = alloc::vec![0u8; ss as usize];
            self.read_at(&mut sector, sector_start)?;
            let n = ((sector_start + ss).min(end) - pos) as usize;
            sector[(pos - sector_start) as usize..(pos - sector_start) as usize + n].copy_from_slice(&src[..n]);
            self.image.write_sectors_differencing(&sector, sector_start)?;
            pos += n as u64;
            src = &src[n..];
        }
        let whole = (end - pos) / ss * ss;
        if whole > 0 {
            self.image.write_sectors_differencing(&src[..whole as usize], pos)?;
            pos += whole;
            src = &src[whole as usize..];
        }
        if pos < end {
            let mut sector = alloc::vec![0u8; ss as usize];
            self.read_at(&mut sector, pos)?;
            sector[..src.len()].copy_from_slice(src);
            self.image.write_sectors_differencing(&sector, pos)?;
        }
        Ok(())
    }
}
