//! FAT12, FAT16 and FAT32: which clusters the filesystem does not use, from
//! its file allocation table, read offline through the virtual disk.
//!
//! The boot sector's BIOS parameter block gives the sector and cluster
//! sizes, the reserved sectors, the FATs and (FAT12/16) the root directory;
//! the cluster count decides the FAT's type, as the specification says. A
//! cluster whose entry is 0 is free. Only a clean filesystem is read: the
//! clean-shutdown and no-error bits of FAT16/FAT32's second entry set, the
//! boot sector's dirty bit clear, and every copy of the FAT the same (a
//! crash between two copies' updates leaves them different); anything else
//! is left alone with the reason.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{FreeRuns, FsUsage, Probe};
use crate::error::Result;
use crate::ops::ranges;
use crate::BlockDevice;

fn le16(b: &[u8], at: usize) -> u32 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u32
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The BIOS parameter block, checked.
struct Bpb {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved: u64,
    fats: u64,
    fat_sectors: u64,
    root_sectors: u64,
    total_sectors: u64,
    /// FAT32's active FAT, when mirroring is off.
    active: Option<u64>,
    /// The boot sector's dirty flag (byte 37, or 65 on FAT32).
    dirty_flag: bool,
}

fn bpb(b: &[u8]) -> Option<Bpb> {
    if !(b[0] == 0xEB || b[0] == 0xE9) || b[510] != 0x55 || b[511] != 0xAA {
        return None;
    }
    let bytes_per_sector = le16(b, 11) as u64;
    let sectors_per_cluster = b[13] as u64;
    let reserved = le16(b, 14) as u64;
    let fats = b[16] as u64;
    let root_entries = le16(b, 17) as u64;
    let total16 = le16(b, 19) as u64;
    let fat16 = le16(b, 22) as u64;
    let total32 = le32(b, 32) as u64;
    let fat32 = le32(b, 36) as u64;
    if !(512..=4096).contains(&bytes_per_sector)
        || !bytes_per_sector.is_power_of_two()
        || sectors_per_cluster == 0
        || !sectors_per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
    {
        return None;
    }
    let fat_sectors = if fat16 != 0 { fat16 } else { fat32 };
    let total_sectors = if total16 != 0 { total16 } else { total32 };
    if fat_sectors == 0 || total_sectors == 0 {
        return None;
    }
    let is32 = fat16 == 0;
    let ext_flags = le16(b, 40);
    let active = (is32 && ext_flags & 0x80 != 0).then_some((ext_flags & 0xF) as u64);
    let dirty_flag = b[if is32 { 65 } else { 37 }] & 1 != 0;
    Some(Bpb {
        bytes_per_sector,
        sectors_per_cluster,
        reserved,
        fats,
        fat_sectors,
        root_sectors: (root_entries * 32).div_ceil(bytes_per_sector),
        total_sectors,
        active,
        dirty_flag,
    })
}

/// Whether the 512 bytes `b` are a FAT boot sector (its BIOS parameter
/// block consistent).
pub(crate) fn is_boot_sector(b: &[u8]) -> bool {
    b.len() >= 512 && bpb(b).is_some()
}

/// Whether `[start, start + len)` begins with a FAT boot sector.
pub(crate) fn detect(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<bool> {
    if len < 512 {
        return Ok(false);
    }
    let mut b = vec![0u8; 512];
    dev.read_at(&mut b, start)?;
    // NTFS and exFAT also begin with a jump and end in 55 AA: their OEM
    // names say so, and their BPBs have no FAT size.
    if &b[3..11] == b"NTFS    " || &b[3..11] == b"EXFAT   " {
        return Ok(false);
    }
    Ok(bpb(&b).is_some())
}

/// The free space of the FAT filesystem in `[start, start + len)`, as byte
/// ranges from `start`; or why it is left alone.
pub(crate) fn examine(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<Probe> {
    let mut b = vec![0u8; 512];
    dev.read_at(&mut b, start)?;
    let Some(p) = bpb(&b) else {
        return Ok(Probe::Skipped { kind: Some("fat"), reason: String::from("its boot sector is not consistent") });
    };
    let bps = p.bytes_per_sector;
    let first_data = p.reserved + p.fats * p.fat_sectors + p.root_sectors;
    let bad = |reason: String| Ok(Probe::Skipped { kind: Some("fat"), reason });
    if p.total_sectors.checked_mul(bps).is_none_or(|size| size > len) || first_data >= p.total_sectors {
        return bad(format!(
            "its boot sector describes {} sectors of {bps} bytes, more than the {len}-byte partition",
            p.total_sectors
        ));
    }
    let clusters = (p.total_sectors - first_data) / p.sectors_per_cluster;
    let (kind, bits) = match clusters {
        0..=4084 => ("fat12", 12),
        4085..=65524 => ("fat16", 16),
        _ => ("fat32", 32),
    };
    let skip = |reason: String| Ok(Probe::Skipped { kind: Some(kind), reason });
    let fat_bytes = p.fat_sectors * bps;
    let needed = (clusters + 2) * bits / 8 + 1;
    if fat_bytes < needed {
        return skip(format!("its FAT ({fat_bytes} bytes) is too small for {clusters} clusters"));
    }
    // Every copy of the FAT, and they must agree (the active one alone with
    // FAT32 mirroring off).
    let copies: Vec<u64> = match p.active {
        Some(a) if a < p.fats => vec![a],
        Some(a) => return skip(format!("its active FAT is number {a} of {}", p.fats)),
        None => (0..p.fats).collect(),
    };
    let mut fat = vec![0u8; needed as usize];
    let mut other = vec![0u8; needed as usize];
    for (i, &c) in copies.iter().enumerate() {
        let at = start + (p.reserved + c * p.fat_sectors) * bps;
        if i == 0 {
            dev.read_at(&mut fat, at)?;
        } else {
            dev.read_at(&mut other, at)?;
            if other != fat {
                return skip(format!("its FAT copies differ (copy {c} from copy {}): run fsck.fat first", copies[0]));
            }
        }
    }
    let entry = |n: u64| -> u32 {
        match bits {
            12 => {
                let at = (n * 3 / 2) as usize;
                let v = u16::from_le_bytes([fat[at], fat[at + 1]]) as u32;
                if n % 2 == 0 {
                    v & 0xFFF
                } else {
                    v >> 4
                }
            }
            16 => le16(&fat, (n * 2) as usize),
            _ => le32(&fat, (n * 4) as usize) & 0x0FFF_FFFF,
        }
    };
    if p.dirty_flag {
        return skip(String::from("its boot sector says it is dirty (not cleanly unmounted): run fsck.fat first"));
    }
    let second = entry(1);
    let (clean, no_error) = match bits {
        16 => (0x8000, 0x4000),
        32 => (0x0800_0000, 0x0400_0000),
        _ => (0, 0),
    };
    if second & clean != clean || second & no_error != no_error {
        return skip(format!("its FAT says it is not clean (entry 1 is {second:#x}): run fsck.fat first"));
    }
    let cluster_bytes = p.sectors_per_cluster * bps;
    let data_at = first_data * bps;
    let mut runs = FreeRuns::default();
    for c in 2..clusters + 2 {
        runs.mark(c, entry(c) == 0);
    }
    let runs = runs.finish(clusters + 2);
    let free_clusters: u64 = runs.iter().map(|&(_, n)| n).sum();
    let free: Vec<(u64, u64)> =
        runs.into_iter().map(|(c, n)| (data_at + (c - 2) * cluster_bytes, n * cluster_bytes)).collect();
    let size = p.total_sectors * bps;
    Ok(Probe::Known(FsUsage {
        kind,
        size,
        used: size - free_clusters * cluster_bytes,
        block_size: cluster_bytes,
        free: ranges::normalize(free),
    }))
}
