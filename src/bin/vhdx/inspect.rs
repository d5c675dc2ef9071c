//! `info`, `check` and `map`: looking at an image without changing it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vhdx::chain::ChainMapEntry;
use vhdx::ops::tree::{self, LinkStatus};
use vhdx::{AnyDisk, Disk, DiskInfo, DiskType, Extent};

use crate::size::human_exact;
use crate::{file_opener, CheckArgs, CliResult, Failure, InFile, InfoArgs, MapArgs};

/// Prints `key: value` lines with the values aligned, like `qemu-img info`.
fn print_aligned(rows: &[(&str, String)]) -> CliResult {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in rows {
        outln!("{:<width$} {value}", format!("{key}:"), width = width)?;
    }
    Ok(())
}

/// Number of payload blocks of a disk: virtual size over block size, rounded up.
fn payload_blocks(info: &DiskInfo) -> u64 {
    info.virtual_size.div_ceil(info.block_size.max(1) as u64)
}

/// Why a differencing disk's chain could not be opened, and how far it goes.
pub struct ChainProblem {
    /// The library's error from opening the chain.
    pub error: String,
    /// The images whose links could be followed, leaf first; the last is the
    /// one whose parent could not be opened.
    pub chain: Vec<PathBuf>,
    /// What is wrong with the last image's link: "missing-parent",
    /// "broken-linkage", "unreadable", "loop" (its parent is already in the
    /// chain), or "unresolved" (the link itself is fine; the chain is refused
    /// for another reason: more than 64 levels, another sector size — see
    /// `error`).
    pub status: &'static str,
    /// The paths its parent locator points at, in resolution order.
    pub candidates: Vec<PathBuf>,
    /// Its locator's Windows absolute paths, which cannot be tried here.
    pub windows_paths: Vec<String>,
    /// For a broken linkage: the DataWriteGuid the image expects, and the one
    /// the file found has.
    pub expected: Option<vhdx::Guid>,
    /// See `expected`.
    pub found: Option<vhdx::Guid>,
}

impl ChainProblem {
    /// The problem in one sentence, for text output.
    pub fn describe(&self) -> String {
        let at = self.chain.last().map(|p| p.display().to_string()).unwrap_or_default();
        match (self.status, self.expected, self.found) {
            ("missing-parent", ..) => {
                let tried: Vec<String> = self.candidates.iter().map(|c| c.display().to_string()).collect();
                format!(
                    "missing-parent: the parent of {at} was not found (looked for {})",
                    vhdx::chain::looked_for(&tried, &self.windows_paths)
                )
            }
            ("broken-linkage", Some(expected), Some(found)) => format!(
                "broken-linkage: {at} expects parent DataWriteGuid {{{expected}}}, {} has {{{found}}}",
                self.candidates.first().map(|c| c.display().to_string()).unwrap_or_default()
            ),
            _ => format!("{}: {}", self.status, self.error),
        }
    }
}

/// Opens the VHDX at `path` with its whole chain. When it is a differencing disk whose
/// chain cannot be opened, opens it alone instead and says why; any other
/// failure (the file itself is unreadable) is the error.
pub fn open_chain(path: &Path, force_share: bool) -> CliResult<(Disk, Option<ChainProblem>)> {
    match open_chain_any(path, force_share)? {
        (AnyDisk::Vhdx(d), problem) => Ok((d, problem)),
        _ => Err(Failure(format!("{}: a VHD, not a VHDX", path.display()))),
    }
}

/// [`open_chain`] for a VHDX or a VHD, by content.
pub fn open_chain_any(path: &Path, force_share: bool) -> CliResult<(AnyDisk, Option<ChainProblem>)> {
    let full_error = match vhdx::OpenOptions::new().force_share(force_share).open_any(path) {
        Ok(disk) => return Ok((disk, None)),
        Err(e) => e,
    };
    let alone = vhdx::OpenOptions::new().without_parent().force_share(force_share).open_any(path).in_file(path)?;
    if alone.disk_type() != DiskType::Differencing {
        return Err(full_error).in_file(path);
    }
    let nodes = tree::chain_with(path, &file_opener(force_share));
    let last = nodes.last().expect("a chain holds at least its leaf");
    let (status, expected, found) = match &last.status {
        LinkStatus::BrokenLinkage { expected, found, .. } => ("broken-linkage", Some(*expected), Some(*found)),
        LinkStatus::Ok | LinkStatus::Root => ("unresolved", None, None),
        other => (other.label(), None, None),
    };
    let windows_paths = match &last.status {
        LinkStatus::MissingParent { windows_paths, .. } => windows_paths.clone(),
        _ => Vec::new(),
    };
    let candidates = match &last.status {
        LinkStatus::MissingParent { looked_for, .. } => looked_for.clone(),
        LinkStatus::BrokenLinkage { parent, .. } => vec![parent.clone()],
        _ => vhdx::OpenOptions::new()
            .without_parent()
            .force_share(force_share)
            .open_any(&last.path)
            .ok()
            .and_then(|d| d.parent_candidates(&last.path).ok())
            .map(|(c, _)| c)
            .unwrap_or_default(),
    };
    let problem = ChainProblem {
        error: full_error.in_file(path.display()).to_string(),
        chain: nodes.iter().map(|n| n.path.clone()).collect(),
        status,
        candidates,
        windows_paths,
        expected,
        found,
    };
    Ok((alone, Some(problem)))
}

/// The chain of an open disk, leaf first, as paths.
fn chain_of(disk: &Disk) -> Vec<String> {
    disk.chain_paths()
}

/// The JSON object of `vhdx info --json`.
fn info_json(path: &Path, info: &DiskInfo, disk: &Disk, problem: Option<&ChainProblem>) -> Value {
    let locator = info
        .parent_locator
        .as_ref()
        .map(|entries| Value::Object(entries.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()));
    let chain: Vec<String> = match problem {
        Some(p) => p.chain.iter().map(|c| c.display().to_string()).collect(),
        None => chain_of(disk),
    };
    let mut value = json!({
        "filename": path.display().to_string(),
        "format": "vhdx",
        "type": info.disk_type.as_str(),
        "virtual_size": info.virtual_size,
        "block_size": info.block_size,
        "logical_sector_size": info.logical_sector_size,
        "physical_sector_size": info.physical_sector_size,
        "file_size": info.file_size,
        // The parent as the resolver found and checked it (null for a root,
        // or when it cannot be opened: see "parent_status").
        "parent": disk.parent().and_then(|p| p.path()),
        "chain": chain,
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
    });
    // What the disk holds, as the partition table says (only when the chain
    // reads: a child alone would show its parent's part as zeros).
    if problem.is_none() {
        if let Ok(min) = vhdx::ops::fs::minimum_size(disk) {
            value["minimum_size"] = json!(min.size);
            value["minimum_size_limited_by"] = json!(min.limited_by);
        }
    }
    if let Some(p) = problem {
        value["parent_status"] = json!(p.status);
        value["parent_error"] = json!(p.error);
        value["parent_problem_at"] = json!(p.chain.last().map(|c| c.display().to_string()));
        value["parent_candidates"] = json!(p.candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>());
        if let (Some(expected), Some(found)) = (p.expected, p.found) {
            value["parent_expected_guid"] = json!(expected.to_string());
            value["parent_found_guid"] = json!(found.to_string());
        }
    }
    value
}

/// Prints `value` as indented JSON.
pub fn print_json(value: &Value) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure(format!("formatting JSON: {e}")))?;
    outln!("{text}")?;
    Ok(())
}

/// `vhdx info FILE [--json]`: the image's own parameters, plus its parent and
/// chain as the resolver finds them (a differencing disk whose parent cannot
/// be opened is described alone, with the reason).
pub fn info(args: &InfoArgs) -> CliResult {
    let path = args.file.as_path();
    let (disk, problem) = open_chain(path, args.force_share)?;
    let info = disk.info().in_file(path)?;
    if args.json {
        return print_json(&info_json(path, &info, &disk, problem.as_ref()));
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
    if problem.is_none() {
        if let Ok(min) = vhdx::ops::fs::minimum_size(&disk) {
            rows.push(("minimum size", format!("{} (the end of {})", human_exact(min.size), min.limited_by)));
        }
    }
    match (&problem, disk.parent()) {
        (Some(p), _) => {
            rows.push(("parent", p.describe()));
            let chain: Vec<String> = p.chain.iter().map(|c| c.display().to_string()).collect();
            rows.push(("chain", format!("{} -> ?", chain.join(" -> "))));
        }
        (None, Some(parent)) => {
            rows.push(("parent", parent.path().unwrap_or("?").to_string()));
            rows.push(("chain", chain_of(&disk).join(" -> ")));
        }
        (None, None) => rows.push(("parent", String::from("none"))),
    }
    if let Some(entries) = &info.parent_locator {
        for (key, value) in entries {
            rows.push(("parent locator", format!("{key} = {value}")));
        }
    }
    print_aligned(&rows)
}

/// `vhdx check FILE [--json] [--repair]`: exits 1 when errors were found
/// (after the repairs, with `--repair`).
pub fn check(args: &CheckArgs) -> CliResult {
    let path = args.file.as_path();
    let vhd = crate::vhd::is_vhd(path);
    let (report, repairs) = if args.repair {
        let repaired = vhdx::check::repair_file(path).in_file(path)?;
        (repaired.after, repaired.actions)
    } else {
        (vhdx::check::check_file_with(path, &file_opener(args.force_share)).in_file(path)?, Vec::new())
    };
    // A VHD: whether Azure takes it as an uploaded disk.
    let azure = if vhd { Some(vhdx::check::azure_problems(path).in_file(path)?) } else { None };
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
        if let Some(problems) = &azure {
            value["format"] = json!("vhd");
            value["azure"] = json!({ "acceptable": problems.is_empty(), "problems": problems });
        }
        print_json(&value)?;
    } else {
        for action in &repairs {
            outln!("Repaired: {action}")?;
        }
        if args.repair && repairs.is_empty() {
            outln!("Nothing needed repairing.")?;
        }
        for error in &report.errors {
            outln!("ERROR: {error}")?;
        }
        for note in &report.notes {
            outln!("note: {note}")?;
        }
        if count == 0 {
            outln!("No errors were found on the image.")?;
        } else {
            outln!("\n{count} error{} found on the image.", if count == 1 { " was" } else { "s were" })?;
        }
        match azure.as_deref() {
            Some([]) => outln!("Azure: acceptable as an uploaded disk (fixed, a whole number of MiB).")?,
            Some(problems) => {
                for p in problems {
                    outln!("Azure: not acceptable: {p}")?;
                }
            }
            None => {}
        }
    }
    if count == 0 {
        Ok(())
    } else {
        Err(Failure(format!("{}: the check found {count} error{}", path.display(), if count == 1 { "" } else { "s" })))
    }
}

/// One run of `vhdx map --json`, laid out as `qemu-img map --output=json`
/// lays out its runs, with the same fields: `present` = some image of the
/// chain defines the bytes, `zero` = they read as zeros, `data` = they are
/// stored, `offset` = where in that image's file, `depth` = which image of
/// the chain (0 = this one, 1 = its parent, …: the index into `info --json`'s
/// `chain`).
///
/// QEMU's own VHDX driver reports every range as `present` and `data`
/// without an offset (it has no block-status callback), so it offers nothing
/// to match; these follow qcow2's answers for the same states: a range that
/// reads as zeros because no image stores it is `present: false, zero:
/// true` at the depth of the image that decided so, and a range left to a
/// parent that could not be opened is `present: false, zero: false` one level
/// below the last image that was opened.
fn run_json(r: &ChainMapEntry) -> String {
    let (present, zero, data, offset) = match r.extent {
        Extent::Data { file_offset } => (true, false, true, Some(file_offset)),
        Extent::Zero => (false, true, false, None),
        Extent::Parent => (false, false, false, None),
        // Extent is non_exhaustive for the library's users; this command
        // is built with the library and must learn a new kind with it.
        other => unreachable!("an extent kind the map does not know: {other:?}"),
    };
    let mut line = format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {present}, \"zero\": {zero}, \"data\": {data}, \"compressed\": false",
        r.offset, r.length, r.depth
    );
    if let Some(offset) = offset {
        line.push_str(&format!(", \"offset\": {offset}"));
    }
    line.push('}');
    line
}

/// The whole `vhdx map --json` output: one run per line, as QEMU prints it.
fn map_json(runs: &[ChainMapEntry]) -> String {
    let lines: Vec<String> = runs.iter().map(run_json).collect();
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

/// `vhdx map FILE [--json]`. A differencing disk is mapped through its
/// chain; when the chain cannot be opened, a note says so and ranges from
/// the parent are reported as such (depth 1, not present).
pub fn map(args: &MapArgs) -> CliResult {
    let path = args.file.as_path();
    let (disk, problem) = open_chain_any(path, args.force_share)?;
    if let Some(p) = &problem {
        eprintln!(
            "note: {}: mapping the image alone ({}); ranges from its parents show as depth 1",
            path.display(),
            p.describe()
        );
    }
    print_map(args, path, &disk)
}

fn print_map(args: &MapArgs, path: &Path, disk: &AnyDisk) -> CliResult {
    let runs = disk.map().in_file(path)?;
    if args.json {
        outln!("{}", map_json(&runs))?;
        return Ok(());
    }
    // The chain's files by depth ("?" for an image opened without a path).
    let files: Vec<String> =
        disk.chain_paths().into_iter().map(|p| if p == "?" { path.display().to_string() } else { p }).collect();
    outln!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to")?;
    for r in &runs {
        if let Extent::Data { file_offset } = r.extent {
            outln!("{:<16}{:<16}{:<16}{}", hex(r.offset), hex(r.length), hex(file_offset), files[r.depth])?;
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
        // The leaf alone, its parent not open (what vhdx::chain::map gives).
        let run = |offset, length, depth, extent| ChainMapEntry { offset, length, depth, extent };
        let runs = [
            run(0, 4096, 0, Extent::Data { file_offset: 1 << 22 }),
            run(4096, 4096, 0, Extent::Zero),
            run(8192, 4096, 1, Extent::Parent),
        ];
        let text = map_json(&runs);
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
