//! The filesystem parent resolver and locator construction.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::path::{Component, Path, PathBuf};

use super::{check_linkage, ParentResolver, MAX_CHAIN_DEPTH};
use crate::error::{Error, Result};
use crate::format::locator::{self, braced_guid, ParentLocator};
use crate::{Disk, OpenOptions};

/// Finds parents through the locator's paths on the local filesystem.
///
/// With [`FsResolver::confined_to`], only candidates inside the given
/// directories are opened: a locator from an untrusted image cannot then make
/// the tool open arbitrary files.
#[derive(Debug, Clone, Default)]
pub struct FsResolver {
    allowed: Option<Vec<PathBuf>>,
    /// Canonical paths of the chain so far, leaf first.
    chain: Vec<PathBuf>,
    opener: Option<crate::io::FileOpener>,
}

impl FsResolver {
    /// Resolves anywhere the locator points.
    pub fn new() -> Self {
        FsResolver::default()
    }

    /// Resolves only inside `dirs`.
    pub fn confined_to(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        let allowed = dirs.into_iter().map(|d| d.canonicalize().unwrap_or(d)).collect();
        FsResolver { allowed: Some(allowed), chain: Vec::new(), opener: None }
    }

    /// Opens the parent files through `opener` rather than the filesystem
    /// (paths are still found, and confinement checked, on the filesystem).
    pub fn with_opener(mut self, opener: crate::io::FileOpener) -> Self {
        self.opener = Some(opener);
        self
    }

    pub(crate) fn with_leaf(mut self, leaf: &Path) -> Self {
        self.chain = alloc::vec![leaf.canonicalize().unwrap_or_else(|_| leaf.to_path_buf())];
        self
    }

    /// The candidate paths for `locator` of a child at `child`, in order.
    pub fn candidates(child: Option<&Path>, locator: &ParentLocator) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let (Some(rel), Some(child)) = (locator.get(locator::RELATIVE_PATH), child) {
            let dir = child.parent().unwrap_or(Path::new("."));
            out.push(normalize(&dir.join(native(rel))));
        }
        for key in [locator::VOLUME_PATH, locator::ABSOLUTE_WIN32_PATH] {
            if let Some(p) = locator.get(key) {
                let p = native(p);
                if p.is_absolute() || cfg!(windows) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// A Windows-style locator path as a native path (backslashes to `/` on Unix,
/// `\\?\` prefix dropped there).
fn native(p: &str) -> PathBuf {
    if cfg!(windows) {
        return PathBuf::from(p);
    }
    let p = p.strip_prefix(r"\\?\").unwrap_or(p);
    PathBuf::from(p.replace('\\', "/"))
}

impl ParentResolver for FsResolver {
    fn open_parent(&mut self, child: Option<&str>, loc: &ParentLocator, depth: usize) -> Result<(Disk, String)> {
        if depth > MAX_CHAIN_DEPTH {
            return Err(Error::invalid(format!("the parent chain is deeper than {MAX_CHAIN_DEPTH} links")));
        }
        let child_path = child.map(Path::new);
        let candidates = FsResolver::candidates(child_path, loc);
        let mut mismatch: Option<Error> = None;
        let mut tried = Vec::new();
        for cand in candidates {
            tried.push(cand.display().to_string());
            let Ok(canon) = cand.canonicalize() else {
                continue;
            };
            if let Some(allowed) = &self.allowed {
                if !allowed.iter().any(|d| canon.starts_with(d)) {
                    tried.push(format!("(refused {}: outside the allowed directories)", canon.display()));
                    continue;
                }
            }
            if self.chain.contains(&canon) {
                return Err(Error::invalid(format!("the parent chain loops: {} is its own ancestor", canon.display())));
            }
            let mut sub = self.clone();
            sub.chain.push(canon.clone());
            let name = cand.display().to_string();
            let mut opts = OpenOptions::new().resolver_at_depth(alloc::boxed::Box::new(sub), depth);
            if let Some(opener) = &self.opener {
                opts = opts.file_opener(opener.clone());
            }
            let disk = opts.open(&cand)?;
            match check_linkage(loc, &disk, &name) {
                Ok(()) => return Ok((disk, name)),
                Err(e) => {
                    mismatch.get_or_insert(e);
                }
            }
        }
        Err(mismatch.unwrap_or_else(|| Error::ParentNotFound { looked_for: tried.join(", ") }))
    }
}

/// Builds the locator a new child at `child` writes for `parent`, whose
/// DataWriteGuid is `parent_guid`: `parent_linkage`, `relative_path`
/// (relative to the child's directory, Windows separators) and
/// `absolute_win32_path`.
pub fn locator_for(child: &Path, parent: &Path, parent_guid: &crate::Guid) -> Result<ParentLocator> {
    let abs = |p: &Path| -> Result<PathBuf> {
        if p.is_absolute() {
            Ok(p.to_path_buf())
        } else {
            std::env::current_dir().map(|d| d.join(p)).map_err(|source| Error::Io {
                op: "finding the current directory",
                offset: 0,
                source,
            })
        }
    };
    let parent_abs = normalize(&abs(parent)?);
    let child_abs = normalize(&abs(child)?);
    let child_dir = child_abs.parent().unwrap_or(Path::new("/"));
    let rel = relative(child_dir, &parent_abs);
    let mut loc = ParentLocator { entries: Vec::new() };
    loc.set(locator::PARENT_LINKAGE, braced_guid(parent_guid));
    loc.set(locator::RELATIVE_PATH, windows_style(&rel, true));
    loc.set(locator::ABSOLUTE_WIN32_PATH, windows_style(&parent_abs, false));
    Ok(loc)
}

/// Removes `.` and `..` components lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `target` relative to the directory `from` (both absolute, normalized).
fn relative(from: &Path, target: &Path) -> PathBuf {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = target.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    if common == f.len() {
        out.push(".");
    }
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn windows_style(p: &Path, relative: bool) -> String {
    let s = p.to_string_lossy();
    if cfg!(windows) {
        if relative {
            return s.into_owned();
        }
        return format!(r"\\?\{s}");
    }
    s.replace('/', "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/b/p.vhdx")), PathBuf::from("./p.vhdx"));
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/c/p.vhdx")), PathBuf::from("../c/p.vhdx"));
        assert_eq!(windows_style(Path::new("../c/p.vhdx"), true), r"..\c\p.vhdx");
        assert_eq!(native(r".\p.vhdx"), PathBuf::from("./p.vhdx"));
        assert_eq!(native(r"\\?\C:\x\p.vhdx"), PathBuf::from("C:/x/p.vhdx"));
    }
}
