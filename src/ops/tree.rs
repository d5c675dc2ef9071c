//! Trees of differencing disks: a file's chain and children, or a whole
//! directory as a forest, each link marked ok, broken or missing.

use alloc::string::{String, ToString};
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::merge::is_image_name;
use crate::io::FileOpener;
use crate::{DiskType, Guid, ImageFormat, OpenOptions};

/// The state of an image's link to its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkStatus {
    /// Not a differencing disk.
    Root,
    /// The parent was found and its DataWriteGuid (a VHD: its unique ID)
    /// matches.
    Ok,
    /// A parent file was found but its DataWriteGuid differs: it changed
    /// after this child was made (a merge into it, a write to it). For a
    /// VHD: its unique ID differs (another disk, or one re-made).
    BrokenLinkage {
        /// The file found.
        parent: PathBuf,
        /// The child's `parent_linkage` (a VHD: its header's parent unique ID).
        expected: Guid,
        /// The parent's DataWriteGuid (a VHD: its footer's unique ID).
        found: Guid,
    },
    /// No candidate path of the locator exists.
    MissingParent {
        /// The paths tried.
        looked_for: Vec<PathBuf>,
        /// The locator's Windows absolute paths, not tried because they
        /// cannot exist on this system ([`crate::chain::windows_paths`]).
        windows_paths: Vec<String>,
    },
    /// The parent was found and its linkage matches, but it is an image
    /// already met on the way up from the leaf: the chain loops back to it
    /// (a crafted locator, or links set by hand), and cannot be opened.
    Loop {
        /// The image the chain loops back to.
        parent: PathBuf,
    },
    /// The image itself could not be read.
    Unreadable(String),
}

impl LinkStatus {
    /// `"ok"`, `"root"`, `"broken-linkage"`, `"missing-parent"`, `"loop"` or `"unreadable"`.
    pub fn label(&self) -> &'static str {
        match self {
            LinkStatus::Root => "root",
            LinkStatus::Ok => "ok",
            LinkStatus::BrokenLinkage { .. } => "broken-linkage",
            LinkStatus::MissingParent { .. } => "missing-parent",
            LinkStatus::Loop { .. } => "loop",
            LinkStatus::Unreadable(_) => "unreadable",
        }
    }
}

/// One image of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The image.
    pub path: PathBuf,
    /// VHDX or VHD, by content.
    pub format: ImageFormat,
    /// Its type, when readable.
    pub disk_type: Option<DiskType>,
    /// Its DataWriteGuid, when readable; for a VHD, its footer's unique ID,
    /// by which its children name it.
    pub data_write_guid: Option<Guid>,
    /// The parent it links to (the file found, even when the linkage is broken).
    pub parent: Option<PathBuf>,
    /// The link's state.
    pub status: LinkStatus,
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Examines one image and its link (without opening the rest of the chain).
pub fn examine(path: &Path) -> Node {
    examine_with(path, &FileOpener::default())
}

/// [`examine`], opening files through `opener` ([`FileOpener::force_share`]
/// examines images in use).
pub fn examine_with(path: &Path, opener: &FileOpener) -> Node {
    let alone = || OpenOptions::new().without_parent().file_opener(opener.clone());
    let d = match alone().open_any(path) {
        Ok(d) => d,
        Err(e) => {
            return Node {
                path: path.to_path_buf(),
                format: ImageFormat::detect_through(opener, path),
                disk_type: None,
                data_write_guid: None,
                parent: None,
                status: LinkStatus::Unreadable(e.to_string()),
            }
        }
    };
    let mut node = Node {
        path: path.to_path_buf(),
        format: d.format(),
        disk_type: Some(d.disk_type()),
        data_write_guid: Some(d.identity()),
        parent: None,
        status: LinkStatus::Root,
    };
    let (candidates, windows_paths) = match d.parent_candidates(path) {
        Ok(c) => c,
        Err(e) => {
            node.status = LinkStatus::Unreadable(e.to_string());
            return node;
        }
    };
    if d.parent_identity().is_none() && candidates.is_empty() {
        return node;
    }
    let mut first_mismatch = None;
    for c in &candidates {
        if !c.exists() {
            continue;
        }
        match alone().open_any(c) {
            Ok(p) => {
                let found = p.identity();
                // A child names a parent of its own format.
                if p.format() == d.format() && d.links_to(found) {
                    node.parent = Some(c.clone());
                    node.status = LinkStatus::Ok;
                    return node;
                }
                first_mismatch.get_or_insert(LinkStatus::BrokenLinkage {
                    parent: c.clone(),
                    expected: d.parent_identity().unwrap_or_default(),
                    found,
                });
                node.parent.get_or_insert(c.clone());
            }
            Err(e) => {
                first_mismatch.get_or_insert(LinkStatus::Unreadable(e.to_string()));
            }
        }
    }
    node.status = first_mismatch.unwrap_or(LinkStatus::MissingParent { looked_for: candidates, windows_paths });
    node
}

/// The chain of `path`, leaf first, following links as far as they go. When
/// a parent is an image already in the chain, the image linking to it is
/// the last, marked [`LinkStatus::Loop`].
pub fn chain(path: &Path) -> Vec<Node> {
    chain_with(path, &FileOpener::default())
}

/// [`chain`], opening files through `opener`.
pub fn chain_with(path: &Path, opener: &FileOpener) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut next = Some(path.to_path_buf());
    while let Some(p) = next.take() {
        if out.len() > crate::chain::MAX_CHAIN_DEPTH {
            break;
        }
        seen.push(canonical(&p));
        let mut node = examine_with(&p, opener);
        if node.status == LinkStatus::Ok {
            let parent = node.parent.clone().expect("a linked node names its parent");
            if seen.contains(&canonical(&parent)) {
                node.status = LinkStatus::Loop { parent };
            } else {
                next = Some(parent);
            }
        }
        out.push(node);
    }
    out
}

/// The files `path` links to, nearest first, following each locator to the
/// file it leads to even when the linkage does not match (as far as files
/// are found, at most [`crate::chain::MAX_CHAIN_DEPTH`] links, stopping
/// before a file met twice). `path` itself is not included.
pub fn ancestors(path: &Path) -> Vec<PathBuf> {
    ancestors_with(path, &FileOpener::default())
}

/// [`ancestors`], opening files through `opener`.
pub fn ancestors_with(path: &Path, opener: &FileOpener) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = alloc::vec![canonical(path)];
    let mut at = examine_with(path, opener).parent;
    while let Some(p) = at.take() {
        let c = canonical(&p);
        if seen.contains(&c) || out.len() > crate::chain::MAX_CHAIN_DEPTH {
            break;
        }
        seen.push(c);
        at = examine_with(&p, opener).parent;
        out.push(p);
    }
    out
}

/// Every image in `dir` (not recursive), examined, sorted by path. Only
/// regular files with an image's name are examined: FIFOs, sockets,
/// devices and directories are skipped, whatever their name.
pub fn scan_dir(dir: &Path) -> std::io::Result<Vec<Node>> {
    scan_dir_with(dir, &FileOpener::default())
}

/// [`scan_dir`], opening files through `opener`.
pub fn scan_dir_with(dir: &Path, opener: &FileOpener) -> std::io::Result<Vec<Node>> {
    let mut files: Vec<PathBuf> = image_files(dir)?;
    files.sort();
    Ok(files.iter().map(|f| examine_with(f, opener)).collect())
}

/// The regular files in `dir` with an image's name (`.vhdx`, `.avhdx`,
/// `.vhd`, `.avhd`),
/// symbolic links followed; in the order listed.
pub(crate) fn image_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // `metadata` follows links and never blocks, unlike opening a FIFO.
        .filter(|p| is_image_name(p) && std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect())
}

/// The indices of `nodes` whose parent is `nodes[i]`.
pub fn children(nodes: &[Node], i: usize) -> Vec<usize> {
    let me = canonical(&nodes[i].path);
    (0..nodes.len())
        .filter(|&j| j != i && nodes[j].parent.as_deref().map(canonical).as_deref() == Some(me.as_path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, parent: Option<&str>) -> Node {
        Node {
            path: PathBuf::from(path),
            format: ImageFormat::Vhdx,
            disk_type: None,
            data_write_guid: None,
            parent: parent.map(PathBuf::from),
            status: if parent.is_some() { LinkStatus::Ok } else { LinkStatus::Root },
        }
    }

    /// The children of a node are exactly the nodes naming it as their
    /// parent (paths that do not exist compare as given), never the node
    /// itself, not even when it names itself.
    #[test]
    fn children_are_the_nodes_naming_it_as_parent() {
        let nodes = [
            node("/nonexistent/a", None),
            node("/nonexistent/b", Some("/nonexistent/a")),
            node("/nonexistent/c", Some("/nonexistent/b")),
            node("/nonexistent/d", Some("/nonexistent/a")),
        ];
        assert_eq!(children(&nodes, 0), [1, 3]);
        assert_eq!(children(&nodes, 1), [2]);
        assert!(children(&nodes, 2).is_empty());
        let looped = [node("/nonexistent/x", Some("/nonexistent/x")), node("/nonexistent/y", None)];
        assert!(children(&looped, 0).is_empty());
        assert!(children(&looped, 1).is_empty());
    }
}
