//! `tree`, `merge` and `set-parent`: differencing chains as a whole.
//!
//! `tree` only reads. `merge` and `set-parent` change images through the
//! library's `vhdx::ops::merge`, which refuses, before touching anything, to
//! leave other images silently wrong.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vhdx::ops::merge::{MergeOptions, MergeReport, MergeRun, SiblingPolicy};
use vhdx::ops::tree::{self, LinkStatus, Node};

use crate::inspect::print_json;
use crate::size::human_exact;
use crate::{file_opener, io_failure, CliResult, InFile, MergeArgs, SetParentArgs, TreeArgs};

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

fn braced(guid: &vhdx::Guid) -> String {
    format!("{{{guid}}}")
}

/// Images and who is whose child: the parent of each node, as an index when
/// the parent is among the nodes, and the children of each.
struct Forest {
    nodes: Vec<Node>,
    parent: Vec<Option<usize>>,
    kids: Vec<Vec<usize>>,
}

impl Forest {
    /// Links `nodes` (duplicates, by canonical path, are dropped). A set of
    /// locators can make a cycle (crafted, or set by hand): each is cut
    /// where it is first entered, and the image there marked as a loop.
    fn new(all: Vec<Node>) -> Forest {
        let mut nodes: Vec<Node> = Vec::new();
        let mut canon: Vec<PathBuf> = Vec::new();
        for n in all {
            let c = canonical(&n.path);
            if !canon.contains(&c) {
                canon.push(c);
                nodes.push(n);
            }
        }
        let mut parent: Vec<Option<usize>> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if matches!(n.status, LinkStatus::Loop { .. }) {
                    return None; // a chain's loop, already cut
                }
                let p = canonical(n.parent.as_deref()?);
                canon.iter().position(|c| *c == p).filter(|&j| j != i)
            })
            .collect();
        // Following parents from any image ends at a root, or runs into a cycle.
        for i in 0..nodes.len() {
            let mut walked = vec![i];
            let mut at = i;
            while let Some(p) = parent[at] {
                if walked.contains(&p) {
                    // A cycle through p, the first of its images met: cut it above p.
                    let above = parent[p].take().expect("p is on the cycle");
                    nodes[p].status = LinkStatus::Loop { parent: nodes[above].path.clone() };
                    break;
                }
                walked.push(p);
                at = p;
            }
        }
        let mut kids = vec![Vec::new(); nodes.len()];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                kids[*p].push(i);
            }
        }
        Forest { nodes, parent, kids }
    }

    /// The roots: images whose parent is not among the nodes (or whose
    /// link closes a loop).
    fn roots(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.parent[i].is_none()).collect()
    }

    /// `i` and everything below it, each once, parents before children.
    fn subtree(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut out = Vec::new();
        let mut stack = vec![i];
        while let Some(j) = stack.pop() {
            if !seen[j] {
                seen[j] = true;
                out.push(j);
                stack.extend(self.kids[j].iter().rev());
            }
        }
        out
    }

    /// The JSON object of node `i`.
    fn node_json(&self, i: usize) -> Value {
        let n = &self.nodes[i];
        let parent = match self.parent[i] {
            Some(j) => Some(self.nodes[j].path.display().to_string()),
            None => n.parent.as_ref().map(|p| p.display().to_string()),
        };
        let mut v = json!({
            "path": n.path.display().to_string(),
            "format": n.format.as_str(),
            "type": n.disk_type.map(|t| t.as_str()),
            "status": n.status.label(),
            "parent": parent,
            "data_write_guid": n.data_write_guid.map(|g| g.to_string()),
            "children": self.kids[i].iter().map(|&k| self.nodes[k].path.display().to_string()).collect::<Vec<_>>(),
        });
        match &n.status {
            LinkStatus::BrokenLinkage { expected, found, .. } => {
                v["expected_guid"] = json!(expected.to_string());
                v["found_guid"] = json!(found.to_string());
            }
            LinkStatus::MissingParent { looked_for, windows_paths } => {
                v["looked_for"] = json!(looked_for.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
                v["windows_paths"] = json!(windows_paths);
            }
            LinkStatus::Loop { parent } => v["loops_to"] = json!(parent.display().to_string()),
            LinkStatus::Unreadable(e) => v["error"] = json!(e),
            _ => {}
        }
        v
    }

    /// One line of the drawing: the name, type and DataWriteGuid, then what
    /// is wrong with the link, if anything.
    fn label(&self, i: usize, base: Option<&Path>) -> String {
        let n = &self.nodes[i];
        let name = match base.and_then(|b| n.path.strip_prefix(b).ok()) {
            Some(rel) => rel.display().to_string(),
            None => n.path.display().to_string(),
        };
        let mut text = match (n.disk_type, n.data_write_guid) {
            (Some(t), Some(g)) if n.format == vhdx::ops::convert::ImageFormat::Vhd => {
                format!("{name} (VHD {t}, {})", braced(&g))
            }
            (Some(t), Some(g)) => format!("{name} ({t}, {})", braced(&g)),
            _ => name,
        };
        let mark = status_mark(&n.status);
        if !mark.is_empty() {
            text.push_str(&format!(" [{mark}]"));
        } else if n.status == LinkStatus::Ok && self.parent[i].is_none() {
            if let Some(p) = &n.parent {
                text.push_str(&format!(" [parent: {}]", p.display()));
            }
        }
        text
    }

    /// Draws node `i` and its descendants below `prefix`.
    fn draw(&self, i: usize, prefix: &str, connector: &str, base: Option<&Path>, seen: &mut [bool], out: &mut String) {
        out.push_str(&format!("{prefix}{connector}{}\n", self.label(i, base)));
        if seen[i] {
            return;
        }
        seen[i] = true;
        let child_prefix = match connector {
            "├─ " => format!("{prefix}│  "),
            "└─ " => format!("{prefix}   "),
            _ => prefix.to_string(),
        };
        let kids = &self.kids[i];
        for (k, &kid) in kids.iter().enumerate() {
            let connector = if k + 1 == kids.len() { "└─ " } else { "├─ " };
            self.draw(kid, &child_prefix, connector, base, seen, out);
        }
    }
}

/// What is wrong with a link, for the drawing; empty when nothing is.
fn status_mark(status: &LinkStatus) -> String {
    match status {
        LinkStatus::Root | LinkStatus::Ok => String::new(),
        LinkStatus::BrokenLinkage { parent, expected, found } => {
            format!("broken linkage: expects {}, parent has {} ({})", braced(expected), braced(found), parent.display())
        }
        LinkStatus::MissingParent { looked_for, windows_paths } => {
            let paths: Vec<String> = looked_for.iter().map(|p| p.display().to_string()).collect();
            format!("missing parent: looked for {}", vhdx::chain::looked_for(&paths, windows_paths))
        }
        LinkStatus::Loop { parent } => {
            format!("loop: its parent {} descends from it, so the chain loops back to it", parent.display())
        }
        LinkStatus::Unreadable(e) => format!("unreadable: {e}"),
        other => other.label().to_string(),
    }
}

/// `vhdx tree PATH [--json]`.
pub fn tree(args: &crate::TreeArgs) -> CliResult {
    let path = args.path.as_path();
    let meta = std::fs::metadata(path).map_err(io_failure(path, "looking at the path"))?;
    if meta.is_dir() {
        tree_dir(path, args)
    } else {
        tree_file(path, args)
    }
}

/// The forest of every image in a directory.
fn tree_dir(dir: &Path, args: &TreeArgs) -> CliResult {
    let nodes =
        tree::scan_dir_with(dir, &file_opener(args.force_share)).map_err(io_failure(dir, "listing the directory"))?;
    let forest = Forest::new(nodes);
    let roots = forest.roots();
    if args.json {
        return print_json(&json!({
            "directory": dir.display().to_string(),
            "roots": roots.iter().map(|&r| forest.nodes[r].path.display().to_string()).collect::<Vec<_>>(),
            "nodes": (0..forest.nodes.len()).map(|i| forest.node_json(i)).collect::<Vec<_>>(),
        }));
    }
    if forest.nodes.is_empty() {
        outln!("No .vhdx, .avhdx, .vhd or .avhd images in {}.", dir.display())?;
        return Ok(());
    }
    let mut out = String::new();
    let mut seen = vec![false; forest.nodes.len()];
    for r in roots {
        forest.draw(r, "", "", Some(dir), &mut seen, &mut out);
    }
    crate::emit(&out)?;
    Ok(())
}

/// A file's chain, leaf first, and its descendants in its directory.
fn tree_file(path: &Path, args: &TreeArgs) -> CliResult {
    // The image itself must be readable; broken links beyond it are reported.
    let opener = file_opener(args.force_share);
    if let LinkStatus::Unreadable(_) = tree::examine_with(path, &opener).status {
        vhdx::OpenOptions::new().without_parent().force_share(args.force_share).open_any(path).in_file(path)?;
    }
    let chain = tree::chain_with(path, &opener);
    let chain_len = chain.len();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut all = chain;
    all.extend(tree::scan_dir_with(&dir, &opener).map_err(io_failure(&dir, "listing the directory"))?);
    let forest = Forest::new(all);
    // The chain's nodes come first in the forest, in order (a chain never
    // repeats an image).
    let below: Vec<usize> = forest.subtree(0).into_iter().skip(1).collect();
    if args.json {
        let mut nodes: Vec<Value> = (0..chain_len).map(|i| forest.node_json(i)).collect();
        nodes.extend(below.iter().map(|&i| forest.node_json(i)));
        return print_json(&json!({
            "file": path.display().to_string(),
            "chain": (0..chain_len).map(|i| forest.nodes[i].path.display().to_string()).collect::<Vec<_>>(),
            "descendants": below.iter().map(|&i| forest.nodes[i].path.display().to_string()).collect::<Vec<_>>(),
            "nodes": nodes,
        }));
    }
    outln!("Chain of {}, leaf first:", path.display())?;
    let rows: Vec<[String; 4]> = (0..chain_len)
        .map(|i| {
            let n = &forest.nodes[i];
            let detail = status_mark(&n.status);
            [
                n.path.display().to_string(),
                n.disk_type.map(|t| t.to_string()).unwrap_or_default(),
                n.data_write_guid.map(|g| braced(&g)).unwrap_or_default(),
                if detail.is_empty() { n.status.label().to_string() } else { detail },
            ]
        })
        .collect();
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for r in &rows {
        outln!("  {:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3])?;
    }
    if below.is_empty() {
        outln!("Children in {}: none.", dir.display())?;
    } else {
        outln!("Children in {}:", dir.display())?;
        let mut out = String::new();
        let mut seen = vec![false; forest.nodes.len()];
        forest.draw(0, "  ", "", Some(&dir), &mut seen, &mut out);
        crate::emit(&out)?;
    }
    Ok(())
}

/// The JSON object of `vhdx merge --json`; `statuses` are the siblings'
/// link statuses after the merge.
fn merge_json(child: &Path, depth: u64, report: &MergeReport, statuses: &[LinkStatus]) -> Value {
    let action = if report.siblings_broken { "forced" } else { "preserved" };
    json!({
        "child": child.display().to_string(),
        "depth": depth,
        "target": report.target.display().to_string(),
        "merged": report.merged.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "bytes_merged": report.bytes_merged,
        "siblings": report.siblings.iter().zip(statuses).map(|(s, status)| json!({
            "path": s.path.display().to_string(),
            "parent": s.parent.display().to_string(),
            "action": action,
            "bytes_copied": s.bytes_copied,
            "status": status.label(),
        })).collect::<Vec<_>>(),
        "siblings_broken": statuses.iter().any(|s| *s != LinkStatus::Ok),
        "run": report.run.label(),
    })
}

/// `vhdx merge CHILD [--depth N] [--preserve-siblings | --force] [--search-dir DIR]… [--json]`.
pub fn merge(args: &MergeArgs) -> CliResult {
    let child = args.child.as_path();
    let siblings = if args.preserve_siblings {
        SiblingPolicy::Preserve
    } else if args.force {
        SiblingPolicy::Force
    } else {
        SiblingPolicy::Refuse
    };
    let mut search_dirs = args.search_dirs.clone();
    if child.is_relative() {
        // The chain of a relative CHILD may hold paths relative to the
        // current directory ("base.vhdx"), whose directory the library takes
        // as "" and cannot list; name it so siblings there are found.
        search_dirs.push(PathBuf::from("."));
    }
    let options = MergeOptions::default().depth(args.depth as usize).siblings(siblings).search_dirs(search_dirs);
    let bar = crate::convert::progress_bar(0);
    let report = vhdx::ops::merge::merge_with_progress(child, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report.in_file(child)?;
    // What became of each sibling, looked at rather than assumed: under
    // --force a merge that wrote nothing leaves them valid.
    let statuses: Vec<LinkStatus> = report.siblings.iter().map(|s| tree::examine(&s.path).status).collect();
    if args.json {
        return print_json(&merge_json(child, args.depth, &report, &statuses));
    }
    let target = report.target.display();
    let merged: Vec<String> = report.merged.iter().map(|p| p.display().to_string()).collect();
    match report.run {
        MergeRun::AlreadyDone => {
            outln!(
                "The merge of {} into {target} had already finished (an earlier run was interrupted after its last \
                 change); nothing was changed.",
                merged.join(" and ")
            )?;
            return Ok(());
        }
        MergeRun::Resumed => outln!("An earlier run of this merge was interrupted; this run finished it.")?,
        // Started, and any kind of run a later version adds: the summary.
        _ => {}
    }
    outln!(
        "Merged {} into {target}: {} written into {target}.",
        merged.join(" and "),
        human_exact(report.bytes_merged)
    )?;
    outln!("{} is now empty and presents the same bytes as before, through {target}.", child.display())?;
    for intermediate in &merged[1..] {
        outln!("{intermediate} is now empty too, and presents what {} presents.", child.display())?;
    }
    for (s, status) in report.siblings.iter().zip(&statuses) {
        let (path, parent) = (s.path.display(), s.parent.display());
        match (report.siblings_broken, status) {
            (false, LinkStatus::Ok) => outln!(
                "Sibling {path} (child of {parent}): preserved, {} copied into it; it presents the same bytes as before.",
                human_exact(s.bytes_copied)
            )?,
            (true, LinkStatus::Ok) => {
                outln!("Sibling {path} (child of {parent}): still valid (the merge changed nothing it reads).")?
            }
            (_, status) => outln!(
                "Sibling {path} (child of {parent}): broken{}; opening it now fails ({}).",
                if report.siblings_broken { " (--force)" } else { "" },
                status.label()
            )?,
        }
    }
    if report.siblings.is_empty() {
        outln!("No other image had one of the changed images as its parent.")?;
    }
    Ok(())
}

/// `vhdx set-parent CHILD PARENT [--ignore-id-mismatch]`.
pub fn set_parent(args: &SetParentArgs) -> CliResult {
    let (child, parent) = (args.child.as_path(), args.parent.as_path());
    // Whether the link matches decides what the change means for CHILD's content.
    let alone = |p: &Path| vhdx::OpenOptions::new().without_parent().open_any(p).in_file(p);
    let (c, p) = (alone(child)?, alone(parent)?);
    let id_name = match c.format() {
        vhdx::ImageFormat::Vhd => "unique ID",
        _ => "DataWriteGuid",
    };
    let (expected, found) = (c.parent_identity(), p.identity());
    let matched = c.links_to(found);
    drop((c, p));
    vhdx::ops::merge::set_parent(child, parent, args.ignore_id_mismatch).in_file(child)?;
    outln!("{} now links to {} ({id_name} {}).", child.display(), parent.display(), braced(&found))?;
    if !matched {
        outln!(
            "The parent is not the one {} was made from (it expected {}): {} now reads the parent's current bytes \
             under its own sectors, and has a new {id_name}, so its own children no longer link to it.",
            child.display(),
            expected.map(|g| braced(&g)).unwrap_or_else(|| format!("no {id_name}")),
            child.display()
        )?;
    }
    Ok(())
}
