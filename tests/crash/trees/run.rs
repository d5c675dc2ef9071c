//! Running an operation on a tree with a power cut, or `ENOSPC`, after each
//! of its storage operations, and checking every crash state and how it is
//! finished ([`finish`](super::finish)); the re-run itself crashed too.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhdx::io::{CrashState, FaultClock, FaultStorage, FileOpener, PendingOp};

use super::check::{Files, Memo};
use super::cuts::{cuts, describe, Cut, FileCut, Initial};
use super::files::{opener_of, SpaceWatch};
use super::finish::{finish, repair_then_rerun, verify, How};
use super::model::IMAGES;
use super::ops::Workload;
use crate::support::{for_each_crash_point, spread, Budget};
use crate::verify::panic_text;

/// How much of the crash space a run covers.
#[derive(Clone, Copy)]
pub struct Coverage {
    /// Crash states per file with unflushed operations.
    pub per_file: Budget,
    /// Crash states mixing every file's states at random.
    pub mixes: usize,
    /// Finish the operation on one crash state in this many (1: all; the
    /// states "everything" and "nothing" of every crash point always, and
    /// then run it once more).
    pub rerun_every: u64,
    /// Crash points at which one state gets `check --repair` on real files.
    pub repair_points: u64,
    /// Crash points at which the re-run of the state "everything" is itself
    /// crashed after each of its storage operations.
    pub nested_points: u64,
    /// `ENOSPC` points tried (each for good, and freed at the first refusal).
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
    /// Crash states finished by running the operation again.
    pub reruns: u64,
    /// Of those, merges first ended by `recover_merge`.
    pub recovered: u64,
    /// Finished states then run once more.
    pub again: u64,
    /// Crash points of re-runs (the re-run crashed), and their crash states
    /// (each finished by a re-run, counted here only).
    pub nested_points: u64,
    pub nested_states: u64,
    /// States repaired by `check --repair` on real files.
    pub repairs: u64,
    /// `ENOSPC`: runs tried, runs in which a write was refused, and those
    /// of these that met the contract.
    pub enospc_tried: u64,
    pub enospc_refused: u64,
    pub enospc_verified: u64,
    /// Time spent on the crash points, on the re-runs crashed, on `ENOSPC`.
    pub times: [std::time::Duration; 3],
}

impl std::ops::AddAssign for Figures {
    fn add_assign(&mut self, o: Figures) {
        self.storage_ops += o.storage_ops;
        self.points += o.points;
        self.states += o.states;
        self.verified += o.verified;
        self.reruns += o.reruns;
        self.recovered += o.recovered;
        self.again += o.again;
        self.nested_points += o.nested_points;
        self.nested_states += o.nested_states;
        self.repairs += o.repairs;
        self.enospc_tried += o.enospc_tried;
        self.enospc_refused += o.enospc_refused;
        self.enospc_verified += o.enospc_verified;
        for (t, o) in self.times.iter_mut().zip(o.times) {
            *t += o;
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} storage ops, {} crash points, {} crash states ({} with every image verified); {} finished by a \
             re-run ({} after recover_merge, {} then run once more); re-runs crashed at {} points, {} states (each finished); \
             {} check --repair; ENOSPC: {} runs, {} refused a write, {} verified ({:.0?} + {:.0?} + {:.0?})",
            self.storage_ops,
            self.points,
            self.states,
            self.verified,
            self.reruns,
            self.recovered,
            self.again,
            self.nested_points,
            self.nested_states,
            self.repairs,
            self.enospc_tried,
            self.enospc_refused,
            self.enospc_verified,
            self.times[0],
            self.times[1],
            self.times[2]
        )
    }
}

/// The figures, counted from several threads.
#[derive(Default)]
struct Counters {
    verified: AtomicU64,
    reruns: AtomicU64,
    recovered: AtomicU64,
    again: AtomicU64,
    nested_points: AtomicU64,
    nested_states: AtomicU64,
    repairs: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
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

/// The tree's `files` on fault-injecting storage sharing `clock` (and its
/// filesystem), watched for `ENOSPC` by `space`, and an opener serving them
/// by path.
fn session(
    w: &Workload,
    files: &[Arc<Vec<u8>>],
    clock: &FaultClock,
    space: &SpaceWatch,
) -> (Vec<FaultStorage>, FileOpener) {
    let storages: Vec<FaultStorage> = files.iter().map(|b| FaultStorage::on_clock(b.to_vec(), clock)).collect();
    let paths = w.tree.members.iter().map(|&i| w.tree.path(i));
    let watched: Vec<_> = storages.iter().map(|s| space.watch(s.clone())).collect();
    (storages, opener_of(paths.zip(watched).collect(), |_| {}))
}

/// The operation's result, and the storages it left.
type Faulty = (vhdx::Result<()>, Vec<FaultStorage>);

/// Runs the operation on `files` under `clock`.
fn run_faulty(w: &Workload, files: &[Arc<Vec<u8>>], clock: &FaultClock, space: &SpaceWatch) -> Result<Faulty, String> {
    let (storages, opener) = session(w, files, clock, space);
    let r = catch_unwind(AssertUnwindSafe(|| w.run(&w.tree.root, Some(opener))))
        .map_err(|p| format!("the operation panics — {}", panic_text(p)))?;
    Ok((r.map(|_| ()), storages))
}

/// One run of the crash points of `w` started on `start`: the top level
/// (the operation on the tree as made), or a re-run crashed in its turn.
struct Level<'a> {
    w: &'a Workload,
    c: &'a Coverage,
    sink: &'a Sink,
    n: &'a Counters,
    start: &'a [Arc<Vec<u8>>],
    initial: Vec<Initial>,
    ops: u64,
    /// Where this level began (the crash state whose re-run this is), or
    /// empty at the top.
    context: String,
    repair_at: BTreeSet<u64>,
}

impl Level<'_> {
    fn nested(&self) -> bool {
        !self.context.is_empty()
    }

    /// Crashes the operation after `k` of its storage operations and
    /// checks every crash state chosen by the coverage, finishing some;
    /// returns the states checked and the state "every file whole",
    /// recovered.
    fn crash_at(&self, k: u64) -> (u64, Option<Vec<Arc<Vec<u8>>>>) {
        let (w, c) = (self.w, self.c);
        let at = |what: &str| format!("{}crash after {k} of {}: {what}", self.context, self.ops);
        let clock = FaultClock::new();
        clock.crash_after(k);
        let (result, storages) = match run_faulty(w, self.start, &clock, &SpaceWatch::default()) {
            Ok(x) => x,
            Err(e) => {
                self.sink.fail(w, &at("running"), &[e]);
                return (0, None);
            }
        };
        if result.is_ok() && clock.crashed() {
            let e = String::from("reports success although the storage failed under it");
            self.sink.fail(w, &at("the result"), &[e]);
        }
        let pending: Vec<Vec<PendingOp>> = storages.iter().map(|s| s.pending()).collect();
        // A re-run crashed: every state finished, no more than nothing,
        // everything and each file whole or lost.
        let small = Coverage { per_file: Budget { prefixes: 0, tears: 0, subsets: None }, mixes: 0, ..*c };
        let (cuts, states) = cuts(&pending, w.model.sector, k, if self.nested() { &small } else { c });
        let mut cache: BTreeMap<(usize, Cut), Arc<FileCut>> = BTreeMap::new();
        let mut memo = Memo::default();
        let mut whole = None;
        // States finished at this point so far: every other one (changing
        // from point to point) gets `recover_merge` first.
        let mut finished = k;
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
                        let name = IMAGES[w.tree.members[slot]].name;
                        Arc::new(FileCut::new(name, raw(slot), &self.initial[slot], version))
                    };
                    let version = match which {
                        Cut::State(_) => return make(None),
                        Cut::Whole => slot as u64 * 3 + 1,
                        Cut::Lost => slot as u64 * 3 + 2,
                    };
                    cache.entry((slot, which)).or_insert_with(|| make(Some(version))).clone()
                })
                .collect();
            let what = describe(w, &cut, &states);
            let recovered: Result<Vec<Arc<Vec<u8>>>, String> = files.iter().map(|f| f.recovered.clone()).collect();
            let recovered = match recovered {
                Ok(r) => r,
                Err(e) => {
                    self.sink.fail(w, &at(&what), &[e]);
                    continue;
                }
            };
            let mut state = Files::new(&w.tree, &w.tree.root, recovered);
            state.versions = files.iter().map(|f| f.version).collect();
            // A state that breaks the contract is still finished: whether
            // that repairs it is worth knowing.
            let mut v = verify(w, &state, &w.during, false, Some(&mut memo));
            if v.is_empty() && !self.nested() {
                add(&self.n.verified, 1);
            }
            if self.nested() || n < 2 || (k + n as u64) % c.rerun_every == 0 {
                finished += 1;
                let how = How {
                    recover_first: w.rolled_back.is_some() && finished % 2 == 0,
                    again: n < 2 || c.rerun_every == 1,
                };
                if !self.nested() {
                    add(&self.n.reruns, 1);
                    add(&self.n.recovered, how.recover_first as u64);
                    add(&self.n.again, how.again as u64);
                }
                v.extend(finish(w, &state.bytes, how));
            }
            if !v.is_empty() {
                self.sink.fail(w, &at(&what), &v);
            }
            if n == cuts.len() / 2 && self.repair_at.contains(&k) {
                add(&self.n.repairs, 1);
                let raw: Vec<Arc<Vec<u8>>> = (0..cut.len()).map(|slot| Arc::new(raw(slot))).collect();
                let v = repair_then_rerun(w, &raw);
                if !v.is_empty() {
                    self.sink.fail(w, &at(&what), &v);
                }
            }
            if n == 0 {
                whole = Some(state.bytes);
            }
        }
        (cuts.len() as u64, whole)
    }
}

/// Everything a run of a workload found.
pub struct Outcome {
    pub figures: Figures,
    pub failures: Failures,
}

/// Crashes `w` after each of its storage operations and checks every crash
/// state chosen by `c`; at `c.nested_points` of them crashes the re-run of
/// the state "everything" after each of its operations; then the same with
/// `ENOSPC`.
pub fn crash_everywhere(w: &Workload, threads: usize, c: &Coverage) -> Outcome {
    let sink = Sink(Mutex::new(Failures::default()));
    let counters = Counters::default();
    let clock = FaultClock::new();
    let (r, storages) =
        run_faulty(w, &w.tree.files, &clock, &SpaceWatch::default()).unwrap_or_else(|e| panic!("{}: {e}", w.name));
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
    let top = Level {
        w,
        c,
        sink: &sink,
        n: &counters,
        start: &w.tree.files,
        initial: Initial::all(w, &w.tree.files, false),
        ops,
        context: String::new(),
        repair_at: spread(ops + 1, c.repair_points).into_iter().collect(),
    };
    // The re-run crashed: in the middle of the operation, or at points
    // spread over it.
    let nest_at = match c.nested_points {
        0 => Vec::new(),
        1 => vec![ops / 2],
        n => spread(ops + 1, n),
    };
    let mut times = [std::time::Instant::now(); 4];
    let wholes = Mutex::new(BTreeMap::new());
    let (states, _) = for_each_crash_point(0..=ops, threads, |k, _| {
        let (states, whole) = top.crash_at(k);
        if let (true, Some(whole)) = (nest_at.contains(&k), whole) {
            wholes.lock().unwrap().insert(k, whole);
        }
        states
    });
    times[1] = std::time::Instant::now();
    for (k, start) in wholes.into_inner().unwrap() {
        let what = format!("crash after {k} of {ops}, every file whole, re-run: ");
        let probe = FaultClock::new();
        match run_faulty(w, &start, &probe, &SpaceWatch::default()) {
            Ok((Ok(()), _)) => {}
            Ok((Err(e), _)) => sink.fail(w, &what, &[format!("the re-run fails ({:?}) — {e}", e.kind())]),
            Err(e) => sink.fail(w, &what, &[e]),
        }
        let rerun_ops = probe.mutating_ops();
        if rerun_ops == 0 {
            continue;
        }
        let nested = Level {
            start: &start,
            initial: Initial::all(w, &start, true),
            ops: rerun_ops,
            context: what,
            repair_at: BTreeSet::new(),
            ..top
        };
        let (s, _) = for_each_crash_point(0..=rerun_ops - 1, threads, |j, _| nested.crash_at(j).0);
        add(&counters.nested_points, rerun_ops);
        add(&counters.nested_states, s);
    }

    times[2] = std::time::Instant::now();
    let mut figures = Figures {
        storage_ops: ops,
        points: ops + 1,
        states,
        verified: counters.verified.load(Ordering::Relaxed),
        reruns: counters.reruns.load(Ordering::Relaxed),
        recovered: counters.recovered.load(Ordering::Relaxed),
        again: counters.again.load(Ordering::Relaxed),
        nested_points: counters.nested_points.load(Ordering::Relaxed),
        nested_states: counters.nested_states.load(Ordering::Relaxed),
        repairs: counters.repairs.load(Ordering::Relaxed),
        ..Figures::default()
    };
    (figures.enospc_tried, figures.enospc_refused, figures.enospc_verified) =
        no_space_everywhere(w, ops, threads, c, &top.initial, &sink);
    times[3] = std::time::Instant::now();
    figures.times = [times[1] - times[0], times[2] - times[1], times[3] - times[2]];
    // Nothing may have written to the tree as made, which stays on disk for
    // path resolution (a record or a locator naming it would lead there).
    for (slot, &i) in w.tree.members.iter().enumerate() {
        if std::fs::read(w.tree.path(i)).ok().as_deref() != Some(&w.tree.files[slot][..]) {
            sink.fail(w, "the tree as made", &[format!("{}: written to during the test", IMAGES[i].name)]);
        }
    }
    let mut failures = sink.0.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.states.sort();
    Outcome { figures, failures }
}

/// The filesystem full from storage operation `k` on (for `k` in a spread of
/// `0..ops`; [`FaultClock::fill_after`]), for good or until the first write
/// refused (space freed at once by someone else): when a write is refused,
/// the operation must fail, every file (as the still-running process left
/// it) recover and meet the contract, and a re-run with space complete it.
/// Returns the runs tried, those in which a write was refused, and those of
/// these verified.
fn no_space_everywhere(
    w: &Workload,
    ops: u64,
    threads: usize,
    c: &Coverage,
    initial: &[Initial],
    sink: &Sink,
) -> (u64, u64, u64) {
    let points = spread(ops, c.enospc_points);
    if points.is_empty() {
        return (0, 0, 0);
    }
    let (refused, verified) = (AtomicU64::new(0), AtomicU64::new(0));
    let runs = points.len() as u64 * 2;
    for_each_crash_point(0..=runs.saturating_sub(1), threads, |n, _| {
        let k = points[(n / 2) as usize];
        let sticky = n % 2 == 1;
        let mode = if sticky { "for good" } else { "until the first refusal" };
        let at = format!("the filesystem full after operation {k} of {ops} ({mode})");
        let clock = FaultClock::new();
        clock.fill_after(Some(k));
        let space = SpaceWatch::new(!sticky);
        let (result, storages) = match run_faulty(w, &w.tree.files, &clock, &space) {
            Ok(x) => x,
            Err(e) => {
                sink.fail(w, &at, &[e]);
                return 1;
            }
        };
        match (&result, space.refusals()) {
            (Ok(()), 0) => return 1,
            (Ok(()), _) => {
                sink.fail(w, &at, &[String::from("reports success although a write failed with ENOSPC")]);
            }
            (Err(e), 0) => sink.fail(w, &at, &[format!("fails without the fault — {e}")]),
            (Err(_), _) => {}
        }
        add(&refused, 1);
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
        let how = How { recover_first: w.rolled_back.is_some() && sticky, again: true };
        v.extend(finish(w, &recovered, how));
        if v.is_empty() {
            add(&verified, 1);
        } else {
            sink.fail(w, &at, &v);
        }
        1
    });
    (runs, refused.into_inner(), verified.into_inner())
}
