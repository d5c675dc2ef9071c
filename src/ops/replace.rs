//! Writing a file that appears whole or not at all: the new content goes
//! into a temporary file beside the destination, which is renamed over it
//! only once complete (and, unless the caller opts out, durable). A failure
//! or a kill at any point leaves the destination as it was — absent, or
//! the old file — and at most the temporary file, which the next
//! replacement of the same destination removes.
//!
//! The temporary file is `.NAME.vhdx-tmp-RANDOM` in the destination's
//! directory (hidden on Unix; NAME is the destination's file name, so a
//! leftover says what it was for). It is created and held with the writer's
//! lock images get (see [`crate::io::lock`]: QEMU's byte-range locks on
//! Linux, `flock` on other Unix systems, no sharing on Windows): a leftover
//! whose lock can be taken belongs to a process that is gone and is removed,
//! one still locked belongs to a replacement in progress and is left alone.
//!
//! The rename replaces the destination atomically (POSIX `rename`; on
//! Windows `MoveFileEx` with replacement), and on Unix the directory is
//! flushed after it, so the new name is durable too.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::merge::directory_of;
use crate::io::lock::{self, Mode};

/// What every temporary file's name holds after the destination's name.
const MARK: &str = ".vhdx-tmp-";

/// A temporary file that becomes `dst` on [`Replacement::commit`], and is
/// removed when dropped before that.
#[derive(Debug)]
pub(crate) struct Replacement {
    path: PathBuf,
    dst: PathBuf,
    /// Holds the lock (Unix) until the rename.
    file: Option<File>,
}

fn prefix_of(dst: &Path) -> io::Result<OsString> {
    let name = dst
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the destination has no file name"))?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(MARK);
    Ok(prefix)
}

/// How the temporary file is opened: for writing, with the writer's lock.
fn mode(create_new: bool) -> Mode {
    Mode { writable: true, create_new, lock: true }
}

impl Replacement {
    /// Removes the temporary files of earlier replacements of `dst` whose
    /// writers are gone, then creates a new one.
    pub(crate) fn create(dst: &Path) -> io::Result<Replacement> {
        let prefix = prefix_of(dst)?;
        let dir = directory_of(dst);
        sweep(&dir, &prefix);
        loop {
            let mut name = prefix.clone();
            name.push(alloc::format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0));
            let path = dir.join(name);
            let file = match lock::open(&path, mode(true)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            return Ok(Replacement { path, dst: dst.to_path_buf(), file: Some(file) });
        }
    }

    /// The temporary file (share it with `try_clone`: the lock stays with
    /// this one).
    pub(crate) fn file(&self) -> &File {
        self.file.as_ref().expect("present until committed")
    }

    /// Renames the temporary file over the destination (whose permissions,
    /// when it existed, it takes). With `sync`, the file is flushed first
    /// and the directory after, so a power cut leaves the old destination
    /// or the complete new one; without, a power cut soon after may leave
    /// the new name over incomplete content (a killed process cannot).
    pub(crate) fn commit(mut self, sync: bool) -> io::Result<()> {
        let file = self.file.take().expect("present until committed");
        if sync {
            file.sync_all()?;
        }
        if let Ok(old) = std::fs::metadata(&self.dst) {
            file.set_permissions(old.permissions())?;
        }
        // Windows renames only a file no handle holds without delete sharing;
        // elsewhere the lock goes before the descriptor closes (see `lock::unlock`).
        lock::unlock(&file);
        drop(file);
        std::fs::rename(&self.path, &self.dst)?;
        // The temporary name is gone; nothing is left to remove.
        self.path = PathBuf::new();
        if sync {
            crate::io::sync_directory_of(&self.dst)?;
        }
        Ok(())
    }

    /// The temporary file's path (for opening it again, with direct I/O).
    #[cfg(any(unix, test))]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            lock::unlock(&file);
        }
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the leftovers named `prefix…` in `dir` whose writers are gone.
/// Best effort: whatever cannot be read or removed stays.
fn sweep(dir: &Path, prefix: &OsString) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(prefix) {
            continue;
        }
        // Only regular files: opening a FIFO would block.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        // The writer's lock is taken only when nobody holds the file.
        if let Ok(file) = lock::open(&path, mode(false)) {
            lock::unlock(&file);
            drop(file);
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_is_removed_unless_its_writer_is_alive() {
        let tmp = std::env::temp_dir().join(alloc::format!("vhdx-replace-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let dst = tmp.join("out.vhdx");
        std::fs::write(&dst, b"old").unwrap();
        let alive = Replacement::create(&dst).unwrap();
        let dead = tmp.join(".out.vhdx.vhdx-tmp-dead");
        std::fs::write(&dead, b"left by a killed convert").unwrap();
        let other = tmp.join(".other.vhdx.vhdx-tmp-1");
        std::fs::write(&other, b"not ours").unwrap();
        let second = Replacement::create(&dst).unwrap();
        assert!(!dead.exists(), "a leftover whose writer is gone is removed");
        assert!(alive.path().exists(), "a file being written is left alone");
        assert!(other.exists(), "another destination's file is left alone");
        std::io::Write::write_all(&mut second.file(), b"new").unwrap();
        second.commit(true).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        let path = alive.path().to_path_buf();
        drop(alive);
        assert!(!path.exists(), "dropped before the commit: removed");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
