//! The block allocation table as a session holds it: its shape, where it
//! lives in the file, and its entries, read a 4 KiB page (512 entries) at a
//! time when first needed.
//!
//! Nothing reads the whole table at open: a 64 TiB disk of 1 MiB blocks has
//! a 512 MiB table, and a chain of eight of them would hold 4 GiB. Instead:
//! - **Clean pages** are read on demand and kept in a bounded cache
//!   ([`PageCache`]; with `std`, shared by readers without a lock on a hit;
//!   without `std`, not kept). A page is checked as it is read: states
//!   defined, every block after the header section, outside the log and
//!   the regions, starting inside the file (see [`Bounds`]).
//! - **Changed pages** are held whole in `dirty` until the next commit,
//!   which writes them through the log and then hands them to the cache.
//!   Reads see them first.
//! - **Pages changed through `&self`** (with `std`: a block allocated while
//!   readers run, [`BlockTable::set_shared`]) are held in `shared` and
//!   pinned in the cache, where readers find them without a lock; the
//!   cache never drops a pinned page. The next `&mut` use of the table
//!   moves them into `dirty` ([`BlockTable::absorb`]), so a commit, an
//!   undo or a resize sees one set of changed pages.
//! - **Whole-table checks** (blocks overlapping each other, where the last
//!   block ends) take one streaming pass ([`BlockTable::scan`]) when they
//!   are needed: by `check`, and by a writable session before its first
//!   new block (`Image::grow_for`).
//!
//! Every change goes through [`BlockTable::set`], which returns what an
//! undo needs; [`BlockTable::dirty_pages`] gives the changed pages as the
//! bytes the log commits.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, BatGeometry, PayloadState, SB_PRESENT};
use crate::format::region::RegionTable;
use crate::format::{HEADER_SECTION_SIZE, MIB};
use crate::io::Storage;

/// BAT entries per 4 KiB page.
pub(crate) const PER_PAGE: usize = 512;
/// Bytes of one page.
const PAGE_BYTES: u64 = 4096;

/// The cache's default bound, per image: 4 MiB of entries, the whole table
/// of a 16 TiB disk with 32 MiB blocks or of a 512 GiB one with 1 MiB blocks.
pub(crate) const DEFAULT_CACHE_BYTES: usize = 4 << 20;

/// One page of entries.
pub(crate) type Page = [BatEntry; PER_PAGE];

/// What a page read from the file is checked against: the file and the
/// structures no block may overlap.
#[derive(Clone, Copy)]
pub(crate) struct Bounds<'a> {
    pub(crate) storage: &'a dyn Storage,
    /// The file's length as the session knows it.
    pub(crate) file_len: u64,
    pub(crate) regions: &'a RegionTable,
    /// The log's range (empty when the image has no log).
    pub(crate) log: (u64, u64),
}

/// The block table (see the [module docs](self)).
pub(crate) struct BlockTable {
    geometry: BatGeometry,
    /// File offset of the BAT region.
    offset: u64,
    /// Entries the region holds (its length / 8); entries past it are empty.
    region_entries: u64,
    /// Pages changed and not yet committed, by page number.
    dirty: BTreeMap<u64, Box<Page>>,
    /// Pages changed through `&self` and not yet absorbed into `dirty`,
    /// each pinned in the cache (see the [module docs](self)).
    #[cfg(feature = "std")]
    shared: std::sync::Mutex<BTreeMap<u64, Box<Page>>>,
    cache: PageCache,
}

impl core::fmt::Debug for BlockTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockTable")
            .field("geometry", &self.geometry)
            .field("offset", &self.offset)
            .field("dirty_pages", &self.dirty.len())
            .finish_non_exhaustive()
    }
}

impl BlockTable {
    /// The table of `geometry` in a region of `region_len` bytes at file
    /// offset `offset`, caching at most `cache_bytes` of clean pages.
    pub(crate) fn new(geometry: BatGeometry, offset: u64, region_len: u64, cache_bytes: usize) -> BlockTable {
        let region_entries = region_len / 8;
        BlockTable {
            geometry,
            offset,
            region_entries,
            dirty: BTreeMap::new(),
            #[cfg(feature = "std")]
            shared: Default::default(),
            cache: PageCache::new(region_entries.div_ceil(PER_PAGE as u64), cache_bytes),
        }
    }

    /// The table's shape.
    pub(crate) fn geometry(&self) -> &BatGeometry {
        &self.geometry
    }

    /// Gives the table a new shape (resize). Cached pages were checked
    /// against the old one, so they go.
    pub(crate) fn set_geometry(&mut self, geometry: BatGeometry) {
        self.absorb();
        self.geometry = geometry;
        self.cache.clear();
    }

    /// The cache's bound in bytes.
    pub(crate) fn cache_bytes(&self) -> usize {
        self.cache.bound_bytes()
    }

    /// File offset of the BAT region.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Moves the table to a new region of `len` bytes at `offset` (resize),
    /// whose contents are the table's (nothing may be pending).
    pub(crate) fn set_region(&mut self, offset: u64, len: u64) {
        self.absorb();
        debug_assert!(self.dirty.is_empty());
        self.offset = offset;
        self.region_entries = len / 8;
        let bound = self.cache.bound_bytes();
        self.cache = PageCache::new(self.region_entries.div_ceil(PER_PAGE as u64), bound);
    }

    /// Entry `index`: a changed page's, a cached page's, or read from the
    /// file (and checked); empty past the region.
    pub(crate) fn entry(&self, b: &Bounds<'_>, index: usize) -> Result<BatEntry> {
        let (page, slot) = ((index / PER_PAGE) as u64, index % PER_PAGE);
        if !self.dirty.is_empty() {
            if let Some(p) = self.dirty.get(&page) {
                return Ok(p[slot]);
            }
        }
        if index as u64 >= self.region_entries {
            return Ok(BatEntry::EMPTY);
        }
        if let Some(e) = self.cache.get(page, slot) {
            return Ok(e);
        }
        let loaded = self.read_page(b, page)?;
        let e = loaded[slot];
        self.cache.insert(page, &loaded);
        Ok(e)
    }

    /// The entry of payload block `block`.
    pub(crate) fn payload(&self, b: &Bounds<'_>, block: u64) -> Result<BatEntry> {
        self.entry(b, self.geometry.payload_index(block))
    }

    /// Page `page` as the file holds it, checked (zeros past the region).
    fn read_page(&self, b: &Bounds<'_>, page: u64) -> Result<Box<Page>> {
        let first = page * PER_PAGE as u64;
        let held = self.region_entries.saturating_sub(first).min(PER_PAGE as u64) as usize;
        let mut raw = [0u8; PAGE_BYTES as usize];
        let at = self.offset + page * PAGE_BYTES;
        if held > 0 {
            b.storage.read_exact_at(&mut raw[..held * 8], at).during("reading the BAT", at)?;
        }
        let mut out = Box::new([BatEntry::EMPTY; PER_PAGE]);
        for (e, c) in out.iter_mut().zip(raw.chunks_exact(8)) {
            *e = BatEntry::from_raw(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        self.check_entries(b, first as usize, &out[..])?;
        Ok(out)
    }

    /// Checks entries `first..` (as read from the file) on their own: what
    /// a page can tell without the rest of the table.
    fn check_entries(&self, b: &Bounds<'_>, first: usize, entries: &[BatEntry]) -> Result<()> {
        let g = &self.geometry;
        let count = g.entry_count as usize;
        for (i, &entry) in entries.iter().enumerate() {
            let index = first + i;
            if index >= count {
                break;
            }
            let at = self.offset + index as u64 * 8;
            let len = if g.is_sector_bitmap_index(index) {
                // Fixed and dynamic disks must not have sector bitmaps, and
                // other values are reserved; neither is read, so neither
                // stops a reader.
                if !(g.has_parent && entry.state_bits() == SB_PRESENT) {
                    continue;
                }
                MIB
            } else {
                let state = entry.payload_state().ok_or_else(|| {
                    Error::corrupt("BAT entry", at, format!("entry {index} has the reserved state 4"))
                })?;
                if state == PayloadState::PartiallyPresent && !g.has_parent {
                    return Err(Error::corrupt(
                        "BAT entry",
                        at,
                        format!("entry {index} is partially present in a disk without a parent"),
                    ));
                }
                if !state.has_data() {
                    continue;
                }
                g.block_size as u64
            };
            let off = entry.file_offset();
            let end = off.saturating_add(len);
            if off < HEADER_SECTION_SIZE || off >= b.file_len {
                return Err(Error::corrupt(
                    "BAT entry",
                    at,
                    format!(
                        "entry {index} points at {off:#x}, outside the file's data area (file is {} bytes)",
                        b.file_len
                    ),
                ));
            }
            if off < b.log.1 && b.log.0 < end {
                return Err(Error::corrupt("BAT entry", at, format!("entry {index} at {off:#x} overlaps the log")));
            }
            if let Some(r) = b.regions.entries.iter().find(|r| off < r.end() && r.file_offset < end) {
                return Err(Error::corrupt(
                    "BAT entry",
                    at,
                    format!("entry {index} at {off:#x} overlaps region {}", r.guid),
                ));
            }
        }
        Ok(())
    }

    /// Calls `f(index, entry)` for entries `range` in order, as the session
    /// sees them (changed pages included), each page checked as a read
    /// checks it. Reads the file a MiB at a time past the cache, so a pass
    /// over a large table neither holds it nor evicts what readers use.
    pub(crate) fn scan(
        &self,
        b: &Bounds<'_>,
        range: core::ops::Range<usize>,
        mut f: impl FnMut(usize, BatEntry) -> Result<()>,
    ) -> Result<()> {
        const STEP: usize = (MIB / 8) as usize;
        let mut raw = Vec::new();
        let mut index = range.start;
        while index < range.end {
            let end = (index - index % STEP + STEP).min(range.end);
            let held_end = (end as u64).min(self.region_entries).max(index as u64) as usize;
            raw.clear();
            raw.resize((held_end - index) * 8, 0u8);
            let at = self.offset + index as u64 * 8;
            if !raw.is_empty() {
                b.storage.read_exact_at(&mut raw, at).during("reading the BAT", at)?;
            }
            let mut entries: Vec<BatEntry> = raw
                .chunks_exact(8)
                .map(|c| BatEntry::from_raw(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
                .collect();
            entries.resize(end - index, BatEntry::EMPTY);
            self.check_entries(b, index, &entries)?;
            let first_page = (index / PER_PAGE) as u64;
            let last_page = ((end - 1) / PER_PAGE) as u64;
            let overlay = |pages: &BTreeMap<u64, Box<Page>>, entries: &mut Vec<BatEntry>| {
                for (&page, p) in pages.range(first_page..=last_page) {
                    let page_first = page as usize * PER_PAGE;
                    for (slot, &e) in p.iter().enumerate() {
                        let i = page_first + slot;
                        if (index..end).contains(&i) {
                            entries[i - index] = e;
                        }
                    }
                }
            };
            overlay(&self.dirty, &mut entries);
            #[cfg(feature = "std")]
            overlay(&self.shared.lock().unwrap_or_else(|e| e.into_inner()), &mut entries);
            for (i, &e) in entries.iter().enumerate() {
                f(index + i, e)?;
            }
            index = end;
        }
        Ok(())
    }

    /// Checks the whole table as one: besides what each page is checked
    /// for, no two blocks overlap, and a partially present block's chunk
    /// has a sector bitmap. Returns where the last block ends.
    pub(crate) fn check_whole(&self, b: &Bounds<'_>) -> Result<u64> {
        let g = self.geometry;
        let bs = g.block_size as u64;
        let mut used = MibSet::default();
        let mut end = 0u64;
        let mut partial_chunk: Option<(u64, usize)> = None;
        let mut overlap = None;
        let scanned = self.scan(b, 0..g.entry_count as usize, |index, entry| {
            let len = if g.is_sector_bitmap_index(index) {
                let chunk = index as u64 / (g.chunk_ratio + 1);
                if let Some((c, first)) = partial_chunk.take() {
                    if c == chunk && !(g.has_parent && entry.sector_bitmap_present()) {
                        return Err(Error::corrupt(
                            "BAT entry",
                            self.offset + first as u64 * 8,
                            format!("entry {first} is partially present but chunk {chunk} has no sector bitmap"),
                        ));
                    }
                }
                if !(g.has_parent && entry.sector_bitmap_present()) {
                    return Ok(());
                }
                MIB
            } else {
                match entry.payload_state() {
                    Some(PayloadState::PartiallyPresent) => {
                        let chunk = index as u64 / (g.chunk_ratio + 1);
                        if partial_chunk.is_none() {
                            partial_chunk = Some((chunk, index));
                        }
                        bs
                    }
                    Some(PayloadState::FullyPresent) => bs,
                    _ => return Ok(()),
                }
            };
            let off = entry.file_offset();
            if let Some(mib) = used.insert(off / MIB, len / MIB) {
                overlap = Some((index, off, mib));
                return Err(Error::invalid("overlap"));
            }
            end = end.max(off + len);
            Ok(())
        });
        if let Some((index, off, mib)) = overlap {
            let other = self.owner_of(b, mib * MIB, index)?;
            return Err(Error::corrupt(
                "BAT entry",
                self.offset + index as u64 * 8,
                format!("entry {index} at {off:#x} overlaps entry {other}"),
            ));
        }
        scanned?;
        // A chunk whose bitmap entry lies past the table (the last chunk).
        if let Some((chunk, first)) = partial_chunk {
            let sb = self.entry(b, g.sector_bitmap_index(chunk))?;
            if !sb.sector_bitmap_present() {
                return Err(Error::corrupt(
                    "BAT entry",
                    self.offset + first as u64 * 8,
                    format!("entry {first} is partially present but chunk {chunk} has no sector bitmap"),
                ));
            }
        }
        Ok(end)
    }

    /// The first entry before `before` whose block or sector bitmap holds
    /// file offset `at` (for the message about an overlap).
    fn owner_of(&self, b: &Bounds<'_>, at: u64, before: usize) -> Result<usize> {
        let g = self.geometry;
        let mut owner = 0;
        let mut found = false;
        self.scan(b, 0..before, |index, e| {
            let len = if g.is_sector_bitmap_index(index) {
                if !(g.has_parent && e.sector_bitmap_present()) {
                    return Ok(());
                }
                MIB
            } else if e.has_data() {
                g.block_size as u64
            } else {
                return Ok(());
            };
            if !found && e.file_offset() <= at && at < e.file_offset() + len {
                (owner, found) = (index, true);
            }
            Ok(())
        })?;
        Ok(owner)
    }

    /// Sets entry `index` and marks its page changed. Returns the entry it
    /// held and whether the page was clean before, for [`BlockTable::restore`].
    pub(crate) fn set(&mut self, b: &Bounds<'_>, index: usize, entry: BatEntry) -> Result<(BatEntry, bool)> {
        self.absorb();
        let page = (index / PER_PAGE) as u64;
        if index as u64 >= self.region_entries {
            return Err(Error::invalid("a BAT entry past the BAT region"));
        }
        let newly_dirty = !self.dirty.contains_key(&page);
        if newly_dirty {
            let loaded = match self.cache.get_page(page) {
                Some(p) => p,
                None => self.read_page(b, page)?,
            };
            self.dirty.insert(page, loaded);
        }
        let p = self.dirty.get_mut(&page).expect("inserted above");
        let old = core::mem::replace(&mut p[index % PER_PAGE], entry);
        Ok((old, newly_dirty))
    }

    /// Takes back a [`BlockTable::set`] that returned `(old, newly_dirty)`.
    pub(crate) fn restore(&mut self, index: usize, old: BatEntry, newly_dirty: bool) {
        self.absorb();
        let page = (index / PER_PAGE) as u64;
        if newly_dirty {
            self.dirty.remove(&page);
        } else if let Some(p) = self.dirty.get_mut(&page) {
            p[index % PER_PAGE] = old;
        }
    }

    /// Marks page `page` changed without changing it (a commit that must
    /// carry a log entry, e.g. to record a new file size).
    pub(crate) fn touch_page(&mut self, b: &Bounds<'_>, page: u64) -> Result<()> {
        let index = page as usize * PER_PAGE;
        let e = self.entry(b, index)?;
        self.set(b, index, e).map(|_| ())
    }

    /// Sets entry `index` through `&self`, for a writer that allocates a
    /// block while readers run (the caller serializes such writers): the
    /// page is held in `shared` and pinned in the cache, so readers see the
    /// entry at once and the next commit writes it. `Ok(false)`, changing
    /// nothing, when the page is changed in `dirty` (only `&mut` may change
    /// it then) or the cache has no slot left to pin it in.
    #[cfg(feature = "std")]
    pub(crate) fn set_shared(&self, b: &Bounds<'_>, index: usize, entry: BatEntry) -> Result<bool> {
        let (page, slot) = ((index / PER_PAGE) as u64, index % PER_PAGE);
        if index as u64 >= self.region_entries {
            return Err(Error::invalid("a BAT entry past the BAT region"));
        }
        if self.dirty.contains_key(&page) {
            return Ok(false);
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let held = match shared.entry(page) {
            alloc::collections::btree_map::Entry::Occupied(held) => held.into_mut(),
            alloc::collections::btree_map::Entry::Vacant(place) => {
                let loaded = match self.cache.get_page(page) {
                    Some(p) => p,
                    None => self.read_page(b, page)?,
                };
                if !self.cache.pin(page, &loaded) {
                    return Ok(false);
                }
                place.insert(loaded)
            }
        };
        held[slot] = entry;
        self.cache.set_pinned(page, slot, entry);
        Ok(true)
    }

    /// Moves the pages changed through `&self` into `dirty` and unpins
    /// them: every `&mut` use of the table starts here.
    pub(crate) fn absorb(&mut self) {
        #[cfg(feature = "std")]
        {
            let shared = self.shared.get_mut().unwrap_or_else(|e| e.into_inner());
            if !shared.is_empty() {
                self.dirty.append(shared);
                self.cache.unpin_all();
            }
        }
    }

    /// Whether a page was changed through `&mut` since the last commit
    /// (which only a `&mut` commit may write).
    #[cfg(feature = "std")]
    pub(crate) fn has_exclusive_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The pages changed through `&self`, as (page number, file offset,
    /// 4 KiB of little-endian entries): what a shared flush commits.
    #[cfg(feature = "std")]
    pub(crate) fn shared_pages(&self) -> Vec<(u64, u64, Vec<u8>)> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.iter().map(|(&page, p)| (page, self.offset + page * PAGE_BYTES, page_bytes(p))).collect()
    }

    /// Pages `pages`, changed through `&self`, are committed (and have not
    /// changed since [`BlockTable::shared_pages`] gave them: the caller
    /// kept other writers out): they are clean now, cached and unpinned.
    #[cfg(feature = "std")]
    pub(crate) fn shared_committed(&self, pages: &[u64]) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for page in pages {
            if shared.remove(page).is_some() {
                self.cache.unpin(*page);
            }
        }
    }

    /// Pages changed through `&self` and not yet absorbed.
    fn shared_count(&self) -> usize {
        #[cfg(feature = "std")]
        return self.shared.lock().unwrap_or_else(|e| e.into_inner()).len();
        #[cfg(not(feature = "std"))]
        0
    }

    /// Whether a page changed since the last commit.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.shared_count() > 0
    }

    /// Number of changed pages.
    pub(crate) fn dirty_count(&self) -> usize {
        self.dirty.len() + self.shared_count()
    }

    /// The changed pages as (file offset, 4 KiB of little-endian entries).
    pub(crate) fn dirty_pages(&mut self) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
        self.absorb();
        self.dirty.iter().map(|(&page, p)| (self.offset + page * PAGE_BYTES, page_bytes(p)))
    }

    /// The changed pages were committed: they become clean (cached).
    pub(crate) fn clear_dirty(&mut self) {
        self.absorb();
        for (page, p) in core::mem::take(&mut self.dirty) {
            self.cache.replace(page, &p);
        }
    }

    /// `n` bytes from byte `from` of a copy of the region (`from` and `n`
    /// multiples of 8): the counted entries, zeros after.
    pub(crate) fn region_piece(&self, b: &Bounds<'_>, from: u64, n: u64) -> Result<Vec<u8>> {
        let mut piece = alloc::vec![0u8; n as usize];
        let (first, last) = (from / 8, ((from + n) / 8).min(self.geometry.entry_count));
        if last > first {
            self.scan(b, first as usize..last as usize, |i, e| {
                let o = (i - first as usize) * 8;
                piece[o..o + 8].copy_from_slice(&e.raw().to_le_bytes());
                Ok(())
            })?;
        }
        Ok(piece)
    }
}

/// A page as the file holds it: 4 KiB of little-endian entries.
fn page_bytes(p: &Page) -> Vec<u8> {
    p.iter().flat_map(|e| e.raw().to_le_bytes()).collect()
}

/// Which MiB of the file are taken: sparse, a 64-bit word per 64 MiB that
/// holds a block, so its size follows the blocks there are (about 16 bytes
/// per 64 MiB of a packed file), not the offsets they claim.
#[derive(Default)]
struct MibSet {
    words: BTreeMap<u64, u64>,
}

impl MibSet {
    /// Takes `[first, first + n)`; returns a MiB that was taken already.
    fn insert(&mut self, first: u64, n: u64) -> Option<u64> {
        for mib in first..first.saturating_add(n) {
            let word = self.words.entry(mib / 64).or_insert(0);
            let bit = 1u64 << (mib % 64);
            if *word & bit != 0 {
                return Some(mib);
            }
            *word |= bit;
        }
        None
    }
}

/// Clean pages, shared by readers (with `std`): a fixed number of slots of
/// 512 entries, a directory from page to slot, and a clock to choose what
/// to drop. A hit takes no lock: the directory word names the slot and a
/// generation, and a reader that finds the word changed after reading the
/// entry (the slot was reused) reads again through the lock. Everything is
/// atomics, so no unsafe code is needed. A pinned slot (a page changed
/// through `&self`, see [`BlockTable::set_shared`]) is never dropped nor
/// reused until unpinned; its entries change by atomic stores in place.
#[cfg(feature = "std")]
pub(crate) struct PageCache {
    /// Per page of the region: 0, or `generation << 32 | (slot + 1)`.
    dir: Vec<core::sync::atomic::AtomicU64>,
    /// Slot storage, in groups of [`GROUP`] slots allocated when first used.
    groups: Vec<std::sync::OnceLock<Box<[core::sync::atomic::AtomicU64]>>>,
    /// Slots at most.
    slots: usize,
    /// Per slot: read since the clock last passed.
    referenced: Vec<core::sync::atomic::AtomicBool>,
    clock: std::sync::Mutex<Clock>,
}

/// Slots per allocation of slot storage (128 KiB of entries).
#[cfg(feature = "std")]
const GROUP: usize = 32;

#[cfg(feature = "std")]
#[derive(Default)]
struct Clock {
    /// Per slot in use: the page it holds.
    owner: Vec<Option<u64>>,
    /// Per slot in use: pinned (holds a page changed through `&self`).
    pinned: Vec<bool>,
    hand: usize,
    generation: u32,
}

#[cfg(feature = "std")]
impl PageCache {
    fn new(pages: u64, bound_bytes: usize) -> PageCache {
        use core::sync::atomic::{AtomicBool, AtomicU64};
        let slots = (bound_bytes / PAGE_BYTES as usize).max(1).min(pages.max(1) as usize);
        PageCache {
            dir: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            groups: (0..slots.div_ceil(GROUP)).map(|_| std::sync::OnceLock::new()).collect(),
            slots,
            referenced: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            clock: std::sync::Mutex::new(Clock::default()),
        }
    }

    fn bound_bytes(&self) -> usize {
        self.slots * PAGE_BYTES as usize
    }

    fn cell(&self, slot: usize, i: usize) -> &core::sync::atomic::AtomicU64 {
        let group = self.groups[slot / GROUP].get().expect("a slot in use has its group");
        &group[(slot % GROUP) * PER_PAGE + i]
    }

    /// Entry `i` of `page`, if cached.
    fn get(&self, page: u64, i: usize) -> Option<BatEntry> {
        use core::sync::atomic::Ordering::SeqCst;
        let word = self.dir.get(page as usize)?;
        let tag = word.load(SeqCst);
        if tag == 0 {
            return None;
        }
        let slot = (tag & 0xFFFF_FFFF) as usize - 1;
        let raw = self.cell(slot, i).load(SeqCst);
        if word.load(SeqCst) != tag {
            return None;
        }
        let r = &self.referenced[slot];
        if !r.load(core::sync::atomic::Ordering::Relaxed) {
            r.store(true, core::sync::atomic::Ordering::Relaxed);
        }
        Some(BatEntry::from_raw(raw))
    }

    /// The whole of `page`, if cached.
    fn get_page(&self, page: u64) -> Option<Box<Page>> {
        let _guard = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let tag = self.dir.get(page as usize)?.load(core::sync::atomic::Ordering::SeqCst);
        if tag == 0 {
            return None;
        }
        let slot = (tag & 0xFFFF_FFFF) as usize - 1;
        let mut out = Box::new([BatEntry::EMPTY; PER_PAGE]);
        for (i, e) in out.iter_mut().enumerate() {
            *e = BatEntry::from_raw(self.cell(slot, i).load(core::sync::atomic::Ordering::SeqCst));
        }
        Some(out)
    }

    /// Keeps `page` (read and checked), unless another reader did first.
    fn insert(&self, page: u64, p: &Page) {
        self.store(page, p, false);
    }

    /// Keeps `page` with these contents, over any cached copy (a commit).
    fn replace(&self, page: u64, p: &Page) {
        self.store(page, p, true);
    }

    fn store(&self, page: u64, p: &Page, overwrite: bool) {
        self.store_locked(&mut self.clock.lock().unwrap_or_else(|e| e.into_inner()), page, p, overwrite);
    }

    /// Keeps `page` with these contents and pins it, so it stays until
    /// [`PageCache::unpin_all`]. A page already cached keeps its slot (its
    /// contents are the same committed ones). `false` when every slot is
    /// pinned.
    fn pin(&self, page: u64, p: &Page) -> bool {
        use core::sync::atomic::Ordering::SeqCst;
        let Some(word) = self.dir.get(page as usize) else { return false };
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if word.load(SeqCst) == 0 && !self.store_locked(&mut clock, page, p, false) {
            return false;
        }
        let slot = (word.load(SeqCst) & 0xFFFF_FFFF) as usize - 1;
        clock.pinned[slot] = true;
        true
    }

    /// Sets entry `i` of pinned page `page`, in place.
    fn set_pinned(&self, page: u64, i: usize, e: BatEntry) {
        let tag = self.dir[page as usize].load(core::sync::atomic::Ordering::SeqCst);
        debug_assert!(tag != 0, "a pinned page stays cached");
        if tag != 0 {
            self.cell((tag & 0xFFFF_FFFF) as usize - 1, i).store(e.raw(), core::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Unpins `page` (it stays cached, to be dropped as any other).
    fn unpin(&self, page: u64) {
        use core::sync::atomic::Ordering::SeqCst;
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let tag = self.dir.get(page as usize).map_or(0, |w| w.load(SeqCst));
        if tag != 0 {
            clock.pinned[(tag & 0xFFFF_FFFF) as usize - 1] = false;
        }
    }

    /// Unpins every page (they stay cached, to be dropped as any other).
    fn unpin_all(&mut self) {
        let clock = self.clock.get_mut().unwrap_or_else(|e| e.into_inner());
        clock.pinned.iter_mut().for_each(|p| *p = false);
    }

    /// [`PageCache::store`] under the clock's lock; `false` when the page
    /// was not kept (every slot pinned).
    fn store_locked(&self, clock: &mut Clock, page: u64, p: &Page, overwrite: bool) -> bool {
        use core::sync::atomic::Ordering::SeqCst;
        let Some(word) = self.dir.get(page as usize) else { return false };
        let tag = word.load(SeqCst);
        if tag != 0 && !overwrite {
            return true;
        }
        let slot = if tag != 0 {
            // Rewritten in place, under a new generation, so readers that
            // saw the old word read again.
            word.store(0, SeqCst);
            (tag & 0xFFFF_FFFF) as usize - 1
        } else if clock.owner.len() < self.slots {
            let slot = clock.owner.len();
            clock.owner.push(None);
            clock.pinned.push(false);
            self.groups[slot / GROUP]
                .get_or_init(|| (0..GROUP * PER_PAGE).map(|_| core::sync::atomic::AtomicU64::new(0)).collect());
            slot
        } else {
            // The clock: the first slot not read since it last passed,
            // passing over pinned ones. Two turns clear every reference
            // bit, so a slot not found by then is pinned, every one.
            let mut found = None;
            for _ in 0..2 * self.slots {
                let s = clock.hand;
                clock.hand = (clock.hand + 1) % self.slots;
                if !clock.pinned[s] && !self.referenced[s].swap(false, core::sync::atomic::Ordering::Relaxed) {
                    if let Some(old) = clock.owner[s] {
                        self.dir[old as usize].store(0, SeqCst);
                    }
                    found = Some(s);
                    break;
                }
            }
            match found {
                Some(s) => s,
                None => return false,
            }
        };
        for (i, e) in p.iter().enumerate() {
            self.cell(slot, i).store(e.raw(), SeqCst);
        }
        clock.generation = clock.generation.wrapping_add(1);
        clock.owner[slot] = Some(page);
        self.referenced[slot].store(true, core::sync::atomic::Ordering::Relaxed);
        word.store((clock.generation as u64) << 32 | (slot as u64 + 1), SeqCst);
        true
    }

    /// Drops every page.
    fn clear(&mut self) {
        for w in &self.dir {
            w.store(0, core::sync::atomic::Ordering::SeqCst);
        }
        let clock = self.clock.get_mut().unwrap_or_else(|e| e.into_inner());
        clock.owner.iter_mut().for_each(|o| *o = None);
        clock.pinned.iter_mut().for_each(|p| *p = false);
    }

    /// Pages held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.dir.iter().filter(|w| w.load(core::sync::atomic::Ordering::SeqCst) != 0).count()
    }
}

/// Without `std` there is no lock to share a cache under: every page is
/// read when needed.
#[cfg(not(feature = "std"))]
pub(crate) struct PageCache {
    bound: usize,
}

#[cfg(not(feature = "std"))]
impl PageCache {
    fn new(_pages: u64, bound_bytes: usize) -> PageCache {
        PageCache { bound: bound_bytes }
    }
    fn bound_bytes(&self) -> usize {
        self.bound
    }
    fn get(&self, _page: u64, _i: usize) -> Option<BatEntry> {
        None
    }
    fn get_page(&self, _page: u64) -> Option<Box<Page>> {
        None
    }
    fn insert(&self, _page: u64, _p: &Page) {}
    fn replace(&self, _page: u64, _p: &Page) {}
    fn clear(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bat::PayloadState;
    use crate::format::MIB;
    use crate::io::MemStorage;
    use alloc::string::ToString;

    /// A 2000 MiB disk of 1 MiB blocks whose table (4 pages) is at 3 MiB in
    /// a 64 MiB file with the log at 1 MiB, holding `entries` (index, raw).
    fn setup(entries: &[(usize, u64)]) -> (MemStorage, RegionTable, BlockTable) {
        setup_sized(2000, entries)
    }

    fn setup_sized(mib: u64, entries: &[(usize, u64)]) -> (MemStorage, RegionTable, BlockTable) {
        let mut storage = MemStorage::new();
        storage.set_len(64 * MIB).unwrap();
        for &(i, raw) in entries {
            storage.write_all_at(&raw.to_le_bytes(), 3 * MIB + i as u64 * 8).unwrap();
        }
        let g = BatGeometry::new(MIB as u32, 512, mib * MIB, false).unwrap();
        (storage, RegionTable { entries: Vec::new() }, BlockTable::new(g, 3 * MIB, MIB, 2 * 4096))
    }

    fn bounds<'a>(s: &'a MemStorage, r: &'a RegionTable) -> Bounds<'a> {
        Bounds { storage: s, file_len: 64 * MIB, regions: r, log: (MIB, 2 * MIB) }
    }

    #[test]
    fn a_change_dirties_its_page_and_restore_takes_it_back() {
        let (s, r, mut t) = setup(&[]);
        let b = bounds(&s, &r);
        let e = BatEntry::payload(PayloadState::FullyPresent, 9 * MIB);
        assert_eq!(t.set(&b, 513, e).unwrap(), (BatEntry::EMPTY, true));
        assert_eq!(t.payload(&b, 513).unwrap(), e);
        assert_eq!(t.set(&b, 514, e).unwrap(), (BatEntry::EMPTY, false), "the page was dirty already");
        let pages: Vec<_> = t.dirty_pages().collect();
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].0, 3 * MIB + 4096, "page 1 of the region");
        assert_eq!(pages[0].1[8..16], (0x90_0006u64).to_le_bytes(), "entry 513 is the page's second");
        assert_eq!(pages[0].1[24..], [0u8; 4096 - 24][..]);
        t.restore(514, BatEntry::EMPTY, false);
        assert!(t.has_dirty(), "the page still holds entry 513's change");
        t.restore(513, BatEntry::EMPTY, true);
        assert!(!t.has_dirty() && t.entry(&b, 513).unwrap().is_empty());
        assert_eq!(t.entry(&b, 1 << 20).unwrap(), BatEntry::EMPTY, "past the region");
    }

    #[test]
    fn pages_are_checked_when_read_and_a_bad_page_names_its_entry() {
        let (s, r, t) = setup(&[(3, 4), (600, 0x70_0006)]);
        let b = bounds(&s, &r);
        let e = t.entry(&b, 0).unwrap_err().to_string();
        assert!(e.contains("entry 3 has the reserved state 4") && e.contains(&format!("{:#x}", 3 * MIB + 24)), "{e}");
        // Another page reads; its block is where it says.
        assert_eq!(t.entry(&b, 600).unwrap().file_offset(), 7 * MIB);
        // A block in the log.
        let (s, r, t) = setup(&[(1, 0x10_0006)]);
        let e = t.entry(&bounds(&s, &r), 1).unwrap_err().to_string();
        assert!(e.contains("overlaps the log"), "{e}");
        // Past the end of the file.
        let (s, r, t) = setup(&[(1, 0x4000_0006)]);
        let e = t.entry(&bounds(&s, &r), 1).unwrap_err().to_string();
        assert!(e.contains("outside the file's data area"), "{e}");
    }

    #[test]
    fn the_cache_keeps_its_bound_and_commits_replace_cached_pages() {
        let (s, r, mut t) = setup(&[(0, 0x20_0006), (513, 0x30_0006), (1030, 0x40_0006)]);
        let b = bounds(&s, &r);
        for i in [0, 513, 1030, 0, 513] {
            assert!(t.entry(&b, i).unwrap().has_data());
        }
        assert_eq!(t.cache.held(), 2, "two slots");
        // A committed change replaces the cached page.
        t.set(&b, 0, BatEntry::EMPTY).unwrap();
        assert!(t.entry(&b, 0).unwrap().is_empty(), "the change is seen before the commit");
        t.clear_dirty();
        assert!(t.entry(&b, 0).unwrap().is_empty(), "and after it, from the cache");
        assert_eq!(t.entry(&b, 1030).unwrap().file_offset(), 4 * MIB);
    }

    #[cfg(feature = "std")]
    #[test]
    fn a_shared_change_is_pinned_seen_and_then_absorbed() {
        let (s, r, mut t) = setup(&[(600, 0x70_0006)]);
        let b = bounds(&s, &r);
        let (e, f) = (BatEntry::payload(PayloadState::FullyPresent, 9 * MIB), BatEntry::from_raw(0x0A0_0006));
        assert!(t.set_shared(&b, 1, e).unwrap());
        assert_eq!(t.entry(&b, 1).unwrap(), e, "readers see it at once");
        assert!(t.has_dirty() && t.dirty_count() == 1);
        // Other pages come and go through the second slot; page 0 stays.
        for i in [600, 1100, 1600, 600, 1100] {
            t.entry(&b, i).unwrap();
        }
        assert_eq!(t.cache.get(0, 1), Some(e), "the pinned page is never dropped");
        // A second page pins the other slot; a third finds none.
        assert!(t.set_shared(&b, 601, f).unwrap());
        assert!(!t.set_shared(&b, 1100, f).unwrap(), "every slot is pinned");
        assert!(t.entry(&b, 1100).unwrap().is_empty(), "other pages still read, from the file");
        let mut seen = Vec::new();
        t.scan(&b, 0..2000, |i, e| {
            if !e.is_empty() {
                seen.push((i, e.raw()));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(1, e.raw()), (600, 0x70_0006), (601, f.raw())], "a scan sees shared changes");
        // A commit takes both pages; until it ends, page 0 is changed in
        // `dirty`, where shared changes may not go.
        let pages: Vec<_> = t.dirty_pages().collect();
        assert_eq!(pages.iter().map(|p| p.0).collect::<Vec<_>>(), [3 * MIB, 3 * MIB + 4096]);
        assert_eq!(pages[0].1[8..16], e.raw().to_le_bytes());
        assert!(!t.set_shared(&b, 2, e).unwrap(), "page 0 is changed through &mut now");
        t.clear_dirty();
        assert!(!t.has_dirty());
        assert!(t.set_shared(&b, 1100, f).unwrap(), "after the commit the slots are free again");
        // (This test's file never took the commit, so page 0 is not read.)
        assert_eq!(t.entry(&b, 1100).unwrap(), f);
        // An undo through `&mut` absorbs first: the shared change is then
        // an ordinary changed page.
        t.restore(1100, BatEntry::EMPTY, false);
        assert!(t.entry(&b, 1100).unwrap().is_empty() && t.has_dirty());
    }

    #[test]
    fn the_whole_table_check_finds_overlaps_and_the_end() {
        let (s, r, t) = setup(&[(0, 0x20_0006), (5, 0x40_0006)]);
        assert_eq!(t.check_whole(&bounds(&s, &r)).unwrap(), 5 * MIB);
        let (s, r, t) = setup(&[(0, 0x20_0006), (700, 0x20_0006)]);
        let e = t.check_whole(&bounds(&s, &r)).unwrap_err().to_string();
        assert!(e.contains("entry 700 at 0x200000 overlaps entry 0"), "{e}");
    }

    #[test]
    fn a_region_copy_holds_the_counted_entries_then_zeros() {
        let (s, r, mut t) = setup_sized(600, &[(0, 0x30_0006), (600, 0x50_0006)]);
        let b = bounds(&s, &r);
        t.set(&b, 599, BatEntry::from_raw(0x40_0006)).unwrap();
        let mut copy = Vec::new();
        for at in (0..3 * 4096).step_by(4096) {
            copy.extend(t.region_piece(&b, at, 4096).unwrap());
        }
        assert_eq!(copy[..8], 0x30_0006u64.to_le_bytes());
        assert_eq!(copy[599 * 8..600 * 8], 0x40_0006u64.to_le_bytes());
        // Past the 600 counted entries, nothing is copied.
        assert!(copy[600 * 8..].iter().all(|&b| b == 0));
        assert!(copy[8..599 * 8].iter().all(|&b| b == 0));
    }
}
