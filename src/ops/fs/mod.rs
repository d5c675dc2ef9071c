//! The guest's filesystems, read offline through the virtual disk: the
//! partition table, and for each partition (or the whole disk, as WSL's
//! `ext4.vhdx` is) which of its bytes its filesystem does not use — what
//! filesystem-aware compaction may give back.
//!
//! Read today: GPT and MBR tables, ext2/3/4, FAT12/16/32 and (with the
//! `ntfs` feature) NTFS. A filesystem not known
//! here, or one that is not clean, is reported as skipped with the reason,
//! and nothing in it counts as free. Bytes outside every partition (past a
//! table's partitions, between them) are free, except the table's own
//! structures (the MBR, the GPT and its backup, every extended boot record)
//! and the first MiB and last 33 sectors of a partitioned disk, where
//! tables and boot code live.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::Result;
use crate::ops::ranges::{self, Ranges};
use crate::BlockDevice;

mod ext;
mod fat;
#[cfg(feature = "ntfs")]
mod ntfs;
mod partition;

pub(crate) use partition::move_gpt_backup;
pub use partition::{read_layout, Layout, Partition, TableKind};

/// Runs of free allocation units, gathered unit by unit in order: what
/// each filesystem's bitmap or table scan hands on as `(first, count)`.
#[derive(Default)]
pub(crate) struct FreeRuns {
    runs: Vec<(u64, u64)>,
    open: Option<u64>,
}

impl FreeRuns {
    /// Unit `unit` (each one after the last) is free or not.
    pub(crate) fn mark(&mut self, unit: u64, free: bool) {
        match (free, self.open) {
            (true, None) => self.open = Some(unit),
            (false, Some(first)) => {
                self.runs.push((first, unit - first));
                self.open = None;
            }
            _ => {}
        }
    }

    /// The runs, the last closed at `end` (one past the last unit marked).
    pub(crate) fn finish(mut self, end: u64) -> Vec<(u64, u64)> {
        if let Some(first) = self.open {
            self.runs.push((first, end - first));
        }
        self.runs
    }
}

/// What a filesystem uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FsUsage {
    /// `"ext2"`, `"ext3"`, `"ext4"`, `"fat12"`, `"fat16"`, `"fat32"`, `"ntfs"`.
    pub kind: &'static str,
    /// The filesystem's size in bytes.
    pub size: u64,
    /// Bytes in use (metadata included).
    pub used: u64,
    /// Its allocation unit in bytes.
    pub block_size: u64,
    /// Its free space: byte ranges `(start, length)` from the partition's
    /// start, sorted.
    pub free: Vec<(u64, u64)>,
}

/// What was found in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Probe {
    /// A filesystem read, clean.
    Known(FsUsage),
    /// Left alone: the filesystem, when recognised, and why.
    Skipped {
        /// The filesystem, when recognised.
        kind: Option<&'static str>,
        /// Why nothing in it counts as free.
        reason: String,
    },
}

/// One partition and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionUsage {
    /// The partition.
    pub partition: Partition,
    /// Its filesystem.
    pub probe: Probe,
}

/// A disk's partitions, their filesystems, and its free space.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskUsage {
    /// The partition table.
    pub table: TableKind,
    /// Each partition (one, the whole disk, without a table).
    pub partitions: Vec<PartitionUsage>,
    /// Bytes of the disk outside every partition that hold nothing.
    pub unpartitioned: Vec<(u64, u64)>,
    /// Every free byte range of the disk, sorted: free space of the
    /// filesystems read, and the unpartitioned ranges.
    pub free: Vec<(u64, u64)>,
}

/// What the filesystem in `[start, start + len)` of `dev` is and uses.
pub fn probe(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<Probe> {
    if ext::detect(dev, start, len)? {
        return ext::examine(dev, start, len);
    }
    if fat::detect(dev, start, len)? {
        return fat::examine(dev, start, len);
    }
    #[cfg(feature = "ntfs")]
    if ntfs::detect(dev, start, len)? {
        return ntfs::examine(dev, start, len);
    }
    #[cfg(not(feature = "ntfs"))]
    if is_ntfs(dev, start, len)? {
        return Ok(Probe::Skipped {
            kind: Some("ntfs"),
            reason: String::from("NTFS is read with the `ntfs` feature, which this build lacks"),
        });
    }
    Ok(Probe::Skipped { kind: None, reason: String::from("no filesystem known here (ext2/3/4, FAT12/16/32, NTFS)") })
}

#[cfg(not(feature = "ntfs"))]
fn is_ntfs(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<bool> {
    let mut b = [0u8; 11];
    Ok(len >= 512 && {
        dev.read_at(&mut b, start)?;
        &b[3..11] == b"NTFS    "
    })
}

/// Reads the partition table of `dev` and every partition's filesystem.
///
/// A partition table that cannot be trusted is reported
/// ([`TableKind::Damaged`], the whole disk one partition left alone with
/// the table's error as the reason) and nothing counts as free; only an
/// I/O error fails.
pub fn disk_usage(dev: &dyn BlockDevice) -> Result<DiskUsage> {
    let size = dev.capacity();
    let layout = match partition::read_layout(dev) {
        Ok(l) => l,
        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
            let whole = Partition { number: 0, start: 0, length: size, type_id: String::new() };
            return Ok(DiskUsage {
                table: TableKind::Damaged,
                partitions: alloc::vec![PartitionUsage {
                    partition: whole,
                    probe: Probe::Skipped {
                        kind: None,
                        reason: alloc::format!("the partition table cannot be trusted: {e}"),
                    },
                }],
                unpartitioned: Vec::new(),
                free: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    let mut partitions = Vec::new();
    let mut free: Ranges = Vec::new();
    for p in layout.partitions {
        let probe = probe(dev, p.start, p.length)?;
        if let Probe::Known(u) = &probe {
            free.extend(u.free.iter().map(|&(s, l)| (p.start + s, l)));
        }
        partitions.push(PartitionUsage { partition: p, probe });
    }
    let unpartitioned = if layout.table == TableKind::None {
        Vec::new()
    } else {
        // The tables (and boot code) live in the first MiB and, for GPT,
        // the last 33 sectors; extended boot records wherever their chain
        // puts them: kept whatever the partitions say.
        let keep_head = (1u64 << 20).min(size);
        let keep_tail = (33 * dev.sector_size() as u64).min(size - keep_head);
        let mut kept: Ranges = partitions.iter().map(|p| (p.partition.start, p.partition.length)).collect();
        kept.extend(layout.structures.iter().copied());
        kept.push((0, keep_head));
        kept.push((size - keep_tail, keep_tail));
        ranges::difference(&[(0, size)], &ranges::normalize(kept))
    };
    free.extend(unpartitioned.iter().copied());
    Ok(DiskUsage { table: layout.table, partitions, unpartitioned, free: ranges::normalize(free) })
}

/// The smallest virtual size that keeps what the disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinimumSize {
    /// In bytes, a whole number of MiB (or the disk's size).
    pub size: u64,
    /// What ends there: `"partition 2"`, `"the ext4 filesystem"`, or why
    /// the disk cannot shrink.
    pub limited_by: String,
}

/// The smallest virtual size that keeps every partition (and, for GPT,
/// room for the backup table after the last one), or, without a table, the
/// filesystem on the whole disk; a whole number of MiB. A disk without a
/// table whose filesystem is not known keeps its whole size. Reads only the
/// table and a boot sector or superblock (`Resize-VHD -ToMinimumSize`).
pub fn minimum_size(dev: &dyn BlockDevice) -> Result<MinimumSize> {
    let size = dev.capacity();
    let layout = partition::read_layout(dev)?;
    let round = |n: u64| n.next_multiple_of(1 << 20).min(size);
    if layout.table == TableKind::None {
        return Ok(match filesystem_size(dev, size)? {
            Some((kind, n)) => MinimumSize { size: round(n), limited_by: alloc::format!("the {kind} filesystem") },
            None => MinimumSize {
                size,
                limited_by: String::from(
                    "no partition table and no filesystem known here: where its data ends is unknown",
                ),
            },
        });
    }
    let last = layout.partitions.iter().max_by_key(|p| p.start + p.length);
    let mut end = last.map_or(0, |p| p.start + p.length);
    let mut limited_by =
        last.map_or_else(|| String::from("the partition table"), |p| alloc::format!("partition {}", p.number));
    if layout.table == TableKind::Gpt {
        // The primary table lies before the partitions; the backup (its
        // entries and a header) goes after the last one.
        end = end.max(34 * dev.sector_size() as u64) + partition::gpt_backup_len(dev)?;
    } else {
        // An MBR's extended boot records may lie past every partition.
        for &(s, l) in &layout.structures {
            if s + l > end {
                end = s + l;
                limited_by = String::from("the partition table");
            }
        }
    }
    Ok(MinimumSize { size: round(end), limited_by })
}

/// The filesystem on a disk without a table, and its size in bytes.
fn filesystem_size(dev: &dyn BlockDevice, size: u64) -> Result<Option<(&'static str, u64)>> {
    if size < 4096 {
        return Ok(None);
    }
    let mut b = alloc::vec![0u8; 2048];
    dev.read_at(&mut b, 0)?;
    let le = |at: usize, n: usize| b[at..at + n].iter().rev().fold(0u64, |v, &x| v << 8 | x as u64);
    if le(1024 + 56, 2) == 0xEF53 {
        let log = le(1024 + 24, 4);
        let blocks = le(1024 + 4, 4) | if le(1024 + 96, 4) & 0x80 != 0 { le(1024 + 336, 4) << 32 } else { 0 };
        if log <= 6 {
            return Ok(Some(("ext", blocks.saturating_mul(1024 << log))));
        }
    }
    if fat::is_boot_sector(&b[..512]) {
        let total = if le(19, 2) != 0 { le(19, 2) } else { le(32, 4) };
        return Ok(Some(("FAT", total.saturating_mul(le(11, 2)))));
    }
    if &b[3..11] == b"NTFS    " {
        // The sectors of the volume, then its backup boot sector.
        let bps = le(11, 2);
        return Ok(Some(("NTFS", le(0x28, 8).saturating_add(1).saturating_mul(bps))));
    }
    Ok(None)
}
