//! Hostile images: every malformed image gives a typed error naming the
//! structure and offset — never a panic, a hang or an unbounded allocation.
//!
//! The mutation test is bounded so it runs in CI; `VHDX_MUTATIONS=N` runs N
//! mutations per seed image instead of the default.

use std::panic::{catch_unwind, AssertUnwindSafe};

use vhdx::{CreateOptions, Disk, ErrorKind, MemStorage, OpenOptions, Storage};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
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
    let per_seed: u64 = std::env::var("VHDX_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut tried = 0u64;
    let mut rejected = 0u64;
    for (name, image) in seed_images() {
        // Regions worth hitting: identifier, headers, region tables, log, metadata, BAT, payload.
        let hot: [(u64, u64); 6] = [
            (0, 4096),
            (64 << 10, 4096),
            (128 << 10, 4096),
            (192 << 10, 128 << 10),
            (1 << 20, 3 << 20),
            (3 << 20, 64 << 10),
        ];
        for _ in 0..per_seed {
            let mut m = image.clone();
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
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
            if rng.below(10) == 0 {
                let cut = rng.below(m.len() as u64) as usize;
                m.truncate(cut);
            }
            tried += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| try_everything(m)));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    rejected += 1;
                    let msg = e.to_string();
                    assert!(!msg.is_empty());
                }
                Err(_) => panic!("panic on a mutation of the {name} image (mutation #{tried})"),
            }
        }
    }
    println!("hostile: {tried} mutated images, {rejected} rejected with a typed error, none panicked");
    assert!(tried >= 2 * per_seed);
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
    // One header damaged: the other is used.
    assert!(OpenOptions::new()
        .open_storage(Box::new(MemStorage::from_vec(corrupt(&image, (64 << 10) + 100, b"\x01"))))
        .is_ok());
    // Region table copy 1 damaged: copy 2 is used; both damaged: error.
    let one = corrupt(&image, (192 << 10) + 40, b"\x01");
    assert!(OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(one.clone()))).is_ok());
    let e = open_err(corrupt(&one, (256 << 10) + 40, b"\x01"));
    assert!(e.to_string().contains("region table"), "{e}");
    // A BAT entry pointing past the end of the file: the BAT is at 3 MiB, payload block 0 is entry 0.
    let bat = 3 << 20;
    let far = ((1u64 << 40) | 6).to_le_bytes();
    let e = open_err(corrupt(&image, bat, &far));
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("BAT entry") && e.to_string().contains("0x300000"), "{e}");
    // A BAT entry pointing into the header section, and one into the metadata region.
    let e = open_err(corrupt(&image, bat, &((1u64 << 20) | 6).to_le_bytes()));
    assert!(e.to_string().contains("BAT entry"), "{e}");
    let e = open_err(corrupt(&image, bat, &((2u64 << 20) | 6).to_le_bytes()));
    assert!(e.to_string().contains("BAT entry"), "{e}");
    // Two entries pointing at the same block.
    let first = u64::from_le_bytes(image[bat..bat + 8].try_into().unwrap());
    let e = open_err(corrupt(&image, bat + 8, &first.to_le_bytes()));
    assert!(e.to_string().contains("overlaps"), "{e}");
    // Truncated file.
    let e = open_err(image[..200_000].to_vec());
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

#[test]
fn truncated_file_with_dirty_log_is_refused_not_replayed() {
    let (_, image) = seed_images().remove(0);
    // The seed was flushed but not closed: its log GUID is set and the log holds an entry.
    let d = OpenOptions::new().open_storage(Box::new(MemStorage::from_vec(image.clone()))).unwrap();
    assert!(d.info().log_replayed);
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
