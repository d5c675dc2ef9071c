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
    false
}
