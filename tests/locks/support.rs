//! What the lock and special-file tests share: the CLI binary, commands run
//! with a deadline (a hang fails the test instead of stalling CI), processes
//! that hold an image open, and the kernel's own list of locks
//! (`/proc/locks`), an oracle independent of the code under test.

use crate::common::StartRetrying;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any command or library call of these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The built `vhdx` example (see `tests/tool`).
pub fn cli_bin() -> PathBuf {
    crate::tool::vhdx().to_path_buf()
}

/// Runs `cmd` to its end, killing it and failing the test if it takes
/// longer than [`DEADLINE`].
pub fn run_within(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn_retrying();
    // Drained as they come, so that the child never blocks on a full pipe.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {DEADLINE:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `vhdx ARGS…`, within the deadline.
pub fn vhdx(args: &[&str]) -> Output {
    let mut cmd = Command::new(cli_bin());
    cmd.args(args);
    run_within(cmd)
}

#[cfg(unix)]
/// Runs `f` on another thread and returns its result, failing the test if
/// it takes longer than [`DEADLINE`] (the thread is then left behind).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("{what} did not return within {DEADLINE:?} (a hang)"))
}

/// `text` of a finished command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(unix)]
/// Whether `program` runs (`--version`). Outside CI a missing program skips
/// the test after a note; under `CI=true` it fails it.
pub fn tool(program: &str) -> bool {
    let ok = Command::new(program).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(!ci, "{program} is not available, and CI=true requires it");
    eprintln!("note: skipping this test: {program} is not available (under CI=true this would fail)");
    false
}

#[cfg(unix)]
/// The bytes locked on `path`'s file, as `/proc/locks` lists them: one
/// `(kind, type, start, end)` per lock (`OFDLCK`/`FLOCK`/`POSIX`,
/// `READ`/`WRITE`; `end` is `None` for "to the end of the file").
pub fn kernel_locks(path: &Path) -> Vec<(String, String, u64, Option<u64>)> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        // "1: OFDLCK ADVISORY  READ -1 fe:00:10011037 100 101"
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] == "->" {
            continue;
        }
        let Some(inode) = f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) else {
            continue;
        };
        if inode != ino {
            continue;
        }
        let start = f[6].parse().unwrap();
        let end = if f[7] == "EOF" { None } else { Some(f[7].parse().unwrap()) };
        out.push((f[1].to_string(), f[3].to_string(), start, end));
    }
    out
}

#[cfg(unix)]
/// The single bytes read-locked as open-file-description locks on `path`,
/// sorted, each byte once (several holders of one byte count once).
pub fn ofd_bytes(path: &Path) -> Vec<u64> {
    let mut bytes: Vec<u64> = kernel_locks(path)
        .into_iter()
        .filter(|(kind, ty, _, _)| kind == "OFDLCK" && ty == "READ")
        .flat_map(|(_, _, start, end)| start..=end.unwrap_or(start))
        .collect();
    bytes.sort_unstable();
    bytes.dedup();
    bytes
}

/// A process holding an image open until dropped (then killed and reaped).
pub struct Holder {
    child: Child,
    #[cfg_attr(not(unix), allow(dead_code))] // named by `start`, Unix only
    what: String,
}

impl Holder {
    #[cfg(unix)] // waits for /proc/locks to list the lock
    /// Starts `cmd` (its stdin a pipe kept open, so interactive tools such
    /// as `qemu-io` keep running) and waits until the kernel lists a lock on
    /// `image` — the holder has opened it.
    pub fn start(mut cmd: Command, image: &Path) -> Holder {
        let what = format!("{cmd:?}");
        let child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn_retrying();
        let mut holder = Holder { child, what };
        let start = Instant::now();
        while kernel_locks(image).is_empty() {
            if let Some(status) = holder.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(holder.child.stderr.as_mut().unwrap(), &mut err);
                panic!("{} exited ({status}) before locking {}: {err}", holder.what, image.display());
            }
            assert!(start.elapsed() < DEADLINE, "{} did not lock {} in time", holder.what, image.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        holder
    }

    /// `vhdx serve IMAGE --port 0 [ARGS…]`, holding the image (and its
    /// parents) open from when it prints its address until dropped.
    pub fn vhdx_serve(image: &Path, args: &[&str]) -> Holder {
        let mut cmd = Command::new(cli_bin());
        cmd.arg("serve").arg(image).args(["--port", "0"]).args(args);
        let what = format!("{cmd:?}");
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn_retrying();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
        assert!(first.contains("nbd://"), "{what} did not start serving: {first}");
        // Keep reading its stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Holder { child, what }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
