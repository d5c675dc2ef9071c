//! VHD (version 1) images in the commands that read them: `info` on a VHD.

use std::path::Path;

use serde_json::{json, Value};
use vhdx::format::vhd::VhdType;
use vhdx::vhd::VhdDisk;
use vhdx::Extent;

use crate::size::human_exact;
use crate::{CliResult, InFile, InfoArgs};

fn type_name(t: VhdType) -> &'static str {
    match t {
        VhdType::Fixed => "fixed",
        VhdType::Dynamic => "dynamic",
        VhdType::Differencing => "differencing",
        _ => "unknown",
    }
}

/// `vhdx info FILE` for a VHD: the footer, the dynamic header, the chain.
/// A differencing disk whose parent cannot be opened is still described,
/// with the reason as `parent_error`.
pub fn info(args: &InfoArgs) -> CliResult {
    let path = args.file.as_path();
    let options = || vhdx::OpenOptions::new().force_share(args.force_share);
    let (disk, parent_error) = match options().open_any(path) {
        Ok(d) => (d, None),
        Err(e) if matches!(e.kind(), vhdx::ErrorKind::ParentNotFound | vhdx::ErrorKind::ParentMismatch) => {
            (options().without_parent().open_any(path).in_file(path)?, Some(e.to_string()))
        }
        Err(e) => return Err(e).in_file(path),
    };
    let vhdx::AnyDisk::Vhd(disk) = disk else {
        return Err(crate::Failure(format!("{}: not a VHD", path.display())));
    };
    let f = disk.footer();
    let h = disk.dynamic_header();
    let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let map = disk.map().in_file(path)?;
    let stored: u64 = map.iter().filter(|e| matches!(e.extent, Extent::Data { .. })).map(|e| e.length).sum();
    let (allocated, total) = disk.allocated_blocks();
    let chain = disk.chain_paths();
    let locators: Vec<(String, String)> = disk
        .locator_paths()
        .in_file(path)?
        .into_iter()
        .map(|(code, p)| {
            (String::from_utf8_lossy(&code).trim_end().to_string(), p.unwrap_or_else(|| String::from("(not a path)")))
        })
        .collect();
    let geometry = format!("{}/{}/{}", f.chs.cylinders, f.chs.heads, f.chs.sectors_per_track);
    if args.json {
        let mut value = json!({
            "filename": path.display().to_string(),
            "format": "vhd",
            "type": type_name(f.disk_type),
            "virtual_size": f.current_size,
            "original_size": f.original_size,
            "block_size": h.map(|h| h.block_size),
            "logical_sector_size": 512,
            "file_size": file_size,
            "geometry": {"cylinders": f.chs.cylinders, "heads": f.chs.heads, "sectors_per_track": f.chs.sectors_per_track},
            "geometry_size": f.chs.bytes(),
            "unique_id": f.unique_id.to_string(),
            "timestamp": f.timestamp,
            "creator": f.creator(),
            "creator_version": format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xFFFF),
            "creator_host": String::from_utf8_lossy(&f.creator_host).trim_end().to_string(),
            "saved_state": f.saved_state,
            "parent": disk.parent().and_then(|p| p.path()),
            "chain": chain,
            "stored_bytes": stored,
            "allocated_blocks": h.map(|_| allocated),
            "payload_blocks": h.map(|_| total),
            "footer_copy_used": disk.used_footer_copy(),
            "checksum_error": disk.footer_checksum_error().map(|e| e.to_string()),
        });
        if let Some(h) = h.filter(|_| f.disk_type == VhdType::Differencing) {
            value["parent_unique_id"] = json!(h.parent_unique_id.to_string());
            value["parent_timestamp"] = json!(h.parent_timestamp);
            value["parent_name"] = json!(h.parent_name);
            value["parent_locator"] = Value::Object(locators.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
            value["parent_error"] = json!(parent_error);
        }
        return crate::inspect::print_json(&value);
    }
    let mut rows: Vec<(&str, String)> = vec![
        ("image", path.display().to_string()),
        ("file format", String::from("vhd")),
        ("type", String::from(type_name(f.disk_type))),
        ("virtual size", human_exact(f.current_size)),
        ("file size", human_exact(file_size)),
    ];
    if let Some(h) = h {
        rows.push(("block size", human_exact(h.block_size as u64)));
        rows.push(("allocated blocks", format!("{allocated} of {total}")));
    }
    rows.push(("geometry", format!("{geometry} (C/H/S, {} bytes)", f.chs.bytes())));
    rows.push(("unique id", f.unique_id.to_string()));
    rows.push((
        "creator",
        format!(
            "{} {}.{} on {}",
            f.creator(),
            f.creator_version >> 16,
            f.creator_version & 0xFFFF,
            String::from_utf8_lossy(&f.creator_host).trim_end()
        ),
    ));
    if disk.used_footer_copy() {
        rows.push(("footer", String::from("damaged at the end; the copy at offset 0 was read")));
    }
    if let Some(e) = disk.footer_checksum_error() {
        rows.push(("checksum", format!("wrong, read anyway (read-only): {e}")));
    }
    if let Some(h) = h.filter(|_| f.disk_type == VhdType::Differencing) {
        match (&parent_error, disk.parent()) {
            (Some(e), _) => rows.push(("parent", format!("not opened: {e}"))),
            (None, Some(p)) => {
                rows.push(("parent", p.path().unwrap_or("?").to_string()));
                rows.push(("chain", chain.join(" -> ")));
            }
            (None, None) => {}
        }
        rows.push(("parent unique id", h.parent_unique_id.to_string()));
        if !h.parent_name.is_empty() {
            rows.push(("parent name", h.parent_name.clone()));
        }
        for (code, p) in &locators {
            rows.push(("parent locator", format!("{code} = {p}")));
        }
    } else {
        rows.push(("parent", String::from("none")));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in &rows {
        outln!("{:<width$} {value}", format!("{key}:"), width = width)?;
    }
    Ok(())
}

/// Whether `path` holds a VHD (by content; see `ImageFormat::detect`).
pub fn is_vhd(path: &Path) -> bool {
    vhdx::ops::convert::ImageFormat::detect(path) == vhdx::ops::convert::ImageFormat::Vhd
}

/// `vhdx create FILE.vhd --size SIZE [--type …] [--block-size …]`, or
/// `vhdx create FILE.vhd --parent PARENT.vhd`: a VHD (by `--format vhd`
/// or the name). Chains mix nothing, as in Windows: a VHD's parent is a
/// VHD.
pub fn create(args: &crate::CreateArgs) -> CliResult {
    use vhdx::vhd::VhdCreateOptions;
    let path = args.file.as_path();
    if args.logical_sector_size.is_some_and(|s| s != 512) || args.physical_sector_size.is_some() {
        return Err(crate::Failure(format!(
            "{}: a VHD has 512-byte sectors: the sector size options apply only to a VHDX",
            path.display()
        )));
    }
    if let Some(parent) = &args.parent {
        if args.disk_type.is_some() || args.block_size.is_some() {
            return Err(crate::Failure(format!(
                "{}: --type and --block-size cannot be used with --parent: a differencing VHD is dynamic, with 2 MiB \
                 blocks, as Windows makes them",
                path.display()
            )));
        }
        if parent.exists() && !is_vhd(parent) {
            return Err(crate::Failure(format!(
                "{}: the parent {} is not a VHD: a VHD's parent is a VHD (convert it first)",
                path.display(),
                parent.display()
            )));
        }
        if let Some(size) = args.size {
            // Opened with its own chain: a parent that cannot be read cannot be a parent.
            let parent_size = VhdDisk::open(parent).in_file(parent)?.virtual_size();
            if size != parent_size {
                return Err(crate::Failure(format!(
                    "{}: --size {size} differs from the virtual size of the parent {} ({parent_size}); a \
                     differencing disk has its parent's size",
                    path.display(),
                    parent.display(),
                )));
            }
        }
        let disk = VhdDisk::create_differencing(path, parent).in_file(path)?;
        outln!(
            "Created {}: differencing VHD over {}, virtual size {}",
            path.display(),
            parent.display(),
            human_exact(disk.virtual_size())
        )?;
        return Ok(());
    }
    let size = args
        .size
        .ok_or_else(|| crate::Failure(format!("{}: --size is required (or --parent PARENT)", path.display())))?;
    let mut options = match args.disk_type.unwrap_or(crate::TypeArg::Dynamic) {
        crate::TypeArg::Fixed => VhdCreateOptions::fixed(size),
        crate::TypeArg::Dynamic => VhdCreateOptions::dynamic(size),
    };
    if let Some(bs) = args.block_size {
        options = options.block_size(crate::data::block_size_arg(path, bs)?);
    }
    let disk = VhdDisk::create(path, &options).in_file(path)?;
    outln!(
        "Created {}: {} VHD, virtual size {}{}",
        path.display(),
        type_name(disk.disk_type()),
        human_exact(disk.virtual_size()),
        disk.dynamic_header().map(|h| format!(", block size {}", human_exact(h.block_size as u64))).unwrap_or_default()
    )?;
    Ok(())
}
