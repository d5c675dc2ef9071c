//! The region table: where the BAT and the metadata region live.
//!
//! Two identical 64 KiB copies, at 192 KiB and 256 KiB. A copy is valid when
//! its signature and CRC-32C (over all 64 KiB) are right and its entries obey
//! the rules below; readers use the first valid copy, writers write both.
//! The BAT and metadata regions must each appear exactly once; an unknown
//! region marked required makes the file unopenable, an optional one is kept.

use alloc::format;
use alloc::vec::Vec;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::crc;
use super::guid::{self, Guid, BAT_REGION, METADATA_REGION};
use super::header::EscapedBytes;
use super::{is_mib_multiple, MIB};
use crate::error::{Error, Result};

/// File offsets of the two region table copies.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 * 1024, 256 * 1024];
/// Size of a region table, and of the span its checksum covers.
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// `"regi"`.
pub const REGION_TABLE_SIGNATURE: [u8; 4] = *b"regi";
/// The most entries a region table may hold.
pub const MAX_REGION_ENTRIES: u32 = 2047;

/// The region table header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawRegionTableHeader {
    /// `"regi"`.
    pub signature: [u8; 4],
    /// CRC-32C of the 64 KiB table with this field zero.
    pub checksum: U32,
    /// Number of entries, at most 2047.
    pub entry_count: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<RawRegionTableHeader>() == 16);

/// A region table entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawRegionEntry {
    /// What the region is.
    pub guid: [u8; 16],
    /// File offset, a multiple of 1 MiB, at least 1 MiB.
    pub file_offset: U64,
    /// Length in bytes, a multiple of 1 MiB.
    pub length: U32,
    /// Bit 0: the region must be understood to open the file.
    pub required: U32,
}
const _: () = assert!(core::mem::size_of::<RawRegionEntry>() == 32);

/// A validated region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What the region is.
    pub guid: Guid,
    /// File offset.
    pub file_offset: u64,
    /// Length in bytes.
    pub length: u32,
    /// Whether a reader must understand it.
    pub required: bool,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.file_offset + self.length as u64
    }
}

/// A validated region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    /// Every entry, in table order (unknown optional regions included, so they
    /// are preserved when the table is rewritten).
    pub entries: Vec<Region>,
}

impl RegionTable {
    /// Parses and validates a 64 KiB region table read from `file_offset`.
    pub fn parse(bytes: &[u8], file_offset: u64) -> Result<RegionTable> {
        const S: &str = "region table";
        if bytes.len() < REGION_TABLE_SIZE {
            return Err(Error::corrupt(S, file_offset, "file ends inside the region table"));
        }
        let bytes = &bytes[..REGION_TABLE_SIZE];
        let (head, rest) =
            RawRegionTableHeader::read_from_prefix(bytes).map_err(|_| Error::corrupt(S, file_offset, "bad size"))?;
        if head.signature != REGION_TABLE_SIGNATURE {
            return Err(Error::corrupt(
                S,
                file_offset,
                format!("signature is {:?}, not \"regi\"", EscapedBytes(&head.signature)),
            ));
        }
        if !crc::verify(bytes) {
            return Err(Error::corrupt(S, file_offset, "checksum mismatch"));
        }
        let count = head.entry_count.get();
        if count > MAX_REGION_ENTRIES {
            return Err(Error::corrupt(S, file_offset, format!("{count} entries (at most 2047)")));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = i * 32;
            let raw = RawRegionEntry::read_from_bytes(&rest[at..at + 32])
                .map_err(|_| Error::corrupt(S, file_offset, "bad entry size"))?;
            let entry_offset = file_offset + 16 + at as u64;
            let region = Region {
                guid: guid::from_disk(&raw.guid),
                file_offset: raw.file_offset.get(),
                length: raw.length.get(),
                required: raw.required.get() & 1 != 0,
            };
            if region.file_offset < MIB
                || !is_mib_multiple(region.file_offset)
                || !is_mib_multiple(region.length as u64)
            {
                return Err(Error::corrupt(
                    "region table entry",
                    entry_offset,
                    format!(
                        "region {} at {:#x} of {:#x} bytes is not 1 MiB aligned past the header section",
                        region.guid, region.file_offset, region.length
                    ),
                ));
            }
            if region.file_offset.checked_add(region.length as u64).is_none() {
                return Err(Error::corrupt("region table entry", entry_offset, "region ends past the largest offset"));
            }
            if region.guid != BAT_REGION && region.guid != METADATA_REGION && region.required {
                return Err(Error::unsupported(
                    "region table entry",
                    entry_offset,
                    format!("unknown required region {}", region.guid),
                ));
            }
            if entries.iter().any(|r: &Region| r.guid == region.guid) {
                return Err(Error::corrupt(
                    "region table entry",
                    entry_offset,
                    format!("region {} appears twice", region.guid),
                ));
            }
            if let Some(other) = entries.iter().find(|r: &&Region| overlaps(r, &region)) {
                return Err(Error::corrupt(
                    "region table entry",
                    entry_offset,
                    format!("region {} overlaps region {}", region.guid, other.guid),
                ));
            }
            entries.push(region);
        }
        let table = RegionTable { entries };
        for (needed, name) in [(BAT_REGION, "BAT"), (METADATA_REGION, "metadata")] {
            match table.find(needed) {
                None => return Err(Error::corrupt(S, file_offset, format!("no {name} region"))),
                Some(r) if r.length == 0 => {
                    return Err(Error::corrupt(S, file_offset, format!("the {name} region is empty")))
                }
                Some(_) => {}
            }
        }
        Ok(table)
    }

    /// The region with this GUID.
    pub fn find(&self, guid: Guid) -> Option<&Region> {
        self.entries.iter().find(|r| r.guid == guid)
    }

    /// The BAT region (always present in a validated table).
    pub fn bat(&self) -> Region {
        *self.find(BAT_REGION).expect("validated table has a BAT region")
    }

    /// The metadata region (always present in a validated table).
    pub fn metadata(&self) -> Region {
        *self.find(METADATA_REGION).expect("validated table has a metadata region")
    }

    /// The 64 KiB on-disk form, checksum included.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = alloc::vec![0u8; REGION_TABLE_SIZE];
        let head = RawRegionTableHeader {
            signature: REGION_TABLE_SIGNATURE,
            checksum: U32::new(0),
            entry_count: U32::new(self.entries.len() as u32),
            reserved: U32::new(0),
        };
        bytes[..16].copy_from_slice(head.as_bytes());
        for (i, r) in self.entries.iter().enumerate() {
            let raw = RawRegionEntry {
                guid: guid::to_disk(&r.guid),
                file_offset: U64::new(r.file_offset),
                length: U32::new(r.length),
                required: U32::new(r.required as u32),
            };
            bytes[16 + i * 32..16 + (i + 1) * 32].copy_from_slice(raw.as_bytes());
        }
        crc::seal(&mut bytes);
        bytes
    }
}

fn overlaps(a: &Region, b: &Region) -> bool {
    a.file_offset < b.end() && b.file_offset < a.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RegionTable {
        RegionTable {
            entries: alloc::vec![
                Region { guid: BAT_REGION, file_offset: 3 * MIB, length: MIB as u32, required: true },
                Region { guid: METADATA_REGION, file_offset: 2 * MIB, length: MIB as u32, required: true },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let t = table();
        let bytes = t.to_bytes();
        assert_eq!(RegionTable::parse(&bytes, 0).unwrap(), t);
    }

    #[test]
    fn refuses_unknown_required_but_keeps_optional() {
        let mut t = table();
        t.entries.push(Region { guid: Guid::from_u128(9), file_offset: 8 * MIB, length: MIB as u32, required: false });
        assert_eq!(RegionTable::parse(&t.to_bytes(), 0).unwrap().entries.len(), 3);
        t.entries[2].required = true;
        assert!(matches!(RegionTable::parse(&t.to_bytes(), 0), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn refuses_overlap_and_missing() {
        let mut t = table();
        t.entries[0].file_offset = 2 * MIB;
        assert!(RegionTable::parse(&t.to_bytes(), 0).is_err());
        let mut t = table();
        t.entries.pop();
        assert!(RegionTable::parse(&t.to_bytes(), 0).is_err());
    }
}
