//! Serving a disk over the network with the NBD protocol (Network Block
//! Device), so that QEMU, `nbd-client` (Linux's `/dev/nbdN`), `nbdkit`-style
//! tools and anything else that speaks NBD can read and write it.
//!
//! ```no_run
//! use vhdx::nbd::{ServeOptions, Server};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = vhdx::Disk::open_writable("disk.vhdx")?; // a differencing disk brings its chain
//! let server = Server::bind("127.0.0.1:10809", disk, ServeOptions::default())?;
//! eprintln!("serving on nbd://{}/", server.local_addr()?);
//! let stopper = server.stopper(); // stopper.stop() from another thread ends run()
//! # drop(stopper);
//! let disk = server.run()?; // until stopped; every client's writes are flushed
//! disk.close()?;
//! # Ok(()) }
//! ```
//!
//! # Protocol
//!
//! The server speaks the fixed newstyle handshake (`NBD_FLAG_FIXED_NEWSTYLE`,
//! `NBD_FLAG_NO_ZEROES`) and offers one export, by default the empty name
//! (the "default export"; the empty name is accepted whatever the export is
//! called). Options: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`, `NBD_OPT_INFO`
//! (with `NBD_INFO_EXPORT`, `NBD_INFO_BLOCK_SIZE`, and `NBD_INFO_NAME` /
//! `NBD_INFO_DESCRIPTION` when asked), `NBD_OPT_LIST` and `NBD_OPT_ABORT`;
//! every other option, structured replies and TLS among them, is answered
//! with `NBD_REP_ERR_UNSUP`. Transmission uses simple replies only:
//! `NBD_CMD_READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES` (with
//! `NBD_CMD_FLAG_NO_HOLE`) and `DISC`; `NBD_CMD_FLAG_FUA` is accepted on
//! every command and flushes the disk before the reply.
//!
//! The transmission flags are `HAS_FLAGS`, `SEND_FLUSH`, `SEND_FUA`,
//! `SEND_TRIM`, `SEND_WRITE_ZEROES` and `CAN_MULTI_CONN` (all connections
//! share one disk, so a flush on one covers the writes of all), or
//! `HAS_FLAGS`, `READ_ONLY`, `SEND_FLUSH` and `CAN_MULTI_CONN` for a
//! read-only export. Block sizes: minimum 1 (any offset and length work),
//! preferred 4096, maximum [`MAX_PAYLOAD`] (32 MiB).
//!
//! # Errors, and what a client cannot do
//!
//! A well-framed request that is wrong gets an NBD error and the session
//! continues: an unknown command or flag, a read or trim past the end, or a
//! read or write longer than [`MAX_PAYLOAD`] get `EINVAL` (an oversized
//! write's payload is read and thrown away in small pieces, never held); a
//! write or write-zeroes past the end gets `ENOSPC`; any write, trim or
//! write-zeroes to a read-only export gets `EPERM`; a failure of the disk
//! gets `EIO` (`ENOSPC` when the file system is full). A request that cannot
//! be framed (bad magic, the stream ending inside a request) ends that
//! connection only. No client input is trusted as an allocation size: option
//! data is bounded to 64 KiB, request payloads to [`MAX_PAYLOAD`].
//!
//! # Durability
//!
//! A reply to `NBD_CMD_FLUSH`, or to any command with `NBD_CMD_FLAG_FUA`,
//! is sent after [`Disk::flush`](crate::Disk::flush) returns: the data is then durable, block
//! table included. When a session ends — `NBD_CMD_DISC`, the client closing
//! the connection, a protocol error — the server flushes and clears the log
//! ([`Disk::checkpoint`](crate::Disk::checkpoint)), so the file is a cleanly closed image while no
//! client is connected, even if the process is then killed.
//!
//! # Trim and write-zeroes
//!
//! `NBD_CMD_TRIM` is advisory in NBD, and for now this server keeps the
//! data: a trim succeeds and changes nothing. `NBD_CMD_WRITE_ZEROES` makes
//! the range read as zeros, working in 1 MiB chunks whatever the length, and
//! writes only where the disk does not already read zero (so zeroing
//! unallocated space allocates nothing). `NBD_CMD_FLAG_NO_HOLE` is accepted;
//! zeros are never turned into holes anyway.
//!
//! # Several clients
//!
//! [`Server::run`] serves connections concurrently, one thread each, up to
//! [`ServeOptions::max_connections`] in transmission at once. The disk sits
//! behind a [`RwLock`]: reads run in parallel, writes, flushes and zeroing
//! one at a time, and the lock is never held while the network is used.
//! With [`ServeOptions::once`] the server serves a single client and
//! returns.
//!
//! # Clients that stall
//!
//! No client can keep another from being served by doing nothing. A
//! connection takes a session slot only when its handshake is over, so idle
//! or half-open connections never hold one. Until then it is one of at most
//! [`ServeOptions::max_handshakes`] waiting connections — the one that has
//! waited longest is dropped when another arrives — and its handshake must
//! be over within [`ServeOptions::handshake_timeout`] (10 s by default, the
//! same as `qemu-nbd`), however slowly its bytes come. An established
//! session that goes silent keeps its slot unless
//! [`ServeOptions::idle_timeout`] is set (off by default: a mounted file
//! system is silent for long stretches); its writes are flushed when it
//! ends, however it ends.

mod handshake;
pub(crate) mod proto;
mod server;
mod transmission;

use alloc::string::String;
use std::io::{Read, Write};
use std::sync::RwLock;
use std::time::Duration;

pub use server::{serve, Server, Stopper};

use crate::BlockDevice;

/// The longest read or write this server handles in one request (32 MiB,
/// the size every NBD client respects); the maximum block size it advertises.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The longest export name or description (the protocol's limit on strings).
pub const MAX_STRING: usize = 4096;

/// How a disk is served.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeOptions {
    /// The export's name (at most [`MAX_STRING`] bytes, no NUL). Clients
    /// asking for the empty name (the default export) get it too.
    pub export_name: String,
    /// A description shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`
    /// (at most [`MAX_STRING`] bytes).
    pub description: String,
    /// Refuse writes even when the disk is open for writing. A disk opened
    /// read-only is always exported read-only.
    pub read_only: bool,
    /// Serve one client, then return from [`Server::run`]: the first whose
    /// handshake succeeds (or that ends it itself with `NBD_OPT_ABORT`), once
    /// its session is over. Connections that end before that — closed at
    /// once, stalled past the handshake timeout, dropped to make room — do
    /// not count. One session at a time.
    pub once: bool,
    /// The most clients in transmission at once (at least 1). A client
    /// that completes its handshake while they are all taken waits, before
    /// the final reply, for one to end; while every slot is taken, new
    /// connections are not greeted (they wait among those counted by
    /// [`ServeOptions::max_handshakes`]).
    pub max_connections: usize,
    /// The most connections waiting at once: accepted but not yet in
    /// transmission — in the handshake, or waiting to be greeted or to get a
    /// session slot (at least 1). When another connection arrives, the one
    /// that has waited longest is dropped: a flood of idle connections then
    /// pushes itself out, and a real client, whose handshake takes a few
    /// round trips, is served unless this many connections arrive during it.
    pub max_handshakes: usize,
    /// How long a client may take over its whole handshake, from the
    /// greeting to the option that starts transmission (not per message: a
    /// client trickling bytes is dropped too); `None` (or zero) waits
    /// forever. Time spent waiting for a free session slot does not count.
    pub handshake_timeout: Option<Duration>,
    /// How long an established session may go without sending a byte (or
    /// without taking the server's replies) before the server ends it, with
    /// the usual flush; `None` (the default, or zero) never ends it: an NBD
    /// client with a mounted file system may be idle for hours and has no
    /// way to say it is alive, and closing it would fail its I/O. Set it
    /// when clients that vanish without closing their connection (a lost
    /// network) must not keep a slot of [`ServeOptions::max_connections`].
    pub idle_timeout: Option<Duration>,
    /// Requests of one client run at once by [`Server`] (default 4): a
    /// client with several requests in flight has them answered as each
    /// completes, reads and writes to stored blocks in parallel. 1 answers
    /// them one at a time, in order. ([`serve_connection`], on any stream,
    /// always answers one at a time.)
    pub workers: usize,
}

crate::setters!(ServeOptions {
    export_name: String,
    description: String,
    read_only: bool,
    once: bool,
    max_connections: usize,
    max_handshakes: usize,
    handshake_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    workers: usize,
});

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            export_name: String::new(),
            description: String::new(),
            read_only: false,
            once: false,
            max_connections: 8,
            max_handshakes: 16,
            handshake_timeout: Some(Duration::from_secs(10)),
            idle_timeout: None,
            workers: 4,
        }
    }
}

impl ServeOptions {
    /// Checks the name and description against the protocol's limits.
    pub fn validate(&self) -> std::io::Result<()> {
        for (what, s) in [("export name", &self.export_name), ("description", &self.description)] {
            if s.len() > MAX_STRING || s.contains('\0') {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    alloc::format!("the NBD {what} must be at most {MAX_STRING} bytes without NUL"),
                ));
            }
        }
        Ok(())
    }
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client sent `NBD_OPT_ABORT` during the handshake.
    Aborted,
    /// The client closed the connection between requests without
    /// `NBD_CMD_DISC` (what a killed client does; also how a session ends
    /// when the server is stopped).
    Closed,
}

/// What one session did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Transmission requests received (`NBD_CMD_DISC` included).
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Bytes sent in successful reads.
    pub bytes_read: u64,
    /// Bytes received in successful writes.
    pub bytes_written: u64,
    /// Bytes made zero by successful `NBD_CMD_WRITE_ZEROES`.
    pub bytes_zeroed: u64,
    /// Bytes named by successful `NBD_CMD_TRIM`.
    pub bytes_trimmed: u64,
    /// Successful `NBD_CMD_FLUSH` requests.
    pub flushes: u64,
}

impl Stats {
    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.bytes_zeroed += other.bytes_zeroed;
        self.bytes_trimmed += other.bytes_trimmed;
        self.flushes += other.flushes;
    }
}

/// A session that ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// How it ended.
    pub end: SessionEnd,
    /// What it did.
    pub stats: Stats,
}

/// Why a session ended abnormally. Only that connection is affected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The connection failed, timed out or ended inside a message.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol in a way that cannot be answered (bad
    /// magic, unknown client flags, an unknown export with
    /// `NBD_OPT_EXPORT_NAME`).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The flush at the end of the session failed: writes the client saw
    /// succeed may not be durable.
    #[error("flushing the disk at the end of the session: {0}")]
    Flush(crate::Error),
}

/// Serves one client over `stream` (a TCP connection, a Unix socket, a
/// pipe): handshake, transmission, then a flush and a clean log
/// ([`BlockDevice::checkpoint`]; for a disk, [`Disk::checkpoint`](crate::Disk::checkpoint))
/// however the session ended. [`Server`] calls this for each connection;
/// call it yourself for other transports.
///
/// ```
/// use std::sync::RwLock;
/// use vhdx::nbd::{serve_connection, ServeOptions, SessionEnd};
/// use vhdx::{CreateOptions, Disk, MemStorage};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let disk = RwLock::new(Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(1 << 20), None)?);
/// // A client that hangs up right after the greeting.
/// let mut transcript = std::io::Cursor::new(Vec::new());
/// let err = serve_connection(&mut transcript, &disk, &ServeOptions::default()).unwrap_err();
/// assert!(matches!(err, vhdx::nbd::SessionError::Io(_)));
/// assert!(transcript.get_ref().starts_with(b"NBDMAGICIHAVEOPT"));
/// # Ok(()) }
/// ```
pub fn serve_connection<S: Read + Write, D: BlockDevice + ?Sized>(
    stream: S,
    disk: &RwLock<D>,
    options: &ServeOptions,
) -> Result<Session, SessionError> {
    session(stream, disk, options, &mut || Ok(()), |s, size, read_only, stats| {
        transmission::transmit(s, disk, size, read_only, stats)
    })
}

/// [`serve_connection`], calling `admit` when the client has chosen the
/// export, before the reply that starts transmission: it may wait (for a
/// session slot), or refuse with an error that ends the connection.
pub(crate) fn session<S: Read + Write, D: BlockDevice + ?Sized>(
    mut stream: S,
    disk: &RwLock<D>,
    options: &ServeOptions,
    admit: &mut dyn FnMut() -> std::io::Result<()>,
    transmit: impl FnOnce(&mut S, u64, bool, &mut Stats) -> Result<SessionEnd, SessionError>,
) -> Result<Session, SessionError> {
    options.validate()?;
    let (size, writable, sector) = {
        let d = transmission::read_lock(disk);
        (d.capacity(), d.is_writable(), d.physical_sector_size().max(d.sector_size()))
    };
    let read_only = options.read_only || !writable;
    let mut flags = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH | proto::FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= proto::FLAG_READ_ONLY;
    } else {
        flags |= proto::FLAG_SEND_FUA | proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES;
    }
    let export = handshake::Export {
        name: &options.export_name,
        description: &options.description,
        size,
        flags,
        block_sizes: (1, sector.max(4096), MAX_PAYLOAD),
    };
    let mut stats = Stats::default();
    if let handshake::Outcome::Ended(end) = handshake::negotiate(&mut stream, &export, admit)? {
        return Ok(Session { end, stats });
    }
    let result = transmit(&mut stream, size, read_only, &mut stats);
    // However the session ended, what the client was told is written becomes
    // durable, and the log is left clean.
    if !read_only {
        transmission::write_lock(disk).checkpoint().map_err(SessionError::Flush)?;
    }
    Ok(Session { end: result?, stats })
}
