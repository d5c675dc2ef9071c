//! Creating a differencing disk: the image layer writes the new file; this
//! layer makes its locator, checks it links to the parent, and attaches the
//! parent to the new disk.

use alloc::boxed::Box;
#[cfg(feature = "std")]
use alloc::format;

use crate::disk::{default_guid_source, CreateOptions, GuidSource};
use crate::error::{Error, Result};
use crate::format::locator::ParentLocator;
use crate::format::metadata::DiskParameters;
use crate::io::Storage;
use crate::{Disk, OpenOptions};

impl Disk {
    /// Creates a differencing disk at `path` (which must not exist) whose
    /// parent is the image at `parent`, and opens it for writing. The child
    /// takes the parent's virtual size and sector sizes; `block_size` defaults
    /// to 2 MiB. Its locator records `parent_linkage` (the parent's current
    /// DataWriteGuid), `relative_path` and `absolute_win32_path`.
    ///
    /// ```no_run
    /// let child = vhdx::Disk::create_differencing("child.vhdx", "base.vhdx", None)?;
    /// # Ok::<(), vhdx::Error>(())
    /// ```
    #[cfg(feature = "std")]
    pub fn create_differencing(
        path: impl AsRef<std::path::Path>,
        parent: impl AsRef<std::path::Path>,
        block_size: Option<u32>,
    ) -> Result<Disk> {
        create_differencing_file(path.as_ref(), parent.as_ref(), block_size)
    }

    /// Creates a differencing disk of the open `parent` on empty `storage`,
    /// with `locator` saying where to find the parent later (its
    /// `parent_linkage` must equal the parent's DataWriteGuid).
    pub fn create_differencing_on(
        storage: Box<dyn Storage>,
        parent: Disk,
        locator: ParentLocator,
        block_size: Option<u32>,
        guid_source: Option<GuidSource>,
    ) -> Result<Disk> {
        create_differencing(storage, parent, locator, block_size, guid_source, None)
    }
}

/// Creates a differencing disk of `parent` on empty `storage`: the parent's
/// virtual size, sector sizes and virtual disk ID, `locator` (which must link
/// to the parent's DataWriteGuid), and `block_size` (2 MiB by default).
fn create_differencing(
    mut storage: Box<dyn Storage>,
    parent: Disk,
    locator: ParentLocator,
    block_size: Option<u32>,
    guid_source: Option<GuidSource>,
    path: Option<alloc::string::String>,
) -> Result<Disk> {
    let block_size = block_size.unwrap_or(crate::format::DEFAULT_DIFFERENCING_BLOCK_SIZE);
    let mut guids = guid_source
        .or_else(default_guid_source)
        .ok_or_else(|| Error::invalid("creating an image without std needs a GUID source"))?;
    CreateOptions::dynamic(parent.virtual_size())
        .block_size(block_size)
        .logical_sector_size(parent.logical_sector_size())
        .physical_sector_size(parent.physical_sector_size())
        .validate()?;
    super::check_linkage(&locator, &parent, "the parent")?;
    let params = DiskParameters {
        block_size,
        leave_block_allocated: false,
        has_parent: true,
        virtual_size: parent.virtual_size(),
        virtual_disk_id: parent.info()?.virtual_disk_id,
        logical_sector_size: parent.logical_sector_size(),
        physical_sector_size: parent.physical_sector_size(),
    };
    crate::disk::create::write_new_image(&mut *storage, &params, Some(&locator), &mut guids)?;
    let mut opts = OpenOptions::new().writable(true).guid_source(guids).parent(parent);
    opts.path = path;
    opts.open_storage(storage)
}

#[cfg(feature = "std")]
fn create_differencing_file(
    child: &std::path::Path,
    parent: &std::path::Path,
    block_size: Option<u32>,
) -> Result<Disk> {
    let parent_disk = OpenOptions::new().open(parent)?;
    let locator =
        super::locator_for(child, parent, &parent_disk.data_write_guid()).map_err(|e| e.in_file(child.display()))?;
    let storage = crate::io::FileStorage::create_new(child)
        .map_err(|source| Error::opening("create", source, true).in_file(child.display()))?;
    let disk = create_differencing(
        Box::new(storage),
        parent_disk,
        locator,
        block_size,
        None,
        Some(format!("{}", child.display())),
    )
    .map_err(|e| {
        let _ = std::fs::remove_file(child);
        e.in_file(child.display())
    })?;
    crate::disk::create::sync_name(child)?;
    Ok(disk)
}
