//! Positioned I/O on the backing file.
//!
//! [`Storage`] is the only way the crate touches bytes of an image: reads and
//! writes at explicit offsets (no seek position, so reads can run from many
//! threads at once), a `flush` that is a durability barrier (everything
//! written before it is on stable storage when it returns), and the length.
//! It is object-safe so a parent can be a `Box<dyn Storage>` and a C callback
//! table can implement it.
//!
//! Files may be sparse: a range extended by `set_len` may hold no space yet,
//! so a later write into it can fail for lack of space (ENOSPC).
//! [`Storage::allocate`] reserves real space where that must not happen: the
//! log, and every place a log entry's pages are applied to, are allocated
//! before the entry is written, so a full disk fails a metadata update before
//! anything is logged rather than halfway through applying it.

use alloc::vec::Vec;

use crate::error::{io_unexpected_eof, IoError};

#[cfg(feature = "std")]
mod file;
#[cfg(feature = "std")]
pub(crate) use file::sync_directory_of;
#[cfg(feature = "std")]
pub use file::{FileOpener, FileStorage};
#[cfg(feature = "std")]
pub mod lock;
#[cfg(feature = "std")]
mod lockset;
#[cfg(feature = "std")]
pub use lockset::LockSet;
// Crash and full-disk testing (feature `test-util`): a library user's build
// does not carry it, and it is not part of the stable API.
#[cfg(feature = "test-util")]
pub mod fault;
#[cfg(feature = "test-util")]
pub use fault::{CrashState, FaultClock, FaultStorage, PendingOp, Persisted, SPACE_PAGE, TORN_SECTOR_SIZE};

/// Positioned, durable I/O on one backing file.
pub trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError>;
    /// Writes all of `buf` at `offset`, extending the storage if needed.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), IoError>;
    /// The current length in bytes.
    fn len(&self) -> Result<u64, IoError>;
    /// Whether the storage is empty.
    fn is_empty(&self) -> Result<bool, IoError> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&mut self, len: u64) -> Result<(), IoError>;
    /// Backs `[offset, offset + len)`, which lies inside the storage, with
    /// real space, so that later writes inside the range cannot fail for
    /// lack of space. The bytes do not change. Fails (typically with
    /// ENOSPC) when the space is not there, having changed nothing the
    /// caller can see.
    ///
    /// The default does nothing: right for storage without holes (memory,
    /// a C caller's callbacks). [`FileStorage`] uses `fallocate` on Linux
    /// and elsewhere rewrites the bytes in place.
    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        let _ = (offset, len);
        Ok(())
    }
    /// Writes all of `buf` at `offset`, inside the storage's length,
    /// through a shared reference, when the storage takes writes from many
    /// threads at once (a file's positioned writes do); `None`, having
    /// written nothing, when it does not, and the caller writes with
    /// [`Storage::write_all_at`] instead. What
    /// [`Disk::write_at_shared`](crate::Disk::write_at_shared) writes with.
    fn write_shared(&self, buf: &[u8], offset: u64) -> Option<Result<(), IoError>> {
        let _ = (buf, offset);
        None
    }
    /// Truncates or extends (with zeros) to `len` bytes through a shared
    /// reference, when the storage can while others read and write it (a
    /// file can); `None`, having changed nothing, when it cannot. What a
    /// disk grows its file with when it allocates a block while readers run
    /// ([`Disk::reserve_shared`](crate::Disk::reserve_shared)).
    fn set_len_shared(&self, len: u64) -> Option<Result<(), IoError>> {
        let _ = len;
        None
    }
    /// [`Storage::flush`] through a shared reference, while others read and
    /// write (a file can); `None`, having done nothing, when it cannot. It
    /// covers every write that completed before it. What a disk flushes with
    /// while readers run ([`Disk::flush_shared`](crate::Disk::flush_shared)).
    fn flush_shared(&self) -> Option<Result<(), IoError>> {
        None
    }
    /// [`Storage::allocate`] through a shared reference (a file can);
    /// `None`, having done nothing, when it cannot.
    fn allocate_shared(&self, offset: u64, len: u64) -> Option<Result<(), IoError>> {
        let _ = (offset, len);
        None
    }
    /// The open file behind the storage, when it is one: what
    /// [`Disk::level_file`](crate::Disk::level_file) hands to a caller that
    /// moves payload itself. `None` (the default) for anything else.
    #[cfg(feature = "std")]
    fn file(&self) -> Option<&std::fs::File> {
        None
    }
}

impl<S: Storage + ?Sized> Storage for alloc::boxed::Box<S> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        (**self).read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        (**self).write_all_at(buf, offset)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        (**self).flush()
    }
    fn len(&self) -> Result<u64, IoError> {
        (**self).len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        (**self).set_len(len)
    }
    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        (**self).allocate(offset, len)
    }
    fn write_shared(&self, buf: &[u8], offset: u64) -> Option<Result<(), IoError>> {
        (**self).write_shared(buf, offset)
    }
    fn set_len_shared(&self, len: u64) -> Option<Result<(), IoError>> {
        (**self).set_len_shared(len)
    }
    fn flush_shared(&self) -> Option<Result<(), IoError>> {
        (**self).flush_shared()
    }
    fn allocate_shared(&self, offset: u64, len: u64) -> Option<Result<(), IoError>> {
        (**self).allocate_shared(offset, len)
    }
    #[cfg(feature = "std")]
    fn file(&self) -> Option<&std::fs::File> {
        (**self).file()
    }
}

/// A shared reference to storage as `&mut`-style [`Storage`]: every change
/// goes through the storage's shared methods ([`Storage::write_shared`],
/// [`Storage::flush_shared`], [`Storage::set_len_shared`],
/// [`Storage::allocate_shared`]), so code written for `&mut dyn Storage`
/// (the log writer) can run while others read and write. A shared method
/// the storage lacks fails as unsupported; callers check
/// [`Storage::flush_shared`] first.
#[cfg(feature = "std")]
pub(crate) struct SharedIo<'a>(pub(crate) &'a dyn Storage);

#[cfg(feature = "std")]
impl Storage for SharedIo<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        let unsupported = || crate::error::io_unsupported("the storage takes no shared writes");
        self.0.write_shared(buf, offset).unwrap_or_else(|| Err(unsupported()))
    }
    fn flush(&mut self) -> Result<(), IoError> {
        let unsupported = || crate::error::io_unsupported("the storage takes no shared flushes");
        self.0.flush_shared().unwrap_or_else(|| Err(unsupported()))
    }
    fn len(&self) -> Result<u64, IoError> {
        self.0.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let unsupported = || crate::error::io_unsupported("the storage takes no shared length changes");
        self.0.set_len_shared(len).unwrap_or_else(|| Err(unsupported()))
    }
    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        let unsupported = || crate::error::io_unsupported("the storage takes no shared allocation");
        self.0.allocate_shared(offset, len).unwrap_or_else(|| Err(unsupported()))
    }
}

/// Storage in memory: a growable byte vector. Useful for tests, for images
/// built in memory, and as the model in property tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStorage {
    data: Vec<u8>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> Self {
        MemStorage { data: Vec::new() }
    }

    /// Storage holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStorage { data }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// Takes the bytes out.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }
}

impl Storage for MemStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let start = usize::try_from(offset).map_err(|_| io_unexpected_eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(io_unexpected_eof)?;
        let src = self.data.get(start..end).ok_or_else(io_unexpected_eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        let start = usize::try_from(offset).map_err(|_| io_unexpected_eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(io_unexpected_eof)?;
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.data.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let len = usize::try_from(len).map_err(|_| io_unexpected_eof())?;
        self.data.resize(len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_reads_writes_and_grows() {
        let mut m = MemStorage::new();
        m.write_all_at(b"abc", 10).unwrap();
        assert_eq!(m.len().unwrap(), 13);
        let mut buf = [1u8; 13];
        m.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..10], &[0u8; 10]);
        assert_eq!(&buf[10..], b"abc");
        assert!(m.read_exact_at(&mut buf, 1).is_err());
        m.set_len(2).unwrap();
        assert_eq!(m.len().unwrap(), 2);
    }
}
