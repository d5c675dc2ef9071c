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

mod execute;
mod plan;

use std::boxed::Box;
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

pub use plan::plan_image_set;

use super::merge::{canonical, children_through, directory_of, Sibling};
use super::ranges::Ranges;
use crate::error::{Error, Result};
use crate::io::LockSet;
use crate::{Disk, Guid, GuidSource, OpenOptions};

/// Options of [`merge_siblings`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
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

crate::setters!(SiblingMergeOptions {
    prefer: Option<PathBuf>,
    dry_run: bool,
    search_dirs: Vec<PathBuf>,
    confine_to: Option<Vec<PathBuf>>,
});

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
#[non_exhaustive]
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
///
/// For files, open them through the [`FileOpener`](crate::io::FileOpener) of
/// a [`LockSet`] holding every image of the set, as [`merge_siblings`] does:
/// then nobody else changes them between the plan and its execution, and the
/// operation's own opens of one file, read-only and writable, do not refuse
/// each other.
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
pub(super) struct Dependent {
    /// Its DataWriteGuid when planned.
    pub(super) guid: Guid,
    /// What to copy into it from its parent's current view.
    pub(super) needed: Ranges,
    /// Whether its `parent_linkage` already names its parent's current DataWriteGuid.
    pub(super) linkage_current: bool,
}

/// A sibling merge, planned: conflicts found, nothing modified yet. Its
/// [`report`](SiblingMergePlan::report) says what [`execute`](SiblingMergePlan::execute) will do.
pub struct SiblingMergePlan<'a> {
    pub(super) set: ImageSet<'a>,
    pub(super) report: SiblingMergeReport,
    pub(super) parent_guid: Guid,
    pub(super) child_guids: Vec<Guid>,
    /// Whether each child's `parent_linkage` names the parent's current DataWriteGuid.
    pub(super) child_linkage_current: Vec<bool>,
    /// What to write into the parent: `(offset, length, child)`.
    pub(super) runs: Vec<(u64, u64, usize)>,
    /// Per child: the sectors its view changes in.
    pub(super) changed: Vec<Ranges>,
    pub(super) outsiders: Vec<Dependent>,
    pub(super) descendants: Vec<Dependent>,
}

/// How much to read per child at once when comparing and copying.
const CHUNK: u64 = 1 << 20;

/// Plans a sibling merge of the files `children` into `parent` (see the
/// [module documentation](self)). Each child must be a differencing disk
/// whose locator leads to `parent` and whose linkage matches it. Outsiders
/// and descendants are looked for among the `.vhdx`/`.avhdx` files in the
/// directories of the parent and of each child, and in
/// `options.search_dirs`.
///
/// The parent, the children, the outsiders and the descendants stay locked
/// until the plan is dropped (after [`execute`](SiblingMergePlan::execute)):
/// exclusively, or shared with other readers when `options.dry_run` (such a
/// plan only reads; executing it fails where it would write). While another
/// process or handle has one open in a conflicting way, planning fails with
/// [`Error::Busy`].
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
    // The parent and the children stay locked until the plan is dropped, its
    // own opens going through the locks: exclusive unless in a dry run.
    let locks = LockSet::new();
    let writable = !options.dry_run;
    for p in core::iter::once(parent).chain(children.iter().map(PathBuf::as_path)) {
        locks.lock(p, writable)?;
    }
    let opener = locks.opener();
    let confine = options.confine_to.clone();
    let files = opener.clone();
    let resolving = move |o: OpenOptions| {
        let o = o.file_opener(files.clone());
        match &confine {
            Some(dirs) => o.parent_search_dirs(dirs.iter().cloned()),
            None => o,
        }
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
        let opener = opener.clone();
        Image::new(p, move |o: OpenOptions| o.file_opener(opener.clone()).open(&path))
    };
    let outsiders: Vec<PathBuf> = children_through(&opener, parent, &[parent_guid], &dirs, &canon);
    let mut exclude = canon.clone();
    exclude.push(parent_c);
    let mut descendants = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let alone = OpenOptions::new().without_parent().file_opener(opener.clone());
        let guid = alone.open(c).map_err(|e| e.in_file(c.display()))?.data_write_guid();
        descendants.extend(children_through(&opener, c, &[guid], &dirs, &exclude).into_iter().map(|d| (i, d)));
    }
    // What the merge writes to besides: outsiders and descendants.
    for p in outsiders.iter().chain(descendants.iter().map(|(_, d)| d)) {
        locks.lock(p, writable)?;
    }
    let outsiders: Vec<Image<'static>> = outsiders.into_iter().map(file).collect();
    let descendants = descendants.into_iter().map(|(i, d)| (i, file(d))).collect();
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
