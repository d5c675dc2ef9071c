//! Consistency checking: everything `open` validates, plus the redundancy
//! and hygiene an open does not need (both headers, both region table
//! copies, reserved fields), reported as a list instead of a first error.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{IoContext, Result};
use crate::format::bat::{PayloadState, SB_NOT_PRESENT};
use crate::format::header::{select_current, HeaderInfo, HEADER_OFFSETS, HEADER_SIZE};
use crate::format::region::{RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};
use crate::format::MIB;
use crate::io::Storage;
use crate::log::find_active_sequence;
use crate::{Disk, OpenOptions};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Problems: the image is damaged or breaks the format's rules.
    pub errors: Vec<String>,
    /// Observations that are not problems (a dirty log that a writable open
    /// replays, a short last block, reserved offsets left in entries).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the image on `storage`. A differencing disk's sectors are checked
/// without reading its parent (the chain layer checks linkage).
pub fn check_storage(storage: Box<dyn Storage>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let len = storage.len().during("sizing the file", 0)?;
    let section_len = (REGION_TABLE_OFFSETS[1] as usize + REGION_TABLE_SIZE).min(len as usize);
    let mut section = alloc::vec![0u8; section_len];
    storage.read_exact_at(&mut section, 0).during("reading the header section", 0)?;

    if section_len == REGION_TABLE_OFFSETS[1] as usize + REGION_TABLE_SIZE {
        let slots = HEADER_OFFSETS.map(|o| HeaderInfo::parse(&section[o as usize..o as usize + HEADER_SIZE], o));
        for (i, s) in slots.iter().enumerate() {
            if let Err(e) = s {
                report.errors.push(format!("header {} is invalid: {e}", i + 1));
            }
        }
        if let Ok((slot, header)) = select_current(slots) {
            report.notes.push(format!(
                "current header: header {} (sequence number {})",
                slot + 1,
                header.sequence_number
            ));
            match find_active_sequence(&*storage, &header, len) {
                Ok(Some(seq)) => report.notes.push(format!(
                    "the log holds {} unapplied entr{} (sequence {}..={}); a writable open or `check --repair` replays it, read-only opens replay it in memory",
                    seq.entries.len(),
                    if seq.entries.len() == 1 { "y" } else { "ies" },
                    seq.entries[0].sequence_number,
                    seq.head().sequence_number
                )),
                Ok(None) => {}
                Err(e) => report.errors.push(format!("log: {e}")),
            }
        }
        let copies = REGION_TABLE_OFFSETS.map(|o| (o, RegionTable::parse(&section[o as usize..], o)));
        for (o, c) in &copies {
            if let Err(e) = c {
                report.errors.push(format!("region table copy at {o:#x} is invalid: {e}"));
            }
        }
        if let [(_, Ok(a)), (_, Ok(b))] = &copies {
            if a != b {
                report.errors.push(String::from("the two region table copies differ"));
            }
        }
    }
    if len % MIB != 0 {
        report.notes.push(format!("the file size {len} is not a multiple of 1 MiB"));
    }

    let disk = match OpenOptions::new().without_parent().open_storage(storage) {
        Ok(d) => d,
        Err(e) => {
            report.errors.push(format!("{e}"));
            return Ok(report);
        }
    };
    check_bat(&disk, &mut report);
    #[cfg(feature = "std")]
    report.notes.extend(crate::ops::merge::recover::image_notes(&disk));
    Ok(report)
}

/// Checks the block table as one (every page as a read checks it, no two
/// blocks overlapping, partially present blocks with their bitmaps), and
/// entry by entry for what the format reserves.
fn check_bat(disk: &Disk, report: &mut CheckReport) {
    if let Err(e) = disk.image().check_whole_bat() {
        report.errors.push(format!("{e}"));
        return;
    }
    let g = *disk.geometry();
    let file_len = disk.image().file_len();
    let mut reserved_offsets = 0u64;
    let scanned = disk.image().scan_bat(|index, entry| {
        check_entry(&g, file_len, index, entry, report, &mut reserved_offsets);
        Ok(())
    });
    if let Err(e) = scanned {
        report.errors.push(format!("{e}"));
    }
    if reserved_offsets > 0 {
        report.notes.push(format!(
            "{reserved_offsets} BAT entries in NOT_PRESENT or ZERO state carry a file offset (reserved; ignored)"
        ));
    }
}

/// One entry's reserved values and reach.
fn check_entry(
    g: &crate::format::bat::BatGeometry,
    file_len: u64,
    index: usize,
    entry: crate::format::bat::BatEntry,
    report: &mut CheckReport,
    reserved_offsets: &mut u64,
) {
    {
        if g.is_sector_bitmap_index(index) {
            if !g.has_parent && entry.state_bits() != SB_NOT_PRESENT {
                report.errors.push(format!(
                    "BAT entry {index} (sector bitmap) has state {} in a disk without a parent",
                    entry.state_bits()
                ));
            }
            return;
        }
        match entry.payload_state() {
            Some(s) if s.has_data() => {
                let end = entry.file_offset() + g.block_size as u64;
                if end > file_len {
                    report.notes.push(format!(
                        "BAT entry {index}: the block at {:#x} ends {} bytes past the end of the file (read as zeros)",
                        entry.file_offset(),
                        end - file_len
                    ));
                }
            }
            Some(PayloadState::NotPresent | PayloadState::Zero) if entry.file_offset() != 0 => *reserved_offsets += 1,
            _ => {}
        }
        if entry.raw() & 0xF_FFF8 != 0 {
            report.errors.push(format!("BAT entry {index} has reserved bits set ({:#x})", entry.raw()));
        }
    }
}

/// Checks the image at `path`; the errors name the file. It is opened with a
/// shared lock: an image open for writing elsewhere is refused
/// ([`Error::Busy`](crate::Error::Busy)). Notes also say how far an unfinished operation the
/// image takes part in got (whether the parent its `parent_linkage2` names
/// took that DataWriteGuid; whether the target of a merge it records
/// changed).
#[cfg(feature = "std")]
pub fn check_file(path: &std::path::Path) -> Result<CheckReport> {
    check_file_with(path, &crate::io::FileOpener::default())
}

/// [`check_file`], opening files through `opener`
/// ([`FileOpener::force_share`](crate::io::FileOpener::force_share) checks an
/// image in use, like `qemu-img check -U`). A VHD (by content) is checked
/// as [`check_vhd_storage`] checks it.
#[cfg(feature = "std")]
pub fn check_file_with(path: &std::path::Path, opener: &crate::io::FileOpener) -> Result<CheckReport> {
    let storage = opener
        .open(path, false)
        .map_err(|source| crate::Error::opening("open", source, false).in_file(path.display()))?;
    if crate::ImageFormat::detect_through(opener, path) == crate::ImageFormat::Vhd {
        return check_vhd_storage(storage).map_err(|e| e.in_file(path.display()));
    }
    let mut report = check_storage(storage).map_err(|e| e.in_file(path.display()))?;
    report.notes.extend(crate::ops::merge::recover::file_notes(path, opener));
    Ok(report)
}

/// Checks the VHD on `storage` (read-only; a differencing disk without its
/// parent): the footer and its copy, the dynamic header, the block table
/// (every block apart from the structures and from every other block is
/// checked when it opens), and the file's length. An image that does not
/// open at all gives its error instead.
pub fn check_vhd_storage(storage: alloc::boxed::Box<dyn Storage>) -> Result<CheckReport> {
    use crate::format::vhd::{Footer, VhdType};
    let mut report = CheckReport::default();
    let len = storage.len().during("sizing the file", 0)?;
    let mut head = [0u8; 512];
    if len >= 512 {
        storage.read_exact_at(&mut head, 0).during("reading the VHD footer copy", 0)?;
    }
    let disk = crate::vhd::VhdDisk::open_storage(storage, false)?;
    let footer = disk.footer().clone();
    if let Some(e) = disk.footer_checksum_error() {
        report.errors.push(format!("{e} (read anyway, read-only; a writable open refuses the file)"));
    }
    if disk.used_footer_copy() {
        report.errors.push(String::from(
            "the footer at the end of the file is damaged; its copy at offset 0 was read (a crash while a block \
             was added can leave this)",
        ));
    }
    match footer.disk_type {
        VhdType::Fixed => {
            if len != footer.current_size + 512 {
                report.notes.push(format!(
                    "the file is {len} bytes, not the {}-byte disk and its footer: the rest is not part of the disk",
                    footer.current_size
                ));
            }
        }
        _ => match Footer::parse_with(&head, 0, false) {
            Ok(copy) if copy != footer => {
                report.errors.push(String::from("the footer copy at offset 0 differs from the footer at the end"))
            }
            Ok(_) => {}
            Err(e) => report.errors.push(format!("the footer copy at offset 0 is not a footer: {e}")),
        },
    }
    if disk.dynamic_header().is_some() {
        for run in disk.map()? {
            if let crate::Extent::Data { file_offset } = run.extent {
                if file_offset + run.length > len {
                    report.notes.push(format!(
                        "the block holding virtual offset {:#x} ends past the end of the file (a crash while it \
                         was added); what is missing reads as zeros",
                        run.offset
                    ));
                    break;
                }
            }
        }
    }
    if footer.original_size != footer.current_size {
        report.notes.push(format!(
            "the disk was made {} bytes and is now {} bytes (resized)",
            footer.original_size, footer.current_size
        ));
    }
    Ok(report)
}

/// Checks the VHD at `path` (see [`check_vhd_storage`]); the errors name
/// the file.
#[cfg(feature = "std")]
pub fn check_vhd_file(path: &std::path::Path) -> Result<CheckReport> {
    let storage = crate::io::FileStorage::open(path, false)
        .map_err(|source| crate::Error::opening("open", source, false).in_file(path.display()))?;
    check_vhd_storage(alloc::boxed::Box::new(storage)).map_err(|e| e.in_file(path.display()))
}

/// [`repair_file`] for a VHD.
#[cfg(feature = "std")]
fn repair_vhd_file(path: &std::path::Path) -> Result<RepairReport> {
    let storage = crate::io::FileStorage::open(path, true)
        .map_err(|source| crate::Error::opening("open", source, true).in_file(path.display()))?;
    let disk = crate::vhd::VhdDisk::open_storage(alloc::boxed::Box::new(storage), true)
        .map_err(|e| e.in_file(path.display()))?;
    let mut actions = Vec::new();
    if disk.mended_copy() {
        actions.push(String::from(
            "the footer copy at offset 0 differed from the trailing footer (a change of parent was interrupted): \
             rewrote it from the trailing footer",
        ));
    } else if disk.mended_footer() {
        actions.push(String::from(
            "the trailing footer was damaged (a crash while a block was added): rewrote it from the copy at offset \
             0, after the last block",
        ));
    }
    disk.into_storage().map_err(|e| e.in_file(path.display()))?;
    Ok(RepairReport { actions, after: check_vhd_file(path)? })
}

/// Why Azure would not take the VHD at `path` as an uploaded disk (empty:
/// it would): Azure takes fixed VHDs whose virtual size is a whole number
/// of MiB, the file holding exactly the disk and its footer.
/// `convert --azure` makes such a file.
#[cfg(feature = "std")]
pub fn azure_problems(path: &std::path::Path) -> Result<Vec<String>> {
    use crate::format::vhd::VhdType;
    let disk = crate::vhd::VhdDisk::open_without_parent(path, false)?;
    let f = disk.footer();
    let len =
        std::fs::metadata(path).map(|m| m.len()).during("sizing the file", 0).map_err(|e| e.in_file(path.display()))?;
    let mut out = Vec::new();
    if f.disk_type != VhdType::Fixed {
        out.push(String::from("Azure takes fixed VHDs only (convert with --type fixed, or --azure)"));
    }
    if f.current_size % crate::format::MIB != 0 {
        out.push(format!(
            "the virtual size, {} bytes, is not a whole number of MiB (convert with --azure rounds it up)",
            f.current_size
        ));
    }
    if f.disk_type == VhdType::Fixed && len != f.current_size + 512 {
        out.push(format!("the file is {len} bytes, not the disk's {} bytes and the 512-byte footer", f.current_size));
    }
    if disk.footer_checksum_error().is_some() {
        out.push(String::from("the footer's checksum is wrong"));
    }
    Ok(out)
}

/// What [`repair_storage`] did, and what a check finds afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Each mend, in order.
    pub actions: Vec<String>,
    /// A check of the repaired image.
    pub after: CheckReport,
}

/// Mends what is safe to mend, through the same crash-safe paths as every
/// write: replays a dirty log, rewrites a damaged or stale header and region
/// table copy from the good one, clears reserved BAT bits, reserved offsets
/// in NOT_PRESENT/ZERO entries and sector-bitmap entries a disk without a
/// parent must not have. Never changes what the disk presents; an image that
/// cannot be opened at all is left untouched.
pub fn repair_storage(storage: Box<dyn Storage>) -> Result<RepairReport> {
    let mut actions = Vec::new();
    let len = storage.len().during("sizing the file", 0)?;
    let section_len = (REGION_TABLE_OFFSETS[1] as usize + REGION_TABLE_SIZE).min(len as usize);
    let mut section = alloc::vec![0u8; section_len];
    storage.read_exact_at(&mut section, 0).during("reading the header section", 0)?;
    let full = section_len == REGION_TABLE_OFFSETS[1] as usize + REGION_TABLE_SIZE;
    let headers_bad = full
        && HEADER_OFFSETS
            .iter()
            .any(|&o| HeaderInfo::parse(&section[o as usize..o as usize + HEADER_SIZE], o).is_err());

    let mut disk = OpenOptions::new().writable(true).without_parent().open_storage(storage)?;
    if disk.image().replayed_log() {
        actions.push(String::from("replayed the log in place"));
    }
    actions.extend(disk.image_mut().mend(headers_bad)?);
    let storage = disk.into_storage()?;
    let after = check_storage(storage)?;
    Ok(RepairReport { actions, after })
}

/// Repairs the image at `path` in place (see [`repair_storage`]); then, as
/// only a path allows, ends what an interrupted operation left: an
/// unfinished merge the image records is rolled back (while its target is
/// unchanged) or finished ([`crate::ops::merge::recover_merge`]), and an
/// image whose parent took the DataWriteGuid its `parent_linkage2`
/// announced is linked to that GUID only.
///
/// A VHD (by content) is mended as its writable open mends it: a trailing
/// footer a crash damaged is written back from the copy at offset 0, and a
/// copy at offset 0 that differs from the trailing footer (a crash while
/// the disk changed parent) from the trailing footer. Nothing else in a VHD
/// is rewritten: a footer or header whose checksum is wrong stays refused.
#[cfg(feature = "std")]
pub fn repair_file(path: &std::path::Path) -> Result<RepairReport> {
    if crate::ImageFormat::detect(path) == crate::ImageFormat::Vhd {
        return repair_vhd_file(path);
    }
    let storage = crate::io::FileStorage::open(path, true)
        .map_err(|source| crate::Error::opening("open", source, true).in_file(path.display()))?;
    let mut report = repair_storage(Box::new(storage)).map_err(|e| e.in_file(path.display()))?;
    let more = crate::ops::merge::recover::repair_file(path)?;
    if !more.is_empty() {
        report.actions.extend(more);
        report.after = check_file(path)?;
    }
    Ok(report)
}
