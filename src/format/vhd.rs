//! VHD (version 1), the format VHDX replaced: the footer, the dynamic disk
//! header, its parent locators and the block allocation table.
//!
//! Every VHD ends with a 512-byte footer (`conectix`, big-endian fields, a
//! one's-complement checksum). A fixed disk is the raw disk followed by the
//! footer. A dynamic or differencing disk starts with a copy of the footer,
//! then a 1 KiB dynamic header (`cxsparse`) naming the block allocation
//! table (BAT: one big-endian `u32` sector number per block, `0xFFFFFFFF`
//! for a block not stored); each stored block is a sector bitmap (one bit a
//! sector, most significant bit first, rounded up to whole sectors) followed
//! by the block's data. In a differencing disk a set bit means the sector is
//! this file's, a clear one the parent's; the dynamic header names the
//! parent by its footer's unique ID and time stamp, and by up to eight
//! locators (paths).
//!
//! Parsing checks what a reader relies on: cookies, checksums, the disk
//! type, offsets inside the file, a block size that is a power of two
//! sectors, a BAT that fits, and sizes small enough that nothing allocated
//! from them is unbounded.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::guid::Guid;
use crate::error::{Error, Result};

/// The footer's cookie.
pub(crate) const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// The dynamic header's cookie.
pub(crate) const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
/// The footer's size (and a sector's).
pub(crate) const FOOTER_SIZE: usize = 512;
/// The dynamic header's size.
pub(crate) const DYNAMIC_HEADER_SIZE: usize = 1024;
/// The sector size of every VHD.
pub(crate) const SECTOR: u64 = 512;
/// The data offset of a fixed disk (no dynamic header).
pub(crate) const NO_DATA_OFFSET: u64 = u64::MAX;
/// A BAT entry for a block not stored in the file.
pub(crate) const UNUSED_ENTRY: u32 = u32::MAX;
/// The only format version defined (footer and dynamic header).
pub(crate) const VERSION: u32 = 0x0001_0000;
/// The features field's "reserved" bit, which must be set.
pub(crate) const FEATURE_RESERVED: u32 = 2;
/// The largest virtual size the format's CHS field and 32-bit sector
/// numbers allow Windows to create: 2040 GiB.
pub const MAX_SIZE: u64 = 2040 << 30;
/// The default block size (Hyper-V, Virtual PC): 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// The smallest block size accepted at open (one sector of bitmap covers it).
pub(crate) const MIN_BLOCK_SIZE: u32 = 512;
/// The largest block size accepted at open.
pub(crate) const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
#[cfg(feature = "std")]
pub(crate) const EPOCH_UNIX_SECONDS: u64 = 946_684_800;

/// The disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VhdType {
    /// Type 2: the raw disk, then the footer.
    Fixed,
    /// Type 3: blocks allocated on first write.
    Dynamic,
    /// Type 4: a dynamic disk whose absent sectors come from a parent.
    Differencing,
}

impl VhdType {
    fn from_raw(v: u32) -> Option<VhdType> {
        match v {
            2 => Some(VhdType::Fixed),
            3 => Some(VhdType::Dynamic),
            4 => Some(VhdType::Differencing),
            _ => None,
        }
    }

    fn to_raw(self) -> u32 {
        match self {
            VhdType::Fixed => 2,
            VhdType::Dynamic => 3,
            VhdType::Differencing => 4,
        }
    }
}

/// The footer as stored.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawFooter {
    cookie: [u8; 8],
    features: U32,
    version: U32,
    data_offset: U64,
    timestamp: U32,
    creator_app: [u8; 4],
    creator_version: U32,
    creator_host: [u8; 4],
    original_size: U64,
    current_size: U64,
    cylinders: U16,
    heads: u8,
    sectors_per_track: u8,
    disk_type: U32,
    checksum: U32,
    unique_id: [u8; 16],
    saved_state: u8,
    reserved: [u8; 427],
}
const _: () = assert!(core::mem::size_of::<RawFooter>() == FOOTER_SIZE);

/// The dynamic disk header as stored.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawDynamicHeader {
    cookie: [u8; 8],
    data_offset: U64,
    table_offset: U64,
    version: U32,
    max_table_entries: U32,
    block_size: U32,
    checksum: U32,
    parent_unique_id: [u8; 16],
    parent_timestamp: U32,
    reserved1: U32,
    parent_name: [u8; 512],
    locators: [RawLocatorEntry; 8],
    reserved2: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<RawDynamicHeader>() == DYNAMIC_HEADER_SIZE);

/// One parent locator entry as stored.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct RawLocatorEntry {
    platform_code: [u8; 4],
    data_space: U32,
    data_length: U32,
    reserved: U32,
    data_offset: U64,
}
const _: () = assert!(core::mem::size_of::<RawLocatorEntry>() == 24);

/// The format's checksum: the one's complement of the byte sum of the
/// structure with its checksum field taken as zero.
pub fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|&(i, _)| !(checksum_at..checksum_at + 4).contains(&i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(b as u32));
    !sum
}

/// Cylinders, heads and sectors per track, as the footer stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Chs {
    /// The bytes the geometry addresses.
    pub fn bytes(&self) -> u64 {
        self.cylinders as u64 * self.heads as u64 * self.sectors_per_track as u64 * SECTOR
    }

    /// The geometry the VHD specification's algorithm gives a disk of
    /// `size` bytes (what Windows and Virtual PC write): the largest that
    /// does not exceed it, capped at 65535/16/255.
    pub fn for_size(size: u64) -> Chs {
        let mut total = size / SECTOR;
        let max = 65535 * 16 * 255;
        if total > max {
            total = max;
        }
        let (spt, heads, cth);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = total / spt;
        } else {
            let mut s = 17;
            let mut c = total / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        Chs { cylinders: (cth / heads) as u16, heads: heads as u8, sectors_per_track: spt as u8 }
    }
}

/// A checked footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Fixed, dynamic or differencing.
    pub disk_type: VhdType,
    /// The features field (bit 0: temporary; bit 1: reserved, always set).
    pub features: u32,
    /// Where the dynamic header is (all ones for a fixed disk).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC when the file was created.
    pub timestamp: u32,
    /// The creator application, four bytes (`"win "`, `"vpc "`, `"qemu"`, `"d2v\0"`…).
    pub creator_app: [u8; 4],
    /// The creator application's version.
    pub creator_version: u32,
    /// The creator's host (`"Wi2k"`, `"Mac "`).
    pub creator_host: [u8; 4],
    /// The size at creation.
    pub original_size: u64,
    /// The virtual size: what every reader but QEMU (for some creators) presents.
    pub current_size: u64,
    /// The geometry field.
    pub chs: Chs,
    /// The unique ID, which a child's dynamic header names as its parent's.
    pub unique_id: Guid,
    /// Whether the disk is in a saved state.
    pub saved_state: bool,
}

impl Footer {
    /// Parses and checks a footer found at file offset `at`.
    pub fn parse(bytes: &[u8], at: u64) -> Result<Footer> {
        Self::parse_with(bytes, at, true)
    }

    /// [`Footer::parse`], checking the checksum only when `verify_checksum`
    /// (every other check stays): for reading a file whose footer a tool
    /// edited without updating it, as libvhdi does.
    pub fn parse_with(bytes: &[u8], at: u64, verify_checksum: bool) -> Result<Footer> {
        let raw = RawFooter::read_from_prefix(bytes)
            .map_err(|_| Error::corrupt("VHD footer", at, "shorter than 512 bytes"))?
            .0;
        if raw.cookie != FOOTER_COOKIE {
            return Err(Error::corrupt("VHD footer", at, "cookie is not \"conectix\": not a VHD footer"));
        }
        let stored = raw.checksum.get();
        let computed = checksum(&bytes[..FOOTER_SIZE], 64);
        if verify_checksum && stored != computed {
            return Err(Error::corrupt(
                "VHD footer",
                at,
                format!("checksum is {stored:#010x}, the footer's bytes give {computed:#010x}"),
            ));
        }
        if raw.version.get() >> 16 != 1 {
            return Err(Error::unsupported(
                "VHD footer",
                at,
                format!("format version {:#010x} (only major version 1 is defined)", raw.version.get()),
            ));
        }
        let disk_type = VhdType::from_raw(raw.disk_type.get()).ok_or_else(|| {
            Error::unsupported(
                "VHD footer",
                at,
                format!("disk type {} (2 fixed, 3 dynamic and 4 differencing are defined)", raw.disk_type.get()),
            )
        })?;
        let current_size = raw.current_size.get();
        if current_size % SECTOR != 0 {
            return Err(Error::corrupt(
                "VHD footer",
                at,
                format!("current size {current_size} is not a whole number of 512-byte sectors"),
            ));
        }
        // 32-bit sector numbers in the BAT bound every dynamic disk; fixed
        // ones are bounded by their file, checked by the opener.
        if current_size > u32::MAX as u64 * SECTOR * 2 {
            return Err(Error::unsupported(
                "VHD footer",
                at,
                format!("current size {current_size} is larger than any VHD can address"),
            ));
        }
        let data_offset = raw.data_offset.get();
        match disk_type {
            VhdType::Fixed => {}
            _ if data_offset == NO_DATA_OFFSET || data_offset % SECTOR != 0 => {
                return Err(Error::corrupt(
                    "VHD footer",
                    at,
                    format!("a {disk_type:?} disk's data offset {data_offset:#x} does not name a sector"),
                ));
            }
            _ => {}
        }
        Ok(Footer {
            disk_type,
            features: raw.features.get(),
            data_offset,
            timestamp: raw.timestamp.get(),
            creator_app: raw.creator_app,
            creator_version: raw.creator_version.get(),
            creator_host: raw.creator_host,
            original_size: raw.original_size.get(),
            current_size,
            chs: Chs { cylinders: raw.cylinders.get(), heads: raw.heads, sectors_per_track: raw.sectors_per_track },
            unique_id: Guid::from_bytes(raw.unique_id),
            saved_state: raw.saved_state != 0,
        })
    }

    /// The footer's 512 bytes, checksum included.
    pub(crate) fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let raw = RawFooter {
            cookie: FOOTER_COOKIE,
            features: U32::new(self.features),
            version: U32::new(VERSION),
            data_offset: U64::new(self.data_offset),
            timestamp: U32::new(self.timestamp),
            creator_app: self.creator_app,
            creator_version: U32::new(self.creator_version),
            creator_host: self.creator_host,
            original_size: U64::new(self.original_size),
            current_size: U64::new(self.current_size),
            cylinders: U16::new(self.chs.cylinders),
            heads: self.chs.heads,
            sectors_per_track: self.chs.sectors_per_track,
            disk_type: U32::new(self.disk_type.to_raw()),
            checksum: U32::new(0),
            unique_id: self.unique_id.into_bytes(),
            saved_state: self.saved_state as u8,
            reserved: [0; 427],
        };
        let mut out = [0u8; FOOTER_SIZE];
        out.copy_from_slice(raw.as_bytes());
        let sum = checksum(&out, 64);
        out[64..68].copy_from_slice(&sum.to_be_bytes());
        out
    }

    /// The creator application as text (trailing spaces and NULs dropped).
    pub fn creator(&self) -> String {
        String::from_utf8_lossy(&self.creator_app).trim_end_matches([' ', '\0']).into()
    }
}

/// A parent locator platform code.
pub mod platform {
    /// None.
    pub const NONE: [u8; 4] = [0; 4];
    /// Windows, deprecated: an absolute path in the system code page.
    pub const WI2K: [u8; 4] = *b"Wi2k";
    /// Windows, deprecated: a relative path in the system code page.
    pub const WI2R: [u8; 4] = *b"Wi2r";
    /// Windows: an absolute path, UTF-16LE.
    pub const W2KU: [u8; 4] = *b"W2ku";
    /// Windows: a relative path, UTF-16LE.
    pub const W2RU: [u8; 4] = *b"W2ru";
    /// Mac OS alias.
    pub const MAC: [u8; 4] = *b"Mac ";
    /// Mac OS X: a file URL, UTF-8.
    pub const MACX: [u8; 4] = *b"MacX";
}

/// One parent locator entry: where its path is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocatorEntry {
    /// The platform code ([`platform`]).
    pub platform_code: [u8; 4],
    /// The space reserved for the data. The specification says sectors;
    /// Windows and QEMU write bytes. Only `data_length` is used to read.
    pub data_space: u32,
    /// The path's length in bytes.
    pub data_length: u32,
    /// The path's file offset.
    pub data_offset: u64,
}

/// The longest parent locator path read (bytes): 64 KiB, far past any path
/// Windows writes.
pub(crate) const MAX_LOCATOR_LENGTH: u32 = 64 * 1024;

/// A checked dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// The BAT's file offset.
    pub table_offset: u64,
    /// Entries in the BAT.
    pub max_table_entries: u32,
    /// The block size in bytes (a power of two, 512 B to 256 MiB).
    pub block_size: u32,
    /// A differencing disk's parent's unique ID.
    pub parent_unique_id: Guid,
    /// A differencing disk's parent's time stamp (its footer's, as made).
    pub parent_timestamp: u32,
    /// The parent's file name, as stored (UTF-16BE, up to 256 units).
    pub parent_name: String,
    /// The parent locator entries in use (platform code not zero).
    pub locators: Vec<LocatorEntry>,
}

impl DynamicHeader {
    /// Parses and checks a dynamic header found at file offset `at` of a
    /// file `file_len` bytes long, for a disk of `current_size` bytes.
    pub fn parse(bytes: &[u8], at: u64, file_len: u64, current_size: u64) -> Result<DynamicHeader> {
        Self::parse_with(bytes, at, file_len, current_size, true)
    }

    /// [`DynamicHeader::parse`], checking the checksum only when
    /// `verify_checksum` (see [`Footer::parse_with`]).
    pub fn parse_with(
        bytes: &[u8],
        at: u64,
        file_len: u64,
        current_size: u64,
        verify_checksum: bool,
    ) -> Result<DynamicHeader> {
        let what = "VHD dynamic header";
        let raw = RawDynamicHeader::read_from_prefix(bytes)
            .map_err(|_| Error::corrupt(what, at, "shorter than 1024 bytes"))?
            .0;
        if raw.cookie != HEADER_COOKIE {
            return Err(Error::corrupt(what, at, "cookie is not \"cxsparse\""));
        }
        let stored = raw.checksum.get();
        let computed = checksum(&bytes[..DYNAMIC_HEADER_SIZE], 36);
        if verify_checksum && stored != computed {
            return Err(Error::corrupt(
                what,
                at,
                format!("checksum is {stored:#010x}, the header's bytes give {computed:#010x}"),
            ));
        }
        if raw.version.get() >> 16 != 1 {
            return Err(Error::unsupported(what, at, format!("header version {:#010x}", raw.version.get())));
        }
        let block_size = raw.block_size.get();
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(Error::unsupported(
                what,
                at,
                format!("block size {block_size} (a power of two from 512 bytes to 256 MiB is read)"),
            ));
        }
        let entries = raw.max_table_entries.get();
        let needed = current_size.div_ceil(block_size as u64);
        if (entries as u64) < needed {
            return Err(Error::corrupt(
                what,
                at,
                format!("the BAT has {entries} entries, fewer than the {needed} blocks of a {current_size}-byte disk"),
            ));
        }
        let table_offset = raw.table_offset.get();
        let table_len = entries as u64 * 4;
        if table_offset % SECTOR != 0 || table_offset.checked_add(table_len).is_none_or(|end| end > file_len) {
            return Err(Error::corrupt(
                what,
                at,
                format!("the BAT ({table_len} bytes at {table_offset:#x}) does not lie in the {file_len}-byte file"),
            ));
        }
        let units: Vec<u16> =
            raw.parent_name.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        let parent_name = String::from_utf16_lossy(&units);
        let mut locators = Vec::new();
        for (i, e) in raw.locators.iter().enumerate() {
            if e.platform_code == platform::NONE {
                continue;
            }
            let entry_at = at + 576 + i as u64 * 24;
            let len = e.data_length.get();
            let off = e.data_offset.get();
            if len > MAX_LOCATOR_LENGTH || off.checked_add(len as u64).is_none_or(|end| end > file_len) {
                return Err(Error::corrupt(
                    "VHD parent locator entry",
                    entry_at,
                    format!("its data ({len} bytes at {off:#x}) does not lie in the {file_len}-byte file"),
                ));
            }
            locators.push(LocatorEntry {
                platform_code: e.platform_code,
                data_space: e.data_space.get(),
                data_length: len,
                data_offset: off,
            });
        }
        Ok(DynamicHeader {
            table_offset,
            max_table_entries: entries,
            block_size,
            parent_unique_id: Guid::from_bytes(raw.parent_unique_id),
            parent_timestamp: raw.parent_timestamp.get(),
            parent_name,
            locators,
        })
    }

    /// The header's 1024 bytes, checksum included.
    pub(crate) fn to_bytes(&self) -> Result<[u8; DYNAMIC_HEADER_SIZE]> {
        if self.locators.len() > 8 {
            return Err(Error::invalid("a VHD dynamic header holds at most 8 parent locators"));
        }
        let mut name = [0u8; 512];
        for (i, u) in self.parent_name.encode_utf16().take(256).enumerate() {
            name[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
        }
        let empty = RawLocatorEntry {
            platform_code: [0; 4],
            data_space: U32::new(0),
            data_length: U32::new(0),
            reserved: U32::new(0),
            data_offset: U64::new(0),
        };
        let mut locators = [empty; 8];
        for (slot, e) in locators.iter_mut().zip(&self.locators) {
            *slot = RawLocatorEntry {
                platform_code: e.platform_code,
                data_space: U32::new(e.data_space),
                data_length: U32::new(e.data_length),
                reserved: U32::new(0),
                data_offset: U64::new(e.data_offset),
            };
        }
        let raw = RawDynamicHeader {
            cookie: HEADER_COOKIE,
            data_offset: U64::new(NO_DATA_OFFSET),
            table_offset: U64::new(self.table_offset),
            version: U32::new(VERSION),
            max_table_entries: U32::new(self.max_table_entries),
            block_size: U32::new(self.block_size),
            checksum: U32::new(0),
            parent_unique_id: self.parent_unique_id.into_bytes(),
            parent_timestamp: U32::new(self.parent_timestamp),
            reserved1: U32::new(0),
            parent_name: name,
            locators,
            reserved2: [0; 256],
        };
        let mut out = [0u8; DYNAMIC_HEADER_SIZE];
        out.copy_from_slice(raw.as_bytes());
        let sum = checksum(&out, 36);
        out[36..40].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Bytes of a stored block's sector bitmap (whole sectors).
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }
}

/// Bytes of the sector bitmap before each stored block of `block_size`
/// bytes: one bit a sector, rounded up to whole sectors.
pub fn bitmap_size(block_size: u32) -> u64 {
    (block_size as u64 / SECTOR).div_ceil(8).next_multiple_of(SECTOR)
}

/// Decodes a locator's path: UTF-16LE for `W2ku`/`W2ru`, bytes (taken as
/// UTF-8, else Latin-1, the Windows code page's common ground) for the
/// deprecated `Wi2k`/`Wi2r`, UTF-8 for `MacX`. `None` for `Mac ` (an
/// alias) and unknown codes. Trailing NULs are dropped.
pub fn decode_locator_path(code: [u8; 4], data: &[u8]) -> Option<String> {
    let s = match code {
        platform::W2KU | platform::W2RU => {
            let units: Vec<u16> = data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            String::from_utf16_lossy(&units)
        }
        platform::WI2K | platform::WI2R => match core::str::from_utf8(data) {
            Ok(s) => String::from(s),
            Err(_) => data.iter().map(|&b| b as char).collect(),
        },
        platform::MACX => String::from_utf8_lossy(data).into_owned(),
        _ => return None,
    };
    Some(String::from(s.trim_end_matches('\0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn chs_follows_the_specification_for_the_sizes_windows_made() {
        // The fixtures' sizes and the CHS their footers carry.
        for (size, c, h, s) in [
            (4194304u64, 120u16, 4u8, 17u8),
            (10485760, 301, 4, 17),
            (536870912, 1040, 16, 63),
            (3145728, 90, 4, 17),
            (136365211648, 65278, 16, 255),
            (4212736, 121, 4, 17),
            (104448, 3, 4, 17),
        ] {
            assert_eq!(Chs::for_size(size), Chs { cylinders: c, heads: h, sectors_per_track: s }, "{size}");
        }
        // Past the largest geometry, the maximum.
        assert_eq!(Chs::for_size(4 << 40), Chs { cylinders: 65535, heads: 16, sectors_per_track: 255 });
    }

    fn footer() -> Footer {
        Footer {
            disk_type: VhdType::Dynamic,
            features: FEATURE_RESERVED,
            data_offset: 512,
            timestamp: 0x2a00_0000,
            creator_app: *b"vhdx",
            creator_version: 0x0001_0000,
            creator_host: *b"Wi2k",
            original_size: 8 << 20,
            current_size: 8 << 20,
            chs: Chs::for_size(8 << 20),
            unique_id: Guid::from_bytes([7; 16]),
            saved_state: false,
        }
    }

    #[test]
    fn a_footer_round_trips_and_its_checksum_guards_every_byte() {
        let f = footer();
        let bytes = f.to_bytes();
        assert_eq!(Footer::parse(&bytes, 0).unwrap(), f);
        for i in [0, 9, 30, 47, 63, 66, 70, 100, 511] {
            let mut b = bytes;
            b[i] ^= 0x10;
            assert!(Footer::parse(&b, 0).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_footer_with_an_undefined_type_or_odd_size_is_refused() {
        let mut f = footer();
        f.current_size = 1000;
        let e = Footer::parse(&f.to_bytes(), 4096).unwrap_err().to_string();
        assert!(e.contains("VHD footer") && e.contains("0x1000") && e.contains("sectors"), "{e}");
        let mut b = footer().to_bytes();
        b[60..64].copy_from_slice(&5u32.to_be_bytes());
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        assert!(Footer::parse(&b, 0).unwrap_err().to_string().contains("disk type 5"));
    }

    fn header() -> DynamicHeader {
        DynamicHeader {
            table_offset: 1536,
            max_table_entries: 4,
            block_size: 2 << 20,
            parent_unique_id: Guid::from_bytes([3; 16]),
            parent_timestamp: 77,
            parent_name: String::from("base.vhd"),
            locators: alloc::vec![LocatorEntry {
                platform_code: platform::W2RU,
                data_space: 512,
                data_length: 20,
                data_offset: 2048,
            }],
        }
    }

    #[test]
    fn a_dynamic_header_round_trips_and_is_checked_against_its_file() {
        let h = header();
        let bytes = h.to_bytes().unwrap();
        assert_eq!(DynamicHeader::parse(&bytes, 512, 4096, 8 << 20).unwrap(), h);
        // A BAT past the file's end, a locator past it, too few entries.
        assert!(DynamicHeader::parse(&bytes, 512, 1540, 8 << 20).unwrap_err().to_string().contains("BAT"));
        assert!(DynamicHeader::parse(&bytes, 512, 2060, 8 << 20).unwrap_err().to_string().contains("locator"));
        assert!(DynamicHeader::parse(&bytes, 512, 4096, 9 << 20).unwrap_err().to_string().contains("fewer"));
        let mut odd = h.clone();
        odd.block_size = 3 << 20;
        let e = DynamicHeader::parse(&odd.to_bytes().unwrap(), 512, 4096, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("block size"), "{e}");
    }

    #[test]
    fn locator_paths_decode_per_platform() {
        let utf16: Vec<u8> = ".\\base.vhd".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        assert_eq!(decode_locator_path(platform::W2RU, &utf16).as_deref(), Some(".\\base.vhd"));
        assert_eq!(decode_locator_path(platform::WI2K, b"C:\\a\\b.vhd\0\0").as_deref(), Some("C:\\a\\b.vhd"));
        assert_eq!(decode_locator_path(platform::MACX, b"file:///a/b.vhd").as_deref(), Some("file:///a/b.vhd"));
        assert_eq!(decode_locator_path(platform::MAC, b"alias"), None);
    }

    #[test]
    fn bitmaps_round_up_to_whole_sectors() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512 << 10), 512);
        assert_eq!(bitmap_size(4 << 20), 1024);
        assert_eq!(bitmap_size(512), 512);
    }
}
