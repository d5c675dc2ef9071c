//! `convert`: copying a virtual disk's content among VHDX, VHD and raw images,
//! with `vhdx::ops::convert` (which writes only non-zero 4 KiB grains: a
//! dynamic output allocates no block for zeros, a raw output stays sparse).
//! Also the progress bar the long commands share.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vhdx::ops::convert::{ConvertOptions, ImageFormat};

use crate::data::block_size_arg;
use crate::size::human;
use crate::{CliResult, ConvertArgs, Failure, Format, InFile, TypeArg};

impl From<Format> for ImageFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Vhdx => ImageFormat::Vhdx,
            Format::Raw => ImageFormat::Raw,
            Format::Vhd => ImageFormat::Vhd,
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

/// `vhdx convert SRC DST [--input-format …] [--output-format …] [--type …] …`.
pub fn convert(args: &ConvertArgs) -> CliResult {
    let (src_path, dst_path) = (args.src.as_path(), args.dst.as_path());
    let in_format = args.input_format.map(ImageFormat::from).unwrap_or_else(|| ImageFormat::detect(src_path));
    let out_format = args.output_format.map(ImageFormat::from).unwrap_or_else(|| ImageFormat::from_path(dst_path));
    let vhdx_only = args.disk_type.is_some()
        || args.block_size.is_some()
        || args.logical_sector_size.is_some()
        || args.physical_sector_size.is_some();
    if out_format == ImageFormat::Raw && vhdx_only {
        return Err(Failure(format!(
            "{}: --type and --block-size apply only to VHDX and VHD output, the sector size options only to VHDX output",
            dst_path.display()
        )));
    }
    if out_format == ImageFormat::Vhd && (args.logical_sector_size.is_some() || args.physical_sector_size.is_some()) {
        return Err(Failure(format!(
            "{}: a VHD has 512-byte sectors: the sector size options apply only to VHDX output",
            dst_path.display()
        )));
    }
    if args.azure && (out_format != ImageFormat::Vhd || args.disk_type.is_some() || args.block_size.is_some()) {
        return Err(Failure(format!(
            "{}: --azure makes a fixed VHD: it takes a VHD output (a .vhd name or --output-format vhd) and no --type \
             or --block-size",
            dst_path.display()
        )));
    }
    let options = ConvertOptions::default()
        .input_format(Some(in_format))
        .output_format(Some(out_format))
        .disk_type(args.disk_type.unwrap_or(TypeArg::Dynamic).into())
        .block_size(args.block_size.map(|bs| block_size_arg(dst_path, bs)).transpose()?)
        .logical_sector_size(args.logical_sector_size)
        .physical_sector_size(args.physical_sector_size)
        .sync(!args.no_sync)
        .force_share(args.force_share)
        .overwrite(args.force)
        .azure(args.azure)
        .parent(args.parent.as_ref().map(|p| p.display().to_string()));
    // An existing DST (without --force) and an image of SRC's chain (ever)
    // are refused before any work; DST is replaced only by a complete image.
    let bar = progress_bar(0);
    let report = vhdx::ops::convert::convert_with_progress(src_path, dst_path, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = match report {
        Err(e) if e.kind() == vhdx::ErrorKind::Refused && e.to_string().contains("already exists") => {
            return Err(Failure(format!("{}: already exists (use --force to replace it)", dst_path.display())))
        }
        r => r.in_file(dst_path)?,
    };
    outln!(
        "Converted {} ({}, {}) to {} ({}): {} of non-zero data written",
        src_path.display(),
        in_format.as_str(),
        human(report.virtual_size),
        dst_path.display(),
        report.output_kind,
        human(report.bytes_written),
    )?;
    if args.azure {
        outln!(
            "For Azure: a fixed VHD of {} (a whole number of MiB), footer as Windows writes it",
            human(report.virtual_size)
        )?;
    }
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
        assert_eq!(ImageFormat::from_path(Path::new("old.VHD")), ImageFormat::Vhd);
    }
}
