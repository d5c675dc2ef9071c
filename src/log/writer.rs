//! Writing metadata through the log.
//!
//! Each commit is written as one or more entries, each its own sequence
//! (`Tail` = itself), appended after the previous entry in the ring. An entry
//! is at most a quarter of the log and never wraps, so the previous entry —
//! already applied in place, but the only valid sequence should the new one be
//! torn — is never overwritten by the next. Per entry: write it, flush, write
//! its pages in place, flush.

use alloc::vec::Vec;

use crate::error::{Error, Result};
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
            storage.write_all_at(&bytes, at).map_err(|source| Error::Io {
                op: "writing a log entry",
                offset: at,
                source,
            })?;
            storage.flush().map_err(|source| Error::Io { op: "flushing the log", offset: at, source })?;
            before_apply(storage)?;
            for (file_offset, page) in group {
                storage.write_all_at(page, *file_offset).map_err(|source| Error::Io {
                    op: "applying a log entry",
                    offset: *file_offset,
                    source,
                })?;
            }
            storage.flush().map_err(|source| Error::Io { op: "flushing applied metadata", offset: at, source })?;
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
    use crate::format::header::HeaderInfo;
    use crate::io::MemStorage;
    use crate::log::find_active_sequence;

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
        for round in 0..40u64 {
            let pages: Vec<(u64, Vec<u8>)> =
                (0..(round % 7 + 1)).map(|i| ((3 << 20) + i * 4096, alloc::vec![round as u8; 4096])).collect();
            w.commit(&mut storage, &g, &pages, 8 << 20, 8 << 20, &mut |_| Ok(())).unwrap();
            let seq = find_active_sequence(&storage, &header, 8 << 20).unwrap().unwrap();
            assert_eq!(seq.head().sequence_number, round + 1);
            assert_eq!(seq.entries.len(), 1);
            let mut page = [0u8; 4096];
            storage.read_exact_at(&mut page, 3 << 20).unwrap();
            assert_eq!(page, [round as u8; 4096]);
        }
    }
}
