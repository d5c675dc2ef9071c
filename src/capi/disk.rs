//! The disk handle: open, create, read, write, flush, close, and queries.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use core::ffi::{c_char, c_void};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::error::{Failure, FfiResult, VHDX_ERR_PANIC, VHDX_OK};
use super::ptr::{bytes_arg, bytes_mut_arg, clear_out, disk_arg, out_struct, set_out, SizedStruct};
use super::strings::{copy_out, path_arg};
use crate::format::vhd::VhdType;
use crate::vhd::VhdDisk;
use crate::{BlockDevice, CreateOptions, Disk, DiskType, Error, OpenOptions};

/// A fixed disk: every block allocated when the image was created.
pub const VHDX_DISK_TYPE_FIXED: i32 = 0;
/// A dynamic disk: blocks allocated on first write.
pub const VHDX_DISK_TYPE_DYNAMIC: i32 = 1;
/// A differencing disk: blocks allocated on first write; sectors it does not
/// hold are read from its parent.
pub const VHDX_DISK_TYPE_DIFFERENCING: i32 = 2;

/// An open VHDX image (opaque). Obtained from vhdx_open, vhdx_open_with,
/// vhdx_open_callbacks or a vhdx_create* function; released with vhdx_close.
///
/// Thread safety: a handle may be used from any thread, and from several at
/// once: it holds a reader-writer lock, so vhdx_read_at, the queries and
/// vhdx_write_at into space the image already stores run in parallel; the
/// metadata step of a new block, vhdx_flush and the maintenance calls run
/// one at a time and exclude the rest. Only vhdx_close must not overlap any
/// other call on it.
pub struct VhdxDisk {
    disk: RwLock<Held>,
    /// The file's path, or the name given for callback storage: for messages.
    name: Option<String>,
}

/// What a handle holds: a VHDX disk, or a VHD one (vhdx_format tells them
/// apart). Reads, writes, flushes, sizes and the chain take either; the
/// operations built on VHDX structures (resize, compact, merge, ...) give
/// VHDX_ERR_UNSUPPORTED for a VHD.
pub(crate) type Held = crate::AnyDisk;

impl Held {
    /// Either disk as a block device.
    pub(crate) fn device(&self) -> &dyn BlockDevice {
        match self {
            Held::Vhdx(d) => d,
            Held::Vhd(d) => d,
        }
    }

    /// Either disk as a block device, for writing.
    pub(crate) fn device_mut(&mut self) -> &mut dyn BlockDevice {
        match self {
            Held::Vhdx(d) => d,
            Held::Vhd(d) => d,
        }
    }

    /// The VHDX disk, or VHDX_ERR_UNSUPPORTED naming `what` for a VHD.
    pub(crate) fn vhdx(&self, what: &str) -> FfiResult<&Disk> {
        match self {
            Held::Vhdx(d) => Ok(d),
            Held::Vhd(_) => Err(vhd_unsupported(what)),
        }
    }

    /// [`Held::vhdx`], for changing it.
    pub(crate) fn vhdx_mut(&mut self, what: &str) -> FfiResult<&mut Disk> {
        match self {
            Held::Vhdx(d) => Ok(d),
            Held::Vhd(_) => Err(vhd_unsupported(what)),
        }
    }
}

fn vhd_unsupported(what: &str) -> Failure {
    Failure::from(Error::unsupported("VHD", 0, format!("{what} takes a VHDX image; this handle holds a VHD")))
}

impl VhdxDisk {
    pub(crate) fn new(disk: Disk, name: Option<String>) -> VhdxDisk {
        VhdxDisk { disk: RwLock::new(Held::Vhdx(disk)), name }
    }

    pub(crate) fn new_vhd(disk: VhdDisk, name: Option<String>) -> VhdxDisk {
        VhdxDisk { disk: RwLock::new(Held::Vhd(disk)), name }
    }

    pub(crate) fn from_any(disk: crate::AnyDisk, name: Option<String>) -> VhdxDisk {
        VhdxDisk { disk: RwLock::new(disk), name }
    }

    /// The disk, shared.
    pub(crate) fn read(&self) -> FfiResult<RwLockReadGuard<'_, Held>> {
        self.disk.read().map_err(|_| poisoned())
    }

    /// The disk, exclusively.
    pub(crate) fn write(&self) -> FfiResult<RwLockWriteGuard<'_, Held>> {
        self.disk.write().map_err(|_| poisoned())
    }

    /// `e`, naming this disk's file.
    pub(crate) fn fail(&self, e: Error) -> Failure {
        match &self.name {
            Some(name) => Failure::from(e.in_file(name)),
            None => Failure::from(e),
        }
    }

    /// The VHDX disk itself, for handing it on (as a parent).
    pub(crate) fn into_disk(self, what: &str) -> FfiResult<Disk> {
        match self.disk.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Held::Vhdx(d) => Ok(d),
            Held::Vhd(_) => Err(vhd_unsupported(what)),
        }
    }

    /// The handle for C: ownership passes to the caller.
    pub(crate) fn into_raw(self) -> *mut VhdxDisk {
        Box::into_raw(Box::new(self))
    }
}

fn poisoned() -> Failure {
    Failure {
        status: VHDX_ERR_PANIC,
        message: String::from("an earlier call failed inside libvhdx while changing this disk; close the handle"),
    }
}

/// A VHD's type as the VHDX_DISK_TYPE_* codes say it.
pub(crate) fn vhd_type_code(t: VhdType) -> i32 {
    match t {
        VhdType::Fixed => VHDX_DISK_TYPE_FIXED,
        VhdType::Differencing => VHDX_DISK_TYPE_DIFFERENCING,
        _ => VHDX_DISK_TYPE_DYNAMIC,
    }
}

/// vhdx_info's answer for a VHD: sizes, type, blocks and chain; the GUIDs a
/// VHD does not have are zero, and its unique ID stands for the virtual disk
/// ID (a child's parent unique ID for the linkage).
fn vhd_info(v: &VhdDisk) -> VhdxInfo {
    let header = v.dynamic_header();
    let (allocated, total) = v.allocated_blocks();
    let chain = v.chain_paths().len() as u32;
    let linkage = header.filter(|_| v.disk_type() == VhdType::Differencing).map(|h| h.parent_unique_id);
    VhdxInfo {
        struct_size: 0,
        disk_type: vhd_type_code(v.disk_type()),
        logical_sector_size: 512,
        physical_sector_size: 512,
        block_size: header.map_or(0, |h| h.block_size),
        virtual_size: v.virtual_size(),
        file_size: 0,
        allocated_blocks: allocated,
        total_blocks: total,
        chain_length: chain,
        writable: BlockDevice::is_writable(v),
        log_replayed: false,
        has_parent_linkage: linkage.is_some(),
        virtual_disk_id: v.footer().unique_id.into_bytes(),
        data_write_guid: [0; 16],
        file_write_guid: [0; 16],
        parent_linkage: linkage.map(|g| g.into_bytes()).unwrap_or_default(),
    }
}

pub(crate) fn type_code(t: DiskType) -> i32 {
    match t {
        DiskType::Fixed => VHDX_DISK_TYPE_FIXED,
        DiskType::Dynamic => VHDX_DISK_TYPE_DYNAMIC,
        DiskType::Differencing => VHDX_DISK_TYPE_DIFFERENCING,
    }
}

/// CreateOptions from the C arguments (0 = default block and sector size).
pub(crate) fn create_options(
    fixed: bool,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
) -> CreateOptions {
    let mut o = if fixed { CreateOptions::fixed(virtual_size) } else { CreateOptions::dynamic(virtual_size) };
    if block_size != 0 {
        o = o.block_size(block_size);
    }
    if logical_sector_size != 0 {
        o = o.logical_sector_size(logical_sector_size);
    }
    o
}

/// Opens the VHDX or VHD image at `path` (told apart by content: see
/// vhdx_format), read-only or for reading and writing.
///
/// A differencing disk's parents are found through its parent locator (the
/// relative path first, then the absolute ones) and each must match the
/// child's parent linkage; the whole chain opens read-only except the leaf.
/// For other choices (no parent, a resolver callback, confined search
/// directories, a parent you opened) use vhdx_open_with.
///
/// On success stores a new handle in `*out` and returns VHDX_OK; on failure
/// stores NULL and returns a negative status (VHDX_ERR_IO when the file
/// cannot be opened, VHDX_ERR_CORRUPT when it is not a valid VHDX image,
/// VHDX_ERR_PARENT_NOT_FOUND / VHDX_ERR_PARENT_MISMATCH for a chain).
///
/// Ownership: the caller owns the new handle and releases it with vhdx_close.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to a writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_open(path: *const c_char, writable: bool, out: *mut *mut VhdxDisk) -> i32 {
    ffi!("vhdx_open", {
        // SAFETY: the caller's promises on `out` and `path`.
        unsafe { clear_out("vhdx_open", out)? };
        // SAFETY: as above.
        let path = unsafe { path_arg("vhdx_open", "path", path)? };
        let name = Some(path.display().to_string());
        // Either format, by content.
        let handle = VhdxDisk::from_any(OpenOptions::new().writable(writable).open_any(&path)?, name);
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, handle) }
    })
}

/// The format of the image `disk` holds: VHDX_FORMAT_VHDX or
/// VHDX_FORMAT_VHD, or a negative status (a NULL `disk`). vhdx_open tells
/// them apart by content; vhdx_read_at, vhdx_write_at, vhdx_flush, the size
/// and type queries, vhdx_info and the chain queries take both, and the
/// operations built on VHDX structures (resize, discard, compact, merge,
/// set-parent, change set, repair) give VHDX_ERR_UNSUPPORTED for a VHD.
///
/// Ownership: nothing changes hands.
/// Thread safety: may run in parallel with reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_format(disk: *const VhdxDisk) -> i32 {
    ffi!("vhdx_format", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_format", disk)? };
        Ok(match &*d.read()? {
            Held::Vhdx(_) => super::maintain::VHDX_FORMAT_VHDX,
            Held::Vhd(_) => super::maintain::VHDX_FORMAT_VHD,
        })
    })
}

/// Creates a VHD (version 1) at `path` (which must not exist) and opens it
/// for writing: fixed when `fixed` (the file is the disk's bytes then a
/// 512-byte footer), else dynamic with blocks of `block_size` bytes (a power
/// of two from 512 KiB to 256 MiB, or 0 for 2 MiB, as Windows makes them).
/// `virtual_size` is a non-zero multiple of 512, at most 2040 GiB. Bad
/// values give VHDX_ERR_INVALID_ARGUMENT; an existing file VHDX_ERR_IO.
///
/// On success stores a new handle in `*out` (vhdx_format says
/// VHDX_FORMAT_VHD); on failure stores NULL and removes any partly written
/// file.
///
/// Ownership: the caller owns the new handle and releases it with vhdx_close.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to a writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_vhd(
    path: *const c_char,
    fixed: bool,
    virtual_size: u64,
    block_size: u32,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_vhd", {
        // SAFETY: the caller's promises on `out` and `path`.
        unsafe { clear_out("vhdx_create_vhd", out)? };
        // SAFETY: as above.
        let path = unsafe { path_arg("vhdx_create_vhd", "path", path)? };
        let mut options = if fixed {
            crate::vhd::VhdCreateOptions::fixed(virtual_size)
        } else {
            crate::vhd::VhdCreateOptions::dynamic(virtual_size)
        };
        if block_size != 0 {
            options = options.block_size(block_size);
        }
        let disk = VhdDisk::create(&path, &options)?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, VhdxDisk::new_vhd(disk, Some(path.display().to_string()))) }
    })
}

/// Creates a differencing VHD at `path` (which must not exist) over the VHD
/// at `parent_path` (a VHD's parent is a VHD: a VHDX parent gives
/// VHDX_ERR_CORRUPT, not a VHD), and opens it for writing with the parent
/// open read-only inside it. The child records the parent's unique ID and
/// its relative (W2ru) and absolute (W2ku) paths, as Windows does.
///
/// On success stores a new handle in `*out`; on failure stores NULL and
/// removes any partly written file.
///
/// Ownership: the caller owns the new handle and releases it with vhdx_close.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` and `parent_path` are NUL-terminated strings; `out` points to a
/// writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_vhd_differencing(
    path: *const c_char,
    parent_path: *const c_char,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_vhd_differencing", {
        // SAFETY: the caller's promises on `out`, `path` and `parent_path`.
        unsafe { clear_out("vhdx_create_vhd_differencing", out)? };
        // SAFETY: as above.
        let path = unsafe { path_arg("vhdx_create_vhd_differencing", "path", path)? };
        // SAFETY: as above.
        let parent = unsafe { path_arg("vhdx_create_vhd_differencing", "parent_path", parent_path)? };
        let disk = VhdDisk::create_differencing(&path, &parent)?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, VhdxDisk::new_vhd(disk, Some(path.display().to_string()))) }
    })
}

fn create(path: &std::path::Path, options: &CreateOptions) -> FfiResult<VhdxDisk> {
    let disk = Disk::create(path, options)?;
    Ok(VhdxDisk::new(disk, Some(path.display().to_string())))
}

/// Creates a fixed VHDX image at `path` (which must not exist; every block is
/// allocated now, so the file is about `virtual_size` bytes) and opens it for
/// writing. The disk reads as zeros.
///
/// `virtual_size` is in bytes, a multiple of the logical sector size, at most
/// 64 TiB. `block_size` is a power of two from 1 MiB to 256 MiB, or 0 for
/// the default (32 MiB). `logical_sector_size` is 512 or 4096, or 0 for 512.
/// Bad values give VHDX_ERR_INVALID_ARGUMENT; an existing file VHDX_ERR_IO.
///
/// On success stores a new handle in `*out`; on failure stores NULL and
/// removes any partly written file.
///
/// Ownership: the caller owns the new handle and releases it with vhdx_close.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to a writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_fixed(
    path: *const c_char,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_fixed", {
        // SAFETY: the caller's promises on `out` and `path`.
        unsafe { clear_out("vhdx_create_fixed", out)? };
        // SAFETY: as above.
        let path = unsafe { path_arg("vhdx_create_fixed", "path", path)? };
        let disk = create(&path, &create_options(true, virtual_size, block_size, logical_sector_size))?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, disk) }
    })
}

/// Creates a dynamic VHDX image at `path` (which must not exist; blocks are
/// allocated on first write) and opens it for writing. The disk reads as
/// zeros.
///
/// `virtual_size` is in bytes, a multiple of the logical sector size, at most
/// 64 TiB. `block_size` is a power of two from 1 MiB to 256 MiB, or 0 for
/// the default (32 MiB). `logical_sector_size` is 512 or 4096, or 0 for 512.
/// Bad values give VHDX_ERR_INVALID_ARGUMENT; an existing file VHDX_ERR_IO.
///
/// On success stores a new handle in `*out`; on failure stores NULL and
/// removes any partly written file.
///
/// Ownership: the caller owns the new handle and releases it with vhdx_close.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to a writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_dynamic(
    path: *const c_char,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_dynamic", {
        // SAFETY: the caller's promises on `out` and `path`.
        unsafe { clear_out("vhdx_create_dynamic", out)? };
        // SAFETY: as above.
        let path = unsafe { path_arg("vhdx_create_dynamic", "path", path)? };
        let disk = create(&path, &create_options(false, virtual_size, block_size, logical_sector_size))?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, disk) }
    })
}

/// Creates a differencing VHDX image at `path` (which must not exist) whose
/// parent is the image at `parent_path`, and opens it for writing. The child
/// reads exactly as the parent until written; it takes the parent's virtual
/// size and sector sizes, a 2 MiB block size, and records the parent's
/// relative and absolute paths and its DataWriteGuid (the linkage).
///
/// Do not write to the parent afterwards: that changes its DataWriteGuid and
/// the child then refuses to open (VHDX_ERR_PARENT_MISMATCH).
///
/// On success stores a new handle in `*out` (the parent is open read-only
/// inside it); on failure stores NULL and removes any partly written file.
///
/// Ownership: the caller owns the new handle and releases it with vhdx_close.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` and `parent_path` are NUL-terminated strings; `out` points to a
/// writable `VhdxDisk *`.
#[no_mangle]
pub unsafe extern "C" fn vhdx_create_differencing(
    path: *const c_char,
    parent_path: *const c_char,
    out: *mut *mut VhdxDisk,
) -> i32 {
    ffi!("vhdx_create_differencing", {
        // SAFETY: the caller's promises on `out`, `path` and `parent_path`.
        unsafe { clear_out("vhdx_create_differencing", out)? };
        // SAFETY: as above.
        let path = unsafe { path_arg("vhdx_create_differencing", "path", path)? };
        // SAFETY: as above.
        let parent = unsafe { path_arg("vhdx_create_differencing", "parent_path", parent_path)? };
        let disk = Disk::create_differencing(&path, &parent, None)?;
        // SAFETY: checked by clear_out.
        unsafe { set_out(out, VhdxDisk::new(disk, Some(path.display().to_string()))) }
    })
}

/// The virtual disk size in bytes; 0 when `disk` is NULL (with a message for
/// vhdx_last_error).
///
/// Ownership: nothing changes hands.
/// Thread safety: may run in parallel with reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_virtual_size(disk: *const VhdxDisk) -> u64 {
    ffi!("vhdx_virtual_size", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_virtual_size", disk)? };
        Ok(d.read()?.device().capacity())
    })
}

/// The logical sector size in bytes (512 or 4096); 0 when `disk` is NULL
/// (with a message for vhdx_last_error).
///
/// Ownership: nothing changes hands.
/// Thread safety: may run in parallel with reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_logical_sector_size(disk: *const VhdxDisk) -> u32 {
    ffi!("vhdx_logical_sector_size", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_logical_sector_size", disk)? };
        Ok(d.read()?.device().sector_size())
    })
}

/// VHDX_DISK_TYPE_FIXED, VHDX_DISK_TYPE_DYNAMIC or
/// VHDX_DISK_TYPE_DIFFERENCING; VHDX_ERR_INVALID_ARGUMENT when `disk` is NULL.
///
/// Ownership: nothing changes hands.
/// Thread safety: may run in parallel with reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_disk_type(disk: *const VhdxDisk) -> i32 {
    ffi!("vhdx_disk_type", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_disk_type", disk)? };
        Ok(match &*d.read()? {
            Held::Vhdx(x) => type_code(x.disk_type()),
            Held::Vhd(v) => vhd_type_code(v.disk_type()),
        })
    })
}

/// Reads `len` bytes of the virtual disk at byte `offset` into `buf`. Any
/// offset and length inside the disk are allowed (no alignment needed);
/// unwritten sectors read as zeros, or from the parent of a differencing disk.
///
/// Returns VHDX_OK, or VHDX_ERR_OUT_OF_RANGE when `offset + len` passes the
/// virtual size (nothing is read), VHDX_ERR_INVALID_ARGUMENT for a NULL
/// `disk`, or a NULL `buf` with `len > 0`.
///
/// Ownership: `buf` is the caller's and is not kept.
/// Thread safety: calls on the same handle may run in parallel (shared lock).
///
/// # Safety
/// `disk` is NULL or a live handle; `buf` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_read_at(disk: *const VhdxDisk, offset: u64, buf: *mut c_void, len: usize) -> i32 {
    ffi!("vhdx_read_at", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_read_at", disk)? };
        // SAFETY: the caller promises `len` writable bytes at `buf` that
        // nothing else touches during the call.
        let slice = unsafe { bytes_mut_arg("vhdx_read_at", "buf", buf.cast::<u8>(), len)? };
        d.read()?.device().read_at(slice, offset).map_err(|e| d.fail(e))?;
        Ok(VHDX_OK)
    })
}

/// Writes `len` bytes from `buf` to the virtual disk at byte `offset`. Any
/// offset and length inside the disk are allowed; blocks are allocated as
/// needed. The data is durable after the next vhdx_flush or vhdx_close.
///
/// Returns VHDX_OK, or VHDX_ERR_READ_ONLY when the disk was opened read-only,
/// VHDX_ERR_OUT_OF_RANGE when `offset + len` passes the virtual size (nothing
/// is written), VHDX_ERR_INVALID_ARGUMENT for a NULL `disk`, or a NULL `buf`
/// with `len > 0`.
///
/// Ownership: `buf` is the caller's and is not kept.
/// Thread safety: writes into space the image already stores, new blocks
/// and a differencing image's sectors (whole or in part) hold the handle's
/// lock shared, so they run in parallel with each other and with reads
/// (writers making new blocks or setting bits take turns among themselves,
/// and a write of part of a differencing image's sector it does not hold
/// yet waits for that image's other writers of new sectors). The lock is
/// held exclusively only for the metadata step of a session's first new
/// block. Writes to overlapping ranges at once leave either's bytes, as
/// with a file.
///
/// # Safety
/// `disk` is NULL or a live handle; `buf` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_write_at(disk: *mut VhdxDisk, offset: u64, buf: *const c_void, len: usize) -> i32 {
    ffi!("vhdx_write_at", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_write_at", disk)? };
        // SAFETY: the caller promises `len` readable bytes at `buf` that stay
        // unchanged during the call.
        let slice = unsafe { bytes_arg("vhdx_write_at", "buf", buf.cast::<u8>(), len)? };
        if d.disk.is_poisoned() {
            return Err(poisoned());
        }
        crate::write_concurrently(&d.disk, slice, offset).map_err(|e| d.fail(e))?;
        Ok(VHDX_OK)
    })
}

/// Makes every completed write durable: the data first, then the block
/// allocation table through the VHDX log, then the storage's own flush
/// (fsync for files). A no-op on a read-only disk.
///
/// Ownership: nothing changes hands.
/// Thread safety: once the session's first flush has named its log, a
/// flush that has only new blocks and sector bits made by shared writes to
/// commit holds the handle's lock shared, so reads and writes go on meanwhile
/// (writes that need a new block wait for it); otherwise it takes the lock
/// exclusively, waiting for the writes in flight.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_flush(disk: *mut VhdxDisk) -> i32 {
    ffi!("vhdx_flush", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_flush", disk)? };
        if d.disk.is_poisoned() {
            return Err(poisoned());
        }
        crate::flush_concurrently(&d.disk).map_err(|e| d.fail(e))?;
        Ok(VHDX_OK)
    })
}

/// Flushes, marks the image cleanly closed and releases the handle (and the
/// parents it holds open); returns the flush's status. The handle is released
/// even when the status is an error: do not use it again. NULL is a no-op
/// returning VHDX_OK.
///
/// Ownership: takes ownership of `disk`.
/// Thread safety: must not overlap any other call on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn vhdx_close_checked(disk: *mut VhdxDisk) -> i32 {
    ffi!("vhdx_close_checked", {
        if disk.is_null() {
            return Ok(VHDX_OK);
        }
        // SAFETY: a live handle made by Box::into_raw; the caller gives it up.
        let handle = unsafe { Box::from_raw(disk) };
        let VhdxDisk { disk, name } = *handle;
        let closed = match disk.into_inner().map_err(|_| poisoned())? {
            Held::Vhdx(disk) => disk.close(),
            Held::Vhd(mut disk) => disk.flush(),
        };
        closed.map_err(|e| match &name {
            Some(n) => Failure::from(e.in_file(n)),
            None => Failure::from(e),
        })?;
        Ok(VHDX_OK)
    })
}

/// Flushes, marks the image cleanly closed and releases the handle (and the
/// parents it holds open). NULL is a no-op. A failure to flush is reported
/// only through vhdx_last_error; use vhdx_close_checked to get a status.
///
/// Ownership: takes ownership of `disk`.
/// Thread safety: must not overlap any other call on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn vhdx_close(disk: *mut VhdxDisk) {
    ffi!("vhdx_close", {
        // SAFETY: the same promise as vhdx_close_checked's.
        let _ = unsafe { vhdx_close_checked(disk) };
        Ok(())
    })
}

/// What vhdx_info reports about an open image. GUIDs are 16 bytes in the
/// on-disk (Windows `GUID` memory) layout; format them with
/// vhdx_guid_to_string.
///
/// Set `struct_size` before the call: `VhdxInfo info = { .struct_size =
/// sizeof info };` (see "Structs and their size" at the top).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxInfo {
    /// sizeof(VhdxInfo), set by the caller; the library leaves it as it is.
    pub struct_size: u32,
    /// VHDX_DISK_TYPE_FIXED, VHDX_DISK_TYPE_DYNAMIC or VHDX_DISK_TYPE_DIFFERENCING.
    pub disk_type: i32,
    /// Logical sector size in bytes (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (512 or 4096).
    pub physical_sector_size: u32,
    /// Payload block size in bytes.
    pub block_size: u32,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Size of the image file (or callback storage) in bytes.
    pub file_size: u64,
    /// Payload blocks whose data lives in this image.
    pub allocated_blocks: u64,
    /// Payload blocks of the virtual disk (allocated or not).
    pub total_blocks: u64,
    /// Images in the chain: 1 for a fixed or dynamic disk (or a differencing
    /// disk opened without its parent), more for a differencing chain.
    pub chain_length: u32,
    /// Whether the handle was opened for writing.
    pub writable: bool,
    /// Whether a log left by an interrupted session was replayed at open.
    pub log_replayed: bool,
    /// Whether `parent_linkage` is set (differencing disks only).
    pub has_parent_linkage: bool,
    /// The virtual disk ID (SCSI page 83 identifier).
    pub virtual_disk_id: [u8; 16],
    /// The DataWriteGuid, which differencing children link to.
    pub data_write_guid: [u8; 16],
    /// The FileWriteGuid, changed by every session that writes the file.
    pub file_write_guid: [u8; 16],
    /// The parent's DataWriteGuid this differencing disk was made from
    /// (all zero for other disks).
    pub parent_linkage: [u8; 16],
}

// SAFETY: repr(C), `struct_size: u32` first, integers, bools and bytes.
unsafe impl SizedStruct for VhdxInfo {
    const NAME: &'static str = "VhdxInfo";
    const OLDEST: usize = core::mem::size_of::<VhdxInfo>();
}

/// Fills `*info` with a summary of the image (see VhdxInfo): the first
/// `info->struct_size` bytes, at most sizeof(VhdxInfo).
///
/// Returns VHDX_OK, or VHDX_ERR_INVALID_ARGUMENT when `disk` or `info` is
/// NULL or `info->struct_size` is smaller than sizeof(VhdxInfo) (then
/// nothing is written).
///
/// Ownership: `info` is the caller's. Thread safety: may run in parallel with
/// reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle; `info` is NULL or points to a writable
/// VhdxInfo of `info->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_info(disk: *const VhdxDisk, info: *mut VhdxInfo) -> i32 {
    ffi!("vhdx_info", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_info", disk)? };
        // SAFETY: the caller promises NULL or `struct_size` writable bytes.
        let info =
            unsafe { out_struct("vhdx_info", "info", info)? }.ok_or_else(|| Failure::null("vhdx_info", "info"))?;
        let held = d.read()?;
        if let Held::Vhd(v) = &*held {
            let value = vhd_info(v);
            info.write(&value);
            return Ok(VHDX_OK);
        }
        let guard = held.vhdx("vhdx_info")?;
        let i = guard.info().map_err(|e| d.fail(e))?;
        let to_disk = crate::format::guid::to_disk;
        let linkage = guard.parent_locator().and_then(|l| l.parent_linkage());
        let value = VhdxInfo {
            struct_size: 0,
            disk_type: type_code(i.disk_type),
            logical_sector_size: i.logical_sector_size,
            physical_sector_size: i.physical_sector_size,
            block_size: i.block_size,
            virtual_size: i.virtual_size,
            file_size: i.file_size,
            allocated_blocks: i.allocated_blocks,
            total_blocks: guard.geometry().payload_blocks,
            chain_length: u32::try_from(guard.chain_paths().len()).unwrap_or(u32::MAX),
            writable: guard.is_writable(),
            log_replayed: i.log_replayed,
            has_parent_linkage: linkage.is_some(),
            virtual_disk_id: to_disk(&i.virtual_disk_id),
            data_write_guid: to_disk(&i.data_write_guid),
            file_write_guid: to_disk(&i.file_write_guid),
            parent_linkage: linkage.map(|g| to_disk(&g)).unwrap_or_default(),
        };
        info.write(&value);
        Ok(VHDX_OK)
    })
}

/// The number of images in the disk's chain (the disk itself, then each
/// parent open inside it): 1 or more, or a negative status.
///
/// Ownership: nothing changes hands.
/// Thread safety: may run in parallel with reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_chain_length(disk: *const VhdxDisk) -> i32 {
    ffi!("vhdx_chain_length", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_chain_length", disk)? };
        Ok(i32::try_from(d.read()?.chain_paths().len()).unwrap_or(i32::MAX))
    })
}

/// Copies the path of image `index` of the chain (0 = the disk itself, 1 =
/// its parent, ...) into `buf` of `cap` bytes, like snprintf: as much as
/// fits, NUL-terminated when `cap > 0`. Returns the path's full length in
/// bytes (without the NUL): a result >= `cap` means it was truncated; call
/// with `buf` NULL and `cap` 0 to learn the size. An image opened without a
/// path reads as its callback name, or "?". Returns VHDX_ERR_OUT_OF_RANGE
/// when `index` >= vhdx_chain_length.
///
/// Ownership: `buf` is the caller's. Thread safety: may run in parallel with
/// reads and queries on the same handle.
///
/// # Safety
/// `disk` is NULL or a live handle; `buf` is NULL with `cap == 0` or points to
/// `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_chain_path(disk: *const VhdxDisk, index: u32, buf: *mut c_char, cap: usize) -> i32 {
    ffi!("vhdx_chain_path", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_chain_path", disk)? };
        let mut paths = d.read()?.chain_paths();
        if let (Some(first), Some(name)) = (paths.first_mut(), &d.name) {
            first.clone_from(name);
        }
        let path = paths.get(index as usize).ok_or_else(|| Failure {
            status: super::error::VHDX_ERR_OUT_OF_RANGE,
            message: format!("vhdx_chain_path: index {index} is past the chain of {} image(s)", paths.len()),
        })?;
        // SAFETY: the caller promises `cap` writable bytes at `buf` (or NULL and 0).
        unsafe { copy_out("vhdx_chain_path", path, buf, cap) }
    })
}
