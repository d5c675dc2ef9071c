//! Where a differencing disk's parent is found, through the command-line
//! tool: `relative_path` from the child's own directory however the child is
//! named (bare name, `./x`, `sub/../sub/x`, absolute, through a symlinked
//! directory); locators holding only Windows paths; `set-parent` refusing
//! loops; `tree` marking one. Every view is compared with a model the test
//! keeps from its own writes.

use std::path::Path;

use serde_json::Value;
use vhdx::format::locator::{braced_guid, ParentLocator, ABSOLUTE_WIN32_PATH, PARENT_LINKAGE, VOLUME_PATH};
use vhdx::{Disk, FileStorage};

use crate::common::cli::*;
use crate::common::data::pattern;

const SIZE: u64 = 8 << 20;

/// `tree/base.vhdx` with data, `tree/sub/child.vhdx` and `tree/sub/other.vhdx`
/// its children with their own data, made from inside `tree`; then `tree` is
/// renamed `moved`, so the locators' absolute paths lead nowhere and only
/// `relative_path` (`..\base.vhdx`) can find the parent. Returns the models
/// of base, child and other.
fn moved_tree(top: &Path) -> [Vec<u8>; 3] {
    let d = top.join("tree");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let mut base = vec![0u8; SIZE as usize];
    ok(&d, &["create", "base.vhdx", "--size", "8M", "--block-size", "1M"]);
    write(&d, "base.vhdx", 1000, &pattern(1, 3 << 20), &mut base);
    ok(&d, &["create", "sub/child.vhdx", "--parent", "base.vhdx", "--block-size", "1M"]);
    ok(&d, &["create", "sub/other.vhdx", "--parent", "base.vhdx"]);
    let (mut child, mut other) = (base.clone(), base.clone());
    write(&d, "sub/child.vhdx", 4096 + 7, &pattern(2, 100_000), &mut child);
    write(&d, "sub/other.vhdx", 20_000, &pattern(3, 8192), &mut other);
    let info = json(&d, &["info", "sub/child.vhdx", "--json"]);
    assert_eq!(info["parent_locator"]["relative_path"], r"..\base.vhdx", "{info}");
    std::fs::rename(&d, top.join("moved")).unwrap();
    [base, child, other]
}

#[test]
fn relative_paths_resolve_from_the_child_directory_however_it_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().canonicalize().unwrap();
    let [base, child, other] = moved_tree(&top);
    let (moved, sub) = (top.join("moved"), top.join("moved/sub"));
    let absolute = sub.join("child.vhdx");

    for (dir, name) in [
        (&sub, "child.vhdx"),
        (&sub, "./child.vhdx"),
        (&sub, "../sub/child.vhdx"),
        (&moved, "sub/child.vhdx"),
        (&moved, "./sub/../sub/child.vhdx"),
        (&top, absolute.to_str().unwrap()),
    ] {
        assert_eq!(view(dir, name), child, "{name} from {}", dir.display());
        let info = json(dir, &["info", name, "--json"]);
        let parent = info["parent"].as_str().expect("a parent");
        assert_eq!(dir.join(parent).canonicalize().unwrap(), moved.join("base.vhdx"), "{name}: {info}");
    }
    let parent = json(&sub, &["info", "child.vhdx", "--json"])["parent"].as_str().unwrap().to_string();
    assert_eq!(Path::new(&parent), Path::new("../base.vhdx"), "the `..` is kept");
    assert_eq!(view(&sub, "other.vhdx"), other);

    // tree and the merge's sibling scan read the same locators from a bare name.
    let forest = json(&sub, &["tree", ".", "--json"]);
    for node in forest["nodes"].as_array().unwrap() {
        assert_eq!(node["status"], "ok", "{forest}");
    }
    let chain = json(&sub, &["tree", "child.vhdx", "--json"]);
    let names: Vec<&Path> = chain["chain"].as_array().unwrap().iter().map(|n| Path::new(n.as_str().unwrap())).collect();
    assert_eq!(names, [Path::new("child.vhdx"), Path::new("../base.vhdx")], "{chain}");
    let before = files(&top);
    let line = fails(&sub, &["merge", "child.vhdx"], &["other.vhdx", "--preserve-siblings"]);
    assert!(line.contains("refused"), "{line}");
    assert_eq!(files(&top), before, "a refused merge changes nothing");
    let report = json(&sub, &["merge", "child.vhdx", "--preserve-siblings", "--json"]);
    assert_eq!(report["siblings"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(view(&sub, "child.vhdx"), child);
    assert_eq!(view(&sub, "other.vhdx"), other, "the sibling found from a bare name was preserved");
    assert_eq!(view(&moved, "base.vhdx"), child, "the parent now holds the child's view");
    assert_ne!(base, child);
}

#[cfg(unix)]
#[cfg(unix)]
#[test]
fn through_a_symlinked_directory_dot_dot_leads_to_the_real_parent_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().canonicalize().unwrap();
    let [_, child, _] = moved_tree(&top);
    // elsewhere/link -> moved/sub, and a decoy base.vhdx where a lexical `..` would lead.
    let elsewhere = top.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(top.join("moved/sub"), elsewhere.join("link")).unwrap();
    ok(&elsewhere, &["create", "base.vhdx", "--size", "8M"]);
    assert_eq!(view(&elsewhere, "link/child.vhdx"), child);
    let info = json(&elsewhere, &["info", "link/child.vhdx", "--json"]);
    let parent = elsewhere.join(info["parent"].as_str().unwrap());
    assert_eq!(parent.canonicalize().unwrap(), top.join("moved/base.vhdx"), "{info}");
    let chain = json(&elsewhere, &["tree", "link/child.vhdx", "--json"]);
    assert_eq!(chain["nodes"][0]["status"], "ok", "{chain}");

    // A locator written through the link leads back to the same real file.
    ok(&elsewhere, &["create", "link/grandchild.vhdx", "--parent", "link/child.vhdx"]);
    assert_eq!(view(&top.join("moved/sub"), "grandchild.vhdx"), child);
    assert_eq!(view(&elsewhere, "link/grandchild.vhdx"), child);
    ok(&elsewhere, &["set-parent", "link/child.vhdx", "link/../base.vhdx"]);
    assert_eq!(view(&top.join("moved/sub"), "child.vhdx"), child);
}

/// A child of `parent` whose locator holds `paths` (key, value) besides its linkage.
fn child_with_locator(child: &Path, parent: &Path, paths: &[(&str, &str)]) {
    let p = Disk::open(parent).unwrap();
    let mut loc = ParentLocator { entries: Vec::new() };
    loc.set(PARENT_LINKAGE, braced_guid(&p.data_write_guid()));
    for (k, v) in paths {
        loc.set(k, v.to_string());
    }
    let storage = Box::new(FileStorage::create_new(child).unwrap());
    Disk::create_differencing_on(storage, p, loc, None, None).unwrap().close().unwrap();
}

#[test]
fn a_locator_with_only_windows_paths_says_so_and_set_parent_mends_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut base = vec![0u8; SIZE as usize];
    ok(d, &["create", "base.vhdx", "--size", "8M"]);
    write(d, "base.vhdx", 512, &pattern(7, 5000), &mut base);
    let volume = r"\\?\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\VMs\base.vhdx";
    let drive = r"C:\VMs\base.vhdx";
    child_with_locator(
        &d.join("win.vhdx"),
        &d.join("base.vhdx"),
        &[(VOLUME_PATH, volume), (ABSOLUTE_WIN32_PATH, drive)],
    );
    let unc = r"\\server\share\VMs\base.vhdx";
    child_with_locator(&d.join("unc.vhdx"), &d.join("base.vhdx"), &[(ABSOLUTE_WIN32_PATH, unc)]);

    let err = Disk::open(d.join("win.vhdx")).unwrap_err();
    assert_eq!(err.kind(), vhdx::ErrorKind::ParentNotFound);
    let text = err.to_string();
    if cfg!(windows) {
        // Windows follows them: here they lead nowhere, and the message
        // names where it looked.
        for want in ["not found", volume, drive] {
            assert!(text.contains(want), "{want:?} not in: {text}");
        }
        ok(d, &["set-parent", "win.vhdx", "base.vhdx"]);
        assert_eq!(view(d, "win.vhdx"), base);
        return;
    }
    for want in ["only Windows absolute paths", volume, drive, "vhdx set-parent CHILD PARENT"] {
        assert!(text.contains(want), "{want:?} not in: {text}");
    }
    let line = fails(d, &["read", "unc.vhdx", "--offset", "0", "--length", "1"], &["unc.vhdx", unc]);
    assert!(line.contains("only Windows absolute paths") && line.contains("set-parent"), "{line}");

    // tree says the same in its missing-parent line, and in --json.
    let drawing = ok_text(d, &["tree", "win.vhdx"]);
    let row = drawing.lines().find(|l| l.contains("win.vhdx") && l.contains("missing parent")).expect(&drawing);
    assert!(row.contains("only Windows absolute paths") && row.contains(drive) && row.contains(volume), "{row}");
    assert!(row.contains("vhdx set-parent CHILD PARENT"), "{row}");
    let chain = json(d, &["tree", "win.vhdx", "--json"]);
    assert_eq!(chain["nodes"][0]["status"], "missing-parent");
    assert_eq!(chain["nodes"][0]["windows_paths"], serde_json::json!([volume, drive]), "{chain}");
    let info = json(d, &["info", "unc.vhdx", "--json"]);
    assert_eq!(info["parent_status"], "missing-parent");
    let text = ok_text(d, &["info", "unc.vhdx"]);
    assert!(text.contains("only Windows absolute paths") && text.contains(unc), "{text}");

    ok(d, &["set-parent", "win.vhdx", "base.vhdx"]);
    assert_eq!(view(d, "win.vhdx"), base);
}

#[test]
fn set_parent_refuses_the_child_itself_and_its_descendants() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut model = vec![0u8; SIZE as usize];
    ok(d, &["create", "base.vhdx", "--size", "8M"]);
    write(d, "base.vhdx", 0, &pattern(9, 4096), &mut model);
    std::fs::create_dir(d.join("sub")).unwrap();
    ok(d, &["create", "a.vhdx", "--parent", "base.vhdx"]);
    ok(d, &["create", "sub/g.vhdx", "--parent", "a.vhdx"]);
    ok(d, &["create", "gg.vhdx", "--parent", "sub/g.vhdx"]);
    let before = files(d);
    for (parent, extra) in [
        ("a.vhdx", None),
        ("./a.vhdx", Some("--ignore-id-mismatch")),
        ("sub/g.vhdx", Some("--ignore-id-mismatch")),
        ("gg.vhdx", None),
        ("sub/../gg.vhdx", Some("--ignore-id-mismatch")),
    ] {
        let mut args = vec!["set-parent", "a.vhdx", parent];
        args.extend(extra);
        let line = fails(d, &args, &["a.vhdx", parent, "loop"]);
        assert!(line.contains(if parent.ends_with("a.vhdx") { "same image" } else { "descends from" }), "{line}");
        assert_eq!(files(d), before, "set-parent {parent} changed a file");
    }
    // A descendant whose own link is broken is still a descendant.
    write(d, "sub/g.vhdx", 0, &pattern(10, 512), &mut model.clone());
    assert_eq!(json(d, &["tree", "gg.vhdx", "--json"])["nodes"][0]["status"], "broken-linkage");
    fails(d, &["set-parent", "a.vhdx", "gg.vhdx", "--ignore-id-mismatch"], &["gg.vhdx", "descends from"]);
    ok(d, &["set-parent", "a.vhdx", "base.vhdx"]);
    assert_eq!(view(d, "a.vhdx"), model);
}

/// `a.vhdx` and `base.vhdx` each the other's parent, linkage matching: `a`
/// is made a child of `base`, then `b` a child of `a` whose DataWriteGuid is
/// `base`'s (every GUID it gets is), and `b` replaces `base`.
fn a_loop(d: &Path) {
    ok(d, &["create", "base.vhdx", "--size", "8M"]);
    ok(d, &["create", "a.vhdx", "--parent", "base.vhdx"]);
    let base_guid = Disk::open(d.join("base.vhdx")).unwrap().data_write_guid();
    let a = Disk::open(d.join("a.vhdx")).unwrap();
    let loc = vhdx::chain::locator_for(&d.join("b.vhdx"), &d.join("a.vhdx"), &a.data_write_guid()).unwrap();
    let storage = Box::new(FileStorage::create_new(&d.join("b.vhdx")).unwrap());
    let b = Disk::create_differencing_on(storage, a, loc, None, Some(Box::new(move || base_guid))).unwrap();
    b.close().unwrap();
    std::fs::rename(d.join("b.vhdx"), d.join("base.vhdx")).unwrap();
    let replaced = vhdx::OpenOptions::new().without_parent().open(d.join("base.vhdx")).unwrap();
    assert_eq!(replaced.data_write_guid(), base_guid, "the loop is made");
}

#[test]
fn tree_marks_where_a_chain_loops() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    a_loop(d);
    let chain = json(d, &["tree", "a.vhdx", "--json"]);
    assert_eq!(chain["chain"], serde_json::json!(["a.vhdx", "base.vhdx"]), "{chain}");
    assert_eq!(chain["nodes"][0]["status"], "ok");
    assert_eq!(chain["nodes"][1]["status"], "loop", "{chain}");
    assert_eq!(chain["nodes"][1]["loops_to"], "a.vhdx");
    let text = ok_text(d, &["tree", "a.vhdx"]);
    let row = text.lines().find(|l| l.trim_start().starts_with("base.vhdx")).expect(&text);
    assert!(row.contains("loop") && row.contains("a.vhdx"), "{text}");
    assert_eq!(json(d, &["info", "a.vhdx", "--json"])["parent_status"], "loop");

    // A directory: the cycle is cut once, at one image, which says so; each image is drawn once.
    let forest = json(d, &["tree", ".", "--json"]);
    let nodes = forest["nodes"].as_array().unwrap();
    let loops: Vec<&Value> = nodes.iter().filter(|n| n["status"] == "loop").collect();
    assert_eq!(loops.len(), 1, "{forest}");
    assert_eq!(forest["roots"].as_array().unwrap().len(), 1, "{forest}");
    assert_eq!(forest["roots"][0], loops[0]["path"]);
    let drawing = ok_text(d, &["tree", "."]);
    for name in ["a.vhdx (", "base.vhdx ("] {
        assert_eq!(drawing.matches(name).count(), 1, "{drawing}");
    }
    assert!(drawing.contains("[loop: its parent"), "{drawing}");
}
