//! VHD trees under merge and set-parent, cut after every storage operation.
//!
//! The tree, made as real files (never written by the tests, which work on
//! copies in memory): `base` (dynamic, 512 KiB blocks) → `mid` → `leaf`,
//! `base` → `sib`, `mid` → `midsib`, and `moved/mid.vhd`, a byte copy of
//! `mid`. What each image presents comes from a model of the writes that
//! made it, never from the library.
//!
//! The operations: `merge leaf --depth 1 --preserve-siblings` (target
//! `mid`, sibling `midsib`), `--depth 2` (target `base`, intermediate
//! `mid`, siblings `sib`, `midsib` and, with `--search-dir moved`,
//! `moved/mid.vhd`), and `set-parent leaf moved/mid.vhd`.
//! Each runs with every file on a `FaultStorage` sharing one clock, cut
//! after its k-th storage operation. In every crash state (every file's
//! unflushed writes kept, lost, and each file alone in each of its partial
//! states: prefixes, tears, reordered subsets, scattered pieces) each file
//! is opened writable (which mends a footer), checked clean, and every
//! image opened through its chain presents, sector by sector, its old
//! content or its content after the operation — exactly its old content for
//! every image the operation does not change (`leaf`, the siblings). Then
//! the operation runs again on the states "everything" and "nothing" and on
//! one state in five, and every image must present exactly the result, the
//! merged images holding no block, `leaf` linked as the operation says. The
//! re-run must succeed, also after the last step (a merge then reports
//! itself done).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhdx::io::{CrashState, FaultClock, FaultStorage, FileOpener};
use vhdx::ops::merge::{merge, set_parent_through, MergeOptions, SiblingPolicy};
use vhdx::vhd::{VhdCreateOptions, VhdDisk};

use crate::common::data::pattern;
use crate::support::{crash_states, for_each_crash_point, Budget};
use crate::trees::files::{opener_of, VecStorage};

const SIZE: u64 = 4 << 20;
const KIB: u64 = 1024;
const NAMES: [&str; 6] = ["base.vhd", "mid.vhd", "leaf.vhd", "sib.vhd", "midsib.vhd", "moved/mid.vhd"];
const BASE: usize = 0;
const MID: usize = 1;
const LEAF: usize = 2;
const MOVED: usize = 5;

/// An image's parent (by index) and its own writes: start, end, seed.
type Image = (Option<usize>, Vec<(u64, u64, u64)>);
/// What each image presents, and the ranges each holds.
type Models = (Vec<Vec<u8>>, Vec<Vec<(u64, u64)>>);

/// Each image's own writes, and its parent (by index).
fn layout() -> [Image; 6] {
    [
        (None, vec![(0, 3 << 20, 1)]),
        (Some(BASE), vec![(512 * KIB, 516 * KIB, 2), (3 << 20, (3 << 20) + 8 * KIB, 3)]),
        (
            Some(MID),
            vec![
                (4 * KIB, 12 * KIB, 4),
                // Over part of what `mid` holds: the nearest holder wins.
                (512 * KIB, 514 * KIB, 9),
                (1 << 20, 1536 * KIB, 5),
                ((2 << 20) + 512, (2 << 20) + 1024, 6),
            ],
        ),
        (Some(BASE), vec![(8 * KIB, 16 * KIB, 7)]),
        (Some(MID), vec![((1 << 20) + 64 * KIB, (1 << 20) + 68 * KIB, 8)]),
        (Some(BASE), vec![(512 * KIB, 516 * KIB, 2), (3 << 20, (3 << 20) + 8 * KIB, 3)]),
    ]
}

/// What each image presents before any operation, and the ranges it holds.
fn models() -> Models {
    let mut views: Vec<Vec<u8>> = Vec::new();
    let mut holds = Vec::new();
    for (parent, writes) in layout() {
        let mut v = match parent {
            Some(p) => views[p].clone(),
            None => vec![0u8; SIZE as usize],
        };
        for &(s, e, seed) in &writes {
            v[s as usize..e as usize].copy_from_slice(&pattern(seed, (e - s) as usize));
        }
        views.push(v);
        holds.push(writes.iter().map(|&(s, e, _)| (s, e)).collect());
    }
    (views, holds)
}

/// Makes the tree's files in `dir`.
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("moved")).unwrap();
    for (i, (parent, writes)) in layout().into_iter().enumerate().take(MOVED) {
        let path = dir.join(NAMES[i]);
        let mut d = match parent {
            None => VhdDisk::create(&path, &VhdCreateOptions::dynamic(SIZE).block_size(512 * 1024)).unwrap(),
            Some(p) => VhdDisk::create_differencing(&path, dir.join(NAMES[p])).unwrap(),
        };
        for (s, e, seed) in writes {
            d.write_at(&pattern(seed, (e - s) as usize), s).unwrap();
        }
        d.flush().unwrap();
    }
    std::fs::copy(dir.join("mid.vhd"), dir.join("moved/mid.vhd")).unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Merge(usize),
    SetParent,
}

impl Op {
    fn run(self, dir: &Path, opener: &FileOpener) -> vhdx::Result<()> {
        let leaf = dir.join(NAMES[LEAF]);
        match self {
            Op::Merge(depth) => {
                let options = MergeOptions::default()
                    .depth(depth)
                    .siblings(SiblingPolicy::Preserve)
                    // `moved/mid.vhd` is a child of `base` too: found there.
                    .search_dirs(vec![dir.join("moved")])
                    .file_opener(Some(opener.clone()));
                merge(&leaf, &options).map(drop)
            }
            Op::SetParent => set_parent_through(opener, &leaf, &dir.join(NAMES[MOVED]), false),
        }
    }

    /// What each image presents once the operation is done.
    fn result(self, old: &[Vec<u8>], holds: &[Vec<(u64, u64)>]) -> Vec<Vec<u8>> {
        let mut out = old.to_vec();
        let merged = |target: usize, levels: &[usize]| {
            let mut t = old[target].clone();
            for &l in levels {
                for &(s, e) in &holds[l] {
                    t[s as usize..e as usize].copy_from_slice(&old[LEAF][s as usize..e as usize]);
                }
            }
            t
        };
        match self {
            Op::Merge(1) => out[MID] = merged(MID, &[LEAF]),
            Op::Merge(_) => {
                out[BASE] = merged(BASE, &[LEAF, MID]);
                out[MID] = out[BASE].clone();
            }
            Op::SetParent => {}
        }
        out
    }

    /// The images emptied by the operation, and the chain `leaf` ends with.
    fn emptied(self) -> (&'static [usize], &'static [usize]) {
        match self {
            Op::Merge(1) => (&[LEAF], &[LEAF, MID, BASE]),
            Op::Merge(_) => (&[LEAF, MID], &[LEAF, BASE]),
            Op::SetParent => (&[], &[LEAF, MOVED, BASE]),
        }
    }
}

/// The files as storages, and an opener that opens them by path.
fn opener(dir: &Path, files: &[Arc<Vec<u8>>]) -> (FileOpener, Vec<VecStorage>) {
    let storages: Vec<VecStorage> = files.iter().map(|b| VecStorage::new(b.clone())).collect();
    let named = (0..NAMES.len()).map(|i| (dir.join(NAMES[i]), storages[i].clone())).collect();
    (opener_of(named, |_| {}), storages)
}

/// Each file of a crash state opened writable (mending a footer) and
/// checked clean; its bytes after.
fn recover(files: Vec<Vec<u8>>) -> Result<Vec<Arc<Vec<u8>>>, String> {
    let mut out = Vec::new();
    for (i, bytes) in files.into_iter().enumerate() {
        let s = VecStorage::new(Arc::new(bytes));
        let d = VhdDisk::open_storage(Box::new(s.clone()), true)
            .map_err(|e| format!("{}: the writable open fails — {e}", NAMES[i]))?;
        drop(d.into_storage().map_err(|e| format!("{}: {e}", NAMES[i]))?);
        let report = vhdx::check::check_vhd_storage(Box::new(s.clone())).map_err(|e| format!("{}: {e}", NAMES[i]))?;
        if !report.is_clean() {
            return Err(format!("{}: check finds errors: {report:?}", NAMES[i]));
        }
        out.push(Arc::new(s.take()));
    }
    Ok(out)
}

/// Every image's view through its chain, or why it cannot be read.
fn views(dir: &Path, files: &[Arc<Vec<u8>>]) -> Result<Vec<Vec<u8>>, String> {
    let (opener, _) = opener(dir, files);
    (0..NAMES.len())
        .map(|i| {
            let d = VhdDisk::open_through(&opener, dir.join(NAMES[i]), false)
                .map_err(|e| format!("{} does not open with its chain — {e}", NAMES[i]))?;
            let mut v = vec![0u8; SIZE as usize];
            d.read_at(&mut v, 0).map_err(|e| format!("{}: {e}", NAMES[i]))?;
            Ok(v)
        })
        .collect()
}

/// The first sector of each image that is neither its old nor its new content.
fn old_or_new(got: &[Vec<u8>], old: &[Vec<u8>], new: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..NAMES.len() {
        for s in (0..SIZE as usize).step_by(512) {
            let g = &got[i][s..s + 512];
            if g != &old[i][s..s + 512] && g != &new[i][s..s + 512] {
                out.push(format!("{} sector {} is neither old nor new", NAMES[i], s / 512));
                break;
            }
        }
    }
    out
}

/// The result: every view exact, the emptied images empty, `leaf`'s chain.
fn finished(op: Op, dir: &Path, files: &[Arc<Vec<u8>>], new: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    match views(dir, files) {
        Err(e) => out.push(e),
        Ok(got) => {
            for i in 0..NAMES.len() {
                if got[i] != new[i] {
                    out.push(format!("{} does not present the result", NAMES[i]));
                }
            }
        }
    }
    let (emptied, chain) = op.emptied();
    for &i in emptied {
        let d = VhdDisk::open_storage(Box::new(VecStorage::new(files[i].clone())), false).unwrap();
        if d.allocated_blocks().0 != 0 {
            out.push(format!("{} still holds {} blocks", NAMES[i], d.allocated_blocks().0));
        }
    }
    let (o, _) = opener(dir, files);
    if let Ok(d) = VhdDisk::open_through(&o, dir.join(NAMES[LEAF]), false) {
        let want: Vec<String> = chain.iter().map(|&i| dir.join(NAMES[i]).display().to_string()).collect();
        let got: Vec<String> =
            d.chain_paths().iter().map(|p| Path::new(p).canonicalize().unwrap().display().to_string()).collect();
        if got != want {
            out.push(format!("leaf's chain is {got:?}, not {want:?}"));
        }
    }
    out
}

fn run_op(op: Op, budget: Budget, rerun_every: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    make_tree(&dir);
    let (old, holds) = models();
    let new = op.result(&old, &holds);
    let originals: Vec<Arc<Vec<u8>>> = NAMES.iter().map(|n| Arc::new(std::fs::read(dir.join(n)).unwrap())).collect();
    assert_eq!(views(&dir, &originals).unwrap(), old, "the tree presents its models");

    // The operation's storage operations, counted on a run that is not cut.
    let clock = FaultClock::new();
    let storages: Vec<FaultStorage> = originals.iter().map(|b| FaultStorage::on_clock(b.to_vec(), &clock)).collect();
    let named: Vec<(PathBuf, FaultStorage)> =
        (0..NAMES.len()).map(|i| (dir.join(NAMES[i]), storages[i].clone())).collect();
    op.run(&dir, &opener_of(named, |_| {})).unwrap();
    let total = clock.mutating_ops();
    let done: Vec<Arc<Vec<u8>>> = storages.iter().map(|s| Arc::new(s.volatile())).collect();
    let problems = finished(op, &dir, &done, &new);
    assert!(problems.is_empty(), "{op:?} uncut: {problems:?}");

    let (states, failures) = for_each_crash_point(0..=total, 2, |k, fail| {
        let clock = FaultClock::new();
        clock.crash_after(k);
        let storages: Vec<FaultStorage> =
            originals.iter().map(|b| FaultStorage::on_clock(b.to_vec(), &clock)).collect();
        let named: Vec<(PathBuf, FaultStorage)> =
            (0..NAMES.len()).map(|i| (dir.join(NAMES[i]), storages[i].clone())).collect();
        let result = op.run(&dir, &opener_of(named, |_| {}));
        if clock.crashed() && result.is_ok() {
            fail(format!("{op:?} k={k}: the run reported success after its storage failed"));
        }
        // Every file's unflushed writes kept, lost; each file alone in each
        // of its states with the others' kept.
        let per_file: Vec<Vec<CrashState>> =
            storages.iter().map(|s| crash_states(&s.pending(), 512, k, budget)).collect();
        let mut combos: Vec<Vec<CrashState>> =
            vec![vec![CrashState::AllPending; NAMES.len()], vec![CrashState::DurableOnly; NAMES.len()]];
        for (f, states) in per_file.iter().enumerate() {
            for st in states.iter().filter(|s| !matches!(s, CrashState::AllPending)) {
                let mut c = vec![CrashState::AllPending; NAMES.len()];
                c[f] = st.clone();
                combos.push(c);
            }
        }
        for (n, combo) in combos.iter().enumerate() {
            let raw: Vec<Vec<u8>> = storages.iter().zip(combo).map(|(s, st)| s.crash_image(st)).collect();
            let name = format!("{op:?} k={k} state {n} {combo:?}");
            let files = match recover(raw) {
                Ok(f) => f,
                Err(e) => {
                    fail(format!("{name}: {e}"));
                    continue;
                }
            };
            match views(&dir, &files) {
                Err(e) => fail(format!("{name}: {e}")),
                Ok(got) => {
                    for p in old_or_new(&got, &old, &new) {
                        fail(format!("{name}: {p}"));
                    }
                }
            }
            if n < 2 || n % rerun_every == 0 {
                let (o, storages) = opener(&dir, &files);
                let rerun = op.run(&dir, &o);
                let after: Vec<Arc<Vec<u8>>> = storages.iter().map(|s| s.bytes()).collect();
                let problems = finished(op, &dir, &after, &new);
                match rerun {
                    Ok(()) => problems.iter().for_each(|p| fail(format!("{name}, run again: {p}"))),
                    Err(e) => fail(format!("{name}: the re-run fails ({e}): {problems:?}")),
                }
            }
        }
        combos.len() as u64
    });
    eprintln!("crash VHD tree {op:?}: {} crash points, {states} crash states, {} failures", total + 1, failures.len());
    assert!(failures.is_empty(), "{} failures, first: {:#?}", failures.len(), &failures[..failures.len().min(8)]);
}

/// The operation on a filesystem that fills up after its n-th storage
/// operation, for every n: it fails or completes; the files as it left them
/// (no power cut: nothing is lost) open writable, check clean and present
/// each image old or new; once space is back, running it again finishes it.
fn run_op_filling(op: Op) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    make_tree(&dir);
    let (old, holds) = models();
    let new = op.result(&old, &holds);
    let originals: Vec<Arc<Vec<u8>>> = NAMES.iter().map(|n| Arc::new(std::fs::read(dir.join(n)).unwrap())).collect();
    let (mut n, mut refused) = (0u64, 0u64);
    let mut failures = Vec::new();
    loop {
        let clock = FaultClock::new();
        clock.fill_after(Some(n));
        let storages: Vec<FaultStorage> =
            originals.iter().map(|b| FaultStorage::on_clock(b.to_vec(), &clock)).collect();
        let named: Vec<(PathBuf, FaultStorage)> =
            (0..NAMES.len()).map(|i| (dir.join(NAMES[i]), storages[i].clone())).collect();
        let result = op.run(&dir, &opener_of(named, |_| {}));
        let name = format!("{op:?} full after {n}");
        match recover(storages.iter().map(|s| s.volatile()).collect()) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(files) => {
                match views(&dir, &files) {
                    Err(e) => failures.push(format!("{name}: {e}")),
                    Ok(got) => {
                        failures.extend(old_or_new(&got, &old, &new).into_iter().map(|p| format!("{name}: {p}")))
                    }
                }
                let (o, storages) = opener(&dir, &files);
                let rerun = op.run(&dir, &o);
                let after: Vec<Arc<Vec<u8>>> = storages.iter().map(|s| s.bytes()).collect();
                let problems = finished(op, &dir, &after, &new);
                match rerun {
                    Ok(()) => failures.extend(problems.into_iter().map(|p| format!("{name}, run again: {p}"))),
                    Err(e) => failures.push(format!("{name}: the re-run fails ({e})")),
                }
            }
        }
        match result {
            Err(e) if e.to_string().contains("space") || e.to_string().contains("full") => refused += 1,
            Err(e) => failures.push(format!("{name}: fails with another error: {e}")),
            Ok(()) => break,
        }
        n += 1;
    }
    eprintln!(
        "VHD tree {op:?} on a filling filesystem: {n} fill points, {refused} refused, {} failures",
        failures.len()
    );
    // A change of parent may fit in the space the file's last page holds.
    if matches!(op, Op::Merge(_)) {
        assert!(refused > 0, "the filesystem never filled in time: the test proved nothing");
    }
    assert!(failures.is_empty(), "{:#?}", &failures[..failures.len().min(8)]);
}

#[test]
fn vhd_tree_operations_on_a_filling_filesystem_lose_nothing_and_finish_when_run_again() {
    for op in [Op::Merge(1), Op::Merge(2), Op::SetParent] {
        run_op_filling(op);
    }
}

fn budget() -> Budget {
    Budget { prefixes: 3, tears: 2, subsets: Some(8) }
}

#[test]
fn vhd_merge_depth1_preserving_a_sibling_survives_a_crash_at_every_point() {
    run_op(Op::Merge(1), budget(), 5);
}

#[test]
fn vhd_merge_depth2_preserving_siblings_survives_a_crash_at_every_point() {
    run_op(Op::Merge(2), budget(), 5);
}

#[test]
fn vhd_set_parent_survives_a_crash_at_every_point() {
    run_op(Op::SetParent, budget(), 5);
}
