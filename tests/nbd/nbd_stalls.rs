//! Clients that stall never keep others from being served: idle TCP
//! connections (8, the number of session slots, and 100), handshakes that
//! stop or trickle, sessions that go silent. Every wait has a hard deadline,
//! so a regression fails instead of hanging. Real clients are the
//! specification-written test client and `qemu-img`/`qemu-io`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhdx::nbd::ServeOptions;

use crate::common::StartRetrying;
use crate::common::{data::pattern, qemu::qemu};
use crate::support::*;

const SIZE: u64 = 16 << 20;

/// A disk with known data in its first MiB.
fn seeded() -> (vhdx::Disk, Vec<u8>) {
    let mut disk = mem_disk(SIZE);
    let data = pattern(21, 1 << 20);
    disk.write_at(&data, 0).unwrap();
    disk.flush().unwrap();
    (disk, data)
}

/// `n` connections that never send a byte.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

/// A full handshake and a read by the test client, which must be over
/// within `limit` (its socket times out then, failing the test).
fn served_within(addr: SocketAddr, limit: Duration, expect: &[u8]) -> Duration {
    let start = Instant::now();
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut c = Client { s };
    let g = c.read_n(18);
    assert_eq!(&g[0..8], NBDMAGIC);
    c.send(&3u32.to_be_bytes());
    c.go_named("", &[]).expect("NBD_OPT_GO");
    assert_eq!(c.read(0, expect.len() as u32).unwrap(), expect);
    c.disconnect();
    let took = start.elapsed();
    assert!(took < limit, "served after {took:?}");
    took
}

/// Waits for `child` to exit, at most `limit`; kills it and fails past that.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} still running after {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `qemu-img info` of the export, which must succeed within `limit`; its virtual size.
fn qemu_img_info_within(uri: &str, limit: Duration) -> u64 {
    let child = Command::new("qemu-img")
        .args(["info", "-f", "raw", "--output=json", uri])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_retrying();
    let out = finish_within(child, limit, "qemu-img info");
    assert!(out.status.success(), "qemu-img info: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// How long until the server closes `s` (reads are thrown away), at most `limit`.
fn closed_after(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("not closed by the server within {limit:?}: {e}"),
        }
    }
}

#[test]
fn idle_connections_never_keep_a_client_from_being_served() {
    for n in [8, 100] {
        let (disk, data) = seeded();
        let server = Running::start(disk, ServeOptions::default());
        let idle = idle_connections(server.addr, n);
        let took = served_within(server.addr, Duration::from_secs(5), &data[..4096]);
        eprintln!("{n} idle connections: the test client was served in {took:?}");
        if qemu() {
            assert_eq!(qemu_img_info_within(&server.uri(), Duration::from_secs(10)), SIZE);
        }
        drop(idle);
    }
}

#[test]
fn qemu_io_writes_through_a_flood_of_idle_connections() {
    if !qemu() {
        return;
    }
    let (disk, _) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    let idle = idle_connections(server.addr, 100);
    let child = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 4096 8192", "-c", "flush", &server.uri()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_retrying();
    let out = finish_within(child, Duration::from_secs(10), "qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("wrote 8192/8192"), "{text}");
    drop(idle);
    let disk = server.stop();
    let mut back = vec![0u8; 8192];
    disk.read_at(&mut back, 4096).unwrap();
    assert_eq!(back, vec![0x5a; 8192]);
}

#[test]
fn the_connection_that_waited_longest_is_dropped_to_make_room() {
    let (disk, data) = seeded();
    let options = ServeOptions::default().max_handshakes(3).handshake_timeout(None);
    let server = Running::start(disk, options);
    let mut idle = idle_connections(server.addr, 3);
    for s in &mut idle {
        let mut greeting = [0u8; 18];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut greeting).unwrap();
    }
    // A fourth: the first is dropped, the others stay.
    let fourth = TcpStream::connect(server.addr).unwrap();
    assert!(closed_after(&mut idle[0], Duration::from_secs(5)) < Duration::from_secs(5));
    for s in &mut idle[1..] {
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let r = s.read(&mut [0u8; 1]);
        assert!(matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{r:?}");
    }
    served_within(server.addr, Duration::from_secs(5), &data[..512]);
    drop((idle, fourth));
    assert!(server.log().iter().any(|l| l.contains("dropped: it had waited longest")), "{:?}", server.log());
}

#[test]
fn a_stalled_or_trickling_handshake_is_dropped_at_the_deadline() {
    let (disk, data) = seeded();
    let timeout = Duration::from_millis(600);
    let options = ServeOptions::default().handshake_timeout(Some(timeout));
    let server = Running::start(disk, options);
    // Part of an option's magic, then nothing.
    let mut stalled = Client::fixed(server.addr);
    stalled.send(b"IHAVE");
    let t = closed_after(&mut stalled.s, Duration::from_secs(5));
    assert!(t >= timeout * 3 / 4 && t < timeout + Duration::from_secs(3), "closed after {t:?}");
    // A byte every 100 ms: each read is quick, the whole handshake is not.
    let mut trickle = Client::fixed(server.addr);
    let mut writer = trickle.s.try_clone().unwrap();
    let start = Instant::now();
    let feeder = std::thread::spawn(move || {
        let mut option = b"IHAVEOPT\0\0\0\x03\0\0\0\x28".to_vec(); // NBD_OPT_LIST with 40 bytes of data
        option.extend_from_slice(&[0u8; 40]);
        for b in option {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut buf = [0u8; 64];
    trickle.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = trickle.s.read(&mut buf);
    let t = start.elapsed();
    assert!(matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{r:?}");
    assert!(t < timeout + Duration::from_secs(3), "the trickling client was closed only after {t:?}");
    feeder.join().unwrap();
    served_within(server.addr, Duration::from_secs(5), &data[..512]);
    let log = server.log();
    assert!(log.iter().filter(|l| l.contains("no complete handshake within 600ms")).count() == 2, "{log:?}");
}

#[test]
fn waiting_for_a_session_slot_is_not_a_handshake_timeout() {
    let (disk, data) = seeded();
    let options = ServeOptions::default().max_connections(1).handshake_timeout(Some(Duration::from_millis(300)));
    let server = Running::start(disk, options);
    let (first, _) = Client::go(server.addr);
    let waiting = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    first.disconnect();
    let mut c = Client { s: waiting };
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(&c.read_n(18)[0..8], NBDMAGIC, "greeted once the slot is free");
    c.send(&3u32.to_be_bytes());
    c.go_named("", &[]).unwrap();
    assert_eq!(c.read(0, 512).unwrap(), &data[..512]);
    c.disconnect();
}

#[test]
fn an_idle_session_is_closed_at_the_idle_timeout_and_its_writes_are_durable() {
    let rec = crate::common::storage::Recorder::new();
    let mut disk =
        vhdx::Disk::create_on(Box::new(rec.clone()), &vhdx::CreateOptions::dynamic(SIZE).block_size(1 << 20), None)
            .unwrap();
    disk.flush().unwrap();
    let idle = Duration::from_millis(700);
    let server = Running::start(disk, ServeOptions::default().idle_timeout(Some(idle)));
    let (mut c, _) = Client::go(server.addr);
    // Active sessions are not cut: requests closer together than the timeout, for longer than it.
    for i in 0..6u64 {
        assert_eq!(c.write(i * 4096, &[0xE0 + i as u8; 4096]), 0);
        std::thread::sleep(Duration::from_millis(250));
    }
    let t = closed_after(&mut c.s, Duration::from_secs(10));
    assert!(t >= idle / 2 && t < idle + Duration::from_secs(3), "closed after {t:?}");
    server.wait_ended(1);
    assert!(server.log().iter().any(|l| l.contains("idle for 700ms")), "{:?}", server.log());
    // Never flushed by the client, durable now, with a clean log.
    let last_flush =
        rec.ops.lock().unwrap().iter().rposition(|op| matches!(op, crate::common::storage::Op::Flush)).unwrap();
    let bytes = rec.image_after(last_flush + 1);
    let headers = [64usize << 10, 128 << 10].map(|at| crate::common::layout::parse_header(&bytes[at..at + 4096]));
    let current = headers.iter().flatten().max_by_key(|h| h.sequence_number).expect("a valid header");
    assert_eq!(current.log_guid, [0; 16], "the log is not clean after the idle session");
    let durable = vhdx::Disk::open_storage(Box::new(crate::common::storage::SharedMem::from_vec(bytes))).unwrap();
    for i in 0..6u64 {
        let mut back = vec![0u8; 4096];
        durable.read_at(&mut back, i * 4096).unwrap();
        assert_eq!(back, vec![0xE0 + i as u8; 4096]);
    }
}

#[test]
fn the_cli_sets_the_timeouts_and_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    vhdx::Disk::create(&path, &vhdx::CreateOptions::dynamic(SIZE)).unwrap().close().unwrap();
    let mut child = Command::new(crate::common::cli::bin())
        .arg("serve")
        .arg(&path)
        .args(["--port", "0", "--handshake-timeout", "0.5", "--idle-timeout", "1", "--max-handshakes", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_retrying();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nbd://"))
        .and_then(|w| w.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no nbd:// address in {first:?}"));
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut idle = idle_connections(addr, 20);
    let (mut c, _) = Client::go(addr);
    assert_eq!(c.write(8192, &[0x77; 4096]), 0);
    let t = closed_after(&mut c.s, Duration::from_secs(10));
    assert!(t < Duration::from_secs(4), "the idle session was closed after {t:?}");
    let t = closed_after(&mut idle[19], Duration::from_secs(10));
    assert!(t < Duration::from_secs(4), "a silent connection was closed after {t:?}");
    // Nobody is connected now: the file is a cleanly closed image even if the server is killed.
    child.kill().unwrap();
    child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(log.contains("idle for 1s") && log.contains("no complete handshake within 500ms"), "{log}");
    let disk = vhdx::Disk::open(&path).unwrap();
    assert!(!disk.info().unwrap().log_replayed, "the log was not clean");
    let mut back = vec![0u8; 4096];
    disk.read_at(&mut back, 8192).unwrap();
    assert_eq!(back, vec![0x77; 4096]);
}
