//! Finding the active sequence of a log and replaying it.
//!
//! The search walks the ring once: from each candidate start it follows valid
//! entries whose sequence numbers rise by one; a chain counts only if its
//! head's `Tail` is the start of one of its entries, and the chain with the
//! highest head sequence number wins. After a chain the walk continues past
//! it, after an invalid position 4 KiB further, so the work is linear in the
//! log's size whatever the log holds.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

use crate::error::{io_unsupported, Error, IoContext, IoError, Result};
use crate::format::guid::Guid;
use crate::format::header::HeaderInfo;
use crate::format::log::{parse_entry, peek_entry_length, LogEntry, LogOp, LOG_SECTOR_SIZE};
use crate::format::region::REGION_TABLE_OFFSETS;
use crate::format::MAX_VIRTUAL_SIZE;
use crate::io::Storage;

/// The largest log this implementation reads (Windows writes 1 MiB logs).
pub const MAX_LOG_LENGTH: u64 = 1 << 30;

/// The entries to replay, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSequence {
    /// The entries from the tail to the head.
    pub entries: Vec<LogEntry>,
    /// Ring offset just past the head entry.
    pub head_end: u64,
}

impl ActiveSequence {
    /// The newest entry.
    pub fn head(&self) -> &LogEntry {
        self.entries.last().expect("an active sequence is never empty")
    }

    /// Every update in replay order.
    pub fn ops(&self) -> impl Iterator<Item = &LogOp> {
        self.entries.iter().flat_map(|e| e.ops.iter())
    }
}

fn ring_copy(log: &[u8], start: usize, len: usize) -> Vec<u8> {
    let n = log.len();
    let mut out = Vec::with_capacity(len);
    let first = len.min(n - start);
    out.extend_from_slice(&log[start..start + first]);
    out.extend_from_slice(&log[..len - first]);
    out
}

/// Reads the log of `header` from `storage` and finds its active sequence.
/// Returns `None` when the header says the log is empty (LogGuid zero).
pub fn find_active_sequence(
    storage: &dyn Storage,
    header: &HeaderInfo,
    file_len: u64,
) -> Result<Option<ActiveSequence>> {
    const S: &str = "log";
    if header.log_guid.is_nil() {
        return Ok(None);
    }
    let log_len = header.log_length as u64;
    if log_len == 0 {
        return Err(Error::corrupt(S, header.log_offset, "the header names a log GUID but the log is empty"));
    }
    if log_len > MAX_LOG_LENGTH {
        return Err(Error::unsupported(S, header.log_offset, format!("log of {log_len} bytes (at most 1 GiB)")));
    }
    if header.log_offset + log_len > file_len {
        return Err(Error::corrupt(
            S,
            header.log_offset,
            format!("log of {log_len} bytes runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let mut log = alloc::vec![0u8; log_len as usize];
    storage.read_exact_at(&mut log, header.log_offset).during("reading the log", header.log_offset)?;
    let seq = search(&log, &header.log_guid);
    match seq {
        Some(seq) => {
            let head = seq.head();
            if file_len < head.flushed_file_offset {
                return Err(Error::corrupt(
                    S,
                    header.log_offset,
                    format!(
                        "the file is {file_len} bytes but the log says {} bytes were durable: the file was truncated",
                        head.flushed_file_offset
                    ),
                ));
            }
            check_targets(&seq, header, file_len)?;
            Ok(Some(seq))
        }
        None => Err(Error::corrupt(
            S,
            header.log_offset,
            "the header names a log GUID but the log holds no valid entry sequence",
        )),
    }
}

/// The pure search over the log's bytes.
pub(crate) fn search(log: &[u8], log_guid: &Guid) -> Option<ActiveSequence> {
    let n = log.len();
    if n == 0 || n % LOG_SECTOR_SIZE != 0 {
        return None;
    }
    let mut best: Option<ActiveSequence> = None;
    let mut start = 0usize;
    // Entries claiming long lengths at every 4 KiB could make the scan
    // quadratic; a budget of checksummed bytes keeps it linear.
    let mut budget: u64 = 16 * n as u64 + (64 << 20);
    while start < n {
        let mut chain: Vec<(usize, LogEntry)> = Vec::new();
        let mut pos = start;
        let mut consumed = 0usize;
        while consumed < n {
            let first = ring_copy(log, pos, LOG_SECTOR_SIZE);
            let Ok(len) = peek_entry_length(&first, n as u64, log_guid) else {
                break;
            };
            let len = len as usize;
            if consumed + len > n || budget < len as u64 {
                break;
            }
            budget -= len as u64;
            let Ok(entry) = parse_entry(&ring_copy(log, pos, len), n as u64, log_guid) else {
                break;
            };
            if let Some((_, last)) = chain.last() {
                if entry.sequence_number != last.sequence_number.wrapping_add(1) {
                    break;
                }
            }
            chain.push((pos, entry));
            consumed += len;
            pos = (pos + len) % n;
        }
        if chain.is_empty() {
            start += LOG_SECTOR_SIZE;
            continue;
        }
        let (_, head) = chain.last().expect("non-empty");
        let head_seq = head.sequence_number;
        let tail = head.tail as usize;
        if let Some(tail_index) = chain.iter().position(|(p, _)| *p == tail) {
            // Strictly larger: on a tie, which only a hostile log can hold
            // with two different sequences, the first in ring order stays.
            if best.as_ref().is_none_or(|b| head_seq > b.head().sequence_number) {
                let head_end = pos as u64;
                let entries = chain.drain(tail_index..).map(|(_, e)| e).collect();
                best = Some(ActiveSequence { entries, head_end });
            }
        }
        start += consumed;
    }
    best
}

/// Refuses updates that would land in the file identifier or headers, in the
/// log itself, or past any plausible end of file.
fn check_targets(seq: &ActiveSequence, header: &HeaderInfo, file_len: u64) -> Result<()> {
    let limit = file_len.max(seq.head().last_file_offset);
    if limit > MAX_VIRTUAL_SIZE * 2 {
        return Err(Error::corrupt(
            "log entry",
            header.log_offset,
            format!("last file offset {limit:#x} is implausibly large"),
        ));
    }
    let log_start = header.log_offset;
    let log_end = header.log_offset + header.log_length as u64;
    for op in seq.ops() {
        let (at, len) = match op {
            LogOp::Data { file_offset, bytes } => (*file_offset, bytes.len() as u64),
            LogOp::Zero { file_offset, length } => (*file_offset, *length),
        };
        let end = at.saturating_add(len);
        if at < REGION_TABLE_OFFSETS[0] || end > limit || (at < log_end && log_start < end) {
            return Err(Error::corrupt(
                "log descriptor",
                header.log_offset,
                format!("update of {len} bytes at {at:#x} targets the header area, the log itself, or past the end of the file"),
            ));
        }
    }
    Ok(())
}

/// Applies the sequence to the file and makes it durable; the file grows to
/// the head's LastFileOffset. The caller then clears the header's LogGuid.
///
/// Zero descriptors are written only where the file already has bytes: past
/// the end, growing the file yields zeros anyway. A hostile zero length can
/// therefore cost at most the file's own size, never terabytes of writes.
pub fn replay_in_place(storage: &mut dyn Storage, seq: &ActiveSequence) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = alloc::vec![0u8; CHUNK];
    let mut len = storage.len().during("sizing the file", 0)?;
    let mut want = seq.head().last_file_offset;
    for op in seq.ops() {
        match op {
            LogOp::Data { file_offset, bytes } => {
                storage.write_all_at(bytes, *file_offset).during("replaying the log", *file_offset)?;
                len = len.max(file_offset + bytes.len() as u64);
            }
            LogOp::Zero { file_offset, length } => {
                let end = file_offset + length;
                want = want.max(end);
                let mut at = *file_offset;
                while at < end.min(len) {
                    let n = (end.min(len) - at).min(CHUNK as u64) as usize;
                    storage.write_all_at(&zeros[..n], at).during("replaying the log", at)?;
                    at += n as u64;
                }
            }
        }
    }
    if len < want {
        storage.set_len(want).during("extending the file", want)?;
    }
    storage.flush().during("flushing the replayed log", 0)
}

/// A read-only view of a file with a log replayed in memory: the file is not
/// touched, reads see what they would after an in-place replay.
pub struct ReplayOverlay {
    base: Box<dyn Storage>,
    base_len: u64,
    len: u64,
    ops: Vec<LogOp>,
}

impl ReplayOverlay {
    /// Layers `seq` over `base`.
    pub fn new(base: Box<dyn Storage>, seq: ActiveSequence) -> Result<Self> {
        let base_len = base.len().during("sizing the file", 0)?;
        let len = base_len.max(seq.head().last_file_offset);
        let ops = seq.entries.into_iter().flat_map(|e| e.ops).collect();
        Ok(ReplayOverlay { base, base_len, len, ops })
    }
}

impl Storage for ReplayOverlay {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(crate::error::io_unexpected_eof)?;
        if end > self.len {
            return Err(crate::error::io_unexpected_eof());
        }
        let from_base = self.base_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        // A read wholly past the base file's end asks the base for nothing:
        // an empty read at such an offset is an error for some storages.
        if from_base > 0 {
            self.base.read_exact_at(&mut buf[..from_base], offset)?;
        }
        buf[from_base..].fill(0);
        for op in &self.ops {
            let (at, len) = match op {
                LogOp::Data { file_offset, bytes } => (*file_offset, bytes.len() as u64),
                LogOp::Zero { file_offset, length } => (*file_offset, *length),
            };
            let lo = at.max(offset);
            let hi = (at + len).min(end);
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match op {
                LogOp::Data { bytes, .. } => dst.copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]),
                LogOp::Zero { .. } => dst.fill(0),
            }
        }
        Ok(())
    }

    fn write_all_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), IoError> {
        Err(io_unsupported("the log was replayed in memory; the file is read-only"))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.len)
    }

    fn set_len(&mut self, _len: u64) -> Result<(), IoError> {
        Err(io_unsupported("the log was replayed in memory; the file is read-only"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::log::build_entry;

    fn put(log: &mut [u8], at: usize, bytes: &[u8]) {
        let n = log.len();
        for (i, b) in bytes.iter().enumerate() {
            log[(at + i) % n] = *b;
        }
    }

    #[test]
    fn finds_highest_valid_chain_and_honours_tail() {
        let g = Guid::from_u128(42);
        let page = alloc::vec![7u8; 4096];
        let pages = [(0x30_0000u64, &page[..])];
        let mut log = alloc::vec![0u8; 1 << 20];
        // Chain A: seq 5 at 0 (tail 0), seq 6 at 8K (tail 0).
        put(&mut log, 0, &build_entry(&pages, 5, 0, &g, 0, 0));
        put(&mut log, 8192, &build_entry(&pages, 6, 0, &g, 0, 0));
        // A newer entry whose tail points outside its chain: invalid.
        put(&mut log, 65536, &build_entry(&pages, 9, 4096, &g, 0, 0));
        let seq = search(&log, &g).unwrap();
        assert_eq!(seq.entries.iter().map(|e| e.sequence_number).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(seq.head_end, 16384);
        // A newer self-tailed entry wins.
        put(&mut log, 65536, &build_entry(&pages, 9, 65536, &g, 0, 0));
        assert_eq!(search(&log, &g).unwrap().head().sequence_number, 9);
        // Another GUID: nothing.
        assert!(search(&log, &Guid::from_u128(1)).is_none());
    }

    #[test]
    fn entries_may_wrap_around_the_ring() {
        let g = Guid::from_u128(3);
        let page = alloc::vec![1u8; 4096];
        let pages = [(0x30_0000u64, &page[..]), (0x30_1000, &page[..])];
        let mut log = alloc::vec![0u8; 64 * 1024];
        let at = 64 * 1024 - 4096;
        put(&mut log, at, &build_entry(&pages, 11, at as u32, &g, 0, 0));
        let seq = search(&log, &g).unwrap();
        assert_eq!(seq.head().sequence_number, 11);
        assert_eq!(seq.head_end, 8192);
    }
}
