//! A fault-injecting [`Storage`] for crash tests, in the real tree as
//! smoltcp keeps its `FaultInjector`: it models what a power cut leaves of
//! a file, so a test can prove that the library loses nothing it flushed and
//! never leaves an image it cannot open.
//!
//! The model keeps two images apart:
//!
//! - the *volatile* image is what reads see: every completed write and
//!   `set_len`, as a page cache would hold them;
//! - the *durable* image is what survives a crash for certain: the state at
//!   the last [`Storage::flush`].
//!
//! Every mutating operation (write or `set_len`) since the last flush is
//! recorded, in issue order, as a [`PendingOp`]; `flush` applies them to the
//! durable image and clears the list. Told to crash after `n` mutating
//! operations ([`FaultStorage::crash_after`]), the storage lets exactly `n`
//! of them complete and from then on fails *every* operation — reads,
//! writes, flushes, `len`, `set_len` — with an I/O error, so the library
//! unwinds with an [`Error::Io`](crate::Error::Io) instead of going on (or
//! panicking). The test then builds the file a crash could have left from
//! the durable image and the recorded operations ([`CrashState`]):
//!
//! - [`CrashState::AllPending`]: every unflushed operation reached the media
//!   (nothing lost);
//! - [`CrashState::DurableOnly`]: none did (everything since the last flush
//!   lost);
//! - [`CrashState::Torn`]: the unflushed operations in order up to a point,
//!   and of the last one only its first 512-byte sectors (a write torn by the
//!   power cut; sectors themselves are atomic, as the format assumes);
//! - [`CrashState::Subset`]: any subset, as a disk cache that reorders
//!   writes between barriers may leave;
//! - [`CrashState::Scattered`]: any subset, each operation whole, lost, or
//!   any of its aligned pieces (512 bytes inside a 4096-byte physical
//!   sector of a 512e disk, 4096 on a 4Kn one): reordering and tears at
//!   once. What a piece holds is in the [`state`] module.
//!
//! Operations separated by a flush are never reordered across it: that is
//! exactly the promise a durability barrier makes.
//!
//! The state lives behind an `Arc<Mutex<…>>`: clones of a `FaultStorage`
//! share it, so a test keeps one clone as a handle while a
//! [`Disk`](crate::Disk) owns another. [`FaultStorage::mutating_ops`] counts
//! operations, so a test first runs its workload without a crash to learn how
//! many crash points there are.
//!
//! Several files can share one [`FaultClock`] ([`FaultStorage::on_clock`]):
//! operations are then counted across all of them and the crash stops every
//! one at once, as a power cut stops a whole machine — for operations such
//! as a merge that change several images. Each file keeps its own durable
//! image and pending operations, because each file's flush is its own
//! barrier.
//!
//! Space can run out too ([`FaultClock::fill_after`]): each storage tracks
//! which 4 KiB pages of its file hold space, as a sparse file does (written
//! or [`allocate`](Storage::allocate)d pages do; `set_len` extends with
//! holes), and once the filesystem is full every write or `allocate` that
//! needs a page its file does not hold fails with ENOSPC, without a crash:
//! reads, flushes, writes into held pages and truncation go on working. The
//! storages of one clock share one filesystem: it fills for all of them at
//! once, as for the files of a tree on one disk.
//!
//! ```
//! use vhdx::io::{CrashState, FaultStorage};
//! use vhdx::Storage;
//! let handle = FaultStorage::new();
//! let mut s = handle.clone();
//! s.write_all_at(b"old", 0).unwrap();
//! s.flush().unwrap();
//! // One more mutating operation, then the power goes.
//! handle.crash_after(handle.mutating_ops() + 1);
//! s.write_all_at(b"new", 0).unwrap();
//! assert!(s.flush().is_err());
//! assert_eq!(handle.crash_image(&CrashState::DurableOnly), b"old");
//! assert_eq!(handle.crash_image(&CrashState::AllPending), b"new");
//! ```

use alloc::sync::Arc;
use alloc::vec::Vec;
use std::sync::{Mutex, MutexGuard};

use super::Storage;
use crate::error::{IoError, IoErrorKind};

pub mod state;
pub use state::{CrashState, PendingOp, Persisted};

/// The sector size in which writes tear: 512 bytes, the smallest sector a
/// disk writes atomically.
pub const TORN_SECTOR_SIZE: u64 = 512;

/// The granularity of [`FaultStorage`]'s space accounting: a filesystem block.
pub const SPACE_PAGE: u64 = 4096;

#[derive(Debug, Default)]
struct ClockState {
    mutating_ops: u64,
    flushes: u64,
    crash_after: Option<u64>,
    crashed: bool,
    /// The operation count from which the filesystem is full.
    full_after: Option<u64>,
}

impl ClockState {
    /// Fails (and stays failed) once the crash point is reached.
    fn check(&mut self) -> Result<(), IoError> {
        if self.crash_after.is_some_and(|n| self.mutating_ops >= n) {
            self.crashed = true;
        }
        if self.crashed {
            return Err(IoError::new(IoErrorKind::Other, "simulated crash: the storage is gone"));
        }
        Ok(())
    }
}

/// The operation counter and crash point that one or several
/// [`FaultStorage`]s share; see the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct FaultClock {
    state: Arc<Mutex<ClockState>>,
}

impl FaultClock {
    /// A clock with no crash point set.
    pub fn new() -> Self {
        FaultClock::default()
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Crash once `n` mutating operations (counted over every storage on this
    /// clock) have completed: the next operation of any kind on any of them,
    /// and every one after it, fails.
    pub fn crash_after(&self, n: u64) {
        self.lock().crash_after = Some(n);
    }

    /// Whether the crash has happened (an operation was refused).
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Mutating operations completed on this clock's storages.
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// Flushes completed on this clock's storages.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Fills the filesystem that this clock's storages share once `n`
    /// mutating operations (counted over all of them) have completed;
    /// `None` frees space again. While it is full, a write or
    /// [`allocate`](Storage::allocate) needing a page its file does not hold
    /// fails with ENOSPC ([`IoErrorKind::StorageFull`]) — a write
    /// first stores the bytes that come before that page, as a short
    /// `pwrite` does — and all else works. `n` at or below the current count
    /// fills it at once.
    ///
    /// ```
    /// use vhdx::io::{FaultClock, FaultStorage};
    /// use vhdx::Storage;
    /// let clock = FaultClock::new();
    /// let (mut a, mut b) = (FaultStorage::on_clock(vec![0; 8], &clock), FaultStorage::on_clock(vec![], &clock));
    /// clock.fill_after(Some(1));
    /// a.write_all_at(b"ok", 0).unwrap(); // operation 1: space left
    /// assert_eq!(b.write_all_at(b"x", 0).unwrap_err().kind(), vhdx::IoErrorKind::StorageFull);
    /// a.write_all_at(b"in place", 0).unwrap(); // pages it holds: fine
    /// clock.fill_after(None);
    /// b.write_all_at(b"x", 0).unwrap();
    /// ```
    pub fn fill_after(&self, n: Option<u64>) {
        self.lock().full_after = n;
    }

    /// Whether the filesystem is full now.
    fn full(&self) -> bool {
        let c = self.lock();
        c.full_after.is_some_and(|n| c.mutating_ops >= n)
    }
}

#[derive(Debug, Default)]
struct FaultState {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    pending: Vec<PendingOp>,
    /// Per [`SPACE_PAGE`] of `volatile`, whether it holds space.
    allocated: Vec<bool>,
}

impl FaultState {
    fn mutate(&mut self, clock: &FaultClock, op: PendingOp) -> Result<(), IoError> {
        let mut c = clock.lock();
        c.check()?;
        op.apply(&mut self.volatile);
        match &op {
            PendingOp::Write { offset, bytes } => self.mark(*offset, bytes.len() as u64),
            PendingOp::SetLen(len) => self.allocated.resize(len.div_ceil(SPACE_PAGE) as usize, false),
        }
        self.pending.push(op);
        c.mutating_ops += 1;
        Ok(())
    }

    fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (offset / SPACE_PAGE, (offset + len - 1) / SPACE_PAGE);
        if self.allocated.len() <= last as usize {
            self.allocated.resize(last as usize + 1, false);
        }
        self.allocated[first as usize..=last as usize].fill(true);
    }

    /// Where `[offset, offset + len)` first needs a page the file does not
    /// hold, when the filesystem is full (`None`: the range fits).
    fn first_needed(&self, clock: &FaultClock, offset: u64, len: u64) -> Option<u64> {
        if len == 0 || !clock.full() {
            return None;
        }
        let (first, last) = (offset / SPACE_PAGE, (offset + len - 1) / SPACE_PAGE);
        (first..=last)
            .find(|&p| !self.allocated.get(p as usize).copied().unwrap_or(false))
            .map(|p| (p * SPACE_PAGE).max(offset))
    }
}

fn no_space() -> IoError {
    IoError::new(IoErrorKind::StorageFull, "simulated full filesystem: no space left on device")
}

/// Storage in memory that keeps the durable and the volatile image apart and
/// can simulate a crash; see the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<FaultState>>,
    clock: FaultClock,
}

impl FaultStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::from_vec(Vec::new())
    }

    /// Storage holding `data`, already durable, on a clock of its own.
    pub fn from_vec(data: Vec<u8>) -> Self {
        Self::on_clock(data, &FaultClock::new())
    }

    /// Storage holding `data`, already durable, whose operations count on
    /// (and whose crash comes from) `clock`, shared with other storages.
    pub fn on_clock(data: Vec<u8>, clock: &FaultClock) -> Self {
        let allocated = alloc::vec![true; (data.len() as u64).div_ceil(SPACE_PAGE) as usize];
        let state = FaultState { durable: data.clone(), volatile: data, pending: Vec::new(), allocated };
        FaultStorage { state: Arc::new(Mutex::new(state)), clock: clock.clone() }
    }

    /// The clock this storage counts on.
    pub fn clock(&self) -> &FaultClock {
        &self.clock
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic elsewhere must not hide the recorded state from the test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Crash once `n` mutating operations (counted from the creation of the
    /// storage) have completed: the next operation of any kind, and every one
    /// after it, fails. `n` at or below the current count crashes at once.
    pub fn crash_after(&self, n: u64) {
        self.clock.crash_after(n);
    }

    /// Builder form of [`FaultStorage::crash_after`].
    pub fn with_crash_after(self, n: u64) -> Self {
        self.crash_after(n);
        self
    }

    /// Whether the simulated crash has happened (an operation was refused).
    pub fn crashed(&self) -> bool {
        self.clock.crashed()
    }

    /// Mutating operations (writes and `set_len`) completed so far, on every
    /// storage of this one's clock.
    pub fn mutating_ops(&self) -> u64 {
        self.clock.mutating_ops()
    }

    /// Flushes completed so far, on every storage of this one's clock.
    pub fn flushes(&self) -> u64 {
        self.clock.flushes()
    }

    /// Fills the filesystem of this storage's clock, which every storage
    /// on the clock shares: [`FaultClock::fill_after`].
    pub fn fill_after(&self, n: Option<u64>) {
        self.clock.fill_after(n);
    }

    /// Bytes of the file that hold space: whole [`SPACE_PAGE`]s written or
    /// allocated (all of the initial data counts).
    pub fn allocated_bytes(&self) -> u64 {
        self.lock().allocated.iter().filter(|&&a| a).count() as u64 * SPACE_PAGE
    }

    /// Whether every page of `[offset, offset + len)` holds space.
    pub fn is_allocated(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let s = self.lock();
        (offset / SPACE_PAGE..=(offset + len - 1) / SPACE_PAGE)
            .all(|p| s.allocated.get(p as usize).copied().unwrap_or(false))
    }

    /// The operations completed since the last flush, in issue order.
    pub fn pending(&self) -> Vec<PendingOp> {
        self.lock().pending.clone()
    }

    /// A copy of the durable image (the state at the last flush).
    pub fn durable(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// A copy of the volatile image (what reads see).
    pub fn volatile(&self) -> Vec<u8> {
        self.lock().volatile.clone()
    }

    /// The file a crash in `state` leaves: the durable image with the chosen
    /// unflushed operations applied.
    pub fn crash_image(&self, state: &CrashState) -> Vec<u8> {
        let s = self.lock();
        state::crash_image(&s.durable, &s.pending, state)
    }
}

impl FaultStorage {
    /// One write, under the state's lock.
    fn write_locked(&self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        let mut s = self.lock();
        if usize::try_from(offset).ok().and_then(|o| o.checked_add(buf.len())).is_none() {
            return Err(crate::error::io_unexpected_eof());
        }
        if let Some(stop) = s.first_needed(&self.clock, offset, buf.len() as u64) {
            self.clock.lock().check()?;
            let fits = (stop - offset) as usize;
            if fits > 0 {
                s.mutate(&self.clock, PendingOp::Write { offset, bytes: buf[..fits].to_vec() })?;
            }
            return Err(no_space());
        }
        s.mutate(&self.clock, PendingOp::Write { offset, bytes: buf.to_vec() })
    }
}

impl Storage for FaultStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let s = self.lock();
        self.clock.lock().check()?;
        let start = usize::try_from(offset).map_err(|_| crate::error::io_unexpected_eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(crate::error::io_unexpected_eof)?;
        let src = s.volatile.get(start..end).ok_or_else(crate::error::io_unexpected_eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.write_locked(buf, offset)
    }

    /// The state is behind a lock: writers may share the storage, each
    /// write one operation on the fault clock.
    fn write_shared(&self, buf: &[u8], offset: u64) -> Option<Result<(), IoError>> {
        Some(self.write_locked(buf, offset))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.flush_locked()
    }

    /// The state is behind a lock: a flush may run while others share the
    /// storage, and covers the writes that completed before it.
    fn flush_shared(&self) -> Option<Result<(), IoError>> {
        Some(self.flush_locked())
    }

    fn allocate_shared(&self, offset: u64, len: u64) -> Option<Result<(), IoError>> {
        Some(self.allocate_locked(offset, len))
    }

    fn len(&self) -> Result<u64, IoError> {
        let s = self.lock();
        self.clock.lock().check()?;
        Ok(s.volatile.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.set_len_locked(len)
    }

    /// The state is behind a lock, so the length may change while others
    /// share the storage: one operation on the fault clock, as `set_len`.
    fn set_len_shared(&self, len: u64) -> Option<Result<(), IoError>> {
        Some(self.set_len_locked(len))
    }

    /// Marks the pages as holding space (content and length unchanged; not
    /// a mutating operation, so crash points do not move), or fails with
    /// ENOSPC, changing nothing, when the filesystem is full.
    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        self.allocate_locked(offset, len)
    }
}

impl FaultStorage {
    /// One length change, under the state's lock.
    fn set_len_locked(&self, len: u64) -> Result<(), IoError> {
        let mut s = self.lock();
        if usize::try_from(len).is_err() {
            return Err(crate::error::io_unexpected_eof());
        }
        s.mutate(&self.clock, PendingOp::SetLen(len))
    }

    /// A flush, under the state's lock.
    fn flush_locked(&self) -> Result<(), IoError> {
        let mut s = self.lock();
        let mut c = self.clock.lock();
        c.check()?;
        let FaultState { durable, pending, .. } = &mut *s;
        for op in pending.drain(..) {
            op.apply(durable);
        }
        c.flushes += 1;
        Ok(())
    }

    /// Marking space allocated, under the state's lock.
    fn allocate_locked(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let mut s = self.lock();
        self.clock.lock().check()?;
        let end = offset.checked_add(len).ok_or_else(crate::error::io_unexpected_eof)?;
        if end > s.volatile.len() as u64 {
            return Err(crate::error::io_unexpected_eof());
        }
        if s.first_needed(&self.clock, offset, len).is_some() {
            return Err(no_space());
        }
        s.mark(offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_and_volatile_images_stay_apart() {
        let h = FaultStorage::new();
        let mut s = h.clone();
        s.set_len(1024).unwrap();
        s.write_all_at(&[1u8; 1024], 0).unwrap();
        assert_eq!(h.durable(), Vec::<u8>::new());
        assert_eq!(h.volatile(), [1u8; 1024]);
        s.flush().unwrap();
        assert_eq!(h.durable(), [1u8; 1024]);
        assert!(h.pending().is_empty());
        assert_eq!((h.mutating_ops(), h.flushes()), (2, 1));
    }

    #[test]
    fn crash_fails_every_operation_and_keeps_the_record() {
        let h = FaultStorage::from_vec(alloc::vec![0u8; 2048]).with_crash_after(2);
        let mut s = h.clone();
        // Three sectors, starting inside the first.
        s.write_all_at(&[7u8; 1200], 100).unwrap();
        s.set_len(4096).unwrap();
        assert!(s.write_all_at(&[9u8; 10], 0).is_err());
        assert!(s.flush().is_err());
        let mut b = [0u8; 1];
        assert!(s.read_exact_at(&mut b, 0).is_err());
        assert!(s.len().is_err());
        assert!(h.crashed());
        assert_eq!(h.pending().len(), 2);
        assert_eq!(h.pending()[0].sectors(), 3);

        assert_eq!(h.crash_image(&CrashState::DurableOnly), [0u8; 2048]);
        let all = h.crash_image(&CrashState::AllPending);
        assert_eq!(all.len(), 4096);
        assert_eq!(&all[100..1300], &[7u8; 1200][..]);
        // Torn after one sector: bytes 100..512 only.
        let torn = h.crash_image(&CrashState::Torn { applied: 0, sectors: 1 });
        assert_eq!(torn.len(), 2048);
        assert_eq!(&torn[100..512], &[7u8; 412][..]);
        assert_eq!(torn[512], 0);
        let subset = h.crash_image(&CrashState::Subset(alloc::vec![false, true]));
        assert_eq!(subset, [0u8; 4096]);
    }

    #[test]
    fn a_shared_clock_counts_and_crashes_every_file() {
        let clock = FaultClock::new();
        let (mut a, mut b) = (FaultStorage::on_clock(Vec::new(), &clock), FaultStorage::on_clock(Vec::new(), &clock));
        a.write_all_at(b"a", 0).unwrap();
        b.write_all_at(b"b", 0).unwrap();
        a.flush().unwrap();
        assert_eq!((clock.mutating_ops(), clock.flushes()), (2, 1));
        clock.crash_after(3);
        b.write_all_at(b"c", 1).unwrap();
        assert!(a.write_all_at(b"x", 1).is_err());
        assert!(b.flush().is_err() && a.crashed() && b.crashed());
        // Each file keeps its own barrier: `a` was flushed, `b` never was.
        assert_eq!(a.crash_image(&CrashState::DurableOnly), b"a");
        assert_eq!(b.crash_image(&CrashState::DurableOnly), b"");
        assert_eq!(b.crash_image(&CrashState::AllPending), b"bc");
    }

    #[test]
    fn a_full_filesystem_refuses_new_space_only() {
        let h = FaultStorage::new();
        let mut s = h.clone();
        s.write_all_at(&[1u8; 100], 0).unwrap();
        s.set_len(5 * SPACE_PAGE).unwrap(); // a hole: pages 1..5
        assert_eq!(h.allocated_bytes(), SPACE_PAGE);
        s.allocate(2 * SPACE_PAGE, 10).unwrap();
        assert!(h.is_allocated(2 * SPACE_PAGE, SPACE_PAGE) && !h.is_allocated(SPACE_PAGE, 1));
        h.fill_after(Some(0));
        // Into held pages: fine. Across a hole: the part before it lands.
        s.write_all_at(&[2u8; 10], 4000).unwrap();
        let e = s.write_all_at(&[3u8; 200], 4000).unwrap_err();
        assert_eq!(e.kind(), IoErrorKind::StorageFull);
        assert_eq!(&h.volatile()[4000..4096], &[3u8; 96][..]);
        assert_eq!(h.volatile()[4096], 0);
        assert!(s.allocate(3 * SPACE_PAGE, 1).is_err());
        assert!(s.allocate(0, 10).is_ok());
        // Truncation frees; a flush and reads still work; not a crash.
        s.set_len(SPACE_PAGE).unwrap();
        s.flush().unwrap();
        assert!(!h.crashed());
        h.fill_after(None);
        s.write_all_at(&[4u8; 10], 3 * SPACE_PAGE).unwrap();
        assert_eq!(h.allocated_bytes(), 2 * SPACE_PAGE);
    }

    #[test]
    fn the_storages_of_a_clock_share_one_filesystem() {
        let clock = FaultClock::new();
        let (mut a, mut b) = (FaultStorage::on_clock(Vec::new(), &clock), FaultStorage::on_clock(Vec::new(), &clock));
        a.write_all_at(b"a", 0).unwrap();
        // Filled through one storage, after the next operation on any of them.
        b.fill_after(Some(2));
        b.write_all_at(b"b", 0).unwrap();
        assert_eq!(a.write_all_at(b"x", SPACE_PAGE).unwrap_err().kind(), IoErrorKind::StorageFull);
        assert_eq!(
            b.set_len(3 * SPACE_PAGE).map(|_| b.allocate(SPACE_PAGE, 1)).unwrap().unwrap_err().kind(),
            IoErrorKind::StorageFull
        );
        a.write_all_at(b"in place", 8).unwrap();
        clock.fill_after(None);
        b.allocate(SPACE_PAGE, 1).unwrap();
        assert!(!clock.crashed());
    }

    #[test]
    fn crash_after_zero_refuses_at_once() {
        let mut s = FaultStorage::new().with_crash_after(0);
        assert!(s.flush().is_err());
        assert!(s.write_all_at(b"x", 0).is_err());
    }
}
