//! Two processes and one image, through the command-line tool as a user
//! meets it: a command that writes is refused (exit status 1, "in use")
//! while another process holds the image, and nothing is written; two
//! write loops on one image never lose a write; merge, merge-siblings,
//! set-parent and compact refuse to start while another process holds an
//! image they change, and change nothing; `-U` inspects an image in use;
//! and FIFOs never make a command hang. Every command runs with a deadline.
//!
//! The oracles: a byte model of the successful writes, SHA-256 of every file
//! before and after a refused operation, and the kernel's `/proc/locks`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::common::data::pattern;
use crate::common::StartRetrying;
use crate::support::{cli_bin, run_within, stderr, vhdx, Holder};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// `vhdx ARGS…`, which must succeed.
fn ok(args: &[&str]) -> Vec<u8> {
    let out = vhdx(args);
    assert!(out.status.success(), "vhdx {} failed: {}", args.join(" "), stderr(&out));
    out.stdout
}

/// `vhdx ARGS…`, which must fail with exit status 1 and one `error:` line
/// saying that `file` is in use.
fn refused_busy(args: &[&str], file: &Path) -> String {
    let out = vhdx(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "vhdx {} was not refused: {err}", args.join(" "));
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("in use by another process"), "vhdx {}: {err}", args.join(" "));
    err
}

fn create(path: &Path, size: u64) {
    ok(&["create", s(path), "--size", &size.to_string(), "--block-size", "1M"]);
}

/// `vhdx write PATH --offset AT` of `data` (through an input file).
fn write_cmd(path: &Path, at: u64, data: &[u8], input: &Path) -> std::process::Output {
    std::fs::write(input, data).unwrap();
    vhdx(&["write", s(path), "--offset", &at.to_string(), "--input", s(input)])
}

fn read_cmd(path: &Path, at: u64, len: u64, extra: &[&str]) -> Vec<u8> {
    let (at, len) = (at.to_string(), len.to_string());
    let mut args = vec!["read", s(path), "--offset", &at, "--length", &len];
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn write_is_refused_while_serve_holds_the_image_and_read_with_u_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("held.vhdx");
    create(&img, 8 * MIB);
    let input = dir.path().join("in.bin");
    assert!(write_cmd(&img, 0, &pattern(1, 4096), &input).status.success());
    let holder = Holder::vhdx_serve(&img, &[]);

    let out = write_cmd(&img, MIB, &pattern(2, 65536), &input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: ") && err.contains("held.vhdx") && err.contains("in use"), "{err}");
    for cmd in ["read", "info", "map", "check", "changes"] {
        let mut args = vec![cmd, s(&img)];
        if cmd == "read" {
            args.extend_from_slice(&["--offset", "0", "--length", "4096"]);
        }
        let err = refused_busy(&args, &img);
        assert!(err.contains("-U"), "a refused read says how to look anyway: {err}");
        args.push("-U");
        ok(&args);
    }
    refused_busy(&["tree", s(&img)], &img);
    ok(&["tree", s(&img), "--force-share"]);
    // What is seen with -U is the served image, without the refused write.
    assert_eq!(read_cmd(&img, 0, 4096, &["-U"]), pattern(1, 4096));
    assert_eq!(read_cmd(&img, MIB, 65536, &["-U"]), vec![0u8; 65536]);
    // -U is for reading only.
    let out = vhdx(&["check", s(&img), "--repair", "-U"]);
    assert_eq!(out.status.code(), Some(1));
    for args in [vec!["resize", s(&img), "--size", "16M"], vec!["discard", s(&img), "--offset", "0", "--length", "1M"]]
    {
        refused_busy(&args, &img);
    }
    refused_busy(&["compact", s(&img)], &img);
    refused_busy(&["check", s(&img), "--repair"], &img);
    let out = Command::new(cli_bin()).args(["serve", s(&img), "--port", "0"]).output_retrying();
    assert!(stderr(&out).contains("in use") && out.status.code() == Some(1), "{}", stderr(&out));
    drop(holder);

    // Nothing was written behind the holder's back.
    assert_eq!(read_cmd(&img, MIB, 65536, &[]), vec![0u8; 65536]);
    assert_eq!(read_cmd(&img, 0, 4096, &[]), pattern(1, 4096));
    ok(&["check", s(&img)]);
}

#[test]
fn two_write_loops_on_one_image_lose_nothing() {
    const ROUNDS: u64 = 24;
    const LEN: usize = 192 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("shared.vhdx");
    create(&img, 2 * ROUNDS * MIB);
    // Each write goes into a block of its own, so each allocates one: two
    // unlocked writers would allocate the same place in the file.
    let loops: Vec<_> = (0..2u64)
        .map(|t| {
            let (img, input) = (img.clone(), dir.path().join(format!("in{t}.bin")));
            std::thread::spawn(move || {
                let mut results = Vec::new();
                for i in 0..ROUNDS {
                    let at = (2 * i + t) * MIB + 512 * (i % 3);
                    let data = pattern(100 * t + i, LEN);
                    // A write refused as busy is tried again, a few times.
                    for _ in 0..20 {
                        let out = write_cmd(&img, at, &data, &input);
                        let done = out.status.success();
                        results.push((at, data.clone(), out));
                        if done {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(3 + 7 * t));
                    }
                }
                results
            })
        })
        .collect();
    let mut model = vec![0u8; (2 * ROUNDS * MIB) as usize];
    let (mut written, mut refused) = (0, 0);
    for handle in loops {
        for (at, data, out) in handle.join().unwrap() {
            if out.status.success() {
                model[at as usize..at as usize + LEN].copy_from_slice(&data);
                written += 1;
            } else {
                let err = stderr(&out);
                assert_eq!(out.status.code(), Some(1), "{err}");
                assert!(err.contains("shared.vhdx") && err.contains("in use"), "a write failed otherwise: {err}");
                refused += 1;
            }
        }
    }
    eprintln!("{written} writes done, {refused} refused as busy");
    assert!(written >= ROUNDS, "too few writes got through ({written}) to judge");
    assert_eq!(written, 2 * ROUNDS, "some writes were refused 20 times in a row");
    let got = read_cmd(&img, 0, 2 * ROUNDS * MIB, &[]);
    if got != model {
        let block = |v: &[u8], b: usize| v[b * MIB as usize..(b + 1) * MIB as usize].to_vec();
        let lost = (0..2 * ROUNDS as usize).filter(|&b| block(&got, b) != block(&model, b)).count();
        panic!("{lost} of {} blocks differ from the successful writes: writes were lost", 2 * ROUNDS);
    }
    ok(&["check", s(&img)]);
}

/// base ← child, base ← sibling, each with data of its own, made with the CLI.
fn tree(dir: &Path) -> [PathBuf; 3] {
    let [base, child, sibling] = ["base", "child", "sibling"].map(|n| dir.join(format!("{n}.vhdx")));
    create(&base, 8 * MIB);
    let input = dir.join("in.bin");
    assert!(write_cmd(&base, 0, &pattern(1, 3 * MIB as usize), &input).status.success());
    ok(&["create", s(&child), "--parent", s(&base)]);
    ok(&["create", s(&sibling), "--parent", s(&base)]);
    assert!(write_cmd(&child, MIB, &pattern(2, 100_000), &input).status.success());
    assert!(write_cmd(&sibling, 2 * MIB + 512, &pattern(3, 70_000), &input).status.success());
    [base, child, sibling]
}

fn hashes(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| sha(f)).collect()
}

#[test]
fn chain_operations_refuse_images_in_use_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = tree(dir.path());
    let [base, child, sibling] = &files;
    let before = hashes(&files);
    // A reader of the image an operation changes is enough to refuse it:
    // this process reading one image alone (without its parent), or
    // `serve --read-only` reading the base.
    let cases: Vec<(Vec<&str>, &PathBuf)> = vec![
        (vec!["merge", s(child), "--force"], child),
        (vec!["merge", s(child), "--force"], base),
        (vec!["merge", s(child), "--preserve-siblings"], sibling),
        (vec!["merge-siblings", s(base), s(child), s(sibling)], sibling),
        (vec!["merge-siblings", s(base), s(child), s(sibling)], child),
        (vec!["merge-siblings", s(base), s(child), s(sibling)], base),
        (vec!["set-parent", s(child), s(base)], child),
        (vec!["compact", s(child)], child),
        (vec!["compact", s(base)], base),
    ];
    for (args, held) in &cases {
        let holder = if *held == base {
            Ok(Holder::vhdx_serve(held, &["--read-only"]))
        } else {
            Err(vhdx::OpenOptions::new().without_parent().open(held).unwrap())
        };
        refused_busy(args, held);
        drop(holder);
        assert_eq!(hashes(&files), before, "vhdx {} changed a file", args.join(" "));
    }
    // A writer of the parent refuses a merge into it, and merge-siblings.
    let holder = Holder::vhdx_serve(base, &[]);
    for args in [vec!["merge", s(child), "--force"], vec!["merge-siblings", s(base), s(child), s(sibling)]] {
        refused_busy(&args, base);
        assert_eq!(hashes(&files), before, "vhdx {} changed a file", args.join(" "));
    }
    // A dry run only reads: it shares with readers, not with a writer.
    refused_busy(&["merge-siblings", s(base), s(child), s(sibling), "--dry-run"], base);
    drop(holder);
    let holder = Holder::vhdx_serve(child, &["--read-only"]);
    ok(&["merge-siblings", s(base), s(child), s(sibling), "--dry-run"]);
    drop(holder);
    assert_eq!(hashes(&files), before);
    // Free again, the merge goes through.
    ok(&["merge", s(child), "--preserve-siblings"]);
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[cfg(unix)]
#[test]
fn fifos_never_make_a_command_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.vhdx");
    mkfifo(&fifo);
    for args in [
        vec!["info", s(&fifo)],
        vec!["check", s(&fifo)],
        vec!["check", s(&fifo), "--repair"],
        vec!["read", s(&fifo), "--offset", "0", "--length", "1"],
        vec!["compact", s(&fifo)],
        vec!["serve", s(&fifo), "--port", "0"],
    ] {
        let out = vhdx(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "vhdx {}: {err}", args.join(" "));
        assert!(err.contains("fifo.vhdx") && err.contains("FIFO"), "vhdx {}: {err}", args.join(" "));
    }
    // A FIFO named as a VHD: the commands that take VHDs look at content
    // first, which must not block either.
    let vhd = dir.path().join("fifo.vhd");
    mkfifo(&vhd);
    let input = dir.path().join("input.bin");
    std::fs::write(&input, [1u8; 512]).unwrap();
    for args in [
        vec!["info", s(&vhd)],
        vec!["map", s(&vhd)],
        vec!["check", s(&vhd)],
        vec!["write", s(&vhd), "--offset", "0", "--input", s(&input)],
        vec!["convert", s(&vhd), "x.vhdx"],
        vec!["create", s(&dir.path().join("child.vhd")), "--parent", s(&vhd)],
        vec!["serve", s(&vhd), "--port", "0"],
    ] {
        let out = vhdx(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "vhdx {}: {err}", args.join(" "));
        assert!(err.contains("FIFO"), "vhdx {}: {err}", args.join(" "));
    }
    let raw = dir.path().join("fifo.raw");
    mkfifo(&raw);
    let out = vhdx(&["convert", s(&raw), s(&dir.path().join("out.vhdx"))]);
    assert!(out.status.code() == Some(1) && stderr(&out).contains("FIFO"), "{}", stderr(&out));

    // A parent replaced by a FIFO, and FIFOs in the directory a tree or a
    // merge scans.
    let [base, child, _sibling] = tree(dir.path());
    std::fs::rename(&base, dir.path().join("moved")).unwrap();
    mkfifo(&base);
    let out = vhdx(&["info", s(&child)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("FIFO") || stderr(&out).contains("FIFO"));
    std::fs::remove_file(&base).unwrap();
    std::fs::rename(dir.path().join("moved"), &base).unwrap();
    mkfifo(&dir.path().join("other.avhdx"));
    let listing = String::from_utf8(ok(&["tree", s(dir.path())])).unwrap();
    assert!(listing.contains("child.vhdx") && !listing.contains("fifo") && !listing.contains("other"), "{listing}");
    ok(&["tree", s(&child)]);
    ok(&["merge", s(&child), "--preserve-siblings"]);
}

#[test]
fn a_serve_that_cannot_lock_says_so_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("twice.vhdx");
    create(&img, 4 * MIB);
    let holder = Holder::vhdx_serve(&img, &[]);
    let mut cmd = Command::new(cli_bin());
    cmd.args(["serve", s(&img), "--port", "0", "--read-only"]);
    let out = run_within(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in use") && !stderr(&out).contains("nbd://"), "{}", stderr(&out));
    drop(holder);
}
