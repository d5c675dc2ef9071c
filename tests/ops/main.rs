//! Operations on one image, in one test binary (one link instead of
//! three; `.ci/mutants ops` runs it for every mutant): resize, discard,
//! compact and convert against oracles the library does not control
//! (`ops`), atomic convert (`convert`), resize and compact of images that
//! have children (`resize`), compaction by the guest filesystems
//! (`fs_compact`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod convert;
mod fs_compact;
mod ops;
mod resize;
