//! Planning: the children's change sets, the pieces of their union and
//! who holds each, the bytes compared wherever several do, and what every
//! outsider and descendant will need.

use std::format;
use std::vec::Vec;

use super::{Conflict, Dependent, Image, ImageSet, MergedChild, SiblingMergePlan, SiblingMergeReport, CHUNK};
use crate::error::{Error, Result};
use crate::ops::merge::Sibling;
use crate::ops::ranges::{self, Ranges};
use crate::{Disk, Guid, OpenOptions};

/// Appends `(at, len)` to sorted ranges `r`, joining it to the last one when they touch.
fn push_range(r: &mut Ranges, at: u64, len: u64) {
    match r.last_mut() {
        Some((s, l)) if *s + *l == at => *l += len,
        _ => r.push((at, len)),
    }
}

/// The pieces of the union of `sets` with the (ascending) indices of the
/// sets holding each piece.
fn segments(sets: &[Ranges]) -> Vec<(u64, u64, Vec<usize>)> {
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        for &(s, l) in set {
            events.push((s, i, true));
            events.push((s + l, i, false));
        }
    }
    events.sort_unstable();
    let mut active = std::vec![false; sets.len()];
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while k < events.len() {
        let x = events[k].0;
        let holders: Vec<usize> = (0..sets.len()).filter(|&i| active[i]).collect();
        if !holders.is_empty() && x > at {
            out.push((at, x - at, holders));
        }
        while k < events.len() && events[k].0 == x {
            active[events[k].1] = events[k].2;
            k += 1;
        }
        at = x;
    }
    out
}

impl<'a> ImageSet<'a> {
    pub(super) fn open_parent(&self, writable: bool) -> Result<Disk> {
        self.parent.open_with(OpenOptions::new().writable(writable))
    }

    /// Child `i`, on the parent (which checks its link).
    pub(super) fn open_child(&self, i: usize) -> Result<Disk> {
        let d = self.children[i].open_with(OpenOptions::new().parent(self.open_parent(false)?))?;
        if d.parent_locator().is_none() {
            return Err(Error::invalid("not a differencing disk").in_file(self.children[i].path.display()));
        }
        Ok(d)
    }

    /// Child `i` alone, for its own sectors or its locator.
    pub(super) fn open_child_alone(&self, i: usize, writable: bool) -> Result<Disk> {
        self.children[i].open_with(OpenOptions::new().writable(writable).without_parent())
    }

    /// Dependent `image`, on `parent`.
    pub(super) fn open_dependent(image: &Image<'_>, parent: Disk, writable: bool) -> Result<Disk> {
        let d = image.open_with(OpenOptions::new().writable(writable).parent(parent))?;
        if d.parent_locator().is_none() {
            return Err(Error::invalid("not a differencing disk").in_file(image.path.display()));
        }
        Ok(d)
    }

    pub(super) fn new_guid(&mut self) -> Guid {
        match &mut self.guid_source {
            Some(source) => source(),
            None => Guid::new_v4(),
        }
    }
}

/// Refuses when `d` (at `path`) records an unfinished merge.
fn refuse_unfinished(d: &Disk, path: &std::path::Path) -> Result<()> {
    match crate::ops::merge::recover::unfinished(d) {
        Some(what) => Err(Error::Refused(format!(
            "it holds the record of an unfinished {what}: finish that merge first (run it again, or `vhdx check --repair` on \
             this image); nothing was changed"
        ))
        .in_file(path.display())),
        None => Ok(()),
    }
}

/// Whether `d`'s `parent_linkage` is `guid`.
fn links_to(d: &Disk, guid: Guid) -> bool {
    d.parent_locator().and_then(|l| l.parent_linkage()) == Some(guid)
}

/// Plans a sibling merge of `set` (see the [module documentation](super)):
/// opens every image read-only, checks each child's link to the parent,
/// reads the change sets and compares the children's bytes wherever they
/// overlap. `prefer` is the index of the child that wins conflicts.
/// Modifies nothing.
pub fn plan_image_set(set: ImageSet<'_>, prefer: Option<usize>) -> Result<SiblingMergePlan<'_>> {
    let n = set.children.len();
    if n == 0 {
        return Err(Error::invalid("a sibling merge needs at least one child"));
    }
    if prefer.is_some_and(|p| p >= n) || set.descendants.iter().any(|(i, _)| *i >= n) {
        return Err(Error::invalid("a child index is out of range"));
    }
    let (parent_guid, size, sector) = {
        let p = set.open_parent(false)?;
        refuse_unfinished(&p, &set.parent.path)?;
        (p.data_write_guid(), p.virtual_size(), p.logical_sector_size() as u64)
    };
    // No image of the set may be half-way through a merge of its own.
    let dependents = set.outsiders.iter().chain(set.descendants.iter().map(|(_, d)| d));
    for image in set.children.iter().chain(dependents) {
        refuse_unfinished(&image.open_with(OpenOptions::new().without_parent())?, &image.path)?;
    }

    // The children, each opened on the parent (which checks its link).
    let mut kids = Vec::with_capacity(n);
    let mut sets: Vec<Ranges> = Vec::with_capacity(n);
    for i in 0..n {
        let d = set.open_child(i)?;
        if d.virtual_size() != size {
            return Err(Error::invalid(format!("its virtual size is {} bytes, the parent's {size}", d.virtual_size()))
                .in_file(set.children[i].path.display()));
        }
        sets.push(d.change_set().map_err(|e| e.in_file(set.children[i].path.display()))?);
        kids.push(d);
    }
    let child_guids: Vec<Guid> = kids.iter().map(|d| d.data_write_guid()).collect();
    let child_linkage_current: Vec<bool> = kids.iter().map(|d| links_to(d, parent_guid)).collect();

    // Each piece of the union: its source, and its conflicts where several hold it.
    let mut runs: Vec<(u64, u64, usize)> = Vec::new();
    let mut merged_by = std::vec![0u64; n];
    let mut lost: Vec<Ranges> = std::vec![Vec::new(); n];
    let mut conflicts: Vec<Conflict> = Vec::new();
    for (start, len, holders) in segments(&sets) {
        let source = match prefer {
            Some(p) if holders.contains(&p) => p,
            _ => holders[0],
        };
        merged_by[source] += len;
        match runs.last_mut() {
            Some((s, l, c)) if *c == source && *s + *l == start => *l += len,
            _ => runs.push((start, len, source)),
        }
        if holders.len() < 2 {
            continue;
        }
        let winner = prefer.filter(|p| holders.contains(p));
        let w = holders.iter().position(|&h| h == source).expect("the source holds the piece");
        let mut bufs = std::vec![std::vec![0u8; CHUNK.min(len) as usize]; holders.len()];
        let mut found: Ranges = Vec::new();
        let mut at = start;
        while at < start + len {
            let m = CHUNK.min(start + len - at) as usize;
            for (k, &h) in holders.iter().enumerate() {
                kids[h].read_at(&mut bufs[k][..m], at).map_err(|e| e.in_file(set.children[h].path.display()))?;
            }
            for s in (0..m).step_by(sector as usize) {
                let r = s..s + sector as usize;
                if bufs.iter().all(|b| b[r.clone()] == bufs[0][r.clone()]) {
                    continue;
                }
                let offset = at + s as u64;
                push_range(&mut found, offset, sector);
                if winner.is_some() {
                    for (k, &h) in holders.iter().enumerate() {
                        if bufs[k][r.clone()] != bufs[w][r.clone()] {
                            push_range(&mut lost[h], offset, sector);
                        }
                    }
                }
            }
            at += m as u64;
        }
        conflicts.extend(found.into_iter().map(|(offset, length)| Conflict {
            offset,
            length,
            children: holders.clone(),
            winner,
        }));
    }
    drop(kids);

    let union: Ranges = ranges::normalize(runs.iter().map(|&(s, l, _)| (s, l)).collect());
    let changed: Vec<Ranges> = (0..n).map(|i| ranges::union(&ranges::difference(&union, &sets[i]), &lost[i])).collect();

    let mut preserved = Vec::new();
    let mut outsiders = Vec::new();
    for o in &set.outsiders {
        let d = ImageSet::open_dependent(o, set.open_parent(false)?, false)?;
        let own = d.change_set().map_err(|e| e.in_file(o.path.display()))?;
        let needed = ranges::difference(&union, &own);
        preserved.push(Sibling {
            path: o.path.clone(),
            parent: set.parent.path.clone(),
            bytes_copied: ranges::total(&needed),
        });
        outsiders.push(Dependent { guid: d.data_write_guid(), needed, linkage_current: links_to(&d, parent_guid) });
    }
    let mut descendants = Vec::new();
    for (i, image) in &set.descendants {
        let d = ImageSet::open_dependent(image, set.open_child(*i)?, false)?;
        let own = d.change_set().map_err(|e| e.in_file(image.path.display()))?;
        let needed = ranges::difference(&changed[*i], &own);
        preserved.push(Sibling {
            path: image.path.clone(),
            parent: set.children[*i].path.clone(),
            bytes_copied: ranges::total(&needed),
        });
        descendants.push(Dependent {
            guid: d.data_write_guid(),
            needed,
            linkage_current: links_to(&d, child_guids[*i]),
        });
    }

    let report = SiblingMergeReport {
        parent: set.parent.path.clone(),
        logical_sector_size: sector as u32,
        children: (0..n)
            .map(|i| MergedChild {
                path: set.children[i].path.clone(),
                bytes_held: ranges::total(&sets[i]),
                bytes_merged: merged_by[i],
                bytes_overridden: ranges::total(&lost[i]),
                view_changes: !changed[i].is_empty(),
            })
            .collect(),
        conflicts,
        preferred: prefer,
        bytes_merged: ranges::total(&union),
        preserved,
        dry_run: false,
        merged: false,
    };
    Ok(SiblingMergePlan {
        set,
        report,
        parent_guid,
        child_guids,
        child_linkage_current,
        runs,
        changed,
        outsiders,
        descendants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_name_every_holder_of_every_piece() {
        let sets: Vec<Ranges> = std::vec![std::vec![(0, 10), (20, 5)], std::vec![(5, 10)], std::vec![(8, 20)]];
        let segs = segments(&sets);
        let mut model = [[false; 3]; 40];
        for (i, s) in sets.iter().enumerate() {
            for &(a, l) in s {
                for x in a..a + l {
                    model[x as usize][i] = true;
                }
            }
        }
        let mut covered = [false; 40];
        for (a, l, holders) in &segs {
            for x in *a..*a + *l {
                covered[x as usize] = true;
                let expect: Vec<usize> = (0..3).filter(|&i| model[x as usize][i]).collect();
                assert_eq!(*holders, expect, "at {x}");
            }
        }
        for x in 0..40 {
            assert_eq!(covered[x], model[x].iter().any(|&h| h), "at {x}");
        }
    }
}
