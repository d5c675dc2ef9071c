//! A full filesystem leaves no trace (issue 12, finding 7).
//!
//! The images live on [`FaultStorage`], which keeps track of the space a
//! sparse file holds and can fill the filesystem at any operation
//! ([`FaultStorage::fill_after`]): from then on every write or `allocate`
//! needing new space fails with ENOSPC (a write first stores what fits),
//! while everything else works. The oracle is a plain byte array built from
//! the test's own writes (and, for differencing disks, the parent's bytes),
//! plus the format's rule of which bytes a call may overwrite in place.
//!
//! - Allocating writes into dynamic and differencing disks, the filesystem
//!   filled before each of their storage operations in turn (and before
//!   the flush that follows): after the error the same handle, the file
//!   reopened, and the file after further writes once space returns all
//!   present exactly the model; `check` is clean.
//! - Discard, compact and resize on a full filesystem fail (or succeed
//!   without new space) leaving what the disk presents unchanged; a grow
//!   whose larger BAT region does not fit leaves the file byte-identical.
//! - The log region is backed by real space at create and at a writable
//!   open — also of an image `qemu-img create` made with a sparse log.

use vhdx::IoErrorKind as IoKind;

use vhdx::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
use vhdx::io::FaultStorage;
use vhdx::Guid;
use vhdx::{CreateOptions, Disk, ErrorKind, GuidSource, MemStorage, OpenOptions, Storage};

use crate::common::{
    data::pattern,
    qemu::{qemu, qemu_img},
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
const SECTOR: u64 = 512;

fn guids(seed: u64) -> GuidSource {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        Guid::from_u128(((seed as u128) << 64) | n as u128)
    })
}

/// An image under test: its storage, the open disk, the model of what it
/// presents, and per sector whether the file stores it itself (a write there
/// goes in place, so a failed call may leave new bytes there).
struct Subject {
    handle: FaultStorage,
    disk: Disk,
    model: Vec<u8>,
    stored: Vec<bool>,
    parent: Option<Vec<u8>>,
}

impl Subject {
    fn dynamic() -> Subject {
        let handle = FaultStorage::new();
        let opts = CreateOptions::dynamic(SIZE).block_size(MIB as u32);
        let disk = Disk::create_on(Box::new(handle.clone()), &opts, Some(guids(1))).unwrap();
        let mut s = Subject {
            handle,
            disk,
            model: vec![0; SIZE as usize],
            stored: vec![false; (SIZE / SECTOR) as usize],
            parent: None,
        };
        s.write(&pattern(1, 5000), 2 * MIB + 100).unwrap();
        s.write(&pattern(2, MIB as usize), 5 * MIB).unwrap();
        s.disk.flush().unwrap();
        s
    }

    /// A parent full of data (so a child block hiding it shows), and a child
    /// on fault storage with a partially and a fully present block, unless
    /// `fresh` (then the child holds nothing, not even a sector bitmap).
    fn differencing(fresh: bool) -> Subject {
        let opts = CreateOptions::dynamic(SIZE).block_size(MIB as u32);
        let mut p = Disk::create_on(Box::new(MemStorage::new()), &opts, Some(guids(2))).unwrap();
        let parent_bytes = pattern(3, SIZE as usize);
        p.write_at(&parent_bytes, 0).unwrap();
        let parent_image = p.into_storage().unwrap();
        let mut image = vec![0u8; parent_image.len().unwrap() as usize];
        parent_image.read_exact_at(&mut image, 0).unwrap();
        let handle = FaultStorage::new();
        let parent = Disk::open_storage(Box::new(MemStorage::from_vec(image.clone()))).unwrap();
        let mut locator = ParentLocator { entries: Vec::new() };
        locator.set(PARENT_LINKAGE, braced_guid(&parent.data_write_guid()));
        locator.set(RELATIVE_PATH, String::from(r".\parent.vhdx"));
        let disk =
            Disk::create_differencing_on(Box::new(handle.clone()), parent, locator, Some(MIB as u32), Some(guids(4)))
                .unwrap();
        let mut s = Subject {
            handle,
            disk,
            model: parent_bytes,
            stored: vec![false; (SIZE / SECTOR) as usize],
            parent: Some(image),
        };
        if !fresh {
            s.write(&pattern(5, 8 * SECTOR as usize), 2 * MIB + 8 * SECTOR).unwrap();
            s.write(&pattern(6, MIB as usize), 7 * MIB).unwrap();
        }
        s.disk.flush().unwrap();
        s
    }

    /// Writes through the disk; on success, into the model too.
    fn write(&mut self, data: &[u8], at: u64) -> vhdx::Result<()> {
        self.disk.write_at(data, at)?;
        self.apply(data, at);
        Ok(())
    }

    /// The model after a successful write: the bytes, and which sectors the
    /// file now stores (the format's rules: a dynamic disk stores whole
    /// blocks; a differencing disk whole blocks when written whole or already
    /// fully present, else the sectors written).
    fn apply(&mut self, data: &[u8], at: u64) {
        self.model[at as usize..at as usize + data.len()].copy_from_slice(data);
        let (spb, end) = (MIB / SECTOR, at + data.len() as u64);
        let mut pos = at;
        while pos < end {
            let block = pos / MIB;
            let hi = end.min((block + 1) * MIB);
            let sectors = &mut self.stored[(block * spb) as usize..((block + 1) * spb) as usize];
            let whole = pos == block * MIB && hi == (block + 1) * MIB;
            if self.parent.is_none() || whole || sectors.iter().all(|&s| s) {
                sectors.fill(true);
            } else {
                let (lo_s, hi_s) = ((pos - block * MIB) / SECTOR, (hi - block * MIB).div_ceil(SECTOR));
                sectors[lo_s as usize..hi_s as usize].fill(true);
            }
            pos = hi;
        }
    }

    fn reopen(&self) -> Disk {
        let storage = Box::new(MemStorage::from_vec(self.handle.volatile()));
        match &self.parent {
            Some(p) => {
                let parent = Disk::open_storage(Box::new(MemStorage::from_vec(p.clone()))).unwrap();
                OpenOptions::new().parent(parent).open_storage(storage).unwrap()
            }
            None => Disk::open_storage(storage).unwrap(),
        }
    }

    fn assert_clean(&self) {
        let report = vhdx::check::check_storage(Box::new(MemStorage::from_vec(self.handle.volatile()))).unwrap();
        assert!(report.is_clean(), "check: {:?}", report.errors);
    }
}

/// Asserts `disk` presents `model`, except that bytes of `range` in
/// sectors `stored` may hold `new` instead (overwritten in place).
fn assert_presents(disk: &Disk, model: &[u8], relaxed: Option<(&[u8], u64, &[bool])>, what: &str) {
    let mut got = vec![0u8; model.len()];
    disk.read_at(&mut got, 0).unwrap();
    for (i, (&g, &m)) in got.iter().zip(model).enumerate() {
        if g == m {
            continue;
        }
        if let Some((new, at, stored)) = relaxed {
            let i = i as u64;
            if i >= at && i < at + new.len() as u64 && stored[(i / SECTOR) as usize] && g == new[(i - at) as usize] {
                continue;
            }
        }
        panic!("{what}: byte {i:#x} reads {g:#04x}, the model has {m:#04x}");
    }
}

/// Runs `write` on a fresh subject with the filesystem filled after each of
/// its storage operations in turn, and after it (then the flush fails),
/// checking the image after each failure, and after space returns.
fn fill_at_every_operation(name: &str, make: &dyn Fn() -> Subject, data: &[u8], at: u64) {
    let mut s = make();
    let before = s.handle.mutating_ops();
    s.write(data, at).unwrap();
    let ops = s.handle.mutating_ops() - before;
    assert!(ops > 0);
    let mut failures = 0;
    for k in 0..=ops + 1 {
        let what = format!("{name}, full after {k} of {ops} operations");
        let mut s = make();
        let (old, stored) = (s.model.clone(), s.stored.clone());
        let (log_entries, file_before) = (s.disk.log_entries_written(), s.handle.volatile());
        s.handle.fill_after(Some(s.handle.mutating_ops() + k));
        match s.write(data, at) {
            Err(e) => {
                failures += 1;
                assert_eq!(e.kind(), ErrorKind::Io, "{what}: {e}");
                assert!(e.to_string().contains("no space"), "{what}: {e}");
                // The same handle, a flush while still full (nothing to
                // commit), and the file reopened: as before the call.
                assert_presents(&s.disk, &old, Some((data, at, &stored)), &what);
                // What it overwrote in place is the model from now on.
                s.disk.read_at(&mut s.model, 0).unwrap();
                s.disk.flush().unwrap_or_else(|e| panic!("{what}: flush after the failed write: {e}"));
                assert_presents(&s.reopen(), &old, Some((data, at, &stored)), &format!("{what}, reopened"));
                s.assert_clean();
                if !stored[(at / SECTOR) as usize..(at + data.len() as u64).div_ceil(SECTOR) as usize].contains(&true) {
                    // Nothing overwritten in place: not a byte of the file
                    // changed but the headers' GUIDs (and nothing logged).
                    assert_eq!(s.disk.log_entries_written(), log_entries, "{what}: logged");
                    let after = s.handle.volatile();
                    assert_eq!(after.len(), file_before.len(), "{what}: the file's length changed");
                    let diff = after.iter().zip(&file_before).position(|(a, b)| a != b);
                    assert!(diff.is_none_or(|i| i < MIB as usize), "{what}: file byte {diff:?} changed");
                }
            }
            Ok(()) => {
                // The write fitted; the flush needs no new space but for BAT
                // pages, which it allocates before logging anything.
                let entries = s.disk.log_entries_written();
                if let Err(e) = s.disk.flush() {
                    failures += 1;
                    assert!(e.to_string().contains("no space"), "{what}: flush: {e}");
                    assert_eq!(s.disk.log_entries_written(), entries, "{what}: a failed flush logged");
                    assert_presents(&s.disk, &s.model, None, &what);
                    assert_presents(&s.reopen(), &old, None, &format!("{what}, reopened after the failed flush"));
                    s.assert_clean();
                }
            }
        }
        // Space returns: the disk goes on working.
        s.handle.fill_after(None);
        s.write(&pattern(99, 3000), 11 * MIB + 1000).unwrap();
        s.disk.flush().unwrap();
        assert_presents(&s.disk, &s.model, None, &format!("{what}, space back"));
        assert_presents(&s.reopen(), &s.model, None, &format!("{what}, space back, reopened"));
        s.assert_clean();
    }
    assert!(failures > 0, "{name}: the filled filesystem never failed the write");
}

#[test]
fn allocating_writes_to_a_dynamic_disk_leave_no_trace() {
    let make = &Subject::dynamic;
    fill_at_every_operation("one new block", make, &pattern(10, 4096), 9 * MIB);
    fill_at_every_operation("two new blocks", make, &pattern(11, MIB as usize + 8192), 12 * MIB - 4096);
    fill_at_every_operation("into a present block and a new one", make, &pattern(12, 8192), 6 * MIB - 4096);
    fill_at_every_operation("a sub-sector write", make, &pattern(13, 100), 14 * MIB + 7);
}

#[test]
fn allocating_writes_to_a_differencing_disk_leave_no_trace() {
    let make = &|| Subject::differencing(false);
    fill_at_every_operation("a new partial block", make, &pattern(20, 4096), 9 * MIB + 512);
    fill_at_every_operation("a sub-sector write", make, &pattern(21, 100), 3 * MIB + 7);
    fill_at_every_operation("a partial block written whole", make, &pattern(22, MIB as usize), 2 * MIB);
    fill_at_every_operation("a present block and a new one", make, &pattern(23, 8192), 8 * MIB - 4096);
    fill_at_every_operation("three blocks", make, &pattern(24, 2 * MIB as usize + 1024), 12 * MIB - 512);
    let fresh = &|| Subject::differencing(true);
    fill_at_every_operation("the first partial write (a new sector bitmap)", fresh, &pattern(25, 1024), 5 * MIB);
}

/// A write that fails on a full filesystem while the sector bitmap page it
/// changes holds another write's bits, not yet committed: the failed
/// write's bits are taken back byte by byte and the earlier write's kept,
/// before and after a flush and a reopen. (The page was not loaded by the
/// failed write, so it is not simply dropped.)
#[test]
fn a_failed_write_takes_back_its_bits_in_a_pending_bitmap_page() {
    let pending = || {
        let mut s = Subject::differencing(false);
        s.write(&pattern(26, 4096), 9 * MIB + 512).unwrap();
        s
    };
    for (name, data, at) in [
        ("a new block beside the pending one", pattern(27, 2048), 10 * MIB + 1024),
        ("the pending block again", pattern(28, 1536), 9 * MIB + 8192),
        ("from the pending block into a new one", pattern(29, 4096), 10 * MIB - 1024),
    ] {
        let mut s = pending();
        let before = s.handle.mutating_ops();
        s.write(&data, at).unwrap();
        let ops = s.handle.mutating_ops() - before;
        let mut failures = 0;
        for k in 0..ops {
            let what = format!("{name}, full after {k} of {ops} operations");
            let mut s = pending();
            let (old, stored) = (s.model.clone(), s.stored.clone());
            s.handle.fill_after(Some(s.handle.mutating_ops() + k));
            if s.write(&data, at).is_ok() {
                continue;
            }
            failures += 1;
            let relaxed = Some((&data[..], at, &stored[..]));
            assert_presents(&s.disk, &old, relaxed, &what);
            s.handle.fill_after(None);
            s.disk.flush().unwrap_or_else(|e| panic!("{what}: flush once space is back: {e}"));
            s.disk.read_at(&mut s.model, 0).unwrap();
            assert_presents(&s.reopen(), &old, relaxed, &format!("{what}, reopened"));
            s.assert_clean();
        }
        assert!(failures > 0, "{name}: the full filesystem never failed the write");
    }
}

/// A new sector bitmap block is backed by real space at once: applying its
/// pages from the log later never needs space.
#[test]
fn a_new_sector_bitmap_block_is_allocated() {
    let mut s = Subject::differencing(true);
    s.write(&pattern(30, 512), 4 * MIB).unwrap();
    let sb = s.disk.bat_entry(s.disk.geometry().chunk_ratio as usize).unwrap().raw();
    assert_eq!(sb & 7, 6, "the chunk has a sector bitmap block");
    let at = sb & !(MIB - 1);
    assert!(s.handle.is_allocated(at, MIB), "the sector bitmap block at {at:#x} is a hole");
}

/// A discard that needs space (zeros over the parent's data in part of a
/// block) on a full filesystem fails and takes back what it changed.
#[test]
fn a_discard_on_a_full_filesystem_changes_nothing() {
    let mut s = Subject::differencing(false);
    let (old, len) = (s.model.clone(), s.handle.volatile().len());
    s.handle.fill_after(Some(0));
    let e = s.disk.discard(10 * MIB + 4096, 3 * MIB).unwrap_err();
    assert!(e.to_string().contains("no space"), "{e}");
    assert_eq!(s.handle.volatile().len(), len, "the space taken for the discard was not given back");
    assert_presents(&s.disk, &old, None, "after the failed discard");
    s.disk.flush().unwrap();
    assert_presents(&s.reopen(), &old, None, "reopened");
    s.assert_clean();
    s.handle.fill_after(None);
    s.disk.discard(10 * MIB + 4096, 3 * MIB).unwrap();
    s.model[(10 * MIB + 4096) as usize..(13 * MIB + 4096) as usize].fill(0);
    s.disk.flush().unwrap();
    assert_presents(&s.reopen(), &s.model, None, "discarded once space returned");
}

/// Compaction on a full filesystem: moving a block into a hole of the file
/// that holds no space fails before that move is logged; the image presents
/// the same, keeps its DataWriteGuid, and compacts once space returns.
#[test]
fn compact_on_a_full_filesystem_changes_nothing_it_presents() {
    let handle = FaultStorage::new();
    let opts = CreateOptions::dynamic(SIZE).block_size(MIB as u32);
    let mut disk = Disk::create_on(Box::new(handle.clone()), &opts, Some(guids(7))).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    // Block 1 stores only 4 KiB (the rest of it is a hole of the file); it
    // is discarded, so compaction moves the last block into its place.
    for (at, len, seed) in [(0, MIB, 40), (MIB, 4096, 41), (2 * MIB, MIB, 42), (3 * MIB, MIB, 43)] {
        let data = pattern(seed, len as usize);
        disk.write_at(&data, at).unwrap();
        model[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
    disk.discard(MIB, MIB).unwrap();
    model[MIB as usize..2 * MIB as usize].fill(0);
    disk.flush().unwrap();
    let guid = disk.data_write_guid();
    handle.fill_after(Some(0));
    let e = disk.compact().unwrap_err();
    assert!(e.to_string().contains("no space"), "{e}");
    assert_presents(&disk, &model, None, "after the failed compaction");
    assert_eq!(disk.data_write_guid(), guid);
    disk.flush().unwrap();
    let reopened = Disk::open_storage(Box::new(MemStorage::from_vec(handle.volatile()))).unwrap();
    assert_presents(&reopened, &model, None, "reopened");
    assert_eq!(reopened.data_write_guid(), guid);
    let report = vhdx::check::check_storage(Box::new(MemStorage::from_vec(handle.volatile()))).unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    handle.fill_after(None);
    let r = disk.compact().unwrap();
    assert!(r.structures_moved > 0 && r.file_size_after < r.file_size_before, "{r:?}");
    disk.close().unwrap();
    let reopened = Disk::open_storage(Box::new(MemStorage::from_vec(handle.volatile()))).unwrap();
    assert_presents(&reopened, &model, None, "compacted");
    assert_eq!(reopened.data_write_guid(), guid);
}

/// A grow whose larger BAT region does not fit fails before anything
/// changes: the file is byte-identical (length included). A grow that needs
/// no new space (the BAT region holds the new entries) works on a full
/// filesystem; and the big grow works once space returns.
#[test]
fn a_resize_that_does_not_fit_leaves_the_file_byte_identical() {
    for differencing in [false, true] {
        let mut s = if differencing { Subject::differencing(false) } else { Subject::dynamic() };
        let file = s.handle.volatile();
        let entries = s.disk.log_entries_written();
        s.handle.fill_after(Some(0));
        // 200 GiB of 1 MiB blocks: a 2 MiB BAT, larger than its 1 MiB region.
        let e = s.disk.resize(200 << 30, false).unwrap_err();
        assert!(e.to_string().contains("no space"), "{e}");
        assert_eq!(s.disk.virtual_size(), SIZE);
        assert_eq!(s.disk.log_entries_written(), entries, "nothing logged");
        assert!(s.handle.volatile() == file, "differencing {differencing}: the file changed");
        assert_presents(&s.disk, &s.model, None, "after the failed resize");
        s.disk.resize(SIZE + 8 * MIB, false).unwrap();
        s.model.resize((SIZE + 8 * MIB) as usize, 0);
        s.handle.fill_after(None);
        s.disk.resize(200 << 30, false).unwrap();
        assert_eq!(s.disk.virtual_size(), 200 << 30);
        let mut buf = vec![0u8; s.model.len()];
        s.disk.read_at(&mut buf, 0).unwrap();
        assert!(buf == s.model, "differencing {differencing}: content after the grows");
        s.assert_clean();
    }
}

// ------------------------------------------------------- the log's space

/// The log's place, from the current header (parsed by the test).
fn log_range(image: &[u8]) -> (u64, u64) {
    let headers = [
        crate::common::layout::parse_header(&image[64 << 10..]),
        crate::common::layout::parse_header(&image[128 << 10..]),
    ];
    let h = headers.into_iter().flatten().max_by_key(|h| h.sequence_number).expect("a valid header");
    (h.log_offset, h.log_length as u64)
}

/// The log of a new image holds space (the storage's own accounting); so
/// does the log of an image whose log was a hole once it is opened for
/// writing, while a read-only open changes nothing.
#[test]
fn the_log_holds_space_after_create_and_a_writable_open() {
    let handle = FaultStorage::new();
    Disk::create_on(Box::new(handle.clone()), &CreateOptions::dynamic(1 << 30), Some(guids(8))).unwrap();
    let image = handle.volatile();
    let (at, len) = log_range(&image);
    assert!(handle.is_allocated(at, len), "the log of a new image is a hole");
    // The same image with its log left a hole, as another tool may leave it.
    let sparse = FaultStorage::new();
    let mut s = sparse.clone();
    s.write_all_at(&image[..at as usize], 0).unwrap();
    s.write_all_at(&image[(at + len) as usize..], at + len).unwrap();
    assert!(!sparse.is_allocated(at, len));
    Disk::open_storage(Box::new(sparse.clone())).unwrap();
    assert!(!sparse.is_allocated(at, len), "a read-only open took space");
    OpenOptions::new().writable(true).open_storage(Box::new(sparse.clone())).unwrap().close().unwrap();
    assert!(sparse.is_allocated(at, len), "the log is still a hole after a writable open");
}

#[cfg(unix)]
fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Bytes of `[at, at + len)` that are holes of the file (SEEK_DATA /
/// SEEK_HOLE; space reserved by fallocate may count as a hole too, so this
/// is used only on a file nothing allocated).
#[cfg(target_os = "linux")]
fn hole_bytes(path: &std::path::Path, at: u64, len: u64) -> u64 {
    use rustix::fs::{seek, SeekFrom};
    let f = std::fs::File::open(path).unwrap();
    let (mut pos, end, mut holes) = (at, at + len, 0);
    while pos < end {
        let data = seek(&f, SeekFrom::Data(pos)).unwrap_or(end).min(end);
        holes += data - pos;
        pos = seek(&f, SeekFrom::Hole(data)).unwrap_or(end).min(end);
    }
    holes
}

/// On a real file: a new image's log and metadata region both hold space
/// (all else written at creation is a few pages); a log that `qemu-img
/// create` left a hole gets its space at our writable open, not at a
/// read-only one.
#[cfg(target_os = "linux")]
#[test]
fn real_files_get_space_for_their_log() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.vhdx");
    Disk::create(&ours, &CreateOptions::dynamic(1 << 30)).unwrap().close().unwrap();
    let h = crate::common::layout::current_header(&ours);
    let used = allocated_bytes(&ours);
    // The metadata region (1 MiB, written whole) and the log; a few pages
    // of headers and region tables besides.
    assert!(used >= MIB + h.log_length as u64, "{used} bytes allocated: the log is not");
    if !qemu() {
        return;
    }
    let theirs = tmp.path().join("theirs.vhdx");
    qemu_img(&["create", "-q", "-f", "vhdx", theirs.to_str().unwrap(), "1G"]);
    let h = crate::common::layout::current_header(&theirs);
    let holes = hole_bytes(&theirs, h.log_offset, h.log_length as u64);
    assert!(holes > 0, "qemu-img left no hole in the log: this test no longer covers a sparse log");
    let before = allocated_bytes(&theirs);
    Disk::open(&theirs).unwrap();
    assert_eq!(allocated_bytes(&theirs), before, "a read-only open took space");
    Disk::open_writable(&theirs).unwrap().close().unwrap();
    let after = allocated_bytes(&theirs);
    assert!(
        after >= before + holes,
        "a writable open took {} bytes for {holes} bytes of holes in the log",
        after - before
    );
    crate::common::qemu::qemu_check_clean(&theirs);
}

/// `FileStorage::allocate` reserves space without changing a byte.
#[cfg(unix)]
#[test]
fn file_storage_allocates_without_changing_bytes() {
    use vhdx::FileStorage;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    let mut f = FileStorage::create_new(&path).unwrap();
    f.set_len(8 * MIB).unwrap();
    f.write_all_at(&pattern(50, 10_000), MIB + 100).unwrap();
    let before = std::fs::read(&path).unwrap();
    let used = allocated_bytes(&path);
    f.allocate(MIB, 4 * MIB).unwrap();
    assert!(allocated_bytes(&path) >= used + 3 * MIB, "{} bytes allocated", allocated_bytes(&path));
    assert!(std::fs::read(&path).unwrap() == before, "allocate changed the content");
    assert_eq!(f.len().unwrap(), 8 * MIB);
}

/// Space that is not there: ENOSPC from a real filesystem is a typed I/O
/// error naming the operation.
#[test]
fn no_space_is_an_io_error() {
    let mut s = Subject::dynamic();
    s.handle.fill_after(Some(0));
    let e = s.disk.write_at(&[1u8; 512], 15 * MIB).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    match &e {
        vhdx::Error::Io { source, .. } => assert_eq!(source.kind(), IoKind::StorageFull),
        other => panic!("{other:?}"),
    }
}

/// A flush whose block table page is still a hole of the file (a 1 GiB
/// disk's second BAT page, never written) backs that page before it logs
/// anything: on a full filesystem the flush fails with nothing logged, the
/// page still a hole, and once space returns the same flush succeeds and
/// the data reads back after reopening.
#[test]
fn a_flush_backs_a_hole_in_the_bat_before_logging() {
    let handle = FaultStorage::new();
    let opts = CreateOptions::dynamic(1 << 30).block_size(MIB as u32);
    let mut disk = Disk::create_on(Box::new(handle.clone()), &opts, Some(guids(7))).unwrap();
    let page = disk.regions().bat().file_offset + 4096; // entries 512..1023
    assert!(!handle.is_allocated(page, 4096), "the BAT's second page of a new image is a hole");
    let data = pattern(70, 4096);
    disk.write_at(&data, 600 * MIB).unwrap();
    let entries = disk.log_entries_written();
    let before = handle.volatile();
    handle.fill_after(Some(handle.mutating_ops()));
    let e = disk.flush().expect_err("the BAT page needs space the filesystem no longer has");
    assert!(e.to_string().contains("no space"), "{e}");
    let after = handle.volatile();
    assert_eq!(after.len(), before.len());
    let changed = after.iter().zip(&before).position(|(a, b)| a != b);
    assert_eq!(changed, None, "the failed flush changed the file (a log entry written before the page was backed?)");
    assert!(!handle.is_allocated(page, 4096));
    handle.fill_after(None);
    disk.flush().unwrap();
    assert_eq!(disk.log_entries_written(), entries + 1);
    assert!(handle.is_allocated(page, 4096));
    disk.close().unwrap();
    let mut got = vec![0u8; 4096];
    Disk::open_storage(Box::new(handle.clone())).unwrap().read_at(&mut got, 600 * MIB).unwrap();
    assert!(got == data);
}
