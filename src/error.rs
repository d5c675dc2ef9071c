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

/// The error of a storage operation: the same type with or without the
/// `std` feature.
///
/// It has a [`kind`](IoError::kind) and a message. Without `std` the
/// message is a static description ([`IoError::new`]); with `std` an
/// [`std::io::Error`] converts into it (so `?` works in a [`Storage`]
/// implementation over `std` I/O), is kept inside whole
/// ([`IoError::as_std`], with its OS error code) and comes back out with
/// `From`. A C caller's storage callbacks report through the same type.
///
/// [`Storage`]: crate::Storage
pub struct IoError {
    kind: IoErrorKind,
    repr: Repr,
}

enum Repr {
    Message(&'static str),
    #[cfg(feature = "std")]
    Std(std::io::Error),
}

/// The category of an [`IoError`], the same with or without `std`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoErrorKind {
    /// A read reached past the end of the storage.
    UnexpectedEof,
    /// The storage does not allow the operation (a read-only view, a
    /// callback the caller did not give).
    Unsupported,
    /// No space left (ENOSPC), quota exceeded, or the file would grow past
    /// the filesystem's limit (EFBIG).
    StorageFull,
    /// Another process holds a lock on the file.
    Busy,
    /// The file does not exist.
    NotFound,
    /// The system denied access.
    PermissionDenied,
    /// The file already exists.
    AlreadyExists,
    /// Anything else.
    Other,
}

impl IoError {
    /// An error of `kind` described by `message`.
    pub const fn new(kind: IoErrorKind, message: &'static str) -> IoError {
        IoError { kind, repr: Repr::Message(message) }
    }

    /// The category.
    pub fn kind(&self) -> IoErrorKind {
        self.kind
    }

    /// The system's own error, when this one came from one.
    #[cfg(feature = "std")]
    pub fn as_std(&self) -> Option<&std::io::Error> {
        match &self.repr {
            Repr::Std(e) => Some(e),
            Repr::Message(_) => None,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Message(m) => f.write_str(m),
            #[cfg(feature = "std")]
            Repr::Std(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl fmt::Debug for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Message(m) => f.debug_struct("IoError").field("kind", &self.kind).field("message", m).finish(),
            #[cfg(feature = "std")]
            Repr::Std(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl core::error::Error for IoError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match &self.repr {
            Repr::Message(_) => None,
            #[cfg(feature = "std")]
            Repr::Std(e) => e.source(),
        }
    }
}

#[cfg(feature = "std")]
impl From<std::io::Error> for IoError {
    fn from(e: std::io::Error) -> IoError {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::UnexpectedEof => IoErrorKind::UnexpectedEof,
            K::Unsupported => IoErrorKind::Unsupported,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => IoErrorKind::StorageFull,
            K::ResourceBusy => IoErrorKind::Busy,
            K::NotFound => IoErrorKind::NotFound,
            K::PermissionDenied => IoErrorKind::PermissionDenied,
            K::AlreadyExists => IoErrorKind::AlreadyExists,
            _ => IoErrorKind::Other,
        };
        IoError { kind, repr: Repr::Std(e) }
    }
}

#[cfg(feature = "std")]
impl From<std::io::ErrorKind> for IoError {
    fn from(kind: std::io::ErrorKind) -> IoError {
        IoError::from(std::io::Error::from(kind))
    }
}

#[cfg(feature = "std")]
impl From<IoError> for std::io::Error {
    fn from(e: IoError) -> std::io::Error {
        use std::io::ErrorKind as K;
        match e.repr {
            Repr::Std(inner) => inner,
            Repr::Message(m) => {
                let kind = match e.kind {
                    IoErrorKind::UnexpectedEof => K::UnexpectedEof,
                    IoErrorKind::Unsupported => K::Unsupported,
                    IoErrorKind::StorageFull => K::StorageFull,
                    IoErrorKind::Busy => K::ResourceBusy,
                    IoErrorKind::NotFound => K::NotFound,
                    IoErrorKind::PermissionDenied => K::PermissionDenied,
                    IoErrorKind::AlreadyExists => K::AlreadyExists,
                    IoErrorKind::Other => K::Other,
                };
                std::io::Error::new(kind, m)
            }
        }
    }
}

/// Builds an [`IoError`] for a read past the end of storage.
pub(crate) fn io_unexpected_eof() -> IoError {
    IoError::new(IoErrorKind::UnexpectedEof, "read past the end of the storage")
}

/// Builds an [`IoError`] for an operation the storage does not allow.
pub(crate) fn io_unsupported(message: &'static str) -> IoError {
    IoError::new(IoErrorKind::Unsupported, message)
}

/// Attaches what was being done, and where, to a storage error: the one
/// place an [`IoError`] becomes an [`Error::Io`].
pub(crate) trait IoContext<T> {
    /// `Error::Io { op, offset, .. }` around the error, if there is one.
    fn during(self, op: &'static str, offset: u64) -> Result<T>;
}

impl<T, E: Into<IoError>> IoContext<T> for core::result::Result<T, E> {
    fn during(self, op: &'static str, offset: u64) -> Result<T> {
        self.map_err(|source| Error::Io { op, offset, source: source.into() })
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
    /// [`Error::Busy`] when it is locked ([`IoErrorKind::Busy`]),
    /// [`Error::InvalidArgument`] when it is not a regular file, else
    /// [`Error::Open`]. `op` is `"open"` or `"create"`.
    #[cfg(feature = "std")]
    pub(crate) fn opening(op: &'static str, source: impl Into<IoError>, writable: bool) -> Error {
        let source = source.into();
        if source.kind() == IoErrorKind::Busy {
            return Error::Busy { writable };
        }
        let inner = source.as_std().and_then(|e| e.get_ref());
        if let Some(what) = inner.and_then(|e| e.downcast_ref::<crate::io::lock::NotRegularFile>()) {
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

#[cfg(test)]
mod tests {
    use super::{IoError, IoErrorKind};

    #[test]
    fn a_static_io_error_has_its_kind_and_message() {
        let e = IoError::new(IoErrorKind::StorageFull, "the pool is full");
        assert_eq!(e.kind(), IoErrorKind::StorageFull);
        assert_eq!(alloc::format!("{e}"), "the pool is full");
        assert!(alloc::format!("{e:?}").contains("StorageFull"));
    }

    #[cfg(feature = "std")]
    #[test]
    fn std_errors_keep_their_os_code_and_map_to_kinds() {
        use std::io::{Error as StdError, ErrorKind as K};
        let cases = [
            (K::UnexpectedEof, IoErrorKind::UnexpectedEof),
            (K::Unsupported, IoErrorKind::Unsupported),
            (K::StorageFull, IoErrorKind::StorageFull),
            (K::QuotaExceeded, IoErrorKind::StorageFull),
            (K::FileTooLarge, IoErrorKind::StorageFull),
            (K::ResourceBusy, IoErrorKind::Busy),
            (K::NotFound, IoErrorKind::NotFound),
            (K::PermissionDenied, IoErrorKind::PermissionDenied),
            (K::AlreadyExists, IoErrorKind::AlreadyExists),
            (K::WouldBlock, IoErrorKind::Other),
            (K::Interrupted, IoErrorKind::Other),
        ];
        for (std_kind, kind) in cases {
            assert_eq!(IoError::from(std_kind).kind(), kind, "{std_kind:?}");
        }
        // A full disk from the system (ENOSPC; on Windows ERROR_DISK_FULL):
        // the code survives the trip both ways.
        let full = if cfg!(windows) { 112 } else { 28 };
        let e = IoError::from(StdError::from_raw_os_error(full));
        assert_eq!(e.kind(), IoErrorKind::StorageFull);
        assert_eq!(e.as_std().and_then(StdError::raw_os_error), Some(full));
        assert_eq!(StdError::from(e).raw_os_error(), Some(full));
        // A static one becomes a std error of the matching kind.
        for (kind, std_kind) in [
            (IoErrorKind::UnexpectedEof, K::UnexpectedEof),
            (IoErrorKind::Unsupported, K::Unsupported),
            (IoErrorKind::StorageFull, K::StorageFull),
            (IoErrorKind::Busy, K::ResourceBusy),
            (IoErrorKind::NotFound, K::NotFound),
            (IoErrorKind::PermissionDenied, K::PermissionDenied),
            (IoErrorKind::AlreadyExists, K::AlreadyExists),
            (IoErrorKind::Other, K::Other),
        ] {
            let e = IoError::new(kind, "static");
            assert!(e.as_std().is_none());
            let back = StdError::from(e);
            assert_eq!((back.kind(), alloc::format!("{back}")), (std_kind, "static".into()));
            assert_eq!(IoError::from(back).kind(), kind);
        }
    }
}
