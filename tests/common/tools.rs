//! The system tools the tests use as oracles (mkfs, fsck, partitioning):
//! found on PATH, or in the sbin directories a user's PATH may lack.

use std::path::{Path, PathBuf};

/// Where the tool `name` is.
pub fn sbin_tool(name: &str) -> Option<PathBuf> {
    // Linux programs: a Windows build (under Wine) may see their files
    // through Z:, but cannot run them.
    if cfg!(not(unix)) {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What libvhdi (Debian's python3-libvhdi) reads of `image` over
/// `parents` (nearest first): the sha256 of the whole disk and its size.
/// `None` when libvhdi is missing (outside CI).
pub fn libvhdi_reads_chain(image: &Path, parents: &[&Path]) -> Option<(String, u64)> {
    const SCRIPT: &str = r#"
import hashlib, sys, pyvhdi
def opened(p):
    f = pyvhdi.file()
    f.open(p)
    return f
files = [opened(p) for p in sys.argv[1:]]  # kept alive: libvhdi reads through them
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
f = files[0]
size = f.get_media_size()
h = hashlib.sha256()
at = 0
while at < size:
    n = min(4 << 20, size - at)
    h.update(f.read_buffer_at_offset(n, at))
    at += n
print(h.hexdigest(), size)
"#;
    let python = "/usr/bin/python3";
    // A Linux program: a Windows build sees its file through Z:, but
    // cannot run it.
    if cfg!(not(unix)) || !crate::common::qemu::run(python, &["-c", "import pyvhdi"]).status.success() {
        crate::common::unavailable("libvhdi (Debian python3-libvhdi, for /usr/bin/python3)");
        return None;
    }
    let mut args = vec!["-c", SCRIPT, image.to_str().unwrap()];
    args.extend(parents.iter().map(|p| p.to_str().unwrap()));
    let out = crate::common::qemu::run_ok(python, &args);
    let mut words = out.split_whitespace();
    Some((words.next().unwrap().to_string(), words.next().unwrap().parse().unwrap()))
}
