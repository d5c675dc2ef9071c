//! `changes` and `merge-siblings`: what a differencing disk holds, and
//! writing several children back into their parent at once (the library's
//! `vhdx::ops::siblings`, which refuses, before touching anything, when the
//! children's changes conflict).

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};
use vhdx::ops::siblings::{plan_merge_siblings, SiblingMergeOptions, SiblingMergeReport};
use vhdx::ops::tree;

use crate::inspect::print_json;
use crate::size::human_exact;
use crate::{open_alone, CliResult, Failure, InFile};

/// Arguments of `vhdx changes`.
#[derive(Args, Debug)]
pub struct ChangesArgs {
    /// The image (a differencing disk; one without a parent holds every sector).
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Open the image and its parents without locking them, even while
    /// another process writes to them (like `qemu-img -U`); what is read may
    /// then be inconsistent.
    #[arg(short = 'U', long)]
    pub force_share: bool,
}

/// Arguments of `vhdx merge-siblings`.
#[derive(Args, Debug)]
pub struct MergeSiblingsArgs {
    /// The parent the children are merged into.
    pub parent: PathBuf,
    /// The children (differencing disks of PARENT) to merge; each ends empty
    /// and presents the merged content.
    #[arg(required = true)]
    pub children: Vec<PathBuf>,
    /// The child whose bytes win where children hold different bytes in the
    /// same sectors. Without it such conflicts refuse the merge.
    #[arg(long, value_name = "CHILD")]
    pub prefer: Option<PathBuf>,
    /// Report what would be done, and the conflicts, without modifying anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Look for other children of PARENT (and of the children) in this
    /// directory too, besides the directories of PARENT and the children;
    /// repeatable. Those found are preserved.
    #[arg(long = "search-dir", value_name = "DIR")]
    pub search_dirs: Vec<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `vhdx changes FILE [--json]`: the sectors the image holds itself, from
/// its block table and sector bitmaps (its parent is not opened).
pub fn changes(args: &ChangesArgs) -> CliResult {
    let path = args.file.as_path();
    let disk = open_alone(path, args.force_share)?;
    let ranges = disk.change_set().in_file(path)?;
    let sector = disk.logical_sector_size() as u64;
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let differencing = disk.parent_locator().is_some();
    if args.json {
        return print_json(&json!({
            "file": path.display().to_string(),
            "type": disk.disk_type().as_str(),
            "virtual_size": disk.virtual_size(),
            "logical_sector_size": sector,
            "bytes": total,
            "sectors": total / sector,
            "ranges": ranges.iter().map(|&(offset, length)| json!({
                "offset": offset,
                "length": length,
                "first_sector": offset / sector,
                "sector_count": length / sector,
            })).collect::<Vec<_>>(),
        }));
    }
    let what = if differencing {
        "everything else reads from its parent"
    } else {
        "it has no parent, so it determines every sector itself"
    };
    outln!(
        "{}: {} disk, {sector}-byte sectors; holds {} in {} range(s), {} sectors; {what}.",
        path.display(),
        disk.disk_type(),
        human_exact(total),
        ranges.len(),
        total / sector
    )?;
    if ranges.is_empty() {
        return Ok(());
    }
    let rows: Vec<[String; 3]> = ranges
        .iter()
        .map(|&(o, l)| [format!("{o:#x}"), l.to_string(), format!("{}..{}", o / sector, (o + l) / sector)])
        .collect();
    let width = |c: usize, title: &str| rows.iter().map(|r| r[c].len()).max().unwrap_or(0).max(title.len());
    let (w0, w1) = (width(0, "offset"), width(1, "length"));
    outln!("  {:<w0$}  {:>w1$}  sectors", "offset", "length")?;
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!("  {:<w0$}  {:>w1$}  {}\n", r[0], r[1], r[2]));
    }
    crate::emit(&out)
}

/// The JSON object of `vhdx merge-siblings --json`.
fn report_json(report: &SiblingMergeReport) -> Value {
    let sector = report.logical_sector_size as u64;
    let name = |i: usize| report.children[i].path.display().to_string();
    json!({
        "parent": report.parent.display().to_string(),
        "dry_run": report.dry_run,
        "merged": report.merged,
        "refused": report.unresolved().next().is_some(),
        "logical_sector_size": sector,
        "bytes_merged": report.bytes_merged,
        "preferred": report.preferred.map(name),
        "children": report.children.iter().map(|c| json!({
            "path": c.path.display().to_string(),
            "bytes_held": c.bytes_held,
            "bytes_merged": c.bytes_merged,
            "bytes_overridden": c.bytes_overridden,
            "view_changes": c.view_changes,
        })).collect::<Vec<_>>(),
        "conflicts": report.conflicts.iter().map(|c| json!({
            "offset": c.offset,
            "length": c.length,
            "first_sector": c.offset / sector,
            "sector_count": c.length / sector,
            "children": c.children.iter().map(|&i| name(i)).collect::<Vec<_>>(),
            "winner": c.winner.map(name),
        })).collect::<Vec<_>>(),
        "unresolved_conflicts": report.unresolved().count(),
        "preserved": report.preserved.iter().map(|s| json!({
            "path": s.path.display().to_string(),
            "parent": s.parent.display().to_string(),
            "bytes_copied": s.bytes_copied,
            "status": tree::examine(&s.path).status.label(),
        })).collect::<Vec<_>>(),
    })
}

/// The conflicts, one line each.
fn conflict_lines(report: &SiblingMergeReport) -> String {
    let sector = report.logical_sector_size as u64;
    let mut out = String::new();
    for c in &report.conflicts {
        let names: Vec<String> = c.children.iter().map(|&i| report.children[i].path.display().to_string()).collect();
        let decided = match c.winner {
            Some(w) => format!("{} wins", report.children[w].path.display()),
            None => String::from("unresolved"),
        };
        out.push_str(&format!(
            "  bytes {:#x}..{:#x} (sectors {}..{}): {}; {decided}\n",
            c.offset,
            c.offset + c.length,
            c.offset / sector,
            (c.offset + c.length) / sector,
            names.join(", ")
        ));
    }
    out
}

/// The text report.
fn print_report(report: &SiblingMergeReport) -> CliResult {
    let parent = report.parent.display();
    let would = if report.merged { "" } else { "would be " };
    if report.merged {
        outln!(
            "Merged {} child(ren) into {parent}: {} written into {parent}.",
            report.children.len(),
            human_exact(report.bytes_merged)
        )?;
    } else {
        let what = if report.dry_run { "Dry run" } else { "Refused" };
        outln!(
            "{what}, nothing was modified: merging {} child(ren) into {parent} would write {} into it.",
            report.children.len(),
            human_exact(report.bytes_merged)
        )?;
    }
    for c in &report.children {
        let mut line = format!(
            "  {}: holds {}, of which {} {would}merged",
            c.path.display(),
            human_exact(c.bytes_held),
            human_exact(c.bytes_merged)
        );
        if c.bytes_overridden > 0 {
            line.push_str(&format!("; {} of its bytes lose to the preferred child", human_exact(c.bytes_overridden)));
        }
        line.push_str(if report.merged {
            "; it is now empty and presents the merged content."
        } else {
            "; it would then be empty and present the merged content."
        });
        outln!("{line}")?;
    }
    let unresolved = report.unresolved().count();
    if report.conflicts.is_empty() {
        outln!("No conflicts: where children overlap, they hold the same bytes.")?;
    } else {
        outln!(
            "{} conflicting range(s), {} where children hold different bytes ({unresolved} unresolved):",
            report.conflicts.len(),
            human_exact(report.conflicting_bytes())
        )?;
        crate::emit(&conflict_lines(report))?;
    }
    for s in &report.preserved {
        outln!(
            "Preserved {} (child of {}): {} {}copied into it; it presents the same bytes as before.",
            s.path.display(),
            s.parent.display(),
            human_exact(s.bytes_copied),
            would
        )?;
    }
    if report.preserved.is_empty() {
        outln!("No other image depends on the images that change.")?;
    }
    Ok(())
}

/// `vhdx merge-siblings PARENT CHILD… [--prefer CHILD] [--dry-run] [--search-dir DIR]… [--json]`.
pub fn merge_siblings(args: &MergeSiblingsArgs) -> CliResult {
    let parent = args.parent.as_path();
    let mut search_dirs = args.search_dirs.clone();
    if std::iter::once(parent).chain(args.children.iter().map(PathBuf::as_path)).any(Path::is_relative) {
        // As `merge` does: a bare file name's directory is the current one.
        search_dirs.push(PathBuf::from("."));
    }
    let options = SiblingMergeOptions::default()
        .prefer(args.prefer.clone())
        .dry_run(args.dry_run)
        .search_dirs(search_dirs)
        .confine_to(None);
    let plan = plan_merge_siblings(parent, &args.children, &options).in_file(parent)?;
    let unresolved = plan.report().unresolved().count();
    let report = if args.dry_run || unresolved > 0 {
        let mut report = plan.report().clone();
        report.dry_run = args.dry_run;
        report
    } else {
        plan.execute().in_file(parent)?
    };
    if args.json {
        print_json(&report_json(&report))?;
    } else {
        print_report(&report)?;
    }
    if unresolved > 0 {
        let verb = if args.dry_run { "would be refused" } else { "refused" };
        let advice = match &args.prefer {
            Some(p) => format!("the preferred child {} holds none of their sectors", p.display()),
            None => String::from("use --prefer CHILD to choose whose bytes win"),
        };
        return Err(Failure(format!(
            "{}: {verb}: {unresolved} conflicting range(s) where children hold different bytes (listed above); \
             nothing was modified; {advice}",
            parent.display()
        )));
    }
    Ok(())
}
