//! `Disk`'s accessors and lifetime checked against the file's own bytes as
//! the format lays them out (headers at 64 and 128 KiB, the region table at
//! 192 KiB, the BAT where its region entry says), against the creation
//! options, and against QEMU. Written to kill the mutants `cargo mutants`
//! found surviving in `src/disk/mod.rs` (issue 13).

use std::path::Path;
use std::process::Command;

use vhdx::io::FaultStorage;
use vhdx::{CreateOptions, Disk, DiskType};

use crate::common::data::pattern;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The current header (the one of the two at 64 and 128 KiB with the larger
/// SequenceNumber; this test's files have two valid ones).
fn current_header(file: &[u8]) -> &[u8] {
    let (h1, h2) = (&file[64 << 10..68 << 10], &file[128 << 10..132 << 10]);
    assert_eq!(&h1[..4], b"head");
    assert_eq!(&h2[..4], b"head");
    if u64_at(h1, 8) >= u64_at(h2, 8) {
        h1
    } else {
        h2
    }
}

/// File offset of the BAT, from the region table at 192 KiB (entry GUID
/// 2DC27766-F623-4200-9D64-115E9BFD4A08, stored mixed-endian).
fn bat_offset(file: &[u8]) -> u64 {
    const BAT: [u8; 16] =
        [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08];
    let rt = &file[192 << 10..256 << 10];
    assert_eq!(&rt[..4], b"regi");
    let count = u32_at(rt, 8) as usize;
    (0..count)
        .map(|i| &rt[16 + 32 * i..48 + 32 * i])
        .find(|e| e[..16] == BAT)
        .map(|e| u64_at(e, 16))
        .expect("a BAT region entry")
}

/// The GUID's text form from its 16 on-disk bytes (little-endian u32, two
/// little-endian u16s, eight raw bytes), computed by hand.
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32_at(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn qemu(tool: &str) -> Option<Command> {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").is_err(), "{tool} is missing under CI");
        eprintln!("{tool} missing: QEMU part skipped");
        return None;
    }
    Some(Command::new(tool))
}

#[test]
fn accessors_report_the_options_and_the_files_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    let opts = CreateOptions::dynamic(12 << 20).block_size(1 << 20).logical_sector_size(4096);
    let mut d = Disk::create(&path, &opts).unwrap();
    d.write_at(&[0xA5; 4096], 5 << 20).unwrap();
    d.write_at(&[0x5A; 4096], 9 << 20).unwrap();
    d.close().unwrap();

    let d = Disk::open(&path).unwrap();
    let file = std::fs::read(&path).unwrap();
    assert_eq!(d.virtual_size(), 12 << 20);
    assert_eq!(d.block_size(), 1 << 20);
    assert_eq!(d.logical_sector_size(), 4096);
    assert_eq!(d.disk_type(), DiskType::Dynamic);
    assert!(!d.is_writable());
    assert_eq!(d.path(), Some(path.to_str().unwrap()));
    assert_eq!(d.chain_paths(), vec![path.to_str().unwrap().to_string()]);
    assert!(d.parent().is_none());
    assert!(d.parent_locator().is_none());

    // DataWriteGuid: bytes 32..48 of the current header.
    let header = current_header(&file);
    assert_eq!(d.data_write_guid().to_string(), guid_text(&header[32..48]));
    assert_eq!(d.info().unwrap().data_write_guid.to_string(), guid_text(&header[32..48]));

    // The BAT: 12 payload blocks of 1 MiB; chunk ratio 2^23 * 4096 / 1 MiB
    // = 32768, so a dynamic disk's BAT holds 12 + (12 - 1) / 32768 = 12
    // entries, each a little-endian u64 at the region's offset.
    let bat = bat_offset(&file) as usize;
    let raw: Vec<u64> = (0..12).map(|i| u64_at(&file, bat + 8 * i)).collect();
    assert_eq!(d.bat_entries().unwrap().iter().map(|e| e.raw()).collect::<Vec<u64>>(), raw);
    // Blocks 5 and 9 are fully present (state 6), the rest not (0).
    for (i, e) in raw.iter().enumerate() {
        assert_eq!(e & 7, if i == 5 || i == 9 { 6 } else { 0 }, "BAT entry {i}");
    }
    assert_eq!(d.geometry().payload_blocks, 12);
    assert_eq!(d.geometry().entry_count, 12);
    assert_eq!(d.geometry().chunk_ratio, 32768);
    assert_eq!(d.info().unwrap().allocated_blocks, 2);
    assert_eq!(d.regions().bat().file_offset, bat as u64);

    let shown = format!("{d:?}");
    assert!(shown.contains("Dynamic") && shown.contains(&(12u64 << 20).to_string()), "{shown}");

    drop(d);
    let w = Disk::open_writable(&path).unwrap();
    assert!(w.is_writable());
}

#[test]
fn a_child_names_its_parent_as_the_files_say() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.vhdx"));
    Disk::create(&base, &CreateOptions::dynamic(4 << 20).block_size(1 << 20)).unwrap().close().unwrap();
    Disk::create_differencing(&child, &base, None).unwrap().close().unwrap();

    let base_file = std::fs::read(&base).unwrap();
    let base_guid = guid_text(&current_header(&base_file)[32..48]);
    let d = Disk::open(&child).unwrap();
    assert_eq!(d.disk_type(), DiskType::Differencing);
    assert_eq!(d.chain_paths(), vec![child.to_str().unwrap().to_string(), base.to_str().unwrap().to_string()]);
    let parent = d.parent().expect("the parent is attached");
    assert_eq!(parent.path(), Some(base.to_str().unwrap()));
    assert_eq!(parent.data_write_guid().to_string(), base_guid);
    let locator = d.parent_locator().expect("a differencing disk has a locator");
    let linkage = locator.get("parent_linkage").expect("parent_linkage");
    assert_eq!(linkage.trim_matches(|c| c == '{' || c == '}').to_ascii_lowercase(), base_guid);
    assert_eq!(locator.get("relative_path"), Some(".\\base.vhdx"));
}

#[test]
fn close_reports_a_failed_flush() {
    let storage = FaultStorage::new();
    let mut d =
        Disk::create_on(Box::new(storage.clone()), &CreateOptions::dynamic(4 << 20).block_size(1 << 20), None).unwrap();
    d.write_at(&[1; 4096], 0).unwrap();
    storage.crash_after(storage.mutating_ops());
    assert!(d.close().is_err(), "close must report that the storage refused its writes");
}

/// A disk dropped without `close` closes itself: QEMU, which refuses to
/// open an image whose log needs replaying read-only, reads the written
/// data, and the current header's LogGuid is zero again.
#[test]
fn dropping_a_disk_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    {
        let mut d = Disk::create(&path, &CreateOptions::dynamic(4 << 20).block_size(1 << 20)).unwrap();
        d.write_at(&[0x3C; 8192], 1 << 20).unwrap();
        d.write_at(&[0x3C; 8192], 3 << 20).unwrap();
    }
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&current_header(&file)[48..64], &[0u8; 16], "LogGuid after drop");
    if let Some(mut q) = qemu("qemu-io") {
        let out = q
            .args(["-r", "-f", "vhdx", "-c", "read -P 0x3c 1M 8k", "-c", "read -P 0x3c 3M 8k"])
            .arg(path_str(&path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("fail") && !text.contains("error"), "{text}");
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The SequenceNumber of the header at `at` (offset 8 of a header, MS-VHDX 2.2.2).
fn sequence_at(file: &[u8], at: usize) -> u64 {
    assert_eq!(&file[at..at + 4], b"head");
    u64_at(file, at + 8)
}

/// A new image's two headers must not tie: a reader takes the one with the
/// larger SequenceNumber, so equal numbers would leave the choice to the
/// reader. Ours writes 64 KiB first, then 128 KiB one higher.
#[test]
fn a_new_images_headers_have_distinct_rising_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(4 << 20)).unwrap().close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let (first, second) = (sequence_at(&file, 64 << 10), sequence_at(&file, 128 << 10));
    assert!(first >= 1 && second == first + 1, "sequence numbers {first} and {second}");
}

/// A damaged BAT entry does not stop an open, which reads no BAT page: the
/// first read of its page refuses it, and `check` reports it. Returns the
/// read's message and the check's errors, one text, for the caller's
/// assertions (each must hold in both).
fn refused_when_read(path: &Path, virtual_offset: u64, what: &str) -> [String; 2] {
    let d = Disk::open(path).unwrap_or_else(|e| panic!("{what}: the open reads no BAT page, yet: {e}"));
    let mut buf = [0u8; 512];
    let read = d.read_at(&mut buf, virtual_offset).expect_err(what).to_string();
    let report = vhdx::check::check_file(path).unwrap();
    assert!(!report.is_clean(), "{what}: check passed it");
    [read, report.errors.join("; ")]
}

/// Two BAT entries pointing at the same block: the error names the BAT
/// entry that overlaps, at its own file offset (the region's offset plus 8
/// per entry), as the test reads it from the file.
#[test]
fn an_overlapping_bat_entry_is_named_at_its_own_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlap.vhdx");
    let mut d = Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap();
    d.write_at(&[1u8; 512], 0).unwrap();
    d.write_at(&[2u8; 512], 5 << 20).unwrap();
    d.close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let bat = bat_offset(&file) as usize;
    let block0 = u64_at(&file, bat);
    assert_eq!(block0 & 7, 6, "block 0 is fully present");
    file[bat + 5 * 8..bat + 6 * 8].copy_from_slice(&block0.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    // Reads cannot tell (each block alone is sound); check can, and so can
    // a writer, which checks the whole table before its first new block.
    let d = Disk::open(&path).unwrap();
    let mut buf = [0u8; 512];
    d.read_at(&mut buf, 5 << 20).unwrap();
    assert_eq!(buf, [1u8; 512], "entry 5 reads block 0's bytes");
    drop(d);
    let report = vhdx::check::check_file(&path).unwrap().errors.join("; ");
    let mut w = Disk::open_writable(&path).unwrap();
    w.write_at(&[3u8; 512], 0).expect("a write to a stored block allocates nothing");
    let write = w.write_at(&[3u8; 512], 2 << 20).expect_err("a new block needs the whole table sound").to_string();
    drop(w);
    let want = format!("corrupt BAT entry at file offset {:#x}", bat + 5 * 8);
    for message in [report, write] {
        assert!(message.contains(&want), "{message:?} does not contain {want:?}");
        assert!(message.contains("entry 5 at") && message.contains("overlaps entry 0"), "{message}");
    }
}

/// A file that ends exactly where the header section ends (the second
/// region table's end, 320 KiB) has a whole header section: it is refused
/// for what lies past its end (the log), not as too short.
#[test]
fn a_file_ending_with_its_header_section_is_refused_for_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(4 << 20)).unwrap().close().unwrap();
    let file = std::fs::read(&path).unwrap();
    std::fs::write(&path, &file[..320 << 10]).unwrap();
    let message = Disk::open(&path).expect_err("a cut file is refused").to_string();
    assert!(message.contains("the log runs past the end of the file"), "{message}");
    std::fs::write(&path, &file[..(320 << 10) - 1]).unwrap();
    let message = Disk::open(&path).expect_err("a shorter file is refused").to_string();
    assert!(message.contains("shorter than the header section"), "{message}");
}

/// A three-level chain whose child has smaller blocks than its parent and
/// grandparent: a block index of the child is not a block index of the
/// parent, so reads must not skip ancestors by the parent's table. The
/// expectation is a byte array that received the same writes.
#[test]
fn a_child_with_smaller_blocks_reads_its_parents_data_not_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let (gp, parent, child) = (dir.path().join("gp.vhdx"), dir.path().join("p.vhdx"), dir.path().join("c.vhdx"));
    let size = 8usize << 20;
    let mut model = vec![0u8; size];
    let mut g = Disk::create(&gp, &CreateOptions::dynamic(size as u64).block_size(2 << 20)).unwrap();
    let a = pattern(1, size);
    g.write_at(&a, 0).unwrap();
    model.copy_from_slice(&a);
    g.close().unwrap();
    let mut p = Disk::create_differencing(&parent, &gp, Some(2 << 20)).unwrap();
    // Parent block 0 (2 MiB) holds data in its second MiB; parent block 1 nothing.
    let b = pattern(2, 1 << 20);
    p.write_at(&b, 1 << 20).unwrap();
    model[1 << 20..2 << 20].copy_from_slice(&b);
    p.close().unwrap();
    Disk::create_differencing(&child, &parent, Some(1 << 20)).unwrap().close().unwrap();
    let c = Disk::open(&child).unwrap();
    assert_eq!(c.block_size(), 1 << 20);
    // Whole, and a child block at a time (a read inside one block may take
    // the shortcut to an ancestor).
    let mut got = vec![0u8; size];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == model, "the chain differs from the model");
    for mib in 0..8 {
        let r = mib << 20..(mib + 1) << 20;
        c.read_at(&mut got[r.clone()], r.start as u64).unwrap();
        assert!(got[r.clone()] == model[r], "MiB {mib}, read alone, differs from the model");
    }
}

/// Reads inside one partially present block whose bitmap byte is mixed:
/// each sector comes from the child where the child wrote it and from the
/// parent elsewhere, for every end of the range within the byte, for a
/// byte the child never wrote, and for a range starting inside an unwritten
/// byte and ending past a written bit of the next, before and after a flush (the flush moves
/// the answer to the committed bitmap and its cache).
#[test]
fn reads_within_a_mixed_bitmap_byte_take_each_sector_from_its_own_level() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.vhdx"));
    let mut b = Disk::create(&base, &CreateOptions::dynamic(4 << 20).block_size(1 << 20)).unwrap();
    let mut model = pattern(3, 1 << 20);
    b.write_at(&model, 0).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, None).unwrap();
    // Byte 1 of the bitmap mixed; byte 6 with only its lowest bit (sector 48).
    for sector in [9usize, 11, 13, 15, 48] {
        let data = pattern(10 + sector as u64, 512);
        c.write_at(&data, sector as u64 * 512).unwrap();
        model[sector * 512..(sector + 1) * 512].copy_from_slice(&data);
    }
    let ranges: Vec<(usize, usize)> = (9..=16)
        .map(|end| (8, end))
        .chain([(9, 10), (10, 11), (16, 24), (17, 23), (8, 24), (44, 56), (44, 49)])
        .collect();
    for flushed in [false, true] {
        if flushed {
            c.flush().unwrap();
        }
        for &(first, end) in &ranges {
            let mut got = vec![0u8; (end - first) * 512];
            c.read_at(&mut got, first as u64 * 512).unwrap();
            assert!(
                got[..] == model[first * 512..end * 512],
                "sectors {first}..{end} (flushed: {flushed}) differ from the model"
            );
        }
    }
}

/// A BAT entry pointing into the log is refused: the block would be
/// overwritten by every log entry. The log's place comes from the current
/// header (LogOffset at byte 72, MS-VHDX 2.2.2), read by the test.
#[test]
fn a_bat_entry_inside_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in-log.vhdx");
    let mut d = Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap();
    d.write_at(&[1u8; 512], 0).unwrap();
    d.close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let log_offset = u64_at(current_header(&file), 72);
    assert!(log_offset >= 1 << 20 && log_offset % (1 << 20) == 0, "log at {log_offset:#x}");
    let bat = bat_offset(&file) as usize;
    file[bat..bat + 8].copy_from_slice(&(log_offset | 6).to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    for message in refused_when_read(&path, 0, "a block in the log is refused") {
        assert!(message.contains(&format!("corrupt BAT entry at file offset {bat:#x}")), "{message}");
        assert!(message.contains("overlaps the log"), "{message}");
    }
}

/// A flush commits what was pending and leaves nothing pending; a second
/// write makes the disk pending again.
#[test]
fn a_flush_leaves_no_metadata_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pending.vhdx");
    let mut d = Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap();
    assert!(!d.has_pending_metadata(), "a new disk");
    d.write_at(&[1u8; 512], 0).unwrap();
    assert!(d.has_pending_metadata(), "a new block waits for the flush");
    d.flush().unwrap();
    assert!(!d.has_pending_metadata(), "the flush committed the block table");
    d.write_at(&[2u8; 512], 3 << 20).unwrap();
    assert!(d.has_pending_metadata(), "another new block");
    d.flush().unwrap();
    assert!(!d.has_pending_metadata());
    d.close().unwrap();
}

/// A BAT entry in the reserved state 4 is refused, named at its own file
/// offset (region offset + 8 x index, read by the test).
#[test]
fn a_reserved_bat_state_is_named_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reserved.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap().close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let bat = bat_offset(&file) as usize;
    file[bat + 2 * 8..bat + 3 * 8].copy_from_slice(&4u64.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    for message in refused_when_read(&path, 5 << 20, "state 4 is reserved") {
        assert!(message.contains(&format!("corrupt BAT entry at file offset {:#x}", bat + 16)), "{message}");
        assert!(message.contains("entry 2 has the reserved state 4"), "{message}");
    }
}

/// With 32 MiB blocks and 512-byte sectors a block's sector bitmap is 8 KiB,
/// two metadata pages: writes in the block's second half change bits in the
/// second page. Read back against a byte model, before and after a flush and
/// after reopening.
#[test]
fn a_large_blocks_bitmap_spans_two_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.vhdx"));
    let size = 32usize << 20;
    let mut b = Disk::create(&base, &CreateOptions::dynamic(size as u64).block_size(32 << 20)).unwrap();
    let mut model = pattern(5, size);
    b.write_at(&model, 0).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(32 << 20)).unwrap();
    // Sector 32768 is the first whose bit lies in the second page; the
    // writes also cross from the first page into the second.
    for (at, len) in [(20usize << 20, 4096usize), ((16 << 20) - 1024, 2048), ((31 << 20) + 512, 512)] {
        let data = pattern(at as u64, len);
        c.write_at(&data, at as u64).unwrap();
        model[at..at + len].copy_from_slice(&data);
    }
    let check = |d: &Disk, when: &str| {
        let mut got = vec![0u8; size];
        d.read_at(&mut got, 0).unwrap();
        assert!(got == model, "the child differs from the model {when}");
    };
    check(&c, "before the flush");
    c.flush().unwrap();
    check(&c, "after the flush");
    c.close().unwrap();
    check(&Disk::open(&child).unwrap(), "after reopening");
}

/// A block may not start inside the header section (the file's first MiB):
/// an entry pointing at offset 0 is refused, named at its own offset.
#[test]
fn a_bat_entry_inside_the_header_section_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in-header.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap().close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let bat = bat_offset(&file) as usize;
    // FULLY_PRESENT (6) at file offset 0.
    file[bat + 8..bat + 16].copy_from_slice(&6u64.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    for message in refused_when_read(&path, 1 << 20, "a block at offset 0 is refused") {
        assert!(message.contains(&format!("corrupt BAT entry at file offset {:#x}", bat + 8)), "{message}");
        assert!(message.contains("outside the file's data area"), "{message}");
    }
}

/// Rewrites both headers' LogOffset (byte 72) and LogLength (byte 68), with
/// the CRC-32C (byte 4) recomputed by the test's own implementation.
fn move_log(file: &mut [u8], offset: u64, length: u32) {
    for at in [64usize << 10, 128 << 10] {
        let h = &mut file[at..at + 4096];
        assert_eq!(&h[..4], b"head");
        assert_eq!(&h[48..64], &[0u8; 16], "the log is clean (LogGuid zero)");
        h[68..72].copy_from_slice(&length.to_le_bytes());
        h[72..80].copy_from_slice(&offset.to_le_bytes());
        h[4..8].fill(0);
        let crc = crate::common::layout::crc32c(h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A region that overlaps the log is refused (MS-VHDX 2.2.3: regions and
/// the log must not overlap), named at the region table. QEMU refuses the
/// same file. Here the log is moved onto the BAT region.
#[test]
fn a_region_overlapping_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log-on-bat.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap().close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let length = u32_at(current_header(&file), 68);
    let bat = bat_offset(&file);
    move_log(&mut file, bat, length);
    std::fs::write(&path, &file).unwrap();
    let message = Disk::open(&path).expect_err("a region inside the log is refused").to_string();
    assert!(message.contains("corrupt region table at file offset 0x30000"), "{message}");
    assert!(message.contains("overlaps the log"), "{message}");
    if crate::common::qemu::qemu() {
        let out = crate::common::qemu::run("qemu-img", &["info", "-f", "vhdx", path.to_str().unwrap()]);
        assert!(!out.status.success(), "QEMU opened an image whose log overlaps its BAT");
    }
}

/// A log that starts exactly where the last region ends touches it without
/// overlapping: the image opens, takes writes through the log there, and
/// reads back what was written, in this library and in QEMU.
#[test]
fn a_log_right_after_a_region_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log-after-bat.vhdx");
    let size = 8usize << 20;
    Disk::create(&path, &CreateOptions::dynamic(size as u64).block_size(1 << 20)).unwrap().close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let length = u32_at(current_header(&file), 68);
    let rt = &file[192 << 10..256 << 10];
    let count = u32_at(rt, 8) as usize;
    let end = (0..count).map(|i| u64_at(rt, 16 + 32 * i + 16) + u32_at(rt, 16 + 32 * i + 24) as u64).max().unwrap();
    move_log(&mut file, end, length);
    file.resize(file.len().max((end + length as u64) as usize), 0);
    std::fs::write(&path, &file).unwrap();

    let mut model = vec![0u8; size];
    let mut d = Disk::open_writable(&path).expect("a log touching a region is allowed");
    for (at, len) in [(0usize, 4096usize), ((3 << 20) - 512, 8192), (size - 512, 512)] {
        let data = pattern(at as u64 + 1, len);
        d.write_at(&data, at as u64).unwrap();
        model[at..at + len].copy_from_slice(&data);
    }
    d.close().unwrap();
    assert_eq!(u64_at(current_header(&std::fs::read(&path).unwrap()), 72), end, "the log stayed where it was put");
    let mut got = vec![0u8; size];
    Disk::open(&path).unwrap().read_at(&mut got, 0).unwrap();
    assert!(got == model, "the disk differs from the model");
    if crate::common::qemu::qemu() {
        let raw = dir.path().join("log-after-bat.raw");
        crate::common::qemu::qemu_convert_to_raw(&path, &raw);
        assert!(std::fs::read(&raw).unwrap() == model, "QEMU reads something else");
    }
}

/// A BAT that fills its region exactly: 131041 blocks of 1 MiB plus the 31
/// sector-bitmap entries interleaved after every 4096 (MS-VHDX 2.5: a
/// dynamic disk has DataBlocksCount + floor((DataBlocksCount - 1) /
/// ChunkRatio) entries) make 131072 entries, 1 MiB. The image opens, and
/// its last block is written and read back, here and by QEMU.
#[test]
fn a_bat_filling_its_region_exactly_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full-bat.vhdx");
    let size = 131041u64 << 20;
    Disk::create(&path, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap().close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let rt = &file[192 << 10..256 << 10];
    let bat = bat_offset(&file);
    let count = u32_at(rt, 8) as usize;
    let length = (0..count).find(|&i| u64_at(rt, 16 + 32 * i + 16) == bat).map(|i| u32_at(rt, 16 + 32 * i + 24));
    assert_eq!(length, Some(1 << 20), "the BAT region is 1 MiB");
    let data = pattern(7, 4096);
    let mut d = Disk::open_writable(&path).expect("a BAT that fills its region");
    d.write_at(&data, size - 4096).unwrap();
    d.close().unwrap();
    let mut got = vec![0u8; 4096];
    Disk::open(&path).unwrap().read_at(&mut got, size - 4096).unwrap();
    assert!(got == data);
    if crate::common::qemu::qemu() {
        let out = crate::common::qemu::qemu_io(
            &path,
            &["read -P 0 0 1M".to_string(), format!("read -v {} 512", size - 4096)],
        );
        let first = data[..16].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        assert!(out.contains(&first), "QEMU reads other bytes at the end: {out}");
    }
}

/// A sector-bitmap BAT entry in a disk without a parent is never read
/// (MS-VHDX 2.5.1: such disks have no sector bitmaps), so whatever it holds
/// does not stop a reader: here SB_BLOCK_PRESENT (6) at file offset 0, in a
/// dynamic disk with 256 MiB blocks (chunk ratio 16: entry 16 is the first
/// chunk's bitmap). The data written before the entry was changed reads
/// back. (QEMU 10 is stricter: it checks such an entry's offset as if it
/// were a payload block's, and refuses this file.)
#[test]
fn a_sector_bitmap_entry_in_a_disk_without_parent_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stray-bitmap.vhdx");
    let size = 17u64 << 28;
    let mut d = Disk::create(&path, &CreateOptions::dynamic(size).block_size(256 << 20)).unwrap();
    let data = pattern(3, 8192);
    d.write_at(&data, 16 << 28).unwrap();
    d.close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let bat = bat_offset(&file) as usize;
    assert_eq!(u64_at(&file, bat + 16 * 8), 0, "entry 16 is the sector bitmap's, not present");
    assert_eq!(u64_at(&file, bat + 17 * 8) & 7, 6, "entry 17 is payload block 16, written");
    file[bat + 16 * 8..bat + 17 * 8].copy_from_slice(&6u64.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    let mut got = vec![0u8; 8192];
    Disk::open(&path).expect("a stray sector-bitmap entry").read_at(&mut got, 16 << 28).unwrap();
    assert!(got == data);
}

/// A commit backs with real space only the block-table pages it writes,
/// not the sparse rest of the region: a 16 TiB disk with 1 MiB blocks has a
/// 128 MiB BAT region, left a hole by `create`. Writing blocks 511 and 512
/// dirties two neighbouring BAT pages (512 entries a page); afterwards the
/// file holds those pages and the sectors written more (the rest of a new
/// block stays a hole that reads as zeros), measured from the file's
/// allocated size (st_blocks), not from the library.
#[cfg(unix)]
#[test]
fn a_commit_backs_only_the_pages_it_writes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse-bat.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(16 << 40).block_size(1 << 20)).unwrap().close().unwrap();
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let before = allocated(&path);
    let probe = dir.path().join("probe");
    std::fs::File::create(&probe).unwrap().set_len(64 << 20).unwrap();
    if allocated(&probe) != 0 {
        eprintln!("this filesystem has no sparse files: nothing to measure");
        return;
    }
    assert!(before < 16 << 20, "a new image's BAT region is a hole ({before} bytes allocated)");
    let mut d = Disk::open_writable(&path).unwrap();
    d.write_at(&[1u8; 512], 511 << 20).unwrap();
    d.write_at(&[2u8; 512], 512 << 20).unwrap();
    d.close().unwrap();
    let grown = allocated(&path) - before;
    assert!(
        (8 << 10..1 << 20).contains(&grown),
        "writing a sector in each of two blocks grew the file's allocation by {grown} bytes (expected tens of KiB)"
    );
}

/// A child grown past its parent reads the parent's bytes up to the
/// parent's end and zeros after it, also inside the one block that holds
/// the parent's end. The parent here was shrunk from 4 MiB to 3.5 MiB
/// (with `allow_shrink`), so the rest of its last block in the file still
/// holds the old bytes: a read that took them would show.
#[test]
fn a_grown_child_reads_zeros_past_its_parents_end_inside_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.vhdx"));
    let mut b = Disk::create(&base, &CreateOptions::dynamic(4 << 20).block_size(1 << 20)).unwrap();
    let old = pattern(40, 4 << 20);
    b.write_at(&old, 0).unwrap();
    b.resize(7 << 19, true).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, None).unwrap();
    c.resize(8 << 20, false).unwrap();
    c.close().unwrap();
    let c = Disk::open(&child).unwrap();
    let mut model = vec![0u8; 8 << 20];
    model[..7 << 19].copy_from_slice(&old[..7 << 19]);
    for (at, len) in
        [(13usize << 18, 1usize << 19), ((7 << 19) - 512, 1024), (7 << 19, 4096), (15 << 18, 4096), (3 << 20, 1 << 20)]
    {
        let mut got = vec![0u8; len];
        c.read_at(&mut got, at as u64).unwrap();
        assert!(got[..] == model[at..at + len], "{len} bytes at {at:#x} differ from the parent's bytes then zeros");
    }
    let mut got = vec![0u8; 8 << 20];
    c.read_at(&mut got, 0).unwrap();
    assert!(got == model, "the whole child differs");
}

/// The same inside a block the child holds in part (its sector bitmap
/// says which sectors are its own): a read of sectors the child does not
/// hold, crossing the parent's end, takes the parent's bytes, then zeros.
/// The parent was shrunk from 1 MiB to 512 KiB inside its only block; the
/// child, grown to 2 MiB, holds only the last sector of that block.
#[test]
fn a_grown_child_reads_zeros_past_its_parents_end_in_a_block_it_holds_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.vhdx"));
    let mut b = Disk::create(&base, &CreateOptions::dynamic(1 << 20).block_size(1 << 20)).unwrap();
    let old = pattern(41, 1 << 20);
    b.write_at(&old, 0).unwrap();
    b.resize(1 << 19, true).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, None).unwrap();
    c.resize(2 << 20, false).unwrap();
    let mut model = vec![0u8; 2 << 20];
    model[..1 << 19].copy_from_slice(&old[..1 << 19]);
    let own = pattern(42, 512);
    c.write_at(&own, (1 << 20) - 512).unwrap();
    model[(1 << 20) - 512..1 << 20].copy_from_slice(&own);
    c.close().unwrap();
    let c = Disk::open(&child).unwrap();
    for (at, len) in [(0usize, 3usize << 18), (1 << 18, 1 << 19), ((1 << 19) - 512, 1024), (0, 1 << 20)] {
        let mut got = vec![0u8; len];
        c.read_at(&mut got, at as u64).unwrap();
        assert!(got[..] == model[at..at + len], "{len} bytes at {at:#x} differ from the parent's bytes then zeros");
    }
}

/// A file that ends inside its last block (as old QEMU versions left them)
/// reads zeros for the rest of that block, also where a read lies wholly
/// past the end of the file; on storage in memory, whose reads past the end
/// fail, so nothing is asked of the storage there.
#[test]
fn a_file_ending_inside_its_last_block_reads_zeros_past_its_end() {
    let mut d =
        Disk::create_on(Box::new(vhdx::MemStorage::new()), &CreateOptions::dynamic(4 << 20).block_size(1 << 20), None)
            .unwrap();
    let data = pattern(43, 1 << 20);
    d.write_at(&data, 3 << 20).unwrap();
    let storage = d.into_storage().unwrap();
    let mut file = vec![0u8; vhdx::Storage::len(&*storage).unwrap() as usize];
    vhdx::Storage::read_exact_at(&*storage, &mut file, 0).unwrap();
    let bat = bat_offset(&file) as usize;
    let block = (u64_at(&file, bat + 3 * 8) & !((1 << 20) - 1)) as usize;
    assert_eq!(block + (1 << 20), file.len(), "the written block is the file's last");
    file.truncate(block + (1 << 18));
    let d = Disk::open_storage(Box::new(vhdx::MemStorage::from_vec(file))).unwrap();
    let mut model = vec![0u8; 1 << 20];
    model[..1 << 18].copy_from_slice(&data[..1 << 18]);
    for (at, len) in [(0usize, 1usize << 20), ((1 << 18) - 512, 1024), (1 << 19, 4096)] {
        let mut got = vec![0u8; len];
        d.read_at(&mut got, (3 << 20) + at as u64).unwrap();
        assert!(got[..] == model[at..at + len], "{len} bytes at {at:#x} of the cut block");
    }
}

/// Growing clears what the BAT region holds past the old entries before
/// those entries count: here a stale entry 600, beyond the 8 entries of an
/// 8 MiB disk (and beyond the page of them read at open), points at block
/// 0's data. After growing to 700 MiB, block 600 reads zeros, also after
/// reopening, and QEMU finds the image clean (no two blocks share space).
#[test]
fn growing_clears_stale_entries_past_the_old_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.vhdx");
    let mut d = Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap();
    d.write_at(&pattern(45, 1 << 20), 0).unwrap();
    d.close().unwrap();
    let mut file = std::fs::read(&path).unwrap();
    let bat = bat_offset(&file) as usize;
    let block0 = u64_at(&file, bat);
    assert_eq!(block0 & 7, 6, "block 0 is written");
    file[bat + 600 * 8..bat + 601 * 8].copy_from_slice(&block0.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    let mut d = Disk::open_writable(&path).unwrap();
    d.resize(700 << 20, false).unwrap();
    let mut got = vec![1u8; 1 << 20];
    d.read_at(&mut got, 600 << 20).unwrap();
    assert!(got.iter().all(|&b| b == 0), "block 600 shows the stale entry's data");
    d.close().unwrap();
    let d = Disk::open(&path).unwrap();
    d.read_at(&mut got, 600 << 20).unwrap();
    assert!(got.iter().all(|&b| b == 0), "block 600 shows the stale entry's data after reopening");
    drop(d);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(u64_at(&file, bat + 600 * 8), 0, "the stale entry is still in the file");
    if crate::common::qemu::qemu() {
        crate::common::qemu::qemu_check_clean(&path);
    }
}

/// A block placed on a region (the metadata region, found by the test in
/// the region table, and the BAT's own) is refused and named at its BAT
/// entry. QEMU refuses both too.
#[test]
fn a_block_on_a_region_is_refused() {
    const METADATA: [u8; 16] =
        [0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("on-region.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(8 << 20).block_size(1 << 20)).unwrap().close().unwrap();
    let clean = std::fs::read(&path).unwrap();
    let rt = &clean[192 << 10..256 << 10];
    let meta = (0..u32_at(rt, 8) as usize)
        .map(|i| &rt[16 + 32 * i..48 + 32 * i])
        .find(|e| e[..16] == METADATA)
        .map(|e| u64_at(e, 16))
        .expect("a metadata region entry");
    let bat = bat_offset(&clean) as usize;
    for (what, at) in [("on the metadata", meta), ("on the BAT", bat as u64)] {
        let mut file = clean.clone();
        file[bat + 8..bat + 16].copy_from_slice(&(at | 6).to_le_bytes());
        std::fs::write(&path, &file).unwrap();
        for message in refused_when_read(&path, 1 << 20, what) {
            assert!(message.contains(&format!("corrupt BAT entry at file offset {:#x}", bat + 8)), "{what}: {message}");
            assert!(message.contains("overlaps region"), "{what}: {message}");
        }
        if crate::common::qemu::qemu() {
            let out = crate::common::qemu::run("qemu-img", &["info", "-f", "vhdx", path.to_str().unwrap()]);
            assert!(!out.status.success(), "{what}: QEMU opened it");
        }
    }
}

/// The sector bitmap bits of a block that is not present mean nothing
/// (MS-VHDX 2.5.1), and a file another tool wrote may hold some set. A
/// block becoming partially present starts with its bits clear, so the
/// sectors not written still read the parent's bytes, not the new block's
/// zeros. Blocks 1 to 3 of a child here have every bit set; each becomes
/// partially present another way: `write_at`, `write_concurrently` (under
/// the shared lock, after the session's first new block and a flush), and
/// `resolve_write` with the data written into the file and committed.
/// Checked against the model before closing and after reopening, with
/// `check`, and with libvhdi when present.
#[test]
fn a_block_placed_over_stale_bitmap_bits_still_reads_its_parent() {
    use crate::common::FileExt;
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.vhdx"));
    let size = 8 * MIB;
    let mut model = pattern(50, size as usize);
    let mut b = Disk::create(&base, &CreateOptions::dynamic(size).block_size(MIB as u32)).unwrap();
    b.write_at(&model, 0).unwrap();
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
    c.write_at(&[7; 512], 0).unwrap();
    model[..512].fill(7);
    c.close().unwrap();

    // 1 MiB blocks of 512-byte sectors: 4096 blocks a chunk, the chunk's
    // bitmap entry after them, 256 bitmap bytes a block.
    let mut file = std::fs::read(&child).unwrap();
    let entry = u64_at(&file, bat_offset(&file) as usize + 4096 * 8);
    assert_eq!(entry & 7, 6, "the chunk has a sector bitmap block");
    let sb = (entry & !(MIB - 1)) as usize;
    assert_eq!(file[sb], 1, "block 0's first sector is the child's");
    for block in 1..=3 {
        file[sb + block * 256..sb + (block + 1) * 256].fill(0xFF);
    }
    std::fs::write(&child, &file).unwrap();

    let d = vhdx::OpenOptions::new().writable(true).open(&child).unwrap();
    let mut got = vec![0u8; size as usize];
    d.read_at(&mut got, 0).unwrap();
    assert!(got == model, "bits of blocks not present are not read");
    let d = std::sync::RwLock::new(d);
    let mut put = |at: u64, data: &[u8], how: &str| {
        let mut disk = d.write().unwrap();
        match how {
            "write_at" => disk.write_at(data, at).unwrap(),
            "write_concurrently" => {
                drop(disk);
                vhdx::write_concurrently(&d, data, at).unwrap();
            }
            _ => {
                let pieces = disk.resolve_write(at, data.len() as u64).unwrap();
                let file = disk.level_file(0).unwrap();
                for p in &pieces {
                    let vhdx::IoTarget::File { level: 0, file_offset } = p.target else {
                        panic!("a write goes to the leaf")
                    };
                    let from = (p.offset - at) as usize;
                    file.write_all_at(&data[from..from + p.length as usize], file_offset).unwrap();
                }
                disk.commit_write(at, data.len() as u64).unwrap();
            }
        }
        model[at as usize..at as usize + data.len()].copy_from_slice(data);
    };
    put(MIB + 4096, &pattern(51, 1024), "write_at");
    // After a flush, so that no block-table page has changes of `&mut`
    // calls left and the shared path takes the write.
    d.write().unwrap().flush().unwrap();
    put(2 * MIB + 8192, &pattern(52, 1536), "write_concurrently");
    put(3 * MIB + 512, &pattern(53, 512), "resolve_write");
    let mut d = d.into_inner().unwrap();
    d.read_at(&mut got, 0).unwrap();
    let first = crate::common::compare::first_difference(&got, &model);
    assert!(got == model, "placed blocks read zeros in place of the parent from byte {first:#x}");
    d.flush().unwrap();
    d.close().unwrap();

    assert!(vhdx::check::check_file(&child).unwrap().is_clean());
    Disk::open(&child).unwrap().read_at(&mut got, 0).unwrap();
    assert!(got == model, "after reopening");
    if let Some((sum, len)) = crate::common::tools::libvhdi_reads_chain(&child, &[&base]) {
        assert_eq!((sum, len), (crate::common::compare::sha256_bytes(&model), size), "libvhdi reads the model");
    }
}
