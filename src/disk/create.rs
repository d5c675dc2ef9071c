//! Creating fixed and dynamic images.
//!
//! Layout: header section (0–1 MiB), log (1 MiB at 1 MiB), metadata region
//! (1 MiB at 2 MiB), BAT (at 3 MiB, whole MiBs), then payload. The regions
//! are written and flushed first, then both headers, and only then the file
//! type identifier, so a crash during creation leaves a file no reader takes
//! for a VHDX file: its signature appears only once everything it vouches for
//! is durable. (Written with the headers, a crash could leave one header
//! valid and the other missing: an image that opens but fails a check.)

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use zerocopy::IntoBytes;

use super::options::{default_guid_source, CreateOptions, DiskType, GuidSource};
use super::Disk;
use crate::error::{Error, IoContext, Result};
use crate::format::bat::{BatEntry, BatGeometry, PayloadState};
use crate::format::guid::{Guid, BAT_REGION, METADATA_REGION};
use crate::format::header::{HeaderInfo, RawFileIdentifier, HEADER_OFFSETS};
use crate::format::locator::ParentLocator;
use crate::format::metadata::{build_region, DiskParameters};
use crate::format::region::{Region, RegionTable, REGION_TABLE_OFFSETS};
use crate::format::{round_up_mib, MIB};
use crate::io::Storage;

/// The creator string written into new files.
pub const CREATOR: &str = concat!("vhdx-rs ", env!("CARGO_PKG_VERSION"));

/// Where a new image's structures go.
pub(crate) struct Layout {
    pub log_offset: u64,
    pub log_length: u32,
    pub metadata_offset: u64,
    pub metadata_length: u32,
    pub bat_offset: u64,
    pub bat_length: u64,
    pub payload_offset: u64,
}

impl Layout {
    pub(crate) fn new(g: &BatGeometry) -> Result<Layout> {
        let bat_length = round_up_mib(g.table_bytes().max(1));
        if bat_length > u32::MAX as u64 - (MIB - 1) {
            return Err(Error::invalid("the BAT would exceed the largest region"));
        }
        Ok(Layout {
            log_offset: MIB,
            log_length: MIB as u32,
            metadata_offset: 2 * MIB,
            metadata_length: MIB as u32,
            bat_offset: 3 * MIB,
            bat_length,
            payload_offset: 3 * MIB + bat_length,
        })
    }
}

/// Writes a complete new image with `params` (and `locator` for a
/// differencing disk) onto `storage`; payload blocks of a fixed disk are
/// preallocated. Returns the storage, flushed.
pub(crate) fn write_new_image(
    storage: &mut dyn Storage,
    params: &DiskParameters,
    locator: Option<&ParentLocator>,
    guids: &mut GuidSource,
) -> Result<()> {
    let len = storage.len().during("sizing the file", 0)?;
    if len != 0 {
        return Err(Error::invalid(format!("the storage to create an image on is not empty ({len} bytes)")));
    }
    let g = BatGeometry::new(params.block_size, params.logical_sector_size, params.virtual_size, params.has_parent)?;
    let layout = Layout::new(&g)?;
    let fixed = params.leave_block_allocated;
    let file_len = if fixed {
        g.payload_blocks
            .checked_mul(g.block_size as u64)
            .and_then(|p| p.checked_add(layout.payload_offset))
            .ok_or_else(|| Error::invalid("fixed disk too large"))?
    } else {
        layout.payload_offset
    };
    storage.set_len(file_len).during("sizing the new file", file_len)?;
    // The log gets real space now, so metadata updates never need new space
    // (set_len leaves a hole).
    storage.allocate(layout.log_offset, layout.log_length as u64).during("allocating the log", layout.log_offset)?;

    let regions = RegionTable {
        entries: alloc::vec![
            Region {
                guid: BAT_REGION,
                file_offset: layout.bat_offset,
                length: layout.bat_length as u32,
                required: true
            },
            Region {
                guid: METADATA_REGION,
                file_offset: layout.metadata_offset,
                length: layout.metadata_length,
                required: true,
            },
        ],
    };
    let table = regions.to_bytes();
    for at in REGION_TABLE_OFFSETS {
        storage.write_all_at(&table, at).during("writing a region table", at)?;
    }
    let meta = build_region(params, locator, &[], layout.metadata_length as usize)?;
    storage
        .write_all_at(&meta, layout.metadata_offset)
        .during("writing the metadata region", layout.metadata_offset)?;
    if fixed {
        // Payload entries FULLY_PRESENT and contiguous; sector bitmap entries stay zero.
        const CHUNK_ENTRIES: u64 = 64 * 1024;
        let mut block = 0u64;
        while block < g.payload_blocks {
            let end = (block + CHUNK_ENTRIES).min(g.payload_blocks);
            let first_index = g.payload_index(block);
            let last_index = g.payload_index(end - 1);
            let mut bytes: Vec<u8> = alloc::vec![0u8; (last_index - first_index + 1) * 8];
            for b in block..end {
                let off = layout.payload_offset + b * g.block_size as u64;
                let i = g.payload_index(b) - first_index;
                bytes[i * 8..i * 8 + 8]
                    .copy_from_slice(&BatEntry::payload(PayloadState::FullyPresent, off).raw().to_le_bytes());
            }
            let at = layout.bat_offset + first_index as u64 * 8;
            storage.write_all_at(&bytes, at).during("writing the BAT", at)?;
            block = end;
        }
    }
    storage.flush().during("flushing the new image", 0)?;

    let mut header = HeaderInfo {
        sequence_number: 0,
        file_write_guid: guids(),
        data_write_guid: guids(),
        log_guid: Guid::nil(),
        log_version: 0,
        log_length: layout.log_length,
        log_offset: layout.log_offset,
    };
    for at in HEADER_OFFSETS {
        header.sequence_number += 1;
        storage.write_all_at(&header.to_bytes(), at).during("writing a header", at)?;
    }
    storage.flush().during("flushing the new image", 0)?;
    // Last: the signature that makes the file a VHDX file.
    storage.write_all_at(RawFileIdentifier::new(CREATOR).as_bytes(), 0).during("writing the file identifier", 0)?;
    storage.flush().during("flushing the new image", 0)?;
    Ok(())
}

pub(crate) fn create(
    mut storage: Box<dyn Storage>,
    options: &CreateOptions,
    guid_source: Option<GuidSource>,
) -> Result<Disk> {
    options.validate()?;
    let mut guids = guid_source
        .or_else(default_guid_source)
        .ok_or_else(|| Error::invalid("creating an image without std needs a GUID source"))?;
    let params = DiskParameters {
        block_size: options.block_size,
        leave_block_allocated: options.disk_type == DiskType::Fixed,
        has_parent: false,
        virtual_size: options.virtual_size,
        virtual_disk_id: options.virtual_disk_id.unwrap_or_else(&mut guids),
        logical_sector_size: options.logical_sector_size,
        physical_sector_size: options.physical_sector_size,
    };
    write_new_image(&mut *storage, &params, None, &mut guids)?;
    let image = super::open::read_image(storage, true, Some(guids), None, super::table::DEFAULT_CACHE_BYTES)?;
    super::open::finish(image, None)
}

#[cfg(feature = "std")]
pub(crate) fn create_file(path: &std::path::Path, options: &CreateOptions) -> Result<Disk> {
    options.validate().map_err(|e| e.in_file(path.display()))?;
    let storage = crate::io::FileStorage::create_new(path)
        .map_err(|source| Error::opening("create", source, true).in_file(path.display()))?;
    let disk = create(Box::new(storage), options, None).map_err(|e| {
        let _ = std::fs::remove_file(path);
        e.in_file(path.display())
    })?;
    sync_name(path)?;
    Ok(disk)
}

/// After a new image is complete and flushed: makes its name durable too
/// (the directory is flushed), so a power cut cannot lose a created image.
#[cfg(feature = "std")]
pub(crate) fn sync_name(path: &std::path::Path) -> Result<()> {
    crate::io::sync_directory_of(path)
        .during("flushing the directory of the new image", 0)
        .map_err(|e| e.in_file(path.display()))
}
