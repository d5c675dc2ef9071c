//! What the NBD tests share: a server running in a thread of the test, and a
//! minimal NBD client written from the protocol specification (its own
//! constants, not the crate's), so the tests check the server's bytes
//! against the specification rather than against itself.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhdx::nbd::{ServeOptions, Server, Stopper};
use vhdx::{CreateOptions, Disk, MemStorage};

#[cfg(unix)]
/// `qemu-io -f raw FLAGS… -c CMD… TARGET` without judging the result:
/// (exit success, stdout + stderr).
pub fn qemu_io_any(flags: &[&str], target: &str, cmds: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    args.extend_from_slice(flags);
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(target);
    let out = crate::common::qemu::run("qemu-io", &args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[cfg(unix)]
/// [`qemu_io_any`], which must succeed with no command failing (qemu-io
/// exits 0 even then, so its output is checked); returns the output.
pub fn qemu_io_ok(flags: &[&str], target: &str, cmds: &[&str]) -> String {
    let (ok, text) = qemu_io_any(flags, target, cmds);
    let failed = text.contains("error") || text.contains("failed") || text.contains("Pattern verification");
    assert!(ok && !failed, "qemu-io {flags:?} {cmds:?} on {target}:\n{text}");
    text
}

/// A server serving one disk from a thread of the test.
pub struct Running {
    pub addr: SocketAddr,
    stopper: Stopper,
    handle: Option<JoinHandle<std::io::Result<Disk>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Serves `disk` on 127.0.0.1 with a port the system picks.
    pub fn start(disk: Disk, options: ServeOptions) -> Running {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let server = Server::bind("127.0.0.1:0", disk, options)
            .expect("binding 127.0.0.1:0")
            .on_log(move |line| sink.lock().unwrap().push(line.to_string()));
        let addr = server.local_addr().unwrap();
        let stopper = server.stopper();
        let handle = std::thread::spawn(move || server.run());
        Running { addr, stopper, handle: Some(handle), log }
    }

    /// `nbd://127.0.0.1:PORT/` (the default export, the empty name).
    #[cfg(unix)] // for QEMU
    pub fn uri(&self) -> String {
        format!("nbd://{}/", self.addr)
    }

    /// The server's log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log lines of ended sessions.
    pub fn ended(&self) -> Vec<String> {
        self.log().into_iter().filter(|l| !l.ends_with(": connected")).collect()
    }

    /// Waits until `n` sessions have ended (each ends with a flush, after
    /// the client has already gone) and returns their log lines.
    pub fn wait_ended(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ended = self.ended();
            if ended.len() >= n {
                return ended;
            }
            assert!(Instant::now() < deadline, "only {} of {n} sessions ended; log: {:?}", ended.len(), self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `run` has returned.
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for `run` to return by itself (a `once` server), and returns the disk.
    pub fn join(mut self) -> Disk {
        self.handle.take().unwrap().join().expect("the server thread panicked").expect("Server::run failed")
    }

    /// Stops the server and returns the disk.
    pub fn stop(self) -> Disk {
        self.stopper.stop();
        self.join()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stopper.stop();
            let _ = h.join();
        }
    }
}

/// A dynamic in-memory disk of `size` bytes with 1 MiB blocks, writable.
pub fn mem_disk(size: u64) -> Disk {
    Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(size).block_size(1 << 20), None).unwrap()
}

// ---------------------------------------------------------------- the protocol, from the specification

pub const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
pub const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
pub const REPLY_MAGIC: u64 = 0x3e889045565a9;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const HAS_FLAGS: u16 = 1;
pub const READ_ONLY: u16 = 2;
pub const SEND_FLUSH: u16 = 4;
pub const SEND_FUA: u16 = 8;
pub const SEND_TRIM: u16 = 32;
pub const SEND_WRITE_ZEROES: u16 = 64;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const FLAG_FUA: u16 = 1;
pub const FLAG_NO_HOLE: u16 = 2;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// What `NBD_OPT_GO` told the client.
#[derive(Debug, Default)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub block_sizes: Option<(u32, u32, u32)>,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// A hand-written NBD client.
pub struct Client {
    pub s: TcpStream,
}

impl Client {
    /// Connects and reads the greeting; returns the client and the handshake flags.
    pub fn connect(addr: SocketAddr) -> (Client, u16) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { s };
        let g = c.read_n(18);
        assert_eq!(&g[0..8], NBDMAGIC, "greeting");
        assert_eq!(&g[8..16], IHAVEOPT, "newstyle magic");
        (c, u16::from_be_bytes([g[16], g[17]]))
    }

    /// Connects, sends the client flags (fixed newstyle, no zeroes).
    pub fn fixed(addr: SocketAddr) -> Client {
        let (mut c, flags) = Client::connect(addr);
        assert_eq!(flags, 3, "handshake flags: FIXED_NEWSTYLE | NO_ZEROES");
        c.send(&3u32.to_be_bytes());
        c
    }

    /// A full handshake with `NBD_OPT_GO` for the default export.
    pub fn go(addr: SocketAddr) -> (Client, ExportInfo) {
        let mut c = Client::fixed(addr);
        let info = c.go_named("", &[INFO_BLOCK_SIZE]).expect("NBD_OPT_GO succeeds");
        (c, info)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap_or_else(|e| panic!("reading {n} bytes from the server: {e}"));
        b
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m);
    }

    pub fn opt_reply(&mut self) -> OptReply {
        let h = self.read_n(20);
        assert_eq!(u64::from_be_bytes(h[0..8].try_into().unwrap()), REPLY_MAGIC, "option reply magic");
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        assert!(len <= 1 << 20, "option reply of {len} bytes");
        OptReply {
            option: u32::from_be_bytes(h[8..12].try_into().unwrap()),
            kind: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data: self.read_n(len),
        }
    }

    /// `NBD_OPT_INFO`/`NBD_OPT_GO` data for `name` asking for `infos`.
    pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// Sends `option` (INFO or GO) and collects replies up to ACK (`Ok`) or an error (`Err(kind)`).
    pub fn info_like(&mut self, option: u32, name: &str, infos: &[u16]) -> Result<ExportInfo, u32> {
        self.option(option, &Client::info_data(name, infos));
        let mut info = ExportInfo::default();
        let mut saw_export = false;
        loop {
            let r = self.opt_reply();
            assert_eq!(r.option, option, "the reply names the option");
            match r.kind {
                REP_ACK => {
                    assert!(saw_export, "NBD_REP_ACK without NBD_INFO_EXPORT");
                    return Ok(info);
                }
                REP_INFO => {
                    let t = u16::from_be_bytes([r.data[0], r.data[1]]);
                    let d = &r.data[2..];
                    match t {
                        INFO_EXPORT => {
                            assert_eq!(r.data.len(), 12, "NBD_INFO_EXPORT length");
                            info.size = u64::from_be_bytes(d[0..8].try_into().unwrap());
                            info.flags = u16::from_be_bytes([d[8], d[9]]);
                            saw_export = true;
                        }
                        INFO_BLOCK_SIZE => {
                            assert_eq!(r.data.len(), 14, "NBD_INFO_BLOCK_SIZE length");
                            let v = |i: usize| u32::from_be_bytes(d[i..i + 4].try_into().unwrap());
                            info.block_sizes = Some((v(0), v(4), v(8)));
                        }
                        INFO_NAME => info.name = Some(String::from_utf8(d.to_vec()).unwrap()),
                        INFO_DESCRIPTION => info.description = Some(String::from_utf8(d.to_vec()).unwrap()),
                        other => panic!("unexpected information type {other}"),
                    }
                }
                kind if kind & 0x8000_0000 != 0 => return Err(kind),
                kind => panic!("unexpected reply type {kind:#x}"),
            }
        }
    }

    pub fn go_named(&mut self, name: &str, infos: &[u16]) -> Result<ExportInfo, u32> {
        self.info_like(OPT_GO, name, infos)
    }

    /// Sends a transmission request (and `payload` after it).
    pub fn request(&mut self, flags: u16, kind: u16, handle: u64, offset: u64, length: u32, payload: &[u8]) {
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&0x25609513u32.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&length.to_be_bytes());
        m.extend_from_slice(payload);
        self.send(&m);
    }

    /// Reads a simple reply header: `(error, handle)`.
    pub fn reply(&mut self) -> (u32, u64) {
        let h = self.read_n(16);
        assert_eq!(&h[0..4], &[0x67, 0x44, 0x66, 0x98], "simple reply magic");
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }

    /// A request whose reply carries no data; returns the error.
    pub fn call(&mut self, flags: u16, kind: u16, offset: u64, length: u32, payload: &[u8]) -> u32 {
        self.request(flags, kind, 0xC0FFEE, offset, length, payload);
        let (error, handle) = self.reply();
        assert_eq!(handle, 0xC0FFEE, "the reply echoes the handle");
        error
    }

    /// `NBD_CMD_READ`: the data, or the error.
    pub fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, u32> {
        self.request(0, CMD_READ, 7, offset, length, &[]);
        let (error, handle) = self.reply();
        assert_eq!(handle, 7);
        if error != 0 {
            return Err(error);
        }
        Ok(self.read_n(length as usize))
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.call(0, CMD_WRITE, offset, data.len() as u32, data)
    }

    /// `NBD_CMD_DISC`, then waits for the server to close.
    pub fn disconnect(mut self) {
        self.request(0, CMD_DISC, 0, 0, 0, &[]);
        assert!(self.closed_by_server(), "the server closes the connection after NBD_CMD_DISC");
    }

    /// Whether the server has closed the connection (end of stream or a
    /// reset), with nothing else sent first.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }

    /// Closes the connection abruptly.
    pub fn vanish(self) {
        let _ = self.s.shutdown(Shutdown::Both);
    }
}
