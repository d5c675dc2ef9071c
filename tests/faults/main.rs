//! Durability and full filesystems, in one test binary (one link instead
//! of three): what the tool asks of the kernel, seen by strace
//! (`durability`), a full filesystem on fault-injecting storage (`enospc`)
//! and on a real tmpfs (`full_filesystem`).

// Linux tools are this binary's oracles (strace, tmpfs and Linux space accounting): on Windows it is empty.
#![cfg(unix)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod durability;
mod enospc;
mod full_filesystem;
