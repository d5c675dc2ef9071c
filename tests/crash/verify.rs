//! Verifying a crash image: it opens (replaying the log), presents every
//! flushed byte and each unflushed sector wholly old or new (every byte of
//! the virtual disk compared, whatever its map says), and passes
//! `check`; deeper, its read-only view agrees, it survives a crash of its
//! own recovery, and it takes new writes.

use std::sync::Arc;

use vhdx::io::FaultStorage;
use vhdx::{Disk, ErrorKind, Extent, MemStorage, OpenOptions, Storage};

use crate::support::{
    crash_states, guids, open_shared, pattern, read_all, spread, Budget, Recorder, SharedImage, Workload, MIB,
};

// ------------------------------------------------------------------ checks

/// Where the content before any write (the workload's reference) is not
/// all zeros, by the reference's own map: the reference is the image before
/// the workload (or the parent), not the recovered image under test, so the
/// recovered disk never chooses what is compared.
fn reference_data(w: &Workload) -> Result<Vec<(u64, u64)>, String> {
    let Some(r) = w.reference.as_ref() else { return Ok(Vec::new()) };
    let map = r.map().map_err(|e| format!("mapping the reference: {e}"))?;
    Ok(map.into_iter().filter(|m| m.extent != Extent::Zero).map(|m| (m.offset, m.offset + m.length)).collect())
}

/// The unit of comparison.
const CHUNK: u64 = 4 * MIB;

/// Up to this virtual size every byte is compared.
const WHOLE_COMPARE_MAX: u64 = 64 * MIB;

/// `[lo, hi)` in pieces that do not cross a multiple of [`CHUNK`].
fn chunks(lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut at = lo;
    std::iter::from_fn(move || {
        (at < hi).then(|| {
            let n = (hi - at).min(CHUNK - at % CHUNK);
            at += n;
            (at - n, n)
        })
    })
}

/// What [`compare_content`] compares: the whole virtual disk, whatever the
/// recovered disk's map says of it — up to [`WHOLE_COMPARE_MAX`]. A larger
/// disk (the resize workload grows to 128 GiB) cannot be read whole at each
/// of its crash states: there, in full, every range where the expected
/// content can be other than zeros (each write, the reference's data by its
/// own map) and every range the recovered disk's map does not call Zero,
/// and, of the rest, the first and last logical sector of each of 1024
/// equal slices of the disk and of every block of the first 64 MiB: a grid
/// the test chooses, not the disk.
fn compared_ranges(
    got: &Disk,
    w: &Workload,
    rec: &Recorder,
    reference: &[(u64, u64)],
) -> Result<Vec<(u64, u64)>, String> {
    let size = got.virtual_size();
    if size <= WHOLE_COMPARE_MAX {
        return Ok(vec![(0, size)]);
    }
    let s = w.sector;
    let mut r: Vec<(u64, u64)> = reference.to_vec();
    for (off, data) in &rec.writes {
        r.push((off / s * s, (off + data.len() as u64).div_ceil(s) * s));
    }
    for m in got.map().map_err(|e| format!("mapping: {e}"))? {
        if m.extent != Extent::Zero {
            r.push((m.offset, m.offset + m.length));
        }
    }
    r.push((0, WHOLE_COMPARE_MAX));
    let slice = (size / 1024).div_ceil(s) * s;
    for k in 0..1024u64 {
        let start = k * slice;
        if start < size {
            r.push((start, start + s));
            r.push(((start + slice).min(size) - s, (start + slice).min(size)));
        }
    }
    r.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in r.into_iter().filter(|&(a, _)| a < size).map(|(a, b)| (a, b.min(size))) {
        match merged.last_mut() {
            Some((_, e)) if a <= *e => *e = (*e).max(b),
            _ => merged.push((a, b)),
        }
    }
    Ok(merged)
}

pub fn apply(buf: &mut [u8], at: u64, offset: u64, data: &[u8]) {
    let end = at + buf.len() as u64;
    let lo = offset.max(at);
    let hi = (offset + data.len() as u64).min(end);
    if lo < hi {
        buf[(lo - at) as usize..(hi - at) as usize]
            .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
    }
}

/// Every flushed byte reads back; every sector an unflushed write touched
/// reads as one of its versions.
pub fn compare_content(got: &Disk, w: &Workload, rec: &Recorder) -> Result<(), String> {
    let reference = w.reference.as_ref();
    let sector = w.sector;
    match &rec.sizes {
        Some(sizes) if !sizes.contains(&got.virtual_size()) => {
            return Err(format!("virtual size {} instead of one of {sizes:?}", got.virtual_size()));
        }
        Some(_) => {}
        None => {
            let expect_size = reference.map_or(got.virtual_size(), |r| r.virtual_size());
            if got.virtual_size() != expect_size {
                return Err(format!("virtual size {} instead of {expect_size}", got.virtual_size()));
            }
        }
    }
    let reference_data = reference_data(w)?;
    let ranges = compared_ranges(got, w, rec, &reference_data)?;
    let (flushed, unflushed) = rec.writes.split_at(rec.flushed);
    let (mut g_buf, mut exp_buf) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    for (at, n) in ranges.iter().flat_map(|&(lo, hi)| chunks(lo, hi)) {
        let g = &mut g_buf[..n as usize];
        got.read_at(g, at).map_err(|e| format!("reading {n} bytes at {at:#x}: {e}"))?;
        let exp = &mut exp_buf[..n as usize];
        exp.fill(0);
        if let Some(r) = reference.filter(|_| reference_data.iter().any(|&(lo, hi)| lo < at + n && at < hi)) {
            // A child grown past its parent reads zeros there.
            let avail = r.virtual_size().saturating_sub(at).min(n) as usize;
            r.read_at(&mut exp[..avail], at).unwrap();
        }
        for (off, data) in flushed {
            apply(exp, at, *off, data);
        }
        if g != exp {
            for s in (0..n).step_by(sector as usize) {
                let range = s as usize..(s + sector) as usize;
                if g[range.clone()] == exp[range.clone()] {
                    continue;
                }
                let sector_at = at + s;
                let mut running = exp[range.clone()].to_vec();
                let mut ok = false;
                for (off, data) in unflushed {
                    if *off < sector_at + sector && sector_at < off + data.len() as u64 {
                        apply(&mut running, sector_at, *off, data);
                        if running[..] == g[range.clone()] {
                            ok = true;
                            break;
                        }
                    }
                }
                if !ok {
                    let first = (0..sector as usize).find(|&i| g[s as usize + i] != exp[s as usize + i]).unwrap();
                    return Err(format!(
                        "virtual sector at {sector_at:#x} is neither its flushed content nor any unflushed \
                             version (first difference at byte {first}: read {:#04x}, flushed {:#04x}; \
                             {} flushed and {} unflushed writes)",
                        g[s as usize + first],
                        exp[s as usize + first],
                        flushed.len(),
                        unflushed.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

pub fn open_options(w: &Workload, writable: bool) -> OpenOptions {
    let mut opts = OpenOptions::new().writable(writable).guid_source(guids(0xC0FFEE));
    if let Some(p) = &w.parent {
        opts = opts.parent(open_shared(p));
    }
    opts
}

pub fn open_writable(w: &Workload, image: Vec<u8>) -> vhdx::Result<Disk> {
    open_options(w, true).open_storage(Box::new(MemStorage::from_vec(image)))
}

pub fn check_clean(storage: Box<dyn Storage>, tolerated: &[String]) -> Result<(), String> {
    let report = vhdx::check::check_storage(storage).map_err(|e| format!("check failed to run: {e}"))?;
    let errors: Vec<&String> = report.errors.iter().filter(|e| !tolerated.contains(e)).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("check reports errors: {errors:?}"))
    }
}

/// How deeply to verify a crash state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Open writable, compare, check.
    Plain,
    /// Also: a read-only open (log replayed in memory) shows the same, and
    /// the recovered image takes new writes.
    Deep,
    /// Deep, and the recovery survives a crash at each of its own operations.
    DeepWithRecoveryCrashes,
}

/// Verifies one crash image; returns how many further crash states (of the
/// recovery itself) it verified on the way.
pub fn verify(w: &Workload, rec: &Recorder, image: Vec<u8>, depth: Depth) -> Result<u64, String> {
    let refused = |e: vhdx::Error, how: &str| -> Result<u64, String> {
        match e.kind() {
            ErrorKind::Corrupt if !rec.created => Ok(0),
            _ if !rec.created => Err(format!("{how} refused an unfinished image with {:?}: {e}", e.kind())),
            _ => Err(format!("{how} failed: {e}")),
        }
    };
    let mut nested = 0;
    let image = if depth != Depth::Plain {
        // The read-only view must present what the recovery will.
        let shared = Arc::new(image);
        match open_options(w, false).open_storage(Box::new(SharedImage(shared.clone()))) {
            Ok(d) => compare_content(&d, w, rec).map_err(|e| format!("read-only open: {e}"))?,
            Err(e) => return refused(e, "the read-only open"),
        }
        let image = Arc::try_unwrap(shared).expect("the read-only disk is gone");
        if depth == Depth::DeepWithRecoveryCrashes {
            nested = crash_the_recovery(w, rec, &image)?;
        }
        image
    } else {
        image
    };
    let disk = match open_writable(w, image) {
        Ok(d) => d,
        Err(e) => return refused(e, "the writable open"),
    };
    compare_content(&disk, w, rec)?;
    if depth == Depth::Plain {
        check_clean(disk.abandon(), &w.tolerated)?;
        return Ok(nested);
    }
    let recovered = read_all(&*disk.abandon());
    check_clean(Box::new(MemStorage::from_vec(recovered.clone())), &w.tolerated)?;
    let mut disk = open_writable(w, recovered).map_err(|e| format!("second writable open failed: {e}"))?;
    let size = disk.virtual_size();
    let writes = [(w.sector + 3, pattern(0xE1, 700)), (size / 2 + 5 * w.sector, pattern(0xE2, 2 * w.sector as usize))];
    for (at, data) in &writes {
        disk.write_at(data, *at).map_err(|e| format!("writing after recovery: {e}"))?;
    }
    let after = read_all(&*disk.into_storage().map_err(|e| format!("closing after recovery: {e}"))?);
    let disk = open_options(w, false)
        .open_storage(Box::new(MemStorage::from_vec(after.clone())))
        .map_err(|e| format!("reopening after recovery and new writes: {e}"))?;
    for (at, data) in &writes {
        let mut back = vec![0u8; data.len()];
        disk.read_at(&mut back, *at).map_err(|e| format!("reading back: {e}"))?;
        if &back != data {
            return Err(format!("a write after recovery at {at:#x} did not read back"));
        }
    }
    check_clean(Box::new(MemStorage::from_vec(after)), &w.tolerated)?;
    Ok(nested)
}

/// The crash states built when the recovery itself crashes.
pub const RECOVERY_BUDGET: Budget = Budget { prefixes: 4, tears: 3, subsets: None };

/// The recovery (a writable open that replays a log) crashed after each of
/// its operations (12 of them, spread, when it has more): every state it
/// leaves must verify as the crash image did.
pub fn crash_the_recovery(w: &Workload, rec: &Recorder, image: &[u8]) -> Result<u64, String> {
    let probe = FaultStorage::from_vec(image.to_vec());
    match open_options(w, true).open_storage(Box::new(probe.clone())) {
        Ok(d) => drop(d.abandon()),
        Err(_) => return Ok(0), // judged by the caller's own open
    }
    let ops = probe.mutating_ops();
    let mut states = 0;
    for j in spread(ops, 12) {
        let fs = FaultStorage::from_vec(image.to_vec()).with_crash_after(j);
        if open_options(w, true).open_storage(Box::new(fs.clone())).is_ok() {
            return Err(format!("the recovery reported success although the storage failed after {j} operations"));
        }
        for state in crash_states(&fs.pending(), w.sector, j, RECOVERY_BUDGET) {
            verify(w, rec, fs.crash_image(&state), Depth::Plain)
                .map_err(|e| format!("recovery crashed after {j} operations, {state:?}: {e}"))?;
            states += 1;
        }
    }
    Ok(states)
}

pub fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| String::from("panic"))
}
