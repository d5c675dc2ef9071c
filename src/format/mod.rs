//! The on-disk format: a read-only view for tools that inspect images.
//!
//! This layer knows bytes, not files. Each structure has a raw `#[repr(C)]`
//! zerocopy form (crate-private) whose fields are little-endian integers and
//! raw GUID bytes, with a size assertion; a public `parse`/`validate` step
//! turns raw bytes into a checked type whose values obey the spec: the
//! [`header`], the [`region`] table, the [`metadata`] items, the [`bat`]
//! entries' states and offsets, the parent [`locator`], the well-known
//! [`guid`]s and the [`crc`] the format seals its structures with. Nothing
//! here allocates more than a spec-bounded size.
//!
//! Writing stays inside the crate: the builders that emit these structures,
//! and the log that carries every metadata change to the file, are reached
//! only through [`Disk`](crate::Disk), so no caller can bypass its header
//! and log rules.

pub mod bat;
pub mod crc;
pub mod guid;
pub mod header;
pub mod locator;
pub(crate) mod log;
pub mod metadata;
pub mod region;
#[cfg(all(test, feature = "std"))]
pub(crate) mod spec_tests;
pub mod vhd;

/// One mebibyte: the format's alignment unit.
pub const MIB: u64 = 1 << 20;
/// The header section's length (file identifier, headers, region tables).
pub const HEADER_SECTION_SIZE: u64 = MIB;
/// Smallest payload block.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// Largest payload block.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Default payload block size for fixed and dynamic disks.
pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;
/// Default payload block size for differencing disks.
pub const DEFAULT_DIFFERENCING_BLOCK_SIZE: u32 = 2 << 20;
/// Largest virtual disk: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Whether `n` is a multiple of 1 MiB.
pub fn is_mib_multiple(n: u64) -> bool {
    n % MIB == 0
}

/// `n` rounded up to a multiple of 1 MiB (saturating).
pub fn round_up_mib(n: u64) -> u64 {
    n.div_ceil(MIB).saturating_mul(MIB)
}
