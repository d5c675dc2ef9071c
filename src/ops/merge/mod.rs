//! Merging a differencing disk into an ancestor (diskpart `merge vdisk
//! depth=N`), without breaking the other children of the images it changes,
//! in an order that survives a crash at any point and that a re-run finishes.
//!
//! Chain: `C0` (the child) → `C1` → … → `CN` (the target). The data of
//! `C0..C(N-1)` goes into `CN`, read through `C0`'s view so the nearest
//! holder of each sector wins: the target then presents its old content
//! overlaid with `C0`'s view of the union of their change sets. Every merged
//! image is emptied and linked to the target: `C0` presents exactly what it
//! presented before (it keeps its DataWriteGuid, so its children stay valid);
//! `C1..C(N-1)` now present `C0`'s view. The target and `C1..C(N-1)` are the
//! *changed images*: each takes a new DataWriteGuid, chosen in advance.
//!
//! A *sibling* is any other child of a changed image, found in the
//! directories of the target and the child (and any extra directories
//! given). By default the merge refuses and names them. With
//! [`SiblingPolicy::Preserve`] each sibling first receives the current data
//! of every sector the merge will change that it does not hold itself — so
//! it presents the same bytes — and is re-linked afterwards.
//! [`SiblingPolicy::Force`] behaves like diskpart: siblings break, and
//! opening one fails with a linkage error.
//!
//! ## Order, and what an interruption leaves
//!
//! As in [`merge-siblings`](super::siblings), every image that links to a
//! changed image is told, before the change, the DataWriteGuid that image is
//! going to take, in its locator's `parent_linkage2` (which the format
//! accepts as an alternative to `parent_linkage`), and the changed image
//! takes exactly that GUID. So every image opens at every point — except,
//! under `Force`, siblings once their parent changed — and no image presents
//! a sector that is neither its old nor its new content. Each step is
//! durable (flushed, closed) before the next begins:
//!
//! 1. **Plan** (read-only): the chain, the change sets, the siblings; the
//!    next DataWriteGuid of every changed image. Everything that would
//!    refuse the merge refuses it here, before any change.
//! 2. **Announce**: the child receives the *merge record* (below) and
//!    `parent_linkage2` = `C1`'s next GUID, in one commit; each intermediate
//!    `Ck` gets `parent_linkage2` = `C(k+1)`'s next (metadata only); each
//!    preserved sibling receives its parent's current data for every sector
//!    that changes under it and that it does not hold, and `parent_linkage2`
//!    = its parent's next. Then the intermediates take their new GUIDs,
//!    their content still unchanged, so that from here on a `Force` sibling
//!    of an intermediate is refused rather than shown the target's changes
//!    through a parent that looks unchanged. *Interrupted:* every image
//!    presents exactly what it did (what was copied equals what it hid).
//! 3. **Target**: takes its announced DataWriteGuid and receives `C0`'s view
//!    of the union, read from `C0..C(N-1)` each opened alone; closed; then
//!    the record says so. *Interrupted:* the target presents, sector by
//!    sector, its old or its merged content; `C0`, the siblings and every
//!    image below them exactly what they did; an intermediate its old
//!    content where it holds a sector, the target's elsewhere — each sector
//!    old or merged.
//! 4. **Intermediates**, `C(N-1)` first: each takes its announced GUID and
//!    is emptied and linked to the target (locator, then the cleared block
//!    table, through the log). *Interrupted:* as in 3, the target now whole.
//! 5. **Siblings** (preserved): `parent_linkage` = their parent's new GUID,
//!    `parent_linkage2` removed. *Interrupted:* a remaining
//!    `parent_linkage2` is only an unneeded alternative.
//! 6. **Child**: its blocks are cleared while it still links to `C1`, which
//!    presents the same bytes by now; then, in one small commit, it is linked
//!    to the target and its record marked *done*.
//!
//! ## Finishing an interrupted merge
//!
//! Running the same merge again (same child, depth and sibling policy)
//! finishes it, from the record. While the target still has its old
//! DataWriteGuid nothing has changed content: the merge is planned again
//! (siblings looked for again) with the GUIDs already announced. Once the
//! target took its new one, the merge goes on along the chain and siblings
//! the record names — the child's locator may lead elsewhere by then —
//! copying into the target again unless the record says the copy is
//! complete, then the remaining steps, each skipped where it is done. A
//! re-run after step 6 finds the record marked done and reports the merge
//! finished ([`MergeRun::AlreadyDone`]) although the chain is shorter than
//! the depth now. Failing with an I/O error (a full disk) leaves what a crash
//! leaves: no image is closed with a commit after a failed write.
//!
//! While a merge is unfinished, a merge with another depth or policy is
//! refused, as is any merge or sibling merge that would change an image of
//! it (one that holds an unfinished record, or whose children announce a
//! GUID it did not). `vhdx check` names an unfinished merge (the record, and
//! any `parent_linkage2`); `vhdx check --repair` on the child
//! ([`recover_merge`]) rolls it back while the target is unchanged (the
//! intermediates take their old GUIDs back, the announcements and the
//! record are removed; what was copied into siblings stays, it is their
//! parent's bytes) and finishes it otherwise.
//!
//! ## The record
//!
//! The record is a user metadata item of the child (optional:
//! other readers ignore it) naming the depth, the policy, each changed image
//! with its old and announced DataWriteGuid, and the siblings. Kept in the
//! child rather than in a file beside it, it is written and removed through
//! the child's log with the same atomicity as the child's locator, and on
//! whatever storage the child is opened from ([`MergeOptions::file_opener`]):
//! a crash test's simulated power cut treats it exactly like the images.
//! It names the images by paths relative to the child's directory, so that
//! a tree moved or copied as a whole takes it along: finishing or rolling
//! back a copy changes the copy's images, never the original's.
//! It is checked against the images before it steers anything: each image
//! it names must be where the locators lead and hold its old or announced
//! DataWriteGuid. The record of a finished merge stays (marked done) so that
//! a re-run can tell; the next merge of the child replaces it.
//!
//! ## Opening files
//!
//! Every image is opened through [`MergeOptions::file_opener`], and no file
//! is open twice at a time: the chain is opened read-only to plan and closed;
//! each image changed is then opened alone, or — a sibling receiving data —
//! on its parent's chain opened read-only, which holds no image open
//! elsewhere; the target is written while `C0..C(N-1)` are open read-only,
//! each alone, and never through a chain that reaches the target.

use alloc::string::ToString;
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

mod execute;
mod plan;
mod record;
pub(crate) mod recover;
mod vhd;

pub use recover::{interrupted_merge, recover_merge, InterruptedMerge, Recovery};

use crate::chain::{locator_for, FsResolver};
use crate::error::{Error, Result};
use crate::io::{FileOpener, LockSet};
use crate::{Guid, OpenOptions};
use execute::Start;
use record::Record;

/// What to do about other children of the images a merge changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SiblingPolicy {
    /// Refuse, change nothing, and name every sibling.
    #[default]
    Refuse,
    /// Copy into each sibling what it would lose, then re-link it.
    Preserve,
    /// Merge anyway; siblings break (diskpart's behaviour).
    Force,
}

/// Options of [`merge`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MergeOptions {
    /// How many levels up the target is (1 = the child's parent).
    pub depth: usize,
    /// Sibling handling.
    pub siblings: SiblingPolicy,
    /// More directories to search for siblings.
    pub search_dirs: Vec<PathBuf>,
    /// When set, every parent is resolved only inside these directories (see
    /// [`OpenOptions::parent_search_dirs`]): for images from untrusted sources.
    pub confine_to: Option<Vec<PathBuf>>,
    /// How files are opened (the filesystem when `None`); directories are
    /// still listed on the filesystem to find siblings. With the filesystem
    /// the merge locks every image it changes from start to end (see
    /// [`LockSet`]); an opener of your own opens, and locks, as it sees fit.
    pub file_opener: Option<FileOpener>,
}

crate::setters!(MergeOptions {
    depth: usize,
    siblings: SiblingPolicy,
    search_dirs: Vec<PathBuf>,
    confine_to: Option<Vec<PathBuf>>,
    file_opener: Option<FileOpener>,
});

impl MergeOptions {
    /// Open options resolving parents as these options say.
    fn opener(&self) -> OpenOptions {
        let opts = match &self.confine_to {
            Some(dirs) => {
                let mut resolver = FsResolver::confined_to(dirs.iter().cloned());
                if let Some(opener) = &self.file_opener {
                    resolver = resolver.with_opener(opener.clone());
                }
                OpenOptions::new().resolver(alloc::boxed::Box::new(resolver))
            }
            // `open` builds the filesystem resolver, with this opener.
            None => OpenOptions::new(),
        };
        self.files(opts)
    }

    /// `opts` opening files through [`MergeOptions::file_opener`].
    fn files(&self, opts: OpenOptions) -> OpenOptions {
        match &self.file_opener {
            Some(opener) => opts.file_opener(opener.clone()),
            None => opts,
        }
    }
}

/// A child of a changed image that is not in the merged chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The sibling.
    pub path: PathBuf,
    /// The image of the chain it is a child of.
    pub parent: PathBuf,
    /// Bytes copied into it to preserve its content (0 unless preserved).
    pub bytes_copied: u64,
}

/// What [`merge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MergeReport {
    /// The image merged into.
    pub target: PathBuf,
    /// The images merged, child first; each is now empty and linked to the target.
    pub merged: Vec<PathBuf>,
    /// Bytes written into the target.
    pub bytes_merged: u64,
    /// The siblings found, with what was done for them.
    pub siblings: Vec<Sibling>,
    /// Whether siblings were left broken: `Force`, and the parent of at
    /// least one sibling changed (merging an empty child changes nothing).
    pub siblings_broken: bool,
    /// Whether this run started the merge, finished an interrupted one, or
    /// found it finished.
    pub run: MergeRun,
}

/// How a run of [`merge`] relates to earlier runs of the same merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergeRun {
    /// The merge was started (and finished) by this run.
    Started,
    /// An earlier run was interrupted; this one finished it. The byte
    /// counts are what this run copied.
    Resumed,
    /// An earlier run had finished it (it was interrupted after its last
    /// change); nothing was changed.
    AlreadyDone,
}

impl MergeRun {
    /// A short name for messages and JSON: `started`, `resumed` or
    /// `already-done`.
    pub fn label(&self) -> &'static str {
        match self {
            MergeRun::Started => "started",
            MergeRun::Resumed => "resumed",
            MergeRun::AlreadyDone => "already-done",
        }
    }
}

/// The directory holding `p`: `.` for a bare file name (whose `parent()` is
/// the empty path, which cannot be listed).
pub(crate) fn directory_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(crate) fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Whether `name` looks like an image: `.vhdx`, `.avhdx`, `.vhd` or `.avhd`.
pub(crate) fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["vhdx", "avhdx", "vhd", "avhd"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Images in `dirs` that are children of `parent` (whose DataWriteGuid, or
/// for a VHD unique ID, is `guid`), other than those in `exclude`
/// (canonical paths).
pub fn children_of(parent: &Path, guid: Guid, dirs: &[PathBuf], exclude: &[PathBuf]) -> Vec<PathBuf> {
    children_through(&FileOpener::default(), parent, &[guid], dirs, exclude)
}

/// [`children_of`], opening the candidates through `opener`; a child links
/// to any of `guids`.
pub(crate) fn children_through(
    opener: &FileOpener,
    parent: &Path,
    guids: &[Guid],
    dirs: &[PathBuf],
    exclude: &[PathBuf],
) -> Vec<PathBuf> {
    let parent_c = canonical(parent);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for dir in dirs {
        // Regular files only: a FIFO named like an image must not block the scan.
        let Ok(mut files) = super::tree::image_files(dir) else {
            continue;
        };
        files.sort();
        for f in files {
            let c = canonical(&f);
            if exclude.contains(&c) || seen.contains(&c) || c == parent_c {
                continue;
            }
            seen.push(c);
            let Ok(d) = OpenOptions::new().without_parent().file_opener(opener.clone()).open_any(&f) else {
                continue;
            };
            if !guids.iter().any(|&g| d.links_to(g)) {
                continue;
            }
            let Ok((candidates, _)) = d.parent_candidates(&f) else { continue };
            if candidates.iter().any(|p| canonical(p) == parent_c) {
                out.push(f);
            }
        }
    }
    out
}

/// Locks, exclusively, the images a merge of `child` to `depth` levels up
/// changes — the child and its ancestors up to the target — and returns
/// options that open files through those locks (see [`LockSet`]), with the
/// set, to which the merge adds the siblings it writes to. The locks last
/// as long as the options and the set. With a caller's
/// [`MergeOptions::file_opener`] nothing is locked: it opens files its own way.
fn lock_chain(child: &Path, options: &MergeOptions, depth: usize) -> Result<(MergeOptions, Option<LockSet>)> {
    if options.file_opener.is_some() {
        return Ok((options.clone(), None));
    }
    // The chain's files, found with shared locks released before the exclusive ones are taken.
    let paths = options.opener().open(child)?.chain_paths();
    let locks = LockSet::new();
    for p in paths.iter().take(depth + 1) {
        locks.lock(Path::new(p), true)?;
    }
    let locked = MergeOptions { file_opener: Some(locks.opener()), ..options.clone() };
    Ok((locked, Some(locks)))
}

/// Adds the siblings `plan` writes to (those it preserves) to the merge's
/// locks, before anything is changed.
fn lock_siblings(locks: &Option<LockSet>, plan: &plan::Plan) -> Result<()> {
    if let (Some(locks), SiblingPolicy::Preserve) = (locks, plan.policy) {
        for (s, _) in &plan.siblings {
            locks.lock(&s.path, true)?;
        }
    }
    Ok(())
}

/// Merges `child` into its ancestor `options.depth` levels up.
///
/// The child, the images up to the target and the siblings it preserves
/// are locked from start to end: while another process (or handle) has one
/// open, the merge is refused ([`Error::Busy`]) before anything changes.
///
/// ```no_run
/// use vhdx::ops::merge::{merge, MergeOptions, SiblingPolicy};
/// let report = merge("child.vhdx".as_ref(), &MergeOptions::default().depth(1).siblings(SiblingPolicy::Preserve))?;
/// println!("{} bytes into {}", report.bytes_merged, report.target.display());
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn merge(child: &Path, options: &MergeOptions) -> Result<MergeReport> {
    merge_with_progress(child, options, &mut |_, _| {})
}

/// [`merge`], calling `progress(done, total)` in bytes copied (into
/// siblings, then into the target) as it goes; `total` is an upper bound.
///
/// When `child` holds the record of an unfinished merge (see the [module
/// documentation](self)), the same depth and policy finish it; another
/// depth or policy is refused ([`Error::Refused`]), changing nothing. When
/// its record says the merge with this depth finished, nothing is done.
pub fn merge_with_progress(
    child: &Path,
    options: &MergeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeReport> {
    if is_vhd(&options.file_opener.clone().unwrap_or_default(), child) {
        return vhd::merge(child, options, progress);
    }
    let depth = options.depth.max(1);
    // Nobody else opens the images the merge changes until it returns.
    let (options, locks) = &lock_chain(child, options, depth)?;
    let c0 = execute::alone(options, child, false)?;
    let record = Record::read(&c0).map_err(|e| e.in_file(child.display()))?;
    match record {
        Some(r) if r.active() => {
            drop(c0);
            if r.depth() != depth || r.policy != options.siblings {
                return Err(Error::Refused(format!(
                    "it holds the record of an unfinished {}; finish it by running the same merge again (--depth {}{}), \
                     or end it with `vhdx check --repair` on this image (it rolls the merge back while the target is \
                     unchanged, and finishes it otherwise); nothing was changed",
                    r.describe(),
                    r.depth(),
                    match r.policy {
                        SiblingPolicy::Refuse => "",
                        SiblingPolicy::Preserve => " --preserve-siblings",
                        SiblingPolicy::Force => " --force",
                    }
                ))
                .in_file(child.display()));
            }
            resume(child, r, options, locks, progress)
        }
        Some(r) if r.depth() == depth && recover::finished(&c0, &r)? => {
            drop(c0);
            Ok(recover::finished_report(child, r))
        }
        _ => {
            drop(c0);
            let plan = plan::from_images(child, options, None)?;
            lock_siblings(locks, &plan)?;
            execute::run(plan, options, Start::Announce, MergeRun::Started, progress)
        }
    }
}

/// Finishes the merge recorded as `r` in `child`.
fn resume(
    child: &Path,
    r: Record,
    options: &MergeOptions,
    locks: &Option<LockSet>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeReport> {
    match recover::target_state(&r, options)? {
        recover::TargetState::Unchanged => {
            let plan = plan::from_images(
                child,
                &MergeOptions { depth: r.depth(), siblings: r.policy, ..options.clone() },
                Some(&r),
            )?;
            lock_siblings(locks, &plan)?;
            execute::run(plan, options, Start::Announce, MergeRun::Resumed, progress)
        }
        recover::TargetState::Changed => {
            let c0_guid = execute::alone(options, child, false)?.data_write_guid();
            // The copy is complete unless the child changed since it was made.
            let start =
                if r.phase == record::Phase::Prepared || c0_guid != r.child_guid { Start::Copy } else { Start::Empty };
            let plan = plan::from_record(child, r, options)?;
            lock_siblings(locks, &plan)?;
            execute::run(plan, options, start, MergeRun::Resumed, progress)
        }
    }
}

/// Points `child` at `parent` (a moved or copied parent). Refuses when the
/// parent's DataWriteGuid differs from the child's linkage unless
/// `ignore_id_mismatch`; then the child's content may change, so its own
/// DataWriteGuid changes too. A parent that is `child` itself or one of its
/// descendants is always refused ([`Error::ParentLoop`]). The child is locked
/// from start to end ([`Error::Busy`] while it is open elsewhere), the
/// parent's chain shared.
pub fn set_parent(child: &Path, parent: &Path, ignore_id_mismatch: bool) -> Result<()> {
    // Before the locks: the walk up the parent's chain opens images read-only,
    // the child among them when there is a loop.
    refuse_loop(child, parent, &FileOpener::default())?;
    // The child stays locked from before the parent's chain is opened (which
    // may pass through the child, through the lock) until it is re-linked.
    let locks = LockSet::new();
    locks.lock(child, true)?;
    link_to_parent(&locks.opener(), child, parent, ignore_id_mismatch)
}

/// Whether `path` holds a VHD (by content, read through `opener`).
fn is_vhd(opener: &FileOpener, path: &Path) -> bool {
    crate::ImageFormat::detect_through(opener, path) == crate::ImageFormat::Vhd
}

/// [`set_parent`], opening every file (the child, the parent and the
/// parent's own chain, also to look for a loop) through `opener`, which
/// locks as it sees fit: for images on storage of the caller's own, such as
/// a crash test's fault-injecting storages (`io::FaultStorage`, feature
/// `test-util`), or files an operation of the caller's already holds in a
/// [`LockSet`]. The locator still names `parent`'s path on the filesystem.
///
/// ```no_run
/// use vhdx::io::LockSet;
/// use vhdx::ops::merge::set_parent_through;
/// let locks = LockSet::new();
/// locks.lock("child.vhdx".as_ref(), true)?; // held for a longer operation
/// set_parent_through(&locks.opener(), "child.vhdx".as_ref(), "moved/base.vhdx".as_ref(), false)?;
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn set_parent_through(opener: &FileOpener, child: &Path, parent: &Path, ignore_id_mismatch: bool) -> Result<()> {
    refuse_loop(child, parent, opener)?;
    link_to_parent(opener, child, parent, ignore_id_mismatch)
}

/// The body of [`set_parent`], after the loop check, with files opened
/// through `opener`.
fn link_to_parent(opener: &FileOpener, child: &Path, parent: &Path, ignore_id_mismatch: bool) -> Result<()> {
    if is_vhd(opener, child) {
        return vhd::set_parent(opener, child, parent, ignore_id_mismatch);
    }
    if is_vhd(opener, parent) {
        return Err(Error::invalid(std::format!(
            "{}: a VHDX's parent must be a VHDX, and {} is a VHD (chains mix no formats, as in Windows)",
            child.display(),
            parent.display()
        )));
    }
    let p = OpenOptions::new().file_opener(opener.clone()).open(parent)?;
    let mut c = OpenOptions::new().writable(true).without_parent().file_opener(opener.clone()).open(child)?;
    let loc = c
        .parent_locator()
        .cloned()
        .ok_or_else(|| Error::invalid(std::format!("{}: not a differencing disk", child.display())))?;
    let found = p.data_write_guid();
    let matches = loc.parent_linkage() == Some(found) || loc.parent_linkage2() == Some(found);
    if !matches && !ignore_id_mismatch {
        return Err(Error::ParentMismatch {
            parent: parent.display().to_string(),
            expected: loc.parent_linkage().unwrap_or_default(),
            found,
        }
        .in_file(child.display()));
    }
    if p.logical_sector_size() != c.logical_sector_size() || p.virtual_size() != c.virtual_size() {
        return Err(Error::invalid(std::format!(
            "{}: the parent {} has another size or sector size",
            child.display(),
            parent.display()
        )));
    }
    let new_loc = locator_for(child, parent, &found)?;
    c.image_mut().relink(new_loc, !matches).map_err(|e| e.in_file(child.display()))?;
    c.close().map_err(|e| e.in_file(child.display()))
}

/// [`Error::ParentLoop`] when `parent` is `child`, or when `parent`'s own
/// links (followed to the files they name, matching or not) lead to `child`.
/// Checked before anything is opened for writing; a child that is not a
/// differencing disk is left to the caller's own refusal.
fn refuse_loop(child: &Path, parent: &Path, opener: &FileOpener) -> Result<()> {
    if super::tree::examine_with(child, opener).status == super::tree::LinkStatus::Root {
        return Ok(());
    }
    let me = canonical(child);
    let itself = canonical(parent) == me;
    if itself || super::tree::ancestors_with(parent, opener).iter().any(|a| canonical(a) == me) {
        return Err(Error::ParentLoop {
            child: child.display().to_string(),
            parent: parent.display().to_string(),
            itself,
        });
    }
    Ok(())
}
