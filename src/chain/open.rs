//! Opening a disk with its chain: the image itself is read and checked by
//! the image layer ([`crate::disk`]), one file, no parent; this layer finds
//! its parent as the options say (a resolver, the filesystem, a given
//! disk, none), checks the link, and attaches it.

use alloc::boxed::Box;
use alloc::format;

use crate::disk::open::{finish, read_image};
use crate::disk::Image;
use crate::disk::{default_guid_source, GuidSource};
use crate::error::{Error, Result};
use crate::io::Storage;
use crate::Disk;

/// What to do about a differencing disk's parent.
pub(crate) enum ParentChoice {
    /// Find it with the default resolver (the filesystem one under `std`).
    Resolve,
    /// Find it with this resolver; the parent is at this depth from the leaf.
    Resolver(super::BoxedResolver, usize),
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
    pub(crate) bat_cache_bytes: usize,
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
            bat_cache_bytes: crate::disk::DEFAULT_BAT_CACHE_BYTES,
            #[cfg(feature = "std")]
            opener: None,
            #[cfg(feature = "std")]
            force_share: false,
        }
    }

    /// Bounds the memory that caches this image's block table (BAT) pages,
    /// in bytes (default 4 MiB: the whole table of a 16 TiB disk with
    /// 32 MiB blocks). Pages are read when first needed and the least
    /// recently read go first when the bound is reached; a page changed and
    /// not yet flushed is held apart from the bound. Parents opened through
    /// the chain use the default.
    pub fn bat_cache_bytes(mut self, bytes: usize) -> Self {
        self.bat_cache_bytes = bytes;
        self
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
    pub fn resolver(mut self, resolver: super::BoxedResolver) -> Self {
        self.parent = ParentChoice::Resolver(resolver, 0);
        self
    }

    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn resolver_at_depth(mut self, resolver: super::BoxedResolver, depth: usize) -> Self {
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
        open(storage, self)
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
            ParentChoice::Confined(dirs) => super::FsResolver::confined_to(dirs),
            _ => super::FsResolver::new(),
        };
        if let Some(leaf) = leaf {
            resolver = resolver.with_leaf(leaf);
        }
        ParentChoice::Resolver(Box::new(resolver.with_opener(self.file_opener_in_use())), 0)
    }
}

/// Opens the image on `storage` as `opts` say, its parent included.
fn open(storage: Box<dyn Storage>, opts: OpenOptions) -> Result<Disk> {
    let OpenOptions { writable, guid_source, parent, path, bat_cache_bytes, .. } = opts;
    if writable && guid_source.is_none() {
        return Err(Error::invalid("a writable open needs a GUID source when built without std"));
    }
    let image = read_image(storage, writable, guid_source, path, bat_cache_bytes)?;
    let parent = open_parent(&image, parent)?;
    finish(image, parent)
}

/// The parent of a differencing `image`, as `choice` says to find it,
/// checked against the image's locator and sector size; `None` for a disk
/// without a parent, or when the caller asked for none.
fn open_parent(image: &Image, choice: ParentChoice) -> Result<Option<Box<Disk>>> {
    let (params, path) = (image.params(), image.path());
    if !params.has_parent {
        return Ok(None);
    }
    let loc = image.locator().expect("a differencing disk has a locator");
    let (p, name) = match choice {
        ParentChoice::Disk(p) => (p, alloc::string::String::from("the given parent")),
        ParentChoice::Resolver(mut r, depth) => {
            let (d, name) = r.open_parent(path, loc, depth + 1)?;
            (Box::new(d), name)
        }
        ParentChoice::Resolve => {
            let (d, name) = super::default_open_parent(path, loc)?;
            (Box::new(d), name)
        }
        // `OpenOptions::open_storage` makes it a resolver; kept for completeness.
        #[cfg(feature = "std")]
        ParentChoice::Confined(dirs) => {
            use super::ParentResolver;
            let (d, name) = super::FsResolver::confined_to(dirs).open_parent(path, loc, 1)?;
            (Box::new(d), name)
        }
        ParentChoice::None => return Ok(None),
    };
    super::check_linkage(loc, &p, &name)?;
    if p.logical_sector_size() != params.logical_sector_size {
        return Err(Error::corrupt(
            "parent locator",
            0,
            format!(
                "the parent {name} has {}-byte sectors, the child {}-byte sectors",
                p.logical_sector_size(),
                params.logical_sector_size
            ),
        ));
    }
    Ok(Some(p))
}

impl Disk {
    /// Opens `path` read-only. A dirty log is replayed in memory.
    ///
    /// ```no_run
    /// let disk = vhdx::Disk::open("disk.vhdx")?;
    /// println!("{} bytes", disk.virtual_size());
    /// # Ok::<(), vhdx::Error>(())
    /// ```
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Disk> {
        OpenOptions::new().open(path)
    }

    /// Opens `path` for reading and writing. A dirty log is replayed in place.
    #[cfg(feature = "std")]
    pub fn open_writable(path: impl AsRef<std::path::Path>) -> Result<Disk> {
        OpenOptions::new().writable(true).open(path)
    }

    /// Opens an image on any storage, read-only.
    pub fn open_storage(storage: Box<dyn Storage>) -> Result<Disk> {
        OpenOptions::new().open_storage(storage)
    }
}
