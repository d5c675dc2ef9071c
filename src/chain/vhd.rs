//! Opening a VHD with its chain: the parent found from the dynamic
//! header's locators and checked by its footer's unique ID.
//!
//! Locators are tried in the order Windows writes and prefers them:
//! `W2ru` (relative, UTF-16), `W2ku` (absolute, UTF-16), then the old
//! `Wi2r` and `Wi2k` (code-page paths), then `MacX` (a `file://` URL);
//! a `Mac ` alias is reported, never resolved; last, the file name the
//! header records for the parent, in the child's directory. Relative paths
//! are taken from the child's directory, with `\` as a separator, as for
//! VHDX ([`super::resolve_relative`]); Windows absolute paths are not tried
//! on other systems. A candidate is accepted only when its footer's unique
//! ID is the one the child's dynamic header names: a parent that was
//! replaced is refused, not read. The parent's time stamp is reported by
//! [`VhdDisk::parent_timestamp_matches`] but not required: Windows writes 0
//! there in the children it makes (both differencing chains among the
//! fixtures), so requiring it would refuse Windows' own chains.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::vhd::{platform, VhdType};
use crate::io::{FileOpener, FileStorage};
use crate::vhd::VhdDisk;

impl VhdDisk {
    /// Opens a VHD read-only, with its parent chain.
    pub fn open(path: impl AsRef<Path>) -> Result<VhdDisk> {
        open_chain(&FileOpener::default(), path.as_ref(), false, 0)
    }

    /// Opens a VHD for writing (its parents read-only).
    pub fn open_writable(path: impl AsRef<Path>) -> Result<VhdDisk> {
        open_chain(&FileOpener::default(), path.as_ref(), true, 0)
    }

    /// Opens a VHD with its chain, every file through `opener` (the
    /// parents read-only): for images on storage of the caller's own, or
    /// files held in a [`crate::io::LockSet`]. Parents are still looked for
    /// on the filesystem by the paths the locators give.
    pub fn open_through(opener: &FileOpener, path: impl AsRef<Path>, writable: bool) -> Result<VhdDisk> {
        open_chain(opener, path.as_ref(), writable, 0)
    }

    /// Opens a VHD alone: a differencing disk's sectors that its parent
    /// would give read as zeros.
    pub fn open_without_parent(path: impl AsRef<Path>, writable: bool) -> Result<VhdDisk> {
        open_file(&FileOpener::default(), path.as_ref(), writable)
    }

    /// Creates a differencing VHD at `path` (which must not exist) over the
    /// VHD at `parent`, with `W2ru` (relative) and `W2ku` (absolute)
    /// locators as Windows writes them, and opens it for writing with the
    /// parent attached. The block size is 2 MiB, as Windows makes them.
    pub fn create_differencing(path: impl AsRef<Path>, parent: impl AsRef<Path>) -> Result<VhdDisk> {
        let (path, parent_path) = (path.as_ref(), parent.as_ref());
        let parent = open_chain(&FileOpener::default(), parent_path, false, 1)?;
        let (locators, absolute) = vhd_locators(path, parent_path)?;
        let storage = FileStorage::create_new(path)
            .map_err(|source| Error::opening("create", source, true).in_file(path.display()))?;
        let made = VhdDisk::create_differencing_with(
            alloc::boxed::Box::new(storage),
            parent.footer(),
            &absolute,
            &locators,
            crate::format::vhd::DEFAULT_BLOCK_SIZE,
            None,
        );
        let mut disk = made.map_err(|e| {
            let _ = std::fs::remove_file(path);
            e.in_file(path.display())
        })?;
        crate::io::sync_directory_of(path)
            .map_err(|source| Error::Io {
                op: "flushing the directory of the new image",
                offset: 0,
                source: source.into(),
            })
            .map_err(|e| e.in_file(path.display()))?;
        disk.attach(parent);
        Ok(disk)
    }

    /// Whether the parent's footer time stamp is the one the child's
    /// dynamic header recorded (`None` without a parent attached).
    pub fn parent_timestamp_matches(&self) -> Option<bool> {
        let p = self.parent()?;
        Some(self.dynamic_header()?.parent_timestamp == p.footer().timestamp)
    }
}

/// A parent locator entry's platform code and encoded path.
pub(crate) type LocatorData = ([u8; 4], Vec<u8>);

/// The parent locators a child at `child` records for the parent at
/// `parent`, as Windows writes them: `W2ru` (relative, `.\\` first) and
/// `W2ku` (absolute), UTF-16LE; and the absolute path, for the header's
/// parent name.
pub(crate) fn vhd_locators(child: &Path, parent: &Path) -> Result<(Vec<LocatorData>, String)> {
    let loc = super::locator_for(child, parent, &crate::Guid::nil()).map_err(|e| e.in_file(child.display()))?;
    let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
    let mut locators = Vec::new();
    let mut absolute = String::new();
    if let Some(rel) = loc.get(crate::format::locator::RELATIVE_PATH) {
        locators.push((platform::W2RU, utf16(rel)));
    }
    if let Some(abs) = loc.get(crate::format::locator::ABSOLUTE_WIN32_PATH) {
        let abs = abs.strip_prefix(r"\\?\").unwrap_or(abs);
        locators.push((platform::W2KU, utf16(abs)));
        absolute = String::from(abs);
    }
    Ok((locators, absolute))
}

/// Opens the VHD at `path` alone, through `opener`.
pub(crate) fn open_file(opener: &FileOpener, path: &Path, writable: bool) -> Result<VhdDisk> {
    let storage = opener
        .open(path, writable)
        .map_err(|source| Error::opening("open", source, writable).in_file(path.display()))?;
    VhdDisk::open_image(storage, writable, Some(path.display().to_string())).map_err(|e| e.in_file(path.display()))
}

/// Where a differencing VHD's parent may be: the paths to try, in order
/// (see the module documentation), and the Windows absolute paths that
/// cannot be tried on this system. Empty for a disk with no parent.
pub(crate) fn parent_candidates(path: &Path, disk: &VhdDisk) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut tried: Vec<PathBuf> = Vec::new();
    let mut windows = Vec::new();
    let Some(header) = disk.dynamic_header().filter(|_| disk.disk_type() == VhdType::Differencing) else {
        return Ok((tried, windows));
    };
    let mut candidates = disk.locator_paths().map_err(|e| e.in_file(path.display()))?;
    // Last, the parent's file name the header records, beside the child
    // (a locator-less child, or a chain moved from another machine).
    let name = header.parent_name.rsplit(['\\', '/']).next().unwrap_or("");
    if !name.is_empty() {
        candidates.push((platform::W2RU, Some(String::from(name))));
    }
    for (code, p) in candidates {
        let Some(p) = p else { continue };
        let candidate = match code {
            platform::W2RU | platform::WI2R => super::resolve_relative(path, &p),
            platform::W2KU | platform::WI2K => {
                if is_windows_absolute(&p) {
                    windows.push(p);
                    continue;
                }
                // Written here from an absolute path, `\` for `/`.
                PathBuf::from(if cfg!(windows) { p } else { p.replace('\\', "/") })
            }
            platform::MACX => match p.strip_prefix("file://") {
                Some(local) => PathBuf::from(local),
                None => continue,
            },
            _ => continue,
        };
        if !tried.contains(&candidate) {
            tried.push(candidate);
        }
    }
    Ok((tried, windows))
}

/// Opens the VHD at `path` with its chain, every file through `opener`
/// (the parents read-only).
pub(crate) fn open_chain(opener: &FileOpener, path: &Path, writable: bool, depth: usize) -> Result<VhdDisk> {
    if depth > super::MAX_CHAIN_DEPTH {
        return Err(Error::invalid(format!("the chain is deeper than {} links", super::MAX_CHAIN_DEPTH)));
    }
    let mut disk = open_file(opener, path, writable)?;
    if disk.disk_type() != VhdType::Differencing {
        return Ok(disk);
    }
    let expected = disk
        .dynamic_header()
        .ok_or_else(|| Error::corrupt("VHD footer", 0, "a differencing disk without a dynamic header"))?
        .parent_unique_id;
    let (candidates, windows) = parent_candidates(path, &disk)?;
    for candidate in &candidates {
        if !candidate.is_file() {
            continue;
        }
        let parent = open_chain(opener, candidate, false, depth + 1)?;
        if parent.footer().unique_id != expected {
            return Err(Error::ParentMismatch {
                parent: candidate.display().to_string(),
                expected,
                found: parent.footer().unique_id,
            }
            .in_file(path.display()));
        }
        disk.attach(parent);
        return Ok(disk);
    }
    let mut looked_for = if candidates.is_empty() {
        String::from("nothing: no locator holds a path this system can use")
    } else {
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    if !windows.is_empty() {
        looked_for.push_str(&format!(
            "; not tried: the Windows absolute path(s) {}, which cannot be opened on this system (put the parent \
             beside the child under its name)",
            windows.join(", ")
        ));
    }
    Err(Error::ParentNotFound { looked_for }.in_file(path.display()))
}

/// A Windows absolute path (`C:\…`, `\\server\…`) on a system that is not Windows.
fn is_windows_absolute(p: &str) -> bool {
    if cfg!(windows) {
        return false;
    }
    let b = p.as_bytes();
    (b.len() >= 2 && b[1] == b':') || p.starts_with("\\\\")
}
