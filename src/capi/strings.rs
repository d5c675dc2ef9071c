//! C strings in (paths, names) and out (snprintf-style buffers), and GUIDs
//! as text.

use alloc::string::String;
use alloc::vec::Vec;
use core::ffi::c_char;
use std::ffi::{CStr, CString};
use std::path::PathBuf;

use super::error::{Failure, FfiResult};

/// Reads the NUL-terminated string `s`, argument `arg` of `function`, as a
/// path. NULL is `VHDX_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string that stays unchanged for
/// the call (the header's contract for every path argument).
pub(crate) unsafe fn path_arg(function: &str, arg: &str, s: *const c_char) -> FfiResult<PathBuf> {
    if s.is_null() {
        return Err(Failure::null(function, arg));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    if bytes.is_empty() {
        return Err(Failure::invalid(alloc::format!("{function}: `{arg}` is an empty path")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        core::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| Failure::invalid(alloc::format!("{function}: `{arg}` is not UTF-8")))
    }
}

/// Reads the optional NUL-terminated string `s` as text (invalid UTF-8 is
/// replaced); NULL is `None`.
///
/// # Safety
/// As [`path_arg`].
pub(crate) unsafe fn opt_text_arg(s: *const c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let c = unsafe { CStr::from_ptr(s) };
    Some(c.to_string_lossy().into_owned())
}

/// `s` as a C string for C, `None` when absent (or holding a NUL).
pub(crate) fn c_text(s: Option<&str>) -> Option<CString> {
    s.and_then(|s| CString::new(s).ok())
}

/// The pointer C sees for an optional string: NULL when absent. Valid while
/// `s` lives.
pub(crate) fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(core::ptr::null(), |c| c.as_ptr())
}

/// Reads `count` paths from the array `list`, argument `arg` of `function`.
///
/// # Safety
/// `list` is NULL (then `count` must be 0) or points to `count` pointers,
/// each NULL or a NUL-terminated string.
pub(crate) unsafe fn path_list_arg(
    function: &str,
    arg: &str,
    list: *const *const c_char,
    count: usize,
) -> FfiResult<Vec<PathBuf>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if list.is_null() {
        return Err(Failure::invalid(alloc::format!("{function}: `{arg}` is NULL but its count is {count}")));
    }
    // SAFETY: non-NULL, and the caller promises `count` readable pointers.
    let items = unsafe { core::slice::from_raw_parts(list, count) };
    items
        .iter()
        // SAFETY: each entry is NULL (rejected by path_arg) or a NUL-terminated string.
        .map(|&p| unsafe { path_arg(function, arg, p) })
        .collect()
}

/// The parent search options every merge function takes: `search_dirs`
/// (`search_count` paths) and `confine_dirs` (`confine_count` paths; none
/// means no confinement), as the library's `search_dirs` and `confine_to`.
///
/// # Safety
/// Each list is NULL (then its count must be 0) or points to that many
/// pointers, each NULL or a NUL-terminated string.
pub(crate) unsafe fn parent_search_args(
    function: &str,
    search_dirs: *const *const c_char,
    search_count: usize,
    confine_dirs: *const *const c_char,
    confine_count: usize,
) -> FfiResult<(Vec<PathBuf>, Option<Vec<PathBuf>>)> {
    // SAFETY: the caller promises `search_count` strings.
    let search = unsafe { path_list_arg(function, "search_dirs", search_dirs, search_count)? };
    // SAFETY: the caller promises `confine_count` strings.
    let confine = unsafe { path_list_arg(function, "confine_dirs", confine_dirs, confine_count)? };
    Ok((search, if confine.is_empty() { None } else { Some(confine) }))
}

/// Copies `text` into the caller's buffer `buf` of `cap` bytes, like
/// `snprintf`: as much as fits, always NUL-terminated when `cap > 0`.
/// Returns the full length of `text` (without the NUL), so a result `>= cap`
/// means the copy was truncated.
///
/// # Safety
/// `buf` is NULL with `cap == 0`, or points to `cap` writable bytes.
pub(crate) unsafe fn copy_out(function: &str, text: &str, buf: *mut c_char, cap: usize) -> FfiResult<i32> {
    let len = i32::try_from(text.len())
        .map_err(|_| Failure::invalid(alloc::format!("{function}: the text is longer than 2 GiB")))?;
    if cap == 0 {
        return Ok(len);
    }
    if buf.is_null() {
        return Err(Failure::invalid(alloc::format!("{function}: `buf` is NULL but `cap` is {cap}")));
    }
    let n = text.len().min(cap - 1);
    // SAFETY: the caller promises `cap` writable bytes at `buf`; we write
    // `n + 1 <= cap` of them, from a distinct Rust string.
    unsafe {
        core::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    Ok(len)
}

/// Formats the 16 GUID bytes `guid` (in the on-disk / Windows `GUID` memory
/// layout, as every GUID this API hands out) as the 38-character text
/// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}` into `buf` of `cap` bytes.
///
/// Returns 38, the text's length, like snprintf (a `cap` of 39 or more holds
/// it whole; less truncates, still NUL-terminated when `cap > 0`), or
/// VHDX_ERR_INVALID_ARGUMENT when `guid` is NULL or `buf` is NULL with
/// `cap > 0`.
///
/// Ownership: both buffers are the caller's. Thread safety: safe from any thread.
///
/// # Safety
/// `guid` points to 16 readable bytes; `buf` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_guid_to_string(guid: *const u8, buf: *mut c_char, cap: usize) -> i32 {
    ffi!("vhdx_guid_to_string", {
        if guid.is_null() {
            return Err(Failure::null("vhdx_guid_to_string", "guid"));
        }
        let mut bytes = [0u8; 16];
        // SAFETY: the caller promises 16 readable bytes at `guid`.
        unsafe { core::ptr::copy_nonoverlapping(guid, bytes.as_mut_ptr(), 16) };
        let text = alloc::format!("{{{}}}", crate::format::guid::from_disk(&bytes).as_hyphenated()).to_uppercase();
        // SAFETY: the caller promises `cap` writable bytes at `buf`.
        unsafe { copy_out("vhdx_guid_to_string", &text, buf, cap) }
    })
}

/// The version of libvhdx, for example "0.1.0".
///
/// Ownership: a static string; do not free it. Thread safety: safe from any thread.
#[no_mangle]
pub extern "C" fn vhdx_version() -> *const c_char {
    ffi!("vhdx_version", { Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast::<c_char>()) })
}
