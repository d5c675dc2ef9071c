//! Whole-image operations built on [`crate::Disk`]: merging differencing
//! disks, finding trees of them, re-linking, compacting, converting.

pub mod convert;
pub mod ranges;

#[cfg(feature = "std")]
pub mod compact;
#[cfg(feature = "std")]
pub mod merge;
#[cfg(feature = "std")]
pub mod tree;
