//! Writes `include/vhdx.h`, the C header, from the `extern "C"` surface in
//! `src/capi/` with cbindgen (settings in `cbindgen.toml`).
//!
//! The committed header is this output: CI regenerates it and fails when
//! `git diff` shows a difference. The file is rewritten only when its content
//! changes, so a build of an unchanged tree (or of the packaged crate) leaves
//! the source directory untouched.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/capi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is readable and valid");
    // Only src/capi/ (and the modules it declares) is parsed: the header holds
    // the C API and nothing of the Rust API's constants or types.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen can generate the C header from src/capi/");
    let mut header = Vec::new();
    bindings.write(&mut header);

    let path = root.join("include").join("vhdx.h");
    if fs::read(&path).ok().as_deref() != Some(header.as_slice()) {
        fs::create_dir_all(root.join("include")).expect("can create include/");
        fs::write(&path, &header).expect("can write include/vhdx.h");
    }
}
