//! Errors name the file offset of the structure at fault: the table,
//! entry or item, computed here from the spec's layout.

use alloc::vec::Vec;

use super::build::{err_offset, guid, head, header, put, region_table, Head, BAT, METADATA};
use crate::format::header::HeaderInfo;
use crate::format::locator::ParentLocator;
use crate::format::metadata::{parse_items, parse_table};
use crate::format::region::RegionTable;

const MIB: u64 = 1 << 20;

#[test]
fn header_and_region_table_errors_name_their_offset() {
    assert_eq!(err_offset(HeaderInfo::parse(&header(&Head { version: 2, ..head() }), 0x20000)), 0x20000);
    assert_eq!(err_offset(HeaderInfo::parse(&[0u8; 4096], 0x10000)), 0x10000);
    let w = [(BAT, 3 * MIB, MIB as u32, 1), (METADATA, 2 * MIB, MIB as u32, 1)];
    // Entry i of the table at T is at T + 16 + 32 i.
    let bad = region_table(&[w[0], w[1], (7, MIB / 2, MIB as u32, 0)]);
    assert_eq!(err_offset(RegionTable::parse(&bad, 0x40000)), 0x40000 + 16 + 64);
    let dup = region_table(&[w[0], (BAT, 9 * MIB, MIB as u32, 1), w[1]]);
    assert_eq!(err_offset(RegionTable::parse(&dup, 0x30000)), 0x30000 + 16 + 32);
    let missing = region_table(&w[..1]);
    assert_eq!(err_offset(RegionTable::parse(&missing, 0x30000)), 0x30000);
}

/// A metadata region with the five system items at 0x10000 + 0x1000 i.
fn region(lss: u32, block: u32) -> Vec<u8> {
    let mut b = alloc::vec![0u8; MIB as usize];
    put(&mut b, 0, b"metadata");
    put(&mut b, 10, &6u16.to_le_bytes());
    let items: [(u128, Vec<u8>); 5] = [
        (0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B, [block.to_le_bytes(), 0u32.to_le_bytes()].concat()),
        (0x2FA54224_CD1B_4876_B211_5DBED83BF4B8, (1u64 << 30).to_le_bytes().to_vec()),
        (0xBECA12AB_B2E6_4523_93EF_C309E000C746, alloc::vec![9; 16]),
        (0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F, lss.to_le_bytes().to_vec()),
        (0xCDA348C7_445D_4471_9CC9_E9885251C556, 512u32.to_le_bytes().to_vec()),
    ];
    for (i, (id, data)) in items.iter().enumerate() {
        let at = 32 + 32 * i;
        let off = 0x10000 + 0x1000 * i as u32;
        put(&mut b, at, &guid(*id));
        put(&mut b, at + 16, &off.to_le_bytes());
        put(&mut b, at + 20, &(data.len() as u32).to_le_bytes());
        put(&mut b, off as usize, data);
    }
    // A sixth, unknown and optional, empty item.
    put(&mut b, 32 + 32 * 5, &guid(77));
    b
}

fn items(b: &[u8], at: u64) -> crate::error::Result<crate::format::metadata::DiskParameters> {
    let entries = parse_table(b, at, b.len() as u32)?;
    parse_items(&entries, at, |e| Ok(b[e.offset as usize..(e.offset + e.length) as usize].to_vec())).map(|r| r.0)
}

#[test]
fn metadata_errors_name_their_offset() {
    let at = 2 * MIB;
    assert!(items(&region(512, 1 << 21), at).is_ok());
    // Items: at the region's offset plus the item's.
    assert_eq!(err_offset(items(&region(1024, 1 << 21), at)), at + 0x13000);
    assert_eq!(err_offset(items(&region(512, 3 << 20), at)), at + 0x10000);
    // Table entries: at the region's offset + 32 + 32 i.
    let mut b = region(512, 1 << 21);
    put(&mut b, 32 + 32 * 5 + 16, &0x8000u32.to_le_bytes()); // the empty item gets an offset
    assert_eq!(err_offset(items(&b, at)), at + 32 + 32 * 5);
    let mut b = region(512, 1 << 21);
    put(&mut b, 32 + 32 * 2 + 20, &(2 * MIB as u32).to_le_bytes()); // item 2 is 2 MiB long
    assert_eq!(err_offset(items(&b, at)), at + 32 + 32 * 2);
    // The virtual size item.
    let mut b = region(512, 1 << 21);
    put(&mut b, 0x11000, &0u64.to_le_bytes());
    assert_eq!(err_offset(items(&b, at)), at + 0x11000);
    // An item of the wrong length: the item's offset.
    let mut b = region(512, 1 << 21);
    put(&mut b, 32 + 32 * 3 + 20, &8u32.to_le_bytes());
    assert_eq!(err_offset(items(&b, at)), at + 0x13000);
    // The table itself.
    let mut b = region(512, 1 << 21);
    b[0] = b'M';
    assert_eq!(err_offset(items(&b, at)), at);
}

#[test]
fn locator_errors_name_their_offset() {
    // Header (20 bytes), one entry at 20, key and value after it.
    let mut b = alloc::vec![0u8; 32];
    put(&mut b, 0, &guid(0xB04AEFB7_D19E_4A81_B789_25B8E9445913));
    put(&mut b, 18, &1u16.to_le_bytes());
    put(&mut b, 20, &32u32.to_le_bytes()); // key offset
    put(&mut b, 24, &34u32.to_le_bytes()); // value offset
    put(&mut b, 28, &2u16.to_le_bytes());
    put(&mut b, 30, &2u16.to_le_bytes());
    b.extend_from_slice(&[b'k', 0, 0x00, 0xD8]); // the value is a lone surrogate
    assert_eq!(err_offset(ParentLocator::parse(&b, 0x30_0000)), 0x30_0000 + 34);
    put(&mut b, 24, &40u32.to_le_bytes()); // the value lies outside the item: the entry's offset
    assert_eq!(err_offset(ParentLocator::parse(&b, 0x30_0000)), 0x30_0000 + 20);
    // A key given twice: the second entry's offset.
    let mut b = alloc::vec![0u8; 44];
    put(&mut b, 0, &guid(0xB04AEFB7_D19E_4A81_B789_25B8E9445913));
    put(&mut b, 18, &2u16.to_le_bytes());
    for at in [20, 32] {
        put(&mut b, at, &44u32.to_le_bytes()); // both keys "k"
        put(&mut b, at + 4, &46u32.to_le_bytes()); // both values "v"
        put(&mut b, at + 8, &2u16.to_le_bytes());
        put(&mut b, at + 10, &2u16.to_le_bytes());
    }
    b.extend_from_slice(&[b'k', 0, b'v', 0]);
    assert_eq!(err_offset(ParentLocator::parse(&b, 0x30_0000)), 0x30_0000 + 32);
}

#[test]
fn bad_signatures_are_shown_escaped() {
    use alloc::string::ToString;
    let mut b = header(&head());
    b[..4].copy_from_slice(b"H\x01\"d");
    super::build::checksum(&mut b);
    let msg = HeaderInfo::parse(&b, 0x10000).unwrap_err().to_string();
    assert!(msg.contains(r#"signature is "H\x01\"d", not "head""#), "{msg}");
    let mut t = region_table(&[(BAT, 3 * MIB, MIB as u32, 1), (METADATA, 2 * MIB, MIB as u32, 1)]);
    t[..4].copy_from_slice(b"rEgi");
    let msg = RegionTable::parse(&t, 0x30000).unwrap_err().to_string();
    assert!(msg.contains(r#"signature is "rEgi", not "regi""#) && msg.contains("0x30000"), "{msg}");
}

#[test]
fn parent_locator_errors_name_the_item() {
    // HasParent, and a locator item at 0x15000 whose type is not VHDX's.
    let at = 2 * MIB;
    let mut b = region(512, 1 << 21);
    put(&mut b, 0x10004, &2u32.to_le_bytes());
    put(&mut b, 32 + 32 * 5, &guid(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C));
    put(&mut b, 32 + 32 * 5 + 16, &0x15000u32.to_le_bytes());
    put(&mut b, 32 + 32 * 5 + 20, &20u32.to_le_bytes());
    put(&mut b, 0x15000, &guid(1));
    assert_eq!(err_offset(items(&b, at)), at + 0x15000);
}
