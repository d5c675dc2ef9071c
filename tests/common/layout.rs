//! The format's structures read by the test itself from the documented
//! layout, with its own CRC-32C: the headers at 64 and 128 KiB, the region
//! table at 192 KiB, and the BAT, with the format's rules for its entries.

use super::FileExt;
use std::fs::File;
use std::path::Path;

/// CRC-32C (Castagnoli), bitwise: an implementation independent of the crate's.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// A header parsed by the test itself from the documented layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub sequence_number: u64,
    pub file_write_guid: [u8; 16],
    pub data_write_guid: [u8; 16],
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// Parses the 4 KiB header at `bytes`: `Err` with the reason when the
/// signature, CRC-32C or version is wrong.
pub fn parse_header(bytes: &[u8]) -> Result<RawHeader, String> {
    let h = &bytes[..4096];
    if &h[0..4] != b"head" {
        return Err(format!("signature {:?}", &h[0..4]));
    }
    let stored = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let mut copy = h.to_vec();
    copy[4..8].fill(0);
    let crc = crc32c(&copy);
    if crc != stored {
        return Err(format!("checksum {stored:#010x}, computed {crc:#010x}"));
    }
    let u16_at = |o: usize| u16::from_le_bytes(h[o..o + 2].try_into().unwrap());
    let hdr = RawHeader {
        sequence_number: u64::from_le_bytes(h[8..16].try_into().unwrap()),
        file_write_guid: h[16..32].try_into().unwrap(),
        data_write_guid: h[32..48].try_into().unwrap(),
        log_guid: h[48..64].try_into().unwrap(),
        log_version: u16_at(64),
        version: u16_at(66),
        log_length: u32::from_le_bytes(h[68..72].try_into().unwrap()),
        log_offset: u64::from_le_bytes(h[72..80].try_into().unwrap()),
    };
    if hdr.version != 1 {
        return Err(format!("version {}", hdr.version));
    }
    Ok(hdr)
}

/// Both headers of a file, parsed from 64 KiB and 128 KiB.
pub fn read_headers(path: &Path) -> [Result<RawHeader, String>; 2] {
    let f = File::open(path).unwrap();
    [64u64 << 10, 128 << 10].map(|at| {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, at).unwrap();
        parse_header(&buf)
    })
}

/// The current header: the valid one with the higher sequence number (header 1 on a tie).
pub fn current_header(path: &Path) -> RawHeader {
    match read_headers(path) {
        [Ok(a), Ok(b)] => {
            if b.sequence_number > a.sequence_number {
                b
            } else {
                a
            }
        }
        [Ok(a), Err(_)] => a,
        [Err(_), Ok(b)] => b,
        [Err(a), Err(b)] => panic!("no valid header in {}: {a}; {b}", path.display()),
    }
}

// ---------------------------------------------------------------- BAT, parsed by the test

/// The BAT of an image, read by the test from the documented layout (region
/// table at 192 KiB, checked with the test's own CRC-32C).
pub struct RawBat {
    pub entries: Vec<u64>,
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
}

/// The on-disk bytes of the BAT region GUID 2DC27766-F623-4200-9D64-115E9BFD4A08.
const BAT_GUID: [u8; 16] =
    [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08];

impl RawBat {
    /// Reads the BAT through `read(offset, buf)` for a disk of `size` bytes
    /// with `bs`-byte blocks and `lss`-byte logical sectors.
    pub fn read(read: &dyn Fn(u64, &mut [u8]), size: u64, bs: u64, lss: u64) -> RawBat {
        let mut table = vec![0u8; 64 << 10];
        read(192 << 10, &mut table);
        assert_eq!(&table[0..4], b"regi", "region table signature");
        let stored = u32::from_le_bytes(table[4..8].try_into().unwrap());
        let mut copy = table.clone();
        copy[4..8].fill(0);
        assert_eq!(crc32c(&copy), stored, "region table checksum");
        let mut second = vec![0u8; 64 << 10];
        read(256 << 10, &mut second);
        assert_eq!(second, table, "the two region table copies differ");
        let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
        let (offset, length) = (0..count)
            .map(|i| &table[16 + 32 * i..48 + 32 * i])
            .find(|e| e[0..16] == BAT_GUID)
            .map(|e| {
                (u64::from_le_bytes(e[16..24].try_into().unwrap()), u32::from_le_bytes(e[24..28].try_into().unwrap()))
            })
            .expect("a BAT region");
        let mut raw = vec![0u8; length as usize];
        read(offset, &mut raw);
        let entries = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        RawBat { entries, chunk_ratio: (1u64 << 23) * lss / bs, payload_blocks: size.div_ceil(bs) }
    }

    pub fn from_file(path: &Path, size: u64, bs: u64, lss: u64) -> RawBat {
        let f = File::open(path).unwrap();
        RawBat::read(&|at, buf| f.read_exact_at(buf, at).unwrap(), size, bs, lss)
    }

    /// Index of payload block `i`: `i + i / chunk_ratio` (the interleave).
    pub fn payload(&self, i: u64) -> u64 {
        self.entries[(i + i / self.chunk_ratio) as usize]
    }

    /// Checks the format's rules for a fixed or dynamic disk: entry count,
    /// reserved bits zero, sector-bitmap entries and everything past the table
    /// zero, payload states FULLY_PRESENT exactly for `present` blocks and
    /// NOT_PRESENT with a zero offset for the rest, present offsets 1 MiB-aligned,
    /// past the header section, distinct and inside a file of `file_len` bytes.
    /// Returns the file offset of each present block.
    pub fn check(&self, present: &BTreeSetU64, file_len: u64, bs: u64) -> std::collections::BTreeMap<u64, u64> {
        let p = self.payload_blocks;
        let cr = self.chunk_ratio;
        let count = p + (p - 1) / cr;
        assert!(self.entries.len() as u64 >= count, "BAT region too small");
        let mut offsets = std::collections::BTreeMap::new();
        for (index, &e) in self.entries.iter().enumerate() {
            let index = index as u64;
            assert_eq!(e & 0xF_FFF8, 0, "BAT entry {index} has reserved bits set: {e:#x}");
            if index >= count || index % (cr + 1) == cr {
                assert_eq!(e, 0, "BAT entry {index} (sector bitmap or past the table) is not zero");
                continue;
            }
            let block = index - index / (cr + 1);
            let off = e & !0xF_FFFF;
            if present.contains(&block) {
                assert_eq!(e & 7, 6, "payload block {block} (entry {index}) should be FULLY_PRESENT: {e:#x}");
                assert!(off >= 1 << 20 && off + bs <= file_len, "block {block} at {off:#x} outside the file");
                offsets.insert(block, off);
            } else {
                assert_eq!(e, 0, "payload block {block} (entry {index}) should be NOT_PRESENT with offset 0: {e:#x}");
            }
        }
        let mut sorted: Vec<u64> = offsets.values().copied().collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0] + bs <= w[1], "blocks at {:#x} and {:#x} overlap", w[0], w[1]);
        }
        offsets
    }
}

pub type BTreeSetU64 = std::collections::BTreeSet<u64>;
