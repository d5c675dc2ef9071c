//! The workloads: each creates or opens an image on a `FaultStorage` and
//! writes, flushes and closes, recording what it wrote.

use std::sync::Arc;

use vhdx::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
use vhdx::io::FaultStorage;
use vhdx::{CreateOptions, Disk, Extent, MemStorage, OpenOptions};

use crate::support::{guids, open_ro, open_shared, pattern, read_all, Recorder, Workload, MIB};

pub type Step = (u64, usize, u64);

/// A reference image (the content before a workload, which the checks
/// compare against) presents exactly the byte model of the writes that made
/// it: zeros of `size` bytes with `writes` laid over. Checked once, so that
/// a read path wrong the same way for the reference and for the image under
/// test cannot pass for correct.
pub fn assert_presents_model(image: &[u8], size: u64, writes: &[(u64, Vec<u8>)], what: &str) {
    let mut model = vec![0u8; size as usize];
    for (at, data) in writes {
        model[*at as usize..*at as usize + data.len()].copy_from_slice(data);
    }
    let d = open_ro(image);
    let mut got = vec![0u8; size as usize];
    d.read_at(&mut got, 0).unwrap();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != model[i]) {
        panic!("{what}: the reference reads {:#04x} at {i:#x}, its model {:#04x}", got[i], model[i]);
    }
}

/// Writes `(offset, len, seed)` with a flush after each group.
pub fn write_groups(disk: &mut Disk, rec: &mut Recorder, groups: &[&[Step]]) -> vhdx::Result<()> {
    for group in groups {
        for &(offset, len, seed) in group.iter() {
            rec.write(disk, offset, pattern(seed, len))?;
        }
        rec.flush(disk)?;
    }
    Ok(())
}

/// (i) A dynamic disk: allocations, writes crossing blocks, sub-sector
/// writes, overwrites of allocated blocks, one write over allocated and new
/// blocks, an epoch of many small writes, a write left for close to flush.
pub fn dynamic(sector: u32, size: u64, seed: u64) -> Workload {
    let s = sector as u64;
    let run = move |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        let opts = CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(sector);
        let mut disk = Disk::create_on(Box::new(storage), &opts, Some(guids(seed)))?;
        rec.created = true;
        let many: Vec<Step> = (0..8).map(|i| ((i * 3 % 10) * MIB + i * 7 * s + 64, 512, seed + 20 + i)).collect();
        write_groups(
            &mut disk,
            rec,
            &[
                &[(0, 4096, seed + 1), (2 * MIB - 4096, 8192, seed + 2)],
                &[
                    (5 * MIB + 7, 100, seed + 3),
                    (5 * MIB + 4096, s as usize, seed + 4),
                    (9 * MIB - s, 2 * s as usize, seed + 5),
                ],
                &[(2048, 8192, seed + 6), (size - s, s as usize, seed + 7), (MIB + 1000, 3000, seed + 8)],
                &[(MIB - 5, 10, seed + 9), (8 * MIB + 4 * s, 64 << 10, seed + 10)],
                &[(2 * MIB - 4096, (MIB + 8192) as usize, seed + 11)],
                &many,
            ],
        )?;
        // Written and closed without a flush of its own: close flushes.
        rec.write(&mut disk, 5 * MIB + 512, pattern(seed + 12, 1536))?;
        let storage = disk.into_storage()?;
        rec.flushed = rec.writes.len();
        // A second session: new GUIDs, and a log written from its start again
        // over the first session's entries.
        let mut disk = OpenOptions::new().writable(true).guid_source(guids(seed + 1000)).open_storage(storage)?;
        write_groups(&mut disk, rec, &[&[(4 * MIB + 3 * s, 2 * s as usize, seed + 13), (3, 5, seed + 14)]])?;
        rec.write(&mut disk, 5 * MIB + 1024, pattern(seed + 15, s as usize))?;
        rec.close(disk)
    };
    Workload {
        name: format!("dynamic {}-byte sectors, {} MiB", sector, size / MIB),
        initial: Arc::new(Vec::new()),
        parent: None,
        reference: None,
        sector: s,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (ii) A fixed disk: payload written in place, no metadata changes.
pub fn fixed(size: u64, seed: u64) -> Workload {
    let run = move |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        let opts = CreateOptions::fixed(size).block_size(MIB as u32);
        let mut disk = Disk::create_on(Box::new(storage), &opts, Some(guids(seed)))?;
        rec.created = true;
        let many: Vec<Step> = (0..6).map(|i| (i * 2 * MIB + 512 * i, 1024, seed + 20 + i)).collect();
        write_groups(
            &mut disk,
            rec,
            &[
                &[(0, 4096, seed + 1), (MIB - 1024, 3072, seed + 2)],
                &[(7 * MIB + 3, 700, seed + 3), (2 * MIB, 64 << 10, seed + 4)],
                &[(512, 512, seed + 5), (size - 8192, 8192, seed + 6)],
                &many,
            ],
        )?;
        rec.write(&mut disk, 4 * MIB, pattern(seed + 7, 2048))?;
        rec.close(disk)
    };
    Workload {
        name: format!("fixed, {} MiB", size / MIB),
        initial: Arc::new(Vec::new()),
        parent: None,
        reference: None,
        sector: 512,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// A parent for (iii): a dynamic disk with data in some blocks.
pub fn parent_image(sector: u32, size: u64, seed: u64) -> Vec<u8> {
    let opts = CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(sector);
    let mut d = Disk::create_on(Box::new(MemStorage::new()), &opts, Some(guids(seed))).unwrap();
    let writes: Vec<(u64, Vec<u8>)> = [(0, 2 * MIB), (3 * MIB + 4096, 100 << 10), (6 * MIB, MIB), (size - MIB, MIB)]
        .iter()
        .enumerate()
        .map(|(i, &(at, len))| (at, pattern(seed + 100 + i as u64, len as usize)))
        .collect();
    for (at, data) in &writes {
        d.write_at(data, *at).unwrap();
    }
    let image = read_all(&*d.into_storage().unwrap());
    assert_presents_model(&image, size, &writes, "the parent of a differencing workload");
    image
}

/// (iii) A differencing disk over an in-memory parent: sub-sector writes
/// (completed from the parent), partially present blocks and their sector
/// bitmaps, whole blocks, a partially present block written whole, writes
/// across blocks, an epoch of many small writes.
pub fn differencing(sector: u32, size: u64, seed: u64) -> Workload {
    let s = sector as u64;
    let parent = Arc::new(parent_image(sector, size, seed ^ 0x5555));
    let run = move |storage: FaultStorage, rec: &mut Recorder, w: &Workload| -> vhdx::Result<()> {
        let parent = open_ro(w.parent.as_ref().expect("differencing workload has a parent"));
        let mut locator = ParentLocator { entries: Vec::new() };
        locator.set(PARENT_LINKAGE, braced_guid(&parent.data_write_guid()));
        locator.set(RELATIVE_PATH, String::from(r".\parent.vhdx"));
        let mut disk =
            Disk::create_differencing_on(Box::new(storage), parent, locator, Some(MIB as u32), Some(guids(seed)))?;
        rec.created = true;
        let many: Vec<Step> = [0, 1, 3, 7, 8, 10, 1, 0]
            .iter()
            .enumerate()
            .map(|(i, &b)| (b * MIB + (i as u64 * 37 % 64) * s, s as usize, seed + 20 + i as u64))
            .collect();
        write_groups(
            &mut disk,
            rec,
            &[
                &[(100, 50, seed + 1), (MIB + 3 * s, 4 * s as usize, seed + 2)],
                &[(3 * MIB, MIB as usize, seed + 3), (MIB + 200 * s, 8 * s as usize, seed + 4)],
                &[(MIB, MIB as usize, seed + 5), (6 * MIB - 2 * s, 4 * s as usize + 10, seed + 6)],
                &[(size - s, s as usize, seed + 7), (4096 + 1, 3, seed + 8)],
                &[(7 * MIB + MIB / 2, MIB as usize, seed + 9)],
                &many,
            ],
        )?;
        rec.write(&mut disk, 10 * MIB + s, pattern(seed + 10, s as usize))?;
        rec.close(disk)
    };
    let reference = Some(open_shared(&parent));
    Workload {
        name: format!("differencing {}-byte sectors, {} MiB", sector, size / MIB),
        initial: Arc::new(Vec::new()),
        parent: Some(parent),
        reference,
        sector: s,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (iii, b) Many small commits in one session of a differencing disk: each
/// round writes one more sector of a partially present block and flushes, so
/// each commit logs the same bitmap page, and the log wraps around its ring.
pub fn log_wrap(rounds: u64, seed: u64) -> Workload {
    let size = 16 * MIB;
    let parent = Arc::new(parent_image(512, size, seed ^ 0xAAAA));
    let run = move |storage: FaultStorage, rec: &mut Recorder, w: &Workload| -> vhdx::Result<()> {
        let parent = open_ro(w.parent.as_ref().expect("differencing workload has a parent"));
        let mut locator = ParentLocator { entries: Vec::new() };
        locator.set(PARENT_LINKAGE, braced_guid(&parent.data_write_guid()));
        locator.set(RELATIVE_PATH, String::from(r".\parent.vhdx"));
        let mut disk =
            Disk::create_differencing_on(Box::new(storage), parent, locator, Some(MIB as u32), Some(guids(seed)))?;
        rec.created = true;
        for i in 0..rounds {
            rec.write(&mut disk, MIB + i * 1024, pattern(seed + i, 512))?;
            rec.flush(&mut disk)?;
        }
        assert!(disk.log_entries_written() > 128, "the log did not wrap");
        rec.close(disk)
    };
    let reference = Some(open_shared(&parent));
    Workload {
        name: format!("differencing, {rounds} commits (log wraps)"),
        initial: Arc::new(Vec::new()),
        parent: Some(parent),
        reference,
        sector: 512,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (v) `check --repair` of a damaged image: a header and a region table
/// copy with bad checksums, reserved bits in a BAT entry. The repair goes
/// through the log; crashed anywhere, the image must open, present what it
/// did before, and show no damage it did not have.
pub fn repair(seed: u64) -> Workload {
    let opts = CreateOptions::dynamic(16 * MIB).block_size(MIB as u32);
    let mut d = Disk::create_on(Box::new(MemStorage::new()), &opts, Some(guids(seed))).unwrap();
    let writes = [(MIB / 2, pattern(seed + 1, 3 * MIB as usize)), (9 * MIB, pattern(seed + 2, 4096))];
    for (at, data) in &writes {
        d.write_at(data, *at).unwrap();
    }
    let mut image = read_all(&*d.into_storage().unwrap());
    image[(64 << 10) + 1000] ^= 1; // header 1: checksum mismatch
    image[(256 << 10) + 5000] ^= 1; // region table copy 2: checksum mismatch
    image[3 * MIB as usize] |= 1 << 3; // BAT entry 0: a reserved bit
    let before = vhdx::check::check_storage(Box::new(MemStorage::from_vec(image.clone()))).unwrap();
    assert_eq!(before.errors.len(), 3, "the damage: {:?}", before.errors);
    let run = |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        rec.created = true;
        let report = vhdx::check::repair_storage(Box::new(storage))?;
        assert!(report.after.is_clean(), "repair left {:?}", report.after.errors);
        Ok(())
    };
    assert_presents_model(&image, 16 * MIB, &writes, "the damaged image before its repair");
    let reference = Some(open_ro(&image));
    Workload {
        name: String::from("check --repair of a damaged image"),
        initial: Arc::new(image),
        parent: None,
        reference,
        sector: 512,
        tolerated: before.errors,
        run: Box::new(run),
    }
}

/// The published sha256 of the dirty-log image's virtual disk after replay.
pub const LOG_REPLAY_RAW_SHA256: &str = "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e";

/// (iv) A writable open of a Windows image with a dirty log: the replay in
/// place, then writes into a block the replay made present, then close.
pub fn dirty_log(original: Vec<u8>) -> Workload {
    let reference = open_ro(&original);
    let data_at = reference
        .map()
        .unwrap()
        .into_iter()
        .find(|m| matches!(m.extent, Extent::Data { .. }))
        .map(|m| m.offset)
        .expect("the replayed image has a present block");
    let run = move |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        rec.created = true;
        let mut disk = OpenOptions::new().writable(true).guid_source(guids(77)).open_storage(Box::new(storage))?;
        assert!(disk.info().unwrap().log_replayed);
        write_groups(&mut disk, rec, &[&[(data_at + 4096, 8192, 1), (data_at + 77, 5, 2)]])?;
        rec.write(&mut disk, data_at + MIB, pattern(3, 4096))?;
        rec.close(disk)
    };
    Workload {
        name: String::from("dirty-log open (Windows image) + writes"),
        initial: Arc::new(original),
        parent: None,
        reference: Some(reference),
        sector: 512,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (vi) One commit of more BAT pages than a log entry holds (63 with the
/// 1 MiB log): 70 blocks allocated 512 blocks apart, then one flush, so the
/// commit goes out as two entries, each applied before the next is written.
/// 70 MiB of blocks, so the soak runs it, not the standard test, and only
/// from the last allocation on.
pub fn many_bat_pages(seed: u64) -> Workload {
    let run = move |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        let opts = CreateOptions::dynamic(40 << 30).block_size(MIB as u32);
        let handle = storage.clone();
        let mut disk = Disk::create_on(Box::new(storage), &opts, Some(guids(seed)))?;
        rec.created = true;
        for i in 0..70 {
            rec.write(&mut disk, i * 512 * MIB + 512 * (i % 7), pattern(seed + i, 512))?;
        }
        // Crash points from the last allocation on: the commit is what is new here.
        rec.focus_from = handle.mutating_ops().saturating_sub(2);
        rec.flush(&mut disk)?;
        assert!(disk.log_entries_written() >= 2, "the commit fit one entry");
        rec.write(&mut disk, 3 * MIB, pattern(seed + 99, 4096))?;
        rec.close(disk)
    };
    Workload {
        name: String::from("dynamic, one commit of 70 BAT pages"),
        initial: Arc::new(Vec::new()),
        parent: None,
        reference: None,
        sector: 512,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (vii) Resizing a dynamic disk with 4096-byte sectors: a grow past what
/// the 1 MiB BAT region holds (the BAT moves to a new region at the end of
/// the file, switched in both region tables by one log entry), writes past
/// the old end, a shrink into the middle of a block that discards data, a
/// grow again (the discarded bytes must read as zeros), then a discard and
/// a compaction that moves the relocated BAT back down into the freed hole.
pub fn resize(seed: u64) -> Workload {
    let s = 4096u64;
    let run = move |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        let size = 16 * MIB - 2 * s;
        let opts = CreateOptions::dynamic(size).block_size(MIB as u32).logical_sector_size(s as u32);
        let handle = storage.clone();
        let mut disk = Disk::create_on(Box::new(storage), &opts, Some(guids(seed)))?;
        rec.created = true;
        write_groups(
            &mut disk,
            rec,
            &[&[
                (0, MIB as usize, seed + 1),
                (size - 3 * s, 3 * s as usize, seed + 2),
                (2 * MIB, MIB as usize, seed + 8),
            ]],
        )?;
        rec.write(&mut disk, 6 * MIB + 5, pattern(seed + 3, 100))?;
        rec.focus_from = handle.mutating_ops();
        // 131073 + 4 entries: more than a 1 MiB region holds.
        let big = 128 * 1024 * MIB + 64 * MIB;
        rec.resize(&mut disk, big, false)?;
        assert_eq!(disk.regions().bat().length as u64, 2 * MIB, "the BAT was relocated");
        write_groups(&mut disk, rec, &[&[(100 << 30, 8192, seed + 4), (big - s, s as usize, seed + 5)]])?;
        write_groups(&mut disk, rec, &[&[(size - s, 2 * s as usize, seed + 6)]])?;
        // Into block 2, whose data past the cut must read as zeros after the next grow.
        rec.resize(&mut disk, 2 * MIB + 3 * s, true)?;
        rec.resize(&mut disk, 20 * MIB, false)?;
        rec.discard(&mut disk, 0, MIB)?;
        rec.flush(&mut disk)?;
        let report = disk.compact()?;
        assert!(report.structures_moved > 0, "the compaction moved nothing: {report:?}");
        rec.write(&mut disk, 19 * MIB, pattern(seed + 7, 4096))?;
        rec.close(disk)
    };
    Workload {
        name: String::from("resize: grow (BAT relocated), shrink, grow, compact"),
        initial: Arc::new(Vec::new()),
        parent: None,
        reference: None,
        sector: s,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (viii) Discards in a dynamic disk (whole blocks become UNMAPPED, parts
/// are zero-written, unaligned edges) and in a differencing child over a
/// parent with data (whole blocks become ZERO, parts over parent data are
/// zero-written, parts over an empty parent lose their bitmap bits).
pub fn discard(differencing: bool, seed: u64) -> Workload {
    let size = 16 * MIB;
    let parent = differencing.then(|| Arc::new(parent_image(512, size, seed ^ 0x3333)));
    let run = move |storage: FaultStorage, rec: &mut Recorder, w: &Workload| -> vhdx::Result<()> {
        let mut disk = match &w.parent {
            Some(p) => {
                let parent = open_ro(p);
                let mut locator = ParentLocator { entries: Vec::new() };
                locator.set(PARENT_LINKAGE, braced_guid(&parent.data_write_guid()));
                locator.set(RELATIVE_PATH, String::from(r".\parent.vhdx"));
                Disk::create_differencing_on(Box::new(storage), parent, locator, Some(MIB as u32), Some(guids(seed)))?
            }
            None => {
                let opts = CreateOptions::dynamic(size).block_size(MIB as u32);
                Disk::create_on(Box::new(storage), &opts, Some(guids(seed)))?
            }
        };
        rec.created = true;
        write_groups(
            &mut disk,
            rec,
            &[&[(MIB, 3 * MIB as usize, seed + 1), (9 * MIB + 4096, 8192, seed + 2), (12 * MIB + 512, 1024, seed + 3)]],
        )?;
        rec.discard(&mut disk, MIB, 2 * MIB)?; // whole blocks 1 and 2
        rec.discard(&mut disk, 3 * MIB + 1000, 3000)?; // unaligned, inside block 3
        rec.flush(&mut disk)?;
        rec.discard(&mut disk, 9 * MIB + 4096, 4096)?; // own sectors (parent: nothing there)
        rec.discard(&mut disk, 6 * MIB, MIB)?; // a whole block never written here (parent data)
        rec.discard(&mut disk, 3 * MIB + 100, 200)?; // less than a sector
        rec.write(&mut disk, 2 * MIB + 512, pattern(seed + 4, 512))?; // into a discarded block
        rec.flush(&mut disk)?;
        rec.discard(&mut disk, 0, size)?; // everything
        rec.close(disk)
    };
    let reference = parent.as_ref().map(open_shared);
    Workload {
        name: format!("discard, {}", if differencing { "differencing" } else { "dynamic" }),
        initial: Arc::new(Vec::new()),
        parent,
        reference,
        sector: 512,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}

/// (ix) Compaction of a dynamic disk: blocks written in scattered order,
/// one overwritten with zeros, some discarded; compacting releases the
/// all-zero one and moves the blocks at the end of the file into the holes,
/// each BAT entry switched through the log only after the copies are
/// durable; then the file is cut after a log entry records its new size.
pub fn compact(seed: u64) -> Workload {
    let run = move |storage: FaultStorage, rec: &mut Recorder, _: &Workload| -> vhdx::Result<()> {
        let size = 16 * MIB;
        let opts = CreateOptions::dynamic(size).block_size(MIB as u32);
        let handle = storage.clone();
        let mut disk = Disk::create_on(Box::new(storage), &opts, Some(guids(seed)))?;
        rec.created = true;
        let blocks: Vec<Step> = (0..10u64).map(|i| ((i * 7 % 16) * MIB + 512 * i, 4096, seed + i)).collect();
        write_groups(&mut disk, rec, &[&blocks])?;
        rec.write(&mut disk, 7 * MIB, vec![0u8; MIB as usize])?; // the second block allocated: all zeros now
        rec.discard(&mut disk, 0, MIB)?; // the first one
        rec.discard(&mut disk, 14 * MIB, MIB)?;
        rec.flush(&mut disk)?;
        rec.focus_from = handle.mutating_ops();
        let report = disk.compact()?;
        assert_eq!(report.blocks_released, 1);
        assert!(report.structures_moved >= 2, "{report:?}");
        rec.write(&mut disk, 15 * MIB, pattern(seed + 50, 4096))?;
        rec.close(disk)
    };
    Workload {
        name: String::from("compact: release, move, truncate"),
        initial: Arc::new(Vec::new()),
        parent: None,
        reference: None,
        sector: 512,
        tolerated: Vec::new(),
        run: Box::new(run),
    }
}
