//! Operations on whole trees of differencing disks, interrupted at every
//! storage operation, with every image's content checked against models.
//!
//! The tree ([`model`]): `base` (dynamic) → `child` → `grandchild`;
//! `base` → `sib` → `sibchild`; `base` → `empty`; and, for the depth-2
//! merge, `base` → `mid` → `leaf` with `mid` → `midsib`. Set-parent adds a
//! byte copy of the base in another directory and `other.vhdx`, a parent
//! with another DataWriteGuid and other content. The trees are made as real
//! files (512-byte sectors, and 4096-byte ones in some workloads; locators
//! with relative paths only, so a copy of a tree refers to itself), which
//! stay read-only: the tests work on copies in memory; the test keeps a model of what each image presents — its parent's model overlaid
//! with its own writes — and of which sectors each holds. The expected
//! content always comes from those models, never from the library's reads.
//!
//! Each operation ([`ops`]) — `merge` at depth 1 (`--preserve-siblings`,
//! `--force`, and the default refusal, which must change nothing) and at
//! depth 2, `set-parent` onto a copied parent and with
//! `--ignore-id-mismatch`, `compact` of a parent and of a child that has
//! children, `resize` of a leaf (grow, and shrink over zeros) — runs with
//! every file on a [`FaultStorage`](vhdx::io::FaultStorage) sharing one
//! [`FaultClock`](vhdx::io::FaultClock), opened by path through a
//! [`FileOpener`](vhdx::io::FileOpener). It is cut after each of its
//! storage operations `k` (every later operation on every file fails); then
//! the crash states ([`run`]): every file whole, every file's unflushed
//! writes lost, each file with unflushed writes lost / whole / in-order
//! prefixes / torn at a logical sector / reordered subsets (the others
//! whole), and random mixes. In each state every file is reopened writable
//! (its log replayed) and the contract is checked ([`check`]):
//!
//! - `check` (`vhdx::check::check_storage`) finds no error in any file;
//! - every image opens through its chain by path, with its parent resolved
//!   and linked — except, under `--force`, siblings (and images below them)
//!   once their parent's DataWriteGuid changed, which may be refused with a
//!   `ParentMismatch`, and likewise the child of the image re-linked by
//!   `set-parent --ignore-id-mismatch`;
//! - every image presents, every byte of its virtual disk, what it presented
//!   before — except the images the operation changes: a merge's target and
//!   intermediates present each sector old or merged; a resized leaf its old
//!   content at the old or the new size; the image re-linked by set-parent
//!   with `--ignore-id-mismatch` wholly its old or its new content;
//! - the operation, run again on the recovered files (on the states
//!   "everything" and "nothing" of every crash point, and one in
//!   `rerun_every` of the others; a state that broke the contract too),
//!   succeeds — or refuses, but only when the operation had completed —
//!   and then every image presents
//!   the operation's result from the models: after a merge the target presents
//!   its old content overlaid with C0's view on the union of the sectors
//!   C0..C(N-1) hold, C0..C(N-1) present that, hold no block and are
//!   linked to an image further up the chain, preserved
//!   siblings present their old content and name their parent's new
//!   DataWriteGuid with no `parent_linkage2` left; set-parent leaves the child
//!   linked to the new parent; compact leaves every image as it was and the
//!   file smaller; resize the leaf at its new size;
//! - at a few crash points one state gets, instead, `check --repair`
//!   (`vhdx::check::repair_file`) of every file written out as real files,
//!   the checks above, the operation re-run on the real files, and its
//!   result.
//!
//! A state that breaks the contract is reported with every violation, and
//! the violations are counted by kind, so the output says which images fail
//! in which way at how many states.
//!
//! `ENOSPC`: the same operations with, instead of a power cut, the
//! filesystem the tree's files share filling up after storage operation `k`
//! ([`FaultClock::fill_after`](vhdx::io::FaultClock::fill_after): from then
//! on a write or `allocate` that needs space a file does not hold fails with
//! `StorageFull`, a write storing what fits) — for good, or freed again at
//! the first refusal — while the process goes on: when a write was refused
//! the operation must report an error, the files as left must recover and
//! meet the contract, and a re-run with space must complete.
//!
//! `cargo test --release --test crash trees -- --nocapture` prints the
//! figures (storage operations, crash points, crash states, states with
//! every image verified, re-runs, repairs, ENOSPC points). By default crash
//! states, re-runs, repairs and ENOSPC points are sampled (about three
//! minutes on two cores for all of them); `VHDX_CRASH_FULL=1` checks more
//! states per point, re-runs every state, repairs one state at every crash
//! point, tries `ENOSPC` at every operation, and adds the 4096-byte-sector
//! variants. `VHDX_CRASH_ONLY=<text>` keeps the workloads whose name
//! contains the text.
//!
//! [`cli`] is the process-level counterpart: the real `vhdx merge
//! --preserve-siblings` on real files, killed with SIGKILL after a delay;
//! and `vhdx resize` of a parent, which must not break its children.

mod check;
mod cli;
mod files;
mod model;
mod ops;
mod run;

use std::time::Instant;

use vhdx::io::FaultClock;
use vhdx::ops::merge::SiblingPolicy;

use crate::support::Budget;
use model::*;
use ops::*;
use run::{Coverage, Figures};

fn full() -> bool {
    std::env::var("VHDX_CRASH_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn coverage() -> Coverage {
    if full() {
        Coverage {
            per_file: Budget { prefixes: 8, tears: 6, subsets: Some(16) },
            mixes: 16,
            rerun_every: 1,
            repair_points: u64::MAX,
            enospc_points: u64::MAX,
        }
    } else {
        Coverage {
            per_file: Budget { prefixes: 3, tears: 2, subsets: Some(2) },
            mixes: 3,
            rerun_every: 6,
            repair_points: 4,
            enospc_points: 12,
        }
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8)
}

/// Crashes each workload everywhere; prints the figures and the failures,
/// grouped by kind; fails if any state broke the contract.
fn crash_all(workloads: Vec<Workload>) {
    let only = std::env::var("VHDX_CRASH_ONLY").ok().filter(|s| !s.is_empty());
    let workloads: Vec<Workload> =
        workloads.into_iter().filter(|w| only.as_ref().is_none_or(|o| w.name.contains(o.as_str()))).collect();
    let c = coverage();
    let mut total = Figures::default();
    let mut failures = run::Failures::default();
    for w in &workloads {
        let started = Instant::now();
        let o = run::crash_everywhere(w, threads(), &c);
        let f = o.figures;
        println!(
            "{:<66} {:>3} ops, {:>5} states ({} all verified), {} re-runs, {} repairs, {} ENOSPC ({} verified): \
             {} failing, {:.1?}",
            w.name,
            f.storage_ops,
            f.states,
            f.verified,
            f.reruns,
            f.repairs,
            f.enospc_points,
            f.enospc_verified,
            o.failures.states.len(),
            started.elapsed()
        );
        total += f;
        failures.states.extend(o.failures.states);
        for (k, n) in o.failures.kinds {
            *failures.kinds.entry(k).or_default() += n;
        }
    }
    println!(
        "trees total: {} workloads, {} crash points, {} crash states, {} with every image verified, {} re-runs, \
         {} repairs, {} ENOSPC points ({} verified)",
        workloads.len(),
        total.points,
        total.states,
        total.verified,
        total.reruns,
        total.repairs,
        total.enospc_points,
        total.enospc_verified
    );
    if failures.states.is_empty() {
        return;
    }
    println!("{} failing states; the violations, by kind:", failures.states.len());
    for (k, n) in &failures.kinds {
        println!("  {n:>5} × {k}");
    }
    for f in failures.states.iter().take(40) {
        println!("FAIL {f}");
    }
    panic!("{} states broke the contract; first: {}", failures.states.len(), failures.states[0]);
}

fn sectors() -> Vec<u64> {
    if full() {
        vec![512, 4096]
    } else {
        vec![512]
    }
}

/// `merge child` (depth 1) with `--preserve-siblings` and `--force`; the
/// 4096-byte-sector tree with `--preserve-siblings` too.
#[test]
fn merge_depth_1_crash_states() {
    let mut w = Vec::new();
    for policy in [SiblingPolicy::Preserve, SiblingPolicy::Force] {
        w.push(merge_workload(512, &SMALL, CHILD, 1, policy));
    }
    w.push(merge_workload(4096, &SMALL, CHILD, 1, SiblingPolicy::Preserve));
    if full() {
        w.push(merge_workload(4096, &SMALL, CHILD, 1, SiblingPolicy::Force));
    }
    crash_all(w);
}

/// `merge leaf --depth 2` over `base → mid → leaf`, with siblings of `mid`
/// (and their children) and of `leaf`, preserved.
#[test]
fn merge_depth_2_crash_states() {
    crash_all(sectors().into_iter().map(|s| merge_workload(s, &WHOLE, LEAF, 2, SiblingPolicy::Preserve)).collect());
}

/// set-parent, compact and resize on tree members.
#[test]
fn single_file_ops_on_tree_members_crash_states() {
    let mut w = Vec::new();
    for s in sectors() {
        w.push(set_parent_to_copy(s));
        w.push(set_parent_ignoring_id(s));
        w.push(compact_workload(s, BASE));
        w.push(compact_workload(s, CHILD));
        w.push(resize_workload(s, GRANDCHILD, GROWN));
        w.push(resize_workload(s, SIBCHILD, SHRUNK));
    }
    if !full() {
        w.push(compact_workload(4096, CHILD));
    }
    crash_all(w);
}

/// The default policy refuses a merge that would change other images'
/// parent: it names every sibling and writes nothing to any file.
#[test]
fn a_refused_merge_names_the_siblings_and_changes_nothing() {
    for (members, child, depth, siblings) in
        [(&SMALL[..], CHILD, 1, &[SIB, EMPTY][..]), (&WHOLE[..], LEAF, 2, &[CHILD, SIB, EMPTY, MIDSIB][..])]
    {
        let w = merge_workload(512, members, child, depth, SiblingPolicy::Refuse);
        let clock = FaultClock::new();
        let storages: Vec<vhdx::io::FaultStorage> =
            w.tree.files.iter().map(|b| vhdx::io::FaultStorage::on_clock(b.to_vec(), &clock)).collect();
        let paths = w.tree.members.iter().map(|&i| w.tree.path(i));
        let opener = files::opener_of(paths.zip(storages.iter().cloned()).collect(), |_| {});
        let e = w.run(&w.tree.root, Some(opener)).expect_err("the merge must refuse");
        assert_eq!(e.kind(), vhdx::ErrorKind::Refused, "{}: {e}", w.name);
        for &s in siblings {
            assert!(
                e.to_string().contains(IMAGES[s].name),
                "{}: the refusal does not name {}: {e}",
                w.name,
                IMAGES[s].name
            );
        }
        assert_eq!(clock.mutating_ops(), 0, "{}: the refused merge wrote to the files", w.name);
        for (slot, s) in storages.iter().enumerate() {
            assert!(s.volatile() == *w.tree.files[slot], "{}: {} changed", w.name, IMAGES[w.tree.members[slot]].name);
        }
    }
}
