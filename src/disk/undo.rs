//! Taking back a change that failed partway.
//!
//! A write or a discard changes metadata in memory as it goes — BAT entries
//! of new blocks, sector bitmap bits, the file's length — and writes data
//! between those changes. When one of its storage operations fails (the
//! filesystem full, an I/O error), [`Disk::undoable`] restores every one of
//! them: no BAT entry points at space whose data was never written (in a
//! differencing disk that would hide the parent's data behind zeros), no
//! bitmap bit claims a sector that was not written, and the space taken for
//! new blocks is given back (the file is cut to its length before the call).
//! What remains of the failed call is at most the bytes it wrote over data
//! that was already there, as with a failed write to any file.
//!
//! Recording costs a few stores per call, and one entry per metadata change:
//! nothing on the common path of a write into a block already allocated.

use alloc::vec::Vec;

use super::space::Space;
use super::{Disk, Image};
use crate::error::Result;
use crate::format::bat::BatEntry;

/// What a failed change must take back; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Undo {
    /// Whether a change is being recorded.
    active: bool,
    /// The file's space when the change began.
    space: Space,
    /// BAT entries changed: index, previous entry, whether the change made
    /// its page dirty.
    bat: Vec<(usize, BatEntry, bool)>,
    /// Bytes of uncommitted metadata pages changed: file offset, previous value.
    bytes: Vec<(u64, u8)>,
    /// Metadata pages this change loaded for changing.
    new_pages: Vec<u64>,
}

impl Undo {
    /// Records that BAT entry `index`, which held `old`, changes.
    pub(crate) fn bat_entry(&mut self, index: usize, old: BatEntry, page_newly_dirty: bool) {
        if self.active {
            self.bat.push((index, old, page_newly_dirty));
        }
    }

    /// Records that the metadata byte at file offset `at`, which held `old`, changes.
    pub(crate) fn byte(&mut self, at: u64, old: u8) {
        if self.active {
            self.bytes.push((at, old));
        }
    }

    /// Records that the metadata page at `page_at` was loaded to be changed.
    pub(crate) fn page_loaded(&mut self, page_at: u64) {
        if self.active {
            self.new_pages.push(page_at);
        }
    }

    fn clear(&mut self) {
        self.active = false;
        self.bat.clear();
        self.bytes.clear();
        self.new_pages.clear();
    }
}

impl Image {
    /// Starts collecting what a change takes back, unless a change is
    /// already collecting (then this one joins it). Returns whether this
    /// call started it, and so must end it ([`Image::end_undoable`]).
    fn begin_undoable(&mut self) -> bool {
        if self.undo.active {
            return false;
        }
        // Bitmap pages changed through `&self` become the state a failure
        // returns to.
        self.absorb_shared_bits();
        self.undo.active = true;
        self.undo.space = self.space.get();
        true
    }

    /// Ends the change [`Image::begin_undoable`] started: takes back what it
    /// did when it `failed`, and forgets it either way.
    fn end_undoable(&mut self, failed: bool) {
        if failed {
            self.roll_back();
        }
        self.undo.clear();
    }

    fn roll_back(&mut self) {
        let u = core::mem::take(&mut self.undo);
        for &(at, old) in u.bytes.iter().rev() {
            let page_at = at & !4095;
            if let Some(page) = self.dirty_pages.get_mut(&page_at) {
                page[(at - page_at) as usize] = old;
            }
        }
        for page_at in &u.new_pages {
            self.dirty_pages.remove(page_at);
        }
        for &(index, old, newly_dirty) in u.bat.iter().rev() {
            self.table.restore(index, old, newly_dirty);
        }
        self.space.take_back(&mut *self.storage, u.space);
        self.undo = u;
    }
}

impl Disk {
    /// Runs `f`; if it fails, takes back the metadata changes it made to
    /// this disk's image and the space it took (see the [module
    /// docs](self)). A call inside another joins it: the outermost one
    /// undoes everything. Parents are read-only, so nothing of theirs needs
    /// taking back.
    pub(crate) fn undoable<T>(&mut self, f: impl FnOnce(&mut Disk) -> Result<T>) -> Result<T> {
        let outermost = self.image.begin_undoable();
        let result = f(self);
        if outermost {
            self.image.end_undoable(result.is_err());
        }
        result
    }
}
