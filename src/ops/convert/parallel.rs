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
//! instead. The bytes written are the same either way: every non-zero grain,
//! nothing else.

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

/// The work: `runs` widened to whole aligned pages (within `size`: the
/// widening reads what the source presents there, zeros or data, and the
/// zero scan drops what is zero), joined, and cut at multiples of [`CHUNK`].
fn chunks(size: u64, runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut joined: Vec<(u64, u64)> = Vec::new();
    for &(start, len) in runs {
        let (s, e) = (start / ALIGN * ALIGN, (start + len).next_multiple_of(ALIGN).min(size));
        match joined.last_mut() {
            Some((_, end)) if *end >= s => *end = (*end).max(e),
            _ => joined.push((s, e)),
        }
    }
    let mut out = Vec::new();
    for (mut pos, end) in joined {
        while pos < end {
            let n = (CHUNK - pos % CHUNK).min(end - pos);
            out.push((pos, n));
            pos += n;
        }
    }
    out
}

/// Writes `buf` at `at`: its aligned part through `direct` while that is
/// on, the rest (and everything once a direct write is refused) through
/// `file`.
fn write(file: &File, direct: Option<&File>, direct_on: &AtomicBool, buf: &[u8], at: u64) -> std::io::Result<()> {
    let aligned = (buf.len() as u64 / ALIGN * ALIGN) as usize;
    let mut done = 0;
    if let Some(d) = direct.filter(|_| aligned > 0 && at % ALIGN == 0 && direct_on.load(Ordering::Relaxed)) {
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

/// Copies the non-zero grains of `runs` (virtual ranges of a source of
/// `size` bytes) to the raw image `file` (sized already), with `direct`
/// its direct-I/O descriptor if there is one; `progress(done, size)` is
/// called on this thread. Returns the bytes written.
pub(super) fn copy_to_raw(
    size: u64,
    runs: &[(u64, u64)],
    read: &(dyn Fn(&mut [u8], u64) -> Result<()> + Sync),
    file: &File,
    direct: Option<&File>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let work = chunks(size, runs);
    let total: u64 = work.iter().map(|c| c.1).sum();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let direct_on = AtomicBool::new(direct.is_some());
    progress(0, size);
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<u64>();
        let handles: Vec<_> = (0..WORKERS.min(work.len()))
            .map(|_| {
                let tx = tx.clone();
                let (work, next, failed, direct_on) = (&work, &next, &failed, &direct_on);
                s.spawn(move || -> Result<u64> {
                    let mut pages = alloc::vec![Page([0; ALIGN as usize]); (CHUNK / ALIGN) as usize];
                    let buf = zerocopy::IntoBytes::as_mut_bytes(pages.as_mut_slice());
                    let mut written = 0u64;
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&(at, n)) = work.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        let chunk = &mut buf[..n as usize];
                        let step = (|| {
                            read(chunk, at)?;
                            for (off, len) in nonzero_spans(chunk, at) {
                                let at = at + off as u64;
                                write(file, direct, direct_on, &chunk[off..off + len], at)
                                    .during("writing the raw image", at)?;
                                written += len as u64;
                            }
                            Ok(())
                        })();
                        if let Err(e) = step {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        let _ = tx.send(n);
                    }
                    Ok(written)
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
    for r in results {
        written += r?;
    }
    progress(size, size);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned_joined_and_cut() {
        const MIB: u64 = 1 << 20;
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
    }
}
