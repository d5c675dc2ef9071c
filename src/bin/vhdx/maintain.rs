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
    let result = match args.size {
        _ if args.to_minimum => vhdx::ops::resize::resize_to_minimum(path, &options),
        Some(size) => vhdx::ops::resize::resize(path, size, &options),
        None => return Err(Failure(String::from("give --size or --to-minimum"))),
    };
    let report = match result {
        Err(e) if e.kind() == vhdx::ErrorKind::Refused && e.to_string().contains("would no longer open") => {
            return Err(Failure(format!("{e} (--force resizes anyway, breaking them)")));
        }
        Err(e) if e.kind() == vhdx::ErrorKind::Refused && e.to_string().contains("would discard data") => {
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
    use vhdx::ops::compact::{compact_with, CompactOptions, FilesystemMode};
    use vhdx::ops::fs::Probe;
    let path = args.file.as_path();
    let mode = match args.filesystem {
        crate::FilesystemArg::Auto => FilesystemMode::Auto,
        crate::FilesystemArg::None => FilesystemMode::None,
    };
    let options = CompactOptions::default().filesystem(mode).dry_run(args.dry_run);
    let bar = progress_bar(0);
    let report = compact_with(path, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let r = report.in_file(path)?;
    let bs = r.block_size;
    let partitions: Vec<serde_json::Value> = r
        .usage
        .iter()
        .flat_map(|u| u.partitions.iter())
        .zip(&r.blocks_per_partition)
        .map(|(p, &blocks)| {
            let mut v = json!({
                "number": p.partition.number,
                "start": p.partition.start,
                "length": p.partition.length,
                "type": p.partition.type_id,
                "blocks_released": blocks,
                "bytes_given_back": blocks * bs,
            });
            match &p.probe {
                Probe::Known(fs) => {
                    let free: u64 = fs.free.iter().map(|&(_, l)| l).sum();
                    v["filesystem"] = json!(fs.kind);
                    v["size"] = json!(fs.size);
                    v["used"] = json!(fs.used);
                    v["free"] = json!(free);
                }
                Probe::Skipped { kind, reason } => {
                    v["filesystem"] = json!(kind);
                    v["skipped"] = json!(reason);
                }
                _ => {}
            }
            v
        })
        .collect();
    let c = r.compact.unwrap_or_default();
    if args.json {
        return print_json(&json!({
            "file": path.display().to_string(),
            "dry_run": args.dry_run,
            "table": r.usage.as_ref().map(|u| u.table.as_str()),
            "partitions": partitions,
            "unpartitioned_free": r.usage.as_ref().map(|u| u.unpartitioned.iter().map(|&(_, l)| l).sum::<u64>()),
            "unpartitioned_blocks_released": r.blocks_in_free_space - r.blocks_per_partition.iter().sum::<u64>(),
            "children": r.children.iter().map(|c| c.display().to_string()).collect::<Vec<_>>(),
            "block_size": bs,
            "blocks_in_free_space": r.blocks_in_free_space,
            "bytes_in_free_space": r.blocks_in_free_space * bs,
            "file_size_before": c.file_size_before,
            "file_size_after": c.file_size_after,
            "blocks_released": c.blocks_released,
            "blocks_freed": c.blocks_freed,
            "bitmaps_released": c.bitmaps_released,
            "structures_moved": c.structures_moved,
            "bytes_moved": c.bytes_moved,
        }));
    }
    if let Some(u) = &r.usage {
        let verb = if args.dry_run { "to give back" } else { "given back" };
        for (p, &blocks) in u.partitions.iter().zip(&r.blocks_per_partition) {
            let name = match p.partition.number {
                0 if u.table == vhdx::ops::fs::TableKind::Damaged => String::from("The disk"),
                0 => String::from("The disk (no partition table)"),
                n => format!("Partition {n} ({})", human(p.partition.length)),
            };
            match &p.probe {
                Probe::Known(fs) => {
                    let free: u64 = fs.free.iter().map(|&(_, l)| l).sum();
                    outln!(
                        "{name}: {}, {} used, {} free; {blocks} block(s), {} {verb}",
                        fs.kind,
                        human(fs.used),
                        human(free),
                        human(blocks * bs)
                    )?
                }
                Probe::Skipped { kind: Some(k), reason } => outln!("{name}: {k}, left alone: {reason}")?,
                Probe::Skipped { kind: None, reason } => outln!("{name}: left alone: {reason}")?,
                _ => {}
            }
        }
    }
    if !r.children.is_empty() {
        let names: Vec<String> = r.children.iter().map(|c| c.display().to_string()).collect();
        outln!(
            "Free space kept: differencing disks are made from this one ({}), and would read other bytes there \
             and refuse its new DataWriteGuid; compact them, or merge them into it, first.",
            names.join(", ")
        )?;
    }
    if args.dry_run {
        outln!(
            "{} stored block(s) lie in free space (or hold nothing else): {} would be given back, and any all-zero blocks (nothing \
             was changed).",
            r.blocks_in_free_space,
            human(r.blocks_in_free_space * bs)
        )?;
        return Ok(());
    }
    outln!(
        "Compacted {}: {} -> {} ({} given back)",
        path.display(),
        human_exact(c.file_size_before),
        human_exact(c.file_size_after),
        human(c.file_size_before.saturating_sub(c.file_size_after)),
    )?;
    outln!(
        "{} block(s) in free space and {} all-zero block(s) released, {} block(s) or region(s) moved ({}).",
        c.blocks_freed,
        c.blocks_released + c.bitmaps_released,
        c.structures_moved,
        human(c.bytes_moved)
    )?;
    Ok(())
}
