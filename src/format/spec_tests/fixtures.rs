//! Real images for the unit tests: the Windows-made (and QEMU-made) fixtures
//! of `shared/fixtures` (see its SOURCES.md), found as the integration tests
//! find them: `$VHDX_FIXTURES`, else `../shared/fixtures` next to the crate.
//! Missing fixtures fail the test under `CI=true` and skip it (with a note)
//! elsewhere.

use std::io::Read;
use std::path::PathBuf;
use std::vec::Vec;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("VHDX_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join("fixtures"),
    };
    if dir.join("SOURCES.md").is_file() {
        return Some(dir);
    }
    let what = std::format!("the fixture directory {} (set VHDX_FIXTURES)", dir.display());
    if in_ci() {
        panic!("{what} is not available, and CI=true requires it");
    }
    std::eprintln!("note: skipping this test: {what} is not available (under CI=true this would fail)");
    None
}

/// The first `max` bytes (or all, if shorter) of the decompressed fixture
/// `rel` (e.g. `"dfvfs/ntfs-differential.vhdx.gz"`); `None` when the
/// fixtures are missing outside CI.
pub fn prefix(rel: &str, max: usize) -> Option<Vec<u8>> {
    let path = fixtures_dir()?.join(rel);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    let reader: std::boxed::Box<dyn Read> = if rel.ends_with(".gz") {
        std::boxed::Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if rel.ends_with(".bz2") {
        std::boxed::Box::new(bzip2::read::BzDecoder::new(file))
    } else {
        std::boxed::Box::new(file)
    };
    let mut out = Vec::new();
    reader.take(max as u64).read_to_end(&mut out).unwrap_or_else(|e| panic!("decompressing {rel}: {e}"));
    Some(out)
}
