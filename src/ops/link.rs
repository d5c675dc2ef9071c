//! The building blocks shared by the operations that change an image other
//! images link to (`merge`, `merge-siblings`): announcing the DataWriteGuid
//! a parent is going to take, preserving a dependent's view, and re-linking.
//!
//! A differencing disk names its parent's DataWriteGuid in
//! `parent_linkage`, and may name an alternative in `parent_linkage2`; a
//! parent matching either is accepted. Before a parent's content changes,
//! every image linking to it is told the GUID it will take
//! ([`announce`]), and the parent is made to take exactly that GUID
//! ([`Image::plan_data_write_guid`](crate::disk::Image::plan_data_write_guid)): the link then holds before, during and
//! after the change. Afterwards [`settle`] makes the new GUID the only one.

use std::vec::Vec;

use super::ranges::Ranges;
use crate::error::{Error, Result};
use crate::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, PARENT_LINKAGE2};
use crate::{Disk, Guid};

/// How much to copy at once.
const COPY_CHUNK: u64 = 4 << 20;

/// `loc` with `parent_linkage` = `linkage` and `parent_linkage2` = `next`
/// (removed when `None`).
pub(crate) fn linked(loc: Option<&ParentLocator>, linkage: Guid, next: Option<Guid>) -> Result<ParentLocator> {
    let mut loc = loc.cloned().ok_or_else(|| Error::invalid("not a differencing disk"))?;
    loc.set(PARENT_LINKAGE, braced_guid(&linkage));
    match next {
        Some(g) => loc.set(PARENT_LINKAGE2, braced_guid(&g)),
        None => loc.remove(PARENT_LINKAGE2),
    }
    Ok(loc)
}

/// Whether `d`'s locator names exactly `linkage` and `next` (see [`linked`]).
pub(crate) fn links_exactly(d: &Disk, linkage: Guid, next: Option<Guid>) -> bool {
    d.parent_locator().is_some_and(|l| l.parent_linkage() == Some(linkage) && l.parent_linkage2() == next)
}

/// Copies the parent's view of `runs` into `disk` itself; `step(n)` after each piece.
pub(crate) fn copy_from_parent(disk: &mut Disk, runs: &[(u64, u64)], step: &mut dyn FnMut(u64)) -> Result<u64> {
    let mut buf = std::vec![0u8; COPY_CHUNK as usize];
    let mut total = 0;
    for &(start, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_CHUNK) as usize;
            let parent = disk.parent().ok_or_else(|| Error::invalid("the disk has no parent open"))?;
            parent.read_at(&mut buf[..n], start + done)?;
            disk.write_at(&buf[..n], start + done)?;
            done += n as u64;
            total += n as u64;
            step(n as u64);
        }
    }
    Ok(total)
}

/// Copies `runs` (`(offset, length, source)`) from `sources[source]`, each
/// read on its own (the sectors of a run must be the source's own), into `to`.
pub(crate) fn copy_runs(
    sources: &[Disk],
    runs: &[(u64, u64, usize)],
    to: &mut Disk,
    step: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut buf = std::vec![0u8; COPY_CHUNK as usize];
    let mut total = 0;
    for &(start, len, source) in runs {
        let mut at = start;
        while at < start + len {
            let n = COPY_CHUNK.min(start + len - at) as usize;
            sources[source].read_at(&mut buf[..n], at)?;
            to.write_at(&buf[..n], at)?;
            at += n as u64;
            total += n as u64;
            step(n as u64);
        }
    }
    Ok(total)
}

/// The pieces of the union of `sets` with, for each, the first set (lowest
/// index) holding it, in order of offset: where a chain whose levels hold
/// `sets` (leaf first) reads each sector from.
pub(crate) fn nearest_holders(sets: &[Ranges]) -> Vec<(u64, u64, usize)> {
    let mut covered: Ranges = Vec::new();
    let mut out = Vec::new();
    for (k, set) in sets.iter().enumerate() {
        for (s, l) in super::ranges::difference(set, &covered) {
            out.push((s, l, k));
        }
        covered = super::ranges::union(&covered, set);
    }
    out.sort_unstable();
    out
}

/// Runs `f` on `d`, then closes it; on failure gives `d` up without a final
/// commit, as a crash would: a failed step leaves what a crash leaves, which
/// a re-run knows how to finish (a close after a failed write could commit a
/// block table naming space the write never filled).
pub(crate) fn closing<T>(mut d: Disk, f: impl FnOnce(&mut Disk) -> Result<T>) -> Result<T> {
    match f(&mut d).and_then(|v| d.flush().map(|()| v)) {
        Ok(v) => d.close().map(|()| v),
        Err(e) => {
            drop(d.abandon());
            Err(e)
        }
    }
}

/// Prepares a dependent (an image whose parent is about to change): copies
/// `needed` from its parent's current view, names `current` in
/// `parent_linkage` and announces `next` in `parent_linkage2`, and closes,
/// so all of it is durable. What it presents does not change, nor its
/// DataWriteGuid. Returns the bytes copied.
pub(crate) fn announce(d: Disk, needed: &Ranges, current: Guid, next: Guid, step: &mut dyn FnMut(u64)) -> Result<u64> {
    if needed.is_empty() && links_exactly(&d, current, Some(next)) {
        return d.close().map(|()| 0);
    }
    closing(d, |d| {
        let loc = linked(d.parent_locator(), current, Some(next))?;
        d.image_mut().keep_data_write_guid()?;
        let copied = if needed.is_empty() { 0 } else { copy_from_parent(d, needed, step)? };
        d.image_mut().set_parent_locator(loc)?;
        Ok(copied)
    })
}

/// After its parent took `guid`: `parent_linkage` = `guid`, no
/// `parent_linkage2`; metadata only, committed and closed.
pub(crate) fn settle(d: Disk, guid: Guid) -> Result<()> {
    if links_exactly(&d, guid, None) {
        return d.close();
    }
    closing(d, |d| {
        let loc = linked(d.parent_locator(), guid, None)?;
        d.image_mut().relink(loc, false)
    })
}

/// Makes `d` take the DataWriteGuid `guid` now, without changing what it
/// presents (yet), and closes it: children that link to it only by its
/// previous GUID are refused from here on, children told `guid` in advance
/// keep opening.
pub(crate) fn take_guid(d: Disk, guid: Guid) -> Result<()> {
    if d.data_write_guid() == guid {
        return d.close();
    }
    closing(d, |d| {
        d.image_mut().plan_data_write_guid(guid)?;
        d.image_mut().begin_data_change()
    })
}
