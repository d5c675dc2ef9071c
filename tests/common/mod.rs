//! What the integration tests share, one concept a module: deterministic
//! data, reference models, files and fixtures, comparisons, QEMU as the
//! oracle, the format's layout read by the test itself, in-memory storage,
//! and the command-line tool.
//!
//! A test binary includes this module with `mod common;` (from a
//! subdirectory: `#[path = "../common/mod.rs"]`) and needs `mod tool;`
//! (`tests/tool`) at its root, which [`cli`] uses.

// Each test binary compiles these modules and uses a different part of
// them, so what one binary leaves unused is not dead: the allowance sits on
// each module's declaration, not on the items.
#[allow(dead_code)]
pub mod cli;
#[allow(dead_code)]
pub mod compare;
#[allow(dead_code)]
pub mod data;
#[allow(dead_code)]
pub mod files;
#[allow(dead_code)]
pub mod layout;
#[allow(dead_code)]
pub mod models;
#[allow(dead_code)]
pub mod qemu;
#[allow(dead_code)]
pub mod storage;
#[allow(dead_code)]
pub mod tools;

/// Positioned reads and writes of a file (`read_exact_at`, `write_all_at`):
/// Unix's own `FileExt`, and on Windows the same methods made from
/// `seek_read`/`seek_write`, so the tests run on both.
#[cfg(unix)]
pub use std::os::unix::fs::FileExt;

#[cfg(windows)]
pub trait FileExt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

#[cfg(windows)]
impl FileExt for std::fs::File {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::windows::fs::FileExt as _;
        while !buf.is_empty() {
            match self.seek_read(buf, offset) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::windows::fs::FileExt as _;
        while !buf.is_empty() {
            match self.seek_write(buf, offset) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether the tests run under CI (`CI=true`), where a missing oracle or
/// fixture is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Skips the test (returns `false` after printing a note), or under CI fails.
pub fn unavailable(what: &str) -> bool {
    if in_ci() {
        panic!("{what} is not available, and CI=true requires it");
    }
    eprintln!("note: skipping this test: {what} is not available (under CI=true this would fail)");
    // Counted by .ci/windows, where passing tests' output is not shown.
    if let Some(log) = std::env::var_os("VHDX_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{what}");
        }
    }
    false
}

/// Starting a program, tried again when the start itself fails (the
/// process never ran), up to five times, 200 ms apart: under Wine,
/// `CreateProcess` now and then fails for no reason of the test's (seen in
/// CI at three different starts of `vhdx`). A program that ran, however it
/// ended, is never started again.
#[allow(dead_code)] // each test program uses what it needs
pub trait StartRetrying {
    /// [`std::process::Command::spawn`], retried; panics when every try failed.
    fn spawn_retrying(&mut self) -> std::process::Child;
    /// [`std::process::Command::output`], retried; panics when every try failed.
    fn output_retrying(&mut self) -> std::process::Output;
}

impl StartRetrying for std::process::Command {
    fn spawn_retrying(&mut self) -> std::process::Child {
        retry_start(self, |c| c.spawn())
    }
    fn output_retrying(&mut self) -> std::process::Output {
        retry_start(self, |c| c.output())
    }
}

fn retry_start<T>(
    command: &mut std::process::Command,
    start: impl Fn(&mut std::process::Command) -> std::io::Result<T>,
) -> T {
    let mut tries = 0;
    loop {
        match start(command) {
            Ok(t) => return t,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("starting {:?} failed ({e}); trying again", command.get_program());
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("starting {:?}: {e}", command.get_program()),
        }
    }
}
