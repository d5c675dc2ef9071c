//! Running the command-line tool (`src/bin/vhdx`) from a test: running it
//! in a directory, and judging its exit status and its one `error: …` line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The built `vhdx` command (see `tests/tool`).
pub fn bin() -> &'static Path {
    crate::tool::vhdx()
}

/// The same, under the name the library-level tests use.
pub fn vhdx_tool() -> &'static Path {
    bin()
}

/// Runs `vhdx ARGS…` in `dir` (a start that fails is tried again: see
/// [`super::StartRetrying`]).
pub fn run(dir: &Path, args: &[&str]) -> Output {
    use super::StartRetrying;
    Command::new(bin()).current_dir(dir).args(args).output_retrying()
}

/// Runs `vhdx ARGS…` in `dir`, which must succeed; returns stdout.
pub fn ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "vhdx {} failed ({:?}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// [`ok`] as text.
pub fn ok_text(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(ok(dir, args)).expect("UTF-8 output")
}

/// Runs `vhdx ARGS…` with `--json` output that must succeed, parsed.
pub fn json(dir: &Path, args: &[&str]) -> Value {
    let out = ok(dir, args);
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("vhdx {}: not JSON ({e})", args.join(" ")))
}

/// The one `error: …` line of a failed run (status 1, no panic).
pub fn error_line(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: want one error line, got: {stderr}");
    errors[0].to_string()
}

/// Runs `vhdx ARGS…`, which must fail with status 1 and exactly one stderr
/// line `error: …` that contains every one of `names`; returns that line.
pub fn fails(dir: &Path, args: &[&str], names: &[&str]) -> String {
    let line = error_line(&run(dir, args), &format!("vhdx {}", args.join(" ")));
    for name in names {
        assert!(line.contains(name), "vhdx {}: the error does not name {name}: {line}", args.join(" "));
    }
    line
}

/// Everything `file` presents, read through the tool.
pub fn view(dir: &Path, file: &str) -> Vec<u8> {
    let size = json(dir, &["info", file, "--json"])["virtual_size"].as_u64().expect("virtual_size");
    let bytes = ok(dir, &["read", file, "--offset", "0", "--length", &size.to_string()]);
    assert_eq!(bytes.len() as u64, size);
    bytes
}

/// Writes `data` at `offset` of `file` through the tool, and into `model`.
pub fn write(dir: &Path, file: &str, offset: u64, data: &[u8], model: &mut [u8]) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let input = std::env::temp_dir().join(format!("vhdx-input-{}-{n}.bin", std::process::id()));
    std::fs::write(&input, data).unwrap();
    ok(dir, &["write", file, "--offset", &offset.to_string(), "--input", input.to_str().unwrap()]);
    std::fs::remove_file(input).unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// The bytes of every file in `dir` (recursively), by path.
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                dirs.push(p);
            } else if meta.is_file() {
                let b = std::fs::read(&p).unwrap();
                v.push((p, b));
            }
        }
    }
    v.sort();
    v
}
