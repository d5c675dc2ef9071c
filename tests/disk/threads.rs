//! Sharing a disk between threads: reads run concurrently under a read lock,
//! writes are serialized, and every thread's view matches a model.

use std::sync::{Arc, RwLock};

use vhdx::{CreateOptions, Disk, OpenOptions};

use crate::common::data::XorShift;

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Disk>()
};

#[test]
fn threads_write_interleaved_stripes_and_read_everything() {
    for kind in ["dynamic", "differencing"] {
        let dir = tempfile::tempdir().unwrap();
        let size: u64 = 32 << 20;
        let path = dir.path().join("disk.vhdx");
        let disk = if kind == "dynamic" {
            Disk::create(&path, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap()
        } else {
            let base = dir.path().join("base.vhdx");
            let mut b = Disk::create(&base, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap();
            b.write_at(&vec![0x11; 8 << 20], 0).unwrap();
            b.close().unwrap();
            Disk::create_differencing(&path, &base, Some(1 << 20)).unwrap()
        };
        let initial = {
            let mut v = vec![0u8; size as usize];
            disk.read_at(&mut v, 0).unwrap();
            v
        };
        let disk = Arc::new(RwLock::new(disk));
        // Thread t owns every 64 KiB stripe s with s % THREADS == t, so two
        // threads keep racing to allocate the same 1 MiB blocks.
        const THREADS: u64 = 4;
        const STRIPE: u64 = 64 << 10;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let disk = Arc::clone(&disk);
                let mut expected = initial.clone();
                std::thread::spawn(move || {
                    let mut rng = XorShift(0xABCD_0000 + t);
                    for i in 0..300u64 {
                        let stripe = (rng.next() % (size / STRIPE / THREADS)) * THREADS + t;
                        let within = rng.next() % (STRIPE - 1);
                        let len = 1 + rng.next() % (STRIPE - within);
                        let at = stripe * STRIPE + within;
                        let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (t as u8 * 37) ^ (i as u8)).collect();
                        disk.write().unwrap().write_at(&data, at).unwrap();
                        expected[at as usize..(at + len) as usize].copy_from_slice(&data);
                        // Read back a random own stripe under the shared lock.
                        let s = (rng.next() % (size / STRIPE / THREADS)) * THREADS + t;
                        let mut buf = vec![0u8; STRIPE as usize];
                        disk.read().unwrap().read_at(&mut buf, s * STRIPE).unwrap();
                        assert_eq!(buf, &expected[(s * STRIPE) as usize..((s + 1) * STRIPE) as usize], "thread {t}");
                        if i % 50 == 0 {
                            disk.write().unwrap().flush().unwrap();
                        }
                    }
                    expected
                })
            })
            .collect();
        let models: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut model = initial.clone();
        for s in 0..size / STRIPE {
            let owner = &models[(s % THREADS) as usize];
            let r = (s * STRIPE) as usize..((s + 1) * STRIPE) as usize;
            model[r.clone()].copy_from_slice(&owner[r]);
        }
        let disk = Arc::try_unwrap(disk).unwrap().into_inner().unwrap();
        disk.close().unwrap();
        let reopened = OpenOptions::new().open(&path).unwrap();
        let mut all = vec![0u8; size as usize];
        reopened.read_at(&mut all, 0).unwrap();
        assert!(all == model, "{kind}: the reopened disk differs from the merged model");
        assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    }
}

/// The stress test of shared writes: four threads at once read, write
/// (through `write_concurrently`: stored blocks under the shared lock, new
/// blocks reserved under the exclusive one, a differencing disk's writes
/// under the exclusive one), and flush, each against its own model of the
/// stripes it owns, while every read of any stripe is checked to be what
/// some thread's model held there at some time (old or new, never a mix
/// within a sector). At the end the reopened disk matches the merged
/// model, checks clean, and QEMU reads the same bytes (of the images it
/// opens: not differencing ones).
#[test]
fn shared_writes_from_four_threads_match_a_model() {
    for kind in ["dynamic", "fixed", "differencing"] {
        let dir = tempfile::tempdir().unwrap();
        let size: u64 = 24 << 20;
        let path = dir.path().join("disk.vhdx");
        let disk = match kind {
            "dynamic" => Disk::create(&path, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap(),
            "fixed" => Disk::create(&path, &CreateOptions::fixed(size).block_size(1 << 20)).unwrap(),
            _ => {
                let base = dir.path().join("base.vhdx");
                let mut b = Disk::create(&base, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap();
                b.write_at(&vec![0x11; 12 << 20], 0).unwrap();
                b.close().unwrap();
                Disk::create_differencing(&path, &base, Some(1 << 20)).unwrap()
            }
        };
        let mut initial = vec![0u8; size as usize];
        disk.read_at(&mut initial, 0).unwrap();
        let disk = RwLock::new(disk);
        const THREADS: u64 = 4;
        const STRIPE: u64 = 16 << 10;
        let stripes = size / STRIPE;
        let models: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (disk, initial) = (&disk, &initial);
                    s.spawn(move || {
                        let mut mine = initial.clone();
                        let mut rng = XorShift(0x5EED_0000 + t);
                        for i in 0..400u64 {
                            let stripe = (rng.next() % (stripes / THREADS)) * THREADS + t;
                            let within = rng.next() % STRIPE;
                            let len = 1 + rng.next() % (STRIPE - within);
                            let at = stripe * STRIPE + within;
                            let fill = (t as u8 + 1) << 5 | (i % 31) as u8;
                            vhdx::write_concurrently(disk, &vec![fill; len as usize], at).unwrap();
                            mine[at as usize..(at + len) as usize].fill(fill);
                            // Own stripes read exactly as the model says.
                            let own = (rng.next() % (stripes / THREADS)) * THREADS + t;
                            let r = (own * STRIPE) as usize..((own + 1) * STRIPE) as usize;
                            let mut buf = vec![0u8; STRIPE as usize];
                            disk.read().unwrap().read_at(&mut buf, own * STRIPE).unwrap();
                            assert!(buf == mine[r], "{kind}: thread {t} read its stripe {own} wrong");
                            // Others' stripes: every byte initial or written
                            // by their owner (fills name the thread).
                            let other = rng.next() % stripes;
                            disk.read().unwrap().read_at(&mut buf, other * STRIPE).unwrap();
                            let owner = (other % THREADS) as u8 + 1;
                            let start = (other * STRIPE) as usize;
                            for (j, &b) in buf.iter().enumerate() {
                                assert!(
                                    b == initial[start + j] || b >> 5 == owner,
                                    "{kind}: stripe {other} byte {j} reads {b:#04x}, neither initial nor its owner's"
                                );
                            }
                            if i % 60 == 59 {
                                vhdx::flush_concurrently(disk).unwrap();
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut model = initial.clone();
        for s in 0..stripes {
            let r = (s * STRIPE) as usize..((s + 1) * STRIPE) as usize;
            model[r.clone()].copy_from_slice(&models[(s % THREADS) as usize][r]);
        }
        disk.into_inner().unwrap().close().unwrap();
        let mut all = vec![0u8; size as usize];
        OpenOptions::new().open(&path).unwrap().read_at(&mut all, 0).unwrap();
        assert!(all == model, "{kind}: the reopened disk differs from the merged model");
        assert!(vhdx::check::check_file(&path).unwrap().is_clean(), "{kind}");
        // QEMU opens no differencing VHDX.
        if kind != "differencing" && crate::common::qemu::qemu() {
            let raw = dir.path().join("out.raw");
            crate::common::qemu::qemu_convert_to_raw(&path, &raw);
            assert!(std::fs::read(&raw).unwrap() == model, "{kind}: QEMU reads other bytes");
        }
    }
}

/// Readers never wait for another block's allocation, nor for a flush:
/// while one reader holds the shared lock throughout, a writer on another
/// thread still makes new blocks of a dynamic disk and flushes them (after
/// the session's first change and first flush, which write the headers
/// under the exclusive lock), and the reader sees each block's data as
/// soon as its write returns. Were new blocks made, or flushed, under the
/// exclusive lock, the writer would wait for the reader to let go.
#[test]
fn new_blocks_are_made_while_a_reader_holds_the_lock() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.vhdx");
    let disk = RwLock::new(Disk::create(&path, &CreateOptions::dynamic(64 * MIB).block_size(MIB as u32)).unwrap());
    vhdx::write_concurrently(&disk, &[0xEE; 4096], 0).unwrap();
    // The session's first flush names a fresh log in the headers: under the
    // exclusive lock. Later ones, with only shared allocations to commit,
    // hold it shared.
    vhdx::flush_concurrently(&disk).unwrap();
    let mut buf = vec![0u8; 8192];
    beside_a_held_reader(
        &disk,
        // Part of a block, unaligned, so the rest must read as zeros.
        |b| vhdx::write_concurrently(&disk, &[b as u8; 5000], b * MIB + 777).unwrap(),
        |held, b| {
            held.read_at(&mut buf, b * MIB).unwrap();
            assert!(buf[..777].iter().all(|&x| x == 0), "block {b}: zeros before the write");
            assert!(buf[777..5777].iter().all(|&x| x == b as u8), "block {b}: the write");
            assert!(buf[5777..].iter().all(|&x| x == 0), "block {b}: zeros after it");
        },
    );
    disk.into_inner().unwrap().close().unwrap();
    assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    let mut buf = vec![0u8; 5000];
    let d = OpenOptions::new().open(&path).unwrap();
    for b in 1..48u64 {
        d.read_at(&mut buf, b * MIB + 777).unwrap();
        assert!(buf.iter().all(|&x| x == b as u8), "block {b} after reopening");
    }
    assert_eq!(d.info().unwrap().allocated_blocks, 48);
}

/// Shared allocation across block-table pages with a cache of one page:
/// a page changed by a shared allocator is pinned, so allocations in other
/// pages must fall back to the exclusive path (and readers of other pages
/// read them from the file) until a flush unpins it. Four threads write
/// 4 KiB units all over a 2 GiB disk (four table pages) and flush now and
/// then; every unit reads as its last write, before and after reopening,
/// through QEMU for a dynamic disk (a differencing child's sector bitmap
/// entries share the pages too), and the image checks clean.
#[test]
fn new_blocks_across_table_pages_with_a_one_page_cache() {
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 2048 * MIB;
    for kind in ["dynamic", "differencing"] {
        let dir = tempfile::tempdir().unwrap();
        let parent_byte = 0x3C;
        let path = if kind == "dynamic" {
            let path = dir.path().join("disk.vhdx");
            Disk::create(&path, &CreateOptions::dynamic(SIZE).block_size(MIB as u32)).unwrap().close().unwrap();
            path
        } else {
            // A parent that holds a byte in every block a unit may land
            // in, so that each unit's neighbours read it.
            child_over(dir.path(), SIZE, |b| {
                for block in 0..48 {
                    b.write_at(&vec![parent_byte; MIB as usize], block * (SIZE / MIB / 48) * MIB).unwrap();
                }
            })
            .1
        };
        let disk = RwLock::new(OpenOptions::new().writable(true).bat_cache_bytes(4096).open(&path).unwrap());
        // Units of thread t: 4 KiB at 16 KiB * k + 4 KiB * t, in one of 48
        // blocks spread over the whole disk.
        let written = write_units(&disk, 250, 70, 0x7AB1_E000, |rng, t| {
            let block = (rng.next() % 48) * (SIZE / MIB / 48);
            block * MIB + (rng.next() % (MIB / 16384)) * 16384 + t * 4096
        });
        disk.into_inner().unwrap().close().unwrap();
        assert!(vhdx::check::check_file(&path).unwrap().is_clean(), "{kind}");
        let d = OpenOptions::new().open(&path).unwrap();
        // Each block a unit may land in as it must read: the parent's byte
        // (or zeros), the units over it; zeros elsewhere.
        let mut blocks = std::collections::BTreeSet::new();
        let mut got = vec![0u8; MIB as usize];
        for block in (0..48).map(|b| b * (SIZE / MIB / 48)) {
            let mut want = vec![if kind == "dynamic" { 0 } else { parent_byte }; MIB as usize];
            for mine in &written {
                for (&at, &fill) in mine.range(block * MIB..(block + 1) * MIB) {
                    want[(at - block * MIB) as usize..][..4096].fill(fill);
                    blocks.insert(block);
                }
            }
            d.read_at(&mut got, block * MIB).unwrap();
            assert!(got == want, "{kind}: block {block} after reopening");
            d.read_at(&mut got, (block + 1) * MIB).unwrap();
            assert!(got.iter().all(|&x| x == 0), "{kind}: block {} after reopening", block + 1);
        }
        if kind == "dynamic" && crate::common::qemu::qemu() {
            let raw = dir.path().join("out.raw");
            crate::common::qemu::qemu_convert_to_raw(&path, &raw);
            let raw = std::fs::File::open(&raw).unwrap();
            let mut buf = [0u8; 4096];
            for mine in &written {
                for (&at, &fill) in mine {
                    use crate::common::FileExt;
                    raw.read_exact_at(&mut buf, at).unwrap();
                    assert!(buf.iter().all(|&x| x == fill), "unit at {at:#x} as QEMU reads it");
                }
            }
        }
        assert_eq!(d.info().unwrap().allocated_blocks, blocks.len() as u64, "{kind}: one block per block written");
    }
}

/// The same for a differencing disk: while one thread holds the read lock
/// throughout, another makes the child's new blocks (partially present,
/// their chunk's sector bitmap block too), sets the bits of the sectors it
/// wrote, makes a block written whole fully present, and flushes: none of
/// it waits for the reader, who sees each write as soon as it returns,
/// with the parent's bytes around it. After reopening, the chain reads as
/// the model, `check` is clean, and libvhdi (when present) reads the same.
#[test]
fn differencing_blocks_and_bits_are_made_while_a_reader_holds_the_lock() {
    const MIB: u64 = 1 << 20;
    // Per block b: 8 KiB at 4 KiB * b (a new block with its sectors' bits),
    // then 1 KiB at the block's end (bits in a block made before); every
    // fifth block written whole instead (fully present).
    differencing_beside_a_held_reader(|b| {
        if b % 5 == 0 {
            vec![(b * MIB, vec![b as u8; MIB as usize])]
        } else {
            vec![(b * MIB + 4096 * b, vec![b as u8; 8192]), ((b + 1) * MIB - 1024, vec![!(b as u8); 1024])]
        }
    });
}

/// The same for writes of part of a sector, which merge the parent's bytes
/// into it: none waits for the reader. Per block b: 100 bytes into a
/// sector of a new block; 60 more bytes into the same sector, which the
/// child then holds; 3,000 bytes from the middle of one sector to the
/// middle of another (two merged sectors around five whole ones); one byte
/// into the block's last sector.
#[test]
fn differencing_partial_sectors_are_written_while_a_reader_holds_the_lock() {
    const MIB: u64 = 1 << 20;
    differencing_beside_a_held_reader(|b| {
        let base = b * MIB + 4096 * b;
        vec![
            (base + 37, vec![b as u8; 100]),
            (base + 300, vec![!(b as u8); 60]),
            (base + 70_000 + 200, vec![b as u8 ^ 0x5A; 3000]),
            ((b + 1) * MIB - 3, vec![0xA5; 1]),
        ]
    });
}

/// A 64 MiB child of 1 MiB blocks over a parent holding a pattern: after
/// the session's first change and flush (exclusive), `writes(b)` for
/// blocks 1 to 47 go in through [`beside_a_held_reader`], the reader
/// checking each block whole against the parent's bytes with the writes
/// laid over; after reopening, the chain reads as that model, `check` is
/// clean, all 48 blocks are stored, and libvhdi (when present) reads the
/// same.
fn differencing_beside_a_held_reader(writes: impl Fn(u64) -> Vec<(u64, Vec<u8>)> + Sync) {
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 64 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let parent_byte = |at: u64| 0x40 | ((at / MIB + at / 512) % 63) as u8;
    let mut model: Vec<u8> = (0..SIZE).map(parent_byte).collect();
    let (base, path) = child_over(dir.path(), SIZE, |b| b.write_at(&model, 0).unwrap());
    let disk = RwLock::new(OpenOptions::new().writable(true).open(&path).unwrap());
    // The session's first change and first flush hold the lock exclusively.
    vhdx::write_concurrently(&disk, &[0xEE; 4096], 0).unwrap();
    model[..4096].fill(0xEE);
    vhdx::flush_concurrently(&disk).unwrap();
    let writes = &writes;
    let mut buf = vec![0u8; MIB as usize];
    beside_a_held_reader(
        &disk,
        |b| {
            for (at, data) in writes(b) {
                vhdx::write_concurrently(&disk, &data, at).unwrap();
            }
        },
        |held, b| {
            let mut want: Vec<u8> = (b * MIB..(b + 1) * MIB).map(parent_byte).collect();
            for (at, data) in writes(b) {
                let from = (at - b * MIB) as usize;
                want[from..from + data.len()].copy_from_slice(&data);
            }
            held.read_at(&mut buf, b * MIB).unwrap();
            assert!(buf == want, "block {b} as the reader sees it after its writes returned");
        },
    );
    for b in 1..48u64 {
        for (at, data) in writes(b) {
            model[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
    }
    disk.into_inner().unwrap().close().unwrap();
    assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    let d = OpenOptions::new().open(&path).unwrap();
    let mut back = vec![0u8; SIZE as usize];
    d.read_at(&mut back, 0).unwrap();
    assert!(back == model, "the chain after reopening reads as the model");
    assert_eq!(d.info().unwrap().allocated_blocks, 48);
    drop(d);
    if let Some((sum, size)) = crate::common::tools::libvhdi_reads_chain(&path, &[&base]) {
        assert_eq!(
            (sum, size),
            (crate::common::compare::sha256_bytes(&model), SIZE),
            "libvhdi reads the chain as the model"
        );
    }
}

/// Writes of part of a sector of a differencing disk from four threads at
/// once, all through `write_concurrently` (so under the shared lock, each
/// merging the parent's bytes into a sector the child does not hold yet).
/// First the four threads walk the same sectors in the same order, each
/// writing its own quarter of each: no quarter may be lost, as it would be
/// if two merges of one sector read the parent at once. Then one thread
/// writes whole sectors while another writes the first 100 bytes of the
/// same ones: each must read as one write after the other, never with the
/// parent's bytes, as it would if a merge ran between the whole write's
/// data and its sector's bit. Flushes and reads run between; after
/// reopening, the chain reads the same, checks clean, and libvhdi (when
/// present) agrees.
#[test]
fn differencing_partial_sectors_from_four_threads_lose_no_bytes() {
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 16 * MIB;
    const SECTORS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let parent: Vec<u8> = (0..SIZE).map(|at| 0x40 | (at / 512 % 63) as u8).collect();
    let (base, path) = child_over(dir.path(), SIZE, |b| b.write_at(&parent, 0).unwrap());
    let disk = RwLock::new(OpenOptions::new().writable(true).open(&path).unwrap());
    // The session's first change and flush, exclusive, out of the way.
    vhdx::write_concurrently(&disk, &[0xEE; 512], 0).unwrap();
    vhdx::flush_concurrently(&disk).unwrap();
    // Quarters: sector k of the first stretch is at 512 * (3k + 1).
    let quarter_at = |k: u64, t: u64| 512 * (3 * k + 1) + 128 * t;
    let quarter = |k: u64, t: u64| [0x80 | (t as u8) << 4 | (k % 16) as u8; 128];
    // Whole against part: sector k of the second stretch at 8 MiB + 512 * 2k.
    let pair_at = |k: u64| 8 * MIB + 1024 * k;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let disk = &disk;
            s.spawn(move || {
                for k in 0..SECTORS {
                    vhdx::write_concurrently(disk, &quarter(k, t), quarter_at(k, t)).unwrap();
                    if k % 500 == 499 {
                        vhdx::flush_concurrently(disk).unwrap();
                    }
                }
            });
        }
    });
    std::thread::scope(|s| {
        let disk = &disk;
        s.spawn(move || {
            for k in 0..SECTORS {
                vhdx::write_concurrently(disk, &[0xAA; 512], pair_at(k)).unwrap();
            }
        });
        s.spawn(move || {
            for k in 0..SECTORS {
                vhdx::write_concurrently(disk, &[0x55; 100], pair_at(k)).unwrap();
                if k % 700 == 699 {
                    vhdx::flush_concurrently(disk).unwrap();
                }
            }
        });
    });
    let check = |d: &Disk, when: &str| {
        let mut got = vec![0u8; SIZE as usize];
        d.read_at(&mut got, 0).unwrap();
        let mut want = parent.clone();
        want[..512].fill(0xEE);
        for k in 0..SECTORS {
            for t in 0..4 {
                let at = quarter_at(k, t) as usize;
                want[at..at + 128].copy_from_slice(&quarter(k, t));
            }
            // Either order of the pair: the part last, or the whole.
            let at = pair_at(k) as usize;
            want[at..at + 512].fill(0xAA);
            if got[at..at + 100].iter().all(|&x| x == 0x55) {
                want[at..at + 100].fill(0x55);
            }
        }
        for (i, (g, w)) in got.chunks(512).zip(want.chunks(512)).enumerate() {
            if let Some(j) = g.iter().zip(w).position(|(g, w)| g != w) {
                panic!("sector {i} {when}: byte {j} is {:#04x}, not {:#04x}", g[j], w[j]);
            }
        }
        got
    };
    let d = disk.into_inner().unwrap();
    let model = check(&d, "before closing");
    d.close().unwrap();
    assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    check(&OpenOptions::new().open(&path).unwrap(), "after reopening");
    if let Some((sum, size)) = crate::common::tools::libvhdi_reads_chain(&path, &[&base]) {
        assert_eq!((sum, size), (crate::common::compare::sha256_bytes(&model), SIZE), "libvhdi reads the chain");
    }
}

/// Past the sector bitmap pages a differencing disk holds for shared
/// writers (256 of them, 4 GiB of a disk with 512-byte sectors): writers
/// fall back to the exclusive path, which takes the held pages back, and
/// nothing is lost on the way. Four threads write 4 KiB units over the
/// first 64 KiB of each of the 512 16 MiB stretches of an 8 GiB child
/// (each stretch's bits in its own bitmap page), where the parent holds a
/// pattern, and flush now and then; every unit reads as its last write,
/// with the parent's bytes around it, before and after reopening, and
/// the chain checks clean.
#[test]
fn differencing_writes_past_the_held_bitmap_pages_lose_nothing() {
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 8192 * MIB;
    const STRETCH: u64 = 16 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let parent_piece =
        |stretch: u64| -> Vec<u8> { (0..64 << 10).map(|i| (stretch as u8) ^ (i / 512) as u8 | 1).collect() };
    let (_, path) = child_over(dir.path(), SIZE, |b| {
        for stretch in 0..SIZE / STRETCH {
            b.write_at(&parent_piece(stretch), stretch * STRETCH).unwrap();
        }
    });
    let disk = RwLock::new(OpenOptions::new().writable(true).open(&path).unwrap());
    // Units of thread t: 4 KiB at 16 KiB * k + 4 KiB * t.
    let written = write_units(&disk, 700, 150, 0xD1FF_0000, |rng, t| {
        (rng.next() % (SIZE / STRETCH)) * STRETCH + (rng.next() % 4) * 16384 + t * 4096
    });
    let check = |d: &Disk, when: &str| {
        let mut got = vec![0u8; 64 << 10];
        for stretch in 0..SIZE / STRETCH {
            let mut want = parent_piece(stretch);
            for mine in &written {
                for (&at, &fill) in mine.range(stretch * STRETCH..stretch * STRETCH + (64 << 10)) {
                    let from = (at - stretch * STRETCH) as usize;
                    want[from..from + 4096].fill(fill);
                }
            }
            d.read_at(&mut got, stretch * STRETCH).unwrap();
            assert!(got == want, "stretch {stretch} {when}");
        }
    };
    let d = disk.into_inner().unwrap();
    check(&d, "before closing");
    d.close().unwrap();
    assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    check(&OpenOptions::new().open(&path).unwrap(), "after reopening");
}

/// In `dir`: `base.vhdx`, a dynamic disk of `size` bytes and 1 MiB blocks
/// that `fill` writes, and `child.vhdx`, a differencing child of it with
/// 1 MiB blocks, both closed. Returns their paths (base, child).
fn child_over(
    dir: &std::path::Path,
    size: u64,
    fill: impl FnOnce(&mut Disk),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (base, path) = (dir.join("base.vhdx"), dir.join("child.vhdx"));
    let mut b = Disk::create(&base, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap();
    fill(&mut b);
    b.close().unwrap();
    Disk::create_differencing(&path, &base, Some(1 << 20)).unwrap().close().unwrap();
    (base, path)
}

/// Four threads write 4 KiB units with `write_concurrently`, `writes` each,
/// at the offsets `place(rng, thread)` gives (each thread its own units),
/// each reading back one of its units at random after every write and
/// flushing with `flush_concurrently` every `flush_every` writes. Returns
/// each thread's units with the byte last written there (never 0).
fn write_units(
    disk: &RwLock<Disk>,
    writes: u64,
    flush_every: u64,
    seed: u64,
    place: impl Fn(&mut XorShift, u64) -> u64 + Sync,
) -> Vec<std::collections::BTreeMap<u64, u8>> {
    let place = &place;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                s.spawn(move || {
                    let mut mine = std::collections::BTreeMap::new();
                    let mut rng = XorShift(seed + t);
                    for i in 0..writes {
                        let at = place(&mut rng, t);
                        let fill = (t as u8) << 6 | (i % 63 + 1) as u8;
                        vhdx::write_concurrently(disk, &[fill; 4096], at).unwrap();
                        mine.insert(at, fill);
                        let mut buf = [0u8; 4096];
                        let (&back, &want) = mine.iter().nth((rng.next() % mine.len() as u64) as usize).unwrap();
                        disk.read().unwrap().read_at(&mut buf, back).unwrap();
                        assert!(buf.iter().all(|&x| x == want), "thread {t}: unit at {back:#x}");
                        if i % flush_every == flush_every - 1 {
                            vhdx::flush_concurrently(disk).unwrap();
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Runs `write(b)` for b = 1 to 47 on another thread, flushing with
/// `flush_concurrently` after every eighth, while this thread holds the
/// disk's read lock throughout and calls `check(disk, b)` as each returns.
/// Fails if the writer waits 30 s for the reader to let go, or if the five
/// flushes did not each write a log entry (the lock held shared), or left
/// nothing of blocks 41 to 47 for the next flush.
fn beside_a_held_reader(disk: &RwLock<Disk>, write: impl Fn(u64) + Send, mut check: impl FnMut(&Disk, u64)) {
    let entries = disk.read().unwrap().log_entries_written();
    let held = disk.read().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            for b in 1..48u64 {
                write(b);
                if b % 8 == 0 {
                    vhdx::flush_concurrently(disk).unwrap();
                }
                if tx.send(b).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 47 {
            match rx.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(b) => {
                    check(&held, b);
                    seen.push(b);
                }
                Err(_) => break,
            }
        }
        // Let go in any case, so that a writer that waited can end.
        drop(held);
        assert_eq!(seen.len(), 47, "the writer waited for a reader to let go (blocks done: {seen:?})");
    });
    let d = disk.read().unwrap();
    assert_eq!(d.log_entries_written(), entries + 5, "five flushes held the lock shared and wrote the log");
    assert!(d.has_pending_metadata(), "blocks 41 to 47 wait for the next flush");
}
