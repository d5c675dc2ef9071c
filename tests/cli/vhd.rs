//! VHD images through the command: `info` says `"format": "vhd"`, `convert`
//! moves a chain among VHD, VHDX and raw by content (the names lie here on
//! purpose), and what goes wrong is named.

use crate::common::cli::{fails, json, ok_text, run};
use crate::common::compare::sha256_file;
use crate::common::files::{fixture, fixture_into};
use crate::common::StartRetrying;

#[test]
fn info_and_convert_handle_a_windows_vhd_chain() {
    let Some(f) = fixture("vhd/dfvfs/ntfs-differential.vhd.gz") else { return };
    let dir = f.dir.path();
    fixture_into("vhd/dfvfs/ntfs-parent.vhd.gz", dir);
    let info = json(dir, &["info", "ntfs-differential.vhd", "--json"]);
    assert_eq!(info["format"], "vhd");
    assert_eq!(info["type"], "differencing");
    assert_eq!(info["virtual_size"], 4194304);
    assert_eq!(info["parent"], "ntfs-parent.vhd");
    assert_eq!(info["parent_locator"]["W2ru"], ".\\ntfs-parent.vhd");
    assert_eq!(info["geometry_size"], 4177920, "the CHS size, smaller than the virtual size");
    // By content: a VHDX named .vhd, and a VHD named .img is raw (never probed).
    ok_text(dir, &["convert", "ntfs-differential.vhd", "flat.vhdx"]);
    std::fs::rename(dir.join("flat.vhdx"), dir.join("flat-really-vhdx.vhd")).unwrap();
    assert_eq!(json(dir, &["info", "flat-really-vhdx.vhd", "--json"])["format"], "vhdx");
    let out = ok_text(dir, &["convert", "flat-really-vhdx.vhd", "back.vhd", "--type", "fixed"]);
    assert!(out.contains("(vhdx, 4 MiB)") && out.contains("(vhd, fixed)"), "{out}");
    assert_eq!(json(dir, &["info", "back.vhd", "--json"])["type"], "fixed");
    ok_text(dir, &["convert", "back.vhd", "disk.raw"]);
    assert_eq!(sha256_file(&dir.join("disk.raw")), "b7922a46a6b08fa4f4fc0c51a25d5587d1d49f15cfade45ca740dd07110ae144");
    ok_text(dir, &["convert", "disk.raw", "small-blocks.vhd", "--block-size", "512K"]);
    assert_eq!(json(dir, &["info", "small-blocks.vhd", "--json"])["block_size"], 512 << 10);
    // Mistakes, each named.
    fails(dir, &["convert", "disk.raw", "x.vhd", "--logical-sector-size", "4096"], &["x.vhd", "512-byte sectors"]);
    fails(dir, &["convert", "disk.raw", "y.vhd", "--block-size", "256K"], &["y.vhd", "512 KiB"]);
    std::fs::remove_file(dir.join("ntfs-parent.vhd")).unwrap();
    let info = json(dir, &["info", "ntfs-differential.vhd", "--json"]);
    assert!(info["parent_error"].as_str().unwrap().contains("not found"), "{info}");
    fails(dir, &["convert", "ntfs-differential.vhd", "z.vhdx"], &["ntfs-differential.vhd", "not found"]);
    assert!(!dir.join("z.vhdx").exists());
    let text = String::from_utf8(run(dir, &["info", "ntfs-differential.vhd"]).stdout).unwrap();
    assert!(text.contains("file format:") && text.contains("vhd") && text.contains("not opened"), "{text}");
}

#[test]
fn convert_azure_makes_a_fixed_whole_mib_vhd_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 3,000,064 bytes: neither whole sectors nor whole MiB.
    let mut raw = crate::common::data::pattern(7, 3_000_064);
    std::fs::write(d.join("odd.raw"), &raw).unwrap();
    let out = ok_text(d, &["convert", "odd.raw", "up.vhd", "--azure"]);
    assert!(out.contains("For Azure"), "{out}");
    let info = json(d, &["info", "up.vhd", "--json"]);
    assert_eq!((info["type"].as_str(), info["virtual_size"].as_u64()), (Some("fixed"), Some(3 << 20)));
    assert_eq!((info["creator"].as_str(), info["original_size"].as_u64()), (Some("win"), Some(3 << 20)));
    assert_eq!(std::fs::metadata(d.join("up.vhd")).unwrap().len(), (3 << 20) + 512);
    let check = json(d, &["check", "up.vhd", "--json"]);
    assert_eq!(check["azure"]["acceptable"], true, "{check}");
    assert_eq!(check["ok"], true, "{check}");
    // The content: the source, then zeros up to the whole MiB; QEMU agrees
    // on both the size and the bytes.
    raw.resize(3 << 20, 0);
    ok_text(d, &["convert", "up.vhd", "back.raw"]);
    assert!(std::fs::read(d.join("back.raw")).unwrap() == raw);
    if crate::common::qemu::qemu() {
        let q = d.join("q.raw");
        crate::common::qemu::qemu_img(&[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            d.join("up.vhd").to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        assert!(std::fs::read(&q).unwrap() == raw, "QEMU reads the Azure VHD as written");
    }
    // A dynamic VHD of an odd size: check names both reasons, exit status 0
    // (nothing is damaged).
    fails(d, &["convert", "odd.raw", "dyn.vhd"], &["odd.raw", "512-byte sector"]);
    std::fs::write(d.join("sectors.raw"), crate::common::data::pattern(8, 5860 * 512)).unwrap();
    ok_text(d, &["convert", "sectors.raw", "dyn.vhd"]);
    let check = json(d, &["check", "dyn.vhd", "--json"]);
    let problems = check["azure"]["problems"].to_string();
    assert!(check["azure"]["acceptable"] == false && problems.contains("fixed") && problems.contains("MiB"), "{check}");
    fails(d, &["convert", "odd.raw", "x.vhdx", "--azure"], &["x.vhdx", "--azure"]);
    fails(d, &["convert", "odd.raw", "y.vhd", "--azure", "--type", "dynamic"], &["y.vhd", "--azure"]);
    let repaired = ok_text(d, &["check", "up.vhd", "--repair"]);
    assert!(repaired.contains("Nothing needed repairing"), "{repaired}");
}

#[test]
fn create_write_and_read_a_vhd_chain_with_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok_text(d, &["create", "base.vhd", "--size", "6M"]);
    assert!(out.contains("dynamic VHD") && out.contains("block size 2 MiB"), "{out}");
    ok_text(d, &["create", "fixed.vhd", "--size", "6M", "--type", "fixed", "--format", "vhd"]);
    assert_eq!(std::fs::metadata(d.join("fixed.vhd")).unwrap().len(), (6 << 20) + 512);
    let mut model = vec![0u8; 6 << 20];
    crate::common::cli::write(d, "base.vhd", 1000, &crate::common::data::pattern(1, 70000), &mut model);
    let out = ok_text(d, &["create", "child.vhd", "--parent", "base.vhd"]);
    assert!(out.contains("differencing VHD over base.vhd"), "{out}");
    crate::common::cli::write(d, "child.vhd", 4097, &crate::common::data::pattern(2, 5000), &mut model);
    assert!(crate::common::cli::view(d, "child.vhd") == model, "the chain reads what was written");
    let info = json(d, &["info", "child.vhd", "--json"]);
    assert_eq!((info["format"].as_str(), info["parent"].as_str()), (Some("vhd"), Some("base.vhd")));
    // Chains mix nothing; options a VHD has no use for are refused.
    fails(d, &["create", "x.vhdx", "--parent", "base.vhd"], &["x.vhdx", "is a VHD"]);
    ok_text(d, &["create", "v.vhdx", "--size", "6M"]);
    fails(d, &["create", "y.vhd", "--parent", "v.vhdx"], &["y.vhd", "not a VHD"]);
    fails(d, &["create", "z.vhd", "--size", "6M", "--physical-sector-size", "4096"], &["z.vhd", "512-byte sectors"]);
    fails(d, &["create", "w.vhd", "--parent", "base.vhd", "--size", "5M"], &["w.vhd", "parent's size"]);
    for f in ["x.vhdx", "y.vhd", "z.vhd", "w.vhd"] {
        assert!(!d.join(f).exists(), "{f} was not made");
    }
    if crate::common::qemu::qemu() {
        let q = d.join("q.raw");
        crate::common::qemu::qemu_img(&[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            d.join("base.vhd").to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        let mut base_model = vec![0u8; 6 << 20];
        base_model[1000..71000].copy_from_slice(&crate::common::data::pattern(1, 70000));
        assert!(std::fs::read(&q).unwrap() == base_model, "QEMU reads the base the command wrote");
    }
}

#[test]
fn convert_parent_moves_a_windows_vhd_chain_to_vhdx_one_image_at_a_time() {
    const CHAIN: &str = "b7922a46a6b08fa4f4fc0c51a25d5587d1d49f15cfade45ca740dd07110ae144";
    let Some(f) = fixture("vhd/dfvfs/ntfs-differential.vhd.gz") else { return };
    let d = f.dir.path();
    fixture_into("vhd/dfvfs/ntfs-parent.vhd.gz", d);
    // As Convert-VHD -ParentPath: the parent, then the child onto it.
    ok_text(d, &["convert", "ntfs-parent.vhd", "parent.vhdx"]);
    let out = ok_text(d, &["convert", "ntfs-differential.vhd", "child.vhdx", "--parent", "parent.vhdx"]);
    assert!(out.contains("vhdx, differencing"), "{out}");
    let info = json(d, &["info", "child.vhdx", "--json"]);
    assert_eq!((info["type"].as_str(), info["parent"].as_str()), (Some("differencing"), Some("parent.vhdx")));
    assert_eq!(info["chain"].as_array().map(Vec::len), Some(2));
    // Only the child's own sectors: far less than the parent's 2 MiB of data.
    assert!(
        std::fs::metadata(d.join("child.vhdx")).unwrap().len()
            < std::fs::metadata(d.join("parent.vhdx")).unwrap().len()
    );
    ok_text(d, &["convert", "child.vhdx", "chain.raw"]);
    assert_eq!(sha256_file(&d.join("chain.raw")), CHAIN, "the VHDX chain presents the VHD chain");
    // And back: the VHDX child onto the original VHD parent.
    ok_text(d, &["convert", "child.vhdx", "back.vhd", "--parent", "ntfs-parent.vhd"]);
    assert_eq!(json(d, &["info", "back.vhd", "--json"])["parent"], "ntfs-parent.vhd");
    ok_text(d, &["convert", "back.vhd", "back.raw"]);
    assert_eq!(sha256_file(&d.join("back.raw")), CHAIN, "the VHD chain made back presents the same");
    // Chains mix nothing; a parent that is not one; a standalone source.
    fails(d, &["convert", "ntfs-differential.vhd", "x.vhdx", "--parent", "ntfs-parent.vhd"], &["x.vhdx", "one format"]);
    fails(
        d,
        &["convert", "ntfs-parent.vhd", "y.vhdx", "--parent", "parent.vhdx"],
        &["ntfs-parent.vhd", "not a differencing"],
    );
    ok_text(d, &["create", "small.vhdx", "--size", "1M"]);
    fails(d, &["convert", "ntfs-differential.vhd", "z.vhdx", "--parent", "small.vhdx"], &["z.vhdx", "1048576 bytes"]);
    for f in ["x.vhdx", "y.vhdx", "z.vhdx"] {
        assert!(!d.join(f).exists(), "{f} was not made");
    }
}

#[test]
fn map_follows_a_vhd_chain_to_the_bytes_of_each_file() {
    let Some(f) = fixture("vhd/dfvfs/ntfs-differential.vhd.gz") else { return };
    let d = f.dir.path();
    fixture_into("vhd/dfvfs/ntfs-parent.vhd.gz", d);
    let runs = json(d, &["map", "ntfs-differential.vhd", "--json"]);
    let runs = runs.as_array().unwrap();
    let files =
        [std::fs::read(d.join("ntfs-differential.vhd")).unwrap(), std::fs::read(d.join("ntfs-parent.vhd")).unwrap()];
    ok_text(d, &["convert", "ntfs-differential.vhd", "chain.raw"]);
    let chain = std::fs::read(d.join("chain.raw")).unwrap();
    let (mut next, mut depths) = (0u64, [0u64; 2]);
    for r in runs {
        let (start, length, depth) =
            (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap(), r["depth"].as_u64().unwrap());
        assert_eq!(start, next, "runs cover the disk in order");
        next = start + length;
        depths[depth as usize] += length;
        if r["data"] == true {
            // Each data run is where the map says, in the file it names.
            let at = r["offset"].as_u64().unwrap() as usize;
            let file = &files[depth as usize];
            assert!(file[at..at + length as usize] == chain[start as usize..(start + length) as usize], "{r}");
        }
    }
    assert_eq!(next, 4194304);
    assert!(depths[0] > 0 && depths[1] > 0, "both levels decide some bytes: {depths:?}");
    // The text form names the files.
    let text = ok_text(d, &["map", "ntfs-differential.vhd"]);
    assert!(text.contains("ntfs-parent.vhd") && text.contains("ntfs-differential.vhd"), "{text}");
}

/// A VHD merge (depth 2, a sibling preserved) killed with SIGKILL at
/// spread-out moments: after each kill every image opens, the child and
/// the sibling present exactly what they did, and running the same merge
/// again finishes it — the target then presents the child's view merged in
/// (QEMU agrees), the merged images hold nothing, the sibling is intact.
#[test]
fn a_killed_vhd_merge_loses_nothing_and_a_rerun_finishes_it() {
    use crate::common::cli::{bin, view, write};
    use crate::common::data::pattern;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let orig = tmp.path().join("orig");
    std::fs::create_dir(&orig).unwrap();
    let size = 48usize << 20;
    ok_text(&orig, &["create", "base.vhd", "--size", "48M"]);
    let mut base = vec![0u8; size];
    write(&orig, "base.vhd", 0, &pattern(31, 20 << 20), &mut base);
    ok_text(&orig, &["create", "mid.vhd", "--parent", "base.vhd"]);
    let mut mid = base.clone();
    write(&orig, "mid.vhd", 8 << 20, &pattern(32, 12 << 20), &mut mid);
    ok_text(&orig, &["create", "leaf.vhd", "--parent", "mid.vhd"]);
    let mut leaf = mid.clone();
    write(&orig, "leaf.vhd", (4 << 20) + 512, &pattern(33, 14 << 20), &mut leaf);
    ok_text(&orig, &["create", "sib.vhd", "--parent", "base.vhd"]);
    let mut sib = base.clone();
    write(&orig, "sib.vhd", 10 << 20, &pattern(34, 4096), &mut sib);
    let names = ["base.vhd", "mid.vhd", "leaf.vhd", "sib.vhd"];
    let mut merged = base.clone();
    for (s, l) in [(8usize << 20, 12usize << 20), ((4 << 20) + 512, 14 << 20)] {
        merged[s..s + l].copy_from_slice(&leaf[s..s + l]);
    }
    let originals: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(orig.join(n)).unwrap()).collect();
    let args = ["merge", "leaf.vhd", "--depth", "2", "--preserve-siblings"];
    let mut midway = 0;
    let delays: Vec<u64> = if cfg!(windows) {
        // Under Wine a process takes hundreds of milliseconds to start and
        // the merge a few tens: kill across the span between a start
        // (`--version`) and a whole merge, timed on a copy.
        let timed = |d: &std::path::Path, args: &[&str]| {
            let at = std::time::Instant::now();
            let out = Command::new(bin()).current_dir(d).args(args).output_retrying();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            at.elapsed().as_millis() as u64
        };
        let d = tmp.path().join("timing");
        std::fs::create_dir(&d).unwrap();
        for (n, bytes) in names.iter().zip(&originals) {
            std::fs::write(d.join(n), bytes).unwrap();
        }
        let start = timed(&d, &["--version"]);
        let whole = timed(&d, &args).max(start + 10);
        (0..12u64).map(|k| start.saturating_sub(50) + (whole - start + 50) * k / 11).collect()
    } else {
        vec![0, 2, 5, 10, 20, 40, 70, 100, 150, 250]
    };
    for (k, delay_ms) in delays.into_iter().enumerate() {
        let d = tmp.path().join(format!("run{k}"));
        std::fs::create_dir(&d).unwrap();
        for (n, bytes) in names.iter().zip(&originals) {
            std::fs::write(d.join(n), bytes).unwrap();
        }
        let mut child =
            Command::new(bin()).current_dir(&d).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn_retrying();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let what = format!("killed after {delay_ms} ms ({status})");
        assert!(view(&d, "leaf.vhd") == leaf, "{what}: the child presents what it did");
        assert!(view(&d, "sib.vhd") == sib, "{what}: the sibling presents what it did");
        let untouched = names.iter().zip(&originals).all(|(n, b)| std::fs::read(d.join(n)).unwrap() == *b);
        let base_now = view(&d, "base.vhd");
        midway += usize::from(!untouched && base_now != merged);
        ok_text(&d, &args);
        assert!(view(&d, "base.vhd") == merged, "{what}, run again: the target holds the merge");
        assert!(view(&d, "leaf.vhd") == leaf && view(&d, "sib.vhd") == sib, "{what}, run again");
        assert!(view(&d, "mid.vhd") == merged, "{what}, run again: the intermediate presents the target");
        for n in ["leaf.vhd", "mid.vhd"] {
            assert_eq!(json(&d, &["info", n, "--json"])["allocated_blocks"], 0, "{what}: {n} is empty");
        }
        for n in names {
            assert_eq!(json(&d, &["check", n, "--json"])["ok"], true, "{what}: {n} checks clean");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
    if cfg!(windows) {
        // Under Wine a start's time varies by more than the merge takes, so
        // whether a kill lands in it is chance: counted, not required.
        println!("{midway} kill(s) landed midway");
    } else {
        assert!(midway > 0, "no kill landed midway: the test proved nothing");
    }
}

/// `check --repair` on a VHD mends what a crash can leave: a damaged
/// trailing footer (from the copy at offset 0) and a copy at offset 0 left
/// naming the old header by an interrupted change of parent (from the
/// trailing footer); each found by `check` first, gone after.
#[test]
fn check_repair_mends_the_footers_a_crash_leaves_in_a_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_text(d, &["create", "base.vhd", "--size", "8M"]);
    let mut model = vec![0u8; 8 << 20];
    crate::common::cli::write(d, "base.vhd", 4096, &crate::common::data::pattern(41, 3 << 20), &mut model);
    let path = d.join("base.vhd");
    let good = std::fs::read(&path).unwrap();
    // The trailing footer torn to zeros.
    let mut torn = good.clone();
    let n = torn.len();
    torn[n - 512..].fill(0);
    std::fs::write(&path, &torn).unwrap();
    let failing = |file: &str| -> serde_json::Value {
        let out = run(d, &["check", file, "--json"]);
        assert_eq!(out.status.code(), Some(1), "check exits 1 on errors");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let check = failing("base.vhd");
    assert_eq!(check["ok"], false, "{check}");
    let out = ok_text(d, &["check", "base.vhd", "--repair"]);
    assert!(out.contains("trailing footer was damaged"), "{out}");
    assert_eq!(json(d, &["check", "base.vhd", "--json"])["ok"], true);
    assert!(std::fs::read(&path).unwrap() == good, "the file is as before the tear");
    assert!(crate::common::cli::view(d, "base.vhd") == model);

    // A change of parent interrupted between its two footer writes.
    ok_text(d, &["create", "child.vhd", "--parent", "base.vhd"]);
    let before = std::fs::read(d.join("child.vhd")).unwrap();
    std::fs::create_dir(d.join("moved")).unwrap();
    std::fs::copy(&path, d.join("moved/base.vhd")).unwrap();
    ok_text(d, &["set-parent", "child.vhd", "moved/base.vhd"]);
    let mut half = std::fs::read(d.join("child.vhd")).unwrap();
    half[..512].copy_from_slice(&before[..512]);
    std::fs::write(d.join("child.vhd"), &half).unwrap();
    let check = failing("child.vhd");
    assert!(check["errors"].to_string().contains("differs"), "{check}");
    let out = ok_text(d, &["check", "child.vhd", "--repair"]);
    assert!(out.contains("copy at offset 0 differed"), "{out}");
    assert_eq!(json(d, &["check", "child.vhd", "--json"])["ok"], true);
    let bytes = std::fs::read(d.join("child.vhd")).unwrap();
    assert_eq!(bytes[..512], bytes[bytes.len() - 512..], "both footers agree");
    std::fs::remove_file(&path).unwrap();
    assert!(crate::common::cli::view(d, "child.vhd") == model, "the child reads through the moved parent");
}
