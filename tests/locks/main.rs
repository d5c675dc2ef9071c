//! Image locks and special files, in one test binary (one link instead of
//! three): one process's handles (`locks`), processes through the
//! command-line tool (`locks_cli`), and QEMU's own tools (`locks_qemu`);
//! `support` holds what they share.

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod locks;
mod locks_cli;
// QEMU is a Linux oracle here: on Windows the share modes are checked by
// `locks` and `locks_cli` alone.
#[cfg(unix)]
mod locks_qemu;
mod support;
