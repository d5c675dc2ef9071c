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
//!   writes between barriers may leave.
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
//! A full filesystem is the other failure a long operation meets, and it
//! does not stop the process: [`FaultClock::no_space_after`] makes one
//! mutating operation fail with [`std::io::ErrorKind::StorageFull`]
//! (`ENOSPC`) and, if asked, every later one that would make a file longer,
//! while everything else goes on working. The failed operation changes
//! nothing; what the files hold afterwards is their volatile image, as for a
//! process that goes on running.
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
use crate::error::IoError;

/// The sector size in which writes tear: 512 bytes, the smallest sector a
/// disk writes atomically.
pub const TORN_SECTOR_SIZE: u64 = 512;

/// A mutating operation that completed but was not yet flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingOp {
    /// `bytes` written at `offset`.
    Write {
        /// File offset of the first byte.
        offset: u64,
        /// The bytes written.
        bytes: Vec<u8>,
    },
    /// The file truncated or extended (with zeros) to this length.
    SetLen(u64),
}

impl PendingOp {
    /// How many [`TORN_SECTOR_SIZE`] sectors (aligned to the file) the
    /// operation touches: the points at which it can tear. A `set_len` is
    /// one atomic step.
    pub fn sectors(&self) -> u64 {
        match self {
            PendingOp::Write { offset, bytes } if !bytes.is_empty() => {
                let first = offset / TORN_SECTOR_SIZE;
                let last = (offset + bytes.len() as u64 - 1) / TORN_SECTOR_SIZE;
                last - first + 1
            }
            PendingOp::Write { .. } => 0,
            PendingOp::SetLen(_) => 1,
        }
    }

    /// Applies the first `sectors` sectors of the operation to `image`
    /// (all of it when `sectors` is at least [`PendingOp::sectors`]).
    fn apply_prefix(&self, image: &mut Vec<u8>, sectors: u64) {
        match self {
            PendingOp::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                let cut = ((offset / TORN_SECTOR_SIZE).saturating_add(sectors)).saturating_mul(TORN_SECTOR_SIZE);
                let n = (end.min(cut).saturating_sub(*offset)) as usize;
                write_into(image, &bytes[..n], *offset);
            }
            PendingOp::SetLen(len) => {
                if sectors > 0 {
                    image.resize(*len as usize, 0);
                }
            }
        }
    }

    fn apply(&self, image: &mut Vec<u8>) {
        self.apply_prefix(image, u64::MAX);
    }
}

/// Which of the unflushed operations a crash left on the media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashState {
    /// All of them, in order: nothing lost.
    AllPending,
    /// None: every operation since the last flush lost.
    DurableOnly,
    /// The first `applied` in order, then the first `sectors` sectors of the
    /// next one (none when there is no next one).
    Torn {
        /// Unflushed operations applied whole.
        applied: usize,
        /// Sectors of the following operation applied.
        sectors: u64,
    },
    /// Exactly those whose flag is set (missing flags count as unset),
    /// applied in issue order: a cache that reorders between barriers.
    Subset(Vec<bool>),
}

#[derive(Debug, Default)]
struct ClockState {
    mutating_ops: u64,
    flushes: u64,
    crash_after: Option<u64>,
    crashed: bool,
    /// The operation (by count of those completed before it) that fails
    /// with `ENOSPC`, and whether growth stays refused after it.
    no_space_after: Option<(u64, bool)>,
    /// The injected `ENOSPC` happened.
    out_of_space: bool,
    no_space_failures: u64,
}

impl ClockState {
    /// Fails (and stays failed) once the crash point is reached.
    fn check(&mut self) -> Result<(), IoError> {
        if self.crash_after.is_some_and(|n| self.mutating_ops >= n) {
            self.crashed = true;
        }
        if self.crashed {
            return Err(std::io::Error::other("simulated crash: the storage is gone"));
        }
        Ok(())
    }

    /// Fails a mutating operation (one that makes its file longer when
    /// `grows`) with `ENOSPC` when the injected failure says so.
    fn check_space(&mut self, grows: bool) -> Result<(), IoError> {
        let refused = match self.no_space_after {
            Some((n, _)) if !self.out_of_space && self.mutating_ops >= n => {
                self.out_of_space = true;
                true
            }
            Some((_, growth_refused)) => self.out_of_space && growth_refused && grows,
            None => false,
        };
        if refused {
            self.no_space_failures += 1;
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "simulated ENOSPC: no space left on the device",
            ));
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

    /// Runs out of space once `n` mutating operations (counted over every
    /// storage on this clock) have completed: the next write or `set_len`
    /// fails with [`std::io::ErrorKind::StorageFull`] and changes nothing.
    /// Nothing crashes: reads, flushes and later operations work — except,
    /// when `growth_stays_refused`, every later write or `set_len` that would
    /// make its file longer, which fails the same way (the filesystem stays
    /// full; writes inside a file's current length still succeed).
    ///
    /// ```
    /// use vhdx::io::FaultStorage;
    /// use vhdx::Storage;
    /// let mut s = FaultStorage::from_vec(vec![0u8; 8]);
    /// s.clock().no_space_after(1, true);
    /// s.write_all_at(b"ok", 0).unwrap();
    /// let e = s.write_all_at(b"lost", 2).unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
    /// s.write_all_at(b"in place", 0).unwrap(); // no growth: fine
    /// assert!(s.write_all_at(b"longer", 8).is_err()); // growth: still full
    /// s.flush().unwrap();
    /// assert_eq!(s.volatile(), b"in place");
    /// ```
    pub fn no_space_after(&self, n: u64, growth_stays_refused: bool) {
        let mut c = self.lock();
        c.no_space_after = Some((n, growth_stays_refused));
        c.out_of_space = false;
    }

    /// Operations refused with `ENOSPC` so far (see
    /// [`FaultClock::no_space_after`]).
    pub fn no_space_failures(&self) -> u64 {
        self.lock().no_space_failures
    }
}

#[derive(Debug, Default)]
struct FaultState {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    pending: Vec<PendingOp>,
}

impl FaultState {
    fn mutate(&mut self, clock: &FaultClock, op: PendingOp) -> Result<(), IoError> {
        let mut c = clock.lock();
        c.check()?;
        let end = match &op {
            PendingOp::Write { offset, bytes } => *offset as usize + bytes.len(),
            PendingOp::SetLen(len) => *len as usize,
        };
        c.check_space(end > self.volatile.len())?;
        op.apply(&mut self.volatile);
        self.pending.push(op);
        c.mutating_ops += 1;
        Ok(())
    }
}

fn write_into(image: &mut Vec<u8>, buf: &[u8], offset: u64) {
    let start = offset as usize;
    let end = start + buf.len();
    if end > image.len() {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(buf);
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
        let state = FaultState { durable: data.clone(), volatile: data, pending: Vec::new() };
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
        let mut image = s.durable.clone();
        match state {
            CrashState::AllPending => s.pending.iter().for_each(|op| op.apply(&mut image)),
            CrashState::DurableOnly => {}
            CrashState::Torn { applied, sectors } => {
                s.pending.iter().take(*applied).for_each(|op| op.apply(&mut image));
                if let Some(op) = s.pending.get(*applied) {
                    op.apply_prefix(&mut image, *sectors);
                }
            }
            CrashState::Subset(flags) => {
                for (i, op) in s.pending.iter().enumerate() {
                    if flags.get(i).copied().unwrap_or(false) {
                        op.apply(&mut image);
                    }
                }
            }
        }
        image
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
        let mut s = self.lock();
        if usize::try_from(offset).ok().and_then(|o| o.checked_add(buf.len())).is_none() {
            return Err(crate::error::io_unexpected_eof());
        }
        s.mutate(&self.clock, PendingOp::Write { offset, bytes: buf.to_vec() })
    }

    fn flush(&mut self) -> Result<(), IoError> {
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

    fn len(&self) -> Result<u64, IoError> {
        let s = self.lock();
        self.clock.lock().check()?;
        Ok(s.volatile.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let mut s = self.lock();
        if usize::try_from(len).is_err() {
            return Err(crate::error::io_unexpected_eof());
        }
        s.mutate(&self.clock, PendingOp::SetLen(len))
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
    fn no_space_fails_one_operation_and_then_growth_only() {
        let clock = FaultClock::new();
        let (mut a, mut b) =
            (FaultStorage::on_clock(alloc::vec![0u8; 4], &clock), FaultStorage::on_clock(Vec::new(), &clock));
        clock.no_space_after(1, false);
        a.write_all_at(b"ab", 0).unwrap();
        // The second operation fails and changes nothing, on whichever file.
        assert_eq!(b.set_len(512).unwrap_err().kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(b.volatile(), b"");
        assert!(b.pending().is_empty());
        // Once: later growth works, and nothing crashed.
        b.write_all_at(b"x", 10).unwrap();
        a.flush().unwrap();
        assert!(!clock.crashed());
        assert_eq!((clock.mutating_ops(), clock.no_space_failures()), (2, 1));

        clock.no_space_after(2, true);
        assert_eq!(a.write_all_at(b"long", 2).unwrap_err().kind(), std::io::ErrorKind::StorageFull);
        a.write_all_at(b"cd", 2).unwrap();
        assert!(a.set_len(5).is_err() && a.write_all_at(b"e", 4).is_err());
        a.set_len(3).unwrap();
        assert_eq!(a.volatile(), b"abc");
        assert_eq!(clock.no_space_failures(), 4);
    }

    #[test]
    fn crash_after_zero_refuses_at_once() {
        let mut s = FaultStorage::new().with_crash_after(0);
        assert!(s.flush().is_err());
        assert!(s.write_all_at(b"x", 0).is_err());
    }
}
