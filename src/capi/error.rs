//! Status codes, the thread's last error message, and the panic boundary
//! every exported function runs inside.

use alloc::format;
use alloc::string::{String, ToString};
use core::cell::RefCell;
use core::ffi::c_char;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Error, ErrorKind};

/// Success.
pub const VHDX_OK: i32 = 0;
/// The storage (file or callbacks) failed to read, write, flush or resize.
pub const VHDX_ERR_IO: i32 = -1;
/// The image breaks the VHDX format's rules (damaged or not a VHDX file).
pub const VHDX_ERR_CORRUPT: i32 = -2;
/// The image is well formed but uses a feature this library does not support.
pub const VHDX_ERR_UNSUPPORTED: i32 = -3;
/// An argument is not acceptable: a NULL pointer, a bad size, a bad option.
pub const VHDX_ERR_INVALID_ARGUMENT: i32 = -4;
/// A read or write reaches past the end of the virtual disk.
pub const VHDX_ERR_OUT_OF_RANGE: i32 = -5;
/// A write to a disk opened read-only.
pub const VHDX_ERR_READ_ONLY: i32 = -6;
/// The parent of a differencing disk could not be found.
pub const VHDX_ERR_PARENT_NOT_FOUND: i32 = -7;
/// A parent was found but is not the one the child was made from (its
/// DataWriteGuid differs from the child's parent linkage).
pub const VHDX_ERR_PARENT_MISMATCH: i32 = -8;
/// Refused to protect other images or data (for example a merge that would
/// break sibling differencing disks); nothing was changed.
pub const VHDX_ERR_REFUSED: i32 = -9;
/// The image is in use: another process (or another handle in this one)
/// holds a lock on it that the open conflicts with. A writer excludes every
/// other reader and writer; readers share with readers (on Linux with the
/// same locks as QEMU). Nothing was read or changed; the message names the
/// file. A read-only open with `force_share` set inspects it anyway.
pub const VHDX_ERR_BUSY: i32 = -10;
/// An internal error (a bug in libvhdx) was caught before it could reach C.
/// A disk handle in use when this happened should be closed.
pub const VHDX_ERR_PANIC: i32 = -99;

/// The status code of an error kind: one code per kind.
pub(crate) fn status_of(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Io => VHDX_ERR_IO,
        ErrorKind::Corrupt => VHDX_ERR_CORRUPT,
        ErrorKind::Unsupported => VHDX_ERR_UNSUPPORTED,
        ErrorKind::InvalidArgument => VHDX_ERR_INVALID_ARGUMENT,
        ErrorKind::OutOfRange => VHDX_ERR_OUT_OF_RANGE,
        ErrorKind::ReadOnly => VHDX_ERR_READ_ONLY,
        ErrorKind::ParentNotFound => VHDX_ERR_PARENT_NOT_FOUND,
        ErrorKind::ParentMismatch => VHDX_ERR_PARENT_MISMATCH,
        ErrorKind::Refused => VHDX_ERR_REFUSED,
        ErrorKind::Busy => VHDX_ERR_BUSY,
    }
}

/// A failed call: the status to return and the message to keep.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: i32,
    pub(crate) message: String,
}

impl Failure {
    /// `VHDX_ERR_INVALID_ARGUMENT` with `message`.
    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure { status: VHDX_ERR_INVALID_ARGUMENT, message: message.into() }
    }

    /// `VHDX_ERR_INVALID_ARGUMENT`: `function`'s `arg` is NULL.
    pub(crate) fn null(function: &str, arg: &str) -> Failure {
        Failure::invalid(format!("{function}: `{arg}` is NULL"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure { status: status_of(e.kind()), message: e.to_string() }
    }
}

/// The result type of exported functions' bodies.
pub(crate) type FfiResult<T> = Result<T, Failure>;

/// What an exported function returns when it fails: its status for status
/// functions, a neutral value for queries.
pub(crate) trait FfiReturn {
    /// The value for a failure with `status`.
    fn on_failure(status: i32) -> Self;
}

impl FfiReturn for i32 {
    fn on_failure(status: i32) -> i32 {
        status
    }
}

impl FfiReturn for u32 {
    fn on_failure(_: i32) -> u32 {
        0
    }
}

impl FfiReturn for u64 {
    fn on_failure(_: i32) -> u64 {
        0
    }
}

impl FfiReturn for () {
    fn on_failure(_: i32) {}
}

impl FfiReturn for *const c_char {
    fn on_failure(_: i32) -> *const c_char {
        c"".as_ptr()
    }
}

std::thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown there is nowhere to keep it.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

/// Runs `body`, the body of the exported function `name`, so that no panic
/// escapes: a failure or a panic sets the thread's last error and turns into
/// the function's failure value.
pub(crate) fn boundary<T: FfiReturn>(name: &'static str, body: impl FnOnce() -> FfiResult<T>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            T::on_failure(failure.status)
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| String::from(*s))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| String::from("unknown panic"));
            set_last_error(&format!("{name}: internal error in libvhdx (please report it): {what}"));
            T::on_failure(VHDX_ERR_PANIC)
        }
    }
}

/// The body of an exported function, run inside the panic boundary.
/// `ffi!("vhdx_x", { ... Ok(value) })`.
macro_rules! ffi {
    ($name:literal, $body:block) => {
        $crate::capi::error::boundary($name, move || -> $crate::capi::error::FfiResult<_> { $body })
    };
}

/// The message of the last failed call on the calling thread, naming the file
/// concerned where there is one; an empty string when no call has failed on
/// this thread yet.
///
/// Ownership: the string belongs to the library; do not free it. It stays
/// valid until the next call of a vhdx function on the same thread (copy it
/// to keep it). Never returns NULL.
///
/// Thread safety: each thread has its own last error; a failure on one
/// thread never changes another thread's message.
#[no_mangle]
pub extern "C" fn vhdx_last_error() -> *const c_char {
    // The boundary changes the message only on failure, and this cannot fail
    // short of the thread being torn down (then: the empty string).
    ffi!("vhdx_last_error", { Ok(LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).unwrap_or(c"".as_ptr())) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: vhdx_last_error returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(vhdx_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status: i32 = boundary("vhdx_test", || -> FfiResult<i32> { panic!("boom {}", 7) });
        assert_eq!(status, VHDX_ERR_PANIC);
        assert!(last().contains("vhdx_test: internal error in libvhdx"), "{}", last());
        assert!(last().contains("boom 7"));
        let size: u64 = boundary("vhdx_test", || -> FfiResult<u64> { panic!("static message") });
        assert_eq!(size, 0);
        assert!(last().contains("static message"));
    }

    #[test]
    fn success_keeps_the_last_error_and_failure_replaces_it() {
        let s: i32 = boundary("vhdx_test", || Err(Failure::null("vhdx_test", "disk")));
        assert_eq!(s, VHDX_ERR_INVALID_ARGUMENT);
        assert_eq!(last(), "vhdx_test: `disk` is NULL");
        let s: i32 = boundary("vhdx_test", || Ok(VHDX_OK));
        assert_eq!(s, VHDX_OK);
        assert_eq!(last(), "vhdx_test: `disk` is NULL");
        let s: i32 = boundary("vhdx_test", || Err(Failure::invalid("a\0b")));
        assert_eq!(s, VHDX_ERR_INVALID_ARGUMENT);
        assert_eq!(last(), "a\\0b");
    }

    #[test]
    fn every_error_kind_has_its_own_negative_status() {
        let kinds = [
            ErrorKind::Io,
            ErrorKind::Corrupt,
            ErrorKind::Unsupported,
            ErrorKind::InvalidArgument,
            ErrorKind::OutOfRange,
            ErrorKind::ReadOnly,
            ErrorKind::ParentNotFound,
            ErrorKind::ParentMismatch,
            ErrorKind::Refused,
            ErrorKind::Busy,
        ];
        let mut codes: Vec<i32> = kinds.iter().map(|&k| status_of(k)).collect();
        assert!(codes.iter().all(|&c| c < 0 && c != VHDX_ERR_PANIC));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        let e = Error::ReadOnly.in_file("disk.vhdx");
        let f = Failure::from(e);
        assert_eq!(f.status, VHDX_ERR_READ_ONLY);
        assert_eq!(f.message, "disk.vhdx: the disk is open read-only");
    }
}
