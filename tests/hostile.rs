//! Hostile images: every malformed image gives a typed error naming the
//! structure and offset — never a panic, a hang or an unbounded allocation.
//!
//! The last two are measured, not assumed: on Linux the mutation test and
//! the oversized-field test run in a child process (this test binary again,
//! the one test alone) under `ulimit -v` (address space: an allocation sized
//! by an unchecked field fails there and aborts the child) whose peak
//! resident memory (`VmHWM`) must stay under a bound, and each image is tried
//! in a thread that must answer within a time bound.
//!
//! The mutation test is bounded so it runs in CI; `VHDX_MUTATIONS=N` runs N
//! mutations per seed image instead of the default.

mod common;
mod tool;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use vhdx::{CreateOptions, Disk, ErrorKind, MemStorage, OpenOptions, Storage};

use crate::common::StartRetrying;
use common::data::XorShift;

/// The address space the child may map, and the resident memory it may
/// reach (the seed images are 8 MiB; each try holds a few copies).
const ADDRESS_SPACE_KIB: u64 = 4 << 20;
const PEAK_RSS_KIB: u64 = 256 << 10;
/// How long one image may take (open, read it all, map, check, write, close).
const PER_IMAGE: Duration = Duration::from_secs(20);
/// How long a whole child run may take.
const PER_RUN: Duration = Duration::from_secs(600);
const CHILD: &str = "VHDX_HOSTILE_CHILD";

/// Runs the test `name` (the caller) in a bounded child process and checks
/// its bounds; returns `true` in that child, where the caller then runs its
/// body. Elsewhere than Linux the body runs here, unmeasured.
fn in_bounded_child(name: &str) -> bool {
    if std::env::var_os(CHILD).is_some() || !cfg!(target_os = "linux") {
        return true;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn_retrying();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PER_RUN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: the child ran past {PER_RUN:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    let tail = |s: &str| s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(status.success(), "{name} in a bounded child failed ({status}):\n{}\n{}", tail(&stdout), tail(&stderr));
    // The child ran this very test (a renamed test would run none and pass).
    assert!(
        stdout.contains(&format!("test {name} ...")) && stdout.contains("test result: ok. 1 passed"),
        "{name} did not run in the child:\n{stdout}"
    );
    let peak: u64 = stdout
        .lines()
        // (Anywhere in a line: with nothing printed before it, the test's
        // own output follows libtest's "test NAME ... " on the same line.)
        .find_map(|l| l.split_once("hostile peak resident KiB: ").map(|(_, kib)| kib))
        .unwrap_or_else(|| panic!("{name}: the child reported no peak memory:\n{stdout}"))
        .trim()
        .parse()
        .unwrap();
    println!("{name}: peak resident memory of the child {peak} KiB (bound {PEAK_RSS_KIB} KiB)");
    assert!(peak <= PEAK_RSS_KIB, "{name}: peak resident memory {peak} KiB, over the bound of {PEAK_RSS_KIB} KiB");
    false
}

/// In the child: prints the process's peak resident memory for the parent.
fn report_peak_memory() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
            println!("hostile peak resident KiB: {}", kib.trim().trim_end_matches("kB").trim());
        }
    }
}

/// Runs `f` in a thread that must answer within [`PER_IMAGE`]: its result,
/// or the panic it raised. Returns the time it took too.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> (std::thread::Result<T>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(PER_IMAGE) {
        Ok(r) => (r, started.elapsed()),
        Err(_) => panic!("{what}: no answer within {PER_IMAGE:?} (a hang)"),
    }
}

/// A small dynamic image with data in three blocks and a dirty log left
/// behind by a write session that never closed.
fn seed_images() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut d =
        Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20).block_size(1 << 20), None)
            .unwrap();
    d.write_at(&[0xAB; 5000], 4000).unwrap();
    d.write_at(&[0xCD; 100], 7 << 20).unwrap();
    d.flush().unwrap();
    out.push(("dynamic with a dirty log", snapshot(d.abandon())));
    out.push(("clean dynamic", clean_dynamic()));
    let f =
        Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::fixed(4 << 20).block_size(1 << 20), None).unwrap();
    out.push(("fixed", snapshot(f.into_storage().unwrap())));
    out
}

/// A closed (clean-log) dynamic image with data in blocks 0 and 7.
fn clean_dynamic() -> Vec<u8> {
    let mut d =
        Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20).block_size(1 << 20), None)
            .unwrap();
    d.write_at(&[0xAB; 5000], 4000).unwrap();
    d.write_at(&[0xCD; 100], 7 << 20).unwrap();
    snapshot(d.into_storage().unwrap())
}

/// All bytes of a storage.
fn snapshot(s: Box<dyn Storage>) -> Vec<u8> {
    let mut v = vec![0u8; s.len().unwrap() as usize];
    s.read_exact_at(&mut v, 0).unwrap();
    v
}

fn try_everything(bytes: Vec<u8>) -> Result<(), vhdx::Error> {
    let d = OpenOptions::new().without_parent().open_storage(Box::new(MemStorage::from_vec(bytes.clone())))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < d.virtual_size() {
        let n = (d.virtual_size() - off).min(buf.len() as u64) as usize;
        d.read_at(&mut buf[..n], off)?;
        off += n as u64;
    }
    let _ = d.map()?;
    drop(d);
    let _ = vhdx::check::check_storage(Box::new(MemStorage::from_vec(bytes.clone())))?;
    let mut w = OpenOptions::new().writable(true).open_storage(Box::new(MemStorage::from_vec(bytes)))?;
    if w.disk_type() != vhdx::DiskType::Differencing {
        w.write_at(&[1; 3000], 123)?;
        w.flush()?;
    }
    w.close()
}

#[test]
fn random_mutations_never_panic() {
    if !in_bounded_child("random_mutations_never_panic") {
        return;
    }
    // Regions worth hitting: identifier, headers, region tables, log, metadata, BAT, payload.
    let hot = |_len: u64| {
        vec![
            (0, 4096),
            (64 << 10, 4096),
            (128 << 10, 4096),
            (192 << 10, 128 << 10),
            (1 << 20, 3 << 20),
            (3 << 20, 64 << 10),
        ]
    };
    let kinds = [
        ErrorKind::Corrupt,
        ErrorKind::Unsupported,
        ErrorKind::ParentNotFound,
        ErrorKind::ParentMismatch,
        ErrorKind::InvalidArgument,
    ];
    let mutations = Mutations { seed: 0x5EED_1234_ABCD_0001, max_flips: 8, hot: &hot, reseal: None, kinds: &kinds };
    let (tried, rejected, slowest) = mutations.run(seed_images(), try_everything);
    println!(
        "hostile: {tried} mutated images, {rejected} rejected with a typed error, none panicked; slowest {slowest:?}"
    );
    report_peak_memory();
}

/// A mutation run: each seed image copied and changed at random in its
/// `hot` regions (`1..=max_flips` bytes: a bit flipped, all ones, zero or
/// random), resealed three times in four when `reseal` is given (so the
/// checks behind the checksums are reached), cut short one time in ten,
/// then tried in a thread that must answer in time. Every failure must be
/// one of `kinds`, and a corruption must name its file offset.
struct Mutations<'a> {
    seed: u64,
    max_flips: u64,
    hot: &'a dyn Fn(u64) -> Vec<(u64, u64)>,
    reseal: Option<fn(&mut [u8])>,
    kinds: &'a [ErrorKind],
}

impl Mutations<'_> {
    /// Runs `VHDX_MUTATIONS` (default 400) mutations of each seed through
    /// `try_one`; returns how many were tried and rejected, and the slowest.
    fn run(
        &self,
        seeds: Vec<(&'static str, Vec<u8>)>,
        try_one: fn(Vec<u8>) -> Result<(), vhdx::Error>,
    ) -> (u64, u64, Duration) {
        let per_seed: u64 = std::env::var("VHDX_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
        let mut rng = XorShift(self.seed);
        let (mut tried, mut rejected) = (0u64, 0u64);
        let mut slowest = Duration::ZERO;
        for (name, image) in seeds {
            let (mut seed_ok, mut seed_rejected) = (0u64, 0u64);
            let hot = (self.hot)(image.len() as u64);
            for _ in 0..per_seed {
                let mut m = image.clone();
                for _ in 0..1 + rng.below(self.max_flips) {
                    let (start, len) = hot[rng.below(hot.len() as u64) as usize];
                    let at = (start + rng.below(len)) as usize;
                    if at < m.len() {
                        m[at] = match rng.below(4) {
                            0 => m[at] ^ (1 << rng.below(8)),
                            1 => 0xFF,
                            2 => 0,
                            _ => rng.next() as u8,
                        };
                    }
                }
                if let Some(reseal) = self.reseal {
                    if rng.below(4) != 0 {
                        reseal(&mut m);
                    }
                }
                if rng.below(10) == 0 {
                    let cut = rng.below(m.len() as u64) as usize;
                    m.truncate(cut);
                }
                tried += 1;
                let what = format!("mutation #{tried} of the {name} image");
                let (outcome, took) = within(&what, move || try_one(m));
                slowest = slowest.max(took);
                match outcome {
                    Ok(Ok(())) => seed_ok += 1,
                    Ok(Err(e)) => {
                        seed_rejected += 1;
                        // Typed: the kinds a damaged image may give, never an
                        // I/O error from memory storage or a busy lock.
                        assert!(self.kinds.contains(&e.kind()), "{what}: error of kind {:?}: {e}", e.kind());
                        // Naming the structure's place in the file.
                        if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported) {
                            assert!(e.to_string().contains("offset 0x"), "{what}: no file offset in: {e}");
                        }
                    }
                    Err(_) => panic!("panic on {what}"),
                }
            }
            // The mutations both spare and break images of every seed: a
            // generator that hits nothing, or a reader that refuses
            // everything, would measure nothing.
            assert!(seed_ok > 0 && seed_rejected > 0, "{name}: {seed_ok} accepted, {seed_rejected} rejected");
            rejected += seed_rejected;
        }
        (tried, rejected, slowest)
    }
}

fn corrupt(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut m = bytes.to_vec();
    m[at..at + value.len()].copy_from_slice(value);
    m
}

fn open_err(bytes: Vec<u8>) -> vhdx::Error {
    OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(bytes))).unwrap_err()
}

#[test]
fn targeted_corruptions_name_structure_and_offset() {
    let image = clean_dynamic();
    // Not a VHDX at all.
    let e = open_err(corrupt(&image, 0, b"notvhdx!"));
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("file type identifier"), "{e}");
    // Both headers damaged.
    let e = open_err(corrupt(&corrupt(&image, 64 << 10, b"XXXX"), 128 << 10, b"XXXX"));
    assert!(e.to_string().contains("header") && e.to_string().contains("0x10000"), "{e}");
    // One header damaged: the other is used. The two copies differ in
    // their sequence numbers (read here by the test's own parser), so the
    // sequence number the open reports says which copy it took.
    let seqs = [64usize << 10, 128 << 10].map(|at| common::layout::parse_header(&image[at..]).unwrap().sequence_number);
    assert_ne!(seqs[0], seqs[1]);
    for (damaged, other) in [(0usize, 1usize), (1, 0)] {
        let at = [64usize << 10, 128 << 10][damaged] + 100;
        let d = OpenOptions::new()
            .open_storage(Box::new(MemStorage::from_vec(corrupt(&image, at, &[image[at] ^ 1]))))
            .unwrap_or_else(|e| panic!("header {} damaged: {e}", damaged + 1));
        assert_eq!(
            d.info().unwrap().header_sequence_number,
            seqs[other],
            "header {} damaged: header {} is used",
            damaged + 1,
            other + 1
        );
    }
    // Both valid: the one with the higher sequence number is current.
    let d = OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(image.clone()))).unwrap();
    assert_eq!(d.info().unwrap().header_sequence_number, seqs[0].max(seqs[1]));
    // Region table copy 1 damaged: copy 2 is used; both damaged: error.
    let one = corrupt(&image, (192 << 10) + 40, b"\x01");
    assert!(OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(one.clone()))).is_ok());
    let e = open_err(corrupt(&one, (256 << 10) + 40, b"\x01"));
    assert!(e.to_string().contains("region table"), "{e}");
    // The BAT is read a page at a time when first needed: an open reads
    // none of it, and a damaged entry is refused by the first read of its
    // page (here: of block 0), and by check.
    let read_err = |bytes: Vec<u8>| {
        let d = OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(bytes.clone()))).unwrap();
        let e = d.read_at(&mut [0u8; 512], 0).unwrap_err();
        let report = vhdx::check::check_storage(Box::new(MemStorage::from_vec(bytes))).unwrap();
        assert!(report.errors.iter().any(|c| c.contains("BAT entry")), "check: {:?}", report.errors);
        e
    };
    // A BAT entry pointing past the end of the file: the BAT is at 3 MiB, payload block 0 is entry 0.
    let bat = 3 << 20;
    let far = ((1u64 << 40) | 6).to_le_bytes();
    let e = read_err(corrupt(&image, bat, &far));
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("BAT entry") && e.to_string().contains("0x300000"), "{e}");
    // A BAT entry pointing into the header section, and one into the metadata region.
    let e = read_err(corrupt(&image, bat, &((1u64 << 20) | 6).to_le_bytes()));
    assert!(e.to_string().contains("BAT entry"), "{e}");
    let e = read_err(corrupt(&image, bat, &((2u64 << 20) | 6).to_le_bytes()));
    assert!(e.to_string().contains("BAT entry"), "{e}");
    // Two entries pointing at the same block: each alone is sound, so
    // reads go on; check finds it, and so does a writer before its first
    // new block.
    let first = u64::from_le_bytes(image[bat..bat + 8].try_into().unwrap());
    let twice = corrupt(&image, bat + 8, &first.to_le_bytes());
    let report = vhdx::check::check_storage(Box::new(MemStorage::from_vec(twice.clone()))).unwrap();
    assert!(report.errors.iter().any(|c| c.contains("overlaps")), "{:?}", report.errors);
    let mut w = OpenOptions::new().writable(true).open_storage(Box::new(MemStorage::from_vec(twice))).unwrap();
    let e = w.write_at(&[1; 512], 3 << 20).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    // Truncated file.
    let e = open_err(image[..200_000].to_vec());
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

/// The file offset of metadata item `id` (its GUID as stored) in an image
/// made by this crate (metadata region at 2 MiB; table entries of 32 bytes
/// from byte 32: item GUID, offset, length, flags).
fn metadata_item(image: &[u8], id: [u8; 16]) -> usize {
    let table = &image[2 << 20..];
    assert_eq!(&table[..8], b"metadata");
    let count = u16::from_le_bytes([table[10], table[11]]) as usize;
    (0..count)
        .map(|i| &table[32 + 32 * i..64 + 32 * i])
        .find(|e| e[..16] == id)
        .map(|e| (2 << 20) + u32::from_le_bytes(e[16..20].try_into().unwrap()) as usize)
        .expect("metadata item")
}

/// Rewrites the CRC-32C at `crc_at` of the structure `[start, start + len)`.
fn reseal(m: &mut [u8], start: usize, len: usize, crc_at: usize) {
    m[crc_at..crc_at + 4].fill(0);
    let crc = common::layout::crc32c(&m[start..start + len]);
    m[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn oversized_fields_give_typed_errors_in_bounded_time_and_memory() {
    if !in_bounded_child("oversized_fields_give_typed_errors_in_bounded_time_and_memory") {
        return;
    }
    const VIRTUAL_SIZE: [u8; 16] =
        [0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8];
    const BLOCK_SIZE: [u8; 16] =
        [0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B];
    let clean = clean_dynamic();
    let (_, dirty) = seed_images().remove(0);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Metadata (no checksum): a 64 TiB and a 2^63-byte virtual size over
    // an 8-entry BAT, and the largest block size.
    let vs = metadata_item(&clean, VIRTUAL_SIZE);
    cases.push(("virtual size 64 TiB", corrupt(&clean, vs, &(64u64 << 40).to_le_bytes())));
    cases.push(("virtual size 2^63", corrupt(&clean, vs, &(1u64 << 63).to_le_bytes())));
    let bs = metadata_item(&clean, BLOCK_SIZE);
    cases.push(("block size 256 MiB", corrupt(&clean, bs, &(256u32 << 20).to_le_bytes())));
    cases.push(("block size 2^31", corrupt(&clean, bs, &(1u32 << 31).to_le_bytes())));
    // The metadata table claiming 65535 entries.
    cases.push(("metadata entry count 0xFFFF", corrupt(&clean, (2 << 20) + 10, &[0xFF, 0xFF])));
    // Region tables (resealed) claiming 2^32-1 entries.
    let mut m = clean.clone();
    for at in [192usize << 10, 256 << 10] {
        m[at + 8..at + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut m, at, 64 << 10, at + 4);
    }
    cases.push(("region entry count 2^32-1", m));
    // Both headers (resealed) with a 4 GiB - 1 MiB log, and with a log at
    // 2^63: on the dirty image, whose log must be read.
    for (what, len, off) in
        [("log length 4 GiB - 1 MiB", 0xFFF0_0000u32, 1u64 << 20), ("log offset 2^63", 1 << 20, 1 << 63)]
    {
        let mut m = dirty.clone();
        for at in [64usize << 10, 128 << 10] {
            m[at + 68..at + 72].copy_from_slice(&len.to_le_bytes());
            m[at + 72..at + 80].copy_from_slice(&off.to_le_bytes());
            reseal(&mut m, at, 4096, at + 4);
        }
        cases.push((what, m));
    }
    // The log entry (at the start of the log) claiming 4 GiB - 4 KiB and
    // 2^32-1 descriptors: its checksum covers entry_length bytes.
    let log = common::layout::parse_header(&dirty[64 << 10..]).unwrap().log_offset as usize;
    assert_eq!(&dirty[log..log + 4], b"loge");
    cases.push(("log entry length 4 GiB - 4 KiB", corrupt(&dirty, log + 8, &0xFFFF_F000u32.to_le_bytes())));
    cases.push(("log descriptor count 2^32-1", corrupt(&dirty, log + 24, &u32::MAX.to_le_bytes())));
    // A BAT entry at the largest offset it can hold.
    cases.push(("BAT entry offset 2^44 MiB - 1", corrupt(&clean, 3 << 20, &(!0xFFFFFu64 | 6).to_le_bytes())));
    let mut slowest = Duration::ZERO;
    for (what, m) in cases {
        let (outcome, took) = within(what, move || try_everything(m));
        slowest = slowest.max(took);
        match outcome {
            // (A 256 MiB block over an 8 MiB disk is legal: one block.)
            Ok(Ok(())) => println!("{what}: accepted, consistent ({took:?})"),
            Ok(Err(e)) => {
                assert!(matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported), "{what}: {:?}: {e}", e.kind());
                println!("{what}: {e} ({took:?})");
            }
            Err(_) => panic!("{what}: panic"),
        }
    }
    println!("oversized fields: slowest {slowest:?}");
    report_peak_memory();
}

#[test]
fn truncated_file_with_dirty_log_is_refused_not_replayed() {
    let (_, image) = seed_images().remove(0);
    // The seed was flushed but not closed: its log GUID is set and the log holds an entry.
    let d = OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(image.clone()))).unwrap();
    assert!(d.info().unwrap().log_replayed);
    drop(d);
    let short = image[..(5 << 20)].to_vec();
    let e = open_err(short);
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn repair_mends_headers_region_tables_reserved_bits_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let image = clean_dynamic();
    let view = |bytes: &[u8]| {
        let d = OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(bytes.to_vec()))).unwrap();
        let mut v = vec![0u8; d.virtual_size() as usize];
        d.read_at(&mut v, 0).unwrap();
        v
    };
    let expected = view(&image);
    // Damage the non-current header, region table copy 2, and set reserved
    // bits and a reserved offset in the BAT (block 1 is NOT_PRESENT).
    let mut m = corrupt(&image, (64 << 10) + 200, b"\xFF");
    m = corrupt(&m, (256 << 10) + 200, b"\xFF");
    let bat = 3 << 20;
    let e0 = u64::from_le_bytes(m[bat..bat + 8].try_into().unwrap());
    m = corrupt(&m, bat, &(e0 | 0x100).to_le_bytes());
    m = corrupt(&m, bat + 8, &(9u64 << 20).to_le_bytes());
    let before = vhdx::check::check_storage(Box::new(MemStorage::from_vec(m.clone()))).unwrap();
    assert!(before.errors.len() >= 3, "{before:?}");
    let path = dir.path().join("broken.vhdx");
    std::fs::write(&path, &m).unwrap();
    let report = vhdx::check::repair_file(&path).unwrap();
    assert!(report.after.is_clean(), "{report:?}");
    assert!(report.actions.len() >= 3, "{report:?}");
    let repaired = std::fs::read(&path).unwrap();
    assert_eq!(view(&repaired), expected, "repair never changes what the disk presents");
    // And QEMU agrees the result is consistent, when it is here.
    if std::process::Command::new("qemu-img").arg("--version").output().is_ok() {
        let out = std::process::Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    } else {
        assert!(std::env::var("CI").is_err(), "qemu-img is required under CI");
    }
}

/// A sector-bitmap entry in a disk without a parent (MS-VHDX 2.5.1: such
/// disks have none) is reported by `check` and cleared by a repair, which
/// says how many it cleared; the disk presents the same bytes. 256 MiB
/// blocks make entry 16 the first chunk's bitmap entry (chunk ratio 16).
#[test]
fn repair_clears_a_sector_bitmap_entry_in_a_disk_without_parent() {
    let mut d =
        Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(17 << 28).block_size(256 << 20), None)
            .unwrap();
    d.write_at(&[0x5A; 4096], 16 << 28).unwrap();
    let image = snapshot(d.into_storage().unwrap());
    let bat = 3 << 20;
    assert_eq!(
        u64::from_le_bytes(image[bat + 17 * 8..bat + 18 * 8].try_into().unwrap()) & 7,
        6,
        "block 16 is entry 17"
    );
    let m = corrupt(&image, bat + 16 * 8, &6u64.to_le_bytes());
    let before = vhdx::check::check_storage(Box::new(MemStorage::from_vec(m.clone()))).unwrap();
    assert!(before.errors.iter().any(|e| e.contains("BAT entry 16 (sector bitmap) has state 6")), "{before:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stray-bitmap.vhdx");
    std::fs::write(&path, &m).unwrap();
    let report = vhdx::check::repair_file(&path).unwrap();
    assert!(report.after.is_clean(), "{report:?}");
    assert_eq!(report.actions, ["cleared 1 sector bitmap entries in a disk without a parent"], "{report:?}");
    let repaired = std::fs::read(&path).unwrap();
    assert_eq!(&repaired[bat + 16 * 8..bat + 17 * 8], &[0u8; 8], "the entry is still set");
    let d = OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(repaired))).unwrap();
    let mut got = vec![0u8; 4096];
    d.read_at(&mut got, 16 << 28).unwrap();
    assert!(got.iter().all(|&b| b == 0x5A));
}

/// Each kind of reserved value a repair clears is reported on its own, with
/// its count, and nothing else: reserved bits alone, a reserved offset
/// alone (block 1 of `clean_dynamic` is NOT_PRESENT).
#[test]
fn repair_reports_each_kind_of_reserved_value_alone() {
    let image = clean_dynamic();
    let bat = 3 << 20;
    let e0 = u64::from_le_bytes(image[bat..bat + 8].try_into().unwrap());
    for (patch, at, expected) in [
        ((e0 | 0x100).to_le_bytes(), bat, "cleared 1 BAT entries with reserved bits set"),
        ((9u64 << 20).to_le_bytes(), bat + 8, "cleared 1 NOT_PRESENT/ZERO BAT entries carrying an offset"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reserved.vhdx");
        std::fs::write(&path, corrupt(&image, at, &patch)).unwrap();
        let report = vhdx::check::repair_file(&path).unwrap();
        assert_eq!(report.actions, [expected], "{report:?}");
        assert!(report.after.is_clean(), "{report:?}");
    }
}

/// Repairing a sound image mends nothing: no action reported, and not a
/// byte of the file changes (no header, region table or BAT rewritten).
#[test]
fn repair_of_a_sound_image_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sound.vhdx");
    let image = clean_dynamic();
    std::fs::write(&path, &image).unwrap();
    let report = vhdx::check::repair_file(&path).unwrap();
    assert!(report.actions.is_empty(), "{report:?}");
    assert!(report.after.is_clean(), "{report:?}");
    assert!(std::fs::read(&path).unwrap() == image, "repair changed a sound image's bytes");
}

/// VHD seed images: dynamic (512 KiB blocks, data in three), fixed, and a
/// differencing child with sectors of its own (opened alone).
fn vhd_seed_images() -> Vec<(&'static str, Vec<u8>)> {
    use vhdx::vhd::{VhdCreateOptions, VhdDisk};
    let mut out = Vec::new();
    let mut d =
        VhdDisk::create_on(Box::new(MemStorage::new()), &VhdCreateOptions::dynamic(4 << 20).block_size(512 << 10))
            .unwrap();
    d.write_at(&[0xAB; 5000], 4000).unwrap();
    d.write_at(&[0xCD; 100], 3 << 20).unwrap();
    out.push(("VHD dynamic", snapshot(d.into_storage().unwrap())));
    let f = VhdDisk::create_on(Box::new(MemStorage::new()), &VhdCreateOptions::fixed(1 << 20)).unwrap();
    out.push(("VHD fixed", snapshot(f.into_storage().unwrap())));
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    drop(VhdDisk::create(&base, &VhdCreateOptions::dynamic(4 << 20)).unwrap());
    let mut c = VhdDisk::create_differencing(dir.path().join("child.vhd"), &base).unwrap();
    c.write_at(&[0xEE; 700], 1000).unwrap();
    c.write_at(&[0x77; 5000], (2 << 20) + 512).unwrap();
    drop(c);
    out.push(("VHD differencing", std::fs::read(dir.path().join("child.vhd")).unwrap()));
    out
}

/// Recomputes the checksums of the footer copy at 0, the dynamic header
/// at 512 and the trailing footer, so mutations reach the checks behind
/// them.
fn reseal_vhd(m: &mut [u8]) {
    fn seal(s: &mut [u8], at: usize) {
        let sum = s
            .iter()
            .enumerate()
            .filter(|&(i, _)| !(at..at + 4).contains(&i))
            .fold(0u32, |a, (_, &b)| a.wrapping_add(b as u32));
        s[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
    }
    let len = m.len();
    if len >= 1536 && &m[..8] == b"conectix" {
        seal(&mut m[..512], 64);
        seal(&mut m[512..1536], 36);
    }
    if len >= 512 {
        seal(&mut m[len - 512..], 64);
    }
}

fn try_everything_vhd(bytes: Vec<u8>) -> Result<(), vhdx::Error> {
    use vhdx::vhd::VhdDisk;
    let d = VhdDisk::open_storage(Box::new(MemStorage::from_vec(bytes.clone())), false)?;
    let size = d.virtual_size();
    let mut buf = vec![0u8; 1 << 20];
    // The first 8 MiB and the last 1 MiB: a mutated size may be terabytes.
    for start in [0, 1 << 20, 2 << 20, 3 << 20, 4 << 20, 5 << 20, 6 << 20, 7 << 20, size.saturating_sub(1 << 20)] {
        if start < size {
            let n = (size - start).min(buf.len() as u64) as usize;
            d.read_at(&mut buf[..n], start)?;
        }
    }
    let _ = d.map()?;
    let _ = d.locator_paths()?;
    drop(d);
    let mut w = VhdDisk::open_storage(Box::new(MemStorage::from_vec(bytes)), true)?;
    if w.virtual_size() > 4096 && w.disk_type() != vhdx::format::vhd::VhdType::Differencing {
        w.write_at(&[1; 3000], 123)?;
        w.write_at(&[2; 512], w.virtual_size() - 512)?;
        let mut back = [0u8; 3000];
        w.read_at(&mut back, 123)?;
        assert_eq!(back, [1; 3000], "a write reads back");
    }
    w.flush()
}

#[test]
fn random_vhd_mutations_never_panic() {
    if !in_bounded_child("random_vhd_mutations_never_panic") {
        return;
    }
    // Footer copy, dynamic header, BAT and locators, trailing footer.
    let hot = |len: u64| vec![(0, 512), (512, 1024), (1536, 4096.min(len - 1536)), (len - 512, 512)];
    let kinds = [ErrorKind::Corrupt, ErrorKind::Unsupported, ErrorKind::InvalidArgument];
    let mutations =
        Mutations { seed: 0x5EED_1234_ABCD_0002, max_flips: 6, hot: &hot, reseal: Some(reseal_vhd), kinds: &kinds };
    let (tried, rejected, slowest) = mutations.run(vhd_seed_images(), try_everything_vhd);
    println!("hostile VHD: {tried} mutated images, {rejected} rejected with a typed error, none panicked; slowest {slowest:?}");
    report_peak_memory();
}

use common::tools::sbin_tool;

/// Small disks made by the filesystems' own tools: ext4 on the whole disk,
/// FAT16 and FAT32 on the whole disk, NTFS on the whole disk, and a GPT
/// with an ext4 partition and a FAT partition.
fn filesystem_seeds() -> Option<Vec<(&'static str, Vec<u8>)>> {
    let tools = ["mkfs.ext4", "debugfs", "mkfs.vfat", "mkntfs", "sgdisk"];
    if tools.iter().any(|t| sbin_tool(t).is_none()) {
        common::unavailable("mkfs.ext4, debugfs, mkfs.vfat, mkntfs and sgdisk");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |tool: &str, args: &[&str]| {
        let out = std::process::Command::new(sbin_tool(tool).unwrap()).current_dir(d).args(args).output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let blank = |name: &str, size: u64| std::fs::File::create(d.join(name)).unwrap().set_len(size).unwrap();
    std::fs::write(d.join("f.bin"), common::data::pattern(7, 300_000)).unwrap();
    blank("ext4.raw", 8 << 20);
    run("mkfs.ext4", &["-q", "-F", "-b", "1024", "ext4.raw"]);
    run("debugfs", &["-w", "-R", "write f.bin f.bin", "ext4.raw"]);
    blank("fat16.raw", 16 << 20);
    run("mkfs.vfat", &["-F", "16", "fat16.raw"]);
    blank("fat32.raw", 40 << 20);
    run("mkfs.vfat", &["-F", "32", "fat32.raw"]);
    blank("ntfs.raw", 8 << 20);
    run("mkntfs", &["-q", "-Q", "-F", "ntfs.raw"]);
    blank("gpt.raw", 16 << 20);
    run("sgdisk", &["-n", "1:1M:+6M", "-n", "2:7M:+6M", "gpt.raw"]);
    let mut gpt = std::fs::read(d.join("gpt.raw")).unwrap();
    let ext = std::fs::read(d.join("ext4.raw")).unwrap();
    gpt[1 << 20..(1 << 20) + (6 << 20)].copy_from_slice(&ext[..6 << 20]);
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();
    Some(vec![
        ("ext4", read("ext4.raw")),
        ("fat16", read("fat16.raw")),
        ("fat32", read("fat32.raw")),
        ("ntfs", read("ntfs.raw")),
        ("gpt", gpt),
    ])
}

/// The guest's filesystems are untrusted input too: partition tables, ext4
/// superblocks and group descriptors, FAT boot sectors and tables and NTFS
/// boot sectors, MFTs and bitmaps, mutated at random in the places their
/// metadata lives, read by `ops::fs::disk_usage` in a bounded child: never
/// a panic, a hang or an unbounded allocation; a damaged table is reported
/// as such, naming its offset, with nothing free; every free range lies
/// inside the disk.
#[test]
fn mutated_filesystems_never_panic() {
    if !in_bounded_child("mutated_filesystems_never_panic") {
        return;
    }
    let Some(seeds) = filesystem_seeds() else {
        report_peak_memory();
        return;
    };
    let per_seed: u64 = std::env::var("VHDX_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let mut rng = XorShift(0x5EED_F11E_5757_0001);
    let (mut tried, mut known, mut skipped, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut slowest = Duration::ZERO;
    for (name, image) in seeds {
        // The first 64 KiB (boot sectors, superblock, descriptors, bitmaps,
        // FATs, tables), the first MiB (the GPT's partitions begin there),
        // anywhere.
        let len = image.len() as u64;
        let hot = [(0u64, 64u64 << 10), (0, 1 << 20), (0, len), ((1 << 20) - 512, 64 << 10)];
        for _ in 0..per_seed {
            let mut m = image.clone();
            for _ in 0..1 + rng.below(16) {
                let (start, span) = hot[rng.below(hot.len() as u64) as usize];
                let at = (start + rng.below(span.min(len - start))) as usize;
                m[at] = match rng.below(4) {
                    0 => m[at] ^ (1 << rng.below(8)),
                    1 => 0xFF,
                    2 => 0,
                    _ => rng.next() as u8,
                };
            }
            tried += 1;
            let what = format!("mutation #{tried} of the {name} disk");
            let size = m.len() as u64;
            let (outcome, took) = within(&what, move || {
                let dev = vhdx::RawDevice::new(Box::new(MemStorage::from_vec(m)), false).unwrap();
                vhdx::ops::fs::disk_usage(&dev)
            });
            slowest = slowest.max(took);
            match outcome {
                Ok(Ok(u)) => {
                    assert!(u.free.iter().all(|&(s, l)| s + l <= size), "{what}: a free range outside the disk");
                    if u.table == vhdx::ops::fs::TableKind::Damaged {
                        errors += 1;
                        assert!(u.free.is_empty(), "{what}: free space on a damaged table");
                        let vhdx::ops::fs::Probe::Skipped { reason, .. } = &u.partitions[0].probe else {
                            panic!("{what}: a damaged table's disk was read")
                        };
                        assert!(reason.contains("offset 0x"), "{what}: no offset in: {reason}");
                        continue;
                    }
                    for p in &u.partitions {
                        match p.probe {
                            vhdx::ops::fs::Probe::Known(_) => known += 1,
                            _ => skipped += 1,
                        }
                    }
                }
                Ok(Err(e)) => {
                    errors += 1;
                    assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
                    assert!(e.to_string().contains("offset 0x"), "{what}: no offset in: {e}");
                }
                Err(_) => panic!("panic on {what}"),
            }
        }
    }
    assert!(known > 0 && skipped > 0, "the mutations spared and broke filesystems: {known} read, {skipped} left alone");
    println!(
        "hostile filesystems: {tried} mutated disks; filesystems read {known}, left alone {skipped}; {errors} \
         damaged tables refused; none panicked; slowest {slowest:?}"
    );
    report_peak_memory();
}
