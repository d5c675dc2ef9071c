//! Running an operation on a tree with a power cut, or `ENOSPC`, after each
//! of its storage operations, and checking every crash state, a re-run, and
//! `check --repair`.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhdx::io::{CrashState, FaultClock, FaultStorage, FileOpener, PendingOp};

use super::check::{check_files, Expect, Files, Memo};
use super::files::{opener_of, recover, SpaceWatch, VecStorage};
use super::model::{read_tree, write_tree, IMAGES};
use super::ops::Workload;
use crate::support::{crash_states, for_each_crash_point, spread, Budget, Rng};
use crate::verify::panic_text;

/// How much of the crash space a run covers.
#[derive(Clone, Copy)]
pub struct Coverage {
    /// Crash states per file with unflushed operations.
    pub per_file: Budget,
    /// Crash states mixing every file's states at random.
    pub mixes: usize,
    /// Re-run the operation on one crash state in this many (1: all; the
    /// states "everything" and "nothing" of every crash point always).
    pub rerun_every: u64,
    /// Crash points at which one state gets `check --repair` on real files.
    pub repair_points: u64,
    /// `ENOSPC` points tried (each once, then with growth refused for good).
    pub enospc_points: u64,
}

/// What a run covered.
#[derive(Default, Debug, Clone, Copy)]
pub struct Figures {
    pub storage_ops: u64,
    pub points: u64,
    pub states: u64,
    /// States in which every image of the tree was checked and met the contract.
    pub verified: u64,
    pub reruns: u64,
    pub repairs: u64,
    pub enospc_points: u64,
    pub enospc_verified: u64,
}

impl std::ops::AddAssign for Figures {
    fn add_assign(&mut self, o: Figures) {
        self.storage_ops += o.storage_ops;
        self.points += o.points;
        self.states += o.states;
        self.verified += o.verified;
        self.reruns += o.reruns;
        self.repairs += o.repairs;
        self.enospc_points += o.enospc_points;
        self.enospc_verified += o.enospc_verified;
    }
}

/// The failures of a run: each state's, and how often each kind of
/// violation occurred (its text up to " — ", numbers left out).
#[derive(Default)]
pub struct Failures {
    pub states: Vec<String>,
    pub kinds: BTreeMap<String, usize>,
}

struct Sink(Mutex<Failures>);

impl Sink {
    fn fail(&self, w: &Workload, at: &str, violations: &[String]) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for v in violations {
            let head = v.split(" — ").next().unwrap_or(v);
            let kind: Vec<&str> =
                head.split(' ').map(|t| if t.chars().any(|c| c.is_ascii_digit()) { "#" } else { t }).collect();
            *f.kinds.entry(format!("{}: {}", w.name, kind.join(" "))).or_default() += 1;
        }
        let shown: Vec<String> = violations.iter().take(3).map(|v| v.chars().take(300).collect()).collect();
        let more = violations.len().saturating_sub(shown.len());
        let more = if more > 0 { format!("; and {more} more") } else { String::new() };
        f.states.push(format!("{}: {at}: {}{more}", w.name, shown.join("; ")));
    }
}

/// The tree's files on fault-injecting storage sharing `clock` (and its
/// filesystem), watched for `ENOSPC` by `space`, and an opener serving them
/// by path.
fn session(w: &Workload, clock: &FaultClock, space: &SpaceWatch) -> (Vec<FaultStorage>, FileOpener) {
    let storages: Vec<FaultStorage> = w.tree.files.iter().map(|b| FaultStorage::on_clock(b.to_vec(), clock)).collect();
    let paths = w.tree.members.iter().map(|&i| w.tree.path(i));
    let watched: Vec<_> = storages.iter().map(|s| space.watch(s.clone())).collect();
    (storages, opener_of(paths.zip(watched).collect(), |_| {}))
}

/// Runs the operation on the tree's files under `clock`.
fn run_faulty(
    w: &Workload,
    clock: &FaultClock,
    space: &SpaceWatch,
) -> Result<(vhdx::Result<()>, Vec<FaultStorage>), String> {
    let (storages, opener) = session(w, clock, space);
    let r = catch_unwind(AssertUnwindSafe(|| w.run(&w.tree.root, Some(opener))))
        .map_err(|p| format!("the operation panics — {}", panic_text(p)))?;
    Ok((r, storages))
}

/// Checks `files` against `want`, and against the operation's result
/// checks when `result`.
fn verify(
    w: &Workload,
    files: &Files<'_>,
    want: &BTreeMap<usize, Expect>,
    result: bool,
    memo: Option<&mut Memo>,
) -> Vec<String> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut v = check_files(files, want, w.model.sector as usize, memo);
        if result {
            v.extend(w.check_result(files).err());
        }
        v
    }));
    r.unwrap_or_else(|p| vec![format!("the check panics — {}", panic_text(p))])
}

/// Runs the operation again, without a fault, on `bytes` (recovered files)
/// and checks its result.
///
/// A re-run that refuses is accepted only when the operation had already
/// completed: every file presents its result (nothing is left to finish).
fn rerun(w: &Workload, bytes: &[Arc<Vec<u8>>]) -> Vec<String> {
    let storages: Vec<VecStorage> = bytes.iter().map(|b| VecStorage::new(b.to_vec())).collect();
    let paths = w.tree.members.iter().map(|&i| w.tree.path(i));
    let opener = opener_of(paths.zip(storages.iter().cloned()).collect(), |_| {});
    match catch_unwind(AssertUnwindSafe(|| w.run(&w.tree.root, Some(opener)))) {
        Err(p) => return vec![format!("the re-run panics — {}", panic_text(p))],
        Ok(Err(e)) => {
            let complete = verify(w, &Files::new(&w.tree, &w.tree.root, bytes.to_vec()), &w.after, true, None);
            if complete.is_empty() {
                return Vec::new();
            }
            return vec![format!("the re-run fails ({:?}) — {e}", e.kind())];
        }
        Ok(Ok(())) => {}
    }
    let done = storages.iter().map(|s| Arc::new(s.take())).collect();
    let v = verify(w, &Files::new(&w.tree, &w.tree.root, done), &w.after, true, None);
    v.into_iter().map(|v| format!("after the re-run: {v}")).collect()
}

/// `check --repair` (`vhdx::check::repair_file`) on every file of the crash
/// state, written out as real files; then the contract of the crash states;
/// then the operation re-run on the real files, and its result.
fn repair_then_rerun(w: &Workload, raw: &[Arc<Vec<u8>>]) -> Vec<String> {
    let (_dir, root) = write_tree(&w.tree, raw);
    for &i in &w.tree.members {
        let name = IMAGES[i].name;
        match vhdx::check::repair_file(&root.join(name)) {
            Err(e) => return vec![format!("{name}: check --repair fails ({:?}) — {e}", e.kind())],
            Ok(r) if !r.after.is_clean() => {
                return vec![format!("{name}: check --repair leaves errors — {:?}", r.after.errors)];
            }
            Ok(_) => {}
        }
    }
    let v = verify(w, &Files::new(&w.tree, &root, read_tree(&w.tree, &root)), &w.during, false, None);
    if !v.is_empty() {
        return v.into_iter().map(|v| format!("after check --repair: {v}")).collect();
    }
    match catch_unwind(AssertUnwindSafe(|| w.run(&root, None))) {
        Err(p) => return vec![format!("the re-run after check --repair panics — {}", panic_text(p))],
        Ok(Err(e)) => {
            let complete = verify(w, &Files::new(&w.tree, &root, read_tree(&w.tree, &root)), &w.after, true, None);
            if !complete.is_empty() {
                return vec![format!("the re-run after check --repair fails ({:?}) — {e}", e.kind())];
            }
        }
        Ok(Ok(())) => {}
    }
    let v = verify(w, &Files::new(&w.tree, &root, read_tree(&w.tree, &root)), &w.after, true, None);
    v.into_iter().map(|v| format!("after check --repair and the re-run: {v}")).collect()
}

/// Which crash state each file is left in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Cut {
    Whole,
    Lost,
    /// The n-th of the file's other crash states.
    State(usize),
}

/// One file in one crash state, recovered.
#[derive(Clone)]
struct FileCut {
    recovered: Result<Arc<Vec<u8>>, String>,
    /// Names these bytes for the memo (`None`: not remembered).
    version: Option<u64>,
}

/// A file before the operation: as made, and recovered.
struct Initial {
    raw: Arc<Vec<u8>>,
    cut: FileCut,
}

impl FileCut {
    fn new(name: &str, raw: Vec<u8>, initial: &Initial, version: Option<u64>) -> FileCut {
        // An untouched file recovers as it did before the operation.
        if raw == *initial.raw {
            return initial.cut.clone();
        }
        FileCut { recovered: recover(name, raw).map(Arc::new), version }
    }
}

/// The crash states checked at one crash point (writes tear at `unit`
/// bytes, the images' logical sector: the unit the contract is about, as no
/// format can keep a sector old or new if the storage tears inside it):
/// everything, nothing, each
/// file with unflushed operations whole with the others lost, lost with the
/// others whole, and in each of its other states with the others whole; and
/// random mixes of every file's states.
fn cuts(pending: &[Vec<PendingOp>], unit: u64, k: u64, c: &Coverage) -> (Vec<Vec<Cut>>, Vec<Vec<CrashState>>) {
    let n = pending.len();
    let states: Vec<Vec<CrashState>> = pending
        .iter()
        .map(|p| {
            let all = crash_states(p, unit, k, c.per_file);
            all.into_iter().filter(|x| !matches!(x, CrashState::AllPending | CrashState::DurableOnly)).collect()
        })
        .collect();
    let with_pending: Vec<usize> = (0..n).filter(|&i| !pending[i].is_empty()).collect();
    let mut seen: BTreeSet<Vec<Cut>> = BTreeSet::new();
    let mut order = Vec::new();
    let mut push = |v: Vec<Cut>| {
        if seen.insert(v.clone()) {
            order.push(v);
        }
    };
    push(vec![Cut::Whole; n]);
    if !with_pending.is_empty() {
        push(vec![Cut::Lost; n]);
    }
    for &f in &with_pending {
        let mut v = vec![Cut::Lost; n];
        v[f] = Cut::Whole;
        push(v);
        let mut v = vec![Cut::Whole; n];
        v[f] = Cut::Lost;
        push(v);
        for j in 0..states[f].len() {
            let mut v = vec![Cut::Whole; n];
            v[f] = Cut::State(j);
            push(v);
        }
    }
    if with_pending.len() > 1 {
        let mut rng = Rng::new(k.wrapping_mul(7919).wrapping_add(13));
        for _ in 0..c.mixes {
            let v = (0..n)
                .map(|f| match pending[f].is_empty() {
                    true => Cut::Whole,
                    false => match rng.next() % (2 + states[f].len() as u64) {
                        0 => Cut::Whole,
                        1 => Cut::Lost,
                        j => Cut::State((j - 2) as usize),
                    },
                })
                .collect();
            push(v);
        }
    }
    (order, states)
}

fn describe(w: &Workload, cut: &[Cut], states: &[Vec<CrashState>]) -> String {
    if cut.iter().all(|c| *c == Cut::Whole) {
        return String::from("every file whole");
    }
    if cut.iter().all(|c| *c == Cut::Lost) {
        return String::from("every file's unflushed writes lost");
    }
    let parts: Vec<String> = cut
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != Cut::Whole)
        .map(|(slot, c)| {
            let name = IMAGES[w.tree.members[slot]].name;
            match c {
                Cut::State(j) => format!("{name} {:?}", states[slot][*j]),
                _ => format!("{name} {c:?}"),
            }
        })
        .collect();
    format!("{}, the others whole", parts.join(", "))
}

/// Everything a run of a workload found.
pub struct Outcome {
    pub figures: Figures,
    pub failures: Failures,
}

/// Crashes `w` after each of its storage operations and checks every crash
/// state chosen by `c`; then the same with `ENOSPC`.
pub fn crash_everywhere(w: &Workload, threads: usize, c: &Coverage) -> Outcome {
    let sink = Sink(Mutex::new(Failures::default()));
    let clock = FaultClock::new();
    let (r, storages) = run_faulty(w, &clock, &SpaceWatch::default()).unwrap_or_else(|e| panic!("{}: {e}", w.name));
    let ops = clock.mutating_ops();
    match r {
        Err(e) => sink.fail(w, "without a fault", &[format!("the operation fails ({:?}) — {e}", e.kind())]),
        Ok(()) => {
            let done: Vec<Arc<Vec<u8>>> = storages.iter().map(|s| Arc::new(s.volatile())).collect();
            let v = verify(w, &Files::new(&w.tree, &w.tree.root, done), &w.after, true, None);
            if !v.is_empty() {
                sink.fail(w, "without a fault", &v);
            }
        }
    }
    let initial: Vec<Initial> = (w.tree.files.iter().enumerate())
        .map(|(slot, b)| Initial {
            raw: b.clone(),
            cut: FileCut {
                recovered: recover(IMAGES[w.tree.members[slot]].name, b.to_vec()).map(Arc::new),
                version: Some(slot as u64 * 3),
            },
        })
        .collect();
    let counters: [AtomicU64; 3] = Default::default();
    let repair_at: BTreeSet<u64> = spread(ops + 1, c.repair_points).into_iter().collect();
    let (states, _) = for_each_crash_point(0..=ops, threads, |k, _| {
        let at = |what: &str| format!("crash after {k} of {ops}: {what}");
        let clock = FaultClock::new();
        clock.crash_after(k);
        let (result, storages) = match run_faulty(w, &clock, &SpaceWatch::default()) {
            Ok(x) => x,
            Err(e) => {
                sink.fail(w, &at("running"), &[e]);
                return 0;
            }
        };
        if result.is_ok() && clock.crashed() {
            sink.fail(w, &at("the result"), &[String::from("reports success although the storage failed under it")]);
        }
        let pending: Vec<Vec<PendingOp>> = storages.iter().map(|s| s.pending()).collect();
        let (cuts, states) = cuts(&pending, w.model.sector, k, c);
        let mut cache: BTreeMap<(usize, Cut), Arc<FileCut>> = BTreeMap::new();
        let mut memo = Memo::default();
        for (n, cut) in cuts.iter().enumerate() {
            // Without unflushed writes, every state of a file is its durable image.
            let cut: Vec<Cut> = cut
                .iter()
                .enumerate()
                .map(|(slot, &c)| if pending[slot].is_empty() { Cut::Whole } else { c })
                .collect();
            let raw = |slot: usize| {
                let s = &storages[slot];
                match cut[slot] {
                    Cut::Whole => s.crash_image(&CrashState::AllPending),
                    Cut::Lost => s.crash_image(&CrashState::DurableOnly),
                    Cut::State(j) => s.crash_image(&states[slot][j]),
                }
            };
            let files: Vec<Arc<FileCut>> = (cut.iter().enumerate())
                .map(|(slot, &which)| {
                    let make = |version| {
                        Arc::new(FileCut::new(IMAGES[w.tree.members[slot]].name, raw(slot), &initial[slot], version))
                    };
                    match which {
                        Cut::State(_) => make(None),
                        Cut::Whole => {
                            cache.entry((slot, which)).or_insert_with(|| make(Some(slot as u64 * 3 + 1))).clone()
                        }
                        Cut::Lost => {
                            cache.entry((slot, which)).or_insert_with(|| make(Some(slot as u64 * 3 + 2))).clone()
                        }
                    }
                })
                .collect();
            let what = describe(w, &cut, &states);
            let recovered: Result<Vec<Arc<Vec<u8>>>, String> = files.iter().map(|f| f.recovered.clone()).collect();
            let recovered = match recovered {
                Ok(r) => r,
                Err(e) => {
                    sink.fail(w, &at(&what), &[e]);
                    continue;
                }
            };
            let mut state = Files::new(&w.tree, &w.tree.root, recovered);
            state.versions = files.iter().map(|f| f.version).collect();
            // A state that breaks the contract is still re-run: whether the
            // re-run repairs it is worth knowing.
            let mut v = verify(w, &state, &w.during, false, Some(&mut memo));
            if v.is_empty() {
                counters[0].fetch_add(1, Ordering::Relaxed);
            }
            if n < 2 || (k + n as u64) % c.rerun_every == 0 {
                counters[1].fetch_add(1, Ordering::Relaxed);
                v.extend(rerun(w, &state.bytes));
            }
            if !v.is_empty() {
                sink.fail(w, &at(&what), &v);
            }
            if n == cuts.len() / 2 && repair_at.contains(&k) {
                counters[2].fetch_add(1, Ordering::Relaxed);
                let raw: Vec<Arc<Vec<u8>>> = (0..cut.len()).map(|slot| Arc::new(raw(slot))).collect();
                let v = repair_then_rerun(w, &raw);
                if !v.is_empty() {
                    sink.fail(w, &at(&what), &v);
                }
            }
        }
        cuts.len() as u64
    });
    let mut figures = Figures {
        storage_ops: ops,
        points: ops + 1,
        states,
        verified: counters[0].load(Ordering::Relaxed),
        reruns: counters[1].load(Ordering::Relaxed),
        repairs: counters[2].load(Ordering::Relaxed),
        ..Figures::default()
    };
    let (tried, verified) = no_space_everywhere(w, ops, threads, c, &initial, &sink);
    figures.enospc_points = tried;
    figures.enospc_verified = verified;
    let mut failures = sink.0.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.states.sort();
    Outcome { figures, failures }
}

/// The filesystem full from storage operation `k` on (for `k` in a spread of
/// `0..ops`; [`FaultClock::fill_after`]), for good or until the first write
/// refused (space freed at once by someone else): when a write is refused,
/// the operation must fail, every file (as the still-running process left
/// it) recover and meet the contract, and a re-run with space complete it.
/// Returns the points at which a write was refused, and those verified.
fn no_space_everywhere(
    w: &Workload,
    ops: u64,
    threads: usize,
    c: &Coverage,
    initial: &[Initial],
    sink: &Sink,
) -> (u64, u64) {
    let points = spread(ops, c.enospc_points);
    let verified = AtomicU64::new(0);
    let last = (points.len() as u64 * 2).saturating_sub(1);
    let (tried, _) = for_each_crash_point(0..=last, threads, |n, _| {
        let Some(&k) = points.get((n / 2) as usize) else { return 0 };
        let sticky = n % 2 == 1;
        let mode = if sticky { "for good" } else { "until the first refusal" };
        let at = format!("the filesystem full after operation {k} of {ops} ({mode})");
        let clock = FaultClock::new();
        clock.fill_after(Some(k));
        let space = SpaceWatch::new(!sticky);
        let (result, storages) = match run_faulty(w, &clock, &space) {
            Ok(x) => x,
            Err(e) => {
                sink.fail(w, &at, &[e]);
                return 1;
            }
        };
        match (&result, space.refusals()) {
            (Ok(()), 0) => return 0,
            (Ok(()), _) => {
                sink.fail(w, &at, &[String::from("reports success although a write failed with ENOSPC")]);
            }
            (Err(e), 0) => sink.fail(w, &at, &[format!("fails without the fault — {e}")]),
            (Err(_), _) => {}
        }
        let mut recovered = Vec::new();
        for (slot, s) in storages.iter().enumerate() {
            match FileCut::new(IMAGES[w.tree.members[slot]].name, s.volatile(), &initial[slot], None).recovered {
                Ok(b) => recovered.push(b),
                Err(e) => {
                    sink.fail(w, &at, &[e]);
                    return 1;
                }
            }
        }
        let mut v = verify(w, &Files::new(&w.tree, &w.tree.root, recovered.clone()), &w.during, false, None);
        v.extend(rerun(w, &recovered));
        if v.is_empty() {
            verified.fetch_add(1, Ordering::Relaxed);
        } else {
            sink.fail(w, &at, &v);
        }
        1
    });
    (tried, verified.into_inner())
}
