//! Merges interrupted on real files — killed after some write, or out of
//! space — and what comes after: every image opens and presents its old
//! view (or, for the changed images, old or merged sector by sector); the
//! same merge run again finishes it; `check` names it; `check --repair`
//! finishes or rolls it back; other merges of its images wait for it.
//! Every view is compared with byte-array models built from the writes that
//! made the tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vhdx::io::FileOpener;
use vhdx::ops::merge::{interrupted_merge, merge, MergeOptions, SiblingPolicy};
use vhdx::{CreateOptions, Disk, ErrorKind, FileStorage, IoError, OpenOptions, Storage};

/// Deterministic non-zero bytes (the stream the models were written with).
use crate::common::data::xorshift_pattern_nonzero as pattern;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 4 * MIB;
const SECTOR: usize = 512;

/// A tree of images on disk with the model of every view, before the merge
/// of `child` (depth 1: into `base`; depth 2: through `mid`) and after it.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    depth: usize,
    names: Vec<&'static str>,
    before: Vec<Vec<u8>>,
    after: Vec<Vec<u8>>,
    /// The target and the intermediates.
    changed: Vec<&'static str>,
}

/// An image to make: its name, its parent, and the writes into it.
type Spec = (&'static str, Option<&'static str>, Vec<(u64, usize)>);

/// A directory on a memory filesystem when there is one: the tests flush a lot.
fn scratch() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

impl Tree {
    fn new(depth: usize) -> Tree {
        let m = MIB;
        let parent = if depth == 2 { "mid" } else { "base" };
        let mut specs: Vec<Spec> = vec![("base", None, vec![(0, 300_000), (3 * m + 4096, 300_000)])];
        if depth == 2 {
            specs.push(("mid", Some("base"), vec![(m - 5000, 9000), (2 * m + 100, 40_000)]));
        }
        specs.push(("child", Some(parent), vec![(m - 1000, 5000), (2 * m + 77, 70_000), (4 * m - 9000, 9000)]));
        specs.push(("gkid", Some("child"), vec![(10, 100), (2 * m + 50_000, 4096)]));
        specs.push(("sib", Some(parent), vec![(m, 2048), (2 * m + 40_000, 60_000)]));
        specs.push(("sibkid", Some("sib"), vec![(2 * m + 60_000, 100)]));
        if depth == 2 {
            specs.push(("sib2", Some("base"), vec![(m - 4000, 8000)]));
        }
        let dir = scratch();
        let root = dir.path().canonicalize().unwrap();
        let mut names = Vec::new();
        let mut before: Vec<Vec<u8>> = Vec::new();
        let mut held: Vec<Vec<bool>> = Vec::new();
        for (i, (name, parent, writes)) in specs.iter().enumerate() {
            let path = root.join(format!("{name}.vhdx"));
            let p = parent.map(|p| names.iter().position(|n| *n == p).unwrap());
            let mut d = match p {
                None => Disk::create(&path, &CreateOptions::dynamic(SIZE).block_size(MIB as u32)).unwrap(),
                Some(_) => {
                    Disk::create_differencing(&path, root.join(format!("{}.vhdx", parent.unwrap())), Some(MIB as u32))
                        .unwrap()
                }
            };
            let mut view = p.map_or_else(|| vec![0u8; SIZE as usize], |p| before[p].clone());
            let mut own = vec![false; SIZE as usize / SECTOR];
            for (j, &(at, len)) in writes.iter().enumerate() {
                let data = pattern((i * 10 + j) as u64 + 1, len);
                d.write_at(&data, at).unwrap();
                view[at as usize..at as usize + len].copy_from_slice(&data);
                own[at as usize / SECTOR..=(at as usize + len - 1) / SECTOR].fill(true);
            }
            d.close().unwrap();
            names.push(*name);
            before.push(view);
            held.push(own);
        }
        let idx = |n: &str| names.iter().position(|x| *x == n).unwrap();
        let chain: Vec<&'static str> = if depth == 2 { vec!["child", "mid", "base"] } else { vec!["child", "base"] };
        let mut merged = before[idx(chain[depth])].clone();
        let child_view = &before[idx("child")];
        for (x, sector) in merged.chunks_mut(SECTOR).enumerate() {
            if chain[..depth].iter().any(|n| held[idx(n)][x]) {
                sector.copy_from_slice(&child_view[x * SECTOR..(x + 1) * SECTOR]);
            }
        }
        let mut after = before.clone();
        for n in &chain {
            after[idx(n)] = merged.clone();
        }
        Tree { _dir: dir, root, depth, names, before, after, changed: chain[1..].to_vec() }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.vhdx"))
    }

    fn options(&self, policy: SiblingPolicy) -> MergeOptions {
        MergeOptions::default().depth(self.depth).siblings(policy)
    }

    fn view(&self, name: &str) -> vhdx::Result<Vec<u8>> {
        let d = Disk::open(self.p(name))?;
        let mut v = vec![0u8; SIZE as usize];
        d.read_at(&mut v, 0)?;
        Ok(v)
    }

    /// What a merge interrupted anywhere must leave.
    fn check_interrupted(&self, when: &str) {
        for (i, name) in self.names.iter().enumerate() {
            let got = self.view(name).unwrap_or_else(|e| panic!("{when}: {name} does not open: {e}"));
            if self.changed.contains(name) {
                for (x, g) in got.chunks(SECTOR).enumerate() {
                    let r = x * SECTOR..(x + 1) * SECTOR;
                    assert!(
                        g == &self.before[i][r.clone()] || g == &self.after[i][r],
                        "{when}: {name}: sector {x} is neither old nor merged"
                    );
                }
            } else {
                assert!(got == self.before[i], "{when}: {name} presents something else than before");
            }
        }
    }

    /// Every image presents `expected`, and nothing announces anything.
    fn check_views(&self, expected: &[Vec<u8>], when: &str) {
        for (i, name) in self.names.iter().enumerate() {
            let got = self.view(name).unwrap_or_else(|e| panic!("{when}: {name} does not open: {e}"));
            assert!(got == expected[i], "{when}: {name} differs from the model");
            let alone = OpenOptions::new().without_parent().open(self.p(name)).unwrap();
            let linkage2 = alone.parent_locator().and_then(|l| l.parent_linkage2());
            assert_eq!(linkage2, None, "{when}: {name} still announces a parent GUID");
        }
    }

    fn files(&self) -> Vec<Vec<u8>> {
        self.names.iter().map(|n| std::fs::read(self.p(n)).unwrap()).collect()
    }
}

/// Files that stop working after `limit` mutating operations, all of them
/// at once, as a killed process stops (what was written stays written).
#[derive(Clone)]
struct Kill {
    ops: Arc<AtomicU64>,
    limit: u64,
    dead: Arc<AtomicBool>,
}

struct Killable {
    file: FileStorage,
    kill: Kill,
}

impl Kill {
    fn after(limit: u64) -> Kill {
        Kill { ops: Arc::new(AtomicU64::new(0)), limit, dead: Arc::new(AtomicBool::new(false)) }
    }

    fn opener(&self) -> FileOpener {
        let kill = self.clone();
        FileOpener::new(move |path: &Path, writable| {
            if kill.dead.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("killed"));
            }
            Ok(Box::new(Killable { file: FileStorage::open(path, writable)?, kill: kill.clone() }) as Box<dyn Storage>)
        })
    }

    fn alive(&self) -> Result<(), IoError> {
        if self.dead.load(Ordering::SeqCst) {
            Err(std::io::Error::other("killed").into())
        } else {
            Ok(())
        }
    }

    fn mutate(&self) -> Result<(), IoError> {
        self.alive()?;
        if self.ops.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.dead.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("killed").into());
        }
        Ok(())
    }
}

impl Storage for Killable {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.kill.alive()?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.kill.mutate()?;
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.kill.alive()?;
        self.file.flush()
    }
    fn len(&self) -> Result<u64, IoError> {
        self.kill.alive()?;
        self.file.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.kill.mutate()?;
        self.file.set_len(len)
    }
}

/// The mutating operations a merge of a fresh tree makes.
fn operations(depth: usize, policy: SiblingPolicy) -> u64 {
    let t = Tree::new(depth);
    let kill = Kill::after(u64::MAX);
    merge(&t.p("child"), &t.options(policy).file_opener(Some(kill.opener()))).unwrap();
    kill.ops.load(Ordering::SeqCst)
}

/// A fresh tree whose merge was killed after `k` operations.
fn killed(depth: usize, policy: SiblingPolicy, k: u64) -> Tree {
    let t = Tree::new(depth);
    let kill = Kill::after(k);
    let r = merge(&t.p("child"), &t.options(policy).file_opener(Some(kill.opener())));
    assert!(r.is_err(), "killed after {k} operations, the merge reported success");
    t
}

/// A fresh depth-2 tree whose merge was killed at the first of `points`
/// that leaves it unfinished, with its target changed or not as
/// `target_changed` says.
fn killed_unfinished(policy: SiblingPolicy, points: impl Iterator<Item = u64>, target_changed: bool) -> Tree {
    points
        .map(|k| killed(2, policy, k))
        .find(|t| {
            let m = interrupted_merge(&t.p("child"), &MergeOptions::default()).unwrap();
            m.is_some_and(|m| m.target_changed == target_changed)
        })
        .unwrap_or_else(|| panic!("no kill point leaves the merge unfinished with target_changed {target_changed}"))
}

/// Up to `max` of `0..n`, first and last included.
fn spread(n: u64, max: u64) -> Vec<u64> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * (n - 1) / (max - 1)).collect()
}

#[test]
fn a_killed_merge_leaves_every_image_valid_and_a_rerun_finishes_it() {
    for depth in [1, 2] {
        let policy = SiblingPolicy::Preserve;
        let ops = operations(depth, policy);
        for k in spread(ops, 24) {
            let t = killed(depth, policy, k);
            let when = format!("depth {depth}, killed after {k} of {ops}");
            t.check_interrupted(&when);
            merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("{when}: the re-run: {e}"));
            t.check_views(&t.after, &when);
        }
    }
}

/// A `--force` merge through an intermediate, killed anywhere: the
/// siblings it breaks (children of the intermediate and of the target, and
/// their children) either present exactly their old view or are refused as
/// linked to a parent that changed, never something in between, because
/// each changed image takes its new DataWriteGuid before anything below it
/// changes. The re-run finishes the merge.
#[test]
fn a_killed_forced_merge_never_shows_a_broken_sibling_wrong_data() {
    let policy = SiblingPolicy::Force;
    let ops = operations(2, policy);
    let mut refused = 0;
    for k in spread(ops, 24) {
        let t = killed(2, policy, k);
        let when = format!("--force, killed after {k} of {ops}");
        for name in ["sib", "sibkid", "sib2"] {
            let i = t.names.iter().position(|n| *n == name).unwrap();
            match t.view(name) {
                Ok(got) => assert!(got == t.before[i], "{when}: {name} opens and presents something else than before"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{when}: {name}: {e}");
                    refused += 1;
                }
            }
        }
        merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("{when}: the re-run: {e}"));
        for name in ["child", "gkid", "mid", "base"] {
            let i = t.names.iter().position(|n| *n == name).unwrap();
            assert!(t.view(name).unwrap() == t.after[i], "{when}: {name} after the re-run");
        }
    }
    assert!(refused > 0, "no kill point left a broken sibling refused");
}

/// The last operations of a depth-2 merge link the child to the target: the
/// chain is then shorter than the depth, and a re-run must see that the
/// merge is done rather than go one level too far or fail.
#[test]
fn a_rerun_after_the_child_was_relinked_finds_the_merge_done() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    let mut relinked = 0;
    for k in (ops.saturating_sub(12)..ops).rev() {
        let t = killed(2, policy, k);
        let chain = Disk::open(t.p("child")).unwrap().chain_paths().len();
        relinked += (chain == 2) as u32;
        let when = format!("killed after {k} of {ops}, the child's chain {chain} images long");
        let before = t.files();
        let report = merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("{when}: the re-run: {e}"));
        assert!(report.target.ends_with("base.vhdx"), "{when}: merged into {}", report.target.display());
        t.check_views(&t.after, &when);
        if chain == 2 {
            assert_eq!(t.files(), before, "{when}: the re-run of a finished merge changed a file");
        }
    }
    assert!(relinked > 0, "no kill point left the child relinked");
}

#[test]
fn check_names_an_interrupted_merge_and_repair_ends_it() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    let (mut rolled_back, mut finished) = (0, 0);
    for k in spread(ops, 12).into_iter().skip(1) {
        let t = killed(2, policy, k);
        let when = format!("killed after {k} of {ops}");
        let notes = vhdx::check::check_file(&t.p("child")).unwrap().notes.join("\n");
        let recorded = notes.contains("unfinished merge");
        if recorded {
            assert!(notes.contains("base.vhdx") && notes.contains("--depth 2"), "{when}: {notes}");
        }
        // A sibling told its parent's next GUID says so, and whether the parent took it.
        let sib = vhdx::check::check_file(&t.p("sib")).unwrap().notes.join("\n");
        let announced =
            OpenOptions::new().without_parent().open(t.p("sib")).unwrap().parent_locator().unwrap().parent_linkage2();
        assert_eq!(announced.is_some(), sib.contains("parent_linkage2"), "{when}: {sib}");

        let repair = vhdx::check::repair_file(&t.p("child")).unwrap();
        let actions = repair.actions.join("\n");
        assert!(repair.after.is_clean(), "{when}: {:?}", repair.after);
        if actions.contains("rolled back") {
            rolled_back += 1;
            t.check_views(&t.before, &when);
            merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("{when}: merge after rollback: {e}"));
        } else if actions.contains("finished") {
            finished += 1;
        } else {
            assert!(!recorded, "{when}: check named an unfinished merge, repair did nothing: {actions}");
            merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("{when}: the re-run: {e}"));
        }
        t.check_views(&t.after, &when);
        let notes = vhdx::check::check_file(&t.p("child")).unwrap().notes.join("\n");
        assert!(!notes.contains("unfinished merge"), "{when}: {notes}");
    }
    assert!(rolled_back > 0 && finished > 0, "{rolled_back} rolled back, {finished} finished");
}

/// Files that refuse to grow past a limit (ENOSPC), for one image.
fn full_disk(victim: PathBuf, room: u64) -> FileOpener {
    struct Full {
        file: FileStorage,
        limit: u64,
    }
    impl Storage for Full {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
            self.file.read_exact_at(buf, offset)
        }
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
            if offset + buf.len() as u64 > self.limit {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull).into());
            }
            self.file.write_all_at(buf, offset)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.file.flush()
        }
        fn len(&self) -> Result<u64, IoError> {
            self.file.len()
        }
        fn set_len(&mut self, len: u64) -> Result<(), IoError> {
            if len > self.limit {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull).into());
            }
            self.file.set_len(len)
        }
    }
    FileOpener::new(move |path: &Path, writable| {
        let file = FileStorage::open(path, writable)?;
        let limit = if path.canonicalize()? == victim { file.len()? + room } else { u64::MAX };
        Ok(Box::new(Full { file, limit }) as Box<dyn Storage>)
    })
}

#[test]
fn out_of_space_mid_merge_fails_leaving_a_merge_a_rerun_finishes() {
    let policy = SiblingPolicy::Preserve;
    // The target fills up while receiving the data; a sibling while
    // receiving what it would lose.
    for (depth, victim, room) in [(1, "base", 0), (2, "base", MIB + MIB / 2), (1, "sib", 0), (2, "sib2", 0)] {
        let t = Tree::new(depth);
        let when = format!("depth {depth}, {victim} full after {room} more bytes");
        let opener = full_disk(t.p(victim), room);
        let err = merge(&t.p("child"), &t.options(policy).file_opener(Some(opener)))
            .expect_err(&format!("{when}: the merge succeeded"));
        assert_eq!(err.kind(), ErrorKind::Io, "{when}: {err}");
        t.check_interrupted(&when);
        merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("{when}: the re-run: {e}"));
        t.check_views(&t.after, &when);
    }
}

#[test]
fn while_a_merge_is_unfinished_other_merges_of_its_images_are_refused() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    // The last kill point before the target changes: the record is written,
    // every image linking to a changed one was told its next GUID.
    let t = killed_unfinished(policy, (1..ops).rev(), false);
    let before = t.files();
    for (name, opts) in [
        ("child", t.options(SiblingPolicy::Force)),
        ("child", t.options(policy).depth(1)),
        ("sib", t.options(policy).depth(1)),
        ("sib2", t.options(policy).depth(1)),
        ("gkid", t.options(policy).depth(1)),
    ] {
        let err = merge(&t.p(name), &opts).expect_err(&format!("merging {name} was not refused"));
        assert_eq!(err.kind(), ErrorKind::Refused, "{name}: {err}");
        assert_eq!(t.files(), before, "refusing to merge {name} changed a file");
    }
    let children = [t.p("sib")];
    let err = vhdx::ops::siblings::merge_siblings(&t.p("mid"), &children, &Default::default())
        .expect_err("a sibling merge into mid was not refused");
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert_eq!(t.files(), before);
    merge(&t.p("child"), &t.options(policy)).unwrap();
    t.check_views(&t.after, "finished");
}

/// An unfinished merge whose images are no longer those it recorded is not
/// resumed. Written to directly, the intermediate gets a new DataWriteGuid
/// and its child no longer opens (ParentMismatch); re-pointed (with
/// set-parent) at a byte-for-byte copy of the target, it keeps its GUIDs
/// but the target is another file: the re-run is refused, naming the
/// images as no longer those of the merge. Either way nothing changes.
#[test]
fn an_unfinished_merge_whose_images_changed_is_not_resumed() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    let t = killed_unfinished(policy, (1..ops).rev(), false);
    // What the record says, as the test built the tree: the child merged
    // with the intermediate into the base, the siblings kept.
    let m = interrupted_merge(&t.p("child"), &MergeOptions::default()).unwrap().unwrap();
    assert_eq!((m.child, m.target, m.depth), (t.p("child"), t.p("base"), 2));
    assert_eq!(m.merged, [t.p("child"), t.p("mid")]);
    let mut siblings = m.sibling_paths.clone();
    siblings.sort();
    assert_eq!(siblings, [t.p("sib"), t.p("sib2")]);
    let copy = t.copy();

    let mut mid = Disk::open_writable(t.p("mid")).unwrap();
    mid.write_at(&[0x77; 512], 0).unwrap();
    mid.close().unwrap();
    let before = t.files();
    let err = merge(&t.p("child"), &t.options(policy)).expect_err("the re-run resumed over a changed image");
    assert_eq!(err.kind(), ErrorKind::ParentMismatch, "{err}");
    assert_eq!(t.files(), before, "the refused re-run changed a file");

    let other = copy.root.join("base-copy.vhdx");
    std::fs::copy(copy.p("base"), &other).unwrap();
    vhdx::ops::merge::set_parent(&copy.p("mid"), &other, false).unwrap();
    let before = copy.files();
    let err = merge(&copy.p("child"), &copy.options(policy)).expect_err("the re-run resumed into another target");
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("no longer those of the unfinished merge"), "{err}");
    assert_eq!(copy.files(), before, "the refused re-run changed a file");
}

/// Killed before the target changes, a merge has told the target's other
/// child (sib2) the GUID the target is to take. `check --repair` of sib2
/// leaves that link alone while the target has not taken it (sib2 keeps
/// opening and presents what it did), and a re-run confined to the tree's
/// directory finishes the merge (one confined elsewhere is refused,
/// changing nothing); then repairing sib2 has nothing left to do.
#[test]
fn an_announced_link_waits_for_its_parent_and_a_confined_rerun_finishes() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    let t = killed_unfinished(policy, (1..ops).rev(), false);
    let sib2 = t.names.iter().position(|n| *n == "sib2").unwrap();
    let announced = OpenOptions::new().without_parent().open(t.p("sib2")).unwrap();
    assert!(announced.parent_locator().unwrap().parent_linkage2().is_some(), "sib2 was told the next GUID");
    drop(announced);
    let before = t.files();
    let repair = vhdx::check::repair_file(&t.p("sib2")).unwrap();
    assert!(repair.actions.is_empty(), "{:?}", repair.actions);
    assert_eq!(t.files(), before, "repairing sib2 changed a file");
    assert!(t.view("sib2").unwrap() == t.before[sib2], "sib2 no longer presents its view");

    let elsewhere = scratch();
    let refused = t.options(policy).confine_to(Some(vec![elsewhere.path().to_path_buf()]));
    merge(&t.p("child"), &refused).expect_err("a re-run confined elsewhere");
    assert_eq!(t.files(), before, "the refused re-run changed a file");
    merge(&t.p("child"), &t.options(policy).confine_to(Some(vec![t.root.clone()]))).unwrap();
    t.check_views(&t.after, "finished by a confined re-run");
    assert!(vhdx::check::repair_file(&t.p("sib2")).unwrap().actions.is_empty());

    // Killed after the target changed, the re-run works from the record
    // alone: confined elsewhere it is refused, in the tree it finishes.
    let t = killed_unfinished(policy, 1..ops, true);
    let before = t.files();
    let refused = t.options(policy).confine_to(Some(vec![elsewhere.path().to_path_buf()]));
    merge(&t.p("child"), &refused).expect_err("a re-run confined elsewhere");
    assert_eq!(t.files(), before, "the refused re-run changed a file");
    merge(&t.p("child"), &t.options(policy).confine_to(Some(vec![t.root.clone()]))).unwrap();
    t.check_views(&t.after, "finished from its record by a confined re-run");
}

/// A VM restarted on the child before the interrupted merge was run again:
/// the child took new writes (and a new DataWriteGuid). The re-run
/// finishes the merge with those writes in it: the child and the target
/// present the merged view plus the new bytes.
#[test]
fn a_child_written_after_an_interrupted_merge_is_merged_with_its_new_bytes() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    for after_target in [false, true] {
        let t = killed_unfinished(policy, 1..ops, after_target);
        let data = pattern(99, 3 * SECTOR);
        let at = 3 * MIB + 512;
        let mut child = Disk::open_writable(t.p("child")).unwrap();
        child.write_at(&data, at).unwrap();
        child.close().unwrap();
        merge(&t.p("child"), &t.options(policy)).unwrap_or_else(|e| panic!("target changed {after_target}: {e}"));
        for name in ["child", "base"] {
            let i = t.names.iter().position(|n| *n == name).unwrap();
            let mut expect = t.after[i].clone();
            expect[at as usize..at as usize + data.len()].copy_from_slice(&data);
            assert!(t.view(name).unwrap() == expect, "target changed {after_target}: {name}");
        }
    }
}

impl Tree {
    /// The tree's files copied into a directory of their own, with the same models.
    fn copy(&self) -> Tree {
        let dir = scratch();
        let root = dir.path().canonicalize().unwrap();
        for n in &self.names {
            std::fs::copy(self.p(n), root.join(format!("{n}.vhdx"))).unwrap();
        }
        Tree {
            _dir: dir,
            root,
            depth: self.depth,
            names: self.names.clone(),
            before: self.before.clone(),
            after: self.after.clone(),
            changed: self.changed.clone(),
        }
    }
}

/// Regression: the merge record named the images by absolute path, so a
/// tree copied elsewhere (a backup, a VM's folder copied) with an interrupted
/// merge was repaired by working on the images it was copied from: `check
/// --repair` of the copy rolled back or finished the original's merge —
/// writing into files it was not given — and left the copy's siblings
/// announcing a GUID and its child linked to a GUID its parent no longer
/// had; a tree moved as a whole could not be finished at all. The record's
/// paths are now relative to the child's directory.
#[test]
fn an_interrupted_merge_copied_or_moved_with_its_tree_ends_there() {
    let policy = SiblingPolicy::Preserve;
    let ops = operations(2, policy);
    let (mut rolled_back, mut finished) = (0, 0);
    for k in spread(ops, 10).into_iter().skip(1) {
        let original = killed(2, policy, k);
        let when = format!("killed after {k} of {ops}");
        let files = original.files();
        // Copied: check --repair of the copy, then the merge in the copy.
        let copy = original.copy();
        let repair = vhdx::check::repair_file(&copy.p("child")).unwrap_or_else(|e| panic!("{when}: repair: {e}"));
        let actions = repair.actions.join("\n");
        assert!(repair.after.is_clean(), "{when}: {:?}", repair.after);
        if actions.contains("rolled back") {
            rolled_back += 1;
            copy.check_views(&copy.before, &format!("{when}, the copy rolled back"));
        } else if actions.contains("finished") {
            finished += 1;
        }
        merge(&copy.p("child"), &copy.options(policy)).unwrap_or_else(|e| panic!("{when}: merging the copy: {e}"));
        copy.check_views(&copy.after, &format!("{when}, the copy"));
        assert!(original.files() == files, "{when}: repairing and merging the copy changed the original");
        // Moved: the original's directory renamed, then the merge run again there.
        let moved = copy_into_a_new_name(&original);
        merge(&moved.p("child"), &moved.options(policy)).unwrap_or_else(|e| panic!("{when}: the moved tree: {e}"));
        moved.check_views(&moved.after, &format!("{when}, the moved tree"));
    }
    assert!(rolled_back > 0 && finished > 0, "{rolled_back} rolled back, {finished} finished");
}

/// `t` moved to another directory: its files are no longer where they were.
fn copy_into_a_new_name(t: &Tree) -> Tree {
    let copy = t.copy();
    let dir = scratch();
    let root = dir.path().canonicalize().unwrap().join("moved");
    std::fs::rename(&copy.root, &root).unwrap();
    for n in &t.names {
        std::fs::remove_file(t.p(n)).unwrap();
    }
    Tree { _dir: dir, root, ..copy }
}
