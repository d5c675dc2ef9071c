//! Log records: entry headers, zero and data descriptors, data sectors.
//!
//! The log is a ring of 4 KiB sectors. An entry is a header sector (64-byte
//! header plus up to 126 descriptors), more descriptor sectors of 128
//! descriptors each when needed, then one data sector per data descriptor. A
//! data sector carries bytes 8..4092 of a 4 KiB update; the descriptor carries
//! the first 8 and the last 4. Every descriptor and data sector repeats the
//! entry's sequence number, and a CRC-32C covers the whole entry.
//!
//! This module parses and builds single entries from bytes; finding the active
//! sequence in a ring and replaying it is `crate::log`'s work.

use alloc::vec::Vec;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::crc;
use super::guid::{self, Guid};

/// The log's sector size.
pub const LOG_SECTOR_SIZE: usize = 4096;
/// `"loge"`.
pub const ENTRY_SIGNATURE: [u8; 4] = *b"loge";
/// `"zero"`.
pub const ZERO_SIGNATURE: [u8; 4] = *b"zero";
/// `"desc"`.
pub const DATA_DESCRIPTOR_SIGNATURE: [u8; 4] = *b"desc";
/// `"data"`.
pub const DATA_SECTOR_SIGNATURE: [u8; 4] = *b"data";

/// The header of a log entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct RawLogEntryHeader {
    /// `"loge"`.
    pub signature: [u8; 4],
    /// CRC-32C of the whole entry with this field zero.
    pub checksum: U32,
    /// Entry length, a multiple of 4 KiB.
    pub entry_length: U32,
    /// Log offset of the first entry of the sequence that ends with this one.
    pub tail: U32,
    /// Non-zero; one more than the previous entry's.
    pub sequence_number: U64,
    /// Number of descriptors.
    pub descriptor_count: U32,
    /// Zero.
    pub reserved: U32,
    /// Must equal the header's LogGuid.
    pub log_guid: [u8; 16],
    /// The file size known durable when the entry was written.
    pub flushed_file_offset: U64,
    /// The file size all structures fit into.
    pub last_file_offset: U64,
}
const _: () = assert!(core::mem::size_of::<RawLogEntryHeader>() == 64);

/// A descriptor: data (`"desc"`) or zero (`"zero"`); the fields overlay.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct RawDescriptor {
    /// `"desc"` or `"zero"`.
    pub signature: [u8; 4],
    /// Data: the last 4 bytes of the update. Zero: reserved.
    pub trailing_bytes: [u8; 4],
    /// Data: the first 8 bytes of the update. Zero: the length to zero.
    pub leading_bytes: [u8; 8],
    /// Where the update goes, a multiple of 4 KiB.
    pub file_offset: U64,
    /// The entry's sequence number.
    pub sequence_number: U64,
}
const _: () = assert!(core::mem::size_of::<RawDescriptor>() == 32);

/// A data sector.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct RawDataSector {
    /// `"data"`.
    pub signature: [u8; 4],
    /// High 32 bits of the sequence number.
    pub sequence_high: U32,
    /// Bytes 8..4092 of the update.
    pub data: [u8; 4084],
    /// Low 32 bits of the sequence number.
    pub sequence_low: U32,
}
const _: () = assert!(core::mem::size_of::<RawDataSector>() == LOG_SECTOR_SIZE);

/// Descriptor sectors needed for `count` descriptors.
pub fn descriptor_sectors(count: usize) -> usize {
    (count + 2).div_ceil(128)
}

/// One operation of a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOp {
    /// Write these 4096 bytes at `file_offset`.
    Data {
        /// Target file offset (4 KiB aligned).
        file_offset: u64,
        /// The full 4 KiB sector image.
        bytes: Vec<u8>,
    },
    /// Write `length` zero bytes at `file_offset`.
    Zero {
        /// Target file offset (4 KiB aligned).
        file_offset: u64,
        /// Length (a multiple of 4 KiB).
        length: u64,
    },
}

/// A validated log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Entry length in bytes.
    pub entry_length: u32,
    /// Log offset of the sequence's first entry.
    pub tail: u32,
    /// Sequence number.
    pub sequence_number: u64,
    /// Durable file size when written.
    pub flushed_file_offset: u64,
    /// Size all structures fit into.
    pub last_file_offset: u64,
    /// The updates, in order.
    pub ops: Vec<LogOp>,
}

/// Why an entry at some position is not valid (the search moves on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFault {
    /// Not an entry header.
    Signature,
    /// Length not 4 KiB aligned, larger than the log, or too small for its descriptors.
    Length,
    /// Sequence number zero.
    Sequence,
    /// Log GUID differs from the header's.
    Guid,
    /// A descriptor or data sector is malformed or carries another sequence number.
    Descriptor,
    /// Checksum mismatch.
    Checksum,
}

/// Reads the entry header at the start of `first_sector` and returns its
/// length if it is plausibly an entry of this log (signature, length, GUID).
pub fn peek_entry_length(first_sector: &[u8], log_length: u64, log_guid: &Guid) -> Result<u32, EntryFault> {
    let (h, _) = RawLogEntryHeader::read_from_prefix(first_sector).map_err(|_| EntryFault::Length)?;
    if h.signature != ENTRY_SIGNATURE {
        return Err(EntryFault::Signature);
    }
    let len = h.entry_length.get();
    if len == 0 || len as usize % LOG_SECTOR_SIZE != 0 || len as u64 > log_length {
        return Err(EntryFault::Length);
    }
    if guid::from_disk(&h.log_guid) != *log_guid {
        return Err(EntryFault::Guid);
    }
    Ok(len)
}

/// Parses and fully validates one entry from `bytes` (exactly `entry_length`
/// bytes, already unwrapped from the ring).
pub fn parse_entry(bytes: &[u8], log_length: u64, log_guid: &Guid) -> Result<LogEntry, EntryFault> {
    let len = peek_entry_length(bytes, log_length, log_guid)?;
    if bytes.len() != len as usize {
        return Err(EntryFault::Length);
    }
    let (h, _) = RawLogEntryHeader::read_from_prefix(bytes).map_err(|_| EntryFault::Length)?;
    let seq = h.sequence_number.get();
    if seq == 0 {
        return Err(EntryFault::Sequence);
    }
    if !crc::verify(bytes) {
        return Err(EntryFault::Checksum);
    }
    let count = h.descriptor_count.get() as usize;
    let desc_sectors = descriptor_sectors(count);
    // The descriptor sectors must fit the entry (so the count is bounded by
    // the length before anything is sized by it); every data descriptor
    // also needs a data sector, checked as each is read.
    if desc_sectors > bytes.len() / LOG_SECTOR_SIZE {
        return Err(EntryFault::Length);
    }
    let mut ops = Vec::with_capacity(count.min(1024));
    let mut data_sector = desc_sectors;
    for i in 0..count {
        // Descriptor i sits after the 64-byte header in a flat array of 32-byte slots.
        let at = 64 + i * 32;
        let d = RawDescriptor::read_from_bytes(&bytes[at..at + 32]).map_err(|_| EntryFault::Descriptor)?;
        if d.sequence_number.get() != seq {
            return Err(EntryFault::Descriptor);
        }
        let file_offset = d.file_offset.get();
        if file_offset % LOG_SECTOR_SIZE as u64 != 0 {
            return Err(EntryFault::Descriptor);
        }
        match d.signature {
            ZERO_SIGNATURE => {
                let length = u64::from_le_bytes(d.leading_bytes);
                if length % LOG_SECTOR_SIZE as u64 != 0 || file_offset.checked_add(length).is_none() {
                    return Err(EntryFault::Descriptor);
                }
                ops.push(LogOp::Zero { file_offset, length });
            }
            DATA_DESCRIPTOR_SIGNATURE => {
                let start = data_sector * LOG_SECTOR_SIZE;
                if start + LOG_SECTOR_SIZE > bytes.len() {
                    return Err(EntryFault::Length);
                }
                let s = RawDataSector::read_from_bytes(&bytes[start..start + LOG_SECTOR_SIZE])
                    .map_err(|_| EntryFault::Descriptor)?;
                if s.signature != DATA_SECTOR_SIGNATURE
                    || s.sequence_high.get() != (seq >> 32) as u32
                    || s.sequence_low.get() != seq as u32
                {
                    return Err(EntryFault::Descriptor);
                }
                let mut page = Vec::with_capacity(LOG_SECTOR_SIZE);
                page.extend_from_slice(&d.leading_bytes);
                page.extend_from_slice(&s.data);
                page.extend_from_slice(&d.trailing_bytes);
                ops.push(LogOp::Data { file_offset, bytes: page });
                data_sector += 1;
            }
            _ => return Err(EntryFault::Descriptor),
        }
    }
    Ok(LogEntry {
        entry_length: len,
        tail: h.tail.get(),
        sequence_number: seq,
        flushed_file_offset: h.flushed_file_offset.get(),
        last_file_offset: h.last_file_offset.get(),
        ops,
    })
}

/// Builds the bytes of one entry holding `pages` (each `(file_offset, 4 KiB)`).
pub fn build_entry(
    pages: &[(u64, &[u8])],
    sequence_number: u64,
    tail: u32,
    log_guid: &Guid,
    flushed_file_offset: u64,
    last_file_offset: u64,
) -> Vec<u8> {
    let desc_sectors = descriptor_sectors(pages.len());
    let len = (desc_sectors + pages.len()) * LOG_SECTOR_SIZE;
    let mut out = alloc::vec![0u8; len];
    let header = RawLogEntryHeader {
        signature: ENTRY_SIGNATURE,
        checksum: U32::new(0),
        entry_length: U32::new(len as u32),
        tail: U32::new(tail),
        sequence_number: U64::new(sequence_number),
        descriptor_count: U32::new(pages.len() as u32),
        reserved: U32::new(0),
        log_guid: guid::to_disk(log_guid),
        flushed_file_offset: U64::new(flushed_file_offset),
        last_file_offset: U64::new(last_file_offset),
    };
    out[..64].copy_from_slice(header.as_bytes());
    for (i, (file_offset, page)) in pages.iter().enumerate() {
        debug_assert_eq!(page.len(), LOG_SECTOR_SIZE);
        let mut leading = [0u8; 8];
        leading.copy_from_slice(&page[..8]);
        let mut trailing = [0u8; 4];
        trailing.copy_from_slice(&page[4092..]);
        let d = RawDescriptor {
            signature: DATA_DESCRIPTOR_SIGNATURE,
            trailing_bytes: trailing,
            leading_bytes: leading,
            file_offset: U64::new(*file_offset),
            sequence_number: U64::new(sequence_number),
        };
        let at = 64 + i * 32;
        out[at..at + 32].copy_from_slice(d.as_bytes());
        let mut data = [0u8; 4084];
        data.copy_from_slice(&page[8..4092]);
        let s = RawDataSector {
            signature: DATA_SECTOR_SIGNATURE,
            sequence_high: U32::new((sequence_number >> 32) as u32),
            data,
            sequence_low: U32::new(sequence_number as u32),
        };
        let start = (desc_sectors + i) * LOG_SECTOR_SIZE;
        out[start..start + LOG_SECTOR_SIZE].copy_from_slice(s.as_bytes());
    }
    crc::seal(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_sector_counts() {
        assert_eq!(descriptor_sectors(0), 1);
        assert_eq!(descriptor_sectors(126), 1);
        assert_eq!(descriptor_sectors(127), 2);
        assert_eq!(descriptor_sectors(254), 2);
        assert_eq!(descriptor_sectors(255), 3);
    }

    #[test]
    fn build_then_parse() {
        let g = Guid::from_u128(77);
        let p1: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let p2 = alloc::vec![0xEEu8; 4096];
        let many: Vec<(u64, &[u8])> = (0..130).map(|i| (0x30_0000 + i * 4096, &p1[..])).collect();
        for pages in [alloc::vec![(0x30_0000u64, &p1[..]), (0x40_0000, &p2[..])], many] {
            let bytes = build_entry(&pages, 9, 0, &g, 0x100_0000, 0x200_0000);
            let e = parse_entry(&bytes, 1 << 20, &g).unwrap();
            assert_eq!(e.sequence_number, 9);
            assert_eq!(e.ops.len(), pages.len());
            for (op, (off, page)) in e.ops.iter().zip(&pages) {
                assert_eq!(op, &LogOp::Data { file_offset: *off, bytes: page.to_vec() });
            }
            assert_eq!(parse_entry(&bytes, 1 << 20, &Guid::from_u128(78)), Err(EntryFault::Guid));
            let mut bad = bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(parse_entry(&bad, 1 << 20, &g), Err(EntryFault::Checksum));
        }
    }
}
