//! Discarding ranges: after [`Disk::discard`] a range reads as zeros, and
//! whole blocks give their space back (for [`Disk::compact`] to reclaim).
//!
//! What a discarded range becomes, by disk type:
//! - **Dynamic**: a whole block becomes UNMAPPED (state 3, offset 0: its old
//!   location is no longer referenced); part of a present block is
//!   overwritten with zeros; blocks not present already read as zeros.
//! - **Fixed**: every block stays allocated (the format's rule for fixed
//!   disks), so the range is overwritten with zeros in place.
//! - **Differencing**: the range reads as zeros, never as the parent's data.
//!   A whole block becomes ZERO (state 2, offset 0), except a block that is
//!   not present over a parent that holds nothing there (the parent reads as
//!   zeros by structure: unallocated, ZERO state, or past its end), which
//!   stays NOT_PRESENT. In part of a block, sectors whose parent reads as
//!   zeros by structure have their sector bitmap bits cleared; the others
//!   are overwritten with zeros in this file.
//!
//! Any byte range inside the disk is accepted: bytes of a logical sector the
//! range covers only in part are overwritten with zeros (the rest of that
//! sector keeps its data). The changes reach the file at the next flush,
//! payload first and the block table through the log, like writes: a crash
//! before then leaves each sector with its old content or zeros.
//!
//! A block that changes state has its sector bitmap bits cleared (when its
//! chunk has a bitmap), so a later partial write into it never finds bits
//! left over from its previous life.

use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, PayloadState};

/// A run of zeros to write from (no allocation per call).
pub(crate) static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// Whether `disk` reads `[offset, offset + len)` as zeros by its structure
/// alone (no data stored for it anywhere in its chain, or past its end),
/// without reading payload.
pub(crate) fn reads_zero_structurally(disk: &Disk, offset: u64, len: u64) -> Result<bool> {
    let size = disk.virtual_size();
    if offset >= size || len == 0 {
        return Ok(true);
    }
    let len = len.min(size - offset);
    let mut zero = true;
    disk.image.resolve(offset, len, |at, n, extent| {
        if !zero {
            return Ok(());
        }
        zero = match extent {
            super::Extent::Zero => true,
            super::Extent::Data { .. } => false,
            super::Extent::Parent => match disk.parent() {
                Some(p) => reads_zero_structurally(p, at, n)?,
                None => true,
            },
        };
        Ok(())
    })?;
    Ok(zero)
}

impl Image {
    /// Writes `len` zero bytes at file offset `at` (in writes of up to 1 MiB).
    pub(crate) fn write_zeros_at(&mut self, at: u64, len: u64) -> Result<()> {
        let big;
        let zeros: &[u8] = if len <= ZEROS.len() as u64 {
            &ZEROS
        } else {
            big = alloc::vec![0u8; len.min(crate::format::MIB) as usize];
            &big
        };
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            let off = at + done;
            self.storage.write_all_at(&zeros[..n as usize], off).during("writing zeros", off)?;
            done += n;
        }
        Ok(())
    }

    /// Clears every sector bitmap bit of `block`, when its chunk has a bitmap.
    pub(crate) fn clear_block_bitmap(&mut self, block: u64) -> Result<()> {
        let g = *self.table.geometry();
        let chunk = block / g.chunk_ratio;
        if self.bat(g.sector_bitmap_index(chunk))?.sector_bitmap_present() {
            self.change_bitmap_bits(block, 0, g.sectors_per_block(), false)?;
        }
        Ok(())
    }
}

impl Disk {
    /// Discards `len` bytes at `offset`: afterwards they read as zeros in
    /// every disk type (in a differencing disk too: never the parent's
    /// data). Whole blocks of a dynamic disk become UNMAPPED and whole blocks
    /// of a differencing disk ZERO, so their space can be reclaimed by
    /// [`Disk::compact`]; a fixed disk is overwritten with zeros in place.
    /// Any offset and length inside the disk are accepted; partly covered
    /// sectors are zero-filled over the covered bytes. Durable after the next
    /// [`Disk::flush`], like a write.
    ///
    /// ```
    /// use vhdx::{CreateOptions, Disk, MemStorage};
    /// # fn main() -> vhdx::Result<()> {
    /// let opts = CreateOptions::dynamic(8 << 20).block_size(1 << 20);
    /// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &opts, None)?;
    /// disk.write_at(&[7u8; 3 << 20], 0)?;
    /// disk.discard(512, 2 << 20)?; // the tail of block 0 is zeroed, block 1 unmapped
    /// let mut buf = [1u8; 4096];
    /// disk.read_at(&mut buf, 1 << 20)?;
    /// assert_eq!(buf, [0u8; 4096]);
    /// assert_eq!(disk.info()?.allocated_blocks, 2);
    /// # Ok(()) }
    /// ```
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        self.image.check_range_u64(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.image.params.has_parent && self.parent.is_none() {
            return Err(Error::invalid("a differencing disk opened without its parent cannot discard ranges"));
        }
        // A discard that fails partway takes back its metadata changes, as
        // a failed write does.
        self.undoable(|d| d.zero_range(offset, len))
    }

    /// Makes `[offset, offset + len)` (inside the in-memory virtual size)
    /// read as zeros, deallocating whole blocks where the disk type allows.
    /// Calls `begin_data_change` before its first change only.
    pub(crate) fn zero_range(&mut self, offset: u64, len: u64) -> Result<()> {
        let bs = self.image.params.block_size as u64;
        let size = self.image.params.virtual_size;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let block_start = block * bs;
            let block_end = (block_start + bs).min(size);
            let hi = end.min(block_end);
            let whole = pos == block_start && hi == block_end;
            let index = self.image.table.geometry().payload_index(block);
            let entry = self.image.bat_payload(block)?;
            let state = entry.payload_state();
            if self.image.params.leave_block_allocated {
                if state == Some(PayloadState::FullyPresent) {
                    self.image.begin_data_change()?;
                    self.image.write_zeros_at(entry.file_offset() + (pos - block_start), hi - pos)?;
                }
            } else if !self.image.params.has_parent {
                match state {
                    Some(PayloadState::FullyPresent) if whole => {
                        self.image.begin_data_change()?;
                        self.image.set_bat_entry(index, BatEntry::payload(PayloadState::Unmapped, 0))?;
                    }
                    Some(PayloadState::FullyPresent) => {
                        self.image.begin_data_change()?;
                        self.image.write_zeros_at(entry.file_offset() + (pos - block_start), hi - pos)?;
                    }
                    // Not present, zero, unmapped, undefined: zeros already.
                    _ => {}
                }
            } else {
                self.zero_range_differencing(block, pos, hi, whole, entry)?;
            }
            pos = hi;
        }
        Ok(())
    }

    fn parent_reads_zero(&self, offset: u64, len: u64) -> Result<bool> {
        match &self.parent {
            Some(p) => reads_zero_structurally(p, offset, len),
            None => Ok(true),
        }
    }

    /// [`Disk::zero_range`] within one block of a differencing disk.
    fn zero_range_differencing(&mut self, block: u64, lo: u64, hi: u64, whole: bool, entry: BatEntry) -> Result<()> {
        let bs = self.image.params.block_size as u64;
        let block_start = block * bs;
        let index = self.image.table.geometry().payload_index(block);
        let state = entry.payload_state();
        match state {
            Some(PayloadState::Zero | PayloadState::Unmapped | PayloadState::Undefined) | None => Ok(()),
            _ if whole => {
                if state == Some(PayloadState::NotPresent)
                    && self.parent_reads_zero(
                        block_start,
                        (block_start + bs).min(self.image.params.virtual_size) - block_start,
                    )?
                {
                    return Ok(());
                }
                self.image.begin_data_change()?;
                if state == Some(PayloadState::PartiallyPresent) {
                    self.image.clear_block_bitmap(block)?;
                }
                self.image.set_bat_entry(index, BatEntry::payload(PayloadState::Zero, 0))?;
                Ok(())
            }
            Some(PayloadState::FullyPresent) => {
                self.image.begin_data_change()?;
                self.image.write_zeros_at(entry.file_offset() + (lo - block_start), hi - lo)
            }
            Some(PayloadState::NotPresent) => {
                if self.parent_reads_zero(lo, hi - lo)? {
                    return Ok(());
                }
                self.write_zeros_differencing(lo, hi)
            }
            Some(PayloadState::PartiallyPresent) => {
                let ss = self.image.params.logical_sector_size as u64;
                let lo_s = lo.div_ceil(ss) * ss;
                let hi_s = hi / ss * ss;
                if lo_s >= hi_s {
                    return self.write_zeros_differencing(lo, hi);
                }
                if lo < lo_s {
                    self.write_zeros_differencing(lo, lo_s)?;
                }
                if hi_s < hi {
                    self.write_zeros_differencing(hi_s, hi)?;
                }
                self.image.begin_data_change()?;
                let first = (lo_s - block_start) / ss;
                let count = (hi_s - lo_s) / ss;
                if self.parent_reads_zero(lo_s, hi_s - lo_s)? {
                    self.image.change_bitmap_bits(block, first, count, false)
                } else {
                    self.image.write_zeros_at(entry.file_offset() + (lo_s - block_start), hi_s - lo_s)?;
                    self.image.change_bitmap_bits(block, first, count, true)
                }
            }
        }
    }

    /// Writes zeros over `[lo, hi)` of a differencing disk through the
    /// ordinary write path (allocating, completing partial sectors).
    fn write_zeros_differencing(&mut self, lo: u64, hi: u64) -> Result<()> {
        let mut at = lo;
        while at < hi {
            let n = (hi - at).min(ZEROS.len() as u64);
            self.write_differencing(&ZEROS[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }
}
