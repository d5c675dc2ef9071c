//! Either format, chosen by content: [`ImageFormat`] says which a file
//! holds, and [`AnyDisk`] opens a VHDX or a VHD with its chain behind one
//! type, so that what works on a chain — reading, writing, mapping, the
//! tree, finding children, serving — needs no knowledge of the format.
//!
//! The two formats link a child to its parent differently, and that is the
//! one thing [`AnyDisk`] names rather than hides: a VHDX child names its
//! parent's DataWriteGuid, which changes with the parent's content; a VHD
//! child names its parent's unique ID, which never changes.
//! [`AnyDisk::identity`] is the ID children name, [`AnyDisk::links_to`]
//! whether this disk names a given one, and [`AnyDisk::tracks_versions`]
//! whether a change of content shows in the identity.

use alloc::string::String;
use alloc::vec::Vec;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::vhd::VhdType;
use crate::io::FileOpener;
use crate::vhd::VhdDisk;
use crate::{BlockDevice, Disk, DiskType, Guid, OpenOptions};

use super::open::ParentChoice;
use super::ImageFormat;

impl ImageFormat {
    /// The format of an existing image: raw when its name says so (`.raw`,
    /// `.img`: a raw disk's content is the guest's and is never probed, so
    /// a guest cannot make its disk pass for an image with a parent), else
    /// by content: VHDX by its file type identifier, VHD by its footer (at
    /// the end, or its copy at the start), whatever the name; a file with
    /// neither is taken for a VHDX, whose open then says what is wrong.
    pub fn detect(path: &Path) -> ImageFormat {
        use std::io::{Read, Seek, SeekFrom};
        if ImageFormat::from_path(path) == ImageFormat::Raw {
            return ImageFormat::Raw;
        }
        // Opened as images are: a regular file only, never blocking (a FIFO
        // would hang a plain open), and without taking a lock (a look is
        // not a use; the open that follows locks).
        let mode = crate::io::lock::Mode { writable: false, create_new: false, lock: false };
        let Ok(mut file) = crate::io::lock::open(path, mode) else { return ImageFormat::from_path(path) };
        let len = file.metadata().map_or(0, |m| m.len());
        let mut head = [0u8; 8];
        let mut tail = [0u8; 8];
        let head_ok = file.read_exact(&mut head).is_ok();
        let tail_ok = len >= 512 && file.seek(SeekFrom::Start(len - 512)).is_ok() && file.read_exact(&mut tail).is_ok();
        Self::from_magic(path, head_ok.then_some(head), tail_ok.then_some(tail))
    }

    /// [`ImageFormat::detect`], reading the file through `opener` (storage
    /// of the caller's own, or files a [`crate::io::LockSet`] holds).
    pub fn detect_through(opener: &FileOpener, path: &Path) -> ImageFormat {
        if ImageFormat::from_path(path) == ImageFormat::Raw {
            return ImageFormat::Raw;
        }
        let Ok(storage) = opener.open(path, false) else { return ImageFormat::from_path(path) };
        let len = storage.len().unwrap_or(0);
        let mut head = [0u8; 8];
        let mut tail = [0u8; 8];
        let head_ok = storage.read_exact_at(&mut head, 0).is_ok();
        let tail_ok = len >= 512 && storage.read_exact_at(&mut tail, len - 512).is_ok();
        Self::from_magic(path, head_ok.then_some(head), tail_ok.then_some(tail))
    }

    fn from_magic(path: &Path, head: Option<[u8; 8]>, tail: Option<[u8; 8]>) -> ImageFormat {
        if head == Some(*b"vhdxfile") {
            ImageFormat::Vhdx
        } else if head == Some(*b"conectix")
            || tail == Some(*b"conectix")
            || ImageFormat::from_path(path) == ImageFormat::Vhd
        {
            ImageFormat::Vhd
        } else {
            ImageFormat::Vhdx
        }
    }
}

/// A VHDX or a VHD, whichever the file holds, opened with its chain.
///
/// ```no_run
/// use vhdx::{AnyDisk, BlockDevice};
/// let disk = AnyDisk::open("old-or-new.vhd")?; // by content, whatever the name
/// let mut first = [0u8; 512];
/// disk.read_at(&mut first, 0)?;
/// println!("{}: {} bytes, {:?}", disk.format().as_str(), disk.virtual_size(), disk.chain_paths());
/// # Ok::<(), vhdx::Error>(())
/// ```
// Held one at a time: the size of the smaller variant costs nothing worth
// an indirection on every read.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyDisk {
    /// A VHDX.
    Vhdx(Disk),
    /// A VHD.
    Vhd(VhdDisk),
}

impl OpenOptions {
    /// Opens `path` as whichever format it holds ([`ImageFormat::detect`],
    /// through the file opener when one is set). A VHD takes these options'
    /// writability, [`without_parent`](Self::without_parent), file opener
    /// and [`force_share`](Self::force_share); a resolver of its own, search
    /// directories or a given parent disk are refused for it
    /// ([`Error::Unsupported`]): its parent is found by its own locators.
    pub fn open_any(self, path: impl AsRef<Path>) -> Result<AnyDisk> {
        let path = path.as_ref();
        let format = match &self.opener {
            Some(o) => ImageFormat::detect_through(o, path),
            None => ImageFormat::detect(path),
        };
        if format != ImageFormat::Vhd {
            return self.open(path).map(AnyDisk::Vhdx);
        }
        if self.force_share && self.writable {
            return Err(Error::invalid("force-share is only for read-only opens: a writer must hold the lock")
                .in_file(path.display()));
        }
        let alone = match self.parent {
            ParentChoice::Resolve => false,
            ParentChoice::None => true,
            _ => {
                return Err(Error::unsupported(
                    "open options",
                    0,
                    "a VHD finds its parent through its own locators: a resolver, search directories or a given \
                     parent apply to VHDX only",
                )
                .in_file(path.display()))
            }
        };
        let opener = match (self.opener, self.force_share) {
            (Some(o), _) => o,
            (None, true) => FileOpener::force_share(),
            (None, false) => FileOpener::default(),
        };
        let disk = if alone {
            super::vhd::open_file(&opener, path, self.writable)?
        } else {
            super::vhd::open_chain(&opener, path, self.writable, 0)?
        };
        Ok(AnyDisk::Vhd(disk))
    }
}

impl AnyDisk {
    /// Opens `path` read-only with its chain, as whichever format it holds.
    pub fn open(path: impl AsRef<Path>) -> Result<AnyDisk> {
        OpenOptions::new().open_any(path)
    }

    /// Opens `path` for writing (its parents read-only), as whichever
    /// format it holds.
    pub fn open_writable(path: impl AsRef<Path>) -> Result<AnyDisk> {
        OpenOptions::new().writable(true).open_any(path)
    }

    /// Which format it is.
    pub fn format(&self) -> ImageFormat {
        match self {
            AnyDisk::Vhdx(_) => ImageFormat::Vhdx,
            AnyDisk::Vhd(_) => ImageFormat::Vhd,
        }
    }

    /// The virtual disk's size in bytes.
    pub fn virtual_size(&self) -> u64 {
        match self {
            AnyDisk::Vhdx(d) => d.virtual_size(),
            AnyDisk::Vhd(d) => d.virtual_size(),
        }
    }

    /// Fixed, dynamic or differencing.
    pub fn disk_type(&self) -> DiskType {
        match self {
            AnyDisk::Vhdx(d) => d.disk_type(),
            AnyDisk::Vhd(d) => match d.disk_type() {
                VhdType::Fixed => DiskType::Fixed,
                VhdType::Dynamic => DiskType::Dynamic,
                VhdType::Differencing => DiskType::Differencing,
            },
        }
    }

    /// The path it was opened from, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            AnyDisk::Vhdx(d) => d.path(),
            AnyDisk::Vhd(d) => d.path(),
        }
    }

    /// The paths of the chain open with it, leaf first.
    pub fn chain_paths(&self) -> Vec<String> {
        match self {
            AnyDisk::Vhdx(d) => d.chain_paths(),
            AnyDisk::Vhd(d) => d.chain_paths(),
        }
    }

    /// The ID its children name as their parent's: a VHDX's DataWriteGuid,
    /// a VHD's footer unique ID.
    pub fn identity(&self) -> Guid {
        match self {
            AnyDisk::Vhdx(d) => d.data_write_guid(),
            AnyDisk::Vhd(d) => d.footer().unique_id,
        }
    }

    /// Whether a change of its content shows in [`identity`](Self::identity)
    /// (VHDX: a new DataWriteGuid, so children made before refuse it), or
    /// not (VHD: the unique ID stays; a child cannot tell).
    pub fn tracks_versions(&self) -> bool {
        matches!(self, AnyDisk::Vhdx(_))
    }

    /// The parent ID this differencing disk names (`None` for any other):
    /// a VHDX's `parent_linkage`, a VHD's parent unique ID.
    pub fn parent_identity(&self) -> Option<Guid> {
        match self {
            AnyDisk::Vhdx(d) => d.parent_locator().and_then(|l| l.parent_linkage()),
            AnyDisk::Vhd(d) => {
                d.dynamic_header().filter(|_| d.disk_type() == VhdType::Differencing).map(|h| h.parent_unique_id)
            }
        }
    }

    /// Whether this differencing disk accepts a parent whose
    /// [`identity`](Self::identity) is `id`: a VHDX's `parent_linkage` or
    /// its announced `parent_linkage2`; a VHD's parent unique ID.
    pub fn links_to(&self, id: Guid) -> bool {
        match self {
            AnyDisk::Vhdx(d) => {
                d.parent_locator().is_some_and(|l| l.parent_linkage() == Some(id) || l.parent_linkage2() == Some(id))
            }
            AnyDisk::Vhd(_) => self.parent_identity() == Some(id),
        }
    }

    /// Where this differencing disk (opened from `path`) says its parent
    /// is, in the order it is looked for, and the Windows absolute paths
    /// that cannot be tried on this system; empty for any other disk.
    pub fn parent_candidates(&self, path: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
        match self {
            AnyDisk::Vhdx(d) => Ok(match d.parent_locator() {
                Some(loc) => (super::FsResolver::candidates(Some(path), loc), super::windows_paths(loc)),
                None => (Vec::new(), Vec::new()),
            }),
            AnyDisk::Vhd(d) => super::vhd::parent_candidates(path, d),
        }
    }

    /// The chain-wide map ([`super::map()`]).
    pub fn map(&self) -> Result<Vec<super::ChainMapEntry>> {
        match self {
            AnyDisk::Vhdx(d) => super::map(d),
            AnyDisk::Vhd(d) => super::map(d),
        }
    }

    /// The VHDX, if it is one.
    pub fn as_vhdx(&self) -> Option<&Disk> {
        match self {
            AnyDisk::Vhdx(d) => Some(d),
            AnyDisk::Vhd(_) => None,
        }
    }

    /// The VHD, if it is one.
    pub fn as_vhd(&self) -> Option<&VhdDisk> {
        match self {
            AnyDisk::Vhd(d) => Some(d),
            AnyDisk::Vhdx(_) => None,
        }
    }

    /// Makes everything written durable and closes it (a VHDX commits its
    /// metadata; a VHD flushes its data, then its sector bitmaps).
    pub fn close(self) -> Result<()> {
        match self {
            AnyDisk::Vhdx(d) => d.close(),
            AnyDisk::Vhd(mut d) => d.flush(),
        }
    }

    fn as_device(&self) -> &dyn BlockDevice {
        match self {
            AnyDisk::Vhdx(d) => d,
            AnyDisk::Vhd(d) => d,
        }
    }

    fn as_device_mut(&mut self) -> &mut dyn BlockDevice {
        match self {
            AnyDisk::Vhdx(d) => d,
            AnyDisk::Vhd(d) => d,
        }
    }
}

impl From<Disk> for AnyDisk {
    fn from(d: Disk) -> AnyDisk {
        AnyDisk::Vhdx(d)
    }
}

impl From<VhdDisk> for AnyDisk {
    fn from(d: VhdDisk) -> AnyDisk {
        AnyDisk::Vhd(d)
    }
}

impl BlockDevice for AnyDisk {
    fn sector_size(&self) -> u32 {
        self.as_device().sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.as_device().sector_count()
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.as_device().read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        self.as_device_mut().write_sectors(lba, buf)
    }
    fn flush(&mut self) -> Result<()> {
        self.as_device_mut().flush()
    }
    fn physical_sector_size(&self) -> u32 {
        self.as_device().physical_sector_size()
    }
    fn is_writable(&self) -> bool {
        self.as_device().is_writable()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.as_device().read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.as_device_mut().write_at(buf, offset)
    }
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        self.as_device().data_ranges()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.as_device_mut().discard(offset, len)
    }
    fn checkpoint(&mut self) -> Result<()> {
        self.as_device_mut().checkpoint()
    }
    fn write_at_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        self.as_device().write_at_shared(buf, offset)
    }
    fn reserve(&mut self, offset: u64, len: u64) -> Result<crate::Reservation> {
        self.as_device_mut().reserve(offset, len)
    }
    fn reserve_shared(&self, offset: u64, len: u64) -> Result<bool> {
        self.as_device().reserve_shared(offset, len)
    }
    fn flush_shared(&self) -> Result<bool> {
        self.as_device().flush_shared()
    }
    fn write_reserved(&self, buf: &[u8], offset: u64) -> Result<bool> {
        self.as_device().write_reserved(buf, offset)
    }
    fn commit_reserved(&mut self, offset: u64, len: u64) -> Result<()> {
        self.as_device_mut().commit_reserved(offset, len)
    }
    fn commit_reserved_shared(&self, offset: u64, len: u64) -> Result<bool> {
        self.as_device().commit_reserved_shared(offset, len)
    }
    fn write_and_commit_shared(&self, buf: &[u8], offset: u64) -> Result<bool> {
        self.as_device().write_and_commit_shared(buf, offset)
    }
}
