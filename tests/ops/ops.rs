//! Resize, discard, compact and convert, against oracles the library does
//! not control: a sparse raw reference file that receives the same changes
//! (content), `qemu-img compare`/`check`/`info`/`convert` (QEMU's reading of
//! our files, 512-byte sectors only: QEMU refuses 4096-byte ones), the
//! region table and BAT as the format defines them (BAT relocation, block
//! states), and `vhdx::check`.
//!
//! Differencing disks are compared with models only: QEMU has no
//! differencing VHDX support.

use crate::common::FileExt;
use std::fs::File;
use std::path::{Path, PathBuf};

use vhdx::format::bat::PayloadState;
use vhdx::ops::convert::{convert, ConvertOptions, ImageFormat};
use vhdx::{CreateOptions, Disk, DiskType, ErrorKind, OpenOptions};

use crate::common::{compare::*, data::*, qemu::*};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A sparse raw file that receives the same changes as the image.
struct Model {
    path: PathBuf,
    file: File,
}

impl Model {
    fn new(path: PathBuf, size: u64) -> Model {
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(size).unwrap();
        Model { path, file }
    }
    fn size(&self) -> u64 {
        self.file.metadata().unwrap().len()
    }
    fn write(&self, data: &[u8], at: u64) {
        assert!(at + data.len() as u64 <= self.size());
        self.file.write_all_at(data, at).unwrap();
    }
    fn zero(&self, at: u64, len: u64) {
        self.write(&vec![0u8; len as usize], at);
    }
    /// Like a disk resize: growing adds zeros, shrinking drops the tail.
    fn resize(&self, size: u64) {
        self.file.set_len(size).unwrap();
    }
}

/// Writes `data` at `at` to the disk and the model.
fn write_both(disk: &mut Disk, model: &Model, data: &[u8], at: u64) {
    disk.write_at(data, at).unwrap_or_else(|e| panic!("writing {} bytes at {at:#x}: {e}", data.len()));
    model.write(data, at);
}

/// Discards on the disk; zeros in the model.
fn discard_both(disk: &mut Disk, model: &Model, at: u64, len: u64) {
    disk.discard(at, len).unwrap_or_else(|e| panic!("discarding {len} bytes at {at:#x}: {e}"));
    model.zero(at, len);
}

/// The image at `img` presents exactly the model: through the library
/// (whole disk, holes compared as zeros), `vhdx::check`, and — for 512-byte
/// sectors — QEMU (`check`, `info` virtual size, `compare`).
fn verify(img: &Path, model: &Model) {
    let disk = Disk::open(img).unwrap_or_else(|e| panic!("opening {}: {e}", img.display()));
    assert_eq!(disk.virtual_size(), model.size(), "virtual size");
    assert_disk_equals_model(&disk, model);
    let qemu_can = disk.logical_sector_size() == 512 && disk.disk_type() != DiskType::Differencing;
    drop(disk);
    let report = vhdx::check::check_file(img).unwrap();
    assert!(report.is_clean(), "vhdx check of {}: {:?}", img.display(), report.errors);
    if qemu_can && qemu() {
        qemu_check_clean(img);
        assert_eq!(qemu_info(img)["virtual-size"].as_u64(), Some(model.size()), "QEMU's virtual size");
        if model.size() <= 8 * GIB {
            qemu_img(&["compare", "-f", "vhdx", "-F", "raw", img.to_str().unwrap(), model.path.to_str().unwrap()]);
        } else {
            // QEMU's VHDX driver reports no allocation status, so `compare`
            // would read every byte of a huge disk: QEMU reads the ranges
            // that may hold data instead, and samples of the rest.
            let disk = Disk::open(img).unwrap();
            let size = model.size();
            let mut ranges = interesting_ranges(&disk, model);
            ranges.extend([(0, MIB), (size / 2, size / 2 + MIB), (size - MIB, size)]);
            for (lo, hi) in ranges {
                let (lo, hi) = (lo / 512 * 512, hi.div_ceil(512).saturating_mul(512).min(size));
                let mut at = lo;
                while at < hi {
                    let n = (hi - at).min(8 * MIB);
                    assert_eq!(qemu_read(img, at, n), model.read_at(at, n as usize), "QEMU reads {n} bytes at {at:#x}");
                    at += n;
                }
            }
        }
    }
}

/// `len` virtual bytes at `at` (both multiples of 512) as QEMU reads them.
fn qemu_read(img: &Path, at: u64, len: u64) -> Vec<u8> {
    let out = img.with_extension(format!("dd{at}.raw"));
    let _ = std::fs::remove_file(&out);
    let mut bs = MIB;
    while at % bs != 0 || len % bs != 0 {
        bs /= 2;
    }
    // qemu-img dd: `count` is where the copy ends, in blocks, skip included.
    qemu_img(&[
        "dd",
        "-f",
        "vhdx",
        "-O",
        "raw",
        &format!("bs={bs}"),
        &format!("skip={}", at / bs),
        &format!("count={}", (at + len) / bs),
        &format!("if={}", img.display()),
        &format!("of={}", out.display()),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(bytes.len() as u64, len, "qemu-img dd output length");
    bytes
}

/// Where the model has data or the disk does not claim zeros by
/// structure, merged, as `(start, end)`.
fn interesting_ranges(disk: &Disk, model: &Model) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = data_ranges(&model.path);
    let candidates = vhdx::ops::convert::nonzero_candidates(disk).unwrap();
    ranges.extend(candidates.iter().map(|&(s, l)| (s, s + l)));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(r) if lo <= r.1 => r.1 = r.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// The disk presents the model's bytes, compared chunk by chunk over
/// `ranges`, which the test chose.
fn compare_ranges(disk: &Disk, model: &Model, ranges: &[(u64, u64)]) {
    for &(lo, hi) in ranges {
        let mut at = lo;
        while at < hi {
            let n = (hi - at).min(4 * MIB) as usize;
            let got = read_vec(disk, at, n);
            let want = model.read_at(at, n);
            if got != want {
                let i = first_difference(&got, &want);
                panic!("disk differs from the model at {:#x}: {:#04x} vs {:#04x}", at + i as u64, got[i], want[i]);
            }
            at += n as u64;
        }
    }
}

/// Above this virtual size, the disk's claimed zeros are probed instead of
/// read whole (reading 130 GiB of zeros at every check would take minutes).
const WHOLE_COMPARE_MAX: u64 = 8 * GIB;

/// The disk presents the model's bytes: every byte of the virtual disk
/// (up to [`WHOLE_COMPARE_MAX`]), whatever the disk's map says. Beyond that
/// size, in full wherever the model has data (its file system's data
/// ranges, which the library does not choose) or the disk's map does not
/// claim zeros, and elsewhere — where both say zeros — the first and last
/// 4 KiB of every MiB of the virtual disk (so of every block), a grid the
/// test chooses, not the library.
fn assert_disk_equals_model(disk: &Disk, model: &Model) {
    let size = disk.virtual_size();
    if size <= WHOLE_COMPARE_MAX {
        compare_ranges(disk, model, &[(0, size)]);
        return;
    }
    let ranges = interesting_ranges(disk, model);
    compare_ranges(disk, model, &ranges);
    let mut probes = Vec::new();
    let mut covered = 0;
    for &(lo, hi) in ranges.iter().chain(std::iter::once(&(size, size))) {
        // The gap [covered, lo): both the model and the disk say zeros.
        let mut mib = covered / MIB * MIB;
        while mib < lo {
            for (a, b) in [(mib, mib + 4096), (mib + MIB - 4096, mib + MIB)] {
                let (a, b) = (a.max(covered), b.min(lo));
                if a < b {
                    probes.push((a, b));
                }
            }
            mib += MIB;
        }
        covered = covered.max(hi);
    }
    compare_ranges(disk, model, &probes);
}

fn create(path: &Path, opts: &CreateOptions) -> Disk {
    Disk::create(path, opts).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

fn reopen(path: &Path) -> Disk {
    Disk::open_writable(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn bat_region(disk: &Disk) -> (u64, u32) {
    let r = disk.regions().bat();
    (r.file_offset, r.length)
}

fn payload_state(disk: &Disk, block: u64) -> PayloadState {
    let e = disk.bat_entry(disk.geometry().payload_index(block)).unwrap();
    PayloadState::from_entry(e.raw()).unwrap()
}

// ------------------------------------------------------------------ resize

/// Grows fixed and dynamic disks with 512- and 4096-byte sectors across chunk
/// boundaries (where the BAT interleaves a sector bitmap entry), from a size
/// that ends inside a block, with data at the old end and written past it
/// afterwards.
#[cfg(unix)] // models up to 65 GiB, compared by their data extents (qemu-img map)
#[test]
fn grow_fixed_and_dynamic_across_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    // (type, logical sector, block size, old size, new size); chunk = 2^23 sectors.
    let cases = [
        (DiskType::Dynamic, 512u32, 32 * MIB as u32, 4 * GIB - 3 * 512, 9 * GIB + MIB),
        (DiskType::Dynamic, 4096, 256 * MIB as u32, 32 * GIB - 4096, 65 * GIB + 8192),
        (DiskType::Fixed, 512, MIB as u32, 20 * MIB + 512, 61 * MIB),
        (DiskType::Fixed, 4096, MIB as u32, 9 * MIB - 4096, 33 * MIB),
    ];
    for (i, &(ty, lss, bs, old, new)) in cases.iter().enumerate() {
        let img = tmp.path().join(format!("g{i}.vhdx"));
        let model = Model::new(tmp.path().join(format!("g{i}.raw")), old);
        let mut opts = CreateOptions::dynamic(old).block_size(bs).logical_sector_size(lss);
        opts.disk_type = ty;
        let mut d = create(&img, &opts);
        write_both(&mut d, &model, &pattern(i as u64, 10_000), 0);
        write_both(&mut d, &model, &pattern(i as u64 + 10, 5000), old - 5000);
        d.close().unwrap();
        let mut d = reopen(&img);
        let guid = d.data_write_guid();
        d.resize(new, false).unwrap();
        model.resize(new);
        assert_ne!(d.data_write_guid(), guid, "a resize changes the DataWriteGuid");
        // The new range reads zeros even inside the old last block.
        assert_eq!(read_vec(&d, old - 100, 4196)[100..], vec![0u8; 4096][..]);
        write_both(&mut d, &model, &pattern(i as u64 + 20, 7777), new - 7777);
        write_both(&mut d, &model, &pattern(i as u64 + 30, 3000), old - 1000);
        d.close().unwrap();
        verify(&img, &model);
        let d = Disk::open(&img).unwrap();
        if ty == DiskType::Fixed {
            let g = d.geometry();
            for b in 0..g.payload_blocks {
                assert_eq!(payload_state(&d, b), PayloadState::FullyPresent, "fixed disk block {b}");
            }
            // The grow took the space of the new blocks, and no more: the
            // header section, log, metadata and BAT (1 MiB each), then the blocks.
            let len = std::fs::metadata(&img).unwrap().len();
            assert_eq!(len, 4 * MIB + g.payload_blocks * bs as u64, "a fixed disk of {new} bytes");
        }
    }
}

/// A differencing child shrunk past a block it holds in part, then grown
/// back, reads zeros in the regrown range, not its old sectors and not the
/// parent's data (as a grow reads zeros everywhere); a sector written
/// there afterwards reads back, and the rest of the block stays zero.
#[test]
fn shrink_then_grow_reads_zeros_in_a_differencing_child() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("shrink-base.vhdx");
    let child = tmp.path().join("shrink-child.vhdx");
    let size = 8 * MIB;
    let mut b = create(&base, &CreateOptions::dynamic(size).block_size(MIB as u32));
    let parent = pattern(70, size as usize);
    b.write_at(&parent, 0).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
    c.write_at(&pattern(71, 8 * 512), 6 * MIB).unwrap(); // block 6, sectors 0..8
    c.flush().unwrap();
    c.resize(6 * MIB, true).unwrap();
    c.resize(8 * MIB, false).unwrap();
    assert!(read_vec(&c, 6 * MIB, 2 * MIB as usize).iter().all(|&x| x == 0), "the regrown range");
    let one = pattern(72, 512);
    c.write_at(&one, 6 * MIB + 100 * 512).unwrap();
    c.close().unwrap();
    let c = Disk::open(&child).unwrap();
    let mut expect = vec![0u8; MIB as usize];
    expect[100 * 512..101 * 512].copy_from_slice(&one);
    assert!(read_vec(&c, 6 * MIB, MIB as usize) == expect, "block 6 after the shrink, the grow and one write");
    assert!(read_vec(&c, 0, 6 * MIB as usize) == parent[..6 * MIB as usize], "the rest still reads the parent");
}

/// Growing past what the BAT region holds moves the BAT to a new, larger
/// region at the end of the file, switched in both region table copies;
/// QEMU reads the result.
#[cfg(unix)] // models of 130+ GiB, compared by their data extents (qemu-img map)
#[test]
fn grow_relocates_the_bat() {
    let tmp = tempfile::tempdir().unwrap();
    for ty in [DiskType::Dynamic, DiskType::Fixed] {
        let img = tmp.path().join(format!("{ty}.vhdx"));
        // 1 MiB blocks, 512-byte sectors: a 1 MiB BAT region holds 131072
        // entries (4096 per chunk + 1), about 127.97 GiB.
        let old = if ty == DiskType::Fixed { 127 * GIB } else { 100 * GIB + 512 };
        let new = 130 * GIB + 4096;
        let model = Model::new(tmp.path().join(format!("{ty}.raw")), old);
        let mut opts = CreateOptions::dynamic(old).block_size(MIB as u32);
        opts.disk_type = ty;
        let mut d = create(&img, &opts);
        write_both(&mut d, &model, &pattern(1, 3 * MIB as usize), 5 * MIB - 77);
        write_both(&mut d, &model, &pattern(2, 4096), old - 4096);
        d.flush().unwrap();
        let (old_at, old_len) = bat_region(&d);
        assert_eq!(old_len as u64, MIB);
        let file_before = std::fs::metadata(&img).unwrap().len();
        d.resize(new, false).unwrap();
        model.resize(new);
        let (at, len) = bat_region(&d);
        assert_ne!(at, old_at, "{ty}: the BAT moved");
        assert!(at >= file_before - MIB, "{ty}: the new BAT region is at the end of the file");
        assert_eq!(len as u64, 2 * MIB);
        assert_eq!(at % MIB, 0);
        write_both(&mut d, &model, &pattern(3, 5000), 129 * GIB);
        write_both(&mut d, &model, &pattern(4, 512), new - 512);
        d.close().unwrap();

        // Both region table copies name the new region (our parser of each copy).
        let f = File::open(&img).unwrap();
        for copy in [192 * 1024u64, 256 * 1024] {
            let mut t = vec![0u8; 64 * 1024];
            f.read_exact_at(&mut t, copy).unwrap();
            let table = vhdx::format::region::RegionTable::parse(&t, copy).unwrap();
            assert_eq!((table.bat().file_offset, table.bat().length), (at, len), "copy at {copy:#x}");
        }
        if ty == DiskType::Fixed {
            // The whole disk is too large to compare; QEMU checks the
            // structure and reads the written places.
            let d = Disk::open(&img).unwrap();
            for (off, len) in
                [(5 * MIB - 77, 3 * MIB as usize), (old - 4096, 4096), (129 * GIB, 5000), (new - 512, 512)]
            {
                assert_eq!(read_vec(&d, off, len), model.read_at(off, len));
            }
            assert_eq!(read_vec(&d, old, 1 << 20), vec![0u8; 1 << 20]);
            // Closed before QEMU opens it (read-write): a reader's lock refuses writers.
            drop(d);
            assert!(vhdx::check::check_file(&img).unwrap().is_clean());
            if qemu() {
                qemu_check_clean(&img);
                let out =
                    qemu_io(&img, &[format!("read -P 0 {} 1048576", old), format!("read -P 0 {} 4096", new - 8192)]);
                assert!(out.contains("read 1048576/1048576"), "{out}");
            }
        } else {
            verify(&img, &model);
        }
    }
}

impl Model {
    fn read_at(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.file.read_exact_at(&mut b, at).unwrap();
        b
    }
}

/// Shrinking is refused, with nothing changed, while the removed range holds
/// data; allowed when it holds only zeros (even allocated ones); with
/// `allow_shrink` it discards the data. Growing again afterwards shows
/// zeros, not the discarded bytes, even inside the last block.
#[test]
fn shrink_refused_with_data_allowed_with_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, ty) in [DiskType::Dynamic, DiskType::Fixed].into_iter().enumerate() {
        for lss in [512u32, 4096] {
            let img = tmp.path().join(format!("s{i}-{lss}.vhdx"));
            let size = 64 * MIB;
            let model = Model::new(tmp.path().join(format!("s{i}-{lss}.raw")), size);
            let mut opts = CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(lss);
            opts.disk_type = ty;
            let mut d = create(&img, &opts);
            write_both(&mut d, &model, &pattern(1, 2 * MIB as usize), 10 * MIB + 4096);
            write_both(&mut d, &model, &[0xAB; 100], 40 * MIB + 12345);
            // Allocated zeros near the end.
            write_both(&mut d, &model, &vec![0u8; 2 * MIB as usize], 60 * MIB);
            d.close().unwrap();
            let before = sha256_file(&img);

            let mut d = reopen(&img);
            let e = d.resize(20 * MIB, false).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
            assert!(e.to_string().contains(&format!("{:#x}", 40 * MIB + 12345)), "names the data: {e}");
            drop(d);
            assert_eq!(sha256_file(&img), before, "a refused shrink changes nothing");

            // Only zeros past 41 MiB (allocated in 60..62 MiB): allowed without the flag.
            let mut d = reopen(&img);
            d.resize(41 * MIB, false).unwrap();
            model.resize(41 * MIB);
            d.close().unwrap();
            verify(&img, &model);

            // With the flag, into the middle of a block and of the data.
            let cut = 10 * MIB + 4096 + MIB + 3 * lss as u64;
            let mut d = reopen(&img);
            d.resize(cut, true).unwrap();
            model.resize(cut);
            d.close().unwrap();
            verify(&img, &model);
            let file_len = std::fs::metadata(&img).unwrap().len();
            if ty == DiskType::Fixed {
                // Blocks past the end are given back: the file ends with the last block.
                let d = Disk::open(&img).unwrap();
                let last = (0..d.geometry().payload_blocks)
                    .map(|b| (d.bat_entry(d.geometry().payload_index(b)).unwrap().raw() & !(MIB - 1)) + MIB)
                    .max()
                    .unwrap();
                assert_eq!(file_len, last, "fixed disk file cut after its last block");
            }
            // Growing again: zeros where the discarded data was, also in the partial last block.
            let mut d = reopen(&img);
            d.resize(64 * MIB, false).unwrap();
            model.resize(64 * MIB);
            d.close().unwrap();
            verify(&img, &model);
            // Sizes that are not whole sectors are refused.
            let mut d = reopen(&img);
            assert_eq!(d.resize(64 * MIB + 100, false).unwrap_err().kind(), ErrorKind::InvalidArgument);
            assert_eq!(d.resize(0, true).unwrap_err().kind(), ErrorKind::InvalidArgument);
        }
    }
}

/// A differencing child may grow past its parent: the part past the parent
/// reads zeros, the rest still reads through. Shrinking and growing it
/// again makes the parent's data under the cut read zeros, not resurface.
#[test]
fn differencing_resize() {
    let tmp = tempfile::tempdir().unwrap();
    for lss in [512u32, 4096] {
        let base = tmp.path().join(format!("base{lss}.vhdx"));
        let child = tmp.path().join(format!("child{lss}.vhdx"));
        let size = 32 * MIB;
        let model = Model::new(tmp.path().join(format!("child{lss}.raw")), size);
        let mut b = create(&base, &CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(lss));
        write_both(&mut b, &model, &pattern(1, size as usize), 0);
        b.close().unwrap();
        let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
        write_both(&mut c, &model, &pattern(2, 5000), 3 * MIB + 17);
        c.resize(48 * MIB + lss as u64, false).unwrap();
        model.resize(48 * MIB + lss as u64);
        write_both(&mut c, &model, &pattern(3, 3 * MIB as usize), 31 * MIB);
        c.close().unwrap();
        verify(&child, &model);

        // Shrink into a block of parent data, then grow: zeros from the cut on.
        let mut c = reopen(&child);
        assert_eq!(c.resize(20 * MIB, false).unwrap_err().kind(), ErrorKind::Refused);
        let cut = 20 * MIB + 5 * lss as u64;
        c.resize(cut, true).unwrap();
        model.resize(cut);
        c.close().unwrap();
        verify(&child, &model);
        let mut c = reopen(&child);
        c.resize(40 * MIB, false).unwrap();
        model.resize(40 * MIB);
        c.close().unwrap();
        verify(&child, &model);
        // Across a chunk boundary (2^23 sectors: 4 GiB with 512-byte sectors),
        // where a partial write needs the next chunk's sector bitmap.
        let big = (1u64 << 23) * lss as u64 + 8 * MIB;
        if big <= 8 * GIB {
            let mut c = reopen(&child);
            c.resize(big, false).unwrap();
            model.resize(big);
            write_both(&mut c, &model, &pattern(4, 3 * lss as usize), big - 5 * MIB + 7 * lss as u64);
            c.close().unwrap();
            verify(&child, &model);
        }
        assert_eq!(Disk::open(&base).unwrap().virtual_size(), size, "the parent is untouched");
    }
}

// ------------------------------------------------------------------ discard

/// Discards over dynamic and fixed disks: whole blocks, parts of blocks,
/// ranges crossing blocks and not sector aligned; dynamic whole blocks
/// become UNMAPPED without an offset, fixed ones stay allocated.
#[test]
fn discard_dynamic_and_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    for ty in [DiskType::Dynamic, DiskType::Fixed] {
        for lss in [512u32, 4096] {
            let img = tmp.path().join(format!("d-{ty}-{lss}.vhdx"));
            let size = 24 * MIB;
            let model = Model::new(tmp.path().join(format!("d-{ty}-{lss}.raw")), size);
            let mut opts = CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(lss);
            opts.disk_type = ty;
            let mut d = create(&img, &opts);
            write_both(&mut d, &model, &pattern(7, 20 * MIB as usize), MIB);
            d.flush().unwrap();
            let guid = d.data_write_guid();
            d.close().unwrap();
            let mut d = reopen(&img);
            discard_both(&mut d, &model, 2 * MIB, 3 * MIB); // blocks 2, 3, 4
            discard_both(&mut d, &model, 6 * MIB + 512, 4096); // inside block 6
            discard_both(&mut d, &model, 8 * MIB - 1000, MIB + 2000); // unaligned, across 7..9
            discard_both(&mut d, &model, 12 * MIB + 3, 5); // less than a sector
            discard_both(&mut d, &model, 0, 2 * MIB); // an unwritten and a written block
            discard_both(&mut d, &model, 23 * MIB, MIB); // the last block, never written
            assert_ne!(d.data_write_guid(), guid);
            for b in [0u64, 1, 2, 3, 4, 8] {
                let want = if ty == DiskType::Fixed {
                    PayloadState::FullyPresent
                } else if b == 0 {
                    PayloadState::NotPresent
                } else {
                    PayloadState::Unmapped
                };
                assert_eq!(payload_state(&d, b), want, "{ty} block {b}");
                if want == PayloadState::Unmapped {
                    assert_eq!((d.bat_entry(d.geometry().payload_index(b)).unwrap().raw() & !(MIB - 1)), 0);
                }
            }
            for b in [6u64, 7, 9, 12] {
                assert_eq!(payload_state(&d, b), PayloadState::FullyPresent, "{ty} block {b}");
            }
            // Reads before the flush already see zeros.
            assert_eq!(read_vec(&d, 2 * MIB, 4096), vec![0u8; 4096]);
            d.close().unwrap();
            verify(&img, &model);
            // Out of range and read-only refusals.
            let mut d = reopen(&img);
            assert_eq!(d.discard(size - 512, 1024).unwrap_err().kind(), ErrorKind::OutOfRange);
            drop(d);
            let mut ro = Disk::open(&img).unwrap();
            assert_eq!(ro.discard(0, 512).unwrap_err().kind(), ErrorKind::ReadOnly);
        }
    }
}

/// Discard in a differencing child: the range reads zeros, never the
/// parent's data. Whole blocks become ZERO; a whole block left to a parent
/// that holds nothing there stays NOT_PRESENT; in part of a block the
/// sectors over parent data are zero-written and those over parent zeros
/// lose their bitmap bits.
#[test]
fn discard_differencing() {
    let tmp = tempfile::tempdir().unwrap();
    for lss in [512u32, 4096] {
        let s = lss as u64;
        let base = tmp.path().join(format!("dbase{lss}.vhdx"));
        let child = tmp.path().join(format!("dchild{lss}.vhdx"));
        let size = 16 * MIB;
        let model = Model::new(tmp.path().join(format!("dchild{lss}.raw")), size);
        let mut b = create(&base, &CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(lss));
        // Parent data in blocks 0..8, and 4 KiB in block 12 (past the
        // block-11 discard below, which must look at block 11 alone).
        write_both(&mut b, &model, &pattern(1, 8 * MIB as usize), 0);
        write_both(&mut b, &model, &pattern(6, 4096), 12 * MIB + MIB / 2);
        b.close().unwrap();
        let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
        write_both(&mut c, &model, &pattern(2, MIB as usize), 2 * MIB); // block 2 fully present
        write_both(&mut c, &model, &pattern(3, 8 * s as usize), 4 * MIB + 16 * s); // block 4 partial
        write_both(&mut c, &model, &pattern(4, 8 * s as usize), 9 * MIB + 16 * s); // block 9 partial, parent empty
        c.flush().unwrap();

        discard_both(&mut c, &model, MIB, 2 * MIB); // block 1 (parent data) and block 2 (own data)
        discard_both(&mut c, &model, 0, MIB); // block 0: parent data, the disk's first block
        discard_both(&mut c, &model, 10 * MIB, MIB); // block 10: nothing anywhere
        discard_both(&mut c, &model, 4 * MIB + 12 * s, 8 * s); // over own sectors and parent data
        discard_both(&mut c, &model, 9 * MIB + 16 * s, 4 * s); // own sectors over an empty parent
        discard_both(&mut c, &model, 5 * MIB + 100, 2 * s); // unaligned, parent data, block not present
        discard_both(&mut c, &model, 11 * MIB + 7, 300); // unaligned, nothing anywhere
        assert_eq!(payload_state(&c, 0), PayloadState::Zero);
        assert_eq!(payload_state(&c, 1), PayloadState::Zero);
        assert_eq!(payload_state(&c, 2), PayloadState::Zero);
        assert_eq!((c.bat_entry(c.geometry().payload_index(2)).unwrap().raw() & !(MIB - 1)), 0);
        assert_eq!(payload_state(&c, 10), PayloadState::NotPresent, "nothing to hide");
        assert_eq!(payload_state(&c, 11), PayloadState::NotPresent, "nothing to hide");
        assert_eq!(payload_state(&c, 5), PayloadState::PartiallyPresent, "zeros written over parent data");
        // Block 9: the discarded sectors read from the (empty) parent again.
        let map = c.map().unwrap();
        let at = |o: u64| map.iter().find(|m| m.offset <= o && o < m.offset + m.length).unwrap().extent;
        assert_eq!(at(9 * MIB + 17 * s), vhdx::Extent::Parent);
        assert!(matches!(at(9 * MIB + 21 * s), vhdx::Extent::Data { .. }));
        assert!(matches!(at(4 * MIB + 13 * s), vhdx::Extent::Data { .. }), "zeros over parent data stay in the child");
        c.close().unwrap();
        verify(&child, &model);
        // A partial write into a discarded block keeps the rest zero.
        let mut c = reopen(&child);
        write_both(&mut c, &model, &pattern(5, 700), MIB + 1000);
        c.close().unwrap();
        verify(&child, &model);
    }
}

/// A discard inside a block the child holds in part, whose range covers
/// two blocks of a parent with smaller blocks, one empty and one with
/// data: the range reads zeros afterwards, also where the parent has data
/// (the child must hide it, not let it show through).
#[test]
fn discard_over_a_parent_with_smaller_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("small-blocks.vhdx");
    let child = tmp.path().join("large-blocks.vhdx");
    let size = 8 * MIB;
    let model = Model::new(tmp.path().join("large-blocks.raw"), size);
    let mut b = create(&base, &CreateOptions::dynamic(size).block_size(MIB as u32));
    write_both(&mut b, &model, &pattern(7, MIB as usize), 3 * MIB); // parent block 3; block 2 empty
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(2 * MIB as u32)).unwrap();
    write_both(&mut c, &model, &pattern(8, 512), 2 * MIB); // child block 1 (2..4 MiB) partly present
    assert_eq!(payload_state(&c, 1), PayloadState::PartiallyPresent);
    discard_both(&mut c, &model, 2 * MIB + 4096, MIB + 4096); // parent blocks 2 and 3
    c.close().unwrap();
    verify(&child, &model);
}

// ------------------------------------------------------------------ compact

fn qemu_raw(img: &Path, out: &Path) -> Option<String> {
    if Disk::open(img).unwrap().logical_sector_size() != 512 || !qemu() {
        return None;
    }
    let _ = std::fs::remove_file(out);
    qemu_convert_to_raw(img, out);
    Some(sha256_file(out))
}

/// Compaction gives back the space of discarded and all-zero blocks,
/// moves blocks from the end into the holes and cuts the file; the content
/// is the same for the library and for QEMU (`qemu-img convert` before and
/// after), and both checks are clean.
#[test]
fn compact_dynamic() {
    let tmp = tempfile::tempdir().unwrap();
    for lss in [512u32, 4096] {
        let img = tmp.path().join(format!("c{lss}.vhdx"));
        let size = 64 * MIB;
        let model = Model::new(tmp.path().join(format!("c{lss}.raw")), size);
        let mut d = create(&img, &CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(lss));
        // 40 blocks written in a scattered order, so file order differs from virtual order.
        for i in 0..40u64 {
            let b = (i * 37) % 64;
            write_both(&mut d, &model, &pattern(100 + i, MIB as usize), b * MIB);
        }
        d.flush().unwrap();
        // Zeros written over some (allocated, all-zero), discards over others.
        for b in [0u64, 37, 10] {
            write_both(&mut d, &model, &vec![0u8; MIB as usize], b * MIB);
        }
        for b in [11u64, 48, 22, 59] {
            discard_both(&mut d, &model, b * MIB, MIB);
        }
        discard_both(&mut d, &model, 33 * MIB + 5, 1000);
        d.close().unwrap();
        let raw_before = qemu_raw(&img, &tmp.path().join("before.raw"));
        let before_len = std::fs::metadata(&img).unwrap().len();
        let d = Disk::open(&img).unwrap();
        let live_blocks = d.info().unwrap().allocated_blocks;
        drop(d);

        let report = vhdx::ops::compact::compact(&img).unwrap();
        assert_eq!(report.file_size_before, before_len);
        assert_eq!(report.blocks_released, 3, "the three all-zero blocks");
        assert!(report.structures_moved > 0);
        let after_len = std::fs::metadata(&img).unwrap().len();
        assert_eq!(report.file_size_after, after_len);
        let d = Disk::open(&img).unwrap();
        assert_eq!(d.info().unwrap().allocated_blocks, live_blocks - 3);
        // Packed: header, log, metadata, BAT (1 MiB each after the header section), then the blocks.
        assert_eq!(after_len, 4 * MIB + (live_blocks - 3) * MIB, "no hole is left");
        drop(d);
        verify(&img, &model);
        if let Some(h) = raw_before {
            assert_eq!(qemu_raw(&img, &tmp.path().join("after.raw")), Some(h), "qemu-img convert output changed");
        }
        // A second compaction has nothing to do.
        let again = vhdx::ops::compact::compact(&img).unwrap();
        assert_eq!((again.blocks_released, again.structures_moved), (0, 0));
        assert_eq!(again.file_size_after, after_len);
    }
}

/// A sector-bitmap entry left in a dynamic disk (which has no bitmaps) is
/// never read, and does not hold the file's end either: with 32 MiB blocks
/// (chunk ratio 128) entry 128 is the first chunk's bitmap entry; set to
/// present at 200 MiB, past the end of the file, it does not stop
/// compaction from cutting the file after the last block in use.
#[test]
fn compact_cuts_the_file_whatever_a_stray_bitmap_entry_says() {
    use crate::common::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("stray.vhdx");
    let size = 129 * 32 * MIB;
    let model = Model::new(tmp.path().join("stray.raw"), size);
    let mut d = create(&img, &CreateOptions::dynamic(size).block_size(32 * MIB as u32));
    write_both(&mut d, &model, &pattern(80, 4096), 0);
    write_both(&mut d, &model, &pattern(81, 4096), 2 * 32 * MIB);
    let (bat, _) = bat_region(&d);
    d.close().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&((200 * MIB) | 6).to_le_bytes(), bat + 128 * 8).unwrap();
    drop(f);
    let mut d = reopen(&img);
    discard_both(&mut d, &model, 2 * 32 * MIB, 32 * MIB);
    d.close().unwrap();
    let report = vhdx::ops::compact::compact(&img).unwrap();
    assert_eq!(report.file_size_after, 4 * MIB + 32 * MIB, "{report:?}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 * MIB + 32 * MIB);
    let d = Disk::open(&img).unwrap();
    assert!(read_vec(&d, 0, 4096) == pattern(80, 4096));
}

/// Blocks larger than one 4 MiB copy move whole: with 16 MiB blocks, the
/// last block moves into the hole a discarded first block left, in four
/// copies, and reads back byte for byte (here and through QEMU).
#[test]
fn compact_moves_blocks_larger_than_one_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("big-blocks.vhdx");
    let size = 64 * MIB;
    let model = Model::new(tmp.path().join("big-blocks.raw"), size);
    let mut d = create(&img, &CreateOptions::dynamic(size).block_size(16 * MIB as u32));
    for b in 0..4u64 {
        write_both(&mut d, &model, &pattern(60 + b, 16 * MIB as usize), b * 16 * MIB);
    }
    discard_both(&mut d, &model, 0, 16 * MIB);
    d.close().unwrap();
    let before = std::fs::metadata(&img).unwrap().len();
    let report = vhdx::ops::compact::compact(&img).unwrap();
    assert_eq!((report.structures_moved, report.bytes_moved), (1, 16 * MIB), "{report:?}");
    assert_eq!(report.file_size_after, before - 16 * MIB);
    verify(&img, &model);
    if qemu() {
        let raw = tmp.path().join("big-blocks.qemu.raw");
        qemu_convert_to_raw(&img, &raw);
        assert_files_equal(&raw, &model.path);
    }
}

/// A BAT relocated to the end by a grow moves back down when compaction
/// frees a hole below that fits it; the metadata region stays put. Grown
/// to 600 GiB with 1 MiB blocks, the BAT region is 5 MiB, more than one
/// 4 MiB copy. The report counts every block and region moved.
#[cfg(unix)] // a 600 GiB model, compared by its data extents (qemu-img map)
#[test]
fn compact_moves_a_relocated_bat_down() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("r.vhdx");
    let model = Model::new(tmp.path().join("r.raw"), 100 * GIB);
    let mut d = create(&img, &CreateOptions::dynamic(100 * GIB).block_size(MIB as u32));
    for b in 0..8u64 {
        write_both(&mut d, &model, &pattern(b, MIB as usize), b * GIB);
    }
    d.resize(600 * GIB, false).unwrap();
    model.resize(600 * GIB);
    let (relocated, len) = bat_region(&d);
    assert_eq!(len as u64, 5 * MIB, "the grown BAT region");
    assert_eq!(relocated, 12 * MIB, "after the header section, log, metadata, old BAT and 8 blocks");
    write_both(&mut d, &model, &pattern(99, 4096), 599 * GIB);
    for b in 0..6u64 {
        discard_both(&mut d, &model, b * GIB, MIB);
    }
    d.close().unwrap();
    let report = vhdx::ops::compact::compact(&img).unwrap();
    let d = Disk::open(&img).unwrap();
    let (at, len) = bat_region(&d);
    assert!(at < relocated, "the BAT moved down ({at:#x} < {relocated:#x})");
    assert_eq!(len as u64, 5 * MIB);
    assert_eq!(report.file_size_after, 3 * MIB + 5 * MIB + 3 * MIB, "header, log, metadata, 5 MiB BAT, 3 blocks");
    // Moved: the block at 17 MiB into the old BAT's place (3 MiB), the BAT
    // to 4 MiB, the block at 11 MiB into the MiB left at 9; the block at
    // 10 MiB stays.
    assert_eq!((report.structures_moved, report.bytes_moved), (3, 7 * MIB), "{report:?}");
    drop(d);
    verify(&img, &model);
}

/// Compacting a differencing child keeps what it presents, and its
/// DataWriteGuid (so its own children stay linked); all-zero blocks become
/// ZERO (parent data below) or NOT_PRESENT (nothing below); a fixed disk is
/// refused.
#[test]
fn compact_differencing_and_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.vhdx");
    let child = tmp.path().join("child.vhdx");
    let grandchild = tmp.path().join("grandchild.vhdx");
    let size = 16 * MIB;
    let model = Model::new(tmp.path().join("child.raw"), size);
    let mut b = create(&base, &CreateOptions::dynamic(size).block_size(MIB as u32));
    write_both(&mut b, &model, &pattern(1, 4 * MIB as usize), 0);
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
    for blk in [1u64, 3, 6, 8, 12] {
        write_both(&mut c, &model, &pattern(blk, MIB as usize), blk * MIB);
    }
    write_both(&mut c, &model, &vec![0u8; MIB as usize], 2 * MIB); // zeros over parent data
    write_both(&mut c, &model, &vec![0u8; MIB as usize], 9 * MIB); // zeros over nothing
    write_both(&mut c, &model, &pattern(20, 4096), 14 * MIB + 8192); // partial
    discard_both(&mut c, &model, 6 * MIB, MIB);
    c.close().unwrap();
    Disk::create_differencing(&grandchild, &child, None).unwrap().close().unwrap();
    let guid = Disk::open(&child).unwrap().data_write_guid();
    let report = vhdx::ops::compact::compact(&child).unwrap();
    assert_eq!(report.blocks_released, 2);
    assert!(report.file_size_after < report.file_size_before);
    let c = Disk::open(&child).unwrap();
    assert_eq!(c.data_write_guid(), guid, "compaction does not change what the disk presents");
    assert_eq!(payload_state(&c, 2), PayloadState::Zero);
    assert_eq!(payload_state(&c, 9), PayloadState::NotPresent);
    drop(c);
    verify(&child, &model);
    Disk::open(&grandchild).expect("the grandchild still links to its compacted parent");

    let fixed = tmp.path().join("fixed.vhdx");
    create(&fixed, &CreateOptions::fixed(8 * MIB).block_size(MIB as u32)).close().unwrap();
    let e = vhdx::ops::compact::compact(&fixed).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("fixed.vhdx"), "{e}");
}

// ------------------------------------------------------------------ convert

/// Bytes of `path` backed by space (holes are Unix's to count here).
#[cfg(unix)]
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Fixed ↔ dynamic, a chain flattened, raw ↔ VHDX: every output presents
/// the source's bytes (library and QEMU), zeros stay sparse (no dynamic
/// block for zeros, holes in raw output), and the types are what was asked.
#[test]
fn convert_between_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let size = 40 * MIB;
    let model = Model::new(p("model.raw"), size);
    let mut d = create(&p("dyn.vhdx"), &CreateOptions::dynamic(size).block_size(MIB as u32));
    write_both(&mut d, &model, &pattern(1, 3 * MIB as usize), 5 * MIB + 3);
    write_both(&mut d, &model, &vec![0u8; 2 * MIB as usize], 20 * MIB); // allocated zeros
    write_both(&mut d, &model, &pattern(2, 512), size - 512);
    d.close().unwrap();

    let fixed = ConvertOptions::default().disk_type(DiskType::Fixed).block_size(Some(2 * MIB as u32));
    let r = convert(&p("dyn.vhdx"), &p("fixed.vhdx"), &fixed).unwrap();
    assert_eq!((r.output_type, r.bytes_written), (Some(DiskType::Fixed), 3 * MIB + 4096 + 4096));
    verify(&p("fixed.vhdx"), &model);
    assert_eq!(Disk::open(p("fixed.vhdx")).unwrap().disk_type(), DiskType::Fixed);

    convert(&p("fixed.vhdx"), &p("dyn2.vhdx"), &ConvertOptions::default()).unwrap();
    verify(&p("dyn2.vhdx"), &model);
    let d2 = Disk::open(p("dyn2.vhdx")).unwrap();
    assert_eq!(
        (d2.disk_type(), d2.info().unwrap().allocated_blocks),
        (DiskType::Dynamic, 2),
        "32 MiB blocks, zeros left out"
    );
    drop(d2);

    // A chain flattened into a standalone dynamic disk with 4096-byte sectors.
    let mut c = Disk::create_differencing(p("child.vhdx"), p("dyn.vhdx"), Some(MIB as u32)).unwrap();
    write_both(&mut c, &model, &pattern(3, 10_000), 7 * MIB + 5000);
    discard_both(&mut c, &model, 5 * MIB, MIB);
    c.close().unwrap();
    let flat = ConvertOptions::default().logical_sector_size(Some(4096));
    convert(&p("child.vhdx"), &p("flat.vhdx"), &flat).unwrap();
    let f = Disk::open(p("flat.vhdx")).unwrap();
    assert_eq!((f.disk_type(), f.parent().is_none(), f.logical_sector_size()), (DiskType::Dynamic, true, 4096));
    drop(f);
    verify(&p("flat.vhdx"), &model);

    // VHDX → raw: sparse; raw → VHDX.
    let r = convert(&p("child.vhdx"), &p("flat.img"), &ConvertOptions::default()).unwrap();
    assert_eq!(r.output_format, ImageFormat::Raw);
    assert_eq!(std::fs::read(p("flat.img")).unwrap(), std::fs::read(&model.path).unwrap());
    #[cfg(unix)]
    assert!(allocated_bytes(&p("flat.img")) < 4 * MIB, "raw output is sparse: {}", allocated_bytes(&p("flat.img")));
    convert(&p("flat.img"), &p("back.vhdx"), &ConvertOptions::default()).unwrap();
    verify(&p("back.vhdx"), &model);
    // Without the final flushes (qemu-img's default): the same content.
    let unsynced = ConvertOptions::default().sync(false);
    convert(&p("child.vhdx"), &p("nosync.img"), &unsynced).unwrap();
    assert_eq!(std::fs::read(p("nosync.img")).unwrap(), std::fs::read(&model.path).unwrap());
    convert(&p("nosync.img"), &p("nosync.vhdx"), &unsynced).unwrap();
    verify(&p("nosync.vhdx"), &model);
    // Refusals: an existing output, VHDX options for raw output.
    let e = convert(&p("flat.img"), &p("back.vhdx"), &ConvertOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(Disk::open(p("back.vhdx")).is_ok(), "an existing output is left alone");
    assert!(convert(&p("dyn.vhdx"), &p("x.raw"), &fixed).is_err());
    // Each VHDX-only option alone is refused for a raw output, naming them.
    for (what, o) in [
        ("block size", ConvertOptions::default().block_size(Some(1 << 20))),
        ("logical sector size", ConvertOptions::default().logical_sector_size(Some(512))),
        ("physical sector size", ConvertOptions::default().physical_sector_size(Some(4096))),
    ] {
        let e = convert(&p("dyn.vhdx"), &p("x.raw"), &o).expect_err(what);
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {e}");
        assert!(e.to_string().contains("apply only to a VHDX"), "{what}: {e}");
    }
    assert!(!p("x.raw").exists());
}

/// The raw output's parallel, direct-I/O copy, against `qemu-img convert`
/// reading the same source: byte-identical for a dynamic image mixing full,
/// partly zero, allocated all-zero, discarded and unallocated blocks, runs
/// across the copy's 4 MiB chunks and a size that is not whole 4 KiB pages;
/// and for a differencing child over it (QEMU has no differencing VHDX:
/// its conversion of the parent, patched with the child's writes, is the
/// oracle), whose own blocks and sectors, and discards, hide the parent's
/// stale bytes. Synced and unsynced alike; zeros stay holes.
#[test]
fn convert_to_raw_matches_qemu_for_mixed_blocks_and_a_child() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let size = 40 * MIB + 3 * 512;
    let model = Model::new(p("model.raw"), size);
    let mut d = create(&p("mixed.vhdx"), &CreateOptions::dynamic(size).block_size(MIB as u32));
    write_both(&mut d, &model, &pattern(11, MIB as usize), 0); // a full block
    write_both(&mut d, &model, &vec![0u8; MIB as usize], 2 * MIB); // allocated zeros
    write_both(&mut d, &model, &pattern(12, 5000), 3 * MIB + 1234); // mostly zero grains
    for grain in (0..MIB).step_by(8192) {
        write_both(&mut d, &model, &pattern(13 + grain, 4096), 5 * MIB + grain);
        // every other grain
    }
    write_both(&mut d, &model, &pattern(14, 20_000), 8 * MIB - 10_000); // across a chunk
    write_both(&mut d, &model, &pattern(15, 9 * MIB as usize), 12 * MIB); // several chunks
    write_both(&mut d, &model, &pattern(16, MIB as usize), 30 * MIB);
    discard_both(&mut d, &model, 30 * MIB, MIB); // a zero block
    write_both(&mut d, &model, &pattern(17, 512), size - 512); // the unaligned end
    d.close().unwrap();
    let expected = std::fs::read(&model.path).unwrap();

    let qemu_raw = p("qemu.raw");
    let have_qemu = qemu();
    if have_qemu {
        qemu_convert_to_raw(&p("mixed.vhdx"), &qemu_raw);
        assert!(std::fs::read(&qemu_raw).unwrap() == expected, "QEMU reads the source as the model");
    }
    for (name, sync) in [("mixed.raw", true), ("mixed-nosync.raw", false)] {
        let r = convert(&p("mixed.vhdx"), &p(name), &ConvertOptions::default().sync(sync)).unwrap();
        assert_eq!(r.output_format, ImageFormat::Raw);
        let ours = std::fs::read(p(name)).unwrap();
        assert_eq!(ours.len() as u64, size, "{name}: the size");
        if have_qemu {
            assert!(ours == std::fs::read(&qemu_raw).unwrap(), "{name}: other bytes than qemu-img's");
        }
        assert!(ours == expected, "{name}: other bytes than the model");
        #[cfg(unix)]
        assert!(allocated_bytes(&p(name)) < 16 * MIB, "{name}: zeros stay holes: {}", allocated_bytes(&p(name)));
    }

    // A child: a whole block over the parent's data (the parent's copy is
    // stale), sectors over a parent block (the rest is the parent's), a
    // discard over parent data (zeros, not the parent's bytes), a block the
    // parent does not have.
    let oracle = Model::new(p("oracle.raw"), size);
    if have_qemu {
        oracle.write(&std::fs::read(&qemu_raw).unwrap(), 0);
    } else {
        oracle.write(&expected, 0);
    }
    let mut c = Disk::create_differencing(p("child.vhdx"), p("mixed.vhdx"), Some(MIB as u32)).unwrap();
    let both = |c: &mut Disk, data: &[u8], at: u64| {
        write_both(c, &model, data, at);
        oracle.write(data, at);
    };
    both(&mut c, &pattern(21, MIB as usize), 13 * MIB);
    both(&mut c, &pattern(22, 1024), 512 * 3);
    both(&mut c, &pattern(23, 512), 5 * MIB + 4096 + 512);
    both(&mut c, &pattern(24, 3 * MIB as usize), 35 * MIB);
    discard_both(&mut c, &model, 15 * MIB, 2 * MIB);
    oracle.zero(15 * MIB, 2 * MIB);
    c.close().unwrap();
    let expected = std::fs::read(&oracle.path).unwrap();
    assert!(std::fs::read(&model.path).unwrap() == expected, "the test's two models agree");
    for (name, sync) in [("child.raw", true), ("child-nosync.raw", false)] {
        convert(&p("child.vhdx"), &p(name), &ConvertOptions::default().sync(sync)).unwrap();
        assert!(std::fs::read(p(name)).unwrap() == expected, "{name}: other bytes than the oracle");
    }
}

/// `copy_nonzero` into storage in memory (the `no_std`-friendly core).
#[test]
fn copy_nonzero_between_disks_in_memory() {
    let opts = CreateOptions::dynamic(16 * MIB).block_size(MIB as u32);
    let mut a = Disk::create_on(Box::new(vhdx::MemStorage::new()), &opts, None).unwrap();
    a.write_at(&pattern(1, 100), 3 * MIB).unwrap();
    a.write_at(&vec![0u8; 2 * MIB as usize], 8 * MIB).unwrap();
    let mut b = Disk::create_on(Box::new(vhdx::MemStorage::new()), &opts, None).unwrap();
    let n = vhdx::ops::convert::copy_nonzero(&a, &mut b, &mut |_, _| {}).unwrap();
    assert_eq!(n, 4096);
    assert_eq!(read_vec(&b, 3 * MIB, 100), pattern(1, 100));
    assert_eq!(b.info().unwrap().allocated_blocks, 1);
    let small = Disk::create_on(Box::new(vhdx::MemStorage::new()), &CreateOptions::dynamic(MIB), None).unwrap();
    assert!(vhdx::ops::convert::copy_nonzero(&small, &mut b, &mut |_, _| {}).is_err());
    let _ = OpenOptions::new();
}

/// `copy_nonzero` from a device that is not a `Disk`: a slice of bytes in
/// memory with 512-byte sectors, which knows nothing of where its data is
/// (the trait's default `data_ranges`, the whole device). Every 4 KiB grain
/// is read and only the non-zero ones are written: the copy allocates only
/// the blocks holding data, and QEMU reads the image back as the bytes.
#[test]
fn copy_nonzero_from_a_device_that_is_not_a_disk() {
    struct Bytes(Vec<u8>);
    impl vhdx::BlockDevice for Bytes {
        fn sector_size(&self) -> u32 {
            512
        }
        fn sector_count(&self) -> u64 {
            self.0.len() as u64 / 512
        }
        fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> vhdx::Result<()> {
            let at = lba as usize * 512;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
        fn write_sectors(&mut self, _: u64, _: &[u8]) -> vhdx::Result<()> {
            panic!("the source is only read")
        }
        fn flush(&mut self) -> vhdx::Result<()> {
            Ok(())
        }
    }
    let mut bytes = vec![0u8; 16 * MIB as usize];
    bytes[3 * MIB as usize + 5..3 * MIB as usize + 105].copy_from_slice(&pattern(2, 100));
    bytes[(15 * MIB) as usize..].copy_from_slice(&pattern(3, MIB as usize));
    let src = Bytes(bytes);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("copy.vhdx");
    let mut dst = Disk::create(&path, &CreateOptions::dynamic(16 * MIB).block_size(MIB as u32)).unwrap();
    let n = vhdx::ops::convert::copy_nonzero(&src, &mut dst, &mut |_, _| {}).unwrap();
    assert_eq!(n, 4096 + MIB, "one grain of the first run, all of the last MiB");
    assert_eq!(dst.info().unwrap().allocated_blocks, 2);
    dst.close().unwrap();
    if qemu() {
        let raw = tmp.path().join("copy.raw");
        qemu_convert_to_raw(&path, &raw);
        assert!(std::fs::read(&raw).unwrap() == src.0, "QEMU reads other bytes");
    }
}

/// A raw file as a `RawDevice`: copied into a dynamic VHDX by
/// `copy_nonzero` (only blocks with data allocated), which `qemu-img
/// compare` finds identical to the raw file; written through at unaligned
/// offsets (the file's bytes change exactly there); refused when its size
/// is not whole sectors, and for writes when opened read-only.
#[test]
fn a_raw_file_as_a_device() {
    use vhdx::{BlockDevice, FileStorage, RawDevice};
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("src.raw");
    let mut bytes = vec![0u8; 24 * MIB as usize];
    bytes[5 * MIB as usize + 3..5 * MIB as usize + 3000].copy_from_slice(&pattern(5, 2997));
    bytes[(23 * MIB) as usize..].copy_from_slice(&pattern(6, MIB as usize));
    std::fs::write(&raw, &bytes).unwrap();
    let device = RawDevice::new(Box::new(FileStorage::open(&raw, false).unwrap()), false).unwrap();
    assert_eq!(device.capacity(), 24 * MIB);
    let out = tmp.path().join("out.vhdx");
    let mut disk = Disk::create(&out, &CreateOptions::dynamic(24 * MIB).block_size(MIB as u32)).unwrap();
    vhdx::ops::convert::copy_nonzero(&device, &mut disk, &mut |_, _| {}).unwrap();
    assert_eq!(disk.info().unwrap().allocated_blocks, 2);
    disk.close().unwrap();
    if qemu() {
        qemu_img(&["compare", "-f", "raw", "-F", "vhdx", raw.to_str().unwrap(), out.to_str().unwrap()]);
    }
    let mut ro = device;
    assert_eq!(ro.write_at(&[1], 0).unwrap_err().kind(), ErrorKind::ReadOnly);
    drop(ro);

    let mut rw = RawDevice::new(Box::new(FileStorage::open(&raw, true).unwrap()), true).unwrap();
    rw.write_at(&pattern(7, 1000), 12345).unwrap();
    rw.flush().unwrap();
    assert!(rw.write_at(&[0; 2], 24 * MIB - 1).is_err(), "a write past the end");
    drop(rw);
    bytes[12345..13345].copy_from_slice(&pattern(7, 1000));
    assert!(std::fs::read(&raw).unwrap() == bytes);

    let odd = tmp.path().join("odd.raw");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let e = RawDevice::new(Box::new(FileStorage::open(&odd, false).unwrap()), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

/// A child grown past its parent cannot be merged into it as it is: the
/// merge is refused before anything changes (convert makes a standalone
/// copy instead).
#[test]
fn merge_refuses_a_resized_child() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.vhdx");
    let child = tmp.path().join("child.vhdx");
    let mut b = create(&base, &CreateOptions::dynamic(8 * MIB).block_size(MIB as u32));
    b.write_at(&pattern(1, 4096), 0).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
    c.write_at(&pattern(2, 4096), 8192).unwrap();
    c.resize(12 * MIB, false).unwrap();
    c.close().unwrap();
    let (b_before, c_before) = (sha256_file(&base), sha256_file(&child));
    let options = vhdx::ops::merge::MergeOptions::default().depth(1);
    let e = vhdx::ops::merge::merge(&child, &options).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("convert"), "{e}");
    assert_eq!((sha256_file(&base), sha256_file(&child)), (b_before, c_before), "nothing changed");
    let flat = tmp.path().join("flat.vhdx");
    convert(&child, &flat, &ConvertOptions::default()).unwrap();
    let f = Disk::open(&flat).unwrap();
    assert_eq!(f.virtual_size(), 12 * MIB);
    assert_eq!(read_vec(&f, 0, 4096), pattern(1, 4096));
    assert_eq!(read_vec(&f, 8192, 4096), pattern(2, 4096));
    assert_eq!(read_vec(&f, 8 * MIB, 4096), vec![0u8; 4096]);
}
