//! The property tests' model and storage: a sparse byte map, and a
//! fault-injecting storage that also records every operation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vhdx::io::{CrashState, FaultStorage, Persisted};
use vhdx::{IoError, Storage};

use crate::common::data::XorShift;
use crate::common::storage::write_into;

/// A sparse byte map in 4 KiB pages; absent pages are zeros.
#[derive(Clone, Default)]
pub struct Model {
    pages: BTreeMap<u64, Vec<u8>>,
}

const PAGE: u64 = 4096;

impl Model {
    pub fn write(&mut self, data: &[u8], offset: u64) {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - done);
            let p = self.pages.entry(page).or_insert_with(|| vec![0u8; PAGE as usize]);
            p[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let end = offset + len as u64;
        for (&page, p) in self.pages.range(offset / PAGE..end.div_ceil(PAGE)) {
            let (lo, hi) = ((page * PAGE).max(offset), ((page + 1) * PAGE).min(end));
            out[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&p[(lo - page * PAGE) as usize..(hi - page * PAGE) as usize]);
        }
        out
    }
}

/// What the storage saw, in order, so a test can rebuild the file after
/// any prefix of it.
#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Flush,
}

/// A [`FaultStorage`] (durable and volatile images, pending operations)
/// that also records every operation.
#[derive(Clone, Default)]
pub struct Tap {
    pub fault: FaultStorage,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Tap {
    pub fn len_ops(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// The file after the first `n` operations, in order.
    pub fn image_after(&self, n: usize) -> Vec<u8> {
        let mut v: Vec<u8> = Vec::new();
        for op in &self.ops.lock().unwrap()[..n] {
            match op {
                Op::Write(at, data) => write_into(&mut v, data, *at).unwrap(),
                Op::SetLen(len) => v.resize(*len as usize, 0),
                Op::Flush => {}
            }
        }
        v
    }

    /// The file a crash after the first `k` operations leaves when the
    /// operations since the last flush among them persist as a random
    /// scattered state ([`scattered`]), and that state.
    pub fn scattered_after(&self, k: usize, unit: u64, seed: u64) -> (Vec<u8>, CrashState) {
        let (from, ops) = {
            let all = self.ops.lock().unwrap();
            let from = all[..k].iter().rposition(|op| matches!(op, Op::Flush)).map_or(0, |f| f + 1);
            (from, all[from..k].to_vec())
        };
        let mut fs = FaultStorage::from_vec(self.image_after(from));
        for op in &ops {
            match op {
                Op::Write(at, data) => fs.write_all_at(data, *at).unwrap(),
                Op::SetLen(len) => fs.set_len(*len).unwrap(),
                Op::Flush => unreachable!(),
            }
        }
        let state = scattered(&fs, unit, seed);
        (fs.crash_image(&state), state)
    }

    /// Whether the log ring wrapped: a log write at a lower offset than the
    /// one before it with no header write between (a new log after a reopen
    /// starts again at the ring's start, after a header update).
    pub fn log_wrapped(&self, log: (u64, u64)) -> bool {
        let mut last: Option<u64> = None;
        for op in self.ops.lock().unwrap().iter() {
            let Op::Write(at, _) = op else { continue };
            if *at < 192 << 10 {
                last = None;
            } else if (log.0..log.0 + log.1).contains(at) {
                if last.is_some_and(|l| *at < l) {
                    return true;
                }
                last = Some(*at);
            }
        }
        false
    }
}

impl Storage for Tap {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.fault.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::Write(offset, buf.to_vec()));
        self.fault.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::Flush);
        self.fault.flush()
    }
    fn len(&self) -> Result<u64, IoError> {
        self.fault.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::SetLen(len));
        self.fault.set_len(len)
    }
}

/// The versions the sector at `s` may hold after a crash: its flushed
/// content, and its content after each write since.
pub fn versions(flushed: &Model, since: &[(u64, Vec<u8>)], s: u64, lss: u64) -> Vec<Vec<u8>> {
    let mut v = flushed.read(s, lss as usize);
    let mut out = vec![v.clone()];
    for (off, data) in since {
        let end = off + data.len() as u64;
        let (lo, hi) = ((*off).max(s), end.min(s + lss));
        if lo < hi {
            v[(lo - s) as usize..(hi - s) as usize].copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            out.push(v.clone());
        }
    }
    out
}

/// A scattered crash state of the storage's unflushed operations: each
/// lost, whole, or kept in a random choice of its pieces of `unit` bytes.
pub fn scattered(fs: &FaultStorage, unit: u64, seed: u64) -> CrashState {
    let mut rng = XorShift(seed | 1);
    let mut next = move || rng.next();
    let ops = (fs.pending().iter())
        .map(|op| match next() % 4 {
            0 => Persisted::Nothing,
            1 => Persisted::Whole,
            _ => Persisted::Pieces((0..op.pieces(unit)).map(|_| next() & 1 == 1).collect()),
        })
        .collect();
    CrashState::Scattered { unit, ops }
}
