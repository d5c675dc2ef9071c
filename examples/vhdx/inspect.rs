//! `info`, `check` and `map`: looking at an image without changing it.

use std::path::Path;

use serde_json::{json, Value};
use vhdx::{DiskInfo, Extent, MapEntry};

use crate::size::human_exact;
use crate::{open_alone, CheckArgs, CliResult, Failure, InFile, InfoArgs, MapArgs};

/// Prints `key: value` lines with the values aligned, like `qemu-img info`.
fn print_aligned(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in rows {
        println!("{:<width$} {value}", format!("{key}:"), width = width);
    }
}

/// Number of payload blocks of a disk: virtual size over block size, rounded up.
fn payload_blocks(info: &DiskInfo) -> u64 {
    info.virtual_size.div_ceil(info.block_size.max(1) as u64)
}

/// The JSON object of `vhdx info --json`.
fn info_json(path: &Path, info: &DiskInfo) -> Value {
    let locator = info
        .parent_locator
        .as_ref()
        .map(|entries| Value::Object(entries.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()));
    json!({
        "filename": path.display().to_string(),
        "format": "vhdx",
        "type": info.disk_type.as_str(),
        "virtual_size": info.virtual_size,
        "block_size": info.block_size,
        "logical_sector_size": info.logical_sector_size,
        "physical_sector_size": info.physical_sector_size,
        "file_size": info.file_size,
        // Parent resolution is not reported here yet: the locator's paths are
        // Windows paths relative to wherever the child was made, not paths
        // this tool has checked. They are in "parent_locator".
        "parent": Value::Null,
        "parent_locator": locator,
        "virtual_disk_id": info.virtual_disk_id.to_string(),
        "data_write_guid": info.data_write_guid.to_string(),
        "file_write_guid": info.file_write_guid.to_string(),
        "header_sequence_number": info.header_sequence_number,
        "chunk_ratio": info.chunk_ratio,
        "payload_blocks": payload_blocks(info),
        "allocated_blocks": info.allocated_blocks,
        "creator": info.creator,
        "log_replayed": info.log_replayed,
    })
}

fn print_json(value: &Value) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure(format!("formatting JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `vhdx info FILE [--json]`.
pub fn info(args: &InfoArgs) -> CliResult {
    let path = args.file.as_path();
    let disk = open_alone(path)?;
    let info = disk.info();
    if args.json {
        return print_json(&info_json(path, &info));
    }
    let mut rows = vec![
        ("image", path.display().to_string()),
        ("file format", String::from("vhdx")),
        ("type", info.disk_type.to_string()),
        ("virtual size", human_exact(info.virtual_size)),
        ("file size", human_exact(info.file_size)),
        ("block size", human_exact(info.block_size as u64)),
        ("logical sector size", info.logical_sector_size.to_string()),
        ("physical sector size", info.physical_sector_size.to_string()),
        ("chunk ratio", info.chunk_ratio.to_string()),
        ("allocated blocks", format!("{} of {}", info.allocated_blocks, payload_blocks(&info))),
        ("virtual disk id", info.virtual_disk_id.to_string()),
        ("data write guid", info.data_write_guid.to_string()),
        ("file write guid", info.file_write_guid.to_string()),
        ("header sequence", info.header_sequence_number.to_string()),
        ("creator", info.creator.clone()),
        ("log replayed", String::from(if info.log_replayed { "yes (in memory; the file is unchanged)" } else { "no" })),
    ];
    if let Some(entries) = &info.parent_locator {
        for (key, value) in entries {
            rows.push(("parent locator", format!("{key} = {value}")));
        }
    }
    print_aligned(&rows);
    Ok(())
}

/// `vhdx check FILE [--json] [--repair]`: exits 1 when errors were found
/// (after the repairs, with `--repair`).
pub fn check(args: &CheckArgs) -> CliResult {
    let path = args.file.as_path();
    let (report, repairs) = if args.repair {
        let repaired = vhdx::check::repair_file(path).in_file(path)?;
        (repaired.after, repaired.actions)
    } else {
        (vhdx::check::check_file(path).in_file(path)?, Vec::new())
    };
    let count = report.errors.len();
    if args.json {
        let mut value = json!({
            "filename": path.display().to_string(),
            "ok": count == 0,
            "errors": report.errors,
            "notes": report.notes,
        });
        if args.repair {
            value["repairs"] = json!(repairs);
        }
        print_json(&value)?;
    } else {
        for action in &repairs {
            println!("Repaired: {action}");
        }
        if args.repair && repairs.is_empty() {
            println!("Nothing needed repairing.");
        }
        for error in &report.errors {
            println!("ERROR: {error}");
        }
        for note in &report.notes {
            println!("note: {note}");
        }
        if count == 0 {
            println!("No errors were found on the image.");
        } else {
            println!("\n{count} error{} found on the image.", if count == 1 { " was" } else { "s were" });
        }
    }
    if count == 0 {
        Ok(())
    } else {
        Err(Failure(format!("{}: the check found {count} error{}", path.display(), if count == 1 { "" } else { "s" })))
    }
}

/// One run of `vhdx map --json`, laid out as `qemu-img map --output=json`
/// lays out its runs, with the same fields: `present` = this layer (or a
/// lower one) defines the bytes, `zero` = they read as zeros, `data` = they
/// are stored, `offset` = where in the file, `depth` = how far down the chain
/// they come from.
///
/// QEMU's own VHDX driver reports every range as `present` and `data`
/// without an offset (it has no block-status callback), so it offers nothing
/// to match; these follow qcow2's answers for the same states: an
/// unallocated block of a disk without a parent is `present: false, zero:
/// true` at depth 0, and a range a differencing disk leaves to its parent is
/// `present: false, zero: false` at depth 1 (this tool does not look into the
/// parent).
fn map_entry_json(e: &MapEntry) -> String {
    let (depth, present, zero, data, offset) = match e.extent {
        Extent::Data { file_offset } => (0, true, false, true, Some(file_offset)),
        Extent::Zero => (0, false, true, false, None),
        Extent::Parent => (1, false, false, false, None),
    };
    let mut line = format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": {depth}, \"present\": {present}, \"zero\": {zero}, \"data\": {data}, \"compressed\": false",
        e.offset, e.length
    );
    if let Some(offset) = offset {
        line.push_str(&format!(", \"offset\": {offset}"));
    }
    line.push('}');
    line
}

/// The whole `vhdx map --json` output: one run per line, as QEMU prints it.
fn map_json(entries: &[MapEntry]) -> String {
    let lines: Vec<String> = entries.iter().map(map_entry_json).collect();
    format!("[{}]", lines.join(",\n"))
}

/// A number as C's `%#x` writes it: `0` for zero, `0x…` otherwise.
fn hex(n: u64) -> String {
    if n == 0 {
        String::from("0")
    } else {
        format!("{n:#x}")
    }
}

/// `vhdx map FILE [--json]`.
pub fn map(args: &MapArgs) -> CliResult {
    let path = args.file.as_path();
    let disk = open_alone(path)?;
    let entries = disk.map().in_file(path)?;
    if args.json {
        println!("{}", map_json(&entries));
        return Ok(());
    }
    println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
    for e in &entries {
        if let Extent::Data { file_offset } = e.extent {
            println!("{:<16}{:<16}{:<16}{}", hex(e.offset), hex(e.length), hex(file_offset), path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_like_c() {
        assert_eq!(hex(0), "0");
        assert_eq!(hex(0x10000), "0x10000");
    }

    #[test]
    fn map_json_fields_follow_qemu_img() {
        let entries = [
            MapEntry { offset: 0, length: 4096, extent: Extent::Data { file_offset: 1 << 22 } },
            MapEntry { offset: 4096, length: 4096, extent: Extent::Zero },
            MapEntry { offset: 8192, length: 4096, extent: Extent::Parent },
        ];
        let text = map_json(&entries);
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with(r#"[{ "start": 0, "length": 4096, "depth": 0, "present": true,"#));
        let runs: Value = serde_json::from_str(&text).expect("valid JSON");
        let field = |i: usize, k: &str| runs[i][k].clone();
        assert_eq!((field(0, "present"), field(0, "data"), field(0, "zero")), (json!(true), json!(true), json!(false)));
        assert_eq!(field(0, "offset"), json!(1u64 << 22));
        assert_eq!((field(1, "present"), field(1, "zero"), field(1, "depth")), (json!(false), json!(true), json!(0)));
        assert!(runs[1].get("offset").is_none());
        assert_eq!((field(2, "present"), field(2, "zero"), field(2, "depth")), (json!(false), json!(false), json!(1)));
        assert_eq!(field(2, "start"), json!(8192));
    }
}
