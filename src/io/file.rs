//! [`Storage`] over `std::fs::File` with the platform's positioned I/O
//! (`pread`/`pwrite` on Unix, `ReadFile`/`WriteFile` with an offset on
//! Windows), so concurrent reads need no lock and no seek.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::Storage;
use crate::error::IoError;

/// How images are opened by path: the filesystem by default, or a
/// caller's function from a path and the wish to write to a [`Storage`].
///
/// Operations that open several files by name — parent resolution, merges,
/// sibling discovery — take one, so a test can put every file of a tree on
/// fault-injecting storage, and a tool can open files its own way (through
/// a sandbox broker, say) while paths keep naming them.
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

    /// Opens `path`, for writing too when `writable`.
    pub fn open(&self, path: &Path, writable: bool) -> std::io::Result<alloc::boxed::Box<dyn Storage>> {
        (self.0)(path, writable)
    }
}

impl Default for FileOpener {
    /// The filesystem ([`FileStorage::open`]).
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
}

impl FileStorage {
    /// Wraps an open file.
    pub fn new(file: File) -> Self {
        FileStorage { file }
    }

    /// Opens `path` for reading, or for reading and writing.
    pub fn open(path: &Path, writable: bool) -> std::io::Result<Self> {
        Ok(FileStorage { file: OpenOptions::new().read(true).write(writable).open(path)? })
    }

    /// Creates `path`, failing if it exists.
    pub fn create_new(path: &Path) -> std::io::Result<Self> {
        Ok(FileStorage { file: OpenOptions::new().read(true).write(true).create_new(true).open(path)? })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
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
        read_at(&self.file, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        write_at(&self.file, buf, offset)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.file.sync_data()
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.file.set_len(len)
    }

    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        if len == 0 {
            return Ok(());
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        loop {
            match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if e == rustix::io::Errno::INTR => {}
                // A filesystem without fallocate (some network and FUSE
                // ones): rewrite the bytes instead.
                Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => break,
                Err(e) => return Err(e.into()),
            }
        }
        rewrite_in_place(&self.file, offset, len)
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
