//! I/O resolution for VMMs that move payload themselves: where a range's
//! bytes are in the chain's files, and the space a write needs.

use super::disk::VhdxDisk;
use alloc::format;
use alloc::vec::Vec;

use super::error::{Failure, FfiResult, VHDX_OK};
use super::ptr::{array_out_arg, disk_arg, fill_array};
use crate::{IoExtent, IoTarget};

/// VhdxIoExtent.kind: the bytes are in a file of the chain.
pub const VHDX_EXTENT_FILE: u32 = 0;
/// VhdxIoExtent.kind: the bytes read as zeros; there is nothing to read.
pub const VHDX_EXTENT_ZERO: u32 = 1;

/// One piece of a resolved range of the virtual disk.
///
/// A plain value in arrays the caller allocates, so it has no
/// `struct_size`: its layout never changes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxIoExtent {
    /// Virtual byte offset of the piece.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// VHDX_EXTENT_FILE or VHDX_EXTENT_ZERO.
    pub kind: u32,
    /// For VHDX_EXTENT_FILE: the chain level whose file holds the bytes (0
    /// is the handle's own image, 1 its parent, ...; vhdx_chain_path names
    /// each level's file).
    pub level: u32,
    /// For VHDX_EXTENT_FILE: the byte offset in that file.
    pub file_offset: u64,
}

fn to_c(e: &IoExtent) -> VhdxIoExtent {
    let (kind, level, file_offset) = match e.target {
        IoTarget::File { level, file_offset } => {
            (VHDX_EXTENT_FILE, u32::try_from(level).unwrap_or(u32::MAX), file_offset)
        }
        IoTarget::Zero => (VHDX_EXTENT_ZERO, 0, 0),
    };
    VhdxIoExtent { offset: e.offset, length: e.length, kind, level, file_offset }
}

/// Where the bytes of `len` bytes at `offset` are, through the chain, for a
/// caller that reads them itself (io_uring, overlapped I/O): pieces in
/// order, each in one level's file (VHDX_EXTENT_FILE) or zeros
/// (VHDX_EXTENT_ZERO). Reading each file piece at its file offset gives
/// what vhdx_read_at gives. The pieces stay true until a call that moves
/// data (vhdx_discard, vhdx_compact, vhdx_resize, a merge).
///
/// Protocol: `*count` receives the number of pieces; the first
/// min(`cap`, `*count`) are written to `extents`. So call with room for a
/// few, and again with more when `*count` is greater than `cap`.
///
/// Returns VHDX_OK, VHDX_ERR_OUT_OF_RANGE past the virtual size,
/// VHDX_ERR_UNSUPPORTED for a VHD, VHDX_ERR_INVALID_ARGUMENT for a NULL
/// `disk` or `count`, or `extents` NULL with `cap` > 0.
///
/// Ownership: `extents` and `count` are the caller's. Thread safety: takes
/// the handle's lock shared: runs in parallel with reads and writes.
///
/// # Safety
/// `disk` is NULL or a live handle; `extents` is NULL with `cap == 0` or
/// points to `cap` writable VhdxIoExtent; `count` is NULL or points to a
/// writable size_t.
#[no_mangle]
pub unsafe extern "C" fn vhdx_resolve_read(
    disk: *const VhdxDisk,
    offset: u64,
    len: u64,
    extents: *mut VhdxIoExtent,
    cap: usize,
    count: *mut usize,
) -> i32 {
    const F: &str = "vhdx_resolve_read";
    ffi!("vhdx_resolve_read", {
        // SAFETY: the caller's promises on `disk`, `extents`, `cap` and `count`.
        unsafe {
            hand_out(F, disk, extents, cap, count, |d| {
                d.read()?.vhdx(F)?.resolve_read(offset, len).map_err(|e| d.fail(e))
            })
        }
    })
}

/// The body both resolve calls share: checks `disk`, `count` and
/// `extents`, gets the pieces from `resolve`, writes the first `cap` of
/// them to `extents` and their number to `*count`.
///
/// # Safety
/// As vhdx_resolve_read's arguments.
unsafe fn hand_out(
    function: &str,
    disk: *const VhdxDisk,
    extents: *mut VhdxIoExtent,
    cap: usize,
    count: *mut usize,
    resolve: impl FnOnce(&VhdxDisk) -> FfiResult<Vec<IoExtent>>,
) -> FfiResult<i32> {
    // SAFETY: the caller promises NULL or a live handle.
    let d = unsafe { disk_arg(function, disk)? };
    if count.is_null() {
        return Err(Failure::null(function, "count"));
    }
    array_out_arg(function, "extents", extents, cap, "cap")?;
    let pieces = resolve(d)?;
    // SAFETY: checked above; the caller promises `cap` writable entries.
    unsafe { fill_array(extents, cap, pieces.iter().map(to_c)) };
    // SAFETY: non-NULL, and the caller promises a writable size_t.
    unsafe { count.write(pieces.len()) };
    Ok(VHDX_OK)
}

/// Makes what a write of `len` bytes at `offset` needs (new blocks, filled
/// with zeros) and says where in the handle's own file (level 0) to write
/// them; write the bytes there yourself, then call vhdx_commit_write with
/// the same range, and vhdx_flush when they must be durable. Until the
/// commit the range reads as before. A differencing disk takes whole
/// logical sectors only (VHDX_ERR_INVALID_ARGUMENT otherwise; write a
/// partial sector with vhdx_write_at).
///
/// Protocol as vhdx_resolve_read's. A call whose `cap` was too small has
/// still made the space: call again with room for `*count` pieces.
///
/// Returns VHDX_OK, VHDX_ERR_READ_ONLY, VHDX_ERR_OUT_OF_RANGE,
/// VHDX_ERR_UNSUPPORTED for a VHD, VHDX_ERR_INVALID_ARGUMENT, or the
/// error growing the file (the space taken is given back).
///
/// Thread safety: takes the handle's lock exclusively while it makes the
/// space.
///
/// # Safety
/// As vhdx_resolve_read.
#[no_mangle]
pub unsafe extern "C" fn vhdx_resolve_write(
    disk: *mut VhdxDisk,
    offset: u64,
    len: u64,
    extents: *mut VhdxIoExtent,
    cap: usize,
    count: *mut usize,
) -> i32 {
    const F: &str = "vhdx_resolve_write";
    ffi!("vhdx_resolve_write", {
        // SAFETY: the caller's promises on `disk`, `extents`, `cap` and `count`.
        unsafe {
            hand_out(F, disk, extents, cap, count, |d| {
                d.write()?.vhdx_mut(F)?.resolve_write(offset, len).map_err(|e| d.fail(e))
            })
        }
    })
}

/// The bytes of `len` bytes at `offset` are written where
/// vhdx_resolve_write said: from now on the range reads them (a
/// differencing disk's sector bitmap bits are set). They are durable after
/// the next vhdx_flush.
///
/// Returns VHDX_OK, VHDX_ERR_INVALID_ARGUMENT when part of the range was
/// not resolved for writing (nothing changes), VHDX_ERR_READ_ONLY,
/// VHDX_ERR_OUT_OF_RANGE, VHDX_ERR_UNSUPPORTED for a VHD.
///
/// Thread safety: takes the handle's lock exclusively.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_commit_write(disk: *mut VhdxDisk, offset: u64, len: u64) -> i32 {
    ffi!("vhdx_commit_write", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_commit_write", disk)? };
        d.write()?.vhdx_mut("vhdx_commit_write")?.commit_write(offset, len).map_err(|e| d.fail(e))?;
        Ok(VHDX_OK)
    })
}

/// The open file of chain level `level` (0: the handle's own image; 1: its
/// parent; ...; as VhdxIoExtent.level names them), for doing the I/O of
/// resolved pieces yourself: `*out` receives the file descriptor on Unix,
/// the file HANDLE on Windows. Use it with positioned I/O only (pread and
/// pwrite, io_uring; ReadFile and WriteFile with an OVERLAPPED offset). On
/// Windows it is the only way to write the image's file while the handle
/// is open, as a writable image is opened sharing reading only; elsewhere it
/// saves opening the file again by its path.
///
/// Returns VHDX_OK, VHDX_ERR_OUT_OF_RANGE when `level` >=
/// vhdx_chain_length, VHDX_ERR_UNSUPPORTED for a VHD or a level that is
/// not a file (vhdx_open_callbacks), VHDX_ERR_INVALID_ARGUMENT for a NULL
/// `disk` or `out`.
///
/// Ownership: the descriptor or HANDLE stays the library's: valid until
/// vhdx_close, which closes it; never close it yourself (duplicate it, with
/// dup or DuplicateHandle, to keep one). Thread safety: may run in
/// parallel with reads, writes and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle; `out` is NULL or points to a writable
/// ptrdiff_t (pointer-sized, as a descriptor or HANDLE fits in).
#[no_mangle]
pub unsafe extern "C" fn vhdx_level_file(disk: *const VhdxDisk, level: u32, out: *mut isize) -> i32 {
    const F: &str = "vhdx_level_file";
    ffi!("vhdx_level_file", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg(F, disk)? };
        if out.is_null() {
            return Err(Failure::null(F, "out"));
        }
        let guard = d.read()?;
        let image = guard.vhdx(F)?;
        let levels = image.chain_paths().len();
        let file = if (level as usize) < levels {
            image.level_file(level as usize).ok_or_else(|| Failure {
                status: super::error::VHDX_ERR_UNSUPPORTED,
                message: format!("{F}: level {level} of the chain is not a file"),
            })?
        } else {
            return Err(Failure {
                status: super::error::VHDX_ERR_OUT_OF_RANGE,
                message: format!("{F}: level {level} is past the chain of {levels} image(s)"),
            });
        };
        #[cfg(unix)]
        let raw = std::os::fd::AsRawFd::as_raw_fd(file) as isize;
        #[cfg(windows)]
        let raw = std::os::windows::io::AsRawHandle::as_raw_handle(file) as isize;
        #[cfg(not(any(unix, windows)))]
        let raw: isize = {
            let _ = file;
            return Err(Failure {
                status: super::error::VHDX_ERR_UNSUPPORTED,
                message: format!("{F}: this platform has no file descriptors to give"),
            });
        };
        // SAFETY: non-NULL, and the caller promises a writable ptrdiff_t.
        unsafe { out.write(raw) };
        Ok(VHDX_OK)
    })
}
