//! VHD disks crashed at every operation of allocating writes: each crash
//! state (none, all, prefixes, tears, reordered subsets, scattered pieces
//! of what was pending since the last flush) must open — writable, so a
//! damaged trailing footer falls back to the copy at offset 0 — and read
//! every flushed byte; every sector an unflushed write touched reads wholly
//! as before or after it. A differencing child's sectors its writes never
//! touched read as its parent's, whatever the crash.

use vhdx::io::FaultStorage;
use vhdx::vhd::{VhdCreateOptions, VhdDisk};
use vhdx::{MemStorage, Storage};

use crate::common::data::pattern;
use crate::support::{crash_states, for_each_crash_point, Budget};

const SIZE: u64 = 5 << 20;

/// The writes, in sessions separated by flushes: allocations, a partial
/// sector, a write crossing a block boundary, one into a block already
/// stored. No sector is written twice within a session.
fn sessions() -> Vec<Vec<(u64, Vec<u8>)>> {
    vec![
        vec![(0, pattern(1, 4096)), ((2 << 20) - 1000, pattern(2, 3000))],
        vec![(1 << 20, pattern(3, 700)), (8192, pattern(4, 512)), ((4 << 20) + 5, pattern(5, 100))],
        vec![((3 << 20) + 4096, pattern(6, 65536)), (100, pattern(7, 10))],
    ]
}

/// The parent of the differencing case: 5 MiB of a pattern.
fn parent_bytes() -> Vec<u8> {
    let mut p = VhdDisk::create_on(Box::new(MemStorage::new()), &VhdCreateOptions::fixed(SIZE)).unwrap();
    p.write_at(&pattern(99, SIZE as usize), 0).unwrap();
    let s = p.into_storage().unwrap();
    let mut v = vec![0u8; s.len().unwrap() as usize];
    s.read_exact_at(&mut v, 0).unwrap();
    v
}

fn parent(bytes: &[u8]) -> VhdDisk {
    VhdDisk::open_storage(Box::new(MemStorage::from_vec(bytes.to_vec())), false).unwrap()
}

/// Runs the workload on `storage`; returns how many sessions' flushes
/// returned, and every write issued.
fn run(storage: FaultStorage, differencing: Option<&[u8]>) -> (usize, usize, vhdx::Result<()>) {
    let mut flushed = 0;
    let mut issued = 0;
    let result = (|| {
        let mut disk = match differencing {
            None => {
                VhdDisk::create_on(Box::new(storage.clone()), &VhdCreateOptions::dynamic(SIZE).block_size(1 << 20))?
            }
            Some(p) => VhdDisk::create_differencing_on(Box::new(storage.clone()), parent(p))?,
        };
        disk.flush()?;
        for session in sessions() {
            for (at, data) in &session {
                issued += 1;
                disk.write_at(data, *at)?;
            }
            disk.flush()?;
            flushed += 1;
        }
        drop(disk.abandon());
        Ok(())
    })();
    (flushed, issued, result)
}

fn check(differencing: bool) {
    let parent_image = differencing.then(parent_bytes);
    let under: Vec<u8> = match &parent_image {
        Some(p) => p[..SIZE as usize].to_vec(),
        None => vec![0u8; SIZE as usize],
    };
    let probe = FaultStorage::new();
    let (_, _, r) = run(probe.clone(), parent_image.as_deref());
    r.unwrap();
    let total = probe.mutating_ops();
    let budget = Budget { prefixes: 4, tears: 2, subsets: Some(24) };
    let name = if differencing { "differencing" } else { "dynamic" };
    let mends = std::sync::atomic::AtomicU64::new(0);
    let (states, failures) = for_each_crash_point(1..=total, 2, |k, fail| {
        let storage = FaultStorage::new();
        storage.crash_after(k);
        let (flushed, issued, result) = run(storage.clone(), parent_image.as_deref());
        if result.is_ok() {
            fail(format!("{name} k={k}: the workload succeeded although the storage crashed"));
            return 0;
        }
        let all: Vec<(u64, Vec<u8>)> = sessions().into_iter().flatten().collect();
        let done: usize = sessions().iter().take(flushed).map(Vec::len).sum();
        let mut durable = under.clone();
        for (at, data) in &all[..done] {
            durable[*at as usize..*at as usize + data.len()].copy_from_slice(data);
        }
        let mut after = durable.clone();
        for (at, data) in &all[done..issued.min(all.len())] {
            after[*at as usize..*at as usize + data.len()].copy_from_slice(data);
        }
        let created = storage.flushes() > 0;
        let states = crash_states(&storage.pending(), 512, k, budget);
        for state in &states {
            let image = storage.crash_image(state);
            let opened = VhdDisk::open_storage(Box::new(MemStorage::from_vec(image)), true);
            let disk = match (opened, &parent_image) {
                (Ok(d), Some(p)) => match d.with_parent(parent(p)) {
                    Ok(d) => d,
                    Err(e) => {
                        fail(format!("{name} k={k} {state:?}: the parent no longer fits: {e}"));
                        continue;
                    }
                },
                (Ok(d), None) => d,
                (Err(_), _) if !created => continue,
                (Err(e), _) => {
                    fail(format!("{name} k={k} {state:?}: does not open: {e}"));
                    continue;
                }
            };
            let mut got = vec![0u8; SIZE as usize];
            if let Err(e) = disk.read_at(&mut got, 0) {
                fail(format!("{name} k={k} {state:?}: read failed: {e}"));
                continue;
            }
            for s in 0..(SIZE / 512) as usize {
                let r = s * 512..s * 512 + 512;
                if got[r.clone()] != durable[r.clone()] && got[r.clone()] != after[r.clone()] {
                    fail(format!("{name} k={k} {state:?}: sector {s} is neither before nor after"));
                    break;
                }
            }
            // The writable open put a damaged trailing footer back: a
            // read-only open now finds it at the end, and the same bytes.
            let mended = disk.mended_footer();
            let bytes = {
                let s = disk.into_storage().unwrap();
                let mut v = vec![0u8; s.len().unwrap() as usize];
                s.read_exact_at(&mut v, 0).unwrap();
                v
            };
            let again = VhdDisk::open_storage(Box::new(MemStorage::from_vec(bytes)), false).unwrap();
            if again.used_footer_copy() {
                fail(format!("{name} k={k} {state:?}: the trailing footer is still damaged (mended: {mended})"));
            }
            let again = match &parent_image {
                Some(p) => again.with_parent(parent(p)).unwrap(),
                None => again,
            };
            let mut back = vec![0u8; SIZE as usize];
            again.read_at(&mut back, 0).unwrap();
            if back != got {
                fail(format!("{name} k={k} {state:?}: reads differently after the footer was mended"));
            }
            mends.fetch_add(mended as u64, std::sync::atomic::Ordering::Relaxed);
        }
        states.len() as u64
    });
    let mends = mends.into_inner();
    println!(
        "crash VHD {name}: {total} crash points, {states} crash states, {mends} damaged footers mended, {} failures",
        failures.len()
    );
    assert!(mends > 0, "{name}: no crash state damaged the trailing footer, so its mending went untested");
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(states > total, "{name}: crash states were built");
}

#[test]
fn vhd_dynamic_allocations_survive_a_crash_at_every_operation() {
    check(false);
}

#[test]
fn vhd_differencing_writes_survive_a_crash_at_every_operation() {
    check(true);
}

/// The filesystem fills before each storage operation of a session of
/// allocating writes: each write lands or fails; after a failure the open
/// disk reads every sector as before or after the writes issued, and so
/// does the file reopened (writable: a damaged trailing footer is put
/// back), with everything flushed before the session intact.
fn fill(differencing: bool) {
    let parent_image = differencing.then(parent_bytes);
    let under: Vec<u8> = match &parent_image {
        Some(p) => p[..SIZE as usize].to_vec(),
        None => vec![0u8; SIZE as usize],
    };
    let writes: Vec<(u64, Vec<u8>)> = sessions().into_iter().flatten().collect();
    let session = |storage: FaultStorage| -> (vhdx::Result<()>, usize, Vec<u8>) {
        let mut disk = match &parent_image {
            None => VhdDisk::open_storage(Box::new(storage), true).unwrap(),
            Some(p) => VhdDisk::open_storage(Box::new(storage), true).unwrap().with_parent(parent(p)).unwrap(),
        };
        let mut issued = 0;
        let r = (|| {
            for (at, data) in &writes {
                issued += 1;
                disk.write_at(data, *at)?;
            }
            disk.flush()
        })();
        let mut got = vec![0u8; SIZE as usize];
        disk.read_at(&mut got, 0).unwrap();
        drop(disk.abandon());
        (r, issued, got)
    };
    // A flushed, empty disk to start from.
    let empty = {
        let s = FaultStorage::new();
        match &parent_image {
            None => drop(
                VhdDisk::create_on(Box::new(s.clone()), &VhdCreateOptions::dynamic(SIZE).block_size(1 << 20)).unwrap(),
            ),
            Some(p) => drop(VhdDisk::create_differencing_on(Box::new(s.clone()), parent(p)).unwrap()),
        }
        s.volatile()
    };
    let probe = FaultStorage::from_vec(empty.clone());
    assert!(session(probe.clone()).0.is_ok());
    let total = probe.mutating_ops();
    let mut failed = 0;
    for n in 0..=total {
        let storage = FaultStorage::from_vec(empty.clone());
        storage.fill_after(Some(n));
        let (r, issued, seen) = session(storage.clone());
        failed += r.is_err() as u64;
        let mut after = under.clone();
        for (at, data) in &writes[..issued] {
            after[*at as usize..*at as usize + data.len()].copy_from_slice(data);
        }
        storage.fill_after(None);
        let reopened = VhdDisk::open_storage(Box::new(MemStorage::from_vec(storage.volatile())), true).unwrap();
        let reopened = match &parent_image {
            Some(p) => reopened.with_parent(parent(p)).unwrap(),
            None => reopened,
        };
        let mut got = vec![0u8; SIZE as usize];
        reopened.read_at(&mut got, 0).unwrap();
        for (what, view) in [("the open disk", &seen), ("the file reopened", &got)] {
            for s in 0..(SIZE / 512) as usize {
                let r = s * 512..s * 512 + 512;
                let ok = view[r.clone()] == under[r.clone()] || view[r.clone()] == after[r.clone()];
                assert!(ok, "full after {n}: sector {s} of {what} is neither before nor after");
            }
        }
    }
    assert!(failed > 0, "the filesystem never filled under a write");
}

#[test]
fn vhd_dynamic_writes_on_a_filling_filesystem_lose_nothing() {
    fill(false);
}

#[test]
fn vhd_differencing_writes_on_a_filling_filesystem_lose_nothing() {
    fill(true);
}
