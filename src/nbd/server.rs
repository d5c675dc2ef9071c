//! The TCP server: accepting connections, one thread per client, stopping.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{session, ServeOptions, Session, SessionEnd, SessionError};
use crate::Disk;

type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// An NBD server for one disk: see the [module docs](super) for the protocol
/// it speaks and its choices.
pub struct Server {
    listener: TcpListener,
    disk: Arc<RwLock<Disk>>,
    options: ServeOptions,
    stop: Arc<StopState>,
    log: Option<Log>,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server").field("listener", &self.listener).field("options", &self.options).finish()
    }
}

/// The state [`Stopper`] shares with the server.
struct StopState {
    stopped: AtomicBool,
    /// Where to connect to wake a blocked `accept`.
    wake: SocketAddr,
    /// The connections being served, to end them on stop.
    connections: Mutex<BTreeMap<u64, TcpStream>>,
}

impl StopState {
    fn connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, TcpStream>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Records a connection so that a stop can end it; `false` if the server is stopping.
    fn register(&self, id: u64, stream: TcpStream) -> bool {
        let mut c = self.connections();
        if self.is_stopped() {
            return false;
        }
        c.insert(id, stream);
        true
    }

    fn unregister(&self, id: u64) {
        self.connections().remove(&id);
    }

    /// Refuses new connections and ends the current ones after their
    /// current request (their next read sees end of stream).
    fn halt(&self) {
        let c = self.connections();
        self.stopped.store(true, Ordering::SeqCst);
        for stream in c.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
}

/// Stops a running [`Server`] from another thread (or a signal handler's
/// thread). Cloneable.
#[derive(Clone)]
pub struct Stopper(Arc<StopState>);

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

/// Counts the connections being served, so that `run` waits for a free slot.
#[derive(Default)]
struct Slots {
    active: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self) {
        *self.count() -= 1;
        self.freed.notify_all();
    }
}

/// Held by a connection's thread: gives back its slot and forgets its
/// stream when the thread ends, however it ends.
struct Lease {
    id: u64,
    stop: Arc<StopState>,
    slots: Arc<Slots>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.unregister(self.id);
        self.slots.release();
    }
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

/// Serves one accepted connection to its end.
fn handle(stream: TcpStream, peer: SocketAddr, disk: &RwLock<Disk>, options: &ServeOptions, log: &Option<Log>) {
    let note = |m: &str| {
        if let Some(log) = log {
            log(&format!("{peer}: {m}"));
        }
    };
    note("connected");
    // Replies are complete messages: send them without Nagle's delay.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(options.handshake_timeout);
    let result = session(&stream, disk, options, &mut || {
        let _ = stream.set_read_timeout(None);
    });
    note(&describe(&result));
}

impl Server {
    /// A server for `disk` on an already bound `listener`. The export is
    /// writable when the disk was opened for writing and `options.read_only`
    /// is false.
    pub fn new(listener: TcpListener, disk: Disk, options: ServeOptions) -> std::io::Result<Server> {
        options.validate()?;
        let wake = wake_address(listener.local_addr()?);
        Ok(Server {
            listener,
            disk: Arc::new(RwLock::new(disk)),
            options,
            stop: Arc::new(StopState {
                stopped: AtomicBool::new(false),
                wake,
                connections: Mutex::new(BTreeMap::new()),
            }),
            log: None,
        })
    }

    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`])
    /// and makes a server for `disk`.
    pub fn bind(addr: impl ToSocketAddrs, disk: Disk, options: ServeOptions) -> std::io::Result<Server> {
        Server::new(TcpListener::bind(addr)?, disk, options)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Receives one line per event (a client connecting, a session ending
    /// and how), prefixed with the client's address. Without it the server
    /// is silent.
    pub fn on_log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Server {
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
    pub fn run(self) -> std::io::Result<Disk> {
        let slots = Arc::new(Slots::default());
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id = 0u64;
        let mut failures = 0u32;
        let mut outcome = Ok(());
        let max = self.options.max_connections.max(1);
        while !self.stop.is_stopped() {
            {
                let mut active = slots.count();
                while *active >= max && !self.stop.is_stopped() {
                    active = slots
                        .freed
                        .wait_timeout(active, Duration::from_millis(200))
                        .map_or_else(|p| p.into_inner().0, |(guard, _)| guard);
                }
            }
            if self.stop.is_stopped() {
                break;
            }
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
            if self.stop.is_stopped() {
                break; // the stopper's wake-up call, or a client arriving too late
            }
            next_id += 1;
            let id = next_id;
            match stream.try_clone() {
                Ok(clone) => {
                    if !self.stop.register(id, clone) {
                        break;
                    }
                }
                Err(e) => {
                    self.note(&format!("{peer}: dropped: {e}"));
                    continue;
                }
            }
            if self.options.once {
                handle(stream, peer, &self.disk, &self.options, &self.log);
                self.stop.unregister(id);
                break;
            }
            *slots.count() += 1;
            let lease = Lease { id, stop: self.stop.clone(), slots: slots.clone() };
            let (disk, options, log) = (self.disk.clone(), self.options.clone(), self.log.clone());
            let spawned = std::thread::Builder::new().name(format!("nbd {peer}")).spawn(move || {
                let _lease = lease;
                handle(stream, peer, &disk, &options, &log);
            });
            match spawned {
                Ok(worker) => workers.push(worker),
                // The closure, and with it the lease, is dropped: slot and stream go back.
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
        self.stop.halt();
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
pub fn serve(listener: TcpListener, disk: Disk, options: ServeOptions) -> std::io::Result<Disk> {
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
