//! # vhdx
//!
//! Read, write and create Microsoft VHDX virtual hard disks — fixed, dynamic
//! and differencing — in safe Rust, with a C ABI.
//!
//! ```
//! use vhdx::{CreateOptions, Disk, MemStorage};
//! # fn main() -> vhdx::Result<()> {
//! // An 8 MiB dynamic disk in memory (use `Disk::create(path, ..)` for a file).
//! let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20), None)?;
//! disk.write_at(b"VHDX", 4096)?;
//! disk.flush()?; // payload durable, then the BAT through the log
//! let mut buf = [0u8; 4];
//! disk.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"VHDX");
//! # Ok(()) }
//! ```
//!
//! Layers, each calling only downward: [`format`] (bytes and rules, no I/O),
//! [`io`] (positioned storage), the log (replay and atomic metadata updates,
//! internal: only [`Disk`] writes or replays it), [`Disk`] (the image). The core is `#![no_std]` with `alloc`; the default
//! `std` feature adds files, random GUIDs and hardware CRC-32C; the `capi`
//! feature (off by default) compiles the C ABI of `include/vhdx.h`.

#![no_std]
#![deny(missing_docs)]
// Unsafe code is allowed only in `capi`, the C ABI (see its module docs).
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

/// Builder-style setters for an options struct that is `#[non_exhaustive]`
/// (code outside the crate starts from `Default::default()` and sets what
/// it needs): one `pub fn field(self, value) -> Self` per field named.
macro_rules! setters {
    ($ty:ident { $($field:ident: $t:ty),+ $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](#structfield.", stringify!($field), ").")]
                pub fn $field(mut self, $field: $t) -> Self {
                    self.$field = $field;
                    self
                }
            )+
        }
    };
}
pub(crate) use setters;

mod block;
#[cfg(feature = "capi")]
#[allow(unsafe_code)]
mod capi;
pub mod chain;
pub mod check;
mod disk;
mod error;
pub mod format;
pub mod io;
pub(crate) mod log;
#[cfg(feature = "std")]
pub mod nbd;
pub mod ops;
pub mod vhd;

#[cfg(feature = "std")]
pub use block::{flush_concurrently, write_concurrently};
pub use block::{BlockDevice, RawDevice};
pub use chain::open::OpenOptions;
#[cfg(feature = "std")]
pub use chain::AnyDisk;
pub use chain::ImageFormat;
pub use disk::{
    CompactReport, CreateOptions, Disk, DiskInfo, DiskType, Extent, GuidSource, IoExtent, IoTarget, MapEntry,
    Reservation,
};
pub use error::{Error, ErrorKind, IoError, IoErrorKind, Result};
#[cfg(feature = "std")]
pub use io::FileStorage;
pub use io::{MemStorage, Storage};
/// A GUID: the `uuid` crate's `Uuid`, which the format stores in Microsoft's
/// mixed-endian layout (see [`format::guid`]).
pub use uuid::Uuid as Guid;
