//! The transmission phase: requests in, simple replies out.
//!
//! Every request is answered or ends the connection; nothing a client sends
//! can make the server panic or allocate more than [`MAX_PAYLOAD`] bytes for
//! one request. A request that is well framed but wrong (unknown command or
//! flag, out of range, too long, a write to a read-only export) gets an NBD
//! error and the session goes on; a request that cannot be framed (bad magic,
//! the stream ends inside a request) ends the session.
//!
//! The disk lock is held only while the disk is read or written, never while
//! the network is: a slow or stalled client holds up only itself.

use alloc::format;
use alloc::vec;
use std::io::{Read, Write};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::handshake::discard;
use super::proto::*;
use super::{SessionEnd, SessionError, Stats, MAX_PAYLOAD};
use crate::error::{Error, IoErrorKind, Result};
use crate::BlockDevice;

/// The disk for reading; a panic elsewhere (which would be a bug) does not
/// make the disk unusable for every other connection.
pub(crate) fn read_lock<D: ?Sized>(disk: &RwLock<D>) -> RwLockReadGuard<'_, D> {
    disk.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The disk for writing (see [`read_lock`]).
pub(crate) fn write_lock<D: ?Sized>(disk: &RwLock<D>) -> RwLockWriteGuard<'_, D> {
    disk.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `NBD_CMD_TRIM`: the client no longer needs `len` bytes at `offset`.
///
/// NBD makes trimming advisory: the server may discard all, part or none of
/// the range, and the client assumes nothing about its content until it
/// writes it again. This server passes it to [`BlockDevice::discard`]; a
/// [`Disk`](crate::Disk) discards it: whole blocks give their space back
/// (the file shrinks at the next `compact`), and the range reads as zeros
/// in every image type.
pub(crate) fn trim<D: BlockDevice + ?Sized>(disk: &mut D, offset: u64, len: u64) -> Result<()> {
    disk.discard(offset, len)
}

/// How much `write_zeroes` examines and zeroes under one hold of the lock.
const ZERO_CHUNK: u64 = 1 << 20;
/// The granularity at which `write_zeroes` skips ranges already reading zero.
const ZERO_PIECE: usize = 64 << 10;

/// `NBD_CMD_WRITE_ZEROES`: makes `len` bytes at `offset` read as zero, in
/// bounded chunks (the length may be up to 4 GiB; memory stays at two
/// [`ZERO_CHUNK`]s). Pieces that already read as zero are left alone, so
/// zeroing unallocated space allocates nothing; elsewhere zeros are written
/// (in a differencing disk they then hide the parent's data).
fn write_zeroes<D: BlockDevice + ?Sized>(disk: &RwLock<D>, offset: u64, len: u64, fua: bool) -> Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK as usize];
    let mut current = vec![0u8; ZERO_CHUNK as usize];
    let end = offset + len;
    let mut at = offset;
    while at < end {
        // Chunks end on ZERO_CHUNK boundaries so that they line up with blocks.
        let n = (ZERO_CHUNK - at % ZERO_CHUNK).min(end - at) as usize;
        let mut d = write_lock(disk);
        d.read_at(&mut current[..n], at)?;
        let mut piece = 0;
        while piece < n {
            let pos = at + piece as u64;
            let m = (ZERO_PIECE - (pos % ZERO_PIECE as u64) as usize).min(n - piece);
            if current[piece..piece + m].iter().any(|&b| b != 0) {
                d.write_at(&zeros[..m], at + piece as u64)?;
            }
            piece += m;
        }
        drop(d);
        at += n as u64;
    }
    if fua {
        write_lock(disk).flush()?;
    }
    Ok(())
}

/// The NBD error for a library error.
fn errno(e: &Error) -> u32 {
    match e {
        Error::ReadOnly => EPERM,
        Error::InvalidArgument(_) | Error::OutOfRange { .. } => EINVAL,
        Error::Io { source, .. } => match source.kind() {
            IoErrorKind::StorageFull => ENOSPC,
            _ => EIO,
        },
        Error::File { inner, .. } => errno(inner),
        _ => EIO,
    }
}

fn to_errno(result: Result<()>) -> u32 {
    match result {
        Ok(()) => 0,
        Err(e) => errno(&e),
    }
}

/// Reads the next request header; `None` when the stream ends cleanly
/// before it (the client closed the connection between requests).
fn read_request<S: Read>(s: &mut S) -> std::io::Result<Option<Request>> {
    let mut head = [0u8; REQUEST_LEN];
    let mut filled = 0;
    while filled < REQUEST_LEN {
        match s.read(&mut head[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the client closed the connection {filled} bytes into a request header"),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Request::decode(&head)))
}

fn send_reply<S: Write>(s: &mut S, error: u32, handle: u64) -> std::io::Result<()> {
    let mut head = [0u8; SIMPLE_REPLY_LEN];
    encode_simple_reply(&mut head, error, handle);
    s.write_all(&head)?;
    s.flush()
}

/// Whether `[offset, offset + len)` lies inside an export of `size` bytes.
fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// What the reader makes of one request: the end of the session, or work
/// for the disk (with an error already decided when it is malformed).
enum Step {
    Disconnect,
    Work(Job),
}

/// One request to answer.
struct Job {
    req: Request,
    /// A write's payload.
    payload: alloc::vec::Vec<u8>,
    /// Refused before the disk sees it (a malformed or forbidden request).
    refused: Option<u32>,
}

/// A request's answer: an NBD error, and for a successful read the reply
/// buffer (header room, then the data), sent in one write.
struct Answer {
    error: u32,
    reply: Option<alloc::vec::Vec<u8>>,
}

/// Reads the next request and, for a write, its payload; checks what can
/// be checked without the disk. `None` when the client closed cleanly.
fn next_step<S: Read>(s: &mut S, size: u64, read_only: bool) -> core::result::Result<Option<Step>, SessionError> {
    let Some(req) = read_request(s)? else {
        return Ok(None);
    };
    if req.magic != REQUEST_MAGIC {
        return Err(SessionError::Protocol(format!("bad request magic {:#010x}", req.magic)));
    }
    let len = req.length as u64;
    let mut payload = alloc::vec::Vec::new();
    let refused = match req.kind {
        CMD_READ if req.flags & !CMD_FLAG_FUA != 0 || req.length > MAX_PAYLOAD || !in_range(req.offset, len, size) => {
            Some(EINVAL)
        }
        CMD_READ => None,
        CMD_WRITE if req.length > MAX_PAYLOAD => {
            // Stay in step with the client: skip the payload, then refuse.
            discard(s, len)?;
            Some(EINVAL)
        }
        CMD_WRITE => {
            payload = vec![0u8; req.length as usize];
            s.read_exact(&mut payload)?;
            if req.flags & !CMD_FLAG_FUA != 0 {
                Some(EINVAL)
            } else if read_only {
                Some(EPERM)
            } else if !in_range(req.offset, len, size) {
                Some(ENOSPC)
            } else {
                None
            }
        }
        CMD_DISC => return Ok(Some(Step::Disconnect)),
        CMD_FLUSH if req.flags & !CMD_FLAG_FUA != 0 => Some(EINVAL),
        CMD_FLUSH => None,
        CMD_TRIM if req.flags & !CMD_FLAG_FUA != 0 => Some(EINVAL),
        CMD_TRIM if read_only => Some(EPERM),
        CMD_TRIM if !in_range(req.offset, len, size) => Some(EINVAL),
        CMD_TRIM => None,
        CMD_WRITE_ZEROES if req.flags & !(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) != 0 => Some(EINVAL),
        CMD_WRITE_ZEROES if read_only => Some(EPERM),
        CMD_WRITE_ZEROES if !in_range(req.offset, len, size) => Some(ENOSPC),
        CMD_WRITE_ZEROES => None,
        _ => Some(EINVAL),
    };
    Ok(Some(Step::Work(Job { req, payload, refused })))
}

/// Runs one checked request against the disk, counting what succeeded.
/// Reads and writes (through [`crate::write_concurrently`]) hold the disk
/// shared; everything else holds it exclusively only as long as it must.
fn execute<D: BlockDevice + ?Sized>(job: Job, disk: &RwLock<D>, stats: &mut Stats) -> Answer {
    let Job { req, payload, refused } = job;
    let len = req.length as u64;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let mut reply = None;
    let error = match refused {
        Some(e) => e,
        None => match req.kind {
            CMD_READ => {
                // One buffer for header and data: one write, bounded by MAX_PAYLOAD.
                let mut buf = vec![0u8; SIMPLE_REPLY_LEN + req.length as usize];
                let error = to_errno(read_lock(disk).read_at(&mut buf[SIMPLE_REPLY_LEN..], req.offset));
                if error == 0 {
                    stats.bytes_read += len;
                    reply = Some(buf);
                }
                error
            }
            CMD_WRITE => {
                let mut result = crate::block::write_concurrently(disk, &payload, req.offset);
                if result.is_ok() && fua {
                    result = crate::block::flush_concurrently(disk);
                }
                if result.is_ok() {
                    stats.bytes_written += len;
                }
                to_errno(result)
            }
            CMD_FLUSH => {
                let error = to_errno(crate::block::flush_concurrently(disk));
                if error == 0 {
                    stats.flushes += 1;
                }
                error
            }
            CMD_TRIM => {
                let mut d = write_lock(disk);
                let mut result = trim(&mut *d, req.offset, len);
                if result.is_ok() && fua {
                    result = d.flush();
                }
                if result.is_ok() {
                    stats.bytes_trimmed += len;
                }
                to_errno(result)
            }
            CMD_WRITE_ZEROES => {
                let result = write_zeroes(disk, req.offset, len, fua);
                if result.is_ok() {
                    stats.bytes_zeroed += len;
                }
                to_errno(result)
            }
            _ => EINVAL,
        },
    };
    if error != 0 {
        stats.errors += 1;
    }
    Answer { error, reply }
}

/// Sends `answer` to request `handle`.
fn answer<W: Write>(w: &mut W, answer: Answer, handle: u64) -> std::io::Result<()> {
    match answer.reply {
        Some(mut buf) => {
            encode_simple_reply((&mut buf[..SIMPLE_REPLY_LEN]).try_into().expect("16 bytes"), 0, handle);
            w.write_all(&buf)?;
            w.flush()
        }
        None => send_reply(w, answer.error, handle),
    }
}

/// Serves requests one at a time until the client disconnects or breaks
/// the framing.
pub(crate) fn transmit<S: Read + Write, D: BlockDevice + ?Sized>(
    s: &mut S,
    disk: &RwLock<D>,
    size: u64,
    read_only: bool,
    stats: &mut Stats,
) -> core::result::Result<SessionEnd, SessionError> {
    loop {
        let step = next_step(s, size, read_only)?;
        let Some(step) = step else { return Ok(SessionEnd::Closed) };
        stats.requests += 1;
        let Step::Work(job) = step else { return Ok(SessionEnd::Disconnect) };
        let handle = job.req.handle;
        let done = execute(job, disk, stats);
        answer(s, done, handle)?;
    }
}

/// Requests at most waiting for a worker, per worker; with the one being
/// read and those running, a client holds at most
/// `(2 * workers + 1) * MAX_PAYLOAD` bytes of payload in the server.
const QUEUED_PER_WORKER: usize = 1;

/// Serves requests of one client with `workers` threads at once: this
/// thread reads requests (and write payloads) from `reader`, workers run
/// them against the disk and send each reply through `writer` as soon as
/// it is ready — out of order, as NBD allows (the handle tells them
/// apart). A flush waits for the writes in flight and covers every write
/// already answered. Ends when the client disconnects (after the requests
/// before it are answered) or a reply cannot be sent.
pub(crate) fn transmit_parallel<R: Read, W: Write + Send, D: BlockDevice + Send + Sync + ?Sized>(
    reader: &mut R,
    writer: W,
    disk: &RwLock<D>,
    size: u64,
    read_only: bool,
    stats: &mut Stats,
    workers: usize,
) -> core::result::Result<SessionEnd, SessionError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Mutex};
    let out = Mutex::new((writer, None::<std::io::Error>));
    let broken = AtomicBool::new(false);
    let totals = Mutex::new(Stats::default());
    let workers = workers.max(1);
    let (tx, rx) = mpsc::sync_channel::<Job>(workers * QUEUED_PER_WORKER);
    let rx = Mutex::new(rx);
    let end = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut mine = Stats::default();
                loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(job) = job else { break };
                    let handle = job.req.handle;
                    let done = execute(job, disk, &mut mine);
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    if o.1.is_none() {
                        if let Err(e) = answer(&mut o.0, done, handle) {
                            o.1 = Some(e);
                            broken.store(true, Ordering::SeqCst);
                        }
                    }
                }
                totals.lock().unwrap_or_else(|p| p.into_inner()).add(&mine);
            });
        }
        let end = loop {
            if broken.load(Ordering::SeqCst) {
                break Ok(SessionEnd::Closed);
            }
            let step = match next_step(reader, size, read_only) {
                Ok(Some(step)) => step,
                Ok(None) => break Ok(SessionEnd::Closed),
                Err(e) => break Err(e),
            };
            stats.requests += 1;
            let Step::Work(job) = step else { break Ok(SessionEnd::Disconnect) };
            if tx.send(job).is_err() {
                break Ok(SessionEnd::Closed);
            }
        };
        drop(tx);
        end
    });
    stats.add(&totals.into_inner().unwrap_or_else(|p| p.into_inner()));
    if let Some(e) = out.into_inner().unwrap_or_else(|p| p.into_inner()).1 {
        return Err(SessionError::Io(e));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert!(in_range(0, 0, 0));
        assert!(in_range(512, 512, 1024));
        assert!(!in_range(513, 512, 1024));
        assert!(!in_range(u64::MAX, 1, u64::MAX));
        assert!(!in_range(u64::MAX - 1, 4, 1024));
    }

    #[test]
    fn library_errors_map_to_nbd_errors() {
        assert_eq!(errno(&Error::ReadOnly), EPERM);
        assert_eq!(errno(&Error::OutOfRange { offset: 0, len: 1, size: 0 }), EINVAL);
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "full");
        assert_eq!(errno(&Error::Io { op: "writing payload", offset: 0, source: full.into() }), ENOSPC);
        let other = std::io::Error::other("broken");
        assert_eq!(errno(&Error::Io { op: "writing payload", offset: 0, source: other.into() }.in_file("x")), EIO);
        assert_eq!(errno(&Error::corrupt("BAT", 0, "bad")), EIO);
    }
}
