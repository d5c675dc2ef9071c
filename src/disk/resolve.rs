//! I/O resolution for a VMM that moves payload itself (io_uring, Windows
//! overlapped I/O, a DMA engine): the library answers *where* a range's
//! bytes are in the chain's files and keeps every piece of metadata; the
//! caller reads and writes the bytes.
//!
//! - [`Disk::resolve_read`]: the pieces of a range, each in the file of one
//!   level of the chain (0 is this image, 1 its parent, ...) or zeros.
//! - [`Disk::resolve_write`]: makes what a write of the range needs (new
//!   blocks, zero-filled; a differencing disk's sector bitmap blocks) and
//!   returns where in this image's file to write it.
//! - [`Disk::commit_write`]: after the caller's data is in the file, makes
//!   the range present (a differencing disk's sector bitmap bits). Until
//!   then the range reads as before: zeros in a new block of a dynamic
//!   disk, the parent's bytes in a differencing one.
//! - [`Disk::level_file`]: the open file of a level, to do that I/O with.
//!   On Windows it is the way to write: a writable image is opened
//!   sharing reading only, so another open of its file for writing is
//!   refused.
//!
//! Like every write, the data is durable after the next [`Disk::flush`],
//! which the caller issues after its own writes completed. The extents stay
//! true until a call that moves data (discard, compact, resize, merge):
//! resolve again after any of those.

use alloc::vec::Vec;

use super::{Disk, Extent};
use crate::error::{Error, Result};
use crate::format::bat::{BatEntry, PayloadState};

/// Where one piece of a resolved range lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoTarget {
    /// At `file_offset` in the file of chain level `level` (0: the image
    /// resolved; 1: its parent; ...; [`Disk::chain_paths`] names them).
    File {
        /// The chain level whose file holds the bytes.
        level: usize,
        /// Where in that file.
        file_offset: u64,
    },
    /// Reads as zeros; nothing to read.
    Zero,
}

/// One piece of a resolved range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExtent {
    /// Virtual offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Where its bytes are.
    pub target: IoTarget,
}

impl Disk {
    /// The open file of chain level `level` (0: this image; 1: its
    /// parent; ...; as [`IoTarget::File`] names them), for a caller that
    /// reads and writes resolved pieces itself with positioned I/O (`pread`
    /// and `pwrite`, io_uring, Windows `ReadFile`/`WriteFile` with an
    /// offset). On Windows this is the only way to write this image's
    /// file while it is open, as a writable image is opened sharing
    /// reading only; elsewhere it saves opening the file again by its path.
    ///
    /// The file stays the library's: valid while the disk is open, and
    /// closed with it. `None` past the chain, or for a level whose storage
    /// is not a file (memory, a caller's callbacks).
    #[cfg(feature = "std")]
    pub fn level_file(&self, level: usize) -> Option<&std::fs::File> {
        let mut disk = self;
        for _ in 0..level {
            disk = disk.parent()?;
        }
        disk.image.storage.file()
    }

    /// Where the bytes of `[offset, offset + len)` are, through the chain:
    /// pieces in order, each in one level's file or zeros. A read of each
    /// file piece at its file offset gives what [`Disk::read_at`] gives.
    pub fn resolve_read(&self, offset: u64, len: u64) -> Result<Vec<IoExtent>> {
        self.image.check_range_u64(offset, len)?;
        let mut out = Vec::new();
        self.resolve_read_into(offset, len, 0, &mut out)?;
        Ok(out)
    }

    fn resolve_read_into(&self, offset: u64, len: u64, level: usize, out: &mut Vec<IoExtent>) -> Result<()> {
        self.image.resolve(offset, len, |at, n, extent| {
            match extent {
                Extent::Data { file_offset } => push(out, at, n, IoTarget::File { level, file_offset }),
                Extent::Zero => push(out, at, n, IoTarget::Zero),
                Extent::Parent => match self.parent.as_deref() {
                    Some(p) => {
                        // A child may be larger than its parent: past the
                        // parent's end it reads zeros.
                        let inside = p.virtual_size().saturating_sub(at).min(n);
                        if inside > 0 {
                            p.resolve_read_into(at, inside, level + 1, out)?;
                        }
                        if inside < n {
                            push(out, at + inside, n - inside, IoTarget::Zero);
                        }
                    }
                    None => push(out, at, n, IoTarget::Zero),
                },
            }
            Ok(())
        })
    }

    /// Makes what a write of `[offset, offset + len)` needs and returns
    /// where in this image's file (level 0) to write its bytes, in order.
    /// Write them there, then call [`Disk::commit_write`] with the same
    /// range. New blocks are zero-filled; until the commit the range reads
    /// as before.
    ///
    /// A differencing disk takes whole logical sectors only
    /// ([`Error::InvalidArgument`] otherwise): its sectors are either the
    /// parent's or this file's, so a partial one would need the parent's
    /// bytes merged in first (use [`Disk::write_at`] for those).
    pub fn resolve_write(&mut self, offset: u64, len: u64) -> Result<Vec<IoExtent>> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        self.image.check_range_u64(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let ss = self.image.params.logical_sector_size as u64;
        if self.image.params.has_parent {
            if offset % ss != 0 || len % ss != 0 {
                return Err(Error::invalid(alloc::format!(
                    "a differencing disk's resolved writes must be whole {ss}-byte sectors; \
                     write {len} bytes at {offset} with write_at"
                )));
            }
            if self.parent.is_none() {
                return Err(Error::invalid("a differencing disk opened without its parent cannot take data writes"));
            }
        }
        if self.reserve(offset, len)? == super::Reservation::None {
            return Err(Error::invalid("the disk cannot reserve space for the write"));
        }
        let targets = self.reserved_targets(offset, len)?.ok_or_else(|| {
            Error::invalid(
                "the range ends past the end of the file (an image whose last block does; write it with write_at)",
            )
        })?;
        let mut out = Vec::new();
        for (at, n, file_offset) in targets {
            push(&mut out, at, n, IoTarget::File { level: 0, file_offset });
        }
        Ok(out)
    }

    /// The caller has written `[offset, offset + len)` where
    /// [`Disk::resolve_write`] said: the range now reads as written (a
    /// differencing disk's sector bitmap bits are set, and a block written
    /// whole becomes fully present). Every block of the range must be
    /// stored in this file (resolved before); nothing changes otherwise.
    pub fn commit_write(&mut self, offset: u64, len: u64) -> Result<()> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        self.image.check_range_u64(offset, len)?;
        let bs = self.image.params.block_size as u64;
        let ss = self.image.params.logical_sector_size as u64;
        if len == 0 {
            return Ok(());
        }
        for block in offset / bs..=(offset + len - 1) / bs {
            if !self.image.bat_payload(block)?.has_data() {
                return Err(Error::invalid(alloc::format!(
                    "commit_write of {len} bytes at {offset}: block {block} was not resolved for writing"
                )));
            }
        }
        if !self.image.params.has_parent {
            return Ok(());
        }
        if offset % ss != 0 || len % ss != 0 {
            return Err(Error::invalid("a differencing disk's resolved writes are whole sectors"));
        }
        // The bits set as a shared committer sets them, so that their pages
        // stay open to shared committers after this.
        #[cfg(feature = "std")]
        if self.commit_write_shared(offset, len)? {
            return Ok(());
        }
        self.undoable(|d| {
            let image = &mut d.image;
            let mut pos = offset;
            while pos < offset + len {
                let block = pos / bs;
                let in_block = pos % bs;
                let n = (bs - in_block).min(offset + len - pos);
                let entry = image.bat_payload(block)?;
                if entry.payload_state() == Some(PayloadState::PartiallyPresent) {
                    if n == bs {
                        let index = image.table.geometry().payload_index(block);
                        image
                            .set_bat_entry(index, BatEntry::payload(PayloadState::FullyPresent, entry.file_offset()))?;
                    } else {
                        image.set_bitmap_bits(block, in_block / ss, n / ss)?;
                    }
                }
                pos += n;
            }
            Ok(())
        })
    }
}

impl super::Image {
    /// Gives every block of `[offset, offset + len)` of a differencing disk
    /// a place in this file without changing what it reads: a block not
    /// present becomes partially present with no sector present (its
    /// chunk gets a sector bitmap block); a block that reads zeros (ZERO,
    /// UNMAPPED, UNDEFINED) becomes fully present over zeros.
    pub(crate) fn place_differencing(&mut self, offset: u64, len: u64) -> Result<()> {
        self.begin_data_change()?;
        let bs = self.params.block_size as u64;
        for block in offset / bs..=(offset + len - 1) / bs {
            match self.bat_payload(block)?.payload_state() {
                Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent) => {}
                Some(PayloadState::NotPresent) => {
                    self.place_partial(block)?;
                }
                _ => {
                    self.allocate_block(block)?;
                }
            }
        }
        Ok(())
    }
}

/// Appends a piece, joined to the last when it continues it.
fn push(out: &mut Vec<IoExtent>, offset: u64, length: u64, target: IoTarget) {
    if let Some(last) = out.last_mut() {
        let joins = match (last.target, target) {
            (IoTarget::Zero, IoTarget::Zero) => true,
            (IoTarget::File { level: a, file_offset: x }, IoTarget::File { level: b, file_offset: y }) => {
                a == b && x + last.length == y
            }
            _ => false,
        };
        if joins && last.offset + last.length == offset {
            last.length += length;
            return;
        }
    }
    out.push(IoExtent { offset, length, target });
}
