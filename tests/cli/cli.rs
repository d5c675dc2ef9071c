//! The command-line tool (`src/bin/vhdx`) as outside scripts use it: exit
//! status, the one `error: …` line on failure, `--json` output, and the
//! bytes every view presents (through `vhdx read`) before and after chain
//! operations, checked against models the test keeps itself.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::cli::{fails, json, ok, run, view};
/// Deterministic bytes (the xorshift stream the models were written with).
use crate::common::data::xorshift_pattern as pattern;

/// Writes `data` at `offset` of `file` through the tool, and into `model`
/// (the input file in `dir`, unlike `common::cli::write`).
fn write(dir: &Path, file: &str, offset: u64, data: &[u8], model: &mut [u8]) {
    let input = dir.join("input.bin");
    std::fs::write(&input, data).unwrap();
    ok(dir, &["write", file, "--offset", &offset.to_string(), "--input", input.to_str().unwrap()]);
    std::fs::remove_file(input).unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// The bytes of every file in `dir`, by name (not its subdirectories, unlike
/// `common::cli::files`).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

const SIZE: u64 = 8 << 20;

/// A base with data, and two children written differently; returns the
/// directory and the models of base, a and b. Names are relative to the
/// directory, where the tool runs.
fn base_and_two_children() -> (tempfile::TempDir, [Vec<u8>; 3]) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut base = vec![0u8; SIZE as usize];
    ok(d, &["create", "base.vhdx", "--size", "8M", "--block-size", "1M"]);
    write(d, "base.vhdx", 1000, &pattern(1, 3 << 20), &mut base);
    ok(d, &["create", "a.vhdx", "--parent", "base.vhdx", "--block-size", "1M"]);
    ok(d, &["create", "b.vhdx", "--parent", "base.vhdx"]);
    let (mut a, mut b) = (base.clone(), base.clone());
    write(d, "a.vhdx", 4096 + 7, &pattern(2, 100_000), &mut a);
    write(d, "a.vhdx", (6 << 20) - 3, &pattern(3, 5000), &mut a);
    write(d, "b.vhdx", 0, &pattern(4, 8192), &mut b);
    write(d, "b.vhdx", (2 << 20) + 512, &pattern(5, 70_000), &mut b);
    (tmp, [base, a, b])
}

#[test]
fn create_child_info_write_read_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (base, child) = (d.join("base.vhdx"), d.join("child.vhdx"));
    let (base_s, child_s) = (base.to_str().unwrap(), child.to_str().unwrap());
    let mut model = vec![0u8; SIZE as usize];
    ok(d, &["create", base_s, "--size", "8M", "--block-size", "1M", "--logical-sector-size", "4096"]);
    write(d, base_s, 511, &pattern(10, 1 << 20), &mut model);
    let base_model = model.clone();

    // Options a differencing disk takes from its parent are refused, and no file is left behind.
    fails(d, &["create", child_s, "--parent", base_s, "--type", "fixed"], &[child_s, "--type"]);
    fails(d, &["create", child_s, "--parent", base_s, "--logical-sector-size", "512"], &[child_s]);
    fails(d, &["create", child_s, "--parent", base_s, "--size", "16M"], &[child_s, base_s]);
    fails(d, &["create", child_s], &[child_s, "--size"]);
    assert!(!child.exists());
    ok(d, &["create", child_s, "--parent", base_s, "--size", "8M"]);
    fails(d, &["create", child_s, "--parent", base_s], &[child_s]);

    let info = json(d, &["info", child_s, "--json"]);
    assert_eq!(info["type"], "differencing");
    assert_eq!(info["virtual_size"], SIZE);
    assert_eq!(info["logical_sector_size"], 4096, "sector sizes come from the parent");
    assert_eq!(info["block_size"], 2 << 20, "2 MiB blocks by default");
    assert_eq!(info["parent"], base_s);
    assert_eq!(info["chain"], serde_json::json!([child_s, base_s]));
    assert!(info.get("parent_status").is_none());
    let base_info = json(d, &["info", base_s, "--json"]);
    assert_eq!(base_info["parent"], Value::Null);
    assert_eq!(base_info["chain"], serde_json::json!([base_s]));
    assert_eq!(
        info["parent_locator"]["parent_linkage"],
        format!("{{{}}}", base_info["data_write_guid"].as_str().unwrap())
    );
    let text = String::from_utf8(ok(d, &["info", child_s])).unwrap();
    assert!(text.contains(&format!("{child_s} -> {base_s}")), "{text}");

    assert_eq!(view(d, child_s), model, "a new child presents its parent");
    write(d, child_s, (3 << 20) + 5, &pattern(11, 1 << 20), &mut model);
    write(d, child_s, 0, &pattern(12, 4096), &mut model);
    assert_eq!(view(d, child_s), model);
    assert_eq!(view(d, base_s), base_model, "the parent is untouched");
    // An unaligned read across the child's own sectors and the parent's.
    let slice = ok(d, &["read", child_s, "--offset", "4000", "--length", "200"]);
    assert_eq!(slice, &model[4000..4200]);
}

#[test]
fn merge_is_refused_over_a_sibling_then_preserves_it() {
    let (tmp, [_, a, b]) = base_and_two_children();
    let d = tmp.path();
    let before = files(d);
    let line = fails(d, &["merge", "a.vhdx"], &["a.vhdx", "b.vhdx", "--preserve-siblings"]);
    assert!(line.contains("refused"), "{line}");
    assert_eq!(files(d), before, "a refused merge changes no byte of any file");
    fails(d, &["merge", "a.vhdx", "--depth", "2"], &["a.vhdx"]);
    assert_eq!(files(d), before);

    let report = json(d, &["merge", "a.vhdx", "--preserve-siblings", "--json"]);
    assert!(report["target"].as_str().unwrap().ends_with("base.vhdx"), "{report}");
    assert!(report["bytes_merged"].as_u64().unwrap() >= 100_000);
    let siblings = report["siblings"].as_array().unwrap();
    assert_eq!(siblings.len(), 1, "{report}");
    assert!(siblings[0]["path"].as_str().unwrap().ends_with("b.vhdx"));
    assert_eq!(siblings[0]["action"], "preserved");
    assert_eq!(siblings[0]["status"], "ok");
    assert!(siblings[0]["bytes_copied"].as_u64().unwrap() > 0);
    assert_eq!(report["siblings_broken"], false);

    assert_eq!(view(d, "a.vhdx"), a, "the merged child presents what it did");
    assert_eq!(view(d, "base.vhdx"), a, "the target now holds the child's view");
    assert_eq!(view(d, "b.vhdx"), b, "the sibling presents what it did");
    let forest = json(d, &["tree", ".", "--json"]);
    for node in forest["nodes"].as_array().unwrap() {
        assert!(["ok", "root"].contains(&node["status"].as_str().unwrap()), "{node}");
    }
    assert_eq!(forest["roots"].as_array().unwrap().len(), 1, "{forest}");
    let text = String::from_utf8(ok(d, &["merge", "b.vhdx", "--preserve-siblings"])).unwrap();
    assert!(text.contains("a.vhdx") && text.contains("preserved"), "{text}");
    assert_eq!(view(d, "a.vhdx"), a);
    assert_eq!(view(d, "b.vhdx"), b);
}

#[test]
fn search_dir_finds_siblings_elsewhere() {
    let (tmp, [_, a, _]) = base_and_two_children();
    let d = tmp.path();
    std::fs::create_dir(d.join("elsewhere")).unwrap();
    ok(d, &["create", "elsewhere/c.vhdx", "--parent", "base.vhdx"]);
    let mut c = view(d, "base.vhdx");
    write(d, "elsewhere/c.vhdx", 5 << 20, &pattern(6, 4096), &mut c);
    let before = files(d);
    fails(d, &["merge", "a.vhdx", "--preserve-siblings", "--force"], &[]);
    let line = fails(
        d,
        &["merge", "a.vhdx", "--search-dir", "elsewhere"],
        &["b.vhdx", &Path::new("elsewhere").join("c.vhdx").display().to_string()],
    );
    assert!(line.contains("refused"), "{line}");
    assert_eq!(files(d), before);
    let report = json(d, &["merge", "a.vhdx", "--preserve-siblings", "--search-dir", "elsewhere", "--json"]);
    assert_eq!(report["siblings"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(view(d, "a.vhdx"), a);
    assert_eq!(view(d, "elsewhere/c.vhdx"), c);
}

#[test]
fn force_breaks_the_sibling_and_tree_says_so() {
    let (tmp, [_, a, _]) = base_and_two_children();
    let d = tmp.path();
    let report = json(d, &["merge", "a.vhdx", "--force", "--json"]);
    assert_eq!(report["siblings_broken"], true);
    assert_eq!(report["siblings"][0]["action"], "forced");
    assert_eq!(report["siblings"][0]["status"], "broken-linkage");
    assert_eq!(view(d, "a.vhdx"), a);

    let forest = json(d, &["tree", ".", "--json"]);
    let node = |name: &str| {
        forest["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["path"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    let (base, na, nb) = (node("base.vhdx"), node("a.vhdx"), node("b.vhdx"));
    assert_eq!(base["status"], "root");
    assert_eq!(base["type"], "dynamic");
    assert_eq!(na["status"], "ok");
    assert_eq!(nb["status"], "broken-linkage");
    assert_eq!(nb["found_guid"], base["data_write_guid"]);
    assert_ne!(nb["expected_guid"], base["data_write_guid"]);
    assert!(nb["parent"].as_str().unwrap().ends_with("base.vhdx"));
    let children = base["children"].as_array().unwrap();
    assert_eq!(children.len(), 2, "the broken child is drawn under the file it names: {base}");
    let drawing = String::from_utf8(ok(d, &["tree", "."])).unwrap();
    assert!(drawing.lines().next().unwrap().starts_with("base.vhdx"), "{drawing}");
    assert!(drawing.contains("b.vhdx (differencing") && drawing.contains("[broken linkage: expects {"), "{drawing}");

    fails(d, &["read", "b.vhdx", "--offset", "0", "--length", "1"], &["b.vhdx", "base.vhdx"]);
    let info = json(d, &["info", "b.vhdx", "--json"]);
    assert_eq!(info["parent"], Value::Null);
    assert_eq!(info["parent_status"], "broken-linkage");
    assert_eq!(info["chain"], serde_json::json!(["b.vhdx"]));
    let chain = json(d, &["tree", "b.vhdx", "--json"]);
    assert_eq!(chain["nodes"][0]["status"], "broken-linkage");
    let chain = json(d, &["tree", "a.vhdx", "--json"]);
    assert_eq!(chain["chain"].as_array().unwrap().len(), 2);
    assert_eq!(chain["nodes"][1]["status"], "root");
}

#[test]
fn set_parent_follows_a_moved_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut model = vec![0u8; SIZE as usize];
    ok(d, &["create", "base.vhdx", "--size", "8M", "--block-size", "1M"]);
    write(d, "base.vhdx", 0, &pattern(20, 2 << 20), &mut model);
    ok(d, &["create", "a.vhdx", "--parent", "base.vhdx"]);
    write(d, "a.vhdx", 12345, &pattern(21, 9999), &mut model);
    std::fs::create_dir(d.join("moved")).unwrap();
    std::fs::rename(d.join("base.vhdx"), d.join("moved/base.vhdx")).unwrap();

    fails(d, &["read", "a.vhdx", "--offset", "0", "--length", "1"], &["a.vhdx", "base.vhdx"]);
    let info = json(d, &["info", "a.vhdx", "--json"]);
    assert_eq!(info["parent"], Value::Null);
    assert_eq!(info["parent_status"], "missing-parent");
    assert!(!info["parent_candidates"].as_array().unwrap().is_empty());
    let map = json(d, &["map", "a.vhdx", "--json"]);
    assert!(map.as_array().unwrap().iter().any(|r| r["depth"] == 1 && r["present"] == false), "{map}");

    ok(d, &["set-parent", "a.vhdx", "moved/base.vhdx"]);
    assert_eq!(view(d, "a.vhdx"), model);
    assert!(Path::new(json(d, &["info", "a.vhdx", "--json"])["parent"].as_str().unwrap()).ends_with("moved/base.vhdx"));

    // Another disk is not the parent: refused unless told, and then the child reads it.
    ok(d, &["create", "stranger.vhdx", "--size", "8M"]);
    let before = files(d);
    fails(d, &["set-parent", "a.vhdx", "stranger.vhdx"], &["a.vhdx", "stranger.vhdx"]);
    assert_eq!(files(d), before);
    ok(d, &["set-parent", "a.vhdx", "stranger.vhdx", "--ignore-id-mismatch"]);
    let now = view(d, "a.vhdx");
    assert_eq!(&now[12345..12345 + 9999], &model[12345..12345 + 9999], "the child's own sectors stay");
    assert!(now[..12288].iter().all(|&b| b == 0), "the rest comes from the empty stranger");
}

#[test]
fn convert_flattens_a_depth_three_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut model = vec![0u8; SIZE as usize];
    ok(d, &["create", "l0.vhdx", "--size", "8M", "--block-size", "1M"]);
    write(d, "l0.vhdx", 0, &pattern(30, 3 << 20), &mut model);
    write(d, "l0.vhdx", SIZE - 700, &pattern(31, 700), &mut model);
    for level in 1..=3u64 {
        let (parent, child) = (format!("l{}.vhdx", level - 1), format!("l{level}.vhdx"));
        ok(d, &["create", &child, "--parent", &parent, "--block-size", "1M"]);
        write(d, &child, level * 999_999, &pattern(32 + level, 300_000), &mut model);
        write(d, &child, (1 << 20) - level, &pattern(40 + level, 3), &mut model);
    }
    let info = json(d, &["info", "l3.vhdx", "--json"]);
    assert_eq!(info["chain"], serde_json::json!(["l3.vhdx", "l2.vhdx", "l1.vhdx", "l0.vhdx"]));

    ok(d, &["convert", "l3.vhdx", "flat.raw"]);
    assert_eq!(std::fs::read(d.join("flat.raw")).unwrap(), model, "the raw image is the leaf's view");
    ok(d, &["convert", "l3.vhdx", "flat.vhdx"]);
    let flat = json(d, &["info", "flat.vhdx", "--json"]);
    assert_eq!((flat["type"].as_str(), &flat["parent"]), (Some("dynamic"), &Value::Null));
    assert_eq!(view(d, "flat.vhdx"), model);

    // map: each run at the depth of the image that holds it.
    let map = json(d, &["map", "l3.vhdx", "--json"]);
    let depth_at = |offset: u64| {
        let run = map.as_array().unwrap().iter().find(|r| {
            let (s, l) = (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap());
            s <= offset && offset < s + l
        });
        run.map(|r| (r["depth"].as_u64().unwrap(), r["present"].as_bool().unwrap())).unwrap()
    };
    assert_eq!(depth_at(3 * 999_999 + 10), (0, true));
    assert_eq!(depth_at(2 * 999_999 + 10), (1, true));
    assert_eq!(depth_at(999_999 + 10), (2, true));
    assert_eq!(depth_at(2_500_000 + 400_000), (3, true), "base data under no child write");
    assert_eq!(depth_at(6 << 20), (3, false), "zeros all the way down");
}

#[test]
fn malformed_input_is_one_error_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("notes.txt"), "This is a text file, not a virtual disk.\n".repeat(10)).unwrap();
    std::fs::write(d.join("notes.vhdx"), "This is a text file, not a virtual disk.\n".repeat(10)).unwrap();
    ok(d, &["create", "good.vhdx", "--size", "8M"]);
    for args in [
        &["info", "notes.txt"][..],
        &["info", "notes.txt", "--json"],
        &["check", "notes.txt"],
        &["map", "notes.txt", "--json"],
        &["read", "notes.txt", "--offset", "0", "--length", "1"],
        &["write", "notes.txt", "--offset", "0", "--input", "good.vhdx"],
        &["tree", "notes.txt"],
        &["merge", "notes.txt", "--preserve-siblings"],
        &["set-parent", "notes.txt", "good.vhdx"],
        &["set-parent", "good.vhdx", "notes.txt"],
        &["changes", "notes.txt"],
        &["merge-siblings", "notes.txt", "good.vhdx"],
        &["merge-siblings", "good.vhdx", "notes.txt"],
        &["create", "child.vhdx", "--parent", "notes.txt"],
        &["convert", "notes.vhdx", "out.raw"],
    ] {
        let out = run(d, args);
        // `check` reports what it found on stdout before it fails; the rest print nothing.
        if args[0] != "check" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.is_empty(), "vhdx {}: printed {stdout:?}", args.join(" "));
        }
        fails(d, args, &["notes."]);
    }
    fails(d, &["set-parent", "good.vhdx", "good.vhdx"], &["good.vhdx", "not a differencing disk"]);
    fails(d, &["merge", "good.vhdx"], &["good.vhdx"]);
    assert!(!d.join("child.vhdx").exists() && !d.join("out.raw").exists());
    // A directory with a malformed image still draws, marking it.
    let forest = json(d, &["tree", ".", "--json"]);
    let bad = forest["nodes"].as_array().unwrap().iter().find(|n| n["path"].as_str().unwrap().ends_with("notes.vhdx"));
    assert_eq!(bad.unwrap()["status"], "unreadable");
}

#[test]
fn resize_discard_and_compact() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut model = vec![0u8; SIZE as usize];
    ok(d, &["create", "disk.vhdx", "--size", "8M", "--block-size", "1M"]);
    write(d, "disk.vhdx", 0, &pattern(50, 6 << 20), &mut model);
    write(d, "disk.vhdx", SIZE - 100, &pattern(51, 100), &mut model);

    // Grow: the new range reads zeros.
    let out = String::from_utf8(ok(d, &["resize", "disk.vhdx", "--size", "12M"])).unwrap();
    assert!(out.contains("8 MiB (8388608 bytes) -> 12 MiB (12582912 bytes)"), "{out}");
    model.resize(12 << 20, 0);
    assert_eq!(view(d, "disk.vhdx"), model);
    // Shrink over data: refused, one error line naming the file and the flag's purpose.
    let before = std::fs::read(d.join("disk.vhdx")).unwrap();
    let e = fails(d, &["resize", "disk.vhdx", "--size", "4M"], &["disk.vhdx", "refused", "0x400000"]);
    assert!(e.contains("--allow-shrink"), "{e}");
    assert_eq!(std::fs::read(d.join("disk.vhdx")).unwrap(), before, "a refused shrink changes nothing");
    fails(d, &["resize", "disk.vhdx", "--size", "1000"], &["disk.vhdx", "multiple"]);
    ok(d, &["resize", "disk.vhdx", "--size", "6M", "--allow-shrink"]);
    model.truncate(6 << 20);
    assert_eq!(view(d, "disk.vhdx"), model);

    // Discard: zeros, whole blocks released by compact.
    ok(d, &["discard", "disk.vhdx", "--offset", "1M", "--length", "3M"]);
    ok(d, &["discard", "disk.vhdx", "--offset", "5000", "--length", "100"]);
    model[1 << 20..4 << 20].fill(0);
    model[5000..5100].fill(0);
    assert_eq!(view(d, "disk.vhdx"), model);
    fails(d, &["discard", "disk.vhdx", "--offset", "6M", "--length", "1"], &["disk.vhdx", "outside"]);
    let len_before = std::fs::metadata(d.join("disk.vhdx")).unwrap().len();
    let report = json(d, &["compact", "disk.vhdx", "--json"]);
    assert_eq!(report["file_size_before"].as_u64(), Some(len_before));
    let after = std::fs::metadata(d.join("disk.vhdx")).unwrap().len();
    assert_eq!(report["file_size_after"].as_u64(), Some(after));
    assert_eq!(after, len_before - (3 << 20), "three blocks given back");
    assert_eq!(view(d, "disk.vhdx"), model);
    let out = String::from_utf8(ok(d, &["compact", "disk.vhdx"])).unwrap();
    assert!(out.contains("(0 B given back)"), "{out}");
    let check = String::from_utf8(ok(d, &["check", "disk.vhdx"])).unwrap();
    assert!(check.contains("No errors"), "{check}");

    // A fixed disk cannot be compacted; the message says what to do.
    ok(d, &["create", "fixed.vhdx", "--size", "4M", "--type", "fixed", "--block-size", "1M"]);
    fails(d, &["compact", "fixed.vhdx"], &["fixed.vhdx", "convert"]);
}

/// The sector ranges `writes` touch, coalesced, in bytes.
fn touched(writes: &[(u64, usize)], sector: u64) -> Vec<(u64, u64)> {
    let mut held = vec![false; (SIZE / sector) as usize];
    for &(at, len) in writes {
        for k in at / sector..(at + len as u64).div_ceil(sector) {
            held[k as usize] = true;
        }
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    for k in (0..held.len()).filter(|&k| held[k]) {
        let at = k as u64 * sector;
        match out.last_mut() {
            Some((s, l)) if *s + *l == at => *l += sector,
            _ => out.push((at, sector)),
        }
    }
    out
}

#[test]
fn changes_lists_the_sectors_a_child_holds() {
    for sector in [512u64, 4096] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut model = vec![0u8; SIZE as usize];
        let ss = sector.to_string();
        ok(d, &["create", "base.vhdx", "--size", "8M", "--block-size", "1M", "--logical-sector-size", &ss]);
        ok(d, &["create", "child.vhdx", "--parent", "base.vhdx", "--block-size", "1M"]);
        let writes = [(3, 10), ((1 << 20) - sector - 1, sector as usize + 2), (3 << 20, 1 << 20), (SIZE - 1, 1)];
        for (i, &(at, len)) in writes.iter().enumerate() {
            write(d, "child.vhdx", at, &pattern(70 + i as u64, len), &mut model);
        }
        let expect = touched(&writes, sector);
        let report = json(d, &["changes", "child.vhdx", "--json"]);
        assert_eq!(report["type"], "differencing");
        assert_eq!(report["logical_sector_size"], sector);
        let ranges: Vec<(u64, u64)> = report["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let (o, l) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
                assert_eq!(r["first_sector"].as_u64().unwrap(), o / sector);
                assert_eq!(r["sector_count"].as_u64().unwrap(), l / sector);
                (o, l)
            })
            .collect();
        assert_eq!(ranges, expect, "{sector}-byte sectors");
        assert_eq!(report["bytes"].as_u64().unwrap(), expect.iter().map(|r| r.1).sum::<u64>());
        let text = String::from_utf8(ok(d, &["changes", "child.vhdx"])).unwrap();
        assert!(text.contains(&format!("{} range(s)", expect.len())), "{text}");
        for (o, l) in &expect {
            assert!(
                text.contains(&format!("{o:#x}")) && text.contains(&format!("{}..{}", o / sector, (o + l) / sector))
            );
        }
        // A disk without a parent holds every sector; a missing parent does not matter.
        let base = json(d, &["changes", "base.vhdx", "--json"]);
        assert_eq!(
            base["ranges"],
            serde_json::json!([{"offset": 0, "length": SIZE, "first_sector": 0, "sector_count": SIZE / sector}])
        );
        std::fs::rename(d.join("base.vhdx"), d.join("moved.vhdx")).unwrap();
        assert_eq!(json(d, &["changes", "child.vhdx", "--json"]), report);
    }
}

#[test]
fn merge_siblings_writes_back_disjoint_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut base = vec![0u8; SIZE as usize];
    ok(d, &["create", "profile.vhdx", "--size", "8M", "--block-size", "1M"]);
    write(d, "profile.vhdx", 0, &pattern(80, 3 << 20), &mut base);
    for name in ["s1.vhdx", "s2.vhdx", "other.vhdx"] {
        ok(d, &["create", name, "--parent", "profile.vhdx", "--block-size", "1M"]);
    }
    let (mut s1, mut s2, mut other) = (base.clone(), base.clone(), base.clone());
    let mut merged = base.clone();
    write(d, "s1.vhdx", 1000, &pattern(81, 5000), &mut s1);
    write(d, "s1.vhdx", (1 << 20) - 512, &pattern(82, 1024), &mut s1);
    write(d, "s2.vhdx", 6144, &pattern(83, 512), &mut s2);
    write(d, "s2.vhdx", 5 << 20, &pattern(84, 70_000), &mut s2);
    write(d, "other.vhdx", 4096, &pattern(85, 4096), &mut other);
    for (src, ranges) in [
        (&s1, [(512usize, 6144usize), ((1 << 20) - 512, (1 << 20) + 512)]),
        (&s2, [(6144, 6656), (5 << 20, (5 << 20) + 70_144)]),
    ] {
        for (a, b) in ranges {
            merged[a..b].copy_from_slice(&src[a..b]);
        }
    }

    let before = files(d);
    let dry = json(d, &["merge-siblings", "profile.vhdx", "s1.vhdx", "s2.vhdx", "--dry-run", "--json"]);
    assert_eq!(files(d), before, "a dry run modifies nothing");
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["merged"].as_bool(), dry["refused"].as_bool()),
        (Some(true), Some(false), Some(false))
    );
    assert_eq!(dry["bytes_merged"], 5632 + 1024 + 512 + 70_144);
    assert_eq!(dry["conflicts"], serde_json::json!([]));
    let text =
        String::from_utf8(ok(d, &["merge-siblings", "profile.vhdx", "s1.vhdx", "s2.vhdx", "--dry-run"])).unwrap();
    assert!(text.starts_with("Dry run, nothing was modified"), "{text}");
    assert_eq!(files(d), before);

    let report = json(d, &["merge-siblings", "profile.vhdx", "s1.vhdx", "s2.vhdx", "--json"]);
    assert_eq!(report["merged"], true);
    assert_eq!(report["children"][0]["bytes_merged"], 5632 + 1024);
    assert_eq!(report["children"][1]["bytes_merged"], 512 + 70_144);
    let preserved = report["preserved"].as_array().unwrap();
    assert_eq!(preserved.len(), 1, "{report}");
    assert!(preserved[0]["path"].as_str().unwrap().ends_with("other.vhdx"));
    assert_eq!(preserved[0]["status"], "ok");
    assert_eq!(preserved[0]["bytes_copied"], 5632 + 1024 + 512 + 70_144 - 5 * 512, "other held sectors 8..13 of them");
    for name in ["profile.vhdx", "s1.vhdx", "s2.vhdx"] {
        assert_eq!(view(d, name), merged, "{name} presents both sessions' changes");
    }
    assert_eq!(view(d, "other.vhdx"), other, "the outsider presents what it did");
    for name in ["s1.vhdx", "s2.vhdx"] {
        assert_eq!(json(d, &["changes", name, "--json"])["ranges"], serde_json::json!([]), "{name} is empty");
    }
}

#[test]
fn merge_siblings_refuses_conflicts_listing_them_and_prefer_decides() {
    let (tmp, [_, a, b]) = base_and_two_children();
    let d = tmp.path();
    let before = files(d);
    let out = run(d, &["merge-siblings", "base.vhdx", "a.vhdx", "b.vhdx", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["refused"].as_bool(), report["merged"].as_bool()), (Some(true), Some(false)));
    // a wrote 4103..104103, b 0..8192: sectors 8..16 overlap with different bytes.
    assert_eq!(
        report["conflicts"],
        serde_json::json!([{"offset": 4096, "length": 4096, "first_sector": 8, "sector_count": 8,
            "children": ["a.vhdx", "b.vhdx"], "winner": null}])
    );
    let line = fails(d, &["merge-siblings", "base.vhdx", "a.vhdx", "b.vhdx"], &["base.vhdx", "refused", "--prefer"]);
    assert!(line.contains("1 conflicting range"), "{line}");
    let text = String::from_utf8(run(d, &["merge-siblings", "base.vhdx", "a.vhdx", "b.vhdx"]).stdout).unwrap();
    assert!(text.contains("bytes 0x1000..0x2000 (sectors 8..16): a.vhdx, b.vhdx; unresolved"), "{text}");
    fails(d, &["merge-siblings", "base.vhdx", "a.vhdx", "b.vhdx", "--dry-run"], &["would be refused"]);
    fails(
        d,
        &["merge-siblings", "base.vhdx", "a.vhdx", "b.vhdx", "--prefer", "base.vhdx"],
        &["not one of the children"],
    );
    fails(d, &["merge-siblings", "base.vhdx", "a.vhdx", "a.vhdx"], &["named twice"]);
    fails(d, &["merge-siblings", "a.vhdx", "b.vhdx"], &["b.vhdx", "not a child of a.vhdx"]);
    fails(d, &["merge-siblings", "base.vhdx"], &["required"]);
    assert_eq!(files(d), before, "refusals modify nothing");

    let report = json(d, &["merge-siblings", "base.vhdx", "a.vhdx", "b.vhdx", "--prefer", "b.vhdx", "--json"]);
    assert_eq!(report["merged"], true);
    assert_eq!(report["conflicts"][0]["winner"], "b.vhdx");
    assert_eq!(report["children"][0]["bytes_overridden"], 4096);
    let mut merged = a.clone();
    for (x, y) in [(0usize, 8192usize), ((2 << 20) + 512, (2 << 20) + 512 + 70_144)] {
        merged[x..y].copy_from_slice(&b[x..y]);
    }
    for name in ["base.vhdx", "a.vhdx", "b.vhdx"] {
        assert_eq!(view(d, name), merged, "{name}");
    }
}

/// Runs `vhdx merge a.vhdx --preserve-siblings` through the library on files
/// that fail every operation after `limit` writes (a process killed there),
/// in `dir`; returns whether the merge failed.
fn merge_killed_after(dir: &Path, limit: u64) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use vhdx::{FileStorage, IoError, Storage};
    struct Killable(FileStorage, Arc<AtomicU64>, u64);
    impl Killable {
        fn alive(&self, mutating: bool) -> Result<(), IoError> {
            let n = if mutating { self.1.fetch_add(1, Ordering::SeqCst) + 1 } else { self.1.load(Ordering::SeqCst) };
            if n > self.2 {
                return Err(std::io::Error::other("killed").into());
            }
            Ok(())
        }
    }
    impl Storage for Killable {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
            self.alive(false)?;
            self.0.read_exact_at(buf, offset)
        }
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
            self.alive(true)?;
            self.0.write_all_at(buf, offset)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.alive(false)?;
            self.0.flush()
        }
        fn len(&self) -> Result<u64, IoError> {
            self.alive(false)?;
            self.0.len()
        }
        fn set_len(&mut self, len: u64) -> Result<(), IoError> {
            self.alive(true)?;
            self.0.set_len(len)
        }
    }
    let ops = Arc::new(AtomicU64::new(0));
    let opener = vhdx::io::FileOpener::new(move |path: &Path, writable| {
        let file = FileStorage::open(path, writable)?;
        Ok(Box::new(Killable(file, ops.clone(), limit)) as Box<dyn Storage>)
    });
    let options = vhdx::ops::merge::MergeOptions::default()
        .depth(1)
        .siblings(vhdx::ops::merge::SiblingPolicy::Preserve)
        .file_opener(Some(opener));
    vhdx::ops::merge::merge(&dir.join("a.vhdx"), &options).is_err()
}

/// A tree of `base_and_two_children` whose merge of `a.vhdx` was killed
/// after the target took (`late`) or before it took its new DataWriteGuid.
fn interrupted_tree(late: bool) -> (tempfile::TempDir, [Vec<u8>; 3]) {
    for limit in 1.. {
        let (tmp, models) = base_and_two_children();
        assert!(merge_killed_after(tmp.path(), limit), "the merge finished within {limit} writes");
        let m = vhdx::ops::merge::interrupted_merge(&tmp.path().join("a.vhdx"), &Default::default()).unwrap();
        if m.is_some_and(|m| m.target_changed == late) {
            return (tmp, models);
        }
    }
    unreachable!()
}

#[test]
fn an_interrupted_merge_is_named_by_check_and_finished_by_running_it_again() {
    let (tmp, [base, a, b]) = interrupted_tree(true);
    let d = tmp.path();
    let text = String::from_utf8(ok(d, &["check", "a.vhdx"])).unwrap();
    assert!(text.contains("unfinished merge") && text.contains("base.vhdx"), "{text}");
    assert!(text.contains("can only be finished"), "{text}");
    let text = String::from_utf8(ok(d, &["check", "b.vhdx"])).unwrap();
    assert!(text.contains("parent_linkage2") && text.contains("has taken"), "{text}");
    assert_eq!(view(d, "a.vhdx"), a, "the child presents what it did");
    assert_eq!(view(d, "b.vhdx"), b, "the sibling presents what it did");

    // Another policy is refused, changing nothing; the same command finishes it.
    let before = files(d);
    fails(d, &["merge", "a.vhdx", "--force"], &["a.vhdx", "unfinished", "--preserve-siblings"]);
    assert_eq!(files(d), before);
    let report = json(d, &["merge", "a.vhdx", "--preserve-siblings", "--json"]);
    assert_eq!(report["run"], "resumed", "{report}");
    assert_eq!(report["siblings"][0]["status"], "ok", "{report}");
    assert_eq!(view(d, "base.vhdx"), a, "the target holds the child's view");
    assert_eq!(view(d, "a.vhdx"), a);
    assert_eq!(view(d, "b.vhdx"), b);
    let text = String::from_utf8(ok(d, &["check", "a.vhdx"])).unwrap();
    assert!(!text.contains("unfinished"), "{text}");
    let before = files(d);
    let text = String::from_utf8(ok(d, &["merge", "a.vhdx", "--preserve-siblings"])).unwrap();
    assert!(text.contains("already finished"), "{text}");
    assert_eq!(files(d), before, "a run of a finished merge changes nothing");
    drop(base);
}

#[test]
fn check_repair_rolls_back_a_merge_killed_before_its_target_changed() {
    let (tmp, [base, a, b]) = interrupted_tree(false);
    let d = tmp.path();
    let text = String::from_utf8(ok(d, &["check", "a.vhdx"])).unwrap();
    assert!(text.contains("unfinished merge") && text.contains("rolls the merge back"), "{text}");
    let report = json(d, &["check", "a.vhdx", "--repair", "--json"]);
    let repairs = report["repairs"].to_string();
    assert!(repairs.contains("rolled back"), "{report}");
    assert_eq!(view(d, "base.vhdx"), base);
    assert_eq!(view(d, "a.vhdx"), a);
    assert_eq!(view(d, "b.vhdx"), b);
    for name in ["a.vhdx", "b.vhdx"] {
        let text = String::from_utf8(ok(d, &["check", name])).unwrap();
        assert!(!text.contains("unfinished") && !text.contains("parent_linkage2"), "{name}: {text}");
    }
    // The merge can then be run afresh.
    let report = json(d, &["merge", "a.vhdx", "--preserve-siblings", "--json"]);
    assert_eq!(report["run"], "started");
    assert_eq!(view(d, "base.vhdx"), a);
    assert_eq!(view(d, "b.vhdx"), b);
}
