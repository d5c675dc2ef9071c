//! BAT entries and geometry against the spec's formulas, computed by hand
//! (MS-VHDX 2.5): chunk ratio = 2^23 x sector size / block size, entry
//! counts, the payload/sector-bitmap interleave.

use crate::format::bat::*;
use crate::format::MIB;

#[test]
fn entry_states_and_offsets() {
    let states = [
        (0, Some(PayloadState::NotPresent)),
        (1, Some(PayloadState::Undefined)),
        (2, Some(PayloadState::Zero)),
        (3, Some(PayloadState::Unmapped)),
        (4, None),
        (5, Some(PayloadState::Unmapped)),
        (6, Some(PayloadState::FullyPresent)),
        (7, Some(PayloadState::PartiallyPresent)),
    ];
    for (bits, state) in states {
        // Reserved bits 3-19 and the offset bits do not change the state.
        let entry = 0x0000_1234_5000_0000 | 0x000F_FFF8 | bits;
        assert_eq!(PayloadState::from_entry(entry), state, "state {bits}");
        let e = BatEntry::from_raw(entry);
        assert_eq!((e.payload_state(), e.state_bits(), e.raw()), (state, bits, entry), "state {bits}");
        if let Some(s) = state {
            if bits != 5 {
                assert_eq!(s.bits(), bits);
            }
            assert_eq!(s.has_data(), bits >= 6, "state {bits}");
        }
    }
    assert_eq!(PayloadState::Unmapped.bits(), 3);
    // Bits 20-63 are the offset in MiB; 0-19 are not part of it.
    assert_eq!(BatEntry::from_raw(0xFFFF_FFFF_FFFF_FFFF).file_offset(), 0xFFFF_FFFF_FFF0_0000);
    assert_eq!(BatEntry::from_raw((5 << 20) | 0xFFFFF).file_offset(), 5 * MIB);
    assert_eq!(BatEntry::new(6, 0x1D0_0000).raw(), 0x1D0_0006);
    assert_eq!(BatEntry::new(7, 0).raw(), 7);
    assert_eq!(BatEntry::payload(PayloadState::Zero, 3 * MIB).raw(), 0x30_0002);
    assert_eq!(SB_PRESENT, 6);
    assert_eq!(SB_NOT_PRESENT, 0);
}

/// Block size, sector size, virtual size, differencing.
type Shape = (u32, u32, u64, bool);
/// Chunk ratio, payload blocks, chunks, BAT entries.
type Counts = (u64, u64, u64, u64);

#[test]
fn geometry_by_hand() {
    // (block, sector, size, parent) -> (chunk ratio, payload, chunks, entries)
    let cases: [(Shape, Counts); 8] = [
        // 1 GiB, 32 MiB blocks, 512 B: CR 2^23*512/2^25 = 128; 32 blocks; 1 chunk.
        ((32 << 20, 512, 1 << 30, false), (128, 32, 1, 32)),
        // 10 MiB in 2 MiB blocks, 512 B: CR 2048, 5 blocks (dissect fixed.vhdx).
        ((2 << 20, 512, 10 << 20, false), (2048, 5, 1, 5)),
        // A size that is not a multiple of the block: the last block is partial.
        ((2 << 20, 512, (10 << 20) + 512, false), (2048, 6, 1, 6)),
        // 5 GiB in 1 MiB blocks: CR 4096, 5120 blocks, 2 chunks: 5120 + 4 entries... (5119/4096 = 1).
        ((1 << 20, 512, 5 << 30, false), (4096, 5120, 2, 5121)),
        // Exactly one full chunk: no sector bitmap entry after it.
        ((1 << 20, 512, 4 << 30, false), (4096, 4096, 1, 4096)),
        // Differencing: every chunk has its bitmap entry: 2 chunks * 2049.
        ((2 << 20, 512, 8 << 30, true), (2048, 4096, 2, 2 * 2049)),
        // 4 KiB sectors, 1 MiB blocks: CR 32768; 256 MiB blocks, 512 B: CR 16.
        ((1 << 20, 4096, 1 << 30, true), (32768, 1024, 1, 32769)),
        ((256 << 20, 512, 1 << 30, false), (16, 4, 1, 4)),
    ];
    for ((bs, lss, size, parent), (cr, p, s, n)) in cases {
        let g = BatGeometry::new(bs, lss, size, parent).unwrap();
        assert_eq!(
            (g.chunk_ratio, g.payload_blocks, g.sector_bitmap_blocks, g.entry_count),
            (cr, p, s, n),
            "{bs} {lss} {size} {parent}"
        );
        assert_eq!(g.table_bytes(), n * 8);
        assert_eq!(g.chunk_bytes(), cr * bs as u64);
        assert_eq!(g.sectors_per_block(), (bs / lss) as u64);
        assert_eq!((g.block_size, g.logical_sector_size, g.virtual_size, g.has_parent), (bs, lss, size, parent));
    }
    let empty = BatGeometry::new(1 << 20, 512, 0, false).unwrap();
    assert_eq!((empty.payload_blocks, empty.entry_count), (0, 0));
    assert!(BatGeometry::new(3 << 20, 512, 1 << 30, false).is_err());
    assert!(BatGeometry::new(1 << 20, 520, 1 << 30, false).is_err());
    // A block larger than a chunk's sectors: no valid chunk ratio.
    assert!(BatGeometry::new(1 << 24, 1, 1 << 30, false).is_err());
}

#[test]
fn interleave_by_hand() {
    // CR 4: blocks 0-3 at 0-3, bitmap 0 at 4, blocks 4-7 at 5-8, bitmap 1 at 9.
    let g = BatGeometry::new(256 << 20, 128, 4 << 30, true).unwrap();
    assert_eq!(g.chunk_ratio, 4);
    let payload: [usize; 9] = [0, 1, 2, 3, 5, 6, 7, 8, 10];
    for (block, index) in payload.iter().enumerate() {
        assert_eq!(g.payload_index(block as u64), *index, "block {block}");
        assert!(!g.is_sector_bitmap_index(*index));
    }
    for (chunk, index) in [(0u64, 4usize), (1, 9), (2, 14)] {
        assert_eq!(g.sector_bitmap_index(chunk), index);
        assert!(g.is_sector_bitmap_index(index));
    }
    // The usual 2 MiB differencing disk: CR 2048.
    let g = BatGeometry::new(2 << 20, 512, 8 << 30, true).unwrap();
    assert_eq!(g.payload_index(2047), 2047);
    assert_eq!(g.payload_index(2048), 2049);
    assert_eq!(g.payload_index(4095), 4096);
    assert_eq!(g.sector_bitmap_index(1), 4097);
    assert!(g.is_sector_bitmap_index(2048) && g.is_sector_bitmap_index(4097));
    assert!(!g.is_sector_bitmap_index(2047) && !g.is_sector_bitmap_index(2049) && !g.is_sector_bitmap_index(0));
}
