//! Converting between image kinds: fixed ↔ dynamic VHDX, a differencing
//! chain flattened into a standalone image, raw ↔ VHDX, keeping zero ranges
//! sparse.
//!
//! Only bytes that are not zero are written: ranges the source's map
//! reports as zeros are skipped, and within the rest every 4 KiB grain that
//! is all zeros is skipped too. A dynamic VHDX output therefore allocates no
//! block for zeros, a fixed output keeps the zeros its preallocated blocks
//! already hold, and a raw output is sized with `set_len` and stays a
//! sparse file (its zero ranges are holes, never written zeros). On Unix
//! `convert` writes a raw output with several threads, each reading,
//! scanning and writing a 4 MiB chunk, and on Linux with direct I/O where
//! the filesystem takes it (no page cache filled, nothing left for the
//! final sync but metadata); the bytes are the same, and zeros shorter than
//! 64 KiB between data may then be written or allocated with it.
//!
//! [`copy_nonzero`] is the core (any [`Disk`] to any [`Disk`], no `std`
//! needed); `convert` works on paths (std only). A differencing source is
//! read through its whole chain, so the output has no parent.
//!
//! `convert` writes a temporary file beside the destination and renames it
//! into place only once it is complete (and durable, unless
//! [`ConvertOptions::sync`] is off): a convert that fails or is killed
//! leaves the destination as it was, absent or the old file, and at most a
//! hidden temporary file `.NAME.vhdx-tmp-…` that the next convert to the
//! same destination removes. It never writes over an image of the source's
//! chain (the source or any ancestor, by path or by file identity).

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::{BlockDevice, Disk, Extent};

/// Bytes read from the source at once; copies are split at multiples of it.
const COPY_CHUNK: u64 = 1 << 20;
/// The granularity of zero detection: an all-zero grain is not written.
pub(crate) const ZERO_GRAIN: u64 = 4096;

/// The ranges of `disk` that may hold non-zero bytes (everything but the
/// runs its map, through the chain, reports as zeros), neighbours joined.
pub fn nonzero_candidates(disk: &Disk) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in disk.map()? {
        let zero = match e.extent {
            Extent::Zero => true,
            Extent::Parent => match disk.parent() {
                Some(p) => crate::disk::reads_zero_structurally(p, e.offset, e.length)?,
                None => true,
            },
            Extent::Data { .. } => false,
        };
        if zero {
            continue;
        }
        match runs.last_mut() {
            Some((start, len)) if *start + *len == e.offset => *len += e.length,
            _ => runs.push((e.offset, e.length)),
        }
    }
    Ok(runs)
}

/// The spans of `buf` (which holds the bytes at virtual offset `at`) that
/// contain a non-zero byte, as `(start, len)` within `buf`, in whole grains
/// aligned to absolute multiples of [`ZERO_GRAIN`] (clipped to `buf`).
pub(crate) fn nonzero_spans(buf: &[u8], at: u64) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < buf.len() {
        let grain_end = ((at + i as u64) / ZERO_GRAIN + 1) * ZERO_GRAIN;
        let end = ((grain_end - at) as usize).min(buf.len());
        // An OR over the grain vectorises; `all` with an early exit does not.
        let zero = buf[i..end].iter().fold(0u8, |acc, &b| acc | b) == 0;
        match (zero, open) {
            (false, None) => open = Some(i),
            (true, Some(start)) => {
                spans.push((start, i - start));
                open = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(start) = open {
        spans.push((start, buf.len() - start));
    }
    spans
}

/// Copies the non-zero bytes of `runs` (virtual ranges) from `read` to
/// `write`, calling `progress(done, total)` with `total` = `size`. Returns
/// the bytes written.
pub(crate) fn copy_runs(
    size: u64,
    runs: &[(u64, u64)],
    read: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
    write: &mut dyn FnMut(&[u8], u64) -> Result<()>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let mut buf = alloc::vec![0u8; COPY_CHUNK as usize];
    let mut written = 0u64;
    let mut done = 0u64;
    progress(0, size);
    for &(start, len) in runs {
        let end = start + len;
        let mut pos = start;
        done = done.max(start);
        while pos < end {
            let n = (COPY_CHUNK - pos % COPY_CHUNK).min(end - pos);
            let chunk = &mut buf[..n as usize];
            read(chunk, pos)?;
            for (at, span) in nonzero_spans(chunk, pos) {
                write(&chunk[at..at + span], pos + at as u64)?;
                written += span as u64;
            }
            pos += n;
            done = pos;
            progress(done, size);
        }
    }
    progress(size, size);
    Ok(written)
}

/// Copies every non-zero byte of `src` (a [`Disk`] through its chain, or any
/// [`BlockDevice`]: only its [`data_ranges`](BlockDevice::data_ranges) are
/// read) into `dst`, which must have the same capacity and read as zeros
/// where nothing is written (a new image). Returns the bytes written.
///
/// ```
/// use vhdx::{CreateOptions, Disk, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let mut src = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::fixed(8 << 20).block_size(1 << 20), None)?;
/// src.write_at(b"only this", 5 << 20)?;
/// let mut dst = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20).block_size(1 << 20), None)?;
/// assert_eq!(vhdx::ops::convert::copy_nonzero(&src, &mut dst, &mut |_, _| {})?, 4096);
/// assert_eq!(dst.info()?.allocated_blocks, 1);
/// # Ok(()) }
/// ```
pub fn copy_nonzero<S, D>(src: &S, dst: &mut D, progress: &mut dyn FnMut(u64, u64)) -> Result<u64>
where
    S: BlockDevice + ?Sized,
    D: BlockDevice + ?Sized,
{
    if src.capacity() != dst.capacity() {
        return Err(Error::invalid(alloc::format!(
            "the source has {} bytes, the destination {}",
            src.capacity(),
            dst.capacity()
        )));
    }
    let runs = src.data_ranges()?;
    copy_runs(
        src.capacity(),
        &runs,
        &mut |buf, at| src.read_at(buf, at),
        &mut |buf, at| dst.write_at(buf, at),
        progress,
    )
}

pub use crate::chain::ImageFormat;

/// Options of [`convert`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// The source's format; `None`: detected ([`ImageFormat::detect`]).
    pub input_format: Option<ImageFormat>,
    /// The output's format; `None`: from its name.
    pub output_format: Option<ImageFormat>,
    /// Fixed or dynamic, for a VHDX or VHD output.
    pub disk_type: crate::DiskType,
    /// Block size of a VHDX output (default: the library's, 32 MiB) or of a
    /// dynamic VHD output (default 2 MiB, as Windows makes them).
    pub block_size: Option<u32>,
    /// Logical sector size of a VHDX output (default: the source's; 512 for raw).
    pub logical_sector_size: Option<u32>,
    /// Physical sector size of a VHDX output (default: the source's; 4096 for raw).
    pub physical_sector_size: Option<u32>,
    /// Make the output durable before it takes the destination's name
    /// (default). `false` skips every flush of the output, like `qemu-img
    /// convert`'s default cache mode (`-t unsafe`): faster, and a killed
    /// process still leaves the destination as it was or complete, but a
    /// power cut soon after may leave the destination's name over an
    /// incomplete file (the rename may reach the disk before the data).
    pub sync: bool,
    /// Read the source without locking it, whatever others hold (like
    /// `qemu-img convert -U`): a source open for writing elsewhere is
    /// otherwise refused ([`Error::Busy`]); with this its copy may be
    /// inconsistent.
    pub force_share: bool,
    /// Replace the destination if it exists (default: refuse). It is
    /// replaced only once the new image is complete; an image of the
    /// source's chain is refused either way.
    pub overwrite: bool,
    /// Make a VHD Azure takes as an uploaded disk: fixed, its virtual size
    /// rounded up to a whole MiB (the added end reads as zeros), the footer
    /// saying so as Windows writes it (current size = original size, the
    /// specification's geometry, creator `win ` on `Wi2k`). Only with a VHD
    /// output.
    pub azure: bool,
    /// Convert a differencing source alone onto this already converted
    /// parent (a path), as `Convert-VHD -ParentPath` does: the output is a
    /// differencing image of the output's format over it, holding only the
    /// sectors the source holds itself. The parent must have the output's
    /// format and the source's size, and present what the source's own
    /// parent presents (that is not read to check it). `None`: a chain is
    /// flattened.
    pub parent: Option<String>,
}

crate::setters!(ConvertOptions {
    input_format: Option<ImageFormat>,
    output_format: Option<ImageFormat>,
    disk_type: crate::DiskType,
    block_size: Option<u32>,
    logical_sector_size: Option<u32>,
    physical_sector_size: Option<u32>,
    sync: bool,
    force_share: bool,
    overwrite: bool,
    azure: bool,
    parent: Option<String>,
});

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            input_format: None,
            output_format: None,
            disk_type: crate::DiskType::Dynamic,
            block_size: None,
            logical_sector_size: None,
            physical_sector_size: None,
            sync: true,
            force_share: false,
            overwrite: false,
            azure: false,
            parent: None,
        }
    }
}

/// What [`convert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConvertReport {
    /// The source's format.
    pub input_format: ImageFormat,
    /// The output's format.
    pub output_format: ImageFormat,
    /// The output's type when it is VHDX or VHD.
    pub output_type: Option<crate::DiskType>,
    /// The output's virtual size: the source's (a raw source's length),
    /// rounded up to a whole MiB with [`ConvertOptions::azure`].
    pub virtual_size: u64,
    /// Non-zero bytes written.
    pub bytes_written: u64,
    /// A description of the output ("vhdx, dynamic", "vhd, fixed" or "raw").
    pub output_kind: String,
}

#[cfg(feature = "std")]
mod files;
#[cfg(all(feature = "std", unix))]
mod parallel;
#[cfg(feature = "std")]
pub use files::{convert, convert_with_progress};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_buffers_have_no_spans() {
        assert!(nonzero_spans(&[0u8; 3 * 4096], 0).is_empty());
        assert!(nonzero_spans(&[], 0).is_empty());
    }

    #[test]
    fn spans_are_whole_grains() {
        let mut buf = alloc::vec![0u8; 4 * 4096];
        buf[5000] = 1;
        buf[3 * 4096 + 1] = 2;
        assert_eq!(nonzero_spans(&buf, 0), alloc::vec![(4096, 4096), (3 * 4096, 4096)]);
        buf[2 * 4096] = 3;
        assert_eq!(nonzero_spans(&buf, 0), alloc::vec![(4096, 3 * 4096)]);
    }

    #[test]
    fn grains_align_to_absolute_offsets() {
        let mut buf = alloc::vec![0u8; 512 + 4096 + 100];
        buf[0] = 1;
        buf[512 + 4096 + 99] = 1;
        assert_eq!(nonzero_spans(&buf, 4096 - 512), alloc::vec![(0, 512), (512 + 4096, 100)]);
    }

    #[test]
    fn a_grain_is_zero_only_when_every_byte_is() {
        // Equal non-zero bytes cancel out under XOR and AND; only OR tells.
        let mut buf = alloc::vec![0u8; 2 * 4096];
        buf[4096 + 10] = 0x5A;
        buf[4096 + 11] = 0x5A;
        assert_eq!(nonzero_spans(&buf, 0), alloc::vec![(4096, 4096)]);
        buf[10] = 0x01;
        buf[11] = 0x02;
        buf[12] = 0x03;
        assert_eq!(nonzero_spans(&buf, 0), alloc::vec![(0, 2 * 4096)]);
    }

    #[test]
    fn candidates_cover_every_write_and_join_neighbours() {
        use alloc::boxed::Box;

        use crate::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
        use crate::{CreateOptions, Disk, MemStorage};

        const MIB: u64 = 1 << 20;
        let opts = CreateOptions::dynamic(8 * MIB).block_size(MIB as u32);
        let mut base = Disk::create_on(Box::new(MemStorage::new()), &opts, None).unwrap();
        // The writes, (offset, length), parent's then child's.
        let base_writes = [(MIB, 512), (6 * MIB, 512), (8 * MIB - 512, 512)];
        let child_writes = [(2 * MIB, MIB), (3 * MIB, 512), (4 * MIB, 512)];
        for &(at, len) in &base_writes {
            base.write_at(&alloc::vec![0xB5; len as usize], at).unwrap();
        }
        let mut loc = ParentLocator { entries: alloc::vec![] };
        loc.set(PARENT_LINKAGE, braced_guid(&base.data_write_guid()));
        loc.set(RELATIVE_PATH, ".\\base.vhdx".into());
        let mut child =
            Disk::create_differencing_on(Box::new(MemStorage::new()), base, loc, Some(MIB as u32), None).unwrap();
        for &(at, len) in &child_writes {
            child.write_at(&alloc::vec![0xC6; len as usize], at).unwrap();
        }
        let runs = nonzero_candidates(&child).unwrap();
        // Sorted, and neighbours joined: a gap between consecutive runs.
        for pair in runs.windows(2) {
            assert!(pair[0].0 + pair[0].1 < pair[1].0, "runs {pair:?} touch or overlap: {runs:?}");
        }
        // Every written byte lies in a run.
        for &(at, len) in base_writes.iter().chain(&child_writes) {
            assert!(runs.iter().any(|&(s, l)| s <= at && at + len <= s + l), "{at}+{len} not in {runs:?}");
        }
        // The rest of the child's block 3 is its parent's, which has no
        // block there: zero by the format's rules, between two candidates.
        for &(s, l) in &runs {
            assert!(s + l <= 3 * MIB + 512 || s >= 4 * MIB, "{runs:?} covers the zeros of block 3");
        }
        // The first sector of block 3 and the child's block 2 join the run
        // that holds the parent's block 1.
        assert!(runs.iter().any(|&(s, l)| s <= MIB && s + l == 3 * MIB + 512), "{runs:?}");
    }
}
