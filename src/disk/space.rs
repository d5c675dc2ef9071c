//! The file's space as a session knows it: how long the file is, and where
//! the next new block may go (past every structure and block, so a new
//! block never lands on anything in use).
//!
//! An image keeps it in a [`SpaceCell`]: changed with `&mut` by the
//! exclusive paths, and grown through `&self` by writers that allocate
//! blocks while readers run ([`SpaceCell::grow_shared`], serialized by the
//! image's allocation lock). Readers load the length without a lock.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::error::{IoContext, Result};
use crate::io::Storage;

/// The file's length and the allocation floor (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Space {
    /// The file's length as this session knows it.
    pub(crate) len: u64,
    /// Where the next new block may go.
    pub(crate) floor: u64,
}

impl Space {
    /// Extends the file by `n` zero bytes at the floor; returns where they start.
    pub(crate) fn grow(&mut self, storage: &mut dyn Storage, n: u64) -> Result<u64> {
        let at = self.floor;
        let end = at + n;
        storage.set_len(end).during("growing the file for a new block", at)?;
        *self = Space { len: end, floor: end };
        Ok(at)
    }

    /// Gives back the space taken since `before`: the file is cut to its
    /// length then. Should the storage refuse, the new space stays past the
    /// floor, unused, so no later block is placed over what a failed change
    /// left in it.
    pub(crate) fn take_back(&mut self, storage: &mut dyn Storage, before: Space) {
        if self.len != before.len && storage.set_len(before.len).is_ok() {
            *self = before;
        }
    }
}

/// A [`Space`] that readers load, and shared allocators grow, without a
/// lock (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct SpaceCell {
    len: AtomicU64,
    floor: AtomicU64,
}

impl SpaceCell {
    pub(crate) fn new(space: Space) -> SpaceCell {
        SpaceCell { len: AtomicU64::new(space.len), floor: AtomicU64::new(space.floor) }
    }

    /// The space now.
    pub(crate) fn get(&self) -> Space {
        Space { len: self.len(), floor: self.floor.load(SeqCst) }
    }

    /// The file's length as the session knows it.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(SeqCst)
    }

    pub(crate) fn set(&mut self, space: Space) {
        *self.len.get_mut() = space.len;
        *self.floor.get_mut() = space.floor;
    }

    /// The file's length is now `len` (the floor stays).
    pub(crate) fn set_len(&mut self, len: u64) {
        *self.len.get_mut() = len;
    }

    /// New blocks go at `floor` or later.
    pub(crate) fn raise_floor(&mut self, floor: u64) {
        let f = self.floor.get_mut();
        *f = (*f).max(floor);
    }

    /// See [`Space::grow`].
    pub(crate) fn grow(&mut self, storage: &mut dyn Storage, n: u64) -> Result<u64> {
        let mut s = self.get();
        let at = s.grow(storage, n)?;
        self.set(s);
        Ok(at)
    }

    /// [`Space::grow`] through `&self`, for a writer holding the image's
    /// allocation lock (no other grower runs): the file is extended with
    /// [`Storage::set_len_shared`], then the length and floor published.
    /// `None`, having changed nothing, when the storage cannot.
    #[cfg(feature = "std")]
    pub(crate) fn grow_shared(&self, storage: &dyn Storage, n: u64) -> Option<Result<u64>> {
        let at = self.floor.load(SeqCst);
        let Some(end) = at.checked_add(n) else {
            return Some(Err(crate::error::Error::invalid("the file would pass the largest offset")));
        };
        if let Err(e) = storage.set_len_shared(end)?.during("growing the file for a new block", at) {
            return Some(Err(e));
        }
        // Length before floor: whoever sees the new floor's block sees a
        // file long enough for it.
        self.len.store(end, SeqCst);
        self.floor.store(end, SeqCst);
        Some(Ok(at))
    }

    /// The file now ends at `end`, and new blocks go there.
    pub(crate) fn end_at(&mut self, end: u64) {
        self.set(Space { len: end, floor: end });
    }

    /// See [`Space::take_back`].
    pub(crate) fn take_back(&mut self, storage: &mut dyn Storage, before: Space) {
        let mut s = self.get();
        s.take_back(storage, before);
        self.set(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;

    #[test]
    fn space_grows_at_the_floor_and_is_given_back_whole() {
        let mut storage = MemStorage::new();
        storage.set_len(5 << 20).unwrap();
        let mut space = Space { len: 5 << 20, floor: 6 << 20 };
        let before = space;
        assert_eq!(space.grow(&mut storage, 1 << 20).unwrap(), 6 << 20, "at the floor, not the file's end");
        assert_eq!(space, Space { len: 7 << 20, floor: 7 << 20 });
        assert_eq!(storage.len().unwrap(), 7 << 20);
        space.take_back(&mut storage, before);
        assert_eq!((space, storage.len().unwrap()), (before, 5 << 20));
        // Nothing taken: nothing to cut.
        space.take_back(&mut storage, before);
        assert_eq!(space, before);
    }
}
