//! The format layer on real images: the structures of Windows- and
//! QEMU-made fixtures parse to the values SOURCES.md records for them (found
//! with other tools), and our writers reproduce Windows' bytes.

use alloc::string::String;

use super::fixtures::prefix;
use crate::format::guid::Guid;
use crate::format::header::{select_current, HeaderInfo, RawFileIdentifier, HEADER_OFFSETS};
use crate::format::locator::ParentLocator;
use crate::format::metadata::{parse_items, parse_table, DiskParameters};
use crate::format::region::{RegionTable, REGION_TABLE_OFFSETS};
use crate::format::MIB;

fn headers(file: &[u8]) -> [crate::error::Result<HeaderInfo>; 2] {
    HEADER_OFFSETS.map(|o| HeaderInfo::parse(&file[o as usize..], o))
}

#[test]
fn headers_of_real_images() {
    // QEMU iotest dirty-log image: seq 932638740 / 932638741, header 2 current,
    // LogGuid c82755bc-…, log of 1 MiB at 1 MiB.
    let Some(f) = prefix("qemu/iotest-dirtylog-10G-4M.vhdx.bz2", MIB as usize) else { return };
    let [h1, h2] = headers(&f);
    assert_eq!(h1.as_ref().unwrap().sequence_number, 932_638_740);
    let (slot, h) = select_current([h1, h2]).unwrap();
    assert_eq!((slot, h.sequence_number), (1, 932_638_741));
    assert_eq!(h.log_guid, Guid::from_u128(0xC82755BC_427F_1245_B72C_DA70AAABE031));
    assert_eq!((h.log_offset, h.log_length), (MIB, MIB as u32));
    assert_eq!(RawFileIdentifier::validate(&f).unwrap().creator(), "QEMU v1.6.50");
    // Our writer reproduces the header QEMU wrote, byte for byte.
    assert!(h.to_bytes() == f[0x20000..0x21000], "header 2 differs from QEMU's bytes");

    // Windows, dirty log: seq 8 / 9, both with LogGuid e6fc743c-….
    let Some(f) = prefix("discutils/vhdx-log-replay.vhdx.gz", MIB as usize) else { return };
    let (slot, h) = select_current(headers(&f)).unwrap();
    assert_eq!((slot, h.sequence_number), (1, 9));
    assert_eq!(h.log_guid, Guid::from_u128(0xE6FC743C_81ED_4FE8_BF54_698ED57BA0B8));
    assert_eq!(RawFileIdentifier::validate(&f).unwrap().creator(), "Microsoft Windows 10.0.15063.0");
    assert!(h.to_bytes() == f[0x20000..0x21000], "header 2 differs from Windows' bytes");

    // Disk2vhd: both headers seq 1: header 1 is current.
    let Some(f) = prefix("qemu/test-disk2vhd.vhdx.bz2", MIB as usize) else { return };
    let (slot, h) = select_current(headers(&f)).unwrap();
    assert_eq!((slot, h.sequence_number, h.log_guid), (0, 1, Guid::nil()));
}

#[test]
fn region_tables_of_real_images() {
    // Windows: BAT at 3 MiB, metadata at 2 MiB, 1 MiB each, required; both
    // copies identical; our writer gives the same 64 KiB.
    let Some(f) = prefix("dfvfs/ntfs-dynamic.vhdx.gz", MIB as usize) else { return };
    let at = REGION_TABLE_OFFSETS.map(|o| o as usize);
    let t = RegionTable::parse(&f[at[0]..], at[0] as u64).unwrap();
    assert_eq!(RegionTable::parse(&f[at[1]..], at[1] as u64).unwrap(), t);
    assert_eq!((t.bat().file_offset, t.bat().length, t.bat().required), (3 * MIB, MIB as u32, true));
    assert_eq!((t.metadata().file_offset, t.metadata().length), (2 * MIB, MIB as u32));
    assert!(t.to_bytes() == f[at[0]..at[0] + 65536], "region table differs from Windows' bytes");
    // QEMU (ext2.vhdx): BAT at 2 MiB, metadata at 3 MiB, Required=0.
    let Some(f) = prefix("dfvfs/ext2.vhdx.gz", MIB as usize) else { return };
    let t = RegionTable::parse(&f[at[0]..], at[0] as u64).unwrap();
    assert_eq!((t.bat().file_offset, t.bat().required), (2 * MIB, false));
    assert_eq!((t.metadata().file_offset, t.metadata().required), (3 * MIB, false));
    assert!(t.to_bytes() == f[at[0]..at[0] + 65536], "region table differs from QEMU's bytes");
}

fn metadata(file: &[u8]) -> (DiskParameters, Option<ParentLocator>) {
    let t = RegionTable::parse(&file[0x30000..], 0x30000).unwrap();
    let m = t.metadata();
    let region = &file[m.file_offset as usize..m.end() as usize];
    let entries = parse_table(region, m.file_offset, m.length).unwrap();
    parse_items(&entries, m.file_offset, |e| Ok(region[e.offset as usize..(e.offset + e.length) as usize].to_vec()))
        .unwrap()
}

#[test]
fn metadata_of_real_images() {
    // dissect fixed.vhdx: 10 MiB, 2 MiB blocks, LeaveBlocksAllocated, 512/4096.
    let Some(f) = prefix("dissect/fixed.vhdx.gz", 4 * MIB as usize) else { return };
    let (p, loc) = metadata(&f);
    assert_eq!(
        p,
        DiskParameters {
            block_size: 2 << 20,
            leave_block_allocated: true,
            has_parent: false,
            virtual_size: 10 << 20,
            virtual_disk_id: Guid::from_u128(0x4A49D245_DB0A_4634_9818_9F93DB5BA6C1),
            logical_sector_size: 512,
            physical_sector_size: 4096,
        }
    );
    assert!(loc.is_none());
    // dfvfs ntfs-differential.vhdx: a differencing child of ntfs-parent.
    let Some(f) = prefix("dfvfs/ntfs-differential.vhdx.gz", 4 * MIB as usize) else { return };
    let (p, loc) = metadata(&f);
    assert!(p.has_parent && !p.leave_block_allocated);
    assert_eq!((p.block_size, p.virtual_size), (2 << 20, 4 << 20));
    assert_eq!(p.virtual_disk_id, Guid::from_u128(0xD62318CC_56CE_42E2_898D_16E1D1C9843E));
    let loc = loc.unwrap();
    assert_eq!(loc.parent_linkage(), Some(Guid::from_u128(0x7584F8FB_36D3_4091_AFB5_B1AFE587BFA8)));
    assert_eq!(loc.parent_linkage2(), None);
    assert_eq!(loc.get("relative_path"), Some(".\\ntfs-parent.vhdx"));
    assert_eq!(loc.get("absolute_win32_path"), Some("C:\\Projects\\dfvfs\\test_data\\ntfs-parent.vhdx"));
    let keys: alloc::vec::Vec<&String> = loc.entries.iter().map(|(k, _)| k).collect();
    assert!(keys.iter().any(|k| *k == "parent_linkage2"));
}
