//! The log: replaying what a crashed writer left, and writing metadata
//! updates so that they are atomic.
//!
//! Invariant kept by this module: once an image is open for writing, metadata
//! (BAT, sector bitmaps, metadata region, region tables) reaches its place in
//! the file only after the same bytes are durable in a valid log entry, and a
//! log entry is overwritten only after its updates are durable in place. A
//! crash at any point therefore leaves either the old or the new metadata
//! after replay, never a mixture within one entry.

mod replay;
#[cfg(all(test, feature = "std"))]
mod spec_tests;
mod writer;

pub use replay::{find_active_sequence, replay_in_place, ReplayOverlay};
pub use writer::LogWriter;
