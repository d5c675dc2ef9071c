//! Converting between image kinds: fixed ↔ dynamic VHDX, a differencing
//! chain flattened into a standalone image, raw ↔ VHDX, keeping zero ranges
//! sparse.
//!
//! Only bytes that are not zero are written: ranges the source's map
//! reports as zeros are skipped, and within the rest every 4 KiB grain that
//! is all zeros is skipped too. A dynamic VHDX output therefore allocates no
//! block for zeros, a fixed output keeps the zeros its preallocated blocks
//! already hold, and a raw output is sized with `set_len` and stays a
//! sparse file (its zero ranges are holes, never written zeros).
//!
//! [`copy_nonzero`] is the core (any [`Disk`] to any [`Disk`], no `std`
//! needed); [`convert`] works on paths (std only). A differencing source is
//! read through its whole chain, so the output has no parent.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::{Disk, Extent};

/// Bytes read from the source at once; copies are split at multiples of it.
const COPY_CHUNK: u64 = 1 << 20;
/// The granularity of zero detection: an all-zero grain is not written.
pub const ZERO_GRAIN: u64 = 4096;

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
pub fn nonzero_spans(buf: &[u8], at: u64) -> Vec<(usize, usize)> {
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
pub fn copy_runs(
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

/// Copies every non-zero byte of `src`'s view (through its chain) into
/// `dst`, which must have the same virtual size and read as zeros where
/// nothing is written (a new image). Returns the bytes written.
///
/// ```
/// use vhdx::{CreateOptions, Disk, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let mut src = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::fixed(8 << 20).block_size(1 << 20), None)?;
/// src.write_at(b"only this", 5 << 20)?;
/// let mut dst = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20).block_size(1 << 20), None)?;
/// assert_eq!(vhdx::ops::convert::copy_nonzero(&src, &mut dst, &mut |_, _| {})?, 4096);
/// assert_eq!(dst.info().allocated_blocks, 1);
/// # Ok(()) }
/// ```
pub fn copy_nonzero(src: &Disk, dst: &mut Disk, progress: &mut dyn FnMut(u64, u64)) -> Result<u64> {
    if src.virtual_size() != dst.virtual_size() {
        return Err(Error::invalid(alloc::format!(
            "the source has {} bytes, the destination {}",
            src.virtual_size(),
            dst.virtual_size()
        )));
    }
    let runs = nonzero_candidates(src)?;
    copy_runs(
        src.virtual_size(),
        &runs,
        &mut |buf, at| src.read_at(buf, at),
        &mut |buf, at| dst.write_at(buf, at),
        progress,
    )
}

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Microsoft VHDX.
    Vhdx,
    /// The virtual disk's bytes, nothing else.
    Raw,
}

impl ImageFormat {
    /// What a file name says: `.raw` and `.img` are raw, anything else VHDX.
    #[cfg(feature = "std")]
    pub fn from_path(path: &std::path::Path) -> ImageFormat {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("raw" | "img") => ImageFormat::Raw,
            _ => ImageFormat::Vhdx,
        }
    }

    /// `"vhdx"` or `"raw"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Raw => "raw",
        }
    }
}

/// A file whose flushes do nothing: the output of an unsynced convert.
#[cfg(feature = "std")]
struct NoSync(crate::io::FileStorage);

#[cfg(feature = "std")]
impl crate::io::Storage for NoSync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> core::result::Result<(), crate::error::IoError> {
        Ok(())
    }
    fn len(&self) -> core::result::Result<u64, crate::error::IoError> {
        self.0.len()
    }
    fn set_len(&mut self, len: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.set_len(len)
    }
}

/// Options of [`convert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The source's format; `None`: from its name ([`ImageFormat::from_path`]).
    pub input_format: Option<ImageFormat>,
    /// The output's format; `None`: from its name.
    pub output_format: Option<ImageFormat>,
    /// Fixed or dynamic, for a VHDX output.
    pub disk_type: crate::DiskType,
    /// Block size of a VHDX output (default: the library's, 32 MiB).
    pub block_size: Option<u32>,
    /// Logical sector size of a VHDX output (default: the source's; 512 for raw).
    pub logical_sector_size: Option<u32>,
    /// Physical sector size of a VHDX output (default: the source's; 4096 for raw).
    pub physical_sector_size: Option<u32>,
    /// Make the output durable before returning (default). `false` skips
    /// every flush of the output, like `qemu-img convert`'s default cache
    /// mode (`-t unsafe`): faster, but a crash before the kernel writes the
    /// file back can leave it incomplete or, for VHDX, inconsistent.
    pub sync: bool,
    /// Read the source without locking it, whatever others hold (like
    /// `qemu-img convert -U`): a source open for writing elsewhere is
    /// otherwise refused ([`Error::Busy`]); with this its copy may be
    /// inconsistent.
    pub force_share: bool,
}

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
        }
    }
}

/// What [`convert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    /// The source's format.
    pub input_format: ImageFormat,
    /// The output's format.
    pub output_format: ImageFormat,
    /// The output's type when it is VHDX.
    pub output_type: Option<crate::DiskType>,
    /// The virtual size (the raw source's length).
    pub virtual_size: u64,
    /// Non-zero bytes written.
    pub bytes_written: u64,
    /// A description of the output ("vhdx, dynamic" or "raw").
    pub output_kind: String,
}

/// Converts the image at `src` into a new image at `dst` (which must not
/// exist), as `options` say; see the module docs. On failure `dst` is
/// removed.
///
/// ```no_run
/// use vhdx::ops::convert::{convert, ConvertOptions};
/// use vhdx::DiskType;
/// // A flattened, fixed copy of a differencing chain:
/// let options = ConvertOptions { disk_type: DiskType::Fixed, ..Default::default() };
/// convert("child.vhdx".as_ref(), "standalone.vhdx".as_ref(), &options)?;
/// // And a sparse raw image of it:
/// convert("standalone.vhdx".as_ref(), "disk.raw".as_ref(), &ConvertOptions::default())?;
/// # Ok::<(), vhdx::Error>(())
/// ```
#[cfg(feature = "std")]
pub fn convert(src: &std::path::Path, dst: &std::path::Path, options: &ConvertOptions) -> Result<ConvertReport> {
    convert_with_progress(src, dst, options, &mut |_, _| {})
}

/// [`convert`], calling `progress(done, total)` in virtual bytes.
#[cfg(feature = "std")]
pub fn convert_with_progress(
    src: &std::path::Path,
    dst: &std::path::Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertReport> {
    use crate::io::{FileStorage, Storage};

    let in_format = options.input_format.unwrap_or_else(|| ImageFormat::from_path(src));
    let out_format = options.output_format.unwrap_or_else(|| ImageFormat::from_path(dst));
    let in_file = |e: Error| e.in_file(src.display());
    let io = |op: &'static str| move |source| Error::Io { op, offset: 0, source };
    if out_format == ImageFormat::Raw
        && (options.disk_type != crate::DiskType::Dynamic
            || options.block_size.is_some()
            || options.logical_sector_size.is_some()
            || options.physical_sector_size.is_some())
    {
        return Err(Error::invalid("the type, block size and sector sizes apply only to a VHDX output"));
    }
    if options.disk_type == crate::DiskType::Differencing {
        return Err(Error::invalid("convert makes fixed or dynamic images (a differencing source is flattened)"));
    }

    enum Source {
        Vhdx(alloc::boxed::Box<Disk>),
        Raw(FileStorage, u64),
    }
    let source = match in_format {
        ImageFormat::Vhdx => {
            Source::Vhdx(alloc::boxed::Box::new(crate::OpenOptions::new().force_share(options.force_share).open(src)?))
        }
        ImageFormat::Raw => {
            // Only a regular file (see `FileStorage::open`), locked like an image.
            let file =
                if options.force_share { FileStorage::open_force_share(src) } else { FileStorage::open(src, false) }
                    .map_err(|source| Error::opening("open", source, false))
                    .map_err(in_file)?;
            let len = file.len().map_err(io("sizing the raw image")).map_err(in_file)?;
            Source::Raw(file, len)
        }
    };
    let (size, runs, lss, pss) = match &source {
        Source::Vhdx(d) => (
            d.virtual_size(),
            nonzero_candidates(d).map_err(in_file)?,
            d.logical_sector_size(),
            d.physical_sector_size(),
        ),
        Source::Raw(_, len) => (*len, alloc::vec![(0, *len)], 512, 4096),
    };
    let mut read = |buf: &mut [u8], at: u64| -> Result<()> {
        match &source {
            Source::Vhdx(d) => d.read_at(buf, at),
            Source::Raw(f, _) => {
                f.read_exact_at(buf, at).map_err(|source| Error::Io { op: "reading the raw image", offset: at, source })
            }
        }
        .map_err(in_file)
    };

    let out_file = |e: Error| e.in_file(dst.display());
    let mut created = false;
    let result = match out_format {
        ImageFormat::Raw => (|| {
            let mut file = FileStorage::create_new(dst).map_err(io("creating the file"))?;
            created = true;
            file.set_len(size).map_err(|source| Error::Io { op: "sizing the file", offset: size, source })?;
            let written = copy_runs(
                size,
                &runs,
                &mut read,
                &mut |buf, at| {
                    file.write_all_at(buf, at).map_err(|source| Error::Io {
                        op: "writing the raw image",
                        offset: at,
                        source,
                    })
                },
                progress,
            )?;
            if options.sync {
                file.flush().map_err(io("flushing"))?;
            }
            Ok((written, None, String::from("raw")))
        })(),
        ImageFormat::Vhdx => (|| {
            let mut create = crate::CreateOptions::dynamic(size)
                .logical_sector_size(options.logical_sector_size.unwrap_or(lss))
                .physical_sector_size(options.physical_sector_size.unwrap_or(pss));
            create.disk_type = options.disk_type;
            if let Some(bs) = options.block_size {
                create = create.block_size(bs);
            }
            if size % create.logical_sector_size as u64 != 0 {
                return Err(Error::invalid(alloc::format!(
                    "the source's size ({size} bytes) is not a multiple of the {}-byte logical sector size",
                    create.logical_sector_size
                ))
                .in_file(src.display()));
            }
            create.validate()?;
            let file = FileStorage::create_new(dst).map_err(io("creating the file"))?;
            created = true;
            let storage: alloc::boxed::Box<dyn Storage> =
                if options.sync { alloc::boxed::Box::new(file) } else { alloc::boxed::Box::new(NoSync(file)) };
            let mut disk = Disk::create_on(storage, &create, None)?;
            let kind = alloc::format!("vhdx, {}", disk.disk_type());
            let written = copy_runs(size, &runs, &mut read, &mut |buf, at| disk.write_at(buf, at), progress)?;
            disk.close()?;
            Ok((written, Some(create.disk_type), kind))
        })(),
    };
    match result {
        Ok((bytes_written, output_type, output_kind)) => Ok(ConvertReport {
            input_format: in_format,
            output_format: out_format,
            output_type,
            virtual_size: size,
            bytes_written,
            output_kind,
        }),
        Err(e) => {
            // Do not leave a half-written image behind (a file that was
            // there before stays: creating refused it).
            if created {
                let _ = std::fs::remove_file(dst);
            }
            Err(out_file(e))
        }
    }
}

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
}
