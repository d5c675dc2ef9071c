//! `convert`: copying a virtual disk's content between VHDX and raw images,
//! with `vhdx::ops::convert` (which writes only non-zero 4 KiB grains: a
//! dynamic output allocates no block for zeros, a raw output stays sparse).
//! Also the progress bar the long commands share.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vhdx::ops::convert::{ConvertOptions, ImageFormat};

use crate::data::block_size_arg;
use crate::size::human;
use crate::{io_failure, CliResult, ConvertArgs, Failure, Format, InFile, TypeArg};

impl From<Format> for ImageFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Vhdx => ImageFormat::Vhdx,
            Format::Raw => ImageFormat::Raw,
        }
    }
}

/// A progress bar of `total` bytes on stderr when it is a terminal, else a
/// hidden one (scripts and pipes see nothing).
pub fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {percent}% {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
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
    let in_format = args.input_format.map(ImageFormat::from).unwrap_or_else(|| ImageFormat::from_path(src_path));
    let out_format = args.output_format.map(ImageFormat::from).unwrap_or_else(|| ImageFormat::from_path(dst_path));
    let vhdx_only = args.disk_type.is_some()
        || args.block_size.is_some()
        || args.logical_sector_size.is_some()
        || args.physical_sector_size.is_some();
    if out_format == ImageFormat::Raw && vhdx_only {
        return Err(Failure(format!(
            "{}: --type, --block-size and the sector size options apply only to VHDX output",
            dst_path.display()
        )));
    }
    let options = ConvertOptions {
        input_format: Some(in_format),
        output_format: Some(out_format),
        disk_type: args.disk_type.unwrap_or(TypeArg::Dynamic).into(),
        block_size: args.block_size.map(|bs| block_size_arg(dst_path, bs)).transpose()?,
        logical_sector_size: args.logical_sector_size,
        physical_sector_size: args.physical_sector_size,
        sync: !args.no_sync,
        force_share: args.force_share,
    };
    // The source must open before an existing DST is removed.
    if in_format == ImageFormat::Vhdx {
        drop(vhdx::OpenOptions::new().force_share(args.force_share).open(src_path).in_file(src_path)?);
    } else {
        std::fs::metadata(src_path).map_err(io_failure(src_path, "opening the raw image"))?;
    }
    make_room(args)?;
    let bar = progress_bar(0);
    let report = vhdx::ops::convert::convert_with_progress(src_path, dst_path, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report.in_file(dst_path)?;
    outln!(
        "Converted {} ({}, {}) to {} ({}): {} of non-zero data written",
        src_path.display(),
        in_format.as_str(),
        human(report.virtual_size),
        dst_path.display(),
        report.output_kind,
        human(report.bytes_written),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(ImageFormat::from_path(Path::new("a/disk.raw")), ImageFormat::Raw);
        assert_eq!(ImageFormat::from_path(Path::new("disk.IMG")), ImageFormat::Raw);
        assert_eq!(ImageFormat::from_path(Path::new("disk.vhdx")), ImageFormat::Vhdx);
        assert_eq!(ImageFormat::from_path(Path::new("disk")), ImageFormat::Vhdx);
    }
}
