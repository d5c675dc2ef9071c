//! [`Disk`]: an open VHDX image — fixed, dynamic or differencing.
//!
//! Two levels: an `Image` is one file (its headers, block table, sector
//! bitmaps, log and this session's changes) and reads no other file; a
//! [`Disk`] is an image over the disk of its parent, and does what crosses
//! levels: reads that fall through to ancestors, the partial sectors of a
//! differencing write, discard and compaction asking what the parent reads.
//! The chain layer (`crate::chain`) finds the parent and composes them.
//!
//! Invariants:
//! - The BAT is read a page at a time when first needed, through a bounded
//!   cache, each page checked as it is read (`table`); pages changed by
//!   writes are held whole until the next [`Disk::flush`], which makes the
//!   payload durable first and then commits the pages through the log.
//!   Flushed data is never lost; data written since the last flush may be,
//!   whole sectors at a time.
//! - Before the first change a reader can see, the session updates the
//!   headers once: new FileWriteGuid and DataWriteGuid, in the non-current
//!   slot, with a higher sequence number.
//! - Every block offset a page holds is checked when the page is read to lie
//!   after the header section, outside the log and regions, and to start
//!   inside the file. Before its first new block a session checks the whole
//!   table (no two blocks overlap) and finds where the last block ends; new
//!   blocks go past every structure and block.

#[cfg(feature = "std")]
mod bits;
mod cache;
mod commit;
mod compact;
pub(crate) mod create;
mod diff;
mod discard;
mod headers;
pub(crate) mod open;
mod options;
mod relink;
mod repair;
mod resize;
mod resolve;
mod rw;
mod session;
mod shared;
mod space;
mod table;
mod undo;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

pub use compact::CompactReport;
pub(crate) use discard::reads_zero_structurally;
pub(crate) use options::default_guid_source;
pub use options::{CreateOptions, DiskType, GuidSource};
pub use resolve::{IoExtent, IoTarget};
pub use rw::{Extent, MapEntry};
pub use shared::Reservation;
pub(crate) use table::DEFAULT_CACHE_BYTES as DEFAULT_BAT_CACHE_BYTES;

use crate::error::Result;
use crate::format::bat::{BatEntry, BatGeometry};
use crate::format::guid::Guid;
use crate::format::locator::ParentLocator;
use crate::format::metadata::DiskParameters;
use crate::format::region::RegionTable;
use crate::io::Storage;
use crate::log::LogWriter;

/// An open VHDX image.
///
/// Reads take `&self` and may run from many threads at once; so may writes
/// into space the image already stores ([`Disk::write_at_shared`]), new
/// blocks ([`Disk::reserve_shared`]) and a differencing disk's sector bits
/// ([`Disk::commit_write_shared`]), and writes of part of a differencing
/// disk's sector ([`Disk::write_and_commit_shared`]). Other writes take
/// `&mut self`. Share a disk between threads as `std::sync::RwLock<Disk>`
/// and write with [`write_concurrently`](crate::write_concurrently), which
/// holds the lock exclusively only for what cannot be shared (a session's
/// first new block, a full table of pinned pages).
///
/// ```
/// use vhdx::{CreateOptions, Disk, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(64 << 20), None)?;
/// disk.write_at(b"hello", 1000)?;
/// let mut buf = [0u8; 5];
/// disk.read_at(&mut buf, 1000)?;
/// assert_eq!(&buf, b"hello");
/// disk.flush()?;
/// # Ok(()) }
/// ```
pub struct Disk {
    /// The one file this disk opened.
    image: Image,
    parent: Option<Box<Disk>>,
    /// Per payload block, how many further ancestors beyond the parent a
    /// read may pass over because their blocks are not present (see
    /// `rw::ancestor_skips`). Ancestors never change while attached, so the
    /// table stays true whatever this disk writes. Empty when not built.
    skip: Vec<u8>,
}

/// One image file, read and checked, and this session's changes to it:
/// everything of a [`Disk`] but its parent. Nothing here reads another
/// file; a [`Disk`] composes an image with the disk of its parent.
pub(crate) struct Image {
    storage: Box<dyn Storage>,
    writable: bool,
    /// The file's length and where the next new block may go.
    space: space::SpaceCell,
    /// Where the last block of the table ends, once a whole-table check
    /// found it (before this session's first new block).
    blocks_end: Option<u64>,
    /// The current header and its slot.
    header: headers::Headers,
    regions: RegionTable,
    params: DiskParameters,
    locator: Option<ParentLocator>,
    /// The BAT: shape, place, entries, pages changed.
    table: table::BlockTable,
    /// Metadata pages (sector bitmaps) changed but not yet committed, by file offset.
    dirty_pages: BTreeMap<u64, Vec<u8>>,
    /// Committed sector bitmaps, shared by readers.
    bitmap_cache: cache::BitmapCache,
    /// Sector bitmap pages changed through `&self` (see `bits`).
    #[cfg(feature = "std")]
    shared_bits: bits::SharedBits,
    /// What a write that fails partway takes back.
    undo: undo::Undo,
    /// Held by a writer allocating blocks through `&self`
    /// ([`Disk::reserve_shared`]): such writers take turns; readers never
    /// take it.
    #[cfg(feature = "std")]
    allocating: std::sync::Mutex<()>,
    /// Held shared by a differencing disk's writer of whole sectors through
    /// `&self` from its data write to its commit, and exclusively by one
    /// writing part of a sector (which merges in the parent's bytes) through
    /// `&self` ([`Disk::write_and_commit_shared`]), so that no merge reads a
    /// sector another writer has written and not yet made present. Readers
    /// never take it. Taken before `allocating`, never while holding it.
    #[cfg(feature = "std")]
    merging: std::sync::RwLock<()>,
    /// Present once this session has set a LogGuid and may write the log.
    /// (Locked: a shared flush, [`Disk::flush_shared`], writes it too.)
    log: Locked<Option<LogWriter>>,
    /// This session's GUIDs: their source, which ones changed, the one a
    /// merge announced for the next change of content.
    session: session::Session,
    creator: String,
    replayed_log: bool,
    /// The file's path, when opened from one (for messages and relative parents).
    path: Option<String>,
    closed: bool,
}

/// A value the `&mut` paths change directly and, with `std`, `&self` paths
/// change under a lock.
#[derive(Default)]
pub(crate) struct Locked<T> {
    #[cfg(feature = "std")]
    inner: std::sync::Mutex<T>,
    #[cfg(not(feature = "std"))]
    inner: T,
}

impl<T> Locked<T> {
    pub(crate) fn new(value: T) -> Locked<T> {
        Locked { inner: value.into() }
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        #[cfg(feature = "std")]
        return self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        #[cfg(not(feature = "std"))]
        &mut self.inner
    }

    #[cfg(feature = "std")]
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of the value, under the lock with `std`.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        #[cfg(feature = "std")]
        return f(&self.lock());
        #[cfg(not(feature = "std"))]
        f(&self.inner)
    }
}

/// What [`Disk::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskInfo {
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Payload block size.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// The backing file's size.
    pub file_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// The virtual disk ID (SCSI page 83).
    pub virtual_disk_id: Guid,
    /// The current header's DataWriteGuid (what children link to).
    pub data_write_guid: Guid,
    /// The current header's FileWriteGuid.
    pub file_write_guid: Guid,
    /// The current header's sequence number.
    pub header_sequence_number: u64,
    /// The creator string of the file type identifier.
    pub creator: String,
    /// Whether a log was replayed when the disk was opened.
    pub log_replayed: bool,
    /// The parent locator entries of a differencing disk.
    pub parent_locator: Option<Vec<(String, String)>>,
    /// Payload blocks whose data lives in this file.
    pub allocated_blocks: u64,
}

impl Disk {
    /// Creates a new fixed or dynamic image at `path` (which must not exist)
    /// and opens it for writing.
    ///
    /// ```no_run
    /// let disk = vhdx::Disk::create("new.vhdx", &vhdx::CreateOptions::dynamic(10 << 30))?;
    /// # Ok::<(), vhdx::Error>(())
    /// ```
    #[cfg(feature = "std")]
    pub fn create(path: impl AsRef<std::path::Path>, options: &CreateOptions) -> Result<Disk> {
        create::create_file(path.as_ref(), options)
    }

    /// Creates a new fixed or dynamic image on empty `storage` and opens it
    /// for writing. `guid_source` supplies GUIDs (random when `None` with `std`).
    pub fn create_on(
        storage: Box<dyn Storage>,
        options: &CreateOptions,
        guid_source: Option<GuidSource>,
    ) -> Result<Disk> {
        create::create(storage, options, guid_source)
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.image.params.virtual_size
    }

    /// Logical sector size in bytes.
    pub fn logical_sector_size(&self) -> u32 {
        self.image.params.logical_sector_size
    }

    /// Physical sector size in bytes.
    pub fn physical_sector_size(&self) -> u32 {
        self.image.params.physical_sector_size
    }

    /// Payload block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.image.params.block_size
    }

    /// Fixed, dynamic or differencing.
    pub fn disk_type(&self) -> DiskType {
        if self.image.params.has_parent {
            DiskType::Differencing
        } else if self.image.params.leave_block_allocated {
            DiskType::Fixed
        } else {
            DiskType::Dynamic
        }
    }

    /// Whether the disk was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.image.writable
    }

    /// The current header's DataWriteGuid.
    pub fn data_write_guid(&self) -> Guid {
        self.image.header.data_write_guid
    }

    /// The parent locator of a differencing disk.
    pub fn parent_locator(&self) -> Option<&ParentLocator> {
        self.image.locator.as_ref()
    }

    /// The path the disk was opened from, if any.
    pub fn path(&self) -> Option<&str> {
        self.image.path.as_deref()
    }

    /// The paths of the chain, leaf first (entries without a path are `"?"`).
    pub fn chain_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut d = Some(self);
        while let Some(disk) = d {
            out.push(disk.image.path.clone().unwrap_or_else(|| String::from("?")));
            d = disk.parent.as_deref();
        }
        out
    }

    /// The parent disk, when one is attached.
    pub fn parent(&self) -> Option<&Disk> {
        self.parent.as_deref()
    }

    /// The image file of this disk, without its parent.
    pub(crate) fn image(&self) -> &Image {
        &self.image
    }

    /// The image file of this disk, for changes to its own metadata.
    pub(crate) fn image_mut(&mut self) -> &mut Image {
        &mut self.image
    }

    /// A summary of the image. Counting the allocated blocks reads the
    /// whole block table once (a MiB at a time, past the cache).
    pub fn info(&self) -> Result<DiskInfo> {
        let allocated_blocks = self.image.count_allocated()?;
        Ok(DiskInfo {
            disk_type: self.disk_type(),
            virtual_size: self.image.params.virtual_size,
            block_size: self.image.params.block_size,
            logical_sector_size: self.image.params.logical_sector_size,
            physical_sector_size: self.image.params.physical_sector_size,
            file_size: self.image.space.len(),
            chunk_ratio: self.image.table.geometry().chunk_ratio,
            virtual_disk_id: self.image.params.virtual_disk_id,
            data_write_guid: self.image.header.data_write_guid,
            file_write_guid: self.image.header.file_write_guid,
            header_sequence_number: self.image.header.sequence_number,
            creator: self.image.creator.clone(),
            log_replayed: self.image.replayed_log,
            parent_locator: self.image.locator.as_ref().map(|l| l.entries.clone()),
            allocated_blocks,
        })
    }

    /// The BAT's shape.
    pub fn geometry(&self) -> &BatGeometry {
        self.image.table.geometry()
    }

    /// BAT entry `index` as the session sees it (uncommitted changes
    /// included; empty past the BAT region). Reads and checks its page
    /// when it is not cached.
    pub fn bat_entry(&self, index: usize) -> Result<BatEntry> {
        self.image.bat(index)
    }

    /// Every BAT entry the geometry counts, as the session sees them. Holds
    /// the whole table: 8 bytes per entry.
    pub fn bat_entries(&self) -> Result<Vec<BatEntry>> {
        let mut out = Vec::with_capacity(self.image.table.geometry().entry_count as usize);
        self.image.scan_bat(|_, e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// The validated region table.
    pub fn regions(&self) -> &RegionTable {
        &self.image.regions
    }

    /// Closes the disk cleanly (as [`Disk::close`]) and returns its storage.
    pub fn into_storage(mut self) -> Result<Box<dyn Storage>> {
        self.image.close_inner()?;
        Ok(core::mem::replace(&mut self.image.storage, Box::new(crate::io::MemStorage::new())))
    }

    /// Gives up the disk without flushing or closing — what a crash or a
    /// killed process leaves behind — and returns its storage. Writes since
    /// the last flush may be incomplete; the log GUID stays set if this
    /// session wrote the log, so the next writable open replays it.
    pub fn abandon(mut self) -> Box<dyn Storage> {
        self.image.closed = true;
        core::mem::replace(&mut self.image.storage, Box::new(crate::io::MemStorage::new()))
    }

    /// Flushes, clears the log GUID and closes, reporting any error (dropping
    /// a disk does the same but cannot report).
    pub fn close(mut self) -> Result<()> {
        self.image.close_inner()
    }
}

/// What a BAT page read now is checked against (a function of fields, so
/// it borrows them apart from the table).
fn bounds<'a>(
    storage: &'a dyn Storage,
    space: &space::SpaceCell,
    regions: &'a RegionTable,
    header: &headers::Headers,
) -> table::Bounds<'a> {
    let log =
        if header.log_length > 0 { (header.log_offset, header.log_offset + header.log_length as u64) } else { (0, 0) };
    table::Bounds { storage, file_len: space.len(), regions, log }
}

impl Image {
    /// What a BAT page read now is checked against.
    pub(crate) fn bounds(&self) -> table::Bounds<'_> {
        bounds(&*self.storage, &self.space, &self.regions, &self.header)
    }

    /// BAT entry `index` (see [`table::BlockTable::entry`]).
    pub(crate) fn bat(&self, index: usize) -> Result<BatEntry> {
        self.table.entry(&self.bounds(), index)
    }

    /// The BAT entry of payload block `block`.
    pub(crate) fn bat_payload(&self, block: u64) -> Result<BatEntry> {
        self.table.payload(&self.bounds(), block)
    }

    /// Calls `f(index, entry)` for every entry the geometry counts, in order.
    pub(crate) fn scan_bat(&self, f: impl FnMut(usize, BatEntry) -> Result<()>) -> Result<()> {
        self.table.scan(&self.bounds(), 0..self.table.geometry().entry_count as usize, f)
    }

    /// Payload blocks whose data lives in this file.
    pub(crate) fn count_allocated(&self) -> Result<u64> {
        let g = *self.table.geometry();
        let mut n = 0u64;
        self.scan_bat(|index, e| {
            if !g.is_sector_bitmap_index(index) && e.has_data() {
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Checks the whole block table as one (no two blocks overlap; see
    /// [`table::BlockTable::check_whole`]) and returns where its last block
    /// ends.
    pub(crate) fn check_whole_bat(&self) -> Result<u64> {
        self.table.check_whole(&self.bounds())
    }

    /// Sets BAT entry `index` (its page changed until the next commit)
    /// without recording an undo.
    pub(crate) fn put_bat_entry(&mut self, index: usize, entry: BatEntry) -> Result<(BatEntry, bool)> {
        let b = bounds(&*self.storage, &self.space, &self.regions, &self.header);
        self.table.set(&b, index, entry)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

impl core::fmt::Debug for Disk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Disk")
            .field("type", &self.disk_type())
            .field("virtual_size", &self.image.params.virtual_size)
            .field("block_size", &self.image.params.block_size)
            .field("writable", &self.image.writable)
            .finish_non_exhaustive()
    }
}
