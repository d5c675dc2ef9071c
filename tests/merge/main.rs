//! Merges, in one test binary (one link instead of three): a child into
//! its parent (`merge`), merges interrupted on real files (`merge_interrupted`),
//! several siblings into their parent (`siblings`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod merge;
mod merge_interrupted;
mod siblings;
