//! How to open and how to create a disk.

use alloc::boxed::Box;
use alloc::format;

use crate::error::{Error, Result};
use crate::format::guid::Guid;
use crate::format::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, MIN_BLOCK_SIZE};

/// A source of fresh GUIDs (FileWriteGuid, DataWriteGuid, LogGuid, new disk IDs).
/// With `std` the default is random (version 4) GUIDs; without it a writable
/// open or a create must be given one.
pub type GuidSource = Box<dyn FnMut() -> Guid + Send + Sync>;

/// The default GUID source: random GUIDs with `std`, none without.
pub(crate) fn default_guid_source() -> Option<GuidSource> {
    #[cfg(feature = "std")]
    {
        Some(Box::new(Guid::new_v4))
    }
    #[cfg(not(feature = "std"))]
    {
        None
    }
}

/// The kind of a new standalone image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiskType {
    /// Every block allocated at creation.
    Fixed,
    /// Blocks allocated on first write.
    Dynamic,
    /// Blocks allocated on first write; unallocated sectors come from a parent.
    Differencing,
}

impl DiskType {
    /// `"fixed"`, `"dynamic"` or `"differencing"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

impl core::fmt::Display for DiskType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parameters of a new fixed or dynamic image.
///
/// ```
/// let opts = vhdx::CreateOptions::dynamic(64 << 20).block_size(1 << 20).logical_sector_size(4096);
/// assert_eq!(opts.virtual_size, 64 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Virtual disk size in bytes: a multiple of the logical sector size, at most 64 TiB.
    pub virtual_size: u64,
    /// Fixed or dynamic.
    pub disk_type: DiskType,
    /// Payload block size: a power of two from 1 MiB to 256 MiB (default 32 MiB).
    pub block_size: u32,
    /// 512 or 4096 (default 512).
    pub logical_sector_size: u32,
    /// 512 or 4096 (default 4096, as Hyper-V).
    pub physical_sector_size: u32,
    /// The virtual disk ID; random when `None`.
    pub virtual_disk_id: Option<Guid>,
}

impl CreateOptions {
    /// A dynamic disk of `virtual_size` bytes with default parameters.
    pub fn dynamic(virtual_size: u64) -> Self {
        CreateOptions {
            virtual_size,
            disk_type: DiskType::Dynamic,
            block_size: DEFAULT_BLOCK_SIZE,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            virtual_disk_id: None,
        }
    }

    /// A fixed disk of `virtual_size` bytes with default parameters.
    pub fn fixed(virtual_size: u64) -> Self {
        CreateOptions { disk_type: DiskType::Fixed, ..Self::dynamic(virtual_size) }
    }

    /// Sets the block size.
    pub fn block_size(mut self, block_size: u32) -> Self {
        self.block_size = block_size;
        self
    }

    /// Sets the logical sector size.
    pub fn logical_sector_size(mut self, size: u32) -> Self {
        self.logical_sector_size = size;
        self
    }

    /// Sets the physical sector size.
    pub fn physical_sector_size(mut self, size: u32) -> Self {
        self.physical_sector_size = size;
        self
    }

    /// Checks every parameter against the format's limits.
    pub fn validate(&self) -> Result<()> {
        if self.disk_type == DiskType::Differencing {
            return Err(Error::invalid("differencing disks are created from a parent, not from CreateOptions"));
        }
        if !self.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(Error::invalid(format!(
                "block size {} is not a power of two from 1 MiB to 256 MiB",
                self.block_size
            )));
        }
        for (name, v) in [("logical", self.logical_sector_size), ("physical", self.physical_sector_size)] {
            if v != 512 && v != 4096 {
                return Err(Error::invalid(format!("{name} sector size {v} is not 512 or 4096")));
            }
        }
        if self.virtual_size == 0 || self.virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid(format!("virtual size {} is not between 1 byte and 64 TiB", self.virtual_size)));
        }
        if self.virtual_size % self.logical_sector_size as u64 != 0 {
            return Err(Error::invalid(format!(
                "virtual size {} is not a multiple of the {}-byte logical sector",
                self.virtual_size, self.logical_sector_size
            )));
        }
        Ok(())
    }
}
