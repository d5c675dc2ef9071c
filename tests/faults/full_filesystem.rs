//! The real tool on a really full filesystem: a small tmpfs mounted in a
//! user and mount namespace of its own (`unshare -rm`, no root needed where
//! unprivileged user namespaces are allowed; where they are not, the test
//! is skipped with a note, except under `CI=true`, where it fails). What `tests/faults/enospc.rs` proves against the
//! fault-injecting storage, checked here with the kernel's ENOSPC and
//! `fallocate`:
//!
//! - `resize --size 60T` of an image whose larger BAT (503 MiB with 1 MiB
//!   blocks) does not fit fails and leaves the file byte-identical — the
//!   old code left it hundreds of MiB longer;
//! - `convert --force` onto an existing file fails for lack of space and
//!   leaves that file byte-identical, with no temporary file;
//! - a `write` into a differencing disk that runs out of space fails and
//!   the disk presents what it did before (its parent's bytes where it
//!   holds none) from the piece that failed on, and `check` is clean.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{cli::vhdx_tool, data::pattern};

const MIB: u64 = 1 << 20;

/// Runs `script` with `sh` in a fresh mount namespace where `dir/fs` is a
/// tmpfs of `mib` MiB holding copies of `files` (from `dir`), and `$VHDX`
/// is the tool; `dir/out` receives what the script copies there. `None`
/// when namespaces are not available here.
fn on_small_tmpfs(dir: &Path, mib: u64, files: &[&str], script: &str) -> Option<Output> {
    let fs = dir.join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let probe = Command::new("unshare").args(["-rm", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let what = "`unshare -rm` (an unprivileged mount namespace, for a small tmpfs)";
        assert!(!crate::common::in_ci(), "{what} is not available, and CI=true requires it");
        eprintln!("note: skipping: {what} is not available here (under CI=true this fails)");
        return None;
    }
    let mut full = format!("set -e\nmount -t tmpfs -o size={mib}m tmpfs fs\n");
    for f in files {
        full += &format!("cp --sparse=always {f} fs/\n");
    }
    full += "cd fs\nset +e\n";
    full += script;
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &full])
        .current_dir(dir)
        .env("VHDX", vhdx_tool())
        .output()
        .unwrap();
    Some(out)
}

fn vhdx(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(vhdx_tool()).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "vhdx {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_resize_that_does_not_fit_leaves_the_file_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    vhdx(dir, &["create", "disk.vhdx", "--size", "1G", "--block-size", "1M"]);
    std::fs::write(dir.join("data"), pattern(1, 3 * MIB as usize)).unwrap();
    vhdx(dir, &["write", "disk.vhdx", "--offset", "1M", "--input", "data"]);
    let Some(out) = on_small_tmpfs(
        dir,
        64,
        &["disk.vhdx"],
        "\"$VHDX\" resize disk.vhdx --size 60T; echo \"status $?\"\ncp --sparse=always disk.vhdx ../out/\n",
    ) else {
        return;
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("status 1") && text.contains("No space left"), "{text}");
    let before = std::fs::read(dir.join("disk.vhdx")).unwrap();
    let after = std::fs::read(dir.join("out/disk.vhdx")).unwrap();
    assert_eq!(after.len(), before.len(), "the failed resize changed the file's length");
    assert!(after == before, "the failed resize changed the file");
}

#[test]
fn a_convert_that_runs_out_of_space_leaves_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    vhdx(dir, &["create", "src.vhdx", "--size", "64M", "--block-size", "1M"]);
    std::fs::write(dir.join("data"), pattern(2, 40 * MIB as usize)).unwrap();
    vhdx(dir, &["write", "src.vhdx", "--offset", "0", "--input", "data"]);
    std::fs::write(dir.join("old.vhdx"), pattern(3, 5 * MIB as usize)).unwrap();
    // 56 MiB: the source (44 MiB) and the old file fit; another copy not.
    let Some(out) = on_small_tmpfs(
        dir,
        56,
        &["src.vhdx", "old.vhdx"],
        "\"$VHDX\" convert src.vhdx old.vhdx --force; echo \"status $?\"\ncp old.vhdx ../out/\nls -a > ../out/ls\n",
    ) else {
        return;
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("status 1") && text.contains("No space left"), "{text}");
    assert!(std::fs::read(dir.join("out/old.vhdx")).unwrap() == pattern(3, 5 * MIB as usize), "the old file changed");
    let listing = std::fs::read_to_string(dir.join("out/ls")).unwrap();
    assert!(!listing.contains("vhdx-tmp"), "a temporary file was left: {listing}");
}

#[test]
fn a_write_that_runs_out_of_space_leaves_the_disk_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    vhdx(dir, &["create", "base.vhdx", "--size", "64M", "--block-size", "1M"]);
    let parent = pattern(4, 64 * MIB as usize);
    std::fs::write(dir.join("data"), &parent).unwrap();
    vhdx(dir, &["write", "base.vhdx", "--offset", "0", "--input", "data"]);
    vhdx(dir, &["create", "child.vhdx", "--parent", "base.vhdx", "--block-size", "1M"]);
    std::fs::write(dir.join("small"), pattern(5, 3000)).unwrap();
    vhdx(dir, &["write", "child.vhdx", "--offset", "4096", "--input", "small"]);
    let mut model = parent.clone();
    model[4096..7096].copy_from_slice(&pattern(5, 3000));
    // The parent (68 MiB) and the child fit in 80 MiB; 30 MiB more do not.
    std::fs::write(dir.join("big"), pattern(6, 30 * MIB as usize)).unwrap();
    let Some(out) = on_small_tmpfs(
        dir,
        80,
        &["base.vhdx", "child.vhdx"],
        "\"$VHDX\" write child.vhdx --offset 20M --input ../big; echo \"status $?\"\n\
         \"$VHDX\" check child.vhdx; echo \"check $?\"\ncp --sparse=always child.vhdx ../out/\n",
    ) else {
        return;
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("status 1") && text.contains("No space left"), "{text}");
    assert!(text.contains("check 0"), "{text}");
    // The child, beside its parent again: the tool writes its input in
    // 4 MiB pieces, so the pieces before the one that failed are written
    // (and were flushed at exit); from the failed one on, the child presents
    // what it did before.
    std::fs::copy(dir.join("out/child.vhdx"), dir.join("child.vhdx")).unwrap();
    let got = vhdx(dir, &["read", "child.vhdx", "--offset", "0", "--length", &(64 * MIB).to_string()]).stdout;
    let (at, big) = (20 * MIB as usize, pattern(6, 30 * MIB as usize));
    let done = got[at..at + big.len()].iter().zip(&big).position(|(g, b)| g != b).unwrap_or(big.len());
    assert_eq!(done % (4 * MIB as usize), 0, "a piece was written in part");
    assert!(done < big.len(), "the whole write landed");
    model[at..at + done].copy_from_slice(&big[..done]);
    assert!(got == model, "the child presents other bytes after the failed write ({done} bytes landed)");
}
