//! Locks held for the whole of an operation on several files.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use super::lock::{self, Mode};
use super::{FileOpener, FileStorage};
use crate::error::{Error, Result};

/// The identity of a file: device and inode on Unix, the canonical path
/// elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId(#[cfg(unix)] (u64, u64), #[cfg(not(unix))] std::path::PathBuf);

impl FileId {
    #[cfg(unix)]
    fn of_path(path: &Path) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileId((m.dev(), m.ino())))
    }

    #[cfg(not(unix))]
    fn of_path(path: &Path) -> std::io::Result<FileId> {
        Ok(FileId(path.canonicalize()?))
    }
}

#[derive(Debug)]
struct Held {
    id: FileId,
    file: File,
    writable: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        lock::unlock(&self.file);
    }
}

/// Locks on image files held for as long as an operation that opens them
/// many times lasts (a merge, a sibling merge): nobody else can open the
/// images it changes between its steps, while its own opens go through.
///
/// The set keeps one locked file per image ([`lock`](LockSet::lock)).
/// [`opener`](LockSet::opener) gives a [`FileOpener`] that opens a held
/// image as a duplicate of the held file, which shares its lock instead of
/// asking for another (two locked opens of one file conflict even within
/// one process, see [`FileStorage::open`]), and any other file as usual.
/// The locks are released when the set and every opener made from it are
/// dropped — also for disks still open through it, which then hold none.
///
/// ```no_run
/// use vhdx::io::LockSet;
/// use vhdx::OpenOptions;
/// # fn main() -> vhdx::Result<()> {
/// let locks = LockSet::new();
/// locks.lock("child.vhdx".as_ref(), true)?; // refused if anyone has it open
/// // Opens through the set, as often as needed, read-only or writable:
/// let disk = OpenOptions::new().writable(true).file_opener(locks.opener()).open("child.vhdx")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct LockSet {
    held: Arc<Mutex<Vec<Held>>>,
}

impl LockSet {
    /// An empty set.
    pub fn new() -> LockSet {
        LockSet::default()
    }

    /// Locks the image at `path` — exclusively when `writable`, shared
    /// otherwise — until the set is dropped. A file already in the set is
    /// kept (a shared lock becomes exclusive when `writable`). Fails with
    /// [`Error::Busy`] when another process or handle holds a conflicting
    /// lock, and for anything but a regular file; the error names the file.
    pub fn lock(&self, path: &Path, writable: bool) -> Result<()> {
        let fail = |source| Error::opening("open", source, writable).in_file(path.display());
        let id = FileId::of_path(path).map_err(fail)?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = held.iter().position(|h| h.id == id) {
            if held[i].writable || !writable {
                return Ok(());
            }
            // A shared lock of ours would refuse our own exclusive one.
            held.swap_remove(i);
        }
        let file = lock::open(path, Mode { writable, create_new: false, lock: true }).map_err(fail)?;
        held.push(Held { id, file, writable });
        Ok(())
    }

    /// Whether the set holds the file at `path`.
    pub fn holds(&self, path: &Path) -> bool {
        let Ok(id) = FileId::of_path(path) else {
            return false;
        };
        self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|h| h.id == id)
    }

    /// Opens files as [`FileOpener::default`] does, except those of the set:
    /// they are duplicates of the held, locked files. A held file is opened
    /// writable only if it is held writable (else
    /// [`std::io::ErrorKind::PermissionDenied`]).
    pub fn opener(&self) -> FileOpener {
        let set = self.clone();
        FileOpener::new(move |path, writable| {
            if let Ok(id) = FileId::of_path(path) {
                let held = set.held.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(h) = held.iter().find(|h| h.id == id) {
                    if writable && !h.writable {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            "this operation holds the file for reading only",
                        ));
                    }
                    return Ok(Box::new(FileStorage::new(h.file.try_clone()?)));
                }
            }
            Ok(Box::new(FileStorage::open(path, writable)?))
        })
    }
}
