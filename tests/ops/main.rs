//! Operations on one image, in one test binary (one link instead of
//! three; `.ci/mutants ops` runs it for every mutant): resize, discard,
//! compact and convert against oracles the library does not control
//! (`ops`), atomic convert (`convert`), resize and compact of images that
//! have children (`resize`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod convert;
mod ops;
mod resize;
