//! The raw output's copy on Unix: several workers, each reading a chunk of
//! the source, skipping its zero grains and writing the rest, so reads,
//! zero scans and writes overlap (as `qemu-img convert` keeps several
//! requests in flight).
//!
//! On Linux the chunks go to the file with direct I/O (`O_DIRECT`, a
//! second descriptor of the same file) when the filesystem takes it:
//! written from aligned buffers straight to the device, they need no page
//! cache — which for a file of gigabytes costs more than the copy itself —
//! and leave no gigabytes of dirty pages for the final sync, which then has
//! only the file's metadata left to flush. A filesystem without direct I/O
//! (tmpfs), or a request it refuses, is written through the page cache
//! instead, and so are writes shorter than 64 KiB (a direct write waits for
//! the device). The output presents the same bytes either way.
//!
//! An output that will not be synced (`convert --no-sync`, like
//! `qemu-img convert`) is written through the page cache by four workers,
//! into the same preallocated ranges: filling the page cache is all such a
//! copy must do, and with the space allocated beforehand it copied 2 GiB in
//! 0.5–0.6 s here, against 1.7–1.9 s for direct writes on the same day.
//! One direct writer beside three page-cache ones measured 0.8–1.1 s. On a
//! virtual machine whose freed memory has gone back to the host, filling
//! the page cache can take several times longer, as `qemu-img convert`'s
//! does.
//!
//! Before a direct copy the ranges to be copied are allocated at once
//! (`fallocate`): ext4 runs direct writes into allocated space side by side
//! under a shared lock, where a write into a hole holds the file's lock
//! until the device is done, one at a time. The zero grains of those ranges
//! are punched out again once the copy is done where they are 64 KiB or
//! more (until then they are allocated and read as zeros); shorter zeros
//! between data are written with it, in one request.

use alloc::vec::Vec;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use super::{nonzero_spans, ZERO_GRAIN};
use crate::error::{IoContext, Result};

/// Bytes a worker reads and writes at once; chunks start at multiples of it.
const CHUNK: u64 = 4 << 20;
/// Workers: enough to keep a read, a scan and a device write or two going.
const WORKERS: usize = 3;
/// Workers of an unsynced copy, all writing through the page cache.
const UNSYNCED_WORKERS: usize = 4;
/// Non-zero spans of a chunk closer than this are written as one, the zeros
/// between included, when the output was preallocated; zeros at least this
/// long are punched out again afterwards.
const JOIN: usize = 64 << 10;
/// Shorter writes go through the page cache: a direct write waits for the
/// device, which a chunk of scattered grains would do thousands of times.
const DIRECT_MIN: usize = 64 << 10;
/// The alignment of direct I/O: offsets, lengths and buffer addresses.
const ALIGN: u64 = 4096;
// Zero grains start at multiples of `ALIGN`: the spans written stay aligned.
const _: () = assert!(ZERO_GRAIN == ALIGN);

/// An aligned page of a worker's buffer, so direct I/O can take its bytes.
#[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout)]
#[repr(C, align(4096))]
struct Page([u8; ALIGN as usize]);

/// `file` opened a second time for direct I/O, when the platform and the
/// filesystem have it and it is the same file (the path was not replaced).
pub(super) fn open_direct(path: &std::path::Path, file: &File) -> Option<File> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let direct =
            std::fs::OpenOptions::new().write(true).custom_flags(nix::fcntl::OFlag::O_DIRECT.bits()).open(path).ok()?;
        let (a, b) = (direct.metadata().ok()?, file.metadata().ok()?);
        (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (path, file);
        None
    }
}

/// The ranges copied, `(start, end)`: `runs` widened to whole aligned
/// pages (within `size`: the widening reads what the source presents there,
/// zeros or data, and the zero scan drops what is zero), and joined.
fn ranges(size: u64, runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut joined: Vec<(u64, u64)> = Vec::new();
    for &(start, len) in runs {
        let (s, e) = (start / ALIGN * ALIGN, (start + len).next_multiple_of(ALIGN).min(size));
        match joined.last_mut() {
            Some((_, end)) if *end >= s => *end = (*end).max(e),
            _ => joined.push((s, e)),
        }
    }
    joined
}

/// The work: `ranges` cut at multiples of [`CHUNK`], as `(start, len)`.
fn chunks(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut pos, end) in ranges {
        while pos < end {
            let n = (CHUNK - pos % CHUNK).min(end - pos);
            out.push((pos, n));
            pos += n;
        }
    }
    out
}

/// Allocates `ranges` of `file` (Linux), and says whether any of it may have
/// been: on a filesystem without `fallocate`, or one that is full, the copy
/// goes on into holes.
fn preallocate(file: &File, ranges: &[(u64, u64)]) -> bool {
    #[cfg(target_os = "linux")]
    for (i, &(start, end)) in ranges.iter().enumerate() {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(at), Ok(n)) = (i64::try_from(start), i64::try_from(end - start)) else { return i > 0 };
        if fallocate(file, FallocateFlags::empty(), at, n).is_err() {
            // A failed call may have allocated part of its range.
            return true;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    cfg!(target_os = "linux") && !ranges.is_empty()
}

/// Gives back the space of `gaps` (`(start, len)`: the zero grains of the
/// preallocated ranges) where they, joined, are at least [`JOIN`] long, so
/// the output is sparse but for zeros shorter than that between data. They
/// read as zeros either way: a failure here (a filesystem that cannot punch
/// holes) costs space, not bytes, and is ignored.
fn punch(file: &File, mut gaps: Vec<(u64, u64)>) {
    gaps.sort_unstable();
    let mut joined: Vec<(u64, u64)> = Vec::with_capacity(gaps.len());
    for (at, len) in gaps {
        match joined.last_mut() {
            Some((s, l)) if *s + *l == at => *l += len,
            _ => joined.push((at, len)),
        }
    }
    #[cfg(target_os = "linux")]
    for (at, len) in joined.into_iter().filter(|g| g.1 >= JOIN as u64) {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else { continue };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if fallocate(file, flags, at, len).is_err() {
            return;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, joined);
}

/// The spans of `[0, n)` that `spans` (sorted, within it) leave out.
fn complement(spans: &[(usize, usize)], n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let starts = core::iter::once(0).chain(spans.iter().map(|&(at, len)| at + len));
    let ends = spans.iter().map(|&(at, _)| at).chain(core::iter::once(n));
    starts.zip(ends).filter(|(s, e)| e > s).map(|(s, e)| (s, e - s))
}

/// The writes of a chunk's non-zero `spans`: each span, or, when the
/// output was preallocated (`join`: the space is taken either way), spans
/// less than [`JOIN`] apart as one, the zeros between included, so a chunk
/// of scattered grains is not thousands of small writes.
fn requests(spans: &[(usize, usize)], join: bool) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for &(at, len) in spans {
        match out.last_mut() {
            Some((s, l)) if join && at - (*s + *l) < JOIN => *l = at + len - *s,
            _ => out.push((at, len)),
        }
    }
    out
}

/// Writes `buf` at `at`: its aligned part through `direct` while that is
/// on, if it is at least [`DIRECT_MIN`] long, the rest (and everything once
/// a direct write is refused) through `file`.
fn write(file: &File, direct: Option<&File>, direct_on: &AtomicBool, buf: &[u8], at: u64) -> std::io::Result<()> {
    let aligned = (buf.len() as u64 / ALIGN * ALIGN) as usize;
    let mut done = 0;
    if let Some(d) = direct.filter(|_| aligned >= DIRECT_MIN && at % ALIGN == 0 && direct_on.load(Ordering::Relaxed)) {
        match d.write_all_at(&buf[..aligned], at) {
            Ok(()) => done = aligned,
            // Refused (an alignment the device wants larger, a filesystem
            // that takes the flag but not the write): the page cache from now.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => direct_on.store(false, Ordering::Relaxed),
            Err(e) => return Err(e),
        }
    }
    if done < buf.len() {
        file.write_all_at(&buf[done..], at + done as u64)?;
    }
    Ok(())
}

/// What a worker wrote: its non-zero bytes, and the zero grains it left in
/// preallocated ranges, `(start, len)`.
type WorkerDone = (u64, Vec<(u64, u64)>);

/// Copies the non-zero grains of `runs` (virtual ranges of a source of
/// `size` bytes) to the raw image `file` (sized already), with `direct`
/// its direct-I/O descriptor if there is one, written through when the
/// output will be `synced` (else the page cache takes it all);
/// `progress(done, size)` is called on this thread. Returns the bytes
/// written.
pub(super) fn copy_to_raw(
    size: u64,
    runs: &[(u64, u64)],
    read: &(dyn Fn(&mut [u8], u64) -> Result<()> + Sync),
    file: &File,
    direct: Option<&File>,
    synced: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let ranges = ranges(size, runs);
    let work = chunks(&ranges);
    let total: u64 = work.iter().map(|c| c.1).sum();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let direct_on = AtomicBool::new(direct.is_some());
    progress(0, size);
    let preallocated = direct.is_some() && preallocate(file, &ranges);
    let results: Vec<Result<WorkerDone>> = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<u64>();
        let (workers, direct) = if synced { (WORKERS, direct) } else { (UNSYNCED_WORKERS, None) };
        let handles: Vec<_> = (0..workers.min(work.len()))
            .map(|_| {
                let tx = tx.clone();
                let (work, next, failed, direct_on) = (&work, &next, &failed, &direct_on);
                s.spawn(move || -> Result<WorkerDone> {
                    let mut pages = alloc::vec![Page([0; ALIGN as usize]); (CHUNK / ALIGN) as usize];
                    let buf = zerocopy::IntoBytes::as_mut_bytes(pages.as_mut_slice());
                    let mut written = 0u64;
                    // The zero grains of preallocated ranges, to punch out.
                    let mut gaps = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&(at, n)) = work.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        let chunk = &mut buf[..n as usize];
                        let step = (|| {
                            read(chunk, at)?;
                            let spans = nonzero_spans(chunk, at);
                            written += spans.iter().map(|s| s.1 as u64).sum::<u64>();
                            if preallocated {
                                // Only zeros that may be punched: `JOIN` or
                                // more, or at an end of the chunk (they may
                                // join a neighbour's); the rest stays allocated.
                                let n = chunk.len();
                                let punchable =
                                    complement(&spans, n).filter(|&(o, l)| o == 0 || o + l == n || l >= JOIN);
                                gaps.extend(punchable.map(|(o, l)| (at + o as u64, l as u64)));
                            }
                            for (off, len) in requests(&spans, preallocated) {
                                let at = at + off as u64;
                                write(file, direct, direct_on, &chunk[off..off + len], at)
                                    .during("writing the raw image", at)?;
                            }
                            Ok(())
                        })();
                        if let Err(e) = step {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        let _ = tx.send(n);
                    }
                    Ok((written, gaps))
                })
            })
            .collect();
        drop(tx);
        // Progress in virtual bytes: the share of the work done, of the size.
        let mut done = 0u64;
        for n in rx {
            done += n;
            progress((done as u128 * size as u128 / total.max(1) as u128) as u64, size);
        }
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut written = 0;
    let mut gaps = Vec::new();
    for r in results {
        let (w, g) = r?;
        written += w;
        gaps.extend(g);
    }
    punch(file, gaps);
    progress(size, size);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned_joined_and_cut() {
        const MIB: u64 = 1 << 20;
        let chunks = |size, runs: &[(u64, u64)]| chunks(&ranges(size, runs));
        // A sector-sized run widened to its page; two runs in one page joined.
        assert_eq!(chunks(64 * MIB, &[(4096 + 512, 512)]), alloc::vec![(4096, 4096)]);
        assert_eq!(chunks(64 * MIB, &[(0, 100), (200, 100), (8192, 1)]), alloc::vec![(0, 4096), (8192, 4096)]);
        // Cut at multiples of the chunk; the end clipped to the size.
        assert_eq!(
            chunks(CHUNK + 1000, &[(CHUNK - 512, 1024 + 100)]),
            alloc::vec![(CHUNK - 4096, 4096), (CHUNK, 1000)]
        );
        assert_eq!(chunks(3 * CHUNK, &[(0, 3 * CHUNK)]).len(), 3);
        assert!(chunks(MIB, &[]).is_empty());
        assert_eq!(
            ranges(64 * MIB, &[(0, 100), (4096, 1), (3 * MIB, MIB)]),
            alloc::vec![(0, 8192), (3 * MIB, 4 * MIB)]
        );
    }

    #[test]
    fn close_spans_are_joined_only_when_the_gaps_are_punched() {
        let spans = [(0, 4096), (8192, 4096), (12288 + JOIN, 4096), (20 << 20, 4096)];
        assert_eq!(requests(&spans, false), spans.to_vec());
        assert_eq!(requests(&spans, true), alloc::vec![(0, 12288), (12288 + JOIN, 4096), (20 << 20, 4096)]);
        assert!(requests(&[], true).is_empty());
    }

    #[test]
    fn the_complement_is_what_the_spans_leave_out() {
        let c = |spans: &[(usize, usize)], n| complement(spans, n).collect::<Vec<_>>();
        assert_eq!(c(&[], 10), alloc::vec![(0, 10)]);
        assert_eq!(c(&[(0, 10)], 10), alloc::vec![]);
        assert_eq!(c(&[(2, 3), (7, 1)], 10), alloc::vec![(0, 2), (5, 2), (8, 2)]);
        assert_eq!(c(&[(0, 4), (6, 4)], 10), alloc::vec![(4, 2)]);
        assert_eq!(c(&[], 0), alloc::vec![]);
    }
}
