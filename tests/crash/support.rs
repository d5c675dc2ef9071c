//! The crash tests' toolkit: deterministic data and GUIDs, the model of
//! what a workload wrote and flushed, the workload description, and the
//! crash states built from a crashed storage's record.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use vhdx::io::{CrashState, FaultStorage, PendingOp, Persisted, TORN_SECTOR_SIZE};
use vhdx::{Disk, Guid, GuidSource, IoError, MemStorage, OpenOptions, Storage};

pub const MIB: u64 = 1 << 20;

// ------------------------------------------------------------------ helpers

/// Deterministic GUIDs, so every re-run of a workload writes the same bytes.
pub fn guids(seed: u64) -> GuidSource {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        Guid::from_u128(((seed as u128) << 64) | n as u128)
    })
}

/// Deterministic non-zero bytes: the stream the crash figures (points,
/// states) were measured with.
pub use crate::common::data::xorshift_pattern_nonzero as pattern;
/// xorshift64*, for reordered subsets.
pub use crate::common::data::XorShift64Star;

pub fn fixture_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("VHDX_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join("fixtures"),
    };
    let p = dir.join("discutils").join("vhdx-log-replay.vhdx.gz");
    if p.is_file() {
        Some(p)
    } else if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{} is missing, and CI requires it", p.display());
    } else {
        eprintln!("note: {} is missing: skipping the dirty-log workload", p.display());
        None
    }
}

pub fn gunzip(path: &PathBuf) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

pub fn open_ro(bytes: &[u8]) -> Disk {
    OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(bytes.to_vec()))).unwrap()
}

/// A read-only image shared between threads without copying: the parent and
/// reference images of the checks (the workloads open theirs from a
/// `MemStorage` of their own), and the tree harness's files.
#[derive(Clone)]
pub struct SharedImage(pub Arc<Vec<u8>>);

impl Storage for SharedImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| IoError::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&mut self, _: &[u8], _: u64) -> Result<(), IoError> {
        Err(IoError::from(std::io::ErrorKind::PermissionDenied))
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
    fn len(&self) -> Result<u64, IoError> {
        Ok(self.0.len() as u64)
    }
    fn set_len(&mut self, _: u64) -> Result<(), IoError> {
        Err(IoError::from(std::io::ErrorKind::PermissionDenied))
    }
}

pub fn open_shared(image: &Arc<Vec<u8>>) -> Disk {
    OpenOptions::new().open_storage(Box::new(SharedImage(image.clone()))).unwrap()
}

pub fn read_all(storage: &dyn Storage) -> Vec<u8> {
    let mut out = vec![0u8; storage.len().unwrap() as usize];
    storage.read_exact_at(&mut out, 0).unwrap();
    out
}

// ------------------------------------------------------------------ model

/// What a workload did, as far as the virtual disk is concerned.
#[derive(Default)]
pub struct Recorder {
    /// The image exists: its creation returned (or it existed before).
    pub created: bool,
    /// Every write issued, in order (the one in progress at the crash too).
    pub writes: Vec<(u64, Vec<u8>)>,
    /// `writes[..flushed]` were made durable by a flush that succeeded.
    pub flushed: usize,
    /// Crash points before this many operations are not tried: the workload
    /// spends them on setup other workloads already cover.
    pub focus_from: u64,
    /// The virtual sizes the image may have, for workloads that resize: the
    /// old and the new size while a resize runs, the new one after it
    /// returned. `None`: the size never changes.
    pub sizes: Option<Vec<u64>>,
}

impl Recorder {
    pub fn write(&mut self, disk: &mut Disk, offset: u64, data: Vec<u8>) -> vhdx::Result<()> {
        let r = disk.write_at(&data, offset);
        self.writes.push((offset, data));
        r
    }

    pub fn flush(&mut self, disk: &mut Disk) -> vhdx::Result<()> {
        disk.flush()?;
        self.flushed = self.writes.len();
        Ok(())
    }

    /// A discard: the range reads as zeros from the next flush on (before,
    /// each sector is old or zero), as if zeros were written.
    pub fn discard(&mut self, disk: &mut Disk, offset: u64, len: u64) -> vhdx::Result<()> {
        let r = disk.discard(offset, len);
        self.writes.push((offset, vec![0u8; len as usize]));
        r
    }

    /// A resize, which flushes: when it returns, everything before it is
    /// durable and the size is the new one. Until then the disk presents its
    /// old size and content or the new ones. After a shrink the writes are
    /// cut at the new end: if the disk grows again, the removed range must
    /// read as zeros. (Only for workloads without a reference image: its
    /// content past the cut would be expected back.)
    pub fn resize(&mut self, disk: &mut Disk, new_size: u64, allow_shrink: bool) -> vhdx::Result<()> {
        let old = disk.virtual_size();
        self.sizes = Some(vec![old, new_size]);
        disk.resize(new_size, allow_shrink)?;
        self.sizes = Some(vec![new_size]);
        self.flushed = self.writes.len();
        for (offset, data) in &mut self.writes {
            let keep = new_size.saturating_sub(*offset).min(data.len() as u64) as usize;
            data.truncate(keep);
        }
        Ok(())
    }

    pub fn close(&mut self, disk: Disk) -> vhdx::Result<()> {
        disk.close()?;
        self.flushed = self.writes.len();
        Ok(())
    }
}

// ------------------------------------------------------------------ workloads

/// One workload: how to run it, and what its images look like.
pub struct Workload {
    pub name: String,
    /// The storage's bytes before the workload (empty when it creates the image).
    pub initial: Arc<Vec<u8>>,
    /// A differencing child's parent image.
    pub parent: Option<Arc<Vec<u8>>>,
    /// The virtual content before any write, when not all zeros: the parent,
    /// or the image the workload opens (read-only open).
    pub reference: Option<Disk>,
    /// The logical sector size: the unit of the old-or-new check, and of tears.
    pub sector: u64,
    /// Errors `check` may report because the image had them before the
    /// workload (the repair workload's damage); any other error fails.
    pub tolerated: Vec<String>,
    pub run: Box<RunFn>,
}

/// A workload's body: runs on the storage, recording what it writes.
pub type RunFn = dyn Fn(FaultStorage, &mut Recorder, &Workload) -> vhdx::Result<()> + Send + Sync;

// ------------------------------------------------------------------ crash states

/// Up to `max` of `0..n`, spread evenly, first and last included.
pub fn spread(n: u64, max: u64) -> Vec<u64> {
    if n <= max {
        return (0..n).collect();
    }
    let mut v: Vec<u64> = (0..max).map(|i| i * (n - 1) / (max - 1).max(1)).collect();
    v.dedup();
    v
}

/// How many crash states to build per crash point.
#[derive(Clone, Copy)]
pub struct Budget {
    /// In-order prefixes (besides none and all).
    pub prefixes: u64,
    /// Writes to tear, and tear points in each.
    pub tears: u64,
    /// Reordered subsets: all of them up to 7 operations, else this many at
    /// random. `Some` also adds scattered states ([`scattered`]): tears
    /// inside a physical sector and reordered, torn mixes.
    pub subsets: Option<usize>,
}

impl Budget {
    /// Scattered states at random per crash point: a quarter of the random
    /// subsets, at least 2 (none without subsets).
    pub fn scattered(&self) -> usize {
        self.subsets.map_or(0, |n| (n / 4).max(2))
    }
}

/// The crash states to build from `pending`: none, all, in-order prefixes,
/// tears of writes (at `unit` boundaries of the file: the disk's atomic
/// sector), reordered subsets, and scattered states (reordered and torn at
/// once, [`scattered`]), within `budget`.
pub fn crash_states(pending: &[PendingOp], unit: u64, k: u64, budget: Budget) -> Vec<CrashState> {
    let p = pending.len();
    // Untorn states, keyed by which operations they apply.
    let mut seen: BTreeSet<Vec<bool>> = BTreeSet::new();
    let mut out = Vec::new();
    seen.insert(vec![false; p]);
    out.push(CrashState::DurableOnly);
    if p > 0 && seen.insert(vec![true; p]) {
        out.push(CrashState::AllPending);
    }
    for i in spread(p.saturating_sub(1) as u64, budget.prefixes) {
        let i = i as usize + 1;
        if seen.insert((0..p).map(|j| j < i).collect()) {
            out.push(CrashState::Torn { applied: i, sectors: 0 });
        }
    }
    let writes: Vec<usize> = (0..p).filter(|&i| matches!(pending[i], PendingOp::Write { .. })).collect();
    for w in spread(writes.len() as u64, budget.tears) {
        let i = writes[w as usize];
        let PendingOp::Write { offset, bytes } = &pending[i] else { unreachable!() };
        let end = offset + bytes.len() as u64;
        let first = offset / unit + 1;
        let last = (end - 1) / unit;
        if first > last {
            continue;
        }
        for b in spread(last - first + 1, budget.tears) {
            let sectors = (first + b) * unit / TORN_SECTOR_SIZE - offset / TORN_SECTOR_SIZE;
            out.push(CrashState::Torn { applied: i, sectors });
        }
    }
    if let (Some(random), true) = (budget.subsets, p >= 2) {
        let mut subsets: Vec<Vec<bool>> = Vec::new();
        if p <= 7 {
            for mask in 1u32..(1 << p) - 1 {
                subsets.push((0..p).map(|j| mask >> j & 1 == 1).collect());
            }
        } else {
            let mut rng = XorShift64Star::new(k.wrapping_mul(31).wrapping_add(p as u64));
            for _ in 0..random {
                subsets.push((0..p).map(|_| rng.next() & 1 == 1).collect());
            }
        }
        for flags in subsets {
            if seen.insert(flags.clone()) {
                out.push(CrashState::Subset(flags));
            }
        }
    }
    if budget.subsets.is_some() {
        out.extend(scattered(pending, unit, k, budget.tears.div_ceil(2), budget.scattered()));
    }
    out
}

/// States no in-order prefix and no whole-operation subset can give, with
/// writes cut into pieces of `unit` bytes (the atomic sector: 512 on a 512e
/// disk, whose 4096-byte physical sectors tear in 512-byte pieces; 4096 on
/// a 4Kn disk):
///
/// - for up to `tears` writes of two pieces or more, the earlier operations
///   whole and the later ones lost, the write keeping only its odd pieces,
///   or all but its first: the tail of a physical sector without its head;
/// - `random` states where each operation, independently, is lost, whole,
///   or kept in a random choice of its pieces (deterministic in `k`).
pub fn scattered(pending: &[PendingOp], unit: u64, k: u64, tears: u64, random: usize) -> Vec<CrashState> {
    let p = pending.len();
    let mut out = Vec::new();
    let torn: Vec<usize> = (0..p).filter(|&i| pending[i].pieces(unit) >= 2).collect();
    for w in spread(torn.len() as u64, tears) {
        let i = torn[w as usize];
        let n = pending[i].pieces(unit) as usize;
        let patterns: [fn(usize) -> bool; 2] = [|j| j % 2 == 1, |j| j > 0];
        for keep in patterns {
            let mut ops: Vec<Persisted> = (0..i).map(|_| Persisted::Whole).collect();
            ops.push(Persisted::Pieces((0..n).map(keep).collect()));
            out.push(CrashState::Scattered { unit, ops });
        }
    }
    if p == 0 {
        return out;
    }
    let mut rng = XorShift64Star::new(k.wrapping_mul(104_729).wrapping_add(p as u64 * 31 + unit));
    for _ in 0..random {
        let ops = (pending.iter())
            .map(|op| match rng.next() % 4 {
                0 => Persisted::Nothing,
                1 => Persisted::Whole,
                _ => Persisted::Pieces((0..op.pieces(unit)).map(|_| rng.next() & 1 == 1).collect()),
            })
            .collect();
        out.push(CrashState::Scattered { unit, ops });
    }
    out
}

/// Runs `check(k, fail)` for every crash point `k` of `points`, spread over
/// `threads` threads (each point once, handed out in order). `check` returns
/// how many crash states it tried at `k` and reports each failure through
/// `fail`. Returns the states tried and the failures, in no set order.
pub fn for_each_crash_point(
    points: std::ops::RangeInclusive<u64>,
    threads: usize,
    check: impl Fn(u64, &dyn Fn(String)) -> u64 + Sync,
) -> (u64, Vec<String>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let next = AtomicU64::new(*points.start());
    let states = AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k > *points.end() {
                    break;
                }
                let fail = |what: String| failures.lock().unwrap_or_else(|p| p.into_inner()).push(what);
                states.fetch_add(check(k, &fail), Ordering::Relaxed);
            });
        }
    });
    (states.into_inner(), failures.into_inner().unwrap_or_else(|p| p.into_inner()))
}
