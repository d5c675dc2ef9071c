//! The parent-resolver callback: a C function that says where a
//! differencing disk's parent is.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ffi::{c_char, c_void};

use super::strings::{c_text, opt_ptr};
use crate::chain::{check_linkage, ParentResolver, MAX_CHAIN_DEPTH};
use crate::error::{Error, Result};
use crate::format::locator::{self, ParentLocator};
use crate::{Disk, OpenOptions};

/// What a resolver callback is asked: which parent a differencing image
/// needs. Every string is NUL-terminated, or NULL when absent; all belong to
/// the library and are valid only during the callback.
///
/// The library allocates it and sets `struct_size`: a callback built
/// against a later vhdx.h reads a field added later only when
/// `query->struct_size` reaches past it.
#[repr(C)]
pub struct VhdxParentQuery {
    /// sizeof(VhdxParentQuery) as this library knows it, set by the library.
    pub struct_size: u32,
    /// The path (or callback name) of the child whose parent is wanted; NULL
    /// when it has none.
    pub child_path: *const c_char,
    /// The locator's `relative_path` entry (Windows separators, relative to
    /// the child's directory), e.g. `.\base.vhdx`.
    pub relative_path: *const c_char,
    /// The locator's `volume_path` entry (`\\?\Volume{GUID}\...`).
    pub volume_path: *const c_char,
    /// The locator's `absolute_win32_path` entry, e.g. `C:\vms\base.vhdx`.
    pub absolute_win32_path: *const c_char,
    /// The parent's DataWriteGuid the child links to, as braced text
    /// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}`: the parent must have it.
    pub parent_linkage: *const c_char,
    /// The parent's distance from the image being opened: 1 for its parent,
    /// 2 for the grandparent, ...
    pub depth: u32,
}

/// Says where the parent described by `query` is: writes its path,
/// NUL-terminated, into `path_buf` (`path_cap` bytes, at least 4096) and
/// returns VHDX_OK; or returns a negative status (conventionally
/// VHDX_ERR_PARENT_NOT_FOUND) when it does not know, which makes the open
/// fail with VHDX_ERR_PARENT_NOT_FOUND.
///
/// The library then opens that path read-only, resolving its own parent with
/// the same callback (depth + 1), and checks its DataWriteGuid against
/// `query->parent_linkage` (VHDX_ERR_PARENT_MISMATCH when it differs). Chains
/// deeper than 64 are refused. The callback runs on the thread that called
/// the open function, during that call only, and must not call vhdx
/// functions that open this same chain.
pub type VhdxResolveParentFn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        query: *const VhdxParentQuery,
        path_buf: *mut c_char,
        path_cap: usize,
    ) -> i32,
>;

/// The size of the path buffer given to a resolver callback.
const PATH_CAP: usize = 4096;

/// A [`ParentResolver`] that asks a C callback for the parent's path.
#[derive(Clone, Copy)]
pub(crate) struct CallbackResolver {
    f: unsafe extern "C" fn(*mut c_void, *const VhdxParentQuery, *mut c_char, usize) -> i32,
    user: *mut c_void,
    /// Open the parents without locks (VhdxOpenOptions.force_share).
    force_share: bool,
}

impl CallbackResolver {
    pub(crate) fn new(
        f: unsafe extern "C" fn(*mut c_void, *const VhdxParentQuery, *mut c_char, usize) -> i32,
        user: *mut c_void,
        force_share: bool,
    ) -> Self {
        CallbackResolver { f, user, force_share }
    }
}

// SAFETY: a resolver lives only inside the OpenOptions of one open call and
// the nested opens of that call's parents, all on the calling thread; it is
// never kept in a Disk, so it is never actually used from another thread.
unsafe impl Send for CallbackResolver {}
// SAFETY: as for Send: never shared between threads.
unsafe impl Sync for CallbackResolver {}

impl ParentResolver for CallbackResolver {
    fn open_parent(&mut self, child: Option<&str>, loc: &ParentLocator, depth: usize) -> Result<(Disk, String)> {
        if depth > MAX_CHAIN_DEPTH {
            return Err(Error::invalid(format!("the parent chain is deeper than {MAX_CHAIN_DEPTH} links")));
        }
        let child_c = c_text(child);
        let rel = c_text(loc.get(locator::RELATIVE_PATH));
        let vol = c_text(loc.get(locator::VOLUME_PATH));
        let abs = c_text(loc.get(locator::ABSOLUTE_WIN32_PATH));
        let linkage = c_text(loc.get(locator::PARENT_LINKAGE));
        let query = VhdxParentQuery {
            struct_size: core::mem::size_of::<VhdxParentQuery>() as u32,
            child_path: opt_ptr(&child_c),
            relative_path: opt_ptr(&rel),
            volume_path: opt_ptr(&vol),
            absolute_win32_path: opt_ptr(&abs),
            parent_linkage: opt_ptr(&linkage),
            depth: u32::try_from(depth).unwrap_or(u32::MAX),
        };
        let mut buf: Vec<u8> = alloc::vec![0u8; PATH_CAP];
        // SAFETY: the caller's function, called as documented: `query` and
        // its strings live until it returns, `buf` has PATH_CAP writable bytes.
        let status = unsafe { (self.f)(self.user, &query, buf.as_mut_ptr().cast::<c_char>(), PATH_CAP) };
        let described = || {
            format!(
                "relative path {}, linkage {}",
                loc.get(locator::RELATIVE_PATH).unwrap_or("(none)"),
                loc.get(locator::PARENT_LINKAGE).unwrap_or("(none)")
            )
        };
        if status != 0 {
            return Err(Error::ParentNotFound {
                looked_for: format!("the resolver callback, which returned status {status} for {}", described()),
            });
        }
        let Some(end) = buf.iter().position(|&b| b == 0) else {
            return Err(Error::invalid("the resolver callback returned a path that is not NUL-terminated"));
        };
        if end == 0 {
            return Err(Error::ParentNotFound {
                looked_for: format!("the resolver callback, which returned an empty path for {}", described()),
            });
        }
        let bytes = &buf[..end];
        #[cfg(unix)]
        let path = {
            use std::os::unix::ffi::OsStrExt;
            std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
        };
        #[cfg(not(unix))]
        let path = std::path::PathBuf::from(
            core::str::from_utf8(bytes)
                .map_err(|_| Error::invalid("the resolver callback returned a path that is not UTF-8"))?,
        );
        let name = path.display().to_string();
        let disk =
            OpenOptions::new().force_share(self.force_share).resolver_at_depth(Box::new(*self), depth).open(&path)?;
        check_linkage(loc, &disk, &name)?;
        Ok((disk, name))
    }
}
