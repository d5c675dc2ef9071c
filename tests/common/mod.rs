//! Helpers shared by the integration tests: fixtures, decompression, hashing,
//! the QEMU oracle, raw reference files and a deterministic byte generator.
//!
//! Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use vhdx::{Disk, IoError, Storage};

/// 4 MiB: the chunk size for hashing and comparing whole disks.
pub const CHUNK: usize = 4 << 20;

/// Whether the tests run under CI (`CI=true`), where a missing oracle or
/// fixture is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Skips the test (returns `false` after printing a note), or under CI fails.
fn unavailable(what: &str) -> bool {
    if in_ci() {
        panic!("{what} is not available, and CI=true requires it");
    }
    eprintln!("note: skipping this test: {what} is not available (under CI=true this would fail)");
    false
}

// ---------------------------------------------------------------- fixtures

/// The fixture directory: `$VHDX_FIXTURES`, else `../shared/fixtures` next
/// to the crate. `None` (after a note) when it is missing outside CI.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("VHDX_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join("fixtures"),
    };
    if dir.join("SOURCES.md").is_file() {
        Some(dir)
    } else {
        unavailable(&format!("the fixture directory {} (set VHDX_FIXTURES)", dir.display()));
        None
    }
}

/// A fixture decompressed into its own temporary directory.
pub struct Fixture {
    /// The decompressed container.
    pub path: PathBuf,
    /// Keeps the directory alive.
    pub dir: TempDir,
}

/// Decompresses the fixture `rel` (e.g. `"qemu/iotest-dynamic-1G.vhdx.bz2"`)
/// into a fresh temporary directory; `None` when the fixtures are missing
/// outside CI.
pub fn fixture(rel: &str) -> Option<Fixture> {
    let src = fixtures_dir()?.join(rel);
    assert!(src.is_file(), "fixture {} is missing from the fixture directory", src.display());
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let path = decompress_into(&src, dir.path());
    Some(Fixture { path, dir })
}

/// Decompresses a fixture into another fixture's directory (so a child and its
/// parent sit side by side, as the relative locator expects).
pub fn fixture_into(rel: &str, dir: &Path) -> PathBuf {
    let src = fixtures_dir().expect("fixtures present").join(rel);
    decompress_into(&src, dir)
}

/// Decompresses `src` (`.gz` or `.bz2`, else copied) into `dir`, streaming, and
/// keeping all-zero stretches as holes so the 600 MiB containers stay small.
pub fn decompress_into(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap().to_string_lossy().into_owned();
    let input = File::open(src).unwrap_or_else(|e| panic!("opening {}: {e}", src.display()));
    let (stem, mut reader): (&str, Box<dyn Read>) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(input))))
    } else if let Some(stem) = name.strip_suffix(".bz2") {
        (stem, Box::new(bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(input))))
    } else {
        (name.as_str(), Box::new(input))
    };
    let out_path = dir.join(stem);
    write_sparse(&mut *reader, &out_path).unwrap_or_else(|e| panic!("decompressing {}: {e}", src.display()));
    out_path
}

/// Streams `reader` into a new file at `dst`, leaving all-zero 64 KiB pieces as holes.
fn write_sparse(reader: &mut dyn Read, dst: &Path) -> std::io::Result<()> {
    let out = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read_full(reader, &mut buf)?;
        if n == 0 {
            break;
        }
        for (i, piece) in buf[..n].chunks(64 << 10).enumerate() {
            if piece.iter().any(|&b| b != 0) {
                out.write_all_at(piece, pos + (i * (64 << 10)) as u64)?;
            }
        }
        pos += n as u64;
    }
    out.set_len(pos)
}

/// Reads until `buf` is full or the stream ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies a file, keeping holes.
pub fn sparse_copy(src: &Path, dst: &Path) {
    let mut input = File::open(src).unwrap_or_else(|e| panic!("opening {}: {e}", src.display()));
    write_sparse(&mut input, dst).unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
}

// ---------------------------------------------------------------- hashing

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a byte slice, as hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
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

// ---------------------------------------------------------------- QEMU

/// Whether `qemu-img` and `qemu-io` can be used. Outside CI a missing QEMU
/// skips the test (after a note); under `CI=true` it fails the test.
pub fn qemu() -> bool {
    qemu_present() || unavailable("QEMU (qemu-img and qemu-io on PATH)")
}

/// Whether `qemu-img` and `qemu-io` run, without judging.
pub fn qemu_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        ["qemu-img", "qemu-io"]
            .iter()
            .all(|tool| Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
    })
}

/// Runs a command and returns its output, without judging the exit status.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn describe(program: &str, args: &[&str], out: &Output) -> String {
    format!(
        "`{program} {}` exited with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command, asserts it succeeded, and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{}", describe(program, args, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img <args>`, which must succeed.
pub fn qemu_img(args: &[&str]) -> String {
    run_ok("qemu-img", args)
}

/// `qemu-io -f vhdx <image> -c <cmd>...`, which must succeed and report no
/// error (qemu-io exits 0 even when a command fails, so its output is checked).
pub fn qemu_io(image: &Path, cmds: &[String]) -> String {
    let img = image.to_str().unwrap();
    let mut args: Vec<&str> = vec!["-f", "vhdx"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    let out = run("qemu-io", &args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success()
            && !text.contains("error")
            && !text.contains("failed")
            && !text.contains("Pattern verification"),
        "{}",
        describe("qemu-io", &args, &out)
    );
    text
}

/// `qemu-img check -f vhdx` must pass and report no errors, no leaks and no
/// corruptions.
pub fn qemu_check_clean(image: &Path) {
    qemu_check_clean_with(image, &[]);
}

/// [`qemu_check_clean`] with more `qemu-img check` options (`-U` to check
/// an image open for writing elsewhere).
pub fn qemu_check_clean_with(image: &Path, options: &[&str]) {
    let img = image.to_str().unwrap();
    let mut args = vec!["check", "-f", "vhdx", "--output=json"];
    args.extend_from_slice(options);
    args.push(img);
    let out = run("qemu-img", &args);
    assert!(out.status.success(), "{}", describe("qemu-img", &["check", "-f", "vhdx", img], &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img check --output=json gives JSON");
    for key in ["corruptions", "leaks", "check-errors", "corruptions-fixed", "leaks-fixed"] {
        let n = v.get(key).and_then(|x| x.as_u64()).unwrap_or(0);
        assert_eq!(n, 0, "qemu-img check reports {key} = {n} for {img}: {v}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.to_lowercase().contains("log"), "qemu-img check complains about the log of {img}: {stderr}");
}

/// `qemu-img convert -f vhdx -O raw image out`.
pub fn qemu_convert_to_raw(image: &Path, out: &Path) {
    qemu_img(&["convert", "-f", "vhdx", "-O", "raw", image.to_str().unwrap(), out.to_str().unwrap()]);
}

/// `qemu-img info --output=json`, parsed.
pub fn qemu_info(image: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "-f", "vhdx", "--output=json", image.to_str().unwrap()]);
    serde_json::from_str(&out).expect("qemu-img info --output=json gives JSON")
}

// ---------------------------------------------------------------- raw model

/// A sparse raw file used as the reference model of a virtual disk.
pub struct RawModel {
    pub path: PathBuf,
    file: File,
    pub size: u64,
}

impl RawModel {
    pub fn new(path: PathBuf, size: u64) -> RawModel {
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(size).unwrap();
        RawModel { path, file, size }
    }

    pub fn write(&self, data: &[u8], offset: u64) {
        assert!(offset + data.len() as u64 <= self.size, "model write out of range");
        self.file.write_all_at(data, offset).unwrap();
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

// ---------------------------------------------------------------- bytes

/// A small deterministic pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.next_u64() % (hi - lo)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` deterministic pseudo-random bytes for `seed`; never all zero for
/// lengths of 8 or more, so a lost write cannot pass for unwritten space.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

// ---------------------------------------------------------------- headers

/// CRC-32C (Castagnoli), bitwise: an implementation independent of the crate's.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// A header parsed by the test itself from the documented layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub sequence_number: u64,
    pub file_write_guid: [u8; 16],
    pub data_write_guid: [u8; 16],
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// Parses the 4 KiB header at `bytes`: `Err` with the reason when the
/// signature, CRC-32C or version is wrong.
pub fn parse_header(bytes: &[u8]) -> Result<RawHeader, String> {
    let h = &bytes[..4096];
    if &h[0..4] != b"head" {
        return Err(format!("signature {:?}", &h[0..4]));
    }
    let stored = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let mut copy = h.to_vec();
    copy[4..8].fill(0);
    let crc = crc32c(&copy);
    if crc != stored {
        return Err(format!("checksum {stored:#010x}, computed {crc:#010x}"));
    }
    let u16_at = |o: usize| u16::from_le_bytes(h[o..o + 2].try_into().unwrap());
    let hdr = RawHeader {
        sequence_number: u64::from_le_bytes(h[8..16].try_into().unwrap()),
        file_write_guid: h[16..32].try_into().unwrap(),
        data_write_guid: h[32..48].try_into().unwrap(),
        log_guid: h[48..64].try_into().unwrap(),
        log_version: u16_at(64),
        version: u16_at(66),
        log_length: u32::from_le_bytes(h[68..72].try_into().unwrap()),
        log_offset: u64::from_le_bytes(h[72..80].try_into().unwrap()),
    };
    if hdr.version != 1 {
        return Err(format!("version {}", hdr.version));
    }
    Ok(hdr)
}

/// Both headers of a file, parsed from 64 KiB and 128 KiB.
pub fn read_headers(path: &Path) -> [Result<RawHeader, String>; 2] {
    let f = File::open(path).unwrap();
    [64u64 << 10, 128 << 10].map(|at| {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, at).unwrap();
        parse_header(&buf)
    })
}

/// The current header: the valid one with the higher sequence number (header 1 on a tie).
pub fn current_header(path: &Path) -> RawHeader {
    match read_headers(path) {
        [Ok(a), Ok(b)] => {
            if b.sequence_number > a.sequence_number {
                b
            } else {
                a
            }
        }
        [Ok(a), Err(_)] => a,
        [Err(_), Ok(b)] => b,
        [Err(a), Err(b)] => panic!("no valid header in {}: {a}; {b}", path.display()),
    }
}

// ---------------------------------------------------------------- storage

/// Storage over shared memory, so a test can keep the bytes after the
/// [`Disk`] that owns a handle is closed, and reopen or snapshot them.
#[derive(Clone, Default)]
pub struct SharedMem(pub Arc<Mutex<Vec<u8>>>);

impl SharedMem {
    pub fn new() -> SharedMem {
        SharedMem::default()
    }

    pub fn from_vec(v: Vec<u8>) -> SharedMem {
        SharedMem(Arc::new(Mutex::new(v)))
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

fn eof() -> IoError {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the shared memory")
}

impl Storage for SharedMem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let v = self.0.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        buf.copy_from_slice(v.get(start..end).ok_or_else(eof)?);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        let mut v = self.0.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        if end > v.len() {
            v.resize(end, 0);
        }
        v[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.0.lock().unwrap().len() as u64)
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        self.0.lock().unwrap().resize(len, 0);
        Ok(())
    }
}

/// Writes all of `data` to a new file.
pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// One storage operation, as recorded by [`Recorder`].
#[derive(Clone, Debug)]
pub enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Flush,
}

/// Storage that records every operation, so a test can rebuild the bytes a
/// crash after any operation would have left (every prefix of the record).
#[derive(Clone, Default)]
pub struct Recorder {
    pub mem: SharedMem,
    pub ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// The bytes after the first `n` operations (starting from empty storage).
    pub fn image_after(&self, n: usize) -> Vec<u8> {
        let ops = self.ops.lock().unwrap();
        let mut v: Vec<u8> = Vec::new();
        for op in &ops[..n] {
            match op {
                Op::Write(at, data) => {
                    let end = *at as usize + data.len();
                    if end > v.len() {
                        v.resize(end, 0);
                    }
                    v[*at as usize..end].copy_from_slice(data);
                }
                Op::SetLen(len) => v.resize(*len as usize, 0),
                Op::Flush => {}
            }
        }
        v
    }
}

impl Storage for Recorder {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.mem.read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::Write(offset, buf.to_vec()));
        self.mem.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::Flush);
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        self.mem.len()
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::SetLen(len));
        self.mem.set_len(len)
    }
}

/// A sparse in-memory model of a large virtual disk: 64 KiB pages, absent = zeros.
pub struct SparseModel {
    pub size: u64,
    pages: std::collections::BTreeMap<u64, Vec<u8>>,
}

const PAGE: u64 = 64 << 10;

impl SparseModel {
    pub fn new(size: u64) -> SparseModel {
        SparseModel { size, pages: Default::default() }
    }

    pub fn write(&mut self, data: &[u8], offset: u64) {
        assert!(offset + data.len() as u64 <= self.size, "model write out of range");
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, in_page) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let p = self.pages.entry(page).or_insert_with(|| vec![0u8; PAGE as usize]);
            p[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (&page, p) in self.pages.range(offset / PAGE..(offset + len as u64).div_ceil(PAGE)) {
            let lo = (page * PAGE).max(offset);
            let hi = ((page + 1) * PAGE).min(offset + len as u64);
            if lo < hi {
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&p[(lo - page * PAGE) as usize..(hi - page * PAGE) as usize]);
            }
        }
        out
    }

    /// Asserts the whole disk equals the model: every byte of the virtual
    /// disk is read and compared, whatever the disk's map says; the map is
    /// also checked to cover the disk and to call zero only what the model
    /// holds as zeros.
    pub fn assert_equals(&self, disk: &Disk) {
        assert_eq!(disk.virtual_size(), self.size, "virtual size");
        let map = disk.map().expect("map");
        let mut covered = 0u64;
        for m in &map {
            assert_eq!(m.offset, covered, "map is not contiguous");
            covered += m.length;
            if m.extent == vhdx::Extent::Zero {
                let end = m.offset + m.length;
                for (&page, p) in self.pages.range(m.offset / PAGE..end.div_ceil(PAGE)) {
                    let lo = (page * PAGE).max(m.offset);
                    let hi = ((page + 1) * PAGE).min(end);
                    let bytes = &p[(lo - page * PAGE) as usize..(hi - page * PAGE) as usize];
                    if let Some(i) = bytes.iter().position(|&b| b != 0) {
                        panic!("the disk maps {:#x} as zero but the model has {:#04x} there", lo + i as u64, bytes[i]);
                    }
                }
            }
        }
        assert_eq!(covered, self.size, "map does not cover the disk");
        let extent_at = |at: u64| map.iter().find(|m| m.offset <= at && at < m.offset + m.length).map(|m| m.extent);
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(CHUNK as u64) as usize;
            let expect = self.read(at, n);
            let got = read_vec(disk, at, n);
            if got != expect {
                let i = first_difference(&got, &expect);
                let where_ = at + i as u64;
                panic!(
                    "disk differs from the model at {where_:#x} ({:?}): disk {:#04x}, model {:#04x}",
                    extent_at(where_),
                    got[i],
                    expect[i]
                );
            }
            at += n as u64;
        }
    }
}

// ---------------------------------------------------------------- BAT, parsed by the test

/// The BAT of an image, read by the test from the documented layout (region
/// table at 192 KiB, checked with the test's own CRC-32C).
pub struct RawBat {
    pub entries: Vec<u64>,
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
}

/// The on-disk bytes of the BAT region GUID 2DC27766-F623-4200-9D64-115E9BFD4A08.
const BAT_GUID: [u8; 16] =
    [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08];

impl RawBat {
    /// Reads the BAT through `read(offset, buf)` for a disk of `size` bytes
    /// with `bs`-byte blocks and `lss`-byte logical sectors.
    pub fn read(read: &dyn Fn(u64, &mut [u8]), size: u64, bs: u64, lss: u64) -> RawBat {
        let mut table = vec![0u8; 64 << 10];
        read(192 << 10, &mut table);
        assert_eq!(&table[0..4], b"regi", "region table signature");
        let stored = u32::from_le_bytes(table[4..8].try_into().unwrap());
        let mut copy = table.clone();
        copy[4..8].fill(0);
        assert_eq!(crc32c(&copy), stored, "region table checksum");
        let mut second = vec![0u8; 64 << 10];
        read(256 << 10, &mut second);
        assert_eq!(second, table, "the two region table copies differ");
        let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
        let (offset, length) = (0..count)
            .map(|i| &table[16 + 32 * i..48 + 32 * i])
            .find(|e| e[0..16] == BAT_GUID)
            .map(|e| {
                (u64::from_le_bytes(e[16..24].try_into().unwrap()), u32::from_le_bytes(e[24..28].try_into().unwrap()))
            })
            .expect("a BAT region");
        let mut raw = vec![0u8; length as usize];
        read(offset, &mut raw);
        let entries = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        RawBat { entries, chunk_ratio: (1u64 << 23) * lss / bs, payload_blocks: size.div_ceil(bs) }
    }

    pub fn from_file(path: &Path, size: u64, bs: u64, lss: u64) -> RawBat {
        let f = File::open(path).unwrap();
        RawBat::read(&|at, buf| f.read_exact_at(buf, at).unwrap(), size, bs, lss)
    }

    /// Index of payload block `i`: `i + i / chunk_ratio` (the interleave).
    pub fn payload(&self, i: u64) -> u64 {
        self.entries[(i + i / self.chunk_ratio) as usize]
    }

    /// Checks the format's rules for a fixed or dynamic disk: entry count,
    /// reserved bits zero, sector-bitmap entries and everything past the table
    /// zero, payload states FULLY_PRESENT exactly for `present` blocks and
    /// NOT_PRESENT with a zero offset for the rest, present offsets 1 MiB-aligned,
    /// past the header section, distinct and inside a file of `file_len` bytes.
    /// Returns the file offset of each present block.
    pub fn check(&self, present: &BTreeSetU64, file_len: u64, bs: u64) -> std::collections::BTreeMap<u64, u64> {
        let p = self.payload_blocks;
        let cr = self.chunk_ratio;
        let count = p + (p - 1) / cr;
        assert!(self.entries.len() as u64 >= count, "BAT region too small");
        let mut offsets = std::collections::BTreeMap::new();
        for (index, &e) in self.entries.iter().enumerate() {
            let index = index as u64;
            assert_eq!(e & 0xF_FFF8, 0, "BAT entry {index} has reserved bits set: {e:#x}");
            if index >= count || index % (cr + 1) == cr {
                assert_eq!(e, 0, "BAT entry {index} (sector bitmap or past the table) is not zero");
                continue;
            }
            let block = index - index / (cr + 1);
            let off = e & !0xF_FFFF;
            if present.contains(&block) {
                assert_eq!(e & 7, 6, "payload block {block} (entry {index}) should be FULLY_PRESENT: {e:#x}");
                assert!(off >= 1 << 20 && off + bs <= file_len, "block {block} at {off:#x} outside the file");
                offsets.insert(block, off);
            } else {
                assert_eq!(e, 0, "payload block {block} (entry {index}) should be NOT_PRESENT with offset 0: {e:#x}");
            }
        }
        let mut sorted: Vec<u64> = offsets.values().copied().collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0] + bs <= w[1], "blocks at {:#x} and {:#x} overlap", w[0], w[1]);
        }
        offsets
    }
}

pub type BTreeSetU64 = std::collections::BTreeSet<u64>;

// ---------------------------------------------------------------- the CLI

/// The `vhdx` tool (`src/bin/vhdx`; see `tests/tool`).
pub fn vhdx_tool() -> &'static Path {
    crate::tool::vhdx()
}
