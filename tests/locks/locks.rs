//! Image locks seen from one process: two handles on one file behave as two
//! processes do (the locks are open-file-description locks), children share
//! their parent, force-share inspects an image in use, a lock set holds an
//! operation's images; and only regular files are opened as images, parents
//! or scanned siblings — a FIFO, a socket or a directory is refused or
//! skipped at once, never waited on.
//!
//! The lock bytes are compared with what the kernel lists in `/proc/locks`
//! and with what QEMU 10 was seen to hold (a writer 100, 101, 103, 201, 203;
//! a reader 100, 201, 203); `locks_qemu` checks them against QEMU
//! itself.

use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::process::Command;

use vhdx::io::{FileOpener, LockSet};
use vhdx::{CreateOptions, Disk, ErrorKind, OpenOptions};

#[cfg(unix)]
use crate::support::{ofd_bytes, within};

const MIB: u64 = 1 << 20;

fn image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut d = Disk::create(&path, &CreateOptions::dynamic(8 * MIB).block_size(MIB as u32)).unwrap();
    d.write_at(&[0x5a; 4096], MIB).unwrap();
    d.close().unwrap();
    path
}

fn busy(result: vhdx::Result<Disk>) -> String {
    match result {
        Ok(_) => panic!("the open was admitted"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn a_writer_excludes_every_other_handle_and_force_share_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "w.vhdx");
    let mut w = Disk::open_writable(&path).unwrap();
    #[cfg(unix)] // the bytes QEMU locks: Linux lists them in /proc/locks
    assert_eq!(ofd_bytes(&path), [100, 101, 103, 201, 203], "a writer holds QEMU's writer bytes");
    w.write_at(&[0xa5; 512], 0).unwrap();
    w.flush().unwrap();

    let msg = busy(Disk::open_writable(&path));
    assert!(msg.contains("w.vhdx") && msg.contains("in use"), "{msg}");
    let msg = busy(Disk::open(&path));
    assert!(msg.contains("w.vhdx") && msg.contains("in use") && msg.contains("force-share"), "{msg}");
    // Lower layers refuse it as well: a check, a repair.
    assert_eq!(vhdx::check::check_file(&path).unwrap_err().kind(), ErrorKind::Busy);
    assert_eq!(vhdx::check::repair_file(&path).unwrap_err().kind(), ErrorKind::Busy);

    // Force-share reads what the writer flushed, and takes no lock.
    let shared = OpenOptions::new().force_share(true).open(&path).unwrap();
    let mut buf = [0u8; 512];
    shared.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0xa5; 512]);
    assert!(vhdx::check::check_file_with(&path, &FileOpener::force_share()).is_ok());
    #[cfg(unix)] // the bytes QEMU locks: Linux lists them in /proc/locks
    assert_eq!(ofd_bytes(&path), [100, 101, 103, 201, 203]);
    drop(shared);
    // Never for writing.
    let err = OpenOptions::new().writable(true).force_share(true).open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    w.close().unwrap();
    #[cfg(unix)] // the bytes QEMU locks: Linux lists them in /proc/locks
    assert!(ofd_bytes(&path).is_empty(), "closing releases the locks");
    Disk::open_writable(&path).unwrap().close().unwrap();
}

#[test]
fn readers_share_and_refuse_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "r.vhdx");
    let r1 = Disk::open(&path).unwrap();
    #[cfg(unix)] // the bytes QEMU locks: Linux lists them in /proc/locks
    assert_eq!(ofd_bytes(&path), [100, 201, 203], "a reader holds QEMU's reader bytes");
    let r2 = Disk::open(&path).unwrap();
    let msg = busy(Disk::open_writable(&path));
    assert!(msg.contains("r.vhdx") && msg.contains("in use"), "{msg}");
    drop(r1);
    busy(Disk::open_writable(&path));
    drop(r2);
    Disk::open_writable(&path).unwrap().close().unwrap();
}

#[test]
fn a_new_image_is_locked_from_its_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.vhdx");
    let d = Disk::create(&path, &CreateOptions::dynamic(8 * MIB)).unwrap();
    busy(Disk::open(&path));
    drop(d);
    let child = dir.path().join("child.vhdx");
    let c = Disk::create_differencing(&child, &path, None).unwrap();
    busy(Disk::open(&child));
    // Its parent is read, so it is shared, not writable.
    Disk::open(&path).unwrap();
    busy(Disk::open_writable(&path));
    drop(c);
}

#[test]
fn children_writing_at_once_share_their_parent() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let (a, b) = (dir.path().join("a.vhdx"), dir.path().join("b.vhdx"));
    Disk::create_differencing(&a, &base, None).unwrap().close().unwrap();
    Disk::create_differencing(&b, &base, None).unwrap().close().unwrap();
    let mut da = Disk::open_writable(&a).unwrap();
    let mut db = Disk::open_writable(&b).unwrap();
    da.write_at(&[1; 512], 0).unwrap();
    db.write_at(&[2; 512], 0).unwrap();
    // A grandchild on a (read-only) too, and the parent read directly.
    let grandchild = dir.path().join("g.vhdx");
    drop(da);
    Disk::create_differencing(&grandchild, &a, None).unwrap().close().unwrap();
    let _g = Disk::open(&grandchild).unwrap();
    let _p = Disk::open(&base).unwrap();
    // The parent cannot be written under its readers.
    busy(Disk::open_writable(&base));
    busy(Disk::open_writable(&a));
    db.close().unwrap();
}

#[test]
fn force_share_opens_the_parents_without_locks_too() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let child = dir.path().join("child.vhdx");
    Disk::create_differencing(&child, &base, None).unwrap().close().unwrap();
    // Someone writes the parent (a user error, but it happens).
    let _w = Disk::open_writable(&base).unwrap();
    let err = Disk::open(&child).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.to_string().contains("base.vhdx"), "the error names the parent in use: {err}");
    let d = OpenOptions::new().force_share(true).open(&child).unwrap();
    let mut buf = [0u8; 16];
    d.read_at(&mut buf, MIB).unwrap();
    assert_eq!(buf, [0x5a; 16]);
}

#[test]
fn a_lock_set_holds_its_images_and_lets_its_own_opens_through() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let child = dir.path().join("child.vhdx");
    Disk::create_differencing(&child, &base, None).unwrap().close().unwrap();
    let locks = LockSet::new();
    locks.lock(&base, true).unwrap();
    locks.lock(&child, false).unwrap();
    assert!(locks.holds(&base) && locks.holds(&dir.path().join(".").join("child.vhdx")));
    // Others: the held-writable image is refused to everyone, the shared one to writers.
    busy(Disk::open(&base));
    busy(Disk::open_writable(&child));
    Disk::open(&child).map(drop).unwrap_err(); // its parent is held exclusively
                                               // Through the set: the child with its parent, and the parent writable, at once.
    let opener = locks.opener();
    let c = OpenOptions::new().file_opener(opener.clone()).open(&child).unwrap();
    let p = OpenOptions::new().writable(true).file_opener(opener.clone()).open(&base).unwrap();
    let mut buf = [0u8; 16];
    c.read_at(&mut buf, MIB).unwrap();
    assert_eq!(buf, [0x5a; 16]);
    p.close().unwrap();
    drop(c);
    // A file held for reading is not written through the set.
    let err = OpenOptions::new().writable(true).without_parent().file_opener(opener.clone()).open(&child).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    // Upgrading the child's lock to exclusive, then letting go of everything.
    locks.lock(&child, true).unwrap();
    busy(Disk::open(&child));
    drop((locks, opener));
    #[cfg(unix)] // the bytes QEMU locks: Linux lists them in /proc/locks
    assert!(ofd_bytes(&base).is_empty() && ofd_bytes(&child).is_empty());
    Disk::open_writable(&child).unwrap().close().unwrap();
    // Someone else's reader refuses the set's exclusive lock.
    let reader = Disk::open(&child).unwrap();
    let err = LockSet::new().lock(&child, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.to_string().contains("child.vhdx"), "{err}");
    drop(reader);
}

#[test]
fn a_merge_and_a_compaction_hold_their_images_from_start_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let (child, sibling) = (dir.path().join("child.vhdx"), dir.path().join("sibling.vhdx"));
    for (path, seed) in [(&child, 1u8), (&sibling, 2)] {
        let mut d = Disk::create_differencing(path, &base, Some(MIB as u32)).unwrap();
        d.write_at(&vec![seed; 5 * MIB as usize], seed as u64 * 512).unwrap();
        d.close().unwrap();
    }
    // At every step of the copy, every image the merge changes is refused to
    // other opens, readers included: the child, the target, the sibling it preserves.
    let mut seen = Vec::new();
    let options = vhdx::ops::merge::MergeOptions::default().siblings(vhdx::ops::merge::SiblingPolicy::Preserve);
    vhdx::ops::merge::merge_with_progress(&child, &options, &mut |done, _| {
        if done > 0 {
            for p in [&child, &base, &sibling] {
                let alone = OpenOptions::new().without_parent().open(p);
                seen.push((p.clone(), alone.map(drop).map_err(|e| e.kind())));
            }
        }
    })
    .unwrap();
    assert!(seen.len() >= 6, "the merge reported no progress: {seen:?}");
    assert!(seen.iter().all(|(_, r)| *r == Err(ErrorKind::Busy)), "{seen:?}");
    // Afterwards, free.
    Disk::open_writable(&child).unwrap().close().unwrap();

    let mut seen = Vec::new();
    vhdx::ops::compact::compact_with_progress(&sibling, &mut |_, _| {
        seen.push(OpenOptions::new().without_parent().open(&sibling).map(drop).map_err(|e| e.kind()));
    })
    .unwrap();
    assert!(!seen.is_empty() && seen.iter().all(|r| *r == Err(ErrorKind::Busy)), "{seen:?}");
}

#[test]
fn set_parent_may_reach_the_child_through_the_new_parent_without_refusing_itself() {
    // The parent's chain is opened while the child is locked: a parent that
    // is the child's own descendant is met through the lock, not refused as
    // busy (what to do with such a loop is the caller's to decide).
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let child = dir.path().join("child.vhdx");
    Disk::create_differencing(&child, &base, None).unwrap().close().unwrap();
    let grandchild = dir.path().join("grandchild.vhdx");
    Disk::create_differencing(&grandchild, &child, None).unwrap().close().unwrap();
    if let Err(e) = vhdx::ops::merge::set_parent(&child, &grandchild, false) {
        assert_ne!(e.kind(), ErrorKind::Busy, "{e}");
    }
    // A holder elsewhere does refuse it.
    let _reader = OpenOptions::new().without_parent().open(&child).unwrap();
    let err = vhdx::ops::merge::set_parent(&child, &base, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
}

// ---------------------------------------------------------------- special files

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("running mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

#[cfg(unix)]
/// Opening `path` as an image (every way) fails at once with a message
/// that names it and says what it is.
fn refused_at_once(path: &Path, what: &str) {
    let p = path.to_path_buf();
    let errors = within("opening a special file", move || {
        vec![
            Disk::open(&p).err(),
            Disk::open_writable(&p).err(),
            OpenOptions::new().force_share(true).open(&p).err(),
            vhdx::check::check_file(&p).err(),
            vhdx::check::repair_file(&p).err(),
            vhdx::ops::compact::compact(&p).err(),
            LockSet::new().lock(&p, false).err(),
        ]
    });
    for e in errors {
        let e = e.expect("a special file was opened as an image");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(what), "{msg}");
        assert!(msg.contains("not a regular file"), "{msg}");
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_a_socket_or_a_directory_is_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.vhdx");
    mkfifo(&fifo);
    refused_at_once(&fifo, "a FIFO");
    let sock = dir.path().join("sock.vhdx");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    refused_at_once(&sock, "a socket");
    let sub = dir.path().join("dir.vhdx");
    std::fs::create_dir(&sub).unwrap();
    refused_at_once(&sub, "a directory");
    refused_at_once(Path::new("/dev/null"), "a character device");
    // Convert's raw source too.
    let (src, dst) = (fifo.clone(), dir.path().join("out.vhdx"));
    let options =
        vhdx::ops::convert::ConvertOptions::default().input_format(Some(vhdx::ops::convert::ImageFormat::Raw));
    let err = within("converting a FIFO", move || vhdx::ops::convert::convert(&src, &dst, &options)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("fifo.vhdx") && err.to_string().contains("FIFO"), "{err}");
    assert!(!dir.path().join("out.vhdx").exists());
}

#[cfg(unix)]
#[test]
fn a_parent_locator_naming_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let child = dir.path().join("child.vhdx");
    Disk::create_differencing(&child, &base, None).unwrap().close().unwrap();
    // The parent is replaced by a FIFO of the same name (relative_path names it).
    std::fs::rename(&base, dir.path().join("moved.vhdx")).unwrap();
    mkfifo(&base);
    let c = child.clone();
    let err = within("opening a child whose parent is a FIFO", move || Disk::open(&c)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("base.vhdx") && msg.contains("FIFO"), "{msg}");
    // The tree of the child says so too.
    let c = child.clone();
    let nodes = within("the chain of a child whose parent is a FIFO", move || vhdx::ops::tree::chain(&c));
    assert_eq!(nodes.len(), 1);
    assert!(matches!(&nodes[0].status, vhdx::ops::tree::LinkStatus::Unreadable(e) if e.contains("FIFO")), "{nodes:?}");
}

#[cfg(unix)]
#[test]
fn directory_scans_skip_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path(), "base.vhdx");
    let child = dir.path().join("child.vhdx");
    Disk::create_differencing(&child, &base, None).unwrap().close().unwrap();
    let sibling = dir.path().join("sibling.vhdx");
    Disk::create_differencing(&sibling, &base, None).unwrap().close().unwrap();
    mkfifo(&dir.path().join("fifo.vhdx"));
    mkfifo(&dir.path().join("fifo.avhdx"));
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock.vhdx")).unwrap();
    std::fs::create_dir(dir.path().join("dir.vhdx")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("fifo.vhdx"), dir.path().join("link.vhdx")).unwrap();

    let d = dir.path().to_path_buf();
    let nodes = within("tree of a directory with a FIFO", move || vhdx::ops::tree::scan_dir(&d).unwrap());
    let names: Vec<String> = nodes.iter().map(|n| n.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["base.vhdx", "child.vhdx", "sibling.vhdx"]);

    // A merge's sibling scan (the same directory) finds the sibling only.
    let guid = Disk::open(&base).unwrap().data_write_guid();
    let (b, d, c) = (base.clone(), dir.path().to_path_buf(), child.canonicalize().unwrap());
    let found = within("a sibling scan", move || vhdx::ops::merge::children_of(&b, guid, &[d], &[c]));
    assert_eq!(found, [sibling]);
    // A whole merge refuses, naming the sibling, without waiting on the FIFOs.
    let c = child.clone();
    let err = within("a merge", move || vhdx::ops::merge::merge(&c, &Default::default())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("sibling.vhdx"), "{err}");
}
