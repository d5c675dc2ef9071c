//! The log's search and replay against oracles that are not this crate:
//! rings of entries laid out by hand from MS-VHDX 2.3
//! (`crate::format::spec_tests::build`), files modelled as plain byte
//! arrays, and the dirty logs of a Windows-made and a QEMU-made image with
//! the results SOURCES.md records (QEMU's `check -r all` replay).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::replay::{search, ActiveSequence};
use super::{find_active_sequence, replay_in_place, ReplayOverlay};
use crate::error::Error;
use crate::format::guid::Guid;
use crate::format::header::{select_current, HeaderInfo, HEADER_OFFSETS};
use crate::format::log::LogOp;
use crate::format::spec_tests::build::{log_entry, page, Desc, Entry};
use crate::format::spec_tests::fixtures;
use crate::io::{MemStorage, Storage};

const G: u128 = 0x0A0B0C0D_1111_2222_3333_444455556666;

fn entry(seq: u64, tail: u32, descs: &[Desc]) -> Vec<u8> {
    log_entry(&Entry { seq, tail, log_guid: G, flushed: 0, last: 0 }, descs)
}

fn data(at: u64, seed: u8) -> Desc {
    Desc::Data(at, page(seed))
}

/// Writes `bytes` into the ring `log` at `at`, wrapping at its end.
fn put(log: &mut [u8], at: usize, bytes: &[u8]) {
    let n = log.len();
    for (i, b) in bytes.iter().enumerate() {
        log[(at + i) % n] = *b;
    }
}

fn seqs(s: &ActiveSequence) -> Vec<u64> {
    s.entries.iter().map(|e| e.sequence_number).collect()
}

#[test]
fn search_follows_the_tail_of_the_highest_chain() {
    let g = Guid::from_u128(G);
    let mut log = alloc::vec![0u8; 256 * 1024];
    // 10 at 0, 11 at 8K, 12 at 16K whose tail is 8K: the active sequence is 11, 12.
    put(&mut log, 0, &entry(10, 0, &[data(0x30_0000, 1)]));
    put(&mut log, 8192, &entry(11, 8192, &[data(0x30_0000, 2)]));
    put(&mut log, 16384, &entry(12, 8192, &[data(0x30_1000, 3), Desc::Zero(4096, 0x30_2000)]));
    let s = search(&log, &g).unwrap();
    assert_eq!(seqs(&s), [11, 12]);
    assert_eq!(s.head_end, 16384 + 8192);
    assert_eq!(s.head().sequence_number, 12);
    let ops: Vec<&LogOp> = s.ops().collect();
    assert_eq!(
        ops,
        [
            &LogOp::Data { file_offset: 0x30_0000, bytes: page(2) },
            &LogOp::Data { file_offset: 0x30_1000, bytes: page(3) },
            &LogOp::Zero { file_offset: 0x30_2000, length: 4096 },
        ]
    );
    // A lower, older chain further on does not win; a higher one does, before or after.
    put(&mut log, 128 * 1024, &entry(5, 128 * 1024, &[data(0x30_0000, 4)]));
    assert_eq!(seqs(&search(&log, &g).unwrap()), [11, 12]);
    put(&mut log, 128 * 1024, &entry(13, 128 * 1024, &[data(0x30_0000, 4)]));
    assert_eq!(seqs(&search(&log, &g).unwrap()), [13]);
    let mut log2 = alloc::vec![0u8; 256 * 1024];
    put(&mut log2, 0, &entry(40, 0, &[data(0x30_0000, 4)]));
    put(&mut log2, 64 * 1024, &entry(12, 64 * 1024, &[]));
    put(&mut log2, 128 * 1024, &entry(39, 128 * 1024, &[]));
    assert_eq!(seqs(&search(&log2, &g).unwrap()), [40]);
    // Another log's GUID matches nothing.
    assert!(search(&log, &Guid::from_u128(G + 1)).is_none());
}

#[test]
fn search_breaks_chains_at_gaps_and_bad_tails() {
    let g = Guid::from_u128(G);
    let mut log = alloc::vec![0u8; 64 * 1024];
    // 5 (self-tailed), then 7 claiming tail 0: the gap ends the chain at 5,
    // and 7's own chain does not hold its tail.
    put(&mut log, 0, &entry(5, 0, &[data(0x30_0000, 1)]));
    put(&mut log, 8192, &entry(7, 0, &[data(0x30_0000, 2)]));
    let s = search(&log, &g).unwrap();
    assert_eq!((seqs(&s), s.head_end), (alloc::vec![5], 8192));
    // 6 after 5 with tail 0: one sequence of two.
    put(&mut log, 8192, &entry(6, 0, &[data(0x30_0000, 2)]));
    assert_eq!(seqs(&search(&log, &g).unwrap()), [5, 6]);
    // A tail outside every chain: nothing valid.
    let mut log = alloc::vec![0u8; 64 * 1024];
    put(&mut log, 4096, &entry(9, 0, &[]));
    assert!(search(&log, &g).is_none());
    // Not a whole number of sectors, or empty: nothing.
    assert!(search(&log[..4096 * 3 + 512], &g).is_none());
    assert!(search(&[], &g).is_none());
}

#[test]
fn search_across_the_end_of_the_ring() {
    let g = Guid::from_u128(G);
    let n = 64 * 1024;
    // Seq 1 ends exactly at the ring's end; seq 2 starts at 0 and names 1 as its tail.
    let mut log = alloc::vec![0u8; n];
    put(&mut log, n - 8192, &entry(1, (n - 8192) as u32, &[data(0x30_0000, 1)]));
    put(&mut log, 0, &entry(2, (n - 8192) as u32, &[data(0x30_1000, 2)]));
    let s = search(&log, &g).unwrap();
    assert_eq!((seqs(&s), s.head_end), (alloc::vec![1, 2], 8192));
    // One entry split by the end of the ring: header in the last sector,
    // data sectors at the start.
    let mut log = alloc::vec![0u8; n];
    put(&mut log, n - 4096, &entry(3, (n - 4096) as u32, &[data(0x30_0000, 5), data(0x30_1000, 6)]));
    let s = search(&log, &g).unwrap();
    assert_eq!(s.head_end, 8192);
    assert_eq!(s.head().ops[1], LogOp::Data { file_offset: 0x30_1000, bytes: page(6) });
    // An entry as long as the whole ring.
    let mut log = alloc::vec![0u8; 8192];
    put(&mut log, 0, &entry(4, 0, &[data(0x30_0000, 7)]));
    assert_eq!(search(&log, &g).unwrap().head_end, 0);
}

#[test]
fn search_ties_on_the_head_keep_the_first_chain_in_ring_order() {
    let g = Guid::from_u128(G);
    let n = 64 * 1024;
    // A writer's ring after a lap: the active sequence 20, 21 (tail 0) at
    // the start, the previous lap's 14..=19 after it up to the end. The
    // scan from 16K runs 14..=21 through the wrap and reaches the same head
    // and the same tail: either pick gives [20, 21].
    let mut log = alloc::vec![0u8; n];
    put(&mut log, 0, &entry(20, 0, &[data(0x30_0000, 20)]));
    put(&mut log, 8192, &entry(21, 0, &[data(0x30_1000, 21)]));
    for (i, seq) in (14..=19).enumerate() {
        let at = 16384 + i * 8192;
        put(&mut log, at, &entry(seq, at as u32, &[data(0x30_0000, seq as u8)]));
    }
    let s = search(&log, &g).unwrap();
    assert_eq!((seqs(&s), s.head_end), (alloc::vec![20, 21], 16384));
    // Only a hostile log holds two different sequences with one head
    // sequence number. The choice is deterministic: the first in ring
    // order (lowest offset) wins, as a later equal one is not "larger".
    let mut log = alloc::vec![0u8; n];
    put(&mut log, 0, &entry(30, 0, &[data(0x30_0000, 1)]));
    put(&mut log, 32768, &entry(30, 32768, &[data(0x30_0000, 2)]));
    let s = search(&log, &g).unwrap();
    assert_eq!(s.head_end, 8192);
    assert_eq!(s.head().ops, [LogOp::Data { file_offset: 0x30_0000, bytes: page(1) }]);
}

fn header(log_guid: u128, log_offset: u64, log_length: u32) -> HeaderInfo {
    HeaderInfo {
        sequence_number: 1,
        file_write_guid: Guid::nil(),
        data_write_guid: Guid::nil(),
        log_guid: Guid::from_u128(log_guid),
        log_version: 0,
        log_length,
        log_offset,
    }
}

/// A 4 MiB file with a 1 MiB log at 1 MiB holding `entry` at log offset 0.
fn file_with(entry: &[u8]) -> MemStorage {
    let mut f: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    f[1 << 20..2 << 20].fill(0);
    f[1 << 20..(1 << 20) + entry.len()].copy_from_slice(entry);
    MemStorage::from_vec(f)
}

#[test]
fn find_active_sequence_rules() {
    const MIB: u64 = 1 << 20;
    let e = |flushed: u64, last: u64, descs: &[Desc]| {
        log_entry(&Entry { seq: 3, tail: 0, log_guid: G, flushed, last }, descs)
    };
    let ok = e(4 * MIB, 4 * MIB, &[data(0x30_0000, 1)]);
    let f = file_with(&ok);
    let h = header(G, MIB, MIB as u32);
    assert_eq!(seqs(&find_active_sequence(&f, &h, 4 * MIB).unwrap().unwrap()), [3]);
    assert!(find_active_sequence(&f, &header(0, MIB, MIB as u32), 4 * MIB).unwrap().is_none());
    let corrupt = |r: crate::error::Result<Option<ActiveSequence>>| matches!(r, Err(Error::Corrupt { .. }));
    assert!(corrupt(find_active_sequence(&f, &header(G, MIB, 0), 4 * MIB)));
    assert!(matches!(find_active_sequence(&f, &header(G, MIB, 1 << 31), 4 * MIB), Err(Error::Unsupported { .. })));
    // A log of exactly 1 GiB is allowed (this one runs past the end of the file).
    assert!(corrupt(find_active_sequence(&f, &header(G, MIB, 1 << 30), 4 * MIB)));
    assert!(find_active_sequence(&file_with(&[]), &header(G, 3 * MIB, MIB as u32), 4 * MIB).is_err());
    assert!(corrupt(find_active_sequence(&f, &header(G, 4 * MIB, MIB as u32), 4 * MIB)));
    assert!(corrupt(find_active_sequence(&f, &h, 4 * MIB - 4096))); // log fits, but shorter than FlushedFileOffset
    assert!(corrupt(find_active_sequence(&file_with(&[]), &h, 4 * MIB)));
    assert!(corrupt(find_active_sequence(&f, &header(G + 1, MIB, MIB as u32), 4 * MIB)));
    // Where an update may land: past the header section's first 192 KiB,
    // outside the log, before the larger of the file size and LastFileOffset.
    let lands = |at: u64, last: u64, zero: bool| {
        let d = if zero { Desc::Zero(8192, at) } else { data(at, 2) };
        find_active_sequence(&file_with(&e(MIB, last, &[d])), &h, 4 * MIB).is_ok()
    };
    for zero in [false, true] {
        let len = if zero { 8192 } else { 4096 };
        assert!(lands(0x30000, 0, zero));
        assert!(!lands(0x2F000, 0, zero));
        assert!(!lands(0, 0, zero));
        assert!(lands(MIB - len, 0, zero)); // ends where the log starts
        assert!(!lands(MIB - len + 4096, 0, zero));
        assert!(!lands(2 * MIB - 4096, 0, zero));
        assert!(lands(2 * MIB, 0, zero)); // starts where the log ends
        assert!(lands(4 * MIB - len, 0, zero)); // ends at the end of the file
        assert!(!lands(4 * MIB - len + 4096, 0, zero));
        assert!(lands(8 * MIB - len, 8 * MIB, zero)); // ends at LastFileOffset
        assert!(!lands(8 * MIB - len + 4096, 8 * MIB, zero));
    }
    // A log that ends exactly at the end of the file.
    let at_end = file_with(&e(MIB, 0, &[data(0x30000, 1)]));
    assert!(find_active_sequence(&at_end, &h, 2 * MIB).is_ok());
    assert!(!lands(0x30_0000, 1 << 50, false)); // an implausible LastFileOffset
    assert!(lands(0x30_0000, 128 << 40, false));
}

/// An update of the byte model: offset, bytes (`None`: zeros), length.
type ModelOp = (u64, Option<Vec<u8>>, u64);

/// Applies `ops` to a byte array as the spec says: in order, growing the
/// file; then grows it to `last`.
fn model(base: &[u8], ops: &[ModelOp], last: u64) -> Vec<u8> {
    let mut f = base.to_vec();
    for (at, bytes, len) in ops {
        let end = (*at + *len) as usize;
        if f.len() < end {
            f.resize(end, 0);
        }
        match bytes {
            Some(b) => f[*at as usize..end].copy_from_slice(b),
            None => f[*at as usize..end].fill(0),
        }
    }
    if (f.len() as u64) < last {
        f.resize(last as usize, 0);
    }
    f
}

fn two_entry_sequence() -> (Vec<u8>, Vec<ModelOp>, u64) {
    const MIB: u64 = 1 << 20;
    let last = 5 * MIB + 0x3000;
    let first = log_entry(
        &Entry { seq: 8, tail: 0, log_guid: G, flushed: 0, last: 0 },
        &[data(0x30_0000, 1), Desc::Zero(3 * MIB, 0x20_1000), data(0x30_1000, 2)],
    );
    let second = log_entry(
        &Entry { seq: 9, tail: 0, log_guid: G, flushed: 4 * MIB, last },
        &[
            data(0x30_0000, 3),                   // over the first entry's page: the later one wins
            data(4 * MIB + 0x1000, 4),            // past the end of the file
            data(4 * MIB + 0x2000, 5),            // and after it
            Desc::Zero(0x1000, 4 * MIB + 0x1000), // over a page written past the old end
            Desc::Zero(0x2000, 4 * MIB - 0x1000), // across the old end
        ],
    );
    let mut log = first;
    log.extend_from_slice(&second);
    let ops = alloc::vec![
        (0x30_0000, Some(page(1)), 4096),
        (0x20_1000, None, 3 * MIB),
        (0x30_1000, Some(page(2)), 4096),
        (0x30_0000, Some(page(3)), 4096),
        (4 * MIB + 0x1000, Some(page(4)), 4096),
        (4 * MIB + 0x2000, Some(page(5)), 4096),
        (4 * MIB + 0x1000, None, 0x1000),
        (4 * MIB - 0x1000, None, 0x2000),
    ];
    (log, ops, last)
}

#[test]
fn replay_in_place_matches_a_byte_model() {
    let (log, ops, last) = two_entry_sequence();
    let base = file_with(&log);
    let h = header(G, 1 << 20, 1 << 20);
    let seq = find_active_sequence(&base, &h, 4 << 20).unwrap().unwrap();
    assert_eq!(seqs(&seq), [8, 9]);
    let want = model(base.as_slice(), &ops, last);
    assert_eq!(want.len(), (5 << 20) + 0x3000);
    let mut f = MemStorage::from_vec(base.as_slice().to_vec());
    replay_in_place(&mut f, &seq).unwrap();
    assert_eq!(f.len().unwrap(), want.len() as u64);
    assert!(f.as_slice() == want.as_slice(), "replayed file differs from the model");
    // A sequence that writes nothing past the end still grows the file to LastFileOffset.
    let only = log_entry(&Entry { seq: 2, tail: 0, log_guid: G, flushed: 0, last: 5 << 20 }, &[data(0x30_0000, 9)]);
    let base = file_with(&only);
    let seq = find_active_sequence(&base, &h, 4 << 20).unwrap().unwrap();
    let mut f = MemStorage::from_vec(base.as_slice().to_vec());
    replay_in_place(&mut f, &seq).unwrap();
    assert!(f.as_slice() == model(base.as_slice(), &[(0x30_0000, Some(page(9)), 4096)], 5 << 20).as_slice());
}

#[test]
fn replay_overlay_matches_a_byte_model() {
    let (log, ops, last) = two_entry_sequence();
    let base = file_with(&log);
    let h = header(G, 1 << 20, 1 << 20);
    let seq = find_active_sequence(&base, &h, 4 << 20).unwrap().unwrap();
    let want = model(base.as_slice(), &ops, last);
    let mut o = ReplayOverlay::new(Box::new(MemStorage::from_vec(base.as_slice().to_vec())), seq).unwrap();
    assert_eq!(o.len().unwrap(), want.len() as u64);
    let mut all = alloc::vec![0u8; want.len()];
    o.read_exact_at(&mut all, 0).unwrap();
    assert!(all == want, "overlay differs from the model");
    for (at, len) in [
        (0x30_0000 - 10, 30),
        (0x30_0FFF, 2),
        ((4 << 20) - 0x1001, 0x2002),
        ((5 << 20) + 0x2FFF, 1),
        ((4 << 20) + 0x1FFF, 2),
    ] {
        let mut b = alloc::vec![0xEEu8; len];
        o.read_exact_at(&mut b, at as u64).unwrap();
        assert!(b[..] == want[at..at + len], "read at {at:#x}+{len}");
    }
    let mut b = [0u8; 2];
    assert!(o.read_exact_at(&mut b, want.len() as u64 - 1).is_err());
    assert!(o.read_exact_at(&mut b, u64::MAX).is_err());
    assert!(o.write_all_at(&b, 0).is_err());
    assert!(o.set_len(0).is_err());
    assert!(o.flush().is_ok());
}

fn bat_entry(file: &[u8], bat: usize, i: usize) -> u64 {
    u64::from_le_bytes(file[bat + 8 * i..bat + 8 * i + 8].try_into().unwrap())
}

/// Checks a dirty fixture: the active sequence, and that replaying it
/// changes exactly the bytes `changed` (the ranges QEMU's replay changes,
/// headers aside), both in place and in the overlay.
fn dirty_fixture(rel: &str, check: impl Fn(&ActiveSequence, &[u8], &[u8])) {
    let Some(file) = fixtures::prefix(rel, 64 << 20) else { return };
    let slots = HEADER_OFFSETS.map(|o| HeaderInfo::parse(&file[o as usize..], o));
    let (_, h) = select_current(slots).unwrap();
    let storage = MemStorage::from_vec(file.clone());
    let seq = find_active_sequence(&storage, &h, file.len() as u64).unwrap().unwrap();
    let mut replayed = MemStorage::from_vec(file.clone());
    replay_in_place(&mut replayed, &seq).unwrap();
    check(&seq, &file, replayed.as_slice());
    let o = ReplayOverlay::new(Box::new(storage), seq).unwrap();
    let mut all = alloc::vec![0u8; file.len()];
    o.read_exact_at(&mut all, 0).unwrap();
    assert!(all == replayed.as_slice(), "overlay differs from the in-place replay");
}

#[test]
fn windows_dirty_log() {
    // DiscUtils vhdx-log-replay.vhdx: 5 entries at log offsets 0, 4K, 12K,
    // 20K, 28K, seq …387 to …391; the head's tail is 20K, so the active
    // sequence is …390, …391, each one data descriptor for the BAT sector
    // at 0x300000. After replay: BAT entry 0 = FULLY_PRESENT at 0x400000,
    // entries 3, 9, 31 ZERO, all others NOT_PRESENT; nothing else changes.
    dirty_fixture("discutils/vhdx-log-replay.vhdx.gz", |seq, before, after| {
        assert_eq!(seqs(seq), [80117443871106390, 80117443871106391]);
        assert_eq!(seq.head().tail, 20480);
        assert_eq!(seq.head().flushed_file_offset, 37748736);
        assert_eq!(seq.head().last_file_offset, 37748736);
        assert!(seq.ops().all(|op| matches!(op, LogOp::Data { file_offset: 0x300000, .. })));
        assert_eq!(after.len(), 37748736);
        for i in 0..32 {
            let e = bat_entry(after, 0x300000, i);
            match i {
                0 => assert_eq!(e & 0xFFFF_FFFF_FFF0_0007, 0x40_0006, "BAT 0"),
                3 | 9 | 31 => assert_eq!(e & 7, 2, "BAT {i}"),
                _ => assert_eq!(e & 7, 0, "BAT {i}"),
            }
        }
        assert!(before[..0x300000] == after[..0x300000]);
        assert!(before[0x301000..] == after[0x301000..]);
    });
}

#[test]
fn qemu_dirty_log() {
    // QEMU iotest 070's image: 7 entries, each with its own log GUID; only
    // seq 7 (log offset 49152, tail 49152) carries the header's, with one
    // data descriptor for the BAT sector at 0x200000. Replay changes only
    // bytes 0x200088-0x20008B: block 17 becomes FULLY_PRESENT at 0x1D00000.
    dirty_fixture("qemu/iotest-dirtylog-10G-4M.vhdx.bz2", |seq, before, after| {
        assert_eq!(seqs(seq), [7]);
        assert_eq!(seq.head().tail, 49152);
        assert_eq!(seq.head_end, 49152 + 8192);
        assert_eq!(after.len(), 31457280);
        assert_eq!(bat_entry(before, 0x200000, 17), 0);
        assert_eq!(bat_entry(after, 0x200000, 17), 0x1D0_0006);
        assert!(before[..0x200088] == after[..0x200088]);
        assert!(before[0x20008C..] == after[0x20008C..]);
    });
}
