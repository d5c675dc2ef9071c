//! `Disk`'s accessors and lifetime checked against the file's own bytes as
//! the format lays them out (headers at 64 and 128 KiB, the region table at
//! 192 KiB, the BAT where its region entry says), against the creation
//! options, and against QEMU. Written to kill the mutants `cargo mutants`
//! found surviving in `src/disk/mod.rs` (issue 13).

use std::path::Path;
use std::process::Command;

use vhdx::io::FaultStorage;
use vhdx::{CreateOptions, Disk, DiskType};

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
    assert_eq!(d.info().data_write_guid.to_string(), guid_text(&header[32..48]));

    // The BAT: 12 payload blocks of 1 MiB; chunk ratio 2^23 * 4096 / 1 MiB
    // = 32768, so a dynamic disk's BAT holds 12 + (12 - 1) / 32768 = 12
    // entries, each a little-endian u64 at the region's offset.
    let bat = bat_offset(&file) as usize;
    let raw: Vec<u64> = (0..12).map(|i| u64_at(&file, bat + 8 * i)).collect();
    assert_eq!(d.bat_entries().iter().map(|e| e.raw()).collect::<Vec<u64>>(), raw);
    // Blocks 5 and 9 are fully present (state 6), the rest not (0).
    for (i, e) in raw.iter().enumerate() {
        assert_eq!(e & 7, if i == 5 || i == 9 { 6 } else { 0 }, "BAT entry {i}");
    }
    assert_eq!(d.geometry().payload_blocks, 12);
    assert_eq!(d.geometry().entry_count, 12);
    assert_eq!(d.geometry().chunk_ratio, 32768);
    assert_eq!(d.info().allocated_blocks, 2);
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
