//! Property tests against an independent model of the virtual disk.
//!
//! Random sequences of writes (any offset and length: empty, sub-sector,
//! block-crossing, the last byte, past the end), reads, flushes, close and
//! reopen (read-only or writable, from the same bytes), runs of small
//! commits (a write and a flush each, enough to wrap the log) and crash
//! states run on fixed, dynamic and differencing disks (over a partly
//! written parent) with 1 MiB blocks and 512- or 4096-byte sectors, on
//! two geometries:
//!
//! - *small*: four blocks, the last one short; after every step the whole
//!   disk must equal the model;
//! - *corners* (dynamic and differencing): a virtual size just past the
//!   first sector-bitmap chunk (2^23 sectors: 4 GiB with 512-byte sectors,
//!   32 GiB with 4096), with writes drawn around the start, the first block
//!   of the second BAT page (block 512), the second chunk and the end; the
//!   image file holds only what is allocated, so this costs little memory.
//!   The blocks a step wrote are compared after it, every block ever
//!   written (and those around each corner) at each reopen, crash state
//!   and at the end.
//!
//! The model is a plain sparse byte map that received the same writes.
//! Errors must be exactly `OutOfRange` or `ReadOnly` where the model says
//! so. Crash states: the bytes as they are (every write reached the
//! storage); a crash after any storage operation of the last flush (an
//! in-order prefix: the state before that flush or after it); and a
//! *scattered* state of [`FaultStorage`]: any subset of the storage
//! operations since the last storage flush, each whole, lost or torn in
//! pieces of a logical sector (512-byte pieces of a 4096-byte physical
//! sector on a 512e disk); every sector must then hold its flushed content
//! or one of the versions the test wrote since. After each close the test's
//! own BAT parser checks the format's rules, and `corners_are_reached`
//! proves with it that the second BAT page, the second chunk and a log
//! wrap are reached.
//!
//! `VHDX_PROPTEST_CASES` sets the cases per small configuration (default
//! 64; the corner configurations run a quarter as many) and
//! `VHDX_PROPTEST_SEED` fixes the seed (default random). Failures are
//! persisted in `tests/proptest-regressions/model.txt`, and the cases
//! there are replayed first on every run.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use vhdx::{BlockDevice, CreateOptions, Disk, DiskType, ErrorKind, MemStorage, OpenOptions};

use crate::common::{compare::*, data::*, layout::*, storage::*};
use crate::model_support::{scattered, versions, Model, Tap};

const MIB: u64 = 1 << 20;
const BS: u64 = MIB;
/// Entries in one 4 KiB BAT page: block 512 opens the second page.
const BAT_PAGE_ENTRIES: u64 = 512;

/// The disk a configuration runs on, and where its corners are.
#[derive(Debug, Clone)]
struct Geometry {
    kind: DiskType,
    lss: u64,
    size: u64,
    /// Offsets around which writes gather.
    hot: Vec<u64>,
    /// Compare the whole disk after every step (small disks only).
    whole: bool,
}

impl Geometry {
    fn small(kind: DiskType, lss: u64) -> Geometry {
        let size = 3 * MIB + 5 * lss; // four blocks, the last one short
        Geometry { kind, lss, size, hot: (0..=4).map(|b| b * BS).collect(), whole: true }
    }

    /// Sectors per chunk times the sector size, in blocks: the chunk ratio.
    fn chunk_ratio(lss: u64) -> u64 {
        (1u64 << 23) * lss / BS
    }

    fn corners(kind: DiskType, lss: u64) -> Geometry {
        let cr = Geometry::chunk_ratio(lss);
        let size = (cr + 3) * BS + 5 * lss;
        Geometry { kind, lss, size, hot: vec![0, BAT_PAGE_ENTRIES * BS, cr * BS, size], whole: false }
    }

    /// The blocks compared at a reopen or crash besides those written:
    /// the two around each corner.
    fn corner_blocks(&self) -> BTreeSet<u64> {
        let last = (self.size - 1) / BS;
        self.hot.iter().flat_map(|&h| [(h / BS).saturating_sub(1), (h / BS).min(last)]).collect()
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        off: u64,
        len: usize,
        seed: u64,
    },
    Read {
        off: u64,
        len: usize,
    },
    Flush,
    Reopen {
        writable: bool,
    },
    CrashSnapshot,
    CrashInLastFlush {
        pick: u64,
    },
    /// A crash after any storage operation of the last flush, with the
    /// operations since the storage flush before it reordered and torn.
    CrashInLastFlushScattered {
        pick: u64,
        seed: u64,
    },
    /// A crash state with the storage's unflushed operations reordered and
    /// torn (see [`scattered`]).
    CrashScattered {
        seed: u64,
    },
    /// `count` one-sector writes near a corner, each followed by a flush:
    /// many small metadata changes (sector bitmap bits, allocations).
    Commits {
        count: u64,
        seed: u64,
    },
}

fn cases() -> u32 {
    std::env::var("VHDX_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

fn config(cases: u32) -> Config {
    let rng_seed = match std::env::var("VHDX_PROPTEST_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(seed) => RngSeed::Fixed(seed),
        None => RngSeed::Random,
    };
    Config {
        cases,
        rng_seed,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/model.txt"))),
        ..Config::default()
    }
}

/// Offsets that matter: anywhere, near a corner (a block boundary of the
/// small disk; the second BAT page, the second chunk, the end of the big
/// one), near the end, past the end, and where `offset + len` overflows.
fn offset(g: &Geometry) -> impl Strategy<Value = u64> {
    let (size, hot) = (g.size, g.hot.clone());
    prop_oneof![
        3 => 0..size,
        5 => (0..hot.len(), -2i64..2, -700i64..700).prop_map(move |(h, b, d)| {
            hot[h].saturating_add_signed(b * BS as i64 / 2 + d).min(size + 10)
        }),
        2 => (0..5000u64).prop_map(move |d| size.saturating_sub(d)),
        1 => (0..3u64).prop_map(move |d| size + d),
        1 => (0..3u64).prop_map(|d| u64::MAX - d),
    ]
}

/// Lengths: empty, sub-sector, a few sectors, and over a block boundary or two.
fn length(lss: u64) -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        3 => 1..lss as usize,
        3 => 1..(4 * lss) as usize,
        2 => (BS as usize - 100)..(2 * BS as usize + 100),
    ]
}

fn steps(g: Geometry) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        8 => (offset(&g), length(g.lss), any::<u64>()).prop_map(|(off, len, seed)| Step::Write { off, len, seed }),
        3 => (offset(&g), length(g.lss)).prop_map(|(off, len)| Step::Read { off, len }),
        2 => Just(Step::Flush),
        2 => any::<bool>().prop_map(|writable| Step::Reopen { writable }),
        1 => Just(Step::CrashSnapshot),
        1 => any::<u64>().prop_map(|pick| Step::CrashInLastFlush { pick }),
        1 => any::<u64>().prop_map(|seed| Step::CrashScattered { seed }),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(pick, seed)| Step::CrashInLastFlushScattered { pick, seed }),
        1 => (prop_oneof![3 => 1..8u64, 1 => 100..200u64], any::<u64>())
            .prop_map(|(count, seed)| Step::Commits { count, seed }),
    ];
    proptest::collection::vec(step, 1..32)
}

fn in_range(off: u64, len: usize, size: u64) -> bool {
    off.checked_add(len as u64).is_some_and(|end| end <= size)
}

fn kind_of(r: vhdx::Result<()>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind())
}

/// A parent for differencing runs: a dynamic disk holding data around some
/// corners and nothing in other blocks, so a child's sectors come from
/// written parent data, unallocated parent blocks, or the child.
fn make_parent(g: &Geometry) -> (SharedMem, Model) {
    let mem = SharedMem::new();
    let opts = CreateOptions::dynamic(g.size).block_size(BS as u32).logical_sector_size(g.lss as u32);
    let mut parent = Disk::create_on(Box::new(mem.clone()), &opts, None).unwrap();
    let mut model = Model::default();
    let mut spots = vec![(100u64, BS as usize), (2 * BS + 77, (BS / 2) as usize)];
    if !g.whole {
        // Across the start of the second BAT page and of the second chunk.
        spots.extend([(g.hot[1] - 3000, 5000), (g.hot[2] - 5000, 10_000)]);
    }
    for (off, len) in spots {
        let data = pattern(off, len);
        parent.write_at(&data, off).unwrap();
        model.write(&data, off);
    }
    parent.close().unwrap();
    (mem, model)
}

/// Opens the image in `storage`; a differencing child gets a fresh read-only
/// open of the parent in `parent`.
fn open_image(storage: Box<dyn vhdx::Storage>, writable: bool, parent: Option<&SharedMem>) -> vhdx::Result<Disk> {
    let mut o = OpenOptions::new().writable(writable);
    if let Some(p) = parent {
        o = o.parent(Disk::open_storage(Box::new(p.clone()))?);
    }
    o.open_storage(storage)
}

/// The ranges compared: the whole disk, or the given blocks.
fn ranges(g: &Geometry, blocks: &BTreeSet<u64>) -> Vec<(u64, usize)> {
    if g.whole {
        return vec![(0, g.size as usize)];
    }
    blocks.iter().map(|&b| (b * BS, (g.size - b * BS).min(BS) as usize)).collect()
}

/// Checks that `disk` holds in each range what `ok(offset, got)` accepts
/// sector by sector.
fn compare(disk: &Disk, g: &Geometry, blocks: &BTreeSet<u64>, ok: &dyn Fn(u64, &[u8]) -> bool) -> Result<(), String> {
    for (at, len) in ranges(g, blocks) {
        let got = read_vec(disk, at, len);
        for (i, sector) in got.chunks(g.lss as usize).enumerate() {
            let s = at + i as u64 * g.lss;
            if !ok(s, sector) {
                return Err(format!("sector at {s:#x} holds none of the expected versions"));
            }
        }
    }
    Ok(())
}

/// The storage operations of a flush (first, last), the model before and
/// after it, and the writes it made durable.
type Window = (usize, usize, Model, Model, Vec<(u64, Vec<u8>)>);

/// A disk under test and its model, side by side.
struct Run {
    g: Geometry,
    tap: Tap,
    parent: Option<SharedMem>,
    disk: Option<Disk>,
    model: Model,
    /// The model at the last flush, and the writes since.
    flushed: Model,
    since: Vec<(u64, Vec<u8>)>,
    /// The storage operations of the last flush (or close) that had
    /// something to make durable: (first, last), the model before and
    /// after, and the writes it made durable.
    last_window: Option<Window>,
    /// Blocks written so far, and in the current step.
    touched: BTreeSet<u64>,
    step_blocks: BTreeSet<u64>,
}

impl Run {
    fn new(g: &Geometry) -> Run {
        let tap = Tap::default();
        let (parent, model) = match g.kind {
            DiskType::Differencing => {
                let (mem, model) = make_parent(g);
                (Some(mem), model)
            }
            _ => (None, Model::default()),
        };
        let disk = match g.kind {
            DiskType::Differencing => {
                let p = Disk::open_storage(Box::new(parent.clone().unwrap())).unwrap();
                let linkage = vhdx::format::locator::braced_guid(&p.data_write_guid());
                let locator = vhdx::format::locator::ParentLocator {
                    entries: vec![
                        ("parent_linkage".into(), linkage),
                        ("relative_path".into(), ".\\parent.vhdx".into()),
                    ],
                };
                Disk::create_differencing_on(Box::new(tap.clone()), p, locator, Some(BS as u32), None).unwrap()
            }
            _ => {
                let opts = match g.kind {
                    DiskType::Fixed => CreateOptions::fixed(g.size),
                    _ => CreateOptions::dynamic(g.size),
                }
                .block_size(BS as u32)
                .logical_sector_size(g.lss as u32);
                Disk::create_on(Box::new(tap.clone()), &opts, None).unwrap()
            }
        };
        assert_eq!(disk.disk_type(), g.kind);
        let flushed = model.clone();
        let (touched, step_blocks) = (BTreeSet::new(), BTreeSet::new());
        Run {
            g: g.clone(),
            tap,
            parent,
            disk: Some(disk),
            model,
            flushed,
            since: Vec::new(),
            last_window: None,
            touched,
            step_blocks,
        }
    }

    fn write(&mut self, i: usize, off: u64, data: Vec<u8>) -> Result<(), TestCaseError> {
        let (len, size) = (data.len(), self.g.size);
        let r = kind_of(self.disk_mut().write_at(&data, off));
        if !self.disk().is_writable() {
            let ok = r == Some(ErrorKind::ReadOnly) || (!in_range(off, len, size) && r == Some(ErrorKind::OutOfRange));
            prop_assert!(ok, "step {i}: write to a read-only disk gave {r:?}");
        } else if in_range(off, len, size) {
            prop_assert_eq!(r, None, "step {}: write of {} at {:#x}", i, len, off);
            self.model.write(&data, off);
            if len > 0 {
                let blocks = off / BS..=(off + len as u64 - 1) / BS;
                self.touched.extend(blocks.clone());
                self.step_blocks.extend(blocks);
            }
            self.since.push((off, data));
        } else {
            prop_assert_eq!(r, Some(ErrorKind::OutOfRange), "step {}: write of {} at {:#x}", i, len, off);
        }
        Ok(())
    }

    /// Flushes (or closes, then reopens) and records the flush's window.
    fn flush(&mut self, i: usize, reopen: Option<bool>) -> Result<(), TestCaseError> {
        let was_writable = self.disk().is_writable();
        let start = self.tap.len_ops();
        match reopen {
            None => self.disk_mut().flush().unwrap(),
            Some(_) => self.disk.take().unwrap().close().unwrap(),
        }
        if was_writable {
            let since = std::mem::take(&mut self.since);
            self.last_window = Some((start, self.tap.len_ops(), self.flushed.clone(), self.model.clone(), since));
            self.flushed = self.model.clone();
        }
        let Some(writable) = reopen else { return Ok(()) };
        let (g, all) = (&self.g, (0..self.g.size.div_ceil(BS)).collect::<BTreeSet<u64>>());
        if was_writable {
            let bytes = self.tap.fault.volatile();
            let header = current_header_bytes(&bytes);
            prop_assert_eq!(header.log_guid, [0u8; 16], "step {}: close left a dirty log", i);
            if g.kind != DiskType::Differencing {
                let read = |at: u64, buf: &mut [u8]| buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
                let bat = RawBat::read(&read, g.size, BS, g.lss);
                let present = if g.kind == DiskType::Fixed { &all } else { &self.touched };
                bat.check(present, bytes.len() as u64, BS);
            }
        }
        self.disk = Some(open_image(Box::new(self.tap.clone()), writable, self.parent.as_ref()).unwrap());
        prop_assert!(!self.disk().info().unwrap().log_replayed, "step {}: log replayed after a clean close", i);
        let expect = if g.kind == DiskType::Fixed { all.len() } else { self.touched.len() } as u64;
        prop_assert_eq!(self.disk().info().unwrap().allocated_blocks, expect, "step {}: allocated blocks", i);
        Ok(())
    }

    fn disk(&self) -> &Disk {
        self.disk.as_ref().unwrap()
    }

    fn disk_mut(&mut self) -> &mut Disk {
        self.disk.as_mut().unwrap()
    }

    /// Every block compared at a reopen or crash.
    fn all_blocks(&self) -> BTreeSet<u64> {
        self.touched.union(&self.g.corner_blocks()).copied().collect()
    }

    /// Opens `image` read-only and checks each sector holds one of the
    /// versions `versions` allows.
    fn check_image(
        &self,
        i: usize,
        what: &str,
        image: Vec<u8>,
        ok: &dyn Fn(u64, &[u8]) -> bool,
    ) -> Result<(), TestCaseError> {
        let copy = open_image(Box::new(MemStorage::from_vec(image)), false, self.parent.as_ref())
            .map_err(|e| TestCaseError::fail(format!("step {i}: {what}: does not open: {e}")))?;
        compare(&copy, &self.g, &self.all_blocks(), ok)
            .map_err(|e| TestCaseError::fail(format!("step {i}: {what}: {e}")))
    }

    /// Whether `got` is the flushed content of the sector at `s` or one
    /// written since.
    fn flushed_or_since(&self, s: u64, got: &[u8]) -> bool {
        self.flushed.read(s, got.len()) == got
            || versions(&self.flushed, &self.since, s, self.g.lss).iter().any(|v| v == got)
    }

    fn step(&mut self, i: usize, step: &Step) -> Result<(), TestCaseError> {
        let (size, lss) = (self.g.size, self.g.lss);
        self.step_blocks.clear();
        match *step {
            Step::Write { off, len, seed } => self.write(i, off, pattern(seed, len))?,
            Step::Read { off, len } => {
                let mut buf = vec![0xEEu8; len];
                let r = kind_of(self.disk().read_at(&mut buf, off));
                if in_range(off, len, size) {
                    prop_assert_eq!(r, None, "step {}: read of {} at {:#x}", i, len, off);
                    prop_assert!(buf == self.model.read(off, len), "step {i}: read of {len} at {off:#x} differs");
                } else {
                    prop_assert_eq!(r, Some(ErrorKind::OutOfRange), "step {}: read of {} at {:#x}", i, len, off);
                }
            }
            Step::Flush => self.flush(i, None)?,
            Step::Reopen { writable } => self.flush(i, Some(writable))?,
            Step::Commits { count, seed } => {
                if !self.disk().is_writable() {
                    return Ok(());
                }
                let base = self.g.hot[seed as usize % self.g.hot.len()].min(size - BS.min(size)) / lss * lss;
                let sectors = BS.min(size - base) / lss;
                for n in 0..count {
                    let off = base + ((seed >> 8).wrapping_add(n * 97) % sectors) * lss;
                    self.write(i, off, pattern(seed ^ n, lss as usize))?;
                    self.flush(i, None)?;
                }
            }
            Step::CrashSnapshot => {
                // What a crash now would leave if every write reached the storage.
                let ok = |s: u64, got: &[u8]| self.flushed_or_since(s, got);
                self.check_image(i, "crash snapshot", self.tap.fault.volatile(), &ok)?;
            }
            Step::CrashInLastFlush { pick } => {
                // A crash after any storage operation of the last flush: the
                // image must open and read as the state before or after it.
                let Some((start, end, before, after, _)) = &self.last_window else { return Ok(()) };
                let k = start + (pick % (end - start + 1) as u64) as usize;
                let what = format!("crash after operation {k} of {start}..={end}");
                let ok = |s: u64, got: &[u8]| {
                    let a = after.read(s, got.len());
                    a == got || (k < *end && before.read(s, got.len()) == got)
                };
                self.check_image(i, &what, self.tap.image_after(k), &ok)?;
            }
            Step::CrashInLastFlushScattered { pick, seed } => {
                // The same, with what the storage had not flushed at that
                // operation reordered and torn: the payload written before
                // the flush and the log entry written by it may reach the
                // disk in any order unless a barrier separates them.
                let Some((start, end, before, _, since)) = &self.last_window else { return Ok(()) };
                let k = start + (pick % (end - start + 1) as u64) as usize;
                let (image, state) = self.tap.scattered_after(k, lss, seed);
                let what = format!("crash after operation {k} of {start}..={end}, {state:?}");
                let ok = |s: u64, got: &[u8]| {
                    before.read(s, got.len()) == got || versions(before, since, s, lss).iter().any(|v| v == got)
                };
                self.check_image(i, &what, image, &ok)?;
            }
            Step::CrashScattered { seed } => {
                // The unflushed storage operations reordered and torn in
                // logical sectors (512-byte pieces of a 4 KiB physical sector
                // on a 512e disk).
                let state = scattered(&self.tap.fault, lss, seed);
                let what = format!("{} unflushed operations, {state:?}", self.tap.fault.pending().len());
                let ok = |s: u64, got: &[u8]| self.flushed_or_since(s, got);
                self.check_image(i, &what, self.tap.fault.crash_image(&state), &ok)?;
            }
        }
        let blocks = if matches!(step, Step::Reopen { .. }) { self.all_blocks() } else { self.step_blocks.clone() };
        compare(self.disk(), &self.g, &blocks, &|s, got| self.model.read(s, got.len()) == got)
            .map_err(|e| TestCaseError::fail(format!("after step {i} ({step:?}) the disk differs from the model: {e}")))
    }
}

/// Runs `steps` on a new disk and the model side by side.
fn run(g: &Geometry, steps: &[Step]) -> Result<Run, TestCaseError> {
    let mut r = Run::new(g);
    for (i, step) in steps.iter().enumerate() {
        r.step(i, step)?;
    }
    r.disk.take().unwrap().close().unwrap();
    let disk = open_image(Box::new(MemStorage::from_vec(r.tap.fault.volatile())), false, r.parent.as_ref()).unwrap();
    compare(&disk, g, &r.all_blocks(), &|s, got| r.model.read(s, got.len()) == got)
        .map_err(|e| TestCaseError::fail(format!("after the final close and reopen: {e}")))?;
    if let Some(p) = &r.parent {
        // The parent was only read.
        let p = Disk::open_storage(Box::new(p.clone())).unwrap();
        let (_, parent_model) = make_parent(g);
        compare(&p, g, &r.all_blocks(), &|s, got| parent_model.read(s, got.len()) == got)
            .map_err(|e| TestCaseError::fail(format!("the parent changed: {e}")))?;
    }
    Ok(r)
}

/// The current header of an image held in memory.
fn current_header_bytes(bytes: &[u8]) -> RawHeader {
    let a = parse_header(&bytes[64 << 10..]);
    let b = parse_header(&bytes[128 << 10..]);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if b.sequence_number > a.sequence_number {
                b
            } else {
                a
            }
        }
        (Ok(a), Err(_)) => a,
        (Err(_), Ok(b)) => b,
        (Err(a), Err(b)) => panic!("no valid header: {a}; {b}"),
    }
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn dynamic_512(s in steps(Geometry::small(DiskType::Dynamic, 512))) {
        run(&Geometry::small(DiskType::Dynamic, 512), &s)?;
    }

    #[test]
    fn dynamic_4096(s in steps(Geometry::small(DiskType::Dynamic, 4096))) {
        run(&Geometry::small(DiskType::Dynamic, 4096), &s)?;
    }

    #[test]
    fn fixed_512(s in steps(Geometry::small(DiskType::Fixed, 512))) {
        run(&Geometry::small(DiskType::Fixed, 512), &s)?;
    }

    #[test]
    fn fixed_4096(s in steps(Geometry::small(DiskType::Fixed, 4096))) {
        run(&Geometry::small(DiskType::Fixed, 4096), &s)?;
    }

    #[test]
    fn differencing_512(s in steps(Geometry::small(DiskType::Differencing, 512))) {
        run(&Geometry::small(DiskType::Differencing, 512), &s)?;
    }

    #[test]
    fn differencing_4096(s in steps(Geometry::small(DiskType::Differencing, 4096))) {
        run(&Geometry::small(DiskType::Differencing, 4096), &s)?;
    }
}

proptest! {
    #![proptest_config(config((cases() / 4).max(1)))]

    #[test]
    fn corners_dynamic_512(s in steps(Geometry::corners(DiskType::Dynamic, 512))) {
        run(&Geometry::corners(DiskType::Dynamic, 512), &s)?;
    }

    #[test]
    fn corners_dynamic_4096(s in steps(Geometry::corners(DiskType::Dynamic, 4096))) {
        run(&Geometry::corners(DiskType::Dynamic, 4096), &s)?;
    }

    #[test]
    fn corners_differencing_512(s in steps(Geometry::corners(DiskType::Differencing, 512))) {
        run(&Geometry::corners(DiskType::Differencing, 512), &s)?;
    }

    #[test]
    fn corners_differencing_4096(s in steps(Geometry::corners(DiskType::Differencing, 4096))) {
        run(&Geometry::corners(DiskType::Differencing, 4096), &s)?;
    }
}

/// The corner geometries and the steps the generator draws reach what they
/// are for, as the test's own parsers see the image: a block in the second
/// BAT page, one in the second chunk (for a differencing disk, with the
/// second chunk's sector bitmap), and a log that wraps around its ring.
#[test]
fn corners_are_reached() {
    for kind in [DiskType::Dynamic, DiskType::Differencing] {
        for lss in [512u64, 4096] {
            let g = Geometry::corners(kind, lss);
            let cr = Geometry::chunk_ratio(lss);
            let steps = [
                Step::Write { off: g.hot[1] - 10, len: 20, seed: 1 },
                Step::Write { off: g.hot[2] - 300, len: 600, seed: 2 },
                Step::CrashScattered { seed: 3 },
                // Seed 2: the commits go to the second chunk's first block.
                Step::Commits { count: 200, seed: 2 },
                Step::CrashScattered { seed: 4 },
                Step::Reopen { writable: true },
                Step::Write { off: g.size - 1, len: 1, seed: 5 },
                Step::CrashInLastFlush { pick: 3 },
                Step::Write { off: g.hot[2] + 5000, len: 3000, seed: 6 },
                Step::Flush,
                Step::CrashInLastFlushScattered { pick: 2, seed: 7 },
            ];
            let r = run(&g, &steps).unwrap_or_else(|e| panic!("{kind:?} {lss}: {e}"));
            let bytes = r.tap.fault.volatile();
            let read = |at: u64, buf: &mut [u8]| buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
            let bat = RawBat::read(&read, g.size, BS, lss);
            let what = format!("{kind:?}, {lss}-byte sectors");
            // Fully present in a dynamic disk, partially in a differencing one.
            let present = if kind == DiskType::Dynamic { 6 } else { 7 };
            assert_eq!(bat.payload(BAT_PAGE_ENTRIES) & 7, present, "{what}: block 512 (second BAT page)");
            assert_eq!(bat.payload(cr) & 7, present, "{what}: block {cr} (second chunk)");
            if kind == DiskType::Differencing {
                assert_eq!(bat.entries[2 * cr as usize + 1] & 7, 6, "{what}: the second chunk's sector bitmap");
                let h = current_header_bytes(&bytes);
                assert!(r.tap.log_wrapped((h.log_offset, h.log_length as u64)), "{what}: the log never wrapped");
            }
        }
    }
}

/// The error kinds at the edges, spelled out.
#[test]
fn out_of_range_and_read_only_edges() {
    for lss in [512u64, 4096] {
        let size = 2 * MIB + lss;
        let mem = SharedMem::new();
        let opts = CreateOptions::dynamic(size).block_size(BS as u32).logical_sector_size(lss as u32);
        let mut disk = Disk::create_on(Box::new(mem.clone()), &opts, None).unwrap();
        let mut buf = [0u8; 16];
        for (off, len, ok) in [
            (0, 0, true),
            (size, 0, true),
            (size - 1, 1, true),
            (size - 16, 16, true),
            (size + 1, 0, false),
            (size, 1, false),
            (size - 15, 16, false),
            (u64::MAX, 1, false),
            (u64::MAX - 7, 16, false),
        ] {
            let want = if ok { None } else { Some(ErrorKind::OutOfRange) };
            assert_eq!(kind_of(disk.read_at(&mut buf[..len], off)), want, "read {len} at {off:#x}");
            assert_eq!(kind_of(disk.write_at(&buf[..len], off)), want, "write {len} at {off:#x}");
        }
        // Block-device view: an LBA whose byte offset overflows is out of range.
        let sector = vec![0u8; lss as usize];
        assert_eq!(kind_of(disk.write_sectors(u64::MAX / 2, &sector)), Some(ErrorKind::OutOfRange));
        assert_eq!(kind_of(disk.write_sectors(size / lss, &sector)), Some(ErrorKind::OutOfRange));
        assert_eq!(kind_of(disk.write_sectors(0, &sector[..lss as usize - 1])), Some(ErrorKind::InvalidArgument));
        disk.write_sectors(size / lss - 1, &sector).unwrap();
        disk.close().unwrap();

        let mut ro = Disk::open_storage(Box::new(mem.clone())).unwrap();
        assert!(!ro.is_writable());
        let before = mem.snapshot();
        assert_eq!(kind_of(ro.write_at(&[1], 0)), Some(ErrorKind::ReadOnly));
        assert_eq!(kind_of(ro.write_at(&[], 0)), Some(ErrorKind::ReadOnly));
        assert_eq!(kind_of(ro.write_sectors(0, &sector)), Some(ErrorKind::ReadOnly));
        ro.flush().unwrap();
        ro.close().unwrap();
        assert!(mem.snapshot() == before, "a read-only session changed bytes");
    }
}
