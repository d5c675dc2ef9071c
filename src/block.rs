//! The block-device view: sectors in, sectors out, and what the layers above
//! an image need of a device (byte-addressed I/O, where the data is,
//! discarding, a clean checkpoint). The NBD server and the copy under
//! `convert` take any [`BlockDevice`], not only a [`crate::Disk`].

use alloc::vec::Vec;

use crate::error::{Error, Result};

/// A device of fixed-size sectors. [`crate::Disk`] implements it with the
/// image's logical sector size.
///
/// Only the sector methods, the sizes and `flush` must be written; the rest
/// have defaults built on them: byte-addressed [`read_at`](Self::read_at)
/// and [`write_at`](Self::write_at) (a partial sector is read, merged and
/// written back), a map that calls every byte data, a `discard` that keeps
/// the data (discarding is advisory), and a checkpoint that flushes.
///
/// ```
/// use vhdx::{BlockDevice, CreateOptions, Disk, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(1 << 20), None)?;
/// let sector = vec![0xAB; disk.sector_size() as usize];
/// disk.write_sectors(3, &sector)?;
/// let mut back = vec![0; 512];
/// disk.read_sectors(3, &mut back)?;
/// assert_eq!(back, sector);
/// assert_eq!(disk.sector_count(), 2048);
/// # Ok(()) }
/// ```
///
/// A device of your own gets the byte-addressed methods for free:
///
/// ```
/// use vhdx::{BlockDevice, Result};
/// struct Ram(Vec<u8>);
/// impl BlockDevice for Ram {
///     fn sector_size(&self) -> u32 { 512 }
///     fn sector_count(&self) -> u64 { self.0.len() as u64 / 512 }
///     fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
///         let at = lba as usize * 512;
///         buf.copy_from_slice(&self.0[at..at + buf.len()]);
///         Ok(())
///     }
///     fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
///         let at = lba as usize * 512;
///         self.0[at..at + buf.len()].copy_from_slice(buf);
///         Ok(())
///     }
///     fn flush(&mut self) -> Result<()> { Ok(()) }
/// }
/// # fn main() -> Result<()> {
/// let mut ram = Ram(vec![0; 4096]);
/// ram.write_at(b"hello", 510)?; // across a sector boundary
/// let mut back = [0u8; 5];
/// ram.read_at(&mut back, 510)?;
/// assert_eq!(&back, b"hello");
/// assert!(ram.read_at(&mut back, 4092).is_err()); // past the end
/// # Ok(()) }
/// ```
pub trait BlockDevice {
    /// Bytes per sector.
    fn sector_size(&self) -> u32;
    /// Number of sectors.
    fn sector_count(&self) -> u64;
    /// Capacity in bytes.
    fn capacity(&self) -> u64 {
        self.sector_count() * self.sector_size() as u64
    }
    /// Reads whole sectors from `lba`; `buf.len()` must be a multiple of the sector size.
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes whole sectors at `lba`; `buf.len()` must be a multiple of the sector size.
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> Result<()>;

    /// The size writes should be aligned to for speed: at least
    /// [`sector_size`](Self::sector_size). Defaults to the sector size.
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }

    /// Whether writes are accepted. Defaults to `true`.
    fn is_writable(&self) -> bool {
        true
    }

    /// Reads `buf.len()` bytes at byte `offset`, which need not be aligned.
    /// The default reads whole sectors and copies out what was asked for.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len(), self.capacity())?;
        let mut sector = alloc::vec![0u8; self.sector_size() as usize];
        for p in pieces(offset, buf.len(), self.sector_size()) {
            let dst = &mut buf[p.range.clone()];
            match p.within {
                None => self.read_sectors(p.lba, dst)?,
                Some(within) => {
                    self.read_sectors(p.lba, &mut sector)?;
                    dst.copy_from_slice(&sector[within..within + dst.len()]);
                }
            }
        }
        Ok(())
    }

    /// Writes `buf` at byte `offset`, which need not be aligned. The
    /// default writes whole sectors; a partial one is read first and
    /// written back with the new bytes in it.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        write_by_sectors(self, buf, offset)
    }

    /// The byte ranges `(offset, length)` that may hold non-zero bytes, in
    /// order and not overlapping; everything else reads as zeros. A copy
    /// reads only these. The default is the whole device.
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let capacity = self.capacity();
        Ok(if capacity == 0 { Vec::new() } else { alloc::vec![(0, capacity)] })
    }

    /// Tells the device that `len` bytes at `offset` are no longer needed
    /// (NBD's trim, a guest's discard). Advisory: the bytes may afterwards
    /// read as before or as zeros. The default keeps them.
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, usize::try_from(len).unwrap_or(usize::MAX), self.capacity())
    }

    /// Makes completed writes durable and leaves the device as if cleanly
    /// closed while it stays open (an image's log clean). Defaults to
    /// [`flush`](Self::flush).
    fn checkpoint(&mut self) -> Result<()> {
        self.flush()
    }

    /// Writes `buf` at `offset` through a shared reference, when the device
    /// can (for an image: every byte in space it already stores). Returns
    /// `Ok(false)`, having written nothing, when the write needs `&mut self`
    /// ([`reserve`](Self::reserve), then this again, or
    /// [`write_at`](Self::write_at)). The default never can.
    /// [`write_concurrently`] drives the three.
    fn write_at_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        let _ = (buf, offset);
        Ok(false)
    }

    /// Makes the space a write of `len` bytes at `offset` needs, so that
    /// the data can then be written through a shared reference (see
    /// [`crate::Reservation`]); [`Reservation::None`](crate::Reservation::None),
    /// changing nothing, when the device cannot (then
    /// [`write_at`](Self::write_at) it). The default cannot.
    fn reserve(&mut self, offset: u64, len: u64) -> Result<crate::Reservation> {
        let _ = (offset, len);
        Ok(crate::Reservation::None)
    }

    /// Makes the space a write of `len` bytes at `offset` needs through a
    /// shared reference, while others read and write, when the device can
    /// (for an image: new zero-filled blocks; a differencing disk's blocks
    /// placed for the range's sectors, whole); then
    /// [`write_and_commit_shared`](Self::write_and_commit_shared) writes the
    /// range and makes it read as written (for whole sectors, also
    /// [`write_reserved`](Self::write_reserved) and then
    /// [`commit_reserved_shared`](Self::commit_reserved_shared) or
    /// [`commit_reserved`](Self::commit_reserved)).
    /// `Ok(false)`, when it cannot, and [`reserve`](Self::reserve) must.
    /// The default cannot.
    fn reserve_shared(&self, offset: u64, len: u64) -> Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }

    /// [`flush`](Self::flush) through a shared reference, while others read
    /// and write, when the device can; `Ok(false)`, having made nothing
    /// durable that a flush promises, when only `flush` can.
    /// [`flush_concurrently`] drives the two. The default cannot.
    fn flush_shared(&self) -> Result<bool> {
        Ok(false)
    }

    /// Writes into space [`reserve`](Self::reserve) made with
    /// [`Reservation::NeedsCommit`](crate::Reservation::NeedsCommit),
    /// through a shared reference; `Ok(false)`, having written nothing,
    /// when it cannot. The default is [`write_at_shared`](Self::write_at_shared).
    fn write_reserved(&self, buf: &[u8], offset: u64) -> Result<bool> {
        self.write_at_shared(buf, offset)
    }

    /// Makes a range written by [`write_reserved`](Self::write_reserved)
    /// read as written. The default has nothing to do.
    fn commit_reserved(&mut self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// [`commit_reserved`](Self::commit_reserved) through a shared
    /// reference, while others read and write, when the device can (for an
    /// image: always without a parent, and a differencing disk's sector
    /// bits while it has room to hold their pages); `Ok(false)` when only
    /// `commit_reserved` can finish it. The default cannot.
    fn commit_reserved_shared(&self, offset: u64, len: u64) -> Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }

    /// [`write_reserved`](Self::write_reserved) and then
    /// [`commit_reserved_shared`](Self::commit_reserved_shared) as one
    /// step, so that no other writer's change of the same sectors comes
    /// between the two; a device may also take ranges here that those two
    /// cannot (for an image: part of a differencing disk's sector, the
    /// parent's bytes merged in). `Ok(false)` when it could not finish:
    /// bytes may have been written into the reserved space without reading
    /// as written, and [`write_at`](Self::write_at) must write the range
    /// again. The default is the two calls.
    fn write_and_commit_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        Ok(self.write_reserved(buf, offset)? && self.commit_reserved_shared(offset, buf.len() as u64)?)
    }
}

/// Writes `buf` at `offset` to a device shared as `RwLock<D>`, holding the
/// lock exclusively only for what needs it: first a write through a shared
/// hold ([`BlockDevice::write_at_shared`]); if that cannot, the space is
/// made under a shared hold when the device can
/// ([`BlockDevice::reserve_shared`]: an image's new blocks, a differencing
/// disk's blocks, while readers go on), else under an exclusive hold
/// ([`BlockDevice::reserve`]); the data is written, and (a differencing
/// disk) its sectors made present, under a shared hold
/// ([`BlockDevice::write_and_commit_shared`]), else the whole write done
/// again under an exclusive one; if the device cannot reserve, the whole
/// write under the exclusive hold.
/// Readers and writers run in parallel; only the metadata steps that
/// cannot be shared exclude them (a session's first change and first new
/// block, a flush of metadata changed exclusively, a device that cannot),
/// never the data. A poisoned lock (a panic elsewhere) is used as it is.
///
/// ```
/// use std::sync::RwLock;
/// use vhdx::{write_concurrently, BlockDevice, CreateOptions, Disk, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let disk = RwLock::new(Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20), None)?);
/// std::thread::scope(|s| {
///     for t in 0..4u8 {
///         let disk = &disk;
///         s.spawn(move || write_concurrently(disk, &[t; 4096], t as u64 * 4096).unwrap());
///     }
/// });
/// let mut back = [0u8; 4096];
/// disk.read().unwrap().read_at(&mut back, 3 * 4096)?;
/// assert_eq!(back, [3u8; 4096]);
/// # Ok(()) }
/// ```
#[cfg(feature = "std")]
pub fn write_concurrently<D: BlockDevice + ?Sized>(disk: &std::sync::RwLock<D>, buf: &[u8], offset: u64) -> Result<()> {
    use crate::Reservation;
    let shared = || disk.read().unwrap_or_else(|p| p.into_inner());
    let exclusive = || disk.write().unwrap_or_else(|p| p.into_inner());
    if shared().write_at_shared(buf, offset)? {
        return Ok(());
    }
    let len = buf.len() as u64;
    {
        let d = shared();
        if d.reserve_shared(offset, len)? {
            if d.write_and_commit_shared(buf, offset)? {
                return Ok(());
            }
            drop(d);
            return rewrite(disk, buf, offset);
        }
    }
    let reservation = {
        let mut d = exclusive();
        let r = d.reserve(offset, len)?;
        if r == Reservation::None {
            return d.write_at(buf, offset);
        }
        r
    };
    let d = shared();
    let done = match reservation {
        Reservation::NeedsCommit => d.write_and_commit_shared(buf, offset)?,
        _ => d.write_at_shared(buf, offset)?,
    };
    if !done {
        // Between the holds another writer changed what the range lies on
        // (a discard, a compaction), or the sectors could not be made
        // present under this hold: write it the exclusive way.
        drop(d);
        return rewrite(disk, buf, offset);
    }
    Ok(())
}

/// A write whose space was reserved but which could not be finished under
/// a shared hold: the whole write again under the exclusive hold. Not just
/// what was left of it: bytes it wrote before its sectors were present may
/// since have been written over (a write of part of one of them, which
/// merged in the parent's bytes), and only writing them again leaves this
/// write's bytes there.
#[cfg(feature = "std")]
fn rewrite<D: BlockDevice + ?Sized>(disk: &std::sync::RwLock<D>, buf: &[u8], offset: u64) -> Result<()> {
    disk.write().unwrap_or_else(|p| p.into_inner()).write_at(buf, offset)
}

/// Flushes a device shared as `RwLock<D>`: through a shared hold when the
/// device can ([`BlockDevice::flush_shared`]: an image's new blocks made
/// with [`write_concurrently`], while readers and writers go on), else with
/// [`BlockDevice::flush`] under an exclusive hold, which waits for the
/// writes in flight. Either way every write that completed before the call
/// is durable when it returns. A poisoned lock is used as it is.
///
/// ```
/// use std::sync::RwLock;
/// use vhdx::{flush_concurrently, write_concurrently, CreateOptions, Disk, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let disk = RwLock::new(Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20), None)?);
/// write_concurrently(&disk, &[7; 4096], 0)?;
/// flush_concurrently(&disk)?;
/// # Ok(()) }
/// ```
#[cfg(feature = "std")]
pub fn flush_concurrently<D: BlockDevice + ?Sized>(disk: &std::sync::RwLock<D>) -> Result<()> {
    if disk.read().unwrap_or_else(|p| p.into_inner()).flush_shared()? {
        return Ok(());
    }
    disk.write().unwrap_or_else(|p| p.into_inner()).flush()
}

/// One piece of a byte range split at sector boundaries: whole sectors
/// from `lba` (`within` is `None`), or part of the one sector `lba`
/// starting `within` bytes into it. `range` is the piece's place in the
/// caller's buffer.
pub(crate) struct Piece {
    pub(crate) lba: u64,
    pub(crate) within: Option<usize>,
    pub(crate) range: core::ops::Range<usize>,
}

/// `len` bytes at byte `offset` as [`Piece`]s, in order: the whole sectors
/// in the middle as one piece, a partial sector at either end alone.
pub(crate) fn pieces(offset: u64, len: usize, sector: u32) -> impl Iterator<Item = Piece> {
    let ss = sector as usize;
    let mut done = 0usize;
    core::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let within = (at % sector as u64) as usize;
        let whole = (len - done) / ss * ss;
        let (n, within) =
            if within == 0 && whole > 0 { (whole, None) } else { ((ss - within).min(len - done), Some(within)) };
        let piece = Piece { lba: at / sector as u64, within, range: done..done + n };
        done += n;
        Some(piece)
    })
}

/// [`BlockDevice::write_at`]'s default, for devices that override it to
/// add checks of their own first: whole sectors written as they are, a
/// partial one read (through [`BlockDevice::read_sectors`]), merged and
/// written back.
pub(crate) fn write_by_sectors<D: BlockDevice + ?Sized>(dev: &mut D, buf: &[u8], offset: u64) -> Result<()> {
    check_range(offset, buf.len(), dev.capacity())?;
    let mut sector = alloc::vec![0u8; dev.sector_size() as usize];
    for p in pieces(offset, buf.len(), dev.sector_size()) {
        let src = &buf[p.range.clone()];
        match p.within {
            None => dev.write_sectors(p.lba, src)?,
            Some(within) => {
                dev.read_sectors(p.lba, &mut sector)?;
                sector[within..within + src.len()].copy_from_slice(src);
                dev.write_sectors(p.lba, &sector)?;
            }
        }
    }
    Ok(())
}

/// Reads `dst.len()` bytes of `dev` at `at`; what lies past its end reads
/// as zeros (a child larger than its parent, after it was grown).
pub(crate) fn read_or_zeros<D: BlockDevice + ?Sized>(dev: &D, dst: &mut [u8], at: u64) -> Result<()> {
    let avail = dev.capacity().saturating_sub(at).min(dst.len() as u64) as usize;
    if avail > 0 {
        dev.read_at(&mut dst[..avail], at)?;
    }
    dst[avail..].fill(0);
    Ok(())
}

/// `len` bytes at `offset` lie within a device of `size` bytes, else
/// [`Error::OutOfRange`].
pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len: len as u64, size }),
    }
}

/// The byte offset of sector `lba`, for a buffer that must be whole sectors.
pub(crate) fn sector_offset(lba: u64, len: usize, sector: u32) -> Result<u64> {
    if len % sector as usize != 0 {
        return Err(Error::InvalidArgument(alloc::format!(
            "buffer of {len} bytes is not a whole number of {sector}-byte sectors"
        )));
    }
    lba.checked_mul(sector as u64).ok_or(Error::OutOfRange { offset: u64::MAX, len: len as u64, size: 0 })
}

impl BlockDevice for crate::Disk {
    fn sector_size(&self) -> u32 {
        self.logical_sector_size()
    }

    fn sector_count(&self) -> u64 {
        self.virtual_size() / self.logical_sector_size() as u64
    }

    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let at = sector_offset(lba, buf.len(), self.sector_size())?;
        self.read_at(buf, at)
    }

    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        let at = sector_offset(lba, buf.len(), self.sector_size())?;
        self.write_at(buf, at)
    }

    fn flush(&mut self) -> Result<()> {
        crate::Disk::flush(self)
    }

    fn physical_sector_size(&self) -> u32 {
        crate::Disk::physical_sector_size(self)
    }

    fn is_writable(&self) -> bool {
        crate::Disk::is_writable(self)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::Disk::read_at(self, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        crate::Disk::write_at(self, buf, offset)
    }

    /// Everything but the runs the map, through the open chain, shows to
    /// read as zeros ([`crate::ops::convert::nonzero_candidates`]).
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        crate::ops::convert::nonzero_candidates(self)
    }

    /// [`Disk::discard`](crate::Disk::discard): the range then reads as zeros.
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        crate::Disk::discard(self, offset, len)
    }

    fn checkpoint(&mut self) -> Result<()> {
        crate::Disk::checkpoint(self)
    }
    fn write_at_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        crate::Disk::write_at_shared(self, buf, offset)
    }
    fn reserve(&mut self, offset: u64, len: u64) -> Result<crate::Reservation> {
        crate::Disk::reserve(self, offset, len)
    }
    #[cfg(feature = "std")]
    fn reserve_shared(&self, offset: u64, len: u64) -> Result<bool> {
        crate::Disk::reserve_shared(self, offset, len)
    }
    #[cfg(feature = "std")]
    fn flush_shared(&self) -> Result<bool> {
        crate::Disk::flush_shared(self)
    }
    fn write_reserved(&self, buf: &[u8], offset: u64) -> Result<bool> {
        crate::Disk::write_reserved(self, buf, offset)
    }
    fn commit_reserved(&mut self, offset: u64, len: u64) -> Result<()> {
        crate::Disk::commit_write(self, offset, len)
    }
    #[cfg(feature = "std")]
    fn commit_reserved_shared(&self, offset: u64, len: u64) -> Result<bool> {
        crate::Disk::commit_write_shared(self, offset, len)
    }
    #[cfg(feature = "std")]
    fn write_and_commit_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        crate::Disk::write_and_commit_shared(self, buf, offset)
    }
}

/// The bytes of a [`Storage`](crate::Storage) as a device of 512-byte
/// sectors: a raw image file, a block device, a buffer. With it a raw
/// source is copied into an image
/// ([`copy_nonzero`](crate::ops::convert::copy_nonzero)) or served over
/// NBD like a [`Disk`](crate::Disk).
///
/// ```
/// use vhdx::{BlockDevice, CreateOptions, Disk, MemStorage, RawDevice};
/// # fn main() -> vhdx::Result<()> {
/// let mut bytes = vec![0u8; 4 << 20];
/// bytes[3 << 20] = 1;
/// let raw = RawDevice::new(Box::new(MemStorage::from_vec(bytes)), false)?;
/// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(4 << 20).block_size(1 << 20), None)?;
/// vhdx::ops::convert::copy_nonzero(&raw, &mut disk, &mut |_, _| {})?;
/// assert_eq!(disk.info()?.allocated_blocks, 1);
/// # Ok(()) }
/// ```
pub struct RawDevice {
    storage: alloc::boxed::Box<dyn crate::Storage>,
    capacity: u64,
    writable: bool,
}

impl core::fmt::Debug for RawDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RawDevice").field("capacity", &self.capacity).field("writable", &self.writable).finish()
    }
}

impl RawDevice {
    /// The device of `storage`'s bytes; its capacity is the storage's
    /// length now, which must be a whole number of 512-byte sectors.
    /// Writes are refused ([`Error::ReadOnly`]) unless `writable`.
    pub fn new(storage: alloc::boxed::Box<dyn crate::Storage>, writable: bool) -> Result<RawDevice> {
        use crate::error::IoContext;
        let capacity = storage.len().during("sizing the raw storage", 0)?;
        if capacity % 512 != 0 {
            return Err(Error::invalid(alloc::format!(
                "a raw device of {capacity} bytes is not a whole number of 512-byte sectors"
            )));
        }
        Ok(RawDevice { storage, capacity, writable })
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> alloc::boxed::Box<dyn crate::Storage> {
        self.storage
    }
}

impl BlockDevice for RawDevice {
    fn sector_size(&self) -> u32 {
        512
    }

    fn sector_count(&self) -> u64 {
        self.capacity / 512
    }

    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let at = sector_offset(lba, buf.len(), 512)?;
        self.read_at(buf, at)
    }

    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        let at = sector_offset(lba, buf.len(), 512)?;
        self.write_at(buf, at)
    }

    fn flush(&mut self) -> Result<()> {
        use crate::error::IoContext;
        if !self.writable {
            return Ok(());
        }
        self.storage.flush().during("flushing the raw storage", 0)
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    /// Reads the storage's bytes at `offset`, any offset and length inside
    /// the device.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use crate::error::IoContext;
        check_range(offset, buf.len(), self.capacity)?;
        self.storage.read_exact_at(buf, offset).during("reading the raw storage", offset)
    }

    /// Writes the storage's bytes at `offset`, any offset and length inside
    /// the device.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        use crate::error::IoContext;
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len(), self.capacity)?;
        self.storage.write_all_at(buf, offset).during("writing the raw storage", offset)
    }
}
