//! The chain-wide map: for every range of a disk, which image of its chain
//! decides the bytes, and where that image stores them.
//!
//! [`Disk::map`] describes one image: a range it leaves to its parent is
//! just [`Extent::Parent`]. [`map`] follows such ranges down the parents
//! that are open with the disk, so each run names the image that decides it
//! (its depth: 0 the disk itself, 1 its parent, …) and, for stored data, the
//! offset in that image's file — what `qemu-img map` reports for a backing
//! chain, and what a backup or copy tool needs to read each range from the
//! right file.

use alloc::vec::Vec;

use crate::error::Result;
use crate::{Disk, Extent, MapEntry};

/// One run of [`map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainMapEntry {
    /// Virtual offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// The image that decides these bytes: 0 is the disk itself, 1 its
    /// parent, and so on (the index into [`Disk::chain_paths`]).
    pub depth: usize,
    /// What that image says: [`Extent::Data`] at an offset of its file,
    /// [`Extent::Zero`] (it reads as zeros: a block never written, one
    /// marked zero, or a range past the end of a shorter parent), or
    /// [`Extent::Parent`] when the deciding image is a parent that was not
    /// opened with the disk (`depth` is then one past the last open image).
    pub extent: Extent,
}

/// The map of `disk` through every parent open with it: for each run,
/// the image of the chain that decides its bytes and, for stored data, the
/// offset in that image's file (what `qemu-img map` reports for a backing
/// chain). Runs are in order, cover the whole virtual disk without gaps,
/// and neighbours that continue each other (the same image, and for data
/// the next file offset) are joined.
///
/// ```
/// use vhdx::{chain, CreateOptions, Disk, Extent, MemStorage};
/// # fn main() -> vhdx::Result<()> {
/// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(4 << 20).block_size(1 << 20), None)?;
/// disk.write_at(&[7; 4096], 1 << 20)?;
/// let runs = chain::map(&disk)?;
/// assert_eq!(runs.len(), 3);
/// assert_eq!((runs[1].offset, runs[1].depth), (1 << 20, 0));
/// assert!(matches!(runs[1].extent, Extent::Data { .. }));
/// assert_eq!(runs[2].extent, Extent::Zero);
/// # Ok(()) }
/// ```
pub fn map<L: ChainLevel + ?Sized>(disk: &L) -> Result<Vec<ChainMapEntry>> {
    let mut maps = Vec::new();
    let mut sizes = Vec::new();
    let mut level = Some(disk);
    while let Some(d) = level {
        maps.push(d.level_map()?);
        sizes.push(d.level_size());
        level = d.level_parent();
    }
    let mut out = Vec::new();
    resolve(&maps, &sizes, 0, 0, disk.level_size(), &mut out);
    Ok(out)
}

/// One image of a chain, whatever its format: its own map, its virtual
/// size, its path and its parent, as open with it. [`map`] takes any;
/// [`Disk`] and [`VhdDisk`](crate::vhd::VhdDisk) are ones.
pub trait ChainLevel {
    /// The image's own map: [`Extent::Parent`] where it leaves the bytes
    /// to its parent.
    fn level_map(&self) -> Result<Vec<MapEntry>>;
    /// The virtual size.
    fn level_size(&self) -> u64;
    /// The path it was opened from, if any.
    fn level_path(&self) -> Option<&str>;
    /// The parent open with it.
    fn level_parent(&self) -> Option<&Self>;
}

impl ChainLevel for Disk {
    fn level_map(&self) -> Result<Vec<MapEntry>> {
        self.map()
    }
    fn level_size(&self) -> u64 {
        self.virtual_size()
    }
    fn level_path(&self) -> Option<&str> {
        self.path()
    }
    fn level_parent(&self) -> Option<&Self> {
        self.parent()
    }
}

impl ChainLevel for crate::vhd::VhdDisk {
    fn level_map(&self) -> Result<Vec<MapEntry>> {
        self.map()
    }
    fn level_size(&self) -> u64 {
        self.virtual_size()
    }
    fn level_path(&self) -> Option<&str> {
        self.path()
    }
    fn level_parent(&self) -> Option<&Self> {
        self.parent()
    }
}

/// The runs of `maps[level]` within `start..start + len`, following ranges
/// a level leaves to its parent into the next level's map. Past the end of
/// a shorter parent the bytes read as zeros, decided by the parent.
fn resolve(maps: &[Vec<MapEntry>], sizes: &[u64], level: usize, start: u64, len: u64, out: &mut Vec<ChainMapEntry>) {
    let end = start + len;
    let entries = &maps[level];
    let first = entries.partition_point(|e| e.offset + e.length <= start);
    for e in &entries[first..] {
        if e.offset >= end {
            break;
        }
        let s = e.offset.max(start);
        let n = (e.offset + e.length).min(end) - s;
        match e.extent {
            Extent::Data { file_offset } => push(
                out,
                ChainMapEntry {
                    offset: s,
                    length: n,
                    depth: level,
                    extent: Extent::Data { file_offset: file_offset + (s - e.offset) },
                },
            ),
            Extent::Parent if level + 1 < maps.len() => {
                // The parent may be shorter than its child (grown after it
                // was made): past its end the child reads zeros.
                let inside = sizes[level + 1].saturating_sub(s).min(n);
                if inside > 0 {
                    resolve(maps, sizes, level + 1, s, inside, out);
                }
                if inside < n {
                    push(
                        out,
                        ChainMapEntry {
                            offset: s + inside,
                            length: n - inside,
                            depth: level + 1,
                            extent: Extent::Zero,
                        },
                    );
                }
            }
            Extent::Parent => {
                push(out, ChainMapEntry { offset: s, length: n, depth: level + 1, extent: Extent::Parent })
            }
            extent => push(out, ChainMapEntry { offset: s, length: n, depth: level, extent }),
        }
    }
}

/// Appends a run, joining it to the previous one when it continues it.
fn push(out: &mut Vec<ChainMapEntry>, run: ChainMapEntry) {
    if let Some(last) = out.last_mut() {
        let continues = match (last.extent, run.extent) {
            (Extent::Data { file_offset: a }, Extent::Data { file_offset: b }) => a + last.length == b,
            (a, b) => a == b,
        };
        if continues && last.depth == run.depth && last.offset + last.length == run.offset {
            last.length += run.length;
            return;
        }
    }
    out.push(run);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn entry(offset: u64, length: u64, extent: Extent) -> MapEntry {
        MapEntry { offset, length, extent }
    }

    fn run(offset: u64, length: u64, depth: usize, extent: Extent) -> ChainMapEntry {
        ChainMapEntry { offset, length, depth, extent }
    }

    fn data(file_offset: u64) -> Extent {
        Extent::Data { file_offset }
    }

    #[test]
    fn parent_ranges_resolve_to_the_level_that_holds_them() {
        let maps = vec![
            // Leaf: its own data in the middle, the rest from its parent.
            vec![
                entry(0, 8192, Extent::Parent),
                entry(8192, 4096, data(0x500000)),
                entry(12288, 20480, Extent::Parent),
            ],
            // Parent: data at the start, the rest from the grandparent.
            vec![entry(0, 4096, data(0x300000)), entry(4096, 28672, Extent::Parent)],
            // Grandparent (a root): data, then zeros.
            vec![entry(0, 16384, data(0x100000)), entry(16384, 16384, Extent::Zero)],
        ];
        let mut runs = Vec::new();
        resolve(&maps, &[32768; 3], 0, 0, 32768, &mut runs);
        assert_eq!(
            runs,
            vec![
                run(0, 4096, 1, data(0x300000)),
                run(4096, 4096, 2, data(0x101000)),
                run(8192, 4096, 0, data(0x500000)),
                run(12288, 4096, 2, data(0x103000)),
                run(16384, 16384, 2, Extent::Zero),
            ]
        );
    }

    #[test]
    fn a_parent_not_open_is_one_level_down_and_a_shorter_parent_ends_in_zeros() {
        // The leaf alone: what it leaves to its parent stays Parent, depth 1.
        let leaf =
            vec![entry(0, 4096, data(1 << 22)), entry(4096, 4096, Extent::Zero), entry(8192, 8192, Extent::Parent)];
        let mut runs = Vec::new();
        resolve(core::slice::from_ref(&leaf), &[16384], 0, 0, 16384, &mut runs);
        assert_eq!(
            runs,
            vec![run(0, 4096, 0, data(1 << 22)), run(4096, 4096, 0, Extent::Zero), run(8192, 8192, 1, Extent::Parent)]
        );
        // With a parent of 12 KiB (the leaf grew to 16 KiB): its data up to
        // its end, zeros after, both decided by the parent.
        let parent = vec![entry(0, 12288, data(0x200000))];
        runs.clear();
        resolve(&[leaf, parent], &[16384, 12288], 0, 0, 16384, &mut runs);
        assert_eq!(
            runs,
            vec![
                run(0, 4096, 0, data(1 << 22)),
                run(4096, 4096, 0, Extent::Zero),
                run(8192, 4096, 1, data(0x202000)),
                run(12288, 4096, 1, Extent::Zero),
            ]
        );
    }

    #[test]
    fn neighbours_join_only_when_they_continue_each_other() {
        let mut out = Vec::new();
        push(&mut out, run(0, 512, 0, data(0x1000)));
        push(&mut out, run(512, 512, 0, data(0x1200))); // continues
        push(&mut out, run(1024, 512, 0, data(0x2000))); // file gap
        push(&mut out, run(1536, 512, 1, data(0x2200))); // another image
        push(&mut out, run(2048, 512, 1, Extent::Zero));
        push(&mut out, run(2560, 512, 1, Extent::Zero)); // continues
        push(&mut out, run(4096, 512, 1, Extent::Zero)); // virtual gap
        assert_eq!(
            out,
            vec![
                run(0, 1024, 0, data(0x1000)),
                run(1024, 512, 0, data(0x2000)),
                run(1536, 512, 1, data(0x2200)),
                run(2048, 1024, 1, Extent::Zero),
                run(4096, 512, 1, Extent::Zero),
            ]
        );
    }
}
