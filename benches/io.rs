//! Sector I/O through VHDX images side by side with the same operations on a
//! raw file, in one run, so the ratios compare like with like.
//!
//! `cargo bench --bench io`. Groups and function names are stable across
//! versions (see BENCHMARKS.md):
//! - `read_4k_random`, `read_1m_sequential`: `raw`, `fixed`, `dynamic`,
//!   `differencing_depth1`, `differencing_depth8`, the same for VHD
//!   (`vhd_fixed`, `vhd_dynamic`, `vhd_differencing_depth1`), and
//!   `raw_copy` (a second raw file measured last: how far two raw files
//!   differ is the noise floor)
//! - `write_4k_random`: `raw`, `fixed`, `dynamic_allocated`, `differencing_depth1`
//! - `write_1m_first_touch`: `raw`, `dynamic` (every write allocates a new
//!   block; both flush every 64 writes, the image through its crash-safe
//!   metadata path: payload flush, log entry, flush, BAT in place, flush)
//!
//! - `open_64t`: `dynamic`, opening a 64 TiB dynamic image
//! - `open_64t_1m`: `raw`, `depth1`, `depth8`, opening a 64 TiB image of
//!   1 MiB blocks alone and as the leaf of a chain of eight
//! - `threads_read_4k`, `threads_write_4k`: `raw/N` and `dynamic/N`, 4 KiB
//!   random reads and writes into allocated space from N = 1, 2, 4 threads
//!   at once on one file
//! - `threads_read_4k_allocating`: `raw/N`, `dynamic/N` and
//!   `differencing/N`, the same reads from N = 1, 2 threads while one more
//!   thread makes new blocks (a 4 KiB write at the start of each next MiB
//!   past the data; in a differencing child, a partially present block and
//!   its sectors' bits)
//!
//! Images are 1 GiB, files are page-cache warm: for reads, evicted and read
//! back sequentially; for 4 KiB writes, evicted and warmed by one pass of the
//! workload's own writes (see `warm_for_writes` for why it matters).
//! `VHDX_BENCH_DIR` chooses where the files go (default: a temp directory).

use std::fs::{File, OpenOptions as FsOpen};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use vhdx::{CreateOptions, Disk, OpenOptions};

const SIZE: u64 = 1 << 30;
const CHAIN: usize = 8;
const BLOCK: u64 = 2 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fill(seed: u8) -> Vec<u8> {
    (0..(1u32 << 20)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Random 4 KiB-aligned offsets, the same sequence for every function.
fn offsets(count: usize, span: u64, align: u64) -> Vec<u64> {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    (0..count).map(|_| rng.next() % (span / align) * align).collect()
}

struct Fixture {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Fixture {
    fn new() -> Fixture {
        let (dir, tmp) = match std::env::var_os("VHDX_BENCH_DIR") {
            Some(d) => (PathBuf::from(d), None),
            None => {
                let t = tempfile::Builder::new().prefix("vhdx-bench").tempdir().expect("temp dir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let f = Fixture { dir, _tmp: tmp };
        f.build();
        f
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn build(&self) {
        let data = fill(7);
        // Raw reference file, fully written, and a second one measured last
        // in the read groups (`raw_copy`): the spread between the two is the
        // noise floor of a ratio on this machine.
        for name in ["raw.img", "raw2.img"] {
            let raw = File::create(self.p(name)).unwrap();
            for i in 0..SIZE >> 20 {
                raw.write_all_at(&data, i << 20).unwrap();
            }
        }
        // Fixed and fully allocated dynamic images with the same content.
        for (name, opts) in [("fixed.vhdx", CreateOptions::fixed(SIZE)), ("dynamic.vhdx", CreateOptions::dynamic(SIZE))]
        {
            let mut d = Disk::create(self.p(name), &opts).unwrap();
            for i in 0..SIZE >> 20 {
                d.write_at(&data, i << 20).unwrap();
            }
            d.close().unwrap();
        }
        // The same as VHDs (2 MiB blocks, as Windows makes them), and a VHD
        // child over the dynamic one written as chain1 below.
        {
            use vhdx::vhd::{VhdCreateOptions, VhdDisk};
            for (name, opts) in
                [("vhd_fixed.vhd", VhdCreateOptions::fixed(SIZE)), ("vhd_dynamic.vhd", VhdCreateOptions::dynamic(SIZE))]
            {
                let mut d = VhdDisk::create(self.p(name), &opts).unwrap();
                for i in 0..SIZE >> 20 {
                    d.write_at(&data, i << 20).unwrap();
                }
                d.flush().unwrap();
            }
            let mut c = VhdDisk::create_differencing(self.p("vhd_chain1.vhd"), self.p("vhd_dynamic.vhd")).unwrap();
            let piece = fill(1);
            let mut block = 1u64;
            while block * BLOCK < SIZE {
                c.write_at(&piece, block * BLOCK + (1 << 20)).unwrap();
                block += (CHAIN + 1) as u64;
            }
            c.flush().unwrap();
        }
        // A chain: a fully allocated base and 8 children; child L owns half of
        // every block whose index is L modulo 9, so data is spread over every
        // level and the children's blocks are partially present.
        let base = self.p("chain0.vhdx");
        std::fs::copy(self.p("dynamic.vhdx"), &base).unwrap();
        for level in 1..=CHAIN {
            let child = self.p(&format!("chain{level}.vhdx"));
            let mut c = Disk::create_differencing(&child, self.p(&format!("chain{}.vhdx", level - 1)), None).unwrap();
            let piece = fill(level as u8);
            let mut block = level as u64;
            while block * BLOCK < SIZE {
                c.write_at(&piece, block * BLOCK + (level as u64 % 2) * (1 << 20)).unwrap();
                block += (CHAIN + 1) as u64;
            }
            c.close().unwrap();
        }
        self.settle();
        // Warm the page cache the same way for every file: how a file's pages
        // came into the cache (written in 1 MiB pieces, copied, read ahead)
        // decides the size of the kernel's folios, and that alone moved a
        // random 4 KiB read by half a microsecond. So evict everything and
        // read the files back sequentially, 1 MiB of each in turn, so no
        // file gets memory in a better state than another.
        let names = self.files();
        for name in &names {
            evict(&self.p(name));
        }
        let files: Vec<File> = names.iter().map(|n| raw_file(&self.p(n), false)).collect();
        let mut chunk = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let mut any = false;
            for f in &files {
                if let Ok(n) = f.read_at(&mut chunk, at) {
                    any |= n > 0;
                }
            }
            if !any {
                break;
            }
            at += 1 << 20;
        }
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> =
            ["raw.img", "raw2.img", "fixed.vhdx", "dynamic.vhdx", "vhd_fixed.vhd", "vhd_dynamic.vhd", "vhd_chain1.vhd"]
                .map(String::from)
                .to_vec();
        names.extend((0..=CHAIN).map(|level| format!("chain{level}.vhdx")));
        names
    }

    /// Writes every dirty page of the fixture back before a measurement, so
    /// no function pays for the kernel's writeback of another's data (a raw
    /// write measured while the build's 4 GiB are still being written back
    /// is throttled, which once made the raw baseline look 9x slower).
    fn settle(&self) {
        for name in self.files() {
            raw_file(&self.p(&name), true).sync_all().unwrap();
        }
    }
}

/// Writes `path` back and drops its pages from the page cache.
fn evict(path: &Path) {
    let f = raw_file(path, true);
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

fn raw_file(path: &Path, write: bool) -> File {
    FsOpen::new().read(true).write(write).open(path).unwrap()
}

fn group<'a>(c: &'a mut Criterion, name: &str, bytes: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes));
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g
}

/// `name`: plain positioned reads of the raw file at `path`, at `offs` in turn.
fn raw_reads(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, path: &Path, buf: &mut [u8], offs: &[u64]) {
    let raw = raw_file(path, false);
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            raw.read_exact_at(buf, offs[i % offs.len()]).unwrap();
            i += 1;
            black_box(&buf);
        })
    });
}

/// `name`: reads through an image (`read(buf, offset)`), at `offs` in turn.
fn image_reads(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    buf: &mut [u8],
    offs: &[u64],
    read: impl Fn(&mut [u8], u64) -> vhdx::Result<()>,
) {
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            read(buf, offs[i % offs.len()]).unwrap();
            i += 1;
            black_box(&buf);
        })
    });
}

fn reads(c: &mut Criterion, fx: &Fixture) {
    let images: Vec<(&str, Disk)> = vec![
        ("fixed", Disk::open(fx.p("fixed.vhdx")).unwrap()),
        ("dynamic", Disk::open(fx.p("dynamic.vhdx")).unwrap()),
        ("differencing_depth1", Disk::open(fx.p("chain1.vhdx")).unwrap()),
        ("differencing_depth8", Disk::open(fx.p(&format!("chain{CHAIN}.vhdx"))).unwrap()),
    ];
    use vhdx::vhd::VhdDisk;
    let vhds: Vec<(&str, VhdDisk)> = vec![
        ("vhd_fixed", VhdDisk::open(fx.p("vhd_fixed.vhd")).unwrap()),
        ("vhd_dynamic", VhdDisk::open(fx.p("vhd_dynamic.vhd")).unwrap()),
        ("vhd_differencing_depth1", VhdDisk::open(fx.p("vhd_chain1.vhd")).unwrap()),
    ];
    for (gname, len, sequential) in [("read_4k_random", 4096u64, false), ("read_1m_sequential", 1 << 20, true)] {
        let offs = if sequential { (0..SIZE / len).map(|i| i * len).collect() } else { offsets(1 << 16, SIZE, 4096) };
        let mut g = group(c, gname, len);
        let mut buf = vec![0u8; len as usize];
        raw_reads(&mut g, "raw", &fx.p("raw.img"), &mut buf, &offs);
        for (name, disk) in &images {
            image_reads(&mut g, name, &mut buf, &offs, |buf, at| disk.read_at(buf, at));
        }
        for (name, disk) in &vhds {
            image_reads(&mut g, name, &mut buf, &offs, |buf, at| disk.read_at(buf, at));
        }
        raw_reads(&mut g, "raw_copy", &fx.p("raw2.img"), &mut buf, &offs);
        g.finish();
    }
}

/// Brings the pages a write workload touches into the page cache by writing
/// them once (`write(offset)` for every offset), then writes them back.
///
/// Pages read into the cache sequentially come in large folios; a 4 KiB
/// write then dirties the whole folio, and writeback throttles the writer
/// to the disk's speed (about 35 µs per write on the reference machine,
/// against 3 µs for pages the writes themselves brought in). Every function
/// of the group starts from the same state: its files evicted, then warmed
/// by its own writes.
fn warm_for_writes(fx: &Fixture, files: &[&str], offs: &[u64], mut write: impl FnMut(u64)) {
    for name in files {
        evict(&fx.p(name));
    }
    for &o in offs {
        write(o);
    }
    fx.settle();
}

fn writes_4k(c: &mut Criterion, fx: &Fixture) {
    let offs = offsets(1 << 16, SIZE, 4096);
    let data = vec![0x5Au8; 4096];
    let mut g = group(c, "write_4k_random", 4096);
    let raw = raw_file(&fx.p("raw.img"), true);
    let mut i = 0usize;
    warm_for_writes(fx, &["raw.img"], &offs, |o| raw.write_all_at(&data, o).unwrap());
    g.bench_function("raw", |b| {
        b.iter(|| {
            raw.write_all_at(&data, offs[i % offs.len()]).unwrap();
            i += 1;
        })
    });
    // The first write into each block of the child allocates it; touch every
    // block first so the loop measures steady-state bitmap-setting writes.
    let mut child = OpenOptions::new().writable(true).open(fx.p("chain1.vhdx")).unwrap();
    for block in 0..SIZE / BLOCK {
        child.write_at(&data[..512], block * BLOCK + 512 * 7).unwrap();
    }
    child.flush().unwrap();
    let mut images: Vec<(&str, &str, Disk)> = vec![
        ("fixed", "fixed.vhdx", Disk::open_writable(fx.p("fixed.vhdx")).unwrap()),
        ("dynamic_allocated", "dynamic.vhdx", Disk::open_writable(fx.p("dynamic.vhdx")).unwrap()),
        ("differencing_depth1", "chain1.vhdx", child),
    ];
    for (name, file, disk) in &mut images {
        let mut i = 0usize;
        warm_for_writes(fx, &[file], &offs, |o| disk.write_at(&data, o).unwrap());
        disk.flush().unwrap();
        fx.settle();
        g.bench_function(*name, |b| {
            b.iter(|| {
                disk.write_at(&data, offs[i % offs.len()]).unwrap();
                i += 1;
            })
        });
    }
    g.finish();
    for (_, _, d) in images {
        d.close().unwrap();
    }
}

/// Runs `op(thread, i)` for `iters` values of `i` split over `threads`
/// threads at once; the wall time of the whole.
fn timed_threads(threads: usize, iters: u64, op: impl Fn(usize, u64) + Sync) -> Duration {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                let mut i = t as u64;
                while i < iters {
                    op(t, i);
                    i += threads as u64;
                }
            });
        }
    });
    start.elapsed()
}

/// 4 KiB random reads (`threads_read_4k`) and writes into allocated space
/// (`threads_write_4k`) from N threads at once on one file: `raw/N` with
/// positioned I/O on one shared raw file, `dynamic/N` through one fully
/// allocated dynamic image shared as `RwLock<Disk>` (reads under the
/// shared lock, writes with `write_concurrently`), for N = 1, 2, 4.
/// Throughput is per operation, so a ratio image/raw compares like with like.
fn threads_4k(c: &mut Criterion, fx: &Fixture) {
    use std::sync::RwLock;
    let offs = offsets(1 << 16, SIZE, 4096);
    let at = |t: usize, i: u64| offs[((i as usize).wrapping_mul(7) + t * 9973) % offs.len()];
    let data = vec![0x6Bu8; 4096];
    {
        let mut g = group(c, "threads_read_4k", 4096);
        let raw = raw_file(&fx.p("raw.img"), false);
        let disk = RwLock::new(Disk::open(fx.p("dynamic.vhdx")).unwrap());
        for n in [1usize, 2, 4] {
            g.bench_with_input(criterion::BenchmarkId::new("raw", n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    timed_threads(n, iters, |t, i| {
                        let mut buf = [0u8; 4096];
                        raw.read_exact_at(&mut buf, at(t, i)).unwrap();
                        black_box(&buf);
                    })
                })
            });
            g.bench_with_input(criterion::BenchmarkId::new("dynamic", n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    timed_threads(n, iters, |t, i| {
                        let mut buf = [0u8; 4096];
                        disk.read().unwrap().read_at(&mut buf, at(t, i)).unwrap();
                        black_box(&buf);
                    })
                })
            });
        }
        g.finish();
    }
    let mut g = group(c, "threads_write_4k", 4096);
    let raw = raw_file(&fx.p("raw.img"), true);
    warm_for_writes(fx, &["raw.img"], &offs, |o| raw.write_all_at(&data, o).unwrap());
    let disk = RwLock::new(Disk::open_writable(fx.p("dynamic.vhdx")).unwrap());
    warm_for_writes(fx, &["dynamic.vhdx"], &offs, |o| disk.write().unwrap().write_at(&data, o).unwrap());
    disk.write().unwrap().flush().unwrap();
    fx.settle();
    for n in [1usize, 2, 4] {
        g.bench_with_input(criterion::BenchmarkId::new("raw", n), &n, |b, &n| {
            b.iter_custom(|iters| timed_threads(n, iters, |t, i| raw.write_all_at(&data, at(t, i)).unwrap()))
        });
        g.bench_with_input(criterion::BenchmarkId::new("dynamic", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                timed_threads(n, iters, |t, i| vhdx::write_concurrently(&disk, &data, at(t, i)).unwrap())
            })
        });
    }
    g.finish();
    disk.into_inner().unwrap().close().unwrap();
}

/// 4 KiB random reads from N reader threads while one more thread makes new
/// blocks, one per 64 reads (`threads_read_4k_allocating`): `raw/N` reads the
/// raw file while the extra thread writes 4 KiB at the start of each next
/// MiB past its data (the file grows as a dynamic image's does); `dynamic/N`
/// reads a dynamic image of 1 MiB blocks (1 TiB, its first GiB the raw
/// file's bytes) shared as `RwLock<Disk>` while the extra thread writes 4 KiB
/// into each next block it does not store, with `write_concurrently`;
/// `differencing/N` reads a differencing child over that image (the reads
/// go through to the parent) while the extra thread makes the child's new
/// blocks the same way. The time is the readers' alone, per read; the
/// image is flushed between samples, outside the time. A reader that waited for the allocator shows
/// here as a ratio below the plain `threads_read_4k`'s.
fn threads_read_allocating(c: &mut Criterion, fx: &Fixture) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::RwLock;
    const MIB: u64 = 1 << 20;
    let offs = offsets(1 << 16, SIZE, 4096);
    let at = |t: usize, i: u64| offs[((i as usize).wrapping_mul(7) + t * 9973) % offs.len()];
    let data = vec![0x5Au8; 4096];
    let path = fx.p("alloc.vhdx");
    let _ = std::fs::remove_file(&path);
    let mut d = Disk::create(&path, &CreateOptions::dynamic(1 << 40).block_size(MIB as u32)).unwrap();
    let raw = raw_file(&fx.p("raw.img"), true);
    let mut chunk = vec![0u8; MIB as usize];
    for off in (0..SIZE).step_by(MIB as usize) {
        raw.read_exact_at(&mut chunk, off).unwrap();
        d.write_at(&chunk, off).unwrap();
    }
    d.close().unwrap();
    let disk = RwLock::new(Disk::open_writable(&path).unwrap());
    // The session's first change and first new block (headers, the table
    // check) come before any measurement, as in a long-running server.
    vhdx::write_concurrently(&disk, &data, SIZE).unwrap();
    disk.write().unwrap().flush().unwrap();
    evict(&path);
    let f = raw_file(&path, false);
    for off in (0..f.metadata().unwrap().len()).step_by(MIB as usize) {
        let _ = f.read_at(&mut chunk, off);
    }
    fx.settle();
    // Next MiB to make, for each side.
    let (raw_next, image_next) = (AtomicU64::new(SIZE / MIB + 1), AtomicU64::new(SIZE / MIB + 1));
    // Readers' time for `iters` reads over `n` threads while `make` runs
    // `iters / 64` times on one more thread.
    let run = |n: usize, iters: u64, read: &(dyn Fn(u64, &mut [u8]) + Sync), make: &(dyn Fn() + Sync)| {
        std::thread::scope(|s| {
            s.spawn(|| (0..(iters / 64).max(1)).for_each(|_| make()));
            timed_threads(n, iters, |t, i| {
                let mut buf = [0u8; 4096];
                read(at(t, i), &mut buf);
                black_box(&buf);
            })
        })
    };
    let mut g = group(c, "threads_read_4k_allocating", 4096);
    for n in [1usize, 2] {
        g.bench_with_input(criterion::BenchmarkId::new("raw", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                run(n, iters, &|o, buf| raw.read_exact_at(buf, o).unwrap(), &|| {
                    let k = raw_next.fetch_add(1, Ordering::Relaxed);
                    raw.write_all_at(&data, k * MIB).unwrap();
                })
            })
        });
        g.bench_with_input(criterion::BenchmarkId::new("dynamic", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let t = run(n, iters, &|o, buf| disk.read().unwrap().read_at(buf, o).unwrap(), &|| {
                    let k = image_next.fetch_add(1, Ordering::Relaxed);
                    vhdx::write_concurrently(&disk, &data, k * MIB).unwrap();
                });
                disk.write().unwrap().flush().unwrap();
                t
            })
        });
    }
    disk.into_inner().unwrap().close().unwrap();
    // `differencing/N`: the same reads of a child over that image (they go
    // through to the parent's blocks) while the extra thread writes 4 KiB
    // into each next block of the child: a new partially present block and
    // its sectors' bits each time.
    let child_path = fx.p("alloc_child.vhdx");
    let _ = std::fs::remove_file(&child_path);
    Disk::create_differencing(&child_path, &path, Some(MIB as u32)).unwrap().close().unwrap();
    let child = RwLock::new(OpenOptions::new().writable(true).open(&child_path).unwrap());
    vhdx::write_concurrently(&child, &data, SIZE).unwrap();
    child.write().unwrap().flush().unwrap();
    let child_next = AtomicU64::new(SIZE / MIB + 1);
    fx.settle();
    for n in [1usize, 2] {
        g.bench_with_input(criterion::BenchmarkId::new("differencing", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let t = run(n, iters, &|o, buf| child.read().unwrap().read_at(buf, o).unwrap(), &|| {
                    let k = child_next.fetch_add(1, Ordering::Relaxed);
                    vhdx::write_concurrently(&child, &data, k * MIB).unwrap();
                });
                child.write().unwrap().flush().unwrap();
                t
            })
        });
    }
    g.finish();
    child.into_inner().unwrap().close().unwrap();
    raw.set_len(SIZE).unwrap();
    let _ = std::fs::remove_file(&child_path);
    let _ = std::fs::remove_file(&path);
}

fn writes_first_touch(c: &mut Criterion, fx: &Fixture) {
    const FLUSH_EVERY: u64 = 64;
    let data = fill(3);
    let mut g = group(c, "write_1m_first_touch", 1 << 20);
    g.sample_size(20);
    let raw = FsOpen::new().read(true).write(true).create(true).truncate(true).open(fx.p("first.img")).unwrap();
    let mut n = 0u64;
    fx.settle();
    g.bench_function("raw", |b| {
        b.iter(|| {
            raw.write_all_at(&data, n << 20).unwrap();
            n += 1;
            if n % FLUSH_EVERY == 0 {
                raw.sync_data().unwrap();
            }
        })
    });
    // 1 MiB blocks, so each 1 MiB write allocates exactly one new block.
    let mut disk = Disk::create(fx.p("first.vhdx"), &CreateOptions::dynamic(4 << 40).block_size(1 << 20)).unwrap();
    let mut n = 0u64;
    raw.sync_all().unwrap();
    fx.settle();
    g.bench_function("dynamic", |b| {
        b.iter(|| {
            disk.write_at(&data, n << 20).unwrap();
            n += 1;
            if n % FLUSH_EVERY == 0 {
                disk.flush().unwrap();
            }
        })
    });
    g.finish();
    disk.close().unwrap();
    let _ = std::fs::remove_file(fx.p("first.vhdx"));
    let _ = std::fs::remove_file(fx.p("first.img"));
}

/// Opening a 64 TiB dynamic image (default 32 MiB blocks: a 16 MiB BAT, of
/// which an open reads nothing), the file page-cache warm.
fn open_64t(c: &mut Criterion, fx: &Fixture) {
    let path = fx.p("64t.vhdx");
    let _ = std::fs::remove_file(&path);
    Disk::create(&path, &CreateOptions::dynamic(64 << 40)).unwrap().close().unwrap();
    let _ = std::fs::read(&path).unwrap().len();
    let mut g = c.benchmark_group("open_64t");
    g.sample_size(20);
    g.bench_function("dynamic", |b| b.iter(|| black_box(Disk::open(&path).unwrap())));
    g.finish();
    let _ = std::fs::remove_file(&path);
}

/// Opening a 64 TiB dynamic image with 1 MiB blocks (a 512 MiB BAT, read a
/// page at a time when needed, so an open reads none of it), alone
/// (`depth1`) and as the leaf of a chain of eight (`depth8`: a base and seven
/// differencing children, every level holding 64 scattered blocks), beside
/// opening the same file as a plain file and asking its length (`raw`: what
/// any open costs; ext4 holds no 64 TiB raw file). Files page-cache warm.
fn open_64t_1m(c: &mut Criterion, fx: &Fixture) {
    const LEVELS: usize = 8;
    let tib64 = 64u64 << 40;
    let data = fill(7);
    let mut paths = Vec::new();
    for level in 0..LEVELS {
        let path = fx.p(&format!("64t-1m-{level}.vhdx"));
        let _ = std::fs::remove_file(&path);
        let mut d = if level == 0 {
            Disk::create(&path, &CreateOptions::dynamic(tib64).block_size(1 << 20)).unwrap()
        } else {
            Disk::create_differencing(&path, &paths[level - 1], Some(1 << 20)).unwrap()
        };
        for (i, at) in offsets(64, tib64, 1 << 20).into_iter().enumerate() {
            if i % LEVELS == level {
                d.write_at(&data, at).unwrap();
            }
        }
        d.close().unwrap();
        paths.push(path);
    }
    let mut g = c.benchmark_group("open_64t_1m");
    g.sample_size(20);
    g.bench_function("raw", |b| {
        b.iter(|| {
            let f = File::open(&paths[0]).unwrap();
            black_box(f.metadata().unwrap().len())
        })
    });
    g.bench_function("depth1", |b| b.iter(|| black_box(Disk::open(&paths[0]).unwrap())));
    g.bench_function("depth8", |b| b.iter(|| black_box(Disk::open(&paths[LEVELS - 1]).unwrap())));
    g.finish();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
}

fn all(c: &mut Criterion) {
    let fx = Fixture::new();
    open_64t(c, &fx);
    open_64t_1m(c, &fx);
    reads(c, &fx);
    writes_4k(c, &fx);
    threads_4k(c, &fx);
    threads_read_allocating(c, &fx);
    writes_first_touch(c, &fx);
}

criterion_group!(benches, all);
criterion_main!(benches);
