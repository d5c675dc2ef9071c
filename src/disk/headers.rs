//! The header pair: the current header and which of the two slots holds it.
//!
//! A header is never changed in place. [`Headers::write`] writes the new one
//! to the other slot with a higher sequence number, flushes, and repeats, so
//! both slots end up holding it and a torn write of either leaves the other
//! (MS-VHDX 2.2.2). The current header is what the file holds: after each
//! slot written, not only after both.

use core::ops::Deref;

use crate::error::{Error, IoContext, Result};
use crate::format::header::{HeaderInfo, HEADER_OFFSETS};
use crate::io::Storage;

/// The current header and its slot (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) struct Headers {
    current: HeaderInfo,
    slot: usize,
}

impl Headers {
    /// The pair as read: `current` in slot `slot` (0 or 1).
    pub(crate) fn new(current: HeaderInfo, slot: usize) -> Headers {
        debug_assert!(slot < 2);
        Headers { current, slot }
    }

    /// The slot holding the current header.
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// Writes `next` to both slots, the non-current one first, each with a
    /// sequence number one higher than the last and each flushed; `next`
    /// (with its final sequence number) becomes current.
    pub(crate) fn write(&mut self, storage: &mut dyn Storage, mut next: HeaderInfo) -> Result<()> {
        let mut sequence = self.current.sequence_number;
        for _ in 0..2 {
            sequence = sequence
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("header", HEADER_OFFSETS[self.slot], "sequence number exhausted"))?;
            next.sequence_number = sequence;
            let slot = 1 - self.slot;
            let at = HEADER_OFFSETS[slot];
            storage.write_all_at(&next.to_bytes(), at).during("writing a header", at)?;
            storage.flush().during("flushing a header", at)?;
            self.current = next.clone();
            self.slot = slot;
        }
        Ok(())
    }

    /// Writes the current header changed by `f` (see [`Headers::write`]).
    pub(crate) fn update(&mut self, storage: &mut dyn Storage, f: impl FnOnce(&mut HeaderInfo)) -> Result<()> {
        let mut next = self.current.clone();
        f(&mut next);
        self.write(storage, next)
    }
}

impl Deref for Headers {
    type Target = HeaderInfo;

    fn deref(&self) -> &HeaderInfo {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::guid::Guid;
    use crate::format::header::{select_current, HEADER_SIZE};
    use crate::io::MemStorage;

    fn read_slots(storage: &MemStorage) -> [Result<HeaderInfo>; 2] {
        HEADER_OFFSETS.map(|at| {
            let mut buf = alloc::vec![0u8; HEADER_SIZE];
            storage.read_exact_at(&mut buf, at).unwrap();
            HeaderInfo::parse(&buf, at)
        })
    }

    fn header(sequence_number: u64) -> HeaderInfo {
        HeaderInfo {
            sequence_number,
            file_write_guid: Guid::from_u128(1),
            data_write_guid: Guid::from_u128(2),
            log_guid: Guid::nil(),
            log_version: 0,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        }
    }

    #[test]
    fn both_slots_get_the_new_header_each_with_a_higher_sequence_number() {
        let mut storage = MemStorage::new();
        storage.set_len(1 << 20).unwrap();
        let mut headers = Headers::new(header(7), 1);
        headers.update(&mut storage, |h| h.data_write_guid = Guid::from_u128(9)).unwrap();
        let [a, b] = read_slots(&storage).map(Result::unwrap);
        // Slot 0 (the other one) first with 8, then slot 1 with 9.
        assert_eq!((a.sequence_number, b.sequence_number), (8, 9));
        assert_eq!((a.data_write_guid, b.data_write_guid), (Guid::from_u128(9), Guid::from_u128(9)));
        assert_eq!((headers.slot(), headers.sequence_number), (1, 9));
        let (slot, current) = select_current(read_slots(&storage)).unwrap();
        assert_eq!((slot, current.sequence_number), (1, 9), "a reader picks what the pair calls current");
    }

    #[test]
    fn an_exhausted_sequence_number_writes_nothing() {
        let mut storage = MemStorage::new();
        storage.set_len(1 << 20).unwrap();
        let mut headers = Headers::new(header(u64::MAX), 0);
        assert!(headers.update(&mut storage, |_| {}).is_err());
        assert!(read_slots(&storage).iter().all(|h| h.is_err()), "no slot was written");
        assert_eq!((headers.slot(), headers.sequence_number), (0, u64::MAX));
    }
}
