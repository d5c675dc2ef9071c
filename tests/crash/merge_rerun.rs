//! A merge crashed after each of its storage operations, then finished by a
//! re-run or by `check --repair` (`recover_merge`), on whole trees, every
//! image compared with byte-array models built from the writes that made
//! the tree (never from the library's reads).
//!
//! Trees (all files on one [`FaultClock`], opened through a [`FileOpener`]):
//!
//! - depth 1: `base` ← `child` ← `gkid`; `base` ← `sib` ← `sibkid`;
//! - depth 2: `base` ← `mid` ← `child` ← `gkid`; `mid` ← `sib` ← `sibkid`;
//!   `base` ← `sib2`.
//!
//! `child` is merged with `--preserve-siblings` or `--force`. For every crash
//! point and every crash state of the file that had unflushed writes (the
//! others whole or lost), each image is recovered (log replayed) and must
//! check clean; then
//!
//! - every image opens with its parent resolved, except, under `--force`,
//!   a sibling (and what lies below it) once its parent changed;
//! - every image that is not a changed image presents exactly its old view;
//! - the target and `mid` present, sector by sector, their old or their
//!   merged view;
//! - finishing — the same merge again, or `recover_merge` (which rolls back
//!   to exactly the old views or finishes) followed by the merge — leaves
//!   exactly the merge's result, no `parent_linkage2` and no unfinished
//!   record; and one more run finds it done and changes no byte.
//!
//! At one crash point per tree (every eighth in the long mode) the re-run
//! that finishes is itself crashed after each of its operations, and those
//! states are checked and finished the same way.
//!
//! `VHDX_MERGE_CRASH_LONG=1` adds more crash states per point (prefixes,
//! tears, reordered subsets) and 4096-byte sectors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vhdx::io::{CrashState, FaultClock, FaultStorage, FileOpener};
use vhdx::ops::merge::{interrupted_merge, merge, recover_merge, MergeOptions, MergeRun, Recovery, SiblingPolicy};
use vhdx::{CreateOptions, Disk, ErrorKind, IoError, MemStorage, OpenOptions, Storage};

use crate::support::{crash_states, for_each_crash_point, pattern, read_all, Budget, MIB};
use crate::verify::check_clean;

const SIZE: u64 = 4 * MIB;

/// One image: its name, its parent, and the writes that made it.
struct Spec {
    name: &'static str,
    parent: Option<&'static str>,
    writes: Vec<(u64, usize)>,
}

fn spec(name: &'static str, parent: Option<&'static str>, writes: &[(u64, usize)]) -> Spec {
    Spec { name, parent, writes: writes.to_vec() }
}

/// The tree on disk, and the models of every view before and after.
pub struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    depth: usize,
    policy: SiblingPolicy,
    sector: usize,
    names: Vec<&'static str>,
    files: BTreeMap<&'static str, Vec<u8>>,
    before: BTreeMap<&'static str, Vec<u8>>,
    after: BTreeMap<&'static str, Vec<u8>>,
    /// The target and the intermediates: old or merged, sector by sector.
    changed: Vec<&'static str>,
    /// Under `--force`: siblings and their descendants, which may break.
    breakable: Vec<&'static str>,
}

fn seed_of(name: &str, i: usize) -> u64 {
    name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) + i as u64
}

pub fn build(depth: usize, policy: SiblingPolicy, sector: u32) -> Tree {
    let m = MIB;
    let mut specs = vec![spec("base", None, &[(0, 300_000), (2 * m - 700, 300_000), (3 * m + 4096, 300_000)])];
    let child_parent = if depth == 2 {
        specs.push(spec("mid", Some("base"), &[(m - 5000, 9000), (2 * m + 100, 40_000), (3 * m + 1536, 1024)]));
        "mid"
    } else {
        "base"
    };
    specs.push(spec(
        "child",
        Some(child_parent),
        &[(m - 1000, 5000), (2 * m + 77, 70_000), (3 * m + 512, 512), (4 * m - 9000, 9000)],
    ));
    specs.push(spec("gkid", Some("child"), &[(10, 100), (2 * m + 50_000, 4096)]));
    specs.push(spec("sib", Some(child_parent), &[(m, 2048), (2 * m + 40_000, 60_000), (3 * m + 3, 100)]));
    specs.push(spec("sibkid", Some("sib"), &[(2 * m + 60_000, 100), (0, 512)]));
    if depth == 2 {
        specs.push(spec("sib2", Some("base"), &[(m - 4000, 8000), (3 * m + 1000, 3000)]));
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let path = |n: &str| root.join(format!("{n}.vhdx"));
    let mut before: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    let mut held: BTreeMap<&'static str, Vec<bool>> = BTreeMap::new();
    let sectors = (SIZE / sector as u64) as usize;
    for s in &specs {
        let mut disk = match s.parent {
            None => Disk::create(
                path(s.name),
                &CreateOptions::dynamic(SIZE).block_size(MIB as u32).logical_sector_size(sector),
            )
            .unwrap(),
            Some(p) => Disk::create_differencing(path(s.name), path(p), Some(MIB as u32)).unwrap(),
        };
        let mut view = s.parent.map_or_else(|| vec![0u8; SIZE as usize], |p| before[p].clone());
        let mut own = vec![false; sectors];
        for (i, &(at, len)) in s.writes.iter().enumerate() {
            let data = pattern(seed_of(s.name, i), len);
            disk.write_at(&data, at).unwrap();
            view[at as usize..at as usize + len].copy_from_slice(&data);
            let sector = sector as usize;
            own[at as usize / sector..=(at as usize + len - 1) / sector].fill(true);
        }
        disk.close().unwrap();
        before.insert(s.name, view);
        held.insert(s.name, own);
    }

    // The merge's result, from the models: the target is its old view with
    // every sector some merged image holds taken from the child's view.
    let chain: Vec<&'static str> = if depth == 2 { vec!["child", "mid", "base"] } else { vec!["child", "base"] };
    let target = chain[depth];
    let mut merged = before[target].clone();
    let s = sector as usize;
    for x in 0..sectors {
        if chain[..depth].iter().any(|n| held[n][x]) {
            merged[x * s..(x + 1) * s].copy_from_slice(&before["child"][x * s..(x + 1) * s]);
        }
    }
    assert_eq!(merged, before["child"], "the model: the child's view is the merged target's");
    let mut after = before.clone();
    for n in &chain {
        after.insert(n, merged.clone());
    }
    let names: Vec<&'static str> = specs.iter().map(|s| s.name).collect();
    let files = names.iter().map(|&n| (n, std::fs::read(path(n)).unwrap())).collect();
    let breakable = if policy == SiblingPolicy::Force {
        names.iter().copied().filter(|n| n.starts_with("sib")).collect()
    } else {
        Vec::new()
    };
    Tree {
        _dir: dir,
        root,
        depth,
        policy,
        sector: s,
        names,
        files,
        before,
        after,
        changed: chain[1..].to_vec(),
        breakable,
    }
}

impl Tree {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.vhdx"))
    }

    fn options(&self, opener: &FileOpener) -> MergeOptions {
        MergeOptions {
            depth: self.depth,
            siblings: self.policy,
            file_opener: Some(opener.clone()),
            ..Default::default()
        }
    }

    pub fn label(&self) -> String {
        let flag = if self.policy == SiblingPolicy::Force { "--force" } else { "--preserve-siblings" };
        format!("merge --depth {} {flag} ({} files, {}-byte sectors)", self.depth, self.names.len(), self.sector)
    }
}

/// A file's bytes shared by every open of it, copied on the first write
/// (no crash model: for the runs after recovery, which need to be fast).
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Arc<Vec<u8>>>>);

impl Storage for Shared {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let d = self.0.lock().unwrap();
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| d.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| IoError::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        let mut d = self.0.lock().unwrap();
        let d = Arc::make_mut(&mut d);
        let end = offset as usize + buf.len();
        if d.len() < end {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
    fn len(&self) -> Result<u64, IoError> {
        Ok(self.0.lock().unwrap().len() as u64)
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        Arc::make_mut(&mut self.0.lock().unwrap()).resize(len as usize, 0);
        Ok(())
    }
}

/// Recovered images, shared rather than copied.
type Images = BTreeMap<&'static str, Arc<Vec<u8>>>;

/// One image recovered, or why it could not be.
type Recovered = Result<Arc<Vec<u8>>, String>;

/// The tree's files, opened through one opener: on fault-injecting storage
/// sharing a clock, or (`Shared`) plain.
struct Session<S> {
    storages: BTreeMap<&'static str, S>,
    opener: FileOpener,
}

fn session_of<S: Storage + Clone + 'static>(tree: &Tree, storages: BTreeMap<&'static str, S>) -> Session<S> {
    let by_path: BTreeMap<PathBuf, S> = storages.iter().map(|(n, s)| (tree.path(n), s.clone())).collect();
    let opener = FileOpener::new(move |path: &Path, _writable| {
        let canon = path.canonicalize()?;
        match by_path.get(&canon) {
            Some(s) => Ok(Box::new(s.clone()) as Box<dyn Storage>),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "not a file of the tree")),
        }
    });
    Session { storages, opener }
}

fn session(tree: &Tree, images: &BTreeMap<&'static str, Vec<u8>>, clock: &FaultClock) -> Session<FaultStorage> {
    session_of(tree, images.iter().map(|(&n, b)| (n, FaultStorage::on_clock(b.clone(), clock))).collect())
}

fn plain(tree: &Tree, images: &Images) -> Session<Shared> {
    session_of(tree, images.iter().map(|(&n, b)| (n, Shared(Arc::new(Mutex::new(b.clone()))))).collect())
}

impl Session<Shared> {
    fn images(&self) -> Images {
        self.storages.iter().map(|(&n, s)| (n, s.0.lock().unwrap().clone())).collect()
    }
}

impl<S> Session<S> {
    /// What `name` presents, opened with its parent chain.
    fn view(&self, tree: &Tree, name: &str) -> vhdx::Result<Vec<u8>> {
        let d = OpenOptions::new().file_opener(self.opener.clone()).open(tree.path(name))?;
        let mut v = vec![0u8; SIZE as usize];
        d.read_at(&mut v, 0)?;
        Ok(v)
    }
}

/// Replays the image's log (a writable open) and checks it.
fn recover(name: &str, image: Vec<u8>) -> Result<Vec<u8>, String> {
    let disk = OpenOptions::new()
        .writable(true)
        .without_parent()
        .open_storage(Box::new(MemStorage::from_vec(image)))
        .map_err(|e| format!("{name}: open: {e}"))?;
    let storage = disk.into_storage().map_err(|e| format!("{name}: close: {e}"))?;
    let bytes = read_all(&*storage);
    check_clean(storage, &[]).map_err(|e| format!("{name}: {e}"))?;
    Ok(bytes)
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// The contract while a merge is interrupted.
fn verify_interrupted<S>(tree: &Tree, s: &Session<S>) -> Result<(), String> {
    for &name in &tree.names {
        let old = &tree.before[name];
        let got = match s.view(tree, name) {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::ParentMismatch && tree.breakable.contains(&name) => continue,
            Err(e) => return Err(format!("{name} does not open: {e}")),
        };
        if tree.changed.contains(&name) {
            let new = &tree.after[name];
            let sec = tree.sector;
            for (x, g) in got.chunks(sec).enumerate() {
                let r = x * sec..(x + 1) * sec;
                if g != &old[r.clone()] && g != &new[r] {
                    return Err(format!("{name}: sector {x} is neither its old nor its merged content"));
                }
            }
        } else if &got != old {
            return Err(format!("{name}: differs from its old view at byte {}", first_difference(&got, old)));
        }
    }
    Ok(())
}

/// Every image presents exactly `expected`; nothing announces anything any
/// more; the child records no unfinished merge.
fn verify_views<S>(tree: &Tree, s: &Session<S>, expected: &BTreeMap<&'static str, Vec<u8>>) -> Result<(), String> {
    for &name in &tree.names {
        let alone = OpenOptions::new()
            .without_parent()
            .file_opener(s.opener.clone())
            .open(tree.path(name))
            .map_err(|e| format!("{name}: {e}"))?;
        if let Some(g) = alone.parent_locator().and_then(|l| l.parent_linkage2()) {
            return Err(format!("{name}: parent_linkage2 {g} is left"));
        }
        match s.view(tree, name) {
            Ok(got) if got == expected[name] => {}
            Ok(got) => {
                return Err(format!(
                    "{name}: differs from the model at byte {}",
                    first_difference(&got, &expected[name])
                ))
            }
            Err(e) if e.kind() == ErrorKind::ParentMismatch && tree.breakable.contains(&name) => {}
            Err(e) => return Err(format!("{name} does not open: {e}")),
        }
    }
    let opts = tree.options(&s.opener);
    match interrupted_merge(&tree.path("child"), &opts) {
        Ok(None) => Ok(()),
        Ok(Some(m)) => Err(format!("the child still records an unfinished merge: {m}")),
        Err(e) => Err(format!("reading the child's record: {e}")),
    }
}

/// Finishes the merge on the recovered `images`: by running it again, or
/// (`repair`) by `recover_merge` first. Then checks the result and, with
/// `again`, that every image checks clean and one more run changes nothing.
fn finish(tree: &Tree, images: &Images, repair: bool, again: bool) -> Result<(), String> {
    let s = plain(tree, images);
    let opts = tree.options(&s.opener);
    let child = tree.path("child");
    if repair {
        match recover_merge(&child, &opts).map_err(|e| format!("recover_merge: {e}"))? {
            Some(Recovery::RolledBack(_)) => {
                verify_views(tree, &s, &tree.before).map_err(|e| format!("rolled back: {e}"))?
            }
            Some(Recovery::Finished(_)) => verify_views(tree, &s, &tree.after).map_err(|e| format!("finished: {e}"))?,
            None => {}
        }
    }
    merge(&child, &opts).map_err(|e| format!("the re-run failed: {e}"))?;
    verify_views(tree, &s, &tree.after).map_err(|e| format!("after the re-run: {e}"))?;
    if !again {
        return Ok(());
    }
    for (n, b) in s.images() {
        check_clean(Box::new(Shared(Arc::new(Mutex::new(b)))), &[])
            .map_err(|e| format!("{n} after the re-run: {e}"))?;
    }
    let settled = s.images();
    let again = merge(&child, &opts).map_err(|e| format!("a run after the end failed: {e}"))?;
    if again.run != MergeRun::AlreadyDone {
        return Err(format!("a run after the end did not find the merge done: {:?}", again.run));
    }
    if s.images() != settled {
        return Err(String::from("a run after the end changed a file"));
    }
    Ok(())
}

/// The crash states to try at crash point `k`: one per state of the file
/// with unflushed writes (usually the only one: the merge writes one file at
/// a time); with several, each in turn with the others whole or lost.
fn combinations(
    s: &Session<FaultStorage>,
    unit: u64,
    k: u64,
    budget: Budget,
) -> Vec<(String, BTreeMap<&'static str, CrashState>)> {
    let pending: Vec<&'static str> =
        s.storages.iter().filter(|(_, st)| !st.pending().is_empty()).map(|(&n, _)| n).collect();
    let all = |state: &CrashState| -> BTreeMap<&'static str, CrashState> {
        s.storages.keys().map(|&n| (n, state.clone())).collect()
    };
    if pending.is_empty() {
        return vec![(String::from("nothing unflushed"), all(&CrashState::DurableOnly))];
    }
    let mut out = Vec::new();
    for &name in &pending {
        let others: &[CrashState] = if pending.len() == 1 {
            &[CrashState::DurableOnly]
        } else {
            &[CrashState::AllPending, CrashState::DurableOnly]
        };
        for state in crash_states(&s.storages[name].pending(), unit, k, budget) {
            for other in others {
                let mut m = all(other);
                m.insert(name, state.clone());
                out.push((format!("{name} in {state:?}, the others {other:?}"), m));
            }
        }
    }
    out
}

/// Runs the merge on `files` with a crash after `k` of its `ops`
/// operations, and checks every crash state; each is then finished (or,
/// with `nested`, the first one's re-run is crashed at each of its
/// operations in turn, and those states finished). Returns the states tried.
#[allow(clippy::too_many_arguments)]
fn crash_at(
    tree: &Tree,
    files: &BTreeMap<&'static str, Vec<u8>>,
    k: u64,
    ops: u64,
    budget: Budget,
    long: bool,
    nested: bool,
    context: &str,
    fail: &dyn Fn(String),
) -> u64 {
    let clock = FaultClock::new();
    clock.crash_after(k);
    let s = session(tree, files, &clock);
    let result = merge(&tree.path("child"), &tree.options(&s.opener));
    if k < ops && result.is_ok() {
        fail(format!("{context}crash after {k}: the merge reported success"));
        return 0;
    }
    let mut tried = 0;
    let mut recovered: BTreeMap<(&str, Option<String>), Recovered> = BTreeMap::new();
    for (what, states) in combinations(&s, tree.sector as u64, k, budget) {
        tried += 1;
        let mut images = BTreeMap::new();
        let mut failed = None;
        for (&n, st) in &s.storages {
            // A file without unflushed writes is the same in every state: recovered once.
            let key = (n, if st.pending().is_empty() { None } else { Some(format!("{:?}", states[n])) });
            let recovered =
                recovered.entry(key).or_insert_with(|| recover(n, st.crash_image(&states[n])).map(Arc::new));
            match recovered {
                Ok(b) => {
                    images.insert(n, b.clone());
                }
                Err(e) => failed = Some(e.clone()),
            }
        }
        let what = format!("{context}crash after {k}, {what}");
        if let Some(e) = failed {
            fail(format!("{what}: {e}"));
            continue;
        }
        if let Err(e) = verify_interrupted(tree, &plain(tree, &images)) {
            fail(format!("{what}: {e}"));
            continue;
        }
        if nested && tried == 1 {
            let files: BTreeMap<&'static str, Vec<u8>> = images.iter().map(|(&n, b)| (n, b.to_vec())).collect();
            let clock = FaultClock::new();
            let probe = session(tree, &files, &clock);
            if let Err(e) = merge(&tree.path("child"), &tree.options(&probe.opener)) {
                fail(format!("{what}: the re-run failed: {e}"));
                continue;
            }
            let rerun_ops = clock.mutating_ops();
            let context = format!("{what}; in the re-run, ");
            for j in 0..rerun_ops {
                let small = Budget { prefixes: 0, tears: 0, subsets: None };
                tried += crash_at(tree, &files, j, rerun_ops, small, long, false, &context, fail);
            }
            continue;
        }
        let repair = (k + tried) % 2 == 1;
        let again = long || (k + tried) % 3 == 0;
        if let Err(e) = finish(tree, &images, repair, again) {
            let how = if repair { "recover_merge, then the merge" } else { "the merge again" };
            fail(format!("{what}, finished by {how}: {e}"));
        }
    }
    tried
}

pub struct Outcome {
    pub points: u64,
    pub states: u64,
    pub failures: Vec<String>,
}

/// Every crash point of the merge of `tree`, on `threads` threads.
pub fn crash_and_finish(tree: &Tree, threads: usize, long: bool) -> Outcome {
    let clock = FaultClock::new();
    let s = session(tree, &tree.files, &clock);
    let report = merge(&tree.path("child"), &tree.options(&s.opener)).expect("the merge without a crash");
    assert_eq!(report.run, MergeRun::Started);
    assert_eq!(report.siblings.len(), tree.depth, "one sibling per changed image");
    let ops = clock.mutating_ops();
    let done: Images =
        s.storages.iter().map(|(&n, st)| (n, Arc::new(st.crash_image(&CrashState::AllPending)))).collect();
    verify_views(tree, &plain(tree, &done), &tree.after).expect("after the merge");

    let budget = if long {
        Budget { prefixes: 4, tears: 2, subsets: Some(4) }
    } else {
        Budget { prefixes: 0, tears: 0, subsets: None }
    };
    let (states, failures) = for_each_crash_point(0..=ops, threads, |k, fail| {
        // At some points the re-run that finishes is crashed in turn, at each
        // of its own operations.
        let nested = if long { k % 8 == 4 } else { k == ops / 2 };
        crash_at(tree, &tree.files, k, ops, budget, long, nested, "", fail)
    });
    Outcome { points: ops + 1, states, failures }
}
