//! The operations the tree crash tests interrupt, and what each image must
//! present while one runs and once it completed — computed from the
//! models, never from the library's own reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use vhdx::io::FileOpener;
use vhdx::ops::merge::{interrupted_merge, merge, set_parent_through, MergeOptions, MergeRun, SiblingPolicy};
use vhdx::OpenOptions;

use super::check::{Content, Expect, Files};
use super::model::*;
use crate::support::MIB;

/// One operation on a tree member.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `merge CHILD --depth N` with a sibling policy.
    Merge { child: usize, depth: usize, policy: SiblingPolicy },
    /// `set-parent CHILD PARENT [--ignore-id-mismatch]`.
    SetParent { child: usize, parent: usize, ignore_id_mismatch: bool },
    /// `compact IMAGE`.
    Compact(usize),
    /// `resize IMAGE --size SIZE` (without `--allow-shrink`).
    Resize { image: usize, size: u64 },
}

/// An operation on a tree, with the contract it must keep.
pub struct Workload {
    pub name: String,
    pub model: Arc<Model>,
    pub tree: Tree,
    pub op: Op,
    /// Every member, in every crash state, once recovered.
    pub during: BTreeMap<usize, Expect>,
    /// Every member once the operation completed (run whole, or re-run).
    pub after: BTreeMap<usize, Expect>,
    /// A merge: every member once the merge was rolled back (`check
    /// --repair` before its target changed) — as before it began, linked.
    pub rolled_back: Option<BTreeMap<usize, Expect>>,
}

impl Workload {
    /// The merge's options, opening files through `opener`.
    pub fn merge_options(&self, opener: Option<FileOpener>) -> Option<MergeOptions> {
        match self.op {
            Op::Merge { depth, policy, .. } => {
                Some(MergeOptions::default().depth(depth).siblings(policy).file_opener(opener))
            }
            _ => None,
        }
    }

    /// The image the operation is run on.
    pub fn subject(&self) -> usize {
        match self.op {
            Op::Merge { child, .. } | Op::SetParent { child, .. } => child,
            Op::Compact(image) | Op::Resize { image, .. } => image,
        }
    }

    /// Runs the operation on the tree at `root`, through `opener` (the
    /// filesystem when `None`); a merge says how its run went.
    pub fn run(&self, root: &Path, opener: Option<FileOpener>) -> vhdx::Result<Option<MergeRun>> {
        let path = |i: usize| root.join(IMAGES[i].name);
        let files = |o: OpenOptions| match &opener {
            Some(f) => o.file_opener(f.clone()),
            None => o,
        };
        match self.op {
            Op::Merge { child, .. } => {
                let options = self.merge_options(opener.clone()).expect("a merge");
                merge(&path(child), &options).map(|r| Some(r.run))
            }
            Op::SetParent { child, parent, ignore_id_mismatch } => {
                set_parent_through(&opener.clone().unwrap_or_default(), &path(child), &path(parent), ignore_id_mismatch)
                    .map(|_| None)
            }
            Op::Compact(i) => {
                let mut d = files(OpenOptions::new().writable(true)).open(path(i))?;
                d.compact()?;
                d.close().map(|_| None)
            }
            Op::Resize { image, size } => {
                let mut d = files(OpenOptions::new().writable(true)).open(path(image))?;
                d.resize(size, false)?;
                d.close().map(|_| None)
            }
        }
    }

    /// Checks beyond each image's content once the operation completed (or
    /// a merge was rolled back): a compacted file is smaller; after a merge
    /// no image announces a parent's next DataWriteGuid and the child
    /// records no unfinished merge.
    pub fn check_result(&self, files: &Files<'_>) -> Result<(), String> {
        if let Op::Compact(i) = self.op {
            let (before, after) = (self.tree.files[self.tree.slot(i)].len(), files.bytes[self.tree.slot(i)].len());
            if after >= before {
                return Err(format!("{}: the compacted file is {after} bytes, it was {before}", IMAGES[i].name));
            }
        }
        if let Some(options) = self.merge_options(Some(files.reader())) {
            for (slot, &i) in self.tree.members.iter().enumerate() {
                if let Some(g) = files.alone(slot).ok().and_then(|d| d.parent_locator()?.parent_linkage2()) {
                    return Err(format!("{}: parent_linkage2 is left in its locator — {g}", IMAGES[i].name));
                }
            }
            let child = files.root.join(IMAGES[self.subject()].name);
            match interrupted_merge(&child, &options) {
                Ok(None) => {}
                Ok(Some(m)) => return Err(format!("the child still records an unfinished merge — {m}")),
                Err(e) => return Err(format!("the child's merge record cannot be read — {e}")),
            }
        }
        Ok(())
    }
}

/// The members of the small tree (no `mid`), and of the whole one.
pub const SMALL: [usize; 6] = [BASE, CHILD, GRANDCHILD, SIB, SIBCHILD, EMPTY];
pub const WHOLE: [usize; 11] = [BASE, CHILD, GRANDCHILD, SIB, SIBCHILD, EMPTY, MID, LEAF, MIDSIB, LEAFKID, MIDSIBKID];

fn unchanged(model: &Model, members: &[usize]) -> BTreeMap<usize, Expect> {
    members.iter().map(|&i| (i, Expect::same(&model.views[i]))).collect()
}

/// Whether `i` descends from `ancestor` (or is it).
fn descends(i: usize, ancestor: usize) -> bool {
    let mut at = Some(i);
    while let Some(j) = at {
        if j == ancestor {
            return true;
        }
        at = IMAGES[j].parent;
    }
    false
}

fn label(policy: SiblingPolicy) -> &'static str {
    match policy {
        SiblingPolicy::Refuse => "refuse",
        SiblingPolicy::Preserve => "--preserve-siblings",
        SiblingPolicy::Force => "--force",
        other => unreachable!("a sibling policy this test does not know: {other:?}"),
    }
}

/// `merge CHILD --depth N`: the target (and the intermediates C1..C(N-1))
/// present, sector by sector, their old or their merged content; C0 exactly
/// its old content; siblings (other children of a changed image) and every
/// image below them their old content — or, under `--force`, a linkage
/// refusal once their parent changed. Once complete: the target presents its
/// old content overlaid with C0's view on the union of the change sets of
/// C0..C(N-1); C0..C(N-1) present that (C0: its own old view, which is the
/// same) and are empty, linked to an image further up the chain; preserved siblings
/// present their old content and are linked to the new DataWriteGuid.
pub fn merge_workload(sector: u64, members: &[usize], child: usize, depth: usize, policy: SiblingPolicy) -> Workload {
    let model = Arc::new(Model::new(sector));
    let tree = build(&model, members);
    let mut chain = vec![child];
    for _ in 0..depth {
        chain.push(IMAGES[*chain.last().unwrap()].parent.expect("the chain is deep enough"));
    }
    let target = chain[depth];
    let merged_from = &chain[..depth];
    let mask = model.union_owned(merged_from);
    let merged = Arc::new(model.overlay(&model.views[target], &model.views[child], &mask));
    assert!(merged == model.views[child], "the model: merging presents C0's view");
    let mut during = unchanged(&model, members);
    let mut after = unchanged(&model, members);
    for (k, &c) in chain.iter().enumerate() {
        if k > 0 {
            during.insert(c, Expect::new(Content::OldOrNew(model.views[c].clone(), merged.clone())));
            after.insert(c, Expect::same(&merged));
        }
        if k < depth {
            // Linked to the next image of the chain, or (as diskpart does,
            // leaving the emptied intermediates aside) to one further up.
            after.insert(c, Expect::same(&merged).empty().linked().parent_among(&chain[k + 1..]));
        }
    }
    let rolled_back = members
        .iter()
        .map(|&i| {
            (
                i,
                if IMAGES[i].parent.is_some() {
                    Expect::same(&model.views[i]).linked()
                } else {
                    Expect::same(&model.views[i])
                },
            )
        })
        .collect();
    let changed = &chain[1..];
    for &i in members {
        if chain.contains(&i) {
            continue;
        }
        let Some(&hung_off) = changed.iter().find(|&&c| {
            IMAGES[i].parent.is_some_and(|p| p == c)
                || members.iter().any(|&s| IMAGES[s].parent == Some(c) && !chain.contains(&s) && descends(i, s))
        }) else {
            // Below C0: C0 keeps its DataWriteGuid, so these stay linked.
            if descends(i, child) {
                after.insert(i, Expect::same(&model.views[i]).linked());
            }
            continue;
        };
        let is_sibling = IMAGES[i].parent == Some(hung_off);
        match policy {
            SiblingPolicy::Preserve if is_sibling => {
                after.insert(i, Expect::same(&model.views[i]).linked().parent(hung_off));
            }
            // Below a preserved sibling, which keeps its own DataWriteGuid.
            SiblingPolicy::Preserve => {
                after.insert(i, Expect::same(&model.views[i]).linked());
            }
            SiblingPolicy::Force => {
                during.insert(i, Expect::same(&model.views[i]).may_break(hung_off));
                after.insert(i, Expect::same(&model.views[i]).may_break(hung_off));
            }
            _ => {}
        }
    }
    let name = format!(
        "merge {}{} {} ({} files, {sector}-byte sectors)",
        IMAGES[child].name,
        if depth > 1 { format!(" --depth {depth}") } else { String::new() },
        label(policy),
        members.len()
    );
    Workload {
        name,
        model,
        tree,
        op: Op::Merge { child, depth, policy },
        during,
        after,
        rolled_back: Some(rolled_back),
    }
}

/// `set-parent CHILD COPY`: the child now names `moved/base.vhdx`, a byte
/// copy of its parent; every image presents what it did, throughout.
pub fn set_parent_to_copy(sector: u64) -> Workload {
    let model = Arc::new(Model::new(sector));
    let members: Vec<usize> = SMALL.iter().copied().chain([COPY]).collect();
    let tree = build(&model, &members);
    let during = unchanged(&model, &members);
    let mut after = during.clone();
    after.insert(CHILD, Expect::same(&model.views[CHILD]).linked().parent(COPY));
    after.insert(GRANDCHILD, Expect::same(&model.views[GRANDCHILD]).linked().parent(CHILD));
    let name = format!("set-parent child moved/base ({} files, {sector}-byte sectors)", members.len());
    Workload {
        name,
        model,
        tree,
        op: Op::SetParent { child: CHILD, parent: COPY, ignore_id_mismatch: false },
        during,
        after,
        rolled_back: None,
    }
}

/// `set-parent SIB OTHER --ignore-id-mismatch`: `sib` now presents `other`
/// under its own sectors, wholly the old view or wholly the new one while it
/// runs; its child may be refused by linkage once `sib`'s DataWriteGuid
/// changed (that is what the option means), and if it opens it presents its
/// own sectors over what `sib` presents.
pub fn set_parent_ignoring_id(sector: u64) -> Workload {
    let model = Arc::new(Model::new(sector));
    let members: Vec<usize> = SMALL.iter().copied().chain([OTHER]).collect();
    let tree = build(&model, &members);
    let new_sib = Arc::new(model.overlay(&model.views[OTHER], &model.views[SIB], &model.owned[SIB]));
    let new_kid = Arc::new(model.overlay(&new_sib, &model.views[SIBCHILD], &model.owned[SIBCHILD]));
    assert!(new_sib != model.views[SIB], "the model: other changes what sib presents");
    let mut during = unchanged(&model, &members);
    during.insert(SIB, Expect::new(Content::Either(model.views[SIB].clone(), new_sib.clone())));
    during.insert(SIBCHILD, Expect::same(&model.views[SIBCHILD]).may_break(SIB));
    let mut after = unchanged(&model, &members);
    after.insert(SIB, Expect::same(&new_sib).linked().parent(OTHER));
    after.insert(SIBCHILD, Expect::same(&new_kid).may_break(SIB));
    let name = format!("set-parent sib other --ignore-id-mismatch ({} files, {sector}-byte sectors)", members.len());
    Workload {
        name,
        model,
        tree,
        op: Op::SetParent { child: SIB, parent: OTHER, ignore_id_mismatch: true },
        during,
        after,
        rolled_back: None,
    }
}

/// `compact IMAGE` of a tree member with children: nothing any image
/// presents changes, every link holds, and the file gets smaller.
pub fn compact_workload(sector: u64, image: usize) -> Workload {
    let model = Arc::new(Model::new(sector));
    let tree = build(&model, &SMALL);
    let during = unchanged(&model, &SMALL);
    let mut after = during.clone();
    for (&i, e) in after.iter_mut() {
        if IMAGES[i].parent.is_some() {
            *e = e.clone().linked();
        }
    }
    let name = format!("compact {} ({} files, {sector}-byte sectors)", IMAGES[image].name, SMALL.len());
    Workload { name, model, tree, op: Op::Compact(image), during, after, rolled_back: None }
}

/// `resize LEAF --size SIZE`: the leaf presents its old content cut or
/// extended with zeros, at its old size or the new one while it runs;
/// every other image presents what it did.
pub fn resize_workload(sector: u64, image: usize, size: u64) -> Workload {
    let model = Arc::new(Model::new(sector));
    let tree = build(&model, &SMALL);
    let old = &model.views[image];
    let mut new = old[..size.min(SIZE) as usize].to_vec();
    new.resize(size as usize, 0);
    let mut during = unchanged(&model, &SMALL);
    during.insert(image, Expect::new(Content::Resized { old: old.clone(), new_size: size }));
    let mut after = unchanged(&model, &SMALL);
    after.insert(image, Expect::same(&Arc::new(new)).linked());
    let verb = if size > SIZE { "grow" } else { "shrink" };
    let name =
        format!("resize {} ({verb} to {size}; {} files, {sector}-byte sectors)", IMAGES[image].name, SMALL.len());
    Workload { name, model, tree, op: Op::Resize { image, size }, during, after, rolled_back: None }
}

/// The growth and the shrink of the resize workloads.
pub const GROWN: u64 = 7 * MIB + 8192;
pub const SHRUNK: u64 = 4 * MIB + 3 * 4096;
