//! The command-line tool (`examples/vhdx`) for tests that run it: Cargo has
//! no `CARGO_BIN_EXE_` for examples, so the example is built once per test
//! binary with the profile and target directory the test runs from
//! (`target/<profile>/deps/<test>-…` → `target/<profile>/examples/vhdx`).
//!
//! The one place that knows how; the test support modules include it with
//! `#[path = "../tool/mod.rs"]`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The built `vhdx` example.
pub fn vhdx() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(name) => name,
        }
        .to_string();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "--example", "vhdx", "--profile"]);
        cargo.arg(&profile);
        // The directory holding target/<profile> is the target directory
        // (cargo marks it with CACHEDIR.TAG); with --target <triple> it is
        // not, and cargo's own setting (CARGO_TARGET_DIR, config) applies.
        if let Some(target_dir) = profile_dir.parent().filter(|d| d.join("CACHEDIR.TAG").exists()) {
            cargo.arg("--target-dir").arg(target_dir);
        }
        let status = cargo.status().expect("running cargo build --example vhdx");
        assert!(status.success(), "cargo build --example vhdx --profile {profile} failed");
        let bin = profile_dir.join("examples").join(format!("vhdx{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}
