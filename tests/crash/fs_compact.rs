//! Filesystem-aware compaction cut at every storage operation. An ext4
//! made by `mkfs.ext4` (a file kept, a larger one deleted with `debugfs`,
//! and a small file after it) on a dynamic VHDX with 1 MiB blocks; its free space read by
//! `vhdx::ops::fs`; then `Disk::compact_free_with_progress` on a
//! `FaultStorage` that fails after its k-th operation, for every k. In
//! every crash state the image opens writable (its log replayed), checks
//! clean, and every sector outside the free space reads exactly as before,
//! every sector inside it as before or as zeros: nothing the filesystem
//! uses is ever lost, whatever the crash.

use std::process::Command;

use vhdx::io::FaultStorage;
use vhdx::{CreateOptions, Disk, MemStorage, OpenOptions};

use crate::common::data::pattern;
use crate::support::{crash_states, for_each_crash_point, Budget};

const SIZE: u64 = 48 << 20;

use crate::common::tools::sbin_tool as tool;

fn run(dir: &std::path::Path, name: &str, args: &[&str]) {
    let out = Command::new(tool(name).unwrap()).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The ext4 filesystem's bytes.
fn ext4() -> Option<Vec<u8>> {
    if tool("mkfs.ext4").is_none() || tool("debugfs").is_none() {
        crate::common::unavailable("e2fsprogs (mkfs.ext4, debugfs)");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::File::create(d.join("fs.raw")).unwrap().set_len(SIZE).unwrap();
    run(d, "mkfs.ext4", &["-q", "-F", "-b", "4096", "fs.raw"]);
    std::fs::write(d.join("keep.bin"), pattern(1, 3 << 20)).unwrap();
    std::fs::write(d.join("gone.bin"), pattern(2, 24 << 20)).unwrap();
    // Written after the deleted file: used blocks amid free ones, so that
    // some image blocks lie only partly in free space.
    std::fs::write(d.join("tail.txt"), pattern(3, 10_000)).unwrap();
    for f in ["keep.bin", "gone.bin", "tail.txt"] {
        run(d, "debugfs", &["-w", "-R", &format!("write {f} {f}"), "fs.raw"]);
    }
    run(d, "debugfs", &["-w", "-R", "rm gone.bin", "fs.raw"]);
    Some(std::fs::read(d.join("fs.raw")).unwrap())
}

/// Whether `[at, at + len)` lies wholly in one range of `free`.
fn in_free(free: &[(u64, u64)], at: u64, len: u64) -> bool {
    free.iter().any(|&(s, l)| s <= at && at + len <= s + l)
}

#[test]
fn filesystem_aware_compaction_survives_a_crash_at_every_operation() {
    let Some(raw) = ext4() else { return };
    // The image: the filesystem's bytes written into a dynamic VHDX.
    let opts = CreateOptions::dynamic(SIZE).block_size(1 << 20);
    let mut disk = Disk::create_on(Box::new(MemStorage::new()), &opts, None).unwrap();
    for (i, chunk) in raw.chunks(1 << 20).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            disk.write_at(chunk, (i as u64) << 20).unwrap();
        }
    }
    let image = crate::support::read_all(&*disk.into_storage().unwrap());
    let open = |bytes: Vec<u8>, writable: bool| {
        OpenOptions::new().writable(writable).open_storage(Box::new(MemStorage::from_vec(bytes)))
    };
    let usage = vhdx::ops::fs::disk_usage(&open(image.clone(), false).unwrap()).unwrap();
    let free = usage.free.clone();
    assert!(free.iter().map(|&(_, l)| l).sum::<u64>() > 24 << 20, "the deleted file's space is free");

    let compact = |storage: &FaultStorage| -> vhdx::Result<u64> {
        let mut d = OpenOptions::new().writable(true).open_storage(Box::new(storage.clone()))?;
        let r = d.compact_free_with_progress(&free, &mut |_, _| {})?;
        d.close()?;
        Ok(r.blocks_freed)
    };
    let uncut = FaultStorage::from_vec(image.clone());
    let freed = compact(&uncut).unwrap();
    assert!(freed >= 20, "{freed} blocks freed");
    let total = uncut.mutating_ops();
    let budget = Budget { prefixes: 3, tears: 2, subsets: Some(8) };

    let (states, failures) = for_each_crash_point(0..=total, 2, |k, fail| {
        let storage = FaultStorage::from_vec(image.clone()).with_crash_after(k);
        let result = compact(&storage);
        if storage.crashed() && result.is_ok() {
            fail(format!("k={k}: success reported after the storage failed"));
        }
        let states = crash_states(&storage.pending(), 512, k, budget);
        for state in &states {
            let name = format!("k={k} {state:?}");
            let bytes = storage.crash_image(state);
            let recovered = match open(bytes, true).and_then(|d| {
                let s = d.into_storage()?;
                Ok(crate::support::read_all(&*s))
            }) {
                Ok(b) => b,
                Err(e) => {
                    fail(format!("{name}: the writable open fails: {e}"));
                    continue;
                }
            };
            match vhdx::check::check_storage(Box::new(MemStorage::from_vec(recovered.clone()))) {
                Ok(r) if r.is_clean() => {}
                other => fail(format!("{name}: check: {other:?}")),
            }
            let d = open(recovered, false).unwrap();
            let mut got = vec![0u8; SIZE as usize];
            d.read_at(&mut got, 0).unwrap();
            for s in (0..SIZE).step_by(512) {
                let (g, want) = (&got[s as usize..s as usize + 512], &raw[s as usize..s as usize + 512]);
                if g != want && !(in_free(&free, s, 512) && g.iter().all(|&b| b == 0)) {
                    fail(format!("{name}: sector {} reads neither as before nor (free space) as zeros", s / 512));
                    break;
                }
            }
        }
        states.len() as u64
    });
    eprintln!(
        "crash filesystem-aware compaction: {} crash points, {states} crash states, {} failures",
        total + 1,
        failures.len()
    );
    assert!(failures.is_empty(), "{:#?}", &failures[..failures.len().min(8)]);
}
