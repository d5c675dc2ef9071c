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
use crate::format::bat::BatGeometry;
use crate::format::header::{select_current, HeaderInfo, RawFileIdentifier, HEADER_OFFSETS, HEADER_SIZE};
use crate::format::metadata::{self, METADATA_TABLE_SIZE};
use crate::format::region::{RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};
use crate::format::round_up_mib;
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
    cache_bytes: usize,
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

    // The BAT is read a page at a time when first needed; each page is
    // checked as it is read (see `table`). Its region fits in the file and
    // holds the entries (both checked above).
    let log = if header.log_length > 0 { log_range } else { (0, 0) };
    let floor = regions.entries.iter().fold(round_up_mib(len).max(log.1), |f, r| f.max(r.end()));
    let table = BlockTable::new(geometry, bat_region.file_offset, bat_region.length as u64, cache_bytes);

    Ok(Image {
        storage,
        writable,
        space: super::space::SpaceCell::new(super::space::Space { len, floor }),
        blocks_end: None,
        header,
        regions,
        params,
        locator,
        bitmap_cache: super::cache::BitmapCache::for_geometry(table.geometry()),
        table,
        dirty_pages: BTreeMap::new(),
        undo: Default::default(),
        #[cfg(feature = "std")]
        allocating: Default::default(),
        #[cfg(feature = "std")]
        merging: Default::default(),
        #[cfg(feature = "std")]
        shared_bits: Default::default(),
        log: super::Locked::new(None),
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

    /// The file's length as this session knows it.
    pub(crate) fn file_len(&self) -> u64 {
        self.space.len()
    }

    /// Whether a log was replayed when the image was opened.
    pub(crate) fn replayed_log(&self) -> bool {
        self.replayed_log
    }

    /// The path the image was opened from, if any.
    pub(crate) fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

/// The disk of `image` over `parent` (checked by the caller against the
/// image's locator).
pub(crate) fn finish(image: Image, parent: Option<Box<Disk>>) -> Result<Disk> {
    let skip = match parent.as_deref() {
        Some(p) => super::rw::ancestor_skips(p, &image.params)?,
        None => Vec::new(),
    };
    Ok(Disk { image, parent, skip })
}
