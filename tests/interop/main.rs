//! Other implementations' images and tools, in one test binary (one link
//! instead of two): every Windows-made fixture against its published facts
//! (`fixtures`), interoperability with QEMU both ways (`qemu_interop`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod fixtures;
// QEMU both ways needs QEMU, a Linux tool here: not on Windows.
#[cfg(unix)]
mod qemu_interop;
mod vhd;
