//! Caller-supplied storage: a table of C callbacks as a [`Storage`], so a
//! tool can put an image on its own handles (a raw device, a network block
//! store, an in-memory buffer).

use alloc::boxed::Box;
use alloc::format;
use core::ffi::{c_char, c_void};

use super::disk::{create_options, VhdxDisk};
use super::error::{Failure, FfiResult};
use super::open::{open_options, VhdxOpenOptions};
use super::ptr::{clear_out, read_struct, set_out, SizedStruct};
use super::strings::opt_text_arg;
use crate::error::IoError;
use crate::io::Storage;
use crate::Disk;

/// Reads `len` bytes at byte `offset` of the storage into `buf`. Must fill
/// all of `buf` and return 0, or return non-zero (a read that reaches past
/// the storage's size must fail).
pub type VhdxReadFn = Option<unsafe extern "C" fn(user: *mut c_void, offset: u64, buf: *mut c_void, len: usize) -> i32>;

/// Writes the `len` bytes of `buf` at byte `offset`, growing the storage
/// when the write ends past its size; returns 0, or non-zero on failure.
pub type VhdxWriteFn =
    Option<unsafe extern "C" fn(user: *mut c_void, offset: u64, buf: *const c_void, len: usize) -> i32>;

/// Makes every completed write durable (fsync); returns 0, or non-zero.
pub type VhdxFlushFn = Option<unsafe extern "C" fn(user: *mut c_void) -> i32>;

/// Stores the storage's current size in bytes in `*size`; returns 0, or non-zero.
pub type VhdxSizeFn = Option<unsafe extern "C" fn(user: *mut c_void, size: *mut u64) -> i32>;

/// Truncates or extends (with zeros) the storage to `size` bytes; returns 0,
/// or non-zero.
pub type VhdxSetSizeFn = Option<unsafe extern "C" fn(user: *mut c_void, size: u64) -> i32>;

/// Releases `user`: called once, when the library no longer needs the storage.
pub type VhdxDestroyFn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// A storage backend made of caller functions: the bytes of one VHDX image.
/// Each function gets `user` as its first argument and returns 0 on success,
/// anything else on failure (reported as VHDX_ERR_IO, naming the callback).
///
/// Required: `read` and `size`; for a writable open or a create also `write`
/// and `set_size`. `flush` may be NULL when writes are durable at once (or
/// durability does not matter, as for memory); `destroy` may be NULL.
///
/// Set `struct_size` to sizeof(VhdxStorageCallbacks):
/// `VhdxStorageCallbacks cb = { .struct_size = sizeof cb, .user = ..., ... };`.
///
/// Lifetime: the library copies this struct; `user` must stay valid until
/// `destroy` is called, or, without `destroy`, until the handle made on it is
/// closed (or the call that was given it fails). A `struct_size` the library
/// refuses (VHDX_ERR_INVALID_ARGUMENT) is the one failure where it reads no
/// field, so `destroy` is not called.
///
/// Threads: the callbacks are called on the thread of whichever vhdx call
/// needs them. `read` and `size` may run concurrently with each other when
/// the application calls vhdx_read_at (or queries) on one handle from several
/// threads; `write`, `flush` and `set_size` never run concurrently with any
/// other callback of the same storage.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VhdxStorageCallbacks {
    /// sizeof(VhdxStorageCallbacks), set by the caller.
    pub struct_size: u32,
    /// Passed to every callback; owned by the caller.
    pub user: *mut c_void,
    /// Required.
    pub read: VhdxReadFn,
    /// Required for writing.
    pub write: VhdxWriteFn,
    /// Optional (NULL: nothing to flush).
    pub flush: VhdxFlushFn,
    /// Required.
    pub size: VhdxSizeFn,
    /// Required for writing.
    pub set_size: VhdxSetSizeFn,
    /// Optional: releases `user`.
    pub destroy: VhdxDestroyFn,
}

impl Default for VhdxStorageCallbacks {
    fn default() -> Self {
        VhdxStorageCallbacks {
            struct_size: core::mem::size_of::<VhdxStorageCallbacks>() as u32,
            user: core::ptr::null_mut(),
            read: None,
            write: None,
            flush: None,
            size: None,
            set_size: None,
            destroy: None,
        }
    }
}

// SAFETY: repr(C), `struct_size: u32` first; a pointer and optional
// function pointers.
unsafe impl SizedStruct for VhdxStorageCallbacks {
    const NAME: &'static str = "VhdxStorageCallbacks";
    const OLDEST: usize = core::mem::size_of::<VhdxStorageCallbacks>();
}

/// The callbacks as a [`Storage`]; calls `destroy` when dropped.
pub(crate) struct CallbackStorage {
    cb: VhdxStorageCallbacks,
}

// SAFETY: the header requires the callbacks to be callable from any thread
// (whichever thread calls into the library), and `read`/`size` to be safe to
// run concurrently; `user` is only ever passed back to those callbacks.
unsafe impl Send for CallbackStorage {}
// SAFETY: shared access only calls `read` and `size`, which the header
// requires to be safe to call concurrently; the other callbacks need `&mut`.
unsafe impl Sync for CallbackStorage {}

fn callback_error(what: &str, status: i32) -> IoError {
    std::io::Error::other(format!("the storage's {what} callback failed (it returned {status})")).into()
}

impl Storage for CallbackStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        if buf.is_empty() {
            return Ok(());
        }
        let read = self.cb.read.ok_or_else(|| crate::error::io_unsupported("no read callback"))?;
        // SAFETY: `read` is the caller's function, called as documented with
        // its `user` and a buffer of exactly `buf.len()` writable bytes.
        let status = unsafe { read(self.cb.user, offset, buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
        if status != 0 {
            return Err(callback_error("read", status));
        }
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        if buf.is_empty() {
            return Ok(());
        }
        let write = self.cb.write.ok_or_else(|| crate::error::io_unsupported("the storage has no write callback"))?;
        // SAFETY: `write` is the caller's function, called as documented with
        // its `user` and `buf.len()` readable bytes.
        let status = unsafe { write(self.cb.user, offset, buf.as_ptr().cast::<c_void>(), buf.len()) };
        if status != 0 {
            return Err(callback_error("write", status));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        let Some(flush) = self.cb.flush else {
            return Ok(());
        };
        // SAFETY: the caller's function, called with its `user`.
        let status = unsafe { flush(self.cb.user) };
        if status != 0 {
            return Err(callback_error("flush", status));
        }
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        let size = self.cb.size.ok_or_else(|| crate::error::io_unsupported("no size callback"))?;
        let mut len = 0u64;
        // SAFETY: the caller's function, called with its `user` and a valid
        // pointer to a u64 that lives for the call.
        let status = unsafe { size(self.cb.user, &mut len) };
        if status != 0 {
            return Err(callback_error("size", status));
        }
        Ok(len)
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let set_size =
            self.cb.set_size.ok_or_else(|| crate::error::io_unsupported("the storage has no set_size callback"))?;
        // SAFETY: the caller's function, called with its `user`.
        let status = unsafe { set_size(self.cb.user, len) };
        if status != 0 {
            return Err(callback_error("set_size", status));
        }
        Ok(())
    }
}

impl Drop for CallbackStorage {
    fn drop(&mut self) {
        if let Some(destroy) = self.cb.destroy {
            // SAFETY: called exactly once, as the last use of `user`.
            unsafe { destroy(self.cb.user) };
        }
    }
}

/// Takes the callback table `cb` (so `destroy` runs when the result drops)
/// and checks it has what `writable` use needs.
///
/// # Safety
/// `cb` is NULL or points to a readable VhdxStorageCallbacks of
/// `struct_size` bytes.
unsafe fn take_callbacks(
    function: &str,
    cb: *const VhdxStorageCallbacks,
    writable: bool,
) -> FfiResult<CallbackStorage> {
    // SAFETY: the caller promises NULL or a readable table; it is copied.
    let cb = unsafe { read_struct(function, "storage", cb)? }.ok_or_else(|| Failure::null(function, "storage"))?;
    let storage = CallbackStorage { cb };
    let missing = if cb.read.is_none() {
        Some("read")
    } else if cb.size.is_none() {
        Some("size")
    } else if writable && cb.write.is_none() {
        Some("write")
    } else if writable && cb.set_size.is_none() {
        Some("set_size")
    } else {
        None
    };
    if let Some(name) = missing {
        let why = if writable { " (needed for writing)" } else { "" };
        return Err(Failure::invalid(format!("{function}: the storage's `{name}` callback is NULL{why}")));
    }
    Ok(storage)
}

/// Opens the VHDX image held by caller-supplied storage.
///
/// `name` (may be NULL) names the image in messages and in
/// vhdx_chain_path; when it is the image's path, a differencing image's
/// relative parent path is resolved against it. `options` (may be NULL:
/// read-only, parents through the locator) chooses writability and how a
/// differencing image's parent is found — typically `options->parent`, a
/// parent you opened yourself (for example with vhdx_open_callbacks too).
///
/// On success stores a new handle in `*out`; on failure stores NULL.
///
/// Ownership: the library takes the storage: `storage->destroy` (when set) is
/// called exactly once, when the handle is closed — or before this function
/// returns when it fails (except for a `struct_size` of `storage` refused:
/// see VhdxStorageCallbacks). It also takes `options->parent` whatever the
/// result (see VhdxOpenOptions). The caller owns the new handle.
/// Thread safety: safe from any thread; see VhdxStorageCallbacks for the
/// threads the callbacks run on.
///
/// # Safety
/// `storage` points to a valid VhdxStorageCallbacks of `struct_size` bytes; `name` is NULL or a
/// NUL-terminated string; `options` is NULL or points to a valid
/// VhdxOpenOptions; `out` points to a writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_open_callbacks(
    storage: *const VhdxStorageCallbacks,
    name: *const c_char,
    options: *const VhdxOpenOptions,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_open_callbacks", {
        const F: &str = "vhdx_open_callbacks";
        // Take ownership of everything first, so that every failure releases it.
        // SAFETY: the caller's promise on `options`.
        let opts = unsafe { open_options(F, options) };
        let writable = opts.as_ref().map(|o| o.writable).unwrap_or(false);
        // SAFETY: the caller's promise on `storage`.
        let storage = unsafe { take_callbacks(F, storage, writable) };
        // SAFETY: the caller's promise on `out`.
        unsafe { clear_out(F, out)? };
        let (mut opts, storage) = (opts?.options, storage?);
        // SAFETY: the caller's promise on `name`.
        let name = unsafe { opt_text_arg(name) };
        opts.path = name.clone();
        let disk = opts.open_storage(Box::new(storage)).map_err(|e| match &name {
            Some(n) => Failure::from(e.in_file(n)),
            None => Failure::from(e),
        })?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, VhdxDisk::new(disk, name)) }
    })
}

/// Creates a fixed or dynamic image on the callback storage `storage`.
///
/// # Safety
/// `storage` points to a valid VhdxStorageCallbacks of `struct_size` bytes; `out` is NULL or points
/// to a writable `VhdxDisk *`.
unsafe fn create_on(
    function: &str,
    storage: *const VhdxStorageCallbacks,
    fixed: bool,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    out: *mut *mut VhdxDisk,
) -> FfiResult<i32> {
    // SAFETY: our caller's promise on `storage`.
    let storage = unsafe { take_callbacks(function, storage, true) };
    // SAFETY: our caller's promise on `out`.
    unsafe { clear_out(function, out)? };
    let storage = storage?;
    let options = create_options(fixed, virtual_size, block_size, logical_sector_size);
    let disk = Disk::create_on(Box::new(storage), &options, None)?;
    // SAFETY: checked by clear_out.
    unsafe { set_out(out, VhdxDisk::new(disk, None)) }
}

/// Creates a dynamic VHDX image on caller-supplied storage (which should be
/// empty: size 0) and opens it for writing. The parameters are those of
/// vhdx_create_dynamic (0 = default block size / 512-byte sectors).
///
/// On success stores a new handle in `*out`; on failure stores NULL.
///
/// Ownership: the library takes the storage: `storage->destroy` (when set) is
/// called exactly once, when the handle is closed — or before this function
/// returns when it fails (except for a `struct_size` refused: see
/// VhdxStorageCallbacks). The caller owns the new handle.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `storage` points to a valid VhdxStorageCallbacks of `struct_size` bytes; `out` points to a
/// writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_dynamic_callbacks(
    storage: *const VhdxStorageCallbacks,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_dynamic_callbacks", {
        // SAFETY: the caller's promises on `storage` and `out`.
        unsafe {
            create_on(
                "vhdx_create_dynamic_callbacks",
                storage,
                false,
                virtual_size,
                block_size,
                logical_sector_size,
                out,
            )
        }
    })
}

/// Creates a fixed VHDX image on caller-supplied storage (which should be
/// empty: size 0) and opens it for writing. The parameters are those of
/// vhdx_create_fixed (0 = default block size / 512-byte sectors).
///
/// On success stores a new handle in `*out`; on failure stores NULL.
///
/// Ownership: as vhdx_create_dynamic_callbacks.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `storage` points to a valid VhdxStorageCallbacks of `struct_size` bytes; `out` points to a
/// writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_fixed_callbacks(
    storage: *const VhdxStorageCallbacks,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_fixed_callbacks", {
        // SAFETY: the caller's promises on `storage` and `out`.
        unsafe {
            create_on("vhdx_create_fixed_callbacks", storage, true, virtual_size, block_size, logical_sector_size, out)
        }
    })
}

/// Copies a raw disk image, read through caller-supplied storage, into the
/// open, writable `disk`: every 4 KiB of the source holding a non-zero
/// byte is written, all-zero ones are skipped, so a dynamic or
/// differencing `disk` allocates only blocks with data. `disk` must read
/// as zeros where nothing is copied (a new image), and its virtual size
/// must equal the source's size (a whole number of 512-byte sectors).
/// Nothing is flushed: call vhdx_flush or vhdx_close.
///
/// `source` needs only `read` and `size`; it is read, never written. When
/// `bytes_written` is not NULL it receives the bytes written (on success).
///
/// Returns VHDX_OK, VHDX_ERR_INVALID_ARGUMENT (a NULL argument, a missing
/// callback, sizes that differ or are not whole sectors), VHDX_ERR_READ_ONLY,
/// or the error of a read or write (VHDX_ERR_IO naming the callback).
///
/// Ownership: the library takes `source` as vhdx_open_callbacks does:
/// `source->destroy` (when set) is called exactly once, before this
/// function returns, whatever the result (except for a `struct_size` of
/// `source` refused).
/// Thread safety: takes the handle's lock exclusively.
///
/// # Safety
/// `source` points to a valid VhdxStorageCallbacks of `struct_size` bytes;
/// `disk` is NULL or a live handle; `bytes_written` is NULL or points to a
/// writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_import_raw(
    source: *const VhdxStorageCallbacks,
    disk: *mut VhdxDisk,
    bytes_written: *mut u64,
) -> i32 {
    ffi!("vhdx_import_raw", {
        const F: &str = "vhdx_import_raw";
        // SAFETY: the caller's promise on `source`; taken first, so every
        // failure below releases it.
        let storage = unsafe { take_callbacks(F, source, false) }?;
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { super::ptr::disk_arg(F, disk)? };
        let device = crate::RawDevice::new(Box::new(storage), false)?;
        let mut guard = d.write()?;
        let n =
            crate::ops::convert::copy_nonzero(&device, guard.device_mut(), &mut |_, _| {}).map_err(|e| d.fail(e))?;
        drop(guard);
        // SAFETY: the caller promises NULL or a writable uint64_t.
        if let Some(out) = unsafe { bytes_written.as_mut() } {
            *out = n;
        }
        Ok(super::error::VHDX_OK)
    })
}
