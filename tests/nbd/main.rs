//! The NBD server, in one test binary (one link instead of three): QEMU as
//! the client (`nbd`), the protocol byte by byte and hostile clients
//! (`nbd_protocol`), clients that stall (`nbd_stalls`); `support` holds
//! the test client and the running server they share.

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod nbd;
mod nbd_device;
mod nbd_protocol;
mod nbd_stalls;
mod support;
