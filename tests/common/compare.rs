//! Hashing and comparing whole disks and files: SHA-256 of a virtual disk
//! or a file, and byte-for-byte comparisons that skip a raw file's holes
//! (found with `qemu-img map`) and report the first differing offset.

use super::FileExt;
use std::fs::File;
use std::path::Path;

use sha2::{Digest, Sha256};
use vhdx::{BlockDevice, Disk};

use super::files::read_full;
use super::qemu::{qemu_present, run_ok};

/// 4 MiB: the chunk size for hashing and comparing whole disks.
pub const CHUNK: usize = 4 << 20;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a byte slice, as hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of a whole block device (a VHD, a raw device), read through
/// [`BlockDevice::read_at`] in 4 MiB chunks.
pub fn sha256_device(dev: &dyn BlockDevice) -> String {
    let size = dev.capacity();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        dev.read_at(&mut buf[..n], at).unwrap_or_else(|e| panic!("reading the device at {at:#x}: {e}"));
        h.update(&buf[..n]);
        at += n as u64;
    }
    hex(&h.finalize())
}

/// SHA-256 of the whole virtual disk, read through [`Disk::read_at`] in 4 MiB
/// chunks.
pub fn sha256_disk(disk: &Disk) -> String {
    let size = disk.virtual_size();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        disk.read_at(&mut buf[..n], at).unwrap_or_else(|e| panic!("reading the virtual disk at {at:#x}: {e}"));
        h.update(&buf[..n]);
        at += n as u64;
    }
    hex(&h.finalize())
}

/// SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// Reads `len` bytes of the virtual disk at `offset`.
pub fn read_vec(disk: &Disk, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    disk.read_at(&mut buf, offset).unwrap_or_else(|e| panic!("reading {len} bytes at {offset:#x}: {e}"));
    buf
}

// ---------------------------------------------------------------- comparing

/// The ranges of a raw file that may hold data, in order: its holes read as
/// zeros by definition, so comparisons can skip them instead of reading
/// gigabytes of zero pages. Uses `qemu-img map` (which asks the file system
/// with SEEK_DATA/SEEK_HOLE); without QEMU, the whole file.
pub fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let len = std::fs::metadata(path).unwrap().len();
    if !qemu_present() {
        return vec![(0, len)];
    }
    let out = run_ok("qemu-img", &["map", "-f", "raw", "--output=json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img map --output=json gives JSON");
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut covered = 0u64;
    for e in v.as_array().expect("a JSON array") {
        let start = e["start"].as_u64().unwrap();
        let length = e["length"].as_u64().unwrap();
        assert_eq!(start, covered, "qemu-img map leaves a gap");
        covered = start + length;
        if e["data"].as_bool() == Some(false) && e["zero"].as_bool() == Some(true) {
            continue;
        }
        match ranges.last_mut() {
            Some(r) if r.1 == start => r.1 += length,
            _ => ranges.push((start, start + length)),
        }
    }
    assert_eq!(covered, len, "qemu-img map does not cover {}", path.display());
    ranges
}

/// The union of two sorted range lists.
fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in all {
        match out.last_mut() {
            Some(r) if lo <= r.1 => r.1 = r.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Calls `f(offset, len)` for pieces of at most [`CHUNK`] bytes covering `ranges`.
fn for_chunks(ranges: &[(u64, u64)], mut f: impl FnMut(u64, usize)) {
    for &(lo, hi) in ranges {
        let mut at = lo;
        while at < hi {
            let n = (hi - at).min(CHUNK as u64) as usize;
            f(at, n);
            at += n as u64;
        }
    }
}

/// The complement of sorted `ranges` within `[0, len)`.
fn gaps(ranges: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(lo, hi) in ranges {
        if lo > at {
            out.push((at, lo));
        }
        at = at.max(hi);
    }
    if at < len {
        out.push((at, len));
    }
    out
}

/// Asserts that the whole virtual disk equals the raw file `raw` (same size,
/// same bytes), reporting the first differing offset. The raw file's holes
/// are compared as zeros without being read.
pub fn assert_disk_equals_raw_file(disk: &Disk, raw: &Path) {
    let f = File::open(raw).unwrap_or_else(|e| panic!("opening {}: {e}", raw.display()));
    let size = disk.virtual_size();
    assert_eq!(f.metadata().unwrap().len(), size, "raw file {} and virtual disk differ in size", raw.display());
    let data = data_ranges(raw);
    let mut a = vec![0u8; CHUNK];
    let mut b = vec![0u8; CHUNK];
    for_chunks(&data, |at, n| {
        disk.read_at(&mut a[..n], at).unwrap_or_else(|e| panic!("reading the virtual disk at {at:#x}: {e}"));
        f.read_exact_at(&mut b[..n], at).unwrap();
        if a[..n] != b[..n] {
            let i = first_difference(&a[..n], &b[..n]);
            panic!(
                "virtual disk differs from {} at offset {:#x}: disk {:#04x}, raw {:#04x}",
                raw.display(),
                at + i as u64,
                a[i],
                b[i]
            );
        }
    });
    for_chunks(&gaps(&data, size), |at, n| {
        disk.read_at(&mut a[..n], at).unwrap_or_else(|e| panic!("reading the virtual disk at {at:#x}: {e}"));
        if let Some(i) = a[..n].iter().position(|&x| x != 0) {
            panic!(
                "virtual disk differs from {} at offset {:#x}: disk {:#04x}, raw 0x00 (a hole)",
                raw.display(),
                at + i as u64,
                a[i]
            );
        }
    });
}

/// Asserts that two files have identical length and bytes (holes skipped).
pub fn assert_files_equal(a: &Path, b: &Path) {
    let fa = File::open(a).unwrap_or_else(|e| panic!("opening {}: {e}", a.display()));
    let fb = File::open(b).unwrap_or_else(|e| panic!("opening {}: {e}", b.display()));
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    assert_eq!(la, lb, "{} is {la} bytes but {} is {lb}", a.display(), b.display());
    let ranges = union(&data_ranges(a), &data_ranges(b));
    let mut x = vec![0u8; CHUNK];
    let mut y = vec![0u8; CHUNK];
    for_chunks(&ranges, |at, n| {
        fa.read_exact_at(&mut x[..n], at).unwrap();
        fb.read_exact_at(&mut y[..n], at).unwrap();
        if x[..n] != y[..n] {
            let i = first_difference(&x[..n], &y[..n]);
            panic!(
                "{} and {} differ at offset {:#x}: {:#04x} vs {:#04x}",
                a.display(),
                b.display(),
                at + i as u64,
                x[i],
                y[i]
            );
        }
    });
}

/// The byte ranges where two equally long files differ, coalesced.
pub fn differing_ranges(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let fa = File::open(a).unwrap();
    let fb = File::open(b).unwrap();
    let la = fa.metadata().unwrap().len();
    assert_eq!(la, fb.metadata().unwrap().len(), "files differ in length");
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut x = vec![0u8; CHUNK];
    let mut y = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < la {
        let n = (la - at).min(CHUNK as u64) as usize;
        fa.read_exact_at(&mut x[..n], at).unwrap();
        fb.read_exact_at(&mut y[..n], at).unwrap();
        if x[..n] != y[..n] {
            for i in 0..n {
                if x[i] != y[i] {
                    let p = at + i as u64;
                    match out.last_mut() {
                        Some(r) if r.1 == p => r.1 = p + 1,
                        _ => out.push((p, p + 1)),
                    }
                }
            }
        }
        at += n as u64;
    }
    out
}

pub fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}
