//! Merging and re-linking VHD chains: the same operations as for VHDX, in
//! an order that fits what the VHD format can record.
//!
//! A VHD child names its parent by the parent's footer unique ID, which
//! writes do not change, and records no version of its data (Windows writes
//! 0 as the parent's time stamp). So a sibling — another child of an image
//! the merge changes — could never tell that its parent changed under it:
//! it would open and read wrong data. Hence:
//!
//! - **Siblings** are found as for VHDX (the directories of the target and
//!   the child, and any extra directories). By default the merge refuses
//!   and names them; with [`SiblingPolicy::Preserve`] each first receives,
//!   from its own view, every sector the merge will change under it that it
//!   does not hold, so it presents the same bytes after; and
//!   [`SiblingPolicy::Force`] is refused when there are siblings, because
//!   breaking them here would be silent.
//! - **Nothing is announced**, as nothing can be: no image changes its
//!   unique ID, so every link stays valid throughout.
//!
//! ## Order, and what an interruption leaves
//!
//! Chain `C0` (the child) → `C1` → … → `CN` (the target). Each step is
//! durable before the next:
//!
//! 1. **Plan** (read-only): the chain, what each of `C0..C(N-1)` holds, the
//!    siblings; every refusal happens here.
//! 2. **Siblings** (preserved) receive their own view of the sectors that
//!    change under them. *Interrupted:* every image presents what it did.
//! 3. **Target** receives `C0`'s view of everything `C0..C(N-1)` hold, each
//!    sector read from its nearest holder. *Interrupted:* `C0` and every
//!    sibling present what they did (they hold, or are given, every sector
//!    that changed); the target holds, sector by sector, its old or its
//!    merged content.
//! 4. **Emptied**: `C(N-1)` first, down to `C1`, then `C0`: each marks its
//!    blocks unused. Nearest holders are emptied last, so `C0`'s view never
//!    changes: a sector an emptied image held is in the target, as the
//!    nearest holder below had it.
//! 5. **Re-linked** (depth 2 and more): `C0` is linked to the target (the
//!    emptied intermediates stay between them otherwise, presenting the
//!    target), through the crash-safe switch of [`crate::vhd`]'s re-link.
//!
//! Running the same merge again after an interruption finishes it: steps 2
//! to 4 can run again over their own result (they copy what is already
//! there, or empty what is empty), and the chain keeps its shape until the
//! last step. After that step the child is empty and its chain shorter than
//! the depth: a re-run reports the merge done ([`MergeRun::AlreadyDone`]),
//! as it does for any empty child whose chain is too short (there is
//! nothing to merge).

use alloc::string::{String, ToString};
use alloc::vec;
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::{canonical, directory_of, MergeOptions, MergeReport, MergeRun, Sibling, SiblingPolicy};
use crate::chain::vhd::{open_chain, open_file, vhd_locators};
use crate::error::{Error, Result};
use crate::format::vhd::VhdType;
use crate::io::{FileOpener, LockSet};
use crate::ops::convert::ImageFormat;
use crate::ops::link::nearest_holders;
use crate::ops::ranges::{self, Ranges};
use crate::vhd::VhdDisk;
use crate::{Extent, Guid};

/// Bytes copied at a time.
const CHUNK: u64 = 1 << 20;

/// The runs `d` (opened alone) stores itself.
fn own_ranges(d: &VhdDisk) -> Result<Ranges> {
    let runs = d.map()?.into_iter().filter(|e| matches!(e.extent, Extent::Data { .. }));
    Ok(ranges::normalize(runs.map(|e| (e.offset, e.length)).collect()))
}

/// Copies `runs` from `from` (`None`: what `to` itself presents) into
/// `to`, a chunk at a time.
fn copy(
    from: Option<&VhdDisk>,
    to: &mut VhdDisk,
    runs: &[(u64, u64)],
    done: &mut u64,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    for &(start, len) in runs {
        let mut pos = start;
        while pos < start + len {
            let n = (start + len - pos).min(CHUNK) as usize;
            match from {
                Some(from) => from.read_at(&mut buf[..n], pos)?,
                None => to.read_at(&mut buf[..n], pos)?,
            }
            to.write_at(&buf[..n], pos)?;
            pos += n as u64;
            *done += n as u64;
            progress(*done, total);
        }
    }
    Ok(())
}

/// Runs `f` on the writable `d` and flushes it; on failure gives it up
/// unflushed, as a crash would (a re-run finishes what it left).
fn closing<T>(mut d: VhdDisk, path: &Path, f: impl FnOnce(&mut VhdDisk) -> Result<T>) -> Result<T> {
    match f(&mut d).and_then(|v| d.flush().map(|()| v)) {
        Ok(v) => Ok(v),
        Err(e) => {
            drop(d.abandon());
            Err(e.in_file(path.display()))
        }
    }
}

/// [`super::merge_with_progress`] for a VHD child.
pub(super) fn merge(child: &Path, options: &MergeOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<MergeReport> {
    let depth = options.depth.max(1);
    if options.confine_to.is_some() {
        return Err(Error::Refused(format!(
            "{}: confining parents to directories is not available for VHD chains; nothing was changed",
            child.display()
        )));
    }
    // The chain's files, found with shared locks that are released before
    // the exclusive ones are taken; held until the merge returns.
    let (opener, locks) = match &options.file_opener {
        Some(o) => (o.clone(), None),
        None => {
            let paths = open_chain(&FileOpener::default(), child, false, 0)?.chain_paths();
            let locks = LockSet::new();
            for p in paths.iter().take(depth + 1) {
                locks.lock(Path::new(p), true)?;
            }
            (locks.opener(), Some(locks))
        }
    };

    // 1. Plan.
    let leaf = open_chain(&opener, child, false, 0)?;
    let mut paths: Vec<PathBuf> = leaf.chain_paths().into_iter().map(PathBuf::from).collect();
    if paths.len() <= depth {
        // The last step of a merge of more than one level links the child
        // to the target: an empty child that got there has been merged.
        if paths.len() > 1 && own_ranges(&leaf)?.is_empty() {
            return Ok(MergeReport {
                target: PathBuf::from(paths.last().expect("not empty")),
                merged: vec![child.to_path_buf()],
                bytes_merged: 0,
                siblings: Vec::new(),
                siblings_broken: false,
                run: MergeRun::AlreadyDone,
            });
        }
        return Err(Error::invalid(format!(
            "{}: cannot merge to depth {depth}: the chain has only {} ancestor(s)",
            child.display(),
            paths.len() - 1
        )));
    }
    paths.truncate(depth + 1);
    paths[0] = child.to_path_buf();
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut sets: Vec<Ranges> = Vec::new();
    let mut level = Some(&leaf);
    while let Some(d) = level.filter(|_| ids.len() <= depth) {
        ids.push(d.footer().unique_id);
        sizes.push(d.virtual_size());
        if sets.len() < depth {
            sets.push(own_ranges(d)?);
        }
        level = d.parent();
    }
    drop(leaf);
    if let Some(k) = (1..=depth).find(|&k| sizes[k] != sizes[0]) {
        return Err(Error::invalid(format!(
            "{}: its virtual size ({} bytes) differs from that of {} ({} bytes), so it cannot be merged into it",
            child.display(),
            sizes[0],
            paths[k].display(),
            sizes[k]
        )));
    }
    // below[k]: what changes in Ck's view, the union of what C0..C(k-1) hold.
    let mut below: Vec<Ranges> = vec![Vec::new()];
    for s in &sets {
        let next = ranges::union(below.last().expect("non-empty"), s);
        below.push(next);
    }
    let chain_canon: Vec<PathBuf> = paths.iter().map(|p| canonical(p)).collect();
    let mut dirs = vec![directory_of(&paths[depth]), directory_of(&paths[0])];
    dirs.extend(options.search_dirs.iter().cloned());
    let mut siblings: Vec<(Sibling, usize)> = Vec::new();
    for k in 1..=depth {
        for s in super::children_through(&opener, &paths[k], &[ids[k]], &dirs, &chain_canon) {
            siblings.push((Sibling { path: s, parent: paths[k].clone(), bytes_copied: 0 }, k));
        }
    }
    let names = || -> Vec<String> {
        siblings.iter().map(|(s, _)| format!("{} (child of {})", s.path.display(), s.parent.display())).collect()
    };
    match options.siblings {
        _ if siblings.is_empty() => {}
        SiblingPolicy::Refuse => {
            return Err(Error::Refused(format!(
                "merging {} into {} would change the parent of {} other image(s), which would then read wrong data: \
                 {}. Use --preserve-siblings to keep them as they are",
                child.display(),
                paths[depth].display(),
                siblings.len(),
                names().join(", ")
            )))
        }
        SiblingPolicy::Force => {
            return Err(Error::Refused(format!(
                "merging {} into {} would change the parent of {}; a VHD records no version of its parent, so these \
                 would go on opening and read wrong data without any error. --force is refused for VHD chains: use \
                 --preserve-siblings, or delete them first; nothing was changed",
                child.display(),
                paths[depth].display(),
                names().join(", ")
            )))
        }
        SiblingPolicy::Preserve => {}
    }
    let mut needed: Vec<Ranges> = Vec::new();
    for (s, k) in &siblings {
        if let Some(locks) = &locks {
            locks.lock(&s.path, true)?;
        }
        let d = open_file(&opener, &s.path, false)?;
        if d.virtual_size() != sizes[*k] {
            return Err(Error::invalid(format!(
                "{}: its virtual size ({} bytes) differs from its parent {}'s ({} bytes), so it cannot be \
                 preserved; nothing was changed",
                s.path.display(),
                d.virtual_size(),
                s.parent.display(),
                sizes[*k]
            )));
        }
        needed.push(ranges::difference(&below[*k], &own_ranges(&d)?));
    }
    let holders = nearest_holders(&sets);
    let bytes = |r: &[(u64, u64)]| r.iter().map(|&(_, l)| l).sum::<u64>();
    let total = needed.iter().map(|r| bytes(r)).sum::<u64>() + holders.iter().map(|&(_, l, _)| l).sum::<u64>();
    let mut done = 0u64;

    // 2. Siblings receive their own view of what changes under them.
    for ((s, _), runs) in siblings.iter_mut().zip(&needed) {
        let d = open_chain(&opener, &s.path, true, 0)?;
        let before = done;
        closing(d, &s.path, |d| copy(None, d, runs, &mut done, total, progress))?;
        s.bytes_copied = done - before;
    }

    // 3. The target receives C0's view, each sector from its nearest holder.
    let levels: Vec<VhdDisk> = paths[..depth].iter().map(|p| open_file(&opener, p, false)).collect::<Result<_>>()?;
    let target = open_chain(&opener, &paths[depth], true, 0)?;
    let merged_from = done;
    closing(target, &paths[depth], |t| {
        for &(start, len, k) in &holders {
            copy(Some(&levels[k]), t, &[(start, len)], &mut done, total, progress)?;
        }
        Ok(())
    })?;
    let bytes_merged = done - merged_from;
    let target_footer = open_file(&opener, &paths[depth], false)?.footer().clone();
    drop(levels);

    // 4. Emptied, nearest the target first, the child last.
    let mut order: Vec<usize> = (1..depth).rev().collect();
    order.push(0);
    for k in order {
        let d = open_file(&opener, &paths[k], true)?;
        closing(d, &paths[k], VhdDisk::clear_blocks)?;
    }

    // 5. The child links to the target.
    if depth > 1 {
        let (locators, absolute) = vhd_locators(child, &paths[depth])?;
        let d = open_file(&opener, child, true)?;
        closing(d, child, |d| d.relink(&target_footer, &absolute, &locators, None))?;
    }
    drop(locks);
    Ok(MergeReport {
        target: paths[depth].clone(),
        merged: paths[..depth].to_vec(),
        bytes_merged,
        siblings: siblings.into_iter().map(|(s, _)| s).collect(),
        siblings_broken: false,
        run: MergeRun::Started,
    })
}

/// [`super::set_parent_through`] for a VHD child: the parent must be a VHD
/// with the unique ID the child names (unless `ignore_id_mismatch`; then the
/// child takes a new unique ID, as its content may change, so its own
/// children are refused rather than shown other data).
pub(super) fn set_parent(opener: &FileOpener, child: &Path, parent: &Path, ignore_id_mismatch: bool) -> Result<()> {
    if ImageFormat::detect_through(opener, parent) != ImageFormat::Vhd {
        return Err(Error::invalid(format!(
            "{}: a VHD's parent must be a VHD, and {} is not one (chains mix no formats, as in Windows)",
            child.display(),
            parent.display()
        )));
    }
    let p = open_chain(opener, parent, false, 0)?;
    let c = open_file(opener, child, true)?;
    let Some(expected) =
        c.dynamic_header().filter(|_| c.disk_type() == VhdType::Differencing).map(|h| h.parent_unique_id)
    else {
        return Err(Error::invalid(format!("{}: not a differencing disk", child.display())));
    };
    let found = p.footer().unique_id;
    let matches = expected == found;
    if !matches && !ignore_id_mismatch {
        return Err(
            Error::ParentMismatch { parent: parent.display().to_string(), expected, found }.in_file(child.display())
        );
    }
    if p.virtual_size() != c.virtual_size() {
        return Err(Error::invalid(format!(
            "{}: the parent {} has another size ({} bytes, the child {})",
            child.display(),
            parent.display(),
            p.virtual_size(),
            c.virtual_size()
        )));
    }
    let (locators, absolute) = vhd_locators(child, parent)?;
    let footer = p.footer().clone();
    drop(p);
    closing(c, child, |c| c.relink(&footer, &absolute, &locators, (!matches).then(Guid::new_v4)))
}
