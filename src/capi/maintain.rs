//! Resizing, discarding and compacting an open disk; converting images by
//! path.

use core::ffi::c_char;

use core::mem::size_of;

use super::disk::{VhdxDisk, VHDX_DISK_TYPE_DIFFERENCING, VHDX_DISK_TYPE_DYNAMIC, VHDX_DISK_TYPE_FIXED};
use super::error::{Failure, FfiResult, VHDX_OK};
use super::ptr::{disk_arg, init_struct, out_struct, read_struct, SizedStruct};
use super::strings::path_arg;
use crate::ops::convert::{ConvertOptions, ImageFormat};
use crate::DiskType;

/// Changes the virtual size of the open, writable `disk` to `new_size` bytes
/// (a multiple of the logical sector size, at most 64 TiB). Growing adds
/// sectors that read as zeros (the block allocation table moves to a larger
/// region at the end of the file when it must); a fixed disk gets its new
/// blocks allocated. Shrinking is refused with VHDX_ERR_REFUSED, nothing
/// changed, when the removed range holds non-zero data, unless
/// `allow_shrink`, which discards it. A differencing disk may grow past its
/// parent's size (that part reads as zeros).
///
/// The change is crash-safe (through the VHDX log) and durable when the call
/// returns. The disk's DataWriteGuid changes, so differencing disks made from
/// it no longer accept it as their parent.
///
/// Returns VHDX_OK, VHDX_ERR_REFUSED, VHDX_ERR_READ_ONLY,
/// VHDX_ERR_INVALID_ARGUMENT (a size that is 0, too large or not whole
/// sectors; a differencing disk opened without its parent) or the storage's
/// error.
///
/// Ownership: nothing changes hands.
/// Thread safety: takes the handle's lock exclusively.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_resize(disk: *mut VhdxDisk, new_size: u64, allow_shrink: bool) -> i32 {
    ffi!("vhdx_resize", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_resize", disk)? };
        d.write()?.vhdx_mut("vhdx_resize")?.resize(new_size, allow_shrink).map_err(|e| d.fail(e))?;
        Ok(VHDX_OK)
    })
}

/// Discards `len` bytes at `offset` of the open, writable `disk`: afterwards
/// they read as zeros, in every disk type (in a differencing disk too, never
/// the parent's data). Whole blocks give their space back (dynamic: UNMAPPED;
/// differencing: ZERO; vhdx_compact then shrinks the file); a fixed disk is
/// overwritten with zeros in place. Any offset and length inside the disk are
/// accepted: bytes of a sector the range covers only in part are
/// overwritten with zeros. Durable after the next vhdx_flush or vhdx_close,
/// like a write.
///
/// Returns VHDX_OK, VHDX_ERR_OUT_OF_RANGE (nothing discarded),
/// VHDX_ERR_READ_ONLY, VHDX_ERR_INVALID_ARGUMENT (a NULL `disk`; a
/// differencing disk opened without its parent) or the storage's error.
///
/// Ownership: nothing changes hands.
/// Thread safety: takes the handle's lock exclusively.
///
/// # Safety
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn vhdx_discard(disk: *mut VhdxDisk, offset: u64, len: u64) -> i32 {
    ffi!("vhdx_discard", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_discard", disk)? };
        d.write()?.vhdx_mut("vhdx_discard")?.discard(offset, len).map_err(|e| d.fail(e))?;
        Ok(VHDX_OK)
    })
}

/// What vhdx_compact did. Set `struct_size` before the call:
/// `VhdxCompactReport r = { .struct_size = sizeof r };`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxCompactReport {
    /// sizeof(VhdxCompactReport), set by the caller; left as it is.
    pub struct_size: u32,
    /// The file's size before, in bytes.
    pub file_size_before: u64,
    /// The file's size after, in bytes.
    pub file_size_after: u64,
    /// Payload blocks that held only zeros (or lay past the virtual size)
    /// and are no longer stored.
    pub blocks_released: u64,
    /// Sector bitmap blocks (differencing disks) no longer needed.
    pub bitmaps_released: u64,
    /// Blocks and regions moved towards the start of the file.
    pub structures_moved: u64,
    /// Bytes copied by those moves.
    pub bytes_moved: u64,
}

// SAFETY: repr(C), `struct_size: u32` first, then integers.
unsafe impl SizedStruct for VhdxCompactReport {
    const NAME: &'static str = "VhdxCompactReport";
    const OLDEST: usize = size_of::<VhdxCompactReport>();
}

/// Compacts the open, writable `disk` in place: blocks holding only zeros
/// (and discarded ones) stop being stored, blocks from the end of the file
/// move into the holes, and the file is truncated. What the disk presents
/// does not change, nor does its DataWriteGuid (its children stay valid).
/// Every step is crash-safe: a block's copy is durable before the block
/// allocation table points at it, through the VHDX log. When `report` is not
/// NULL it receives what was done (on success only).
///
/// Returns VHDX_OK, VHDX_ERR_INVALID_ARGUMENT for a fixed disk (whose blocks
/// stay allocated by definition: convert it to dynamic), a NULL `disk` or a
/// `report->struct_size` too small (then nothing is done), VHDX_ERR_READ_ONLY,
/// or the storage's error.
///
/// Ownership: `report` is the caller's.
/// Thread safety: takes the handle's lock exclusively.
///
/// # Safety
/// `disk` is NULL or a live handle; `report` is NULL or points to a writable
/// VhdxCompactReport of `report->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_compact(disk: *mut VhdxDisk, report: *mut VhdxCompactReport) -> i32 {
    ffi!("vhdx_compact", {
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg("vhdx_compact", disk)? };
        // SAFETY: the caller promises NULL or `struct_size` writable bytes.
        let report = unsafe { out_struct("vhdx_compact", "report", report)? };
        let r = d.write()?.vhdx_mut("vhdx_compact")?.compact().map_err(|e| d.fail(e))?;
        if let Some(report) = report {
            let value = VhdxCompactReport {
                struct_size: 0,
                file_size_before: r.file_size_before,
                file_size_after: r.file_size_after,
                blocks_released: r.blocks_released,
                bitmaps_released: r.bitmaps_released,
                structures_moved: r.structures_moved,
                bytes_moved: r.bytes_moved,
            };
            report.write(&value);
        }
        Ok(VHDX_OK)
    })
}

/// No partition table: the disk is one filesystem (vhdx_compact_filesystems).
pub const VHDX_TABLE_NONE: i32 = 0;
/// A master boot record (with any logical partitions).
pub const VHDX_TABLE_MBR: i32 = 1;
/// A GUID partition table.
pub const VHDX_TABLE_GPT: i32 = 2;
/// A partition table that cannot be trusted: nothing counts as free.
pub const VHDX_TABLE_DAMAGED: i32 = 3;

/// What vhdx_compact_filesystems found and did. Set `struct_size` before
/// the call: `VhdxFsCompactReport r = { .struct_size = sizeof r };`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxFsCompactReport {
    /// sizeof(VhdxFsCompactReport), set by the caller; left as it is.
    pub struct_size: u32,
    /// VHDX_TABLE_NONE, VHDX_TABLE_MBR, VHDX_TABLE_GPT or VHDX_TABLE_DAMAGED.
    pub table: i32,
    /// Partitions found (1, the whole disk, without a table).
    pub partitions: u32,
    /// Filesystems read (known and clean).
    pub filesystems_read: u32,
    /// Partitions left alone: a filesystem not known, or not clean.
    pub filesystems_skipped: u32,
    /// Bytes free: the filesystems' free space, and the bytes outside every
    /// partition.
    pub free_bytes: u64,
    /// The image's block size.
    pub block_size: u64,
    /// Stored blocks in free space (wholly, or partly with the rest reading
    /// as zeros): released, or with `dry_run`
    /// what would be.
    pub blocks_in_free_space: u64,
    /// The file's size before (0 with `dry_run`).
    pub file_size_before: u64,
    /// The file's size after (0 with `dry_run`).
    pub file_size_after: u64,
    /// Blocks of zeros released besides (0 with `dry_run`).
    pub blocks_released: u64,
    /// Blocks and regions moved towards the start of the file.
    pub structures_moved: u64,
}

// SAFETY: repr(C), `struct_size: u32` first, then integers.
unsafe impl SizedStruct for VhdxFsCompactReport {
    const NAME: &'static str = "VhdxFsCompactReport";
    const OLDEST: usize = size_of::<VhdxFsCompactReport>();
}

/// Compacts the open `disk` as vhdx_compact does, after reading the guest's
/// partition table and filesystems (GPT, MBR; ext2/3/4): every stored block
/// that lies wholly in a filesystem's free space, or outside every
/// partition, is released whatever it holds (a dynamic disk then reads
/// zeros there, a differencing one its parent). A filesystem not known, not
/// cleanly unmounted, or waiting for journal recovery keeps all its blocks.
/// With `dry_run` nothing changes (the handle may be read-only) and the
/// report says what would be released. Crash-safe as vhdx_compact.
/// Releasing free space changes what the disk presents there, so it takes
/// a new DataWriteGuid: differencing disks made from it no longer open over
/// it (compact them, or merge them into it, first; `vhdx compact` looks for
/// them and keeps the free space when it finds any).
///
/// When `details` is not NULL it receives one line per partition
/// ("partition N: ext4, used U, free F" or "partition N: left alone:
/// REASON"), truncated to `details_cap` bytes and NUL-terminated.
///
/// Returns VHDX_OK, VHDX_ERR_INVALID_ARGUMENT (a NULL `disk`, a report too
/// small, a fixed disk), VHDX_ERR_READ_ONLY (not `dry_run` on a read-only
/// handle), VHDX_ERR_UNSUPPORTED for a VHD, or the storage's error. A
/// partition table that cannot be trusted is not an error: the report says
/// VHDX_TABLE_DAMAGED, nothing counts as free, and only blocks of zeros go.
///
/// Ownership: `report` and `details` are the caller's.
/// Thread safety: takes the handle's lock exclusively.
///
/// # Safety
/// `disk` is NULL or a live handle; `report` is NULL or points to a
/// writable VhdxFsCompactReport of `report->struct_size` bytes; `details`
/// is NULL or points to `details_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_compact_filesystems(
    disk: *mut VhdxDisk,
    dry_run: bool,
    report: *mut VhdxFsCompactReport,
    details: *mut c_char,
    details_cap: usize,
) -> i32 {
    ffi!("vhdx_compact_filesystems", {
        const F: &str = "vhdx_compact_filesystems";
        // SAFETY: the caller promises NULL or a live handle.
        let d = unsafe { disk_arg(F, disk)? };
        // SAFETY: the caller promises NULL or `struct_size` writable bytes.
        let report = unsafe { out_struct(F, "report", report)? };
        let mut guard = d.write()?;
        let disk = guard.vhdx_mut(F)?;
        let usage = crate::ops::fs::disk_usage(&*disk).map_err(|e| d.fail(e))?;
        let blocks_in_free_space = disk.blocks_in(&usage.free).map_err(|e| d.fail(e))?;
        let done = if dry_run {
            crate::CompactReport::default()
        } else {
            disk.compact_free_with_progress(&usage.free, &mut |_, _| {}).map_err(|e| d.fail(e))?
        };
        let mut lines = alloc::string::String::new();
        let (mut read, mut skipped) = (0u32, 0u32);
        for p in &usage.partitions {
            match &p.probe {
                crate::ops::fs::Probe::Known(fs) => {
                    read += 1;
                    let free: u64 = fs.free.iter().map(|&(_, l)| l).sum();
                    lines.push_str(&alloc::format!(
                        "partition {}: {}, used {}, free {}\n",
                        p.partition.number,
                        fs.kind,
                        fs.used,
                        free
                    ));
                }
                crate::ops::fs::Probe::Skipped { reason, .. } => {
                    skipped += 1;
                    lines.push_str(&alloc::format!("partition {}: left alone: {reason}\n", p.partition.number));
                }
            }
        }
        if !details.is_null() {
            // SAFETY: the caller promises `details_cap` writable bytes.
            unsafe { super::strings::copy_out(F, &lines, details, details_cap)? };
        }
        if let Some(report) = report {
            report.write(&VhdxFsCompactReport {
                struct_size: 0,
                table: match usage.table {
                    crate::ops::fs::TableKind::Mbr => VHDX_TABLE_MBR,
                    crate::ops::fs::TableKind::Gpt => VHDX_TABLE_GPT,
                    crate::ops::fs::TableKind::Damaged => VHDX_TABLE_DAMAGED,
                    _ => VHDX_TABLE_NONE,
                },
                partitions: usage.partitions.len() as u32,
                filesystems_read: read,
                filesystems_skipped: skipped,
                free_bytes: usage.free.iter().map(|&(_, l)| l).sum(),
                block_size: disk.block_size() as u64,
                blocks_in_free_space,
                file_size_before: done.file_size_before,
                file_size_after: done.file_size_after,
                blocks_released: done.blocks_released + done.bitmaps_released,
                structures_moved: done.structures_moved,
            });
        }
        Ok(VHDX_OK)
    })
}

/// The format of an image for vhdx_convert: for the source, raw for a
/// `.raw` or `.img` name and otherwise VHDX or VHD by content; for the
/// output, from the name (`.raw`/`.img` raw, `.vhd` VHD, anything else
/// VHDX).
pub const VHDX_FORMAT_AUTO: i32 = 0;
/// Microsoft VHDX (also what vhdx_format says of a VHDX handle).
pub const VHDX_FORMAT_VHDX: i32 = 1;
/// Raw: the virtual disk's bytes, nothing else (written as a sparse file).
pub const VHDX_FORMAT_RAW: i32 = 2;
/// Microsoft VHD, version 1 (also what vhdx_format says of a VHD handle).
/// As a convert output: fixed or dynamic as `disk_type` says, blocks of
/// `block_size` (0: 2 MiB), 512-byte sectors.
pub const VHDX_FORMAT_VHD: i32 = 3;

/// Options of vhdx_convert. Initialise with
/// `vhdx_convert_options_init(&options, sizeof options)` (formats from the
/// names, a dynamic VHDX with the defaults).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxConvertOptions {
    /// sizeof(VhdxConvertOptions), set by vhdx_convert_options_init.
    pub struct_size: u32,
    /// VHDX_FORMAT_AUTO, VHDX_FORMAT_VHDX, VHDX_FORMAT_RAW or VHDX_FORMAT_VHD.
    pub input_format: i32,
    /// VHDX_FORMAT_AUTO, VHDX_FORMAT_VHDX, VHDX_FORMAT_RAW or VHDX_FORMAT_VHD.
    pub output_format: i32,
    /// For a VHDX or VHD output: VHDX_DISK_TYPE_DYNAMIC or VHDX_DISK_TYPE_FIXED.
    pub disk_type: i32,
    /// For a VHDX output: the block size, a power of two from 1 MiB to
    /// 256 MiB; 0 for the default (32 MiB). For a dynamic VHD output: 512
    /// KiB to 256 MiB; 0 for 2 MiB.
    pub block_size: u32,
    /// For a VHDX output: 512 or 4096; 0 for the source's (512 for raw).
    pub logical_sector_size: u32,
    /// For a VHDX output: 512 or 4096; 0 for the source's (4096 for raw).
    pub physical_sector_size: u32,
    /// Replace `dst_path` if it exists (false: refuse). It is replaced only
    /// once the new image is complete and durable.
    pub overwrite: bool,
    /// Zero. (The first layout of this struct ended here, padded to 32
    /// bytes: the fields below come after that padding.)
    pub reserved: [u8; 3],
    /// Make a VHD Azure takes as an uploaded disk (`vhdx convert --azure`):
    /// fixed, its virtual size rounded up to a whole MiB (the added end
    /// reads as zeros), the footer as Windows writes it. Takes a VHD output,
    /// `disk_type` left dynamic and `block_size` 0.
    pub azure: bool,
    /// NULL, or the path of an already converted parent: the source, a
    /// differencing disk, is converted alone onto it, as a differencing
    /// image of the output's format holding only what the source holds
    /// itself (`vhdx convert --parent`, `Convert-VHD -ParentPath`). Read
    /// during the call.
    pub parent_path: *const c_char,
}

/// The size of VhdxConvertOptions' first layout (up to `overwrite`, padded).
const CONVERT_OPTIONS_FIRST_LAYOUT: usize = 32;

impl Default for VhdxConvertOptions {
    fn default() -> Self {
        VhdxConvertOptions {
            struct_size: size_of::<VhdxConvertOptions>() as u32,
            input_format: VHDX_FORMAT_AUTO,
            output_format: VHDX_FORMAT_AUTO,
            disk_type: VHDX_DISK_TYPE_DYNAMIC,
            block_size: 0,
            logical_sector_size: 0,
            physical_sector_size: 0,
            overwrite: false,
            reserved: [0; 3],
            azure: false,
            parent_path: core::ptr::null(),
        }
    }
}

/// What vhdx_convert did. Set `struct_size` before the call:
/// `VhdxConvertReport r = { .struct_size = sizeof r };`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhdxConvertReport {
    /// sizeof(VhdxConvertReport), set by the caller; left as it is.
    pub struct_size: u32,
    /// The virtual size (a raw source's length), in bytes.
    pub virtual_size: u64,
    /// Non-zero bytes written into the output.
    pub bytes_written: u64,
}

// SAFETY: repr(C), `struct_size: u32` first, then integers, bools and a
// pointer (read, never dereferenced unless not NULL, as the caller's path).
unsafe impl SizedStruct for VhdxConvertOptions {
    const NAME: &'static str = "VhdxConvertOptions";
    const OLDEST: usize = CONVERT_OPTIONS_FIRST_LAYOUT;
    const LAYOUTS: &'static [usize] = &[CONVERT_OPTIONS_FIRST_LAYOUT, size_of::<VhdxConvertOptions>()];
}

// SAFETY: repr(C), `struct_size: u32` first, then integers.
unsafe impl SizedStruct for VhdxConvertReport {
    const NAME: &'static str = "VhdxConvertReport";
    const OLDEST: usize = size_of::<VhdxConvertReport>();
}

/// Sets `*options` to the defaults: formats from the file names, a dynamic
/// VHDX output with the default block size and the source's sector sizes,
/// an existing output refused; and `struct_size` to `struct_size`, which is
/// `sizeof *options` as the caller was compiled.
/// Returns VHDX_OK, or VHDX_ERR_INVALID_ARGUMENT when `options` is NULL or
/// `struct_size` is not a size of VhdxConvertOptions this library knows
/// (nothing is written).
///
/// Ownership: `options` is the caller's. Thread safety: safe from any thread.
///
/// # Safety
/// `options` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_convert_options_init(options: *mut VhdxConvertOptions, struct_size: usize) -> i32 {
    // SAFETY: the caller promises `struct_size` writable bytes (or NULL).
    ffi!("vhdx_convert_options_init", { unsafe { init_struct("vhdx_convert_options_init", options, struct_size) } })
}

fn format_arg(function: &str, what: &str, code: i32) -> FfiResult<Option<ImageFormat>> {
    match code {
        VHDX_FORMAT_AUTO => Ok(None),
        VHDX_FORMAT_VHDX => Ok(Some(ImageFormat::Vhdx)),
        VHDX_FORMAT_RAW => Ok(Some(ImageFormat::Raw)),
        VHDX_FORMAT_VHD => Ok(Some(ImageFormat::Vhd)),
        other => Err(Failure::invalid(alloc::format!(
            "{function}: {what} is {other}, not VHDX_FORMAT_AUTO, _VHDX, _RAW or _VHD"
        ))),
    }
}

/// Converts the image at `src_path` into an image at `dst_path`: fixed ↔
/// dynamic VHDX, a differencing chain flattened into a standalone image
/// (read through its parents), raw ↔ VHDX. Only non-zero data is written: a
/// dynamic output allocates no block for zeros, and a raw output is a sparse
/// file. `options` NULL means the defaults of vhdx_convert_options_init.
/// When `report` is not NULL it receives what was done (on success only).
///
/// The output is written to a hidden temporary file beside `dst_path`
/// (`.NAME.vhdx-tmp-…`) and renamed into place once complete and durable:
/// on failure, or if the process dies, `dst_path` is as it was (absent, or
/// the old file), and a later convert to it removes the temporary file. An
/// existing `dst_path` is refused unless `options->overwrite`; an image of
/// the source's chain (the source, or any ancestor, also through another
/// name of the same file) is refused always.
///
/// Returns VHDX_OK, VHDX_ERR_REFUSED (`dst_path` exists and may not be
/// replaced; nothing was written), VHDX_ERR_INVALID_ARGUMENT (bad options,
/// a `struct_size` of `options` or `report` the library does not accept,
/// VHDX options for a raw output, a raw source whose size is not whole
/// sectors), VHDX_ERR_IO, or the error of the source, naming the file.
///
/// Ownership: `options` and `report` are the caller's.
/// Thread safety: safe from any thread (not concurrently with writers of the
/// same files).
///
/// # Safety
/// `src_path` and `dst_path` are NUL-terminated strings; `options` is NULL or
/// points to a valid VhdxConvertOptions of `options->struct_size` bytes;
/// `report` is NULL or points to a writable VhdxConvertReport of
/// `report->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn vhdx_convert(
    src_path: *const c_char,
    dst_path: *const c_char,
    options: *const VhdxConvertOptions,
    report: *mut VhdxConvertReport,
) -> i32 {
    ffi!("vhdx_convert", {
        const F: &str = "vhdx_convert";
        // SAFETY: the caller's promise on `src_path`.
        let src = unsafe { path_arg(F, "src_path", src_path)? };
        // SAFETY: the caller's promise on `dst_path`.
        let dst = unsafe { path_arg(F, "dst_path", dst_path)? };
        // SAFETY: the caller promises NULL or a valid struct; it is copied.
        let o = unsafe { read_struct(F, "options", options)? }.unwrap_or_default();
        // SAFETY: the caller promises NULL or `struct_size` writable bytes.
        let report = unsafe { out_struct(F, "report", report)? };
        let disk_type = match o.disk_type {
            VHDX_DISK_TYPE_DYNAMIC => DiskType::Dynamic,
            VHDX_DISK_TYPE_FIXED => DiskType::Fixed,
            VHDX_DISK_TYPE_DIFFERENCING => {
                return Err(Failure::invalid("vhdx_convert: the output is fixed or dynamic, not differencing"))
            }
            other => return Err(Failure::invalid(alloc::format!("vhdx_convert: disk_type is {other}"))),
        };
        let nonzero = |v: u32| (v != 0).then_some(v);
        let parent = if o.parent_path.is_null() {
            None
        } else {
            // SAFETY: the caller promises a NUL-terminated string when not NULL.
            let p = unsafe { path_arg(F, "parent_path", o.parent_path)? };
            let text = p.to_str().ok_or_else(|| Failure::invalid("vhdx_convert: parent_path is not UTF-8"))?;
            Some(alloc::string::String::from(text))
        };
        let opts = ConvertOptions {
            input_format: format_arg(F, "input_format", o.input_format)?,
            output_format: format_arg(F, "output_format", o.output_format)?,
            disk_type,
            block_size: nonzero(o.block_size),
            logical_sector_size: nonzero(o.logical_sector_size),
            physical_sector_size: nonzero(o.physical_sector_size),
            overwrite: o.overwrite,
            azure: o.azure,
            parent,
            ..ConvertOptions::default()
        };
        let r = crate::ops::convert::convert(&src, &dst, &opts)?;
        if let Some(report) = report {
            report.write(&VhdxConvertReport {
                struct_size: 0,
                virtual_size: r.virtual_size,
                bytes_written: r.bytes_written,
            });
        }
        Ok(VHDX_OK)
    })
}
