//! Property tests against an in-memory raw model.
//!
//! Random sequences of writes (any offset and length: empty, sub-sector,
//! block-crossing, the last byte, past the end), reads, flushes, close and
//! reopen (read-only or writable, from the same bytes) and crash snapshots run
//! on fixed, dynamic and differencing disks (over a partly written parent)
//! with 1 MiB blocks and 512- or 4096-byte sectors.
//! After every step the whole disk must equal the model; errors must be
//! exactly `OutOfRange` or `ReadOnly` where the model says so; a crash
//! snapshot (the bytes as they are, opened by a fresh reader) must open and
//! hold, byte for byte, either the last flushed state or the current one; a
//! crash after any storage operation of the last flush must open and read as
//! the state before that flush or after it.
//! After each close the test's own BAT parser checks the format's rules.
//!
//! `VHDX_PROPTEST_CASES` sets the number of cases per configuration (default
//! 32) and `VHDX_PROPTEST_SEED` the seed (default fixed, so runs repeat).

mod common;
mod tool;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use vhdx::{BlockDevice, CreateOptions, Disk, DiskType, ErrorKind, MemStorage, OpenOptions};

const MIB: u64 = 1 << 20;
const BS: u64 = MIB;

#[derive(Debug, Clone)]
enum Step {
    Write { off: u64, len: usize, seed: u64 },
    Read { off: u64, len: usize },
    Flush,
    Reopen { writable: bool },
    CrashSnapshot,
    CrashInLastFlush { pick: u64 },
}

fn config() -> Config {
    let cases = std::env::var("VHDX_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let seed = std::env::var("VHDX_PROPTEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5648_4458);
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

/// Offsets that matter: anywhere, near a block boundary, near the end, past
/// the end, and where `offset + len` overflows.
fn offset(size: u64) -> impl Strategy<Value = u64> {
    let blocks = size.div_ceil(BS);
    prop_oneof![
        4 => 0..size,
        4 => (0..=blocks, -700i64..700).prop_map(move |(b, d)| (b * BS).saturating_add_signed(d).min(size + 10)),
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

fn steps(size: u64, lss: u64) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        8 => (offset(size), length(lss), any::<u64>()).prop_map(|(off, len, seed)| Step::Write { off, len, seed }),
        3 => (offset(size), length(lss)).prop_map(|(off, len)| Step::Read { off, len }),
        2 => Just(Step::Flush),
        2 => any::<bool>().prop_map(|writable| Step::Reopen { writable }),
        1 => Just(Step::CrashSnapshot),
        1 => any::<u64>().prop_map(|pick| Step::CrashInLastFlush { pick }),
    ];
    proptest::collection::vec(step, 1..40)
}

fn in_range(off: u64, len: usize, size: u64) -> bool {
    off.checked_add(len as u64).is_some_and(|end| end <= size)
}

fn kind_of(r: vhdx::Result<()>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind())
}

/// A parent for differencing runs: a dynamic disk holding data in blocks 0
/// and 2 (partly) and nothing in blocks 1 and 3, so a child's sectors come
/// from written parent data, unallocated parent blocks, or the child.
fn make_parent(size: u64, lss: u64) -> (SharedMem, Vec<u8>) {
    let mem = SharedMem::new();
    let opts = CreateOptions::dynamic(size).block_size(BS as u32).logical_sector_size(lss as u32);
    let mut parent = Disk::create_on(Box::new(mem.clone()), &opts, None).unwrap();
    let mut model = vec![0u8; size as usize];
    for (off, len) in [(100u64, BS as usize), (2 * BS + 77, (BS / 2) as usize)] {
        let data = pattern(off, len);
        parent.write_at(&data, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
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

/// Runs `steps` on a new disk and the model side by side.
fn run(kind: DiskType, lss: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let size = 3 * MIB + 5 * lss; // four blocks, the last one short
    let rec = Recorder::new();
    let mem = rec.mem.clone();
    let (parent, mut model) = match kind {
        DiskType::Differencing => {
            let (mem, model) = make_parent(size, lss);
            (Some(mem), model)
        }
        _ => (None, vec![0u8; size as usize]),
    };
    let mut disk = match kind {
        DiskType::Differencing => {
            let p = Disk::open_storage(Box::new(parent.clone().unwrap())).unwrap();
            let linkage = vhdx::format::locator::braced_guid(&p.data_write_guid());
            let locator = vhdx::format::locator::ParentLocator {
                entries: vec![("parent_linkage".into(), linkage), ("relative_path".into(), ".\\parent.vhdx".into())],
            };
            Disk::create_differencing_on(Box::new(rec.clone()), p, locator, Some(BS as u32), None).unwrap()
        }
        _ => {
            let opts = match kind {
                DiskType::Fixed => CreateOptions::fixed(size),
                _ => CreateOptions::dynamic(size),
            }
            .block_size(BS as u32)
            .logical_sector_size(lss as u32);
            Disk::create_on(Box::new(rec.clone()), &opts, None).unwrap()
        }
    };
    assert_eq!(disk.disk_type(), kind);
    let mut flushed = model.clone();
    // The storage operations of the last flush (or close) that had something
    // to make durable: (first, last), the state before it and the state after.
    let mut last_window: Option<(usize, usize, Vec<u8>, Vec<u8>)> = None;
    let mut touched: BTreeSet<u64> = BTreeSet::new();
    let all_blocks: BTreeSet<u64> = (0..size.div_ceil(BS)).collect();

    for (i, step) in steps.iter().enumerate() {
        match *step {
            Step::Write { off, len, seed } => {
                let data = pattern(seed, len);
                let r = kind_of(disk.write_at(&data, off));
                if !disk.is_writable() {
                    let ok = r == Some(ErrorKind::ReadOnly)
                        || (!in_range(off, len, size) && r == Some(ErrorKind::OutOfRange));
                    prop_assert!(ok, "step {i}: write to a read-only disk gave {r:?}");
                } else if in_range(off, len, size) {
                    prop_assert_eq!(r, None, "step {}: write of {} at {:#x}", i, len, off);
                    model[off as usize..off as usize + len].copy_from_slice(&data);
                    if len > 0 {
                        touched.extend(off / BS..=(off + len as u64 - 1) / BS);
                    }
                } else {
                    prop_assert_eq!(r, Some(ErrorKind::OutOfRange), "step {}: write of {} at {:#x}", i, len, off);
                }
            }
            Step::Read { off, len } => {
                let mut buf = vec![0xEEu8; len];
                let r = kind_of(disk.read_at(&mut buf, off));
                if in_range(off, len, size) {
                    prop_assert_eq!(r, None, "step {}: read of {} at {:#x}", i, len, off);
                    prop_assert!(
                        buf == model[off as usize..off as usize + len],
                        "step {i}: read of {len} at {off:#x} differs"
                    );
                } else {
                    prop_assert_eq!(r, Some(ErrorKind::OutOfRange), "step {}: read of {} at {:#x}", i, len, off);
                }
            }
            Step::Flush => {
                let start = rec.len();
                disk.flush().unwrap();
                if disk.is_writable() {
                    last_window = Some((start, rec.len(), flushed.clone(), model.clone()));
                    flushed = model.clone();
                }
            }
            Step::Reopen { writable } => {
                let was_writable = disk.is_writable();
                let start = rec.len();
                disk.close().unwrap();
                if was_writable {
                    last_window = Some((start, rec.len(), flushed.clone(), model.clone()));
                    flushed = model.clone();
                    let bytes = mem.snapshot();
                    let header = current_header_bytes(&bytes);
                    prop_assert_eq!(header.log_guid, [0u8; 16], "step {}: close left a dirty log", i);
                    if kind != DiskType::Differencing {
                        let bat = RawBat::read(
                            &|at, buf| buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]),
                            size,
                            BS,
                            lss,
                        );
                        let present = if kind == DiskType::Fixed { &all_blocks } else { &touched };
                        bat.check(present, bytes.len() as u64, BS);
                    }
                }
                disk = open_image(Box::new(rec.clone()), writable, parent.as_ref()).unwrap();
                prop_assert!(!disk.info().log_replayed, "step {}: log replayed after a clean close", i);
                let expect = if kind == DiskType::Fixed { all_blocks.len() } else { touched.len() } as u64;
                prop_assert_eq!(disk.info().allocated_blocks, expect, "step {}: allocated blocks", i);
            }
            Step::CrashSnapshot => {
                // What a crash now would leave (every write reached the storage).
                let copy = open_image(Box::new(MemStorage::from_vec(mem.snapshot())), false, parent.as_ref())
                    .map_err(|e| TestCaseError::fail(format!("step {i}: crash snapshot does not open: {e}")))?;
                let got = read_vec(&copy, 0, size as usize);
                if let Some(p) = (0..size as usize).find(|&p| got[p] != flushed[p] && got[p] != model[p]) {
                    return Err(TestCaseError::fail(format!(
                        "step {i}: crash snapshot byte {p:#x} is {:#04x}, neither flushed {:#04x} nor current {:#04x}",
                        got[p], flushed[p], model[p]
                    )));
                }
            }
            Step::CrashInLastFlush { pick } => {
                // A crash after any storage operation of the last flush: the
                // image must open and read as the state before or after it.
                let Some((start, end, before, after)) = &last_window else { continue };
                let k = start + (pick % (end - start + 1) as u64) as usize;
                let copy = open_image(Box::new(MemStorage::from_vec(rec.image_after(k))), false, parent.as_ref())
                    .map_err(|e| {
                        TestCaseError::fail(format!("step {i}: crash after operation {k} of {start}..={end}: {e}"))
                    })?;
                let got = read_vec(&copy, 0, size as usize);
                if let Some(p) = (0..size as usize).find(|&p| got[p] != before[p] && got[p] != after[p]) {
                    return Err(TestCaseError::fail(format!(
                        "step {i}: crash after operation {k} of {start}..={end}: byte {p:#x} is {:#04x}, neither {:#04x} before nor {:#04x} after",
                        got[p], before[p], after[p]
                    )));
                }
                prop_assert!(k < *end || got == *after, "step {}: a completed flush lost data", i);
            }
        }
        let whole = read_vec(&disk, 0, size as usize);
        if whole != model {
            let p = first_difference(&whole, &model);
            return Err(TestCaseError::fail(format!(
                "after step {i} ({step:?}) the disk differs from the model at {p:#x}: {:#04x} vs {:#04x}",
                whole[p], model[p]
            )));
        }
    }
    disk.close().unwrap();
    let disk = open_image(Box::new(MemStorage::from_vec(mem.snapshot())), false, parent.as_ref()).unwrap();
    prop_assert!(read_vec(&disk, 0, size as usize) == model, "after the final close and reopen");
    if let Some(p) = &parent {
        // The parent was only read.
        let p = Disk::open_storage(Box::new(p.clone())).unwrap();
        let (_, parent_model) = make_parent(size, lss);
        prop_assert!(read_vec(&p, 0, size as usize) == parent_model, "the parent changed");
    }
    Ok(())
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
    #![proptest_config(config())]

    #[test]
    fn dynamic_512(s in steps(3 * MIB + 5 * 512, 512)) {
        run(DiskType::Dynamic, 512, &s)?;
    }

    #[test]
    fn dynamic_4096(s in steps(3 * MIB + 5 * 4096, 4096)) {
        run(DiskType::Dynamic, 4096, &s)?;
    }

    #[test]
    fn fixed_512(s in steps(3 * MIB + 5 * 512, 512)) {
        run(DiskType::Fixed, 512, &s)?;
    }

    #[test]
    fn fixed_4096(s in steps(3 * MIB + 5 * 4096, 4096)) {
        run(DiskType::Fixed, 4096, &s)?;
    }

    #[test]
    fn differencing_512(s in steps(3 * MIB + 5 * 512, 512)) {
        run(DiskType::Differencing, 512, &s)?;
    }

    #[test]
    fn differencing_4096(s in steps(3 * MIB + 5 * 4096, 4096)) {
        run(DiskType::Differencing, 4096, &s)?;
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
