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

/// What to do about a differencing disk's parent.
pub(crate) enum ParentChoice {
    /// Find it with the default resolver (the filesystem one under `std`).
    Resolve,
    /// Find it with this resolver; the parent is at this depth from the leaf.
    Resolver(crate::chain::BoxedResolver, usize),
    /// Find it with the filesystem resolver, opening files only inside these directories.
    #[cfg(feature = "std")]
    Confined(alloc::vec::Vec<std::path::PathBuf>),
    /// Use this disk, after checking its DataWriteGuid against the linkage.
    Disk(Box<crate::Disk>),
    /// Read sectors the child does not hold as zeros (child-only forensic view).
    None,
}

/// Options for opening an existing image.
///
/// ```no_run
/// # fn main() -> vhdx::Result<()> {
/// let disk = vhdx::OpenOptions::new().writable(true).open("disk.vhdx")?;
/// # Ok(()) }
/// ```
pub struct OpenOptions {
    pub(crate) writable: bool,
    pub(crate) guid_source: Option<GuidSource>,
    pub(crate) parent: ParentChoice,
    pub(crate) path: Option<alloc::string::String>,
    #[cfg(feature = "std")]
    pub(crate) opener: Option<crate::io::FileOpener>,
    #[cfg(feature = "std")]
    pub(crate) force_share: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// Read-only, parent resolved, default GUID source.
    pub fn new() -> Self {
        OpenOptions {
            writable: false,
            guid_source: default_guid_source(),
            parent: ParentChoice::Resolve,
            path: None,
            #[cfg(feature = "std")]
            opener: None,
            #[cfg(feature = "std")]
            force_share: false,
        }
    }

    /// Open files by path through `opener` instead of the filesystem: the
    /// image itself and, with the filesystem resolver (the default, or
    /// [`parent_search_dirs`](Self::parent_search_dirs)), its parents.
    #[cfg(feature = "std")]
    pub fn file_opener(mut self, opener: crate::io::FileOpener) -> Self {
        self.opener = Some(opener);
        self
    }

    /// Open a read-only image, and its parents, without locking them and
    /// whatever others hold, like `qemu-img -U` (force-share): to inspect an
    /// image another process is writing, knowing that what is read may be
    /// inconsistent while it changes. Without it, opening an image that is
    /// open for writing elsewhere fails with [`Error::Busy`].
    ///
    /// A writable open with `force_share(true)` is refused
    /// ([`Error::InvalidArgument`]): nothing may write behind a lock holder's
    /// back. It applies to files opened by the filesystem; a
    /// [`file_opener`](Self::file_opener) opens files its own way.
    ///
    /// ```no_run
    /// # fn main() -> vhdx::Result<()> {
    /// let disk = vhdx::OpenOptions::new().force_share(true).open("in-use.vhdx")?;
    /// println!("{} bytes", disk.virtual_size());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "std")]
    pub fn force_share(mut self, force_share: bool) -> Self {
        self.force_share = force_share;
        self
    }

    /// Open for writing as well as reading. A dirty log is then replayed in
    /// place; read-only opens replay it in memory and leave the file untouched.
    pub fn writable(mut self, writable: bool) -> Self {
        self.writable = writable;
        self
    }

    /// Where fresh GUIDs come from (needed for writable opens without `std`).
    pub fn guid_source(mut self, source: GuidSource) -> Self {
        self.guid_source = Some(source);
        self
    }

    /// Use `parent` as the parent of a differencing disk. Its DataWriteGuid
    /// must match the child's `parent_linkage` (or `parent_linkage2`).
    pub fn parent(mut self, parent: crate::Disk) -> Self {
        self.parent = ParentChoice::Disk(Box::new(parent));
        self
    }

    /// Find parents with `resolver` instead of the locator's paths.
    pub fn resolver(mut self, resolver: crate::chain::BoxedResolver) -> Self {
        self.parent = ParentChoice::Resolver(resolver, 0);
        self
    }

    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn resolver_at_depth(mut self, resolver: crate::chain::BoxedResolver, depth: usize) -> Self {
        self.parent = ParentChoice::Resolver(resolver, depth);
        self
    }

    /// Resolve parents through the locator, but open only files inside
    /// `dirs` (for images from untrusted sources).
    #[cfg(feature = "std")]
    pub fn parent_search_dirs(mut self, dirs: impl IntoIterator<Item = std::path::PathBuf>) -> Self {
        self.parent = ParentChoice::Confined(dirs.into_iter().collect());
        self
    }

    /// Open a differencing disk on its own: sectors it does not hold read as
    /// zeros. This is the child-only view forensic tools use when the parent is
    /// lost; such a disk takes no data writes (metadata operations such as
    /// re-linking work).
    pub fn without_parent(mut self) -> Self {
        self.parent = ParentChoice::None;
        self
    }

    /// Opens an image on any storage.
    #[cfg_attr(not(feature = "std"), allow(unused_mut))]
    pub fn open_storage(mut self, storage: Box<dyn crate::io::Storage>) -> Result<crate::Disk> {
        #[cfg(feature = "std")]
        {
            if self.force_share && self.writable {
                return Err(Self::force_share_writable());
            }
            if matches!(self.parent, ParentChoice::Resolve | ParentChoice::Confined(_)) {
                self.parent = self.fs_resolver(None);
            }
        }
        crate::disk::open::open(storage, self)
    }

    /// Opens the image at `path`; errors name the file.
    #[cfg(feature = "std")]
    pub fn open(mut self, path: impl AsRef<std::path::Path>) -> Result<crate::Disk> {
        let path = path.as_ref();
        if self.force_share && self.writable {
            return Err(Self::force_share_writable().in_file(path.display()));
        }
        self.path = Some(alloc::format!("{}", path.display()));
        if matches!(self.parent, ParentChoice::Resolve | ParentChoice::Confined(_)) {
            self.parent = self.fs_resolver(Some(path));
        }
        let storage = self
            .file_opener_in_use()
            .open(path, self.writable)
            .map_err(|source| Error::opening("open", source, self.writable).in_file(path.display()))?;
        self.open_storage(storage).map_err(|e| e.in_file(path.display()))
    }

    #[cfg(feature = "std")]
    fn force_share_writable() -> Error {
        Error::invalid("force-share is only for read-only opens: a writer must hold the lock")
    }

    /// The opener files are opened with: the caller's, else the filesystem
    /// (without locks for force-share).
    #[cfg(feature = "std")]
    fn file_opener_in_use(&self) -> crate::io::FileOpener {
        match &self.opener {
            Some(opener) => opener.clone(),
            None if self.force_share => crate::io::FileOpener::force_share(),
            None => crate::io::FileOpener::default(),
        }
    }

    /// The filesystem resolver for `Resolve` or `Confined`, opening files as
    /// this open does, with the leaf at `leaf` (for loop detection).
    #[cfg(feature = "std")]
    fn fs_resolver(&mut self, leaf: Option<&std::path::Path>) -> ParentChoice {
        let mut resolver = match core::mem::replace(&mut self.parent, ParentChoice::None) {
            ParentChoice::Confined(dirs) => crate::chain::FsResolver::confined_to(dirs),
            _ => crate::chain::FsResolver::new(),
        };
        if let Some(leaf) = leaf {
            resolver = resolver.with_leaf(leaf);
        }
        ParentChoice::Resolver(Box::new(resolver.with_opener(self.file_opener_in_use())), 0)
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
