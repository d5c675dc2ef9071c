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
