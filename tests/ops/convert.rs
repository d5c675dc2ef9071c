//! `convert` is atomic (issue 12, finding 3): the output appears under the
//! destination's name only once complete, an existing destination is
//! replaced only then, and an image of the source's chain is never the
//! destination.
//!
//! - Every image of the chain (the source, its parent, its grandparent, and
//!   the same files under another name: a hard link, a symbolic link, a
//!   path through `..`) is refused, with or without overwriting; the file is
//!   byte-identical afterwards. The CLI's `convert CHILD PARENT --force`
//!   likewise.
//! - A convert that fails midway (a file size limit: writes past it fail,
//!   as on a full disk) leaves an existing destination byte-identical and no
//!   temporary file.
//! - The real CLI killed (SIGKILL) at deterministic points of its progress,
//!   writing a VHDX and a VHD, leaves the destination absent or the old file — or, once finished,
//!   complete — never anything else; a rerun removes the leftover temporary
//!   file and writes an output that presents the source's bytes (the test's
//!   own model, and QEMU's reading of the output when QEMU is installed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[cfg(unix)]
use vhdx::ops::convert::{convert, ConvertOptions};
#[cfg(unix)]
use vhdx::ErrorKind;
use vhdx::{CreateOptions, Disk};

#[cfg(unix)]
use crate::common::compare::sha256_file;
use crate::common::StartRetrying;
use crate::common::{cli::vhdx_tool, data::pattern};

const MIB: u64 = 1 << 20;

/// `base ← child ← grandchild` in `dir`, 32 MiB, data at every level;
/// returns the paths and what the grandchild presents.
fn chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let (base, child, grand) = (dir.join("base.vhdx"), dir.join("child.vhdx"), dir.join("grandchild.vhdx"));
    let mut model = vec![0u8; 32 * MIB as usize];
    let mut put = |d: &mut Disk, data: Vec<u8>, at: u64| {
        d.write_at(&data, at).unwrap();
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
    };
    let mut b = Disk::create(&base, &CreateOptions::dynamic(32 * MIB).block_size(MIB as u32)).unwrap();
    put(&mut b, pattern(1, 3 * MIB as usize), 0);
    put(&mut b, pattern(2, 4096), 20 * MIB);
    b.close().unwrap();
    let mut c = Disk::create_differencing(&child, &base, Some(MIB as u32)).unwrap();
    put(&mut c, pattern(3, 10_000), MIB + 333);
    c.close().unwrap();
    let mut g = Disk::create_differencing(&grand, &child, Some(MIB as u32)).unwrap();
    put(&mut g, pattern(4, 512), 31 * MIB);
    g.close().unwrap();
    (base, child, grand, model)
}

/// Everything `path` presents, read with the library.
fn content(path: &Path) -> Vec<u8> {
    if path.extension().is_some_and(|e| e == "vhd") {
        let d = vhdx::vhd::VhdDisk::open(path).unwrap();
        let mut buf = vec![0u8; d.virtual_size() as usize];
        d.read_at(&mut buf, 0).unwrap();
        return buf;
    }
    let d = Disk::open(path).unwrap();
    let mut buf = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

/// The hidden temporary files of a convert to `name` in `dir`.
fn leftovers(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.vhdx-tmp-");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
        .collect();
    v.sort();
    v
}

fn tool(dir: &Path, args: &[&str]) -> Output {
    crate::common::cli::run(dir, args)
}

#[cfg(unix)]
#[test]
fn no_image_of_the_source_chain_is_ever_the_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (base, child, grand, model) = chain(dir);
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::hard_link(&base, dir.join("base-link.vhdx")).unwrap();
    std::os::unix::fs::symlink(&child, dir.join("child-symlink.vhdx")).unwrap();
    let targets: Vec<(PathBuf, &Path, &str)> = vec![
        (grand.clone(), &grand, "source image itself"),
        (child.clone(), &child, "parent"),
        (base.clone(), &base, "ancestor"),
        (dir.join("sub/../base.vhdx"), &base, "ancestor"),
        (dir.join("base-link.vhdx"), &base, "ancestor"),
        (dir.join("child-symlink.vhdx"), &child, "parent"),
    ];
    for (dst, file, says) in &targets {
        for overwrite in [false, true] {
            let before = sha256_file(file);
            let options = ConvertOptions::default().overwrite(overwrite);
            let e = convert(&grand, dst, &options).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Refused, "{}: {e}", dst.display());
            assert!(e.to_string().contains(says), "{}: {e}", dst.display());
            assert_eq!(sha256_file(file), before, "{} changed", file.display());
            assert!(leftovers(dir, file.file_name().unwrap().to_str().unwrap()).is_empty());
        }
    }
    assert!(content(&grand) == model, "the chain no longer presents what it did");
    // A raw source and another name of it.
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, pattern(5, MIB as usize)).unwrap();
    std::fs::hard_link(&raw, dir.join("same.img")).unwrap();
    let options = ConvertOptions::default().overwrite(true);
    let e = convert(&raw, &dir.join("same.img"), &options).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert_eq!(std::fs::read(&raw).unwrap(), pattern(5, MIB as usize));
}

/// What QEMU filed: `vhdx convert CHILD PARENT --force` deleted the parent
/// and then failed to open the child. Now it is refused and the parent is
/// byte-identical; the child still presents its bytes.
#[test]
fn the_cli_refuses_to_convert_a_child_onto_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (base, child, grand, model) = chain(dir);
    for (dst, file) in [("child.vhdx", &child), ("base.vhdx", &base)] {
        let before = std::fs::read(file).unwrap();
        for force in [true, false] {
            let mut args = vec!["convert", "grandchild.vhdx", dst];
            if force {
                args.push("--force");
            }
            let out = tool(dir, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(dst) && stderr.contains("source"), "{args:?}: {stderr}");
            assert!(std::fs::read(file).unwrap() == before, "{args:?}: {dst} changed");
        }
    }
    assert!(content(&grand) == model);
    // A destination that exists, without --force: the usual message.
    std::fs::write(dir.join("other.vhdx"), b"not an image").unwrap();
    let out = tool(dir, &["convert", "grandchild.vhdx", "other.vhdx"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists (use --force"), "{out:?}");
    assert_eq!(std::fs::read(dir.join("other.vhdx")).unwrap(), b"not an image");
}

/// Overwriting replaces an existing file (keeping its permissions) with
/// the complete output; without it, the file is refused and left alone.
#[cfg(unix)]
#[test]
fn overwrite_replaces_the_destination_with_the_complete_output() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, _, grand, model) = chain(dir);
    let out = dir.join("out.vhdx");
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = convert(&grand, &out, &ConvertOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let r = convert(&grand, &out, &ConvertOptions::default().overwrite(true)).unwrap();
    assert_eq!(r.virtual_size, 32 * MIB);
    assert!(content(&out) == model);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(leftovers(dir, "out.vhdx").is_empty());
    // Raw output too, over a raw file.
    let raw = dir.join("out.raw");
    std::fs::write(&raw, b"old raw").unwrap();
    convert(&grand, &raw, &ConvertOptions::default().overwrite(true)).unwrap();
    assert!(std::fs::read(&raw).unwrap() == model);
}

/// `sh -c 'ulimit -f N; exec vhdx …'` with SIGXFSZ ignored: writes and
/// extensions past N KiB fail with EFBIG, as a full disk fails them with
/// ENOSPC — no root needed, and only for the tool.
#[cfg(unix)] // sh and RLIMIT_FSIZE
fn tool_with_file_limit(dir: &Path, kib: u64, args: &[&str]) -> Output {
    let script = format!("trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"", kib * 2);
    Command::new("sh").current_dir(dir).arg("-c").arg(script).arg(vhdx_tool()).args(args).output_retrying()
}

#[cfg(unix)] // the file size limit of `ulimit -f`
#[test]
fn a_convert_that_fails_midway_leaves_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, _, _, model) = chain(dir);
    let old = pattern(9, 3 * MIB as usize + 5);
    for name in ["out.vhdx", "out.raw"] {
        let out = dir.join(name);
        std::fs::write(&out, &old).unwrap();
        // 8 MiB: room for the first blocks of the output, not for all of them
        // (the output's data ends at 31 MiB).
        let o = tool_with_file_limit(dir, 8 << 10, &["convert", "grandchild.vhdx", name, "--force"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("too large"), "{name}: {stderr}");
        assert!(std::fs::read(&out).unwrap() == old, "{name}: the old file changed");
        assert!(leftovers(dir, name).is_empty(), "{name}: a temporary file was left");
        // Without the limit it completes.
        let o = tool(dir, &["convert", "grandchild.vhdx", name, "--force"]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(content(&dir.join("out.vhdx")) == model);
    assert!(std::fs::read(dir.join("out.raw")).unwrap() == model);
}

/// Bytes of `path` backed by space (the convert's progress as a kill point).
fn allocated(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// How a killed run ended, as far as the destination shows.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Absent,
    Old,
    Complete,
}

#[test]
fn a_killed_convert_leaves_the_destination_as_it_was_and_a_rerun_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 96 MiB of data in a 128 MiB source: long enough to be killed midway.
    let src = dir.join("src.vhdx");
    let mut model = vec![0u8; 128 * MIB as usize];
    let mut d = Disk::create(&src, &CreateOptions::dynamic(128 * MIB).block_size(2 * MIB as u32)).unwrap();
    for (i, at) in [0, 10 * MIB, 40 * MIB, 64 * MIB, 100 * MIB].into_iter().enumerate() {
        let data = pattern(20 + i as u64, if i == 0 { 40 * MIB as usize } else { 14 * MIB as usize });
        d.write_at(&data, at).unwrap();
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
    }
    d.close().unwrap();
    let old = pattern(30, 2 * MIB as usize);
    let mut seen = Vec::new();
    // A VHDX output, and a VHD one (the same replacement, another writer).
    for (name, old_exists) in [("out.vhdx", false), ("out.vhdx", true), ("out.vhd", false), ("out.vhd", true)] {
        let out = dir.join(name);
        let _ = std::fs::remove_file(&out);
        for l in leftovers(dir, name) {
            std::fs::remove_file(l).unwrap();
        }
        if old_exists {
            std::fs::write(&out, &old).unwrap();
        }
        // Kill points: the temporary file's allocated size reaching each
        // threshold (0: just created), and fixed delays after the start.
        let points: Vec<(Option<u64>, u64)> = [0, MIB, 8 * MIB, 32 * MIB, 64 * MIB, 90 * MIB]
            .into_iter()
            .map(|t| (Some(t), 0))
            .chain([1, 30, 200].into_iter().map(|ms| (None, ms)))
            .collect();
        for (threshold, delay_ms) in points {
            let what = format!("{name}, old file {old_exists}, kill at {threshold:?} bytes / {delay_ms} ms");
            let mut child = Command::new(vhdx_tool())
                .current_dir(dir)
                .args(["convert", "src.vhdx", name, "--force"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn_retrying();
            let start = Instant::now();
            let mut finished = None;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    finished = Some(status);
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(120), "{what}: the convert hangs");
                let reached = match threshold {
                    Some(t) => leftovers(dir, name).iter().any(|p| allocated(p).is_some_and(|n| n >= t)),
                    None => start.elapsed() >= Duration::from_millis(delay_ms),
                };
                if reached {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            if finished.is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
            }
            let state = match std::fs::read(&out) {
                Err(_) => Seen::Absent,
                Ok(bytes) if bytes == old => Seen::Old,
                Ok(_) => {
                    // Anything else must be the whole result.
                    assert!(content(&out) == model, "{what}: the destination holds a partial image");
                    Seen::Complete
                }
            };
            let expected_before = if old_exists { Seen::Old } else { Seen::Absent };
            assert!(state == expected_before || state == Seen::Complete, "{what}: {state:?}");
            if finished.is_some_and(|s| s.success()) {
                assert_eq!(state, Seen::Complete, "{what}: finished, yet the output is not in place");
            }
            seen.push((what, state, finished.is_some(), leftovers(dir, name).len()));
            // Back to the starting point for the next kill.
            if old_exists {
                std::fs::write(&out, &old).unwrap();
            } else {
                let _ = std::fs::remove_file(&out);
            }
        }
        // A rerun removes the leftovers and completes.
        let o = tool(dir, &["convert", "src.vhdx", name, "--force"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(leftovers(dir, name).is_empty(), "the rerun left temporary files");
        assert!(content(&out) == model, "the rerun's output differs from the source");
        if crate::common::qemu::qemu_present() {
            let raw = dir.join("qemu.raw");
            let format = if name.ends_with(".vhd") { "vpc" } else { "vhdx" };
            crate::common::qemu::qemu_img(&[
                "convert",
                "-f",
                format,
                "-O",
                "raw",
                out.to_str().unwrap(),
                raw.to_str().unwrap(),
            ]);
            assert!(std::fs::read(&raw).unwrap() == model, "QEMU reads the output differently");
            std::fs::remove_file(raw).unwrap();
        }
    }
    for s in &seen {
        eprintln!("{s:?}");
    }
    // The kills must have landed midway at least once (else this test
    // proves nothing): a temporary file left behind by a killed writer.
    for name in ["out.vhdx,", "out.vhd,"] {
        assert!(
            seen.iter().any(|(what, _, finished, left)| what.starts_with(name) && !finished && *left > 0),
            "no kill landed midway for {name}"
        );
    }
}
