//! Compacting an image file by path (see [`crate::Disk::compact`] for what
//! it does to an open disk).

use std::path::Path;

use crate::error::Result;
use crate::{CompactReport, Disk};

/// Compacts the image at `path` in place: blocks holding only zeros (and
/// discarded ones) stop being stored, blocks at the end of the file move
/// into the holes, and the file is truncated. What the disk presents is
/// unchanged; a differencing disk is opened with its chain (its parent
/// tells which blocks may be left to it).
///
/// ```no_run
/// let report = vhdx::ops::compact::compact("disk.vhdx".as_ref())?;
/// println!("{} -> {} bytes", report.file_size_before, report.file_size_after);
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn compact(path: &Path) -> Result<CompactReport> {
    compact_with_progress(path, &mut |_, _| {})
}

/// [`compact`], calling `progress(done, total)` as it goes (bytes scanned
/// and moved; the total is an estimate that may grow).
pub fn compact_with_progress(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<CompactReport> {
    let mut disk = Disk::open_writable(path)?;
    let report = disk.compact_with_progress(progress).map_err(|e| e.in_file(path.display()))?;
    disk.close().map_err(|e| e.in_file(path.display()))?;
    Ok(report)
}

/// Whether compaction reads the guest's filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FilesystemMode {
    /// Read the partition table and every filesystem known
    /// ([`crate::ops::fs`]), and release the blocks in their free space and
    /// outside every partition (see [`crate::Disk::compact_free_with_progress`]).
    #[default]
    Auto,
    /// Release only blocks that hold zeros.
    None,
}

/// Options of [`compact_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CompactOptions {
    /// Whether the guest's filesystems are read.
    pub filesystem: FilesystemMode,
    /// Change nothing: say what would be released.
    pub dry_run: bool,
}

crate::setters!(CompactOptions { filesystem: FilesystemMode, dry_run: bool });

/// What [`compact_with`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FilesystemCompactReport {
    /// The partitions and filesystems found (`None` with
    /// [`FilesystemMode::None`]).
    pub usage: Option<crate::ops::fs::DiskUsage>,
    /// The image's block size.
    pub block_size: u64,
    /// Stored blocks in free space (wholly, or partly with the rest reading
    /// as zeros): released, or with `dry_run` what would be.
    pub blocks_in_free_space: u64,
    /// Of those, per partition of `usage` (in its order): the blocks that
    /// start in it.
    pub blocks_per_partition: std::vec::Vec<u64>,
    /// Differencing disks made from this one, found in its directory: with
    /// any, the filesystems' free space is kept (releasing it would change
    /// what they read, and give this disk a new DataWriteGuid, which they
    /// would refuse), and only all-zero blocks go.
    pub children: std::vec::Vec<std::path::PathBuf>,
    /// The compaction (`None` with `dry_run`).
    pub compact: Option<CompactReport>,
}

/// Compacts the image at `path` as [`compact`] does, and first reads the
/// guest's filesystems (unless [`FilesystemMode::None`]): every stored
/// block that lies wholly in their free space, or outside every partition,
/// is released whatever it holds, and so is one partly there whose other
/// bytes read as zeros (a filesystem not known, or not clean, keeps all
/// its blocks). Read through the disk's chain, changed through
/// the log: crash-safe as every compaction. Releasing free space changes
/// what the disk presents there, so it takes a new DataWriteGuid; when
/// differencing disks made from it are found in its directory, the free
/// space is kept instead ([`FilesystemCompactReport::children`]). With
/// `dry_run` the image is opened read-only and nothing changes.
///
/// ```no_run
/// use vhdx::ops::compact::{compact_with, CompactOptions};
/// let r = compact_with("ext4.vhdx".as_ref(), &CompactOptions::default(), &mut |_, _| {})?;
/// println!("{} blocks of free space released", r.blocks_in_free_space);
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn compact_with(
    path: &Path,
    options: &CompactOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<FilesystemCompactReport> {
    let mut disk = if options.dry_run { Disk::open(path)? } else { Disk::open_writable(path)? };
    let in_file = |e: crate::Error| e.in_file(path.display());
    let usage = match options.filesystem {
        FilesystemMode::Auto => Some(crate::ops::fs::disk_usage(&disk).map_err(in_file)?),
        FilesystemMode::None => None,
    };
    // Children read this disk's free space through it, and releasing it
    // gives the disk a new DataWriteGuid: with children, it is kept.
    let children = match usage {
        Some(_) => {
            crate::ops::merge::children_of(path, disk.data_write_guid(), &[crate::ops::merge::directory_of(path)], &[])
        }
        None => std::vec::Vec::new(),
    };
    let free: &[(u64, u64)] = match &usage {
        Some(u) if children.is_empty() => &u.free,
        _ => &[],
    };
    let block_size = disk.block_size() as u64;
    // Each releasable block, by its start: the partition it starts in has it.
    let starts = disk.releasable_blocks(free).map_err(in_file)?;
    let blocks_in_free_space = starts.len() as u64;
    let blocks_per_partition: std::vec::Vec<u64> = usage
        .iter()
        .flat_map(|u| u.partitions.iter())
        .map(|p| {
            let (start, end) = (p.partition.start, p.partition.start + p.partition.length);
            starts.iter().filter(|&&b| start <= b && b < end).count() as u64
        })
        .collect();
    let compact = if options.dry_run {
        None
    } else {
        let r = disk.compact_free_with_progress(free, progress).map_err(in_file)?;
        disk.close().map_err(in_file)?;
        Some(r)
    };
    Ok(FilesystemCompactReport { usage, block_size, blocks_in_free_space, blocks_per_partition, children, compact })
}
