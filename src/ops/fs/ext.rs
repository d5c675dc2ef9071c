//! ext2, ext3 and ext4: which blocks the filesystem does not use, from its
//! block-group bitmaps, read offline through the virtual disk.
//!
//! The superblock (at byte 1024 of the filesystem) gives the block and
//! group sizes and the features; the group descriptors (32 bytes, or
//! `s_desc_size` with `64bit`) give each group's block bitmap, inode bitmap
//! and inode table, wherever `flex_bg` put them, and its flags. A group
//! flagged `BLOCK_UNINIT` has no bitmap on disk: its used blocks are its
//! superblock and descriptor backup (where `sparse_super`/`sparse_super2`
//! keep one) and the bitmaps and inode tables of any group that lie in it,
//! as the kernel computes them.
//!
//! Only a clean filesystem is read: cleanly unmounted (`s_state` valid, no
//! error, no orphan recovery), no journal waiting for recovery
//! (`needs_recovery`), and only features whose layout is known here;
//! anything else is left alone with the reason. Every group's count of
//! free blocks found is compared with its descriptor's count: a difference
//! (a filesystem not checked since a crash) leaves it alone too.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{FreeRuns, FsUsage, Probe};
use crate::error::Result;
use crate::ops::ranges::{self, Ranges};
use crate::BlockDevice;

const MAGIC: u16 = 0xEF53;

// s_feature_compat
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
// s_feature_incompat
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
/// Whose layout of bitmaps and descriptors is known here: filetype, extents,
/// 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir,
/// inline_data, encrypt, casefold.
const INCOMPAT_KNOWN: u32 =
    0x2 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;
// s_feature_ro_compat
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// Known: sparse_super, large_file, btree_dir, huge_file, gdt_csum,
/// dir_nlink, extra_isize, quota, metadata_csum, readonly, project,
/// verity, orphan_present.
const RO_COMPAT_KNOWN: u32 =
    0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x400 | 0x1000 | 0x2000 | 0x8000 | 0x10000;
// bg_flags
const BG_BLOCK_UNINIT: u16 = 0x2;

/// The most groups read (128 TiB of 4 KiB blocks): bounds the memory the
/// metadata list takes.
const MAX_GROUPS: u64 = 1 << 20;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether the superblock at byte 1024 of `[start, start + len)` is ext's.
pub(crate) fn detect(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<bool> {
    if len < 2048 {
        return Ok(false);
    }
    let mut magic = [0u8; 2];
    dev.read_at(&mut magic, start + 1024 + 56)?;
    Ok(u16::from_le_bytes(magic) == MAGIC)
}

/// One group's descriptor, as far as used here.
struct Group {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free: u64,
    flags: u16,
}

/// Whether group `g` holds a superblock and descriptor backup.
fn has_backup(g: u64, ro_compat: u32, compat: u32, backup_bgs: [u32; 2]) -> bool {
    if g == 0 {
        return true;
    }
    if compat & COMPAT_SPARSE_SUPER2 != 0 {
        return g == backup_bgs[0] as u64 || g == backup_bgs[1] as u64;
    }
    if ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// The free space of the ext filesystem in `[start, start + len)`, as byte
/// ranges from `start`; or why it is left alone.
pub(crate) fn examine(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<Probe> {
    let skip = |kind: &'static str, reason: String| Ok(Probe::Skipped { kind: Some(kind), reason });
    let mut sb = vec![0u8; 1024];
    dev.read_at(&mut sb, start + 1024)?;
    let compat = le32(&sb, 92);
    let incompat = le32(&sb, 96);
    let ro_compat = le32(&sb, 100);
    let kind = if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0 {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let state = le16(&sb, 58);
    if incompat & INCOMPAT_RECOVER != 0 {
        return skip(kind, String::from("its journal needs recovery (needs_recovery): mount it or run e2fsck first"));
    }
    if state & 1 == 0 || state & 2 != 0 || state & 4 != 0 {
        return skip(
            kind,
            format!("it is not clean (state {state:#x}: in use, or errors found): unmount it or run e2fsck first"),
        );
    }
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return skip(kind, String::from("it is an external journal device"));
    }
    if incompat & INCOMPAT_META_BG != 0 {
        return skip(kind, String::from("meta_bg descriptors are not read here yet"));
    }
    if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return skip(kind, String::from("bigalloc cluster bitmaps are not read here yet"));
    }
    if incompat & !INCOMPAT_KNOWN != 0 || ro_compat & !RO_COMPAT_KNOWN != 0 {
        return skip(
            kind,
            format!("it uses features not known here (incompat {incompat:#x}, ro_compat {ro_compat:#x})"),
        );
    }
    let log_block = le32(&sb, 24);
    if log_block > 6 {
        return skip(kind, format!("block size 1024 << {log_block} is not one ext uses"));
    }
    let bs = 1024u64 << log_block;
    let blocks = le32(&sb, 4) as u64 | if incompat & INCOMPAT_64BIT != 0 { (le32(&sb, 336) as u64) << 32 } else { 0 };
    let first_data = le32(&sb, 20) as u64;
    let per_group = le32(&sb, 32) as u64;
    let inodes_per_group = le32(&sb, 40) as u64;
    let inode_size = if le32(&sb, 76) == 0 { 128 } else { le16(&sb, 88) as u64 };
    let desc_size = if incompat & INCOMPAT_64BIT != 0 { le16(&sb, 254) as u64 } else { 32 };
    let reserved_gdt = le16(&sb, 206) as u64;
    let backup_bgs = [le32(&sb, 0x24C), le32(&sb, 0x250)];
    let bad = |what: String| skip(kind, format!("its superblock is not consistent: {what}"));
    if blocks == 0 || blocks.checked_mul(bs).is_none_or(|b| b > len) {
        return bad(format!("{blocks} blocks of {bs} bytes do not fit in the {len}-byte partition"));
    }
    if per_group < 8 || per_group > 8 * bs || per_group % 8 != 0 {
        return bad(format!("{per_group} blocks per group"));
    }
    if first_data != u64::from(bs == 1024) {
        return bad(format!("first data block {first_data}"));
    }
    if !(32..=bs).contains(&desc_size) || !desc_size.is_power_of_two() || !(128..=bs).contains(&inode_size) {
        return bad(format!("descriptor size {desc_size}, inode size {inode_size}"));
    }
    let groups = (blocks - first_data).div_ceil(per_group);
    if groups > MAX_GROUPS {
        return skip(kind, format!("{groups} block groups: more than this reader takes"));
    }
    // Each descriptor, read a block at a time.
    let gdt_at = (first_data + 1) * bs;
    let gdt_blocks = (groups * desc_size).div_ceil(bs);
    let per_block = bs / desc_size;
    let mut table = Vec::with_capacity(groups as usize);
    let mut block = vec![0u8; bs as usize];
    for b in 0..gdt_blocks {
        dev.read_at(&mut block, start + gdt_at + b * bs)?;
        for i in 0..per_block {
            if table.len() as u64 == groups {
                break;
            }
            let d = &block[(i * desc_size) as usize..((i + 1) * desc_size) as usize];
            let hi = |at: usize| if desc_size >= 64 { le32(d, at) as u64 } else { 0 };
            let hi16 = |at: usize| if desc_size >= 64 { le16(d, at) as u64 } else { 0 };
            table.push(Group {
                block_bitmap: le32(d, 0) as u64 | hi(0x20) << 32,
                inode_bitmap: le32(d, 4) as u64 | hi(0x24) << 32,
                inode_table: le32(d, 8) as u64 | hi(0x28) << 32,
                free: le16(d, 12) as u64 | hi16(0x2C) << 16,
                flags: le16(d, 18),
            });
        }
    }
    // Every group's bitmaps and inode table, wherever they are.
    let itable_blocks = (inodes_per_group * inode_size).div_ceil(bs);
    let mut metadata: Ranges = Vec::with_capacity(table.len() * 3);
    for (g, d) in table.iter().enumerate() {
        for (what, at, n) in [
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, itable_blocks),
        ] {
            if at < first_data || at.checked_add(n).is_none_or(|e| e > blocks) {
                return bad(format!("group {g}'s {what} at block {at} lies outside the filesystem"));
            }
            metadata.push((at, n));
        }
    }
    let metadata = ranges::normalize(metadata);
    let uninit_valid = ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
    let backup_blocks = 1 + gdt_blocks + reserved_gdt;
    let mut free: Ranges = Vec::new();
    let mut free_total = 0u64;
    for (g, d) in table.iter().enumerate() {
        let g = g as u64;
        let first = first_data + g * per_group;
        let count = per_group.min(blocks - first);
        let group_free: Ranges = if uninit_valid && d.flags & BG_BLOCK_UNINIT != 0 {
            let mut used: Ranges = Vec::new();
            if has_backup(g, ro_compat, compat, backup_bgs) {
                used.push((first, backup_blocks.min(count)));
            }
            let lo = metadata.partition_point(|&(s, l)| s + l <= first);
            for &(s, l) in metadata[lo..].iter().take_while(|&&(s, _)| s < first + count) {
                let (a, b) = (s.max(first), (s + l).min(first + count));
                used.push((a, b - a));
            }
            ranges::difference(&[(first, count)], &ranges::normalize(used))
        } else {
            dev.read_at(&mut block, start + d.block_bitmap * bs)?;
            let mut runs = FreeRuns::default();
            for i in 0..count {
                runs.mark(first + i, block[(i / 8) as usize] >> (i % 8) & 1 == 0);
            }
            runs.finish(first + count)
        };
        let found: u64 = group_free.iter().map(|&(_, l)| l).sum();
        if found != d.free {
            return skip(
                kind,
                format!("group {g}'s bitmap shows {found} free blocks, its descriptor {}: run e2fsck -f first", d.free),
            );
        }
        free_total += found;
        free.extend(group_free.into_iter().map(|(s, l)| (s * bs, l * bs)));
    }
    let size = blocks * bs;
    Ok(Probe::Known(FsUsage {
        kind,
        size,
        used: size - free_total * bs,
        block_size: bs,
        free: ranges::normalize(free),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_backups_are_in_groups_0_1_and_powers_of_3_5_7() {
        let with: Vec<u64> = (0..100).filter(|&g| has_backup(g, RO_COMPAT_SPARSE_SUPER, 0, [0, 0])).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
        assert!(has_backup(42, 0, 0, [0, 0]), "without sparse_super every group has one");
        let two: Vec<u64> = (0..100).filter(|&g| has_backup(g, 0, COMPAT_SPARSE_SUPER2, [1, 77])).collect();
        assert_eq!(two, [0, 1, 77]);
    }
}
