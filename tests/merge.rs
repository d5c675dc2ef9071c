//! Merging differencing disks: every view checked against raw models before
//! and after, at depth 1 and 2, with siblings refused, preserved and broken.

use std::path::{Path, PathBuf};

use vhdx::ops::merge::{merge, set_parent, set_parent_through, MergeOptions, SiblingPolicy};
use vhdx::{CreateOptions, Disk, ErrorKind};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn view(p: &Path) -> Vec<u8> {
    let d = Disk::open(p).unwrap();
    let mut v = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new(sector: u32) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut base = Disk::create(
            root.join("base.vhdx"),
            &CreateOptions::dynamic(16 << 20).block_size(1 << 20).logical_sector_size(sector),
        )
        .unwrap();
        base.write_at(&pattern(1, 6 << 20), 0).unwrap();
        base.write_at(&pattern(2, 3333), (10 << 20) + 17).unwrap();
        base.close().unwrap();
        Tree { _dir: dir, root }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn child(&self, name: &str, parent: &str, writes: &[(u64, usize, u64)]) {
        let mut c = Disk::create_differencing(self.p(name), self.p(parent), Some(1 << 20)).unwrap();
        for &(off, len, seed) in writes {
            c.write_at(&pattern(seed, len), off).unwrap();
        }
        c.close().unwrap();
    }

    fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        v.sort();
        v
    }
}

fn opts(depth: usize, siblings: SiblingPolicy) -> MergeOptions {
    MergeOptions { depth, siblings, ..Default::default() }
}

#[test]
fn depth_one_merge_keeps_the_child_view_and_moves_data_to_the_parent() {
    for sector in [512u32, 4096] {
        let t = Tree::new(sector);
        t.child(
            "a.vhdx",
            "base.vhdx",
            &[(4096 * 3 + 512, 10_000, 10), ((2 << 20) - 100, 200, 11), (12 << 20, 1 << 20, 12)],
        );
        // A grandchild of the merged child must stay valid: the child's view does not change.
        t.child("a-kid.vhdx", "a.vhdx", &[(5 << 20, 4096, 13)]);
        let before_a = view(&t.p("a.vhdx"));
        let before_kid = view(&t.p("a-kid.vhdx"));
        let report = merge(&t.p("a.vhdx"), &opts(1, SiblingPolicy::Refuse)).unwrap();
        assert!(report.bytes_merged > 0);
        assert_eq!(view(&t.p("base.vhdx")), before_a, "target presents the child's former content");
        assert_eq!(view(&t.p("a.vhdx")), before_a, "child still presents the same content");
        assert_eq!(view(&t.p("a-kid.vhdx")), before_kid, "grandchild untouched and valid");
        let a = Disk::open(t.p("a.vhdx")).unwrap();
        assert_eq!(a.info().allocated_blocks, 0, "the merged child is empty");
        assert!(std::fs::metadata(t.p("a.vhdx")).unwrap().len() <= 8 << 20);
        assert!(vhdx::check::check_file(&t.p("a.vhdx")).unwrap().is_clean());
        assert!(vhdx::check::check_file(&t.p("base.vhdx")).unwrap().is_clean());
    }
}

#[test]
fn depth_two_merge_into_the_grandparent() {
    let t = Tree::new(512);
    t.child("mid.vhdx", "base.vhdx", &[(100, 5000, 20), (3 << 20, 2 << 20, 21)]);
    t.child("leaf.vhdx", "mid.vhdx", &[(1000, 100, 30), ((3 << 20) + 4096, 4096, 31), (15 << 20, 999, 32)]);
    let leaf_before = view(&t.p("leaf.vhdx"));
    merge(&t.p("leaf.vhdx"), &opts(2, SiblingPolicy::Refuse)).unwrap();
    assert_eq!(view(&t.p("base.vhdx")), leaf_before);
    assert_eq!(view(&t.p("leaf.vhdx")), leaf_before);
    assert_eq!(view(&t.p("mid.vhdx")), leaf_before, "an intermediate now presents the merged view");
    let leaf = Disk::open(t.p("leaf.vhdx")).unwrap();
    assert_eq!(leaf.chain_paths().len(), 2, "the leaf now links straight to the target");
}

#[test]
fn sibling_refused_by_default_and_nothing_changes() {
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 40)]);
    t.child("b.vhdx", "base.vhdx", &[(8192, 4096, 41)]);
    let before = t.files();
    let err = merge(&t.p("a.vhdx"), &opts(1, SiblingPolicy::Refuse)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("b.vhdx"), "{err}");
    assert_eq!(t.files(), before, "a refused merge modifies nothing");
}

#[test]
fn preserve_siblings_keeps_every_view_byte_for_byte() {
    for sector in [512u32, 4096] {
        let t = Tree::new(sector);
        // a and b overlap in places; b also writes where a does not.
        t.child("a.vhdx", "base.vhdx", &[(0, 1 << 20, 50), ((5 << 20) + 512, 70_000, 51), (14 << 20, 4096, 52)]);
        t.child("b.vhdx", "base.vhdx", &[(4096, 8192, 60), (5 << 20, 1 << 20, 61)]);
        t.child("b-kid.vhdx", "b.vhdx", &[(7 << 20, 512 * 3, 62)]);
        let (va, vb, vk) = (view(&t.p("a.vhdx")), view(&t.p("b.vhdx")), view(&t.p("b-kid.vhdx")));
        let report = merge(&t.p("a.vhdx"), &opts(1, SiblingPolicy::Preserve)).unwrap();
        assert_eq!(report.siblings.len(), 1);
        assert!(report.siblings[0].bytes_copied > 0);
        assert_eq!(view(&t.p("base.vhdx")), va);
        assert_eq!(view(&t.p("a.vhdx")), va);
        assert_eq!(view(&t.p("b.vhdx")), vb, "sibling preserved");
        assert_eq!(view(&t.p("b-kid.vhdx")), vk, "the sibling's own child still valid");
    }
}

#[test]
fn preserve_siblings_of_an_intermediate_at_depth_two() {
    let t = Tree::new(512);
    t.child("mid.vhdx", "base.vhdx", &[(0, 4096, 70)]);
    t.child("leaf.vhdx", "mid.vhdx", &[(4096, 4096, 71)]);
    t.child("other.vhdx", "mid.vhdx", &[(4096 * 5, 4096, 72)]);
    t.child("base-kid.vhdx", "base.vhdx", &[(4096 * 9, 4096, 73)]);
    let (vl, vo, vbk) = (view(&t.p("leaf.vhdx")), view(&t.p("other.vhdx")), view(&t.p("base-kid.vhdx")));
    let err = merge(&t.p("leaf.vhdx"), &opts(2, SiblingPolicy::Refuse)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("other.vhdx") && msg.contains("base-kid.vhdx"), "{msg}");
    let report = merge(&t.p("leaf.vhdx"), &opts(2, SiblingPolicy::Preserve)).unwrap();
    assert_eq!(report.siblings.len(), 2);
    assert_eq!(view(&t.p("leaf.vhdx")), vl);
    assert_eq!(view(&t.p("other.vhdx")), vo);
    assert_eq!(view(&t.p("base-kid.vhdx")), vbk);
}

#[test]
fn force_breaks_siblings_with_a_clear_linkage_error() {
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 80)]);
    t.child("b.vhdx", "base.vhdx", &[(8192, 4096, 81)]);
    let va = view(&t.p("a.vhdx"));
    let report = merge(&t.p("a.vhdx"), &opts(1, SiblingPolicy::Force)).unwrap();
    assert!(report.siblings_broken);
    assert_eq!(view(&t.p("a.vhdx")), va);
    let err = Disk::open(t.p("b.vhdx")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentMismatch);
    let msg = err.to_string();
    assert!(msg.contains("b.vhdx") && msg.contains("base.vhdx"), "{msg}");
    let tree = vhdx::ops::tree::scan_dir(&t.root).unwrap();
    let b = tree.iter().find(|n| n.path.ends_with("b.vhdx")).unwrap();
    assert_eq!(b.status.label(), "broken-linkage");
}

#[test]
fn set_parent_follows_a_moved_parent_and_refuses_a_stranger() {
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 90)]);
    let va = view(&t.p("a.vhdx"));
    std::fs::create_dir(t.p("moved")).unwrap();
    std::fs::rename(t.p("base.vhdx"), t.p("moved/base.vhdx")).unwrap();
    assert_eq!(Disk::open(t.p("a.vhdx")).unwrap_err().kind(), ErrorKind::ParentNotFound);
    set_parent(&t.p("a.vhdx"), &t.p("moved/base.vhdx"), false).unwrap();
    assert_eq!(view(&t.p("a.vhdx")), va);
    Disk::create(t.p("stranger.vhdx"), &CreateOptions::dynamic(16 << 20).block_size(1 << 20)).unwrap().close().unwrap();
    let err = set_parent(&t.p("a.vhdx"), &t.p("stranger.vhdx"), false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentMismatch);
    set_parent(&t.p("a.vhdx"), &t.p("stranger.vhdx"), true).unwrap();
    let now = view(&t.p("a.vhdx"));
    assert_eq!(&now[..4096], &va[..4096], "the child's own sectors stay");
    assert!(now[4096..].iter().all(|&b| b == 0), "the rest now comes from the empty stranger");
}

/// `set_parent_through` opens every file through the caller's opener: here
/// a lock set that holds the child for a longer operation, which `set_parent`
/// (taking its own lock) is refused; the loop check goes through it too.
#[test]
fn set_parent_through_opens_through_the_callers_opener() {
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 91)]);
    t.child("g.vhdx", "a.vhdx", &[(8192, 512, 92)]);
    let va = view(&t.p("a.vhdx"));
    std::fs::copy(t.p("base.vhdx"), t.p("copy.vhdx")).unwrap();
    let locks = vhdx::io::LockSet::new();
    locks.lock(&t.p("a.vhdx"), true).unwrap();
    let err = set_parent(&t.p("a.vhdx"), &t.p("copy.vhdx"), false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    let before = t.files();
    let err = set_parent_through(&locks.opener(), &t.p("a.vhdx"), &t.p("g.vhdx"), true).unwrap_err();
    assert!(matches!(err, vhdx::Error::ParentLoop { .. }), "{err}");
    assert_eq!(t.files(), before, "the refused set-parent changed a file");
    set_parent_through(&locks.opener(), &t.p("a.vhdx"), &t.p("copy.vhdx"), false).unwrap();
    drop(locks);
    let a = Disk::open(t.p("a.vhdx")).unwrap();
    assert!(a.parent().and_then(|p| p.path()).is_some_and(|p| p.ends_with("copy.vhdx")));
    assert_eq!(view(&t.p("a.vhdx")), va);
}

#[test]
fn relative_child_path_still_finds_siblings_in_the_current_directory() {
    // Regression: a bare file name's parent() is "", which cannot be listed,
    // so siblings beside it went unseen and the merge broke them.
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 100)]);
    t.child("b.vhdx", "base.vhdx", &[(8192, 4096, 101)]);
    let before = t.files();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "relative_merge_helper", "--nocapture", "--ignored"])
        .env("VHDX_RELATIVE_MERGE_DIR", &t.root)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stdout));
    assert_eq!(t.files(), before, "the refused merge modified nothing");
}

/// Runs in its own process (it changes the current directory): a merge of a
/// relative child path must be refused because of the sibling.
#[test]
#[ignore = "helper of relative_child_path_still_finds_siblings_in_the_current_directory"]
fn relative_merge_helper() {
    let Some(dir) = std::env::var_os("VHDX_RELATIVE_MERGE_DIR") else { return };
    std::env::set_current_dir(dir).unwrap();
    let err = merge(Path::new("a.vhdx"), &opts(1, SiblingPolicy::Refuse)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("b.vhdx"), "{err}");
}

#[test]
fn confined_merge_refuses_parents_outside_the_allowed_directories() {
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 110)]);
    let elsewhere = tempfile::tempdir().unwrap();
    let options =
        MergeOptions { depth: 1, confine_to: Some(vec![elsewhere.path().to_path_buf()]), ..Default::default() };
    let before = t.files();
    let err = merge(&t.p("a.vhdx"), &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentNotFound, "{err}");
    assert!(err.to_string().contains("outside the allowed directories"), "{err}");
    assert_eq!(t.files(), before);
    let ok = MergeOptions { depth: 1, confine_to: Some(vec![t.root.clone()]), ..Default::default() };
    merge(&t.p("a.vhdx"), &ok).unwrap();
}

#[test]
fn set_parent_refuses_a_loop_with_a_typed_error_naming_both() {
    let t = Tree::new(512);
    t.child("a.vhdx", "base.vhdx", &[(0, 4096, 120)]);
    t.child("g.vhdx", "a.vhdx", &[(4096, 512, 121)]);
    let before = t.files();
    for (parent, ignore) in [("a.vhdx", true), ("g.vhdx", true), ("g.vhdx", false)] {
        let err = set_parent(&t.p("a.vhdx"), &t.p(parent), ignore).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(matches!(&err, vhdx::Error::ParentLoop { itself, .. } if *itself == (parent == "a.vhdx")), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&t.p("a.vhdx").display().to_string()), "{text}");
        assert!(text.contains(&t.p(parent).display().to_string()), "{text}");
        assert_eq!(t.files(), before, "a refused set-parent changes nothing");
    }
}
