//! `resize`, `discard` and `compact`: what Hyper-V's Resize-VHD,
//! a TRIM and Optimize-VHD do, on any platform.

use serde_json::json;

use crate::convert::progress_bar;
use crate::inspect::print_json;
use crate::size::{human, human_exact};
use vhdx::ops::resize::ResizeOptions;

use crate::{CliResult, CompactArgs, DiscardArgs, Failure, InFile, ResizeArgs};

/// `vhdx resize FILE --size SIZE [--allow-shrink] [--force] [--search-dir DIR]…`.
pub fn resize(args: &ResizeArgs) -> CliResult {
    let path = args.file.as_path();
    let options = ResizeOptions::default()
        .allow_shrink(args.allow_shrink)
        .break_children(args.force)
        .search_dirs(args.search_dirs.clone());
    let report = match vhdx::ops::resize::resize(path, args.size, &options) {
        Err(e) if e.kind() == vhdx::ErrorKind::Refused && e.to_string().contains("would no longer open") => {
            return Err(Failure(format!("{e} (--force resizes anyway, breaking them)")));
        }
        Err(e) if e.kind() == vhdx::ErrorKind::Refused => {
            return Err(Failure(format!("{}; --allow-shrink discards them", e.in_file(path.display()))));
        }
        r => r.in_file(path)?,
    };
    outln!(
        "Resized {}: virtual size {} -> {}",
        path.display(),
        human_exact(report.old_size),
        human_exact(report.new_size)
    )?;
    if let Some((offset, length)) = report.bat_moved_to {
        outln!("The block allocation table moved to a larger region ({} at file offset {offset:#x}).", human(length))?;
    }
    for child in &report.children_broken {
        outln!("{} no longer opens: its parent changed (--force).", child.display())?;
    }
    Ok(())
}

/// `vhdx discard FILE --offset N --length N`.
pub fn discard(args: &DiscardArgs) -> CliResult {
    let path = args.file.as_path();
    let mut disk = vhdx::Disk::open_writable(path).in_file(path)?;
    disk.discard(args.offset, args.length).in_file(path)?;
    disk.close().in_file(path)?;
    outln!(
        "Discarded {} at offset {} of {}: it reads as zeros (`vhdx compact` gives the space back)",
        human_exact(args.length),
        args.offset,
        path.display()
    )?;
    Ok(())
}

/// `vhdx compact FILE [--json]`: space before and after.
pub fn compact(args: &CompactArgs) -> CliResult {
    let path = args.file.as_path();
    let bar = progress_bar(0);
    let report = vhdx::ops::compact::compact_with_progress(path, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let r = report.in_file(path)?;
    if args.json {
        return print_json(&json!({
            "file": path.display().to_string(),
            "file_size_before": r.file_size_before,
            "file_size_after": r.file_size_after,
            "blocks_released": r.blocks_released,
            "bitmaps_released": r.bitmaps_released,
            "structures_moved": r.structures_moved,
            "bytes_moved": r.bytes_moved,
        }));
    }
    outln!(
        "Compacted {}: {} -> {} ({} given back)",
        path.display(),
        human_exact(r.file_size_before),
        human_exact(r.file_size_after),
        human(r.file_size_before.saturating_sub(r.file_size_after)),
    )?;
    outln!(
        "{} all-zero block(s) released, {} block(s) or region(s) moved ({}).",
        r.blocks_released + r.bitmaps_released,
        r.structures_moved,
        human(r.bytes_moved)
    )?;
    Ok(())
}
