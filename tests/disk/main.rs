//! One `Disk`, in one test binary (one link instead of three; `.ci/mutants
//! disk` runs it for every mutant): property tests against an independent
//! model (`model`, with `model_support`), accessors and lifetime against
//! the file's own bytes (`disk_rules`), sharing between threads (`threads`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod disk_rules;
mod model;
mod model_support;
mod resolve;
mod threads;
mod vhd_model;
