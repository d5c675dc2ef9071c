//! Locks against QEMU's own tools: QEMU refuses an image this crate holds
//! for writing, this crate refuses one QEMU holds for writing, and readers
//! of both share. The bytes locked are compared with those QEMU locks, as
//! the kernel lists them in `/proc/locks`.
//!
//! Needs `qemu-img`, `qemu-io` and `qemu-nbd`; outside CI a missing tool
//! skips a test after a note, under `CI=true` it fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vhdx::{CreateOptions, Disk, ErrorKind, OpenOptions};

use crate::support::{ofd_bytes, run_within, stderr, vhdx, Holder};

const MIB: u64 = 1 << 20;

fn tools() -> bool {
    ["qemu-img", "qemu-io", "qemu-nbd"].iter().all(|t| crate::support::tool(t))
}

/// An 8 MiB dynamic image made by QEMU, with 0x5a at 1 MiB.
fn qemu_image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_str().unwrap();
    assert!(run_within(qemu(&["qemu-img", "create", "-q", "-f", "vhdx", p, "8M"])).status.success());
    let out = run_within(qemu(&["qemu-io", "-f", "vhdx", "-c", "write -P 0x5a 1M 64k", p]));
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("error"), "{out:?}");
    path
}

fn qemu(args: &[&str]) -> Command {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    cmd
}

/// `qemu-io` holding `image` open (read-only with `-r`), interactive on a pipe.
fn qemu_io_holding(image: &Path, read_only: bool) -> Holder {
    let mut cmd = Command::new("qemu-io");
    if read_only {
        cmd.arg("-r");
    }
    cmd.args(["-f", "vhdx"]).arg(image);
    Holder::start(cmd, image)
}

/// `qemu-nbd` serving `image` on a Unix socket (read-only with `-r`).
fn qemu_nbd_holding(image: &Path, read_only: bool) -> Holder {
    let mut cmd = Command::new("qemu-nbd");
    if read_only {
        cmd.arg("-r");
    }
    cmd.args(["-f", "vhdx", "-k"]).arg(image.with_extension("sock")).arg(image);
    Holder::start(cmd, image)
}

/// A QEMU command that must be refused for a lock.
fn qemu_refused(args: &[&str]) {
    let out: Output = run_within(qemu(args));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("Failed to get") && text.contains("lock"), "{} was not refused: {text}", args.join(" "));
    assert!(!out.status.success() || args[0] == "qemu-io", "{} exited 0: {text}", args.join(" "));
}

/// A QEMU command that must succeed.
fn qemu_ok(args: &[&str]) -> String {
    let out = run_within(qemu(args));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success() && !text.contains("Failed") && !text.contains("error"), "{}: {text}", args.join(" "));
    text
}

fn busy(result: vhdx::Result<Disk>) {
    let e = result.map(drop).expect_err("the open was admitted");
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
}

#[test]
fn we_lock_the_bytes_qemu_locks() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_image(dir.path(), "same.vhdx");
    let qemu_writer = {
        let _h = qemu_io_holding(&img, false);
        ofd_bytes(&img)
    };
    let qemu_reader = {
        let _h = qemu_io_holding(&img, true);
        ofd_bytes(&img)
    };
    let ours_writer = {
        let _d = Disk::open_writable(&img).unwrap();
        ofd_bytes(&img)
    };
    let ours_reader = {
        let _d = Disk::open(&img).unwrap();
        ofd_bytes(&img)
    };
    assert_eq!(ours_writer, qemu_writer, "a writer's bytes");
    assert_eq!(ours_reader, qemu_reader, "a reader's bytes");
    assert_ne!(qemu_writer, qemu_reader);
}

#[test]
fn an_image_qemu_writes_is_refused_to_us() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_image(dir.path(), "theirs.vhdx");
    let input = dir.path().join("in.bin");
    std::fs::write(&input, [9u8; 512]).unwrap();
    let holders: [fn(&Path, bool) -> Holder; 2] = [qemu_nbd_holding, qemu_io_holding];
    for start in holders {
        let holder = start(&img, false);
        busy(Disk::open_writable(&img));
        busy(Disk::open(&img));
        // Another process of ours is refused as well: the CLI writes nothing.
        let out = vhdx(&["write", img.to_str().unwrap(), "--offset", "0", "--input", input.to_str().unwrap()]);
        assert!(out.status.code() == Some(1) && stderr(&out).contains("in use"), "{}", stderr(&out));
        // Force-share reads what QEMU wrote.
        let d = OpenOptions::new().force_share(true).open(&img).unwrap();
        let mut buf = [0u8; 512];
        d.read_at(&mut buf, MIB).unwrap();
        assert_eq!(buf, [0x5a; 512]);
        drop((d, holder));
    }
    qemu_ok(&["qemu-io", "-f", "vhdx", "-c", "read -P 0 0 512", img.to_str().unwrap()]);
}

#[test]
fn an_image_we_write_is_refused_to_qemu() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_image(dir.path(), "ours.vhdx");
    let p = img.to_str().unwrap();
    let sock = dir.path().join("nbd.sock");
    let s = sock.to_str().unwrap();
    // A writer in this process, then `vhdx serve` in another.
    let mut w = Disk::open_writable(&img).unwrap();
    w.write_at(&[7; 512], 0).unwrap();
    qemu_refused(&["qemu-io", "-f", "vhdx", "-c", "write -P 9 0 512", p]);
    qemu_refused(&["qemu-io", "-r", "-f", "vhdx", "-c", "read 0 512", p]);
    qemu_refused(&["qemu-img", "info", p]);
    qemu_refused(&["qemu-img", "check", "-f", "vhdx", p]);
    qemu_refused(&["qemu-nbd", "-f", "vhdx", "-k", s, p]);
    qemu_ok(&["qemu-img", "info", "-U", p]);
    w.close().unwrap();
    let holder = Holder::vhdx_serve(&img, &[]);
    qemu_refused(&["qemu-io", "-f", "vhdx", "-c", "write -P 9 0 512", p]);
    qemu_refused(&["qemu-img", "info", p]);
    qemu_refused(&["qemu-nbd", "-f", "vhdx", "-k", s, p]);
    drop(holder);
    // Nothing QEMU tried reached the image.
    qemu_ok(&["qemu-io", "-f", "vhdx", "-c", "read -P 7 0 512", p]);
}

#[test]
fn readers_of_qemu_and_ours_share() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_image(dir.path(), "read.vhdx");
    let p = img.to_str().unwrap();
    let holders: [fn(&Path, bool) -> Holder; 2] = [qemu_io_holding, qemu_nbd_holding];
    for start in holders {
        let holder = start(&img, true);
        let d = Disk::open(&img).unwrap();
        let mut buf = [0u8; 512];
        d.read_at(&mut buf, MIB).unwrap();
        assert_eq!(buf, [0x5a; 512]);
        assert!(vhdx(&["info", p]).status.success());
        busy(Disk::open_writable(&img));
        drop((d, holder));
    }
    let ours = Disk::open(&img).unwrap();
    qemu_ok(&["qemu-img", "info", p]);
    qemu_ok(&["qemu-io", "-r", "-f", "vhdx", "-c", "read -P 0x5a 1M 512", p]);
    qemu_refused(&["qemu-io", "-f", "vhdx", "-c", "write 0 512", p]);
    drop(ours);
}

#[test]
fn our_children_share_their_parent_with_qemu_readers() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    Disk::create(&base, &CreateOptions::dynamic(8 * MIB)).unwrap().close().unwrap();
    let (a, b) = (dir.path().join("a.vhdx"), dir.path().join("b.vhdx"));
    Disk::create_differencing(&a, &base, None).unwrap().close().unwrap();
    Disk::create_differencing(&b, &base, None).unwrap().close().unwrap();
    // One child written here, the other served by another process.
    let mut da = Disk::open_writable(&a).unwrap();
    da.write_at(&[1; 4096], 0).unwrap();
    let holder = Holder::vhdx_serve(&b, &[]);
    let p = base.to_str().unwrap();
    qemu_ok(&["qemu-img", "info", p]);
    qemu_refused(&["qemu-io", "-f", "vhdx", "-c", "write 0 512", p]);
    busy(Disk::open_writable(&base));
    drop(holder);
    da.close().unwrap();
    qemu_ok(&["qemu-io", "-f", "vhdx", "-c", "write -P 3 0 512", p]);
}
