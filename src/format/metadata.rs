//! The metadata region: a 64 KiB table of items, then the items themselves.
//!
//! The known items all have `IsUser = 0`: file parameters, virtual disk size,
//! virtual disk ID, logical and physical sector size, and (differencing disks
//! only) the parent locator. An unknown item marked required makes the file
//! unopenable. Items are read individually, each bounded by the spec's 1 MiB
//! item limit and by the region's length.

use alloc::format;
use alloc::vec::Vec;
use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::guid::{self, Guid};
use super::header::EscapedBytes;
use super::locator::ParentLocator;
use super::{MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, MIB, MIN_BLOCK_SIZE};
use crate::error::{Error, Result};

/// Size of the metadata table at the start of the region.
pub const METADATA_TABLE_SIZE: usize = 64 * 1024;
/// `"metadata"`.
pub const METADATA_SIGNATURE: [u8; 8] = *b"metadata";
/// The most entries the table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// The largest item.
pub const MAX_ITEM_LENGTH: u32 = MIB as u32;

/// The metadata table header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawMetadataTableHeader {
    /// `"metadata"`.
    pub signature: [u8; 8],
    /// Zero.
    pub reserved: U16,
    /// Number of entries, at most 2047.
    pub entry_count: U16,
    /// Zero.
    pub reserved2: [u8; 20],
}
const _: () = assert!(core::mem::size_of::<RawMetadataTableHeader>() == 32);

/// A metadata table entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawMetadataEntry {
    /// What the item is.
    pub item_id: [u8; 16],
    /// Offset of the item from the start of the region (at least 64 KiB), or 0 when empty.
    pub offset: U32,
    /// Length of the item, at most 1 MiB.
    pub length: U32,
    /// [`MetadataFlags`].
    pub flags: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<RawMetadataEntry>() == 32);

bitflags! {
    /// Flags of a metadata table entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MetadataFlags: u32 {
        /// A user item (at most 1024 of them).
        const IS_USER = 1;
        /// Describes the virtual disk: copied when a disk is forked or merged.
        const IS_VIRTUAL_DISK = 2;
        /// Must be understood to open the file.
        const IS_REQUIRED = 4;
    }
}

bitflags! {
    /// Flags of the file parameters item.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FileParameterFlags: u32 {
        /// Blocks stay allocated (fixed disks).
        const LEAVE_BLOCK_ALLOCATED = 1;
        /// The disk is a differencing disk.
        const HAS_PARENT = 2;
    }
}

/// The file parameters item.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawFileParameters {
    /// Payload block size.
    pub block_size: U32,
    /// [`FileParameterFlags`].
    pub flags: U32,
}
const _: () = assert!(core::mem::size_of::<RawFileParameters>() == 8);

/// A validated metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEntry {
    /// What the item is.
    pub item_id: Guid,
    /// Offset from the region start.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
    /// Flags.
    pub flags: MetadataFlags,
}

/// Parses and validates the 64 KiB metadata table of a region of
/// `region_length` bytes at `region_offset`.
pub fn parse_table(bytes: &[u8], region_offset: u64, region_length: u32) -> Result<Vec<MetadataEntry>> {
    const S: &str = "metadata table";
    if bytes.len() < METADATA_TABLE_SIZE || (region_length as usize) < METADATA_TABLE_SIZE {
        return Err(Error::corrupt(S, region_offset, "region is shorter than the metadata table"));
    }
    let (head, rest) =
        RawMetadataTableHeader::read_from_prefix(bytes).map_err(|_| Error::corrupt(S, region_offset, "bad size"))?;
    if head.signature != METADATA_SIGNATURE {
        return Err(Error::corrupt(
            S,
            region_offset,
            format!("signature is {:?}, not \"metadata\"", EscapedBytes(&head.signature)),
        ));
    }
    let count = head.entry_count.get();
    if count > MAX_METADATA_ENTRIES {
        return Err(Error::corrupt(S, region_offset, format!("{count} entries (at most 2047)")));
    }
    let mut entries: Vec<MetadataEntry> = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = i * 32;
        let entry_offset = region_offset + 32 + at as u64;
        let raw = RawMetadataEntry::read_from_bytes(&rest[at..at + 32])
            .map_err(|_| Error::corrupt(S, entry_offset, "bad entry size"))?;
        let e = MetadataEntry {
            item_id: guid::from_disk(&raw.item_id),
            offset: raw.offset.get(),
            length: raw.length.get(),
            flags: MetadataFlags::from_bits_retain(raw.flags.get()),
        };
        const SE: &str = "metadata table entry";
        if e.length > MAX_ITEM_LENGTH {
            return Err(Error::corrupt(
                SE,
                entry_offset,
                format!("item {} is {} bytes (at most 1 MiB)", e.item_id, e.length),
            ));
        }
        if e.length == 0 {
            if e.offset != 0 {
                return Err(Error::corrupt(
                    SE,
                    entry_offset,
                    format!("empty item {} has offset {:#x}", e.item_id, e.offset),
                ));
            }
        } else if (e.offset as usize) < METADATA_TABLE_SIZE || e.offset as u64 + e.length as u64 > region_length as u64
        {
            return Err(Error::corrupt(
                SE,
                entry_offset,
                format!("item {} at {:#x}+{:#x} lies outside the region's item area", e.item_id, e.offset, e.length),
            ));
        }
        let user = e.flags.contains(MetadataFlags::IS_USER);
        if entries.iter().any(|o| o.item_id == e.item_id && o.flags.contains(MetadataFlags::IS_USER) == user) {
            return Err(Error::corrupt(SE, entry_offset, format!("item {} appears twice", e.item_id)));
        }
        // An empty item has offset 0 (checked above), so it overlaps nothing
        // in this test, as either party.
        if let Some(o) = entries.iter().find(|o| e.offset < o.offset + o.length && o.offset < e.offset + e.length) {
            return Err(Error::corrupt(SE, entry_offset, format!("item {} overlaps item {}", e.item_id, o.item_id)));
        }
        if e.flags.contains(MetadataFlags::IS_REQUIRED) && (user || !is_known_item(e.item_id)) {
            return Err(Error::unsupported(SE, entry_offset, format!("unknown required metadata item {}", e.item_id)));
        }
        entries.push(e);
    }
    if entries.iter().filter(|e| e.flags.contains(MetadataFlags::IS_USER)).count() > 1024 {
        return Err(Error::corrupt(S, region_offset, "more than 1024 user items"));
    }
    Ok(entries)
}

/// Whether `id` is one of the system items this implementation understands.
pub fn is_known_item(id: Guid) -> bool {
    [
        guid::FILE_PARAMETERS,
        guid::VIRTUAL_DISK_SIZE,
        guid::VIRTUAL_DISK_ID,
        guid::LOGICAL_SECTOR_SIZE,
        guid::PHYSICAL_SECTOR_SIZE,
        guid::PARENT_LOCATOR,
    ]
    .contains(&id)
}

/// The validated values of the known metadata items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskParameters {
    /// Payload block size, a power of two from 1 MiB to 256 MiB.
    pub block_size: u32,
    /// Blocks stay allocated (fixed disks).
    pub leave_block_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// The virtual disk ID (SCSI page 83).
    pub virtual_disk_id: Guid,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
}

/// Builds validated [`DiskParameters`] from the entries and a way to read an
/// item's bytes (`read(entry)`), checking every value against the spec.
/// Returns the parameters and, for differencing disks, the parent locator.
pub fn parse_items(
    entries: &[MetadataEntry],
    region_offset: u64,
    mut read: impl FnMut(&MetadataEntry) -> Result<Vec<u8>>,
) -> Result<(DiskParameters, Option<ParentLocator>)> {
    const S: &str = "metadata item";
    let find = |id: Guid, name: &'static str, len: u32| -> Result<&MetadataEntry> {
        let e =
            entries.iter().find(|e| e.item_id == id && !e.flags.contains(MetadataFlags::IS_USER)).ok_or_else(|| {
                Error::corrupt("metadata table", region_offset, format!("the required {name} item is missing"))
            })?;
        if len != 0 && e.length != len {
            return Err(Error::corrupt(
                S,
                region_offset + e.offset as u64,
                format!("{name} item is {} bytes, not {len}", e.length),
            ));
        }
        Ok(e)
    };
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);

    let fp = find(guid::FILE_PARAMETERS, "file parameters", 8)?;
    let fp_bytes = read(fp)?;
    let block_size = u32_at(&fp_bytes, 0);
    let flags = FileParameterFlags::from_bits_retain(u32_at(&fp_bytes, 4));
    let at = region_offset + fp.offset as u64;
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::corrupt(
            S,
            at,
            format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
        ));
    }

    let vs = find(guid::VIRTUAL_DISK_SIZE, "virtual disk size", 8)?;
    let b = read(vs)?;
    let virtual_size = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);

    let id = find(guid::VIRTUAL_DISK_ID, "virtual disk ID", 16)?;
    let b = read(id)?;
    let mut id_bytes = [0u8; 16];
    id_bytes.copy_from_slice(&b[..16]);
    let virtual_disk_id = guid::from_disk(&id_bytes);

    let mut sector = |gid, name| -> Result<u32> {
        let e = find(gid, name, 4)?;
        let b = read(e)?;
        let v = u32_at(&b, 0);
        if v != 512 && v != 4096 {
            return Err(Error::corrupt(S, region_offset + e.offset as u64, format!("{name} is {v}, not 512 or 4096")));
        }
        Ok(v)
    };
    let logical_sector_size = sector(guid::LOGICAL_SECTOR_SIZE, "logical sector size")?;
    let physical_sector_size = sector(guid::PHYSICAL_SECTOR_SIZE, "physical sector size")?;

    let vs_at = region_offset + vs.offset as u64;
    if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE {
        return Err(Error::corrupt(
            S,
            vs_at,
            format!("virtual disk size {virtual_size} is not between 1 byte and 64 TiB"),
        ));
    }
    if virtual_size % logical_sector_size as u64 != 0 {
        return Err(Error::corrupt(
            S,
            vs_at,
            format!("virtual disk size {virtual_size} is not a multiple of the {logical_sector_size}-byte sector"),
        ));
    }

    let has_parent = flags.contains(FileParameterFlags::HAS_PARENT);
    let locator = if has_parent {
        let e = find(guid::PARENT_LOCATOR, "parent locator", 0)?;
        let b = read(e)?;
        Some(ParentLocator::parse(&b, region_offset + e.offset as u64)?)
    } else {
        None
    };
    Ok((
        DiskParameters {
            block_size,
            leave_block_allocated: flags.contains(FileParameterFlags::LEAVE_BLOCK_ALLOCATED) && !has_parent,
            has_parent,
            virtual_size,
            virtual_disk_id,
            logical_sector_size,
            physical_sector_size,
        },
        locator,
    ))
}

/// An item a rewrite of the region carries over as it is: a user item, or a
/// system item this implementation does not know (and need not: it is not
/// required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraItem {
    /// What the item is.
    pub item_id: Guid,
    /// Its flags (IsUser, IsVirtualDisk, IsRequired).
    pub flags: MetadataFlags,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// The items of a parsed table that are not rebuilt from [`DiskParameters`]
/// when the region is rewritten: user items and unknown system items, each
/// read with `read(entry)`.
pub fn extra_items(
    entries: &[MetadataEntry],
    mut read: impl FnMut(&MetadataEntry) -> Result<Vec<u8>>,
) -> Result<Vec<ExtraItem>> {
    let mut out = Vec::new();
    for e in entries {
        if e.flags.contains(MetadataFlags::IS_USER) || !is_known_item(e.item_id) {
            out.push(ExtraItem { item_id: e.item_id, flags: e.flags, data: read(e)? });
        }
    }
    Ok(out)
}

/// Builds a complete metadata region (table and items) of `region_length`
/// bytes for `params`, for a differencing disk its parent locator, and the
/// `extras` after them (see [`extra_items`]).
pub(crate) fn build_region(
    params: &DiskParameters,
    locator: Option<&ParentLocator>,
    extras: &[ExtraItem],
    region_length: usize,
) -> Result<Vec<u8>> {
    let mut flags = FileParameterFlags::empty();
    flags.set(FileParameterFlags::LEAVE_BLOCK_ALLOCATED, params.leave_block_allocated);
    flags.set(FileParameterFlags::HAS_PARENT, params.has_parent);
    let file_params = RawFileParameters { block_size: U32::new(params.block_size), flags: U32::new(flags.bits()) };
    let vd = MetadataFlags::IS_VIRTUAL_DISK | MetadataFlags::IS_REQUIRED;
    let mut items: Vec<(Guid, MetadataFlags, Vec<u8>)> = alloc::vec![
        (guid::FILE_PARAMETERS, MetadataFlags::IS_REQUIRED, file_params.as_bytes().to_vec()),
        (guid::VIRTUAL_DISK_SIZE, vd, params.virtual_size.to_le_bytes().to_vec()),
        (guid::LOGICAL_SECTOR_SIZE, vd, params.logical_sector_size.to_le_bytes().to_vec()),
        (guid::PHYSICAL_SECTOR_SIZE, vd, params.physical_sector_size.to_le_bytes().to_vec()),
        (guid::VIRTUAL_DISK_ID, vd, guid::to_disk(&params.virtual_disk_id).to_vec()),
    ];
    if let Some(loc) = locator {
        items.push((guid::PARENT_LOCATOR, MetadataFlags::IS_REQUIRED, loc.to_bytes()?));
    }
    for x in extras {
        if x.data.len() > MAX_ITEM_LENGTH as usize {
            return Err(Error::invalid("a metadata item is longer than 1 MiB"));
        }
        items.push((x.item_id, x.flags, x.data.clone()));
    }
    // 2047 entries of 32 bytes after the 32-byte header fill the 64 KiB table exactly.
    if items.len() > MAX_METADATA_ENTRIES as usize {
        return Err(Error::invalid("too many metadata items for the metadata table"));
    }
    let mut region = alloc::vec![0u8; region_length];
    let head = RawMetadataTableHeader {
        signature: METADATA_SIGNATURE,
        reserved: U16::new(0),
        entry_count: U16::new(items.len() as u16),
        reserved2: [0; 20],
    };
    region[..32].copy_from_slice(head.as_bytes());
    let mut data_at = METADATA_TABLE_SIZE;
    for (i, (id, flags, data)) in items.iter().enumerate() {
        if data_at + data.len() > region_length {
            return Err(Error::invalid("metadata items do not fit the metadata region"));
        }
        let entry = RawMetadataEntry {
            item_id: guid::to_disk(id),
            offset: U32::new(data_at as u32),
            length: U32::new(data.len() as u32),
            flags: U32::new(flags.bits()),
            reserved: U32::new(0),
        };
        region[32 + i * 32..64 + i * 32].copy_from_slice(entry.as_bytes());
        region[data_at..data_at + data.len()].copy_from_slice(data);
        // Windows keeps each item on its own 4 KiB-aligned slot in small regions;
        // 8-byte alignment is all the format asks.
        data_at += data.len().div_ceil(8) * 8;
    }
    Ok(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DiskParameters {
        DiskParameters {
            block_size: 32 * MIB as u32,
            leave_block_allocated: false,
            has_parent: false,
            virtual_size: 1 << 30,
            virtual_disk_id: Guid::from_u128(0x1234),
            logical_sector_size: 512,
            physical_sector_size: 4096,
        }
    }

    fn parse_region(region: &[u8]) -> Result<(DiskParameters, Option<ParentLocator>)> {
        let entries = parse_table(region, 2 * MIB, region.len() as u32)?;
        parse_items(&entries, 2 * MIB, |e| Ok(region[e.offset as usize..(e.offset + e.length) as usize].to_vec()))
    }

    #[test]
    fn round_trip() {
        let p = params();
        let region = build_region(&p, None, &[], MIB as usize).unwrap();
        assert_eq!(parse_region(&region).unwrap(), (p, None));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            DiskParameters { block_size: 3 * MIB as u32, ..params() },
            DiskParameters { block_size: 512 * MIB as u32, ..params() },
            DiskParameters { logical_sector_size: 1024, ..params() },
            DiskParameters { virtual_size: 1000, ..params() },
            DiskParameters { virtual_size: 0, ..params() },
        ] {
            let region = build_region(&bad, None, &[], MIB as usize).unwrap();
            assert!(parse_region(&region).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extra_items_round_trip() {
        let extras = alloc::vec![
            ExtraItem { item_id: Guid::from_u128(5), flags: MetadataFlags::IS_USER, data: alloc::vec![1, 2, 3] },
            ExtraItem { item_id: Guid::from_u128(6), flags: MetadataFlags::empty(), data: alloc::vec![4; 9] },
        ];
        let region = build_region(&params(), None, &extras, MIB as usize).unwrap();
        assert_eq!(parse_region(&region).unwrap(), (params(), None));
        let entries = parse_table(&region, 0, region.len() as u32).unwrap();
        let read = |e: &MetadataEntry| Ok(region[e.offset as usize..(e.offset + e.length) as usize].to_vec());
        assert_eq!(extra_items(&entries, read).unwrap(), extras);
    }

    #[test]
    fn refuses_unknown_required_item() {
        let mut region = build_region(&params(), None, &[], MIB as usize).unwrap();
        // Turn the file parameters entry's GUID into an unknown one, keeping IsRequired.
        region[32] ^= 0xFF;
        assert!(matches!(parse_region(&region), Err(Error::Unsupported { .. })));
    }
}
