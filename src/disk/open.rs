//! Opening an image: headers, log replay, region table, metadata, BAT, with
//! every value checked before it sizes an allocation or an access.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use super::headers::Headers;
use super::table::BlockTable;
use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, BatGeometry, PayloadState, SB_NOT_PRESENT, SB_PRESENT};
use crate::format::header::{select_current, HeaderInfo, RawFileIdentifier, HEADER_OFFSETS, HEADER_SIZE};
use crate::format::metadata::{self, METADATA_TABLE_SIZE};
use crate::format::region::{RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};
use crate::format::{round_up_mib, HEADER_SECTION_SIZE, MIB};
use crate::io::Storage;
use crate::log::{find_active_sequence, replay_in_place, ReplayOverlay};

pub(crate) fn read(storage: &dyn Storage, buf: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
    storage.read_exact_at(buf, offset).during(what, offset)
}

fn file_len(storage: &dyn Storage) -> Result<u64> {
    storage.len().during("sizing the file", 0)
}

/// Reads and checks the image on `storage`, replaying its log (in place
/// when `writable`, else in memory): everything of a [`Disk`] but its
/// parent, which the chain layer finds ([`crate::chain`]) and
/// [`finish`] attaches.
pub(crate) fn read_image(
    mut storage: Box<dyn Storage>,
    writable: bool,
    mut guid_source: Option<super::GuidSource>,
    path: Option<alloc::string::String>,
) -> Result<Image> {
    if writable && guid_source.is_none() {
        return Err(Error::invalid("a writable open needs a GUID source when built without std"));
    }
    let mut len = file_len(&*storage)?;
    let section_end = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE as u64;
    if len < section_end {
        // Still check the signature first so a non-VHDX file is named as such.
        let mut sig = alloc::vec![0u8; (len as usize).min(520)];
        read(&*storage, &mut sig, 0, "reading the file type identifier")?;
        RawFileIdentifier::validate(&sig)?;
        return Err(Error::corrupt(
            "header section",
            0,
            format!("file is only {len} bytes, shorter than the header section"),
        ));
    }
    let mut section = alloc::vec![0u8; section_end as usize];
    read(&*storage, &mut section, 0, "reading the header section")?;
    let ident = RawFileIdentifier::validate(&section)?;
    let slots = HEADER_OFFSETS.map(|o| HeaderInfo::parse(&section[o as usize..o as usize + HEADER_SIZE], o));
    let (slot, current) = select_current(slots)?;
    let mut header = Headers::new(current, slot);
    if header.log_length > 0 && header.log_offset + header.log_length as u64 > len {
        return Err(Error::corrupt("header", HEADER_OFFSETS[header.slot()], "the log runs past the end of the file"));
    }
    if writable && header.log_length > 0 {
        // Another tool may have left the log a hole of the file (QEMU does):
        // back it with real space, so metadata updates never need new space.
        storage
            .allocate(header.log_offset, header.log_length as u64)
            .during("allocating the log", header.log_offset)?;
    }

    let mut file_guid_changed = false;
    let mut replayed_log = false;
    if let Some(seq) = find_active_sequence(&*storage, &header, len)? {
        replayed_log = true;
        if writable {
            // A new FileWriteGuid before any change, replay included; then the
            // replay; then a clean log.
            let gen = guid_source.as_mut().expect("checked above");
            let fresh = gen();
            header.update(&mut *storage, |h| h.file_write_guid = fresh)?;
            replay_in_place(&mut *storage, &seq)?;
            header.update(&mut *storage, |h| h.log_guid = crate::format::guid::Guid::nil())?;
            file_guid_changed = true;
            // The replay may have rewritten the region tables.
            read(&*storage, &mut section, 0, "reading the header section")?;
        } else {
            let overlay = ReplayOverlay::new(storage, seq)?;
            storage = Box::new(overlay);
            read(&*storage, &mut section, 0, "reading the header section")?;
        }
        len = file_len(&*storage)?;
    }

    let regions = match RegionTable::parse(&section[REGION_TABLE_OFFSETS[0] as usize..], REGION_TABLE_OFFSETS[0]) {
        Ok(t) => t,
        Err(first) => RegionTable::parse(&section[REGION_TABLE_OFFSETS[1] as usize..], REGION_TABLE_OFFSETS[1])
            .map_err(|second| {
                Error::corrupt(
                    "region table",
                    REGION_TABLE_OFFSETS[0],
                    format!("neither copy is valid (copy 1: {first}; copy 2: {second})"),
                )
            })?,
    };
    let log_range = (header.log_offset, header.log_offset + header.log_length as u64);
    for r in &regions.entries {
        if header.log_length > 0 && r.file_offset < log_range.1 && log_range.0 < r.end() {
            return Err(Error::corrupt(
                "region table",
                REGION_TABLE_OFFSETS[0],
                format!("region {} overlaps the log", r.guid),
            ));
        }
    }
    let bat_region = regions.bat();
    let meta_region = regions.metadata();
    for (r, name) in [(bat_region, "BAT"), (meta_region, "metadata")] {
        if r.end() > len {
            return Err(Error::corrupt(
                "region table",
                REGION_TABLE_OFFSETS[0],
                format!(
                    "the {name} region ({:#x}..{:#x}) runs past the end of the file ({len} bytes)",
                    r.file_offset,
                    r.end()
                ),
            ));
        }
    }

    // Metadata.
    let mut table = alloc::vec![0u8; METADATA_TABLE_SIZE];
    read(&*storage, &mut table, meta_region.file_offset, "reading the metadata table")?;
    let entries = metadata::parse_table(&table, meta_region.file_offset, meta_region.length)?;
    let (params, locator) = metadata::parse_items(&entries, meta_region.file_offset, |e| {
        let mut item = alloc::vec![0u8; e.length as usize];
        read(&*storage, &mut item, meta_region.file_offset + e.offset as u64, "reading a metadata item")?;
        Ok(item)
    })?;
    let geometry =
        BatGeometry::new(params.block_size, params.logical_sector_size, params.virtual_size, params.has_parent)?;
    if geometry.table_bytes() > bat_region.length as u64 {
        return Err(Error::corrupt(
            "BAT",
            bat_region.file_offset,
            format!(
                "region of {} bytes cannot hold the {} entries a {}-byte disk with {}-byte blocks needs",
                bat_region.length, geometry.entry_count, params.virtual_size, params.block_size
            ),
        ));
    }

    // BAT: whole 4 KiB pages. They fit in the region (its length is a
    // multiple of 1 MiB, checked by the region table's parser, and holds the
    // entries, checked above), and the region fits in the file.
    let page_entries = 512u64;
    let bat_entries = geometry.entry_count.div_ceil(page_entries) * page_entries;
    let mut raw = alloc::vec![0u8; (bat_entries * 8) as usize];
    read(&*storage, &mut raw, bat_region.file_offset, "reading the BAT")?;
    let bat: Vec<BatEntry> = BlockTable::decode(&raw).collect();
    drop(raw);
    let alloc_floor = validate_bat(&bat, &geometry, bat_region.file_offset, len, &regions, log_range)?;
    let table = BlockTable::new(geometry, bat_region.file_offset, bat);

    Ok(Image {
        storage,
        writable,
        space: super::space::Space { len, floor: alloc_floor },
        header,
        regions,
        params,
        locator,
        bitmap_cache: super::cache::BitmapCache::for_geometry(table.geometry()),
        table,
        dirty_pages: BTreeMap::new(),
        undo: Default::default(),
        log: None,
        session: super::session::Session::new(guid_source, file_guid_changed),
        creator: ident.creator(),
        replayed_log,
        path,
        closed: false,
    })
}

impl Image {
    /// The image's parameters.
    pub(crate) fn params(&self) -> &crate::format::metadata::DiskParameters {
        &self.params
    }

    /// The parent locator of a differencing image.
    pub(crate) fn locator(&self) -> Option<&crate::format::locator::ParentLocator> {
        self.locator.as_ref()
    }

    /// The path the image was opened from, if any.
    pub(crate) fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

/// The disk of `image` over `parent` (checked by the caller against the
/// image's locator).
pub(crate) fn finish(image: Image, parent: Option<Box<Disk>>) -> Disk {
    let skip = parent.as_deref().map(|p| super::rw::ancestor_skips(p, &image.params)).unwrap_or_default();
    Disk { image, parent, skip }
}

/// Checks every BAT entry: states defined, offsets after the header section,
/// outside the log and regions, starting inside the file, not overlapping each
/// other. Returns the first 1 MiB-aligned offset past every structure.
fn validate_bat(
    bat: &[BatEntry],
    g: &BatGeometry,
    bat_offset: u64,
    file_len: u64,
    regions: &RegionTable,
    log: (u64, u64),
) -> Result<u64> {
    let mut used: Vec<(u64, u64, usize)> = Vec::new();
    let bs = g.block_size as u64;
    for (index, &entry) in bat.iter().enumerate().take(g.entry_count as usize) {
        let at = bat_offset + index as u64 * 8;
        let off = entry.file_offset();
        if g.is_sector_bitmap_index(index) {
            match entry.state_bits() {
                SB_NOT_PRESENT => {}
                SB_PRESENT if g.has_parent => used.push((off, MIB, index)),
                // Fixed and dynamic disks must not have sector bitmaps; other
                // values are reserved. Neither is read, so neither stops a reader.
                _ => {}
            }
            continue;
        }
        let state = entry
            .payload_state()
            .ok_or_else(|| Error::corrupt("BAT entry", at, format!("entry {index} has the reserved state 4")))?;
        if state == PayloadState::PartiallyPresent && !g.has_parent {
            return Err(Error::corrupt(
                "BAT entry",
                at,
                format!("entry {index} is partially present in a disk without a parent"),
            ));
        }
        if state.has_data() {
            used.push((off, bs, index));
        }
        if state == PayloadState::PartiallyPresent {
            let chunk = (index as u64) / (g.chunk_ratio + 1);
            let sb = bat.get(g.sector_bitmap_index(chunk)).copied().unwrap_or(BatEntry::EMPTY);
            if !sb.sector_bitmap_present() {
                return Err(Error::corrupt(
                    "BAT entry",
                    at,
                    format!("entry {index} is partially present but chunk {chunk} has no sector bitmap"),
                ));
            }
        }
    }
    let mut floor = round_up_mib(file_len).max(log.1);
    for r in &regions.entries {
        floor = floor.max(r.end());
    }
    for &(off, len, index) in &used {
        let at = bat_offset + index as u64 * 8;
        let end = off.saturating_add(len);
        if off < HEADER_SECTION_SIZE || off >= file_len {
            return Err(Error::corrupt(
                "BAT entry",
                at,
                format!("entry {index} points at {off:#x}, outside the file's data area (file is {file_len} bytes)"),
            ));
        }
        if off < log.1 && log.0 < end {
            return Err(Error::corrupt("BAT entry", at, format!("entry {index} at {off:#x} overlaps the log")));
        }
        if let Some(r) = regions.entries.iter().find(|r| off < r.end() && r.file_offset < end) {
            return Err(Error::corrupt(
                "BAT entry",
                at,
                format!("entry {index} at {off:#x} overlaps region {}", r.guid),
            ));
        }
        floor = floor.max(end);
    }
    used.sort_unstable();
    for pair in used.windows(2) {
        let (a, alen, ai) = pair[0];
        let (b, _, bi) = pair[1];
        if a + alen > b {
            return Err(Error::corrupt(
                "BAT entry",
                bat_offset + bi as u64 * 8,
                format!("entry {bi} at {b:#x} overlaps entry {ai} at {a:#x}"),
            ));
        }
    }
    Ok(round_up_mib(floor))
}
