//! Planning a merge (read-only): the chain, its change sets, the siblings,
//! the DataWriteGuids every changed image will take — from the images, or,
//! for an interrupted merge past its point of no return, from its record.

use alloc::string::String;
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::record::{Level, Phase, Record};
use super::{canonical, children_through, directory_of, MergeOptions, Sibling, SiblingPolicy};
use crate::chain::FsResolver;
use crate::error::{Error, Result};
use crate::ops::ranges::{self, Ranges};
use crate::{Disk, Guid, OpenOptions};

/// A merge, planned. Index `k` runs over the chain `C0..CN`.
pub(super) struct Plan {
    /// `C0..CN`; `paths[0]` is the child as given.
    pub(super) paths: Vec<PathBuf>,
    /// Each image's DataWriteGuid before the merge.
    pub(super) old: Vec<Guid>,
    /// The DataWriteGuid each takes (`next[0]` = `old[0]`: the child keeps its
    /// own; all equal `old` when nothing changes content).
    pub(super) next: Vec<Guid>,
    /// Siblings, with the level they are children of.
    pub(super) siblings: Vec<(Sibling, usize)>,
    pub(super) policy: SiblingPolicy,
    /// `below[k]`: the union of the change sets of `C0..C(k-1)`, what changes
    /// in `Ck`'s view (empty when resumed from a record: no longer needed).
    pub(super) below: Vec<Ranges>,
    /// What is written into the child before anything else changes.
    pub(super) record: Record,
}

impl Plan {
    pub(super) fn depth(&self) -> usize {
        self.paths.len() - 1
    }

    pub(super) fn target(&self) -> &Path {
        &self.paths[self.depth()]
    }

    /// Whether any content changes (else nobody takes a new DataWriteGuid).
    pub(super) fn changes(&self) -> bool {
        self.next != self.old
    }
}

/// The locator's `parent_linkage2` of the image `d`, when it names neither
/// `current` nor `ours`: an announcement by another, unfinished operation.
fn foreign_announcement(d: &Disk, current: Guid, ours: Guid) -> Option<Guid> {
    let g = d.parent_locator()?.parent_linkage2()?;
    (g != current && g != ours).then_some(g)
}

fn refuse_foreign(path: &Path, parent: &Path, g: Guid) -> Error {
    Error::Refused(format!(
        "its locator announces {{{g}}} in parent_linkage2 as the next DataWriteGuid of {}, which has not taken it: \
         an operation that changes {} (a merge or merge-siblings) was interrupted. Finish it first by running it \
         again (`vhdx check --repair` on its merged child finishes or rolls back an interrupted merge); nothing was \
         changed",
        parent.display(),
        parent.display()
    ))
    .in_file(path.display())
}

fn refuse_record(path: &Path, r: &Record) -> Error {
    Error::Refused(format!(
        "it holds the record of an unfinished {}: finish that merge first (run that merge again, or `vhdx check --repair` \
         on this image); nothing was changed",
        r.describe()
    ))
    .in_file(path.display())
}

/// Plans a merge from the images: the chain from `child`'s locators, the
/// change sets, and siblings found in the directories. With `reuse` (a
/// merge interrupted before its target changed), the announced GUIDs are
/// taken again. Refuses, modifying nothing, whatever the merge must not do.
pub(super) fn from_images(child: &Path, options: &MergeOptions, reuse: Option<&Record>) -> Result<Plan> {
    let depth = options.depth.max(1);
    let leaf = options.opener().open(child)?;
    let paths: Vec<PathBuf> = leaf.chain_paths().into_iter().map(PathBuf::from).collect();
    if paths.len() <= depth {
        return Err(Error::invalid(format!(
            "{}: cannot merge to depth {depth}: the chain has only {} ancestor(s)",
            child.display(),
            paths.len() - 1
        )));
    }
    let mut paths = paths[..=depth].to_vec();
    paths[0] = child.to_path_buf();
    let mut old = Vec::new();
    let mut sizes = Vec::new();
    let mut change_sets: Vec<Ranges> = Vec::new();
    let mut level = Some(&leaf);
    while let Some(d) = level.filter(|_| old.len() <= depth) {
        old.push(d.data_write_guid());
        sizes.push(d.virtual_size());
        if change_sets.len() < depth {
            change_sets.push(d.change_set()?);
        }
        level = d.parent();
    }
    drop(leaf);
    // A child resized after it was made presents another size than its
    // parent: its data cannot go into the parent as it is.
    if let Some(k) = (1..=depth).find(|&k| sizes[k] != sizes[0]) {
        return Err(Error::invalid(format!(
            "{}: its virtual size ({} bytes) differs from that of {} ({} bytes), so it cannot be merged into it; \
             a standalone copy can be made with convert",
            child.display(),
            sizes[0],
            paths[k].display(),
            sizes[k]
        )));
    }
    let mut below: Vec<Ranges> = std::vec![Vec::new()];
    for cs in &change_sets {
        let next = ranges::union(below.last().expect("non-empty"), cs);
        below.push(next);
    }

    // The GUIDs to take: announced afresh, or those of the interrupted run.
    let next: Vec<Guid> = match reuse {
        Some(r) => {
            // The intermediates may have taken their new GUIDs already (the
            // last step before the target changes); the target has not.
            let same = r.depth() == depth
                && (1..=depth).all(|k| {
                    let l = &r.levels[k - 1];
                    let guid_ok = old[k] == l.old || (k < depth && old[k] == l.next);
                    canonical(&l.path) == canonical(&paths[k]) && guid_ok
                });
            if !same {
                return Err(Error::Refused(format!(
                    "{}: the images are no longer those of the unfinished merge it records ({}); run `vhdx check \
                     --repair` on it to roll that merge back; nothing was changed",
                    child.display(),
                    r.describe()
                )));
            }
            for (o, l) in old[1..].iter_mut().zip(&r.levels) {
                *o = l.old;
            }
            core::iter::once(old[0]).chain(r.levels.iter().map(|l| l.next)).collect()
        }
        None if below[depth].is_empty() => old.clone(),
        None => core::iter::once(old[0]).chain((1..=depth).map(|_| Guid::new_v4())).collect(),
    };

    // Siblings of every changed image (C1..CN).
    let chain_canon: Vec<PathBuf> = paths.iter().map(|p| canonical(p)).collect();
    let mut dirs: Vec<PathBuf> = std::vec![directory_of(&paths[depth]), directory_of(&paths[0])];
    dirs.extend(options.search_dirs.iter().cloned());
    let opener = options.file_opener.clone().unwrap_or_default();
    let mut siblings: Vec<(Sibling, usize)> = Vec::new();
    for k in 1..=depth {
        for s in children_through(&opener, &paths[k], &[old[k], next[k]], &dirs, &chain_canon) {
            siblings.push((Sibling { path: s, parent: paths[k].clone(), bytes_copied: 0 }, k));
        }
    }
    if !siblings.is_empty() && options.siblings == SiblingPolicy::Refuse {
        let names: Vec<String> =
            siblings.iter().map(|(s, _)| format!("{} (child of {})", s.path.display(), s.parent.display())).collect();
        return Err(Error::Refused(format!(
            "merging {} into {} would change the parent of {} other image(s), which would then be invalid: {}. \
             Use --preserve-siblings to keep them valid, or --force to break them",
            child.display(),
            paths[depth].display(),
            names.len(),
            names.join(", ")
        )));
    }

    // Nothing else may be half-way through changing these images.
    let alone = |p: &Path| options.files(OpenOptions::new().without_parent()).open(p);
    for k in 0..=depth {
        let d = alone(&paths[k])?;
        if k > 0 {
            if let Some(r) = Record::read(&d).map_err(|e| e.in_file(paths[k].display()))?.filter(Record::active) {
                return Err(refuse_record(&paths[k], &r));
            }
        }
        if k < depth {
            if let Some(g) = foreign_announcement(&d, old[k + 1], next[k + 1]) {
                return Err(refuse_foreign(&paths[k], &paths[k + 1], g));
            }
        }
    }
    for (s, k) in &siblings {
        let d = alone(&s.path)?;
        if let Some(r) = Record::read(&d).map_err(|e| e.in_file(s.path.display()))?.filter(Record::active) {
            return Err(refuse_record(&s.path, &r));
        }
        if let Some(g) = foreign_announcement(&d, old[*k], next[*k]) {
            return Err(refuse_foreign(&s.path, &s.parent, g));
        }
        // A sibling of another size cannot receive the merged view.
        if options.siblings == SiblingPolicy::Preserve && d.virtual_size() != sizes[*k] {
            return Err(Error::invalid(format!(
                "{}: its virtual size ({} bytes) differs from its parent {}'s ({} bytes), so it cannot be \
                 preserved; nothing was changed",
                s.path.display(),
                d.virtual_size(),
                s.parent.display(),
                sizes[*k]
            )));
        }
    }

    let record = Record {
        phase: Phase::Prepared,
        policy: options.siblings,
        child_guid: old[0],
        levels: (1..=depth).map(|k| Level { path: chain_canon[k].clone(), old: old[k], next: next[k] }).collect(),
        siblings: siblings.iter().map(|(s, k)| (*k, canonical(&s.path))).collect(),
    };
    // Refused now, rather than once something changed, if it cannot be written.
    record.encode(child).map_err(|e| e.in_file(child.display()))?;
    Ok(Plan { paths, old, next, siblings, policy: options.siblings, below, record })
}

/// Whether `d`'s locator leads to one of `parents` (compared as files).
fn leads_to(child: &Path, d: &Disk, parents: &[&Path]) -> bool {
    let Some(loc) = d.parent_locator() else { return false };
    let want: Vec<PathBuf> = parents.iter().map(|p| canonical(p)).collect();
    FsResolver::candidates(Some(child), loc).iter().any(|c| want.contains(&canonical(c)))
}

/// Plans the rest of a merge whose target has taken its announced
/// DataWriteGuid, from its record `r` (found in `child`). The record is
/// checked against the images — each level must be where the locators lead
/// and carry its old or its announced DataWriteGuid — so a record can only
/// steer the merge through the tree the images themselves describe.
pub(super) fn from_record(child: &Path, r: Record, options: &MergeOptions) -> Result<Plan> {
    let depth = r.depth();
    let mut paths = std::vec![child.to_path_buf()];
    paths.extend(r.levels.iter().map(|l| l.path.clone()));
    let mut old = std::vec![r.child_guid];
    old.extend(r.levels.iter().map(|l| l.old));
    let mut next = std::vec![r.child_guid];
    next.extend(r.levels.iter().map(|l| l.next));
    if let Some(dirs) = &options.confine_to {
        let allowed: Vec<PathBuf> = dirs.iter().map(|d| canonical(d)).collect();
        let recorded = paths[1..].iter().chain(r.siblings.iter().map(|(_, p)| p));
        for p in recorded {
            if !allowed.iter().any(|d| canonical(p).starts_with(d)) {
                return Err(Error::Refused(format!(
                    "the unfinished merge it records names {}, outside the allowed directories",
                    p.display()
                ))
                .in_file(child.display()));
            }
        }
    }
    let target = paths[depth].clone();
    for k in 0..depth {
        let d = options.files(OpenOptions::new().without_parent()).open(&paths[k])?;
        let guid = d.data_write_guid();
        let links = leads_to(&paths[k], &d, &[&paths[k + 1], &target]);
        if (k > 0 && guid != old[k] && guid != next[k]) || !links {
            return Err(Error::Refused(format!(
                "{} is not where the unfinished merge recorded in {} left it (DataWriteGuid {guid}{}): it was \
                 changed since, and the merge cannot be finished safely",
                paths[k].display(),
                child.display(),
                if links { "" } else { ", and its locator leads elsewhere" }
            )));
        }
    }
    let siblings = r
        .siblings
        .iter()
        .map(|(k, p)| (Sibling { path: p.clone(), parent: paths[*k].clone(), bytes_copied: 0 }, *k))
        .collect();
    Ok(Plan { paths, old, next, siblings, policy: r.policy, below: Vec::new(), record: r })
}

/// Whether the sibling `d` at `path` still is a child of `parent` as the
/// record says (a sibling deleted or re-linked since is left alone).
pub(super) fn still_sibling(path: &Path, d: &Disk, parent: &Path, old: Guid, next: Guid) -> bool {
    let names = |g: Option<Guid>| g.is_some_and(|g| g == old || g == next);
    d.parent_locator().is_some_and(|l| names(l.parent_linkage()) || names(l.parent_linkage2()))
        && leads_to(path, d, &[parent])
}
