//! Compaction: giving back the space of blocks that hold nothing, moving
//! the blocks at the end of the file into the holes, and cutting the file.
//!
//! 1. **Release.** A present block whose data is all zeros stops being
//!    stored: NOT_PRESENT in a dynamic disk; in a differencing disk ZERO, or
//!    NOT_PRESENT when its parent reads as zeros there by structure too (a
//!    partially present block only in that case, or when none of its sectors
//!    is present). Blocks past the virtual size are released, and so are
//!    sector bitmap blocks of chunks left without a partially present block.
//!    Committed through the log; what the disk presents does not change.
//! 2. **Move.** The live structures are listed (header section, log,
//!    regions, blocks with data, sector bitmaps); the gaps between them are
//!    holes. In batches, blocks taken from the end of the file are copied
//!    into the lowest hole below them, the copies flushed, and only then the
//!    BAT entries switched through the log. A block's old place becomes a
//!    hole for the next batch only once that commit is durable, so a crash
//!    finds every block either at its old place (untouched) or at its new
//!    one (complete). A BAT or metadata region above a hole that fits it
//!    moves the same way, switched in both region table copies by one log
//!    entry.
//! 3. **Truncate** after the last live structure, once a log entry records
//!    the smaller size.
//!
//! Neither step changes what the disk presents, so the DataWriteGuid stays
//! (children of a compacted parent remain valid); the FileWriteGuid changes.
//! Fixed disks are refused: the format keeps every block of a fixed disk
//! allocated.

use alloc::vec::Vec;

use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, PayloadState};
use crate::format::guid::{BAT_REGION, METADATA_REGION};
use crate::format::{round_up_mib, HEADER_SECTION_SIZE, MIB};

/// Bytes of blocks moved per commit.
const BATCH_BYTES: u64 = 64 * MIB;
/// Bytes copied at once.
const COPY_CHUNK: u64 = 4 * MIB;

/// What [`Disk::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// The file's size before.
    pub file_size_before: u64,
    /// The file's size after.
    pub file_size_after: u64,
    /// Payload blocks that held only zeros (or lay past the virtual size)
    /// and are no longer stored.
    pub blocks_released: u64,
    /// Payload blocks released because they lay wholly in space the caller
    /// named free ([`Disk::compact_free_with_progress`]: the guest
    /// filesystems' free space), whatever they held; not counted in
    /// `blocks_released`.
    pub blocks_freed: u64,
    /// Sector bitmap blocks no longer needed.
    pub bitmaps_released: u64,
    /// Blocks and regions moved towards the start of the file.
    pub structures_moved: u64,
    /// Bytes copied by those moves.
    pub bytes_moved: u64,
}

/// Whether `[start, start + len)` lies wholly in one range of `free`
/// (sorted, disjoint).
fn covered(free: &[(u64, u64)], start: u64, len: u64) -> bool {
    let i = free.partition_point(|&(s, _)| s <= start);
    i > 0 && {
        let (s, l) = free[i - 1];
        start + len <= s + l
    }
}

/// A live structure of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A payload or sector bitmap block, by BAT index: it can move.
    Block(usize),
    /// The BAT or metadata region: it can move through the region table.
    Region(crate::format::guid::Guid),
    /// The header section, the log, other regions: they stay.
    Fixed,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    offset: u64,
    len: u64,
    item: Item,
}

impl Image {
    /// Releases the sector bitmap blocks of chunks without a partially
    /// present block; returns how many.
    fn release_unused_bitmaps(&mut self) -> Result<u64> {
        let g = *self.table.geometry();
        let mut released = 0;
        for chunk in 0..g.sector_bitmap_blocks {
            let sb = g.sector_bitmap_index(chunk);
            if !self.bat(sb)?.sector_bitmap_present() {
                continue;
            }
            let first = g.payload_index(chunk * g.chunk_ratio);
            let mut used = false;
            for i in first..sb {
                used |= self.bat(i)?.payload_state() == Some(PayloadState::PartiallyPresent);
            }
            if !used {
                self.set_bat_entry(sb, BatEntry::EMPTY)?;
                released += 1;
            }
        }
        Ok(released)
    }

    /// Every live structure, by offset.
    fn live_structures(&self) -> Result<Vec<Live>> {
        let g = self.table.geometry();
        let mut live = alloc::vec![Live { offset: 0, len: HEADER_SECTION_SIZE, item: Item::Fixed }];
        if self.header.log_length > 0 {
            live.push(Live { offset: self.header.log_offset, len: self.header.log_length as u64, item: Item::Fixed });
        }
        for r in &self.regions.entries {
            let item =
                if r.guid == BAT_REGION || r.guid == METADATA_REGION { Item::Region(r.guid) } else { Item::Fixed };
            live.push(Live { offset: r.file_offset, len: r.length as u64, item });
        }
        self.scan_bat(|index, e| {
            let len = if g.is_sector_bitmap_index(index) {
                if !(g.has_parent && e.sector_bitmap_present()) {
                    return Ok(());
                }
                MIB
            } else if e.payload_state().is_some_and(|s| s.has_data()) {
                g.block_size as u64
            } else {
                return Ok(());
            };
            live.push(Live { offset: e.file_offset(), len, item: Item::Block(index) });
            Ok(())
        })?;
        live.sort_unstable_by_key(|l| l.offset);
        Ok(live)
    }

    /// The gaps between live structures, below the end of the file.
    fn holes(&self, live: &[Live]) -> Vec<(u64, u64)> {
        let end = round_up_mib(self.space.len());
        let mut holes = Vec::new();
        let mut at = HEADER_SECTION_SIZE;
        for l in live {
            if l.offset > at {
                holes.push((at, l.offset - at));
            }
            at = at.max(l.offset + l.len);
        }
        if end > at {
            holes.push((at, end - at));
        }
        holes
    }

    /// Moves structures from the end of the file into the lowest holes
    /// below them: a batch of blocks, or one region (the highest movable
    /// structure decides which). Returns whether anything moved.
    fn move_batch(&mut self, report: &mut CompactReport, moved: &mut dyn FnMut(u64)) -> Result<bool> {
        let live = self.live_structures()?;
        let mut holes = self.holes(&live);
        let mut plan: Vec<(usize, u64, u64, u64)> = Vec::new(); // (index, from, to, len)
        let mut bytes = 0;
        for l in live.iter().rev() {
            if l.item == Item::Fixed {
                continue;
            }
            let Some(h) = holes.iter_mut().find(|h| h.1 >= l.len && h.0 + l.len <= l.offset) else {
                continue;
            };
            match l.item {
                Item::Block(index) => {
                    plan.push((index, l.offset, h.0, l.len));
                    h.0 += l.len;
                    h.1 -= l.len;
                    bytes += l.len;
                    if bytes >= BATCH_BYTES {
                        break;
                    }
                }
                Item::Region(guid) if plan.is_empty() => {
                    self.move_region(guid, l.offset, h.0, l.len)?;
                    report.structures_moved += 1;
                    report.bytes_moved += l.len;
                    moved(l.len);
                    return Ok(true);
                }
                _ => break,
            }
        }
        if plan.is_empty() {
            return Ok(false);
        }
        let mut buf = alloc::vec![0u8; COPY_CHUNK as usize];
        for &(_, from, to, len) in &plan {
            self.copy_file_range(&mut buf, from, to, len)?;
            moved(len);
        }
        self.storage.flush().during("flushing moved blocks", 0)?;
        for &(index, _, to, len) in &plan {
            let state = self.bat(index)?.state_bits();
            self.set_bat_entry(index, BatEntry::new(state, to))?;
            report.structures_moved += 1;
            report.bytes_moved += len;
        }
        self.commit_metadata()?;
        Ok(true)
    }

    /// Copies `len` file bytes from `from` to `to` (bytes past the end of
    /// the file read as zeros), growing the known file length as needed.
    fn copy_file_range(&mut self, buf: &mut [u8], from: u64, to: u64, len: u64) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.read_file(&mut buf[..n], from + done, "reading a block to move")?;
            let at = to + done;
            self.storage.write_all_at(&buf[..n], at).during("writing a moved block", at)?;
            done += n as u64;
        }
        let grown = self.space.len().max(to + len);
        self.space.set_len(grown);
        Ok(())
    }

    /// Moves the BAT or metadata region (`len` bytes at `from`) to the hole
    /// at `to`: copied and flushed, then switched in both region tables.
    fn move_region(&mut self, guid: crate::format::guid::Guid, from: u64, to: u64, len: u64) -> Result<()> {
        if guid == BAT_REGION {
            self.write_bat_copy(to, len)?;
        } else {
            let mut buf = alloc::vec![0u8; COPY_CHUNK as usize];
            self.copy_file_range(&mut buf, from, to, len)?;
            self.storage.flush().during("flushing a moved region", to)?;
        }
        self.switch_region(guid, to, len as u32)
    }
}

impl Disk {
    /// Compacts the image in place: blocks holding only zeros stop being
    /// stored (NOT_PRESENT in a dynamic disk; ZERO, or NOT_PRESENT over a
    /// parent that holds nothing there, in a differencing one), blocks and
    /// the BAT or metadata region move from the end of the file into the
    /// holes, and the file is cut after the last structure. Each block's copy
    /// is durable before the BAT points at it (through the log), and its old
    /// place is reused only after that. What the disk presents is unchanged,
    /// and so is its DataWriteGuid (children stay valid). Fixed disks are
    /// refused (convert them to dynamic first).
    ///
    /// ```
    /// use vhdx::{CreateOptions, Disk, MemStorage};
    /// # fn main() -> vhdx::Result<()> {
    /// let opts = CreateOptions::dynamic(64 << 20).block_size(1 << 20);
    /// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &opts, None)?;
    /// disk.write_at(&[1u8; 4 << 20], 0)?;
    /// disk.discard(0, 3 << 20)?;
    /// let report = disk.compact()?;
    /// assert!(report.file_size_after < report.file_size_before);
    /// # Ok(()) }
    /// ```
    pub fn compact(&mut self) -> Result<CompactReport> {
        self.compact_with_progress(&mut |_, _| {})
    }

    /// [`Disk::compact`], calling `progress(done, total)` (bytes scanned
    /// and moved, and an estimate of all there is to do) as it goes.
    pub fn compact_with_progress(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<CompactReport> {
        self.compact_free_with_progress(&[], progress)
    }

    /// [`Disk::compact_with_progress`], also releasing every stored payload
    /// block that lies wholly in `free` (sorted, disjoint byte ranges of the
    /// virtual disk that nothing reads: the guest filesystems' free space,
    /// [`crate::ops::fs`]), whatever it holds. Such a block becomes
    /// NOT_PRESENT: it reads as zeros in a dynamic disk and as the parent
    /// in a differencing one. A block only partly in `free` is released
    /// only when the rest of it reads as zeros (an inode table not yet
    /// initialised, say), and then reads as zeros throughout (ZERO in a
    /// differencing disk); otherwise it stays as it is. The release is
    /// committed through the log like every other. Releasing such a block
    /// changes what the disk presents in free space, so the disk takes a
    /// new DataWriteGuid: differencing disks made from it no longer open
    /// over it ([`crate::ops::compact::compact_with`] looks for them first
    /// and keeps the free space when it finds any).
    pub fn compact_free_with_progress(
        &mut self,
        free: &[(u64, u64)],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CompactReport> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        if self.image.params.leave_block_allocated {
            return Err(Error::invalid(
                "a fixed disk keeps every block allocated and cannot be compacted (convert it to a dynamic disk)",
            ));
        }
        self.flush()?;
        // Blocks are moved below: the table must be whole (no two blocks
        // overlapping) before any of them is.
        self.image.check_whole_bat()?;
        self.image.begin_metadata_change()?;
        let mut report = CompactReport { file_size_before: self.image.space.len(), ..Default::default() };
        let bs = self.image.params.block_size as u64;
        let mut data_blocks: Vec<usize> = Vec::new();
        let g = *self.image.table.geometry();
        self.image.scan_bat(|i, e| {
            if !g.is_sector_bitmap_index(i) && e.has_data() {
                data_blocks.push(i);
            }
            Ok(())
        })?;
        let mut total = data_blocks.len() as u64 * bs;
        let mut done = 0u64;
        progress(done, total);

        // 1. Release.
        for &index in &data_blocks {
            if self.release_if_free(index, free)? {
                report.blocks_freed += 1;
            } else if self.release_if_empty(index)? {
                report.blocks_released += 1;
            }
            done += bs;
            progress(done, total);
        }
        if self.image.params.has_parent {
            report.bitmaps_released = self.image.release_unused_bitmaps()?;
        }
        self.image.commit_metadata()?;

        // 2. Move: the bytes above the packed size must move at least.
        let live = self.image.live_structures()?;
        let packed: u64 = live.iter().map(|l| l.len).sum();
        total += live.iter().filter(|l| l.item != Item::Fixed && l.offset >= packed).map(|l| l.len).sum::<u64>();
        progress(done, total);
        while self.image.move_batch(&mut report, &mut |n| {
            done += n;
            progress(done, total);
        })? {}

        // 3. Truncate.
        report.file_size_after = self.image.trim_file_end()?;
        self.flush()?;
        progress(total.max(done), total.max(done));
        Ok(report)
    }

    /// The virtual range `(start, length)` of the payload block at BAT index
    /// `index` (`None` past the virtual size).
    fn block_range(&self, index: usize) -> Option<(u64, u64)> {
        let g = *self.image.table.geometry();
        let bs = g.block_size as u64;
        let block = index as u64 - index as u64 / (g.chunk_ratio + 1);
        let start = block * bs;
        (block < g.payload_blocks).then(|| (start, (start + bs).min(self.image.params.virtual_size) - start))
    }

    /// How many stored payload blocks [`Disk::compact_free_with_progress`]
    /// would release for `free`: those wholly in it, and those partly in it
    /// whose other bytes read as zeros.
    pub fn blocks_in(&self, free: &[(u64, u64)]) -> Result<u64> {
        Ok(self.releasable_blocks(free)?.len() as u64)
    }

    /// The virtual offsets of the blocks [`Disk::blocks_in`] counts.
    pub(crate) fn releasable_blocks(&self, free: &[(u64, u64)]) -> Result<Vec<u64>> {
        let g = self.image.table.geometry();
        let mut out = Vec::new();
        let mut stored = Vec::new();
        self.image.scan_bat(|i, e| {
            if !g.is_sector_bitmap_index(i) && e.has_data() {
                stored.push(i);
            }
            Ok(())
        })?;
        for i in stored {
            if self.free_release(i, free)?.is_some() {
                out.push(self.block_range(i).expect("released blocks lie in the disk").0);
            }
        }
        Ok(out)
    }

    /// Releases the block at BAT index `index` when it lies wholly in
    /// `free` (it becomes NOT_PRESENT), or when it lies partly in `free`
    /// and every byte of it outside `free` reads as zeros (it becomes
    /// NOT_PRESENT in a dynamic disk, ZERO in a differencing one: those
    /// bytes go on reading as zeros); returns whether it did.
    fn release_if_free(&mut self, index: usize, free: &[(u64, u64)]) -> Result<bool> {
        let Some(state) = self.free_release(index, free)? else { return Ok(false) };
        // What the disk presents in free space changes (what deleted files
        // left there reads as zeros, or as the parent): a change a reader
        // can see, so the disk takes a new DataWriteGuid first, and children
        // made from it no longer take it for their parent.
        self.image.begin_data_change()?;
        let start = self.block_range(index).expect("a block in the disk").0;
        if self.image.bat(index)?.payload_state() == Some(PayloadState::PartiallyPresent) {
            self.image.clear_block_bitmap(start / self.image.params.block_size as u64)?;
        }
        self.image.set_bat_entry(index, BatEntry::payload(state, 0))?;
        Ok(true)
    }

    /// The state the stored payload block at BAT index `index` takes when
    /// released for `free` (see [`Disk::release_if_free`]), or `None`.
    fn free_release(&self, index: usize, free: &[(u64, u64)]) -> Result<Option<PayloadState>> {
        let Some((start, len)) = self.block_range(index) else { return Ok(None) };
        let state = if covered(free, start, len) {
            PayloadState::NotPresent
        } else {
            // The parts of the block the filesystems use.
            let lo = free.partition_point(|&(s, l)| s + l <= start);
            let inside: Vec<(u64, u64)> = free[lo..]
                .iter()
                .take_while(|&&(s, _)| s < start + len)
                .map(|&(s, l)| (s.max(start), (s + l).min(start + len) - s.max(start)))
                .collect();
            if inside.is_empty() {
                return Ok(None);
            }
            let mut used = Vec::new();
            let mut at = start;
            for &(s, l) in &inside {
                if s > at {
                    used.push((at, s - at));
                }
                at = s + l;
            }
            if at < start + len {
                used.push((at, start + len - at));
            }
            let mut buf = alloc::vec![0u8; COPY_CHUNK as usize];
            for (s, l) in used {
                let mut pos = s;
                while pos < s + l {
                    let n = (s + l - pos).min(buf.len() as u64) as usize;
                    crate::BlockDevice::read_at(self, &mut buf[..n], pos)?;
                    if buf[..n].iter().any(|&b| b != 0) {
                        return Ok(None);
                    }
                    pos += n as u64;
                }
            }
            if self.image.params.has_parent {
                PayloadState::Zero
            } else {
                PayloadState::NotPresent
            }
        };
        Ok(Some(state))
    }

    /// Releases the block at BAT index `index` when it stores nothing the
    /// disk needs; returns whether it did.
    fn release_if_empty(&mut self, index: usize) -> Result<bool> {
        let g = *self.image.table.geometry();
        let bs = g.block_size as u64;
        let block = index as u64 - index as u64 / (g.chunk_ratio + 1);
        let entry = self.image.bat(index)?;
        let state = entry.payload_state();
        let base = entry.file_offset();
        let block_start = block * bs;
        if block >= g.payload_blocks {
            // Past the virtual size: nobody reads it.
            if state == Some(PayloadState::PartiallyPresent) {
                self.image.clear_block_bitmap(block)?;
            }
            self.image.set_bat_entry(index, BatEntry::EMPTY)?;
            return Ok(true);
        }
        let visible = (block_start + bs).min(self.image.params.virtual_size) - block_start;
        // The stored runs of the block, relative to its start.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        if state == Some(PayloadState::PartiallyPresent) {
            self.image.resolve(block_start, visible, |at, n, e| {
                if matches!(e, super::Extent::Data { .. }) {
                    runs.push((at - block_start, n));
                }
                Ok(())
            })?;
        } else {
            runs.push((0, visible));
        }
        let mut buf = alloc::vec![0u8; COPY_CHUNK.min(bs) as usize];
        for &(start, len) in &runs {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(buf.len() as u64) as usize;
                self.image.read_file(&mut buf[..n], base + start + at, "reading payload")?;
                if buf[..n].iter().any(|&b| b != 0) {
                    return Ok(false);
                }
                at += n as u64;
            }
        }
        let new_state = if !self.image.params.has_parent {
            PayloadState::NotPresent
        } else {
            let parent_zero = match self.parent() {
                Some(p) => super::discard::reads_zero_structurally(p, block_start, visible)?,
                None => false,
            };
            if parent_zero || runs.is_empty() {
                PayloadState::NotPresent
            } else if state == Some(PayloadState::FullyPresent) {
                PayloadState::Zero
            } else {
                // Zeros in some sectors, the parent's data in the others.
                return Ok(false);
            }
        };
        if state == Some(PayloadState::PartiallyPresent) {
            self.image.clear_block_bitmap(block)?;
        }
        self.image.set_bat_entry(index, BatEntry::payload(new_state, 0))?;
        Ok(true)
    }
}
