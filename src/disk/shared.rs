//! Writes from many threads at once: [`Disk::write_at_shared`] writes
//! through `&self` whatever lands in space the image already stores;
//! [`Disk::reserve_shared`] makes the space a write needs (new blocks, a
//! differencing disk's sector bitmap blocks) through `&self` while readers
//! run, and [`Disk::reserve`] (with `&mut self`) makes it when that cannot;
//! the data then goes in through `&self` ([`Disk::write_reserved`]; a
//! differencing disk's sectors then read as written after
//! [`Disk::commit_write_shared`], or [`Disk::commit_write`] with `&mut
//! self`, which sets their bitmap bits: until then they read the parent's
//! bytes).
//!
//! Share a disk as `RwLock<Disk>` and write with
//! [`crate::write_concurrently`]: reads, writes to stored blocks, new blocks
//! and a differencing disk's sector bits hold the lock shared and run in
//! parallel. Writers making new blocks or setting bits take turns on the
//! image's own allocation lock: grow the file, then set the block's entry in
//! a block-table page pinned in the cache, where readers see it without a
//! lock (see `table`); set a sector's bit, after its data is written, in a
//! copy of its bitmap page that readers find without a lock (see `bits`).
//! A differencing disk's writes of part of a sector also run shared
//! ([`Disk::write_and_commit_shared`]): each merges the parent's bytes into
//! its sector alone, while its disk's other writers of new sectors wait.
//! Only the session's first new block (new header GUIDs, the whole-table
//! check) and writers who find no room left to pin a page hold the
//! `RwLock` exclusively.
//! Flush with [`crate::flush_concurrently`]: when only such
//! shared allocations wait to be committed (and the session's first flush
//! has named its log), [`Disk::flush_shared`] commits them under the shared
//! hold, taking its turn on the allocation lock; otherwise [`Disk::flush`]
//! takes the `RwLock` exclusively, waiting for the writes in flight. Either
//! covers every write that returned before it.
//!
//! The writes through `&self` change no metadata: they touch payload bytes
//! of blocks already stored (and already made known to readers), so they
//! need no undo, no log entry and no bitmap change. What it cannot do
//! (a block not stored, sectors a differencing disk does not hold yet, the
//! session's first change, storage without shared writes) it declines
//! before writing anything, and the caller takes the exclusive path.

use alloc::vec::Vec;

use super::{Disk, Extent};
use crate::error::{Error, IoContext, Result};
#[cfg(feature = "std")]
use crate::format::bat::BatEntry;
use crate::format::bat::PayloadState;

impl Disk {
    /// Writes `buf` at `offset` through a shared reference when every byte
    /// lands in space this image stores already (a fixed disk's blocks, a
    /// dynamic disk's allocated blocks, sectors a differencing disk holds),
    /// this session has already made its first change, and the storage
    /// takes shared writes (files do). Returns `Ok(true)` when written,
    /// `Ok(false)` — having written nothing — when the write needs
    /// [`Disk::write_at`] (or [`Disk::reserve`] first).
    ///
    /// The data is durable after the next [`Disk::flush`], as with
    /// `write_at`. Writers of overlapping ranges at once leave either's
    /// bytes, as with any file.
    pub fn write_at_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        if let Some(answer) = self.before_shared(offset, buf.len() as u64)? {
            return Ok(answer);
        }
        let image = &self.image;
        // The common case, a write inside one fully present block, without
        // building runs: one entry, one positioned write.
        let len = buf.len() as u64;
        let bs = image.params.block_size as u64;
        if offset / bs == (offset + len - 1) / bs {
            let entry = image.bat_payload(offset / bs)?;
            let at = entry.file_offset() + offset % bs;
            if entry.payload_state() == Some(PayloadState::FullyPresent) && at + len <= image.space.len() {
                return self.write_targets(buf, offset, &[(offset, len, at)]);
            }
        }
        let Some(targets) = self.stored_targets(offset, len)? else { return Ok(false) };
        self.write_targets(buf, offset, &targets)
    }

    /// What every change through `&self` checks first: an error for a
    /// read-only disk or a range past the end; the answer at once for an
    /// empty range (done) or before the session's first change (declined);
    /// `None` when the change may go on.
    fn before_shared(&self, offset: u64, len: u64) -> Result<Option<bool>> {
        let image = &self.image;
        if !image.writable {
            return Err(Error::ReadOnly);
        }
        image.check_range_u64(offset, len)?;
        if len == 0 {
            return Ok(Some(true));
        }
        if !image.session.data_guid_changed || image.closed {
            return Ok(Some(false));
        }
        Ok(None)
    }

    /// Where `[offset, offset + len)` lies in this image's file, as
    /// `(virtual offset, length, file offset)` runs, when all of it is
    /// stored here and inside the file; `None` otherwise.
    fn stored_targets(&self, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64, u64)>>> {
        let image = &self.image;
        let file_len = image.space.len();
        let mut targets = Vec::new();
        let mut stored = true;
        image.resolve(offset, len, |at, n, extent| {
            match extent {
                Extent::Data { file_offset } if file_offset + n <= file_len => targets.push((at, n, file_offset)),
                _ => stored = false,
            }
            Ok(())
        })?;
        Ok(stored.then_some(targets))
    }

    /// Makes the space a write of `[offset, offset + len)` needs, so that
    /// the data can then go in through `&self`:
    /// - a fixed or dynamic disk: zero-filled blocks for the blocks not
    ///   stored (they read as zeros until written, as before), after which
    ///   [`Disk::write_at_shared`] writes the range: [`Reservation::Ready`];
    /// - a differencing disk, for whole sectors: the blocks placed in this
    ///   file with no sector present (so the range still reads the
    ///   parent's bytes), after which [`Disk::write_reserved`] writes the
    ///   data and [`Disk::commit_write`] sets the sectors' bitmap bits:
    ///   [`Reservation::NeedsCommit`];
    /// - a differencing disk and part of a sector: nothing
    ///   ([`Reservation::None`]: [`Disk::write_at`] merges the parent's
    ///   bytes in).
    ///
    /// The session's first change (new DataWriteGuid) comes first. Space
    /// reserved and never written stays allocated, reading as before;
    /// `compact` gives it back. A failure takes back what it reserved.
    pub fn reserve(&mut self, offset: u64, len: u64) -> Result<Reservation> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        self.image.check_range_u64(offset, len)?;
        let ss = self.image.params.logical_sector_size as u64;
        let differencing = self.image.params.has_parent;
        if differencing && (offset % ss != 0 || len % ss != 0 || self.parent.is_none()) {
            return Ok(Reservation::None);
        }
        let made = if differencing { Reservation::NeedsCommit } else { Reservation::Ready };
        if len == 0 {
            return Ok(made);
        }
        // With the session's first change made and the table checked, the
        // blocks are made as a shared allocator makes them, so that their
        // pages stay open to shared allocators after this. (Outside the
        // undo: what it makes is whole and stays, and an undo would cut
        // the file under it.)
        // The whole-table check runs only when a block is missing.
        #[cfg(feature = "std")]
        {
            self.image.begin_data_change()?;
            if self.reserve_shared(offset, len)? {
                return Ok(made);
            }
            if self.image.blocks_end.is_none() {
                self.image.find_blocks_end()?;
                if self.reserve_shared(offset, len)? {
                    return Ok(made);
                }
            }
        }
        if differencing {
            self.undoable(|d| d.image.place_differencing(offset, len))?;
            return Ok(Reservation::NeedsCommit);
        }
        self.undoable(|d| {
            let image = &mut d.image;
            image.begin_data_change()?;
            let bs = image.params.block_size as u64;
            for block in offset / bs..=(offset + len - 1) / bs {
                if image.bat_payload(block)?.payload_state() != Some(PayloadState::FullyPresent) {
                    image.allocate_block(block)?;
                }
            }
            Ok(Reservation::Ready)
        })
    }

    /// Makes the space a write of `[offset, offset + len)` needs through a
    /// shared reference, while readers and other writers run, as
    /// [`Disk::reserve`] makes it: a disk without a parent (fixed or
    /// dynamic) gets a zero-filled block for each block of the range it
    /// does not store, after which [`Disk::write_at_shared`] (or
    /// [`Disk::write_reserved`]) writes the range; a differencing disk
    /// gets the blocks of the range's sectors (whole, when it has only
    /// part of one) placed, still reading the parent's bytes, and their
    /// sector bitmap pages held, after which
    /// [`Disk::write_and_commit_shared`] writes the range and makes it
    /// present (for whole sectors, also [`Disk::write_reserved`] then
    /// [`Disk::commit_write_shared`]).
    /// Returns `Ok(true)` when that is done; `Ok(false)` when it cannot be
    /// done shared, and [`Disk::reserve`] (with `&mut self`) does it: the
    /// session's first change or first new block (the headers' new GUIDs,
    /// the whole-table check); a differencing disk opened without its
    /// parent; a block-table page changed by an
    /// exclusive call since the last flush, or no room left in the table's
    /// cache to pin the changed page, or in the held bitmap pages (256 of
    /// them, until the next exclusive flush); storage that cannot change
    /// its length through a shared reference.
    ///
    /// Allocating writers take turns on a lock of their own; readers, and
    /// writers into stored blocks, never wait for it. A reader sees a new
    /// block once its entry is set, after the file was extended for it:
    /// zeros until written. As with [`Disk::reserve`], the entries reach
    /// the file at the next [`Disk::flush`], through the log; blocks made
    /// and never written read as zeros, and a failure leaves the blocks
    /// made before it (each whole) in place.
    #[cfg(feature = "std")]
    pub fn reserve_shared(&self, offset: u64, len: u64) -> Result<bool> {
        if let Some(answer) = self.before_shared(offset, len)? {
            return Ok(answer);
        }
        let image = &self.image;
        let differencing = image.params.has_parent;
        if differencing && self.parent.is_none() {
            return Ok(false);
        }
        // A differencing disk's sectors are placed whole, those that the
        // range has only part of too (their merge is the commit's).
        let ss = image.params.logical_sector_size as u64;
        let (offset, len) = if differencing {
            let start = offset / ss * ss;
            (start, (offset + len).div_ceil(ss) * ss - start)
        } else {
            (offset, len)
        };
        image.check_range_u64(offset, len)?;
        let _turn = image.allocating.lock().unwrap_or_else(|e| e.into_inner());
        let bs = image.params.block_size as u64;
        for (block, in_block, n) in block_pieces(offset, len, bs) {
            let entry = image.bat_payload(block)?;
            let state = entry.payload_state();
            if state == Some(PayloadState::FullyPresent) {
                continue;
            }
            if state != Some(PayloadState::PartiallyPresent) {
                if image.blocks_end.is_none() {
                    // The session's first new block: the whole-table check first.
                    return Ok(false);
                }
                // A differencing disk's block that is not present becomes
                // partially present with no sector present, so that it
                // still reads the parent's bytes; any other block (one that
                // reads zeros, or any of a disk without a parent) fully
                // present over zeros.
                let partial = differencing && state == Some(PayloadState::NotPresent);
                if partial && (!self.sector_bitmap_shared(block)? || self.has_bits(block)?) {
                    // Bits left set by another writer: the exclusive path
                    // clears them (see `Image::place_partial`).
                    return Ok(false);
                }
                let made = if partial { PayloadState::PartiallyPresent } else { PayloadState::FullyPresent };
                let index = image.table.geometry().payload_index(block);
                if !self.place_shared(index, entry, bs, false, |at| BatEntry::payload(made, at))? {
                    return Ok(false);
                }
                if !partial {
                    continue;
                }
            }
            // A partially present block: the bitmap pages its bits fall in,
            // held so that the commit after the data can set them (a block
            // written whole needs none: it becomes fully present).
            if n < bs && !self.hold_bitmap_pages(block, in_block, n)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Chunk of `block` has a sector bitmap block, made through `&self`
    /// (zero-filled and backed by real space, as the exclusive path makes
    /// it) when it has none. `Ok(false)` when that cannot be done shared.
    #[cfg(feature = "std")]
    fn sector_bitmap_shared(&self, block: u64) -> Result<bool> {
        let image = &self.image;
        let g = *image.table.geometry();
        let index = g.sector_bitmap_index(block / g.chunk_ratio);
        let entry = image.bat(index)?;
        if entry.sector_bitmap_present() {
            return Ok(true);
        }
        let sb = |at| BatEntry::new(crate::format::bat::SB_PRESENT, at);
        self.place_shared(index, entry, crate::format::MIB, true, sb)
    }

    /// Sets BAT entry `index` (holding `old`) to `entry(at)` for `len` new
    /// bytes at `at`, the file grown for them: the page pinned first, so
    /// that the file grows only for an entry that has its place. With
    /// `backed` (a sector bitmap block), the space is backed by real space
    /// before the entry is set, so that applying its pages from the log
    /// never needs space. `Ok(false)` when it cannot be done shared
    /// (nothing changed then but, at worst, the file's length).
    #[cfg(feature = "std")]
    fn place_shared(
        &self,
        index: usize,
        old: BatEntry,
        len: u64,
        backed: bool,
        entry: impl FnOnce(u64) -> BatEntry,
    ) -> Result<bool> {
        let image = &self.image;
        let b = image.bounds();
        if !image.table.set_shared(&b, index, old)? {
            return Ok(false);
        }
        let Some(at) = image.space.grow_shared(&*image.storage, len) else { return Ok(false) };
        let at = at?;
        let new = entry(at);
        if backed {
            match image.storage.allocate_shared(at, len) {
                Some(done) => done.during("allocating a sector bitmap block", at)?,
                None => return Ok(false),
            }
        }
        if !image.table.set_shared(&b, index, new)? {
            // The page was pinned above and only `&mut` unpins it.
            return Err(Error::invalid("a pinned BAT page could not take its entry"));
        }
        Ok(true)
    }

    /// Holds (see `bits`) the sector bitmap pages that the bits of
    /// `[in_block, in_block + n)` of partially present `block` fall in,
    /// each copied as the disk presents it now. `Ok(false)` when no slot is
    /// left.
    #[cfg(feature = "std")]
    fn hold_bitmap_pages(&self, block: u64, in_block: u64, n: u64) -> Result<bool> {
        let image = &self.image;
        let (base, first, count) = self.bitmap_bits(block, in_block, n)?;
        let chunk = block / image.table.geometry().chunk_ratio;
        for (page_at, _, _) in super::diff::bitmap_runs(base, first, count) {
            if !image.shared_bits.hold(page_at, chunk, || image.metadata_page(page_at))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether any bit of `block`'s bitmap slice is set, as the disk
    /// presents it now.
    #[cfg(feature = "std")]
    fn has_bits(&self, block: u64) -> Result<bool> {
        let image = &self.image;
        let presented = |page_at| match image.shared_bits.get(page_at) {
            Some(held) => Ok(held.snapshot()),
            None => image.metadata_page(page_at),
        };
        Ok(!image.runs_with_bits(block, presented)?.is_empty())
    }

    /// Where the bitmap bits of the sectors of `[in_block, in_block + n)`
    /// of `block` are: (file offset of the block's bit 0, first bit, bits).
    #[cfg(feature = "std")]
    fn bitmap_bits(&self, block: u64, in_block: u64, n: u64) -> Result<(u64, u64, u64)> {
        let ss = self.image.params.logical_sector_size as u64;
        Ok((self.image.bitmap_base(block)?, in_block / ss, n.div_ceil(ss)))
    }

    /// [`Disk::commit_write`] through a shared reference, while readers and
    /// writers run: after the data of `[offset, offset + len)` is in the
    /// space [`Disk::reserve_shared`] (or [`Disk::reserve`]) made, a
    /// differencing disk's sectors are made present (their bitmap bits set,
    /// a block written whole made fully present); readers see them as
    /// written from then on. Returns `Ok(true)` when done (at once for a
    /// disk without a parent); `Ok(false)` when only `commit_write` (with
    /// `&mut self`) can finish it: bits set already stay set, and it sets
    /// the rest. The errors are `commit_write`'s.
    ///
    /// Committers take turns on the image's allocation lock, as writers
    /// making new blocks do; readers never wait for it. The bits reach the
    /// file at the next flush, through the log.
    #[cfg(feature = "std")]
    pub fn commit_write_shared(&self, offset: u64, len: u64) -> Result<bool> {
        if let Some(answer) = self.before_shared(offset, len)? {
            return Ok(answer);
        }
        let image = &self.image;
        let bs = image.params.block_size as u64;
        let ss = image.params.logical_sector_size as u64;
        for block in offset / bs..=(offset + len - 1) / bs {
            if !image.bat_payload(block)?.has_data() {
                return Err(Error::invalid(alloc::format!(
                    "commit_write of {len} bytes at {offset}: block {block} was not resolved for writing"
                )));
            }
        }
        if !image.params.has_parent {
            return Ok(true);
        }
        if offset % ss != 0 || len % ss != 0 {
            return Err(Error::invalid("a differencing disk's resolved writes are whole sectors"));
        }
        let _turn = image.allocating.lock().unwrap_or_else(|e| e.into_inner());
        let b = image.bounds();
        for (block, in_block, n) in block_pieces(offset, len, bs) {
            let entry = image.bat_payload(block)?;
            if entry.payload_state() != Some(PayloadState::PartiallyPresent) {
                continue;
            }
            if n == bs {
                let index = image.table.geometry().payload_index(block);
                let full = BatEntry::payload(PayloadState::FullyPresent, entry.file_offset());
                if !image.table.set_shared(&b, index, full)? {
                    return Ok(false);
                }
                continue;
            }
            let (base, first, count) = self.bitmap_bits(block, in_block, n)?;
            // Held by the reserve, as a rule; held now otherwise.
            let set = image.shared_bits.set_bits(base, first, count)
                || (self.hold_bitmap_pages(block, in_block, n)? && image.shared_bits.set_bits(base, first, count));
            if !set {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes `buf` at `offset` into the space [`Disk::reserve_shared`] (or
    /// [`Disk::reserve`]) made, and makes it read as written, through a
    /// shared reference while readers and other writers run: for a disk
    /// without a parent, [`Disk::write_reserved`]; for a differencing disk
    /// that and [`Disk::commit_write_shared`] as one step that no write of
    /// part of one of its sectors comes between. Part of a sector that the
    /// child does not hold yet is read (the parent's bytes), the new bytes
    /// merged in, and the sector written whole and made present; writers
    /// of part of a sector take turns with each other and with writers of
    /// whole sectors of this disk, while readers and writes into sectors
    /// the child holds go on. Returns `Ok(true)` when done; `Ok(false)`
    /// when only [`Disk::write_at`] (with `&mut self`) can finish it
    /// (another writer changed the range in between, no room to hold a
    /// bitmap page, a differencing disk opened without its parent): bytes
    /// may have been written into the reserved space without reading as
    /// written, and `write_at` writes the range again.
    #[cfg(feature = "std")]
    pub fn write_and_commit_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        if let Some(answer) = self.before_shared(offset, buf.len() as u64)? {
            return Ok(answer);
        }
        let image = &self.image;
        let whole = |buf: &[u8], at: u64| -> Result<bool> {
            Ok(self.write_reserved(buf, at)? && self.commit_write_shared(at, buf.len() as u64)?)
        };
        if !image.params.has_parent {
            return whole(buf, offset);
        }
        let ss = image.params.logical_sector_size;
        if offset % ss as u64 == 0 && buf.len() % ss as usize == 0 {
            let _write = image.merging.read().unwrap_or_else(|e| e.into_inner());
            return whole(buf, offset);
        }
        if self.parent.is_none() {
            return Ok(false);
        }
        let _alone = image.merging.write().unwrap_or_else(|e| e.into_inner());
        let mut sector = alloc::vec![0u8; ss as usize];
        for p in crate::block::pieces(offset, buf.len(), ss) {
            let src = &buf[p.range.clone()];
            let at = p.lba * ss as u64;
            let done = match p.within {
                None => whole(src, at)?,
                // A sector this disk holds: its bytes written in place, as
                // a write into stored space always is.
                Some(within) if self.write_at_shared(src, at + within as u64)? => true,
                // One it does not: no other writer can have written it
                // (they hold `merging` shared until their sectors are
                // present), so what reads there now is the parent's.
                Some(within) => {
                    self.read_at(&mut sector, at)?;
                    sector[within..within + src.len()].copy_from_slice(src);
                    whole(&sector, at)?
                }
            };
            if !done {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes `buf` at `offset` into space [`Disk::reserve`] made, through
    /// a shared reference: every block of the range stored in this file
    /// (whatever its sector bitmap says; for a partially present block,
    /// whole sectors only). In a differencing disk the bytes read as
    /// written only after [`Disk::commit_write`]. Returns `Ok(false)`,
    /// having written nothing, when the range is not so (another writer
    /// changed it in between, or the storage takes no shared writes).
    pub fn write_reserved(&self, buf: &[u8], offset: u64) -> Result<bool> {
        if let Some(answer) = self.before_shared(offset, buf.len() as u64)? {
            return Ok(answer);
        }
        let Some(targets) = self.reserved_targets(offset, buf.len() as u64)? else { return Ok(false) };
        self.write_targets(buf, offset, &targets)
    }

    /// Where `[offset, offset + len)` lies in this image's file, as
    /// `(virtual offset, length, file offset)` runs a block each, when
    /// every block of it is stored here (whatever its sector bitmap says;
    /// whole sectors of a partially present block) and inside the file;
    /// `None` otherwise.
    pub(crate) fn reserved_targets(&self, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64, u64)>>> {
        let image = &self.image;
        let bs = image.params.block_size as u64;
        let ss = image.params.logical_sector_size as u64;
        let end = offset + len;
        let mut targets = Vec::new();
        let mut pos = offset;
        while pos < end {
            let n = (bs - pos % bs).min(end - pos);
            let entry = image.bat_payload(pos / bs)?;
            let partial = entry.payload_state() == Some(PayloadState::PartiallyPresent);
            let file_offset = entry.file_offset() + pos % bs;
            if !entry.has_data() || (partial && (pos % ss != 0 || n % ss != 0)) || file_offset + n > image.space.len() {
                return Ok(None);
            }
            targets.push((pos, n, file_offset));
            pos += n;
        }
        Ok(Some(targets))
    }

    /// Writes the runs of `buf` (which starts at virtual `offset`) to their
    /// file offsets through shared writes; `Ok(false)` when the storage
    /// takes none (nothing is written then).
    fn write_targets(&self, buf: &[u8], offset: u64, targets: &[(u64, u64, u64)]) -> Result<bool> {
        for (i, &(at, n, file_offset)) in targets.iter().enumerate() {
            let src = &buf[(at - offset) as usize..(at - offset + n) as usize];
            match self.image.storage.write_shared(src, file_offset) {
                Some(result) => result.during("writing payload", file_offset)?,
                // The storage takes no shared writes: nothing was written
                // (it answers the same for every write).
                None if i == 0 => return Ok(false),
                None => return Err(Error::invalid("the storage stopped taking shared writes")),
            }
        }
        Ok(true)
    }
}

/// `[offset, offset + len)` cut at `bs`-byte block boundaries, in order:
/// (block, offset in the block, length).
#[cfg(feature = "std")]
fn block_pieces(offset: u64, len: u64, bs: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = offset + len;
    let mut pos = offset;
    core::iter::from_fn(move || {
        (pos < end).then(|| {
            let (block, in_block) = (pos / bs, pos % bs);
            let n = (bs - in_block).min(end - pos);
            pos += n;
            (block, in_block, n)
        })
    })
}

/// What [`Disk::reserve`] (or [`BlockDevice::reserve`](crate::BlockDevice::reserve)) made for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Nothing: the write needs `write_at` (with exclusive access).
    None,
    /// The space: `write_at_shared` writes the range, and it reads as
    /// written at once.
    Ready,
    /// The space: `write_reserved` writes the range, and `commit_write`
    /// then makes it read as written (a differencing disk's sector bitmap
    /// bits).
    NeedsCommit,
}
