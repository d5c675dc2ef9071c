//! Merging a differencing disk into an ancestor (diskpart `merge vdisk
//! depth=N`), without breaking the other children of the images it changes.
//!
//! Chain: `C0` (the child) → `C1` → … → `CN` (the target). The data of
//! `C0..C(N-1)` goes into `CN`, read through `C0`'s view so the nearest
//! holder of each sector wins. After the target's writes are flushed, every
//! merged image is emptied and re-linked to the target's new DataWriteGuid:
//! `C0` presents exactly what it presented before (its own DataWriteGuid is
//! kept, so its children stay valid); `C1..C(N-1)` now present `C0`'s view.
//!
//! A *sibling* is any other child of an image whose content the merge
//! changes (the target, and `C1..C(N-1)`), found in the directories of the
//! target and the child (and any extra directories given). By default the
//! merge refuses and names them. With [`SiblingPolicy::Preserve`] each
//! sibling first receives the current data of every sector the merge will
//! change that it does not hold itself — so it presents the same bytes — and
//! is re-linked afterwards. [`SiblingPolicy::Force`] behaves like diskpart:
//! siblings break, and opening one fails with a linkage error.
//!
//! Crash safety: each step leaves every image readable or refused with a
//! linkage error, never silently wrong. Siblings are completed before the
//! target changes; the child is emptied only after the target is durable;
//! the emptying commits the new locator before the cleared BAT pages.

use alloc::string::{String, ToString};
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::ranges::{self, Ranges};
use crate::chain::{locator_for, FsResolver};
use crate::error::{Error, Result};
use crate::format::locator::{braced_guid, PARENT_LINKAGE, PARENT_LINKAGE2};
use crate::io::FileOpener;
use crate::{Disk, Guid, OpenOptions};

/// What to do about other children of the images a merge changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// still listed on the filesystem to find siblings.
    pub file_opener: Option<FileOpener>,
}

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
}

const COPY_CHUNK: u64 = 4 << 20;

/// Copies the ranges of `from`'s view into `to`; `step(n)` after each piece.
fn copy_ranges(from: &Disk, to: &mut Disk, runs: &[(u64, u64)], step: &mut dyn FnMut(u64)) -> Result<u64> {
    let mut buf = std::vec![0u8; COPY_CHUNK as usize];
    let mut total = 0;
    for &(start, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_CHUNK) as usize;
            from.read_at(&mut buf[..n], start + done)?;
            to.write_at(&buf[..n], start + done)?;
            done += n as u64;
            total += n as u64;
            step(n as u64);
        }
    }
    Ok(total)
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

/// Whether `name` looks like a VHDX image.
pub(crate) fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("vhdx") || e.eq_ignore_ascii_case("avhdx"))
}

/// Images in `dirs` that are children of `parent` (whose DataWriteGuid is
/// `guid`), other than those in `exclude` (canonical paths).
pub fn children_of(parent: &Path, guid: Guid, dirs: &[PathBuf], exclude: &[PathBuf]) -> Vec<PathBuf> {
    children_through(&FileOpener::default(), parent, guid, dirs, exclude)
}

/// [`children_of`], opening the candidates through `opener`.
fn children_through(
    opener: &FileOpener,
    parent: &Path,
    guid: Guid,
    dirs: &[PathBuf],
    exclude: &[PathBuf],
) -> Vec<PathBuf> {
    let parent_c = canonical(parent);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let c = canonical(&f);
            if !is_image_name(&f) || exclude.contains(&c) || seen.contains(&c) || c == parent_c {
                continue;
            }
            seen.push(c);
            let Ok(d) = OpenOptions::new().without_parent().file_opener(opener.clone()).open(&f) else {
                continue;
            };
            let Some(loc) = d.parent_locator() else {
                continue;
            };
            if loc.parent_linkage() != Some(guid) && loc.parent_linkage2() != Some(guid) {
                continue;
            }
            if FsResolver::candidates(Some(&f), loc).iter().any(|p| canonical(p) == parent_c) {
                out.push(f);
            }
        }
    }
    out
}

/// Merges `child` into its ancestor `options.depth` levels up.
///
/// ```no_run
/// use vhdx::ops::merge::{merge, MergeOptions, SiblingPolicy};
/// let report = merge("child.vhdx".as_ref(), &MergeOptions { depth: 1, siblings: SiblingPolicy::Preserve, ..Default::default() })?;
/// println!("{} bytes into {}", report.bytes_merged, report.target.display());
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn merge(child: &Path, options: &MergeOptions) -> Result<MergeReport> {
    merge_with_progress(child, options, &mut |_, _| {})
}

/// [`merge`], calling `progress(done, total)` in bytes copied (into
/// siblings, then into the target) as it goes; `total` is an upper bound.
pub fn merge_with_progress(
    child: &Path,
    options: &MergeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeReport> {
    let depth = options.depth.max(1);
    // The chain, leaf first, with each level's DataWriteGuid and change set.
    let leaf = options.opener().open(child)?;
    let paths: Vec<PathBuf> = leaf.chain_paths().into_iter().map(PathBuf::from).collect();
    if paths.len() <= depth {
        return Err(Error::invalid(std::format!(
            "{}: cannot merge to depth {depth}: the chain has only {} ancestor(s)",
            child.display(),
            paths.len() - 1
        )));
    }
    let target = paths[depth].clone();
    let mut guids = Vec::new();
    let mut sizes = Vec::new();
    let mut change_sets: Vec<Ranges> = Vec::new();
    let mut level = Some(&leaf);
    while let Some(d) = level {
        guids.push(d.data_write_guid());
        sizes.push(d.virtual_size());
        if change_sets.len() < depth {
            change_sets.push(d.change_set()?);
        }
        level = d.parent();
    }
    // A child resized after it was made presents another size than its
    // parent: its data cannot go into the parent as it is.
    if let Some(k) = (1..=depth).find(|&k| sizes[k] != sizes[0]) {
        return Err(Error::invalid(std::format!(
            "{}: its virtual size ({} bytes) differs from that of {} ({} bytes), so it cannot be merged into it; \
             a standalone copy can be made with convert",
            child.display(),
            sizes[0],
            paths[k].display(),
            sizes[k]
        )));
    }
    // below[k] = union of the change sets of C0..C(k-1): what changes in C_k's view.
    let mut below: Vec<Ranges> = std::vec![Vec::new()];
    for cs in &change_sets {
        let next = ranges::union(below.last().expect("non-empty"), cs);
        below.push(next);
    }

    // Siblings of every changed image (C1..CN).
    let chain_canon: Vec<PathBuf> = paths.iter().map(|p| canonical(p)).collect();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in [&target, &paths[0]] {
        dirs.push(directory_of(p));
    }
    dirs.extend(options.search_dirs.iter().cloned());
    let mut siblings: Vec<(Sibling, usize)> = Vec::new();
    for k in 1..=depth {
        let opener = options.file_opener.clone().unwrap_or_default();
        for s in children_through(&opener, &paths[k], guids[k], &dirs, &chain_canon) {
            siblings.push((Sibling { path: s, parent: paths[k].clone(), bytes_copied: 0 }, k));
        }
    }
    if !siblings.is_empty() && options.siblings == SiblingPolicy::Refuse {
        let names: Vec<String> = siblings
            .iter()
            .map(|(s, _)| std::format!("{} (child of {})", s.path.display(), s.parent.display()))
            .collect();
        return Err(Error::Refused(std::format!(
            "merging {} into {} would change the parent of {} other image(s), which would then be invalid: {}. \
             Use --preserve-siblings to keep them valid, or --force to break them",
            child.display(),
            target.display(),
            names.len(),
            names.join(", ")
        )));
    }

    // A sibling of another size cannot receive the merged view.
    if options.siblings == SiblingPolicy::Preserve {
        for (s, k) in &siblings {
            let size = OpenOptions::new().without_parent().open(&s.path)?.virtual_size();
            if size != sizes[*k] {
                return Err(Error::invalid(std::format!(
                    "{}: its virtual size ({size} bytes) differs from its parent {}'s ({} bytes), so it cannot be \
                     preserved; nothing was changed",
                    s.path.display(),
                    s.parent.display(),
                    sizes[*k]
                )));
            }
        }
    }
    let mut total: u64 = ranges::total(&below[depth]);
    if options.siblings == SiblingPolicy::Preserve {
        total += siblings.iter().map(|(_, k)| ranges::total(&below[*k])).sum::<u64>();
    }
    let mut done = 0u64;
    progress(done, total);
    let mut step = |n: u64| {
        done += n;
        progress(done.min(total), total);
    };

    // 1. Siblings receive what they would lose, before anything else changes.
    if options.siblings == SiblingPolicy::Preserve {
        for (s, k) in &mut siblings {
            let mut sib = options.opener().writable(true).open(&s.path)?;
            let own = sib.change_set()?;
            let needed = ranges::difference(&below[*k], &own);
            if !needed.is_empty() {
                sib.keep_data_write_guid()?;
                s.bytes_copied =
                    copy_from_parent(&mut sib, &needed, &mut step).map_err(|e| e.in_file(s.path.display()))?;
            }
            sib.close().map_err(|e| e.in_file(s.path.display()))?;
        }
    }

    // 2. The data into the target, read through the child's view; durable before anything is emptied.
    let union = below[depth].clone();
    let bytes_merged = {
        let mut t = options.opener().writable(true).open(&target)?;
        let n = copy_ranges(&leaf, &mut t, &union, &mut step).map_err(|e| e.in_file(target.display()))?;
        t.close().map_err(|e| e.in_file(target.display()))?;
        n
    };
    drop(leaf);
    let target_guid = options.opener().open(&target)?.data_write_guid();

    // 3. Empty the merged images and link them to the target.
    let mut new_guids = guids.clone();
    new_guids[depth] = target_guid;
    for (k, p) in paths.iter().enumerate().take(depth) {
        let mut d = options.files(OpenOptions::new().writable(true).without_parent()).open(p)?;
        let loc = locator_for(p, &target, &target_guid)?;
        d.empty_and_relink(loc, k > 0).map_err(|e| e.in_file(p.display()))?;
        new_guids[k] = d.data_write_guid();
        d.close().map_err(|e| e.in_file(p.display()))?;
    }

    // 4. Re-link the preserved siblings to their parent's new DataWriteGuid.
    if options.siblings == SiblingPolicy::Preserve {
        for (s, k) in &siblings {
            let mut d = options.files(OpenOptions::new().writable(true).without_parent()).open(&s.path)?;
            let mut loc = d.parent_locator().cloned().expect("a sibling has a locator");
            loc.set(PARENT_LINKAGE, braced_guid(&new_guids[*k]));
            loc.remove(PARENT_LINKAGE2);
            d.relink(loc, false).map_err(|e| e.in_file(s.path.display()))?;
            d.close().map_err(|e| e.in_file(s.path.display()))?;
        }
    }

    let siblings_broken =
        options.siblings == SiblingPolicy::Force && siblings.iter().any(|(_, k)| new_guids[*k] != guids[*k]);
    Ok(MergeReport {
        target,
        merged: paths[..depth].to_vec(),
        bytes_merged,
        siblings: siblings.into_iter().map(|(s, _)| s).collect(),
        siblings_broken,
    })
}

/// Points `child` at `parent` (a moved or copied parent). Refuses when the
/// parent's DataWriteGuid differs from the child's linkage unless
/// `ignore_id_mismatch`; then the child's content may change, so its own
/// DataWriteGuid changes too.
pub fn set_parent(child: &Path, parent: &Path, ignore_id_mismatch: bool) -> Result<()> {
    set_parent_through(&FileOpener::default(), child, parent, ignore_id_mismatch)
}

/// [`set_parent`], opening the files (the parent and its own chain too)
/// through `opener`.
pub fn set_parent_through(opener: &FileOpener, child: &Path, parent: &Path, ignore_id_mismatch: bool) -> Result<()> {
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
    c.relink(new_loc, !matches).map_err(|e| e.in_file(child.display()))?;
    c.close().map_err(|e| e.in_file(child.display()))
}
