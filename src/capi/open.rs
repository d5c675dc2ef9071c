//! Opening with options: writability and how a differencing disk's parent
//! is found.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::ToString;
use core::ffi::{c_char, c_void};

use super::disk::VhdxDisk;
use super::error::{Failure, FfiResult};
use super::ptr::{clear_out, init_struct, read_struct, set_out, SizedStruct};
use super::resolver::{CallbackResolver, VhdxResolveParentFn};
use super::strings::{path_arg, path_list_arg};
use crate::OpenOptions;

/// How vhdx_open_with and vhdx_open_callbacks open an image. Initialise it
/// with `vhdx_open_options_init(&options, sizeof options)` (all fields
/// zero/NULL: read-only, parents found through the locator), then set what
/// you need.
///
/// At most one of `without_parent`, `parent`, `resolve_parent` and
/// `parent_search_dirs` may be set (VHDX_ERR_INVALID_ARGUMENT otherwise).
/// They matter only for differencing images.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VhdxOpenOptions {
    /// sizeof(VhdxOpenOptions), set by vhdx_open_options_init.
    pub struct_size: u32,
    /// Open for writing as well as reading. Parents always open read-only.
    pub writable: bool,
    /// Open a differencing disk on its own: sectors it does not hold read as
    /// zeros (the child-only view forensic tools use when the parent is
    /// lost). Such a handle takes no data writes.
    pub without_parent: bool,
    /// A parent you opened (with any vhdx_open* function): used instead of
    /// searching, after checking it is the one the child links to (else
    /// VHDX_ERR_PARENT_MISMATCH). Ownership passes to the library whatever
    /// the result: do not use or close this handle after the call (it is
    /// closed with the child, or at once when the call fails). The one
    /// exception: a `struct_size` the library refuses, when it reads no
    /// field and takes nothing.
    pub parent: *mut VhdxDisk,
    /// Finds parents by calling this function instead of following the
    /// locator's paths (see VhdxResolveParentFn); called for every level of
    /// the chain, during the open call only.
    pub resolve_parent: VhdxResolveParentFn,
    /// Passed to `resolve_parent` as its `user` argument.
    pub resolve_user: *mut c_void,
    /// Follow the locator's paths, but open only files inside these
    /// directories (for images from untrusted sources): an array of
    /// `parent_search_dir_count` NUL-terminated paths, read during the call.
    pub parent_search_dirs: *const *const c_char,
    /// The number of entries of `parent_search_dirs`.
    pub parent_search_dir_count: usize,
    /// Open read-only without locking the image and its parents, whatever
    /// other processes hold (like `qemu-img -U`): to inspect an image that is
    /// open for writing elsewhere, knowing that what is read may be
    /// inconsistent. Without it such an open fails with VHDX_ERR_BUSY. With
    /// `writable` it is refused (VHDX_ERR_INVALID_ARGUMENT).
    pub force_share: bool,
}

impl Default for VhdxOpenOptions {
    fn default() -> Self {
        VhdxOpenOptions {
            struct_size: core::mem::size_of::<VhdxOpenOptions>() as u32,
            writable: false,
            without_parent: false,
            parent: core::ptr::null_mut(),
            resolve_parent: None,
            resolve_user: core::ptr::null_mut(),
            parent_search_dirs: core::ptr::null(),
            parent_search_dir_count: 0,
            force_share: false,
        }
    }
}

// SAFETY: repr(C), `struct_size: u32` first; bools, nullable pointers,
// an optional function pointer and a count.
unsafe impl SizedStruct for VhdxOpenOptions {
    const NAME: &'static str = "VhdxOpenOptions";
    const OLDEST: usize = core::mem::size_of::<VhdxOpenOptions>();
}

/// Sets `*options` to the defaults: read-only, parents found through the
/// locator (every field zero or NULL), and `struct_size` to `struct_size`,
/// which is `sizeof *options` as the caller was compiled. Returns VHDX_OK,
/// or VHDX_ERR_INVALID_ARGUMENT when `options` is NULL or `struct_size` is
/// not a size of VhdxOpenOptions this library knows (nothing is written).
///
/// Ownership: `options` is the caller's. Thread safety: safe from any thread.
///
/// # Safety
/// `options` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_open_options_init(options: *mut VhdxOpenOptions, struct_size: usize) -> i32 {
    // SAFETY: the caller promises `struct_size` writable bytes (or NULL).
    ffi!("vhdx_open_options_init", { unsafe { init_struct("vhdx_open_options_init", options, struct_size) } })
}

/// The Rust options from C ones.
pub(crate) struct ParsedOptions {
    pub(crate) options: OpenOptions,
    pub(crate) writable: bool,
    /// For a VHD: the option it does not take (a parent handle, a
    /// resolver, search directories).
    pub(crate) vhd_refused: Option<&'static str>,
}

/// Reads `options` (NULL = defaults), taking ownership of `options->parent`
/// first, so that it is released on every later failure (a `struct_size`
/// refused comes before: then nothing is read or taken).
///
/// # Safety
/// `options` is NULL or points to a valid VhdxOpenOptions of `struct_size`
/// bytes whose `parent` is NULL or a live handle that the caller gives up.
pub(crate) unsafe fn open_options(function: &str, options: *const VhdxOpenOptions) -> FfiResult<ParsedOptions> {
    // SAFETY: the caller promises NULL or a valid struct; it is copied.
    let o = unsafe { read_struct(function, "options", options)? }.unwrap_or_default();
    let parent = if o.parent.is_null() {
        None
    } else {
        // SAFETY: a live handle made by Box::into_raw, which the caller gives up.
        Some(unsafe { Box::from_raw(o.parent) }.into_disk(function)?)
    };
    let choices = [o.without_parent, parent.is_some(), o.resolve_parent.is_some(), o.parent_search_dir_count > 0];
    if choices.iter().filter(|&&c| c).count() > 1 {
        return Err(Failure::invalid(format!(
            "{function}: set at most one of without_parent, parent, resolve_parent and parent_search_dirs"
        )));
    }
    let mut options = OpenOptions::new().writable(o.writable).force_share(o.force_share);
    if o.without_parent {
        options = options.without_parent();
    } else if let Some(p) = parent {
        options = options.parent(p);
    } else if let Some(f) = o.resolve_parent {
        options = options.resolver(Box::new(CallbackResolver::new(f, o.resolve_user, o.force_share)));
    } else if o.parent_search_dir_count > 0 {
        // SAFETY: the caller promises `parent_search_dir_count` strings.
        let dirs =
            unsafe { path_list_arg(function, "parent_search_dirs", o.parent_search_dirs, o.parent_search_dir_count)? };
        options = options.parent_search_dirs(dirs);
    }
    let vhd_refused = if !o.parent.is_null() {
        Some("parent")
    } else if o.resolve_parent.is_some() {
        Some("resolve_parent")
    } else if o.parent_search_dir_count > 0 {
        Some("parent_search_dirs")
    } else {
        None
    };
    Ok(ParsedOptions { options, writable: o.writable, vhd_refused })
}

/// Opens the VHDX or VHD image at `path` (told apart by content) as
/// `options` says (NULL: as vhdx_open read-only): writable or not, and for
/// a differencing image, its parent found through the locator, confined to
/// search directories, through a resolver callback, given as an open
/// handle, or not opened at all. A VHD takes `writable`, `without_parent`
/// and `force_share`; its parent is found by its own locators, so the other
/// choices give VHDX_ERR_UNSUPPORTED for it.
///
/// On success stores a new handle in `*out`; on failure stores NULL and
/// returns a negative status (see vhdx_open).
///
/// Ownership: the caller owns the new handle (release it with vhdx_close).
/// The library takes `options->parent` whatever the result (but for a
/// `struct_size` it refuses: see VhdxOpenOptions.parent).
/// Thread safety: safe from any thread; a resolver callback runs on the
/// calling thread, during this call only.
///
/// # Safety
/// `path` is a NUL-terminated string; `options` is NULL or points to a valid
/// VhdxOpenOptions; `out` points to a writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_open_with(
    path: *const c_char,
    options: *const VhdxOpenOptions,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_open_with", {
        const F: &str = "vhdx_open_with";
        // Take ownership of the parent first, so that every failure releases it.
        // SAFETY: the caller's promise on `options`.
        let opts = unsafe { open_options(F, options) };
        // SAFETY: the caller's promise on `out`.
        unsafe { clear_out(F, out)? };
        let opts = opts?;
        // SAFETY: the caller's promise on `path`.
        let path = unsafe { path_arg(F, "path", path)? };
        let name = Some(path.display().to_string());
        if crate::ops::convert::ImageFormat::detect(&path) == crate::ops::convert::ImageFormat::Vhd {
            if let Some(option) = opts.vhd_refused {
                return Err(Failure::from(crate::Error::unsupported(
                    "VHD",
                    0,
                    format!("{F}: the option {option} applies to VHDX images; {} is a VHD", path.display()),
                )));
            }
        }
        // Either format, by content.
        let disk = opts.options.open_any(&path)?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, VhdxDisk::from_any(disk, name)) }
    })
}
