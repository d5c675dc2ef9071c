//! Structures laid out by hand from the MS-VHDX field tables, with plain
//! `to_le_bytes` at the spec's offsets: the oracle the parsers and writers
//! of `crate::format` are compared with. Only CRC-32C comes from the crate,
//! and it is pinned by known-answer values in `spec_tests::crc`.

use alloc::vec::Vec;

use crate::format::crc::crc32c;

/// The 16 on-disk bytes of the GUID whose text form is `text` (as a u128,
/// `0x2DC27766_F623_4200_9D64_115E9BFD4A08`): Data1 as a little-endian u32,
/// Data2 and Data3 as little-endian u16s, then Data4's eight bytes as written.
pub fn guid(text: u128) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&((text >> 96) as u32).to_le_bytes());
    b[4..6].copy_from_slice(&((text >> 80) as u16).to_le_bytes());
    b[6..8].copy_from_slice(&((text >> 64) as u16).to_le_bytes());
    b[8..16].copy_from_slice(&(text as u64).to_be_bytes());
    b
}

/// Writes `v` at `at`.
pub fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    buf[at..at + v.len()].copy_from_slice(v);
}

/// Stores CRC-32C of `buf` (bytes 4..8 taken as zero) at 4..8.
pub fn checksum(buf: &mut [u8]) {
    buf[4..8].fill(0);
    let c = crc32c(buf);
    buf[4..8].copy_from_slice(&c.to_le_bytes());
}

/// A header's fields (MS-VHDX 2.2.2).
#[derive(Clone, Copy)]
pub struct Head {
    pub seq: u64,
    pub file_write: u128,
    pub data_write: u128,
    pub log_guid: u128,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// A sample header: version 1, log of 1 MiB at 1 MiB.
pub fn head() -> Head {
    Head {
        seq: 0x0102_0304_0506_0708,
        file_write: 0x11111111_2222_3333_4444_555555555555,
        data_write: 0x66666666_7777_8888_9999_AAAAAAAAAAAA,
        log_guid: 0,
        log_version: 0,
        version: 1,
        log_length: 1 << 20,
        log_offset: 1 << 20,
    }
}

/// The 4 KiB of a header.
pub fn header(h: &Head) -> Vec<u8> {
    let mut b = alloc::vec![0u8; 4096];
    put(&mut b, 0, b"head");
    put(&mut b, 8, &h.seq.to_le_bytes());
    put(&mut b, 16, &guid(h.file_write));
    put(&mut b, 32, &guid(h.data_write));
    put(&mut b, 48, &guid(h.log_guid));
    put(&mut b, 64, &h.log_version.to_le_bytes());
    put(&mut b, 66, &h.version.to_le_bytes());
    put(&mut b, 68, &h.log_length.to_le_bytes());
    put(&mut b, 72, &h.log_offset.to_le_bytes());
    checksum(&mut b);
    b
}

/// A region table entry: GUID (text form), file offset, length, required word.
pub type RegionEntry = (u128, u64, u32, u32);

/// The BAT region's GUID, text form.
pub const BAT: u128 = 0x2DC27766_F623_4200_9D64_115E9BFD4A08;
/// The metadata region's GUID, text form.
pub const METADATA: u128 = 0x8B7CA206_4790_4B9A_B8FE_575F050F886E;

/// The 64 KiB of a region table holding `entries` (MS-VHDX 2.2.3).
pub fn region_table(entries: &[RegionEntry]) -> Vec<u8> {
    region_table_counted(entries, entries.len() as u32)
}

/// A region table whose EntryCount field says `count`.
pub fn region_table_counted(entries: &[RegionEntry], count: u32) -> Vec<u8> {
    let mut b = alloc::vec![0u8; 64 * 1024];
    put(&mut b, 0, b"regi");
    put(&mut b, 8, &count.to_le_bytes());
    for (i, (g, off, len, req)) in entries.iter().enumerate() {
        let at = 16 + 32 * i;
        put(&mut b, at, &guid(*g));
        put(&mut b, at + 16, &off.to_le_bytes());
        put(&mut b, at + 24, &len.to_le_bytes());
        put(&mut b, at + 28, &req.to_le_bytes());
    }
    checksum(&mut b);
    b
}

/// One descriptor of a hand-built log entry (MS-VHDX 2.3.1.2, 2.3.1.3).
#[derive(Clone)]
pub enum Desc {
    /// A data descriptor and its data sector: the 4 KiB update at an offset.
    Data(u64, Vec<u8>),
    /// A zero descriptor: length, offset.
    Zero(u64, u64),
    /// A descriptor with another signature.
    Raw([u8; 4]),
}

/// A log entry header's fields (MS-VHDX 2.3.1.1).
#[derive(Clone, Copy)]
pub struct Entry {
    pub seq: u64,
    pub tail: u32,
    pub log_guid: u128,
    pub flushed: u64,
    pub last: u64,
}

/// The bytes of a log entry: header and descriptors (the first sector holds
/// the 64-byte header and 126 descriptors, the next ones 128 each), then a
/// data sector per data descriptor, CRC-32C over the whole entry.
pub fn log_entry(e: &Entry, descs: &[Desc]) -> Vec<u8> {
    let desc_sectors = (64 + 32 * descs.len()).div_ceil(4096);
    let data = descs.iter().filter(|d| matches!(d, Desc::Data(..))).count();
    let len = (desc_sectors + data) * 4096;
    let mut b = alloc::vec![0u8; len];
    put(&mut b, 0, b"loge");
    put(&mut b, 8, &(len as u32).to_le_bytes());
    put(&mut b, 12, &e.tail.to_le_bytes());
    put(&mut b, 16, &e.seq.to_le_bytes());
    put(&mut b, 24, &(descs.len() as u32).to_le_bytes());
    put(&mut b, 32, &guid(e.log_guid));
    put(&mut b, 48, &e.flushed.to_le_bytes());
    put(&mut b, 56, &e.last.to_le_bytes());
    let mut sector = desc_sectors;
    for (i, d) in descs.iter().enumerate() {
        let at = 64 + 32 * i;
        match d {
            Desc::Data(off, page) => {
                assert_eq!(page.len(), 4096);
                put(&mut b, at, b"desc");
                put(&mut b, at + 4, &page[4092..]);
                put(&mut b, at + 8, &page[..8]);
                put(&mut b, at + 16, &off.to_le_bytes());
                let s = sector * 4096;
                put(&mut b, s, b"data");
                put(&mut b, s + 4, &((e.seq >> 32) as u32).to_le_bytes());
                put(&mut b, s + 8, &page[8..4092]);
                put(&mut b, s + 4092, &(e.seq as u32).to_le_bytes());
                sector += 1;
            }
            Desc::Zero(length, off) => {
                put(&mut b, at, b"zero");
                put(&mut b, at + 8, &length.to_le_bytes());
                put(&mut b, at + 16, &off.to_le_bytes());
            }
            Desc::Raw(sig) => put(&mut b, at, sig),
        }
        put(&mut b, at + 24, &e.seq.to_le_bytes());
    }
    checksum(&mut b);
    b
}

/// A 4 KiB page whose bytes all differ from their neighbours' (so a shifted
/// or split copy shows).
pub fn page(seed: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

/// The file offset a `Corrupt` or `Unsupported` error names (the standard:
/// every such error says where the bad structure is).
pub fn err_offset<T: core::fmt::Debug>(r: crate::error::Result<T>) -> u64 {
    match r {
        Err(crate::error::Error::Corrupt { offset, .. } | crate::error::Error::Unsupported { offset, .. }) => offset,
        other => panic!("expected a Corrupt or Unsupported error, got {other:?}"),
    }
}
