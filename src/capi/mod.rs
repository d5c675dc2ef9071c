//! The C ABI: `extern "C"` functions, `#[repr(C)]` structs and status
//! constants, from which `build.rs` generates `include/vhdx.h` (cbindgen
//! copies these doc comments into the header, so they are written for C
//! programmers).
//!
//! Invariants this module keeps:
//! - It is the only place with `unsafe` code; every unsafe block carries a
//!   `SAFETY:` comment saying which documented caller promise makes it sound.
//! - Every exported function runs its body inside [`error::boundary`]
//!   (through the `ffi!` macro): a Rust panic never unwinds into C; it is
//!   reported as `VHDX_ERR_PANIC`.
//! - A NULL pointer where one is not allowed is `VHDX_ERR_INVALID_ARGUMENT`
//!   with a message, never a crash; every failure sets the thread's last
//!   error message, naming the file where there is one.
//! - A `VhdxDisk` is a [`crate::Disk`] behind a reader-writer lock, so the
//!   handle is safe to share between threads as the header documents; the
//!   functions that only read take `const VhdxDisk *` and the shared lock.
//! - Raw pointers are checked in `ptr.rs` (handles, buffers, arrays, and
//!   the caller's structs, whose leading `struct_size` is checked there
//!   and only there) and `strings.rs` (C strings).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod error;
mod disk;
mod maintain;
mod open;
mod ops;
mod ptr;
mod resolve;
mod resolver;
mod siblings;
mod storage;
mod strings;
