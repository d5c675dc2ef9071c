//! The NBD server with QEMU as the client: `qemu-img convert` and `qemu-img
//! info` read the export, `qemu-io -f raw nbd://…` writes, zeroes and
//! discards through it, and every result is compared with a raw reference
//! that received the same writes (through the test's own model, or through
//! `qemu-io` on a raw file), then with the image read back by the crate and
//! by QEMU's own VHDX driver. The command-line `vhdx serve` is driven the
//! same way. Protocol details and hostile clients are in `nbd_protocol`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use vhdx::nbd::ServeOptions;
use vhdx::{CreateOptions, Disk};

use crate::common::StartRetrying;
use crate::common::{compare::*, data::*, layout::*, models::*, qemu::*};
use crate::support::{qemu_io_any, qemu_io_ok, Running};

const SIZE: u64 = 64 << 20;
const MIB: u64 = 1 << 20;

/// The whole export copied by `qemu-img convert` into `out`.
fn export_to_raw(uri: &str, out: &Path) {
    qemu_img(&["convert", "-f", "raw", "-O", "raw", uri, out.to_str().unwrap()]);
}

/// `qemu-img info` of the export: its virtual size.
fn export_size(uri: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "-f", "raw", "--output=json", uri])).expect("JSON");
    v["virtual-size"].as_u64().expect("virtual-size")
}

/// Writes `data` at `offset` into both the disk and the model.
fn write_both(disk: &mut Disk, model: &RawModel, data: &[u8], offset: u64) {
    disk.write_at(data, offset).unwrap();
    model.write(data, offset);
}

#[test]
fn a_dynamic_disk_reads_whole_through_qemu_img_convert() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    let model = RawModel::new(dir.path().join("model.raw"), SIZE);
    let mut disk = Disk::create(&path, &CreateOptions::dynamic(SIZE).block_size(1 << 20)).unwrap();
    for (i, (offset, len)) in
        [(1000, 70_000), (5 * MIB + 512, 3 * MIB as usize), (SIZE - 4096, 4096), (33 * MIB + 7, 1)]
            .into_iter()
            .enumerate()
    {
        write_both(&mut disk, &model, &pattern(i as u64 + 1, len), offset);
    }
    disk.flush().unwrap();
    let server = Running::start(disk, ServeOptions::default());
    assert_eq!(export_size(&server.uri()), SIZE);
    let out = dir.path().join("out.raw");
    export_to_raw(&server.uri(), &out);
    assert_files_equal(&out, &model.path);
    let disk = server.stop();
    assert_disk_equals_raw_file(&disk, &model.path);
}

/// base ← mid ← leaf, with unaligned writes at every level (some across
/// block boundaries, some overlapping the level below).
fn make_chain(dir: &Path, model: &RawModel) -> [PathBuf; 3] {
    let paths = ["base.vhdx", "mid.vhdx", "leaf.vhdx"].map(|n| dir.join(n));
    let mut base = Disk::create(&paths[0], &CreateOptions::dynamic(SIZE).block_size(1 << 20)).unwrap();
    write_both(&mut base, model, &pattern(10, 3 * MIB as usize), 100);
    write_both(&mut base, model, &pattern(11, 5000), 20 * MIB - 1000);
    base.close().unwrap();
    let mut mid = Disk::create_differencing(&paths[1], &paths[0], Some(1 << 20)).unwrap();
    write_both(&mut mid, model, &pattern(20, 1_500_000), MIB - 333);
    write_both(&mut mid, model, &pattern(21, 777), 40 * MIB + 1);
    mid.close().unwrap();
    let mut leaf = Disk::create_differencing(&paths[2], &paths[1], Some(2 << 20)).unwrap();
    write_both(&mut leaf, model, &pattern(30, 10_000), 2 * MIB - 5000);
    write_both(&mut leaf, model, &pattern(31, 513), 20 * MIB - 10);
    leaf.close().unwrap();
    paths
}

#[test]
fn a_differencing_chain_is_read_and_written_through_the_export() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = RawModel::new(dir.path().join("model.raw"), SIZE);
    let [base, mid, leaf] = make_chain(dir.path(), &model);
    let parents_before = [sha256_file(&base), sha256_file(&mid)];
    let server = Running::start(Disk::open_writable(&leaf).unwrap(), ServeOptions::default());
    let uri = server.uri();
    assert_eq!(export_size(&uri), SIZE);
    let out = dir.path().join("out.raw");
    export_to_raw(&uri, &out);
    assert_files_equal(&out, &model.path);

    // Writes through QEMU, unaligned, across block boundaries of every level.
    let cmds = ["write -P 0x5a 1048000 100000", "write -P 0xa5 20971000 3000", "write -P 0x11 63M 1M", "flush"];
    qemu_io_ok(&[], &uri, &cmds);
    qemu_io_ok(&[], &model.path.display().to_string(), &cmds);
    qemu_io_ok(&[], &uri, &["read -P 0x5a 1048000 100000", "read -P 0xa5 20971000 3000"]);
    std::fs::remove_file(&out).unwrap();
    export_to_raw(&uri, &out);
    assert_files_equal(&out, &model.path);

    let disk = server.stop();
    assert_disk_equals_raw_file(&disk, &model.path);
    disk.close().unwrap();
    assert_eq!([sha256_file(&base), sha256_file(&mid)], parents_before, "the parents were written to");
    // The leaf read back by the crate (QEMU's VHDX driver does not open
    // differencing images: serving them is how QEMU gets to read them).
    assert_disk_equals_raw_file(&Disk::open(&leaf).unwrap(), &model.path);
}

#[test]
fn flushed_writes_are_durable_and_the_log_clean_between_clients() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(SIZE).block_size(1 << 20)).unwrap().close().unwrap();
    let reference = RawModel::new(dir.path().join("ref.raw"), SIZE);
    let server = Running::start(Disk::open_writable(&path).unwrap(), ServeOptions::default());
    let cmds = ["write -P 0xab 1000 70000", "write -P 0xcd 3M 1M", "write -P 0xef 10485759 2", "flush"];
    qemu_io_ok(&[], &server.uri(), &cmds);
    qemu_io_ok(&[], &reference.path.display().to_string(), &cmds);
    qemu_io_ok(&[], &server.uri(), &["read -P 0xab 1000 70000", "read -P 0xcd 3M 1M", "read -P 0 71000 1000"]);
    let ended = server.wait_ended(2);
    assert!(ended[0].contains("written") && !ended[0].contains(" 0 written"), "{ended:?}");

    // The server still runs and holds the image open for writing (and
    // locked: it is looked at with force-share); the file is nevertheless a
    // clean image: no log to replay, the data in place.
    assert!(current_header(&path).log_guid.iter().all(|&b| b == 0), "the log is left dirty between clients");
    qemu_check_clean_with(&path, &["-U"]);
    assert_disk_equals_raw_file(&vhdx::OpenOptions::new().force_share(true).open(&path).unwrap(), &reference.path);
    let by_qemu = dir.path().join("by-qemu.raw");
    qemu_img(&["convert", "-U", "-f", "vhdx", "-O", "raw", path.to_str().unwrap(), by_qemu.to_str().unwrap()]);
    assert_files_equal(&by_qemu, &reference.path);
    server.stop().close().unwrap();
    assert_disk_equals_raw_file(&Disk::open(&path).unwrap(), &reference.path);
}

#[test]
fn qemu_write_zeroes_and_discard_reach_the_disk() {
    if !qemu() {
        return;
    }
    for chained in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let reference = RawModel::new(dir.path().join("ref.raw"), SIZE);
        let path = if chained {
            make_chain(dir.path(), &reference)[2].clone()
        } else {
            let path = dir.path().join("d.vhdx");
            let mut disk = Disk::create(&path, &CreateOptions::dynamic(SIZE).block_size(1 << 20)).unwrap();
            write_both(&mut disk, &reference, &pattern(5, 24 * MIB as usize), 0);
            disk.close().unwrap();
            path
        };
        let blocks_before = Disk::open(&path).unwrap().info().unwrap().allocated_blocks;
        let server = Running::start(Disk::open_writable(&path).unwrap(), ServeOptions::default());
        // Unaligned zeroing over data (in a chain: over the parents' data),
        // with and without NO_HOLE, and over space never written.
        let zero = ["write -z 1000 70000", "write -z -u 2M 3M", "write -z 20971000 3000", "write -z 48M 8M", "flush"];
        qemu_io_ok(&[], &server.uri(), &zero);
        qemu_io_ok(&[], &reference.path.display().to_string(), &zero);
        let out = dir.path().join("out.raw");
        export_to_raw(&server.uri(), &out);
        assert_files_equal(&out, &reference.path);
        let ended = server.wait_ended(2);
        assert!(ended[0].contains(" 0 written") && ended[0].contains(" 11607336 zeroed"), "{ended:?}");

        // Discard: the export's other bytes are untouched; NBD promises
        // nothing about the discarded range, this server makes it read zeros.
        let before = std::fs::read(&out).unwrap();
        qemu_io_ok(&[], &server.uri(), &["discard 1M 2M", "discard 30M 512", "flush"]);
        std::fs::remove_file(&out).unwrap();
        export_to_raw(&server.uri(), &out);
        let after = std::fs::read(&out).unwrap();
        let discarded = [(MIB, 3 * MIB), (30 * MIB, 30 * MIB + 512)];
        for (i, (a, b)) in before.chunks(512).zip(after.chunks(512)).enumerate() {
            let at = i as u64 * 512;
            if discarded.iter().any(|&(lo, hi)| at >= lo && at < hi) {
                assert!(b.iter().all(|&x| x == 0), "discarded sector {at:#x} does not read zeros");
            } else {
                assert_eq!(a, b, "sector {at:#x} outside the discarded ranges changed");
            }
        }
        assert!(server.wait_ended(4)[2].contains(" 2097664 trimmed"), "{:?}", server.ended());
        let disk = server.stop();
        disk.close().unwrap();
        if !chained {
            // Zeroing allocated nothing; the trim may have given blocks back.
            let blocks_after = Disk::open(&path).unwrap().info().unwrap().allocated_blocks;
            assert!(blocks_after <= blocks_before, "zeroing allocated blocks: {blocks_before} -> {blocks_after}");
            qemu_check_clean(&path);
        }
    }
}

#[test]
fn a_read_only_export_refuses_qemu_writes() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    let mut disk = Disk::create(&path, &CreateOptions::dynamic(SIZE)).unwrap();
    disk.write_at(&[0x42; 4096], 0).unwrap();
    disk.close().unwrap();
    let file_before = sha256_file(&path);
    for opened_writable in [true, false] {
        let disk = if opened_writable { Disk::open_writable(&path).unwrap() } else { Disk::open(&path).unwrap() };
        let server = Running::start(disk, ServeOptions::default().read_only(true));
        let (ok, text) = qemu_io_any(&[], &server.uri(), &["write -P 0x99 0 4096", "flush"]);
        assert!(!ok || text.to_lowercase().contains("read-only") || text.contains("failed"), "{text}");
        assert!(!text.contains("wrote 4096/4096"), "qemu-io reports a write: {text}");
        let uri = server.uri();
        let out = run("qemu-io", &["-f", "raw", "-r", "-c", "read -P 0x42 0 4096", &uri]);
        assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("Pattern"));
        server.stop().close().unwrap();
    }
    assert_eq!(sha256_file(&path), file_before, "a read-only export changed the file");
}

// ---------------------------------------------------------------- the command line

/// The built `vhdx` example.
fn bin() -> PathBuf {
    crate::common::cli::bin().to_path_buf()
}

/// `vhdx serve ARGS… --port 0 --once`, started; returns the child and the
/// `nbd://` address it printed.
fn cli_serve(args: &[&str]) -> (Child, String, std::thread::JoinHandle<String>) {
    let mut child = Command::new(bin())
        .arg("serve")
        .args(args)
        .args(["--port", "0", "--once"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn_retrying();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let uri = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no nbd:// address in {first:?}"))
        .to_string();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    (child, uri, rest)
}

#[test]
fn the_cli_serves_a_chain_once_to_qemu() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = RawModel::new(dir.path().join("model.raw"), SIZE);
    let [_, _, leaf] = make_chain(dir.path(), &model);
    let (mut child, uri, log) = cli_serve(&[leaf.to_str().unwrap()]);
    let cmds = ["write -P 0x77 12345 54321", "flush"];
    qemu_io_ok(&[], &uri, &cmds);
    qemu_io_ok(&[], &model.path.display().to_string(), &cmds);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "vhdx serve --once exited with {status}: {log}");
    assert!(log.contains("disconnected (NBD_CMD_DISC)"), "{log}");
    assert_disk_equals_raw_file(&Disk::open(&leaf).unwrap(), &model.path);

    // Read-only: the write fails, the file stays as it was.
    let before = sha256_file(&leaf);
    let (mut child, uri, log) = cli_serve(&[leaf.to_str().unwrap(), "--read-only"]);
    let out = dir.path().join("out.raw");
    export_to_raw(&uri, &out);
    assert!(child.wait().unwrap().success(), "{}", log.join().unwrap());
    assert_files_equal(&out, &model.path);
    let (mut child, uri, log) = cli_serve(&[leaf.to_str().unwrap(), "--read-only"]);
    let (_, text) = qemu_io_any(&[], &uri, &["write -P 0x99 0 4096"]);
    assert!(!text.contains("wrote 4096/4096"), "{text}");
    assert!(child.wait().unwrap().success(), "{}", log.join().unwrap());
    assert_eq!(sha256_file(&leaf), before);
}

#[test]
fn the_cli_reports_a_port_it_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    Disk::create(&path, &CreateOptions::dynamic(MIB)).unwrap().close().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(bin()).args(["serve", path.to_str().unwrap(), "--port", &port]).output_retrying();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: ") && err.contains(&port) && err.contains("d.vhdx"), "{err}");
    let out =
        Command::new(bin()).args(["serve", "missing.vhdx", "--port", "0"]).current_dir(dir.path()).output_retrying();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.vhdx"));
}

#[test]
fn the_cli_serves_a_vhd_chain_to_qemu() {
    use vhdx::vhd::{VhdCreateOptions, VhdDisk};
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 6 << 20;
    let base = dir.path().join("base.vhd");
    let mut b = VhdDisk::create(&base, &VhdCreateOptions::dynamic(size)).unwrap();
    b.write_at(&pattern(21, 3 << 20), 1 << 20).unwrap();
    drop(b);
    // The server tells a VHD by its content; the leaf is a differencing
    // VHD whose parent it opens.
    let leaf = dir.path().join("leaf.vhd");
    drop(VhdDisk::create_differencing(&leaf, &base).unwrap());
    let model = RawModel::new(dir.path().join("model.raw"), size);
    let mut m = vec![0u8; size as usize];
    m[1 << 20..4 << 20].copy_from_slice(&pattern(21, 3 << 20));
    std::fs::write(&model.path, &m).unwrap();
    let (mut child, uri, log) = cli_serve(&[leaf.to_str().unwrap()]);
    let cmds = ["write -P 0x5a 1000 70000", "write -P 0xa5 3145000 2000", "flush"];
    qemu_io_ok(&[], &uri, &cmds);
    qemu_io_ok(&[], &model.path.display().to_string(), &cmds);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "vhdx serve --once exited with {status}: {log}");
    let chain = VhdDisk::open(&leaf).unwrap();
    assert_eq!(sha256_device(&chain), sha256_file(&model.path), "the chain holds what the client wrote");
    drop(chain);
    // Read-only: what QEMU reads over NBD is the chain, and the file stays.
    let before = sha256_file(&leaf);
    let (mut child, uri, log) = cli_serve(&[leaf.to_str().unwrap(), "--read-only"]);
    let out = dir.path().join("out.raw");
    export_to_raw(&uri, &out);
    assert!(child.wait().unwrap().success(), "{}", log.join().unwrap());
    assert_files_equal(&out, &model.path);
    assert_eq!(sha256_file(&leaf), before);
}
