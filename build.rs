//! With the `header` feature: generates the C header, `vhdx.h`, from the
//! `extern "C"` surface in `src/capi/` with cbindgen (settings in
//! `cbindgen.toml`) into `OUT_DIR`; with `VHDX_REGENERATE_HEADER=1` in the
//! environment, also rewrites the committed `include/vhdx.h` (only when its
//! content changes). Without the feature it does nothing, so building the
//! crate never builds cbindgen nor touches anything outside `OUT_DIR`.
//!
//! CI regenerates the committed header this way and fails when `git diff`
//! shows a difference:
//! `VHDX_REGENERATE_HEADER=1 cargo build --features header && git diff --exit-code include/vhdx.h`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "header")]
    header::generate();
}

#[cfg(feature = "header")]
mod header {
    use std::env;
    use std::fs;
    use std::path::PathBuf;

    pub fn generate() {
        println!("cargo:rerun-if-changed=src/capi");
        println!("cargo:rerun-if-changed=cbindgen.toml");
        println!("cargo:rerun-if-env-changed=VHDX_REGENERATE_HEADER");

        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let config =
            cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is readable and valid");
        // Only src/capi/ (and the modules it declares) is parsed: the header
        // holds the C API and nothing of the Rust API's constants or types.
        let bindings = cbindgen::Builder::new()
            .with_config(config)
            .with_src(root.join("src/capi/mod.rs"))
            .generate()
            .expect("cbindgen can generate the C header from src/capi/");
        let mut header = Vec::new();
        bindings.write(&mut header);
        fs::write(out.join("vhdx.h"), &header).expect("can write vhdx.h in OUT_DIR");

        if env::var_os("VHDX_REGENERATE_HEADER").is_some_and(|v| v == "1") {
            let path = root.join("include").join("vhdx.h");
            if fs::read(&path).ok().as_deref() != Some(header.as_slice()) {
                fs::create_dir_all(root.join("include")).expect("can create include/");
                fs::write(&path, &header).expect("can write include/vhdx.h");
            }
        }
    }
}
