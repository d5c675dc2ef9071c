//! Headers, the file identifier and region tables against hand-laid bytes
//! (MS-VHDX 2.2.1-2.2.3).

use alloc::vec::Vec;

use super::build::{self, guid, head, header, region_table, region_table_counted, Head, BAT, METADATA};
use crate::error::Error;
use crate::format::guid::Guid;
use crate::format::header::{select_current, HeaderInfo, RawFileIdentifier};
use crate::format::region::{Region, RegionTable};
use crate::format::MIB;

fn info(h: &Head) -> HeaderInfo {
    HeaderInfo {
        sequence_number: h.seq,
        file_write_guid: Guid::from_u128(h.file_write),
        data_write_guid: Guid::from_u128(h.data_write),
        log_guid: Guid::from_u128(h.log_guid),
        log_version: h.log_version,
        log_length: h.log_length,
        log_offset: h.log_offset,
    }
}

#[test]
fn guid_constants_have_the_spec_bytes() {
    use crate::format::guid::*;
    for (g, text) in [
        (BAT_REGION, BAT),
        (METADATA_REGION, METADATA),
        (FILE_PARAMETERS, 0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B),
        (VIRTUAL_DISK_SIZE, 0x2FA54224_CD1B_4876_B211_5DBED83BF4B8),
        (VIRTUAL_DISK_ID, 0xBECA12AB_B2E6_4523_93EF_C309E000C746),
        (LOGICAL_SECTOR_SIZE, 0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F),
        (PHYSICAL_SECTOR_SIZE, 0xCDA348C7_445D_4471_9CC9_E9885251C556),
        (PARENT_LOCATOR, 0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C),
        (PARENT_LOCATOR_TYPE_VHDX, 0xB04AEFB7_D19E_4A81_B789_25B8E9445913),
    ] {
        assert_eq!(to_disk(&g), guid(text));
        assert_eq!(from_disk(&guid(text)), g);
    }
}

#[test]
fn header_bytes_are_the_spec_layout() {
    let mut h = head();
    h.log_guid = 0xC82755BC_427F_1245_B72C_DA70AAABE031;
    assert_eq!(info(&h).to_bytes(), header(&h));
    assert_eq!(HeaderInfo::parse(&header(&h), 0x10000).unwrap(), info(&h));
    // Only the first 4 KiB count.
    let mut longer = header(&h);
    longer.extend_from_slice(&[0xEE; 100]);
    assert_eq!(HeaderInfo::parse(&longer, 0x10000).unwrap(), info(&h));
    assert!(HeaderInfo::parse(&header(&h)[..4095], 0x10000).is_err());
}

#[test]
fn header_rules() {
    let ok = |h: Head| HeaderInfo::parse(&header(&h), 0x10000);
    // Signature, checksum.
    let mut b = header(&head());
    b[0] = b'H';
    build::checksum(&mut b);
    assert!(matches!(HeaderInfo::parse(&b, 0x10000), Err(Error::Corrupt { .. })));
    let mut b = header(&head());
    b[80] = 1; // reserved byte, inside the checksummed 4 KiB
    assert!(matches!(HeaderInfo::parse(&b, 0x10000), Err(Error::Corrupt { .. })));
    // Version must be 1.
    assert!(matches!(ok(Head { version: 2, ..head() }), Err(Error::Unsupported { .. })));
    assert!(matches!(ok(Head { version: 0, ..head() }), Err(Error::Unsupported { .. })));
    // Log offset and length: 1 MiB multiples, the log past the header section.
    assert!(ok(Head { log_length: (MIB + 4096) as u32, ..head() }).is_err());
    assert!(ok(Head { log_offset: MIB + 4096, ..head() }).is_err());
    assert!(ok(Head { log_offset: 0, ..head() }).is_err());
    assert!(ok(Head { log_offset: 0, log_length: 0, ..head() }).is_ok());
    assert!(ok(Head { log_offset: 7 * MIB, log_length: 0, ..head() }).is_ok());
    assert!(ok(Head { log_offset: u64::MAX - MIB + 1, ..head() }).is_err());
    assert!(ok(Head { log_offset: u64::MAX - MIB + 1, log_length: 0, ..head() }).is_ok());
    // LogVersion matters only while the log is in use.
    assert!(ok(Head { log_version: 1, ..head() }).is_ok());
    let used = Head { log_guid: 5, ..head() };
    assert!(ok(used).is_ok());
    assert!(matches!(ok(Head { log_version: 1, ..used }), Err(Error::Unsupported { .. })));
}

#[test]
fn current_header_choice() {
    let seq = |s: u64| HeaderInfo::parse(&header(&Head { seq: s, ..head() }), 0);
    assert_eq!(select_current([seq(3), seq(4)]).unwrap().0, 1);
    assert_eq!(select_current([seq(4), seq(3)]).unwrap().0, 0);
    assert_eq!(select_current([seq(4), seq(4)]).unwrap().0, 0);
    let bad = || HeaderInfo::parse(&[0u8; 4096], 0x20000);
    let (slot, h) = select_current([seq(9), bad()]).unwrap();
    assert_eq!((slot, h.sequence_number), (0, 9));
    let (slot, h) = select_current([bad(), seq(2)]).unwrap();
    assert_eq!((slot, h.sequence_number), (1, 2));
    assert!(matches!(select_current([bad(), bad()]), Err(Error::Corrupt { .. })));
}

#[test]
fn file_identifier_layout() {
    let id = RawFileIdentifier::new("Ab");
    let bytes = zerocopy::IntoBytes::as_bytes(&id).to_vec();
    assert_eq!(&bytes[..8], b"vhdxfile");
    assert_eq!(&bytes[8..14], &[b'A', 0, b'b', 0, 0, 0]);
    assert!(bytes[14..].iter().all(|&b| b == 0));
    // A creator of 300 characters keeps 255 UTF-16 units and a NUL.
    let long: alloc::string::String = core::iter::repeat_n('x', 300).collect();
    let id = RawFileIdentifier::new(&long);
    assert_eq!(id.creator().len(), 255);
    assert_eq!(&id.creator[510..], &[0, 0]);
    // A Windows creator string, as the fixtures carry it.
    let mut raw = alloc::vec![0u8; 64 * 1024];
    raw[..8].copy_from_slice(b"vhdxfile");
    for (i, u) in "Microsoft Windows 10.0.15063.0".encode_utf16().enumerate() {
        raw[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    assert_eq!(RawFileIdentifier::validate(&raw).unwrap().creator(), "Microsoft Windows 10.0.15063.0");
    raw[0] = b'V';
    assert!(RawFileIdentifier::validate(&raw).is_err());
    assert!(RawFileIdentifier::validate(&raw[..100]).is_err());
}

fn windows_table() -> Vec<build::RegionEntry> {
    // As Windows lays it out: BAT at 3 MiB, metadata at 2 MiB, both 1 MiB, required.
    alloc::vec![(BAT, 3 * MIB, MIB as u32, 1), (METADATA, 2 * MIB, MIB as u32, 1)]
}

#[test]
fn region_table_bytes_are_the_spec_layout() {
    let t = RegionTable {
        entries: alloc::vec![
            Region { guid: Guid::from_u128(BAT), file_offset: 3 * MIB, length: MIB as u32, required: true },
            Region { guid: Guid::from_u128(METADATA), file_offset: 2 * MIB, length: MIB as u32, required: true },
        ],
    };
    let bytes = region_table(&windows_table());
    assert_eq!(t.to_bytes(), bytes);
    // The checksum Windows stores for this table (dfvfs and DiscUtils fixtures).
    assert_eq!(&bytes[4..8], &[0xAE, 0x8C, 0x6B, 0xC6]);
    assert_eq!(RegionTable::parse(&bytes, 0x30000).unwrap(), t);
    assert_eq!(t.bat().file_offset, 3 * MIB);
    assert_eq!(t.metadata().file_offset, 2 * MIB);
    assert_eq!(t.bat().end(), 4 * MIB);
    assert!(RegionTable::parse(&bytes[..65535], 0x30000).is_err());
}

#[test]
fn region_table_rules() {
    let parse = |e: &[build::RegionEntry]| RegionTable::parse(&region_table(e), 0x30000);
    let w = windows_table();
    // Required is bit 0 only; an optional unknown region is kept.
    let unknown = 0x12345678_9ABC_DEF0_1234_56789ABCDEF0u128;
    let t = parse(&[w[0], w[1], (unknown, 8 * MIB, MIB as u32, 2)]).unwrap();
    assert_eq!(t.entries.len(), 3);
    assert!(!t.entries[2].required);
    assert!(matches!(parse(&[w[0], w[1], (unknown, 8 * MIB, MIB as u32, 3)]), Err(Error::Unsupported { .. })));
    // Bad placement.
    for (off, len) in [(0, MIB as u32), (MIB / 2, MIB as u32), (8 * MIB + 4096, MIB as u32), (8 * MIB, 4096)] {
        assert!(parse(&[w[0], w[1], (unknown, off, len, 0)]).is_err(), "{off:#x}+{len:#x}");
    }
    assert!(parse(&[w[0], w[1], (unknown, u64::MAX - MIB + 1, MIB as u32, 0)]).is_err());
    // At exactly 1 MiB, and touching its neighbours: fine.
    assert!(parse(&[w[0], w[1], (unknown, MIB, MIB as u32, 0)]).is_ok());
    assert!(parse(&[w[0], w[1], (unknown, 4 * MIB, MIB as u32, 0)]).is_ok());
    // Overlaps, either way round.
    assert!(parse(&[w[0], w[1], (unknown, 3 * MIB, MIB as u32, 0)]).is_err());
    assert!(parse(&[(unknown, MIB, 2 * MIB as u32, 0), w[0], w[1]]).is_err());
    assert!(parse(&[(BAT, 3 * MIB, 2 * MIB as u32, 1), (METADATA, 4 * MIB, MIB as u32, 1)]).is_err());
    // Each known region once, present and not empty.
    assert!(parse(&[w[0], w[1], (BAT, 9 * MIB, MIB as u32, 1)]).is_err());
    assert!(parse(&[w[0]]).is_err());
    assert!(parse(&[w[1]]).is_err());
    assert!(parse(&[(BAT, 3 * MIB, 0, 1), w[1]]).is_err());
    assert!(parse(&[w[0], (METADATA, 2 * MIB, 0, 1)]).is_err());
    // Entry count: at most 2047.
    assert!(RegionTable::parse(&region_table_counted(&w, 2047), 0x30000).is_err()); // zero entries past 2
    assert!(RegionTable::parse(&region_table_counted(&w, 2048), 0x30000).is_err());
    // Signature and checksum.
    let mut b = region_table(&w);
    b[3] = b'I';
    build::checksum(&mut b);
    assert!(RegionTable::parse(&b, 0x30000).is_err());
    let mut b = region_table(&w);
    b[65535] = 1;
    assert!(RegionTable::parse(&b, 0x30000).is_err());
}

#[test]
fn region_table_allows_2047_entries() {
    // 2045 optional unknown regions of 1 MiB after the two known ones.
    let mut e = windows_table();
    for i in 0..2045u64 {
        e.push((0x1000 + i as u128, (10 + i) * MIB, MIB as u32, 0));
    }
    assert_eq!(RegionTable::parse(&region_table(&e), 0x30000).unwrap().entries.len(), 2047);
}
