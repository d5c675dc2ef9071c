//! Writing several sibling differencing disks back into their common parent
//! in one operation, with the conflicts between them found first.
//!
//! This is the write-back of profile containers such as FSLogix's
//! (ProfileType 3): each session writes its own differencing disk on one
//! shared profile disk, and at logoff every session's changes should reach
//! the profile disk. Merging one child after the other cannot do it: the
//! first merge changes the parent under the second child.
//!
//! ## What it does
//!
//! The parent `P` has the children `C1..Cn` to merge, with change sets
//! `S1..Sn` ([`Disk::change_set`]); `W` is their union, the sectors written
//! into `P`. A sector held by several children is a *conflict* when their
//! bytes differ there; an overlap with equal bytes is not. Conflicts are
//! found, sector by sector, before anything is modified. When there is one
//! and no child is preferred, nothing is modified and the merge is refused
//! ([`Error::Refused`]); the plan's report lists every conflicting range
//! with the children holding it ([`Conflict`]). With a preferred child, its
//! bytes win wherever it takes part in a conflict; a conflict between other
//! children only stays unresolved, and refuses the merge all the same.
//!
//! Afterwards `P` presents its old content with every child's changes
//! (the winner's bytes in conflicts), and every merged child is empty,
//! linked to `P`, and presents exactly that merged view. A child whose view
//! changed (another child changed something, or it lost a conflict) gets a
//! new DataWriteGuid.
//!
//! Nobody else's content changes:
//!
//! - *outsiders*, the other children of `P`, first receive `P`'s current data
//!   for every sector of `W` they do not hold themselves, exactly as `merge
//!   --preserve-siblings` does for siblings;
//! - *descendants*, children of a merged child whose view changes, receive
//!   that child's current view of every sector where it changes and that they
//!   do not hold.
//!
//! Both keep their DataWriteGuid (their own children stay valid) and are
//! re-linked to their parent's new DataWriteGuid.
//!
//! ## Order, and what an interruption leaves
//!
//! Before the parent changes, every image that links to it is told the
//! DataWriteGuid it is going to take, in its locator's `parent_linkage2`,
//! which the format accepts as an alternative to `parent_linkage`. So every
//! image opens at every point, and no image ever presents a sector that is
//! neither its old nor its new content:
//!
//! 1. **Plan** (read-only): open everything, check each child's link to `P`,
//!    read the change sets, compare overlapping sectors. A dry run stops here.
//! 2. **Prepare**, one image at a time, each flushed before the next: every
//!    outsider receives `P`'s data for `W` minus what it holds and
//!    `parent_linkage2` = `P`'s future DataWriteGuid; every merged child gets
//!    that `parent_linkage2` too (metadata only); every descendant receives
//!    its parent's view of what changes there, and `parent_linkage2` = that
//!    child's future DataWriteGuid. *Interrupted:* every image presents
//!    exactly what it did before (what was copied equals what it hid).
//! 3. **Parent**: `P` takes its announced DataWriteGuid and receives the
//!    data, read from each sector's source child; flushed, closed.
//!    *Interrupted:* `P` presents, sector by sector, its old or its new
//!    content; outsiders and descendants present exactly what they did
//!    (they hold every sector that changes under them); a merged child
//!    presents its own sectors (as before) and `P`'s elsewhere, so again each
//!    sector old or new.
//! 4. **Children**: each is emptied and linked to `P`'s new DataWriteGuid
//!    (locator first, then the cleared block table, one log commit), the
//!    children that lost a conflict first. *Interrupted:* `P` presents the
//!    merged view; a child not yet emptied holds bytes equal to `P`'s
//!    everywhere except where it lost a conflict, so it presents the merged
//!    view except in those sectors, which still show its own old bytes.
//! 5. **Re-link**: outsiders and descendants get `parent_linkage` = their
//!    parent's new DataWriteGuid, and `parent_linkage2` is removed.
//!    *Interrupted:* every image presents the merged view or, for outsiders
//!    and descendants, exactly what it did; a remaining `parent_linkage2`
//!    is only an unneeded alternative.
//!
//! After an interruption, running the same merge again (with the same
//! preferred child) completes it: children not yet emptied still hold their
//! data, the losers of conflicts are emptied before the winner, and
//! outsiders already hold what they need.
//!
//! ## Images anywhere
//!
//! [`merge_siblings`] works on files and finds outsiders and descendants in
//! the directories of the parent and the children (and any extra ones).
//! [`plan_image_set`] does the same on images that live anywhere a [`Disk`]
//! can be opened from (the caller lists the outsiders and descendants); the
//! crash tests use it on fault-injecting storage.

use alloc::string::{String, ToString};
use std::boxed::Box;
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::merge::{canonical, children_of, copy_from_parent, directory_of, Sibling};
use super::ranges::{self, Ranges};
use crate::error::{Error, Result};
use crate::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, PARENT_LINKAGE2};
use crate::{Disk, Guid, GuidSource, OpenOptions};

/// Options of [`merge_siblings`].
#[derive(Debug, Clone, Default)]
pub struct SiblingMergeOptions {
    /// The child whose bytes win in conflicts it takes part in (one of the
    /// children, compared as files). `None`: any conflict refuses the merge.
    pub prefer: Option<PathBuf>,
    /// Plan and report only; modify nothing.
    pub dry_run: bool,
    /// More directories to search for outsiders and descendants (besides
    /// the directories of the parent and of each child).
    pub search_dirs: Vec<PathBuf>,
    /// When set, the parent of every image is resolved only inside these
    /// directories (see [`OpenOptions::parent_search_dirs`]): for images
    /// from untrusted sources.
    pub confine_to: Option<Vec<PathBuf>>,
}

/// Sectors held by several children whose bytes there are not all equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Virtual byte offset of the first sector.
    pub offset: u64,
    /// Length in bytes: whole logical sectors.
    pub length: u64,
    /// Every child holding these sectors, as indices into the children given
    /// (at least two, ascending).
    pub children: Vec<usize>,
    /// The preferred child, when it is among them: its bytes win. `None`:
    /// unresolved, so the merge is refused.
    pub winner: Option<usize>,
}

/// What a sibling merge does (or did) with one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedChild {
    /// The child (for images given as [`Image`]s: the name given).
    pub path: PathBuf,
    /// Bytes of its change set.
    pub bytes_held: u64,
    /// Bytes written into the parent from this child. A sector several
    /// children hold with equal bytes counts once, for the preferred child
    /// if it is among them, else for the first of them in the order given.
    pub bytes_merged: u64,
    /// Bytes of its change set that lost a conflict to the preferred child.
    pub bytes_overridden: u64,
    /// Whether what it presents changes (the merged view differs from its
    /// own); it then gets a new DataWriteGuid.
    pub view_changes: bool,
}

/// What [`merge_siblings`] did, or in a dry run or a plan, would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiblingMergeReport {
    /// The parent merged into.
    pub parent: PathBuf,
    /// The parent's logical sector size: conflicts and change sets are
    /// whole sectors of it.
    pub logical_sector_size: u32,
    /// The merged children, in the order given.
    pub children: Vec<MergedChild>,
    /// Every conflicting range, in order of offset.
    pub conflicts: Vec<Conflict>,
    /// The preferred child, as an index into `children`.
    pub preferred: Option<usize>,
    /// Bytes written into the parent: the union of the change sets.
    pub bytes_merged: u64,
    /// Outsiders (children of the parent) and descendants (children of a
    /// merged child), each with the bytes copied into it to keep its view.
    pub preserved: Vec<Sibling>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Whether the merge was carried out (false for a plan or a dry run).
    pub merged: bool,
}

impl SiblingMergeReport {
    /// The conflicts without a winner: while there are any, the merge is refused.
    pub fn unresolved(&self) -> impl Iterator<Item = &Conflict> {
        self.conflicts.iter().filter(|c| c.winner.is_none())
    }

    /// Bytes in conflict, resolved or not.
    pub fn conflicting_bytes(&self) -> u64 {
        self.conflicts.iter().map(|c| c.length).sum()
    }
}

/// Opens an image with the options given (see [`Image`]).
pub type OpenFn<'a> = Box<dyn Fn(OpenOptions) -> Result<Disk> + 'a>;

/// One image of an [`ImageSet`]: a name for reports and messages, and how to
/// open it.
///
/// `open` receives the options to open with: read-only or writable, and for
/// a differencing image either its parent (`OpenOptions::parent`) or
/// `OpenOptions::without_parent`; it may add a GUID source. The parent of
/// the set is opened with plain options, so its own parent, if it has one,
/// is resolved as `open` sees fit.
pub struct Image<'a> {
    /// The name of the image (its path, for files).
    pub path: PathBuf,
    /// Opens the image.
    pub open: OpenFn<'a>,
}

impl<'a> Image<'a> {
    /// An image called `path`, opened by `open`.
    pub fn new(path: impl Into<PathBuf>, open: impl Fn(OpenOptions) -> Result<Disk> + 'a) -> Image<'a> {
        Image { path: path.into(), open: Box::new(open) }
    }

    fn open_with(&self, options: OpenOptions) -> Result<Disk> {
        (self.open)(options).map_err(|e| e.in_file(self.path.display()))
    }
}

/// The images of a sibling merge, wherever they live.
pub struct ImageSet<'a> {
    /// The parent.
    pub parent: Image<'a>,
    /// The children to merge into it (at least one).
    pub children: Vec<Image<'a>>,
    /// Other children of the parent: preserved.
    pub outsiders: Vec<Image<'a>>,
    /// Children of merged children, with the index of their parent in
    /// `children`: preserved.
    pub descendants: Vec<(usize, Image<'a>)>,
    /// Where the DataWriteGuids announced in advance come from (random when `None`).
    pub guid_source: Option<GuidSource>,
}

/// An image that links to a changing image, and what it needs.
struct Dependent {
    /// Its DataWriteGuid when planned.
    guid: Guid,
    /// What to copy into it from its parent's current view.
    needed: Ranges,
    /// Whether its `parent_linkage` already names its parent's current DataWriteGuid.
    linkage_current: bool,
}

/// A sibling merge, planned: conflicts found, nothing modified yet. Its
/// [`report`](SiblingMergePlan::report) says what [`execute`](SiblingMergePlan::execute) will do.
pub struct SiblingMergePlan<'a> {
    set: ImageSet<'a>,
    report: SiblingMergeReport,
    parent_guid: Guid,
    child_guids: Vec<Guid>,
    /// Whether each child's `parent_linkage` names the parent's current DataWriteGuid.
    child_linkage_current: Vec<bool>,
    /// What to write into the parent: `(offset, length, child)`.
    runs: Vec<(u64, u64, usize)>,
    /// Per child: the sectors its view changes in.
    changed: Vec<Ranges>,
    outsiders: Vec<Dependent>,
    descendants: Vec<Dependent>,
}

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

/// `loc` with `parent_linkage` = `linkage` and `parent_linkage2` = `next`
/// (removed when `None`).
fn linked(loc: Option<&ParentLocator>, linkage: Guid, next: Option<Guid>) -> Result<ParentLocator> {
    let mut loc = loc.cloned().ok_or_else(|| Error::invalid("not a differencing disk"))?;
    loc.set(PARENT_LINKAGE, braced_guid(&linkage));
    match next {
        Some(g) => loc.set(PARENT_LINKAGE2, braced_guid(&g)),
        None => loc.remove(PARENT_LINKAGE2),
    }
    Ok(loc)
}

/// How much to read per child at once when comparing and copying.
const CHUNK: u64 = 1 << 20;

impl<'a> ImageSet<'a> {
    fn open_parent(&self, writable: bool) -> Result<Disk> {
        self.parent.open_with(OpenOptions::new().writable(writable))
    }

    /// Child `i`, on the parent (which checks its link).
    fn open_child(&self, i: usize) -> Result<Disk> {
        let d = self.children[i].open_with(OpenOptions::new().parent(self.open_parent(false)?))?;
        if d.parent_locator().is_none() {
            return Err(Error::invalid("not a differencing disk").in_file(self.children[i].path.display()));
        }
        Ok(d)
    }

    /// Child `i` alone, for its own sectors or its locator.
    fn open_child_alone(&self, i: usize, writable: bool) -> Result<Disk> {
        self.children[i].open_with(OpenOptions::new().writable(writable).without_parent())
    }

    /// Dependent `image`, on `parent`.
    fn open_dependent(image: &Image<'_>, parent: Disk, writable: bool) -> Result<Disk> {
        let d = image.open_with(OpenOptions::new().writable(writable).parent(parent))?;
        if d.parent_locator().is_none() {
            return Err(Error::invalid("not a differencing disk").in_file(image.path.display()));
        }
        Ok(d)
    }

    fn new_guid(&mut self) -> Guid {
        match &mut self.guid_source {
            Some(source) => source(),
            None => Guid::new_v4(),
        }
    }
}

/// Whether `d`'s `parent_linkage` is `guid`.
fn links_to(d: &Disk, guid: Guid) -> bool {
    d.parent_locator().and_then(|l| l.parent_linkage()) == Some(guid)
}

/// Plans a sibling merge of `set` (see the [module documentation](self)):
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
        (p.data_write_guid(), p.virtual_size(), p.logical_sector_size() as u64)
    };

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

/// The most conflicting ranges an error message lists (the report lists all).
const LISTED: usize = 1000;

impl<'a> SiblingMergePlan<'a> {
    /// What the merge will do; `merged` is false.
    pub fn report(&self) -> &SiblingMergeReport {
        &self.report
    }

    /// The text of the refusal: every unresolved range (up to 1000 of them;
    /// the report lists all).
    fn refusal(&self) -> String {
        let names = |c: &Conflict| -> String {
            let names: Vec<String> =
                c.children.iter().map(|&i| self.report.children[i].path.display().to_string()).collect();
            names.join(" and ")
        };
        let unresolved: Vec<&Conflict> = self.report.unresolved().collect();
        let bytes: u64 = unresolved.iter().map(|c| c.length).sum();
        let sector = self.report.logical_sector_size as u64;
        let mut list: Vec<String> = unresolved
            .iter()
            .take(LISTED)
            .map(|c| {
                format!(
                    "{} differ at bytes {:#x}..{:#x} (sectors {}..{})",
                    names(c),
                    c.offset,
                    c.offset + c.length,
                    c.offset / sector,
                    (c.offset + c.length) / sector
                )
            })
            .collect();
        if unresolved.len() > LISTED {
            list.push(format!("and {} more ranges", unresolved.len() - LISTED));
        }
        let advice = match self.report.preferred {
            Some(p) => format!(
                "the preferred child {} holds none of these sectors, so its bytes cannot decide them",
                self.report.children[p].path.display()
            ),
            None => String::from("name the child whose bytes win with --prefer (SiblingMergeOptions::prefer)"),
        };
        format!(
            "the children's changes conflict: {} range(s), {bytes} bytes, hold different bytes in several \
             children; nothing was modified: {}; {advice}",
            unresolved.len(),
            list.join("; ")
        )
    }

    /// Carries the merge out, in the order the [module documentation](self)
    /// gives. Refused ([`Error::Refused`], nothing modified) while a conflict
    /// is unresolved, and when an image changed since it was planned.
    pub fn execute(mut self) -> Result<SiblingMergeReport> {
        if self.report.unresolved().next().is_some() {
            return Err(Error::Refused(self.refusal()).in_file(self.report.parent.display()));
        }
        if self.runs.is_empty() {
            self.tidy()?;
            self.report.merged = true;
            return Ok(self.report);
        }
        self.verify_unchanged()?;
        let n = self.set.children.len();
        let parent_next = self.set.new_guid();
        let child_next: Vec<Option<Guid>> =
            (0..n).map(|i| if self.changed[i].is_empty() { None } else { Some(self.set.new_guid()) }).collect();

        // 2. Prepare: outsiders, children, descendants; each durable before the next.
        for (o, plan) in self.set.outsiders.iter().zip(&self.outsiders) {
            let d = ImageSet::open_dependent(o, self.set.open_parent(false)?, true)?;
            self.expect(&d, plan.guid, &o.path)?;
            prepare(d, &plan.needed, self.parent_guid, parent_next).map_err(|e| e.in_file(o.path.display()))?;
        }
        for i in 0..n {
            let mut d = self.set.open_child_alone(i, true)?;
            let path = &self.set.children[i].path;
            self.expect(&d, self.child_guids[i], path)?;
            let loc = linked(d.parent_locator(), self.parent_guid, Some(parent_next))
                .map_err(|e| e.in_file(path.display()))?;
            d.relink(loc, false).and_then(|()| d.close()).map_err(|e| e.in_file(path.display()))?;
        }
        for ((i, image), plan) in self.set.descendants.iter().zip(&self.descendants) {
            let Some(next) = child_next[*i] else { continue };
            let d = ImageSet::open_dependent(image, self.set.open_child(*i)?, true)?;
            self.expect(&d, plan.guid, &image.path)?;
            prepare(d, &plan.needed, self.child_guids[*i], next).map_err(|e| e.in_file(image.path.display()))?;
        }

        // 3. The parent takes the announced DataWriteGuid and the data.
        {
            let parent_path = self.report.parent.display();
            let mut p = self.set.open_parent(true)?;
            self.expect(&p, self.parent_guid, &self.report.parent)?;
            p.plan_data_write_guid(parent_next).map_err(|e| e.in_file(&parent_path))?;
            let sources: Vec<Disk> = (0..n).map(|i| self.set.open_child_alone(i, false)).collect::<Result<_>>()?;
            let mut buf = std::vec![0u8; CHUNK as usize];
            for &(start, len, c) in &self.runs {
                let mut at = start;
                while at < start + len {
                    let m = CHUNK.min(start + len - at) as usize;
                    sources[c]
                        .read_at(&mut buf[..m], at)
                        .map_err(|e| e.in_file(self.set.children[c].path.display()))?;
                    p.write_at(&buf[..m], at).map_err(|e| e.in_file(&parent_path))?;
                    at += m as u64;
                }
            }
            drop(sources);
            if p.data_write_guid() != parent_next {
                return Err(Error::invalid("the parent did not take the announced DataWriteGuid").in_file(&parent_path));
            }
            p.close().map_err(|e| e.in_file(&parent_path))?;
        }

        // 4. The children, emptied and linked to the parent; the losers of conflicts first.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| self.report.children[i].bytes_overridden == 0);
        for i in order {
            let path = &self.set.children[i].path;
            let mut d = self.set.open_child_alone(i, true)?;
            let loc = linked(d.parent_locator(), parent_next, None).map_err(|e| e.in_file(path.display()))?;
            let emptied = match child_next[i] {
                Some(g) => d.plan_data_write_guid(g).and_then(|()| d.empty_and_relink(loc, true)),
                None => d.empty_and_relink(loc, false),
            };
            emptied.and_then(|()| d.close()).map_err(|e| e.in_file(path.display()))?;
        }

        // 5. Outsiders and descendants linked to their parent's new DataWriteGuid.
        for o in &self.set.outsiders {
            relink_alone(o, parent_next)?;
        }
        for (i, image) in &self.set.descendants {
            if let Some(next) = child_next[*i] {
                relink_alone(image, next)?;
            }
        }
        self.report.merged = true;
        Ok(self.report)
    }

    /// Refuses, before anything is modified, when an image's DataWriteGuid
    /// is not the one it was planned with.
    fn verify_unchanged(&self) -> Result<()> {
        let alone = |image: &Image<'_>| image.open_with(OpenOptions::new().without_parent());
        self.expect(&alone(&self.set.parent)?, self.parent_guid, &self.set.parent.path)?;
        for (c, guid) in self.set.children.iter().zip(&self.child_guids) {
            self.expect(&alone(c)?, *guid, &c.path)?;
        }
        let dependents = self.set.outsiders.iter().chain(self.set.descendants.iter().map(|(_, d)| d));
        for (image, plan) in dependents.zip(self.outsiders.iter().chain(&self.descendants)) {
            self.expect(&alone(image)?, plan.guid, &image.path)?;
        }
        Ok(())
    }

    /// Refuses when `d`'s DataWriteGuid is not the one planned with.
    fn expect(&self, d: &Disk, planned: Guid, path: &Path) -> Result<()> {
        if d.data_write_guid() == planned {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "its content changed since the merge was planned (DataWriteGuid {} instead of {planned})",
            d.data_write_guid()
        ))
        .in_file(path.display()))
    }

    /// With nothing to merge: finishes what an interrupted merge may have
    /// left, links that name the parent only through `parent_linkage2`.
    fn tidy(&self) -> Result<()> {
        for i in 0..self.set.children.len() {
            if !self.child_linkage_current[i] {
                relink_alone(&self.set.children[i], self.parent_guid)?;
            }
        }
        for (o, plan) in self.set.outsiders.iter().zip(&self.outsiders) {
            if !plan.linkage_current {
                relink_alone(o, self.parent_guid)?;
            }
        }
        for ((i, image), plan) in self.set.descendants.iter().zip(&self.descendants) {
            if !plan.linkage_current {
                relink_alone(image, self.child_guids[*i])?;
            }
        }
        Ok(())
    }
}

/// Step 2 for a dependent: copies `needed` from its parent's current view,
/// announces `next` in `parent_linkage2` (and names `current` in
/// `parent_linkage`), and closes, so all of it is durable. What it presents
/// does not change, nor its DataWriteGuid.
fn prepare(mut d: Disk, needed: &Ranges, current: Guid, next: Guid) -> Result<()> {
    let loc = linked(d.parent_locator(), current, Some(next))?;
    d.keep_data_write_guid()?;
    if !needed.is_empty() {
        copy_from_parent(&mut d, needed)?;
    }
    d.set_parent_locator(loc)?;
    d.close()
}

/// Step 5: `parent_linkage` = `guid`, no `parent_linkage2`; metadata only.
fn relink_alone(image: &Image<'_>, guid: Guid) -> Result<()> {
    let mut d = image.open_with(OpenOptions::new().writable(true).without_parent())?;
    let loc = linked(d.parent_locator(), guid, None).map_err(|e| e.in_file(image.path.display()))?;
    d.relink(loc, false).and_then(|()| d.close()).map_err(|e| e.in_file(image.path.display()))
}

/// Plans a sibling merge of the files `children` into `parent` (see the
/// [module documentation](self)). Each child must be a differencing disk
/// whose locator leads to `parent` and whose linkage matches it. Outsiders
/// and descendants are looked for among the `.vhdx`/`.avhdx` files in the
/// directories of the parent and of each child, and in
/// `options.search_dirs`. `options.dry_run` plays no part here.
pub fn plan_merge_siblings(
    parent: &Path,
    children: &[PathBuf],
    options: &SiblingMergeOptions,
) -> Result<SiblingMergePlan<'static>> {
    if children.is_empty() {
        return Err(Error::invalid("a sibling merge needs at least one child"));
    }
    let parent_c = canonical(parent);
    let canon: Vec<PathBuf> = children.iter().map(|c| canonical(c)).collect();
    for (i, c) in canon.iter().enumerate() {
        if *c == parent_c {
            return Err(Error::invalid(format!("{} is the parent itself", children[i].display())));
        }
        if canon[..i].contains(c) {
            return Err(Error::invalid(format!("{} is named twice", children[i].display())));
        }
    }
    let prefer = match &options.prefer {
        None => None,
        Some(p) => Some(canon.iter().position(|c| *c == canonical(p)).ok_or_else(|| {
            Error::invalid(format!("the preferred child {} is not one of the children merged", p.display()))
        })?),
    };
    let confine = options.confine_to.clone();
    let resolving = move |o: OpenOptions| match &confine {
        Some(dirs) => o.parent_search_dirs(dirs.iter().cloned()),
        None => o,
    };

    let parent_guid = resolving(OpenOptions::new()).open(parent).map_err(|e| e.in_file(parent.display()))?;
    let parent_guid = parent_guid.data_write_guid();
    // Each child must reach the parent through its own locator.
    for c in children {
        let d = resolving(OpenOptions::new()).open(c).map_err(|e| e.in_file(c.display()))?;
        match d.parent().and_then(|p| p.path()) {
            Some(found) if canonical(Path::new(found)) == parent_c => {}
            Some(found) => {
                return Err(Error::invalid(format!("it is not a child of {}: its parent is {found}", parent.display()))
                    .in_file(c.display()))
            }
            None => return Err(Error::invalid("not a differencing disk").in_file(c.display())),
        }
    }

    let mut dirs: Vec<PathBuf> = std::vec![directory_of(parent)];
    dirs.extend(children.iter().map(|c| directory_of(c)));
    dirs.extend(options.search_dirs.iter().cloned());
    let file = |p: PathBuf| {
        let path = p.clone();
        Image::new(p, move |o: OpenOptions| o.open(&path))
    };
    let outsiders: Vec<Image<'static>> =
        children_of(parent, parent_guid, &dirs, &canon).into_iter().map(file).collect();
    let mut exclude = canon.clone();
    exclude.push(parent_c);
    let mut descendants = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let guid = OpenOptions::new().without_parent().open(c).map_err(|e| e.in_file(c.display()))?.data_write_guid();
        descendants.extend(children_of(c, guid, &dirs, &exclude).into_iter().map(|d| (i, file(d))));
    }
    let parent_path = parent.to_path_buf();
    let set = ImageSet {
        parent: Image::new(parent, move |o: OpenOptions| resolving(o).open(&parent_path)),
        children: children.iter().cloned().map(file).collect(),
        outsiders,
        descendants,
        guid_source: None,
    };
    plan_image_set(set, prefer)
}

/// Merges the differencing disks `children` into their common parent
/// `parent` in one crash-safe operation, preserving the parent's other
/// children (see the [module documentation](self)). With
/// `options.dry_run` it only plans and reports.
///
/// Refused ([`Error::Refused`], nothing modified) when the children's
/// changes conflict and `options.prefer` does not decide every conflict;
/// the message lists the conflicting ranges. [`plan_merge_siblings`] gives
/// them as a list ([`SiblingMergeReport::conflicts`]).
///
/// ```no_run
/// use vhdx::ops::siblings::{merge_siblings, SiblingMergeOptions};
/// let children = ["session1.vhdx".into(), "session2.vhdx".into()];
/// let report = merge_siblings("profile.vhdx".as_ref(), &children, &SiblingMergeOptions::default())?;
/// for c in &report.children {
///     println!("{}: {} bytes merged", c.path.display(), c.bytes_merged);
/// }
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn merge_siblings(
    parent: &Path,
    children: &[PathBuf],
    options: &SiblingMergeOptions,
) -> Result<SiblingMergeReport> {
    let plan = plan_merge_siblings(parent, children, options)?;
    if options.dry_run {
        let mut report = plan.report;
        report.dry_run = true;
        return Ok(report);
    }
    plan.execute()
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
