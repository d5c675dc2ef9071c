//! Interoperability with QEMU, both ways, plus the header rules our writes
//! must follow.
//!
//! Oracles: `qemu-img check` (structure), `qemu-img convert -O raw` and
//! `qemu-img map` (content and allocation as QEMU reads them), `qemu-io`
//! (writes made by another implementation), a sparse raw reference file that
//! receives the same writes (content), and the format's header rules parsed by
//! the test itself (`common::layout::parse_header`, with its own CRC-32C).
//!
//! QEMU cannot open 4096-byte logical sectors, so those disks are checked
//! against an in-memory model only. When QEMU is missing the QEMU parts are
//! skipped with a note, or fail under `CI=true`.

use std::collections::BTreeSet;
use std::path::Path;

use vhdx::{BlockDevice, CreateOptions, Disk, DiskType, ErrorKind, OpenOptions};

use crate::common::{compare::*, data::*, files::*, layout::*, models::*, qemu::*, storage::*};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bytes covered by one sector bitmap block: 2^23 logical sectors.
fn chunk_bytes(lss: u64) -> u64 {
    (1 << 23) * lss
}

/// Unaligned writes `(offset, length)` for a disk of `size` bytes with
/// `bs`-byte blocks: inside a block, across block boundaries, over several
/// blocks, overlapping an earlier write, the last bytes of the disk, and —
/// when the disk is larger than one chunk — around the chunk boundary, where
/// the BAT interleaves a sector-bitmap entry.
fn write_plan(size: u64, bs: u64, lss: u64) -> Vec<(u64, usize)> {
    let mut w: Vec<(u64, usize)> = Vec::new();
    let mut push = |off: u64, len: u64| {
        if len > 0 && off + len <= size {
            w.push((off, len as usize));
        }
    };
    push(0, 1000);
    push(bs - 700, 1500);
    push(bs + bs / 2 + 13, bs + 77);
    push(500, 100);
    push(2 * bs - 1, 2);
    push(size / 2 + 7, 4099);
    push(size - 333, 333);
    push(size - 1, 1);
    let chunk = chunk_bytes(lss);
    if size > chunk + 3 * bs {
        push(chunk - 1000, 5000);
        push(chunk - bs + 3, 7);
        push(chunk + 2 * bs + 5, 10);
    }
    w
}

/// Payload blocks touched by `plan`.
fn blocks_of(plan: &[(u64, usize)], bs: u64) -> BTreeSet<u64> {
    plan.iter().flat_map(|&(off, len)| off / bs..=(off + len as u64 - 1) / bs).collect()
}

fn create_options(kind: DiskType, size: u64, bs: u64, lss: u32) -> CreateOptions {
    let o = match kind {
        DiskType::Fixed => CreateOptions::fixed(size),
        _ => CreateOptions::dynamic(size),
    };
    o.block_size(bs as u32).logical_sector_size(lss).physical_sector_size(4096)
}

/// Applies `plan` to the disk and the model, checking each write reads back
/// (with a byte of context either side), flushing halfway.
fn apply_plan(disk: &mut Disk, model: &RawModel, plan: &[(u64, usize)], seed: u64) {
    let size = disk.virtual_size();
    for (i, &(off, len)) in plan.iter().enumerate() {
        let data = pattern(seed + i as u64, len);
        disk.write_at(&data, off).unwrap_or_else(|e| panic!("write of {len} bytes at {off:#x}: {e}"));
        model.write(&data, off);
        let lo = off.saturating_sub(1);
        let hi = (off + len as u64 + 1).min(size);
        assert_eq!(read_vec(disk, lo, (hi - lo) as usize), model.read(lo, (hi - lo) as usize), "read back at {off:#x}");
        if i == plan.len() / 2 {
            disk.flush().unwrap();
        }
    }
}

/// Reads the file's BAT with the test's own parser, checks the format's
/// rules for it, and reads every block in `check_data` straight from the file
/// at the offset the BAT gives, comparing it with the model — an independent
/// reader for the interleave, the offsets and the payload.
fn check_bat_and_payload(path: &Path, model: &RawModel, bs: u64, present: &BTreeSet<u64>, check_data: &BTreeSet<u64>) {
    let file = std::fs::File::open(path).unwrap();
    let file_len = file.metadata().unwrap().len();
    let bat = RawBat::from_file(path, model.size, bs, 512);
    let offsets = bat.check(present, file_len, bs);
    for &block in check_data {
        let start = block * bs;
        let len = bs.min(model.size - start) as usize;
        let mut got = vec![0u8; len];
        crate::common::FileExt::read_exact_at(&file, &mut got, offsets[&block]).unwrap();
        assert!(got == model.read(start, len), "payload block {block} in the file differs from the model");
    }
}

// ---------------------------------------------------------------- we create, QEMU reads

/// We create and write; our reopen, `qemu-img check`, `qemu-img info`,
/// `qemu-img map` and `qemu-img convert` all agree with the raw model.
fn we_create_qemu_reads(kind: DiskType, bs: u64, size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.vhdx");
    let model = RawModel::new(dir.path().join("model.raw"), size);
    let plan = write_plan(size, bs, 512);
    let mut disk = Disk::create(&path, &create_options(kind, size, bs, 512)).unwrap();
    assert_eq!(disk.disk_type(), kind);
    apply_plan(&mut disk, &model, &plan, bs ^ size);
    disk.close().unwrap();

    let disk = Disk::open(&path).unwrap();
    let info = disk.info().unwrap();
    assert_eq!((info.virtual_size, info.block_size as u64, info.disk_type), (size, bs, kind));
    let expected_blocks = match kind {
        DiskType::Fixed => size.div_ceil(bs),
        _ => blocks_of(&plan, bs).len() as u64,
    };
    assert_eq!(info.allocated_blocks, expected_blocks, "allocated payload blocks");
    assert_eq!(info.file_size, std::fs::metadata(&path).unwrap().len());
    assert_disk_equals_raw_file(&disk, &model.path);
    drop(disk);
    assert_eq!(current_header(&path).log_guid, [0u8; 16], "log not clean after close");
    let written = blocks_of(&plan, bs);
    let present = match kind {
        DiskType::Fixed => (0..size.div_ceil(bs)).collect(),
        _ => written.clone(),
    };
    check_bat_and_payload(&path, &model, bs, &present, &written);

    if !qemu() {
        return;
    }
    qemu_check_clean(&path);
    let qi = qemu_info(&path);
    assert_eq!(qi["virtual-size"].as_u64(), Some(size), "qemu-img info: {qi}");
    assert_eq!(qi["cluster-size"].as_u64(), Some(bs), "qemu-img info: {qi}");
    let raw = dir.path().join("qemu.raw");
    qemu_convert_to_raw(&path, &raw);
    assert_files_equal(&raw, &model.path);
}

#[test]
fn we_create_dynamic_1m_blocks_past_first_chunk() {
    // 1 MiB blocks, 512-byte sectors: chunk ratio 4096, so past 4 GiB the
    // BAT interleaves the first sector-bitmap entry.
    we_create_qemu_reads(DiskType::Dynamic, MIB, 4 * GIB + 5 * MIB + 1536);
}

#[test]
fn we_create_fixed_1m_blocks_past_first_chunk() {
    we_create_qemu_reads(DiskType::Fixed, MIB, 4 * GIB + 5 * MIB + 1536);
}

#[test]
fn we_create_dynamic_2m_blocks() {
    we_create_qemu_reads(DiskType::Dynamic, 2 * MIB, 21 * MIB + 3584);
}

#[test]
fn we_create_fixed_2m_blocks() {
    we_create_qemu_reads(DiskType::Fixed, 2 * MIB, 21 * MIB + 3584);
}

#[test]
fn we_create_dynamic_32m_blocks() {
    we_create_qemu_reads(DiskType::Dynamic, 32 * MIB, 100 * MIB + 4608);
}

#[test]
fn we_create_fixed_32m_blocks() {
    we_create_qemu_reads(DiskType::Fixed, 32 * MIB, 100 * MIB + 4608);
}

#[test]
fn we_create_dynamic_256m_blocks() {
    we_create_qemu_reads(DiskType::Dynamic, 256 * MIB, 700 * MIB + 512);
}

#[test]
fn we_create_fixed_256m_blocks() {
    we_create_qemu_reads(DiskType::Fixed, 256 * MIB, 700 * MIB + 512);
}

// ---------------------------------------------------------------- QEMU creates, we read and write

/// Sector-aligned, block-unaligned writes for qemu-io (offset, length).
fn qemu_plan(size: u64, bs: u64) -> Vec<(u64, u64)> {
    let mut w = Vec::new();
    let mut push = |off: u64, len: u64| {
        if off + len <= size {
            w.push((off, len));
        }
    };
    push(3 * 512, 5 * 512);
    push(bs - 1024, 4096);
    push(2 * bs + 7 * 512, bs + 512);
    push(4 * 512, 512);
    push(size - 1024, 1024);
    let chunk = chunk_bytes(512);
    if size > chunk + bs {
        push(chunk - 2048, 8192);
    }
    w
}

/// QEMU creates and writes; we read it as `qemu-img convert` does; then we
/// write into it and QEMU reads our writes back; a last QEMU write lands on
/// top of ours and we read that too.
fn qemu_creates_we_read_write(subformat: &str, bs: u64, size: u64, block_state_zero: bool) {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qemu.vhdx");
    let p = path.to_str().unwrap();
    let opts = format!(
        "subformat={subformat},block_size={bs},block_state_zero={}",
        if block_state_zero { "on" } else { "off" }
    );
    qemu_img(&["create", "-q", "-f", "vhdx", "-o", &opts, p, &size.to_string()]);
    let model = RawModel::new(dir.path().join("model.raw"), size);
    let plan = qemu_plan(size, bs);
    let mut cmds = Vec::new();
    for (i, &(off, len)) in plan.iter().enumerate() {
        let byte = 0x11u8.wrapping_mul(i as u8 + 1);
        cmds.push(format!("write -P {byte:#04x} {off} {len}"));
        model.write(&vec![byte; len as usize], off);
    }
    qemu_io(&path, &cmds);

    // We read exactly what QEMU reads.
    let before = sha256_file(&path);
    {
        let disk = Disk::open(&path).unwrap();
        let info = disk.info().unwrap();
        assert_eq!((info.virtual_size, info.block_size as u64, info.logical_sector_size), (size, bs, 512));
        assert!(info.creator.starts_with("QEMU"), "creator {:?}", info.creator);
        assert_eq!(info.disk_type, if subformat == "fixed" { DiskType::Fixed } else { DiskType::Dynamic });
        assert_disk_equals_raw_file(&disk, &model.path);
    }
    assert_eq!(sha256_file(&path), before, "a read-only open changed the file");
    let raw = dir.path().join("qemu1.raw");
    qemu_convert_to_raw(&path, &raw);
    assert_files_equal(&raw, &model.path);

    // We write into QEMU's image; QEMU reads our writes back.
    let mut disk = Disk::open_writable(&path).unwrap();
    apply_plan(&mut disk, &model, &write_plan(size, bs, 512), 0xC0FFEE ^ bs);
    disk.close().unwrap();
    qemu_check_clean(&path);
    let raw = dir.path().join("qemu2.raw");
    qemu_convert_to_raw(&path, &raw);
    assert_files_equal(&raw, &model.path);

    // QEMU writes over part of ours; we read the result.
    let (off, len) = (bs - 512, 1536);
    qemu_io(&path, &[format!("write -P 0x5a {off} {len}")]);
    model.write(&vec![0x5a; len], off);
    let disk = Disk::open(&path).unwrap();
    assert_disk_equals_raw_file(&disk, &model.path);
}

#[test]
fn qemu_creates_dynamic_1m_blocks_past_first_chunk() {
    qemu_creates_we_read_write("dynamic", MIB, 4 * GIB + 3 * MIB + 2560, true);
}

#[test]
fn qemu_creates_dynamic_2m_blocks() {
    qemu_creates_we_read_write("dynamic", 2 * MIB, 13 * MIB + 512, true);
}

#[test]
fn qemu_creates_dynamic_32m_blocks_without_zero_state() {
    qemu_creates_we_read_write("dynamic", 32 * MIB, 100 * MIB + 1024, false);
}

#[test]
fn qemu_creates_dynamic_256m_blocks() {
    qemu_creates_we_read_write("dynamic", 256 * MIB, 600 * MIB + 512, true);
}

#[test]
fn qemu_creates_fixed_1m_blocks_zero_state_past_first_chunk() {
    // QEMU's default for fixed images marks every block ZERO (offset 0).
    qemu_creates_we_read_write("fixed", MIB, 4 * GIB + 3 * MIB + 2560, true);
}

#[test]
fn qemu_creates_fixed_2m_blocks_fully_present() {
    qemu_creates_we_read_write("fixed", 2 * MIB, 13 * MIB + 512, false);
}

#[test]
fn qemu_creates_fixed_32m_blocks_fully_present() {
    qemu_creates_we_read_write("fixed", 32 * MIB, 100 * MIB + 1024, false);
}

// ---------------------------------------------------------------- 4096-byte logical sectors

/// Writes to a 4096-byte-sector disk (sub-sector ones need read-modify-write),
/// close, reopen, and compare the whole disk with an in-memory model.
fn sector_4096(kind: DiskType, bs: u64, size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("4k.vhdx");
    let mut model = SparseModel::new(size);
    let mut plan = write_plan(size, bs, 4096);
    plan.extend([(4096 * 5 + 100, 10), (4095, 2), (0, 4096), (8193, 3 * 4096), (size - 4095, 4095)]);
    let mut disk = Disk::create(&path, &create_options(kind, size, bs, 4096)).unwrap();
    assert_eq!((disk.logical_sector_size(), disk.sector_size(), disk.sector_count()), (4096, 4096, size / 4096));
    for (i, &(off, len)) in plan.iter().enumerate() {
        let data = pattern(0x4096 + i as u64, len);
        disk.write_at(&data, off).unwrap();
        model.write(&data, off);
        assert_eq!(read_vec(&disk, off, len), data);
        if i % 4 == 3 {
            disk.flush().unwrap();
        }
    }
    model.assert_equals(&disk);
    disk.close().unwrap();

    let disk = Disk::open(&path).unwrap();
    let info = disk.info().unwrap();
    assert_eq!((info.logical_sector_size, info.physical_sector_size, info.virtual_size), (4096, 4096, size));
    model.assert_equals(&disk);
    // The block-device view uses whole 4096-byte sectors.
    let mut sector = vec![0u8; 4096];
    disk.read_sectors(5, &mut sector).unwrap();
    assert_eq!(sector, model.read(5 * 4096, 4096));
    let err = disk.read_sectors(0, &mut [0u8; 512]).expect_err("a 512-byte buffer is not a 4096-byte sector");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    drop(disk);

    // A second session: whole-sector writes through the block-device view.
    let mut disk = Disk::open_writable(&path).unwrap();
    let data = pattern(77, 2 * 4096);
    disk.write_sectors(3, &data).unwrap();
    model.write(&data, 3 * 4096);
    disk.close().unwrap();
    model.assert_equals(&Disk::open(&path).unwrap());
    assert_eq!(current_header(&path).log_guid, [0u8; 16]);
}

#[test]
fn sector_4096_dynamic_1m_blocks() {
    sector_4096(DiskType::Dynamic, MIB, 70 * MIB + 3 * 4096);
}

#[test]
fn sector_4096_fixed_1m_blocks() {
    sector_4096(DiskType::Fixed, MIB, 70 * MIB + 3 * 4096);
}

#[test]
fn sector_4096_dynamic_32m_blocks() {
    sector_4096(DiskType::Dynamic, 32 * MIB, 70 * MIB + 3 * 4096);
}

#[test]
fn sector_4096_dynamic_past_first_chunk() {
    // 1 MiB blocks, 4096-byte sectors: chunk ratio 32768, a chunk is 32 GiB.
    sector_4096(DiskType::Dynamic, MIB, 32 * GIB + 3 * MIB + 4096);
}

#[test]
fn sector_4096_size_must_be_whole_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Disk::create(dir.path().join("x.vhdx"), &create_options(DiskType::Dynamic, 8 * MIB + 512, MIB, 4096))
        .expect_err("8 MiB + 512 is not a multiple of 4096");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(!dir.path().join("x.vhdx").exists(), "a failed create leaves no file");
}

// ---------------------------------------------------------------- headers

fn both_headers(path: &Path) -> [RawHeader; 2] {
    read_headers(path).map(|h| h.unwrap_or_else(|e| panic!("invalid header in {}: {e}", path.display())))
}

/// The header rules, checked on the raw bytes: both headers valid; the first
/// write of a session moves to a higher sequence number with new FileWriteGuid
/// and DataWriteGuid before any data lands; later writes in the session
/// don't change them; a flush sets a LogGuid, close clears it; a read-only
/// open changes no byte.
#[test]
fn headers_follow_the_update_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(64 * MIB).block_size(MIB as u32)).unwrap().close().unwrap();
    let h0 = both_headers(&path);
    let cur0 = current_header(&path);
    assert_eq!(cur0.log_guid, [0u8; 16]);
    assert_eq!((cur0.log_offset % MIB, cur0.log_length as u64 % MIB, cur0.log_version), (0, 0, 0));

    // A read-only open with reads changes nothing.
    let hash0 = sha256_file(&path);
    {
        let mut d = Disk::open(&path).unwrap();
        sha256_disk(&d);
        assert_eq!(d.write_at(&[1], 0).map_err(|e| e.kind()).err(), Some(ErrorKind::ReadOnly));
        let _ = d.map().unwrap();
    }
    assert_eq!(sha256_file(&path), hash0, "a read-only open changed the file");

    let mut d = Disk::open_writable(&path).unwrap();
    d.write_at(b"first", 12345).unwrap();
    // Read the file while the disk is still open: the header update came first.
    let h1 = both_headers(&path);
    let cur1 = current_header(&path);
    assert!(cur1.sequence_number > cur0.sequence_number);
    assert_ne!(cur1.data_write_guid, cur0.data_write_guid, "DataWriteGuid must change before the first write");
    assert_ne!(cur1.file_write_guid, cur0.file_write_guid, "FileWriteGuid must change in a writable session");
    assert_ne!(h1, h0);
    // Both slots carry the update (the spec's "SHOULD update twice").
    assert_eq!((h1[0].data_write_guid, h1[0].file_write_guid), (h1[1].data_write_guid, h1[1].file_write_guid));
    assert_eq!(h1[0].sequence_number.abs_diff(h1[1].sequence_number), 1);
    // Another open while the writer holds the image is refused, unless it forces sharing.
    assert_eq!(Disk::open(&path).map_err(|e| e.kind()).err(), Some(vhdx::ErrorKind::Busy));
    let shared = vhdx::OpenOptions::new().force_share(true).open(&path).unwrap();
    assert_eq!(shared.data_write_guid().to_bytes_le(), cur1.data_write_guid);
    drop(shared);

    d.write_at(b"second", 2 * MIB + 7).unwrap();
    assert_eq!(both_headers(&path), h1, "the second write must not update the headers again");
    d.flush().unwrap();
    let cur2 = current_header(&path);
    assert_ne!(cur2.log_guid, [0u8; 16], "metadata went through the log, so LogGuid is set");
    assert_eq!(cur2.data_write_guid, cur1.data_write_guid);
    d.close().unwrap();

    let h3 = both_headers(&path);
    let cur3 = current_header(&path);
    assert_eq!(cur3.log_guid, [0u8; 16], "close leaves a clean log");
    assert!(cur3.sequence_number > cur2.sequence_number);
    assert_eq!((cur3.data_write_guid, cur3.file_write_guid), (cur1.data_write_guid, cur1.file_write_guid));
    assert_eq!(h3[0].log_guid, h3[1].log_guid);

    // A second session gets fresh GUIDs again.
    let mut d = Disk::open_writable(&path).unwrap();
    d.write_at(b"third", 0).unwrap();
    d.close().unwrap();
    let cur4 = current_header(&path);
    assert!(cur4.sequence_number > cur3.sequence_number);
    assert_ne!(cur4.data_write_guid, cur3.data_write_guid);
    assert_ne!(cur4.file_write_guid, cur3.file_write_guid);
    assert_eq!(cur4.log_guid, [0u8; 16]);

    let d = Disk::open(&path).unwrap();
    assert_eq!(read_vec(&d, 12345, 5), b"first");
    assert_eq!(read_vec(&d, 2 * MIB + 7, 6), b"second");
    assert_eq!(read_vec(&d, 0, 5), b"third");
    drop(d);
    if qemu() {
        // QEMU refuses a read-only open of a dirty log, so `info` proves it clean.
        qemu_info(&path);
        qemu_check_clean(&path);
    }
}

/// A writable session with no writes leaves the data and DataWriteGuid
/// alone: the file is byte for byte what it was, however often it is
/// flushed.
#[test]
fn writable_open_without_writes_keeps_data_write_guid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.vhdx");
    let mut d = Disk::create(&path, &CreateOptions::dynamic(8 * MIB).block_size(MIB as u32)).unwrap();
    d.write_at(&pattern(1, 5000), 1000).unwrap();
    d.close().unwrap();
    let before = current_header(&path);
    let bytes = std::fs::read(&path).unwrap();
    let mut d = Disk::open_writable(&path).unwrap();
    assert_eq!(read_vec(&d, 1000, 5000), pattern(1, 5000));
    d.flush().unwrap();
    d.flush().unwrap();
    d.close().unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes, "the file changed");
    let after = current_header(&path);
    assert_eq!(after.data_write_guid, before.data_write_guid, "no write, so no new DataWriteGuid");
    assert_eq!(after.log_guid, [0u8; 16]);
}

// ---------------------------------------------------------------- crashes

/// Replays every prefix of the storage operations of a session (as if the
/// machine died after each one) and checks the image: it must open, read as
/// either the content before the flush in progress or after it (the BAT
/// update is atomic), and QEMU — repairing with `qemu-img check -r all`, which
/// replays our log — must read the same thing.
#[test]
fn crash_after_any_write_reads_old_or_new_and_qemu_agrees() {
    let size = 8 * MIB;
    let rec = Recorder::new();
    let mut disk =
        Disk::create_on(Box::new(rec.clone()), &CreateOptions::dynamic(size).block_size(MIB as u32), None).unwrap();
    let created = rec.len();
    let mut states: Vec<(usize, Vec<u8>)> = vec![(created, vec![0u8; size as usize])];
    let mut model = vec![0u8; size as usize];
    // Session: writes into new blocks, flush; writes into old and new blocks, flush; close.
    let rounds: [&[(u64, usize)]; 2] =
        [&[(100, 5000), (MIB - 10, 20), (5 * MIB + 3, 1)], &[(200, 10), (3 * MIB, 4096), (size - 1, 1)]];
    let mut windows = Vec::new();
    for (r, writes) in rounds.iter().enumerate() {
        for (i, &(off, len)) in writes.iter().enumerate() {
            let data = pattern((r * 10 + i) as u64, len);
            disk.write_at(&data, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
        let start = rec.len();
        disk.flush().unwrap();
        windows.push((start, rec.len(), model.clone()));
    }
    let before_close = rec.len();
    disk.close().unwrap();
    windows.push((before_close, rec.len(), model.clone()));
    states.push((rec.len(), model.clone()));

    let dir = tempfile::tempdir().unwrap();
    let use_qemu = qemu();
    let read_image = |bytes: Vec<u8>, k: usize| -> Vec<u8> {
        let d = Disk::open_storage(Box::new(vhdx::MemStorage::from_vec(bytes)))
            .unwrap_or_else(|e| panic!("the image after {k} storage operations does not open: {e}"));
        read_vec(&d, 0, size as usize)
    };
    let bat_of = |image: &[u8]| {
        RawBat::read(&|at, buf| buf.copy_from_slice(&image[at as usize..at as usize + buf.len()]), size, MIB, 512)
            .entries
    };
    let mut needed_replay = 0;
    for (w, (start, end, after)) in windows.iter().enumerate() {
        let before = read_image(rec.image_after(*start), *start);
        let final_bat = bat_of(&rec.image_after(*end));
        for k in *start..=*end {
            let image = rec.image_after(k);
            let got = read_image(image.clone(), k);
            if got == *after && got != before && bat_of(&image) != final_bat {
                // The new blocks are visible only through the log: replay mattered.
                needed_replay += 1;
            }
            assert!(
                got == before || got == *after,
                "flush window {w}: after {k} operations the disk is neither the state before the flush nor after it"
            );
            if k == *end {
                assert!(got == *after, "flush window {w}: a completed flush lost data");
            }
            if use_qemu {
                let path = dir.path().join(format!("crash-{k}.vhdx"));
                write_file(&path, &image);
                qemu_img(&["check", "-q", "-f", "vhdx", "-r", "all", path.to_str().unwrap()]);
                let raw = dir.path().join(format!("crash-{k}.raw"));
                qemu_convert_to_raw(&path, &raw);
                let theirs = std::fs::read(&raw).unwrap();
                assert!(theirs == got, "flush window {w}: after {k} operations QEMU reads the image differently");
                std::fs::remove_file(&path).unwrap();
                std::fs::remove_file(&raw).unwrap();
            }
        }
    }
    assert!(needed_replay > 0, "no crash point had the BAT update only in the log; the test lost its teeth");
}

/// `without_parent` only matters for differencing disks: a standalone disk opens normally.
#[test]
fn without_parent_on_a_standalone_disk_opens_it_normally() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(4 * MIB).block_size(MIB as u32)).unwrap().close().unwrap();
    let d = OpenOptions::new().without_parent().open(&path).unwrap();
    assert_eq!(d.disk_type(), DiskType::Dynamic);
    assert!(d.parent().is_none());
}

/// A log entry names a file size that was durable when it was written
/// (FlushedFileOffset, MS-VHDX 2.3.1.1): at least the end of every payload
/// block its BAT pages point at (the payload is flushed before the entry),
/// at most the file's size; LastFileOffset covers the file and is a
/// multiple of 1 MiB. Read from the file with the test's own parser, at the
/// spec's field offsets.
#[test]
fn a_log_entry_names_a_durable_file_size_covering_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.vhdx");
    let size = 16 * MIB;
    let mut d = Disk::create(&path, &CreateOptions::dynamic(size).block_size(MIB as u32)).unwrap();
    d.write_at(&pattern(3, 4096), 9 * MIB).unwrap();
    d.write_at(&pattern(4, 100), 2 * MIB + 7).unwrap();
    d.flush().unwrap();
    let file_len = std::fs::metadata(&path).unwrap().len();
    let header = current_header(&path);
    assert_ne!(header.log_guid, [0u8; 16], "a flushed session keeps its log until it closes");
    let mut entry = vec![0u8; 64];
    crate::common::FileExt::read_exact_at(&std::fs::File::open(&path).unwrap(), &mut entry, header.log_offset).unwrap();
    assert_eq!(&entry[0..4], b"loge", "the first entry starts the log");
    assert_eq!(entry[32..48], header.log_guid, "the entry's LogGuid");
    let field = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap());
    let (flushed, last) = (field(48), field(56));
    let bat = RawBat::from_file(&path, size, MIB, 512);
    let block_end = [9, 2].iter().map(|&b| (bat.payload(b) >> 20 << 20) + MIB).max().unwrap();
    assert!(flushed >= block_end, "FlushedFileOffset {flushed:#x} below the end of a block it maps ({block_end:#x})");
    assert!(flushed <= file_len, "FlushedFileOffset {flushed:#x} past the file's end ({file_len:#x})");
    assert!(last >= file_len && last % MIB == 0, "LastFileOffset {last:#x} for a file of {file_len:#x}");
    d.close().unwrap();
}

/// A compaction that only cuts the file (its last block discarded and
/// flushed before, so nothing is pending) still writes a log entry naming
/// the smaller file: the newest entry's FlushedFileOffset and
/// LastFileOffset are the new length, so a replay after a crash never
/// takes the file back to its old size. Read with the test's own parser.
#[test]
fn a_compaction_that_only_cuts_the_file_logs_the_new_size() {
    use crate::common::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.vhdx");
    let mut d = Disk::create(&path, &CreateOptions::dynamic(16 * MIB).block_size(MIB as u32)).unwrap();
    d.write_at(&pattern(5, 4096), 0).unwrap();
    d.write_at(&pattern(6, 4096), 9 * MIB).unwrap();
    d.discard(9 * MIB, MIB).unwrap();
    d.flush().unwrap();
    assert!(!d.has_pending_metadata());
    let before = std::fs::metadata(&path).unwrap().len();
    let report = d.compact().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < before && report.file_size_after == len, "{report:?}: {before} -> {len}");
    let header = current_header(&path);
    let f = std::fs::File::open(&path).unwrap();
    let mut log = vec![0u8; header.log_length as usize];
    f.read_exact_at(&mut log, header.log_offset).unwrap();
    let field = |e: &[u8], at: usize| u64::from_le_bytes(e[at..at + 8].try_into().unwrap());
    let newest = log
        .chunks(4096)
        .filter(|e| &e[0..4] == b"loge" && e[32..48] == header.log_guid)
        .max_by_key(|e| field(e, 16))
        .expect("a log entry of this session");
    assert_eq!((field(newest, 48), field(newest, 56)), (len, len), "the newest entry's file offsets");
    d.close().unwrap();
}
