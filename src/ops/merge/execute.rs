//! Carrying a planned merge out, step by step, each step durable before the
//! next (see the module documentation of [`super`] for the order and what
//! an interruption leaves). Every step can run again over its own result,
//! so an interrupted run is finished by running the remaining steps.

use alloc::string::ToString;
use std::path::Path;
use std::vec::Vec;

use super::plan::{still_sibling, Plan};
use super::record::{Phase, Record, ITEM};
use super::{MergeOptions, MergeReport, MergeRun, SiblingPolicy};
use crate::chain::locator_for;
use crate::error::{Error, Result};
use crate::format::locator::ParentLocator;
use crate::ops::link::{announce, closing, copy_runs, linked, links_exactly, nearest_holders, settle, take_guid};
use crate::ops::ranges;
use crate::{Disk, OpenOptions};

/// Where a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Start {
    /// From the beginning: record, announcements, siblings' copies.
    Announce,
    /// The target may hold part of the data: copy (again) into it.
    Copy,
    /// The target holds everything: empty and re-link.
    Empty,
}

/// Opens `path` alone (without its parent), writable or not.
pub(super) fn alone(options: &MergeOptions, path: &Path, writable: bool) -> Result<Disk> {
    options.files(OpenOptions::new().writable(writable).without_parent()).open(path)
}

/// Writes `record` into the child and, when `locator` gives one for the
/// child as it is, that locator: one commit, then closed.
pub(super) fn write_record(
    options: &MergeOptions,
    child: &Path,
    record: &Record,
    locator: impl FnOnce(&Disk) -> Result<Option<ParentLocator>>,
) -> Result<()> {
    let bytes = record.encode(child)?;
    let d = alone(options, child, true)?;
    closing(d, |d| {
        let loc = locator(d)?;
        d.image_mut().set_user_item(ITEM, Some(bytes))?;
        match loc {
            Some(loc) => d.image_mut().relink(loc, false),
            None => Ok(()),
        }
    })
    .map_err(|e| e.in_file(child.display()))
}

/// Runs `plan` from `start`; `progress(done, total)` in bytes copied.
pub(super) fn run(
    mut plan: Plan,
    options: &MergeOptions,
    start: Start,
    run: MergeRun,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeReport> {
    let n = plan.depth();
    let child = plan.paths[0].clone();
    let target = plan.target().to_path_buf();
    let in_file = |p: &Path| {
        let name = p.display().to_string();
        move |e: Error| e.in_file(&name)
    };
    let preserve = plan.policy == SiblingPolicy::Preserve;
    let mut total = 0u64;
    if start == Start::Announce {
        total = ranges::total(&plan.below[n]);
        if preserve && plan.changes() {
            total += plan.siblings.iter().map(|(_, k)| ranges::total(&plan.below[*k])).sum::<u64>();
        }
    }
    let done = core::cell::Cell::new(0u64);
    progress(0, total);
    let mut step = |k: u64, total: u64| {
        done.set(done.get() + k);
        progress(done.get().min(total), total);
    };

    // 1. The record, and the child told its parent's next DataWriteGuid.
    if start == Start::Announce {
        let (old, next) = (plan.old[1], plan.next[1]);
        write_record(options, &child, &plan.record, |d| {
            linked(d.parent_locator(), old, (next != old).then_some(next)).map(Some)
        })?;

        // 2. Every other image linking to a changed image is told the GUID it takes.
        if plan.changes() {
            for k in 1..n {
                let (old, next) = (plan.old[k + 1], plan.next[k + 1]);
                let d = alone(options, &plan.paths[k], true)?;
                if links_exactly(&d, old, Some(next)) {
                    d.close().map_err(in_file(&plan.paths[k]))?;
                    continue;
                }
                closing(d, |d| {
                    let loc = linked(d.parent_locator(), old, Some(next))?;
                    d.image_mut().relink(loc, false)
                })
                .map_err(in_file(&plan.paths[k]))?;
            }
            if preserve {
                for (s, k) in &mut plan.siblings {
                    let d = options.opener().writable(true).open(&s.path).map_err(in_file(&s.path))?;
                    let own = d.change_set().map_err(in_file(&s.path))?;
                    let needed = ranges::difference(&plan.below[*k], &own);
                    // The total counted all of the sibling's range; it
                    // receives only what it does not hold itself.
                    total -= ranges::total(&plan.below[*k]) - ranges::total(&needed);
                    s.bytes_copied = announce(d, &needed, plan.old[*k], plan.next[*k], &mut |b| step(b, total))
                        .map_err(in_file(&s.path))?;
                }
            }
            // The intermediates take their new GUIDs now, before anything
            // below them changes (what they present does not change yet): a
            // child linked to one by its old GUID only — a sibling under
            // --force — is refused from here on, instead of presenting the
            // target's changes through an intermediate that looks unchanged.
            for k in 1..n {
                let d = alone(options, &plan.paths[k], true)?;
                take_guid(d, plan.next[k]).map_err(in_file(&plan.paths[k]))?;
            }
        }
    }

    // 3. The target takes its announced DataWriteGuid and C0's view of the
    // union, read from C0..C(N-1) each alone (together they hold every sector
    // that changes, so the target is never read, nor opened twice).
    let mut bytes_merged = 0;
    if start <= Start::Copy {
        let sources: Vec<Disk> = plan.paths[..n].iter().map(|p| alone(options, p, false)).collect::<Result<_>>()?;
        let mut sets = Vec::with_capacity(n);
        for (d, p) in sources.iter().zip(&plan.paths) {
            sets.push(d.change_set().map_err(in_file(p))?);
        }
        let runs = nearest_holders(&sets);
        let copy_total = done.get() + runs.iter().map(|r| r.1).sum::<u64>();
        total = total.max(copy_total);
        let t = options.opener().writable(true).open(&target).map_err(in_file(&target))?;
        let (t_old, t_next) = (plan.old[n], plan.next[n]);
        let found = t.data_write_guid();
        if found != t_old && found != t_next {
            return Err(Error::Refused(std::format!(
                "its DataWriteGuid is {found}, neither the one the merge found ({t_old}) nor the one it announced \
                 ({t_next}): it was changed since, and the merge cannot go on safely"
            ))
            .in_file(target.display()));
        }
        bytes_merged = closing(t, |t| {
            if t_next != t_old {
                t.image_mut().plan_data_write_guid(t_next)?;
            }
            let copied = copy_runs(&sources, &runs, t, &mut |b| step(b, total))?;
            if copied > 0 && t.data_write_guid() != t_next {
                return Err(Error::invalid("the target did not take the announced DataWriteGuid"));
            }
            Ok(copied)
        })
        .map_err(in_file(&target))?;
        drop(sources);
        plan.record.phase = Phase::Copied;
        write_record(options, &child, &plan.record, |_| Ok(None))?;
    }

    // 4. The intermediates, emptied and linked to the target, top-down.
    for k in (1..n).rev() {
        let p = &plan.paths[k];
        let (old, next) = (plan.old[k], plan.next[k]);
        let d = alone(options, p, true)?;
        let finished = d.data_write_guid() == next
            && links_exactly(&d, plan.next[n], None)
            && d.change_set().map_err(in_file(p))?.is_empty();
        if finished {
            d.close().map_err(in_file(p))?;
            continue;
        }
        let loc = locator_for(p, &target, &plan.next[n])?;
        closing(d, |d| {
            if next != old {
                d.image_mut().plan_data_write_guid(next)?;
            }
            d.image_mut().empty_and_relink(Some(loc), next != old)
        })
        .map_err(in_file(p))?;
    }

    // 5. Preserved siblings linked to their parent's new DataWriteGuid only.
    if preserve {
        for (s, k) in &plan.siblings {
            if start > Start::Announce && !s.path.exists() {
                continue; // deleted since the interrupted run
            }
            let d = alone(options, &s.path, true)?;
            if still_sibling(&s.path, &d, &s.parent, plan.old[*k], plan.next[*k]) {
                settle(d, plan.next[*k]).map_err(in_file(&s.path))?;
            }
        }
    }

    // 6. The child, emptied while it still links to C1 (which presents the
    // same now), then linked to the target with the record marked done: one
    // small commit, after which a re-run finds the merge finished.
    let c0 = alone(options, &child, true)?;
    if c0.change_set().map_err(in_file(&child))?.is_empty() {
        c0.close().map_err(in_file(&child))?;
    } else {
        closing(c0, |d| d.image_mut().empty_and_relink(None, false)).map_err(in_file(&child))?;
    }
    plan.record.phase = Phase::Done;
    let loc = locator_for(&child, &target, &plan.next[n])?;
    write_record(options, &child, &plan.record, |_| Ok(Some(loc)))?;

    let changed = plan.changes();
    Ok(MergeReport {
        target,
        merged: plan.paths[..n].to_vec(),
        bytes_merged,
        siblings_broken: plan.policy == SiblingPolicy::Force && changed && !plan.siblings.is_empty(),
        siblings: plan.siblings.into_iter().map(|(s, _)| s).collect(),
        run,
    })
}
