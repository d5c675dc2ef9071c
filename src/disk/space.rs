//! The file's space as a session knows it: how long the file is, and where
//! the next new block may go (past every structure and block, so a new
//! block never lands on anything in use).

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

    /// The file now ends at `end`, and new blocks go there.
    pub(crate) fn end_at(&mut self, end: u64) {
        *self = Space { len: end, floor: end };
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
