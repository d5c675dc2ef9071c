//! The TCP server: accepting connections, one thread per client, stopping.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{session, transmission, ServeOptions, Session, SessionEnd, SessionError};
use crate::{BlockDevice, Disk};

type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// An NBD server for one disk (a [`Disk`], or any [`BlockDevice`] that can
/// be shared between threads): see the [module docs](super) for the
/// protocol it speaks and its choices.
pub struct Server<D = Disk> {
    listener: TcpListener,
    disk: Arc<RwLock<D>>,
    options: ServeOptions,
    shared: Arc<Shared>,
    log: Option<Log>,
}

impl<D> core::fmt::Debug for Server<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server").field("listener", &self.listener).field("options", &self.options).finish()
    }
}

/// What the accept loop, the connections' threads and [`Stopper`] share.
struct Shared {
    stopped: AtomicBool,
    /// Where to connect to wake a blocked `accept`.
    wake: SocketAddr,
    state: Mutex<State>,
    /// Signalled when a session ends, a connection is dropped, or the server stops.
    changed: Condvar,
}

/// The connections, by id (ids grow with arrival, so the first waiting id
/// is the connection that has waited longest).
#[derive(Default)]
struct State {
    /// Every connection, to end them on stop.
    connections: BTreeMap<u64, TcpStream>,
    /// Connections not yet in transmission: in the handshake, or waiting
    /// to be greeted or for a session slot.
    waiting: BTreeSet<u64>,
    /// Connections in transmission.
    sessions: BTreeSet<u64>,
    /// Connections dropped to make room, whose threads have not ended yet.
    dropped: BTreeSet<u64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Records a new connection as waiting, first dropping the one that has
    /// waited longest when `max_waiting` already wait. `false` if the server
    /// is stopping.
    fn arrive(&self, id: u64, stream: TcpStream, max_waiting: usize) -> bool {
        let mut st = self.state();
        if self.is_stopped() {
            return false;
        }
        while st.waiting.len() >= max_waiting {
            let Some(oldest) = st.waiting.pop_first() else { break };
            st.dropped.insert(oldest);
            if let Some(s) = st.connections.get(&oldest) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        st.connections.insert(id, stream);
        st.waiting.insert(id);
        drop(st);
        self.changed.notify_all();
        true
    }

    /// Waits until fewer than `max` sessions run; then, when `take`, makes
    /// connection `id` one of them. An error if the connection was dropped
    /// to make room or the server is stopping.
    fn wait_for_slot(&self, id: u64, max: usize, take: bool) -> std::io::Result<()> {
        let mut st = self.state();
        loop {
            if self.is_stopped() {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the server is stopping"));
            }
            if !st.waiting.contains(&id) {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "dropped to make room"));
            }
            if st.sessions.len() < max {
                if take {
                    st.waiting.remove(&id);
                    st.sessions.insert(id);
                }
                return Ok(());
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .map_or_else(|p| p.into_inner().0, |(guard, _)| guard);
        }
    }

    /// Whether connection `id` was dropped to make room.
    fn was_dropped(&self, id: u64) -> bool {
        self.state().dropped.contains(&id)
    }

    /// Forgets connection `id` (its thread is ending) and wakes the waiting.
    fn leave(&self, id: u64) {
        let mut st = self.state();
        st.connections.remove(&id);
        st.waiting.remove(&id);
        st.sessions.remove(&id);
        st.dropped.remove(&id);
        drop(st);
        self.changed.notify_all();
    }

    /// Refuses new connections and ends the current ones after their
    /// current request (their next read sees end of stream).
    fn halt(&self) {
        let st = self.state();
        self.stopped.store(true, Ordering::SeqCst);
        for stream in st.connections.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// Stops a running [`Server`] from another thread (or a signal handler's
/// thread). Cloneable.
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl core::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stopper").field("stopped", &self.0.is_stopped()).finish()
    }
}

impl Stopper {
    /// Stops accepting connections and ends the current ones: each finishes
    /// the request it is serving, then reads end of stream, and its session
    /// ends with a flush. [`Server::run`] returns once they are all done.
    pub fn stop(&self) {
        self.0.halt();
        // Wake the accept loop with a connection of our own; it sees the flag.
        let _ = TcpStream::connect_timeout(&self.0.wake, Duration::from_secs(2));
    }
}

/// Where to connect to reach a listener bound to `addr`.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// A summary of how a session ended, for the log.
fn describe(result: &Result<Session, SessionError>) -> String {
    match result {
        Ok(s) => {
            let how = match s.end {
                SessionEnd::Disconnect => "disconnected (NBD_CMD_DISC)",
                SessionEnd::Aborted => "aborted the handshake (NBD_OPT_ABORT)",
                SessionEnd::Closed => "closed the connection",
            };
            let t = &s.stats;
            format!(
                "{how} after {} requests ({} errors): {} bytes read, {} written, {} zeroed, {} trimmed, {} flushes",
                t.requests, t.errors, t.bytes_read, t.bytes_written, t.bytes_zeroed, t.bytes_trimmed, t.flushes
            )
        }
        Err(e) => format!("session ended: {e}"),
    }
}

/// A zero duration means none.
fn limit(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

/// Held by a connection's thread: forgets the connection (and gives back
/// its session slot) when the thread ends, however it ends.
struct Lease {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.leave(self.id);
    }
}

/// A connection with the server's clocks: the whole handshake must be over
/// by a deadline (the socket's timeouts are set to what is left before each
/// read and write), and in transmission each read or write may wait at most
/// the idle timeout.
#[derive(Clone, Copy)]
struct Timed<'a> {
    stream: &'a TcpStream,
    /// When the handshake must be over; `None` once in transmission.
    deadline: &'a Cell<Option<Instant>>,
    handshake: Option<Duration>,
    idle: Option<Duration>,
    /// The server's stop flag, which a read waiting for the client looks
    /// at every [`STOP_POLL`].
    stopped: &'a AtomicBool,
    /// The socket's read timeout as last set, so that a read sets it only
    /// when it changes (in transmission nearly always [`STOP_POLL`]).
    read_timeout: &'a Cell<Option<Duration>>,
}

/// How long a read waits for the client before it looks whether the server
/// is stopping. [`Stopper::stop`] also shuts the connection's reading down,
/// which wakes a blocked read on Linux but not on Windows.
const STOP_POLL: Duration = Duration::from_millis(200);

impl Timed<'_> {
    /// Before a write: the socket's write timeout is what is left of the
    /// handshake (reads keep their own clock).
    fn arm(&self) -> std::io::Result<()> {
        if let Some(deadline) = self.deadline.get() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.stream.set_write_timeout(Some(left))?;
        }
        Ok(())
    }

    fn timed_out(&self) -> std::io::Error {
        let text = match (self.deadline.get(), self.handshake, self.idle) {
            (Some(_), Some(limit), _) => format!("no complete handshake within {limit:?}"),
            (None, _, Some(limit)) => format!("idle for {limit:?}: closed"),
            _ => String::from("timed out"),
        };
        std::io::Error::new(std::io::ErrorKind::TimedOut, text)
    }

    /// A socket timeout is reported as what it means here.
    fn explain(&self, e: std::io::Error) -> std::io::Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => self.timed_out(),
            _ => e,
        }
    }

    /// The handshake is over: no deadline, the idle timeout from now on
    /// (for reads, kept by [`Read::read`]).
    fn enter_transmission(&self) -> std::io::Result<()> {
        self.deadline.set(None);
        self.stream.set_write_timeout(self.idle)
    }
}

impl Read for Timed<'_> {
    /// Waits for the client until the handshake's deadline or the idle
    /// timeout, in slices of [`STOP_POLL`]; reads end of stream once the
    /// server stops.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let idle_end = match self.deadline.get() {
            Some(_) => None,
            None => self.idle.map(|d| Instant::now() + d),
        };
        loop {
            let end = self.deadline.get().or(idle_end);
            let wait = match end {
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.timed_out());
                    }
                    left.min(STOP_POLL)
                }
                None => STOP_POLL,
            };
            if self.read_timeout.get() != Some(wait) {
                self.stream.set_read_timeout(Some(wait))?;
                self.read_timeout.set(Some(wait));
            }
            let mut s = self.stream;
            match s.read(buf) {
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if self.stopped.load(Ordering::SeqCst) {
                        return Ok(0);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => return r.map_err(|e| self.explain(e)),
            }
        }
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        let mut s = self.stream;
        s.write(buf).map_err(|e| self.explain(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut s = self.stream;
        s.flush()
    }
}

/// Serves one accepted connection to its end; `true` if it counts as a
/// client served for [`ServeOptions::once`] (it reached transmission, or
/// ended its handshake itself with `NBD_OPT_ABORT`).
fn handle<D: BlockDevice + Send + Sync + ?Sized>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    disk: &RwLock<D>,
    options: &ServeOptions,
    log: &Option<Log>,
) -> bool {
    let note = |m: &str| {
        if let Some(log) = log {
            log(&format!("{peer}: {m}"));
        }
    };
    note("connected");
    // Replies are complete messages: send them without Nagle's delay.
    let _ = stream.set_nodelay(true);
    let sessions = if options.once { 1 } else { options.max_connections.max(1) };
    // Greeted only while a session slot is free; the clock starts with the greeting.
    let greeted = shared.wait_for_slot(id, sessions, false);
    let deadline = Cell::new(limit(options.handshake_timeout).map(|t| Instant::now() + t));
    let read_timeout = Cell::new(None);
    let timed = Timed {
        stream: &stream,
        deadline: &deadline,
        handshake: limit(options.handshake_timeout),
        idle: limit(options.idle_timeout),
        stopped: &shared.stopped,
        read_timeout: &read_timeout,
    };
    let admitted = Cell::new(false);
    let result = match greeted {
        Ok(()) => {
            let mut conn = timed;
            let admit = &mut || {
                shared.wait_for_slot(id, sessions, true)?;
                admitted.set(true);
                timed.enter_transmission()
            };
            // In transmission the socket's own timeouts are the idle
            // timeout: replies go out on the socket itself, from the workers.
            session(&mut conn, disk, options, admit, |conn, size, read_only, stats| {
                transmission::transmit_parallel(conn, &stream, disk, size, read_only, stats, options.workers)
            })
        }
        Err(e) => Err(SessionError::Io(e)),
    };
    if shared.was_dropped(id) {
        note(&format!(
            "dropped: it had waited longest of the {} connections not yet in transmission when another arrived",
            options.max_handshakes.max(1)
        ));
    } else {
        note(&describe(&result));
    }
    admitted.get() || result.is_ok()
}

impl<D: BlockDevice + Send + Sync + 'static> Server<D> {
    /// A server for `disk` on an already bound `listener`. The export is
    /// writable when the disk was opened for writing and `options.read_only`
    /// is false.
    pub fn new(listener: TcpListener, disk: D, options: ServeOptions) -> std::io::Result<Server<D>> {
        options.validate()?;
        let wake = wake_address(listener.local_addr()?);
        Ok(Server {
            listener,
            disk: Arc::new(RwLock::new(disk)),
            options,
            shared: Arc::new(Shared {
                stopped: AtomicBool::new(false),
                wake,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            log: None,
        })
    }

    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`])
    /// and makes a server for `disk`.
    pub fn bind(addr: impl ToSocketAddrs, disk: D, options: ServeOptions) -> std::io::Result<Server<D>> {
        Server::new(TcpListener::bind(addr)?, disk, options)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Receives one line per event (a client connecting, a session ending
    /// and how), prefixed with the client's address. Without it the server
    /// is silent.
    pub fn on_log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Server<D> {
        self.log = Some(Arc::new(log));
        self
    }

    fn note(&self, message: &str) {
        if let Some(log) = &self.log {
            log(message);
        }
    }

    /// Serves clients until [`Stopper::stop`] is called (or, with
    /// [`ServeOptions::once`], until the first client is done), waits for
    /// the sessions to end, and gives the disk back, flushed. An error
    /// means the listener failed for good (after the sessions ended).
    pub fn run(self) -> std::io::Result<D> {
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id = 0u64;
        let mut failures = 0u32;
        let mut outcome = Ok(());
        let max_waiting = self.options.max_handshakes.max(1);
        while !self.shared.is_stopped() {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => {
                    failures = 0;
                    accepted
                }
                Err(e) => {
                    use std::io::ErrorKind::*;
                    if matches!(e.kind(), Interrupted | WouldBlock | ConnectionAborted | ConnectionReset | TimedOut) {
                        continue;
                    }
                    // Out of file descriptors and the like: wait and retry,
                    // but give up on a listener that keeps failing.
                    failures += 1;
                    self.note(&format!("accepting a connection: {e}"));
                    if failures >= 50 {
                        outcome = Err(e);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if self.shared.is_stopped() {
                break; // the stopper's wake-up call, or a client arriving too late
            }
            next_id += 1;
            let id = next_id;
            let clone = match stream.try_clone() {
                Ok(clone) => clone,
                Err(e) => {
                    self.note(&format!("{peer}: dropped: {e}"));
                    continue;
                }
            };
            if !self.shared.arrive(id, clone, max_waiting) {
                break;
            }
            let lease = Lease { id, shared: self.shared.clone() };
            let (disk, options, log) = (self.disk.clone(), self.options.clone(), self.log.clone());
            let spawned = std::thread::Builder::new().name(format!("nbd {peer}")).spawn(move || {
                let served = handle(stream, peer, lease.id, &lease.shared, &disk, &options, &log);
                if served && options.once {
                    Stopper(lease.shared.clone()).stop();
                }
            });
            match spawned {
                Ok(worker) => workers.push(worker),
                // The closure, and with it the lease, is dropped: the connection is forgotten.
                Err(e) => self.note(&format!("{peer}: dropped: cannot start a thread: {e}")),
            }
            // Join the sessions that are over, so the list stays short.
            let (done, running): (Vec<_>, Vec<_>) = workers.into_iter().partition(|w| w.is_finished());
            workers = running;
            for w in done {
                let _ = w.join();
            }
        }
        // After a stop this changes nothing; after a listener failure it ends
        // the sessions still running.
        self.shared.halt();
        for w in workers {
            let _ = w.join();
        }
        outcome?;
        let disk = Arc::try_unwrap(self.disk)
            .map_err(|_| std::io::Error::other("an NBD session still holds the disk"))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        Ok(disk)
    }
}

/// Serves `disk` on `listener` with `options` until stopped (see
/// [`Server::run`]); a shorthand for `Server::new(..)?.run()`.
pub fn serve<D: BlockDevice + Send + Sync + 'static>(
    listener: TcpListener,
    disk: D,
    options: ServeOptions,
) -> std::io::Result<D> {
    Server::new(listener, disk, options)?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_address_reaches_unspecified_listeners_through_loopback() {
        let a: SocketAddr = "0.0.0.0:10809".parse().unwrap();
        assert_eq!(wake_address(a), "127.0.0.1:10809".parse().unwrap());
        let b: SocketAddr = "[::]:7".parse().unwrap();
        assert_eq!(wake_address(b), "[::1]:7".parse().unwrap());
        let c: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(wake_address(c), c);
    }

    #[test]
    fn describe_names_the_end() {
        let s = Session { end: SessionEnd::Disconnect, stats: Default::default() };
        assert!(describe(&Ok(s)).starts_with("disconnected (NBD_CMD_DISC)"));
    }
}
