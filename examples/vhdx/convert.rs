//! `convert`: copying a virtual disk's content between VHDX and raw images.
//!
//! Only bytes that are not zero are written: ranges the source's map reports
//! as zeros are skipped, and within the rest every 4 KiB grain that is all
//! zeros is skipped too. A new dynamic VHDX therefore allocates no block for
//! zeros, and a raw output (sized with `set_len`) stays sparse.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vhdx::{Extent, FileStorage, Storage};

use crate::data::block_size_arg;
use crate::size::human;
use crate::{io_failure, CliResult, ConvertArgs, Failure, Format, InFile, TypeArg};

/// Bytes read from the source at once; copies are split at multiples of it.
const COPY_CHUNK: u64 = 1 << 20;
/// The granularity of zero detection: an all-zero grain is not written.
const ZERO_GRAIN: u64 = 4096;

/// What a file name says its format is: `.raw` and `.img` are raw, the rest VHDX.
fn format_from_name(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("raw" | "img") => Format::Raw,
        _ => Format::Vhdx,
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Vhdx => "vhdx",
        Format::Raw => "raw",
    }
}

/// Where the bytes come from.
enum Source {
    Vhdx(Box<vhdx::Disk>),
    Raw { file: FileStorage, len: u64 },
}

impl Source {
    fn open(path: &Path, format: Format) -> CliResult<Source> {
        match format {
            Format::Vhdx => Ok(Source::Vhdx(Box::new(vhdx::Disk::open(path).in_file(path)?))),
            Format::Raw => {
                let file = FileStorage::open(path, false).map_err(io_failure(path, "opening the raw image"))?;
                let len = file.len().map_err(io_failure(path, "sizing the raw image"))?;
                Ok(Source::Raw { file, len })
            }
        }
    }

    fn size(&self) -> u64 {
        match self {
            Source::Vhdx(disk) => disk.virtual_size(),
            Source::Raw { len, .. } => *len,
        }
    }

    /// The ranges that may hold non-zero bytes, in order, neighbours joined.
    fn runs(&self, path: &Path) -> CliResult<Vec<(u64, u64)>> {
        match self {
            Source::Raw { len, .. } => Ok(vec![(0, *len)]),
            Source::Vhdx(disk) => {
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for e in disk.map().in_file(path)? {
                    if e.extent == Extent::Zero {
                        continue;
                    }
                    match runs.last_mut() {
                        Some((start, len)) if *start + *len == e.offset => *len += e.length,
                        _ => runs.push((e.offset, e.length)),
                    }
                }
                Ok(runs)
            }
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, path: &Path) -> CliResult {
        match self {
            Source::Vhdx(disk) => disk.read_at(buf, offset).in_file(path),
            Source::Raw { file, .. } => file.read_exact_at(buf, offset).map_err(|e| {
                Failure(format!("{}: I/O error while reading at offset {offset:#x}: {e}", path.display()))
            }),
        }
    }
}

/// Where the bytes go.
enum Sink {
    Vhdx(Box<vhdx::Disk>),
    Raw(FileStorage),
}

impl Sink {
    fn write_at(&mut self, buf: &[u8], offset: u64, path: &Path) -> CliResult {
        match self {
            Sink::Vhdx(disk) => disk.write_at(buf, offset).in_file(path),
            Sink::Raw(file) => file.write_all_at(buf, offset).map_err(|e| {
                Failure(format!("{}: I/O error while writing at offset {offset:#x}: {e}", path.display()))
            }),
        }
    }

    /// Makes everything durable and reports any error.
    fn finish(self, path: &Path) -> CliResult {
        match self {
            Sink::Vhdx(disk) => disk.close().in_file(path),
            Sink::Raw(mut file) => file.flush().map_err(io_failure(path, "flushing")),
        }
    }
}

/// The spans of `buf` (which holds the bytes at virtual offset `at`) that
/// contain a non-zero byte, as `(start, len)` within `buf`, in whole grains
/// aligned to absolute multiples of [`ZERO_GRAIN`] (clipped to `buf`).
fn nonzero_spans(buf: &[u8], at: u64) -> Vec<(usize, usize)> {
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

/// A progress bar on stderr when it is a terminal, else nothing.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {percent}% {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Copies every non-zero byte of `runs` from `src` to `dst`; returns the
/// number of bytes written.
fn copy(src: &Source, src_path: &Path, dst: &mut Sink, dst_path: &Path, runs: &[(u64, u64)]) -> CliResult<u64> {
    let bar = progress_bar(src.size());
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut written = 0u64;
    let mut pos_before = 0u64;
    for &(start, len) in runs {
        let end = start + len;
        let mut pos = start;
        bar.inc(start - pos_before);
        while pos < end {
            let n = (COPY_CHUNK - pos % COPY_CHUNK).min(end - pos);
            let chunk = &mut buf[..n as usize];
            src.read_at(chunk, pos, src_path)?;
            for (at, span) in nonzero_spans(chunk, pos) {
                dst.write_at(&chunk[at..at + span], pos + at as u64, dst_path)?;
                written += span as u64;
            }
            pos += n;
            bar.inc(n);
        }
        pos_before = end;
    }
    bar.finish_and_clear();
    Ok(written)
}

/// Makes the output image, empty and of `size` virtual bytes.
fn create_sink(args: &ConvertArgs, format: Format, src: &Source, size: u64) -> CliResult<Sink> {
    let path = args.dst.as_path();
    match format {
        Format::Raw => {
            let mut file = FileStorage::create_new(path).map_err(io_failure(path, "creating the file"))?;
            if let Err(e) = file.set_len(size) {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(io_failure(path, "sizing the file")(e));
            }
            Ok(Sink::Raw(file))
        }
        Format::Vhdx => {
            let (lss, pss) = match src {
                Source::Vhdx(disk) => (disk.logical_sector_size(), disk.physical_sector_size()),
                Source::Raw { .. } => (512, 4096),
            };
            let mut options = vhdx::CreateOptions::dynamic(size)
                .logical_sector_size(args.logical_sector_size.unwrap_or(lss))
                .physical_sector_size(args.physical_sector_size.unwrap_or(pss));
            options.disk_type = args.disk_type.unwrap_or(TypeArg::Dynamic).into();
            if let Some(bs) = args.block_size {
                options = options.block_size(block_size_arg(path, bs)?);
            }
            if size % options.logical_sector_size as u64 != 0 {
                return Err(Failure(format!(
                    "{}: the raw image's size ({size} bytes) is not a multiple of the {}-byte logical sector size",
                    args.src.display(),
                    options.logical_sector_size
                )));
            }
            // Disk::create removes the file itself when it fails.
            let disk = vhdx::Disk::create(path, &options).in_file(path)?;
            Ok(Sink::Vhdx(Box::new(disk)))
        }
    }
}

/// Refuses to write over an existing DST unless `--force`, and over SRC ever.
fn make_room(args: &ConvertArgs) -> CliResult {
    let (src, dst) = (args.src.as_path(), args.dst.as_path());
    if std::fs::symlink_metadata(dst).is_err() {
        return Ok(());
    }
    if !args.force {
        return Err(Failure(format!("{}: already exists (use --force to replace it)", dst.display())));
    }
    let same = match (std::fs::canonicalize(src), std::fs::canonicalize(dst)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Failure(format!("{}: is the source image itself; refusing to replace it", dst.display())));
    }
    std::fs::remove_file(dst).map_err(io_failure(dst, "removing the existing file"))
}

/// `vhdx convert SRC DST [--input-format …] [--output-format …] [--type …] …`.
pub fn convert(args: &ConvertArgs) -> CliResult {
    let (src_path, dst_path) = (args.src.as_path(), args.dst.as_path());
    let in_format = args.input_format.unwrap_or_else(|| format_from_name(src_path));
    let out_format = args.output_format.unwrap_or_else(|| format_from_name(dst_path));
    let vhdx_only = args.disk_type.is_some()
        || args.block_size.is_some()
        || args.logical_sector_size.is_some()
        || args.physical_sector_size.is_some();
    if out_format == Format::Raw && vhdx_only {
        return Err(Failure(format!(
            "{}: --type, --block-size and the sector size options apply only to VHDX output",
            dst_path.display()
        )));
    }
    let src = Source::open(src_path, in_format)?;
    let size = src.size();
    let runs = src.runs(src_path)?;
    make_room(args)?;
    let mut sink = create_sink(args, out_format, &src, size)?;
    let result = copy(&src, src_path, &mut sink, dst_path, &runs).and_then(|written| {
        let kind = match &sink {
            Sink::Vhdx(disk) => format!("vhdx, {}", disk.disk_type()),
            Sink::Raw(_) => String::from("raw"),
        };
        sink.finish(dst_path)?;
        Ok((written, kind))
    });
    match result {
        Ok((written, kind)) => {
            outln!(
                "Converted {} ({}, {}) to {} ({kind}): {} of non-zero data written",
                src_path.display(),
                format_name(in_format),
                human(size),
                dst_path.display(),
                human(written),
            )?;
            Ok(())
        }
        Err(failure) => {
            // Do not leave a half-written image behind.
            let _ = std::fs::remove_file(dst_path);
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(format_from_name(Path::new("a/disk.raw")), Format::Raw);
        assert_eq!(format_from_name(Path::new("disk.IMG")), Format::Raw);
        assert_eq!(format_from_name(Path::new("disk.vhdx")), Format::Vhdx);
        assert_eq!(format_from_name(Path::new("disk")), Format::Vhdx);
    }

    #[test]
    fn all_zero_buffers_have_no_spans() {
        assert!(nonzero_spans(&[0u8; 3 * 4096], 0).is_empty());
        assert!(nonzero_spans(&[], 0).is_empty());
    }

    #[test]
    fn spans_are_whole_grains() {
        let mut buf = vec![0u8; 4 * 4096];
        buf[5000] = 1;
        buf[3 * 4096 + 1] = 2;
        assert_eq!(nonzero_spans(&buf, 0), vec![(4096, 4096), (3 * 4096, 4096)]);
        buf[2 * 4096] = 3;
        assert_eq!(nonzero_spans(&buf, 0), vec![(4096, 3 * 4096)]);
    }

    #[test]
    fn grains_align_to_absolute_offsets() {
        // The buffer starts 512 bytes before a grain boundary.
        let mut buf = vec![0u8; 512 + 4096 + 100];
        buf[0] = 1;
        buf[512 + 4096 + 99] = 1;
        assert_eq!(nonzero_spans(&buf, 4096 - 512), vec![(0, 512), (512 + 4096, 100)]);
    }
}
