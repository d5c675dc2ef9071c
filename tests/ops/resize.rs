//! Resize and compact of images that have children (issue 12, must-do 2 at
//! the level of one image): a resize changes what the children depend on,
//! so it is refused, naming them, unless forced; a compaction changes
//! nothing they see, so they keep opening. And a resize interrupted at any
//! point finishes when run again.

use std::path::{Path, PathBuf};
use std::process::Output;

use vhdx::io::{CrashState, FaultStorage};
use vhdx::ops::resize::{resize, ResizeOptions};
use vhdx::{CreateOptions, Disk, ErrorKind, MemStorage, OpenOptions, Storage};

use crate::common::{compare::sha256_file, data::pattern};

const MIB: u64 = 1 << 20;

/// `base ← child1 ← grandchild` and `base ← child2` in `dir`, 16 MiB; the
/// models of what each leaf presents (and of `child1`).
struct Tree {
    base: PathBuf,
    child1: PathBuf,
    child2: PathBuf,
    grandchild: PathBuf,
    models: Vec<(PathBuf, Vec<u8>)>,
}

fn tree(dir: &Path) -> Tree {
    let p = |n: &str| dir.join(n);
    let mut base_model = vec![0u8; 16 * MIB as usize];
    let put = |d: &mut Disk, m: &mut Vec<u8>, data: Vec<u8>, at: u64| {
        d.write_at(&data, at).unwrap();
        m[at as usize..at as usize + data.len()].copy_from_slice(&data);
    };
    let mut b = Disk::create(p("base.vhdx"), &CreateOptions::dynamic(16 * MIB).block_size(MIB as u32)).unwrap();
    put(&mut b, &mut base_model, pattern(1, 3 * MIB as usize), 0);
    put(&mut b, &mut base_model, vec![0u8; MIB as usize], 5 * MIB); // a block of zeros: compact releases it
    put(&mut b, &mut base_model, pattern(2, 4096), 9 * MIB);
    b.close().unwrap();
    let mut m1 = base_model.clone();
    let mut c1 = Disk::create_differencing(p("child1.vhdx"), p("base.vhdx"), Some(MIB as u32)).unwrap();
    put(&mut c1, &mut m1, pattern(3, 10_000), MIB + 100);
    put(&mut c1, &mut m1, vec![0u8; MIB as usize], 12 * MIB);
    c1.close().unwrap();
    let mut m2 = base_model.clone();
    let mut c2 = Disk::create_differencing(p("child2.vhdx"), p("base.vhdx"), Some(MIB as u32)).unwrap();
    put(&mut c2, &mut m2, pattern(4, 512), 9 * MIB + 512);
    c2.close().unwrap();
    let mut mg = m1.clone();
    let mut g = Disk::create_differencing(p("grandchild.vhdx"), p("child1.vhdx"), Some(MIB as u32)).unwrap();
    put(&mut g, &mut mg, pattern(5, 4096), 15 * MIB);
    g.close().unwrap();
    Tree {
        base: p("base.vhdx"),
        child1: p("child1.vhdx"),
        child2: p("child2.vhdx"),
        grandchild: p("grandchild.vhdx"),
        models: vec![
            (p("base.vhdx"), base_model),
            (p("child1.vhdx"), m1),
            (p("child2.vhdx"), m2),
            (p("grandchild.vhdx"), mg),
        ],
    }
}

/// Every image of the tree opens (through its chain) and presents its model.
fn assert_tree_intact(t: &Tree) {
    for (path, model) in &t.models {
        let d = Disk::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut buf = vec![0u8; model.len()];
        d.read_at(&mut buf, 0).unwrap();
        assert!(&buf == model, "{} presents other bytes", path.display());
    }
}

fn tool(dir: &Path, args: &[&str]) -> Output {
    crate::common::cli::run(dir, args)
}

#[test]
fn a_resize_that_would_break_children_is_refused_and_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(tmp.path());
    let before = sha256_file(&t.base);
    let e = resize(&t.base, 32 * MIB, &ResizeOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let text = e.to_string();
    assert!(text.contains("child1.vhdx") && text.contains("child2.vhdx"), "{text}");
    assert!(!text.contains("grandchild"), "the grandchild does not depend on base directly: {text}");
    assert_eq!(sha256_file(&t.base), before, "base changed");
    assert_tree_intact(&t);
    // The CLI: refused, both named, --force suggested; nothing changed.
    let out = tool(tmp.path(), &["resize", "base.vhdx", "--size", "32M"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("child1.vhdx") && stderr.contains("child2.vhdx") && stderr.contains("--force"), "{stderr}");
    assert_eq!(sha256_file(&t.base), before, "base changed");
    assert_tree_intact(&t);
    // A middle image: its child is named.
    let e = resize(&t.child1, 32 * MIB, &ResizeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("grandchild.vhdx"), "{e}");
    // Forced: done, and the children no longer open (as reported).
    let out = tool(tmp.path(), &["resize", "base.vhdx", "--size", "32M", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("child1.vhdx") && stdout.contains("child2.vhdx"), "{stdout}");
    assert_eq!(Disk::open(&t.base).unwrap().virtual_size(), 32 * MIB);
    for child in [&t.child1, &t.child2] {
        let e = Disk::open(child).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    }
}

/// A leaf differencing disk (no children of its own) resizes as before:
/// its old range presents the same bytes, the new one zeros.
#[test]
fn a_leaf_differencing_disk_resizes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(tmp.path());
    let r = resize(&t.child2, 24 * MIB, &ResizeOptions::default()).unwrap();
    assert!(r.children_broken.is_empty());
    let d = Disk::open(&t.child2).unwrap();
    assert_eq!(d.virtual_size(), 24 * MIB);
    let mut buf = vec![0u8; 24 * MIB as usize];
    d.read_at(&mut buf, 0).unwrap();
    assert!(buf[..16 * MIB as usize] == t.models[2].1[..], "the old range changed");
    assert!(buf[16 * MIB as usize..].iter().all(|&b| b == 0), "the new range is not zeros");
    drop(d);
    // The rest of the tree is untouched.
    let t2 = Tree { models: t.models[..2].iter().chain(&t.models[3..]).cloned().collect(), ..t };
    assert_tree_intact(&t2);
}

/// Compacting a parent or a middle image (blocks of zeros released, blocks
/// moved, the file cut) keeps its DataWriteGuid: its children keep opening
/// and presenting the same bytes. Through the library and the CLI.
#[test]
fn compacting_an_image_keeps_its_children_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(tmp.path());
    for (image, by_cli) in [(&t.base, false), (&t.child1, true)] {
        let guid = Disk::open(image).unwrap().data_write_guid();
        let size = std::fs::metadata(image).unwrap().len();
        if by_cli {
            let name = image.file_name().unwrap().to_str().unwrap();
            let out = tool(tmp.path(), &["compact", name]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            let r = vhdx::ops::compact::compact(image).unwrap();
            assert!(r.blocks_released > 0, "{r:?}");
        }
        assert!(std::fs::metadata(image).unwrap().len() < size, "{} did not shrink", image.display());
        assert_eq!(Disk::open(image).unwrap().data_write_guid(), guid, "{}: DataWriteGuid changed", image.display());
        assert_tree_intact(&t);
    }
    let _ = &t.grandchild;
}

/// A grow that moves the BAT and a shrink that discards data, crashed after
/// each of their storage operations: the image opens with the old size or
/// the new one, presenting the model, and the same resize run again
/// finishes it.
#[test]
fn an_interrupted_resize_finishes_when_run_again() {
    let guids = |seed: u64| -> vhdx::GuidSource {
        let mut n = 0u64;
        Box::new(move || {
            n += 1;
            vhdx::Guid::from_u128(((seed as u128) << 64) | n as u128)
        })
    };
    let opts = CreateOptions::dynamic(16 * MIB).block_size(MIB as u32);
    let mut d = Disk::create_on(Box::new(MemStorage::new()), &opts, Some(guids(1))).unwrap();
    let data = pattern(7, 6 * MIB as usize);
    d.write_at(&data, 9 * MIB).unwrap();
    let image = d.into_storage().unwrap();
    let mut initial = vec![0u8; image.len().unwrap() as usize];
    image.read_exact_at(&mut initial, 0).unwrap();
    let mut model = vec![0u8; 16 * MIB as usize];
    model[9 * MIB as usize..15 * MIB as usize].copy_from_slice(&data);
    // 200 GiB of 1 MiB blocks: the BAT outgrows its region and moves.
    for (new_size, shrink) in [(200u64 << 30, false), (12 * MIB, true)] {
        let run = |storage: FaultStorage| -> vhdx::Result<()> {
            let mut d = OpenOptions::new().writable(true).guid_source(guids(2)).open_storage(Box::new(storage))?;
            d.resize(new_size, shrink)?;
            d.close()
        };
        let counter = FaultStorage::from_vec(initial.clone());
        run(counter.clone()).unwrap();
        let ops = counter.mutating_ops();
        let mut states = 0;
        for k in 0..ops {
            let storage = FaultStorage::from_vec(initial.clone()).with_crash_after(k);
            assert!(run(storage.clone()).is_err(), "crashed at {k}, yet the resize reported success");
            for state in [CrashState::DurableOnly, CrashState::AllPending] {
                let what = format!("resize to {new_size}, crash after {k} of {ops}, {state:?}");
                let recovered = MemStorage::from_vec(storage.crash_image(&state));
                let mut d = OpenOptions::new()
                    .writable(true)
                    .guid_source(guids(3))
                    .open_storage(Box::new(recovered))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let size = d.virtual_size();
                assert!(size == 16 * MIB || size == new_size, "{what}: size {size}");
                let n = size.min(16 * MIB) as usize;
                let mut buf = vec![0u8; n];
                d.read_at(&mut buf, 0).unwrap();
                assert!(buf[..] == model[..n], "{what}: content");
                d.resize(new_size, shrink).unwrap_or_else(|e| panic!("{what}: the rerun failed: {e}"));
                assert_eq!(d.virtual_size(), new_size);
                d.read_at(&mut buf[..new_size.min(16 * MIB) as usize], 0).unwrap();
                assert!(buf[..new_size.min(16 * MIB) as usize] == model[..new_size.min(16 * MIB) as usize]);
                let file = d.into_storage().unwrap();
                let report = vhdx::check::check_storage(file).unwrap();
                assert!(report.is_clean(), "{what}: {:?}", report.errors);
                states += 1;
            }
        }
        assert!(states > 10, "{states}");
    }
}
