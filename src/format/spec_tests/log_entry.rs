//! Log entries against hand-laid bytes (MS-VHDX 2.3): header, zero and data
//! descriptors (126 in the first sector, 128 in the next), data sectors with
//! the sequence number split high/low, CRC-32C over the entry.

use alloc::vec::Vec;

use super::build::{log_entry, page, put, Desc, Entry};
use crate::format::guid::Guid;
use crate::format::log::*;

const G: u128 = 0xE6FC743C_81ED_4FE8_BF54_698ED57BA0B8;

fn e(seq: u64) -> Entry {
    Entry { seq, tail: 0x5000, log_guid: G, flushed: 0x240_0000, last: 0x250_0000 }
}

fn parse(b: &[u8]) -> Result<LogEntry, EntryFault> {
    parse_entry(b, 1 << 20, &Guid::from_u128(G))
}

#[test]
fn hand_laid_entry_parses() {
    // A sequence number above 2^32 shows the high/low split of data sectors.
    let seq = 0x0011_2233_4455_6677;
    let descs = [
        Desc::Data(0x30_0000, page(1)),
        Desc::Zero(0x2000, 0x40_0000),
        Desc::Data(0x30_1000, page(2)),
        Desc::Zero(0, 0x50_0000),
    ];
    let b = log_entry(&e(seq), &descs);
    assert_eq!(b.len(), 3 * 4096);
    let got = parse(&b).unwrap();
    assert_eq!(
        got,
        LogEntry {
            entry_length: 3 * 4096,
            tail: 0x5000,
            sequence_number: seq,
            flushed_file_offset: 0x240_0000,
            last_file_offset: 0x250_0000,
            ops: alloc::vec![
                LogOp::Data { file_offset: 0x30_0000, bytes: page(1) },
                LogOp::Zero { file_offset: 0x40_0000, length: 0x2000 },
                LogOp::Data { file_offset: 0x30_1000, bytes: page(2) },
                LogOp::Zero { file_offset: 0x50_0000, length: 0 },
            ],
        }
    );
    assert_eq!(peek_entry_length(&b[..4096], 1 << 20, &Guid::from_u128(G)), Ok(3 * 4096));
    assert_eq!(peek_entry_length(&b[..63], 1 << 20, &Guid::from_u128(G)), Err(EntryFault::Length));
    // The length field alone: zero, not whole 4 KiB sectors, longer than the log.
    let g = Guid::from_u128(G);
    for (len, log, want) in [
        (0u32, 1 << 20, Err(EntryFault::Length)),
        (4097, 1 << 20, Err(EntryFault::Length)),
        (4096 + 512, 1 << 20, Err(EntryFault::Length)),
        (3 * 4096, 3 * 4096, Ok(3 * 4096)),
        (3 * 4096, 2 * 4096, Err(EntryFault::Length)),
    ] {
        let mut h = b[..4096].to_vec();
        put(&mut h, 8, &len.to_le_bytes());
        assert_eq!(peek_entry_length(&h, log, &g), want, "length {len} in a log of {log}");
    }
}

#[test]
fn builder_lays_out_the_spec_bytes() {
    for n in [0usize, 1, 2, 126, 127, 130, 254, 255] {
        let pages: Vec<(u64, Vec<u8>)> = (0..n).map(|i| (0x30_0000 + 4096 * i as u64, page(i as u8))).collect();
        let refs: Vec<(u64, &[u8])> = pages.iter().map(|(o, p)| (*o, p.as_slice())).collect();
        let descs: Vec<Desc> = pages.iter().map(|(o, p)| Desc::Data(*o, p.clone())).collect();
        let want = log_entry(&e(0x1_0000_0009), &descs);
        let got = build_entry(&refs, 0x1_0000_0009, 0x5000, &Guid::from_u128(G), 0x240_0000, 0x250_0000);
        assert_eq!(got.len(), want.len(), "{n} pages");
        assert!(got == want, "{n} pages: bytes differ from the spec layout");
        assert_eq!(descriptor_sectors(n), (64 + 32 * n).div_ceil(4096), "{n}");
        let parsed = parse_entry(&want, 4 << 20, &Guid::from_u128(G)).unwrap();
        assert_eq!(parsed.ops.len(), n);
        for (op, (o, p)) in parsed.ops.iter().zip(&pages) {
            assert_eq!(op, &LogOp::Data { file_offset: *o, bytes: p.clone() });
        }
    }
}

#[test]
fn entry_faults() {
    let g = Guid::from_u128(G);
    let good = log_entry(&e(9), &[Desc::Data(0x30_0000, page(3)), Desc::Zero(0x1000, 0x40_0000)]);
    assert!(parse(&good).is_ok());
    let resealed = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        super::build::checksum(&mut b);
        parse(&b)
    };
    assert_eq!(resealed(&|b| b[0] = b'L'), Err(EntryFault::Signature));
    assert_eq!(resealed(&|b| put(b, 8, &0u32.to_le_bytes())), Err(EntryFault::Length));
    assert_eq!(resealed(&|b| put(b, 8, &4097u32.to_le_bytes())), Err(EntryFault::Length));
    assert_eq!(resealed(&|b| put(b, 8, &4096u32.to_le_bytes())), Err(EntryFault::Length));
    assert_eq!(resealed(&|b| put(b, 16, &0u64.to_le_bytes())), Err(EntryFault::Sequence));
    assert_eq!(resealed(&|b| b[40] ^= 1), Err(EntryFault::Guid));
    // Descriptor 0 (data): sequence, alignment, signature; its data sector.
    assert_eq!(resealed(&|b| put(b, 64 + 24, &8u64.to_le_bytes())), Err(EntryFault::Descriptor));
    assert_eq!(resealed(&|b| put(b, 64 + 16, &0x30_0200u64.to_le_bytes())), Err(EntryFault::Descriptor));
    assert_eq!(resealed(&|b| put(b, 64, b"DESC")), Err(EntryFault::Descriptor));
    assert_eq!(resealed(&|b| put(b, 4096, b"Data")), Err(EntryFault::Descriptor));
    assert_eq!(resealed(&|b| put(b, 4096 + 4, &1u32.to_le_bytes())), Err(EntryFault::Descriptor));
    assert_eq!(resealed(&|b| put(b, 8188, &8u32.to_le_bytes())), Err(EntryFault::Descriptor));
    // Descriptor 1 (zero): length a 4 KiB multiple, no overflow.
    assert_eq!(resealed(&|b| put(b, 96 + 8, &0x1200u64.to_le_bytes())), Err(EntryFault::Descriptor));
    assert_eq!(
        resealed(&|b| {
            put(b, 96 + 8, &0xFFFF_FFFF_FFFF_F000u64.to_le_bytes());
        }),
        Err(EntryFault::Descriptor)
    );
    assert_eq!(resealed(&|b| put(b, 96 + 16, &0x40_0800u64.to_le_bytes())), Err(EntryFault::Descriptor));
    // More data descriptors than data sectors; more descriptors than fit.
    assert_eq!(resealed(&|b| put(b, 96, b"desc")), Err(EntryFault::Length));
    assert_eq!(resealed(&|b| put(b, 24, &300u32.to_le_bytes())), Err(EntryFault::Length));
    assert_eq!(resealed(&|b| put(b, 24, &0u32.to_le_bytes())).map(|x| x.ops.len()), Ok(0));
    // Descriptors alone overflowing a one-sector entry: 126 fit the first
    // sector (the next one is then malformed), 127 need a second sector.
    let one = log_entry(&e(9), &[Desc::Zero(0x1000, 0x40_0000)]);
    assert_eq!(one.len(), 4096);
    let counted = |n: u32| {
        let mut b = one.clone();
        put(&mut b, 24, &n.to_le_bytes());
        super::build::checksum(&mut b);
        parse(&b)
    };
    assert_eq!(counted(126), Err(EntryFault::Descriptor));
    assert_eq!(counted(127), Err(EntryFault::Length));
    // Checksum over the whole entry, the last byte included.
    let mut b = good.clone();
    *b.last_mut().unwrap() ^= 1;
    assert_eq!(parse(&b), Err(EntryFault::Checksum));
    // Length bounds: the given bytes must be the entry; it must fit the log.
    assert_eq!(parse(&good[..4096]), Err(EntryFault::Length));
    assert_eq!(parse_entry(&good, 4096, &g), Err(EntryFault::Length));
    assert!(parse_entry(&good, 8192, &g).is_ok());
}

#[test]
fn second_descriptor_sector() {
    // 127 zero descriptors and 1 data descriptor: descriptor 126 is the first
    // of the second sector, at byte 4096.
    let mut descs: Vec<Desc> = (0..127u64).map(|i| Desc::Zero(4096, 0x100_0000 + 4096 * i)).collect();
    descs.push(Desc::Data(0x30_0000, page(9)));
    let b = log_entry(&e(4), &descs);
    assert_eq!(b.len(), 3 * 4096);
    assert_eq!(&b[4096..4100], b"zero");
    let got = parse(&b).unwrap();
    assert_eq!(got.ops[126], LogOp::Zero { file_offset: 0x100_0000 + 4096 * 126, length: 4096 });
    assert_eq!(got.ops[127], LogOp::Data { file_offset: 0x30_0000, bytes: page(9) });
    let raw = log_entry(&e(4), &[Desc::Raw(*b"what")]);
    assert_eq!(parse(&raw), Err(EntryFault::Descriptor));
}
