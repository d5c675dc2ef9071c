//! The command-line tool's messages for common mistakes: a negative size, a
//! write at the last offset, a file that cannot be read, a file that cannot
//! be written but is served. Each is one `error: …` line that says what is
//! wrong and, where there is one, what to do.

use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vhdx::io::FileOpener;
use vhdx::OpenOptions;

use crate::common::cli::*;
use crate::common::StartRetrying;

/// `vhdx ARGS…` in `dir` with `input` on stdin.
fn run_with_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin())
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_retrying();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[cfg(unix)] // permission bits and uids
/// Whether the tests run as root, for whom permission bits do not apply.
fn root(dir: &Path) -> bool {
    let probe = dir.join(".uid-probe");
    std::fs::write(&probe, b"").unwrap();
    let uid = std::fs::metadata(&probe).unwrap().uid();
    std::fs::remove_file(probe).unwrap();
    uid == 0
}

#[cfg(unix)] // permission bits and uids
/// `vhdx ARGS…` in `dir` as a user that permission bits apply to: the
/// current one, or `nobody` (uid 65534, through `setpriv`) when the tests
/// run as root. `dir` must be reachable by that user.
fn run_unprivileged(dir: &Path, args: &[&str]) -> Output {
    if !root(dir) {
        return run(dir, args);
    }
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running setpriv: as root, the test needs it to drop privileges (util-linux)")
}

#[cfg(unix)] // permission bits and uids
/// A directory any user can enter, with a 1 MiB image `d.vhdx` whose mode is `mode`.
fn image_with_mode(mode: u32) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(d, &["create", "d.vhdx", "--size", "1M"]);
    std::fs::set_permissions(d.join("d.vhdx"), std::fs::Permissions::from_mode(mode)).unwrap();
    tmp
}

#[test]
fn negative_sizes_say_they_are_negative() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["create", "d.vhdx", "--size", "1M"]);
    for args in [
        &["create", "n.vhdx", "--size", "-512"][..],
        &["create", "n.vhdx", "--size=-512"],
        &["create", "n.vhdx", "--size", "-5M"],
        &["create", "n.vhdx", "--size", "1M", "--block-size", "-1M"],
        &["read", "d.vhdx", "--offset", "-1", "--length", "1"],
        &["read", "d.vhdx", "--offset", "0", "--length", "-4K"],
        &["discard", "d.vhdx", "--offset", "0", "--length", "-512"],
        &["resize", "d.vhdx", "--size", "-2G"],
    ] {
        let line = error_line(&run(d, args), &args.join(" "));
        let value = args.iter().find(|a| a.contains('-') && !a.starts_with("--")).copied();
        let value = value.unwrap_or("-512");
        assert!(line.contains("is negative") && line.contains(value), "vhdx {}: {line}", args.join(" "));
    }
    assert!(!d.join("n.vhdx").exists());
}

#[test]
fn a_one_byte_write_at_the_last_offset_says_one_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["create", "d.vhdx", "--size", "1M"]);
    std::fs::write(d.join("one"), b"x").unwrap();
    std::fs::write(d.join("two"), b"xy").unwrap();
    let before = std::fs::read(d.join("d.vhdx")).unwrap();
    let last = u64::MAX.to_string();
    let want = "access of 1 byte at offset 0xffffffffffffffff is outside the virtual disk of 1048576 bytes";
    let from_file = error_line(&run(d, &["write", "d.vhdx", "--offset", &last, "--input", "one"]), "write --input");
    assert!(from_file.contains(want), "{from_file}");
    let from_stdin = error_line(&run_with_stdin(d, &["write", "d.vhdx", "--offset", &last], b"x"), "write < stdin");
    assert!(from_stdin.contains(want), "{from_stdin}");
    let two = error_line(&run(d, &["write", "d.vhdx", "--offset", &last, "--input", "two"]), "write two");
    assert!(two.contains("access of 2 bytes at offset 0xffffffffffffffff"), "{two}");
    let end = (1u64 << 20).to_string();
    let at_end = error_line(&run_with_stdin(d, &["write", "d.vhdx", "--offset", &end], b"x"), "write at the end");
    assert!(at_end.contains("access of 1 byte at offset 0x100000"), "{at_end}");
    assert_eq!(std::fs::read(d.join("d.vhdx")).unwrap(), before, "nothing was written");
    // In range, the same input is written.
    let text = String::from_utf8(run_with_stdin(d, &["write", "d.vhdx", "--offset", "1048575"], b"x").stdout).unwrap();
    assert!(text.starts_with("wrote 1 byte at offset 1048575 of d.vhdx"), "{text}");
}

#[cfg(unix)]
#[test]
fn a_file_that_cannot_be_read_is_not_opened_and_the_message_says_why() {
    let tmp = image_with_mode(0o000);
    let d = tmp.path();
    for args in [&["info", "d.vhdx"][..], &["check", "d.vhdx"], &["read", "d.vhdx", "--offset", "0", "--length", "1"]] {
        let line = error_line(&run_unprivileged(d, args), &args.join(" "));
        assert!(line.starts_with("error: d.vhdx: cannot open the file: "), "vhdx {}: {line}", args.join(" "));
        assert!(line.contains("Permission denied") && !line.contains("offset"), "vhdx {}: {line}", args.join(" "));
    }
}

#[test]
fn the_open_error_comes_from_the_open_path_for_any_opener() {
    // The same message from the library's own open path, whoever runs the test.
    let denied = FileOpener::new(|_, _| Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
    let err = OpenOptions::new().file_opener(denied).open("img.vhdx").unwrap_err();
    assert_eq!(err.kind(), vhdx::ErrorKind::Io);
    assert_eq!(err.to_string(), "img.vhdx: cannot open the file: permission denied");
}

#[cfg(unix)]
#[test]
fn serving_a_file_that_cannot_be_written_suggests_read_only() {
    let tmp = image_with_mode(0o444);
    let d = tmp.path();
    let line = error_line(&run_unprivileged(d, &["serve", "d.vhdx", "--port", "0"]), "serve");
    assert!(line.starts_with("error: d.vhdx: cannot open the file: "), "{line}");
    assert!(line.contains("Permission denied") && line.contains("--read-only"), "{line}");
    // A file that is not there gets no such advice.
    let line = error_line(&run(d, &["serve", "missing.vhdx", "--port", "0"]), "serve missing");
    assert!(line.contains("missing.vhdx") && !line.contains("--read-only"), "{line}");
}
