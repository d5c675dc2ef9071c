//! Whole-image operations built on [`crate::Disk`]: merging differencing
//! disks (one into an ancestor, or several siblings into their parent),
//! finding trees of them, re-linking, compacting (also by the guest
//! filesystems' own allocation maps, [`fs`]), converting, resizing.

pub mod convert;
// Change-set arithmetic for the merges (std only).
#[cfg(feature = "std")]
pub(crate) mod ranges;

#[cfg(feature = "std")]
pub mod compact;
#[cfg(feature = "std")]
pub mod fs;
#[cfg(feature = "std")]
pub(crate) mod link;
#[cfg(feature = "std")]
pub mod merge;
#[cfg(feature = "std")]
pub(crate) mod replace;
#[cfg(feature = "std")]
pub mod resize;
#[cfg(feature = "std")]
pub mod siblings;
#[cfg(feature = "std")]
pub mod tree;
