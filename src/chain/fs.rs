//! The filesystem parent resolver and locator construction.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::path::{Component, Path, PathBuf};

use super::{check_linkage, ParentResolver, MAX_CHAIN_DEPTH};
use crate::error::{Error, IoContext, Result};
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

    /// The candidate paths for `locator` of a child at `child`, in order:
    /// `relative_path` resolved against the directory holding `child` (see
    /// [`resolve_relative`]), then `volume_path` and `absolute_win32_path`.
    /// Paths that cannot exist on this system (Windows absolute paths on
    /// another OS: see [`windows_paths`]) are left out.
    pub fn candidates(child: Option<&Path>, locator: &ParentLocator) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let (Some(rel), Some(child)) = (locator.get(locator::RELATIVE_PATH), child) {
            if !is_foreign(rel) {
                out.push(resolve_relative(child, rel));
            }
        }
        for key in [locator::VOLUME_PATH, locator::ABSOLUTE_WIN32_PATH] {
            if let Some(p) = locator.get(key) {
                if is_foreign(p) {
                    continue;
                }
                let p = native(p);
                if p.is_absolute() || cfg!(windows) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// The paths of `locator` that are Windows absolute paths — a drive (`C:\…`),
/// UNC (`\\server\share\…`) or device/volume (`\\?\Volume{…}\…`) path —
/// which cannot be opened on another OS, so [`FsResolver`] does not try
/// them there (on Windows the list is empty: they are tried).
///
/// ```
/// use vhdx::format::locator::{ParentLocator, ABSOLUTE_WIN32_PATH, RELATIVE_PATH};
/// let mut loc = ParentLocator { entries: Vec::new() };
/// loc.set(RELATIVE_PATH, r"..\base.vhdx".into());
/// loc.set(ABSOLUTE_WIN32_PATH, r"C:\VMs\base.vhdx".into());
/// let foreign = vhdx::chain::windows_paths(&loc);
/// assert_eq!(foreign, if cfg!(windows) { vec![] } else { vec![r"C:\VMs\base.vhdx".to_string()] });
/// ```
pub fn windows_paths(locator: &ParentLocator) -> Vec<String> {
    [locator::RELATIVE_PATH, locator::VOLUME_PATH, locator::ABSOLUTE_WIN32_PATH]
        .into_iter()
        .filter_map(|key| locator.get(key))
        .filter(|p| is_foreign(p))
        .map(String::from)
        .collect()
}

/// Whether a locator path is a Windows absolute path on a system that is not Windows.
fn is_foreign(p: &str) -> bool {
    if cfg!(windows) {
        return false;
    }
    let b = p.as_bytes();
    p.starts_with(r"\\") || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
}

/// What was looked for, for [`Error::ParentNotFound`] and for tools that
/// show a missing parent: the candidate paths `tried`, in order, and the
/// locator's Windows paths that cannot exist on this system
/// ([`windows_paths`]), with what to do about them.
pub fn looked_for(tried: &[String], windows: &[String]) -> String {
    let advice = "link the child to its parent here with `vhdx set-parent CHILD PARENT`";
    match (tried.is_empty(), windows.is_empty()) {
        (false, true) => tried.join(", "),
        (true, true) => String::from("nothing: the parent locator holds no path this system can use"),
        (true, false) => format!(
            "nothing: the parent locator holds only Windows absolute paths, which cannot be opened on this system \
             ({}); {advice}",
            windows.join(", ")
        ),
        (false, false) => format!(
            "{}; not tried: the Windows absolute path(s) {}, which cannot be opened on this system; {advice}",
            tried.join(", "),
            windows.join(", ")
        ),
    }
}

/// The path `relative_path` = `rel` of a child named `child` designates:
/// `rel` taken from the directory holding `child` as it was named (a bare
/// name is in the current directory, so `..\base.vhdx` of `child.vhdx` is
/// `../base.vhdx`), which is what Hyper-V and QEMU do.
///
/// `.` is dropped, and each `..` removes the name before it when that is
/// exactly what the filesystem would do — the name is not a symbolic link —
/// so paths stay short and readable (`sub/child.vhdx` with `..\base.vhdx`
/// gives `base.vhdx`). After a symbolic link to a directory, or with
/// nothing left to remove, `..` is kept for the filesystem to resolve: it
/// then leads to the parent of the link's *target*, as `open` (and QEMU)
/// resolve it, so a child reached through a symlinked directory finds the
/// same parent as when named by its real path. A child that is itself a
/// symbolic link is resolved from the link's directory, as QEMU does.
pub fn resolve_relative(child: &Path, rel: &str) -> PathBuf {
    let dir = child.parent().unwrap_or(Path::new(""));
    let mut out = PathBuf::new();
    for c in dir.join(native(rel)).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) if !is_symlink(&out) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    out
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

/// Whether `p` is a symbolic link, or cannot be examined (then `..` after
/// it is left to the filesystem too).
fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map_or(true, |m| m.file_type().is_symlink())
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
        if let (Some(rel), None) = (loc.get(locator::RELATIVE_PATH), child) {
            tried.push(format!("(relative_path {rel}: the child has no path to resolve it against)"));
        }
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
        Err(mismatch.unwrap_or_else(|| Error::ParentNotFound { looked_for: looked_for(&tried, &windows_paths(loc)) }))
    }
}

/// Builds the locator a new child at `child` writes for `parent`, whose
/// DataWriteGuid is `parent_guid`: `parent_linkage`, `relative_path`
/// (relative to the child's directory, Windows separators) and
/// `absolute_win32_path`.
///
/// Both paths are computed from where the files really are (symbolic links
/// resolved): the relative path leads from the child's real directory to the
/// parent's real file, which is how the filesystem — and so
/// [`resolve_relative`] — follows a `..` out of a symlinked directory.
pub fn locator_for(child: &Path, parent: &Path, parent_guid: &crate::Guid) -> Result<ParentLocator> {
    let child_dir = child.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (child_dir, parent_abs) = match (child_dir.canonicalize(), parent.canonicalize()) {
        (Ok(d), Ok(p)) => (d, p),
        // Not there (yet): the names as given, made absolute.
        _ => (normalize(&absolute(child_dir)?), normalize(&absolute(parent)?)),
    };
    let rel = relative(&child_dir, &parent_abs);
    let mut loc = ParentLocator { entries: Vec::new() };
    loc.set(locator::PARENT_LINKAGE, braced_guid(parent_guid));
    loc.set(locator::RELATIVE_PATH, windows_style(&rel, true));
    loc.set(locator::ABSOLUTE_WIN32_PATH, windows_style(&parent_abs, false));
    Ok(loc)
}

/// `p` made absolute against the current directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir().map(|d| d.join(p)).during("finding the current directory", 0)
}

/// Removes `.` and `..` components lexically.
pub(crate) fn normalize(p: &Path) -> PathBuf {
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
pub(crate) fn relative(from: &Path, target: &Path) -> PathBuf {
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
    // Windows takes `/` too, but a `\\?\` path does not, and the format
    // names its locators with `\` alone.
    let s = p.to_string_lossy().replace('/', "\\");
    if cfg!(windows) && !relative && !s.starts_with(r"\\") {
        return format!(r"\\?\{s}");
    }
    s
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
        // Windows opens the verbatim name itself; elsewhere it is a name to
        // search the directories for.
        let verbatim = if cfg!(windows) { r"\\?\C:\x\p.vhdx" } else { "C:/x/p.vhdx" };
        assert_eq!(native(r"\\?\C:\x\p.vhdx"), PathBuf::from(verbatim));
    }

    #[test]
    fn relative_paths_resolve_from_the_child_directory_as_named() {
        // Names that exist nowhere: nothing is a symlink, `..` pops lexically
        // where there is a name to pop, and is kept where there is none.
        let r = |child: &str, rel: &str| resolve_relative(Path::new(child), rel);
        assert_eq!(r("child.vhdx", r"..\base.vhdx"), PathBuf::from("../base.vhdx"));
        assert_eq!(r("./child.vhdx", r"..\base.vhdx"), PathBuf::from("../base.vhdx"));
        assert_eq!(r("child.vhdx", r".\base.vhdx"), PathBuf::from("base.vhdx"));
        assert_eq!(r("../../child.vhdx", r"..\x\base.vhdx"), PathBuf::from("../../../x/base.vhdx"));
        assert_eq!(r("/child.vhdx", r"..\..\base.vhdx"), PathBuf::from("/base.vhdx"));
    }

    #[cfg(unix)]
    #[test]
    fn dot_dot_pops_real_directories_and_is_kept_after_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::fs::create_dir_all(root.join("real/deep")).unwrap();
        std::os::unix::fs::symlink(root.join("real/deep"), root.join("a/link")).unwrap();
        let r = |child: &Path, rel: &str| resolve_relative(child, rel);
        assert_eq!(r(&root.join("a/sub/c.vhdx"), r"..\base.vhdx"), root.join("a/base.vhdx"));
        assert_eq!(r(&root.join("a/sub/../sub/c.vhdx"), r"..\base.vhdx"), root.join("a/base.vhdx"));
        // Through the symlinked directory, `..` is the target's parent: kept for the filesystem.
        let through = r(&root.join("a/link/c.vhdx"), r"..\base.vhdx");
        assert_eq!(through, root.join("a/link/../base.vhdx"));
        std::fs::write(root.join("real/base.vhdx"), b"x").unwrap();
        assert_eq!(through.canonicalize().unwrap(), root.join("real/base.vhdx"));
    }

    #[test]
    fn windows_absolute_paths_are_named_not_tried() {
        let mut loc = ParentLocator { entries: Vec::new() };
        loc.set(locator::VOLUME_PATH, String::from(r"\\?\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\VMs\b.vhdx"));
        loc.set(locator::ABSOLUTE_WIN32_PATH, String::from(r"C:\VMs\b.vhdx"));
        if cfg!(windows) {
            return;
        }
        assert!(FsResolver::candidates(Some(Path::new("c.vhdx")), &loc).is_empty());
        let foreign = windows_paths(&loc);
        assert_eq!(foreign.len(), 2);
        let text = looked_for(&[], &foreign);
        assert!(text.contains("only Windows absolute paths"), "{text}");
        assert!(text.contains(r"C:\VMs\b.vhdx") && text.contains(r"\\?\Volume{"), "{text}");
        assert!(text.contains("vhdx set-parent CHILD PARENT"), "{text}");
        loc.set(locator::ABSOLUTE_WIN32_PATH, String::from(r"\\server\share\b.vhdx"));
        loc.set(locator::RELATIVE_PATH, String::from(r".\b.vhdx"));
        assert_eq!(windows_paths(&loc).len(), 2, "UNC is Windows-only too");
        assert_eq!(FsResolver::candidates(Some(Path::new("c.vhdx")), &loc), [PathBuf::from("b.vhdx")]);
        // What this crate writes on Unix (`\tmp\b.vhdx`) is tried.
        loc.set(locator::ABSOLUTE_WIN32_PATH, String::from(r"\tmp\b.vhdx"));
        assert!(windows_paths(&loc).len() == 1 && FsResolver::candidates(None, &loc) == [PathBuf::from("/tmp/b.vhdx")]);
        assert_eq!(looked_for(&[String::from("a"), String::from("b")], &[]), "a, b");
    }

    /// A base and a child of it in `dir` (which exists), the child's path
    /// and the locator it carries (as the format stores it: read back from
    /// the file, not built here).
    fn base_and_child(dir: &Path) -> (PathBuf, PathBuf, ParentLocator) {
        let base = dir.join("base.vhdx");
        let child = dir.join("child.vhdx");
        drop(Disk::create(&base, &crate::CreateOptions::dynamic(4 << 20)).unwrap());
        drop(Disk::create_differencing(&child, &base, None).unwrap());
        let loc = OpenOptions::new().without_parent().open(&child).unwrap().parent_locator().unwrap().clone();
        (base, child, loc)
    }

    fn refusal(r: Result<(Disk, String)>) -> String {
        match r {
            Ok((_, name)) => panic!("opened {name} where a refusal was expected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn confinement_admits_inside_and_refuses_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (inside, outside) = (tmp.path().join("in"), tmp.path().join("out"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let (base, child, loc) = base_and_child(&inside);
        let name = child.to_str().unwrap();
        let (_, opened) = FsResolver::confined_to([inside.clone()]).open_parent(Some(name), &loc, 1).unwrap();
        assert_eq!(Path::new(&opened).canonicalize().unwrap(), base.canonicalize().unwrap());
        let text = refusal(FsResolver::confined_to([outside.clone()]).open_parent(Some(name), &loc, 1));
        assert!(text.contains("outside the allowed directories"), "{text}");
        // Through OpenOptions too: the opener given after the confinement keeps it.
        let err = OpenOptions::new().parent_search_dirs([outside]).open(&child).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("outside the allowed directories"), "{err}");
    }

    #[test]
    fn depth_limit_is_inclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, child, loc) = base_and_child(tmp.path());
        let name = child.to_str();
        assert!(FsResolver::new().open_parent(name, &loc, MAX_CHAIN_DEPTH).is_ok());
        let text = refusal(FsResolver::new().open_parent(name, &loc, MAX_CHAIN_DEPTH + 1));
        assert!(text.contains("deeper than 64 links"), "{text}");
    }

    #[test]
    fn parents_are_opened_through_the_opener_given() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, child, loc) = base_and_child(tmp.path());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(PathBuf, bool)>::new()));
        let log = seen.clone();
        let opener = crate::io::FileOpener::new(move |p, w| {
            log.lock().unwrap().push((p.to_path_buf(), w));
            crate::io::FileOpener::default().open(p, w)
        });
        FsResolver::new().with_opener(opener).open_parent(child.to_str(), &loc, 1).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0.canonicalize().unwrap(), base.canonicalize().unwrap());
        assert!(!seen[0].1, "a parent is opened read-only");
    }

    #[test]
    fn the_leaf_counts_as_an_ancestor() {
        // A locator that leads back to the leaf itself, with the leaf's own
        // DataWriteGuid, so only the loop check can refuse it.
        let tmp = tempfile::tempdir().unwrap();
        let (_, child, _) = base_and_child(tmp.path());
        let guid = OpenOptions::new().without_parent().open(&child).unwrap().data_write_guid();
        let to_itself = locator_for(&child, &child, &guid).unwrap();
        let text = refusal(FsResolver::new().with_leaf(&child).open_parent(child.to_str(), &to_itself, 1));
        assert!(text.contains("loops") && text.contains("child.vhdx"), "{text}");
    }

    #[test]
    fn locators_lead_from_the_childs_real_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        let base = root.join("base.vhdx");
        std::fs::write(&base, b"").unwrap();
        let guid = crate::Guid::from_bytes([0x11; 16]);
        let loc = locator_for(&root.join("a/sub/child.vhdx"), &base, &guid).unwrap();
        assert_eq!(loc.get(locator::RELATIVE_PATH), Some(r"..\..\base.vhdx"));
        assert_eq!(loc.get(locator::ABSOLUTE_WIN32_PATH), Some(base.to_str().unwrap().replace('/', "\\").as_str()));
        assert_eq!(loc.get(locator::PARENT_LINKAGE), Some("{11111111-1111-1111-1111-111111111111}"));
        #[cfg(unix)]
        {
            // A child in a symlinked directory: `..` is taken from the real one.
            std::os::unix::fs::symlink(root.join("real"), root.join("a/sub/link")).unwrap();
            let loc = locator_for(&root.join("a/sub/link/child.vhdx"), &base, &guid).unwrap();
            assert_eq!(loc.get(locator::RELATIVE_PATH), Some(r"..\base.vhdx"));
        }
        // Files that do not exist (yet): the names as given, made absolute.
        let loc =
            locator_for(Path::new("/nonexistent-vhdx/x/child.vhdx"), Path::new("/nonexistent-vhdx/b.vhdx"), &guid)
                .unwrap();
        assert_eq!(loc.get(locator::RELATIVE_PATH), Some(r"..\b.vhdx"));
        if !cfg!(windows) {
            assert_eq!(loc.get(locator::ABSOLUTE_WIN32_PATH), Some(r"\nonexistent-vhdx\b.vhdx"));
        }
    }

    #[test]
    fn only_drive_and_unc_paths_are_foreign() {
        if cfg!(windows) {
            return;
        }
        for p in [r"C:\VMs\b.vhdx", "c:b.vhdx", r"\\server\share\b.vhdx", r"\\?\C:\b.vhdx"] {
            assert!(is_foreign(p), "{p}");
        }
        for p in ["b.vhdx", r"sub\b.vhdx", r".\b.vhdx", r"\tmp\b.vhdx", "1:x", "C"] {
            assert!(!is_foreign(p), "{p}");
        }
    }
}
