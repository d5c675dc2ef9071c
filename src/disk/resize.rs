//! Changing the virtual size, and the structural moves it needs: a larger
//! BAT region, the virtual disk size item, giving back the file's tail.
//!
//! # Growing
//!
//! 1. **Room in the BAT.** When the region holds the new entry count, the
//!    entries past the old count are cleared (through the log: nobody reads
//!    them yet). Otherwise the BAT is *relocated*: the whole table is written
//!    to a new region at the end of the file (1 MiB aligned, zeros past the
//!    old entries) and flushed; then both region table copies are switched to
//!    it in one log entry. The log may target any 4 KiB-aligned offset past
//!    the headers (replay refuses only the first 192 KiB), and the region
//!    tables at 192 and 256 KiB are metadata the format updates only through
//!    the log; the changed pages of both copies (a few of their 32) fit one
//!    entry, so a crash leaves either the old table or the new one, and until
//!    the switch the new region is unreferenced space.
//! 2. **The new range reads as zeros,** prepared while it is still past the
//!    committed size, so nobody sees it yet: a fixed disk gets new
//!    zero-filled blocks (it stays fully allocated); the tail of the old last
//!    block, which may hold bytes from before a shrink, is zeroed; in a
//!    differencing disk the whole new range is discarded (see
//!    [`Disk::discard`]), so it never shows the parent's data. A child larger
//!    than its parent reads zeros past the parent's end. These changes are
//!    committed.
//! 3. **The size**: the 8-byte virtual disk size item is patched in its
//!    metadata page, committed alone (one log entry).
//!
//! # Shrinking
//!
//! Refused (nothing changes) when the range to remove reads anything but
//! zeros, unless `allow_shrink`. The size item is committed first; then the
//! entries past the new end — invisible from then on — are cleared, and the
//! file's tail past every structure still in use is cut off, after a log
//! entry records the smaller size (a replay must never find the file
//! shorter than the log says it was).
//!
//! The DataWriteGuid changes (a resize is a change readers see), so
//! children of a resized disk no longer accept it as their parent.
//!
//! # Space
//!
//! What may need new space on disk comes before anything else changes:
//! first the zeros in the tail of the old last block (invisible), then the
//! space of a larger BAT region (`allocate`) and of a fixed disk's new
//! blocks. When the filesystem cannot give it, the file is cut back and the
//! image is as it was, byte for byte (but for that tail). Every later step
//! only changes metadata, whose space is allocated before it is logged.

use alloc::vec::Vec;

use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, BatGeometry, PayloadState};
use crate::format::guid::{Guid, BAT_REGION, VIRTUAL_DISK_SIZE};
use crate::format::metadata::{self, MetadataFlags, METADATA_TABLE_SIZE};
use crate::format::region::{REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};
use crate::format::{round_up_mib, HEADER_SECTION_SIZE, MAX_VIRTUAL_SIZE, MIB};

const PAGE: u64 = 4096;

impl Image {
    fn shrink(&mut self, new_size: u64, g: BatGeometry) -> Result<()> {
        let old = *self.table.geometry();
        self.begin_data_change()?;
        self.queue_virtual_size(new_size)?;
        self.commit_metadata()?;
        self.table.set_geometry(g);
        self.params.virtual_size = new_size;
        // Past the new end nothing is read any more: release it.
        for block in g.payload_blocks..old.payload_blocks {
            let index = old.payload_index(block);
            let entry = self.bat(index)?;
            if entry.is_empty() {
                continue;
            }
            if entry.payload_state() == Some(PayloadState::PartiallyPresent)
                && block / g.chunk_ratio < g.sector_bitmap_blocks
            {
                self.clear_block_bitmap(block)?;
            }
            self.set_bat_entry(index, BatEntry::EMPTY)?;
        }
        for index in g.entry_count as usize..old.entry_count as usize {
            if !self.bat(index)?.is_empty() {
                self.set_bat_entry(index, BatEntry::EMPTY)?;
            }
        }
        self.trim_file_end()?;
        self.flush()
    }

    /// Writes the BAT's entries (zeros past the entry count) as the first
    /// `len` bytes of a region at `at`, and flushes. The region is not
    /// referenced yet.
    pub(crate) fn write_bat_copy(&mut self, at: u64, len: u64) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MIB);
            let bytes = self.table.region_piece(&self.bounds(), done, n)?;
            let off = at + done;
            self.storage.write_all_at(&bytes, off).during("writing the relocated BAT", off)?;
            done += n;
        }
        if at + len > self.space.len() {
            self.space.set_len(at + len);
        }
        self.storage.flush().during("flushing the relocated BAT", at)
    }

    /// Points the region `guid` at `[at, at + len)` in both region table
    /// copies, in one log entry, and commits. Nothing else may be pending.
    pub(crate) fn switch_region(&mut self, guid: Guid, at: u64, len: u32) -> Result<()> {
        debug_assert!(!self.has_pending_metadata());
        let mut regions = self.regions.clone();
        let entry =
            regions.entries.iter_mut().find(|r| r.guid == guid).ok_or_else(|| Error::invalid("no such region"))?;
        entry.file_offset = at;
        entry.length = len;
        let table = regions.to_bytes();
        let mut current = alloc::vec![0u8; REGION_TABLE_SIZE];
        for copy_at in REGION_TABLE_OFFSETS {
            self.read_file(&mut current, copy_at, "reading a region table")?;
            for (i, (old, new)) in current.chunks(PAGE as usize).zip(table.chunks(PAGE as usize)).enumerate() {
                if old != new {
                    self.dirty_pages.insert(copy_at + i as u64 * PAGE, new.to_vec());
                }
            }
        }
        // One entry, so both copies change together (at most 32 pages; a
        // 1 MiB log holds 63 per entry).
        let per_entry =
            crate::log::LogWriter::new(self.header.log_offset, self.header.log_length as u64).max_pages_per_entry();
        if self.dirty_pages.len() > per_entry {
            self.dirty_pages.clear();
            return Err(Error::unsupported(
                "log",
                self.header.log_offset,
                "the log is too small to switch the region tables in one entry",
            ));
        }
        self.commit_metadata()?;
        if guid == BAT_REGION {
            self.table.set_region(at, len as u64);
        }
        self.regions = regions;
        Ok(())
    }

    /// Queues the virtual disk size item's new value (its metadata page or
    /// pages) for the next commit.
    fn queue_virtual_size(&mut self, size: u64) -> Result<()> {
        let region = self.regions.metadata();
        let mut table = alloc::vec![0u8; METADATA_TABLE_SIZE];
        self.read_file(&mut table, region.file_offset, "reading the metadata table")?;
        let entries = metadata::parse_table(&table, region.file_offset, region.length)?;
        let item = entries
            .iter()
            .find(|e| e.item_id == VIRTUAL_DISK_SIZE && !e.flags.contains(MetadataFlags::IS_USER) && e.length == 8)
            .ok_or_else(|| Error::corrupt("metadata table", region.file_offset, "no 8-byte virtual disk size item"))?;
        let at = region.file_offset + item.offset as u64;
        for (i, b) in size.to_le_bytes().iter().enumerate() {
            let byte_at = at + i as u64;
            let page_at = byte_at / PAGE * PAGE;
            let page = self.metadata_page_mut(page_at)?;
            page[(byte_at - page_at) as usize] = *b;
        }
        Ok(())
    }

    /// The end of the structures every image has, whatever it holds:
    /// header section, log and regions.
    pub(crate) fn structures_end(&self) -> u64 {
        let log_end = self.header.log_offset + self.header.log_length as u64;
        self.regions.entries.iter().map(|r| r.end()).fold(HEADER_SECTION_SIZE.max(log_end), u64::max)
    }

    /// The first 1 MiB boundary past every structure in use: header
    /// section, log, regions, blocks holding data, sector bitmaps.
    pub(crate) fn used_end(&self) -> Result<u64> {
        let mut end = self.structures_end();
        let g = *self.table.geometry();
        let bs = g.block_size as u64;
        self.scan_bat(|index, e| {
            if g.is_sector_bitmap_index(index) {
                if g.has_parent && e.sector_bitmap_present() {
                    end = end.max(e.file_offset() + MIB);
                }
            } else if e.payload_state().is_some_and(|s| s.has_data()) {
                end = end.max(e.file_offset() + bs);
            }
            Ok(())
        })?;
        Ok(round_up_mib(end))
    }

    /// Commits pending metadata and cuts the file after the last structure
    /// in use, once a log entry records the smaller size. Returns the file's
    /// length.
    pub(crate) fn trim_file_end(&mut self) -> Result<u64> {
        let end = self.used_end()?;
        if end >= self.space.len() {
            self.commit_metadata()?;
            return Ok(self.space.len());
        }
        let before = self.space.len();
        self.space.set_len(end);
        if !self.has_pending_metadata() {
            // An entry carrying the new size: BAT page 0, unchanged.
            let b = super::bounds(&*self.storage, &self.space, &self.regions, &self.header);
            self.table.touch_page(&b, 0)?;
        }
        if let Err(e) = self.commit_metadata() {
            self.space.set_len(before);
            return Err(e);
        }
        self.storage.set_len(end).during("truncating the file", end)?;
        self.storage.flush().during("flushing", end)?;
        self.space.end_at(end);
        self.blocks_end = Some(end);
        Ok(end)
    }
}

impl Disk {
    /// Changes the virtual size to `new_size` bytes (a multiple of the
    /// logical sector size, at most 64 TiB), for any disk type.
    ///
    /// Growing adds sectors that read as zeros; the BAT grows (and moves to
    /// the end of the file when its region is too small). Shrinking is
    /// refused with [`Error::Refused`] when the removed range holds non-zero
    /// data, unless `allow_shrink`, which discards it. Every metadata change
    /// goes through the log and the operation ends flushed: a crash leaves
    /// the old size or the new one, never a mixture; a grow that cannot get
    /// the space of its larger BAT region changes nothing. The DataWriteGuid
    /// changes, so children of this disk no longer link to it
    /// ([`crate::ops::resize::resize`] refuses when it finds any). A
    /// differencing disk must be open with its parent; it may grow past its
    /// parent's size (that part reads as zeros).
    ///
    /// ```
    /// use vhdx::{CreateOptions, Disk, ErrorKind, MemStorage};
    /// # fn main() -> vhdx::Result<()> {
    /// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20), None)?;
    /// disk.write_at(b"data", 7 << 20)?;
    /// disk.resize(1 << 30, false)?; // grow: the new sectors read as zeros
    /// assert_eq!(disk.virtual_size(), 1 << 30);
    /// let err = disk.resize(4 << 20, false).unwrap_err(); // would lose "data"
    /// assert_eq!(err.kind(), ErrorKind::Refused);
    /// disk.resize(4 << 20, true)?; // discards it
    /// # Ok(()) }
    /// ```
    pub fn resize(&mut self, new_size: u64, allow_shrink: bool) -> Result<()> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        let lss = self.image.params.logical_sector_size as u64;
        if new_size == 0 || new_size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid(alloc::format!("virtual size {new_size} is not between 1 byte and 64 TiB")));
        }
        if new_size % lss != 0 {
            return Err(Error::invalid(alloc::format!(
                "virtual size {new_size} is not a multiple of the {lss}-byte logical sector"
            )));
        }
        if self.image.params.has_parent && self.parent.is_none() {
            return Err(Error::invalid("a differencing disk opened without its parent cannot be resized"));
        }
        let old_size = self.image.params.virtual_size;
        if new_size == old_size {
            return Ok(());
        }
        self.flush()?;
        let new_geometry = BatGeometry::new(
            self.image.params.block_size,
            self.image.params.logical_sector_size,
            new_size,
            self.image.params.has_parent,
        )?;
        if new_size > old_size {
            self.grow(new_size, new_geometry)
        } else {
            if !allow_shrink {
                if let Some(at) = self.first_nonzero(new_size, old_size - new_size)? {
                    return Err(Error::Refused(alloc::format!(
                        "shrinking the disk from {old_size} to {new_size} bytes would discard data: the removed \
                         range holds non-zero bytes at offset {at:#x}; nothing was changed"
                    )));
                }
            }
            self.image.shrink(new_size, new_geometry)
        }
    }

    fn grow(&mut self, new_size: u64, g: BatGeometry) -> Result<()> {
        let old_size = self.image.params.virtual_size;
        let old = *self.image.table.geometry();
        let bs = self.image.params.block_size as u64;
        // What may need space comes first. The tail of the old last block,
        // past the old size, must read as zeros; nobody sees it yet.
        let tail_end = old_size.div_ceil(bs).saturating_mul(bs).min(new_size);
        if tail_end > old_size {
            self.image.params.virtual_size = new_size;
            let zeroed = self.undoable(|d| d.zero_range(old_size, tail_end - old_size));
            self.image.params.virtual_size = old_size;
            zeroed?;
            self.image.commit_metadata()?;
        }
        // Then the space of a larger BAT region, and of a fixed disk's new
        // blocks, taken before anything else changes: if it is not there,
        // the file is cut back and the image is as it was, byte for byte.
        let region = self.image.regions.bat();
        let relocate = g.table_bytes() > region.length as u64;
        let new_len = round_up_mib(g.table_bytes());
        if relocate && new_len > u32::MAX as u64 - (MIB - 1) {
            return Err(Error::invalid("the BAT would exceed the largest region"));
        }
        let before = self.image.space.get();
        let mut fixed_blocks = None;
        let reserved = (|| {
            let mut at = None;
            if relocate {
                let a = self.image.grow_for(new_len)?;
                self.image.storage.allocate(a, new_len).during("allocating the larger BAT region", a)?;
                at = Some(a);
            }
            if self.image.params.leave_block_allocated {
                let missing = g.payload_blocks - old.payload_blocks;
                if missing > 0 {
                    fixed_blocks = Some(self.image.grow_for(missing * bs)?);
                }
            }
            // The new region holds zeros past the old entries already (new
            // space); only the entries need writing.
            if let Some(a) = at {
                self.image.begin_data_change()?;
                self.image.write_bat_copy(a, round_up_mib(old.table_bytes()).min(new_len))?;
            }
            Ok(at)
        })();
        let at = match reserved {
            Ok(at) => at,
            Err(e) => {
                self.image.space.take_back(&mut *self.image.storage, before);
                return Err(e);
            }
        };
        if let Some(at) = at {
            // The new region holds the old entries and zeros after them.
            self.image.switch_region(BAT_REGION, at, new_len as u32)?;
        } else {
            self.image.begin_data_change()?;
            for index in old.entry_count as usize..g.entry_count as usize {
                if !self.image.bat(index)?.is_empty() {
                    self.image.set_bat_entry(index, BatEntry::EMPTY)?;
                }
            }
        }
        // The rest of the new range, still past the committed size: zeros.
        self.image.table.set_geometry(g);
        self.image.params.virtual_size = new_size;
        let prepared = self
            .prepare_grown_range(tail_end, old.payload_blocks, fixed_blocks)
            .and_then(|()| self.image.commit_metadata());
        if let Err(e) = prepared {
            self.image.table.set_geometry(old);
            self.image.params.virtual_size = old_size;
            return Err(e);
        }
        self.image.queue_virtual_size(new_size)?;
        self.flush()
    }

    /// Makes `[from, virtual_size)`, whole blocks past the old last one,
    /// read as zeros (see the module docs): BAT entries only, no new space.
    /// A fixed disk's new blocks go at `fixed_blocks`, reserved before.
    fn prepare_grown_range(&mut self, from: u64, old_payload_blocks: u64, fixed_blocks: Option<u64>) -> Result<()> {
        let bs = self.image.params.block_size as u64;
        let new_size = self.image.params.virtual_size;
        if self.image.params.has_parent {
            return if new_size > from { self.zero_range(from, new_size - from) } else { Ok(()) };
        }
        if let Some(at) = fixed_blocks {
            for (i, b) in (old_payload_blocks..self.image.table.geometry().payload_blocks).enumerate() {
                let index = self.image.table.geometry().payload_index(b);
                self.image.set_bat_entry(index, BatEntry::payload(PayloadState::FullyPresent, at + i as u64 * bs))?;
            }
        }
        Ok(())
    }

    /// The first virtual offset in `[offset, offset + len)` that reads as a
    /// non-zero byte.
    fn first_nonzero(&self, offset: u64, len: u64) -> Result<Option<u64>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        self.image.resolve(offset, len, |at, n, extent| {
            match extent {
                super::Extent::Zero => {}
                super::Extent::Parent
                    if self
                        .parent
                        .as_deref()
                        .is_none_or(|p| super::discard::reads_zero_structurally(p, at, n).unwrap_or(false)) => {}
                _ => runs.push((at, n)),
            }
            Ok(())
        })?;
        let mut buf = alloc::vec![0u8; MIB as usize];
        for (start, n) in runs {
            let mut done = 0;
            while done < n {
                let k = (n - done).min(MIB) as usize;
                self.read_at(&mut buf[..k], start + done)?;
                if let Some(i) = buf[..k].iter().position(|&b| b != 0) {
                    return Ok(Some(start + done + i as u64));
                }
                done += k as u64;
            }
        }
        Ok(None)
    }
}
