//! The NBD server, in one test binary (one link instead of three): QEMU as
//! the client (`nbd`), the protocol byte by byte and hostile clients
//! (`nbd_protocol`), clients that stall (`nbd_stalls`); `support` holds
//! the test client and the running server they share.

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

// QEMU is the client of these, a Linux tool here: not on Windows, where
// the protocol tests (our own client) run alone.
#[cfg(unix)]
mod nbd;
#[cfg(unix)]
mod nbd_device;
mod nbd_protocol;
#[cfg(unix)]
mod nbd_stalls;
mod support;
