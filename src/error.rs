//! The crate's single error type.
//!
//! Every failure is an [`Error`]: a `#[non_exhaustive]` enum whose variants
//! carry the context a user needs to act — the structure that was wrong, the
//! file offset where it lives, the two GUIDs that did not match. The file path
//! is added at the `std` edge ([`Error::File`]), because the core works on
//! storage, not paths. [`Error::kind`] maps every error onto a small, stable
//! set of [`ErrorKind`]s, one-to-one with the C status codes.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

/// The error of a storage operation: `std::io::Error` with `std`.
#[cfg(feature = "std")]
pub type IoError = std::io::Error;

/// The error of a storage operation without `std`: a static description.
#[cfg(not(feature = "std"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoError {
    /// What went wrong.
    pub message: &'static str,
}

#[cfg(not(feature = "std"))]
impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

#[cfg(not(feature = "std"))]
impl core::error::Error for IoError {}

/// Builds an [`IoError`] for a read past the end of storage.
pub(crate) fn io_unexpected_eof() -> IoError {
    #[cfg(feature = "std")]
    {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the storage")
    }
    #[cfg(not(feature = "std"))]
    {
        IoError { message: "read past the end of the storage" }
    }
}

/// Builds an [`IoError`] for an operation the storage does not allow.
pub(crate) fn io_unsupported(message: &'static str) -> IoError {
    #[cfg(feature = "std")]
    {
        std::io::Error::new(std::io::ErrorKind::Unsupported, message)
    }
    #[cfg(not(feature = "std"))]
    {
        IoError { message }
    }
}

/// A shorthand for `core::result::Result<T, vhdx::Error>`.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backing storage failed.
    #[error("I/O error while {op} at file offset {offset:#x}: {source}")]
    Io {
        /// What was being done ("reading the BAT", "writing payload", ...).
        op: &'static str,
        /// The file offset of the operation.
        offset: u64,
        /// The storage's own error.
        source: IoError,
    },
    /// A structure of the image breaks the format's rules.
    #[error("corrupt {structure} at file offset {offset:#x}: {detail}")]
    Corrupt {
        /// The structure, in the format's words ("header", "region table", "BAT entry 7").
        structure: &'static str,
        /// Where it is in the file.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// The image is well formed but uses something this implementation does not
    /// support (an unknown required region or metadata item, a future version).
    #[error("unsupported {structure} at file offset {offset:#x}: {detail}")]
    Unsupported {
        /// The structure, in the format's words.
        structure: &'static str,
        /// Where it is in the file.
        offset: u64,
        /// What is not supported.
        detail: String,
    },
    /// The caller asked for something impossible (a bad block size, a size not
    /// a multiple of the sector size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A read or write reaches past the end of the virtual disk.
    #[error(
        "access of {len} byte{} at offset {offset:#x} is outside the virtual disk of {size} bytes",
        if *len == 1 { "" } else { "s" }
    )]
    OutOfRange {
        /// The virtual offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The virtual disk size.
        size: u64,
    },
    /// A write to a disk that was opened read-only.
    #[error("the disk is open read-only")]
    ReadOnly,
    /// The parent of a differencing disk could not be found.
    #[error("parent of the differencing disk not found (looked for {looked_for})")]
    ParentNotFound {
        /// The candidates tried, in order, and locator paths that cannot be
        /// opened on this system (see [`crate::chain::looked_for`]).
        looked_for: String,
    },
    /// A parent was found but its DataWriteGuid does not match the child's
    /// `parent_linkage`: the parent changed after the child was made.
    #[error("parent linkage mismatch: child expects parent DataWriteGuid {expected}, {parent} has {found}")]
    ParentMismatch {
        /// The parent file that was examined.
        parent: String,
        /// The child's `parent_linkage`.
        expected: uuid::Uuid,
        /// The parent's DataWriteGuid.
        found: uuid::Uuid,
    },
    /// A differencing disk was to be linked to a parent that is the disk
    /// itself or one of its descendants: the chain would loop. Nothing was
    /// changed.
    #[error(
        "{parent} cannot be the parent of {child}: {}, so the chain would loop",
        if *itself { "it is that same image" } else { "it descends from it (its own chain leads to it)" }
    )]
    ParentLoop {
        /// The differencing disk.
        child: String,
        /// The parent refused.
        parent: String,
        /// Whether the two are one file (otherwise the parent is a descendant).
        itself: bool,
    },
    /// The file could not be opened or created at all (it does not exist,
    /// permission is denied, it already exists, ...).
    #[error("cannot {op} the file: {source}")]
    Open {
        /// `"open"` or `"create"`.
        op: &'static str,
        /// The system's reason.
        source: IoError,
    },
    /// The operation was refused to protect other images or data (siblings a
    /// merge would break, conflicting changes); nothing was modified.
    #[error("refused: {0}")]
    Refused(String),
    /// The file is in use: another process, or another handle of this one,
    /// holds a lock on it that this open conflicts with (a writer excludes
    /// every other reader and writer; readers share with readers). Nothing
    /// was read or changed.
    #[error("{}", busy_message(*.writable))]
    Busy {
        /// Whether the refused open was for writing.
        writable: bool,
    },
    /// An error about a particular file: the path, then the error.
    #[error("{path}: {inner}")]
    File {
        /// The file's path.
        path: String,
        /// What went wrong with it.
        inner: Box<Error>,
    },
}

/// The category of an [`Error`], stable across versions and one-to-one with the
/// C status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Backing storage failed.
    Io,
    /// The image breaks the format's rules.
    Corrupt,
    /// The image uses a feature this implementation does not support.
    Unsupported,
    /// The caller's arguments are not acceptable.
    InvalidArgument,
    /// Access outside the virtual disk.
    OutOfRange,
    /// Write to a read-only disk.
    ReadOnly,
    /// A differencing disk's parent could not be found.
    ParentNotFound,
    /// A differencing disk's parent does not match its linkage.
    ParentMismatch,
    /// Refused to protect other images or data.
    Refused,
    /// The file is in use by another process (locked).
    Busy,
}

fn busy_message(writable: bool) -> &'static str {
    if writable {
        "in use by another process (or another open handle of this one), which has it open for reading or \
         writing: it cannot be opened for writing until that is closed"
    } else {
        "in use by another process (or another open handle of this one), which is writing to it: it cannot be \
         opened until that is closed; to inspect it anyway, open it with force-share (the CLI's -U, \
         OpenOptions::force_share), knowing that what is read may be inconsistent"
    }
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Open { .. } => ErrorKind::Io,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::OutOfRange { .. } => ErrorKind::OutOfRange,
            Error::ReadOnly => ErrorKind::ReadOnly,
            Error::ParentNotFound { .. } => ErrorKind::ParentNotFound,
            Error::ParentMismatch { .. } => ErrorKind::ParentMismatch,
            Error::ParentLoop { .. } => ErrorKind::InvalidArgument,
            Error::Refused(_) => ErrorKind::Refused,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::File { inner, .. } => inner.kind(),
        }
    }

    /// Wraps this error with the path of the file it concerns (once: an error
    /// that already names a file is returned as it is).
    pub fn in_file(self, path: impl fmt::Display) -> Error {
        match self {
            Error::File { .. } => self,
            other => Error::File { path: alloc::format!("{path}"), inner: Box::new(other) },
        }
    }

    /// The error of a failed open or create (`op`) of a file for reading, or
    /// for writing too when `writable`:
    /// [`Error::Busy`] when it is locked ([`std::io::ErrorKind::ResourceBusy`]),
    /// [`Error::InvalidArgument`] when it is not a regular file, else
    /// [`Error::Open`]. `op` is `"open"` or `"create"`.
    #[cfg(feature = "std")]
    pub(crate) fn opening(op: &'static str, source: IoError, writable: bool) -> Error {
        if source.kind() == std::io::ErrorKind::ResourceBusy {
            return Error::Busy { writable };
        }
        if let Some(what) = source.get_ref().and_then(|e| e.downcast_ref::<crate::io::lock::NotRegularFile>()) {
            return Error::InvalidArgument(alloc::format!("{what}"));
        }
        Error::Open { op, source }
    }

    pub(crate) fn corrupt(structure: &'static str, offset: u64, detail: impl Into<String>) -> Error {
        Error::Corrupt { structure, offset, detail: detail.into() }
    }

    pub(crate) fn unsupported(structure: &'static str, offset: u64, detail: impl Into<String>) -> Error {
        Error::Unsupported { structure, offset, detail: detail.into() }
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Error {
        Error::InvalidArgument(detail.into())
    }
}
