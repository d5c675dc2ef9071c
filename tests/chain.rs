//! Differencing chains checked against raw reference models: every level of
//! a chain written with unaligned writes, different block sizes per level,
//! both sector sizes, reopened through the locator and through an explicit
//! parent.

use std::path::{Path, PathBuf};

use vhdx::{CreateOptions, Disk, ErrorKind, OpenOptions};

mod common;
mod tool;

/// Deterministic bytes (the xorshift stream the models were written with).
use common::data::xorshift_pattern as pattern;
use common::data::XorShift;

fn read_all(d: &Disk) -> Vec<u8> {
    let mut v = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

/// Writes `data` at `off` to the disk and to the model.
fn write_both(d: &mut Disk, model: &mut [u8], off: u64, data: &[u8]) {
    d.write_at(data, off).unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

/// What level `level` (1 and up) of a chain writes: unaligned, sub-sector,
/// block-crossing and chunk-local writes, as (offset, bytes).
fn child_writes(level: usize) -> Vec<(u64, Vec<u8>)> {
    let l = level as u64;
    vec![
        (12_345 * l, pattern(10 + l, 5000)),
        ((1 << 20) - 3 + l, pattern(20 + l, 7)),
        ((2 << 20) * l + 511, pattern(30 + l, (1 << 20) + 1000)),
        (0, pattern(40 + l, 1)),
    ]
}

/// Builds base + `levels` children in `dir`, each level written with
/// unaligned writes; returns the paths (base first) and the model of every level.
fn build_chain(dir: &Path, levels: usize, sector: u32, size: u64, block_sizes: &[u32]) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let base = dir.join("base.vhdx");
    let mut model = vec![0u8; size as usize];
    let mut d =
        Disk::create(&base, &CreateOptions::dynamic(size).block_size(block_sizes[0]).logical_sector_size(sector))
            .unwrap();
    write_both(&mut d, &mut model, 1000, &pattern(1, 3 << 20));
    write_both(&mut d, &mut model, size - 777, &pattern(2, 777));
    d.close().unwrap();
    let mut paths = vec![base];
    let mut models = vec![model.clone()];
    for level in 1..=levels {
        let child = dir.join(format!("level{level}.vhdx"));
        let bs = block_sizes[level % block_sizes.len()];
        let mut c = Disk::create_differencing(&child, paths.last().unwrap(), Some(bs)).unwrap();
        assert_eq!(read_all(&c), model, "a new child reads as its parent");
        for (off, data) in child_writes(level) {
            write_both(&mut c, &mut model, off, &data);
        }
        assert_eq!(read_all(&c), model, "level {level} before close");
        c.close().unwrap();
        paths.push(child);
        models.push(model.clone());
    }
    (paths, models)
}

#[test]
fn chain_of_depth_five_matches_models_at_every_level() {
    for sector in [512u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let size = 24 << 20;
        let (paths, models) = build_chain(dir.path(), 5, sector, size, &[1 << 20, 2 << 20, 4 << 20]);
        for (p, m) in paths.iter().zip(&models) {
            let d = Disk::open(p).unwrap();
            assert_eq!(d.logical_sector_size(), sector);
            assert_eq!(&read_all(&d), m, "{} with {sector}-byte sectors", p.display());
        }
        let leaf = Disk::open(paths.last().unwrap()).unwrap();
        assert_eq!(leaf.chain_paths().len(), 6);
    }
}

#[test]
fn explicit_parent_reads_like_resolved_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, models) = build_chain(dir.path(), 2, 512, 8 << 20, &[1 << 20]);
    let base = Disk::open(&paths[0]).unwrap();
    let mid = OpenOptions::new().parent(base).open(&paths[1]).unwrap();
    let leaf = OpenOptions::new().parent(mid).open(&paths[2]).unwrap();
    assert_eq!(read_all(&leaf), models[2]);
    // The child alone holds exactly the logical sectors its own writes
    // touched (a partial sector is completed from the chain below when
    // written), each as the chain shows it; every other byte reads as zero.
    let alone = OpenOptions::new().without_parent().open(&paths[2]).unwrap();
    let mut expected = vec![0u8; models[2].len()];
    for (off, data) in child_writes(2) {
        let first = off / 512 * 512;
        let end = (off + data.len() as u64).div_ceil(512) * 512;
        expected[first as usize..end as usize].copy_from_slice(&models[2][first as usize..end as usize]);
    }
    // Distinctive: the level-2 writes are not zeros, and differ from the parent's view.
    assert!(expected.iter().filter(|&&b| b != 0).count() > 1 << 20);
    assert_ne!(models[1], models[2]);
    let got = read_all(&alone);
    let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(first_diff.is_none(), "the child alone differs from its own writes first at byte {first_diff:?}");
}

#[test]
fn modified_parent_breaks_linkage_missing_parent_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = build_chain(dir.path(), 1, 512, 4 << 20, &[1 << 20]);
    // Writing to the parent changes its DataWriteGuid: the child must refuse it.
    let mut base = Disk::open_writable(&paths[0]).unwrap();
    base.write_at(b"x", 0).unwrap();
    base.close().unwrap();
    let err = Disk::open(&paths[1]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentMismatch, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("level1.vhdx") && msg.contains("base.vhdx"), "{msg}");
    std::fs::remove_file(&paths[0]).unwrap();
    let err = Disk::open(&paths[1]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentNotFound, "{err}");
    assert!(err.to_string().contains("base.vhdx"), "{err}");
}

#[test]
fn qemu_reads_the_base_we_wrote_under_children() {
    // The base of a chain is an ordinary dynamic image: QEMU must agree.
    if std::process::Command::new("qemu-img").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "qemu-img is required under CI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (paths, models) = build_chain(dir.path(), 1, 512, 8 << 20, &[1 << 20]);
    let raw = dir.path().join("base.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(&paths[0])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&raw).unwrap(), models[0]);
}

/// Reads of a few sectors inside one block take the chain's fast path: they
/// jump past ancestors that hold nothing of the block and answer partly
/// present blocks from a summary of the bitmap. Checked here at many offsets
/// and lengths against the models, with every level sharing one block size
/// (so the jump tables are built), after writes through the open leaf, and
/// past the parent's end once the leaf has grown.
#[test]
fn small_reads_through_a_deep_chain_match_the_models() {
    for sector in [512u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let size = 24 << 20;
        let (paths, mut models) = build_chain(dir.path(), 6, sector, size, &[1 << 20]);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut next = || rng.next();
        let check = |d: &Disk, model: &[u8], next: &mut dyn FnMut() -> u64, what: &str| {
            for _ in 0..3000 {
                let len = [sector as u64, 4096, 1, 777, 64 << 10][(next() % 5) as usize];
                let max = d.virtual_size() - len;
                let off = if next() % 2 == 0 { next() % max } else { next() % max / sector as u64 * sector as u64 };
                let mut buf = vec![0u8; len as usize];
                d.read_at(&mut buf, off).unwrap();
                let want = &model[off as usize..(off + len) as usize];
                assert!(buf == want, "{what}: {len} bytes at {off} with {sector}-byte sectors");
            }
        };
        for (p, m) in paths.iter().zip(&models) {
            check(&Disk::open(p).unwrap(), m, &mut next, &p.display().to_string());
        }
        // Writes through the open leaf win over what the jump table says of
        // the ancestors.
        let leaf_model = models.last_mut().unwrap();
        let mut leaf = OpenOptions::new().writable(true).open(paths.last().unwrap()).unwrap();
        write_both(&mut leaf, leaf_model, (9 << 20) + 4096, &pattern(99, 8192));
        write_both(&mut leaf, leaf_model, (17 << 20) + 100, &pattern(98, 300));
        check(&leaf, leaf_model, &mut next, "leaf after writes");
        leaf.flush().unwrap();
        check(&leaf, leaf_model, &mut next, "leaf after flush");
        // Grown past its parent: the new range reads zeros.
        leaf.resize(size + (3 << 20), false).unwrap();
        leaf_model.resize((size + (3 << 20)) as usize, 0);
        check(&leaf, leaf_model, &mut next, "leaf after growing");
        leaf.close().unwrap();
    }
}

/// `vhdx::chain::map` against the test's own record of which level wrote
/// each sector: every run names the right image, every data run's file
/// offset holds the model's bytes in that image's file (read with plain file
/// I/O), zero runs are zeros, and a leaf grown past its parent reads zeros
/// there, decided by the parent. Alone, the leaf leaves its parent's ranges
/// at depth 1, not present.
#[test]
fn chain_map_names_the_image_and_file_offset_of_every_sector() {
    use crate::common::FileExt;
    use vhdx::chain::{self, ChainMapEntry};
    use vhdx::Extent;

    const MIB: u64 = 1 << 20;
    const SECTOR: u64 = 512;
    let tmp = tempfile::tempdir().unwrap();
    let (size, grown) = (8 * MIB, 12 * MIB);
    let mut model = vec![0u8; grown as usize];
    // Per sector: the level (0 = base) that holds it, if any.
    let mut holder: Vec<Option<usize>> = vec![None; (grown / SECTOR) as usize];

    let paths: Vec<PathBuf> = ["base", "mid", "leaf"].iter().map(|n| tmp.path().join(format!("{n}.vhdx"))).collect();
    let mut base = Disk::create(&paths[0], &CreateOptions::dynamic(size).block_size(MIB as u32)).unwrap();
    for (off, len, seed) in [(1000u64, 3 * MIB as usize, 1u64), (6 * MIB + 5, 100, 2)] {
        write_both(&mut base, &mut model, off, &pattern(seed, len));
        // A dynamic image allocates whole blocks.
        for block in off / MIB..=(off + len as u64 - 1) / MIB {
            for s in block * MIB / SECTOR..(block + 1) * MIB / SECTOR {
                holder[s as usize] = Some(0);
            }
        }
    }
    base.close().unwrap();
    let writes: [&[(u64, usize)]; 2] = [
        &[(700, 3000), (2 * MIB - 10, 2 << 20 | 20), (7 * MIB, 513)],
        &[(0, 1), (MIB + 4096, 8192), (3 * MIB, 512), (10 * MIB + 3, 1000)],
    ];
    for level in 1..=2 {
        let mut d = Disk::create_differencing(&paths[level], &paths[level - 1], Some(MIB as u32)).unwrap();
        if level == 2 {
            d.resize(grown, false).unwrap();
        }
        for (i, &(off, len)) in writes[level - 1].iter().enumerate() {
            write_both(&mut d, &mut model, off, &pattern(10 * level as u64 + i as u64, len));
            // A differencing disk holds whole sectors.
            for s in off / SECTOR..=(off + len as u64 - 1) / SECTOR {
                holder[s as usize] = Some(level);
            }
        }
        d.close().unwrap();
    }

    let leaf = Disk::open(&paths[2]).unwrap();
    let runs = chain::map(&leaf).unwrap();
    let mut at = 0;
    for r in &runs {
        assert_eq!(r.offset, at, "runs are in order without gaps: {r:?}");
        assert!(r.length > 0 && r.length % SECTOR == 0, "{r:?}");
        at += r.length;
        let range = r.offset as usize..(r.offset + r.length) as usize;
        for s in r.offset / SECTOR..(r.offset + r.length) / SECTOR {
            let want = match holder[s as usize] {
                Some(level) => (2 - level, true),
                // Nobody holds it: zeros decided by the base, or past the
                // parent's end by the leaf's parent.
                None if s * SECTOR >= size => (1, false),
                None => (2, false),
            };
            let got = (r.depth, matches!(r.extent, Extent::Data { .. }));
            assert_eq!(got, want, "sector {s} in {r:?}");
        }
        match r.extent {
            Extent::Data { file_offset } => {
                let mut bytes = vec![0u8; r.length as usize];
                std::fs::File::open(&paths[2 - r.depth]).unwrap().read_exact_at(&mut bytes, file_offset).unwrap();
                assert!(bytes == model[range], "the file bytes at {file_offset:#x} of level {} for {r:?}", 2 - r.depth);
            }
            Extent::Zero => assert!(model[range].iter().all(|&b| b == 0), "{r:?} reads zeros"),
            other => panic!("a chain opened whole leaves nothing to a parent: {other:?}"),
        }
    }
    assert_eq!(at, grown, "the runs cover the disk");
    // Neighbours that continue each other were joined.
    for w in runs.windows(2) {
        let continues = w[0].depth == w[1].depth
            && match (w[0].extent, w[1].extent) {
                (Extent::Data { file_offset: a }, Extent::Data { file_offset: b }) => a + w[0].length == b,
                (a, b) => a == b,
            };
        assert!(!continues, "{:?} and {:?} should be one run", w[0], w[1]);
    }
    drop(leaf);

    // The leaf alone: its own runs as above, the rest left to depth 1.
    let alone = OpenOptions::new().without_parent().open(&paths[2]).unwrap();
    for r in chain::map(&alone).unwrap() {
        let ChainMapEntry { offset, length, depth, extent } = r;
        for s in offset / SECTOR..(offset + length) / SECTOR {
            let own = holder[s as usize] == Some(2);
            let want = if own { (0, true) } else { (1, false) };
            assert_eq!((depth, matches!(extent, Extent::Data { .. })), want, "alone, sector {s}");
            if !own {
                assert_eq!(extent, Extent::Parent, "alone, sector {s}");
            }
        }
    }
}

/// A caller's resolver finds parents the locators' paths no longer reach:
/// a three-image chain whose base and middle were moved into another
/// directory opens through a resolver that looks there. It is asked once,
/// for the leaf's parent, at depth 1, with the leaf's path (the middle it
/// opens finds the base beside it by its own locator). Without it the open
/// fails, naming the parent.
#[test]
fn a_callers_resolver_finds_moved_parents_and_is_told_the_depth() {
    use std::sync::{Arc, Mutex};
    use vhdx::chain::FnResolver;
    let dir = tempfile::tempdir().unwrap();
    let (paths, models) = build_chain(dir.path(), 2, 512, 8 << 20, &[1 << 20]);
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for p in &paths[..2] {
        std::fs::rename(p, moved.join(p.file_name().unwrap())).unwrap();
    }
    let err = Disk::open(&paths[2]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentNotFound, "{err}");

    let asked: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let log = asked.clone();
    let into = moved.clone();
    let resolver = FnResolver(move |child: Option<&str>, loc: &vhdx::format::locator::ParentLocator, depth: usize| {
        log.lock().unwrap().push((child.unwrap_or("?").to_string(), depth));
        let name = loc.get(vhdx::format::locator::RELATIVE_PATH).unwrap().trim_start_matches(".\\").to_string();
        let path = into.join(&name);
        let d = OpenOptions::new().open(&path)?;
        Ok((d, path.display().to_string()))
    });
    let leaf = OpenOptions::new().resolver(Box::new(resolver)).open(&paths[2]).unwrap();
    assert!(read_all(&leaf) == models[2], "the leaf read through the resolved chain");
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "the resolver opens the leaf's parent, which finds its own: {asked:?}");
    assert_eq!(asked[0], (paths[2].display().to_string(), 1));
}
