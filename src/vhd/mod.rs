//! VHD (version 1) disks: fixed, dynamic and differencing, read and written.
//!
//! Two levels, as for VHDX: a `VhdImage` is one file (its footer, dynamic
//! header and block table) and reads no other file; a [`VhdDisk`] is an
//! image over the disk of its parent, and reads what its image leaves to
//! the parent from there.
//!
//! What is presented: the footer's current size, as Windows, libvhdi and
//! every other reader but QEMU present it. QEMU sizes disks made by
//! Virtual PC (`vpc `) and by QEMU itself (`qemu`) from the CHS geometry
//! instead, which is up to about 2 MB smaller
//! (`driver=vpc,force_size_calc=current_size` makes it agree).
//!
//! Crash order of a new block: the footer is written at the file's new
//! end first, then the block's sector bitmap (all clear in a differencing
//! disk, all set in a dynamic one) over the old footer, a flush, then the
//! block's BAT entry and the data; the footer copy at offset 0 is never
//! touched by a write. A crash at any point leaves a footer at the end, or
//! else the copy at 0, which an open falls back to; a BAT entry whose data
//! did not reach the file reads as zeros (or, in a differencing disk, as
//! the parent), what the block held before. Bitmap bits a differencing
//! write sets are kept in memory until [`VhdDisk::flush`], which makes the
//! data durable first and the bits after, as a VHDX commits its metadata:
//! a sector is never shown as the child's before its data is there.
//! Dropping a writable disk flushes it.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, IoContext, Result};
use crate::format::guid::Guid;
use crate::format::vhd::{
    bitmap_size, decode_locator_path, Chs, DynamicHeader, Footer, LocatorEntry, VhdType, DYNAMIC_HEADER_SIZE,
    FEATURE_RESERVED, FOOTER_SIZE, NO_DATA_OFFSET, SECTOR, UNUSED_ENTRY,
};
use crate::io::Storage;
use crate::Extent;

#[cfg(feature = "std")]
mod relink;

/// One VHD file.
struct VhdImage {
    storage: Box<dyn Storage>,
    writable: bool,
    path: Option<String>,
    footer: Footer,
    /// Dynamic and differencing disks only.
    header: Option<DynamicHeader>,
    /// The block table as held in memory (written through on change).
    bat: Vec<u32>,
    /// Where the trailing footer is, and where the next block goes.
    footer_at: u64,
    /// The file's length (it only grows, by this image's allocations).
    len: u64,
    /// The trailing footer was not valid and the copy at offset 0 was used.
    used_footer_copy: bool,
    /// A writable open found it so and wrote the footer back at the end.
    mended_footer: bool,
    /// Of which, the copy at offset 0 (it differed from the trailing footer).
    mended_copy: bool,
    /// The footer or dynamic header was read although its checksum is
    /// wrong (read-only), and the error that a strict read gives.
    checksum_ignored: Option<Error>,
    /// Sector bitmap sectors changed since the last flush, by file offset:
    /// they reach the file at the next flush, after the data they describe.
    dirty_bitmaps: BTreeMap<u64, [u8; SECTOR as usize]>,
}

fn read(storage: &dyn Storage, buf: &mut [u8], at: u64, what: &'static str) -> Result<()> {
    storage.read_exact_at(buf, at).during(what, at)
}

impl VhdImage {
    fn read(storage: Box<dyn Storage>, writable: bool, path: Option<String>) -> Result<VhdImage> {
        let len = storage.len().during("sizing the file", 0)?;
        if len < FOOTER_SIZE as u64 {
            return Err(Error::corrupt("VHD footer", 0, format!("file is only {len} bytes, shorter than a footer")));
        }
        let mut tail = [0u8; FOOTER_SIZE];
        let tail_at = len - FOOTER_SIZE as u64;
        read(&*storage, &mut tail, tail_at, "reading the VHD footer")?;
        let mut checksum_ignored = None;
        let (footer, used_footer_copy) = match Footer::parse(&tail, tail_at) {
            Ok(f) => (f, false),
            Err(trailing) => {
                // A dynamic disk keeps a copy at offset 0: what a crash while
                // the footer moved leaves is read from there.
                let mut head = [0u8; FOOTER_SIZE];
                read(&*storage, &mut head, 0, "reading the VHD footer copy")?;
                match Footer::parse(&head, 0) {
                    Ok(f) if f.disk_type != VhdType::Fixed => (f, true),
                    // Read-only, a footer whose checksum alone is wrong (a
                    // tool edited it) is read, as libvhdi reads it; it is
                    // never written over.
                    _ if !writable => match Footer::parse_with(&tail, tail_at, false) {
                        Ok(f) => {
                            checksum_ignored = Some(trailing);
                            (f, false)
                        }
                        Err(_) => return Err(trailing),
                    },
                    _ => return Err(trailing),
                }
            }
        };
        let mut image = VhdImage {
            storage,
            writable,
            path,
            footer,
            header: None,
            bat: Vec::new(),
            footer_at: tail_at,
            len,
            used_footer_copy,
            mended_footer: false,
            mended_copy: false,
            checksum_ignored,
            dirty_bitmaps: BTreeMap::new(),
        };
        match image.footer.disk_type {
            VhdType::Fixed => {
                if image.footer.current_size > tail_at {
                    return Err(Error::corrupt(
                        "VHD footer",
                        tail_at,
                        format!(
                            "a fixed disk of {} bytes needs a longer file than {len} bytes",
                            image.footer.current_size
                        ),
                    ));
                }
            }
            _ => image.read_dynamic(len)?,
        }
        if writable && image.used_footer_copy {
            image.mend_trailing_footer()?;
        } else if writable && image.footer.disk_type != VhdType::Fixed {
            // A crash between the two footer writes of a change of parent
            // leaves the copy naming the old header: it follows the trailing
            // footer again, so that readers who start at offset 0 (QEMU)
            // agree with those who start at the end.
            let mut head = [0u8; FOOTER_SIZE];
            read(&*image.storage, &mut head, 0, "reading the VHD footer copy")?;
            if head != tail {
                image.storage.write_all_at(&tail, 0).during("rewriting the VHD footer copy", 0)?;
                image.storage.flush().during("flushing the rewritten footer copy", 0)?;
                image.mended_footer = true;
                image.mended_copy = true;
            }
        }
        Ok(image)
    }

    /// Puts the footer back at the end of the file, after the last block,
    /// when a crash left it damaged (the copy at offset 0 was read): what a
    /// writable open does first, so every reader finds it again.
    fn mend_trailing_footer(&mut self) -> Result<()> {
        let at = self.footer_at;
        let footer = self.footer.to_bytes();
        self.storage.write_all_at(&footer, at).during("rewriting the VHD footer", at)?;
        self.storage.set_len(at + FOOTER_SIZE as u64).during("ending the file after its footer", at)?;
        self.storage.flush().during("flushing the rewritten footer", at)?;
        self.len = at + FOOTER_SIZE as u64;
        self.used_footer_copy = false;
        self.mended_footer = true;
        Ok(())
    }

    fn read_dynamic(&mut self, len: u64) -> Result<()> {
        let at = self.footer.data_offset;
        if at.checked_add(DYNAMIC_HEADER_SIZE as u64).is_none_or(|end| end > len) {
            return Err(Error::corrupt(
                "VHD footer",
                self.footer_at,
                format!("the dynamic header's offset {at:#x} does not lie in the {len}-byte file"),
            ));
        }
        let mut raw = [0u8; DYNAMIC_HEADER_SIZE];
        read(&*self.storage, &mut raw, at, "reading the VHD dynamic header")?;
        let size = self.footer.current_size;
        let header = match DynamicHeader::parse(&raw, at, len, size) {
            Ok(h) => h,
            // Read-only, as for the footer: a checksum alone wrong is read.
            Err(strict) if !self.writable => match DynamicHeader::parse_with(&raw, at, len, size, false) {
                Ok(h) => {
                    self.checksum_ignored.get_or_insert(strict);
                    h
                }
                Err(_) => return Err(strict),
            },
            Err(e) => return Err(e),
        };
        // The BAT lies in the file (checked by the parser), so the file's
        // length bounds this allocation.
        let mut table = alloc::vec![0u8; header.max_table_entries as usize * 4];
        read(&*self.storage, &mut table, header.table_offset, "reading the VHD block allocation table")?;
        let bat: Vec<u32> = table.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        let span = bitmap_size(header.block_size) + header.block_size as u64;
        // Every stored block lies past the structures at the file's start and
        // apart from every other: a write to one never lands in another.
        let mut fixed: Vec<(u64, u64, &str)> = alloc::vec![
            (0, FOOTER_SIZE as u64, "the footer copy"),
            (at, at + DYNAMIC_HEADER_SIZE as u64, "the dynamic header"),
            (header.table_offset, header.table_offset + table.len() as u64, "the block allocation table"),
        ];
        for e in &header.locators {
            fixed.push((e.data_offset, e.data_offset + e.data_length as u64, "a parent locator"));
        }
        let mut blocks: Vec<(u64, usize)> =
            bat.iter().enumerate().filter(|(_, &e)| e != UNUSED_ENTRY).map(|(i, &e)| (e as u64 * SECTOR, i)).collect();
        blocks.sort_unstable();
        let mut end_of_blocks = 0u64;
        for (k, &(start, index)) in blocks.iter().enumerate() {
            let end = start + span;
            let entry_at = header.table_offset + index as u64 * 4;
            // A block starts inside the file: a crash can leave a new
            // block's entry written before the file grew past the old
            // footer, which the block starts over, but never one further out.
            if start >= len {
                return Err(Error::corrupt(
                    "VHD block allocation table",
                    entry_at,
                    format!("block {index} at {start:#x} starts past the end of the {len}-byte file"),
                ));
            }
            if let Some((_, _, what)) = fixed.iter().find(|(s, e, _)| start < *e && *s < end) {
                return Err(Error::corrupt(
                    "VHD block allocation table",
                    entry_at,
                    format!("block {index} at {start:#x} overlaps {what}"),
                ));
            }
            if let Some(&(next, other)) = blocks.get(k + 1) {
                if next < end {
                    return Err(Error::corrupt(
                        "VHD block allocation table",
                        entry_at,
                        format!("block {index} at {start:#x} overlaps block {other} at {next:#x}"),
                    ));
                }
            }
            end_of_blocks = end_of_blocks.max(end);
        }
        // A crash can leave a block's entry written and the file not yet
        // grown, or the file cut short before its footer: the footer and the
        // next block go past every block and every structure either way.
        let end_of_structures = fixed.iter().map(|&(_, end, _)| end).max().unwrap_or(0);
        self.footer_at = self.footer_at.max(end_of_blocks).max(end_of_structures).next_multiple_of(SECTOR);
        self.header = Some(header);
        self.bat = bat;
        Ok(())
    }

    fn block_size(&self) -> u64 {
        self.header.as_ref().map_or(0, |h| h.block_size as u64)
    }

    /// The file offset of `block`'s sector bitmap, if the block is stored.
    fn block_at(&self, block: u64) -> Option<u64> {
        match self.bat.get(block as usize) {
            Some(&e) if e != UNUSED_ENTRY => Some(e as u64 * SECTOR),
            _ => None,
        }
    }

    /// Reads file bytes; past the end of the file reads zeros (a block
    /// whose entry a crash wrote before the file grew).
    fn read_file(&self, buf: &mut [u8], at: u64, what: &'static str) -> Result<()> {
        let avail = self.len.saturating_sub(at).min(buf.len() as u64) as usize;
        if avail > 0 {
            read(&*self.storage, &mut buf[..avail], at, what)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Calls `f(virtual_offset, length, extent)` for the runs of
    /// `[offset, offset + len)` as this file alone presents them.
    fn resolve(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64, Extent) -> Result<()>) -> Result<()> {
        let Some(header) = &self.header else {
            return if len > 0 { f(offset, len, Extent::Data { file_offset: offset }) } else { Ok(()) };
        };
        let bs = header.block_size as u64;
        let bitmap = header.bitmap_size();
        let differencing = self.footer.disk_type == VhdType::Differencing;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            match self.block_at(block) {
                None if differencing => f(pos, n, Extent::Parent)?,
                None => f(pos, n, Extent::Zero)?,
                // A dynamic disk's bitmap is all ones (what Windows writes);
                // readers do not consult it.
                Some(at) if !differencing => f(pos, n, Extent::Data { file_offset: at + bitmap + in_block })?,
                Some(at) => {
                    let first = in_block / SECTOR;
                    let last = (in_block + n - 1) / SECTOR;
                    let lo = first / 8;
                    let mut bits = alloc::vec![0u8; (last / 8 - lo + 1) as usize];
                    self.read_bitmap(&mut bits, at + lo)?;
                    let present = |s: u64| bits[(s / 8 - lo) as usize] & (0x80 >> (s % 8)) != 0;
                    let block_start = block * bs;
                    let mut s = first;
                    while s <= last {
                        let p = present(s);
                        let mut e = s + 1;
                        while e <= last && present(e) == p {
                            e += 1;
                        }
                        let run_lo = (block_start + s * SECTOR).max(pos);
                        let run_hi = (block_start + e * SECTOR).min(pos + n);
                        let extent = if p {
                            Extent::Data { file_offset: at + bitmap + (run_lo - block_start) }
                        } else {
                            Extent::Parent
                        };
                        f(run_lo, run_hi - run_lo, extent)?;
                        s = e;
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Stores a new block for `block`: the footer moves to the new end
    /// first, then the bitmap goes where it was, then the entry (see the
    /// module docs). Returns the block's file offset (its bitmap's).
    fn allocate(&mut self, block: u64) -> Result<u64> {
        let header = self.header.as_ref().ok_or_else(|| Error::invalid("a fixed VHD has no blocks to allocate"))?;
        let bitmap = bitmap_size(header.block_size);
        let at = self.footer_at;
        let sector = at / SECTOR;
        let entry = u32::try_from(sector).ok().filter(|&s| s != UNUSED_ENTRY).ok_or_else(|| {
            Error::unsupported("VHD block allocation table", header.table_offset, "the file is full: 2 TiB of blocks")
        })?;
        let new_end = at + bitmap + header.block_size as u64;
        let footer = self.footer.to_bytes();
        self.storage.write_all_at(&footer, new_end).during("moving the VHD footer", new_end)?;
        let fill = if self.footer.disk_type == VhdType::Differencing { 0 } else { 0xFF };
        let bits = alloc::vec![fill; bitmap as usize];
        self.storage.write_all_at(&bits, at).during("writing a VHD sector bitmap", at)?;
        self.footer_at = new_end;
        self.len = self.len.max(new_end + FOOTER_SIZE as u64);
        // The bitmap is durable before the entry that gives it meaning: a
        // differencing block whose bitmap held the old footer's bytes would
        // hide the parent's sectors.
        self.storage.flush().during("flushing a new VHD block", at)?;
        let entry_at = header.table_offset + block * 4;
        self.storage.write_all_at(&entry.to_be_bytes(), entry_at).during("writing a VHD BAT entry", entry_at)?;
        self.bat[block as usize] = entry;
        Ok(at)
    }

    /// Writes whole sectors of this file at virtual `offset`, allocating
    /// blocks and, in a differencing disk, setting their bitmap bits.
    fn write_sectors(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if self.header.is_none() {
            return self.storage.write_all_at(buf, offset).during("writing payload", offset);
        }
        let bs = self.block_size();
        let bitmap = bitmap_size(bs as u32);
        let differencing = self.footer.disk_type == VhdType::Differencing;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let at = match self.block_at(block) {
                Some(at) => at,
                None => self.allocate(block)?,
            };
            let src = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let data_at = at + bitmap + in_block;
            self.storage.write_all_at(src, data_at).during("writing payload", data_at)?;
            if differencing {
                self.set_bits(at, in_block / SECTOR, n / SECTOR)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Reads bitmap bytes at file offset `at` as they stand: the file, with
    /// the sectors changed since the last flush laid over it.
    fn read_bitmap(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.read_file(buf, at, "reading a VHD sector bitmap")?;
        let end = at + buf.len() as u64;
        for (&sector_at, sector) in self.dirty_bitmaps.range(at.saturating_sub(SECTOR - 1)..end) {
            let lo = sector_at.max(at);
            let hi = (sector_at + SECTOR).min(end);
            buf[(lo - at) as usize..(hi - at) as usize]
                .copy_from_slice(&sector[(lo - sector_at) as usize..(hi - sector_at) as usize]);
        }
        Ok(())
    }

    /// Sets the bitmap bits of `count` sectors from `first` of the block
    /// whose bitmap is at `at`. The changed bitmap sectors are kept until
    /// the next flush, which makes the data durable before them: a crash
    /// never shows a sector as this file's before its data is there.
    fn set_bits(&mut self, at: u64, first: u64, count: u64) -> Result<()> {
        let mut s = first;
        while s < first + count {
            let sector_at = at + s / 8 / SECTOR * SECTOR;
            if !self.dirty_bitmaps.contains_key(&sector_at) {
                let mut sector = [0u8; SECTOR as usize];
                self.read_file(&mut sector, sector_at, "reading a VHD sector bitmap")?;
                self.dirty_bitmaps.insert(sector_at, sector);
            }
            let sector = self.dirty_bitmaps.get_mut(&sector_at).expect("inserted above");
            // The bits of this bitmap sector: 4096 sectors of the block.
            let stop = (first + count).min((s / 4096 + 1) * 4096);
            while s < stop {
                let i = (s / 8 % SECTOR) as usize;
                sector[i] |= 0x80 >> (s % 8);
                s += 1;
            }
        }
        Ok(())
    }

    /// Makes the data durable, then the bitmap sectors that describe it.
    fn flush(&mut self) -> Result<()> {
        self.storage.flush().during("flushing payload", 0)?;
        if self.dirty_bitmaps.is_empty() {
            return Ok(());
        }
        for (&at, sector) in &self.dirty_bitmaps {
            self.storage.write_all_at(sector, at).during("writing a VHD sector bitmap", at)?;
        }
        self.storage.flush().during("flushing sector bitmaps", 0)?;
        self.dirty_bitmaps.clear();
        Ok(())
    }

    /// The path stored by each parent locator entry, by platform code.
    fn locator_paths(&self) -> Result<Vec<([u8; 4], Option<String>)>> {
        let Some(h) = &self.header else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for e in &h.locators {
            let mut data = alloc::vec![0u8; e.data_length as usize];
            read(&*self.storage, &mut data, e.data_offset, "reading a VHD parent locator")?;
            out.push((e.platform_code, decode_locator_path(e.platform_code, &data)));
        }
        Ok(out)
    }
}

impl Drop for VhdImage {
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush();
        }
    }
}

/// An open VHD disk, with its parent when it is a differencing disk.
///
/// ```
/// use vhdx::vhd::{VhdCreateOptions, VhdDisk};
/// use vhdx::MemStorage;
/// # fn main() -> vhdx::Result<()> {
/// let options = VhdCreateOptions::dynamic(8 << 20).unique_id(vhdx::Guid::from_u128(1)).timestamp(0);
/// let mut disk = VhdDisk::create_on(Box::new(MemStorage::new()), &options)?;
/// disk.write_at(b"hello", 3 << 20)?;
/// let mut back = [0u8; 5];
/// disk.read_at(&mut back, 3 << 20)?;
/// assert_eq!(&back, b"hello");
/// # Ok(()) }
/// ```
pub struct VhdDisk {
    image: VhdImage,
    parent: Option<Box<VhdDisk>>,
}

impl core::fmt::Debug for VhdDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VhdDisk")
            .field("type", &self.image.footer.disk_type)
            .field("virtual_size", &self.image.footer.current_size)
            .field("path", &self.image.path)
            .finish_non_exhaustive()
    }
}

/// How to make a new VHD.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VhdCreateOptions {
    /// The virtual size in bytes (a multiple of 512).
    pub(crate) size: u64,
    /// Fixed or dynamic.
    pub(crate) disk_type: VhdType,
    /// The block size of a dynamic disk (default 2 MiB).
    pub(crate) block_size: u32,
    /// The unique ID (random with `std` when not given).
    pub(crate) unique_id: Option<Guid>,
    /// The time stamp, seconds since 2000-01-01 UTC (now with `std` when not given).
    pub(crate) timestamp: Option<u32>,
    /// Name Windows as the creator (`win ` 10.0 on `Wi2k`), as tools that
    /// check the footer (Azure's upload) expect; else `vhdx`.
    pub(crate) windows_creator: bool,
}

impl VhdCreateOptions {
    /// A fixed disk of `size` bytes.
    pub fn fixed(size: u64) -> Self {
        VhdCreateOptions {
            size,
            disk_type: VhdType::Fixed,
            block_size: crate::format::vhd::DEFAULT_BLOCK_SIZE,
            unique_id: None,
            timestamp: None,
            windows_creator: false,
        }
    }

    /// The virtual size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the options: a size that is a non-zero multiple of 512 up to
    /// 2040 GiB, fixed or dynamic, and for a dynamic disk a block size
    /// that is a power of two from 512 KiB to 256 MiB.
    pub fn validate(&self) -> Result<()> {
        let size = self.size;
        if size == 0 || size % SECTOR != 0 || size > crate::format::vhd::MAX_SIZE {
            return Err(Error::invalid(format!(
                "a VHD's size must be a non-zero multiple of 512 bytes up to 2040 GiB, not {size}"
            )));
        }
        let bs = self.block_size;
        if self.disk_type == VhdType::Dynamic && !bs.is_power_of_two()
            || !(512 << 10..=crate::format::vhd::MAX_BLOCK_SIZE).contains(&bs)
        {
            return Err(Error::invalid(format!(
                "a VHD's block size must be a power of two from 512 KiB to 256 MiB, not {bs}"
            )));
        }
        if self.disk_type == VhdType::Differencing {
            return Err(Error::invalid("a differencing VHD is made over its parent, not from options alone"));
        }
        Ok(())
    }

    /// Names Windows as the creator in the footer (`win ` 10.0 on `Wi2k`),
    /// as Hyper-V's `Convert-VHD` writes it: what tools that check the
    /// footer, such as Azure's upload, are sure to accept.
    pub fn as_windows_writes(mut self) -> Self {
        self.windows_creator = true;
        self
    }

    /// A dynamic disk of `size` bytes.
    pub fn dynamic(size: u64) -> Self {
        VhdCreateOptions { disk_type: VhdType::Dynamic, ..Self::fixed(size) }
    }

    /// Sets the block size of a dynamic disk.
    pub fn block_size(mut self, block_size: u32) -> Self {
        self.block_size = block_size;
        self
    }

    /// Sets the unique ID.
    pub fn unique_id(mut self, id: Guid) -> Self {
        self.unique_id = Some(id);
        self
    }

    /// Sets the time stamp (seconds since 2000-01-01 UTC).
    pub fn timestamp(mut self, seconds: u32) -> Self {
        self.timestamp = Some(seconds);
        self
    }
}

/// Seconds since the VHD epoch now, as a time stamp field holds them.
#[cfg(feature = "std")]
pub(crate) fn now() -> u32 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(unix.saturating_sub(crate::format::vhd::EPOCH_UNIX_SECONDS)).unwrap_or(u32::MAX)
}

/// The footer of a new disk.
fn new_footer(options: &VhdCreateOptions, disk_type: VhdType, data_offset: u64) -> Result<Footer> {
    #[cfg(feature = "std")]
    let (id, time) = (options.unique_id.unwrap_or_else(uuid::Uuid::new_v4), options.timestamp.unwrap_or_else(now));
    #[cfg(not(feature = "std"))]
    let (id, time) = match (options.unique_id, options.timestamp) {
        (Some(id), Some(t)) => (id, t),
        _ => return Err(Error::invalid("without std, a new VHD needs a unique ID and a time stamp")),
    };
    Ok(Footer {
        disk_type,
        features: FEATURE_RESERVED,
        data_offset,
        timestamp: time,
        creator_app: if options.windows_creator { *b"win " } else { *b"vhdx" },
        creator_version: if options.windows_creator { 0x000A_0000 } else { 0x0001_0000 },
        creator_host: *b"Wi2k",
        original_size: options.size,
        current_size: options.size,
        chs: Chs::for_size(options.size),
        unique_id: id,
        saved_state: false,
    })
}

impl VhdDisk {
    /// Creates a fixed or dynamic VHD at `path` (which must not exist) and
    /// opens it for writing.
    #[cfg(feature = "std")]
    pub fn create(path: impl AsRef<std::path::Path>, options: &VhdCreateOptions) -> Result<VhdDisk> {
        let path = path.as_ref();
        options.validate().map_err(|e| e.in_file(path.display()))?;
        let storage = crate::io::FileStorage::create_new(path)
            .map_err(|source| Error::opening("create", source, true).in_file(path.display()))?;
        let mut disk = Self::create_on(Box::new(storage), options).map_err(|e| {
            let _ = std::fs::remove_file(path);
            e.in_file(path.display())
        })?;
        crate::io::sync_directory_of(path)
            .during("flushing the directory of the new image", 0)
            .map_err(|e| e.in_file(path.display()))?;
        disk.image.path = Some(alloc::string::ToString::to_string(&path.display()));
        Ok(disk)
    }

    /// Creates a fixed or dynamic VHD on empty `storage` and opens it for
    /// writing.
    pub fn create_on(mut storage: Box<dyn Storage>, options: &VhdCreateOptions) -> Result<VhdDisk> {
        options.validate()?;
        let size = options.size;
        match options.disk_type {
            VhdType::Fixed => {
                let footer = new_footer(options, VhdType::Fixed, NO_DATA_OFFSET)?;
                storage.set_len(size + FOOTER_SIZE as u64).during("sizing the new file", 0)?;
                storage.write_all_at(&footer.to_bytes(), size).during("writing the VHD footer", size)?;
            }
            VhdType::Dynamic => {
                let bs = options.block_size;
                let footer = new_footer(options, VhdType::Dynamic, FOOTER_SIZE as u64)?;
                let entries = size.div_ceil(bs as u64);
                let table_offset = (FOOTER_SIZE + DYNAMIC_HEADER_SIZE) as u64;
                let table_len = (entries * 4).next_multiple_of(SECTOR);
                let header = DynamicHeader {
                    table_offset,
                    max_table_entries: entries as u32,
                    block_size: bs,
                    parent_unique_id: Guid::nil(),
                    parent_timestamp: 0,
                    parent_name: String::new(),
                    locators: Vec::<LocatorEntry>::new(),
                };
                let end = table_offset + table_len;
                let bytes = footer.to_bytes();
                storage.write_all_at(&bytes, 0).during("writing the VHD footer copy", 0)?;
                storage.write_all_at(&header.to_bytes()?, 512).during("writing the VHD dynamic header", 512)?;
                let table = alloc::vec![0xFF; table_len as usize];
                storage.write_all_at(&table, table_offset).during("writing the VHD BAT", table_offset)?;
                storage.write_all_at(&bytes, end).during("writing the VHD footer", end)?;
            }
            _ => return Err(Error::invalid("a VHD is made fixed or dynamic")),
        }
        storage.flush().during("flushing the new file", 0)?;
        Self::open_storage(storage, true)
    }

    /// Creates a differencing VHD on empty `storage` over the disk whose
    /// footer is `parent` (the child takes its size, geometry and unique ID
    /// as the link), naming it `parent_name` and storing `locators`
    /// (platform code and encoded path, each in its own 512-byte-aligned
    /// space after the BAT, whose size in bytes `data_space` records, as
    /// Windows writes it).
    pub(crate) fn create_differencing_with(
        mut storage: Box<dyn Storage>,
        parent: &Footer,
        parent_name: &str,
        locators: &[([u8; 4], Vec<u8>)],
        block_size: u32,
        unique_id: Option<Guid>,
    ) -> Result<VhdDisk> {
        let size = parent.current_size;
        let mut options = VhdCreateOptions::dynamic(size).block_size(block_size);
        options.unique_id = unique_id;
        let mut footer = new_footer(&options, VhdType::Differencing, FOOTER_SIZE as u64)?;
        footer.chs = parent.chs;
        let entries = size.div_ceil(block_size as u64);
        let table_offset = (FOOTER_SIZE + DYNAMIC_HEADER_SIZE) as u64;
        let mut at = table_offset + (entries * 4).next_multiple_of(SECTOR);
        let mut placed = Vec::new();
        for (code, data) in locators {
            let space = (data.len() as u64).next_multiple_of(SECTOR).max(SECTOR);
            placed.push(LocatorEntry {
                platform_code: *code,
                data_space: space as u32,
                data_length: data.len() as u32,
                data_offset: at,
            });
            at += space;
        }
        let header = DynamicHeader {
            table_offset,
            max_table_entries: entries as u32,
            block_size,
            parent_unique_id: parent.unique_id,
            parent_timestamp: parent.timestamp,
            parent_name: String::from(parent_name),
            locators: placed.clone(),
        };
        let bytes = footer.to_bytes();
        storage.write_all_at(&bytes, 0).during("writing the VHD footer copy", 0)?;
        storage.write_all_at(&header.to_bytes()?, 512).during("writing the VHD dynamic header", 512)?;
        let table = alloc::vec![0xFF; (entries * 4).next_multiple_of(SECTOR) as usize];
        storage.write_all_at(&table, table_offset).during("writing the VHD BAT", table_offset)?;
        for (e, (_, data)) in placed.iter().zip(locators) {
            let mut padded = data.clone();
            padded.resize(e.data_space as usize, 0);
            storage.write_all_at(&padded, e.data_offset).during("writing a VHD parent locator", e.data_offset)?;
        }
        storage.write_all_at(&bytes, at).during("writing the VHD footer", at)?;
        storage.flush().during("flushing the new file", 0)?;
        Self::open_storage(storage, true)
    }

    /// Creates a differencing VHD on empty `storage` over `parent` (which
    /// it takes as its parent, open read-only or not), with no parent
    /// locator: reopen it with [`VhdDisk::with_parent`]. For files,
    /// `VhdDisk::create_differencing` writes the locators too.
    pub fn create_differencing_on(storage: Box<dyn Storage>, parent: VhdDisk) -> Result<VhdDisk> {
        let mut disk = Self::create_differencing_with(
            storage,
            parent.footer(),
            "",
            &[],
            crate::format::vhd::DEFAULT_BLOCK_SIZE,
            None,
        )?;
        disk.parent = Some(Box::new(parent));
        Ok(disk)
    }

    /// Attaches `parent` to this differencing disk, after checking that its
    /// footer's unique ID is the one the dynamic header names.
    pub fn with_parent(mut self, parent: VhdDisk) -> Result<VhdDisk> {
        let Some(h) = self.image.header.as_ref().filter(|_| self.disk_type() == VhdType::Differencing) else {
            return Err(Error::invalid("only a differencing disk takes a parent"));
        };
        if parent.footer().unique_id != h.parent_unique_id {
            return Err(Error::ParentMismatch {
                parent: String::from(parent.path().unwrap_or("the given parent")),
                expected: h.parent_unique_id,
                found: parent.footer().unique_id,
            });
        }
        self.parent = Some(Box::new(parent));
        Ok(self)
    }

    /// Opens the VHD on `storage` alone: a differencing disk's sectors that
    /// its parent would give read as zeros.
    pub fn open_storage(storage: Box<dyn Storage>, writable: bool) -> Result<VhdDisk> {
        Self::open_image(storage, writable, None)
    }

    /// The disk of the one file on `storage`, no parent attached (the chain
    /// layer finds and attaches it).
    pub(crate) fn open_image(storage: Box<dyn Storage>, writable: bool, path: Option<String>) -> Result<VhdDisk> {
        Ok(VhdDisk { image: VhdImage::read(storage, writable, path)?, parent: None })
    }

    /// Attaches `parent`, which the caller checked against the dynamic
    /// header's parent unique ID.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn attach(&mut self, parent: VhdDisk) {
        self.parent = Some(Box::new(parent));
    }

    /// The footer (the trailing one, or the copy at offset 0 when the
    /// trailing one is damaged: see [`VhdDisk::used_footer_copy`]).
    pub fn footer(&self) -> &Footer {
        &self.image.footer
    }

    /// The dynamic header of a dynamic or differencing disk.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.image.header.as_ref()
    }

    /// Whether the trailing footer was damaged and the copy at offset 0 was
    /// read instead (what a crash while a block was added can leave). A
    /// writable open writes the footer back at the end at once
    /// ([`VhdDisk::mended_footer`]); a read-only one leaves the file as it is.
    pub fn used_footer_copy(&self) -> bool {
        self.image.used_footer_copy
    }

    /// Whether this writable open found the trailing footer damaged and
    /// wrote it back at the end of the file, after the last block; or found
    /// the footer copy at offset 0 differing from it (a crash while the
    /// disk changed parent) and wrote the copy again.
    pub fn mended_footer(&self) -> bool {
        self.image.mended_footer
    }

    /// Whether the footer mended was the copy at offset 0.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn mended_copy(&self) -> bool {
        self.image.mended_copy
    }

    /// When the footer or the dynamic header was read although its
    /// checksum is wrong (only a read-only open does that, as libvhdi
    /// reads such files; a writable open refuses them), what is wrong.
    pub fn footer_checksum_error(&self) -> Option<&Error> {
        self.image.checksum_ignored.as_ref()
    }

    /// Fixed, dynamic or differencing.
    pub fn disk_type(&self) -> VhdType {
        self.image.footer.disk_type
    }

    /// The virtual size: the footer's current size.
    pub fn virtual_size(&self) -> u64 {
        self.image.footer.current_size
    }

    /// The path the disk was opened from, if any.
    pub fn path(&self) -> Option<&str> {
        self.image.path.as_deref()
    }

    /// The parent, when one is attached.
    pub fn parent(&self) -> Option<&VhdDisk> {
        self.parent.as_deref()
    }

    /// The paths of the chain open with the disk, leaf first (`"?"` for
    /// an image opened without one).
    pub fn chain_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut level = Some(self);
        while let Some(d) = level {
            out.push(String::from(d.path().unwrap_or("?")));
            level = d.parent();
        }
        out
    }

    /// Blocks stored in this file, and blocks of the disk: from the block
    /// table, as a VHDX counts them (`(0, 0)` for a fixed disk).
    pub fn allocated_blocks(&self) -> (u64, u64) {
        let Some(h) = self.dynamic_header() else { return (0, 0) };
        let total = self.virtual_size().div_ceil(h.block_size as u64);
        let stored = self.image.bat.iter().take(total as usize).filter(|&&e| e != UNUSED_ENTRY).count() as u64;
        (stored, total)
    }

    /// The paths the parent locator entries hold, with their platform codes
    /// (`None` for a `Mac ` alias or an unknown code).
    pub fn locator_paths(&self) -> Result<Vec<([u8; 4], Option<String>)>> {
        self.image.locator_paths()
    }

    /// The runs of the whole disk as this file alone presents them.
    pub fn map(&self) -> Result<Vec<crate::MapEntry>> {
        let mut out: Vec<crate::MapEntry> = Vec::new();
        self.image.resolve(0, self.virtual_size(), |offset, length, extent| {
            if let Some(last) = out.last_mut() {
                let joins = match (last.extent, extent) {
                    (Extent::Data { file_offset: a }, Extent::Data { file_offset: b }) => a + last.length == b,
                    (a, b) => a == b,
                };
                if joins {
                    last.length += length;
                    return Ok(());
                }
            }
            out.push(crate::MapEntry { offset, length, extent });
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::block::check_range(offset, buf.len(), self.virtual_size())?;
        self.image.resolve(offset, buf.len() as u64, |at, n, extent| {
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            match extent {
                Extent::Data { file_offset } => self.image.read_file(dst, file_offset, "reading payload"),
                Extent::Parent => match &self.parent {
                    Some(p) => crate::block::read_or_zeros(&**p, dst, at),
                    None => {
                        dst.fill(0);
                        Ok(())
                    }
                },
                _ => {
                    dst.fill(0);
                    Ok(())
                }
            }
        })
    }

    /// Writes `buf` at virtual `offset`, any alignment; partial sectors are
    /// completed from what the disk presents (in a differencing disk, the
    /// chain) first.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        crate::block::write_by_sectors(self, buf, offset)
    }

    /// Refuses a write of `len` bytes at `offset` that this disk cannot take.
    fn check_write(&self, offset: u64, len: usize) -> Result<()> {
        if !self.image.writable {
            return Err(Error::ReadOnly);
        }
        crate::block::check_range(offset, len, self.virtual_size())?;
        if self.disk_type() == VhdType::Differencing && self.parent.is_none() {
            return Err(Error::invalid("a differencing disk opened without its parent cannot take data writes"));
        }
        Ok(())
    }

    /// Makes completed writes durable.
    pub fn flush(&mut self) -> Result<()> {
        if !self.image.writable {
            return Ok(());
        }
        self.image.flush()
    }

    /// Gives back the storage (flushed).
    pub fn into_storage(mut self) -> Result<Box<dyn Storage>> {
        self.flush()?;
        self.image.writable = false;
        Ok(core::mem::replace(&mut self.image.storage, Box::new(crate::io::MemStorage::new())))
    }

    /// Gives up the disk without flushing — what a crash leaves — and
    /// returns its storage.
    pub fn abandon(mut self) -> Box<dyn Storage> {
        self.image.writable = false;
        core::mem::replace(&mut self.image.storage, Box::new(crate::io::MemStorage::new()))
    }
}

impl crate::BlockDevice for VhdDisk {
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }

    fn sector_count(&self) -> u64 {
        self.virtual_size() / SECTOR
    }

    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let at = crate::block::sector_offset(lba, buf.len(), SECTOR as u32)?;
        self.read_at(buf, at)
    }

    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        let at = crate::block::sector_offset(lba, buf.len(), SECTOR as u32)?;
        self.check_write(at, buf.len())?;
        self.image.write_sectors(buf, at)
    }

    fn flush(&mut self) -> Result<()> {
        VhdDisk::flush(self)
    }

    fn is_writable(&self) -> bool {
        self.image.writable
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        VhdDisk::read_at(self, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        VhdDisk::write_at(self, buf, offset)
    }

    /// The runs this file stores data for, and everything left to a parent.
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let parent_has_data = self.parent.is_some();
        for e in self.map()? {
            let data = match e.extent {
                Extent::Data { .. } => true,
                Extent::Parent => parent_has_data,
                _ => false,
            };
            if data {
                match out.last_mut() {
                    Some((s, l)) if *s + *l == e.offset => *l += e.length,
                    _ => out.push((e.offset, e.length)),
                }
            }
        }
        Ok(out)
    }
}
