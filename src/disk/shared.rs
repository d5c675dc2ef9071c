//! Writes from many threads at once: [`Disk::write_at_shared`] writes
//! through `&self` whatever lands in space the image already stores, and
//! [`Disk::reserve`] (with `&mut self`) makes the space a write needs, so
//! that the data itself can then go in through `&self`
//! ([`Disk::write_reserved`]; a differencing disk's sectors then read as
//! written after [`Disk::commit_write`], with `&mut self` again, which sets
//! their bitmap bits: until then they read the parent's bytes).
//!
//! Share a disk as `RwLock<Disk>` and write with
//! [`crate::write_concurrently`]: reads and writes to stored blocks
//! hold the lock shared and run in parallel; only the metadata step of a new
//! block (growing the file, a BAT entry in memory) holds it exclusively, for
//! microseconds. A flush takes it exclusively, so it waits for the writes in
//! flight and covers every write that returned before it.
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
        if let Some(answer) = self.before_shared_write(buf, offset)? {
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
            if entry.payload_state() == Some(PayloadState::FullyPresent) && at + len <= image.space.len {
                return self.write_targets(buf, offset, &[(offset, len, at)]);
            }
        }
        let Some(targets) = self.stored_targets(offset, len)? else { return Ok(false) };
        self.write_targets(buf, offset, &targets)
    }

    /// What both shared writes check first: an error for a read-only disk
    /// or a range past the end; the answer at once for an empty write
    /// (written) or before the session's first change (declined); `None`
    /// when the write may go on.
    fn before_shared_write(&self, buf: &[u8], offset: u64) -> Result<Option<bool>> {
        let image = &self.image;
        if !image.writable {
            return Err(Error::ReadOnly);
        }
        image.check_range_u64(offset, buf.len() as u64)?;
        if buf.is_empty() {
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
        let file_len = image.space.len;
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
        if self.image.params.has_parent {
            if offset % ss != 0 || len % ss != 0 || self.parent.is_none() {
                return Ok(Reservation::None);
            }
            if len > 0 {
                self.undoable(|d| d.image.place_differencing(offset, len))?;
            }
            return Ok(Reservation::NeedsCommit);
        }
        if len == 0 {
            return Ok(Reservation::Ready);
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

    /// Writes `buf` at `offset` into space [`Disk::reserve`] made, through
    /// a shared reference: every block of the range stored in this file
    /// (whatever its sector bitmap says; for a partially present block,
    /// whole sectors only). In a differencing disk the bytes read as
    /// written only after [`Disk::commit_write`]. Returns `Ok(false)`,
    /// having written nothing, when the range is not so (another writer
    /// changed it in between, or the storage takes no shared writes).
    pub fn write_reserved(&self, buf: &[u8], offset: u64) -> Result<bool> {
        if let Some(answer) = self.before_shared_write(buf, offset)? {
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
            if !entry.has_data() || (partial && (pos % ss != 0 || n % ss != 0)) || file_offset + n > image.space.len {
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
