//! Parent chains: finding a differencing disk's parent and checking the link.
//!
//! A child names its parent twice: by place (the locator's path entries) and
//! by identity (`parent_linkage`, the parent's DataWriteGuid when the child
//! was made; `parent_linkage2` an alternative). A candidate is accepted only
//! when its current DataWriteGuid equals one of them, so a parent that was
//! modified, replaced or merged into is refused instead of silently giving
//! wrong data.
//!
//! Resolution order (documented contract): `relative_path`, then
//! `volume_path`, then `absolute_win32_path`. Chains are limited to
//! [`MAX_CHAIN_DEPTH`] links; a file met twice is a cycle. Parents always
//! open read-only.
//!
//! `relative_path` is relative to the directory holding the child, however
//! the child was named (`child.vhdx`, `./sub/child.vhdx`, an absolute path),
//! with `..` kept: a child opened as `child.vhdx` whose locator says
//! `..\base.vhdx` finds `../base.vhdx`, as Hyper-V and QEMU do. Symbolic
//! links are the filesystem's business: `..` out of a symlinked directory
//! leads to the parent of the link's target (as `open` and QEMU resolve it),
//! so the same parent is found whichever way the directory was reached; a
//! child that is itself a link resolves from the link's directory (as in
//! QEMU). Locators this crate writes ([`locator_for`]) are computed from the
//! real locations, so they resolve back to the parent they were made for.
//! Windows absolute paths (`C:\…`, UNC, volume paths) are not tried on other
//! systems; a locator holding nothing else gives an
//! [`Error::ParentNotFound`] that says so ([`windows_paths`], [`looked_for`]).

#[cfg(feature = "std")]
mod any;
mod create;
#[cfg(feature = "std")]
mod fs;
mod image_format;
mod map;
pub(crate) mod open;
#[cfg(feature = "std")]
pub(crate) mod vhd;

pub use map::{map, ChainLevel, ChainMapEntry};

#[cfg(feature = "std")]
pub use any::AnyDisk;
#[cfg(feature = "std")]
pub use fs::{locator_for, looked_for, resolve_relative, windows_paths, FsResolver};
#[cfg(feature = "std")]
pub(crate) use fs::{normalize, relative};
pub use image_format::ImageFormat;

use alloc::boxed::Box;
use alloc::string::String;

use crate::error::{Error, Result};
use crate::format::locator::ParentLocator;
use crate::Disk;

/// The deepest chain that will be opened (child excluded).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Opens parents of differencing disks. The crate's filesystem resolver
/// ([`FsResolver`]) follows the locator; callers may supply their own (a
/// catalogue, a blob store, the C ABI's callback).
pub trait ParentResolver: Send + Sync {
    /// Opens, read-only, the parent described by `locator` of the child whose
    /// location is `child` (a path, if the child has one). `depth` is the
    /// parent's distance from the leaf (1 for the leaf's parent). The returned
    /// disk must itself be opened with its own parent resolved. Returns the
    /// disk and a name for messages (its path).
    fn open_parent(&mut self, child: Option<&str>, locator: &ParentLocator, depth: usize) -> Result<(Disk, String)>;
}

/// Checks that `parent` is the disk `locator` links to.
pub(crate) fn check_linkage(locator: &ParentLocator, parent: &Disk, parent_name: &str) -> Result<()> {
    let found = parent.data_write_guid();
    let expected = locator.parent_linkage();
    if Some(found) == expected || Some(found) == locator.parent_linkage2() {
        return Ok(());
    }
    Err(Error::ParentMismatch { parent: String::from(parent_name), expected: expected.unwrap_or_default(), found })
}

/// Opens a parent without a caller-supplied resolver: the filesystem
/// resolver under `std`, otherwise a clear "not found".
pub(crate) fn default_open_parent(child: Option<&str>, locator: &ParentLocator) -> Result<(Disk, String)> {
    #[cfg(feature = "std")]
    {
        let mut r = match child {
            Some(c) => FsResolver::new().with_leaf(std::path::Path::new(c)),
            None => FsResolver::new(),
        };
        r.open_parent(child, locator, 1)
    }
    #[cfg(not(feature = "std"))]
    {
        let _ = child;
        Err(Error::ParentNotFound {
            looked_for: alloc::format!(
                "{} (no resolver was given and there is no filesystem without std)",
                locator.get(crate::format::locator::RELATIVE_PATH).unwrap_or("a parent")
            ),
        })
    }
}

/// A resolver built from a closure.
pub struct FnResolver<F>(pub F);

impl<F> ParentResolver for FnResolver<F>
where
    F: FnMut(Option<&str>, &ParentLocator, usize) -> Result<(Disk, String)> + Send + Sync,
{
    fn open_parent(&mut self, child: Option<&str>, locator: &ParentLocator, depth: usize) -> Result<(Disk, String)> {
        (self.0)(child, locator, depth)
    }
}

/// A boxed resolver.
pub type BoxedResolver = Box<dyn ParentResolver>;
