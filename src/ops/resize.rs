//! Resizing an image file by path (see [`crate::Disk::resize`] for what it
//! does to an open disk), minding the differencing disks made from it.
//!
//! A resize changes what the image presents, so its DataWriteGuid changes
//! and its children — which link to the old one — no longer open. Unless
//! told to break them, [`resize`] looks for children in the image's
//! directory (and any directories given), as a merge looks for siblings,
//! and refuses, naming them, before anything changes. A differencing
//! disk's own resize is no different: what matters is who depends on it.

use alloc::string::{String, ToString};
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::merge::{children_of, directory_of};
use crate::error::{Error, Result};
use crate::Disk;

/// Options of [`resize`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ResizeOptions {
    /// Shrink even when the removed range holds data (which is discarded).
    pub allow_shrink: bool,
    /// Resize even though children of the image then no longer open.
    pub break_children: bool,
    /// More directories to search for children (besides the image's own).
    pub search_dirs: Vec<PathBuf>,
}

crate::setters!(ResizeOptions {
    allow_shrink: bool,
    break_children: bool,
    search_dirs: Vec<PathBuf>,
});

/// What [`resize`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResizeReport {
    /// The virtual size before.
    pub old_size: u64,
    /// The virtual size after.
    pub new_size: u64,
    /// Where the BAT moved to, when it needed a larger region: (file offset, length).
    pub bat_moved_to: Option<(u64, u64)>,
    /// The children found, which no longer open (with `break_children`).
    pub children_broken: Vec<PathBuf>,
}

/// Changes the virtual size of the image at `path` to `new_size` bytes.
/// Refused ([`Error::Refused`], nothing changed) when differencing disks in
/// its directory (or `options.search_dirs`) are made from it, unless
/// `options.break_children`; and, as [`Disk::resize`] refuses it, a shrink
/// that would discard data unless `options.allow_shrink`. Crash-safe
/// through the log: an interrupted resize leaves the old size or the new
/// one, and running it again finishes it.
///
/// ```no_run
/// use vhdx::ops::resize::{resize, ResizeOptions};
/// let report = resize("disk.vhdx".as_ref(), 20 << 30, &ResizeOptions::default())?;
/// println!("{} -> {} bytes", report.old_size, report.new_size);
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn resize(path: &Path, new_size: u64, options: &ResizeOptions) -> Result<ResizeReport> {
    resize_open(path, Disk::open_writable(path)?, |_| Ok(new_size), options)
}

/// Shrinks the image at `path` to the smallest size that keeps every
/// partition, or the filesystem on a disk without a table
/// ([`crate::ops::fs::minimum_size`]), as `Resize-VHD -ToMinimumSize` does.
/// A GPT's backup table moves to the new end first (crash-safe: the new
/// backup is durable before the primary header names it). Refused, with
/// nothing changed, when what the disk holds reaches its end already; the
/// bytes past the minimum are not checked for zeros (the table says nothing
/// lives there), so `allow_shrink` is implied. Children are refused as for
/// [`resize`].
pub fn resize_to_minimum(path: &Path, options: &ResizeOptions) -> Result<ResizeReport> {
    let options = ResizeOptions { allow_shrink: true, ..options.clone() };
    resize_open(
        path,
        Disk::open_writable(path)?,
        |disk| {
            let min = crate::ops::fs::minimum_size(&*disk)?;
            if min.size >= disk.virtual_size() {
                return Err(Error::Refused(std::format!(
                    "it cannot shrink: {} reaches the end of the disk ({} bytes); shrink it first; nothing was changed",
                    min.limited_by,
                    disk.virtual_size()
                )));
            }
            Ok(min.size)
        },
        &options,
    )
}

/// The body of [`resize`]: the children checked (before anything changes),
/// then the disk resized to what `size` says.
fn resize_open(
    path: &Path,
    mut disk: Disk,
    size: impl FnOnce(&mut Disk) -> Result<u64>,
    options: &ResizeOptions,
) -> Result<ResizeReport> {
    let in_file = |e: Error| e.in_file(path.display());
    let old_size = disk.virtual_size();
    let old_bat = disk.regions().bat();
    let new_size = size(&mut disk).map_err(in_file)?;
    let mut children = Vec::new();
    if new_size != old_size {
        let mut dirs = std::vec![directory_of(path)];
        dirs.extend(options.search_dirs.iter().cloned());
        children = children_of(path, disk.data_write_guid(), &dirs, &[]);
        if !children.is_empty() && !options.break_children {
            let names: Vec<String> = children.iter().map(|c| c.display().to_string()).collect();
            return Err(in_file(Error::Refused(std::format!(
                "differencing disks are made from this image and would no longer open after a resize (their \
                 parent's DataWriteGuid changes): {}; nothing was changed",
                names.join(", ")
            ))));
        }
    }
    // A GPT's backup table moves to the new end (sgdisk -e does the same),
    // or the shrink is refused when that end would cut a partition. A table
    // that cannot be read is left as it is: the disk may hold anything.
    let gpt = new_size < old_size
        && crate::ops::fs::read_layout(&disk).is_ok_and(|l| l.table == crate::ops::fs::TableKind::Gpt);
    if gpt {
        crate::ops::fs::move_gpt_backup(&mut disk, new_size).map_err(in_file)?;
    }
    disk.resize(new_size, options.allow_shrink).map_err(in_file)?;
    let new_bat = disk.regions().bat();
    disk.close().map_err(in_file)?;
    Ok(ResizeReport {
        old_size,
        new_size,
        bat_moved_to: (new_bat != old_bat).then_some((new_bat.file_offset, new_bat.length as u64)),
        children_broken: children,
    })
}
