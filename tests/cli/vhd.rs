//! VHD images through the command: `info` says `"format": "vhd"`, `convert`
//! moves a chain among VHD, VHDX and raw by content (the names lie here on
//! purpose), and what goes wrong is named.

use crate::common::cli::{fails, json, ok_text, run};
use crate::common::compare::sha256_file;
use crate::common::files::{fixture, fixture_into};

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
