//! The block allocation table (BAT): one 64-bit entry per payload block, with a
//! sector-bitmap entry after every `chunk_ratio` payload entries.
//!
//! An entry is `state` in bits 0–2 and the file offset in MiB in bits 20–63.
//! The interleave holds for every disk type: payload block `i` is at index
//! `i + i / chunk_ratio`, and the sector bitmap of chunk `c` at
//! `c * (chunk_ratio + 1) + chunk_ratio`. Forgetting the interleave shifts
//! every block after the first chunk — a classic bug elsewhere.

use alloc::format;

use super::MIB;
use crate::error::{Error, Result};

/// Sectors covered by one sector bitmap block (2^23).
pub const SECTORS_PER_CHUNK: u64 = 1 << 23;
/// Mask of the file-offset bits of an entry.
pub const OFFSET_MASK: u64 = 0xFFFF_FFFF_FFF0_0000;
/// Mask of the state bits of an entry.
pub const STATE_MASK: u64 = 0x7;

/// The state of a payload block's BAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadState {
    /// 0: not stored here (zeros, or the parent's data in a differencing disk).
    NotPresent,
    /// 1: contents undefined; read as zeros.
    Undefined,
    /// 2: zeros, never the parent's data.
    Zero,
    /// 3 (and the 0.95 draft's 5): unmapped by a trim; read as zeros.
    Unmapped,
    /// 6: all of the block is in this file at the entry's offset.
    FullyPresent,
    /// 7: differencing only; the sector bitmap says which sectors are here.
    PartiallyPresent,
}

impl PayloadState {
    /// The state of a raw entry, or `None` for the reserved value 4.
    pub fn from_entry(entry: u64) -> Option<PayloadState> {
        Some(match entry & STATE_MASK {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 | 5 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            _ => return None,
        })
    }

    /// The value written to disk (UNMAPPED is 3, never 5).
    pub fn bits(self) -> u64 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
        }
    }

    /// Whether the block's data lives at the entry's file offset.
    pub fn has_data(self) -> bool {
        matches!(self, PayloadState::FullyPresent | PayloadState::PartiallyPresent)
    }
}

/// Sector bitmap entry state: not present.
pub const SB_NOT_PRESENT: u64 = 0;
/// Sector bitmap entry state: present (differencing only).
pub const SB_PRESENT: u64 = 6;

/// One BAT entry as it is on disk: a state in bits 0–2 and a file offset,
/// in whole MiB, in bits 20–63. Whether it describes a payload block or a
/// sector bitmap block depends on its index ([`BatGeometry`] tells).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct BatEntry(u64);

impl BatEntry {
    /// The entry of a block that is not in the file (state 0, offset 0).
    pub const EMPTY: BatEntry = BatEntry(0);

    /// The entry with the on-disk value `raw`.
    pub const fn from_raw(raw: u64) -> BatEntry {
        BatEntry(raw)
    }

    /// An entry with state bits `state_bits` at `file_offset` (a multiple of 1 MiB).
    pub(crate) fn new(state_bits: u64, file_offset: u64) -> BatEntry {
        debug_assert_eq!(file_offset % MIB, 0);
        BatEntry((file_offset & OFFSET_MASK) | (state_bits & STATE_MASK))
    }

    /// A payload block's entry in `state` at `file_offset`.
    pub(crate) fn payload(state: PayloadState, file_offset: u64) -> BatEntry {
        BatEntry::new(state.bits(), file_offset)
    }

    /// The on-disk value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The state bits (0–7), whatever the entry describes.
    pub const fn state_bits(self) -> u64 {
        self.0 & STATE_MASK
    }

    /// The file offset the entry points at (0 for none).
    pub const fn file_offset(self) -> u64 {
        self.0 & OFFSET_MASK
    }

    /// As a payload block's entry: its state, or `None` for the reserved value 4.
    pub fn payload_state(self) -> Option<PayloadState> {
        PayloadState::from_entry(self.0)
    }

    /// Whether the block's data lives at the entry's offset (fully or
    /// partially present payload).
    pub fn has_data(self) -> bool {
        self.payload_state().is_some_and(PayloadState::has_data)
    }

    /// As a sector bitmap block's entry: whether the bitmap is present.
    pub const fn sector_bitmap_present(self) -> bool {
        self.state_bits() == SB_PRESENT
    }

    /// Whether every bit is zero.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl core::fmt::Debug for BatEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "BatEntry(state {}, offset {:#x})", self.state_bits(), self.file_offset())
    }
}

/// The shape of the BAT, derived from the disk parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatGeometry {
    /// Payload block size.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Virtual disk size.
    pub virtual_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Number of payload blocks.
    pub payload_blocks: u64,
    /// Number of sector bitmap blocks (chunks).
    pub sector_bitmap_blocks: u64,
    /// Number of BAT entries the table must hold.
    pub entry_count: u64,
    /// Whether the disk is a differencing disk.
    pub has_parent: bool,
}

impl BatGeometry {
    /// Computes the geometry; the inputs must already be validated.
    pub fn new(block_size: u32, logical_sector_size: u32, virtual_size: u64, has_parent: bool) -> Result<BatGeometry> {
        if !block_size.is_power_of_two() || !logical_sector_size.is_power_of_two() {
            return Err(Error::invalid("block and sector sizes must be powers of two"));
        }
        let chunk_ratio = (SECTORS_PER_CHUNK * logical_sector_size as u64) / block_size as u64;
        if chunk_ratio == 0 {
            return Err(Error::invalid(format!(
                "block size {block_size} is too large for {logical_sector_size}-byte sectors"
            )));
        }
        let payload_blocks = virtual_size.div_ceil(block_size as u64);
        let sector_bitmap_blocks = payload_blocks.div_ceil(chunk_ratio);
        let entry_count = if has_parent {
            sector_bitmap_blocks * (chunk_ratio + 1)
        } else if payload_blocks == 0 {
            0
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        Ok(BatGeometry {
            block_size,
            logical_sector_size,
            virtual_size,
            chunk_ratio,
            payload_blocks,
            sector_bitmap_blocks,
            entry_count,
            has_parent,
        })
    }

    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> usize {
        // chunk_ratio is a power of two (`new` requires power-of-two sizes);
        // a shift keeps a 64-bit division off every read's path.
        (block + (block >> self.chunk_ratio.trailing_zeros())) as usize
    }

    /// BAT index of the sector bitmap entry of chunk `chunk`.
    pub fn sector_bitmap_index(&self, chunk: u64) -> usize {
        (chunk * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }

    /// Whether BAT index `index` holds a sector bitmap entry.
    pub fn is_sector_bitmap_index(&self, index: usize) -> bool {
        (index as u64 + 1) % (self.chunk_ratio + 1) == 0
    }

    /// Bytes of the BAT region the table needs.
    pub fn table_bytes(&self) -> u64 {
        self.entry_count * 8
    }

    /// Bytes of the virtual disk covered by one chunk.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_ratio * self.block_size as u64
    }

    /// Sectors per payload block.
    pub fn sectors_per_block(&self) -> u64 {
        self.block_size as u64 / self.logical_sector_size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ratio_and_counts() {
        let g = BatGeometry::new(32 << 20, 512, 1 << 30, false).unwrap();
        assert_eq!(g.chunk_ratio, 128);
        assert_eq!(g.payload_blocks, 32);
        assert_eq!(g.entry_count, 32);
        // Past the first chunk: 200 blocks of 1 MiB with CR 4096? Use 4096-byte sectors and 256 MiB blocks: CR 128.
        let g = BatGeometry::new(1 << 20, 512, 5 << 30, false).unwrap();
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.payload_blocks, 5120);
        assert_eq!(g.entry_count, 5120 + 5119 / 4096);
        assert_eq!(g.payload_index(4095), 4095);
        assert_eq!(g.payload_index(4096), 4097);
        assert_eq!(g.sector_bitmap_index(0), 4096);
        assert!(g.is_sector_bitmap_index(4096));
        assert!(!g.is_sector_bitmap_index(4097));
        let d = BatGeometry::new(2 << 20, 512, 8 << 30, true).unwrap();
        assert_eq!(d.chunk_ratio, 2048);
        assert_eq!(d.sector_bitmap_blocks, 2);
        assert_eq!(d.entry_count, 2 * 2049);
        let big = BatGeometry::new(1 << 20, 4096, 1 << 40, false).unwrap();
        assert_eq!(big.chunk_ratio, 32768);
        let small = BatGeometry::new(256 << 20, 512, 1 << 40, false).unwrap();
        assert_eq!(small.chunk_ratio, 16);
    }

    #[test]
    fn entry_bits() {
        let e = BatEntry::payload(PayloadState::FullyPresent, 5 * MIB);
        assert_eq!(e.file_offset(), 5 * MIB);
        assert_eq!(e.payload_state(), Some(PayloadState::FullyPresent));
        assert!(e.has_data() && !e.is_empty());
        assert!(e.sector_bitmap_present(), "state 6 read as a sector bitmap entry");
        assert!(!BatEntry::new(SB_NOT_PRESENT, 0).sector_bitmap_present());
        assert!(BatEntry::EMPTY.is_empty() && !BatEntry::EMPTY.has_data());
        assert_eq!(PayloadState::from_entry(5), Some(PayloadState::Unmapped));
        assert_eq!(PayloadState::from_entry(4), None);
    }
}
