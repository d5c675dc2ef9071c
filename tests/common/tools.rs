//! The system tools the tests use as oracles (mkfs, fsck, partitioning):
//! found on PATH, or in the sbin directories a user's PATH may lack.

use std::path::PathBuf;

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
