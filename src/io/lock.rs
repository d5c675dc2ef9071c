//! Opening image files: only regular files, never blocking, and locked
//! against other processes the way QEMU locks its images.
//!
//! ## Only regular files
//!
//! A FIFO opened the usual way blocks until a writer comes; a device or a
//! socket is no image either. The path is looked at first (`stat`, which
//! never blocks), the file is opened with `O_NONBLOCK` on Unix, and the open
//! descriptor is looked at again (`fstat`): anything but a regular file is
//! refused at once ([`std::io::ErrorKind::InvalidInput`] from
//! [`FileStorage::open`](super::FileStorage::open),
//! [`Error::InvalidArgument`](crate::Error::InvalidArgument) from opening a
//! disk), naming what it is.
//!
//! ## Locks (Linux)
//!
//! QEMU's `file-posix` driver locks an image with open-file-description
//! byte-range locks (`F_OFD_SETLK`), one byte per block-layer permission:
//! byte `100 + p` read-locked means "I hold permission `p`", byte `200 + p`
//! read-locked "I do not let others hold `p`". The permissions are
//! consistent read (0), write (1), write unchanged (2) and resize (3). Only
//! read locks are ever set; a conflict is found by asking (`F_OFD_GETLK`)
//! whether a write lock could be set on the other side's byte, which fails
//! exactly when another open file description holds a read lock there.
//!
//! What QEMU 10 holds, seen in `/proc/locks`: a writer (`qemu-io`,
//! `qemu-nbd` without `-r`) bytes 100, 101, 103, 201 and 203 (it reads,
//! writes and resizes, and shares neither writing nor resizing); a reader
//! (`qemu-img info`, `qemu-io -r`) bytes 100, 201 and 203; with `-U`
//! (force-share) nothing. A writable open here takes the writer's bytes, a
//! read-only one the reader's, with QEMU's order: set the bytes, then test
//! the other side's. So a writer is refused while anyone else reads or
//! writes the image, later readers and writers are refused while it is
//! open, readers share with readers, and QEMU and this crate refuse each
//! other's images in the same way. Two racing openers may both be refused;
//! never both admitted.
//!
//! The locks belong to the open file description: two handles of one
//! process conflict just as two processes do, and a duplicate of a locked
//! descriptor (`try_clone`) shares its locks (see [`LockSet`](super::LockSet)).
//! Closing the last descriptor releases them, also when the process dies.
//!
//! A filesystem that does not support these locks (`ENOLCK`, `EOPNOTSUPP`,
//! `ENOSYS`, `EINVAL`: some network filesystems, kernels before 3.15) is
//! used without a lock, as QEMU's default `locking=auto` does.
//!
//! ## Other platforms
//!
//! Other Unix systems (and 32-bit MIPS Linux, whose `struct flock` has a
//! different shape) use `flock(2)`: shared for reading, exclusive for
//! writing, on the whole file. It has the same exclusion rules among users
//! of this crate, but QEMU does not see it. On Windows the share mode of the
//! open does the same work, and Windows enforces it on every program:
//!
//! - a writer shares reading only: a later writer is refused (the writer
//!   shares no writing), and so is a plain reader (which shares no writing
//!   with the writer's write access); the writer is refused while the file
//!   is open for reading by anyone who does not share writing;
//! - a reader shares reading only: readers share with readers, and refuse
//!   a writer;
//! - a force-share reader shares everything and takes no part: it opens
//!   beside a writer, and a writer opens beside it, as with `-U` on Linux.
//!
//! Measured under Wine by `.ci/windows` (the `locks` tests).

use std::fs::File;
use std::io;
use std::path::Path;

/// The error payload of a path that is not a regular file.
#[derive(Debug)]
pub(crate) struct NotRegularFile {
    /// What it is instead ("a FIFO", "a directory", ...).
    pub(crate) what: &'static str,
}

impl core::fmt::Display for NotRegularFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "it is {}, not a regular file; only regular files are opened as images", self.what)
    }
}

impl core::error::Error for NotRegularFile {}

/// The error payload of a lock held by someone else.
#[derive(Debug)]
pub(crate) struct Locked;

impl core::fmt::Display for Locked {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the file is locked by another process or handle")
    }
}

impl core::error::Error for Locked {}

/// The error of a conflicting lock: [`io::ErrorKind::ResourceBusy`].
pub(crate) fn busy() -> io::Error {
    io::Error::new(io::ErrorKind::ResourceBusy, Locked)
}

/// What a non-regular file is.
fn describe(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_char_device() {
            return "a character device";
        }
    }
    "neither a regular file nor a directory"
}

/// `Ok` for a regular file, else the [`NotRegularFile`] error.
fn require_regular(meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegularFile { what: describe(meta) }))
}

/// How to open an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode {
    /// For writing too.
    pub(crate) writable: bool,
    /// Create it; it must not exist.
    pub(crate) create_new: bool,
    /// Take the lock (`false`: force-share, read-only).
    pub(crate) lock: bool,
}

/// Opens the regular file at `path` as `mode` says, without ever blocking,
/// locked unless `mode.lock` is false. A conflicting lock is
/// [`io::ErrorKind::ResourceBusy`].
pub(crate) fn open(path: &Path, mode: Mode) -> io::Result<File> {
    if !mode.create_new {
        // Look before opening: `stat` never blocks, `open` of a FIFO may.
        // (A path that cannot be looked at is left to `open` to report.)
        if let Ok(meta) = std::fs::metadata(path) {
            require_regular(&meta)?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(mode.writable);
    if mode.create_new {
        options.create_new(true);
    }
    platform::prepare(&mut options, mode);
    let file = options.open(path).map_err(platform::open_error)?;
    // The file may have changed between the look and the open.
    require_regular(&file.metadata()?)?;
    if let Err(e) = platform::finish(&file, mode) {
        unlock(&file);
        return Err(e);
    }
    Ok(file)
}

/// Releases the locks of `file`'s open file description, before it is
/// closed: a child process forked by another thread holds a copy of the
/// descriptor until it executes its program, and with it the locks, which
/// would refuse an open that comes right after the close.
pub(crate) fn unlock(file: &File) {
    platform::unlock(file);
}

#[cfg(all(unix, target_os = "linux", not(any(target_arch = "mips", target_arch = "mips32r6"))))]
mod platform {
    //! Open-file-description byte-range locks, as QEMU sets them.

    use std::fs::File;
    use std::io;

    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::libc;

    use super::Mode;

    /// Byte `PERM_BASE + p`: "I hold permission `p`".
    const PERM_BASE: i64 = 100;
    /// Byte `SHARED_BASE + p`: "I do not share permission `p`".
    const SHARED_BASE: i64 = 200;
    /// QEMU's permission bits, by position.
    const CONSISTENT_READ: i64 = 0;
    const WRITE: i64 = 1;
    const RESIZE: i64 = 3;

    /// The permissions held, and those not shared, by a writer or a reader
    /// (what QEMU 10's `qemu-io` / `qemu-nbd` and `qemu-img info` hold).
    fn bits(writable: bool) -> (&'static [i64], &'static [i64]) {
        if writable {
            (&[CONSISTENT_READ, WRITE, RESIZE], &[WRITE, RESIZE])
        } else {
            (&[CONSISTENT_READ], &[WRITE, RESIZE])
        }
    }

    pub(super) fn prepare(options: &mut std::fs::OpenOptions, _mode: Mode) {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }

    pub(super) fn open_error(e: io::Error) -> io::Error {
        e
    }

    fn flock(l_type: libc::c_int, at: i64) -> libc::flock {
        libc::flock {
            l_type: l_type as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: at as libc::off_t,
            l_len: 1,
            l_pid: 0,
        }
    }

    pub(super) fn unlock(file: &File) {
        let mut all = flock(libc::F_UNLCK, 0);
        all.l_len = 0;
        let _ = fcntl(file, FcntlArg::F_OFD_SETLK(&all));
    }

    /// Whether the filesystem has no such locks: then none is taken.
    fn unsupported(e: Errno) -> bool {
        matches!(e, Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL)
    }

    pub(super) fn finish(file: &File, mode: Mode) -> io::Result<()> {
        // Back to blocking I/O (which regular files ignore anyway).
        let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
        fcntl(file, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
        if !mode.lock {
            return Ok(());
        }
        let (held, unshared) = bits(mode.writable);
        // Set first, then test, as QEMU does: of two racing opens at least
        // one sees the other.
        let bytes = held.iter().map(|p| PERM_BASE + p).chain(unshared.iter().map(|p| SHARED_BASE + p));
        for at in bytes {
            match fcntl(file, FcntlArg::F_OFD_SETLK(&flock(libc::F_RDLCK, at))) {
                Ok(_) => {}
                Err(Errno::EAGAIN | Errno::EACCES) => return Err(super::busy()),
                Err(e) if unsupported(e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        // Someone else does not share what we hold, or holds what we do not share.
        let tests = held.iter().map(|p| SHARED_BASE + p).chain(unshared.iter().map(|p| PERM_BASE + p));
        for at in tests {
            let mut probe = flock(libc::F_WRLCK, at);
            match fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)) {
                Ok(_) if probe.l_type == libc::F_UNLCK as libc::c_short => {}
                Ok(_) => return Err(super::busy()),
                Err(e) if unsupported(e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(all(unix, not(all(target_os = "linux", not(any(target_arch = "mips", target_arch = "mips32r6"))))))]
mod platform {
    //! `flock(2)`: shared for readers, exclusive for writers.

    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg, FlockArg, OFlag};
    use nix::libc;

    use super::Mode;

    pub(super) fn prepare(options: &mut std::fs::OpenOptions, _mode: Mode) {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }

    pub(super) fn open_error(e: io::Error) -> io::Error {
        e
    }

    pub(super) fn unlock(file: &File) {
        #[allow(deprecated)]
        let _ = nix::fcntl::flock(file.as_raw_fd(), FlockArg::Unlock);
    }

    pub(super) fn finish(file: &File, mode: Mode) -> io::Result<()> {
        let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
        fcntl(file, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
        if !mode.lock {
            return Ok(());
        }
        let arg = if mode.writable { FlockArg::LockExclusiveNonblock } else { FlockArg::LockSharedNonblock };
        // The plain function, not `nix::fcntl::Flock`: the lock must stay
        // with the open file description (and its duplicates) until the
        // last one closes, and `Flock`'s drop may panic.
        #[allow(deprecated)]
        match nix::fcntl::flock(file.as_raw_fd(), arg) {
            Ok(()) => Ok(()),
            Err(Errno::EWOULDBLOCK) => Err(super::busy()),
            Err(Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(windows)]
mod platform {
    //! Share modes: a locked open shares reading, a force-share open
    //! everything.

    use std::fs::File;
    use std::io;
    use std::os::windows::fs::OpenOptionsExt;

    use super::Mode;

    const FILE_SHARE_READ: u32 = 0x1;
    const FILE_SHARE_WRITE: u32 = 0x2;
    const FILE_SHARE_DELETE: u32 = 0x4;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    const ERROR_LOCK_VIOLATION: i32 = 33;

    pub(super) fn prepare(options: &mut std::fs::OpenOptions, mode: Mode) {
        // Both kinds of locked open share reading: only an open that shares
        // writing too (force-share) gets past a writer, whose write access
        // every other locked open refuses to share.
        let share = match mode.lock {
            false => FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            true => FILE_SHARE_READ,
        };
        options.share_mode(share);
    }

    pub(super) fn open_error(e: io::Error) -> io::Error {
        match e.raw_os_error() {
            Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION) => super::busy(),
            _ => e,
        }
    }

    pub(super) fn finish(_file: &File, _mode: Mode) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn unlock(_file: &File) {}
}

#[cfg(not(any(unix, windows)))]
mod platform {
    //! No locks, no special files to fear.

    use std::fs::File;
    use std::io;

    use super::Mode;

    pub(super) fn prepare(_options: &mut std::fs::OpenOptions, _mode: Mode) {}

    pub(super) fn open_error(e: io::Error) -> io::Error {
        e
    }

    pub(super) fn finish(_file: &File, _mode: Mode) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn unlock(_file: &File) {}
}
