//! Resolving virtual ranges to extents, and reading and writing through them.
//!
//! `resolve` turns a virtual byte range into runs — data at a file offset,
//! zeros, or the parent's data — coalescing neighbours, so a read issues one
//! positioned request per contiguous run rather than one per block or sector.

use alloc::vec::Vec;

use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, PayloadState};

/// Where a run of virtual bytes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Extent {
    /// Stored in this file at `file_offset`.
    Data {
        /// File offset of the run's first byte.
        file_offset: u64,
    },
    /// Reads as zeros.
    Zero,
    /// Not in this file: the parent's data (zeros when opened without a parent).
    Parent,
}

/// Where a block's bytes come from.
#[derive(Debug, Clone, Copy)]
enum BlockSource {
    /// All of them from one place.
    Whole(Extent),
    /// Sector by sector from the sector bitmap: present ones at `base` + their
    /// offset in the block, the others from the parent.
    Sectors { base: u64 },
}

/// Where the bitmap bits of a range inside one block lie ([`Image::bitmap_span`]).
struct BitmapSpan {
    /// The chunk, and its sector bitmap block's file offset.
    chunk: u64,
    bitmap_block: u64,
    /// The block's index within its chunk.
    index: u64,
    /// First and last sector of the range, within the block.
    first_sector: u64,
    last_sector: u64,
    /// The byte of `first_sector`'s bit within the block's slice, that byte
    /// within the bitmap block, and the bytes from there to `last_sector`'s.
    byte_lo: u64,
    rel: u64,
    len: usize,
}

/// One run of [`Disk::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    /// Virtual offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Where the bytes come from.
    pub extent: Extent,
}

/// Reads the parent's bytes at `at`. A child may be larger than its parent
/// (after it was grown): what lies past the parent's end reads as zeros.
pub(crate) fn read_parent(parent: &Disk, dst: &mut [u8], at: u64) -> Result<()> {
    crate::block::read_or_zeros(parent, dst, at)
}

/// Payload blocks above which [`ancestor_skips`] builds no table (one byte per
/// block: 8 MiB, a 16 TiB disk of 2 MiB blocks); larger chains walk level by
/// level.
const SKIP_TABLE_MAX_BLOCKS: u64 = 1 << 23;

/// For a disk with the given parameters attached to `parent`: for each
/// payload block, how many ancestors beyond `parent` hold nothing of that
/// block (NOT_PRESENT with their own parent attached), so a read that leaves
/// the block to the parent can go straight past them. Built from the parent's
/// own table, so it costs one pass over the parent's BAT. Empty (no skipping)
/// unless the parent has the same block size and virtual size, so a block
/// index means the same bytes at every level it covers.
pub(crate) fn ancestor_skips(parent: &Disk, params: &crate::format::metadata::DiskParameters) -> Result<Vec<u8>> {
    let blocks = parent.image.table.geometry().payload_blocks;
    let grandparent_matches = parent.parent.as_deref().is_some_and(|g| {
        g.image.params.block_size == parent.image.params.block_size
            && g.image.params.virtual_size == parent.image.params.virtual_size
    });
    if parent.image.params.block_size != params.block_size
        || parent.image.params.virtual_size != params.virtual_size
        || !grandparent_matches
        || blocks > SKIP_TABLE_MAX_BLOCKS
        || parent.image.table.geometry().table_bytes() > parent.image.table.cache_bytes() as u64
    {
        return Ok(Vec::new());
    }
    (0..blocks)
        .map(|block| {
            if parent.image.payload_state(block)? != Some(PayloadState::NotPresent) {
                return Ok(0);
            }
            let further = parent.skip.get(block as usize).copied().unwrap_or(0);
            Ok(further.saturating_add(1))
        })
        .collect()
}

impl Image {
    pub(crate) fn payload_state(&self, block: u64) -> Result<Option<PayloadState>> {
        Ok(self.bat_payload(block)?.payload_state())
    }

    /// Where the bytes of `block` come from: one source for the whole block
    /// (`Data` at the block's file offset), or per sector from the bitmap.
    fn block_source(&self, block: u64) -> Result<BlockSource> {
        let entry = self.bat_payload(block)?;
        Ok(match entry.payload_state() {
            Some(PayloadState::FullyPresent) => BlockSource::Whole(Extent::Data { file_offset: entry.file_offset() }),
            Some(PayloadState::PartiallyPresent) => BlockSource::Sectors { base: entry.file_offset() },
            Some(PayloadState::NotPresent) if self.params.has_parent => BlockSource::Whole(Extent::Parent),
            _ => BlockSource::Whole(Extent::Zero),
        })
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        self.check_range_u64(offset, len as u64)
    }

    pub(crate) fn check_range_u64(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.params.virtual_size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Calls `f(virtual_offset, length, extent)` for each coalesced run of
    /// `[offset, offset + len)`, in order.
    pub(crate) fn resolve(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, Extent) -> Result<()>,
    ) -> Result<()> {
        let bs = self.params.block_size as u64;
        let mut pending: Option<(u64, u64, Extent)> = None;
        let mut emit = |at: u64, n: u64, e: Extent, pending: &mut Option<(u64, u64, Extent)>| -> Result<()> {
            if let Some((p_at, p_len, p_e)) = pending {
                let joins = match (*p_e, e) {
                    (Extent::Data { file_offset: a }, Extent::Data { file_offset: b }) => a + *p_len == b,
                    (Extent::Zero, Extent::Zero) | (Extent::Parent, Extent::Parent) => true,
                    _ => false,
                };
                if joins && *p_at + *p_len == at {
                    *p_len += n;
                    return Ok(());
                }
                f(*p_at, *p_len, *p_e)?;
            }
            *pending = Some((at, n, e));
            Ok(())
        };
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            match self.block_source(block)? {
                BlockSource::Whole(Extent::Data { file_offset }) => {
                    emit(pos, n, Extent::Data { file_offset: file_offset + in_block }, &mut pending)?
                }
                BlockSource::Whole(e) => emit(pos, n, e, &mut pending)?,
                BlockSource::Sectors { base } => {
                    self.for_each_bitmap_run(block, in_block, n, |at, run, present| {
                        let e = if present {
                            Extent::Data { file_offset: base + (at - block * bs) }
                        } else {
                            Extent::Parent
                        };
                        emit(at, run, e, &mut pending)
                    })?;
                }
            }
            pos += n;
        }
        if let Some((at, n, e)) = pending {
            f(at, n, e)?;
        }
        Ok(())
    }

    /// Where the bitmap bits of sectors under `[in_block, in_block + n)` of
    /// payload `block` lie. Block and sector sizes are powers of two, so
    /// shifts and masks do the arithmetic.
    fn bitmap_span(&self, block: u64, in_block: u64, n: u64) -> Result<BitmapSpan> {
        let g = self.table.geometry();
        let sector_shift = g.logical_sector_size.trailing_zeros();
        let chunk = block >> g.chunk_ratio.trailing_zeros();
        let index = block & (g.chunk_ratio - 1);
        let first_sector = in_block >> sector_shift;
        let last_sector = (in_block + n - 1) >> sector_shift;
        let byte_lo = first_sector / 8;
        let bytes_per_block = (g.block_size >> sector_shift) as u64 / 8;
        Ok(BitmapSpan {
            chunk,
            bitmap_block: self.sector_bitmap_block(block, chunk)?,
            index,
            first_sector,
            last_sector,
            byte_lo,
            rel: index * bytes_per_block + byte_lo,
            len: (last_sector / 8 - byte_lo + 1) as usize,
        })
    }

    /// Where the sector bitmap block of partially present `block` (of chunk
    /// `chunk`) is in the file; an error naming the entry when its chunk
    /// has none.
    pub(crate) fn sector_bitmap_block(&self, block: u64, chunk: u64) -> Result<u64> {
        let g = self.table.geometry();
        let sb = self.bat(g.sector_bitmap_index(chunk))?;
        if !sb.sector_bitmap_present() {
            let index = g.payload_index(block);
            return Err(Error::corrupt(
                "BAT entry",
                self.table.offset() + index as u64 * 8,
                alloc::format!("entry {index} is partially present but chunk {chunk} has no sector bitmap"),
            ));
        }
        Ok(sb.file_offset())
    }

    /// Walks the sector bitmap of a partially present `block` over
    /// `[in_block, in_block + n)` and reports runs of present / absent sectors
    /// as virtual offsets.
    fn for_each_bitmap_run(
        &self,
        block: u64,
        in_block: u64,
        n: u64,
        mut f: impl FnMut(u64, u64, bool) -> Result<()>,
    ) -> Result<()> {
        let g = self.table.geometry();
        let ss = g.logical_sector_size as u64;
        let BitmapSpan { chunk, bitmap_block, first_sector, last_sector, byte_lo, rel, len, .. } =
            self.bitmap_span(block, in_block, n)?;
        let block_start = block * g.block_size as u64;
        let range_start = block_start + in_block;
        let range_end = range_start + n;
        self.with_bitmap_bytes(chunk, bitmap_block, rel, len, |bits| {
            let bit = |s: u64| bits[(s / 8 - byte_lo) as usize] >> (s % 8) & 1 == 1;
            let mut s = first_sector;
            while s <= last_sector {
                let present = bit(s);
                let mut e = s + 1;
                while e <= last_sector && bit(e) == present {
                    e += 1;
                }
                let lo = (block_start + s * ss).max(range_start);
                let hi = (block_start + e * ss).min(range_end);
                f(lo, hi - lo, present)?;
                s = e;
            }
            Ok(())
        })
    }

    /// Whether the sectors under `[in_block, in_block + n)` of a partially
    /// present `block` are all present (`Some(true)`), all absent
    /// (`Some(false)`) or mixed (`None`). Lets a read inside one block go
    /// straight to this file or to the parent without building runs.
    fn bitmap_uniform(&self, block: u64, in_block: u64, n: u64) -> Result<Option<bool>> {
        let BitmapSpan { chunk, bitmap_block, index, first_sector: first, last_sector: last, byte_lo, rel, len } =
            self.bitmap_span(block, in_block, n)?;
        // With nothing uncommitted, the cached summary of the block's bitmap
        // answers most reads without touching the bitmap bytes.
        if self.dirty_pages.is_empty() && !self.shared_bits_in(bitmap_block + rel, bitmap_block + rel + len as u64) {
            if let Some(answer) =
                self.bitmap_cache.uniform(chunk, index as usize, byte_lo as usize, byte_lo as usize + len - 1)
            {
                return Ok(Some(answer));
            }
        }
        self.with_bitmap_bytes(chunk, bitmap_block, rel, len, |bits| {
            // Mask the bits of the first and last bytes that lie outside the
            // range; every byte must then be all ones or all zeros.
            let lo_mask = 0xFFu8 << (first % 8);
            let hi_mask = 0xFFu8 >> (7 - last % 8);
            let mut ones = true;
            let mut zeros = true;
            for (i, &b) in bits.iter().enumerate() {
                let mut mask = 0xFFu8;
                if i == 0 {
                    mask &= lo_mask;
                }
                if i == bits.len() - 1 {
                    mask &= hi_mask;
                }
                ones &= b & mask == mask;
                zeros &= b & mask == 0;
                if !ones && !zeros {
                    return Ok(None);
                }
            }
            Ok(Some(ones))
        })
    }

    /// Calls `f` with `len` bytes at `rel` in the sector bitmap block of
    /// chunk `chunk`, at `bitmap_block` in the file, as the disk currently
    /// presents them: the committed block (cached) with uncommitted pages
    /// laid over it. Borrows the cache directly when no uncommitted page is
    /// involved.
    fn with_bitmap_bytes<R>(
        &self,
        chunk: u64,
        bitmap_block: u64,
        rel: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        let at = bitmap_block + rel;
        let per_block = (self.table.geometry().sectors_per_block() / 8) as usize;
        let block = self.bitmap_cache.get(chunk, || {
            let mut b = alloc::vec![0u8; crate::format::MIB as usize];
            self.read_file(&mut b, bitmap_block, "reading a sector bitmap")?;
            Ok(super::cache::ChunkBitmaps::compact(&b, per_block))
        })?;
        // Callers ask for bytes of one block's slice.
        let committed = block.bytes(rel as usize, len);
        debug_assert_eq!(committed.len(), len);
        let end = at + len as u64;
        let shared = self.shared_bits_in(at, end);
        if !shared && self.dirty_pages.range(at.saturating_sub(4095)..end).next().is_none() {
            return f(committed);
        }
        let mut bits = committed.to_vec();
        // Every pending page is 4 KiB, so each one the range finds overlaps
        // [at, end) by at least a byte.
        for (&page_at, page) in self.dirty_pages.range(at.saturating_sub(4095)..end) {
            let lo = page_at.max(at);
            let hi = (page_at + page.len() as u64).min(end);
            bits[(lo - at) as usize..(hi - at) as usize]
                .copy_from_slice(&page[(lo - page_at) as usize..(hi - page_at) as usize]);
        }
        // Pages changed through `&self` are newer than those changed through
        // `&mut` (they started from them).
        #[cfg(feature = "std")]
        if shared {
            self.shared_bits.overlay(at, &mut bits);
        }
        f(&bits)
    }

    /// Reads file bytes; past the end of the file reads zeros (old QEMU images
    /// end inside their last block).
    pub(crate) fn read_file(&self, buf: &mut [u8], at: u64, what: &'static str) -> Result<()> {
        let avail = self.space.len().saturating_sub(at).min(buf.len() as u64) as usize;
        if avail > 0 {
            self.storage.read_exact_at(&mut buf[..avail], at).during(what, at)?;
        }
        if avail < buf.len() {
            buf[avail..].fill(0);
        }
        Ok(())
    }

    /// [`Disk::write_at`] into a fixed or dynamic disk.
    fn write_dynamic(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.begin_data_change()?;
        let bs = self.params.block_size as u64;
        let mut pos = offset;
        let end = offset + buf.len() as u64;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let entry = self.bat_payload(block)?;
            let base = match entry.payload_state() {
                Some(PayloadState::FullyPresent) => entry.file_offset(),
                _ => self.allocate_block(block)?,
            };
            // Extend the write over following blocks that are contiguous in the file.
            let mut run = n;
            while pos + run < end {
                let next = (pos + run) / bs;
                let e = self.bat_payload(next)?;
                if e.payload_state() != Some(PayloadState::FullyPresent)
                    || e.file_offset() != base + (next - block) * bs
                {
                    break;
                }
                run += (bs).min(end - pos - run);
            }
            let src = &buf[(pos - offset) as usize..(pos - offset + run) as usize];
            let at = base + in_block;
            self.storage.write_all_at(src, at).during("writing payload", at)?;
            pos += run;
        }
        Ok(())
    }

    /// Allocates a new zero-filled block for payload block `block` past every
    /// structure, records it in the in-memory BAT (dirty until the next flush)
    /// and returns its file offset.
    pub(crate) fn allocate_block(&mut self, block: u64) -> Result<u64> {
        self.allocate_block_as(block, PayloadState::FullyPresent)
    }

    /// Allocates a zero-filled block for `block` in `state`.
    pub(crate) fn allocate_block_as(&mut self, block: u64, state: PayloadState) -> Result<u64> {
        let at = self.grow_for(self.params.block_size as u64)?;
        let index = self.table.geometry().payload_index(block);
        self.set_bat_entry(index, BatEntry::payload(state, at))?;
        Ok(at)
    }

    /// Extends the file by `len` zero bytes past every structure and
    /// block; returns where they start. The first time in a session, the
    /// whole table is checked (no two blocks overlap) and its last block
    /// found: an image written by an old QEMU may end inside that block.
    pub(crate) fn grow_for(&mut self, len: u64) -> Result<u64> {
        self.find_blocks_end()?;
        self.space.grow(&mut *self.storage, len)
    }

    /// Before this session's first new block: checks the whole table and
    /// puts the allocation floor past its last block (see
    /// [`Image::grow_for`]).
    pub(crate) fn find_blocks_end(&mut self) -> Result<()> {
        if self.blocks_end.is_none() {
            let end = crate::format::round_up_mib(self.check_whole_bat()?);
            self.blocks_end = Some(end);
            self.space.raise_floor(end);
        }
        Ok(())
    }

    /// Sets BAT entry `index` (its page dirty until the next commit) so
    /// that a failing change can take it back.
    pub(crate) fn set_bat_entry(&mut self, index: usize, entry: BatEntry) -> Result<()> {
        let (old, newly_dirty) = self.put_bat_entry(index, entry)?;
        self.undo.bat_entry(index, old, newly_dirty);
        Ok(())
    }
}

impl Disk {
    /// The ancestor a read of `block` that this disk leaves to its parent
    /// should go to: the parent, or past the ancestors `skip` says hold
    /// nothing of the block.
    fn source_ancestor(&self, block: u64) -> Option<&Disk> {
        let mut d = self.parent.as_deref()?;
        for _ in 0..self.skip.get(block as usize).copied().unwrap_or(0) {
            d = d.parent.as_deref()?;
        }
        Some(d)
    }

    /// Reads `buf.len()` bytes of the virtual disk from `offset`. Any offset
    /// and length within the disk are allowed.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.image.check_range(offset, buf.len())?;
        // A read inside one block (the common case) walks down the chain
        // while each level leaves the block to its parent, without resolving
        // runs level by level; the general path takes over at a level whose
        // block is partly present (or when the read spans blocks).
        let len = buf.len() as u64;
        let mut disk = self;
        // Block and sector sizes are powers of two (checked at open), so
        // shifts and masks stand in for divisions here.
        while len > 0 && disk.image.params.block_size > 0 {
            let bs = disk.image.params.block_size as u64;
            let shift = bs.trailing_zeros();
            let block = offset >> shift;
            if block != (offset + len - 1) >> shift {
                break;
            }
            let in_block = offset & (bs - 1);
            match disk.image.block_source(block)? {
                BlockSource::Whole(Extent::Data { file_offset }) => {
                    return disk.image.read_file(buf, file_offset + in_block, "reading payload")
                }
                BlockSource::Whole(Extent::Zero) => {
                    buf.fill(0);
                    return Ok(());
                }
                BlockSource::Whole(Extent::Parent) => match disk.source_ancestor(block) {
                    Some(p) if offset + len <= p.image.params.virtual_size => disk = p,
                    _ => break,
                },
                BlockSource::Sectors { base } => match disk.image.bitmap_uniform(block, in_block, len)? {
                    Some(true) => return disk.image.read_file(buf, base + in_block, "reading payload"),
                    Some(false) => match disk.source_ancestor(block) {
                        Some(p) if offset + len <= p.image.params.virtual_size => disk = p,
                        _ => break,
                    },
                    None => break,
                },
            }
        }
        disk.read_resolved(buf, offset)
    }

    /// [`Disk::read_at`] of a range already checked, run by run.
    fn read_resolved(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.image.resolve(offset, buf.len() as u64, |at, n, extent| {
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            match extent {
                Extent::Data { file_offset } => self.image.read_file(dst, file_offset, "reading payload"),
                Extent::Zero => {
                    dst.fill(0);
                    Ok(())
                }
                Extent::Parent => match &self.parent {
                    Some(p) => read_parent(p, dst, at),
                    None => {
                        dst.fill(0);
                        Ok(())
                    }
                },
            }
        })
    }

    /// Writes `buf` to the virtual disk at `offset`. Any offset and length
    /// within the disk are allowed; new blocks are allocated as needed. The
    /// data is durable after the next [`Disk::flush`].
    ///
    /// A write that fails (the filesystem full, an I/O error) takes back the
    /// blocks it allocated and the sector bitmap bits it set, and gives their
    /// space back: reads then see what they saw before, except that bytes it
    /// wrote over data already stored may hold the new data (as with any
    /// file). The disk stays usable.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        self.image.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.image.params.has_parent {
            if self.parent.is_none() {
                return Err(Error::invalid("a differencing disk opened without its parent cannot take data writes"));
            }
            return self.undoable(|d| d.write_differencing(buf, offset));
        }
        self.undoable(|d| d.image.write_dynamic(buf, offset))
    }

    /// The allocation map: coalesced runs over the whole virtual disk.
    pub fn map(&self) -> Result<Vec<MapEntry>> {
        let mut out = Vec::new();
        self.image.resolve(0, self.image.params.virtual_size, |offset, length, extent| {
            out.push(MapEntry { offset, length, extent });
            Ok(())
        })?;
        Ok(out)
    }
}
