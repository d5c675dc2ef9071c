//! Writing metadata through the log.
//!
//! Each commit is written as one or more entries, each its own sequence
//! (`Tail` = itself), appended after the previous entry in the ring. An entry
//! is at most a quarter of the log and never wraps, so the previous entry —
//! already applied in place, but the only valid sequence should the new one be
//! torn — is never overwritten by the next. Per entry: write it, flush, write
//! its pages in place, flush.

use alloc::vec::Vec;

use crate::error::{Error, IoContext, Result};
use crate::format::guid::Guid;
use crate::format::log::{build_entry, descriptor_sectors, LOG_SECTOR_SIZE};
use crate::io::Storage;

/// The log's write position and sequence numbers for one session.
#[derive(Debug, Clone)]
pub struct LogWriter {
    log_offset: u64,
    log_length: u64,
    next_sequence: u64,
    position: u64,
    entries_written: u64,
}

impl LogWriter {
    /// A writer for the log at `log_offset` of `log_length` bytes, starting a
    /// fresh sequence (the caller has set a fresh LogGuid).
    pub fn new(log_offset: u64, log_length: u64) -> Self {
        LogWriter { log_offset, log_length, next_sequence: 1, position: 0, entries_written: 0 }
    }

    /// The most 4 KiB pages one entry may carry.
    pub fn max_pages_per_entry(&self) -> usize {
        let budget = (self.log_length / 4) as usize / LOG_SECTOR_SIZE;
        let mut n = budget.saturating_sub(1);
        while n > 0 && descriptor_sectors(n) + n > budget {
            n -= 1;
        }
        n
    }

    /// Log entries written so far.
    pub fn entries_written(&self) -> u64 {
        self.entries_written
    }

    /// Commits `pages` (`(file_offset, 4 KiB)`, in any order): through the
    /// log, then in place, durably. `flushed_file_offset` is the file size
    /// already durable, `last_file_offset` the size all structures fit in.
    /// `before_apply` runs after each entry is durable and before its pages
    /// are written in place: the moment to make the header name `log_guid`
    /// (earlier, a crash would leave a header naming a log with no valid entry,
    /// which a reader must refuse).
    pub fn commit(
        &mut self,
        storage: &mut dyn Storage,
        log_guid: &Guid,
        pages: &[(u64, Vec<u8>)],
        flushed_file_offset: u64,
        last_file_offset: u64,
        before_apply: &mut dyn FnMut(&mut dyn Storage) -> Result<()>,
    ) -> Result<()> {
        let per_entry = self.max_pages_per_entry();
        if per_entry == 0 {
            return Err(Error::unsupported("log", self.log_offset, "the log is too small to hold an entry"));
        }
        for group in pages.chunks(per_entry) {
            let refs: Vec<(u64, &[u8])> = group.iter().map(|(o, p)| (*o, p.as_slice())).collect();
            let entry_len = ((descriptor_sectors(refs.len()) + refs.len()) * LOG_SECTOR_SIZE) as u64;
            if self.position + entry_len > self.log_length {
                self.position = 0;
            }
            let bytes = build_entry(
                &refs,
                self.next_sequence,
                self.position as u32,
                log_guid,
                flushed_file_offset,
                last_file_offset,
            );
            let at = self.log_offset + self.position;
            storage.write_all_at(&bytes, at).during("writing a log entry", at)?;
            storage.flush().during("flushing the log", at)?;
            before_apply(storage)?;
            for (file_offset, page) in group {
                storage.write_all_at(page, *file_offset).during("applying a log entry", *file_offset)?;
            }
            storage.flush().during("flushing applied metadata", at)?;
            self.position += entry_len;
            self.next_sequence += 1;
            self.entries_written += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crc::crc32c;
    use crate::format::header::HeaderInfo;
    use crate::io::MemStorage;
    use crate::log::find_active_sequence;

    const LOG_AT: usize = 1 << 20;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Reads the entry at log offset `pos` of `file` by the spec's field
    /// table (MS-VHDX 2.3.1): checks its signature, checksum, sequence
    /// number and `Tail` (its own position), and that it carries `pages`
    /// (data descriptors and data sectors). Returns its length.
    fn check_entry(file: &[u8], pos: usize, seq: u64, pages: &[(u64, Vec<u8>)]) -> usize {
        let head = &file[LOG_AT + pos..];
        assert_eq!(&head[..4], b"loge", "entry at log offset {pos}");
        let len = u32_at(head, 8) as usize;
        let mut copy = head[..len].to_vec();
        copy[4..8].fill(0);
        assert_eq!(u32_at(head, 4), crc32c(&copy), "checksum of the entry at {pos}");
        assert_eq!(u32_at(head, 12) as usize, pos, "tail of the entry at {pos}");
        assert_eq!(u64_at(head, 16), seq);
        assert_eq!(u32_at(head, 24) as usize, pages.len());
        let desc_sectors = (64 + 32 * pages.len()).div_ceil(4096);
        assert_eq!(len, (desc_sectors + pages.len()) * 4096);
        for (i, (offset, page)) in pages.iter().enumerate() {
            let d = &head[64 + 32 * i..96 + 32 * i];
            assert_eq!(&d[..4], b"desc");
            assert_eq!((&d[4..8], &d[8..16]), (&page[4092..], &page[..8]));
            assert_eq!((u64_at(d, 16), u64_at(d, 24)), (*offset, seq));
            let s = &head[(desc_sectors + i) * 4096..(desc_sectors + i + 1) * 4096];
            assert_eq!(&s[..4], b"data");
            assert_eq!(&s[8..4092], &page[8..4092]);
        }
        len
    }

    #[test]
    fn commits_are_found_again_and_never_overwrite_the_previous_entry() {
        let g = Guid::from_u128(99);
        let mut storage = MemStorage::from_vec(alloc::vec![0u8; 8 << 20]);
        let mut w = LogWriter::new(1 << 20, 1 << 20);
        assert_eq!(w.max_pages_per_entry(), 63);
        let header = HeaderInfo {
            sequence_number: 1,
            file_write_guid: Guid::nil(),
            data_write_guid: Guid::nil(),
            log_guid: g,
            log_version: 0,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        };
        let mut previous: Option<(usize, Vec<u8>)> = None;
        let mut pos = 0usize;
        let mut wrapped = 0;
        for round in 0..80u64 {
            // Entries of 2 to 8 sectors: 80 of them wrap the 256-sector log.
            let pages: Vec<(u64, Vec<u8>)> = (0..(round % 7 + 1))
                .map(|i| ((3 << 20) + i * 4096, (0..4096u32).map(|b| (b as u8) ^ round as u8).collect()))
                .collect();
            w.commit(&mut storage, &g, &pages, 8 << 20, 8 << 20, &mut |_| Ok(())).unwrap();
            let file = storage.as_slice();
            // The new entry follows the previous one, or starts the log again
            // when it would not fit before the end (an entry never wraps).
            let len = (1 + pages.len()) * 4096;
            if pos + len > 1 << 20 {
                pos = 0;
                wrapped += 1;
            }
            let got = check_entry(file, pos, round + 1, &pages);
            // The previous entry is still whole, byte for byte.
            if let Some((prev_pos, bytes)) = &previous {
                assert!(
                    file[LOG_AT + prev_pos..LOG_AT + prev_pos + bytes.len()] == bytes[..],
                    "round {round}: the entry at log offset {prev_pos} was overwritten"
                );
                assert!(pos >= prev_pos + bytes.len() || pos + got <= *prev_pos);
            }
            previous = Some((pos, file[LOG_AT + pos..LOG_AT + pos + got].to_vec()));
            let seq = find_active_sequence(&storage, &header, 8 << 20).unwrap().unwrap();
            assert_eq!(seq.head().sequence_number, round + 1);
            assert_eq!(seq.entries.len(), 1);
            for (offset, page) in &pages {
                let mut in_place = alloc::vec![0u8; 4096];
                storage.read_exact_at(&mut in_place, *offset).unwrap();
                assert!(in_place == *page, "round {round}: page at {offset:#x} not applied");
            }
            pos += got;
            assert_eq!(w.entries_written(), round + 1);
        }
        assert!(wrapped >= 1, "the test must wrap the log");
    }

    #[test]
    fn pages_per_entry_fit_a_quarter_of_the_log() {
        // A quarter of the log in 4 KiB sectors, minus the descriptor sectors:
        // 1 MiB: 64 sectors, 1 + 63; 4 MiB: 256 sectors, 2 + 254;
        // 64 KiB: 4 sectors, 1 + 3; 16 KiB: 1 sector, no room for data; 8 KiB, 0: none.
        for (log, pages) in [(1u64 << 20, 63), (4 << 20, 254), (64 << 10, 3), (16 << 10, 0), (8 << 10, 0), (0, 0)] {
            assert_eq!(LogWriter::new(1 << 20, log).max_pages_per_entry(), pages, "log of {log}");
        }
        let mut storage = MemStorage::from_vec(alloc::vec![0u8; 2 << 20]);
        let page = alloc::vec![(0x30_0000u64, alloc::vec![1u8; 4096])];
        let err =
            LogWriter::new(1 << 20, 16 << 10).commit(&mut storage, &Guid::from_u128(1), &page, 0, 0, &mut |_| Ok(()));
        assert!(matches!(err, Err(Error::Unsupported { .. })));
        assert!(storage.as_slice().iter().all(|&b| b == 0), "a refused commit wrote something");
    }

    #[test]
    fn a_large_commit_is_split_and_before_apply_sees_the_entry_first() {
        let g = Guid::from_u128(7);
        let mut storage = MemStorage::from_vec(alloc::vec![0u8; 4 << 20]);
        let mut w = LogWriter::new(1 << 20, 1 << 20);
        let pages: Vec<(u64, Vec<u8>)> =
            (0..100u64).map(|i| ((2 << 20) + i * 4096, alloc::vec![i as u8 + 1; 4096])).collect();
        let mut calls = Vec::new();
        w.commit(&mut storage, &g, &pages, 4 << 20, 4 << 20, &mut |s: &mut dyn Storage| {
            // The entry is in the log; its pages are not in place yet.
            let mut sig = [0u8; 4];
            let at = if calls.is_empty() { 0 } else { 64 * 4096 };
            s.read_exact_at(&mut sig, (1 << 20) + at).unwrap();
            let mut first = [0u8; 1];
            let page = if calls.is_empty() { 0 } else { 63 };
            s.read_exact_at(&mut first, (2 << 20) + page * 4096).unwrap();
            calls.push((sig, first[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, [(*b"loge", 0), (*b"loge", 0)]);
        assert_eq!(w.entries_written(), 2);
        let file = storage.as_slice();
        let first = check_entry(file, 0, 1, &pages[..63]);
        assert_eq!(first, 64 * 4096);
        check_entry(file, first, 2, &pages[63..]);
        assert!(file[2 << 20..(2 << 20) + 100 * 4096]
            .chunks(4096)
            .enumerate()
            .all(|(i, p)| p.iter().all(|&b| b == i as u8 + 1)));
    }

    #[test]
    fn an_entry_that_ends_exactly_at_the_end_of_the_log_stays_there() {
        // 1-page entries are 2 sectors: 128 of them fill the 1 MiB log
        // exactly; the 128th sits at 0xFE000, the 129th starts over at 0.
        let g = Guid::from_u128(5);
        let mut storage = MemStorage::from_vec(alloc::vec![0u8; 4 << 20]);
        let mut w = LogWriter::new(1 << 20, 1 << 20);
        for k in 0..129u64 {
            let page = alloc::vec![((2u64 << 20) + 4096 * (k % 4), alloc::vec![k as u8; 4096])];
            w.commit(&mut storage, &g, &page, 4 << 20, 4 << 20, &mut |_| Ok(())).unwrap();
            let pos = (k as usize % 128) * 8192;
            check_entry(storage.as_slice(), pos, k + 1, &page);
        }
    }
}
