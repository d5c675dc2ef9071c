//! Files on disk: the Windows-made fixtures (found, decompressed into
//! temporary directories with their zero stretches left as holes), sparse
//! copies, and plain writes.

use super::FileExt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::unavailable;

/// The fixture directory: `$VHDX_FIXTURES`, else `../shared/fixtures` next
/// to the crate. `None` (after a note) when it is missing outside CI.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("VHDX_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join("fixtures"),
    };
    if dir.join("SOURCES.md").is_file() {
        Some(dir)
    } else {
        unavailable(&format!("the fixture directory {} (set VHDX_FIXTURES)", dir.display()));
        None
    }
}

/// A fixture decompressed into its own temporary directory.
pub struct Fixture {
    /// The decompressed container.
    pub path: PathBuf,
    /// Keeps the directory alive.
    pub dir: TempDir,
}

/// Decompresses the fixture `rel` (e.g. `"qemu/iotest-dynamic-1G.vhdx.bz2"`)
/// into a fresh temporary directory; `None` when the fixtures are missing
/// outside CI.
pub fn fixture(rel: &str) -> Option<Fixture> {
    let src = fixtures_dir()?.join(rel);
    assert!(src.is_file(), "fixture {} is missing from the fixture directory", src.display());
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let path = decompress_into(&src, dir.path());
    Some(Fixture { path, dir })
}

/// Decompresses a fixture into another fixture's directory (so a child and its
/// parent sit side by side, as the relative locator expects).
pub fn fixture_into(rel: &str, dir: &Path) -> PathBuf {
    let src = fixtures_dir().expect("fixtures present").join(rel);
    decompress_into(&src, dir)
}

/// Decompresses `src` (`.gz` or `.bz2`, else copied) into `dir`, streaming, and
/// keeping all-zero stretches as holes so the 600 MiB containers stay small.
pub fn decompress_into(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap().to_string_lossy().into_owned();
    let input = File::open(src).unwrap_or_else(|e| panic!("opening {}: {e}", src.display()));
    let (stem, mut reader): (&str, Box<dyn Read>) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(input))))
    } else if let Some(stem) = name.strip_suffix(".bz2") {
        (stem, Box::new(bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(input))))
    } else {
        (name.as_str(), Box::new(input))
    };
    let out_path = dir.join(stem);
    write_sparse(&mut *reader, &out_path).unwrap_or_else(|e| panic!("decompressing {}: {e}", src.display()));
    out_path
}

/// Streams `reader` into a new file at `dst`, leaving all-zero 64 KiB pieces as holes.
fn write_sparse(reader: &mut dyn Read, dst: &Path) -> std::io::Result<()> {
    let out = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read_full(reader, &mut buf)?;
        if n == 0 {
            break;
        }
        for (i, piece) in buf[..n].chunks(64 << 10).enumerate() {
            if piece.iter().any(|&b| b != 0) {
                out.write_all_at(piece, pos + (i * (64 << 10)) as u64)?;
            }
        }
        pos += n as u64;
    }
    out.set_len(pos)
}

/// Reads until `buf` is full or the stream ends.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies a file, keeping holes.
pub fn sparse_copy(src: &Path, dst: &Path) {
    let mut input = File::open(src).unwrap_or_else(|e| panic!("opening {}: {e}", src.display()));
    write_sparse(&mut input, dst).unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
}

/// Writes all of `data` to a new file.
pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
}
