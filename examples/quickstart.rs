//! Quickstart: create a dynamic VHDX, write to it, read it back; then a
//! differencing story: a base, two children, and merging one child into the
//! base without breaking the other; then a profile-container write-back: two
//! session disks on one profile disk merged back at once, and a conflicting
//! pair reported without anything being modified; last, an old VHD chain
//! (a base and a differencing child, as Virtual PC and older Hyper-V made
//! them) converted to one VHDX and back to a fixed VHD, the kind Azure
//! takes for uploads, then merged into its base with a second child kept
//! whole.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Everything happens in a temporary directory that is removed at the end.
//! Each step is a small function that prints what it did, so the output reads
//! as a story and the source reads as a tutorial. Exit status 0 means every
//! byte read back was the byte written; on failure the one line `error: …`
//! says what went wrong.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vhdx::ops::convert::{convert, ConvertOptions};
use vhdx::ops::merge::{merge, MergeOptions, SiblingPolicy};
use vhdx::ops::siblings::{merge_siblings, plan_merge_siblings, SiblingMergeOptions};
use vhdx::vhd::{VhdCreateOptions, VhdDisk};
use vhdx::{CreateOptions, Disk, DiskType, ErrorKind, Extent, Guid};

/// The virtual size of the example disk.
const VIRTUAL_SIZE: u64 = 1 << 30;
/// The virtual size of the differencing story's disks: small enough to keep
/// whole copies of what each presents in memory.
const CHAIN_SIZE: u64 = 64 << 20;

type StepResult<T = ()> = Result<T, Box<dyn Error>>;

/// A recognizable piece of data and where it goes on the virtual disk.
struct Piece {
    what: &'static str,
    offset: u64,
    bytes: Vec<u8>,
}

/// The pieces to write: one aligned sector, one at an odd offset, and one
/// that starts in one payload block and ends in the next.
fn pieces(block_size: u64) -> Vec<Piece> {
    let mut boot_sector = vec![0u8; 512];
    boot_sector[..16].copy_from_slice(b"quickstart MBR\0\0");
    boot_sector[510..].copy_from_slice(&[0x55, 0xAA]);
    let crossing: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    vec![
        Piece { what: "a boot sector (aligned, 512 bytes)", offset: 0, bytes: boot_sector },
        Piece {
            what: "a greeting at an odd offset",
            offset: 700 * 1_000_000 + 3,
            bytes: b"Hello from an unaligned write!".to_vec(),
        },
        Piece { what: "100,000 patterned bytes across a block boundary", offset: block_size - 40_000, bytes: crossing },
    ]
}

/// Step 1: create an empty dynamic disk; no payload block is allocated yet.
fn create(path: &Path) -> StepResult<Disk> {
    let disk = Disk::create(path, &CreateOptions::dynamic(VIRTUAL_SIZE))?;
    let info = disk.info()?;
    println!("1. Created {}", path.display());
    println!(
        "   {} disk of {} MiB, {} MiB blocks, {}-byte logical / {}-byte physical sectors",
        info.disk_type,
        info.virtual_size >> 20,
        info.block_size >> 20,
        info.logical_sector_size,
        info.physical_sector_size
    );
    println!(
        "   file size {} KiB, {} payload blocks allocated, DataWriteGuid {}",
        info.file_size >> 10,
        info.allocated_blocks,
        info.data_write_guid
    );
    Ok(disk)
}

/// Step 2: write the pieces. Blocks are allocated on first write.
fn write_pieces(disk: &mut Disk, pieces: &[Piece]) -> StepResult {
    println!("2. Writing {} pieces:", pieces.len());
    for piece in pieces {
        disk.write_at(&piece.bytes, piece.offset)?;
        println!("   {} bytes at offset {}: {}", piece.bytes.len(), piece.offset, piece.what);
    }
    Ok(())
}

/// Step 3: flush (payload first, then the block table through the log) and
/// close. Returns the DataWriteGuid the writes produced.
fn flush_and_close(mut disk: Disk, created_guid: Guid) -> StepResult<Guid> {
    disk.flush()?;
    let info = disk.info()?;
    disk.close()?;
    println!("3. Flushed and closed");
    println!("   {} payload blocks allocated; the file is now {} MiB", info.allocated_blocks, info.file_size >> 20);
    if info.data_write_guid != created_guid {
        println!("   DataWriteGuid changed to {}: the data changed", info.data_write_guid);
    } else {
        return Err("the DataWriteGuid did not change although the data did".into());
    }
    Ok(info.data_write_guid)
}

/// Step 4: reopen read-only and compare every piece with what was written;
/// untouched space must read as zeros.
fn reopen_and_verify(path: &Path, pieces: &[Piece], written_guid: Guid) -> StepResult<Disk> {
    let mut disk = Disk::open(path)?;
    println!("4. Reopened read-only and read everything back:");
    for piece in pieces {
        let mut buf = vec![0u8; piece.bytes.len()];
        disk.read_at(&mut buf, piece.offset)?;
        if buf != piece.bytes {
            return Err(format!("{} at offset {} read back differently", piece.what, piece.offset).into());
        }
        println!("   ok: {}", piece.what);
    }
    let mut gap = vec![0xFFu8; 1 << 20];
    disk.read_at(&mut gap, 500 << 20)?;
    if gap.iter().any(|&b| b != 0) {
        return Err("a never-written megabyte did not read as zeros".into());
    }
    println!("   ok: a never-written megabyte reads as zeros");
    if disk.data_write_guid() != written_guid {
        return Err("the DataWriteGuid changed without a write".into());
    }
    match disk.write_at(b"no", 0) {
        Err(e) => println!("   writing is refused, as it should be: {e}"),
        Ok(()) => return Err("a read-only disk accepted a write".into()),
    }
    Ok(disk)
}

/// Step 5: where the bytes live: data runs in the file versus zeros.
fn show_map(disk: &Disk, path: &Path) -> StepResult {
    let map = disk.map()?;
    let stored: u64 = map.iter().filter(|e| matches!(e.extent, Extent::Data { .. })).map(|e| e.length).sum();
    let file_size = std::fs::metadata(path)?.len();
    println!("5. The map:");
    for e in &map {
        if let Extent::Data { file_offset } = e.extent {
            println!(
                "   virtual {:>5} MiB .. {:>5} MiB is stored at file offset {} MiB",
                e.offset >> 20,
                (e.offset + e.length) >> 20,
                file_offset >> 20
            );
        }
    }
    println!(
        "   {} MiB of the {} MiB virtual disk are stored; the rest reads as zeros. File size: {} MiB.",
        stored >> 20,
        disk.virtual_size() >> 20,
        file_size >> 20
    );
    Ok(())
}

/// Everything a disk presents, read through its chain.
fn whole_view(path: &Path) -> StepResult<Vec<u8>> {
    let disk = Disk::open(path)?;
    let mut view = vec![0u8; disk.virtual_size() as usize];
    disk.read_at(&mut view, 0)?;
    Ok(view)
}

/// Recognizable bytes: `text` repeated over `len` bytes.
fn filled(text: &str, len: usize) -> Vec<u8> {
    text.bytes().cycle().take(len).collect()
}

/// Step 6: a base disk with some data, the common ancestor of what follows.
fn create_base(path: &Path) -> StepResult {
    let mut base = Disk::create(path, &CreateOptions::dynamic(CHAIN_SIZE).block_size(1 << 20))?;
    base.write_at(&filled("base data ", 8 << 20), 0)?;
    base.write_at(b"the base's note at 40 MiB", 40 << 20)?;
    let guid = base.data_write_guid();
    base.close()?;
    println!("6. Created a base disk, {} (64 MiB), with 8 MiB of data; DataWriteGuid {guid}", path.display());
    Ok(())
}

/// Step 7: two differencing children of the base, written differently.
/// Each stores only what it changed; everything else reads from the base.
/// Returns what each presents.
fn create_children(base: &Path, a: &Path, b: &Path) -> StepResult<(Vec<u8>, Vec<u8>)> {
    let mut child_a = Disk::create_differencing(a, base, None)?;
    child_a.write_at(&filled("written by A -- ", 3 << 20), 1 << 20)?;
    child_a.write_at(b"A's note", (40 << 20) + 4)?;
    child_a.close()?;
    let mut child_b = Disk::create_differencing(b, base, None)?;
    child_b.write_at(&filled("written by B -- ", 1 << 20), 2 << 20)?;
    child_b.write_at(b"B was here", 50 << 20)?;
    child_b.close()?;
    let (view_a, view_b) = (whole_view(a)?, whole_view(b)?);
    println!("7. Created two children of the base, each written differently:");
    for (path, view) in [(a, &view_a), (b, &view_b)] {
        let disk = Disk::open(path)?;
        println!(
            "   {}: {} blocks of its own, chain {}; at 2 MiB it reads {:?}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            disk.info()?.allocated_blocks,
            disk.chain_paths().iter().map(|p| file_name(p)).collect::<Vec<_>>().join(" -> "),
            String::from_utf8_lossy(&view[2 << 20..(2 << 20) + 12])
        );
    }
    Ok((view_a, view_b))
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// Step 8: merging A into the base would change what B reads (B reads the
/// base wherever it has not written), so by default the merge is refused and
/// nothing is modified.
fn merge_refused(a: &Path, base: &Path) -> StepResult {
    let guid_before = Disk::open(base)?.data_write_guid();
    let options = MergeOptions::default().depth(1).siblings(SiblingPolicy::Refuse);
    match merge(a, &options) {
        Err(e) if e.kind() == ErrorKind::Refused => {
            println!("8. Merging A into the base is refused, because of its sibling B:");
            println!("   {e}");
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("the merge went ahead although B depends on the base".into()),
    }
    if Disk::open(base)?.data_write_guid() != guid_before {
        return Err("a refused merge changed the base".into());
    }
    Ok(())
}

/// Step 9: the same merge, preserving siblings: B first receives its own
/// copy of everything the merge changes under it, then A's data goes into
/// the base.
fn merge_preserving_siblings(a: &Path) -> StepResult {
    let options = MergeOptions::default().depth(1).siblings(SiblingPolicy::Preserve);
    let report = merge(a, &options)?;
    println!(
        "9. Merged A into {} with preserve-siblings: {} bytes written into the base",
        file_name(&report.target.to_string_lossy()),
        report.bytes_merged
    );
    for s in &report.siblings {
        println!(
            "   sibling {} kept its view: {} bytes copied into it first",
            file_name(&s.path.to_string_lossy()),
            s.bytes_copied
        );
    }
    Ok(())
}

/// Step 10: every view, byte for byte, against what it presented before.
fn verify_views(base: &Path, a: &Path, b: &Path, view_a: &[u8], view_b: &[u8]) -> StepResult {
    println!("10. Every view compared, byte for byte, with the copies taken in step 7:");
    for (what, path, expected) in [("A", a, view_a), ("B", b, view_b), ("the base (now A's view)", base, view_a)] {
        if whole_view(path)? != expected {
            return Err(format!("{what} ({}) does not present what it should", path.display()).into());
        }
        println!("   ok: {what}");
    }
    let (a_blocks, b_blocks) = (Disk::open(a)?.info()?.allocated_blocks, Disk::open(b)?.info()?.allocated_blocks);
    println!("   A now holds {a_blocks} blocks of its own (its data is in the base); B holds {b_blocks}");
    Ok(())
}

/// Step 11: a profile disk, as a profile container keeps one per user, and
/// two session disks on it, one per concurrent session (FSLogix's
/// ProfileType 3 does this). Each session writes different files.
fn create_sessions(profile: &Path, sessions: [&Path; 2]) -> StepResult {
    let mut disk = Disk::create(profile, &CreateOptions::dynamic(CHAIN_SIZE).block_size(1 << 20))?;
    disk.write_at(&filled("profile data ", 4 << 20), 0)?;
    disk.close()?;
    let writes: [(&[u8], u64); 2] =
        [(b"session 1 saved Documents/report.txt", 10 << 20), (b"session 2 changed AppData/settings.ini", 30 << 20)];
    println!(
        "11. A profile disk, {}, and a session disk for each of two sessions:",
        file_name(&profile.to_string_lossy())
    );
    for (session, (text, at)) in sessions.into_iter().zip(writes) {
        let mut disk = Disk::create_differencing(session, profile, None)?;
        disk.write_at(text, at)?;
        let changes = disk.change_set()?; // byte ranges, whole sectors
        let sector = disk.logical_sector_size() as u64;
        disk.close()?;
        println!(
            "   {} holds {} sector(s) of its own: {}",
            file_name(&session.to_string_lossy()),
            changes.iter().map(|r| r.1 / sector).sum::<u64>(),
            changes
                .iter()
                .map(|&(o, l)| format!("{}..{}", o / sector, (o + l) / sector))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Step 12: at logoff both sessions go back into the profile disk at once.
/// Their changes do not overlap, so the write-back needs no decision; after
/// it the profile disk holds both, and each session disk is empty and
/// presents the same.
fn write_back(profile: &Path, sessions: [&Path; 2]) -> StepResult {
    let mut expected = whole_view(profile)?;
    for s in sessions {
        let view = whole_view(s)?;
        let disk = Disk::open(s)?;
        for (o, l) in disk.change_set()? {
            expected[o as usize..(o + l) as usize].copy_from_slice(&view[o as usize..(o + l) as usize]);
        }
    }
    let children: Vec<PathBuf> = sessions.iter().map(|s| s.to_path_buf()).collect();
    let report = merge_siblings(profile, &children, &SiblingMergeOptions::default())?;
    println!("12. Wrote both sessions back into the profile disk at once: {} bytes, no conflicts", report.bytes_merged);
    if !report.conflicts.is_empty() || whole_view(profile)? != expected {
        return Err("the profile disk does not hold both sessions' changes".into());
    }
    for s in sessions {
        if whole_view(s)? != expected || !Disk::open(s)?.change_set()?.is_empty() {
            return Err(format!("{} does not present the merged profile, or is not empty", s.display()).into());
        }
    }
    println!("   ok: the profile disk holds both sessions' changes; both session disks are empty and present it");
    Ok(())
}

/// Step 13: the next two sessions both change the same settings file:
/// their bytes differ in the same sectors. The write-back is refused,
/// nothing is modified, and the report says where and who.
fn conflicting_write_back(profile: &Path, sessions: [&Path; 2]) -> StepResult {
    for (session, text) in sessions.into_iter().zip([&b"theme=dark  "[..], &b"theme=light "[..]]) {
        let mut disk = Disk::create_differencing(session, profile, None)?;
        disk.write_at(text, (30 << 20) + 7)?;
        disk.close()?;
    }
    let before = std::fs::read(profile)?;
    let children: Vec<PathBuf> = sessions.iter().map(|s| s.to_path_buf()).collect();
    let plan = plan_merge_siblings(profile, &children, &SiblingMergeOptions::default())?;
    println!("13. Two more sessions both changed the settings file; the write-back finds:");
    for c in &plan.report().conflicts {
        let names: Vec<String> = c.children.iter().map(|&i| file_name(&children[i].to_string_lossy())).collect();
        println!(
            "   a conflict at bytes {}..{}: {} hold different bytes there",
            c.offset,
            c.offset + c.length,
            names.join(" and ")
        );
    }
    match plan.execute() {
        Err(e) if e.kind() == ErrorKind::Refused => println!("   so it is refused, and nothing is modified"),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("conflicting sessions were merged".into()),
    }
    if std::fs::read(profile)? != before {
        return Err("a refused write-back changed the profile disk".into());
    }
    println!("   ok: the profile disk is byte for byte what it was; `prefer` (--prefer) would name the winner");
    Ok(())
}

/// A VHD chain, converted to VHDX (flattened) and back to a fixed VHD; then
/// merged with a sibling kept whole; the content compared at each step.
fn vhd_story(dir: &Path) -> StepResult {
    let (base, child) = (dir.join("old-base.vhd"), dir.join("old-child.vhd"));
    let mut disk = VhdDisk::create(&base, &VhdCreateOptions::dynamic(CHAIN_SIZE))?;
    disk.write_at(&filled("written into the VHD base ", 1 << 20), 0)?;
    drop(disk);
    let mut disk = VhdDisk::create_differencing(&child, &base)?;
    disk.write_at(&filled("written into the VHD child ", 4096), 3 << 20)?;
    let mut view = vec![0u8; CHAIN_SIZE as usize];
    disk.read_at(&mut view, 0)?;
    drop(disk);
    println!(
        "14. Made a VHD chain (version 1, the format VHDX replaced): {} over {}",
        file_name_of(&child),
        file_name_of(&base)
    );
    let flat = dir.join("from-vhd.vhdx");
    convert(&child, &flat, &ConvertOptions::default())?;
    let vhdx = Disk::open(&flat)?;
    let mut got = vec![0u8; CHAIN_SIZE as usize];
    vhdx.read_at(&mut got, 0)?;
    if got != view {
        return Err("the VHDX does not present what the VHD chain did".into());
    }
    println!("   converted to one VHDX, {}: the same {} MiB, byte for byte", file_name_of(&flat), CHAIN_SIZE >> 20);
    drop(vhdx);
    let fixed = dir.join("for-azure.vhd");
    convert(&flat, &fixed, &ConvertOptions::default().disk_type(DiskType::Fixed))?;
    let again = VhdDisk::open(&fixed)?;
    again.read_at(&mut got, 0)?;
    if got != view {
        return Err("the fixed VHD does not present what the VHD chain did".into());
    }
    println!(
        "   and back to a fixed VHD, {}: {} bytes of disk then the 512-byte footer, the same bytes again",
        file_name_of(&fixed),
        again.virtual_size()
    );
    drop(again);
    // A second child of the VHD base: merging the first into the base would
    // change what it reads, and a VHD child cannot tell its parent changed.
    let other = dir.join("old-other.vhd");
    let mut disk = VhdDisk::create_differencing(&other, &base)?;
    disk.write_at(&filled("written into the other VHD child ", 4096), 8192)?;
    let mut other_view = vec![0u8; CHAIN_SIZE as usize];
    disk.read_at(&mut other_view, 0)?;
    drop(disk);
    match merge(&child, &MergeOptions::default()) {
        Err(e) if e.kind() == ErrorKind::Refused => {
            println!(
                "   merging {} into {}: refused, {} would read wrong data",
                file_name_of(&child),
                file_name_of(&base),
                file_name_of(&other)
            )
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("the VHD merge should have been refused".into()),
    }
    let report = merge(&child, &MergeOptions::default().siblings(SiblingPolicy::Preserve))?;
    let reads = |path: &Path| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let mut buf = vec![0u8; CHAIN_SIZE as usize];
        VhdDisk::open(path)?.read_at(&mut buf, 0)?;
        Ok(buf)
    };
    if reads(&child)? != view || reads(&other)? != other_view || reads(&base)? != view {
        return Err("after the VHD merge an image does not read as it should".into());
    }
    println!(
        "   merged with the sibling preserved: {} bytes into {}, {} bytes copied into {} first; {} and {} read \
         as before, {} now holds the child's data",
        report.bytes_merged,
        file_name_of(&base),
        report.siblings.iter().map(|s| s.bytes_copied).sum::<u64>(),
        file_name_of(&other),
        file_name_of(&child),
        file_name_of(&other),
        file_name_of(&base)
    );
    Ok(())
}

fn file_name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn run() -> StepResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("quickstart.vhdx");

    let mut disk = create(&path)?;
    let created_guid = disk.data_write_guid();
    let pieces = pieces(disk.block_size() as u64);
    write_pieces(&mut disk, &pieces)?;
    let written_guid = flush_and_close(disk, created_guid)?;
    let disk = reopen_and_verify(&path, &pieces, written_guid)?;
    show_map(&disk, &path)?;
    disk.close()?;

    let [base, a, b]: [PathBuf; 3] = ["base.vhdx", "a.vhdx", "b.vhdx"].map(|n| dir.path().join(n));
    create_base(&base)?;
    let (view_a, view_b) = create_children(&base, &a, &b)?;
    merge_refused(&a, &base)?;
    merge_preserving_siblings(&a)?;
    verify_views(&base, &a, &b, &view_a, &view_b)?;

    let [profile, s1, s2, s3, s4]: [PathBuf; 5] =
        ["profile.vhdx", "session1.vhdx", "session2.vhdx", "session3.vhdx", "session4.vhdx"]
            .map(|n| dir.path().join(n));
    create_sessions(&profile, [&s1, &s2])?;
    write_back(&profile, [&s1, &s2])?;
    conflicting_write_back(&profile, [&s3, &s4])?;
    vhd_story(dir.path())?;

    println!("Done: every byte read back as written, a merge changed where data lives but not what any disk");
    println!("presents, and sessions went back into their profile disk together, or not at all when they");
    println!("conflicted; a VHD chain became one VHDX and a fixed VHD with the same bytes, and merged");
    println!("without breaking its sibling. (The temporary directory is removed now.)");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
