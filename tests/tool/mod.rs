//! The command-line tool (`src/bin/vhdx`, feature `cli`) for tests that run
//! it: Cargo builds it for the integration tests (the crate's dev-dependency
//! on itself turns `cli` on) and names it in `CARGO_BIN_EXE_vhdx`.
//!
//! The one place that knows how; the test support modules include it with
//! `#[path = "../tool/mod.rs"]`.

use std::path::Path;

/// The built `vhdx` command.
pub fn vhdx() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vhdx"))
}
