//! Compaction that reads the guest's filesystems, against the filesystems'
//! own tools: ext4 made by `mkfs.ext4`, files written and deleted with
//! `debugfs -w`, partition tables made by `sgdisk` (GPT) and `sfdisk`
//! (MBR with logical partitions). After `vhdx compact` every filesystem
//! checks clean with `e2fsck -fn`, every remaining file reads back through
//! `debugfs` byte for byte, and the file shrank by at least 90% of the
//! whole blocks the deleted files freed. A partition holding no known
//! filesystem, a dirty ext4 and one waiting for journal recovery keep
//! every byte; `--dry-run` changes nothing.

use std::path::Path;
use std::process::Command;

use crate::common::cli::{json, ok_text};
use crate::common::data::pattern;

const MIB: u64 = 1 << 20;

use crate::common::tools::sbin_tool as tool;

fn tools() -> bool {
    ["mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs", "sgdisk", "sfdisk"].iter().all(|t| tool(t).is_some())
        || crate::common::unavailable("e2fsprogs (mkfs.ext4, debugfs, e2fsck), gdisk (sgdisk) and fdisk (sfdisk)")
}

fn fat_tools() -> bool {
    ["mkfs.vfat", "fsck.vfat", "mcopy", "mdel"].iter().all(|t| tool(t).is_some())
        || crate::common::unavailable("dosfstools (mkfs.vfat, fsck.vfat) and mtools (mcopy, mdel)")
}

fn ntfs_tools() -> bool {
    ["mkntfs", "ntfscp", "ntfscat", "ntfsinfo", "ntfsfix"].iter().all(|t| tool(t).is_some())
        || crate::common::unavailable("ntfs-3g (mkntfs, ntfscp, ntfscat, ntfsinfo, ntfsfix)")
}

/// A FAT image of `size` bytes (`-F bits`) holding `keep` and, deleted
/// again, `gone`; in `dir/name`.
fn fat(dir: &Path, name: &str, size: u64, bits: u32, keep: &[(&str, Vec<u8>)], gone: &[(&str, Vec<u8>)]) {
    std::fs::File::create(dir.join(name)).unwrap().set_len(size).unwrap();
    run(dir, "mkfs.vfat", &["-F", &bits.to_string(), name]);
    for (file, bytes) in keep.iter().chain(gone) {
        std::fs::write(dir.join(file), bytes).unwrap();
        run(dir, "mcopy", &["-i", name, file, &format!("::{file}")]);
    }
    for (file, _) in gone {
        run(dir, "mdel", &["-i", name, &format!("::{file}")]);
    }
}

/// fsck.fat finds the FAT filesystem `bytes` clean, and each of `files`
/// reads back through mtools as it was written.
fn fat_intact(dir: &Path, what: &str, bytes: &[u8], files: &[(&str, Vec<u8>)]) {
    let path = dir.join(format!("{what}.check.raw"));
    std::fs::write(&path, bytes).unwrap();
    let p = path.to_str().unwrap();
    let fsck = command("fsck.vfat").args(["-n", p]).output().unwrap();
    assert!(fsck.status.success(), "{what}: fsck.vfat -n: {}", String::from_utf8_lossy(&fsck.stdout));
    for (file, expected) in files {
        let out = dir.join(format!("{what}.{file}.out"));
        run(dir, "mcopy", &["-o", "-i", p, &format!("::{file}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == *expected, "{what}: {file} reads back as written");
        std::fs::remove_file(out).unwrap();
    }
    std::fs::remove_file(path).unwrap();
}

fn command(name: &str) -> Command {
    Command::new(tool(name).unwrap_or_else(|| std::path::PathBuf::from(name)))
}

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = command(cmd).current_dir(dir).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 image of `size` bytes (`block` bytes per block) holding `keep`
/// and, deleted again, `gone` (name, bytes each); in `dir/name`.
fn ext4(dir: &Path, name: &str, size: u64, block: u32, keep: &[(&str, Vec<u8>)], gone: &[(&str, Vec<u8>)]) {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    run(dir, "mkfs.ext4", &["-q", "-F", "-b", &block.to_string(), name]);
    for (file, bytes) in keep.iter().chain(gone) {
        std::fs::write(dir.join(file), bytes).unwrap();
        run(dir, "debugfs", &["-w", "-R", &format!("write {file} {file}"), name]);
    }
    for (file, _) in gone {
        run(dir, "debugfs", &["-w", "-R", &format!("rm {file}"), name]);
    }
}

/// The bytes `[at, at + len)` of the file at `path`.
fn slice(path: &Path, at: u64, len: u64) -> Vec<u8> {
    std::fs::read(path).unwrap()[at as usize..(at + len) as usize].to_vec()
}

/// Writes `bytes` into the file at `path` at `at`.
fn splice(path: &Path, at: u64, bytes: &[u8]) {
    use crate::common::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
}

/// e2fsck finds the ext filesystem `bytes` clean, and each of `files`
/// reads back through debugfs as it was written.
fn ext4_intact(dir: &Path, what: &str, bytes: &[u8], files: &[(&str, Vec<u8>)]) {
    let path = dir.join(format!("{what}.check.raw"));
    std::fs::write(&path, bytes).unwrap();
    let p = path.to_str().unwrap();
    let fsck = command("e2fsck").args(["-fn", p]).output().unwrap();
    assert!(fsck.status.success(), "{what}: e2fsck -fn: {}", String::from_utf8_lossy(&fsck.stdout));
    for (file, expected) in files {
        let out = dir.join(format!("{what}.{file}.out"));
        run(dir, "debugfs", &["-R", &format!("dump {file} {}", out.display()), p]);
        assert!(std::fs::read(&out).unwrap() == *expected, "{what}: {file} reads back as written");
        std::fs::remove_file(out).unwrap();
    }
    std::fs::remove_file(path).unwrap();
}

/// WSL's shape: ext4 on the whole disk, no partition table; 1 MiB blocks.
#[test]
fn compact_gives_back_the_free_space_of_an_ext4_disk_without_a_partition_table() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let keep = [("keep.bin", pattern(1, 5 << 20)), ("small.txt", b"hello from ext4\n".to_vec())];
    let gone = [("big.bin", pattern(2, 60 << 20)), ("more.bin", pattern(3, 20 << 20))];
    ext4(d, "disk.raw", 256 * MIB, 4096, &keep, &gone);
    ok_text(d, &["convert", "disk.raw", "disk.vhdx", "--block-size", "1M"]);
    let before = std::fs::read(d.join("disk.vhdx")).unwrap();

    let dry = json(d, &["compact", "disk.vhdx", "--dry-run", "--json"]);
    assert!(std::fs::read(d.join("disk.vhdx")).unwrap() == before, "--dry-run changes nothing");
    assert_eq!(dry["table"], "none");
    assert_eq!(dry["partitions"][0]["filesystem"], "ext4", "{dry}");
    // The filesystem's own count of free blocks.
    let dumpe2fs = run(d, "dumpe2fs", &["-h", "disk.raw"]);
    let free_blocks: u64 =
        dumpe2fs.lines().find_map(|l| l.strip_prefix("Free blocks:")).map(|v| v.trim().parse().unwrap()).unwrap();
    assert_eq!(dry["partitions"][0]["free"], free_blocks * 4096, "the free space dumpe2fs reports");

    let r = json(d, &["compact", "disk.vhdx", "--json"]);
    assert_eq!(r["blocks_freed"], dry["blocks_in_free_space"], "{r}");
    let freed = r["file_size_before"].as_u64().unwrap() - r["file_size_after"].as_u64().unwrap();
    // 80 MiB deleted: at least 90% of its whole 1 MiB blocks (two partial
    // blocks at most per file) come back.
    assert!(freed * 10 >= (80 - 4) * MIB * 9, "gave back {freed} bytes of 80 MiB deleted");
    assert_eq!(std::fs::metadata(d.join("disk.vhdx")).unwrap().len(), r["file_size_after"].as_u64().unwrap());
    assert_eq!(json(d, &["check", "disk.vhdx", "--json"])["ok"], true);
    ok_text(d, &["convert", "disk.vhdx", "back.raw"]);
    ext4_intact(d, "whole-disk", &std::fs::read(d.join("back.raw")).unwrap(), &keep);
    // Run again: nothing more to give back.
    let again = json(d, &["compact", "disk.vhdx", "--json"]);
    assert_eq!(again["blocks_freed"], 0);
    // --filesystem none keeps the blocks of deleted files (they are not zeros).
    ok_text(d, &["convert", "disk.raw", "zeros-only.vhdx", "--block-size", "1M"]);
    let none = json(d, &["compact", "zeros-only.vhdx", "--filesystem", "none", "--json"]);
    assert_eq!(none["blocks_freed"], 0);
    assert!(none["file_size_after"].as_u64().unwrap() > 80 * MIB, "{none}");
}

/// GPT (sgdisk) with an ext4 (1 KiB blocks) partition, a partition of
/// bytes no filesystem claims, and unpartitioned space that held data.
#[test]
fn compact_reads_a_gpt_disk_and_leaves_an_unknown_partition_as_it_was() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let disk = d.join("gpt.raw");
    std::fs::File::create(&disk).unwrap().set_len(160 * MIB).unwrap();
    run(d, "sgdisk", &["-n", "1:1M:+64M", "-t", "1:8300", "-n", "2:66M:+32M", "-t", "2:8300", "gpt.raw"]);
    let keep = [("notes.txt", pattern(4, 300_000)), ("photo.jpg", pattern(5, 3 << 20))];
    let gone = [("old.iso", pattern(6, 30 << 20))];
    ext4(d, "part1.raw", 64 * MIB, 1024, &keep, &gone);
    splice(&disk, MIB, &std::fs::read(d.join("part1.raw")).unwrap());
    let unknown = pattern(7, 32 << 20);
    splice(&disk, 66 * MIB, &unknown);
    // Data in the gap after partition 2, outside every partition.
    splice(&disk, 100 * MIB, &pattern(8, 20 << 20));
    ok_text(d, &["convert", "gpt.raw", "gpt.vhdx", "--block-size", "1M"]);
    // A copy whose GPT header fails its checksum: reported, nothing free,
    // every byte kept (only all-zero blocks would go; there are none).
    let mut damaged = std::fs::read(&disk).unwrap();
    damaged[512 + 16] ^= 0xFF;
    std::fs::write(d.join("damaged.raw"), &damaged).unwrap();
    ok_text(d, &["convert", "damaged.raw", "damaged.vhdx", "--block-size", "1M"]);
    let r = json(d, &["compact", "damaged.vhdx", "--json"]);
    assert_eq!(r["table"], "damaged", "{r}");
    assert!(r["partitions"][0]["skipped"].as_str().unwrap().contains("CRC-32"), "{r}");
    assert_eq!(r["blocks_freed"], 0, "{r}");
    ok_text(d, &["convert", "damaged.vhdx", "damaged-back.raw"]);
    assert!(std::fs::read(d.join("damaged-back.raw")).unwrap() == damaged, "every byte kept");
    let r = json(d, &["compact", "gpt.vhdx", "--json"]);
    assert_eq!(r["table"], "gpt", "{r}");
    let parts = r["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{r}");
    assert_eq!((parts[0]["start"].as_u64(), parts[0]["filesystem"].as_str()), (Some(MIB), Some("ext4")));
    assert!(parts[1]["skipped"].as_str().unwrap().contains("no filesystem known"), "{r}");
    assert!(r["unpartitioned_free"].as_u64().unwrap() >= 20 * MIB, "{r}");
    // Per partition: the deleted file's blocks in partition 1, none in the
    // unknown partition 2, the 20 MiB outside both.
    assert!(parts[0]["blocks_released"].as_u64().unwrap() >= 27, "{r}");
    assert_eq!(parts[1]["blocks_released"], 0, "{r}");
    assert_eq!(parts[0]["bytes_given_back"].as_u64().unwrap(), parts[0]["blocks_released"].as_u64().unwrap() * MIB);
    assert_eq!(r["unpartitioned_blocks_released"], 20, "{r}");
    assert_eq!(
        parts[0]["blocks_released"].as_u64().unwrap() + 20,
        r["blocks_in_free_space"].as_u64().unwrap(),
        "the partitions' and the unpartitioned blocks add up: {r}"
    );
    let freed = r["file_size_before"].as_u64().unwrap() - r["file_size_after"].as_u64().unwrap();
    assert!(freed * 10 >= (30 - 2 + 20) * MIB * 9, "gave back {freed} bytes of 30 MiB deleted and 20 MiB outside");
    ok_text(d, &["convert", "gpt.vhdx", "back.raw"]);
    let back = d.join("back.raw");
    assert!(slice(&back, 66 * MIB, 32 * MIB) == unknown, "the unknown partition keeps every byte");
    assert!(slice(&back, 0, MIB) == slice(&disk, 0, MIB), "the protective MBR and the GPT are untouched");
    let tail = 33 * 512;
    assert!(slice(&back, 160 * MIB - tail, tail) == slice(&disk, 160 * MIB - tail, tail), "the backup GPT too");
    run(d, "sgdisk", &["-v", back.to_str().unwrap()]);
    ext4_intact(d, "gpt-part1", &slice(&back, MIB, 64 * MIB), &keep);
}

/// MBR (sfdisk) with a primary ext4 and an ext4 in a logical partition of
/// an extended one; the logical one is left dirty (not cleanly unmounted),
/// so it keeps every block, deleted files included.
#[test]
fn compact_reads_mbr_logical_partitions_and_leaves_a_dirty_ext4_alone() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let disk = d.join("mbr.raw");
    std::fs::File::create(&disk).unwrap().set_len(128 * MIB).unwrap();
    // 1..41 MiB primary; 42..122 MiB extended, holding 43..79 MiB logical.
    let script = "label: dos\nstart=2048, size=40MiB, type=83\nstart=86016, size=80MiB, type=5\nstart=88064, size=36MiB, type=83\n";
    let mut child =
        command("sfdisk").args(["-q", disk.to_str().unwrap()]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let keep1 = [("a.txt", pattern(9, 1 << 20))];
    let gone1 = [("b.bin", pattern(10, 20 << 20))];
    ext4(d, "p1.raw", 40 * MIB, 4096, &keep1, &gone1);
    splice(&disk, MIB, &std::fs::read(d.join("p1.raw")).unwrap());
    // The logical partition: dirty (state "not clean"), with a deleted file.
    ext4(d, "p5.raw", 36 * MIB, 4096, &[("c.bin", pattern(11, 1 << 20))], &[("d.bin", pattern(12, 16 << 20))]);
    run(d, "debugfs", &["-w", "-R", "ssv state 0", "p5.raw"]);
    let p5 = std::fs::read(d.join("p5.raw")).unwrap();
    splice(&disk, 43 * MIB, &p5);
    ok_text(d, &["convert", "mbr.raw", "mbr.vhdx", "--block-size", "1M"]);
    let r = json(d, &["compact", "mbr.vhdx", "--json"]);
    assert_eq!(r["table"], "mbr", "{r}");
    let parts = r["partitions"].as_array().unwrap();
    let numbers: Vec<u64> = parts.iter().map(|p| p["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 5], "the primary and the logical partition: {r}");
    assert_eq!(parts[0]["filesystem"], "ext4");
    assert!(parts[1]["skipped"].as_str().unwrap().contains("not clean"), "{r}");
    ok_text(d, &["convert", "mbr.vhdx", "back.raw"]);
    let back = d.join("back.raw");
    // The table itself, the extended boot record at 42 MiB included (its
    // 1 MiB block is otherwise empty and outside every partition).
    let table = |f: &str| run(d, "sfdisk", &["-d", f]).replace(f, "disk");
    assert_eq!(table("back.raw"), table("mbr.raw"), "sfdisk reads the same table");
    assert!(slice(&back, 42 * MIB, 512) == slice(&disk, 42 * MIB, 512), "the extended boot record is kept");
    assert!(slice(&back, 43 * MIB, 36 * MIB) == p5, "the dirty filesystem keeps every byte");
    ext4_intact(d, "mbr-p1", &slice(&back, MIB, 40 * MIB), &keep1);
    let freed = r["file_size_before"].as_u64().unwrap() - r["file_size_after"].as_u64().unwrap();
    assert!(freed * 10 >= 18 * MIB * 9, "gave back {freed} bytes of 20 MiB deleted in partition 1");
}

/// A differencing disk over an ext4 base: the child rewrote the whole
/// filesystem (a file added, one deleted); what the child holds in free
/// space goes, and those blocks read through to the parent again; a journal
/// waiting for recovery leaves a filesystem alone.
#[test]
fn compact_releases_free_space_a_differencing_child_holds_and_respects_needs_recovery() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let keep = [("base.txt", pattern(13, 2 << 20))];
    ext4(d, "base.raw", 128 * MIB, 4096, &keep, &[]);
    ok_text(d, &["convert", "base.raw", "base.vhdx", "--block-size", "1M"]);
    ok_text(d, &["create", "child.vhdx", "--parent", "base.vhdx", "--block-size", "1M"]);
    std::fs::copy(d.join("base.raw"), d.join("next.raw")).unwrap();
    let added = [("new.bin", pattern(14, 3 << 20))];
    let gone = [("tmp.bin", pattern(15, 40 << 20))];
    for (file, bytes) in added.iter().chain(&gone) {
        std::fs::write(d.join(file), bytes).unwrap();
        run(d, "debugfs", &["-w", "-R", &format!("write {file} {file}"), "next.raw"]);
    }
    run(d, "debugfs", &["-w", "-R", "rm tmp.bin", "next.raw"]);
    ok_text(d, &["write", "child.vhdx", "--offset", "0", "--input", "next.raw"]);
    // The base has a child: its free space is kept (the child reads it),
    // and the child still opens over it.
    let r = json(d, &["compact", "base.vhdx", "--json"]);
    assert_eq!(r["children"].as_array().map(|c| c.len()), Some(1), "{r}");
    assert_eq!(r["blocks_freed"], 0, "{r}");
    assert_eq!(json(d, &["info", "child.vhdx", "--json"])["chain"].as_array().map(|c| c.len()), Some(2));
    let r = json(d, &["compact", "child.vhdx", "--json"]);
    assert!(r["blocks_freed"].as_u64().unwrap() >= 90, "most of the child's 128 blocks lie in free space: {r}");
    let freed = r["file_size_before"].as_u64().unwrap() - r["file_size_after"].as_u64().unwrap();
    assert!(freed >= 90 * MIB, "{r}");
    ok_text(d, &["convert", "child.vhdx", "child-back.raw"]);
    let mut files: Vec<(&str, Vec<u8>)> = keep.to_vec();
    files.extend(added.iter().cloned());
    ext4_intact(d, "child", &std::fs::read(d.join("child-back.raw")).unwrap(), &files);

    // needs_recovery: left alone.
    ext4(d, "rec.raw", 64 * MIB, 4096, &[], &[("x.bin", pattern(16, 30 << 20))]);
    run(d, "debugfs", &["-w", "-R", "feature needs_recovery", "rec.raw"]);
    ok_text(d, &["convert", "rec.raw", "rec.vhdx", "--block-size", "1M"]);
    let before = std::fs::read(d.join("rec.vhdx")).unwrap();
    let r = json(d, &["compact", "rec.vhdx", "--dry-run", "--json"]);
    assert!(r["partitions"][0]["skipped"].as_str().unwrap().contains("recovery"), "{r}");
    assert_eq!(r["blocks_in_free_space"], 0);
    assert!(std::fs::read(d.join("rec.vhdx")).unwrap() == before);
}

/// FAT12, FAT16 and FAT32 on a disk without a partition table (a
/// superfloppy, as USB sticks are made): the boot sector ends in 55 AA like
/// an MBR, and must not be taken for one.
#[test]
fn compact_gives_back_the_free_clusters_of_fat12_fat16_and_fat32() {
    if !fat_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (bits, size) in [(12u32, 64 * MIB), (16, 64 * MIB), (32, 300 * MIB)] {
        let keep = [("KEEP.BIN", pattern(20 + bits as u64, 3 << 20)), ("NOTE.TXT", b"fat\r\n".to_vec())];
        let gone = [("GONE.BIN", pattern(21 + bits as u64, 20 << 20))];
        let raw = format!("fat{bits}.raw");
        let image = format!("fat{bits}.vhdx");
        fat(d, &raw, size, bits, &keep, &gone);
        ok_text(d, &["convert", &raw, &image, "--block-size", "1M"]);
        let r = json(d, &["compact", &image, "--json"]);
        assert_eq!(r["table"], "none", "{r}");
        assert_eq!(r["partitions"][0]["filesystem"], format!("fat{bits}"), "{r}");
        let freed = r["file_size_before"].as_u64().unwrap() - r["file_size_after"].as_u64().unwrap();
        assert!(freed * 10 >= 18 * MIB * 9, "fat{bits}: gave back {freed} bytes of 20 MiB deleted");
        let back = format!("fat{bits}.back.raw");
        ok_text(d, &["convert", &image, &back]);
        fat_intact(d, &format!("fat{bits}"), &std::fs::read(d.join(&back)).unwrap(), &keep);
    }
    // A FAT16 whose boot sector says it is dirty (mounted, not unmounted):
    // left alone, every byte kept.
    fat(d, "dirty.raw", 64 * MIB, 16, &[], &[("X.BIN", pattern(30, 20 << 20))]);
    let mut bytes = std::fs::read(d.join("dirty.raw")).unwrap();
    bytes[37] |= 1;
    std::fs::write(d.join("dirty.raw"), &bytes).unwrap();
    ok_text(d, &["convert", "dirty.raw", "dirty.vhdx", "--block-size", "1M"]);
    let r = json(d, &["compact", "dirty.vhdx", "--json"]);
    assert!(r["partitions"][0]["skipped"].as_str().unwrap().contains("dirty"), "{r}");
    ok_text(d, &["convert", "dirty.vhdx", "dirty.back.raw"]);
    assert!(std::fs::read(d.join("dirty.back.raw")).unwrap() == bytes, "the dirty FAT keeps every byte");
}

/// NTFS on a disk without a table (its boot sector ends in 55 AA too),
/// made by `mkntfs -Q` over random bytes, so that its free clusters hold
/// garbage as deleted files leave them: the free space `ntfsinfo` counts
/// is what is found, it goes, `ntfsfix -n` finds the volume sound and
/// `ntfscat` reads the file back.
#[test]
fn compact_gives_back_the_free_clusters_of_ntfs() {
    if !ntfs_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("ntfs.raw"), pattern(32, (128 * MIB) as usize)).unwrap();
    run(d, "mkntfs", &["-q", "-Q", "-F", "ntfs.raw"]);
    std::fs::write(d.join("file.bin"), pattern(31, 5 << 20)).unwrap();
    run(d, "ntfscp", &["ntfs.raw", "file.bin", "file.bin"]);
    let info = run(d, "ntfsinfo", &["-m", "ntfs.raw"]);
    let free_clusters: u64 = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Free Clusters:"))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.parse().unwrap())
        .unwrap();
    ok_text(d, &["convert", "ntfs.raw", "ntfs.vhdx", "--block-size", "1M"]);
    let r = json(d, &["compact", "ntfs.vhdx", "--json"]);
    assert_eq!(r["table"], "none", "{r}");
    assert_eq!(r["partitions"][0]["filesystem"], "ntfs", "{r}");
    assert_eq!(r["partitions"][0]["free"], free_clusters * 4096, "the free space ntfsinfo counts: {r}");
    let freed = r["file_size_before"].as_u64().unwrap() - r["file_size_after"].as_u64().unwrap();
    assert!(freed * 10 >= (free_clusters * 4096 - 16 * MIB) * 9, "gave back {freed} bytes: {r}");
    ok_text(d, &["convert", "ntfs.vhdx", "back.raw"]);
    run(d, "ntfsfix", &["-n", "back.raw"]);
    let cat = command("ntfscat").current_dir(d).args(["back.raw", "file.bin"]).output().unwrap();
    assert!(cat.status.success() && cat.stdout == pattern(31, 5 << 20), "ntfscat reads the file back");
}

/// The Windows-made NTFS fixtures (an MBR with an NTFS partition; dynamic,
/// and a differencing chain): their NTFS is read, and they compact without
/// a byte of the disk changing (no whole block of theirs is free): the
/// published hash of the whole disk still holds.
#[test]
fn windows_ntfs_fixtures_compact_without_a_byte_changing() {
    use crate::common::compare::sha256_file;
    use crate::common::files::{fixture, fixture_into};
    let cases = [
        ("dfvfs/ntfs-dynamic.vhdx.gz", None, "b92731f8e4bf3532418444d22a9086823a8122569500acd09cd8d2ce20eb98e9"),
        (
            "dfvfs/ntfs-differential.vhdx.gz",
            Some("dfvfs/ntfs-parent.vhdx.gz"),
            "1ef1fb5360247aa7d36a38415bc7bf6e1e52f62af5e6bd1283815e82584c7efc",
        ),
    ];
    for (rel, parent, sha) in cases {
        let Some(f) = fixture(rel) else { return };
        let d = f.dir.path();
        if let Some(p) = parent {
            fixture_into(p, d);
        }
        let name = Path::new(rel).file_stem().unwrap().to_str().unwrap().to_string();
        let r = json(d, &["compact", &name, "--json"]);
        assert_eq!(r["table"], "mbr", "{rel}: {r}");
        assert_eq!(r["partitions"][0]["filesystem"], "ntfs", "{rel}: {r}");
        ok_text(d, &["convert", &name, "whole.raw"]);
        assert_eq!(sha256_file(&d.join("whole.raw")), sha, "{rel}: the disk reads as before");
    }
}

/// `resize --to-minimum`, as `Resize-VHD -ToMinimumSize`: a GPT disk
/// shrinks to its last partition and the backup table (which moves there:
/// `sgdisk -v` finds no problem), an MBR disk to the end of its extended
/// partition, and a disk whose filesystem fills it is refused, unchanged.
#[test]
fn resize_to_minimum_keeps_every_partition_and_moves_the_gpt_backup() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // GPT: one ext4 partition at 1..65 MiB of 256 MiB.
    std::fs::File::create(d.join("gpt.raw")).unwrap().set_len(256 * MIB).unwrap();
    run(d, "sgdisk", &["-n", "1:1M:+64M", "gpt.raw"]);
    let keep = [("kept.bin", pattern(40, 2 << 20))];
    ext4(d, "p.raw", 64 * MIB, 4096, &keep, &[]);
    splice(&d.join("gpt.raw"), MIB, &std::fs::read(d.join("p.raw")).unwrap());
    ok_text(d, &["convert", "gpt.raw", "gpt.vhdx"]);
    let info = json(d, &["info", "gpt.vhdx", "--json"]);
    assert_eq!(info["minimum_size"], 66 * MIB, "65 MiB and the 33-sector backup, rounded to a MiB: {info}");
    // A shrink that would cut the partition: refused, even --allow-shrink
    // (the GPT's backup would land in it), nothing changed; and a size the
    // table cannot fit in at all.
    let before = std::fs::read(d.join("gpt.vhdx")).unwrap();
    crate::common::cli::fails(
        d,
        &["resize", "gpt.vhdx", "--size", "40M", "--allow-shrink"],
        &["gpt.vhdx", "partition 1"],
    );
    crate::common::cli::fails(d, &["resize", "gpt.vhdx", "--size", "4096", "--allow-shrink"], &["gpt.vhdx", "GPT"]);
    assert!(std::fs::read(d.join("gpt.vhdx")).unwrap() == before, "nothing changed");
    assert_eq!(info["minimum_size_limited_by"], "partition 1");
    let out = ok_text(d, &["resize", "gpt.vhdx", "--to-minimum"]);
    assert!(out.contains("66 MiB"), "{out}");
    assert_eq!(json(d, &["info", "gpt.vhdx", "--json"])["virtual_size"], 66 * MIB);
    ok_text(d, &["convert", "gpt.vhdx", "gpt-back.raw"]);
    let verify = run(d, "sgdisk", &["-v", "gpt-back.raw"]);
    assert!(verify.contains("No problems found"), "{verify}");
    ext4_intact(d, "minimum-gpt", &slice(&d.join("gpt-back.raw"), MIB, 64 * MIB), &keep);
    let refused = crate::common::cli::fails(d, &["resize", "gpt.vhdx", "--to-minimum"], &["gpt.vhdx", "partition 1"]);
    assert!(refused.contains("reaches the end"), "{refused}");

    // MBR: the extended partition (42..122 MiB) is where it stops.
    std::fs::File::create(d.join("mbr.raw")).unwrap().set_len(160 * MIB).unwrap();
    let script = "label: dos\nstart=2048, size=40MiB, type=83\nstart=86016, size=80MiB, type=5\nstart=88064, size=36MiB, type=83\n";
    let mut child = command("sfdisk")
        .args(["-q", d.join("mbr.raw").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let table = run(d, "sfdisk", &["-d", "mbr.raw"]).replace("mbr.raw", "disk");
    ok_text(d, &["convert", "mbr.raw", "mbr.vhdx"]);
    ok_text(d, &["resize", "mbr.vhdx", "--to-minimum"]);
    assert_eq!(json(d, &["info", "mbr.vhdx", "--json"])["virtual_size"], 122 * MIB);
    ok_text(d, &["convert", "mbr.vhdx", "mbr-back.raw"]);
    assert_eq!(run(d, "sfdisk", &["-d", "mbr-back.raw"]).replace("mbr-back.raw", "disk"), table);

    // ext4 on the whole disk fills it: refused, every byte kept.
    ext4(d, "whole.raw", 32 * MIB, 4096, &[], &[]);
    ok_text(d, &["convert", "whole.raw", "whole.vhdx"]);
    let before = std::fs::read(d.join("whole.vhdx")).unwrap();
    crate::common::cli::fails(d, &["resize", "whole.vhdx", "--to-minimum"], &["whole.vhdx", "ext filesystem"]);
    assert!(std::fs::read(d.join("whole.vhdx")).unwrap() == before, "nothing changed");
}
