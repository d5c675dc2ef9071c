//! The NBD server on the wire, byte by byte, with a client written from the
//! protocol specification: the handshake's replies, the errors malformed and
//! out-of-range requests get, and hostile clients (garbage, oversized
//! lengths, clients vanishing mid-message) that must end only their own
//! connection, never the server or another client's data.

use std::time::{Duration, Instant};

use vhdx::nbd::ServeOptions;

use crate::common::data::pattern;
use crate::support::*;

const SIZE: u64 = 16 << 20;

/// A disk with known data in its first 4 MiB.
fn seeded() -> (vhdx::Disk, Vec<u8>) {
    let mut disk = mem_disk(SIZE);
    let data = pattern(11, 4 << 20);
    disk.write_at(&data, 0).unwrap();
    disk.flush().unwrap();
    (disk, data)
}

/// A fresh client still gets the right data: the server survived.
fn still_serves(addr: std::net::SocketAddr, expect: &[u8]) {
    let (mut c, _) = Client::go(addr);
    assert_eq!(c.read(0, expect.len() as u32).unwrap(), expect, "data after the hostile client");
    c.disconnect();
}

#[test]
fn go_reports_size_flags_and_block_sizes_then_serves() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default().description("a test disk".into()));
    let mut c = Client::fixed(server.addr);
    let info = c.go_named("", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION]).unwrap();
    assert_eq!(info.size, SIZE);
    assert_eq!(info.flags, HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | 0x100);
    assert_eq!(info.block_sizes, Some((1, 4096, 32 << 20)));
    assert_eq!(info.name.as_deref(), Some(""));
    assert_eq!(info.description.as_deref(), Some("a test disk"));
    assert_eq!(c.read(1000, 5000).unwrap(), &data[1000..6000], "an unaligned read");
    assert_eq!(c.read(0, 0).unwrap(), Vec::<u8>::new(), "a zero-length read");
    assert_eq!(c.write(4095, &[0xEE; 3]), 0, "an unaligned write");
    assert_eq!(c.read(4094, 5).unwrap(), [data[4094], 0xEE, 0xEE, 0xEE, data[4098]]);
    assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]), 0);
    assert_eq!(c.call(FLAG_FUA, CMD_WRITE, 8192, 2, &[1, 2]), 0, "FUA write");
    assert_eq!(c.call(FLAG_FUA, CMD_READ, 8192, 0, &[]), 0, "FUA is accepted on any command");
    c.disconnect();
    let ended = server.wait_ended(1);
    assert!(ended[0].contains("disconnected (NBD_CMD_DISC)"), "{ended:?}");
    let disk = server.stop();
    let mut back = [0u8; 2];
    disk.read_at(&mut back, 8192).unwrap();
    assert_eq!(back, [1, 2]);
}

#[test]
fn options_unknown_malformed_and_oversized_get_error_replies_and_haggling_continues() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default().export_name("vm".into()).description("d".into()));
    let mut c = Client::fixed(server.addr);
    for (option, payload) in
        [(0x1234u32, vec![7u8; 100]), (OPT_STRUCTURED_REPLY, vec![]), (OPT_STARTTLS, vec![]), (4, vec![])]
    {
        c.option(option, &payload);
        let r = c.opt_reply();
        assert_eq!((r.option, r.kind), (option, REP_ERR_UNSUP), "option {option}");
    }
    c.option(OPT_LIST, &[]);
    let r = c.opt_reply();
    assert_eq!(r.kind, REP_SERVER);
    assert_eq!(r.data, [&2u32.to_be_bytes()[..], b"vm", b"d"].concat(), "name length, name, description");
    assert_eq!(c.opt_reply().kind, REP_ACK);
    c.option(OPT_LIST, b"x");
    assert_eq!(c.opt_reply().kind, REP_ERR_INVALID, "NBD_OPT_LIST with data");
    assert_eq!(c.info_like(OPT_INFO, "nope", &[]).unwrap_err(), REP_ERR_UNKNOWN);
    for bad in [vec![0, 0, 0, 9, b'v', b'm', 0, 0], vec![0, 0], vec![0, 0, 0, 0, 0, 2, 0, 3]] {
        c.option(OPT_GO, &bad);
        assert_eq!(c.opt_reply().kind, REP_ERR_INVALID, "malformed NBD_OPT_GO {bad:?}");
    }
    // 1 MiB of option data: read and thrown away, refused, still in step.
    c.option(0x4242, &vec![0x55; 1 << 20]);
    assert_eq!(c.opt_reply().kind, REP_ERR_TOO_BIG);
    let info = c.info_like(OPT_INFO, "vm", &[INFO_NAME]).unwrap();
    assert_eq!((info.size, info.name.as_deref()), (SIZE, Some("vm")));
    let info = c.go_named("vm", &[]).unwrap();
    assert_eq!(info.size, SIZE);
    assert_eq!(c.read(0, 4096).unwrap(), &data[..4096]);
    c.disconnect();
}

#[test]
fn export_name_with_and_without_zeroes_and_unknown_names_close() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    // An old client: fixed newstyle, but the 124 zero bytes wanted.
    let (mut c, _) = Client::connect(server.addr);
    c.send(&1u32.to_be_bytes());
    c.option(OPT_EXPORT_NAME, b"");
    let r = c.read_n(8 + 2 + 124);
    assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), SIZE);
    assert_eq!(u16::from_be_bytes([r[8], r[9]]) & (HAS_FLAGS | READ_ONLY), HAS_FLAGS);
    assert!(r[10..].iter().all(|&b| b == 0));
    assert_eq!(c.read(512, 512).unwrap(), &data[512..1024]);
    c.disconnect();
    // NO_ZEROES: the reply to the first request follows the 10 bytes at once.
    let (mut c, _) = Client::connect(server.addr);
    c.send(&3u32.to_be_bytes());
    c.option(OPT_EXPORT_NAME, b"");
    assert_eq!(u64::from_be_bytes(c.read_n(10)[0..8].try_into().unwrap()), SIZE);
    assert_eq!(c.read(0, 16).unwrap(), &data[..16]);
    c.disconnect();
    // An unknown export with NBD_OPT_EXPORT_NAME cannot be answered: closed.
    let mut c = Client::fixed(server.addr);
    c.option(OPT_EXPORT_NAME, b"other");
    assert!(c.closed_by_server());
    // NBD_OPT_ABORT: acknowledged, then closed.
    let mut c = Client::fixed(server.addr);
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.opt_reply().kind, REP_ACK);
    assert!(c.closed_by_server());
    still_serves(server.addr, &data[..4096]);
}

#[test]
fn broken_handshakes_end_only_their_connection() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    // Unknown client flags.
    let (mut c, _) = Client::connect(server.addr);
    c.send(&0x8000_0001u32.to_be_bytes());
    assert!(c.closed_by_server(), "unknown client flags");
    // Bad option magic.
    let mut c = Client::fixed(server.addr);
    c.send(b"IHAVEOPX\0\0\0\x07\0\0\0\0");
    assert!(c.closed_by_server(), "bad option magic");
    // A client that leaves after the greeting, and one that leaves inside an option.
    let (c, _) = Client::connect(server.addr);
    c.vanish();
    let mut c = Client::fixed(server.addr);
    c.send(&[b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', 0, 0, 0, 7, 0, 0, 1, 0, 1, 2, 3]);
    c.vanish();
    // Garbage instead of a handshake.
    let (mut c, _) = Client::connect(server.addr);
    c.send(&[0xFF; 64]);
    assert!(c.closed_by_server(), "garbage client flags");
    still_serves(server.addr, &data[..4096]);
    assert_eq!(server.wait_ended(6).len(), 6);
}

#[test]
fn bad_requests_get_nbd_errors_and_the_session_goes_on() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    let (mut c, _) = Client::go(server.addr);
    // Reads: past the end, across it, overflowing, too long (no payload follows an error).
    assert_eq!(c.read(SIZE, 512).unwrap_err(), EINVAL);
    assert_eq!(c.read(SIZE - 256, 512).unwrap_err(), EINVAL);
    assert_eq!(c.read(u64::MAX - 100, 512).unwrap_err(), EINVAL);
    assert_eq!(c.read(0, 64 << 20).unwrap_err(), EINVAL);
    assert_eq!(c.read(0, (32 << 20) + 1).unwrap_err(), EINVAL);
    // Writes: the payload is always consumed, so the next request is framed.
    assert_eq!(c.write(SIZE - 100, &[1; 512]), ENOSPC);
    assert_eq!(c.write(u64::MAX - 10, &[1; 512]), ENOSPC);
    let big = vec![0xAA; (33 << 20) as usize];
    assert_eq!(c.write(0, &big), EINVAL, "a write over the 32 MiB limit");
    assert_eq!(c.call(0x8000, CMD_WRITE, 0, 4, &[9; 4]), EINVAL, "an unknown flag");
    assert_eq!(c.call(FLAG_NO_HOLE, CMD_WRITE, 0, 4, &[9; 4]), EINVAL, "NO_HOLE on a write");
    assert_eq!(c.call(FLAG_NO_HOLE, CMD_READ, 0, 0, &[]), EINVAL, "NO_HOLE on a read");
    // Other commands.
    assert_eq!(c.call(0, CMD_TRIM, SIZE, 4096, &[]), EINVAL);
    assert_eq!(c.call(0, CMD_WRITE_ZEROES, SIZE - 512, 4096, &[]), ENOSPC);
    assert_eq!(c.call(0x10, CMD_WRITE_ZEROES, 0, 4096, &[]), EINVAL, "FAST_ZERO was not offered");
    assert_eq!(c.call(0, 5, 0, 4096, &[]), EINVAL, "NBD_CMD_CACHE was not offered");
    assert_eq!(c.call(0, 7, 0, 4096, &[]), EINVAL, "NBD_CMD_BLOCK_STATUS was not negotiated");
    assert_eq!(c.call(0, 0xBEEF, 0, 0, &[]), EINVAL, "an unknown command");
    // Nothing of that changed the disk, and the session still works.
    assert_eq!(c.read(0, 4 << 20).unwrap(), data);
    assert_eq!(c.read(SIZE - 512, 512).unwrap(), vec![0; 512], "the last sector");
    assert_eq!(c.write(SIZE - 512, &[3; 512]), 0, "a write ending at the end");
    c.disconnect();
    let ended = server.wait_ended(1);
    assert!(ended[0].contains("(17 errors)"), "{ended:?}");
}

#[test]
fn garbage_and_vanishing_clients_end_only_their_connection() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    // Garbage after a good request: the framing is lost, the connection ends.
    let (mut c, _) = Client::go(server.addr);
    assert_eq!(c.read(0, 512).unwrap(), &data[..512]);
    c.send(&[0x5A; 28]);
    assert!(c.closed_by_server(), "bad request magic");
    // Half a request header, then gone.
    let (mut c, _) = Client::go(server.addr);
    c.send(&[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1]);
    c.vanish();
    // A write whose payload stops short: nothing of it may reach the disk.
    let (mut c, _) = Client::go(server.addr);
    let mut partial = Vec::new();
    partial.extend_from_slice(&0x25609513u32.to_be_bytes());
    partial.extend_from_slice(&[0, 0, 0, 1]);
    partial.extend_from_slice(&1u64.to_be_bytes());
    partial.extend_from_slice(&0u64.to_be_bytes());
    partial.extend_from_slice(&(64u32 << 10).to_be_bytes());
    partial.extend_from_slice(&[0xCC; 1000]);
    c.send(&partial);
    c.vanish();
    // A long read whose reply nobody reads, and an oversized write's header alone.
    let (mut c, _) = Client::go(server.addr);
    c.request(0, CMD_READ, 1, 0, 32 << 20, &[]);
    c.vanish();
    let (mut c, _) = Client::go(server.addr);
    c.request(0, CMD_WRITE, 1, 0, u32::MAX, &[1; 4096]);
    c.vanish();
    assert_eq!(server.wait_ended(5).len(), 5);
    still_serves(server.addr, &data);
}

#[test]
fn read_only_exports_refuse_every_kind_of_write() {
    for opened_read_only in [false, true] {
        let (disk, data) = seeded();
        let disk = if opened_read_only {
            vhdx::OpenOptions::new().open_storage(disk.into_storage().unwrap()).unwrap()
        } else {
            disk
        };
        let server = Running::start(disk, ServeOptions::default().read_only(!opened_read_only));
        let (mut c, info) = Client::go(server.addr);
        assert_eq!(info.flags & (READ_ONLY | SEND_TRIM | SEND_WRITE_ZEROES), READ_ONLY);
        assert_eq!(c.write(0, &[1; 512]), EPERM);
        assert_eq!(c.call(0, CMD_WRITE_ZEROES, 0, 512, &[]), EPERM);
        assert_eq!(c.call(0, CMD_TRIM, 0, 512, &[]), EPERM);
        assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]), 0, "a flush of nothing succeeds");
        assert_eq!(c.read(0, 4 << 20).unwrap(), data);
        c.disconnect();
    }
}

#[test]
fn write_zeroes_and_trim_over_the_wire() {
    let (disk, data) = seeded();
    let before = disk.info().unwrap().allocated_blocks;
    let server = Running::start(disk, ServeOptions::default());
    let (mut c, _) = Client::go(server.addr);
    // Zeroes across allocated data (unaligned), and over 8 MiB never written.
    assert_eq!(c.call(0, CMD_WRITE_ZEROES, 1000, 70_000, &[]), 0);
    assert_eq!(c.call(FLAG_NO_HOLE | FLAG_FUA, CMD_WRITE_ZEROES, 3 << 20, 1 << 20, &[]), 0);
    assert_eq!(c.call(0, CMD_WRITE_ZEROES, 8 << 20, 8 << 20, &[]), 0);
    let mut expect = data.clone();
    expect[1000..71_000].fill(0);
    expect[3 << 20..].fill(0);
    assert_eq!(c.read(0, 4 << 20).unwrap(), expect);
    // Trim is advisory in NBD; this server discards: the range reads zeros.
    assert_eq!(c.call(FLAG_FUA, CMD_TRIM, 1 << 20, 1 << 20, &[]), 0);
    assert_eq!(c.read(1 << 20, 1 << 20).unwrap(), vec![0u8; 1 << 20], "the trimmed range");
    let around = [c.read(0, 1 << 20).unwrap(), c.read(2 << 20, 1 << 20).unwrap()];
    assert_eq!(around, [expect[..1 << 20].to_vec(), expect[2 << 20..3 << 20].to_vec()], "outside the trim");
    c.disconnect();
    let ended = server.wait_ended(1);
    assert!(ended[0].contains(&format!("{} zeroed, {} trimmed", 70_000 + (9 << 20), 1 << 20)), "{ended:?}");
    let disk = server.stop();
    // Zeroing allocated nothing; the trim of a whole 1 MiB block gave it back.
    assert_eq!(disk.info().unwrap().allocated_blocks, before - 1, "blocks after zeroing and a whole-block trim");
}

#[test]
fn clients_are_served_concurrently_up_to_the_limit() {
    let (disk, data) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    let (mut idle, _) = Client::go(server.addr);
    // A second client is served while the first stays connected, and sees its writes.
    let (mut other, _) = Client::go(server.addr);
    assert_eq!(idle.write(0, b"from the first client"), 0);
    assert_eq!(other.read(0, 21).unwrap(), b"from the first client");
    idle.disconnect();
    other.disconnect();
    drop(server);

    let (disk, _) = seeded();
    let server = Running::start(disk, ServeOptions::default().max_connections(1));
    let (first, _) = Client::go(server.addr);
    let waiting = std::net::TcpStream::connect(server.addr).unwrap();
    waiting.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut byte = [0u8; 1];
    let r = std::io::Read::read(&mut &waiting, &mut byte);
    assert!(r.is_err(), "a client beyond the limit got a greeting: {r:?}");
    first.disconnect();
    waiting.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 8];
    std::io::Read::read_exact(&mut &waiting, &mut greeting).unwrap();
    assert_eq!(&greeting, NBDMAGIC, "served once the first left");
    drop(waiting);
    still_serves(server.addr, &data[..512]);
}

#[test]
fn a_silent_client_times_out_in_the_handshake() {
    let (disk, data) = seeded();
    let options = ServeOptions::default().handshake_timeout(Some(Duration::from_millis(300))).max_connections(1);
    let server = Running::start(disk, options);
    let start = Instant::now();
    let (mut silent, _) = Client::connect(server.addr);
    assert!(silent.closed_by_server());
    assert!(start.elapsed() < Duration::from_secs(10));
    // The timeout ends with the handshake: an idle client in transmission stays.
    let (mut c, _) = Client::go(server.addr);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(c.read(0, 512).unwrap(), &data[..512]);
    c.disconnect();
}

#[test]
fn stop_ends_connected_sessions_and_once_serves_one_client() {
    let (disk, _) = seeded();
    let server = Running::start(disk, ServeOptions::default());
    let (mut c, _) = Client::go(server.addr);
    assert_eq!(c.write(100, b"kept"), 0);
    let disk = server.stop();
    assert!(c.closed_by_server(), "stop closes connected clients");
    let mut back = [0u8; 4];
    disk.read_at(&mut back, 100).unwrap();
    assert_eq!(&back, b"kept");

    let server = Running::start(disk, ServeOptions::default().once(true));
    let (c, _) = Client::go(server.addr);
    assert!(!server.finished());
    c.disconnect();
    let disk = server.join();
    disk.read_at(&mut back, 100).unwrap();
    assert_eq!(&back, b"kept");
}

/// The image as it was at the last storage flush: what survives a power cut.
fn durable_image(rec: &crate::common::storage::Recorder) -> (vhdx::Disk, Vec<u8>) {
    let last_flush = rec.ops.lock().unwrap().iter().rposition(|op| matches!(op, crate::common::storage::Op::Flush));
    let bytes = rec.image_after(last_flush.map_or(0, |i| i + 1));
    let disk = vhdx::Disk::open_storage(Box::new(crate::common::storage::SharedMem::from_vec(bytes.clone()))).unwrap();
    (disk, bytes)
}

fn read_at(disk: &vhdx::Disk, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    disk.read_at(&mut b, offset).unwrap();
    b
}

#[test]
fn fua_flush_and_the_end_of_a_session_are_durable_before_the_reply() {
    let rec = crate::common::storage::Recorder::new();
    let options = vhdx::CreateOptions::dynamic(SIZE).block_size(1 << 20);
    let mut disk = vhdx::Disk::create_on(Box::new(rec.clone()), &options, None).unwrap();
    disk.flush().unwrap();
    let server = Running::start(disk, ServeOptions::default());
    let (mut c, _) = Client::go(server.addr);
    let mib = 1u64 << 20;
    // A plain write is not yet durable: the oracle tells the difference.
    assert_eq!(c.write(0, &[0xA1; 4096]), 0);
    assert_eq!(read_at(&durable_image(&rec).0, 0, 4096), vec![0; 4096], "durable without a flush?");
    // FUA: durable before the reply (and so is everything before it).
    assert_eq!(c.call(FLAG_FUA, CMD_WRITE, mib, 4096, &[0xB2; 4096]), 0);
    let (d, _) = durable_image(&rec);
    assert_eq!((read_at(&d, 0, 4096), read_at(&d, mib, 4096)), (vec![0xA1; 4096], vec![0xB2; 4096]));
    // NBD_CMD_FLUSH.
    assert_eq!(c.write(2 * mib + 100, &[0xC3; 5000]), 0);
    assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]), 0);
    assert_eq!(read_at(&durable_image(&rec).0, 2 * mib + 100, 5000), vec![0xC3; 5000]);
    // Write-zeroes with FUA.
    assert_eq!(c.call(FLAG_FUA, CMD_WRITE_ZEROES, mib + 1024, 1024, &[]), 0);
    let mut expect = vec![0xB2; 4096];
    expect[1024..2048].fill(0);
    assert_eq!(read_at(&durable_image(&rec).0, mib, 4096), expect);
    // The end of the session: durable, and the log left clean.
    assert_eq!(c.write(5 * mib, &[0xD4; 512]), 0);
    c.vanish();
    server.wait_ended(1);
    let (d, bytes) = durable_image(&rec);
    assert_eq!(read_at(&d, 5 * mib, 512), vec![0xD4; 512]);
    let headers = [64usize << 10, 128 << 10].map(|at| crate::common::layout::parse_header(&bytes[at..at + 4096]));
    let current = headers.iter().flatten().max_by_key(|h| h.sequence_number).expect("a valid header");
    assert_eq!(current.log_guid, [0; 16], "the log is not clean after the session");
}

/// One client with many requests in flight: the server's workers answer
/// them as each completes (out of order, as NBD allows), each handle
/// exactly once and with its own data. Rounds of 64 writes (half into
/// blocks already stored, half allocating) and 64 reads of earlier rounds'
/// slots, each ended by a flush the client waits for; the disk, a file, is
/// then read back against the model, for 1 worker (in order) and 4.
#[test]
fn pipelined_requests_are_answered_each_once_with_their_own_data() {
    for workers in [1usize, 4] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe.vhdx");
        let mut disk = vhdx::Disk::create(&path, &vhdx::CreateOptions::dynamic(SIZE).block_size(1 << 20)).unwrap();
        disk.write_at(&vec![0x11; (SIZE / 2) as usize], 0).unwrap();
        disk.flush().unwrap();
        let mut model = vec![0u8; SIZE as usize];
        model[..(SIZE / 2) as usize].fill(0x11);
        let server = Running::start(disk, ServeOptions::default().workers(workers));
        let (mut c, _) = Client::go(server.addr);
        let slot = |i: u64| (i * 7919 % (SIZE / 4096)) * 4096;
        let mut written: Vec<u64> = Vec::new();
        let mut out_of_order = 0;
        for round in 0..6u64 {
            let mut expected: std::collections::BTreeMap<u64, Option<Vec<u8>>> = Default::default();
            for i in 0..64u64 {
                let n = round * 64 + i;
                let at = slot(n);
                let data = pattern(1000 + n, 4096);
                c.request(0, CMD_WRITE, 1 << 32 | n, at, 4096, &data);
                model[at as usize..at as usize + 4096].copy_from_slice(&data);
                expected.insert(1 << 32 | n, None);
            }
            for (i, &at) in written.iter().rev().take(64).enumerate() {
                c.request(0, CMD_READ, 2 << 32 | round << 8 | i as u64, at, 4096, &[]);
                expected.insert(2 << 32 | round << 8 | i as u64, Some(model[at as usize..at as usize + 4096].to_vec()));
            }
            let mut last = 0u64;
            while !expected.is_empty() {
                let (error, handle) = c.reply();
                assert_eq!(error, 0, "handle {handle:#x}");
                let want =
                    expected.remove(&handle).unwrap_or_else(|| panic!("an unknown or repeated handle {handle:#x}"));
                if let Some(want) = want {
                    assert!(c.read_n(4096) == want, "read {handle:#x} got other bytes");
                }
                if handle < last {
                    out_of_order += 1;
                }
                last = handle;
            }
            assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]), 0);
            written.extend((round * 64..round * 64 + 64).map(slot));
        }
        if workers == 1 {
            assert_eq!(out_of_order, 0, "one worker answers in order");
        }
        c.disconnect();
        server.wait_ended(1);
        let disk = server.stop();
        let mut back = vec![0u8; SIZE as usize];
        disk.read_at(&mut back, 0).unwrap();
        assert!(back == model, "{workers} workers: the disk differs from the model");
        disk.close().unwrap();
        assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    }
}
