//! I/O resolution: reading a range from the files `resolve_read` names, and
//! writing one where `resolve_write` says then committing it, give what
//! `read_at` and `write_at` give, through a chain of three.

use crate::common::FileExt;

use vhdx::{CreateOptions, Disk, IoTarget, OpenOptions};

use crate::common::data::{pattern, XorShift};

/// Reads `[at, at + len)` the way a VMM does: from the files the pieces name.
fn vmm_read(disk: &Disk, at: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut covered = 0u64;
    for e in disk.resolve_read(at, len as u64).unwrap() {
        assert_eq!(e.offset, at + covered, "pieces are in order and cover the range");
        covered += e.length;
        let dst = &mut out[(e.offset - at) as usize..(e.offset - at + e.length) as usize];
        match e.target {
            IoTarget::Zero => dst.fill(0),
            IoTarget::File { level, file_offset } => {
                disk.level_file(level).expect("every level is a file").read_exact_at(dst, file_offset).unwrap();
                // The path of the level names the same file (on Windows
                // another open of a writable image is refused).
                #[cfg(unix)]
                {
                    let paths = disk.chain_paths();
                    let mut again = vec![0u8; dst.len()];
                    std::fs::File::open(&paths[level]).unwrap().read_exact_at(&mut again, file_offset).unwrap();
                    assert!(again == dst, "level {level} is {}", paths[level]);
                }
            }
        }
    }
    assert_eq!(covered, len as u64);
    out
}

#[test]
fn resolved_reads_and_writes_match_read_at_through_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let names = ["base.vhdx", "mid.vhdx", "leaf.vhdx"].map(|n| dir.path().join(n));
    let mut model = vec![0u8; size as usize];
    let mut b = Disk::create(&names[0], &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap();
    let data = pattern(1, 3 << 20);
    b.write_at(&data, 1 << 20).unwrap();
    model[1 << 20..4 << 20].copy_from_slice(&data);
    b.close().unwrap();
    let mut m = Disk::create_differencing(&names[1], &names[0], Some(1 << 20)).unwrap();
    let data = pattern(2, 5000);
    m.write_at(&data, (2 << 20) + 700).unwrap();
    model[(2 << 20) + 700..(2 << 20) + 5700].copy_from_slice(&data);
    m.close().unwrap();
    let mut leaf = Disk::create_differencing(&names[2], &names[1], Some(1 << 20)).unwrap();
    // Writes the VMM's way: resolve, write the files, commit.
    let mut rng = XorShift(77);
    for i in 0..60u64 {
        let at = rng.next() % (size / 512 - 64) * 512;
        let len = (1 + rng.next() % 64) * 512;
        let data = pattern(100 + i, len as usize);
        let pieces = leaf.resolve_write(at, len).unwrap();
        // Until the commit the range reads as before.
        let mut before = vec![0u8; len as usize];
        leaf.read_at(&mut before, at).unwrap();
        assert!(before == model[at as usize..(at + len) as usize], "write {i}: changed before its commit");
        let file = leaf.level_file(0).unwrap();
        for p in &pieces {
            let IoTarget::File { level: 0, file_offset } = p.target else { panic!("a write goes to the leaf") };
            file.write_all_at(&data[(p.offset - at) as usize..(p.offset - at + p.length) as usize], file_offset)
                .unwrap();
        }
        leaf.commit_write(at, len).unwrap();
        model[at as usize..(at + len) as usize].copy_from_slice(&data);
        if i % 20 == 19 {
            leaf.flush().unwrap();
        }
    }
    assert!(leaf.resolve_write(513, 512).is_err(), "a differencing disk takes whole sectors");
    assert!(leaf.level_file(2).is_some() && leaf.level_file(3).is_none(), "three levels, each a file");
    for (at, len) in [(0u64, size as usize), (1 << 20, 4096), ((2 << 20) + 600, 300), (size - 512, 512)] {
        let mut want = vec![0u8; len];
        leaf.read_at(&mut want, at).unwrap();
        assert!(want == model[at as usize..at as usize + len], "read_at at {at}");
        assert!(vmm_read(&leaf, at, len) == want, "resolved read at {at}");
    }
    leaf.close().unwrap();
    let leaf = OpenOptions::new().open(&names[2]).unwrap();
    let mut all = vec![0u8; size as usize];
    leaf.read_at(&mut all, 0).unwrap();
    assert!(all == model, "after reopening");
    assert!(vmm_read(&leaf, 0, size as usize) == model);
    assert!(vhdx::check::check_file(&names[2]).unwrap().is_clean());
}

#[test]
fn a_dynamic_disk_resolves_writes_into_new_and_stored_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    let size = 6u64 << 20;
    let mut d = Disk::create(&path, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap();
    d.write_at(&[7u8; 4096], 0).unwrap();
    let data = pattern(9, (2 << 20) + 100);
    let at = (1 << 20) - 50;
    let pieces = d.resolve_write(at, data.len() as u64).unwrap();
    let mut before = vec![1u8; data.len()];
    d.read_at(&mut before, at).unwrap();
    assert!(before.iter().all(|&b| b == 0), "new blocks read zeros until written");
    let file = d.level_file(0).unwrap();
    for p in &pieces {
        let IoTarget::File { level: 0, file_offset } = p.target else { panic!() };
        file.write_all_at(&data[(p.offset - at) as usize..(p.offset - at + p.length) as usize], file_offset).unwrap();
    }
    d.commit_write(at, data.len() as u64).unwrap();
    assert!(d.commit_write(5 << 20, 10).is_err(), "a range never resolved for writing");
    d.close().unwrap();
    let d = Disk::open(&path).unwrap();
    let mut back = vec![0u8; data.len()];
    d.read_at(&mut back, at).unwrap();
    assert!(back == data);
    if crate::common::qemu::qemu() {
        let raw = dir.path().join("d.raw");
        crate::common::qemu::qemu_convert_to_raw(&path, &raw);
        let raw = std::fs::read(&raw).unwrap();
        assert!(raw[at as usize..at as usize + data.len()] == data[..], "QEMU reads what was written");
        assert!(raw[..4096].iter().all(|&b| b == 7));
    }
}
