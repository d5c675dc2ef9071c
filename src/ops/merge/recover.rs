//! Interrupted merges: finding one, rolling it back or finishing it, and
//! what `check` says about an image an unfinished operation left.

use alloc::string::String;
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::execute::alone;
use super::plan::still_sibling;
use super::record::{Record, ITEM};
use super::{merge, MergeOptions, MergeReport, MergeRun, Sibling, SiblingPolicy};
use crate::chain::FsResolver;
use crate::error::{Error, Result};
use crate::io::FileOpener;
use crate::ops::link::{closing, linked, links_exactly, settle, take_guid};
use crate::Disk;

/// An unfinished merge, as its child records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedMerge {
    /// The child merged.
    pub child: PathBuf,
    /// The image merged into.
    pub target: PathBuf,
    /// The images being merged, child first.
    pub merged: Vec<PathBuf>,
    /// The depth the merge was run with.
    pub depth: usize,
    /// The sibling policy it was run with.
    pub siblings: SiblingPolicy,
    /// The siblings it found.
    pub sibling_paths: Vec<PathBuf>,
    /// Whether the target took its new DataWriteGuid: from then on the merge
    /// can only be finished; before, it can be rolled back.
    pub target_changed: bool,
    /// One sentence naming it.
    pub description: String,
}

/// What [`recover_merge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// The merge was finished.
    Finished(MergeReport),
    /// The merge was undone: its target had not changed; the announcements
    /// and the record are gone, and every image presents what it presented
    /// before the merge began.
    RolledBack(InterruptedMerge),
}

/// The target's state for the record `r`.
pub(super) enum TargetState {
    /// It still has its old DataWriteGuid: nothing changed content yet.
    Unchanged,
    /// It took its announced DataWriteGuid (or nothing changes at all).
    Changed,
}

pub(super) fn target_state(r: &Record, options: &MergeOptions) -> Result<TargetState> {
    let t = r.target();
    let found = alone(options, &t.path, false)?.data_write_guid();
    if found == t.next {
        Ok(TargetState::Changed)
    } else if found == t.old {
        Ok(TargetState::Unchanged)
    } else {
        Err(Error::Refused(format!(
            "its DataWriteGuid is {found}, neither the one an unfinished merge found ({}) nor the one it announced \
             ({}): it was changed since, and the merge cannot be finished or undone safely",
            t.old, t.next
        ))
        .in_file(t.path.display()))
    }
}

/// Whether `c0`'s record `r` describes a merge that finished with `c0` as it is.
pub(super) fn finished(c0: &Disk, r: &Record) -> Result<bool> {
    Ok(!r.active()
        && c0.data_write_guid() == r.child_guid
        && links_exactly(c0, r.target().next, None)
        && c0.change_set()?.is_empty())
}

/// The report of a merge found finished.
pub(super) fn finished_report(child: &Path, r: Record) -> MergeReport {
    let depth = r.depth();
    let mut merged = std::vec![child.to_path_buf()];
    merged.extend(r.levels[..depth - 1].iter().map(|l| l.path.clone()));
    let changed = r.levels.iter().any(|l| l.next != l.old);
    MergeReport {
        target: r.target().path.clone(),
        merged,
        bytes_merged: 0,
        siblings_broken: r.policy == SiblingPolicy::Force && changed && !r.siblings.is_empty(),
        siblings: r
            .siblings
            .iter()
            .map(|(k, p)| Sibling { path: p.clone(), parent: r.levels[k - 1].path.clone(), bytes_copied: 0 })
            .collect(),
        run: MergeRun::AlreadyDone,
    }
}

fn describe(child: &Path, r: &Record, target_changed: bool) -> InterruptedMerge {
    let mut merged = std::vec![child.to_path_buf()];
    merged.extend(r.levels[..r.depth() - 1].iter().map(|l| l.path.clone()));
    InterruptedMerge {
        child: child.to_path_buf(),
        target: r.target().path.clone(),
        merged,
        depth: r.depth(),
        siblings: r.policy,
        sibling_paths: r.siblings.iter().map(|(_, p)| p.clone()).collect(),
        target_changed,
        description: r.describe(),
    }
}

/// The unfinished merge `child` records, if any (files opened through
/// `options.file_opener`; the other options play no part).
pub fn interrupted_merge(child: &Path, options: &MergeOptions) -> Result<Option<InterruptedMerge>> {
    let c0 = alone(options, child, false)?;
    let Some(r) = Record::read(&c0).map_err(|e| e.in_file(child.display()))?.filter(Record::active) else {
        return Ok(None);
    };
    drop(c0);
    let changed = matches!(target_state(&r, options)?, TargetState::Changed);
    Ok(Some(describe(child, &r, changed)))
}

/// Ends the unfinished merge `child` records, if any: rolls it back while
/// its target has not changed, and finishes it otherwise (what `vhdx check
/// --repair` does). `options.file_opener` and `options.confine_to` apply;
/// the depth and policy are the record's.
///
/// ```no_run
/// use vhdx::ops::merge::{recover_merge, MergeOptions, Recovery};
/// match recover_merge("child.vhdx".as_ref(), &MergeOptions::default())? {
///     Some(Recovery::Finished(r)) => println!("finished the merge into {}", r.target.display()),
///     Some(Recovery::RolledBack(m)) => println!("rolled back {}", m.description),
///     Some(other) => println!("recovered: {other:?}"),
///     None => println!("no unfinished merge"),
/// }
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn recover_merge(child: &Path, options: &MergeOptions) -> Result<Option<Recovery>> {
    let c0 = alone(options, child, false)?;
    let Some(r) = Record::read(&c0).map_err(|e| e.in_file(child.display()))?.filter(Record::active) else {
        return Ok(None);
    };
    drop(c0);
    match target_state(&r, options)? {
        TargetState::Changed => {
            let opts = MergeOptions { depth: r.depth(), siblings: r.policy, ..options.clone() };
            merge(child, &opts).map(|report| Some(Recovery::Finished(report)))
        }
        TargetState::Unchanged => {
            rollback(child, &r, options)?;
            Ok(Some(Recovery::RolledBack(describe(child, &r, false))))
        }
    }
}

/// Removes every announcement of `r` (a merge whose target has not
/// changed), then the record itself, so that an interruption of this leaves
/// a record to roll back again.
fn rollback(child: &Path, r: &Record, options: &MergeOptions) -> Result<()> {
    let n = r.depth();
    let level = |k: usize| &r.levels[k - 1];
    for k in 1..n {
        let (path, l) = (&level(k).path, level(k));
        let d = alone(options, path, true)?;
        let guid = d.data_write_guid();
        if guid != l.old && guid != l.next {
            return Err(Error::Refused(format!(
                "it changed since the unfinished merge recorded in {} began, so the merge cannot be rolled back",
                child.display()
            ))
            .in_file(path.display()));
        }
        // Its content has not changed (the target has not): its old GUID
        // names it again, so children linked by that one alone open again.
        take_guid(d, l.old).map_err(|e| e.in_file(path.display()))?;
        let d = alone(options, path, true)?;
        undo_announcement(d, level(k + 1).old, level(k + 1).next).map_err(|e| e.in_file(path.display()))?;
    }
    for (k, p) in &r.siblings {
        if !p.exists() {
            continue;
        }
        let d = alone(options, p, true)?;
        if still_sibling(p, &d, &level(*k).path, level(*k).old, level(*k).next) {
            undo_announcement(d, level(*k).old, level(*k).next).map_err(|e| e.in_file(p.display()))?;
        }
    }
    let d = alone(options, child, true)?;
    let old = level(1).old;
    closing(d, |d| {
        d.image_mut().set_user_item(ITEM, None)?;
        let loc = linked(d.parent_locator(), old, None)?;
        d.image_mut().relink(loc, false)
    })
    .map_err(|e| e.in_file(child.display()))
}

/// Links `d` to `old` only, when it announces `next`.
fn undo_announcement(d: Disk, old: crate::Guid, next: crate::Guid) -> Result<()> {
    if d.parent_locator().and_then(|l| l.parent_linkage2()) == Some(next) {
        settle(d, old)
    } else {
        d.close()
    }
}

/// The description of the unfinished merge `d` records, if any (an
/// unreadable record counts as one: it cannot be known finished).
pub(crate) fn unfinished(d: &Disk) -> Option<String> {
    match Record::read(d) {
        Ok(Some(r)) if r.active() => Some(r.describe()),
        Ok(_) => None,
        Err(e) => Some(format!("merge whose record cannot be read ({e})")),
    }
}

// ------------------------------------------------------------------ check

/// What `check` says about an image an unfinished operation left: its
/// merge record, a `parent_linkage2`.
pub(crate) fn image_notes(d: &Disk) -> Vec<String> {
    let mut notes = Vec::new();
    match Record::read(d) {
        Ok(Some(r)) if r.active() => notes.push(format!(
            "unfinished merge: this image holds the record of an unfinished {}. Run the same merge again to finish it, or `vhdx \
             check --repair` on this image: it rolls the merge back while the target is unchanged, and finishes it \
             otherwise",
            r.describe()
        )),
        Ok(_) => {}
        Err(e) => notes.push(format!("its merge record (an unfinished merge may have left it) cannot be read: {e}")),
    }
    if let Some(g) = d.parent_locator().and_then(|l| l.parent_linkage2()) {
        notes.push(format!(
            "its parent locator's parent_linkage2 names {{{g}}}: the DataWriteGuid an operation that changes its \
             parent (a merge or merge-siblings) announced the parent would take; the link holds either way"
        ));
    }
    notes
}

/// The parent `d` (the image at `path`) links to, opened alone: its path and DataWriteGuid.
fn parent_of(path: &Path, d: &Disk, opener: &FileOpener) -> Option<(PathBuf, crate::Guid)> {
    let loc = d.parent_locator()?;
    let wanted = [loc.parent_linkage(), loc.parent_linkage2()];
    let mut first = None;
    for c in FsResolver::candidates(Some(path), loc) {
        let Ok(p) = crate::OpenOptions::new().without_parent().file_opener(opener.clone()).open(&c) else { continue };
        let g = p.data_write_guid();
        if wanted.contains(&Some(g)) {
            return Some((c, g));
        }
        first.get_or_insert((c, g));
    }
    first
}

/// What `check` adds, knowing the file's path: how far the operation got.
/// Files are opened through `opener`.
pub(crate) fn file_notes(path: &Path, opener: &FileOpener) -> Vec<String> {
    let mut notes = Vec::new();
    let Ok(d) = crate::OpenOptions::new().without_parent().file_opener(opener.clone()).open(path) else {
        return notes;
    };
    if let Ok(Some(r)) = Record::read(&d) {
        if r.active() {
            let options = MergeOptions { file_opener: Some(opener.clone()), ..Default::default() };
            notes.push(match target_state(&r, &options) {
                Ok(TargetState::Changed) => format!(
                    "the merge's target {} has taken its new DataWriteGuid: the merge can only be finished",
                    r.target().path.display()
                ),
                Ok(TargetState::Unchanged) => format!(
                    "the merge's target {} has not changed yet: `check --repair` rolls the merge back",
                    r.target().path.display()
                ),
                Err(e) => format!("the merge cannot go on: {e}"),
            });
        }
    }
    let linkage2 = d.parent_locator().and_then(|l| l.parent_linkage2());
    if let (Some(g), Some((parent, found))) = (linkage2, parent_of(path, &d, opener)) {
        notes.push(if found == g {
            format!(
                "its parent {} has taken that DataWriteGuid: the operation did not get to re-link this image; \
                 `check --repair` links it to that GUID only",
                parent.display()
            )
        } else {
            format!(
                "its parent {} has not taken that DataWriteGuid (it has {{{found}}}): an operation that is to change \
                 it has not finished; run it again to finish it",
                parent.display()
            )
        });
    }
    notes
}

/// What `check --repair` does beyond the image itself: ends an unfinished
/// merge the image records, or links an image whose parent took the
/// DataWriteGuid its `parent_linkage2` announced to that GUID only.
pub(crate) fn repair_file(path: &Path) -> Result<Vec<String>> {
    let options = MergeOptions::default();
    match recover_merge(path, &options)? {
        Some(Recovery::Finished(report)) => {
            return Ok(std::vec![format!(
                "finished the unfinished merge into {}: {} bytes copied into it now; {} merged image(s) emptied and \
                 linked to it",
                report.target.display(),
                report.bytes_merged,
                report.merged.len()
            )])
        }
        Some(Recovery::RolledBack(m)) => {
            return Ok(std::vec![format!(
                "rolled back the {} (its target had not changed): every image presents what it did before",
                m.description
            )])
        }
        None => {}
    }
    let d = crate::OpenOptions::new().without_parent().open(path)?;
    let linkage2 = d.parent_locator().and_then(|l| l.parent_linkage2());
    let Some((g, (parent, found))) = linkage2.zip(parent_of(path, &d, &FileOpener::default())) else {
        return Ok(Vec::new());
    };
    drop(d);
    if found != g {
        return Ok(Vec::new());
    }
    let d = crate::OpenOptions::new().writable(true).without_parent().open(path)?;
    settle(d, g).map_err(|e| e.in_file(path.display()))?;
    Ok(std::vec![format!(
        "linked it to its parent {}'s DataWriteGuid {{{g}}} only, as an unfinished operation had announced",
        parent.display()
    )])
}

impl core::fmt::Display for InterruptedMerge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.description)?;
        if !self.target_changed {
            f.write_str(" (the target has not changed yet)")?;
        }
        Ok(())
    }
}
