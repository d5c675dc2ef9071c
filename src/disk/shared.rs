//! Writes from many threads at once: [`Disk::write_at_shared`] writes
//! through `&self` whatever lands in space the image already stores, and
//! [`Disk::reserve`] (with `&mut self`) makes the space a write needs, so
//! that the data itself can then go in through `&self`.
//!
//! Share a disk as `RwLock<Disk>` and write with
//! [`crate::write_concurrently`]: reads and writes to stored blocks
//! hold the lock shared and run in parallel; only the metadata step of a new
//! block (growing the file, a BAT entry in memory) holds it exclusively, for
//! microseconds. A flush takes it exclusively, so it waits for the writes in
//! flight and covers every write that returned before it.
//!
//! Nothing here changes metadata: a write through `&self` touches payload
//! bytes of blocks already stored (and already made known to readers), so
//! it needs no undo, no log entry and no bitmap change. What it cannot do
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
        let image = &self.image;
        if !image.writable {
            return Err(Error::ReadOnly);
        }
        image.check_range_u64(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(true);
        }
        if !image.session.data_guid_changed || image.closed {
            return Ok(false);
        }
        let Some(targets) = self.stored_targets(offset, buf.len() as u64)? else { return Ok(false) };
        for (i, &(at, n, file_offset)) in targets.iter().enumerate() {
            let src = &buf[(at - offset) as usize..(at - offset + n) as usize];
            match image.storage.write_shared(src, file_offset) {
                Some(result) => result.during("writing payload", file_offset)?,
                // The storage takes no shared writes: nothing was written
                // (it answers the same for every write).
                None if i == 0 => return Ok(false),
                None => return Err(Error::invalid("the storage stopped taking shared writes")),
            }
        }
        Ok(true)
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
    /// [`Disk::write_at_shared`] can then write it: the session's first
    /// change (new DataWriteGuid), and zero-filled blocks for the blocks of
    /// a fixed or dynamic disk that are not stored (they read as zeros
    /// until written, as they did before). Returns `Ok(false)`, changing
    /// nothing, for a differencing disk: its new sectors come from the
    /// parent until their bitmap bits are set, which only
    /// [`Disk::write_at`] does with the data.
    ///
    /// A block reserved and never written stays allocated, reading zeros;
    /// `compact` gives it back. Blocks reserved before a failure are taken
    /// back with it.
    pub fn reserve(&mut self, offset: u64, len: u64) -> Result<bool> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        self.image.check_range_u64(offset, len)?;
        if self.image.params.has_parent {
            return Ok(false);
        }
        if len == 0 {
            return Ok(true);
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
            Ok(true)
        })
    }
}
