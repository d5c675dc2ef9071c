//! [`Storage`] over `std::fs::File` with the platform's positioned I/O
//! (`pread`/`pwrite` on Unix, `ReadFile`/`WriteFile` with an offset on
//! Windows), so concurrent reads need no lock and no seek.
//!
//! Files opened by path are regular files only, opened without blocking,
//! and locked against other processes (see [`super::lock`]).

use std::fs::File;
use std::path::Path;

use super::lock::{self, Mode};
use super::Storage;
use crate::error::IoError;

/// How images are opened by path: the filesystem by default, or a
/// caller's function from a path and the wish to write to a [`Storage`].
///
/// Operations that open several files by name — parent resolution, merges,
/// sibling discovery — take one, so a test can put every file of a tree on
/// fault-injecting storage, and a tool can open files its own way (through
/// a sandbox broker, say) while paths keep naming them.
///
/// An opener that finds a file in use returns an error of kind
/// [`std::io::ErrorKind::ResourceBusy`]; opening a disk turns it into
/// [`crate::Error::Busy`].
#[derive(Clone)]
pub struct FileOpener(alloc::sync::Arc<OpenFn>);

type OpenFn = dyn Fn(&Path, bool) -> std::io::Result<alloc::boxed::Box<dyn Storage>> + Send + Sync;

impl FileOpener {
    /// An opener calling `f(path, writable)`.
    pub fn new(
        f: impl Fn(&Path, bool) -> std::io::Result<alloc::boxed::Box<dyn Storage>> + Send + Sync + 'static,
    ) -> Self {
        FileOpener(alloc::sync::Arc::new(f))
    }

    /// The filesystem without locks, read-only ([`FileStorage::open_force_share`]):
    /// what [`crate::OpenOptions::force_share`] opens an image and its parents
    /// with. Asked to open a file for writing, it fails
    /// ([`std::io::ErrorKind::InvalidInput`]).
    pub fn force_share() -> Self {
        FileOpener::new(|path, writable| {
            if writable {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a force-share open is read-only and cannot write",
                ));
            }
            Ok(alloc::boxed::Box::new(FileStorage::open_force_share(path)?))
        })
    }

    /// Opens `path`, for writing too when `writable`.
    pub fn open(&self, path: &Path, writable: bool) -> std::io::Result<alloc::boxed::Box<dyn Storage>> {
        (self.0)(path, writable)
    }
}

impl Default for FileOpener {
    /// The filesystem ([`FileStorage::open`]: locked, regular files only).
    fn default() -> Self {
        FileOpener::new(|path, writable| Ok(alloc::boxed::Box::new(FileStorage::open(path, writable)?)))
    }
}

impl core::fmt::Debug for FileOpener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FileOpener")
    }
}

/// A file on disk.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    /// Whether this storage took the file's lock (and releases it when dropped).
    locked: bool,
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        if self.locked {
            lock::unlock(&self.file);
        }
    }
}

impl FileStorage {
    /// Wraps an open file as it is: no lock is taken, and none released.
    pub fn new(file: File) -> Self {
        FileStorage { file, locked: false }
    }

    /// Opens `path` for reading, or for reading and writing, and locks it
    /// against other processes: shared for reading, exclusive for writing
    /// (on Linux with the byte-range locks QEMU uses, so QEMU and this crate
    /// respect each other's; see the [`super::lock`] module). Fails
    /// at once, without blocking, when `path` is not a regular file (a FIFO,
    /// a socket, a device, a directory: [`std::io::ErrorKind::InvalidInput`]),
    /// and when the file is in use in a conflicting way, by another process
    /// or another handle of this one ([`std::io::ErrorKind::ResourceBusy`]).
    /// The lock lasts until the file is closed.
    pub fn open(path: &Path, writable: bool) -> std::io::Result<Self> {
        Ok(FileStorage { file: lock::open(path, Mode { writable, create_new: false, lock: true })?, locked: true })
    }

    /// Opens the regular file at `path` read-only without a lock and whatever
    /// others hold (like `qemu-img -U`), to inspect an image in use. What is
    /// read may be inconsistent while a writer changes the file. (On Windows
    /// a writer's share mode still refuses it.)
    pub fn open_force_share(path: &Path) -> std::io::Result<Self> {
        let file = lock::open(path, Mode { writable: false, create_new: false, lock: false })?;
        Ok(FileStorage { file, locked: false })
    }

    /// Creates `path`, failing if it exists, locked for writing.
    pub fn create_new(path: &Path) -> std::io::Result<Self> {
        let file = lock::open(path, Mode { writable: true, create_new: true, lock: true })?;
        Ok(FileStorage { file, locked: true })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Makes the entry of `path` in its directory durable: on Unix the
/// directory holding it (`.` for a bare name) is opened and fsynced, so a
/// power cut after a file was created or renamed cannot lose its name. (On
/// Windows NTFS journals names itself and a directory cannot be opened like
/// a file: nothing to do.)
pub(crate) fn sync_directory_of(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Storage for FileStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        Ok(read_at(&self.file, buf, offset)?)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        Ok(write_at(&self.file, buf, offset)?)
    }

    /// Positioned writes need no exclusive access to the file.
    fn write_shared(&self, buf: &[u8], offset: u64) -> Option<Result<(), IoError>> {
        Some(write_at(&self.file, buf, offset).map_err(IoError::from))
    }

    /// A file's length changes through a shared handle too.
    fn set_len_shared(&self, len: u64) -> Option<Result<(), IoError>> {
        Some(self.file.set_len(len).map_err(IoError::from))
    }

    /// So does its durability.
    fn flush_shared(&self) -> Option<Result<(), IoError>> {
        Some(self.file.sync_data().map_err(IoError::from))
    }

    /// And its space.
    fn allocate_shared(&self, offset: u64, len: u64) -> Option<Result<(), IoError>> {
        Some(allocate_file(&self.file, offset, len))
    }

    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(self.file.sync_data()?)
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        Ok(self.file.set_len(len)?)
    }

    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        allocate_file(&self.file, offset, len)
    }
}

/// [`Storage::allocate`] of `file`: `fallocate` on Linux, else (or where the
/// filesystem has none) the bytes rewritten in place.
fn allocate_file(file: &File, offset: u64, len: u64) -> Result<(), IoError> {
    {
        if len == 0 {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        if let (Ok(at), Ok(n)) = (nix::libc::off_t::try_from(offset), nix::libc::off_t::try_from(len)) {
            use nix::errno::Errno;
            use nix::fcntl::{fallocate, FallocateFlags};
            loop {
                match fallocate(file, FallocateFlags::empty(), at, n) {
                    Ok(()) => return Ok(()),
                    Err(Errno::EINTR) => {}
                    // A filesystem without fallocate (some network and FUSE
                    // ones): rewrite the bytes instead.
                    Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => break,
                    Err(e) => return Err(std::io::Error::from(e).into()),
                }
            }
        }
        Ok(rewrite_in_place(file, offset, len)?)
    }
}

/// Allocates `[offset, offset + len)` of `file` without `fallocate`: each
/// byte is read and written back unchanged, which fills any hole (a crash
/// midway leaves the same bytes).
fn rewrite_in_place(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = alloc::vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        read_at(file, &mut buf[..n], offset + done)?;
        write_at(file, &buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}
