//! The command-line tool as users and scripts meet it, in one test binary
//! (one link instead of three): exit status, `--json` and the bytes every
//! view presents (`cli`), the messages for common mistakes
//! (`cli_messages`), where a differencing disk's parent is found
//! (`parent_paths`). The runner they share is `common::cli`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../tool/mod.rs"]
mod tool;

mod cli;
mod cli_messages;
mod parent_paths;
mod vhd;
