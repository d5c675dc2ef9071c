//! QEMU as the oracle: whether its tools are there (a skip with a note, or
//! under `CI=true` a failure), running them and judging their output.

use std::path::Path;
use std::process::{Command, Output};

use super::unavailable;

/// Whether `qemu-img` and `qemu-io` can be used. Outside CI a missing QEMU
/// skips the test (after a note); under `CI=true` it fails the test.
pub fn qemu() -> bool {
    qemu_present() || unavailable("QEMU (qemu-img and qemu-io on PATH)")
}

/// Whether `qemu-img` and `qemu-io` run, without judging.
pub fn qemu_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        ["qemu-img", "qemu-io"]
            .iter()
            .all(|tool| Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
    })
}

/// Runs a command and returns its output, without judging the exit status.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn describe(program: &str, args: &[&str], out: &Output) -> String {
    format!(
        "`{program} {}` exited with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command, asserts it succeeded, and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{}", describe(program, args, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img <args>`, which must succeed.
pub fn qemu_img(args: &[&str]) -> String {
    run_ok("qemu-img", args)
}

/// `qemu-io -f vhdx <image> -c <cmd>...`, which must succeed and report no
/// error (qemu-io exits 0 even when a command fails, so its output is checked).
pub fn qemu_io(image: &Path, cmds: &[String]) -> String {
    let img = image.to_str().unwrap();
    let mut args: Vec<&str> = vec!["-f", "vhdx"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    let out = run("qemu-io", &args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success()
            && !text.contains("error")
            && !text.contains("failed")
            && !text.contains("Pattern verification"),
        "{}",
        describe("qemu-io", &args, &out)
    );
    text
}

/// `qemu-img check -f vhdx` must pass and report no errors, no leaks and no
/// corruptions.
pub fn qemu_check_clean(image: &Path) {
    qemu_check_clean_with(image, &[]);
}

/// [`qemu_check_clean`] with more `qemu-img check` options (`-U` to check
/// an image open for writing elsewhere).
pub fn qemu_check_clean_with(image: &Path, options: &[&str]) {
    let img = image.to_str().unwrap();
    let mut args = vec!["check", "-f", "vhdx", "--output=json"];
    args.extend_from_slice(options);
    args.push(img);
    let out = run("qemu-img", &args);
    assert!(out.status.success(), "{}", describe("qemu-img", &["check", "-f", "vhdx", img], &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img check --output=json gives JSON");
    for key in ["corruptions", "leaks", "check-errors", "corruptions-fixed", "leaks-fixed"] {
        let n = v.get(key).and_then(|x| x.as_u64()).unwrap_or(0);
        assert_eq!(n, 0, "qemu-img check reports {key} = {n} for {img}: {v}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.to_lowercase().contains("log"), "qemu-img check complains about the log of {img}: {stderr}");
}

/// `qemu-img convert -f vhdx -O raw image out`.
pub fn qemu_convert_to_raw(image: &Path, out: &Path) {
    qemu_img(&["convert", "-f", "vhdx", "-O", "raw", image.to_str().unwrap(), out.to_str().unwrap()]);
}

/// `qemu-img info --output=json`, parsed.
pub fn qemu_info(image: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "-f", "vhdx", "--output=json", image.to_str().unwrap()]);
    serde_json::from_str(&out).expect("qemu-img info --output=json gives JSON")
}
