//! The block-device view: sectors in, sectors out.

use crate::error::{Error, Result};

/// A device of fixed-size sectors. [`crate::Disk`] implements it with the
/// image's logical sector size.
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
}

fn sector_offset(lba: u64, len: usize, sector: u32) -> Result<u64> {
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
}
