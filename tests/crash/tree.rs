//! Crashes during a merge that preserves siblings: several files change,
//! each with its own flushes, and one power cut stops them all.
//!
//! The tree: `base.vhdx` (dynamic, with data) and three children of it —
//! `child.vhdx`, which is merged, `sib.vhdx`, which overlaps the child's
//! writes in places, and the empty `empty.vhdx`. Every file is put on a
//! [`FaultStorage`] sharing one [`FaultClock`], opened through a
//! [`FileOpener`], and `merge --preserve-siblings` runs with a crash after
//! each of its operations. For every crash point, the states a power cut
//! could leave are built per file (none, all, prefixes, tears, reordered
//! subsets of that file's unflushed writes, the other files whole or lost),
//! and each must satisfy what the merge documents:
//!
//! - every file opens writable (replaying its log) and checks clean;
//! - the base presents, per sector, its old content or the child's;
//! - each child opens on the base (its link holds: each was told the base's
//!   next DataWriteGuid before the base changed) and presents exactly what
//!   it presented before the merge;
//! - where every file kept all its writes or lost all unflushed ones, the
//!   same merge run again finishes it: the base presents the child's view,
//!   every child what it did, and no `parent_linkage2` is left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vhdx::io::{CrashState, FaultClock, FaultStorage, FileOpener};
use vhdx::ops::merge::{merge, MergeOptions, SiblingPolicy};
use vhdx::{CreateOptions, Disk, MemStorage, OpenOptions, Storage};

use crate::support::{crash_states, for_each_crash_point, pattern, read_all, Budget, MIB};
use crate::verify::check_clean;

const SIZE: u64 = 4 * MIB;
const SECTOR: usize = 512;
const NAMES: [&str; 4] = ["base.vhdx", "child.vhdx", "sib.vhdx", "empty.vhdx"];

/// The tree on disk, and what each image presents before the merge.
pub struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    files: BTreeMap<&'static str, Vec<u8>>,
    views: BTreeMap<&'static str, Vec<u8>>,
}

fn view(disk: &Disk) -> Vec<u8> {
    let mut v = vec![0u8; SIZE as usize];
    disk.read_at(&mut v, 0).unwrap();
    v
}

pub fn build() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let p = |n: &str| root.join(n);
    let mut base = Disk::create(p("base.vhdx"), &CreateOptions::dynamic(SIZE).block_size(MIB as u32)).unwrap();
    for (i, at) in [0u64, 2 * MIB - 700, 3 * MIB + 4096].into_iter().enumerate() {
        base.write_at(&pattern(10 + i as u64, 300_000), at).unwrap();
    }
    base.close().unwrap();
    let mut child = Disk::create_differencing(p("child.vhdx"), p("base.vhdx"), Some(MIB as u32)).unwrap();
    for (i, (at, len)) in
        [(MIB - 1000, 5000usize), (2 * MIB + 77, 70_000), (3 * MIB + 512, 512), (4 * MIB - 9000, 9000)]
            .into_iter()
            .enumerate()
    {
        child.write_at(&pattern(20 + i as u64, len), at).unwrap();
    }
    child.close().unwrap();
    let mut sib = Disk::create_differencing(p("sib.vhdx"), p("base.vhdx"), Some(MIB as u32)).unwrap();
    for (i, (at, len)) in [(MIB, 2048usize), (2 * MIB + 40_000, 60_000), (3 * MIB + 3, 100)].into_iter().enumerate() {
        sib.write_at(&pattern(30 + i as u64, len), at).unwrap();
    }
    sib.close().unwrap();
    Disk::create_differencing(p("empty.vhdx"), p("base.vhdx"), Some(2 * MIB as u32)).unwrap().close().unwrap();

    let mut files = BTreeMap::new();
    let mut views = BTreeMap::new();
    for n in NAMES {
        files.insert(n, std::fs::read(p(n)).unwrap());
        views.insert(n, view(&Disk::open(p(n)).unwrap()));
    }
    Tree { _dir: dir, root, files, views }
}

/// The tree's files on fault-injecting storage sharing `clock`.
struct Session {
    storages: BTreeMap<&'static str, FaultStorage>,
    opener: FileOpener,
}

fn session(root: &Path, files: &BTreeMap<&'static str, Vec<u8>>, clock: &FaultClock) -> Session {
    let storages: BTreeMap<&'static str, FaultStorage> =
        NAMES.iter().map(|&n| (n, FaultStorage::on_clock(files[n].clone(), clock))).collect();
    let by_path: BTreeMap<PathBuf, FaultStorage> = storages.iter().map(|(n, s)| (root.join(n), s.clone())).collect();
    let opener = FileOpener::new(move |path: &Path, _writable| {
        let canon = path.canonicalize()?;
        match by_path.get(&canon) {
            Some(s) => Ok(Box::new(s.clone()) as Box<dyn Storage>),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "not a file of the tree")),
        }
    });
    Session { storages, opener }
}

fn run_merge(tree: &Tree, s: &Session) -> vhdx::Result<()> {
    let options = MergeOptions {
        depth: 1,
        siblings: SiblingPolicy::Preserve,
        file_opener: Some(s.opener.clone()),
        ..Default::default()
    };
    let report = merge(&tree.root.join("child.vhdx"), &options)?;
    assert_eq!(report.siblings.len(), 2, "the merge found {:?}", report.siblings);
    Ok(())
}

/// Replays each image's log in a writable open, checks it, and returns the
/// recovered bytes.
fn recover(name: &str, image: Vec<u8>) -> Result<Vec<u8>, String> {
    let opts = OpenOptions::new().writable(true);
    let opts = if name == "base.vhdx" { opts } else { opts.without_parent() };
    let disk = opts.open_storage(Box::new(MemStorage::from_vec(image))).map_err(|e| format!("{name}: open: {e}"))?;
    let storage = disk.into_storage().map_err(|e| format!("{name}: close: {e}"))?;
    let bytes = read_all(&*storage);
    check_clean(storage, &[]).map_err(|e| format!("{name}: {e}"))?;
    Ok(bytes)
}

fn open_mem(bytes: &[u8], parent: Option<Disk>) -> vhdx::Result<Disk> {
    let storage = Box::new(MemStorage::from_vec(bytes.to_vec()));
    match parent {
        Some(p) => OpenOptions::new().parent(p).open_storage(storage),
        None => OpenOptions::new().without_parent().open_storage(storage),
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// The checks of the module documentation, on recovered images.
fn verify(tree: &Tree, images: &BTreeMap<&'static str, Vec<u8>>) -> Result<(), String> {
    let base_bytes = &images["base.vhdx"];
    let base_view = view(&open_mem(base_bytes, None).map_err(|e| format!("base: {e}"))?);
    let (old, merged) = (&tree.views["base.vhdx"], &tree.views["child.vhdx"]);
    for (s, got) in base_view.chunks(SECTOR).enumerate() {
        let r = s * SECTOR..(s + 1) * SECTOR;
        if got != &old[r.clone()] && got != &merged[r] {
            return Err(format!("base: sector {s} is neither its old content nor the child's"));
        }
    }
    for name in &NAMES[1..] {
        let expected = &tree.views[name];
        let base = open_mem(base_bytes, None).map_err(|e| format!("base: {e}"))?;
        let d = open_mem(&images[name], Some(base)).map_err(|e| format!("{name}: opening on the base: {e}"))?;
        let got = view(&d);
        if &got != expected {
            return Err(format!("{name}: opened on the base, differs at byte {}", first_difference(&got, expected)));
        }
    }
    Ok(())
}

/// Runs the merge again on recovered `images`: it must finish, leaving the
/// base with the child's view, every child with its own, and no
/// `parent_linkage2`.
fn rerun(tree: &Tree, images: &BTreeMap<&'static str, Vec<u8>>) -> Result<(), String> {
    let s = session(&tree.root, images, &FaultClock::new());
    run_merge(tree, &s).map_err(|e| format!("the re-run failed: {e}"))?;
    let mut done = BTreeMap::new();
    for (n, st) in &s.storages {
        done.insert(*n, recover(n, st.crash_image(&CrashState::AllPending))?);
    }
    let base_view = view(&open_mem(&done["base.vhdx"], None).map_err(|e| format!("base: {e}"))?);
    if base_view != tree.views["child.vhdx"] {
        return Err(format!(
            "after the re-run the base differs from the child's view at byte {}",
            first_difference(&base_view, &tree.views["child.vhdx"])
        ));
    }
    verify(tree, &done)?;
    for name in &NAMES[1..] {
        let alone = open_mem(&done[name], None).map_err(|e| format!("{name}: {e}"))?;
        if alone.parent_locator().and_then(|l| l.parent_linkage2()).is_some() {
            return Err(format!("{name}: parent_linkage2 left after the re-run"));
        }
    }
    Ok(())
}

pub struct Outcome {
    pub points: u64,
    pub states: u64,
    pub failures: Vec<String>,
}

/// Every crash point of the merge, every crash state of each file with the
/// others whole or lost, on `threads` threads.
pub fn crash_the_merge(threads: usize) -> Outcome {
    let tree = build();
    let clock = FaultClock::new();
    let s = session(&tree.root, &tree.files, &clock);
    run_merge(&tree, &s).expect("the merge without a crash");
    let ops = clock.mutating_ops();
    let mut done = BTreeMap::new();
    for (n, st) in &s.storages {
        done.insert(*n, recover(n, st.crash_image(&CrashState::AllPending)).unwrap());
    }
    verify(&tree, &done).expect("after the merge");

    let budget = Budget { prefixes: 3, tears: 1, subsets: Some(3) };
    let (states, failures) = for_each_crash_point(0..=ops, threads, |k, fail| {
        let clock = FaultClock::new();
        clock.crash_after(k);
        let s = session(&tree.root, &tree.files, &clock);
        let result = run_merge(&tree, &s);
        if k < ops && result.is_ok() {
            fail(format!("crash after {k}: the merge reported success"));
            return 0;
        }
        let mut tried = 0;
        let first_pending = s.storages.iter().find(|(_, st)| !st.pending().is_empty()).map_or(NAMES[0], |(&n, _)| n);
        for (&name, st) in &s.storages {
            let pending = st.pending();
            for state in crash_states(&pending, SECTOR as u64, k, budget) {
                for others in [CrashState::AllPending, CrashState::DurableOnly] {
                    if pending.is_empty() && others == CrashState::DurableOnly && name != NAMES[0] {
                        continue;
                    }
                    tried += 1;
                    let mut images = BTreeMap::new();
                    let mut failed = None;
                    for (&n, other) in &s.storages {
                        let image = other.crash_image(if n == name { &state } else { &others });
                        match recover(n, image) {
                            Ok(b) => {
                                images.insert(n, b);
                            }
                            Err(e) => failed = Some(e),
                        }
                    }
                    // Every file kept all its writes, or lost all unflushed ones (once per point).
                    let whole = name == first_pending
                        && matches!(state, CrashState::AllPending | CrashState::DurableOnly)
                        && state == others;
                    let failed = failed.or_else(|| verify(&tree, &images).err()).or_else(|| {
                        if whole {
                            rerun(&tree, &images).err()
                        } else {
                            None
                        }
                    });
                    if let Some(e) = failed {
                        fail(format!("crash after {k}, {name} in {state:?}, the others {others:?}: {e}"));
                    }
                }
            }
        }
        tried
    });
    Outcome { points: ops + 1, states, failures }
}
