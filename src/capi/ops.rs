//! Whole-image operations by path: merge, re-link, check, repair.

use alloc::format;
use alloc::string::String;
use core::ffi::c_char;

use core::mem::size_of;

use super::error::{Failure, FfiResult, VHDX_OK};
use super::ptr::{init_struct, out_struct, read_struct, SizedStruct};
use super::strings::{copy_out, parent_search_args, path_arg};
use crate::ops::merge::{merge, MergeOptions, SiblingPolicy};

/// Refuse to merge when other differencing disks (siblings) depend on an
/// image the merge changes; nothing is changed and the message names them.
pub const VHDX_SIBLINGS_REFUSE: i32 = 0;
/// Before merging, copy into each sibling the data it would lose, then
/// re-link it, so every sibling keeps presenting the same bytes.
pub const VHDX_SIBLINGS_PRESERVE: i32 = 1;
/// Merge anyway; siblings break (opening one then fails with
/// VHDX_ERR_PARENT_MISMATCH). This is what diskpart does.
pub const VHDX_SIBLINGS_FORCE: i32 = 2;

/// Options of vhdx_merge_with. Initialise with
/// `vhdx_merge_options_init(&options, sizeof options)` (depth 1,
/// VHDX_SIBLINGS_REFUSE, no extra or confining directories).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VhdxMergeOptions {
    /// sizeof(VhdxMergeOptions), set by vhdx_merge_options_init.
    pub struct_size: u32,
    /// How many levels up the target is: 1 merges the child into its parent,
    /// 2 into its grandparent (the parent is merged too), ... (0 means 1).
    pub depth: u32,
    /// VHDX_SIBLINGS_REFUSE, VHDX_SIBLINGS_PRESERVE or VHDX_SIBLINGS_FORCE.
    pub siblings: i32,
    /// More directories to search for siblings (the child's and the
    /// target's directories are always searched): an array of
    /// `search_dir_count` NUL-terminated paths, read during the call.
    pub search_dirs: *const *const c_char,
    /// The number of entries of `search_dirs`.
    pub search_dir_count: usize,
    /// When `confine_dir_count` > 0, every parent of the chain (and of the
    /// siblings) is resolved only inside these directories, as
    /// VhdxOpenOptions.parent_search_dirs does: for images from untrusted
    /// sources. An array of NUL-terminated paths, read during the call.
    pub confine_dirs: *const *const c_char,
    /// The number of entries of `confine_dirs` (0: resolve anywhere).
    pub confine_dir_count: usize,
}

impl Default for VhdxMergeOptions {
    fn default() -> Self {
        VhdxMergeOptions {
            struct_size: size_of::<VhdxMergeOptions>() as u32,
            depth: 1,
            siblings: VHDX_SIBLINGS_REFUSE,
            search_dirs: core::ptr::null(),
            search_dir_count: 0,
            confine_dirs: core::ptr::null(),
            confine_dir_count: 0,
        }
    }
}

/// What vhdx_merge_with did. Set `struct_size` before the call:
/// `VhdxMergeReport r = { .struct_size = sizeof r };`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxMergeReport {
    /// sizeof(VhdxMergeReport), set by the caller; left as it is.
    pub struct_size: u32,
    /// Bytes written into the target.
    pub bytes_merged: u64,
    /// Bytes copied into siblings to preserve them (VHDX_SIBLINGS_PRESERVE).
    pub bytes_preserved: u64,
    /// Images merged (emptied and linked to the target): `depth` of them.
    pub images_merged: u32,
    /// Siblings found.
    pub siblings: u32,
    /// Whether siblings were left broken (VHDX_SIBLINGS_FORCE with siblings).
    pub siblings_broken: bool,
}

// SAFETY: repr(C), `struct_size: u32` first; integers, nullable pointers
// and counts.
unsafe impl SizedStruct for VhdxMergeOptions {
    const NAME: &'static str = "VhdxMergeOptions";
    const OLDEST: usize = size_of::<VhdxMergeOptions>();
}

// SAFETY: repr(C), `struct_size: u32` first, integers and a bool.
unsafe impl SizedStruct for VhdxMergeReport {
    const NAME: &'static str = "VhdxMergeReport";
    const OLDEST: usize = size_of::<VhdxMergeReport>();
}

/// Sets `*options` to the defaults: depth 1, VHDX_SIBLINGS_REFUSE, no extra
/// search directories, parents resolved anywhere; and `struct_size` to
/// `struct_size`, which is `sizeof *options` as the caller was compiled.
/// Returns VHDX_OK, or VHDX_ERR_INVALID_ARGUMENT when `options` is NULL or
/// `struct_size` is not a size of VhdxMergeOptions this library knows
/// (nothing is written).
///
/// Ownership: `options` is the caller's. Thread safety: safe from any thread.
///
/// # Safety
/// `options` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_merge_options_init(options: *mut VhdxMergeOptions, struct_size: usize) -> i32 {
    // SAFETY: the caller promises `struct_size` writable bytes (or NULL).
    ffi!("vhdx_merge_options_init", { unsafe { init_struct("vhdx_merge_options_init", options, struct_size) } })
}

fn policy(function: &str, code: i32) -> FfiResult<SiblingPolicy> {
    match code {
        VHDX_SIBLINGS_REFUSE => Ok(SiblingPolicy::Refuse),
        VHDX_SIBLINGS_PRESERVE => Ok(SiblingPolicy::Preserve),
        VHDX_SIBLINGS_FORCE => Ok(SiblingPolicy::Force),
        other => Err(Failure::invalid(format!(
            "{function}: siblings is {other}, not VHDX_SIBLINGS_REFUSE, _PRESERVE or _FORCE"
        ))),
    }
}

/// Merges the differencing disk at `child_path` into its ancestor `depth`
/// levels up (1 = its parent; 0 means 1), like diskpart's `merge vdisk
/// depth=N` — but safely: when other differencing disks depend on an image
/// the merge changes, it refuses with VHDX_ERR_REFUSED, changes nothing, and
/// the message names them (use vhdx_merge_with to preserve or break them).
///
/// Afterwards the target holds the merged data; the merged images are empty
/// and linked to the target, so the child still presents the same bytes.
/// Every image the merge changes is locked from start to end: one open
/// elsewhere (another process, or a handle of yours) refuses the merge with
/// VHDX_ERR_BUSY before anything changes.
///
/// A VHD chain (by content) merges too. A VHD records no version of its
/// parent, so a sibling could not notice the change: VHDX_SIBLINGS_FORCE
/// is refused (VHDX_ERR_REFUSED) when there are siblings.
///
/// Ownership: nothing changes hands (the library opens and closes the files).
/// Thread safety: safe from any thread (the files are locked, see above).
///
/// # Safety
/// `child_path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn vhdx_merge(child_path: *const c_char, depth: u32) -> i32 {
    ffi!("vhdx_merge", {
        let options = VhdxMergeOptions { depth, ..VhdxMergeOptions::default() };
        // SAFETY: the caller's promise on `child_path`; `options` is ours and
        // `report` may be NULL.
        unsafe { merge_impl("vhdx_merge", child_path, &options, core::ptr::null_mut()) }
    })
}

/// Merges as vhdx_merge does, with `options` (NULL: the defaults of
/// vhdx_merge_options_init) choosing the depth and what happens to siblings
/// (VHDX_SIBLINGS_REFUSE / _PRESERVE / _FORCE). When `report` is not NULL it
/// receives what was done (on success only).
///
/// Returns VHDX_OK, VHDX_ERR_REFUSED (siblings, with VHDX_SIBLINGS_REFUSE),
/// VHDX_ERR_INVALID_ARGUMENT (not a differencing disk, chain too short, bad
/// options, a `struct_size` of `options` or `report` the library does not
/// accept: then nothing is done), or the error of the image that failed,
/// named in the message.
///
/// Ownership: `options` and `report` are the caller's.
/// Thread safety: safe from any thread (not concurrently with other users of
/// the same files).
///
/// # Safety
/// `child_path` is a NUL-terminated string; `options` is NULL or points to a
/// valid VhdxMergeOptions of `options->struct_size` bytes; `report` is NULL
/// or points to a writable VhdxMergeReport of `report->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_merge_with(
    child_path: *const c_char,
    options: *const VhdxMergeOptions,
    report: *mut VhdxMergeReport,
) -> i32 {
    ffi!("vhdx_merge_with", {
        // SAFETY: the caller's promises on the three pointers.
        unsafe { merge_impl("vhdx_merge_with", child_path, options, report) }
    })
}

/// The body of vhdx_merge and vhdx_merge_with, whose name is `function`.
///
/// # Safety
/// As vhdx_merge_with.
unsafe fn merge_impl(
    function: &str,
    child_path: *const c_char,
    options: *const VhdxMergeOptions,
    report: *mut VhdxMergeReport,
) -> FfiResult<i32> {
    // SAFETY: the caller's promise on `child_path`.
    let child = unsafe { path_arg(function, "child_path", child_path)? };
    // SAFETY: the caller promises NULL or a valid struct; it is copied.
    let o = unsafe { read_struct(function, "options", options)? }.unwrap_or_default();
    // SAFETY: the caller promises NULL or `struct_size` writable bytes.
    let report = unsafe { out_struct(function, "report", report)? };
    // SAFETY: the caller promises the counts of strings in both lists.
    let (search_dirs, confine_to) = unsafe {
        parent_search_args(function, o.search_dirs, o.search_dir_count, o.confine_dirs, o.confine_dir_count)?
    };
    let opts = MergeOptions {
        depth: o.depth.max(1) as usize,
        siblings: policy(function, o.siblings)?,
        search_dirs,
        confine_to,
        file_opener: None,
    };
    let r = merge(&child, &opts)?;
    if let Some(report) = report {
        report.write(&VhdxMergeReport {
            struct_size: 0,
            bytes_merged: r.bytes_merged,
            bytes_preserved: r.siblings.iter().map(|s| s.bytes_copied).sum(),
            images_merged: u32::try_from(r.merged.len()).unwrap_or(u32::MAX),
            siblings: u32::try_from(r.siblings.len()).unwrap_or(u32::MAX),
            siblings_broken: r.siblings_broken && !r.siblings.is_empty(),
        });
    }
    Ok(VHDX_OK)
}

/// Points the differencing disk at `child_path` at the parent at
/// `parent_path` (a parent that was moved or copied): rewrites the child's
/// parent locator. Refuses with VHDX_ERR_PARENT_MISMATCH when the parent's
/// DataWriteGuid is not the one the child links to, unless
/// `ignore_id_mismatch` (then the child's content may change, and its own
/// DataWriteGuid changes so its children notice). VHDX_ERR_INVALID_ARGUMENT
/// when the child is not a differencing disk, the sizes differ, or the
/// formats differ. A VHD child (by content) takes a VHD parent, matched by
/// its unique ID (and takes a new unique ID of its own when ignoring a
/// mismatch).
///
/// Ownership: nothing changes hands.
/// Thread safety: safe from any thread (the child open elsewhere:
/// VHDX_ERR_BUSY).
///
/// # Safety
/// `child_path` and `parent_path` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn vhdx_set_parent(
    child_path: *const c_char,
    parent_path: *const c_char,
    ignore_id_mismatch: bool,
) -> i32 {
    ffi!("vhdx_set_parent", {
        // SAFETY: the caller's promise on `child_path`.
        let child = unsafe { path_arg("vhdx_set_parent", "child_path", child_path)? };
        // SAFETY: the caller's promise on `parent_path`.
        let parent = unsafe { path_arg("vhdx_set_parent", "parent_path", parent_path)? };
        crate::ops::merge::set_parent(&child, &parent, ignore_id_mismatch)?;
        Ok(VHDX_OK)
    })
}

fn report_text(errors: &[String], notes: &[String], actions: &[String]) -> String {
    let mut text = String::new();
    for (label, lines) in [("repaired", actions), ("error", errors), ("note", notes)] {
        for l in lines {
            text.push_str(label);
            text.push_str(": ");
            text.push_str(l);
            text.push('\n');
        }
    }
    text
}

/// Checks the image at `path` without changing it: both headers, both region
/// table copies, the log, the metadata and every BAT entry (a differencing
/// disk is checked on its own, without its parent). A VHD (by content): its
/// footer and the copy at offset 0, the dynamic header and the block table.
///
/// Returns the number of problems found (0: the image is sound), or a
/// negative status when the file cannot be read at all. When `report` is not
/// NULL it receives the findings as text, one per line ("error: ..." and
/// "note: ..."), truncated to `report_cap` bytes and NUL-terminated.
///
/// Ownership: `report` is the caller's. Thread safety: safe from any thread.
///
/// # Safety
/// `path` is a NUL-terminated string; `report` is NULL or points to
/// `report_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_check(path: *const c_char, report: *mut c_char, report_cap: usize) -> i32 {
    ffi!("vhdx_check", {
        // SAFETY: the caller's promise on `path`.
        let path = unsafe { path_arg("vhdx_check", "path", path)? };
        let r = crate::check::check_file(&path)?;
        if !report.is_null() {
            let text = report_text(&r.errors, &r.notes, &[]);
            // SAFETY: the caller promises `report_cap` writable bytes.
            unsafe { copy_out("vhdx_check", &text, report, report_cap)? };
        }
        Ok(i32::try_from(r.errors.len()).unwrap_or(i32::MAX))
    })
}

/// Repairs the image at `path` in place where that is safe: replays a log
/// left by an interrupted session, rewrites a damaged header or region table
/// copy from the good one, clears reserved BAT fields. A VHD: a damaged
/// trailing footer is rewritten from the copy at offset 0, and a copy that
/// differs from the trailing footer from it. Never changes what the disk
/// presents.
///
/// Returns the number of problems a check still finds afterwards (0: the
/// image is now sound), or a negative status when it cannot be opened. When
/// `report` is not NULL it receives what was done and found, one per line
/// ("repaired: ...", "error: ...", "note: ..."), truncated to `report_cap`
/// bytes and NUL-terminated.
///
/// Ownership: `report` is the caller's. Thread safety: safe from any thread
/// (the image open elsewhere: VHDX_ERR_BUSY).
///
/// # Safety
/// `path` is a NUL-terminated string; `report` is NULL or points to
/// `report_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_repair(path: *const c_char, report: *mut c_char, report_cap: usize) -> i32 {
    ffi!("vhdx_repair", {
        // SAFETY: the caller's promise on `path`.
        let path = unsafe { path_arg("vhdx_repair", "path", path)? };
        let r = crate::check::repair_file(&path)?;
        if !report.is_null() {
            let text = report_text(&r.after.errors, &r.after.notes, &r.actions);
            // SAFETY: the caller promises `report_cap` writable bytes.
            unsafe { copy_out("vhdx_repair", &text, report, report_cap)? };
        }
        Ok(i32::try_from(r.after.errors.len()).unwrap_or(i32::MAX))
    })
}
