//! Writing several sibling differencing disks back into their parent
//! (`vhdx::ops::siblings`): change sets at sector granularity, disjoint,
//! equal and conflicting overlaps, `prefer`, dry runs, preserved outsiders
//! and descendants, and what is refused.
//!
//! Every image has a raw reference file (`NAME.raw`) that received the same
//! writes (a differencing image's starts as a copy of its parent's), and a
//! model of the sectors it holds. Every view — the parent, each child, each
//! outsider and descendant — is compared with its reference before and after
//! each merge, and the expected conflicts, per-child byte counts and merged
//! content are computed from the references, sector by sector.

use crate::common::FileExt;
use std::collections::BTreeMap;
use std::path::PathBuf;

use vhdx::ops::siblings::{
    merge_siblings, plan_image_set, plan_merge_siblings, Conflict, Image, ImageSet, SiblingMergeOptions,
    SiblingMergeReport,
};
use vhdx::ops::tree::{examine, LinkStatus};
use vhdx::{CreateOptions, Disk, ErrorKind, OpenOptions};

/// Deterministic bytes (the xorshift stream the models were written with).
use crate::common::data::xorshift_pattern as pattern;
/// xorshift, for the random scenarios.
use crate::common::data::XorShift as Rng;

const SIZE: u64 = 8 << 20;
const BLOCK: u32 = 1 << 20;

/// A directory of images, each with its raw reference and held sectors.
struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sector: u64,
    /// Sectors each differencing image holds, by name.
    held: BTreeMap<String, Vec<bool>>,
}

impl Lab {
    /// `base.vhdx` with data in its first 3 MiB and around 6 MiB.
    fn new(sector: u32) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let lab = Lab { _dir: dir, root, sector: sector as u64, held: BTreeMap::new() };
        let opts = CreateOptions::dynamic(SIZE).block_size(BLOCK).logical_sector_size(sector);
        Disk::create(lab.p("base"), &opts).unwrap().close().unwrap();
        std::fs::File::create(lab.raw("base")).unwrap().set_len(SIZE).unwrap();
        let mut lab = lab;
        lab.write("base", &[(0, pattern(1, 3 << 20)), ((6 << 20) - 5000, pattern(2, 10_000))]);
        lab
    }

    fn p(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.vhdx"))
    }

    fn raw(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.raw"))
    }

    /// A differencing child of `parent` with 1 MiB blocks.
    fn child(&mut self, name: &str, parent: &str) {
        Disk::create_differencing(self.p(name), self.p(parent), Some(BLOCK)).unwrap().close().unwrap();
        std::fs::copy(self.raw(parent), self.raw(name)).unwrap();
        self.held.insert(name.to_string(), vec![false; (SIZE / self.sector) as usize]);
    }

    /// Writes into the image and its reference, in one session.
    fn write(&mut self, name: &str, writes: &[(u64, Vec<u8>)]) {
        let mut d = Disk::open_writable(self.p(name)).unwrap();
        let raw = std::fs::OpenOptions::new().write(true).open(self.raw(name)).unwrap();
        for (offset, data) in writes {
            d.write_at(data, *offset).unwrap();
            raw.write_all_at(data, *offset).unwrap();
            if let Some(held) = self.held.get_mut(name) {
                let (first, end) = (offset / self.sector, (offset + data.len() as u64).div_ceil(self.sector));
                held[first as usize..end as usize].iter_mut().for_each(|h| *h = true);
            }
        }
        d.close().unwrap();
    }

    fn reference(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.raw(name)).unwrap()
    }

    /// What the image presents, through its chain.
    fn view(&self, name: &str) -> Vec<u8> {
        let d = Disk::open(self.p(name)).unwrap();
        let mut v = vec![0u8; d.virtual_size() as usize];
        d.read_at(&mut v, 0).unwrap();
        v
    }

    /// Every named image presents its reference, and checks clean.
    fn check_views(&self, names: &[&str], when: &str) {
        for name in names {
            assert!(self.view(name) == self.reference(name), "{when}: {name} does not present its reference");
            let report = vhdx::check::check_file(&self.p(name)).unwrap();
            assert!(report.is_clean(), "{when}: {name}: {:?}", report.errors);
        }
    }

    /// The bytes of every file, by name: what "modifies nothing" compares.
    fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        crate::common::cli::files(&self.root)
    }

    /// The held sectors of `name` as byte ranges, coalesced.
    fn held_ranges(&self, name: &str) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (k, _) in self.held[name].iter().enumerate().filter(|(_, h)| **h) {
            let at = k as u64 * self.sector;
            match out.last_mut() {
                Some((s, l)) if *s + *l == at => *l += self.sector,
                _ => out.push((at, self.sector)),
            }
        }
        out
    }

    fn paths(&self, names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(|n| self.p(n)).collect()
    }
}

/// What a sibling merge of `children` into `base` must do, from the references.
struct Expected {
    conflicts: Vec<Conflict>,
    merged_view: Vec<u8>,
    bytes_merged: Vec<u64>,
    bytes_overridden: Vec<u64>,
    union: u64,
}

fn expected(lab: &Lab, children: &[&str], prefer: Option<usize>) -> Expected {
    let ss = lab.sector as usize;
    let views: Vec<Vec<u8>> = children.iter().map(|c| lab.reference(c)).collect();
    let mut merged_view = lab.reference("base");
    let mut bytes_merged = vec![0u64; children.len()];
    let mut bytes_overridden = vec![0u64; children.len()];
    let mut conflicts: Vec<Conflict> = Vec::new();
    let mut union = 0;
    for k in 0..(SIZE as usize / ss) {
        let holders: Vec<usize> = (0..children.len()).filter(|&i| lab.held[children[i]][k]).collect();
        if holders.is_empty() {
            continue;
        }
        union += ss as u64;
        let r = k * ss..(k + 1) * ss;
        let source = match prefer {
            Some(p) if holders.contains(&p) => p,
            _ => holders[0],
        };
        merged_view[r.clone()].copy_from_slice(&views[source][r.clone()]);
        bytes_merged[source] += ss as u64;
        if holders.iter().all(|&h| views[h][r.clone()] == views[holders[0]][r.clone()]) {
            continue;
        }
        let winner = prefer.filter(|p| holders.contains(p));
        if winner.is_some() {
            for &h in &holders {
                if views[h][r.clone()] != views[source][r.clone()] {
                    bytes_overridden[h] += ss as u64;
                }
            }
        }
        let at = (k * ss) as u64;
        match conflicts.last_mut() {
            Some(c) if c.offset + c.length == at && c.children == holders => c.length += ss as u64,
            _ => conflicts.push(Conflict { offset: at, length: ss as u64, children: holders, winner }),
        }
    }
    Expected { conflicts, merged_view, bytes_merged, bytes_overridden, union }
}

/// The report agrees with the expectation.
fn check_report(report: &SiblingMergeReport, e: &Expected, lab: &Lab, children: &[&str]) {
    assert_eq!(report.conflicts, e.conflicts, "conflicts");
    assert_eq!(report.bytes_merged, e.union, "bytes merged");
    assert_eq!(report.logical_sector_size as u64, lab.sector);
    for (i, c) in report.children.iter().enumerate() {
        assert_eq!(c.path, lab.p(children[i]));
        assert_eq!(c.bytes_held, lab.held_ranges(children[i]).iter().map(|r| r.1).sum::<u64>(), "{}", children[i]);
        assert_eq!(c.bytes_merged, e.bytes_merged[i], "bytes merged from {}", children[i]);
        assert_eq!(c.bytes_overridden, e.bytes_overridden[i], "bytes overridden in {}", children[i]);
    }
}

fn options(prefer: Option<PathBuf>, dry_run: bool) -> SiblingMergeOptions {
    SiblingMergeOptions::default().prefer(prefer).dry_run(dry_run)
}

/// After a merge: the parent and every child present the merged view, the
/// children are empty and link to the parent, and the references say so.
fn check_merged(lab: &Lab, children: &[&str], e: &Expected) {
    let parent_guid = Disk::open(lab.p("base")).unwrap().data_write_guid();
    std::fs::write(lab.raw("base"), &e.merged_view).unwrap();
    for c in children {
        std::fs::write(lab.raw(c), &e.merged_view).unwrap();
        let d = OpenOptions::new().without_parent().open(lab.p(c)).unwrap();
        assert_eq!(d.info().unwrap().allocated_blocks, 0, "{c} is empty");
        assert_eq!(d.change_set().unwrap(), vec![], "{c} holds nothing");
        let loc = d.parent_locator().unwrap();
        assert_eq!(loc.parent_linkage(), Some(parent_guid), "{c} links to the parent's new DataWriteGuid");
        assert_eq!(loc.parent_linkage2(), None, "{c}: no parent_linkage2 left");
    }
    let mut all = vec!["base"];
    all.extend_from_slice(children);
    lab.check_views(&all, "after the merge");
}

#[test]
fn change_sets_are_the_exact_sectors_written() {
    for sector in [512u32, 4096] {
        let mut lab = Lab::new(sector);
        let s = sector as u64;
        lab.child("a", "base");
        lab.write(
            "a",
            &[
                (0, pattern(3, 1)),                              // one byte: sector 0
                (3 * s + 5, pattern(4, 2 * s as usize)),         // sectors 3..=5
                ((1 << 20) - s - 1, pattern(5, s as usize + 2)), // across the block boundary
                (2 << 20, pattern(6, 1 << 20)),                  // a whole block
                (SIZE - 1, pattern(7, 1)),                       // the last sector
                (5 * s, pattern(8, 1)),                          // touching the run 3..=5
            ],
        );
        let d = OpenOptions::new().without_parent().open(lab.p("a")).unwrap();
        let expect = lab.held_ranges("a");
        assert_eq!(d.change_set().unwrap(), expect, "{sector}-byte sectors");
        assert_eq!(expect[0], (0, s));
        assert_eq!(expect[1], (3 * s, 3 * s));
        assert_eq!(expect[2], ((1 << 20) - 2 * s, 3 * s), "sectors on both sides of the boundary");
        // Through the chain, the same; a disk without a parent holds everything.
        assert_eq!(Disk::open(lab.p("a")).unwrap().change_set().unwrap(), expect);
        assert_eq!(Disk::open(lab.p("base")).unwrap().change_set().unwrap(), vec![(0, SIZE)]);
        lab.check_views(&["base", "a"], "change sets");
    }
}

#[test]
fn disjoint_children_all_reach_the_parent_and_outsiders_keep_their_view() {
    for sector in [512u32, 4096] {
        let mut lab = Lab::new(sector);
        let s = sector as u64;
        for name in ["a", "b", "outsider"] {
            lab.child(name, "base");
        }
        // a and b write neighbouring sectors of the same blocks, across a block boundary.
        lab.write("a", &[(8 * s, pattern(10, 3 * s as usize)), ((1 << 20) - 2 * s, pattern(11, 4 * s as usize))]);
        lab.write("b", &[(11 * s + 7, pattern(12, 2 * s as usize)), ((1 << 20) + 2 * s, pattern(13, 70_000))]);
        lab.write("b", &[((5 << 20) + 100, pattern(14, 1))]);
        lab.write("outsider", &[(9 * s, pattern(15, s as usize)), ((3 << 20) - 4096, pattern(16, 8192))]);
        lab.child("a-kid", "a");
        lab.write("a-kid", &[(12 * s, pattern(17, s as usize))]);
        let all = ["base", "a", "b", "outsider", "a-kid"];
        lab.check_views(&all, "before");
        let kids = ["a", "b"];
        let e = expected(&lab, &kids, None);
        assert!(e.conflicts.is_empty());
        let outsider_guid = Disk::open(lab.p("outsider")).unwrap().data_write_guid();
        let kid_guid = Disk::open(lab.p("a-kid")).unwrap().data_write_guid();
        let a_guid = Disk::open(lab.p("a")).unwrap().data_write_guid();
        let base_guid = Disk::open(lab.p("base")).unwrap().data_write_guid();

        let report = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(None, false)).unwrap();
        assert!(report.merged && !report.dry_run);
        check_report(&report, &e, &lab, &kids);
        assert!(report.children.iter().all(|c| c.view_changes));
        check_merged(&lab, &kids, &e);
        // The outsider and the descendant present what they did, keep their
        // DataWriteGuid, and link to their parents' new ones.
        lab.check_views(&["outsider", "a-kid"], "after the merge");
        let w = e.union;
        let preserved: BTreeMap<PathBuf, (PathBuf, u64)> =
            report.preserved.iter().map(|s| (s.path.clone(), (s.parent.clone(), s.bytes_copied))).collect();
        assert_eq!(preserved.len(), 2, "{:?}", report.preserved);
        let outsider_own: u64 = lab.held_ranges("outsider").iter().map(|r| r.1).sum();
        let in_w_and_outsider: u64 = (0..(SIZE / s) as usize)
            .filter(|&k| lab.held["outsider"][k] && (lab.held["a"][k] || lab.held["b"][k]))
            .count() as u64
            * s;
        assert_eq!(preserved[&lab.p("outsider")], (lab.p("base"), w - in_w_and_outsider));
        assert!(outsider_own > 0);
        let a_changed: u64 = (0..(SIZE / s) as usize).filter(|&k| lab.held["b"][k] && !lab.held["a"][k]).count() as u64;
        let kid_holds: u64 = (0..(SIZE / s) as usize)
            .filter(|&k| lab.held["b"][k] && !lab.held["a"][k] && lab.held["a-kid"][k])
            .count() as u64;
        assert_eq!(preserved[&lab.p("a-kid")], (lab.p("a"), (a_changed - kid_holds) * s));
        assert_eq!(Disk::open(lab.p("outsider")).unwrap().data_write_guid(), outsider_guid);
        assert_eq!(Disk::open(lab.p("a-kid")).unwrap().data_write_guid(), kid_guid);
        let new_a = Disk::open(lab.p("a")).unwrap().data_write_guid();
        assert_ne!(new_a, a_guid, "a's view changed, so did its DataWriteGuid");
        // Fresh GUIDs, never the nil one (which any image could claim).
        let new_base = Disk::open(lab.p("base")).unwrap().data_write_guid();
        assert_ne!(new_base, base_guid, "the parent's view changed, so did its DataWriteGuid");
        assert!(!new_base.is_nil() && !new_a.is_nil(), "a nil DataWriteGuid: base {new_base}, a {new_a}");
        assert_ne!(new_base, new_a);
        for (name, parent) in [("outsider", "base"), ("a-kid", "a")] {
            let node = examine(&lab.p(name));
            assert_eq!(node.status, LinkStatus::Ok, "{name}");
            let d = OpenOptions::new().without_parent().open(lab.p(name)).unwrap();
            let parent_guid = Disk::open(lab.p(parent)).unwrap().data_write_guid();
            assert_eq!(d.parent_locator().unwrap().parent_linkage(), Some(parent_guid));
            assert_eq!(d.parent_locator().unwrap().parent_linkage2(), None);
        }
    }
}

#[test]
fn equal_overlaps_are_not_conflicts() {
    for sector in [512u32, 4096] {
        let mut lab = Lab::new(sector);
        let s = sector as u64;
        lab.child("a", "base");
        lab.child("b", "base");
        let same = pattern(20, 3 * s as usize + 300);
        let at = (1 << 20) - s - 100; // across a block boundary, not sector aligned
        lab.write("a", &[(at, same.clone()), (7 * s, pattern(21, s as usize))]);
        lab.write("b", &[(at, same), ((4 << 20) + 3, pattern(22, 10))]);
        // Sub-sector writes that leave the same sector in both: the rest of
        // it comes from the parent in each.
        let x = pattern(23, 2);
        lab.write("a", &[(9 * s + 2, x.clone())]);
        let base = lab.reference("base");
        let mut y = vec![base[9 * s as usize + 1]];
        y.extend_from_slice(&x);
        lab.write("b", &[(9 * s + 1, y)]);
        let kids = ["a", "b"];
        let e = expected(&lab, &kids, None);
        assert!(e.conflicts.is_empty(), "equal bytes everywhere they overlap");
        let report = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(None, false)).unwrap();
        check_report(&report, &e, &lab, &kids);
        assert!(report.conflicts.is_empty());
        assert!(report.children[1].bytes_merged < report.children[1].bytes_held, "the overlap counts for a");
        check_merged(&lab, &kids, &e);
    }
}

/// a, b and c overlap: a and b equal in most of their overlap but not in
/// scattered sectors (one across a block boundary), c against a only.
fn conflicting_lab(sector: u32) -> Lab {
    let mut lab = Lab::new(sector);
    let s = sector as u64;
    for name in ["a", "b", "c", "outsider"] {
        lab.child(name, "base");
    }
    let region = ((1 << 20) - 8 * s, pattern(30, 16 * s as usize));
    lab.write("a", &[region.clone(), (3 << 20, pattern(31, 4096))]);
    lab.write("b", &[region]);
    lab.write(
        "b",
        &[
            ((1 << 20) - 6 * s, pattern(32, s as usize)),
            ((1 << 20) - s + 9, pattern(33, 2 * s as usize - 18)), // two sectors, one each side of the boundary
            ((1 << 20) + 5 * s, pattern(34, 2)),
            ((6 << 20) + 5, pattern(35, 77)),
        ],
    );
    lab.write("c", &[((3 << 20) + 1000, pattern(36, 5000)), ((1 << 20) + 6 * s, pattern(37, s as usize))]);
    lab.write("outsider", &[((3 << 20) + 2048, pattern(38, 4096))]);
    lab
}

/// The refusal lists up to 1000 conflicting ranges; past that it says how
/// many more there are. Two children hold the same 1 MiB-and-more region,
/// with every other sector different: exactly 1000 conflicts list all and
/// say nothing more; 1001 list 1000 and "and 1 more ranges".
#[test]
fn a_refusal_lists_a_thousand_conflicts_then_counts_the_rest() {
    for n in [1000usize, 1001] {
        let mut lab = Lab::new(512);
        lab.child("a", "base");
        lab.child("b", "base");
        let a = pattern(40, 2 * n * 512);
        let mut b = a.clone();
        for k in 0..n {
            let at = (2 * k + 1) * 512;
            b[at..at + 512].iter_mut().for_each(|x| *x ^= 0xFF);
        }
        lab.write("a", &[(1 << 20, a)]);
        lab.write("b", &[(1 << 20, b)]);
        let err = merge_siblings(&lab.p("base"), &lab.paths(&["a", "b"]), &options(None, false)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{n} range(s)")), "{n}: {}", &msg[..300.min(msg.len())]);
        let listed = msg.matches(" differ at bytes ").count();
        assert_eq!(listed, 1000, "{n} conflicts");
        assert_eq!(msg.contains("and 1 more ranges"), n == 1001, "{n} conflicts");
        assert!(!msg.contains("and 0 more"), "{n} conflicts");
    }
}

#[test]
fn conflicts_refuse_list_every_range_and_modify_nothing() {
    for sector in [512u32, 4096] {
        let lab = conflicting_lab(sector);
        let kids = ["a", "b", "c"];
        let all = ["base", "a", "b", "c", "outsider"];
        lab.check_views(&all, "before");
        let e = expected(&lab, &kids, None);
        assert!(e.conflicts.len() >= 5, "{:?}", e.conflicts);
        assert!(e.conflicts.iter().any(|c| c.children == [0, 1, 2]), "a three-way conflict: {:?}", e.conflicts);
        let before = lab.files();

        let plan = plan_merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(None, false)).unwrap();
        check_report(plan.report(), &e, &lab, &kids);
        assert_eq!(plan.report().unresolved().count(), e.conflicts.len());
        let err = plan.execute().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        let msg = err.to_string();
        assert!(msg.contains("base.vhdx") && msg.contains("nothing was modified"), "{msg}");
        for c in &e.conflicts {
            assert!(msg.contains(&format!("at bytes {:#x}..{:#x}", c.offset, c.offset + c.length)), "{msg}");
        }
        assert_eq!(lab.files(), before, "a refused merge modifies nothing");
        let err = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(None, false)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert_eq!(lab.files(), before);

        // A dry run reports the same and modifies nothing.
        let report = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(None, true)).unwrap();
        assert!(report.dry_run && !report.merged);
        check_report(&report, &e, &lab, &kids);
        assert_eq!(lab.files(), before, "a dry run modifies nothing");

        // b preferred: the a/c conflicts do not involve it, so still refused.
        let prefer_b = options(Some(lab.p("b")), false);
        let e_b = expected(&lab, &kids, Some(1));
        assert!(e_b.conflicts.iter().any(|c| c.winner.is_none()));
        let err = merge_siblings(&lab.p("base"), &lab.paths(&kids), &prefer_b).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("b.vhdx holds none of these sectors"), "{err}");
        assert_eq!(lab.files(), before);
        lab.check_views(&all, "after the refusals");
    }
}

#[test]
fn prefer_decides_every_conflict_it_takes_part_in() {
    for sector in [512u32, 4096] {
        let lab = conflicting_lab(sector);
        // a, preferred, is not the first: equal overlaps count for the first
        // holder, conflicts for a.
        let kids = ["c", "a", "b"];
        let e = expected(&lab, &kids, Some(1));
        assert!(e.conflicts.iter().all(|c| c.winner == Some(1)), "a takes part in every conflict");
        let before = lab.files();
        let dry = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(Some(lab.p("a")), true)).unwrap();
        check_report(&dry, &e, &lab, &kids);
        assert_eq!(dry.preferred, Some(1));
        assert_eq!(lab.files(), before, "a dry run modifies nothing");

        let report = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(Some(lab.p("a")), false)).unwrap();
        check_report(&report, &e, &lab, &kids);
        assert!(report.children[0].bytes_overridden > 0 && report.children[2].bytes_overridden > 0);
        assert_eq!(report.children[1].bytes_overridden, 0);
        assert_eq!(report.preserved, dry.preserved);
        // The parent holds a's bytes wherever a wrote, and everyone's elsewhere.
        let a = lab.reference("a");
        let merged = &e.merged_view;
        for (at, len) in lab.held_ranges("a") {
            assert_eq!(merged[at as usize..(at + len) as usize], a[at as usize..(at + len) as usize]);
        }
        check_merged(&lab, &kids, &e);
        lab.check_views(&["outsider"], "after the merge");
    }
}

#[test]
fn random_sessions_against_the_model() {
    for seed in 1..=6u64 {
        let sector = if seed % 2 == 0 { 4096u32 } else { 512 };
        let s = sector as u64;
        let mut lab = Lab::new(sector);
        let mut rng = Rng(seed * 0x1234_5678_9ABC_DEF1);
        let names = ["s0", "s1", "s2", "other"];
        for n in names {
            lab.child(n, "base");
        }
        // s0 writes anywhere; s1 and s2 in separate halves, except s2's copies of s1's bytes.
        for (i, name) in names.iter().enumerate() {
            let mut writes = Vec::new();
            for w in 0..12 {
                let len = match rng.below(4) {
                    0 => 1 + rng.below(3 * s) as usize,
                    1 => rng.below(200_000) as usize + 1,
                    _ => (1 + rng.below(8)) as usize * s as usize,
                };
                let (lo, hi) = match i {
                    1 => (0, SIZE / 2),
                    2 => (SIZE / 2, SIZE),
                    _ => (0, SIZE),
                };
                let offset = lo + rng.below(hi - lo - len as u64);
                writes.push((offset, pattern(seed * 100 + i as u64 * 20 + w, len)));
            }
            lab.write(name, &writes);
        }
        let s1 = lab.reference("s1");
        for _ in 0..3 {
            let (offset, len) = (rng.below(SIZE / 2 / s - 64) * s, (1 + rng.below(64)) as usize * s as usize);
            lab.write("s2", &[(offset, s1[offset as usize..offset as usize + len].to_vec())]);
        }
        lab.child("s0-kid", "s0");
        lab.write("s0-kid", &[(rng.below(SIZE - 9000), pattern(seed + 7, 9000))]);
        let all = ["base", "s0", "s1", "s2", "other", "s0-kid"];
        lab.check_views(&all, "before");
        let kids = ["s1", "s0", "s2"];

        let e = expected(&lab, &kids, None);
        let before = lab.files();
        let plan = plan_merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(None, false)).unwrap();
        check_report(plan.report(), &e, &lab, &kids);
        if !e.conflicts.is_empty() {
            assert_eq!(plan.execute().unwrap_err().kind(), ErrorKind::Refused);
            assert_eq!(lab.files(), before, "seed {seed}");
        }
        let e = expected(&lab, &kids, Some(1));
        assert!(e.conflicts.iter().all(|c| c.winner == Some(1)), "seed {seed}: {:?}", e.conflicts);
        let report = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(Some(lab.p("s0")), false)).unwrap();
        check_report(&report, &e, &lab, &kids);
        check_merged(&lab, &kids, &e);
        lab.check_views(&["other", "s0-kid"], &format!("seed {seed}, after the merge"));
    }
}

#[test]
fn nothing_to_merge_modifies_nothing() {
    let mut lab = Lab::new(512);
    lab.child("a", "base");
    lab.child("b", "base");
    let before = lab.files();
    let report = merge_siblings(&lab.p("base"), &lab.paths(&["a", "b"]), &options(None, false)).unwrap();
    assert!(report.merged);
    assert_eq!(report.bytes_merged, 0);
    assert!(report.children.iter().all(|c| !c.view_changes && c.bytes_held == 0));
    assert_eq!(lab.files(), before);
}

#[test]
fn what_is_not_a_sibling_merge_is_refused_and_modifies_nothing() {
    let mut lab = Lab::new(512);
    lab.child("a", "base");
    lab.child("b", "base");
    lab.write("a", &[(0, pattern(40, 4096))]);
    lab.write("b", &[(8192, pattern(41, 4096))]);
    lab.child("a-kid", "a");
    Disk::create(lab.p("plain"), &CreateOptions::dynamic(SIZE).block_size(BLOCK)).unwrap().close().unwrap();
    let before = lab.files();
    let base = lab.p("base");
    let cases: Vec<(Vec<PathBuf>, Option<PathBuf>, ErrorKind, &str)> = vec![
        (vec![], None, ErrorKind::InvalidArgument, "at least one child"),
        (lab.paths(&["a", "a-kid"]), None, ErrorKind::InvalidArgument, "a-kid.vhdx"),
        (lab.paths(&["a", "a"]), None, ErrorKind::InvalidArgument, "named twice"),
        (lab.paths(&["a", "base"]), None, ErrorKind::InvalidArgument, "the parent itself"),
        (lab.paths(&["a", "plain"]), None, ErrorKind::InvalidArgument, "plain.vhdx"),
        (lab.paths(&["a", "b"]), Some(lab.p("a-kid")), ErrorKind::InvalidArgument, "not one of the children"),
    ];
    for (children, prefer, kind, needle) in cases {
        let err = merge_siblings(&base, &children, &options(prefer, false)).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(lab.files(), before);
    }
    // A child whose parent changed after it was made: its link is broken.
    lab.write("base", &[(1 << 20, pattern(42, 512))]);
    let before = lab.files();
    let err = merge_siblings(&base, &lab.paths(&["a", "b"]), &options(None, false)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentMismatch, "{err}");
    assert!(err.to_string().contains("a.vhdx"), "{err}");
    assert_eq!(lab.files(), before);
}

#[test]
fn the_plan_is_refused_when_an_image_changed_since() {
    let mut lab = Lab::new(512);
    lab.child("a", "base");
    lab.child("b", "base");
    lab.write("a", &[(0, pattern(50, 4096))]);
    // A plan of files holds them locked until it is dropped: nobody else
    // writes to them in between (this process included).
    let plan = plan_merge_siblings(&lab.p("base"), &lab.paths(&["a", "b"]), &options(None, false)).unwrap();
    for name in ["base", "a", "b"] {
        let err = Disk::open_writable(lab.p(name)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{name}: {err}");
    }
    drop(plan);
    // Images opened some other way (here: by path, locked only while each
    // open lasts) may change between the plan and its execution: that is
    // noticed.
    let image = |name: &str| {
        let path = lab.p(name);
        Image::new(path.clone(), move |o: OpenOptions| o.open(&path))
    };
    let set = ImageSet {
        parent: image("base"),
        children: vec![image("a"), image("b")],
        outsiders: Vec::new(),
        descendants: Vec::new(),
        guid_source: None,
    };
    let plan = plan_image_set(set, None).unwrap();
    lab.write("b", &[(8192, pattern(51, 4096))]);
    let before = lab.files();
    let err = plan.execute().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("b.vhdx") && err.to_string().contains("changed since"), "{err}");
    // Refused at its first step: nothing else was touched.
    assert_eq!(lab.files(), before);
    lab.check_views(&["base", "a", "b"], "after the refusal");
}

#[test]
fn prefer_names_a_child_by_another_spelling_of_its_path() {
    let mut lab = Lab::new(512);
    lab.child("a", "base");
    lab.child("b", "base");
    lab.write("a", &[(0, pattern(60, 4096))]);
    lab.write("b", &[(0, pattern(61, 4096))]);
    let kids = ["a", "b"];
    let e = expected(&lab, &kids, Some(1));
    let dotted = lab.root.join(".").join("b.vhdx");
    let report = merge_siblings(&lab.p("base"), &lab.paths(&kids), &options(Some(dotted), false)).unwrap();
    assert_eq!(report.preferred, Some(1));
    check_merged(&lab, &kids, &e);
}
