//! Change sets, and merging several sibling differencing disks into their
//! parent at once (profile-container write-back).

use alloc::format;
use core::ffi::c_char;

use core::mem::size_of;

use super::disk::VhdxDisk;
use super::error::{Failure, VHDX_OK};
use super::ptr::{array_out_arg, disk_arg, fill_array, init_struct, out_struct, read_struct, SizedStruct};
use super::strings::{parent_search_args, path_arg, path_list_arg};
use crate::ops::siblings::{plan_merge_siblings, SiblingMergeOptions, SiblingMergeReport};

/// A range of the virtual disk, in bytes. Ranges from this library always
/// start and end on a logical sector boundary: divide by the logical sector
/// size (vhdx_logical_sector_size) for sector numbers.
///
/// A plain value in arrays the caller allocates, so it has no
/// `struct_size`: its layout never changes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxRange {
    /// Virtual byte offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The disk's change set: the ranges of the virtual disk it determines
/// itself instead of its parent, read from its block table and sector
/// bitmaps (every sector of a fully present block, the sectors whose bitmap
/// bit is set in a partially present one, blocks that read as zeros). They
/// come sorted, disjoint and never touching. A disk without a parent holds
/// the whole disk (one range). The parent is not needed: a differencing disk
/// opened with VhdxOpenOptions.without_parent answers the same.
///
/// Protocol: `*count` receives the number of ranges; the first
/// min(`cap`, `*count`) are written to `ranges`. So call once with `ranges`
/// NULL and `cap` 0 to learn the count, then again with room for it; a
/// `*count` greater than `cap` means the list was cut short.
///
/// Returns VHDX_OK, or VHDX_ERR_INVALID_ARGUMENT when `disk` or `count` is
/// NULL or `ranges` is NULL with `cap` > 0, or the error reading the disk's
/// metadata.
///
/// Ownership: `ranges` and `count` are the caller's. Thread safety: may run
/// in parallel with reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle; `ranges` is NULL with `cap == 0` or
/// points to `cap` writable VhdxRange; `count` is NULL or points to a
/// writable size_t.
#[no_mangle]
pub unsafe extern "C" fn vhdx_change_set(
    disk: *const VhdxDisk,
    ranges: *mut VhdxRange,
    cap: usize,
    count: *mut usize,
) -> i32 {
    ffi!("vhdx_change_set", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_change_set", disk)? };
        if count.is_null() {
            return Err(Failure::null("vhdx_change_set", "count"));
        }
        array_out_arg("vhdx_change_set", "ranges", ranges, cap, "cap")?;
        let set = d.read()?.vhdx("vhdx_change_set")?.change_set().map_err(|e| d.fail(e))?;
        // SAFETY: checked above; the caller promises `cap` writable entries.
        unsafe { fill_array(ranges, cap, set.iter().map(|&(offset, length)| VhdxRange { offset, length })) };
        // SAFETY: non-NULL, and the caller promises a writable size_t.
        unsafe { count.write(set.len()) };
        Ok(VHDX_OK)
    })
}

/// Options of vhdx_merge_siblings. Initialise with
/// `vhdx_sibling_merge_options_init(&options, sizeof options)` (no
/// preferred child, not a dry run, no extra or confining directories).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VhdxSiblingMergeOptions {
    /// sizeof(VhdxSiblingMergeOptions), set by vhdx_sibling_merge_options_init.
    pub struct_size: u32,
    /// The child whose bytes win in the conflicts it takes part in: one of
    /// the children's paths (compared as files), or NULL for none, when any
    /// conflict refuses the merge. Read during the call.
    pub prefer: *const c_char,
    /// Plan and report only; modify nothing.
    pub dry_run: bool,
    /// More directories to search for the other children of the parent
    /// (and of the children), which are preserved; the directories of the
    /// parent and of every child are always searched. An array of
    /// `search_dir_count` NUL-terminated paths, read during the call.
    pub search_dirs: *const *const c_char,
    /// The number of entries of `search_dirs`.
    pub search_dir_count: usize,
    /// When `confine_dir_count` > 0, parents are resolved only inside these
    /// directories, as VhdxOpenOptions.parent_search_dirs does: for images
    /// from untrusted sources. An array of NUL-terminated paths.
    pub confine_dirs: *const *const c_char,
    /// The number of entries of `confine_dirs` (0: resolve anywhere).
    pub confine_dir_count: usize,
}

impl Default for VhdxSiblingMergeOptions {
    fn default() -> Self {
        VhdxSiblingMergeOptions {
            struct_size: size_of::<VhdxSiblingMergeOptions>() as u32,
            prefer: core::ptr::null(),
            dry_run: false,
            search_dirs: core::ptr::null(),
            search_dir_count: 0,
            confine_dirs: core::ptr::null(),
            confine_dir_count: 0,
        }
    }
}

/// Sectors held by several children whose bytes there are not all equal.
///
/// A plain value in arrays the caller allocates, so it has no
/// `struct_size`: its layout never changes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxConflict {
    /// Virtual byte offset of the first sector.
    pub offset: u64,
    /// Length in bytes (whole logical sectors).
    pub length: u64,
    /// The children holding these sectors: bit i set for `children[i]`.
    pub children: u64,
    /// The index of the child whose bytes win (the preferred one), or -1:
    /// unresolved, so the merge is refused.
    pub winner: i32,
}

/// What vhdx_merge_siblings did, or in a dry run or a refusal, would do.
/// Set `struct_size` before the call:
/// `VhdxSiblingMergeReport r = { .struct_size = sizeof r };`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxSiblingMergeReport {
    /// sizeof(VhdxSiblingMergeReport), set by the caller; left as it is.
    pub struct_size: u32,
    /// Bytes written into the parent: the union of the children's change sets.
    pub bytes_merged: u64,
    /// Bytes copied into the other children of the parent (and children of
    /// the merged children) so that they keep presenting the same bytes.
    pub bytes_preserved: u64,
    /// How many images were preserved that way.
    pub preserved_images: u32,
    /// Conflicting ranges, resolved or not (all of them, even when more than
    /// the `conflict_cap` given).
    pub conflicts: u64,
    /// Conflicting ranges without a winner: while there are any, the merge is refused.
    pub unresolved_conflicts: u64,
    /// Bytes in conflict.
    pub conflicting_bytes: u64,
    /// Whether the merge was carried out.
    pub merged: bool,
}

// SAFETY: repr(C), `struct_size: u32` first; nullable pointers, a bool and
// counts.
unsafe impl SizedStruct for VhdxSiblingMergeOptions {
    const NAME: &'static str = "VhdxSiblingMergeOptions";
    const OLDEST: usize = size_of::<VhdxSiblingMergeOptions>();
}

// SAFETY: repr(C), `struct_size: u32` first, integers and a bool.
unsafe impl SizedStruct for VhdxSiblingMergeReport {
    const NAME: &'static str = "VhdxSiblingMergeReport";
    const OLDEST: usize = size_of::<VhdxSiblingMergeReport>();
}

/// Sets `*options` to the defaults: no preferred child, not a dry run, no
/// extra search directories, parents resolved anywhere; and `struct_size`
/// to `struct_size`, which is `sizeof *options` as the caller was compiled.
/// Returns VHDX_OK, or VHDX_ERR_INVALID_ARGUMENT when `options` is NULL or
/// `struct_size` is not a size of VhdxSiblingMergeOptions this library
/// knows (nothing is written).
///
/// Ownership: `options` is the caller's. Thread safety: safe from any thread.
///
/// # Safety
/// `options` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_sibling_merge_options_init(
    options: *mut VhdxSiblingMergeOptions,
    struct_size: usize,
) -> i32 {
    ffi!("vhdx_sibling_merge_options_init", {
        // SAFETY: the caller promises `struct_size` writable bytes (or NULL).
        unsafe { init_struct("vhdx_sibling_merge_options_init", options, struct_size) }
    })
}

fn report_of(r: &SiblingMergeReport) -> VhdxSiblingMergeReport {
    VhdxSiblingMergeReport {
        struct_size: 0,
        bytes_merged: r.bytes_merged,
        bytes_preserved: r.preserved.iter().map(|s| s.bytes_copied).sum(),
        preserved_images: u32::try_from(r.preserved.len()).unwrap_or(u32::MAX),
        conflicts: r.conflicts.len() as u64,
        unresolved_conflicts: r.unresolved().count() as u64,
        conflicting_bytes: r.conflicting_bytes(),
        merged: r.merged,
    }
}

/// Merges the differencing disks `children` (`child_count` paths, 1 to 64)
/// into their common parent `parent_path` in one crash-safe operation: the
/// parent then presents its old content with every child's changes, and
/// each child is empty, linked to the parent, and presents that merged
/// content. Other children of the parent (and children of the merged
/// children) found in the images' directories keep presenting the same
/// bytes: what would change under them is copied into them first.
///
/// Where children hold the same sectors with different bytes (a conflict)
/// and `options->prefer` does not name one of them, nothing is modified and
/// VHDX_ERR_REFUSED is returned; the message lists the ranges. With
/// `options->dry_run` nothing is modified either, and VHDX_OK is returned
/// whatever the conflicts (`report->unresolved_conflicts` > 0 says a real
/// merge would be refused).
///
/// When `report` is not NULL it receives the figures, on success, in a dry
/// run and on a refusal for conflicts. The first min(`conflict_cap`,
/// `report->conflicts`) conflicting ranges are written to `conflicts`, in
/// order of offset.
///
/// An interrupted merge leaves every image openable, each sector presenting
/// its old or its new content; calling again with the same arguments
/// completes it.
///
/// Returns VHDX_OK, VHDX_ERR_REFUSED (conflicts, or an image changed while
/// the merge was planned), VHDX_ERR_INVALID_ARGUMENT (a child that is not a
/// differencing disk of the parent, a duplicate, more than 64 children, a
/// `prefer` that is not a child, bad pointers, a `struct_size` of `options`
/// or `report` the library does not accept), VHDX_ERR_PARENT_MISMATCH (a
/// child's link to the parent is broken), or the error of the image that
/// failed, named in the message. Every image it changes is locked from the
/// plan to the end: one open elsewhere refuses it with VHDX_ERR_BUSY.
///
/// Ownership: every argument is the caller's. Thread safety: safe from any
/// thread (the files are locked, see above).
///
/// # Safety
/// `parent_path` is a NUL-terminated string; `children` points to
/// `child_count` NUL-terminated strings; `options` is NULL or points to a
/// valid VhdxSiblingMergeOptions of `options->struct_size` bytes; `report`
/// is NULL or points to a writable VhdxSiblingMergeReport of
/// `report->struct_size` bytes; `conflicts` is NULL with `conflict_cap == 0` or
/// points to `conflict_cap` writable VhdxConflict.
#[no_mangle]
pub unsafe extern "C" fn vhdx_merge_siblings(
    parent_path: *const c_char,
    children: *const *const c_char,
    child_count: usize,
    options: *const VhdxSiblingMergeOptions,
    report: *mut VhdxSiblingMergeReport,
    conflicts: *mut VhdxConflict,
    conflict_cap: usize,
) -> i32 {
    const F: &str = "vhdx_merge_siblings";
    ffi!("vhdx_merge_siblings", {
        // SAFETY: the caller's promise on `parent_path`.
        let parent = unsafe { path_arg(F, "parent_path", parent_path)? };
        if child_count == 0 || child_count > 64 {
            return Err(Failure::invalid(format!("{F}: {child_count} children; give 1 to 64")));
        }
        // SAFETY: the caller promises `child_count` strings.
        let kids = unsafe { path_list_arg(F, "children", children, child_count)? };
        array_out_arg(F, "conflicts", conflicts, conflict_cap, "conflict_cap")?;
        // SAFETY: the caller promises NULL or a valid struct; it is copied.
        let o = unsafe { read_struct(F, "options", options)? }.unwrap_or_default();
        // SAFETY: the caller promises NULL or `struct_size` writable bytes.
        let report = unsafe { out_struct(F, "report", report)? };
        let prefer = if o.prefer.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
            Some(unsafe { path_arg(F, "prefer", o.prefer)? })
        };
        // SAFETY: the caller promises the counts of strings in both lists.
        let (search_dirs, confine_to) =
            unsafe { parent_search_args(F, o.search_dirs, o.search_dir_count, o.confine_dirs, o.confine_dir_count)? };
        let opts = SiblingMergeOptions { prefer, dry_run: o.dry_run, search_dirs, confine_to };
        let plan = plan_merge_siblings(&parent, &kids, &opts)?;
        let tell = |r: &SiblingMergeReport| {
            if let Some(report) = &report {
                report.write(&report_of(r));
            }
            let entries = r.conflicts.iter().map(|c| VhdxConflict {
                offset: c.offset,
                length: c.length,
                children: c.children.iter().fold(0u64, |m, &k| m | 1 << k),
                winner: c.winner.map_or(-1, |w| w as i32),
            });
            // SAFETY: checked by array_out_arg; the caller promises
            // `conflict_cap` writable entries.
            unsafe { fill_array(conflicts, conflict_cap, entries) };
        };
        tell(plan.report());
        if o.dry_run {
            return Ok(VHDX_OK);
        }
        // A refusal for conflicts is VHDX_ERR_REFUSED, the report already told.
        let r = plan.execute()?;
        tell(&r);
        Ok(VHDX_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_arguments_are_refused_with_a_message() {
        let mut count = 0usize;
        // SAFETY: NULL disk is allowed (refused); count is writable.
        let s = unsafe { vhdx_change_set(core::ptr::null(), core::ptr::null_mut(), 0, &mut count) };
        assert_eq!(s, super::super::error::VHDX_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL paths are allowed (refused).
        let s = unsafe {
            vhdx_merge_siblings(
                core::ptr::null(),
                core::ptr::null(),
                0,
                core::ptr::null(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(s, super::super::error::VHDX_ERR_INVALID_ARGUMENT);
    }
}
