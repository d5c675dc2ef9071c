//! The metadata region against hand-laid bytes (MS-VHDX 2.6): the table,
//! the five system items, their flags, and the rules on values.

use alloc::vec::Vec;

use super::build::{guid, put};
use crate::error::Error;
use crate::format::guid::Guid;
use crate::format::metadata::*;

const FP: u128 = 0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B;
const VS: u128 = 0x2FA54224_CD1B_4876_B211_5DBED83BF4B8;
const ID: u128 = 0xBECA12AB_B2E6_4523_93EF_C309E000C746;
const LSS: u128 = 0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F;
const PSS: u128 = 0xCDA348C7_445D_4471_9CC9_E9885251C556;
const DISK_ID: u128 = 0xC2583C64_DE7E_4C9F_8613_216FC8613FB3;

/// One table entry: item, offset, length, flags, and the item's bytes.
type Item = (u128, u32, u32, u32, Vec<u8>);

/// A 1 MiB region laid out as Windows does: one 4 KiB slot per item from 64 KiB.
fn region(items: &[Item]) -> Vec<u8> {
    let mut b = alloc::vec![0u8; 1 << 20];
    put(&mut b, 0, b"metadata");
    put(&mut b, 10, &(items.len() as u16).to_le_bytes());
    for (i, (id, off, len, flags, data)) in items.iter().enumerate() {
        let at = 32 + 32 * i;
        put(&mut b, at, &guid(*id));
        put(&mut b, at + 16, &off.to_le_bytes());
        put(&mut b, at + 20, &len.to_le_bytes());
        put(&mut b, at + 24, &flags.to_le_bytes());
        put(&mut b, *off as usize, data);
    }
    b
}

fn items(block: u32, fp_flags: u32, size: u64, lss: u32, pss: u32) -> Vec<Item> {
    let mut params = block.to_le_bytes().to_vec();
    params.extend_from_slice(&fp_flags.to_le_bytes());
    alloc::vec![
        (FP, 0x10000, 8, 4, params),
        (VS, 0x11000, 8, 6, size.to_le_bytes().to_vec()),
        (ID, 0x12000, 16, 6, guid(DISK_ID).to_vec()),
        (LSS, 0x13000, 4, 6, lss.to_le_bytes().to_vec()),
        (PSS, 0x14000, 4, 6, pss.to_le_bytes().to_vec()),
    ]
}

fn parse(b: &[u8]) -> crate::error::Result<DiskParameters> {
    let entries = parse_table(b, 0x20_0000, b.len() as u32)?;
    parse_items(&entries, 0x20_0000, |e| Ok(b[e.offset as usize..(e.offset + e.length) as usize].to_vec()))
        .map(|(p, _)| p)
}

fn expected(block: u32, fixed: bool, size: u64, lss: u32, pss: u32) -> DiskParameters {
    DiskParameters {
        block_size: block,
        leave_block_allocated: fixed,
        has_parent: false,
        virtual_size: size,
        virtual_disk_id: Guid::from_u128(DISK_ID),
        logical_sector_size: lss,
        physical_sector_size: pss,
    }
}

#[test]
fn windows_layout_parses() {
    let b = region(&items(2 << 20, 1, 4 << 20, 512, 4096));
    assert_eq!(parse(&b).unwrap(), expected(2 << 20, true, 4 << 20, 512, 4096));
    let b = region(&items(32 << 20, 0, 10 << 30, 4096, 4096));
    assert_eq!(parse(&b).unwrap(), expected(32 << 20, false, 10 << 30, 4096, 4096));
    // The bounds: 1 MiB and 256 MiB blocks, 64 TiB.
    assert!(parse(&region(&items(1 << 20, 0, 64 << 40, 512, 512))).is_ok());
    assert!(parse(&region(&items(256 << 20, 0, 512, 512, 512))).is_ok());
    let entries = parse_table(&region(&items(2 << 20, 1, 4 << 20, 512, 4096)), 0, 1 << 20).unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(
        entries[1],
        MetadataEntry {
            item_id: Guid::from_u128(VS),
            offset: 0x11000,
            length: 8,
            flags: MetadataFlags::IS_VIRTUAL_DISK | MetadataFlags::IS_REQUIRED
        }
    );
}

#[test]
fn value_rules() {
    for (block, size, lss, pss) in [
        ((1 << 20) - 1, 1 << 30, 512, 512),
        (512 << 10, 1 << 30, 512, 512),
        (512 << 20, 1 << 30, 512, 512),
        (3 << 20, 1 << 30, 512, 512),
        (1 << 20, 0, 512, 512),
        ((1 << 20), (64 << 40) + 4096, 512, 512),
        (1 << 20, 1000, 512, 512),
        (1 << 20, (1 << 30) + 512, 4096, 512),
        (1 << 20, 1 << 30, 1024, 512),
        (1 << 20, 1 << 30, 512, 1024),
        (1 << 20, 1 << 30, 512, 0),
    ] {
        assert!(parse(&region(&items(block, 0, size, lss, pss))).is_err(), "{block} {size} {lss} {pss}");
    }
    // HasParent without a locator: the locator item is required.
    assert!(parse(&region(&items(2 << 20, 2, 4 << 20, 512, 4096))).is_err());
    // Each item is required, at its exact size.
    let all = items(2 << 20, 0, 4 << 20, 512, 4096);
    for i in 0..5 {
        let mut less = all.clone();
        less.remove(i);
        assert!(parse(&region(&less)).is_err(), "without item {i}");
        let mut longer = all.clone();
        longer[i].2 += 4;
        longer[i].4.extend_from_slice(&[0; 4]);
        assert!(parse(&region(&longer)).is_err(), "item {i} 4 bytes longer");
        // A user item with the same GUID does not stand in for the system item.
        let mut user = all.clone();
        user[i].3 |= 1;
        assert!(parse(&region(&user)).is_err(), "item {i} as a user item");
    }
}

#[test]
fn table_rules() {
    let all = items(2 << 20, 0, 4 << 20, 512, 4096);
    let with = |extra: Item| {
        let mut v = all.clone();
        v.push(extra);
        parse(&region(&v))
    };
    let other = 0x0123_4567_89AB_CDEF_0123_4567_89AB_CDEFu128;
    // An optional unknown item is fine; required, or a required user item, is not.
    assert!(with((other, 0x20000, 8, 0, alloc::vec![1; 8])).is_ok());
    assert!(with((other, 0x20000, 8, 2, alloc::vec![1; 8])).is_ok());
    assert!(matches!(with((other, 0x20000, 8, 4, alloc::vec![1; 8])), Err(Error::Unsupported { .. })));
    assert!(matches!(with((FP, 0x20000, 8, 5, alloc::vec![1; 8])), Err(Error::Unsupported { .. })));
    // (ItemId, IsUser) is unique: a user item may share a system item's GUID.
    assert!(with((FP, 0x20000, 8, 1, alloc::vec![1; 8])).is_ok());
    assert!(with((FP, 0x20000, 8, 4, alloc::vec![1; 8])).is_err());
    // Empty items: offset 0, anywhere in the table.
    assert!(with((other, 0, 0, 0, alloc::vec![])).is_ok());
    assert!(with((other, 0x20000, 0, 0, alloc::vec![])).is_err());
    // Placement: at or past 64 KiB, inside the region, at most 1 MiB long.
    assert!(with((other, 0xFFF8, 8, 0, alloc::vec![1; 8])).is_err());
    assert!(with((other, (1 << 20) - 8, 8, 0, alloc::vec![1; 8])).is_ok());
    assert!(with((other, (1 << 20) - 4, 8, 0, alloc::vec![1; 4])).is_err());
    let mut v = all.clone();
    v.push((other, 0x20000, (1 << 20) + 1, 0, alloc::vec![]));
    let big = region(&v);
    assert!(parse_table(&big, 0, u32::MAX).is_err());
    // Overlaps, and just touching.
    assert!(with((other, 0x10004, 8, 0, alloc::vec![1; 8])).is_err());
    assert!(with((other, 0x10FFC, 8, 0, alloc::vec![1; 8])).is_err());
    assert!(with((other, 0x10008, 8, 0, alloc::vec![1; 8])).is_ok());
    // The table needs its 64 KiB and its signature; at most 2047 entries.
    let b = region(&all);
    assert!(parse_table(&b[..65535], 0, 1 << 20).is_err());
    assert!(parse_table(&b, 0, 65535).is_err());
    assert!(parse_table(&b, 0, 0x14004).is_ok()); // the last item ends at 0x14004
    assert!(parse_table(&b, 0, 0x14003).is_err());
    // A region of exactly 64 KiB holds an empty table.
    let mut empty = b[..65536].to_vec();
    empty[10..12].fill(0);
    assert_eq!(parse_table(&empty, 0, 65536).unwrap().len(), 0);
    let mut bad = b.clone();
    bad[7] = b'A';
    assert!(parse_table(&bad, 0, 1 << 20).is_err());
    let mut many = b.clone();
    many[10..12].copy_from_slice(&2048u16.to_le_bytes());
    let msg = alloc::string::ToString::to_string(&parse_table(&many, 0, 1 << 20).unwrap_err());
    assert!(msg.contains("2048 entries (at most 2047)"), "{msg}");
    // Exactly 2047: the five system items and 2042 empty optional ones.
    let mut v = all.clone();
    v.extend((0..2042u128).map(|i| (other + 1 + i, 0, 0, 0, alloc::vec![])));
    assert_eq!(parse_table(&region(&v), 0, 1 << 20).unwrap().len(), 2047);
    // An item of exactly 1 MiB; one that ends exactly where the next begins,
    // with the later item first in the table.
    let mut v = all.clone();
    v.push((other, 0x20000, 1 << 20, 0, alloc::vec![]));
    assert!(parse_table(&region(&v), 0, 0x20000 + (1 << 20)).is_ok());
    assert!(with((other, 0x10FF8, 8, 0, alloc::vec![1; 8])).is_ok()); // ends at VS's 0x11000
}

#[test]
fn user_item_limit_is_1024() {
    let mut v = items(2 << 20, 0, 4 << 20, 512, 4096);
    for i in 0..1024u32 {
        v.push((0x5000 + i as u128, 0x20000 + 8 * i, 8, 1, alloc::vec![7; 8]));
    }
    assert_eq!(parse_table(&region(&v), 0, 1 << 20).unwrap().len(), 1029);
    v.push((0x9000, 0x30000, 8, 1, alloc::vec![7; 8]));
    assert!(parse_table(&region(&v), 0, 1 << 20).is_err());
}

#[test]
fn built_region_has_the_spec_layout() {
    let p = expected(32 << 20, true, 1 << 30, 512, 4096);
    let b = build_region(&p, None, &[], 1 << 20).unwrap();
    assert_eq!(&b[..8], b"metadata");
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 5);
    let mut seen = Vec::new();
    for i in 0..5 {
        let e = &b[32 + 32 * i..64 + 32 * i];
        let off = u32::from_le_bytes(e[16..20].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(e[20..24].try_into().unwrap()) as usize;
        let flags = u32::from_le_bytes(e[24..28].try_into().unwrap());
        assert!(off >= 0x10000 && off % 8 == 0);
        seen.push((e[..16].to_vec(), flags, b[off..off + len].to_vec()));
    }
    let mut fp = (32u32 << 20).to_le_bytes().to_vec();
    fp.extend_from_slice(&1u32.to_le_bytes());
    for want in [
        (guid(FP).to_vec(), 4, fp),
        (guid(VS).to_vec(), 6, (1u64 << 30).to_le_bytes().to_vec()),
        (guid(ID).to_vec(), 6, guid(DISK_ID).to_vec()),
        (guid(LSS).to_vec(), 6, 512u32.to_le_bytes().to_vec()),
        (guid(PSS).to_vec(), 6, 4096u32.to_le_bytes().to_vec()),
    ] {
        assert!(seen.contains(&want), "missing {want:02x?}");
    }
    // A differencing disk's file parameters say HasParent (2) and never LeaveBlockAllocated.
    let loc = crate::format::locator::ParentLocator {
        entries: alloc::vec![(
            alloc::string::String::from("parent_linkage"),
            alloc::format!("{{{}}}", Guid::from_u128(9))
        )],
    };
    let d = DiskParameters { has_parent: true, leave_block_allocated: false, ..p };
    let b = build_region(&d, Some(&loc), &[], 1 << 20).unwrap();
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 6);
    let fp_off = u32::from_le_bytes(b[48..52].try_into().unwrap()) as usize;
    assert_eq!(&b[fp_off + 4..fp_off + 8], &2u32.to_le_bytes());
    // The sixth entry is the locator: required, not virtual-disk.
    assert_eq!(&b[32 + 5 * 32..48 + 5 * 32], &guid(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C));
    assert_eq!(&b[32 + 5 * 32 + 24..32 + 5 * 32 + 28], &4u32.to_le_bytes());
    // LeaveBlockAllocated read with HasParent is ignored.
    let mut v = items(2 << 20, 3, 4 << 20, 512, 4096);
    v.push((
        0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C,
        0x15000,
        loc.to_bytes().unwrap().len() as u32,
        4,
        loc.to_bytes().unwrap(),
    ));
    let got = parse(&region(&v)).unwrap();
    assert!(got.has_parent && !got.leave_block_allocated);
}

#[test]
fn build_region_limits() {
    let p = expected(32 << 20, false, 1 << 30, 512, 512);
    let extra = |n: usize, len: usize| -> Vec<ExtraItem> {
        (0..n)
            .map(|i| ExtraItem {
                item_id: Guid::from_u128(0x7000 + i as u128),
                flags: MetadataFlags::IS_USER,
                data: alloc::vec![1; len],
            })
            .collect()
    };
    // 5 system items + 2042 = 2047 entries: 32 + 2047 * 32 = 65536 bytes exactly.
    assert!(build_region(&p, None, &extra(2042, 8), 1 << 20).is_ok());
    assert!(build_region(&p, None, &extra(2043, 8), 1 << 20).is_err());
    // Items must fit the region; one item at most 1 MiB.
    assert!(build_region(&p, None, &extra(1, 1 << 20), 2 << 20).is_ok());
    assert!(build_region(&p, None, &extra(1, (1 << 20) + 1), 4 << 20).is_err());
    assert!(build_region(&p, None, &extra(1, 8), 0x10000 + 48).is_err());
    // Exactly full: 5 items of 8, 8, 16, 4(+4), 4(+4) = 48 bytes, then 8.
    assert!(build_region(&p, None, &extra(1, 8), 0x10000 + 56).is_ok());
    // Extra items are kept with their flags and bytes; known items are not extras.
    let b = build_region(&p, None, &extra(2, 3), 1 << 20).unwrap();
    let entries = parse_table(&b, 0, 1 << 20).unwrap();
    let got = extra_items(&entries, |e| Ok(b[e.offset as usize..(e.offset + e.length) as usize].to_vec())).unwrap();
    assert_eq!(got, extra(2, 3));
    assert!(is_known_item(Guid::from_u128(FP)) && !is_known_item(Guid::from_u128(7)));
}
