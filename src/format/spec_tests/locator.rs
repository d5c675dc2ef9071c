//! The parent locator against hand-laid bytes (MS-VHDX 2.6.2.6).

use alloc::string::String;
use alloc::vec::Vec;

use super::build::{guid, put};
use crate::format::guid::Guid;
use crate::format::locator::*;

const VHDX_TYPE: u128 = 0xB04AEFB7_D19E_4A81_B789_25B8E9445913;

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// A locator item: header, entries, then each key and value as UTF-16LE.
/// Each entry is (key offset, value offset, key length, value length)
/// unless given raw.
fn item(ty: u128, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = alloc::vec![0u8; 20 + 12 * pairs.len()];
    put(&mut b, 0, &guid(ty));
    put(&mut b, 18, &(pairs.len() as u16).to_le_bytes());
    for (i, (k, v)) in pairs.iter().enumerate() {
        let (k, v) = (utf16(k), utf16(v));
        let ko = b.len() as u32;
        b.extend_from_slice(&k);
        let vo = b.len() as u32;
        b.extend_from_slice(&v);
        let at = 20 + 12 * i;
        put(&mut b, at, &ko.to_le_bytes());
        put(&mut b, at + 4, &vo.to_le_bytes());
        put(&mut b, at + 8, &(k.len() as u16).to_le_bytes());
        put(&mut b, at + 10, &(v.len() as u16).to_le_bytes());
    }
    b
}

const LINK: &str = "{7584f8fb-36d3-4091-afb5-b1afe587bfa8}";
const LINK_GUID: u128 = 0x7584F8FB_36D3_4091_AFB5_B1AFE587BFA8;

fn windows_pairs() -> [(&'static str, &'static str); 4] {
    // As dfvfs ntfs-differential.vhdx carries them (SOURCES.md).
    [
        ("parent_linkage", LINK),
        ("parent_linkage2", "{00000000-0000-0000-0000-000000000000}"),
        ("relative_path", ".\\ntfs-parent.vhdx"),
        ("absolute_win32_path", "C:\\Projects\\dfvfs\\test_data\\ntfs-parent.vhdx"),
    ]
}

#[test]
fn hand_laid_locator_parses() {
    let b = item(VHDX_TYPE, &windows_pairs());
    let loc = ParentLocator::parse(&b, 0x300000).unwrap();
    let want: Vec<(String, String)> =
        windows_pairs().iter().map(|(k, v)| (String::from(*k), String::from(*v))).collect();
    assert_eq!(loc.entries, want);
    assert_eq!(loc.parent_linkage(), Some(Guid::from_u128(LINK_GUID)));
    assert_eq!(loc.parent_linkage2(), None); // the nil GUID is no alternative
    assert_eq!(loc.get(RELATIVE_PATH), Some(".\\ntfs-parent.vhdx"));
    assert_eq!(loc.get("Relative_Path"), None); // keys are case-sensitive
                                                // Our writer lays out the same bytes.
    assert_eq!(loc.to_bytes().unwrap(), b);
    let mut with2 = loc.clone();
    with2.set(PARENT_LINKAGE2, String::from("{00000000-0000-0000-0000-00000000000A}"));
    assert_eq!(with2.parent_linkage2(), Some(Guid::from_u128(10)));
    assert_eq!(with2.entries.len(), 4);
    with2.set(VOLUME_PATH, String::from("\\\\?\\Volume{1}\\p.vhdx"));
    assert_eq!(with2.entries.len(), 5);
    with2.remove(ABSOLUTE_WIN32_PATH);
    assert_eq!(with2.get(ABSOLUTE_WIN32_PATH), None);
    assert_eq!(with2.entries.len(), 4);
}

#[test]
fn locator_rules() {
    let p = |b: &[u8]| ParentLocator::parse(b, 0x300000);
    let good = item(VHDX_TYPE, &windows_pairs());
    assert!(matches!(p(&item(7, &windows_pairs())), Err(crate::error::Error::Unsupported { .. })));
    assert!(p(&good[..19]).is_err());
    assert!(p(&good[..20 + 12 * 4 - 1]).is_err());
    assert!(p(&item(VHDX_TYPE, &[("relative_path", "x")])).is_err());
    assert!(p(&item(VHDX_TYPE, &[("parent_linkage", "not a guid")])).is_err());
    assert!(p(&item(VHDX_TYPE, &[("parent_linkage", LINK), ("parent_linkage", LINK)])).is_err());
    assert!(p(&item(VHDX_TYPE, &[("parent_linkage", LINK)])).is_ok());
    let field = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        put(&mut b, at, v);
        p(&b)
    };
    // Entry 2 (relative_path): key offset, value offset, key length, value length.
    let e = 20 + 12 * 2;
    assert!(field(e, &19u32.to_le_bytes()).is_err()); // key inside the header
    assert!(field(e, &20u32.to_le_bytes()).is_ok()); // the first byte past the header is allowed
    assert!(field(e + 4, &(good.len() as u32 - 1).to_le_bytes()).is_err());
    assert!(field(e + 8, &0u16.to_le_bytes()).is_err());
    assert!(field(e + 8, &25u16.to_le_bytes()).is_err()); // odd length
    assert!(field(e + 10, &0u16.to_le_bytes()).is_err());
    // The last value may end exactly at the item's end.
    let last = 20 + 12 * 3;
    let vo = u32::from_le_bytes(good[last + 4..last + 8].try_into().unwrap()) as usize;
    assert!(field(last + 10, &((good.len() - vo) as u16).to_le_bytes()).is_ok());
    assert!(field(last + 10, &((good.len() - vo + 2) as u16).to_le_bytes()).is_err());
    // A count whose entry table runs past the item is refused as such, even
    // when the entries that do fit point at strings inside the item.
    let mut long = item(VHDX_TYPE, &[("parent_linkage", LINK)]);
    let fit = (long.len() - 20) / 12;
    put(&mut long, 18, &((fit + 1) as u16).to_le_bytes());
    let msg = alloc::string::ToString::to_string(&p(&long).unwrap_err());
    assert!(msg.contains(&alloc::format!("{} entries do not fit the {}-byte item", fit + 1, long.len())), "{msg}");
    put(&mut long, 18, &(fit as u16).to_le_bytes()); // fits: the garbage entries are refused one by one
    assert!(!alloc::string::ToString::to_string(&p(&long).unwrap_err()).contains("do not fit"));
    // Unpaired surrogate: not UTF-16.
    let mut bad = good.clone();
    let ko = u32::from_le_bytes(good[e..e + 4].try_into().unwrap()) as usize;
    put(&mut bad, ko, &0xD800u16.to_le_bytes());
    assert!(p(&bad).is_err());
}

#[test]
fn braced_guids() {
    let g = Guid::from_u128(LINK_GUID);
    assert_eq!(braced_guid(&g), LINK);
    for text in [
        LINK,
        "{7584F8FB-36D3-4091-AFB5-B1AFE587BFA8}",
        "7584f8fb-36d3-4091-afb5-b1afe587bfa8",
        " {7584f8fb-36d3-4091-afb5-b1afe587bfa8} ",
    ] {
        assert_eq!(parse_braced_guid(text), Some(g), "{text}");
    }
    assert_eq!(parse_braced_guid("{7584f8fb}"), None);
}

#[test]
fn writer_refuses_empty_entries() {
    let loc = ParentLocator { entries: alloc::vec![(String::from("parent_linkage"), String::new())] };
    assert!(loc.to_bytes().is_err());
    let loc = ParentLocator { entries: alloc::vec![(String::new(), String::from(LINK))] };
    assert!(loc.to_bytes().is_err());
    let huge: String = core::iter::repeat_n('x', 40000).collect();
    let loc = ParentLocator { entries: alloc::vec![(String::from("k"), huge.clone())] };
    assert!(loc.to_bytes().is_err());
    let loc = ParentLocator { entries: alloc::vec![(huge, String::from(LINK))] };
    assert!(loc.to_bytes().is_err()); // a key's length is 16 bits too
}

#[test]
fn writer_fills_an_item_up_to_exactly_1_mib() {
    // 16 entries "k00".."k15" (6-byte keys) with values of 65534 bytes; the
    // last value is sized so the item is exactly 1 MiB (20 + 12 * 16 + 16 * 6
    // + the values).
    let n = 16;
    let mut values: Vec<usize> = alloc::vec![65534; n - 1];
    let fixed = 20 + 12 * n + 6 * n + values.iter().sum::<usize>();
    values.push((1 << 20) - fixed);
    assert!(values[n - 1] > 0 && values[n - 1] <= 65534 && values[n - 1] % 2 == 0);
    let entries = |extra: usize| -> ParentLocator {
        ParentLocator {
            entries: (0..n)
                .map(|i| {
                    let len = values[i] + if i == n - 1 { extra } else { 0 };
                    (alloc::format!("k{i:02}"), core::iter::repeat_n('v', len / 2).collect())
                })
                .collect(),
        }
    };
    let item = entries(0).to_bytes().unwrap();
    assert_eq!(item.len(), 1 << 20);
    // It parses up to the missing linkage: every entry of it was read.
    let msg = alloc::string::ToString::to_string(&ParentLocator::parse(&item, 0).unwrap_err());
    assert!(msg.contains("no parent_linkage key"), "{msg}");
    assert!(entries(2).to_bytes().is_err());
}
