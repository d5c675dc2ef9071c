//! Crashes while four threads write one disk at once through
//! `write_concurrently` (stored blocks, new blocks, a differencing disk's
//! new sectors, whole or in part, under the shared lock once the session's
//! first change is made) and flush now and then with `flush_concurrently`
//! (shared when only shared allocations are pending). Into a differencing
//! disk every third write goes in two pieces split inside a sector, so
//! that each piece merges the parent's bytes (or the unit's earlier ones)
//! into that sector.
//!
//! The threads run freely, so each crash point falls somewhere different on
//! each run; what must hold holds for any interleaving. Each thread owns
//! its own 4 KiB units and writes each one with a value naming the thread
//! and the write, so after a crash every unit must read as one of: the
//! thread's last write to it that a flush of that thread covered (or the
//! unit's first content, when none did), or any later write to it. Every
//! crash state also opens writable, replays, and checks clean.

use std::sync::{Mutex, RwLock};

use vhdx::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
use vhdx::io::{FaultStorage, PendingOp};
use vhdx::{CreateOptions, Disk, MemStorage, OpenOptions};

use crate::support::{crash_states, for_each_crash_point, guids, Budget, MIB};

const SIZE: u64 = 16 * MIB;
const UNIT: u64 = 4096;
const THREADS: usize = 4;
const WRITES: usize = 40;

/// The value a write fills its unit with: thread and write number.
fn value(thread: usize, write: usize) -> u8 {
    (1 + thread * WRITES + write) as u8
}

/// Thread `t`'s units: every `THREADS`-th 4 KiB unit from `t`, spread over
/// blocks that are stored (the first half, written before) and blocks that
/// are not (the second half: writes reserve them).
fn units(t: usize) -> Vec<u64> {
    (0..SIZE / UNIT).filter(|u| (u % 97) as usize % THREADS == t && u % 3 == 0).collect()
}

/// One thread's record: per write (unit, value, whether it succeeded),
/// and how many of its writes its last successful flush covered.
#[derive(Default, Clone)]
struct Record {
    writes: Vec<(u64, u8, bool)>,
    flushed: usize,
}

/// How the writers meet a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A crash: the thread stops at its first failure, and the disk is
    /// abandoned as a killed process leaves it.
    Crash,
    /// A full filesystem: the threads go on past failures; then space comes
    /// back, and a flush and a clean close must succeed.
    Fill,
}

/// The starting image: a dynamic disk whose first half is stored (all
/// 0x11); or (`child`) a differencing child of that disk holding the
/// first quarter itself (all 0x22), and the parent.
fn start(child: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let opts = CreateOptions::dynamic(SIZE).block_size(MIB as u32);
    let mut d = Disk::create_on(Box::new(MemStorage::new()), &opts, Some(guids(7))).unwrap();
    d.write_at(&vec![0x11; (SIZE / 2) as usize], 0).unwrap();
    let parent = crate::support::read_all(d.into_storage().unwrap().as_ref());
    if !child {
        return (parent, None);
    }
    let p = crate::support::open_ro(&parent);
    let mut loc = ParentLocator { entries: Vec::new() };
    loc.set(PARENT_LINKAGE, braced_guid(&p.data_write_guid()));
    loc.set(RELATIVE_PATH, String::from(r".\parent.vhdx"));
    let mut c =
        Disk::create_differencing_on(Box::new(MemStorage::new()), p, loc, Some(MIB as u32), Some(guids(8))).unwrap();
    c.write_at(&vec![0x22; (SIZE / 4) as usize], 0).unwrap();
    (crate::support::read_all(c.into_storage().unwrap().as_ref()), Some(parent))
}

/// Options opening the image under test, with its parent when it has one.
fn options(parent: Option<&Vec<u8>>, writable: bool, seed: u64) -> OpenOptions {
    let o = OpenOptions::new().writable(writable).guid_source(guids(seed));
    match parent {
        Some(p) => o.parent(crate::support::open_ro(p)),
        None => o,
    }
}

/// Where a differencing disk's split writes are split, inside the unit's
/// second sector.
const SPLIT: usize = 1000;

/// Runs the four writers on `storage` until they finish or the crash stops
/// them; returns their records.
fn run(storage: FaultStorage, parent: Option<&Vec<u8>>, mode: Mode) -> Vec<Record> {
    let clock = storage.clock().clone();
    let disk = match options(parent, true, 99).open_storage(Box::new(storage)) {
        Ok(d) => RwLock::new(d),
        Err(_) => return vec![Record::default(); THREADS],
    };
    let records: Vec<Mutex<Record>> = (0..THREADS).map(|_| Mutex::new(Record::default())).collect();
    std::thread::scope(|s| {
        for (t, record) in records.iter().enumerate() {
            let disk = &disk;
            s.spawn(move || {
                let mine = units(t);
                for w in 0..WRITES {
                    // 13 units per thread, across both halves, each written
                    // about three times.
                    let unit = mine[(w * 7 + t) % 13 * (mine.len() / 13)];
                    let v = value(t, w);
                    // Recorded before it is tried: a write that fails may
                    // still have reached the file.
                    record.lock().unwrap().writes.push((unit, v, false));
                    let data = [v; UNIT as usize];
                    let at = unit * UNIT;
                    let written = if parent.is_some() && w % 3 == 1 {
                        vhdx::write_concurrently(disk, &data[..SPLIT], at)
                            .and_then(|()| vhdx::write_concurrently(disk, &data[SPLIT..], at + SPLIT as u64))
                    } else {
                        vhdx::write_concurrently(disk, &data, at)
                    };
                    if written.is_err() {
                        if mode == Mode::Crash {
                            return;
                        }
                    } else {
                        record.lock().unwrap().writes.last_mut().unwrap().2 = true;
                    }
                    if w % 5 == 4 {
                        let covered = record.lock().unwrap().writes.len();
                        if vhdx::flush_concurrently(disk).is_err() {
                            if mode == Mode::Crash {
                                return;
                            }
                        } else {
                            record.lock().unwrap().flushed = covered;
                        }
                    }
                }
            });
        }
    });
    let mut records: Vec<Record> = records.into_iter().map(|r| r.into_inner().unwrap()).collect();
    let disk = disk.into_inner().unwrap_or_else(|p| p.into_inner());
    if mode == Mode::Crash {
        // The crash (or the end) leaves the disk as a killed process would.
        disk.abandon();
        return records;
    }
    // Space again: the disk, never reopened, flushes and closes cleanly,
    // and then every write that succeeded is durable.
    clock.fill_after(None);
    disk.close().expect("a disk that met a full filesystem closes once there is space");
    for r in &mut records {
        r.flushed = r.writes.len();
    }
    records
}

/// Whether `image` keeps everything the records say must be kept.
fn verify(image: Vec<u8>, start: &[u8], parent: Option<&Vec<u8>>, records: &[Record]) -> Result<(), String> {
    let storage = Box::new(MemStorage::from_vec(image));
    let disk = options(parent, true, 1234).open_storage(storage).map_err(|e| format!("does not open writable: {e}"))?;
    let mut got = vec![0u8; SIZE as usize];
    disk.read_at(&mut got, 0).map_err(|e| format!("does not read: {e}"))?;
    let mut before = vec![0u8; SIZE as usize];
    options(parent, false, 1)
        .open_storage(Box::new(MemStorage::from_vec(start.to_vec())))
        .unwrap()
        .read_at(&mut before, 0)
        .unwrap();
    for (t, r) in records.iter().enumerate() {
        for unit in units(t) {
            let history: Vec<(usize, u8, bool)> = r
                .writes
                .iter()
                .enumerate()
                .filter(|(_, (u, _, _))| *u == unit)
                .map(|(i, &(_, v, ok))| (i, v, ok))
                .collect();
            // The last write a flush covered that succeeded must be there,
            // or one after it (a failed write may have reached the file).
            let last_flushed = history.iter().rev().find(|(i, _, ok)| *i < r.flushed && *ok);
            let mut allowed: Vec<u8> = match last_flushed {
                Some(&(_, v, _)) => vec![v],
                None => vec![before[(unit * UNIT) as usize]],
            };
            allowed.extend(
                history.iter().filter(|(i, _, _)| last_flushed.is_none_or(|(f, _, _)| i > f)).map(|(_, v, _)| *v),
            );
            let bytes = &got[(unit * UNIT) as usize..((unit + 1) * UNIT) as usize];
            // A torn write may leave part old, part new: each sector alone
            // (each side of a split write's split alone) must be one of the
            // allowed values.
            let mut cuts: Vec<usize> = (0..=UNIT as usize).step_by(512).collect();
            if parent.is_some() {
                cuts.insert(2, SPLIT);
            }
            for cut in cuts.windows(2) {
                let piece = &bytes[cut[0]..cut[1]];
                if !piece.iter().all(|&b| b == piece[0]) || !allowed.contains(&piece[0]) {
                    return Err(format!(
                        "thread {t}'s unit {unit} bytes {}..{} read {:02x?}, allowed {allowed:?}",
                        cut[0],
                        cut[1],
                        &piece[..8]
                    ));
                }
            }
        }
    }
    let storage = disk.into_storage().map_err(|e| format!("does not close: {e}"))?;
    let report = vhdx::check::check_storage(storage).map_err(|e| format!("check failed to run: {e}"))?;
    if !report.is_clean() {
        return Err(format!("check reports errors: {:?}", report.errors));
    }
    Ok(())
}

/// Crash points spread over the whole run of the four writers, a few crash
/// states each; nothing flushed is lost in any of them. For a dynamic disk
/// (stored blocks written shared, new ones reserved) and a differencing one
/// (new sectors placed, written shared, then committed).
#[test]
fn concurrent_writers_lose_nothing_flushed_at_any_crash_point() {
    for child in [false, true] {
        let kind = if child { "differencing" } else { "dynamic" };
        let (start, parent) = start(child);
        let parent = parent.as_ref();
        // How many mutating operations a whole run takes (it varies a
        // little with the interleaving).
        let probe = FaultStorage::from_vec(start.clone());
        let full = run(probe.clone(), parent, Mode::Crash);
        assert!(
            full.iter().all(|r| r.writes.len() == WRITES && r.flushed == WRITES && r.writes.iter().all(|w| w.2)),
            "{kind}: a run without a crash completes"
        );
        verify(crate::support::read_all(&probe), &start, parent, &full).expect("the run without a crash");
        let ops = probe.mutating_ops();
        let points = if std::env::var_os("VHDX_CRASH_SOAK").is_some() { ops } else { ops.min(40) };
        let budget = Budget { prefixes: 2, tears: 1, subsets: Some(4) };
        let (states, failures) = for_each_crash_point(1..=points, 2, |i, fail| {
            let k = 1 + (i - 1) * ops / points;
            let storage = FaultStorage::from_vec(start.clone()).with_crash_after(k);
            let records = run(storage.clone(), parent, Mode::Crash);
            let pending: Vec<PendingOp> = storage.pending();
            let mut tried = 0;
            for state in crash_states(&pending, 512, k, budget) {
                tried += 1;
                if let Err(e) = verify(storage.crash_image(&state), &start, parent, &records) {
                    fail(format!("{kind}: crash after {k} operations, {state:?}: {e}"));
                }
            }
            tried
        });
        assert!(failures.is_empty(), "{} of {states} crash states failed:\n{}", failures.len(), failures.join("\n"));
        eprintln!("concurrent writers ({kind}): {points} crash points of {ops} operations, {states} crash states");
    }
}

/// The filesystem fills at points spread over the run of the four writers:
/// writes and flushes fail for lack of space, the writers go on, and once
/// space comes back the same open disk flushes and closes cleanly, with
/// every write that succeeded in it and nothing else changed.
#[test]
fn concurrent_writers_on_a_filling_filesystem_lose_nothing() {
    for child in [false, true] {
        let kind = if child { "differencing" } else { "dynamic" };
        let (start, parent) = start(child);
        let parent = parent.as_ref();
        let probe = FaultStorage::from_vec(start.clone());
        run(probe.clone(), parent, Mode::Crash);
        let ops = probe.mutating_ops();
        let points = if std::env::var_os("VHDX_CRASH_SOAK").is_some() { ops } else { ops.min(25) };
        let (_, failures) = for_each_crash_point(1..=points, 2, |i, fail| {
            let k = 1 + (i - 1) * ops / points;
            let storage = FaultStorage::from_vec(start.clone());
            storage.clock().fill_after(Some(k));
            let records = run(storage.clone(), parent, Mode::Fill);
            if let Err(e) = verify(storage.durable(), &start, parent, &records) {
                fail(format!("{kind}: full after {k} operations: {e}"));
            }
            1
        });
        assert!(failures.is_empty(), "{} fill points failed:\n{}", failures.len(), failures.join("\n"));
    }
}
